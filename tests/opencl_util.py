"""Shared skip logic and fixtures of the OpenCL tests.

Every test that touches the OpenCL backend carries the ``opencl`` marker (a module's
``pytestmark = pytest.mark.opencl``, or ``pytest.param(..., marks=pytest.mark.opencl)``), so
``pytest -m "not opencl"`` (``make test-fast``) runs no OpenCL code. tests/conftest.py skips a
marked test, with the reason shown, only when pyopencl cannot be imported or no OpenCL device
exists; the probe runs when the first marked test starts, not at import. In CI
``pocl-binary-distribution`` provides a CPU device, so they run. ``PYNN_CL_DEVICE`` ('opencl'
or 'opencl:P:D') picks the device under test.
"""

import functools
import os

import numpy as np
import pytest


@functools.cache
def probe():
    """(True, "") when an OpenCL device can be used, else (False, why)."""
    try:
        import pyopencl  # noqa: F401
    except ImportError as exc:
        return False, f"pyopencl is not installed ({exc}); pip install pyopencl mako"
    from pynn.backend.opencl import runtime as rt

    try:
        found = rt.devices()
    except Exception as exc:  # a broken ICD must not break collection  # noqa: BLE001
        return False, f"OpenCL platform query failed: {exc}"
    if not found:
        return False, "no OpenCL device; pip install pocl-binary-distribution for a CPU one"
    return True, ""


def skip_without_opencl():
    ok, reason = probe()
    if not ok:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def ocl():
    """The OpenCL backend module with its device selected."""
    skip_without_opencl()
    from pynn.backend import opencl

    opencl.select_device(os.environ.get("PYNN_CL_DEVICE", "opencl"))
    return opencl


def rand(rng, shape, dtype=np.float32):
    """Random normal data that is never all zero (a zero input hides indexing bugs)."""
    a = rng.standard_normal(shape)
    if a.size:
        a.flat[0] = 0.5 + abs(a.flat[0])
    return a.astype(dtype)


def assert_close(got, want, rtol, what=""):
    """max |got - want| <= rtol * max(1, max |want|), with a message naming the op."""
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != expected {want.shape}"
    if want.size == 0:
        return
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got.astype(np.float64) - want).max())
    assert err <= rtol * scale, f"{what}: max abs error {err:.3g} > {rtol} * {scale:.3g}"
