"""pynn.onnx.export: each exportable layer in a tiny model with random weights and odd sizes,
exported, checked by onnx.checker and run by onnxruntime, equals pynn's predict
(max |ort - pynn| <= 1e-5 * max(1, max |pynn|)); the demo CNN, functional models with
several inputs and outputs, opsets, and the errors.

Skipped when onnx or onnxruntime is missing (the ``onnx`` extra; onnxruntime is a test
extra)."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import pynn
import pynn.onnx
from pynn import layers as L

TOL = 1e-5


def randomize(model, seed=0):
    """Random weights everywhere (biases and moving statistics too: zeros would hide a
    misplaced bias); variances positive."""
    rng = np.random.default_rng(seed)
    weights = []
    for v, w in zip(model.weights, model.get_weights()):
        r = rng.uniform(-0.6, 0.6, w.shape)
        if "variance" in v.path:
            r = np.abs(r) + 0.3
        weights.append(r.astype(w.dtype))
    model.set_weights(weights)
    return model


def run_onnx(proto, xs):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(proto.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feeds = {i.name: x for i, x in zip(session.get_inputs(), xs)}
    return session.run(None, feeds)


def check_export(model, xs, opset=None, seed=0):
    """Export with random weights, run with onnxruntime, compare to predict; -> proto."""
    xs = xs if isinstance(xs, list) else [xs]
    randomize(model, seed)
    proto = pynn.onnx.export(model, opset=opset)
    onnx.checker.check_model(proto, full_check=True)
    want = model.predict(xs if len(xs) > 1 else xs[0], verbose=0)
    want = want if isinstance(want, list) else [want]
    got = run_onnx(proto, xs)
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape, f"output {k}: onnx shape {a.shape}, pynn {b.shape}"
        # NaN where pynn gives NaN (a masked mean over padding alone is 0 / 0, as in Keras)
        assert np.array_equal(np.isnan(a), np.isnan(b)), f"output {k}: NaN elsewhere"
        a, b = a[~np.isnan(b)], b[~np.isnan(b)]
        err = float(np.max(np.abs(a.astype(np.float64) - b), initial=0.0))
        bound = TOL * max(1.0, float(np.max(np.abs(b), initial=0.0)))
        assert err <= bound, f"output {k}: max |onnx - pynn| = {err:.3g} > {bound:.3g}"
    return proto


def rand(shape, seed=1):
    return np.random.default_rng(seed).uniform(-2, 2, shape).astype(np.float32)


def seq(input_shape, *layers):
    return pynn.Sequential([L.Input(input_shape), *layers])


def op_types(proto):
    return [n.op_type for n in proto.graph.node]


ACTIVATIONS = ["linear", "relu", "sigmoid", "tanh", "softmax", "leaky_relu", "elu", "selu",
               "gelu", "softplus", "relu6", "hard_sigmoid", "silu", "swish", "hard_silu",
               "mish", "exponential", "softsign"]


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dense_activations(activation):
    check_export(seq((7,), L.Dense(5, activation=activation)), rand((3, 7)))


@pytest.mark.parametrize("activation", ["relu", "gelu", "softmax"])
def test_activation_layer_on_images_after_conv(activation):
    # The activation runs in the conv's NCHW layout; softmax must follow the channels.
    check_export(seq((5, 6, 3), L.Conv2D(4, 3), L.Activation(activation)), rand((2, 5, 6, 3)))


# -- Keras 3's remaining activations: the elementwise ones fused into Dense and Conv2D, the
# row ones (glu, log_softmax, sparsemax) as Activation layers on rows and on NCHW channels
KERAS3_ELEMENTWISE = ["celu", "hard_shrink", "hard_tanh", "log_sigmoid", "soft_shrink",
                      "sparse_plus", "sparse_sigmoid", "squareplus", "tanh_shrink"]


@pytest.mark.parametrize("activation", KERAS3_ELEMENTWISE)
def test_keras3_activations_fused(activation):
    check_export(seq((7,), L.Dense(5, activation=activation)), rand((3, 7)))
    check_export(seq((5, 6, 3), L.Conv2D(4, 3, activation=activation)), rand((2, 5, 6, 3)))


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("activation", ["glu", "log_softmax", "sparsemax"])
def test_keras3_row_activations(activation, opset):
    check_export(seq((7,), L.Dense(6), L.Activation(activation)), rand((3, 7)), opset=opset)
    model = seq((5, 6, 3), L.Conv2D(4, 3), L.Activation(activation))
    assert model.output_shape == (None, 3, 4, 2 if activation == "glu" else 4)
    check_export(model, rand((2, 5, 6, 3)), opset=opset)
    if activation != "glu":  # as a layer's activation= (glu is refused there)
        check_export(seq((5, 6, 3), L.Conv2D(4, 3, activation=activation), L.Flatten(),
                         L.Dense(5, activation=activation)), rand((2, 5, 6, 3)), opset=opset)


ACTIVATION_LAYERS = {
    "relu": lambda: L.ReLU(),
    "relu_capped": lambda: L.ReLU(max_value=1.2),
    "relu_general": lambda: L.ReLU(max_value=1.5, negative_slope=0.3, threshold=0.2),
    "relu_slope": lambda: L.ReLU(negative_slope=0.1),
    "leaky_relu": lambda: L.LeakyReLU(0.15),
    "elu": lambda: L.ELU(0.7),
    "prelu": lambda: L.PReLU(),
    "prelu_shared": lambda: L.PReLU(shared_axes=[1, 2]),
    "softmax_axis1": lambda: L.Softmax(axis=1),
}


@pytest.mark.parametrize("name", sorted(ACTIVATION_LAYERS))
def test_activation_layers(name):
    model = seq((5, 3, 4), L.Conv2D(4, 1), ACTIVATION_LAYERS[name]())
    check_export(model, rand((2, 5, 3, 4)))


CONVS = {
    "conv2d_valid": ((9, 7, 3), lambda: L.Conv2D(4, (3, 2), activation="tanh")),
    "conv2d_same_stride": ((9, 7, 3), lambda: L.Conv2D(5, 3, strides=2, padding="same")),
    "conv2d_same_dilated": ((9, 8, 3), lambda: L.Conv2D(3, 3, padding="same",
                                                        dilation_rate=2)),
    "conv2d_grouped": ((7, 7, 6), lambda: L.Conv2D(4, 3, groups=2, padding="same",
                                                   use_bias=False)),
    "conv2d_transpose_valid": ((5, 4, 3), lambda: L.Conv2DTranspose(4, 3, strides=2)),
    "conv2d_transpose_same": ((5, 4, 3), lambda: L.Conv2DTranspose(3, 3, strides=2,
                                                                   padding="same")),
    "conv2d_transpose_stride_over_kernel": ((4, 3, 2), lambda: L.Conv2DTranspose(
        3, 2, strides=3, activation="relu")),
    "conv2d_transpose_output_padding": ((4, 5, 2), lambda: L.Conv2DTranspose(
        3, 3, strides=2, padding="same", output_padding=1)),
    "conv2d_transpose_dilated": ((5, 4, 2), lambda: L.Conv2DTranspose(
        2, 3, padding="same", dilation_rate=2)),
    "depthwise": ((7, 9, 3), lambda: L.DepthwiseConv2D(3, strides=2, padding="same",
                                                       depth_multiplier=2)),
    "separable": ((7, 9, 3), lambda: L.SeparableConv2D(5, 3, padding="same",
                                                       depth_multiplier=2,
                                                       activation="relu")),
    "conv1d_valid": ((11, 3), lambda: L.Conv1D(4, 3, strides=2)),
    "conv1d_same": ((11, 3), lambda: L.Conv1D(4, 4, padding="same", activation="elu")),
    "conv1d_causal_dilated": ((11, 3), lambda: L.Conv1D(5, 3, padding="causal",
                                                        dilation_rate=2)),
    "conv1d_grouped": ((9, 4), lambda: L.Conv1D(6, 3, groups=2)),
}


@pytest.mark.parametrize("name", sorted(CONVS))
def test_convolutions(name):
    shape, make = CONVS[name]
    check_export(seq(shape, make()), rand((2,) + shape))


POOLS = {
    "max2d_valid": ((9, 7, 3), lambda: L.MaxPooling2D((2, 3))),
    "max2d_same": ((9, 7, 3), lambda: L.MaxPooling2D(3, strides=2, padding="same")),
    "avg2d_valid": ((9, 7, 3), lambda: L.AveragePooling2D(2, strides=1)),
    "avg2d_same": ((9, 7, 3), lambda: L.AveragePooling2D(3, strides=2, padding="same")),
    "global_avg2d": ((5, 7, 3), lambda: L.GlobalAveragePooling2D()),
    "global_max2d_keepdims": ((5, 7, 3), lambda: L.GlobalMaxPooling2D(keepdims=True)),
    "max1d_same": ((11, 3), lambda: L.MaxPooling1D(3, strides=2, padding="same")),
    "avg1d_same": ((11, 3), lambda: L.AveragePooling1D(2, padding="same")),
    "global_avg1d_keepdims": ((11, 3), lambda: L.GlobalAveragePooling1D(keepdims=True)),
    "global_max1d": ((11, 3), lambda: L.GlobalMaxPooling1D()),
}


@pytest.mark.parametrize("name", sorted(POOLS))
def test_pooling(name):
    shape, make = POOLS[name]
    check_export(seq(shape, make()), rand((2,) + shape))


@pytest.mark.parametrize("name", ["max2d_same", "avg2d_same", "global_avg2d"])
def test_pooling_after_conv(name):
    # The pool reads the conv's NCHW output: no Transpose between them (none after a global
    # pool, whose (N, C) output has one layout).
    shape, make = POOLS[name]
    proto = check_export(seq(shape, L.Conv2D(4, 3, padding="same"), make()),
                         rand((2,) + shape))
    assert op_types(proto).count("Transpose") == (1 if name.startswith("global") else 2)


NORMS = {
    "batch_norm_dense": ((7,), lambda: [L.Dense(5), L.BatchNormalization()]),
    "batch_norm_conv": ((6, 5, 3), lambda: [L.Conv2D(4, 3),
                                            L.BatchNormalization(epsilon=0.01)]),
    "batch_norm_axis1": ((4, 5), lambda: [L.BatchNormalization(axis=1, center=False)]),
    "layer_norm": ((4, 7), lambda: [L.LayerNormalization()]),
    "layer_norm_two_axes": ((4, 7), lambda: [L.LayerNormalization(axis=[-2, -1],
                                                                  scale=False)]),
    "layer_norm_rms": ((4, 7), lambda: [L.LayerNormalization(rms_scaling=True)]),
    "group_norm": ((3, 5, 6), lambda: [L.GroupNormalization(groups=3)]),
    "group_norm_after_conv": ((5, 5, 2), lambda: [L.Conv2D(6, 3),
                                                  L.GroupNormalization(groups=2)]),
    "rms_norm": ((4, 7), lambda: [L.RMSNormalization()]),
    "rms_norm_two_axes_after_conv": ((5, 5, 2), lambda: [
        L.Conv2D(3, 3), L.RMSNormalization(axis=[-2, -1], epsilon=1e-3)]),
    "unit_norm": ((4, 7), lambda: [L.UnitNormalization()]),
    "unit_norm_inner_axis": ((4, 7), lambda: [L.UnitNormalization(axis=1)]),
    # the spatial axes of the conv's NCHW output, normalized in that layout
    "unit_norm_after_conv": ((5, 5, 2), lambda: [L.Conv2D(6, 3),
                                                 L.UnitNormalization(axis=[1, 2])]),
}


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("name", sorted(NORMS))
def test_normalization(name, opset):
    shape, make = NORMS[name]
    check_export(seq(shape, *make()), rand((3,) + shape), opset=opset)


SHAPES = {
    "flatten_after_conv": ((5, 4, 3), lambda: [L.Conv2D(2, 3), L.Flatten(), L.Dense(3)]),
    "reshape": ((12,), lambda: [L.Reshape((3, -1)), L.Dense(2)]),
    "permute": ((3, 5, 2), lambda: [L.Permute((2, 3, 1)), L.Dense(3)]),
    "permute_after_conv": ((5, 4, 3), lambda: [L.Conv2D(2, 3, padding="same"),
                                               L.Permute((3, 1, 2)), L.Flatten()]),
    "repeat_vector": ((5,), lambda: [L.RepeatVector(3)]),
    "upsampling_nearest": ((3, 4, 2), lambda: [L.UpSampling2D((2, 3))]),
    "upsampling_bilinear": ((3, 4, 2), lambda: [L.UpSampling2D(2, interpolation="bilinear")]),
    "zero_padding": ((3, 4, 2), lambda: [L.ZeroPadding2D(((1, 2), (0, 3)))]),
    "cropping": ((7, 6, 2), lambda: [L.Conv2D(3, 1), L.Cropping2D(((1, 2), (0, 1)))]),
    "cropping_one_side": ((7, 6, 2), lambda: [L.Cropping2D(((0, 2), (1, 0)))]),
    "dropout_and_noise": ((5, 6, 3), lambda: [L.Dropout(0.4), L.SpatialDropout2D(0.3),
                                              L.GaussianNoise(0.5), L.GaussianDropout(0.2),
                                              L.Identity(), L.Flatten()]),
    "spatial_dropout_1d_3d": ((6, 4), lambda: [L.SpatialDropout1D(0.3), L.Reshape((2, 3, 2, 2)),
                                               L.SpatialDropout3D(0.2), L.Flatten()]),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shape_and_identity_layers(name):
    shape, make = SHAPES[name]
    check_export(seq(shape, *make()), rand((2,) + shape))


def test_embedding():
    model = seq((6,), L.Embedding(11, 4), L.Flatten(), L.Dense(3))
    model = pynn.Sequential([L.Input((6,), dtype="int32"), L.Embedding(11, 4), L.Flatten(),
                             L.Dense(3)])
    ids = np.random.default_rng(2).integers(0, 11, (3, 6)).astype(np.int32)
    check_export(model, ids)


@pytest.mark.parametrize("inner", ["LSTM", "GRU_seq", "Bidirectional"])
def test_time_distributed_recurrent_layers_read_each_steps_mask(inner):
    """Sentences of words, each word's letters a sequence: TimeDistributed runs its
    recurrent layer over every word with that word's own mask (padded letters, a word of
    padding alone)."""
    layer = {"LSTM": lambda: L.LSTM(2), "GRU_seq": lambda: L.GRU(3, return_sequences=True),
             "Bidirectional": lambda: L.Bidirectional(L.SimpleRNN(2))}[inner]
    model = pynn.Sequential([L.Input((6, 4), dtype="int32"), L.Embedding(11, 3, mask_zero=True),
                             L.TimeDistributed(layer()), L.Flatten(), L.Dense(2)])
    ids = np.random.default_rng(0).integers(1, 11, (3, 6, 4)).astype(np.int32)
    ids[0, :, 2:] = 0
    ids[1, 2, :] = 0
    ids[2, 0, 1] = 0
    check_export(model, ids)


def test_a_mask_reader_without_an_onnx_form_is_refused_and_one_ignoring_it_exports(
        monkeypatch):
    """A layer whose numbers the mask changes and that has no masked ONNX form is refused,
    naming it and the maker, rather than exported to a graph that answers padded inputs
    otherwise (every such built-in layer has one now: the reader is taken away here).
    Where nothing reads the mask (Flatten, then Dense), the graph gives pynn's numbers,
    padded ids included."""
    def model(*middle):
        return pynn.Sequential([L.Input((6,), dtype="int32"),
                                L.Embedding(11, 4, mask_zero=True, name="ids"), *middle,
                                L.Dense(3)])
    monkeypatch.delitem(pynn.onnx._MASK_READERS, "LSTM")
    with pytest.raises(ValueError, match=r"LSTM 'reader' cannot be exported: it reads the "
                                         r"mask that Embedding 'ids' makes"):
        pynn.onnx.export(model(L.Dense(5), L.LSTM(2, name="reader")))
    ids = np.random.default_rng(3).integers(0, 11, (3, 6)).astype(np.int32)
    ids[0, :3] = 0
    check_export(model(L.Flatten()), ids)


def padded_ids(shape=(5, 7), vocab=11, seed=3):
    """Token ids with padding (0) leading, trailing and inside, and a row of padding alone."""
    ids = np.random.default_rng(seed).integers(1, vocab, shape).astype(np.int32)
    ids[0, :3] = 0
    ids[1, -2:] = 0
    ids[2, 2] = 0
    ids[3, :] = 0
    return ids


def masked_steps(shape=(5, 6, 3), seed=4):
    """Sequences with steps of zeros (what Masking(0.0) masks) here and there."""
    x = rand(shape, seed)
    x[0, 1] = 0.0
    x[1, -1] = 0.0
    x[2, :2] = 0.0
    return x


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("ids_dtype", [np.int32, np.int64])
def test_masked_global_average_pooling_exports_keras_masked_mean(keepdims, ids_dtype):
    """The classic text classifier, Embedding(mask_zero=True) -> GlobalAveragePooling1D ->
    Dense, exports: the mean runs over the kept steps (a row of padding alone gives NaN, as
    in pynn and Keras), and BatchNormalization, Dropout and a Dense on the way (which pass
    the mask on and ignore it at inference) export with it."""
    model = pynn.Sequential([
        L.Input((7,), dtype="int64" if ids_dtype is np.int64 else "int32"),
        L.Embedding(11, 4, mask_zero=True), L.Dense(5, activation="tanh"),
        L.BatchNormalization(), L.Dropout(0.3), L.GlobalAveragePooling1D(keepdims=keepdims),
        L.Flatten(), L.Dense(3)])
    ids = padded_ids().astype(ids_dtype)
    proto = check_export(model, ids)
    assert "MatMul" in op_types(proto) and "Equal" in op_types(proto)
    want = model.predict(ids, verbose=0)
    assert np.isnan(want[3]).all() and np.isfinite(want[[0, 1, 2, 4]]).all()
    # the mask changes the numbers: the unmasked mean would differ on the padded rows
    plain = pynn.Sequential([L.Input((7,), dtype="int32"), L.Embedding(11, 4),
                             L.Dense(5, activation="tanh"), L.BatchNormalization(),
                             L.Dropout(0.3), L.GlobalAveragePooling1D(keepdims=keepdims),
                             L.Flatten(), L.Dense(3)])
    plain.set_weights(model.get_weights())
    assert np.abs(plain.predict(ids.astype(np.int32), verbose=0)[0] - want[0]).max() > 1e-3


def test_masking_through_time_distributed_dense_to_the_masked_mean():
    model = seq((6, 3), L.Masking(0.0), L.TimeDistributed(L.Dense(4, activation="relu")),
                L.GlobalAveragePooling1D(), L.Dense(2))
    check_export(model, masked_steps())


def _merged_mask_model(merge, second_masked):
    inp = L.Input((6, 3))
    a = L.Masking(0.0)(inp)
    b = L.Dense(3)(L.Masking(0.5)(inp) if second_masked else inp)
    merged = merge([a, b])
    return pynn.Model(inp, L.Dense(2)(L.GlobalAveragePooling1D()(merged)))


@pytest.mark.parametrize("second_masked", [True, False])
@pytest.mark.parametrize("merge", ["Add", "Multiply", "Average", "Maximum", "Concatenate",
                                   "Concatenate1"])
def test_merged_masks_follow_pynns_rules(merge, second_masked):
    """Two masks meeting in a merge: Add and its kind keep the steps either input keeps
    (no mask at all where one input has none), Concatenate spreads each input's mask (ones
    where it has none) over its values, joins them like the values and keeps a step that
    any joined feature keeps; the masked mean after them reads the result."""
    layer = {"Concatenate": lambda: L.Concatenate(),
             "Concatenate1": lambda: L.Concatenate(axis=1)}.get(merge) or getattr(L, merge)
    x = masked_steps()
    x[3, 4] = 0.5   # a step Masking(0.5) masks
    check_export(_merged_mask_model(layer(), second_masked), x)


@pytest.mark.parametrize("zero_output_for_mask", [False, True])
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "SimpleRNN"])
def test_masked_recurrent_layers_skip_the_masked_steps(kind, go_backwards, return_sequences,
                                                       zero_output_for_mask):
    """A recurrent layer after Embedding(mask_zero=True) carries its state over every
    masked step, wherever it lies (leading, trailing, inside, a row of padding alone), and
    repeats its last output there (or zeros, zero_output_for_mask): the export moves each
    row's kept steps to its front, runs ONNX's op over that many, and spreads the outputs
    back. The numbers are the masked ones (the unmasked layer's differ)."""
    layer = getattr(L, kind)(3, go_backwards=go_backwards, return_sequences=return_sequences,
                             zero_output_for_mask=zero_output_for_mask)
    model = pynn.Sequential([L.Input((7,), dtype="int32"), L.Embedding(11, 4, mask_zero=True),
                             layer])
    ids = padded_ids()
    proto = check_export(model, ids)
    assert "ScatterElements" in op_types(proto)
    plain = pynn.Sequential([L.Input((7,), dtype="int32"), L.Embedding(11, 4),
                             getattr(L, kind)(3, go_backwards=go_backwards,
                                              return_sequences=return_sequences)])
    plain.set_weights(model.get_weights())
    assert np.abs(plain.predict(ids, verbose=0) - model.predict(ids, verbose=0)).max() > 1e-3


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "ave", "mul", None])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_masked_bidirectional(merge_mode, return_sequences):
    """Bidirectional over a mask: the backward layer reads the kept steps from the end,
    and both give zeros at masked steps (Keras sets zero_output_for_mask on them)."""
    inp = L.Input((7,), dtype="int32")
    x = L.Embedding(11, 4, mask_zero=True)(inp)
    y = L.Bidirectional(L.GRU(3, return_sequences=return_sequences),
                        merge_mode=merge_mode)(x)
    check_export(pynn.Model(inp, y), padded_ids())


