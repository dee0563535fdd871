"""Operands of the spatial ops (native/spatial.pyx, pynn/backend/opencl/spatial.py): zero
padding / cropping and integer-factor upsampling of NHWC images.

``padding`` is ``((top, bottom), (left, right))`` of non-negative ints (Keras's normalized
form); ``size`` a pair of positive ints, the upsampling factors along H and W;
``interpolation`` one of ``INTERPOLATIONS``.
"""

import operator

from pynn.backend.operands.common import INT32_MAX, check_count, check_shape, pair, shape4

INTERPOLATIONS = ("nearest", "bilinear")


def padding_pairs(op, name, padding):
    """((top, bottom), (left, right)) as ints >= 0."""
    try:
        (t, b), (l, r) = ((operator.index(v) for v in side) for side in padding)
    except (TypeError, ValueError):
        raise ValueError(f"{op}: '{name}' must be ((top, bottom), (left, right)) ints, got "
                         f"{padding!r}") from None
    if min(t, b, l, r) < 0:
        raise ValueError(f"{op}: '{name}' must be non-negative, got {padding!r}")
    if max(t, b, l, r) > INT32_MAX:
        raise ValueError(f"{op}: '{name}' must be at most {INT32_MAX} (a C int), got "
                         f"{padding!r}")
    return (t, b), (l, r)


def interpolation_name(op, interpolation):
    name = str(interpolation).lower()
    if name not in INTERPOLATIONS:
        raise ValueError(f"{op}: interpolation must be one of {INTERPOLATIONS}, got "
                         f"{interpolation!r}")
    return name


def pad2d_forward(arrays, x, padding):
    """-> (x, ((top, bottom), (left, right)), output shape)."""
    op = "pad2d_forward"
    x = arrays.float_input(op, "x", x, ndim=4)
    (t, b), (l, r) = padding_pairs(op, "padding", padding)
    n, h, w, c = x.shape
    out = (n, h + t + b, w + l + r, c)
    check_count(arrays, op, "output", n * out[1] * out[2] * c)
    return x, ((t, b), (l, r)), out


def pad2d_backward(arrays, dy, padding):
    """-> (dy, ((top, bottom), (left, right)), output shape): the padding must fit in dy."""
    op = "pad2d_backward"
    dy = arrays.float_input(op, "dy", dy, ndim=4)
    (t, b), (l, r) = padding_pairs(op, "padding", padding)
    n, h, w, c = dy.shape
    if t + b > h or l + r > w:
        raise ValueError(f"{op}: padding {((t, b), (l, r))} removes more than 'dy' holds: "
                         f"shape {tuple(dy.shape)} has H={h}, W={w}")
    return dy, ((t, b), (l, r)), (n, h - t - b, w - l - r, c)


def _size(op, size):
    sh, sw = pair(op, "size", size)
    return sh, sw


def upsample2d_forward(arrays, x, size, interpolation):
    """-> (x, (sh, sw), interpolation, output shape)."""
    op = "upsample2d_forward"
    x = arrays.float_input(op, "x", x, ndim=4)
    sh, sw = _size(op, size)
    mode = interpolation_name(op, interpolation)
    n, h, w, c = x.shape
    out = (n, h * sh, w * sw, c)
    if out[1] > INT32_MAX or out[2] > INT32_MAX:
        raise ValueError(f"{op}: output of {out[1]}x{out[2]} pixels exceeds a C int per axis")
    check_count(arrays, op, "output", n * out[1] * out[2] * c)
    return x, (sh, sw), mode, out


def upsample2d_backward(arrays, dy, input_shape, size, interpolation):
    """-> (dy, input_shape, (sh, sw), interpolation); dy must be the upsampled shape."""
    op = "upsample2d_backward"
    dy = arrays.float_input(op, "dy", dy, ndim=4)
    input_shape = shape4(op, "input_shape", input_shape)
    sh, sw = _size(op, size)
    mode = interpolation_name(op, interpolation)
    n, h, w, c = input_shape
    check_shape(op, "dy", dy, (n, h * sh, w * sw, c))
    return dy, input_shape, (sh, sw), mode


