"""Losses: value and gradient d(loss)/d(y_pred) in one fused pass, Keras 3 semantics.

Legend: N rows (every axis of y_pred but the last, flattened), K the last axis (classes for
the cross-entropies), n = N * K elements.

Reduction is Keras's 'sum_over_batch_size': the mean of the per-sample losses. For the
pointwise losses (MSE, MAE, Huber, binary CE) Keras first averages over the last axis, then
over the batch, which is the mean over all n elements; the cross-entropies sum over K and
average over N. The gradient is that of the mean, so it already carries the 1/n or 1/N.

Keras details reproduced (keras/src/losses/losses.py, keras/src/backend/torch/nn.py):
- probabilities (from_logits=False): categorical/sparse CE renormalize each row to sum 1,
  then clip to [eps, 1 - eps] with eps = 1e-7 rounded to y_pred's dtype; binary CE clips
  only. The clip's gradient is torch's: 1 inside [lo, hi] (bounds included), 0 outside. The
  renormalization's Jacobian enters as g_k = (c_k + sum_{j unclipped} t_j) / s, where
  c_k = -t_k / q_k for unclipped k (0 for clipped) and s the row sum.
- logits: log-softmax (max-shifted) for the cross-entropies; for binary CE torch's stable
  max(x, 0) - x t + log1p(exp(-|x|)), gradient sigmoid(x) - t.
- Huber: 0.5 d^2 where |d| <= delta, else delta |d| - 0.5 delta^2, d = y_pred - y_true.
- MAE's gradient at d = 0 is 0 (torch's sign).
- y_true is cast to y_pred's dtype; a rank difference of one with a trailing axis of 1
  is squeezed as Keras's squeeze_or_expand_to_same_rank does.

Per-element math runs in double. The loss sum is deterministic for any thread count: the
pointwise losses sum fixed blocks of BLOCK elements into one double partial each, the
cross-entropies one double per row; the partials are then added serially in order.
"""
import math

import numpy as np

from cython.parallel cimport prange
from libc.math cimport exp, log, log1p, fabs, fmax

from _activation cimport floating

from pynn.backend.operands import loss as operands
from pynn.backend.operands.common import HOST

cdef enum:
    LOSS_MSE = 0
    LOSS_MAE = 1
    LOSS_HUBER = 2
    LOSS_BCE = 3
    LOSS_CCE = 4
    LOSS_SCCE = 5
    # Elements per partial sum of the pointwise losses: fixed, so the summation order (and
    # hence the float result) does not depend on how blocks are spread over threads.
    BLOCK = 4096
    # Below this many elements the pass runs on the calling thread (waking the OpenMP team
    # costs more); blocks and rows are summed the same way either way.
    PARALLEL_MIN = 32768

KERAS_EPSILON = operands.KERAS_EPSILON


cdef inline double sign(double d) noexcept nogil:
    return (d > 0) - (d < 0)


cdef inline double pointwise_loss(int code, double t, double p, bint from_logits,
                                  double delta, double lo, double hi,
                                  double* grad) noexcept nogil:
    """Loss of one element; *grad receives its derivative with respect to p."""
    cdef double d, a, pc
    if code == LOSS_MSE:
        d = p - t
        grad[0] = 2 * d
        return d * d
    elif code == LOSS_MAE:
        d = p - t
        grad[0] = sign(d)
        return fabs(d)
    elif code == LOSS_HUBER:
        d = p - t
        a = fabs(d)
        if a <= delta:
            grad[0] = d
            return 0.5 * d * d
        grad[0] = delta * sign(d)
        return delta * a - 0.5 * delta * delta
    # binary cross-entropy
    if from_logits:
        a = exp(-fabs(p))
        # sigmoid(p) from the same exp(-|p|), without overflow on either side.
        grad[0] = (1 / (1 + a) if p >= 0 else a / (1 + a)) - t
        return fmax(p, 0) - p * t + log1p(a)
    pc = p
    if pc < lo:
        pc = lo
    elif pc > hi:
        pc = hi
    grad[0] = (pc - t) / (pc * (1 - pc)) if lo <= p <= hi else 0
    return -(t * log(pc) + (1 - t) * log(1 - pc))


