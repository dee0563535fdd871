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
- label_smoothing: binary targets become t (1 - ls) + ls / 2, categorical t (1 - ls) + ls / K.
- hinge / squared_hinge: targets all in {0, 1} become 2t - 1 (Keras decides over the whole
  y_true: the caller checks and passes the answer as params.a).
- kl_divergence clips t and p to [eps, 1] and sums the last axis (the others average it);
  poisson, MSLE and MAPE use Keras's eps as keras/src/losses/losses.py does.
- binary_focal_crossentropy: (1 - p_t)^gamma * bce, times alpha / (1 - alpha) under
  apply_class_balancing, on sigmoid(p) for logits; bce is the clipped binary CE above.
- categorical_hinge: max(max_j (1 - t_j) p_j - sum_j t_j p_j + 1, 0); cosine_similarity:
  -sum_j t_j p_j after l2-normalizing both rows with Keras's normalize (rsqrt of the square
  sum, capped at 1 / eps).
- categorical_focal_crossentropy: sum_j alpha (1 - q_j)^gamma (-t_j log q_j) with q the row
  renormalized (softmax from logits) and clipped as categorical CE; with c_j = dL/dq_j (0 if
  clipped), d/dp_k = (c_k - sum_j c_j q_j) / s for probabilities, q_k (c_k - sum_j c_j q_j)
  from logits (the softmax's Jacobian; Keras's renormalization of a softmax changes nothing).
- dice / tversky (Keras's axis=None): one loss over the whole batch, 1 - c I / (u I + a FP +
  b FN + eps) with I = sum t p, FP = sum t (1 - p), FN = sum p (1 - t) (operands.loss_params
  gives c, u, a, b). The reduction of one scalar is that scalar: no 1/n; sample_weight scales
  it (and its gradient) by the weights' mean, as Keras's scalar-times-weights mean does. Two
  passes: the three sums (fixed BLOCK partials, serial), then the gradient.
- categorical_generalized_cross_entropy (sparse labels y): (1 - p_y^q) / q on y_pred as
  given (Keras neither clips nor renormalizes), gradient -p_y^(q - 1) at y, 0 elsewhere.
- MAE's gradient at d = 0 is 0 (torch's sign).
- y_true is cast to y_pred's dtype; a rank difference of one with a trailing axis of 1
  is squeezed as Keras's squeeze_or_expand_to_same_rank does.
