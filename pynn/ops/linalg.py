"""``pynn.ops.linalg``: keras.ops.linalg (and the linear algebra Keras 3 also has at the top
of keras.ops: slogdet, logdet, pinv, matrix_rank) on stacks of matrices (..., m, n).

The factorisations run on the linalg family's kernels on every backend (native/linalg.pyx,
opencl/linalg.cl): Cholesky, LU with partial pivoting and its solves, triangular solves,
Householder QR, Jacobi eigh and SVD. The rest is composed of them and of pynn.ops (inv is
solve against the identity, det and logdet come from slogdet, pinv/lstsq/matrix_rank and the
spectral norms from the SVD), so gradients flow through the compositions.

Each factorisation records its own backward, written with pynn.ops' matrix products and the
linalg kernels (the formulas torch uses, so Keras on torch gives the same gradients):
cholesky's L^-T Phi(L^T gL) L^-1 symmetrised, lu_factor's P L^-T phi U^-T, solve's
A^-T, slogdet's A^-T, QR's (reduced: m >= n, or A = Q [R1 R2] split), eigh's and svd's with
distinct eigenvalues / singular values, cholesky_inverse's on the whole factor. Failures are reported as Keras on torch reports them: a Cholesky of a
matrix that is not positive-definite and a solve or inverse of a singular matrix raise
``numpy.linalg.LinAlgError`` (a ValueError) naming the op and the matrix; det and slogdet of a
singular matrix are 0 and (0, -inf). Reading the factorisations' ``info`` is the one host
read of these ops on a device.
"""

import builtins

import numpy as np

from pynn import backend
from pynn.autodiff import Tensor
from pynn.ops import _core
from pynn.ops import numpy_extra as npx
from pynn.ops import numpy_ops as npo
from pynn.ops._core import op, record, shape_of, value


# -- operands ---------------------------------------------------------------------------------
def _name(name):
    return f"pynn.ops.linalg.{name}"


def _matrices(name, x, square=True, what="x"):
    """x as the backend's float array of shape (..., m, n), checked and named by the op."""
    b = backend.current()
    v = value(x)
    if isinstance(v, (list, tuple, int, float)):
        v = np.asarray(v)
    dtype = np.dtype(getattr(v, "dtype", np.asarray(v).dtype))
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"{_name(name)}: '{what}' must be a float32 or float64 array, got "
                        f"dtype {dtype}")
    shape = shape_of(v)
    if len(shape) < 2:
        raise ValueError(f"{_name(name)}: '{what}' must have at least 2 dimensions (..., m, n), "
                         f"got shape {shape}")
    if square and shape[-1] != shape[-2]:
        raise ValueError(f"{_name(name)}: '{what}' must be square (..., n, n), got shape {shape}")
    if 0 in shape[-2:]:
        raise ValueError(f"{_name(name)}: '{what}' must have non-empty matrices, got shape "
                         f"{shape}")
    return b, npx._operand(b, x)


def _t(a):
    """A backend array (or Tensor) as an untracked Tensor for the backward compositions."""
    return a if isinstance(a, Tensor) else Tensor(a)


def _mT(x):
    return npx.swapaxes(x, -1, -2)


def _mm(x, y):
    return npo.matmul(x, y)


def _eye_like(b, n, dtype):
    return Tensor(b.asarray(np.eye(n, dtype=dtype), np.dtype(dtype)))


def _zeros(b, like):
    """Zeros shaped and typed as the backend array ``like``, on its backend (untracked)."""
    return Tensor(b.zeros(shape_of(like), np.dtype(like.dtype)))


def _diag_embed(v, n):
    """(..., n) -> (..., n, n) with v on the diagonal."""
    return npo.multiply(npo.expand_dims(v, -2), _eye_like(backend.current(), n, v.dtype))


def _sym(x):
    return npo.multiply(npo.add(x, _mT(x)), 0.5)


