"""Operands of the activation ops (native/activation.pyx, pynn/backend/opencl/activation.py)."""

import functools
import math

import numpy as np

from pynn.backend.api import ACTIVATIONS_NEEDING_INPUT, ACTIVATIONS_ON_ROWS
from pynn.backend.operands.common import activation_name, check_alpha


def activation_pair(op, activation, alpha):
    """(name, alpha) of an activation argument pair: a known name, a usable parameter.
    Layers pass the same few pairs on every step: those answers are remembered."""
    try:
        return _checked_pair(op, activation, alpha)
    except TypeError as exc:
        if "unhashable" not in str(exc):
            raise
    name = activation_name(op, activation)  # an unhashable argument: checked (and refused)
    return name, check_alpha(op, name, alpha)


@functools.lru_cache(maxsize=256)
def _checked_pair(op, activation, alpha):
    name = activation_name(op, activation)
    if name in ACTIVATIONS_ON_ROWS and op not in _ROW_ACTIVATION_OPS:
        raise ValueError(f"{op}: activation {name!r} acts on whole rows of the last axis and is "
                         f"not fused into this op; apply it as an Activation layer (or "
                         f"activation_forward) after a linear one")
    return name, check_alpha(op, name, alpha)


# The ops that compute ACTIVATIONS_ON_ROWS (Keras 3's glu, log_softmax, sparsemax).
_ROW_ACTIVATION_OPS = ("activation_forward", "activation_backward")


def activation_forward(arrays, x, activation, alpha):
    """-> (name, alpha, x)."""
    op = "activation_forward"
    name, a = activation_pair(op, activation, alpha)
    x = arrays.float_input(op, "x", x)
    if name == "softmax" and x.ndim < 1:
        raise ValueError(f"{op}: softmax needs at least 1 dimension, got shape {x.shape}")
    if name in ACTIVATIONS_ON_ROWS:
        _check_rows(op, name, x.shape)
    return name, a, x


def _check_rows(op, name, shape):
    """The last axis that a row activation needs: at least one axis, an even length for
    glu (Keras's glu splits it in two halves)."""
    if len(shape) < 1:
        raise ValueError(f"{op}: {name} needs at least 1 dimension, got shape {tuple(shape)}")
    if name == "glu" and shape[-1] % 2:
        raise ValueError(f"{op}: glu needs an even last axis (it is split into two halves), "
                         f"got shape {tuple(shape)}")


