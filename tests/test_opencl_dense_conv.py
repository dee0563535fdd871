"""OpenCL dense / conv / bias_backward ops against the CPU ops (pynn._native) and the float64
NumPy oracles, on awkward sizes that are not multiples of any tile. float32 only; GEMM-shaped
results within 1e-4 relative. Runs on PoCL's CPU device in CI."""

import numpy as np
import pytest

from pynn.backend.api import ACTIVATIONS, ACTIVATIONS_NEEDING_INPUT
from tests.opencl_util import assert_close, ocl, rand  # noqa: F401
from tests.reference import conv_ref

pytestmark = pytest.mark.opencl

RTOL = 1e-4


@pytest.fixture(scope="module")
def cpu_dense():
    return pytest.importorskip("pynn._native.dense")


@pytest.fixture(scope="module")
def cpu_conv():
    return pytest.importorskip("pynn._native.conv")


def _gemm():
    from pynn.backend.opencl import gemm

    return gemm


def check_op(what, got, cpu, ref, rtol=RTOL):
    """One OpenCL result against the CPU op's and the float64 oracle's."""
    got = np.asarray(got.get() if hasattr(got, "get") else got)
    assert got.dtype == np.float32, f"{what}: dtype {got.dtype}"
    if cpu is not None:
        assert_close(got, cpu, rtol, f"{what} vs CPU")
    assert_close(got, ref, rtol, f"{what} vs float64 reference")


# -- dense ----------------------------------------------------------------------------------

DENSE_SHAPES = [(1, 1, 1), (7, 13, 3), (33, 31, 65), (3, 70, 5), (65, 7, 33)]


