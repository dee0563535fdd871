"""Keras 3's 1-D sequence layers on (N, T, C), channels_last: Conv1D, MaxPooling1D,
AveragePooling1D, GlobalAveragePooling1D, GlobalMaxPooling1D, TimeDistributed, and the 1-D
twins of the 2-D variants: UpSampling1D, ZeroPadding1D, Cropping1D, Conv1DTranspose,
SeparableConv1D.

No kernels of their own: (N, T, C) is viewed as the image (N, 1, T, C) and the kernel
(k, C/groups, F) as (1, k, C/groups, F), so the conv2d / grouped_conv2d and pool2d ops do the
work (the math is the same: a 1-D window is a 1 x k window). Conv1D's 'causal' padding is a
left zero pad of dilation * (k - 1) steps (pad2d_forward, undone in the backward by
pad2d_backward) followed by a 'valid' conv, as Keras does.
"""

import inspect
import operator
import sys

import numpy as np

from pynn import backend, constraints, initializers, regularizers
from pynn.backend.operands.common import conv_output_size
from pynn.backend.operands.conv import conv_transpose_output_size, output_padding_pair
from pynn.layers.base import (
    C_INT_MAX,
    Layer,
    activation_config,
    bias_activation_backward,
    data_format_arg,
    padding_arg,
    shape_str,
)


def _one_int(label, name, value):
    """An int, or a 1-tuple of one (Keras's conv_utils.standardize_tuple)."""
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{label}: {name} must be a positive int (or a tuple of one), got "
                         f"{value!r}")
    if value > C_INT_MAX:
        raise ValueError(f"{label}: {name} must be at most {C_INT_MAX} (a C int), got {value}")
    return int(value)


def _check_3d(layer, input_shape):
    if len(input_shape) != 3:
        raise ValueError(f"{type(layer).__name__} '{layer.name}': expected input shape "
                         f"(None, T, C), got {shape_str(input_shape)}")


def _as_image(x):
    """(N, T, C) -> the (N, 1, T, C) view the 2-D ops take."""
    return backend.current().reshape(x, (x.shape[0], 1, x.shape[1], x.shape[2]))


def _as_sequence(y):
    return backend.current().reshape(y, (y.shape[0], y.shape[2], y.shape[3]))


