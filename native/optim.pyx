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

Slots an option does not use are None. Every array is checked (type, dtype, shape,
contiguity, writability, no aliasing with ``w``) before the GIL is released; a wrong call is a
ValueError/TypeError, never an out-of-bounds access.
"""
import math

import numpy as np

from cython.parallel cimport prange
from libc.math cimport sqrt, fabs, fma, fmaf
from libc.float cimport FLT_MIN, DBL_MIN

from pynn.backend._validate import FLOAT_DTYPES, as_float_array

ctypedef fused floating:
    float
    double

# Reduction block: partials of this many elements are summed in a fixed order. Changing it
# changes the last bits of norms, so it is a constant, not a tunable.
# Below PARALLEL_MIN elements waking the OpenMP team costs more than the pass itself.
cdef enum:
    BLOCK = 4096
    PARALLEL_MIN = 32768


# -- argument checks (run with the GIL, before any kernel) ----------------------------------

def _param(op, name, a):
    """The array updated in place: a writable, C-contiguous float ndarray, returned flat."""
    if a is None:
        raise ValueError(f"{op}: '{name}' is required, got None")
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{op}: '{name}' must be a numpy.ndarray (updated in place), "
                        f"got {type(a).__name__}")
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: '{name}' must be float32 or float64, got {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{op}: '{name}' must be C-contiguous (it is updated in place)")
    if not a.flags.writeable:
        raise ValueError(f"{op}: '{name}' must be writable (it is updated in place)")
    return a.reshape(-1)


def _slot(op, name, a, w):
    """An optimizer slot: like ``w`` in shape and dtype, writable, not overlapping ``w``."""
    if a is None:
        return None
    flat = _param(op, name, a)
    if a.dtype != w.dtype:
        raise TypeError(f"{op}: '{name}' must have the dtype of 'w' ({w.dtype}), got {a.dtype}")
    if a.shape != w.shape:
        raise ValueError(f"{op}: '{name}' must have the shape of 'w' {w.shape}, got {a.shape}")
    if a.size and np.may_share_memory(a, w):
        raise ValueError(f"{op}: '{name}' must not share memory with 'w'")
    return flat


def _distinct(op, **slots):
    named = [(n, a) for n, a in slots.items() if a is not None and a.size]
    for i in range(len(named)):
        for j in range(i + 1, len(named)):
            if np.may_share_memory(named[i][1], named[j][1]):
                raise ValueError(f"{op}: '{named[i][0]}' and '{named[j][0]}' must not share "
                                 f"memory")


def _grad(op, g, w):
    """The gradient: read only, converted to w's dtype when needed, same shape as w."""
    g = as_float_array(op, "g", g, dtype=w.dtype)
    if g.shape != w.shape:
        raise ValueError(f"{op}: 'g' must have the shape of 'w' {w.shape}, got {g.shape}")
    return g.reshape(-1)


def _number(op, name, value, lo=None, hi=None, lo_open=False, hi_open=False,
            allow_nan=False):
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: '{name}' must be a real number, got {value!r}")
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: '{name}' must be a real number, got {value!r}")
    if math.isnan(x):
        if allow_nan:
            return x
        raise ValueError(f"{op}: '{name}' must not be NaN")
    if math.isinf(x) and not allow_nan:
        raise ValueError(f"{op}: '{name}' must be finite, got {x}")
    bad = ((lo is not None and (x < lo or (lo_open and x == lo)))
           or (hi is not None and (x > hi or (hi_open and x == hi))))
    if bad:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ValueError(f"{op}: '{name}' must be in {lb}{lo if lo is not None else '-inf'}, "
                         f"{hi if hi is not None else 'inf'}{rb}, got {x}")
    return x


