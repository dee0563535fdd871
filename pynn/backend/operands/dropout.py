"""Operands of the dropout ops (native/dropout.pyx, pynn/backend/opencl/dropout.py)."""

import math

import numpy as np

from pynn.backend.operands.common import number, uint64


def drop_rate(op, value):
    """The drop probability, in [0, 1)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: 'rate' must be a number, got {value!r}")
    try:
        r = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: 'rate' must be a number, got {value!r}") from None
    if not 0.0 <= r < 1.0:
        raise ValueError(f"{op}: 'rate' must be in [0, 1), got {value!r}")
    return r


def dropout_threshold(rate):
    """The uint32 keep threshold floor(rate * 2^32) of native/dropout.pyx's design note:
    both backends compare the same Philox words with the same number."""
    return int(math.floor(drop_rate("dropout_threshold", rate) * 4294967296.0))


def dropout_forward(arrays, x, rate, seed, offset, op="dropout_forward"):
    """-> (rate, seed, offset, x)."""
    r = drop_rate(op, rate)
    seed = uint64(op, "seed", seed)
    offset = uint64(op, "offset", offset)
    return r, seed, offset, arrays.float_input(op, "x", x)


def dropout_backward(arrays, dy, mask, rate):
    """-> (rate, dy, mask uint8 shaped like dy)."""
    op = "dropout_backward"
    r = drop_rate(op, rate)
    dy = arrays.float_input(op, "dy", dy)
    mask = arrays.mask_input(op, "mask", mask)
    if mask.shape != dy.shape:
        raise ValueError(f"{op}: 'mask' must have the shape of dy {dy.shape}, got {mask.shape}")
    return r, dy, mask


def philox4x32_10_block(counter, key):
    """-> (4 counter words, 2 key words) of a known-answer call, each a uint32."""
    c = [int(v) for v in counter]
    k = [int(v) for v in key]
    if len(c) != 4 or len(k) != 2 or not all(0 <= v < 2**32 for v in c + k):
        raise ValueError("philox4x32_10_block: expected 4 counter and 2 key uint32 words, "
                         f"got counter={counter!r}, key={key!r}")
    return c, k


# -- issue 12: noise layers ----------------------------------------------------------------
def spatial_dropout_forward(arrays, x, rate, seed, offset):
    """-> (rate, seed, offset, x); x has a batch and a channel axis."""
    op = "spatial_dropout_forward"
    r, seed, offset, x = dropout_forward(arrays, x, rate, seed, offset, op)
    if x.ndim < 2:
        raise ValueError(f"{op}: 'x' must be (N, ..., C), at least 2 dimensions, got shape "
                         f"{x.shape}")
    return r, seed, offset, x


def spatial_dropout_backward(arrays, dy, mask, rate):
    """-> (rate, dy, mask uint8 (N, C))."""
    op = "spatial_dropout_backward"
    r = drop_rate(op, rate)
    dy = arrays.float_input(op, "dy", dy)
    mask = arrays.mask_input(op, "mask", mask)
    if dy.ndim < 2:
        raise ValueError(f"{op}: 'dy' must be (N, ..., C), got shape {dy.shape}")
    want = (dy.shape[0], dy.shape[dy.ndim - 1])
    if tuple(mask.shape) != want:
        raise ValueError(f"{op}: 'mask' must have shape (N, C) = {want}, got {mask.shape}")
    return r, dy, mask


def gaussian_noise_forward(arrays, x, stddev, seed, offset):
    """-> (stddev, seed, offset, x)."""
    op = "gaussian_noise_forward"
    s = number(op, "stddev", stddev, lo=0.0)
    return s, uint64(op, "seed", seed), uint64(op, "offset", offset), arrays.float_input(
        op, "x", x)


def gaussian_dropout_forward(arrays, x, rate, seed, offset):
    """-> (stddev = sqrt(rate / (1 - rate)), seed, offset, x)."""
    op = "gaussian_dropout_forward"
    r, seed, offset, x = dropout_forward(arrays, x, rate, seed, offset, op)
    return math.sqrt(r / (1.0 - r)), seed, offset, x


def gaussian_dropout_backward(arrays, dy, noise):
    """-> (dy, noise shaped like dy)."""
    op = "gaussian_dropout_backward"
    dy = arrays.float_input(op, "dy", dy)
    noise = arrays.float_input(op, "noise", noise, like=dy)
    if noise.shape != dy.shape:
        raise ValueError(f"{op}: 'noise' must have the shape of dy {dy.shape}, got "
                         f"{noise.shape}")
    return dy, noise


# -- Keras 3's AlphaDropout -------------------------------------------------------------------
# SELU's constants (Keras's alpha and scale); alpha_p = -alpha * scale is the value a dropped
# element takes before the affine map that restores the mean and variance.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
ALPHA_DROPOUT_MAX_RANK = 8


def alpha_dropout_affine(rate):
    """(a, b, dropped) of Keras's AlphaDropout in float64: y = a*x + b where kept, dropped =
    a*alpha_p + b where dropped, a = ((1 - rate)(1 + rate alpha_p^2))^-1/2,
    b = -a alpha_p rate."""
    alpha_p = -SELU_ALPHA * SELU_SCALE
    a = ((1.0 - rate) * (1.0 + rate * alpha_p**2)) ** -0.5
    b = -a * alpha_p * rate
    return a, b, a * alpha_p + b


def alpha_dropout_noise_shape(op, noise_shape, shape):
    """Keras's noise_shape (None: x's shape; a None entry takes x's size on that axis),
    each axis x's size or 1 (broadcast over that axis) -> a tuple of ints."""
    if noise_shape is None:
        return tuple(shape)
    try:
        dims = list(noise_shape)
    except TypeError:
        raise ValueError(f"{op}: 'noise_shape' must be None or a tuple of {len(shape)} ints "
                         f"or None, got {noise_shape!r}") from None
    if len(dims) != len(shape):
        raise ValueError(f"{op}: 'noise_shape' must have one entry per axis of x "
                         f"{tuple(shape)}, got {noise_shape!r}")
    out = []
    for d, n in zip(dims, shape):
        if d is None:
            out.append(n)
            continue
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)) or \
                d not in (1, n):
            raise ValueError(f"{op}: 'noise_shape' entries must be None, 1 or x's size on "
                             f"their axis (x {tuple(shape)}), got {noise_shape!r}")
        out.append(int(d))
    return tuple(out)


