"""bfloat16 ops (native/bf16.pyx, opencl/bf16.cl): the rounding bit for bit against NumPy
(ties, NaN, infinities, overflow), the GEMM-shaped ops against float64 products of
bf16-rounded operands within float32 accumulation error, on odd shapes (M, N, K = 1, odd K,
non-multiples of the 8 x 32 tile); OpenCL against the CPU; vdpbf16ps and the portable kernel
giving the same bits, every microkernel the CPU runs (AMX tiles too) within the error bound on
shapes past each blocking edge; thread-count invariance; bad operands."""

import numpy as np
import pytest

import pynn
from pynn._native import bf16 as native_bf16
from tests.backend_util import rand
from tests.reference import bf16_ref as ref


@pytest.fixture
def rng():
    return np.random.default_rng(1717)


@pytest.fixture
def portable_kernel():
    """The test hook that pretends the CPU has no AVX512_BF16; restores the chosen kernel."""
    yield native_bf16._select_kernel(portable=True)
    native_bf16._kernel_from_env()


def _cpu_kernels():
    """Every bf16 microkernel this CPU runs (AMX tiles, vdpbf16ps, portable C)."""
    found = []
    try:
        for portable, amx in ((False, True), (False, False), (True, False)):
            name = native_bf16._select_kernel(portable=portable, amx=amx)
            if name not in found:
                found.append(name)
    finally:
        native_bf16._kernel_from_env()
    return found


CPU_KERNELS = _cpu_kernels()


@pytest.fixture(params=CPU_KERNELS)
def cpu_kernel(request):
    """Each bf16 microkernel of this CPU in turn, the chosen one restored after."""
    name = request.param
    assert native_bf16._select_kernel(portable=name == "portable",
                                      amx=name == "amx_bf16") == name
    yield name
    native_bf16._kernel_from_env()


def _bits(a):
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


def _special_values():
    """Ties both ways, halfway-plus-one, NaN payloads that only the low half carries
    (rounding must not turn them into infinities), infinities, the largest floats (which
    round to infinity), subnormals, signed zeros."""
    hi = np.arange(0, 0x10000, 97, dtype=np.uint32) << 16
    ties = np.concatenate([hi | 0x8000, hi | 0x7FFF, hi | 0x8001, hi | 0x0001])
    specials = np.array([0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFF800001,
                         0x7FBFFFFF, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F8000, 0x7F7F7FFF,
                         0x00000001, 0x00008000, 0x80018000, 0x00000000, 0x80000000,
                         0x3F808000, 0x3F818000], np.uint32)
    return np.concatenate([ties, specials]).view(np.float32)


def test_bf16_round_ref_known_values():
    """The reference itself, on values whose bf16 is known by hand."""
    x = np.array([1.0, 1.00390625, 1.01171875, 1.0 + 2**-8 + 2**-20, np.inf, 3.4e38],
                 np.float32)
    want = np.array([1.0, 1.0, 1.015625, 1.0078125, np.inf, np.inf], np.float32)
    np.testing.assert_array_equal(ref.bf16_round_ref(x), want)
    nan = ref.bf16_round_ref(np.array([0x7F800001], np.uint32).view(np.float32))
    assert np.isnan(nan[0]) and _bits(nan)[0] == 0x7FC00000


def test_bf16_round(backend, rng):
    x = np.concatenate([_special_values(), rand(rng, (1001,)) * 1e3])
    got = backend.down(backend.op("bf16_round")(backend.up(x)))
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_array_equal(_bits(got), _bits(ref.bf16_round_ref(x)),
                                  err_msg=f"bf16_round on {backend.name}")
    assert np.all(_bits(got) & 0xFFFF == 0)
    shaped = rand(rng, (3, 5, 7))
    np.testing.assert_array_equal(backend.down(backend.op("bf16_round")(backend.up(shaped))),
                                  ref.bf16_round_ref(shaped))


def _within_bf16_gemm_error(got, want, bound, k, what):
    """float32 sums of k exact bf16 products: each element within k roundings of its size
    ``bound`` (the same product on absolute values)."""
    got = np.asarray(got, np.float64)
    tol = (k + 2) * 2.0**-24 * bound + 1e-30
    err = np.abs(got - want)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    assert np.all(err <= tol), (f"{what}: max error {err.max():.3g}, allowed "
                                f"{tol.flat[np.argmax(err - tol)]:.3g}")


# (N, C, U): M, N, K = 1, odd K (padded pair), non-multiples of the 8-row x 32-column tile.
DENSE_SHAPES = [(1, 1, 1), (7, 33, 65), (9, 2, 31), (17, 1, 3), (33, 129, 40), (8, 64, 32),
                (3, 300, 97)]


@pytest.mark.parametrize("n,c,u", DENSE_SHAPES)
def test_bf16_dense_ops(backend, rng, n, c, u):
    x, kernel, bias = rand(rng, (n, c)), rand(rng, (c, u)), rand(rng, (u,))
    dz = rand(rng, (n, u))
    up = backend.up
    y, z = backend.op("bf16_dense_forward")(up(x), up(kernel), up(bias), "linear", 0.0)
    assert z is None
    want = ref.bf16_dense_forward_ref(x, kernel, bias)[1]
    bound = ref.bf16_dense_forward_ref(np.abs(x), np.abs(kernel), np.abs(bias))[1]
    _within_bf16_gemm_error(backend.down(y), want, bound, c, "bf16_dense_forward")
    dx = backend.down(backend.op("bf16_dense_backward_input")(up(dz), up(kernel)))
    _within_bf16_gemm_error(dx, ref.bf16_dense_backward_input_ref(dz, kernel),
                            ref.bf16_dense_backward_input_ref(np.abs(dz), np.abs(kernel)), u,
                            "bf16_dense_backward_input")
    dw = backend.down(backend.op("bf16_dense_backward_weight")(up(x), up(dz)))
    _within_bf16_gemm_error(dw, ref.bf16_dense_backward_weight_ref(x, dz),
                            ref.bf16_dense_backward_weight_ref(np.abs(x), np.abs(dz)), n,
                            "bf16_dense_backward_weight")
    if backend.is_opencl:  # the CPU's numerics, not its summation order
        cpu_dw = native_bf16.bf16_dense_backward_weight(x, dz)
        np.testing.assert_allclose(dw, cpu_dw, rtol=1e-5, atol=1e-5 * np.abs(cpu_dw).max())


