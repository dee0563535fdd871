"""Operands of the bfloat16 mixed-precision ops (native/bf16.pyx, pynn/backend/opencl/bf16.py).

Each op takes the operands of its float32 twin (dense_forward, conv2d_backward_input, ...)
under its own name, and float32 only: bf16 is a compute precision of float32 variables
(Keras's mixed_bfloat16), never a storage dtype of pynn arrays.
"""

import numpy as np

from pynn.backend.operands.activation import activation_pair
from pynn.backend.operands.common import check_count, check_shape, conv_geometry, shape4
from pynn.backend.operands.conv import (_check_sizes, _output_grad, conv2d_pool_backward,
                                        conv2d_pool_forward)


def _float32(arrays, op, name, a, ndim=None, like=None):
    a = arrays.float_input(op, name, a, ndim=ndim, like=like)
    if a.dtype != np.float32:
        raise TypeError(f"{op}: '{name}' must be float32 (bf16 rounds float32 operands), got "
                        f"{a.dtype}")
    return a


def bf16_round(arrays, x):
    return _float32(arrays, "bf16_round", "x", x)


def bf16_dense_forward(arrays, x, kernel, bias, activation, alpha):
    """-> (name, alpha, x (N, C), kernel (C, U), bias (U,) or None)."""
    op = "bf16_dense_forward"
    name, a = activation_pair(op, activation, alpha)
    x = _float32(arrays, op, "x", x, ndim=2)
    kernel = _float32(arrays, op, "kernel", kernel, ndim=2, like=x)
    check_shape(op, "kernel", kernel, (x.shape[1], None))
    if bias is not None:
        bias = _float32(arrays, op, "bias", bias, ndim=1, like=x)
        check_shape(op, "bias", bias, (kernel.shape[1],))
    check_count(arrays, op, "output", x.shape[0] * kernel.shape[1])
    return name, a, x, kernel, bias


def bf16_dense_backward_input(arrays, dz, kernel):
    """-> (dz (N, U), kernel (C, U))."""
    op = "bf16_dense_backward_input"
    dz = _float32(arrays, op, "dz", dz, ndim=2)
    kernel = _float32(arrays, op, "kernel", kernel, ndim=2, like=dz)
    check_shape(op, "kernel", kernel, (None, dz.shape[1]))
    check_count(arrays, op, "output", dz.shape[0] * kernel.shape[0])
    return dz, kernel


def bf16_dense_backward_weight(arrays, x, dz):
    """-> (x (N, C), dz (N, U))."""
    op = "bf16_dense_backward_weight"
    x = _float32(arrays, op, "x", x, ndim=2)
    dz = _float32(arrays, op, "dz", dz, ndim=2, like=x)
    check_shape(op, "dz", dz, (x.shape[0], None))
    check_count(arrays, op, "output", x.shape[1] * dz.shape[1])
    return x, dz


def bf16_conv2d_forward(arrays, x, kernel, bias, strides, padding, dilation_rate, activation,
                        alpha):
    """-> (name, alpha, x, kernel, bias or None, g) with g of common.conv_geometry."""
    op = "bf16_conv2d_forward"
    name, a = activation_pair(op, activation, alpha)
    x = _float32(arrays, op, "x", x, ndim=4)
    kernel = _float32(arrays, op, "kernel", kernel, ndim=4, like=x)
    g = conv_geometry(op, x.shape, kernel.shape, strides, padding, dilation_rate)
    if bias is not None:
        bias = _float32(arrays, op, "bias", bias, ndim=1, like=x)
        check_shape(op, "bias", bias, (g["F"],))
    _check_sizes(arrays, op, g)
    return name, a, x, kernel, bias, g


def bf16_conv2d_backward_input(arrays, dz, kernel, input_shape, strides, padding,
                               dilation_rate):
    """-> (dz, kernel, input_shape, g)."""
    op = "bf16_conv2d_backward_input"
    dz = _float32(arrays, op, "dz", dz, ndim=4)
    kernel = _float32(arrays, op, "kernel", kernel, ndim=4, like=dz)
    input_shape = shape4(op, "input_shape", input_shape)
    g = conv_geometry(op, input_shape, kernel.shape, strides, padding, dilation_rate)
    _output_grad(op, "dz", dz, g)
    _check_sizes(arrays, op, g)
    return dz, kernel, input_shape, g


def bf16_conv2d_backward_weight(arrays, x, dz, kernel_shape, strides, padding, dilation_rate):
    """-> (x, dz, kernel_shape, g)."""
    op = "bf16_conv2d_backward_weight"
    x = _float32(arrays, op, "x", x, ndim=4)
    dz = _float32(arrays, op, "dz", dz, ndim=4, like=x)
    kernel_shape = shape4(op, "kernel_shape", kernel_shape)
    g = conv_geometry(op, x.shape, kernel_shape, strides, padding, dilation_rate)
    _output_grad(op, "dz", dz, g)
    _check_sizes(arrays, op, g)
    return x, dz, kernel_shape, g


def bf16_conv2d_pool_forward(arrays, x, kernel, bias, strides, padding, dilation_rate,
                             activation, alpha, pool_size, pool_strides, pool_padding):
    """-> conv2d_pool_forward's (name, alpha, x, kernel, bias or None, g, pg), float32."""
    op = "bf16_conv2d_pool_forward"
    x = _float32(arrays, op, "x", x, ndim=4)
    kernel = _float32(arrays, op, "kernel", kernel, ndim=4, like=x)
    if bias is not None:
        bias = _float32(arrays, op, "bias", bias, ndim=1, like=x)
    return conv2d_pool_forward(arrays, x, kernel, bias, strides, padding, dilation_rate,
                               activation, alpha, pool_size, pool_strides, pool_padding, op=op)


def bf16_conv2d_pool_backward(arrays, dpool, argmax, pooled, x, z, y, kernel, strides, padding,
                              dilation_rate, activation, alpha, pool_size, pool_strides,
                              pool_padding):
    """-> conv2d_pool_backward's (name, alpha, dpool, argmax, pooled, x, z, y, kernel, g, pg),
    float32."""
    op = "bf16_conv2d_pool_backward"
    x = _float32(arrays, op, "x", x, ndim=4)
    kernel = _float32(arrays, op, "kernel", kernel, ndim=4, like=x)
    dpool = _float32(arrays, op, "dpool", dpool, ndim=4, like=x)
    return conv2d_pool_backward(arrays, dpool, argmax, pooled, x, z, y, kernel, strides,
                                padding, dilation_rate, activation, alpha, pool_size,
                                pool_strides, pool_padding, op=op)
