"""Linalg kernels: keras.ops' linear algebra on stacks of small dense matrices.

Legend: B the batch (every leading axis, flattened), m x n a matrix, n x n a square one, k
the columns of a right-hand side. Every matrix is row-major and C-contiguous.

Design:
- One matrix per work unit: prange over B, each matrix copied into a float64 scratch of
  its own (``work``, allocated by the caller), factorised there and written back in the
  operand's dtype, so float32 inputs get float64 accumulation and the result does not
  depend on the thread count.
- cholesky_forward: unblocked left-looking Cholesky (lower); ``info`` is the order of the
  first leading minor that is not positive-definite (0: none), as LAPACK's potrf.
- lu_factor_forward: right-looking LU with partial pivoting (LAPACK's getrf): pivots are
  0-based row swaps, row i swapped with pivots[i], applied in order; ``info`` the first zero
  pivot (1-based, 0: none).
- lu_solve_forward: the swaps, then the unit-lower and upper substitutions on all k columns
  at once (transpose: U^T, L^T, then the swaps in reverse).
- lu_slogdet_forward: sign and log|det| from U's diagonal and the swaps (a zero pivot gives
  sign 0 and -inf, as NumPy's slogdet).
- triangular_solve_forward: forward or backward substitution of op(A) X = B, reading only
  A's named triangle (op(A) = A or A^T; unit_diagonal takes A's diagonal as ones).
- qr_forward: Householder QR with LAPACK's reflectors (dlarfg: beta = -sign(alpha) ||x||,
  H = I - tau v v^T, v[0] = 1), so R's signs are LAPACK's (and torch's); Q accumulated
  backwards from the identity's first columns.
- eigh_forward: cyclic Jacobi rotations on the symmetric matrix taken from A's lower
  triangle (torch's UPLO='L'), until the off-diagonal mass is below double rounding;
  eigenvalues ascending, each eigenvector's largest component made positive.
- svd_forward: one-sided (Hestenes) Jacobi on the columns of the taller of A and A^T;
  singular values descending, each left vector's largest component positive; U completed
  to an orthonormal basis (full_matrices, or zero singular values) by Gram-Schmidt on the
  unit vectors.
Operands arrive checked (operands.linalg): the kernels trust them.
"""
import numpy as np

from cython.parallel cimport prange
from _openmp cimport omp_get_max_threads
from libc.math cimport sqrt, fabs, log, copysign, hypot, INFINITY

from pynn.backend.operands import linalg as operands
from pynn.backend.operands.common import HOST

ctypedef fused floating:
    float
    double


cdef enum:
    PARALLEL_MIN = 4096  # below this many flops' worth of matrices one thread does it all
    MAX_SWEEPS = 64  # Jacobi sweeps: quadratic convergence needs about 10 at n = 128

# eigh: an off-diagonal entry below this times its diagonal entries' geometric mean is zero
cdef double JACOBI_EPS = 2.220446049250313e-16
cdef double SVD_EPS = 2.220446049250313e-16  # svd: double's epsilon, times sqrt(m)


cdef inline int _threads(Py_ssize_t batch, Py_ssize_t work) noexcept nogil:
    return omp_get_max_threads() if batch > 1 and batch * work >= PARALLEL_MIN else 1


cdef void _load(const floating* src, double* dst, Py_ssize_t count) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(count):
        dst[i] = src[i]


cdef void _store(const double* src, floating* dst, Py_ssize_t count) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(count):
        dst[i] = <floating>src[i]


# -- Cholesky ---------------------------------------------------------------------------------
cdef int _cholesky(double* a, Py_ssize_t n) noexcept nogil:
    """a (n, n) -> its lower factor L in place, zeros above; the LAPACK info."""
    cdef Py_ssize_t i, j, p
    cdef double s, d
    for j in range(n):
        s = a[j * n + j]
        for p in range(j):
            s = s - a[j * n + p] * a[j * n + p]
        if not s > 0:  # NaN too
            return <int>(j + 1)
        d = sqrt(s)
        a[j * n + j] = d
        for i in range(j + 1, n):
            s = a[i * n + j]
            for p in range(j):
                s = s - a[i * n + p] * a[j * n + p]
            a[i * n + j] = s / d
    for i in range(n):
        for j in range(i + 1, n):
            a[i * n + j] = 0
    return 0


