"""Max/average pooling and their global variants, channels_last."""

from pynn import backend
from pynn.backend.operands.common import conv_output_size
from pynn.layers.base import Layer, data_format_arg, padding_arg, pair, shape_str


class _Pooling2D(Layer):
    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", data_format=None,
                 **kwargs):
        super().__init__(**kwargs)
        label = f"{type(self).__name__} '{self.name}'"
        data_format_arg(label, data_format)
        self.pool_size = pair("pool_size", label, pool_size)
        # Keras: strides=None means strides = pool_size.
        self.strides = pair("strides", label, strides if strides is not None else self.pool_size)
        self.padding = padding_arg(label, padding)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"{type(self).__name__} '{self.name}': expected input shape "
                             f"(None, H, W, C), got {shape_str(input_shape)}")
        n, h, w, c = input_shape
        out = []
        for size, k, s in zip((h, w), self.pool_size, self.strides):
            if size is None:
                out.append(None)
                continue
            _, o = conv_output_size(size, k, s, 1, self.padding)
            if o <= 0:
                raise ValueError(f"{type(self).__name__} '{self.name}': pool_size "
                                 f"{self.pool_size} is larger than the input "
                                 f"{shape_str(input_shape)} under padding='valid'")
            out.append(o)
        return (n, out[0], out[1], c)

    def get_config(self):
        config = super().get_config()
        config.update(pool_size=list(self.pool_size), strides=list(self.strides),
                      padding=self.padding)
        return config


class MaxPooling2D(_Pooling2D):
    def call(self, x, training=False):
        y, argmax = backend.current().maxpool2d_forward(x, self.pool_size, self.strides,
                                                        self.padding)
        if training:
            self._cache = (argmax, tuple(x.shape))
        return y

    def backward(self, dy):
        (argmax, shape), self._cache = self._cache, None
        return backend.current().maxpool2d_backward(dy, argmax, shape)


class AveragePooling2D(_Pooling2D):
    def call(self, x, training=False):
        if training:
            self._cache = tuple(x.shape)
        return backend.current().avgpool2d_forward(x, self.pool_size, self.strides, self.padding)

    def backward(self, dy):
        shape, self._cache = self._cache, None
        return backend.current().avgpool2d_backward(dy, shape, self.pool_size, self.strides,
                                                    self.padding)


class _GlobalPooling2D(Layer):
    def __init__(self, data_format=None, keepdims=False, **kwargs):
        super().__init__(**kwargs)
        data_format_arg(f"{type(self).__name__} '{self.name}'", data_format)
        self.keepdims = bool(keepdims)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"{type(self).__name__} '{self.name}': expected input shape "
                             f"(None, H, W, C), got {shape_str(input_shape)}")
        n, _, _, c = input_shape
        return (n, 1, 1, c) if self.keepdims else (n, c)

    def _out(self, y):
        return backend.current().reshape(y, (y.shape[0], 1, 1, y.shape[1])) if self.keepdims else y

    def _dy(self, dy):
        return backend.current().reshape(dy, (dy.shape[0], dy.shape[-1])) if self.keepdims else dy

    def get_config(self):
        config = super().get_config()
        config["keepdims"] = self.keepdims
        return config


class GlobalAveragePooling2D(_GlobalPooling2D):
    def call(self, x, training=False):
        if training:
            self._cache = tuple(x.shape)
        return self._out(backend.current().global_avgpool2d_forward(x))

    def backward(self, dy):
        shape, self._cache = self._cache, None
        return backend.current().global_avgpool2d_backward(self._dy(dy), shape)


class GlobalMaxPooling2D(_GlobalPooling2D):
    def call(self, x, training=False):
        y, argmax = backend.current().global_maxpool2d_forward(x)
        if training:
            self._cache = (argmax, tuple(x.shape))
        return self._out(y)

    def backward(self, dy):
        (argmax, shape), self._cache = self._cache, None
        return backend.current().global_maxpool2d_backward(self._dy(dy), argmax, shape)


class PoolGrad:
    """A MaxPooling2D's backward handed to the Conv2D below it (functional._fuse_conv_pool):
    the pool's output gradient ``dpool``, ``argmax`` and output ``pooled``, and its input's
    shape. ``dense(b)`` is the pool's input gradient itself, for a consumer that needs it."""

    __slots__ = ("pool", "dpool", "argmax", "pooled", "shape")

    def __init__(self, pool, dpool, argmax, pooled, shape):
        self.pool, self.dpool, self.argmax, self.pooled, self.shape = \
            pool, dpool, argmax, pooled, shape

    def dense(self, b):
        return b.maxpool2d_backward(self.dpool, self.argmax, self.shape)


# -- 3-D pooling (Keras 3's MaxPooling3D, AveragePooling3D, GlobalMaxPooling3D,
# GlobalAveragePooling3D; branch vol) --------------------------------------------------------
import operator  # noqa: E402

from pynn.layers.base import C_INT_MAX  # noqa: E402

