"""2-D pooling kernels (max, average, global max, global average), NHWC.

Legend: N batch, H/W input spatial, C channels, PH/PW pool window, SH/SW strides,
HO/WO output spatial, PT/PL leading padding (Keras 'same': the odd pixel goes after).

Design:
- The window of an output pixel is clipped to the input: padding is never read. Max pooling
  therefore pads with -inf, and 'same' average pooling divides by the number of in-bounds
  pixels (TF / JAX semantics, also what keras-team/keras#23233 makes the torch backend do).
- Channels are the innermost, contiguous axis, so every loop body runs over C in a row.
- Forward ops write each output pixel from one thread (prange over output rows (n, ho)).
- Backward ops gather by input row: one thread owns a dx row (n, hi) and adds every
  contribution to it in a fixed order, so results are bit-identical for any thread count.
  maxpool2d_backward scatters through argmax instead, one thread per image (n), visiting the
  outputs in row-major order for the same reason; that thread first zeroes the image's dx
  plane, so dx is written in one pass (the op carries no pool geometry, so it cannot gather
  even where windows do not overlap).
- argmax (int32) is the flat index h*W + w within the (n, c) plane; ties keep the first
  pixel in row-major window order; a NaN wins over numbers (the first NaN, as in torch).
Outputs are fresh arrays; nothing accumulates into caller memory.
"""
import numpy as np

from cython.parallel cimport prange
from libc.string cimport memset
from _openmp cimport omp_get_max_threads

from pynn.backend.operands import pool as operands
from pynn.backend.operands.common import HOST

include "_team.pxi"

ctypedef fused floating:
    float
    double


# Below this many input elements a kernel runs on the calling thread: waking the OpenMP team
# costs more than the pass. Each output is still computed by the same code in the same order.
cdef enum:
    PARALLEL_MIN = 32768


cdef struct Geom:
    Py_ssize_t N, H, W, C, PH, PW, SH, SW, PT, PL, HO, WO