def _cholesky_forward(const floating[:, :, ::1] a, floating[:, :, ::1] l, int[::1] info,
                      double[:, ::1] work):
    """l (OUT), info (OUT) of a (IN)."""
    cdef Py_ssize_t b, B = a.shape[0], n = a.shape[1]
    for b in prange(B, schedule="static", nogil=True, num_threads=_threads(B, n * n * n)):
        _load(&a[b, 0, 0], &work[b, 0], n * n)
        info[b] = _cholesky(&work[b, 0], n)
        _store(&work[b, 0], &l[b, 0, 0], n * n)


def cholesky_forward(a):
    """-> (L, info): a's lower Cholesky factor, int32 info (B,) of the batch's matrices."""
    a, B, n = operands.cholesky_forward(HOST, a)
    l = np.empty_like(a)
    info = np.zeros(B, np.int32)
    _cholesky_forward(a.reshape(B, n, n), l.reshape(B, n, n), info, np.empty((B, n * n)))
    return l, info


# -- LU ---------------------------------------------------------------------------------------
cdef int _lu(double* a, int* piv, Py_ssize_t n) noexcept nogil:
    """a (n, n) -> L\\U in place (L unit lower), piv the 0-based swaps; the LAPACK info."""
    cdef Py_ssize_t i, j, p, best
    cdef double big, t, f
    cdef int info = 0
    for j in range(n):
        best = j
        big = fabs(a[j * n + j])
        for i in range(j + 1, n):
            if fabs(a[i * n + j]) > big:
                big = fabs(a[i * n + j])
                best = i
        piv[j] = <int>best
        if best != j:
            for p in range(n):
                t = a[j * n + p]
                a[j * n + p] = a[best * n + p]
                a[best * n + p] = t
        if a[j * n + j] == 0:
            if info == 0:
                info = <int>(j + 1)
            continue
        for i in range(j + 1, n):
            f = a[i * n + j] / a[j * n + j]
            a[i * n + j] = f
            for p in range(j + 1, n):
                a[i * n + p] = a[i * n + p] - f * a[j * n + p]
    return info


def _lu_factor_forward(const floating[:, :, ::1] a, floating[:, :, ::1] lu, int[:, ::1] piv,
                       int[::1] info, double[:, ::1] work):
    """lu, piv, info (OUT) of a (IN)."""
    cdef Py_ssize_t b, B = a.shape[0], n = a.shape[1]
    for b in prange(B, schedule="static", nogil=True, num_threads=_threads(B, n * n * n)):
        _load(&a[b, 0, 0], &work[b, 0], n * n)
        info[b] = _lu(&work[b, 0], &piv[b, 0], n)
        _store(&work[b, 0], &lu[b, 0, 0], n * n)


def lu_factor_forward(a):
    """-> (LU, pivots, info): LAPACK's getrf with 0-based int32 pivots (..., n) and int32
    info (B,), the first zero pivot (1-based) of each matrix."""
    a, B, n = operands.lu_factor_forward(HOST, a)
    lu = np.empty_like(a)
    piv = np.empty(operands.batch_shape(a) + (n,), np.int32)
    info = np.zeros(B, np.int32)
    _lu_factor_forward(a.reshape(B, n, n), lu.reshape(B, n, n), piv.reshape(B, n), info,
                       np.empty((B, n * n)))
    return lu, piv, info