@pytest.mark.parametrize("n,c,u", DENSE_SHAPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_dense_forward_linear(ocl, cpu_dense, n, c, u, with_bias):
    rng = np.random.default_rng(n * 1000 + c * 10 + u)
    x, w, b = rand(rng, (n, c)), rand(rng, (c, u)), rand(rng, (u,))
    bias = b if with_bias else None
    y, z = ocl.dense_forward(ocl.asarray(x), ocl.asarray(w),
                             ocl.asarray(b) if with_bias else None, "linear", 0.0)
    yc, _ = cpu_dense.dense_forward(x, w, bias, "linear", 0.0)
    ref = x.astype(np.float64) @ w + (b if with_bias else 0)
    assert z is None
    check_op("dense_forward", y, yc, ref)


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_dense_forward_every_activation(ocl, cpu_dense, act):
    rng = np.random.default_rng(ACTIVATIONS.index(act))
    x, w, b = rand(rng, (13, 7)), rand(rng, (7, 11)) * 0.5, rand(rng, (11,))
    alpha = 0.3 if act in ("leaky_relu", "elu") else 0.0
    y, z = ocl.dense_forward(ocl.asarray(x), ocl.asarray(w), ocl.asarray(b), act, alpha)
    yc, zc = cpu_dense.dense_forward(x, w, b, act, alpha)
    z_ref = x.astype(np.float64) @ w + b
    y_ref = conv_ref.activation(z_ref, act, alpha)
    check_op(f"dense_forward {act}", y, yc, y_ref)
    assert (z is None) == (act not in ACTIVATIONS_NEEDING_INPUT) == (zc is None)
    if z is not None:
        check_op(f"dense_forward {act} z", z, zc, z_ref)


@pytest.mark.parametrize("n,c,u", DENSE_SHAPES)
def test_dense_backward(ocl, cpu_dense, n, c, u):
    rng = np.random.default_rng(7 + n + c + u)
    x, w, dz = rand(rng, (n, c)), rand(rng, (c, u)), rand(rng, (n, u))
    dx = ocl.dense_backward_input(ocl.asarray(dz), ocl.asarray(w))
    check_op("dense_backward_input", dx, cpu_dense.dense_backward_input(dz, w),
             dz.astype(np.float64) @ w.T)
    dw = ocl.dense_backward_weight(ocl.asarray(x), ocl.asarray(dz))
    check_op("dense_backward_weight", dw, cpu_dense.dense_backward_weight(x, dz),
             x.astype(np.float64).T @ dz)


def test_dense_backward_weight_split_k_is_exact_and_reproducible(ocl, cpu_dense):
    rng = np.random.default_rng(3)
    n, c, u = 1537, 5, 3  # a long reduction onto a tiny output: several split-K slots
    splits, _ = _gemm()._split_plan(c, u, n, ocl.gemm_tiles())
    if ocl.device_info()["compute_units"] * 4 > 1:
        assert splits > 1, "this shape should take the split-K path"
    x, dz = ocl.asarray(rand(rng, (n, c))), ocl.asarray(rand(rng, (n, u)))
    dw = ocl.dense_backward_weight(x, dz)
    ref = ocl.to_numpy(x).astype(np.float64).T @ ocl.to_numpy(dz)
    check_op("dense_backward_weight split-K", dw,
             cpu_dense.dense_backward_weight(ocl.to_numpy(x), ocl.to_numpy(dz)), ref)
    assert np.array_equal(dw.get(), ocl.dense_backward_weight(x, dz).get())


def test_dense_empty_batch_and_empty_reduction(ocl):
    up = ocl.asarray
    x, w, b = up(np.zeros((0, 4))), up(np.ones((4, 3))), up(np.ones(3))
    y, _ = ocl.dense_forward(x, w, b, "relu", 0.0)
    assert y.shape == (0, 3)
    assert ocl.dense_backward_input(up(np.zeros((0, 3))), w).shape == (0, 4)
    dw = ocl.dense_backward_weight(x, up(np.zeros((0, 3))))
    assert dw.shape == (4, 3) and np.array_equal(dw.get(), np.zeros((4, 3)))
    # No input features: y = act(bias).
    y, _ = ocl.dense_forward(up(np.zeros((2, 0))), up(np.zeros((0, 3))),
                             up(np.array([-1.0, 0.5, 2.0])), "relu", 0.0)
    assert np.array_equal(y.get(), [[0, 0.5, 2.0]] * 2)


def test_dense_results_do_not_depend_on_tiles(ocl, monkeypatch):
    rng = np.random.default_rng(11)
    x, w = ocl.asarray(rand(rng, (37, 29))), ocl.asarray(rand(rng, (29, 19)))
    dz = ocl.asarray(rand(rng, (37, 19)))
    first = [ocl.dense_forward(x, w, None, "tanh", 0.0)[0].get(),
             ocl.dense_backward_input(dz, w).get()]
    index = ocl.device_info()["index"]
    monkeypatch.setitem(_gemm()._tiles_by_device, index, dict(_gemm().FALLBACK_TILES))
    second = [ocl.dense_forward(x, w, None, "tanh", 0.0)[0].get(),
              ocl.dense_backward_input(dz, w).get()]
    for a, b in zip(first, second):
        assert np.array_equal(a, b), "summation order changed with the tile sizes"


# Vector reads: the device's width where it divides the leading dimensions (4 | 36), scalar
# otherwise (66, odd); every width sums in the same order, so vector and scalar builds agree
# bit for bit.
VECTOR_DENSE_SHAPES = [(36, 64, 66), (33, 8, 4), (4, 66, 129), (65, 3, 36), (7, 130, 12)]


def test_vector_width_choice(ocl):
    cfg = dict(ocl.gemm_tiles(), VW=4)
    assert _gemm()._vec_width(cfg, 64) == 4 and _gemm()._vec_width(cfg, 66) == 1
    assert _gemm()._vec_width(cfg, 33) == 1 and _gemm()._vec_width(cfg, 1) == 1
    assert _gemm()._vec_width(cfg, 12, 6) == 1 and _gemm()._vec_width(cfg, 12, 8) == 4
    assert _gemm()._vec_width(dict(cfg, VW=2), 66) == 2
    assert _gemm()._vec_width(dict(cfg, VW=1), 64) == 1


@pytest.mark.parametrize("n,c,u", VECTOR_DENSE_SHAPES)
def test_dense_vector_reads_match_scalar_and_cpu(ocl, cpu_dense, monkeypatch, n, c, u):
    rng = np.random.default_rng(n * 1000 + c * 10 + u)
    x, w, b, dz = rand(rng, (n, c)), rand(rng, (c, u)), rand(rng, (u,)), rand(rng, (n, u))
    index = ocl.device_info()["index"]
    results = {}
    for vw in (4, 1):
        monkeypatch.setitem(_gemm()._tiles_by_device, index, dict(ocl.gemm_tiles(), VW=vw))
        xd, wd, bd, dzd = (ocl.asarray(a) for a in (x, w, b, dz))
        results[vw] = [ocl.dense_forward(xd, wd, bd, "relu", 0.0)[0].get(),
                       ocl.dense_backward_input(dzd, wd).get(),
                       ocl.dense_backward_weight(xd, dzd).get()]
    x64, w64, dz64 = x.astype(np.float64), w.astype(np.float64), dz.astype(np.float64)
    yc, _ = cpu_dense.dense_forward(x, w, b, "relu", 0.0)
    refs = [(yc, np.maximum(x64 @ w64 + b, 0.0)),
            (cpu_dense.dense_backward_input(dz, w), dz64 @ w64.T),
            (cpu_dense.dense_backward_weight(x, dz), x64.T @ dz64)]
    for name, got4, got1, (cpu, ref) in zip(("forward", "backward_input", "backward_weight"),
                                            results[4], results[1], refs):
        check_op(f"dense_{name} {n}x{c}x{u}", got4, cpu, ref)
        assert np.array_equal(got4, got1), f"dense_{name}: vector and scalar reads differ"


def test_dense_two_wide_reads(ocl, cpu_dense, monkeypatch):
    # A device tuned to VW = 2 reads pairs; 6, 10, 14 are even but not multiples of 4.
    rng = np.random.default_rng(3)
    x, w, dz = rand(rng, (6, 10)), rand(rng, (10, 14)), rand(rng, (6, 14))
    index = ocl.device_info()["index"]
    monkeypatch.setitem(_gemm()._tiles_by_device, index, dict(ocl.gemm_tiles(), VW=2))
    assert _gemm()._vec_width(ocl.gemm_tiles(), 6, 10, 14) == 2
    x64, w64, dz64 = x.astype(np.float64), w.astype(np.float64), dz.astype(np.float64)
    xd, wd, dzd = ocl.asarray(x), ocl.asarray(w), ocl.asarray(dz)
    check_op("dense_forward VW=2", ocl.dense_forward(xd, wd, None, "linear", 0.0)[0],
             cpu_dense.dense_forward(x, w, None, "linear", 0.0)[0], x64 @ w64)
    check_op("dense_backward_input VW=2", ocl.dense_backward_input(dzd, wd),
             cpu_dense.dense_backward_input(dz, w), dz64 @ w64.T)
    check_op("dense_backward_weight VW=2", ocl.dense_backward_weight(xd, dzd),
             cpu_dense.dense_backward_weight(x, dz), x64.T @ dz64)


# (input shape, kernel shape, strides, padding, dilation): C and F multiples of 4 or 2 so the
# patch / tap gathers and the kernel reads take the vector path.
VECTOR_CONV_CASES = [
    ((2, 7, 9, 4), (3, 3, 4, 8), (1, 1), "same", (1, 1)),
    ((1, 9, 8, 8), (3, 2, 8, 6), (2, 3), "same", (2, 1)),
    ((3, 5, 6, 2), (2, 3, 2, 12), (1, 2), "valid", (1, 1)),
]


@pytest.mark.parametrize("xs,ks,s,p,d", VECTOR_CONV_CASES)
def test_conv2d_vector_reads_match_scalar_and_cpu(ocl, cpu_conv, monkeypatch, xs, ks, s, p,
                                                  d):
    rng = np.random.default_rng(sum(xs) * 7 + sum(ks))
    x, w, b = rand(rng, xs), rand(rng, ks), rand(rng, (ks[3],))
    y_ref, _ = conv_ref.conv2d_forward_ref(x, w, b, s, p, d, "linear", 0.0)
    dz = rand(rng, y_ref.shape)
    index = ocl.device_info()["index"]
    results = {}
    for vw in (4, 1):
        monkeypatch.setitem(_gemm()._tiles_by_device, index, dict(ocl.gemm_tiles(), VW=vw))
        xd, wd, bd, dzd = (ocl.asarray(a) for a in (x, w, b, dz))
        results[vw] = [ocl.conv2d_forward(xd, wd, bd, s, p, d, "linear", 0.0)[0].get(),
                       ocl.conv2d_backward_input(dzd, wd, xs, s, p, d).get(),
                       ocl.conv2d_backward_weight(xd, dzd, ks, s, p, d).get()]
    refs = [(cpu_conv.conv2d_forward(x, w, b, s, p, d, "linear", 0.0)[0], y_ref),
            (cpu_conv.conv2d_backward_input(dz, w, xs, s, p, d),
             conv_ref.conv2d_backward_input_ref(dz, w, xs, s, p, d)),
            (cpu_conv.conv2d_backward_weight(x, dz, ks, s, p, d),
             conv_ref.conv2d_backward_weight_ref(x, dz, ks, s, p, d))]
    for name, got4, got1, (cpu, ref) in zip(("forward", "backward_input", "backward_weight"),
                                            results[4], results[1], refs):
        check_op(f"conv2d_{name}", got4, cpu, ref)
        assert np.array_equal(got4, got1), f"conv2d_{name}: vector and scalar reads differ"


# -- bias_backward --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1,), (7,), (13, 5), (3, 7, 5, 9), (1100, 3), (4, 0)])
def test_bias_backward(ocl, cpu_dense, shape):
    rng = np.random.default_rng(len(shape))
    dz = rand(rng, shape)
    got = ocl.bias_backward(ocl.asarray(dz))
    ref = dz.astype(np.float64).reshape(-1, shape[-1]).sum(0) if shape[-1] else np.zeros(0)
    check_op("bias_backward", got, cpu_dense.bias_backward(dz), ref)
    assert np.array_equal(got.get(), ocl.bias_backward(ocl.asarray(dz)).get())


def test_bias_backward_empty_rows(ocl):
    got = ocl.bias_backward(ocl.zeros((0, 5)))
    assert np.array_equal(got.get(), np.zeros(5, np.float32))


# -- conv -----------------------------------------------------------------------------------

# (input shape, kernel shape, strides, padding, dilation)
CONV_CASES = [
    ((2, 7, 9, 3), (3, 3, 3, 5), (1, 1), "valid", (1, 1)),
    ((1, 8, 7, 2), (3, 2, 2, 4), (2, 3), "same", (1, 1)),
    ((3, 9, 11, 4), (3, 3, 4, 7), (2, 2), "same", (2, 1)),
    ((1, 5, 5, 1), (1, 1, 1, 1), (1, 1), "valid", (1, 1)),
    ((2, 13, 13, 3), (3, 3, 3, 13), (3, 3), "same", (1, 2)),
    ((1, 6, 5, 33), (2, 2, 33, 3), (1, 1), "same", (1, 1)),
]


def _conv_ids():
    return [f"{c[0]}x{c[1]}s{c[2]}{c[3]}d{c[4]}".replace(" ", "") for c in CONV_CASES]


@pytest.mark.parametrize("xs,ks,s,p,d", CONV_CASES, ids=_conv_ids())
def test_conv2d_forward_and_backward(ocl, cpu_conv, xs, ks, s, p, d):
    rng = np.random.default_rng(sum(xs) + sum(ks))
    x, w, b = rand(rng, xs), rand(rng, ks), rand(rng, (ks[3],))
    act = "gelu" if xs[0] % 2 else "relu"
    y, z = ocl.conv2d_forward(ocl.asarray(x), ocl.asarray(w), ocl.asarray(b), s, p, d, act, 0.0)
    yc, zc = cpu_conv.conv2d_forward(x, w, b, s, p, d, act, 0.0)
    y_ref, z_ref = conv_ref.conv2d_forward_ref(x, w, b, s, p, d, act, 0.0)
    check_op("conv2d_forward", y, yc, y_ref)
    assert (z is None) == (zc is None)
    if z is not None:
        check_op("conv2d_forward z", z, zc, z_ref)
    dz = rand(rng, y_ref.shape)
    dx = ocl.conv2d_backward_input(ocl.asarray(dz), ocl.asarray(w), xs, s, p, d)
    check_op("conv2d_backward_input", dx, cpu_conv.conv2d_backward_input(dz, w, xs, s, p, d),
             conv_ref.conv2d_backward_input_ref(dz, w, xs, s, p, d))
    dw = ocl.conv2d_backward_weight(ocl.asarray(x), ocl.asarray(dz), ks, s, p, d)
    check_op("conv2d_backward_weight", dw,
             cpu_conv.conv2d_backward_weight(x, dz, ks, s, p, d),
             conv_ref.conv2d_backward_weight_ref(x, dz, ks, s, p, d))


@pytest.mark.parametrize("use_bias, need_input_grad", [(True, True), (False, False)])
@pytest.mark.parametrize("xs,ks,s,p,d", CONV_CASES, ids=_conv_ids())
def test_conv2d_backward_matches_cpu(ocl, cpu_conv, xs, ks, s, p, d, use_bias,
                                     need_input_grad):
    """The layer's whole backward (dx, dkernel, dbias) against the CPU's fused op and the
    float64 oracles."""
    from tests.reference.activation_ref import activation_backward_ref

    rng = np.random.default_rng(sum(xs) * 3 + sum(ks))
    x, w, b = rand(rng, xs), rand(rng, ks), rand(rng, (ks[3],))
    act = "gelu" if xs[0] % 2 else "relu"
    yc, zc = cpu_conv.conv2d_forward(x, w, b, s, p, d, act, 0.0)
    dy = rand(rng, yc.shape)
    got = ocl.conv2d_backward(ocl.asarray(dy), ocl.asarray(x),
                              None if zc is None else ocl.asarray(zc), ocl.asarray(yc),
                              ocl.asarray(w), s, p, d, act, 0.0, use_bias, need_input_grad)
    cpu = cpu_conv.conv2d_backward(dy, x, zc, yc, w, s, p, d, act, 0.0, use_bias,
                                   need_input_grad)
    _, z_ref = conv_ref.conv2d_forward_ref(x, w, b, s, p, d, "linear", 0.0)
    dz_ref = activation_backward_ref(dy, z_ref, act)
    refs = (conv_ref.conv2d_backward_input_ref(dz_ref, w, xs, s, p, d),
            conv_ref.conv2d_backward_weight_ref(x, dz_ref, ks, s, p, d),
            dz_ref.reshape(-1, ks[3]).sum(axis=0))
    for name, g, c, r, used in zip(("dx", "dkernel", "dbias"), got, cpu, refs,
                                   (need_input_grad, True, use_bias)):
        if not used:
            assert g is None and c is None, name
            continue
        check_op(f"conv2d_backward {name}", g, c, r, rtol=5e-4 if act == "gelu" else RTOL)


def test_conv2d_no_bias_softmax_and_split_k(ocl, cpu_conv):
    rng = np.random.default_rng(5)
    xs, ks = (9, 12, 11, 2), (3, 3, 2, 3)  # 1188 output pixels onto an 18 x 3 kernel
    x, w, dz = rand(rng, xs), rand(rng, ks), rand(rng, (9, 12, 11, 3))
    if ocl.device_info()["compute_units"] <= 8:
        assert _gemm()._split_plan(18, 3, 9 * 12 * 11, ocl.gemm_tiles())[0] > 1
    xd, wd, dzd = ocl.asarray(x), ocl.asarray(w), ocl.asarray(dz)
    y, z = ocl.conv2d_forward(xd, wd, None, (1, 1), "same", (1, 1), "softmax", 0.0)
    y_ref, _ = conv_ref.conv2d_forward_ref(x, w, None, (1, 1), "same", (1, 1), "softmax")
    check_op("conv2d_forward softmax", y, None, y_ref)
    assert z is None
    dw = ocl.conv2d_backward_weight(xd, dzd, ks, (1, 1), "same", (1, 1))
    check_op("conv2d_backward_weight", dw,
             cpu_conv.conv2d_backward_weight(x, dz, ks, (1, 1), "same", (1, 1)),
             conv_ref.conv2d_backward_weight_ref(x, dz, ks, (1, 1), "same", (1, 1)))
    again = ocl.conv2d_backward_weight(xd, dzd, ks, (1, 1), "same", (1, 1))
    assert np.array_equal(dw.get(), again.get()), "backward_weight is not reproducible"


def test_conv2d_empty_outputs(ocl):
    up = ocl.asarray
    x, w = up(np.ones((1, 3, 3, 2))), np.ones((5, 5, 2, 3), np.float32)
    y, _ = ocl.conv2d_forward(x, up(w), None, (1, 1), "valid", (1, 1), "linear", 0.0)
    assert y.shape == (1, 0, 0, 3)
    dx = ocl.conv2d_backward_input(up(np.zeros((1, 0, 0, 3))), up(w), x.shape, (1, 1),
                                   "valid", (1, 1))
    assert np.array_equal(dx.get(), np.zeros(x.shape))
    dw = ocl.conv2d_backward_weight(x, up(np.zeros((1, 0, 0, 3))), w.shape, (1, 1),
                                    "valid", (1, 1))
    assert np.array_equal(dw.get(), np.zeros(w.shape))
    y, _ = ocl.conv2d_forward(up(np.zeros((0, 5, 5, 2))), up(w[:3, :3]), None, 1, "same",
                              1, "relu", 0.0)
    assert y.shape == (0, 5, 5, 3)


# -- argument checks ------------------------------------------------------------------------


def test_host_arrays_go_up_through_asarray_only(ocl):
    """One policy for every OpenCL op (api.py): host data is a TypeError naming asarray, and
    asarray takes any host layout to the same device array."""
    rng = np.random.default_rng(9)
    x, w = rand(rng, (5, 4)), rand(rng, (4, 3))
    wd = ocl.asarray(w)
    for op, args in (("dense_forward", (x, wd, None, "linear", 0.0)),
                     ("dense_forward", (ocl.asarray(x), w, None, "linear", 0.0)),
                     ("dense_backward_weight", (x, ocl.asarray(x))),
                     ("bias_backward", (x,)),
                     ("conv2d_forward", (x[None, None], wd[None], None, 1, "same", 1,
                                         "linear", 0.0))):
        with pytest.raises(TypeError, match=f"{op}: .* \\(upload with backend.asarray\\)"):
            getattr(ocl, op)(*args)
    want = ocl.dense_forward(ocl.asarray(x), wd, None, "linear", 0.0)[0].get()
    fortran = np.asfortranarray(x)
    readonly = x.copy()
    readonly.flags.writeable = False
    strided = np.repeat(x, 2, axis=1)[:, ::2]
    for variant in (fortran, readonly, strided, x.astype(np.float64)):
        got = ocl.dense_forward(ocl.asarray(variant), wd, None, "linear", 0.0)[0].get()
        assert np.array_equal(got, want)


def test_bad_inputs(ocl):
    up = ocl.asarray
    x, w = up(np.ones((5, 4))), up(np.ones((4, 3)))
    with pytest.raises(ValueError, match="dense_forward: 'x' is required"):
        ocl.dense_forward(None, w, None, "linear", 0.0)
    with pytest.raises(ValueError, match=r"'kernel' must have shape \(4, \?\)"):
        ocl.dense_forward(x, up(np.ones((3, 3), np.float32)), None, "linear", 0.0)
    with pytest.raises(ValueError, match=r"'bias' must have shape \(3,\)"):
        ocl.dense_forward(x, w, up(np.ones(4, np.float32)), "linear", 0.0)
    with pytest.raises(ValueError, match="2 dimensions"):
        ocl.dense_forward(up(np.ones(5, np.float32)), w, None, "linear", 0.0)
    with pytest.raises(ValueError, match="unknown activation"):
        ocl.dense_forward(x, w, None, "swish", 0.0)
    with pytest.raises(TypeError, match="must have dtype float32, got float64"):
        ocl.dense_forward(ocl.asarray(x, np.float64), w, None, "linear", 0.0)
    with pytest.raises(TypeError, match="asarray"):
        ocl.dense_backward_input(np.array([["a"]]), w)
    with pytest.raises(ValueError, match=r"'dz' must have shape \(5, \?\)"):
        ocl.dense_backward_weight(x, up(np.ones((4, 3), np.float32)))
    with pytest.raises(ValueError, match="C-contiguous"):
        ocl.dense_backward_input(up(np.ones((5, 6), np.float32))[:, ::2], w)
    with pytest.raises(ValueError, match="at least 1 dimension"):
        ocl.bias_backward(up(np.float32(3.0)))
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


def test_array_ops(ocl):
    rng = np.random.default_rng(4)
    a_host, b_host = rand(rng, (3, 7)), rand(rng, (3, 7))
    a = ocl.asarray(a_host)
    assert ocl.asarray(a) is a
    c = ocl.copy(a)
    ocl.add_inplace(c, ocl.asarray(b_host))
    assert_close(ocl.to_numpy(c), a_host.astype(np.float64) + b_host, 1e-6, "add_inplace")
    ocl.scale_inplace(c, -0.5)
    assert_close(ocl.to_numpy(c), (a_host.astype(np.float64) + b_host) * -0.5, 1e-6,
                 "scale_inplace")
    assert np.array_equal(ocl.to_numpy(a), a_host), "copy shares memory with its source"
    assert ocl.to_numpy(ocl.reshape(a, (7, 3))).shape == (7, 3)
    assert np.array_equal(ocl.to_numpy(ocl.full((2, 3), 1.5)), np.full((2, 3), 1.5))
    assert np.array_equal(ocl.to_numpy(ocl.zeros((4,), np.int32)), np.zeros(4, np.int32))
    assert ocl.empty((2, 0)).shape == (2, 0)
    with pytest.raises(ValueError, match="shapes differ"):
        ocl.add_inplace(c, ocl.zeros((7, 3)))
    with pytest.raises(TypeError, match="asarray"):
        ocl.scale_inplace(a_host, 2.0)