def _check_info(name, b, info, message):
    if _core.SHAPE_PROBE[0]:  # OpLayer's all-ones stand-in: only the shape is wanted
        return
    info = np.asarray(b.to_numpy(info)).reshape(-1)
    bad = np.flatnonzero(info)
    if bad.size:
        where = f" (matrix {int(bad[0])} of the batch)" if info.size > 1 else ""
        raise np.linalg.LinAlgError(f"{_name(name)}: {message(int(info[bad[0]]))}{where}")


def _broadcast_batch(name, a, rhs):
    """a (..., n, n) and rhs (..., n, k) with their batch axes broadcast (as torch.linalg)."""
    sa, sb = shape_of(value(a)), shape_of(value(rhs))
    try:
        lead = np.broadcast_shapes(sa[:-2], sb[:-2])
    except ValueError:
        raise ValueError(f"{_name(name)}: the batch axes of a {sa} and b {sb} do not "
                         f"broadcast") from None
    if sa[:-2] != lead:
        a = npo.broadcast_to(a, lead + sa[-2:])
    if sb[:-2] != lead:
        rhs = npo.broadcast_to(rhs, lead + sb[-2:])
    return a, rhs


def _nested_like(b, a):
    """A nested list b takes a's dtype (as keras.ops converts its arguments)."""
    if isinstance(b, (list, tuple)):
        return np.asarray(b, dtype=np.dtype(value(a).dtype) if hasattr(value(a), "dtype")
                          else None)
    return b


def _rhs(name, a, rhs):
    """Keras's (torch's) rule for b: a batch of vectors when b is 1-D or (..., n) with a's
    batch; else (..., n, k). -> (a, b as matrices, whether to squeeze the result)."""
    rhs = _nested_like(rhs, a)
    sa, sb = shape_of(value(a)), shape_of(value(rhs))
    n = sa[-1]
    vector = len(sb) == 1 or (len(sb) == len(sa) - 1 and sb == sa[:-1])
    if vector:
        rhs = npo.expand_dims(rhs, -1)
        sb = shape_of(value(rhs))
    if len(sb) < 2 or sb[-2] != n:
        raise ValueError(f"{_name(name)}: 'b' must be (..., {n}) or (..., {n}, k) for a of shape "
                         f"{sa}, got shape {shape_of(value(rhs if not vector else rhs))}")
    da, db = np.dtype(value(a).dtype), np.dtype(getattr(value(rhs), "dtype", np.float32))
    if db.kind != "f":
        raise TypeError(f"{_name(name)}: 'b' must be a float32 or float64 array, got dtype "
                        f"{db}")
    if da != db:
        raise TypeError(f"{_name(name)}: a and b must share one float dtype, got {da} and "
                        f"{db}")
    a, rhs = _broadcast_batch(name, a, rhs)
    return a, rhs, vector


# -- Cholesky ---------------------------------------------------------------------------------
def _cholesky_lower(x):
    b, a = _matrices("cholesky", x)
    lower, info = b.cholesky_forward(a)
    _check_info("cholesky", b, info, lambda k: f"the input is not positive-definite (the "
                f"leading minor of order {k} is not positive-definite)")

    def backward(g_lower, need):
        L, g = _t(lower), npx.tril(_t(g_lower))
        phi = npx.tril(_mm(_mT(L), g))
        n = shape_of(lower)[-1]
        phi = npo.subtract(phi, npo.multiply(_diag_embed(npx.diagonal(phi, 0, -2, -1), n), 0.5))
        # L^-T phi L^-1: two triangular solves with L^T (the second on the transpose)
        left = _triangular(b, L, phi, True, True)
        grad = _mT(_triangular(b, L, _mT(left), True, True))
        return (_sym(grad).value,)

    return record(lower, (x,), backward, "cholesky")


def _triangular(b, a, rhs, lower, transpose):
    return Tensor(b.triangular_solve_forward(value(a), value(rhs), bool(lower),
                                             bool(transpose), False))


@op
def cholesky(x, upper=False):
    """keras.ops.linalg.cholesky: L with x = L L^T (upper: U = L^T with x = U^T U), read from
    x's lower triangle; LinAlgError when x is not positive-definite (torch raises too)."""
    lower = _cholesky_lower(x)
    return _mT(lower) if upper else lower


