"""Keras 3's 1-D sequence layers (pynn/layers/sequence.py): Conv1D, MaxPooling1D,
AveragePooling1D, GlobalAveragePooling1D, GlobalMaxPooling1D and TimeDistributed, which run
the conv2d / pool2d ops on (N, 1, T, C) views. Gradients by finite differences (float64),
OpenCL against the CPU, Keras parity of outputs and of one epoch of Adam on a small text
model, config round trips and bad inputs."""

import json

import numpy as np
import pytest

from pynn import layers
from tests.backend_util import keras_on_torch, rand
from tests.reference.gradcheck import check_layer


@pytest.fixture
def rng():
    return np.random.default_rng(2025)


# (make, input shape) -- odd sizes, every padding, strides, dilation, groups, activations.
LAYER_CASES = [
    (lambda: layers.Conv1D(3, 3), (2, 7, 2)),
    (lambda: layers.Conv1D(4, 2, padding="same", strides=2, activation="tanh"), (2, 7, 3)),
    (lambda: layers.Conv1D(2, 3, padding="causal", dilation_rate=2), (2, 9, 2)),
    (lambda: layers.Conv1D(4, 3, padding="causal", activation="relu", use_bias=False),
     (1, 5, 3)),
    (lambda: layers.Conv1D(4, 3, groups=2, padding="same", activation="sigmoid"), (2, 6, 4)),
    (lambda: layers.Conv1D(6, 2, groups=3, padding="causal"), (1, 5, 3)),
    (lambda: layers.MaxPooling1D(2), (2, 7, 3)),
    (lambda: layers.MaxPooling1D(3, strides=2, padding="same"), (2, 8, 3)),
    (lambda: layers.AveragePooling1D(2), (2, 7, 3)),
    (lambda: layers.AveragePooling1D(3, strides=1, padding="same"), (1, 5, 2)),
    (lambda: layers.GlobalAveragePooling1D(), (2, 5, 3)),
    (lambda: layers.GlobalAveragePooling1D(keepdims=True), (2, 5, 3)),
    (lambda: layers.GlobalMaxPooling1D(), (2, 5, 3)),
    (lambda: layers.GlobalMaxPooling1D(keepdims=True), (2, 5, 3)),
    (lambda: layers.TimeDistributed(layers.Dense(3, activation="tanh")), (2, 5, 4)),
    (lambda: layers.TimeDistributed(layers.Conv1D(2, 2, padding="causal")), (2, 3, 5, 2)),
    (lambda: layers.TimeDistributed(layers.Conv2D(2, 2)), (1, 3, 4, 3, 2)),
]
LAYER_IDS = ["conv-valid", "conv-same-s2", "conv-causal-d2", "conv-causal-nobias",
             "conv-groups", "conv-groups-causal", "max", "max-same", "avg", "avg-same",
             "gavg", "gavg-keep", "gmax", "gmax-keep", "td-dense", "td-conv1d", "td-conv2d"]


@pytest.mark.parametrize("make, shape", LAYER_CASES, ids=LAYER_IDS)
def test_layer_gradients(float64, seeded, make, shape):
    layer = make()
    y = check_layer(layer, seeded.standard_normal(shape), seeded)
    assert y.shape[1:] == tuple(layer.output_shape[1:])


def _run(backend, layer, weights, x, dy):
    """Forward and backward of ``layer`` on ``backend`` -> (y, dx, grads) on the host."""
    import pynn

    previous = pynn.backend.device()
    try:
        pynn.set_device(backend.name)
        layer.build((None,) + x.shape[1:])
        if weights:
            layer.set_weights(weights)
        y = layer(backend.up(x), training=True)
        layer.needs_input_grad = True
        dx = layer.backward(backend.up(dy))
        grads = [backend.down(v.grad) for v in layer.weights]
        return backend.down(y), backend.down(dx), grads
    finally:
        pynn.set_device(previous)


