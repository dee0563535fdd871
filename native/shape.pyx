"""Shape kernels: a general transpose (Keras's Permute) and RepeatVector.

Legend: N batch, F features, R repeats; ``perm`` permutes every axis, batch included.

Design:
- transpose: y.shape[k] = x.shape[perm[k]]. The output is walked row by row (every axis
  but the last); a row's input offset comes from its multi-index and x's strides taken in
  perm order, then the row is one strided read and a contiguous write. The output rows on
  pynn's worker team: each thread writes whole rows of y. Its backward is the transpose by the
  inverse permutation (transpose_backward), the same kernel.
- repeat_vector: forward copies each x row R times (the N*R output rows on the team);
  backward sums the R rows of each sample in order (the N samples on the team), so the
  result does not depend on the thread count.
Outputs are fresh arrays; nothing accumulates into caller memory.
"""
import numpy as np

from libc.string cimport memcpy
from _openmp cimport omp_get_max_threads

from pynn.backend.operands import shape as operands
from pynn.backend.operands.common import HOST

include "_team.pxi"

ctypedef fused floating:
    float
    double


# Below this many elements a kernel runs on the calling thread: handing rows to the worker
# team costs more than the pass.
cdef enum:
    PARALLEL_MIN = 32768
    MAX_DIMS = 6  # operands.shape.MAX_DIMS


cdef struct Walk:
    Py_ssize_t ndim
    Py_ssize_t shape[MAX_DIMS]   # y's shape
    Py_ssize_t stride[MAX_DIMS]  # x's stride (elements) along y's axis k, i.e. of perm[k]


cdef void _transpose_row(const floating* x, floating* y, const Walk* g,
                         Py_ssize_t r) noexcept nogil:
    """Output row r (a flat index over every axis of y but the last)."""
    cdef Py_ssize_t k, rest = r, offset = 0, i
    cdef Py_ssize_t last = g.ndim - 1, length = g.shape[last], step = g.stride[last]
    cdef floating* yr = y + r * length
    cdef const floating* xr
    for k in range(last - 1, -1, -1):
        offset = offset + (rest % g.shape[k]) * g.stride[k]
        rest = rest // g.shape[k]
    xr = x + offset
    if step == 1:
        memcpy(yr, xr, length * sizeof(floating))
        return
    for i in range(length):
        yr[i] = xr[i * step]


ctypedef struct _ShapeJob:
    bint is_double
    int kind             # 0 transpose rows, 1 repeat rows, 2 repeat sums
    const void* x
    void* y
    const Walk* g
    Py_ssize_t R, F


cdef inline void _shape_items(const _ShapeJob* j, const floating* x, long begin,
                              long end) noexcept nogil:
    cdef floating* y = <floating*>j.y
    cdef Py_ssize_t R = j.R, F = j.F, k, f
    cdef long r
    if j.kind == 0:
        for r in range(begin, end):
            _transpose_row(x, y, j.g, r)
    elif j.kind == 1:
        for r in range(begin, end):
            memcpy(y + r * F, x + (r // R) * F, F * sizeof(floating))
    else:
        for r in range(begin, end):  # sample r: its R rows summed in order
            for f in range(F):
                y[r * F + f] = x[r * R * F + f]
            for k in range(1, R):
                for f in range(F):
                    y[r * F + f] += x[(r * R + k) * F + f]


cdef void _shape_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _ShapeJob* j = <_ShapeJob*>ctx
    if j.is_double:
        _shape_items(j, <const double*>j.x, begin, end)
    else:
        _shape_items(j, <const float*>j.x, begin, end)


cdef void _shape_run(_ShapeJob* job, long items, Py_ssize_t work) noexcept nogil:
    """The items on pynn's worker team (native/_team.h), or the calling thread when small."""
    cdef int threads = omp_get_max_threads() if work >= PARALLEL_MIN else 1
    pynn_team_for(items, team_grain(items, threads), threads, _shape_job, job)


def _transpose(const floating[::1] x, floating[::1] y, Walk g):
    cdef Py_ssize_t rows = 1, k
    cdef _ShapeJob job
    for k in range(g.ndim - 1):
        rows *= g.shape[k]
    job.is_double, job.kind, job.x, job.y, job.g = floating is double, 0, &x[0], &y[0], &g
    with nogil:
        _shape_run(&job, rows, y.shape[0])


def _run_transpose(a, perm):
    cdef Walk g
    cdef int k
    shape = a.shape
    out = np.empty(tuple(shape[p] for p in perm), dtype=a.dtype)
    if out.size:
        strides = [1] * a.ndim
        for k in range(a.ndim - 2, -1, -1):
            strides[k] = strides[k + 1] * shape[k + 1]
        g.ndim = a.ndim
        for k in range(a.ndim):
            g.shape[k] = out.shape[k]
            g.stride[k] = strides[perm[k]]
        _transpose(a.reshape(-1), out.reshape(-1), g)
    return out


def transpose_forward(x, perm):
    """y = x with its axes permuted: y.shape[k] = x.shape[perm[k]] (perm covers every axis)."""
    x, perm = operands.transpose_forward(HOST, x, perm)
    return _run_transpose(x, perm)


def transpose_backward(dy, perm):
    """dx = dy with perm undone (the transpose by the inverse permutation)."""
    dy, inverse = operands.transpose_backward(HOST, dy, perm)
    return _run_transpose(dy, inverse)


def _repeat(const floating[:, ::1] x, floating[:, :, ::1] y):
    cdef Py_ssize_t N = y.shape[0], R = y.shape[1], F = y.shape[2]
    cdef _ShapeJob job
    job.is_double, job.kind, job.x, job.y, job.R, job.F = floating is double, 1, &x[0, 0], \
        &y[0, 0, 0], R, F
    with nogil:
        _shape_run(&job, N * R, N * R * F)


def _repeat_sum(const floating[:, :, ::1] dy, floating[:, ::1] dx):
    cdef Py_ssize_t N = dy.shape[0], R = dy.shape[1], F = dy.shape[2]
    cdef _ShapeJob job
    job.is_double, job.kind, job.x, job.y, job.R, job.F = floating is double, 2, \
        &dy[0, 0, 0], &dx[0, 0], R, F
    with nogil:
        _shape_run(&job, N, N * R * F)


def repeat_vector_forward(x, n):
    """(N, F) -> (N, n, F): every sample's row repeated n times."""
    x, n = operands.repeat_vector_forward(HOST, x, n)
    y = np.empty((x.shape[0], n, x.shape[1]), dtype=x.dtype)
    if y.size:
        _repeat(x, y)
    return y


def repeat_vector_backward(dy):
    """(N, n, F) -> (N, F): the sum over the repeat axis."""
    dy = operands.repeat_vector_backward(HOST, dy)
    dx = np.empty((dy.shape[0], dy.shape[2]), dtype=dy.dtype)
    if dx.size:
        _repeat_sum(dy, dx)
    return dx
