"""Weight initializers with Keras 3's names, arguments and fan conventions.

Fans: Dense kernel (in, out); conv kernel (kh, kw, in, out) multiplies both fans by kh*kw.
Truncated-normal variants divide the stddev by 0.8796..., the stddev of a unit normal truncated
at two standard deviations, as Keras does.

Random values are drawn in the weight's own dtype and scaled in place: a float32 weight never
passes through a float64 copy (which would take twice its memory, three times at the peak).
float64 draws are the values NumPy's ``uniform``/``normal`` give for the same generator.
"""

import math

import numpy as np

from pynn import utils

TRUNCATED_STDDEV = 0.87962566103423978


def _fans(shape):
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def _rng(seed):
    return np.random.default_rng(seed) if seed is not None else utils.rng()


def _draw_dtype(dtype):
    """The dtype to draw in: NumPy's generators draw float32 and float64 only."""
    dtype = np.dtype(dtype)
    return dtype if dtype in (np.float32, np.float64) else np.dtype(np.float64)


def _normal(rng, shape, mean, stddev, dtype):
    out = rng.standard_normal(shape, dtype=_draw_dtype(dtype))
    out *= stddev
    out += mean
    return out


def _uniform(rng, shape, low, high, dtype):
    out = rng.random(shape, dtype=_draw_dtype(dtype))
    out *= high - low
    out += low
    return out


def _truncated_normal(rng, shape, mean, stddev, dtype):
    draw = _draw_dtype(dtype)
    out = rng.standard_normal(shape, dtype=draw)
    flat = out.reshape(-1)
    # Two boolean masks rather than abs(): no second array of the weight's size.
    beyond = flat > 2
    np.logical_or(beyond, flat < -2, out=beyond)
    bad = np.flatnonzero(beyond)
    del beyond
    while bad.size:  # resamples the few values beyond 2 sigma; shrinks geometrically
        flat[bad] = rng.standard_normal(bad.size, dtype=draw)
        bad = bad[np.abs(flat[bad]) > 2]
    out *= stddev
    out += mean
    return out


class Initializer:
    def __call__(self, shape, dtype="float32"):
        raise NotImplementedError

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class Zeros(Initializer):
    def __call__(self, shape, dtype="float32"):
        return np.zeros(shape, dtype=dtype)


class Ones(Initializer):
    def __call__(self, shape, dtype="float32"):
        return np.ones(shape, dtype=dtype)


class Constant(Initializer):
    def __init__(self, value=0.0):
        self.value = float(value)

    def __call__(self, shape, dtype="float32"):
        return np.full(shape, self.value, dtype=dtype)

    def get_config(self):
        return {"value": self.value}


class RandomNormal(Initializer):
    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        self.mean, self.stddev, self.seed = mean, stddev, seed

    def __call__(self, shape, dtype="float32"):
        return _normal(_rng(self.seed), shape, self.mean, self.stddev, dtype).astype(dtype,
                                                                                   copy=False)

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev, "seed": self.seed}


class RandomUniform(Initializer):
    def __init__(self, minval=-0.05, maxval=0.05, seed=None):
        self.minval, self.maxval, self.seed = minval, maxval, seed

    def __call__(self, shape, dtype="float32"):
        return _uniform(_rng(self.seed), shape, self.minval, self.maxval, dtype).astype(
            dtype, copy=False)

    def get_config(self):
        return {"minval": self.minval, "maxval": self.maxval, "seed": self.seed}


class VarianceScaling(Initializer):
    def __init__(self, scale=1.0, mode="fan_in", distribution="truncated_normal", seed=None):
        if scale <= 0:
            raise ValueError(f"VarianceScaling: scale must be positive, got {scale}")
        if mode not in ("fan_in", "fan_out", "fan_avg"):
            raise ValueError(f"VarianceScaling: unknown mode {mode!r}")
        if distribution not in ("truncated_normal", "untruncated_normal", "uniform"):
            raise ValueError(f"VarianceScaling: unknown distribution {distribution!r}")
        self.scale, self.mode, self.distribution, self.seed = scale, mode, distribution, seed

    def __call__(self, shape, dtype="float32"):
        fan_in, fan_out = _fans(tuple(shape))
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[self.mode]
        scale = self.scale / max(1.0, fan)
        rng = _rng(self.seed)
        if self.distribution == "truncated_normal":
            values = _truncated_normal(rng, shape, 0.0, math.sqrt(scale) / TRUNCATED_STDDEV,
                                       dtype)
        elif self.distribution == "untruncated_normal":
            values = _normal(rng, shape, 0.0, math.sqrt(scale), dtype)
        else:
            limit = math.sqrt(3.0 * scale)
            values = _uniform(rng, shape, -limit, limit, dtype)
        return np.asarray(values, dtype=dtype)

    def get_config(self):
        return {"scale": self.scale, "mode": self.mode, "distribution": self.distribution,
                "seed": self.seed}


