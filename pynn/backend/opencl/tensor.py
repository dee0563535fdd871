"""Host side of ``opencl/tensor.cl``: the device forms of pynn.ops' indexing, selection,
casting and batched-product ops (issue 13), called by ``pynn.ops.device`` only.

These are not rows of the backend op table: on the CPU the same ops are NumPy expressions
(pynn/ops/numpy_ops.py), which are also what the tests compare these with. Arguments are
device arrays already checked by pynn.ops.device; indices are int32 device arrays.
"""

import numpy as np

from pynn.backend.opencl import runtime as rt
from pynn.backend.opencl.launch import elementwise

MAX_DIMS = 6
BMM_TILE = 16  # BMM_TILE of tensor.cl


def _pad(dims, strides):
    pad = MAX_DIMS - len(dims)
    return (1,) * pad + tuple(int(d) for d in dims), (0,) * pad + tuple(int(s) for s in strides)


def contiguous_strides(shape):
    strides, step = [], 1
    for d in reversed(shape):
        strides.append(step)
        step *= int(d)
    return tuple(reversed(strides))


def strided_copy(x, offset, shape, strides):
    """The view of contiguous ``x`` at ``offset`` (elements) with ``strides``, as a new array."""
    if len(shape) > MAX_DIMS:
        raise ValueError(f"strided_copy: at most {MAX_DIMS} dimensions, got {tuple(shape)}")
    y = rt.empty(tuple(shape), what="strided_copy output")
    dims, steps = _pad(shape, strides)
    elementwise("tensor", "strided_copy", y.size, x, y, y.size, int(offset), *dims, *steps)
    return y


def strided_scatter(dy, x_shape, offset, strides):
    """The gradient of a view touching each element once: zeros of ``x_shape`` holding dy
    at the viewed places."""
    dx = rt.zeros(tuple(x_shape), what="strided_scatter output")
    dims, steps = _pad(dy.shape, strides)
    elementwise("tensor", "strided_scatter", dy.size, dy, dx, dy.size, int(offset), *dims,
                *steps)
    return dx


def where_select(c, a, b, shape, c_strides, a_strides, b_strides):
    y = rt.empty(tuple(shape), what="where output")
    dims, sc = _pad(shape, c_strides)
    _, sa = _pad(shape, a_strides)
    _, sb = _pad(shape, b_strides)
    elementwise("tensor", "where_select", y.size, c, a, b, y, y.size, *dims, *sc, *sa, *sb)
    return y


def gather_axis(x, idx, outer, length, inner, count, idx_strides):
    """x viewed (outer, length, inner) -> (outer, count, inner), flat."""
    y = rt.empty((outer * count * inner,), what="gather_axis output")
    elementwise("tensor", "gather_axis", y.size, x, idx, y, y.size, length, count, inner,
                *idx_strides)
    return y


def gather_axis_backward(dy, idx, outer, length, inner, count, idx_strides):
    dx = rt.empty((outer * length * inner,), what="gather_axis_backward output")
    elementwise("tensor", "gather_axis_backward", dx.size, dy, idx, dx, dx.size, length,
                count, inner, *idx_strides)
    return dx


def one_hot(idx, classes):
    y = rt.empty(tuple(idx.shape) + (int(classes),), what="one_hot output")
    elementwise("tensor", "one_hot", y.size, idx, y, y.size, int(classes))
    return y


def arg_reduce_rows(x, outer, inner, which):
    """Per contiguous row of ``inner`` values: the index of its max ("argmax") or min."""
    y = rt.empty((outer,), np.int32, what=f"{which} output")
    elementwise("tensor", "arg_reduce_rows", outer, x, y, outer, inner,
                0 if which == "argmax" else 1)
    return y


def prod_backward_rows(x, g, outer, inner):
    dx = rt.empty(tuple(x.shape), what="prod gradient")
    elementwise("tensor", "prod_backward_rows", outer, x, g, dx, outer, inner)
    return dx


def cast(x, dtype):
    """float32 <-> int32 on the device (truncating toward zero, as NumPy's astype)."""
    dtype = np.dtype(dtype)
    if x.dtype == dtype:
        return x.copy()
    name = {(np.float32, np.int32): "cast_float_to_int",
            (np.int32, np.float32): "cast_int_to_float"}.get((x.dtype.type, dtype.type))
    if name is None:
        raise TypeError(f"pynn.ops.cast: the OpenCL backend casts between float32 and int32, "
                        f"got {x.dtype} -> {dtype}")
    y = rt.empty(tuple(x.shape), dtype, what="cast output")
    elementwise("tensor", name, y.size, x, y, y.size)
    return y


def batched_matmul(a, c, batch, m, n, k, a_shared, c_shared):
    """(batch, m, k) @ (batch, k, n) -> (batch, m, n); a ``*_shared`` operand is one matrix
    used by every product (batch stride 0)."""
    y = rt.empty((batch, m, n), what="batched_matmul output")
    rt.launch(rt.kernel("tensor", "batched_matmul"), (n, m, batch), (BMM_TILE, BMM_TILE, 1),
              a, c, y, m, n, k, 0 if a_shared else m * k, 0 if c_shared else k * n)
    return y


# -- issue 13's last elementwise ops (booleans as float 0/1, like the comparisons) ---------
BROADCAST_BINARY = ("logical_and", "logical_or", "logical_xor", "not_equal", "floor_divide",
                    "mod")
PREDICATES = ("logical_not", "isnan", "isfinite", "nonzero")


def broadcast_binary(a, c, name, shape, a_strides, c_strides):
    y = rt.empty(tuple(shape), what=f"{name} output")
    dims, sa = _pad(shape, a_strides)
    _, sc = _pad(shape, c_strides)
    elementwise("tensor", "broadcast_binary", y.size, a, c, y, y.size,
                BROADCAST_BINARY.index(name), *dims, *sa, *sc)
    return y


def predicate(x, name):
    y = rt.empty(tuple(x.shape), what=f"{name} output")
    elementwise("tensor", "predicate", y.size, x, y, y.size, PREDICATES.index(name))
    return y
