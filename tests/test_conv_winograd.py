"""Winograd F(2x2, 3x3) and F(4x4, 3x3) inside the CPU conv ops (native/conv.pyx,
native/_winograd.h): forward, backward_input, backward_weight and the fused conv2d_backward
forced onto each, against the float64 oracle in tests/reference/conv_ref.py, thread counts,
the selection rules, and a Conv2D layer's float32 gradients against float64 direct ones.

Error bound. Each output sums 9*C products; direct float32 summation errs by about
sqrt(9*C)*eps times the sum of |products| (eps = 6e-8). Winograd first transforms the patch
(sums of up to 4 inputs) and the kernel (G has entries 1/2, made in float64), multiplies in
16 positions and transforms back (sums of up to 9 products): every intermediate is a sum of
a bounded number of terms whose magnitudes are at most a few times the original ones, so the
error is a small constant times direct's. Measured on CASES: max |error| / max of
conv(|x|, |k|) stays below 1.2e-7 (direct: below 2.4e-7, its sums being 9x longer); the
tests assert 2e-5 of that scale (the bound issue 12's Winograd task states, ~170x the
measured error, so a broken transform, which errs by O(1), cannot pass), with the scale
computed by the oracle itself. F(4x4, 3x3) transforms 6x6 patches with entries up to 5/2 (input)
and 8 (output): measured below 6e-7 of the same scale, 4.5x F(2x2, 3x3)'s and still 30x
inside the bound.
"""

import numpy as np
import pytest

from pynn._native import conv, info
from pynn.backend.api import ACTIVATIONS, ACTIVATIONS_ON_ROWS
from tests.reference import conv_ref as ref
from tests.reference.activation_ref import activation_backward_ref, activation_forward_ref

REL = 2e-5

# (x shape (N, H, W, C), F, padding): H, W odd and even, 1x1 and 2x2 images with 'same',
# batch 1 and odd, C and F of 1 and not multiples of 8/16 lanes or the 8-row blocks.
CASES = [
    ((1, 1, 1, 5), 3, "same"),
    ((3, 2, 2, 7), 9, "same"),
    ((1, 3, 3, 1), 1, "valid"),
    ((3, 7, 5, 17), 19, "same"),
    ((1, 9, 8, 33), 17, "valid"),
    ((2, 10, 11, 16), 33, "same"),
    ((1, 5, 6, 3), 1, "valid"),
    ((5, 13, 13, 32), 64, "valid"),     # the small CNN's second layer, smaller batch
    ((2, 16, 16, 64), 64, "same"),      # a residual block's conv at 16x16
]
IDS = [f"{x}->{f}-{p}" for x, f, p in CASES]


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


@pytest.fixture
def algo():
    """Sets the conv algorithm for one test and restores it."""
    olds = []

    def set_algo(name):
        olds.append(conv._set_conv_algo(name))
    yield set_algo
    if olds:
        conv._set_conv_algo(olds[0])


@pytest.fixture(params=["winograd", "winograd4"])
def wino(request):
    """Each Winograd variant: F(2x2, 3x3) and F(4x4, 3x3)."""
    return request.param


@pytest.fixture
def restore_threads():
    n = info.get_max_threads()
    yield
    info.set_num_threads(n)


def data(rng, case):
    x_shape, f, padding = case
    x = rng.standard_normal(x_shape).astype(np.float32)
    k = rng.standard_normal((3, 3, x_shape[3], f)).astype(np.float32)
    b = rng.standard_normal(f).astype(np.float32)
    _, z = ref.conv2d_forward_ref(x, k, None, (1, 1), padding, (1, 1))
    dz = rng.standard_normal(z.shape).astype(np.float32)
    return x, k, b, dz


