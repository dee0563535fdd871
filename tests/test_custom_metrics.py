"""Custom metrics with sample_weight (issue 13): functions (MeanMetricWrapper) and Keras-style
Metric subclasses (add_variable, update_state(y_true, y_pred, sample_weight)) weighted as
Keras 3 weighs them, through compile(weighted_metrics=...), fit and evaluate."""

import os

import numpy as np
import pytest

import pynn
from pynn import layers, ops


def abs_error(y_true, y_pred):
    return ops.mean(ops.abs(y_pred - y_true), axis=-1)


def abs_error_elementwise(y_true, y_pred):
    return ops.abs(y_pred - y_true)


class WeightedPositives(pynn.metrics.Metric):
    """Keras's documented pattern: state from add_variable, weights applied by hand."""

    def __init__(self, name="weighted_positives", **kwargs):
        super().__init__(name=name, **kwargs)
        self.positives = self.add_variable(shape=(), initializer="zeros", name="positives")
        self.seen = self.add_variable(shape=(), initializer="zeros", name="seen")

    def update_state(self, y_true, y_pred, sample_weight=None):
        values = ops.cast(ops.greater(ops.sum(y_pred, axis=-1), 0.0), "float32")
        w = ops.ones_like(values) if sample_weight is None else ops.cast(sample_weight,
                                                                          "float32")
        self.positives.assign_add(ops.sum(values * w))
        self.seen.assign_add(ops.sum(w))

    def result(self):
        return ops.divide(self.positives, ops.maximum(self.seen, 1.0))


def _weighted_mean(values, w):
    return float(np.sum(values * w) / np.sum(w))


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((30, 4)).astype(np.float32)
    y = rng.standard_normal((30, 3)).astype(np.float32)
    w = rng.uniform(0.1, 2.0, 30).astype(np.float32)
    return x, y, w


@pytest.mark.parametrize("fn", [abs_error, abs_error_elementwise])
def test_function_metric_weighted_update(fn):
    rng = np.random.default_rng(1)
    t, p = rng.standard_normal((2, 6, 5)).astype(np.float32)
    w = rng.uniform(0.1, 2.0, 6).astype(np.float32)
    m = pynn.metrics.get(fn)
    m.update_state(t, p, sample_weight=w)
    m.update_state(t[:2], p[:2], sample_weight=w[:2])
    per_sample = np.abs(p - t).astype(np.float64).mean(-1)
    want = _weighted_mean(np.concatenate([per_sample, per_sample[:2]]),
                          np.concatenate([w, w[:2]]))
    assert abs(m.result() - want) < 1e-6
    m.reset_state()
    m.update_state(t, p)
    assert abs(m.result() - per_sample.mean()) < 1e-6
    with pytest.raises(ValueError, match="sample_weight of shape"):
        m.update_state(t, p, sample_weight=np.ones(5))


def test_weighted_metrics_in_compile_fit_and_evaluate():
    x, y, w = _data()
    model = pynn.Sequential([layers.Input((4,)), layers.Dense(3)])
    model.compile("sgd", "mse", metrics=[abs_error, WeightedPositives()],
                  weighted_metrics=[abs_error, WeightedPositives()])
    logs = model.evaluate(x, y, sample_weight=w, batch_size=7, verbose=0, return_dict=True)
    pred = model.predict(x, verbose=0).astype(np.float64)
    err = np.abs(pred - y).mean(-1)
    pos = (pred.sum(-1) > 0).astype(np.float64)
    # metrics= ignore the weights, weighted_metrics= use them; both log under the metric's
    # name, the weighted one after the plain one (as Keras orders them).
    plain, weighted = (v for k, v in logs.items() if k.endswith("abs_error"))
    assert abs(plain - err.mean()) < 1e-5
    assert abs(weighted - _weighted_mean(err, w)) < 1e-5
    plain, weighted = (v for k, v in logs.items() if k.endswith("weighted_positives"))
    assert abs(plain - pos.mean()) < 1e-6
    assert abs(weighted - _weighted_mean(pos, w)) < 1e-5
    history = model.fit(x, y, sample_weight=w, epochs=2, batch_size=10, verbose=0)
    assert all(np.isfinite(v).all() for v in history.history.values())


def test_metric_variables_reset_and_read():
    m = WeightedPositives()
    m.update_state(np.zeros((3, 2)), np.ones((3, 2)), sample_weight=np.array([1.0, 2, 3]))
    assert float(m.result()) == 1.0 and float(m.seen) == 6.0
    m.reset_state()
    assert float(m.positives) == 0.0 and float(m.seen) == 0.0


def test_keras_parity_of_a_weighted_function_metric():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(4)
    t, p = rng.standard_normal((2, 5, 3, 4)).astype(np.float32)
    for w in (rng.uniform(0.1, 2, 5), rng.uniform(0.1, 2, (5, 3)),
              rng.uniform(0.1, 2, (5, 3, 1))):
        w = w.astype(np.float32)
        ours = pynn.metrics.get(abs_error_elementwise)
        ours.update_state(t, p, sample_weight=w)

        def k_fn(a, b):
            return keras.ops.abs(b - a)

        theirs = keras.metrics.MeanMetricWrapper(k_fn)
        theirs.update_state(t, p, sample_weight=w)
        assert abs(float(ours.result()) - float(theirs.result())) < 1e-5, w.shape