cdef void _lu_solve(const double* lu, const int* piv, double* x, Py_ssize_t n, Py_ssize_t k,
                    bint transpose) noexcept nogil:
    """x (n, k) holds b on entry, the solution of A x = b (A^T x = b) on return."""
    cdef Py_ssize_t i, j, c, r
    cdef double t, f
    if not transpose:
        for i in range(n):
            r = piv[i]
            if r != i:
                for c in range(k):
                    t = x[i * k + c]
                    x[i * k + c] = x[r * k + c]
                    x[r * k + c] = t
        for i in range(n):
            for j in range(i):
                f = lu[i * n + j]
                for c in range(k):
                    x[i * k + c] = x[i * k + c] - f * x[j * k + c]
        for i in range(n - 1, -1, -1):
            for j in range(i + 1, n):
                f = lu[i * n + j]
                for c in range(k):
                    x[i * k + c] = x[i * k + c] - f * x[j * k + c]
            f = lu[i * n + i]
            for c in range(k):
                x[i * k + c] = x[i * k + c] / f
    else:
        for i in range(n):  # U^T y = b: forward, U^T[i, j] = U[j, i]
            for j in range(i):
                f = lu[j * n + i]
                for c in range(k):
                    x[i * k + c] = x[i * k + c] - f * x[j * k + c]
            f = lu[i * n + i]
            for c in range(k):
                x[i * k + c] = x[i * k + c] / f
        for i in range(n - 1, -1, -1):  # L^T z = y: backward, unit diagonal
            for j in range(i + 1, n):
                f = lu[j * n + i]
                for c in range(k):
                    x[i * k + c] = x[i * k + c] - f * x[j * k + c]
        for i in range(n - 1, -1, -1):
            r = piv[i]
            if r != i:
                for c in range(k):
                    t = x[i * k + c]
                    x[i * k + c] = x[r * k + c]
                    x[r * k + c] = t


def _lu_solve_forward(const floating[:, :, ::1] lu, const int[:, ::1] piv,
                      const floating[:, :, ::1] b, floating[:, :, ::1] x, bint transpose,
                      double[:, ::1] work):
    """x (OUT) of lu, piv, b (IN); work holds lu then x per matrix."""
    cdef Py_ssize_t m, B = lu.shape[0], n = lu.shape[1], k = b.shape[2]
    for m in prange(B, schedule="static", nogil=True, num_threads=_threads(B, n * n * (n + k))):
        _load(&lu[m, 0, 0], &work[m, 0], n * n)
        _load(&b[m, 0, 0], &work[m, n * n], n * k)
        _lu_solve(&work[m, 0], &piv[m, 0], &work[m, n * n], n, k, transpose)
        _store(&work[m, n * n], &x[m, 0, 0], n * k)


def lu_solve_forward(lu, pivots, b, transpose=False):
    """x of A x = b (A^T x = b if ``transpose``) from lu_factor_forward's (LU, pivots)."""
    lu, pivots, b, B, n, k, transpose = operands.lu_solve_forward(HOST, lu, pivots, b,
                                                                  transpose)
    x = np.empty_like(b)
    _lu_solve_forward(lu.reshape(B, n, n), pivots.reshape(B, n), b.reshape(B, n, k),
                      x.reshape(B, n, k), transpose, np.empty((B, n * (n + k))))
    return x


def _lu_slogdet_forward(const floating[:, :, ::1] lu, const int[:, ::1] piv,
                        floating[::1] sign, floating[::1] logabs):
    """sign, logabs (OUT) of lu, piv (IN)."""
    cdef Py_ssize_t m, i, B = lu.shape[0], n = lu.shape[1]
    cdef double s, total, d
    for m in prange(B, schedule="static", nogil=True, num_threads=_threads(B, n)):
        s = 1
        total = 0
        for i in range(n):
            d = lu[m, i, i]
            if piv[m, i] != i:
                s = -s
            if d < 0:
                s = -s
            if d == 0:
                s = 0
                total = -INFINITY
            elif s != 0:
                total = total + log(fabs(d))
        sign[m] = <floating>s
        logabs[m] = <floating>total


def lu_slogdet_forward(lu, pivots):
    """-> (sign, log|det|) of the factored matrices, shaped as their batch."""
    lu, pivots, B, n = operands.lu_slogdet_forward(HOST, lu, pivots)
    sign = np.empty(B, lu.dtype)
    logabs = np.empty(B, lu.dtype)
    _lu_slogdet_forward(lu.reshape(B, n, n), pivots.reshape(B, n), sign, logabs)
    lead = operands.batch_shape(lu)
    return sign.reshape(lead), logabs.reshape(lead)


# -- triangular solves --------------------------------------------------------------------
cdef inline double _at(const double* a, Py_ssize_t n, Py_ssize_t i, Py_ssize_t j,
                       bint transpose) noexcept nogil:
    return a[j * n + i] if transpose else a[i * n + j]


