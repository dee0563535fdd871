"""Attention kernels: the scaled dot-product core of Keras 3's MultiHeadAttention.

Legend: N batch, T query steps, S key/value steps, H heads, K key width, V value width.
q (N, T, H, K), k (N, S, H, K), v (N, S, H, V) come as the projections lay them out (one
head's rows H*K apart: nothing is transposed); probs (N, H, T, S); mask (N, T, S) uint8,
nonzero = attend; drop (N, H, T, S) the dropout multiplier, or NULL.

Design:
- One item of pynn's worker team per (n, h) pair, computed whole by one thread: no bit
  depends on the thread count. BLAS is held at one thread during the job (dense's solo
  hold): the pairs are the parallelism, and a 64 x 64 x 64 product is too small to split.
- Forward: qs = q * scale rounded to the dtype first (Keras multiplies the query, then takes
  the products), scores = qs k^T into probs[n, h] (T x S, K deep); each row's masked
  softmax in place (masked scores set to -inf, so exp gives exact zeros; a row with nothing
  to attend to is all zeros, as Keras's Softmax(mask) zeroes it); out = (probs * drop) v
  (T x V, S deep) written straight into out[n, :, h, :].
- Backward per pair: dv = pd^T dout, dp = (dout v^T) * drop (+ dprobs, a gradient reaching
  the returned probabilities), ds = probs (dp - sum(probs dp))
  (the softmax's Jacobian product; zero where probs is), dq = scale (ds k), dk = ds^T qs.
  Every gradient element is written by the one thread owning its (n, h): no atomics.
Outputs are fresh arrays; per-pair temporaries are allocated inside the item.
"""
import numpy as np

from libc.math cimport INFINITY
from libc.stdlib cimport free, malloc
from libc.string cimport memset
from _activation cimport softmax_grad_row, softmax_row
from _blas cimport blas_init, floating, gemm_rowmajor
from _openmp cimport omp_get_max_threads

from pynn._native.dense import _blas_solo
from pynn.backend.operands import attention as operands
from pynn.backend.operands.common import HOST

include "_team.pxi"

blas_init()

# Multiply-adds below which the pairs run on the calling thread (a worker's wake-up costs
# more than a few small products).
cdef double TEAM_MIN_MACS = 262144


ctypedef struct _AttentionJob:
    bint is_double
    const void* q
    const void* k
    const void* v
    const unsigned char* mask
    const void* drop
    const void* dout
    const void* dprobs
    void* out
    void* probs
    void* dq
    void* dk
    void* dv
    Py_ssize_t N, T, S, H, K, V
    double scale
    int failed


cdef inline void _gemm(bint ta, bint tb, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                       const floating* a, Py_ssize_t lda, const floating* b, Py_ssize_t ldb,
                       floating* c, Py_ssize_t ldc) noexcept nogil:
    """c = op(a) op(b); k == 0 gives zeros (BLAS refuses a zero leading dimension)."""
    cdef Py_ssize_t i
    if m <= 0 or n <= 0:
        return
    if k <= 0:
        for i in range(m):
            memset(c + i * ldc, 0, n * sizeof(floating))
        return
    gemm_rowmajor(ta, tb, <int>m, <int>n, <int>k, <floating>1, a, <int>lda, b, <int>ldb,
                  <floating>0, c, <int>ldc)


cdef inline void _scaled_queries(const _AttentionJob* j, const floating* q, floating* qs,
                                 Py_ssize_t n, Py_ssize_t h) noexcept nogil:
    cdef Py_ssize_t t, c, K = j.K
    cdef floating sc = <floating>j.scale
    cdef const floating* row
    for t in range(j.T):
        row = q + ((n * j.T + t) * j.H + h) * K
        for c in range(K):
            qs[t * K + c] = row[c] * sc


cdef inline void _masked_softmax(floating* p, const unsigned char* m, Py_ssize_t S) noexcept nogil:
    cdef Py_ssize_t s
    cdef bint kept = m == NULL
    if m != NULL:
        for s in range(S):
            if m[s]:
                kept = True
            else:
                p[s] = -INFINITY
    if not kept:   # nothing to attend to: Keras's Softmax(mask) gives zeros
        memset(p, 0, S * sizeof(floating))
        return
    softmax_row(p, p, S)


