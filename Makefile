# Two commands set everything up on a fresh machine with python3 and a C compiler:
#   make demo   creates .venv, installs pynn and its dependencies, trains the demo CNN
#   make test   same venv plus the test extras (PyTorch CPU, Keras, PoCL), runs the suite
# `make test-fast` runs the CPU tests only (-m "not opencl"), for the edit-test loop.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
NATIVE := setup.py pyproject.toml $(wildcard native/*.pyx native/*.pxd native/*.h)
# One pytest worker per core (pytest-xdist, a test extra): a fresh clone's run compiles every
# OpenCL program for PoCL once, which dominates the serial run (about 8.5 of 9 minutes).
PYTEST_ARGS ?= -n auto

.PHONY: demo test test-fast build bench info clean check-native

$(PY):
	$(PYTHON) -m venv $(VENV)

# A fresh venv's setuptools is too old for editable builds; the build requirements go in first
# because the build runs without isolation (it links against the venv's NumPy and SciPy).
$(VENV)/.build-deps: pyproject.toml | $(PY)
	$(PIP) install -q -U pip "setuptools>=68" wheel
	$(PIP) install -q "Cython>=3.0" "numpy>=1.26" "scipy>=1.11" "threadpoolctl>=3.1"
	touch $@

$(VENV)/.built: $(VENV)/.build-deps $(NATIVE)
	$(PIP) install -q --no-build-isolation -e ".[demo]"
	touch $@

# The test extra's requirements straight from pyproject.toml: `pip install -e ".[test]"` would
# build every native module a second time (serially, in a temporary directory: minutes of a
# fresh clone's CI). Pythons without tomllib (< 3.11) take that slower road.
$(VENV)/.test-deps: $(VENV)/.built pyproject.toml
	if $(PY) -c "import tomllib" 2>/dev/null; then \
	    $(PY) -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["test"]))' > $(VENV)/test-requirements.txt && \
	    $(PIP) install -q -r $(VENV)/test-requirements.txt; \
	else $(PIP) install -q --no-build-isolation -e ".[test]"; fi
	touch $@

build: $(VENV)/.built

demo: $(VENV)/.built
	$(PY) -m pynn.demo

test: $(VENV)/.test-deps
	$(PY) -m pytest -q $(PYTEST_ARGS)

# No test marked opencl, and PYNN_DEVICE=cpu so an exported PYNN_DEVICE cannot move the rest.
test-fast: $(VENV)/.test-deps
	PYNN_DEVICE=cpu $(PY) -m pytest -q $(PYTEST_ARGS) -m "not opencl"

# The kernels under AddressSanitizer + UBSan + Cython bounds checks, built in a copy of the tree
# (build/check-native; the in-place build is untouched), then the CPU kernel tests under them.
# CHECK_NATIVE_TESTS, CHECK_NATIVE_ONLY and PYTEST_ARGS narrow it (see .ci/check-native).
check-native: $(VENV)/.test-deps
	PY=$(PY) PYTEST_ARGS="$(PYTEST_ARGS)" CHECK_NATIVE_ONLY="$(CHECK_NATIVE_ONLY)" \
	    CHECK_NATIVE_TESTS="$(CHECK_NATIVE_TESTS)" .ci/check-native

info: $(VENV)/.built
	$(PY) -m pynn info

bench: $(VENV)/.test-deps
	$(PY) -m bench

clean:
	rm -rf build pynn/_native/*.so native/*.c pynn/_build_flags.py $(VENV)/.built $(VENV)/.test-deps
