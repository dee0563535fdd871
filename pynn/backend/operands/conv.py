"""Operands of the conv ops (native/conv.pyx, pynn/backend/opencl/conv.py).

Each returns the checked arrays and the geometry ``g`` of ``common.conv_geometry`` (sizes,
strides, dilation, leading pads PT/PL, output HO/WO, Keras's 'same'/'valid' rules).
"""

from pynn.backend.operands.activation import activation_backward, activation_pair
from pynn.backend.operands.common import (
    check_count, check_shape, conv_geometry, shape4,
)


def _check_sizes(arrays, op, g):
    """The implicit-GEMM extents a backend must be able to index."""
    check_count(arrays, op, "input", g["N"] * g["H"] * g["W"] * g["C"])
    check_count(arrays, op, "output", g["N"] * g["HO"] * g["WO"] * g["F"])
    check_count(arrays, op, "patch matrix rows", g["N"] * max(g["HO"] * g["WO"], g["H"] * g["W"]))
    check_count(arrays, op, "reduction", g["KH"] * g["KW"] * max(g["C"], g["F"]))


def _output_grad(op, name, a, g):
    check_shape(op, name, a, (g["N"], g["HO"], g["WO"], g["F"]))


def conv2d_forward(arrays, x, kernel, bias, strides, padding, dilation_rate, activation,
                   alpha):
    """-> (name, alpha, x, kernel, bias or None, g)."""
    op = "conv2d_forward"
    name, a = activation_pair(op, activation, alpha)
    x = arrays.float_input(op, "x", x, ndim=4)
    kernel = arrays.float_input(op, "kernel", kernel, ndim=4, like=x)
    g = conv_geometry(op, x.shape, kernel.shape, strides, padding, dilation_rate)
    if bias is not None:
        bias = arrays.float_input(op, "bias", bias, ndim=1, like=x)
        check_shape(op, "bias", bias, (g["F"],))
    _check_sizes(arrays, op, g)
    return name, a, x, kernel, bias, g


def conv2d_backward_input(arrays, dz, kernel, input_shape, strides, padding, dilation_rate):
    """-> (dz, kernel, input_shape, g)."""
    op = "conv2d_backward_input"
    dz = arrays.float_input(op, "dz", dz, ndim=4)
    kernel = arrays.float_input(op, "kernel", kernel, ndim=4, like=dz)
    input_shape = shape4(op, "input_shape", input_shape)
    g = conv_geometry(op, input_shape, kernel.shape, strides, padding, dilation_rate)
    _output_grad(op, "dz", dz, g)
    _check_sizes(arrays, op, g)
    return dz, kernel, input_shape, g


def conv2d_backward_weight(arrays, x, dz, kernel_shape, strides, padding, dilation_rate):
    """-> (x, dz, kernel_shape, g)."""
    op = "conv2d_backward_weight"
    x = arrays.float_input(op, "x", x, ndim=4)
    dz = arrays.float_input(op, "dz", dz, ndim=4, like=x)
    kernel_shape = shape4(op, "kernel_shape", kernel_shape)
    g = conv_geometry(op, x.shape, kernel_shape, strides, padding, dilation_rate)
    _output_grad(op, "dz", dz, g)
    _check_sizes(arrays, op, g)
    return x, dz, kernel_shape, g


def conv2d_backward(arrays, dy, x, z, y, kernel, strides, padding, dilation_rate, activation,
                    alpha):
    """-> (name, alpha, dy, x, z, y, kernel, g); z, y as in activation_backward."""
    op = "conv2d_backward"
    name, a, dy, z, y = activation_backward(arrays, dy, z, y, activation, alpha, op)
    x = arrays.float_input(op, "x", x, ndim=4, like=dy)
    kernel = arrays.float_input(op, "kernel", kernel, ndim=4, like=dy)
    g = conv_geometry(op, x.shape, kernel.shape, strides, padding, dilation_rate)
    _output_grad(op, "dy", dy, g)
    _check_sizes(arrays, op, g)
    return name, a, dy, x, z, y, kernel, g
