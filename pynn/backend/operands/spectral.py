"""Operands of the spectral ops (native/spectral.pyx, pynn/backend/opencl/spectral.py).

The STFT's (real, imag) pairs are two arrays of one shape (..., F), F the frequency bins on
the last axis; the spectrum ops read them as (R, F), R the product of the other axes.
power_to_db reads any float array as flat; reflect_pad1d pads the last axis of (..., T).
"""

import math
import operator

from pynn.backend.api import SPECTRUM_MODES
from pynn.backend.operands.common import check_shape, number


def spectrum_mode(op, mode):
    """-> the mode's code (its index in api.SPECTRUM_MODES)."""
    if not isinstance(mode, str) or mode not in SPECTRUM_MODES:
        raise ValueError(f"{op}: 'mode' must be one of {', '.join(SPECTRUM_MODES)}, got "
                         f"{mode!r}")
    return SPECTRUM_MODES.index(mode)


def _pair(arrays, op, real, imag):
    real = arrays.float_input(op, "real", real)
    imag = arrays.float_input(op, "imag", imag, like=real)
    if real.ndim < 1:
        raise ValueError(f"{op}: 'real' must have at least 1 dimension (..., F), got a "
                         f"scalar")
    check_shape(op, "imag", imag, tuple(real.shape))
    return real, imag


def _rows(a):
    return (math.prod(a.shape[:-1]), a.shape[-1])


def _exponent(op, exponent):
    return number(op, "exponent", exponent, lo=-1e6, hi=1e6)


def spectrum_output_shape(real_shape, code):
    """'stft' stacks real then imag on the bins axis; the others keep the pair's shape."""
    if SPECTRUM_MODES[code] == "stft":
        return tuple(real_shape[:-1]) + (2 * real_shape[-1],)
    return tuple(real_shape)


def spectrum_forward(arrays, real, imag, mode, exponent):
    """-> (real, imag, code, (R, F), exponent)."""
    op = "spectrum_forward"
    code = spectrum_mode(op, mode)
    real, imag = _pair(arrays, op, real, imag)
    return real, imag, code, _rows(real), _exponent(op, exponent)


def spectrum_backward(arrays, dy, real, imag, mode, exponent):
    """-> (dy, real, imag, code, (R, F), exponent)."""
    op = "spectrum_backward"
    code = spectrum_mode(op, mode)
    real, imag = _pair(arrays, op, real, imag)
    dy = arrays.float_input(op, "dy", dy, like=real)
    check_shape(op, "dy", dy, spectrum_output_shape(real.shape, code))
    return dy, real, imag, code, _rows(real), _exponent(op, exponent)


def _db_args(op, min_power, ref_power, top_db):
    """-> (min_power, the subtracted 10 log10(max(|ref_power|, min_power)), top_db or -1):
    top_db None leaves the floor off (a negative top_db is refused, so -1 says 'none')."""
    min_power = number(op, "min_power", min_power, lo=0.0, lo_open=True)
    ref_power = number(op, "ref_power", ref_power)
    if top_db is not None:
        top_db = number(op, "top_db", top_db, lo=0.0)
    return (min_power, 10.0 * math.log10(max(abs(ref_power), min_power)),
            -1.0 if top_db is None else top_db)


def power_to_db_forward(arrays, x, min_power, ref_power, top_db):
    """-> (x, min_power, offset, top_db or -1)."""
    op = "power_to_db_forward"
    x = arrays.float_input(op, "x", x)
    return (x,) + _db_args(op, min_power, ref_power, top_db)


def power_to_db_backward(arrays, dy, x, min_power, ref_power, top_db):
    """-> (dy, x, min_power, offset, top_db or -1)."""
    op = "power_to_db_backward"
    x = arrays.float_input(op, "x", x)
    dy = arrays.float_input(op, "dy", dy, like=x)
    check_shape(op, "dy", dy, tuple(x.shape))
    return (dy, x) + _db_args(op, min_power, ref_power, top_db)


