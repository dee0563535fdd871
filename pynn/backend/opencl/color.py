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


# -- clahe: Keras 3's ContrastLimitedAdaptiveHistogramEqualization --
def clahe_forward(x, value_range=(0, 255), clip_limit=4.0, tile_grid_size=(8, 8)):
    """Keras 3's CLAHE on x (N, H, W, C): a table per (image, tile, channel), then every
    pixel through its four nearest tables (see opencl/color.cl)."""
    op = "clahe_forward"
    x, (lo, hi), clip_limit, (gh, gw), (th, tw) = operands.clahe_forward(
        DEVICE, x, value_range, clip_limit, tile_grid_size)
    y = rt.empty(x.shape, what=f"{op} output")
    if y.size == 0:
        return y
    n, h, w, c = x.shape
    table = rt.empty((n * gh * gw * c * operands.CLAHE_LEVELS,), what=f"{op} tile tables")
    # Keras on torch counts in int64, so the limit is an integer (truncated), possibly 0;
    # -1 when clip_limit <= 0 turns clipping off.
    limit = np.float32(int(clip_limit * (th * tw) / 256.0) if clip_limit > 0 else -1)
    lo32, hi32 = np.float32(lo), np.float32(hi)
    elementwise("color", "clahe_tables", n * gh * gw * c, x, table, n, h, w, c, gh, gw, th, tw,
                lo32, hi32, limit)
    elementwise("color", "clahe_apply", y.size, x, table, y, n, h, w, c, gh, gw, th, tw, lo32,
                hi32)
    return y
