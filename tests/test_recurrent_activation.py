"""``activation=`` / ``recurrent_activation=`` a callable on SimpleRNN, LSTM, GRU and their
cells (issue 13): an activation function pynn knows maps to the fused kernels' name; any
other runs the layer's ops cell (the same gate math in pynn.ops, through RNN's user-cell
loop), which must give the built-in layer's outputs and gradients when the callable is the
same function, train when it is a new one, and save only when registered."""

import numpy as np
import pytest

import pynn
from pynn import layers, ops
from tests.reference.gradcheck import assert_close, numerical_grad

N, T, C, U = 3, 5, 4, 3


@pytest.fixture
def float64():
    pynn.set_floatx("float64")
    try:
        yield
    finally:
        pynn.set_floatx("float32")


def _same_tanh(t):
    return ops.tanh(t)


def _same_sigmoid(t):
    return ops.sigmoid(t)


def softsign_ish(t):  # no fused kernel: a genuinely custom activation
    return t / (1.0 + ops.abs(t)) + 0.05 * t


def test_known_functions_map_to_the_fused_names():
    assert layers.LSTM(3, activation=ops.tanh, recurrent_activation=ops.sigmoid).activation \
        == "tanh"
    assert layers.GRU(3, recurrent_activation=ops.hard_sigmoid).recurrent_activation \
        == "hard_sigmoid"
    assert layers.SimpleRNN(3, activation=ops.relu).activation == "relu"
    layer = layers.LSTM(3, activation=softsign_ish)
    assert layer.activation is softsign_ish and layer._callable_activation()


def _pair(cls, kwargs, custom):
    """The built-in layer and the same layer given ``custom`` activations, same weights."""
    ref = cls(U, **kwargs)
    got = cls(U, **kwargs, **custom)
    for layer in (ref, got):
        layer.build((None, T, C))
    got.set_weights(ref.get_weights())
    return ref, got


def _forward_backward(layer, x, dy, mask=None):
    layer.needs_input_grad = True
    y = layer(x, training=True, mask=mask)
    dx = layer.backward(dy)
    outs = y if isinstance(y, list) else [y]
    dxs = [dx] + [v.grad for v in layer.weights]
    host = pynn.backend.current().to_numpy
    return [np.asarray(host(o)) for o in outs], [np.asarray(host(g)) for g in dxs]


CASES = [
    (layers.SimpleRNN, {"return_sequences": True}, {"activation": _same_tanh}),
    (layers.LSTM, {"return_sequences": True},
     {"activation": lambda t: ops.tanh(t), "recurrent_activation": _same_sigmoid}),
    (layers.LSTM, {"go_backwards": True}, {"recurrent_activation": lambda t: ops.sigmoid(t)}),
    (layers.GRU, {"return_sequences": True}, {"activation": _same_tanh}),
    (layers.GRU, {"reset_after": False}, {"recurrent_activation": _same_sigmoid}),
]


@pytest.mark.parametrize("cls, kwargs, custom", CASES,
                         ids=["simple_rnn", "lstm", "lstm_backwards", "gru", "gru_before"])
def test_ops_cell_equals_the_builtin_layer(float64, cls, kwargs, custom):
    rng = np.random.default_rng(5)
    ref, got = _pair(cls, kwargs, custom)
    x = rng.standard_normal((N, T, C))
    out_shape = (N, T, U) if kwargs.get("return_sequences") else (N, U)
    dy = rng.standard_normal(out_shape)
    want_y, want_g = _forward_backward(ref, x, dy)
    got_y, got_g = _forward_backward(got, x, dy)
    np.testing.assert_allclose(got_y[0], want_y[0], rtol=1e-10, atol=1e-12)
    for i, (g, w) in enumerate(zip(got_g, want_g)):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-11, err_msg=f"gradient {i}")


def test_mask_and_return_state_follow_the_builtin_layer(float64):
    rng = np.random.default_rng(6)
    kwargs = {"return_sequences": True, "return_state": True}
    ref, got = _pair(layers.LSTM, kwargs, {"activation": _same_tanh})
    x = rng.standard_normal((N, T, C))
    mask = np.ones((N, T), bool)
    mask[0, 3:] = False
    mask[2, 1] = False
    dy = [rng.standard_normal((N, T, U)), rng.standard_normal((N, U)),
          rng.standard_normal((N, U))]
    want_y, want_g = _forward_backward(ref, x, dy, mask)
    got_y, got_g = _forward_backward(got, x, dy, mask)
    assert len(got_y) == 3
    for g, w in zip(got_y + got_g, want_y + want_g):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-11)