cdef void _triangular_solve(const double* a, double* x, Py_ssize_t n, Py_ssize_t k,
                            bint lower, bint transpose, bint unit) noexcept nogil:
    """x (n, k): b on entry, op(A)^-1 b on return; op(A) is lower when lower != transpose."""
    cdef Py_ssize_t s, i, j, c
    cdef double f
    cdef bint forward = lower != transpose
    for s in range(n):
        i = s if forward else n - 1 - s
        if forward:
            for j in range(i):
                f = _at(a, n, i, j, transpose)
                for c in range(k):
                    x[i * k + c] = x[i * k + c] - f * x[j * k + c]
        else:
            for j in range(i + 1, n):
                f = _at(a, n, i, j, transpose)
                for c in range(k):
                    x[i * k + c] = x[i * k + c] - f * x[j * k + c]
        if not unit:
            f = a[i * n + i]
            for c in range(k):
                x[i * k + c] = x[i * k + c] / f


def _triangular_solve_forward(const floating[:, :, ::1] a, const floating[:, :, ::1] b,
                              floating[:, :, ::1] x, bint lower, bint transpose, bint unit,
                              double[:, ::1] work):
    """x (OUT) of a, b (IN)."""
    cdef Py_ssize_t m, B = a.shape[0], n = a.shape[1], k = b.shape[2]
    for m in prange(B, schedule="static", nogil=True, num_threads=_threads(B, n * n * k)):
        _load(&a[m, 0, 0], &work[m, 0], n * n)
        _load(&b[m, 0, 0], &work[m, n * n], n * k)
        _triangular_solve(&work[m, 0], &work[m, n * n], n, k, lower, transpose, unit)
        _store(&work[m, n * n], &x[m, 0, 0], n * k)


def triangular_solve_forward(a, b, lower, transpose=False, unit_diagonal=False):
    """x of op(A) x = b, op(A) = A or A^T, A's ``lower`` (else upper) triangle read."""
    a, b, B, n, k, lower, transpose, unit = operands.triangular_solve_forward(
        HOST, a, b, lower, transpose, unit_diagonal)
    x = np.empty_like(b)
    _triangular_solve_forward(a.reshape(B, n, n), b.reshape(B, n, k), x.reshape(B, n, k),
                              lower, transpose, unit, np.empty((B, n * (n + k))))
    return x


# -- QR ---------------------------------------------------------------------------------------
cdef void _reflect_rows(const double* r, Py_ssize_t n, Py_ssize_t j, Py_ssize_t m,
                        double tau, double* x, Py_ssize_t stride, Py_ssize_t c0,
                        Py_ssize_t c1, double* w) noexcept nogil:
    """Apply H_j = I - tau v v^T (v = [1, r[j+1:, j]]) to rows j.. of x's columns c0..c1-1,
    row by row (w = v^T x first, then x -= tau v w^T), so every pass runs along a row."""
    cdef Py_ssize_t i, c
    cdef double vi
    for c in range(c0, c1):
        w[c] = x[j * stride + c]
    for i in range(j + 1, m):
        vi = r[i * n + j]
        for c in range(c0, c1):
            w[c] = w[c] + vi * x[i * stride + c]
    for c in range(c0, c1):
        w[c] = w[c] * tau
        x[j * stride + c] = x[j * stride + c] - w[c]
    for i in range(j + 1, m):
        vi = r[i * n + j]
        for c in range(c0, c1):
            x[i * stride + c] = x[i * stride + c] - vi * w[c]


