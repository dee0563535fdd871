"""Recurrent layer options (issue 14, recurrent half): return_state, initial_state (eager and
functional, a list of KerasTensors), stateful with reset_states, dropout and
recurrent_dropout, against Keras 3 (torch) where the numbers are deterministic."""

import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
try:
    import keras
except ImportError as exc:  # pragma: no cover
    pytest.skip(f"keras (torch backend) is not available: {exc}", allow_module_level=True)
if keras.backend.backend() != "torch":  # pragma: no cover
    pytest.skip("these tests want keras on torch", allow_module_level=True)

import pynn
from pynn import layers as L


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "SimpleRNN"])
def test_initial_state_and_return_state_match_keras_functional(kind):
    rng = np.random.default_rng(0)
    n_states = 2 if kind == "LSTM" else 1
    x = rng.standard_normal((5, 7, 3)).astype(np.float32)
    states = [rng.standard_normal((5, 4)).astype(np.float32) for _ in range(n_states)]

    def build(lib):
        mod = keras if lib is keras else pynn
        inp = mod.Input((7, 3))
        st = [mod.Input((4,)) for _ in range(n_states)]
        layer = getattr(keras.layers if lib is keras else L, kind)(
            4, return_sequences=True, return_state=True)
        outs = layer(inp, initial_state=st)
        return (keras.Model if lib is keras else pynn.Model)([inp] + st, outs)
    km, pm = build(keras), build(pynn)
    pm.set_weights(km.get_weights())
    want = km.predict([x] + states, verbose=0)
    got = pm.predict([x] + states, verbose=0)
    assert len(got) == len(want) == 1 + n_states
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, np.asarray(b), atol=1e-5)


def test_initial_state_gradients_match_finite_differences(cpu_backend=None):
    from tests.reference.gradcheck import numerical_grad

    rng = np.random.default_rng(1)
    layer = L.LSTM(3, return_sequences=True, return_state=True, dtype="float64")
    x = rng.standard_normal((3, 4, 2))
    h0, c0 = rng.standard_normal((3, 3)), rng.standard_normal((3, 3))
    layer([x, h0, c0])
    r = [rng.standard_normal(s) for s in ((3, 4, 3), (3, 3), (3, 3))]

    def loss():
        outs = layer.call([x, h0, c0])
        return sum(float(np.sum(o * w)) for o, w in zip(outs, r))
    layer.call([x, h0, c0], training=True)
    dx, dh0, dc0 = layer.backward(r)
    np.testing.assert_allclose(dx, numerical_grad(loss, x), atol=1e-6)
    np.testing.assert_allclose(dh0, numerical_grad(loss, h0), atol=1e-6)
    np.testing.assert_allclose(dc0, numerical_grad(loss, c0), atol=1e-6)
    np.testing.assert_allclose(layer.recurrent_kernel.grad,
                               numerical_grad(loss, layer.recurrent_kernel.value), atol=1e-6)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_stateful_carries_state_across_batches_and_resets(kind):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 8, 3)).astype(np.float32)
    whole = getattr(L, kind)(4)
    whole(x)
    stateful = getattr(L, kind)(4, stateful=True)
    stateful(x[:, :4])
    stateful.set_weights(whole.get_weights())
    stateful.reset_states()
    stateful(x[:, :4])
    second = stateful(x[:, 4:])
    # two stateful halves = one pass over the whole sequence
    np.testing.assert_allclose(second, whole(x), atol=1e-5)
    stateful.reset_states()
    fresh = getattr(L, kind)(4)
    fresh(x[:, 4:])
    fresh.set_weights(whole.get_weights())
    np.testing.assert_allclose(stateful(x[:, 4:]), fresh(x[:, 4:]), atol=1e-6)