class Conv1D(Layer):
    def __init__(self, filters, kernel_size, strides=1, padding="valid", data_format=None,
                 dilation_rate=1, groups=1, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, kernel_constraint=None,
                 bias_constraint=None, **kwargs):
        super().__init__(**kwargs)
        label = f"Conv1D '{self.name}'"
        self.filters = _one_int(label, "filters", filters)
        self.groups = _one_int(label, "groups", groups)
        if self.filters % self.groups:
            raise ValueError(f"{label}: groups must divide filters ({self.filters}), got "
                             f"{groups!r}")
        data_format_arg(label, data_format)
        self.kernel_size = _one_int(label, "kernel_size", kernel_size)
        self.strides = _one_int(label, "strides", strides)
        self.dilation_rate = _one_int(label, "dilation_rate", dilation_rate)
        if str(padding).lower() == "causal":
            self.padding = "causal"
        else:
            try:
                self.padding = padding_arg(label, padding)
            except ValueError:
                raise ValueError(f"{label}: padding must be 'valid', 'same' or 'causal', got "
                                 f"{padding!r}") from None
        if self.strides > 1 and self.dilation_rate > 1:
            raise ValueError(f"{label}: strides > 1 together with dilation_rate > 1 is not "
                             f"supported (as in Keras)")
        self.activation, self.alpha = activation_config(activation, self)
        self.use_bias = bool(use_bias)
        self._weight_args("kernel", kernel_initializer, kernel_regularizer, kernel_constraint)
        self._weight_args("bias", bias_initializer, bias_regularizer, bias_constraint)

    @property
    def _causal_pad(self):
        """pad2d's ((top, bottom), (left, right)) of the causal left pad."""
        return ((0, 0), (self.dilation_rate * (self.kernel_size - 1), 0))

    @property
    def _conv_padding(self):
        return "valid" if self.padding == "causal" else self.padding

    def build(self, input_shape):
        _check_3d(self, input_shape)
        channels = input_shape[-1]
        if channels is None or channels % self.groups:
            raise ValueError(f"Conv1D '{self.name}': groups={self.groups} must divide the input "
                             f"channels, got input shape {shape_str(input_shape)}")
        self._add_kernel_and_bias((self.kernel_size, channels // self.groups, self.filters),
                                  self.filters)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        _check_3d(self, input_shape)
        n, t, _ = input_shape
        if t is None:
            return (n, None, self.filters)
        if self.padding == "causal":
            t += self.dilation_rate * (self.kernel_size - 1)
        _, out = conv_output_size(t, self.kernel_size, self.strides, self.dilation_rate,
                                  self._conv_padding)
        if out <= 0:
            raise ValueError(f"Conv1D '{self.name}': kernel_size {self.kernel_size} with "
                             f"dilation {self.dilation_rate} is larger than the input "
                             f"{shape_str(input_shape)} under padding='valid'")
        return (n, out, self.filters)

    def _kernel4(self):
        k = self.kernel.value
        return backend.current().reshape(k, (1,) + tuple(k.shape))

    def call(self, x, training=False):
        b = backend.current()
        x4 = _as_image(x)
        if self.padding == "causal":
            x4 = b.pad2d_forward(x4, self._causal_pad)
        bias = self.bias.value if self.use_bias else None
        strides, dilation = (1, self.strides), (1, self.dilation_rate)
        if self.groups == 1:
            # mixed_bfloat16 (issue 17): Conv2D's bf16 twins, as Conv1D runs through Conv2D.
            forward = b.bf16_conv2d_forward if self._bf16_compute else b.conv2d_forward
            y, z = forward(x4, self._kernel4(), bias, strides, self._conv_padding, dilation,
                           self.activation, self.alpha)
        else:
            y, z = b.grouped_conv2d_forward(x4, self._kernel4(), bias, strides,
                                            self._conv_padding, dilation, self.groups,
                                            self.activation, self.alpha)
        if training:
            self._cache = (x4, y, z)
        return _as_sequence(y)

    def backward(self, dy):
        b = backend.current()
        x4, y, z = self._cache
        self._cache = None
        dy4 = _as_image(dy)
        kernel4 = self._kernel4()
        strides, dilation = (1, self.strides), (1, self.dilation_rate)
        if self.groups == 1 and not self._bf16_compute:
            dx4, dk, db = b.conv2d_backward(dy4, x4, z, y, kernel4, strides,
                                            self._conv_padding, dilation, self.activation,
                                            self.alpha, self.use_bias, self.needs_input_grad)
            if self.use_bias:
                self.bias.grad = db
        elif self.groups == 1:  # mixed_bfloat16: the bf16 twins of conv2d_backward's GEMMs
            dz = bias_activation_backward(self, dy4, z, y)
            dk = b.bf16_conv2d_backward_weight(x4, dz, tuple(kernel4.shape), strides,
                                               self._conv_padding, dilation)
            dx4 = None
            if self.needs_input_grad:
                dx4 = b.bf16_conv2d_backward_input(dz, kernel4, tuple(x4.shape), strides,
                                                   self._conv_padding, dilation)
        else:
            dz = bias_activation_backward(self, dy4, z, y)
            dk = b.grouped_conv2d_backward_weight(x4, dz, tuple(kernel4.shape), strides,
                                                  self._conv_padding, dilation, self.groups)
            dx4 = None
            if self.needs_input_grad:
                dx4 = b.grouped_conv2d_backward_input(dz, kernel4, tuple(x4.shape), strides,
                                                      self._conv_padding, dilation,
                                                      self.groups)
        self.kernel.grad = b.reshape(dk, tuple(self.kernel.shape))
        if dx4 is None:
            return None
        if self.padding == "causal":
            dx4 = b.pad2d_backward(dx4, self._causal_pad)
        return _as_sequence(dx4)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters, kernel_size=[self.kernel_size], strides=[self.strides],
            padding=self.padding, dilation_rate=[self.dilation_rate], groups=self.groups,
            activation=self.activation, use_bias=self.use_bias,
        )
        return config


class _Pooling1D(Layer):
    def __init__(self, pool_size=2, strides=None, padding="valid", data_format=None,
                 **kwargs):
        super().__init__(**kwargs)
        label = f"{type(self).__name__} '{self.name}'"
        data_format_arg(label, data_format)
        self.pool_size = _one_int(label, "pool_size", pool_size)
        # Keras: strides=None means strides = pool_size.
        self.strides = _one_int(label, "strides",
                                strides if strides is not None else self.pool_size)
        self.padding = padding_arg(label, padding)

    @property
    def _window(self):
        return (1, self.pool_size), (1, self.strides)

    def compute_output_shape(self, input_shape):
        _check_3d(self, input_shape)
        n, t, c = input_shape
        if t is None:
            return (n, None, c)
        _, out = conv_output_size(t, self.pool_size, self.strides, 1, self.padding)
        if out <= 0:
            raise ValueError(f"{type(self).__name__} '{self.name}': pool_size "
                             f"{self.pool_size} is larger than the input "
                             f"{shape_str(input_shape)} under padding='valid'")
        return (n, out, c)

    def get_config(self):
        config = super().get_config()
        config.update(pool_size=[self.pool_size], strides=[self.strides], padding=self.padding)
        return config


