"""Integer NumPy references of the int8 ops (native/quant.pyx, opencl/quant.cl): the same
float32 roundings (x / scale, acc * multiplier, rint half to even) and exact integer sums in
int64, saturated where the kernels saturate (int32 accumulator, uint8 output)."""

import numpy as np


def quantize_forward_ref(x, scale, zero_point):
    x = np.asarray(x, np.float32)
    q = np.rint(x / np.float32(scale)) + np.float32(zero_point)
    return np.clip(q, 0, 255).astype(np.uint8)


def dequantize_forward_ref(q, scale, zero_point):
    return ((np.asarray(q).astype(np.float32) - np.float32(zero_point))
            * np.float32(scale)).astype(np.float32)


def int8_dense_forward_ref(xq, wq, bias, x_zero_point, multiplier, y_zero_point, relu):
    xq = np.asarray(xq).astype(np.int64)
    wq = np.asarray(wq).astype(np.int64)
    acc = (xq - x_zero_point) @ wq.T
    if bias is not None:
        acc = acc + np.asarray(bias).astype(np.int64)
    acc = np.clip(acc, -2**31, 2**31 - 1)
    v = acc.astype(np.float32) * np.asarray(multiplier, np.float32)
    if y_zero_point is None:  # float output (dynamic quantization)
        return np.maximum(v, np.float32(0)) if relu else v
    y = np.rint(v) + np.float32(y_zero_point)
    return np.clip(y, y_zero_point if relu else 0, 255).astype(np.uint8)


def int8_pack_weights_ref(wq):
    wq = np.asarray(wq, np.int8)
    units, k = wq.shape
    blocks, k4 = -(-units // 16), max(-(-k // 4), 1)
    padded = np.zeros((blocks * 16, k4 * 4), np.int8)
    padded[:units, :k] = wq
    # [b, l, g, i] -> [b, g, l, i]
    return np.ascontiguousarray(
        padded.reshape(blocks, 16, k4, 4).transpose(0, 2, 1, 3).reshape(blocks, k4, 64))


def int8_im2col_ref(xq, kernel_size, strides, padding, dilation_rate, pad_value):
    xq = np.asarray(xq, np.uint8)
    n, h, w, c = xq.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel_size, strides, dilation_rate
    sizes = []
    for size, k, s, d in ((h, kh, sh, dh), (w, kw, sw, dw)):
        span = (k - 1) * d + 1
        if padding == "valid":
            sizes.append((0, 0, (size - span) // s + 1))
        else:  # Keras 'same': ceil(size / s), the odd pad after
            out = -(-size // s)
            total = max((out - 1) * s + span - size, 0)
            sizes.append((total // 2, total - total // 2, out))
    (pt, pb, ho), (pl, pr, wo) = sizes
    padded = np.pad(xq, ((0, 0), (pt, pb + sh), (pl, pr + sw), (0, 0)),
                    constant_values=pad_value)
    patches = [padded[:, i * dh:i * dh + sh * ho:sh, j * dw:j * dw + sw * wo:sw, :]
               for i in range(kh) for j in range(kw)]
    return np.stack(patches, axis=3).reshape(n * ho * wo, kh * kw * c)


# -- int8 depthwise convolution (issue 18, branch qbreadth) --
def int8_depthwise_conv2d_forward_ref(xq, wq, bias, x_zero_point, multiplier, y_zero_point,
                                      relu, strides, padding, dilation_rate):
    """Exact int64 sums over the window (padding reads the zero point), int32 saturation,
    then int8_dense_forward_ref's float32 epilogue."""
    xq = np.asarray(xq, np.uint8)
    wq = np.asarray(wq, np.int8)
    n, _, _, c = xq.shape
    kh, kw, _, m = wq.shape
    cols = int8_im2col_ref(xq, (kh, kw), strides, padding, dilation_rate, x_zero_point)
    taps = cols.reshape(-1, kh * kw, c).astype(np.int64) - x_zero_point  # (P, KH*KW, C)
    w = wq.reshape(kh * kw, c, m).astype(np.int64)
    acc = np.einsum("ptc,tcm->pcm", taps, w).reshape(-1, c * m)
    if bias is not None:
        acc = acc + np.asarray(bias).astype(np.int64)
    acc = np.clip(acc, -2**31, 2**31 - 1)
    v = acc.astype(np.float32) * np.asarray(multiplier, np.float32)
    if y_zero_point is None:
        out = np.maximum(v, np.float32(0)) if relu else v
    else:
        y = np.rint(v) + np.float32(y_zero_point)
        out = np.clip(y, y_zero_point if relu else 0, 255).astype(np.uint8)
    (ho, wo) = _depthwise_out(xq.shape[1:3], (kh, kw), strides, padding, dilation_rate)
    return out.reshape(n, ho, wo, c * m)


def _depthwise_out(sizes, kernel, strides, padding, dilation_rate):
    out = []
    for size, k, s, d in zip(sizes, kernel, strides, dilation_rate):
        span = (k - 1) * d + 1
        out.append(-(-size // s) if padding == "same" else (size - span) // s + 1)
    return out
# -- end int8 depthwise convolution --


# -- int8 chained inference (issue 18, branch q8) --
def int8_max_pool2d_ref(xq, pool_size, strides, padding):
    """Window maxima over the taps inside the input: int8_im2col with 0 (uint8's floor,
    never above a real tap) as padding, then the max over the taps."""
    xq = np.asarray(xq, np.uint8)
    n, _, _, c = xq.shape
    strides = tuple(pool_size) if strides is None else tuple(strides)
    cols = int8_im2col_ref(xq, tuple(pool_size), strides, padding, (1, 1), 0)
    taps = pool_size[0] * pool_size[1]
    y = cols.reshape(cols.shape[0], taps, c).max(axis=1, initial=0)
    return y.reshape((n,) + _out_hw(xq.shape, pool_size, strides, padding)
                                       + (c,))


def _out_hw(shape, pool_size, strides, padding):
    out = []
    for size, k, s in zip(shape[1:3], pool_size, strides):
        out.append(-(-size // s) if padding == "same" else (size - k) // s + 1)
    return tuple(out)


def int8_conv2d_forward_ref(xq, wq, bias, x_zero_point, multiplier, y_zero_point, relu,
                            kernel_size, strides, padding, dilation_rate):
    """The op's definition: the dense op over the patches (pad value: the zero point)."""
    xq = np.asarray(xq, np.uint8)
    cols = int8_im2col_ref(xq, tuple(kernel_size), tuple(strides), padding,
                           tuple(dilation_rate), x_zero_point)
    y = int8_dense_forward_ref(cols, wq, bias, x_zero_point, multiplier, y_zero_point, relu)
    return y.reshape((xq.shape[0],) + _conv_hw(xq.shape, kernel_size, strides, padding,
                                               dilation_rate) + (y.shape[-1],))


def _conv_hw(shape, kernel_size, strides, padding, dilation_rate):
    out = []
    for size, k, s, d in zip(shape[1:3], kernel_size, strides, dilation_rate):
        span = (k - 1) * d + 1
        out.append(-(-size // s) if padding == "same" else (size - span) // s + 1)
    return tuple(out)
# -- end int8 chained inference --
