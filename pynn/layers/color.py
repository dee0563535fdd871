"""Keras 3's colour augmentation layers: AutoContrast, Equalization, Solarization,
RandomInvert, RandomPosterization, RandomGrayscale, RandomHue, RandomSaturation,
RandomColorDegeneration, RandomSharpness and RandomColorJitter.

Each call is Keras's split: ``get_random_transformation(images)`` draws the per-image
parameters in NumPy from (seed, call count) (Keras's distributions, including their quirks),
and ``transform_images(images, transformation)`` applies Keras's transform to the batch in
one ``color_transform_forward`` pass (native/color.pyx, opencl/color.cl), so the same
transformation gives Keras's numbers and a device model augments on the device. As in Keras,
only AutoContrast acts outside training; the others pass their input through. None offers
an input gradient (they sit at a model's input, as RandomContrast does; posterize, equalize
and solarize are step functions): training through one raises.
"""

import numbers

import numpy as np

from pynn import backend
from pynn.backend.operands.color import RGB
from pynn.backend.operands.color import MAX_BINS  # fuzz: Equalization's bins bound
from pynn.layers import preprocessing as pp
from pynn.layers.base import shape_str
from pynn.layers.preprocessing import _data_format, _factor, _name, _value_range

# Keras's backend.epsilon(), in RandomSaturation's factor / (1 - factor + eps).
EPSILON = 1e-7


def _keras_factor(layer, what, factor, bounds):
    """Keras's _set_factor: a number must itself lie in ``bounds`` and gives
    (max(-f, low), f); a pair is sorted (and must lie in ``bounds``)."""
    if isinstance(factor, numbers.Real) and not isinstance(factor, bool) \
            and not bounds[0] <= factor <= bounds[1]:
        raise ValueError(f"{_name(layer)}: {what} must lie in [{bounds[0]}, {bounds[1]}], "
                         f"got {factor!r}")
    return _factor(layer, what, factor, bounds)


def _column(values, n):
    return np.asarray(values, np.float64).reshape(n)


class _ColorLayer(pp.KeepsBoxes, pp._RandomLayer):
    """The call split of Keras's BaseImagePreprocessingLayer; subclasses give
    ``get_random_transformation`` and ``params`` (the op's (N, 2) rows)."""

    TRANSFORM = None
    ACTIVE_AT_INFERENCE = False

    def __init__(self, value_range=(0, 255), seed=None, data_format=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        _data_format(self, data_format)
        self.value_range = _value_range(self, value_range)

    def build(self, input_shape):
        super().build(input_shape)
        channels = input_shape[-1]
        if self.TRANSFORM in RGB and channels is not None \
                and not (channels == 3 or (self.TRANSFORM == "grayscale" and channels == 1)):
            need = "3 (RGB) or 1" if self.TRANSFORM == "grayscale" else "3 (RGB)"
            raise ValueError(f"{_name(self)}: expected images with {need} channels, got "
                             f"input shape {shape_str(input_shape)}")

    def call(self, x, training=False):
        if not (training or self.ACTIVE_AT_INFERENCE):
            return x
        return self.transform_images(x, self.get_random_transformation(x))

    def get_random_transformation(self, images, training=True, seed=None):
        """Keras's per-image parameters for this batch (a dict of NumPy arrays), drawn from
        ``seed`` when given, else from the layer's (seed, call count) stream."""
        rng = np.random.default_rng(seed) if seed is not None else self._rng()
        return self.draw(rng, int(images.shape[0]))

    def draw(self, rng, n):
        return None

    def transform_images(self, images, transformation, training=True):
        """Keras's transform_images: the batch with ``transformation`` applied (training
        False: unchanged, except AutoContrast, which always applies)."""
        if not (training or self.ACTIVE_AT_INFERENCE):
            return images
        b = backend.current()
        n = int(images.shape[0])
        params = self.params(transformation, n)
        if params is not None:
            params = b.asarray(np.ascontiguousarray(params, np.float64), images.dtype)
        try:
            return b.color_transform_forward(images, self.TRANSFORM, params,
                                             self.value_range, getattr(self, "bins", 256))
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"{_name(self)}: {exc}") from None

    def params(self, transformation, n):
        return None

    def backward(self, dy):
        self._cache = None
        if self.needs_input_grad:
            raise NotImplementedError(f"{_name(self)}: no input gradient (put it at the "
                                      f"model's input)")

    def get_config(self):
        return {**super().get_config(), "value_range": list(self.value_range),
                "data_format": "channels_last"}


