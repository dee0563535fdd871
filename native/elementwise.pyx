"""Elementwise kernels of pynn.ops (issue 13): unary functions, broadcasting binary ones and
reductions over axes, the CPU twins of opencl/elementwise.cl.

Legend: the op codes are the indices of api.ELEMENTWISE_UNARY / ELEMENTWISE_BINARY /
REDUCTIONS.

Design:
- One ``cdef inline ... nogil`` function per element maps a code to its formula (libc's
  double-precision math; float32 rounds once at the store).
- unary: blocks of the contiguous input's elements on pynn's worker team.
- binary: the output is walked row by row (every axis but the last, as native/shape.pyx's
  transpose); a row's offsets into a and b come from its multi-index and their broadcast
  strides (0 along a broadcast axis, operands.elementwise.walk); output rows on the team.
- reduce_axes: the reduced axes are moved last (NumPy's transpose and a contiguous copy, no
  Python loop), then each output element folds its contiguous run in order (outputs on the
  team), so the result does not depend on the thread count.
"""
import numpy as np

from libc.math cimport (
    INFINITY, NAN, acos, acosh, asin, asinh, atan, atan2, atanh, ceil, cos, cosh, erf, erfc,
    exp, expm1, fabs, floor, log, log1p, pow, rint, sin, sinh, sqrt, tan, tanh,
)

from libc.stdint cimport int32_t, int64_t, uint64_t

from _openmp cimport omp_get_max_threads

from pynn.backend.operands import elementwise as operands
from pynn.backend.operands.common import HOST

include "_team.pxi"

ctypedef fused floating:
    float
    double

# -- opsm: the integer family's dtypes (bitwise ops, shifts, gcd/lcm)
ctypedef fused integer:
    int32_t
    int64_t

cdef enum:
    PARALLEL_MIN = 32768  # below this many elements the calling thread does it alone
    MAX_DIMS = 6          # operands.elementwise.MAX_DIMS
    NEXTAFTER = 13        # api.ELEMENTWISE_BINARY's code of nextafter (opsm)

cdef extern from "<math.h>" nogil:
    double nextafter(double, double)
    float nextafterf(float, float)


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
    if code == 24:
        return rint(v)  # round: half to even, as NumPy
    if code == 25:
        return erf(v)
    if code == 26:
        return erfc(v)
    if code == 27:
        return _erfinv(v)
    if code == 28:
        return _bessel_i(v, 0)
    return _bessel_i(v, 1)  # i1: i0's derivative


# Beyond this |x| the asymptotic series of I_nu is used: its terms fall below double's
# rounding within ASYMPTOTIC_TERMS, while the power series would need ~|x| terms.
DEF BESSEL_ASYMPTOTIC_FROM = 50.0
DEF ASYMPTOTIC_TERMS = 16


cdef inline double _bessel_i(double v, int order) noexcept nogil:
    """The modified Bessel function I_0 or I_1 (libm has neither): the power series
    sum (x/2)^(2k+nu) / (k! (k+nu)!), all of whose terms are positive (no cancellation), for
    |x| <= 50; e^|x| / sqrt(2 pi |x|) times the asymptotic series beyond. I_0 is even, I_1
    odd."""
    cdef double x = fabs(v), total, term, quarter, nu4
    cdef int k
    if v != v:
        return v
    if x <= BESSEL_ASYMPTOTIC_FROM:
        term = 1.0 if order == 0 else 0.5 * x
        total = term
        quarter = 0.25 * x * x
        k = 1
        while term > total * 1e-17:
            term = term * quarter / (k * (k + order))
            total = total + term
            k = k + 1
    else:
        nu4 = 4.0 * order * order
        term = 1.0
        total = 1.0
        for k in range(1, ASYMPTOTIC_TERMS + 1):
            term = term * ((2 * k - 1) * (2 * k - 1) - nu4) / (8.0 * k * x)
            total = total + term
        total = total * exp(x) / sqrt(2.0 * 3.141592653589793 * x)
    return -total if order == 1 and v < 0 else total