@op
def cholesky_inverse(x, upper=False):
    """keras.ops.linalg.cholesky_inverse: X = (L L^T)^-1 from the factor L (upper:
    (U^T U)^-1), as two triangular solves and a product. Its gradient is torch's, which
    takes the whole of x as the factor: -X (g + g^T) X L (upper: -U X (g + g^T) X)."""
    b, f = _matrices("cholesky_inverse", x)
    n = shape_of(f)[-1]
    eye = b.asarray(np.broadcast_to(np.eye(n, dtype=f.dtype), shape_of(f)), f.dtype)
    inverse = _t(b.triangular_solve_forward(f, eye, not upper, False, False))
    result = (_mm(_mT(inverse), inverse) if not upper else _mm(inverse, _mT(inverse))).value

    def backward(g, need):
        X, F, G = _t(result), _t(f), _t(g)
        middle = _mm(_mm(X, npo.add(G, _mT(G))), X)
        return (npo.negative(_mm(middle, F) if not upper else _mm(F, middle)).value,)

    return record(result, (x,), backward, "cholesky_inverse")


# -- LU, solve, determinants ------------------------------------------------------------------
def _lu(name, x):
    b, a = _matrices(name, x)
    lu, pivots, info = b.lu_factor_forward(a)
    return b, a, lu, pivots, info


def _singular(k):
    return f"the input matrix is singular (U[{k - 1}, {k - 1}] of its LU factorisation is zero)"


@op
def lu_factor(x):
    """keras.ops.linalg.lu_factor: (LU, pivots) as Keras on torch gives them (LAPACK's getrf
    with 0-based int32 pivots: row i swapped with pivots[i] in turn). LU's gradient is
    torch's: with A = P L U, gL = tril(g, -1), gU = triu(g),
    gA = P L^-T (tril(L^T gL, -1) + triu(gU U^T)) U^-T."""
    b, a, lu, pivots, _ = _lu("lu_factor", x)
    n = shape_of(a)[-1]

    def backward(g, need):
        LU, G = _t(lu), _t(g)
        eye = _eye_like(b, n, a.dtype)
        lower, upper = npo.add(npx.tril(LU, -1), eye), npx.triu(LU)
        phi = npo.add(npx.tril(_mm(_mT(lower), npx.tril(G, -1)), -1),
                      npx.triu(_mm(npx.triu(G), _mT(upper))))
        y = Tensor(b.triangular_solve_forward(lu, phi.value, True, True, True))  # L^-T phi
        z = _mT(_triangular(b, upper, _mT(y), False, False))  # (L^-T phi) U^-T
        # P z: the swaps undone, as the LU solve of A^T x = z with L = U = I does
        identity = b.asarray(np.broadcast_to(np.eye(n, dtype=a.dtype), shape_of(a)), a.dtype)
        return (b.lu_solve_forward(identity, pivots, z.value, True),)

    return record(lu, (x,), backward, "lu_factor"), Tensor(pivots)


@op
def solve(a, b):
    """keras.ops.linalg.solve: x with a x = b (b a vector (..., n) or (..., n, k); batch axes
    broadcast); LinAlgError for a singular a, as torch. Gradients: gb = a^-T gx (the same LU),
    ga = -gb x^T."""
    _matrices("solve", a, what="a")
    a, rhs, vector = _rhs("solve", a, b)
    be, av, lu, pivots, info = _lu("solve", a)
    _check_info("solve", be, info, _singular)
    x = be.lu_solve_forward(lu, pivots, npx._operand(be, rhs), False)

    def backward(gx, need):
        gb = be.lu_solve_forward(lu, pivots, gx, True)
        ga = npo.negative(_mm(_t(gb), _mT(_t(x)))).value if need[0] else None
        return ga, gb

    out = record(x, (a, rhs), backward, "solve")
    return npo.squeeze(out, -1) if vector else out


