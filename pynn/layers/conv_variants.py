"""Keras 3's convolution variants, channels_last, with Keras's arguments, defaults and weight
layouts: Conv2DTranspose (kernel (kh, kw, filters, in)), DepthwiseConv2D (kernel
(kh, kw, in, depth_multiplier), output channel c*depth_multiplier + m) and SeparableConv2D
(depthwise_kernel as DepthwiseConv2D's, pointwise_kernel (1, 1, in*depth_multiplier,
filters)). SeparableConv2D is the depthwise op followed by a 1x1 conv2d: no kernel of its own.

Constraints (pynn.constraints: names, configs or instances) project a weight after each
optimizer update, as in Keras; activity_regularizer is every layer's (pynn.layers.base).
"""

from pynn import backend, constraints, regularizers
from pynn.backend.operands.common import conv_output_size
from pynn.backend.operands.conv import conv_transpose_output_size, output_padding_pair
from pynn.layers.base import (
    Layer,
    activation_config,
    bias_activation_backward,
    data_format_arg,
    padding_arg,
    pair,
    shape_str,
)


def _positive_int(label, name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{label}: {name} must be a positive int, got {value!r}")
    return value


def _constraint(label, name, value):
    try:
        return constraints.get(value)
    except ValueError as exc:
        raise ValueError(f"{label}: {name}: {exc}") from None


def _check_input_shape(layer, input_shape):
    if len(input_shape) != 4 or input_shape[-1] is None:
        raise ValueError(f"{type(layer).__name__} '{layer.name}': expected input shape "
                         f"(None, H, W, C), got {shape_str(input_shape)}")


def _conv_output_hw(layer, input_shape):
    """(HO, WO) of a conv over input_shape by Keras's rules; None where H/W is unknown."""
    out = []
    for size, k, s, d in zip(input_shape[1:3], layer.kernel_size, layer.strides,
                             layer.dilation_rate):
        if size is None:
            out.append(None)
            continue
        _, o = conv_output_size(size, k, s, d, layer.padding)
        if o <= 0:
            raise ValueError(f"{type(layer).__name__} '{layer.name}': kernel "
                             f"{layer.kernel_size} with dilation {layer.dilation_rate} is "
                             f"larger than the input {shape_str(input_shape)} under "
                             f"padding='valid'")
        out.append(o)
    return out


class _ConvVariant(Layer):
    """The arguments every variant shares, checked and stored as Conv2D does."""

    def _conv_args(self, kernel_size, strides, padding, data_format, dilation_rate,
                   activation, use_bias):
        self._label = f"{type(self).__name__} '{self.name}'"
        data_format_arg(self._label, data_format)
        self.kernel_size = pair("kernel_size", self._label, kernel_size)
        self.strides = pair("strides", self._label, strides)
        self.padding = padding_arg(self._label, padding)
        self.dilation_rate = pair("dilation_rate", self._label, dilation_rate)
        self.activation, self.alpha = activation_config(activation, self)
        self.use_bias = bool(use_bias)

    def _conv_config(self):
        config = super().get_config()
        config.update(kernel_size=list(self.kernel_size), strides=list(self.strides),
                      padding=self.padding, dilation_rate=list(self.dilation_rate),
                      activation=self.activation, use_bias=self.use_bias)
        return config

    def _bias(self):
        return self.bias.value if self.use_bias else None


class Conv2DTranspose(_ConvVariant):
    """Keras's Conv2DTranspose: the gradient of a Conv2D with respect to its input, as a
    layer. Output length per axis as Keras 3 (operands.conv.conv_transpose_output_size):
    'valid' (n-1)*s + max(k_eff, s), 'same' n*s, or with output_padding p
    (n-1)*s + k_eff + p ('valid') / (n-1)*s + k_eff % 2 + p ('same')."""

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid",
                 output_padding=None, data_format=None, dilation_rate=(1, 1), activation=None,
                 use_bias=True, kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 kernel_constraint=None, bias_constraint=None, **kwargs):
        super().__init__(**kwargs)
        self._conv_args(kernel_size, strides, padding, data_format, dilation_rate, activation,
                        use_bias)
        self.filters = _positive_int(self._label, "filters", filters)
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(f"{self._label}: strides > 1 together with dilation_rate > 1 is "
                             f"not supported (as in Keras)")
        self.output_padding = output_padding_pair(self._label, output_padding, self.strides)
        self.activity_regularizer = regularizers.get(activity_regularizer)
        self._weight_args("kernel", kernel_initializer, kernel_regularizer, kernel_constraint)
        self._weight_args("bias", bias_initializer, bias_regularizer, bias_constraint)

    def build(self, input_shape):
        _check_input_shape(self, input_shape)
        kh, kw = self.kernel_size
        self.kernel = self.add_weight("kernel", (kh, kw, self.filters, input_shape[-1]),
                                      self.kernel_initializer, self.kernel_regularizer,
                                      constraint=self.kernel_constraint)
        self.bias = (self.add_weight("bias", (self.filters,), self.bias_initializer,
                                     self.bias_regularizer, constraint=self.bias_constraint)
                     if self.use_bias else None)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        _check_input_shape(self, input_shape)
        ops = self.output_padding or (None, None)
        out = [None if size is None else
               conv_transpose_output_size(size, k, s, d, self.padding, p)[2]
               for size, k, s, d, p in zip(input_shape[1:3], self.kernel_size, self.strides,
                                           self.dilation_rate, ops)]
        return (input_shape[0], out[0], out[1], self.filters)

    def call(self, x, training=False):
        y, z = backend.current().conv2d_transpose_forward(
            x, self.kernel.value, self._bias(), self.strides, self.padding,
            self.output_padding, self.dilation_rate, self.activation, self.alpha)
        if training:
            self._cache = (x, y, z)
        return y

    def backward(self, dy):
        x, y, z = self._cache
        self._cache = None
        dx, self.kernel.grad, db = backend.current().conv2d_transpose_backward(
            dy, x, z, y, self.kernel.value, self.strides, self.padding, self.output_padding,
            self.dilation_rate, self.activation, self.alpha, self.use_bias,
            self.needs_input_grad)
        if self.use_bias:
            self.bias.grad = db
        return dx

    def get_config(self):
        config = self._conv_config()
        config.update(filters=self.filters, output_padding=(
            None if self.output_padding is None else list(self.output_padding)))
        return config


