"""Keras 3's audio front ends: STFTSpectrogram and MelSpectrogram.

STFTSpectrogram frames the signal with a strided conv, as Keras does (the conv family's
conv2d ops on the signal viewed as a (rows, 1, T, 1) image), kernels (L, bins) whose product
with a frame is the real or the imaginary half of its windowed DFT. MelSpectrogram's fixed DFT
is the spectral family's stft op (an FFT on the CPU) on the signal reflect_pad1d centres as
torch.stft's center=True. The spectral ops take the (real, imag) pairs on from there
(magnitude, psd, angle, log; MelSpectrogram's |z|^mag_exp and power_to_db). The mel
projection is a plain matrix product (the dense ops), Keras's tensordot.

STFTSpectrogram's kernels are weights (real_kernel, then imag_kernel; 'real' and 'imag' modes
keep only theirs), trainable unless the layer is not. MelSpectrogram has none: its window,
DFT and mel matrices are constants of its config.
"""

import math
import numbers
import warnings

import numpy as np

from pynn import backend
from pynn.backend.operands.common import conv_output_size
from pynn.initializers import STFT, stft_window
from pynn.layers.base import C_INT_MAX, Layer, shape_str

STFT_MODES = ("log", "magnitude", "psd", "real", "imag", "angle", "stft")
# Keras's MelSpectrogram, like the torch backend's stft, names only these two windows.
MEL_WINDOWS = ("hann", "hamming")
# Keras's HTK mel scale: mel(f) = 1127 ln(1 + f / 700).
MEL_HIGH_FREQUENCY_Q = 1127.0
MEL_BREAK_FREQUENCY_HERTZ = 700.0


def _positive_int(label, name, value, optional=False):
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{label}: {name} must be a positive int, got {value!r}")
    if value > C_INT_MAX:
        raise ValueError(f"{label}: {name} must be at most {C_INT_MAX}, got {value}")
    return int(value)


def _real(label, name, value, optional=False):
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(
            value):
        raise ValueError(f"{label}: {name} must be a finite number, got {value!r}")
    return value


def _window_config(window):
    return window if window is None or isinstance(window, str) else np.asarray(window).tolist()


def _image(b, x2):
    """(R, T) -> the (R, 1, T, 1) image the conv2d ops take."""
    return b.reshape(x2, (x2.shape[0], 1, x2.shape[1], 1))


def _kernel4(b, kernel):
    """(L, 1, F) -> (1, L, 1, F)."""
    return b.reshape(kernel, (1,) + tuple(kernel.shape))


