"""conv2d_forward / conv2d_backward_input / conv2d_backward_weight (native/conv.pyx,
opencl/conv.cl) against the float64 oracle in tests/reference/conv_ref.py, finite differences,
thread counts and bad inputs.

The checks that hold on both backends take the ``backend`` fixture (tests/conftest.py) and
run one body on each; OpenCL-only checks are marked ``opencl``.
"""

import numpy as np
import pytest

from pynn._native import conv, info
from pynn.backend.api import ACTIVATIONS_NEEDING_INPUT
from pynn.backend.operands.common import conv_geometry
from tests.backend_util import check_op, rand
from tests.reference import conv_ref as ref

TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}

# (x shape (N, H, W, C), kernel shape (KH, KW, C, F), strides, padding, dilation)
CASES = [
    ((2, 7, 5, 3), (3, 3, 3, 4), (1, 1), "same", (1, 1)),
    ((3, 13, 9, 2), (3, 5, 2, 7), (2, 3), "same", (1, 1)),
    ((1, 13, 11, 3), (3, 3, 3, 5), (3, 2), "valid", (1, 1)),
    ((2, 9, 8, 3), (3, 3, 3, 4), (1, 1), "same", (2, 2)),
    ((2, 11, 10, 2), (2, 3, 2, 3), (2, 1), "valid", (2, 1)),
    ((2, 8, 9, 1), (3, 2, 1, 5), (3, 3), "same", (1, 2)),
    ((3, 4, 6, 5), (1, 1, 5, 7), (1, 1), "valid", (1, 1)),      # pointwise: plain GEMM
    ((2, 7, 7, 4), (1, 1, 4, 3), (2, 2), "same", (1, 1)),       # strided 1x1: subsampled
    ((2, 9, 8, 17), (1, 1, 17, 5), (3, 2), "valid", (1, 1)),    # the same, direct backward
    ((2, 3, 4, 3), (5, 5, 3, 2), (1, 1), "valid", (1, 1)),      # kernel larger: empty
    ((2, 3, 4, 3), (5, 5, 3, 2), (2, 1), "same", (1, 1)),       # kernel larger, padded
    ((4, 1, 1, 3), (3, 3, 3, 2), (1, 1), "same", (1, 1)),       # 1x1 images
    ((0, 5, 5, 3), (3, 3, 3, 2), (1, 1), "same", (1, 1)),       # empty batch
    ((1, 7, 1, 2), (3, 1, 2, 2), (2, 1), "same", (3, 1)),       # one column
]
IDS = [f"{x}*{k}-s{s}-{p}-d{d}" for x, k, s, p, d in CASES]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def small_workspace():
    """A workspace of ~one im2col row: many tiles, tiles that split images."""
    old = conv._set_workspace_bytes(64)
    yield
    conv._set_workspace_bytes(old)


@pytest.fixture(params=["blas", "direct"])
def path(request):
    """Both implementations on every shape: im2col + BLAS tiles, and the microkernel paths
    (forward, backward_weight) that the default picks only for small K = KH*KW*C."""
    old = conv._set_direct_max_k(0 if request.param == "blas" else 1 << 30)
    yield request.param
    conv._set_direct_max_k(old)


@pytest.fixture
def restore_threads():
    n = info.get_max_threads()
    yield
    info.set_num_threads(n)


def data(rng, case, dtype):
    x_shape, k_shape, strides, padding, dilation = case
    x = rng.standard_normal(x_shape).astype(dtype)
    k = rng.standard_normal(k_shape).astype(dtype)
    b = rng.standard_normal(k_shape[3]).astype(dtype)
    _, z = ref.conv2d_forward_ref(x, k, None, strides, padding, dilation)
    dz = rng.standard_normal(z.shape).astype(dtype)
    return x, k, b, dz


def geometry_of(x_shape, k_shape, strides, padding, dilation):
    """The geometry the CPU ops plan with (checked, then K and the padded size added)."""
    return conv._planned(conv_geometry("t", x_shape, k_shape, strides, padding, dilation))


def check(op, got, want, dtype):
    """The one comparison helper: shape, dtype, then values at the dtype's tolerance."""
    assert got.shape == want.shape, f"{op}: shape {got.shape}, expected {want.shape}"
    assert got.dtype == dtype, f"{op}: dtype {got.dtype}, expected {np.dtype(dtype)}"
    np.testing.assert_allclose(got, want, err_msg=op, **TOL[dtype])