cdef void _qr(double* r, double* q, double* tau, double* w, Py_ssize_t m, Py_ssize_t n,
              Py_ssize_t qcols) noexcept nogil:
    """r (m, n): A on entry, R above the diagonal and the reflectors' tails below on return;
    q (m, qcols) gets the first qcols columns of Q = H_0 ... H_{p-1}; w a row of scratch
    (max(n, qcols))."""
    cdef Py_ssize_t p = min(m, n), j, i, c
    cdef double alpha, xnorm, beta, scale
    for j in range(p):
        alpha = r[j * n + j]
        xnorm = 0
        for i in range(j + 1, m):
            xnorm = hypot(xnorm, r[i * n + j])
        if xnorm == 0:
            tau[j] = 0
            continue
        beta = -copysign(hypot(alpha, xnorm), alpha)
        tau[j] = (beta - alpha) / beta
        scale = 1 / (alpha - beta)
        for i in range(j + 1, m):
            r[i * n + j] = r[i * n + j] * scale
        r[j * n + j] = beta
        _reflect_rows(r, n, j, m, tau[j], r, n, j + 1, n, w)
    for i in range(m):
        for c in range(qcols):
            q[i * qcols + c] = 1 if i == c else 0
    for j in range(p - 1, -1, -1):
        if tau[j] != 0:
            _reflect_rows(r, n, j, m, tau[j], q, qcols, j, qcols, w)


def _qr_forward(const floating[:, :, ::1] a, floating[:, :, ::1] q, floating[:, :, ::1] r,
                double[:, ::1] work):
    """q (B, m, qcols), r (B, rrows, n) (OUT) of a (B, m, n) (IN)."""
    cdef Py_ssize_t b, i, j, B = a.shape[0], m = a.shape[1], n = a.shape[2]
    cdef Py_ssize_t qcols = q.shape[2], rrows = r.shape[1]
    cdef double* w
    for b in prange(B, schedule="static", nogil=True, num_threads=_threads(B, m * n * n)):
        w = &work[b, 0]
        _load(&a[b, 0, 0], w, m * n)
        _qr(w, &w[m * n], &w[m * n + m * qcols], &w[m * n + m * qcols + min(m, n)], m, n,
            qcols)
        _store(&w[m * n], &q[b, 0, 0], m * qcols)
        for i in range(rrows):
            for j in range(n):
                r[b, i, j] = <floating>(w[i * n + j] if j >= i else 0)


def qr_forward(a, complete=False):
    """-> (Q, R): reduced (Q (..., m, min(m, n)), R (..., min(m, n), n)) or complete
    (Q (..., m, m), R (..., m, n)), LAPACK's signs."""
    a, B, m, n, complete = operands.qr_forward(HOST, a, complete)
    p = min(m, n)
    qcols = m if complete else p
    lead = operands.batch_shape(a)
    q = np.empty(lead + (m, qcols), a.dtype)
    r = np.empty(lead + (qcols, n), a.dtype)
    _qr_forward(a.reshape(B, m, n), q.reshape(B, m, qcols), r.reshape(B, qcols, n),
                np.empty((B, m * n + m * qcols + p + max(n, qcols))))
    return q, r


# -- symmetric eigenproblem ---------------------------------------------------------------
cdef void _eigh(double* a, double* vt, double* w, Py_ssize_t n) noexcept nogil:
    """a (n, n): its lower triangle, mirrored, is diagonalised in place; vt (n, n) the
    eigenvectors as rows (contiguous under the rotations), w (n,) the eigenvalues.

    A rotation zeroes a[p, q] exactly (Numerical Recipes' jacobi); an entry negligible beside
    its two diagonal entries is zeroed without one; a sweep without rotations ends."""
    cdef Py_ssize_t i, j, p, q, sweep
    cdef double apq, theta, t, c, s, x, y
    cdef bint rotated
    for i in range(n):
        for j in range(n):
            vt[i * n + j] = 1 if i == j else 0
            if j > i:
                a[i * n + j] = a[j * n + i]
    for sweep in range(MAX_SWEEPS):
        rotated = False
        for p in range(n - 1):
            for q in range(p + 1, n):
                apq = a[p * n + q]
                if fabs(apq) <= JACOBI_EPS * sqrt(fabs(a[p * n + p]) * fabs(a[q * n + q])):
                    a[p * n + q] = 0
                    a[q * n + p] = 0
                    continue
                rotated = True
                theta = (a[q * n + q] - a[p * n + p]) / (2 * apq)
                t = copysign(1.0, theta) / (fabs(theta) + sqrt(theta * theta + 1))
                c = 1 / sqrt(t * t + 1)
                s = t * c
                # J^T A J touches rows and columns p, q only: the rows, mirrored into the
                # columns, and the two diagonal entries in closed form
                for i in range(n):
                    if i == p or i == q:
                        continue
                    x = a[p * n + i]
                    y = a[q * n + i]
                    a[p * n + i] = c * x - s * y
                    a[q * n + i] = s * x + c * y
                    a[i * n + p] = a[p * n + i]
                    a[i * n + q] = a[q * n + i]
                a[p * n + p] = a[p * n + p] - t * apq
                a[q * n + q] = a[q * n + q] + t * apq
                a[p * n + q] = 0
                a[q * n + p] = 0
                for i in range(n):  # V J, on V's rows
                    x = vt[p * n + i]
                    y = vt[q * n + i]
                    vt[p * n + i] = c * x - s * y
                    vt[q * n + i] = s * x + c * y
        if not rotated:
            break
    for i in range(n):
        w[i] = a[i * n + i]


