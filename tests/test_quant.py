"""int8 ops (native/quant.pyx, opencl/quant.cl) bit-exact against the integer NumPy
reference (tests/reference/quant_ref.py), saturation at the int32 and uint8 limits, odd sizes,
bad inputs; QuantizedDense within the quantization error bound of the float Dense; quantize()
of a model."""

import os

import numpy as np
import pytest

import pynn
from pynn import layers
from pynn._native import quant as native_quant
from pynn.compression.quantization import (
    QuantizedConv2D,
    QuantizedDense,
    activation_params,
    quantize,
)
from tests.backend_util import check_op, make_backend, rand
from tests.reference import quant_ref as ref


@pytest.fixture
def rng():
    return np.random.default_rng(1821)


# (N, K, U): odd sizes, K across the 64- and 16-byte SIMD blocks and their tails.
SHAPES = [(1, 1, 1), (3, 7, 5), (2, 63, 9), (5, 64, 33), (7, 65, 17), (4, 200, 3),
          (1, 1000, 65), (0, 5, 3)]


def run_int8_dense(backend, xq, wq, bias, *rest):
    """The op on ``backend`` (int8 weights uploaded as int8, which backend.up would widen),
    downloaded; compared bit for bit with the integer reference, and on OpenCL with the
    CPU."""
    wq_dev = backend.ops.asarray(wq, np.int8) if backend.is_opencl else wq
    x_zp, mult, *tail = rest
    got = backend.down(backend.op("int8_dense_forward")(backend.up(xq), wq_dev,
                                                         backend.up(bias), x_zp,
                                                         backend.up(mult), *tail))
    want = ref.int8_dense_forward_ref(xq, wq, bias, *rest)
    assert got.dtype == (np.float32 if rest[2] is None else np.uint8)
    np.testing.assert_array_equal(got, want, err_msg=f"int8_dense_forward on {backend.name}")
    if backend.is_opencl:
        np.testing.assert_array_equal(got, native_quant.int8_dense_forward(xq, wq, bias, *rest))
    # The pack layers hand the op: the same layout as the reference's, the same outputs.
    packed = backend.op("int8_pack_weights")(wq_dev)
    np.testing.assert_array_equal(backend.down(packed), ref.int8_pack_weights_ref(wq))
    np.testing.assert_array_equal(
        backend.down(backend.op("int8_dense_forward")(backend.up(xq), packed, backend.up(bias),
                                                      x_zp, backend.up(mult), *tail)), want)
    return got


@pytest.mark.parametrize("n,k,u", SHAPES, ids=[f"{n}x{k}x{u}" for n, k, u in SHAPES])
@pytest.mark.parametrize("relu", [False, True])
def test_int8_dense_forward_is_bit_exact(backend, rng, n, k, u, relu):
    xq = rng.integers(0, 256, (n, k)).astype(np.uint8)
    wq = rng.integers(-128, 128, (u, k)).astype(np.int8)
    bias = rng.integers(-10**6, 10**6, u).astype(np.int32)
    mult = (rng.random(u) * 4e-4 + 1e-5).astype(np.float32)
    for b in (bias, None):
        run_int8_dense(backend, xq, wq, b, 17, mult, 100, relu)
    # y_zero_point None: the float32 output of dynamic quantization, bit-exact too
    run_int8_dense(backend, xq, wq, bias, 17, mult, None, relu)


def test_int8_saturates_at_int32_and_uint8(backend):
    """Extreme products and biases: the int32 accumulator and the uint8 output clamp, the
    same on both backends as in the reference."""
    k = 1000
    xq = np.full((3, k), 255, np.uint8)
    xq[1] = 0
    wq = np.stack([np.full(k, 127, np.int8), np.full(k, -128, np.int8),
                   np.full(k, 1, np.int8)])
    bias = np.array([2**31 - 1, -2**31, 0], np.int32)
    outputs = [run_int8_dense(backend, xq, wq, bias, 0, mult, 128, False)
               for mult in (np.float32([1e-9, 1e-9, 1e-9]), np.float32([1.0, 1.0, 1.0]))]
    assert outputs[1].min() == 0 and outputs[1].max() == 255
    # Saturated at +-2^31 (not wrapped): +-2.147 after the multiplier, rounded, around 128.
    np.testing.assert_array_equal(outputs[0], np.tile([130, 126, 128], (3, 1)))


IM2COL_CASES = [((2, 7, 5, 3), (3, 3), (1, 1), "same", (1, 1)),
                ((1, 9, 8, 5), (3, 2), (2, 3), "same", (1, 1)),
                ((3, 6, 7, 2), (2, 3), (1, 2), "valid", (1, 1)),
                ((1, 11, 10, 1), (3, 3), (1, 1), "same", (2, 2)),
                ((2, 5, 5, 4), (1, 1), (2, 2), "valid", (1, 1))]


