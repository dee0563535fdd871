"""Bidirectional (issue 14, recurrent half): Keras 3's weight layout, merge modes, states and
training, from Keras's weights (torch backend); finite differences through both directions;
an OpenCL model trained beside the CPU one."""

import os

import numpy as np
import pytest

import pynn
from pynn import layers as L

os.environ.setdefault("KERAS_BACKEND", "torch")


def _keras():
    try:
        import keras
    except ImportError as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"keras is not available: {exc}")
    if keras.backend.backend() != "torch":  # pragma: no cover
        pytest.skip("these tests want keras on torch")
    return keras


def _models(keras, inner, t, c, merge_mode="concat", **kw):
    def build(lib):
        m = keras.layers if lib is keras else L
        inp = (keras if lib is keras else pynn).Input((t, c))
        out = m.Bidirectional(getattr(m, inner)(4, **kw), merge_mode=merge_mode)(
            m.Masking()(inp))
        return (keras.Model if lib is keras else pynn.Model)(inp, out)
    km, pm = build(keras), build(pynn)
    pm.set_weights(km.get_weights())
    return km, pm


@pytest.mark.parametrize("inner", ["LSTM", "GRU", "SimpleRNN"])
def test_one_epoch_with_a_mask_matches_keras(inner):
    keras = _keras()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 6, 3)).astype(np.float32)
    x[1, 4:] = 0
    x[4, 1:] = 0
    y = rng.standard_normal((9, 8)).astype(np.float32)
    km, pm = _models(keras, inner, 6, 3)
    assert [w.shape for w in pm.get_weights()] == [tuple(w.shape) for w in km.get_weights()]
    km.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    pm.compile(optimizer=pynn.optimizers.SGD(0.1), loss="mse")
    km.fit(x, y, batch_size=3, epochs=1, shuffle=False, verbose=0)
    pm.fit(x, y, batch_size=3, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(pm.get_weights(), km.get_weights()):
        np.testing.assert_allclose(a, np.asarray(b), atol=1e-3)


def test_merge_mode_none_and_return_state_match_keras():
    keras = _keras()
    x = np.random.default_rng(1).standard_normal((3, 5, 2)).astype(np.float32)
    km, pm = _models(keras, "LSTM", 5, 2, merge_mode=None, return_sequences=True,
                     return_state=True)
    want = km.predict(x, verbose=0)
    got = pm.predict(x, verbose=0)
    assert len(got) == len(want) == 6  # forward out, backward out, 2 + 2 states
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, np.asarray(b), atol=1e-5)


@pytest.mark.parametrize("merge_mode", ["mul", "sum", "ave", "concat", None])
def test_gradients_match_finite_differences(merge_mode, float64):
    # sum and ave once asked merge_backward for inputs they never kept: no model with them
    # could train
    from tests.reference.gradcheck import numerical_grad

    rng = np.random.default_rng(2)
    layer = L.Bidirectional(L.GRU(3, return_sequences=True), merge_mode=merge_mode)
    x = rng.standard_normal((3, 4, 2))
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], bool)
    layer(x)
    outs = 2 if merge_mode is None else 1
    width = 6 if merge_mode == "concat" else 3
    r = [rng.standard_normal((3, 4, width)) for _ in range(outs)]
    layer.call(x, training=True, mask=mask)
    dx = layer.backward(r if merge_mode is None else r[0])

    def loss():
        ys = layer.call(x, mask=mask)
        ys = ys if merge_mode is None else [ys]
        return float(sum(np.sum(y * rk) for y, rk in zip(ys, r)))
    np.testing.assert_allclose(dx, numerical_grad(loss, x), atol=1e-6)
    for v in layer.weights:
        np.testing.assert_allclose(v.grad, numerical_grad(loss, v.value), atol=1e-6,
                                   err_msg=v.name)


def test_rejects_bad_arguments():
    with pytest.raises(TypeError, match="layer must be a SimpleRNN, LSTM or GRU"):
        L.Bidirectional(L.Dense(3))
    with pytest.raises(ValueError, match="merge_mode must be one of"):
        L.Bidirectional(L.LSTM(3), merge_mode="max")
    with pytest.raises(ValueError, match="backward_layer must have go_backwards=True"):
        L.Bidirectional(L.LSTM(3), backward_layer=L.LSTM(3))


@pytest.mark.opencl
@pytest.mark.parametrize("merge_mode", ["concat", "sum", "ave"])
def test_opencl_training_matches_cpu(merge_mode, backend_opencl):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 7, 3)).astype(np.float32)
    x[2, 3:] = 0
    x[5] = 0
    y = rng.standard_normal((8, 1)).astype(np.float32)

    def run(device):
        pynn.set_device(device)
        try:
            pynn.utils.set_random_seed(5)
            model = pynn.Sequential([
                L.Input((7, 3)), L.Masking(),
                L.Bidirectional(L.LSTM(4, return_sequences=True, dropout=0.2,
                                       recurrent_dropout=0.2, seed=3), merge_mode=merge_mode),
                L.GRU(3, go_backwards=True), L.Dense(1)])
            model.compile(optimizer="adam", loss="mse")
            model.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False)
            return model.get_weights(), model.predict(x, verbose=0)
        finally:
            pynn.set_device("cpu")

    (w_cpu, p_cpu), (w_ocl, p_ocl) = run("cpu"), run("opencl")
    for a, b in zip(w_ocl, w_cpu):
        np.testing.assert_allclose(a, b, atol=1e-4)
    np.testing.assert_allclose(p_ocl, p_cpu, atol=1e-4)


def test_saved_model_with_recurrent_wrappers_round_trips(tmp_path):
    from pynn.saving import load_model

    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 5, 2)).astype(np.float32)
    x[1, 2:] = 0
    inp = pynn.Input((5, 2))
    h = L.Bidirectional(L.GRU(3, return_sequences=True), merge_mode="ave")(L.Masking()(inp))
    h = L.RNN([L.LSTMCell(2), L.SimpleRNNCell(3)], go_backwards=True)(h)
    model = pynn.Model(inp, h)
    path = str(tmp_path / "m.pynn")
    model.save(path)
    again = load_model(path, compile=False)
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)
