"""Embedding kernels: Keras 3's Embedding, a row gather and its scatter-add backward.

Legend: M looked-up indices (every index axis flattened), V vocabulary rows (input_dim),
D output_dim.

Design:
- embedding_forward: y[m] = table[indices[m]], one memcpy per row, prange over M.
- embedding_backward: dtable[v] = sum of dy[m] over the m with indices[m] == v, summed in
  increasing m. Deterministic without atomics: a serial counting sort groups the flat
  indices once (O(M + V), stable, so each group keeps index order), then prange over the
  vocabulary rows: each thread owns whole rows of dtable and sums its group in order. The
  result does not depend on the thread count; rows never looked up are zero.
Indices arrive range-checked (operands.embedding): the kernels trust them.
"""
import numpy as np

from cython.parallel cimport prange
from libc.string cimport memcpy, memset
from _openmp cimport omp_get_max_threads

from pynn.backend.operands import embedding as operands
from pynn.backend.operands.common import HOST

include "_team.pxi"

ctypedef fused floating:
    float
    double


# Below this many elements a kernel runs on the calling thread: waking the OpenMP team
# costs more than the pass.
cdef enum:
    PARALLEL_MIN = 32768


ctypedef struct _EmbeddingJob:
    bint is_double
    const int* indices
    const int* starts
    const int* order
    const void* src
    void* dst
    Py_ssize_t D


cdef void _gather_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _EmbeddingJob* j = <_EmbeddingJob*>ctx
    cdef size_t row = j.D * (sizeof(double) if j.is_double else sizeof(float))
    cdef long m
    for m in range(begin, end):
        memcpy(<char*>j.dst + m * row, <const char*>j.src + j.indices[m] * row, row)


def _gather(const int[::1] indices,  # IN  (M,)
            const floating[:, ::1] table,  # IN  (V, D)
            floating[:, ::1] y):  # OUT (M, D)
    """Rows on pynn's worker team (native/_team.h)."""
    cdef Py_ssize_t M = indices.shape[0], D = table.shape[1]
    cdef int threads = omp_get_max_threads() if M * D >= PARALLEL_MIN else 1
    cdef _EmbeddingJob job
    job.is_double, job.indices, job.src, job.dst, job.D = floating is double, &indices[0], \
        &table[0, 0], &y[0, 0], D
    with nogil:
        pynn_team_for(M, team_grain(M, threads), threads, _gather_job, &job)


def _group(const int[::1] indices,  # IN  (M,)
           int[::1] starts,  # OUT (V + 1,): group v is order[starts[v]:starts[v + 1]]
           int[::1] order):  # OUT (M,)  positions m, grouped by index, increasing within
    cdef Py_ssize_t M = indices.shape[0], V = starts.shape[0] - 1, m, v
    cdef int[::1] fill = np.zeros(V, dtype=np.intc)
    with nogil:
        starts[0] = 0
        for v in range(V):
            starts[v + 1] = 0
        for m in range(M):
            starts[indices[m] + 1] += 1
        for v in range(V):
            starts[v + 1] += starts[v]
            fill[v] = starts[v]
        for m in range(M):
            order[fill[indices[m]]] = <int>m
            fill[indices[m]] += 1


def _scatter_add(const floating[:, ::1] dy,  # IN  (M, D)
                 const int[::1] starts,  # IN  (V + 1,)
                 const int[::1] order,  # IN  (M,)
                 floating[:, ::1] dtable):  # OUT (V, D)
    """Vocabulary rows on pynn's worker team (native/_team.h): each row summed by one thread
    in its group's order."""
    cdef Py_ssize_t V = dtable.shape[0], D = dtable.shape[1]
    cdef int threads = omp_get_max_threads() if (V + dy.shape[0]) * D >= PARALLEL_MIN else 1
    cdef _EmbeddingJob job
    job.is_double, job.starts, job.order, job.src, job.dst, job.D = floating is double, \
        &starts[0], &order[0], &dy[0, 0], &dtable[0, 0], D
    with nogil:
        pynn_team_for(V, team_grain(V, threads), threads, _scatter_job, &job)


cdef inline void _scatter_rows(const _EmbeddingJob* j, const floating* dp, floating* tp,
                               long begin, long end) noexcept nogil:
    cdef Py_ssize_t D = j.D, k, d
    cdef long v
    cdef const floating* row
    for v in range(begin, end):
        memset(tp + v * D, 0, D * sizeof(floating))
        for k in range(j.starts[v], j.starts[v + 1]):
            row = dp + j.order[k] * D
            for d in range(D):
                tp[v * D + d] += row[d]


cdef void _scatter_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _EmbeddingJob* j = <_EmbeddingJob*>ctx
    if j.is_double:
        _scatter_rows(j, <const double*>j.src, <double*>j.dst, begin, end)
    else:
        _scatter_rows(j, <const float*>j.src, <float*>j.dst, begin, end)


def embedding_forward(indices, table):
    """y[..., :] = table[indices[...], :]: shape indices.shape + (D,), table's dtype."""
    indices, table = operands.embedding_forward(HOST, indices, table)
    y = np.empty(indices.shape + (table.shape[1],), dtype=table.dtype)
    if y.size:
        _gather(indices.reshape(-1), table, y.reshape(-1, table.shape[1]))
    return y


def embedding_backward(dy, indices, input_dim):
    """dtable (input_dim, D): the rows of dy summed by index, deterministically."""
    dy, indices, input_dim = operands.embedding_backward(HOST, dy, indices, input_dim)
    D = dy.shape[dy.ndim - 1]  # wraparound is off: no negative indices here
    dtable = np.zeros((input_dim, D), dtype=dy.dtype)
    if indices.size and D:
        flat = indices.reshape(-1)
        starts = np.empty(input_dim + 1, dtype=np.intc)
        order = np.empty(flat.size, dtype=np.intc)
        _group(flat, starts, order)
        _scatter_add(dy.reshape(-1, D), starts, order, dtable)
    return dtable
