"""OpenCL activation ops: the host side of ``opencl/activation.cl`` (elementwise and
softmax rows) and of the fused activation + bias gradient in ``opencl/reduce.cl``.

Same names, signatures and semantics as ``native/activation.pyx``; operands are checked by
``pynn.backend.operands.activation``.
"""

import numpy as np

from pynn.backend.api import ACTIVATIONS, ACTIVATIONS_NEEDING_INPUT, ACTIVATIONS_ON_ROWS
from pynn.backend.opencl import runtime as rt
from pynn.backend.opencl.arrays import DEVICE
from pynn.backend.opencl.gemm import REDUCE_WG, column_chunks, column_sums, sum_slots
from pynn.backend.opencl.launch import elementwise, kernel, sizes
from pynn.backend.operands import activation as operands


def _softmax_rows(a):
    k = a.shape[a.ndim - 1]
    return a.size // k, k


def activation_forward(x, activation, alpha=0.0):
    """y = activation(x), same shape as x (softmax over the last axis)."""
    op = "activation_forward"
    name, a, x = operands.activation_forward(DEVICE, x, activation, alpha)
    shape = tuple(x.shape)
    if name == "glu":
        shape = shape[:-1] + (shape[-1] // 2,)
    y = rt.empty(shape, what=f"{op} output")
    if y.size == 0:
        return y
    if name in ACTIVATIONS_ON_ROWS:
        rows, k = _softmax_rows(x)
        elementwise("activation", "row_activation_forward", rows, x, y, rows, k,
                    ACTIVATIONS.index(name))
    elif name == "softmax":
        rows, k = _softmax_rows(x)
        row_wg = sizes()[1]
        rt.launch(kernel("activation", "softmax_forward"), (rows * row_wg,), (row_wg,), x, y,
                  rows, k)
    else:
        elementwise("activation", "activation_forward", x.size, x, y, x.size,
                    ACTIVATIONS.index(name), a)
    return y


def activation_backward(dy, x, y, activation, alpha=0.0):
    """dL/dx from dL/dy; ``y`` is the forward output, ``x`` the pre-activation (needed by
    ACTIVATIONS_NEEDING_INPUT only, otherwise checked when given)."""
    op = "activation_backward"
    name, a, dy, x, y = operands.activation_backward(DEVICE, dy, x, y, activation, alpha)
    dx = rt.empty(tuple(x.shape) if name == "glu" else dy.shape, what=f"{op} output")
    if dx.size == 0:
        return dx
    if name in ACTIVATIONS_ON_ROWS:
        rows, k = _softmax_rows(dx)
        elementwise("activation", "row_activation_backward", rows, dy,
                    y if name == "log_softmax" else x, dx, rows, k, ACTIVATIONS.index(name))
        return dx
    if name == "softmax":
        rows, k = _softmax_rows(dy)
        row_wg = sizes()[1]
        rt.launch(kernel("activation", "softmax_backward"), (rows * row_wg,), (row_wg,), dy,
                  y, dx, rows, k)
        return dx
    # The kernel reads x only for ACTIVATIONS_NEEDING_INPUT, y for the others: the unused
    # one may alias.
    elementwise("activation", "activation_backward", dy.size, dy,
                x if x is not None else y, y if y is not None else x, dx, dy.size,
                ACTIVATIONS.index(name), a)
    return dx


def activation_bias_backward(dy, x, y, activation, alpha=0.0):
    """(dz, db): dz = activation_backward(dy, x, y, activation, alpha) and db =
    bias_backward(dz), the activation gradient computed inside the first pass of the column
    sums (softmax, a row op, runs the two ops in turn). Operands as activation_backward."""
    op = "activation_bias_backward"
    name, a, dy, x, y = operands.activation_bias_backward(DEVICE, dy, x, y, activation, alpha)
    if name == "softmax":
        dz = activation_backward(dy, x, y, name, a)
        return dz, column_sums(op, dz)
    cols = dy.shape[dy.ndim - 1]
    rows = dy.size // cols if cols else 0
    dz = rt.empty(dy.shape, np.float32, f"{op} output")
    db = rt.empty((cols,), np.float32, f"{op} bias gradient")
    if cols == 0:
        return dz, db
    if rows == 0:
        db.fill(0)
        return dz, db
    chunk_rows, chunks = column_chunks(rows)
    partial = rt.empty((chunks, cols), np.float32, f"{op} partials")
    knl = rt.kernel("reduce", "activation_bias_backward_partial")
    # The kernel reads x only for ACTIVATIONS_NEEDING_INPUT, y for the others: the unused
    # one may alias.
    rt.launch(knl, (cols, chunks), (REDUCE_WG, 1), rows, cols, chunk_rows, dy,
              x if x is not None else y, y if y is not None else x, dz, partial,
              ACTIVATIONS.index(name), a)
    sum_slots(partial, chunks, cols, out=db)
    return dz, db


def pooled_activation_bias_backward(dpool, argmax, pooled, y, pool_size, strides,
                                    padding="valid", activation="relu", alpha=0.0):
    """(dz, db): opencl/pool.cl's maxpool2d_backward, then activation_bias_backward above
    (no fused kernel; pooled is not read). Operands as the CPU op's."""
    from pynn.backend.opencl.pool import maxpool2d_backward

    name, a, dpool, argmax, pooled, y, _ = operands.pooled_activation_bias_backward(
        DEVICE, dpool, argmax, pooled, y, pool_size, strides, padding, activation, alpha)
    return activation_bias_backward(maxpool2d_backward(dpool, argmax, tuple(y.shape)), None, y,
                                    name, a)


def fused_epilogue(op, name, z_shape):
    """(y, z, kernel code, softmax-after) of a GEMM whose epilogue applies the activation:
    softmax runs as its own row op after a linear epilogue; ACTIVATIONS_NEEDING_INPUT keep z."""
    if name == "softmax":
        z = rt.empty(z_shape, np.float32, f"{op} pre-activation")
        return z, None, ACTIVATIONS.index("linear"), True
    y = rt.empty(z_shape, np.float32, f"{op} output")
    z = rt.empty(z_shape, np.float32, f"{op} pre-activation") if (
        name in ACTIVATIONS_NEEDING_INPUT) else None
    return y, z, ACTIVATIONS.index(name), False


# -- issue 12: the activation layers' parametrized ops (opencl/activation.cl) -------------
def relu_forward(x, max_value=None, negative_slope=0.0, threshold=0.0):
    """Keras 3's parametrized relu; max_value None means no cap."""
    mv, s, t, x = operands.relu_forward(DEVICE, x, max_value, negative_slope, threshold)
    y = rt.empty(x.shape, what="relu_forward output")
    elementwise("activation", "relu_forward", x.size, x, y, x.size, np.float32(mv),
                np.float32(s), np.float32(t))
    return y


def relu_backward(dy, x, max_value=None, negative_slope=0.0, threshold=0.0):
    """dL/dx of relu_forward from dL/dy and the forward input x."""
    mv, s, t, dy, x = operands.relu_backward(DEVICE, dy, x, max_value, negative_slope,
                                             threshold)
    dx = rt.empty(dy.shape, what="relu_backward output")
    elementwise("activation", "relu_backward", dy.size, dy, x, dx, dy.size, np.float32(mv),
                np.float32(s), np.float32(t))
    return dx


def _int4(values):
    """Four ints as an OpenCL int4 kernel argument (prelu's merged groups)."""
    from pyopencl import cltypes

    return np.array(values, dtype=np.int32).view(cltypes.int4)[0]


def prelu_forward(x, alpha):
    """y = x where x > 0, else alpha * x (alpha broadcast over the batch and shared axes)."""
    x, alpha, dims, strides = operands.prelu_forward(DEVICE, x, alpha)
    y = rt.empty(x.shape, what="prelu_forward output")
    cols = x.size // x.shape[0] if x.shape[0] else 1
    elementwise("activation", "prelu_forward", x.size, x, alpha, y, x.size, cols,
                _int4(dims), _int4(strides))
    return y


def prelu_backward(dy, x, alpha, need_input_grad=True):
    """(dx or None, dalpha), dalpha summed per alpha element in a fixed order."""
    dy, x, alpha, dims, strides = operands.prelu_backward(DEVICE, dy, x, alpha)
    rows = x.shape[0]
    cols = x.size // rows if rows else 1
    dx = None
    if need_input_grad:
        dx = rt.empty(dy.shape, what="prelu_backward input gradient")
        elementwise("activation", "prelu_backward_input", dy.size, dy, x, alpha, dx, dy.size,
                    cols, _int4(dims), _int4(strides))
    dalpha = rt.empty(alpha.shape, what="prelu_backward alpha gradient")
    elementwise("activation", "prelu_backward_alpha", alpha.size, dy, x, dalpha, alpha.size,
                rows, cols, _int4(dims), _int4(strides))
    return dx, dalpha


def softmax_forward(x, axis=-1):
    """Softmax along ``axis``: the row kernel on the last axis, strided lines elsewhere."""
    x, (outer, k, inner) = operands.softmax_forward(DEVICE, x, axis)
    if inner == 1:
        return activation_forward(x, "softmax")
    y = rt.empty(x.shape, what="softmax_forward output")
    elementwise("activation", "softmax_lines_forward", outer * inner, x, y, outer * inner, k,
                inner)
    return y


def softmax_backward(dy, y, axis=-1):
    """dL/dx of softmax_forward from dL/dy and its output y."""
    dy, y, (outer, k, inner) = operands.softmax_backward(DEVICE, dy, y, axis)
    if inner == 1:
        return activation_backward(dy, None, y, "softmax")
    dx = rt.empty(dy.shape, what="softmax_backward output")
    elementwise("activation", "softmax_lines_backward", outer * inner, dy, y, dx,
                outer * inner, k, inner)
    return dx
