"""keras.ops' Fourier transforms: fft, fft2, ifft2, rfft, irfft, stft, istft.

Keras represents a complex tensor as a (real, imag) pair of real tensors; these ops take and
return such pairs. They run on the spectral family's kernels (native/spectral.pyx,
opencl/spectral.cl) on every backend:

- ``stft_forward`` (frames times a window, their first N // 2 + 1 DFT bins; radix-2 FFT for
  powers of two, the direct sum otherwise) is rfft (one frame, a window of ones) and stft;
- ``stft_backward`` is its adjoint, sum_k (re_k + i im_k) exp(+2 pi i n k / N) per frame times
  the window, overlap-added: with the spectrum scaled by c_k = 1/N at DC and Nyquist and 2/N
  between (the Hermitian half counted twice) it is the inverse real transform, irfft, and
  with the frames' window, istft's overlap-add (tests/test_spectral.py pins this on both
  backends against NumPy's irfft). Each kernel is the other's gradient.
- A complex transform of length N is two real ones (of the real and the imaginary part), the
  missing bins k > N/2 the conjugates of bins N - k (a gather); the inverse is
  conj(fft(conj(z))) / N.
"""

import builtins
import math

import numpy as np

from pynn import backend
from pynn.layers.symbolic import KerasTensor
from pynn.ops import numpy_extra as npx
from pynn.ops import numpy_ops as npo
from pynn.ops._core import op, record, shape_of, value

__all__ = ["fft", "fft2", "ifft2", "irfft", "istft", "rfft", "stft"]


def _shape(x):
    return tuple(x.shape) if type(x) is KerasTensor else shape_of(value(x))


def _device_value(b, x):
    v = value(x)
    if b.NAME == "cpu":
        return np.asarray(v)
    from pynn.ops import device
    return device._device(b, v)


def _float(name, x):
    kind = npx._dtype(x).kind
    if kind != "f":
        raise TypeError(f"pynn.ops.{name}: expected a float32 or float64 tensor, got "
                        f"{npx._dtype(x)}")
    return x


def _complex_pair(name, x):
    if not isinstance(x, (tuple, list)) or len(x) != 2:
        raise ValueError(f"pynn.ops.{name}: expected a (real, imag) pair of tensors (Keras's "
                         f"complex representation), got {type(x).__name__}")
    real, imag = x
    if _shape(real) != _shape(imag):
        raise ValueError(f"pynn.ops.{name}: real and imag must have one shape, got "
                         f"{_shape(real)} and {_shape(imag)}")
    if not _shape(real):
        raise ValueError(f"pynn.ops.{name}: expected tensors of at least 1 dimension, got "
                         f"scalars")
    return _float(name, real), _float(name, imag)


def _length(name, what, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"pynn.ops.{name}: {what} must be an int >= 1, got {v!r}")
    return int(v)


def _fit_last(x, n):
    """x's last axis cut or zero-padded to n."""
    t = _shape(x)[-1]
    if t == n:
        return x
    if t > n:
        return npo.getitem(x, (Ellipsis, builtins.slice(0, n)))
    return npx.pad(x, [(0, 0)] * (len(_shape(x)) - 1) + [(0, n - t)])


# -- the two recorded kernels ---------------------------------------------------------------
def _frames_dft(x, window, stride):
    """(real, imag) of stft_forward on x (..., T) -> each (..., frames, N // 2 + 1), both
    recorded: each one's gradient is stft_backward of its half."""
    b = backend.current()
    shape = _shape(x)
    lead, t = shape[:-1], shape[-1]
    rows = math.prod(lead)
    xv = b.reshape(_device_value(b, x), (rows, t))
    # the window in the dtype the backend computes x in (OpenCL: float32)
    w = b.asarray(np.asarray(window, xv.dtype), xv.dtype)
    re, im = b.stft_forward(xv, w, stride)
    out = tuple(re.shape[1:])

    def half(which):
        def backward(dy, need):
            dy = b.reshape(dy, (rows,) + out)
            zero = b.full((rows,) + out, 0, dy.dtype)
            parts = (dy, zero) if which == 0 else (zero, dy)
            return (b.reshape(b.stft_backward(*parts, w, stride, t), shape),)
        return backward

    return (record(b.reshape(re, lead + out), (x,), half(0), "rfft"),
            record(b.reshape(im, lead + out), (x,), half(1), "rfft"))


def _overlap_add(real, imag, window, stride, length):
    """stft_backward of the pair (..., frames, N // 2 + 1) with the window (N,): the real
    signal (..., length); recorded, its gradient is stft_forward's pair."""
    b = backend.current()
    shape = _shape(real)
    lead, frames, bins = shape[:-2], shape[-2], shape[-1]
    rows = math.prod(lead)
    rv = b.reshape(_device_value(b, real), (rows, frames, bins))
    iv = b.reshape(_device_value(b, imag), (rows, frames, bins))
    w = b.asarray(np.asarray(window, rv.dtype), rv.dtype)
    y = b.stft_backward(rv, iv, w, stride, length)

    def backward(dy, need):
        re, im = b.stft_forward(b.reshape(dy, (rows, length)), w, stride)
        return b.reshape(re, shape), b.reshape(im, shape)

    return record(b.reshape(y, lead + (length,)), (real, imag), backward, "irfft")