def _clip_args(op, grad_scale, clipvalue, weight_decay, lr):
    # grad_scale may be NaN: a non-finite global norm poisons the step exactly as in Keras.
    scale = _number(op, "grad_scale", grad_scale, lo=0.0, allow_nan=True)
    clip = _number(op, "clipvalue", clipvalue)
    decay = _number(op, "weight_decay", weight_decay, lo=0.0)
    # No clipvalue (0 or less) becomes an infinite bound: the kernels clip unconditionally.
    return scale, (clip if clip > 0 else math.inf), decay * lr


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
    """
    float pynn_clip_f(float g, float lim) noexcept nogil
    double pynn_clip_d(double g, double lim) noexcept nogil
    float pynn_flush_f(float x, float tiny) noexcept nogil
    double pynn_flush_d(double x, double tiny) noexcept nogil


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


def _sum_squares(const floating[::1] a):
    cdef Py_ssize_t n = a.shape[0]
    cdef Py_ssize_t nblk = (n + BLOCK - 1) // BLOCK, blk, j0, j1
    cdef double[::1] partial = np.empty(nblk, dtype=np.float64)
    cdef double total = 0
    if n == 0:
        return 0.0
    with nogil:
        for blk in prange(nblk, schedule="static", use_threads_if=n >= PARALLEL_MIN):
            j0 = blk * BLOCK
            j1 = j0 + BLOCK
            if j1 > n:
                j1 = n
            partial[blk] = block_sum_squares(&a[j0], j1 - j0)
    for blk in range(nblk):
        total += partial[blk]
    return total


def sum_squares(a):
    """sum(a**2) over every element, accumulated in double; a Python float.

    Deterministic for any thread count (fixed blocks, fixed combine order)."""
    op = "sum_squares"
    a = as_float_array(op, "a", a)
    return float(_sum_squares(a.reshape(-1)))


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


def _regularize(const floating[::1] w, floating[::1] grad, double l1, double l2):
    cdef Py_ssize_t n = w.shape[0]
    cdef Py_ssize_t nblk = (n + BLOCK - 1) // BLOCK, blk, j0, j1
    cdef double[:, ::1] partial = np.empty((nblk, 2), dtype=np.float64)
    cdef double abs_total = 0, sq_total = 0
    cdef floating l1_ = <floating>l1
    cdef floating two_l2 = <floating>(2.0 * l2)
    if n == 0:
        return 0.0
    with nogil:
        for blk in prange(nblk, schedule="static", use_threads_if=n >= PARALLEL_MIN):
            j0 = blk * BLOCK
            j1 = j0 + BLOCK
            if j1 > n:
                j1 = n
            block_regularize(&w[j0], &grad[j0], j1 - j0, l1_, two_l2,
                             &partial[blk, 0], &partial[blk, 1])
    for blk in range(nblk):
        abs_total += partial[blk, 0]
        sq_total += partial[blk, 1]
    return l1 * abs_total + l2 * sq_total


def regularizer_inplace(w, grad, l1, l2):
    """grad += l1*sign(w) + 2*l2*w (IN/OUT grad); returns the penalty
    l1*sum|w| + l2*sum(w**2) (Keras's L1L2, no 1/2) as a Python float."""
    op = "regularizer_inplace"
    l1 = _number(op, "l1", l1, lo=0.0)
    l2 = _number(op, "l2", l2, lo=0.0)
    w = as_float_array(op, "w", w)
    flat_grad = _param(op, "grad", grad)
    if grad.dtype != w.dtype:
        raise TypeError(f"{op}: 'grad' must have the dtype of 'w' ({w.dtype}), got {grad.dtype}")
    if grad.shape != w.shape:
        raise ValueError(f"{op}: 'grad' must have the shape of 'w' {w.shape}, got {grad.shape}")
    if grad.size and np.may_share_memory(grad, w):
        raise ValueError(f"{op}: 'grad' must not share memory with 'w'")
    if l1 == 0.0 and l2 == 0.0:
        return 0.0
    return float(_regularize(w.reshape(-1), flat_grad, l1, l2))


# -- SGD ------------------------------------------------------------------------------------

def _sgd(floating[::1] w, const floating[::1] g, floating[::1] buf, bint use_buf,
         double lr, double momentum, bint nesterov, double grad_scale, double clipvalue,
         double decay):
    cdef Py_ssize_t n = w.shape[0], i
    cdef floating lr_ = <floating>lr, mu = <floating>momentum
    cdef floating scale = <floating>grad_scale, clip = <floating>clipvalue
    cdef floating dec = <floating>decay
    cdef floating gi, wi, mi
    cdef floating tiny = FLT_MIN if floating is float else DBL_MIN
    if n == 0:
        return
    with nogil:
        for i in prange(n, schedule="static", use_threads_if=n >= PARALLEL_MIN):
            gi = clipped_grad(g[i], scale, clip)
            wi = decayed(w[i], dec)
            if use_buf:
                mi = flushed(fmadd(buf[i], mu, -(gi * lr_)), tiny)
                buf[i] = mi
                if nesterov:
                    wi = wi + fmadd(mi, mu, -(gi * lr_))
                else:
                    wi = wi + mi
            else:
                wi = wi - gi * lr_
            w[i] = wi


def sgd_update(w, g, momentum_buf, lr, momentum, nesterov, grad_scale, clipvalue,
               weight_decay):
    """SGD step in place (IN/OUT w, momentum_buf; IN g).

    momentum_buf None: w -= lr*g. Else m = momentum*m - lr*g, then w += m, or with nesterov
    w += momentum*m - lr*g (Keras 3)."""
    op = "sgd_update"
    flat_w = _param(op, "w", w)
    flat_g = _grad(op, g, w)
    flat_m = _slot(op, "momentum_buf", momentum_buf, w)
    lr = _number(op, "lr", lr)
    momentum = _number(op, "momentum", momentum, lo=0.0)
    if momentum != 0.0 and flat_m is None:
        raise ValueError(f"{op}: momentum={momentum} needs a 'momentum_buf' slot, got None")
    scale, clip, decay = _clip_args(op, grad_scale, clipvalue, weight_decay, lr)
    _sgd(flat_w, flat_g, flat_w if flat_m is None else flat_m, flat_m is not None,
         lr, momentum, bool(nesterov), scale, clip, decay)


# -- Adam / AdamW ---------------------------------------------------------------------------

def _adam(floating[::1] w, const floating[::1] g, floating[::1] m, floating[::1] v,
          floating[::1] vhat, bint amsgrad, double alpha, double beta_1, double beta_2,
          double epsilon, double grad_scale, double clipvalue, double decay):
    cdef Py_ssize_t n = w.shape[0], i
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
                gi = clipped_grad(g[i], scale, clip)
                wi = decayed(w[i], dec)
                mi = flushed(m[i] + (gi - m[i]) * one_b1, tiny)
                vi = flushed(v[i] + (gi * gi - v[i]) * one_b2, tiny)
                m[i] = mi
                v[i] = vi
                vh = flushed(vhat[i], tiny)
                vi = vh if vh > vi else vi
                vhat[i] = vi
                w[i] = wi - (mi * alpha_) / (<floating>sqrt(vi) + eps)
        else:
            for i in prange(n, schedule="static", use_threads_if=n >= PARALLEL_MIN):
                gi = clipped_grad(g[i], scale, clip)
                wi = decayed(w[i], dec)
                mi = flushed(m[i] + (gi - m[i]) * one_b1, tiny)
                vi = flushed(v[i] + (gi * gi - v[i]) * one_b2, tiny)
                m[i] = mi
                v[i] = vi
                # epsilon goes on the uncorrected sqrt(v): alpha carries both bias corrections.
                w[i] = wi - (mi * alpha_) / (<floating>sqrt(vi) + eps)


def _adam_step_size(dt, lr, beta_1, beta_2, t):
    """lr*sqrt(1-beta_2**t)/(1-beta_1**t) in the parameter's dtype ``dt``, as Keras forms it.

    In float32 the betas themselves round (0.999 -> 0.99900001), which moves 1-beta_2**t by
    ~1e-5 relative at t=1; matching Keras to 1e-6 needs the same rounding, not exact math."""
    one = dt(1)
    b1_power = dt(float(dt(beta_1)) ** t)
    b2_power = dt(float(dt(beta_2)) ** t)
    return float(dt(lr) * np.sqrt(one - b2_power) / (one - b1_power))


def adam_update(w, g, m, v, vhat, lr, beta_1, beta_2, epsilon, t, grad_scale,
                clipvalue, weight_decay):
    """Adam (AdamW with weight_decay) step in place (IN/OUT w, m, v, vhat; IN g).

    alpha = lr*sqrt(1-beta_2**t)/(1-beta_1**t); m += (g-m)(1-beta_1); v += (g*g-v)(1-beta_2);
    vhat = max(vhat, v) when vhat is given (amsgrad); w -= alpha*m/(sqrt(v or vhat) + epsilon).
    t is the 1-based step."""
    op = "adam_update"
    flat_w = _param(op, "w", w)
    flat_g = _grad(op, g, w)
    if m is None or v is None:
        raise ValueError(f"{op}: slots 'm' and 'v' are required, got m={type(m).__name__}, "
                         f"v={type(v).__name__}")
    flat_m = _slot(op, "m", m, w)
    flat_v = _slot(op, "v", v, w)
    flat_vhat = _slot(op, "vhat", vhat, w)
    _distinct(op, m=m, v=v, vhat=vhat)
    lr = _number(op, "lr", lr)
    beta_1 = _number(op, "beta_1", beta_1, lo=0.0, hi=1.0, hi_open=True)
    beta_2 = _number(op, "beta_2", beta_2, lo=0.0, hi=1.0, hi_open=True)
    epsilon = _number(op, "epsilon", epsilon, lo=0.0)
    if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)) or t < 1:
        raise ValueError(f"{op}: 't' must be an int >= 1 (the 1-based step), got {t!r}")
    scale, clip, decay = _clip_args(op, grad_scale, clipvalue, weight_decay, lr)
    alpha = _adam_step_size(w.dtype.type, lr, beta_1, beta_2, int(t))
    _adam(flat_w, flat_g, flat_m, flat_v, flat_w if flat_vhat is None else flat_vhat,
          flat_vhat is not None, alpha, beta_1, beta_2, epsilon, scale, clip, decay)