def assert_close(op, got, want, scale):
    """|got - want| <= REL * max(scale): scale is the conv of the absolute values, the sum of
    |products| that bounds any float32 summation's error."""
    assert got.shape == want.shape, f"{op}: shape {got.shape}, expected {want.shape}"
    assert got.dtype == np.float32, f"{op}: dtype {got.dtype}, expected float32"
    if want.size == 0:
        return
    err = np.max(np.abs(got.astype(np.float64) - want))
    bound = REL * max(float(np.max(scale)), 1e-30)
    assert err <= bound, f"{op}: max error {err:.3g} > {bound:.3g} ({REL} of the term scale)"


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_and_input_grad_match_reference(rng, case, bias, algo, wino):
    algo(wino)
    x, k, b, dz = data(rng, case)
    padding = case[2]
    b = b if bias else None
    y, z = conv.conv2d_forward(x, k, b, (1, 1), padding, (1, 1), "linear", 0.0)
    assert z is None
    want = ref.conv2d_forward_ref(x, k, b, (1, 1), padding, (1, 1))[0]
    scale = ref.conv2d_forward_ref(np.abs(x), np.abs(k), None if b is None else np.abs(b),
                                   (1, 1), padding, (1, 1))[0]
    assert_close("conv2d_forward", y, want, scale)
    dx = conv.conv2d_backward_input(dz, k, x.shape, (1, 1), padding, (1, 1))
    want = ref.conv2d_backward_input_ref(dz, k, x.shape, (1, 1), padding, (1, 1))
    scale = ref.conv2d_backward_input_ref(np.abs(dz), np.abs(k), x.shape, (1, 1), padding,
                                          (1, 1))
    assert_close("conv2d_backward_input", dx, want, scale)


@pytest.mark.parametrize("act", [a for a in ACTIVATIONS
                                 if a != "linear" and a not in ACTIVATIONS_ON_ROWS])
def test_every_fused_activation(rng, act, algo, wino):
    """The activation runs on each block of tiles in cache, over runs of pixels that span
    tile rows: odd H and W leave half-empty tiles at both edges."""
    algo(wino)
    case = ((3, 7, 9, 17), 21, "same")
    x, k, b, _ = data(rng, case)
    y, z = conv.conv2d_forward(x, k, b, (1, 1), "same", (1, 1), act, 0.3)
    z_ref = ref.conv2d_forward_ref(x, k, b, (1, 1), "same", (1, 1))[1]
    y_ref = activation_forward_ref(z_ref, act, 0.3)
    scale = ref.conv2d_forward_ref(np.abs(x), np.abs(k), np.abs(b), (1, 1), "same",
                                   (1, 1))[0]
    # An error e in z moves y by up to |act'(z)| e (softmax: 1 per row, summed over F): the
    # pre-activation bound times the largest slope.
    slope = np.abs(activation_backward_ref(np.ones_like(z_ref), z_ref, act, 0.3))
    slope = max(float(np.max(slope)), 1.0) * (k.shape[3] if act == "softmax" else 1)
    assert_close(f"conv2d_forward[{act}]", y, y_ref, scale * slope)
    if z is not None:
        assert_close(f"conv2d_forward[{act}] z", z, z_ref, scale)


