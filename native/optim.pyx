# distutils: extra_compile_args = -fno-math-errno
# (sqrt's errno path is a branch that keeps gcc from vectorizing the update loops.)
"""Optimizer updates, gradient norms and weight regularizers.

Legend: P parameter elements (any shape, flattened: every op here is elementwise).

Each ``*_update`` is ONE pass over the parameter that, per element, (1) clips the gradient
(``g * grad_scale`` then ``clip(-clipvalue, clipvalue)``), (2) applies decoupled weight decay
``w -= w * weight_decay * lr``, (3) applies the rule with Keras 3's formulas and step order,
writing ``w`` and the slots in place. The gradient is only read (it may be a read-only array).
Elementwise work is split by ``prange(schedule="static")``; each element is touched by one
thread, so results do not depend on the thread count. The arithmetic runs in the parameter's
dtype (as Keras does); scalar coefficients are formed once per call on the host, Adam's bias
corrections in the parameter's dtype exactly as Keras rounds them.

Reductions (``sum_squares``, the penalty of ``regularizer_inplace``) accumulate in double over
fixed blocks of ``BLOCK`` elements; the per-block partials are combined serially in block
order, so the result is bit-identical for any thread count.

Slots an option does not use are None.

Pruning masks (issue 18): every ``*_update`` takes an optional uint8 ``mask`` shaped like ``w``.
Where it is 0 the element's new weight AND every slot are written as exact zeros in the same
pass, so a pruned weight stays zero and no optimizer state (momentum, Adam's moments, weight
decay) can move it back. The mask is a second fused type: ``NoMask`` (a 1-element int8 stand-in)
compiles the selects away, so unmasked updates run the loops they ran before.

Every array is checked (type, dtype, shape,
contiguity, writability, no aliasing with ``w``) before the GIL is released; a wrong call is a
ValueError/TypeError, never an out-of-bounds access.
"""
import math

import numpy as np

cimport numpy as cnp

from cython.parallel cimport prange
from _openmp cimport omp_get_max_threads
from libc.math cimport sqrt, fabs, fma, fmaf
from libc.float cimport FLT_MIN, DBL_MIN

from pynn.backend.operands import optim as operands
from pynn.backend.operands.common import HOST

include "_team.pxi"

ctypedef fused floating:
    float
    double

# Reduction block: partials of this many elements are summed in a fixed order. Changing it
# changes the last bits of norms, so it is a constant, not a tunable.
# Below PARALLEL_MIN elements waking the OpenMP team costs more than the pass itself.
cdef enum:
    BLOCK = 4096
    PARALLEL_MIN = 32768
    # The unit of work of the unmasked Adam step, one parameter or many (_adam_span). A
    # multiple of every vector width, so only a parameter's last span has a scalar tail.
    SPAN = 16384


def _clip(clip):
    """(grad_scale, clipvalue, decay) as the kernels take them: no clipvalue (0 or less)
    becomes an infinite bound, so the kernels clip unconditionally."""
    scale, clipvalue, decay = clip
    return scale, (clipvalue if clipvalue > 0 else math.inf), decay


# -- per-element pieces shared by every rule ------------------------------------------------

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    /* Plain C selects, which gcc turns into vector blends and min/max without AVX-512's
     * masks; the same logic as nested ifs, or through Cython's if/else temporaries, kept
     * the update loops scalar on AVX2. */
    static inline float pynn_clip_f(float g, float lim) {
        g = g > lim ? lim : g;
        return g < -lim ? -lim : g;
    }
    static inline double pynn_clip_d(double g, double lim) {
        g = g > lim ? lim : g;
        return g < -lim ? -lim : g;
    }
    /* The flush as a bit mask: a ?: here still left RMSprop's momentum loop (two flushes
     * around a division) scalar. NaN and inf keep their bits. */
    #define PYNN_FLUSH(NAME, T, I, ABS)                                                \\
    static inline T NAME(T x, T tiny) {                                                \\
        I bits;                                                                        \\
        memcpy(&bits, &x, sizeof bits);                                                \\
        bits &= -(I)((ABS(x) >= tiny) | (x != x));                                     \\
        memcpy(&x, &bits, sizeof x);                                                   \\
        return x;                                                                      \\
    }
    PYNN_FLUSH(pynn_flush_f, float, int32_t, fabsf)
    PYNN_FLUSH(pynn_flush_d, double, int64_t, fabs)
    /* x where keep is nonzero, else +0, as a bit mask (a select gcc vectorizes; keep a
     * constant 1 folds it away). */
    #define PYNN_KEEP(NAME, T, I)                                                      \
    static inline T NAME(T x, unsigned char keep) {                                    \
        I bits;                                                                        \
        memcpy(&bits, &x, sizeof bits);                                                \
        bits &= -(I)(keep != 0);                                                       \
        memcpy(&x, &bits, sizeof x);                                                   \
        return x;                                                                      \
    }
    PYNN_KEEP(pynn_keep_f, float, int32_t)
    PYNN_KEEP(pynn_keep_d, double, int64_t)
    """
    float pynn_clip_f(float g, float lim) noexcept nogil
    double pynn_clip_d(double g, double lim) noexcept nogil
    float pynn_flush_f(float x, float tiny) noexcept nogil
    double pynn_flush_d(double x, double tiny) noexcept nogil
    float pynn_keep_f(float x, unsigned char keep) noexcept nogil
    double pynn_keep_d(double x, unsigned char keep) noexcept nogil


# -- pruning masks (issue 18) ---------------------------------------------------------------
# MaskBit: a real uint8 mask. NoMask: no mask, chosen at compile time through the fused type,
# so the unmasked specialization of every loop has no mask load and no select.
ctypedef unsigned char MaskBit
ctypedef signed char NoMask

ctypedef fused mask_t:
    MaskBit
    NoMask

# The NoMask stand-in: never read, but a valid pointer.
_NO_MASK = np.ones(1, dtype=np.int8)
cdef const signed char[::1] _NO_MASK_VIEW = _NO_MASK


cdef inline unsigned char keep_of(const mask_t* mask, Py_ssize_t i) noexcept nogil:
    if mask_t is MaskBit:
        return mask[i]
    else:
        return 1


cdef inline floating kept(floating x, unsigned char keep) noexcept nogil:
    """x, or an exact 0 where the mask prunes the element."""
    if floating is float:
        return pynn_keep_f(x, keep)
    else:
        return pynn_keep_d(x, keep)


def _mask_arg(mask):
    """The mask as the kernels take it: the checked uint8 mask flattened, or the NoMask
    stand-in."""
    return _NO_MASK if mask is None else mask.reshape(-1)


cdef inline floating clipped_grad(floating g, floating scale, floating lim) noexcept nogil:
    """g * scale, clipped to [-lim, lim]; lim is +inf without clipvalue (see _clip_args).
    NaN passes through (every comparison with it is false)."""
    if floating is float:
        return pynn_clip_f(g * scale, lim)
    else:
        return pynn_clip_d(g * scale, lim)


cdef inline floating decayed(floating w, floating decay) noexcept nogil:
    """Keras's decoupled weight decay w - w * (weight_decay * lr), computed unconditionally:
    for finite w, w - w * 0 is w. An infinite weight becomes NaN here where Keras, which
    skips the step without weight_decay, keeps inf (training has diverged either way). The
    select that would keep it made gcc give up vectorizing the amsgrad loop (0.3 -> 4.5 ms
    for 784x512)."""
    return w - w * decay


cdef inline floating flushed(floating x, floating tiny) noexcept nogil:
    """x, or 0 when x is subnormal. Moments of dead units decay geometrically into the
    subnormal range, where every multiply takes a microcode assist (~16x slower steps);
    TensorFlow/Keras run with flush-to-zero, so this keeps their numbers too. A bit mask in C
    (pynn_flush_*), so the loops vectorize: the same select in Cython, with its if/else
    temporaries, stayed a branch without AVX-512's masks, and the Adam, RMSprop and momentum
    loops ran scalar on AVX2 (10 ns per element). NaN and inf pass through."""
    if floating is float:
        return pynn_flush_f(x, tiny)
    else:
        return pynn_flush_d(x, tiny)


cdef inline floating fmadd(floating a, floating b, floating c) noexcept nogil:
    """a * b + c with one rounding. Spelled out where an expression has two products
    (a*b + c*d): -ffp-contract=fast may fuse either one, and gcc need not pick the same one in
    the vectorized body as in the scalar tail, whose elements move with the thread count."""
    if floating is float:
        return fmaf(a, b, c)
    else:
        return fma(a, b, c)


# -- reductions -----------------------------------------------------------------------------

cdef inline double block_sum_squares(const floating* a, Py_ssize_t n) noexcept nogil:
    # Four independent chains hide the add latency; their combine order is fixed.
    cdef double s0 = 0, s1 = 0, s2 = 0, s3 = 0, x0, x1, x2, x3
    cdef Py_ssize_t j = 0
    while j + 4 <= n:
        x0 = a[j]
        x1 = a[j + 1]
        x2 = a[j + 2]
        x3 = a[j + 3]
        s0 += x0 * x0
        s1 += x1 * x1
        s2 += x2 * x2
        s3 += x3 * x3
        j += 4
    while j < n:
        x0 = a[j]
        s0 += x0 * x0
        j += 1
    return (s0 + s1) + (s2 + s3)


ctypedef struct _BlocksJob:
    bint is_double
    const void* w
    void* grad
    double* partial      # one (or two, regularize) doubles per block
    Py_ssize_t n
    double l1, two_l2


cdef inline void _sum_squares_blocks(const _BlocksJob* j, const floating* a, long begin,
                                     long end) noexcept nogil:
    cdef long blk
    cdef Py_ssize_t j0, j1
    for blk in range(begin, end):
        j0 = blk * BLOCK
        j1 = j0 + BLOCK if j0 + BLOCK < j.n else j.n
        j.partial[blk] = block_sum_squares(a + j0, j1 - j0)


cdef void _sum_squares_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _BlocksJob* j = <_BlocksJob*>ctx
    if j.is_double:
        _sum_squares_blocks(j, <const double*>j.w, begin, end)
    else:
        _sum_squares_blocks(j, <const float*>j.w, begin, end)


def _sum_squares(const floating[::1] a):
    """Fixed blocks on pynn's worker team, their partials added in block order."""
    cdef Py_ssize_t n = a.shape[0]
    cdef Py_ssize_t nblk = (n + BLOCK - 1) // BLOCK, blk
    cdef double[::1] partial = np.empty(nblk, dtype=np.float64)
    cdef double total = 0
    cdef _BlocksJob job
    cdef int threads = omp_get_max_threads() if n >= PARALLEL_MIN else 1
    if n == 0:
        return 0.0
    job.is_double, job.w, job.partial, job.n = floating is double, &a[0], &partial[0], n
    with nogil:
        pynn_team_for(nblk, team_grain(nblk, threads), threads, _sum_squares_job, &job)
    for blk in range(nblk):
        total += partial[blk]
    return total


def sum_squares(a):
    """sum(a**2) over every element, accumulated in double; a Python float.

    Deterministic for any thread count (fixed blocks, fixed combine order)."""
    return float(_sum_squares(operands.sum_squares(HOST, a).reshape(-1)))