def triple(name, label, value):
    """Keras's standardize_tuple(value, 3): an int or 3 positive ints (C ints)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        if not hasattr(value, "__len__"):
            value = (operator.index(value),) * 3
        value = tuple(operator.index(v) for v in value)
    except TypeError:
        raise ValueError(f"{label}: {name} must be an int or a tuple of 3 ints, got "
                         f"{value!r}") from None
    if len(value) != 3 or min(value) < 1:
        raise ValueError(f"{label}: {name} must be an int or 3 positive ints, got {value!r}")
    if max(value) > C_INT_MAX:
        raise ValueError(f"{label}: {name} must be at most {C_INT_MAX} (a C int), got "
                         f"{value!r}")
    return value


def volume_shape(layer, input_shape):
    """The (None, D, H, W, C) input of a 3-D layer, or a ValueError naming it."""
    if len(input_shape) != 5:
        raise ValueError(f"{type(layer).__name__} '{layer.name}': expected input shape "
                         f"(None, D, H, W, C), got {shape_str(input_shape)}")
    return input_shape


class _Pooling3D(Layer):
    def __init__(self, pool_size=(2, 2, 2), strides=None, padding="valid", data_format=None,
                 **kwargs):
        super().__init__(**kwargs)
        label = f"{type(self).__name__} '{self.name}'"
        data_format_arg(label, data_format)
        self.pool_size = triple("pool_size", label, pool_size)
        # Keras: strides=None means strides = pool_size.
        self.strides = triple("strides", label, strides if strides is not None
                              else self.pool_size)
        self.padding = padding_arg(label, padding)

    def compute_output_shape(self, input_shape):
        n, *spatial, c = volume_shape(self, input_shape)
        out = []
        for size, k, s in zip(spatial, self.pool_size, self.strides):
            if size is None:
                out.append(None)
                continue
            _, o = conv_output_size(size, k, s, 1, self.padding)
            if o <= 0:
                raise ValueError(f"{type(self).__name__} '{self.name}': pool_size "
                                 f"{self.pool_size} is larger than the input "
                                 f"{shape_str(input_shape)} under padding='valid'")
            out.append(o)
        return (n, *out, c)

    def get_config(self):
        config = super().get_config()
        config.update(pool_size=list(self.pool_size), strides=list(self.strides),
                      padding=self.padding, data_format="channels_last")
        return config


class MaxPooling3D(_Pooling3D):
    def call(self, x, training=False):
        y, argmax = backend.current().maxpool3d_forward(x, self.pool_size, self.strides,
                                                        self.padding)
        if training:
            self._cache = (argmax, tuple(x.shape))
        return y

    def backward(self, dy):
        (argmax, shape), self._cache = self._cache, None
        return backend.current().maxpool3d_backward(dy, argmax, shape)


class AveragePooling3D(_Pooling3D):
    """'same' averages the in-bounds voxels only (TF and JAX Keras; Keras 3.15's torch
    backend replicates the edge where the padding is asymmetric, keras-team/keras#23233)."""

    def call(self, x, training=False):
        if training:
            self._cache = tuple(x.shape)
        return backend.current().avgpool3d_forward(x, self.pool_size, self.strides,
                                                   self.padding)

    def backward(self, dy):
        shape, self._cache = self._cache, None
        return backend.current().avgpool3d_backward(dy, shape, self.pool_size, self.strides,
                                                    self.padding)


class _GlobalPooling3D(Layer):
    """Global pooling of volumes on the 2-D global ops: (N, D, H, W, C) is read as the
    (N, D*H, W, C) plane (a view), whose flat pixel index is the volume's (d*H + h)*W + w."""

    def __init__(self, data_format=None, keepdims=False, **kwargs):
        super().__init__(**kwargs)
        data_format_arg(f"{type(self).__name__} '{self.name}'", data_format)
        self.keepdims = bool(keepdims)

    def compute_output_shape(self, input_shape):
        n, *_, c = volume_shape(self, input_shape)
        return (n, 1, 1, 1, c) if self.keepdims else (n, c)

    @staticmethod
    def _plane(x):
        n, d, h, w, c = x.shape
        return backend.current().reshape(x, (n, d * h, w, c))

    def _out(self, y):
        if self.keepdims:
            return backend.current().reshape(y, (y.shape[0], 1, 1, 1, y.shape[1]))
        return y

    def _dy(self, dy):
        return backend.current().reshape(dy, (dy.shape[0], dy.shape[-1])) if self.keepdims else dy

    def get_config(self):
        config = super().get_config()
        config.update(data_format="channels_last", keepdims=self.keepdims)
        return config


class GlobalAveragePooling3D(_GlobalPooling3D):
    def call(self, x, training=False):
        if training:
            self._cache = tuple(x.shape)
        return self._out(backend.current().global_avgpool2d_forward(self._plane(x)))

    def backward(self, dy):
        shape, self._cache = self._cache, None
        n, d, h, w, c = shape
        b = backend.current()
        return b.reshape(b.global_avgpool2d_backward(self._dy(dy), (n, d * h, w, c)), shape)


class GlobalMaxPooling3D(_GlobalPooling3D):
    def call(self, x, training=False):
        y, argmax = backend.current().global_maxpool2d_forward(self._plane(x))
        if training:
            self._cache = (argmax, tuple(x.shape))
        return self._out(y)

    def backward(self, dy):
        (argmax, shape), self._cache = self._cache, None
        n, d, h, w, c = shape
        b = backend.current()
        return b.reshape(b.global_maxpool2d_backward(self._dy(dy), argmax, (n, d * h, w, c)),
                         shape)
