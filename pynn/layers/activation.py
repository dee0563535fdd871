"""Keras 3's activation layers: ReLU, LeakyReLU, PReLU, ELU, Softmax.

Each is one backend op forward and one backward. LeakyReLU and ELU are the fused elementwise
activations (``activation_forward`` with their parameter as alpha: the same math as Dense's
activation='leaky_relu'); ReLU with a cap or a threshold has its own op (relu_forward), PReLU
its trainable alpha (prelu_forward), Softmax any axis (softmax_forward).
"""

from pynn import backend, constraints, initializers, regularizers
from pynn.layers.base import Layer, shape_str


def _non_negative(layer, name, value, allow_none=False):
    """Keras's ReLU/LeakyReLU check: a number >= 0 (None where allowed)."""
    if value is None and allow_none:
        return None
    label = f"{type(layer).__name__} '{layer.name}'"
    if isinstance(value, bool):
        raise TypeError(f"{label}: {name} must be a number >= 0, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{label}: {name} must be a number >= 0, got {value!r}") from None
    if not v >= 0 or v == float("inf"):
        raise ValueError(f"{label}: {name} must be a finite number >= 0, got {value!r}")
    return v


class ReLU(Layer):
    """max_value-capped, thresholded relu with a negative slope below the threshold:
    y = min(x, max_value) where x > threshold, else negative_slope * (x - threshold)."""

    supports_masking = True  # the input's mask passes on, as in Keras 3

    def __init__(self, max_value=None, negative_slope=0.0, threshold=0.0, **kwargs):
        super().__init__(**kwargs)
        self.max_value = _non_negative(self, "max_value", max_value, allow_none=True)
        self.negative_slope = _non_negative(self, "negative_slope", negative_slope)
        self.threshold = _non_negative(self, "threshold", threshold)

    def call(self, x, training=False):
        if training:
            self._cache = x
        return backend.current().relu_forward(x, self.max_value, self.negative_slope,
                                              self.threshold)

    def backward(self, dy):
        x, self._cache = self._cache, None
        return backend.current().relu_backward(dy, x, self.max_value, self.negative_slope,
                                               self.threshold)

    def get_config(self):
        config = super().get_config()
        config.update(max_value=self.max_value, negative_slope=self.negative_slope,
                      threshold=self.threshold)
        return config


class _Elementwise(Layer):
    """A layer that is one fused activation with a parameter (the ops' ``alpha``)."""

    activation = None

    def _alpha(self):
        raise NotImplementedError

    def call(self, x, training=False):
        y = backend.current().activation_forward(x, self.activation, self._alpha())
        if training:
            self._cache = y  # leaky_relu and elu derive their gradient from the output
        return y

    def backward(self, dy):
        y, self._cache = self._cache, None
        return backend.current().activation_backward(dy, None, y, self.activation,
                                                     self._alpha())


class LeakyReLU(_Elementwise):
    """y = x where x > 0, else negative_slope * x (Keras 3 default 0.3)."""

    supports_masking = True  # the input's mask passes on, as in Keras 3

    activation = "leaky_relu"

    def __init__(self, negative_slope=0.3, **kwargs):
        super().__init__(**kwargs)
        self.negative_slope = _non_negative(self, "negative_slope", negative_slope)

    def _alpha(self):
        return self.negative_slope

    def get_config(self):
        config = super().get_config()
        config["negative_slope"] = self.negative_slope
        return config


class ELU(_Elementwise):
    """y = x where x > 0, else alpha * (exp(x) - 1). alpha >= 0: the backward reads the
    branch from the output's sign."""

    supports_masking = True  # the input's mask passes on, as in Keras 3

    activation = "elu"

    def __init__(self, alpha=1.0, **kwargs):
        super().__init__(**kwargs)
        self.alpha = _non_negative(self, "alpha", alpha)

    def _alpha(self):
        return self.alpha

    def get_config(self):
        config = super().get_config()
        config["alpha"] = self.alpha
        return config


class PReLU(Layer):
    """y = x where x > 0, else alpha * x with a trainable alpha of shape input_shape[1:],
    1 on ``shared_axes`` (Keras's weight layout)."""

    supports_masking = True  # the input's mask passes on, as in Keras 3

    def __init__(self, alpha_initializer="zeros", alpha_regularizer=None,
                 alpha_constraint=None, shared_axes=None, **kwargs):
        super().__init__(**kwargs)
        self.alpha_initializer = initializers.get(alpha_initializer)
        self.alpha_regularizer = regularizers.get(alpha_regularizer)
        self.alpha_constraint = constraints.get(alpha_constraint)
        if shared_axes is None:
            self.shared_axes = None
        else:
            axes = list(shared_axes) if isinstance(shared_axes, (list, tuple)) else [
                shared_axes]
            if any(isinstance(a, bool) or not isinstance(a, int) or a < 1 for a in axes):
                raise ValueError(f"PReLU '{self.name}': shared_axes must be ints >= 1 (axis 0 "
                                 f"is the batch), got {shared_axes!r}")
            self.shared_axes = axes

    def build(self, input_shape):
        shape = list(input_shape[1:])
        for a in self.shared_axes or ():
            if a > len(shape):
                raise ValueError(f"PReLU '{self.name}': shared axis {a} is out of range for "
                                 f"input shape {shape_str(input_shape)}")
            shape[a - 1] = 1
        if any(d is None for d in shape):
            raise ValueError(f"PReLU '{self.name}': input shape {shape_str(input_shape)} has "
                             f"an unknown axis that is not shared")
        self.alpha = self.add_weight("alpha", shape, self.alpha_initializer,
                                     self.alpha_regularizer, constraint=self.alpha_constraint)
        super().build(input_shape)

    def call(self, x, training=False):
        if training:
            self._cache = x
        return backend.current().prelu_forward(x, self.alpha.value)

    def backward(self, dy):
        x, self._cache = self._cache, None
        dx, self.alpha.grad = backend.current().prelu_backward(dy, x, self.alpha.value,
                                                               self.needs_input_grad)
        return dx

    def get_config(self):
        config = super().get_config()
        config.update(
            alpha_initializer=initializers.serialize(self.alpha_initializer),
            alpha_regularizer=regularizers.serialize(self.alpha_regularizer),
            alpha_constraint=constraints.serialize(self.alpha_constraint),
            shared_axes=self.shared_axes,
        )
        return config


class Softmax(Layer):
    """Softmax along ``axis`` (one int; Keras also takes a list, not supported here)."""

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise TypeError(f"Softmax '{self.name}': axis must be an int, got {axis!r}")
        self.axis = axis

    def build(self, input_shape):
        if not -len(input_shape) <= self.axis < len(input_shape) or (
                self.axis % len(input_shape) == 0):
            raise ValueError(f"Softmax '{self.name}': axis {self.axis} must be a feature axis "
                             f"of input shape {shape_str(input_shape)}")
        super().build(input_shape)

    def call(self, x, training=False):
        y = backend.current().softmax_forward(x, self.axis)
        if training:
            self._cache = y
        return y

    def backward(self, dy):
        y, self._cache = self._cache, None
        return backend.current().softmax_backward(dy, y, self.axis)

    def get_config(self):
        config = super().get_config()
        config["axis"] = self.axis
        return config
