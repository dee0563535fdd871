"""Elementwise kernels of pynn.ops (issue 13): unary functions, broadcasting binary ones and
reductions over axes, the CPU twins of opencl/elementwise.cl.

Legend: the op codes are the indices of api.ELEMENTWISE_UNARY / ELEMENTWISE_BINARY /
REDUCTIONS.

Design:
- One ``cdef inline ... nogil`` function per element maps a code to its formula (libc's
  double-precision math; float32 rounds once at the store).
- unary: prange over the elements of the contiguous input.
- binary: the output is walked row by row (every axis but the last, as native/shape.pyx's
  transpose); a row's offsets into a and b come from its multi-index and their broadcast
  strides (0 along a broadcast axis, operands.elementwise.walk). prange over output rows.
- reduce_axes: the reduced axes are moved last (NumPy's transpose and a contiguous copy, no
  Python loop), then each output element folds its contiguous run in order: prange over
  outputs, so the result does not depend on the thread count.
"""
import numpy as np

from cython.parallel cimport prange
from libc.math cimport (
    acos, acosh, asin, asinh, atan, atan2, atanh, ceil, cos, cosh, exp, expm1, fabs, floor,
    log, log1p, pow, rint, sin, sinh, sqrt, tan, tanh,
)

from pynn.backend.operands import elementwise as operands
from pynn.backend.operands.common import HOST

ctypedef fused floating:
    float
    double

cdef enum:
    PARALLEL_MIN = 32768  # below this many elements the calling thread does it alone
    MAX_DIMS = 6          # operands.elementwise.MAX_DIMS


cdef inline double _unary(double v, int code) noexcept nogil:
    if code == 0:
        return -v
    if code == 1:
        return fabs(v)
    if code == 2:
        return (v > 0) - (v < 0)
    if code == 3:
        return exp(v)
    if code == 4:
        return expm1(v)
    if code == 5:
        return log(v)
    if code == 6:
        return log1p(v)
    if code == 7:
        return sqrt(v)
    if code == 8:
        return v * v
    if code == 9:
        return 1.0 / v
    if code == 10:
        return sin(v)
    if code == 11:
        return cos(v)
    if code == 12:
        return tan(v)
    if code == 13:
        return asin(v)
    if code == 14:
        return acos(v)
    if code == 15:
        return atan(v)
    if code == 16:
        return sinh(v)
    if code == 17:
        return cosh(v)
    if code == 18:
        return tanh(v)
    if code == 19:
        return asinh(v)
    if code == 20:
        return acosh(v)
    if code == 21:
        return atanh(v)
    if code == 22:
        return floor(v)
    if code == 23:
        return ceil(v)
    return rint(v)  # round: half to even, as NumPy


cdef inline double _binary(double a, double b, int code) noexcept nogil:
    if code == 0:
        return a + b
    if code == 1:
        return a - b
    if code == 2:
        return a * b
    if code == 3:
        return a / b
    if code == 4:
        return a if a >= b or a != a else b  # NaN propagates, as np.maximum
    if code == 5:
        return a if a <= b or a != a else b
    if code == 6:
        return pow(a, b)
    if code == 7:
        return atan2(a, b)
    if code == 8:
        return a == b
    if code == 9:
        return a > b
    if code == 10:
        return a >= b
    if code == 11:
        return a < b
    return a <= b


cdef struct Walk:
    Py_ssize_t shape[MAX_DIMS]  # the output's shape, padded in front with 1s
    Py_ssize_t sa[MAX_DIMS]     # a's stride along each output axis (0: broadcast)
    Py_ssize_t sb[MAX_DIMS]


def _unary_kernel(const floating[::1] x, floating[::1] y, int code):
    cdef Py_ssize_t i, n = x.shape[0]
    for i in prange(n, schedule="static", nogil=True, use_threads_if=n >= PARALLEL_MIN):
        y[i] = <floating>_unary(x[i], code)


def _binary_kernel(const floating[::1] a, const floating[::1] b, floating[::1] y, Walk g,
                   int code):
    cdef Py_ssize_t rows = 1, k, r, i, rest, oa, ob, total = y.shape[0]
    cdef Py_ssize_t length = g.shape[MAX_DIMS - 1]
    cdef Py_ssize_t la = g.sa[MAX_DIMS - 1], lb = g.sb[MAX_DIMS - 1]
    for k in range(MAX_DIMS - 1):
        rows *= g.shape[k]
    for r in prange(rows, schedule="static", nogil=True, use_threads_if=total >= PARALLEL_MIN):
        rest = r
        oa = 0
        ob = 0
        for k in range(MAX_DIMS - 2, -1, -1):
            oa = oa + (rest % g.shape[k]) * g.sa[k]
            ob = ob + (rest % g.shape[k]) * g.sb[k]
            rest = rest // g.shape[k]
        for i in range(length):
            y[r * length + i] = <floating>_binary(a[oa + i * la], b[ob + i * lb], code)


def _reduce_kernel(const floating[::1] x, floating[::1] y, Py_ssize_t inner, int code):
    cdef Py_ssize_t o, i, outer = y.shape[0]
    cdef double acc, v
    for o in prange(outer, schedule="static", nogil=True,
                    use_threads_if=outer * inner >= PARALLEL_MIN):
        if code == 0:
            acc = 0.0
        elif code == 3:
            acc = 1.0
        else:
            acc = x[o * inner]
        for i in range(inner):
            v = x[o * inner + i]
            if code == 0:
                acc = acc + v
            elif code == 1:
                if v > acc or v != v:
                    acc = v
            elif code == 2:
                if v < acc or v != v:
                    acc = v
            else:
                acc = acc * v
        y[o] = <floating>acc


def elementwise_unary(x, op):
    """y = op(x) elementwise."""
    x, code = operands.elementwise_unary(HOST, x, op)
    y = np.empty_like(x)
    if x.size:
        _unary_kernel(x.reshape(-1), y.reshape(-1), code)
    return y


def elementwise_binary(a, b, op):
    """y = op(a, b), broadcasting as NumPy."""
    cdef Walk g
    cdef int k
    a, b, code, shape = operands.elementwise_binary(HOST, a, b, op)
    y = np.empty(shape, dtype=a.dtype)
    if y.size:
        dims, sa = operands.walk(a.shape, shape)
        _, sb = operands.walk(b.shape, shape)
        for k in range(MAX_DIMS):
            g.shape[k], g.sa[k], g.sb[k] = dims[k], sa[k], sb[k]
        _binary_kernel(a.reshape(-1), b.reshape(-1), y.reshape(-1), g, code)
    return y


def reduce_axes(x, axes, op, keepdims=False):
    """op over ``axes`` (None: every axis)."""
    x, axes, code, shape = operands.reduce_axes(HOST, x, axes, op, keepdims)
    kept = [k for k in range(x.ndim) if k not in axes]
    moved = np.ascontiguousarray(np.transpose(x, kept + list(axes)))
    inner = 1
    for k in axes:
        inner *= x.shape[k]
    y = np.empty(shape, dtype=x.dtype)
    if y.size:
        _reduce_kernel(moved.reshape(-1), y.reshape(-1), inner, code)
    return y
