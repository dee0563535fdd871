"""Masks end to end (issue 14, recurrent half): Masking and Embedding(mask_zero) feeding
SimpleRNN / LSTM / GRU and Bidirectional, against Keras 3 (torch backend) from the same
weights: predictions and the weights after one epoch of SGD."""

import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
try:
    import keras
except ImportError as exc:  # pragma: no cover - depends on the environment
    pytest.skip(f"keras (torch backend) is not available: {exc}", allow_module_level=True)
if keras.backend.backend() != "torch":  # pragma: no cover
    pytest.skip("these tests want keras on torch", allow_module_level=True)

import pynn
from pynn import layers as L


def _padded(rng, n, t, c, lengths):
    x = rng.standard_normal((n, t, c)).astype(np.float32)
    for i, length in enumerate(lengths):
        x[i, length:] = 0.0  # padded after (Masking masks these steps)
    return x


def _rnn(lib, kind, units, **kw):
    return getattr(lib.layers if lib is keras else L, kind)(units, **kw)


CASES = [("SimpleRNN", {}), ("LSTM", {}), ("GRU", {}), ("GRU", {"reset_after": False}),
         ("LSTM", {"go_backwards": True}), ("GRU", {"return_sequences": True})]


def _models(kind, kw, t, c, bidirectional=False, merge_mode="concat"):
    def build(lib):
        inp = (keras if lib is keras else pynn).Input((t, c))
        masking = (keras.layers.Masking if lib is keras else L.Masking)(0.0)
        rnn = _rnn(lib, kind, 5, **kw)
        if bidirectional:
            wrap = keras.layers.Bidirectional if lib is keras else L.Bidirectional
            rnn = wrap(rnn, merge_mode=merge_mode)
        h = rnn(masking(inp))
        if lib is keras:
            return keras.Model(inp, h)
        return pynn.Model(inp, h)
    km, pm = build(keras), build(pynn)
    pm.set_weights(km.get_weights())
    return km, pm


def _train_alike(km, pm, x, y, batch_size, epochs, atol):
    """Both models through SGD(0.1) on mse, in order: the same weights after."""
    km.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    pm.compile(optimizer=pynn.optimizers.SGD(0.1), loss="mse")
    km.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0)
    pm.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0)
    for a, b in zip(pm.get_weights(), km.get_weights()):
        np.testing.assert_allclose(a, np.asarray(b), atol=atol)


@pytest.mark.parametrize("kind,kw", CASES)
def test_masked_recurrent_prediction_matches_keras(kind, kw):
    rng = np.random.default_rng(3)
    # rows: unmasked, partly masked, fully masked, length 1, length 2
    x = _padded(rng, 5, 7, 3, [7, 4, 0, 1, 2])
    km, pm = _models(kind, kw, 7, 3)
    want = np.asarray(km.predict(x, verbose=0))
    got = pm.predict(x, verbose=0)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("kind,kw,bidirectional", [(k, kw, False) for k, kw in CASES] + [
    ("LSTM", {"return_sequences": True, "go_backwards": True}, False),
    ("GRU", {}, True), ("LSTM", {"return_sequences": True}, True)])
def test_one_padded_request_matches_keras(kind, kw, bidirectional):
    """One sample padded before, after or inside (the inference plan then runs the kept
    steps alone): Keras's numbers through model(x), predict_on_batch and predict."""
    rng = np.random.default_rng(4)
    km, pm = _models(kind, kw, 7, 3, bidirectional)
    x = rng.standard_normal((1, 7, 3)).astype(np.float32)
    for kept in ([2, 3, 4, 5, 6], [0, 1, 2], [0, 2, 3, 5], [4]):
        padded = np.zeros_like(x)
        padded[:, kept] = x[:, kept]
        want = np.asarray(km.predict(padded, verbose=0))
        for got in (pm(padded), pm.predict_on_batch(padded), pm.predict(padded, verbose=0)):
            np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, err_msg=str(kept))


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_masked_bidirectional_prediction_matches_keras(merge_mode, return_sequences):
    rng = np.random.default_rng(4)
    x = _padded(rng, 3, 6, 4, [6, 3, 1])
    km, pm = _models("LSTM", {"return_sequences": return_sequences}, 6, 4,
                     bidirectional=True, merge_mode=merge_mode)
    np.testing.assert_allclose(pm.predict(x, verbose=0), np.asarray(km.predict(x, verbose=0)),
                               atol=1e-5)


@pytest.mark.parametrize("kind,kw", [("LSTM", {}), ("GRU", {}), ("SimpleRNN", {})])
def test_masked_one_epoch_weights_match_keras(kind, kw):
    rng = np.random.default_rng(5)
    x = _padded(rng, 9, 7, 3, [7, 5, 3, 1, 0, 6, 2, 7, 4])
    y = rng.standard_normal((9, 5)).astype(np.float32)
    km, pm = _models(kind, kw, 7, 3)
    _train_alike(km, pm, x, y, 3, 1, 1e-3)


