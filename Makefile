# Two commands on a fresh machine: `make demo` (the 3D study end to end on synthetic CT) and `make test`.
# Both create the virtual environment on first use; torch is pinned here (a CPU wheel), not in the package.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0
DEMO_OUT ?= demo_output
# The GPU check runs where there is no venv (the GPU machine: python3 with torch, the rest from wheels on PYTHONPATH),
# so it has its own interpreter and does not depend on `setup`; its --dry-run is part of `make test`.
GPU_PY ?= python3
GPU_CHECK_ARGS ?= --out gpu_check_output

.PHONY: setup demo test test-fast bench gpu-check clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

demo: setup
	$(VENV)/bin/synthcp run pancreas --demo --out $(DEMO_OUT)

test: setup
	$(PY) -m pytest -q -p no:cacheprovider tests

# everything but the end-to-end runs (tests marked slow): the quick check while editing
test-fast: setup
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" tests

bench: setup
	$(PY) benchmarks/bench_metrics.py

gpu-check:
	$(GPU_PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_OUT) gpu_check_output build *.egg-info
