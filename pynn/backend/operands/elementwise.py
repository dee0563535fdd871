"""Operands of the elementwise family (native/elementwise.pyx, pynn/backend/opencl/
elementwise.py): pynn.ops' unary and broadcasting binary functions and its axis reductions,
the device side of the autodiff ops (issue 13).

``op`` names come from ``api.ELEMENTWISE_UNARY`` / ``ELEMENTWISE_BINARY`` / ``REDUCTIONS``; the
kernels take its index. At most ``MAX_DIMS`` axes (the OpenCL kernels' scalar arguments).
"""

import operator

import numpy as np

from pynn.backend.api import (
    ELEMENTWISE_BINARY, ELEMENTWISE_UNARY, INTEGER_BINARY, INTEGER_UNARY, REDUCTIONS,
)

MAX_DIMS = 6


def _code(op, name, table, what):
    if name not in table:
        raise ValueError(f"{op}: unknown {what} {name!r}; expected one of {table}")
    return table.index(name)


def _dims(op, name, a):
    if a.ndim > MAX_DIMS:
        raise ValueError(f"{op}: '{name}' must have at most {MAX_DIMS} dimensions, got shape "
                         f"{tuple(a.shape)}")


def elementwise_unary(arrays, x, op):
    """-> (x, code)."""
    x = arrays.float_input("elementwise_unary", "x", x)
    return x, _code("elementwise_unary", op, ELEMENTWISE_UNARY, "unary op")


def broadcast_shape(op, a_shape, b_shape):
    """NumPy's broadcast of two shapes, or an error naming both."""
    n = max(len(a_shape), len(b_shape))
    a = (1,) * (n - len(a_shape)) + tuple(a_shape)
    b = (1,) * (n - len(b_shape)) + tuple(b_shape)
    out = []
    for i, j in zip(a, b):
        if i != j and 1 not in (i, j):
            raise ValueError(f"{op}: shapes {tuple(a_shape)} and {tuple(b_shape)} do not "
                             f"broadcast")
        out.append(j if i == 1 else i)
    return tuple(out)


def walk(shape, out_shape):
    """The strides (elements) of a C-contiguous array of ``shape`` along each axis of the
    broadcast ``out_shape``, 0 where it broadcasts, padded in front to MAX_DIMS."""
    strides = [0] * len(out_shape)
    step, lead = 1, len(out_shape) - len(shape)
    for k in range(len(shape) - 1, -1, -1):
        strides[lead + k] = step if shape[k] != 1 else 0
        step *= shape[k]
    pad = MAX_DIMS - len(out_shape)
    return (1,) * pad + tuple(out_shape), (0,) * pad + tuple(strides)


def elementwise_binary(arrays, a, b, op):
    """-> (a, b, code, output shape): a and b of one float dtype, broadcasting as NumPy."""
    what = "elementwise_binary"
    a = arrays.float_input(what, "a", a)
    b = arrays.float_input(what, "b", b, like=a)
    _dims(what, "a", a)
    _dims(what, "b", b)
    shape = broadcast_shape(what, a.shape, b.shape)
    return a, b, _code(what, op, ELEMENTWISE_BINARY, "binary op"), shape


def reduce_axes(arrays, x, axes, op, keepdims):
    """-> (x, sorted distinct axes, code, output shape)."""
    what = "reduce_axes"
    x = arrays.float_input(what, "x", x)
    _dims(what, "x", x)
    if axes is None:
        axes = tuple(range(x.ndim))
    try:
        axes = (operator.index(axes),) if not isinstance(axes, (tuple, list)) else tuple(
            operator.index(a) for a in axes)
    except TypeError:
        raise ValueError(f"{what}: 'axes' must be None, an int or ints, got {axes!r}") from None
    if any(not -x.ndim <= a < x.ndim for a in axes) or (x.ndim == 0 and axes):
        raise ValueError(f"{what}: axes {axes} out of range for shape {tuple(x.shape)}")
    axes = tuple(sorted({a % x.ndim for a in axes})) if x.ndim else ()
    if any(x.shape[a] == 0 for a in axes) and op in ("max", "min"):
        raise ValueError(f"{what}: {op} over an empty axis of shape {tuple(x.shape)}")
    code = _code(what, op, REDUCTIONS, "reduction")
    shape = tuple(1 if k in axes else d for k, d in enumerate(x.shape)) if keepdims else \
        tuple(d for k, d in enumerate(x.shape) if k not in axes)
    return x, axes, code, shape


# -- opsm: integer ops (bitwise, shifts, gcd/lcm) --------------------------------------------
from pynn.backend.operands.common import HOST  # noqa: E402

INTEGER_DTYPES = ("int32", "int64")


def _integer_operand(arrays, op, name, a, like=None):
    """An int32/int64 operand (int32 on a device); anything else is refused by name."""
    dtype = getattr(a, "dtype", None)
    if dtype is None:
        dtype = np.asarray(a).dtype
    dtype = np.dtype(dtype)
    if dtype.name not in INTEGER_DTYPES:
        raise TypeError(f"{op}: '{name}' must be int32 or int64, got dtype {dtype}")
    if arrays is not HOST:  # the device's integers are int32 (range-checked on upload)
        return arrays.int_input(op, name, a)
    if like is not None and dtype != np.dtype(like.dtype):
        raise TypeError(f"{op}: '{name}' must have a's dtype {like.dtype}, got {dtype}")
    return np.ascontiguousarray(a)


def integer_binary(arrays, a, b, op):
    """-> (a, b, code, output shape): a and b of one integer dtype, broadcasting as NumPy."""
    what = "integer_binary"
    a = _integer_operand(arrays, what, "a", a)
    b = _integer_operand(arrays, what, "b", b, like=a)
    _dims(what, "a", a)
    _dims(what, "b", b)
    shape = broadcast_shape(what, a.shape, b.shape)
    return a, b, _code(what, op, INTEGER_BINARY, "integer op"), shape


def integer_unary(arrays, x, op):
    """-> (x, code)."""
    x = _integer_operand(arrays, "integer_unary", "x", x)
    return x, _code("integer_unary", op, INTEGER_UNARY, "integer op")