def test_masked_stacks_states_and_dynamic_lengths():
    """Stacked masked layers (the mask passes along return_sequences), an RNN of stacked
    cells, return_state under a mask, and sequences of unknown length after Masking."""
    stacked = pynn.Sequential([L.Input((7,), dtype="int32"), L.Embedding(11, 4, mask_zero=True),
                               L.GRU(3, return_sequences=True, reset_after=False),
                               L.LSTM(2, return_sequences=True), L.SimpleRNN(2)])
    check_export(stacked, padded_ids())
    cells = pynn.Sequential([L.Input((7,), dtype="int32"), L.Embedding(11, 4, mask_zero=True),
                             L.RNN([L.LSTMCell(3), L.GRUCell(2)], return_sequences=True)])
    check_export(cells, padded_ids())
    inp = L.Input((7,), dtype="int32")
    outs = L.LSTM(3, return_state=True)(L.Embedding(11, 4, mask_zero=True)(inp))
    check_export(pynn.Model(inp, outs), padded_ids())
    dynamic = seq((None, 3), L.Masking(0.0), L.LSTM(3, return_sequences=True),
                  L.GlobalAveragePooling1D(), L.Dense(2))
    check_export(dynamic, masked_steps())
    check_export(dynamic, masked_steps((3, 9, 3), seed=5))


