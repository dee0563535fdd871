"""Metrics' update_state(..., sample_weight) against Keras 3's weighted updates, over both
backends (weighted updates count on the host; the unweighted path is tests/test_metric.py's).
"""

import numpy as np
import pytest

from pynn import metrics
from tests.test_metric import _keras_metrics


def _data(rng, kind, rows):
    if kind == "binary":
        p = rng.uniform(size=(rows, 3)).astype(np.float32)
        return (rng.uniform(size=(rows, 3)) < p).astype(np.float32), p
    if kind == "binary1":
        p = rng.uniform(size=(rows, 1)).astype(np.float32)
        return (rng.uniform(size=(rows, 1)) < p).astype(np.float32), p
    if kind == "regression":
        return (rng.normal(size=(rows, 4)).astype(np.float32),
                rng.normal(size=(rows, 4)).astype(np.float32))
    p = rng.uniform(size=(rows, 6)).astype(np.float32)
    labels = rng.integers(0, 6, rows)
    if kind == "sparse":
        return labels.astype(np.int32), p
    return np.eye(6, dtype=np.float32)[labels], p


CASES = [
    ("BinaryAccuracy", {}, "binary"), ("BinaryAccuracy", {"threshold": 0.3}, "binary1"),
    ("CategoricalAccuracy", {}, "categorical"),
    ("SparseCategoricalAccuracy", {}, "sparse"),
    ("TopKCategoricalAccuracy", {"k": 2}, "categorical"),
    ("SparseTopKCategoricalAccuracy", {"k": 3}, "sparse"),
    ("Precision", {}, "binary"), ("Recall", {"thresholds": 0.4}, "binary1"),
    ("AUC", {}, "binary"), ("AUC", {"curve": "PR", "num_thresholds": 23}, "binary1"),
    ("AUC", {"multi_label": True}, "binary"),
    ("AUC", {"from_logits": True, "summation_method": "majoring"}, "binary"),
    ("MeanSquaredError", {}, "regression"), ("MeanAbsoluteError", {}, "regression"),
    ("RootMeanSquaredError", {}, "regression"),
]


@pytest.mark.parametrize("cls, kwargs, kind", CASES, ids=[f"{c}-{k}" for c, k, _ in CASES])
def test_weighted_updates_match_keras(backend, monkeypatch, cls, kwargs, kind):
    import pynn.backend

    keras = _keras_metrics()
    monkeypatch.setattr(pynn.backend, "current", lambda: backend.ops)
    rng = np.random.default_rng(len(cls) + len(kwargs))
    mine, theirs = getattr(metrics, cls)(**kwargs), getattr(keras.metrics, cls)(**kwargs)
    for rows in (5, 9, 13):
        y_true, y_pred = _data(rng, kind, rows)
        w = rng.uniform(0, 2, rows).astype(np.float32)
        w[0] = 0.0
        up = backend.up if not np.issubdtype(y_true.dtype, np.integer) else np.asarray
        mine.update_state(up(y_true), backend.up(y_pred), sample_weight=w)
        theirs.update_state(y_true, y_pred, sample_weight=w)
        np.testing.assert_allclose(mine.result(), keras.ops.convert_to_numpy(theirs.result()),
                                   rtol=2e-5, atol=1e-6, err_msg=f"{cls} {kwargs}")


def test_weights_of_ones_equal_the_unweighted_update():
    rng = np.random.default_rng(3)
    y_true, y_pred = _data(rng, "categorical", 11)
    a, b = metrics.CategoricalAccuracy(), metrics.CategoricalAccuracy()
    a.update_state(y_true, y_pred)
    b.update_state(y_true, y_pred, sample_weight=np.ones(11))
    assert a.result() == pytest.approx(b.result())


def test_bad_sample_weights():
    m = metrics.BinaryAccuracy()
    with pytest.raises(ValueError, match=r"binary_accuracy: sample_weight of shape \(3,\) does "
                                         r"not fit predictions of shape \(4, 2\)"):
        m.update_state(np.zeros((4, 2)), np.zeros((4, 2)), sample_weight=np.ones(3))
    with pytest.raises(NotImplementedError, match=r"f1_score: sample_weight is not supported"):
        metrics.F1Score().update_state(np.zeros((4, 2)), np.zeros((4, 2)), np.ones(4))