@pytest.mark.parametrize("make, shape", LAYER_CASES, ids=LAYER_IDS)
def test_layer_matches_cpu(backend, rng, make, shape):
    """Each backend's forward and backward against the CPU float64 run of the same layer."""
    import pynn

    x = rand(rng, shape)
    probe = make()
    probe.build((None,) + shape[1:])
    weights = [rand(rng, w.shape) for w in probe.get_weights()]
    dy = rand(rng, (shape[0],) + tuple(probe.output_shape[1:]))
    got = _run(backend, make(), weights, x, dy)
    previous = pynn.floatx()
    pynn.set_floatx("float64")
    try:
        from tests.backend_util import make_backend

        want = _run(make_backend("cpu", np.float64), make(), weights, x.astype(np.float64),
                    dy.astype(np.float64))
    finally:
        pynn.set_floatx(previous)
    for what, g, w in [("y", got[0], want[0]), ("dx", got[1], want[1])] + [
            (f"grad {i}", g, w) for i, (g, w) in enumerate(zip(got[2], want[2]))]:
        assert g.shape == w.shape, what
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(w).max()),
                                   err_msg=what)


_keras = keras_on_torch


KERAS_CASES = [
    ("Conv1D", {"filters": 4, "kernel_size": 3}, (2, 9, 3)),
    ("Conv1D", {"filters": 4, "kernel_size": 2, "strides": 2, "padding": "same",
                "activation": "relu"}, (2, 9, 3)),
    ("Conv1D", {"filters": 2, "kernel_size": 3, "padding": "causal", "dilation_rate": 2},
     (2, 8, 3)),
    ("Conv1D", {"filters": 4, "kernel_size": 3, "groups": 2, "padding": "same"}, (2, 7, 4)),
    ("MaxPooling1D", {"pool_size": 3, "strides": 2, "padding": "same"}, (2, 8, 3)),
    ("MaxPooling1D", {}, (2, 7, 3)),
    # An odd padding step would go after the data, where Keras's torch backend pads by
    # replication (its ops differ from TensorFlow's there); pynn keeps TF's in-bounds mean,
    # as AveragePooling2D does, so the parity case pads evenly.
    ("AveragePooling1D", {"pool_size": 3, "strides": 2, "padding": "same"}, (2, 7, 3)),
    ("AveragePooling1D", {"pool_size": 2}, (2, 7, 3)),
    ("GlobalAveragePooling1D", {}, (2, 5, 3)),
    ("GlobalAveragePooling1D", {"keepdims": True}, (2, 5, 3)),
    ("GlobalMaxPooling1D", {}, (2, 5, 3)),
    ("GlobalMaxPooling1D", {"keepdims": True}, (2, 5, 3)),
]


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("name, kwargs, shape", KERAS_CASES,
                         ids=[f"{n}-{k}" for n, k, _ in KERAS_CASES])
