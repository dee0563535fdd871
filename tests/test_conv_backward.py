"""conv2d_backward (native/conv.pyx, opencl/conv.cl): a Conv2D layer's whole backward in one op,
against the float64 oracles (tests/reference), the separate ops it fuses, finite differences,
thread counts and bad inputs.

The checks that hold on both backends take the ``backend`` fixture (tests/conftest.py) and
run one body on each; OpenCL-only checks are marked ``opencl``.
"""

import numpy as np
import pytest

from pynn._native import conv, info
from pynn.backend import cpu
from pynn.backend.api import conv2d_backward_composed
from tests.reference import conv_ref as ref
from tests.backend_util import check_op, rand
from tests.test_conv import BACKEND_CASES, BACKEND_IDS, CASES, IDS, TOL, numerical_grad

# Shapes the default rules send down the fused path too (stride 1, C >= 16: the direct
# backward_input), with odd sizes everywhere.
FUSED_CASES = CASES + [
    ((3, 9, 7, 17), (3, 3, 17, 5), (1, 1), "same", (1, 1)),
    ((2, 8, 11, 19), (2, 3, 19, 21), (1, 1), "valid", (1, 2)),
    ((1, 6, 5, 33), (3, 3, 33, 17), (1, 1), "same", (2, 1)),
]
FUSED_IDS = IDS + [f"{x}*{k}-s{s}-{p}-d{d}" for x, k, s, p, d in FUSED_CASES[len(CASES):]]
ACTS = ["relu", "linear", "gelu", "softmax", "leaky_relu", "tanh"]


@pytest.fixture
def rng():
    return np.random.default_rng(4321)


@pytest.fixture(params=["default", "blas", "direct"])
def path(request):
    """The default rules, BLAS everywhere (the op falls back to the separate ops), and the
    microkernels everywhere they apply (the fused pass on every stride-1 shape)."""
    knob = {"default": None, "blas": 0, "direct": 1 << 30}[request.param]
    old = conv._set_direct_max_k(knob)
    yield request.param
    conv._set_direct_max_k(old)


@pytest.fixture(params=["auto", "fused"])
def mode(request):
    """conv2d_backward's own choice between its one pass and the separate ops (which
    differs between CPU kinds), and the pass forced wherever it can run."""
    old = conv._set_backward_mode(request.param)
    yield request.param
    conv._set_backward_mode(old)


@pytest.fixture
def fused():
    old = conv._set_backward_mode("fused")
    yield
    conv._set_backward_mode(old)


def forward_data(rng, case, dtype, act, alpha=0.2):
    x_shape, k_shape, strides, padding, dilation = case
    x = rng.standard_normal(x_shape).astype(dtype)
    k = rng.standard_normal(k_shape).astype(dtype)
    b = rng.standard_normal(k_shape[3]).astype(dtype)
    y, z = cpu.conv2d_forward(x, k, b, strides, padding, dilation, act, alpha)
    dy = rng.standard_normal(y.shape).astype(dtype)
    return x, k, b, y, z, dy


def reference(x, k, b, dy, case, act, alpha):
    return ref.conv2d_backward_ref(dy, x, k, b, *case[2:], act, alpha)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("case", FUSED_CASES, ids=FUSED_IDS)
def test_matches_reference(rng, case, act, dtype, path, mode):
    alpha = 0.2
    x, k, b, y, z, dy = forward_data(rng, case, dtype, act, alpha)
    dx, dk, db = cpu.conv2d_backward(dy, x, z, y, k, *case[2:], act, alpha, True, True)
    dx_ref, dk_ref, db_ref = reference(x, k, b, dy, case, act, alpha)
    # float32: the reference gradient goes through float32 y, whose rounding moves
    # softmax's and gelu's derivatives by a few ulps of y.
    tol = TOL[dtype] if act in ("relu", "linear", "leaky_relu") or dtype == np.float64 \
        else dict(rtol=1e-4, atol=1e-4)
    for name, got, want in (("dx", dx, dx_ref), ("dkernel", dk, dk_ref),
                            ("dbias", db, db_ref)):
        assert got.shape == want.shape and got.dtype == dtype, name
        np.testing.assert_allclose(got, want, err_msg=f"{name} [{act}]", **tol)