@pytest.mark.parametrize("shape,kernel_size,strides,padding,dilation", IM2COL_CASES)
def test_int8_im2col_is_exact_and_makes_the_int8_conv(backend, rng, shape, kernel_size,
                                                      strides, padding, dilation):
    """Patches equal the reference's byte for byte (padding reads the zero point), and the
    int8 GEMM over them equals the integer convolution: (xq - zp) * wq summed over taps."""
    xq = rng.integers(0, 256, shape).astype(np.uint8)
    _, cols = check_op(backend, "int8_im2col", xq, kernel_size, strides, padding, dilation, 37,
                       ref=ref.int8_im2col_ref, rtol=0.0, dtype=np.uint8)
    f = 6
    wq = rng.integers(-127, 128, (f, cols.shape[1])).astype(np.int8)
    acc = (cols.astype(np.int64) - 37) @ wq.T.astype(np.int64)
    # the same integers as scipy's correlation of (x - zp) with the taps
    from scipy.signal import correlate
    if strides == (1, 1) and dilation == (1, 1) and padding == "valid":
        kernel = wq.reshape(f, *kernel_size, shape[3])
        want = correlate(xq[0].astype(np.int64) - 37, kernel[0].astype(np.int64), "valid")
        np.testing.assert_array_equal(acc[:want.size, 0], want.reshape(-1))
    mult = np.full(f, 1e-5, np.float32)
    run_int8_dense(backend, cols, wq, None, 37, mult, 128, False)


@pytest.mark.parametrize("shape", [(7,), (3, 33), (2, 5, 65)])
def test_quantize_and_dequantize_are_bit_exact(backend, rng, shape):
    x = rand(rng, shape) * 4
    x.flat[-1] = 1e6  # saturates at 255
    _, q = check_op(backend, "quantize_forward", x, 0.03, 120, ref=ref.quantize_forward_ref,
                    rtol=0.0, dtype=np.uint8)
    check_op(backend, "dequantize_forward", q, 0.03, 120, ref=ref.dequantize_forward_ref,
             rtol=0.0)
    assert q.max() == 255


@pytest.mark.parametrize("case,message", [
    ("narrow_w", (r"int8_dense_forward: 'wq' must be \(U, K\) = \(U, 5\) int8 weights by "
                 r"unit, got shape \(4, 3\)")),
    ("packed", (r"int8_dense_forward: packed 'wq' of 4 units and K = 5 must have shape "
                r"\(1, 2, 64\) \(int8_pack_weights\), got \(1, 1, 64\)")),
    ("zero_point", r"int8_dense_forward: 'x_zero_point' must be an int in \[0, 255\], got 256"),
    ("scale", r"quantize_forward: 'scale' must be a positive finite float, got 0.0"),
])
def test_int8_bad_input(backend, case, message):
    up8 = (lambda a: backend.ops.asarray(a, np.int8)) if backend.is_opencl else (lambda a: a)
    x = backend.up(np.ones((2, 5), np.uint8))
    mult = backend.up(np.ones(4, np.float32))
    with pytest.raises((ValueError, TypeError), match=message):
        if case == "narrow_w":
            backend.op("int8_dense_forward")(x, up8(np.ones((4, 3), np.int8)), None, 0, mult,
                                             0, False)
        elif case == "packed":
            backend.op("int8_dense_forward")(x, up8(np.ones((1, 1, 64), np.int8)), None, 0,
                                             mult, 0, False)
        elif case == "zero_point":
            backend.op("int8_dense_forward")(x, up8(np.ones((4, 5), np.int8)), None, 256,
                                             mult, 0, False)
        else:
            backend.op("quantize_forward")(backend.up(np.ones(3, np.float32)), 0.0, 0)


def test_kernel_isa_is_reported():
    assert native_quant.ISA in ("amx_int8", "avx512_vnni", "avx2", "scalar")
    assert native_quant.available_isas()[-1] == native_quant.ISA
    with pytest.raises(ValueError, match=r"force_isa: 'sse9' is not one of this CPU's int8 "):
        native_quant.force_isa("sse9")


# Tiles (4 rows x 32 units on VNNI, 2 x 16 on AVX2, 64-row tiles) and their remainders.
# rows cover the VNNI path's 8-, 4- and 1-row register tiles inside one 64-row tile (13, 77)
ISA_SHAPES = [(1, 1, 1), (5, 3, 17), (9, 67, 33), (65, 130, 47), (130, 29, 96), (3, 7, 2),
              (13, 45, 50), (77, 20, 64),
              # AMX (32 rows a pass, 16 at least): a short second pass of 8 and of 18 rows,
              # a first pass of 20; K in whole 64-byte steps and with a short last step
              (40, 67, 33), (20, 130, 47), (50, 64, 40), (16, 256, 16)]


