# Two entry points: `make demo` and `make test`. Each creates .venv and installs
# what it needs (pip, from PyPI), then runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench-cpu clean browser

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

test: $(VENV)/.installed-data+train+test browser
	$(PY) -m pytest -q tests

# The annotation tool's browser test drives Debian's chromium through chromedriver.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif command -v apt-get >/dev/null; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	  { $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium chromium-driver; } \
	  || echo "make: could not install chromium and chromium-driver: the browser test will be skipped"; \
	else echo "make: no apt-get: install chromium and chromedriver, or the browser test is skipped"; fi

bench-cpu: $(VENV)/.installed-data+train+test
	$(PY) benchmarks/encoder_cpu.py

clean:
	rm -rf $(VENV) out