cdef inline void block_regularize(const floating* w, floating* grad, Py_ssize_t n,
                                  floating l1, floating two_l2,
                                  double* abs_sum, double* sq_sum) noexcept nogil:
    cdef double sa = 0, sq = 0, x
    cdef floating wi, sign
    cdef Py_ssize_t j
    for j in range(n):
        wi = w[j]
        # sign(0) = 0: the subgradient Keras's autodiff of |w| takes at 0.
        sign = (wi > 0) - (wi < 0)
        grad[j] = grad[j] + (l1 * sign + two_l2 * wi)
        x = wi
        sa += fabs(x)
        sq += x * x
    abs_sum[0] = sa
    sq_sum[0] = sq


cdef inline void _regularize_blocks(const _BlocksJob* j, const floating* w, long begin,
                                    long end) noexcept nogil:
    cdef long blk
    cdef Py_ssize_t j0, j1
    for blk in range(begin, end):
        j0 = blk * BLOCK
        j1 = j0 + BLOCK if j0 + BLOCK < j.n else j.n
        block_regularize(w + j0, <floating*>j.grad + j0, j1 - j0, <floating>j.l1,
                         <floating>j.two_l2, j.partial + 2 * blk, j.partial + 2 * blk + 1)


cdef void _regularize_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _BlocksJob* j = <_BlocksJob*>ctx
    if j.is_double:
        _regularize_blocks(j, <const double*>j.w, begin, end)
    else:
        _regularize_blocks(j, <const float*>j.w, begin, end)


def _regularize(const floating[::1] w, floating[::1] grad, double l1, double l2):
    """Fixed blocks on pynn's worker team, their partials added in block order."""
    cdef Py_ssize_t n = w.shape[0]
    cdef Py_ssize_t nblk = (n + BLOCK - 1) // BLOCK, blk
    cdef double[:, ::1] partial = np.empty((nblk, 2), dtype=np.float64)
    cdef double abs_total = 0, sq_total = 0
    cdef _BlocksJob job
    cdef int threads = omp_get_max_threads() if n >= PARALLEL_MIN else 1
    if n == 0:
        return 0.0
    # the coefficients rounded to w's type, as block_regularize takes them
    job.is_double, job.w, job.grad, job.partial, job.n = floating is double, &w[0], \
        &grad[0], &partial[0, 0], n
    job.l1, job.two_l2 = <floating>l1, <floating>(2.0 * l2)
    with nogil:
        pynn_team_for(nblk, team_grain(nblk, threads), threads, _regularize_job, &job)
    for blk in range(nblk):
        abs_total += partial[blk, 0]
        sq_total += partial[blk, 1]
    return l1 * abs_total + l2 * sq_total


def regularizer_inplace(w, grad, l1, l2):
    """grad += l1*sign(w) + 2*l2*w (IN/OUT grad); returns the penalty
    l1*sum|w| + l2*sum(w**2) (Keras's L1L2, no 1/2) as a Python float."""
    w, grad, l1, l2 = operands.regularizer_inplace(HOST, w, grad, l1, l2)
    if l1 == 0.0 and l2 == 0.0:
        return 0.0
    return float(_regularize(w.reshape(-1), grad.reshape(-1), l1, l2))


# -- SGD ------------------------------------------------------------------------------------

cdef inline void _sgd_span(floating* w, const floating* g, floating* buf, bint use_buf,
                           bint nesterov, const mask_t* mk, Py_ssize_t n, floating lr_,
                           floating mu, floating scale, floating clip, floating dec,
                           floating tiny) noexcept nogil:
    """SGD over n elements (the mask already offset, or NoMask), in spans of SPAN as Adam's
    (_adam_span): one parameter (_sgd) or many (_sgd_many) give the same bits."""
    cdef Py_ssize_t i
    cdef unsigned char k
    cdef floating gi, wi, mi
    for i in range(n):
        k = keep_of(mk, i)
        gi = clipped_grad(g[i], scale, clip)
        wi = decayed(w[i], dec)
        if use_buf:
            mi = flushed(fmadd(buf[i], mu, -(gi * lr_)), tiny)
            buf[i] = kept(mi, k)
            if nesterov:
                wi = wi + fmadd(mi, mu, -(gi * lr_))
            else:
                wi = wi + mi
        else:
            wi = wi - gi * lr_
        w[i] = kept(wi, k)


def _sgd(floating[::1] w, const floating[::1] g, floating[::1] buf, bint use_buf,
         const mask_t[::1] mask, double lr, double momentum, bint nesterov, double grad_scale,
         double clipvalue, double decay):
    cdef Py_ssize_t n = w.shape[0], span, s
    cdef const mask_t* mk = &mask[0]
    cdef Py_ssize_t mstride = 1 if mask_t is MaskBit else 0
    cdef floating lr_ = <floating>lr, mu = <floating>momentum
    cdef floating scale = <floating>grad_scale, clip = <floating>clipvalue
    cdef floating dec = <floating>decay
    cdef floating tiny = FLT_MIN if floating is float else DBL_MIN
    if n == 0:
        return
    with nogil:
        for span in prange((n + SPAN - 1) // SPAN, schedule="static",
                           use_threads_if=n >= PARALLEL_MIN):
            s = span * SPAN
            _sgd_span(&w[s], &g[s], &buf[s], use_buf, nesterov, mk + s * mstride,
                      SPAN if n - s > SPAN else n - s, lr_, mu, scale, clip, dec, tiny)


ctypedef struct _SgdManyJob:
    bint is_double, use_buf, nesterov
    const Py_ssize_t* params     # (nparams, 5): w, g, buf addresses (col 3 unused), count
    const double* scales
    const Py_ssize_t* first
    Py_ssize_t nparams
    double lr, mu, clip, decay


cdef inline void _sgd_many_spans(const _SgdManyJob* k, floating tiny, long begin,
                                 long end) noexcept nogil:
    cdef const NoMask* nomask = <const NoMask*><void*>&_NO_MASK_VIEW[0]
    cdef long c
    cdef Py_ssize_t j, s
    cdef const Py_ssize_t* row
    for c in range(begin, end):
        j = _span_owner(k.first, k.nparams, c)
        row = k.params + 5 * j
        s = (c - k.first[j]) * SPAN
        _sgd_span(<floating*><void*>row[0] + s, <const floating*><void*>row[1] + s,
                  <floating*><void*>row[2] + s, k.use_buf, k.nesterov, nomask,
                  SPAN if row[4] - s > SPAN else row[4] - s, <floating>k.lr, <floating>k.mu,
                  <floating>k.scales[j], <floating>k.clip, <floating>k.decay, tiny)


cdef void _sgd_many_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _SgdManyJob* k = <_SgdManyJob*>ctx
    if k.is_double:
        _sgd_many_spans(k, <double>DBL_MIN, begin, end)
    else:
        _sgd_many_spans(k, <float>FLT_MIN, begin, end)


def _sgd_many(floating[::1] like, const Py_ssize_t[:, ::1] params, const double[::1] scales,
              double lr, double momentum, bint use_buf, bint nesterov, double clipvalue,
              double decay):
    """_sgd (unmasked) over many parameters as one job of pynn's worker team, rows of
    ``params`` as _adam_many's (column 2 the momentum buffer when use_buf), cut into _sgd's
    spans: parameter j gets the bits _sgd would give it."""
    cdef Py_ssize_t nparams = params.shape[0], total = 0, nspans
    cdef Py_ssize_t[::1] first = np.empty(nparams + 1, dtype=np.intp)
    cdef _SgdManyJob job
    cdef int threads
    nspans = _span_table(params, first, &total)
    if nspans == 0:
        return
    threads = omp_get_max_threads() if total >= PARALLEL_MIN else 1
    # The coefficients rounded to the parameters' type, as _sgd takes them.
    job.is_double, job.use_buf, job.nesterov = floating is double, use_buf, nesterov
    job.params, job.scales, job.first, job.nparams = &params[0, 0], &scales[0], &first[0], \
        nparams
    job.lr, job.mu = <floating>lr, <floating>momentum
    job.clip, job.decay = <floating>clipvalue, <floating>decay
    with nogil:
        pynn_team_for(nspans, team_grain(nspans, threads), threads, _sgd_many_job, &job)


cdef Py_ssize_t _span_table(const Py_ssize_t[:, ::1] params, Py_ssize_t[::1] first,
                            Py_ssize_t* total) noexcept:
    """first[j] = the first span of parameter j (first[nparams]: their count, returned) for
    the many-parameter ops; *total = their elements."""
    cdef Py_ssize_t nparams = params.shape[0], j, nspans = 0
    total[0] = 0
    for j in range(nparams):
        first[j] = nspans
        nspans += (params[j, 4] + SPAN - 1) // SPAN
        total[0] += params[j, 4]
    first[nparams] = nspans
    return nspans


cdef inline Py_ssize_t _span_owner(const Py_ssize_t* first, Py_ssize_t nparams,
                                   Py_ssize_t c) noexcept nogil:
    """The parameter holding span c of a many-parameter op: the last j with first[j] <= c."""
    cdef Py_ssize_t lo = 0, hi = nparams, mid
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if first[mid] <= c:
            lo = mid
        else:
            hi = mid
    return lo


def sgd_update(w, g, momentum_buf, lr, momentum, nesterov, grad_scale, clipvalue,
               weight_decay, mask=None):
    """SGD step in place (IN/OUT w, momentum_buf; IN g).

    momentum_buf None: w -= lr*g. Else m = momentum*m - lr*g, then w += m, or with nesterov
    w += momentum*m - lr*g (Keras 3)."""
    w, g, buf, lr, momentum, nesterov, clip = operands.sgd_update(
        HOST, w, g, momentum_buf, lr, momentum, nesterov, grad_scale, clipvalue, weight_decay)
    mask = operands.update_mask(HOST, "sgd_update", w, mask)
    flat_w = w.reshape(-1)
    _sgd(flat_w, g.reshape(-1), flat_w if buf is None else buf.reshape(-1), buf is not None,
         _mask_arg(mask), lr, momentum, nesterov, *_clip(clip))



def sgd_update_many(ws, gs, momentum_bufs, lr, momentum, nesterov, grad_scales, clipvalue,
                    weight_decay):
    """sgd_update (no mask) on every (ws[j], gs[j], momentum_bufs[j]) with grad_scale
    grad_scales[j] as one op (momentum_bufs None: plain SGD), with the bits sgd_update gives
    each: one OpenMP region for the step and no per-parameter Python."""
    ws, gs, bufs, scales, lr, momentum, nesterov, clip = operands.sgd_update_many(
        HOST, ws, gs, momentum_bufs, lr, momentum, nesterov, grad_scales, clipvalue,
        weight_decay)
    params, like, bad = _many_params(ws, gs, [] if bufs is None else [bufs])
    if bad >= 0:
        # As adam_update_many: every parameter checked before any is touched, then
        # sgd_update one at a time for what the checks accept.
        for j in range(len(ws)):
            operands.sgd_update(HOST, ws[j], gs[j], None if bufs is None else bufs[j], lr,
                                momentum, nesterov, float(scales[j]), clipvalue, weight_decay)
        for j in range(len(ws)):
            sgd_update(ws[j], gs[j], None if bufs is None else bufs[j], lr, momentum,
                       nesterov, float(scales[j]), clipvalue, weight_decay)
        return
    if len(ws) == 0:
        return
    _, clipv, decay = _clip(clip)
    _sgd_many(like, params, scales, lr, momentum, bufs is not None, nesterov, clipv, decay)

