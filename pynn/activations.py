"""``pynn.activations``: Keras 3's ``keras.activations`` functions, with its names, parameters
and defaults, plus ``get`` / ``serialize`` / ``deserialize``.

Each function runs on the fused activation kernels of the layers (``activation_forward`` /
``activation_backward``, ``relu_forward`` for relu's cap and threshold, ``softmax_forward``)
through ``pynn.ops``, so it works on both backends, records its gradient under a
``GradientTape`` and, on the symbolic tensors of ``pynn.Input``, adds a node to the functional
graph. A layer given one of these functions (``Dense(4, activation=pynn.activations.relu)``)
recognises it by name and fuses it as it fuses ``activation="relu"``.
"""

import math

from pynn import backend
from pynn import ops as _ops
from pynn.layers.symbolic import KerasTensor
from pynn.ops._core import value
from pynn.ops import nn as _nn

__all__ = [
    "celu", "deserialize", "elu", "exponential", "gelu", "get", "glu", "hard_shrink",
    "hard_sigmoid", "hard_silu", "hard_swish", "hard_tanh", "leaky_relu", "linear",
    "log_sigmoid", "log_softmax", "mish", "relu", "relu6", "selu", "serialize", "sigmoid",
    "silu", "soft_shrink", "softmax", "softplus", "softsign", "sparse_plus", "sparse_sigmoid",
    "sparsemax", "squareplus", "swish", "tanh", "tanh_shrink", "threshold",
]


def _number(fn_name, arg, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"pynn.activations.{fn_name}: {arg} must be a finite number, got "
                         f"{v!r}")
    return float(v)


def relu(x, negative_slope=0.0, max_value=None, threshold=0.0):
    """x where x > threshold (capped at max_value), else negative_slope * (x - threshold):
    Keras's relu. With its defaults it is the plain relu kernel; otherwise the ReLU layer's
    parametrized op (Keras takes each parameter >= 0 there too)."""
    negative_slope = _number("relu", "negative_slope", negative_slope)
    threshold = _number("relu", "threshold", threshold)
    if max_value is not None:
        max_value = _number("relu", "max_value", max_value)
    if negative_slope == 0.0 and threshold == 0.0 and max_value is None:
        return _ops.relu(x)
    for arg, v in (("negative_slope", negative_slope), ("threshold", threshold),
                   ("max_value", max_value)):
        if v is not None and v < 0:
            raise ValueError(f"pynn.activations.relu: {arg} must be >= 0 (the ReLU kernel's "
                             f"range), got {v!r}")
    if type(x) is KerasTensor:
        from pynn.layers.activation import ReLU
        return ReLU(max_value=max_value, negative_slope=negative_slope, threshold=threshold)(x)
    be = backend.current()
    xv = value(x)
    y = be.relu_forward(xv, max_value, negative_slope, threshold)
    return _nn.record(y, (x,), lambda dy, need: (
        be.relu_backward(dy, xv, max_value, negative_slope, threshold),), "relu")


def leaky_relu(x, negative_slope=0.2):
    return _ops.leaky_relu(x, negative_slope=negative_slope)


def relu6(x):
    return _ops.relu6(x)


def elu(x, alpha=1.0):
    return _ops.elu(x, alpha=alpha)


def selu(x):
    return _ops.selu(x)


def softplus(x):
    return _ops.softplus(x)


def softsign(x):
    return _ops.softsign(x)


def soft_shrink(x, threshold=0.5):
    return _ops.soft_shrink(x, threshold=threshold)


def sparse_plus(x):
    return _ops.sparse_plus(x)


def silu(x):
    return _ops.silu(x)


def squareplus(x, b=4):
    return _ops.squareplus(x, b=b)


def gelu(x, approximate=False):
    """Keras's activation default is the exact (erf) form, unlike keras.ops.gelu's."""
    return _ops.gelu(x, approximate=approximate)


def celu(x, alpha=1.0):
    return _ops.celu(x, alpha=alpha)


def glu(x, axis=-1):
    return _ops.glu(x, axis=axis)


def tanh(x):
    return _ops.tanh(x)


def tanh_shrink(x):
    return _ops.tanh_shrink(x)


def hard_tanh(x):
    return _ops.hard_tanh(x)


def hard_shrink(x, threshold=0.5):
    return _ops.hard_shrink(x, threshold=threshold)


def threshold(x, threshold, default_value):
    return _ops.threshold(x, threshold, default_value)


def sigmoid(x):
    return _ops.sigmoid(x)


def exponential(x):
    return _ops.exp(x)


def hard_sigmoid(x):
    return _ops.hard_sigmoid(x)


def log_sigmoid(x):
    return _ops.log_sigmoid(x)


def sparse_sigmoid(x):
    return _ops.sparse_sigmoid(x)


def hard_silu(x):
    return _ops.hard_silu(x)


def linear(x):
    return x


def mish(x):
    return _ops.mish(x)


def log_softmax(x, axis=-1):
    return _ops.log_softmax(x, axis=axis)


def softmax(x, axis=-1):
    return _ops.softmax(x, axis=axis)


def sparsemax(x, axis=-1):
    return _ops.sparsemax(x, axis=axis)


# Keras's second names: the same function objects, so serialize gives the first name.
swish = silu
hard_swish = hard_silu

_ALL = {name: fn for name, fn in globals().items()
        if name in __all__ and name not in ("get", "serialize", "deserialize")}


def serialize(activation):
    """The name Keras stores: a built-in function's own name (``swish`` -> ``"silu"``), a
    registered custom function's ``"package>name"``."""
    name = getattr(activation, "__name__", None)
    if name in _ALL and _ALL[name] is activation:
        return name
    if callable(activation):
        from pynn._registry import serializable_name
        return serializable_name(activation, "activation")
    raise ValueError(f"pynn.activations.serialize: expected an activation function, got "
                     f"{activation!r}")


def deserialize(config, custom_objects=None):
    """A name (or Keras's ``{"class_name": "function", "config": name}``) -> the function."""
    if isinstance(config, dict):
        config = config.get("config", config.get("class_name"))
    if not isinstance(config, str):
        raise ValueError(f"pynn.activations.deserialize: expected a name or a saved config, "
                         f"got {config!r}")
    if custom_objects and config in custom_objects:
        return custom_objects[config]
    if config in _ALL:
        return _ALL[config]
    from pynn._registry import lookup_serializable
    try:
        return lookup_serializable(config, "activation")
    except ValueError:
        raise ValueError(f"pynn.activations.deserialize: unknown activation {config!r}; "
                         f"expected one of {sorted(_ALL)} or a registered function") from None


def get(identifier):
    """None -> linear, a name or saved config -> the function, a callable as it is."""
    if identifier is None:
        return linear
    if isinstance(identifier, (str, dict)):
        return deserialize(identifier)
    if callable(identifier):
        return identifier
    raise ValueError(f"pynn.activations.get: could not interpret activation identifier "
                     f"{identifier!r}")
