"""OpenCL elementwise ops (issue 13): the host side of ``opencl/elementwise.cl``.

Same names, signatures and semantics as ``native/elementwise.pyx``; operands are checked by
``pynn.backend.operands.elementwise``. float32 only (the OpenCL backend's dtype).
"""

import numpy as np

from pynn.backend.opencl import runtime as rt
from pynn.backend.opencl.arrays import DEVICE
from pynn.backend.opencl.launch import elementwise
from pynn.backend.opencl.shape import transpose_forward
from pynn.backend.operands import elementwise as operands


def elementwise_unary(x, op):
    """y = op(x) elementwise."""
    x, code = operands.elementwise_unary(DEVICE, x, op)
    y = rt.empty(tuple(x.shape), what="elementwise_unary output")
    elementwise("elementwise", "elementwise_unary", y.size, x, y, y.size, code)
    return y


def elementwise_binary(a, b, op):
    """y = op(a, b), broadcasting as NumPy."""
    a, b, code, shape = operands.elementwise_binary(DEVICE, a, b, op)
    y = rt.empty(shape, what="elementwise_binary output")
    dims, sa = operands.walk(tuple(a.shape), shape)
    _, sb = operands.walk(tuple(b.shape), shape)
    elementwise("elementwise", "elementwise_binary", y.size, a, b, y, y.size, code, *dims,
                *sa, *sb)
    return y


def reduce_axes(x, axes, op, keepdims=False):
    """op over ``axes`` (None: every axis): the reduced axes moved last on the device (the
    shape family's transpose kernel), then one work-item folds each contiguous run."""
    x, axes, code, shape = operands.reduce_axes(DEVICE, x, axes, op, keepdims)
    kept = [k for k in range(x.ndim) if k not in axes]
    perm = kept + list(axes)
    moved = x if perm == list(range(x.ndim)) or x.ndim < 2 else transpose_forward(x, perm)
    inner = 1
    for k in axes:
        inner *= x.shape[k]
    y = rt.empty(shape, what="reduce_axes output")
    if y.size:
        elementwise("elementwise", "reduce_rows", y.size, moved, y, y.size, inner, code)
    return y


# -- opsm: integer ops (bitwise, shifts, gcd/lcm) on int32 ---------------------------------
def integer_binary(a, b, op):
    """y = op(a, b) on int32, broadcasting as NumPy."""
    a, b, code, shape = operands.integer_binary(DEVICE, a, b, op)
    y = rt.empty(shape, np.int32, what="integer_binary output")
    dims, sa = operands.walk(tuple(a.shape), shape)
    _, sb = operands.walk(tuple(b.shape), shape)
    if y.size:
        elementwise("elementwise", "integer_binary", y.size, a, b, y, y.size, code, *dims,
                    *sa, *sb)
    return y


def integer_unary(x, op):
    """y = op(x) on int32: invert is x xor -1 (the binary kernel against a broadcast -1)."""
    x, _ = operands.integer_unary(DEVICE, x, op)
    return integer_binary(x, rt.to_device(np.full((), -1, np.int32)), "bitwise_xor")
