"""Float64 oracles for image augmentation (slow, obviously correct).

Legend: N batch, H/W spatial, C channels.
The resampling oracle is scipy.ndimage.affine_transform, one channel at a time, exactly as
Keras's legacy ``apply_affine_transform`` calls it; the matrix oracle composes Keras's 3x3
matrices one image at a time in Keras's order (rotation, shift, shear, zoom, centre offset,
row/column swap), then folds in the flips Keras applies as array reversals afterwards.
"""

import numpy as np
import scipy.ndimage


def affine_resample_ref(x, matrices, order, fill_mode, cval):
    """x (N, H, W, C); matrices (N, 2, 3): input (row, col) = m[:, :2] @ (r, c) + m[:, 2]."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    for n in range(x.shape[0]):
        for c in range(x.shape[3]):
            out[n, :, :, c] = scipy.ndimage.affine_transform(
                x[n, :, :, c], matrices[n][:, :2], matrices[n][:, 2], order=order,
                mode=fill_mode, cval=cval)
    return out


def keras_matrix_ref(h, w, theta=0, tx=0, ty=0, shear=0, zx=1, zy=1, flip_horizontal=False,
                     flip_vertical=False):
    """The 2x3 (row, col) matrix of one channels_last image: Keras's transform, then flips."""
    t = np.deg2rad(theta)
    rotation = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    shift = np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]])
    s = np.deg2rad(shear)
    shear_m = np.array([[1, -np.sin(s), 0], [0, np.cos(s), 0], [0, 0, 1]])
    zoom = np.array([[zx, 0, 0], [0, zy, 0], [0, 0, 1]])
    m = rotation @ shift @ shear_m @ zoom
    o_x, o_y = h / 2 - 0.5, w / 2 - 0.5
    m = np.array([[1, 0, o_x], [0, 1, o_y], [0, 0, 1]]) @ m @ np.array(
        [[1, 0, -o_x], [0, 1, -o_y], [0, 0, 1]])
    m = m[[1, 0]][:, [1, 0, 2]]   # Keras's swap of the x and y axes (M' = PMP)
    flip = np.eye(3)
    if flip_vertical:
        flip = np.array([[-1, 0, h - 1], [0, 1, 0], [0, 0, 1]]) @ flip
    if flip_horizontal:
        flip = np.array([[1, 0, 0], [0, -1, w - 1], [0, 0, 1]]) @ flip
    m = np.vstack([m, [0, 0, 1]]) @ flip
    return m[:2]