@pytest.mark.parametrize("use_bias, need_input_grad",
                         [(True, True), (True, False), (False, True), (False, False)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", FUSED_CASES, ids=FUSED_IDS)
def test_same_bits_as_the_separate_ops(rng, case, dtype, use_bias, need_input_grad, path,
                                       fused):
    """dz is made by the same per-element code, and dkernel and dx by the same microkernel
    order: identical bits. The bias gradient is summed in a different grouping (per slab
    instead of per row block), so it only agrees to rounding."""
    x, k, b, y, z, dy = forward_data(rng, case, dtype, "relu")
    got = cpu.conv2d_backward(dy, x, z, y, k, *case[2:], "relu", 0.0, use_bias,
                              need_input_grad)
    want = conv2d_backward_composed(cpu, dy, x, z, y, k, *case[2:], "relu", 0.0, use_bias,
                                    need_input_grad)
    for name, g, w, used in (("dx", got[0], want[0], need_input_grad),
                             ("dkernel", got[1], want[1], True),
                             ("dbias", got[2], want[2], use_bias)):
        if not used:
            assert g is None, name
            continue
        if name == "dbias":
            np.testing.assert_allclose(g, w, rtol=1e-6 if dtype == np.float32 else 1e-13,
                                       atol=1e-5 if dtype == np.float32 else 1e-12)
        else:
            np.testing.assert_array_equal(g, w, err_msg=name)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("filters", [7, 32, 37, 70])
def test_first_layers_dz_made_a_row_at_a_time(rng, filters, threads, restore_threads, fused):
    """Without an input gradient the pass never writes dz out whole: each row is made in
    its panel (F within one) or in the thread's own row (F across panels, float32's 32
    columns), with the separate ops' dkernel bits at any thread count."""
    case = ((3, 9, 11, 3), (3, 3, 3, filters), (1, 1), "same", (1, 1))
    x, k, b, y, z, dy = forward_data(rng, case, np.float32, "relu")
    info.set_num_threads(threads)
    got = cpu.conv2d_backward(dy, x, z, y, k, *case[2:], "relu", 0.0, True, False)
    want = conv2d_backward_composed(cpu, dy, x, z, y, k, *case[2:], "relu", 0.0, True, False)
    assert got[0] is None
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[2], want[2], rtol=1e-6, atol=1e-5)


def direct_weight_grad_operands(rng):
    """A 4x4x2 -> 3 'same' conv's tables and buffers for _run_backward_weight_direct:
    (dz, g, koff, row_x, slabs, chunk, seg, xp, part, panels, dw, row_dz)."""
    from pynn.backend.operands.common import conv_geometry

    dz = rng.standard_normal((1, 4, 4, 3)).astype(np.float32)
    g = conv._planned(conv_geometry("t", (1, 4, 4, 2), (3, 3, 2, 3), (1, 1), "same", (1, 1)))
    koff, row_x, slabs, chunk, seg = conv._weight_grad_tables(g)
    xp = np.zeros((1, g["HP"], g["WP"], 2), np.float32).reshape(-1)
    part = np.empty(slabs * g["K"] * g["F"], np.float32)
    panels = np.empty(64 * chunk * g["WO"] * g["F"], np.float32)
    dw = np.empty((3, 3, 2, 3), np.float32)
    row_dz = np.arange(4, dtype=np.intp) * 12
    return dz, g, koff, row_x, slabs, chunk, seg, xp, part, panels, dw, row_dz


def test_a_transient_dz_needs_dy_and_a_row_per_thread(rng):
    dz, g, koff, row_x, slabs, chunk, seg, xp, part, panels, dw, row_dz = \
        direct_weight_grad_operands(rng)
    dy = dz.reshape(-1)
    with pytest.raises(ValueError, match="transient dz needs dy"):
        conv._run_backward_weight_direct(xp, np.empty(64 * 12, np.float32), dw, part, panels,
                                         g, koff, row_x, row_dz, seg, slabs, chunk,
                                         dz_transient=True)
    with pytest.raises(ValueError, match="a row per thread"):
        conv._run_backward_weight_direct(xp, np.empty(11, np.float32), dw, part, panels, g,
                                         koff, row_x, row_dz, seg, slabs, chunk, dy=dy,
                                         zpre=dy, y=dy, act=1, dz_transient=True)


@pytest.mark.parametrize("act", ["relu", "gelu", "softmax", "sigmoid"])
@pytest.mark.parametrize("case", [
    ((1, 5, 4, 3), (3, 2, 3, 2), (1, 1), "same", (1, 1)),
    ((2, 6, 5, 2), (2, 2, 2, 3), (1, 1), "valid", (2, 1)),
    ((1, 7, 6, 2), (3, 3, 2, 2), (2, 2), "same", (1, 1)),
])
def test_by_finite_differences(rng, case, act, path, mode):
    """loss = sum(act(conv(x, k) + b) * g): the op's dx, dkernel and dbias are its gradient."""
    strides, padding, dilation = case[2:]
    x, k, b, y, z, g = forward_data(rng, case, np.float64, act)

    def loss():
        out, _ = cpu.conv2d_forward(x, k, b, strides, padding, dilation, act, 0.0)
        return float(np.sum(out * g))

    y, z = cpu.conv2d_forward(x, k, b, strides, padding, dilation, act, 0.0)
    dx, dk, db = cpu.conv2d_backward(g, x, z, y, k, strides, padding, dilation, act, 0.0,
                                     True, True)
    for name, got, a in (("dx", dx, x), ("dkernel", dk, k), ("dbias", db, b)):
        np.testing.assert_allclose(got, numerical_grad(loss, a), rtol=1e-6, atol=1e-8,
                                   err_msg=name)


@pytest.fixture
def restore_threads():
    n = info.get_max_threads()
    yield
    info.set_num_threads(n)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thread_count_invariance(rng, dtype, restore_threads, path, mode):
    case = ((5, 11, 9, 17), (3, 3, 17, 13), (1, 1), "same", (1, 1))
    x, k, b, y, z, dy = forward_data(rng, case, dtype, "gelu")
    results = []
    for n in (1, 2, 3):
        info.set_num_threads(n)
        results.append(cpu.conv2d_backward(dy, x, z, y, k, *case[2:], "gelu", 0.0, True,
                                           True))
    for got in results[1:]:
        for g, w in zip(got, results[0]):
            np.testing.assert_array_equal(g, w)


def test_read_only_and_strided_inputs(rng, path, mode):
    case = FUSED_CASES[-3]
    x, k, b, y, z, dy = forward_data(rng, case, np.float64, "relu")
    want = cpu.conv2d_backward(dy, x, z, y, k, *case[2:], "relu", 0.0, True, True)
    views = [np.asfortranarray(a) for a in (dy, x, y, k)]
    for a in views:
        a.flags.writeable = False
    got = cpu.conv2d_backward(views[0], views[1], None, views[2], views[3], *case[2:], "relu",
                              0.0, True, True)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_empty_batch_no_filters_and_no_channels(rng):
    x = rng.standard_normal((0, 5, 5, 17))
    k = rng.standard_normal((3, 3, 17, 4))
    y = np.zeros((0, 5, 5, 4))
    dx, dk, db = cpu.conv2d_backward(y, x, None, y, k, (1, 1), "same", (1, 1), "relu", 0.0,
                                     True, True)
    assert dx.shape == x.shape and dk.shape == k.shape and db.shape == (4,)
    assert not dk.any() and not db.any()
    x = rng.standard_normal((2, 5, 5, 17))
    k = np.zeros((3, 3, 17, 0))
    y = np.zeros((2, 5, 5, 0))
    dx, dk, db = cpu.conv2d_backward(y, x, None, y, k, (1, 1), "same", (1, 1), "relu", 0.0,
                                     True, True)
    assert dx.shape == x.shape and not dx.any() and dk.shape == k.shape and db.shape == (0,)
    x = np.zeros((2, 5, 5, 0))
    k = np.zeros((3, 3, 0, 4))
    y = rng.standard_normal((2, 5, 5, 4))
    dy = rng.standard_normal((2, 5, 5, 4))
    dx, dk, db = cpu.conv2d_backward(dy, x, None, y, k, (1, 1), "same", (1, 1), "relu", 0.0,
                                     True, True)
    assert dx.shape == x.shape and dk.shape == k.shape
    np.testing.assert_allclose(db, np.where(y > 0, dy, 0).sum(axis=(0, 1, 2)), rtol=1e-12)


X = np.ones((2, 5, 5, 17))
K = np.ones((3, 3, 17, 4))
DY = np.ones((2, 5, 5, 4))


@pytest.mark.parametrize("call, error, match", [
    (lambda: cpu.conv2d_backward(DY[..., :3], X, None, DY[..., :3], K, 1, "same", 1, "relu",
                                 0.0, True, True), ValueError, "'dy' must have shape"),
    (lambda: cpu.conv2d_backward(DY, X, None, DY, K, 1, "valid", 1, "relu", 0.0, True, True),
     ValueError, "'dy' must have shape"),
    (lambda: cpu.conv2d_backward(DY, X, None, None, K, 1, "same", 1, "relu", 0.0, True,
                                 True), ValueError, "'y'"),
    (lambda: cpu.conv2d_backward(DY, X, None, DY, K, 1, "same", 1, "gelu", 0.0, True, True),
     ValueError, "pre-activation"),
    (lambda: cpu.conv2d_backward(DY, X, DY[:1], DY, K, 1, "same", 1, "gelu", 0.0, True,
                                 True), ValueError, "'x' must have the shape"),
    (lambda: cpu.conv2d_backward(DY, X, None, DY, K, 1, "same", 1, "leaky_relu", -1.0, True,
                                 True), ValueError, "alpha"),
    (lambda: cpu.conv2d_backward(DY, X, None, DY, K, 1, "same", 1, "swishy", 0.0, True,
                                 True), ValueError, "activation"),
    (lambda: cpu.conv2d_backward(DY, X[0], None, DY, K, 1, "same", 1, "relu", 0.0, True,
                                 True), ValueError, "dimensions"),
    (lambda: cpu.conv2d_backward(DY, X, None, DY, K[:, :, :3], 1, "same", 1, "relu", 0.0,
                                 True, True), ValueError, "input channels"),
    (lambda: cpu.conv2d_backward(DY.astype(str), X, None, DY, K, 1, "same", 1, "relu", 0.0,
                                 True, True), TypeError, "numeric"),
])
def test_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_kernel_tables_are_checked_before_the_kernel_runs(rng):
    """The shim refuses tables that do not fit the geometry (no out-of-bounds access)."""
    dz, g, koff, row_x, slabs, chunk, seg, xp, part, panels, dw, row_dz = \
        direct_weight_grad_operands(rng)
    conv._run_backward_weight_direct(xp, dz.reshape(-1), dw, part, panels, g, koff, row_x,
                                     row_dz, seg, slabs, chunk)
    with pytest.raises(ValueError, match="does not fit"):
        conv._run_backward_weight_direct(xp, dz.reshape(-1), dw, part, panels, g, koff,
                                         row_x, row_dz + 1, seg, slabs, chunk)
    with pytest.raises(ValueError, match="does not fit"):
        conv._run_backward_weight_direct(xp[:-1], dz.reshape(-1), dw, part, panels, g, koff,
                                         row_x, row_dz, seg, slabs, chunk)
    with pytest.raises(ValueError, match="does not fit"):
        conv._run_backward_weight_direct(xp, dz.reshape(-1), dw, part, panels, g, koff,
                                         row_x, row_dz, seg, slabs, chunk,
                                         dy=dz.reshape(-1)[:-1], zpre=dz.reshape(-1),
                                         y=dz.reshape(-1))


@pytest.mark.parametrize("case", FUSED_CASES[-3:], ids=FUSED_IDS[-3:])
def test_fused_pass_runs_where_the_direct_kernels_do(rng, case, monkeypatch, fused):
    """With the pass chosen, these shapes never fall back to the separate ops."""
    def fail(*args, **kwargs):
        raise AssertionError("fell back to the separate ops")

    x, k, b, y, z, dy = forward_data(rng, case, np.float32, "relu")
    monkeypatch.setattr(conv, "conv2d_backward_composed", fail)
    for need_input_grad in (True, False):
        cpu.conv2d_backward(dy, x, z, y, k, *case[2:], "relu", 0.0, True, need_input_grad)
    strided = ((2, 9, 9, 17), (3, 3, 17, 5), (2, 2), "same", (1, 1))
    x, k, b, y, z, dy = forward_data(rng, strided, np.float32, "relu")
    cpu.conv2d_backward(dy, x, z, y, k, *strided[2:], "relu", 0.0, True, True)


def test_backward_mode_rule():
    """The one pass where it feeds the direct kernel gradient and a direct (or no) input
    gradient, off the Intel kind; the separate ops elsewhere (measured)."""
    old = conv._set_backward_mode("auto")
    try:
        assert conv._fused_backward_pays(False, True, intel=False)
        assert not conv._fused_backward_pays(True, True, intel=False)   # Winograd dkernel
        assert not conv._fused_backward_pays(False, False, intel=False)  # strided dx
        for winograd_weight in (False, True):
            for direct_input in (False, True):
                assert not conv._fused_backward_pays(winograd_weight, direct_input, intel=True)
        # a first layer (no dx) with an activation or a bias: the one pass, unless Winograd
        assert conv._fused_backward_pays(False, True, intel=True, weight_epilogue=True)
        assert not conv._fused_backward_pays(True, True, intel=True, weight_epilogue=True)
        conv._set_backward_mode("composed")
        assert not conv._fused_backward_pays(False, True, intel=False)
        conv._set_backward_mode("fused")
        assert conv._fused_backward_pays(True, False, intel=True)
        with pytest.raises(ValueError, match="'auto', 'fused' or 'composed', got 'fast'"):
            conv._set_backward_mode("fast")
    finally:
        conv._set_backward_mode(old)


# -- over both backends (the `backend` fixture): the layer's whole backward (dx, dkernel,
# dbias) against the float64 oracles; on OpenCL also against the CPU's fused op.


@pytest.mark.parametrize("use_bias, need_input_grad", [(True, True), (False, False)])
@pytest.mark.parametrize("xs,ks,s,p,d", BACKEND_CASES, ids=BACKEND_IDS)
def test_conv2d_backward_on_backend(backend, xs, ks, s, p, d, use_bias, need_input_grad):
    rng = np.random.default_rng(sum(xs) * 3 + sum(ks))
    x, w, b = rand(rng, xs), rand(rng, ks), rand(rng, (ks[3],))
    act = "gelu" if xs[0] % 2 else "relu"
    y, z = cpu.conv2d_forward(x, w, b, s, p, d, act, 0.0)
    dy = rand(rng, y.shape)
    want = ref.conv2d_backward_ref(dy, x, w, b, s, p, d, act, 0.0, use_bias, need_input_grad)
    check_op(backend, "conv2d_backward", dy, x, z, y, w, s, p, d, act, 0.0, use_bias,
             need_input_grad, ref=want, rtol=5e-4 if act == "gelu" else None, kind="gemm")
