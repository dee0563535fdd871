"""Shared skip logic of the OpenCL tests (their fixtures, ``backend``, ``backend_opencl`` and
``ocl``, are in tests/conftest.py; their helpers in tests/backend_util.py).

Every test that touches the OpenCL backend carries the ``opencl`` marker (a module's
``pytestmark = pytest.mark.opencl``, or ``pytest.param(..., marks=pytest.mark.opencl)``), so
``pytest -m "not opencl"`` (``make test-fast``) runs no OpenCL code. tests/conftest.py skips a
marked test, with the reason shown, only when pyopencl cannot be imported or no OpenCL device
exists; the probe runs when the first marked test starts, not at import. In CI
``pocl-binary-distribution`` provides a CPU device, so they run. ``PYNN_CL_DEVICE`` ('opencl'
or 'opencl:P:D') picks the device under test.
"""

import functools

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