cdef inline double _erfinv(double v) noexcept nogil:
    """erf's inverse: Giles' single-precision polynomial (relative error below 4e-7) as a
    start, then two Halley steps on erf(x) - v, which triple the correct digits each, so the
    double result is good to rounding. libm has no erfinv."""
    cdef double w, p, x, u
    cdef int step
    if v != v or v < -1.0 or v > 1.0:
        return NAN
    if v == 1.0 or v == -1.0:
        return v * INFINITY
    w = -log((1.0 - v) * (1.0 + v))
    if w < 5.0:
        w = w - 2.5
        p = 2.81022636e-08
        p = 3.43273939e-07 + p * w
        p = -3.5233877e-06 + p * w
        p = -4.39150654e-06 + p * w
        p = 0.00021858087 + p * w
        p = -0.00125372503 + p * w
        p = -0.00417768164 + p * w
        p = 0.246640727 + p * w
        p = 1.50140941 + p * w
    else:
        w = sqrt(w) - 3.0
        p = -0.000200214257
        p = 0.000100950558 + p * w
        p = 0.00134934322 + p * w
        p = -0.00367342844 + p * w
        p = 0.00573950773 + p * w
        p = -0.0076224613 + p * w
        p = 0.00943887047 + p * w
        p = 1.00167406 + p * w
        p = 2.83297682 + p * w
    x = p * v
    for step in range(2):
        # f = erf(x) - v, f' = 2/sqrt(pi) exp(-x^2), f'' = -2 x f': Halley's x -= u / (1 + x u)
        u = (erf(x) - v) / (1.1283791670955126 * exp(-x * x))
        x = x - u / (1.0 + x * u)
    return x


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
    if code == 12:
        return a <= b
    return nextafter(a, b)  # float32's step is taken in _binary_rows


cdef struct Walk:
    Py_ssize_t shape[MAX_DIMS]  # the output's shape, padded in front with 1s
    Py_ssize_t sa[MAX_DIMS]     # a's stride along each output axis (0: broadcast)
    Py_ssize_t sb[MAX_DIMS]


ctypedef struct _ElementwiseJob:
    bint is_double
    int code
    const void* a
    const void* b
    void* y
    Walk* walk
    Py_ssize_t n, inner, length, la, lb


cdef inline int _threads(Py_ssize_t work) noexcept nogil:
    return omp_get_max_threads() if work >= PARALLEL_MIN else 1


cdef inline void _unary_range(const _ElementwiseJob* j, const floating* x, long begin,
                              long end) noexcept nogil:
    """Elements of blocks [begin, end) of PARALLEL_MIN elements."""
    cdef floating* y = <floating*>j.y
    cdef Py_ssize_t i, i1 = end * <Py_ssize_t>PARALLEL_MIN
    if i1 > j.n:
        i1 = j.n
    for i in range(begin * <Py_ssize_t>PARALLEL_MIN, i1):
        y[i] = <floating>_unary(x[i], j.code)


cdef void _unary_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _ElementwiseJob* j = <_ElementwiseJob*>ctx
    if j.is_double:
        _unary_range(j, <const double*>j.a, begin, end)
    else:
        _unary_range(j, <const float*>j.a, begin, end)


def _unary_kernel(const floating[::1] x, floating[::1] y, int code):
    """Blocks of elements on pynn's worker team; each element alone."""
    cdef _ElementwiseJob job
    cdef Py_ssize_t n = x.shape[0]
    cdef long blocks = (n + PARALLEL_MIN - 1) // PARALLEL_MIN
    cdef int threads = _threads(n)
    job.is_double, job.code, job.a, job.y, job.n = floating is double, code, &x[0], &y[0], n
    with nogil:
        pynn_team_for(blocks, 1, threads, _unary_job, &job)


