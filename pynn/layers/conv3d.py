"""Keras 3's volumetric convolutions on (N, D, H, W, C), channels_last: Conv3D (kernel
(kd, kh, kw, in / groups, filters)) and Conv3DTranspose (kernel (kd, kh, kw, filters, in)),
with Keras's arguments, defaults and weight layouts, on the conv3d ops
(native/conv3d.pyx, opencl/conv3d.cl). data_format='channels_first' is refused, as by
pynn's 2-D convolutions.
"""

from pynn import backend
from pynn.backend.operands.common import conv_output_size
from pynn.backend.operands.conv import conv_transpose_output_size
from pynn.backend.operands.conv3d import output_padding_triple, triple
from pynn.layers.base import Layer, activation_config, data_format_arg, padding_arg, shape_str


def _positive_int(label, name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{label}: {name} must be a positive int, got {value!r}")
    return value


def _check_input_shape(layer, input_shape):
    if len(input_shape) != 5 or input_shape[-1] is None:
        raise ValueError(f"{layer._label}: expected input shape (None, D, H, W, C), got "
                         f"{shape_str(input_shape)}")


class _Conv3DBase(Layer):
    """The arguments Conv3D and Conv3DTranspose share, checked and stored as Conv2D's."""

    def _conv_args(self, filters, kernel_size, strides, padding, data_format, dilation_rate,
                   activation, use_bias, kernel_initializer, bias_initializer,
                   kernel_regularizer, bias_regularizer, kernel_constraint, bias_constraint):
        self._label = f"{type(self).__name__} '{self.name}'"
        data_format_arg(self._label, data_format)
        self.filters = _positive_int(self._label, "filters", filters)
        self.kernel_size = triple(self._label, "kernel_size", kernel_size)
        self.strides = triple(self._label, "strides", strides)
        self.padding = padding_arg(self._label, padding)
        self.dilation_rate = triple(self._label, "dilation_rate", dilation_rate)
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(f"{self._label}: strides > 1 together with dilation_rate > 1 is "
                             f"not supported (as in Keras)")
        self.activation, self.alpha = activation_config(activation, self)
        self.use_bias = bool(use_bias)
        self._weight_args("kernel", kernel_initializer, kernel_regularizer, kernel_constraint)
        self._weight_args("bias", bias_initializer, bias_regularizer, bias_constraint)

    def _bias(self):
        return self.bias.value if self.use_bias else None

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=list(self.kernel_size),
                      strides=list(self.strides), padding=self.padding,
                      data_format="channels_last", dilation_rate=list(self.dilation_rate),
                      activation=self.activation, use_bias=self.use_bias)
        return config


