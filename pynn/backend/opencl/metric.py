"""OpenCL metric ops: the host side of ``opencl/metric.cl``.

Same names, signatures and semantics as ``native/metric.pyx``; operands are checked by
``pynn.backend.operands.metric``. Counts are int32 reductions; only they come back.
"""

import numpy as np

from pynn.backend.opencl import runtime as rt
from pynn.backend.opencl.arrays import DEVICE
from pynn.backend.opencl.launch import PARTIAL, elementwise, reduce
from pynn.backend.operands import metric as operands


def _ranked_count(op, targets, scores, sparse, top):
    """Rows whose target is the argmax (top == 0) or within the top ``top`` scores."""
    rows, k = scores.shape
    if scores.size == 0:
        return 0
    args = (scores if sparse else targets, targets if sparse else scores, scores, PARTIAL,
            rows, k, sparse, int(top))
    hits, bad = (int(v) for v in reduce("metric", "argmax_matches_partial", rows, args,
                                        counts=2, dtype=np.int32).get())
    if bad:
        raise ValueError(f"{op}: {bad} label(s) out of range: class ids must lie in [0, {k}) "
                         f"for y_pred with K={k} classes")
    return hits


def accuracy_count(y_true, y_pred, mode, threshold=0.5):
    """Number of correct predictions in the batch (an int); native/metric.pyx's semantics."""
    op = "accuracy_count"
    mode, targets, y_pred, thr = operands.accuracy_count(DEVICE, y_true, y_pred, mode,
                                                         threshold)
    if mode != "binary":
        return _ranked_count(op, targets, y_pred, mode == "sparse", 0)
    if y_pred.size == 0:
        return 0
    # Keras compares with the threshold as a tensor of y_pred's dtype.
    out = reduce("metric", "binary_matches_partial", y_pred.size,
                 (targets, y_pred, PARTIAL, y_pred.size, np.float32(thr)), dtype=np.int32)
    return int(out.get()[0])


def top_k_count(y_true, y_pred, k=5, sparse=False):
    """Rows whose target scores within the top k (Keras in_top_k: boundary ties count)."""
    targets, scores, k, sparse = operands.top_k_count(DEVICE, y_true, y_pred, k, sparse)
    return _ranked_count("top_k_count", targets, scores, sparse, k)


def confusion_counts(y_true, y_pred, threshold=0.5):
    """(tp, fp, fn) as ints: label positive iff y_true != 0, prediction iff y_pred >
    threshold, over every element."""
    y_true, y_pred, thr = operands.confusion_counts(DEVICE, y_true, y_pred, threshold)
    if y_pred.size == 0:
        return 0, 0, 0
    out = reduce("metric", "confusion_partial", y_pred.size,
                 (y_true, y_pred, PARTIAL, y_pred.size, np.float32(thr)), counts=3,
                 dtype=np.int32)
    tp, fp, fn = (int(v) for v in out.get())
    return tp, fp, fn


# -- F-beta and AUC counts (issue 15) ----------------------------------------------------------

def fbeta_counts(y_true, y_pred, threshold=None):
    """-> float64 numpy (4, K): per class (tp, fp, fn, support), native/metric.pyx's
    semantics (no threshold: each row's max is the positive prediction)."""
    t, p, thr = operands.fbeta_counts(DEVICE, y_true, y_pred, threshold)
    n, k = p.shape
    out = rt.zeros((4 * max(k, 1),), what="fbeta_counts result")
    if n and k:
        row_max = rt.empty((n,), what="fbeta_counts row maxima")
        if thr is None:
            elementwise("metric", "fbeta_row_max", n, p, row_max, n, k)
        elementwise("metric", "fbeta_columns", k, t, p, row_max, out, n, k, thr is None,
                    np.float32(0.0 if thr is None else thr))
    return out.get()[:4 * k].reshape(4, k).astype(np.float64)


def threshold_counts(y_true, y_pred, thresholds):
    """-> int64 numpy (4, T): per threshold (tp, fp, tn, fn) over every element."""
    t, p, th = operands.threshold_counts(DEVICE, y_true, y_pred, thresholds)
    nt = th.shape[0]
    hist = rt.zeros((2 * (nt + 1),), np.int32, what="threshold_counts histogram")
    if p.size:
        # The thresholds are the op's own constants, not an operand: uploaded here, tiny.
        th_dev = rt.to_device(th.astype(np.float32))
        elementwise("metric", "threshold_buckets", p.size, t, p, th_dev, hist, p.size, nt)
    return operands.counts_from_buckets(hist.get().reshape(nt + 1, 2).astype(np.int64))


def confusion_matrix(y_true, y_pred, num_classes):
    """-> int64 numpy (K, K): counts[i, j] of elements with true class i predicted as j."""
    op = "confusion_matrix"
    t, p, k = operands.confusion_matrix(DEVICE, y_true, y_pred, num_classes)
    counts = rt.zeros((k * k + 1,), np.int32, what=f"{op} counts")
    if t.size:
        elementwise("metric", "confusion_matrix_counts", t.size, t, p, counts, t.size, k)
    host = counts.get().astype(np.int64)
    if host[k * k]:
        raise ValueError(f"{op}: {host[k * k]} label(s) out of range: class ids must lie in "
                         f"[0, {k}) for num_classes={k}")
    return host[:k * k].reshape(k, k)