cdef int _forward_pair(const _AttentionJob* j, const floating* dummy, long item) noexcept nogil:
    cdef Py_ssize_t T = j.T, S = j.S, H = j.H, K = j.K, V = j.V, i
    cdef Py_ssize_t n = item // H, h = item % H
    cdef floating* probs = <floating*>j.probs + item * T * S
    cdef const floating* drop = <const floating*>j.drop
    cdef floating* qs = <floating*>malloc((T * K + (T * S if drop != NULL else 0) + 1)
                                          * sizeof(floating))
    cdef floating* pd
    if qs == NULL:
        return 1
    _scaled_queries(j, <const floating*>j.q, qs, n, h)
    _gemm(False, True, T, S, K, qs, K, <const floating*>j.k + (n * S * H + h) * K, H * K,
          probs, S)
    for i in range(T):
        _masked_softmax(probs + i * S, j.mask + (n * T + i) * S if j.mask != NULL else NULL,
                        S)
    pd = probs
    if drop != NULL:
        pd = qs + T * K
        drop += item * T * S
        for i in range(T * S):
            pd[i] = probs[i] * drop[i]
    _gemm(False, False, T, V, S, pd, S, <const floating*>j.v + (n * S * H + h) * V, H * V,
          <floating*>j.out + (n * T * H + h) * V, H * V)
    free(qs)
    return 0


cdef int _backward_pair(const _AttentionJob* j, const floating* dummy, long item) noexcept nogil:
    cdef Py_ssize_t T = j.T, S = j.S, H = j.H, K = j.K, V = j.V, i
    cdef Py_ssize_t n = item // H, h = item % H
    cdef const floating* probs = <const floating*>j.probs + item * T * S
    cdef const floating* drop = <const floating*>j.drop
    cdef const floating* dprobs = <const floating*>j.dprobs
    cdef const floating* dout = <const floating*>j.dout + (n * T * H + h) * V
    cdef const floating* k = <const floating*>j.k + (n * S * H + h) * K
    cdef const floating* v = <const floating*>j.v + (n * S * H + h) * V
    cdef floating* qs = <floating*>malloc((T * K + 2 * T * S + 1) * sizeof(floating))
    cdef floating* dp
    cdef floating* pd
    if qs == NULL:
        return 1
    dp = qs + T * K
    pd = dp + T * S
    _scaled_queries(j, <const floating*>j.q, qs, n, h)
    if drop != NULL:
        drop += item * T * S
        for i in range(T * S):
            pd[i] = probs[i] * drop[i]
    else:
        pd = <floating*>probs
    # dv[s] = sum_t pd[t, s] dout[t]
    _gemm(True, False, S, V, T, pd, S, dout, H * V, <floating*>j.dv + (n * S * H + h) * V,
          H * V)
    # dp = (dout v^T) * drop (+ dprobs), then ds = probs (dp - sum(probs dp)) in place
    _gemm(False, True, T, S, V, dout, H * V, v, H * V, dp, S)
    if drop != NULL:
        for i in range(T * S):
            dp[i] = dp[i] * drop[i]
    if dprobs != NULL:
        dprobs += item * T * S
        for i in range(T * S):
            dp[i] = dp[i] + dprobs[i]
    for i in range(T):
        softmax_grad_row(dp + i * S, probs + i * S, dp + i * S, S)
    # dq = scale (ds k): the products first, then the scale, as the chain rule through
    # q * scale rounds them
    _gemm(False, False, T, K, S, dp, S, k, H * K, <floating*>j.dq + (n * T * H + h) * K,
          H * K)
    _scale_rows(<floating*>j.dq + (n * T * H + h) * K, T, K, H * K, <floating>j.scale)
    # dk = ds^T qs
    _gemm(True, False, S, K, T, dp, S, qs, K, <floating*>j.dk + (n * S * H + h) * K, H * K)
    free(qs)
    return 0


cdef inline void _scale_rows(floating* a, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t ld,
                             floating factor) noexcept nogil:
    cdef Py_ssize_t r, c
    for r in range(rows):
        for c in range(cols):
            a[r * ld + c] *= factor


cdef void _forward_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _AttentionJob* j = <_AttentionJob*>ctx
    cdef long item
    for item in range(begin, end):
        if j.is_double:
            if _forward_pair(j, <const double*>NULL, item):
                j.failed = 1
        elif _forward_pair(j, <const float*>NULL, item):
            j.failed = 1