class STFTSpectrogram(Layer):
    def __init__(self, mode="log", frame_length=256, frame_step=None, fft_length=None,
                 window="hann", periodic=False, scaling="density", padding="valid",
                 expand_dims=False, data_format=None, **kwargs):
        super().__init__(**kwargs)
        label = f"STFTSpectrogram '{self.name}'"
        self.frame_length = _positive_int(label, "frame_length", frame_length)
        self.frame_step = _positive_int(label, "frame_step", frame_step, optional=True)
        if self.frame_step is not None and self.frame_step > self.frame_length:
            raise ValueError(f"{label}: frame_step should be a positive integer not greater "
                             f"than frame_length; got frame_step={frame_step}, "
                             f"frame_length={frame_length}")
        self.fft_length = _positive_int(label, "fft_length", fft_length, optional=True)
        if self.fft_length is not None and self.fft_length < self.frame_length:
            raise ValueError(f"{label}: fft_length should be not less than frame_length; got "
                             f"fft_length={fft_length}, frame_length={frame_length}")
        if self.fft_length is not None and self.fft_length & (self.fft_length - 1):
            warnings.warn(f"{label}: fft_length is recommended to be a power of two; got "
                          f"fft_length={fft_length}", stacklevel=2)
        if mode not in STFT_MODES:
            raise ValueError(f"{label}: mode must be one of {', '.join(STFT_MODES)}; got "
                             f"mode={mode!r}")
        if scaling is not None and scaling not in ("density", "spectrum"):
            raise ValueError(f"{label}: scaling must be None, 'density' or 'spectrum'; got "
                             f"scaling={scaling!r}")
        if padding not in ("valid", "same"):
            raise ValueError(f"{label}: padding must be 'valid' or 'same'; got "
                             f"padding={padding!r}")
        if isinstance(window, str):
            stft_window(window, 1, periodic, label)
        elif window is not None:
            stft_window(window, self.frame_length, periodic, label)
        if data_format not in (None, "channels_last", "channels_first"):
            raise ValueError(f"{label}: data_format must be 'channels_last' or "
                             f"'channels_first', got {data_format!r}")
        self.data_format = data_format or "channels_last"
        self.mode, self.window, self.periodic = mode, window, bool(periodic)
        self.scaling, self.padding, self.expand_dims = scaling, padding, bool(expand_dims)
        self._frame_step = self.frame_step or self.frame_length // 2
        if self._frame_step < 1:
            raise ValueError(f"{label}: frame_length {frame_length} leaves no default "
                             f"frame_step (frame_length // 2 is 0); give frame_step")
        self._fft_length = self.fft_length or 2 ** int(math.ceil(math.log2(self.frame_length)))
        self._bins = self._fft_length // 2 + 1
        if self._bins < 2:
            raise ValueError(f"{label}: fft_length {self._fft_length} gives one frequency bin; "
                             f"the STFT kernels need at least 2 (fft_length >= 2)")

    # -- shapes ---------------------------------------------------------------------------
    def _split_input(self, input_shape):
        if len(input_shape) != 3:
            want = "(None, T, C)" if self.data_format == "channels_last" else "(None, C, T)"
            raise ValueError(f"STFTSpectrogram '{self.name}': expected a 3-D input {want}, "
                             f"got {shape_str(input_shape)}")
        if self.data_format == "channels_last":
            return input_shape[0], input_shape[1], input_shape[2]
        return input_shape[0], input_shape[2], input_shape[1]

    def _frames(self, t):
        if t is None:
            return None
        _, out = conv_output_size(t, self.frame_length, self._frame_step, 1, self.padding)
        if out <= 0:
            raise ValueError(f"STFTSpectrogram '{self.name}': a signal of {t} samples is "
                             f"shorter than frame_length {self.frame_length} under "
                             f"padding='valid'")
        return out

    def build(self, input_shape):
        _, _, channels = self._split_input(input_shape)
        if channels is None:
            raise ValueError(f"STFTSpectrogram '{self.name}': the channel axis must be known, "
                             f"got input shape {shape_str(input_shape)}")
        shape = (self.frame_length, 1, self._bins)
        if self.mode != "imag":
            self.real_kernel = self.add_weight(
                "real_kernel", shape, STFT("real", self.window, self.scaling, self.periodic))
        if self.mode != "real":
            self.imag_kernel = self.add_weight(
                "imag_kernel", shape, STFT("imag", self.window, self.scaling, self.periodic))
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        n, t, channels = self._split_input(input_shape)
        frames = self._frames(t)
        bins = 2 * self._bins if self.mode == "stft" else self._bins
        if self.expand_dims:
            if self.data_format == "channels_last":
                return (n, frames, bins, channels)
            return (n, channels, frames, bins)
        flat = None if channels is None else channels * bins
        return (n, frames, flat) if self.data_format == "channels_last" else (n, flat, frames)

    # -- layouts: the spectra come as (N, C, frames, F') ---------------------------------
    def _output_perm(self):
        if self.data_format == "channels_last":
            return (0, 2, 3, 1) if self.expand_dims else (0, 2, 1, 3)
        return None if self.expand_dims else (0, 1, 3, 2)

    def _input_signal(self, b, x):
        """(N, T, C) or (N, C, T) -> the (N*C, 1, T, 1) image of the signals."""
        n, t, c = self._split_input(tuple(x.shape))
        if self.data_format == "channels_last" and c > 1:
            x = b.transpose_forward(x, (0, 2, 1))
        return _image(b, b.reshape(x, (n * c, t)))

    def _kernels(self):
        return {side: getattr(self, f"{side}_kernel").value
                for side in ("real", "imag") if hasattr(self, f"{side}_kernel")}

    def call(self, x, training=False):
        b = backend.current()
        n, t, c = self._split_input(tuple(x.shape))
        frames = self._frames(t)
        x4 = self._input_signal(b, x)
        halves = {}
        for side, kernel in self._kernels().items():
            y, _ = b.conv2d_forward(x4, _kernel4(b, kernel), None, (1, self._frame_step),
                                    self.padding, (1, 1), "linear", 0.0)
            halves[side] = y
        if self.mode in ("real", "imag"):
            spec = halves[self.mode]
        else:
            spec = b.spectrum_forward(halves["real"], halves["imag"], self.mode, 2.0)
        spec = b.reshape(spec, (n, c, frames, spec.shape[-1]))
        perm = self._output_perm()
        out = spec if perm is None else b.transpose_forward(spec, perm)
        if training:
            self._cache = (x4, halves, tuple(spec.shape), tuple(x.shape))
        if not self.expand_dims:
            s = tuple(out.shape)
            flat = ((s[0], s[1], s[2] * s[3]) if self.data_format == "channels_last"
                    else (s[0], s[1] * s[2], s[3]))
            out = b.reshape(out, flat)
        return out

    def backward(self, dy):
        b = backend.current()
        x4, halves, spec_shape, x_shape = self._cache
        self._cache = None
        perm = self._output_perm()
        if not self.expand_dims:
            dy = b.reshape(dy, tuple(spec_shape[i] for i in perm))
        dspec = dy if perm is None else b.transpose_backward(dy, perm)
        rows = x4.shape[0]
        dspec = b.reshape(dspec, (rows, 1, spec_shape[2], spec_shape[3]))
        if self.mode in ("real", "imag"):
            grads = {self.mode: dspec}
        else:
            dre, dim = b.spectrum_backward(dspec, halves["real"], halves["imag"], self.mode,
                                           2.0)
            grads = {"real": dre, "imag": dim}
        dx4 = None
        for side, kernel in self._kernels().items():
            variable = getattr(self, f"{side}_kernel")
            k4 = _kernel4(b, kernel)
            if self.trainable:  # frozen kernels (a preprocessing front end) need no gradient
                dk = b.conv2d_backward_weight(x4, grads[side], tuple(k4.shape),
                                              (1, self._frame_step), self.padding, (1, 1))
                variable.grad = b.reshape(dk, tuple(variable.shape))
            if self.needs_input_grad:
                part = b.conv2d_backward_input(grads[side], k4, tuple(x4.shape),
                                               (1, self._frame_step), self.padding, (1, 1))
                if dx4 is None:
                    dx4 = part
                else:
                    b.add_inplace(dx4, part)
        if dx4 is None:
            return None
        n, t, c = self._split_input(x_shape)
        if self.data_format == "channels_last":
            dx = b.reshape(dx4, (n, c, t))
            return b.transpose_forward(dx, (0, 2, 1)) if c > 1 else b.reshape(dx, x_shape)
        return b.reshape(dx4, x_shape)

    def get_config(self):
        config = super().get_config()
        config.update(mode=self.mode, frame_length=self.frame_length,
                      frame_step=self.frame_step, fft_length=self.fft_length,
                      window=_window_config(self.window), periodic=self.periodic,
                      scaling=self.scaling, padding=self.padding,
                      data_format=self.data_format, expand_dims=self.expand_dims)
        return config


