"""NumPy float64 oracles for the conv2d ops (slow, obviously correct).

Legend: N batch, H/W spatial, C channels, KH/KW kernel, F filters, HO/WO output spatial.
Each op pads x with zeros (Keras 'same': the odd pixel after), then loops over the kernel
taps (kh, kw): every tap is one strided slice of the padded input times a (C, F) matrix.
"""

import numpy as np
from scipy.special import erf


def _pads(n, k, stride, dilation, padding):
    """(pad_before, pad_after, out) for one axis, Keras semantics written out again."""
    k_eff = (k - 1) * dilation + 1
    if padding == "same":
        out = -(-n // stride)
        total = max((out - 1) * stride + k_eff - n, 0)
        return total // 2, total - total // 2, out
    out = max((n - k_eff) // stride + 1, 0)
    return 0, 0, out


def _geometry(input_shape, kernel_shape, strides, padding, dilation_rate):
    _, h, w, _ = input_shape
    kh, kw = kernel_shape[:2]
    pt, pb, ho = _pads(h, kh, strides[0], dilation_rate[0], padding)
    pl, pr, wo = _pads(w, kw, strides[1], dilation_rate[1], padding)
    return (pt, pb, pl, pr), (ho, wo)


def _tap(kh, kw, strides, dilation_rate, out):
    """Slices of the padded input that tap (kh, kw) reads for every output pixel."""
    h0, w0 = kh * dilation_rate[0], kw * dilation_rate[1]
    hs = slice(h0, h0 + max((out[0] - 1) * strides[0] + 1, 0), strides[0])
    ws = slice(w0, w0 + max((out[1] - 1) * strides[1] + 1, 0), strides[1])
    return slice(None), hs, ws, slice(None)


def _padded(x, pads, out, kernel_shape, strides, dilation_rate):
    pt, pb, pl, pr = pads
    # Extra zeros after the padding keep every tap slice in range even when out == 0.
    eh = max((out[0] - 1) * strides[0] + (kernel_shape[0] - 1) * dilation_rate[0] + 1, 0)
    ew = max((out[1] - 1) * strides[1] + (kernel_shape[1] - 1) * dilation_rate[1] + 1, 0)
    xp = np.zeros((x.shape[0], max(pt + x.shape[1] + pb, eh), max(pl + x.shape[2] + pr, ew),
                   x.shape[3]))
    xp[:, pt:pt + x.shape[1], pl:pl + x.shape[2], :] = x
    return xp


def _activation(z, name, alpha=0.0):
    """Float64 activation values (softmax over the last axis)."""
    if name == "linear":
        return z
    if name == "relu":
        return np.maximum(z, 0)
    if name == "sigmoid":
        return 1 / (1 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    if name == "softmax":
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    if name == "leaky_relu":
        return np.where(z > 0, z, alpha * z)
    if name == "elu":
        return np.where(z > 0, z, alpha * np.expm1(z))
    if name == "selu":
        a, s = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
        return s * np.where(z > 0, z, a * np.expm1(z))
    if name == "gelu":
        return 0.5 * z * (1 + erf(z / np.sqrt(2)))
    if name == "softplus":
        return np.logaddexp(z, 0)
    raise ValueError(name)


def conv2d_forward_ref(x, kernel, bias, strides, padding, dilation_rate, activation_name="linear",
                   alpha=0.0):
    """Returns (y, z): z the pre-activation, y = activation(z)."""
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    pads, out = _geometry(x.shape, kernel.shape, strides, padding, dilation_rate)
    xp = _padded(x, pads, out, kernel.shape, strides, dilation_rate)
    z = np.zeros((x.shape[0], out[0], out[1], kernel.shape[3]))
    for kh in range(kernel.shape[0]):
        for kw in range(kernel.shape[1]):
            z += xp[_tap(kh, kw, strides, dilation_rate, out)] @ kernel[kh, kw]
    if bias is not None:
        z = z + np.asarray(bias, np.float64)
    return _activation(z, activation_name, alpha), z


def conv2d_backward_input_ref(dz, kernel, input_shape, strides, padding, dilation_rate):
    dz = np.asarray(dz, np.float64)
    kernel = np.asarray(kernel, np.float64)
    pads, out = _geometry(input_shape, kernel.shape, strides, padding, dilation_rate)
    dxp = _padded(np.zeros(input_shape), pads, out, kernel.shape, strides, dilation_rate)
    for kh in range(kernel.shape[0]):
        for kw in range(kernel.shape[1]):
            dxp[_tap(kh, kw, strides, dilation_rate, out)] += dz @ kernel[kh, kw].T
    pt, _, pl, _ = pads
    return dxp[:, pt:pt + input_shape[1], pl:pl + input_shape[2], :].copy()


def conv2d_backward_weight_ref(x, dz, kernel_shape, strides, padding, dilation_rate):
    x = np.asarray(x, np.float64)
    dz = np.asarray(dz, np.float64)
    pads, out = _geometry(x.shape, kernel_shape, strides, padding, dilation_rate)
    xp = _padded(x, pads, out, kernel_shape, strides, dilation_rate)
    dw = np.zeros(kernel_shape)
    for kh in range(kernel_shape[0]):
        for kw in range(kernel_shape[1]):
            patch = xp[_tap(kh, kw, strides, dilation_rate, out)]
            dw[kh, kw] = np.einsum("nhwc,nhwf->cf", patch, dz)
    return dw


def conv2d_backward_ref(dy, x, kernel, bias, strides, padding, dilation_rate,
                        activation_name="linear", alpha=0.0, use_bias=True,
                        need_input_grad=True):
    """A Conv2D layer's whole backward (dx or None, dkernel, dbias or None) from dL/dy of
    y = activation(conv(x, kernel) + bias). Unlike the op, which takes the forward's z and y,
    the oracle recomputes z in float64 from x, kernel and bias."""
    from tests.reference.activation_ref import activation_backward_ref

    _, z = conv2d_forward_ref(x, kernel, bias, strides, padding, dilation_rate)
    dz = activation_backward_ref(dy, z, activation_name, alpha)
    kernel = np.asarray(kernel)
    dx = None
    if need_input_grad:
        dx = conv2d_backward_input_ref(dz, kernel, np.shape(x), strides, padding,
                                       dilation_rate)
    dk = conv2d_backward_weight_ref(x, dz, kernel.shape, strides, padding, dilation_rate)
    db = dz.reshape(-1, dz.shape[-1]).sum(axis=0) if use_bias else None
    return dx, dk, db


def conv2d_pool_forward_ref(x, kernel, bias, strides, padding, dilation_rate,
                            activation_name="linear", alpha=0.0, pool_size=(2, 2),
                            pool_strides=(2, 2), pool_padding="valid"):
    """(pooled, argmax): maxpool2d_forward_ref over conv2d_forward_ref's output."""
    from tests.reference.pool_ref import maxpool2d_forward_ref

    y, _ = conv2d_forward_ref(x, kernel, bias, strides, padding, dilation_rate,
                              activation_name, alpha)
    return maxpool2d_forward_ref(y, pool_size, pool_strides, pool_padding)


def conv2d_pool_backward_ref(dpool, argmax, x, kernel, bias, strides, padding, dilation_rate,
                             activation_name="linear", alpha=0.0, use_bias=True,
                             need_input_grad=True):
    """conv2d_backward_ref of the gradient a max pool hands back: dpool routed to the pixels
    argmax names (maxpool2d_backward_ref; the op's own argmax, so a near tie the float64
    forward would break otherwise cannot move it). Unlike the op, which takes the pool's
    output for relu's mask, the oracle recomputes the conv in float64."""
    from tests.reference.pool_ref import maxpool2d_backward_ref

    y, _ = conv2d_forward_ref(x, kernel, bias, strides, padding, dilation_rate)
    dy = maxpool2d_backward_ref(dpool, np.asarray(argmax), y.shape)
    return conv2d_backward_ref(dy, x, kernel, bias, strides, padding, dilation_rate,
                               activation_name, alpha, use_bias, need_input_grad)


# -- conv2d_transpose (issue 12) -------------------------------------------------------------
# Written the way JAX defines a transposed conv (the form Keras 3's backends reproduce): the
# input dilated by the strides, zero-padded by Keras's (left, right) pads, then a stride-1
# 'valid' correlation with the kernel flipped in space and its channel axes swapped. The ops
# take another road (a conv's input gradient onto the full output, then a crop), so the two
# meet only in the numbers.


def _transpose_pads(k, stride, dilation, padding, output_padding):
    """Keras's _convert_conv_transpose_padding_args_from_keras_to_jax, written out again."""
    k_eff = (k - 1) * dilation + 1
    if padding == "valid":
        extra = max(k_eff, stride) - k_eff if output_padding is None else output_padding
        return k_eff - 1, k_eff - 1 + extra
    if output_padding is None:
        pad_len = stride + k_eff - 2
    else:
        pad_len = k_eff + k_eff % 2 - 2 + output_padding
    left = min(pad_len // 2 + pad_len % 2, k_eff - 1)
    return left, pad_len - left


def _transpose_input(x, kernel_shape, strides, padding, output_padding, dilation_rate):
    """x dilated by the strides and padded: the input of the equivalent correlation, and
    the slices that pick x's pixels back out of it."""
    n, h, w, c = x.shape
    ops = (None, None) if output_padding is None else tuple(output_padding)
    (pt, pb), (pl, pr) = (_transpose_pads(kernel_shape[i], strides[i], dilation_rate[i],
                                          padding, ops[i]) for i in range(2))
    hd, wd = (h - 1) * strides[0] + 1, (w - 1) * strides[1] + 1
    xp = np.zeros((n, pt + hd + pb, pl + wd + pr, c))
    picks = (slice(None), slice(pt, pt + hd, strides[0]), slice(pl, pl + wd, strides[1]))
    xp[picks] = x
    return xp, picks


def _correlation_kernel(kernel):
    """(KH, KW, F, C) -> the flipped (KH, KW, C, F) kernel of the equivalent correlation."""
    return np.asarray(kernel, np.float64)[::-1, ::-1].transpose(0, 1, 3, 2)


def conv2d_transpose_forward_ref(x, kernel, bias, strides, padding, output_padding,
                                 dilation_rate, activation_name="linear", alpha=0.0):
    """Returns (y, z): z the pre-activation, y = activation(z); kernel (KH, KW, F, C)."""
    xp, _ = _transpose_input(np.asarray(x, np.float64), np.shape(kernel), strides, padding,
                             output_padding, dilation_rate)
    return conv2d_forward_ref(xp, _correlation_kernel(kernel), bias, (1, 1), "valid",
                              dilation_rate, activation_name, alpha)


def conv2d_transpose_backward_ref(dy, x, kernel, bias, strides, padding, output_padding,
                                  dilation_rate, activation_name="linear", alpha=0.0,
                                  use_bias=True, need_input_grad=True):
    """(dx or None, dkernel, dbias or None) of conv2d_transpose_forward_ref, z recomputed in
    float64, through the correlation's own references."""
    from tests.reference.activation_ref import activation_backward_ref

    xp, picks = _transpose_input(np.asarray(x, np.float64), np.shape(kernel), strides,
                                 padding, output_padding, dilation_rate)
    kc = _correlation_kernel(kernel)
    _, z = conv2d_forward_ref(xp, kc, bias, (1, 1), "valid", dilation_rate)
    dz = activation_backward_ref(dy, z, activation_name, alpha)
    dx = None
    if need_input_grad:
        dxp = conv2d_backward_input_ref(dz, kc, xp.shape, (1, 1), "valid", dilation_rate)
        dx = dxp[picks].copy()
    dkc = conv2d_backward_weight_ref(xp, dz, kc.shape, (1, 1), "valid", dilation_rate)
    dk = dkc[::-1, ::-1].transpose(0, 1, 3, 2).copy()
    db = dz.reshape(-1, dz.shape[-1]).sum(axis=0) if use_bias else None
    return dx, dk, db
