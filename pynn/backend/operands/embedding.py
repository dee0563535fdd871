"""Operands of the embedding ops (native/embedding.pyx, pynn/backend/opencl/embedding.py):
Keras 3's Embedding, a gather of table rows by index and its scatter-add backward.

Indices may have any shape and be integers or floats holding whole numbers (Keras casts its
inputs to int). On the host they are range-checked here, before any kernel runs, and
narrowed to int32. Device indices (int32, int64 or float32) are checked by the OpenCL
kernels themselves, which flag a bad index instead of reading past the table (see
pynn/backend/opencl/embedding.py); the flag is read back before the op returns.
"""

import operator

import numpy as np

from pynn.backend.operands.common import INT32_MAX, check_count, check_shape

DEVICE_INDEX_DTYPES = (np.dtype(np.int32), np.dtype(np.int64), np.dtype(np.float32))


def out_of_range(op, bad, input_dim):
    """The one wording of a bad index, host or device; the layer prefixes its name."""
    return ValueError(f"{op}: index {bad!r} is out of range: indices must be whole numbers in "
                      f"[0, input_dim={input_dim})")


def input_dim_arg(op, input_dim):
    if isinstance(input_dim, bool):
        raise TypeError(f"{op}: 'input_dim' must be an int, got {input_dim!r}")
    try:
        input_dim = operator.index(input_dim)
    except TypeError:
        raise TypeError(f"{op}: 'input_dim' must be an int, got {input_dim!r}") from None
    if not 1 <= input_dim <= INT32_MAX:
        raise ValueError(f"{op}: 'input_dim' must be in [1, {INT32_MAX}], got {input_dim}")
    return input_dim


def host_indices(op, indices, input_dim):
    """Host indices as C-contiguous int32 after the range check: a bad one is named."""
    if indices is None:
        raise ValueError(f"{op}: 'indices' is required, got None")
    arr = np.asarray(indices)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer)
                                     or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"{op}: 'indices' must be integers (or floats holding whole numbers), "
                        f"got dtype {arr.dtype}")
    if arr.size:
        flat = arr.reshape(-1)
        bad = (flat < 0) | (flat >= input_dim)
        if arr.dtype.kind == "f":
            bad |= ~np.isfinite(flat) | (flat != np.round(flat))
        if np.any(bad):
            value = flat[np.argmax(bad)].item()
            raise out_of_range(op, value, input_dim)
    return np.asarray(arr, dtype=np.int32, order="C")


def _indices(arrays, op, indices, input_dim):
    if arrays.name == "cpu":
        return host_indices(op, indices, input_dim)
    if indices is not None and getattr(indices, "dtype", None) not in DEVICE_INDEX_DTYPES:
        raise TypeError(f"{op}: device 'indices' must be int32, int64 or float32, got "
                        f"{getattr(indices, 'dtype', type(indices).__name__)}")
    return arrays._device(op, "indices", indices, indices.dtype)


def embedding_forward(arrays, indices, table):
    """-> (indices, table (V, D)); y has shape indices.shape + (D,)."""
    op = "embedding_forward"
    table = arrays.float_input(op, "table", table, ndim=2)
    if table.shape[0] < 1 or table.shape[1] < 1:
        raise ValueError(f"{op}: 'table' must have at least one row and column, got shape "
                         f"{tuple(table.shape)}")
    indices = _indices(arrays, op, indices, input_dim_arg(op, table.shape[0]))
    check_count(arrays, op, "output", indices.size * table.shape[1])
    return indices, table


def embedding_backward(arrays, dy, indices, input_dim):
    """-> (dy (M, D) flattened over the index axes, indices, input_dim)."""
    op = "embedding_backward"
    input_dim = input_dim_arg(op, input_dim)
    indices = _indices(arrays, op, indices, input_dim)
    dy = arrays.float_input(op, "dy", dy)
    if dy.ndim != indices.ndim + 1:
        raise ValueError(f"{op}: 'dy' must have shape indices.shape + (D,) = "
                         f"{tuple(indices.shape) + ('D',)}, got {tuple(dy.shape)}")
    check_shape(op, "dy", dy, tuple(indices.shape) + (None,))
    check_count(arrays, op, "dtable", input_dim * dy.shape[-1])
    return dy, indices, input_dim
