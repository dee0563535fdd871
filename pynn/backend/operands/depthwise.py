"""Operands of the depthwise ops (native/depthwise.pyx, pynn/backend/opencl/depthwise.py).

Each returns the checked arrays and the geometry ``g``: conv2d's (``common.conv_geometry``,
Keras's 'same'/'valid' rules) with the kernel (KH, KW, C, M) read as a conv kernel of M
filters, plus M (the depth multiplier); the output has C*M channels.
"""

from pynn.backend.operands.activation import activation_pair
from pynn.backend.operands.common import check_count, check_shape, conv_geometry, shape4


def _geometry(arrays, op, input_shape, kernel_shape, strides, padding, dilation_rate):
    g = conv_geometry(op, input_shape, kernel_shape, strides, padding, dilation_rate)
    g["M"] = g.pop("F")
    check_count(arrays, op, "input", g["N"] * g["H"] * g["W"] * g["C"])
    check_count(arrays, op, "output", g["N"] * g["HO"] * g["WO"] * g["C"] * g["M"])
    return g


def _output_grad(op, dz, g):
    check_shape(op, "dz", dz, (g["N"], g["HO"], g["WO"], g["C"] * g["M"]))


def depthwise_conv2d_forward(arrays, x, kernel, bias, strides, padding, dilation_rate,
                             activation, alpha):
    """-> (name, alpha, x, kernel, bias or None, g)."""
    op = "depthwise_conv2d_forward"
    name, a = activation_pair(op, activation, alpha)
    x = arrays.float_input(op, "x", x, ndim=4)
    kernel = arrays.float_input(op, "kernel", kernel, ndim=4, like=x)
    g = _geometry(arrays, op, x.shape, kernel.shape, strides, padding, dilation_rate)
    if bias is not None:
        bias = arrays.float_input(op, "bias", bias, ndim=1, like=x)
        check_shape(op, "bias", bias, (g["C"] * g["M"],))
    return name, a, x, kernel, bias, g


def depthwise_conv2d_backward_input(arrays, dz, kernel, input_shape, strides, padding,
                                    dilation_rate):
    """-> (dz, kernel, input_shape, g)."""
    op = "depthwise_conv2d_backward_input"
    dz = arrays.float_input(op, "dz", dz, ndim=4)
    kernel = arrays.float_input(op, "kernel", kernel, ndim=4, like=dz)
    input_shape = shape4(op, "input_shape", input_shape)
    g = _geometry(arrays, op, input_shape, kernel.shape, strides, padding, dilation_rate)
    _output_grad(op, dz, g)
    return dz, kernel, input_shape, g


def depthwise_conv2d_backward_weight(arrays, x, dz, kernel_shape, strides, padding,
                                     dilation_rate):
    """-> (x, dz, kernel_shape, g)."""
    op = "depthwise_conv2d_backward_weight"
    x = arrays.float_input(op, "x", x, ndim=4)
    dz = arrays.float_input(op, "dz", dz, ndim=4, like=x)
    kernel_shape = shape4(op, "kernel_shape", kernel_shape)
    g = _geometry(arrays, op, x.shape, kernel_shape, strides, padding, dilation_rate)
    _output_grad(op, dz, g)
    return x, dz, kernel_shape, g
