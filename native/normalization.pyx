"""Normalization kernels: batch norm and group norm (layer norm is group norm with one group
over x reshaped to (rows, features)), forward and backward side by side.

Legend: A axes before the batch-norm axis, C channels, B axes after it (B = 1 for
channels_last), M = A*B values per channel; group norm: N batch, S spatial (everything
between the first and the last axis), G groups of CG = C/G consecutive channels.

Design:
- Statistics accumulate in double, shifted by the first value of their slice (the
  shifted-data variance: sum(x-k) and sum((x-k)^2) in one pass stay exact enough where
  sum(x^2) - M*mean^2 would cancel when |mean| >> std). Variances are biased (Keras 3).
- Reductions over rows run in a fixed number of row blocks (at most MAX_BLOCKS, set by the
  size alone), each block summed by one thread, the blocks then folded in order: the result
  is bit-identical for any thread count.
- Forward: one reduction pass for the statistics, one elementwise pass to normalize.
  Backward: one reduction pass for sum(dy) and sum(dy * xhat), one elementwise pass for dx.
- A missing gamma (scale=False) is ones, a missing beta (center=False) zeros.
Outputs are fresh arrays; the forward op of batch norm in training also updates the moving
statistics in place (moving = moving*momentum + batch*(1 - momentum), Keras 3).
"""
import numpy as np

from cython.parallel cimport prange
from libc.math cimport sqrt

from pynn.backend.operands import normalization as operands
from pynn.backend.operands.common import HOST

ctypedef fused floating:
    float
    double


# Below this many elements a kernel runs on the calling thread: waking the OpenMP team costs
# more than the pass.
cdef enum:
    PARALLEL_MIN = 32768
    MAX_BLOCKS = 64


cdef inline Py_ssize_t _blocks(Py_ssize_t rows) noexcept nogil:
    return rows if rows < MAX_BLOCKS else MAX_BLOCKS


# -- batch norm -----------------------------------------------------------------------------

cdef void _bn_sums_block(const floating* x, const floating* other, const floating* shift,
                         double* s1, double* s2, Py_ssize_t a0, Py_ssize_t a1, Py_ssize_t C,
                         Py_ssize_t B) noexcept nogil:
    """Rows [a0, a1) into the block's per-channel sums. Without ``other`` (statistics):
    s1 += x - k, s2 += (x - k)^2 with k = shift[c]. With ``other`` = dy (backward):
    s1 += dy, s2 += dy * (x - k) with k = the mean."""
    cdef Py_ssize_t a, c, b, base
    cdef double d, acc1, acc2, k
    for a in range(a0, a1):
        for c in range(C):
            k = shift[c]
            base = (a * C + c) * B
            acc1 = 0.0
            acc2 = 0.0
            if other == NULL:
                for b in range(B):
                    d = x[base + b] - k
                    acc1 += d
                    acc2 += d * d
            else:
                for b in range(B):
                    d = other[base + b]
                    acc1 += d
                    acc2 += d * (x[base + b] - k)
            s1[c] += acc1
            s2[c] += acc2


