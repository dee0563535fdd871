"""int8 breadth (issue 18): Conv1D, DepthwiseConv2D, SeparableConv2D and the recurrent input
projections quantized (static and dynamic) within the quantization error of the float
layers; the int8 depthwise layer bit-exact against an integer reference; static and
in-place quantization of functional models; ``quantize_dynamic``; float16 weight storage;
save/load round trips; ONNX QDQ export through onnxruntime; OpenCL equal to the CPU."""

import os

import numpy as np
import pytest

import pynn
from pynn import layers
from pynn.compression.quantization import (
    QuantizedConv1D,
    QuantizedDepthwiseConv2D,
    QuantizedGRU,
    QuantizedLSTM,
    QuantizedSeparableConv2D,
    QuantizedSimpleRNN,
    activation_params,
    float16_size,
    quantize,
    quantize_dynamic,
)
from tests.backend_util import make_backend, rand
from tests.reference import quant_ref as ref
from tests.reference.conv_ref import conv2d_forward_ref
from tests.reference.depthwise_ref import depthwise_conv2d_forward_ref


@pytest.fixture
def rng():
    return np.random.default_rng(1822)


def _input_and_weight_bound(kernel_by_unit, x_step, x_window_abs, w_step):
    """|y_int8 - y| before the output's rounding: half an input step times each unit's |w|
    sum, plus half a weight step times the |x| sum of any window (the int32 bias rounding,
    half an x_step * w_step, is far below both)."""
    return np.abs(kernel_by_unit).sum(axis=0) * x_step / 2 + x_window_abs * w_step / 2 \
        + x_step * w_step


@pytest.mark.parametrize("padding,strides,dilation", [("valid", 1, 1), ("same", 2, 1),
                                                      ("causal", 1, 2)])
def test_quantized_conv1d_within_quantization_error(rng, padding, strides, dilation):
    conv = layers.Conv1D(7, 3, strides=strides, padding=padding, dilation_rate=dilation,
                         activation="relu")
    x = rand(rng, (3, 17, 5))
    y = np.asarray(conv(x))
    kernel = np.asarray(conv.kernel.value, np.float64).reshape(-1, 7)
    w_step = np.abs(kernel).max(axis=0) / 127
    xp, yp = activation_params(x), activation_params(y)
    for params, out_step in (((xp, yp), yp[0]), ((None, None), 0.0)):
        q = QuantizedConv1D.from_conv(conv, *params)
        got = np.asarray(q(x))
        assert got.shape == y.shape == q.compute_output_shape(x.shape)
        bound = _input_and_weight_bound(kernel, xp[0], np.abs(x).sum() / 3, w_step) + out_step
        assert np.all(np.abs(got - y) <= bound)
        assert np.abs(got - y).max() < 0.05 * np.abs(y).max()
    # the float layer it replaces is the float64 reference's convolution (height 1)
    x4 = x[:, None]
    if padding == "causal":
        x4 = np.pad(x4, ((0, 0), (0, 0), (2 * dilation, 0), (0, 0)))
    want, _ = conv2d_forward_ref(x4, np.asarray(conv.kernel.value)[None], conv.bias.value,
                                 (1, strides), "valid" if padding == "causal" else padding,
                                 (1, dilation), "relu")
    np.testing.assert_allclose(y, want[:, 0], atol=1e-5)


@pytest.mark.parametrize("kernel_size,strides,padding,dilation,multiplier", [
    ((3, 3), (1, 1), "same", (1, 1), 2), ((2, 3), (2, 1), "valid", (1, 1), 1),
    ((3, 2), (1, 1), "same", (2, 1), 3)])