def _hermitian_weights(n, dtype):
    """c_k of the inverse real transform: 1/n at DC and (even n) Nyquist, 2/n between."""
    c = np.full(n // 2 + 1, 2.0 / n)
    c[0] = 1.0 / n
    if n % 2 == 0:
        c[-1] = 1.0 / n
    return c.astype(dtype)


# -- keras.ops ------------------------------------------------------------------------------
@op
def rfft(x, fft_length=None):
    """keras.ops.rfft: the first fft_length // 2 + 1 bins of the last axis (cut or
    zero-padded to fft_length) -> (real, imag)."""
    _float("rfft", x)
    shape = _shape(x)
    if not shape:
        raise ValueError("pynn.ops.rfft: expected a tensor of at least 1 dimension, got a "
                         "scalar")
    n = shape[-1] if fft_length is None else _length("rfft", "fft_length", fft_length)
    re, im = _frames_dft(_fit_last(x, n), np.ones(n), n)
    return npo.squeeze(re, -2), npo.squeeze(im, -2)


def _full_bins(re, im, n):
    """The n bins of a real signal's transform from its first n // 2 + 1 (conjugate
    symmetry: X[n - k] = conj X[k])."""
    k = np.arange(n)
    source = np.where(k <= n // 2, k, n - k)
    sign = np.where(k <= n // 2, 1.0, -1.0).astype(npx._dtype(im))
    return npo.take(re, source, axis=-1), npo.multiply(npo.take(im, source, axis=-1), sign)


def _fft_last(real, imag, inverse=False):
    n = _shape(real)[-1]
    if inverse:
        imag = npo.negative(imag)
    ar, ai = _full_bins(*rfft(real), n)
    br, bi = _full_bins(*rfft(imag), n)
    re, im = npo.subtract(ar, bi), npo.add(ai, br)
    if inverse:
        return npo.divide(re, float(n)), npo.divide(npo.negative(im), float(n))
    return re, im


def _on_axis(fn, real, imag, axis):
    real, imag = npx.swapaxes(real, axis, -1), npx.swapaxes(imag, axis, -1)
    re, im = fn(real, imag)
    return npx.swapaxes(re, axis, -1), npx.swapaxes(im, axis, -1)


@op
def fft(x):
    """keras.ops.fft: the complex transform of the last axis of x = (real, imag)."""
    return _fft_last(*_complex_pair("fft", x))


@op
def fft2(x):
    """keras.ops.fft2: the transform of the last two axes."""
    real, imag = _complex_pair("fft2", x)
    if len(_shape(real)) < 2:
        raise ValueError(f"pynn.ops.fft2: expected tensors of at least 2 dimensions, got "
                         f"shape {_shape(real)}")
    re, im = _fft_last(real, imag)
    return _on_axis(_fft_last, re, im, -2)


@op
def ifft2(x):
    """keras.ops.ifft2: the inverse transform of the last two axes (1/(H W) included)."""
    real, imag = _complex_pair("ifft2", x)
    if len(_shape(real)) < 2:
        raise ValueError(f"pynn.ops.ifft2: expected tensors of at least 2 dimensions, got "
                         f"shape {_shape(real)}")

    def inverse(r, i):
        return _fft_last(r, i, inverse=True)

    re, im = inverse(real, imag)
    return _on_axis(inverse, re, im, -2)


@op
def irfft(x, fft_length=None):
    """keras.ops.irfft: the real signal of fft_length (default 2 (bins - 1)) samples whose
    half spectrum is x = (real, imag); the imaginary parts of DC and Nyquist are ignored, as
    NumPy and torch do."""
    real, imag = _complex_pair("irfft", x)
    bins = _shape(real)[-1]
    n = 2 * (bins - 1) if fft_length is None else _length("irfft", "fft_length", fft_length)
    if n < 1:
        raise ValueError(f"pynn.ops.irfft: a half spectrum of {bins} bin gives no signal; "
                         f"pass fft_length")
    half = n // 2 + 1
    c = _hermitian_weights(n, npx._dtype(real))
    real = npo.multiply(_fit_last(real, half), c)
    imag = npo.multiply(_fit_last(imag, half), c)
    y = _overlap_add(npo.expand_dims(real, -2), npo.expand_dims(imag, -2), np.ones(n), n, n)
    return y


def _window(name, window, sequence_length, fft_length, dtype):
    """The window (torch's periodic hann/hamming, an array, or None: ones) centred in
    fft_length samples, as torch.stft pads a shorter win_length; a host constant."""
    if window is None:
        w = np.ones(sequence_length)
    elif isinstance(window, str):
        if window not in ("hann", "hamming"):
            raise ValueError(f"pynn.ops.{name}: a window named by a string must be 'hann' or "
                             f"'hamming', got {window!r}")
        phase = 2.0 * np.pi * np.arange(sequence_length) / sequence_length
        w = 0.5 - 0.5 * np.cos(phase) if window == "hann" else 0.54 - 0.46 * np.cos(phase)
    else:
        w = np.asarray(window.numpy() if hasattr(window, "numpy") else window, np.float64)
        if w.shape != (sequence_length,):
            raise ValueError(f"pynn.ops.{name}: window must have shape ({sequence_length},) "
                             f"(sequence_length), got {w.shape}")
    left = (fft_length - sequence_length) // 2
    return np.pad(w.astype(dtype).astype(np.float64),
                  (left, fft_length - sequence_length - left))


def _frame_args(name, sequence_length, sequence_stride, fft_length):
    length = _length(name, "sequence_length", sequence_length)
    stride = _length(name, "sequence_stride", sequence_stride)
    n = _length(name, "fft_length", fft_length)
    if n < length:
        raise ValueError(f"pynn.ops.{name}: fft_length ({n}) must be >= sequence_length "
                         f"({length})")
    return length, stride, n


@op
def stft(x, sequence_length, sequence_stride, fft_length, window="hann", center=True):
    """keras.ops.stft (torch.stft's): (..., T) -> (real, imag) (..., frames, fft_length // 2
    + 1); center reflects fft_length // 2 samples onto each end first."""
    _float("stft", x)
    length, stride, n = _frame_args("stft", sequence_length, sequence_stride, fft_length)
    shape = _shape(x)
    if not shape:
        raise ValueError("pynn.ops.stft: expected a tensor of at least 1 dimension, got a "
                         "scalar")
    w = _window("stft", window, length, n, npx._dtype(x))
    if center:
        if n // 2 >= shape[-1]:
            raise ValueError(f"pynn.ops.stft: center=True reflects fft_length // 2 = {n // 2} "
                             f"samples, which needs more than {shape[-1]} samples")
        x = npx.pad(x, [(0, 0)] * (len(shape) - 1) + [(n // 2, n // 2)], mode="reflect")
    if _shape(x)[-1] < n:
        raise ValueError(f"pynn.ops.stft: {_shape(x)[-1]} samples hold no frame of "
                         f"fft_length {n}")
    return _frames_dft(x, w, stride)


@op
def istft(x, sequence_length, sequence_stride, fft_length, length=None, window="hann",
          center=True):
    """keras.ops.istft: the inverse of stft, each frame's irfft times the window,
    overlap-added (one stft_backward), normalised as Keras's torch backend does: by the
    frames' summed squared window (torch.istft) when sequence_length == fft_length, center
    and a window are given, else by the window's squares summed over one stride period."""
    real, imag = _complex_pair("istft", x)
    seq, stride, n = _frame_args("istft", sequence_length, sequence_stride, fft_length)
    shape = _shape(real)
    if len(shape) < 2 or shape[-1] != n // 2 + 1:
        raise ValueError(f"pynn.ops.istft: expected (..., frames, {n // 2 + 1}) for "
                         f"fft_length {n}, got shape {shape}")
    frames = shape[-2]
    dtype = npx._dtype(real)
    total = n + stride * (frames - 1)
    w = None if window is None else _window("istft", window, seq, n, dtype)
    torch_path = seq == n and center and w is not None
    if w is None:
        synthesis = np.ones(n)
    elif torch_path:
        synthesis = w
    else:
        overlaps = -(-n // stride)
        squares = np.pad(w * w, (0, overlaps * stride - n)).reshape(overlaps, stride)
        synthesis = w / np.tile(squares.sum(axis=0), overlaps)[:n]
    c = _hermitian_weights(n, dtype)
    y = _overlap_add(npo.multiply(real, c), npo.multiply(imag, c), synthesis, stride, total)
    start = n // 2 if center else 0
    if length is not None:
        end = start + _length("istft", "length", length)
    else:
        end = total - n // 2 if center else total
    if torch_path:
        envelope = np.zeros(total)
        np.add.at(envelope, (np.arange(frames)[:, None] * stride + np.arange(n)).reshape(-1),
                  np.tile(w * w, frames))
        kept = envelope[start:builtins.min(end, total)]
        if np.any(np.abs(kept) < 1e-11):
            raise ValueError("pynn.ops.istft: the window's overlap-added squares vanish inside "
                             "the signal (torch.istft's NOLA condition fails)")
        y = npo.getitem(y, (Ellipsis, builtins.slice(start, end)))
        pad_end = builtins.max(end - total, 0)
        if pad_end:
            y = npx.pad(y, [(0, 0)] * (len(shape) - 2) + [(0, pad_end)])
            kept = np.concatenate([kept, np.ones(pad_end)])
        return npo.divide(y, kept.astype(dtype))
    return npo.getitem(y, (Ellipsis, builtins.slice(start, end)))