cdef void _bn_sums(const floating* x, const floating* other, const floating* shift,
                   double[:, ::1] part, Py_ssize_t A, Py_ssize_t C, Py_ssize_t B) noexcept nogil:
    """part[0] = per-channel s1, part[1] = s2, each folded over the row blocks in order.
    ``part`` is (2 * (blocks + 1), C), zeroed."""
    cdef Py_ssize_t nb = _blocks(A), i, c
    for i in prange(nb, schedule="static", use_threads_if=A * C * B >= PARALLEL_MIN):
        _bn_sums_block(x, other, shift, &part[2 * (i + 1), 0], &part[2 * (i + 1) + 1, 0],
                       A * i // nb, A * (i + 1) // nb, C, B)
    for i in range(nb):
        for c in range(C):
            part[0, c] += part[2 * (i + 1), c]
            part[1, c] += part[2 * (i + 1) + 1, c]


def _bn_statistics(const floating[::1] x, floating[::1] mean, floating[::1] inv_std,
                   floating[::1] moving_mean, floating[::1] moving_variance, Py_ssize_t A,
                   Py_ssize_t C, Py_ssize_t B, double momentum, double epsilon):
    """Batch mean and 1/sqrt(var + eps) per channel (OUT), the moving statistics updated
    (IN/OUT). Needs M = A*B >= 1."""
    cdef double[:, ::1] part = np.zeros((2 * (_blocks(A) + 1), C))
    cdef double m = <double>A * B, mu, var, k
    cdef Py_ssize_t c
    cdef const floating* xp = &x[0]
    # The first row is the shift of each channel.
    cdef floating[::1] shift = np.empty(C, dtype=np.asarray(mean).dtype)
    for c in range(C):
        shift[c] = x[c * B]
    with nogil:
        _bn_sums(xp, <const floating*>NULL, &shift[0], part, A, C, B)
        for c in range(C):
            k = shift[c]
            mu = part[0, c] / m
            var = part[1, c] / m - mu * mu
            if var < 0.0:
                var = 0.0
            mean[c] = <floating>(k + mu)
            inv_std[c] = <floating>(1.0 / sqrt(var + epsilon))
            moving_mean[c] = <floating>(moving_mean[c] * momentum + (k + mu) * (1.0 - momentum))
            moving_variance[c] = <floating>(moving_variance[c] * momentum
                                            + var * (1.0 - momentum))


def _bn_normalize(const floating[::1] x, floating[::1] y, const floating[::1] mean,
                  const floating[::1] inv_std, const floating[::1] gamma,
                  const floating[::1] beta, Py_ssize_t A, Py_ssize_t C, Py_ssize_t B):
    """y = (x - mean) * inv_std * gamma + beta, per channel."""
    cdef Py_ssize_t a, c, b, base
    cdef floating mu, scale, shift
    for a in prange(A, schedule="static", nogil=True, use_threads_if=A * C * B >= PARALLEL_MIN):
        for c in range(C):
            mu = mean[c]
            scale = inv_std[c] * gamma[c]
            shift = beta[c]
            base = (a * C + c) * B
            for b in range(B):
                y[base + b] = (x[base + b] - mu) * scale + shift


def _bn_backward(const floating[::1] dy, const floating[::1] x, const floating[::1] gamma,
                 const floating[::1] mean, const floating[::1] inv_std, floating[::1] dx,
                 floating[::1] dgamma, floating[::1] dbeta, Py_ssize_t A, Py_ssize_t C,
                 Py_ssize_t B, bint batch_stats, bint need_input_grad):
    """dgamma = sum(dy * xhat), dbeta = sum(dy) (OUT); dx (OUT, when need_input_grad) is
    gamma*inv_std*dy, less the statistics' share when they came from this batch:
    gamma*inv_std*(dy - dbeta/M - xhat*dgamma/M)."""
    cdef double[:, ::1] part = np.zeros((2 * (_blocks(A) + 1), C))
    cdef double m = <double>A * B
    cdef floating[::1] k_dy = np.empty(C, dtype=np.asarray(dx).dtype)
    cdef floating[::1] k_x = np.empty_like(k_dy)
    cdef floating[::1] k_0 = np.empty_like(k_dy)
    cdef Py_ssize_t a, c, b, base
    cdef double inv, g
    with nogil:
        if m > 0:
            _bn_sums(&x[0], &dy[0], &mean[0], part, A, C, B)
        for c in range(C):
            inv = inv_std[c]
            g = gamma[c] * inv
            dbeta[c] = <floating>part[0, c]
            dgamma[c] = <floating>(part[1, c] * inv)
            # dx = k_dy*dy + k_x*(x - mean) + k_0
            k_dy[c] = <floating>g
            if batch_stats and m > 0:
                k_x[c] = <floating>(-g * inv * inv * part[1, c] / m)
                k_0[c] = <floating>(-g * part[0, c] / m)
            else:
                k_x[c] = 0
                k_0[c] = 0
    if not need_input_grad or m == 0:
        return
    for a in prange(A, schedule="static", nogil=True, use_threads_if=A * C * B >= PARALLEL_MIN):
        for c in range(C):
            base = (a * C + c) * B
            for b in range(B):
                dx[base + b] = k_dy[c] * dy[base + b] + k_x[c] * (x[base + b] - mean[c]) + k_0[c]


def _ones_or(v, c, dtype, fill):
    return np.full(c, fill, dtype=dtype) if v is None else v


def batch_norm_forward(x, gamma, beta, moving_mean, moving_variance, axis=-1, momentum=0.99,
                       epsilon=1e-3, training=False):
    """Batch normalization over every axis but ``axis`` -> (y, mean, inv_std), mean and
    inv_std (C,) the statistics y was normalized with (the batch's when training, else the
    moving ones), for batch_norm_backward. Training also updates moving_mean and
    moving_variance in place; an empty batch leaves them alone."""
    (x, gamma, beta, moving_mean, moving_variance, (A, C, B), momentum, epsilon,
     training) = operands.batch_norm_forward(HOST, x, gamma, beta, moving_mean,
                                             moving_variance, axis, momentum, epsilon, training)
    dtype = x.dtype
    gamma = _ones_or(gamma, C, dtype, 1)
    beta = _ones_or(beta, C, dtype, 0)
    y = np.empty_like(x)
    mean = np.empty(C, dtype=dtype)
    inv_std = np.empty(C, dtype=dtype)
    if training and A * B > 0:
        _bn_statistics(x.reshape(-1), mean, inv_std, moving_mean, moving_variance, A, C, B,
                       momentum, epsilon)
    else:
        mean[:] = moving_mean
        inv_std[:] = 1.0 / np.sqrt(moving_variance.astype(np.float64) + epsilon)
    if x.size:
        _bn_normalize(x.reshape(-1), y.reshape(-1), mean, inv_std, gamma, beta, A, C, B)
    return y, mean, inv_std


def batch_norm_backward(dy, x, gamma, mean, inv_std, axis=-1, batch_stats=True,
                        need_input_grad=True):
    """-> (dx or None, dgamma, dbeta) of y = batch_norm_forward(x, ...)[0] with its returned
    mean and inv_std; ``batch_stats``: they were the batch's (training), so dx carries their
    dependence on x; otherwise they were constants (inference, trainable=False)."""
    (dy, x, gamma, mean, inv_std, (A, C, B), batch_stats,
     need_input_grad) = operands.batch_norm_backward(HOST, dy, x, gamma, mean, inv_std, axis,
                                                     batch_stats, need_input_grad)
    dtype = x.dtype
    gamma = _ones_or(gamma, C, dtype, 1)
    dx = np.empty_like(x) if need_input_grad else None
    dgamma = np.empty(C, dtype=dtype)
    dbeta = np.empty(C, dtype=dtype)
    flat = x.reshape(-1)
    _bn_backward(dy.reshape(-1), flat, gamma, mean, inv_std,
                 dx.reshape(-1) if dx is not None else np.empty(1, dtype), dgamma, dbeta, A, C, B,
                 batch_stats, need_input_grad)
    return dx, dgamma, dbeta


# -- group norm (and layer norm) -----------------------------------------------------------

cdef void _gn_stats_row(const floating* x, floating* mean, floating* inv_std, double* s1,
                        double* s2, Py_ssize_t S, Py_ssize_t C, Py_ssize_t G,
                        double epsilon) noexcept nogil:
    """Sample n: x its (S, C) slab; mean, inv_std, s1, s2 its G entries."""
    cdef Py_ssize_t CG = C // G, s, g, j
    cdef double d, k, mu, var, m = <double>S * CG
    for g in range(G):
        s1[g] = 0.0
        s2[g] = 0.0
    for s in range(S):
        for g in range(G):
            k = x[g * CG]
            for j in range(CG):
                d = x[s * C + g * CG + j] - k
                s1[g] += d
                s2[g] += d * d
    for g in range(G):
        mu = s1[g] / m
        var = s2[g] / m - mu * mu
        if var < 0.0:
            var = 0.0
        mean[g] = <floating>(x[g * CG] + mu)
        inv_std[g] = <floating>(1.0 / sqrt(var + epsilon))


def _gn_forward(const floating[::1] x, floating[::1] y, floating[::1] mean,
                floating[::1] inv_std, const floating[::1] gamma, const floating[::1] beta,
                Py_ssize_t N, Py_ssize_t S, Py_ssize_t C, Py_ssize_t G, double epsilon,
                bint rms_scaling):
    cdef double[:, ::1] sums = np.empty((2 * N, G))
    cdef Py_ssize_t n, s, g, j, c, CG = C // G, slab = S * C
    cdef floating mu, inv
    for n in prange(N, schedule="static", nogil=True, use_threads_if=N * slab >= PARALLEL_MIN):
        _gn_stats_row(&x[n * slab], &mean[n * G], &inv_std[n * G], &sums[2 * n, 0],
                      &sums[2 * n + 1, 0], S, C, G, epsilon)
        for s in range(S):
            for g in range(G):
                # rms_scaling (Keras's deprecated option) scales x by the inverse std
                # without centering it.
                mu = 0 if rms_scaling else mean[n * G + g]
                inv = inv_std[n * G + g]
                for j in range(CG):
                    c = g * CG + j
                    y[n * slab + s * C + c] = (x[n * slab + s * C + c] - mu) * inv * gamma[c] \
                        + beta[c]


cdef void _gn_sums_block(const floating* dy, const floating* x, const floating* gamma,
                         const floating* mean, const floating* inv_std, double* sg,
                         double* sgx, double* dgamma, double* dbeta, Py_ssize_t n0,
                         Py_ssize_t n1, Py_ssize_t S, Py_ssize_t C, Py_ssize_t G,
                         bint rms_scaling) noexcept nogil:
    """Samples [n0, n1): per (n, g) sg = sum(dy*gamma), sgx = sum(dy*gamma*xhat) (xhat the
    centered normalized x), and the block's per-channel dgamma = sum(dy * yhat) (yhat = xhat,
    or x*inv_std under rms_scaling), dbeta = sum(dy)."""
    cdef Py_ssize_t CG = C // G, n, s, g, j, c, i
    cdef double d, xh, mu, inv
    for n in range(n0, n1):
        for g in range(G):
            sg[n * G + g] = 0.0
            sgx[n * G + g] = 0.0
        for s in range(S):
            for g in range(G):
                mu = mean[n * G + g]
                inv = inv_std[n * G + g]
                for j in range(CG):
                    c = g * CG + j
                    i = (n * S + s) * C + c
                    d = dy[i]
                    xh = (x[i] - mu) * inv
                    sg[n * G + g] += d * gamma[c]
                    sgx[n * G + g] += d * gamma[c] * xh
                    dbeta[c] += d
                    dgamma[c] += d * (x[i] * inv if rms_scaling else xh)


def _gn_backward(const floating[::1] dy, const floating[::1] x, const floating[::1] gamma,
                 const floating[::1] mean, const floating[::1] inv_std, floating[::1] dx,
                 floating[::1] dgamma, floating[::1] dbeta, Py_ssize_t N, Py_ssize_t S,
                 Py_ssize_t C, Py_ssize_t G, bint rms_scaling, bint need_input_grad):
    """dx = inv*(g - a*mean(g) - xhat*(mean(g*xhat) + b*mu*inv*mean(g))), g = dy*gamma, with
    (a, b) = (1, 0), or (0, 1) under rms_scaling (y = x*inv*gamma: the mean enters through
    the variance only)."""
    cdef Py_ssize_t nb = _blocks(N), i, c, n, s, g, j, k
    cdef Py_ssize_t CG = C // G, slab = S * C
    cdef double[:, ::1] part = np.zeros((2 * (nb + 1), C))
    cdef double[::1] sg = np.zeros(N * G)
    cdef double[::1] sgx = np.zeros(N * G)
    cdef double m = <double>S * CG, mu, inv, a1, a2
    for i in prange(nb, schedule="static", nogil=True, use_threads_if=N * slab >= PARALLEL_MIN):
        _gn_sums_block(&dy[0], &x[0], &gamma[0], &mean[0], &inv_std[0], &sg[0], &sgx[0],
                       &part[2 * (i + 1), 0], &part[2 * (i + 1) + 1, 0], N * i // nb,
                       N * (i + 1) // nb, S, C, G, rms_scaling)
    for i in range(nb):
        for c in range(C):
            part[0, c] += part[2 * (i + 1), c]
            part[1, c] += part[2 * (i + 1) + 1, c]
    for c in range(C):
        dgamma[c] = <floating>part[0, c]
        dbeta[c] = <floating>part[1, c]
    if not need_input_grad:
        return
    for n in prange(N, schedule="static", nogil=True, use_threads_if=N * slab >= PARALLEL_MIN):
        for g in range(G):
            mu = mean[n * G + g]
            inv = inv_std[n * G + g]
            # dx = inv*(dy*gamma) - a1 - a2*(x - mu)
            if rms_scaling:
                a1 = 0.0
                a2 = inv * inv * (sgx[n * G + g] + mu * inv * sg[n * G + g]) / m
            else:
                a1 = inv * sg[n * G + g] / m
                a2 = inv * inv * sgx[n * G + g] / m
            for s in range(S):
                for j in range(CG):
                    c = g * CG + j
                    k = n * slab + s * C + c
                    dx[k] = <floating>(inv * dy[k] * gamma[c] - a1 - a2 * (x[k] - mu))


def group_norm_forward(x, gamma, beta, groups, epsilon=1e-3, rms_scaling=False):
    """Group normalization of x (N, ..., C): per sample and group of C/groups consecutive
    channels, over the group's channels and every axis between the first and the last
    -> (y, mean, inv_std), mean and inv_std (N, groups) for group_norm_backward."""
    x, gamma, beta, (N, S, C, G), epsilon, rms_scaling = operands.group_norm_forward(
        HOST, x, gamma, beta, groups, epsilon, rms_scaling)
    dtype = x.dtype
    gamma = _ones_or(gamma, C, dtype, 1)
    beta = _ones_or(beta, C, dtype, 0)
    y = np.empty_like(x)
    mean = np.zeros((N, G), dtype=dtype)
    inv_std = np.zeros((N, G), dtype=dtype)
    if x.size:
        _gn_forward(x.reshape(-1), y.reshape(-1), mean.reshape(-1), inv_std.reshape(-1),
                    gamma, beta, N, S, C, G, epsilon, rms_scaling)
    return y, mean, inv_std


def group_norm_backward(dy, x, gamma, mean, inv_std, groups, rms_scaling=False,
                        need_input_grad=True):
    """-> (dx or None, dgamma, dbeta) of y = group_norm_forward(x, ...)[0]."""
    (dy, x, gamma, mean, inv_std, (N, S, C, G), rms_scaling,
     need_input_grad) = operands.group_norm_backward(HOST, dy, x, gamma, mean, inv_std, groups,
                                                     rms_scaling, need_input_grad)
    dtype = x.dtype
    gamma = _ones_or(gamma, C, dtype, 1)
    dx = np.empty_like(x) if need_input_grad else None
    dgamma = np.zeros(C, dtype=dtype)
    dbeta = np.zeros(C, dtype=dtype)
    if x.size:
        flat = x.reshape(-1)
        _gn_backward(dy.reshape(-1), flat, gamma, mean.reshape(-1), inv_std.reshape(-1),
                     dx.reshape(-1) if dx is not None else np.empty(1, dtype), dgamma, dbeta,
                     N, S, C, G, rms_scaling, need_input_grad)
    return dx, dgamma, dbeta
