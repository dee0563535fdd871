"""pynn.ops' remaining structural, FFT and loss ops (pynn/ops/structural.py, pynn/ops/fft.py):
one table of ops, each checked four ways as tests/test_ops_keras3.py does: forward against a
float64 NumPy reference, the tape's gradient against central differences (float64), value
and gradient against keras.ops on torch (float32), OpenCL against the CPU. Then CTC, the
queries, and the bad inputs.
"""

import numpy as np
import pytest

import pynn
from pynn import ops
from tests.backend_util import keras_on_torch
from tests.test_ops import check_grad
from tests.test_ops_keras3 import _keras_run, _pynn_run


def _x(*shape, seed=0):
    a = np.random.default_rng(seed + 37 * len(shape) + sum(shape)).standard_normal(shape)
    a.flat[0] = 0.625
    return a


def _p(*shape, seed=0):
    """Probabilities in (0.05, 0.95)."""
    return 0.05 + 0.9 / (1.0 + np.exp(-_x(*shape, seed=seed)))


TARGET = np.random.default_rng(11).random((3, 5)).astype(np.float32)
SOFT = TARGET / TARGET.sum(axis=-1, keepdims=True)
SPARSE = np.array([0, 4, 2], np.int32)
SPARSE_3D = np.array([[0, 3, 1, 2], [2, 2, 0, 1]], np.int32)


