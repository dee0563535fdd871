"""float64 references of the linalg ops (native/linalg.pyx, opencl/linalg.cl): short
textbook loops (Cholesky, LU with partial pivoting, substitution) and LAPACK through NumPy
where the factorisation is LAPACK's by definition (QR's signs); eigh and svd are LAPACK's
with the kernels' sign convention (each eigenvector's / left singular vector's largest
component positive)."""

import numpy as np


def _stack(a):
    a = np.asarray(a, np.float64)
    return a.reshape((-1,) + a.shape[-2:])


def cholesky_forward_ref(a):
    """-> (L, info) as LAPACK's potrf."""
    stack = _stack(a)
    out, info = np.zeros_like(stack), np.zeros(len(stack), np.int32)
    for b, m in enumerate(stack):
        n = len(m)
        L = np.zeros((n, n))
        for j in range(n):
            s = m[j, j] - L[j, :j] @ L[j, :j]
            if not s > 0:
                info[b] = j + 1
                break
            L[j, j] = np.sqrt(s)
            L[j + 1:, j] = (m[j + 1:, j] - L[j + 1:, :j] @ L[j, :j]) / L[j, j]
        out[b] = L
    return out.reshape(np.shape(a)), info


def lu_factor_forward_ref(a):
    """-> (LU, 0-based pivots, info) as LAPACK's getrf."""
    stack = _stack(a).copy()
    n = stack.shape[-1]
    piv = np.zeros(stack.shape[:2], np.int32)
    info = np.zeros(len(stack), np.int32)
    for b, m in enumerate(stack):
        for j in range(n):
            p = j + int(np.argmax(np.abs(m[j:, j])))
            piv[b, j] = p
            m[[j, p]] = m[[p, j]]
            if m[j, j] == 0:
                info[b] = info[b] or j + 1
                continue
            m[j + 1:, j] /= m[j, j]
            m[j + 1:, j + 1:] -= np.outer(m[j + 1:, j], m[j, j + 1:])
    return stack.reshape(np.shape(a)), piv.reshape(np.shape(a)[:-1]), info


def _unpack_lu(lu, piv):
    n = len(lu)
    L = np.tril(lu, -1) + np.eye(n)
    U = np.triu(lu)
    perm = np.arange(n)
    for i, p in enumerate(piv):
        perm[[i, p]] = perm[[p, i]]
    P = np.eye(n)[perm]  # P A = L U
    return P, L, U


def lu_solve_forward_ref(lu, pivots, b, transpose=False):
    lus, bs = _stack(lu), _stack(b)
    pivs = np.asarray(pivots).reshape(len(lus), -1)
    out = np.empty_like(bs)
    for i, (m, p, rhs) in enumerate(zip(lus, pivs, bs)):
        P, L, U = _unpack_lu(m, p)
        A = P.T @ L @ U
        out[i] = np.linalg.solve(A.T if transpose else A, rhs)
    return out.reshape(np.shape(b))


def lu_slogdet_forward_ref(lu, pivots):
    lus = _stack(lu)
    pivs = np.asarray(pivots).reshape(len(lus), -1)
    sign, logabs = np.empty(len(lus)), np.empty(len(lus))
    for i, (m, p) in enumerate(zip(lus, pivs)):
        P, L, U = _unpack_lu(m, p)
        sign[i], logabs[i] = np.linalg.slogdet(P.T @ L @ U)
    lead = np.shape(lu)[:-2]
    return sign.reshape(lead), logabs.reshape(lead)


def triangular_solve_forward_ref(a, b, lower, transpose=False, unit_diagonal=False):
    a = np.asarray(a, np.float64)
    t = np.tril(a) if lower else np.triu(a)
    if unit_diagonal:
        n = a.shape[-1]
        t[..., range(n), range(n)] = 1
    if transpose:
        t = np.swapaxes(t, -1, -2)
    return np.linalg.solve(t, np.asarray(b, np.float64))


def qr_forward_ref(a, complete=False):
    return np.linalg.qr(np.asarray(a, np.float64), mode="complete" if complete else "reduced")


def _largest_positive(v):
    """Columns of v signed so that each one's largest-magnitude component is positive."""
    idx = np.argmax(np.abs(v), axis=-2)[..., None, :]
    return v * np.sign(np.take_along_axis(v, idx, axis=-2))


def eigh_forward_ref(a):
    w, v = np.linalg.eigh(np.asarray(a, np.float64), UPLO="L")
    return w, _largest_positive(v)


def svd_forward_ref(a, full_matrices=True, compute_uv=True):
    a = np.asarray(a, np.float64)
    if not compute_uv:
        return None, np.linalg.svd(a, compute_uv=False), None
    u, s, vh = np.linalg.svd(a, full_matrices=bool(full_matrices))
    k = s.shape[-1]
    idx = np.argmax(np.abs(u[..., :, :k]), axis=-2)[..., None, :]
    sign = np.sign(np.take_along_axis(u[..., :, :k], idx, axis=-2))
    u = u.copy()
    vh = vh.copy()
    u[..., :, :k] *= sign
    vh[..., :k, :] *= np.swapaxes(sign, -1, -2)
    return u, s, vh