@pytest.mark.parametrize("activation", ["relu", "gelu", "softmax"])
def test_bf16_dense_forward_activation(backend, rng, activation):
    """The float32 epilogue after the bf16 product: y = act(z), z kept where backward needs
    it (gelu), as dense_forward."""
    x, kernel, bias = rand(rng, (5, 19)), rand(rng, (19, 11)), rand(rng, (11,))
    y, z = backend.op("bf16_dense_forward")(backend.up(x), backend.up(kernel),
                                             backend.up(bias), activation, 0.0)
    want_y, want_z = ref.bf16_dense_forward_ref(x, kernel, bias, activation)
    np.testing.assert_allclose(backend.down(y), want_y, rtol=1e-5, atol=1e-5)
    if activation == "gelu":
        np.testing.assert_allclose(backend.down(z), want_z, rtol=1e-5, atol=1e-5)
    else:
        assert z is None


@pytest.mark.parametrize("activation", ["relu", "softmax"])
def test_every_cpu_kernel_dense_epilogue_past_one_group(cpu_kernel, rng, activation):
    """Bias and activation after a product wider than one AMX column group (256) and past
    its serial threshold, split over the threads: softmax's rows stay whole."""
    x, kernel, bias = rand(rng, (160, 330)), rand(rng, (330, 300)), rand(rng, (300,))
    y, _ = native_bf16.bf16_dense_forward(x, kernel, bias, activation)
    want_y, want_z = ref.bf16_dense_forward_ref(x, kernel, bias, activation)
    if activation == "relu":
        bound = ref.bf16_dense_forward_ref(np.abs(x), np.abs(kernel), np.abs(bias))[1]
        _within_bf16_gemm_error(y, want_y, bound, 330, f"relu ({cpu_kernel})")
    else:
        np.testing.assert_allclose(y, want_y, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)


def test_bf16_dense_rounds_its_operands(rng):
    """The result is the product of the rounded operands, not of the float32 ones: the two
    differ by far more than the accumulation error."""
    x, kernel = rand(rng, (16, 64)), rand(rng, (64, 16))
    got = native_bf16.bf16_dense_forward(x, kernel, None)[0].astype(np.float64)
    rounded = ref.bf16_dense_forward_ref(x, kernel, None)[1]
    unrounded = x.astype(np.float64) @ kernel
    assert np.abs(got - rounded).max() < 1e-3 * np.abs(got - unrounded).max()


# (input shape, kernel shape, strides, padding, dilation): 8 channels or more run the bf16
# kernels; fewer (the first case) round and run the float32 ones (NARROW_CHANNELS).
CONV_CASES = [
    ((2, 7, 9, 3), (3, 3, 3, 5), (1, 1), "valid", (1, 1)),
    ((2, 7, 9, 9), (3, 3, 9, 5), (1, 1), "valid", (1, 1)),
    ((3, 8, 6, 8), (3, 2, 8, 33), (2, 1), "same", (1, 1)),
    ((1, 9, 9, 11), (3, 3, 11, 7), (1, 1), "same", (2, 2)),
    ((2, 5, 5, 16), (1, 1, 16, 9), (1, 1), "valid", (1, 1)),
    ((2, 20, 17, 8), (5, 5, 8, 3), (1, 1), "same", (1, 1)),  # > 256 rows: several chunks
]


@pytest.mark.parametrize("x_shape,k_shape,strides,padding,dilation", CONV_CASES)
def test_bf16_conv2d_ops(backend, rng, x_shape, k_shape, strides, padding, dilation):
    x, kernel, bias = rand(rng, x_shape), rand(rng, k_shape), rand(rng, (k_shape[3],))
    geo = (strides, padding, dilation)
    up = backend.up
    y, _ = backend.op("bf16_conv2d_forward")(up(x), up(kernel), up(bias), *geo, "linear", 0.0)
    y = backend.down(y)
    reduction = k_shape[0] * k_shape[1] * k_shape[2]
    _within_bf16_gemm_error(y, ref.bf16_conv2d_forward_ref(x, kernel, bias, *geo)[1],
                            ref.bf16_conv2d_forward_ref(np.abs(x), np.abs(kernel),
                                                        np.abs(bias), *geo)[1],
                            reduction, "bf16_conv2d_forward")
    dz = rand(rng, y.shape)
    dx = backend.down(backend.op("bf16_conv2d_backward_input")(up(dz), up(kernel), x_shape,
                                                               *geo))
    _within_bf16_gemm_error(dx, ref.bf16_conv2d_backward_input_ref(dz, kernel, x_shape, *geo),
                            ref.bf16_conv2d_backward_input_ref(np.abs(dz), np.abs(kernel),
                                                               x_shape, *geo),
                            k_shape[0] * k_shape[1] * k_shape[3], "bf16_conv2d_backward_input")
    dw = backend.down(backend.op("bf16_conv2d_backward_weight")(up(x), up(dz), k_shape, *geo))
    _within_bf16_gemm_error(dw, ref.bf16_conv2d_backward_weight_ref(x, dz, k_shape, *geo),
                            ref.bf16_conv2d_backward_weight_ref(np.abs(x), np.abs(dz), k_shape,
                                                                *geo),
                            x_shape[0] * y.shape[1] * y.shape[2], "bf16_conv2d_backward_weight")
    if backend.is_opencl:
        cpu_y = native_bf16.bf16_conv2d_forward(x, kernel, bias, *geo)[0]
        np.testing.assert_allclose(y, cpu_y, rtol=1e-5, atol=1e-5 * np.abs(cpu_y).max())


