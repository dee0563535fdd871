"""Float64 NumPy oracles for the metric counts (native/metric.pyx, opencl/metric.cl), written
from Keras 3's metric functions (keras/src/metrics/accuracy_metrics.py)."""

import numpy as np


def _threshold_in_dtype(y_pred, threshold):
    """Keras compares against a tensor of the prediction's float dtype."""
    dt = np.asarray(y_pred).dtype
    return float(dt.type(threshold)) if np.issubdtype(dt, np.floating) else float(threshold)


def accuracy_count_ref(y_true, y_pred, mode, threshold=0.5):
    p = np.asarray(y_pred, dtype=np.float64)
    if mode == "binary":
        t = np.asarray(y_true, dtype=np.float64).reshape(p.shape)
        thr = _threshold_in_dtype(y_pred, threshold)
        return int(np.sum(t == (p > thr).astype(np.float64)))
    pred = np.argmax(p, axis=-1)  # NumPy argmax: first index on ties, like torch's
    if mode == "categorical":
        true = np.argmax(np.asarray(y_true, dtype=np.float64), axis=-1)
    else:
        true = np.asarray(y_true).reshape(-1).astype(np.int64)
    return int(np.sum(true == pred))


def top_k_count_ref(y_true, y_pred, k, sparse):
    """Keras's in_top_k: the target's score is >= the k-th largest score (ties count in)."""
    p = np.asarray(y_pred, dtype=np.float64)
    if sparse:
        true = np.asarray(y_true).reshape(-1).astype(np.int64)
    else:
        true = np.argmax(np.asarray(y_true, dtype=np.float64), axis=-1)
    count = 0
    for row, label in zip(p, true):
        kth = np.sort(row)[::-1][min(k, row.size) - 1]
        count += int(row[label] >= kth)
    return count


def confusion_counts_ref(y_true, y_pred, threshold=0.5):
    p = np.asarray(y_pred, dtype=np.float64).reshape(-1) > _threshold_in_dtype(y_pred,
                                                                                threshold)
    t = np.asarray(y_true, dtype=np.float64).reshape(-1) != 0
    return int(np.sum(t & p)), int(np.sum(~t & p)), int(np.sum(t & ~p))


# -- F-beta and AUC counts (issue 15), from keras/src/metrics/{f_score,confusion}_metrics.py --

def fbeta_counts_ref(y_true, y_pred, threshold=None):
    """(4, K): per class (tp, fp, fn, support); Keras's FBetaScore predictions."""
    p = np.asarray(y_pred, dtype=np.float64)
    t = np.asarray(y_true, dtype=np.float64)
    if threshold is None:
        pred = (p >= p.max(axis=-1, keepdims=True)) & (np.abs(p) > 1e-9)
    else:
        pred = p > _threshold_in_dtype(y_pred, threshold)
    pred = pred.astype(np.float64)
    return np.stack([np.sum(pred * t, axis=0), np.sum(pred * (1 - t), axis=0),
                     np.sum((1 - pred) * t, axis=0), np.sum(t, axis=0)])


def threshold_counts_ref(y_true, y_pred, thresholds):
    """(4, T): per threshold (tp, fp, tn, fn) over every element, y_pred > threshold (the
    threshold rounded to y_pred's dtype), label y_true != 0."""
    dt = np.asarray(y_pred).dtype.type
    p = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    t = np.asarray(y_true, dtype=np.float64).reshape(-1) != 0
    out = []
    for th in thresholds:
        pred = p > float(dt(th))
        out.append([np.sum(pred & t), np.sum(pred & ~t), np.sum(~pred & ~t), np.sum(~pred & t)])
    return np.array(out, dtype=np.int64).T


def confusion_matrix_ref(y_true, y_pred, num_classes):
    """(K, K) counts[true, pred] of integer class ids."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    for a, b in zip(np.asarray(y_true).reshape(-1).astype(np.int64),
                    np.asarray(y_pred).reshape(-1).astype(np.int64)):
        cm[a, b] += 1
    return cm
