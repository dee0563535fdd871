"""Operands of the scan ops (native/scan.pyx, pynn/backend/opencl/scan.py): keras.ops'
cumsum/cumprod along one axis.

Any float array is read as (outer, n, inner), n the scanned axis: a line is the n values at
one (outer, inner) pair, inner apart.
"""

import math
import operator

SCAN_OPS = ("sum", "prod")


def _axis(op, axis, ndim):
    try:
        axis = operator.index(axis)
    except TypeError:
        raise TypeError(f"{op}: 'axis' must be an int, got {axis!r}") from None
    if not -max(ndim, 1) <= axis < max(ndim, 1):
        raise ValueError(f"{op}: 'axis' {axis} is out of range for a {ndim}-D input")
    return axis % max(ndim, 1)


def _lines(shape, axis):
    if not shape:
        return 1, 1, 1
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])


def scan_forward(arrays, x, axis, op, reverse):
    """-> (x, (outer, n, inner), code, reverse)."""
    x = arrays.float_input("scan_forward", "x", x)
    if not isinstance(op, str) or op not in SCAN_OPS:
        raise ValueError(f"scan_forward: 'op' must be one of {', '.join(SCAN_OPS)}, got "
                         f"{op!r}")
    if not isinstance(reverse, (bool, int)) or reverse not in (0, 1):
        raise TypeError(f"scan_forward: 'reverse' must be a bool, got {reverse!r}")
    axis = _axis("scan_forward", axis, x.ndim)
    return x, _lines(tuple(x.shape), axis), SCAN_OPS.index(op), int(bool(reverse))


def cumprod_backward(arrays, x, dy, axis):
    """-> (x, dy, (outer, n, inner))."""
    x = arrays.float_input("cumprod_backward", "x", x)
    dy = arrays.float_input("cumprod_backward", "dy", dy, like=x)
    if tuple(dy.shape) != tuple(x.shape):
        raise ValueError(f"cumprod_backward: 'dy' must have x's shape {tuple(x.shape)}, got "
                         f"{tuple(dy.shape)}")
    axis = _axis("cumprod_backward", axis, x.ndim)
    return x, dy, _lines(tuple(x.shape), axis)