class GlorotUniform(VarianceScaling):
    def __init__(self, seed=None):
        super().__init__(1.0, "fan_avg", "uniform", seed)

    def get_config(self):
        return {"seed": self.seed}


class GlorotNormal(VarianceScaling):
    def __init__(self, seed=None):
        super().__init__(1.0, "fan_avg", "truncated_normal", seed)

    def get_config(self):
        return {"seed": self.seed}


class HeNormal(VarianceScaling):
    def __init__(self, seed=None):
        super().__init__(2.0, "fan_in", "truncated_normal", seed)

    def get_config(self):
        return {"seed": self.seed}


class HeUniform(VarianceScaling):
    def __init__(self, seed=None):
        super().__init__(2.0, "fan_in", "uniform", seed)

    def get_config(self):
        return {"seed": self.seed}


class LecunNormal(VarianceScaling):
    def __init__(self, seed=None):
        super().__init__(1.0, "fan_in", "truncated_normal", seed)

    def get_config(self):
        return {"seed": self.seed}


class LecunUniform(VarianceScaling):
    def __init__(self, seed=None):
        super().__init__(1.0, "fan_in", "uniform", seed)

    def get_config(self):
        return {"seed": self.seed}


class Orthogonal(Initializer):
    def __init__(self, gain=1.0, seed=None):
        self.gain, self.seed = gain, seed

    def __call__(self, shape, dtype="float32"):
        if len(shape) < 2:
            raise ValueError(f"Orthogonal: needs a shape of rank >= 2, got {tuple(shape)}")
        rows = math.prod(shape[:-1])
        cols = shape[-1]
        flat = _rng(self.seed).standard_normal((max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(flat)
        q = q * np.sign(np.diag(r))
        if rows < cols:
            q = q.T
        return (self.gain * q.reshape(shape)).astype(dtype)

    def get_config(self):
        return {"gain": self.gain, "seed": self.seed}


class TruncatedNormal(Initializer):
    """Keras's ``TruncatedNormal(mean=0.0, stddev=0.05)``: normal draws, those beyond two
    standard deviations drawn again."""

    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        if not stddev > 0:
            raise ValueError(f"TruncatedNormal: stddev must be positive, got {stddev!r}")
        self.mean, self.stddev, self.seed = mean, stddev, seed

    def __call__(self, shape, dtype="float32"):
        return np.asarray(_truncated_normal(_rng(self.seed), shape, self.mean, self.stddev,
                                            dtype), dtype=dtype)

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev, "seed": self.seed}


class Identity(Initializer):
    """Keras's ``Identity(gain=1.0)``: gain times the identity matrix (2-D kernels only)."""

    def __init__(self, gain=1.0):
        self.gain = gain

    def __call__(self, shape, dtype="float32"):
        if len(shape) != 2:
            raise ValueError(f"Identity: the identity matrix initializer takes 2-D shapes, got "
                             f"{tuple(shape)} of rank {len(shape)}")
        return (self.gain * np.eye(*shape)).astype(dtype)

    def get_config(self):
        return {"gain": self.gain}


ALIASES = {
    "zeros": Zeros, "ones": Ones, "constant": Constant,
    "random_normal": RandomNormal, "random_uniform": RandomUniform,
    "variance_scaling": VarianceScaling,
    "glorot_uniform": GlorotUniform, "glorot_normal": GlorotNormal,
    "he_normal": HeNormal, "he_uniform": HeUniform,
    "lecun_normal": LecunNormal, "lecun_uniform": LecunUniform,
    "orthogonal": Orthogonal,
    "truncated_normal": TruncatedNormal, "identity": Identity,
}
_BY_CLASS = {cls.__name__: cls for cls in ALIASES.values()}
# Keras's second names of two classes (its configs may say either)
IdentityInitializer, OrthogonalInitializer = Identity, Orthogonal
_BY_CLASS.update(IdentityInitializer=Identity, OrthogonalInitializer=Orthogonal)


class _AxesDraw(Initializer):
    """``base`` drawn as the kernel's (input axes, output axes) matrix, then laid out as the
    kernel: the fans of a multi-axis kernel are its input and output axes' sizes, as Keras's
    EinsumDense gives its VarianceScaling initializers (a (D, H, K) projection: D and H*K,
    where the 3-D default would take D*H and D*K). Not serialized: the layer keeps ``base``."""

    def __init__(self, base, input_axes, output_axes):
        self.base, self.input_axes, self.output_axes = base, list(input_axes), list(output_axes)

    def __call__(self, shape, dtype="float32"):
        order = self.input_axes + self.output_axes
        rows = math.prod(shape[i] for i in self.input_axes)
        cols = math.prod(shape[i] for i in self.output_axes)
        matrix = np.asarray(self.base((rows, cols), dtype))
        return np.ascontiguousarray(np.transpose(matrix.reshape([shape[i] for i in order]),
                                                 np.argsort(order)))


def by_axes(base, input_axes, output_axes):
    """``base`` (an initializer) drawing a kernel by its input and output axes."""
    return _AxesDraw(base, input_axes, output_axes)


def get(identifier):
    if isinstance(identifier, Initializer):
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower()
        if key in ALIASES:
            return ALIASES[key]()
        if identifier in _BY_CLASS:
            return _BY_CLASS[identifier]()
    if isinstance(identifier, dict) and identifier.get("class_name") in _BY_CLASS:
        return _BY_CLASS[identifier["class_name"]].from_config(identifier.get("config", {}))
    raise ValueError(f"Unknown initializer {identifier!r}; expected one of {sorted(ALIASES)}")


def serialize(initializer):
    return {"class_name": type(initializer).__name__, "config": initializer.get_config()}


# -- spectral (branch audio): Keras 3's STFT initializer, STFTSpectrogram's kernels --
def stft_window(window, length, periodic, label):
    """Keras's window: a scipy.signal.get_window name (``periodic`` its fftbins), an array of
    ``length`` values, or None (no window)."""
    if window is None:
        return None
    if isinstance(window, str):
        from scipy.signal import get_window

        try:
            return np.asarray(get_window(window, length, fftbins=bool(periodic)), np.float64)
        except ValueError as exc:
            raise ValueError(f"{label}: unknown window {window!r} ({exc})") from None
    win = np.asarray(window, dtype=np.float64)
    if win.shape != (length,):
        raise ValueError(f"{label}: the window must have the shape ({length},) of the frame "
                         f"length, got {win.shape}")
    return win


class STFT(Initializer):
    """Keras 3's ``STFT(side="real", window="hann", scaling="density", periodic=False)``:
    conv kernels (frame_length, 1, bins) whose product with a frame is the real or the
    imaginary half of its DFT, window(n) * exp(-2 pi i n k / ((bins - 1) * 2)), the window
    divided by its L2 norm ("density") or its sum ("spectrum")."""

    def __init__(self, side="real", window="hann", scaling="density", periodic=False):
        if side not in ("real", "imag"):
            raise ValueError(f"STFT: side must be 'real' or 'imag', got {side!r}")
        if scaling is not None and scaling not in ("density", "spectrum"):
            raise ValueError(f"STFT: scaling must be None, 'density' or 'spectrum', got "
                             f"{scaling!r}")
        if isinstance(window, str):
            stft_window(window, 1, periodic, "STFT")
        self.side, self.window, self.scaling, self.periodic = side, window, scaling, periodic

    def __call__(self, shape, dtype="float32"):
        if len(shape) != 3 or shape[2] < 2:
            raise ValueError(f"STFT: expected a kernel shape (frame_length, 1, bins) with at "
                             f"least 2 bins, got {tuple(shape)}")
        frame_length, _, bins = (int(d) for d in shape)
        win = stft_window(self.window, frame_length, self.periodic, "STFT")
        angle = (-2.0 * np.pi * np.arange(frame_length)[:, None, None]
                 * (np.arange(bins)[None, None, :] / ((bins - 1) * 2)))
        kernel = np.cos(angle) if self.side == "real" else np.sin(angle)
        if win is not None:
            scale = 1.0
            if self.scaling == "density":
                scale = np.sqrt(np.sum(win * win))
            elif self.scaling == "spectrum":
                scale = np.sum(np.abs(win))
            kernel = kernel * win[:, None, None] / scale
        return np.broadcast_to(kernel, tuple(int(d) for d in shape)).astype(dtype)

    def get_config(self):
        window = self.window
        if window is not None and not isinstance(window, str):
            window = np.asarray(window).tolist()
        return {"side": self.side, "window": window, "periodic": self.periodic,
                "scaling": self.scaling}


ALIASES["stft"] = STFT
_BY_CLASS.update(STFT=STFT, STFTInitializer=STFT)
STFTInitializer = STFT


# -- api: Keras 3's function-style names (keras.initializers.glorot_uniform is the class) and
# deserialize
zeros, ones, constant = Zeros, Ones, Constant
random_normal, random_uniform, truncated_normal = RandomNormal, RandomUniform, TruncatedNormal
variance_scaling, orthogonal, identity = VarianceScaling, Orthogonal, Identity
glorot_uniform, glorot_normal = GlorotUniform, GlorotNormal
he_normal, he_uniform, lecun_normal, lecun_uniform = HeNormal, HeUniform, LecunNormal, LecunUniform
stft = STFT


def deserialize(config, custom_objects=None):
    """A saved ``{"class_name", "config"}`` or a name -> the initializer; ``custom_objects``
    maps class names to the user's Initializer subclasses."""
    if isinstance(config, dict) and custom_objects and config.get("class_name") in custom_objects:
        return custom_objects[config["class_name"]].from_config(config.get("config", {}))
    if isinstance(config, str) and custom_objects and config in custom_objects:
        return custom_objects[config]()
    return get(config)
