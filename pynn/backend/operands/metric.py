"""Operands of the metric ops (native/metric.pyx, pynn/backend/opencl/metric.py)."""

import math

import numpy as np

from pynn.backend.api import METRIC_MODES
from pynn.backend.operands.loss import dense_targets, sparse_labels


def checked_threshold(op, value):
    try:
        thr = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: 'threshold' must be a number, got {value!r}") from None
    if math.isnan(thr):
        raise ValueError(f"{op}: 'threshold' must not be NaN")
    return thr


def _ranked(arrays, op, y_true, y_pred, sparse):
    """-> (targets, scores (rows, K)): flat labels when sparse, else one-hot (rows, K).
    Sequence outputs (N, T, K) count per step, as Keras's do."""
    y_pred = arrays.float_input(op, "y_pred", y_pred)
    if y_pred.ndim < 2:
        raise ValueError(f"{op}: 'y_pred' must have shape (N, K) or (N, ..., K), got "
                         f"{y_pred.shape}")
    if y_true is None:
        raise ValueError(f"{op}: 'y_true' is required, got None")
    k = y_pred.shape[-1]
    rows = y_pred.size // k if k else 0
    scores = y_pred.reshape(rows, k)
    if sparse:
        return sparse_labels(arrays, op, y_true, y_pred.shape[:-1], k), scores
    t = arrays.float_input(op, "y_true", y_true, like=y_pred)
    if t.shape != y_pred.shape:
        raise ValueError(f"{op}: one-hot 'y_true' must have the shape of 'y_pred' "
                         f"{y_pred.shape}, got {t.shape}")
    return t.reshape(rows, k), scores


def accuracy_count(arrays, y_true, y_pred, mode, threshold):
    """-> ("binary", y_true, y_pred, threshold) or (mode, targets, scores (rows, K), None)."""
    op = "accuracy_count"
    if mode not in METRIC_MODES:
        raise ValueError(f"{op}: mode must be one of {METRIC_MODES}, got {mode!r}")
    if mode == "binary":
        thr = checked_threshold(op, threshold)
        if y_true is None:
            raise ValueError(f"{op}: 'y_true' is required, got None")
        y_pred = arrays.float_input(op, "y_pred", y_pred)
        return mode, dense_targets(arrays, op, y_true, y_pred), y_pred, thr
    targets, scores = _ranked(arrays, op, y_true, y_pred, mode == "sparse")
    return mode, targets, scores, None


def top_k_count(arrays, y_true, y_pred, k, sparse):
    """-> (targets, scores (rows, K), k, sparse)."""
    op = "top_k_count"
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"{op}: 'k' must be an int >= 1, got {k!r}")
    sparse = bool(sparse)
    targets, scores = _ranked(arrays, op, y_true, y_pred, sparse)
    return targets, scores, min(int(k), 2**31 - 1), sparse


def confusion_counts(arrays, y_true, y_pred, threshold):
    """-> (y_true, y_pred, threshold) with y_true shaped like y_pred."""
    op = "confusion_counts"
    thr = checked_threshold(op, threshold)
    if y_true is None:
        raise ValueError(f"{op}: 'y_true' is required, got None")
    y_pred = arrays.float_input(op, "y_pred", y_pred)
    return dense_targets(arrays, op, y_true, y_pred), y_pred, thr


# -- F-beta and AUC counts (issue 15) ----------------------------------------------------------

def fbeta_counts(arrays, y_true, y_pred, threshold):
    """-> (y_true (N, K), y_pred (N, K), threshold or None): Keras's FBetaScore takes 2-D
    inputs only; None thresholds at each row's max (keras/src/metrics/f_score_metrics.py)."""
    op = "fbeta_counts"
    thr = None if threshold is None else checked_threshold(op, threshold)
    if y_true is None:
        raise ValueError(f"{op}: 'y_true' is required, got None")
    y_pred = arrays.float_input(op, "y_pred", y_pred)
    if y_pred.ndim != 2:
        raise ValueError(f"{op}: 'y_pred' must have rank 2 (N, K), got shape {y_pred.shape}")
    t = arrays.float_input(op, "y_true", y_true, like=y_pred)
    if t.shape != y_pred.shape:
        raise ValueError(f"{op}: 'y_true' must have the shape of 'y_pred' {y_pred.shape}, got "
                         f"{t.shape}")
    return t, y_pred, thr


def threshold_counts(arrays, y_true, y_pred, thresholds):
    """-> (y_true flat, y_pred flat, thresholds as a sorted float64 host array): every element
    counts (Keras's AUC with multi_label=False); a label is positive when y_true != 0."""
    op = "threshold_counts"
    th = np.asarray(thresholds, dtype=np.float64)
    if th.ndim != 1 or th.size < 2:
        raise ValueError(f"{op}: 'thresholds' must be a 1-D sequence of at least 2 numbers, "
                         f"got shape {th.shape}")
    if not np.all(np.isfinite(th)) or np.any(np.diff(th) <= 0):
        raise ValueError(f"{op}: 'thresholds' must be finite and strictly increasing")
    if y_true is None:
        raise ValueError(f"{op}: 'y_true' is required, got None")
    y_pred = arrays.float_input(op, "y_pred", y_pred)
    t = dense_targets(arrays, op, y_true, y_pred)
    return t.reshape(t.size), y_pred.reshape(y_pred.size), th


def counts_from_buckets(hist):
    """(T + 1, 2) bucket histogram [negatives, positives] -> (4, T) tp, fp, tn, fn: both
    backends' last step of threshold_counts, host arithmetic on T numbers. Bucket b holds the
    elements above thresholds 0..b-1."""
    above = np.cumsum(hist[::-1], axis=0)[::-1][1:]  # elements in buckets > i
    tp, fp = above[:, 1], above[:, 0]
    pos, neg = hist[:, 1].sum(), hist[:, 0].sum()
    return np.stack([tp, fp, neg - fp, pos - tp]).astype(np.int64)


def confusion_matrix(arrays, y_true, y_pred, num_classes):
    """-> (true labels flat, predicted labels flat, num_classes): both int class ids of one
    shape (Keras's MeanIoU with sparse_y_true and sparse_y_pred: y_pred holds class ids)."""
    op = "confusion_matrix"
    if isinstance(num_classes, (bool, np.bool_)) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 1:
        raise ValueError(f"{op}: 'num_classes' must be an int >= 1, got {num_classes!r}")
    k = int(num_classes)
    if y_true is None or y_pred is None:
        raise ValueError(f"{op}: 'y_true' and 'y_pred' are required")
    t = arrays.label_input(op, "y_true", y_true)
    p = arrays.label_input(op, "y_pred", y_pred)
    if t.size != p.size:
        raise ValueError(f"{op}: 'y_true' and 'y_pred' must hold as many labels, got shapes "
                         f"{tuple(t.shape)} and {tuple(p.shape)}")
    return (arrays.check_labels(op, t.reshape(t.size), k),
            arrays.check_labels(op, p.reshape(p.size), k), k)