@pytest.mark.parametrize("isa", native_quant.available_isas())
def test_int8_gemm_every_isa_path_is_bit_exact(rng, isa):
    """Each SIMD path this CPU can run, forced by the test hook, against the integer
    reference, including sums at the int32 limit and outputs clamped at 0 and 255."""
    try:
        native_quant.force_isa(isa)
        assert native_quant.kernel_isa() == isa
        for n, k, u in ISA_SHAPES:
            xq = rng.integers(0, 256, (n, k)).astype(np.uint8)
            wq = rng.integers(-128, 128, (u, k)).astype(np.int8)
            bias = rng.integers(-10**6, 10**6, u).astype(np.int32)
            mult = (rng.random(u) * 4e-4 + 1e-5).astype(np.float32)
            for relu, y_zp in ((False, 90), (True, 90), (True, None)):
                np.testing.assert_array_equal(
                    native_quant.int8_dense_forward(xq, wq, bias, 13, mult, y_zp, relu),
                    ref.int8_dense_forward_ref(xq, wq, bias, 13, mult, y_zp, relu),
                    err_msg=f"{isa} {n}x{k}x{u} relu={relu} y_zero_point={y_zp}")
        # The largest exact sums: K = MAX_K products of 255 * -128 = -2^31 exactly, and
        # 255 * 127 with a bias pushing past 2^31 - 1 (saturated, not wrapped).
        k = native_quant.MAX_K
        xq = np.full((2, k), 255, np.uint8)
        wq = np.stack([np.full(k, -128, np.int8), np.full(k, 127, np.int8)])
        bias = np.array([0, 2**31 - 1], np.int32)
        mult = np.float32([1e-7, 1e-7])
        got = native_quant.int8_dense_forward(xq, wq, bias, 0, mult, 128, False)
        np.testing.assert_array_equal(
            got, ref.int8_dense_forward_ref(xq, wq, bias, 0, mult, 128, False))
        # -2139095040e-7 -> 0; saturated 2^31 - 1 -> 255 (a wrapped sum would give 127)
        np.testing.assert_array_equal(got, [[0, 255], [0, 255]])
    finally:
        native_quant.force_isa(None)


@pytest.mark.parametrize("isa", native_quant.available_isas())
def test_int8_row_is_the_dense_ops_one_row(rng, isa):
    """quant.Int8Row (an inference plan's batch-1 static int8 Dense, operands bound once):
    float32 in (quantized by its scale and zero point) or uint8 codes in, float32 out
    (dequantized) or codes out, the quantize / int8_dense / dequantize ops' bits, at every
    int8 path, for K not a multiple of 4 and units not a multiple of 16; None for another
    shape, dtype or layout."""
    try:
        native_quant.force_isa(isa)
        for k, u in ((1, 1), (5, 17), (37, 29), (130, 47), (256, 64)):
            wq = rng.integers(-128, 128, (u, k)).astype(np.int8)
            packed = native_quant.int8_pack_weights(wq)
            bias = rng.integers(-10**5, 10**5, u).astype(np.int32)
            mult = (rng.random(u) * 4e-4 + 1e-5).astype(np.float32)
            correction, correction32 = native_quant._call_corrections(packed, bias, 13, u)
            x = rand(rng, (1, k)) * 3
            codes_in = native_quant.quantize_forward(x, 0.05, 13)
            for relu in (False, True):
                codes = native_quant.int8_dense_forward(codes_in, wq, bias, 13, mult, 90,
                                                        relu)
                lo = 90.0 if relu else 0.0
                for given, quantize_in in ((x, (np.float32(0.05), np.float32(13))),
                                           (codes_in, None)):
                    for out in (None, (np.float32(0.02), np.float32(90))):
                        row = native_quant.Int8Row(packed, correction, correction32, mult,
                                                   90.0, lo, relu, k, quantize_in, out)
                        got = row.run(given)
                        want = codes if out is None else native_quant.dequantize_forward(
                            codes, 0.02, 90)
                        assert got.dtype == want.dtype
                        np.testing.assert_array_equal(got, want, err_msg=f"{isa} {k}x{u}")
                        strided = np.repeat(given, 2, axis=1)[:, ::2]
                        for bad in (np.concatenate([given, given]), given[:, :-1],
                                    given.astype(np.float64), given.tolist(),
                                    strided if k > 1 else None):
                            assert row.run(bad) is None
    finally:
        native_quant.force_isa(None)


def test_quantized_dense_within_quantization_error(rng):
    dense = layers.Dense(13, activation="relu")
    x = rand(rng, (50, 29))
    y = np.asarray(dense(x))
    xp, yp = activation_params(x), activation_params(y)
    q = QuantizedDense.from_dense(dense, xp, yp)
    got = np.asarray(q(x))
    # Bound: half an output step, plus the input and weight rounding carried through the
    # kernel (|W| sum over inputs x half an input step, |x| sum x half a weight step).
    kernel = np.asarray(dense.kernel.value, np.float64)
    w_step = np.abs(kernel).max(axis=0) / 127
    bound = (yp[0] / 2 + np.abs(kernel).sum(axis=0) * xp[0] / 2
             + np.abs(x).sum(axis=1, keepdims=True) * w_step / 2 + yp[0])
    assert np.all(np.abs(got - y) <= bound)
    assert np.abs(got - y).max() < 0.05 * np.abs(y).max()


def test_quantize_a_model_keeps_its_predictions(rng):
    model = pynn.Sequential([layers.Input((12,)), layers.Dense(32, activation="relu"),
                             layers.Dropout(0.2), layers.Dense(5)])
    x = rand(rng, (200, 12))
    for method in ("minmax", "percentile"):
        q = quantize(model, x[:100], method)
        assert [type(layer).__name__ for layer in q.layers] == [
            "QuantizedDense", "Dropout", "QuantizedDense"]
        want, got = model.predict(x, verbose=0), q.predict(x, verbose=0)
        assert np.mean(np.argmax(got, 1) == np.argmax(want, 1)) > 0.9
        # Inside the calibrated range the error is the rounding's; outside it, clipping's.
        inside = np.abs(got[:100] - want[:100]).max()
        assert inside < 0.05 * np.abs(want[:100]).max()
    with pytest.raises(ValueError, match=r"method must be one of \('minmax', 'percentile'\)"):
        quantize(model, x, "mse")