def test_layer_matches_keras(backend, rng, name, kwargs, shape):
    """Same outputs as Keras 3's layer from Keras's weights; same config values."""
    keras = _keras()
    import pynn

    x = rand(rng, shape)
    k_layer = getattr(keras.layers, name)(**kwargs)
    want = np.asarray(keras.ops.convert_to_numpy(k_layer(x)))
    previous = pynn.backend.device()
    try:
        pynn.set_device(backend.name)
        layer = getattr(layers, name)(**kwargs)
        layer.build((None,) + shape[1:])
        layer.set_weights(k_layer.get_weights())
        got = backend.down(layer(backend.up(x)))
    finally:
        pynn.set_device(previous)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    k_config, p_config = k_layer.get_config(), layer.get_config()
    for key in set(k_config) & set(p_config) - {"name", "dtype", "trainable", "data_format",
                                               "kernel_initializer", "bias_initializer"}:
        p_value = json.loads(json.dumps(p_config[key]))
        k_value = json.loads(json.dumps(k_config[key]))
        assert p_value == k_value, key


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_time_distributed_matches_keras(backend, rng):
    keras = _keras()
    import pynn

    x = rand(rng, (2, 5, 4))
    k_layer = keras.layers.TimeDistributed(keras.layers.Dense(3, activation="tanh"))
    want = np.asarray(keras.ops.convert_to_numpy(k_layer(x)))
    previous = pynn.backend.device()
    try:
        pynn.set_device(backend.name)
        layer = layers.TimeDistributed(layers.Dense(3, activation="tanh"))
        layer.build((None, 5, 4))
        layer.set_weights(k_layer.get_weights())
        got = backend.down(layer(backend.up(x)))
    finally:
        pynn.set_device(previous)
    assert [w.shape for w in layer.get_weights()] == [w.shape for w in k_layer.get_weights()]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _text_model(lib, vocab, length):
    L = lib.layers
    return lib.Sequential([
        L.Input((length,), dtype="int32"),
        L.Embedding(vocab, 8),
        L.Conv1D(6, 3, padding="causal", activation="relu"),
        L.GlobalMaxPooling1D(),
        L.Dense(3, activation="softmax"),
    ])


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_text_model_trains_like_keras(backend):
    """One epoch of Adam on Embedding -> Conv1D -> GlobalMaxPooling1D -> Dense from the same
    weights and data: the same weights after it (within 1e-3) and the same loss."""
    keras = _keras()
    import pynn

    rng = np.random.default_rng(7)
    vocab, length = 23, 11
    x = rng.integers(0, vocab, (40, length)).astype(np.int32)
    y = rng.integers(0, 3, 40).astype(np.int32)
    keras.utils.set_random_seed(3)
    k_model = _text_model(keras, vocab, length)
    k_model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01),
                    loss="sparse_categorical_crossentropy")
    previous = pynn.backend.device()
    try:
        pynn.set_device(backend.name)
        p_model = _text_model(pynn, vocab, length)
        p_model.set_weights(k_model.get_weights())
        p_model.compile(optimizer=pynn.optimizers.Adam(learning_rate=0.01),
                        loss="sparse_categorical_crossentropy")
        np.testing.assert_allclose(p_model.predict(x, verbose=0),
                                   keras.ops.convert_to_numpy(k_model.predict(x, verbose=0)),
                                   rtol=1e-5, atol=1e-6)
        p_hist = p_model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0).history
        p_weights = p_model.get_weights()
    finally:
        pynn.set_device(previous)
    k_hist = k_model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0).history
    for p, k in zip(p_weights, k_model.get_weights()):
        assert np.max(np.abs(p - k)) <= 1e-3 * max(1.0, np.max(np.abs(k)))
    assert abs(p_hist["loss"][0] - k_hist["loss"][0]) <= 1e-3 * k_hist["loss"][0]
    # The training moved the weights: the comparison above is not of untouched arrays.
    assert max(np.max(np.abs(p - k)) for p, k in zip(p_weights, _text_weights(keras, k_model)))


def _text_weights(keras, k_model):
    """Keras's initial weights again (same seed), to show that the epoch changed them."""
    keras.utils.set_random_seed(3)
    return _text_model(keras, k_model.layers[0].input_dim, k_model.input_shape[1]).get_weights()


# -- config -------------------------------------------------------------------------------

@pytest.mark.parametrize("make, shape", LAYER_CASES, ids=LAYER_IDS)
def test_config_round_trip(make, shape):
    layer = make()
    config = json.loads(json.dumps(layer.get_config()))
    clone = layers.LAYERS[type(layer).__name__].from_config(config)
    assert type(clone) is type(layer) and clone.get_config() == layer.get_config()
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape) / np.prod(shape)
    layer.build((None,) + shape[1:])
    clone.build((None,) + shape[1:])
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(clone(x), layer(x))