def test_bf16_conv2d_forward_activation(backend, rng):
    # gelu keeps z; on OpenCL relu, whose conv program the other tests have built (PoCL
    # takes ~45 s to build the gelu one).
    activation = "relu" if backend.is_opencl else "gelu"
    x, kernel, bias = rand(rng, (2, 6, 5, 8)), rand(rng, (3, 3, 8, 4)), rand(rng, (4,))
    y, z = backend.op("bf16_conv2d_forward")(backend.up(x), backend.up(kernel),
                                              backend.up(bias), (1, 1), "same", (1, 1),
                                              activation, 0.0)
    want_y, want_z = ref.bf16_conv2d_forward_ref(x, kernel, bias, (1, 1), "same", (1, 1),
                                                 activation)
    np.testing.assert_allclose(backend.down(y), want_y, rtol=1e-5, atol=1e-5)
    if activation == "gelu":
        np.testing.assert_allclose(backend.down(z), want_z, rtol=1e-5, atol=1e-5)
    else:
        assert z is None


# A narrow first layer and its max pool (bf16_conv2d_pool_*): (x, kernel, strides, padding,
# dilation, pool_size, pool_strides). On an AMX CPU the first five run the tiles
# (_bf16amx_pool.h: the window's K <= 32 values, whole 16-filter tiles, no column dilation;
# the gradient also column stride 1), the others the float32 road on rounded operands.
POOL_CASES = [
    ((3, 9, 11, 3), (3, 3, 3, 16), (1, 1), "same", (1, 1), (2, 2), (2, 2)),  # odd H, W
    ((2, 13, 11, 3), (3, 2, 3, 48), (1, 1), "valid", (2, 1), (2, 3), (2, 3)),  # 3 tiles, DH 2
    ((2, 12, 20, 1), (5, 5, 1, 32), (1, 1), "same", (1, 1), (3, 3), (3, 3)),  # K = 25, 3x3
    ((2, 6, 37, 3), (3, 3, 3, 32), (1, 1), "same", (1, 1), (2, 2), (2, 2)),  # WO > 32
    ((2, 9, 9, 3), (3, 3, 3, 16), (2, 2), "same", (1, 1), (2, 2), (2, 2)),  # stride 2
    ((2, 7, 7, 4), (3, 3, 4, 16), (1, 1), "same", (1, 1), (2, 2), (2, 2)),  # K = 36 > 32
    ((2, 6, 6, 3), (3, 3, 3, 24), (1, 1), "same", (1, 1), (2, 2), (2, 2)),  # F = 24
    ((2, 8, 8, 3), (3, 3, 3, 16), (1, 1), "same", (1, 2), (2, 2), (2, 2)),  # column dilation
    # wide convs: bands on the direct conv's tiles where channels and filters come in 32s at
    # stride 1 (the first four), else bf16_conv2d_forward then the pool; dz from the pool's
    # arrays, then the bf16 products
    ((3, 8, 10, 32), (3, 3, 32, 32), (1, 1), "same", (1, 1), (2, 2), (2, 2)),
    ((2, 9, 7, 64), (3, 3, 64, 64), (1, 1), "same", (1, 1), (2, 2), (2, 2)),  # odd H, W
    ((2, 19, 35, 32), (3, 3, 32, 32), (1, 1), "same", (1, 1), (3, 3), (3, 3)),  # 3 row tiles
    ((2, 11, 11, 32), (2, 3, 32, 64), (1, 1), "valid", (2, 1), (3, 2), (3, 2)),  # DH 2
    ((2, 8, 8, 16), (3, 3, 16, 32), (1, 1), "same", (1, 1), (2, 2), (2, 2)),  # C = 16
    ((2, 8, 8, 32), (3, 3, 32, 32), (2, 2), "same", (1, 1), (2, 2), (2, 2)),  # stride 2
]


