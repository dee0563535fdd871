"""Operands of the dropout ops (native/dropout.pyx, pynn/backend/opencl/dropout.py)."""

import math

import numpy as np

from pynn.backend.operands.common import uint64


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


def dropout_forward(arrays, x, rate, seed, offset):
    """-> (rate, seed, offset, x)."""
    op = "dropout_forward"
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
