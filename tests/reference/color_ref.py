"""NumPy float64 oracle of color_transform_forward (native/color.pyx, opencl/color.cl):
Keras 3's colour transforms written from keras/src/layers/preprocessing/image_preprocessing
and keras/src/backend/torch/image.py, whole arrays at a time."""

import numpy as np


def _rescale(x, a, b):
    if a[0] == b[0] and a[1] == b[1]:
        return x
    return (x - a[0]) / (a[1] - a[0]) * (b[1] - b[0]) + b[0]


def _gray(x):
    return 0.2989 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]


def rgb_to_hsv_ref(x, eps=np.finfo(np.float64).eps):
    x = np.where(np.abs(x) < eps, 0.0, x)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    value = np.maximum(np.maximum(r, g), b)
    span = value - np.minimum(np.minimum(r, g), b)
    sat = np.where(value > 0, span / np.where(value > 0, value, 1.0), 0.0)
    norm = 1.0 / (6.0 * np.where(span > 0, span, 1.0))
    hue = np.where(value == g, norm * (b - r) + 2.0 / 6.0, norm * (r - g) + 4.0 / 6.0)
    hue = np.where(value == r, norm * (g - b), hue)
    hue = np.where(span > 0, hue, 0.0) + (hue < 0.0)
    return np.stack([hue, sat, value], axis=-1)


def hsv_to_rgb_ref(x):
    h, s, v = x[..., 0], x[..., 1], x[..., 2]
    dh = np.mod(h, 1.0) * 6.0
    dr = np.clip(np.abs(dh - 3.0) - 1.0, 0.0, 1.0)
    dg = np.clip(2.0 - np.abs(dh - 2.0), 0.0, 1.0)
    db = np.clip(2.0 - np.abs(dh - 4.0), 0.0, 1.0)
    return np.stack([v * (1 - s + s * d) for d in (dr, dg, db)], axis=-1)


def _equalize_ref(x, lo, hi, bins):
    y = np.empty_like(x)
    for ch in range(x.shape[-1]):
        v = x[..., ch] * (255.0 / (hi - lo)) - lo * (255.0 / (hi - lo))
        idx = np.clip(np.trunc(v * (bins - 1) / 255.0).astype(np.int64), 0, bins - 1)
        hist = np.bincount(idx.ravel(), minlength=bins)
        out = v
        if np.count_nonzero(hist) > 1:
            cdf = np.cumsum(hist)
            cdf_min = cdf[np.nonzero(cdf)[0][0]]
            den = cdf[-1] - cdf_min or 1
            lut = np.clip(np.round((cdf - cdf_min) * 255 / den), 0, 255)
            out = lut[np.clip(v / 255.0 * (bins - 1), 0, bins - 1).astype(np.int64)]
        y[..., ch] = out * ((hi - lo) / 255.0) + lo
    return y


def color_transform_forward_ref(x, transform, params=None, value_range=(0, 255), bins=256):
    x = np.asarray(x, np.float64)
    lo, hi = map(float, value_range)
    vr, full = (lo, hi), (0.0, 255.0)
    p = None if params is None else np.asarray(params, np.float64)
    a = None if p is None else p[:, 0].reshape(-1, 1, 1, 1)
    b = None if p is None else p[:, 1].reshape(-1, 1, 1, 1)
    if transform == "auto_contrast":
        v = _rescale(x, vr, full)
        low, high = v.min(axis=(1, 2), keepdims=True), v.max(axis=(1, 2), keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = 255.0 / (high - low)
            y = _rescale(np.clip(v * scale - low * scale, 0, 255), full, vr)
        return np.where(np.isnan(y), x, y)
    if transform == "equalize":
        return _equalize_ref(x, lo, hi, bins)
    if transform == "solarize":
        v = np.clip(_rescale(x, vr, full) + a, 0, 255)
        return _rescale(np.where(v < b, v, 255 - v), full, vr)
    if transform == "invert":
        return np.where(a != 0, b - x, x)
    if transform == "posterize":
        v = np.trunc(np.clip(_rescale(x, vr, full), 0, 255)).astype(np.int64)
        shift = a.astype(np.int64)
        return _rescale(((v >> shift) << shift).astype(np.float64), full, vr)
    if transform == "grayscale":
        g = _gray(x)[..., None] if x.shape[-1] == 3 else x
        return np.where(a != 0, np.broadcast_to(g, x.shape), x)
    if transform == "degenerate":
        return np.clip(x + a * (_gray(x)[..., None] - x), lo, hi)
    if transform == "sharpen":
        h, w = x.shape[1:3]
        padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        smooth = sum(padded[:, 1 + dr:1 + dr + h, 1 + dc:1 + dc + w]
                     * (5.0 / 13.0 if dr == dc == 0 else 1.0 / 13.0)
                     for dr in (-1, 0, 1) for dc in (-1, 0, 1))
        return np.clip(x + (1.0 - 2.0 * a) * (smooth - x), lo, hi)
    if transform == "hue":
        hsv = rgb_to_hsv_ref(_rescale(x, vr, (0.0, 1.0)))
        hue = hsv[..., 0] + a[..., 0]
        hue = np.where(hue > 1.0, hue - 1.0, hue)
        hue = np.where(hue < 0.0, hue + 1.0, hue)
        rgb = hsv_to_rgb_ref(np.stack([hue, hsv[..., 1], hsv[..., 2]], axis=-1))
        return _rescale(np.clip(rgb, 0, 1), (0.0, 1.0), vr)
    if transform == "saturation":
        hsv = rgb_to_hsv_ref(x)
        sat = np.clip(hsv[..., 1] * a[..., 0], lo, hi)
        return hsv_to_rgb_ref(np.stack([hsv[..., 0], sat, hsv[..., 2]], axis=-1))
    raise ValueError(transform)