class Conv3D(_Conv3DBase):
    """Keras's Conv3D: y = activation(conv3d(x, kernel) + bias); groups split the input
    and output channels into groups convolved apart (Keras's order)."""

    def __init__(self, filters, kernel_size, strides=(1, 1, 1), padding="valid",
                 data_format=None, dilation_rate=(1, 1, 1), groups=1, activation=None,
                 use_bias=True, kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, kernel_constraint=None,
                 bias_constraint=None, **kwargs):
        super().__init__(**kwargs)
        self._conv_args(filters, kernel_size, strides, padding, data_format, dilation_rate,
                        activation, use_bias, kernel_initializer, bias_initializer,
                        kernel_regularizer, bias_regularizer, kernel_constraint,
                        bias_constraint)
        self.groups = _positive_int(self._label, "groups", groups)
        if self.filters % self.groups:
            raise ValueError(f"{self._label}: groups must divide filters ({self.filters}), "
                             f"got {groups!r}")

    def build(self, input_shape):
        _check_input_shape(self, input_shape)
        if input_shape[-1] % self.groups:
            raise ValueError(f"{self._label}: groups={self.groups} must divide the input "
                             f"channels, got input shape {shape_str(input_shape)}")
        self._add_kernel_and_bias((*self.kernel_size, input_shape[-1] // self.groups,
                                   self.filters), self.filters)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        _check_input_shape(self, input_shape)
        out = []
        for size, k, s, d in zip(input_shape[1:4], self.kernel_size, self.strides,
                                 self.dilation_rate):
            if size is None:
                out.append(None)
                continue
            _, o = conv_output_size(size, k, s, d, self.padding)
            if o <= 0:
                raise ValueError(f"{self._label}: kernel {self.kernel_size} with dilation "
                                 f"{self.dilation_rate} is larger than the input "
                                 f"{shape_str(input_shape)} under padding='valid'")
            out.append(o)
        return (input_shape[0], *out, self.filters)

    def call(self, x, training=False):
        y, z = backend.current().conv3d_forward(
            x, self.kernel.value, self._bias(), self.strides, self.padding,
            self.dilation_rate, self.groups, self.activation, self.alpha)
        if training:
            self._cache = (x, y, z)
        return y

    def backward(self, dy):
        x, y, z = self._cache
        self._cache = None
        dx, self.kernel.grad, db = backend.current().conv3d_backward(
            dy, x, z, y, self.kernel.value, self.strides, self.padding, self.dilation_rate,
            self.groups, self.activation, self.alpha, self.use_bias, self.needs_input_grad)
        if self.use_bias:
            self.bias.grad = db
        return dx

    def get_config(self):
        config = super().get_config()
        config.update(groups=self.groups)
        return config


class Conv3DTranspose(_Conv3DBase):
    """Keras's Conv3DTranspose: the gradient of a Conv3D with respect to its input, as a
    layer. Output length per axis as Keras 3's (and Conv2DTranspose's): 'valid'
    (n-1)*s + max(k_eff, s), 'same' n*s, or with output_padding p (n-1)*s + k_eff + p
    ('valid') / (n-1)*s + k_eff % 2 + p ('same')."""

    def __init__(self, filters, kernel_size, strides=(1, 1, 1), padding="valid",
                 data_format=None, output_padding=None, dilation_rate=(1, 1, 1),
                 activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
                 kernel_constraint=None, bias_constraint=None, **kwargs):
        super().__init__(**kwargs)
        self._conv_args(filters, kernel_size, strides, padding, data_format, dilation_rate,
                        activation, use_bias, kernel_initializer, bias_initializer,
                        kernel_regularizer, bias_regularizer, kernel_constraint,
                        bias_constraint)
        self.output_padding = output_padding_triple(self._label, output_padding, self.strides)

    def build(self, input_shape):
        _check_input_shape(self, input_shape)
        self._add_kernel_and_bias((*self.kernel_size, self.filters, input_shape[-1]),
                                  self.filters)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        _check_input_shape(self, input_shape)
        pads = self.output_padding or (None, None, None)
        out = [None if size is None else
               conv_transpose_output_size(size, k, s, d, self.padding, p)[2]
               for size, k, s, d, p in zip(input_shape[1:4], self.kernel_size, self.strides,
                                           self.dilation_rate, pads)]
        return (input_shape[0], *out, self.filters)

    def call(self, x, training=False):
        y, z = backend.current().conv3d_transpose_forward(
            x, self.kernel.value, self._bias(), self.strides, self.padding,
            self.output_padding, self.dilation_rate, self.activation, self.alpha)
        if training:
            self._cache = (x, y, z)
        return y

    def backward(self, dy):
        x, y, z = self._cache
        self._cache = None
        dx, self.kernel.grad, db = backend.current().conv3d_transpose_backward(
            dy, x, z, y, self.kernel.value, self.strides, self.padding, self.output_padding,
            self.dilation_rate, self.activation, self.alpha, self.use_bias,
            self.needs_input_grad)
        if self.use_bias:
            self.bias.grad = db
        return dx

    def get_config(self):
        config = super().get_config()
        config.update(output_padding=(None if self.output_padding is None
                                      else list(self.output_padding)))
        return config
