"""Keras 3's weight constraints (keras/src/constraints/constraints.py): MaxNorm, NonNeg,
UnitNorm, MinMaxNorm, with their lower-case names.

A constraint is called as ``constraint(w)`` on a weight's backend array after each optimizer
update (``Variable.constraint``) and projects it in place through the backend op
``constraint_inplace``: one pass over w on either backend, norms over ``axis`` (an int or a
list of adjacent axes; Keras's epsilon 1e-7 in the denominator). Keras returns the projected
array instead; the numbers are the same.
"""

from pynn import backend


class Constraint:
    """The base class; ``Constraint()(w)`` leaves w as it is (Keras)."""

    def __call__(self, w):
        return None

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _axis_config(axis):
    """axis as Keras stores it: an int, or a list of ints."""
    if isinstance(axis, (list, tuple)):
        return [int(a) for a in axis]
    return int(axis)


class MaxNorm(Constraint):
    """Rescales each slice along ``axis`` whose L2 norm exceeds ``max_value`` down to it."""

    def __init__(self, max_value=2, axis=0):
        self.max_value = max_value
        self.axis = _axis_config(axis)

    def __call__(self, w):
        backend.current().constraint_inplace(w, "max_norm", 0.0, self.max_value, 1.0,
                                             self.axis)

    def get_config(self):
        return {"max_value": self.max_value, "axis": self.axis}


class NonNeg(Constraint):
    """Clamps negative weights to 0."""

    def __call__(self, w):
        backend.current().constraint_inplace(w, "non_neg", 0.0, 0.0, 1.0, None)


class UnitNorm(Constraint):
    """Rescales each slice along ``axis`` to unit L2 norm."""

    def __init__(self, axis=0):
        self.axis = _axis_config(axis)

    def __call__(self, w):
        backend.current().constraint_inplace(w, "unit_norm", 0.0, 1.0, 1.0, self.axis)

    def get_config(self):
        return {"axis": self.axis}


class MinMaxNorm(Constraint):
    """Moves each slice's norm ``rate`` of the way into [min_value, max_value]."""

    def __init__(self, min_value=0.0, max_value=1.0, rate=1.0, axis=0):
        self.min_value = min_value
        self.max_value = max_value
        self.rate = rate
        self.axis = _axis_config(axis)

    def __call__(self, w):
        backend.current().constraint_inplace(w, "min_max_norm", self.min_value,
                                             self.max_value, self.rate, self.axis)

    def get_config(self):
        return {"min_value": self.min_value, "max_value": self.max_value, "rate": self.rate,
                "axis": self.axis}


# Keras's lower-case names.
max_norm = MaxNorm
non_neg = NonNeg
unit_norm = UnitNorm
min_max_norm = MinMaxNorm

ALIASES = {"max_norm": MaxNorm, "non_neg": NonNeg, "unit_norm": UnitNorm,
           "min_max_norm": MinMaxNorm}
_BY_CLASS = {cls.__name__: cls for cls in (Constraint, *ALIASES.values())}


def serialize(constraint):
    if constraint is None:
        return None
    if not isinstance(constraint, Constraint):
        raise ValueError(f"a constraint given as a plain callable ({constraint!r}) cannot be "
                         f"saved; subclass pynn.constraints.Constraint with get_config")
    return {"class_name": type(constraint).__name__, "config": constraint.get_config()}


def deserialize(config, custom_objects=None):
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(f"deserialize: expected a dict with 'class_name', got {config!r}")
    name = config["class_name"]
    cls = (custom_objects or {}).get(name) or _BY_CLASS.get(name) or ALIASES.get(
        str(name).lower())
    if cls is None:
        raise ValueError(f"Unknown constraint {name!r}; expected one of {sorted(_BY_CLASS)}")
    return cls.from_config(dict(config.get("config") or {}))


def get(identifier):
    """A Constraint from a name ("max_norm", "MaxNorm", ...), a serialized dict, an instance,
    or None (no constraint)."""
    if identifier is None or isinstance(identifier, Constraint):
        return identifier
    if callable(identifier):  # a function projecting the weight in place, as Keras allows
        return identifier
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, str):
        cls = ALIASES.get(identifier.lower()) or _BY_CLASS.get(identifier)
        if cls is not None:
            return cls()
    raise ValueError(f"Could not interpret constraint identifier: {identifier!r}; expected "
                     f"one of {sorted(ALIASES)}, a Constraint or None")
