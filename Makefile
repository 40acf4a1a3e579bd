# One command sets up everything on a fresh machine: `make test` (tests) or `make bench` (benchmark).
# Extra arguments: make bench BENCH_ARGS="--quick --json bench.json"; make test PYTEST_ARGS="-k cli".
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fused_optim-installed
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: setup build test bench bench-pytest check info clean

setup: $(STAMP)

# torch 2.13.0 first (a CPU build from local disk where one is provided); the package's own range
# admits it, so nothing larger is fetched. --no-build-isolation lets setup.py see torch and build
# the C++ extension ahead of time.
$(STAMP): pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "setuptools>=64" wheel
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet --no-build-isolation -e ".[test,plot]"
	$(PY) -c "import fused_optim._cpp as c; c.get(); r = c.unavailable_reason(); print('C++ extension:', r or 'ok')"
	touch $(STAMP)

build: setup
	$(PY) setup.py --quiet build_ext --inplace

test: setup
	$(PY) -m pytest $(PYTEST_ARGS) tests

bench: setup
	$(VENV)/bin/fused-optim bench $(BENCH_ARGS)

bench-pytest: setup
	$(PY) -m pytest benchmarks --benchmark-only $(PYTEST_ARGS)

check: setup
	$(VENV)/bin/fused-optim check

info: setup
	$(VENV)/bin/fused-optim info

clean:
	rm -rf build *.egg-info fused_optim/_C*.so .pytest_cache