def _check_conv_pool(case, activation, x, kernel, bias, pooled, argmax, what):
    """pooled within the bf16 sum error of the float64 pool of act(conv) on rounded
    operands; each argmax names a pixel of its window whose float64 value is a maximum
    within that error (a near tie may go either way)."""
    _, k_shape, strides, padding, dilation, pool_size, pool_strides = case
    geo = (strides, padding, dilation)
    want, _ = ref.bf16_conv2d_pool_forward_ref(x, kernel, bias, *geo, activation, 0.0,
                                               pool_size, pool_strides)
    y = ref.bf16_conv2d_forward_ref(x, kernel, bias, *geo, activation)[0]
    bound = ref.bf16_conv2d_forward_ref(np.abs(x), np.abs(kernel), np.abs(bias), *geo)[1]
    tol = (k_shape[0] * k_shape[1] * k_shape[2] + 2) * 2.0**-24 * bound.max() + 1e-6
    pooled = np.asarray(pooled, np.float64)
    assert pooled.shape == want.shape and argmax.dtype == np.int32, what
    off = np.abs(pooled - want).max()
    assert off <= tol, f"{what}: pooled off by {off:.3g}, allowed {tol:.3g}"
    n, ho, wo, f = y.shape
    picked = np.take_along_axis(y.reshape(n, ho * wo, f),
                                np.asarray(argmax, np.int64).reshape(n, -1, f), axis=1)
    assert np.all(picked.reshape(want.shape) >= want - 2 * tol), f"{what}: argmax"
    rows, cols = np.asarray(argmax) // wo, np.asarray(argmax) % wo
    hp = np.arange(want.shape[1])[None, :, None, None] * pool_strides[0]
    wp = np.arange(want.shape[2])[None, None, :, None] * pool_strides[1]
    assert np.all((rows >= hp) & (rows < hp + pool_size[0]) & (cols >= wp)
                  & (cols < wp + pool_size[1])), f"{what}: argmax outside its window"


def _check_conv_pool_grads(case, activation, x, kernel, bias, dpool, argmax, got, what,
                           need_input_grad=False):
    x_shape, k_shape, strides, padding, dilation, pool_size, pool_strides = case
    geo = (strides, padding, dilation)
    want = ref.bf16_conv2d_pool_backward_ref(dpool, argmax, x, kernel, bias, *geo, activation,
                                             0.0, True, need_input_grad)
    # the bounds: the same sums on absolute values, every routed gradient kept
    from tests.reference.conv_ref import conv2d_pool_backward_ref

    dr, xr = np.abs(ref.bf16_round_ref(dpool)), np.abs(ref.bf16_round_ref(x))
    kr = np.abs(ref.bf16_round_ref(kernel))
    bound = conv2d_pool_backward_ref(dr, argmax, xr, kr, None, *geo, "linear", 0.0, True,
                                     need_input_grad)
    dx, dk, db = got
    pixels = x_shape[0] * pool_size[0] * pool_size[1] * np.prod(dpool.shape[1:3])
    _within_bf16_gemm_error(dk, want[1], bound[1], pixels, f"{what} dkernel")
    want_db = want[2]
    if k_shape[2] >= native_bf16.NARROW:   # a wide conv's bias gradient: dz unrounded
        want_db = conv2d_pool_backward_ref(dpool, argmax, ref.bf16_round_ref(x),
                                           ref.bf16_round_ref(kernel), bias, *geo, activation,
                                           0.0, True, False)[2]
    _within_bf16_gemm_error(db, want_db, bound[2], pixels, f"{what} dbias")
    if need_input_grad:
        _within_bf16_gemm_error(dx, want[0], bound[0], k_shape[0] * k_shape[1] * k_shape[3],
                                f"{what} dx")
    else:
        assert dx is None


@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("activation", ["relu", "linear"])
def test_bf16_conv2d_pool_ops(backend, rng, case, activation):
    x_shape, k_shape, strides, padding, dilation, pool_size, pool_strides = case
    x, kernel, bias = rand(rng, x_shape), rand(rng, k_shape), rand(rng, (k_shape[3],))
    up = backend.up
    args = (strides, padding, dilation, activation, 0.0, pool_size, pool_strides, "valid")
    pooled, argmax = backend.op("bf16_conv2d_pool_forward")(up(x), up(kernel), up(bias), *args)
    pooled, argmax = backend.down(pooled), backend.down(argmax)
    _check_conv_pool(case, activation, x, kernel, bias, pooled, argmax,
                     f"bf16_conv2d_pool_forward on {backend.name}")
    dpool = rand(rng, pooled.shape)
    for need_input_grad in (False, True):
        got = backend.op("bf16_conv2d_pool_backward")(
            up(dpool), up(argmax), up(pooled), up(x), None, None, up(kernel), strides, padding,
            dilation, activation, 0.0, True, need_input_grad, pool_size, pool_strides, "valid")
        _check_conv_pool_grads(case, activation, x, kernel, bias, dpool, argmax,
                               [None if g is None else backend.down(g) for g in got],
                               f"bf16_conv2d_pool_backward on {backend.name}", need_input_grad)
    if backend.is_opencl:  # the CPU's numerics, not its summation order
        cpu = native_bf16.bf16_conv2d_pool_backward(dpool, argmax, pooled, x, None, None,
                                                    kernel, strides, padding, dilation,
                                                    activation, 0.0, True, False, pool_size,
                                                    pool_strides)
        dk = backend.down(got[1])
        np.testing.assert_allclose(dk, cpu[1], rtol=1e-4, atol=1e-4 * np.abs(cpu[1]).max())


@pytest.mark.parametrize("case", POOL_CASES[:5] + POOL_CASES[8:11])
def test_every_cpu_kernel_conv_pool_within_bf16_error(cpu_kernel, rng, case):
    """AMX's tile kernels where the CPU has them, the float32 road on rounded operands on the
    others: the same contract."""
    x_shape, k_shape, strides, padding, dilation, pool_size, pool_strides = case
    x, kernel, bias = rand(rng, x_shape), rand(rng, k_shape), rand(rng, (k_shape[3],))
    args = (strides, padding, dilation, "relu", 0.0, pool_size, pool_strides)
    pooled, argmax = native_bf16.bf16_conv2d_pool_forward(x, kernel, bias, *args)
    _check_conv_pool(case, "relu", x, kernel, bias, pooled, argmax,
                     f"bf16_conv2d_pool_forward ({cpu_kernel})")
    dpool = rand(rng, pooled.shape)
    got = native_bf16.bf16_conv2d_pool_backward(dpool, argmax, pooled, x, None, None, kernel,
                                                strides, padding, dilation, "relu", 0.0, True,
                                                False, pool_size, pool_strides)
    _check_conv_pool_grads(case, "relu", x, kernel, bias, dpool, argmax, got,
                           f"bf16_conv2d_pool_backward ({cpu_kernel})")


