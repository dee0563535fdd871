"""Pooling ops (native/pool.pyx, opencl/pool.cl) against the float64 oracle in
tests/reference/pool_ref.py, finite differences, torch, thread counts and bad inputs.

The checks that hold on both backends take the ``backend`` fixture (tests/conftest.py) and
run one body on each; OpenCL-only checks are marked ``opencl``.
"""

import numpy as np
import pytest

from pynn._native import info, pool
from tests.backend_util import check_op, rand
from tests.reference import pool_ref as ref

TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-13, atol=1e-13)}

# (x shape (N, H, W, C), pool_size, strides, padding)
CASES = [
    ((2, 7, 5, 3), (2, 2), (2, 2), "valid"),
    ((2, 7, 5, 3), (2, 2), (2, 2), "same"),
    ((1, 13, 11, 7), (3, 3), (2, 2), "same"),      # asymmetric 'same' padding
    ((3, 9, 8, 2), (3, 2), (1, 3), "same"),
    ((2, 8, 9, 5), (4, 3), (3, 1), "valid"),
    ((1, 6, 7, 65), (3, 3), (1, 1), "same"),       # C above one channel block
    ((2, 4, 4, 1), (5, 5), (1, 1), "same"),        # window wider than the image
    ((2, 3, 4, 3), (5, 5), (1, 1), "valid"),       # empty output
    ((4, 1, 1, 3), (2, 2), (2, 2), "same"),        # 1x1 images
    ((0, 5, 5, 3), (2, 2), (2, 2), "valid"),       # empty batch
    ((1, 10, 3, 2), (2, 1), (3, 1), "valid"),
]
# More cases, first written for the OpenCL kernels: small and awkward, never a multiple of a
# work-group.
CASES += [
    ((1, 1, 1, 1), (1, 1), (1, 1), "valid"),
    ((2, 7, 9, 3), (2, 2), (2, 2), "valid"),
    ((2, 7, 9, 3), (3, 3), (2, 2), "same"),
    ((1, 13, 5, 7), (3, 2), (1, 1), "same"),
    ((3, 5, 7, 2), (2, 3), (2, 3), "same"),
    ((1, 6, 6, 5), (3, 3), (1, 2), "valid"),
    ((2, 2, 3, 1), (3, 3), (1, 1), "valid"),  # window larger than the input: empty output
]
IDS = [f"{x}-p{p}-s{s}-{pad}" for x, p, s, pad in CASES]
GLOBAL_SHAPES = [(2, 5, 7, 3), (1, 1, 1, 1), (3, 4, 4, 130), (0, 3, 3, 2), (2, 13, 1, 5),
                 (2, 7, 9, 3), (3, 5, 13, 7)]


@pytest.fixture
def rng():
    return np.random.default_rng(4321)


@pytest.fixture
def restore_threads():
    n = info.get_max_threads()
    yield
    info.set_num_threads(n)


def tol(target):
    """The tolerance on ``target``: the CPU's per-dtype TOL, OpenCL's float32 one."""
    return target.rtol() if target.is_opencl else TOL[target.dtype.type]


def check(op, got, want, dtype):
    """The one comparison helper: shape, dtype, then values at the dtype's tolerance."""
    assert got.shape == want.shape, f"{op}: shape {got.shape}, expected {want.shape}"
    assert got.dtype == dtype, f"{op}: dtype {got.dtype}, expected {np.dtype(dtype)}"
    np.testing.assert_allclose(got, want, err_msg=op, **TOL[dtype])


def distinct(rng, shape, dtype):
    """Random values without ties (ties are tested on their own)."""
    size = int(np.prod(shape))
    return (rng.permutation(size).reshape(shape) / max(size, 1) - 0.5).astype(dtype)


# -- forward and backward against the reference, over both backends (``target``: the CPU in
# float32 and float64, OpenCL in float32; on OpenCL check_op also compares with the CPU op) --


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_maxpool_matches_reference(target, rng, case):
    x_shape, p, s, pad = case
    x = distinct(rng, x_shape, target.dtype)
    _, (y, arg) = check_op(target, "maxpool2d_forward", x, p, s, pad,
                           ref=ref.maxpool2d_forward_ref, rtol=tol(target))
    assert arg.dtype == np.int32
    dy = rng.standard_normal(y.shape).astype(target.dtype)
    check_op(target, "maxpool2d_backward", dy, arg, x_shape, ref=ref.maxpool2d_backward_ref,
             rtol=tol(target))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_avgpool_matches_reference(target, rng, case):
    x_shape, p, s, pad = case
    x = rng.standard_normal(x_shape).astype(target.dtype)
    _, y = check_op(target, "avgpool2d_forward", x, p, s, pad, ref=ref.avgpool2d_forward_ref,
                    rtol=tol(target))
    dy = rng.standard_normal(y.shape).astype(target.dtype)
    check_op(target, "avgpool2d_backward", dy, x_shape, p, s, pad,
             ref=ref.avgpool2d_backward_ref, rtol=tol(target))


