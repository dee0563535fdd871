"""Metric counts over one batch (the caller sums them and divides): Keras 3 semantics.

Legend: N rows, K classes (the last axis of a 2-D y_pred), n elements (binary metrics).

- binary accuracy (keras/src/metrics/accuracy_metrics.py): y_pred > threshold is cast to
  {0, 1} and compared for equality with y_true (so a soft target 0.7 never matches), on any
  shape; y_true may differ from y_pred by a trailing axis of 1.
- categorical accuracy: argmax(y_true) == argmax(y_pred); sparse: label == argmax(y_pred).
  argmax takes the first index on ties and treats NaN as the largest (torch, NumPy).
- top-k (ops.in_top_k, torch backend): the target is in the top k when its score is >= the
  k-th largest score of the row, i.e. when fewer than k scores are strictly greater: ties
  at the boundary all count as in. k >= K counts every row (Keras's torch backend raises).
- confusion counts (keras/src/metrics/metrics_utils.py): a label is positive when
  y_true != 0, a prediction when y_pred > threshold; (tp, fp, fn) over all elements.

Counts are integer sums, exact and order-free, so any thread count gives the same answer.
The threshold is rounded to y_pred's dtype before comparing, as Keras's tensors do.
"""
import math

import numpy as np

from cython.parallel cimport prange

from _activation cimport floating

from pynn._native.loss import _match_target_shape, _sparse_labels
from pynn.backend._validate import as_float_array

cdef enum:
    MODE_BINARY = 0
    MODE_CATEGORICAL = 1
    MODE_SPARSE = 2

MODES = ("binary", "categorical", "sparse")


cdef inline Py_ssize_t argmax_row(const floating* a, Py_ssize_t k) noexcept nogil:
    """First index of the largest value; the first NaN wins, as in torch and NumPy."""
    cdef Py_ssize_t j, best = 0
    cdef floating v, m = a[0]
    if m != m:
        return 0
    for j in range(1, k):
        v = a[j]
        if v != v:
            return j
        if v > m:
            m = v
            best = j
    return best


cdef inline bint in_top_k(const floating* a, Py_ssize_t k, Py_ssize_t target,
                          Py_ssize_t top) noexcept nogil:
    cdef Py_ssize_t j, greater = 0
    cdef floating v = a[target]
    for j in range(k):
        if a[j] > v:
            greater += 1
    return greater < top


def _binary_matches(const floating[::1] t, const floating[::1] p, double threshold):
    cdef Py_ssize_t i, n = p.shape[0]
    cdef floating thr = <floating>threshold
    cdef long long count = 0
    with nogil:
        for i in prange(n, schedule="static"):
            count += t[i] == (1 if p[i] > thr else 0)
    return count


def _argmax_matches(const floating[:, ::1] t,    # IN (N, K) one-hot, or (0, 0) if sparse
                    const int[::1] labels,        # IN (N,) ids, or (0,) if categorical
                    const floating[:, ::1] p,     # IN (N, K) scores
                    Py_ssize_t top):              # 0: accuracy, else top-k
    cdef Py_ssize_t r, target, rows = p.shape[0], k = p.shape[1]
    cdef bint sparse = labels.shape[0] > 0
    cdef long long count = 0
    with nogil:
        for r in prange(rows, schedule="static"):
            target = labels[r] if sparse else argmax_row(&t[r, 0], k)
            if top == 0:
                count += argmax_row(&p[r, 0], k) == target
            else:
                count += in_top_k(&p[r, 0], k, target, top)
    return count


def _confusion(const floating[::1] t, const floating[::1] p, double threshold):
    cdef Py_ssize_t i, n = p.shape[0]
    cdef floating thr = <floating>threshold
    cdef long long tp = 0, fp = 0, fn = 0
    cdef bint label, pred
    with nogil:
        for i in prange(n, schedule="static"):
            label = t[i] != 0
            pred = p[i] > thr
            tp += label and pred
            fp += (not label) and pred
            fn += label and not pred
    return tp, fp, fn


def _check_threshold(op, threshold):
    try:
        thr = float(threshold)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: 'threshold' must be a number, got {threshold!r}") from None
    if math.isnan(thr):
        raise ValueError(f"{op}: 'threshold' must not be NaN")
    return thr


def _scores_2d(op, y_pred):
    y_pred = as_float_array(op, "y_pred", y_pred)
    if y_pred.ndim != 2:
        raise ValueError(f"{op}: 'y_pred' must have shape (N, K), got {y_pred.shape}")
    return y_pred


def _targets(op, y_true, y_pred, sparse):
    """(one-hot targets or an empty (0, 0), labels or an empty (0,)) for 2-D y_pred."""
    n, k = y_pred.shape
    if y_true is None:
        raise ValueError(f"{op}: 'y_true' is required, got None")
    if sparse:
        return np.empty((0, 0), y_pred.dtype), _sparse_labels(op, y_true, (n,), k)
    t = as_float_array(op, "y_true", y_true, dtype=y_pred.dtype)
    if t.shape != y_pred.shape:
        raise ValueError(f"{op}: one-hot 'y_true' must have the shape of 'y_pred' "
                         f"{y_pred.shape}, got {t.shape}")
    return t, np.empty(0, np.intc)


def accuracy_count(y_true, y_pred, mode, threshold=0.5):
    """Number of correct predictions in the batch (an int); see the design note."""
    op = "accuracy_count"
    if mode not in MODES:
        raise ValueError(f"{op}: mode must be one of {MODES}, got {mode!r}")
    if MODES.index(mode) == MODE_BINARY:
        thr = _check_threshold(op, threshold)
        if y_true is None:
            raise ValueError(f"{op}: 'y_true' is required, got None")
        y_pred = as_float_array(op, "y_pred", y_pred)
        y_true = _match_target_shape(
            op, as_float_array(op, "y_true", y_true, dtype=y_pred.dtype), y_pred)
        if y_pred.size == 0:
            return 0
        return int(_binary_matches(y_true.reshape(-1), y_pred.reshape(-1), thr))
    y_pred = _scores_2d(op, y_pred)
    t, labels = _targets(op, y_true, y_pred, mode == "sparse")
    if y_pred.size == 0:
        return 0
    return int(_argmax_matches(t, labels, y_pred, 0))


def top_k_count(y_true, y_pred, k=5, sparse=False):
    """Number of rows whose target is among the top k scores (Keras in_top_k: ties at the
    boundary count as in)."""
    op = "top_k_count"
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"{op}: 'k' must be an int >= 1, got {k!r}")
    y_pred = _scores_2d(op, y_pred)
    t, labels = _targets(op, y_true, y_pred, bool(sparse))
    if y_pred.size == 0:
        return 0
    return int(_argmax_matches(t, labels, y_pred, int(k)))


def confusion_counts(y_true, y_pred, threshold=0.5):
    """(tp, fp, fn) as ints: label positive iff y_true != 0, prediction iff y_pred >
    threshold, over every element."""
    op = "confusion_counts"
    thr = _check_threshold(op, threshold)
    if y_true is None:
        raise ValueError(f"{op}: 'y_true' is required, got None")
    y_pred = as_float_array(op, "y_pred", y_pred)
    y_true = _match_target_shape(
        op, as_float_array(op, "y_true", y_true, dtype=y_pred.dtype), y_pred)
    if y_pred.size == 0:
        return 0, 0, 0
    tp, fp, fn = _confusion(y_true.reshape(-1), y_pred.reshape(-1), thr)
    return int(tp), int(fp), int(fn)