# -- Adam / AdamW ---------------------------------------------------------------------------

cdef inline void _adam_span(floating* w, const floating* g, floating* m, floating* v,
                            const mask_t* mk, Py_ssize_t n, floating alpha_, floating one_b1,
                            floating one_b2, floating eps, floating scale, floating clip,
                            floating dec, floating tiny) noexcept nogil:
    """Adam without amsgrad over n elements (the mask already offset, or NoMask). Every
    unmasked Adam step runs this on spans of SPAN elements cut from the start of its
    parameter, one parameter (_adam) or many (_adam_many): the vector body and scalar tail
    fall on the same elements either way, so both give the same bits."""
    cdef Py_ssize_t i
    cdef unsigned char k
    cdef floating gi, wi, mi, vi
    for i in range(n):
        k = keep_of(mk, i)
        gi = clipped_grad(g[i], scale, clip)
        wi = decayed(w[i], dec)
        mi = flushed(m[i] + (gi - m[i]) * one_b1, tiny)
        vi = flushed(v[i] + (gi * gi - v[i]) * one_b2, tiny)
        m[i] = kept(mi, k)
        v[i] = kept(vi, k)
        # epsilon goes on the uncorrected sqrt(v): alpha carries both bias corrections.
        w[i] = kept(wi - (mi * alpha_) / (<floating>sqrt(vi) + eps), k)


def _adam(floating[::1] w, const floating[::1] g, floating[::1] m, floating[::1] v,
          floating[::1] vhat, bint amsgrad, const mask_t[::1] mask, double alpha,
          double beta_1, double beta_2, double epsilon, double grad_scale, double clipvalue,
          double decay):
    cdef Py_ssize_t n = w.shape[0], i, span, s
    cdef const mask_t* mk = &mask[0]
    cdef Py_ssize_t mstride = 1 if mask_t is MaskBit else 0
    cdef unsigned char k
    cdef floating alpha_ = <floating>alpha, eps = <floating>epsilon
    cdef floating one_b1 = <floating>(1.0 - beta_1), one_b2 = <floating>(1.0 - beta_2)
    cdef floating scale = <floating>grad_scale, clip = <floating>clipvalue
    cdef floating dec = <floating>decay
    cdef floating gi, wi, mi, vi, vh
    cdef floating tiny = FLT_MIN if floating is float else DBL_MIN
    if n == 0:
        return
    # amsgrad picks between two copies of the loop: a loop-invariant branch inside the body
    # keeps gcc from vectorizing it.
    with nogil:
        if amsgrad:
            for i in prange(n, schedule="static", use_threads_if=n >= PARALLEL_MIN):
                k = keep_of(mk, i)
                gi = clipped_grad(g[i], scale, clip)
                wi = decayed(w[i], dec)
                mi = flushed(m[i] + (gi - m[i]) * one_b1, tiny)
                vi = flushed(v[i] + (gi * gi - v[i]) * one_b2, tiny)
                m[i] = kept(mi, k)
                v[i] = kept(vi, k)
                vh = flushed(vhat[i], tiny)
                vi = vh if vh > vi else vi
                vhat[i] = kept(vi, k)
                w[i] = kept(wi - (mi * alpha_) / (<floating>sqrt(vi) + eps), k)
        else:
            for span in prange((n + SPAN - 1) // SPAN, schedule="static",
                               use_threads_if=n >= PARALLEL_MIN):
                s = span * SPAN
                _adam_span(&w[s], &g[s], &m[s], &v[s], mk + s * mstride,
                           SPAN if n - s > SPAN else n - s, alpha_, one_b1, one_b2, eps,
                           scale, clip, dec, tiny)


ctypedef struct _AdamManyJob:
    bint is_double
    const Py_ssize_t* params     # (nparams, 5): w, g, m, v addresses and the element count
    const double* scales
    const Py_ssize_t* first
    Py_ssize_t nparams
    double alpha, one_b1, one_b2, eps, clip, decay


cdef inline void _adam_many_spans(const _AdamManyJob* k, floating tiny, long begin,
                                  long end) noexcept nogil:
    cdef const NoMask* nomask = <const NoMask*><void*>&_NO_MASK_VIEW[0]
    cdef long c
    cdef Py_ssize_t j, s
    cdef const Py_ssize_t* row
    for c in range(begin, end):
        j = _span_owner(k.first, k.nparams, c)
        row = k.params + 5 * j
        s = (c - k.first[j]) * SPAN
        _adam_span(<floating*><void*>row[0] + s, <const floating*><void*>row[1] + s,
                   <floating*><void*>row[2] + s, <floating*><void*>row[3] + s,
                   nomask, SPAN if row[4] - s > SPAN else row[4] - s, <floating>k.alpha,
                   <floating>k.one_b1, <floating>k.one_b2, <floating>k.eps,
                   <floating>k.scales[j], <floating>k.clip, <floating>k.decay, tiny)


cdef void _adam_many_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _AdamManyJob* k = <_AdamManyJob*>ctx
    if k.is_double:
        _adam_many_spans(k, <double>DBL_MIN, begin, end)
    else:
        _adam_many_spans(k, <float>FLT_MIN, begin, end)


def _adam_many(floating[::1] like, const Py_ssize_t[:, ::1] params, const double[::1] scales,
               double alpha, double beta_1, double beta_2, double epsilon, double clipvalue,
               double decay):
    """_adam (unmasked, no amsgrad) over many parameters as one job of pynn's worker team
    (native/_team.h): row j of ``params`` is (w, g, m, v) addresses and the element count of
    parameter j, all of ``like``'s dtype, checked by the caller; ``scales[j]`` its
    grad_scale. The work is cut into _adam's spans, so parameter j gets the bits _adam would
    give it."""
    cdef Py_ssize_t nparams = params.shape[0], total = 0, nspans
    cdef Py_ssize_t[::1] first = np.empty(nparams + 1, dtype=np.intp)
    cdef _AdamManyJob job
    cdef int threads
    nspans = _span_table(params, first, &total)
    if nspans == 0:
        return
    threads = omp_get_max_threads() if total >= PARALLEL_MIN else 1
    # The coefficients rounded to the parameters' type, as _adam takes them.
    job.is_double = floating is double
    job.params, job.scales, job.first, job.nparams = &params[0, 0], &scales[0], &first[0], \
        nparams
    job.alpha, job.eps = <floating>alpha, <floating>epsilon
    job.one_b1, job.one_b2 = <floating>(1.0 - beta_1), <floating>(1.0 - beta_2)
    job.clip, job.decay = <floating>clipvalue, <floating>decay
    with nogil:
        pynn_team_for(nspans, team_grain(nspans, threads), threads, _adam_many_job, &job)


def adam_update(w, g, m, v, vhat, lr, beta_1, beta_2, epsilon, t, grad_scale,
                clipvalue, weight_decay, mask=None):
    """Adam (AdamW with weight_decay) step in place (IN/OUT w, m, v, vhat; IN g).

    alpha = lr*sqrt(1-beta_2**t)/(1-beta_1**t); m += (g-m)(1-beta_1); v += (g*g-v)(1-beta_2);
    vhat = max(vhat, v) when vhat is given (amsgrad); w -= alpha*m/(sqrt(v or vhat) + epsilon).
    t is the 1-based step."""
    w, g, m, v, vhat, alpha, beta_1, beta_2, epsilon, clip = operands.adam_update(
        HOST, w, g, m, v, vhat, lr, beta_1, beta_2, epsilon, t, grad_scale, clipvalue,
        weight_decay)
    mask = operands.update_mask(HOST, "adam_update", w, mask)
    flat_w = w.reshape(-1)
    _adam(flat_w, g.reshape(-1), m.reshape(-1), v.reshape(-1),
          flat_w if vhat is None else vhat.reshape(-1), vhat is not None, _mask_arg(mask),
          alpha, beta_1, beta_2, epsilon, *_clip(clip))



cdef inline bint _overlap(cnp.ndarray a, cnp.ndarray b) noexcept:
    cdef char* pa = <char*>cnp.PyArray_DATA(a)
    cdef char* pb = <char*>cnp.PyArray_DATA(b)
    cdef Py_ssize_t n = cnp.PyArray_NBYTES(a)
    return n > 0 and pa < pb + n and pb < pa + n


cdef inline bint _plain(object a, int type_num, object shape) noexcept:
    """a is a C-contiguous, aligned, writable, native-order ndarray of type_num and shape."""
    return (type(a) is np.ndarray and cnp.PyArray_TYPE(<cnp.ndarray>a) == type_num
            and cnp.PyArray_ISCARRAY(<cnp.ndarray>a)
            and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>a) and a.shape == shape)


def _many_params(list ws, list gs, list slots):
    """(params, like, -1) for the many-parameter ops when every w, its g and its slots (the
    lists in ``slots``, one per kind: Adam's m and v, SGD's momentum buffer) are plain: one
    float dtype, w's shape, C-contiguous and writable, w and the slots apart. Else (None,
    None, j) for the first parameter j that is not; the caller words its error. Row j of
    params: w, g, the slots (w's address where a kind is absent), the element count. A pass
    of C checks: the point of these ops is to skip the per-parameter Python."""
    cdef Py_ssize_t n = len(ws), j, k
    cdef Py_ssize_t[:, ::1] params = np.empty((n, 5), dtype=np.intp)
    cdef int type_num
    cdef list kinds = [list(kind) for kind in slots]
    if n == 0:
        return params, np.empty(0, np.float32), -1
    if type(ws[0]) is not np.ndarray or ws[0].dtype not in (np.float32, np.float64):
        return None, None, 0
    type_num = cnp.PyArray_TYPE(<cnp.ndarray>ws[0])
    for j in range(n):
        w, g = ws[j], gs[j]
        if type(w) is not np.ndarray:
            return None, None, j
        shape = w.shape
        if not (_plain(w, type_num, shape) and _plain(g, type_num, shape)):
            return None, None, j
        params[j, 0] = <Py_ssize_t>cnp.PyArray_DATA(<cnp.ndarray>w)
        params[j, 1] = <Py_ssize_t>cnp.PyArray_DATA(<cnp.ndarray>g)
        params[j, 2] = params[j, 3] = params[j, 0]
        for k in range(len(kinds)):
            m = kinds[k][j]
            if not _plain(m, type_num, shape) or _overlap(w, m):
                return None, None, j
            if k == 1 and _overlap(kinds[0][j], m):
                return None, None, j
            params[j, 2 + k] = <Py_ssize_t>cnp.PyArray_DATA(<cnp.ndarray>m)
        params[j, 4] = cnp.PyArray_SIZE(<cnp.ndarray>w)
    return params, ws[0].reshape(-1)[:1], -1