@pytest.mark.parametrize("shape", GLOBAL_SHAPES, ids=str)
def test_global_pools_match_reference(target, rng, shape):
    x = distinct(rng, shape, target.dtype)
    check_op(target, "global_avgpool2d_forward", x, ref=ref.global_avgpool2d_forward_ref,
             rtol=tol(target))
    _, (y, arg) = check_op(target, "global_maxpool2d_forward", x,
                           ref=ref.global_maxpool2d_forward_ref, rtol=tol(target))
    assert arg.dtype == np.int32
    dy = rng.standard_normal(y.shape).astype(target.dtype)
    check_op(target, "global_avgpool2d_backward", dy, shape,
             ref=ref.global_avgpool2d_backward_ref, rtol=tol(target))
    check_op(target, "global_maxpool2d_backward", dy, arg, shape,
             ref=ref.global_maxpool2d_backward_ref, rtol=tol(target))


# maxpool2d_backward fills an uninitialized dx: pixels that no window (or no argmax) covers
# must still come out 0. Strides equal to, greater than and smaller than the pool; the last
# two cases are large enough to run threaded.
SCATTER_CASES = [
    ((2, 9, 7, 3), (2, 2), (2, 2), "valid"),
    ((2, 9, 7, 3), (2, 2), (2, 2), "same"),
    ((1, 11, 13, 5), (3, 3), (3, 3), "valid"),
    ((2, 11, 13, 3), (2, 2), (3, 3), "valid"),     # rows and columns in no window
    ((2, 10, 9, 3), (2, 3), (4, 5), "same"),
    ((1, 11, 9, 4), (3, 3), (2, 2), "same"),       # overlapping windows add
    ((2, 7, 9, 2), (3, 2), (1, 1), "valid"),
    ((5, 33, 31, 37), (2, 2), (2, 2), "valid"),
    ((3, 31, 33, 35), (3, 3), (2, 2), "same"),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", SCATTER_CASES,
                         ids=[f"{x}-p{p}-s{s}-{pad}" for x, p, s, pad in SCATTER_CASES])
def test_maxpool_backward_zeroes_every_uncovered_pixel(rng, case, dtype):
    x_shape, p, s, pad = case
    x = distinct(rng, x_shape, dtype)
    y, arg = pool.maxpool2d_forward(x, p, s, pad)
    dy = rng.standard_normal(y.shape).astype(dtype)
    want = ref.maxpool2d_backward_ref(dy, arg, x_shape)
    for _ in range(2):
        # Leave freed NaN-filled blocks of dx's size behind for np.empty to reuse.
        np.full(x_shape, np.nan, dtype)
        got = pool.maxpool2d_backward(dy, arg, x_shape)
        check("maxpool2d_backward", got, want, dtype)
    assert np.count_nonzero(got) == np.count_nonzero(want) < got.size


def test_ties_go_to_the_first_pixel_in_row_major_order():
    x = np.zeros((1, 4, 4, 2), np.float32)
    x[0, 1, 0, 0] = x[0, 0, 1, 0] = 1.0    # channel 0: two maxima in one window
    y, arg = pool.maxpool2d_forward(x, (2, 2), (2, 2), "valid")
    assert arg[0, 0, 0, 0] == 1            # (h=0, w=1) comes before (h=1, w=0)
    assert arg[0, 0, 0, 1] == 0            # all equal: the window's first pixel
    assert arg[0, 1, 1, 1] == 2 * 4 + 2
    _, garg = pool.global_maxpool2d_forward(x)
    np.testing.assert_array_equal(garg, [[1, 0]])


