"""OpenCL int8 ops (issue 18): the host side of ``opencl/quant.cl``.

Same names, signatures and semantics as ``native/quant.pyx`` (bit-identical results);
operands are checked by ``pynn.backend.operands.quant``.
"""

import numpy as np

from pynn.backend.opencl import runtime as rt
from pynn.backend.opencl.arrays import DEVICE
from pynn.backend.opencl.launch import elementwise
from pynn.backend.operands import quant as operands


def quantize_forward(x, scale, zero_point):
    """uint8 clamp(rint(x / scale) + zero_point, 0, 255), any shape."""
    x, scale, zero_point = operands.quantize_forward(DEVICE, x, scale, zero_point)
    q = rt.empty(x.shape, np.uint8, "quantize_forward output")
    if x.size:
        elementwise("quant", "quantize_forward", x.size, x, q, x.size, np.float32(scale),
                    np.float32(zero_point))
    return q


def dequantize_forward(q, scale, zero_point):
    """float32 (q - zero_point) * scale, any shape."""
    q, scale, zero_point = operands.dequantize_forward(DEVICE, q, scale, zero_point)
    y = rt.empty(q.shape, np.float32, "dequantize_forward output")
    if q.size:
        elementwise("quant", "dequantize_forward", q.size, q, y, q.size, np.float32(scale),
                    np.float32(zero_point))
    return y


def int8_pack_weights(wq):
    """int8 (U, K) -> the GEMM's pack (ceil(U / 16), max(ceil(K / 4), 1), 64)."""
    wq = operands.int8_pack_weights(DEVICE, wq)
    units, k = wq.shape
    k4 = max(-(-k // 4), 1)
    packed = rt.empty((-(-units // 16), k4, 64), np.int8, "int8_pack_weights output")
    if packed.size:
        elementwise("quant", "int8_pack_weights", packed.size, wq if wq.size else packed,
                    packed, packed.size, units, k, k4)
    return packed


def int8_dense_forward(xq, wq, bias, x_zero_point, multiplier, y_zero_point, relu):
    """uint8 (N, U) from uint8 xq (N, K) and int8 weights by unit (U, K) or packed
    (native/quant.pyx's contract)."""
    xq, wq, bias, x_zp, multiplier, y_zp, relu = operands.int8_dense_forward(
        DEVICE, xq, wq, bias, x_zero_point, multiplier, y_zero_point, relu)
    n, k, units = xq.shape[0], xq.shape[1], multiplier.shape[0]
    float_out = y_zp is None
    yq = rt.empty((n, units), np.float32 if float_out else np.uint8,
                  "int8_dense_forward output")
    if n * units:
        if wq.ndim == 2:
            wq = int8_pack_weights(wq)
        # float output: lo carries relu (1.0) since no zero point clamps it
        lo = float(relu) if float_out else (y_zp if relu else 0.0)
        elementwise("quant", "int8_dense_forward", n * units, xq if xq.size else yq, wq,
                    multiplier if bias is None else bias, multiplier, yq, yq,
                    np.int32(float_out), n, k, wq.shape[1], units, bias is not None, x_zp,
                    np.float32(0.0 if float_out else y_zp), np.float32(lo))
    return yq


def int8_im2col(xq, kernel_size, strides, padding, dilation_rate, pad_value):
    """uint8 patches (N * HO * WO, KH * KW * C) (native/quant.pyx's contract)."""
    xq, g, pad_value = operands.int8_im2col(DEVICE, xq, kernel_size, strides, padding,
                                            dilation_rate, pad_value)
    cols = rt.empty((g["N"] * g["HO"] * g["WO"], g["KH"] * g["KW"] * g["C"]), np.uint8,
                    "int8_im2col output")
    if cols.size:
        elementwise("quant", "int8_im2col", cols.size, xq, cols, cols.size, g["H"], g["W"],
                    g["C"], g["KH"], g["KW"], g["SH"], g["SW"], g["DH"], g["DW"], g["PT"],
                    g["PL"], g["HO"], g["WO"], np.uint8(pad_value))
    return cols


# -- int8 depthwise convolution (issue 18, branch qbreadth) --
def int8_depthwise_conv2d_forward(xq, wq, bias, x_zero_point, multiplier, y_zero_point, relu,
                                  strides, padding, dilation_rate):
    """uint8 (N, HO, WO, C * M) (native/quant.pyx's contract)."""
    xq, wq, bias, x_zp, multiplier, y_zp, relu, g = operands.int8_depthwise_conv2d_forward(
        DEVICE, xq, wq, bias, x_zero_point, multiplier, y_zero_point, relu, strides, padding,
        dilation_rate)
    m = wq.shape[3]
    cm = g["C"] * m
    float_out = y_zp is None
    y = rt.empty((g["N"], g["HO"], g["WO"], cm), np.float32 if float_out else np.uint8,
                 "int8_depthwise_conv2d_forward output")
    if y.size:
        # float output: lo carries relu (1.0) since no zero point clamps it
        lo = float(relu) if float_out else (y_zp if relu else 0.0)
        elementwise("quant", "int8_depthwise_conv2d_forward", y.size, xq, wq,
                    multiplier if bias is None else bias, multiplier, y, y,
                    np.int32(float_out), y.size, g["H"], g["W"], g["C"], m, g["KH"], g["KW"],
                    g["SH"], g["SW"], g["DH"], g["DW"], g["PT"], g["PL"], g["HO"], g["WO"],
                    bias is not None, x_zp, np.float32(0.0 if float_out else y_zp),
                    np.float32(lo))
    return y
# -- end int8 depthwise convolution --


# -- int8 chained inference (issue 18, branch q8) --
def int8_max_pool2d(xq, pool_size, strides, padding):
    """uint8 (N, HO, WO, C): window maxima of uint8 xq (native/quant.pyx's contract)."""
    xq, g = operands.int8_max_pool2d(DEVICE, xq, pool_size, strides, padding)
    y = rt.empty((g["N"], g["HO"], g["WO"], g["C"]), np.uint8, "int8_max_pool2d output")
    if y.size:
        elementwise("quant", "int8_max_pool2d", y.size, xq, y, y.size, g["H"], g["W"], g["C"],
                    g["KH"], g["KW"], g["SH"], g["SW"], g["PT"], g["PL"], g["HO"], g["WO"])
    return y


def int8_conv2d_forward(xq, wq, bias, x_zero_point, multiplier, y_zero_point, relu,
                        kernel_size, strides, padding, dilation_rate):
    """uint8 (N, HO, WO, F) (native/quant.pyx's contract): here the device's int8_im2col
    and int8_dense_forward kernels in turn, which is the contract's definition, so the bits
    are the CPU's (a GPU gains less from skipping the patch matrix than a CPU cache does)."""
    xq, wq, bias, x_zp, multiplier, y_zp, relu, g = operands.int8_conv2d_forward(
        DEVICE, xq, wq, bias, x_zero_point, multiplier, y_zero_point, relu, kernel_size,
        strides, padding, dilation_rate)
    cols = int8_im2col(xq, (g["KH"], g["KW"]), (g["SH"], g["SW"]), padding,
                       (g["DH"], g["DW"]), x_zp)
    y = int8_dense_forward(cols, wq, bias, x_zp, multiplier,
                           None if y_zp is None else int(y_zp), relu)
    return y.reshape((g["N"], g["HO"], g["WO"], multiplier.shape[0]))
# -- end int8 chained inference --