# -- float64 references -----------------------------------------------------------------------
def _depth_to_space(x, bs, channels_last=True):
    if not channels_last:
        # Keras's channels_first order (every backend's): channel c*bs*bs + i*bs + j goes to
        # pixel (i, j) of its block (torch's pixel_shuffle), not channels_last's
        # (i*bs + j)*C' + c
        n, c, h, w = x.shape
        nc = c // (bs * bs)
        blocks = x.reshape(n, nc, bs, bs, h, w)
        out = np.empty((n, nc, h * bs, w * bs))
        for i in range(bs):
            for j in range(bs):
                out[:, :, i::bs, j::bs] = blocks[:, :, i, j]
        return out
    n, h, w, c = x.shape
    nc = c // (bs * bs)
    rows, cols = np.arange(h * bs), np.arange(w * bs)
    channel = ((rows % bs)[:, None, None] * bs + (cols % bs)[None, :, None]) * nc \
        + np.arange(nc)[None, None, :]
    return x[:, (rows // bs)[:, None, None], (cols // bs)[None, :, None], channel]


def _space_to_depth(x, bs, channels_last=True):
    if not channels_last:  # the inverse of _depth_to_space's channels_first order
        n, c, h, w = x.shape
        out = np.empty((n, c, bs, bs, h // bs, w // bs))
        for i in range(bs):
            for j in range(bs):
                out[:, :, i, j] = x[:, :, i::bs, j::bs]
        return out.reshape(n, c * bs * bs, h // bs, w // bs)
    n, h, w, c = x.shape
    out = np.empty((n, h // bs, w // bs, c * bs * bs))
    for i in range(bs):
        for j in range(bs):
            out[..., (i * bs + j) * c:(i * bs + j + 1) * c] = x[:, i::bs, j::bs, :]
    return out


def _unfold(x, k, d, p, s):
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])))
    oh = (h + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    ow = (w + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    out = np.empty((n, c, k[0], k[1], oh, ow))
    for i in range(k[0]):
        for j in range(k[1]):
            out[:, :, i, j] = xp[:, :, i * d[0]:i * d[0] + s[0] * oh:s[0],
                                 j * d[1]:j * d[1] + s[1] * ow:s[1]]
    return out.reshape(n, c * k[0] * k[1], oh * ow)


def _fold(cols, size, k, d, p, s):
    n, ck, _ = cols.shape
    c = ck // (k[0] * k[1])
    hp, wp = size[0] + 2 * p[0], size[1] + 2 * p[1]
    oh = (hp - d[0] * (k[0] - 1) - 1) // s[0] + 1
    ow = (wp - d[1] * (k[1] - 1) - 1) // s[1] + 1
    blocks = cols.reshape(n, c, k[0], k[1], oh, ow)
    out = np.zeros((n, c, hp, wp))
    for i in range(k[0]):
        for j in range(k[1]):
            out[:, :, i * d[0]:i * d[0] + s[0] * oh:s[0],
                j * d[1]:j * d[1] + s[1] * ow:s[1]] += blocks[:, :, i, j]
    return out[:, :, p[0]:p[0] + size[0], p[1]:p[1] + size[1]]


def _bce(t, p):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return -(t * np.log(p) + (1 - t) * np.log(1 - p))


def _cce(t, p, axis=-1, logits=False):
    if logits:
        logp = p - p.max(axis=axis, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(axis=axis, keepdims=True))
    else:
        logp = np.log(np.clip(p / p.sum(axis=axis, keepdims=True), 1e-7, 1 - 1e-7))
    return -(t * logp).sum(axis=axis)


def _hann(n):
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)


def _stft(x, seq, stride, n, window, center):
    w = np.zeros(n)
    left = (n - seq) // 2
    w[left:left + seq] = window
    if center:
        x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(n // 2, n // 2)], mode="reflect")
    frames = (x.shape[-1] - n) // stride + 1
    idx = np.arange(frames)[:, None] * stride + np.arange(n)
    spec = np.fft.rfft(x[..., idx] * w, axis=-1)
    return np.stack([spec.real, spec.imag])


def _istft(re, im, seq, stride, n, window, center, length=None):
    """torch.istft (seq == n, center): the frames' overlap-added squared window divides;
    else Keras's periodic window normalisation."""
    w = np.zeros(n)
    left = (n - seq) // 2
    w[left:left + seq] = window
    frames = np.fft.irfft(re + 1j * im, n, axis=-1)
    total = n + stride * (re.shape[-2] - 1)
    idx = (np.arange(re.shape[-2])[:, None] * stride + np.arange(n)).reshape(-1)
    if seq == n and center:
        synth = w
    else:
        over = -(-n // stride)
        den = np.tile(np.pad(w * w, (0, over * stride - n)).reshape(over, stride).sum(0),
                      over)[:n]
        synth = w / den
    y = np.zeros(re.shape[:-2] + (total,))
    np.add.at(y, (Ellipsis, idx), (frames * synth).reshape(re.shape[:-2] + (-1,)))
    start = n // 2 if center else 0
    end = start + length if length is not None else (total - n // 2 if center else total)
    y = y[..., start:end]
    if seq == n and center:
        env = np.zeros(total)
        np.add.at(env, idx, np.tile(w * w, re.shape[-2]))
        y = y / env[start:end]
    return y


# name -> (call(o, *xs) with o pynn.ops or keras.ops, inputs, float64 reference, on_device)
CASES = {
    "array_split": (lambda o, x: o.array_split(x, 3, axis=1)[0], [_x(3, 7)],
                    lambda x: np.array_split(x, 3, 1)[0], True),
    "array_split_last": (lambda o, x: o.array_split(x, 3, axis=1)[2], [_x(3, 7)],
                         lambda x: np.array_split(x, 3, 1)[2], True),
    "array_split_indices": (lambda o, x: o.array_split(x, [2, 5], axis=0)[1], [_x(7, 3)],
                            lambda x: np.array_split(x, [2, 5], 0)[1], True),
    "hsplit": (lambda o, x: o.hsplit(x, 3)[1], [_x(5, 9)], lambda x: np.hsplit(x, 3)[1], True),
    "vsplit": (lambda o, x: o.vsplit(x, 3)[2], [_x(9, 5)], lambda x: np.vsplit(x, 3)[2], True),
    "dsplit": (lambda o, x: o.dsplit(x, [2, 7])[1], [_x(3, 2, 9)],
               lambda x: np.dsplit(x, [2, 7])[1], True),
    "dstack": (lambda o, a, b: o.dstack([a, b]), [_x(5, 3), _x(5, 3, seed=1)],
               lambda a, b: np.dstack([a, b]), True),
    "dstack_1d": (lambda o, a, b: o.dstack([a, b]), [_x(5), _x(5, seed=1)],
                  lambda a, b: np.dstack([a, b]), True),
    "diagflat": (lambda o, x: o.diagflat(x, 1), [_x(2, 3)], lambda x: np.diagflat(x, 1), True),
    "diagflat_below": (lambda o, x: o.diagflat(x, -2), [_x(3)],
                       lambda x: np.diagflat(x, -2), True),
    "rot90": (lambda o, x: o.rot90(x), [_x(3, 5, 2)], np.rot90, True),
    "rot90_k2": (lambda o, x: o.rot90(x, 2, (1, 2)), [_x(3, 5, 2)],
                 lambda x: np.rot90(x, 2, (1, 2)), True),
    "rot90_k3": (lambda o, x: o.rot90(x, 3, (2, 0)), [_x(3, 5, 2)],
                 lambda x: np.rot90(x, 3, (2, 0)), True),
    "rot90_negative": (lambda o, x: o.rot90(x, -1, (0, 1)), [_x(3, 5)],
                       lambda x: np.rot90(x, -1, (0, 1)), True),
    "select_tensor_default": (lambda o, a, b: o.select([a > 0.3], [a], b),
                              [_x(3, 5), _x(3, 5, seed=1)],
                              lambda a, b: np.select([a > 0.3], [a], b), True),
    "select": (lambda o, a, b: o.select([a > 0.3, b < 0], [a, b], 0.5),
               [_x(3, 5), _x(3, 5, seed=1)],
               lambda a, b: np.select([a > 0.3, b < 0], [a, b], 0.5), True),
    "meshgrid_xy": (lambda o, a, b, c: o.stack(o.meshgrid(a, b, c), 0),
                    [_x(3), _x(5, seed=1), _x(2, seed=2)],
                    lambda a, b, c: np.stack(np.meshgrid(a, b, c)), True),
    "meshgrid_ij": (lambda o, a, b: o.stack(o.meshgrid(a, b, indexing="ij"), 0),
                    [_x(3), _x(5, seed=1)],
                    lambda a, b: np.stack(np.meshgrid(a, b, indexing="ij")), True),
    "depth_to_space": (lambda o, x: o.depth_to_space(x, 2), [_x(2, 3, 5, 12)],
                       lambda x: _depth_to_space(x, 2), True),
    "depth_to_space_first": (lambda o, x: o.depth_to_space(x, 3, "channels_first"),
                             [_x(1, 18, 2, 3)],
                             lambda x: _depth_to_space(x, 3, False), True),
    "space_to_depth": (lambda o, x: o.space_to_depth(x, 2), [_x(2, 6, 4, 3)],
                       lambda x: _space_to_depth(x, 2), True),
    "space_to_depth_first": (lambda o, x: o.space_to_depth(x, 3, "channels_first"),
                             [_x(1, 2, 3, 6)],
                             lambda x: _space_to_depth(x, 3, False), True),
    "extract_sequences": (lambda o, x: o.extract_sequences(x, 4, 3), [_x(3, 11)],
                          lambda x: np.lib.stride_tricks.sliding_window_view(
                              x, 4, axis=-1)[..., ::3, :], True),
    "extract_sequences_overlap": (lambda o, x: o.extract_sequences(x, 5, 2), [_x(2, 3, 9)],
                                  lambda x: np.lib.stride_tricks.sliding_window_view(
                                      x, 5, axis=-1)[..., ::2, :], True),
    "unfold": (lambda o, x: o.unfold(x, (2, 3), (1, 2), 1, (2, 1)), [_x(2, 3, 6, 7)],
               lambda x: _unfold(x, (2, 3), (1, 2), (1, 1), (2, 1)), True),
    "unfold_plain": (lambda o, x: o.unfold(x, 3), [_x(1, 2, 5, 5)],
                     lambda x: _unfold(x, (3, 3), (1, 1), (0, 0), (1, 1)), True),
    "fold": (lambda o, x: o.fold(x, (6, 7), (2, 3), (1, 2), 1, (2, 1)), [_x(2, 18, 20)],
             lambda x: _fold(x, (6, 7), (2, 3), (1, 2), (1, 1), (2, 1)), True),
    "fold_overlap": (lambda o, x: o.fold(x, 5, 3), [_x(1, 18, 9)],
                     lambda x: _fold(x, (5, 5), (3, 3), (1, 1), (0, 0), (1, 1)), True),
    "rearrange_split": (lambda o, x: o.rearrange(x, "b (h1 h) (w1 w) c -> (b h1 w1) h w c",
                                                 h1=2, w1=3), [_x(2, 4, 9, 3)],
                        lambda x: x.reshape(2, 2, 2, 3, 3, 3).transpose(0, 1, 3, 2, 4, 5)
                        .reshape(12, 2, 3, 3), True),
    "rearrange_merge": (lambda o, x: o.rearrange(x, "b h w c -> h (b w) c"), [_x(2, 3, 5, 3)],
                        lambda x: x.transpose(1, 0, 2, 3).reshape(3, 10, 3), True),
    "rearrange_inner": (lambda o, x: o.rearrange(x, "b (h h1) w -> b h (w h1)", h1=3),
                        [_x(2, 6, 5)],
                        lambda x: x.reshape(2, 2, 3, 5).transpose(0, 1, 3, 2).reshape(2, 2, 15),
                        True),
    "get_item": (lambda o, x: o.get_item(x, (slice(1, 3), 2)), [_x(4, 5)],
                 lambda x: x[1:3, 2], True),
    "copy": (lambda o, x: o.copy(x), [_x(3, 5)], lambda x: x.copy(), True),
    "binary_crossentropy": (lambda o, p: o.binary_crossentropy(TARGET, p), [_p(3, 5)],
                            lambda p: _bce(TARGET, p), True),
    "binary_crossentropy_logits": (lambda o, x: o.binary_crossentropy(TARGET, x, True),
                                   [_x(3, 5) * 3],
                                   lambda x: np.logaddexp(0, x) - x * TARGET, True),
    "categorical_crossentropy": (lambda o, p: o.categorical_crossentropy(SOFT, p),
                                 [_p(3, 5)], lambda p: _cce(SOFT, p), True),
    "categorical_crossentropy_logits": (
        lambda o, x: o.categorical_crossentropy(SOFT, x, from_logits=True), [_x(3, 5)],
        lambda x: _cce(SOFT, x, logits=True), True),
    "categorical_crossentropy_target_gradient": (
        lambda o, t, x: o.categorical_crossentropy(t, x, from_logits=True),
        [_p(3, 5, seed=2), _x(3, 5)], lambda t, x: _cce(t, x, logits=True), True),
    "categorical_crossentropy_axis0": (
        lambda o, p: o.categorical_crossentropy(SOFT.T, p, axis=0), [_p(5, 3)],
        lambda p: _cce(SOFT.T, p, axis=0), True),
    "sparse_categorical_crossentropy": (
        lambda o, p: o.sparse_categorical_crossentropy(SPARSE, p), [_p(3, 5)],
        lambda p: _cce(np.eye(5)[SPARSE], p), True),
    "sparse_categorical_crossentropy_logits": (
        lambda o, x: o.sparse_categorical_crossentropy(SPARSE[:, None], x, from_logits=True),
        [_x(3, 5)], lambda x: _cce(np.eye(5)[SPARSE], x, logits=True), True),
    "sparse_categorical_crossentropy_axis1": (
        lambda o, x: o.sparse_categorical_crossentropy(SPARSE_3D, x, True, axis=1),
        [_x(2, 4, 4)],
        lambda x: _cce(np.moveaxis(np.eye(4)[SPARSE_3D], -1, 1), x, axis=1, logits=True),
        True),
    # -- FFT (pairs stacked on a new leading axis) --
    "rfft": (lambda o, x: o.stack(o.rfft(x), 0), [_x(3, 7)],
             lambda x: np.stack([np.fft.rfft(x).real, np.fft.rfft(x).imag]), True),
    "rfft_radix2": (lambda o, x: o.stack(o.rfft(x), 0), [_x(2, 16)],
                    lambda x: np.stack([np.fft.rfft(x).real, np.fft.rfft(x).imag]), True),
    "rfft_padded": (lambda o, x: o.stack(o.rfft(x, 10), 0), [_x(3, 7)],
                    lambda x: np.stack([np.fft.rfft(x, 10).real, np.fft.rfft(x, 10).imag]),
                    True),
    "rfft_cut": (lambda o, x: o.stack(o.rfft(x, 5), 0), [_x(2, 3, 7)],
                 lambda x: np.stack([np.fft.rfft(x, 5).real, np.fft.rfft(x, 5).imag]), True),
    "fft": (lambda o, a, b: o.stack(o.fft((a, b)), 0), [_x(3, 7), _x(3, 7, seed=1)],
            lambda a, b: np.stack([np.fft.fft(a + 1j * b).real, np.fft.fft(a + 1j * b).imag]),
            True),
    "fft_even": (lambda o, a, b: o.stack(o.fft((a, b)), 0), [_x(2, 8), _x(2, 8, seed=1)],
                 lambda a, b: np.stack([np.fft.fft(a + 1j * b).real,
                                        np.fft.fft(a + 1j * b).imag]), True),
    "fft2": (lambda o, a, b: o.stack(o.fft2((a, b)), 0), [_x(2, 5, 6), _x(2, 5, 6, seed=1)],
             lambda a, b: np.stack([np.fft.fft2(a + 1j * b).real,
                                    np.fft.fft2(a + 1j * b).imag]), True),
    "ifft2": (lambda o, a, b: o.stack(o.ifft2((a, b)), 0), [_x(2, 5, 7), _x(2, 5, 7, seed=1)],
              lambda a, b: np.stack([np.fft.ifft2(a + 1j * b).real,
                                     np.fft.ifft2(a + 1j * b).imag]), True),
    "irfft": (lambda o, a, b: o.irfft((a, b)), [_x(3, 5), _x(3, 5, seed=1)],
              lambda a, b: np.fft.irfft(a + 1j * b), True),
    "irfft_odd": (lambda o, a, b: o.irfft((a, b), 9), [_x(3, 5), _x(3, 5, seed=1)],
                  lambda a, b: np.fft.irfft(a + 1j * b, 9), True),
    "irfft_cut": (lambda o, a, b: o.irfft((a, b), 6), [_x(2, 7), _x(2, 7, seed=1)],
                  lambda a, b: np.fft.irfft(a + 1j * b, 6), True),
    "stft": (lambda o, x: o.stack(o.stft(x, 16, 5, 16), 0), [_x(2, 50)],
             lambda x: _stft(x, 16, 5, 16, _hann(16), True), True),
    "stft_hamming_short_window": (
        lambda o, x: o.stack(o.stft(x, 11, 4, 16, window="hamming", center=False), 0),
        [_x(3, 41)],
        lambda x: _stft(x, 11, 4, 16, 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(11) / 11),
                        False), True),
    "istft": (lambda o, a, b: o.istft((a, b), 16, 5, 16), [_x(2, 9, 9), _x(2, 9, 9, seed=1)],
              lambda a, b: _istft(a, b, 16, 5, 16, _hann(16), True), True),
    "istft_length": (lambda o, a, b: o.istft((a, b), 16, 5, 16, length=37),
                     [_x(2, 9, 9), _x(2, 9, 9, seed=1)],
                     lambda a, b: _istft(a, b, 16, 5, 16, _hann(16), True, 37), True),
    "istft_short_window": (lambda o, a, b: o.istft((a, b), 12, 4, 16, center=False),
                           [_x(3, 7, 9), _x(3, 7, 9, seed=1)],
                           lambda a, b: _istft(a, b, 12, 4, 16, _hann(12), False), True),
}

# Ops without a gradient: values only.
VALUE_CASES = {
    "multi_hot": (lambda o: o.multi_hot(np.array([[1, 3, 3], [0, 4, 2]]), 5), [],
                  lambda: np.array([[0, 1, 0, 1, 0], [1, 0, 1, 0, 1]], np.float32), True),
    "multi_hot_one_sample": (lambda o: o.multi_hot(np.array([2, 0]), 4), [],
                             lambda: np.array([1, 0, 1, 0], np.float32), True),
    "empty_like": (lambda o, x: o.multiply(o.empty_like(x), 0.0), [_x(3, 5)],
                   lambda x: np.zeros((3, 5)), True),
}

# Keras 3.15's torch backend departs from keras.ops' documented meaning here.
KERAS_TORCH_DEPARTS = {
    "array_split_indices": "Keras 3.15's array_split refuses a list of indices (an int only); "
                           "pynn keeps NumPy's",
}


@pytest.mark.parametrize("name", sorted({**CASES, **VALUE_CASES}))
def test_forward_matches_the_float64_reference(name):
    call, xs, ref, _ = {**CASES, **VALUE_CASES}[name]
    got = np.asarray(call(ops, *xs))
    want = np.asarray(ref(*xs))
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11, err_msg=name)


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_by_central_differences(name):
    call, xs, _, _ = CASES[name]
    xs = [np.array(x, np.float64) for x in xs]
    check_grad(name, lambda *a: call(ops, *a), xs, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", sorted({**CASES, **VALUE_CASES}))
def test_keras_parity_of_values_and_gradients(name):
    keras = keras_on_torch()
    if name in KERAS_TORCH_DEPARTS:
        pytest.skip(KERAS_TORCH_DEPARTS[name])
    call, xs, _, _ = {**CASES, **VALUE_CASES}[name]
    if name in VALUE_CASES:
        want, _ = _keras_run(keras, call, xs, None)
        got = np.asarray(call(ops, *[x.astype(np.float32) for x in xs]))
        want_g = got_g = []
    else:
        probe = np.asarray(call(ops, *[x.astype(np.float32) for x in xs]))
        r = np.random.default_rng(5).standard_normal(probe.shape).astype(np.float32)
        want, want_g = _keras_run(keras, call, xs, r)
        got, got_g = _pynn_run(call, xs, r)
    assert got.shape == want.shape, f"{name}: shape {got.shape}, Keras {want.shape}"
    scale = max(1.0, float(np.max(np.abs(want), initial=0)))
    np.testing.assert_allclose(got, want, rtol=0, atol=3e-5 * scale, err_msg=name)
    assert np.dtype(got.dtype) == np.dtype(want.dtype), \
        f"{name}: dtype {got.dtype}, Keras {want.dtype}"
    for i, (g, w) in enumerate(zip(got_g, want_g)):
        if w is None:
            continue
        s = max(1.0, float(np.max(np.abs(w))))
        np.testing.assert_allclose(g, w, rtol=0, atol=3e-5 * s, err_msg=f"{name} d/dx{i}")


@pytest.mark.opencl
@pytest.mark.parametrize("name", sorted(n for n, case in CASES.items() if case[3]))
def test_opencl_matches_the_cpu(name):
    from tests.test_ops_device import check_device
    call, xs, _, _ = CASES[name]
    check_device(name, lambda *a: call(ops, *a), *[x.astype(np.float32) for x in xs])


@pytest.mark.opencl
def test_transforms_of_host_float64_arrays_on_opencl():
    # The device computes in float32: the window and the Hermitian weights follow it.
    from tests.test_ops_device import _on
    x = _x(3, 12)
    results = []
    for device in ("cpu", "opencl"):
        with _on(device):
            re, im = ops.stft(x.astype(np.float32) if device == "cpu" else x, 8, 3, 8)
            back = ops.istft((re, im), 8, 3, 8)
            results.append([np.asarray(v) for v in (re, im, back)])
    for want, got in zip(*results):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


# -- CTC ----------------------------------------------------------------------------------------
CTC_LABELS = np.array([[1, 2, 2, 0], [3, 1, 0, 0], [2, 3, 1, 3]], np.int32)
CTC_LABEL_LENGTHS = np.array([3, 2, 4], np.int32)
CTC_STEPS = np.array([9, 6, 8], np.int32)


def _ctc_reference(labels, label_lengths, logits, steps, blank):
    """-log p of each sample: the alpha recursion over the blank-extended labels, float64."""
    out = []
    for b in range(len(labels)):
        lp = logits[b, :steps[b]] - logits[b, :steps[b]].max(-1, keepdims=True)
        lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
        ext = [blank]
        for c in labels[b, :label_lengths[b]]:
            ext += [int(c), blank]
        alpha = np.full(len(ext), -np.inf)
        alpha[0] = lp[0, ext[0]]
        if len(ext) > 1:
            alpha[1] = lp[0, ext[1]]
        for t in range(1, steps[b]):
            prev = alpha.copy()
            for s in range(len(ext)):
                terms = [prev[s]] + ([prev[s - 1]] if s >= 1 else [])
                if s >= 2 and ext[s] != blank and ext[s] != ext[s - 2]:
                    terms.append(prev[s - 2])
                alpha[s] = np.logaddexp.reduce(terms) + lp[t, ext[s]]
        out.append(-np.logaddexp(alpha[-1], alpha[-2] if len(ext) > 1 else -np.inf))
    return np.array(out)


@pytest.mark.parametrize("blank", [0, 2, 4])
def test_ctc_loss_matches_the_reference_and_its_gradient(blank):
    labels = np.where(CTC_LABELS == blank, 0, CTC_LABELS)
    logits = _x(3, 9, 5)
    got = ops.ctc_loss(labels, logits, CTC_LABEL_LENGTHS, CTC_STEPS, mask_index=blank)
    want = _ctc_reference(labels, CTC_LABEL_LENGTHS, logits, CTC_STEPS, blank)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10)
    check_grad("ctc_loss", lambda x: ops.ctc_loss(labels, x, CTC_LABEL_LENGTHS, CTC_STEPS,
                                                  mask_index=blank), [logits])


def test_ctc_loss_keras_parity():
    keras = keras_on_torch()
    import torch
    logits = _x(3, 9, 5).astype(np.float32)
    for blank in (0, 4):
        t = torch.tensor(logits, requires_grad=True)
        want = keras.ops.ctc_loss(CTC_LABELS, t, CTC_LABEL_LENGTHS, CTC_STEPS,
                                  mask_index=blank)
        r = np.random.default_rng(2).standard_normal(3).astype(np.float32)
        (want * torch.tensor(r)).sum().backward()
        x = ops.convert_to_tensor(logits)
        with pynn.GradientTape() as tape:
            tape.watch(x)
            got = ops.ctc_loss(CTC_LABELS, x, CTC_LABEL_LENGTHS, CTC_STEPS, mask_index=blank)
            loss = ops.sum(ops.multiply(got, r))
        np.testing.assert_allclose(np.asarray(got), want.detach().numpy(), rtol=2e-5)
        np.testing.assert_allclose(tape.gradient(loss, x).numpy(), t.grad.numpy(), atol=2e-5)


@pytest.mark.opencl
def test_ctc_loss_opencl_matches_the_cpu():
    from tests.test_ops_device import check_device
    check_device("ctc_loss", lambda x: ops.ctc_loss(CTC_LABELS, x, CTC_LABEL_LENGTHS,
                                                    CTC_STEPS), _x(3, 9, 5).astype(np.float32))


@pytest.mark.parametrize("merge_repeated, blank", [(True, 0), (False, 0), (True, 3)])
def test_ctc_greedy_decode_matches_keras(merge_repeated, blank):
    keras = keras_on_torch()
    x = _x(3, 9, 5).astype(np.float32)
    x[0, 2] = x[0, 1]  # a repeat to merge
    lengths = np.array([9, 4, 7], np.int32)
    want = keras.ops.ctc_decode(x, lengths, merge_repeated=merge_repeated, mask_index=blank)
    got = ops.ctc_decode(x, lengths, merge_repeated=merge_repeated, mask_index=blank)
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
    np.testing.assert_allclose(np.asarray(got[1]), np.asarray(want[1]), rtol=1e-6)


@pytest.mark.parametrize("beam_width, top_paths, blank", [(4, 2, 0), (3, 1, 4), (8, 3, 2)])
def test_ctc_beam_search_decode_matches_keras(beam_width, top_paths, blank):
    keras = keras_on_torch()
    x = _x(2, 7, 5).astype(np.float32) * 2
    lengths = np.array([7, 5], np.int32)
    kw = dict(strategy="beam_search", beam_width=beam_width, top_paths=top_paths,
              mask_index=blank)
    want = keras.ops.ctc_decode(x, lengths, **kw)
    got = ops.ctc_decode(x, lengths, **kw)
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
    np.testing.assert_allclose(np.asarray(got[1]), np.asarray(want[1]), rtol=1e-5)


def test_ctc_greedy_decode_by_hand():
    # steps: 1 1 0 2 2 1 (pad pad): merged and blanks dropped -> 1 2 1
    ids = np.array([1, 1, 0, 2, 2, 1, 3, 3])
    x = np.eye(4)[ids][None] * 2.0
    decoded, score = ops.ctc_decode(x, np.array([6]))
    np.testing.assert_array_equal(np.asarray(decoded)[0, 0], [1, 2, 1, -1, -1, -1, -1, -1])
    np.testing.assert_allclose(np.asarray(score), [[-12.0]])


@pytest.mark.opencl
def test_ctc_greedy_decode_opencl_matches_the_cpu():
    from tests.test_ops_device import _on
    x = _x(3, 9, 5).astype(np.float32)
    results = []
    for device in ("cpu", "opencl"):
        with _on(device) as b:
            d, s = ops.ctc_decode(b.asarray(x, np.float32), np.array([9, 4, 7]))
            results.append((np.asarray(d), np.asarray(s)))
    np.testing.assert_array_equal(results[1][0], results[0][0])
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-6)


# -- queries, views, constructors ---------------------------------------------------------------
def test_queries_and_constructors():
    x = ops.convert_to_tensor(_x(3, 5).astype(np.float32))
    assert ops.shape(x) == (3, 5) and ops.size(x) == 15 and ops.ndim(x) == 2
    assert ops.dtype(x) == "float32" and ops.dtype(np.arange(3, dtype=np.int32)) == "int32"
    assert ops.is_tensor(x) and not ops.is_tensor(np.ones(2))
    a = ops.convert_to_numpy(x)
    assert type(a) is np.ndarray and np.array_equal(a, x.numpy())
    assert ops.array([[1, 2]], dtype="int32").dtype == np.int32
    e = ops.empty((2, 3))
    assert e.shape == (2, 3) and e.dtype == np.float32
    assert ops.empty_like(x, dtype="int32").dtype == np.int32
    v = ops.view(np.arange(4, dtype=np.int32), "float32")
    np.testing.assert_array_equal(np.asarray(v), np.arange(4, dtype=np.int32).view(np.float32))
    assert ops.view(np.ones((2, 4), np.float32), "int16").shape == (2, 8)


def test_queries_and_views_keras_parity():
    keras = keras_on_torch()
    x = _x(3, 5).astype(np.float32)
    for name in ("shape", "ndim", "dtype"):
        assert getattr(ops, name)(x) == getattr(keras.ops, name)(x), name
    assert ops.size(x) == int(keras.ops.size(x))
    ints = np.arange(-3, 5, dtype=np.int32)
    np.testing.assert_array_equal(np.asarray(ops.view(ints, "float32")),
                                  keras.ops.view(ints, "float32").numpy())


def test_queries_of_symbolic_tensors():
    inp = pynn.Input((4, 6))
    assert ops.shape(inp) == (None, 4, 6) and ops.ndim(inp) == 3 and ops.size(inp) is None
    assert ops.dtype(inp) == "float32"


def test_op_nodes_of_a_functional_model_save_and_load(tmp_path):
    inp = pynn.Input((4, 6, 8))
    h = ops.space_to_depth(ops.rearrange(inp, "b h w c -> b w h c"), 2)
    re, im = ops.rfft(ops.extract_sequences(h, 5, 3))
    out = ops.sqrt(re * re + im * im)
    model = pynn.Model(inp, out)
    x = _x(2, 4, 6, 8).astype(np.float32)
    want = np.abs(np.fft.rfft(np.lib.stride_tricks.sliding_window_view(
        _space_to_depth(x.transpose(0, 2, 1, 3), 2), 5, axis=-1)[..., ::3, :]))
    got = model.predict(x, verbose=0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    path = tmp_path / "structural.pynn"
    model.save(path)
    np.testing.assert_allclose(pynn.load_model(path).predict(x, verbose=0), got, rtol=1e-6)


# -- bad inputs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("call, error, match", [
    (lambda: ops.array_split(np.ones((3, 4)), 0, axis=1), ValueError, "array_split"),
    (lambda: ops.hsplit(np.ones((3, 4)), 3), ValueError, "hsplit: axis 1 of length 4 does "
                                                        "not split"),
    (lambda: ops.vsplit(np.ones((3, 4)), 0), ValueError, "vsplit: indices_or_sections"),
    (lambda: ops.dsplit(np.ones((3, 4)), 2), ValueError, "dsplit: expected an input of at "
                                                         "least 3"),
    (lambda: ops.rot90(np.ones(3)), ValueError, "rot90: expected an input of at least 2"),
    (lambda: ops.rot90(np.ones((3, 4)), 1, (1, 1)), ValueError, "rot90: axes"),
    (lambda: ops.select([np.ones(2) > 0], [], 0), ValueError, "select"),
    (lambda: ops.select([np.ones(2) > 0], [np.ones(3)], 0), ValueError,
     "select: the conditions and choices must broadcast"),
    (lambda: ops.meshgrid(np.ones((2, 2))), ValueError, "meshgrid: input 0 must be 1-D"),
    (lambda: ops.meshgrid(np.ones(2), indexing="xz"), ValueError, "meshgrid: indexing"),
    (lambda: ops.depth_to_space(np.ones((1, 2, 2, 6)), 2), ValueError,
     "depth_to_space: channels"),
    (lambda: ops.space_to_depth(np.ones((1, 3, 4, 2)), 2), ValueError, "space_to_depth"),
    (lambda: ops.space_to_depth(np.ones((3, 4, 2)), 2), ValueError, "expected a 4-D"),
    (lambda: ops.depth_to_space(np.ones((1, 2, 2, 8)), 2, "nhwc"), ValueError,
     "data_format"),
    (lambda: ops.extract_sequences(np.ones((2, 3)), 4, 1), ValueError,
     "extract_sequences: sequence_length"),
    (lambda: ops.extract_sequences(np.ones((2, 5)), 2, 0), ValueError, "sequence_stride"),
    (lambda: ops.unfold(np.ones((2, 3, 4)), 2), ValueError, "unfold: expected a 4-D"),
    (lambda: ops.unfold(np.ones((1, 1, 2, 2)), 3), ValueError, "does not fit"),
    (lambda: ops.fold(np.ones((1, 5, 4)), (3, 3), 2), ValueError, "fold: expected"),
    (lambda: ops.rearrange(np.ones((2, 3)), "a b c -> c b a"), ValueError,
     "rearrange: .* names 3 input axes"),
    (lambda: ops.rearrange(np.ones((2, 6)), "a (b c) -> a b c"), ValueError,
     "rearrange: the group"),
    (lambda: ops.rearrange(np.ones((2, 3)), "a b -> a c"), ValueError, "each axis once"),
    (lambda: ops.rearrange(np.ones((2, 3)), "a ... -> a"), ValueError, "not an axis name"),
    (lambda: ops.view_as_real(np.ones(3)), TypeError, "view_as_real: pynn has no complex"),
    (lambda: ops.view_as_complex(np.ones((3, 2))), TypeError, "view_as_complex"),
    (lambda: ops.view(np.ones(3, np.float32), "complex64"), TypeError, "view: pynn has no"),
    (lambda: ops.view(np.ones(3, np.float32), "float64"), ValueError, "view: the last axis"),
    (lambda: ops.multi_hot(np.array([1]), 3, sparse=True), ValueError, "multi_hot: sparse"),
    (lambda: ops.multi_hot(np.array([1]), 0), ValueError, "multi_hot: num_classes"),
    (lambda: ops.binary_crossentropy(np.ones(3), np.ones(4)), ValueError,
     "binary_crossentropy: target and output"),
    (lambda: ops.categorical_crossentropy(np.ones((2, 3)), np.ones((3, 2))), ValueError,
     "categorical_crossentropy: target and output"),
    (lambda: ops.sparse_categorical_crossentropy(np.zeros(3, np.int32), np.ones((2, 3))),
     ValueError, "sparse_categorical_crossentropy: target must be shaped"),
    (lambda: ops.sparse_categorical_crossentropy(np.array([0, 3]), np.ones((2, 3))),
     ValueError, r"sparse_categorical_crossentropy: target class ids must lie in \[0, 3\), "
                 "got 3"),
    (lambda: ops.sparse_categorical_crossentropy(np.array([-1, 0]), np.ones((2, 3))),
     ValueError, "got -1"),
    (lambda: ops.ctc_loss(CTC_LABELS, np.ones((3, 9)), CTC_LABEL_LENGTHS, CTC_STEPS),
     ValueError, "ctc_loss: output must be"),
    (lambda: ops.ctc_loss(CTC_LABELS, _x(3, 9, 5), CTC_LABEL_LENGTHS, np.array([9, 0, 8])),
     ValueError, "ctc_loss: output_length"),
    (lambda: ops.ctc_loss(CTC_LABELS, _x(3, 9, 5), np.array([3, 5, 4]), CTC_STEPS),
     ValueError, "ctc_loss: target_length"),
    (lambda: ops.ctc_loss(np.array([[1, 0], [7, 1], [1, 1]]), _x(3, 9, 5),
                          np.array([1, 2, 2]), CTC_STEPS), ValueError, "ctc_loss: target row 1"),
    (lambda: ops.ctc_loss(CTC_LABELS, _x(3, 9, 5), CTC_LABEL_LENGTHS, np.array([9, 6, 3])),
     ValueError, r"ctc_loss: the 4 labels of row 2 \(0 repeated\) need 4 steps, its "
                 "output_length is 3"),
    (lambda: ops.ctc_loss(CTC_LABELS, _x(3, 9, 5), CTC_LABEL_LENGTHS, np.array([3, 6, 8])),
     ValueError, r"ctc_loss: the 3 labels of row 0 \(1 repeated\) need 4 steps"),
    (lambda: ops.ctc_loss(CTC_LABELS, _x(3, 9, 5), CTC_LABEL_LENGTHS, CTC_STEPS, mask_index=5),
     ValueError, "ctc_loss: mask_index"),
    (lambda: ops.ctc_decode(_x(2, 4, 3), np.array([4, 4]), strategy="best"), ValueError,
     "ctc_decode: strategy"),
    (lambda: ops.ctc_decode(_x(2, 4, 3), np.array([4, 5])), ValueError,
     "ctc_decode: sequence_lengths"),
    (lambda: ops.ctc_decode(_x(2, 4, 3), np.array([4, 4]), strategy="beam_search",
                            beam_width=2, top_paths=3), ValueError, "top_paths"),
    (lambda: ops.rfft(np.arange(4)), TypeError, "rfft: expected a float"),
    (lambda: ops.rfft(np.ones(4), 0), ValueError, "rfft: fft_length"),
    (lambda: ops.fft(np.ones(4)), ValueError, r"fft: expected a \(real, imag\) pair"),
    (lambda: ops.fft((np.ones(4), np.ones(5))), ValueError, "fft: real and imag"),
    (lambda: ops.fft2((np.ones(4), np.ones(4))), ValueError, "fft2: expected tensors of at "
                                                             "least 2"),
    (lambda: ops.irfft((np.ones(1), np.ones(1))), ValueError, "irfft: a half spectrum"),
    (lambda: ops.stft(np.ones((2, 20)), 16, 4, 8), ValueError, "stft: fft_length"),
    (lambda: ops.stft(np.ones((2, 20)), 8, 4, 8, window="kaiser"), ValueError,
     "stft: a window named"),
    (lambda: ops.stft(np.ones((2, 20)), 8, 4, 8, window=np.ones(7)), ValueError,
     r"stft: window must have shape \(8,\)"),
    (lambda: ops.stft(np.ones((2, 4)), 8, 4, 8), ValueError, "stft: center=True"),
    (lambda: ops.istft((np.ones((2, 3, 4)), np.ones((2, 3, 4))), 8, 4, 8), ValueError,
     r"istft: expected \(..., frames, 5\)"),
])
def test_bad_inputs_name_the_op(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.opencl
def test_opencl_refuses_what_has_no_device_kernel_by_name():
    from tests.test_ops_device import _on
    with _on("opencl") as b:
        x = b.asarray(np.ones((2, 4), np.float32), np.float32)
        with pytest.raises(NotImplementedError, match="pynn.ops.view: no opencl kernel"):
            ops.view(x, "int32")
        with pytest.raises(NotImplementedError, match=r"ctc_decode\(strategy='beam_search'\)"):
            ops.ctc_decode(b.asarray(_x(2, 4, 3).astype(np.float32), np.float32),
                           np.array([4, 4]), strategy="beam_search")