def alpha_dropout_forward(arrays, x, rate, seed, offset, noise_shape):
    """-> (rate, seed, offset, x, noise shape as ints)."""
    op = "alpha_dropout_forward"
    r, seed, offset, x = dropout_forward(arrays, x, rate, seed, offset, op)
    if x.ndim > ALPHA_DROPOUT_MAX_RANK:
        raise ValueError(f"{op}: 'x' may have at most {ALPHA_DROPOUT_MAX_RANK} dimensions, "
                         f"got shape {x.shape}")
    return r, seed, offset, x, alpha_dropout_noise_shape(op, noise_shape, x.shape)


def alpha_dropout_backward(arrays, dy, mask, rate):
    """-> (rate, dy, mask uint8): mask of dy's rank, each axis dy's size or 1."""
    op = "alpha_dropout_backward"
    r = drop_rate(op, rate)
    dy = arrays.float_input(op, "dy", dy)
    mask = arrays.mask_input(op, "mask", mask)
    if dy.ndim > ALPHA_DROPOUT_MAX_RANK:
        raise ValueError(f"{op}: 'dy' may have at most {ALPHA_DROPOUT_MAX_RANK} dimensions, "
                         f"got shape {dy.shape}")
    if mask.ndim != dy.ndim or any(m not in (1, n) for m, n in zip(mask.shape, dy.shape)):
        raise ValueError(f"{op}: 'mask' must have dy's rank, each axis dy's size or 1 (dy "
                         f"{tuple(dy.shape)}), got shape {tuple(mask.shape)}")
    return r, dy, mask


def broadcast_strides(shape, mask_shape):
    """The mask's element strides along x's axes, 0 where the mask broadcasts: the kernels
    read mask[sum(i_k * stride_k)] for x's element (i_0, ..., i_k, ...)."""
    strides, step = [0] * len(shape), 1
    for k in range(len(shape) - 1, -1, -1):
        strides[k] = step if mask_shape[k] != 1 else 0
        step *= mask_shape[k]
    return strides
