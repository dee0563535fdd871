"""OpenCL pooling ops: the host side of ``opencl/pool.cl``.

Same names, signatures and semantics as ``native/pool.pyx``; operands are checked by
``pynn.backend.operands.pool``. An argmax outside its plane in a backward op is skipped in
the kernel (never followed), where the CPU raises: reporting it would stall every step.
"""

import numpy as np

from pynn.backend.opencl import runtime as rt
from pynn.backend.opencl.arrays import DEVICE
from pynn.backend.opencl.launch import elementwise
from pynn.backend.operands import pool as operands


def _window(g):
    """The kernels' geometry arguments after x/y: sizes, window, strides, leading pads."""
    return (g["N"], g["H"], g["W"], g["C"], g["HO"], g["WO"], g["PH"], g["PW"], g["SH"],
            g["SW"], g["PT"], g["PL"])


def maxpool2d_forward(x, pool_size, strides, padding="valid"):
    """(N,H,W,C) -> (y (N,HO,WO,C), argmax int32 h*W + w within each (n, c) plane)."""
    op = "maxpool2d_forward"
    x, g = operands.maxpool2d_forward(DEVICE, x, pool_size, strides, padding)
    y = rt.empty((g["N"], g["HO"], g["WO"], g["C"]), what=f"{op} output")
    argmax = rt.empty(y.shape, np.int32, what=f"{op} argmax")
    elementwise("pool", "maxpool2d_forward", y.size, x, y, argmax, *_window(g))
    return y, argmax


def maxpool2d_backward(dy, argmax, input_shape):
    """dx (input_shape): each dy added to the input pixel its argmax names."""
    op = "maxpool2d_backward"
    dy, argmax, (n, h, w, c) = operands.maxpool2d_backward(DEVICE, dy, argmax, input_shape)
    if dy.size == 0:
        return rt.zeros((n, h, w, c), what=f"{op} output")
    dx = rt.empty((n, h, w, c), what=f"{op} output")
    # One work-item per (n, c) plane: it clears its plane and adds in a fixed order.
    elementwise("pool", "maxpool2d_backward", n * c, dy, argmax, dx, n, h, w, c,
                dy.shape[1], dy.shape[2])
    return dx


def avgpool2d_forward(x, pool_size, strides, padding="valid"):
    """(N,H,W,C) -> (N,HO,WO,C); 'same' averages the in-bounds pixels only."""
    op = "avgpool2d_forward"
    x, g = operands.avgpool2d_forward(DEVICE, x, pool_size, strides, padding)
    y = rt.empty((g["N"], g["HO"], g["WO"], g["C"]), what=f"{op} output")
    elementwise("pool", "avgpool2d_forward", y.size, x, y, *_window(g))
    return y


def avgpool2d_backward(dy, input_shape, pool_size, strides, padding="valid"):
    op = "avgpool2d_backward"
    dy, g = operands.avgpool2d_backward(DEVICE, dy, input_shape, pool_size, strides, padding)
    dx = rt.empty((g["N"], g["H"], g["W"], g["C"]), what=f"{op} output")
    elementwise("pool", "avgpool2d_backward", dx.size, dy, dx, *_window(g))
    return dx


def global_avgpool2d_forward(x):
    """(N,H,W,C) -> (N,C) mean over H and W."""
    op = "global_avgpool2d_forward"
    x = operands.global_avgpool2d_forward(DEVICE, x)
    n, h, w, c = x.shape
    y = rt.empty((n, c), what=f"{op} output")
    elementwise("pool", "global_avgpool2d_forward", y.size, x, y, n, h, w, c,
                np.float32(1.0 / (h * w)))
    return y


def global_avgpool2d_backward(dy, input_shape):
    op = "global_avgpool2d_backward"
    dy, (n, h, w, c) = operands.global_avgpool2d_backward(DEVICE, dy, input_shape)
    dx = rt.empty((n, h, w, c), what=f"{op} output")
    elementwise("pool", "global_avgpool2d_backward", dx.size, dy, dx, n, h, w, c,
                np.float32(1.0 / (h * w)))
    return dx


def global_maxpool2d_forward(x):
    """(N,H,W,C) -> (y (N,C), argmax int32 (N,C) holding h*W + w)."""
    op = "global_maxpool2d_forward"
    x = operands.global_maxpool2d_forward(DEVICE, x)
    n, h, w, c = x.shape
    y = rt.empty((n, c), what=f"{op} output")
    argmax = rt.empty((n, c), np.int32, what=f"{op} argmax")
    elementwise("pool", "global_maxpool2d_forward", y.size, x, y, argmax, n, h, w, c)
    return y, argmax


def global_maxpool2d_backward(dy, argmax, input_shape):
    op = "global_maxpool2d_backward"
    dy, argmax, (n, h, w, c) = operands.global_maxpool2d_backward(DEVICE, dy, argmax,
                                                                  input_shape)
    dx = rt.empty((n, h, w, c), what=f"{op} output")
    elementwise("pool", "global_maxpool2d_backward", dx.size, dy, argmax, dx, n, h, w, c)
    return dx


# -- 3-D pooling (MaxPooling3D, AveragePooling3D; branch vol) -------------------------------

def _window3d(g):
    """The 3-D kernels' geometry arguments after x/y: sizes, window, strides, leading pads."""
    return (g["N"], g["D"], g["H"], g["W"], g["C"], g["DO"], g["HO"], g["WO"], g["PD"],
            g["PH"], g["PW"], g["SD"], g["SH"], g["SW"], g["PF"], g["PT"], g["PL"])


