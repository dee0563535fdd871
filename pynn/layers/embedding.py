"""Keras 3's Embedding: a lookup of rows of ``embeddings (input_dim, output_dim)`` by integer
index (the embedding ops). Its input is token ids, so it has no input gradient."""

import warnings

import numpy as np

from pynn import backend, constraints, initializers, regularizers
from pynn.layers.base import Layer


def _positive_int(label, name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{label}: {name} must be a positive int, got {value!r}")
    return int(value)


class Embedding(Layer):
    _steps_free = "all"  # another call may have other steps (pynn.layers.symbolic)

    def __init__(self, input_dim, output_dim, embeddings_initializer="uniform",
                 embeddings_regularizer=None, embeddings_constraint=None, mask_zero=False,
                 **kwargs):
        # Keras 3 accepts and ignores Keras 2's input_length, with a warning.
        if kwargs.pop("input_length", None) is not None:
            warnings.warn("Embedding: argument 'input_length' is deprecated and ignored, as "
                          "in Keras 3", stacklevel=2)
        super().__init__(**kwargs)
        label = f"Embedding '{self.name}'"
        self.input_dim = _positive_int(label, "input_dim", input_dim)
        self.output_dim = _positive_int(label, "output_dim", output_dim)
        # Keras's "uniform" is RandomUniform(-0.05, 0.05), not a variance-scaling draw.
        if isinstance(embeddings_initializer, str) and embeddings_initializer == "uniform":
            embeddings_initializer = "random_uniform"
        self.embeddings_initializer = initializers.get(embeddings_initializer)
        self.embeddings_regularizer = regularizers.get(embeddings_regularizer)
        self.embeddings_constraint = constraints.get(embeddings_constraint)
        self.mask_zero = bool(mask_zero)

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            "embeddings", (self.input_dim, self.output_dim), self.embeddings_initializer,
            self.embeddings_regularizer, constraint=self.embeddings_constraint)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)

    def _named(self, call, *args):
        """The op's bad-index error, prefixed with this layer's name."""
        try:
            return call(*args)
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"Embedding '{self.name}': {exc}") from None

    def call(self, x, training=False):
        y = self._named(backend.current().embedding_forward, x, self.embeddings.value)
        if training:
            self._cache = x
        return y

    def backward(self, dy):
        indices, self._cache = self._cache, None
        self.embeddings.grad = self._named(backend.current().embedding_backward, dy, indices,
                                           self.input_dim)
        # No input gradient (None): indices are not differentiable, nor are they in Keras.

    def compute_mask(self, inputs, mask=None):
        """``indices != 0`` as a host bool array when mask_zero, else None (Keras)."""
        if not self.mask_zero:
            return None
        return np.asarray(backend.current().to_numpy(inputs)) != 0

    def get_config(self):
        config = super().get_config()
        config.update(
            input_dim=self.input_dim, output_dim=self.output_dim,
            embeddings_initializer=initializers.serialize(self.embeddings_initializer),
            embeddings_regularizer=regularizers.serialize(self.embeddings_regularizer),
            embeddings_constraint=constraints.serialize(self.embeddings_constraint),
            mask_zero=self.mask_zero,
        )
        return config
