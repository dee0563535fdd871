"""Float64 NumPy references of the box and mixing ops (native/augment_mix.pyx): Keras 3's
CutMix / MixUp / RandomErasing masks written out as array code."""

import numpy as np


def _masks(boxes, h, w):
    """(N, H, W, 1) bool: Keras's (grid_x >= x0) & (grid_x < x1) & (grid_y >= y0) & ..."""
    b = np.asarray(boxes, np.float64)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    x0, x1, y0, y1 = (b[:, k, None, None] for k in range(4))
    return ((cols >= x0) & (cols < x1) & (rows >= y0) & (rows < y1))[..., None]


def image_mix_forward_ref(x, permutation, weights, boxes):
    x = np.asarray(x, np.float64)
    w = np.asarray(weights, np.float64)[:, None, None, None]
    mixed = w * x + (1.0 - w) * x[np.asarray(permutation)]
    return np.where(_masks(boxes, *x.shape[1:3]), mixed, x)


def image_mix_backward_ref(dy, permutation, weights, boxes):
    """The adjoint by scattering (the kernels gather): dx[n] += own share,
    dx[perm[n]] += the partner's share."""
    dy = np.asarray(dy, np.float64)
    w = np.asarray(weights, np.float64)[:, None, None, None]
    inside = _masks(boxes, *dy.shape[1:3])
    dx = np.where(inside, w, 1.0) * dy
    np.add.at(dx, np.asarray(permutation), np.where(inside, 1.0 - w, 0.0) * dy)
    return dx


def image_erase_forward_ref(x, boxes, fill, value_range):
    x = np.asarray(x, np.float64)
    fill = np.clip(np.broadcast_to(np.asarray(fill, np.float64), x.shape), *value_range)
    return np.where(_masks(boxes, *x.shape[1:3]), fill, x)


def image_blur_forward_ref(x, vertical, horizontal, blur, value_range):
    x = np.asarray(x, np.float64)
    k = len(vertical)
    pad = k // 2
    taps = np.outer(np.asarray(vertical, np.float64), np.asarray(horizontal, np.float64))
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    h, w = x.shape[1:3]
    blurred = sum(taps[i, j] * padded[:, i:i + h, j:j + w] for i in range(k) for j in range(k))
    on = (np.asarray(blur) != 0)[:, None, None, None]
    return np.clip(np.where(on, blurred, x), *value_range)