def adam_update_many(ws, gs, ms, vs, lr, beta_1, beta_2, epsilon, t, grad_scales, clipvalue,
                     weight_decay):
    """adam_update (no amsgrad, no mask) on every (ws[j], gs[j], ms[j], vs[j]) with grad_scale
    grad_scales[j], as one op: one OpenMP region for the whole step instead of one per
    parameter (and no per-parameter Python), with the bits adam_update gives each."""
    ws, gs, ms, vs, scales, beta_1, beta_2, epsilon, t, clip = operands.adam_update_many(
        HOST, ws, gs, ms, vs, lr, beta_1, beta_2, epsilon, t, grad_scales, clipvalue,
        weight_decay)
    params, like, bad = _many_params(ws, gs, [ms, vs])
    if bad >= 0:
        # Something adam_update would convert (a strided or other-typed gradient) or refuse:
        # its checks, on every parameter before any is touched, word the refusal; what they
        # accept takes adam_update one parameter at a time, which gives the same bits.
        for j in range(len(ws)):
            operands.adam_update(HOST, ws[j], gs[j], ms[j], vs[j], None, lr, beta_1, beta_2,
                                 epsilon, t, float(scales[j]), clipvalue, weight_decay)
        for j in range(len(ws)):
            adam_update(ws[j], gs[j], ms[j], vs[j], None, lr, beta_1, beta_2, epsilon, t,
                        float(scales[j]), clipvalue, weight_decay)
        return
    if len(ws) == 0:
        return
    alpha = operands.adam_step_size(like.dtype, lr, beta_1, beta_2, t)
    _, clipv, decay = _clip(clip)
    _adam_many(like, params, scales, alpha, beta_1, beta_2, epsilon, clipv, decay)

# -- RMSprop --------------------------------------------------------------------------------

cdef struct RMSpropCoef:
    double lr, rho, one_rho, mu, eps, scale, clip, decay, tiny


cdef inline void _rmsprop_element(floating* w, const floating* g, floating* vel,
                                  floating* mom, floating* avg, const mask_t* mask,
                                  Py_ssize_t i, RMSpropCoef k, bint centered,
                                  bint use_mom) noexcept nogil:
    """One element of the RMSprop step. Called with literal flags, so each inlined copy is
    straight-line code that gcc vectorizes: branches on the flags inside the loop kept it
    scalar on AVX2 (8x slower than Adagrad)."""
    cdef floating rho = <floating>k.rho, one_rho = <floating>k.one_rho, tiny = <floating>k.tiny
    cdef floating gi = clipped_grad(g[i], <floating>k.scale, <floating>k.clip)
    cdef floating wi = decayed(w[i], <floating>k.decay)
    cdef floating vi = flushed(fmadd(rho, vel[i], one_rho * (gi * gi)), tiny)
    cdef floating ai, den, inc
    cdef unsigned char keep = keep_of(mask, i)
    vel[i] = kept(vi, keep)
    if centered:
        ai = flushed(fmadd(rho, avg[i], one_rho * gi), tiny)
        avg[i] = kept(ai, keep)
        den = fmadd(-ai, ai, vi) + <floating>k.eps
    else:
        den = vi + <floating>k.eps
    # epsilon sits inside the square root (Keras, unlike PyTorch).
    inc = (<floating>k.lr * gi) / <floating>sqrt(den)
    if use_mom:
        inc = flushed(fmadd(<floating>k.mu, mom[i], inc), tiny)
        mom[i] = kept(inc, keep)
    w[i] = kept(wi - inc, keep)


# -- the per-parameter updates of the other optimizers, on pynn's worker team -------------
# One job type for RMSprop, Adagrad, Nadam, Adamax, Adadelta, FTRL and Lion: the def
# functions round their coefficients to the parameter's type (as the loops always took them)
# into c[], and _update_range runs the optimizer's own element loop (literal per kind, so
# each vectorizes as before) over spans of SPAN elements. Each element is updated alone: the
# same bits at any thread count.

cdef enum:
    UPD_ADAGRAD = 0
    UPD_NADAM = 1
    UPD_ADAMAX = 2
    UPD_ADADELTA = 3
    UPD_FTRL = 4
    UPD_LION = 5
    UPD_RMSPROP = 6


ctypedef struct _UpdateJob:
    bint is_double, masked
    int kind
    void* w
    const void* g
    void* s1
    void* s2
    void* s3             # RMSprop's average gradient
    const void* mask
    Py_ssize_t n
    double c[10]         # [scale, clip, decay, lr, then the optimizer's own]
    double power         # FTRL's learning_rate_power (an exponent in double)
    RMSpropCoef rms      # RMSprop's coefficients (_rmsprop_element takes them whole)
    bint centered, use_mom


cdef inline void _ftrl_step(floating* w, floating* a, floating* b, Py_ssize_t i,
                             floating gi, floating wi, floating ai, floating na, floating pna,
                             floating pa, floating lr_, floating c4, floating c5, floating c6,
                             unsigned char k) noexcept nogil:
    """FTRL's element update from its accumulator's powers pna (new) and pa (old)."""
    cdef floating li = b[i] + ((gi + c6 * wi) - ((pna - pa) / lr_) * wi)
    cdef floating lc = c4 if li > c4 else (-c4 if li < -c4 else li)
    b[i] = kept(li, k)
    w[i] = kept((lc - li) / (pna / lr_ + c5), k)
    # A pruned element's accumulator stays where it was: FTRL's starts at
    # initial_accumulator_value, and 0 would make 0**power infinite.
    a[i] = na if k else ai


cdef inline void _update_range(const _UpdateJob* j, floating* w, const mask_t* mk,
                               Py_ssize_t i0, Py_ssize_t i1) noexcept nogil:
    cdef const floating* g = <const floating*>j.g
    cdef floating* a = <floating*>j.s1
    cdef floating* b = <floating*>j.s2
    cdef floating scale = <floating>j.c[0], clip = <floating>j.c[1]
    cdef floating dec = <floating>j.c[2], lr_ = <floating>j.c[3]
    cdef floating c4 = <floating>j.c[4], c5 = <floating>j.c[5], c6 = <floating>j.c[6]
    cdef floating c7 = <floating>j.c[7], c8 = <floating>j.c[8], c9 = <floating>j.c[9]
    cdef floating gi, wi, ai, bi, mh, ag, dv, na, pa, pna, li, lc, cc
    cdef unsigned char k
    cdef Py_ssize_t i
    cdef floating* avg = <floating*>j.s3
    if j.kind == UPD_RMSPROP:          # a, b: velocity, momentum; literal flags per loop
        if j.centered and j.use_mom:
            for i in range(i0, i1):
                _rmsprop_element(w, g, a, b, avg, mk, i, j.rms, True, True)
        elif j.centered:
            for i in range(i0, i1):
                _rmsprop_element(w, g, a, b, avg, mk, i, j.rms, True, False)
        elif j.use_mom:
            for i in range(i0, i1):
                _rmsprop_element(w, g, a, b, avg, mk, i, j.rms, False, True)
        else:
            for i in range(i0, i1):
                _rmsprop_element(w, g, a, b, avg, mk, i, j.rms, False, False)
    elif j.kind == UPD_ADAGRAD:        # a: accumulator; c4 epsilon
        for i in range(i0, i1):
            k = keep_of(mk, i)
            gi = clipped_grad(g[i], scale, clip)
            wi = decayed(w[i], dec)
            ai = a[i] + gi * gi
            a[i] = kept(ai, k)
            w[i] = kept(wi - (lr_ * gi) / <floating>sqrt(ai + c4), k)
    elif j.kind == UPD_NADAM:          # a, b: m, v; c4..c9 1-b1, 1-b2, eps, c_m, c_g, bc2
        for i in range(i0, i1):
            k = keep_of(mk, i)
            gi = clipped_grad(g[i], scale, clip)
            wi = decayed(w[i], dec)
            ai = a[i] + (gi - a[i]) * c4
            bi = b[i] + (gi * gi - b[i]) * c5
            a[i] = kept(ai, k)
            b[i] = kept(bi, k)
            mh = c7 * ai + c8 * gi
            w[i] = kept(wi - (mh * lr_) / (<floating>sqrt(bi / c9) + c6), k)
    elif j.kind == UPD_ADAMAX:         # a, b: m, u; c4..c7 1-b1, b2, eps, bc1
        for i in range(i0, i1):
            k = keep_of(mk, i)
            gi = clipped_grad(g[i], scale, clip)
            wi = decayed(w[i], dec)
            ai = a[i] + (gi - a[i]) * c4
            bi = c5 * b[i]
            ag = gi if gi >= 0 else -gi
            bi = ag if ag > bi else bi
            a[i] = kept(ai, k)
            b[i] = kept(bi, k)
            w[i] = kept(wi - (lr_ * ai) / (c7 * (bi + c6)), k)
    elif j.kind == UPD_ADADELTA:       # a, b: accumulated grad, delta; c4..c6 rho, 1-rho, eps
        for i in range(i0, i1):
            k = keep_of(mk, i)
            gi = clipped_grad(g[i], scale, clip)
            wi = decayed(w[i], dec)
            ai = c4 * a[i] + c5 * (gi * gi)
            a[i] = kept(ai, k)
            dv = -(<floating>sqrt(b[i] + c6) * gi) / <floating>sqrt(ai + c6)
            b[i] = kept(c4 * b[i] + c5 * (dv * dv), k)
            w[i] = kept(wi + lr_ * dv, k)
    elif j.kind == UPD_FTRL and floating is float and j.power == 0.5:
        # Keras's default learning_rate_power (-0.5): pow(x, 0.5) in double rounded to
        # float32 is sqrt's correctly rounded result for every float32 x (the exact root of
        # a 24-bit number lies at least 2^-50 from a float32 rounding midpoint, pow's error
        # is under 2^-52; glibc's pow checked against sqrt on every non-negative float32),
        # so the same bits without two libm calls an element.
        for i in range(i0, i1):
            k = keep_of(mk, i)
            gi = clipped_grad(g[i], scale, clip)
            ai = a[i]
            na = ai + gi * gi
            _ftrl_step(w, a, b, i, gi, decayed(w[i], dec), ai, na, <floating>sqrt(<double>na),
                       <floating>sqrt(<double>ai), lr_, c4, c5, c6, k)
    elif j.kind == UPD_FTRL:           # a, b: accumulator, linear; c4..c6 l1, 2*l2, 2*shrink
        for i in range(i0, i1):
            k = keep_of(mk, i)
            gi = clipped_grad(g[i], scale, clip)
            ai = a[i]
            na = ai + gi * gi
            # -learning_rate_power is in [0, inf): accumulator^0 is 1, as in Keras.
            _ftrl_step(w, a, b, i, gi, decayed(w[i], dec), ai, na,
                       <floating>(<double>na ** j.power), <floating>(<double>ai ** j.power),
                       lr_, c4, c5, c6, k)
    else:                              # Lion; a: m; c4..c7 b1, b2, 1-b1, 1-b2
        for i in range(i0, i1):
            k = keep_of(mk, i)
            gi = clipped_grad(g[i], scale, clip)
            wi = decayed(w[i], dec)
            cc = a[i] * c4 + gi * c6
            w[i] = kept(wi - lr_ * <floating>((cc > 0) - (cc < 0)), k)
            a[i] = kept(a[i] * c5 + gi * c7, k)