def test_time_distributed_config_names_the_inner_layer():
    layer = layers.TimeDistributed(layers.Dense(3, name="inner"))
    config = layer.get_config()
    assert config["layer"]["class_name"] == "Dense"
    assert config["layer"]["config"]["name"] == "inner"
    config["layer"]["class_name"] = "os.system"
    with pytest.raises(ValueError, match="unknown inner layer class 'os.system'"):
        layers.TimeDistributed.from_config(config)


def test_time_distributed_weights_are_the_inner_layers():
    inner = layers.Dense(2)
    td = layers.TimeDistributed(inner)
    td(np.ones((1, 3, 4), np.float32))
    assert [v is w for v, w in zip(td.weights, inner.weights)] == [True, True]
    assert td.count_params() == 4 * 2 + 2


# -- bad inputs ----------------------------------------------------------------------------

@pytest.mark.parametrize("make, error, match", [
    (lambda: layers.Conv1D(0, 3), ValueError, "filters must be a positive int"),
    (lambda: layers.Conv1D(2, (3, 3)), ValueError, "kernel_size must be a positive int"),
    (lambda: layers.Conv1D(2, 3, padding="full"), ValueError,
     "'valid', 'same' or 'causal', got 'full'"),
    (lambda: layers.Conv1D(3, 3, groups=2), ValueError, "groups must divide filters"),
    (lambda: layers.Conv1D(3, 3, strides=2, dilation_rate=2), ValueError, "strides > 1"),
    (lambda: layers.Conv1D(3, 3, data_format="channels_first"), ValueError, "channels_last"),
    (lambda: layers.MaxPooling1D(0), ValueError, "pool_size must be a positive int"),
    (lambda: layers.AveragePooling1D(2, padding="causal"), ValueError, "padding"),
    (lambda: layers.TimeDistributed("Dense"), ValueError, "must be a pynn Layer"),
    (lambda: layers.Conv1D(3, 3, bogus=1), TypeError, "unexpected"),
])
def test_bad_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("layer, shape, match", [
    (lambda: layers.Conv1D(2, 3, name="c"), (2, 5, 5, 3),
     r"Conv1D 'c': expected input shape \(None, T, C\)"),
    (lambda: layers.Conv1D(2, 6, name="c"), (2, 5, 3), "larger than the input"),
    (lambda: layers.Conv1D(2, 3, groups=2, name="c"), (2, 5, 3), "groups=2 must divide"),
    (lambda: layers.MaxPooling1D(6, name="p"), (2, 5, 3), "pool_size 6 is larger"),
    (lambda: layers.GlobalMaxPooling1D(name="g"), (2, 5), r"\(None, T, C\)"),
    (lambda: layers.TimeDistributed(layers.Dense(2), name="t"), (2, 5), "at least 3"),
])
def test_bad_input_shapes(layer, shape, match):
    with pytest.raises(ValueError, match=match):
        layer()(np.ones(shape, np.float32))


def test_text_model_saves_and_loads(tmp_path, seeded):
    """A model of every sequence layer (int32 token input) trains, saves and loads back to the
    same predictions: the classes are found in LAYERS, TimeDistributed's inner one too."""
    import pynn

    L = pynn.layers
    model = pynn.Sequential([
        L.Input((6,), dtype="int32"), L.Embedding(10, 4, mask_zero=True),
        L.TimeDistributed(L.Dense(3)), L.Conv1D(2, 3, padding="causal"), L.MaxPooling1D(2),
        L.AveragePooling1D(1), L.GlobalAveragePooling1D(), L.Dense(2),
    ])
    x = seeded.integers(0, 10, (5, 6))
    model.compile("adam", "mse")
    model.fit(x, seeded.random((5, 2)), verbose=0)
    path = tmp_path / "text.pynn"
    model.save(path)
    loaded = pynn.load_model(path)
    assert [type(layer).__name__ for layer in loaded.layers] == [
        type(layer).__name__ for layer in model.layers]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
