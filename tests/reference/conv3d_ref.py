"""NumPy float64 oracles for the conv3d ops (slow, obviously correct).

Legend: N batch, D/H/W spatial, C channels, KD/KH/KW kernel, F filters, G groups.
Each op pads x with zeros (Keras 'same': the odd voxel after), then loops over the kernel
taps (kd, kh, kw) and the groups: every tap is one strided slice of the padded input times
a (C/G, F/G) matrix. The transposed conv is written the way JAX defines it (the input
dilated by the strides, padded by Keras's pads, then a 'valid' correlation with the kernel
flipped in space), as conv_ref's 2-D one.
"""

import numpy as np

from tests.reference.conv_ref import _activation, _pads, _transpose_pads


def _geometry(input_shape, kernel_shape, strides, padding, dilation_rate):
    axes = [_pads(input_shape[1 + i], kernel_shape[i], strides[i], dilation_rate[i], padding)
            for i in range(3)]
    return [(before, after) for before, after, _ in axes], tuple(out for _, _, out in axes)


def _padded(x, pads, out, kernel_shape, strides, dilation_rate):
    """x zero-padded, with extra zeros after so every tap slice stays in range."""
    sizes = []
    for i in range(3):
        reach = max((out[i] - 1) * strides[i] + (kernel_shape[i] - 1) * dilation_rate[i] + 1, 0)
        sizes.append(max(pads[i][0] + x.shape[1 + i] + pads[i][1], reach))
    xp = np.zeros((x.shape[0], *sizes, x.shape[4]))
    xp[:, pads[0][0]:pads[0][0] + x.shape[1], pads[1][0]:pads[1][0] + x.shape[2],
       pads[2][0]:pads[2][0] + x.shape[3], :] = x
    return xp


def _tap(k, strides, dilation_rate, out):
    """Slices of the padded input that tap k = (kd, kh, kw) reads for every output voxel."""
    spans = tuple(slice(k[i] * dilation_rate[i],
                        k[i] * dilation_rate[i] + max((out[i] - 1) * strides[i] + 1, 0),
                        strides[i]) for i in range(3))
    return (slice(None), *spans)


def _taps(kernel_shape):
    return np.ndindex(*kernel_shape[:3])


def conv3d_forward_ref(x, kernel, bias, strides, padding, dilation_rate, groups=1,
                       activation_name="linear", alpha=0.0):
    """Returns (y, z): z the pre-activation, y = activation(z); kernel (KD, KH, KW, C/G, F)."""
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    pads, out = _geometry(x.shape, kernel.shape, strides, padding, dilation_rate)
    xp = _padded(x, pads, out, kernel.shape, strides, dilation_rate)
    cg, f = kernel.shape[3], kernel.shape[4]
    fg = f // groups
    z = np.zeros((x.shape[0], *out, f))
    for k in _taps(kernel.shape):
        patch = xp[_tap(k, strides, dilation_rate, out)]
        for g in range(groups):
            z[..., g * fg:(g + 1) * fg] += (patch[..., g * cg:(g + 1) * cg]
                                            @ kernel[k][:, g * fg:(g + 1) * fg])
    if bias is not None:
        z = z + np.asarray(bias, np.float64)
    return _activation(z, activation_name, alpha), z


def conv3d_backward_input_ref(dz, kernel, input_shape, strides, padding, dilation_rate,
                              groups=1):
    dz = np.asarray(dz, np.float64)
    kernel = np.asarray(kernel, np.float64)
    pads, out = _geometry(input_shape, kernel.shape, strides, padding, dilation_rate)
    dxp = _padded(np.zeros(input_shape), pads, out, kernel.shape, strides, dilation_rate)
    cg, fg = kernel.shape[3], kernel.shape[4] // groups
    for k in _taps(kernel.shape):
        tap = _tap(k, strides, dilation_rate, out)
        for g in range(groups):
            dxp[(*tap[:4], slice(g * cg, (g + 1) * cg))] += (
                dz[..., g * fg:(g + 1) * fg] @ kernel[k][:, g * fg:(g + 1) * fg].T)
    (pf, _), (pt, _), (pl, _) = pads
    return dxp[:, pf:pf + input_shape[1], pt:pt + input_shape[2],
               pl:pl + input_shape[3], :].copy()


