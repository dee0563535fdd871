"""Operands of the preprocessing ops (native/preprocessing.pyx,
pynn/backend/opencl/preprocessing.py): the image transforms of Keras 3's preprocessing layers.

``matrices`` (N, 6) hold Keras 3's affine transform per image, ``[a0, a1, a2, b0, b1, b2]``
(its 8-vector without the projective pair): output pixel (row r, column c) reads the input at
column ``a0*c + a1*r + a2`` and row ``b0*c + b1*r + b2``. ``interpolation`` is one of
``INTERPOLATIONS``, ``fill_mode`` one of ``FILL_MODES`` (keras.ops.image.affine_transform's).
"""

import operator

from pynn.backend.operands.common import (
    INT32_MAX,
    check_count,
    number,
    same_dtype,
    shape4,
)

INTERPOLATIONS = ("nearest", "bilinear")
FILL_MODES = ("constant", "nearest", "wrap", "mirror", "reflect")


def interpolation_code(op, interpolation):
    name = str(interpolation).lower()
    if name not in INTERPOLATIONS:
        raise ValueError(f"{op}: interpolation must be one of {INTERPOLATIONS}, got "
                         f"{interpolation!r}")
    return INTERPOLATIONS.index(name)


def fill_mode_code(op, fill_mode):
    name = str(fill_mode).lower()
    if name not in FILL_MODES:
        raise ValueError(f"{op}: fill_mode must be one of {FILL_MODES}, got {fill_mode!r}")
    return FILL_MODES.index(name)


