"""NaN and +-inf through every loss and metric, on both backends: the OpenCL kernels give
exactly the CPU kernels' answers (NaN where the CPU has NaN, the same finite values
elsewhere), and a model whose predictions turn NaN on OpenCL trips TerminateOnNaN as it does
on the CPU (issue 11: the OpenCL clip used to hide NaN behind the clipped loss)."""

import numpy as np
import pytest

import pynn
from pynn import layers
from pynn.backend.api import LOSSES

BACKENDS = ["cpu", pytest.param("opencl", marks=pytest.mark.opencl)]
SPECIALS = {"nan": np.nan, "+inf": np.inf, "-inf": -np.inf}
# Losses of integer class ids (Keras 3's CategoricalGeneralizedCrossEntropy appended)
SPARSE_LABEL_LOSSES = ("sparse_categorical_crossentropy", "categorical_generalized_cross_entropy")


def _ops(name):
    if name == "cpu":
        from pynn.backend import cpu

        return cpu
    from pynn.backend import opencl

    opencl.select_device("opencl")
    return opencl


def _data(loss, rng, special, from_logits):
    """y_pred (5, 4) with one special value in row 1 and every entry of row 3 special;
    targets of the loss's kind."""
    if from_logits:
        y_pred = rng.normal(size=(5, 4)) * 2
    else:
        y_pred = rng.uniform(0.05, 0.95, size=(5, 4))
    y_pred[1, 2] = special
    y_pred[3, :] = special
    if loss in SPARSE_LABEL_LOSSES:
        y_true = rng.integers(0, 4, size=5).astype(np.int32)
    elif loss == "categorical_crossentropy":
        y_true = np.eye(4)[rng.integers(0, 4, size=5)]
    elif loss == "binary_crossentropy":
        y_true = rng.integers(0, 2, size=(5, 4)).astype(np.float64)
    else:
        y_true = rng.normal(size=(5, 4))
    return y_true, y_pred.astype(np.float32)


def _same(got, want, what):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{what}: NaN pattern {got} vs {want}"
    finite = ~np.isnan(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=2e-5, atol=1e-6, err_msg=what)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("special", SPECIALS)
@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("loss", LOSSES)
def test_losses_on_nonfinite_predictions(backend, loss, from_logits, special):
    from pynn.backend import cpu

    ops = _ops(backend)
    rng = np.random.default_rng(LOSSES.index(loss))
    y_true, y_pred = _data(loss, rng, SPECIALS[special], from_logits)
    dtype = np.int32 if loss in SPARSE_LABEL_LOSSES else np.float32
    want_loss, want_grad = cpu.loss_forward_backward(loss, y_true.astype(dtype), y_pred,
                                                     from_logits, None, True)
    got_loss, got_grad = ops.loss_forward_backward(loss, ops.asarray(y_true, dtype),
                                                   ops.asarray(y_pred), from_logits, None,
                                                   True)
    what = f"{backend} {loss} from_logits={from_logits} {special}"
    if special == "nan":
        # Keras: a NaN prediction makes the batch loss NaN, clipped or not.
        assert np.isnan(want_loss), f"cpu {loss}: NaN prediction gave {want_loss}"
    _same(got_loss, want_loss, what + " loss")
    _same(ops.to_numpy(got_grad), want_grad, what + " gradient")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("special", SPECIALS)
def test_metrics_on_nonfinite_predictions(backend, special):
    from pynn.backend import cpu

    ops = _ops(backend)
    rng = np.random.default_rng(7)
    y_true, y_pred = _data("categorical_crossentropy", rng, SPECIALS[special], False)
    labels = y_true.argmax(axis=1).astype(np.int32)
    up = ops.asarray
    calls = {
        "binary accuracy": lambda b, t, p: b.accuracy_count(t, p, "binary", 0.5),
        "categorical accuracy": lambda b, t, p: b.accuracy_count(t, p, "categorical", 0.5),
        "top-2": lambda b, t, p: b.top_k_count(t, p, 2, False),
        "confusion": lambda b, t, p: b.confusion_counts(t, p, 0.5),
    }
    for what, call in calls.items():
        want = call(cpu, y_true.astype(np.float32), y_pred)
        got = call(ops, up(y_true), up(y_pred))
        assert got == want, f"{backend} {what} with {special}: {got} != cpu {want}"
    want = cpu.accuracy_count(labels, y_pred, "sparse", 0.5)
    assert ops.accuracy_count(up(labels, np.int32), up(y_pred), "sparse", 0.5) == want
    want = cpu.top_k_count(labels, y_pred, 3, True)
    assert ops.top_k_count(up(labels, np.int32), up(y_pred), 3, True) == want


@pytest.mark.parametrize("backend", BACKENDS)
def test_terminate_on_nan_fires_for_probability_losses(backend, seeded, capsys):
    """A softmax model fed NaN inputs: the loss is NaN on every backend, so TerminateOnNaN
    stops the run after the first batch instead of training on to all-NaN weights."""
    previous = pynn.get_device()
    try:
        pynn.set_device(backend)
        model = pynn.Sequential([layers.Input(shape=(3,)), layers.Dense(4, activation="softmax")])
        model.compile(optimizer="sgd", loss="categorical_crossentropy")
        x = np.full((8, 3), np.nan, np.float32)
        y = np.eye(4, dtype=np.float32)[np.arange(8) % 4]
        history = model.fit(x, y, batch_size=4, epochs=3, verbose=0,
                            callbacks=[pynn.callbacks.TerminateOnNaN()])
        assert len(history.history["loss"]) == 1
        assert np.isnan(history.history["loss"][0])
    finally:
        pynn.set_device(previous)