@op
def inv(x):
    """keras.ops.linalg.inv: solve(x, I) (its gradient -x^-T g x^-T through solve's)."""
    b, a = _matrices("inv", x)
    n = shape_of(a)[-1]
    try:
        return solve(x, npo.broadcast_to(_eye_like(b, n, a.dtype), shape_of(a)))
    except np.linalg.LinAlgError as err:
        raise np.linalg.LinAlgError(str(err).replace(_name("solve"), _name("inv"))) from None


def _slogdet(name, x):
    b, a, lu, pivots, _ = _lu(name, x)
    sign, logabs = b.lu_slogdet_forward(lu, pivots)
    n = shape_of(a)[-1]

    def backward(g, need):
        # d log|det A| = tr(A^-1 dA): g A^-T, A^-T from the same LU
        eye = b.asarray(np.broadcast_to(np.eye(n, dtype=a.dtype), shape_of(a)), a.dtype)
        inv_t = _t(b.lu_solve_forward(lu, pivots, eye, True))
        return (npo.multiply(inv_t, npo.expand_dims(npo.expand_dims(_t(g), -1), -1)).value,)

    return Tensor(sign), record(logabs, (x,), backward, name)


@op
def slogdet(x):
    """keras.ops.slogdet: (sign, log|det|) from the LU factorisation; a singular x gives
    (0, -inf) as NumPy and torch. Only log|det| has a gradient (x^-T)."""
    return _slogdet("slogdet", x)


@op
def det(x):
    """keras.ops.linalg.det: sign * exp(log|det|) (its gradient det * x^-T)."""
    sign, logabs = _slogdet("det", x)
    return npo.multiply(sign, npo.exp(logabs))


@op
def logdet(x):
    """keras.ops.logdet (torch.logdet): log det, NaN where det < 0, -inf where det = 0."""
    sign, logabs = _slogdet("logdet", x)
    with np.errstate(invalid="ignore", divide="ignore"):
        return npo.add(logabs, npo.log(sign))


@op
def solve_triangular(a, b, lower=False):
    """keras.ops.linalg.solve_triangular: x with T x = b, T a's lower (else upper) triangle
    (b (..., n) or (..., n, k)). Gradients: gb = T^-T gx, ga = -gb x^T on T's triangle."""
    be, av = _matrices("solve_triangular", a, what="a")
    b = _nested_like(b, av)
    sa, sb = shape_of(av), shape_of(value(b))
    vector = len(sb) == len(sa) - 1
    rhs = npo.expand_dims(b, -1) if vector else b
    sb = shape_of(value(rhs))
    if len(sb) < 2 or sb[-2] != sa[-1]:
        raise ValueError(f"{_name('solve_triangular')}: 'b' must be (..., {sa[-1]}) or "
                         f"(..., {sa[-1]}, k) for a of shape {sa}, got shape "
                         f"{shape_of(value(b))}")
    a, rhs = _broadcast_batch("solve_triangular", a, rhs)
    _matrices("solve_triangular", rhs, square=False, what="b")
    av, rv = npx._operand(be, a), npx._operand(be, rhs)
    if np.dtype(av.dtype) != np.dtype(rv.dtype):
        raise TypeError(f"{_name('solve_triangular')}: a and b must share one float dtype, "
                        f"got {av.dtype} and {rv.dtype}")
    x = be.triangular_solve_forward(av, rv, bool(lower), False, False)

    def backward(gx, need):
        gb = be.triangular_solve_forward(av, gx, bool(lower), True, False)
        ga = None
        if need[0]:
            outer = npo.negative(_mm(_t(gb), _mT(_t(x))))
            ga = (npx.tril(outer) if lower else npx.triu(outer)).value
        return ga, gb

    out = record(x, (a, rhs), backward, "solve_triangular")
    return npo.squeeze(out, -1) if vector else out