def mel_weight_matrix(num_mel_bins, bins, sampling_rate, lower_edge_hertz, upper_edge_hertz):
    """Keras's linear_to_mel_weight_matrix, (bins, num_mel_bins): HTK triangles of peak 1,
    linear in mel, over [lower, upper] Hz; the DC row zero."""
    def to_mel(hz):
        return MEL_HIGH_FREQUENCY_Q * np.log(1.0 + np.asarray(hz, np.float64)
                                             / MEL_BREAK_FREQUENCY_HERTZ)

    spectrogram_mel = to_mel(np.linspace(0.0, sampling_rate / 2.0, bins)[1:])[:, None]
    edges = np.linspace(to_mel(lower_edge_hertz), to_mel(upper_edge_hertz), num_mel_bins + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    with np.errstate(divide="ignore", invalid="ignore"):
        rising = (spectrogram_mel - lower) / (center - lower)
        falling = (upper - spectrogram_mel) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return np.concatenate([np.zeros((1, num_mel_bins)), weights])


class MelSpectrogram(Layer):
    def __init__(self, fft_length=2048, sequence_stride=512, sequence_length=None,
                 window="hann", sampling_rate=16000, num_mel_bins=128, min_freq=20.0,
                 max_freq=None, power_to_db=True, top_db=80.0, mag_exp=2.0, min_power=1e-10,
                 ref_power=1.0, **kwargs):
        super().__init__(**kwargs)
        label = f"MelSpectrogram '{self.name}'"
        self.fft_length = _positive_int(label, "fft_length", fft_length)
        self.sequence_stride = _positive_int(label, "sequence_stride", sequence_stride)
        self.sequence_length = _positive_int(label, "sequence_length",
                                             sequence_length or self.fft_length)
        if self.fft_length < self.sequence_length:
            raise ValueError(f"{label}: fft_length must be greater than or equal to "
                             f"sequence_length; got sequence_length={self.sequence_length}, "
                             f"fft_length={self.fft_length}")
        if isinstance(window, str):
            if window not in MEL_WINDOWS:
                raise ValueError(f"{label}: a window named by a string must be one of "
                                 f"{', '.join(MEL_WINDOWS)}; got window={window!r}")
        elif window is not None:
            stft_window(window, self.sequence_length, True, label)
        self.window = window
        self.sampling_rate = _real(label, "sampling_rate", sampling_rate)
        if self.sampling_rate <= 0:
            raise ValueError(f"{label}: sampling_rate must be positive, got {sampling_rate!r}")
        self.num_mel_bins = _positive_int(label, "num_mel_bins", num_mel_bins)
        self.min_freq = _real(label, "min_freq", min_freq)
        self.max_freq = _real(label, "max_freq", max_freq or int(sampling_rate / 2))
        if not 0 <= self.min_freq < self.max_freq:
            raise ValueError(f"{label}: expected 0 <= min_freq < max_freq; got "
                             f"min_freq={min_freq!r}, max_freq={self.max_freq!r}")
        self.power_to_db = bool(power_to_db)
        self.top_db = _real(label, "top_db", top_db, optional=True)
        if self.top_db is not None and self.top_db < 0:
            raise ValueError(f"{label}: top_db must be non-negative, got {top_db!r}")
        self.mag_exp = _real(label, "mag_exp", mag_exp)
        self.min_power = _real(label, "min_power", min_power)
        if self.min_power <= 0:
            raise ValueError(f"{label}: min_power must be positive, got {min_power!r}")
        self.ref_power = _real(label, "ref_power", ref_power)
        self._bins = self.fft_length // 2 + 1

    @property
    def _pad(self):
        return self.fft_length // 2

    def _frames(self, t):
        if t is None:
            return None
        if self._pad >= t:
            raise ValueError(f"MelSpectrogram '{self.name}': a signal of {t} samples is too "
                             f"short for fft_length {self.fft_length} (its centred frames "
                             f"reflect fft_length // 2 = {self._pad} samples, which needs more "
                             f"than that many)")
        return (t + 2 * self._pad - self.fft_length) // self.sequence_stride + 1

    def _check_input(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"MelSpectrogram '{self.name}': expected a batch of signals "
                             f"(None, T), got {shape_str(input_shape)}")

    def build(self, input_shape):
        self._check_input(input_shape)
        self._frames(input_shape[1])
        if self.window is None:
            win = np.ones(self.sequence_length)
        else:
            win = stft_window(self.window, self.sequence_length, True,
                              f"MelSpectrogram '{self.name}'")
        left = (self.fft_length - self.sequence_length) // 2
        placed = np.zeros(self.fft_length)
        placed[left:left + self.sequence_length] = win
        b = backend.current()
        self._window = b.asarray(placed, self.dtype)
        self._mel = b.asarray(mel_weight_matrix(self.num_mel_bins, self._bins,
                                                self.sampling_rate, self.min_freq,
                                                self.max_freq), self.dtype)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        self._check_input(input_shape)
        return (input_shape[0], self.num_mel_bins, self._frames(input_shape[1]))

    def call(self, x, training=False):
        b = backend.current()
        n, t = x.shape
        frames = self._frames(t)
        padded = b.reflect_pad1d_forward(x, self._pad)
        real, imag = b.stft_forward(padded, self._window, self.sequence_stride)
        spec = b.spectrum_forward(real, imag, "power", self.mag_exp)
        spec = b.reshape(spec, (n * frames, self._bins))
        mel, _ = b.dense_forward(spec, self._mel, None, "linear", 0.0)
        if self.power_to_db:
            db = b.power_to_db_forward(mel, self.min_power, self.ref_power, self.top_db)
        else:
            db = mel
        if training:
            self._cache = (padded.shape[1], real, imag, mel, n, frames)
        return b.transpose_forward(b.reshape(db, (n, frames, self.num_mel_bins)), (0, 2, 1))

    def backward(self, dy):
        b = backend.current()
        length, real, imag, mel, n, frames = self._cache
        self._cache = None
        if not self.needs_input_grad:
            return None
        d = b.reshape(b.transpose_backward(dy, (0, 2, 1)), (n * frames, self.num_mel_bins))
        if self.power_to_db:
            d = b.power_to_db_backward(d, mel, self.min_power, self.ref_power, self.top_db)
        dspec = b.reshape(b.dense_backward_input(d, self._mel), (n, frames, self._bins))
        dre, dim = b.spectrum_backward(dspec, real, imag, "power", self.mag_exp)
        dpadded = b.stft_backward(dre, dim, self._window, self.sequence_stride, length)
        return b.reflect_pad1d_backward(dpadded, self._pad)

    def get_config(self):
        config = super().get_config()
        config.update(fft_length=self.fft_length, sequence_stride=self.sequence_stride,
                      sequence_length=self.sequence_length,
                      window=_window_config(self.window), sampling_rate=self.sampling_rate,
                      num_mel_bins=self.num_mel_bins, min_freq=self.min_freq,
                      max_freq=self.max_freq, power_to_db=self.power_to_db,
                      top_db=self.top_db, mag_exp=self.mag_exp, min_power=self.min_power,
                      ref_power=self.ref_power)
        return config