def test_masked_int8_recurrent_layers():
    """The int8 recurrent layers (static and dynamic) take the mask as the float ones do."""
    from pynn.compression import quantize, quantize_dynamic

    model = randomize(pynn.Sequential([L.Input((7,), dtype="int32"),
                                       L.Embedding(11, 4, mask_zero=True), L.LSTM(5),
                                       L.Dense(3)]))
    ids = padded_ids()
    ids[3, 0] = 4   # (calibration: no row of padding alone)
    for int8 in (quantize_dynamic(model), quantize(model, ids)):
        assert "QuantizedLSTM" in [type(la).__name__ for la in int8.layers]
        got = run_onnx(pynn.onnx.export(int8), [ids])[0]
        want = int8.predict(ids, verbose=0)
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


RNNS = {
    "simple_rnn": lambda: L.SimpleRNN(5),
    "simple_rnn_seq_relu": lambda: L.SimpleRNN(5, activation="relu", return_sequences=True),
    "lstm": lambda: L.LSTM(5),
    "lstm_seq": lambda: L.LSTM(4, return_sequences=True),
    "lstm_backwards_hard_sigmoid": lambda: L.LSTM(3, recurrent_activation="hard_sigmoid",
                                                  go_backwards=True, return_sequences=True),
    "gru": lambda: L.GRU(5),
    "gru_seq_backwards": lambda: L.GRU(4, return_sequences=True, go_backwards=True),
    "gru_reset_before": lambda: L.GRU(5, reset_after=False),
    "gru_linear_no_bias": lambda: L.GRU(3, activation="linear", use_bias=False),
}


@pytest.mark.parametrize("name", sorted(RNNS))
def test_recurrent(name):
    check_export(seq((7, 3), RNNS[name]()), rand((2, 7, 3)))


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
@pytest.mark.parametrize("inner", ["lstm_seq", "gru", "lstm_backwards_hard_sigmoid",
                                   "simple_rnn_seq_relu"])
def test_bidirectional(inner, merge_mode):
    """Both directions, the backward one's sequence put back in input order, merged (or
    two outputs) as pynn predicts; then a Dense on the merged sequence or state."""
    inp = pynn.Input((6, 3))
    y = L.Bidirectional(RNNS[inner](), merge_mode=merge_mode)(inp)
    outs = [L.Dense(2)(t) for t in (y if merge_mode is None else [y])]
    check_export(pynn.Model(inp, outs if merge_mode is None else outs[0]), rand((3, 6, 3)))