def _size2(op, name, size):
    try:
        h, w = (operator.index(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"{op}: '{name}' must be two ints (height, width), got "
                         f"{size!r}") from None
    if min(h, w) < 1 or max(h, w) > INT32_MAX:
        raise ValueError(f"{op}: '{name}' must be two ints in [1, {INT32_MAX}], got {size!r}")
    return h, w


def _matrices(arrays, op, matrices, x, n, width=6, name="matrices"):
    m = arrays.float_input(op, name, matrices, ndim=2, like=x)
    if tuple(m.shape) != (n, width):
        kind = "affine" if width == 6 else "projective"
        raise ValueError(f"{op}: '{name}' must have the shape ({n}, {width}) (one Keras "
                         f"{kind} transform per image), got {tuple(m.shape)}")
    return m


def image_affine_forward(arrays, x, matrices, output_size, interpolation, fill_mode,
                         fill_value):
    """-> (x, matrices, output shape, interpolation code, fill-mode code, fill value)."""
    return _resample_forward(arrays, "image_affine_forward", 6, "matrices", x, matrices,
                             output_size, interpolation, fill_mode, fill_value)


def _resample_forward(arrays, op, width, name, x, matrices, output_size, interpolation,
                      fill_mode, fill_value):
    x = arrays.float_input(op, "x", x, ndim=4)
    n, _, _, c = x.shape
    if x.shape[1] < 1 or x.shape[2] < 1:
        raise ValueError(f"{op}: 'x' must hold images of at least 1x1 pixels, got shape "
                         f"{tuple(x.shape)}")
    m = _matrices(arrays, op, matrices, x, n, width, name)
    ho, wo = _size2(op, "output_size", output_size)
    out = (n, ho, wo, c)
    check_count(arrays, op, "output", n * ho * wo * c)
    return (x, m, out, interpolation_code(op, interpolation), fill_mode_code(op, fill_mode),
            number(op, "fill_value", fill_value))


def image_affine_backward(arrays, dy, matrices, input_shape, interpolation, fill_mode):
    """-> (dy, matrices, input shape, interpolation code, fill-mode code)."""
    return _resample_backward(arrays, "image_affine_backward", 6, "matrices", dy, matrices,
                              input_shape, interpolation, fill_mode)


def _resample_backward(arrays, op, width, name, dy, matrices, input_shape, interpolation,
                       fill_mode):
    dy = arrays.float_input(op, "dy", dy, ndim=4)
    n, _, _, c = dy.shape
    shape = shape4(op, "input_shape", input_shape)
    if shape[0] != n or shape[3] != c:
        raise ValueError(f"{op}: 'input_shape' {shape} must match dy's batch and channels "
                         f"{tuple(dy.shape)}")
    if shape[1] < 1 or shape[2] < 1:
        raise ValueError(f"{op}: 'input_shape' must hold images of at least 1x1 pixels, got "
                         f"{shape}")
    m = _matrices(arrays, op, matrices, dy, n, width, name)
    check_count(arrays, op, "dx", n * shape[1] * shape[2] * c)
    return (dy, m, shape, interpolation_code(op, interpolation),
            fill_mode_code(op, fill_mode))


def channel_affine_forward(arrays, x, scale, offset):
    """-> (x, scale, offset or None, features K): scale and offset (K,) with K the product
    of x's trailing axes that they cover (1 for scalars)."""
    op = "channel_affine_forward"
    x = arrays.float_input(op, "x", x)
    scale = arrays.float_input(op, "scale", scale, ndim=1, like=x)
    if offset is not None:
        offset = arrays.float_input(op, "offset", offset, ndim=1, like=x)
        if offset.shape != scale.shape:
            raise ValueError(f"{op}: 'offset' must have scale's shape {tuple(scale.shape)}, "
                             f"got {tuple(offset.shape)}")
    same_dtype(op, ("x", x), ("scale", scale), ("offset", offset))
    k = scale.shape[0]
    trailing = 1
    fits = k == 1
    for d in reversed(x.shape):
        if fits:
            break
        trailing *= d
        fits = trailing == k
    if not fits or k < 1:
        raise ValueError(f"{op}: 'scale' of {k} values must cover a run of x's trailing axes "
                         f"(or be one value); x has shape {tuple(x.shape)}")
    return x, scale, offset, k


def image_adjust_forward(arrays, x, contrast, delta, value_range):
    """-> (x, contrast or None, delta or None, (lo, hi)); contrast and delta (N,)."""
    op = "image_adjust_forward"
    x = arrays.float_input(op, "x", x, ndim=4)
    n = x.shape[0]
    named = []
    for name, a in (("contrast", contrast), ("delta", delta)):
        if a is not None:
            a = arrays.float_input(op, name, a, ndim=1, like=x)
            if a.shape[0] != n:
                raise ValueError(f"{op}: '{name}' must hold one value per image ({n},), got "
                                 f"{tuple(a.shape)}")
        named.append(a)
    try:
        lo, hi = value_range
    except (TypeError, ValueError):
        raise ValueError(f"{op}: 'value_range' must be (low, high), got "
                         f"{value_range!r}") from None
    lo, hi = number(op, "value_range[0]", lo), number(op, "value_range[1]", hi)
    if lo > hi:
        raise ValueError(f"{op}: 'value_range' must have low <= high, got {value_range!r}")
    return x, named[0], named[1], (lo, hi)


# -- RandomPerspective (auggeo): transforms (N, 8), Keras's affine 6 and the projective pair

def image_projective_forward(arrays, x, transforms, output_size, interpolation, fill_mode,
                             fill_value):
    """-> (x, transforms, output shape, interpolation code, fill-mode code, fill value)."""
    return _resample_forward(arrays, "image_projective_forward", 8, "transforms", x,
                             transforms, output_size, interpolation, fill_mode, fill_value)


def image_projective_backward(arrays, dy, transforms, input_shape, interpolation, fill_mode):
    """-> (dy, transforms, input shape, interpolation code, fill-mode code)."""
    return _resample_backward(arrays, "image_projective_backward", 8, "transforms", dy,
                              transforms, input_shape, interpolation, fill_mode)


# -- RandomElasticTransform (auggeo): offsets (N, HO, WO, 2) [row, column] per pixel

def image_remap_forward(arrays, x, offsets, interpolation, fill_mode, fill_value,
                        value_range):
    """-> (x, offsets, output shape, interpolation code, fill-mode code, fill value,
    (lo, hi)); value_range ends may be infinite (no clip)."""
    op = "image_remap_forward"
    x = arrays.float_input(op, "x", x, ndim=4)
    n, h, w, c = x.shape
    if h < 1 or w < 1:
        raise ValueError(f"{op}: 'x' must hold images of at least 1x1 pixels, got shape "
                         f"{tuple(x.shape)}")
    coords = arrays.float_input(op, "offsets", offsets, ndim=4, like=x)
    if coords.shape[0] != n or coords.shape[3] != 2 or min(coords.shape[1:3]) < 1:
        raise ValueError(f"{op}: 'offsets' must have the shape ({n}, height, width, 2) (a row "
                         f"and a column offset per output pixel), got {tuple(coords.shape)}")
    out = (n, coords.shape[1], coords.shape[2], c)
    check_count(arrays, op, "output", n * out[1] * out[2] * c)
    try:
        lo, hi = value_range
    except (TypeError, ValueError):
        raise ValueError(f"{op}: 'value_range' must be (low, high), got "
                         f"{value_range!r}") from None
    lo = number(op, "value_range[0]", lo, allow_nan=True)
    hi = number(op, "value_range[1]", hi, allow_nan=True)
    if not lo <= hi:
        raise ValueError(f"{op}: 'value_range' must have low <= high, got {value_range!r}")
    return (x, coords, out, interpolation_code(op, interpolation), fill_mode_code(op, fill_mode),
            number(op, "fill_value", fill_value), (lo, hi))
