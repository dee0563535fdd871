"""OpenCL dropout ops: the host side of ``opencl/dropout.cl``.

Same names, signatures and semantics as ``native/dropout.pyx`` (Philox4x32-10, masks
bit-identical to the CPU's); operands are checked by ``pynn.backend.operands.dropout``.
"""

import numpy as np

from pynn.backend.opencl import runtime as rt
from pynn.backend.opencl.arrays import DEVICE
from pynn.backend.opencl.launch import elementwise, kernel
from pynn.backend.operands import dropout as operands


def dropout_forward(x, rate, seed, offset=0):
    """Inverted dropout -> (y, mask uint8); the mask is bit-identical to the CPU op's."""
    op = "dropout_forward"
    r, seed, offset, x = operands.dropout_forward(DEVICE, x, rate, seed, offset)
    y = rt.empty(x.shape, what=f"{op} output")
    mask = rt.empty(x.shape, np.uint8, what=f"{op} mask")
    elementwise("dropout", "dropout_forward", x.size, x, y, mask, x.size, np.uint64(seed),
                np.uint64(offset), np.uint32(operands.dropout_threshold(r)),
                np.float32(1.0 / (1.0 - r)))
    return y, mask


def dropout_backward(dy, mask, rate):
    """dx = dy * mask / (1 - rate)."""
    op = "dropout_backward"
    r, dy, mask = operands.dropout_backward(DEVICE, dy, mask, rate)
    dx = rt.empty(dy.shape, what=f"{op} output")
    elementwise("dropout", "dropout_backward", dy.size, dy, mask, dx, dy.size,
                np.float32(1.0 / (1.0 - r)))
    return dx


def philox4x32_10_block(counter, key):
    """Random123's philox4x32_R(10, counter, key) run on the device (known-answer tests)."""
    c, k = operands.philox4x32_10_block(counter, key)
    ctr = rt.to_device(np.array(c, dtype=np.uint32))
    out = rt.empty((4,), np.uint32, what="philox block")
    rt.launch(kernel("dropout", "philox4x32_10_block"), (1,), None, ctr, out, 1,
              np.uint32(k[0]), np.uint32(k[1]))
    return tuple(int(v) for v in out.get())


# -- issue 12: noise layers (opencl/dropout.cl) ---------------------------------------------
def spatial_dropout_forward(x, rate, seed, offset=0):
    """Channel dropout -> (y, mask uint8 (N, C)); the mask is dropout_forward's mask of an
    (N, C) array, bit-identical to the CPU's."""
    op = "spatial_dropout_forward"
    r, seed, offset, x = operands.spatial_dropout_forward(DEVICE, x, rate, seed, offset)
    n, c = x.shape[0], x.shape[x.ndim - 1]
    ones = rt.empty((n * c,), what=f"{op} mask draw")
    ones.fill(1)
    _, mask = dropout_forward(ones, r, seed, offset)
    mask = mask.reshape(n, c)
    return _channel_mask_apply(op, x, mask, r), mask


def spatial_dropout_backward(dy, mask, rate):
    """dx = dy * mask[n, c] / (1 - rate)."""
    op = "spatial_dropout_backward"
    r, dy, mask = operands.spatial_dropout_backward(DEVICE, dy, mask, rate)
    return _channel_mask_apply(op, dy, mask, r)


def _channel_mask_apply(op, x, mask, rate):
    y = rt.empty(x.shape, what=f"{op} output")
    c = x.shape[x.ndim - 1]
    sc = x.size // x.shape[0] if x.shape[0] else 1
    elementwise("dropout", "spatial_dropout_apply", x.size, x, mask, y, x.size, sc, c,
                np.float32(1.0 / (1.0 - rate)))
    return y


def _gaussian(op, x, seed, offset, mean, stddev, multiply):
    y = rt.empty(x.shape, what=f"{op} output")
    noise = rt.empty(x.shape, what=f"{op} noise") if multiply else y
    elementwise("dropout", "gaussian_noise_forward", x.size, x, y, noise, x.size,
                np.uint64(seed), np.uint64(offset), np.float32(mean), np.float32(stddev),
                multiply, multiply)
    return y, noise


def gaussian_noise_forward(x, stddev, seed, offset=0):
    """y = x + stddev * z (z: the CPU's normal draws, to float rounding)."""
    op = "gaussian_noise_forward"
    s, seed, offset, x = operands.gaussian_noise_forward(DEVICE, x, stddev, seed, offset)
    return _gaussian(op, x, seed, offset, 0.0, s, False)[0]


def gaussian_dropout_forward(x, rate, seed, offset=0):
    """-> (y, noise): noise = 1 + sqrt(rate / (1 - rate)) * z, y = x * noise."""
    op = "gaussian_dropout_forward"
    s, seed, offset, x = operands.gaussian_dropout_forward(DEVICE, x, rate, seed, offset)
    return _gaussian(op, x, seed, offset, 1.0, s, True)


def gaussian_dropout_backward(dy, noise):
    """dx = dy * noise."""
    dy, noise = operands.gaussian_dropout_backward(DEVICE, dy, noise)
    dx = rt.empty(dy.shape, what="gaussian_dropout_backward output")
    elementwise("dropout", "gaussian_dropout_backward", dy.size, dy, noise, dx, dy.size)
    return dx


# -- Keras 3's AlphaDropout (opencl/dropout.cl) --------------------------------------------
def _alpha_apply(op, x, mask, rate, backward):
    """alpha_dropout_apply over x (8 axes, leading ones of size 1) reading mask broadcast."""
    y = rt.empty(x.shape, what=f"{op} output")
    if x.size == 0:
        return y
    rank = operands.ALPHA_DROPOUT_MAX_RANK
    shape = (1,) * (rank - x.ndim) + tuple(x.shape)
    mask_shape = (1,) * (rank - mask.ndim) + tuple(mask.shape)
    strides = operands.broadcast_strides(shape, mask_shape)
    a, b, dropped = operands.alpha_dropout_affine(rate)
    elementwise("dropout", "alpha_dropout_apply", x.size, x, mask, y, x.size, int(backward),
                np.float32(a), np.float32(b), np.float32(dropped), *shape[1:], *strides)
    return y


def alpha_dropout_forward(x, rate, seed, offset=0, noise_shape=None):
    """Keras's AlphaDropout -> (y, mask uint8 of noise_shape); the mask is bit-identical to
    the CPU's."""
    op = "alpha_dropout_forward"
    r, seed, offset, x, mask_shape = operands.alpha_dropout_forward(DEVICE, x, rate, seed,
                                                                    offset, noise_shape)
    size = int(np.prod(mask_shape))
    if size == 0:
        return rt.empty(x.shape, what=f"{op} output"), rt.empty(mask_shape, np.uint8,
                                                                 what=f"{op} mask")
    ones = rt.empty((size,), what=f"{op} mask draw")
    ones.fill(1)
    _, mask = dropout_forward(ones, r, seed, offset)
    mask = mask.reshape(mask_shape)
    return _alpha_apply(op, x, mask, r, False), mask


def alpha_dropout_backward(dy, mask, rate):
    """dx = dy * a where the (broadcast) mask keeps, 0 where it drops."""
    op = "alpha_dropout_backward"
    r, dy, mask = operands.alpha_dropout_backward(DEVICE, dy, mask, rate)
    return _alpha_apply(op, dy, mask, r, True)