# -- RMSprop --------------------------------------------------------------------------------

cdef struct RMSpropCoef:
    double lr, rho, one_rho, mu, eps, scale, clip, decay, tiny


cdef inline void _rmsprop_element(floating* w, const floating* g, floating* vel,
                                  floating* mom, floating* avg, Py_ssize_t i,
                                  RMSpropCoef k, bint centered,
                                  bint use_mom) noexcept nogil:
    """One element of the RMSprop step. Called with literal flags, so each inlined copy is
    straight-line code that gcc vectorizes: branches on the flags inside the loop kept it
    scalar on AVX2 (8x slower than Adagrad)."""
    cdef floating rho = <floating>k.rho, one_rho = <floating>k.one_rho, tiny = <floating>k.tiny
    cdef floating gi = clipped_grad(g[i], <floating>k.scale, <floating>k.clip)
    cdef floating wi = decayed(w[i], <floating>k.decay)
    cdef floating vi = flushed(fmadd(rho, vel[i], one_rho * (gi * gi)), tiny)
    cdef floating ai, den, inc
    vel[i] = vi
    if centered:
        ai = flushed(fmadd(rho, avg[i], one_rho * gi), tiny)
        avg[i] = ai
        den = fmadd(-ai, ai, vi) + <floating>k.eps
    else:
        den = vi + <floating>k.eps
    # epsilon sits inside the square root (Keras, unlike PyTorch).
    inc = (<floating>k.lr * gi) / <floating>sqrt(den)
    if use_mom:
        inc = flushed(fmadd(<floating>k.mu, mom[i], inc), tiny)
        mom[i] = inc
    w[i] = wi - inc


