"""Operands of the box, mixing and blur ops (native/augment_mix.pyx,
pynn/backend/opencl/augment_mix.py): Keras 3's CutMix, MixUp, RandomErasing and
RandomGaussianBlur.

``boxes`` (N, 4) hold Keras's float corners ``[x0, x1, y0, y1]`` per image: pixel (row r,
column c) is inside when ``x0 <= c < x1`` and ``y0 <= r < y1``. ``permutation`` is host data
(N ints, a permutation of range(N), as Keras's shuffle draws): it is checked whole here and
inverted for the backward, then each backend moves it where its kernels read it.
"""

import numpy as np

from pynn.backend.operands.common import INT32_MAX, as_int_array, number


def _images(arrays, op, name, x):
    x = arrays.float_input(op, name, x, ndim=4)
    if x.shape[0] > INT32_MAX:
        raise ValueError(f"{op}: '{name}' holds {x.shape[0]} images, past {INT32_MAX}")
    return x


def _boxes(arrays, op, boxes, x):
    n = x.shape[0]
    b = arrays.float_input(op, "boxes", boxes, ndim=2, like=x)
    if tuple(b.shape) != (n, 4):
        raise ValueError(f"{op}: 'boxes' must have the shape ({n}, 4) (Keras's [x0, x1, y0, "
                         f"y1] per image), got {tuple(b.shape)}")
    return b


def _permutation(op, permutation, n):
    """-> (permutation, its inverse), int32 host arrays."""
    if permutation is None or hasattr(permutation, "queue"):
        raise TypeError(f"{op}: 'permutation' must be host integers (N,), got "
                        f"{type(permutation).__name__}")
    perm = as_int_array(op, "permutation", permutation, ndim=1)
    if perm.shape != (n,):
        raise ValueError(f"{op}: 'permutation' must hold one index per image ({n},), got "
                         f"shape {perm.shape}")
    if n and not np.array_equal(np.sort(perm), np.arange(n)):
        raise ValueError(f"{op}: 'permutation' must be a permutation of range({n}), got "
                         f"{perm.tolist()[:16]}")
    inverse = np.empty(n, np.int32)
    inverse[perm] = np.arange(n, dtype=np.int32)
    return perm, inverse


def _mix(arrays, op, name, x, permutation, weights, boxes):
    x = _images(arrays, op, name, x)
    n = x.shape[0]
    perm, inverse = _permutation(op, permutation, n)
    w = arrays.float_input(op, "weights", weights, ndim=1, like=x)
    if w.shape[0] != n:
        raise ValueError(f"{op}: 'weights' must hold one value per image ({n},), got "
                         f"{tuple(w.shape)}")
    return x, perm, inverse, w, _boxes(arrays, op, boxes, x)


def image_mix_forward(arrays, x, permutation, weights, boxes):
    """-> (x, permutation, inverse, weights, boxes)."""
    return _mix(arrays, "image_mix_forward", "x", x, permutation, weights, boxes)


def image_mix_backward(arrays, dy, permutation, weights, boxes):
    """-> (dy, permutation, inverse, weights, boxes)."""
    return _mix(arrays, "image_mix_backward", "dy", dy, permutation, weights, boxes)


def _value_range(op, value_range):
    try:
        lo, hi = value_range
    except (TypeError, ValueError):
        raise ValueError(f"{op}: 'value_range' must be (low, high), got "
                         f"{value_range!r}") from None
    lo, hi = number(op, "value_range[0]", lo), number(op, "value_range[1]", hi)
    if lo > hi:
        raise ValueError(f"{op}: 'value_range' must have low <= high, got {value_range!r}")
    return lo, hi


def image_erase_forward(arrays, x, boxes, fill, value_range):
    """-> (x, boxes, fill, fill per element (bool), (lo, hi)); fill (C,) or x's shape."""
    op = "image_erase_forward"
    x = _images(arrays, op, "x", x)
    b = _boxes(arrays, op, boxes, x)
    f = arrays.float_input(op, "fill", fill, like=x)
    per_element = tuple(f.shape) == tuple(x.shape)
    if not per_element and tuple(f.shape) != (x.shape[3],):
        raise ValueError(f"{op}: 'fill' must have the shape ({x.shape[3]},) (one value per "
                         f"channel) or x's {tuple(x.shape)}, got {tuple(f.shape)}")
    try:
        lo, hi = value_range
    except (TypeError, ValueError):
        raise ValueError(f"{op}: 'value_range' must be (low, high), got "
                         f"{value_range!r}") from None
    lo, hi = number(op, "value_range[0]", lo), number(op, "value_range[1]", hi)
    if lo > hi:
        raise ValueError(f"{op}: 'value_range' must have low <= high, got {value_range!r}")
    return x, b, f, per_element, (lo, hi)


def image_blur_forward(arrays, x, vertical, horizontal, blur, value_range):
    """-> (x, vertical, horizontal, blur, (lo, hi)); the taps (K,) with K odd, blur (N,)."""
    op = "image_blur_forward"
    x = _images(arrays, op, "x", x)
    v = arrays.float_input(op, "vertical", vertical, ndim=1, like=x)
    h = arrays.float_input(op, "horizontal", horizontal, ndim=1, like=x)
    if v.shape != h.shape or v.shape[0] % 2 == 0:
        raise ValueError(f"{op}: 'vertical' and 'horizontal' must hold the same odd number of "
                         f"taps, got {tuple(v.shape)} and {tuple(h.shape)}")
    b = arrays.float_input(op, "blur", blur, ndim=1, like=x)
    if b.shape[0] != x.shape[0]:
        raise ValueError(f"{op}: 'blur' must hold one flag per image ({x.shape[0]},), got "
                         f"{tuple(b.shape)}")
    return x, v, h, b, _value_range(op, value_range)
