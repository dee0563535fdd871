"""Operands of the shape ops (native/shape.pyx, pynn/backend/opencl/shape.py): a general
transpose (Keras's Permute) and RepeatVector's broadcast along a new axis.

``perm`` permutes all axes of its operand, batch included (the layer passes ``(0,) + dims``);
at most ``MAX_DIMS`` axes, the number the OpenCL kernel takes as scalar arguments.
"""

import operator

from pynn.backend.operands.common import INT32_MAX, check_count

MAX_DIMS = 6


def permutation(op, perm, ndim):
    """``perm`` as a tuple of ints that permutes range(ndim)."""
    try:
        axes = tuple(operator.index(a) for a in perm)
    except TypeError:
        raise ValueError(f"{op}: 'perm' must be a sequence of ints, got {perm!r}") from None
    if sorted(axes) != list(range(ndim)):
        raise ValueError(f"{op}: 'perm' must be a permutation of the {ndim} axes "
                         f"{tuple(range(ndim))}, got {perm!r}")
    return axes


def _transpose(arrays, op, name, a, perm):
    a = arrays.float_input(op, name, a)
    if not 1 <= a.ndim <= MAX_DIMS:
        raise ValueError(f"{op}: '{name}' must have 1 to {MAX_DIMS} dimensions, got shape "
                         f"{tuple(a.shape)}")
    return a, permutation(op, perm, a.ndim)


def transpose_forward(arrays, x, perm):
    """-> (x, perm): y.shape[k] = x.shape[perm[k]]."""
    return _transpose(arrays, "transpose_forward", "x", x, perm)


def transpose_backward(arrays, dy, perm):
    """-> (dy, inverse of perm): dx = transpose(dy, inverse(perm))."""
    dy, perm = _transpose(arrays, "transpose_backward", "dy", dy, perm)
    inverse = [0] * len(perm)
    for k, axis in enumerate(perm):
        inverse[axis] = k
    return dy, tuple(inverse)


def repeat_vector_forward(arrays, x, n):
    """-> (x (N, F), n)."""
    op = "repeat_vector_forward"
    x = arrays.float_input(op, "x", x, ndim=2)
    if isinstance(n, bool):
        raise TypeError(f"{op}: 'n' must be an int, got {n!r}")
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"{op}: 'n' must be an int, got {n!r}") from None
    if not 1 <= n <= INT32_MAX:
        raise ValueError(f"{op}: 'n' must be in [1, {INT32_MAX}], got {n}")
    check_count(arrays, op, "output", x.shape[0] * n * x.shape[1])
    return x, n


def repeat_vector_backward(arrays, dy):
    """-> dy (N, n, F) with n >= 1."""
    op = "repeat_vector_backward"
    dy = arrays.float_input(op, "dy", dy, ndim=3)
    if dy.shape[1] == 0:
        raise ValueError(f"{op}: 'dy' must repeat at least once (n >= 1), got shape "
                         f"{tuple(dy.shape)}")
    return dy