# -- 3-D spatial ops (ZeroPadding3D, Cropping3D, UpSampling3D; branch vol) ------------------
# ``padding`` is ((front, back), (top, bottom), (left, right)) of non-negative ints; ``size``
# three positive ints, the upsampling factors along D, H and W.
from pynn.backend.operands.pool import shape5, triple  # noqa: E402


def padding_triples(op, name, padding):
    """((front, back), (top, bottom), (left, right)) as ints >= 0."""
    try:
        sides = tuple(tuple(operator.index(v) for v in side) for side in padding)
        if len(sides) != 3 or any(len(side) != 2 for side in sides):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"{op}: '{name}' must be ((front, back), (top, bottom), (left, "
                         f"right)) ints, got {padding!r}") from None
    flat = [v for side in sides for v in side]
    if min(flat) < 0:
        raise ValueError(f"{op}: '{name}' must be non-negative, got {padding!r}")
    if max(flat) > INT32_MAX:
        raise ValueError(f"{op}: '{name}' must be at most {INT32_MAX} (a C int), got "
                         f"{padding!r}")
    return sides


def pad3d_forward(arrays, x, padding):
    """-> (x, ((front, back), (top, bottom), (left, right)), output shape)."""
    op = "pad3d_forward"
    x = arrays.float_input(op, "x", x, ndim=5)
    sides = padding_triples(op, "padding", padding)
    n, c = x.shape[0], x.shape[4]
    out = (n,) + tuple(size + a + b for size, (a, b) in zip(x.shape[1:4], sides)) + (c,)
    if max(out[1:4]) > INT32_MAX:
        raise ValueError(f"{op}: padded size {out[1:4]} exceeds a C int per axis")
    check_count(arrays, op, "output", out[0] * out[1] * out[2] * out[3] * c)
    return x, sides, out


def pad3d_backward(arrays, dy, padding):
    """-> (dy, ((front, back), (top, bottom), (left, right)), output shape): the padding
    must fit in dy."""
    op = "pad3d_backward"
    dy = arrays.float_input(op, "dy", dy, ndim=5)
    sides = padding_triples(op, "padding", padding)
    if any(a + b > size for size, (a, b) in zip(dy.shape[1:4], sides)):
        raise ValueError(f"{op}: padding {sides} removes more than 'dy' holds: shape "
                         f"{tuple(dy.shape)} has D={dy.shape[1]}, H={dy.shape[2]}, "
                         f"W={dy.shape[3]}")
    out = (dy.shape[0],) + tuple(size - a - b for size, (a, b) in zip(dy.shape[1:4], sides)) \
        + (dy.shape[4],)
    return dy, sides, out


def upsample3d_forward(arrays, x, size):
    """-> (x, (sd, sh, sw), output shape)."""
    op = "upsample3d_forward"
    x = arrays.float_input(op, "x", x, ndim=5)
    factors = triple(op, "size", size)
    n, c = x.shape[0], x.shape[4]
    out = (n,) + tuple(s * f for s, f in zip(x.shape[1:4], factors)) + (c,)
    if max(out[1:4]) > INT32_MAX:
        raise ValueError(f"{op}: output of {out[1]}x{out[2]}x{out[3]} voxels exceeds a C int "
                         f"per axis")
    check_count(arrays, op, "output", out[0] * out[1] * out[2] * out[3] * c)
    return x, factors, out


def upsample3d_backward(arrays, dy, input_shape, size):
    """-> (dy, input_shape, (sd, sh, sw)); dy must be the upsampled shape."""
    op = "upsample3d_backward"
    dy = arrays.float_input(op, "dy", dy, ndim=5)
    input_shape = shape5(op, "input_shape", input_shape)
    factors = triple(op, "size", size)
    n, c = input_shape[0], input_shape[4]
    check_shape(op, "dy", dy, (n,) + tuple(s * f for s, f in zip(input_shape[1:4], factors))
                + (c,))
    return dy, input_shape, factors
