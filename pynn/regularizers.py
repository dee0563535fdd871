"""Weight regularizers (Keras 3's L1, L2, L1L2).

The penalty joins the loss: ``l1 * sum|w| + l2 * sum(w**2)`` (no 1/2, so the L2 gradient is
``2 * l2 * w``). During training a layer calls ``apply_inplace(w, grad)``, which adds the
penalty's gradient to ``grad`` on the backend in one pass and returns the penalty.
"""

import math

import numpy as np

from pynn import backend

__all__ = ["Regularizer", "L1", "L2", "L1L2", "l1", "l2", "l1_l2", "serialize", "deserialize",
           "get"]


def _validate_float(value, name):
    """A finite, non-negative float (Keras's ``validate_float_arg``)."""
    if (isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))
            or math.isinf(value) or math.isnan(value) or value < 0):
        raise ValueError(
            f"Invalid value for argument {name}: expected a non-negative float. "
            f"Received: {name}={value!r}"
        )
    return float(value)


class Regularizer:
    """Base class. Subclasses set ``l1``/``l2`` coefficients or override both ``__call__``
    (the penalty of an array) and ``apply_inplace`` (gradient + penalty on the backend)."""

    l1 = 0.0
    l2 = 0.0

    def __call__(self, x):
        """The penalty of ``x`` (a backend or NumPy array) as a Python float."""
        if self.l1 == 0.0 and self.l2 == 0.0:
            return 0.0
        a = np.asarray(backend.current().to_numpy(x), dtype=np.float64)
        return float(self.l1 * np.abs(a).sum() + self.l2 * np.square(a).sum())

    def apply_inplace(self, w, grad):
        """``grad += d(penalty)/dw`` in place; returns the penalty as a float."""
        if self.l1 == 0.0 and self.l2 == 0.0:
            return 0.0
        return backend.current().regularizer_inplace(w, grad, self.l1, self.l2)

    def get_config(self):
        raise NotImplementedError(f"{self} does not implement get_config()")

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        try:
            args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        except NotImplementedError:
            args = ""
        return f"{self.__class__.__name__}({args})"


class L1L2(Regularizer):
    """``l1 * sum|w| + l2 * sum(w**2)``; both default to 0 (Keras)."""

    def __init__(self, l1=0.0, l2=0.0):
        self.l1 = _validate_float(0.0 if l1 is None else l1, "l1")
        self.l2 = _validate_float(0.0 if l2 is None else l2, "l2")

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}


class L1(Regularizer):
    """``l1 * sum|w|``, l1 defaults to 0.01."""

    def __init__(self, l1=0.01):
        self.l1 = _validate_float(0.01 if l1 is None else l1, "l1")

    def get_config(self):
        return {"l1": self.l1}


class L2(Regularizer):
    """``l2 * sum(w**2)``, l2 defaults to 0.01."""

    def __init__(self, l2=0.01):
        self.l2 = _validate_float(0.01 if l2 is None else l2, "l2")

    def get_config(self):
        return {"l2": self.l2}


# Keras's lower-case aliases.
l1 = L1
l2 = L2
l1_l2 = L1L2

_BY_NAME = {"l1": L1, "l2": L2, "l1l2": L1L2, "l1_l2": L1L2}


def serialize(regularizer):
    if regularizer is None:
        return None
    return {"class_name": regularizer.__class__.__name__, "config": regularizer.get_config()}


def deserialize(config, custom_objects=None):
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(f"deserialize: expected a dict with 'class_name', got {config!r}")
    name = config["class_name"]
    custom = custom_objects or {}
    cls = custom.get(name) or _BY_NAME.get(str(name).lower())
    if cls is None:
        raise ValueError(f"Unknown regularizer {name!r}; known: L1, L2, L1L2")
    return cls.from_config(dict(config.get("config") or {}))


def get(identifier):
    """A Regularizer from a name ("l1", "l2", "l1_l2", class names too), a serialized dict,
    an instance, or None (no regularizer)."""
    if identifier is None or isinstance(identifier, Regularizer):
        return identifier
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, str):
        cls = _BY_NAME.get(identifier.lower())
        if cls is None:
            raise ValueError(f"Could not interpret regularizer identifier: {identifier!r}")
        return cls()
    raise ValueError(f"Could not interpret regularizer identifier: {identifier!r}")