@pytest.mark.parametrize("case", POOL_CASES[8:12])
@pytest.mark.parametrize("activation", ["relu", "linear"])
def test_wide_conv_pool_backward_has_the_separate_roads_bits(rng, case, activation):
    """A wide conv's pair backward (on AMX: no dz array, the tiles' operands made from the
    pool's arrays) gives what the layers' separate road gives: dz and dbias from
    pooled_activation_bias_backward, then the bf16 products, bit for bit."""
    from pynn._native import activation as native_activation

    x_shape, k_shape, strides, padding, dilation, pool_size, pool_strides = case
    x, kernel, bias = rand(rng, x_shape), rand(rng, k_shape), rand(rng, (k_shape[3],))
    geo = (strides, padding, dilation)
    pooled, argmax = native_bf16.bf16_conv2d_pool_forward(x, kernel, bias, *geo, activation,
                                                          0.0, pool_size, pool_strides)
    dpool = rand(rng, pooled.shape)
    dx, dk, db = native_bf16.bf16_conv2d_pool_backward(
        dpool, argmax, pooled, x, None, None, kernel, *geo, activation, 0.0, True, True,
        pool_size, pool_strides)
    h, w = native_bf16.bf16_conv2d_forward(x, kernel, None, *geo)[0].shape[1:3]
    y = np.zeros((x_shape[0], h, w, k_shape[3]), np.float32)   # its shape: relu reads pooled
    dz, want_db = native_activation.pooled_activation_bias_backward(
        dpool, argmax, pooled if activation == "relu" else None, y, pool_size, pool_strides,
        "valid", activation, 0.0)
    np.testing.assert_array_equal(dk, native_bf16.bf16_conv2d_backward_weight(
        x, dz, k_shape, *geo))
    np.testing.assert_array_equal(dx, native_bf16.bf16_conv2d_backward_input(
        dz, kernel, x_shape, *geo))
    np.testing.assert_array_equal(db, want_db)


@pytest.mark.parametrize("activation", ["tanh", "softmax"])
def test_bf16_conv2d_pool_forward_activation(rng, activation):
    """Other activations on the tiles' band, by the float32 epilogue's own expressions."""
    case = POOL_CASES[0]
    x_shape, k_shape, strides, padding, dilation, pool_size, pool_strides = case
    x, kernel, bias = rand(rng, x_shape), rand(rng, k_shape), rand(rng, (k_shape[3],))
    pooled, argmax = native_bf16.bf16_conv2d_pool_forward(
        x, kernel, bias, strides, padding, dilation, activation, 0.0, pool_size, pool_strides)
    want, _ = ref.bf16_conv2d_pool_forward_ref(x, kernel, bias, strides, padding, dilation,
                                               activation, 0.0, pool_size, pool_strides)
    np.testing.assert_allclose(pooled, want, rtol=1e-5, atol=1e-5)


def test_bf16_conv2d_pool_bad_operands(backend, rng):
    up = backend.up
    x, kernel = rand(rng, (2, 6, 6, 3)), rand(rng, (3, 3, 3, 16))
    geo = ((1, 1), "same", (1, 1))
    pooled, argmax = backend.op("bf16_conv2d_pool_forward")(up(x), up(kernel), None, *geo,
                                                            "relu", 0.0, (2, 2), (2, 2),
                                                            "valid")
    pooled, argmax = backend.down(pooled), backend.down(argmax)
    with pytest.raises(ValueError, match=r"bf16_conv2d_pool_forward: kernel has 3 input "
                                         r"channels but the input has 4"):
        backend.op("bf16_conv2d_pool_forward")(up(rand(rng, (2, 6, 6, 4))), up(kernel), None,
                                               *geo, "relu", 0.0, (2, 2), (2, 2), "valid")
    with pytest.raises(ValueError, match=r"bf16_conv2d_pool_backward: .*dpool"):
        backend.op("bf16_conv2d_pool_backward")(
            up(rand(rng, (2, 3, 4, 16))), up(argmax), up(pooled), up(x), None, None, up(kernel),
            *geo, "relu", 0.0, True, False, (2, 2), (2, 2), "valid")
    if not backend.is_opencl:
        with pytest.raises(TypeError, match=r"bf16_conv2d_pool_forward: 'x' must be float32"):
            native_bf16.bf16_conv2d_pool_forward(x.astype(np.float64), kernel, None, *geo)
        wrong = argmax.copy()
        wrong[0, 0, 0, :] = argmax[0, 2, 2, :]   # another window's pixel
        with pytest.raises(ValueError, match=r"bf16_conv2d_pool_backward: 16 argmax entries "
                                             r"lie outside their pool window"):
            native_bf16.bf16_conv2d_pool_backward(
                rand(rng, pooled.shape), wrong, pooled, x, None, None, kernel, *geo, "relu",
                0.0, True, False, (2, 2), (2, 2))


