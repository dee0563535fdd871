"""Operands of the color op (native/color.pyx, pynn/backend/opencl/color.py): the colour
transforms of Keras 3's AutoContrast, Equalization, Solarization, RandomInvert,
RandomPosterization, RandomGrayscale, RandomColorDegeneration, RandomSharpness, RandomHue
and RandomSaturation on (N, H, W, C) images.

``params`` (N, 2) hold each image's parameters (Keras's transformation, one row per image),
by ``transform``:
  solarize    (addition, threshold), both on the 0..255 scale
  invert      (apply, top): y = top - x where apply != 0
  posterize   (shift, -): bits dropped, 0..7
  grayscale   (apply, -)
  degenerate  (factor, -): x + factor * (gray - x)
  sharpen     (factor, -): Keras's draw in [0, 1]; the blend weight is 1 - 2 * factor
  hue         (delta, -): added to the hue, wrapped into [0, 1]
  saturation  (factor, -): multiplies the saturation
auto_contrast and equalize take no parameters (params None); equalize's histogram has
``bins`` bins per channel over the whole batch, as Keras's.
"""

import operator

from pynn.backend.operands.common import check_count, number

TRANSFORMS = ("auto_contrast", "equalize", "solarize", "invert", "posterize", "grayscale",
              "degenerate", "sharpen", "hue", "saturation")
# Transforms that need no params.
STATISTICS = ("auto_contrast", "equalize")
# Transforms that read each pixel's red, green and blue (grayscale also passes 1 channel).
RGB = ("grayscale", "degenerate", "hue", "saturation")
MAX_BINS = 1 << 20


def color_transform_forward(arrays, x, transform, params, value_range, bins):
    """-> (x, transform code, params or None, (lo, hi), bins)."""
    op = "color_transform_forward"
    name = str(transform).lower()
    if name not in TRANSFORMS:
        raise ValueError(f"{op}: transform must be one of {TRANSFORMS}, got {transform!r}")
    x = arrays.float_input(op, "x", x, ndim=4)
    n, h, w, c = x.shape
    check_count(arrays, op, "x", n * h * w * c)
    if name in RGB and not (c == 3 or (name == "grayscale" and c == 1)):
        need = "3 (RGB) or 1" if name == "grayscale" else "3 (RGB)"
        raise ValueError(f"{op}: {name} needs images with {need} channels, got shape "
                         f"{tuple(x.shape)}")
    if name in STATISTICS:
        if params is not None:
            raise ValueError(f"{op}: {name} takes no params, got {params!r}")
    else:
        if params is None:
            raise ValueError(f"{op}: {name} needs params (N, 2), one row per image")
        params = arrays.float_input(op, "params", params, ndim=2, like=x)
        if tuple(params.shape) != (n, 2):
            raise ValueError(f"{op}: 'params' must have the shape ({n}, 2) (one row per "
                             f"image), got {tuple(params.shape)}")
    try:
        lo, hi = value_range
    except (TypeError, ValueError):
        raise ValueError(f"{op}: 'value_range' must be (low, high), got "
                         f"{value_range!r}") from None
    lo, hi = number(op, "value_range[0]", lo), number(op, "value_range[1]", hi)
    if not lo < hi:
        raise ValueError(f"{op}: 'value_range' must have low < high, got {value_range!r}")
    try:
        bins = operator.index(bins)
    except TypeError:
        raise ValueError(f"{op}: 'bins' must be an int, got {bins!r}") from None
    if not 1 <= bins <= MAX_BINS:
        raise ValueError(f"{op}: 'bins' must be in [1, {MAX_BINS}], got {bins}")
    return x, TRANSFORMS.index(name), params, (lo, hi), bins


# -- clahe: Keras 3's ContrastLimitedAdaptiveHistogramEqualization --
# Each tile's equalization table has CLAHE_LEVELS entries (Keras's 0..255 levels).
CLAHE_LEVELS = 256


def clahe_forward(arrays, x, value_range, clip_limit, tile_grid_size):
    """-> (x, (lo, hi), clip_limit, (grid_h, grid_w), (tile_h, tile_w))."""
    op = "clahe_forward"
    x = arrays.float_input(op, "x", x, ndim=4)
    n, h, w, c = x.shape
    check_count(arrays, op, "x", n * h * w * c)
    try:
        lo, hi = value_range
    except (TypeError, ValueError):
        raise ValueError(f"{op}: 'value_range' must be (low, high), got "
                         f"{value_range!r}") from None
    lo, hi = number(op, "value_range[0]", lo), number(op, "value_range[1]", hi)
    if not lo < hi:
        raise ValueError(f"{op}: 'value_range' must have low < high, got {value_range!r}")
    clip_limit = number(op, "clip_limit", clip_limit)
    try:
        grid = tuple(operator.index(g) for g in tile_grid_size)
    except TypeError:
        grid = ()
    if len(grid) != 2 or min(grid) < 1:
        raise ValueError(f"{op}: 'tile_grid_size' must be two positive ints (height, width), "
                         f"got {tile_grid_size!r}")
    if h < 1 or w < 1:
        raise ValueError(f"{op}: images must have a positive height and width, got shape "
                         f"{tuple(x.shape)}")
    tile = (-(-h // grid[0]), -(-w // grid[1]))
    check_count(arrays, op, "tile tables", n * grid[0] * grid[1] * c * CLAHE_LEVELS)
    return x, (lo, hi), clip_limit, grid, tile