cdef void _transpose(const double* src, double* dst, Py_ssize_t rows,
                     Py_ssize_t cols) noexcept nogil:
    """dst (cols, rows) = src (rows, cols)^T."""
    cdef Py_ssize_t i, j
    for i in range(rows):
        for j in range(cols):
            dst[j * rows + i] = src[i * cols + j]


cdef void _swap_columns(double* v, Py_ssize_t rows, Py_ssize_t stride, Py_ssize_t i,
                        Py_ssize_t j) noexcept nogil:
    cdef Py_ssize_t r
    cdef double t
    for r in range(rows):
        t = v[r * stride + i]
        v[r * stride + i] = v[r * stride + j]
        v[r * stride + j] = t


cdef void _sort_columns(double* w, double* v, Py_ssize_t rows, Py_ssize_t stride,
                        double* v2, Py_ssize_t rows2, Py_ssize_t stride2, Py_ssize_t cols,
                        bint descending) noexcept nogil:
    """Selection sort of w (cols,), the first cols columns of v (rows, stride) and of v2
    (rows2, stride2; NULL: none) moved alongside."""
    cdef Py_ssize_t i, j, best
    cdef double t
    for i in range(cols):
        best = i
        for j in range(i + 1, cols):
            if (w[j] > w[best]) if descending else (w[j] < w[best]):
                best = j
        if best != i:
            t = w[i]
            w[i] = w[best]
            w[best] = t
            _swap_columns(v, rows, stride, i, best)
            if v2 != NULL:
                _swap_columns(v2, rows2, stride2, i, best)


cdef double _sign_of_largest(const double* v, Py_ssize_t rows, Py_ssize_t stride,
                             Py_ssize_t col) noexcept nogil:
    """+1 or -1: the sign of the column's component of largest magnitude (the first such)."""
    cdef Py_ssize_t r
    cdef double big = 0, sign = 1
    for r in range(rows):
        if fabs(v[r * stride + col]) > big:
            big = fabs(v[r * stride + col])
            sign = copysign(1.0, v[r * stride + col])
    return sign


def _eigh_forward(const floating[:, :, ::1] a, floating[:, ::1] w, floating[:, :, ::1] v,
                  double[:, ::1] work):
    """w (B, n), v (B, n, n) (OUT) of a (IN)."""
    cdef Py_ssize_t b, i, j, B = a.shape[0], n = a.shape[1]
    cdef double* wk
    cdef double sign
    for b in prange(B, schedule="dynamic", nogil=True, num_threads=_threads(B, 8 * n * n * n)):
        wk = &work[b, 0]
        _load(&a[b, 0, 0], wk, n * n)
        _eigh(wk, &wk[n * n], &wk[2 * n * n], n)
        _transpose(&wk[n * n], wk, n, n)  # the eigenvectors as columns, over a's scratch
        _sort_columns(&wk[2 * n * n], wk, n, n, NULL, 0, 0, n, False)
        for j in range(n):
            w[b, j] = <floating>wk[2 * n * n + j]
            sign = _sign_of_largest(wk, n, n, j)
            for i in range(n):
                v[b, i, j] = <floating>(sign * wk[i * n + j])