- sample_weight multiplies each per-sample loss (a row's) and its gradient; the mean still
  divides by the number of losses, not by the weights' sum. One weight may cover several
  consecutive rows (rows_per_weight: (N,) weights for (N, T, K) predictions).

Per-element math runs in double. The loss sum is deterministic for any thread count: the
pointwise losses sum fixed blocks of BLOCK elements into one double partial each, the
cross-entropies one double per row; the partials are then added serially in order.
"""
import math

import numpy as np

from libc.math cimport exp, log, log1p, fabs, fmax, fmin, sqrt, INFINITY, NAN, pow, isfinite
from cython.parallel cimport prange
from libc.math cimport tanh as math_tanh

from _activation cimport floating, pynn_exp_sum_f, pynn_max_f
from _blas cimport blas_init, gemm_rowmajor

from _openmp cimport omp_get_max_threads

from pynn.backend.operands import loss as operands
from pynn.backend.operands.common import HOST

include "_team.pxi"

blas_init()

cdef enum:
    LOSS_MSE = 0
    LOSS_MAE = 1
    LOSS_HUBER = 2
    LOSS_BCE = 3
    LOSS_CCE = 4
    LOSS_SCCE = 5
    LOSS_KLD = 6
    LOSS_HINGE = 7
    LOSS_SQUARED_HINGE = 8
    LOSS_CATEGORICAL_HINGE = 9
    LOSS_LOG_COSH = 10
    LOSS_POISSON = 11
    LOSS_MSLE = 12
    LOSS_MAPE = 13
    LOSS_COSINE = 14
    LOSS_FOCAL = 15
    LOSS_CATEGORICAL_FOCAL = 16
    LOSS_DICE = 17
    LOSS_TVERSKY = 18
    LOSS_GCE = 19
    # Elements per partial sum of the pointwise losses: fixed, so the summation order (and
    # hence the float result) does not depend on how blocks are spread over threads.
    BLOCK = 4096
    # Below this many elements the pass runs on the calling thread (waking the OpenMP team
    # costs more); blocks and rows are summed the same way either way.
    PARALLEL_MIN = 32768

KERAS_EPSILON = operands.KERAS_EPSILON


def _clip_bounds(dtype):
    """(eps, 1 - eps) rounded to dtype, and an empty read-only weight array of it."""
    none = np.empty(0, dtype)
    none.flags.writeable = False
    return float(dtype.type(KERAS_EPSILON)), float(dtype.type(1.0 - KERAS_EPSILON)), none


_CLIP_BOUNDS = (_clip_bounds(np.dtype(np.float32)), _clip_bounds(np.dtype(np.float64)))
cdef double LOG2 = math.log(2.0)


cdef struct Params:
    # operands.loss_params: huber (delta), cross-entropies (label_smoothing), focal (alpha,
    # gamma, apply_class_balancing, label_smoothing), hinge (a: targets are {0, 1}).
    double a, b, c, d


cdef inline double sign(double d) noexcept nogil:
    return (d > 0) - (d < 0)


cdef inline double sigmoid(double x) noexcept nogil:
    cdef double e = exp(-fabs(x))
    return 1 / (1 + e) if x >= 0 else e / (1 + e)


cdef inline double focal_loss(double t, double p, bint from_logits, Params prm, double lo,
                              double hi, double* grad) noexcept nogil:
    cdef double q, dq = 1, qc, bce, dbce, base, f, df = 0, w = 1
    cdef double alpha = prm.a, gamma = prm.b
    if prm.d != 0:
        t = t * (1 - prm.d) + 0.5 * prm.d
    if from_logits:
        q = sigmoid(p)
        dq = q * (1 - q)
    else:
        q = p
    qc = lo if q < lo else (hi if q > hi else q)
    bce = -(t * log(qc) + (1 - t) * log(1 - qc))
    dbce = (qc - t) / (qc * (1 - qc)) if lo <= q <= hi else 0
    base = 1 - (t * q + (1 - t) * (1 - q))
    f = base ** gamma
    if gamma != 0 and base > 0:
        df = -gamma * base ** (gamma - 1) * (2 * t - 1)
    if prm.c != 0:
        w = t * alpha + (1 - t) * (1 - alpha)
    grad[0] = w * (df * bce + f * dbce) * dq
    return w * f * bce


cdef inline double pointwise_loss(int code, double t, double p, bint from_logits,
                                  Params prm, double lo, double hi,
                                  double* grad) noexcept nogil:
    """Loss of one element; *grad receives its derivative with respect to p."""
    cdef double d, a, pc, tc, delta = prm.a
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
    elif code == LOSS_HINGE or code == LOSS_SQUARED_HINGE:
        if prm.a != 0:
            t = 2 * t - 1
        a = 1 - t * p
        if a <= 0:
            grad[0] = 0
            return 0
        if code == LOSS_HINGE:
            grad[0] = -t
            return a
        grad[0] = -2 * t * a
        return a * a
    elif code == LOSS_LOG_COSH:
        d = p - t
        grad[0] = math_tanh(d)
        # x + softplus(-2x) - log 2, softplus in its overflow-free form.
        return d + fmax(-2 * d, 0) + log1p(exp(-fabs(2 * d))) - LOG2
    elif code == LOSS_POISSON:
        grad[0] = 1 - t / (p + lo)
        return p - t * log(p + lo)
    elif code == LOSS_MSLE:
        # torch.maximum propagates NaN (C's fmax would return eps for a NaN prediction).
        a = log((p if (p > lo or p != p) else lo) + 1) - log(fmax(t, lo) + 1)
        grad[0] = 2 * a / (p + 1) if p > lo else 0
        return a * a
    elif code == LOSS_MAPE:
        a = 100 / fmax(fabs(t), lo)
        d = p - t
        grad[0] = a * sign(d)
        return a * fabs(d)
    elif code == LOSS_KLD:
        # Clipped to [eps, 1], not [eps, 1 - eps]: hi is 1 for this loss.
        tc = lo if t < lo else (hi if t > hi else t)
        pc = lo if p < lo else (hi if p > hi else p)
        grad[0] = -tc / pc if lo <= p <= hi else 0
        return tc * log(tc / pc)
    elif code == LOSS_FOCAL:
        return focal_loss(t, p, from_logits, prm, lo, hi, grad)
    # binary cross-entropy
    if prm.a != 0:
        t = t * (1 - prm.a) + 0.5 * prm.a
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


cdef extern from *:
    """
    #include "_vmath.h"
    /* Binary crossentropy of n float32 elements, unweighted (pointwise_block's terms in
       float32 on _vmath.h's functions, so the loop vectorizes): the sum of the losses in
       double over eight lanes, g (unless NULL) gets scale * d/dp. ls: label smoothing. From
       logits: max(p, 0) - p t + log1p(e^-|p|), gradient sigmoid(p) - t; from
       probabilities clipped to [lo, hi]: -(t ln p + (1 - t) ln(1 - p)), gradient
       (p - t) / (p (1 - p)) inside the clip and 0 outside. */
    static inline float pynn_bce_logits_f(float t, float x, float ls, float* grad) {
        const float tt = t * (1.0f - ls) + 0.5f * ls;   /* ls = 0: t itself */
        const float e = pynn_expf(-fabsf(x));
        *grad = pynn_selectf(x >= 0.0f, 1.0f, e) / (1.0f + e) - tt;
        return pynn_selectf(x > 0.0f, x, 0.0f) - x * tt + pynn_log1pf(e);
    }
    static inline float pynn_bce_probs_f(float t, float x, float ls, float lo, float hi,
                                         float* grad) {
        const float tt = t * (1.0f - ls) + 0.5f * ls;
        /* A NaN prediction: NaN loss, gradient 0 (outside the clip, as the other roads) */
        const float pc = pynn_selectf(x < lo, lo, pynn_selectf(x > hi, hi, x));
        const float loss = -(tt * pynn_logf_normal(pc)
                             + (1.0f - tt) * pynn_logf_normal(1.0f - pc));
        *grad = pynn_selectf((x >= lo) & (x <= hi), (pc - tt) / (pc * (1.0f - pc)), 0.0f);
        return pynn_selectf(x != x, x, loss);
    }
    /* One loop per (logits or probabilities) x (gradient or not): no branch inside, so
       each vectorizes; every element the same expression, in the vector body or the tail. */
    #define PYNN_BCE_LOOP(TERM, STORE)                                                   \
        for (; i + 8 <= n; i += 8)                                                        \
            for (l = 0; l < 8; l++) {                                                     \
                lane[l] += (double)TERM(i + l);                                           \
                STORE(i + l);                                                             \
            }                                                                             \
        s = ((lane[0] + lane[1]) + (lane[2] + lane[3]))                                   \
            + ((lane[4] + lane[5]) + (lane[6] + lane[7]));                                \
        for (; i < n; i++) {                                                              \
            s += (double)TERM(i);                                                         \
            STORE(i);                                                                     \
        }
    #define PYNN_BCE_LOGITS(j) pynn_bce_logits_f(t[j], p[j], ls, &gi[(j) & 7])
    #define PYNN_BCE_PROBS(j) pynn_bce_probs_f(t[j], p[j], ls, lo, hi, &gi[(j) & 7])
    #define PYNN_BCE_STORE(j) g[j] = gi[(j) & 7] * scale
    #define PYNN_BCE_DROP(j) (void)0
    static double pynn_bce_f(const float* t, const float* p, float* g, ptrdiff_t n,
                             int from_logits, float ls, float lo, float hi, float scale) {
        double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0}, s;
        ptrdiff_t i = 0, l;
        float gi[8];
        if (from_logits && g) { PYNN_BCE_LOOP(PYNN_BCE_LOGITS, PYNN_BCE_STORE) }
        else if (from_logits) { PYNN_BCE_LOOP(PYNN_BCE_LOGITS, PYNN_BCE_DROP) }
        else if (g) { PYNN_BCE_LOOP(PYNN_BCE_PROBS, PYNN_BCE_STORE) }
        else { PYNN_BCE_LOOP(PYNN_BCE_PROBS, PYNN_BCE_DROP) }
        return s;
    }
    /* Categorical crossentropy of one row of float32 probabilities p (row sum s, in
       double), targets t smoothed by ls: -sum_j t_j ln clip(q_j), q_j = p_j / s rounded to
       float32 as Keras rounds it (so the clip decisions match), the logs _vmath.h's and the
       sum in eight double lanes; *tsum the smoothed targets inside the clip; g (unless
       NULL) scale * d/dp: ((inside ? -t_j / q_j : 0) + tsum) / s. Branch-free loops: the
       per-element logs and quotients ran 13 ns an element (10,000 classes). */
    static inline float pynn_cce_q_f(float p, double s) { return (float)((double)p / s); }
    static double pynn_cce_probs_row_f(const float* t, const float* p, float* g, ptrdiff_t k,
                                       double s, float ls, float lo, float hi, double scale) {
        double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0}, tl[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        double loss, tsum;
        const float add = ls / (float)k, keep = 1.0f - ls;
        ptrdiff_t j = 0, l;
        #define PYNN_CCE_TERM(J, LOSS, TSUM)                                              \
            {                                                                             \
                const float q = pynn_cce_q_f(p[J], s);                                    \
                const float st = t[J] * keep + add;                                       \
                const float qc = pynn_selectf(q < lo, lo, pynn_selectf(q > hi, hi, q));   \
                /* q NaN: clip leaves it, and its log must be NaN */                      \
                LOSS += (double)(st * pynn_selectf(q != q, q, pynn_logf_normal(qc)));      \
                TSUM += (double)pynn_selectf((q >= lo) & (q <= hi), st, 0.0f);            \
            }
        for (; j + 8 <= k; j += 8)
            for (l = 0; l < 8; l++)
                PYNN_CCE_TERM(j + l, lane[l], tl[l])
        loss = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
        tsum = ((tl[0] + tl[1]) + (tl[2] + tl[3])) + ((tl[4] + tl[5]) + (tl[6] + tl[7]));
        for (; j < k; j++)
            PYNN_CCE_TERM(j, loss, tsum)
        #undef PYNN_CCE_TERM
        if (g) {
            const double r = scale / s;
            for (j = 0; j < k; j++) {
                const float q = pynn_cce_q_f(p[j], s);
                const float st = t[j] * keep + add;
                const float d = pynn_selectf((q >= lo) & (q <= hi), -st / q, 0.0f);
                g[j] = (float)(((double)d + tsum) * r);
            }
        }
        return -loss;
    }
    """
    double pynn_bce_f(const float* t, const float* p, float* g, Py_ssize_t n,
                      int from_logits, float ls, float lo, float hi,
                      float scale) noexcept nogil
    double pynn_cce_probs_row_f(const float* t, const float* p, float* g, Py_ssize_t k,
                                double s, float ls, float lo, float hi,
                                double scale) noexcept nogil


cdef inline double pointwise_block(int code, const floating* t, const floating* p,
                                   floating* g, Py_ssize_t count, bint from_logits,
                                   Params prm, double lo, double hi,
                                   double scale, const floating* w, Py_ssize_t first,
                                   Py_ssize_t elems_per_weight) noexcept nogil:
    """Sum of the (weighted) losses of count elements starting at element ``first``; g (if
    not NULL) gets scale * d/dp. w (if not NULL) holds one weight per elems_per_weight."""
    cdef Py_ssize_t i
    cdef double acc = 0, gi, li, wi = 1
    if floating is float:
        if code == LOSS_BCE and w == NULL:
            # float32 and vectorized: libm's double exp and log1p per element ran 5x
            # slower than PyTorch (multi-label outputs, 128 x 1,000)
            return pynn_bce_f(t, p, g, count, from_logits, <float>prm.a, <float>lo,
                              <float>hi, <float>scale)
    for i in range(count):
        li = pointwise_loss(code, t[i], p[i], from_logits, prm, lo, hi, &gi)
        if w != NULL:
            wi = w[(first + i) // elems_per_weight]
        acc += li * wi
        if g != NULL:
            g[i] = <floating>(gi * wi * scale)
    return acc


cdef inline double clip_to(double q, double lo, double hi) noexcept nogil:
    return lo if q < lo else (hi if q > hi else q)


cdef inline double smooth(double t, double ls, Py_ssize_t k) noexcept nogil:
    return t * (1 - ls) + ls / k if ls != 0 else t


cdef inline double _exp_sum(const floating* p, floating* keep, Py_ssize_t k,
                            double* m) noexcept nogil:
    """sum_j e^(p_j - max p) in double, *m set to the max. float32 takes native/_vmath.h's
    vector exp (libm's double exp per logit ran 6x slower than PyTorch at 1,000 classes) and
    keeps the exponentials in keep (unless NULL) for the gradient."""
    cdef Py_ssize_t j
    cdef double s = 0
    if floating is float:
        m[0] = pynn_max_f(p, k)
        s = pynn_exp_sum_f(p, <float>m[0], keep, k)
    else:
        m[0] = p[0]
        for j in range(1, k):
            m[0] = fmax(m[0], p[j])
        for j in range(k):
            s += exp(p[j] - m[0])
    return s


cdef inline double categorical_row(const floating* t, const floating* p, floating* g,
                                   Py_ssize_t k, bint from_logits, double lo, double hi,
                                   double scale, double ls) noexcept nogil:
    """-sum_j t_j log(prob_j) of one row, t label-smoothed by ls; g (if not NULL) gets
    scale * d/dp."""
    cdef Py_ssize_t j
    cdef double s = 0, m, q, loss = 0, tsum = 0, lse
    if k == 0:
        return 0
    if from_logits:
        s = _exp_sum(p, g, k, &m)
        lse = m + log(s)
        for j in range(k):
            loss += smooth(t[j], ls, k) * (lse - p[j])
            tsum += smooth(t[j], ls, k)
        if g != NULL:
            if floating is float:   # g holds the exponentials (_exp_sum)
                q = tsum / s
                for j in range(k):
                    g[j] = <floating>((q * g[j] - smooth(t[j], ls, k)) * scale)
            else:
                for j in range(k):
                    g[j] = <floating>((tsum * exp(p[j] - m) / s - smooth(t[j], ls, k)) * scale)
        return loss
    for j in range(k):
        s += p[j]
    if floating is float:
        loss = pynn_cce_probs_row_f(t, p, g, k, s, <float>ls, <float>lo, <float>hi, scale)
    else:
        for j in range(k):
            # Round q to the input dtype as Keras does, so the clip decisions match its own.
            q = <floating>(p[j] / s)
            loss -= smooth(t[j], ls, k) * log(clip_to(q, lo, hi))
            if lo <= q <= hi:
                tsum += smooth(t[j], ls, k)
        if g != NULL:
            for j in range(k):
                q = <floating>(p[j] / s)
                q = -smooth(t[j], ls, k) / q if lo <= q <= hi else 0
                g[j] = <floating>((q + tsum) / s * scale)
    return loss


cdef inline double sparse_row(int label, const floating* p, floating* g, Py_ssize_t k,
                              bint from_logits, double lo, double hi,
                              double scale) noexcept nogil:
    """categorical_row with a one-hot target at label (validated to lie in [0, k))."""
    cdef Py_ssize_t j
    cdef double s = 0, m, q, loss, inside
    if from_logits:
        s = _exp_sum(p, g, k, &m)
        loss = m + log(s) - p[label]
        if g != NULL:
            if floating is float:   # g holds the exponentials (_exp_sum)
                q = 1 / s
                for j in range(k):
                    g[j] = <floating>((q * g[j] - (j == label)) * scale)
            else:
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


ctypedef struct _PointwiseJob:
    bint is_double, from_logits
    int code
    const void* t
    const void* p
    void* g              # NULL: no gradient
    const void* w        # NULL: no weights
    double* partial
    Py_ssize_t n, elems_per_weight
    Params prm
    double lo, hi, scale


cdef inline void _pointwise_blocks(const _PointwiseJob* j, const floating* t, long begin,
                                   long end) noexcept nogil:
    cdef const floating* p = <const floating*>j.p
    cdef floating* g = <floating*>j.g
    cdef long b
    cdef Py_ssize_t i0
    for b in range(begin, end):
        i0 = b * BLOCK
        j.partial[b] = pointwise_block(j.code, t + i0, p + i0, g + i0 if g != NULL else NULL,
                                       min(<Py_ssize_t>BLOCK, j.n - i0), j.from_logits,
                                       j.prm, j.lo, j.hi, j.scale, <const floating*>j.w, i0,
                                       j.elems_per_weight)


cdef void _pointwise_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _PointwiseJob* j = <_PointwiseJob*>ctx
    if j.is_double:
        _pointwise_blocks(j, <const double*>j.t, begin, end)
    else:
        _pointwise_blocks(j, <const float*>j.t, begin, end)


def _pointwise(int code, const floating[::1] t,    # IN  (n,) y_true
               const floating[::1] p,              # IN  (n,) y_pred
               floating[::1] g,                    # OUT (n,) or empty when no gradient
               bint from_logits, double pa, double pb, double pc, double pd,
               double lo, double hi,
               double scale, double[::1] partial,    # OUT (ceil(n / BLOCK),)
               const floating[::1] w,                # IN  (n / elems_per_weight,) or empty
               Py_ssize_t elems_per_weight):
    """Fixed blocks of BLOCK elements on pynn's worker team, one partial sum each."""
    cdef Py_ssize_t n = p.shape[0], nblk = partial.shape[0]
    cdef _PointwiseJob job
    cdef int threads = omp_get_max_threads() if n >= PARALLEL_MIN else 1
    job.is_double, job.from_logits, job.code = floating is double, from_logits, code
    job.t, job.p = &t[0], &p[0]
    job.g = &g[0] if g.shape[0] > 0 else NULL
    job.w = &w[0] if w.shape[0] > 0 else NULL
    job.partial, job.n, job.elems_per_weight = &partial[0], n, elems_per_weight
    job.prm = Params(pa, pb, pc, pd)
    job.lo, job.hi, job.scale = lo, hi, scale
    with nogil:
        pynn_team_for(nblk, team_grain(nblk, threads), threads, _pointwise_job, &job)


cdef inline double categorical_hinge_row(const floating* t, const floating* p, floating* g,
                                         Py_ssize_t k, double scale) noexcept nogil:
    """max(max_j (1 - t_j) p_j - sum_j t_j p_j + 1, 0); the max's gradient goes to its first
    argmax."""
    cdef Py_ssize_t j, arg = 0
    cdef double pos = 0, neg = (1 - <double>t[0]) * p[0], v, loss
    for j in range(k):
        pos += <double>t[j] * p[j]
        v = (1 - <double>t[j]) * p[j]
        # torch's max propagates NaN: once NaN, the max stays NaN (and so does the loss).
        if (v > neg or v != v) and neg == neg:
            neg = v
            arg = j
    loss = neg - pos + 1
    if g != NULL:
        for j in range(k):
            g[j] = <floating>((-t[j] + (1 - t[j]) * (j == arg)) * scale if loss > 0 else 0)
    return loss if (loss > 0 or loss != loss) else 0  # NaN stays NaN, as torch.maximum


cdef inline double cosine_row(const floating* t, const floating* p, floating* g,
                              Py_ssize_t k, double eps, double scale) noexcept nogil:
    """-sum_j t_j p_j / (|t| |p|) with Keras's normalize: 1/|x| = min(rsqrt(sum x^2), 1/eps)
    (a capped norm is a constant: its gradient is dropped, as torch's minimum does)."""
    cdef Py_ssize_t j
    cdef double tt = 0, pp = 0, tp = 0, it, ip, tj, pj
    for j in range(k):
        tj = t[j]
        pj = p[j]
        tt += tj * tj
        pp += pj * pj
        tp += tj * pj
    it = fmin(1 / sqrt(tt), 1 / eps)
    ip = fmin(1 / sqrt(pp), 1 / eps)
    if g != NULL:
        for j in range(k):
            # d/dp_j of -it * tp * ip: -it (t_j ip - tp ip^3 p_j) while the norm is uncapped.
            g[j] = <floating>(-it * (<double>t[j] * ip - (tp * ip * ip * ip * p[j]
                                                           if ip < 1 / eps else 0)) * scale)
    return -tp * it * ip


ctypedef struct _RowsJob:
    bint is_double, sparse, from_logits
    int code
    const int* labels
    const void* t        # dense targets (N, K)
    const void* p
    void* g              # NULL: no gradient
    const void* w        # NULL: no weights
    double* row_loss
    Py_ssize_t k, rows_per_weight
    double lo, hi, scale, ls, alpha, gamma


cdef inline double generalized_ce_row(int label, const floating* p, floating* g,
                                      Py_ssize_t k, double q, double scale) noexcept nogil:
    """(1 - p_y^q) / q of one row; g (if not NULL) gets scale * d/dp."""
    cdef Py_ssize_t j
    cdef double py = p[label]
    if g != NULL:
        for j in range(k):
            g[j] = 0
        g[label] = <floating>(-pow(py, q - 1) * scale)
    return (1 - pow(py, q)) / q


cdef inline double categorical_focal_row(const floating* t, const floating* p, floating* g,
                                         Py_ssize_t k, bint from_logits, double lo,
                                         double hi, double scale, double ls, double alpha,
                                         double gamma) noexcept nogil:
    """sum_j alpha (1 - q_j)^gamma (-t_j log q_j) of one row (see the design note); g (if
    not NULL) gets scale * d/dp. Two passes: loss and sum_j c_j q_j, then the gradient."""
    cdef Py_ssize_t j
    cdef int pass_
    cdef double s = 0, m = 0, q, qc, tj, lq, c, cq = 0, loss = 0
    if k == 0:
        return 0
    if from_logits:
        m = p[0]
        for j in range(1, k):
            m = fmax(m, p[j])
        for j in range(k):
            s += exp(p[j] - m)
    else:
        for j in range(k):
            s += p[j]
    for pass_ in range(2 if g != NULL else 1):
        for j in range(k):
            # Round q to the input dtype as Keras does, so the clip decisions match.
            q = exp(p[j] - m) / s if from_logits else <floating>(p[j] / s)
            qc = clip_to(q, lo, hi)
            tj = smooth(t[j], ls, k)
            lq = log(qc)
            c = 0
            if lo <= q <= hi and tj != 0:
                c = alpha * tj * ((gamma * (1 - qc) ** (gamma - 1) if gamma != 0 else 0) * lq
                                  - (1 - qc) ** gamma / qc)
            if pass_ == 0:
                loss -= alpha * (1 - qc) ** gamma * tj * lq
                cq += c * q
            elif from_logits:
                g[j] = <floating>(q * (c - cq) * scale)
            else:
                g[j] = <floating>((c - cq) / s * scale)
    return loss


cdef inline void _loss_rows(const _RowsJob* j, const floating* p, long begin,
                            long end) noexcept nogil:
    """Rows [begin, end): each row's loss (and gradient row) alone, times its weight."""
    cdef const floating* t = <const floating*>j.t
    cdef floating* g = <floating*>j.g
    cdef const floating* w = <const floating*>j.w
    cdef floating* gr
    cdef Py_ssize_t k = j.k
    cdef double wr
    cdef long r
    for r in range(begin, end):
        # The weight scales the gradient through `scale`: the row is linear in it.
        wr = w[r // j.rows_per_weight] if w != NULL else 1.0
        gr = g + r * k if g != NULL else NULL
        if j.sparse and j.code == LOSS_GCE:   # q travels in alpha
            j.row_loss[r] = wr * generalized_ce_row(j.labels[r], p + r * k, gr, k, j.alpha,
                                                    j.scale * wr)
        elif j.sparse:
            j.row_loss[r] = wr * sparse_row(j.labels[r], p + r * k, gr, k, j.from_logits, j.lo,
                                            j.hi, j.scale * wr)
        elif j.code == LOSS_CATEGORICAL_HINGE:
            j.row_loss[r] = wr * categorical_hinge_row(t + r * k, p + r * k, gr, k,
                                                       j.scale * wr)
        elif j.code == LOSS_COSINE:
            j.row_loss[r] = wr * cosine_row(t + r * k, p + r * k, gr, k, j.lo, j.scale * wr)
        elif j.code == LOSS_CATEGORICAL_FOCAL:
            j.row_loss[r] = wr * categorical_focal_row(t + r * k, p + r * k, gr, k,
                                                       j.from_logits, j.lo, j.hi,
                                                       j.scale * wr, j.ls, j.alpha, j.gamma)
        else:
            j.row_loss[r] = wr * categorical_row(t + r * k, p + r * k, gr, k, j.from_logits,
                                                 j.lo, j.hi, j.scale * wr, j.ls)


cdef void _loss_rows_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _RowsJob* j = <_RowsJob*>ctx
    if j.is_double:
        _loss_rows(j, <const double*>j.p, begin, end)
    else:
        _loss_rows(j, <const float*>j.p, begin, end)


cdef void _run_rows(_RowsJob* job, Py_ssize_t rows) noexcept nogil:
    """The rows on pynn's worker team."""
    cdef int threads = omp_get_max_threads() if rows * job.k >= PARALLEL_MIN else 1
    pynn_team_for(rows, team_grain(rows, threads), threads, _loss_rows_job, job)


def _categorical(int code,
                 const floating[:, ::1] t,     # IN  (N, K) y_true
                 const floating[:, ::1] p,     # IN  (N, K) y_pred
                 floating[:, ::1] g,           # OUT (N, K) or (0, 0) when no gradient
                 bint from_logits, double lo, double hi, double scale, double ls,
                 double[::1] row_loss,         # OUT (N,)
                 const floating[::1] w,        # IN  (N / rows_per_weight,) or empty
                 Py_ssize_t rows_per_weight, double alpha=0, double gamma=0):
    """The dense-target row losses: categorical CE, categorical hinge, cosine similarity,
    categorical focal CE (alpha, gamma)."""
    cdef _RowsJob job
    job.is_double, job.sparse, job.from_logits, job.code = floating is double, False, \
        from_logits, code
    job.labels, job.t, job.p = NULL, &t[0, 0], &p[0, 0]
    job.g = &g[0, 0] if g.shape[0] > 0 else NULL
    job.w = &w[0] if w.shape[0] > 0 else NULL
    job.row_loss, job.k, job.rows_per_weight = &row_loss[0], p.shape[1], rows_per_weight
    job.lo, job.hi, job.scale, job.ls = lo, hi, scale, ls
    job.alpha, job.gamma = alpha, gamma
    with nogil:
        _run_rows(&job, p.shape[0])


def _overlap(const floating[::1] t,     # IN  (n,) y_true
             const floating[::1] p,     # IN  (n,) y_pred
             floating[::1] g,           # OUT (n,) or empty when no gradient
             double c, double u, double a, double b, double eps, double wmean):
    """dice / tversky over all n elements: 1 - c I / (u I + a FP + b FN + eps), times
    wmean (the weights' mean, 1 without weights); g gets d/dp of that. The sums run in
    fixed blocks of BLOCK elements, added in order: the same bits for any thread count."""
    cdef Py_ssize_t n = p.shape[0], i, i0, i1
    cdef double inter = 0, fp = 0, fn = 0, bi, bp, bn, tj, pj, den, num
    with nogil:
        i0 = 0
        while i0 < n:
            bi = bp = bn = 0
            i1 = min(i0 + <Py_ssize_t>BLOCK, n)
            for i in range(i0, i1):
                tj = t[i]
                pj = p[i]
                bi += tj * pj
                bp += (1 - pj) * tj
                bn += pj * (1 - tj)
            inter += bi
            fp += bp
            fn += bn
            i0 = i1
        num = c * inter
        den = u * inter + a * fp + b * fn + eps
        if g.shape[0] > 0:
            # d num = c t, d den = u t - a t + b (1 - t); d(1 - num/den) = -(dnum den - num
            # dden) / den^2
            for i in range(n):
                tj = t[i]
                g[i] = <floating>(-(c * tj * den - num * (u * tj - a * tj + b * (1 - tj)))
                                  / (den * den) * wmean)
    return (1 - num / den) * wmean


def _sparse(const int[::1] labels,           # IN  (N,) class ids in [0, K)
            const floating[:, ::1] p,        # IN  (N, K) y_pred
            floating[:, ::1] g,              # OUT (N, K) or (0, 0) when no gradient
            bint from_logits, double lo, double hi, double scale,
            double[::1] row_loss,            # OUT (N,)
            const floating[::1] w,           # IN  (N / rows_per_weight,) or empty
            Py_ssize_t rows_per_weight, int code=LOSS_SCCE, double q=0):
    """Integer-label rows: sparse categorical CE, or generalized CE (code, q)."""
    cdef _RowsJob job
    job.is_double, job.sparse, job.from_logits = floating is double, True, from_logits
    job.code, job.alpha = code, q
    job.labels, job.t, job.p = &labels[0], NULL, &p[0, 0]
    job.g = &g[0, 0] if g.shape[0] > 0 else NULL
    job.w = &w[0] if w.shape[0] > 0 else NULL
    job.row_loss, job.k, job.rows_per_weight = &row_loss[0], p.shape[1], rows_per_weight
    job.lo, job.hi, job.scale, job.ls = lo, hi, scale, 0.0
    with nogil:
        _run_rows(&job, p.shape[0])


def loss_forward_backward(name, y_true, y_pred, from_logits=False, param=None,
                          need_grad=True, sample_weight=None):
    """-> (loss: float, grad or None). grad = d(mean loss)/d(y_pred), shape and dtype of
    y_pred. ``param``: see pynn.backend.api (huber's delta, label_smoothing, focal's dict).
    ``sample_weight`` weighs the per-sample losses (see the design note). An empty batch
    gives (0.0, empty grad)."""
    (code, targets, y_pred, from_logits, params, need_grad, weights,
     rows_per_weight) = operands.loss_forward_backward(
        HOST, name, y_true, y_pred, from_logits, param, need_grad, sample_weight)
    k = y_pred.shape[y_pred.ndim - 1]
    grad = np.empty_like(y_pred) if need_grad else None
    if y_pred.size == 0:
        return 0.0, grad
    # Keras clips in y_pred's dtype: the bounds are eps and 1 - eps rounded to it.
    lo, hi, no_weights = _CLIP_BOUNDS[y_pred.dtype.itemsize == 8]
    if code == LOSS_KLD:
        hi = 1.0
    if code in (LOSS_HINGE, LOSS_SQUARED_HINGE):
        # Keras converts {0, 1} labels to {-1, 1} only when all of y_true is binary.
        params = (float(bool(np.all((targets == 0) | (targets == 1)))), 0.0, 0.0, 0.0)
    w = weights if weights is not None else no_weights
    if code in operands.OVERLAP_LOSSES:
        wmean = float(np.mean(weights, dtype=np.float64)) if weights is not None else 1.0
        g1 = grad.reshape(-1) if need_grad else np.empty(0, y_pred.dtype)
        return _overlap(targets.reshape(-1), y_pred.reshape(-1), g1, *params, lo,
                        wmean), grad
    if code in operands.ROW_LOSSES:
        rows = y_pred.size // k
        # (a step's loss runs from a cold cache after its products: no NumPy call it can skip)
        p2 = y_pred if y_pred.ndim == 2 else y_pred.reshape(rows, k)
        if not need_grad:
            g2 = np.empty((0, 0), y_pred.dtype)
        else:
            g2 = grad if grad.ndim == 2 else grad.reshape(rows, k)
        partial = np.empty(rows, dtype=np.float64)
        if code in operands.SPARSE_LOSSES:   # params[0]: generalized CE's q
            _sparse(targets, p2, g2, from_logits, lo, hi, 1.0 / rows, partial, w,
                    rows_per_weight, code, params[0])
        else:
            if code == LOSS_CATEGORICAL_FOCAL:   # params: alpha, gamma, label_smoothing
                _categorical(code, targets.reshape(rows, k), p2, g2, from_logits, lo, hi,
                             1.0 / rows, params[2], partial, w, rows_per_weight, params[0],
                             params[1])
            else:
                _categorical(code, targets.reshape(rows, k), p2, g2, from_logits, lo, hi,
                             1.0 / rows, params[0], partial, w, rows_per_weight)
        denom = rows
    else:
        n = y_pred.size
        # The per-sample loss averages the last axis, or sums it (kl_divergence).
        denom = y_pred.size // k if code in operands.SUM_OVER_LAST_AXIS else n
        partial = np.empty(-(-n // BLOCK), dtype=np.float64)
        g1 = grad.reshape(-1) if need_grad else np.empty(0, y_pred.dtype)
        _pointwise(code, targets.reshape(-1), y_pred.reshape(-1), g1, from_logits, *params,
                   lo, hi, 1.0 / denom, partial, w, rows_per_weight * k)
    # The partials are bit-identical for any thread count, and so is their sum.
    return float(partial.sum()) / denom, grad


def crossentropy_rows(name, y_true, y_pred, from_logits=False, need_grad=True):
    """-> (losses y_pred.shape[:-1] in y_pred's dtype, grad or None): keras.ops'
    categorical / sparse categorical cross-entropy of each row (the last axis the classes),
    grad = d(sum of the row losses)/d(y_pred); loss_forward_backward's row kernels, unscaled
    and unweighted."""
    code, targets, y_pred, from_logits, need_grad = operands.crossentropy_rows(
        HOST, name, y_true, y_pred, from_logits, need_grad)
    k = y_pred.shape[y_pred.ndim - 1]
    grad = np.empty_like(y_pred) if need_grad else None
    losses = np.zeros(y_pred.shape[:-1], dtype=np.float64)
    if y_pred.size == 0:
        return losses.astype(y_pred.dtype), grad
    lo, hi, no_weights = _CLIP_BOUNDS[y_pred.dtype.itemsize == 8]
    rows = y_pred.size // k
    p2 = y_pred.reshape(rows, k)
    g2 = grad.reshape(rows, k) if need_grad else np.empty((0, 0), y_pred.dtype)
    if code == LOSS_SCCE:
        _sparse(targets, p2, g2, from_logits, lo, hi, 1.0, losses.reshape(-1), no_weights, 1)
    else:
        _categorical(code, targets.reshape(rows, k), p2, g2, from_logits, lo, hi, 1.0, 0.0,
                     losses.reshape(-1), no_weights, 1)
    return losses.astype(y_pred.dtype), grad


# -- Keras 3's CTC and Circle losses ------------------------------------------------------
# ctc: B samples, T steps, C classes (0 the blank), L labels of a sample, S = 2L + 1 the
# extended label (blanks around and between the labels). Per sample, in double: the
# log-softmax lp, then Graves's forward variables log alpha (B, T, S) and backward ones
# log beta (two rows, both including step t's emission), -log p = -logsumexp(alpha at the
# last two states). The gradient with respect to the logits x:
#   d(-log p)/dx_tk = softmax_tk - sum_{s: symbol(s) = k} exp(a_t(s) + b_t(s) - lp_tk + log p)
# (the posterior of class k at step t). Samples are independent: one prange over B.
# circle: N samples, D embedding size. Row i of s = E E^T (one GEMM, in the input dtype as
# Keras's matmul) gives distances d_ij = max(1 - s_ij, 0) and Keras's logits over its
# positives (same label, j != i under remove_diagonal) and negatives; loss_i =
# softplus(lse_pos + lse_neg) (0 without a positive or a negative: Keras masks such rows, and
# those whose float loss is 0, out of the mean). The rows (one prange) keep c_ij =
# d loss_i / d s_ij (N, N); with k_i = m_i w_i (m the mask, w the sample weights) the
# gradient is the GEMM d/dE = (K C + (K C)^T) E / valid, valid the mask's count.

cdef inline double log_add(double a, double b) noexcept nogil:
    cdef double m = fmax(a, b)
    if m == -INFINITY:
        return m
    return m + log(exp(a - m) + exp(b - m))


cdef inline int ctc_symbol(const int* labels, Py_ssize_t s) noexcept nogil:
    return 0 if s % 2 == 0 else labels[s // 2]


cdef double ctc_sample(const int* labels, Py_ssize_t length, const floating* x,
                       floating* g, double* lp, double* alpha, double* beta, double* row,
                       Py_ssize_t steps, Py_ssize_t classes, double scale) noexcept nogil:
    """-log p of one sample (x: (T, C) logits); g (if not NULL) gets scale * d/dx. lp
    (T, C), alpha (T, S), beta (2, S) and row (C,) are its scratch."""
    cdef Py_ssize_t S = 2 * length + 1, t, s, k, cur, nxt
    cdef int sym
    cdef double m, total, a, log_p
    for t in range(steps):
        m = x[t * classes]
        for k in range(1, classes):
            m = fmax(m, x[t * classes + k])
        total = 0
        for k in range(classes):
            total += exp(x[t * classes + k] - m)
        total = m + log(total)
        for k in range(classes):
            lp[t * classes + k] = x[t * classes + k] - total
    for s in range(S):
        alpha[s] = -INFINITY
    alpha[0] = lp[0]
    if S > 1:
        alpha[1] = lp[ctc_symbol(labels, 1)]
    for t in range(1, steps):
        for s in range(S):
            sym = ctc_symbol(labels, s)
            a = alpha[(t - 1) * S + s]
            if s >= 1:
                a = log_add(a, alpha[(t - 1) * S + s - 1])
            # A label may skip the blank before it unless it repeats the previous label.
            if s >= 2 and sym != 0 and sym != ctc_symbol(labels, s - 2):
                a = log_add(a, alpha[(t - 1) * S + s - 2])
            alpha[t * S + s] = a + lp[t * classes + sym]
    log_p = alpha[(steps - 1) * S + S - 1]
    if S > 1:
        log_p = log_add(log_p, alpha[(steps - 1) * S + S - 2])
    if g == NULL:
        return -log_p
    if log_p != log_p:
        # A NaN logit: torch's gradient is NaN over the whole sample (its -log p enters
        # every entry), and so is this one.
        for k in range(steps * classes):
            g[k] = NAN
        return -log_p
    for t in range(steps - 1, -1, -1):
        cur = (t % 2) * S
        nxt = ((t + 1) % 2) * S
        for k in range(classes):
            row[k] = exp(lp[t * classes + k])
        for s in range(S):
            sym = ctc_symbol(labels, s)
            if t == steps - 1:
                a = 0 if s >= S - 2 else -INFINITY
            else:
                a = beta[nxt + s]
                if s + 1 < S:
                    a = log_add(a, beta[nxt + s + 1])
                if s + 2 < S and sym != 0 and sym != ctc_symbol(labels, s + 2):
                    a = log_add(a, beta[nxt + s + 2])
            beta[cur + s] = a + lp[t * classes + sym]
            row[sym] -= exp(alpha[t * S + s] + beta[cur + s] - lp[t * classes + sym] - log_p)
        for k in range(classes):
            g[t * classes + k] = <floating>(row[k] * scale)
    return -log_p


def _ctc(const int[:, ::1] labels,         # IN  (B, max_length), padded with 0
         const int[::1] lengths,           # IN  (B,) L of each sample (checked)
         const floating[:, :, ::1] x,      # IN  (B, T, C) logits
         floating[:, :, ::1] g,            # OUT (B, T, C) or (0, 0, 0) when no gradient
         double[::1] losses,               # OUT (B,) weighted per-sample losses
         const floating[::1] w,            # IN  (B,) or empty
         double scale):
    """Each sample's -log p (times its weight) into losses; g its gradient times scale."""
    cdef Py_ssize_t B = x.shape[0], T = x.shape[1], C = x.shape[2], b
    # The scratch holds the longest label's states, not the padded width's.
    cdef Py_ssize_t S = 2 * int(np.asarray(lengths).max(initial=0)) + 1
    cdef bint need_grad = g.shape[0] > 0, has_w = w.shape[0] > 0
    # A state update costs a few exp/log: below PARALLEL_MIN / 8 of them in the batch, waking
    # the OpenMP team costs more than it saves.
    cdef bint parallel = B * T * S >= PARALLEL_MIN // 8
    cdef double[:, ::1] lp = np.empty((B, T * C)), alpha = np.empty((B, T * S))
    cdef double[:, ::1] beta = np.empty((B, 2 * S)), row = np.empty((B, C))
    cdef double wb
    with nogil:
        # dynamic: samples' label lengths, and so their costs, differ
        for b in prange(B, schedule="dynamic", use_threads_if=parallel):
            wb = w[b] if has_w else 1.0
            losses[b] = wb * ctc_sample(&labels[b, 0] if labels.shape[1] > 0 else NULL,
                                        lengths[b], &x[b, 0, 0],
                                        &g[b, 0, 0] if need_grad else NULL, &lp[b, 0],
                                        &alpha[b, 0], &beta[b, 0], &row[b, 0], T, C,
                                        scale * wb)


def ctc_loss_forward_backward(y_true, y_pred, need_grad=True, sample_weight=None):
    """-> (mean loss: float, grad or None): Keras 3's CTC (keras.losses.CTC, log-softmax of
    y_pred, blank 0, every sample T steps); grad = d(mean loss)/d(y_pred)."""
    labels, lengths, y_pred, need_grad, weights = operands.ctc_loss_forward_backward(
        HOST, y_true, y_pred, need_grad, sample_weight)
    grad = np.empty_like(y_pred) if need_grad else None
    batch = y_pred.shape[0]
    if y_pred.size == 0:
        return 0.0, grad
    no_weights = _CLIP_BOUNDS[y_pred.dtype.itemsize == 8][2]
    losses = np.empty(batch, dtype=np.float64)
    _ctc(labels, lengths, y_pred, grad if need_grad else np.empty((0, 0, 0), y_pred.dtype),
         losses, weights if weights is not None else no_weights, 1.0 / batch)
    return float(losses.sum()) / batch, grad


def ctc_loss_samples(y_true, y_pred, need_grad=True, sample_weight=None):
    """-> (losses (B,) in y_pred's dtype, grad or None): keras.ops.ctc_loss's per-sample
    -log p (times its weight), grad = d(sum of the weighted losses)/d(y_pred); the recursion
    of ctc_loss_forward_backward, not averaged."""
    labels, lengths, y_pred, need_grad, weights = operands.ctc_loss_samples(
        HOST, y_true, y_pred, need_grad, sample_weight)
    grad = np.empty_like(y_pred) if need_grad else None
    losses = np.zeros(y_pred.shape[0], dtype=np.float64)
    if y_pred.size == 0:
        return losses.astype(y_pred.dtype), grad
    no_weights = _CLIP_BOUNDS[y_pred.dtype.itemsize == 8][2]
    _ctc(labels, lengths, y_pred, grad if need_grad else np.empty((0, 0, 0), y_pred.dtype),
         losses, weights if weights is not None else no_weights, 1.0)
    return losses.astype(y_pred.dtype), grad


cdef inline double max_slope(double x) noexcept nogil:
    """d max(x, 0) / dx as torch's maximum has it: 1 above, 0 below, 1/2 at the tie (the
    diagonal's 1 - s_ii is exactly 0 for rows of unit float norm)."""
    return 1.0 if x > 0 else (0.5 if x == 0 else 0.0)


cdef inline double circle_row(Py_ssize_t i, const int* labels, const floating* sim,
                              Py_ssize_t n, double gamma, double margin,
                              bint remove_diagonal, double* coef,
                              bint need_grad) noexcept nogil:
    """loss_i (see the note above) from row i of sim = E E^T; coef (N,) gets d loss_i /
    d sim_ij (all 0 when the row has no positive or no negative)."""
    cdef Py_ssize_t j
    cdef double s, d, weight, pos_max = -INFINITY, neg_max = -INFINITY
    cdef double pos_sum = 0, neg_sum = 0, lse_pos, lse_neg, z, sig, dlogit
    cdef bint positive, nonfinite = False
    for j in range(n):
        s = sim[j]
        nonfinite = nonfinite or not isfinite(s)
        d = fmax(1 - s, 0)
        positive = labels[j] == labels[i]
        if positive and remove_diagonal and j == i:
            coef[j] = -INFINITY
        elif positive:
            coef[j] = -gamma * fmax(margin + d, 0) * (margin - d)
            pos_max = fmax(pos_max, coef[j])
        else:
            coef[j] = gamma * fmax(1 + margin - d, 0) * (1 - margin - d)
            neg_max = fmax(neg_max, coef[j])
    if nonfinite:
        # A NaN or infinite similarity makes Keras's loss NaN; its mask drops the row (NaN
        # > 0 is false) but NaN * 0 stays NaN: the mean and the gradient turn NaN, as there.
        for j in range(n):
            coef[j] = NAN
        return NAN
    if pos_max == -INFINITY or neg_max == -INFINITY:
        for j in range(n):
            coef[j] = 0
        return 0
    for j in range(n):
        if coef[j] == -INFINITY:
            continue
        if labels[j] == labels[i]:
            pos_sum = pos_sum + exp(coef[j] - pos_max)
        else:
            neg_sum = neg_sum + exp(coef[j] - neg_max)
    lse_pos = pos_max + log(pos_sum)
    lse_neg = neg_max + log(neg_sum)
    z = lse_pos + lse_neg
    if need_grad:
        sig = 1 / (1 + exp(-z)) if z >= 0 else exp(z) / (1 + exp(z))
        for j in range(n):
            if coef[j] == -INFINITY:
                coef[j] = 0
                continue
            s = sim[j]
            d = fmax(1 - s, 0)
            if labels[j] == labels[i]:
                weight = margin + d
                # d logit / d d of -gamma max(m + d, 0) (m - d)
                dlogit = -gamma * ((margin - d) * max_slope(weight) - fmax(weight, 0))
                dlogit = dlogit * exp(coef[j] - lse_pos)
            else:
                weight = 1 + margin - d
                dlogit = gamma * (-(1 - margin - d) * max_slope(weight) - fmax(weight, 0))
                dlogit = dlogit * exp(coef[j] - lse_neg)
            # d = max(1 - s, 0): d d / d s = -1 while 1 - s > 0 (half at 1 - s = 0, as torch)
            coef[j] = -sig * dlogit * max_slope(1 - s)
    return fmax(z, 0) + log1p(exp(-fabs(z)))


def _circle(const int[::1] labels,          # IN  (N,)
            const floating[:, ::1] e,       # IN  (N, D) embeddings
            floating[:, ::1] g,             # OUT (N, D) or (0, 0) when no gradient
            double[::1] losses,             # OUT (N,) per-sample losses (unweighted)
            const floating[::1] w,          # IN  (N,) or empty
            double gamma, double margin, bint remove_diagonal):
    """-> the mean over the unmasked samples of w_i loss_i; g gets its gradient. The two
    products (sim = E E^T, and (C + C^T) E for the gradient) are BLAS GEMMs in the input
    dtype (Keras's matmul is float32 for float32 embeddings too); the rows between them run
    in double."""
    cdef Py_ssize_t n = e.shape[0], dim = e.shape[1], i, j
    cdef bint need_grad = g.shape[0] > 0, has_w = w.shape[0] > 0
    dtype = np.float64 if floating is double else np.float32
    cdef floating[:, ::1] sim = np.empty((n, n), dtype)
    cdef floating[:, ::1] pair = np.empty((n if need_grad else 0, n), dtype)
    cdef double[:, ::1] coef = np.empty((n, n))
    cdef double[::1] keep = np.empty(n)
    cdef double total = 0, scale
    cdef Py_ssize_t valid = 0
    cdef bint parallel = n * n >= PARALLEL_MIN // 8
    with nogil:
        gemm_rowmajor(False, True, <int>n, <int>n, <int>dim, <floating>1, &e[0, 0],
                      <int>dim, &e[0, 0], <int>dim, <floating>0, &sim[0, 0], <int>n)
        for i in prange(n, schedule="static", use_threads_if=parallel):
            losses[i] = circle_row(i, &labels[0], &sim[i, 0], n, gamma, margin,
                                   remove_diagonal, &coef[i, 0], need_grad)
        for i in range(n):
            # Keras's mask: the loss > 0 in the computation's dtype; a row's weight is the
            # mask times its sample weight (a product, so that NaN * 0 stays NaN).
            valid = valid + (<floating>losses[i] > 0)
            keep[i] = (<floating>losses[i] > 0) * (w[i] if has_w else 1.0)
            total = total + losses[i] * keep[i]
        scale = 1.0 / valid if valid else 0
        if need_grad:
            # sim_ij uses e_i and e_j: d/dE = (C + C^T) E with C_ij = keep_i d loss_i / d sim_ij
            for i in prange(n, schedule="static", use_threads_if=parallel):
                for j in range(n):
                    pair[i, j] = <floating>((coef[i, j] * keep[i] + coef[j, i] * keep[j]) * scale)
            gemm_rowmajor(False, False, <int>n, <int>dim, <int>n, <floating>1, &pair[0, 0],
                          <int>n, &e[0, 0], <int>dim, <floating>0, &g[0, 0], <int>dim)
    # No unmasked row: Keras's weights are all 0, the mean 0 (NaN if a loss is NaN).
    return total / valid if valid else total


def circle_loss_forward_backward(y_true, y_pred, gamma=80.0, margin=0.4,
                                 remove_diagonal=True, need_grad=True, sample_weight=None):
    """-> (mean loss: float, grad or None): Keras 3's Circle loss on (N, D) embeddings and
    (N,) integer labels; the mean runs over the samples Keras does not mask (loss > 0)."""
    labels, y_pred, gamma, margin, remove_diagonal, need_grad, weights = \
        operands.circle_loss_forward_backward(HOST, y_true, y_pred, gamma, margin,
                                              remove_diagonal, need_grad, sample_weight)
    grad = np.empty_like(y_pred) if need_grad else None
    if y_pred.shape[0] == 0:
        return 0.0, grad
    no_weights = _CLIP_BOUNDS[y_pred.dtype.itemsize == 8][2]
    losses = np.empty(y_pred.shape[0], dtype=np.float64)
    value = _circle(labels, y_pred, grad if need_grad else np.empty((0, 0), y_pred.dtype),
                    losses, weights if weights is not None else no_weights, gamma, margin,
                    remove_diagonal)
    return float(value), grad