cdef void _backward_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _AttentionJob* j = <_AttentionJob*>ctx
    cdef long item
    for item in range(begin, end):
        if j.is_double:
            if _backward_pair(j, <const double*>NULL, item):
                j.failed = 1
        elif _backward_pair(j, <const float*>NULL, item):
            j.failed = 1


cdef void _run(_AttentionJob* job, pynn_team_fn fn, double macs) noexcept:
    """The (n, h) pairs on the team with BLAS at one thread, or on this thread alone."""
    cdef long items = job.N * job.H
    cdef int threads = omp_get_max_threads() if macs >= TEAM_MIN_MACS else 1
    cdef bint held = False
    if threads > 1:
        held = _blas_solo(True)
        if not held:
            threads = 1
    try:
        with nogil:
            pynn_team_for(items, team_grain(items, threads), threads, fn, job)
    finally:
        if held:
            _blas_solo(False)


cdef void _fill(_AttentionJob* job, q, k, v, dims, double scale):
    job.N, job.T, job.S, job.H, job.K, job.V = dims
    job.scale, job.failed, job.is_double = scale, 0, q.dtype == np.float64
    job.q, job.k, job.v = _address(q), _address(k), _address(v)
    job.mask = NULL
    job.drop = job.dout = job.dprobs = NULL
    job.dq = job.dk = job.dv = job.out = job.probs = NULL


cdef const void* _address(a):
    cdef Py_ssize_t p = a.__array_interface__["data"][0]
    return <const void*>p


def attention_forward(q, k, v, mask=None, scale=1.0, drop=None):
    """(out (N, T, H, V), probs (N, H, T, S)): softmax(q*scale k^T, masked) v, per head;
    ``drop`` multiplies the probabilities on their way to v (probs are returned before it)."""
    q, k, v, mask, scale, drop, dims = operands.attention_forward(HOST, q, k, v, mask, scale,
                                                                   drop)
    N, T, S, H, K, V = dims
    if N * H * T == 0 or S == 0:
        return np.zeros((N, T, H, V), q.dtype), np.zeros((N, H, T, S), q.dtype)
    # every element is written below (one pair's products and softmax rows cover its part)
    out = np.empty((N, T, H, V), q.dtype)
    probs = np.empty((N, H, T, S), q.dtype)
    cdef _AttentionJob job
    _fill(&job, q, k, v, dims, scale)
    job.out, job.probs = <void*>_address(out), <void*>_address(probs)
    if mask is not None:
        job.mask = <const unsigned char*>_address(mask)
    if drop is not None:
        job.drop = _address(drop)
    _run(&job, _forward_job, float(N * H) * T * S * (K + V))
    if job.failed:
        raise MemoryError("attention_forward: out of memory for a head's scratch")
    return out, probs


def attention_backward(dout, q, k, v, probs, scale=1.0, drop=None, dprobs=None):
    """(dq, dk, dv) of attention_forward's out, from its probs; ``dprobs`` (a gradient
    reaching the probabilities themselves) joins dout's on their way back."""
    dout, q, k, v, probs, scale, drop, dprobs, dims = operands.attention_backward(
        HOST, dout, q, k, v, probs, scale, drop, dprobs)
    N, T, S, H, K, V = dims
    if N * H * T == 0 or S == 0:
        return np.zeros(q.shape, q.dtype), np.zeros(k.shape, q.dtype), np.zeros(v.shape, q.dtype)
    dq, dk, dv = np.empty(q.shape, q.dtype), np.empty(k.shape, q.dtype), np.empty(v.shape, q.dtype)
    cdef _AttentionJob job
    _fill(&job, q, k, v, dims, scale)
    job.dout, job.probs = _address(dout), <void*>_address(probs)
    job.dq, job.dk, job.dv = <void*>_address(dq), <void*>_address(dk), <void*>_address(dv)
    if drop is not None:
        job.drop = _address(drop)
    if dprobs is not None:
        job.dprobs = _address(dprobs)
    _run(&job, _backward_job, 2.0 * N * H * T * S * (K + V))
    if job.failed:
        raise MemoryError("attention_backward: out of memory for a head's scratch")
    return dq, dk, dv
