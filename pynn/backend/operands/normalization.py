"""Operands of the normalization ops (native/normalization.pyx,
pynn/backend/opencl/normalization.py).

Batch norm sees x as (A, C, B): C the channels of ``axis``, A the axes before it, B the axes
after it (B = 1 for channels_last); statistics are per channel over the M = A*B others.
Group norm sees x as (N, S, C): N the first axis, C the last, S everything between; the
C channels split into ``groups`` consecutive groups of CG = C / groups, and statistics are
per (n, group) over S*CG values. Layer norm is group norm with one group over x reshaped to
(rows, features). RMS norm and unit norm see x as (R, C): one statistic per row of the C
values of its last axis, R the product of the others.
"""

import math
import operator

from pynn.backend.operands.activation import activation_pair
from pynn.backend.operands.common import check_shape, flag, number


def _axis(op, axis, ndim, shape):
    try:
        a = operator.index(axis)
    except TypeError:
        raise TypeError(f"{op}: 'axis' must be an int, got {axis!r}") from None
    if not -ndim <= a < ndim:
        raise ValueError(f"{op}: axis {axis} is out of range for x of rank {ndim} (shape "
                         f"{tuple(shape)}); expected an axis in [{-ndim}, {ndim})")
    return a % ndim


def _vector(arrays, op, name, a, channels, like, inplace=False, optional=False):
    """A per-channel operand (C,) of x's dtype; None passes through where ``optional``."""
    if a is None and optional:
        return None
    if inplace:
        arrays.inplace(op, name, a)
        if a.dtype != like.dtype:
            raise TypeError(f"{op}: '{name}' must have the dtype of 'x' ({like.dtype}), got "
                            f"{a.dtype}")
    else:
        a = arrays.float_input(op, name, a, like=like)
    check_shape(op, name, a, (channels,))
    return a


def _epsilon(op, epsilon):
    return number(op, "epsilon", epsilon, lo=0.0)


def _fused_activation(op, activation, alpha):
    """(name, alpha) of the activation a batch norm op applies after normalizing: any
    elementwise one (softmax mixes channels, so it stays a separate op)."""
    name, alpha = activation_pair(op, activation, alpha)
    if name == "softmax":
        raise ValueError(f"{op}: activation 'softmax' cannot be fused (it normalizes across "
                         "channels); apply it as its own op")
    return name, alpha


def batch_norm_forward(arrays, x, gamma, beta, moving_mean, moving_variance, axis, momentum,
                       epsilon, training, activation="linear", alpha=0.0):
    """-> (x, gamma, beta, moving_mean, moving_variance, (A, C, B), momentum, epsilon,
    training, (activation, alpha)). The moving statistics are updated in place when
    training, so they must then be writable whole buffers, distinct from each other."""
    op = "batch_norm_forward"
    act = _fused_activation(op, activation, alpha)
    x = _input(arrays, op, x)
    dims = _split(op, x, axis)
    c = dims[1]
    training = flag(op, "training", training)
    gamma = _vector(arrays, op, "gamma", gamma, c, x, optional=True)
    beta = _vector(arrays, op, "beta", beta, c, x, optional=True)
    moving_mean = _vector(arrays, op, "moving_mean", moving_mean, c, x, inplace=training)
    moving_variance = _vector(arrays, op, "moving_variance", moving_variance, c, x,
                              inplace=training)
    if training and arrays.shares_memory(moving_mean, moving_variance):
        raise ValueError(f"{op}: 'moving_mean' and 'moving_variance' must not share memory")
    momentum = number(op, "momentum", momentum, lo=0.0, hi=1.0)
    return (x, gamma, beta, moving_mean, moving_variance, dims, momentum,
            _epsilon(op, epsilon), training, act)


def _input(arrays, op, x):
    x = arrays.float_input(op, "x", x)
    if x.ndim < 1:
        raise ValueError(f"{op}: 'x' must have at least 1 dimension, got shape {x.shape}")
    return x