def test_quantized_depthwise_is_the_integer_reference(rng, kernel_size, strides, padding,
                                                      dilation, multiplier):
    """The layer gives exactly the integer depthwise convolution: acc =
    sum (xq - zp) wq + rint(b / (x_s w_s)) per output channel (exact in float64), times the
    float32 multiplier; static requantizes that to uint8 and back."""
    conv = layers.DepthwiseConv2D(kernel_size, strides, padding, multiplier,
                                  dilation_rate=dilation, activation="relu",
                                  bias_initializer="random_normal")
    x = rand(rng, (2, 7, 9, 5))
    y = np.asarray(conv(x))
    xp, yp = activation_params(x), activation_params(y)
    for params in ((xp, yp), (None, None)):
        q = QuantizedDepthwiseConv2D.from_depthwise(conv, *params)
        got = np.asarray(q(x))
        wq = np.asarray(q.kernel.value)
        w_scale = np.asarray(q.kernel_scale.value, np.float64)
        xq = ref.quantize_forward_ref(x, *xp)
        acc, _ = depthwise_conv2d_forward_ref(xq.astype(np.float64) - xp[1], wq, None,
                                              strides, padding, dilation)
        bias_q = np.rint(np.asarray(conv.bias.value, np.float64) / (xp[0] * w_scale))
        acc = np.rint(acc) + bias_q
        if params[0] is None:
            mult = (xp[0] * w_scale).astype(np.float32)
            want = np.maximum(acc.astype(np.float32) * mult, 0)
        else:
            mult = (xp[0] * w_scale / yp[0]).astype(np.float32)
            yq = np.clip(np.rint(acc.astype(np.float32) * mult) + yp[1], yp[1], 255)
            want = ref.dequantize_forward_ref(yq.astype(np.uint8), *yp)
        np.testing.assert_array_equal(got, want)
        kernel = np.asarray(conv.kernel.value, np.float64)
        assert np.abs(got - y).max() < 0.05 * np.abs(y).max()
        assert wq.dtype == np.int8 and wq.shape == kernel.shape


def test_quantized_separable_within_quantization_error(rng):
    conv = layers.SeparableConv2D(6, 3, padding="same", depth_multiplier=2, activation="relu")
    x = rand(rng, (3, 8, 7, 4))
    y = np.asarray(conv(x))
    model = pynn.Sequential([layers.Input((8, 7, 4)), conv])
    static = quantize(model, x)
    dynamic = quantize_dynamic(model)
    assert type(static.layers[0]) is QuantizedSeparableConv2D
    assert static.layers[0].quant["mid_scale"] is not None
    assert type(dynamic.layers[0]).__name__ == "SeparableConv2D"  # PyTorch's set: no convs
    dynamic.quantize("int8")
    for m in (static, dynamic):
        got = m.predict(x, verbose=0)
        assert got.shape == y.shape
        assert np.abs(got - y).max() < 0.05 * np.abs(y).max()
    with pytest.raises(ValueError, match=r"QuantizedSeparableConv2D 'sep': input_scale, "
                                         r"mid_scale and output_scale are all set"):
        QuantizedSeparableConv2D(3, (3, 3), input_scale=0.1, output_scale=0.1, name="sep")


@pytest.mark.parametrize("cls,twin", [(layers.LSTM, QuantizedLSTM), (layers.GRU, QuantizedGRU),
                                      (layers.SimpleRNN, QuantizedSimpleRNN)])
def test_dynamic_recurrent_within_the_projection_error(rng, cls, twin):
    """Only x @ kernel is int8: its error per step is at most the projection bound e (half
    an input step times each gate's |w| sum, plus half a weight step times the step's |x|
    sum); tanh and sigmoid are 1-Lipschitz, and over T steps the state error stays below
    T * e (it contracts in practice: the measured error is checked against both)."""
    t, c = 11, 6
    rnn = cls(9, return_sequences=True)
    inp = layers.Input((t, c))
    model = pynn.Model(inp, layers.Dense(3)(rnn(inp)))
    x = rand(rng, (7, t, c))
    want = model.predict(x, verbose=0)
    h_want = np.asarray(rnn(x))
    q = quantize_dynamic(model)
    assert type(q.layers[1]) is twin and type(q.layers[2]).__name__ == "QuantizedDense"
    qrnn = q.layers[1]
    h_got = np.asarray(qrnn(x))
    kernel = np.asarray(rnn.kernel.value, np.float64)
    x_step = activation_params(x.reshape(-1, c))[0]
    w_step = np.abs(kernel).max(axis=0) / 127
    e = (_input_and_weight_bound(kernel, x_step, np.abs(x).sum(axis=2).max(), w_step)).max()
    err = np.abs(h_got - h_want).max()
    assert err <= t * e
    assert err < 0.05  # outputs in [-1, 1]: a few input steps
    got = q.predict(x, verbose=0)
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
    # the original model is untouched (quantize_dynamic copies unless inplace)
    assert type(model.layers[1]) is cls
    np.testing.assert_array_equal(model.predict(x, verbose=0), want)


