"""NumPy oracles of the dropout family (native/dropout.pyx, opencl/dropout.cl): the Philox
generator itself (checked by tests/test_dropout.py against Random123's known answers), the
dropout mask, and the float64 noise ops built on them."""

import numpy as np

MASK32 = np.uint64(0xFFFFFFFF)


def philox4x32_10_ref(ctr, key):
    """Vectorized Philox4x32-10 (Salmon et al. 2011) on uint64 arrays holding 32-bit words."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) for c in ctr)
    k0, k1 = (np.uint64(k) for k in key)
    for r in range(10):
        if r:
            k0 = (k0 + np.uint64(0x9E3779B9)) & MASK32
            k1 = (k1 + np.uint64(0xBB67AE85)) & MASK32
        p0 = np.uint64(0xD2511F53) * c0
        p1 = np.uint64(0xCD9E8D57) * c2
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & MASK32,
                          (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & MASK32)
    return c0, c1, c2, c3


def dropout_mask_ref(n, rate, seed, offset):
    """The design note's recipe: counter {lo32(e), hi32(e), 0, 0}, e = (i + offset) mod 2^64,
    key {lo32(seed), hi32(seed)}, keep iff word 0 >= floor(rate * 2^32)."""
    e = [(i + offset) % 2**64 for i in range(n)]
    lo = np.array([v & 0xFFFFFFFF for v in e], dtype=np.uint64)
    hi = np.array([v >> 32 for v in e], dtype=np.uint64)
    zero = np.zeros(n, dtype=np.uint64)
    word0 = philox4x32_10_ref((lo, hi, zero, zero), (seed & 0xFFFFFFFF, seed >> 32))[0]
    threshold = int(np.floor(rate * 2.0**32))
    return (word0 >= np.uint64(threshold)).astype(np.uint8)


def spatial_dropout_forward_ref(x, rate, seed, offset=0):
    """(y, mask): the (N, C) mask is dropout's mask of an (N, C) array."""
    x = np.asarray(x, dtype=np.float64)
    n, c = x.shape[0], x.shape[-1]
    mask = dropout_mask_ref(n * c, rate, seed, offset).reshape(n, c)
    keep = mask.reshape((n,) + (1,) * (x.ndim - 2) + (c,))
    return np.where(keep != 0, x / (1.0 - rate), 0.0), mask


def spatial_dropout_backward_ref(dy, mask, rate):
    dy = np.asarray(dy, dtype=np.float64)
    keep = np.asarray(mask).reshape((dy.shape[0],) + (1,) * (dy.ndim - 2) + (dy.shape[-1],))
    return np.where(keep != 0, dy / (1.0 - rate), 0.0)


def standard_normal_ref(n, seed, offset=0):
    """The recipe's z for elements 0..n-1: Box-Muller on words 0 and 1 of each element's
    Philox call. u1, u2 are formed in float32 as the kernels do (that rounding is part of the
    recipe); the transcendental steps run in float64."""
    e = [(i + offset) % 2**64 for i in range(n)]
    lo = np.array([v & 0xFFFFFFFF for v in e], dtype=np.uint64)
    hi = np.array([v >> 32 for v in e], dtype=np.uint64)
    zero = np.zeros(n, dtype=np.uint64)
    w0, w1, _, _ = philox4x32_10_ref((lo, hi, zero, zero), (seed & 0xFFFFFFFF, seed >> 32))
    inv = np.float32(2.0**-32)
    u1 = ((w0.astype(np.float32) + np.float32(1)) * inv).astype(np.float64)
    u2 = (w1.astype(np.float32) * inv).astype(np.float64)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def gaussian_noise_forward_ref(x, stddev, seed, offset=0):
    x = np.asarray(x, dtype=np.float64)
    return x + stddev * standard_normal_ref(x.size, seed, offset).reshape(x.shape)


def gaussian_dropout_forward_ref(x, rate, seed, offset=0):
    """(y, noise), noise = 1 + sqrt(rate / (1 - rate)) * z."""
    x = np.asarray(x, dtype=np.float64)
    z = standard_normal_ref(x.size, seed, offset).reshape(x.shape)
    noise = 1.0 + np.sqrt(rate / (1.0 - rate)) * z
    return x * noise, noise


def gaussian_dropout_backward_ref(dy, noise):
    return np.asarray(dy, dtype=np.float64) * np.asarray(noise, dtype=np.float64)


# -- Keras 3's AlphaDropout (keras/src/layers/regularization/alpha_dropout.py) -------------
def alpha_dropout_forward_ref(x, rate, seed, offset=0, noise_shape=None):
    """(y, mask): mask is dropout's mask of a noise_shape array (None entries take x's size),
    broadcast over x; y = a*(x*keep + alpha_p*(1 - keep)) + b, Keras's formula."""
    x = np.asarray(x, dtype=np.float64)
    shape = x.shape if noise_shape is None else tuple(
        n if d is None else d for d, n in zip(noise_shape, x.shape))
    mask = dropout_mask_ref(int(np.prod(shape)), rate, seed, offset).reshape(shape)
    alpha_p = -1.6732632423543772848170429916717 * 1.0507009873554804934193349852946
    a = ((1 - rate) * (1 + rate * alpha_p**2)) ** -0.5
    b = -a * alpha_p * rate
    keep = mask.astype(np.float64)
    return a * (x * keep + alpha_p * (1 - keep)) + b, mask


def alpha_dropout_backward_ref(dy, mask, rate):
    alpha_p = -1.6732632423543772848170429916717 * 1.0507009873554804934193349852946
    a = ((1 - rate) * (1 + rate * alpha_p**2)) ** -0.5
    return np.asarray(dy, dtype=np.float64) * a * (np.asarray(mask) != 0)