# -- QR ---------------------------------------------------------------------------------------
def _qr_square_backward(b, q, r, gq, gr):
    """gA of A = Q R with R square (n x n): (gQ + Q copyltu(M)) R^-T, M = R gR^T - gQ^T Q
    written as (gQ + Q (tril(M' - M'^T, -1) - M')) R^-T with M' = Q^T gQ - gR R^T."""
    m_ = npo.subtract(_mm(_mT(q), gq), _mm(gr, _mT(r)))
    inner = npo.subtract(npx.tril(npo.subtract(m_, _mT(m_)), -1), m_)
    g = npo.add(gq, _mm(q, inner))
    # g R^-T: (R^-1 g^T)^T, R upper
    return _mT(_triangular(b, r, _mT(g), False, False))


@op
def qr(x, mode="reduced"):
    """keras.ops.linalg.qr: (Q, R) by Householder reflections with LAPACK's signs ('reduced'
    or 'complete'). Gradients as torch's: reduced (or complete with m <= n) only."""
    if mode not in ("reduced", "complete"):
        raise ValueError(f"{_name('qr')}: mode must be 'reduced' or 'complete', got {mode!r}")
    b, a = _matrices("qr", x, square=False)
    m, n = shape_of(a)[-2:]
    q, r = b.qr_forward(a, mode == "complete")
    k = builtins.min(m, n)

    def backward_of(which):
        def backward(g, need):
            if mode == "complete" and m > n:
                raise NotImplementedError(f"{_name('qr')}: no gradient for mode='complete' "
                                          f"with more rows than columns (Q is not unique; "
                                          f"torch refuses too)")
            gq = _t(g) if which == 0 else _zeros(b, q)
            gr = _t(g) if which == 1 else _zeros(b, r)
            Q, R = _t(q), _t(r)
            if m >= n:
                return (_qr_square_backward(b, Q, R, gq, gr).value,)
            # A = Q [R1 R2] with X = Q R1 (square) and Y = Q R2: Y's gradient is Q gR2, and
            # R2 = Q^T Y adds Y gR2^T to gQ
            r1, r2 = R[..., :, :k], R[..., :, k:]
            gr1, gr2 = gr[..., :, :k], gr[..., :, k:]
            y = _mm(Q, r2)
            gx = _qr_square_backward(b, Q, r1, npo.add(gq, _mm(y, _mT(gr2))), gr1)
            return (npo.concatenate([gx, _mm(Q, gr2)], axis=-1).value,)
        return backward

    return (record(q, (x,), backward_of(0), "qr"), record(r, (x,), backward_of(1), "qr"))


# -- symmetric eigenproblem -------------------------------------------------------------------
def _gap_inverse(w):
    """1 / (w_j - w_i) off the diagonal, 0 on it ((..., n) -> (..., n, n))."""
    n = shape_of(value(w))[-1]
    gaps = npo.subtract(npo.expand_dims(w, -2), npo.expand_dims(w, -1))
    eye = _eye_like(backend.current(), n, value(w).dtype)
    with np.errstate(divide="ignore"):
        return npo.multiply(npo.divide(1.0, npo.add(gaps, eye)), npo.subtract(1.0, eye))


@op
def eigh(x):
    """keras.ops.linalg.eigh: (w ascending, v) of the symmetric matrices in x's lower
    triangle (cyclic Jacobi); each eigenvector's largest component positive. Gradient (distinct
    eigenvalues, torch's): V (diag(gw) + skew(V^T gV) / (w_j - w_i)) V^T."""
    b, a = _matrices("eigh", x)
    w, v = b.eigh_forward(a)
    n = shape_of(a)[-1]

    def backward_of(which):
        def backward(g, need):
            W, V = _t(w), _t(v)
            if which == 0:
                inner = _diag_embed(_t(g), n)
            else:
                k = _mm(_mT(V), _t(g))
                inner = npo.multiply(npo.multiply(npo.subtract(k, _mT(k)), 0.5), _gap_inverse(W))
            return (_mm(_mm(V, inner), _mT(V)).value,)
        return backward

    return record(w, (x,), backward_of(0), "eigh"), record(v, (x,), backward_of(1), "eigh")


@op
def eig(x):
    """keras.ops.linalg.eig: refused (its results are complex; pynn has no complex dtype)."""
    raise NotImplementedError(f"{_name('eig')}: eigenvalues of a general matrix are complex "
                              f"and pynn has no complex dtype; for a symmetric matrix use "
                              f"pynn.ops.linalg.eigh")


