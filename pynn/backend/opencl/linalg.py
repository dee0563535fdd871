"""OpenCL linalg ops: the host side of ``opencl/linalg.cl`` (keras.ops.linalg).

Same names, signatures and semantics as ``native/linalg.pyx``; operands are checked by
``pynn.backend.operands.linalg``. float32 only (the OpenCL backend's dtype), one work-item
per matrix, each with a scratch of its own in a pooled device buffer.
"""

import numpy as np

from pynn.backend.opencl import runtime as rt
from pynn.backend.opencl.arrays import DEVICE
from pynn.backend.opencl.launch import elementwise
from pynn.backend.operands import linalg as operands


def cholesky_forward(a):
    """-> (L, info): a's lower Cholesky factor, int32 info (B,) of the batch's matrices."""
    a, B, n = operands.cholesky_forward(DEVICE, a)
    lower = rt.empty(tuple(a.shape), what="cholesky_forward output")
    info = rt.empty((B,), np.int32, what="cholesky_forward info")
    elementwise("linalg", "cholesky_forward", B, a, lower, info, B, n)
    return lower, info


def lu_factor_forward(a):
    """-> (LU, pivots, info): LAPACK's getrf with 0-based int32 pivots (..., n) and int32
    info (B,), the first zero pivot (1-based) of each matrix."""
    a, B, n = operands.lu_factor_forward(DEVICE, a)
    lu = rt.empty(tuple(a.shape), what="lu_factor_forward output")
    pivots = rt.empty(operands.batch_shape(a) + (n,), np.int32, what="lu_factor_forward pivots")
    info = rt.empty((B,), np.int32, what="lu_factor_forward info")
    elementwise("linalg", "lu_factor_forward", B, a, lu, pivots, info, B, n)
    return lu, pivots, info


def lu_solve_forward(lu, pivots, b, transpose=False):
    """x of A x = b (A^T x = b if ``transpose``) from lu_factor_forward's (LU, pivots)."""
    lu, pivots, b, B, n, k, transpose = operands.lu_solve_forward(DEVICE, lu, pivots, b,
                                                                  transpose)
    x = rt.empty(tuple(b.shape), what="lu_solve_forward output")
    elementwise("linalg", "lu_solve_forward", B, lu, pivots, b, x, B, n, k, transpose)
    return x


def lu_slogdet_forward(lu, pivots):
    """-> (sign, log|det|) of the factored matrices, shaped as their batch."""
    lu, pivots, B, n = operands.lu_slogdet_forward(DEVICE, lu, pivots)
    lead = operands.batch_shape(lu)
    sign = rt.empty(lead, what="lu_slogdet_forward sign")
    logabs = rt.empty(lead, what="lu_slogdet_forward log|det|")
    elementwise("linalg", "lu_slogdet_forward", B, lu, pivots, sign, logabs, B, n)
    return sign, logabs


def triangular_solve_forward(a, b, lower, transpose=False, unit_diagonal=False):
    """x of op(A) x = b, op(A) = A or A^T, A's ``lower`` (else upper) triangle read."""
    a, b, B, n, k, lower, transpose, unit = operands.triangular_solve_forward(
        DEVICE, a, b, lower, transpose, unit_diagonal)
    x = rt.empty(tuple(b.shape), what="triangular_solve_forward output")
    elementwise("linalg", "triangular_solve_forward", B, a, b, x, B, n, k, lower, transpose,
                unit)
    return x


def qr_forward(a, complete=False):
    """-> (Q, R): reduced or complete, LAPACK's signs."""
    a, B, m, n, complete = operands.qr_forward(DEVICE, a, complete)
    p = min(m, n)
    qcols = m if complete else p
    lead = operands.batch_shape(a)
    q = rt.empty(lead + (m, qcols), what="qr_forward Q")
    r = rt.empty(lead + (qcols, n), what="qr_forward R")
    work = rt.empty((B * (m * n + p),), what="qr_forward scratch")
    elementwise("linalg", "qr_forward", B, a, q, r, work, B, m, n, qcols)
    return q, r


def eigh_forward(a):
    """-> (w (..., n) ascending, v (..., n, n) eigenvectors as columns) of the symmetric
    matrices in a's lower triangle."""
    a, B, n = operands.eigh_forward(DEVICE, a)
    w = rt.empty(operands.batch_shape(a) + (n,), what="eigh_forward w")
    v = rt.empty(tuple(a.shape), what="eigh_forward v")
    work = rt.empty((B * (2 * n * n + n),), what="eigh_forward scratch")
    elementwise("linalg", "eigh_forward", B, a, w, v, work, B, n)
    return w, v


def svd_forward(a, full_matrices=True, compute_uv=True):
    """-> (U, s, Vh) with s (..., min(m, n)) descending; U (..., m, m or min) and
    Vh (..., n or min, n) per ``full_matrices``, both None when not ``compute_uv``."""
    a, B, m, n, full, compute_uv = operands.svd_forward(DEVICE, a, full_matrices, compute_uv)
    wide = int(n > m)
    rows, cols = max(m, n), min(m, n)
    ucols = rows if full and compute_uv else cols
    lead = operands.batch_shape(a)
    s = rt.empty(lead + (cols,), what="svd_forward s")
    if compute_uv:
        u = rt.empty(lead + ((m, m) if wide else (m, ucols)), what="svd_forward U")
        vh = rt.empty(lead + ((ucols, n) if wide else (n, n)), what="svd_forward Vh")
    else:
        u = vh = rt.empty((1,), what="svd_forward unused factors")
    work = rt.empty((B * (rows * cols + rows * ucols + cols * cols + cols + rows),),
                    what="svd_forward scratch")
    elementwise("linalg", "svd_forward", B, a, u, s, vh, work, B, m, n, compute_uv, wide, ucols)
    if not compute_uv:
        return None, s, None
    return u, s, vh