def maxpool3d_forward(x, pool_size, strides, padding="valid"):
    """(N,D,H,W,C) -> (y (N,DO,HO,WO,C), argmax int32 (d*H + h)*W + w in each volume)."""
    op = "maxpool3d_forward"
    x, g = operands.maxpool3d_forward(DEVICE, x, pool_size, strides, padding)
    y = rt.empty((g["N"], g["DO"], g["HO"], g["WO"], g["C"]), what=f"{op} output")
    argmax = rt.empty(y.shape, np.int32, what=f"{op} argmax")
    elementwise("pool", "maxpool3d_forward", y.size, x, y, argmax, *_window3d(g))
    return y, argmax


def maxpool3d_backward(dy, argmax, input_shape):
    """dx (input_shape): each dy added to the voxel its argmax names."""
    op = "maxpool3d_backward"
    dy, argmax, (n, d, h, w, c) = operands.maxpool3d_backward(DEVICE, dy, argmax, input_shape)
    if dy.size == 0:
        return rt.zeros((n, d, h, w, c), what=f"{op} output")
    dx = rt.empty((n, d, h, w, c), what=f"{op} output")
    # maxpool2d_backward's scatter over the volume as a (D*H, W) plane and the outputs as
    # (DO*HO, WO): it reads only the counts, one work-item per (n, c) in output order.
    elementwise("pool", "maxpool2d_backward", n * c, dy, argmax, dx, n, d * h, w, c,
                dy.shape[1] * dy.shape[2], dy.shape[3])
    return dx


def avgpool3d_forward(x, pool_size, strides, padding="valid"):
    """(N,D,H,W,C) -> (N,DO,HO,WO,C); 'same' averages the in-bounds voxels only."""
    op = "avgpool3d_forward"
    x, g = operands.avgpool3d_forward(DEVICE, x, pool_size, strides, padding)
    y = rt.empty((g["N"], g["DO"], g["HO"], g["WO"], g["C"]), what=f"{op} output")
    elementwise("pool", "avgpool3d_forward", y.size, x, y, *_window3d(g))
    return y


def avgpool3d_backward(dy, input_shape, pool_size, strides, padding="valid"):
    op = "avgpool3d_backward"
    dy, g = operands.avgpool3d_backward(DEVICE, dy, input_shape, pool_size, strides, padding)
    dx = rt.empty((g["N"], g["D"], g["H"], g["W"], g["C"]), what=f"{op} output")
    elementwise("pool", "avgpool3d_backward", dx.size, dy, dx, *_window3d(g))
    return dx


# -- adaptive pooling (Keras 3's AdaptiveAveragePooling/AdaptiveMaxPooling 1D-3D) ----------

def _adaptive(g):
    """The adaptive kernels' geometry arguments: the (N, D, H, W, C) view and its output."""
    return (g["N"], g["D"], g["H"], g["W"], g["C"], g["OD"], g["OH"], g["OW"])


def _adaptive_shape(x, g):
    return (x.shape[0],) + (g["OD"], g["OH"], g["OW"])[5 - x.ndim:] + (x.shape[-1],)


def adaptive_avgpool_forward(x, output_size):
    """(N, *spatial, C) -> (N, *output_size, C), the mean over each adaptive bin."""
    op = "adaptive_avgpool_forward"
    x, g = operands.adaptive_avgpool_forward(DEVICE, x, output_size)
    y = rt.empty(_adaptive_shape(x, g), what=f"{op} output")
    if y.size:
        elementwise("pool", op, y.size, x, y, *_adaptive(g))
    return y


def adaptive_avgpool_backward(dy, input_shape):
    op = "adaptive_avgpool_backward"
    dy, g = operands.adaptive_avgpool_backward(DEVICE, dy, input_shape)
    if dy.size == 0:
        return rt.zeros(tuple(input_shape), what=f"{op} output")
    dx = rt.empty(tuple(input_shape), what=f"{op} output")
    elementwise("pool", op, dx.size, dy, dx, *_adaptive(g))
    return dx


def adaptive_maxpool_forward(x, output_size):
    """-> (y (N, *output_size, C), argmax int32 d*H*W + h*W + w within each (n, c) plane)."""
    op = "adaptive_maxpool_forward"
    x, g = operands.adaptive_maxpool_forward(DEVICE, x, output_size)
    y = rt.empty(_adaptive_shape(x, g), what=f"{op} output")
    argmax = rt.empty(y.shape, np.int32, what=f"{op} argmax")
    if y.size:
        elementwise("pool", op, y.size, x, y, argmax, *_adaptive(g))
    return y, argmax


def adaptive_maxpool_backward(dy, argmax, input_shape):
    """dx (input_shape): maxpool2d_backward's kernel on the (N, P, 1, C) views."""
    op = "adaptive_maxpool_backward"
    dy, argmax, g = operands.adaptive_maxpool_backward(DEVICE, dy, argmax, input_shape)
    if dy.size == 0:
        return rt.zeros(tuple(input_shape), what=f"{op} output")
    n, c = g["N"], g["C"]
    dx = rt.empty(tuple(input_shape), what=f"{op} output")
    elementwise("pool", "maxpool2d_backward", n * c, dy, argmax, dx, n,
                g["D"] * g["H"] * g["W"], 1, c, g["OD"] * g["OH"] * g["OW"], 1)
    return dx
