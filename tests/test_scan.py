"""The scan family (native/scan.pyx, opencl/scan.cl: keras.ops' cumsum/cumprod) against the
float64 oracles of tests/reference/scan_ref.py on both backends (OpenCL also against the
CPU), cumprod's gradient where x has zeros, thread-count invariance and bad operands."""

import numpy as np
import pytest

from tests.backend_util import check_op, rand
from tests.reference import scan_ref as ref


def _tol(target, n=1):
    return {"rtol": (1e-5 if target.dtype == np.float32 else 1e-12) * n,
            "atol": (1e-5 if target.dtype == np.float32 else 1e-12) * n}


def _factors(rng, shape, dtype):
    """Products that neither vanish nor blow up over 33 steps."""
    return (1 + 0.2 * rand(rng, shape, np.float64)).astype(dtype)


@pytest.mark.parametrize("op", ["sum", "prod"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("shape,axis", [((7,), 0), ((3, 33), 1), ((5, 7, 3), 1),
                                        ((2, 31, 1), 0), ((4, 1, 5), -1), ((2, 0, 5), 1)])
def test_scan_forward(target, op, reverse, shape, axis):
    rng = np.random.default_rng(1)
    x = (rand(rng, shape, target.dtype) if op == "sum" else _factors(rng, shape, target.dtype))
    check_op(target, "scan_forward", x, axis, op, reverse, ref=ref.scan_forward_ref,
             rtol=_tol(target, 10))


@pytest.mark.parametrize("shape,axis", [((6,), 0), ((3, 7), 1), ((5, 4, 3), 1),
                                        ((7, 2), 0)])
@pytest.mark.parametrize("zeros", [0, 1, 2])
def test_cumprod_backward_with_zeros(target, shape, axis, zeros):
    rng = np.random.default_rng(2 + zeros)
    x = _factors(rng, shape, np.float64)
    dy = rand(rng, shape, np.float64)
    moved = np.moveaxis(x, axis, -1)  # a view: zeros land along the scanned axis
    n = moved.shape[-1]
    if zeros >= 1:
        moved[..., n // 2] = 0.0
    if zeros == 2:
        moved[..., 0] = 0.0
        moved[..., -1] = 0.0
    x, dy = x.astype(target.dtype), dy.astype(target.dtype)
    check_op(target, "cumprod_backward", x, dy, axis, ref=ref.cumprod_backward_ref,
             rtol=_tol(target, 10))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_scans_give_the_same_bits_at_any_thread_count(dtype):
    from pynn._native import info, scan

    rng = np.random.default_rng(4)
    x = _factors(rng, (40, 9, 101), dtype)
    x[3, 4, :] = 0.0
    dy = rand(rng, x.shape, dtype)
    runs = []
    before = info.get_max_threads()
    try:
        for n in (1, 2, 3):
            info.set_num_threads(n)
            runs.append((scan.scan_forward(x, 1, "sum", False),
                         scan.scan_forward(x, 2, "prod", True),
                         scan.cumprod_backward(x, dy, 1)))
    finally:
        info.set_num_threads(before)
    for other in runs[1:]:
        for want, got in zip(runs[0], other):
            np.testing.assert_array_equal(got, want)
    tol = 1e-4 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(runs[0][0], ref.scan_forward_ref(x, 1, "sum"), rtol=tol,
                               atol=tol)
    np.testing.assert_allclose(runs[0][2], ref.cumprod_backward_ref(x, dy, 1), rtol=tol,
                               atol=tol)


def test_bad_operands_name_the_op():
    from pynn.backend import cpu

    x = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"scan_forward: 'axis' 2 is out of range"):
        cpu.scan_forward(x, 2, "sum", False)
    with pytest.raises(TypeError, match=r"scan_forward: 'axis' must be an int, got 1.5"):
        cpu.scan_forward(x, 1.5, "sum", False)
    with pytest.raises(ValueError, match=r"scan_forward: 'op' must be one of sum, prod, got "
                                         r"'max'"):
        cpu.scan_forward(x, 0, "max", False)
    with pytest.raises(TypeError, match=r"scan_forward: 'reverse' must be a bool"):
        cpu.scan_forward(x, 0, "sum", "yes")
    with pytest.raises(ValueError, match=r"cumprod_backward: 'dy' must have x's shape "
                                         r"\(3, 4\), got \(4, 3\)"):
        cpu.cumprod_backward(x, np.ones((4, 3), np.float32), 0)
    with pytest.raises(TypeError, match=r"scan_forward"):
        cpu.scan_forward(np.array(["a", "b"]), 0, "sum", False)