def test_dynamic_lstm_keeps_masks_states_and_direction(rng):
    """The general path: a mask, initial states, return_state and go_backwards, as the
    float layer (within the projection's rounding)."""
    lstm = layers.LSTM(8, return_state=True, go_backwards=True)
    x = rand(rng, (5, 7, 4))
    mask = np.ones((5, 7), bool)
    mask[1, 4:] = False
    h0, c0 = rand(rng, (5, 8)), rand(rng, (5, 8))
    want = lstm(x, mask=mask, initial_state=[h0, c0])
    q = QuantizedLSTM.from_float(lstm)
    got = q(x, mask=mask, initial_state=[h0, c0])
    assert len(got) == 3
    for g, w in zip(got, want):
        assert np.abs(np.asarray(g) - np.asarray(w)).max() < 0.02
    with pytest.raises(NotImplementedError, match=r"QuantizedLSTM '.*' is for inference"):
        q.backward(np.zeros((5, 8), np.float32))


def _two_branch(seq=False):
    """A functional model whose two branches meet in a Concatenate, with a layer shared by
    both (a Dense called twice)."""
    if seq:
        inp = layers.Input((13, 6))
        a = layers.Conv1D(8, 3, padding="causal", activation="relu")(inp)
        a = layers.LSTM(10)(a)
        b = layers.GRU(7)(layers.Conv1D(5, 2, activation="relu")(inp))
        b = layers.Dense(10, activation="relu")(b)
        h = layers.Concatenate()([a, b, layers.SimpleRNN(6)(inp)])
        return pynn.Model(inp, layers.Dense(3)(h))
    inp = layers.Input((9, 11, 5))
    a = layers.Conv2D(7, 3, padding="same", activation="relu")(inp)
    b = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, activation="relu")(inp)
    b = layers.SeparableConv2D(7, 3, padding="same", activation="relu")(b)
    shared = layers.Dense(6, activation="relu")
    h = layers.Concatenate()([shared(layers.GlobalAveragePooling2D()(a)),
                              shared(layers.GlobalMaxPooling2D()(b))])
    return pynn.Model(inp, layers.Dense(4)(h))


@pytest.mark.parametrize("seq", [False, True], ids=["cnn", "sequence"])
def test_functional_two_branch_model_quantizes_static_and_in_place(rng, tmp_path, seq):
    model = _two_branch(seq)
    x = rand(rng, (24,) + tuple(model.input_shape[1:]))
    want = model.predict(x, verbose=0)
    names = [layer.name for layer in model.layers]
    static = quantize(model, x)
    assert static is not model and [layer.name for layer in static.layers] == names
    assert all(type(layer).__name__.startswith("Quantized") for layer in static.layers
               if type(layer).__name__ in ("Conv1D", "Conv2D", "DepthwiseConv2D",
                                           "SeparableConv2D", "Dense", "LSTM", "GRU"))
    in_place = _two_branch(seq)
    in_place.set_weights(model.get_weights())
    graph = in_place.get_config()
    assert in_place.quantize("int8") is in_place
    assert [type(a).__name__ for a in in_place.layers] == \
        [type(a).__name__ for a in static.layers]
    for key in ("nodes", "inputs", "outputs"):  # the same graph, its nodes rewired
        assert in_place.get_config()[key] == graph[key]
    for m in (static, in_place):
        got = m.predict(x, verbose=0)
        assert np.abs(got - want).max() < 0.06 * np.abs(want).max()
        m.save(tmp_path / "q.pynn")
        loaded = pynn.load_model(tmp_path / "q.pynn")
        np.testing.assert_array_equal(loaded.predict(x, verbose=0), got)
        for layer in m.layers:
            again = type(layer).from_config(layer.get_config())
            assert again.get_config() == layer.get_config()
            if hasattr(layer, "kernel_scale") or hasattr(layer, "_depthwise"):
                assert any(w.dtype == np.int8 for w in layer.get_weights())