cdef void _update_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _UpdateJob* j = <_UpdateJob*>ctx
    cdef Py_ssize_t i0 = begin * SPAN, i1 = end * SPAN
    if i1 > j.n:
        i1 = j.n
    if j.is_double:
        if j.masked:
            _update_range(j, <double*>j.w, <const MaskBit*>j.mask, i0, i1)
        else:
            _update_range(j, <double*>j.w, <const NoMask*>j.mask, i0, i1)
    elif j.masked:
        _update_range(j, <float*>j.w, <const MaskBit*>j.mask, i0, i1)
    else:
        _update_range(j, <float*>j.w, <const NoMask*>j.mask, i0, i1)


cdef void _run_update(_UpdateJob* job) noexcept nogil:
    cdef int threads = omp_get_max_threads() if job.n >= PARALLEL_MIN else 1
    if job.n > 0:
        pynn_team_for((job.n + SPAN - 1) // SPAN, 1, threads, _update_job, job)


cdef void _update_job_init(_UpdateJob* job, int kind, bint is_double, bint masked, void* w,
                           const void* g, void* s1, void* s2, const void* mask, Py_ssize_t n,
                           double scale, double clip, double decay, double lr) noexcept:
    job.kind, job.is_double, job.masked = kind, is_double, masked
    job.w, job.g, job.s1, job.s2, job.mask, job.n = w, g, s1, s2, mask, n
    job.c[0], job.c[1], job.c[2], job.c[3] = scale, clip, decay, lr
    job.power, job.s3, job.centered, job.use_mom = 0.0, NULL, False, False


def _rmsprop(floating[::1] w, const floating[::1] g, floating[::1] vel, floating[::1] mom,
             bint use_mom, floating[::1] avg, bint centered, const mask_t[::1] mask,
             double lr, double rho,
             double momentum, double epsilon, double grad_scale, double clipvalue,
             double decay):
    """Spans of SPAN elements on pynn's worker team (_update_job; each element alone: the
    same bits at any thread count)."""
    cdef _UpdateJob job
    if w.shape[0] == 0:
        return
    _update_job_init(&job, UPD_RMSPROP, floating is double, mask_t is MaskBit, &w[0], &g[0],
                     &vel[0], &mom[0], &mask[0], w.shape[0], grad_scale, clipvalue, decay, lr)
    job.s3, job.centered, job.use_mom = &avg[0], centered, use_mom
    job.rms = RMSpropCoef(lr, rho, 1.0 - rho, momentum, epsilon, grad_scale, clipvalue, decay,
                          FLT_MIN if floating is float else DBL_MIN)
    with nogil:
        _run_update(&job)


def rmsprop_update(w, g, velocity, momentum_buf, average_grad, lr, rho, momentum, epsilon,
                   grad_scale, clipvalue, weight_decay, mask=None):
    """RMSprop step in place (IN/OUT w, velocity, momentum_buf, average_grad; IN g).

    v = rho*v + (1-rho)*g*g; centered (average_grad given): a = rho*a + (1-rho)*g and
    den = v - a*a + epsilon, else den = v + epsilon; inc = lr*g/sqrt(den); with momentum_buf
    mom = momentum*mom + inc, w -= mom; else w -= inc."""
    w, g, vel, mom, avg, lr, rho, momentum, epsilon, clip = operands.rmsprop_update(
        HOST, w, g, velocity, momentum_buf, average_grad, lr, rho, momentum, epsilon,
        grad_scale, clipvalue, weight_decay)
    mask = operands.update_mask(HOST, "rmsprop_update", w, mask)
    flat_w = w.reshape(-1)
    _rmsprop(flat_w, g.reshape(-1), vel.reshape(-1),
             flat_w if mom is None else mom.reshape(-1), mom is not None,
             flat_w if avg is None else avg.reshape(-1), avg is not None, _mask_arg(mask), lr,
             rho, momentum, epsilon, *_clip(clip))


# -- Adagrad --------------------------------------------------------------------------------

def _adagrad(floating[::1] w, const floating[::1] g, floating[::1] acc,
             const mask_t[::1] mask, double lr, double epsilon, double grad_scale,
             double clipvalue, double decay):
    cdef _UpdateJob job
    _update_job_init(&job, UPD_ADAGRAD, floating is double, mask_t is MaskBit, &w[0] if
                     w.shape[0] else NULL, &g[0] if g.shape[0] else NULL,
                     &acc[0] if acc.shape[0] else NULL, NULL, &mask[0], w.shape[0],
                     <floating>grad_scale, <floating>clipvalue, <floating>decay, <floating>lr)
    job.c[4] = <floating>epsilon
    with nogil:
        _run_update(&job)


def adagrad_update(w, g, accumulator, lr, epsilon, grad_scale, clipvalue,
                   weight_decay, mask=None):
    """Adagrad step in place (IN/OUT w, accumulator; IN g).

    acc += g*g; w -= lr*g/sqrt(acc + epsilon). The accumulator starts at Keras's
    initial_accumulator_value (the caller fills it)."""
    w, g, acc, lr, epsilon, clip = operands.adagrad_update(
        HOST, w, g, accumulator, lr, epsilon, grad_scale, clipvalue, weight_decay)
    mask = operands.update_mask(HOST, "adagrad_update", w, mask)
    _adagrad(w.reshape(-1), g.reshape(-1), acc.reshape(-1), _mask_arg(mask), lr, epsilon,
             *_clip(clip))


# -- issue 12: weight constraints (Keras 3's keras/src/constraints/constraints.py) ---------
# w viewed as (outer, K, inner): each (outer, inner) line is one norm over the constraint's
# axes. One prange over lines; a line's sum of squares is in double, then
# w *= desired / (CONSTRAINT_EPSILON + norm), the factor rounded once to w's dtype. non_neg
# is elementwise (Keras 3: maximum(w, 0)).
cdef enum:
    CON_MAX_NORM = 0
    CON_NON_NEG = 1
    CON_UNIT_NORM = 2
    CON_MIN_MAX_NORM = 3

# keras.backend.epsilon()
cdef double CONSTRAINT_EPSILON = 1e-7


def _constraint_lines(floating[:, :, ::1] w,   # IN/OUT (outer, K, inner)
                      int kind, double min_value, double max_value, double rate):
    cdef Py_ssize_t t, o, i, j, outer = w.shape[0], k = w.shape[1], inner = w.shape[2]
    cdef double ss, norm, desired
    cdef floating factor
    with nogil:
        for t in prange(outer * inner, schedule="static",
                        use_threads_if=outer * k * inner >= PARALLEL_MIN):
            o = t // inner
            i = t % inner
            if kind == CON_NON_NEG:
                for j in range(k):
                    if not w[o, j, i] >= 0:
                        w[o, j, i] = 0
                continue
            ss = 0
            for j in range(k):
                ss = ss + <double>w[o, j, i] * w[o, j, i]
            norm = sqrt(ss)
            if kind == CON_UNIT_NORM:
                desired = 1
            elif kind == CON_MAX_NORM:
                desired = norm if norm < max_value else max_value
            else:
                desired = norm if norm > min_value else min_value
                desired = desired if desired < max_value else max_value
                desired = rate * desired + (1 - rate) * norm
            factor = <floating>(desired / (CONSTRAINT_EPSILON + norm))
            for j in range(k):
                w[o, j, i] = w[o, j, i] * factor


def constraint_inplace(w, kind, min_value=0.0, max_value=1.0, rate=1.0, axis=0):
    """Project w in place by a Keras 3 constraint (api.CONSTRAINTS): max_norm, non_neg,
    unit_norm or min_max_norm, norms over ``axis``. Returns None."""
    w, code, lo, hi, r, lines = operands.constraint_inplace(HOST, w, kind, min_value,
                                                            max_value, rate, axis)
    if w.size:
        _constraint_lines(w.reshape(lines), code, lo, hi, r)
# -- Nadam, Adamax, Adadelta, Ftrl, Lion (issue 15) ------------------------------------------
# Keras 3's update_step formulas in its operation order; scalar coefficients (Nadam's u
# terms, the bias corrections) are formed on the host in the parameter's dtype, as Keras
# casts them (pynn.backend.operands.optim).

def _nadam(floating[::1] w, const floating[::1] g, floating[::1] m, floating[::1] v,
           const mask_t[::1] mask, double lr, double one_b1, double one_b2, double epsilon,
           double c_m, double c_g,
           double bc2, double grad_scale, double clipvalue, double decay):
    cdef _UpdateJob job
    _update_job_init(&job, UPD_NADAM, floating is double, mask_t is MaskBit, &w[0] if
                     w.shape[0] else NULL, &g[0] if g.shape[0] else NULL,
                     &m[0] if m.shape[0] else NULL, &v[0] if v.shape[0] else NULL, &mask[0],
                     w.shape[0], <floating>grad_scale, <floating>clipvalue, <floating>decay,
                     <floating>lr)
    job.c[4], job.c[5], job.c[6] = <floating>one_b1, <floating>one_b2, <floating>epsilon
    job.c[7], job.c[8], job.c[9] = <floating>c_m, <floating>c_g, <floating>bc2
    with nogil:
        _run_update(&job)


def nadam_update(w, g, m, v, lr, beta_1, beta_2, epsilon, t, u_product, grad_scale,
                 clipvalue, weight_decay, mask=None):
    """Nadam step in place (IN/OUT w, m, v; IN g). t is the 1-based step, u_product the
    optimizer's running product of the momentum schedule u_s = beta_1 (1 - 0.5 * 0.96^s)
    for s = 1..t (Keras's _u_product after this step's update).

    m += (g-m)(1-beta_1); v += (g*g-v)(1-beta_2);
    m_hat = u_{t+1} m / (1 - u_product u_{t+1}) + (1 - u_t) g / (1 - u_product);
    w -= lr m_hat / (sqrt(v / (1 - beta_2^t)) + epsilon)."""
    w, g, m, v, coef, clip = operands.nadam_update(
        HOST, w, g, m, v, lr, beta_1, beta_2, epsilon, t, u_product, grad_scale, clipvalue,
        weight_decay)
    mask = operands.update_mask(HOST, "nadam_update", w, mask)
    _nadam(w.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), _mask_arg(mask), *coef,
           *_clip(clip))


def _adamax(floating[::1] w, const floating[::1] g, floating[::1] m, floating[::1] u,
            const mask_t[::1] mask, double lr, double one_b1, double beta_2, double epsilon,
            double bc1,
            double grad_scale, double clipvalue, double decay):
    cdef _UpdateJob job
    _update_job_init(&job, UPD_ADAMAX, floating is double, mask_t is MaskBit, &w[0] if
                     w.shape[0] else NULL, &g[0] if g.shape[0] else NULL,
                     &m[0] if m.shape[0] else NULL, &u[0] if u.shape[0] else NULL, &mask[0],
                     w.shape[0], <floating>grad_scale, <floating>clipvalue, <floating>decay,
                     <floating>lr)
    job.c[4], job.c[5] = <floating>one_b1, <floating>beta_2
    job.c[6], job.c[7] = <floating>epsilon, <floating>bc1
    with nogil:
        _run_update(&job)


def adamax_update(w, g, m, u, lr, beta_1, beta_2, epsilon, t, grad_scale, clipvalue,
                  weight_decay, mask=None):
    """Adamax step in place (IN/OUT w, m, u; IN g); t is the 1-based step.

    m += (g-m)(1-beta_1); u = max(beta_2 u, |g|); w -= lr m / ((1 - beta_1^t)(u + epsilon))."""
    w, g, m, u, coef, clip = operands.adamax_update(
        HOST, w, g, m, u, lr, beta_1, beta_2, epsilon, t, grad_scale, clipvalue, weight_decay)
    mask = operands.update_mask(HOST, "adamax_update", w, mask)
    _adamax(w.reshape(-1), g.reshape(-1), m.reshape(-1), u.reshape(-1), _mask_arg(mask), *coef,
            *_clip(clip))