def eigh_forward(a):
    """-> (w (..., n) ascending, v (..., n, n) eigenvectors as columns) of the symmetric
    matrices in a's lower triangle."""
    a, B, n = operands.eigh_forward(HOST, a)
    w = np.empty(operands.batch_shape(a) + (n,), a.dtype)
    v = np.empty_like(a)
    _eigh_forward(a.reshape(B, n, n), w.reshape(B, n), v.reshape(B, n, n),
                  np.empty((B, 2 * n * n + n)))
    return w, v


# -- SVD --------------------------------------------------------------------------------------
cdef void _svd_tall(double* gt, double* vt, double* s, Py_ssize_t m, Py_ssize_t n) noexcept nogil:
    """gt (n, m): the columns of a tall (m, n) matrix G as rows (contiguous for the column
    pairs' dot products and rotations). On return its rows are U's first n columns times s
    (not normalised), vt (n, n) the right vectors as rows, s (n,) the row norms. A pair is
    orthogonal enough at |gamma| <= eps sqrt(m) sqrt(alpha beta) (LAPACK's dgesvj)."""
    cdef Py_ssize_t i, j, p, q, sweep
    cdef double alpha, beta, gamma, zeta, t, c, sn, x, y
    cdef double tol = SVD_EPS * sqrt(<double>m)
    cdef bint rotated
    for i in range(n):
        for j in range(n):
            vt[i * n + j] = 1 if i == j else 0
    for sweep in range(MAX_SWEEPS):
        rotated = False
        for p in range(n - 1):
            for q in range(p + 1, n):
                alpha = 0
                beta = 0
                gamma = 0
                for i in range(m):
                    alpha = alpha + gt[p * m + i] * gt[p * m + i]
                    beta = beta + gt[q * m + i] * gt[q * m + i]
                    gamma = gamma + gt[p * m + i] * gt[q * m + i]
                if gamma == 0 or fabs(gamma) <= tol * sqrt(alpha * beta):
                    continue
                rotated = True
                zeta = (beta - alpha) / (2 * gamma)
                t = copysign(1.0, zeta) / (fabs(zeta) + sqrt(1 + zeta * zeta))
                c = 1 / sqrt(1 + t * t)
                sn = c * t
                for i in range(m):
                    x = gt[p * m + i]
                    y = gt[q * m + i]
                    gt[p * m + i] = c * x - sn * y
                    gt[q * m + i] = sn * x + c * y
                for i in range(n):
                    x = vt[p * n + i]
                    y = vt[q * n + i]
                    vt[p * n + i] = c * x - sn * y
                    vt[q * n + i] = sn * x + c * y
        if not rotated:
            break
    for j in range(n):
        alpha = 0
        for i in range(m):
            alpha = alpha + gt[j * m + i] * gt[j * m + i]
        s[j] = sqrt(alpha)


cdef void _complete_basis(double* u, Py_ssize_t m, Py_ssize_t cols, Py_ssize_t valid,
                          double* scratch) noexcept nogil:
    """u (m, cols): columns from ``valid`` on become unit vectors orthogonal to all before
    them (Gram-Schmidt, twice, on e_0, e_1, ... in turn)."""
    cdef Py_ssize_t j, e = 0, i, c, rep
    cdef double dot, norm
    for j in range(valid, cols):
        while e < m:
            for i in range(m):
                scratch[i] = 1 if i == e else 0
            e = e + 1
            for rep in range(2):
                for c in range(j):
                    dot = 0
                    for i in range(m):
                        dot = dot + u[i * cols + c] * scratch[i]
                    for i in range(m):
                        scratch[i] = scratch[i] - dot * u[i * cols + c]
            norm = 0
            for i in range(m):
                norm = norm + scratch[i] * scratch[i]
            norm = sqrt(norm)
            if norm > 0.5:
                for i in range(m):
                    u[i * cols + j] = scratch[i] / norm
                break