class MaxPooling1D(_Pooling1D):
    def call(self, x, training=False):
        x4 = _as_image(x)
        y, argmax = backend.current().maxpool2d_forward(x4, *self._window, self.padding)
        if training:
            self._cache = (argmax, tuple(x4.shape))
        return _as_sequence(y)

    def backward(self, dy):
        (argmax, shape), self._cache = self._cache, None
        return _as_sequence(backend.current().maxpool2d_backward(_as_image(dy), argmax, shape))


class AveragePooling1D(_Pooling1D):
    def call(self, x, training=False):
        x4 = _as_image(x)
        if training:
            self._cache = tuple(x4.shape)
        return _as_sequence(backend.current().avgpool2d_forward(x4, *self._window,
                                                                self.padding))

    def backward(self, dy):
        shape, self._cache = self._cache, None
        return _as_sequence(backend.current().avgpool2d_backward(
            _as_image(dy), shape, *self._window, self.padding))


class _GlobalPooling1D(Layer):
    def __init__(self, data_format=None, keepdims=False, **kwargs):
        super().__init__(**kwargs)
        data_format_arg(f"{type(self).__name__} '{self.name}'", data_format)
        self.keepdims = bool(keepdims)

    def compute_output_shape(self, input_shape):
        _check_3d(self, input_shape)
        n, _, c = input_shape
        return (n, 1, c) if self.keepdims else (n, c)

    def _out(self, y):
        return backend.current().reshape(y, (y.shape[0], 1, y.shape[1])) if self.keepdims else y

    def _dy(self, dy):
        return backend.current().reshape(dy, (dy.shape[0], dy.shape[-1])) if self.keepdims else dy

    def get_config(self):
        config = super().get_config()
        config["keepdims"] = self.keepdims
        return config