@pytest.mark.parametrize("inner", ["LSTM", "GRU", "SimpleRNN"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_return_state_exports_the_final_states(inner, return_sequences):
    """return_state: the output, then the final states (h, and c for an LSTM) as Keras
    lists them; Bidirectional's the forward layer's, then the backward one's."""
    inp = pynn.Input((5, 2))
    outs = getattr(L, inner)(3, return_state=True, return_sequences=return_sequences)(inp)
    check_export(pynn.Model(inp, outs), rand((4, 5, 2)))
    both = L.Bidirectional(getattr(L, inner)(3, return_state=True,
                                             return_sequences=return_sequences))(inp)
    check_export(pynn.Model(inp, both), rand((4, 5, 2)))


def test_stacked_recurrent_stays_time_major():
    model = seq((7, 3), L.LSTM(4, return_sequences=True), L.GRU(3, return_sequences=True),
                L.SimpleRNN(2))
    proto = check_export(model, rand((2, 7, 3)))
    # One Transpose into time-major order; the sequences pass between the cells as they are.
    assert op_types(proto).count("Transpose") == 1


@pytest.mark.parametrize("inner", ["dense", "conv2d"])
def test_time_distributed(inner):
    if inner == "dense":
        model = seq((5, 4), L.TimeDistributed(L.Dense(3, activation="relu")))
        x = rand((2, 5, 4))
    else:
        model = seq((3, 5, 4, 2), L.TimeDistributed(L.Conv2D(3, 3, padding="same")))
        x = rand((2, 3, 5, 4, 2))
    check_export(model, x)


def merge_model(layer, shapes):
    inputs = [pynn.Input(s) for s in shapes]
    return pynn.Model(inputs, layer(inputs)), [rand((3,) + s, seed=k) for k, s in
                                               enumerate(shapes)]


MERGES = {
    "add3": (lambda: L.Add(), [(4, 5), (4, 5), (4, 5)]),
    "add_broadcast": (lambda: L.Add(), [(4, 5), (1, 5)]),
    "subtract": (lambda: L.Subtract(), [(6,), (6,)]),
    "multiply3": (lambda: L.Multiply(), [(6,), (6,), (6,)]),
    "average": (lambda: L.Average(), [(6,), (6,)]),
    "maximum": (lambda: L.Maximum(), [(6,), (6,)]),
    "minimum": (lambda: L.Minimum(), [(2, 6), (2, 6)]),
    "concatenate": (lambda: L.Concatenate(), [(4, 5), (4, 3)]),
    "concatenate_axis1": (lambda: L.Concatenate(axis=1), [(4, 5), (2, 5)]),
    "dot": (lambda: L.Dot(axes=1), [(6,), (6,)]),
    "dot_normalize": (lambda: L.Dot(axes=-1, normalize=True), [(6,), (6,)]),
    "dot_3d": (lambda: L.Dot(axes=(2, 2)), [(3, 5), (4, 5)]),
    "dot_3d_mixed": (lambda: L.Dot(axes=(1, 2)), [(4, 3), (2, 4)]),
}


@pytest.mark.parametrize("name", sorted(MERGES))
def test_merge(name):
    make, shapes = MERGES[name]
    model, xs = merge_model(make(), shapes)
    check_export(model, xs)


def test_merge_of_conv_branches_stays_nchw():
    x = pynn.Input((7, 6, 3))
    a = L.Conv2D(4, 3, padding="same")(x)
    b = L.Conv2D(4, 1)(x)
    y = L.Concatenate()([L.Add()([a, b]), L.Maximum()([a, b])])
    y = L.MaxPooling2D()(L.Conv2D(2, 3)(y))
    proto = check_export(pynn.Model(x, y), rand((2, 7, 6, 3)))
    assert op_types(proto).count("Transpose") == 2


def test_demo_cnn():
    from pynn.demo import build_model

    model = build_model()
    proto = check_export(model, rand((4,) + tuple(model.input_shape[1:])))
    # In at the first Conv2D, out before Flatten: the conv/pool run is NCHW throughout.
    assert op_types(proto).count("Transpose") == 2


def test_functional_several_inputs_and_outputs(tmp_path):
    image = pynn.Input((9, 8, 3), name="image")
    meta = pynn.Input((5,), name="meta")
    a = L.Conv2D(4, 3, strides=2, padding="same", activation="relu")(image)
    a = L.BatchNormalization()(a)
    a = L.GlobalAveragePooling2D()(a)
    b = L.Dense(4, activation="tanh")(meta)
    joined = L.Concatenate()([a, b])
    shared = L.Dense(3, name="shared")  # called twice: two nodes, one set of weights
    out1 = L.Softmax(name="probabilities")(shared(joined))
    out2 = L.Add(name="score")([shared(L.Dense(8)(meta)), L.Dense(3)(a)])
    model = pynn.Model([image, meta], [out1, out2])
    xs = [rand((3, 9, 8, 3)), rand((3, 5), seed=2)]
    proto = check_export(model, xs)
    assert [i.name for i in proto.graph.input] == ["image", "meta"]
    assert [o.name for o in proto.graph.output] == ["probabilities", "score"]
    assert sorted(i.name for i in proto.graph.initializer
                  if i.name.startswith("shared")) == ["shared_bias", "shared_kernel"]
    # Written to a file: the same graph, any batch size.
    path = tmp_path / "model.onnx"
    pynn.onnx.export(model, path)
    loaded = onnx.load(str(path))
    onnx.checker.check_model(loaded, full_check=True)
    xs7 = [rand((7, 9, 8, 3), seed=3), rand((7, 5), seed=4)]
    for got, want in zip(run_onnx(loaded, xs7), model.predict(xs7, verbose=0)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_nested_model_is_inlined():
    inner = pynn.Sequential([L.Input((6,)), L.Dense(4, activation="relu"), L.Dense(3)])
    x = pynn.Input((6,))
    model = pynn.Model(x, L.Dense(2)(inner(x)))
    check_export(model, rand((3, 6)))


@pytest.mark.parametrize("opset", [13, 15, 17, 18, 20])
def test_opsets(opset):
    model = seq((6, 5, 3), L.Conv2D(4, 3, padding="same", activation="gelu"),
                L.GlobalMaxPooling2D(), L.RepeatVector(3), L.LayerNormalization(),
                L.GRU(4), L.Dense(2, activation="softmax"))
    proto = check_export(model, rand((2, 6, 5, 3)), opset=opset)
    assert proto.opset_import[0].version == opset


def test_batch_axis_dynamic_by_default_or_fixed():
    model = randomize(seq((4,), L.Dense(3)))
    dynamic = pynn.onnx.export(model)
    dim = dynamic.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param == "batch"
    fixed = pynn.onnx.export(model, batch_size=5)
    assert fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 5
    x = rand((5, 4))
    np.testing.assert_allclose(run_onnx(fixed, [x])[0], model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-5)


def test_unbuilt_model_with_input_signature():
    model = pynn.Sequential([L.Dense(4, activation="relu"), L.Dense(2)])
    with pytest.raises(ValueError, match="not built.*input_signature"):
        pynn.onnx.export(model)
    proto = pynn.onnx.export(model, input_signature=[(None, 5)])
    assert proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value == 5
    with pytest.raises(ValueError, match=r"input_signature \[\(None, 6\)\] does not match"):
        pynn.onnx.export(model, input_signature=[(None, 6)])


class Doubler(pynn.layers.Layer):
    def call(self, x, training=False):
        return x * 2


def test_unexportable_layer_is_named():
    model = seq((4,), L.Dense(3), Doubler(name="doubler"))
    with pytest.raises(ValueError, match="Doubler 'doubler' cannot be exported"):
        pynn.onnx.export(model)


@pytest.mark.parametrize("activation", ["selu", "relu6"])
def test_recurrent_activation_without_onnx_form_is_named(activation):
    model = seq((4, 3), L.SimpleRNN(2, activation=activation, name="cell"))
    with pytest.raises(ValueError, match=f"SimpleRNN 'cell'.*activation '{activation}'"):
        pynn.onnx.export(model)


@pytest.mark.parametrize("opset", [12, 0, "17", 10_000, True])
def test_bad_opset(opset):
    model = seq((4,), L.Dense(3))
    with pytest.raises(ValueError, match="opset must be an int in"):
        pynn.onnx.export(model, opset=opset)


@pytest.mark.parametrize("batch_size", [0, -1, 2.0, True])
def test_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match="batch_size must be a positive int or None"):
        pynn.onnx.export(seq((4,), L.Dense(3)), batch_size=batch_size)


def test_missing_onnx_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now fails
    with pytest.raises(ImportError, match=r"pip install pynn\[onnx\]"):
        pynn.onnx.export(seq((4,), L.Dense(3)))


def test_import_pynn_does_not_import_onnx():
    import subprocess
    import sys

    code = "import sys, pynn; pynn.onnx; print('onnx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=str(__import__("pathlib").Path(pynn.__file__).parents[1]))
    assert out.stdout.strip() == "False"


def test_unknown_time_steps_stay_dynamic():
    model = seq((None, 3), L.Conv1D(4, 3, padding="causal"), L.LSTM(5, return_sequences=True),
                L.GlobalAveragePooling1D(), L.Dense(2))
    randomize(model)
    proto = pynn.onnx.export(model)
    for steps in (4, 9):
        x = rand((2, steps, 3), seed=steps)
        np.testing.assert_allclose(run_onnx(proto, [x])[0], model.predict(x, verbose=0),
                                   rtol=1e-5, atol=1e-5)


def test_float64_model_exports_float32_graph():
    pynn.set_floatx("float64")
    try:
        model = seq((6,), L.Dense(4, activation="tanh"), L.Dense(3))
    finally:
        pynn.set_floatx("float32")
    randomize(model)
    proto = pynn.onnx.export(model)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    x = rand((3, 6))
    np.testing.assert_allclose(run_onnx(proto, [x])[0], model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-5)


def keras_parity_models(keras):
    """(keras model, pynn model) pairs of the same architecture, Keras's weight layouts."""
    kl = keras.layers
    yield (keras.Sequential([keras.Input((9, 8, 3)), kl.Conv2D(4, 3, padding="same",
                                                               activation="relu"),
                             kl.BatchNormalization(), kl.MaxPooling2D(),
                             kl.DepthwiseConv2D(3, padding="same", depth_multiplier=2),
                             kl.GlobalAveragePooling2D(), kl.Dense(3, activation="softmax")]),
           seq((9, 8, 3), L.Conv2D(4, 3, padding="same", activation="relu"),
               L.BatchNormalization(), L.MaxPooling2D(),
               L.DepthwiseConv2D(3, padding="same", depth_multiplier=2),
               L.GlobalAveragePooling2D(), L.Dense(3, activation="softmax")),
           (2, 9, 8, 3))
    yield (keras.Sequential([keras.Input((7, 3)), kl.LSTM(5, return_sequences=True),
                             kl.GRU(4, return_sequences=True), kl.GRU(3, reset_after=False),
                             kl.Dense(2)]),
           seq((7, 3), L.LSTM(5, return_sequences=True), L.GRU(4, return_sequences=True),
               L.GRU(3, reset_after=False), L.Dense(2)),
           (2, 7, 3))


def test_keras_weights_exported_give_keras_outputs():
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(3)
    for keras_model, model, shape in keras_parity_models(keras):
        weights = [rng.uniform(-0.5, 0.5, w.shape).astype(np.float32)
                   for w in keras_model.get_weights()]
        # BatchNormalization's moving variance (the 4th of its weights) must be positive.
        weights = [np.abs(w) + 0.3 if "moving_variance" in v.path else w
                   for v, w in zip(keras_model.weights, weights)]
        keras_model.set_weights(weights)
        model.set_weights(weights)
        x = rand(shape, seed=4)
        want = np.asarray(keras_model.predict(x, verbose=0), dtype=np.float64)
        got = run_onnx(pynn.onnx.export(model), [x])[0]
        err = float(np.max(np.abs(got - want))) / max(1.0, float(np.max(np.abs(want))))
        assert err <= TOL, f"{model.layers}: max |onnx - keras| = {err:.3g}"


@pytest.mark.opencl
def test_export_of_a_model_on_opencl():
    previous = pynn.get_device()
    pynn.set_device("opencl")
    try:
        model = seq((9, 8, 3), L.Conv2D(4, 3, padding="same", activation="relu"),
                    L.MaxPooling2D(), L.Flatten(), L.Dense(3))
        randomize(model)
        x = rand((2, 9, 8, 3))
        want = model.predict(x, verbose=0)
        got = run_onnx(pynn.onnx.export(model), [x])[0]
    finally:
        pynn.set_device(previous)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_bench_inference_runs(tmp_path, capsys, num_threads):
    """bench/bench_inference.py at toy repeat counts: it checks onnxruntime against pynn
    before timing, so this is also an export test of its two models. (Its main sets pynn's
    thread count for its timings: the fixture puts the count back, which a later test's
    plan reads.)"""
    import json

    from bench import bench_inference

    path = tmp_path / "rows.json"
    assert bench_inference.main(["--repeat", "2", "--warmup", "1", "--batch", "1,3",
                                 "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["latency"]
    assert {(r["model"], r["batch"], r["runtime"]) for r in rows} >= {
        (m, b, rt) for m in bench_inference.MODELS for b in (1, 3)
        for rt in ("pynn", "pynn-general", "onnxruntime")}
    assert all(r["p50_us"] > 0 for r in rows)
    assert "pynn / onnxruntime p50" in capsys.readouterr().out


SHAPE_1D = {
    "zero_padding1d": lambda: L.ZeroPadding1D((2, 1)),
    "cropping1d": lambda: L.Cropping1D((1, 2)),
    "cropping1d_start": lambda: L.Cropping1D((2, 0)),
    "upsampling1d": lambda: L.UpSampling1D(3),
    "conv1d_transpose": lambda: L.Conv1DTranspose(4, 3, strides=2, activation="relu"),
    "conv1d_transpose_same_padded": lambda: L.Conv1DTranspose(5, 3, strides=2, padding="same",
                                                              output_padding=1),
    "conv1d_transpose_dilated": lambda: L.Conv1DTranspose(3, 2, dilation_rate=2,
                                                          use_bias=False),
    "separable_conv1d": lambda: L.SeparableConv1D(4, 3, depth_multiplier=2,
                                                  activation="tanh"),
    "separable_conv1d_same_strided": lambda: L.SeparableConv1D(5, 3, strides=2,
                                                               padding="same"),
}


@pytest.mark.parametrize("name", sorted(SHAPE_1D))
def test_sequence_layers(name):
    """The 1-D padding, cropping, upsampling and convolution variants, then a Dense on the
    result (its layout back in pynn's order)."""
    check_export(seq((9, 3), SHAPE_1D[name](), L.Dense(2)), rand((2, 9, 3)))


PREPROCESSING = {
    "rescaling": lambda: L.Rescaling(1 / 127.5, offset=-1.0),
    "rescaling_per_channel": lambda: L.Rescaling([0.5, 2.0, -1.0], offset=[0.1, 0.0, 0.3]),
    "normalization": lambda: L.Normalization(mean=[0.2, -0.5, 1.0], variance=[2.0, 0.5, 0.0]),
    "normalization_inverted": lambda: L.Normalization(mean=0.5, variance=4.0, invert=True),
    "augmentation_identities": lambda: [L.RandomFlip(), L.RandomRotation(0.2),
                                        L.RandomZoom(0.1), L.RandomTranslation(0.1, 0.1),
                                        L.RandomContrast(0.3), L.RandomBrightness(0.2)],
    "center_crop": lambda: L.CenterCrop(6, 5),
    "center_crop_smaller_resizes": lambda: L.CenterCrop(12, 9),
    "random_crop": lambda: L.RandomCrop(5, 7),
    "random_crop_same_aspect": lambda: L.RandomCrop(5, 4),
    "resizing_bilinear_down": lambda: L.Resizing(5, 4),
    "resizing_bilinear_up": lambda: L.Resizing(13, 17),
    "resizing_nearest": lambda: L.Resizing(11, 5, interpolation="nearest"),
    "resizing_crop_to_aspect": lambda: L.Resizing(4, 8, crop_to_aspect_ratio=True),
    # -- bbox: Resizing's pad_to_aspect_ratio (Pad then Resize) --
    "resizing_pad_to_aspect": lambda: L.Resizing(4, 13, pad_to_aspect_ratio=True,
                                                 fill_value=3.0),
    "resizing_pad_to_aspect_tall": lambda: L.Resizing(9, 3, pad_to_aspect_ratio=True,
                                                      interpolation="nearest"),
    # -- auggeo: Keras 3's geometric, erasing, mixing and blur augmentations (identities) --
    "augmentation_identities_keras3": lambda: [
        L.RandomShear(0.2, 0.2), L.RandomPerspective(), L.RandomElasticTransform(),
        L.RandomErasing(), L.CutMix(), L.MixUp(), L.RandomGaussianBlur()],
}


@pytest.mark.parametrize("name", sorted(PREPROCESSING))
def test_preprocessing_layers(name):
    """Preprocessing inside a model exports as its inference: the affine maps, the
    augmentation layers as the identity, crops and resizes as Slice and Resize; then a
    conv reads the result."""
    made = PREPROCESSING[name]()
    layers = made if isinstance(made, list) else [made]
    x = np.random.default_rng(5).uniform(0, 255, (2, 10, 8, 3)).astype(np.float32)
    if name.startswith("normalization"):
        x = rand((2, 10, 8, 3))
    check_export(seq((10, 8, 3), *layers, L.Conv2D(2, 3)), x)


def test_normalization_adapted_over_two_trailing_axes():
    norm = L.Normalization(axis=(-2, -1))
    model = seq((5, 4), norm, L.Flatten(), L.Dense(3))
    norm.adapt(np.random.default_rng(6).normal(2.0, 3.0, (50, 5, 4)))
    proto = pynn.onnx.export(model)
    x = rand((3, 5, 4))
    got = run_onnx(proto, [x])[0]
    np.testing.assert_allclose(got, model.predict(x, verbose=0), atol=1e-5)


@pytest.mark.parametrize("cells", [["lstm"], ["gru", "simple_rnn"]])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_rnn_of_cells(cells, return_sequences):
    """RNN over Keras's cells (one, or stacked) is those recurrent layers in sequence."""
    make = {"lstm": lambda: L.LSTMCell(4), "gru": lambda: L.GRUCell(3),
            "simple_rnn": lambda: L.SimpleRNNCell(5)}
    cell = make[cells[0]]() if len(cells) == 1 else [make[c]() for c in cells]
    check_export(seq((6, 3), L.RNN(cell, return_sequences=return_sequences), L.Dense(2)),
                 rand((2, 6, 3)))


def test_masking_values_export_where_nothing_reads_the_mask():
    """Masking's values (the all-mask_value steps zeroed, others kept, mask_value 0.5) feed
    a Dense, which reads no mask."""
    x = rand((3, 6, 4))
    x[0, 2] = 0.5
    x[1, :3] = 0.5
    x[2, 4, :2] = 0.5  # partly equal: kept
    check_export(seq((6, 4), L.Masking(0.5), L.Dense(3)), x)


def test_a_pruned_model_exports_its_pruned_weights():
    from pynn.compression import prune_low_magnitude

    model = prune_low_magnitude(seq((7,), L.Dense(6, activation="relu"), L.Dense(3)))
    randomize(model)
    for layer in model.layers:
        layer.prune_to(0.6)
    proto = pynn.onnx.export(model)
    x = rand((4, 7))
    np.testing.assert_allclose(run_onnx(proto, [x])[0], model.predict(x, verbose=0),
                               atol=1e-5)
    kernels = [i for i in proto.graph.initializer if i.name.endswith("_kernel")]
    assert kernels and all((onnx.numpy_helper.to_array(k) == 0).mean() >= 0.5
                           for k in kernels)


def test_resizing_exports_at_the_oldest_opset():
    from pynn.onnx import MIN_OPSET

    x = np.random.default_rng(7).uniform(0, 1, (2, 10, 8, 3)).astype(np.float32)
    check_export(seq((10, 8, 3), L.Resizing(7, 13), L.UpSampling2D(2)), x, opset=MIN_OPSET)
    check_export(seq((5, 3), L.UpSampling1D(2), L.Dense(2)), rand((2, 5, 3)), opset=MIN_OPSET)


def test_fake_quant_exports_its_codes_round_trip():
    """A quantization-aware model's FakeQuant at inference: the tracked range's uint8 codes
    and back, as pynn predicts (values on the grid's half steps included)."""
    from pynn.layers.quantized import FakeQuant

    model = seq((5,), L.Dense(4), FakeQuant(), L.Dense(3))
    randomize(model)
    fq = model.layers[1]
    fq.set_weights([np.array([-1.5, 2.5, 3.0], np.float32)])
    scale, zero_point = fq.quant_params()
    x = rand((6, 5))
    proto = pynn.onnx.export(model)
    np.testing.assert_allclose(run_onnx(proto, [x])[0], model.predict(x, verbose=0),
                               atol=1e-5)
    half_steps = ((np.arange(-3, 300) + 0.5 - zero_point) * scale).astype(np.float32)
    probe = seq((half_steps.size,), FakeQuant())
    probe.layers[0].set_weights([np.array([-1.5, 2.5, 3.0], np.float32)])
    got = run_onnx(pynn.onnx.export(probe), [half_steps[None]])[0]
    np.testing.assert_array_equal(got, probe.predict(half_steps[None], verbose=0))


# -- MultiHeadAttention ----------------------------------------------------------------------
OPSET_BOUNDS = [pynn.onnx.MIN_OPSET, onnx.defs.onnx_opset_version()]


def _attention_model(layer, query=(5, 6), value=None, key=None, attention_mask=None,
                     **call):
    """A functional model of one MultiHeadAttention: self-attention when ``value`` is None,
    else cross-attention over inputs of those shapes; -> (model, inputs)."""
    q = pynn.Input(query, name="query")
    inputs, xs = [q], [rand((3,) + query, seed=1)]
    args = {}
    if value is None:
        v = q
    else:
        v = pynn.Input(value, name="value")
        inputs.append(v)
        xs.append(rand((3,) + value, seed=2))
    if key is not None:
        args["key"] = pynn.Input(key, name="key")
        inputs.append(args["key"])
        xs.append(rand((3,) + key, seed=3))
    if attention_mask is not None:
        dtype, steps = attention_mask
        args["attention_mask"] = pynn.Input(steps, dtype=dtype, name="attention_mask")
        inputs.append(args["attention_mask"])
        attend = np.random.default_rng(5).random((3,) + steps) < 0.6
        attend[0, 1] = False                # a query step attending to nothing
        xs.append(attend.astype(dtype))
    y = layer(q, v, **args, **call)
    return pynn.Model(inputs, y), xs


ATTENTION = {
    "self": lambda: _attention_model(L.MultiHeadAttention(2, 3)),
    "cross": lambda: _attention_model(L.MultiHeadAttention(3, 2, value_dim=4), (4, 6),
                                      (7, 5)),
    "key": lambda: _attention_model(L.MultiHeadAttention(2, 3), (4, 6), (7, 5), (7, 3)),
    "causal_cross": lambda: _attention_model(L.MultiHeadAttention(2, 3), (6, 4), (5, 3),
                                             use_causal_mask=True),
    "sliding_window": lambda: _attention_model(L.MultiHeadAttention(2, 3, sliding_window=2)),
    "causal_sliding_window": lambda: _attention_model(
        L.MultiHeadAttention(2, 3, sliding_window=3), (7, 4), use_causal_mask=True),
    "gate": lambda: _attention_model(L.MultiHeadAttention(2, 3, value_dim=2, use_gate=True),
                                     (4, 6), (7, 5)),
    "output_shape": lambda: _attention_model(L.MultiHeadAttention(2, 3, output_shape=(2, 5)),
                                             (4, 6), (7, 5)),
    "output_shape_int": lambda: _attention_model(L.MultiHeadAttention(2, 3, output_shape=7)),
    "no_bias": lambda: _attention_model(
        L.MultiHeadAttention(2, 3, use_bias=False, use_gate=True), (4, 6), (7, 5), (7, 3)),
    "attention_mask_float": lambda: _attention_model(
        L.MultiHeadAttention(2, 3), (4, 6), (7, 5), attention_mask=("float32", (4, 7))),
    "attention_mask_int_causal": lambda: _attention_model(
        L.MultiHeadAttention(2, 3, use_gate=True), (5, 6),
        attention_mask=("int32", (5, 5)), use_causal_mask=True),
    "scores": lambda: _attention_model(L.MultiHeadAttention(3, 2), (4, 6), (7, 5), (7, 3),
                                       return_attention_scores=True),
    "scores_masked": lambda: _attention_model(
        L.MultiHeadAttention(2, 3, sliding_window=2), (4, 6), (7, 5),
        attention_mask=("float32", (4, 7)), return_attention_scores=True),
}


@pytest.mark.parametrize("opset", OPSET_BOUNDS)
@pytest.mark.parametrize("name", sorted(ATTENTION))
def test_multi_head_attention(name, opset):
    model, xs = ATTENTION[name]()
    proto = check_export(model, xs, opset=opset)
    ops = op_types(proto)
    assert ops.count("Softmax") == 1 and "Einsum" not in ops
    masked = any(k in name for k in ("causal", "window", "mask"))
    assert ops.count("Where") == (2 if masked else 0)
    assert len(proto.graph.output) == (2 if "scores" in name else 1)


def test_multi_head_attention_scores_are_keras_probabilities():
    """return_attention_scores: the second output is the (N, H, T, S) probabilities, zeros
    where masked and on a row attending to nothing."""
    model, xs = ATTENTION["scores_masked"]()
    check_export(model, xs)
    probs = run_onnx(pynn.onnx.export(model), xs)[1]
    assert probs.shape == (3, 2, 4, 7)
    attend = (xs[-1] != 0) & (np.abs(np.arange(4)[:, None] - np.arange(7)) < 2)
    np.testing.assert_array_equal(probs[np.broadcast_to(~attend[:, None], probs.shape)], 0.0)
    rows = attend.any(-1)[:, None].repeat(2, 1)
    np.testing.assert_allclose(probs.sum(-1)[rows], 1.0, atol=1e-5)
    np.testing.assert_array_equal(probs.sum(-1)[~rows], 0.0)


@pytest.mark.parametrize("opset", OPSET_BOUNDS)
@pytest.mark.parametrize("causal", [False, True])
def test_masked_multi_head_attention_text_classifier(causal, opset):
    """Embedding(mask_zero=True) -> self-attention -> masked GlobalAveragePooling1D -> Dense:
    the padding masks the keys (and the queries), a padded query step attends to nothing
    (its output is the output bias), the output carries the query's mask to the mean, and a
    row of padding alone is NaN there, as in pynn and Keras."""
    ids = pynn.Input((7,), dtype="int32")
    e = L.Embedding(11, 6, mask_zero=True)(ids)
    a = L.MultiHeadAttention(2, 4, use_gate=True)(e, e, use_causal_mask=causal)
    model = pynn.Model(ids, L.Dense(3)(L.GlobalAveragePooling1D()(a)))
    x = padded_ids()
    check_export(model, x, opset=opset)
    want = model.predict(x, verbose=0)
    assert np.isnan(want[3]).all() and np.isfinite(want[[0, 1, 2, 4]]).all()


def test_multi_head_attention_masks_of_query_value_and_key():
    """Cross-attention with a masked value and a masked key: both masks take part (each
    masks steps the other keeps; in row 2 together they mask every step: the output is
    the output bias); the output carries the query's mask (here none: the mean after it
    is a plain one). Then a masked query and a plain value: the output carries the
    query's mask."""
    def tokens(name, steps, vocab):
        t = pynn.Input((steps,), dtype="int32", name=name)
        return t, L.Embedding(vocab, 5, mask_zero=True)(t)

    qi = pynn.Input((4, 6), name="query")
    vi, v = tokens("value", 7, 11)
    ki, k = tokens("key", 7, 9)
    a = L.MultiHeadAttention(2, 3, value_dim=4)(qi, v, key=k)
    model = pynn.Model([qi, vi, ki], L.Dense(2)(L.GlobalAveragePooling1D()(a)))
    value_ids, key_ids = padded_ids(), padded_ids(seed=8, vocab=9)
    key_ids[0, 4:] = 0      # row 0: the key masks more than the value
    value_ids[1, 1] = 0     # row 1: the value masks a step the key keeps
    value_ids[2, :4], key_ids[2, :] = 0, 1
    key_ids[2, 4:] = 0      # row 2: together nothing to attend to
    xs = [rand((5, 4, 6)), value_ids, key_ids]
    check_export(model, xs)
    assert np.isfinite(model.predict(xs, verbose=0)).all()

    # the query masked, the value not: the output's mask is the query's
    qi2, q2 = tokens("query", 7, 11)
    vi2 = pynn.Input((5, 3), name="value")
    a2 = L.MultiHeadAttention(2, 3)(q2, vi2)
    model2 = pynn.Model([qi2, vi2], L.Dense(2)(L.GlobalAveragePooling1D()(a2)))
    xs2 = [padded_ids(), rand((5, 5, 3), seed=6)]
    check_export(model2, xs2)
    assert np.isnan(model2.predict(xs2, verbose=0)[3]).all()


@pytest.mark.parametrize("opset", OPSET_BOUNDS)
def test_multi_head_attention_unknown_steps(opset):
    """Steps unknown at export: the causal triangle and the window come from Range, the
    graph takes any length (pynn's own call gives the expected values: predict wants the
    output's steps known)."""
    x = pynn.Input((None, 6))
    y = L.MultiHeadAttention(2, 3, sliding_window=2, use_gate=True)(x, x, use_causal_mask=True)
    model = randomize(pynn.Model(x, y))
    proto = pynn.onnx.export(model, opset=opset)
    assert "Range" in op_types(proto)
    for steps in (1, 5, 9):
        xs = rand((2, steps, 6), seed=steps)
        np.testing.assert_allclose(run_onnx(proto, [xs])[0], np.asarray(model(xs)),
                                   rtol=1e-5, atol=1e-5)


def test_multi_head_attention_in_a_sequential_block():
    """A transformer-style block: attention over a Dense's output, residual Add, LayerNorm."""
    x = pynn.Input((6, 5))
    h = L.Dense(8)(x)
    a = L.MultiHeadAttention(4, 2, output_shape=8)(h, h)
    y = L.LayerNormalization()(L.Add()([h, a]))
    check_export(pynn.Model(x, L.Dense(3)(y)), rand((3, 6, 5)))


# -- Attention, AdditiveAttention ------------------------------------------------------------
SCORE_ATTENTION = {
    "dot": lambda: L.Attention(),
    "dot_scale": lambda: L.Attention(use_scale=True),
    "concat": lambda: L.Attention(score_mode="concat"),
    "concat_scale": lambda: L.Attention(use_scale=True, score_mode="concat"),
    "additive": lambda: L.AdditiveAttention(),
    "additive_no_scale": lambda: L.AdditiveAttention(use_scale=False),
}
# how the layer is called: a key or not, use_causal_mask, return_attention_scores
SCORE_CALLS = {
    "plain": (False, False, False),
    "key": (True, False, False),
    "causal": (False, True, False),
    "causal_key_scores": (True, True, True),
    "scores": (False, False, True),
}


def _score_attention_call(layer, query, value, key, call):
    has_key, causal, scores = SCORE_CALLS[call]
    return layer([query, value] + ([key] if has_key else []), use_causal_mask=causal,
                 return_attention_scores=scores)


@pytest.mark.parametrize("opset", OPSET_BOUNDS)
@pytest.mark.parametrize("call", sorted(SCORE_CALLS))
@pytest.mark.parametrize("kind", sorted(SCORE_ATTENTION))
def test_score_attention(kind, call, opset):
    """Attention and AdditiveAttention on plain inputs: every score mode and use_scale, with
    and without a key, causal (query and value of other lengths), the weights returned."""
    q, v, k = pynn.Input((4, 5), name="query"), pynn.Input((6, 3), name="value"), \
        pynn.Input((6, 5), name="key")
    if not SCORE_CALLS[call][0]:
        v = pynn.Input((6, 5), name="value")
    y = _score_attention_call(SCORE_ATTENTION[kind](), q, v, k, call)
    inputs = [q, v] + ([k] if SCORE_CALLS[call][0] else [])
    xs = [rand((3,) + tuple(t.shape[1:]), seed=s) for s, t in enumerate(inputs, 1)]
    proto = check_export(pynn.Model(inputs, y), xs, opset=opset)
    ops = op_types(proto)
    assert ops.count("Softmax") == 1
    assert ("Tanh" in ops) == (kind != "dot" and kind != "dot_scale")
    assert len(proto.graph.output) == (2 if "scores" in call else 1)


def _padded_decoder_encoder_ids():
    """Decoder ids (5, 5) and encoder ids (5, 7) with padding leading, trailing and inside;
    encoder row 3 is padding alone (its decoder row is not), decoder row 4 too."""
    encoder = padded_ids((5, 7))
    decoder = padded_ids((5, 5), seed=6)
    decoder[3], decoder[4] = [1, 2, 3, 4, 5], 0
    return decoder, encoder


@pytest.mark.parametrize("opset", OPSET_BOUNDS)
@pytest.mark.parametrize("call", sorted(SCORE_CALLS))
@pytest.mark.parametrize("kind", sorted(SCORE_ATTENTION))
def test_masked_score_attention(kind, call, opset):
    """A shared Embedding(mask_zero=True) over the decoder's ids (the query) and the
    encoder's (the value; the key, when there is one, a Dense of it, whose mask is unread as
    in Keras): masked scores lowered by 1e9, so a value row of padding alone attends to all
    its steps alike; padded query steps output zeros."""
    dec_ids = pynn.Input((5,), dtype="int32", name="decoder")
    enc_ids = pynn.Input((7,), dtype="int32", name="encoder")
    embed = L.Embedding(11, 4, mask_zero=True)
    query, value = embed(dec_ids), embed(enc_ids)
    key = L.Dense(4)(value)
    y = _score_attention_call(SCORE_ATTENTION[kind](), query, value, key, call)
    model = pynn.Model([dec_ids, enc_ids], y)
    xs = list(_padded_decoder_encoder_ids())
    proto = check_export(model, xs, opset=opset)
    got = run_onnx(proto, xs)
    np.testing.assert_array_equal(got[0][xs[0] == 0], 0.0)
    if SCORE_CALLS[call][2]:
        weights = got[1]
        np.testing.assert_allclose(weights[3], 1.0 / 7, rtol=1e-6)   # value padding alone
        if not SCORE_CALLS[call][1]:   # row 1: the value's two trailing steps padded
            np.testing.assert_array_equal(weights[1][:, -2:], 0.0)


@pytest.mark.parametrize("kind", ["dot_scale", "additive"])
def test_score_attention_output_carries_the_querys_mask(kind):
    """The output's mask is the query's: a masked mean after it averages the decoder's kept
    steps (NaN on a decoder row of padding alone); with an unmasked query and a masked value
    the output has none and the mean is a plain one."""
    dec_ids = pynn.Input((5,), dtype="int32", name="decoder")
    enc_ids = pynn.Input((7,), dtype="int32", name="encoder")
    embed = L.Embedding(11, 4, mask_zero=True)
    a = SCORE_ATTENTION[kind]()([embed(dec_ids), embed(enc_ids)], use_causal_mask=True)
    model = pynn.Model([dec_ids, enc_ids], L.Dense(2)(L.GlobalAveragePooling1D()(a)))
    xs = [padded_ids((5, 5), seed=6), padded_ids((5, 7))]
    check_export(model, xs)
    assert np.isnan(model.predict(xs, verbose=0)[3]).all()

    q = pynn.Input((5, 4), name="query")
    a2 = SCORE_ATTENTION[kind]()([q, embed(enc_ids)])
    model2 = pynn.Model([q, enc_ids], L.Dense(2)(L.GlobalAveragePooling1D()(a2)))
    xs2 = [rand((5, 5, 4)), padded_ids((5, 7))]
    check_export(model2, xs2)
    assert np.isfinite(model2.predict(xs2, verbose=0)).all()


@pytest.mark.parametrize("opset", OPSET_BOUNDS)
def test_score_attention_unknown_steps(opset):
    """Steps unknown at export: the causal triangle comes from Range."""
    x = pynn.Input((None, 4))
    y = L.Attention(use_scale=True, score_mode="concat")([x, x], use_causal_mask=True)
    model = randomize(pynn.Model(x, y))
    proto = pynn.onnx.export(model, opset=opset)
    assert "Range" in op_types(proto)
    for steps in (1, 5, 9):
        xs = rand((2, steps, 4), seed=steps)
        np.testing.assert_allclose(run_onnx(proto, [xs])[0], np.asarray(model(xs)),
                                   rtol=1e-5, atol=1e-5)


# -- EinsumDense: ONNX's Einsum ---------------------------------------------------------------
@pytest.mark.parametrize("equation, output_shape, bias_axes, shape, activation", [
    ("ab,bc->ac", (5,), "c", (4,), "relu"),
    ("abc,cde->abde", (None, 2, 3), "de", (4, 5), None),
    ("abcd,cde->abe", (None, 7), "e", (4, 2, 5), "tanh"),
    ("...b,bc->...c", (6,), "c", (4, 5), "gelu"),
    ("...ab,bc->...ac", (None, 6), None, (3, 4, 5), None),
    ("abc,cd->ad", (6,), "d", (4, 5), None),
    ("abc,dc->adb", (6, 4), "d", (4, 5), "sigmoid"),
])
@pytest.mark.parametrize("opset", [13, None])
def test_einsum_dense(equation, output_shape, bias_axes, shape, activation, opset):
    model = seq(shape, L.EinsumDense(equation, output_shape, bias_axes=bias_axes,
                                     activation=activation))
    proto = check_export(model, rand((3,) + shape), opset=opset)
    assert "Einsum" in op_types(proto)


@pytest.mark.parametrize("opset", [13, None])
@pytest.mark.parametrize("masked", [False, True])
def test_group_query_attention(opset, masked):
    """Each key and value head read by its group of query heads (ONNX's Tile), padding's
    mask, the causal triangle and the gate."""
    ids = L.Input((7,), dtype="int32")
    x = L.Embedding(13, 6, mask_zero=masked)(ids)
    a = L.GroupQueryAttention(3, 4, 2, use_gate=True)(x, x, use_causal_mask=True)
    model = pynn.Model(ids, L.Dense(2)(L.GlobalAveragePooling1D()(a)))
    data = np.random.default_rng(3).integers(1, 13, (4, 7)).astype(np.int32)
    data[:, 5:] = 0
    check_export(model, data, opset=opset)


# -- CategoryEncoding, Discretization -------------------------------------------------------
@pytest.mark.parametrize("mode", ["one_hot", "multi_hot", "count"])
@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize("opset", [13, None])
def test_category_encoding_and_discretization(mode, steps, opset):
    tokens = L.Input((steps,), dtype="int32")
    values = L.Input((steps,))
    encoded = L.CategoryEncoding(num_tokens=6, output_mode=mode)(tokens)
    binned = L.Discretization(bin_boundaries=[-0.5, 0.0, 1.0], output_mode=mode)(values)
    ints = L.Discretization(bin_boundaries=[-0.5, 0.0, 1.0])(values)
    model = pynn.Model([tokens, values], [encoded, binned, ints])
    rng = np.random.default_rng(2)
    data = [rng.integers(0, 6, (5, steps)).astype(np.int32),
            rng.standard_normal((5, steps)).astype(np.float32)]
    data[1][0, 0] = 0.0   # on a boundary
    check_export(model, data, opset=opset)


# -- conv3d: Conv3D and Conv3DTranspose -------------------------------------------------------
CONV3DS = {
    "conv3d_valid": ((5, 6, 7, 3), lambda: L.Conv3D(4, (3, 2, 3), activation="tanh")),
    "conv3d_same_stride": ((5, 7, 6, 3), lambda: L.Conv3D(5, 3, strides=2, padding="same")),
    "conv3d_same_dilated": ((5, 6, 5, 2), lambda: L.Conv3D(3, 2, padding="same",
                                                           dilation_rate=(2, 1, 2))),
    "conv3d_grouped": ((4, 5, 5, 6), lambda: L.Conv3D(4, 3, groups=2, padding="same",
                                                      use_bias=False)),
    "conv3d_transpose_valid": ((3, 4, 3, 3), lambda: L.Conv3DTranspose(4, 3, strides=2)),
    "conv3d_transpose_same": ((3, 4, 3, 3), lambda: L.Conv3DTranspose(
        3, (2, 3, 3), strides=(2, 1, 2), padding="same", activation="relu")),
    "conv3d_transpose_output_padding": ((3, 2, 4, 2), lambda: L.Conv3DTranspose(
        3, 3, strides=2, padding="same", output_padding=(1, 0, 1))),
    "conv3d_transpose_stride_over_kernel": ((3, 3, 2, 2), lambda: L.Conv3DTranspose(
        2, 2, strides=3)),
    "conv3d_transpose_dilated": ((3, 4, 3, 2), lambda: L.Conv3DTranspose(
        2, 3, padding="same", dilation_rate=2)),
}


@pytest.mark.parametrize("name", sorted(CONV3DS))
def test_volumetric_convolutions(name):
    shape, make = CONV3DS[name]
    check_export(seq(shape, make()), rand((2,) + shape))
# -- 3-D pooling and spatial layers (branch vol): MaxPool / AveragePool with three kernel
# dims, ReduceMax / ReduceMean, nearest Resize, Pad and Slice on (N, D, H, W, C) --
VOLUMETRIC = {
    "max3d_valid": ((5, 7, 6, 3), lambda: [L.MaxPooling3D((2, 3, 2))]),
    "max3d_same": ((5, 7, 6, 3), lambda: [L.MaxPool3D(3, strides=(2, 1, 2), padding="same")]),
    "avg3d_valid": ((5, 7, 6, 3), lambda: [L.AveragePooling3D(2, strides=1)]),
    # asymmetric 'same' padding: ONNX averages the in-bounds voxels as pynn does
    "avg3d_same": ((5, 7, 6, 3), lambda: [L.AvgPool3D((3, 2, 3), strides=2, padding="same")]),
    "global_avg3d": ((4, 5, 3, 3), lambda: [L.GlobalAveragePooling3D()]),
    "global_avg3d_keepdims": ((4, 5, 3, 3), lambda: [L.GlobalAvgPool3D(keepdims=True)]),
    "global_max3d": ((4, 5, 3, 3), lambda: [L.GlobalMaxPool3D()]),
    "global_max3d_keepdims": ((4, 5, 3, 3), lambda: [L.GlobalMaxPooling3D(keepdims=True)]),
    "upsampling3d": ((2, 3, 4, 2), lambda: [L.UpSampling3D((2, 1, 3))]),
    "zero_padding3d": ((2, 3, 4, 2), lambda: [L.ZeroPadding3D(((1, 2), 0, (3, 1)))]),
    "cropping3d": ((5, 6, 7, 2), lambda: [L.Cropping3D(((1, 2), (0, 1), 2))]),
    "cropping3d_one_side": ((5, 6, 7, 2), lambda: [L.Cropping3D(((0, 2), (1, 0), (0, 0)))]),
    # a chain: the pools' channels-first layout carried through padding, upsampling, crop
    "chain3d": ((6, 5, 7, 2), lambda: [
        L.ZeroPadding3D(1), L.MaxPooling3D(2, padding="same"), L.UpSampling3D(2),
        L.Cropping3D(((1, 0), 1, (0, 2))), L.AveragePooling3D(3, strides=2, padding="same"),
        L.GlobalMaxPooling3D(), L.Dense(3)]),
}


@pytest.mark.parametrize("name", sorted(VOLUMETRIC))
def test_volumetric_layers(name):
    shape, make = VOLUMETRIC[name]
    check_export(seq(shape, *make()), rand((2,) + shape))


def test_volumetric_chain_transposes_once():
    shape, make = VOLUMETRIC["chain3d"]
    proto = check_export(seq(shape, *make()), rand((2,) + shape))
    assert op_types(proto).count("Transpose") == 1


# -- adaptive pooling: one pool where the bins divide, per-axis bins otherwise -------------
ADAPTIVE = {
    "avg2d_divisible": ((8, 6, 3), lambda: [L.AdaptiveAveragePooling2D((4, 3))], "AveragePool"),
    "max2d_divisible_after_conv": ((8, 6, 3), lambda: [L.Conv2D(4, 3, padding="same"),
                                                       L.AdaptiveMaxPooling2D(2)], "MaxPool"),
    "avg1d_overlapping": ((7, 3), lambda: [L.AdaptiveAveragePooling1D(3)], "Slice"),
    "max1d_larger": ((4, 2), lambda: [L.AdaptiveMaxPooling1D(7)], "Slice"),
    "avg2d_mixed": ((7, 6, 3), lambda: [L.AdaptiveAveragePooling2D((3, 3))], "Slice"),
    "max2d_after_conv": ((9, 7, 2), lambda: [L.Conv2D(3, 3), L.AdaptiveMaxPooling2D((4, 3))],
                         "Slice"),
    "avg3d": ((5, 4, 6, 2), lambda: [L.AdaptiveAveragePooling3D((2, 3, 4))], "Slice"),
    "max3d_divisible": ((4, 4, 6, 2), lambda: [L.AdaptiveMaxPooling3D((2, 1, 3))], "MaxPool"),
    "avg2d_channels_first": ((3, 7, 5), lambda: [
        L.AdaptiveAveragePooling2D((3, 2), data_format="channels_first")], "Slice"),
    "max2d_channels_first_divisible": ((3, 8, 4), lambda: [
        L.AdaptiveMaxPooling2D((4, 2), data_format="channels_first")], "MaxPool"),
}


@pytest.mark.parametrize("opset", [13, None])
@pytest.mark.parametrize("name", sorted(ADAPTIVE))
def test_adaptive_pooling(name, opset):
    shape, make, op_type = ADAPTIVE[name]
    model = seq(shape, *make(), L.Flatten())
    proto = check_export(model, rand((3,) + shape), opset=opset)
    assert op_type in op_types(proto)


def test_adaptive_pooling_of_an_unknown_size_is_refused():
    model = seq((None, None, 3), L.AdaptiveAveragePooling2D(2))
    with pytest.raises(ValueError, match="AdaptiveAveragePooling2D .* spatial size"):
        pynn.onnx.export(model)


# -- Keras 3's DepthwiseConv1D: a grouped Conv ---------------------------------------------
@pytest.mark.parametrize("kwargs", [
    {"kernel_size": 3},
    {"kernel_size": 3, "strides": 2, "padding": "same", "depth_multiplier": 2,
     "activation": "relu"},
    {"kernel_size": 2, "dilation_rate": 2, "padding": "same", "depth_multiplier": 3,
     "use_bias": False},
], ids=["valid", "same-s2-m2-relu", "same-d2-m3-nobias"])
@pytest.mark.parametrize("opset", [13, None])
def test_depthwise_conv1d(kwargs, opset):
    model = seq((9, 3), L.DepthwiseConv1D(**kwargs), L.Flatten())
    proto = check_export(model, rand((2, 9, 3)), opset=opset)
    conv = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert len(conv) == 1 and onnx.helper.get_attribute_value(conv[0].attribute[
        [a.name for a in conv[0].attribute].index("group")]) == 3


def test_alpha_dropout_is_the_identity():
    model = seq((5, 4), L.AlphaDropout(0.3), L.AlphaDropout(0.2, noise_shape=(None, 1, 4)),
                L.Dense(3))
    proto = check_export(model, rand((2, 5, 4)))
    assert "RandomUniform" not in op_types(proto)


# -- Keras 3's colour augmentation layers (branch augcolor) --
COLOR = {
    "color_identities": lambda: [
        L.Equalization(), L.Solarization(0.2, 0.5), L.RandomInvert(), L.RandomPosterization(3),
        L.RandomGrayscale(), L.RandomHue(0.3), L.RandomSaturation(0.4),
        L.RandomColorDegeneration(0.5), L.RandomColorJitter(brightness_factor=0.2,
                                                            hue_factor=0.3),
        L.RandomSharpness(0.4)],
    "auto_contrast": lambda: L.AutoContrast(),
    "auto_contrast_unit_range": lambda: L.AutoContrast(value_range=(0, 1)),
}


@pytest.mark.parametrize("name", sorted(COLOR))
def test_color_layers(name):
    """The colour layers export as their inference: AutoContrast's stretch (ReduceMin,
    ReduceMax, Clip, a flat channel kept by Where(IsNaN)), the others as the identity."""
    made = COLOR[name]()
    layers = made if isinstance(made, list) else [made]
    x = np.random.default_rng(5).uniform(0, 255, (2, 10, 8, 3)).astype(np.float32)
    if name == "auto_contrast_unit_range":
        x /= 255.0
    x[1, ..., 2] = x[1, 0, 0, 2]    # a flat channel: AutoContrast leaves it
    check_export(seq((10, 8, 3), *layers, L.Conv2D(2, 3)), x)


# -- spectral (branch audio): STFTSpectrogram and MelSpectrogram as Conv + elementwise --------
SPECTRAL = {
    "stft_log": ((77, 3), lambda: [L.STFTSpectrogram(mode="log", frame_length=16,
                                                     frame_step=5)]),
    "stft_magnitude_same": ((50, 1), lambda: [L.STFTSpectrogram(
        mode="magnitude", frame_length=15, padding="same", window="hamming")]),
    "stft_psd_expand": ((41, 2), lambda: [L.STFTSpectrogram(mode="psd", frame_length=12,
                                                            frame_step=4, expand_dims=True)]),
    "stft_stft_first": ((3, 30), lambda: [L.STFTSpectrogram(mode="stft", frame_length=8,
                                                            data_format="channels_first")]),
    "stft_real_first_expand": ((2, 30), lambda: [L.STFTSpectrogram(
        mode="real", frame_length=8, expand_dims=True, data_format="channels_first")]),
    "stft_imag": ((30, 2), lambda: [L.STFTSpectrogram(mode="imag", frame_length=8)]),
    "mel_db": ((300,), lambda: [L.MelSpectrogram(fft_length=64, sequence_stride=16,
                                                 num_mel_bins=12, sampling_rate=8000)]),
    "mel_hamming_top_db": ((257,), lambda: [L.MelSpectrogram(
        fft_length=63, sequence_stride=10, sequence_length=40, window="hamming",
        num_mel_bins=9, sampling_rate=4000, min_freq=100.0, max_freq=1800.0, top_db=30.0,
        mag_exp=1.0, ref_power=2.0)]),
    "mel_power": ((101,), lambda: [L.MelSpectrogram(fft_length=32, sequence_stride=7,
                                                    num_mel_bins=6, sampling_rate=1000,
                                                    power_to_db=False)]),
}


@pytest.mark.parametrize("opset", [13, None])
@pytest.mark.parametrize("name", sorted(SPECTRAL))
def test_spectral_layers(name, opset):
    shape, make = SPECTRAL[name]
    # mel outputs are in dB or raw power (values in the hundreds): the bound scales with them
    check_export(seq(shape, *make()), rand((3,) + shape), opset=opset)


@pytest.mark.parametrize("opset", [13, None])
def test_stft_angle_is_atan_by_quadrant(opset):
    # the DC bin's imaginary part is an exact 0 under the DFT's kernels (atan2's +-pi edge)
    model = seq((40, 2), L.STFTSpectrogram(mode="angle", frame_length=8, frame_step=3))
    x = rand((3, 40, 2))
    proto = pynn.onnx.export(model, opset=opset)
    got = run_onnx(proto, [x])[0]
    want = model.predict(x, verbose=0)
    # pynn's angle of (negative, +0) is pi, ONNX's may read -0 as below zero: compare on the
    # circle
    assert np.abs(np.angle(np.exp(1j * (got.astype(np.float64) - want)))).max() <= 1e-5
    check_export(model, x, opset=opset)  # random kernels: no exact zeros
    assert "Atan" in op_types(proto)


def test_stft_of_an_unknown_length_is_refused():
    model = seq((None, 1), L.STFTSpectrogram(frame_length=8))
    with pytest.raises(ValueError, match="STFTSpectrogram .* signal length must be known"):
        pynn.onnx.export(model)


# -- convlstm: ONNX has no convolutional recurrence, so the ConvLSTMs are refused by name --
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_conv_lstms_are_refused_by_name(rank):
    shape = (3,) + (5, 4, 3)[:rank] + (2,)
    layer = getattr(L, f"ConvLSTM{rank}D")(2, 2, name="nowcast")
    with pytest.raises(ValueError, match=rf"ConvLSTM{rank}D 'nowcast' cannot be exported: "
                                         r"ONNX has no ConvLSTM operator"):
        pynn.onnx.export(seq(shape, layer))


# -- ReversibleEmbedding (branch misc) --
def test_reversible_embedding():
    model = pynn.Sequential([L.Input((6,), dtype="int32"),
                             L.ReversibleEmbedding(11, 4, tie_weights=False), L.Flatten(),
                             L.Dense(3)])
    ids = np.random.default_rng(3).integers(0, 11, (3, 6)).astype(np.int32)
    check_export(model, ids)


def test_reversible_embedding_mask_zero_refused():
    model = pynn.Sequential([L.Input((6,), dtype="int32"),
                             L.ReversibleEmbedding(11, 4, mask_zero=True, name="tokens"),
                             L.GlobalAveragePooling1D()])
    with pytest.raises(ValueError, match="'tokens'.*cannot be exported: mask_zero=True"):
        pynn.onnx.export(model)


# -- SpectralNormalization (branch misc) --
def test_spectral_normalization():
    model = pynn.Sequential([L.Input((6, 5, 2)),
                             L.SpectralNormalization(L.Conv2D(3, 2), power_iterations=2),
                             L.Flatten(), L.SpectralNormalization(L.Dense(3))])
    x = np.random.default_rng(4).standard_normal((4, 6, 5, 2)).astype(np.float32)
    model.compile(optimizer="sgd", loss="mse")
    model.train_on_batch(x, np.ones((4, 3), np.float32))   # the kernels normalised in place
    check_export(model, x)


# -- applications (branch appsA): OpLayer's arithmetic (MobileNetV3's hard sigmoid) --
def test_op_layer_arithmetic():
    inputs = pynn.Input((5, 5, 3))
    x = L.Conv2D(4, 3, name="conv")(inputs)
    gate = L.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)
    y = (2.0 - gate) / 4.0 + L.GlobalAveragePooling2D(keepdims=True)(x) - x
    model = pynn.Model(inputs, L.Flatten()(y))
    proto = check_export(model, rand((3, 5, 5, 3)))
    assert {"Add", "Sub", "Mul", "Div"} <= set(op_types(proto))


def test_op_layer_other_ops_refused():
    inputs = pynn.Input((4,))
    model = pynn.Model(inputs, pynn.ops.exp(L.Dense(3)(inputs)))
    with pytest.raises(ValueError, match="OpLayer .* cannot be exported: pynn.ops.exp has no ONNX form"):
        pynn.onnx.export(model)


# -- linalg (branch linalg) --
def test_linalg_det_op_node():
    from pynn import ops
    x = pynn.Input((4, 4))
    d = ops.linalg.det(x)
    model = pynn.Model(x, d)
    a = np.random.default_rng(5).standard_normal((3, 4, 4)).astype(np.float32)
    a += 3 * np.eye(4, dtype=np.float32)
    proto = check_export(model, a)
    assert "Det" in [n.op_type for n in proto.graph.node]


def test_linalg_op_nodes_without_onnx_form_refused_by_name():
    from pynn import ops
    x = pynn.Input((4, 4))
    model = pynn.Model(x, ops.linalg.inv(x))
    with pytest.raises(ValueError, match=r"cannot be exported: pynn.ops.inv has no ONNX form"):
        pynn.onnx.export(model)


# -- lookup: MaxNumBoundingBoxes exports as the identity on images; CLAHE is refused --
def test_max_num_bounding_boxes_is_the_identity():
    check_export(seq((6, 5, 3), L.MaxNumBoundingBoxes(3, bounding_box_format="xyxy"),
                     L.Flatten(), L.Dense(2)), rand((2, 6, 5, 3)))


def test_clahe_is_refused_by_name():
    model = seq((8, 8, 3), L.ContrastLimitedAdaptiveHistogramEqualization(name="eq"),
                L.Flatten(), L.Dense(1))
    with pytest.raises(ValueError, match="'eq'.*cannot be exported: ONNX has no histogram"):
        pynn.onnx.export(model)


# -- applications (branch appsB): Keras's application layers and binary op nodes --
def test_application_layers_and_binary_op_nodes():
    inp = L.Input((5, 4, 6))
    h = L.Conv2D(6, 3, padding="same")(inp)   # a channels-first layout after a Conv
    branch = L.StochasticDepth(0.3)(L.LayerScale(0.5, 6)(h))
    h = L.CustomScaleLayer(0.3)([pynn.ops.add(h, branch), pynn.ops.multiply(inp, branch)])
    h = pynn.ops.subtract(L.Dropout(0.2, noise_shape=(None, 1, 1, 1))(h), inp)
    model = pynn.Model(inp, L.Dense(2)(L.Flatten()(h)))
    check_export(model, rand((3, 5, 4, 6)))


@pytest.mark.parametrize("name,shape", [("EfficientNetB0", (32, 32, 3)),
                                        ("ConvNeXtTiny", (32, 32, 3)),
                                        ("InceptionResNetV2", (75, 75, 3))])
def test_applications(name, shape):
    from pynn import applications

    model = getattr(applications, name)(weights=None, input_shape=shape, classes=4,
                                        classifier_activation=None)
    x = np.random.default_rng(5).uniform(0.0, 255.0, (2,) + shape).astype(np.float32)
    check_export(model, x)