class DepthwiseConv2D(_ConvVariant):
    """Keras's DepthwiseConv2D: each input channel convolved with its own depth_multiplier
    filters; output channel c*depth_multiplier + m."""

    def __init__(self, kernel_size, strides=(1, 1), padding="valid", depth_multiplier=1,
                 data_format=None, dilation_rate=(1, 1), activation=None, use_bias=True,
                 depthwise_initializer="glorot_uniform", bias_initializer="zeros",
                 depthwise_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 depthwise_constraint=None, bias_constraint=None, **kwargs):
        super().__init__(**kwargs)
        self._conv_args(kernel_size, strides, padding, data_format, dilation_rate, activation,
                        use_bias)
        self.depth_multiplier = _positive_int(self._label, "depth_multiplier",
                                              depth_multiplier)
        self.activity_regularizer = regularizers.get(activity_regularizer)
        self._weight_args("depthwise", depthwise_initializer, depthwise_regularizer,
                          depthwise_constraint)
        self._weight_args("bias", bias_initializer, bias_regularizer, bias_constraint)

    def build(self, input_shape):
        _check_input_shape(self, input_shape)
        kh, kw = self.kernel_size
        c = input_shape[-1]
        self.kernel = self.add_weight("kernel", (kh, kw, c, self.depth_multiplier),
                                      self.depthwise_initializer, self.depthwise_regularizer,
                                      constraint=self.depthwise_constraint)
        self.bias = (self.add_weight("bias", (c * self.depth_multiplier,),
                                     self.bias_initializer, self.bias_regularizer,
                                     constraint=self.bias_constraint)
                     if self.use_bias else None)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        _check_input_shape(self, input_shape)
        ho, wo = _conv_output_hw(self, input_shape)
        return (input_shape[0], ho, wo, input_shape[-1] * self.depth_multiplier)

    def call(self, x, training=False):
        y, z = backend.current().depthwise_conv2d_forward(
            x, self.kernel.value, self._bias(), self.strides, self.padding,
            self.dilation_rate, self.activation, self.alpha)
        if training:
            self._cache = (x, y, z)
        return y

    def backward(self, dy):
        b = backend.current()
        x, y, z = self._cache
        self._cache = None
        dz = bias_activation_backward(self, dy, z, y)
        kernel = self.kernel.value
        self.kernel.grad = b.depthwise_conv2d_backward_weight(
            x, dz, tuple(kernel.shape), self.strides, self.padding, self.dilation_rate)
        if not self.needs_input_grad:
            return None
        return b.depthwise_conv2d_backward_input(dz, kernel, tuple(x.shape), self.strides,
                                                 self.padding, self.dilation_rate)

    def get_config(self):
        config = self._conv_config()
        config.update(depth_multiplier=self.depth_multiplier)
        return config


