"""NumPy float64 oracles for the depthwise and grouped conv ops (slow, obviously correct).

Legend: N batch, H/W spatial, C channels, M depth multiplier, KH/KW kernel, HO/WO output.
The input is zero-padded as conv2d's oracle pads it (Keras 'same': the odd pixel after), then
every kernel tap (kh, kw) is one strided slice of it times kernel[kh, kw] (C, M), broadcast:
output channel c*M + m = x[..., c] * kernel[kh, kw, c, m], Keras's order.
"""

import numpy as np

from tests.reference.conv_ref import (
    _activation,
    _geometry,
    _padded,
    _tap,
    conv2d_backward_input_ref,
    conv2d_backward_weight_ref,
    conv2d_forward_ref,
)


def depthwise_conv2d_forward_ref(x, kernel, bias, strides, padding, dilation_rate,
                                 activation_name="linear", alpha=0.0):
    """Returns (y, z): z the pre-activation, y = activation(z)."""
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    pads, out = _geometry(x.shape, kernel.shape, strides, padding, dilation_rate)
    xp = _padded(x, pads, out, kernel.shape, strides, dilation_rate)
    n, c, m = x.shape[0], kernel.shape[2], kernel.shape[3]
    z = np.zeros((n, out[0], out[1], c, m))
    for kh in range(kernel.shape[0]):
        for kw in range(kernel.shape[1]):
            z += xp[_tap(kh, kw, strides, dilation_rate, out)][..., None] * kernel[kh, kw]
    z = z.reshape(n, out[0], out[1], c * m)
    if bias is not None:
        z = z + np.asarray(bias, np.float64)
    return _activation(z, activation_name, alpha), z


def depthwise_conv2d_backward_input_ref(dz, kernel, input_shape, strides, padding,
                                        dilation_rate):
    kernel = np.asarray(kernel, np.float64)
    pads, out = _geometry(input_shape, kernel.shape, strides, padding, dilation_rate)
    dz = np.asarray(dz, np.float64).reshape(input_shape[0], out[0], out[1], *kernel.shape[2:])
    dxp = _padded(np.zeros(input_shape), pads, out, kernel.shape, strides, dilation_rate)
    for kh in range(kernel.shape[0]):
        for kw in range(kernel.shape[1]):
            dxp[_tap(kh, kw, strides, dilation_rate, out)] += (dz * kernel[kh, kw]).sum(-1)
    pt, _, pl, _ = pads
    return dxp[:, pt:pt + input_shape[1], pl:pl + input_shape[2], :].copy()


def depthwise_conv2d_backward_weight_ref(x, dz, kernel_shape, strides, padding,
                                         dilation_rate):
    x = np.asarray(x, np.float64)
    pads, out = _geometry(x.shape, kernel_shape, strides, padding, dilation_rate)
    dz = np.asarray(dz, np.float64).reshape(x.shape[0], out[0], out[1], *kernel_shape[2:])
    xp = _padded(x, pads, out, kernel_shape, strides, dilation_rate)
    dk = np.zeros(kernel_shape)
    for kh in range(kernel_shape[0]):
        for kw in range(kernel_shape[1]):
            patch = xp[_tap(kh, kw, strides, dilation_rate, out)]
            dk[kh, kw] = np.einsum("nhwc,nhwcm->cm", patch, dz)
    return dk


# -- grouped_conv2d: Conv2D(groups=G), as G independent conv2d oracles on channel slices -----


def _slices(total, groups):
    size = total // groups
    return [slice(i * size, (i + 1) * size) for i in range(groups)]


def grouped_conv2d_forward_ref(x, kernel, bias, strides, padding, dilation_rate, groups,
                               activation_name="linear", alpha=0.0):
    """Returns (y, z); kernel (KH, KW, C/G, F)."""
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    z = np.concatenate([
        conv2d_forward_ref(x[..., cs], kernel[..., fs], None, strides, padding,
                           dilation_rate)[1]
        for cs, fs in zip(_slices(x.shape[3], groups), _slices(kernel.shape[3], groups))],
        axis=-1)
    if bias is not None:
        z = z + np.asarray(bias, np.float64)
    return _activation(z, activation_name, alpha), z


def grouped_conv2d_backward_input_ref(dz, kernel, input_shape, strides, padding,
                                      dilation_rate, groups):
    dz = np.asarray(dz, np.float64)
    kernel = np.asarray(kernel, np.float64)
    n, h, w, c = input_shape
    return np.concatenate([
        conv2d_backward_input_ref(dz[..., fs], kernel[..., fs], (n, h, w, c // groups),
                                  strides, padding, dilation_rate)
        for fs in _slices(kernel.shape[3], groups)], axis=-1)


def grouped_conv2d_backward_weight_ref(x, dz, kernel_shape, strides, padding, dilation_rate,
                                       groups):
    x = np.asarray(x, np.float64)
    dz = np.asarray(dz, np.float64)
    kh, kw, cg, f = kernel_shape
    return np.concatenate([
        conv2d_backward_weight_ref(x[..., cs], dz[..., fs], (kh, kw, cg, f // groups), strides,
                                   padding, dilation_rate)
        for cs, fs in zip(_slices(x.shape[3], groups), _slices(f, groups))], axis=-1)
