"""Scatter kernels: keras.ops' segment_sum/segment_max, scatter, scatter_update and
slice_update, all on row views (rows, D) of their operands.

Legend: M source rows, N output rows (segments), D the row width.

Design (deterministic, no atomics: the same bits on any thread count):
- segment_reduce_forward: the host groups the source rows by id (a stable sort: ``order``,
  with ``starts`` per segment); each output row owns its group and folds it in source order
  (sum, or max with -inf for an empty segment). prange over the output rows.
- gather_rows: y[m] = src[rows[m]] (zeros for -1), the backward of every scatter here.
- select_rows: y[r] = src[owner[r]] or base[r] (owner -1): a replacement scatter where each
  output row has one owner, chosen on the host (the last update, as NumPy's assignment).
Operands arrive checked (operands.scatter): the kernels trust the indices.
"""
import numpy as np

from cython.parallel cimport prange
from libc.math cimport INFINITY
from _openmp cimport omp_get_max_threads

from pynn.backend.operands import scatter as operands
from pynn.backend.operands.common import HOST

ctypedef fused floating:
    float
    double


cdef enum:
    PARALLEL_MIN = 32768  # below this many elements the calling thread does it alone


cdef inline int _threads(Py_ssize_t work) noexcept nogil:
    return omp_get_max_threads() if work >= PARALLEL_MIN else 1


def _segment_reduce(const floating[:, ::1] data, const int[::1] starts, const int[::1] order,
                    floating[:, ::1] y, int code):
    """y (OUT, N x D) of data (IN) grouped by starts/order (IN)."""
    cdef Py_ssize_t s, k, j, D = data.shape[1], N = y.shape[0]
    cdef floating v
    cdef int threads = _threads(data.shape[0] * D + N * D)
    for s in prange(N, schedule="static", nogil=True, num_threads=threads):
        for j in range(D):
            y[s, j] = 0 if code == 0 else (1 if code == 2 else -INFINITY)
        for k in range(starts[s], starts[s + 1]):
            for j in range(D):
                v = data[order[k], j]
                if code == 0:
                    y[s, j] = y[s, j] + v
                elif code == 2:  # prod (opsm: segment_prod); an empty segment is 1
                    y[s, j] = y[s, j] * v
                elif v > y[s, j] or v != v:
                    y[s, j] = v


def _gather_rows(const floating[:, ::1] src, const int[::1] rows, floating[:, ::1] y):
    """y (OUT, M x D) of src (IN) at rows (IN)."""
    cdef Py_ssize_t m, j, D = src.shape[1]
    cdef int threads = _threads(y.shape[0] * D)
    for m in prange(y.shape[0], schedule="static", nogil=True, num_threads=threads):
        for j in range(D):
            y[m, j] = 0 if rows[m] < 0 else src[rows[m], j]


def _select_rows(const floating[:, ::1] base, const floating[:, ::1] src,
                 const int[::1] owner, floating[:, ::1] y):
    """y (OUT, N x D) of base, src and owner (IN)."""
    cdef Py_ssize_t r, j, D = base.shape[1]
    cdef int threads = _threads(y.shape[0] * D)
    for r in prange(y.shape[0], schedule="static", nogil=True, num_threads=threads):
        for j in range(D):
            y[r, j] = base[r, j] if owner[r] < 0 else src[owner[r], j]


def segment_reduce_forward(data, starts, order, op):
    """y (len(starts) - 1, D): segment s is the sum or max of data[order[starts[s]:
    starts[s + 1]]], folded in order; an empty segment is 0 (sum) or -inf (max)."""
    data, starts, order, code = operands.segment_reduce_forward(HOST, data, starts, order, op)
    y = np.empty((starts.size - 1, data.shape[1]), data.dtype)
    if y.size:
        _segment_reduce(data, starts, order, y, code)
    return y


def gather_rows(src, rows):
    """y (len(rows), D): y[m] = src[rows[m]], zeros where rows[m] is -1."""
    src, rows = operands.gather_rows(HOST, src, rows)
    y = np.empty((rows.size, src.shape[1]), src.dtype)
    if y.size:
        _gather_rows(src, rows, y)
    return y


def select_rows(base, src, owner):
    """y (base's shape): y[r] = src[owner[r]], or base[r] where owner[r] is -1."""
    base, src, owner = operands.select_rows(HOST, base, src, owner)
    y = np.empty_like(base)
    if y.size:
        _select_rows(base, src, owner, y)
    return y
