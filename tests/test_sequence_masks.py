"""Masks beyond the recurrent kernels (issue 14): the mask reaching a model's output weighs
its metrics (masked steps do not count, as in Keras), and TimeDistributed hands the mask to
an inner layer that takes one."""

import os

import numpy as np
import pytest

import pynn

V, T, UNITS, K = 13, 7, 5, 4


def padded_tokens(n, seed=0):
    """Token ids (n, T) in [1, V) padded with zeros after a random length (one row fully
    padded, one unpadded), and per-step class targets."""
    rng = np.random.default_rng(seed)
    x = rng.integers(1, V, size=(n, T))
    lengths = rng.integers(1, T + 1, size=n)
    lengths[0], lengths[1] = 0, T
    x[np.arange(T)[None, :] >= lengths[:, None]] = 0
    y = rng.integers(0, K, size=(n, T))
    return x.astype(np.int32), y.astype(np.int32)


def tagger(lib, masking=True):
    return lib.Sequential([
        lib.layers.Input((T,), dtype="int32"),
        lib.layers.Embedding(V, 6, mask_zero=masking),
        lib.layers.LSTM(UNITS, return_sequences=True),
        lib.layers.Dense(K, activation="softmax"),
    ])


def test_metrics_skip_masked_steps():
    x, y = padded_tokens(9)
    model = tagger(pynn)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
                  metrics=["sparse_categorical_accuracy"])
    logs = model.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)
    pred = model.predict(x, verbose=0).argmax(-1)
    valid = x != 0
    want = float(np.sum((pred == y) & valid) / valid.sum())
    assert logs["sparse_categorical_accuracy"] == pytest.approx(want, abs=1e-6)
    everything = float(np.mean(pred == y))
    assert want != pytest.approx(everything, abs=1e-6)  # the data makes the mask matter


def test_weighted_metrics_multiply_mask_and_sample_weight():
    x, y = padded_tokens(8, seed=3)
    sw = np.linspace(0.5, 2.0, len(x))
    model = tagger(pynn)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
                  weighted_metrics=["sparse_categorical_accuracy"])
    logs = model.evaluate(x, y, sample_weight=sw, batch_size=8, verbose=0, return_dict=True)
    pred = model.predict(x, verbose=0).argmax(-1)
    w = (x != 0) * sw[:, None]
    want = float(np.sum(w * (pred == y)) / w.sum())
    assert logs["sparse_categorical_accuracy"] == pytest.approx(want, abs=1e-6)


def test_metric_masking_matches_keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("these parity tests want keras on torch")
    x, y = padded_tokens(12, seed=5)
    theirs = tagger(keras)
    ours = tagger(pynn)
    ours.set_weights(theirs.get_weights())
    for model in (theirs, ours):
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
                      metrics=["sparse_categorical_accuracy"])
    want = theirs.evaluate(x, y, batch_size=5, verbose=0, return_dict=True)
    got = ours.evaluate(x, y, batch_size=5, verbose=0, return_dict=True)
    for key in ("loss", "sparse_categorical_accuracy"):
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key


# -- TimeDistributed hands the mask on ----------------------------------------------------
T2 = 5


def nested_tokens(n, seed=7):
    """Ids (n, T, T2): each inner sequence padded with zeros after its own length (some
    inner sequences fully padded, some full)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(1, V, size=(n, T, T2))
    lengths = rng.integers(0, T2 + 1, size=(n, T))
    x[np.arange(T2)[None, None, :] >= lengths[..., None]] = 0
    return x.astype(np.int32)


def nested_model(lib):
    return lib.Sequential([
        lib.layers.Input((T, T2), dtype="int32"),
        lib.layers.Embedding(V, 6, mask_zero=True),
        lib.layers.TimeDistributed(lib.layers.LSTM(UNITS)),
    ])


def test_time_distributed_passes_the_mask_to_its_inner_layer():
    x = nested_tokens(4)
    model = nested_model(pynn)
    got = model.predict(x, verbose=0)
    embed, td = model.layers[0], model.layers[1]
    emb = embed.call(x.reshape(-1, T2))
    want = td.layer.call(emb, mask=x.reshape(-1, T2) != 0).reshape(got.shape)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    unmasked = td.layer.call(emb).reshape(got.shape)
    assert np.abs(unmasked - got).max() > 1e-3  # the mask changed the result


def test_time_distributed_mask_backward_matches_finite_differences():
    rng = np.random.default_rng(11)
    n = 3
    x = rng.standard_normal((n, T, T2, 2))
    mask = rng.random((n, T, T2)) > 0.3
    layer = pynn.layers.TimeDistributed(pynn.layers.LSTM(3, dtype="float64"), dtype="float64")
    layer.build(x.shape)
    dy = rng.standard_normal((n, T, 3))
    layer.call(x, training=True, mask=mask)
    dx = layer.backward(dy)

    def loss(xv):
        return float(np.sum(layer.call(xv, mask=mask) * dy))

    eps, idx = 1e-6, [(0, 0, 0, 0), (1, 3, 2, 1), (2, 6, 4, 0), (1, 2, 1, 1)]
    for i in idx:
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        assert dx[i] == pytest.approx((loss(xp) - loss(xm)) / (2 * eps), rel=1e-6, abs=1e-9)


def test_time_distributed_rejects_a_mask_of_another_shape():
    layer = pynn.layers.TimeDistributed(pynn.layers.LSTM(3))
    x = np.ones((2, T, T2, 2), np.float32)
    layer.build(x.shape)
    with pytest.raises(ValueError, match=r"TimeDistributed .*mask.*\(2, 7\).*got shape \(2, 6"):
        layer.call(x, mask=np.ones((2, 6, T2), bool))


def test_time_distributed_mask_matches_keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("these parity tests want keras on torch")
    x = nested_tokens(6, seed=9)
    theirs, ours = nested_model(keras), nested_model(pynn)
    ours.set_weights(theirs.get_weights())
    want = np.asarray(theirs.predict(x, verbose=0))
    np.testing.assert_allclose(ours.predict(x, verbose=0), want, rtol=1e-5, atol=1e-6)


@pytest.mark.opencl
def test_masked_metrics_and_time_distributed_on_opencl_match_cpu(backend_opencl):
    x = nested_tokens(6, seed=4)
    tokens, y = padded_tokens(6, seed=4)

    def run(device):
        pynn.set_device(device)
        try:
            pynn.utils.set_random_seed(1)
            nested = nested_model(pynn).predict(x, verbose=0)
            model = tagger(pynn)
            model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
                          metrics=["sparse_categorical_accuracy"])
            logs = model.evaluate(tokens, y, batch_size=4, verbose=0, return_dict=True)
            return nested, logs
        finally:
            pynn.set_device("cpu")

    (n_cpu, l_cpu), (n_ocl, l_ocl) = run("cpu"), run("opencl")
    np.testing.assert_allclose(n_ocl, n_cpu, atol=1e-5)
    for key in l_cpu:
        assert l_ocl[key] == pytest.approx(l_cpu[key], abs=1e-5), key