@pytest.mark.parametrize("inner", ["LSTM", "GRU"])
def test_int8_copies_of_a_masked_text_model_keep_its_masks(rng, inner):
    """Embedding(mask_zero=True) -> Dense over the steps -> recurrent -> Dense: the int8
    Dense passes the mask on as the Dense does, the calibration runs with the masks (a pool
    over padded steps once calibrated the head on other values than it meets), and a
    quantize-aware copy's FakeQuant layers pass it too."""
    from pynn.compression import quantize_aware

    ids = rng.integers(1, 20, (16, 6))
    ids[:, 3:] = 0
    ids[2, 1:] = 0
    model = pynn.Sequential([layers.Input((6,), dtype="int32"),
                             layers.Embedding(20, 8, mask_zero=True),
                             layers.Dense(8, activation="relu"), getattr(layers, inner)(5),
                             layers.Dense(3)])
    model.set_weights([rng.uniform(-0.5, 0.5, w.shape).astype(np.float32)
                       for w in model.get_weights()])
    want = model.predict(ids, verbose=0)
    aware = quantize_aware(model, momentum=0.0)
    aware.compile(pynn.optimizers.SGD(0.0), "mse")
    aware.train_on_batch(ids, want)  # the fake quantizers' ranges, from this batch alone
    for copy in (quantize(model, ids), quantize_dynamic(model), aware):
        np.testing.assert_allclose(copy.predict(ids, verbose=0), want, atol=0.01,
                                   err_msg=copy.name)
    pooled = pynn.Sequential([layers.Input((6,), dtype="int32"),
                              layers.Embedding(20, 8, mask_zero=True),
                              layers.GlobalAveragePooling1D(), layers.Dense(3)])
    pooled.set_weights([rng.uniform(-0.5, 0.5, w.shape).astype(np.float32)
                        for w in pooled.get_weights()])
    np.testing.assert_allclose(quantize(pooled, ids).predict(ids, verbose=0),
                               pooled.predict(ids, verbose=0), atol=0.01)


@pytest.mark.parametrize("device", ["cpu", pytest.param("opencl", marks=pytest.mark.opencl)])
@pytest.mark.parametrize("relu", [False, True])
def test_a_bias_too_large_for_the_int32_accumulators_stays_exact(rng, relu, device):
    """A unit of tiny weights over an input of tiny range: rint(b / (x_scale * w_scale))
    passed 2^31 and saturated (0.281 came out 0.036). Static copies raise that unit's weight
    scale to hold its bias; dynamic calls add it in float after the products."""
    previous = pynn.get_device()
    pynn.set_device(device)
    try:
        _check_large_bias(rng, relu)
    finally:
        pynn.set_device(previous)


def _check_large_bias(rng, relu):
    model = pynn.Sequential([layers.Input((3,)),
                             layers.Dense(4, activation="relu" if relu else None)])
    kernel = rng.uniform(-0.4, 0.4, (3, 4)).astype(np.float32)
    kernel[:, 2] = [1.3e-3, -2e-4, 5e-4]
    model.set_weights([kernel, np.float32([0.15, -0.3, 0.281, 0.05])])
    x = rng.uniform(0, 4.3e-4, (9, 3)).astype(np.float32)
    want = model.predict(x, verbose=0)
    for copy in (quantize(model, x), quantize_dynamic(model)):
        got = copy.predict(x, verbose=0)
        np.testing.assert_allclose(got, want, atol=2e-3, err_msg=copy.name)
    dense = pynn.Sequential([layers.Input((3,)), layers.Dense(4)])
    dense.set_weights([kernel, np.float32([0.15, -0.3, 0.281, 0.05])])
    fine = rng.uniform(-1, 1, (9, 3)).astype(np.float32)  # a range the accumulators hold
    np.testing.assert_allclose(quantize_dynamic(dense).predict(fine, verbose=0),
                               dense.predict(fine, verbose=0), atol=2e-2)


