"""float64 NumPy references of the spectral ops (native/spectral.pyx) and of the audio front
ends' fixed matrices: the textbook formulas, written for clarity (an explicit DFT, a loop-free
reflection by index arrays)."""

import numpy as np

# keras.backend.epsilon(): STFTSpectrogram's floor under the power and the magnitude.
KERAS_EPSILON = 1e-7
# Keras's HTK mel scale: mel(f) = 1127 * ln(1 + f / 700).
MEL_HIGH_FREQUENCY_Q = 1127.0
MEL_BREAK_FREQUENCY_HERTZ = 700.0


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def _psd_weights(bins):
    """1 at DC and Nyquist, 2 between: Keras's power + pad(power[1:-1])."""
    w = np.full(bins, 2.0)
    w[0] = w[-1] = 1.0
    return w


def spectrum_forward_ref(real, imag, mode, exponent=2.0):
    re, im = _f64(real), _f64(imag)
    power = re * re + im * im
    if mode == "magnitude":
        return np.sqrt(np.maximum(power, KERAS_EPSILON))
    if mode == "log":
        return np.log(np.maximum(np.sqrt(np.maximum(power, KERAS_EPSILON)), KERAS_EPSILON))
    if mode == "psd":
        return power * _psd_weights(re.shape[-1])
    if mode == "angle":
        return np.arctan2(im, re)
    if mode == "power":
        return np.sqrt(power) ** exponent
    if mode == "stft":
        return np.concatenate([re, im], axis=-1)
    raise ValueError(mode)


def spectrum_backward_ref(dy, real, imag, mode, exponent=2.0):
    """-> (dreal, dimag); 0 where the formula's derivative is undefined (a zero pair)."""
    re, im, dy = _f64(real), _f64(imag), _f64(dy)
    power = re * re + im * im
    live = power > KERAS_EPSILON
    safe = np.where(power > 0, power, 1.0)
    if mode == "stft":
        bins = re.shape[-1]
        return dy[..., :bins].copy(), dy[..., bins:].copy()
    if mode == "magnitude":
        scale = np.where(live, dy / np.sqrt(safe), 0.0)
    elif mode == "log":
        scale = np.where(live, dy / safe, 0.0)
    elif mode == "psd":
        scale = 2.0 * dy * _psd_weights(re.shape[-1])
    elif mode == "power":
        scale = np.where(power > 0, dy * exponent * safe ** (exponent / 2 - 1), 0.0)
    elif mode == "angle":
        g = np.where(power > 0, dy / safe, 0.0)
        return -im * g, re * g
    else:
        raise ValueError(mode)
    return re * scale, im * scale


def power_to_db_forward_ref(x, min_power=1e-10, ref_power=1.0, top_db=80.0):
    """Keras's MelSpectrogram._dbscale: the floor max(log_spec) - top_db is over the whole
    tensor (the batch included), as Keras takes it."""
    x = _f64(x)
    log_spec = 10.0 * np.log10(np.maximum(x, min_power))
    log_spec -= 10.0 * np.log10(max(abs(ref_power), min_power))
    if top_db is None or log_spec.size == 0:
        return log_spec
    return np.maximum(log_spec, log_spec.max() - top_db)


def power_to_db_backward_ref(dy, x, min_power=1e-10, ref_power=1.0, top_db=80.0):
    """Torch's derivative of _dbscale: a clamped element's gradient goes to the tensor's
    maximum (split evenly among ties), the others' through the log."""
    x, dy = _f64(x), _f64(dy)
    log_spec = 10.0 * np.log10(np.maximum(x, min_power))
    log_spec -= 10.0 * np.log10(max(abs(ref_power), min_power))
    dlog = np.where(x > min_power, 10.0 / (np.log(10.0) * np.where(x > 0, x, 1.0)), 0.0)
    if top_db is None or x.size == 0:
        return dy * dlog
    peak = log_spec.max()
    clamped = log_spec < peak - top_db
    at_peak = log_spec == peak
    to_peak = dy[clamped].sum() / at_peak.sum()
    return (np.where(clamped, 0.0, dy) + at_peak * to_peak) * dlog