def _rmsprop(floating[::1] w, const floating[::1] g, floating[::1] vel, floating[::1] mom,
             bint use_mom, floating[::1] avg, bint centered, double lr, double rho,
             double momentum, double epsilon, double grad_scale, double clipvalue,
             double decay):
    cdef Py_ssize_t n = w.shape[0], i
    cdef RMSpropCoef k = RMSpropCoef(lr, rho, 1.0 - rho, momentum, epsilon, grad_scale,
                                     clipvalue, decay,
                                     FLT_MIN if floating is float else DBL_MIN)
    if n == 0:
        return
    cdef floating* wp = &w[0]
    cdef const floating* gp = &g[0]
    cdef floating* vp = &vel[0]
    cdef floating* mp = &mom[0]
    cdef floating* ap = &avg[0]
    with nogil:
        if centered and use_mom:
            for i in prange(n, schedule="static", use_threads_if=n >= PARALLEL_MIN):
                _rmsprop_element(wp, gp, vp, mp, ap, i, k, True, True)
        elif centered:
            for i in prange(n, schedule="static", use_threads_if=n >= PARALLEL_MIN):
                _rmsprop_element(wp, gp, vp, mp, ap, i, k, True, False)
        elif use_mom:
            for i in prange(n, schedule="static", use_threads_if=n >= PARALLEL_MIN):
                _rmsprop_element(wp, gp, vp, mp, ap, i, k, False, True)
        else:
            for i in prange(n, schedule="static", use_threads_if=n >= PARALLEL_MIN):
                _rmsprop_element(wp, gp, vp, mp, ap, i, k, False, False)


