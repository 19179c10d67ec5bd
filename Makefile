# murajax: `make demo` trains the quickstart, `make test` runs lint + tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Pins every dependency to the versions measured in DESIGN.md.
CONSTRAINTS := constraints.txt
WORKDIR ?= workdirs/quickstart
# oneDNN's CPU convolutions (murajax.ops): its wheels exist for x86-64 Linux only; elsewhere
# murajax uses XLA's convolutions.
ONEDNN := $(if $(and $(filter x86_64,$(shell uname -m)),$(filter Linux,$(shell uname -s))),1,)
ONEDNN_LIB := murajax/ops/_onednn_conv.so
# `make test` leaves out tests marked slow (minutes on a 2-core CPU); `make test-all` runs them.
PYTEST_ARGS ?= -m "not slow"
# Test files run in this many processes (pytest-xdist; one file's tests stay in one process, so
# its module fixtures are built once): 2 takes `make test` from 21 to 15.5 minutes on 2 cores.
# PYTEST_WORKERS=0 runs them in this process.
PYTEST_WORKERS ?= 2

.PHONY: install install-dev install-export demo test test-all hardening lint format clean system-packages \
	browser-test-deps

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed: $(PY) pyproject.toml $(CONSTRAINTS)
	$(PIP) install --quiet -c $(CONSTRAINTS) -e .
	$(if $(ONEDNN),$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[cpu-onednn]' \
		|| echo "murajax: the oneDNN wheels did not install; XLA's convolutions will be used")
	touch $@

# Builds the extension; prints why and carries on (XLA's convolutions) where it cannot.
$(ONEDNN_LIB): murajax/ops/onednn_conv.cc murajax/ops/winograd.h $(VENV)/.installed
	$(PY) -m murajax.ops.build

# The `export` extra (ONNX export and runtime) and jax2onnx without its own dependencies
# (pyproject.toml says why).
$(VENV)/.installed-export: $(VENV)/.installed
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[export]'
	$(PIP) install --quiet -c $(CONSTRAINTS) --no-deps jax2onnx
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed $(VENV)/.installed-export
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[dev]'
	touch $@

install: $(VENV)/.installed $(if $(ONEDNN),$(ONEDNN_LIB))

install-export: $(VENV)/.installed-export $(if $(ONEDNN),$(ONEDNN_LIB))

install-dev: $(VENV)/.installed-dev $(if $(ONEDNN),$(ONEDNN_LIB))

demo: install
	$(PY) -m experiments.main --config=experiments/configs/quickstart.py --workdir=$(WORKDIR)

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install-dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The tests run with the malloc murajax's programs use (murajax.allocator: tcmalloc where
# installed; XLA compiles 1.6-1.8x faster).
test: lint
	$(PY) -m murajax.allocator $(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-all: lint
	$(PY) -m murajax.allocator $(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadfile

# tcmalloc, which murajax's programs preload where it is installed (murajax.allocator). As
# root with apt-get (CI) it is installed; elsewhere this says how.
system-packages:
	@if ldconfig -p | grep -q libtcmalloc_minimal; then echo "murajax: tcmalloc is installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get install -y --no-install-recommends libtcmalloc-minimal4 \
		|| (apt-get update && apt-get install -y --no-install-recommends libtcmalloc-minimal4) \
		|| echo "murajax: tcmalloc did not install; the C library's malloc will be used"; \
	else echo "murajax: for 1.6-1.8x faster XLA compiles: sudo apt-get install libtcmalloc-minimal4"; fi

# Chromium and its driver, which the study browser's tests (tests/test_browser_chromium.py)
# open the page in. As root with apt-get (CI) they are installed; elsewhere this says how.
browser-test-deps:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
		echo "murajax: chromium and chromedriver are installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get install -y --no-install-recommends chromium chromium-driver \
		|| (apt-get update && apt-get install -y --no-install-recommends chromium chromium-driver); \
	else echo "murajax: for the study browser's tests: sudo apt-get install chromium chromium-driver"; fi

# Bad inputs tried as a user gives them, each in a fresh process (tests/hardening_check.py;
# minutes on 2 cores; not part of `make test`). HARDENING_ARGS='--only=5_*' runs some.
hardening: install-dev
	$(PY) tests/hardening_check.py $(HARDENING_ARGS)

clean:
	rm -rf $(VENV) workdirs .pytest_cache .ruff_cache
