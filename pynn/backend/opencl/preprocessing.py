"""OpenCL preprocessing ops: the host side of ``opencl/preprocessing.cl``.

Same names, signatures and semantics as ``native/preprocessing.pyx``; operands are checked by
``pynn.backend.operands.preprocessing``. The layers upload their per-batch matrices and
factors (a few floats per image) through ``asarray``, so a device model augments on the
device.
"""

from pynn.backend.opencl import runtime as rt
from pynn.backend.opencl.arrays import DEVICE
from pynn.backend.opencl.launch import elementwise
from pynn.backend.operands import preprocessing as operands


def image_affine_forward(x, matrices, output_size, interpolation="bilinear",
                         fill_mode="constant", fill_value=0.0):
    """Resample each image through Keras's affine matrices[n] into output_size."""
    op = "image_affine_forward"
    x, m, out, order, mode, fill = operands.image_affine_forward(
        DEVICE, x, matrices, output_size, interpolation, fill_mode, fill_value)
    y = rt.empty(out, what=f"{op} output")
    n, h, w, c = x.shape
    elementwise("preprocessing", op, y.size, x, m, y, n, h, w, c, out[1], out[2], order, mode,
                float(fill), 6)
    return y


def image_affine_backward(dy, matrices, input_shape, interpolation="bilinear",
                          fill_mode="constant"):
    """dx (input_shape): dy scattered back through the forward's neighbours and weights."""
    op = "image_affine_backward"
    dy, m, shape, order, mode = operands.image_affine_backward(
        DEVICE, dy, matrices, input_shape, interpolation, fill_mode)
    dx = rt.empty(shape, what=f"{op} output")
    n, h, w, c = shape
    elementwise("preprocessing", op, n * c, dy, m, dx, n, h, w, c, dy.shape[1], dy.shape[2],
                order, mode, 6)
    return dx


def channel_affine_forward(x, scale, offset=None):
    """y = x * scale + offset over x's trailing K values; offset None: y = x * scale."""
    op = "channel_affine_forward"
    x, scale, offset, k = operands.channel_affine_forward(DEVICE, x, scale, offset)
    y = rt.empty(x.shape, what=f"{op} output")
    elementwise("preprocessing", op, y.size, x, scale, scale if offset is None else offset, y,
                y.size, k, int(offset is not None))
    return y


def image_adjust_forward(x, contrast, delta, value_range):
    """RandomContrast / RandomBrightness: clip((x - mean) * contrast + mean + delta)."""
    op = "image_adjust_forward"
    x, contrast, delta, (lo, hi) = operands.image_adjust_forward(DEVICE, x, contrast, delta,
                                                                 value_range)
    y = rt.empty(x.shape, what=f"{op} output")
    n, h, w, c = x.shape
    # An unused slot still needs a buffer argument: x stands in (never read).
    elementwise("preprocessing", op, n * c, x, x if contrast is None else contrast,
                x if delta is None else delta, y, n, h * w, c, int(contrast is not None),
                int(delta is not None), float(lo), float(hi))
    return y


# -- RandomPerspective (auggeo): image_affine's kernels with width 8 --

def image_projective_forward(x, transforms, output_size, interpolation="bilinear",
                             fill_mode="constant", fill_value=0.0):
    """Resample each image through Keras's projective transforms[n] (8 values)."""
    x, m, out, order, mode, fill = operands.image_projective_forward(
        DEVICE, x, transforms, output_size, interpolation, fill_mode, fill_value)
    y = rt.empty(out, what="image_projective_forward output")
    n, h, w, c = x.shape
    elementwise("preprocessing", "image_affine_forward", y.size, x, m, y, n, h, w, c, out[1],
                out[2], order, mode, float(fill), 8)
    return y


def image_projective_backward(dy, transforms, input_shape, interpolation="bilinear",
                              fill_mode="constant"):
    """dx (input_shape): dy scattered back through the forward's neighbours and weights."""
    dy, m, shape, order, mode = operands.image_projective_backward(
        DEVICE, dy, transforms, input_shape, interpolation, fill_mode)
    dx = rt.empty(shape, what="image_projective_backward output")
    n, h, w, c = shape
    elementwise("preprocessing", "image_affine_backward", n * c, dy, m, dx, n, h, w, c,
                dy.shape[1], dy.shape[2], order, mode, 8)
    return dx


# -- RandomElasticTransform (auggeo) --

def image_remap_forward(x, offsets, interpolation="bilinear", fill_mode="constant",
                        fill_value=0.0, value_range=(-float("inf"), float("inf"))):
    """Each output pixel read at its own (row, column) offset, clipped to value_range."""
    op = "image_remap_forward"
    x, coords, out, order, mode, fill, (lo, hi) = operands.image_remap_forward(
        DEVICE, x, offsets, interpolation, fill_mode, fill_value, value_range)
    y = rt.empty(out, what=f"{op} output")
    n, h, w, c = x.shape
    if y.size:
        elementwise("preprocessing", op, y.size, x, coords, y, n, h, w, c, out[1], out[2],
                    order, mode, float(fill), float(lo), float(hi))
    return y
