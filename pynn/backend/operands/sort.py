"""Operands of the sort ops (native/sort.pyx, pynn/backend/opencl/sort.py): keras.ops'
sort/argsort/top_k along the last axis of a row view (R, n).

Index arrays are int32 (R, k) of positions in a row; host ones are range-checked here, and
the kernels also skip a position outside [0, n) (a device array is not read back).
"""

import numpy as np


def _rows(arrays, op, name, a, like=None):
    a = arrays.float_input(op, name, a, like=like)
    if a.ndim != 2:
        raise ValueError(f"{op}: '{name}' must be 2-D (rows, n), got shape {tuple(a.shape)}")
    return a


def _positions(arrays, op, index, rows, n):
    index = arrays.int_input(op, "index", index, ndim=2)
    if index.shape[0] != rows:
        raise ValueError(f"{op}: 'index' must have {rows} rows, got shape {tuple(index.shape)}")
    if isinstance(index, np.ndarray) and index.size and (index.min() < 0 or index.max() >= n):
        raise ValueError(f"{op}: 'index' must lie in [0, {n}), got values in "
                         f"[{index.min()}, {index.max()}]")
    return index


def argsort_rows(arrays, x, descending, k):
    """-> (x, descending, k): k (None: n) the positions kept from each row's front."""
    x = _rows(arrays, "argsort_rows", "x", x)
    if not isinstance(descending, (bool, int)) or descending not in (0, 1):
        raise TypeError(f"argsort_rows: 'descending' must be a bool, got {descending!r}")
    n = x.shape[1]
    k = n if k is None else k
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= n:
        raise ValueError(f"argsort_rows: 'k' must be an int in [0, {n}], got {k!r}")
    return x, int(bool(descending)), int(k)


def take_along_rows(arrays, x, index):
    """-> (x, index): y[r, j] = x[r, index[r, j]]."""
    x = _rows(arrays, "take_along_rows", "x", x)
    return x, _positions(arrays, "take_along_rows", index, x.shape[0], x.shape[1])


def put_along_rows(arrays, src, index, n):
    """-> (src, index, n): y (R, n) zeros with y[r, index[r, j]] = src[r, j]."""
    src = _rows(arrays, "put_along_rows", "src", src)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"put_along_rows: 'n' must be an int >= 0, got {n!r}")
    index = _positions(arrays, "put_along_rows", index, src.shape[0], int(n))
    if tuple(index.shape) != tuple(src.shape):
        raise ValueError(f"put_along_rows: 'index' must have src's shape {tuple(src.shape)}, "
                         f"got {tuple(index.shape)}")
    return src, index, int(n)