cdef void _svd(double* gt, double* u, double* s, double* v, double* scratch, Py_ssize_t m,
               Py_ssize_t n, Py_ssize_t ucols) noexcept nogil:
    """gt (n, m): the columns of a (m, n), m >= n, as rows, destroyed; u (m, ucols) left
    vectors, s (n,) descending, v (n, n) right vectors as columns; scratch m + n * n."""
    cdef Py_ssize_t i, j, valid = n
    cdef double* vt = &scratch[m]
    _svd_tall(gt, vt, s, m, n)
    _transpose(vt, v, n, n)
    for j in range(n):  # U S's columns, then sorted with v's
        for i in range(m):
            u[i * ucols + j] = gt[j * m + i]
    _sort_columns(s, u, m, ucols, v, n, n, n, True)
    for j in range(n):
        if s[j] == 0:
            valid = j
            break
    for j in range(ucols):
        for i in range(m):
            u[i * ucols + j] = u[i * ucols + j] / s[j] if j < valid else 0
    _complete_basis(u, m, ucols, valid, scratch)


def _svd_forward(const floating[:, :, ::1] a, floating[:, :, ::1] u, floating[:, ::1] s,
                 floating[:, :, ::1] vh, bint compute_uv, bint wide, Py_ssize_t ucols,
                 double[:, ::1] work):
    """u, s, vh (OUT) of a (IN). The kernel works on the tall one of A, A^T (``wide``: A^T);
    then A = U S V^T or A^T = U S V^T, so A's factors are (U, V^T) or (V, U^T)."""
    cdef Py_ssize_t b, i, j, B = a.shape[0], m = a.shape[1], n = a.shape[2]
    cdef Py_ssize_t rows = n if wide else m, cols = m if wide else n
    cdef double* w
    cdef double* uu
    cdef double* vv
    cdef double sign
    for b in prange(B, schedule="dynamic", nogil=True,
                    num_threads=_threads(B, 8 * rows * cols * cols)):
        w = &work[b, 0]
        uu = &w[rows * cols]
        vv = &uu[rows * ucols]
        for i in range(rows):  # the tall matrix's columns as rows
            for j in range(cols):
                w[j * rows + i] = a[b, j, i] if wide else a[b, i, j]
        _svd(w, uu, &vv[cols * cols], vv, &vv[cols * cols + cols], rows, cols, ucols)
        for j in range(cols):
            s[b, j] = <floating>vv[cols * cols + j]
        if not compute_uv:
            continue
        for j in range(cols):  # the sign convention: A's left vector's largest entry > 0
            sign = _sign_of_largest(vv, cols, cols, j) if wide else _sign_of_largest(
                uu, rows, ucols, j)
            for i in range(rows):
                uu[i * ucols + j] = sign * uu[i * ucols + j]
            for i in range(cols):
                vv[i * cols + j] = sign * vv[i * cols + j]
        if not wide:
            _store(uu, &u[b, 0, 0], rows * ucols)
            for i in range(cols):
                for j in range(cols):
                    vh[b, i, j] = <floating>vv[j * cols + i]
        else:
            for i in range(cols):
                for j in range(cols):
                    u[b, i, j] = <floating>vv[i * cols + j]
            for i in range(ucols):
                for j in range(rows):
                    vh[b, i, j] = <floating>uu[j * ucols + i]


def svd_forward(a, full_matrices=True, compute_uv=True):
    """-> (U, s, Vh) with s (..., min(m, n)) descending; U (..., m, m or min) and
    Vh (..., n or min, n) per ``full_matrices``, both None when not ``compute_uv``."""
    a, B, m, n, full, compute_uv = operands.svd_forward(HOST, a, full_matrices, compute_uv)
    wide = n > m
    rows, cols = max(m, n), min(m, n)
    ucols = rows if full and compute_uv else cols
    lead = operands.batch_shape(a)
    s = np.empty(lead + (cols,), a.dtype)
    u_shape = (m, m) if wide else (m, ucols)
    vh_shape = (ucols, n) if wide else (n, n)
    u = np.empty(lead + u_shape if compute_uv else (B, 1, 1), a.dtype)
    vh = np.empty(lead + vh_shape if compute_uv else (B, 1, 1), a.dtype)
    if not compute_uv:
        u_shape = vh_shape = (1, 1)
    _svd_forward(a.reshape(B, m, n), u.reshape((B,) + u_shape), s.reshape(B, cols),
                 vh.reshape((B,) + vh_shape), compute_uv, wide, ucols,
                 np.empty((B, rows * cols + rows * ucols + 2 * cols * cols + cols + rows)))
    if not compute_uv:
        return None, s, None
    return u, s, vh
