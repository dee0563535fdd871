"""Losses with Keras 3's names and semantics (reduction ``sum_over_batch_size``).

Each loss is one fused backend op that returns the batch mean and its gradient with respect to
the predictions, so a training step makes a single pass over the output for both.
"""

import numpy as np

from pynn import backend


class Loss:
    backend_name = None
    sparse_labels = False

    def __init__(self, name=None, from_logits=False):
        self.name = name or self.default_name
        self.from_logits = bool(from_logits)

    @property
    def param(self):
        return None

    def forward_backward(self, y_true, y_pred, need_grad=True):
        """(mean loss as a float, d loss / d y_pred or None) on backend arrays."""
        return backend.current().loss_forward_backward(
            self.backend_name, y_true, y_pred, self.from_logits, self.param, need_grad)

    def __call__(self, y_true, y_pred):
        b = backend.current()
        y_pred = b.asarray(y_pred, np.float32 if np.asarray(y_pred).dtype != np.float64
                           else np.float64)
        y_true = b.asarray(y_true, np.int32 if self.sparse_labels else y_pred.dtype)
        return self.forward_backward(y_true, y_pred, need_grad=False)[0]

    def get_config(self):
        return {"name": self.name, "from_logits": self.from_logits}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class MeanSquaredError(Loss):
    backend_name = default_name = "mean_squared_error"

    def __init__(self, name=None):
        super().__init__(name)

    def get_config(self):
        return {"name": self.name}


class MeanAbsoluteError(MeanSquaredError):
    backend_name = default_name = "mean_absolute_error"


class Huber(Loss):
    backend_name = default_name = "huber"

    def __init__(self, delta=1.0, name=None):
        if delta <= 0:
            raise ValueError(f"Huber: delta must be positive, got {delta}")
        super().__init__(name)
        self.delta = float(delta)

    @property
    def param(self):
        return self.delta

    def get_config(self):
        return {"name": self.name, "delta": self.delta}


class BinaryCrossentropy(Loss):
    backend_name = default_name = "binary_crossentropy"


class CategoricalCrossentropy(Loss):
    backend_name = default_name = "categorical_crossentropy"


class SparseCategoricalCrossentropy(Loss):
    backend_name = default_name = "sparse_categorical_crossentropy"
    sparse_labels = True


ALIASES = {
    "mean_squared_error": MeanSquaredError, "mse": MeanSquaredError,
    "mean_absolute_error": MeanAbsoluteError, "mae": MeanAbsoluteError,
    "huber": Huber, "huber_loss": Huber,
    "binary_crossentropy": BinaryCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
}
_BY_CLASS = {cls.__name__: cls for cls in ALIASES.values()}


def get(identifier):
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, str):
        if identifier.lower() in ALIASES:
            return ALIASES[identifier.lower()]()
        if identifier in _BY_CLASS:
            return _BY_CLASS[identifier]()
    if isinstance(identifier, dict) and identifier.get("class_name") in _BY_CLASS:
        return _BY_CLASS[identifier["class_name"]].from_config(identifier.get("config", {}))
    raise ValueError(f"Unknown loss {identifier!r}; expected one of {sorted(ALIASES)} or a "
                     f"pynn.losses.Loss")


def serialize(loss):
    return {"class_name": type(loss).__name__, "config": loss.get_config()}


def mean_squared_error(y_true, y_pred):
    return MeanSquaredError()(y_true, y_pred)


def mean_absolute_error(y_true, y_pred):
    return MeanAbsoluteError()(y_true, y_pred)


def binary_crossentropy(y_true, y_pred, from_logits=False):
    return BinaryCrossentropy(from_logits=from_logits)(y_true, y_pred)


def categorical_crossentropy(y_true, y_pred, from_logits=False):
    return CategoricalCrossentropy(from_logits=from_logits)(y_true, y_pred)


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False):
    return SparseCategoricalCrossentropy(from_logits=from_logits)(y_true, y_pred)