def test_quantize_errors_name_the_model_and_the_input_count(rng):
    model = _two_branch()
    with pytest.raises(ValueError, match=r"quantize: model '.*' has 1 inputs, calibration_x "
                                         r"gives 2"):
        quantize(model, [rand(rng, (2, 9, 11, 5))] * 2)
    with pytest.raises(ValueError, match=r"quantize_dynamic: model 'unbuilt' must be built"):
        quantize_dynamic(pynn.Sequential([layers.Dense(3)], name="unbuilt"))
    with pytest.raises(ValueError, match=r"quantize: expected a Sequential or functional "
                                         r"pynn Model, got Dense"):
        quantize(layers.Dense(3), rand(rng, (2, 3)))
    with pytest.raises(ValueError, match=r"QuantizedConv1D: padding must be 'valid', 'same' "
                                         r"or 'causal', got 'full'"):
        QuantizedConv1D(3, 2, padding="full")


def test_quantize_dynamic_in_place_converts_dense_and_recurrent_only(rng):
    model = pynn.Sequential([layers.Input((6, 4)), layers.Conv1D(5, 2), layers.GRU(8),
                             layers.Dense(3, activation="softmax"), layers.Dense(2)])
    x = rand(rng, (9, 6, 4))
    want = model.predict(x, verbose=0)
    assert quantize_dynamic(model, inplace=True) is model
    # softmax is no activation the int8 kernel fuses: that Dense stays float
    assert [type(layer).__name__ for layer in model.layers] == [
        "Conv1D", "QuantizedGRU", "Dense", "QuantizedDense"]
    assert np.abs(model.predict(x, verbose=0) - want).max() < 0.05 * np.abs(want).max()


def test_float16_weights_halve_the_file_and_load_as_float32(rng, tmp_path):
    model = pynn.Sequential([layers.Input((96,)), layers.Dense(384, activation="relu"),
                             layers.BatchNormalization(), layers.Dense(10)])
    big = model.layers[1].moving_variance
    big.value = np.full(big.shape, 1e6, np.float32)  # past float16's range: stays float32
    x = rand(rng, (16, 96))
    want = model.predict(x, verbose=0)
    model.save(tmp_path / "f32.pynn")
    size = float16_size(model, tmp_path / "f16.pynn")
    assert size == os.path.getsize(tmp_path / "f16.pynn")
    assert size <= 0.55 * os.path.getsize(tmp_path / "f32.pynn")
    loaded = pynn.load_model(tmp_path / "f16.pynn")
    assert all(w.dtype == np.float32 for w in loaded.get_weights())
    for w16, w in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_allclose(w16, w, rtol=2**-11, atol=2**-25)  # float16's rounding
    np.testing.assert_array_equal(loaded.layers[1].moving_variance.value, big.value)
    got = loaded.predict(x, verbose=0)
    assert np.abs(got - want).max() < 1e-2 * np.abs(want).max()
    # an int8 model's kernels stay int8; its float scales and biases take float16
    model.quantize("int8")
    model.save(tmp_path / "int8.pynn", weights_dtype="float16")
    np.testing.assert_array_equal(
        pynn.load_model(tmp_path / "int8.pynn").layers[0].kernel.value,
        model.layers[0].kernel.value)
    with pytest.raises(ValueError, match=r"save: weights_dtype must be one of \(None, "
                                         r"'float32', 'float16'\), got 'int4'"):
        model.save(tmp_path / "bad.pynn", weights_dtype="int4")
    with pytest.raises(ValueError, match=r"weights_dtype='float16' is a .pynn option"):
        model.save(tmp_path / "bad.keras", weights_dtype="float16")