cdef inline void _binary_rows(const _ElementwiseJob* j, const floating* a, long begin,
                              long end) noexcept nogil:
    """Output rows [begin, end): each row's offsets into a and b from its multi-index."""
    cdef const floating* b = <const floating*>j.b
    cdef floating* y = <floating*>j.y
    cdef const Walk* g = j.walk
    cdef Py_ssize_t k, i, rest, oa, ob, length = j.length, la = j.la, lb = j.lb
    cdef long r
    for r in range(begin, end):
        rest = r
        oa = 0
        ob = 0
        for k in range(MAX_DIMS - 2, -1, -1):
            oa = oa + (rest % g.shape[k]) * g.sa[k]
            ob = ob + (rest % g.shape[k]) * g.sb[k]
            rest = rest // g.shape[k]
        if floating is float:
            if j.code == NEXTAFTER:  # float32's own next value, not double's rounded back
                for i in range(length):
                    y[r * length + i] = nextafterf(a[oa + i * la], b[ob + i * lb])
                continue
        for i in range(length):
            y[r * length + i] = <floating>_binary(a[oa + i * la], b[ob + i * lb], j.code)


cdef void _binary_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _ElementwiseJob* j = <_ElementwiseJob*>ctx
    if j.is_double:
        _binary_rows(j, <const double*>j.a, begin, end)
    else:
        _binary_rows(j, <const float*>j.a, begin, end)


def _binary_kernel(const floating[::1] a, const floating[::1] b, floating[::1] y, Walk g,
                   int code):
    """Output rows on pynn's worker team."""
    cdef Py_ssize_t rows = 1, k
    cdef _ElementwiseJob job
    cdef int threads = _threads(y.shape[0])
    for k in range(MAX_DIMS - 1):
        rows *= g.shape[k]
    job.is_double, job.code, job.a, job.b, job.y, job.walk = floating is double, code, &a[0], \
        &b[0], &y[0], &g
    job.length, job.la, job.lb = g.shape[MAX_DIMS - 1], g.sa[MAX_DIMS - 1], g.sb[MAX_DIMS - 1]
    with nogil:
        pynn_team_for(rows, team_grain(rows, threads), threads, _binary_job, &job)


cdef inline void _reduce_outputs(const _ElementwiseJob* j, const floating* x, long begin,
                                 long end) noexcept nogil:
    """Outputs [begin, end): each folds its contiguous run in order, in double."""
    cdef floating* y = <floating*>j.y
    cdef Py_ssize_t i, inner = j.inner
    cdef int code = j.code
    cdef double acc, v
    cdef long o
    for o in range(begin, end):
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


cdef void _reduce_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _ElementwiseJob* j = <_ElementwiseJob*>ctx
    if j.is_double:
        _reduce_outputs(j, <const double*>j.a, begin, end)
    else:
        _reduce_outputs(j, <const float*>j.a, begin, end)


def _reduce_kernel(const floating[::1] x, floating[::1] y, Py_ssize_t inner, int code):
    """Outputs on pynn's worker team."""
    cdef Py_ssize_t outer = y.shape[0]
    cdef _ElementwiseJob job
    cdef int threads = _threads(outer * inner)
    job.is_double, job.code, job.a, job.y, job.inner = floating is double, code, \
        <const void*>(&x[0] if x.shape[0] else NULL), &y[0], inner
    with nogil:
        pynn_team_for(outer, team_grain(outer, threads), threads, _reduce_job, &job)


# -- opsm: integer ops (api.INTEGER_UNARY / INTEGER_BINARY): NumPy's results for int32 and
# int64, computed in 64-bit unsigned arithmetic where C's signed arithmetic would be undefined
# (shifts past the width, |INT_MIN|), then narrowed to the operands' dtype.
cdef inline int64_t _gcd(int64_t a, int64_t b) noexcept nogil:
    cdef uint64_t x = <uint64_t>(-a if a < 0 else a), y = <uint64_t>(-b if b < 0 else b), t
    while y:
        t = x % y
        x = y
        y = t
    return <int64_t>x


