"""OpenCL conv3d ops: the host side of ``opencl/conv3d.cl`` (direct kernels, one work-item
per output, per dx element, per (voxel chunk, kernel entry)).

Same names, signatures and semantics as ``native/conv3d.pyx``; operands are checked by
``pynn.backend.operands.conv3d``.
"""

from types import SimpleNamespace

import numpy as np

from pynn.backend.api import (
    ACTIVATIONS,
    conv3d_backward_composed,
    conv3d_transpose_backward_composed,
)
from pynn.backend.opencl import runtime as rt
from pynn.backend.opencl.activation import (
    activation_backward,
    activation_bias_backward,
    activation_forward,
    fused_epilogue,
)
from pynn.backend.opencl.arrays import DEVICE
from pynn.backend.opencl.dense import bias_backward
from pynn.backend.opencl.launch import elementwise
from pynn.backend.operands import conv3d as operands

# backward_weight: enough (voxel chunk, kernel entry) work-items to fill a GPU, at most this
# many chunks (each partial is one float per kernel entry).
_TARGET_ITEMS = 1 << 16
_MAX_CHUNKS = 256


def _geometry_args(g):
    """The kernel argument order of C3_GEOM in opencl/conv3d.cl."""
    groups = g["G"]
    return (g["N"], g["D"], g["H"], g["W"], g["C"], groups, g["C"] // groups,
            g["F"] // groups, g["F"], g["DO"], g["HO"], g["WO"], g["KD"], g["KH"], g["KW"],
            g["SD"], g["SH"], g["SW"], g["DD"], g["DH"], g["DW"], g["PF"], g["PT"], g["PL"])


def conv3d_forward(x, kernel, bias, strides=(1, 1, 1), padding="valid",
                   dilation_rate=(1, 1, 1), groups=1, activation="linear", alpha=0.0):
    """y = act(conv3d(x, kernel) + bias) -> (y, z)."""
    op = "conv3d_forward"
    name, alpha, x, kernel, bias, g = operands.conv3d_forward(
        DEVICE, x, kernel, bias, strides, padding, dilation_rate, groups, activation, alpha)
    y, z, code, softmax_after = fused_epilogue(
        op, name, (g["N"], g["DO"], g["HO"], g["WO"], g["F"]))
    if y.size:
        elementwise("conv3d", "conv3d_forward", y.size, x, kernel, bias, y, z, code, alpha,
                    *_geometry_args(g))
    if softmax_after:
        return activation_forward(y, "softmax", alpha), None
    return y, z


def conv3d_backward_input(dz, kernel, input_shape, strides=(1, 1, 1), padding="valid",
                          dilation_rate=(1, 1, 1), groups=1):
    """dx (N, D, H, W, C) from dz (N, DO, HO, WO, F): a gather, deterministic."""
    op = "conv3d_backward_input"
    dz, kernel, input_shape, g = operands.conv3d_backward_input(
        DEVICE, dz, kernel, input_shape, strides, padding, dilation_rate, groups)
    dx = rt.empty(input_shape, np.float32, f"{op} output")
    if dx.size:
        elementwise("conv3d", "conv3d_backward_input", dx.size, dz, kernel, dx,
                    *_geometry_args(g))
    return dx


