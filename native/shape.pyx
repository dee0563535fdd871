"""Shape kernels: a general transpose (Keras's Permute) and RepeatVector.

Legend: N batch, F features, R repeats; ``perm`` permutes every axis, batch included.

Design:
- transpose: y.shape[k] = x.shape[perm[k]]. The output is walked row by row (every axis
  but the last); a row's input offset comes from its multi-index and x's strides taken in
  perm order, then the row is one strided read and a contiguous write. prange over the
  output rows: each thread writes whole rows of y. Its backward is the transpose by the
  inverse permutation (transpose_backward), the same kernel.
- repeat_vector: forward copies each x row R times (prange over the N*R output rows);
  backward sums the R rows of each sample in order (prange over N), so the result does not
  depend on the thread count.
Outputs are fresh arrays; nothing accumulates into caller memory.
"""
import numpy as np

from cython.parallel cimport prange
from libc.string cimport memcpy

from pynn.backend.operands import shape as operands
from pynn.backend.operands.common import HOST

ctypedef fused floating:
    float
    double


# Below this many elements a kernel runs on the calling thread: waking the OpenMP team
# costs more than the pass.
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


def _transpose(const floating[::1] x, floating[::1] y, Walk g):
    cdef Py_ssize_t rows = 1, k, r, total = y.shape[0]
    for k in range(g.ndim - 1):
        rows *= g.shape[k]
    cdef const floating* xp = &x[0]
    cdef floating* yp = &y[0]
    for r in prange(rows, schedule="static", nogil=True, use_threads_if=total >= PARALLEL_MIN):
        _transpose_row(xp, yp, &g, r)


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
    cdef Py_ssize_t N = y.shape[0], R = y.shape[1], F = y.shape[2], r
    cdef const floating* xp = &x[0, 0]
    cdef floating* yp = &y[0, 0, 0]
    for r in prange(N * R, schedule="static", nogil=True,
                    use_threads_if=N * R * F >= PARALLEL_MIN):
        memcpy(yp + r * F, xp + (r // R) * F, F * sizeof(floating))


def _repeat_sum(const floating[:, :, ::1] dy, floating[:, ::1] dx):
    cdef Py_ssize_t N = dy.shape[0], R = dy.shape[1], F = dy.shape[2], n, k, f
    cdef const floating* dp = &dy[0, 0, 0]
    cdef floating* xp = &dx[0, 0]
    for n in prange(N, schedule="static", nogil=True, use_threads_if=N * R * F >= PARALLEL_MIN):
        for f in range(F):
            xp[n * F + f] = dp[n * R * F + f]
        for k in range(1, R):
            for f in range(F):
                xp[n * F + f] += dp[(n * R + k) * F + f]


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