def _all_ops(rng):
    x, kernel, dz = rand(rng, (13, 37)), rand(rng, (37, 45)), rand(rng, (13, 45))
    xi, ki = rand(rng, (3, 9, 7, 9)), rand(rng, (3, 3, 9, 6))
    dzi = rand(rng, (3, 9, 7, 6))
    geo = ((1, 1), "same", (1, 1))
    # and channels in whole AMX tiles (32): the direct stride-1 paths there; a product past
    # AMX's serial threshold (16 M multiply-adds), split over the threads there
    xw, kw, dzw = rand(rng, (5, 9, 8, 32)), rand(rng, (3, 3, 32, 32)), rand(rng, (5, 9, 8, 32))
    xb, kb = rand(rng, (256, 257)), rand(rng, (257, 260))
    # a narrow first layer and its pool: AMX's band and slab kernels where the CPU has tiles
    xp, kp = rand(rng, (5, 14, 13, 3)), rand(rng, (3, 3, 3, 32))
    pool = native_bf16.bf16_conv2d_pool_forward(xp, kp, rand(rng, (32,)), *geo, "relu")
    pool_grads = native_bf16.bf16_conv2d_pool_backward(
        rand(rng, pool[0].shape), pool[1], pool[0], xp, None, None, kp, *geo, "relu", 0.0,
        True, False)[1:]
    xq, kq = rand(rng, (5, 9, 8, 32)), rand(rng, (3, 3, 32, 32))   # a wide one's bands
    wide = native_bf16.bf16_conv2d_pool_forward(xq, kq, rand(rng, (32,)), *geo, "relu")
    pool += wide
    pool_grads += native_bf16.bf16_conv2d_pool_backward(
        rand(rng, wide[0].shape), wide[1], wide[0], xq, None, None, kq, *geo, "relu", 0.0,
        True, True)
    return [native_bf16.bf16_dense_forward(xb, kb, None)[0],
            native_bf16.bf16_dense_backward_input(rand(rng, (256, 260)), kb),
            native_bf16.bf16_dense_forward(x, kernel, None)[0],
            native_bf16.bf16_dense_backward_input(dz, kernel),
            native_bf16.bf16_dense_backward_weight(x, dz),
            native_bf16.bf16_conv2d_forward(xi, ki, None, *geo)[0],
            native_bf16.bf16_conv2d_backward_input(dzi, ki, xi.shape, *geo),
            native_bf16.bf16_conv2d_backward_weight(xi, dzi, ki.shape, *geo),
            native_bf16.bf16_conv2d_forward(xw, kw, None, *geo)[0],
            native_bf16.bf16_conv2d_backward_input(dzw, kw, xw.shape, *geo),
            native_bf16.bf16_conv2d_backward_weight(xw, dzw, kw.shape, *geo),
            *pool, *pool_grads]


def test_portable_kernel_gives_the_same_bits(rng):
    """Where the CPU has AVX512_BF16, vdpbf16ps and the portable kernel (what a CPU without
    it runs) agree bit for bit on normal numbers: one numeric definition on every CPU
    without AMX (whose tiles sum each pair of products in their own order)."""
    if "avx512_bf16" not in CPU_KERNELS:
        pytest.skip("this CPU has no AVX512_BF16: only the portable kernel runs")
    try:
        assert native_bf16._select_kernel(amx=False) == "avx512_bf16"
        fast = _all_ops(np.random.default_rng(5))
        assert native_bf16._select_kernel(portable=True) == "portable"
        slow = _all_ops(np.random.default_rng(5))
    finally:
        native_bf16._kernel_from_env()
    for a, b in zip(fast, slow):
        np.testing.assert_array_equal(a, b)


# Products that cross every AMX blocking edge: rows past one and several 32-row panels,
# columns past one 256-column group, reductions past one 128-pair chunk, odd K.
AMX_DENSE_SHAPES = [(37, 300, 290), (65, 513, 33), (1, 257, 1)]


@pytest.mark.parametrize("n,c,u", DENSE_SHAPES + AMX_DENSE_SHAPES)
def test_every_cpu_kernel_within_bf16_error(cpu_kernel, rng, n, c, u):
    """The dense ops on each microkernel this CPU runs (test_bf16_dense_ops runs the chosen
    one), within float32 accumulation error of the float64 product of rounded operands."""
    x, kernel, dz = rand(rng, (n, c)), rand(rng, (c, u)), rand(rng, (n, u))
    got = native_bf16.bf16_dense_forward(x, kernel, None)[0]
    _within_bf16_gemm_error(got, ref.bf16_dense_forward_ref(x, kernel, None)[1],
                            ref.bf16_dense_forward_ref(np.abs(x), np.abs(kernel), None)[1], c,
                            f"bf16_dense_forward ({cpu_kernel})")
    _within_bf16_gemm_error(native_bf16.bf16_dense_backward_input(dz, kernel),
                            ref.bf16_dense_backward_input_ref(dz, kernel),
                            ref.bf16_dense_backward_input_ref(np.abs(dz), np.abs(kernel)), u,
                            f"bf16_dense_backward_input ({cpu_kernel})")
    _within_bf16_gemm_error(native_bf16.bf16_dense_backward_weight(x, dz),
                            ref.bf16_dense_backward_weight_ref(x, dz),
                            ref.bf16_dense_backward_weight_ref(np.abs(x), np.abs(dz)), n,
                            f"bf16_dense_backward_weight ({cpu_kernel})")


