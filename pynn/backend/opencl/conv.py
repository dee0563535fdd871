"""OpenCL conv ops: the host side of ``opencl/conv.cl``, implicit GEMMs on the core of
``opencl/gemm.cl`` (no im2col buffer).

Same names, signatures and semantics as ``native/conv.pyx``; operands are checked by
``pynn.backend.operands.conv``.
"""

from types import SimpleNamespace

import numpy as np

from pynn.backend.api import (
    ACTIVATIONS,
    conv2d_backward_composed,
    conv2d_pool_backward_composed,
    conv2d_pool_forward_composed,
    conv2d_transpose_backward_composed,
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
from pynn.backend.opencl.gemm import gemm_split_out, run_gemm
from pynn.backend.opencl.launch import elementwise
from pynn.backend.operands import conv as operands


def _geometry_args(g):
    """The kernel argument order of CONV_GEOM in opencl/conv.cl."""
    return (g["H"], g["W"], g["C"], g["HO"], g["WO"], g["KW"], g["F"], g["SH"], g["SW"],
            g["DH"], g["DW"], g["PT"], g["PL"])


def conv2d_forward(x, kernel, bias, strides=(1, 1), padding="valid", dilation_rate=(1, 1),
                   activation="linear", alpha=0.0):
    """y = act(conv(x, kernel) + bias) -> (y, z), as an implicit GEMM."""
    op = "conv2d_forward"
    name, alpha, x, kernel, bias, g = operands.conv2d_forward(
        DEVICE, x, kernel, bias, strides, padding, dilation_rate, activation, alpha)
    m, n, k = g["N"] * g["HO"] * g["WO"], g["F"], g["KH"] * g["KW"] * g["C"]
    y, z, code, softmax_after = fused_epilogue(op, name, (g["N"], g["HO"], g["WO"], g["F"]))
    if m * n:
        run_gemm("conv", "conv2d_forward", m, n, k,
                 (x, kernel, bias, y, z, code, alpha, *_geometry_args(g)), vwa=(g["C"],),
                 vwb=(g["F"],))
    if softmax_after:
        return activation_forward(y, "softmax", alpha), None
    return y, z


def conv2d_backward_input(dz, kernel, input_shape, strides=(1, 1), padding="valid",
                          dilation_rate=(1, 1)):
    """dx (N, H, W, C) from dz (N, HO, WO, F): a gather over taps, deterministic."""
    op = "conv2d_backward_input"
    dz, kernel, input_shape, g = operands.conv2d_backward_input(
        DEVICE, dz, kernel, input_shape, strides, padding, dilation_rate)
    dx = rt.empty(input_shape, np.float32, f"{op} output")
    m, n, k = g["N"] * g["H"] * g["W"], g["C"], g["KH"] * g["KW"] * g["F"]
    if m * n:
        run_gemm("conv", "conv2d_backward_input", m, n, k,
                 (dz, kernel, dx, *_geometry_args(g)), vwa=(g["F"],), vwb=(g["F"],))
    return dx


def conv2d_backward_weight(x, dz, kernel_shape, strides=(1, 1), padding="valid",
                           dilation_rate=(1, 1)):
    """dkernel (KH, KW, C, F); split-K over the N*HO*WO output pixels when it helps."""
    op = "conv2d_backward_weight"
    x, dz, kernel_shape, g = operands.conv2d_backward_weight(
        DEVICE, x, dz, kernel_shape, strides, padding, dilation_rate)
    m, n, k = g["KH"] * g["KW"] * g["C"], g["F"], g["N"] * g["HO"] * g["WO"]
    return gemm_split_out(op, "conv", "conv2d_backward_weight", m, n, k, (x, dz),
                          kernel_shape, _geometry_args(g), vwa=(g["C"],), vwb=(g["F"],))


def conv2d_backward(dy, x, z, y, kernel, strides=(1, 1), padding="valid", dilation_rate=(1, 1),
                    activation="linear", alpha=0.0, use_bias=True, need_input_grad=True):
    """(dx or None, dkernel, dbias or None): the separate kernels in turn (no fused one)."""
    name, alpha, dy, x, z, y, kernel, _ = operands.conv2d_backward(
        DEVICE, dy, x, z, y, kernel, strides, padding, dilation_rate, activation, alpha)
    return conv2d_backward_composed(_COMPOSED, dy, x, z, y, kernel, strides, padding,
                                    dilation_rate, name, alpha, use_bias, need_input_grad)


def conv2d_pool_forward(x, kernel, bias, strides=(1, 1), padding="valid", dilation_rate=(1, 1),
                        activation="linear", alpha=0.0, pool_size=(2, 2), pool_strides=(2, 2),
                        pool_padding="valid"):
    """(pooled, argmax): the conv above, then opencl/pool.cl's max pool (no fused kernel)."""
    from pynn.backend.opencl.pool import maxpool2d_forward

    name, alpha, x, kernel, bias, _, _ = operands.conv2d_pool_forward(
        DEVICE, x, kernel, bias, strides, padding, dilation_rate, activation, alpha, pool_size,
        pool_strides, pool_padding)
    ops = SimpleNamespace(conv2d_forward=conv2d_forward, maxpool2d_forward=maxpool2d_forward)
    return conv2d_pool_forward_composed(ops, x, kernel, bias, strides, padding, dilation_rate,
                                        name, alpha, pool_size, pool_strides, pool_padding)


def conv2d_pool_backward(dpool, argmax, pooled, x, z, y, kernel, strides=(1, 1),
                         padding="valid", dilation_rate=(1, 1), activation="linear", alpha=0.0,
                         use_bias=True, need_input_grad=True, pool_size=(2, 2),
                         pool_strides=(2, 2), pool_padding="valid"):
    """(dx or None, dkernel, dbias or None): opencl/pool.cl's maxpool2d_backward, then the
    conv's backward above (no fused kernel)."""
    from pynn.backend.opencl.pool import maxpool2d_backward

    name, alpha, dpool, argmax, pooled, x, z, y, kernel, g, _ = operands.conv2d_pool_backward(
        DEVICE, dpool, argmax, pooled, x, z, y, kernel, strides, padding, dilation_rate,
        activation, alpha, pool_size, pool_strides, pool_padding)
    ops = SimpleNamespace(maxpool2d_backward=maxpool2d_backward,
                          conv2d_backward=conv2d_backward,
                          activation_backward=activation_backward)
    return conv2d_pool_backward_composed(ops, dpool, argmax, pooled, x, z, y, kernel, strides,
                                         padding, dilation_rate, name, alpha, use_bias,
                                         need_input_grad, pool_size, pool_strides,
                                         pool_padding, (g["N"], g["HO"], g["WO"], g["F"]))


# The ops conv2d_backward_composed runs in turn.
_COMPOSED = SimpleNamespace(
    activation_backward=activation_backward, activation_bias_backward=activation_bias_backward,
    bias_backward=bias_backward, conv2d_backward_input=conv2d_backward_input,
    conv2d_backward_weight=conv2d_backward_weight, conv2d_forward=conv2d_forward)


# -- conv2d_transpose (issue 12): the conv kernels above plus conv2d_transpose_window, which
# moves Keras's window between the full transposed output and the layer's output.


def conv2d_transpose_forward(x, kernel, bias, strides=(1, 1), padding="valid",
                             output_padding=None, dilation_rate=(1, 1), activation="linear",
                             alpha=0.0):
    """Keras's Conv2DTranspose -> (y, z): conv2d_backward_input onto the full output, then
    the window with bias + activation."""
    op = "conv2d_transpose_forward"
    name, alpha, x, kernel, bias, g = operands.conv2d_transpose_forward(
        DEVICE, x, kernel, bias, strides, padding, output_padding, dilation_rate, activation,
        alpha)
    full = conv2d_backward_input(x, kernel, (g["N"], g["HF"], g["WF"], g["F"]), strides,
                                 "valid", dilation_rate)
    y, z, code, softmax_after = fused_epilogue(op, name, (g["N"], g["HO"], g["WO"], g["F"]))
    elementwise("conv", "conv2d_transpose_window", y.size, full, bias, y, z, code, alpha,
                g["N"], g["HF"], g["WF"], g["F"], g["HO"], g["WO"], g["CT"], g["CL"])
    if softmax_after:
        return activation_forward(y, "softmax", alpha), None
    return y, z


def _placed(dz, g):
    """dz at its crop offset in a zeroed full output (N, HF, WF, F)."""
    if (g["CT"], g["CL"], g["HO"], g["WO"]) == (0, 0, g["HF"], g["WF"]):
        return dz
    full = rt.empty((g["N"], g["HF"], g["WF"], g["F"]), np.float32,
                    "conv2d_transpose_backward full-output gradient")
    elementwise("conv", "conv2d_transpose_window", full.size, dz, None, full, None,
                ACTIVATIONS.index("linear"), 0.0, g["N"], g["HO"], g["WO"], g["F"], g["HF"],
                g["WF"], -g["CT"], -g["CL"])
    return full


def conv2d_transpose_backward(dy, x, z, y, kernel, strides=(1, 1), padding="valid",
                              output_padding=None, dilation_rate=(1, 1), activation="linear",
                              alpha=0.0, use_bias=True, need_input_grad=True):
    """(dx or None, dkernel, dbias or None) of conv2d_transpose_forward."""
    name, alpha, dy, x, z, y, kernel, g = operands.conv2d_transpose_backward(
        DEVICE, dy, x, z, y, kernel, strides, padding, output_padding, dilation_rate,
        activation, alpha)
    return conv2d_transpose_backward_composed(
        _COMPOSED, _placed, dy, x, z, y, kernel, g, strides, dilation_rate, name, alpha,
        use_bias, need_input_grad)