def _cnn():
    return pynn.Sequential([layers.Input((9, 8, 3)),
                            layers.Conv2D(6, 3, padding="same", activation="relu"),
                            layers.Conv2D(5, (2, 3), strides=2, activation="relu"),
                            layers.Flatten(), layers.Dense(7, activation="relu"),
                            layers.Dense(4)])


def test_quantized_conv2d_within_quantization_error(rng):
    """Static and dynamic int8 Conv2D against the float layer: the error of rounding the
    input (half a step times the taps' |w| sum), the weights (half a step per channel times
    the patch's |x| sum) and, static, the output (half a step)."""
    conv = layers.Conv2D(7, 3, strides=(1, 2), padding="same", activation="relu")
    x = rand(rng, (3, 9, 11, 5))
    y = np.asarray(conv(x))
    kernel = np.asarray(conv.kernel.value, np.float64)
    taps = np.abs(kernel).reshape(-1, 7).sum(axis=0)
    w_step = np.abs(kernel).reshape(-1, 7).max(axis=0) / 127
    patch_abs = np.abs(x).sum() / 3  # a sample's whole |x|: bounds any patch's
    xp, yp = activation_params(x), activation_params(y)
    for params, out_step in (((xp, yp), yp[0]), ((None, None), 0.0)):
        q = QuantizedConv2D.from_conv(conv, *params)
        got = np.asarray(q(x))
        assert got.shape == y.shape
        bound = taps * xp[0] / 2 + patch_abs * w_step / 2 + out_step
        assert np.all(np.abs(got - y) <= bound)
        assert np.abs(got - y).max() < 0.05 * np.abs(y).max()


def test_model_quantize_int8_in_place_saves_small_and_loads_identically(rng, tmp_path):
    """Keras 3's model.quantize("int8") (dynamic): Dense and Conv2D swapped in place, the
    predictions close to the float model's; the loaded model predicts bit-identically; the
    config round-trips."""
    model = _cnn()
    x = rand(rng, (40, 9, 8, 3))
    want = model.predict(x, verbose=0)
    assert model.quantize("int8") is model
    assert [type(layer).__name__ for layer in model.layers] == [
        "QuantizedConv2D", "QuantizedConv2D", "Flatten", "QuantizedDense", "QuantizedDense"]
    got = model.predict(x, verbose=0)
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
    model.save(tmp_path / "int8.pynn")  # (a file this small is mostly zip headers)
    loaded = pynn.load_model(tmp_path / "int8.pynn")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), got)
    assert loaded.layers[0].kernel.value.dtype == np.int8
    for layer in model.layers:
        again = type(layer).from_config(layer.get_config())
        assert again.get_config() == layer.get_config()
    with pytest.raises(ValueError, match=r"quantize: mode must be 'int8', got 'int4'"):
        _cnn().quantize("int4")


def test_static_int8_model_file_is_under_a_third_of_the_float_file(rng, tmp_path):
    model = pynn.Sequential([layers.Input((64,)), layers.Dense(256, activation="relu"),
                             layers.Dense(128, activation="relu"), layers.Dense(10)])
    x = rand(rng, (64, 64))
    q = quantize(model, x, "percentile")
    model.save(tmp_path / "float.pynn")
    q.save(tmp_path / "int8.pynn")
    ratio = (tmp_path / "int8.pynn").stat().st_size / (tmp_path / "float.pynn").stat().st_size
    assert ratio <= 0.3
    loaded = pynn.load_model(tmp_path / "int8.pynn")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), q.predict(x, verbose=0))


@pytest.mark.opencl
def test_quantized_cnn_on_opencl_matches_the_cpu(rng, tmp_path):
    """Static and dynamic int8 models saved on the CPU give the same bits on OpenCL."""
    model = _cnn()
    x = rand(rng, (10, 9, 8, 3))
    static = quantize(model, x, "minmax")
    dynamic = _cnn()
    dynamic.set_weights(model.get_weights())
    dynamic.quantize("int8")
    want = [static.predict(x, verbose=0), dynamic.predict(x, verbose=0)]
    static.save(tmp_path / "static.pynn")
    dynamic.save(tmp_path / "dynamic.pynn")
    make_backend("opencl")  # selects the test device
    try:
        pynn.set_device(os.environ.get("PYNN_CL_DEVICE", "opencl"))
        got = [pynn.load_model(tmp_path / f"{k}.pynn").predict(x, verbose=0)
               for k in ("static", "dynamic")]
    finally:
        pynn.set_device("cpu")
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_fake_quant_rounds_like_the_int8_model_and_its_gradient_is_the_ste(rng):
    """FakeQuant's forward is quantize then dequantize on the tracked range; its gradient is
    dy inside the representable range and exactly 0 outside (the straight-through
    estimator), checked against the float64 reference of the rule."""
    from pynn.compression.qat import FakeQuant

    fq = FakeQuant(momentum=0.0)
    x = rand(rng, (6, 11)) * 2
    fq.build(x.shape)
    y = np.asarray(fq(x, training=True))  # momentum 0: the range is this batch's
    scale, zp = activation_params(x)
    np.testing.assert_array_equal(y, ref.dequantize_forward_ref(
        ref.quantize_forward_ref(x, scale, zp), scale, zp))
    assert np.abs(y - x).max() <= scale / 2 + 1e-6
    # A batch partly outside the tracked range: the gradient is cut there.
    fq.momentum = 0.999999
    x2 = x * 1.5
    fq(x2, training=True)
    dy = rand(rng, x2.shape)
    dx = np.asarray(fq.backward(dy))
    s2, zp2 = fq.quant_params()
    inside = (x2 >= (0 - zp2) * s2) & (x2 <= (255 - zp2) * s2)
    assert inside.any() and not inside.all()
    np.testing.assert_array_equal(dx, np.where(inside, dy, 0.0))


