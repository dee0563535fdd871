"""Spatial layers of NHWC images: UpSampling2D, ZeroPadding2D, Cropping2D (Keras 3's
reshaping layers), on the ``spatial`` ops.

ZeroPadding2D and Cropping2D are each other's backward: both run the pad2d_forward /
pad2d_backward pair (a zero pad and the crop that undoes it), in opposite directions.
"""

import operator

from pynn import backend
from pynn.backend.operands.spatial import INTERPOLATIONS
from pynn.layers.base import C_INT_MAX, Layer, data_format_arg, pair, shape_str


def padding_pairs(label, name, value):
    """Keras's forms of a 2-D padding or cropping: an int, (symmetric_h, symmetric_w), or
    ((top, bottom), (left, right)); returns the last form, ints in [0, C_INT_MAX]."""
    expected = ("an int, a tuple of 2 ints (symmetric_height, symmetric_width) or a tuple "
                "of 2 tuples of 2 ints ((top, bottom), (left, right))")
    try:
        if isinstance(value, bool):
            raise TypeError
        if not hasattr(value, "__len__"):
            v = operator.index(value)
            pairs = ((v, v), (v, v))
        else:
            if len(value) != 2:
                raise ValueError
            pairs = tuple((operator.index(side),) * 2 if not hasattr(side, "__len__")
                          else tuple(operator.index(s) for s in side) for side in value)
            if any(len(side) != 2 for side in pairs):
                raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"{label}: {name} must be {expected}, got {value!r}") from None
    flat = [v for side in pairs for v in side]
    if min(flat) < 0 or max(flat) > C_INT_MAX:
        raise ValueError(f"{label}: {name} must be non-negative ints (at most {C_INT_MAX}), "
                         f"got {value!r}")
    return pairs


def _image_shape(layer, input_shape):
    if len(input_shape) != 4:
        raise ValueError(f"{type(layer).__name__} '{layer.name}': expected input shape "
                         f"(None, H, W, C), got {shape_str(input_shape)}")
    return input_shape


class UpSampling2D(Layer):
    """Repeats rows and columns ('nearest') or resizes bilinearly by integer factors."""

    def __init__(self, size=(2, 2), data_format=None, interpolation="nearest", **kwargs):
        super().__init__(**kwargs)
        label = f"UpSampling2D '{self.name}'"
        data_format_arg(label, data_format)
        self.size = pair("size", label, size)
        self.interpolation = str(interpolation).lower()
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"{label}: interpolation must be one of {INTERPOLATIONS}, got "
                             f"{interpolation!r}")

    def compute_output_shape(self, input_shape):
        n, h, w, c = _image_shape(self, input_shape)
        return (n, None if h is None else h * self.size[0],
                None if w is None else w * self.size[1], c)

    def call(self, x, training=False):
        if training:
            self._cache = tuple(x.shape)
        return backend.current().upsample2d_forward(x, self.size, self.interpolation)

    def backward(self, dy):
        shape, self._cache = self._cache, None
        if not self.needs_input_grad:
            return None
        return backend.current().upsample2d_backward(dy, shape, self.size, self.interpolation)

    def get_config(self):
        config = super().get_config()
        config.update(size=list(self.size), data_format="channels_last",
                      interpolation=self.interpolation)
        return config


class ZeroPadding2D(Layer):
    """Adds rows and columns of zeros around each image."""

    def __init__(self, padding=(1, 1), data_format=None, **kwargs):
        super().__init__(**kwargs)
        label = f"ZeroPadding2D '{self.name}'"
        data_format_arg(label, data_format)
        self.padding = padding_pairs(label, "padding", padding)

    def compute_output_shape(self, input_shape):
        n, h, w, c = _image_shape(self, input_shape)
        (t, b), (l, r) = self.padding
        return (n, None if h is None else h + t + b, None if w is None else w + l + r, c)

    def call(self, x, training=False):
        return backend.current().pad2d_forward(x, self.padding)

    def backward(self, dy):
        if not self.needs_input_grad:
            return None
        return backend.current().pad2d_backward(dy, self.padding)

    def get_config(self):
        config = super().get_config()
        config.update(padding=[list(side) for side in self.padding],
                      data_format="channels_last")
        return config


class Cropping2D(Layer):
    """Removes rows and columns at the edges of each image."""

    def __init__(self, cropping=((0, 0), (0, 0)), data_format=None, **kwargs):
        super().__init__(**kwargs)
        label = f"Cropping2D '{self.name}'"
        data_format_arg(label, data_format)
        self.cropping = padding_pairs(label, "cropping", cropping)

    def compute_output_shape(self, input_shape):
        n, h, w, c = _image_shape(self, input_shape)
        (t, b), (l, r) = self.cropping
        # Keras: every axis keeps at least one pixel.
        if (h is not None and t + b >= h) or (w is not None and l + r >= w):
            raise ValueError(f"Cropping2D '{self.name}': cropping {self.cropping} must leave "
                             f"at least one row and column of the input "
                             f"{shape_str(input_shape)}")
        return (n, None if h is None else h - t - b, None if w is None else w - l - r, c)

    def call(self, x, training=False):
        # The crop is pad2d_forward's backward.
        return backend.current().pad2d_backward(x, self.cropping)

    def backward(self, dy):
        if not self.needs_input_grad:
            return None
        return backend.current().pad2d_forward(dy, self.cropping)

    def get_config(self):
        config = super().get_config()
        config.update(cropping=[list(side) for side in self.cropping],
                      data_format="channels_last")
        return config