# Convs with more than one chunk of rows (an odd last chunk), F past one 32-column panel and
# K = KH*KW*C past one 128-pair chunk.
AMX_CONV_CASES = [((2, 17, 19, 40), (3, 3, 40, 37), (1, 1), "same", (1, 1)),
                  ((3, 9, 10, 8), (2, 2, 8, 70), (2, 2), "valid", (1, 1)),
                  # channels a multiple of 32 (16): whole tile columns per tap
                  ((2, 9, 11, 32), (3, 3, 32, 64), (1, 1), "same", (1, 1)),
                  ((2, 10, 9, 64), (3, 2, 64, 32), (1, 1), "valid", (2, 1)),
                  ((2, 8, 8, 16), (3, 3, 16, 48), (2, 2), "same", (1, 1)),
                  # a batch of several samples per thread: one sample's image at a time
                  ((9, 7, 6, 32), (3, 3, 32, 33), (1, 1), "same", (1, 1))]


@pytest.mark.parametrize("x_shape,k_shape,strides,padding,dilation",
                         CONV_CASES + AMX_CONV_CASES)
def test_every_cpu_kernel_conv_within_bf16_error(cpu_kernel, rng, x_shape, k_shape, strides,
                                                 padding, dilation):
    x, kernel = rand(rng, x_shape), rand(rng, k_shape)
    geo = (strides, padding, dilation)
    y = native_bf16.bf16_conv2d_forward(x, kernel, None, *geo)[0]
    _within_bf16_gemm_error(y, ref.bf16_conv2d_forward_ref(x, kernel, None, *geo)[1],
                            ref.bf16_conv2d_forward_ref(np.abs(x), np.abs(kernel), None,
                                                        *geo)[1],
                            k_shape[0] * k_shape[1] * k_shape[2],
                            f"bf16_conv2d_forward ({cpu_kernel})")
    dz = rand(rng, y.shape)
    _within_bf16_gemm_error(
        native_bf16.bf16_conv2d_backward_input(dz, kernel, x_shape, *geo),
        ref.bf16_conv2d_backward_input_ref(dz, kernel, x_shape, *geo),
        ref.bf16_conv2d_backward_input_ref(np.abs(dz), np.abs(kernel), x_shape, *geo),
        k_shape[0] * k_shape[1] * k_shape[3], f"bf16_conv2d_backward_input ({cpu_kernel})")
    _within_bf16_gemm_error(
        native_bf16.bf16_conv2d_backward_weight(x, dz, k_shape, *geo),
        ref.bf16_conv2d_backward_weight_ref(x, dz, k_shape, *geo),
        ref.bf16_conv2d_backward_weight_ref(np.abs(x), np.abs(dz), k_shape, *geo),
        x_shape[0] * y.shape[1] * y.shape[2], f"bf16_conv2d_backward_weight ({cpu_kernel})")


@pytest.mark.parametrize("activation", ["linear", "relu", "gelu"])
def test_every_cpu_kernel_conv_epilogue(cpu_kernel, rng, activation):
    """Bias and activation after the product, on each microkernel (AMX's stride-1 convs of
    whole-tile channels apply bias and relu in their own write pass)."""
    x, kernel, bias = rand(rng, (2, 9, 11, 32)), rand(rng, (3, 3, 32, 40)), rand(rng, (40,))
    geo = ((1, 1), "same", (1, 1))
    y, z = native_bf16.bf16_conv2d_forward(x, kernel, bias, *geo, activation)
    want_y, want_z = ref.bf16_conv2d_forward_ref(x, kernel, bias, *geo, activation)
    bound = ref.bf16_conv2d_forward_ref(np.abs(x), np.abs(kernel), np.abs(bias), *geo)[1]
    if activation == "gelu":
        _within_bf16_gemm_error(z, want_z, bound, 9 * 32, f"conv z ({cpu_kernel})")
        np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
    else:  # linear and relu move no value further than the sum's own error
        assert z is None
        _within_bf16_gemm_error(y, want_y, bound, 9 * 32, f"conv {activation} ({cpu_kernel})")


def test_kernel_env_names_are_checked(monkeypatch):
    monkeypatch.setenv("PYNN_BF16_KERNEL", "tiles")
    with pytest.raises(ValueError, match=r"PYNN_BF16_KERNEL: expected one of amx_bf16, "
                                         r"avx512_bf16, portable, got 'tiles'"):
        native_bf16._kernel_from_env()
    monkeypatch.delenv("PYNN_BF16_KERNEL")
    assert native_bf16._kernel_from_env() == CPU_KERNELS[0]


def test_results_do_not_depend_on_the_thread_count(cpu_kernel):
    """Every kernel of the CPU: AMX's products and the team's vdpbf16ps and portable roads."""
    results = []
    for threads in (1, 2, 3):
        with pynn.threads(threads):
            results.append(_all_ops(np.random.default_rng(9)))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_bad_operands_name_the_op(backend, rng):
    up = backend.up
    x, kernel = rand(rng, (4, 5)), rand(rng, (6, 3))
    with pytest.raises(ValueError, match=r"bf16_dense_forward: .*kernel"):
        backend.op("bf16_dense_forward")(up(x), up(kernel), None, "linear", 0.0)
    with pytest.raises(ValueError, match=r"bf16_conv2d_forward: kernel has 2 input channels "
                                         r"but the input has 3"):
        backend.op("bf16_conv2d_forward")(up(rand(rng, (1, 5, 5, 3))),
                                          up(rand(rng, (3, 3, 2, 4))), None, (1, 1), "valid",
                                          (1, 1), "linear", 0.0)
    with pytest.raises(ValueError, match=r"bf16_dense_backward_weight: .*dz"):
        backend.op("bf16_dense_backward_weight")(up(x), up(rand(rng, (3, 2))))


def test_float64_is_refused_on_the_cpu(rng):
    x = rand(rng, (4, 5)).astype(np.float64)
    with pytest.raises(TypeError, match=r"bf16_dense_forward: 'x' must be float32.*float64"):
        native_bf16.bf16_dense_forward(x, x.T.copy(), None)
    with pytest.raises(TypeError, match=r"bf16_round: 'x' must be float32"):
        native_bf16.bf16_round(x)