class AutoContrast(_ColorLayer):
    """Each image's channels stretched from their [min, max] to value_range (flat channels
    unchanged); active in training and inference, as Keras's."""

    TRANSFORM = "auto_contrast"
    ACTIVE_AT_INFERENCE = True

    def get_config(self):
        config = super().get_config()
        config.pop("seed")   # Keras's AutoContrast has no seed
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**{k: v for k, v in config.items() if k != "seed"})


class Equalization(_ColorLayer):
    """Histogram equalization per channel on ``bins`` bins, the histogram pooled over the
    batch as Keras's; training only (Keras returns inference inputs unchanged)."""

    TRANSFORM = "equalize"

    def __init__(self, value_range=(0, 255), bins=256, data_format=None, **kwargs):
        super().__init__(value_range=value_range, data_format=data_format, **kwargs)
        # The op's histogram bound (operands/color.py), checked here and not at the first call.
        if isinstance(bins, bool) or not isinstance(bins, numbers.Integral) \
                or not 1 <= bins <= MAX_BINS:
            raise ValueError(f"{_name(self)}: bins must be a positive int at most {MAX_BINS}, "
                             f"got {bins!r}")
        self.bins = int(bins)

    def get_config(self):
        config = super().get_config()
        config.pop("seed")
        return {**config, "bins": self.bins}

    @classmethod
    def from_config(cls, config):
        return cls(**{k: v for k, v in config.items() if k != "seed"})


class Solarization(_ColorLayer):
    """Keras's solarization: on the 0..255 scale, x + addition clipped, then 255 - v where
    v >= threshold; addition uniform(a0, a1 * 255) and threshold uniform(t0, t1 * 255)
    (Keras scales only the upper bounds)."""

    TRANSFORM = "solarize"

    def __init__(self, addition_factor=0.0, threshold_factor=0.0, value_range=(0, 255),
                 seed=None, **kwargs):
        super().__init__(value_range=value_range, seed=seed, **kwargs)
        self.addition_factor = self._unit_factor("addition_factor", addition_factor)
        self.threshold_factor = self._unit_factor("threshold_factor", threshold_factor)

    def _unit_factor(self, what, factor):
        if isinstance(factor, numbers.Real) and not isinstance(factor, bool):
            factor = (0.0, factor)
        lower, upper = _factor(self, what, factor, bounds=(0.0, 1.0))
        return lower, upper

    def draw(self, rng, n):
        a, t = self.addition_factor, self.threshold_factor
        return {"additions": rng.uniform(a[0], a[1] * 255, (n, 1, 1, 1)),
                "thresholds": rng.uniform(t[0], t[1] * 255, (n, 1, 1, 1))}

    def params(self, t, n):
        return np.stack([_column(t["additions"], n), _column(t["thresholds"], n)], axis=1)

    def get_config(self):
        return {**super().get_config(), "addition_factor": list(self.addition_factor),
                "threshold_factor": list(self.threshold_factor)}


class RandomInvert(_ColorLayer):
    """value_range[1] - x for each image whose uniform(0, 1) falls below its probability
    uniform(factor)."""

    TRANSFORM = "invert"

    def __init__(self, factor=1.0, value_range=(0, 255), seed=None, data_format=None,
                 **kwargs):
        super().__init__(value_range=value_range, seed=seed, data_format=data_format,
                         **kwargs)
        self.factor = _keras_factor(self, "factor", factor, (0.0, 1.0))
        self.top = float(value_range[1])   # Keras subtracts from value_range[1] unsorted

    def draw(self, rng, n):
        probability = rng.uniform(*self.factor, size=n)
        return {"apply_inversion": rng.uniform(0.0, 1.0, n) < probability}

    def params(self, t, n):
        return np.stack([_column(t["apply_inversion"], n), np.full(n, self.top)], axis=1)

    def get_config(self):
        return {**super().get_config(), "factor": list(self.factor)}


class RandomPosterization(_ColorLayer):
    """Each image keeps ``bits`` of its 8 (on the 0..255 scale): randint(factor[0],
    factor[1]) per image, the upper bound excluded as Keras's randint, so factor=4 keeps
    1 to 3 bits; equal bounds keep exactly that many."""

    TRANSFORM = "posterize"

    def __init__(self, factor, value_range=(0, 255), data_format=None, seed=None, **kwargs):
        super().__init__(value_range=value_range, seed=seed, data_format=data_format,
                         **kwargs)
        low, high = _keras_factor(self, "factor", factor, (1.0, 8.0))
        if low != int(low) or high != int(high):
            raise ValueError(f"{_name(self)}: factor must be whole numbers of bits, got "
                             f"{factor!r}")
        # ints, as Keras keeps them: its randint refuses float bounds.
        self.factor = int(low), int(high)

    def draw(self, rng, n):
        low, high = self.factor
        bits = rng.integers(low, high, n) if low != high else np.full(n, low)
        return {"shift_factor": (8 - bits).astype(np.uint8)}

    def params(self, t, n):
        return np.stack([_column(t["shift_factor"], n), np.zeros(n)], axis=1)

    def get_config(self):
        return {**super().get_config(), "factor": list(self.factor)}


