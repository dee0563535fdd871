"""float64 NumPy oracles of the spatial ops (native/spatial.pyx, opencl/spatial.cl).

Upsampling is written as two interpolation matrices, A_h (HO, H) and A_w (WO, W):
y[n] = A_h x[n] A_w^T per channel, so the backward is exactly the adjoint,
dx[n] = A_h^T dy[n] A_w. 'nearest' is Keras's ops.repeat; 'bilinear' is
torch.nn.functional.interpolate(align_corners=False, antialias=False), the Keras 3 torch
backend's ops.image.resize.
"""

import numpy as np


def pad2d_forward_ref(x, padding):
    (t, b), (l, r) = padding
    return np.pad(np.asarray(x, np.float64), ((0, 0), (t, b), (l, r), (0, 0)))


def pad2d_backward_ref(dy, padding):
    (t, b), (l, r) = padding
    dy = np.asarray(dy, np.float64)
    return dy[:, t:dy.shape[1] - b, l:dy.shape[2] - r, :]


def interpolation_matrix(size_in, factor, interpolation):
    """A (size_in * factor, size_in): row o holds the weights of output o over the input."""
    size_out = size_in * factor
    a = np.zeros((size_out, size_in))
    o = np.arange(size_out)
    if interpolation == "nearest":
        a[o, o // factor] = 1.0
        return a
    src = np.maximum((o + 0.5) * (size_in / size_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), size_in - 1)
    i1 = np.minimum(i0 + 1, size_in - 1)
    l1 = src - i0
    np.add.at(a, (o, i0), 1.0 - l1)
    np.add.at(a, (o, i1), l1)
    return a


def upsample2d_forward_ref(x, size, interpolation="nearest"):
    x = np.asarray(x, np.float64)
    ah = interpolation_matrix(x.shape[1], size[0], interpolation)
    aw = interpolation_matrix(x.shape[2], size[1], interpolation)
    return np.einsum("oh,nhwc,pw->nopc", ah, x, aw)


def upsample2d_backward_ref(dy, input_shape, size, interpolation="nearest"):
    dy = np.asarray(dy, np.float64)
    ah = interpolation_matrix(input_shape[1], size[0], interpolation)
    aw = interpolation_matrix(input_shape[2], size[1], interpolation)
    return np.einsum("oh,nopc,pw->nhwc", ah, dy, aw).reshape(input_shape)


# -- 3-D spatial ops (ZeroPadding3D, Cropping3D, UpSampling3D; branch vol) -------------------

def pad3d_forward_ref(x, padding):
    return np.pad(np.asarray(x, np.float64), ((0, 0), *padding, (0, 0)))


def pad3d_backward_ref(dy, padding):
    dy = np.asarray(dy, np.float64)
    (f, k), (t, b), (l, r) = padding
    return dy[:, f:dy.shape[1] - k, t:dy.shape[2] - b, l:dy.shape[3] - r, :]


def upsample3d_forward_ref(x, size):
    """Each voxel repeated: y = A_d x A_h x A_w with 'nearest' interpolation matrices."""
    x = np.asarray(x, np.float64)
    ad, ah, aw = (interpolation_matrix(n, s, "nearest") for n, s in zip(x.shape[1:4], size))
    return np.einsum("ad,ndhwc,bh,ew->nabec", ad, x, ah, aw)


def upsample3d_backward_ref(dy, input_shape, size):
    """The adjoint: dx = A_d^T dy A_h^T A_w^T."""
    dy = np.asarray(dy, np.float64)
    ad, ah, aw = (interpolation_matrix(n, s, "nearest")
                  for n, s in zip(input_shape[1:4], size))
    return np.einsum("ad,nabec,bh,ew->ndhwc", ad, dy, ah, aw).reshape(input_shape)
