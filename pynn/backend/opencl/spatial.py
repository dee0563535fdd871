"""OpenCL spatial ops: the host side of ``opencl/spatial.cl``.

Same names, signatures and semantics as ``native/spatial.pyx``; operands are checked by
``pynn.backend.operands.spatial``.
"""

from pynn.backend.opencl import runtime as rt
from pynn.backend.opencl.arrays import DEVICE
from pynn.backend.opencl.launch import elementwise
from pynn.backend.operands import spatial as operands

# UPSAMPLE_NEAREST / UPSAMPLE_BILINEAR of opencl/spatial.cl.
_MODES = {"nearest": 0, "bilinear": 1}


def pad2d_forward(x, padding):
    """Zero padding: (N, H, W, C) -> (N, top + H + bottom, left + W + right, C)."""
    op = "pad2d_forward"
    x, ((t, _), (l, _)), out = operands.pad2d_forward(DEVICE, x, padding)
    y = rt.empty(out, what=f"{op} output")
    n, h, w, c = x.shape
    elementwise("spatial", "pad2d_forward", y.size, x, y, n, h, w, c, out[1], out[2], t, l)
    return y


def pad2d_backward(dy, padding):
    """The crop undoing pad2d_forward (also Cropping2D's forward)."""
    op = "pad2d_backward"
    dy, ((t, _), (l, _)), out = operands.pad2d_backward(DEVICE, dy, padding)
    dx = rt.empty(out, what=f"{op} output")
    n, h, w, c = dy.shape
    elementwise("spatial", "pad2d_backward", dx.size, dy, dx, n, h, w, c, out[1], out[2], t, l)
    return dx


def upsample2d_forward(x, size, interpolation="nearest"):
    """(N, H, W, C) -> (N, H*SH, W*SW, C), 'nearest' or 'bilinear' as Keras 3."""
    op = "upsample2d_forward"
    x, (sh, sw), mode, out = operands.upsample2d_forward(DEVICE, x, size, interpolation)
    y = rt.empty(out, what=f"{op} output")
    n, h, w, c = x.shape
    elementwise("spatial", "upsample2d_forward", y.size, x, y, n, h, w, c, sh, sw,
                _MODES[mode])
    return y


def upsample2d_backward(dy, input_shape, size, interpolation="nearest"):
    """dx (input_shape), gathered: each pixel sums the outputs that read it."""
    op = "upsample2d_backward"
    dy, (n, h, w, c), (sh, sw), mode = operands.upsample2d_backward(
        DEVICE, dy, input_shape, size, interpolation)
    dx = rt.empty((n, h, w, c), what=f"{op} output")
    elementwise("spatial", "upsample2d_backward", dx.size, dy, dx, n, h, w, c, sh, sw,
                _MODES[mode])
    return dx


# -- 3-D spatial ops (ZeroPadding3D, Cropping3D, UpSampling3D; branch vol) ------------------

def pad3d_forward(x, padding):
    """Zero padding: (N, D, H, W, C) -> (N, front + D + back, top + H + bottom,
    left + W + right, C)."""
    op = "pad3d_forward"
    x, ((f, _), (t, _), (l, _)), out = operands.pad3d_forward(DEVICE, x, padding)
    y = rt.empty(out, what=f"{op} output")
    elementwise("spatial", "pad3d_forward", y.size, x, y, *x.shape, *out[1:4], f, t, l)
    return y


def pad3d_backward(dy, padding):
    """The crop undoing pad3d_forward (also Cropping3D's forward)."""
    op = "pad3d_backward"
    dy, ((f, _), (t, _), (l, _)), out = operands.pad3d_backward(DEVICE, dy, padding)
    dx = rt.empty(out, what=f"{op} output")
    elementwise("spatial", "pad3d_backward", dx.size, dy, dx, *dy.shape, *out[1:4], f, t, l)
    return dx


def upsample3d_forward(x, size):
    """(N, D, H, W, C) -> (N, D*SD, H*SH, W*SW, C), each voxel repeated."""
    op = "upsample3d_forward"
    x, factors, out = operands.upsample3d_forward(DEVICE, x, size)
    y = rt.empty(out, what=f"{op} output")
    elementwise("spatial", "upsample3d_forward", y.size, x, y, *x.shape, *factors)
    return y


def upsample3d_backward(dy, input_shape, size):
    """dx (input_shape), gathered: each voxel sums its copies."""
    op = "upsample3d_backward"
    dy, input_shape, factors = operands.upsample3d_backward(DEVICE, dy, input_shape, size)
    dx = rt.empty(input_shape, what=f"{op} output")
    elementwise("spatial", "upsample3d_backward", dx.size, dy, dx, *input_shape, *factors)
    return dx