def test_quantize_aware_trains_and_converts_to_int8(rng, tmp_path):
    from pynn.compression.qat import FakeQuant, convert, quantize_aware

    x = rand(rng, (256, 12))
    w = rng.standard_normal((12, 3))
    y = np.argmax(x @ w, axis=1)
    model = pynn.Sequential([layers.Input((12,)), layers.Dense(24, activation="relu"),
                             layers.Dense(3)])
    qat = quantize_aware(model)
    assert [type(layer).__name__ for layer in qat.layers] == [
        "FakeQuant", "Dense", "FakeQuant", "Dense", "FakeQuant"]
    qat.compile("adam", pynn.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = qat.fit(x, y, epochs=8, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    int8 = convert(qat)
    assert [type(layer).__name__ for layer in int8.layers] == [
        "QuantizedDense", "QuantizedDense"]
    want, got = qat.predict(x, verbose=0), int8.predict(x, verbose=0)
    assert np.mean(np.argmax(got, 1) == np.argmax(want, 1)) > 0.95
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()
    qat.save(tmp_path / "qat.pynn")  # FakeQuant is a saveable layer, its range a weight
    again = pynn.load_model(tmp_path / "qat.pynn")
    assert isinstance(again.layers[0], FakeQuant)
    np.testing.assert_array_equal(again.predict(x, verbose=0), want)


# -- int8 depthwise convolution (issue 18, branch qbreadth) --
DEPTHWISE_CASES = [((2, 7, 5, 3), (3, 3, 3, 1), (1, 1), "same", (1, 1)),
                   ((1, 9, 8, 5), (3, 2, 5, 2), (2, 3), "same", (1, 1)),
                   ((3, 6, 7, 2), (2, 3, 2, 3), (1, 2), "valid", (1, 1)),
                   ((1, 11, 10, 17), (3, 3, 17, 1), (1, 1), "same", (2, 2)),
                   ((2, 5, 5, 4), (1, 1, 4, 1), (2, 2), "valid", (1, 1)),
                   ((0, 5, 5, 4), (3, 3, 4, 1), (1, 1), "same", (1, 1))]


@pytest.mark.parametrize("shape,kshape,strides,padding,dilation", DEPTHWISE_CASES)
@pytest.mark.parametrize("relu", [False, True])
def test_int8_depthwise_conv2d_forward_is_bit_exact(backend, rng, shape, kshape, strides,
                                                    padding, dilation, relu):
    """Against the integer reference, bit for bit, uint8 and float32 outputs, with and
    without bias; OpenCL against the CPU too (odd sizes, M > 1, strides, dilation)."""
    xq = rng.integers(0, 256, shape).astype(np.uint8)
    wq = rng.integers(-127, 128, kshape).astype(np.int8)
    cm = kshape[2] * kshape[3]
    bias = rng.integers(-10**5, 10**5, cm).astype(np.int32)
    mult = (rng.random(cm) * 4e-3 + 1e-4).astype(np.float32)
    wq_dev = backend.ops.asarray(wq, np.int8) if backend.is_opencl else wq
    op = backend.op("int8_depthwise_conv2d_forward")
    for b, y_zp in ((bias, 100), (None, 100), (bias, None)):
        args = (b, 41, mult, y_zp, relu, strides, padding, dilation)
        got = backend.down(op(backend.up(xq), wq_dev, None if b is None else backend.up(b),
                              41, backend.up(mult), y_zp, relu, strides, padding, dilation))
        want = ref.int8_depthwise_conv2d_forward_ref(xq, wq, *args)
        assert got.dtype == (np.float32 if y_zp is None else np.uint8)
        np.testing.assert_array_equal(got, want)
        if backend.is_opencl:
            np.testing.assert_array_equal(
                got, native_quant.int8_depthwise_conv2d_forward(xq, wq, *args))


def test_int8_depthwise_saturates_and_rejects_bad_input(backend):
    xq = np.full((1, 3, 3, 2), 255, np.uint8)
    wq = np.full((3, 3, 2, 1), 127, np.int8)
    up8 = (lambda a: backend.ops.asarray(a, np.int8)) if backend.is_opencl else (lambda a: a)
    op = backend.op("int8_depthwise_conv2d_forward")
    bias = backend.up(np.array([2**31 - 1, -2**31], np.int32))
    got = backend.down(op(backend.up(xq), up8(wq), bias, 0, backend.up(np.ones(2, np.float32)),
                          0, False, (1, 1), "valid", (1, 1)))
    # +2^31 - 1 + 9 * 255 * 127 saturates at int32's top; -2^31 + the same does not
    np.testing.assert_array_equal(got.reshape(-1), [255, 0])
    with pytest.raises(ValueError, match=r"int8_depthwise_conv2d_forward: 'wq' must be int8 "
                                         r"\(KH, KW, C, M\) with C = 2 \(the input's "
                                         r"channels\), got shape \(3, 3, 3, 1\)"):
        op(backend.up(xq), up8(np.ones((3, 3, 3, 1), np.int8)), None, 0,
           backend.up(np.ones(3, np.float32)), 0, False, (1, 1), "valid", (1, 1))
    with pytest.raises(ValueError, match=r"int8_depthwise_conv2d_forward: 'multiplier' must "
                                         r"have shape \(2,\)"):
        op(backend.up(xq), up8(wq), None, 0, backend.up(np.ones(3, np.float32)), 0, False,
           (1, 1), "valid", (1, 1))
# -- end int8 depthwise convolution --


# -- int8 chains (issue 18, branch q8): uint8 between int8 layers --------------------------
POOL_CASES = [((2, 7, 5, 3), (2, 2), None, "valid"), ((3, 7, 5, 33), (2, 2), None, "same"),
              ((1, 9, 8, 5), (3, 2), (2, 1), "same"), ((2, 6, 6, 1), (3, 3), (1, 1), "valid"),
              ((0, 4, 4, 2), (2, 2), None, "valid")]


@pytest.mark.parametrize("shape,pool_size,strides,padding", POOL_CASES)
def test_int8_max_pool2d_is_exact(backend, rng, shape, pool_size, strides, padding):
    xq = rng.integers(0, 256, shape).astype(np.uint8)
    if xq.size:
        xq.flat[0] = 255  # the top code survives; 'same' windows hang over the edge
    _, got = check_op(backend, "int8_max_pool2d", xq, pool_size, strides, padding,
                      ref=ref.int8_max_pool2d_ref, rtol=0.0, dtype=np.uint8)
    assert got.dtype == np.uint8
    # the float pool of the codes' values, requantized: the same codes (max is monotone)
    scale, zp = 0.05, 17
    pooled, _ = pynn.backend.cpu.maxpool2d_forward(
        ((xq.astype(np.float32) - zp) * np.float32(scale)), pool_size,
        pool_size if strides is None else strides, padding)
    np.testing.assert_array_equal(got, native_quant.quantize_forward(pooled, scale, zp))


@pytest.mark.parametrize("xq,pool_size,message", [
    (np.ones((2, 4, 4), np.uint8), (2, 2),
     r"int8_max_pool2d: 'xq' must be uint8 \(N, H, W, C\), got shape \(2, 4, 4\)"),
    (np.ones((1, 4, 4, 2), np.uint8), (2,),
     r"int8_max_pool2d: 'pool_size' must be two ints, got \(2,\)"),
])
def test_int8_max_pool2d_bad_input(backend, xq, pool_size, message):
    with pytest.raises(ValueError, match=message):
        backend.op("int8_max_pool2d")(backend.up(xq), pool_size, None, "valid")


def _chain_cnn():
    return pynn.Sequential([layers.Input((9, 7, 2)),
                            layers.Conv2D(6, 3, padding="same", activation="relu"),
                            layers.Conv2D(5, (2, 3), activation="relu"),
                            layers.MaxPooling2D(2, padding="same"),
                            layers.Conv2D(9, 3, padding="same"),
                            layers.MaxPooling2D((2, 1)), layers.Flatten(),
                            layers.Dense(7, activation="relu"), layers.Dropout(0.5),
                            layers.Dense(4)])


def _unchained(model):
    """``model`` (quantize's chained output) with every layer taking and giving floats: each
    boundary dequantized and requantized with the same scale and zero point, the pools on
    floats."""
    config = model.get_config()
    for entry in config["layers"]:
        if entry["class_name"] == "QuantizedMaxPooling2D":
            entry["class_name"] = "MaxPooling2D"
        entry["config"].pop("input_uint8", None)
        entry["config"].pop("output_uint8", None)
    plain = pynn.Sequential.from_config(config)
    plain.set_weights(model.get_weights())
    return plain


def test_chained_int8_model_is_bit_exact_with_the_unchained_one(rng, tmp_path):
    """quantize's uint8 chain (conv -> conv -> pool -> conv -> pool -> flatten -> dense ->
    dropout -> dense) gives the bits of the same layers dequantizing and requantizing
    between them, saves and loads bit-identically, and stays within the float model's
    quantization error."""
    model = _chain_cnn()
    x = rand(rng, (37, 9, 7, 2))
    chained = quantize(model, x)
    kinds = [(type(layer).__name__, getattr(layer, "input_uint8", None),
              getattr(layer, "output_uint8", None)) for layer in chained.layers]
    assert kinds == [("QuantizedConv2D", False, True), ("QuantizedConv2D", True, True),
                     ("QuantizedMaxPooling2D", None, None), ("QuantizedConv2D", True, True),
                     ("QuantizedMaxPooling2D", None, None), ("Flatten", None, None),
                     ("QuantizedDense", True, True), ("Dropout", None, None),
                     ("QuantizedDense", True, False)]
    got = chained.predict(x, verbose=0)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, _unchained(chained).predict(x, verbose=0))
    for batch in (1, 5):  # the inference plans of other batch sizes, the same rows
        np.testing.assert_array_equal(chained.predict_on_batch(x[:batch]), got[:batch])
    chained.save(tmp_path / "chained.pynn")
    np.testing.assert_array_equal(pynn.load_model(tmp_path / "chained.pynn")
                                  .predict(x, verbose=0), got)
    want = model.predict(x, verbose=0)
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()
    unchained = quantize(model, x, chain=False)
    assert not any(getattr(layer, "output_uint8", False) for layer in unchained.layers)
    np.testing.assert_allclose(unchained.predict(x, verbose=0), got,
                               atol=0.05 * np.abs(want).max())


def test_uint8_chain_stops_at_outputs_float_layers_and_dynamic_layers(rng):
    """A chain needs static int8 layers on both sides: an output, a float consumer (here
    an AveragePooling2D) or a dynamic model keeps float boundaries; the flags need static
    quantization."""
    model = pynn.Sequential([layers.Input((6, 6, 2)),
                             layers.Conv2D(4, 3, padding="same", activation="relu"),
                             layers.AveragePooling2D(2), layers.Flatten(), layers.Dense(3)])
    x = rand(rng, (8, 6, 6, 2))
    static = quantize(model, x)
    assert not any(getattr(layer, "output_uint8", False) or getattr(layer, "input_uint8", False)
                   for layer in static.layers)
    np.testing.assert_allclose(static.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=0.05 * np.abs(model.predict(x, verbose=0)).max())
    with pytest.raises(ValueError, match=r"QuantizedDense 'd': input_uint8 and output_uint8 "
                                         r"need static quantization"):
        QuantizedDense(3, output_uint8=True, name="d")


@pytest.mark.opencl
def test_chained_int8_model_on_opencl_matches_the_cpu(rng, tmp_path):
    model = _chain_cnn()
    x = rand(rng, (11, 9, 7, 2))
    chained = quantize(model, x)
    want = chained.predict(x, verbose=0)
    chained.save(tmp_path / "chained.pynn")
    make_backend("opencl")
    try:
        pynn.set_device(os.environ.get("PYNN_CL_DEVICE", "opencl"))
        got = pynn.load_model(tmp_path / "chained.pynn").predict(x, verbose=0)
    finally:
        pynn.set_device("cpu")
    np.testing.assert_array_equal(got, want)


CONV_CASES = [((2, 7, 5, 3), (3, 3), (1, 1), "same", (1, 1), 5),
              ((1, 9, 8, 5), (3, 2), (2, 3), "same", (1, 1), 17),
              ((3, 6, 7, 2), (2, 3), (1, 2), "valid", (1, 1), 33),
              ((1, 11, 10, 1), (3, 3), (1, 1), "same", (2, 2), 3),
              ((0, 5, 5, 4), (1, 1), (1, 1), "valid", (1, 1), 2),
              # past the one-thread limit: row tiles over the threads, tails of 64 rows
              ((4, 33, 31, 20), (3, 3), (1, 1), "same", (1, 1), 40)]


@pytest.mark.parametrize("shape,kernel_size,strides,padding,dilation,filters", CONV_CASES)
def test_int8_conv2d_forward_is_the_dense_op_over_the_patches(backend, rng, shape, kernel_size,
                                                               strides, padding, dilation,
                                                               filters):
    """Bit for bit the integer reference (int8_im2col then int8_dense_forward), by-filter and
    packed weights, uint8 and float outputs, with and without relu and bias."""
    xq = rng.integers(0, 256, shape).astype(np.uint8)
    k = kernel_size[0] * kernel_size[1] * shape[3]
    wq = rng.integers(-128, 128, (filters, k)).astype(np.int8)
    bias = rng.integers(-10**5, 10**5, filters).astype(np.int32)
    mult = (rng.random(filters) * 2e-4 + 1e-5).astype(np.float32)
    up8 = (lambda a: backend.ops.asarray(a, np.int8)) if backend.is_opencl else (lambda a: a)
    packed = backend.op("int8_pack_weights")(up8(wq))
    geometry = (kernel_size, strides, padding, dilation)
    for weights in (up8(wq), packed):
        for b, y_zp, relu in ((bias, 77, True), (None, 77, False), (bias, None, True)):
            got = backend.down(backend.op("int8_conv2d_forward")(
                backend.up(xq), weights, None if b is None else backend.up(b), 29,
                backend.up(mult), y_zp, relu, *geometry))
            want = ref.int8_conv2d_forward_ref(xq, wq, b, 29, mult, y_zp, relu, *geometry)
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(got, want, err_msg=f"{backend.name} relu={relu} "
                                          f"y_zero_point={y_zp} bias={b is not None}")


# (input shape, kernel size, strides, padding, dilation): C = 6 gathers tap by tap; C = 1,
# 2 and 3 with window rows of at most 16 bytes take the zero-point padded input and 16-byte
# moves (strides, dilated rows, 'valid' without padding, a window wider than the input).
CONV_GEOMETRIES = [((3, 13, 11, 6), (3, 3), (1, 1), "same", (1, 1)),
                   ((2, 8, 8, 1), (3, 3), (1, 1), "same", (1, 1)),
                   ((2, 11, 9, 3), (3, 5), (2, 2), "same", (2, 1)),
                   ((3, 7, 10, 2), (5, 3), (1, 2), "same", (1, 1)),
                   ((2, 9, 7, 3), (3, 3), (2, 1), "valid", (1, 1)),
                   ((1, 4, 3, 1), (3, 7), (1, 1), "same", (1, 1))]


@pytest.mark.parametrize("isa", native_quant.available_isas())
def test_int8_conv2d_forward_every_isa_path_is_bit_exact(rng, isa):
    try:
        native_quant.force_isa(isa)
        for shape, ksize, strides, padding, dilation in CONV_GEOMETRIES:
            xq = rng.integers(0, 256, shape).astype(np.uint8)
            k = ksize[0] * ksize[1] * shape[3]
            wq = rng.integers(-128, 128, (37, k)).astype(np.int8)
            mult = (rng.random(37) * 2e-4 + 1e-5).astype(np.float32)
            np.testing.assert_array_equal(
                native_quant.int8_conv2d_forward(xq, wq, None, 3, mult, 128, True, ksize,
                                                 strides, padding, dilation),
                ref.int8_conv2d_forward_ref(xq, wq, None, 3, mult, 128, True, ksize, strides,
                                            padding, dilation),
                err_msg=f"{isa} {shape} {ksize} {strides} {padding} {dilation}")
    finally:
        native_quant.force_isa(None)


def test_int8_conv2d_forward_bad_input(backend):
    up8 = (lambda a: backend.ops.asarray(a, np.int8)) if backend.is_opencl else (lambda a: a)
    x = backend.up(np.ones((1, 5, 5, 2), np.uint8))
    mult = backend.up(np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"int8_conv2d_forward: 'wq' must be \(F, KH \* KW \* "
                                         r"C\) = \(4, 18\) int8 weights by filter, got shape "
                                         r"\(4, 9\)"):
        backend.op("int8_conv2d_forward")(x, up8(np.ones((4, 9), np.int8)), None, 0, mult, 0,
                                          False, (3, 3), (1, 1), "same", (1, 1))
    with pytest.raises(ValueError, match=r"int8_conv2d_forward: 'xq' must be uint8 \(N, H, W, "
                                         r"C\), got shape \(5, 5, 2\)"):
        backend.op("int8_conv2d_forward")(backend.up(np.ones((5, 5, 2), np.uint8)),
                                          up8(np.ones((4, 18), np.int8)), None, 0, mult, 0,
                                          False, (3, 3), (1, 1), "same", (1, 1))


def test_int8_layers_state_their_arithmetic_for_the_inference_plan(rng):
    """pynn.inference gives a plan two threads only past SERIAL_MAX_MACS multiply-adds; the
    int8 layers run their own call, so they state theirs (else a plan of them ran on one)."""
    from pynn import inference

    model = _cnn()
    x = rand(rng, (64, 9, 8, 3))
    static = quantize(model, x)
    conv, conv2, dense = static.layers[0], static.layers[1], static.layers[3]
    assert conv.inference_macs(x) == 64 * 9 * 8 * (3 * 3 * 3) * 6
    assert conv2.inference_macs(np.zeros((64, 9, 8, 6))) == 64 * 4 * 3 * (2 * 3 * 6) * 5
    assert dense.inference_macs(np.zeros((64, 60))) == 64 * 60 * 7
    plan = inference.InferencePlan(static, [x])
    assert plan.macs == sum(layer.inference_macs(v) for layer, v in (
        (conv, x), (conv2, np.zeros((64, 9, 8, 6))), (dense, np.zeros((64, 60))),
        (static.layers[4], np.zeros((64, 7)))))


def test_converted_qat_model_chains_uint8_like_quantize(rng, tmp_path):
    """convert() of a quantize_aware CNN passes uint8 between its int8 layers as quantize()
    does: the same bits as its unchained twin, within quantization error of the QAT model."""
    from pynn.compression.qat import convert, quantize_aware

    pynn.utils.set_random_seed(5)
    model = _chain_cnn()
    x = rand(rng, (29, 9, 7, 2))
    qat = quantize_aware(model)
    qat.compile("adam", "mse")
    qat.fit(x, rand(rng, (29, 4)), epochs=2, batch_size=8, verbose=0)
    chained = convert(qat)
    kinds = [(type(layer).__name__, getattr(layer, "input_uint8", None),
              getattr(layer, "output_uint8", None)) for layer in chained.layers]
    assert ("QuantizedConv2D", True, True) in kinds and ("QuantizedDense", True, False) \
        in kinds and ("QuantizedMaxPooling2D", None, None) in kinds, kinds
    got = chained.predict(x, verbose=0)
    np.testing.assert_array_equal(got, _unchained(chained).predict(x, verbose=0))
    chained.save(tmp_path / "qat_int8.pynn")
    np.testing.assert_array_equal(pynn.load_model(tmp_path / "qat_int8.pynn")
                                  .predict(x, verbose=0), got)
    unchained = convert(qat, chain=False)
    assert not any(getattr(layer, "output_uint8", False) for layer in unchained.layers)
    want = qat.predict(x, verbose=0)
    scale = np.ptp(want)
    assert scale > 0.1  # a live network, so the bound below means something
    # The chain quantizes a pool's output on its producer's range, not the FakeQuant's
    # after the pool: a few steps of either range, well inside the QAT model's own error.
    assert np.abs(unchained.predict(x, verbose=0) - want).max() <= 0.1 * scale
    assert np.abs(got - want).max() <= 0.1 * scale