def _adadelta(floating[::1] w, const floating[::1] g, floating[::1] ag, floating[::1] ad,
              const mask_t[::1] mask, double lr, double rho, double epsilon, double grad_scale,
              double clipvalue,
              double decay):
    cdef _UpdateJob job
    _update_job_init(&job, UPD_ADADELTA, floating is double, mask_t is MaskBit, &w[0] if
                     w.shape[0] else NULL, &g[0] if g.shape[0] else NULL,
                     &ag[0] if ag.shape[0] else NULL, &ad[0] if ad.shape[0] else NULL,
                     &mask[0], w.shape[0], <floating>grad_scale, <floating>clipvalue,
                     <floating>decay, <floating>lr)
    job.c[4], job.c[5], job.c[6] = <floating>rho, <floating>(1.0 - rho), <floating>epsilon
    with nogil:
        _run_update(&job)


def adadelta_update(w, g, accumulated_grad, accumulated_delta_var, lr, rho, epsilon,
                    grad_scale, clipvalue, weight_decay, mask=None):
    """Adadelta step in place (IN/OUT w and both accumulators; IN g).

    a_g = rho a_g + (1-rho) g^2; d = -sqrt(a_d + eps) g / sqrt(a_g + eps);
    a_d = rho a_d + (1-rho) d^2; w += lr d."""
    w, g, ag, ad, lr, rho, epsilon, clip = operands.adadelta_update(
        HOST, w, g, accumulated_grad, accumulated_delta_var, lr, rho, epsilon, grad_scale,
        clipvalue, weight_decay)
    mask = operands.update_mask(HOST, "adadelta_update", w, mask)
    _adadelta(w.reshape(-1), g.reshape(-1), ag.reshape(-1), ad.reshape(-1), _mask_arg(mask), lr,
              rho, epsilon, *_clip(clip))


def _ftrl(floating[::1] w, const floating[::1] g, floating[::1] acc, floating[::1] lin,
          const mask_t[::1] mask, double lr, double power, double l1, double l2_reg2,
          double shrink2,
          double grad_scale, double clipvalue, double decay):
    cdef _UpdateJob job
    _update_job_init(&job, UPD_FTRL, floating is double, mask_t is MaskBit, &w[0] if
                     w.shape[0] else NULL, &g[0] if g.shape[0] else NULL,
                     &acc[0] if acc.shape[0] else NULL, &lin[0] if lin.shape[0] else NULL,
                     &mask[0], w.shape[0], <floating>grad_scale, <floating>clipvalue,
                     <floating>decay, <floating>lr)
    job.c[4], job.c[5], job.c[6] = <floating>l1, <floating>l2_reg2, <floating>shrink2
    job.power = power
    with nogil:
        _run_update(&job)


def ftrl_update(w, g, accumulator, linear, lr, learning_rate_power, l1, l2, l2_shrinkage,
                beta, grad_scale, clipvalue, weight_decay, mask=None):
    """FTRL-proximal step in place (IN/OUT w, accumulator, linear; IN g), Keras 3's form.

    n = acc + g^2; linear += g + 2 l2_shrinkage w - (n^-p - acc^-p) / lr * w (p the
    learning_rate_power); w = (clip(linear, -l1, l1) - linear) / (n^-p / lr + 2 (l2 +
    beta / (2 lr))); acc = n."""
    w, g, acc, lin, coef, clip = operands.ftrl_update(
        HOST, w, g, accumulator, linear, lr, learning_rate_power, l1, l2, l2_shrinkage, beta,
        grad_scale, clipvalue, weight_decay)
    mask = operands.update_mask(HOST, "ftrl_update", w, mask)
    _ftrl(w.reshape(-1), g.reshape(-1), acc.reshape(-1), lin.reshape(-1), _mask_arg(mask),
          *coef, *_clip(clip))


def _lion(floating[::1] w, const floating[::1] g, floating[::1] m, const mask_t[::1] mask,
          double lr, double beta_1, double beta_2, double grad_scale, double clipvalue,
          double decay):
    cdef _UpdateJob job
    _update_job_init(&job, UPD_LION, floating is double, mask_t is MaskBit, &w[0] if
                     w.shape[0] else NULL, &g[0] if g.shape[0] else NULL,
                     &m[0] if m.shape[0] else NULL, NULL, &mask[0], w.shape[0],
                     <floating>grad_scale, <floating>clipvalue, <floating>decay, <floating>lr)
    job.c[4], job.c[5] = <floating>beta_1, <floating>beta_2
    job.c[6] = <floating>(1.0 - <floating>beta_1)
    job.c[7] = <floating>(1.0 - <floating>beta_2)
    with nogil:
        _run_update(&job)


def lion_update(w, g, m, lr, beta_1, beta_2, grad_scale, clipvalue, weight_decay,
                mask=None):
    """Lion step in place (IN/OUT w, m; IN g).

    w -= lr sign(beta_1 m + (1-beta_1) g); m = beta_2 m + (1-beta_2) g."""
    w, g, m, lr, beta_1, beta_2, clip = operands.lion_update(
        HOST, w, g, m, lr, beta_1, beta_2, grad_scale, clipvalue, weight_decay)
    mask = operands.update_mask(HOST, "lion_update", w, mask)
    _lion(w.reshape(-1), g.reshape(-1), m.reshape(-1), _mask_arg(mask), lr, beta_1, beta_2,
          *_clip(clip))


# -- Lamb, Adafactor, Muon (Keras 3.15's lamb.py, adafactor.py, muon.py) --------------------
# Each rule needs whole-tensor reductions between its elementwise parts (Lamb's two norms,
# Adafactor's row/column means and two RMS values, Muon's Frobenius norm), so each is a few
# passes over fixed blocks: a pass writes one double partial per block (or per row), the
# partials are added serially in order, and the next pass reads the result. Results do not
# depend on the thread count. Muon's Newton-Schulz products run on the dense ops' GEMMs, its
# elementwise parts in the passes around them.

# Pruning masks: a pruned element's gradient reads as 0 and its weight and elementwise slots
# are stored as exact zeros (kept()); mk is the uint8 mask, or a 1-element stand-in never
# read when use_mask is off.
_KEEP_ALL = np.ones(1, dtype=np.uint8)


cdef inline unsigned char _keep(const unsigned char* mk, Py_ssize_t i,
                                bint use_mask) noexcept nogil:
    return mk[i] if use_mask else 1


def _mask_view(mask):
    """(flat uint8 mask, use_mask) as these kernels take it."""
    return (_KEEP_ALL, False) if mask is None else (mask.reshape(-1), True)


cdef inline floating _lamb_direction(floating mi, floating vi, floating bc1, floating bc2,
                                     floating eps) noexcept nogil:
    """Lamb's update before the trust ratio: (m / bc1) / (sqrt(v / bc2) + eps)."""
    return (mi / bc1) / (sqrt(vi / bc2) + eps)


cdef void _lamb_moments_block(floating* w, const floating* g, floating* m, floating* v,
                              Py_ssize_t n, floating one_b1, floating one_b2, floating bc1,
                              floating bc2, floating eps, floating scale, floating lim,
                              floating decay, const unsigned char* mk, bint use_mask,
                              double* out) noexcept nogil:
    """Clip, decay w, move m and v; out = (sum w^2, sum update^2) of the block (n <= BLOCK).
    The update goes through a stack buffer so the elementwise loop has no reduction in it
    and vectorizes; the sums then run on block_sum_squares's fixed chains."""
    cdef floating u[BLOCK]
    cdef Py_ssize_t i
    cdef floating gi, mi, vi
    cdef unsigned char keep
    for i in range(n):
        keep = _keep(mk, i, use_mask)
        gi = kept(clipped_grad(g[i], scale, lim), keep)
        w[i] = kept(decayed(w[i], decay), keep)
        mi = kept(m[i] + (gi - m[i]) * one_b1, keep)
        vi = kept(v[i] + (gi * gi - v[i]) * one_b2, keep)
        m[i] = mi
        v[i] = vi
        u[i] = kept(_lamb_direction(mi, vi, bc1, bc2, eps), keep)
    out[0] = block_sum_squares(w, n)
    out[1] = block_sum_squares(&u[0], n)


def _lamb(floating[::1] w, const floating[::1] g, floating[::1] m, floating[::1] v,
          const unsigned char[::1] mask, bint use_mask, double lr, double one_b1,
          double one_b2, double bc1, double bc2, double eps, double grad_scale,
          double clipvalue, double decay):
    cdef Py_ssize_t n = w.shape[0], nblk = (n + BLOCK - 1) // BLOCK, blk, i, i0, i1
    cdef double[:, ::1] partial = np.zeros((max(nblk, 1), 2), dtype=np.float64)
    cdef double sw = 0, su = 0
    cdef floating step, b1 = <floating>bc1, b2 = <floating>bc2, e = <floating>eps
    if n == 0:
        return
    with nogil:
        for blk in prange(nblk, schedule="static", use_threads_if=n >= PARALLEL_MIN):
            i0 = blk * BLOCK
            i1 = min(i0 + BLOCK, n)
            _lamb_moments_block(&w[i0], &g[i0], &m[i0], &v[i0], i1 - i0, <floating>one_b1,
                                <floating>one_b2, b1, b2, e, <floating>grad_scale,
                                <floating>clipvalue, <floating>decay,
                                &mask[i0 if use_mask else 0], use_mask, &partial[blk, 0])
    for blk in range(nblk):
        sw += partial[blk, 0]
        su += partial[blk, 1]
    # Keras: ratio = ||w|| / ||update|| where both are positive, else 1, in float32.
    cdef floating w_norm = <floating>sqrt(<floating>sw), u_norm = <floating>sqrt(<floating>su)
    cdef floating ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1
    step = ratio * <floating>lr
    with nogil:
        for i in prange(n, schedule="static", use_threads_if=n >= PARALLEL_MIN):
            w[i] = kept(w[i] - step * _lamb_direction(m[i], v[i], b1, b2, e),
                        _keep(&mask[0], i, use_mask))


def lamb_update(w, g, m, v, lr, beta_1, beta_2, epsilon, t, grad_scale, clipvalue,
                weight_decay, mask=None):
    """Lamb step in place (IN/OUT w, m, v; IN g); t is the 1-based step.

    m += (g-m)(1-beta_1); v += (g*g-v)(1-beta_2); u = (m / (1-beta_1^t)) /
    (sqrt(v / (1-beta_2^t)) + epsilon); w -= (||w|| / ||u||) lr u, the ratio 1 where a norm
    is 0 (||w|| after the weight decay). A pruning mask's zeros read g as 0 and store w, m, v
    as 0."""
    w, g, m, v, coef, clip = operands.lamb_update(
        HOST, w, g, m, v, lr, beta_1, beta_2, epsilon, t, grad_scale, clipvalue, weight_decay)
    mask = operands.update_mask(HOST, "lamb_update", w, mask)
    _lamb(w.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), *_mask_view(mask),
          *coef, *_clip(clip))