def test_embedding_mask_zero_feeds_the_mask():
    rng = np.random.default_rng(6)
    idx = rng.integers(1, 20, size=(4, 6))
    idx[1, 3:] = 0
    idx[2, :] = 0

    def build(lib):
        inp = (keras if lib is keras else pynn).Input((6,), dtype="int32")
        emb = (keras.layers.Embedding if lib is keras else L.Embedding)(20, 3, mask_zero=True)
        return (keras.Model if lib is keras else pynn.Model)(inp, _rnn(lib, "GRU", 4)(emb(inp)))
    km, pm = build(keras), build(pynn)
    pm.set_weights(km.get_weights())
    np.testing.assert_allclose(pm.predict(idx, verbose=0),
                               np.asarray(km.predict(idx, verbose=0)), atol=1e-5)


@pytest.mark.parametrize("return_sequences", [True, False])
def test_mask_passes_dropout_and_dense_and_pools_over_time(return_sequences):
    rng = np.random.default_rng(7)
    idx = rng.integers(1, 15, size=(5, 7))
    idx[1, 4:] = 0
    idx[3, 1:] = 0

    def build(lib):
        m = keras.layers if lib is keras else L
        inp = (keras if lib is keras else pynn).Input((7,), dtype="int32")
        h = m.Dropout(0.3)(m.Embedding(15, 4, mask_zero=True)(inp))
        h = m.LSTM(3, return_sequences=True)(h)
        h = m.TimeDistributed(m.Dense(2))(h)
        if not return_sequences:
            h = m.GlobalAveragePooling1D()(h)
        return (keras.Model if lib is keras else pynn.Model)(inp, h)
    km, pm = build(keras), build(pynn)
    pm.set_weights(km.get_weights())
    np.testing.assert_allclose(pm.predict(idx, verbose=0),
                               np.asarray(km.predict(idx, verbose=0)), atol=1e-5)


MASK_PASSERS = [("ReLU", (), {"max_value": 2.0, "threshold": 0.1}), ("LeakyReLU", (0.2,), {}),
                ("ELU", (), {}), ("PReLU", (), {}), ("Identity", (), {}),
                ("LayerNormalization", (), {}), ("GroupNormalization", (2,), {}),
                ("Rescaling", (0.5, 0.1), {}), ("Normalization", (), {"mean": 0.2,
                                                                   "variance": 2.0}),
                ("ActivityRegularization", (0.01, 0.01), {}), ("GaussianNoise", (0.2,), {}),
                ("GaussianDropout", (0.2,), {}),
                # in training, Keras's moments over the unmasked steps only
                ("BatchNormalization", (), {"momentum": 0.5}),
                ("BatchNormalization", (), {"center": False, "scale": False})]


@pytest.mark.parametrize("name,args,kw", MASK_PASSERS, ids=[c[0] for c in MASK_PASSERS])
def test_the_mask_passes_layers_that_keras_passes_it_through(name, args, kw):
    """Keras 3 passes the input's mask on through these layers (their supports_masking):
    a recurrent layer after one skips the masked steps. pynn dropped it there, so the
    recurrence ran over the padding: predictions and training parted from Keras's."""
    rng = np.random.default_rng(11)
    x = _padded(rng, 4, 6, 4, [6, 3, 1, 5])

    def build(lib):
        m = keras.layers if lib is keras else L
        inp = (keras if lib is keras else pynn).Input((6, 4))
        h = getattr(m, name)(*args, **kw)(m.Masking(0.0)(inp))
        h = m.GRU(3, return_sequences=True)(h)
        return (keras.Model if lib is keras else pynn.Model)(inp, m.GRU(2)(h))
    km, pm = build(keras), build(pynn)
    pm.set_weights([rng.uniform(0.5, 1.5, v.shape).astype(np.float32)
                    if v.name == "moving_variance" else
                    rng.uniform(-0.5, 0.5, v.shape).astype(np.float32) for v in pm.weights])
    km.set_weights(pm.get_weights())
    np.testing.assert_allclose(pm.predict(x, verbose=0), np.asarray(km.predict(x, verbose=0)),
                               atol=1e-5)
    if name.startswith("Gaussian"):
        return  # training draws noise: the two frameworks' draws differ
    _train_alike(km, pm, x, rng.standard_normal((4, 2)).astype(np.float32), 4, 2, 1e-5)


def test_masked_batch_norm_after_a_trained_layer_matches_keras():
    """Masking -> Dense -> BatchNormalization -> relu -> LSTM: the masked moments' gradient
    reaches the Dense (the plan runs the normalization and the relu as one step)."""
    rng = np.random.default_rng(12)
    x = _padded(rng, 5, 6, 3, [6, 2, 4, 1, 5])
    y = rng.standard_normal((5, 2)).astype(np.float32)

    def build(lib):
        m = keras.layers if lib is keras else L
        inp = (keras if lib is keras else pynn).Input((6, 3))
        h = m.Dense(4)(m.Masking(0.0)(inp))
        h = m.Activation("relu")(m.BatchNormalization(momentum=0.8)(h))
        return (keras.Model if lib is keras else pynn.Model)(inp, m.LSTM(2)(h))
    km, pm = build(keras), build(pynn)
    km.set_weights(pm.get_weights())
    _train_alike(km, pm, x, y, 5, 3, 1e-5)
    np.testing.assert_allclose(pm.predict(x, verbose=0), np.asarray(km.predict(x, verbose=0)),
                               atol=1e-5)