@pytest.mark.parametrize("act", ["relu", "gelu", "linear", "softmax"])
@pytest.mark.parametrize("case", CASES[3:6], ids=IDS[3:6])
def test_fused_backward_matches_direct_and_reference(rng, case, act, algo, wino):
    """conv2d_backward (a layer's whole backward) with Winograd's input and kernel
    gradients; without the input gradient too (dz then is not written into a padded
    buffer)."""
    x, k, b, _ = data(rng, case)
    padding = case[2]
    y, z = conv.conv2d_forward(x, k, b, (1, 1), padding, (1, 1), act, 0.0)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    algo(wino)
    dx, dk, db = conv.conv2d_backward(dy, x, z, y, k, (1, 1), padding, (1, 1), act, 0.0)
    want = ref.conv2d_backward_ref(dy, x, k, b, (1, 1), padding, (1, 1), act, 0.0)
    algo("direct")
    direct = conv.conv2d_backward(dy, x, z, y, k, (1, 1), padding, (1, 1), act, 0.0)
    # db: where both algorithms take the same road for dz (one pass, or activation_bias_backward
    # in turn), the same bits. On AMD the direct road's one pass sums a linear layer's db in
    # double per slab while Winograd's separate ops run bias_backward (float32 column sums):
    # both within float32 summation error of the reference.
    if act == "linear" and not conv._CPU_INTEL:
        db_scale = 1.5 * np.abs(dy).reshape(-1, dy.shape[-1]).sum(axis=0)
        assert_close("conv2d_backward dbias", db, want[2], db_scale)
        assert_close("conv2d_backward dbias (direct)", direct[2], want[2], db_scale)
    else:
        np.testing.assert_array_equal(db, direct[2])
    # dk sums over pixels the products of x and dz, the float32 dz the op made (act' <= ~1.1).
    dk_scale = 1.5 * ref.conv2d_backward_weight_ref(np.abs(x), np.abs(dy), k.shape, (1, 1),
                                                    padding, (1, 1))
    assert_close("conv2d_backward dkernel", dk, want[1], dk_scale)
    assert_close("conv2d_backward dkernel (direct)", direct[1], want[1], dk_scale)
    algo(wino)   # without the input gradient dz stays unpadded
    _, dk_alone, db_alone = conv.conv2d_backward(dy, x, z, y, k, (1, 1), padding, (1, 1), act,
                                                 0.0, need_input_grad=False)
    np.testing.assert_array_equal(dk_alone, dk)
    np.testing.assert_array_equal(db_alone, db)
    # The input gradient is the conv of dz (the activation's backward of dy); bound by the
    # float32 dz the op made, of the same size as dy's (derivatives <= ~1.1).
    scale = 1.5 * ref.conv2d_backward_input_ref(np.abs(dy), np.abs(k), x.shape, (1, 1),
                                                padding, (1, 1))
    assert_close("conv2d_backward dx", dx, want[0], scale)