def test_dropout_masks_are_fixed_over_time_and_off_at_inference():
    x = np.ones((4, 6, 5), np.float32)
    plain = L.SimpleRNN(3, activation="linear", return_sequences=True, use_bias=False)
    plain(x)
    plain.set_weights([np.eye(5, 3, dtype=np.float32), np.zeros((3, 3), np.float32)])
    drop = L.SimpleRNN(3, activation="linear", return_sequences=True, use_bias=False,
                       dropout=0.5, recurrent_dropout=0.3, seed=7)
    drop(x)
    drop.set_weights(plain.get_weights())
    np.testing.assert_allclose(drop(x), plain(x))  # inference: no dropout
    y = drop.call(x, training=True)
    # x is constant over time and the recurrent kernel is zero: a mask fixed over the steps
    # gives the same output at every step, each 0 or 2 (survivors scaled by 1/(1-rate)).
    np.testing.assert_allclose(y, np.repeat(y[:, :1], 6, axis=1))
    assert set(np.unique(y)) <= {0.0, 2.0} and 0.0 in y and 2.0 in y
    dx = drop.backward(np.ones_like(y))
    assert dx.shape == x.shape and np.any(dx == 0) and np.any(dx != 0)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_go_backwards_with_state_matches_keras(kind):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 5, 2)).astype(np.float32)
    k = getattr(keras.layers, kind)(4, go_backwards=True, return_state=True)
    p = getattr(L, kind)(4, go_backwards=True, return_state=True)
    want = k(x)
    p(x)
    p.set_weights(k.get_weights())
    for a, b in zip(p(x), want):
        np.testing.assert_allclose(a, keras.ops.convert_to_numpy(b), atol=1e-5)


def test_configs_round_trip():
    for layer in (L.LSTM(3, dropout=0.2, recurrent_dropout=0.1, return_state=True,
                         stateful=True, go_backwards=True),
                  L.Bidirectional(L.GRU(2, return_sequences=True), merge_mode="sum"),
                  L.Masking(mask_value=-1.0)):
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()


def _cells(lib, which):
    m = keras.layers if lib is keras else L
    return {"lstm": lambda: m.LSTMCell(5),
            "list": lambda: [m.GRUCell(3), m.SimpleRNNCell(4)],
            "stacked": lambda: m.StackedRNNCells([m.LSTMCell(3),
                                                  m.GRUCell(2, reset_after=False)])}[which]()


@pytest.mark.parametrize("which", ["lstm", "list", "stacked"])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_rnn_of_cells_matches_keras_with_a_mask(which, go_backwards):
    x = np.random.default_rng(5).standard_normal((3, 6, 4)).astype(np.float32)
    x[1, 3:] = 0
    x[2] = 0

    def build(lib):
        m = keras.layers if lib is keras else L
        inp = (keras if lib is keras else pynn).Input((6, 4))
        out = m.RNN(_cells(lib, which), go_backwards=go_backwards,
                    return_sequences=True)(m.Masking()(inp))
        return (keras.Model if lib is keras else pynn.Model)(inp, out)
    km, pm = build(keras), build(pynn)
    pm.set_weights(km.get_weights())
    np.testing.assert_allclose(pm.predict(x, verbose=0), km.predict(x, verbose=0), atol=1e-5)


def test_rnn_of_stacked_cells_trains_like_keras():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((6, 5, 4)).astype(np.float32)
    y = rng.standard_normal((6, 2)).astype(np.float32)

    def build(lib):
        inp = (keras if lib is keras else pynn).Input((5, 4))
        out = (keras.layers if lib is keras else L).RNN(_cells(lib, "stacked"))(inp)
        return (keras.Model if lib is keras else pynn.Model)(inp, out)
    km, pm = build(keras), build(pynn)
    pm.set_weights(km.get_weights())
    km.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    pm.compile(optimizer=pynn.optimizers.SGD(0.1), loss="mse")
    km.fit(x, y, batch_size=3, epochs=1, shuffle=False, verbose=0)
    pm.fit(x, y, batch_size=3, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(pm.get_weights(), km.get_weights()):
        np.testing.assert_allclose(a, np.asarray(b), atol=1e-3)


def test_rnn_config_round_trips_and_rejects_user_cells():
    for layer in (L.RNN(L.LSTMCell(3, dropout=0.1), return_state=True),
                  L.RNN([L.GRUCell(2), L.SimpleRNNCell(3)], go_backwards=True)):
        clone = L.RNN.from_config(layer.get_config())
        assert clone.get_config()["cell"] == layer.get_config()["cell"]
    with pytest.raises(TypeError, match="cell must be"):
        L.RNN(L.Dense(3))