# -- 3-D spatial layers (Keras 3's UpSampling3D, ZeroPadding3D, Cropping3D; branch vol):
# ZeroPadding3D and Cropping3D are each other's backward on the pad3d pair, as in 2-D. --
from pynn.layers.pooling import triple, volume_shape  # noqa: E402


def padding_triples(label, name, value):
    """Keras's forms of a 3-D padding or cropping: an int, 3 ints (symmetric per axis), or
    3 pairs ((front, back), (top, bottom), (left, right)) (each entry an int or a pair, as
    Keras's standardize_tuple reads them); returns the last form, ints in [0, C_INT_MAX]."""
    expected = ("an int, a tuple of 3 ints or a tuple of 3 tuples of 2 ints ((front, back), "
                "(top, bottom), (left, right))")
    try:
        if isinstance(value, bool):
            raise TypeError
        if not hasattr(value, "__len__"):
            v = operator.index(value)
            sides = ((v, v),) * 3
        else:
            if len(value) != 3:
                raise ValueError
            sides = tuple((operator.index(side),) * 2 if not hasattr(side, "__len__")
                          else tuple(operator.index(s) for s in side) for side in value)
            if any(len(side) != 2 for side in sides):
                raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"{label}: {name} must be {expected}, got {value!r}") from None
    flat = [v for side in sides for v in side]
    if min(flat) < 0 or max(flat) > C_INT_MAX:
        raise ValueError(f"{label}: {name} must be non-negative ints (at most {C_INT_MAX}), "
                         f"got {value!r}")
    return sides


class UpSampling3D(Layer):
    """Repeats each voxel size[0], size[1], size[2] times along D, H, W (Keras 3 has no
    interpolation argument here: 'nearest' only)."""

    def __init__(self, size=(2, 2, 2), data_format=None, **kwargs):
        super().__init__(**kwargs)
        label = f"UpSampling3D '{self.name}'"
        data_format_arg(label, data_format)
        self.size = triple("size", label, size)

    def compute_output_shape(self, input_shape):
        n, *spatial, c = volume_shape(self, input_shape)
        return (n, *(None if s is None else s * f for s, f in zip(spatial, self.size)), c)

    def call(self, x, training=False):
        if training:
            self._cache = tuple(x.shape)
        return backend.current().upsample3d_forward(x, self.size)

    def backward(self, dy):
        shape, self._cache = self._cache, None
        if not self.needs_input_grad:
            return None
        return backend.current().upsample3d_backward(dy, shape, self.size)

    def get_config(self):
        config = super().get_config()
        config.update(size=list(self.size), data_format="channels_last")
        return config


class ZeroPadding3D(Layer):
    """Adds planes of zeros around each volume."""

    def __init__(self, padding=((1, 1), (1, 1), (1, 1)), data_format=None, **kwargs):
        super().__init__(**kwargs)
        label = f"ZeroPadding3D '{self.name}'"
        data_format_arg(label, data_format)
        self.padding = padding_triples(label, "padding", padding)

    def compute_output_shape(self, input_shape):
        n, *spatial, c = volume_shape(self, input_shape)
        return (n, *(None if s is None else s + a + b
                     for s, (a, b) in zip(spatial, self.padding)), c)

    def call(self, x, training=False):
        return backend.current().pad3d_forward(x, self.padding)

    def backward(self, dy):
        if not self.needs_input_grad:
            return None
        return backend.current().pad3d_backward(dy, self.padding)

    def get_config(self):
        config = super().get_config()
        config.update(padding=[list(side) for side in self.padding],
                      data_format="channels_last")
        return config


class Cropping3D(Layer):
    """Removes planes at the edges of each volume."""

    def __init__(self, cropping=((1, 1), (1, 1), (1, 1)), data_format=None, **kwargs):
        super().__init__(**kwargs)
        label = f"Cropping3D '{self.name}'"
        data_format_arg(label, data_format)
        self.cropping = padding_triples(label, "cropping", cropping)

    def compute_output_shape(self, input_shape):
        n, *spatial, c = volume_shape(self, input_shape)
        # Keras: every axis keeps at least one voxel.
        if any(s is not None and a + b >= s for s, (a, b) in zip(spatial, self.cropping)):
            raise ValueError(f"Cropping3D '{self.name}': cropping {self.cropping} must leave "
                             f"at least one voxel along each axis of the input "
                             f"{shape_str(input_shape)}")
        return (n, *(None if s is None else s - a - b
                     for s, (a, b) in zip(spatial, self.cropping)), c)

    def call(self, x, training=False):
        # The crop is pad3d_forward's backward.
        return backend.current().pad3d_backward(x, self.cropping)

    def backward(self, dy):
        if not self.needs_input_grad:
            return None
        return backend.current().pad3d_forward(dy, self.cropping)

    def get_config(self):
        config = super().get_config()
        config.update(cropping=[list(side) for side in self.cropping],
                      data_format="channels_last")
        return config