cdef inline double pointwise_block(int code, const floating* t, const floating* p,
                                   floating* g, Py_ssize_t count, bint from_logits,
                                   double delta, double lo, double hi,
                                   double scale) noexcept nogil:
    """Sum of the losses of count elements; g (if not NULL) gets scale * d/dp."""
    cdef Py_ssize_t i
    cdef double acc = 0, gi
    for i in range(count):
        acc += pointwise_loss(code, t[i], p[i], from_logits, delta, lo, hi, &gi)
        if g != NULL:
            g[i] = <floating>(gi * scale)
    return acc


cdef inline double clip_to(double q, double lo, double hi) noexcept nogil:
    return lo if q < lo else (hi if q > hi else q)


cdef inline double categorical_row(const floating* t, const floating* p, floating* g,
                                   Py_ssize_t k, bint from_logits, double lo, double hi,
                                   double scale) noexcept nogil:
    """-sum_j t_j log(prob_j) of one row; g (if not NULL) gets scale * d/dp."""
    cdef Py_ssize_t j
    cdef double s = 0, m, q, loss = 0, tsum = 0, lse
    if k == 0:
        return 0
    if from_logits:
        m = p[0]
        for j in range(1, k):
            m = fmax(m, p[j])
        for j in range(k):
            s += exp(p[j] - m)
        lse = m + log(s)
        for j in range(k):
            loss += t[j] * (lse - p[j])
            tsum += t[j]
        if g != NULL:
            for j in range(k):
                g[j] = <floating>((tsum * exp(p[j] - m) / s - t[j]) * scale)
        return loss
    for j in range(k):
        s += p[j]
    for j in range(k):
        # Round q to the input dtype as Keras does, so the clip decisions match its own.
        q = <floating>(p[j] / s)
        loss -= t[j] * log(clip_to(q, lo, hi))
        if lo <= q <= hi:
            tsum += t[j]
    if g != NULL:
        for j in range(k):
            q = <floating>(p[j] / s)
            q = -t[j] / q if lo <= q <= hi else 0
            g[j] = <floating>((q + tsum) / s * scale)
    return loss


cdef inline double sparse_row(int label, const floating* p, floating* g, Py_ssize_t k,
                              bint from_logits, double lo, double hi,
                              double scale) noexcept nogil:
    """categorical_row with a one-hot target at label (validated to lie in [0, k))."""
    cdef Py_ssize_t j
    cdef double s = 0, m, q, loss, inside
    if from_logits:
        m = p[0]
        for j in range(1, k):
            m = fmax(m, p[j])
        for j in range(k):
            s += exp(p[j] - m)
        loss = m + log(s) - p[label]
        if g != NULL:
            for j in range(k):
                g[j] = <floating>((exp(p[j] - m) / s - (j == label)) * scale)
        return loss
    for j in range(k):
        s += p[j]
    q = <floating>(p[label] / s)
    loss = -log(clip_to(q, lo, hi))
    if g != NULL:
        inside = lo <= q <= hi
        for j in range(k):
            g[j] = <floating>(inside * scale / s)
        if inside:
            g[label] = <floating>((1 - 1 / q) * scale / s)
    return loss


def _pointwise(int code, const floating[::1] t,    # IN  (n,) y_true
               const floating[::1] p,              # IN  (n,) y_pred
               floating[::1] g,                    # OUT (n,) or empty when no gradient
               bint from_logits, double delta, double lo, double hi,
               double scale, double[::1] partial):   # OUT (ceil(n / BLOCK),)
    cdef Py_ssize_t b, i0, n = p.shape[0], nblk = partial.shape[0]
    cdef floating* gptr = &g[0] if g.shape[0] > 0 else NULL
    with nogil:
        for b in prange(nblk, schedule="static", use_threads_if=n >= PARALLEL_MIN):
            i0 = b * BLOCK
            partial[b] = pointwise_block(code, &t[i0], &p[i0],
                                         gptr + i0 if gptr != NULL else NULL,
                                         min(<Py_ssize_t>BLOCK, n - i0), from_logits,
                                         delta, lo, hi, scale)


