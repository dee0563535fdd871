"""The layers Keras 3's applications define for themselves, under Keras's class names so that
Keras files of those models load: ConvNeXt's LayerScale and StochasticDepth
(keras/src/applications/convnext.py) and Inception-ResNet-v2's CustomScaleLayer
(keras/src/applications/inception_resnet_v2.py).

Each is a broadcast product or sum, composed of the backend's elementwise_binary and
reduce_axes ops (no computation of its own to give a kernel).
"""

import math

import numpy as np

from pynn import backend, initializers
from pynn.layers.base import Layer, shape_str
from pynn.layers.noise import SeededLayer, drop_rate


class LayerScale(Layer):
    """ConvNeXt's layer scale: y = x * gamma, gamma (projection_dim,) over the last axis,
    initialized to ``init_values`` (Keras's weight has no name; pynn calls it gamma)."""

    def __init__(self, init_values, projection_dim, **kwargs):
        super().__init__(**kwargs)
        if isinstance(projection_dim, bool) or not isinstance(projection_dim, int) or (
                projection_dim < 1):
            raise ValueError(f"LayerScale '{self.name}': projection_dim must be a positive "
                             f"int, got {projection_dim!r}")
        try:
            self.init_values = float(init_values)
        except (TypeError, ValueError):
            raise ValueError(f"LayerScale '{self.name}': init_values must be a number, got "
                             f"{init_values!r}") from None
        self.projection_dim = projection_dim

    def build(self, input_shape):
        if len(input_shape) < 2 or input_shape[-1] != self.projection_dim:
            raise ValueError(f"LayerScale '{self.name}': expected inputs whose last axis is "
                             f"projection_dim={self.projection_dim}, got input shape "
                             f"{shape_str(input_shape)}")
        self.gamma = self.add_weight("gamma", (self.projection_dim,),
                                     initializers.Constant(self.init_values))
        super().build(input_shape)

    def call(self, x, training=False):
        if training:
            self._cache = x
        return backend.current().elementwise_binary(x, self.gamma.value, "multiply")

    def backward(self, dy):
        x, self._cache = self._cache, None
        b = backend.current()
        self.gamma.grad = b.reduce_axes(b.elementwise_binary(dy, x, "multiply"),
                                        tuple(range(dy.ndim - 1)), "sum", False)
        if not self.needs_input_grad:
            return None
        return b.elementwise_binary(dy, self.gamma.value, "multiply")

    def get_config(self):
        config = super().get_config()
        config.update(init_values=self.init_values, projection_dim=self.projection_dim)
        return config


class StochasticDepth(SeededLayer):
    """ConvNeXt's stochastic depth: in training each sample's residual branch is kept with
    probability 1 - drop_path_rate and scaled by its inverse, else zeroed (Keras's
    floor(keep + U) / keep); the identity otherwise. Draws come from the dropout stream."""

    def __init__(self, drop_path_rate, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.drop_path_rate = drop_rate(self, drop_path_rate)

    def call(self, x, training=False):
        if not training or self.drop_path_rate == 0.0:
            return x
        b = backend.current()
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        scale, _ = b.dropout_forward(b.asarray(np.ones(shape, x.dtype), x.dtype),
                                     self.drop_path_rate, self.seed, self._offset)
        self._offset += math.prod(shape)
        self._cache = scale
        return b.elementwise_binary(x, scale, "multiply")

    def backward(self, dy):
        scale, self._cache = self._cache, None
        if scale is None:
            return dy
        return backend.current().elementwise_binary(dy, scale, "multiply")

    def get_config(self):
        config = super().get_config()
        config["drop_path_rate"] = self.drop_path_rate
        return config


class CustomScaleLayer(Layer):
    """Inception-ResNet-v2's residual sum: [x, branch] -> x + branch * scale."""

    def __init__(self, scale, **kwargs):
        super().__init__(**kwargs)
        try:
            self.scale = float(scale)
        except (TypeError, ValueError):
            raise ValueError(f"CustomScaleLayer '{self.name}': scale must be a number, got "
                             f"{scale!r}") from None

    def compute_output_shape(self, input_shape):
        if (not isinstance(input_shape, (list, tuple)) or len(input_shape) != 2
                or not all(isinstance(s, (list, tuple)) for s in input_shape)
                or tuple(input_shape[0][1:]) != tuple(input_shape[1][1:])):
            raise ValueError(f"CustomScaleLayer '{self.name}': expected a list of two inputs "
                             f"of one shape, got {input_shape!r}")
        return tuple(input_shape[0])

    def build(self, input_shape):
        self.compute_output_shape(input_shape)
        super().build(input_shape)

    def _scale(self, like):
        return backend.current().asarray(np.asarray(self.scale, like.dtype), like.dtype)

    def call(self, inputs, training=False):
        x, branch = inputs
        b = backend.current()
        return b.elementwise_binary(x, b.elementwise_binary(branch, self._scale(branch),
                                                            "multiply"), "add")

    def backward(self, dy):
        if not self.needs_input_grad:
            return [None, None]
        return [dy, backend.current().elementwise_binary(dy, self._scale(dy), "multiply")]

    def get_config(self):
        config = super().get_config()
        config["scale"] = self.scale
        return config