def conv3d_backward_weight(x, dz, kernel_shape, strides=(1, 1, 1), padding="valid",
                           dilation_rate=(1, 1, 1), groups=1):
    """dkernel (KD, KH, KW, C/groups, F): chunk partials over the output voxels, added in
    order."""
    op = "conv3d_backward_weight"
    x, dz, kernel_shape, g = operands.conv3d_backward_weight(
        DEVICE, x, dz, kernel_shape, strides, padding, dilation_rate, groups)
    k = int(np.prod(kernel_shape))
    voxels = g["N"] * g["DO"] * g["HO"] * g["WO"]
    out = rt.empty(kernel_shape, np.float32, f"{op} output")
    if k == 0:
        return out
    chunks = max(1, min(voxels, -(-_TARGET_ITEMS // k), _MAX_CHUNKS))
    partial = rt.empty((chunks * k,), np.float32, f"{op} partials")
    elementwise("conv3d", "conv3d_backward_weight", chunks * k, x, dz, partial, chunks,
                *_geometry_args(g))
    elementwise("conv3d", "conv3d_sum_partials", k, partial, out, chunks, k)
    return out


def conv3d_backward(dy, x, z, y, kernel, strides=(1, 1, 1), padding="valid",
                    dilation_rate=(1, 1, 1), groups=1, activation="linear", alpha=0.0,
                    use_bias=True, need_input_grad=True):
    """(dx or None, dkernel, dbias or None): the separate kernels in turn."""
    name, alpha, dy, x, z, y, kernel, _ = operands.conv3d_backward(
        DEVICE, dy, x, z, y, kernel, strides, padding, dilation_rate, groups, activation,
        alpha)
    return conv3d_backward_composed(_COMPOSED, dy, x, z, y, kernel, strides, padding,
                                    dilation_rate, groups, name, alpha, use_bias,
                                    need_input_grad)


def _window_args(g):
    return g["N"], g["DF"], g["HF"], g["WF"], g["F"], g["DO"], g["HO"], g["WO"]


def conv3d_transpose_forward(x, kernel, bias, strides=(1, 1, 1), padding="valid",
                             output_padding=None, dilation_rate=(1, 1, 1), activation="linear",
                             alpha=0.0):
    """Keras's Conv3DTranspose -> (y, z): conv3d_backward_input onto the full output, then
    the window with bias + activation."""
    op = "conv3d_transpose_forward"
    name, alpha, x, kernel, bias, g = operands.conv3d_transpose_forward(
        DEVICE, x, kernel, bias, strides, padding, output_padding, dilation_rate, activation,
        alpha)
    full = conv3d_backward_input(x, kernel, (g["N"], g["DF"], g["HF"], g["WF"], g["F"]),
                                 strides, "valid", dilation_rate, 1)
    y, z, code, softmax_after = fused_epilogue(
        op, name, (g["N"], g["DO"], g["HO"], g["WO"], g["F"]))
    if y.size:
        elementwise("conv3d", "conv3d_transpose_window", y.size, full, bias, y, z, code, alpha,
                    *_window_args(g), g["CF"], g["CT"], g["CL"])
    if softmax_after:
        return activation_forward(y, "softmax", alpha), None
    return y, z


def _placed(dz, g):
    """dz at its crop offset in a zeroed full output (N, DF, HF, WF, F)."""
    if (g["CF"], g["CT"], g["CL"], g["DO"], g["HO"], g["WO"]) == (
            0, 0, 0, g["DF"], g["HF"], g["WF"]):
        return dz
    full = rt.empty((g["N"], g["DF"], g["HF"], g["WF"], g["F"]), np.float32,
                    "conv3d_transpose_backward full-output gradient")
    elementwise("conv3d", "conv3d_transpose_window", full.size, dz, None, full, None,
                ACTIVATIONS.index("linear"), 0.0, g["N"], g["DO"], g["HO"], g["WO"], g["F"],
                g["DF"], g["HF"], g["WF"], -g["CF"], -g["CT"], -g["CL"])
    return full


def conv3d_transpose_backward(dy, x, z, y, kernel, strides=(1, 1, 1), padding="valid",
                              output_padding=None, dilation_rate=(1, 1, 1), activation="linear",
                              alpha=0.0, use_bias=True, need_input_grad=True):
    """(dx or None, dkernel, dbias or None) of conv3d_transpose_forward."""
    name, alpha, dy, x, z, y, kernel, g = operands.conv3d_transpose_backward(
        DEVICE, dy, x, z, y, kernel, strides, padding, output_padding, dilation_rate,
        activation, alpha)
    return conv3d_transpose_backward_composed(
        _COMPOSED, _placed, dy, x, z, y, kernel, g, strides, dilation_rate, name, alpha,
        use_bias, need_input_grad)


# The ops the composed backwards run in turn.
_COMPOSED = SimpleNamespace(
    activation_backward=activation_backward, activation_bias_backward=activation_bias_backward,
    bias_backward=bias_backward, conv3d_backward_input=conv3d_backward_input,
    conv3d_backward_weight=conv3d_backward_weight, conv3d_forward=conv3d_forward)
