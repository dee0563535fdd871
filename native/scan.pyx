"""Scan kernels: keras.ops' cumsum/cumprod along one axis, forward and backward.

Legend: the input is read as (O, N, I): O the axes before the scanned one, N its length,
I the axes after it. A line is the N values at one (o, i), I apart in memory.

Design:
- scan_forward: each line folds its N values in order (or from the end for ``reverse``, the
  cumsum's backward), in the element type as NumPy's cumsum; prange over the O * I lines,
  so the result does not depend on the thread count.
- cumprod_backward: exact where x has zeros. With z a line's first zero (N if none),
  dx[k] = (sum_{i >= k} dy[i] y[i]) / x[k] for k < z (one reversed pass),
  dx[z] = sum_{i >= z} dy[i] prod_{j <= i, j != z} x[j] (one forward pass from z, the
  product restarting at y[z - 1]), dx[k] = 0 after z. prange over the lines.
Operands arrive checked (operands.scan): the kernels trust them.
"""
import numpy as np

from cython.parallel cimport prange
from _openmp cimport omp_get_max_threads

from pynn.backend.operands import scan as operands
from pynn.backend.operands.common import HOST

ctypedef fused floating:
    float
    double


cdef enum:
    PARALLEL_MIN = 32768  # below this many elements the calling thread does it alone


cdef inline int _threads(Py_ssize_t work) noexcept nogil:
    return omp_get_max_threads() if work >= PARALLEL_MIN else 1


cdef void _scan_line(const floating* x, floating* y, Py_ssize_t n, Py_ssize_t step,
                     int code, bint reverse) noexcept nogil:
    cdef Py_ssize_t k, at
    cdef floating acc = 0 if code == 0 else 1
    for k in range(n):
        at = (n - 1 - k if reverse else k) * step
        if code == 0:
            acc = acc + x[at]
        else:
            acc = acc * x[at]
        y[at] = acc


cdef void _cumprod_backward_line(const floating* x, const floating* dy, floating* dx,
                                 Py_ssize_t n, Py_ssize_t step) noexcept nogil:
    cdef Py_ssize_t k, z = n
    cdef floating prod = 1, acc = 0
    for k in range(n):
        if x[k * step] == 0:
            z = k
            break
    for k in range(z):
        prod = prod * x[k * step]
        dx[k * step] = prod  # y[k], kept for the reversed pass
    for k in range(z - 1, -1, -1):
        acc = acc + dy[k * step] * dx[k * step]
        dx[k * step] = acc / x[k * step]
    if z < n:
        # the terms from the first zero on, that zero taken as 1 (prod is y[z - 1] here)
        acc = dy[z * step] * prod
        for k in range(z + 1, n):
            prod = prod * x[k * step]
            acc = acc + dy[k * step] * prod
            dx[k * step] = 0
        dx[z * step] = acc


def _scan_forward(const floating[::1] x, floating[::1] y, Py_ssize_t O, Py_ssize_t N,
                  Py_ssize_t I, int code, bint reverse):
    """y (OUT) of x (IN), both (O, N, I) flat."""
    cdef Py_ssize_t line
    cdef int threads = _threads(O * N * I)
    for line in prange(O * I, schedule="static", nogil=True, num_threads=threads):
        _scan_line(&x[(line // I) * N * I + line % I], &y[(line // I) * N * I + line % I],
                   N, I, code, reverse)


def _cumprod_backward(const floating[::1] x, const floating[::1] dy, floating[::1] dx,
                      Py_ssize_t O, Py_ssize_t N, Py_ssize_t I):
    """dx (OUT) of x, dy (IN), all (O, N, I) flat."""
    cdef Py_ssize_t line, at
    cdef int threads = _threads(O * N * I)
    for line in prange(O * I, schedule="static", nogil=True, num_threads=threads):
        at = (line // I) * N * I + line % I
        _cumprod_backward_line(&x[at], &dy[at], &dx[at], N, I)


def scan_forward(x, axis, op, reverse=False):
    """y = cumulative op ('sum' or 'prod') of x along ``axis``, from the end if ``reverse``."""
    x, (O, N, I), code, reverse = operands.scan_forward(HOST, x, axis, op, reverse)
    y = np.empty_like(x)
    if x.size:
        _scan_forward(x.reshape(-1), y.reshape(-1), O, N, I, code, reverse)
    return y


def cumprod_backward(x, dy, axis):
    """dx of y = cumprod(x, axis), exact where x has zeros."""
    x, dy, (O, N, I) = operands.cumprod_backward(HOST, x, dy, axis)
    dx = np.empty_like(x)
    if x.size:
        _cumprod_backward(x.reshape(-1), dy.reshape(-1), dx.reshape(-1), O, N, I)
    return dx
