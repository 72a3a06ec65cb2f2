# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= demo_out
GPU_CHECK_OUT ?= gpu_check_out

.PHONY: install test test-all demo demo-select demo-dpo demo-anyres bench-quick gpu-check clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev,lmms,chat]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not gpu"

test-all: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash configs/demo/run_demo.sh $(DEMO_DIR)

# Data selection experiment (README, "Data curation"): noise, scores, AUROC, top vs random vs all.
SELECT_DIR ?= select_out
demo-select: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash configs/demo/run_select.sh $(SELECT_DIR)

# Preference tuning on the demo (README, "Preference tuning"): SFT -> DPO on synthetic hallucination pairs -> POPE.
demo-dpo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash configs/demo/run_dpo.sh $(DEMO_DIR)

# High resolution on the demo (issue 14): single 64-px view vs LLaVA-NeXT anyres on tiny objects in large images.
ANYRES_DIR ?= anyres_out
demo-anyres: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash configs/demo/run_anyres.sh $(ANYRES_DIR)

bench-quick: $(STAMP)
	$(PY) bench/run_all.py --quick

# On a GPU machine: install, GPU tests, GPU benchmarks in 8 minutes (bench/gpu_check.sh says what and how long).
gpu-check:
	bash bench/gpu_check.sh $(GPU_CHECK_OUT)

clean:
	rm -rf $(VENV) $(DEMO_DIR) $(SELECT_DIR) $(ANYRES_DIR) .pytest_cache
