"""Sort kernels: keras.ops' sort/argsort/top_k along the last axis of a row view.

Legend: R rows, n a row's length, k the positions taken (top_k's k, or n).

Design:
- argsort_rows: a stable bottom-up merge sort of each row's positions (ascending, or
  descending for top_k; NaN last either way, as NumPy's sort; ties keep position order),
  in an int32 scratch row of its own; prange over rows.
- take_along_rows: y[r, j] = x[r, index[r, j]]; put_along_rows: the transpose, zeros
  elsewhere (the gradients of sort and top_k). A row's positions are distinct (a
  permutation or its prefix), so each output element has one writer: no atomics.
Operands arrive checked (operands.sort).
"""
import numpy as np

from cython.parallel cimport prange
from _openmp cimport omp_get_max_threads

from pynn.backend.operands import sort as operands
from pynn.backend.operands.common import HOST

ctypedef fused floating:
    float
    double


cdef enum:
    PARALLEL_MIN = 32768  # below this many elements the calling thread does it alone


cdef inline int _threads(Py_ssize_t work) noexcept nogil:
    return omp_get_max_threads() if work >= PARALLEL_MIN else 1


cdef inline bint _before(floating a, floating b, bint descending) noexcept nogil:
    """a strictly before b (a tie is not: the merge then keeps position order)."""
    if b != b:
        return a == a
    if a != a:
        return False
    return a > b if descending else a < b


cdef void _sort_row(const floating* x, int* order, int* scratch, Py_ssize_t n,
                    bint descending) noexcept nogil:
    cdef Py_ssize_t width = 1, lo, mid, hi, i, j, k
    cdef int* src = order
    cdef int* dst = scratch
    cdef int* swap
    for i in range(n):
        order[i] = <int>i
    while width < n:
        lo = 0
        while lo < n:
            mid = min(lo + width, n)
            hi = min(lo + 2 * width, n)
            i, j, k = lo, mid, lo
            while i < mid and j < hi:
                if _before(x[src[j]], x[src[i]], descending):
                    dst[k] = src[j]
                    j = j + 1
                else:
                    dst[k] = src[i]
                    i = i + 1
                k = k + 1
            while i < mid:
                dst[k] = src[i]
                i = i + 1
                k = k + 1
            while j < hi:
                dst[k] = src[j]
                j = j + 1
                k = k + 1
            lo = hi
        swap = src
        src = dst
        dst = swap
        width = width * 2
    if src != order:
        for i in range(n):
            order[i] = src[i]


def _argsort_rows(const floating[:, ::1] x, int[:, ::1] order, int[:, ::1] scratch,
                  bint descending):
    """order (OUT, R x n) of x (IN); scratch (R x n) is work space."""
    cdef Py_ssize_t r, n = x.shape[1]
    cdef int threads = _threads(x.shape[0] * n)
    for r in prange(x.shape[0], schedule="static", nogil=True, num_threads=threads):
        _sort_row(&x[r, 0], &order[r, 0], &scratch[r, 0], n, descending)


def _take_along_rows(const floating[:, ::1] x, const int[:, ::1] index, floating[:, ::1] y):
    cdef Py_ssize_t r, j
    cdef int threads = _threads(y.shape[0] * y.shape[1])
    for r in prange(y.shape[0], schedule="static", nogil=True, num_threads=threads):
        for j in range(y.shape[1]):
            y[r, j] = x[r, index[r, j]]


def _put_along_rows(const floating[:, ::1] src, const int[:, ::1] index, floating[:, ::1] y):
    cdef Py_ssize_t r, j
    cdef int threads = _threads(y.shape[0] * y.shape[1])
    for r in prange(y.shape[0], schedule="static", nogil=True, num_threads=threads):
        for j in range(y.shape[1]):
            y[r, j] = 0
        for j in range(src.shape[1]):
            y[r, index[r, j]] = src[r, j]


def argsort_rows(x, descending=False, k=None):
    """int32 (R, k): each row's first k positions (all n by default) in stable sorted order
    (NaN last)."""
    x, descending, k = operands.argsort_rows(HOST, x, descending, k)
    order = np.empty(x.shape, np.int32)
    if x.size:
        _argsort_rows(x, order, np.empty(x.shape, np.int32), descending)
    return order if k == x.shape[1] else np.ascontiguousarray(order[:, :k])


def take_along_rows(x, index):
    """(R, k): y[r, j] = x[r, index[r, j]]."""
    x, index = operands.take_along_rows(HOST, x, index)
    y = np.empty(index.shape, x.dtype)
    if y.size:
        _take_along_rows(x, index, y)
    return y


def put_along_rows(src, index, n):
    """(R, n) zeros with y[r, index[r, j]] = src[r, j] (a row's positions distinct)."""
    src, index, n = operands.put_along_rows(HOST, src, index, n)
    y = np.empty((src.shape[0], n), src.dtype)
    if y.size:
        _put_along_rows(src, index, y)
    return y
