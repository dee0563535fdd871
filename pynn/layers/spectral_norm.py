"""Keras 3's SpectralNormalization wrapper: in training, each call divides the wrapped layer's
kernel (or embeddings) by its largest singular value sigma, estimated by ``power_iterations``
steps of power iteration on a persistent non-trainable ``vector_u (1, O)``, and stores the
result in the kernel itself, as Keras assigns it; inference uses the kernel as stored.

As in Keras, the normalised kernel is written into the variable before the inner layer runs,
so the kernel's gradient is the inner layer's gradient at the normalised kernel: no gradient
flows through sigma (Keras's assign cuts it). The matrix-vector products run on the dense ops
and the norms on the elementwise and reduction ops, so OpenCL keeps everything on the device;
an all-zero kernel is left as it is (Keras's cond), by a select on the device."""

import sys

import numpy as np

from pynn import backend, initializers
from pynn.layers.base import Layer
from pynn.variables import bump_version

# Keras's normalize: x * min(rsqrt(sum(x^2)), 1 / epsilon), epsilon = backend.epsilon().
_EPSILON = 1e-7


def _l2_normalize(b, x):
    square_sum = b.reduce_axes(b.elementwise_unary(x, "square"), None, "sum", True)
    inv_norm = b.elementwise_unary(b.elementwise_unary(square_sum, "sqrt"), "reciprocal")
    inv_norm = b.elementwise_binary(inv_norm, b.full((1, 1), 1.0 / _EPSILON, x.dtype),
                                    "minimum")
    return b.elementwise_binary(x, inv_norm, "multiply")


class SpectralNormalization(Layer):
    def __init__(self, layer, power_iterations=1, **kwargs):
        if not isinstance(layer, Layer):
            raise ValueError(f"SpectralNormalization: layer must be a pynn Layer instance, got "
                             f"{layer!r}")
        super().__init__(**kwargs)
        if isinstance(power_iterations, bool) or not isinstance(
                power_iterations, (int, np.integer)) or power_iterations <= 0:
            raise ValueError(f"SpectralNormalization '{self.name}': `power_iterations` should "
                             f"be an int greater than zero, got {power_iterations!r}")
        self.power_iterations = int(power_iterations)
        self.layer = layer

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        kernel = getattr(self.layer, "kernel", None) or getattr(self.layer, "embeddings", None)
        if kernel is None:
            raise ValueError(f"SpectralNormalization '{self.name}': {type(self.layer).__name__} "
                             f"object has no attribute 'kernel' nor 'embeddings'")
        self.kernel = kernel
        # Keras's order: the kernel (tracked on the wrapper), vector_u, the inner layer's rest.
        self._variables = [kernel]
        self.vector_u = self.add_weight(
            "vector_u", (1, kernel.value.shape[-1]),
            initializers.TruncatedNormal(stddev=0.02), trainable=False)
        self._variables += [v for v in self.layer.weights if v is not kernel]
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def normalized_weights(self):
        """(new vector_u, kernel / sigma) as backend arrays (Keras's normalized_weights); an
        all-zero kernel (sigma 0) keeps its kernel and vector_u, as Keras's cond does."""
        b = backend.current()
        kernel = self.kernel.value
        weights = b.reshape(kernel, (-1, kernel.shape[-1]))
        vector_u = self.vector_u.value
        for _ in range(self.power_iterations):
            vector_v = _l2_normalize(b, b.dense_backward_input(vector_u, weights))  # u @ W.T
            vector_u = _l2_normalize(b, b.dense_forward(vector_v, weights, None, "linear",
                                                        0.0)[0])
        projected, _ = b.dense_forward(vector_v, weights, None, "linear", 0.0)
        sigma = b.dense_backward_input(projected, vector_u)   # (v @ W) @ u.T, (1, 1)
        # The select stays on the device: all_zero is 1.0 for an all-zero kernel, else 0.0.
        peak = b.reduce_axes(b.elementwise_unary(weights, "abs"), None, "max", True)
        all_zero = b.elementwise_binary(peak, b.zeros((1, 1), peak.dtype), "equal")
        sigma = b.elementwise_binary(sigma, all_zero, "add")   # 0 / 1 keeps the zeros
        vector_u = b.elementwise_binary(
            b.elementwise_binary(vector_u, b.elementwise_binary(
                b.full((1, 1), 1.0, peak.dtype), all_zero, "subtract"), "multiply"),
            b.elementwise_binary(self.vector_u.value, all_zero, "multiply"), "add")
        return vector_u, b.reshape(b.elementwise_binary(weights, sigma, "divide"),
                                   tuple(kernel.shape))

    def call(self, x, training=False):
        if training:
            self.vector_u.value, self.kernel.value = self.normalized_weights()
            bump_version()   # the inference plan's folded kernels are stale now
        y = self.layer.call(x, training=training)
        if training:
            self._cache, self.layer._cache = self.layer._cache, None
        return y

    def backward(self, dy):
        self.layer._cache, self._cache = self._cache, None
        self.layer.needs_input_grad = self.needs_input_grad
        dx = self.layer.backward(dy)
        self.layer._cache = None
        return dx

    def get_config(self):
        config = super().get_config()
        config["layer"] = {"module": "keras.layers", "class_name": type(self.layer).__name__,
                           "config": self.layer.get_config(), "registered_name": None}
        config["power_iterations"] = self.power_iterations
        return config

    @classmethod
    def from_config(cls, config):
        layers = sys.modules["pynn.layers"].LAYERS
        config = dict(config)
        inner = config.pop("layer")
        name = inner.get("class_name") if isinstance(inner, dict) else None
        if name not in layers:
            raise ValueError(f"SpectralNormalization: unknown inner layer class {name!r}")
        return cls(layers[name].from_config(dict(inner.get("config") or {})), **config)
