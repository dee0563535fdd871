"""Operands of the linalg ops (native/linalg.pyx, pynn/backend/opencl/linalg.py): keras.ops'
linear algebra on stacks of small dense matrices.

Every matrix operand is (..., m, n), C-contiguous, float32 or float64 (integers are refused:
Keras on torch refuses them too); the leading axes are a batch B, flattened here, and a
right-hand side carries the same batch (pynn.ops.linalg broadcasts before calling). Each
function returns the operands in the kernels' (B, m, n) form plus the sizes they need.
"""

import math

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _matrices(arrays, op, name, a, square, like=None):
    given = getattr(a, "dtype", None)
    if given is None:
        given = np.asarray(a).dtype
    if np.dtype(given) not in FLOAT_DTYPES:
        raise TypeError(f"{op}: '{name}' must be a float32 or float64 array, got dtype "
                        f"{np.dtype(given)}")
    a = arrays.float_input(op, name, a, like=like)
    shape = tuple(a.shape)
    if len(shape) < 2:
        raise ValueError(f"{op}: '{name}' must have at least 2 dimensions (..., m, n), got "
                         f"shape {shape}")
    if square and shape[-1] != shape[-2]:
        raise ValueError(f"{op}: '{name}' must be square (..., n, n), got shape {shape}")
    if 0 in shape[-2:]:
        raise ValueError(f"{op}: '{name}' must have non-empty matrices, got shape {shape}")
    batch = math.prod(shape[:-2])
    return a, batch, shape[-2], shape[-1]


def _rhs(arrays, op, b, a, batch, n):
    b, bb, rows, k = _matrices(arrays, op, "b", b, False, like=a)
    if tuple(b.shape[:-2]) != tuple(a.shape[:-2]) or rows != n:
        raise ValueError(f"{op}: 'b' must be (..., {n}, k) with a's batch "
                         f"{tuple(a.shape[:-2])}, got shape {tuple(b.shape)}")
    return b, k


def _flag(op, name, value):
    if not isinstance(value, (bool, int, np.bool_)) or value not in (0, 1):
        raise TypeError(f"{op}: '{name}' must be a bool, got {value!r}")
    return int(bool(value))


def cholesky_forward(arrays, a):
    """-> (a, B, n)."""
    a, batch, n, _ = _matrices(arrays, "cholesky_forward", "a", a, True)
    return a, batch, n


def lu_factor_forward(arrays, a):
    """-> (a, B, n)."""
    a, batch, n, _ = _matrices(arrays, "lu_factor_forward", "a", a, True)
    return a, batch, n


def _pivots(arrays, op, pivots, a, batch, n):
    pivots = arrays.int_input(op, "pivots", pivots)
    if tuple(pivots.shape) != tuple(a.shape[:-1]):
        raise ValueError(f"{op}: 'pivots' must have shape {tuple(a.shape[:-1])} (lu's batch "
                         f"and n), got {tuple(pivots.shape)}")
    if isinstance(pivots, np.ndarray) and pivots.size:
        rows = np.arange(n, dtype=np.int64)
        if pivots.min() < 0 or pivots.max() >= n or np.any(pivots.reshape(batch, n) < rows):
            raise ValueError(f"{op}: 'pivots' must be lu_factor's row swaps (0-based, "
                             f"pivots[i] in [i, {n})), got values in "
                             f"[{pivots.min()}, {pivots.max()}]")
    return pivots


def lu_solve_forward(arrays, lu, pivots, b, transpose):
    """-> (lu, pivots, b, B, n, k, transpose)."""
    op = "lu_solve_forward"
    lu, batch, n, _ = _matrices(arrays, op, "lu", lu, True)
    pivots = _pivots(arrays, op, pivots, lu, batch, n)
    b, k = _rhs(arrays, op, b, lu, batch, n)
    return lu, pivots, b, batch, n, k, _flag(op, "transpose", transpose)


def lu_slogdet_forward(arrays, lu, pivots):
    """-> (lu, pivots, B, n)."""
    op = "lu_slogdet_forward"
    lu, batch, n, _ = _matrices(arrays, op, "lu", lu, True)
    return lu, _pivots(arrays, op, pivots, lu, batch, n), batch, n


def triangular_solve_forward(arrays, a, b, lower, transpose, unit_diagonal):
    """-> (a, b, B, n, k, lower, transpose, unit_diagonal)."""
    op = "triangular_solve_forward"
    a, batch, n, _ = _matrices(arrays, op, "a", a, True)
    b, k = _rhs(arrays, op, b, a, batch, n)
    return (a, b, batch, n, k, _flag(op, "lower", lower), _flag(op, "transpose", transpose),
            _flag(op, "unit_diagonal", unit_diagonal))


def qr_forward(arrays, a, complete):
    """-> (a, B, m, n, complete)."""
    a, batch, m, n = _matrices(arrays, "qr_forward", "a", a, False)
    return a, batch, m, n, _flag("qr_forward", "complete", complete)


def eigh_forward(arrays, a):
    """-> (a, B, n)."""
    a, batch, n, _ = _matrices(arrays, "eigh_forward", "a", a, True)
    return a, batch, n


def svd_forward(arrays, a, full_matrices, compute_uv):
    """-> (a, B, m, n, full_matrices, compute_uv)."""
    a, batch, m, n = _matrices(arrays, "svd_forward", "a", a, False)
    return (a, batch, m, n, _flag("svd_forward", "full_matrices", full_matrices),
            _flag("svd_forward", "compute_uv", compute_uv))


def batch_shape(a):
    """The leading (batch) axes of a stack of matrices (computed here, in Python: the
    kernels' modules are compiled without negative indexing)."""
    return tuple(a.shape)[:-2]
