"""Shared fixtures: the backend under test (cpu, opencl), seeding, float64 mode, thread-count
control, a small CPU backend guard."""

import os
import sys

import numpy as np
import pytest

import pynn


def pytest_runtest_setup(item):
    """A test marked ``opencl`` is skipped, with the reason, when no OpenCL device is usable."""
    if item.get_closest_marker("opencl") is not None:
        from tests.opencl_util import skip_without_opencl

        skip_without_opencl()
    if item.get_closest_marker("large") is not None and os.environ.get("PYNN_TEST_LARGE") != "1":
        pytest.skip("builds a larger application model in Keras and pynn (minutes each on two "
                    "cores); PYNN_TEST_LARGE=1 runs it")


OPENCL_FIXTURES = ("backend_opencl", "ocl", "small_work_groups")


def pytest_collection_modifyitems(config, items):
    """A test that takes an OpenCL-only fixture must say so with the ``opencl`` marker (so
    that ``-m "not opencl"`` deselects it)."""
    unmarked = [item.nodeid for item in items
                if set(OPENCL_FIXTURES) & set(getattr(item, "fixturenames", ()))
                and item.get_closest_marker("opencl") is None]
    if unmarked:
        raise pytest.UsageError("OpenCL fixtures without the opencl marker: "
                                + ", ".join(unmarked))


_pyopencl_reported = []


def pytest_runtest_teardown(item):
    """Under ``-m "not opencl"`` (make test-fast) no test may import pyopencl: the CPU run
    must work where pyopencl is absent. The first test after which it appears (in each
    worker) fails here."""
    if item.config.getoption("markexpr", "").strip() != "not opencl" or _pyopencl_reported:
        return
    if "pyopencl" in sys.modules:
        _pyopencl_reported.append(item.nodeid)
        pytest.fail(f"{item.nodeid} imported pyopencl under -m 'not opencl' (mark it opencl)",
                    pytrace=False)


def _global_state():
    return {"threads": pynn.get_num_threads(), "floatx": pynn.floatx(),
            "device": pynn.get_device(), "policy": pynn.mixed_precision.global_policy().name}


@pytest.fixture(autouse=True)
def _no_leaked_global_state():
    """A test leaves pynn's thread count, floatx, device and dtype policy as it found them:
    the tests after it in the same worker read them (a benchmark's main that set one thread
    once made a later plan test fail, in some orders only)."""
    before = _global_state()
    yield
    after = _global_state()
    assert after == before, f"the test changed pynn's global state: {before} -> {after}"


@pytest.fixture(params=["cpu", pytest.param("opencl", marks=pytest.mark.opencl)])
def backend(request):
    """The backend under test (tests/backend_util.py's Backend): ``ops`` (the module), ``up``,
    ``down``, ``rtol(kind)``. The opencl param carries the ``opencl`` marker: ``-m "not
    opencl"`` deselects it and pytest_runtest_setup skips it, with the reason, without a
    device; pyopencl is imported only when it runs."""
    from tests.backend_util import make_backend

    return make_backend(request.param)


@pytest.fixture(params=[
    pytest.param(("cpu", "float32"), id="cpu-float32"),
    pytest.param(("cpu", "float64"), id="cpu-float64"),
    pytest.param(("opencl", "float32"), id="opencl-float32", marks=pytest.mark.opencl),
])
def target(request):
    """A backend and the float dtype under test (``target.dtype``): the CPU in float32 and
    float64, OpenCL in float32 (its only dtype). For tests whose CPU twin also runs float64."""
    from tests.backend_util import make_backend

    name, dtype = request.param
    return make_backend(name, dtype)


@pytest.fixture(scope="module")
def backend_opencl():
    """The OpenCL Backend alone, for OpenCL-only checks (mark the test ``opencl``)."""
    from tests.backend_util import make_backend
    from tests.opencl_util import skip_without_opencl

    skip_without_opencl()
    return make_backend("opencl")


@pytest.fixture(scope="module")
def ocl(backend_opencl):
    """The OpenCL backend module with its device selected (OpenCL-only checks)."""
    return backend_opencl.ops


@pytest.fixture
def small_work_groups(backend_opencl, monkeypatch):
    """The current OpenCL device treated as one whose work-group limit (32, rows 16) is below
    the kernels' defaults: kernels built from here on use capped sizes."""
    from pynn.backend.opencl import launch, runtime as rt

    monkeypatch.setitem(launch._sizes_by_device, rt.device(), (32, 16))
    return backend_opencl


@pytest.fixture
def seeded():
    """Seed pynn's generator (initializers, shuffling, dropout seeds); returns a NumPy rng."""
    pynn.utils.set_random_seed(1234)
    return np.random.default_rng(1234)


@pytest.fixture
def float64():
    """Layers created inside the test default to float64 (gradient checks); restored after."""
    previous = pynn.floatx()
    pynn.set_floatx("float64")
    try:
        yield
    finally:
        pynn.set_floatx(previous)


@pytest.fixture
def num_threads():
    """Yields pynn.set_num_threads; the thread count in force before the test is restored."""
    previous = pynn.get_num_threads()
    try:
        yield pynn.set_num_threads
    finally:
        pynn.set_num_threads(previous)


@pytest.fixture
def cpu_backend():
    """Run on the CPU backend; the previous device is restored after the test."""
    previous = pynn.get_device()
    pynn.set_device("cpu")
    try:
        yield
    finally:
        pynn.set_device(previous)