# -- SVD --------------------------------------------------------------------------------------
def _svd_backward(b, u, s, vh, gu, gs, gvh, m, n):
    """gA of A = U diag(s) Vh, reduced factors (Townsend's formula, as torch's):
    U [(F o (U^T gU - gU^T U)) S + diag(gs) + S (F o (V^T gV - gV^T V))] V^T
    + (I - U U^T) gU S^-1 V^T + U S^-1 gV^T (I - V V^T), F_ij = 1 / (s_j^2 - s_i^2)."""
    k = builtins.min(m, n)
    U, S, V = _t(u), _t(s), _mT(_t(vh))
    inner = _diag_embed(gs, k) if gs is not None else None
    if gu is None and gvh is None:
        return _mm(_mm(U, inner), _mT(V))
    f = _gap_inverse(npo.square(S))
    s_row = npo.expand_dims(S, -2)  # scales columns: X S
    s_col = npo.expand_dims(S, -1)  # scales rows: S X
    terms = [] if inner is None else [inner]
    grad_extra = []
    if gu is not None:
        j = _mm(_mT(U), gu)
        terms.append(npo.multiply(npo.multiply(f, npo.subtract(j, _mT(j))), s_row))
        if m > k:
            proj = npo.subtract(gu, _mm(U, j))
            grad_extra.append(_mm(npo.divide(proj, s_row), _mT(V)))
    if gvh is not None:
        gv = _mT(gvh)
        j = _mm(_mT(V), gv)
        terms.append(npo.multiply(s_col, npo.multiply(f, npo.subtract(j, _mT(j)))))
        if n > k:
            proj = npo.subtract(gv, _mm(V, j))
            grad_extra.append(_mm(npo.divide(U, s_row), _mT(proj)))
    total = terms[0]
    for t in terms[1:]:
        total = npo.add(total, t)
    grad = _mm(_mm(U, total), _mT(V))
    for t in grad_extra:
        grad = npo.add(grad, t)
    return grad


@op
def svd(x, full_matrices=True, compute_uv=True):
    """keras.ops.linalg.svd: (U, s descending, Vh) by one-sided Jacobi, each left vector's
    largest component positive (s alone when not compute_uv). Gradients (torch's): through s
    always; through U and Vh with distinct singular values and reduced factors (full_matrices
    with m != n is refused, as torch)."""
    b, a = _matrices("svd", x, square=False)
    m, n = shape_of(a)[-2:]
    k = builtins.min(m, n)
    u, s, vh = b.svd_forward(a, bool(full_matrices), True)
    ur = u if u.shape[-1] == k else _t(u)[..., :, :k].value
    vr = vh if vh.shape[-2] == k else _t(vh)[..., :k, :].value

    def backward_of(which):
        def backward(g, need):
            if which != 1 and full_matrices and m != n:
                raise NotImplementedError(f"{_name('svd')}: no gradient through U or Vh with "
                                          f"full_matrices=True and a non-square input (the "
                                          f"extra columns are not unique; torch refuses too); "
                                          f"use full_matrices=False")
            g = _t(g)
            grad = _svd_backward(b, ur, s, vr, g if which == 0 else None,
                                 g if which == 1 else None, g if which == 2 else None, m, n)
            return (grad.value,)
        return backward

    s_out = record(s, (x,), backward_of(1), "svd")
    if not compute_uv:
        return s_out
    return (record(u, (x,), backward_of(0), "svd"), s_out,
            record(vh, (x,), backward_of(2), "svd"))


def _default_rtol(m, n, dtype):
    return np.finfo(np.dtype(dtype)).eps * builtins.max(m, n)