def check_all_ops(rng, case, dtype):
    x, k, b, dz = data(rng, case, dtype)
    strides, padding, dilation = case[2:]
    y, z = conv.conv2d_forward(x, k, b, strides, padding, dilation, "linear", 0.0)
    assert z is None
    check("conv2d_forward", y, ref.conv2d_forward_ref(x, k, b, strides, padding, dilation)[0],
          dtype)
    dx = conv.conv2d_backward_input(dz, k, x.shape, strides, padding, dilation)
    check("conv2d_backward_input", dx,
          ref.conv2d_backward_input_ref(dz, k, x.shape, strides, padding, dilation), dtype)
    dw = conv.conv2d_backward_weight(x, dz, k.shape, strides, padding, dilation)
    check("conv2d_backward_weight", dw,
          ref.conv2d_backward_weight_ref(x, dz, k.shape, strides, padding, dilation), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_reference(rng, case, dtype, path):
    check_all_ops(rng, case, dtype)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_reference_tiled(rng, case, small_workspace):
    check_all_ops(rng, case, np.float64)


def test_large_batch_many_tiles(rng, path):
    """Default workspace, more rows than one tile holds (float32 tolerance grows with K)."""
    case = ((40, 23, 21, 16), (3, 3, 16, 8), (1, 1), "same", (1, 1))
    old = conv._set_workspace_bytes(1 << 16)
    try:
        check_all_ops(rng, case, np.float64)
    finally:
        conv._set_workspace_bytes(old)


def test_output_shapes_follow_keras():
    # Keras: 'same' -> ceil(n / s); 'valid' -> floor((n - k_eff) / s) + 1, or 0.
    x = np.ones((1, 10, 7, 1), np.float32)
    k = np.ones((3, 3, 1, 2), np.float32)
    assert conv.conv2d_forward(x, k, None, (3, 2), "same", (1, 1))[0].shape == (1, 4, 4, 2)
    assert conv.conv2d_forward(x, k, None, (3, 2), "valid", (1, 1))[0].shape == (1, 3, 3, 2)
    assert conv.conv2d_forward(x, k, None, (1, 1), "valid", (4, 3))[0].shape == (1, 2, 1, 2)
    assert conv.conv2d_forward(x, k, None, (1, 1), "valid", (5, 1))[0].shape == (1, 0, 5, 2)


def test_empty_output_gradients_are_zero(rng):
    x = rng.standard_normal((2, 3, 4, 3))
    k = rng.standard_normal((5, 5, 3, 2))
    y, _ = conv.conv2d_forward(x, k, None, (1, 1), "valid", (1, 1))
    assert y.shape == (2, 0, 0, 2)
    dx = conv.conv2d_backward_input(y, k, x.shape, (1, 1), "valid", (1, 1))
    dw = conv.conv2d_backward_weight(x, y, k.shape, (1, 1), "valid", (1, 1))
    assert dx.shape == x.shape and not dx.any()
    assert dw.shape == k.shape and not dw.any()


def test_zero_channels_and_filters(rng):
    x = np.zeros((2, 5, 5, 0))
    k = np.zeros((3, 3, 0, 4))
    b = rng.standard_normal(4)
    y, _ = conv.conv2d_forward(x, k, b, (1, 1), "same", (1, 1))
    np.testing.assert_array_equal(y, np.broadcast_to(b, (2, 5, 5, 4)))
    y, _ = conv.conv2d_forward(rng.standard_normal((2, 5, 5, 3)), np.zeros((3, 3, 3, 0)),
                               None, (1, 1), "same", (1, 1))
    assert y.shape == (2, 5, 5, 0)


@pytest.mark.parametrize("act", ["relu", "gelu", "softmax", "sigmoid", "tanh", "leaky_relu",
                                 "elu", "selu", "softplus", "linear"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_activation(rng, act, dtype, path):
    x, k, b, _ = data(rng, CASES[1], dtype)
    strides, padding, dilation = CASES[1][2:]
    alpha = 0.3
    y, z = conv.conv2d_forward(x, k, b, strides, padding, dilation, act, alpha)
    y_ref, z_ref = ref.conv2d_forward_ref(x, k, b, strides, padding, dilation, act, alpha)
    check(f"conv2d_forward[{act}]", y, y_ref, dtype)
    if act == "gelu":  # api.ACTIVATIONS_NEEDING_INPUT
        check("conv2d_forward[gelu] z", z, z_ref, dtype)
    else:
        assert z is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_passes_nan_and_keeps_zero_sign_rule(dtype, path):
    """The conv's own branch-free relu epilogue: NaN passes through, negatives become 0."""
    x = np.zeros((1, 2, 3, 1), dtype)
    k = np.ones((1, 1, 1, 1), dtype)
    x[0, 0, :, 0] = [np.nan, -2.0, 3.0]
    y, _ = conv.conv2d_forward(x, k, None, (1, 1), "valid", (1, 1), "relu", 0.0)
    assert np.isnan(y[0, 0, 0, 0])
    np.testing.assert_array_equal(y[0, 0, 1:, 0], [0.0, 3.0])
    np.testing.assert_array_equal(y[0, 1, :, 0], [0.0, 0.0, 0.0])


@pytest.mark.parametrize("f", [1, 5, 16, 17, 33, 47, 64, 81])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_direct_paths_awkward_widths(rng, f, dtype, path):
    """Filter counts around the microkernel's vector widths (8/16 lanes, two vectors per
    block, scalar tail) and row counts that leave 1-7 rows after blocks of 8 or 6."""
    for x_shape, c, s, p, d in [((2, 5, 7, 3), 3, (1, 1), "same", (1, 1)),
                                ((1, 9, 11, 2), 2, (2, 3), "valid", (1, 2)),
                                ((3, 4, 5, 1), 1, (1, 2), "same", (2, 1))]:
        check_all_ops(rng, (x_shape, (3, 2, c, f), s, p, d), dtype)


def test_default_picks_direct_for_small_k():
    def geometry(x_shape, k_shape, strides=1):
        return geometry_of(x_shape, k_shape, strides, "same", 1)

    small = geometry((2, 32, 32, 3), (3, 3, 3, 32))          # K = 27, F = 32
    big = geometry((2, 8, 8, 256), (3, 3, 256, 256))         # K = 2304, F = 256
    for op in ("conv2d_forward", "conv2d_backward_weight"):
        assert conv._use_direct(small, op) and not conv._use_direct(big, op)
    backward_input = "conv2d_backward_input"
    assert conv._use_direct(geometry((2, 16, 16, 32), (3, 3, 32, 64)), backward_input)
    assert not conv._use_direct(small, backward_input)      # C = 3: BLAS + col2im
    assert not conv._use_direct(geometry((2, 16, 16, 32), (3, 3, 32, 64), (2, 1)),
                                backward_input)


@pytest.mark.parametrize("c", [15, 16, 17, 33])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_direct_backward_input_channel_widths(rng, c, dtype, path):
    """Stride-1 backward_input runs as a forward conv of the zero-padded dz with C output
    channels: channel counts around the vector widths, even kernels (uneven 'same' pads)
    and dilations, on both paths (the default sends C >= 16 direct)."""
    for x_shape, k_shape, p, d in [((2, 5, 7, c), (3, 3, c, 6), "same", (1, 1)),
                                   ((1, 9, 8, c), (2, 3, c, 5), "valid", (2, 1)),
                                   ((2, 6, 5, c), (4, 2, c, 3), "same", (1, 2))]:
        check_all_ops(rng, (x_shape, k_shape, (1, 1), p, d), dtype)


def test_activation_none_is_linear(rng):
    x, k, b, _ = data(rng, CASES[0], np.float64)
    y0, _ = conv.conv2d_forward(x, k, b, (1, 1), "same", (1, 1), None, 0.0)
    y1, _ = conv.conv2d_forward(x, k, b, (1, 1), "same", (1, 1), "linear", 0.0)
    np.testing.assert_array_equal(y0, y1)


def numerical_grad(f, a, eps=1e-4):
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


FD_CASES = [
    ((1, 5, 4, 2), (3, 2, 2, 2), (2, 1), "same", (1, 1)),
    ((2, 6, 5, 1), (2, 2, 1, 2), (1, 2), "same", (2, 2)),
    ((1, 7, 6, 2), (3, 3, 2, 1), (3, 2), "valid", (1, 1)),
    ((1, 4, 4, 3), (1, 1, 3, 2), (1, 1), "valid", (1, 1)),
    ((1, 5, 7, 2), (1, 1, 2, 3), (2, 3), "valid", (1, 1)),     # strided 1x1: subsampled
]


@pytest.mark.parametrize("case", FD_CASES)
def test_backward_by_finite_differences(rng, case):
    x, k, b, g = data(rng, case, np.float64)
    strides, padding, dilation = case[2:]

    def loss():
        return float(np.sum(conv.conv2d_forward(x, k, b, strides, padding, dilation)[0] * g))

    dx = conv.conv2d_backward_input(g, k, x.shape, strides, padding, dilation)
    dw = conv.conv2d_backward_weight(x, g, k.shape, strides, padding, dilation)
    np.testing.assert_allclose(dx, numerical_grad(loss, x), rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(dw, numerical_grad(loss, k), rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thread_count_invariance(rng, dtype, restore_threads, small_workspace, path):
    case = ((3, 11, 9, 4), (3, 3, 4, 5), (2, 1), "same", (1, 2))
    x, k, b, dz = data(rng, case, dtype)
    s, p, d = case[2:]
    results = []
    for n in (1, 2, 3):
        info.set_num_threads(n)
        results.append((conv.conv2d_forward(x, k, b, s, p, d, "gelu", 0.0),
                        conv.conv2d_backward_input(dz, k, x.shape, s, p, d),
                        conv.conv2d_backward_weight(x, dz, k.shape, s, p, d)))
    for (y, z), dx, dw in results[1:]:
        np.testing.assert_array_equal(y, results[0][0][0])
        np.testing.assert_array_equal(z, results[0][0][1])
        np.testing.assert_array_equal(dx, results[0][1])
        np.testing.assert_array_equal(dw, results[0][2])


def test_matches_torch(rng):
    """A second, independent oracle for 'same' + stride + dilation (torch pads symmetric,
    so the padded input is built by hand the Keras way)."""
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 10, 9, 3))
    k = rng.standard_normal((3, 3, 3, 4))
    y, _ = conv.conv2d_forward(x, k, None, (2, 2), "same", (1, 1))
    # 'same', stride 2: total pad 1 on H (pad after), 2 on W (1 + 1).
    xp = np.pad(x, ((0, 0), (0, 1), (1, 1), (0, 0)))
    yt = torch.nn.functional.conv2d(torch.from_numpy(xp).permute(0, 3, 1, 2),
                                    torch.from_numpy(k).permute(3, 2, 0, 1), stride=2)
    np.testing.assert_allclose(y, yt.permute(0, 2, 3, 1).numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make", [
    lambda a: np.asfortranarray(a),
    lambda a: np.repeat(a, 2, axis=a.ndim - 1)[..., ::2],     # strided view
    lambda a: np.flip(np.flip(a, 0).copy(), 0),               # negative strides
], ids=["fortran", "strided", "negative"])
def test_layouts_and_read_only_inputs(rng, make):
    x, k, b, dz = data(rng, CASES[1], np.float64)
    s, p, d = CASES[1][2:]
    want = (conv.conv2d_forward(x, k, b, s, p, d)[0],
            conv.conv2d_backward_input(dz, k, x.shape, s, p, d),
            conv.conv2d_backward_weight(x, dz, k.shape, s, p, d))
    xs, ks, b2, dzs = make(x), make(k), make(b[None, :])[0], make(dz)
    for a in (xs, ks, b2, dzs):
        a.flags.writeable = False
    got = (conv.conv2d_forward(xs, ks, b2, s, p, d)[0],
           conv.conv2d_backward_input(dzs, ks, x.shape, s, p, d),
           conv.conv2d_backward_weight(xs, dzs, k.shape, s, p, d))
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_mixed_dtypes_follow_the_first_array(rng):
    x = rng.standard_normal((2, 5, 5, 3)).astype(np.float32)
    k = rng.standard_normal((3, 3, 3, 2))
    y, _ = conv.conv2d_forward(x, k, None, (1, 1), "same", (1, 1))
    assert y.dtype == np.float32
    check("conv2d_forward", y, ref.conv2d_forward_ref(x, k.astype(np.float32), None, (1, 1),
                                                  "same", (1, 1))[0], np.float32)


X = np.ones((2, 5, 5, 3))
K = np.ones((3, 3, 3, 4))
DZ = np.ones((2, 5, 5, 4))


@pytest.mark.parametrize("call, error, match", [
    (lambda: conv.conv2d_forward(X, np.ones((3, 3, 2, 4)), None, 1, "same", 1),
     ValueError, "input channels"),
    (lambda: conv.conv2d_forward(X[0], K, None, 1, "same", 1), ValueError, "dimensions"),
    (lambda: conv.conv2d_forward(X, K[0], None, 1, "same", 1), ValueError, "dimensions"),
    (lambda: conv.conv2d_forward(None, K, None, 1, "same", 1), ValueError, "None"),
    (lambda: conv.conv2d_forward(X, None, None, 1, "same", 1), ValueError, "None"),
    (lambda: conv.conv2d_forward(X, K, np.ones(3), 1, "same", 1), ValueError, "bias"),
    (lambda: conv.conv2d_forward(X, K, None, 0, "same", 1), ValueError, "strides"),
    (lambda: conv.conv2d_forward(X, K, None, (1, -2), "same", 1), ValueError, "strides"),
    (lambda: conv.conv2d_forward(X, K, None, (1, 1, 1), "same", 1), ValueError, "strides"),
    (lambda: conv.conv2d_forward(X, K, None, 1, "same", 0), ValueError, "dilation_rate"),
    (lambda: conv.conv2d_forward(X, K, None, 1, "full", 1), ValueError, "padding"),
    (lambda: conv.conv2d_forward(X, K, None, 1, "same", 1, "swishy"), ValueError, "activation"),
    (lambda: conv.conv2d_forward(X.astype(str), K, None, 1, "same", 1), TypeError, "numeric"),
    (lambda: conv.conv2d_forward(X, np.zeros((0, 3, 3, 4)), None, 1, "same", 1), ValueError,
     "kernel spatial"),
    (lambda: conv.conv2d_backward_input(DZ, K, (2, 5, 5), 1, "same", 1), ValueError,
     "input_shape"),
    (lambda: conv.conv2d_backward_input(DZ, K, (2, 5, 5, 2), 1, "same", 1), ValueError,
     "input channels"),
    (lambda: conv.conv2d_backward_input(DZ, K, (2, 5, 5, 3), 2, "same", 1), ValueError,
     "'dz' must have shape"),
    (lambda: conv.conv2d_backward_input(DZ[..., :3], K, (2, 5, 5, 3), 1, "same", 1),
     ValueError, "'dz' must have shape"),
    (lambda: conv.conv2d_backward_input(DZ, K, None, 1, "same", 1), ValueError,
     "input_shape"),
    (lambda: conv.conv2d_backward_weight(X, DZ, (3, 3, 2, 4), 1, "same", 1), ValueError,
     "input channels"),
    (lambda: conv.conv2d_backward_weight(X, DZ, (3, 3, 3, 4), 1, "valid", 1), ValueError,
     "'dz' must have shape"),
    (lambda: conv.conv2d_backward_weight(X, DZ[0], (3, 3, 3, 4), 1, "same", 1), ValueError,
     "dimensions"),
    (lambda: conv.conv2d_backward_weight(X, DZ, (3, 3, 3, -4), 1, "same", 1), ValueError,
     "kernel_shape"),
])
def test_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_concurrent_calls_from_python_threads_match_serial(rng, path):
    """The ops release the GIL and carve temporaries from the shared scratch pool: calls from
    several Python threads at once must neither share a buffer nor change any result."""
    from concurrent.futures import ThreadPoolExecutor

    cases = [((3, 9, 7, 17), (3, 3, 17, 5), (1, 1), "same", (1, 1)),
             ((2, 8, 11, 4), (2, 3, 4, 19), (1, 1), "valid", (1, 2)),
             ((2, 13, 9, 3), (3, 3, 3, 6), (2, 2), "same", (1, 1))]
    jobs = []
    for case in cases:
        x, k, b, dz = data(rng, case, np.float32)
        strides, padding, dilation = case[2:]
        jobs += [lambda x=x, k=k, b=b, s=strides, p=padding, d=dilation:
                 conv.conv2d_forward(x, k, b, s, p, d, "relu")[0],
                 lambda x=x, dz=dz, k=k, s=strides, p=padding, d=dilation:
                 conv.conv2d_backward_weight(x, dz, k.shape, s, p, d),
                 lambda x=x, dz=dz, k=k, s=strides, p=padding, d=dilation:
                 conv.conv2d_backward_input(dz, k, x.shape, s, p, d)]
    serial = [job() for job in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(5):
            got = list(pool.map(lambda job: job(), jobs * 4))
            for i, result in enumerate(got):
                np.testing.assert_array_equal(result, serial[i % len(jobs)])


# -- dilation large against the input (issue 11) --------------------------------------------
# 'same' with such a dilation reads zeros almost everywhere: the padded copy the direct paths
# read would be mostly padding, so these go to im2col + BLAS (conv._padding_too_large).
# With a one-row workspace every one of them crosses the ratio; with the default one only
# those whose copy passes a workspace do, so both routes are compared with the oracle.
LARGE_DILATION_CASES = [
    ((2, 8, 8, 16), (3, 3, 16, 4), (1, 1), "same", (9, 9)),     # only the centre tap reads x
    ((2, 8, 8, 16), (3, 3, 16, 4), (1, 1), "same", (5, 5)),     # every tap reads some of x
    ((1, 6, 7, 3), (3, 2, 3, 5), (1, 1), "same", (20, 30)),
    ((2, 5, 9, 17), (2, 3, 17, 3), (1, 1), "same", (7, 11)),    # even kernel: uneven pads
    ((1, 9, 6, 2), (3, 3, 2, 3), (2, 1), "same", (12, 1)),
    ((1, 3, 3, 1), (4, 4, 1, 2), (1, 1), "same", (40, 40)),     # no tap reads x
    ((2, 40, 3, 4), (3, 3, 4, 2), (1, 1), "same", (1, 300)),    # one axis only
]
LARGE_DILATION_IDS = [f"{x}*{k}-s{s}-d{d}" for x, k, s, _, d in LARGE_DILATION_CASES]


def check_fused_backward(rng, case, dtype):
    """conv2d_backward (linear, bias) against the oracle's separate ops."""
    x, k, _, dy = data(rng, case, dtype)
    strides, padding, dilation = case[2:]
    dx, dw, db = conv.conv2d_backward(dy, x, None, dy, k, strides, padding, dilation)
    check("conv2d_backward dx", dx,
          ref.conv2d_backward_input_ref(dy, k, x.shape, strides, padding, dilation), dtype)
    check("conv2d_backward dkernel", dw,
          ref.conv2d_backward_weight_ref(x, dy, k.shape, strides, padding, dilation), dtype)
    check("conv2d_backward dbias", db, dy.astype(np.float64).sum(axis=(0, 1, 2)), dtype)


@pytest.mark.parametrize("workspace", ["default", "one-row"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", LARGE_DILATION_CASES, ids=LARGE_DILATION_IDS)
def test_large_dilation_matches_reference(rng, case, dtype, workspace):
    old = conv._set_workspace_bytes(64 if workspace == "one-row" else None)
    try:
        check_all_ops(rng, case, dtype)
        check_fused_backward(rng, case, dtype)
    finally:
        conv._set_workspace_bytes(old)


def test_large_dilation_routes_around_the_padded_copy():
    g = geometry_of((2, 8, 8, 16), (3, 3, 16, 4), 1, "same", 8000)
    for op in ("conv2d_forward", "conv2d_backward_weight", "conv2d_backward_input"):
        assert conv._padding_too_large(g, op) and not conv._use_direct(g, op)
    g = geometry_of((2, 32, 32, 16), (3, 3, 16, 32), 1, "same", 1)
    for op in ("conv2d_forward", "conv2d_backward_weight", "conv2d_backward_input"):
        assert not conv._padding_too_large(g, op) and conv._use_direct(g, op)


@pytest.mark.parametrize("dilation", [8000, 10**5, 10**9])
def test_huge_dilation_allocates_no_padding(rng, dilation):
    """An 8x8 input with dilation 8000 once made a 2 GiB padded copy (1e5: a 298 GiB
    request). Now the ops allocate about their inputs and outputs, and give the same
    numbers as a dilation of 9, where too only the centre tap reads the input."""
    import tracemalloc

    x, k, b, dz = data(rng, LARGE_DILATION_CASES[0], np.float32)
    one, nine = (1, 1), (9, 9)
    dx_want = ref.conv2d_backward_input_ref(dz, k, x.shape, one, "same", nine)
    dw_want = ref.conv2d_backward_weight_ref(x, dz, k.shape, one, "same", nine)
    y_want = ref.conv2d_forward_ref(x, k, b, one, "same", nine)[0]
    tracemalloc.start()
    try:
        y, _ = conv.conv2d_forward(x, k, b, 1, "same", dilation)
        dx = conv.conv2d_backward_input(dz, k, x.shape, 1, "same", dilation)
        dw = conv.conv2d_backward_weight(x, dz, k.shape, 1, "same", dilation)
        fused = conv.conv2d_backward(dz, x, None, dz, k, 1, "same", dilation)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"peak {peak / 2**20:.1f} MiB for an 8 KiB input"
    check("conv2d_forward", y, y_want, np.float32)
    for name, got, want in [("dx", dx, dx_want), ("dw", dw, dw_want), ("fused dx", fused[0],
                            dx_want), ("fused dw", fused[1], dw_want)]:
        check(f"conv2d_backward {name}", got, want, np.float32)


def test_huge_dilation_layer_trains_in_bounded_memory():
    """The Conv2D layer end to end (forward, backward, update) under a 1 GiB address-space
    cap in a child process, where the padded copy alone would need 2 GiB (Linux only: the
    cap counts from the child's current mappings, read from /proc)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from pynn import _build_flags

    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs /proc to size the address-space cap")
    if getattr(_build_flags, "SANITIZE", False):
        pytest.skip("AddressSanitizer reserves terabytes of address space: no cap fits")
    code = (
        "import resource, numpy as np, pynn\n"
        "import pynn.layers as L\n"
        "pynn.set_num_threads(1)\n"
        "m = pynn.Sequential([L.Input((8, 8, 2)), L.Conv2D(3, 3, padding='same',"
        " dilation_rate=8000, name='wide'), L.Flatten(), L.Dense(2)])\n"
        "m.compile('sgd', 'mse')\n"
        "x = np.ones((4, 8, 8, 2), 'f4')\n"
        "m.predict(x, verbose=0)\n"
        "vm = [l for l in open('/proc/self/status') if l.startswith('VmSize')][0]\n"
        "cap = int(vm.split()[1]) * 1024 + (1 << 30)   # what is mapped now + 1 GiB\n"
        "resource.setrlimit(resource.RLIMIT_AS, (cap, resource.RLIM_INFINITY))\n"
        "h = m.fit(x, np.zeros((4, 2), 'f4'), epochs=2, verbose=0)\n"
        "assert np.isfinite(h.history['loss'][-1])\n"
        "print('ok')\n")
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                          text=True, timeout=300,
                          env={**os.environ, "PYNN_DEVICE": "cpu", "PYTHONPATH": str(root)})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


# -- over both backends (the `backend` fixture): float32 against the float64 references -----
# Awkward sizes, not multiples of any tile; GEMM-shaped results within 1e-4. On OpenCL
# check_op also compares with the CPU op.

# (input shape, kernel shape, strides, padding, dilation)
BACKEND_CASES = [
    ((2, 7, 9, 3), (3, 3, 3, 5), (1, 1), "valid", (1, 1)),
    ((1, 8, 7, 2), (3, 2, 2, 4), (2, 3), "same", (1, 1)),
    ((3, 9, 11, 4), (3, 3, 4, 7), (2, 2), "same", (2, 1)),
    ((1, 5, 5, 1), (1, 1, 1, 1), (1, 1), "valid", (1, 1)),
    ((2, 13, 13, 3), (3, 3, 3, 13), (3, 3), "same", (1, 2)),
    ((1, 6, 5, 33), (2, 2, 33, 3), (1, 1), "same", (1, 1)),
]
BACKEND_IDS = [f"{c[0]}x{c[1]}s{c[2]}{c[3]}d{c[4]}".replace(" ", "") for c in BACKEND_CASES]


def conv2d_forward_op_ref(x, kernel, bias, strides, padding, dilation_rate, activation,
                          alpha=0.0):
    """The op's result from the reference: (y, z), z only where the activation needs it."""
    y, z = ref.conv2d_forward_ref(x, kernel, bias, strides, padding, dilation_rate, activation,
                                  alpha)
    return y, (z if activation in ACTIVATIONS_NEEDING_INPUT else None)


@pytest.mark.parametrize("xs,ks,s,p,d", BACKEND_CASES, ids=BACKEND_IDS)
def test_conv2d_forward_and_backward_on_backend(backend, xs, ks, s, p, d):
    rng = np.random.default_rng(sum(xs) + sum(ks))
    x, w, b = rand(rng, xs), rand(rng, ks), rand(rng, (ks[3],))
    act = "gelu" if xs[0] % 2 else "relu"
    _, (y, _) = check_op(backend, "conv2d_forward", x, w, b, s, p, d, act, 0.0,
                         ref=conv2d_forward_op_ref, kind="gemm")
    dz = rand(rng, y.shape)
    check_op(backend, "conv2d_backward_input", dz, w, xs, s, p, d,
             ref=ref.conv2d_backward_input_ref, kind="gemm")
    check_op(backend, "conv2d_backward_weight", x, dz, ks, s, p, d,
             ref=ref.conv2d_backward_weight_ref, kind="gemm")


def test_conv2d_no_bias_softmax_and_long_reduction_on_backend(backend):
    """On OpenCL the weight gradient of this shape takes the split-K path (checked below)."""
    rng = np.random.default_rng(5)
    xs, ks = (9, 12, 11, 2), (3, 3, 2, 3)  # 1188 output pixels onto an 18 x 3 kernel
    x, w, dz = rand(rng, xs), rand(rng, ks), rand(rng, (9, 12, 11, 3))
    if backend.is_opencl and backend.ops.device_info()["compute_units"] <= 8:
        from pynn.backend.opencl import gemm

        assert gemm._split_plan(18, 3, 9 * 12 * 11, backend.ops.gemm_tiles())[0] > 1
    check_op(backend, "conv2d_forward", x, w, None, (1, 1), "same", (1, 1), "softmax", 0.0,
             ref=conv2d_forward_op_ref, kind="gemm")
    dw, _ = check_op(backend, "conv2d_backward_weight", x, dz, ks, (1, 1), "same", (1, 1),
                     ref=ref.conv2d_backward_weight_ref, kind="gemm")
    again = backend.ops.conv2d_backward_weight(backend.up(x), backend.up(dz), ks, (1, 1),
                                               "same", (1, 1))
    assert np.array_equal(backend.down(dw), backend.down(again)), \
        "backward_weight is not reproducible"


def test_conv2d_empty_outputs_on_backend(backend):
    ops, up, down = backend.ops, backend.up, backend.down
    x, w = up(np.ones((1, 3, 3, 2), np.float32)), np.ones((5, 5, 2, 3), np.float32)
    y, _ = ops.conv2d_forward(x, up(w), None, (1, 1), "valid", (1, 1), "linear", 0.0)
    assert y.shape == (1, 0, 0, 3)
    dx = ops.conv2d_backward_input(up(np.zeros((1, 0, 0, 3), np.float32)), up(w), x.shape,
                                   (1, 1), "valid", (1, 1))
    assert np.array_equal(down(dx), np.zeros(x.shape))
    dw = ops.conv2d_backward_weight(x, up(np.zeros((1, 0, 0, 3), np.float32)), w.shape,
                                    (1, 1), "valid", (1, 1))
    assert np.array_equal(down(dw), np.zeros(w.shape))
    y, _ = ops.conv2d_forward(up(np.zeros((0, 5, 5, 2), np.float32)), up(w[:3, :3].copy()),
                              None, 1, "same", 1, "relu", 0.0)
    assert y.shape == (0, 5, 5, 3)


# -- OpenCL only: vector reads, the host-array policy ----------------------------------------

# (input shape, kernel shape, strides, padding, dilation): C and F multiples of 4 or 2 so the
# patch / tap gathers and the kernel reads take the vector path.
VECTOR_CONV_CASES = [
    ((2, 7, 9, 4), (3, 3, 4, 8), (1, 1), "same", (1, 1)),
    ((1, 9, 8, 8), (3, 2, 8, 6), (2, 3), "same", (2, 1)),
    ((3, 5, 6, 2), (2, 3, 2, 12), (1, 2), "valid", (1, 1)),
]


@pytest.mark.opencl
@pytest.mark.parametrize("xs,ks,s,p,d", VECTOR_CONV_CASES)
def test_conv2d_vector_reads_match_scalar_opencl(backend_opencl, monkeypatch, xs, ks, s, p,
                                                 d):
    from pynn.backend.opencl import gemm

    ocl = backend_opencl.ops
    rng = np.random.default_rng(sum(xs) * 7 + sum(ks))
    x, w, b = rand(rng, xs), rand(rng, ks), rand(rng, (ks[3],))
    y_ref, _ = ref.conv2d_forward_ref(x, w, b, s, p, d, "linear", 0.0)
    dz = rand(rng, y_ref.shape)
    index = ocl.device_info()["index"]
    results = {}
    for vw in (4, 1):
        monkeypatch.setitem(gemm._tiles_by_device, index, dict(ocl.gemm_tiles(), VW=vw))
        results[vw] = [
            check_op(backend_opencl, "conv2d_forward", x, w, b, s, p, d, "linear", 0.0,
                     ref=conv2d_forward_op_ref, kind="gemm", what=f"VW={vw}")[1][0],
            check_op(backend_opencl, "conv2d_backward_input", dz, w, xs, s, p, d,
                     ref=ref.conv2d_backward_input_ref, kind="gemm", what=f"VW={vw}")[1],
            check_op(backend_opencl, "conv2d_backward_weight", x, dz, ks, s, p, d,
                     ref=ref.conv2d_backward_weight_ref, kind="gemm", what=f"VW={vw}")[1]]
    for name, got4, got1 in zip(("forward", "backward_input", "backward_weight"), results[4],
                                results[1]):
        assert np.array_equal(got4, got1), f"conv2d_{name}: vector and scalar reads differ"


@pytest.mark.opencl
def test_conv2d_bad_inputs_opencl(ocl):
    up = ocl.asarray
    xc, wc = up(np.ones((1, 5, 5, 2), np.float32)), up(np.ones((3, 3, 2, 4), np.float32))
    with pytest.raises(ValueError, match="input channels"):
        ocl.conv2d_forward(xc, up(np.ones((3, 3, 3, 4), np.float32)), None, 1, "same", 1,
                           "linear", 0.0)
    with pytest.raises(ValueError, match="padding"):
        ocl.conv2d_forward(xc, wc, None, 1, "full", 1, "linear", 0.0)
    with pytest.raises(ValueError, match="strides"):
        ocl.conv2d_forward(xc, wc, None, (0, 1), "same", 1, "linear", 0.0)
    with pytest.raises(ValueError, match=r"'dz' must have shape \(1, 5, 5, 4\)"):
        ocl.conv2d_backward_input(up(np.ones((1, 4, 4, 4))), wc, xc.shape, 1, "same", 1)
    with pytest.raises(ValueError, match="input_shape"):
        ocl.conv2d_backward_input(up(np.ones((1, 5, 5, 4))), wc, (1, 5, 5), 1, "same", 1)
    with pytest.raises(ValueError, match="kernel_shape"):
        ocl.conv2d_backward_weight(xc, up(np.ones((1, 5, 5, 4))), None, 1, "same", 1)
    with pytest.raises(ValueError, match="4 dimensions"):
        ocl.conv2d_backward_weight(xc[0], up(np.ones((1, 5, 5, 4), np.float32)), wc.shape, 1,
                                   "same", 1)


# -- conv2d_transpose_forward / conv2d_transpose_backward (issue 12) -------------------------
# (x shape (N, H, W, C), kernel shape (KH, KW, F, C), strides, padding, output_padding,
# dilation): odd sizes, both paddings with strides 1-3, output_padding (extra rows past the
# full output, and a crop together with an extension), dilation, 1x1 inputs and kernels.
TRANSPOSE_CASES = [
    ((2, 5, 7, 3), (3, 3, 4, 3), (1, 1), "valid", None, (1, 1)),
    ((2, 5, 7, 3), (3, 3, 4, 3), (1, 1), "same", None, (1, 1)),
    ((2, 5, 7, 3), (3, 3, 4, 3), (2, 2), "same", None, (1, 1)),
    ((1, 4, 3, 2), (4, 2, 5, 2), (2, 3), "same", None, (1, 1)),
    ((3, 3, 5, 2), (3, 3, 3, 2), (2, 2), "valid", (1, 0), (1, 1)),
    ((2, 4, 4, 3), (3, 2, 2, 3), (3, 2), "same", (2, 1), (1, 1)),
    ((1, 5, 6, 2), (2, 3, 3, 2), (1, 1), "same", (0, 0), (2, 3)),
    ((2, 6, 5, 17), (3, 3, 16, 17), (1, 1), "same", None, (1, 1)),   # conv's direct path
    ((2, 3, 3, 2), (1, 1, 3, 2), (3, 3), "valid", None, (1, 1)),     # stride > kernel
    ((4, 1, 1, 3), (3, 3, 2, 3), (2, 2), "same", (1, 1), (1, 1)),    # 1x1 images
    ((0, 4, 4, 3), (3, 3, 2, 3), (2, 2), "same", None, (1, 1)),      # empty batch
]
TRANSPOSE_IDS = [f"{x}*{k}-s{s}-{p}-op{o}-d{d}" for x, k, s, p, o, d in TRANSPOSE_CASES]


def conv2d_transpose_forward_op_ref(x, kernel, bias, strides, padding, output_padding,
                                    dilation_rate, activation, alpha):
    y, z = ref.conv2d_transpose_forward_ref(x, kernel, bias, strides, padding,
                                            output_padding, dilation_rate, activation, alpha)
    return y, (z if activation in ACTIVATIONS_NEEDING_INPUT else None)


@pytest.mark.parametrize("xs,ks,s,p,o,d", TRANSPOSE_CASES, ids=TRANSPOSE_IDS)
def test_conv2d_transpose_matches_reference(target, xs, ks, s, p, o, d):
    rng = np.random.default_rng(sum(xs) + sum(ks))
    dtype = target.dtype
    x, k, b = rand(rng, xs, dtype), rand(rng, ks, dtype), rand(rng, (ks[2],), dtype)
    act = {0: "relu", 1: "gelu", 2: "softmax"}[sum(xs) % 3]
    rtol = {"rtol": 1e-11, "atol": 1e-11} if dtype == np.float64 else None
    _, (y, z) = check_op(target, "conv2d_transpose_forward", x, k, b, s, p, o, d, act, 0.0,
                         ref=conv2d_transpose_forward_op_ref, kind="gemm", rtol=rtol)
    dy = rand(rng, y.shape, dtype)

    def backward_ref(dy, x, z, y, kernel, *geometry_and_flags):
        # The oracle recomputes z from x, the kernel and the bias.
        return ref.conv2d_transpose_backward_ref(dy, x, kernel, b, *geometry_and_flags)

    for use_bias, need_input_grad in ((True, True), (False, False)):
        check_op(target, "conv2d_transpose_backward", dy, x, z, y, k, s, p, o, d, act, 0.0,
                 use_bias, need_input_grad, ref=backward_ref, kind="gemm", rtol=rtol)


def test_conv2d_transpose_output_lengths_follow_keras():
    """Keras 3's lengths, written out: 'valid' (n-1)s + max(k, s), 'same' n*s; with an
    output_padding p, (n-1)s + k + p ('valid') or (n-1)s + k % 2 + p ('same')."""
    from pynn.backend.operands.conv import conv_transpose_output_size as size

    assert size(5, 3, 2, 1, "valid")[2] == 4 * 2 + 3
    assert size(5, 1, 3, 1, "valid")[2] == 4 * 3 + 3
    assert size(5, 3, 2, 1, "same")[2] == 10
    assert size(5, 4, 2, 1, "same")[2] == 10
    assert size(5, 3, 2, 1, "valid", 1)[2] == 4 * 2 + 3 + 1
    assert size(5, 3, 3, 1, "same", 2)[2] == 4 * 3 + 1 + 2
    assert size(5, 4, 2, 1, "same", 0)[2] == 4 * 2 + 0 + 0
    assert size(6, 3, 1, 2, "same")[2] == 6           # dilated: k_eff 5
    y, _ = conv.conv2d_transpose_forward(np.ones((1, 5, 4, 2)), np.ones((3, 2, 3, 2)), None,
                                         (2, 3), "valid", (1, 2))
    assert y.shape == (1, 4 * 2 + 3 + 1, 3 * 3 + 2 + 2, 3)


X_T = np.ones((2, 4, 4, 3))
K_T = np.ones((3, 3, 5, 3))


@pytest.mark.parametrize("call, match", [
    (lambda ops: ops.conv2d_transpose_forward(X_T, np.ones((3, 3, 5, 2)), None),
     (r"conv2d_transpose_forward: kernel \(KH, KW, filters, in_channels\) has 2 input "
      r"channels but the input has 3")),
    (lambda ops: ops.conv2d_transpose_forward(X_T, K_T, np.ones(3)),
     r"'bias' must have shape \(5,\), got \(3,\)"),
    (lambda ops: ops.conv2d_transpose_forward(X_T, K_T, None, 2, "same", (2, 1)),
     r"'output_padding' must lie in \[0, strides\)"),
    (lambda ops: ops.conv2d_transpose_forward(X_T, K_T, None, 2, "same", (1, 1, 1)),
     "'output_padding' must be None, an int or a pair of ints"),
    (lambda ops: ops.conv2d_transpose_forward(X_T, K_T, None, 1, "full"),
     "padding must be 'valid' or 'same', got 'full'"),
    (lambda ops: ops.conv2d_transpose_forward(np.ones((2, 0, 4, 3)), K_T, None),
     r"the input needs H, W >= 1, got shape \(2, 0, 4, 3\)"),
    (lambda ops: ops.conv2d_transpose_backward(np.ones((2, 6, 6, 5)), X_T, None,
                                               np.ones((2, 6, 6, 5)), K_T, 1, "same"),
     r"conv2d_transpose_backward: 'dy' must have shape \(2, 4, 4, 5\), got \(2, 6, 6, 5\)"),
])
def test_conv2d_transpose_bad_inputs(backend, call, match):
    def up(a):
        return backend.up(np.asarray(a, np.float32)) if isinstance(a, np.ndarray) else a

    class Uploading:
        def __getattr__(self, name):
            op = getattr(backend.ops, name)
            return lambda *args: op(*[up(a) for a in args])

    with pytest.raises(ValueError, match=match):
        call(Uploading())


@pytest.mark.parametrize("case", [TRANSPOSE_CASES[2], TRANSPOSE_CASES[7]],
                         ids=[TRANSPOSE_IDS[2], TRANSPOSE_IDS[7]])
def test_conv2d_transpose_thread_count_invariance(restore_threads, case):
    """Built from conv ops whose summation order never depends on the thread count: the
    transposed conv inherits the same bits for 1, 2 and 3 threads."""
    xs, ks, s, p, o, d = case
    rng = np.random.default_rng(9)
    x, k, b = rand(rng, xs), rand(rng, ks), rand(rng, (ks[2],))
    results = []
    for n in (1, 2, 3):
        info.set_num_threads(n)
        y, z = conv.conv2d_transpose_forward(x, k, b, s, p, o, d, "gelu", 0.0)
        dy = np.cos(np.arange(y.size, dtype=np.float32)).reshape(y.shape)
        results.append((y, z, *conv.conv2d_transpose_backward(dy, x, z, y, k, s, p, o, d,
                                                                "gelu", 0.0)))
    for other in results[1:]:
        for a, b_ in zip(results[0], other):
            np.testing.assert_array_equal(a, b_)


# -- conv2d_pool_backward: a Conv2D's backward from the max pool over its output -------------
# (x shape, kernel shape, conv strides, conv padding, pool size, pool strides, pool padding,
# activation, whether the CPU op takes its fused pass when no input gradient is needed)
POOL_CASES = [
    ((3, 13, 11, 3), (3, 3, 3, 7), (1, 1), "same", (2, 2), (2, 2), "valid", "relu", True),
    ((2, 9, 10, 2), (3, 3, 2, 33), (1, 1), "same", (3, 2), (3, 2), "valid", "linear", True),
    ((2, 11, 12, 3), (3, 3, 3, 5), (1, 1), "valid", (2, 2), (3, 3), "valid", "relu", True),
    ((2, 10, 9, 4), (3, 3, 4, 6), (2, 1), "same", (2, 2), (2, 2), "valid", "relu", True),
    ((1, 5, 7, 1), (2, 3, 1, 3), (1, 1), "same", (2, 3), (2, 3), "valid", "relu", True),
    # overlapping windows, a 'same' pool, an activation the pool's output cannot mask, a
    # gelu conv (reads z): the two ops in turn
    ((2, 8, 8, 3), (3, 3, 3, 4), (1, 1), "same", (3, 3), (2, 2), "valid", "relu", False),
    ((2, 7, 9, 3), (3, 3, 3, 4), (1, 1), "same", (2, 2), (2, 2), "same", "relu", False),
    ((2, 8, 8, 3), (3, 3, 3, 4), (1, 1), "same", (2, 2), (2, 2), "valid", "sigmoid", False),
    ((2, 6, 6, 2), (3, 3, 2, 3), (1, 1), "same", (2, 2), (2, 2), "valid", "gelu", False),
]
POOL_IDS = [f"{c[0]}*{c[1]}-s{c[2]}-{c[3]}-pool{c[4]}s{c[5]}{c[6]}-{c[7]}" for c in POOL_CASES]


def pool_case(rng, case, dtype):
    """x, kernel, bias and the forward's (z, y), the pool's (pooled, argmax) and a dpool."""
    from pynn._native import pool

    xs, ks, s, p, ps, pst, pp, act, _ = case
    x = rng.standard_normal(xs).astype(dtype)
    k = (rng.standard_normal(ks) * 0.5).astype(dtype)
    b = (rng.standard_normal(ks[3]) * 0.3).astype(dtype)
    y, z = conv.conv2d_forward(x, k, b, s, p, (1, 1), act, 0.0)
    pooled, argmax = pool.maxpool2d_forward(y, ps, pst, pp)
    dpool = rng.standard_normal(pooled.shape).astype(dtype)
    return x, k, b, z, y, pooled, argmax, dpool


@pytest.fixture(params=["auto", "fused", "composed"])
def backward_mode(request):
    """conv2d_backward's road forced either way (the default differs between CPU kinds)."""
    old = conv._set_backward_mode(request.param)
    yield request.param
    conv._set_backward_mode(old)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("need_input_grad", [False, True])
@pytest.mark.parametrize("case", POOL_CASES, ids=POOL_IDS)
def test_conv2d_pool_backward_is_the_two_ops(rng, monkeypatch, case, need_input_grad, dtype,
                                             path, backward_mode):
    """Equal, bit for bit, to maxpool2d_backward then conv2d_backward (either path), close to
    the float64 oracle; the fused pass (no pool input gradient made) where it applies, and
    elsewhere either the two ops or pooled_activation_bias_backward then the products."""
    from pynn._native import pool

    xs, ks, s, p, ps, pst, pp, act, fusable = case
    x, k, b, z, y, pooled, argmax, dpool = pool_case(rng, case, dtype)
    for use_bias in (True, False):
        args = (dpool, argmax, pooled, x, z, y, k, s, p, (1, 1), act, 0.0, use_bias,
                need_input_grad, ps, pst, pp)
        calls = []
        real = pool.maxpool2d_backward
        monkeypatch.setattr(pool, "maxpool2d_backward",
                            lambda *a: calls.append(1) or real(*a))
        got = conv.conv2d_pool_backward(*args)
        monkeypatch.setattr(pool, "maxpool2d_backward", real)
        if fusable and not need_input_grad and path == "direct" and backward_mode != "composed":
            assert not calls, "the fused pass should make dz without the pool's backward"
        dy = pool.maxpool2d_backward(dpool, argmax, y.shape)
        want = conv.conv2d_backward(dy, x, z, y, k, s, p, (1, 1), act, 0.0, use_bias,
                                    need_input_grad)
        for name, g, w in zip(("dx", "dkernel", "dbias"), got, want):
            assert (g is None) == (w is None), name
            if g is not None:
                np.testing.assert_array_equal(g, w, err_msg=name)
        oracle = ref.conv2d_pool_backward_ref(dpool, argmax, x, k, b, s, p, (1, 1), act, 0.0,
                                              use_bias, need_input_grad)
        for name, g, w in zip(("dx", "dkernel", "dbias"), got, oracle):
            if g is not None:
                np.testing.assert_allclose(g, w, err_msg=name, **TOL[dtype])


def test_conv2d_pool_backward_thread_count_invariance(rng, restore_threads):
    case = POOL_CASES[0]
    x, k, b, z, y, pooled, argmax, dpool = pool_case(rng, case, np.float32)
    results = []
    for n in (1, 2, 3):
        info.set_num_threads(n)
        results.append(conv.conv2d_pool_backward(dpool, argmax, pooled, x, z, y, k, (1, 1),
                                                 "same", (1, 1), "relu", 0.0, True, False))
    for other in results[1:]:
        for a, b_ in zip(results[0][1:], other[1:]):
            np.testing.assert_array_equal(a, b_)


def test_conv2d_pool_backward_bad_inputs(rng):
    case = POOL_CASES[0]
    x, k, b, z, y, pooled, argmax, dpool = pool_case(rng, case, np.float32)

    def call(dp=dpool, am=argmax, pl=pooled, yy=y, ps=(2, 2), pst=(2, 2)):
        return conv.conv2d_pool_backward(dp, am, pl, x, z, yy, k, (1, 1), "same", (1, 1),
                                         "relu", 0.0, True, False, ps, pst, "valid")

    with pytest.raises(ValueError, match="conv2d_pool_backward.*dpool"):
        call(dp=dpool[:, :-1])
    with pytest.raises(ValueError, match="conv2d_pool_backward.*argmax"):
        call(am=argmax[:, :, :-1])
    with pytest.raises(ValueError, match="conv2d_pool_backward.*pooled"):
        call(pl=pooled[..., :-1])
    with pytest.raises(ValueError, match="conv2d_pool_backward.*y"):
        conv.conv2d_pool_backward(dpool, argmax, pooled, x, z, y[:, 1:], k, (1, 1), "same",
                                  (1, 1), "relu", 0.0, True, False)
    with pytest.raises(ValueError, match="conv2d_pool_backward.*dpool"):
        call(ps=(3, 3), pst=(3, 3))      # dpool is not that pool's output
    # an entry naming a pixel of the map but not of its window: the pass would drop it
    moved = argmax.copy()
    moved[1, 2, 3, 4] = moved[1, 4, 3, 4]
    with pytest.raises(ValueError, match="1 argmax entries lie outside their pool window"):
        call(am=moved)
    np.testing.assert_array_equal(call()[1], call()[1])   # nothing kept from the errors


def test_conv2d_pool_backward_on_backend(backend):
    """Both backends against the oracle (OpenCL: its pool backward, then its conv backward;
    check_op compares it with the CPU op as well)."""
    rng = np.random.default_rng(31)
    case = POOL_CASES[0]
    x, k, b, z, y, pooled, argmax, dpool = pool_case(rng, case, np.float32)
    for need_input_grad in (False, True):
        for kept in (y, None):   # None: a fused forward kept no y (relu's mask from pooled)
            check_op(backend, "conv2d_pool_backward", dpool, argmax, pooled, x, z, kept, k,
                     (1, 1), "same", (1, 1), "relu", 0.0, True, need_input_grad, (2, 2),
                     (2, 2), "valid",
                     ref=lambda *a, ig=need_input_grad: ref.conv2d_pool_backward_ref(
                         dpool, argmax, x, k, b, (1, 1), "same", (1, 1), "relu", 0.0, True,
                         ig),
                     kind="gemm")


@pytest.mark.parametrize("need_input_grad", [False, True])
@pytest.mark.parametrize("case", POOL_CASES, ids=POOL_IDS)
def test_conv2d_pool_backward_without_y(rng, case, need_input_grad, path, backward_mode):
    """y None (conv2d_pool_forward kept none): the same bits for relu and linear where the
    pool's windows tile y; elsewhere an error naming y, for relu."""
    xs, ks, s, p, ps, pst, pp, act, fusable = case
    x, k, b, z, y, pooled, argmax, dpool = pool_case(rng, case, np.float32)
    args = (dpool, argmax, pooled, x, z, None, k, s, p, (1, 1), act, 0.0, True,
            need_input_grad, ps, pst, pp)
    if not fusable and act != "linear":
        with pytest.raises(ValueError, match="conv2d_pool_backward: y .* is needed"):
            conv.conv2d_pool_backward(*args)
        return
    got = conv.conv2d_pool_backward(*args)
    want = conv.conv2d_pool_backward(dpool, argmax, pooled, x, z, y, k, s, p, (1, 1), act,
                                     0.0, True, need_input_grad, ps, pst, pp)
    for name, g, w in zip(("dx", "dkernel", "dbias"), got, want):
        assert (g is None) == (w is None), name
        if g is not None:
            np.testing.assert_array_equal(g, w, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", POOL_CASES, ids=POOL_IDS)
def test_conv2d_pool_forward_is_the_two_ops(rng, monkeypatch, case, dtype, path):
    """Equal, bit for bit, to conv2d_forward then maxpool2d_forward; the band pass (no
    maxpool2d_forward call) where the conv runs direct and the windows tile its output; the
    pooled values those of the float64 oracle, each argmax naming a pixel that holds them."""
    from pynn._native import pool

    xs, ks, s, p, ps, pst, pp, act, fusable = case
    x, k, b, z, y, pooled, argmax, dpool = pool_case(rng, case, dtype)
    calls, real = [], pool.maxpool2d_forward
    monkeypatch.setattr(pool, "maxpool2d_forward", lambda *a: calls.append(1) or real(*a))
    got = conv.conv2d_pool_forward(x, k, b, s, p, (1, 1), act, 0.0, ps, pst, pp)
    monkeypatch.setattr(pool, "maxpool2d_forward", real)
    if fusable and path == "direct":
        assert not calls, "the band pass should pool without maxpool2d_forward"
    np.testing.assert_array_equal(got[0], pooled)
    np.testing.assert_array_equal(got[1], argmax)
    want, _ = ref.conv2d_pool_forward_ref(x, k, b, s, p, (1, 1), act, 0.0, ps, pst, pp)
    np.testing.assert_allclose(got[0], want, **TOL[dtype])
    y64, _ = ref.conv2d_forward_ref(x, k, b, s, p, (1, 1), act, 0.0)
    flat = y64.reshape(y64.shape[0], -1, y64.shape[3])
    at = np.take_along_axis(flat, got[1].reshape(got[1].shape[0], -1, got[1].shape[3]), axis=1)
    np.testing.assert_allclose(at.reshape(got[0].shape), want, **TOL[dtype])


def test_conv2d_pool_forward_thread_count_invariance(rng, restore_threads):
    case = POOL_CASES[0]
    x, k, b, *_ = pool_case(rng, case, np.float32)
    results = []
    for n in (1, 2, 3):
        info.set_num_threads(n)
        results.append(conv.conv2d_pool_forward(x, k, b, (1, 1), "same", (1, 1), "relu", 0.0))
    for other in results[1:]:
        np.testing.assert_array_equal(other[0], results[0][0])
        np.testing.assert_array_equal(other[1], results[0][1])


def test_conv2d_pool_forward_bad_inputs(rng):
    x, k, b, *_ = pool_case(rng, POOL_CASES[0], np.float32)
    with pytest.raises(ValueError, match="conv2d_pool_forward.*larger than the conv's output"):
        conv.conv2d_pool_forward(x, k, b, (1, 1), "same", (1, 1), "relu", 0.0, (20, 2), (20, 2))
    with pytest.raises(ValueError, match="conv2d_pool_forward.*bias"):
        conv.conv2d_pool_forward(x, k, b[:-1], (1, 1), "same", (1, 1), "relu", 0.0)
    with pytest.raises(ValueError, match="conv2d_pool_forward.*pool_size"):
        conv.conv2d_pool_forward(x, k, b, (1, 1), "same", (1, 1), "relu", 0.0, (0, 2), (2, 2))


def test_conv2d_pool_forward_on_backend(backend):
    """OpenCL (its conv, then its pool) against the CPU op and the pooled oracle values;
    tanh and a few windows, so a float32 near tie cannot move an argmax."""
    rng = np.random.default_rng(41)
    x, k, b = rand(rng, (2, 6, 8, 3)), rand(rng, (3, 3, 3, 4)), rand(rng, (4,))
    got, host = check_op(backend, "conv2d_pool_forward", x, k, b, (1, 1), "same", (1, 1),
                         "tanh", 0.0, (2, 2), (2, 2), "valid", kind="gemm",
                         ref=lambda *a: ref.conv2d_pool_forward_ref(*a))


@pytest.mark.parametrize("xs,ks", [((0, 8, 8, 3), (3, 3, 3, 4)),   # no samples
                                   ((2, 6, 6, 0), (3, 3, 0, 4)),   # no input channels
                                   ((2, 8, 8, 3), (3, 3, 3, 1))])  # one filter
def test_conv2d_pool_pair_edges(rng, xs, ks):
    """The pair's ops at the edges equal the ops in turn, backward without y included."""
    from pynn._native import pool

    x, k = rng.standard_normal(xs).astype(np.float32), rng.standard_normal(ks).astype(np.float32)
    b = rng.standard_normal(ks[3]).astype(np.float32)
    got = conv.conv2d_pool_forward(x, k, b, 1, "same", 1, "relu", 0.0)
    y, z = conv.conv2d_forward(x, k, b, 1, "same", 1, "relu", 0.0)
    want = pool.maxpool2d_forward(y, (2, 2), (2, 2), "valid")
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    dpool = rng.standard_normal(want[0].shape).astype(np.float32)
    for need_input_grad in (False, True):
        a = conv.conv2d_pool_backward(dpool, got[1], got[0], x, z, None, k, 1, "same", 1,
                                      "relu", 0.0, True, need_input_grad)
        w = conv.conv2d_backward(pool.maxpool2d_backward(dpool, want[1], y.shape), x, z, y, k,
                                 1, "same", 1, "relu", 0.0, True, need_input_grad)
        for g, e in zip(a, w):
            assert (g is None) == (e is None)
            if g is not None:
                np.testing.assert_array_equal(g, e)


def test_conv2d_pool_backward_without_y_strided_pointwise(rng):
    """A strided 1x1 conv (conv2d_backward subsamples x) under a pool, without y: the
    pool's arrays make dz, close to the ops in turn with y."""
    from pynn._native import pool

    x = rng.standard_normal((3, 12, 10, 5)).astype(np.float32)
    k = rng.standard_normal((1, 1, 5, 6)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    y, z = conv.conv2d_forward(x, k, b, (2, 2), "valid", 1, "relu", 0.0)
    pooled, argmax = conv.conv2d_pool_forward(x, k, b, (2, 2), "valid", 1, "relu", 0.0)
    dpool = rng.standard_normal(pooled.shape).astype(np.float32)
    for need_input_grad in (False, True):
        got = conv.conv2d_pool_backward(dpool, argmax, pooled, x, z, None, k, (2, 2), "valid",
                                        1, "relu", 0.0, True, need_input_grad)
        want = conv.conv2d_backward(pool.maxpool2d_backward(dpool, argmax, y.shape), x, z, y,
                                    k, (2, 2), "valid", 1, "relu", 0.0, True, need_input_grad)
        for g, w in zip(got, want):
            assert (g is None) == (w is None)
            if g is not None:
                np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_strided_subsample_and_scatter_against_numpy(rng, dtype, restore_threads):
    """A strided 1x1 conv's subsample and its gradient's scatter (native, on the team):
    NumPy's strided views, rows and columns past the last window included, at 1-3 threads;
    a subsample that does not fit its input is refused before anything runs."""
    full = rng.standard_normal((3, 9, 8, 5)).astype(dtype)
    for threads in (1, 2, 3):
        info.set_num_threads(threads)
        sub = np.empty((3, 3, 4, 5), dtype)
        conv._run_stride(full, sub, 3, 2, False)
        np.testing.assert_array_equal(sub, full[:, ::3, ::2][:, :3, :4])
        back = np.full_like(full, np.nan)
        conv._run_stride(back, sub, 3, 2, True)
        want = np.zeros_like(full)
        want[:, ::3, ::2] = sub
        np.testing.assert_array_equal(back, want)
    with pytest.raises(ValueError, match="does not fit"):
        conv._run_stride(full, np.empty((3, 4, 4, 5), dtype), 3, 2, False)
    with pytest.raises(ValueError, match="does not fit"):
        conv._run_stride(full, np.empty((3, 3, 4, 4), dtype), 3, 2, True)


# Strided convs whose input gradient runs by residue classes (_strided_input_grad): channels
# in whole vectors of both dtypes, strides up to the kernel, odd sizes, rows and columns no
# window reads ('valid'), both paddings.
STRIDED_CLASS_CASES = [
    ((2, 9, 11, 16), (3, 3, 16, 17), (2, 2), "same", (1, 1)),
    ((3, 13, 10, 32), (3, 4, 32, 19), (2, 3), "valid", (1, 1)),
    ((2, 8, 7, 16), (5, 3, 16, 13), (3, 2), "same", (1, 1)),
    ((1, 6, 6, 16), (3, 3, 16, 33), (3, 3), "valid", (1, 1)),
    ((2, 5, 4, 16), (2, 2, 16, 40), (2, 2), "same", (1, 1)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", STRIDED_CLASS_CASES)
def test_strided_input_gradient_by_classes(rng, case, dtype, restore_threads, monkeypatch):
    """The residue-class input gradient (taken for these shapes) against the float64
    oracle and the im2col path, the same bits on 1-3 threads, and inside conv2d_backward."""
    x, k, b, dz = data(rng, case, dtype)
    strides, padding, dilation = case[2:]
    g = geometry_of(x.shape, k.shape, strides, padding, dilation)
    assert conv._strided_input_grad_fits(g, dtype)
    calls, real = [], conv._strided_input_grad
    monkeypatch.setattr(conv, "_strided_input_grad", lambda *a: calls.append(1) or real(*a))
    want = ref.conv2d_backward_input_ref(dz, k, x.shape, strides, padding, dilation)
    got = []
    for n in (1, 2, 3):
        info.set_num_threads(n)
        got.append(conv.conv2d_backward_input(dz, k, x.shape, strides, padding, dilation))
    assert len(calls) == 3
    check("conv2d_backward_input (classes)", got[0], want, dtype)
    for other in got[1:]:
        np.testing.assert_array_equal(other, got[0])
    monkeypatch.setattr(conv, "_STRIDED_INPUT_GRAD", False)
    check("conv2d_backward_input (im2col)",
          conv.conv2d_backward_input(dz, k, x.shape, strides, padding, dilation), want, dtype)
    monkeypatch.setattr(conv, "_STRIDED_INPUT_GRAD", True)
    y, _ = conv.conv2d_forward(x, k, b, strides, padding, dilation, "linear", 0.0)
    dx, dw, db = conv.conv2d_backward(dz, x, None, y, k, strides, padding, dilation, "linear",
                                      0.0, True, True)
    check("conv2d_backward's dx", dx, want, dtype)
    check("conv2d_backward's dkernel", dw,
          ref.conv2d_backward_weight_ref(x, dz, k.shape, strides, padding, dilation), dtype)


def test_strided_input_gradient_by_classes_finite_differences(rng):
    case = STRIDED_CLASS_CASES[1]
    x, k, b, g = data(rng, ((1, 7, 8, 16), (3, 4, 16, 16), (2, 3), "valid", (1, 1)),
                      np.float64)
    assert conv._strided_input_grad_fits(
        geometry_of(x.shape, k.shape, (2, 3), "valid", (1, 1)), np.float64)

    def loss():
        return float(np.sum(conv.conv2d_forward(x, k, b, (2, 3), "valid", (1, 1))[0] * g))

    dx = conv.conv2d_backward_input(g, k, x.shape, (2, 3), "valid", (1, 1))
    np.testing.assert_allclose(dx, numerical_grad(loss, x), rtol=1e-7, atol=1e-8)
    assert case[2] == (2, 3)


def test_strided_input_class_checks_its_arrays(rng):
    """A class that would read or write past its arrays is refused before anything runs."""
    dzp = np.zeros((1, 4, 4, 2), np.float32)
    dx = np.zeros((1, 6, 6, 16), np.float32)
    panels = np.zeros(2 * 2 * 16, np.float32)
    seg = np.zeros(1, np.intp)
    with pytest.raises(ValueError, match="does not fit"):   # rows past dx
        conv._run_strided_input_class(dzp, panels, dx, seg, seg, seg, 2, 4, 2, 0, 0, 0, 0,
                                      2, 2, 0, 0)
    with pytest.raises(ValueError, match="does not fit"):   # columns past dzp
        conv._run_strided_input_class(dzp, panels, dx, seg, seg, seg, 2, 2, 3, 0, 2, 0, 0,
                                      2, 2, 0, 0)


@pytest.mark.parametrize("case", [
    ((2, 9, 11, 17), (3, 3, 17, 32), (2, 2), "same", (1, 1)),   # channels not whole vectors
    ((2, 9, 11, 16), (1, 3, 16, 64), (2, 2), "same", (1, 1)),   # kernel shorter than stride
    ((2, 9, 11, 16), (3, 3, 16, 32), (2, 2), "same", (2, 1)),   # dilated
    ((2, 9, 11, 16), (2, 2, 16, 16), (2, 2), "valid", (1, 1)),  # 16 terms a class
    ((2, 9, 11, 16), (3, 3, 16, 32), (1, 1), "same", (1, 1)),   # stride 1: the direct path
])
def test_strided_input_gradient_keeps_im2col_elsewhere(rng, case):
    x, k, b, dz = data(rng, case, np.float32)
    g = geometry_of(x.shape, k.shape, *case[2:])
    assert not conv._strided_input_grad_fits(g, np.float32)
    check("conv2d_backward_input", conv.conv2d_backward_input(dz, k, x.shape, *case[2:]),
          ref.conv2d_backward_input_ref(dz, k, x.shape, *case[2:]), np.float32)