cdef inline int64_t _integer_binary(int64_t a, int64_t b, int code, int bits) noexcept nogil:
    cdef int64_t g
    if code == 0:
        return a & b
    if code == 1:
        return a | b
    if code == 2:
        return a ^ b
    if code == 3:  # left_shift: 0 past the width or for a negative count (NumPy's)
        return 0 if b < 0 or b >= bits else <int64_t>(<uint64_t>a << b)
    if code == 4:  # right_shift: arithmetic; past the width the sign alone remains
        if b < 0 or b >= bits:
            return -1 if a < 0 else 0
        return a >> b
    if code == 5:
        return _gcd(a, b)
    g = _gcd(a, b)  # lcm: |a| / gcd * |b|, 0 when either is 0
    if g == 0:
        return 0
    return <int64_t>(<uint64_t>(-a if a < 0 else a) // <uint64_t>g * <uint64_t>(
        -b if b < 0 else b))


ctypedef struct _IntegerJob:
    int code, bits
    const void* a
    const void* b
    void* y
    Walk* walk
    Py_ssize_t n, length, la, lb


cdef inline void _integer_rows(const _IntegerJob* j, const integer* a, long begin,
                               long end) noexcept nogil:
    """Output rows [begin, end) of a broadcasting binary op (as _binary_rows)."""
    cdef const integer* b = <const integer*>j.b
    cdef integer* y = <integer*>j.y
    cdef const Walk* g = j.walk
    cdef Py_ssize_t k, i, rest, oa, ob, length = j.length, la = j.la, lb = j.lb
    cdef long r
    for r in range(begin, end):
        rest = r
        oa = 0
        ob = 0
        for k in range(MAX_DIMS - 2, -1, -1):
            oa = oa + (rest % g.shape[k]) * g.sa[k]
            ob = ob + (rest % g.shape[k]) * g.sb[k]
            rest = rest // g.shape[k]
        for i in range(length):
            y[r * length + i] = <integer>_integer_binary(a[oa + i * la], b[ob + i * lb],
                                                         j.code, j.bits)


cdef void _integer_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _IntegerJob* j = <_IntegerJob*>ctx
    if j.bits == 64:
        _integer_rows(j, <const int64_t*>j.a, begin, end)
    else:
        _integer_rows(j, <const int32_t*>j.a, begin, end)


def _integer_kernel(const integer[::1] a, const integer[::1] b, integer[::1] y, Walk g,
                    int code):
    """Output rows on pynn's worker team."""
    cdef Py_ssize_t rows = 1, k
    cdef _IntegerJob job
    cdef int threads = _threads(y.shape[0])
    for k in range(MAX_DIMS - 1):
        rows *= g.shape[k]
    job.code, job.bits, job.a, job.b, job.y, job.walk = code, 8 * sizeof(integer), &a[0], \
        &b[0], &y[0], &g
    job.length, job.la, job.lb = g.shape[MAX_DIMS - 1], g.sa[MAX_DIMS - 1], g.sb[MAX_DIMS - 1]
    with nogil:
        pynn_team_for(rows, team_grain(rows, threads), threads, _integer_job, &job)


def integer_binary(a, b, op):
    """y = op(a, b) on int32 or int64 operands of one dtype, broadcasting as NumPy."""
    cdef Walk g
    cdef int k
    a, b, code, shape = operands.integer_binary(HOST, a, b, op)
    y = np.empty(shape, dtype=a.dtype)
    if y.size:
        dims, sa = operands.walk(a.shape, shape)
        _, sb = operands.walk(b.shape, shape)
        for k in range(MAX_DIMS):
            g.shape[k], g.sa[k], g.sb[k] = dims[k], sa[k], sb[k]
        _integer_kernel(a.reshape(-1), b.reshape(-1), y.reshape(-1), g, code)
    return y


def integer_unary(x, op):
    """y = op(x) on int32 or int64: invert is x xor -1 (the binary kernel against a
    broadcast -1, one pass)."""
    x, code = operands.integer_unary(HOST, x, op)
    return integer_binary(x, np.full((), -1, x.dtype), "bitwise_xor")


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
