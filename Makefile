# Two entry points: `make demo` and `make test`. Each creates .venv and installs
# what it needs (pip, from PyPI), then runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench-cpu clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# One stamp per set of extras, redone when pyproject.toml changes.
$(VENV)/.installed-%: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[$(subst +,$(comma),$*)]'
	touch $@

comma := ,

demo: $(VENV)/.installed-data+train
	$(PY) -m train.demo --out out/demo

test: $(VENV)/.installed-data+train+test
	$(PY) -m pytest -q tests

bench-cpu: $(VENV)/.installed-data+train+test
	$(PY) benchmarks/encoder_cpu.py

clean:
	rm -rf $(VENV) out
