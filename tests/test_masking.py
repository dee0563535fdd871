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
    km.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    pm.compile(optimizer=pynn.optimizers.SGD(0.1), loss="mse")
    km.fit(x, y, batch_size=3, epochs=1, shuffle=False, verbose=0)
    pm.fit(x, y, batch_size=3, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(pm.get_weights(), km.get_weights()):
        np.testing.assert_allclose(a, np.asarray(b), atol=1e-3)


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