def conv3d_backward_weight_ref(x, dz, kernel_shape, strides, padding, dilation_rate, groups=1):
    x = np.asarray(x, np.float64)
    dz = np.asarray(dz, np.float64)
    pads, out = _geometry(x.shape, kernel_shape, strides, padding, dilation_rate)
    xp = _padded(x, pads, out, kernel_shape, strides, dilation_rate)
    cg, fg = kernel_shape[3], kernel_shape[4] // groups
    dw = np.zeros(kernel_shape)
    for k in _taps(kernel_shape):
        patch = xp[_tap(k, strides, dilation_rate, out)]
        for g in range(groups):
            dw[k][:, g * fg:(g + 1) * fg] = np.einsum(
                "ndhwc,ndhwf->cf", patch[..., g * cg:(g + 1) * cg], dz[..., g * fg:(g + 1) * fg])
    return dw


def conv3d_backward_ref(dy, x, kernel, bias, strides, padding, dilation_rate, groups=1,
                        activation_name="linear", alpha=0.0, use_bias=True,
                        need_input_grad=True):
    """A Conv3D layer's whole backward (dx or None, dkernel, dbias or None) from dL/dy, z
    recomputed in float64 from x, kernel and bias."""
    from tests.reference.activation_ref import activation_backward_ref

    _, z = conv3d_forward_ref(x, kernel, bias, strides, padding, dilation_rate, groups)
    dz = activation_backward_ref(dy, z, activation_name, alpha)
    kernel = np.asarray(kernel)
    dx = None
    if need_input_grad:
        dx = conv3d_backward_input_ref(dz, kernel, np.shape(x), strides, padding,
                                       dilation_rate, groups)
    dk = conv3d_backward_weight_ref(x, dz, kernel.shape, strides, padding, dilation_rate,
                                    groups)
    db = dz.reshape(-1, dz.shape[-1]).sum(axis=0) if use_bias else None
    return dx, dk, db


# -- conv3d_transpose ---------------------------------------------------------------------


def _transpose_input(x, kernel_shape, strides, padding, output_padding, dilation_rate):
    """x dilated by the strides and padded: the input of the equivalent correlation, and
    the slices that pick x's voxels back out of it."""
    ops = (None,) * 3 if output_padding is None else tuple(output_padding)
    pads = [_transpose_pads(kernel_shape[i], strides[i], dilation_rate[i], padding, ops[i])
            for i in range(3)]
    dilated = [(x.shape[1 + i] - 1) * strides[i] + 1 for i in range(3)]
    xp = np.zeros((x.shape[0], *(p[0] + n + p[1] for p, n in zip(pads, dilated)), x.shape[4]))
    picks = (slice(None), *(slice(p[0], p[0] + n, s)
                            for p, n, s in zip(pads, dilated, strides)))
    xp[picks] = x
    return xp, picks


def _correlation_kernel(kernel):
    """(KD, KH, KW, F, C) -> the flipped (KD, KH, KW, C, F) kernel of the correlation."""
    return np.asarray(kernel, np.float64)[::-1, ::-1, ::-1].transpose(0, 1, 2, 4, 3)


def conv3d_transpose_forward_ref(x, kernel, bias, strides, padding, output_padding,
                                 dilation_rate, activation_name="linear", alpha=0.0):
    """Returns (y, z); kernel (KD, KH, KW, F, C)."""
    xp, _ = _transpose_input(np.asarray(x, np.float64), np.shape(kernel), strides, padding,
                             output_padding, dilation_rate)
    return conv3d_forward_ref(xp, _correlation_kernel(kernel), bias, (1, 1, 1), "valid",
                              dilation_rate, 1, activation_name, alpha)


def conv3d_transpose_backward_ref(dy, x, kernel, bias, strides, padding, output_padding,
                                  dilation_rate, activation_name="linear", alpha=0.0,
                                  use_bias=True, need_input_grad=True):
    """(dx or None, dkernel, dbias or None) of conv3d_transpose_forward_ref."""
    from tests.reference.activation_ref import activation_backward_ref

    xp, picks = _transpose_input(np.asarray(x, np.float64), np.shape(kernel), strides,
                                 padding, output_padding, dilation_rate)
    kc = _correlation_kernel(kernel)
    _, z = conv3d_forward_ref(xp, kc, bias, (1, 1, 1), "valid", dilation_rate)
    dz = activation_backward_ref(dy, z, activation_name, alpha)
    dx = None
    if need_input_grad:
        dxp = conv3d_backward_input_ref(dz, kc, xp.shape, (1, 1, 1), "valid", dilation_rate)
        dx = dxp[picks].copy()
    dkc = conv3d_backward_weight_ref(xp, dz, kc.shape, (1, 1, 1), "valid", dilation_rate)
    dk = dkc[::-1, ::-1, ::-1].transpose(0, 1, 2, 4, 3).copy()
    db = dz.reshape(-1, dz.shape[-1]).sum(axis=0) if use_bias else None
    return dx, dk, db