def test_one_training_step_equals_the_builtin_model():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((8, T, C)).astype(np.float32)
    y = rng.standard_normal((8, 2)).astype(np.float32)
    models = [pynn.Sequential([layers.Input((T, C)), layers.GRU(U, **act), layers.Dense(2)])
              for act in ({}, {"activation": lambda t: ops.tanh(t)})]
    models[1].set_weights(models[0].get_weights())
    for model in models:
        model.compile(pynn.optimizers.SGD(0.1), "mse")
        model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    for a, b in zip(models[1].get_weights(), models[0].get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_custom_activation_backward_by_finite_differences(float64):
    rng = np.random.default_rng(8)
    layer = layers.LSTM(2, activation=softsign_ish, return_sequences=True)
    x = rng.standard_normal((2, 3, 3))
    layer.build(x.shape)
    r = rng.standard_normal((2, 3, 2))
    layer.needs_input_grad = True
    layer(x, training=True)
    dx = layer.backward(r)
    grads = {v.name: np.array(v.grad) for v in layer.weights}

    def loss():
        return float(np.sum(np.asarray(layer(x, training=False)) * r))

    assert_close("LSTM(activation=fn) dx", dx, numerical_grad(loss, x), 1e-6, 1e-8)
    for v in layer.weights:
        assert_close(f"LSTM(activation=fn) d{v.name}", grads[v.name],
                     numerical_grad(loss, v.value), 1e-6, 1e-8)


def test_custom_activation_trains():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((32, T, C)).astype(np.float32)
    y = np.tanh(x.sum(axis=(1, 2)))[:, None].astype(np.float32)
    model = pynn.Sequential([layers.Input((T, C)),
                             layers.SimpleRNN(6, activation=softsign_ish), layers.Dense(1)])
    model.compile(pynn.optimizers.Adam(0.02), "mse")
    loss = model.fit(x, y, epochs=6, batch_size=16, verbose=0).history["loss"]
    assert loss[-1] < 0.7 * loss[0]


def test_cells_take_callables(float64):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((N, T, C))
    layer = layers.LSTM(U, activation=softsign_ish, return_sequences=True)
    rnn = layers.RNN(layers.LSTMCell(U, activation=softsign_ish), return_sequences=True)
    layer.build(x.shape)
    rnn.build(x.shape)
    rnn.set_weights(layer.get_weights())
    np.testing.assert_allclose(np.asarray(rnn(x)), np.asarray(layer(x)), rtol=1e-12)
    assert layers.GRUCell(U, activation=ops.relu).layer_options()["activation"] == "relu"
    # Bidirectional copies the layer in memory: the function needs no registered name
    both = layers.Bidirectional(layers.GRU(U, activation=softsign_ish), merge_mode="sum")
    both.build(x.shape)
    assert both.forward_layer.activation is softsign_ish
    assert np.asarray(both(x)).shape == (N, U)


def test_saving_needs_the_function_registered(tmp_path):
    inp = pynn.Input((T, C))
    model = pynn.Model(inp, layers.LSTM(U, activation=lambda t: ops.tanh(t) * 0.5)(inp))
    with pytest.raises(ValueError, match="cannot save the activation.*register_serializable"):
        model.save(tmp_path / "a.pynn")

    @pynn.saving.register_serializable("test_recurrent_activation")
    def half_tanh(t):
        return ops.tanh(t) * 0.5

    model = pynn.Model(inp, layers.GRU(U, recurrent_activation=half_tanh)(inp))
    model.save(tmp_path / "b.pynn")
    loaded = pynn.saving.load_model(tmp_path / "b.pynn")
    x = np.random.default_rng(11).standard_normal((N, T, C)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6)
    config = model.layers[-1].get_config()
    assert config["recurrent_activation"] == "test_recurrent_activation>half_tanh"
    assert layers.GRU.from_config(config).recurrent_activation is half_tanh


def test_unsupported_options_name_the_layer():
    x = np.ones((2, T, C), np.float32)
    for kwargs in ({"stateful": True}, {"dropout": 0.2}, {"recurrent_dropout": 0.1}):
        layer = layers.LSTM(U, activation=softsign_ish, name="odd", **kwargs)
        with pytest.raises(ValueError, match=f"LSTM 'odd': {next(iter(kwargs))} with an "
                                             f"activation function"):
            layer(x)
    layer = layers.GRU(U, activation=softsign_ish, name="init")
    with pytest.raises(ValueError, match="GRU 'init': initial_state with an activation"):
        layer(x, initial_state=[np.zeros((2, U), np.float32)])
    with pytest.raises(ValueError, match="SimpleRNN 'b': activation <built-in function max> "
                                         "is not an activation"):
        layers.SimpleRNN(U, activation=max, name="b")


@pytest.mark.opencl
@pytest.mark.parametrize("cls", [layers.LSTM, layers.GRU])
def test_ops_cell_on_opencl_matches_the_cpu(cls):
    pytest.importorskip("pyopencl")
    rng = np.random.default_rng(12)
    x = rng.standard_normal((N, T, C)).astype(np.float32)
    dy = rng.standard_normal((N, T, U)).astype(np.float32)
    results = []
    weights = None
    for device in ("cpu", "opencl"):
        previous = pynn.get_device()
        pynn.set_device(device)
        try:
            b = pynn.backend.current()
            layer = cls(U, activation=softsign_ish, return_sequences=True)
            layer.build((None, T, C))
            if weights is None:
                weights = layer.get_weights()
            layer.set_weights(weights)
            ys, gs = _forward_backward(layer, b.asarray(x, np.float32), b.asarray(dy, np.float32))
            results.append(ys + gs)
        finally:
            pynn.set_device(previous)
    for i, (got, want) in enumerate(zip(results[1], results[0])):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=f"array {i}")