@op
def pinv(x, rcond=None):
    """keras.ops.pinv (torch's rtol): V diag(1/s) U^T over the singular values above
    rcond * max(s) (rcond None: eps * max(m, n)), its gradient through the SVD's."""
    b, a = _matrices("pinv", x, square=False)
    m, n = shape_of(a)[-2:]
    rtol = _default_rtol(m, n, a.dtype) if rcond is None else float(rcond)
    u, s, vh = svd(x, full_matrices=False)
    keep = npo.greater(s, npo.multiply(npo.max(s, axis=-1, keepdims=True), rtol))
    safe = npo.where(keep, s, 1.0)
    inv_s = npo.where(keep, npo.divide(1.0, safe), 0.0)
    return _mm(npo.multiply(_mT(vh), npo.expand_dims(inv_s, -2)), _mT(u))


@op
def lstsq(a, b, rcond=None):
    """keras.ops.linalg.lstsq: the least-squares solution pinv(a) b (NumPy's rcond; Keras on
    torch takes the same minimum-norm solution for full-rank a)."""
    _, av = _matrices("lstsq", a, square=False, what="a")
    b = _nested_like(b, av)
    sa, sb = shape_of(av), shape_of(value(b))
    vector = len(sb) == len(sa) - 1
    rows = sb[-1] if vector and sb else sb[-2] if len(sb) >= 2 else None
    if rows != sa[-2]:
        raise ValueError(f"{_name('lstsq')}: 'b' must be (..., {sa[-2]}) or (..., {sa[-2]}, k) "
                         f"for a of shape {sa}, got shape {sb}")
    rhs = npo.expand_dims(b, -1) if vector else b
    x = _mm(pinv(a, rcond), rhs)
    return npo.squeeze(x, -1) if vector else x


@op
def matrix_rank(x, tol=None):
    """keras.ops.matrix_rank (torch's atol): how many singular values exceed tol (None:
    max(s) * max(m, n) * eps), int32."""
    b, a = _matrices("matrix_rank", x, square=False)
    m, n = shape_of(a)[-2:]
    s = svd(x, compute_uv=False)
    if tol is None:
        threshold = npo.multiply(npo.max(s, axis=-1, keepdims=True),
                                 _default_rtol(m, n, a.dtype))
    else:
        threshold = float(tol)
    above = npo.cast(npo.greater(s, threshold), a.dtype)
    return npo.cast(npo.sum(above, axis=-1), "int32")


@op
def norm(x, ord=None, axis=None, keepdims=False):
    """keras.ops.linalg.norm: pynn.ops.norm, with the matrix norms that need singular values
    (ord 2, -2, 'nuc') on the SVD."""
    ndim = len(shape_of(value(x)))
    axes = None
    if axis is None and ndim == 2:
        axes = (0, 1)
    elif axis is not None and len(np.atleast_1d(axis)) == 2:
        axes = tuple(int(i) % ndim for i in np.atleast_1d(axis))
    if axes is not None and ord not in (None, "fro", "nuc", 1, -1, 2, -2, np.inf, -np.inf):
        raise ValueError(f"pynn.ops.norm: matrix ord {ord!r} is not supported (Keras's matrix "
                         f"norms: 'fro', 'nuc', 1, -1, 2, -2, inf, -inf)")
    if axes is None or ord not in (2, -2, "nuc"):
        return npx.norm.raw(x, ord, axis, keepdims)
    if np.dtype(getattr(value(x), "dtype", np.float32)).kind != "f":
        x = npo.cast(x, "float32")
    if axes != (ndim - 2, ndim - 1):
        if not hasattr(value(x), "shape"):
            x = npo.convert_to_tensor(x)
        if type(x) is np.ndarray:  # host data on a device: uploaded, as keras.ops converts
            x = Tensor(npx._operand(backend.current(), x))
        x = npx.moveaxis(x, axes, (-2, -1))
    s = svd(x, compute_uv=False)
    out = (npo.sum(s, axis=-1) if ord == "nuc" else npo.max(s, axis=-1) if ord == 2
           else npo.min(s, axis=-1))
    if keepdims:
        for a in sorted(axes):
            out = npo.expand_dims(out, a)
    return out


__all__ = ["cholesky", "cholesky_inverse", "det", "eig", "eigh", "inv", "lstsq", "lu_factor",
           "matrix_rank", "norm", "pinv", "qr", "solve", "solve_triangular", "svd"]
