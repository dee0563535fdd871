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

A training step's metrics are small (128 rows of 10 scores: about a microsecond of work), so
each loop runs on the calling thread below PARALLEL_MIN values: an OpenMP region there cost
a wake-up of the other core's thread per step (the MLP's step with metrics=["accuracy"]:
one region, 2.22 -> 2.35 ms, against none for the rest of the step).
"""
import numpy as np

from cython.parallel cimport prange

from _activation cimport floating

from pynn.backend.operands import metric as operands
from pynn.backend.operands.common import HOST

cdef enum:
    PARALLEL_MIN = 32768  # values a loop reads before it takes the OpenMP team (above)


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
        for i in prange(n, schedule="static", use_threads_if=n >= PARALLEL_MIN):
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
        for r in prange(rows, schedule="static", use_threads_if=rows * k >= PARALLEL_MIN):
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
        for i in prange(n, schedule="static", use_threads_if=n >= PARALLEL_MIN):
            label = t[i] != 0
            pred = p[i] > thr
            tp += label and pred
            fp += (not label) and pred
            fn += label and not pred
    return tp, fp, fn


def accuracy_count(y_true, y_pred, mode, threshold=0.5):
    """Number of correct predictions in the batch (an int); see the design note."""
    mode, targets, y_pred, thr = operands.accuracy_count(HOST, y_true, y_pred, mode, threshold)
    if y_pred.size == 0:
        return 0
    if mode == "binary":
        return int(_binary_matches(targets.reshape(-1), y_pred.reshape(-1), thr))
    return _ranked_count(targets, y_pred, mode == "sparse", 0)


def _ranked_count(targets, scores, sparse, top):
    if scores.size == 0:
        return 0
    if sparse:
        return int(_argmax_matches(np.empty((0, 0), scores.dtype), targets, scores, top))
    return int(_argmax_matches(targets, np.empty(0, np.intc), scores, top))


def top_k_count(y_true, y_pred, k=5, sparse=False):
    """Number of rows whose target is among the top k scores (Keras in_top_k: ties at the
    boundary count as in)."""
    targets, scores, k, sparse = operands.top_k_count(HOST, y_true, y_pred, k, sparse)
    return _ranked_count(targets, scores, sparse, k)


def confusion_counts(y_true, y_pred, threshold=0.5):
    """(tp, fp, fn) as ints: label positive iff y_true != 0, prediction iff y_pred >
    threshold, over every element."""
    y_true, y_pred, thr = operands.confusion_counts(HOST, y_true, y_pred, threshold)
    if y_pred.size == 0:
        return 0, 0, 0
    tp, fp, fn = _confusion(y_true.reshape(-1), y_pred.reshape(-1), thr)
    return int(tp), int(fp), int(fn)


# -- F-beta and AUC counts (issue 15) ----------------------------------------------------------
# fbeta_counts: per class j, over rows: tp_j = sum pred * t, fp_j = sum pred * (1 - t),
#   fn_j = sum (1 - pred) * t, support_j = sum t, pred = y_pred > threshold, or without a
#   threshold y_pred >= its row's max and |y_pred| > 1e-9 (Keras's FBetaScore). Fixed blocks of
#   ROWS_PER_BLOCK rows sum into one double partial each, then the partials add in block
#   order: the same bits for any thread count.
# threshold_counts: each element falls in bucket b = #(thresholds < p) (it is "above"
#   thresholds 0..b-1, Keras's y_pred > threshold); per-block integer histograms of
#   (bucket, label) add exactly; cumulative sums give tp, fp, tn, fn per threshold.

cdef enum:
    ROWS_PER_BLOCK = 256


def _fbeta(const floating[:, ::1] t, const floating[:, ::1] p, bint by_max, double thr,
           double[:, :, ::1] partial):      # OUT (blocks, 4, K)
    cdef Py_ssize_t n = p.shape[0], k = p.shape[1], b, r, j, r0, r1
    cdef Py_ssize_t nblk = partial.shape[0]
    cdef double m, pred, tj, pv
    cdef floating cut = <floating>thr
    with nogil:
        for b in prange(nblk, schedule="static", use_threads_if=n * k >= PARALLEL_MIN):
            for j in range(k):
                partial[b, 0, j] = 0
                partial[b, 1, j] = 0
                partial[b, 2, j] = 0
                partial[b, 3, j] = 0
            r0 = b * ROWS_PER_BLOCK
            r1 = min(n, r0 + ROWS_PER_BLOCK)
            for r in range(r0, r1):
                m = p[r, 0]
                if by_max:
                    for j in range(1, k):
                        if p[r, j] > m:
                            m = p[r, j]
                for j in range(k):
                    pv = p[r, j]
                    if by_max:
                        pred = 1.0 if (pv >= m and (pv > 1e-9 or pv < -1e-9)) else 0.0
                    else:
                        pred = 1.0 if p[r, j] > cut else 0.0
                    tj = t[r, j]
                    partial[b, 0, j] += pred * tj
                    partial[b, 1, j] += pred * (1 - tj)
                    partial[b, 2, j] += (1 - pred) * tj
                    partial[b, 3, j] += tj


def fbeta_counts(y_true, y_pred, threshold=None):
    """-> float64 array (4, K): per class (tp, fp, fn, support) of the batch, Keras's
    FBetaScore sums (see the note above); y_true may be soft."""
    t, p, thr = operands.fbeta_counts(HOST, y_true, y_pred, threshold)
    n, k = p.shape
    nblk = -(-n // ROWS_PER_BLOCK)
    partial = np.zeros((max(nblk, 1), 4, k), dtype=np.float64)
    if n and k:
        _fbeta(t, p, thr is None, 0.0 if thr is None else thr, partial)
    return partial.sum(axis=0)


def _buckets(const floating[::1] t, const floating[::1] p, const double[::1] th,
             long long[:, :, ::1] hist):    # OUT (blocks, T + 1, 2)
    cdef Py_ssize_t n = p.shape[0], nt = th.shape[0], nblk = hist.shape[0]
    cdef Py_ssize_t b, i, i0, i1, lo, hi, mid
    cdef double v
    with nogil:
        for b in prange(nblk, schedule="static", use_threads_if=n >= PARALLEL_MIN):
            i0 = b * ROWS_PER_BLOCK * 16
            i1 = min(n, i0 + ROWS_PER_BLOCK * 16)
            for i in range(i0, i1):
                v = p[i]
                # Thresholds compare in y_pred's dtype, as Keras's tensors do.
                lo = 0
                hi = nt
                while lo < hi:
                    mid = (lo + hi) // 2
                    if <floating>th[mid] < v:
                        lo = mid + 1
                    else:
                        hi = mid
                hist[b, lo, 1 if t[i] != 0 else 0] += 1


def threshold_counts(y_true, y_pred, thresholds):
    """-> int64 array (4, T): per threshold (tp, fp, tn, fn) over every element, a
    prediction positive when y_pred > threshold and a label when y_true != 0 (Keras's AUC).
    A NaN prediction is above no threshold."""
    t, p, th = operands.threshold_counts(HOST, y_true, y_pred, thresholds)
    nt = th.shape[0]
    nblk = max(1, -(-p.shape[0] // (ROWS_PER_BLOCK * 16)))
    hist = np.zeros((nblk, nt + 1, 2), dtype=np.int64)
    if p.shape[0]:
        _buckets(t, p, th, hist)
    return operands.counts_from_buckets(hist.sum(axis=0))


# confusion_matrix: counts[true, pred] over every element; per-block integer histograms add
# exactly, so any thread count gives the same matrix.
cdef enum:
    LABELS_PER_BLOCK = 65536


def _confusion_matrix(const int[::1] t, const int[::1] p, long long[:, :, ::1] hist):
    cdef Py_ssize_t n = t.shape[0], nblk = hist.shape[0], b, i, i1
    with nogil:
        for b in prange(nblk, schedule="static", use_threads_if=nblk > 1):
            i1 = min(n, (b + 1) * LABELS_PER_BLOCK)
            for i in range(b * LABELS_PER_BLOCK, i1):
                hist[b, t[i], p[i]] += 1


def confusion_matrix(y_true, y_pred, num_classes):
    """-> int64 array (K, K): counts[i, j] of elements with true class i predicted as j
    (class ids in [0, K), checked)."""
    t, p, k = operands.confusion_matrix(HOST, y_true, y_pred, num_classes)
    nblk = max(1, -(-t.shape[0] // LABELS_PER_BLOCK))
    hist = np.zeros((nblk, k, k), dtype=np.int64)
    if t.shape[0]:
        _confusion_matrix(t, p, hist)
    return hist.sum(axis=0)