def rmsprop_update(w, g, velocity, momentum_buf, average_grad, lr, rho, momentum, epsilon,
                   grad_scale, clipvalue, weight_decay):
    """RMSprop step in place (IN/OUT w, velocity, momentum_buf, average_grad; IN g).

    v = rho*v + (1-rho)*g*g; centered (average_grad given): a = rho*a + (1-rho)*g and
    den = v - a*a + epsilon, else den = v + epsilon; inc = lr*g/sqrt(den); with momentum_buf
    mom = momentum*mom + inc, w -= mom; else w -= inc."""
    op = "rmsprop_update"
    flat_w = _param(op, "w", w)
    flat_g = _grad(op, g, w)
    if velocity is None:
        raise ValueError(f"{op}: slot 'velocity' is required, got None")
    flat_vel = _slot(op, "velocity", velocity, w)
    flat_mom = _slot(op, "momentum_buf", momentum_buf, w)
    flat_avg = _slot(op, "average_grad", average_grad, w)
    _distinct(op, velocity=velocity, momentum_buf=momentum_buf, average_grad=average_grad)
    lr = _number(op, "lr", lr)
    rho = _number(op, "rho", rho, lo=0.0, hi=1.0)
    momentum = _number(op, "momentum", momentum, lo=0.0)
    if momentum > 0.0 and flat_mom is None:
        raise ValueError(f"{op}: momentum={momentum} needs a 'momentum_buf' slot, got None")
    epsilon = _number(op, "epsilon", epsilon, lo=0.0)
    scale, clip, decay = _clip_args(op, grad_scale, clipvalue, weight_decay, lr)
    _rmsprop(flat_w, flat_g, flat_vel, flat_w if flat_mom is None else flat_mom,
             flat_mom is not None, flat_w if flat_avg is None else flat_avg,
             flat_avg is not None, lr, rho, momentum, epsilon, scale, clip, decay)


# -- Adagrad --------------------------------------------------------------------------------

def _adagrad(floating[::1] w, const floating[::1] g, floating[::1] acc, double lr,
             double epsilon, double grad_scale, double clipvalue, double decay):
    cdef Py_ssize_t n = w.shape[0], i
    cdef floating lr_ = <floating>lr, eps = <floating>epsilon
    cdef floating scale = <floating>grad_scale, clip = <floating>clipvalue
    cdef floating dec = <floating>decay
    cdef floating gi, wi, ai
    if n == 0:
        return
    with nogil:
        for i in prange(n, schedule="static", use_threads_if=n >= PARALLEL_MIN):
            gi = clipped_grad(g[i], scale, clip)
            wi = decayed(w[i], dec)
            ai = acc[i] + gi * gi
            acc[i] = ai
            w[i] = wi - (lr_ * gi) / <floating>sqrt(ai + eps)


def adagrad_update(w, g, accumulator, lr, epsilon, grad_scale, clipvalue,
                   weight_decay):
    """Adagrad step in place (IN/OUT w, accumulator; IN g).

    acc += g*g; w -= lr*g/sqrt(acc + epsilon). The accumulator starts at Keras's
    initial_accumulator_value (the caller fills it)."""
    op = "adagrad_update"
    flat_w = _param(op, "w", w)
    flat_g = _grad(op, g, w)
    if accumulator is None:
        raise ValueError(f"{op}: slot 'accumulator' is required, got None")
    flat_acc = _slot(op, "accumulator", accumulator, w)
    lr = _number(op, "lr", lr)
    epsilon = _number(op, "epsilon", epsilon, lo=0.0)
    scale, clip, decay = _clip_args(op, grad_scale, clipvalue, weight_decay, lr)
    _adagrad(flat_w, flat_g, flat_acc, lr, epsilon, scale, clip, decay)