class GlobalAveragePooling1D(_GlobalPooling1D):
    # -- masks (issue 14, recurrent half): Keras averages over the unmasked steps only,
    # sum_t(m x) / sum_t(m): the weights m / sum_t(m) batch-dotted with x (the Dot layer's
    # op, the same math); a fully masked row is 0/0 = NaN, as in Keras.
    supports_masking = True
    _mask_from_inputs_only = True  # it consumes a mask and makes none

    def compute_mask(self, inputs, mask=None):
        return None

    def call(self, x, training=False, mask=None):
        if mask is not None:
            b = backend.current()
            m = np.asarray(b.to_numpy(mask) if not isinstance(mask, np.ndarray) else mask,
                           dtype=np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                w = b.asarray((m / m.sum(axis=1, keepdims=True)).astype(self.dtype), self.dtype)
            if training:
                self._cache = ("masked", w, x)
            return self._out(b.dot_forward(w, x, (1, 1), False))
        x4 = _as_image(x)
        if training:
            self._cache = tuple(x4.shape)
        return self._out(backend.current().global_avgpool2d_forward(x4))

    def backward(self, dy):
        cache, self._cache = self._cache, None
        if cache[0] == "masked":
            _, w, x = cache
            return backend.current().dot_backward(self._dy(dy), w, x, (1, 1), False)[1]
        return _as_sequence(backend.current().global_avgpool2d_backward(self._dy(dy), cache))


class GlobalMaxPooling1D(_GlobalPooling1D):
    def call(self, x, training=False):
        x4 = _as_image(x)
        y, argmax = backend.current().global_maxpool2d_forward(x4)
        if training:
            self._cache = (argmax, tuple(x4.shape))
        return self._out(y)

    def backward(self, dy):
        (argmax, shape), self._cache = self._cache, None
        return _as_sequence(backend.current().global_maxpool2d_backward(self._dy(dy), argmax,
                                                                        shape))


class TimeDistributed(Layer):
    """Applies ``layer`` to every time step as one batched call: (N, T, ...) is reshaped to
    (N*T, ...), the inner layer runs once, and the result is reshaped back; the backward
    likewise. Its weights are the inner layer's, in the inner layer's (Keras's) order."""

    supports_masking = True  # issue 14: the input's mask passes on (Keras)

    def __init__(self, layer, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(layer, Layer):  # Keras raises ValueError here too
            raise ValueError(  # noqa: TRY004
                f"TimeDistributed '{self.name}': layer must be a pynn Layer instance, got "
                f"{layer!r}")
        self.layer = layer

    def _inner_shape(self, input_shape):
        if len(input_shape) < 3:
            raise ValueError(f"TimeDistributed '{self.name}': expected an input of at least 3 "
                             f"dimensions (None, T, ...), got {shape_str(input_shape)}")
        return (None,) + tuple(input_shape[2:])

    def build(self, input_shape):
        inner = self._inner_shape(input_shape)
        if not self.layer.built:
            self.layer.build(inner)
        # One list: the inner layer's Variables are this layer's weights.
        self._variables = self.layer._variables
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        out = self.layer.compute_output_shape(self._inner_shape(input_shape))
        return (input_shape[0], input_shape[1]) + tuple(out[1:])

    def call(self, x, training=False, mask=None):
        """``mask`` (N, T, ...): Keras hands the inner layer each step's slice (N, ...) when
        its call takes a mask; here all steps go at once, as (N*T, ...)."""
        b = backend.current()
        n, t = x.shape[0], x.shape[1]
        flat = b.reshape(x, (n * t,) + tuple(x.shape[2:]))
        self.layer.check_input(flat)
        inner_mask = self._inner_mask(mask, x)
        if inner_mask is not None:
            y = self.layer.call(flat, training=training, mask=inner_mask)
        else:
            y = self.layer.call(flat, training=training)
        if training:
            # The executor saves this layer's _cache only: the inner layer's rides in it.
            self._cache = (self.layer._cache, tuple(x.shape))
            self.layer._cache = None
        return b.reshape(y, (n, t) + tuple(y.shape[1:]))

    def _inner_mask(self, mask, x):
        """The mask as the inner layer's (N*T, ...) one, or None: no mask, or an inner layer
        whose call takes none (the mask then only passes on, compute_mask)."""
        if mask is None or "mask" not in inspect.signature(self.layer.call).parameters:
            return None
        m = mask if isinstance(mask, np.ndarray) else backend.current().to_numpy(mask)
        m = np.asarray(m)
        if m.ndim < 2 or m.shape[:2] != tuple(x.shape[:2]):
            raise ValueError(f"TimeDistributed '{self.name}': the mask must be at least 2-D "
                             f"with the input's (batch, timesteps) = {tuple(x.shape[:2])} "
                             f"first, got shape {m.shape}")
        return m.reshape((m.shape[0] * m.shape[1],) + m.shape[2:])

    def backward(self, dy):
        b = backend.current()
        (inner_cache, x_shape), self._cache = self._cache, None
        n, t = x_shape[0], x_shape[1]
        self.layer._cache = inner_cache
        self.layer.needs_input_grad = self.needs_input_grad
        dx = self.layer.backward(b.reshape(dy, (n * t,) + tuple(dy.shape[2:])))
        self.layer._cache = None
        return None if dx is None else b.reshape(dx, x_shape)

    def get_config(self):
        config = super().get_config()
        config["layer"] = {"class_name": type(self.layer).__name__,
                           "config": self.layer.get_config()}
        return config

    @classmethod
    def from_config(cls, config):
        # The registry of pynn.layers, which imports this module (so it is always loaded
        # first); read from sys.modules rather than imported, which would be a cycle.
        LAYERS = sys.modules["pynn.layers"].LAYERS
        config = dict(config)
        inner = config.pop("layer")
        name = inner.get("class_name") if isinstance(inner, dict) else None
        if name not in LAYERS:
            raise ValueError(f"TimeDistributed: unknown inner layer class {name!r}; expected "
                             f"one of pynn.layers.LAYERS")
        return cls(LAYERS[name].from_config(inner.get("config", {})), **config)


# -- 1-D twins of the 2-D reshaping and convolution variants (issue 14, branch seq) ---------
# No kernels of their own either: each runs its 2-D twin's ops (spatial: upsample2d, pad2d;
# conv: conv2d_transpose, depthwise_conv2d + a 1x1 conv2d) on the (N, 1, T, C) view, with a
# 1-D kernel (k, ...) viewed as the 1 x k kernel (1, k, ...): the math is the same.

def _side_pair(label, name, value):
    """Keras's standardize_tuple(value, 2, allow_zero=True): an int (both sides) or
    (left, right), non-negative ints."""
    try:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, (int, np.integer)):
            pair = (int(value), int(value))
        else:
            pair = tuple(value)
            if len(pair) != 2 or any(isinstance(v, bool) for v in pair):
                raise ValueError
            pair = tuple(int(operator.index(v)) for v in pair)
    except (TypeError, ValueError):
        raise ValueError(f"{label}: {name} must be an int or a tuple of 2 ints (left, right), "
                         f"got {value!r}") from None
    if min(pair) < 0 or max(pair) > C_INT_MAX:
        raise ValueError(f"{label}: {name} must be non-negative ints (at most {C_INT_MAX}), "
                         f"got {value!r}")
    return pair


def _as_kernel2d(variable):
    """A 1-D kernel (k, ...) as the 2-D ops' (1, k, ...)."""
    k = variable.value
    return backend.current().reshape(k, (1,) + tuple(k.shape))


def _kernel_grad(variable, grad4):
    variable.grad = backend.current().reshape(grad4, tuple(variable.shape))


class UpSampling1D(Layer):
    """Repeats each time step ``size`` times (upsample2d 'nearest' by (1, size))."""

    def __init__(self, size=2, **kwargs):
        super().__init__(**kwargs)
        self.size = _one_int(f"UpSampling1D '{self.name}'", "size", size)

    def compute_output_shape(self, input_shape):
        _check_3d(self, input_shape)
        n, t, c = input_shape
        return (n, None if t is None else t * self.size, c)

    def call(self, x, training=False):
        x4 = _as_image(x)
        if training:
            self._cache = tuple(x4.shape)
        return _as_sequence(backend.current().upsample2d_forward(x4, (1, self.size),
                                                                 "nearest"))

    def backward(self, dy):
        shape, self._cache = self._cache, None
        if not self.needs_input_grad:
            return None
        return _as_sequence(backend.current().upsample2d_backward(
            _as_image(dy), shape, (1, self.size), "nearest"))

    def get_config(self):
        config = super().get_config()
        config["size"] = self.size
        return config


class ZeroPadding1D(Layer):
    """Adds ``padding`` zero steps before and after each sequence (pad2d on the time axis)."""

    def __init__(self, padding=1, data_format=None, **kwargs):
        super().__init__(**kwargs)
        label = f"ZeroPadding1D '{self.name}'"
        data_format_arg(label, data_format)
        self.padding = _side_pair(label, "padding", padding)

    def compute_output_shape(self, input_shape):
        _check_3d(self, input_shape)
        n, t, c = input_shape
        return (n, None if t is None else t + sum(self.padding), c)

    def call(self, x, training=False):
        return _as_sequence(backend.current().pad2d_forward(_as_image(x),
                                                            ((0, 0), self.padding)))

    def backward(self, dy):
        if not self.needs_input_grad:
            return None
        return _as_sequence(backend.current().pad2d_backward(_as_image(dy),
                                                             ((0, 0), self.padding)))

    def get_config(self):
        config = super().get_config()
        config.update(padding=list(self.padding), data_format="channels_last")
        return config


class Cropping1D(Layer):
    """Removes ``cropping`` steps at the start and end of each sequence: the crop is
    pad2d_forward's backward, and its backward the zero pad (as Cropping2D)."""

    def __init__(self, cropping=(1, 1), **kwargs):
        super().__init__(**kwargs)
        self.cropping = _side_pair(f"Cropping1D '{self.name}'", "cropping", cropping)

    def compute_output_shape(self, input_shape):
        _check_3d(self, input_shape)
        n, t, c = input_shape
        if t is not None and sum(self.cropping) >= t:
            raise ValueError(f"Cropping1D '{self.name}': cropping {self.cropping} must leave "
                             f"at least one step of the input {shape_str(input_shape)}")
        return (n, None if t is None else t - sum(self.cropping), c)

    def call(self, x, training=False):
        return _as_sequence(backend.current().pad2d_backward(_as_image(x),
                                                             ((0, 0), self.cropping)))

    def backward(self, dy):
        if not self.needs_input_grad:
            return None
        return _as_sequence(backend.current().pad2d_forward(_as_image(dy),
                                                            ((0, 0), self.cropping)))

    def get_config(self):
        config = super().get_config()
        config["cropping"] = list(self.cropping)
        return config


class _Conv1DVariant(Layer):
    """The arguments Conv1DTranspose and SeparableConv1D share, checked as Conv1D does."""

    def _conv_args(self, kernel_size, strides, padding, data_format, dilation_rate,
                   activation, use_bias, bias_initializer, bias_regularizer, bias_constraint):
        self._label = f"{type(self).__name__} '{self.name}'"
        data_format_arg(self._label, data_format)
        self.kernel_size = _one_int(self._label, "kernel_size", kernel_size)
        self.strides = _one_int(self._label, "strides", strides)
        self.dilation_rate = _one_int(self._label, "dilation_rate", dilation_rate)
        self.padding = padding_arg(self._label, padding)
        if self.strides > 1 and self.dilation_rate > 1:
            raise ValueError(f"{self._label}: strides > 1 together with dilation_rate > 1 is "
                             f"not supported (as in Keras)")
        self.activation, self.alpha = activation_config(activation, self)
        self.use_bias = bool(use_bias)
        self.bias_initializer = initializers.get(bias_initializer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.bias_constraint = constraints.get(bias_constraint)

    @property
    def _geometry(self):
        """strides, dilation of the 2-D op (the height axis is 1 x 1)."""
        return (1, self.strides), (1, self.dilation_rate)

    def _add_bias(self):
        self.bias = (self.add_weight("bias", (self.filters,), self.bias_initializer,
                                     self.bias_regularizer, constraint=self.bias_constraint)
                     if self.use_bias else None)

    def _bias(self):
        return self.bias.value if self.use_bias else None

    def _config(self, **extra):
        config = super().get_config()
        config.update(
            filters=self.filters, kernel_size=[self.kernel_size], strides=[self.strides],
            padding=self.padding, data_format="channels_last",
            dilation_rate=[self.dilation_rate], activation=self.activation,
            use_bias=self.use_bias,
            bias_initializer=initializers.serialize(self.bias_initializer),
            bias_regularizer=regularizers.serialize(self.bias_regularizer),
            bias_constraint=constraints.serialize(self.bias_constraint), **extra)
        return config


class Conv1DTranspose(_Conv1DVariant):
    """Keras's Conv1DTranspose, kernel (k, filters, in): Conv2DTranspose's op on the
    (N, 1, T, C) view. Output length as Keras 3: 'valid' (n-1)*s + max(k_eff, s), 'same'
    n*s, or with output_padding p (n-1)*s + k_eff + p ('valid') / (n-1)*s + k_eff % 2 + p
    ('same')."""

    def __init__(self, filters, kernel_size, strides=1, padding="valid", output_padding=None,
                 data_format=None, dilation_rate=1, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, kernel_constraint=None,
                 bias_constraint=None, **kwargs):
        super().__init__(**kwargs)
        self._conv_args(kernel_size, strides, padding, data_format, dilation_rate, activation,
                        use_bias, bias_initializer, bias_regularizer, bias_constraint)
        self.filters = _one_int(self._label, "filters", filters)
        if output_padding is None:
            self.output_padding = None
        else:
            p = output_padding
            if isinstance(p, (tuple, list)) and len(p) == 1:
                p = p[0]
            if isinstance(p, bool) or not isinstance(p, (int, np.integer)):
                raise ValueError(f"{self._label}: output_padding must be None, an int or a "
                                 f"tuple of one, got {output_padding!r}")
            # Checked by the 2-D rule (each in [0, strides)); the height axis pads 0.
            self.output_padding = output_padding_pair(self._label, (0, int(p)),
                                                      self._geometry[0])[1]
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)

    @property
    def _output_padding2d(self):
        return None if self.output_padding is None else (0, self.output_padding)

    def build(self, input_shape):
        _check_3d(self, input_shape)
        if input_shape[-1] is None:
            raise ValueError(f"{self._label}: the channels of the input must be known, got "
                             f"{shape_str(input_shape)}")
        self.kernel = self.add_weight("kernel", (self.kernel_size, self.filters,
                                                 input_shape[-1]),
                                      self.kernel_initializer, self.kernel_regularizer,
                                      constraint=self.kernel_constraint)
        self._add_bias()
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        _check_3d(self, input_shape)
        n, t, _ = input_shape
        if t is not None:
            t = conv_transpose_output_size(t, self.kernel_size, self.strides,
                                           self.dilation_rate, self.padding,
                                           self.output_padding)[2]
        return (n, t, self.filters)

    def call(self, x, training=False):
        x4 = _as_image(x)
        y, z = backend.current().conv2d_transpose_forward(
            x4, _as_kernel2d(self.kernel), self._bias(), self._geometry[0], self.padding,
            self._output_padding2d, self._geometry[1], self.activation, self.alpha)
        if training:
            self._cache = (x4, y, z)
        return _as_sequence(y)

    def backward(self, dy):
        x4, y, z = self._cache
        self._cache = None
        dx4, dk, db = backend.current().conv2d_transpose_backward(
            _as_image(dy), x4, z, y, _as_kernel2d(self.kernel), self._geometry[0],
            self.padding, self._output_padding2d, self._geometry[1], self.activation,
            self.alpha, self.use_bias, self.needs_input_grad)
        _kernel_grad(self.kernel, dk)
        if self.use_bias:
            self.bias.grad = db
        return None if dx4 is None else _as_sequence(dx4)

    def get_config(self):
        return self._config(
            output_padding=None if self.output_padding is None else [self.output_padding],
            kernel_initializer=initializers.serialize(self.kernel_initializer),
            kernel_regularizer=regularizers.serialize(self.kernel_regularizer),
            kernel_constraint=constraints.serialize(self.kernel_constraint))


class SeparableConv1D(_Conv1DVariant):
    """Keras's SeparableConv1D: depthwise_kernel (k, in, depth_multiplier) without bias or
    activation, then pointwise_kernel (1, in * depth_multiplier, filters) with the bias and
    the activation -- SeparableConv2D's two ops on the (N, 1, T, C) view."""

    def __init__(self, filters, kernel_size, strides=1, padding="valid", data_format=None,
                 dilation_rate=1, depth_multiplier=1, activation=None, use_bias=True,
                 depthwise_initializer="glorot_uniform", pointwise_initializer="glorot_uniform",
                 bias_initializer="zeros", depthwise_regularizer=None,
                 pointwise_regularizer=None, bias_regularizer=None, depthwise_constraint=None,
                 pointwise_constraint=None, bias_constraint=None, **kwargs):
        super().__init__(**kwargs)
        self._conv_args(kernel_size, strides, padding, data_format, dilation_rate, activation,
                        use_bias, bias_initializer, bias_regularizer, bias_constraint)
        self.filters = _one_int(self._label, "filters", filters)
        self.depth_multiplier = _one_int(self._label, "depth_multiplier", depth_multiplier)
        self.depthwise_initializer = initializers.get(depthwise_initializer)
        self.pointwise_initializer = initializers.get(pointwise_initializer)
        self.depthwise_regularizer = regularizers.get(depthwise_regularizer)
        self.pointwise_regularizer = regularizers.get(pointwise_regularizer)
        self.depthwise_constraint = constraints.get(depthwise_constraint)
        self.pointwise_constraint = constraints.get(pointwise_constraint)

    def build(self, input_shape):
        _check_3d(self, input_shape)
        c = input_shape[-1]
        if c is None:
            raise ValueError(f"{self._label}: the channels of the input must be known, got "
                             f"{shape_str(input_shape)}")
        self.depthwise_kernel = self.add_weight(
            "depthwise_kernel", (self.kernel_size, c, self.depth_multiplier),
            self.depthwise_initializer, self.depthwise_regularizer,
            constraint=self.depthwise_constraint)
        self.pointwise_kernel = self.add_weight(
            "pointwise_kernel", (1, c * self.depth_multiplier, self.filters),
            self.pointwise_initializer, self.pointwise_regularizer,
            constraint=self.pointwise_constraint)
        self._add_bias()
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        _check_3d(self, input_shape)
        n, t, _ = input_shape
        if t is not None:
            t = conv_output_size(t, self.kernel_size, self.strides, self.dilation_rate,
                                 self.padding)[1]
            if t <= 0:
                raise ValueError(f"{self._label}: kernel_size {self.kernel_size} with "
                                 f"dilation {self.dilation_rate} is larger than the input "
                                 f"{shape_str(input_shape)} under padding='valid'")
        return (n, t, self.filters)

    def call(self, x, training=False):
        b = backend.current()
        x4 = _as_image(x)
        strides, dilation = self._geometry
        t, _ = b.depthwise_conv2d_forward(x4, _as_kernel2d(self.depthwise_kernel), None,
                                          strides, self.padding, dilation, "linear", 0.0)
        y, z = b.conv2d_forward(t, _as_kernel2d(self.pointwise_kernel), self._bias(), (1, 1),
                                "valid", (1, 1), self.activation, self.alpha)
        if training:
            self._cache = (x4, t, y, z)
        return _as_sequence(y)

    def backward(self, dy):
        b = backend.current()
        x4, t, y, z = self._cache
        self._cache = None
        strides, dilation = self._geometry
        dt, dpk, db = b.conv2d_backward(_as_image(dy), t, z, y,
                                        _as_kernel2d(self.pointwise_kernel), (1, 1), "valid",
                                        (1, 1), self.activation, self.alpha, self.use_bias,
                                        True)
        _kernel_grad(self.pointwise_kernel, dpk)
        if self.use_bias:
            self.bias.grad = db
        kernel4 = _as_kernel2d(self.depthwise_kernel)
        _kernel_grad(self.depthwise_kernel, b.depthwise_conv2d_backward_weight(
            x4, dt, tuple(kernel4.shape), strides, self.padding, dilation))
        if not self.needs_input_grad:
            return None
        return _as_sequence(b.depthwise_conv2d_backward_input(dt, kernel4, tuple(x4.shape),
                                                              strides, self.padding,
                                                              dilation))

    def get_config(self):
        return self._config(
            depth_multiplier=self.depth_multiplier,
            depthwise_initializer=initializers.serialize(self.depthwise_initializer),
            pointwise_initializer=initializers.serialize(self.pointwise_initializer),
            depthwise_regularizer=regularizers.serialize(self.depthwise_regularizer),
            pointwise_regularizer=regularizers.serialize(self.pointwise_regularizer),
            depthwise_constraint=constraints.serialize(self.depthwise_constraint),
            pointwise_constraint=constraints.serialize(self.pointwise_constraint))


# -- Keras 3's DepthwiseConv1D: DepthwiseConv2D's ops on the (N, 1, T, C) view ---------------

class DepthwiseConv1D(Layer):
    """Keras's DepthwiseConv1D: each input channel convolved with its own depth_multiplier
    filters, kernel (k, in, depth_multiplier), output channel c*depth_multiplier + m; the
    depthwise_conv2d ops on the (N, 1, T, C) view with the 1 x k kernel. Keras 3 refuses
    'causal' padding here (unlike Conv1D), and so does pynn."""

    def __init__(self, kernel_size, strides=1, padding="valid", depth_multiplier=1,
                 data_format=None, dilation_rate=1, activation=None, use_bias=True,
                 depthwise_initializer="glorot_uniform", bias_initializer="zeros",
                 depthwise_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 depthwise_constraint=None, bias_constraint=None, **kwargs):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self._label = f"DepthwiseConv1D '{self.name}'"
        data_format_arg(self._label, data_format)
        self.kernel_size = _one_int(self._label, "kernel_size", kernel_size)
        self.strides = _one_int(self._label, "strides", strides)
        self.dilation_rate = _one_int(self._label, "dilation_rate", dilation_rate)
        self.depth_multiplier = _one_int(self._label, "depth_multiplier", depth_multiplier)
        self.padding = padding_arg(self._label, padding)
        self.activation, self.alpha = activation_config(activation, self)
        self.use_bias = bool(use_bias)
        self._weight_args("depthwise", depthwise_initializer, depthwise_regularizer,
                          depthwise_constraint)
        self._weight_args("bias", bias_initializer, bias_regularizer, bias_constraint)

    @property
    def _geometry(self):
        """strides, dilation of the 2-D op (the height axis is 1 x 1)."""
        return (1, self.strides), (1, self.dilation_rate)

    def build(self, input_shape):
        _check_3d(self, input_shape)
        c = input_shape[-1]
        if c is None:
            raise ValueError(f"{self._label}: the channels of the input must be known, got "
                             f"{shape_str(input_shape)}")
        # Refused before the kernel is allocated: the op indexes output channels with a C int.
        if c * self.depth_multiplier > C_INT_MAX:
            raise ValueError(f"{self._label}: input channels x depth_multiplier must be at most "
                             f"{C_INT_MAX} (a C int), got {c} x {self.depth_multiplier} = "
                             f"{c * self.depth_multiplier}")
        self.kernel = self.add_weight("kernel", (self.kernel_size, c, self.depth_multiplier),
                                      self.depthwise_initializer, self.depthwise_regularizer,
                                      constraint=self.depthwise_constraint)
        self.bias = (self.add_weight("bias", (c * self.depth_multiplier,),
                                     self.bias_initializer, self.bias_regularizer,
                                     constraint=self.bias_constraint)
                     if self.use_bias else None)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        _check_3d(self, input_shape)
        n, t, c = input_shape
        if t is not None:
            t = conv_output_size(t, self.kernel_size, self.strides, self.dilation_rate,
                                 self.padding)[1]
            if t <= 0:
                raise ValueError(f"{self._label}: kernel_size {self.kernel_size} with "
                                 f"dilation {self.dilation_rate} is larger than the input "
                                 f"{shape_str(input_shape)} under padding='valid'")
        return (n, t, None if c is None else c * self.depth_multiplier)

    def call(self, x, training=False):
        x4 = _as_image(x)
        strides, dilation = self._geometry
        y, z = backend.current().depthwise_conv2d_forward(
            x4, _as_kernel2d(self.kernel), self.bias.value if self.use_bias else None,
            strides, self.padding, dilation, self.activation, self.alpha)
        if training:
            self._cache = (x4, y, z)
        return _as_sequence(y)

    def backward(self, dy):
        b = backend.current()
        x4, y, z = self._cache
        self._cache = None
        strides, dilation = self._geometry
        dz = bias_activation_backward(self, _as_image(dy), z, y)
        kernel4 = _as_kernel2d(self.kernel)
        _kernel_grad(self.kernel, b.depthwise_conv2d_backward_weight(
            x4, dz, tuple(kernel4.shape), strides, self.padding, dilation))
        if not self.needs_input_grad:
            return None
        return _as_sequence(b.depthwise_conv2d_backward_input(dz, kernel4, tuple(x4.shape),
                                                              strides, self.padding,
                                                              dilation))

    def get_config(self):
        config = super().get_config()
        config.update(
            kernel_size=[self.kernel_size], strides=[self.strides], padding=self.padding,
            depth_multiplier=self.depth_multiplier, data_format="channels_last",
            dilation_rate=[self.dilation_rate], activation=self.activation,
            use_bias=self.use_bias)
        return config