def activation_backward(arrays, dy, x, y, activation, alpha, op="activation_backward"):
    """-> (name, alpha, dy, x, y): x (the pre-activation) and y (the output) in dy's dtype
    and shape, either None where the activation does not read it."""
    name, a = activation_pair(op, activation, alpha)
    dy = arrays.float_input(op, "dy", dy)
    needs_x = name in ACTIVATIONS_NEEDING_INPUT
    if x is None and needs_x:
        raise ValueError(f"{op}: '{name}' needs the pre-activation 'x', got None")
    if y is None and not needs_x:
        raise ValueError(f"{op}: 'y' (the forward output) is required for '{name}', got None")
    if name == "glu":  # x (..., 2K), dy (..., K): the gradient comes back in x's shape
        x = arrays.float_input(op, "x", x, like=dy)
        _check_rows(op, name, x.shape)
        if x.shape[:-1] + (x.shape[-1] // 2,) != dy.shape:
            raise ValueError(f"{op}: glu's 'dy' must have x's shape {x.shape} with the last "
                             f"axis halved, got {dy.shape}")
        return name, a, dy, x, None
    if x is not None:
        x = arrays.float_input(op, "x", x, like=dy)
        if x.shape != dy.shape:
            raise ValueError(f"{op}: 'x' must have the shape of dy {dy.shape}, got {x.shape}")
    if y is not None:
        y = arrays.float_input(op, "y", y, like=dy)
        if y.shape != dy.shape:
            raise ValueError(f"{op}: 'y' must have the shape of dy {dy.shape}, got {y.shape}")
    if name == "softmax" and dy.ndim < 1:
        raise ValueError(f"{op}: softmax needs at least 1 dimension, got shape {dy.shape}")
    if name in ACTIVATIONS_ON_ROWS:
        _check_rows(op, name, dy.shape)
    return name, a, dy, x, y


def activation_bias_backward(arrays, dy, x, y, activation, alpha):
    """-> (name, alpha, dy, x, y) as activation_backward; dy has the bias axis last."""
    op = "activation_bias_backward"
    name, a, dy, x, y = activation_backward(arrays, dy, x, y, activation, alpha, op)
    if dy.ndim < 1:
        raise ValueError(f"{op}: 'dy' must have at least 1 dimension (the bias axis is the "
                         f"last), got shape {dy.shape}")
    return name, a, dy, x, y


# -- issue 12: the activation layers' parametrized ops ------------------------------------
def _finite_number(op, name, value, minimum=None):
    if isinstance(value, bool):
        raise TypeError(f"{op}: '{name}' must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: '{name}' must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{op}: '{name}' must be finite, got {value!r}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{op}: '{name}' must be >= {minimum}, got {value!r}")
    return v


def relu_params(op, max_value, negative_slope, threshold):
    """(max_value as a float, inf for None, negative_slope, threshold): Keras's ReLU takes
    each >= 0, which keeps the capped branch non-negative."""
    mv = math.inf if max_value is None else _finite_number(op, "max_value", max_value, 0.0)
    return (mv, _finite_number(op, "negative_slope", negative_slope, 0.0),
            _finite_number(op, "threshold", threshold, 0.0))


def relu_forward(arrays, x, max_value, negative_slope, threshold):
    """-> (max_value, negative_slope, threshold, x)."""
    op = "relu_forward"
    params = relu_params(op, max_value, negative_slope, threshold)
    return params + (arrays.float_input(op, "x", x),)


def relu_backward(arrays, dy, x, max_value, negative_slope, threshold):
    """-> (max_value, negative_slope, threshold, dy, x)."""
    op = "relu_backward"
    params = relu_params(op, max_value, negative_slope, threshold)
    dy = arrays.float_input(op, "dy", dy)
    x = arrays.float_input(op, "x", x, like=dy)
    if x.shape != dy.shape:
        raise ValueError(f"{op}: 'x' must have the shape of dy {dy.shape}, got {x.shape}")
    return params + (dy, x)


PRELU_GROUPS = 4


def prelu_groups(op, x_shape, alpha_shape):
    """(dims, strides) of the PReLU broadcast: x's feature axes (all but the batch) merged
    into PRELU_GROUPS groups, each walked by alpha (stride = its step in alpha's flat index)
    or shared (stride 0), padded in front with size-1 groups."""
    feat = tuple(x_shape[1:])
    alpha_shape = tuple(alpha_shape)
    if len(x_shape) < 2 or len(alpha_shape) != len(feat) or any(
            a not in (1, f) for a, f in zip(alpha_shape, feat)):
        raise ValueError(f"{op}: 'alpha' must have x's feature shape {feat} with 1 on the "
                         f"shared axes, got {alpha_shape} (x {tuple(x_shape)})")
    groups = []  # [size, shared]
    for a, f in zip(alpha_shape, feat):
        shared = a == 1 and f != 1
        if f == 1:
            continue  # a size-1 axis joins either kind
        if groups and groups[-1][1] == shared:
            groups[-1][0] *= f
        else:
            groups.append([f, shared])
    if len(groups) > PRELU_GROUPS:
        raise ValueError(f"{op}: shared axes of x {tuple(x_shape)} and alpha {alpha_shape} "
                         f"alternate {len(groups)} times; at most {PRELU_GROUPS} runs of "
                         f"shared or per-element axes are supported")
    groups = [[1, False]] * (PRELU_GROUPS - len(groups)) + groups
    dims, strides, step = [], [], 1
    for size, shared in reversed(groups):
        dims.append(size)
        strides.append(0 if shared else step)
        if not shared:
            step *= size
    return tuple(reversed(dims)), tuple(reversed(strides))


def prelu_forward(arrays, x, alpha):
    """-> (x, alpha in x's dtype, dims, strides)."""
    op = "prelu_forward"
    x = arrays.float_input(op, "x", x)
    alpha = arrays.float_input(op, "alpha", alpha, like=x)
    dims, strides = prelu_groups(op, x.shape, alpha.shape)
    return x, alpha, dims, strides


def prelu_backward(arrays, dy, x, alpha):
    """-> (dy, x, alpha, dims, strides)."""
    op = "prelu_backward"
    dy = arrays.float_input(op, "dy", dy)
    x = arrays.float_input(op, "x", x, like=dy)
    alpha = arrays.float_input(op, "alpha", alpha, like=dy)
    if x.shape != dy.shape:
        raise ValueError(f"{op}: 'x' must have the shape of dy {dy.shape}, got {x.shape}")
    dims, strides = prelu_groups(op, x.shape, alpha.shape)
    return dy, x, alpha, dims, strides


def softmax_lines(op, shape, axis):
    """(outer, K, inner) of softmax along ``axis`` of an array of ``shape``."""
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{op}: 'axis' must be an int, got {axis!r}")
    ndim = len(shape)
    if not -ndim <= axis < ndim:
        raise ValueError(f"{op}: 'axis' {axis} is out of range for shape {tuple(shape)}")
    axis = int(axis) % ndim
    return (math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:]))


def softmax_forward(arrays, x, axis):
    """-> (x, (outer, K, inner))."""
    op = "softmax_forward"
    x = arrays.float_input(op, "x", x)
    return x, softmax_lines(op, x.shape, axis)


def softmax_backward(arrays, dy, y, axis):
    """-> (dy, y, (outer, K, inner))."""
    op = "softmax_backward"
    dy = arrays.float_input(op, "dy", dy)
    y = arrays.float_input(op, "y", y, like=dy)
    if y.shape != dy.shape:
        raise ValueError(f"{op}: 'y' must have the shape of dy {dy.shape}, got {y.shape}")
    return dy, y, softmax_lines(op, dy.shape, axis)


def pooled_activation_bias_backward(arrays, dpool, argmax, pooled, y, pool_size, strides,
                                    padding, activation, alpha):
    """-> (name, alpha, dpool, argmax, pooled or None, y, pg): pool_gradient's arrays, y the
    layer's output that the pool reads (the activation's y, the bias axis last)."""
    from pynn.backend.operands.pool import pool_gradient

    op = "pooled_activation_bias_backward"
    name, a = activation_pair(op, activation, alpha)
    if name in ACTIVATIONS_NEEDING_INPUT or name == "softmax":
        raise ValueError(f"{op}: '{name}' needs more than the layer's output y; relu, linear "
                         f"and the others of y alone are taken")
    dpool, argmax, pooled, y, pg = pool_gradient(arrays, op, dpool, argmax, pooled, y,
                                                 pool_size, strides, padding)
    return name, a, dpool, argmax, pooled, y, pg
