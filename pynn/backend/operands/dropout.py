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