def test_portable_hook(portable_kernel, rng):
    """The hook that pretends AVX512_BF16 is missing: the portable kernel runs and is right."""
    assert portable_kernel == "portable" == pynn.mixed_precision.bf16_kernel()
    x, kernel = rand(rng, (9, 33)), rand(rng, (33, 35))
    got = native_bf16.bf16_dense_forward(x, kernel, None)[0]
    _within_bf16_gemm_error(got, ref.bf16_dense_forward_ref(x, kernel, None)[1],
                            ref.bf16_dense_forward_ref(np.abs(x), np.abs(kernel), None)[1], 33,
                            "bf16_dense_forward (portable)")


@pytest.fixture
def winograd_without_amx():
    """The kernels of a CPU without AMX tiles (vdpbf16ps where it runs, else portable), with
    float32's 3x3 convs forced onto Winograd; both restored after."""
    from pynn._native import conv as native_conv

    name = native_bf16._select_kernel(amx=False)
    old = native_conv._set_conv_algo("winograd")
    yield name
    native_conv._set_conv_algo(old)
    native_bf16._kernel_from_env()


def _float32_winograd_bits(got, float32_got, want, bound):
    """float32's bits on the rounded operands, within Winograd's error of the float64
    reference (bound: the product on absolute values)."""
    np.testing.assert_array_equal(got, float32_got)
    assert np.all(np.abs(got - want) <= 1e-5 * bound + 1e-30)


def test_bf16_conv_takes_float32_winograd_without_amx(rng, winograd_without_amx):
    """Without AMX, a conv that float32 runs by Winograd runs float32's op on the rounded
    operands (_float32_road): forward, input gradient, the pooled pair and (few channels) the
    kernel gradient give that op's bits. Odd sizes, within
    Winograd's error of the bf16 reference (transforms of up to 3x3 sums: a looser bound than
    a GEMM's)."""
    from pynn._native import conv as native_conv

    r = native_bf16.bf16_round
    x, kernel, bias = rand(rng, (2, 9, 7, 11)), rand(rng, (3, 3, 11, 13)), rand(rng, (13,))
    geo = ((1, 1), "same", (1, 1))
    y, _ = native_bf16.bf16_conv2d_forward(x, kernel, bias, *geo, "relu", 0.0)
    _float32_winograd_bits(
        y, native_conv.conv2d_forward(r(x), r(kernel), bias, *geo, "relu", 0.0)[0],
        ref.bf16_conv2d_forward_ref(x, kernel, bias, *geo, "relu")[0],
        ref.bf16_conv2d_forward_ref(np.abs(x), np.abs(kernel), np.abs(bias), *geo)[1])
    dz = rand(rng, y.shape)
    _float32_winograd_bits(
        native_bf16.bf16_conv2d_backward_input(dz, kernel, x.shape, *geo),
        native_conv.conv2d_backward_input(r(dz), r(kernel), x.shape, *geo),
        ref.bf16_conv2d_backward_input_ref(dz, kernel, x.shape, *geo),
        ref.bf16_conv2d_backward_input_ref(np.abs(dz), np.abs(kernel), x.shape, *geo))
    # the kernel gradient too, up to WINO_WEIGHT_GRAD_MAX_CF channel pairs (11 x 13 here)
    _float32_winograd_bits(
        native_bf16.bf16_conv2d_backward_weight(x, dz, kernel.shape, *geo),
        native_conv.conv2d_backward_weight(r(x), r(dz), kernel.shape, *geo),
        ref.bf16_conv2d_backward_weight_ref(x, dz, kernel.shape, *geo),
        ref.bf16_conv2d_backward_weight_ref(np.abs(x), np.abs(dz), kernel.shape, *geo))
    # past it, the bf16 kernels: within a GEMM's error of the reference
    xw, dzw = rand(rng, (2, 5, 6, 67)), rand(rng, (2, 5, 6, 63))
    dw = native_bf16.bf16_conv2d_backward_weight(xw, dzw, (3, 3, 67, 63), *geo)
    _within_bf16_gemm_error(dw, ref.bf16_conv2d_backward_weight_ref(xw, dzw, (3, 3, 67, 63),
                                                                    *geo),
                            ref.bf16_conv2d_backward_weight_ref(np.abs(xw), np.abs(dzw),
                                                                (3, 3, 67, 63), *geo),
                            2 * 5 * 6, "bf16_conv2d_backward_weight")
    pool = ((2, 2), (2, 2), "valid")
    pooled, argmax = native_bf16.bf16_conv2d_pool_forward(x, kernel, bias, *geo, "relu", 0.0,
                                                          *pool)
    want_pooled, want_argmax = native_conv.conv2d_pool_forward(r(x), r(kernel), bias, *geo,
                                                               "relu", 0.0, *pool)
    np.testing.assert_array_equal(pooled, want_pooled)
    np.testing.assert_array_equal(argmax, want_argmax)
    # its backward as the narrow road's: float32's on rounded dpool, x and kernel
    dpool = rand(rng, pooled.shape)
    got = native_bf16.bf16_conv2d_pool_backward(dpool, argmax, pooled, x, None, None, kernel,
                                                *geo, "relu", 0.0, True, True, *pool)
    want = native_conv.conv2d_pool_backward(r(dpool), argmax, pooled, r(x), None, None,
                                            r(kernel), *geo, "relu", 0.0, True, True, *pool)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