def test_maxpool_nan_propagates():
    x = np.arange(16, dtype=np.float64).reshape(1, 4, 4, 1)
    x[0, 1, 1, 0] = np.nan
    y, arg = pool.maxpool2d_forward(x, (2, 2), (2, 2), "valid")
    assert np.isnan(y[0, 0, 0, 0]) and arg[0, 0, 0, 0] == 5
    assert y[0, 1, 1, 0] == 15
    gy, garg = pool.global_maxpool2d_forward(x)
    assert np.isnan(gy[0, 0]) and garg[0, 0] == 5


@pytest.mark.parametrize("window", [(2, 3), (2, 2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_maxpool_nan_and_ties_across_channels(dtype, window):
    """37 channels (vector blocks and the last channels lane by lane), 2x2 windows (their
    own straight-line code) and others: in each window the first NaN in row-major order
    wins, else the first of equal maxima (-0.0 and 0.0 equal: the first keeps its sign);
    the global max follows the same rule."""
    rng = np.random.default_rng(5)
    x = rng.integers(-1, 2, size=(2, 5, 6, 37)).astype(dtype)   # many ties
    x[(x == 0) & (rng.random(x.shape) < 0.5)] = -0.0
    x[rng.random(x.shape) < 0.05] = np.nan
    ph, pw = window
    y, arg = pool.maxpool2d_forward(x, window, window, "valid")
    gy, garg = pool.global_maxpool2d_forward(x)
    for n in range(2):
        for c in range(37):
            for ho in range(5 // ph):
                for wo in range(6 // pw):
                    win = [(h, w) for h in range(ph * ho, ph * ho + ph)
                           for w in range(pw * wo, pw * wo + pw)]
                    vals = [x[n, h, w, c] for h, w in win]
                    nans = [i for i, v in enumerate(vals) if np.isnan(v)]
                    k = nans[0] if nans else int(np.argmax(vals))
                    h, w = win[k]
                    assert arg[n, ho, wo, c] == h * 6 + w, (n, ho, wo, c)
                    np.testing.assert_array_equal(y[n, ho, wo, c], vals[k])
                    assert np.signbit(y[n, ho, wo, c]) == np.signbit(vals[k])
            plane = x[n, :, :, c].ravel()
            nans = np.flatnonzero(np.isnan(plane))
            k = nans[0] if nans.size else int(np.argmax(plane))
            assert garg[n, c] == k
            np.testing.assert_array_equal(gy[n, c], plane[k])


def test_same_avgpool_averages_in_bounds_pixels_only():
    """Documented golden values: pool 3, stride 2, 'same' on a 4x4 ramp pads one pixel
    after each axis. TF/JAX Keras (and api.py) average the in-bounds pixels; the torch
    backend of Keras 3.15 instead replicates the edge (6.667 at [0, 1]) when padding is
    asymmetric, a divergence fixed upstream in keras-team/keras#23233."""
    x = np.arange(16, dtype=np.float64).reshape(1, 4, 4, 1)
    y = pool.avgpool2d_forward(x, (3, 3), (2, 2), "same")[0, :, :, 0]
    np.testing.assert_allclose(y, [[5.0, 39 / 6], [66 / 6, 12.5]], rtol=1e-15)


@pytest.mark.parametrize("case", [((2, 9, 8, 3), (3, 3), (1, 1), "same"),
                                  ((1, 9, 11, 2), (3, 3), (2, 2), "same"),
                                  ((2, 8, 9, 2), (2, 4), (2, 3), "valid")])
def test_matches_torch_where_padding_is_symmetric(rng, case):
    """torch's avg_pool2d(count_include_pad=False) and max_pool2d(return_indices=True) are
    the same ops when the 'same' padding is symmetric (Keras-torch calls them directly)."""
    torch = pytest.importorskip("torch")
    x_shape, p, s, pad = case
    x = rng.standard_normal(x_shape)
    tp = []
    for n, k, st in zip(x_shape[1:3], p, s):
        total = max((-(-n // st) - 1) * st + k - n, 0) if pad == "same" else 0
        assert total % 2 == 0, "a case with symmetric padding is needed here"
        tp.append(total // 2)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)
    yt = torch.nn.functional.avg_pool2d(xt, p, s, tp, count_include_pad=False)
    np.testing.assert_allclose(pool.avgpool2d_forward(x, p, s, pad),
                               yt.permute(0, 2, 3, 1).numpy(), rtol=1e-13)
    mt, it = torch.nn.functional.max_pool2d(xt, p, s, tp, return_indices=True)
    y, arg = pool.maxpool2d_forward(x, p, s, pad)
    np.testing.assert_array_equal(y, mt.permute(0, 2, 3, 1).numpy())
    np.testing.assert_array_equal(arg, it.permute(0, 2, 3, 1).numpy())


def numerical_grad(f, a, eps=1e-5):
    """4th-order central differences of the scalar f() w.r.t. every entry of a (in place)."""
    g = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        orig = a[i]
        vals = []
        for step in (-2, -1, 1, 2):
            a[i] = orig + step * eps
            vals.append(f())
        a[i] = orig
        g[i] = (vals[0] - 8 * vals[1] + 8 * vals[2] - vals[3]) / (12 * eps)
    return g


FD_CASES = [((1, 5, 6, 2), (3, 3), (2, 2), "same"), ((2, 4, 5, 1), (2, 3), (1, 1), "same"),
            ((1, 7, 5, 2), (3, 2), (2, 3), "valid")]


@pytest.mark.parametrize("case", FD_CASES)
def test_backward_by_finite_differences(rng, case):
    x_shape, p, s, pad = case
    x = distinct(rng, x_shape, np.float64)  # distinct values: max is differentiable there
    _, arg = pool.maxpool2d_forward(x, p, s, pad)
    g = rng.standard_normal(arg.shape)
    np.testing.assert_allclose(
        pool.maxpool2d_backward(g, arg, x_shape),
        numerical_grad(lambda: float(np.sum(pool.maxpool2d_forward(x, p, s, pad)[0] * g)), x),
        rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(
        pool.avgpool2d_backward(g, x_shape, p, s, pad),
        numerical_grad(lambda: float(np.sum(pool.avgpool2d_forward(x, p, s, pad) * g)), x),
        rtol=1e-8, atol=1e-9)
    gg = rng.standard_normal((x_shape[0], x_shape[3]))
    _, garg = pool.global_maxpool2d_forward(x)
    np.testing.assert_allclose(
        pool.global_maxpool2d_backward(gg, garg, x_shape),
        numerical_grad(lambda: float(np.sum(pool.global_maxpool2d_forward(x)[0] * gg)), x),
        rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(
        pool.global_avgpool2d_backward(gg, x_shape),
        numerical_grad(lambda: float(np.sum(pool.global_avgpool2d_forward(x) * gg)), x),
        rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thread_count_invariance(rng, dtype, restore_threads):
    x = rng.standard_normal((3, 11, 10, 70)).astype(dtype)
    p, s, pad = (3, 3), (2, 1), "same"
    results = []
    for n in (1, 2, 3):
        info.set_num_threads(n)
        y, arg = pool.maxpool2d_forward(x, p, s, pad)
        a = pool.avgpool2d_forward(x, p, s, pad)
        gy, garg = pool.global_maxpool2d_forward(x)
        ga = pool.global_avgpool2d_forward(x)
        results.append((y, arg, a, gy, garg, ga,
                        pool.maxpool2d_backward(y, arg, x.shape),
                        pool.avgpool2d_backward(a, x.shape, p, s, pad),
                        pool.global_maxpool2d_backward(gy, garg, x.shape),
                        pool.global_avgpool2d_backward(ga, x.shape)))
    for res in results[1:]:
        for got, want in zip(res, results[0]):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("make", [
    lambda a: np.asfortranarray(a),
    lambda a: np.repeat(a, 2, axis=a.ndim - 1)[..., ::2],     # strided view
    lambda a: np.flip(np.flip(a, 0).copy(), 0),               # negative strides
], ids=["fortran", "strided", "negative"])
def test_layouts_and_read_only_inputs(rng, make):
    x = distinct(rng, (2, 7, 6, 3), np.float32)
    y, arg = pool.maxpool2d_forward(x, (2, 2), (2, 2), "same")
    want = (y, arg, pool.maxpool2d_backward(y, arg, x.shape),
            pool.avgpool2d_forward(x, 3, 2, "same"), pool.global_avgpool2d_forward(x),
            pool.global_maxpool2d_forward(x)[0])
    xs, ys, args = make(x), make(y), make(arg)
    for a in (xs, ys, args):
        a.flags.writeable = False
    y2, arg2 = pool.maxpool2d_forward(xs, (2, 2), (2, 2), "same")
    got = (y2, arg2, pool.maxpool2d_backward(ys, args, x.shape),
           pool.avgpool2d_forward(xs, 3, 2, "same"), pool.global_avgpool2d_forward(xs),
           pool.global_maxpool2d_forward(xs)[0])
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_int_argmax_of_other_int_dtypes_is_accepted(rng):
    x = distinct(rng, (2, 4, 4, 3), np.float64)
    y, arg = pool.maxpool2d_forward(x, 2, 2, "valid")
    np.testing.assert_array_equal(pool.maxpool2d_backward(y, arg.astype(np.int64), x.shape),
                                  pool.maxpool2d_backward(y, arg, x.shape))


X = np.ones((2, 6, 6, 3))
DY = np.ones((2, 3, 3, 3))
ARG = np.zeros((2, 3, 3, 3), np.int32)


@pytest.mark.parametrize("call, error, match", [
    (lambda: pool.maxpool2d_forward(X[0], 2, 2, "valid"), ValueError, "dimensions"),
    (lambda: pool.maxpool2d_forward(None, 2, 2, "valid"), ValueError, "None"),
    (lambda: pool.maxpool2d_forward(X.astype(str), 2, 2, "valid"), TypeError, "numeric"),
    (lambda: pool.maxpool2d_forward(X, 0, 2, "valid"), ValueError, "pool_size"),
    (lambda: pool.maxpool2d_forward(X, 2, (2, -1), "valid"), ValueError, "strides"),
    (lambda: pool.maxpool2d_forward(X, 2, None, "valid"), ValueError, "strides"),
    (lambda: pool.avgpool2d_forward(X, 2, 2, "full"), ValueError, "padding"),
    (lambda: pool.avgpool2d_forward(X, (2, 2, 2), 2, "valid"), ValueError, "pool_size"),
    (lambda: pool.maxpool2d_backward(DY, ARG[..., :2], X.shape), ValueError, "argmax"),
    (lambda: pool.maxpool2d_backward(DY, None, X.shape), ValueError, "argmax"),
    (lambda: pool.maxpool2d_backward(DY, ARG + 36, X.shape), ValueError, "outside"),
    (lambda: pool.maxpool2d_backward(DY, ARG - 1, X.shape), ValueError, "outside"),
    (lambda: pool.maxpool2d_backward(DY, ARG + 0.5, X.shape), TypeError, "integers"),
    (lambda: pool.maxpool2d_backward(DY, ARG, (2, 6, 6, 4)), ValueError, "'dy'"),
    (lambda: pool.maxpool2d_backward(DY, ARG, (2, 6, 6)), ValueError, "input_shape"),
    (lambda: pool.avgpool2d_backward(DY, X.shape, 2, 1, "valid"), ValueError, "'dy'"),
    (lambda: pool.avgpool2d_backward(DY[0], X.shape, 2, 2, "valid"), ValueError,
     "dimensions"),
    (lambda: pool.global_avgpool2d_forward(X[0]), ValueError, "dimensions"),
    (lambda: pool.global_avgpool2d_forward(np.ones((2, 0, 3, 1))), ValueError, "H, W"),
    (lambda: pool.global_maxpool2d_forward(np.ones((2, 3, 0, 1))), ValueError, "H, W"),
    (lambda: pool.global_avgpool2d_backward(np.ones((2, 4)), X.shape), ValueError, "'dy'"),
    (lambda: pool.global_maxpool2d_backward(np.ones((2, 3)), np.full((2, 3), 36), X.shape),
     ValueError, "outside"),
    (lambda: pool.global_maxpool2d_backward(np.ones((2, 3)), np.zeros((2, 2)), X.shape),
     ValueError, "argmax"),
])
def test_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


# -- over both backends (the `backend` fixture, float32) ------------------------------------


def test_maxpool_ties_and_nan_on_backend(backend):
    x = np.zeros((1, 4, 4, 2), np.float32)  # all ties: the first pixel of each window wins
    x[0, 1, 1, 1] = np.nan  # and a NaN beats numbers
    check_op(backend, "maxpool2d_forward", x, (2, 2), (1, 1), "same",
             ref=ref.maxpool2d_forward_ref)
    check_op(backend, "global_maxpool2d_forward", x, ref=ref.global_maxpool2d_forward_ref)


def test_maxpool_backward_overlapping_windows_is_deterministic_on_backend(backend):
    rng = np.random.default_rng(5)
    ops = backend.ops
    x = backend.up(rand(rng, (2, 9, 7, 3)))
    y, arg = ops.maxpool2d_forward(x, (3, 3), (1, 1), "same")
    dy = backend.up(rand(rng, y.shape))
    a = backend.down(ops.maxpool2d_backward(dy, arg, (2, 9, 7, 3)))
    b = backend.down(ops.maxpool2d_backward(dy, arg, (2, 9, 7, 3)))
    np.testing.assert_array_equal(a, b)


def test_pool_empty_batch_on_backend(backend):
    ops = backend.ops
    y, arg = ops.maxpool2d_forward(ops.zeros((0, 5, 5, 2)), (2, 2), (2, 2), "valid")
    assert y.shape == arg.shape == (0, 2, 2, 2) and arg.dtype == np.int32
    assert ops.maxpool2d_backward(y, arg, (0, 5, 5, 2)).shape == (0, 5, 5, 2)
    assert ops.global_avgpool2d_forward(ops.zeros((0, 3, 3, 4))).shape == (0, 4)


# -- OpenCL only ------------------------------------------------------------------------------


@pytest.mark.opencl
def test_pool_bad_inputs_opencl(ocl):
    x = ocl.asarray(np.ones((1, 4, 4, 2), np.float32))
    with pytest.raises(ValueError, match="4 dimensions"):
        ocl.maxpool2d_forward(ocl.zeros((4, 4, 2)), (2, 2), (2, 2), "valid")
    with pytest.raises(ValueError, match="padding"):
        ocl.avgpool2d_forward(x, (2, 2), (2, 2), "full")
    with pytest.raises(ValueError, match="pool_size"):
        ocl.maxpool2d_forward(x, (0, 2), (2, 2), "valid")
    with pytest.raises(TypeError, match="asarray"):
        ocl.global_maxpool2d_forward(np.ones((1, 2, 2, 1), np.float32))
    with pytest.raises(ValueError, match="H, W >= 1"):
        ocl.global_avgpool2d_forward(ocl.zeros((1, 0, 3, 2)))
    y, arg = ocl.maxpool2d_forward(x, (2, 2), (2, 2), "valid")
    with pytest.raises(TypeError, match="int32"):
        ocl.maxpool2d_backward(y, y, (1, 4, 4, 2))
    with pytest.raises(ValueError, match="input_shape"):
        ocl.maxpool2d_backward(y, arg, (1, 4, 4))
    with pytest.raises(ValueError, match="shape"):
        ocl.avgpool2d_backward(y, (1, 5, 5, 2), (2, 2), (1, 1), "valid")


@pytest.mark.opencl
def test_maxpool_backward_skips_out_of_range_argmax_opencl(ocl):
    # The device never follows a bad index (no host round trip to report it).
    dy = ocl.asarray(np.ones((1, 1, 1, 1), np.float32))
    bad = ocl.asarray(np.array([7], np.int32).reshape(1, 1, 1, 1), np.int32)
    np.testing.assert_array_equal(ocl.maxpool2d_backward(dy, bad, (1, 2, 2, 1)).get(), 0)


# -- adaptive pooling (its own file, tests/test_adaptive_pool.py, holds the rest) ----------


def test_adaptive_pools_with_divisible_bins_are_the_windowed_pools(backend):
    # adaptive_avgpool_forward / _backward and adaptive_maxpool_forward / _backward of an
    # 8x6 map to 4x3: the 2x2 windows of avgpool2d and maxpool2d, the same argmax
    rng = np.random.default_rng(3)
    x = distinct(rng, (2, 8, 6, 3), np.float32)
    dy = rand(rng, (2, 4, 3, 3))
    ops = backend.ops
    xd, dyd = backend.up(x), backend.up(dy)
    pairs = [
        (ops.adaptive_avgpool_forward(xd, (4, 3)), ops.avgpool2d_forward(xd, (2, 2), (2, 2))),
        (ops.adaptive_avgpool_backward(dyd, x.shape),
         ops.avgpool2d_backward(dyd, x.shape, (2, 2), (2, 2))),
    ]
    (ya, aa), (yw, aw) = (ops.adaptive_maxpool_forward(xd, (4, 3)),
                          ops.maxpool2d_forward(xd, (2, 2), (2, 2)))
    pairs += [(ya, yw), (aa, aw), (ops.adaptive_maxpool_backward(dyd, aa, x.shape),
                                   ops.maxpool2d_backward(dyd, aw, x.shape))]
    for got, want in pairs:
        np.testing.assert_allclose(backend.down(got), backend.down(want), rtol=1e-6,
                                   atol=1e-7)
