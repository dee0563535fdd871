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


# -- clahe: Keras 3's ContrastLimitedAdaptiveHistogramEqualization --------------------------
def clahe_forward_ref(x, value_range=(0, 255), clip_limit=4.0, tile_grid_size=(8, 8)):
    """Keras's _clahe whole arrays at a time, in x's dtype: edge padding to whole tiles,
    per-tile histograms of the int32 levels, clipping with the excess spread evenly, the
    normalized cdf, and the bilinear blend of the four nearest tiles' tables."""
    n, h, w, c = x.shape
    gh, gw = tile_grid_size
    th, tw = -(-h // gh), -(-w // gw)
    v = _rescale(x, value_range, (0, 255))
    # Keras's pad(mode="symmetric") is torch's 'replicate' on the torch backend.
    padded = np.pad(v, [(0, 0), (0, th * gh - h), (0, tw * gw - w), (0, 0)], mode="edge")
    levels = np.clip(np.trunc(np.nan_to_num(padded, nan=0.0)), 0, 255).astype(np.int64)
    tiles = levels.reshape(n, gh, th, gw, tw, c).transpose(0, 1, 3, 5, 2, 4)
    tiles = tiles.reshape(n, gh, gw, c, th * tw)
    hist = (tiles[..., None] == np.arange(256)).sum(axis=-2).astype(x.dtype)
    if clip_limit > 0:
        # Keras on torch: one_hot counts in int64, so the limit is cast (truncated) to int.
        limit = x.dtype.type(int(clip_limit * (th * tw) / 256.0))
        clipped = np.minimum(hist, limit)
        hist = clipped + (hist - clipped).sum(axis=-1, keepdims=True) / x.dtype.type(256)
    cdf = np.cumsum(hist, axis=-1)
    cdf_min = cdf.min(axis=-1, keepdims=True)
    den = x.dtype.type(th * tw) - cdf_min
    den = np.where(den == 0, 1, den)
    table = np.clip((cdf - cdf_min) * 255.0 / den, 0, 255).astype(x.dtype)
    table = np.concatenate([table[:, :1], table, table[:, -1:]], axis=1)
    table = np.concatenate([table[:, :, :1], table, table[:, :, -1:]], axis=2)

    def grid(size, tile, count):
        g = (np.arange(size, dtype=x.dtype) - x.dtype.type(tile / 2.0)) / x.dtype.type(tile) + 1
        lo = np.floor(g)
        return (np.clip(lo, 0, count + 1).astype(int), np.clip(lo + 1, 0, count + 1).astype(int),
                g - lo)

    y0, y1, wy = grid(h, th, gh)
    x0, x1, wx = grid(w, tw, gw)
    lev = levels[:, :h, :w, :]
    b = np.arange(n)[:, None, None, None]
    ch = np.arange(c)[None, None, None, :]
    wy, wx = wy[None, :, None, None], wx[None, None, :, None]

    def at(ty, tx):
        return table[b, ty[None, :, None, None], tx[None, None, :, None], ch, lev]

    top = at(y0, x0) * (1 - wx) + at(y0, x1) * wx
    bottom = at(y1, x0) * (1 - wx) + at(y1, x1) * wx
    return _rescale(top * (1 - wy) + bottom * wy, (0, 255), value_range).astype(x.dtype)
