# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= demo_out

.PHONY: install test test-all demo bench-quick clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash configs/demo/run_demo.sh $(DEMO_DIR)

bench-quick: $(STAMP)
	$(PY) bench/run_all.py --quick

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