def _split(op, x, axis):
    a = _axis(op, axis, x.ndim, x.shape)
    return (math.prod(x.shape[:a]), x.shape[a], math.prod(x.shape[a + 1:]))


def batch_norm_backward(arrays, dy, x, gamma, mean, inv_std, axis, batch_stats,
                        need_input_grad, beta=None, activation="linear", alpha=0.0):
    """-> (dy, x, gamma, mean, inv_std, (A, C, B), batch_stats, need_input_grad, beta,
    (activation, alpha)). With an activation dy is its output's gradient, and beta (None:
    center=False) rebuilds the pre-activation the forward made."""
    op = "batch_norm_backward"
    act = _fused_activation(op, activation, alpha)
    x = _input(arrays, op, x)
    dy = arrays.float_input(op, "dy", dy, like=x)
    check_shape(op, "dy", dy, x.shape)
    dims = _split(op, x, axis)
    c = dims[1]
    gamma = _vector(arrays, op, "gamma", gamma, c, x, optional=True)
    mean = _vector(arrays, op, "mean", mean, c, x)
    inv_std = _vector(arrays, op, "inv_std", inv_std, c, x)
    beta = _vector(arrays, op, "beta", beta, c, x, optional=True)
    return (dy, x, gamma, mean, inv_std, dims, flag(op, "batch_stats", batch_stats),
            flag(op, "need_input_grad", need_input_grad), beta, act)


def batch_norm_apply(arrays, x, gamma, beta, mean, inv_std, axis, activation="linear",
                     alpha=0.0):
    """-> (x, gamma, beta, mean, inv_std, (A, C, B), (activation, alpha))."""
    op = "batch_norm_apply"
    act = _fused_activation(op, activation, alpha)
    x = _input(arrays, op, x)
    dims = _split(op, x, axis)
    c = dims[1]
    gamma = _vector(arrays, op, "gamma", gamma, c, x, optional=True)
    beta = _vector(arrays, op, "beta", beta, c, x, optional=True)
    mean = _vector(arrays, op, "mean", mean, c, x)
    inv_std = _vector(arrays, op, "inv_std", inv_std, c, x)
    return x, gamma, beta, mean, inv_std, dims, act


def _groups(op, groups, x):
    if isinstance(groups, bool):
        raise TypeError(f"{op}: 'groups' must be an int, got {groups!r}")
    try:
        g = operator.index(groups)
    except TypeError:
        raise TypeError(f"{op}: 'groups' must be an int, got {groups!r}") from None
    c = x.shape[-1]
    if g < 1 or c % g:
        raise ValueError(f"{op}: groups={groups} must be a positive divisor of the {c} "
                         f"channels of x (shape {tuple(x.shape)})")
    return g


def _group_dims(x, g):
    """(N, S, C, G)."""
    n, c = x.shape[0], x.shape[-1]
    return (n, math.prod(x.shape[1:-1]), c, g)


def group_norm_forward(arrays, x, gamma, beta, groups, epsilon, rms_scaling):
    """-> (x, gamma, beta, (N, S, C, G), epsilon, rms_scaling)."""
    op = "group_norm_forward"
    x = arrays.float_input(op, "x", x)
    if x.ndim < 2:
        raise ValueError(f"{op}: 'x' must have at least 2 dimensions (N, ..., C), got shape "
                         f"{tuple(x.shape)}")
    g = _groups(op, groups, x)
    c = x.shape[-1]
    gamma = _vector(arrays, op, "gamma", gamma, c, x, optional=True)
    beta = _vector(arrays, op, "beta", beta, c, x, optional=True)
    return (x, gamma, beta, _group_dims(x, g), _epsilon(op, epsilon),
            flag(op, "rms_scaling", rms_scaling))