def _categorical(const floating[:, ::1] t,     # IN  (N, K) y_true
                 const floating[:, ::1] p,     # IN  (N, K) y_pred
                 floating[:, ::1] g,           # OUT (N, K) or (0, 0) when no gradient
                 bint from_logits, double lo, double hi, double scale,
                 double[::1] row_loss):        # OUT (N,)
    cdef Py_ssize_t r, rows = p.shape[0], k = p.shape[1]
    cdef bint need_grad = g.shape[0] > 0
    with nogil:
        for r in prange(rows, schedule="static", use_threads_if=rows * k >= PARALLEL_MIN):
            row_loss[r] = categorical_row(&t[r, 0], &p[r, 0],
                                          &g[r, 0] if need_grad else NULL,
                                          k, from_logits, lo, hi, scale)


def _sparse(const int[::1] labels,           # IN  (N,) class ids in [0, K)
            const floating[:, ::1] p,        # IN  (N, K) y_pred
            floating[:, ::1] g,              # OUT (N, K) or (0, 0) when no gradient
            bint from_logits, double lo, double hi, double scale,
            double[::1] row_loss):           # OUT (N,)
    cdef Py_ssize_t r, rows = p.shape[0], k = p.shape[1]
    cdef bint need_grad = g.shape[0] > 0
    with nogil:
        for r in prange(rows, schedule="static", use_threads_if=rows * k >= PARALLEL_MIN):
            row_loss[r] = sparse_row(labels[r], &p[r, 0],
                                     &g[r, 0] if need_grad else NULL,
                                     k, from_logits, lo, hi, scale)


def loss_forward_backward(name, y_true, y_pred, from_logits=False, param=None,
                          need_grad=True):
    """-> (loss: float, grad or None). grad = d(mean loss)/d(y_pred), shape and dtype of
    y_pred. ``param`` is huber's delta (None: 1.0). An empty batch gives (0.0, empty grad)."""
    code, targets, y_pred, from_logits, delta, need_grad = operands.loss_forward_backward(
        HOST, name, y_true, y_pred, from_logits, param, need_grad)
    k = y_pred.shape[y_pred.ndim - 1]
    grad = np.empty_like(y_pred) if need_grad else None
    if y_pred.size == 0:
        return 0.0, grad
    # Keras clips in y_pred's dtype: the bounds are eps and 1 - eps rounded to it.
    lo = float(y_pred.dtype.type(KERAS_EPSILON))
    hi = float(y_pred.dtype.type(1.0 - KERAS_EPSILON))
    if code in (LOSS_CCE, LOSS_SCCE):
        rows = y_pred.size // k
        p2 = y_pred.reshape(rows, k)
        g2 = grad.reshape(rows, k) if need_grad else np.empty((0, 0), y_pred.dtype)
        partial = np.empty(rows, dtype=np.float64)
        if code == LOSS_CCE:
            _categorical(targets.reshape(rows, k), p2, g2, from_logits, lo, hi, 1.0 / rows,
                         partial)
        else:
            _sparse(targets, p2, g2, from_logits, lo, hi, 1.0 / rows, partial)
        denom = rows
    else:
        n = y_pred.size
        partial = np.empty(-(-n // BLOCK), dtype=np.float64)
        g1 = grad.reshape(-1) if need_grad else np.empty(0, y_pred.dtype)
        _pointwise(code, targets.reshape(-1), y_pred.reshape(-1), g1, from_logits, delta, lo,
                   hi, 1.0 / n, partial)
        denom = n
    # The partials are bit-identical for any thread count, and so is their sum.
    return float(partial.sum()) / denom, grad