cdef inline Py_ssize_t _imax(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a > b else b


cdef inline Py_ssize_t _imin(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a < b else b


from _maxpool cimport pynn_max_update_f, pynn_max_update_d, pynn_window_max_f


cdef inline void _max_update(const floating* px, floating* best, int* arg, Py_ssize_t C,
                             int idx) noexcept nogil:
    if floating is float:
        pynn_max_update_f(px, best, arg, C, idx)
    else:
        pynn_max_update_d(px, best, arg, C, idx)


# -- max pooling ----------------------------------------------------------------------------

cdef void _maxpool_row(const floating* x, floating* y, int* arg, const Geom* g,
                       Py_ssize_t r) noexcept nogil:
    """Output row r = n*HO + ho: y and arg point at its first pixel."""
    cdef Py_ssize_t n = r // g.HO, ho = r % g.HO
    cdef Py_ssize_t h0 = _imax(ho * g.SH - g.PT, 0), h1 = _imin(ho * g.SH - g.PT + g.PH, g.H)
    cdef Py_ssize_t wo, w0, w1, h, w, c, C = g.C
    cdef const floating* px
    cdef floating* yp
    cdef int* ap
    for wo in range(g.WO):
        w0 = _imax(wo * g.SW - g.PL, 0)
        w1 = _imin(wo * g.SW - g.PL + g.PW, g.W)
        yp = y + wo * C
        ap = arg + wo * C
        # The first in-bounds pixel seeds the winner, so argmax is always a real pixel.
        px = x + ((n * g.H + h0) * g.W + w0) * C
        if floating is float:
            pynn_window_max_f(px, g.W * C, h1 - h0, w1 - w0, C, <int>(h0 * g.W + w0),
                              <int>g.W, yp, ap)
            continue
        for c in range(C):
            yp[c] = px[c]
            ap[c] = <int>(h0 * g.W + w0)
        for h in range(h0, h1):
            for w in range(w0, w1):
                px = x + ((n * g.H + h) * g.W + w) * C
                _max_update(px, yp, ap, C, <int>(h * g.W + w))


ctypedef struct _PoolJob:
    bint is_double
    const void* x
    void* y
    int* arg
    const int* carg
    Geom g
    Py_ssize_t N, P, C, HW
    double* acc
    long bad[64]          # maxpool backward's out-of-range entries, per team slot


cdef void _maxpool_forward_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _PoolJob* j = <_PoolJob*>ctx
    cdef Py_ssize_t row = j.g.WO * j.g.C
    cdef long r
    for r in range(begin, end):
        if j.is_double:
            _maxpool_row(<const double*>j.x, <double*>j.y + r * row, j.arg + r * row, &j.g, r)
        else:
            _maxpool_row(<const float*>j.x, <float*>j.y + r * row, j.arg + r * row, &j.g, r)


cdef inline int _pool_threads(Py_ssize_t work) noexcept nogil:
    return omp_get_max_threads() if work >= PARALLEL_MIN else 1


cdef inline void _pool_run(long items, int threads, pynn_team_fn fn, _PoolJob* job) noexcept nogil:
    """The items on pynn's worker team (native/_team.h); each output is written by the code
    and in the order one thread would use."""
    pynn_team_for(items, team_grain(items, threads), threads, fn, job)


def _maxpool_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y,
                     int[:, :, :, ::1] arg, Geom g):
    cdef _PoolJob job
    job.is_double, job.x, job.y, job.arg, job.g = floating is double, &x[0, 0, 0, 0], \
        &y[0, 0, 0, 0], &arg[0, 0, 0, 0], g
    with nogil:
        _pool_run(g.N * g.HO, _pool_threads(g.N * g.H * g.W * g.C), _maxpool_forward_job, &job)


cdef inline long _maxpool_backward_image(const floating* dyp, const int* ap, floating* dxp,
                                         Py_ssize_t n, Py_ssize_t P, Py_ssize_t HW,
                                         Py_ssize_t C) noexcept nogil:
    cdef Py_ssize_t p, c, a
    cdef long bad = 0
    memset(dxp + n * HW * C, 0, HW * C * sizeof(floating))
    for p in range(P):
        for c in range(C):
            a = ap[(n * P + p) * C + c]
            if a < 0 or a >= HW:
                bad += 1
            else:
                dxp[(n * HW + a) * C + c] += dyp[(n * P + p) * C + c]
    return bad


cdef void _maxpool_backward_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _PoolJob* j = <_PoolJob*>ctx
    cdef long n
    for n in range(begin, end):
        if j.is_double:
            j.bad[slot] += _maxpool_backward_image(<const double*>j.x, j.carg, <double*>j.y,
                                                   n, j.P, j.HW, j.C)
        else:
            j.bad[slot] += _maxpool_backward_image(<const float*>j.x, j.carg, <float*>j.y, n,
                                                   j.P, j.HW, j.C)


def _maxpool_backward(const floating[:, :, :, ::1] dy, const int[:, :, :, ::1] arg,
                      floating[:, :, :, ::1] dx):
    """dx = 0, then dx[n, argmax] += dy per (n, c); returns how many argmax entries were out
    of range (skipped, so a bad index is an error for the caller, never a stray write).
    dx may come uninitialized: each image's plane is zeroed by the thread that then scatters
    into it, while the plane is still in that core's cache (a separate zero-fill costs a
    pass over dx)."""
    cdef Py_ssize_t N = dy.shape[0], P = dy.shape[1] * dy.shape[2], C = dy.shape[3]
    cdef Py_ssize_t HW = dx.shape[1] * dx.shape[2]
    cdef _PoolJob job
    cdef int threads = _pool_threads(N * (P + HW) * C), t
    if threads > 64:
        threads = 64
    job.is_double, job.x, job.carg, job.y = floating is double, &dy[0, 0, 0, 0], \
        &arg[0, 0, 0, 0], &dx[0, 0, 0, 0]
    job.N, job.P, job.C, job.HW = N, P, C, HW
    for t in range(64):
        job.bad[t] = 0
    with nogil:
        _pool_run(N, threads, _maxpool_backward_job, &job)
    return sum(job.bad[t] for t in range(threads))


def maxpool2d_forward(x, pool_size, strides, padding="valid"):
    """Max over each window -> (y, argmax); y (N, HO, WO, C), argmax int32 like y."""
    x, g = operands.maxpool2d_forward(HOST, x, pool_size, strides, padding)
    y = np.empty((g["N"], g["HO"], g["WO"], g["C"]), dtype=x.dtype)
    arg = np.empty(y.shape, dtype=np.int32)
    if y.size:
        _maxpool_forward(x, y, arg, g)
    return y, arg


def maxpool2d_backward(dy, argmax, input_shape):
    """dx (input_shape): dy routed to the pixel argmax names; overlapping windows add."""
    op = "maxpool2d_backward"
    dy, argmax, input_shape = operands.maxpool2d_backward(HOST, dy, argmax, input_shape)
    if not dy.size:
        return np.zeros(input_shape, dtype=dy.dtype)
    dx = np.empty(input_shape, dtype=dy.dtype)
    bad = _maxpool_backward(dy, argmax, dx)
    if bad:
        raise ValueError(f"{op}: {bad} argmax entries outside [0, H*W) = "
                         f"[0, {input_shape[1] * input_shape[2]})")
    return dx


# -- average pooling ------------------------------------------------------------------------

cdef void _avgpool_row(const floating* x, floating* y, const Geom* g,
                       Py_ssize_t r) noexcept nogil:
    cdef Py_ssize_t n = r // g.HO, ho = r % g.HO
    cdef Py_ssize_t h0 = _imax(ho * g.SH - g.PT, 0), h1 = _imin(ho * g.SH - g.PT + g.PH, g.H)
    cdef Py_ssize_t wo, w0, w1, h, w, c, C = g.C
    cdef const floating* px
    cdef floating* yp
    cdef floating inv
    for wo in range(g.WO):
        w0 = _imax(wo * g.SW - g.PL, 0)
        w1 = _imin(wo * g.SW - g.PL + g.PW, g.W)
        inv = <floating>1 / <floating>((h1 - h0) * (w1 - w0))
        yp = y + wo * C
        for c in range(C):
            yp[c] = 0
        for h in range(h0, h1):
            for w in range(w0, w1):
                px = x + ((n * g.H + h) * g.W + w) * C
                for c in range(C):
                    yp[c] += px[c]
        for c in range(C):
            yp[c] *= inv


cdef void _avgpool_backward_row(const floating* dy, floating* dx, const Geom* g,
                                Py_ssize_t t) noexcept nogil:
    """dx row t = n*H + hi: every output window covering it adds dy / window count,
    in (ho, wo) order."""
    cdef Py_ssize_t n = t // g.H, hi = t % g.H
    cdef Py_ssize_t ho, ho0, ho1, wo, h0, h1, w0, w1, w, c, num, C = g.C
    cdef const floating* dp
    cdef floating* xp
    cdef floating* drow = dx + t * g.W * C
    cdef floating inv
    # Windows ho with ho*SH - PT <= hi < ho*SH - PT + PH.
    num = hi + g.PT - g.PH
    ho0 = num // g.SH + 1 if num >= 0 else 0
    ho1 = _imin((hi + g.PT) // g.SH + 1, g.HO)
    for ho in range(ho0, ho1):
        h0 = _imax(ho * g.SH - g.PT, 0)
        h1 = _imin(ho * g.SH - g.PT + g.PH, g.H)
        for wo in range(g.WO):
            w0 = _imax(wo * g.SW - g.PL, 0)
            w1 = _imin(wo * g.SW - g.PL + g.PW, g.W)
            inv = <floating>1 / <floating>((h1 - h0) * (w1 - w0))
            dp = dy + ((n * g.HO + ho) * g.WO + wo) * C
            for w in range(w0, w1):
                xp = drow + w * C
                for c in range(C):
                    xp[c] += dp[c] * inv


cdef void _avgpool_forward_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _PoolJob* j = <_PoolJob*>ctx
    cdef Py_ssize_t row = j.g.WO * j.g.C
    cdef long r
    for r in range(begin, end):
        if j.is_double:
            _avgpool_row(<const double*>j.x, <double*>j.y + r * row, &j.g, r)
        else:
            _avgpool_row(<const float*>j.x, <float*>j.y + r * row, &j.g, r)


cdef void _avgpool_backward_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _PoolJob* j = <_PoolJob*>ctx
    cdef long t
    for t in range(begin, end):
        if j.is_double:
            _avgpool_backward_row(<const double*>j.x, <double*>j.y, &j.g, t)
        else:
            _avgpool_backward_row(<const float*>j.x, <float*>j.y, &j.g, t)


def _avgpool_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y, Geom g):
    cdef _PoolJob job
    job.is_double, job.x, job.y, job.g = floating is double, &x[0, 0, 0, 0], &y[0, 0, 0, 0], g
    with nogil:
        _pool_run(g.N * g.HO, _pool_threads(g.N * g.H * g.W * g.C), _avgpool_forward_job, &job)


def _avgpool_backward(const floating[:, :, :, ::1] dy, floating[:, :, :, ::1] dx, Geom g):
    cdef _PoolJob job
    job.is_double, job.x, job.y, job.g = floating is double, &dy[0, 0, 0, 0], \
        &dx[0, 0, 0, 0], g
    with nogil:
        _pool_run(g.N * g.H, _pool_threads(g.N * g.H * g.W * g.C), _avgpool_backward_job,
                  &job)


def avgpool2d_forward(x, pool_size, strides, padding="valid"):
    """Mean over each window's in-bounds pixels; y (N, HO, WO, C)."""
    x, g = operands.avgpool2d_forward(HOST, x, pool_size, strides, padding)
    y = np.empty((g["N"], g["HO"], g["WO"], g["C"]), dtype=x.dtype)
    if y.size:
        _avgpool_forward(x, y, g)
    return y


def avgpool2d_backward(dy, input_shape, pool_size, strides, padding="valid"):
    """dx (input_shape): each window spreads dy / (its in-bounds pixel count)."""
    dy, g = operands.avgpool2d_backward(HOST, dy, input_shape, pool_size, strides, padding)
    dx = np.zeros((g["N"], g["H"], g["W"], g["C"]), dtype=dy.dtype)
    if dy.size:
        _avgpool_backward(dy, dx, g)
    return dx


# -- global pooling -------------------------------------------------------------------------

# Channels per task of the global reductions: tasks (n, channel block) keep both threads
# busy when N is small, and each output element is still summed by one thread in pixel order.
cdef enum:
    CBLOCK = 64


cdef inline void _global_avg_task(const floating* xp, floating* yp, double* accp,
                                  Py_ssize_t task, Py_ssize_t P, Py_ssize_t C,
                                  Py_ssize_t nblk) noexcept nogil:
    cdef Py_ssize_t n = task // nblk, c0 = (task % nblk) * CBLOCK, c1, p, c
    cdef const floating* px
    cdef double inv = 1.0 / P
    c1 = _imin(c0 + CBLOCK, C)
    for p in range(P):
        px = xp + (n * P + p) * C
        for c in range(c0, c1):
            accp[n * C + c] += px[c]
    for c in range(c0, c1):
        yp[n * C + c] = <floating>(accp[n * C + c] * inv)


cdef void _global_avg_forward_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _PoolJob* j = <_PoolJob*>ctx
    cdef long task
    cdef Py_ssize_t nblk = (j.C + CBLOCK - 1) // CBLOCK
    for task in range(begin, end):
        if j.is_double:
            _global_avg_task(<const double*>j.x, <double*>j.y, j.acc, task, j.P, j.C, nblk)
        else:
            _global_avg_task(<const float*>j.x, <float*>j.y, j.acc, task, j.P, j.C, nblk)


cdef inline void _global_avg_backward_row(const floating* dp, floating* xp, Py_ssize_t t,
                                          Py_ssize_t H, Py_ssize_t W,
                                          Py_ssize_t C) noexcept nogil:
    cdef Py_ssize_t n = t // H, w, c
    cdef floating inv = <floating>(1.0 / (H * W))
    for w in range(W):
        for c in range(C):
            xp[(t * W + w) * C + c] = dp[n * C + c] * inv


cdef void _global_avg_backward_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _PoolJob* j = <_PoolJob*>ctx
    cdef long t
    for t in range(begin, end):
        if j.is_double:
            _global_avg_backward_row(<const double*>j.x, <double*>j.y, t, j.g.H, j.g.W, j.g.C)
        else:
            _global_avg_backward_row(<const float*>j.x, <float*>j.y, t, j.g.H, j.g.W, j.g.C)


def _global_avg_forward(const floating[:, :, :, ::1] x, floating[:, ::1] y):
    cdef Py_ssize_t N = x.shape[0], P = x.shape[1] * x.shape[2], C = x.shape[3]
    cdef Py_ssize_t nblk = (C + CBLOCK - 1) // CBLOCK
    # Sums in float64 whatever the dtype: a plane can hold many thousand pixels.
    cdef double[:, ::1] acc = np.zeros((N, C), dtype=np.float64)
    cdef _PoolJob job
    job.is_double, job.x, job.y, job.acc = floating is double, &x[0, 0, 0, 0], &y[0, 0], \
        &acc[0, 0]
    job.P, job.C = P, C
    with nogil:
        _pool_run(N * nblk, _pool_threads(N * P * C), _global_avg_forward_job, &job)


def _global_avg_backward(const floating[:, ::1] dy, floating[:, :, :, ::1] dx):
    cdef Py_ssize_t N = dx.shape[0], H = dx.shape[1], W = dx.shape[2], C = dx.shape[3]
    cdef _PoolJob job
    job.is_double, job.x, job.y = floating is double, &dy[0, 0], &dx[0, 0, 0, 0]
    job.g.H, job.g.W, job.g.C = H, W, C
    with nogil:
        _pool_run(N * H, _pool_threads(N * H * W * C), _global_avg_backward_job, &job)


cdef inline void _global_max_tasks(const _PoolJob* j, const floating* xp, long begin,
                                   long end) noexcept nogil:
    """Tasks [begin, end): task = (n, block of CBLOCK channels), max and argmax over P."""
    cdef Py_ssize_t P = j.P, C = j.C, nblk = (j.C + CBLOCK - 1) // CBLOCK, n, c0, c1, p, c
    cdef floating* yp = <floating*>j.y
    cdef int* ap = j.arg
    cdef const floating* px
    cdef long task
    for task in range(begin, end):
        n = task // nblk
        c0 = (task % nblk) * CBLOCK
        c1 = _imin(c0 + CBLOCK, C)
        px = xp + n * P * C
        for c in range(c0, c1):
            yp[n * C + c] = px[c]
            ap[n * C + c] = 0
        for p in range(1, P):
            px = xp + (n * P + p) * C
            _max_update(px + c0, yp + n * C + c0, ap + n * C + c0, c1 - c0, <int>p)


cdef void _global_max_forward_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _PoolJob* j = <_PoolJob*>ctx
    if j.is_double:
        _global_max_tasks(j, <const double*>j.x, begin, end)
    else:
        _global_max_tasks(j, <const float*>j.x, begin, end)


def _global_max_forward(const floating[:, :, :, ::1] x, floating[:, ::1] y, int[:, ::1] arg):
    cdef Py_ssize_t N = x.shape[0], P = x.shape[1] * x.shape[2], C = x.shape[3]
    cdef Py_ssize_t nblk = (C + CBLOCK - 1) // CBLOCK
    cdef _PoolJob job
    job.is_double, job.x, job.y, job.arg = floating is double, &x[0, 0, 0, 0], &y[0, 0], \
        &arg[0, 0]
    job.P, job.C = P, C
    with nogil:
        _pool_run(N * nblk, _pool_threads(N * P * C), _global_max_forward_job, &job)


def _global_max_backward(const floating[:, ::1] dy, const int[:, ::1] arg,
                         floating[:, :, :, ::1] dx):
    """Each (n, c) writes one pixel of its own plane: no two iterations touch one element.
    N*C writes into the zeroed dx, on the calling thread (the zeroing is the pass that
    costs; a region here cost a wake-up per step of a text CNN)."""
    cdef Py_ssize_t N = dx.shape[0], P = dx.shape[1] * dx.shape[2], C = dx.shape[3]
    cdef Py_ssize_t n, c, a
    cdef Py_ssize_t bad = 0
    cdef const floating* dp = &dy[0, 0]
    cdef const int* ap = &arg[0, 0]
    cdef floating* xp = &dx[0, 0, 0, 0]
    for n in prange(N, schedule="static", nogil=True, use_threads_if=N * C >= PARALLEL_MIN):
        for c in range(C):
            a = ap[n * C + c]
            if a < 0 or a >= P:
                bad += 1
            else:
                xp[(n * P + a) * C + c] = dp[n * C + c]
    return bad


def global_avgpool2d_forward(x):
    """Mean over H and W: (N, H, W, C) -> (N, C)."""
    x = operands.global_avgpool2d_forward(HOST, x)
    y = np.empty((x.shape[0], x.shape[3]), dtype=x.dtype)
    if y.size:
        _global_avg_forward(x, y)
    return y


def global_avgpool2d_backward(dy, input_shape):
    """dx (N, H, W, C) = dy / (H*W) broadcast over the plane."""
    dy, input_shape = operands.global_avgpool2d_backward(HOST, dy, input_shape)
    dx = np.empty(input_shape, dtype=dy.dtype)
    if dx.size:
        _global_avg_backward(dy, dx)
    return dx


def global_maxpool2d_forward(x):
    """Max over H and W -> (y (N, C), argmax (N, C) int32, flat h*W + w)."""
    x = operands.global_maxpool2d_forward(HOST, x)
    y = np.empty((x.shape[0], x.shape[3]), dtype=x.dtype)
    arg = np.empty(y.shape, dtype=np.int32)
    if y.size:
        _global_max_forward(x, y, arg)
    return y, arg


def global_maxpool2d_backward(dy, argmax, input_shape):
    """dx (N, H, W, C): dy at the argmax pixel of each (n, c) plane, zeros elsewhere."""
    op = "global_maxpool2d_backward"
    dy, argmax, input_shape = operands.global_maxpool2d_backward(HOST, dy, argmax,
                                                                 input_shape)
    dx = np.zeros(input_shape, dtype=dy.dtype)
    if dy.size:
        bad = _global_max_backward(dy, argmax, dx)
        if bad:
            raise ValueError(f"{op}: {bad} argmax entries outside [0, H*W) = "
                             f"[0, {input_shape[1] * input_shape[2]})")
    return dx


# -- 3-D pooling (MaxPooling3D, AveragePooling3D; branch vol) --------------------------------
#
# Legend: D/H/W input depth, height, width, DO/HO/WO output, PD/PH/PW pool window, SD/SH/SW
# strides, PF/PT/PL leading pads (front, top, left). The 2-D rules above, one axis more:
# windows clipped to the input, argmax the flat index (d*H + h)*W + w within the (n, c)
# volume (first winner in (d, h, w) window order, the first NaN wins), forward rows and
# average backward rows (n, d, h) written by one thread each, maxpool3d_backward scattering
# one image per thread in output order: bit-identical results for any thread count.

cdef struct Geom3:
    Py_ssize_t N, D, H, W, C, PD, PH, PW, SD, SH, SW, PF, PT, PL, DO, HO, WO


cdef void _maxpool3d_row(const floating* x, floating* y, int* arg, const Geom3* g,
                         Py_ssize_t r) noexcept nogil:
    """Output row r = (n*DO + do)*HO + ho: y and arg point at its first pixel."""
    cdef Py_ssize_t ho = r % g.HO, do = (r // g.HO) % g.DO, n = r // (g.HO * g.DO)
    cdef Py_ssize_t d0 = _imax(do * g.SD - g.PF, 0), d1 = _imin(do * g.SD - g.PF + g.PD, g.D)
    cdef Py_ssize_t h0 = _imax(ho * g.SH - g.PT, 0), h1 = _imin(ho * g.SH - g.PT + g.PH, g.H)
    cdef Py_ssize_t wo, w0, w1, d, h, w, c, C = g.C
    cdef const floating* px
    cdef floating* yp
    cdef int* ap
    for wo in range(g.WO):
        w0 = _imax(wo * g.SW - g.PL, 0)
        w1 = _imin(wo * g.SW - g.PL + g.PW, g.W)
        yp = y + wo * C
        ap = arg + wo * C
        # The first in-bounds voxel seeds the winner, so argmax is always a real voxel.
        px = x + (((n * g.D + d0) * g.H + h0) * g.W + w0) * C
        for c in range(C):
            yp[c] = px[c]
            ap[c] = <int>((d0 * g.H + h0) * g.W + w0)
        for d in range(d0, d1):
            for h in range(h0, h1):
                for w in range(w0, w1):
                    px = x + (((n * g.D + d) * g.H + h) * g.W + w) * C
                    _max_update(px, yp, ap, C, <int>((d * g.H + h) * g.W + w))


cdef void _avgpool3d_row(const floating* x, floating* y, const Geom3* g,
                         Py_ssize_t r) noexcept nogil:
    cdef Py_ssize_t ho = r % g.HO, do = (r // g.HO) % g.DO, n = r // (g.HO * g.DO)
    cdef Py_ssize_t d0 = _imax(do * g.SD - g.PF, 0), d1 = _imin(do * g.SD - g.PF + g.PD, g.D)
    cdef Py_ssize_t h0 = _imax(ho * g.SH - g.PT, 0), h1 = _imin(ho * g.SH - g.PT + g.PH, g.H)
    cdef Py_ssize_t wo, w0, w1, d, h, w, c, C = g.C
    cdef const floating* px
    cdef floating* yp
    cdef floating inv
    for wo in range(g.WO):
        w0 = _imax(wo * g.SW - g.PL, 0)
        w1 = _imin(wo * g.SW - g.PL + g.PW, g.W)
        inv = <floating>1 / <floating>((d1 - d0) * (h1 - h0) * (w1 - w0))
        yp = y + wo * C
        for c in range(C):
            yp[c] = 0
        for d in range(d0, d1):
            for h in range(h0, h1):
                for w in range(w0, w1):
                    px = x + (((n * g.D + d) * g.H + h) * g.W + w) * C
                    for c in range(C):
                        yp[c] += px[c]
        for c in range(C):
            yp[c] *= inv


cdef inline void _covering(Py_ssize_t i, Py_ssize_t P, Py_ssize_t K, Py_ssize_t S,
                           Py_ssize_t n_out, Py_ssize_t* o0, Py_ssize_t* o1) noexcept nogil:
    """The outputs [o0, o1) whose window o*S - P <= i < o*S - P + K holds input i."""
    cdef Py_ssize_t num = i + P - K
    o0[0] = num // S + 1 if num >= 0 else 0
    o1[0] = _imin((i + P) // S + 1, n_out)


cdef void _avgpool3d_backward_row(const floating* dy, floating* dx, const Geom3* g,
                                  Py_ssize_t t) noexcept nogil:
    """dx row t = (n*D + di)*H + hi, cleared, then every output window covering it adds
    dy / window count in (do, ho, wo) order."""
    cdef Py_ssize_t hi = t % g.H, di = (t // g.H) % g.D, n = t // (g.H * g.D)
    cdef Py_ssize_t do, do0, do1, ho, ho0, ho1, wo, d0, d1, h0, h1, w0, w1, w, c, C = g.C
    cdef const floating* dp
    cdef floating* xp
    cdef floating* drow = dx + t * g.W * C
    cdef floating inv
    memset(drow, 0, g.W * C * sizeof(floating))
    _covering(di, g.PF, g.PD, g.SD, g.DO, &do0, &do1)
    _covering(hi, g.PT, g.PH, g.SH, g.HO, &ho0, &ho1)
    for do in range(do0, do1):
        d0 = _imax(do * g.SD - g.PF, 0)
        d1 = _imin(do * g.SD - g.PF + g.PD, g.D)
        for ho in range(ho0, ho1):
            h0 = _imax(ho * g.SH - g.PT, 0)
            h1 = _imin(ho * g.SH - g.PT + g.PH, g.H)
            for wo in range(g.WO):
                w0 = _imax(wo * g.SW - g.PL, 0)
                w1 = _imin(wo * g.SW - g.PL + g.PW, g.W)
                inv = <floating>1 / <floating>((d1 - d0) * (h1 - h0) * (w1 - w0))
                dp = dy + (((n * g.DO + do) * g.HO + ho) * g.WO + wo) * C
                for w in range(w0, w1):
                    xp = drow + w * C
                    for c in range(C):
                        xp[c] += dp[c] * inv


def _maxpool3d_forward(const floating[:, :, :, :, ::1] x, floating[:, :, :, :, ::1] y,
                       int[:, :, :, :, ::1] arg, Geom3 g):
    cdef Py_ssize_t rows = g.N * g.DO * g.HO, row = g.WO * g.C, r
    cdef const floating* xp = &x[0, 0, 0, 0, 0]
    cdef floating* yp = &y[0, 0, 0, 0, 0]
    cdef int* ap = &arg[0, 0, 0, 0, 0]
    for r in prange(rows, schedule="static", nogil=True,
                    use_threads_if=g.N * g.D * g.H * g.W * g.C >= PARALLEL_MIN):
        _maxpool3d_row(xp, yp + r * row, ap + r * row, &g, r)


def _maxpool3d_backward(const floating[:, :, :, :, ::1] dy, const int[:, :, :, :, ::1] arg,
                        floating[:, :, :, :, ::1] dx):
    """Per image (one thread each): dx = 0, then dx[n, argmax] += dy per (n, c) in output
    order; returns how many argmax entries were out of range (skipped)."""
    cdef Py_ssize_t N = dy.shape[0], P = dy.shape[1] * dy.shape[2] * dy.shape[3]
    cdef Py_ssize_t C = dy.shape[4], V = dx.shape[1] * dx.shape[2] * dx.shape[3], n
    cdef const floating* dp = &dy[0, 0, 0, 0, 0]
    cdef const int* ap = &arg[0, 0, 0, 0, 0]
    cdef floating* xp = &dx[0, 0, 0, 0, 0]
    cdef long bad = 0
    for n in prange(N, schedule="static", nogil=True,
                    use_threads_if=N * (P + V) * C >= PARALLEL_MIN):
        bad += _maxpool_backward_image(dp, ap, xp, n, P, V, C)
    return bad


def _avgpool3d_forward(const floating[:, :, :, :, ::1] x, floating[:, :, :, :, ::1] y,
                       Geom3 g):
    cdef Py_ssize_t rows = g.N * g.DO * g.HO, row = g.WO * g.C, r
    cdef const floating* xp = &x[0, 0, 0, 0, 0]
    cdef floating* yp = &y[0, 0, 0, 0, 0]
    for r in prange(rows, schedule="static", nogil=True,
                    use_threads_if=g.N * g.D * g.H * g.W * g.C >= PARALLEL_MIN):
        _avgpool3d_row(xp, yp + r * row, &g, r)


def _avgpool3d_backward(const floating[:, :, :, :, ::1] dy, floating[:, :, :, :, ::1] dx,
                        Geom3 g):
    cdef Py_ssize_t rows = g.N * g.D * g.H, t
    cdef const floating* dp = &dy[0, 0, 0, 0, 0]
    cdef floating* xp = &dx[0, 0, 0, 0, 0]
    for t in prange(rows, schedule="static", nogil=True,
                    use_threads_if=g.N * g.D * g.H * g.W * g.C >= PARALLEL_MIN):
        _avgpool3d_backward_row(dp, xp, &g, t)


def maxpool3d_forward(x, pool_size, strides, padding="valid"):
    """Max over each (PD, PH, PW) window -> (y, argmax); y (N, DO, HO, WO, C), argmax int32
    like y, (d*H + h)*W + w within the (n, c) volume."""
    x, g = operands.maxpool3d_forward(HOST, x, pool_size, strides, padding)
    y = np.empty((g["N"], g["DO"], g["HO"], g["WO"], g["C"]), dtype=x.dtype)
    arg = np.empty(y.shape, dtype=np.int32)
    if y.size:
        _maxpool3d_forward(x, y, arg, g)
    return y, arg


def maxpool3d_backward(dy, argmax, input_shape):
    """dx (input_shape): dy routed to the voxel argmax names; overlapping windows add."""
    op = "maxpool3d_backward"
    dy, argmax, input_shape = operands.maxpool3d_backward(HOST, dy, argmax, input_shape)
    if not dy.size:
        return np.zeros(input_shape, dtype=dy.dtype)
    dx = np.empty(input_shape, dtype=dy.dtype)
    bad = _maxpool3d_backward(dy, argmax, dx)
    if bad:
        raise ValueError(f"{op}: {bad} argmax entries outside [0, D*H*W) = "
                         f"[0, {input_shape[1] * input_shape[2] * input_shape[3]})")
    return dx


def avgpool3d_forward(x, pool_size, strides, padding="valid"):
    """Mean over each window's in-bounds voxels; y (N, DO, HO, WO, C)."""
    x, g = operands.avgpool3d_forward(HOST, x, pool_size, strides, padding)
    y = np.empty((g["N"], g["DO"], g["HO"], g["WO"], g["C"]), dtype=x.dtype)
    if y.size:
        _avgpool3d_forward(x, y, g)
    return y


def avgpool3d_backward(dy, input_shape, pool_size, strides, padding="valid"):
    """dx (input_shape): each window spreads dy / (its in-bounds voxel count)."""
    dy, g = operands.avgpool3d_backward(HOST, dy, input_shape, pool_size, strides, padding)
    dx = np.empty((g["N"], g["D"], g["H"], g["W"], g["C"]), dtype=dy.dtype)
    if dx.size:
        if dy.size:
            _avgpool3d_backward(dy, dx, g)
        else:
            dx.fill(0)
    return dx


# -- adaptive pooling (Keras 3's AdaptiveAveragePooling/AdaptiveMaxPooling 1D-3D) ----------
# x (N, *spatial, C) seen as (N, D, H, W, C), the missing leading axes of length 1, so one
# kernel serves 1-3 spatial axes. Output o of an axis of length L pooled to O reads the bin
# [floor(o*L/O), ceil((o+1)*L/O)) (torch's adaptive pools, which Keras 3's torch backend
# calls): bins may overlap and, when O > L, repeat pixels. Forward: one thread per output
# row (n, od, oh), as the windowed pools. The average's backward gathers by dx row (n, d, h)
# in (od, oh, ow) order, so it is bit-identical for any thread count; the max's backward is
# maxpool2d_backward's scatter through argmax (it carries no geometry) on the (N, P, 1, C)
# views, argmax the flat d*H*W + h*W + w within the (n, c) plane.

cdef struct AdaptiveGeom:
    Py_ssize_t N, D, H, W, C, OD, OH, OW


cdef inline Py_ssize_t _bin_start(Py_ssize_t o, Py_ssize_t length,
                                  Py_ssize_t out) noexcept nogil:
    return (o * length) // out


cdef inline Py_ssize_t _bin_end(Py_ssize_t o, Py_ssize_t length, Py_ssize_t out) noexcept nogil:
    return ((o + 1) * length + out - 1) // out


ctypedef struct _AdaptiveJob:
    bint is_double
    bint is_max
    const void* x
    void* y
    int* arg
    AdaptiveGeom g


cdef void _adaptive_row(const floating* x, floating* y, int* arg, bint is_max,
                        const AdaptiveGeom* g, Py_ssize_t r) noexcept nogil:
    """Output row r = (n*OD + od)*OH + oh: y (and arg) point at its first pixel."""
    cdef Py_ssize_t oh = r % g.OH, od = (r // g.OH) % g.OD, n = r // (g.OH * g.OD)
    cdef Py_ssize_t d0 = _bin_start(od, g.D, g.OD), d1 = _bin_end(od, g.D, g.OD)
    cdef Py_ssize_t h0 = _bin_start(oh, g.H, g.OH), h1 = _bin_end(oh, g.H, g.OH)
    cdef Py_ssize_t ow, w0, w1, d, h, w, c, C = g.C, plane = g.H * g.W
    cdef const floating* px
    cdef floating* yp
    cdef int* ap
    cdef floating inv
    for ow in range(g.OW):
        w0 = _bin_start(ow, g.W, g.OW)
        w1 = _bin_end(ow, g.W, g.OW)
        yp = y + ow * C
        px = x + (((n * g.D + d0) * g.H + h0) * g.W + w0) * C
        if is_max:
            ap = arg + ow * C
            if floating is float:
                if d1 - d0 == 1:
                    # One depth slice: the 2-D window's register-blocked winners.
                    pynn_window_max_f(px, g.W * C, h1 - h0, w1 - w0, C,
                                      <int>(d0 * plane + h0 * g.W + w0), <int>g.W, yp, ap)
                    continue
            # The first pixel seeds the winner, so argmax is always a real pixel.
            for c in range(C):
                yp[c] = px[c]
                ap[c] = <int>(d0 * plane + h0 * g.W + w0)
            for d in range(d0, d1):
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        px = x + (((n * g.D + d) * g.H + h) * g.W + w) * C
                        _max_update(px, yp, ap, C, <int>(d * plane + h * g.W + w))
            continue
        inv = <floating>1 / <floating>((d1 - d0) * (h1 - h0) * (w1 - w0))
        for c in range(C):
            yp[c] = 0
        for d in range(d0, d1):
            for h in range(h0, h1):
                for w in range(w0, w1):
                    px = x + (((n * g.D + d) * g.H + h) * g.W + w) * C
                    for c in range(C):
                        yp[c] += px[c]
        for c in range(C):
            yp[c] *= inv


cdef void _adaptive_forward_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _AdaptiveJob* j = <_AdaptiveJob*>ctx
    cdef Py_ssize_t row = j.g.OW * j.g.C
    cdef long r
    for r in range(begin, end):
        if j.is_double:
            _adaptive_row(<const double*>j.x, <double*>j.y + r * row, j.arg + r * row,
                          j.is_max, &j.g, r)
        else:
            _adaptive_row(<const float*>j.x, <float*>j.y + r * row, j.arg + r * row,
                          j.is_max, &j.g, r)


cdef void _adaptive_avg_backward_row(const floating* dy, floating* dx, const AdaptiveGeom* g,
                                     Py_ssize_t t) noexcept nogil:
    """dx row t = (n*D + d)*H + h (zeroed by the caller): every output bin covering it adds
    dy / its pixel count, in (od, oh, ow) order. Outputs covering input i of an axis are
    [floor(i*O/L), ceil((i+1)*O/L)), the bins' rule read the other way."""
    cdef Py_ssize_t h = t % g.H, d = (t // g.H) % g.D, n = t // (g.H * g.D)
    cdef Py_ssize_t od, oh, ow, dn, hn, w0, w1, w, c, C = g.C
    cdef const floating* dp
    cdef floating* xp
    cdef floating* drow = dx + t * g.W * C
    cdef floating inv
    for od in range(_bin_start(d, g.OD, g.D), _bin_end(d, g.OD, g.D)):
        dn = _bin_end(od, g.D, g.OD) - _bin_start(od, g.D, g.OD)
        for oh in range(_bin_start(h, g.OH, g.H), _bin_end(h, g.OH, g.H)):
            hn = _bin_end(oh, g.H, g.OH) - _bin_start(oh, g.H, g.OH)
            for ow in range(g.OW):
                w0 = _bin_start(ow, g.W, g.OW)
                w1 = _bin_end(ow, g.W, g.OW)
                inv = <floating>1 / <floating>(dn * hn * (w1 - w0))
                dp = dy + (((n * g.OD + od) * g.OH + oh) * g.OW + ow) * C
                for w in range(w0, w1):
                    xp = drow + w * C
                    for c in range(C):
                        xp[c] += dp[c] * inv


cdef void _adaptive_avg_backward_job(void* ctx, long begin, long end,
                                     int slot) noexcept nogil:
    cdef _AdaptiveJob* j = <_AdaptiveJob*>ctx
    cdef long t
    for t in range(begin, end):
        if j.is_double:
            _adaptive_avg_backward_row(<const double*>j.x, <double*>j.y, &j.g, t)
        else:
            _adaptive_avg_backward_row(<const float*>j.x, <float*>j.y, &j.g, t)


def _adaptive_forward(const floating[::1] x,    # IN  (N*D*H*W*C,)
                      floating[::1] y,          # OUT (N*OD*OH*OW*C,)
                      int[::1] arg,             # OUT like y (max), or (0,) (average)
                      AdaptiveGeom g, bint is_max):
    cdef _AdaptiveJob job
    job.is_double, job.is_max, job.x, job.y, job.g = floating is double, is_max, &x[0], \
        &y[0], g
    job.arg = &arg[0] if is_max else NULL
    cdef long items = g.N * g.OD * g.OH
    cdef int threads = _pool_threads(g.N * g.D * g.H * g.W * g.C)
    with nogil:
        pynn_team_for(items, team_grain(items, threads), threads, _adaptive_forward_job, &job)


def _adaptive_avg_backward(const floating[::1] dy,    # IN  (N*OD*OH*OW*C,)
                           floating[::1] dx,          # OUT (N*D*H*W*C,), zeroed
                           AdaptiveGeom g):
    cdef _AdaptiveJob job
    job.is_double, job.x, job.y, job.g = floating is double, &dy[0], &dx[0], g
    cdef long items = g.N * g.D * g.H
    cdef int threads = _pool_threads(g.N * g.D * g.H * g.W * g.C)
    with nogil:
        pynn_team_for(items, team_grain(items, threads), threads, _adaptive_avg_backward_job,
                      &job)


def adaptive_avgpool_forward(x, output_size):
    """Mean over each adaptive bin: (N, *spatial, C) -> (N, *output_size, C)."""
    x, g = operands.adaptive_avgpool_forward(HOST, x, output_size)
    y = np.empty((x.shape[0],) + tuple(_adaptive_output_shape(g, x.ndim)) + (x.shape[x.ndim - 1],),
                 dtype=x.dtype)
    if y.size:
        _adaptive_forward(x.reshape(-1), y.reshape(-1), np.empty(0, np.int32), g, False)
    return y


def adaptive_avgpool_backward(dy, input_shape):
    """dx (input_shape): each output bin spreads dy / (its pixel count) over its pixels."""
    dy, g = operands.adaptive_avgpool_backward(HOST, dy, input_shape)
    dx = np.zeros(tuple(input_shape), dtype=dy.dtype)
    if dy.size:
        _adaptive_avg_backward(dy.reshape(-1), dx.reshape(-1), g)
    return dx


def adaptive_maxpool_forward(x, output_size):
    """Max over each adaptive bin -> (y (N, *output_size, C), argmax int32 like y)."""
    x, g = operands.adaptive_maxpool_forward(HOST, x, output_size)
    y = np.empty((x.shape[0],) + tuple(_adaptive_output_shape(g, x.ndim)) + (x.shape[x.ndim - 1],),
                 dtype=x.dtype)
    arg = np.empty(y.shape, dtype=np.int32)
    if y.size:
        _adaptive_forward(x.reshape(-1), y.reshape(-1), arg.reshape(-1), g, True)
    return y, arg


def adaptive_maxpool_backward(dy, argmax, input_shape):
    """dx (input_shape): dy routed to the pixel argmax names; repeated bins add."""
    op = "adaptive_maxpool_backward"
    dy, argmax, g = operands.adaptive_maxpool_backward(HOST, dy, argmax, input_shape)
    n, c, plane = g["N"], g["C"], g["D"] * g["H"] * g["W"]
    if not dy.size:
        return np.zeros(tuple(input_shape), dtype=dy.dtype)
    dx = np.empty(tuple(input_shape), dtype=dy.dtype)
    bad = _maxpool_backward(dy.reshape(n, -1, 1, c), argmax.reshape(n, -1, 1, c),
                            dx.reshape(n, plane, 1, c))
    if bad:
        raise ValueError(f"{op}: {bad} argmax entries outside [0, {plane}) (the input's "
                         f"spatial plane)")
    return dx


def _adaptive_output_shape(g, ndim):
    """The output's spatial shape, the last ndim - 2 of (OD, OH, OW)."""
    return (g["OD"], g["OH"], g["OW"])[5 - ndim:]
