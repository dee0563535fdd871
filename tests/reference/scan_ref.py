"""Float64 NumPy oracles of the scan family (native/scan.pyx, opencl/scan.cl): keras.ops'
cumsum/cumprod along one axis and cumprod's exact gradient."""

import itertools

import numpy as np


def scan_forward_ref(x, axis, op, reverse=False):
    x = np.asarray(x, np.float64)
    fold = np.cumsum if op == "sum" else np.cumprod
    if reverse:
        return np.flip(fold(np.flip(x, axis), axis=axis), axis)
    return fold(x, axis=axis)


def cumprod_backward_ref(x, dy, axis):
    """dx[k] = sum_{i >= k} dy[i] prod_{j <= i, j != k} x[j] per line, term by term (no
    division, so zeros need no care): the naive twin of the kernels' two passes."""
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    dy = np.moveaxis(np.asarray(dy, np.float64), axis, -1)
    dx = np.zeros_like(x)
    n = x.shape[-1]
    for k, i in itertools.product(range(n), range(n)):
        if i < k:
            continue
        others = np.delete(x[..., :i + 1], k, axis=-1)
        dx[..., k] += dy[..., i] * np.prod(others, axis=-1)
    return np.moveaxis(dx, -1, axis)
