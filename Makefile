# Two entry points: `make demo` and `make test`. Each creates .venv and installs
# what it needs (pip, from PyPI), then runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint bench-cpu clean browser

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

test: lint browser
	$(PY) -m pytest -q --durations=25 tests

# ruff is in the test extras; the configuration is in pyproject.toml.
lint: $(VENV)/.installed-data+train+test
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# The annotation tool's browser test drives Debian's chromium through chromedriver.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif command -v apt-get >/dev/null; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	  { $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium chromium-driver; } \
	  || echo "make: could not install chromium and chromium-driver: the browser test will be skipped"; \
	else echo "make: no apt-get: install chromium and chromedriver, or the browser test is skipped"; fi

bench-cpu: $(VENV)/.installed-data+train+test
	$(PY) -m benchmarks.run encoder-cpu

clean:
	rm -rf $(VENV) out
