"""Keras 3's noise layers: SpatialDropout1D/2D/3D, GaussianNoise, GaussianDropout.

Like Dropout, each draws from the counter-based generator of the ``dropout`` ops keyed by
``seed``, advancing ``offset`` by the number of draws after each training call, so a run is
reproducible, the same on every backend, and resumable (runtime_state). Outside training each
is the identity.
"""

import math

from pynn import backend, utils
from pynn.layers.base import Layer, shape_str


def drop_rate(layer, rate):
    """A drop rate in [0, 1), checked as Keras checks Dropout's."""
    try:
        valid = not isinstance(rate, bool) and 0.0 <= float(rate) < 1.0
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(f"{type(layer).__name__} '{layer.name}': rate must be a number in "
                         f"[0, 1), got {rate!r}")
    return float(rate)


class SeededLayer(Layer):
    """The seed and stream position Dropout and every noise layer keep."""

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = int(seed) if seed is not None else utils.new_seed()
        self._offset = 0

    def runtime_state(self):
        return {"offset": self._offset}

    def set_runtime_state(self, state):
        offset = state.get("offset", 0)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError(f"{type(self).__name__} '{self.name}': offset must be a "
                             f"non-negative int, got {offset!r}")
        self._offset = offset

    def get_config(self):
        config = super().get_config()
        config["seed"] = self.seed
        return config


class _SpatialDropout(SeededLayer):
    """Drops whole channels: one keep/drop draw per (sample, channel) of (N, ..., C) (the
    steps of a sequence, the pixels of an image or a volume share it), survivors scaled by
    1/(1-rate). The subclasses fix the rank, as Keras's do."""

    supports_masking = True  # the input's mask passes on, as in Keras 3
    _axes = ""   # the input's axes between batch and channels, for messages

    def __init__(self, rate, data_format=None, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.rate = drop_rate(self, rate)
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{type(self).__name__} '{self.name}': only data_format="
                             f"'channels_last' is supported, got {data_format!r}")

    def build(self, input_shape):
        if len(input_shape) != len(self._axes.split(", ")) + 2:
            raise ValueError(f"{type(self).__name__} '{self.name}': expected input shape "
                             f"(None, {self._axes}, C), got {shape_str(input_shape)}")
        super().build(input_shape)

    def call(self, x, training=False):
        if not training or self.rate == 0.0:
            return x
        y, mask = backend.current().spatial_dropout_forward(x, self.rate, self.seed,
                                                            self._offset)
        self._offset += x.shape[0] * x.shape[-1]
        self._cache = mask
        return y

    def backward(self, dy):
        if self._cache is None:
            return dy
        mask, self._cache = self._cache, None
        return backend.current().spatial_dropout_backward(dy, mask, self.rate)

    def get_config(self):
        config = super().get_config()
        config["rate"] = self.rate
        return config


class SpatialDropout1D(_SpatialDropout):
    """Keras's SpatialDropout1D: (N, T, C), one draw per (sample, channel) over the steps."""

    _axes = "T"

    def __init__(self, rate, seed=None, **kwargs):   # Keras's takes no data_format
        super().__init__(rate, seed=seed, **kwargs)


class SpatialDropout2D(_SpatialDropout):
    _axes = "H, W"


class SpatialDropout3D(_SpatialDropout):
    _axes = "D, H, W"


class GaussianNoise(SeededLayer):
    """y = x + N(0, stddev) in training (additive: the gradient passes unchanged)."""

    supports_masking = True  # the input's mask passes on, as in Keras 3

    def __init__(self, stddev, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        try:
            valid = not isinstance(stddev, bool) and 0.0 <= float(stddev) < math.inf
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise ValueError(f"GaussianNoise '{self.name}': stddev must be a finite number "
                             f">= 0, got {stddev!r}")
        self.stddev = float(stddev)

    def call(self, x, training=False):
        if not training or self.stddev == 0.0:
            return x
        y = backend.current().gaussian_noise_forward(x, self.stddev, self.seed, self._offset)
        self._offset += math.prod(x.shape)
        return y

    def backward(self, dy):
        return dy

    def get_config(self):
        config = super().get_config()
        config["stddev"] = self.stddev
        return config


class GaussianDropout(SeededLayer):
    """y = x * N(1, sqrt(rate / (1 - rate))) in training."""

    supports_masking = True  # the input's mask passes on, as in Keras 3

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.rate = drop_rate(self, rate)

    def call(self, x, training=False):
        if not training or self.rate == 0.0:
            return x
        y, noise = backend.current().gaussian_dropout_forward(x, self.rate, self.seed,
                                                              self._offset)
        self._offset += math.prod(x.shape)
        self._cache = noise
        return y

    def backward(self, dy):
        if self._cache is None:
            return dy
        noise, self._cache = self._cache, None
        return backend.current().gaussian_dropout_backward(dy, noise)

    def get_config(self):
        config = super().get_config()
        config["rate"] = self.rate
        return config


# -- Keras 3's AlphaDropout -------------------------------------------------------------------

class AlphaDropout(SeededLayer):
    """Keras's AlphaDropout: dropped elements take SELU's negative saturation alpha_p =
    -alpha*scale, then y = a*x' + b with a, b chosen so that standard-normal inputs keep
    mean 0 and variance 1 (the self-normalizing property). noise_shape (Keras's: one entry
    per axis, None taking the input's size, 1 sharing a draw along that axis) shapes the
    mask. The identity outside training, and with rate 0."""

    supports_masking = True  # the input's mask passes on, as in Keras 3

    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.rate = drop_rate(self, rate)
        if noise_shape is not None:
            try:
                noise_shape = tuple(noise_shape)
                valid = all(d is None or (isinstance(d, int) and not isinstance(d, bool)
                                          and d >= 1) for d in noise_shape)
            except TypeError:
                valid = False
            if not valid:
                raise ValueError(f"AlphaDropout '{self.name}': noise_shape must be None or a "
                                 f"tuple of positive ints or None, got {noise_shape!r}")
        self.noise_shape = noise_shape

    def build(self, input_shape):
        if self.noise_shape is not None and len(self.noise_shape) != len(input_shape):
            raise ValueError(f"AlphaDropout '{self.name}': noise_shape {self.noise_shape} "
                             f"needs one entry per axis of the input "
                             f"{shape_str(input_shape)}")
        super().build(input_shape)

    def call(self, x, training=False):
        if not training or self.rate == 0.0:
            return x
        y, mask = backend.current().alpha_dropout_forward(x, self.rate, self.seed,
                                                          self._offset, self.noise_shape)
        self._offset += math.prod(mask.shape)
        self._cache = mask
        return y

    def backward(self, dy):
        if self._cache is None:
            return dy
        mask, self._cache = self._cache, None
        return backend.current().alpha_dropout_backward(dy, mask, self.rate)

    def get_config(self):
        config = super().get_config()
        config.update(rate=self.rate, noise_shape=None if self.noise_shape is None else
                      list(self.noise_shape))
        return config