class RandomGrayscale(_ColorLayer):
    """Each image replaced by its grayscale (0.2989 R + 0.587 G + 0.114 B on every channel)
    with probability ``factor``. The transformation is Keras's (N, 1, 1, 1) bool array."""

    TRANSFORM = "grayscale"

    def __init__(self, factor=0.5, data_format=None, seed=None, **kwargs):
        super().__init__(seed=seed, data_format=data_format, **kwargs)
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real) \
                or not 0 <= factor <= 1:
            raise ValueError(f"{_name(self)}: factor must be a number in [0, 1], got "
                             f"{factor!r}")
        self.factor = float(factor)

    def draw(self, rng, n):
        return (rng.uniform(0.0, 1.0, n) < self.factor).reshape(n, 1, 1, 1)

    def params(self, t, n):
        return np.stack([_column(t, n), np.zeros(n)], axis=1)

    def get_config(self):
        config = super().get_config()
        config.pop("value_range")
        return {**config, "factor": self.factor}


class _FactorColor(_ColorLayer):
    """A layer of one factor (Keras's _set_factor within BOUNDS) drawn uniform per image."""

    BOUNDS = (-1.0, 1.0)

    def __init__(self, factor, value_range=(0, 255), data_format=None, seed=None, **kwargs):
        super().__init__(value_range=value_range, seed=seed, data_format=data_format,
                         **kwargs)
        self.factor = _keras_factor(self, "factor", factor, self.BOUNDS)

    def params(self, t, n):
        return np.stack([_column(t["factor"], n), np.zeros(n)], axis=1)

    def get_config(self):
        return {**super().get_config(), "factor": list(self.factor)}


class RandomHue(_FactorColor):
    """The hue (on value_range scaled to 0..1) shifted by +-uniform(factor) / 2, the sign a
    coin flip per image, wrapped into [0, 1]; the result clipped."""

    TRANSFORM = "hue"
    BOUNDS = (0.0, 1.0)

    def draw(self, rng, n):
        sign = np.where(rng.uniform(0.0, 1.0, n) > 0.5, -1.0, 1.0)
        return {"factor": sign * rng.uniform(*self.factor, size=n) * 0.5}


class RandomSaturation(_FactorColor):
    """The saturation times f / (1 - f + 1e-7), f uniform(factor) per image (Keras's
    default bounds [-1, 1]: a number f draws from [-f, f]), clipped to value_range, on the
    raw values (Keras rescales nothing here)."""

    TRANSFORM = "saturation"

    def draw(self, rng, n):
        f = rng.uniform(*self.factor, size=n)
        return {"factor": f / (1.0 - f + EPSILON)}


class RandomColorDegeneration(_FactorColor):
    """x + f * (gray - x), f uniform(factor) per image (a number f draws from [-f, f]),
    clipped to value_range."""

    TRANSFORM = "degenerate"

    def draw(self, rng, n):
        return {"factor": rng.uniform(*self.factor, size=(n, 1, 1, 1))}


class RandomSharpness(_FactorColor):
    """x + (1 - 2 f) * (smooth - x), smooth Keras's 3x3 kernel (1/13 around, 5/13 centre,
    zero padding), f uniform(factor) in [0, 1] per image, clipped to value_range."""

    TRANSFORM = "sharpen"
    BOUNDS = (0.0, 1.0)

    def draw(self, rng, n):
        return {"factor": rng.uniform(*self.factor, size=n)}