def _fused_int8_exact():
    """Whether onnxruntime's fused int8 kernels sum exactly here: off x86, or with VNNI
    (AVX2's vpmaddubsw saturates the int16 sum of two u8 x s8 products)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def _onnx_run(model, x, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import pynn.onnx

    proto = pynn.onnx.export(model, tmp_path / "q.onnx")
    options = ort.SessionOptions()
    if not _fused_int8_exact():
        # onnxruntime's fused u8 x s8 kernels saturate without VNNI (README, compression):
        # the QDQ graph as written (float ops between exact (de)quantizations) instead
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(tmp_path / "q.onnx"), options,
                                providers=["CPUExecutionProvider"])
    return proto, sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("seq", [False, True], ids=["cnn", "sequence"])
def test_onnx_qdq_export_runs_in_onnxruntime_with_pynns_int8_results(rng, tmp_path, seq):
    model = _two_branch(seq)
    x = rand(rng, (12,) + tuple(model.input_shape[1:]))
    static = quantize(model, x)
    proto, got = _onnx_run(static, x, tmp_path)
    ops = {node.op_type for node in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert any(init.data_type == 3 for init in proto.graph.initializer)  # int8 weights
    # static: the same uint8 codes, up to one output step at a float rounding tie
    step = static.layers[-1].output_scale
    assert np.abs(got - static.predict(x, verbose=0)).max() <= step * 1.001
    dynamic = quantize_dynamic(model)
    dynamic.quantize("int8")
    proto, got = _onnx_run(dynamic, x, tmp_path)
    assert "DynamicQuantizeLinear" in {node.op_type for node in proto.graph.node}
    want = dynamic.predict(x, verbose=0)
    # Each side computes the per-call scale and zero point in its own float order, so an
    # activation at a rounding tie can land one code apart, moving outputs by one input step
    # times a weight: 1 random model in 40 measured 1.2e-3 of the largest output, the others
    # below 1e-4.
    assert np.abs(got - want).max() <= 5e-3 * np.abs(want).max()


@pytest.mark.opencl
def test_new_int8_layers_on_opencl_match_the_cpu(rng, tmp_path):
    """Static and dynamic models of every new int8 layer, saved on the CPU, give the same
    results on OpenCL: the int8 ops are bit-identical, but the float layers between them
    (pooling, the recurrences) round differently, so a static model's uint8 codes may move
    by one step at a tie and a dynamic model's floats by float32 rounding."""
    models = {"cnn": _two_branch(False), "seq": _two_branch(True)}
    want, steps = {}, {}
    for key, model in models.items():
        x = rand(rng, (6,) + tuple(model.input_shape[1:]))
        for kind, q in (("static", quantize(model, x)), ("dynamic", model)):
            if kind == "dynamic":
                q.quantize("int8")
            want[key, kind] = (x, q.predict(x, verbose=0))
            steps[key, kind] = (q.layers[-1].output_scale * 1.001 if kind == "static"
                                else 1e-5 * np.abs(want[key, kind][1]).max())
            q.save(tmp_path / f"{key}-{kind}.pynn")
    make_backend("opencl")
    try:
        pynn.set_device(os.environ.get("PYNN_CL_DEVICE", "opencl"))
        for (key, kind), (x, w) in want.items():
            got = pynn.load_model(tmp_path / f"{key}-{kind}.pynn").predict(x, verbose=0)
            np.testing.assert_allclose(got, w, atol=steps[key, kind], err_msg=f"{key} {kind}")
    finally:
        pynn.set_device("cpu")


def test_quantize_aware_covers_conv1d_and_depthwise(rng):
    from pynn.compression.qat import convert, quantize_aware

    model = pynn.Sequential([layers.Input((8, 7, 3)),
                             layers.DepthwiseConv2D(3, padding="same", activation="relu"),
                             layers.Reshape((56, 3)), layers.Conv1D(4, 3, activation="relu"),
                             layers.Flatten(), layers.Dense(2)])
    x = rand(rng, (32, 8, 7, 3))
    qat = quantize_aware(model)
    assert [type(a).__name__ for a in qat.layers].count("FakeQuant") == 6  # in and out
    qat.compile("adam", "mse")
    qat.fit(x, rand(rng, (32, 2)), epochs=1, batch_size=16, verbose=0)
    int8 = convert(qat)
    assert [type(a).__name__ for a in int8.layers] == [
        "QuantizedDepthwiseConv2D", "Reshape", "QuantizedConv1D", "Flatten", "QuantizedDense"]
    want, got = qat.predict(x, verbose=0), int8.predict(x, verbose=0)
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()
