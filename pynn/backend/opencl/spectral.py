"""OpenCL spectral ops: the host side of ``opencl/spectral.cl``.

Same names, signatures and semantics as ``native/spectral.pyx``; operands are checked by
``pynn.backend.operands.spectral``. Elementwise launches, except power_to_db's maximum over the
whole tensor (stage partials, one folding group) and its backward's two sums (stage partials,
sum_partials_float), all on the device; float32 throughout (the CPU computes in double).
"""

import numpy as np

from pynn.backend.opencl import runtime as rt
from pynn.backend.opencl.arrays import DEVICE
from pynn.backend.opencl.launch import elementwise, fold, groups, kernel, sizes
from pynn.backend.operands import spectral as operands

STEM = "spectral"


def spectrum_forward(real, imag, mode, exponent=2.0):
    """-> y (..., F), or (..., 2F) for 'stft'."""
    re, im, code, (_, f), exponent = operands.spectrum_forward(DEVICE, real, imag, mode,
                                                               exponent)
    y = rt.empty(operands.spectrum_output_shape(re.shape, code), what="spectrum_forward output")
    if re.size:
        elementwise(STEM, "spectrum_forward", re.size, re, im, y, re.size, f, code,
                    np.float32(exponent))
    return y


def spectrum_backward(dy, real, imag, mode, exponent=2.0):
    """-> (dreal, dimag)."""
    dy, re, im, code, (_, f), exponent = operands.spectrum_backward(DEVICE, dy, real, imag,
                                                                    mode, exponent)
    dre = rt.empty(re.shape, what="spectrum_backward dreal")
    dim = rt.empty(re.shape, what="spectrum_backward dimag")
    if re.size:
        elementwise(STEM, "spectrum_backward", re.size, dy, re, im, dre, dim, re.size, f, code,
                    np.float32(exponent))
    return dre, dim


def _peak(x, min_power, offset):
    """The maximum dB value of x, a (1,) device array."""
    count, wg = groups(x.size), sizes()[0]
    partial = rt.empty((count,), what="power_to_db maxima")
    rt.launch(kernel(STEM, "power_to_db_max"), (count * wg,), (wg,), x, partial, x.size,
              np.float32(min_power), np.float32(offset), 0)
    peak = rt.empty((1,), what="power_to_db peak")
    rt.launch(kernel(STEM, "power_to_db_max"), (wg,), (wg,), partial, peak, count,
              np.float32(min_power), np.float32(offset), 1)
    return peak


def power_to_db_forward(x, min_power=1e-10, ref_power=1.0, top_db=80.0):
    """-> y of x's shape."""
    x, min_power, offset, top_db = operands.power_to_db_forward(DEVICE, x, min_power,
                                                                ref_power, top_db)
    y = rt.empty(x.shape, what="power_to_db_forward output")
    if x.size:
        peak = _peak(x, min_power, offset) if top_db >= 0 else x
        elementwise(STEM, "power_to_db_apply", x.size, x, peak, y, x.size,
                    np.float32(min_power), np.float32(offset), np.float32(top_db))
    return y


def power_to_db_backward(dy, x, min_power=1e-10, ref_power=1.0, top_db=80.0):
    """-> dx."""
    dy, x, min_power, offset, top_db = operands.power_to_db_backward(DEVICE, dy, x, min_power,
                                                                     ref_power, top_db)
    dx = rt.empty(x.shape, what="power_to_db_backward dx")
    if not x.size:
        return dx
    peak = sums = x
    if top_db >= 0:
        peak = _peak(x, min_power, offset)
        count, wg = groups(x.size), sizes()[0]
        partial = rt.empty((2 * count,), what="power_to_db_backward partials")
        rt.launch(kernel(STEM, "power_to_db_grad_sums"), (count * wg,), (wg,), dy, x, peak,
                  partial, x.size, np.float32(min_power), np.float32(offset),
                  np.float32(top_db))
        sums = fold(STEM, partial, 2)
    elementwise(STEM, "power_to_db_backward", x.size, dy, x, peak, sums, dx, x.size,
                np.float32(min_power), np.float32(offset), np.float32(top_db))
    return dx


def reflect_pad1d_forward(x, pad):
    """(..., T) -> (..., T + 2 pad)."""
    x, (_, t), pad = operands.reflect_pad1d_forward(DEVICE, x, pad)
    y = rt.empty(tuple(x.shape[:-1]) + (t + 2 * pad,), what="reflect_pad1d_forward output")
    if y.size:
        elementwise(STEM, "reflect_pad1d_forward", y.size, x, y, y.size, t, pad)
    return y


def reflect_pad1d_backward(dy, pad):
    """(..., T + 2 pad) -> (..., T)."""
    dy, (_, t), pad = operands.reflect_pad1d_backward(DEVICE, dy, pad)
    dx = rt.empty(tuple(dy.shape[:-1]) + (t,), what="reflect_pad1d_backward dx")
    if dx.size:
        elementwise(STEM, "reflect_pad1d_backward", dx.size, dy, dx, dx.size, t, pad)
    return dx


def _twiddles(n):
    """cos and sin of 2 pi m / n on the device (computed in double, stored float32)."""
    angle = 2.0 * np.pi * np.arange(n) / n
    return rt.to_device(np.cos(angle).astype(np.float32)), rt.to_device(
        np.sin(angle).astype(np.float32))


def stft_forward(x, window, stride):
    """-> (real, imag), each (R, frames, N // 2 + 1)."""
    x, window, (r, t), n, stride, frames = operands.stft_forward(DEVICE, x, window, stride)
    real = rt.empty((r, frames, n // 2 + 1), what="stft_forward real")
    imag = rt.empty((r, frames, n // 2 + 1), what="stft_forward imag")
    if real.size:
        cos_t, sin_t = _twiddles(n)
        elementwise(STEM, "stft_forward", real.size, x, window, cos_t, sin_t, real, imag,
                    real.size, t, n, frames, stride)
    return real, imag


def stft_backward(dreal, dimag, window, stride, length):
    """-> dx (R, length)."""
    dre, dim, window, (r, t), stride = operands.stft_backward(DEVICE, dreal, dimag, window,
                                                              stride, length)
    n = window.shape[0]
    dx = rt.empty((r, t), what="stft_backward dx")
    if dx.size:
        cos_t, sin_t = _twiddles(n)
        elementwise(STEM, "stft_backward", dx.size, dre, dim, window, cos_t, sin_t, dx,
                    dx.size, t, n, dre.shape[1], stride)
    return dx