# Adafactor: a variable of rank >= 2 is viewed as (B, R, C), its factored moments as r (B, R)
# and c (B, C); lower ranks are flat.

cdef inline double block_sum(const floating* a, Py_ssize_t n) noexcept nogil:
    # block_sum_squares's four chains, of the values themselves.
    cdef double s0 = 0, s1 = 0, s2 = 0, s3 = 0
    cdef Py_ssize_t j = 0
    while j + 4 <= n:
        s0 += a[j]
        s1 += a[j + 1]
        s2 += a[j + 2]
        s3 += a[j + 3]
        j += 4
    while j < n:
        s0 += a[j]
        j += 1
    return (s0 + s1) + (s2 + s3)


cdef floating _adafactor_row(floating* w, const floating* g, floating* r, Py_ssize_t cols,
                             floating beta, floating one_beta, floating eps1, floating scale,
                             floating lim, floating decay, const unsigned char* mk,
                             bint use_mask, double* wsq) noexcept nogil:
    """Decay one row of w and move its r by the row's mean of g^2 + epsilon_1, a BLOCK of
    the row at a time (the elementwise loop free of reductions, as in _lamb_moments_block)."""
    cdef floating sq[BLOCK]
    cdef Py_ssize_t j, j0, n
    cdef floating gi
    cdef unsigned char keep
    cdef double s = 0, sw = 0
    j0 = 0
    while j0 < cols:
        n = min(<Py_ssize_t>BLOCK, cols - j0)
        for j in range(n):
            keep = _keep(mk, j0 + j, use_mask)
            gi = kept(clipped_grad(g[j0 + j], scale, lim), keep)
            sq[j] = gi * gi + eps1
            w[j0 + j] = kept(decayed(w[j0 + j], decay), keep)
        s += block_sum(&sq[0], n)
        sw += block_sum_squares(w + j0, n)
        j0 += n
    r[0] = beta * r[0] + one_beta * <floating>(s / cols)
    wsq[0] = sw
    return 0


cdef enum:
    COLUMN_TILE = 64    # columns of c one task sums over the rows (stack accumulators)


cdef void _adafactor_columns(const floating* g, floating* c, Py_ssize_t rows,
                             Py_ssize_t cols, Py_ssize_t j0, Py_ssize_t j1, floating beta,
                             floating one_beta, floating eps1, floating scale,
                             floating lim, const unsigned char* mk,
                             bint use_mask) noexcept nogil:
    """c[j0:j1] of one (R, C) slice: rows read in order so each tile streams through."""
    cdef double acc[COLUMN_TILE]
    cdef Py_ssize_t i, j
    cdef floating gi
    for j in range(j1 - j0):
        acc[j] = 0
    for i in range(rows):
        for j in range(j0, j1):
            gi = kept(clipped_grad(g[i * cols + j], scale, lim),
                      _keep(mk, i * cols + j, use_mask))
            acc[j - j0] += gi * gi + eps1
    for j in range(j0, j1):
        c[j] = beta * c[j] + one_beta * <floating>(acc[j - j0] / rows)


cdef double _adafactor_velocity_row(const floating* g, floating* v, floating r_scaled,
                                    const floating* c, Py_ssize_t cols, floating scale,
                                    floating lim, const unsigned char* mk,
                                    bint use_mask) noexcept nogil:
    """v = r_scaled * c along a row; returns the row's sum of (g / sqrt(v))^2."""
    cdef floating u[BLOCK]
    cdef Py_ssize_t j, j0, n
    cdef floating vi, gi
    cdef unsigned char keep
    cdef double su = 0
    j0 = 0
    while j0 < cols:
        n = min(<Py_ssize_t>BLOCK, cols - j0)
        for j in range(n):
            keep = _keep(mk, j0 + j, use_mask)
            vi = r_scaled * c[j0 + j]
            v[j0 + j] = kept(vi, keep)
            gi = clipped_grad(g[j0 + j], scale, lim)
            u[j] = kept(gi / sqrt(vi), keep & (gi != 0))
        su += block_sum_squares(&u[0], n)
        j0 += n
    return su


cdef void _adafactor_flat_block(floating* w, const floating* g, floating* v, Py_ssize_t n,
                                floating beta, floating one_beta, floating eps1,
                                floating scale, floating lim, floating decay,
                                const unsigned char* mk, bint use_mask,
                                double* out) noexcept nogil:
    """Rank < 2: decay w, move v; out = (sum w^2, sum (g / sqrt(v))^2) (n <= BLOCK)."""
    cdef floating u[BLOCK]
    cdef Py_ssize_t i
    cdef floating gi, vi
    cdef unsigned char keep
    for i in range(n):
        keep = _keep(mk, i, use_mask)
        gi = kept(clipped_grad(g[i], scale, lim), keep)
        w[i] = kept(decayed(w[i], decay), keep)
        vi = beta * v[i] + one_beta * (gi * gi + eps1)
        v[i] = kept(vi, keep)
        u[i] = kept(gi / sqrt(vi), keep & (gi != 0))
    out[0] = block_sum_squares(w, n)
    out[1] = block_sum_squares(&u[0], n)