@pytest.mark.parametrize("which", ["winograd", "winograd4", "direct"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_weight_grad_matches_reference(rng, case, which, algo):
    """The kernel gradient: output-gradient tiles transformed (A dY A^T, zero past the
    edge), 16 GEMMs reducing over tiles, G^T (.) G back to 3x3."""
    algo(which)
    x, k, _, dz = data(rng, case)
    padding = case[2]
    dk = conv.conv2d_backward_weight(x, dz, k.shape, (1, 1), padding, (1, 1))
    want = ref.conv2d_backward_weight_ref(x, dz, k.shape, (1, 1), padding, (1, 1))
    scale = ref.conv2d_backward_weight_ref(np.abs(x), np.abs(dz), k.shape, (1, 1), padding,
                                           (1, 1))
    assert_close("conv2d_backward_weight", dk, want, scale)


def test_weight_grad_many_tiles(rng, algo, wino):
    """Enough tiles for several blocks per slab (blocks of T tiles accumulate into one
    partial; slab boundaries fall inside tile rows and images)."""
    algo(wino)
    case = ((7, 23, 21, 40), 36, "same")
    x, k, _, dz = data(rng, case)
    dk = conv.conv2d_backward_weight(x, dz, k.shape, (1, 1), "same", (1, 1))
    want = ref.conv2d_backward_weight_ref(x, dz, k.shape, (1, 1), "same", (1, 1))
    scale = ref.conv2d_backward_weight_ref(np.abs(x), np.abs(dz), k.shape, (1, 1), "same",
                                           (1, 1))
    assert_close("conv2d_backward_weight", dk, want, scale)


def test_thread_count_invariance(rng, algo, restore_threads, wino):
    """A tile's result does not depend on the block or the thread that made it, and the
    kernel gradient's slabs are fixed by the shape and added in slab order."""
    algo(wino)
    x, k, b, dz = data(rng, ((3, 11, 9, 17), 20, "same"))
    y0 = conv.conv2d_forward(x, k, b, (1, 1), "same", (1, 1), "relu", 0.0)[0]
    results = []
    for n in (1, 2, 3):
        info.set_num_threads(n)
        results.append((conv.conv2d_forward(x, k, b, (1, 1), "same", (1, 1), "gelu", 0.0),
                        conv.conv2d_backward_input(dz, k, x.shape, (1, 1), "same", (1, 1)),
                        conv.conv2d_backward_weight(x, dz, k.shape, (1, 1), "same", (1, 1)),
                        conv.conv2d_backward(dz, x, None, y0, k, (1, 1), "same", (1, 1),
                                             "relu", 0.0)))
    for (y, z), dx, dk, fused in results[1:]:
        np.testing.assert_array_equal(y, results[0][0][0])
        np.testing.assert_array_equal(z, results[0][0][1])
        np.testing.assert_array_equal(dx, results[0][1])
        np.testing.assert_array_equal(dk, results[0][2])
        for got, want in zip(fused, results[0][3]):
            np.testing.assert_array_equal(got, want)


def test_selection_rule_and_knob(algo):
    def g(x_shape, f, dtype=np.float32, strides=(1, 1), dilation=(1, 1), kernel=(3, 3),
          op=None):
        geom = conv._planned(conv.operands.conv2d_forward(
            conv.HOST, np.zeros(x_shape, dtype), np.zeros(kernel + (x_shape[3], f), dtype),
            None, strides, "same", dilation, "linear", 0.0)[-1])
        return conv._use_winograd(geom, dtype, op)

    algo(None)   # the default rules, whatever PYNN_CONV_ALGO says
    assert g((2, 32, 32, 32), 32) and g((8, 16, 16, 64), 64)
    # Few tiles: the training ops stay direct; the forward op (and the inference lane,
    # which runs its Winograd natively) takes Winograd from 16 tiles of 2x2 pixels.
    assert not g((1, 32, 32, 32), 32) and not g((1, 15, 15, 32), 64)
    assert g((1, 32, 32, 32), 32, op="forward") and g((1, 15, 15, 32), 64, op="forward")
    assert g((1, 8, 8, 64), 64, op="forward")               # 16 tiles
    assert not g((1, 4, 4, 128), 128, op="forward")         # 4 tiles: direct
    assert not g((1, 16, 16, 16), 16, op="forward")         # 16 channels: direct
    assert not g((2, 32, 32, 3), 32)                         # the RGB stem: direct
    assert not g((2, 32, 32, 16), 16) and not g((2, 32, 32, 64), 16)
    assert not g((2, 32, 32, 32), 32, np.float64)            # float64: direct
    assert not g((2, 32, 32, 32), 32, strides=(2, 2))
    assert not g((2, 32, 32, 32), 32, dilation=(2, 1))
    assert not g((2, 32, 32, 32), 32, kernel=(3, 5))
    algo("direct")
    assert not g((2, 32, 32, 32), 32)
    algo("winograd")
    assert g((2, 8, 8, 1), 1)
    algo("winograd4")
    assert g((2, 8, 8, 1), 1)
    with pytest.raises(ValueError, match="expected one of .*got 'fast'"):
        conv._set_conv_algo("fast")


def test_tile_rule_and_knob(algo):
    """F(4x4, 3x3) where its tiles are many and cover the map without waste, and for the
    kernel gradient only up to 64 x 128 channels (see _WINO4_MIN_TILES)."""
    def tile(x_shape, f, op="forward"):
        geom = conv._planned(conv.operands.conv2d_forward(
            conv.HOST, np.zeros(x_shape, np.float32),
            np.zeros((3, 3, x_shape[3], f), np.float32), None, (1, 1), "same", (1, 1),
            "linear", 0.0)[-1])
        return conv._wino_tile(geom, op)

    algo(None)
    assert tile((32, 32, 32, 32), 32) == 4 and tile((32, 32, 32, 32), 32, "backward_weight") == 4
    assert tile((4, 32, 32, 32), 32) == 4                     # 256 tiles of 16 pixels
    assert tile((4, 32, 32, 32), 32, "backward_weight") == 4
    assert tile((2, 32, 32, 32), 32) == 2                     # 128: too few
    assert tile((15, 16, 16, 32), 64) == 2                    # 240
    # a forward of 16 to 64 tiles (batch-1 or -2 predictions: the plans transform the
    # kernel once) takes F(4x4); fewer, or a map they cover with waste, F(2x2)
    assert tile((1, 16, 16, 32), 64) == 4 and tile((1, 32, 32, 32), 32) == 4
    assert tile((2, 16, 16, 32), 64) == 4 and tile((4, 16, 16, 32), 64) == 4
    assert tile((1, 16, 16, 32), 64, "backward_weight") == 2
    assert tile((1, 8, 8, 64), 64) == 2 and tile((1, 14, 14, 64), 64) == 2
    assert tile((32, 14, 14, 64), 64) == 2                    # 14x14 computes 16x16
    assert tile((32, 8, 8, 64), 64) == 2                      # 128 tiles
    assert tile((16, 28, 28, 128), 128) == 4
    assert tile((16, 28, 28, 128), 128, "backward_weight") == 2   # 36*C*F partials
    assert tile((32, 16, 16, 64), 128, "backward_weight") == 4
    algo("winograd")
    assert tile((32, 32, 32, 32), 32) == 2
    algo("winograd4")
    assert tile((1, 3, 3, 1), 1, "backward_weight") == 4


def test_conv2d_layer_kernel_grad_finite_differences(rng, algo, wino):
    """Central differences of a Conv2D layer's loss sum(y * w) in float64 (direct) against
    its float32 kernel gradient by Winograd: the analytic gradient is what the loss does."""
    from pynn import layers

    x = rng.standard_normal((2, 5, 6, 32))
    w_out = rng.standard_normal((2, 5, 6, 32))
    kernel = rng.standard_normal((3, 3, 32, 32)) * 0.2
    bias = rng.standard_normal(32) * 0.1

    def make(dtype):
        layer = layers.Conv2D(32, 3, padding="same", activation="tanh", dtype=dtype)
        layer.build(x.shape)
        layer.set_weights([kernel.astype(dtype), bias.astype(dtype)])
        return layer

    algo(wino)
    layer = make("float32")
    layer(x.astype(np.float32), training=True)
    layer.backward(w_out.astype(np.float32))
    dk = np.asarray(layer.weights[0].grad, dtype=np.float64)
    algo("direct")
    probe = make("float64")
    eps = 1e-5
    picks = [tuple(int(v) for v in rng.integers(0, [3, 3, 32, 32])) for _ in range(12)]
    for idx in picks:
        for sign, store in ((1, "plus"), (-1, "minus")):
            kk = kernel.copy()
            kk[idx] += sign * eps
            probe.set_weights([kk, bias])
            value = float(np.sum(np.asarray(probe(x, training=False)) * w_out))
            if store == "plus":
                plus = value
        numeric = (plus - value) / (2 * eps)
        assert abs(dk[idx] - numeric) <= 1e-3 * max(1.0, abs(numeric)), (
            f"dkernel{idx}: Winograd {dk[idx]:.6g}, finite differences {numeric:.6g}")


def test_conv2d_layer_float32_gradients_match_float64_direct(rng, algo, wino):
    """A Conv2D layer's backward with Winograd forced, in float32, against the same layer in
    float64 (which goes direct, and whose backward the conv tests check by finite
    differences): the float32 gradients carry only rounding."""
    from pynn import layers

    x64 = rng.standard_normal((3, 9, 7, 16))
    dy64 = None
    grads = {}
    for dtype, name in ((np.float64, "direct"), (np.float32, wino)):
        algo(name)
        layer = layers.Conv2D(18, 3, padding="same", activation="relu", dtype=dtype.__name__)
        layer.build(x64.shape)
        if dtype == np.float64:
            weights = [rng.standard_normal(w.shape) * 0.3 for w in layer.get_weights()]
        layer.set_weights([w.astype(dtype) for w in weights])
        y = layer(x64.astype(dtype), training=True)
        if dy64 is None:
            dy64 = rng.standard_normal(y.shape)
        dx = layer.backward(dy64.astype(dtype))
        grads[name] = (np.asarray(dx), [np.asarray(v.grad) for v in layer.weights])
    dx32, (dk32, db32) = grads[wino]
    dx64, (dk64, db64) = grads["direct"]
    assert dx32.dtype == np.float32 and dx64.dtype == np.float64
    for got, want, label in ((dx32, dx64, "dx"), (dk32, dk64, "dkernel"), (db32, db64, "db")):
        tol = 1e-4 * float(np.max(np.abs(want)))
        np.testing.assert_allclose(got, want, rtol=0, atol=tol, err_msg=label)