class RandomColorJitter(_ColorLayer):
    """Keras's composition, in its order: RandomBrightness, RandomContrast, RandomSaturation
    and RandomHue, each present when its factor is given, all on value_range."""

    def __init__(self, value_range=(0, 255), brightness_factor=None, contrast_factor=None,
                 saturation_factor=None, hue_factor=None, seed=None, data_format=None,
                 **kwargs):
        super().__init__(value_range=value_range, seed=seed, data_format=data_format,
                         **kwargs)
        self.brightness_factor, self.contrast_factor = brightness_factor, contrast_factor
        self.saturation_factor, self.hue_factor = saturation_factor, hue_factor
        vr, seed = self.value_range, self.seed
        self.parts = [
            (None if brightness_factor is None
             else pp.RandomBrightness(brightness_factor, vr, seed=seed, name=f"{self.name}_b")),
            (None if contrast_factor is None
             else pp.RandomContrast(contrast_factor, vr, seed=seed, name=f"{self.name}_c")),
            (None if saturation_factor is None
             else RandomSaturation(saturation_factor, vr, seed=seed, name=f"{self.name}_s")),
            (None if hue_factor is None
             else RandomHue(hue_factor, vr, seed=seed, name=f"{self.name}_h")),
        ]

    def draw(self, rng, n):
        """{'brightness': delta (N,), 'contrast': factor (N,), 'saturation': {...},
        'hue': {...}} for the parts present, drawn in that order from one stream."""
        t = {}
        brightness, contrast, saturation, hue = self.parts
        if brightness is not None:
            t["brightness"] = brightness.draw(rng, n)
        if contrast is not None:
            t["contrast"] = contrast.draw(rng, n)
        if saturation is not None:
            t["saturation"] = saturation.draw(rng, n)
        if hue is not None:
            t["hue"] = hue.draw(rng, n)
        return t

    def transform_images(self, images, transformation, training=True):
        if not training:
            return images
        b = backend.current()
        brightness, contrast, saturation, hue = self.parts
        x = images
        if "brightness" in transformation:
            x = b.image_adjust_forward(x, None, b.asarray(transformation["brightness"],
                                                          x.dtype), self.value_range)
        if "contrast" in transformation:
            x = b.image_adjust_forward(x, b.asarray(transformation["contrast"], x.dtype), None,
                                       self.value_range)
        if "saturation" in transformation:
            x = saturation.transform_images(x, transformation["saturation"])
        if "hue" in transformation:
            x = hue.transform_images(x, transformation["hue"])
        return x

    def get_config(self):
        return {**super().get_config(), "brightness_factor": self.brightness_factor,
                "contrast_factor": self.contrast_factor,
                "saturation_factor": self.saturation_factor, "hue_factor": self.hue_factor}


# -- clahe: Keras 3's ContrastLimitedAdaptiveHistogramEqualization --------------------------
class ContrastLimitedAdaptiveHistogramEqualization(_ColorLayer):
    """Keras 3's CLAHE: each image's channels equalized per tile of a tile_grid_size grid
    (histograms of the 256 levels over value_range, clipped at clip_limit times the mean
    count, the excess spread evenly), every pixel blended bilinearly from its four nearest
    tiles; one ``clahe_forward`` pass on the model's backend. Active in training and
    inference, as Keras's. Keras's numbers are its torch backend's: the image is padded to
    whole tiles by repeating its edge (torch's 'replicate' for Keras's 'symmetric') and the
    clip limit is truncated to an integer (torch counts in int64)."""

    ACTIVE_AT_INFERENCE = True

    def __init__(self, value_range=(0, 255), clip_limit=4.0, tile_grid_size=(8, 8),
                 data_format=None, **kwargs):
        super().__init__(value_range=value_range, data_format=data_format, **kwargs)
        if not self.value_range[0] < self.value_range[1]:
            raise ValueError(f"{_name(self)}: value_range must have low < high, got "
                             f"{value_range!r}")
        if isinstance(clip_limit, bool) or not isinstance(clip_limit, numbers.Real) \
                or not np.isfinite(clip_limit):
            raise ValueError(f"{_name(self)}: clip_limit must be a finite number, got "
                             f"{clip_limit!r}")
        if not (isinstance(tile_grid_size, (tuple, list)) and len(tile_grid_size) == 2 and all(
                isinstance(g, numbers.Integral) and not isinstance(g, bool) and g >= 1
                for g in tile_grid_size)):
            raise ValueError(f"{_name(self)}: tile_grid_size must be two positive ints "
                             f"(height, width), got {tile_grid_size!r}")
        self.clip_limit = float(clip_limit)
        self.tile_grid_size = tuple(int(g) for g in tile_grid_size)

    def transform_images(self, images, transformation=None, training=True):
        try:
            return backend.current().clahe_forward(images, self.value_range, self.clip_limit,
                                                   self.tile_grid_size)
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"{_name(self)}: {exc}") from None

    def get_config(self):
        config = super().get_config()
        config.pop("seed")   # Keras's CLAHE has no seed
        config.update(clip_limit=self.clip_limit, tile_grid_size=list(self.tile_grid_size))
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**{k: v for k, v in config.items() if k != "seed"})
