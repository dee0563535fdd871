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
