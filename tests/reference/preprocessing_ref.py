"""Float64 NumPy references of the preprocessing ops (native/preprocessing.pyx): Keras 3's
map_coordinates rules written out as array code, slow and obviously right."""

import numpy as np

FILL_MODES = ("constant", "nearest", "wrap", "mirror", "reflect")


def _mirror(i, n):
    s = n - 1
    if s == 0:
        return np.zeros_like(i)
    return np.abs((i + s) % (2 * s) - s)


def _fix(i, n, mode):
    if mode == "wrap":
        return i % n
    if mode == "mirror":
        return _mirror(i, n)
    if mode == "reflect":
        return (_mirror(2 * i + 1, 2 * n + 1) - 1) // 2
    return np.clip(i, 0, n - 1)


def _nodes(coord, n, interpolation, mode):
    """[(fixed index, inside, weight)] along one axis."""
    if interpolation == "nearest":
        lo = np.rint(coord).astype(np.int64)
        nodes = [(lo, np.ones_like(coord))]
    else:
        f = np.floor(coord)
        lo = f.astype(np.int64)
        nodes = [(lo, 1 - (coord - f)), (lo + 1, coord - f)]
    out = []
    for idx, w in nodes:
        inside = (idx >= 0) & (idx < n) if mode == "constant" else np.ones(idx.shape, bool)
        out.append((_fix(idx, n, mode), inside, w))
    return out


def _coords(m, ho, wo):
    r, c = np.meshgrid(np.arange(ho, dtype=np.float64), np.arange(wo, dtype=np.float64),
                       indexing="ij")
    m = np.asarray(m, np.float64)
    a0, a1, a2, b0, b1, b2 = m[:6]
    den = m[6] * c + m[7] * r + 1.0 if m.size == 8 else 1.0
    return (b0 * c + b1 * r + b2) / den, (a0 * c + a1 * r + a2) / den


def image_affine_forward_ref(x, matrices, output_size, interpolation="bilinear",
                             fill_mode="constant", fill_value=0.0):
    x = np.asarray(x, np.float64)
    n, h, w, c = x.shape
    ho, wo = output_size
    y = np.zeros((n, ho, wo, c))
    for i in range(n):
        rows, cols = _coords(matrices[i], ho, wo)
        for ri, rin, rw in _nodes(rows, h, interpolation, fill_mode):
            for ci, cin, cw in _nodes(cols, w, interpolation, fill_mode):
                val = np.where((rin & cin)[..., None], x[i][ri, ci], fill_value)
                y[i] += (rw * cw)[..., None] * val
    return y


def image_affine_backward_ref(dy, matrices, input_shape, interpolation="bilinear",
                              fill_mode="constant"):
    dy = np.asarray(dy, np.float64)
    n, ho, wo, _ = dy.shape
    dx = np.zeros(input_shape)
    for i in range(n):
        rows, cols = _coords(matrices[i], ho, wo)
        for ri, rin, rw in _nodes(rows, input_shape[1], interpolation, fill_mode):
            for ci, cin, cw in _nodes(cols, input_shape[2], interpolation, fill_mode):
                wgt = np.where(rin & cin, rw * cw, 0.0)
                np.add.at(dx[i], (ri, ci), wgt[..., None] * dy[i])
    return dx


def channel_affine_forward_ref(x, scale, offset=None):
    x = np.asarray(x, np.float64)
    k = np.size(scale)
    y = x.reshape(-1, k) * np.asarray(scale, np.float64)
    if offset is not None:
        y = y + np.asarray(offset, np.float64)
    return y.reshape(x.shape)


def image_adjust_forward_ref(x, contrast, delta, value_range):
    x = np.asarray(x, np.float64)
    y = x
    if contrast is not None:
        mean = x.mean(axis=(1, 2), keepdims=True)
        y = (x - mean) * np.asarray(contrast, np.float64)[:, None, None, None] + mean
    if delta is not None:
        y = y + np.asarray(delta, np.float64)[:, None, None, None]
    return np.clip(y, value_range[0], value_range[1])


# -- auggeo: RandomPerspective's projective resampling (the affine references take 8-vectors)

def image_projective_forward_ref(x, transforms, output_size, interpolation="bilinear",
                                 fill_mode="constant", fill_value=0.0):
    return image_affine_forward_ref(x, transforms, output_size, interpolation, fill_mode,
                                    fill_value)


def image_projective_backward_ref(dy, transforms, input_shape, interpolation="bilinear",
                                  fill_mode="constant"):
    return image_affine_backward_ref(dy, transforms, input_shape, interpolation, fill_mode)


# -- auggeo: RandomElasticTransform's per-pixel resampling

def image_remap_forward_ref(x, offsets, interpolation="bilinear", fill_mode="constant",
                            fill_value=0.0, value_range=(-np.inf, np.inf)):
    x = np.asarray(x, np.float64)
    coords = np.array(offsets, np.float64)
    rows, cols = np.meshgrid(np.arange(coords.shape[1]), np.arange(coords.shape[2]),
                             indexing="ij")
    coords[..., 0] += rows
    coords[..., 1] += cols
    n, h, w, c = x.shape
    y = np.zeros(coords.shape[:3] + (c,))
    for i in range(n):
        for ri, rin, rw in _nodes(coords[i, ..., 0], h, interpolation, fill_mode):
            for ci, cin, cw in _nodes(coords[i, ..., 1], w, interpolation, fill_mode):
                val = np.where((rin & cin)[..., None], x[i][ri, ci], fill_value)
                y[i] += (rw * cw)[..., None] * val
    return np.clip(y, *value_range)
