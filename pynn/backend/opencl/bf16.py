"""OpenCL bfloat16 mixed-precision ops (issue 17): the host side of ``opencl/bf16.cl``.

Same names, signatures and numerics as ``native/bf16.pyx``: the GEMM operands are rounded
to bfloat16 on the device (``bf16_round``), then the float32 dense and conv kernels multiply
them and sum in float32. The float32 twins are reused because the math after the rounding is
theirs; the rounding costs one pass over each operand. Operands are checked by
``pynn.backend.operands.bf16``.
"""

import numpy as np

from pynn.backend.opencl import conv, dense
from pynn.backend.opencl import runtime as rt
from pynn.backend.opencl.arrays import DEVICE
from pynn.backend.opencl.launch import elementwise
from pynn.backend.operands import bf16 as operands
from pynn.mixed_precision import NARROW_CHANNELS


def _rounded(x):
    y = rt.empty(x.shape, np.float32, "bf16_round output")
    if x.size:
        elementwise("bf16", "bf16_round", x.size, x, y, x.size)
    return y


def bf16_round(x):
    """float32 x with every value rounded to the nearest bfloat16 (ties to even)."""
    return _rounded(operands.bf16_round(DEVICE, x))


def bf16_dense_forward(x, kernel, bias, activation="linear", alpha=0.0):
    """y = act(bf16(x) @ bf16(kernel) + bias) -> (y, z) as dense_forward."""
    name, alpha, x, kernel, bias = operands.bf16_dense_forward(DEVICE, x, kernel, bias,
                                                               activation, alpha)
    return dense.dense_forward(_rounded(x), _rounded(kernel), bias, name, alpha)


def bf16_dense_backward_input(dz, kernel):
    """dx = bf16(dz) @ bf16(kernel).T, shape (N, C)."""
    dz, kernel = operands.bf16_dense_backward_input(DEVICE, dz, kernel)
    return dense.dense_backward_input(_rounded(dz), _rounded(kernel))


def bf16_dense_backward_weight(x, dz):
    """dkernel = bf16(x).T @ bf16(dz), shape (C, U)."""
    x, dz = operands.bf16_dense_backward_weight(DEVICE, x, dz)
    return dense.dense_backward_weight(_rounded(x), _rounded(dz))


def bf16_conv2d_forward(x, kernel, bias, strides=(1, 1), padding="valid",
                        dilation_rate=(1, 1), activation="linear", alpha=0.0):
    """(y, z) as conv2d_forward, the product on bf16-rounded x and kernel."""
    name, alpha, x, kernel, bias, _ = operands.bf16_conv2d_forward(
        DEVICE, x, kernel, bias, strides, padding, dilation_rate, activation, alpha)
    return conv.conv2d_forward(_rounded(x), _rounded(kernel), bias, strides, padding,
                               dilation_rate, name, alpha)


def bf16_conv2d_backward_input(dz, kernel, input_shape, strides=(1, 1), padding="valid",
                               dilation_rate=(1, 1)):
    """dx (N, H, W, C) as conv2d_backward_input, from bf16-rounded dz and kernel."""
    dz, kernel, input_shape, _ = operands.bf16_conv2d_backward_input(
        DEVICE, dz, kernel, input_shape, strides, padding, dilation_rate)
    return conv.conv2d_backward_input(_rounded(dz), _rounded(kernel), input_shape, strides,
                                      padding, dilation_rate)


def bf16_conv2d_backward_weight(x, dz, kernel_shape, strides=(1, 1), padding="valid",
                                dilation_rate=(1, 1)):
    """dkernel (KH, KW, C, F) as conv2d_backward_weight, from bf16-rounded x and dz."""
    x, dz, kernel_shape, _ = operands.bf16_conv2d_backward_weight(
        DEVICE, x, dz, kernel_shape, strides, padding, dilation_rate)
    return conv.conv2d_backward_weight(_rounded(x), _rounded(dz), kernel_shape, strides,
                                       padding, dilation_rate)


def bf16_conv2d_pool_forward(x, kernel, bias, strides=(1, 1), padding="valid",
                             dilation_rate=(1, 1), activation="linear", alpha=0.0,
                             pool_size=(2, 2), pool_strides=(2, 2), pool_padding="valid"):
    """(pooled, argmax) as conv2d_pool_forward, the product on bf16-rounded x and kernel."""
    name, alpha, x, kernel, bias, _, _ = operands.bf16_conv2d_pool_forward(
        DEVICE, x, kernel, bias, strides, padding, dilation_rate, activation, alpha, pool_size,
        pool_strides, pool_padding)
    return conv.conv2d_pool_forward(_rounded(x), _rounded(kernel), bias, strides, padding,
                                    dilation_rate, name, alpha, pool_size, pool_strides,
                                    pool_padding)


def bf16_conv2d_pool_backward(dpool, argmax, pooled, x, z, y, kernel, strides=(1, 1),
                              padding="valid", dilation_rate=(1, 1), activation="linear",
                              alpha=0.0, use_bias=True, need_input_grad=True, pool_size=(2, 2),
                              pool_strides=(2, 2), pool_padding="valid"):
    """(dx or None, dkernel, dbias or None) as conv2d_pool_backward with dpool, x and kernel
    rounded to bf16."""
    name, alpha, dpool, argmax, pooled, x, z, y, kernel, g, _ = \
        operands.bf16_conv2d_pool_backward(DEVICE, dpool, argmax, pooled, x, z, y, kernel,
                                           strides, padding, dilation_rate, activation, alpha,
                                           pool_size, pool_strides, pool_padding)
    if g["C"] >= NARROW_CHANNELS:
        # a wide conv as the CPU's: dz and the bias gradient in float32, the products on
        # rounded dz (the wide layers' separate road)
        from pynn.backend.opencl.activation import activation_backward, activation_bias_backward
        from pynn.backend.opencl.dense import bias_backward
        from pynn.backend.opencl.pool import maxpool2d_backward

        shape = (g["N"], g["HO"], g["WO"], g["F"])
        if name == "relu" and y is None:
            dz = maxpool2d_backward(activation_backward(dpool, None, pooled, "relu", 0.0),
                                    argmax, shape)
            db = bias_backward(dz) if use_bias else None
        elif name == "linear":
            dz = maxpool2d_backward(dpool, argmax, shape)
            db = bias_backward(dz) if use_bias else None
        else:
            if y is None:
                raise ValueError(f"bf16_conv2d_pool_backward: y (the conv's output) is needed "
                                 f"for '{name}' without the pool's output; got None")
            dz, db = activation_bias_backward(maxpool2d_backward(dpool, argmax, shape), z, y,
                                              name, alpha)
        dk = bf16_conv2d_backward_weight(x, dz, tuple(kernel.shape), strides, padding,
                                         dilation_rate)
        dx = (bf16_conv2d_backward_input(dz, kernel, tuple(x.shape), strides, padding,
                                         dilation_rate) if need_input_grad else None)
        return dx, dk, (db if use_bias else None)
    return conv.conv2d_pool_backward(_rounded(dpool), argmax, pooled, _rounded(x), z, y,
                                     _rounded(kernel), strides, padding, dilation_rate, name,
                                     alpha, use_bias, need_input_grad, pool_size, pool_strides,
                                     pool_padding)