def group_norm_backward(arrays, dy, x, gamma, mean, inv_std, groups, rms_scaling,
                        need_input_grad):
    """-> (dy, x, gamma, mean, inv_std, (N, S, C, G), rms_scaling, need_input_grad)."""
    op = "group_norm_backward"
    x = arrays.float_input(op, "x", x)
    if x.ndim < 2:
        raise ValueError(f"{op}: 'x' must have at least 2 dimensions (N, ..., C), got shape "
                         f"{tuple(x.shape)}")
    dy = arrays.float_input(op, "dy", dy, like=x)
    check_shape(op, "dy", dy, x.shape)
    g = _groups(op, groups, x)
    gamma = _vector(arrays, op, "gamma", gamma, x.shape[-1], x, optional=True)
    mean = arrays.float_input(op, "mean", mean, like=x)
    check_shape(op, "mean", mean, (x.shape[0], g))
    inv_std = arrays.float_input(op, "inv_std", inv_std, like=x)
    check_shape(op, "inv_std", inv_std, (x.shape[0], g))
    return (dy, x, gamma, mean, inv_std, _group_dims(x, g), flag(op, "rms_scaling", rms_scaling),
            flag(op, "need_input_grad", need_input_grad))


# -- rms norm and unit norm: x (..., C) by rows of its last axis ------------------------------

def _row_input(arrays, op, x):
    x = arrays.float_input(op, "x", x)
    if x.ndim < 2:
        raise ValueError(f"{op}: 'x' must have at least 2 dimensions (rows..., C), got shape "
                         f"{tuple(x.shape)}")
    return x


def _row_dims(x):
    """(R, C)."""
    return (math.prod(x.shape[:-1]), x.shape[-1])


def _row_statistic(arrays, op, name, a, x):
    a = arrays.float_input(op, name, a, like=x)
    check_shape(op, name, a, tuple(x.shape[:-1]))
    return a


def rms_norm_forward(arrays, x, scale, epsilon):
    """-> (x, scale, (R, C), epsilon)."""
    op = "rms_norm_forward"
    x = _row_input(arrays, op, x)
    scale = _vector(arrays, op, "scale", scale, x.shape[-1], x, optional=True)
    return x, scale, _row_dims(x), _epsilon(op, epsilon)


def rms_norm_backward(arrays, dy, x, scale, inv_rms, need_input_grad):
    """-> (dy, x, scale, inv_rms, (R, C), need_input_grad)."""
    op = "rms_norm_backward"
    x = _row_input(arrays, op, x)
    dy = arrays.float_input(op, "dy", dy, like=x)
    check_shape(op, "dy", dy, x.shape)
    scale = _vector(arrays, op, "scale", scale, x.shape[-1], x, optional=True)
    inv_rms = _row_statistic(arrays, op, "inv_rms", inv_rms, x)
    return (dy, x, scale, inv_rms, _row_dims(x),
            flag(op, "need_input_grad", need_input_grad))


def _unit_epsilon(op, epsilon):
    """> 0, and 1/epsilon a finite float32 (the cap of the inverse norm)."""
    return number(op, "epsilon", epsilon, lo=1e-30, hi=1e30)


def unit_norm_forward(arrays, x, epsilon):
    """-> (x, (R, C), epsilon)."""
    op = "unit_norm_forward"
    x = _row_input(arrays, op, x)
    return x, _row_dims(x), _unit_epsilon(op, epsilon)


def unit_norm_backward(arrays, dy, x, inv_norm, epsilon):
    """-> (dy, x, inv_norm, (R, C), epsilon)."""
    op = "unit_norm_backward"
    x = _row_input(arrays, op, x)
    dy = arrays.float_input(op, "dy", dy, like=x)
    check_shape(op, "dy", dy, x.shape)
    inv_norm = _row_statistic(arrays, op, "inv_norm", inv_norm, x)
    return dy, x, inv_norm, _row_dims(x), _unit_epsilon(op, epsilon)