def test_masked_average_pooling_gradient_matches_finite_differences():
    from tests.reference.gradcheck import numerical_grad

    rng = np.random.default_rng(8)
    layer = L.GlobalAveragePooling1D(dtype="float64")
    x = rng.standard_normal((3, 5, 2))
    mask = np.array([[1, 1, 0, 1, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]], bool)
    r = rng.standard_normal((3, 2))
    layer(x)
    y = layer.call(x, training=True, mask=mask)
    np.testing.assert_allclose(y[0], x[0, [0, 1, 3]].mean(axis=0))
    dx = layer.backward(r)
    np.testing.assert_allclose(
        dx, numerical_grad(lambda: float(np.sum(layer.call(x, mask=mask) * r)), x), atol=1e-8)


def test_masked_sequence_loss_and_one_epoch_match_keras():
    rng = np.random.default_rng(9)
    idx = rng.integers(1, 12, size=(6, 5))
    idx[0, 3:] = 0
    idx[2, 1:] = 0
    y = rng.standard_normal((6, 5, 2)).astype(np.float32)

    def build(lib):
        m = keras.layers if lib is keras else L
        inp = (keras if lib is keras else pynn).Input((5,), dtype="int32")
        h = m.GRU(3, return_sequences=True)(m.Embedding(12, 4, mask_zero=True)(inp))
        return (keras.Model if lib is keras else pynn.Model)(inp, m.Dense(2)(h))
    km, pm = build(keras), build(pynn)
    pm.set_weights(km.get_weights())
    km.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    pm.compile(optimizer=pynn.optimizers.SGD(0.1), loss="mse")
    want = km.evaluate(idx, y, batch_size=6, verbose=0)
    got = pm.evaluate(idx, y, batch_size=6, verbose=0)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    km.fit(idx, y, batch_size=3, epochs=1, shuffle=False, verbose=0)
    pm.fit(idx, y, batch_size=3, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(pm.get_weights(), km.get_weights()):
        np.testing.assert_allclose(a, np.asarray(b), atol=1e-3)


def test_masked_sample_weight_is_kerass_apply_mask():
    from pynn.losses import masked_sample_weight

    mask = np.array([[1, 1, 0], [0, 0, 0]], bool)
    y_pred = np.zeros((2, 3, 4), np.float32)
    w = masked_sample_weight(mask, np.array([2.0, 5.0], np.float32), y_pred)
    # total 6 entries, 2 valid: weight 6/2 on each valid entry, times its sample's weight
    np.testing.assert_allclose(w, [[6, 6, 0], [0, 0, 0]])
    assert masked_sample_weight(np.ones((2, 4), bool), None, y_pred) is None


def test_sequential_chain_carries_the_mask():
    idx = np.random.default_rng(10).integers(1, 10, size=(4, 6))
    idx[1, 2:] = 0
    idx[3, :] = 0
    km = keras.Sequential([keras.Input((6,)), keras.layers.Embedding(10, 3, mask_zero=True),
                           keras.layers.LSTM(4)])
    pm = pynn.Sequential([L.Input((6,)), L.Embedding(10, 3, mask_zero=True), L.LSTM(4)])
    pm.set_weights(km.get_weights())
    np.testing.assert_allclose(pm.predict(idx, verbose=0),
                               np.asarray(km.predict(idx, verbose=0)), atol=1e-5)


@pytest.mark.parametrize("merge", ["Add", "Average", "Concatenate"])
def test_mask_crosses_merges_and_the_inference_plans_stand_ins(merge):
    # predict runs Dense through the sparse stand-in and Dense + BatchNormalization as one
    # folded step: both must pass the mask on, as the training path's layers do.
    rng = np.random.default_rng(11)
    a, b = rng.integers(1, 15, size=(2, 5, 7))
    a[0, 3:], b[0, 5:], a[2, 2:], b[3, :] = 0, 0, 0, 0

    def build(lib):
        m = keras.layers if lib is keras else L
        ia = (keras if lib is keras else pynn).Input((7,), dtype="int32")
        ib = (keras if lib is keras else pynn).Input((7,), dtype="int32")
        h = getattr(m, merge)()([m.Embedding(15, 4, mask_zero=True)(ia),
                                 m.Embedding(15, 4, mask_zero=True)(ib)])
        h = m.BatchNormalization()(m.Dense(3)(h))
        h = m.GlobalAveragePooling1D()(m.Dense(2)(h))
        return (keras.Model if lib is keras else pynn.Model)([ia, ib], h)
    km, pm = build(keras), build(pynn)
    for w in km.weights:
        w.assign(rng.standard_normal(w.shape).astype("float32") * 0.5
                 + (1.5 if "variance" in w.path else 0.0))
    pm.set_weights(km.get_weights())
    expected = np.asarray(km.predict([a, b], verbose=0))
    np.testing.assert_allclose(pm.predict([a, b], verbose=0), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(pm([a, b])), expected, atol=1e-5)