def _pad(op, pad, length):
    """torch's reflect padding needs pad < length (every padded sample has a mirror)."""
    if isinstance(pad, bool):
        raise TypeError(f"{op}: 'pad' must be an int, got {pad!r}")
    try:
        p = operator.index(pad)
    except TypeError:
        raise TypeError(f"{op}: 'pad' must be an int, got {pad!r}") from None
    if p < 0 or (p and p >= length):
        raise ValueError(f"{op}: 'pad' must be in [0, {length}) for a last axis of {length} "
                         f"samples (a reflection without the edge sample), got {p}")
    return p


def reflect_pad1d_forward(arrays, x, pad):
    """-> (x, (R, T), pad)."""
    op = "reflect_pad1d_forward"
    x = arrays.float_input(op, "x", x)
    if x.ndim < 1:
        raise ValueError(f"{op}: 'x' must have at least 1 dimension (..., T), got a scalar")
    return x, _rows(x), _pad(op, pad, x.shape[-1])


def reflect_pad1d_backward(arrays, dy, pad):
    """-> (dy, (R, T) of the unpadded input, pad)."""
    op = "reflect_pad1d_backward"
    dy = arrays.float_input(op, "dy", dy)
    if dy.ndim < 1:
        raise ValueError(f"{op}: 'dy' must have at least 1 dimension (..., T), got a scalar")
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0 or 2 * pad > dy.shape[-1]:
        raise ValueError(f"{op}: 'pad' must be an int in [0, {dy.shape[-1] // 2}] for dy's last "
                         f"axis of {dy.shape[-1]}, got {pad!r}")
    r, t = _rows(dy)
    return dy, (r, t - 2 * pad), _pad(op, pad, t - 2 * pad)


def _stft_geometry(op, window, stride, length):
    """-> (N, stride, frames) of frames of N = window's length, every stride samples."""
    n = window.shape[0]
    if isinstance(stride, bool):
        raise TypeError(f"{op}: 'stride' must be an int, got {stride!r}")
    try:
        s = operator.index(stride)
    except TypeError:
        raise TypeError(f"{op}: 'stride' must be an int, got {stride!r}") from None
    if s < 1:
        raise ValueError(f"{op}: 'stride' must be positive, got {s}")
    if n < 2:
        raise ValueError(f"{op}: 'window' must have at least 2 samples (N, the DFT length), "
                         f"got {n}")
    if length < n:
        raise ValueError(f"{op}: a signal of {length} samples is shorter than the window's "
                         f"{n}")
    return n, s, (length - n) // s + 1


def stft_forward(arrays, x, window, stride):
    """-> (x, window, (R, T), N, stride, frames)."""
    op = "stft_forward"
    x = arrays.float_input(op, "x", x)
    if x.ndim != 2:
        raise ValueError(f"{op}: 'x' must be (R, T) signals, got shape {tuple(x.shape)}")
    window = arrays.float_input(op, "window", window, ndim=1, like=x)
    n, s, frames = _stft_geometry(op, window, stride, x.shape[1])
    return x, window, tuple(x.shape), n, s, frames


def stft_backward(arrays, dreal, dimag, window, stride, length):
    """-> (dreal, dimag, window, (R, T), stride)."""
    op = "stft_backward"
    dreal = arrays.float_input(op, "dreal", dreal)
    dimag = arrays.float_input(op, "dimag", dimag, like=dreal)
    window = arrays.float_input(op, "window", window, ndim=1, like=dreal)
    if isinstance(length, bool):
        raise TypeError(f"{op}: 'length' must be an int, got {length!r}")
    try:
        t = operator.index(length)
    except TypeError:
        raise TypeError(f"{op}: 'length' must be an int, got {length!r}") from None
    n, s, frames = _stft_geometry(op, window, stride, t)
    expected = (dreal.shape[0] if dreal.ndim == 3 else None, frames, n // 2 + 1)
    check_shape(op, "dreal", dreal, expected)
    check_shape(op, "dimag", dimag, tuple(dreal.shape))
    return dreal, dimag, window, (dreal.shape[0], t), s
