# Two entry points: `make demo` and `make test`. Each creates .venv and installs
# what it needs (pip, from PyPI), then runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint bench-cpu clean

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

test: lint
	$(PY) -m pytest -q tests

# ruff is in the test extras; the configuration is in pyproject.toml.
lint: $(VENV)/.installed-data+train+test
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench-cpu: $(VENV)/.installed-data+train+test
	$(PY) -m benchmarks.run encoder-cpu

clean:
	rm -rf $(VENV) out
