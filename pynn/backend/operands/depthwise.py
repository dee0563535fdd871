"""Operands of the channel-grouped conv ops (native/depthwise.pyx,
pynn/backend/opencl/depthwise.py): depthwise_conv2d_* (kernel (KH, KW, C, M), Keras's
DepthwiseConv2D) and grouped_conv2d_* (kernel (KH, KW, C/G, F), Keras's Conv2D(groups=G)).

Each returns the checked arrays and the geometry ``g``: conv2d's (``common.conv_geometry``,
Keras's 'same'/'valid' rules) plus the grouping the shared kernels read: G groups of CG input
channels and FG filters, F = G*FG output channels. Depthwise is G = C, CG = 1, FG = M.
"""

import operator

from pynn.backend.operands.activation import activation_pair
from pynn.backend.operands.common import check_count, check_shape, conv_geometry, shape4


def _depthwise_geometry(arrays, op, input_shape, kernel_shape, strides, padding,
                        dilation_rate):
    g = conv_geometry(op, input_shape, kernel_shape, strides, padding, dilation_rate)
    m = g["F"]
    g.update(G=g["C"], CG=1, FG=m, F=g["C"] * m)
    return _counted(arrays, op, g)


def _groups(op, groups):
    try:
        groups = operator.index(groups)
    except TypeError:
        raise ValueError(f"{op}: 'groups' must be a positive int, got {groups!r}") from None
    if groups < 1:
        raise ValueError(f"{op}: 'groups' must be a positive int, got {groups!r}")
    return groups


def _grouped_geometry(arrays, op, input_shape, kernel_shape, strides, padding, dilation_rate,
                      groups):
    groups = _groups(op, groups)
    c = input_shape[3]
    kh, kw, cg, f = kernel_shape
    if c % groups or f % groups:
        raise ValueError(f"{op}: groups={groups} must divide the input channels ({c}) and the "
                         f"filters ({f}) (input shape {tuple(input_shape)}, kernel shape "
                         f"{tuple(kernel_shape)})")
    if cg != c // groups:
        raise ValueError(f"{op}: kernel (KH, KW, C/groups, F) has {cg} input channels per "
                         f"group but the input has {c} channels in {groups} groups, "
                         f"{c // groups} each (kernel shape {tuple(kernel_shape)})")
    g = conv_geometry(op, input_shape, (kh, kw, c, f), strides, padding, dilation_rate)
    g.update(G=groups, CG=cg, FG=f // groups)
    return _counted(arrays, op, g)


def _counted(arrays, op, g):
    check_count(arrays, op, "input", g["N"] * g["H"] * g["W"] * g["C"])
    check_count(arrays, op, "output", g["N"] * g["HO"] * g["WO"] * g["F"])
    return g


def _forward(arrays, op, x, kernel, bias, activation, alpha, geometry, *args):
    name, a = activation_pair(op, activation, alpha)
    x = arrays.float_input(op, "x", x, ndim=4)
    kernel = arrays.float_input(op, "kernel", kernel, ndim=4, like=x)
    g = geometry(arrays, op, x.shape, kernel.shape, *args)
    if bias is not None:
        bias = arrays.float_input(op, "bias", bias, ndim=1, like=x)
        check_shape(op, "bias", bias, (g["F"],))
    return name, a, x, kernel, bias, g


def _backward_input(arrays, op, dz, kernel, input_shape, geometry, *args):
    dz = arrays.float_input(op, "dz", dz, ndim=4)
    kernel = arrays.float_input(op, "kernel", kernel, ndim=4, like=dz)
    input_shape = shape4(op, "input_shape", input_shape)
    g = geometry(arrays, op, input_shape, kernel.shape, *args)
    check_shape(op, "dz", dz, (g["N"], g["HO"], g["WO"], g["F"]))
    return dz, kernel, input_shape, g


def _backward_weight(arrays, op, x, dz, kernel_shape, geometry, *args):
    x = arrays.float_input(op, "x", x, ndim=4)
    dz = arrays.float_input(op, "dz", dz, ndim=4, like=x)
    kernel_shape = shape4(op, "kernel_shape", kernel_shape)
    g = geometry(arrays, op, x.shape, kernel_shape, *args)
    check_shape(op, "dz", dz, (g["N"], g["HO"], g["WO"], g["F"]))
    return x, dz, kernel_shape, g


def depthwise_conv2d_forward(arrays, x, kernel, bias, strides, padding, dilation_rate,
                             activation, alpha):
    """-> (name, alpha, x, kernel, bias or None, g)."""
    return _forward(arrays, "depthwise_conv2d_forward", x, kernel, bias, activation, alpha,
                    _depthwise_geometry, strides, padding, dilation_rate)


def depthwise_conv2d_backward_input(arrays, dz, kernel, input_shape, strides, padding,
                                    dilation_rate):
    """-> (dz, kernel, input_shape, g)."""
    return _backward_input(arrays, "depthwise_conv2d_backward_input", dz, kernel,
                           input_shape, _depthwise_geometry, strides, padding, dilation_rate)


def depthwise_conv2d_backward_weight(arrays, x, dz, kernel_shape, strides, padding,
                                     dilation_rate):
    """-> (x, dz, kernel_shape, g)."""
    return _backward_weight(arrays, "depthwise_conv2d_backward_weight", x, dz, kernel_shape,
                            _depthwise_geometry, strides, padding, dilation_rate)


def grouped_conv2d_forward(arrays, x, kernel, bias, strides, padding, dilation_rate, groups,
                           activation, alpha):
    """-> (name, alpha, x, kernel, bias or None, g)."""
    return _forward(arrays, "grouped_conv2d_forward", x, kernel, bias, activation, alpha,
                    _grouped_geometry, strides, padding, dilation_rate, groups)


def grouped_conv2d_backward_input(arrays, dz, kernel, input_shape, strides, padding,
                                  dilation_rate, groups):
    """-> (dz, kernel, input_shape, g)."""
    return _backward_input(arrays, "grouped_conv2d_backward_input", dz, kernel, input_shape,
                           _grouped_geometry, strides, padding, dilation_rate, groups)


def grouped_conv2d_backward_weight(arrays, x, dz, kernel_shape, strides, padding,
                                   dilation_rate, groups):
    """-> (x, dz, kernel_shape, g)."""
    return _backward_weight(arrays, "grouped_conv2d_backward_weight", x, dz, kernel_shape,
                            _grouped_geometry, strides, padding, dilation_rate, groups)
