# Two commands on a fresh machine: `make demo` (the 3D study end to end on synthetic CT) and `make test`.
# Both create the virtual environment on first use; torch is pinned here (a CPU wheel), not in the package.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0
DEMO_OUT ?= demo_output

.PHONY: setup demo test bench clean

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

bench: setup
	$(PY) benchmarks/bench_metrics.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) build *.egg-info
