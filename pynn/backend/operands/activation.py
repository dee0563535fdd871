"""Operands of the activation ops (native/activation.pyx, pynn/backend/opencl/activation.py)."""

import functools

from pynn.backend.api import ACTIVATIONS_NEEDING_INPUT
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
    return name, check_alpha(op, name, alpha)


def activation_forward(arrays, x, activation, alpha):
    """-> (name, alpha, x)."""
    op = "activation_forward"
    name, a = activation_pair(op, activation, alpha)
    x = arrays.float_input(op, "x", x)
    if name == "softmax" and x.ndim < 1:
        raise ValueError(f"{op}: softmax needs at least 1 dimension, got shape {x.shape}")
    return name, a, x


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
    return name, a, dy, x, y


def activation_bias_backward(arrays, dy, x, y, activation, alpha):
    """-> (name, alpha, dy, x, y) as activation_backward; dy has the bias axis last."""
    op = "activation_bias_backward"
    name, a, dy, x, y = activation_backward(arrays, dy, x, y, activation, alpha, op)
    if dy.ndim < 1:
        raise ValueError(f"{op}: 'dy' must have at least 1 dimension (the bias axis is the "
                         f"last), got shape {dy.shape}")
    return name, a, dy, x, y