def _adafactor(floating[:, :, ::1] w, const floating[:, :, ::1] g, floating[:, ::1] r,
               floating[:, ::1] c, floating[:, :, ::1] v, const unsigned char[::1] mask,
               bint use_mask, bint factored, double rho_t,
               double beta, double eps1, double eps2, double clip_threshold,
               double grad_scale, double clipvalue, double decay):
    """w, g, v as (B, R, C) (flat variables as (1, 1, n), r and c then unused)."""
    cdef Py_ssize_t nb = w.shape[0], rows = w.shape[1], cols = w.shape[2]
    cdef Py_ssize_t n = nb * rows * cols, nrows = nb * rows, k, b, i, j0, ntile, blk, nblk
    cdef bint par = n >= PARALLEL_MIN
    cdef floating be = <floating>beta, one_be = <floating>(1.0 - <floating>beta)
    cdef floating e1 = <floating>eps1, sc = <floating>grad_scale, lim = <floating>clipvalue
    cdef floating dec = <floating>decay
    cdef double sw = 0, su = 0, r_sum
    cdef double[::1] row_sums
    cdef double[:, ::1] partial
    cdef floating[::1] r_mean
    cdef floating* wp
    cdef const floating* gp
    cdef floating* vp
    cdef floating* rp
    cdef floating d, alpha_t, rms_u, rms_w, gk
    if n == 0:
        return
    wp, gp, vp, rp = &w[0, 0, 0], &g[0, 0, 0], &v[0, 0, 0], &r[0, 0]
    if factored:
        row_sums = np.zeros(nrows, dtype=np.float64)
        r_mean = np.empty(nb, dtype=np.asarray(w).dtype)
        ntile = (cols + COLUMN_TILE - 1) // COLUMN_TILE
        with nogil:
            for k in prange(nrows, schedule="static", use_threads_if=par):
                _adafactor_row(wp + k * cols, gp + k * cols, &r[0, 0] + k, cols, be, one_be,
                               e1, sc, lim, dec, &mask[k * cols if use_mask else 0], use_mask,
                               &row_sums[k])
            for k in prange(nb * ntile, schedule="static", use_threads_if=par):
                b = k // ntile
                j0 = (k % ntile) * COLUMN_TILE
                _adafactor_columns(gp + b * rows * cols, &c[b, 0], rows, cols, j0,
                                   min(j0 + COLUMN_TILE, cols), be, one_be, e1, sc, lim,
                                   &mask[b * rows * cols if use_mask else 0], use_mask)
        for k in range(nrows):
            sw += row_sums[k]
        for b in range(nb):
            r_sum = 0
            for i in range(rows):
                r_sum += r[b, i]
            r_mean[b] = <floating>(r_sum / rows)
        with nogil:
            for k in prange(nrows, schedule="static", use_threads_if=par):
                row_sums[k] = _adafactor_velocity_row(gp + k * cols, vp + k * cols,
                                                      rp[k] / r_mean[k // rows],
                                                      &c[k // rows, 0], cols, sc, lim,
                                                      &mask[k * cols if use_mask else 0],
                                                      use_mask)
        for k in range(nrows):
            su += row_sums[k]
    else:
        nblk = (n + BLOCK - 1) // BLOCK
        partial = np.zeros((nblk, 2), dtype=np.float64)
        with nogil:
            for blk in prange(nblk, schedule="static", use_threads_if=par):
                _adafactor_flat_block(wp + blk * BLOCK, gp + blk * BLOCK, vp + blk * BLOCK,
                                      min(BLOCK, n - blk * BLOCK), be, one_be, e1, sc, lim,
                                      dec, &mask[blk * BLOCK if use_mask else 0], use_mask,
                                      &partial[blk, 0])
        for blk in range(nblk):
            sw += partial[blk, 0]
            su += partial[blk, 1]
    # Keras, in the variable's dtype: alpha_t = max(epsilon_2, rms(w)) rho_t and
    # u_hat = u / max(1, rms(u) / clip_threshold).
    rms_w = <floating>sqrt(<floating>(sw / n))
    rms_u = <floating>sqrt(<floating>(su / n))
    alpha_t = (rms_w if rms_w > <floating>eps2 else <floating>eps2) * <floating>rho_t
    d = rms_u / <floating>clip_threshold
    if not d > 1:
        d = 1
    with nogil:
        for k in prange(n, schedule="static", use_threads_if=par):
            gk = clipped_grad(gp[k], sc, lim)
            wp[k] = kept(wp[k] - alpha_t * kept((gk / sqrt(vp[k])) / d, gk != 0),
                         _keep(&mask[0], k, use_mask))


def adafactor_update(w, g, r, c, v, lr, beta_2_decay, epsilon_1, epsilon_2, clip_threshold,
                     t, grad_scale, clipvalue, weight_decay, mask=None):
    """Adafactor step in place (IN/OUT w, r, c, v; IN g); t is the 1-based step.

    rho = min(lr, 1/sqrt(t)); alpha = max(epsilon_2, rms(w)) rho; beta = 1 - t^beta_2_decay;
    rank >= 2: r = beta r + (1-beta) mean(g^2 + epsilon_1, -1), c likewise over axis -2,
    v = (r / mean(r, -1))[..., None] c[..., None, :]; rank < 2: v = beta v + (1-beta)
    (g^2 + epsilon_1) (r, c unused, may be None); u = g / sqrt(v);
    w -= alpha u / max(1, rms(u) / clip_threshold). A pruning mask's zeros read g as 0 and
    store w and v as 0 (r and c are the rows' and columns' statistics, over every element).
    u is 0 where g is 0: a gradient zero along a whole row and column (a pruned or dead
    unit's) underflows v to 0 in float32, where Keras's 0 / 0 turns the step to NaN."""
    w, g, r, c, v, coef, clip = operands.adafactor_update(
        HOST, w, g, r, c, v, lr, beta_2_decay, epsilon_1, epsilon_2, clip_threshold, t,
        grad_scale, clipvalue, weight_decay)
    rho_t, beta, eps1, eps2, threshold = coef
    mask = operands.update_mask(HOST, "adafactor_update", w, mask)
    if w.ndim >= 2:
        # (no negative indices: this module is compiled with wraparound off)
        shape3 = (int(np.prod(w.shape[:w.ndim - 2])), w.shape[w.ndim - 2],
                  w.shape[w.ndim - 1])
        _adafactor(w.reshape(shape3), g.reshape(shape3), r.reshape(shape3[:2]),
                   c.reshape(shape3[0], shape3[2]), v.reshape(shape3), *_mask_view(mask),
                   True, rho_t, beta,
                   eps1, eps2, threshold, *_clip(clip))
    else:
        flat = (1, 1, w.size)
        unused = np.zeros((1, 1), dtype=w.dtype)
        _adafactor(w.reshape(flat), g.reshape(flat), unused, unused, v.reshape(flat),
                   *_mask_view(mask), False, rho_t, beta, eps1, eps2, threshold, *_clip(clip))


cdef double _muon_momentum_block(const floating* g, floating* m, floating* x, Py_ssize_t n,
                                 floating mu, floating mu_1, bint nesterov, floating scale,
                                 floating lim, const unsigned char* mk,
                                 bint use_mask) noexcept nogil:
    """m += g + m (momentum - 1); x = g + momentum m (nesterov) or m; returns sum x^2."""
    cdef Py_ssize_t i
    cdef floating gi, mi
    cdef unsigned char keep
    for i in range(n):
        keep = _keep(mk, i, use_mask)
        gi = kept(clipped_grad(g[i], scale, lim), keep)
        mi = kept(m[i] + (gi + m[i] * mu_1), keep)
        m[i] = mi
        x[i] = gi + mu * mi if nesterov else mi
    return block_sum_squares(x, n)


def _muon_momentum(const floating[::1] g, floating[::1] m, floating[::1] x,
                   const unsigned char[::1] mask, bint use_mask, double momentum,
                   bint nesterov, double grad_scale, double clipvalue):
    """Muon's momentum and direction (x, OUT) in one pass; returns sum x^2 (fixed blocks)."""
    cdef Py_ssize_t n = g.shape[0], nblk = (n + BLOCK - 1) // BLOCK, blk
    cdef double[::1] partial = np.zeros(max(nblk, 1), dtype=np.float64)
    cdef double total = 0
    cdef floating mu = <floating>momentum, mu_1 = <floating>(momentum - 1.0)
    cdef floating sc = <floating>grad_scale, lim = <floating>clipvalue
    if n == 0:
        return 0.0
    with nogil:
        for blk in prange(nblk, schedule="static", use_threads_if=n >= PARALLEL_MIN):
            partial[blk] = _muon_momentum_block(&g[blk * BLOCK], &m[blk * BLOCK],
                                                &x[blk * BLOCK], min(BLOCK, n - blk * BLOCK),
                                                mu, mu_1, nesterov, sc, lim,
                                                &mask[blk * BLOCK if use_mask else 0],
                                                use_mask)
    for blk in range(nblk):
        total += partial[blk]
    return total


def _muon_combine(floating[::1] x, const floating[::1] p, double alpha, double beta):
    """x = alpha x + beta p (IN/OUT x): a Newton-Schulz step's b A + c A A and a X + P X
    around the GEMMs; beta 0 (the normalisation) reads p not at all."""
    cdef Py_ssize_t n = x.shape[0], i
    cdef floating a = <floating>alpha, b = <floating>beta
    with nogil:
        if b == 0:
            for i in prange(n, schedule="static", use_threads_if=n >= PARALLEL_MIN):
                x[i] = a * x[i]
        else:
            for i in prange(n, schedule="static", use_threads_if=n >= PARALLEL_MIN):
                x[i] = a * x[i] + b * p[i]


def _muon_normalize(floating[::1] x, double sum_squares):
    """Keras's x / (||x||_F + 1e-7), the norm in the variable's dtype."""
    cdef Py_ssize_t n = x.shape[0], i
    cdef floating den = <floating>sqrt(<floating>sum_squares) + <floating>1e-7
    with nogil:
        for i in prange(n, schedule="static", use_threads_if=n >= PARALLEL_MIN):
            x[i] = x[i] / den


def _muon_apply(floating[::1] w, const floating[::1] x, const unsigned char[::1] mask,
                bint use_mask, double lr, double adjust, double decay):
    """w = decayed w - (lr x) adjust (adjust < 0: - lr x): Keras's lr_adjust(lr * update)
    after the decoupled weight decay."""
    cdef Py_ssize_t n = w.shape[0], i
    cdef floating step_lr = <floating>lr, adj = <floating>adjust, dec = <floating>decay
    with nogil:
        if adj >= 0:
            for i in prange(n, schedule="static", use_threads_if=n >= PARALLEL_MIN):
                w[i] = kept(decayed(w[i], dec) - ((step_lr * x[i]) * adj),
                            _keep(&mask[0], i, use_mask))
        else:
            for i in prange(n, schedule="static", use_threads_if=n >= PARALLEL_MIN):
                w[i] = kept(decayed(w[i], dec) - step_lr * x[i], _keep(&mask[0], i, use_mask))


def _muon(w, g, m, mask, double lr, double momentum, bint nesterov, int ns_steps, double a,
          double b, double c, double adjust, double grad_scale, double clipvalue,
          double decay):
    """w (R, C). The Newton-Schulz products run on the dense ops' GEMMs (pynn's
    microkernel or single-threaded BLAS bands on its worker team, chosen per shape), with
    the Gram matrix of the shorter side: wide X -> A = X X^T, X = a X + (b A + c A A) X;
    tall X (Keras transposes it) -> A = X^T X, X = a X + X (b A + c A A)^T, the same
    products on the transpose. (Calling BLAS sgemm from here directly, its own thread pool
    against the OpenMP passes between the products, ran a (784, 512) step 3-5x slower.)"""
    from pynn._native.dense import dense_backward_input, dense_backward_weight, dense_forward

    rows, cols = w.shape
    if w.size == 0:
        return
    x = np.empty_like(w)
    keep, use_mask = _mask_view(mask)
    total = _muon_momentum(g.reshape(-1), m.reshape(-1), x.reshape(-1), keep, use_mask,
                           momentum, nesterov, grad_scale, clipvalue)
    _muon_normalize(x.reshape(-1), total)
    tall = rows > cols
    for _ in range(ns_steps):
        gram = dense_backward_weight(x, x) if tall else dense_backward_input(x, x)
        gram_sq, _ = dense_forward(gram, gram, None, "linear", 0.0)
        _muon_combine(gram.reshape(-1), gram_sq.reshape(-1), b, c)
        if tall:
            poly_x = dense_backward_input(x, gram)
        else:
            poly_x, _ = dense_forward(gram, x, None, "linear", 0.0)
        _muon_combine(x.reshape(-1), poly_x.reshape(-1), a, 1.0)
    _muon_apply(w.reshape(-1), x.reshape(-1), keep, use_mask, lr, adjust, decay)


def muon_update(w, g, m, lr, momentum, nesterov, ns_steps, muon_a, muon_b, muon_c, rms_rate,
                grad_scale, clipvalue, weight_decay, mask=None):
    """Muon step of a matrix in place (IN/OUT w (R, C), m; IN g).

    m = momentum m + g; x = g + momentum m (nesterov) or m; X = NS5(x) (Keras's
    zeropower_via_newtonschulz5: x / (||x||_F + 1e-7), then ns_steps of X = a X + (b A + c A
    A) X, A = X X^T, on the transpose when R > C); w -= (lr X) sqrt(max(R, C)) rms_rate
    (rms_rate None: w -= lr X). A pruning mask's zeros read g as 0 and store w and m as 0."""
    w, g, m, coef, clip = operands.muon_update(
        HOST, w, g, m, lr, momentum, nesterov, ns_steps, muon_a, muon_b, muon_c, rms_rate,
        grad_scale, clipvalue, weight_decay)
    mask = operands.update_mask(HOST, "muon_update", w, mask)
    _muon(w, g, m, mask, *coef, *_clip(clip))


# -- misc: ScheduleFreeAdamW (Keras 3.15's schedule_free_adamw.py) ----------------------------
# Purely elementwise: one parallel pass. z is Keras's "momentum" slot (initialised to w), v
# its "velocity"; w holds y, the interpolation between z and the average x, which is
# recovered from y and the old z rather than stored.

cdef inline void _schedule_free_element(floating* w, const floating* g, floating* z,
                                        floating* v, Py_ssize_t i, floating lr, floating b1,
                                        floating one_b1, floating one_b2, floating bc2,
                                        floating c, floating eps, floating scale,
                                        floating lim, floating decay,
                                        unsigned char keep) noexcept nogil:
    cdef floating gi = kept(clipped_grad(g[i], scale, lim), keep)
    cdef floating yi = decayed(w[i], decay)
    cdef floating z_old = z[i]
    cdef floating vi = v[i] + (gi * gi - v[i]) * one_b2
    cdef floating zi = z_old - (lr * gi) / (sqrt(vi / bc2) + eps)
    cdef floating x_old = (yi - one_b1 * z_old) / b1
    cdef floating x_new = (1 - c) * x_old + c * zi
    v[i] = kept(vi, keep)
    z[i] = kept(zi, keep)
    w[i] = kept(one_b1 * zi + b1 * x_new, keep)


def _schedule_free(floating[::1] w, const floating[::1] g, floating[::1] z, floating[::1] v,
                   const unsigned char[::1] mask, bint use_mask, double lr, double b1,
                   double one_b1, double one_b2, double bc2, double c, double eps,
                   double grad_scale, double clipvalue, double decay):
    cdef Py_ssize_t n = w.shape[0], i
    if n == 0:
        return
    with nogil:
        for i in prange(n, schedule="static", use_threads_if=n >= PARALLEL_MIN):
            _schedule_free_element(&w[0], &g[0], &z[0], &v[0], i, <floating>lr, <floating>b1,
                                   <floating>one_b1, <floating>one_b2, <floating>bc2,
                                   <floating>c, <floating>eps, <floating>grad_scale,
                                   <floating>clipvalue, <floating>decay,
                                   _keep(&mask[0], i, use_mask))


def schedule_free_adamw_update(w, g, z, v, lr, beta_1, beta_2, epsilon, t, warmup_steps,
                               grad_scale, clipvalue, weight_decay, mask=None):
    """Schedule-free AdamW step in place (IN/OUT w, z, v; IN g); t is the 1-based step.

    v += (g*g - v)(1-beta_2); z -= lr_t g / (sqrt(v / (1-beta_2^t)) + epsilon) with lr_t =
    lr min(t / warmup_steps, 1); x = (w - (1-beta_1) z_old) / beta_1; x = (1-1/t) x + z / t;
    w = (1-beta_1) z + beta_1 x (w after the decoupled weight decay). A pruning mask's zeros
    read g as 0 and store w, z, v as 0."""
    w, g, z, v, coef, clip = operands.schedule_free_adamw_update(
        HOST, w, g, z, v, lr, beta_1, beta_2, epsilon, t, warmup_steps, grad_scale, clipvalue,
        weight_decay)
    mask = operands.update_mask(HOST, "schedule_free_adamw_update", w, mask)
    _schedule_free(w.reshape(-1), g.reshape(-1), z.reshape(-1), v.reshape(-1),
                   *_mask_view(mask), *coef, *_clip(clip))
