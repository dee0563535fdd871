"""Keras 3's Embedding: a lookup of rows of ``embeddings (input_dim, output_dim)`` by integer
index (the embedding ops). Its input is token ids, so it has no input gradient."""

import warnings

import numpy as np

from pynn import backend, constraints, initializers, regularizers
from pynn.layers.base import Layer, is_symbolic


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


class ReversibleEmbedding(Embedding):
    """Keras 3's ReversibleEmbedding: an Embedding that, called with ``reverse=True``, maps
    hidden states ``(..., output_dim)`` back to logits ``(..., input_dim)`` through
    ``embeddings.T`` (tie_weights) or its own ``reverse_embeddings (output_dim, input_dim)``,
    optionally soft-capped as ``cap * tanh(logits / cap)``. Both directions run on the dense
    ops (the tied product is dense_backward_input, x @ embeddings.T) and the cap on the tanh
    activation op, so the OpenCL backend never round-trips through the host."""

    def __init__(self, input_dim, output_dim, tie_weights=True, embeddings_initializer="uniform",
                 embeddings_regularizer=None, embeddings_constraint=None, mask_zero=False,
                 reverse_dtype=None, logit_soft_cap=None, **kwargs):
        super().__init__(input_dim, output_dim, embeddings_initializer=embeddings_initializer,
                         embeddings_regularizer=embeddings_regularizer,
                         embeddings_constraint=embeddings_constraint, mask_zero=mask_zero,
                         **kwargs)
        label = f"ReversibleEmbedding '{self.name}'"
        if not isinstance(tie_weights, (bool, np.bool_)):
            raise ValueError(f"{label}: tie_weights must be True or False, got {tie_weights!r}")
        self.tie_weights = bool(tie_weights)
        # pynn computes in the layer's dtype; another reverse dtype would need a cast op.
        if reverse_dtype is not None and reverse_dtype != self.compute_dtype:
            raise ValueError(f"{label}: reverse_dtype must be None or the layer's compute "
                             f"dtype {self.compute_dtype!r}, got {reverse_dtype!r}")
        self.reverse_dtype = reverse_dtype
        if logit_soft_cap is not None and (
                isinstance(logit_soft_cap, bool) or not isinstance(
                    logit_soft_cap, (int, float, np.integer, np.floating))
                or not np.isfinite(logit_soft_cap) or logit_soft_cap <= 0):
            raise ValueError(f"{label}: logit_soft_cap must be None or a positive number, got "
                             f"{logit_soft_cap!r}")
        self.logit_soft_cap = logit_soft_cap
        self._reverse = False

    def build(self, input_shape):
        super().build(input_shape)
        if not self.tie_weights:
            self.reverse_embeddings = self.add_weight(
                "reverse_embeddings", (self.output_dim, self.input_dim),
                self.embeddings_initializer)

    def __call__(self, inputs, training=None, reverse=False, **kwargs):
        if not isinstance(reverse, (bool, np.bool_)):
            raise TypeError(f"ReversibleEmbedding '{self.name}': reverse must be True or "
                            f"False, got {reverse!r}")
        if reverse and is_symbolic(inputs):
            # A functional node keeps no per-call arguments yet (pynn.layers.functional).
            raise NotImplementedError(
                f"ReversibleEmbedding '{self.name}': reverse=True in a functional model is not "
                f"supported by pynn yet; call it on arrays")
        if reverse and not self.built:
            # Keras builds from the ids' shape; a first reverse call has no ids to build from.
            self.build((None,))
        self._reverse = bool(reverse)
        try:
            return super().__call__(inputs, training=training, **kwargs)
        finally:
            self._reverse = False

    def check_input(self, x):
        if not self._reverse:
            return super().check_input(x)
        if x.ndim < 1 or x.shape[-1] != self.output_dim:
            raise ValueError(f"ReversibleEmbedding '{self.name}' (reverse=True) expected "
                             f"hidden states of last axis {self.output_dim}, got shape "
                             f"{tuple(x.shape)}")
        return None

    def call(self, x, training=False):
        if not self._reverse:
            y = super().call(x, training=training)
            if training:
                self._cache = (False, self._cache)
            return y
        b = backend.current()
        lead = tuple(x.shape[:-1])
        x2 = x if x.ndim == 2 else b.reshape(x, (-1, self.output_dim))
        if self.tie_weights:
            z = b.dense_backward_input(x2, self.embeddings.value)   # x @ embeddings.T
        else:
            z, _ = b.dense_forward(x2, self.reverse_embeddings.value, None, "linear", 0.0)
        capped = None
        if self.logit_soft_cap is not None:
            cap = float(self.logit_soft_cap)
            z = b.copy(z)
            b.scale_inplace(z, 1.0 / cap)
            capped = b.activation_forward(z, "tanh", 0.0)
            y = b.copy(capped)
            b.scale_inplace(y, cap)
        else:
            y = z
        if training:
            self._cache = (True, (x2, lead, capped))
        return y if len(lead) == 1 else b.reshape(y, lead + (self.input_dim,))

    def backward(self, dy):
        reverse, cache = self._cache
        if not reverse:
            self._cache = cache
            super().backward(dy)
            if not self.tie_weights:
                self.reverse_embeddings.grad = backend.current().zeros(
                    (self.output_dim, self.input_dim), self.reverse_embeddings.value.dtype)
            return None
        self._cache = None
        b = backend.current()
        x2, lead, capped = cache
        dz = dy if dy.ndim == 2 else b.reshape(dy, (-1, self.input_dim))
        if capped is not None:
            # d(cap * tanh(z / cap))/dz = 1 - tanh², the caps cancel.
            dz = b.activation_backward(dz, None, capped, "tanh", 0.0)
        if self.tie_weights:
            dx, _ = b.dense_forward(dz, self.embeddings.value, None, "linear", 0.0)
            self.embeddings.grad = b.dense_backward_weight(dz, x2)  # dz.T @ x
        else:
            dx = b.dense_backward_input(dz, self.reverse_embeddings.value)
            self.reverse_embeddings.grad = b.dense_backward_weight(x2, dz)
            self.embeddings.grad = b.zeros((self.input_dim, self.output_dim),
                                           self.embeddings.value.dtype)
        return dx if len(lead) == 1 else b.reshape(dx, lead + (self.output_dim,))

    def compute_output_shape(self, input_shape, reverse=False):
        if reverse:
            return tuple(input_shape[:-1]) + (self.input_dim,)
        return super().compute_output_shape(input_shape)

    # No compute_mask override: Keras's returns None but its call attaches the lookup's mask
    # to the output, so mask_zero masks downstream layers as Embedding's does.

    def get_config(self):
        config = super().get_config()
        config.update(tie_weights=self.tie_weights, reverse_dtype=self.reverse_dtype,
                      logit_soft_cap=self.logit_soft_cap)
        return config