def reflect_pad1d_forward_ref(x, pad):
    """torch.stft's center=True padding of the last axis: reflection without the edge."""
    x = _f64(x)
    t = x.shape[-1]
    index = np.abs(np.arange(-pad, t + pad))
    index = np.where(index >= t, 2 * (t - 1) - index, index)
    return x[..., index]


def reflect_pad1d_backward_ref(dy, pad):
    dy = _f64(dy)
    t = dy.shape[-1] - 2 * pad
    index = np.abs(np.arange(-pad, t + pad))
    index = np.where(index >= t, 2 * (t - 1) - index, index)
    dx = np.zeros(dy.shape[:-1] + (t,))
    for j, i in enumerate(index):  # a reference: one column at a time, obviously right
        dx[..., i] += dy[..., j]
    return dx


def stft_ref(x, kernel_real, kernel_imag, step, padding="valid"):
    """Frames of x (N, T) against the (L, F) kernels by explicit products (Keras's 'same':
    output ceil(T/step), the odd padding sample after)."""
    x = _f64(x)
    length = kernel_real.shape[0]
    t = x.shape[-1]
    if padding == "same":
        out = -(-t // step)
        total = max((out - 1) * step + length - t, 0)
        x = np.pad(x, [(0, 0), (total // 2, total - total // 2)])
    else:
        out = (t - length) // step + 1
    frames = np.stack([x[:, i * step:i * step + length] for i in range(out)], axis=1)
    return frames @ _f64(kernel_real), frames @ _f64(kernel_imag)


def stft_kernel_ref(side, window, frame_length, bins):
    """Keras's STFT initializer as one formula: window(n) * exp(-2 pi i n k / ((bins-1)*2))."""
    n = np.arange(frame_length)[:, None]
    k = np.arange(bins)[None, :]
    angle = -2.0 * np.pi * n * k / ((bins - 1) * 2)
    part = np.cos(angle) if side == "real" else np.sin(angle)
    return part * _f64(window)[:, None]


def mel_matrix_ref(num_mel_bins, bins, sampling_rate, lower_hz, upper_hz):
    """Keras's linear_to_mel_weight_matrix (HTK: triangles of peak 1 in mel, DC row zero)."""
    def to_mel(f):
        return MEL_HIGH_FREQUENCY_Q * np.log(1.0 + f / MEL_BREAK_FREQUENCY_HERTZ)

    freqs = np.linspace(0.0, sampling_rate / 2.0, bins)[1:]
    mel = to_mel(freqs)[:, None]
    edges = np.linspace(to_mel(lower_hz), to_mel(upper_hz), num_mel_bins + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (mel - lower) / (center - lower)
    falling = (upper - mel) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return np.concatenate([np.zeros((1, num_mel_bins)), weights])


def stft_forward_ref(x, window, stride):
    """The explicit DFT of each windowed frame: exp(-2 pi i n k / N), torch.stft's sign."""
    x, window = _f64(x), _f64(window)
    n = window.size
    frames = (x.shape[1] - n) // stride + 1
    cut = np.stack([x[:, j * stride:j * stride + n] for j in range(frames)], axis=1)
    dft = np.exp(-2j * np.pi * np.outer(np.arange(n), np.arange(n // 2 + 1)) / n)
    z = (cut * window) @ dft
    return z.real, z.imag


def stft_backward_ref(dreal, dimag, window, stride, length):
    """The transpose of stft_forward_ref's linear map, frame by frame."""
    dreal, dimag, window = _f64(dreal), _f64(dimag), _f64(window)
    n = window.size
    dft = np.exp(-2j * np.pi * np.outer(np.arange(n), np.arange(n // 2 + 1)) / n)
    dx = np.zeros((dreal.shape[0], length))
    for j in range(dreal.shape[1]):  # a reference: one frame at a time, obviously right
        g = dft.real @ dreal[:, j].T + dft.imag @ dimag[:, j].T
        dx[:, j * stride:j * stride + n] += (g * window[:, None]).T
    return dx