class SeparableConv2D(_ConvVariant):
    """Keras's SeparableConv2D: DepthwiseConv2D (strides, padding, dilation) without bias or
    activation, then a 1x1 Conv2D to ``filters`` with the bias and the activation."""

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None,
                 depth_multiplier=1, dilation_rate=(1, 1), activation=None, use_bias=True,
                 depthwise_initializer="glorot_uniform", pointwise_initializer="glorot_uniform",
                 bias_initializer="zeros", depthwise_regularizer=None,
                 pointwise_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 depthwise_constraint=None, pointwise_constraint=None, bias_constraint=None,
                 **kwargs):
        super().__init__(**kwargs)
        self._conv_args(kernel_size, strides, padding, data_format, dilation_rate, activation,
                        use_bias)
        self.filters = _positive_int(self._label, "filters", filters)
        self.depth_multiplier = _positive_int(self._label, "depth_multiplier",
                                              depth_multiplier)
        self.activity_regularizer = regularizers.get(activity_regularizer)
        self._weight_args("depthwise", depthwise_initializer, depthwise_regularizer,
                          depthwise_constraint)
        self._weight_args("pointwise", pointwise_initializer, pointwise_regularizer,
                          pointwise_constraint)
        self._weight_args("bias", bias_initializer, bias_regularizer, bias_constraint)

    def build(self, input_shape):
        _check_input_shape(self, input_shape)
        kh, kw = self.kernel_size
        cm = input_shape[-1] * self.depth_multiplier
        self.depthwise_kernel = self.add_weight(
            "depthwise_kernel", (kh, kw, input_shape[-1], self.depth_multiplier),
            self.depthwise_initializer, self.depthwise_regularizer,
            constraint=self.depthwise_constraint)
        self.pointwise_kernel = self.add_weight(
            "pointwise_kernel", (1, 1, cm, self.filters), self.pointwise_initializer,
            self.pointwise_regularizer, constraint=self.pointwise_constraint)
        self.bias = (self.add_weight("bias", (self.filters,), self.bias_initializer,
                                     self.bias_regularizer, constraint=self.bias_constraint)
                     if self.use_bias else None)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        _check_input_shape(self, input_shape)
        ho, wo = _conv_output_hw(self, input_shape)
        return (input_shape[0], ho, wo, self.filters)

    def call(self, x, training=False):
        b = backend.current()
        t, _ = b.depthwise_conv2d_forward(x, self.depthwise_kernel.value, None, self.strides,
                                          self.padding, self.dilation_rate, "linear", 0.0)
        y, z = b.conv2d_forward(t, self.pointwise_kernel.value, self._bias(), (1, 1), "valid",
                                (1, 1), self.activation, self.alpha)
        if training:
            self._cache = (x, t, y, z)
        return y

    def backward(self, dy):
        b = backend.current()
        x, t, y, z = self._cache
        self._cache = None
        dt, self.pointwise_kernel.grad, db = b.conv2d_backward(
            dy, t, z, y, self.pointwise_kernel.value, (1, 1), "valid", (1, 1),
            self.activation, self.alpha, self.use_bias, True)
        if self.use_bias:
            self.bias.grad = db
        kernel = self.depthwise_kernel.value
        self.depthwise_kernel.grad = b.depthwise_conv2d_backward_weight(
            x, dt, tuple(kernel.shape), self.strides, self.padding, self.dilation_rate)
        if not self.needs_input_grad:
            return None
        return b.depthwise_conv2d_backward_input(dt, kernel, tuple(x.shape), self.strides,
                                                 self.padding, self.dilation_rate)

    def get_config(self):
        config = self._conv_config()
        config.update(filters=self.filters, depth_multiplier=self.depth_multiplier)
        return config
