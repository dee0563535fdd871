"""OpenCL channel-grouped conv ops (depthwise_conv2d_*, grouped_conv2d_*): the host side of
``opencl/depthwise.cl``, whose kernels serve both (depthwise is G = C groups of one input
channel).

Same names, signatures and semantics as ``native/depthwise.pyx``; operands are checked by
``pynn.backend.operands.depthwise``.
"""

import numpy as np

from pynn.backend.opencl import runtime as rt
from pynn.backend.opencl.activation import activation_forward, fused_epilogue
from pynn.backend.opencl.arrays import DEVICE
from pynn.backend.opencl.launch import elementwise
from pynn.backend.operands import depthwise as operands

# backward_weight: enough (pixel chunk, kernel entry) work-items to fill a GPU, at most this
# many chunks (each partial is one float per kernel entry).
_TARGET_ITEMS = 1 << 16
_MAX_CHUNKS = 256


def _geometry_args(g):
    """The kernel argument order of DW_GEOM in opencl/depthwise.cl."""
    return (g["N"], g["H"], g["W"], g["C"], g["G"], g["CG"], g["FG"], g["F"], g["HO"], g["WO"],
            g["KH"], g["KW"], g["SH"], g["SW"], g["DH"], g["DW"], g["PT"], g["PL"])


def _forward(op, checked):
    name, alpha, x, kernel, bias, g = checked
    y, z, code, softmax_after = fused_epilogue(op, name, (g["N"], g["HO"], g["WO"], g["F"]))
    elementwise("depthwise", "depthwise_conv2d_forward", y.size, x, kernel, bias, y, z, code,
                alpha, *_geometry_args(g))
    if softmax_after:
        return activation_forward(y, "softmax", alpha), None
    return y, z


def _backward_input(op, checked):
    """A gather, deterministic."""
    dz, kernel, input_shape, g = checked
    dx = rt.empty(input_shape, np.float32, f"{op} output")
    elementwise("depthwise", "depthwise_conv2d_backward_input", dx.size, dz, kernel, dx,
                *_geometry_args(g))
    return dx


def _backward_weight(op, checked):
    """Chunk partials over the output pixels, added in order."""
    x, dz, kernel_shape, g = checked
    k = int(np.prod(kernel_shape))
    pixels = g["N"] * g["HO"] * g["WO"]
    out = rt.empty(kernel_shape, np.float32, f"{op} output")
    if k == 0:
        return out
    chunks = max(1, min(pixels, -(-_TARGET_ITEMS // k), _MAX_CHUNKS))
    partial = rt.empty((chunks * k,), np.float32, f"{op} partials")
    elementwise("depthwise", "depthwise_conv2d_backward_weight", chunks * k, x, dz, partial,
                chunks, *_geometry_args(g))
    elementwise("depthwise", "depthwise_sum_partials", k, partial, out, chunks, k)
    return out


def depthwise_conv2d_forward(x, kernel, bias, strides=(1, 1), padding="valid",
                             dilation_rate=(1, 1), activation="linear", alpha=0.0):
    """y = act(depthwise(x, kernel) + bias) -> (y, z)."""
    return _forward("depthwise_conv2d_forward", operands.depthwise_conv2d_forward(
        DEVICE, x, kernel, bias, strides, padding, dilation_rate, activation, alpha))


def depthwise_conv2d_backward_input(dz, kernel, input_shape, strides=(1, 1), padding="valid",
                                    dilation_rate=(1, 1)):
    """dx (N, H, W, C) from dz (N, HO, WO, C*M)."""
    return _backward_input("depthwise_conv2d_backward_input",
                           operands.depthwise_conv2d_backward_input(
                               DEVICE, dz, kernel, input_shape, strides, padding,
                               dilation_rate))


def depthwise_conv2d_backward_weight(x, dz, kernel_shape, strides=(1, 1), padding="valid",
                                     dilation_rate=(1, 1)):
    """dkernel (KH, KW, C, M)."""
    return _backward_weight("depthwise_conv2d_backward_weight",
                            operands.depthwise_conv2d_backward_weight(
                                DEVICE, x, dz, kernel_shape, strides, padding, dilation_rate))


def grouped_conv2d_forward(x, kernel, bias, strides=(1, 1), padding="valid",
                           dilation_rate=(1, 1), groups=1, activation="linear", alpha=0.0):
    """Conv2D(groups=G): y = act(grouped_conv(x, kernel) + bias) -> (y, z)."""
    return _forward("grouped_conv2d_forward", operands.grouped_conv2d_forward(
        DEVICE, x, kernel, bias, strides, padding, dilation_rate, groups, activation, alpha))


def grouped_conv2d_backward_input(dz, kernel, input_shape, strides=(1, 1), padding="valid",
                                  dilation_rate=(1, 1), groups=1):
    """dx (N, H, W, C) from dz (N, HO, WO, F)."""
    return _backward_input("grouped_conv2d_backward_input",
                           operands.grouped_conv2d_backward_input(
                               DEVICE, dz, kernel, input_shape, strides, padding,
                               dilation_rate, groups))


def grouped_conv2d_backward_weight(x, dz, kernel_shape, strides=(1, 1), padding="valid",
                                   dilation_rate=(1, 1), groups=1):
    """dkernel (KH, KW, C/G, F)."""
    return _backward_weight("grouped_conv2d_backward_weight",
                            operands.grouped_conv2d_backward_weight(
                                DEVICE, x, dz, kernel_shape, strides, padding, dilation_rate,
                                groups))
