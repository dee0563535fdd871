"""Operands of the int8 ops (native/quant.pyx, pynn/backend/opencl/quant.py)."""

import numpy as np

from pynn.backend.operands.common import check_count, check_shape, conv_geometry, number

# k * 255 * 128 < 2**31 keeps the int32 dot products exact (native/_qgemm.h).
MAX_K = 65536


def _zero_point(op, name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or \
            not 0 <= value <= 255:
        raise ValueError(f"{op}: '{name}' must be an int in [0, 255], got {value!r}")
    return int(value)


def _scale(op, name, value):
    value = number(op, name, value)
    if not value > 0 or not np.isfinite(value):
        raise ValueError(f"{op}: '{name}' must be a positive finite float, got {value!r}")
    return float(np.float32(value))


def quantize_forward(arrays, x, scale, zero_point):
    op = "quantize_forward"
    x = arrays.float_input(op, "x", x)
    if x.dtype != np.float32:
        raise TypeError(f"{op}: 'x' must be float32, got {x.dtype}")
    return x, _scale(op, "scale", scale), float(_zero_point(op, "zero_point", zero_point))


def dequantize_forward(arrays, q, scale, zero_point):
    op = "dequantize_forward"
    q = arrays.mask_input(op, "q", q)  # uint8
    return q, _scale(op, "scale", scale), float(_zero_point(op, "zero_point", zero_point))


def int8_dense_forward(arrays, xq, wq, bias, x_zero_point, multiplier, y_zero_point, relu):
    """-> (xq uint8 (N, K), wq int8 (U, K), bias int32 (U,) or None, x_zero_point int,
    multiplier float32 (U,), y_zero_point float, relu bool)."""
    op = "int8_dense_forward"
    xq = arrays.mask_input(op, "xq", xq)
    if xq.ndim != 2:
        raise ValueError(f"{op}: 'xq' must have 2 dimensions (N, K), got shape {xq.shape}")
    wq = _int8(arrays, op, "wq", wq)
    k = xq.shape[1]
    if wq.ndim == 3:  # int8_pack_weights' pack; U is the multiplier's length
        units = np.shape(multiplier)[0] if np.ndim(multiplier) == 1 else -1
        want = (-(-units // 16), -(-k // 4) if k else 1, 64)
        if tuple(wq.shape) != want:
            raise ValueError(f"{op}: packed 'wq' of {units} units and K = {k} must have shape "
                             f"{want} (int8_pack_weights), got {tuple(wq.shape)}")
    elif wq.ndim != 2 or wq.shape[1] != k:
        raise ValueError(f"{op}: 'wq' must be (U, K) = (U, {k}) int8 weights by "
                         f"unit, got shape {tuple(wq.shape)}")
    if xq.shape[1] > MAX_K:
        raise ValueError(f"{op}: K = {xq.shape[1]} input features exceed {MAX_K}, past which "
                         f"int32 dot products could overflow")
    multiplier = arrays.float_input(op, "multiplier", multiplier, ndim=1)
    if multiplier.dtype != np.float32:
        multiplier = multiplier.astype(np.float32)
    if wq.ndim == 2:
        check_shape(op, "multiplier", multiplier, (wq.shape[0],))
    units = multiplier.shape[0]
    if bias is not None:
        bias = arrays.int_input(op, "bias", bias, ndim=1)
        check_shape(op, "bias", bias, (units,))
    check_count(arrays, op, "output", xq.shape[0] * units)
    if y_zero_point is not None:  # None: float output
        y_zero_point = float(_zero_point(op, "y_zero_point", y_zero_point))
    return (xq, wq, bias, _zero_point(op, "x_zero_point", x_zero_point), multiplier,
            y_zero_point, bool(relu))


def int8_pack_weights(arrays, wq):
    """-> wq int8 (U, K)."""
    op = "int8_pack_weights"
    wq = _int8(arrays, op, "wq", wq)
    if wq.ndim != 2:
        raise ValueError(f"{op}: 'wq' must be (U, K) int8 weights by unit, got shape "
                         f"{tuple(wq.shape)}")
    if wq.shape[1] > MAX_K:
        raise ValueError(f"{op}: K = {wq.shape[1]} input features exceed {MAX_K}, past which "
                         f"int32 dot products could overflow")
    return wq


def _int8(arrays, op, name, a):
    if arrays.name != "cpu":  # a device array of the current context, int8
        return arrays._device(op, name, a, np.int8)
    arr = np.asarray(a)
    if arr.dtype != np.int8:
        raise TypeError(f"{op}: '{name}' must be int8, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr)


def int8_im2col(arrays, xq, kernel_size, strides, padding, dilation_rate, pad_value):
    """-> (xq uint8 (N, H, W, C), geometry dict of conv_geometry, pad_value int)."""
    op = "int8_im2col"
    xq = arrays.mask_input(op, "xq", xq)
    if xq.ndim != 4:
        raise ValueError(f"{op}: 'xq' must be uint8 (N, H, W, C), got shape {xq.shape}")
    try:
        kh, kw = (int(v) for v in kernel_size)
    except (TypeError, ValueError):
        raise ValueError(f"{op}: 'kernel_size' must be two ints, got {kernel_size!r}") from None
    g = conv_geometry(op, xq.shape, (kh, kw, xq.shape[3], 1), strides, padding, dilation_rate)
    if kh * kw * xq.shape[3] > MAX_K:
        raise ValueError(f"{op}: KH * KW * C = {kh * kw * xq.shape[3]} exceeds {MAX_K}, past "
                         f"which int32 dot products could overflow")
    check_count(arrays, op, "output", g["N"] * g["HO"] * g["WO"] * kh * kw * xq.shape[3])
    return xq, g, _zero_point(op, "pad_value", pad_value)


# -- int8 depthwise convolution (issue 18, branch qbreadth) --
def int8_depthwise_conv2d_forward(arrays, xq, wq, bias, x_zero_point, multiplier,
                                  y_zero_point, relu, strides, padding, dilation_rate):
    """-> (xq uint8 (N, H, W, C), wq int8 (KH, KW, C, M), bias int32 (C * M,) or None,
    x_zero_point int, multiplier float32 (C * M,), y_zero_point float or None, relu bool,
    geometry dict of conv_geometry)."""
    op = "int8_depthwise_conv2d_forward"
    xq = arrays.mask_input(op, "xq", xq)
    if xq.ndim != 4:
        raise ValueError(f"{op}: 'xq' must be uint8 (N, H, W, C), got shape {xq.shape}")
    wq = _int8(arrays, op, "wq", wq)
    if wq.ndim != 4 or wq.shape[2] != xq.shape[3]:
        raise ValueError(f"{op}: 'wq' must be int8 (KH, KW, C, M) with C = {xq.shape[3]} "
                         f"(the input's channels), got shape {tuple(wq.shape)}")
    kh, kw, c, m = wq.shape
    g = conv_geometry(op, xq.shape, (kh, kw, c, c * m), strides, padding, dilation_rate)
    if kh * kw > MAX_K:
        raise ValueError(f"{op}: KH * KW = {kh * kw} taps exceed {MAX_K}, past which int32 "
                         f"dot products could overflow")
    multiplier = arrays.float_input(op, "multiplier", multiplier, ndim=1)
    if multiplier.dtype != np.float32:
        multiplier = multiplier.astype(np.float32)
    check_shape(op, "multiplier", multiplier, (c * m,))
    if bias is not None:
        bias = arrays.int_input(op, "bias", bias, ndim=1)
        check_shape(op, "bias", bias, (c * m,))
    check_count(arrays, op, "output", g["N"] * g["HO"] * g["WO"] * c * m)
    if y_zero_point is not None:  # None: float output
        y_zero_point = float(_zero_point(op, "y_zero_point", y_zero_point))
    return (xq, wq, bias, _zero_point(op, "x_zero_point", x_zero_point), multiplier,
            y_zero_point, bool(relu), g)
# -- end int8 depthwise convolution --


# -- int8 chained inference (issue 18, branch q8) --
def _uint8_nhwc_and_window(arrays, op, xq, window, window_name):
    """-> (xq uint8 (N, H, W, C), the window's two ints)."""
    xq = arrays.mask_input(op, "xq", xq)
    if xq.ndim != 4:
        raise ValueError(f"{op}: 'xq' must be uint8 (N, H, W, C), got shape {xq.shape}")
    try:
        wh, ww = (int(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(f"{op}: '{window_name}' must be two ints, got {window!r}") from None
    return xq, wh, ww


def int8_max_pool2d(arrays, xq, pool_size, strides, padding):
    """-> (xq uint8 (N, H, W, C), geometry dict of conv_geometry)."""
    op = "int8_max_pool2d"
    xq, ph, pw = _uint8_nhwc_and_window(arrays, op, xq, pool_size, "pool_size")
    c = xq.shape[3]
    g = conv_geometry(op, xq.shape, (ph, pw, c, c), (ph, pw) if strides is None else strides,
                      padding, (1, 1))
    check_count(arrays, op, "output", g["N"] * g["HO"] * g["WO"] * c)
    return xq, g


def int8_conv2d_forward(arrays, xq, wq, bias, x_zero_point, multiplier, y_zero_point, relu,
                        kernel_size, strides, padding, dilation_rate):
    """-> (xq uint8 (N, H, W, C), wq int8 (F, K) or packed, bias int32 (F,) or None,
    x_zero_point int, multiplier float32 (F,), y_zero_point float or None, relu bool,
    geometry dict of conv_geometry); K = KH * KW * C."""
    op = "int8_conv2d_forward"
    xq, kh, kw = _uint8_nhwc_and_window(arrays, op, xq, kernel_size, "kernel_size")
    c = xq.shape[3]
    g = conv_geometry(op, xq.shape, (kh, kw, c, 1), strides, padding, dilation_rate)
    k = kh * kw * c
    if k > MAX_K:
        raise ValueError(f"{op}: KH * KW * C = {k} exceeds {MAX_K}, past which int32 dot "
                         f"products could overflow")
    wq = _int8(arrays, op, "wq", wq)
    multiplier = arrays.float_input(op, "multiplier", multiplier, ndim=1)
    if multiplier.dtype != np.float32:
        multiplier = multiplier.astype(np.float32)
    units = multiplier.shape[0]
    if wq.ndim == 3:
        want = (-(-units // 16), -(-k // 4), 64)
        if tuple(wq.shape) != want:
            raise ValueError(f"{op}: packed 'wq' of {units} filters and K = {k} must have "
                             f"shape {want} (int8_pack_weights), got {tuple(wq.shape)}")
    elif wq.ndim != 2 or wq.shape != (units, k):
        raise ValueError(f"{op}: 'wq' must be (F, KH * KW * C) = ({units}, {k}) int8 "
                         f"weights by filter, got shape {tuple(wq.shape)}")
    if bias is not None:
        bias = arrays.int_input(op, "bias", bias, ndim=1)
        check_shape(op, "bias", bias, (units,))
    check_count(arrays, op, "output", g["N"] * g["HO"] * g["WO"] * units)
    if y_zero_point is not None:  # None: float output
        y_zero_point = float(_zero_point(op, "y_zero_point", y_zero_point))
    return (xq, wq, bias, _zero_point(op, "x_zero_point", x_zero_point), multiplier,
            y_zero_point, bool(relu), g)
# -- end int8 chained inference --
