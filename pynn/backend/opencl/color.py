"""OpenCL colour transforms: the host side of ``opencl/color.cl``.

Same name, signature and semantics as ``native/color.pyx``; operands are checked by
``pynn.backend.operands.color``. The layers upload their per-image parameters (two floats
per image) through ``asarray``, so a device model augments on the device.
"""

import numpy as np

from pynn.backend.opencl import runtime as rt
from pynn.backend.opencl.arrays import DEVICE
from pynn.backend.opencl.launch import elementwise
from pynn.backend.operands import color as operands


def color_transform_forward(x, transform, params=None, value_range=(0, 255), bins=256):
    """Keras 3's colour transform on x (N, H, W, C), params (N, 2) one row per image."""
    op = "color_transform_forward"
    x, code, params, (lo, hi), bins = operands.color_transform_forward(
        DEVICE, x, transform, params, value_range, bins)
    y = rt.empty(x.shape, what=f"{op} output")
    n, h, w, c = x.shape
    if y.size == 0:
        return y
    name = operands.TRANSFORMS[code]
    lo32, hi32 = np.float32(lo), np.float32(hi)
    if name == "equalize":
        hist = rt.zeros((c * (bins + 1),), np.int32, what=f"{op} histograms")
        # Keras's _scale_values: scale and offset in double, applied in float.
        scale = 255.0 / (hi - lo)
        to255, off255 = np.float32(scale), np.float32(-lo * scale)
        elementwise("color", "color_equalize_histogram", y.size, x, hist, y.size, c, bins,
                    to255, off255)
        elementwise("color", "color_equalize_table", c, hist, c, bins)
        elementwise("color", "color_equalize_apply", y.size, x, hist, y, y.size, c, bins,
                    to255, off255, np.float32((hi - lo) / 255.0), lo32)
    elif name == "auto_contrast":
        elementwise("color", "color_auto_contrast", n * c, x, y, n, h * w, c, lo32, hi32)
    elif name == "sharpen":
        elementwise("color", "color_sharpen", y.size, x, params, y, n, h * w, w, c, lo32, hi32)
    else:
        elementwise("color", "color_pixels", n * h * w, x, params, y, n, h * w, c, code, lo32,
                    hi32)
    return y
