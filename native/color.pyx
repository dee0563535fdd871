"""Kernels of Keras 3's colour augmentation layers (pynn/layers/color.py), NHWC.

Legend: N batch, H/W spatial, C channels, P = H*W pixels of an image, B histogram bins.

Design:
- One op, color_transform_forward, one pass per image: the layer draws each image's
  parameters in NumPy (Keras's get_random_transformation) and the kernel applies Keras's
  transform_images with them. Images are the items of pynn's worker team (equalize's items
  are channels: Keras's histogram pools the whole batch per channel).
- Arithmetic is in x's dtype, step by step in Keras's order (float32 for float32 images), so
  the truncations Keras makes (posterize's uint8 cast, equalize's bin index) fall where
  Keras's do; the transforms are Keras's torch backend ops (rgb_to_hsv's eps zeroing and hue
  formula, rgb_to_grayscale's 0.2989/0.587/0.114, hsv_to_rgb's remainder).
- No gradient: the layers sit at a model's input (as RandomContrast), and posterize,
  equalize and solarize are step functions.
"""
from libc.math cimport fabs, floor, rint, isnan
from libc.float cimport FLT_EPSILON, DBL_EPSILON
from cython.parallel cimport prange
from _openmp cimport omp_get_max_threads

from pynn.backend.operands import color as operands
from pynn.backend.operands.common import HOST

include "_team.pxi"

import numpy as np

ctypedef fused floating:
    float
    double

# Codes of operands.TRANSFORMS, in that order.
cdef enum:
    AUTO_CONTRAST = 0
    EQUALIZE = 1
    SOLARIZE = 2
    INVERT = 3
    POSTERIZE = 4
    GRAYSCALE = 5
    DEGENERATE = 6
    SHARPEN = 7
    HUE = 8
    SATURATION = 9

# Below this many elements a call runs on the calling thread.
cdef enum:
    PARALLEL_MIN = 32768


ctypedef struct _ColorJob:
    bint is_double
    int transform
    const void* x
    const void* params
    void* y
    long* hist           # equalize: B counts per thread slot
    Py_ssize_t N, P, W, C, B
    double lo, hi


cdef inline floating _rescale(floating v, floating a0, floating a1, floating b0,
                              floating b1) noexcept nogil:
    """Keras's _transform_value_range from [a0, a1] to [b0, b1] (the identity when equal)."""
    if a0 == b0 and a1 == b1:
        return v
    return (v - a0) / (a1 - a0) * (b1 - b0) + b0


cdef inline floating _clip(floating v, floating lo, floating hi) noexcept nogil:
    return lo if v < lo else (hi if v > hi else v)


cdef inline floating _gray(const floating* px) noexcept nogil:
    cdef floating r = <floating>0.2989 * px[0]
    cdef floating g = <floating>0.587 * px[1]
    cdef floating b = <floating>0.114 * px[2]
    return r + g + b


cdef inline void _rgb_to_hsv(floating r, floating g, floating b, floating eps,
                             floating* hsv) noexcept nogil:
    """keras.src.backend.torch.image.rgb_to_hsv on one pixel."""
    cdef floating value, minimum, span, safe_value, safe_span, norm, hue
    r = 0 if fabs(r) < eps else r
    g = 0 if fabs(g) < eps else g
    b = 0 if fabs(b) < eps else b
    value = r if r > g else g
    value = value if value > b else b
    minimum = r if r < g else g
    minimum = minimum if minimum < b else b
    span = value - minimum
    safe_value = value if value > 0 else 1
    safe_span = span if span > 0 else 1
    norm = <floating>1.0 / (<floating>6.0 * safe_span)
    if value == g:
        hue = norm * (b - r) + <floating>(2.0 / 6.0)
    else:
        hue = norm * (r - g) + <floating>(4.0 / 6.0)
    if value == r:
        hue = norm * (g - b)
    hsv[0] = (hue if span > 0 else 0) + (1 if hue < 0 else 0)
    hsv[1] = span / safe_value if value > 0 else 0
    hsv[2] = value


cdef inline void _hsv_to_rgb(floating h, floating s, floating v, floating* rgb) noexcept nogil:
    """keras.src.backend.torch.image.hsv_to_rgb on one pixel."""
    cdef floating dh = (h - <floating>floor(h)) * 6
    cdef floating one_minus_s = 1 - s
    rgb[0] = v * (one_minus_s + s * _clip(<floating>fabs(dh - 3) - 1, 0, 1))
    rgb[1] = v * (one_minus_s + s * _clip(2 - <floating>fabs(dh - 2), 0, 1))
    rgb[2] = v * (one_minus_s + s * _clip(2 - <floating>fabs(dh - 4), 0, 1))


cdef void _pixels(const floating* x, floating* y, const floating* prm, Py_ssize_t P,
                  Py_ssize_t C, int transform, floating lo, floating hi) noexcept nogil:
    """The per-pixel transforms of one image (P pixels of C channels)."""
    cdef Py_ssize_t p, ch, i
    cdef floating a = prm[0], b = prm[1], v, g
    cdef floating eps = FLT_EPSILON if floating is float else DBL_EPSILON
    cdef floating hsv[3]
    cdef floating rgb[3]
    # Keras's uint8 shift: 8 or more bits dropped leave 0 (NaN drops none).
    cdef int shift = 8 if a >= 8 else (<int>a if a > 0 else 0)
    cdef unsigned int bits
    cdef Py_ssize_t E = P * C
    # One loop per transform (the switch outside it), so each inner loop is branch-light.
    if transform == SOLARIZE:
        for i in range(E):
            v = _clip(_rescale(x[i], lo, hi, 0, 255) + a, 0, 255)
            v = v if v < b else 255 - v
            y[i] = _rescale(v, 0, 255, lo, hi)
    elif transform == INVERT:
        for i in range(E):
            y[i] = b - x[i] if a != 0 else x[i]
    elif transform == POSTERIZE:
        for i in range(E):
            # Keras casts to uint8 (truncation); out-of-range values saturate here, NaN
            # reads 0.
            v = _clip(_rescale(x[i], lo, hi, 0, 255), 0, 255)
            v = v if v == v else 0
            bits = (<unsigned int>v >> shift) << shift
            y[i] = _rescale(<floating>bits, 0, 255, lo, hi)
    elif transform == GRAYSCALE:
        for p in range(P):
            i = p * C
            g = _gray(x + i) if C == 3 else x[i]
            for ch in range(C):
                y[i + ch] = g if a != 0 else x[i + ch]
    elif transform == DEGENERATE:
        for p in range(P):
            i = p * C
            g = _gray(x + i)
            for ch in range(C):
                y[i + ch] = _clip(x[i + ch] + a * (g - x[i + ch]), lo, hi)
    elif transform == HUE:
        for p in range(P):
            i = p * C
            _rgb_to_hsv(_rescale(x[i], lo, hi, 0, 1), _rescale(x[i + 1], lo, hi, 0, 1),
                        _rescale(x[i + 2], lo, hi, 0, 1), eps, hsv)
            v = hsv[0] + a
            v = v - 1 if v > 1 else v
            v = v + 1 if v < 0 else v
            _hsv_to_rgb(v, hsv[1], hsv[2], rgb)
            for ch in range(3):
                y[i + ch] = _rescale(_clip(rgb[ch], 0, 1), 0, 1, lo, hi)
    else:  # SATURATION: on the raw values, the saturation clipped to the value range
        for p in range(P):
            i = p * C
            _rgb_to_hsv(x[i], x[i + 1], x[i + 2], eps, hsv)
            _hsv_to_rgb(hsv[0], _clip(hsv[1] * a, lo, hi), hsv[2], y + i)


cdef void _auto_contrast(const floating* x, floating* y, Py_ssize_t P, Py_ssize_t C,
                         floating lo, floating hi) noexcept nogil:
    """One image: each channel stretched from its [min, max] to the value range; where the
    stretch gives NaN (a flat channel) the input stays, as Keras's where(isnan)."""
    cdef Py_ssize_t p, ch
    cdef floating v, low, high, scale, offset
    for ch in range(C):
        low = high = _rescale(x[ch], lo, hi, 0, 255)
        for p in range(1, P):
            v = _rescale(x[p * C + ch], lo, hi, 0, 255)
            low = v if v < low else low
            high = v if v > high else high
        scale = <floating>255.0 / (high - low)
        offset = -low * scale
        for p in range(P):
            v = _rescale(x[p * C + ch], lo, hi, 0, 255) * scale
            v = _rescale(_clip(v + offset, 0, 255), 0, 255, lo, hi)
            y[p * C + ch] = x[p * C + ch] if isnan(v) else v


cdef void _sharpen(const floating* x, floating* y, Py_ssize_t P, Py_ssize_t W, Py_ssize_t C,
                   floating factor, floating lo, floating hi) noexcept nogil:
    """One image: Keras's 3x3 smoothing (1/13 around, 5/13 centre, zero 'same' padding)
    blended as x + (1 - 2 * factor) * (smooth - x), clipped."""
    cdef Py_ssize_t H = P // W, r, c, ch, dr, dc, rr, cc
    cdef floating edge = <floating>(1.0 / 13.0), centre = <floating>(5.0 / 13.0)
    cdef floating blend = 1 - factor * 2, s, v
    for r in range(H):
        for c in range(W):
            for ch in range(C):
                s = 0
                for dr in range(-1, 2):
                    rr = r + dr
                    if rr < 0 or rr >= H:
                        continue
                    for dc in range(-1, 2):
                        cc = c + dc
                        if cc < 0 or cc >= W:
                            continue
                        s = s + (centre if dr == 0 and dc == 0 else edge) * x[(rr * W + cc) * C
                                                                             + ch]
                v = x[(r * W + c) * C + ch]
                y[(r * W + c) * C + ch] = _clip(v + blend * (s - v), lo, hi)


cdef void _equalize(const floating* x, floating* y, long* hist, Py_ssize_t count,
                    Py_ssize_t C, Py_ssize_t B, double lo, double hi) noexcept nogil:
    """Channel ch = 0 of x (count values, stride C): Keras's Equalization over the batch,
    the histogram of B bins in ``hist``."""
    cdef Py_ssize_t i, k, nonzero = 0
    cdef floating v, bins1 = <floating>(B - 1), lut_value, idx_value
    cdef long cdf = 0, cdf_min = -1
    # Keras's _scale_values: scale and offset in double, applied in x's dtype.
    cdef double scale = 255.0 / (hi - lo)
    cdef floating to255 = <floating>scale, off255 = <floating>(-lo * scale)
    cdef floating back = <floating>((hi - lo) / 255.0), off_back = <floating>lo
    for k in range(B):
        hist[k] = 0
    for i in range(count):
        v = x[i * C] * to255 + off255
        # Keras's int32 cast truncates, then clips to the bins; NaN counts in bin 0.
        idx_value = v * bins1 / <floating>255.0
        hist[0 if not idx_value >= 1 else (B - 1 if idx_value >= bins1 else <long>idx_value)] += 1
    for k in range(B):
        nonzero += hist[k] != 0
    # hist becomes the cdf, then the lookup table of levels 0..255.
    for k in range(B):
        cdf += hist[k]
        if cdf_min < 0 and cdf > 0:
            cdf_min = cdf
        hist[k] = cdf
    cdf = hist[B - 1] - cdf_min      # the denominator
    if cdf == 0:
        cdf = 1
    for k in range(B):
        lut_value = <floating>((hist[k] - cdf_min) * 255) / <floating>cdf
        hist[k] = <long>_clip(<floating>rint(lut_value), 0, 255)
    for i in range(count):
        v = x[i * C] * to255 + off255
        if nonzero > 1:
            idx_value = _clip(v / <floating>255.0 * bins1, 0, bins1)
            # A NaN pixel reads bin 0 (never an index outside the table).
            v = <floating>hist[<long>idx_value if idx_value == idx_value else 0]
        y[i * C] = v * back + off_back


cdef inline void _color_items(const _ColorJob* j, const floating* x, long begin, long end,
                              int slot) noexcept nogil:
    cdef const floating* prm = <const floating*>j.params
    cdef floating* y = <floating*>j.y
    cdef Py_ssize_t stride = j.P * j.C
    cdef long n
    for n in range(begin, end):
        if j.transform == EQUALIZE:   # item n is channel n of every image
            _equalize(x + n, y + n, j.hist + slot * j.B, j.N * j.P, j.C, j.B, j.lo, j.hi)
        elif j.transform == AUTO_CONTRAST:
            _auto_contrast(x + n * stride, y + n * stride, j.P, j.C, j.lo, j.hi)
        elif j.transform == SHARPEN:
            _sharpen(x + n * stride, y + n * stride, j.P, j.W, j.C, prm[2 * n], j.lo, j.hi)
        else:
            _pixels(x + n * stride, y + n * stride, prm + 2 * n, j.P, j.C, j.transform, j.lo,
                    j.hi)


cdef void _color_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _ColorJob* j = <_ColorJob*>ctx
    if j.is_double:
        _color_items(j, <const double*>j.x, begin, end, slot)
    else:
        _color_items(j, <const float*>j.x, begin, end, slot)


def _color(const floating[:, :, :, ::1] x, const floating[:, ::1] params,
           floating[:, :, :, ::1] y, int transform, double lo, double hi, Py_ssize_t bins):
    cdef _ColorJob job
    cdef long items
    cdef int threads
    cdef long[:, ::1] hist
    job.is_double, job.transform, job.x, job.y = floating is double, transform, \
        &x[0, 0, 0, 0], &y[0, 0, 0, 0]
    job.params = &params[0, 0]
    job.N, job.P, job.W, job.C, job.B = x.shape[0], x.shape[1] * x.shape[2], x.shape[2], \
        x.shape[3], bins
    job.lo, job.hi = lo, hi
    items = job.C if transform == EQUALIZE else job.N
    threads = omp_get_max_threads() if job.N * job.P * job.C >= PARALLEL_MIN else 1
    hist = np.empty((max(threads, 1) if transform == EQUALIZE else 1,
                     bins if transform == EQUALIZE else 1), np.int_)
    job.hist = &hist[0, 0]
    with nogil:
        pynn_team_for(items, 1 if transform == EQUALIZE else team_grain(items, threads),
                      threads, _color_job, &job)


def color_transform_forward(x, transform, params=None, value_range=(0, 255), bins=256):
    """Keras 3's colour transform ``transform`` (operands.TRANSFORMS) on x (N, H, W, C), each
    image with its row of params (N, 2) (see operands.color), over value_range; equalize
    with ``bins`` bins. -> y shaped as x."""
    x, code, params, (lo, hi), bins = operands.color_transform_forward(
        HOST, x, transform, params, value_range, bins)
    y = np.empty(x.shape, x.dtype)
    if x.size:
        _color(x, np.zeros((1, 2), x.dtype) if params is None else params, y, code, lo, hi,
               bins)
    return y


# -- clahe: Keras 3's ContrastLimitedAdaptiveHistogramEqualization -----------------------------
# Legend: T = (GH, GW) tiles of (TH, TW) pixels, L = 256 levels.
# Two passes, each parallel by prange: clahe_tables builds every (image, tile) table of L
# levels per channel (Keras's histogram of int32 levels, clipped at trunc(clip_limit *
# TH*TW / L) as Keras's torch backend (integer counts) does, the excess spread evenly, then
# its normalized cdf); clahe_apply maps every pixel
# through the four nearest tiles' tables, blended bilinearly by Keras's tile-centre weights.
# The image is padded at the bottom/right to whole tiles by repeating its last row/column
# (Keras's 'symmetric' pad on torch is torch's 'replicate'; read through _edge, never
# materialized). Arithmetic is in x's dtype, Keras's order.

cdef enum:
    CLAHE_LEVELS = 256


cdef inline Py_ssize_t _edge(Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """Index i >= 0 of an axis of n padded after its end by Keras's 'symmetric' pad, which
    Keras's torch backend maps to torch's 'replicate': the last row or column repeated."""
    return i if i < n else n - 1


cdef inline int _level(floating v) noexcept nogil:
    """Keras's int32 cast of a 0..255 value clipped to the levels; NaN reads level 0."""
    if not v >= 1:
        return 0
    if v >= CLAHE_LEVELS - 1:
        return CLAHE_LEVELS - 1
    return <int>v


cdef inline int _tile_at(Py_ssize_t p, Py_ssize_t grid) noexcept nogil:
    """Keras's edge-replicated table row p in [0, grid + 1] -> the tile it holds."""
    return <int>(0 if p < 1 else (grid - 1 if p > grid else p - 1))


def _clahe_tables(const floating[:, :, :, ::1] x,      # IN  (N, H, W, C)
                  floating[:, :, :, :, ::1] table,     # OUT (N, GH, GW, C, L)
                  Py_ssize_t TH, Py_ssize_t TW, double lo, double hi, double clip_limit):
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3]
    cdef Py_ssize_t GH = table.shape[1], GW = table.shape[2]
    cdef Py_ssize_t t, n, gy, gx, ch, r, q, k
    cdef floating v, limit, excess, cdf, cdf_min, den
    cdef floating flo = <floating>lo, fhi = <floating>hi
    cdef floating* hist
    cdef int threads = omp_get_max_threads() if N * H * W * C >= PARALLEL_MIN else 1
    for t in prange(N * GH * GW, schedule="static", nogil=True, num_threads=threads):
        n = t // (GH * GW)
        gy = (t // GW) % GH
        gx = t % GW
        for ch in range(C):
            hist = &table[n, gy, gx, ch, 0]
            for k in range(CLAHE_LEVELS):
                hist[k] = 0
            for r in range(gy * TH, gy * TH + TH):
                for q in range(gx * TW, gx * TW + TW):
                    v = _rescale(x[n, _edge(r, H), _edge(q, W), ch], flo, fhi,
                                 <floating>0, <floating>255)
                    hist[_level(v)] += 1
            if clip_limit > 0:
                # Keras on torch counts in int64 (one_hot's dtype there), so the limit is cast
                # to an integer: truncated.
                limit = <floating>(<long long>(clip_limit * (TH * TW) / 256.0))
                excess = 0
                for k in range(CLAHE_LEVELS):
                    v = hist[k] if hist[k] < limit else limit
                    excess = excess + (hist[k] - v)
                    hist[k] = v
                excess = excess / <floating>256.0
                for k in range(CLAHE_LEVELS):
                    hist[k] = hist[k] + excess
            cdf = 0
            for k in range(CLAHE_LEVELS):
                cdf = cdf + hist[k]
                hist[k] = cdf
            cdf_min = hist[0]
            for k in range(CLAHE_LEVELS):
                cdf_min = hist[k] if hist[k] < cdf_min else cdf_min
            den = <floating>(TH * TW) - cdf_min
            den = 1 if den == 0 else den
            for k in range(CLAHE_LEVELS):
                hist[k] = _clip((hist[k] - cdf_min) * <floating>255.0 / den, <floating>0,
                                <floating>255)


def _clahe_apply(const floating[:, :, :, ::1] x,            # IN  (N, H, W, C)
                 const floating[:, :, :, :, ::1] table,     # IN  (N, GH, GW, C, L)
                 floating[:, :, :, ::1] y,                  # OUT (N, H, W, C)
                 Py_ssize_t TH, Py_ssize_t TW, double lo, double hi):
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3]
    cdef Py_ssize_t GH = table.shape[1], GW = table.shape[2]
    cdef Py_ssize_t t, n, row, col, ch
    cdef int ty0, ty1, tx0, tx1, level
    cdef floating gy, gx, fy, fx, wy, wx, top, bottom, res
    cdef floating flo = <floating>lo, fhi = <floating>hi
    cdef int threads = omp_get_max_threads() if N * H * W * C >= PARALLEL_MIN else 1
    for t in prange(N * H, schedule="static", nogil=True, num_threads=threads):
        n = t // H
        row = t % H
        # Keras's float32 grid: (row - TH / 2) / TH + 1, its floor and fraction.
        gy = (<floating>row - <floating>(TH / 2.0)) / <floating>TH + 1
        fy = <floating>floor(gy)
        wy = gy - fy
        ty0 = _tile_at(<Py_ssize_t>fy, GH)
        ty1 = _tile_at(<Py_ssize_t>fy + 1, GH)
        for col in range(W):
            gx = (<floating>col - <floating>(TW / 2.0)) / <floating>TW + 1
            fx = <floating>floor(gx)
            wx = gx - fx
            tx0 = _tile_at(<Py_ssize_t>fx, GW)
            tx1 = _tile_at(<Py_ssize_t>fx + 1, GW)
            for ch in range(C):
                level = _level(_rescale(x[n, row, col, ch], flo, fhi, <floating>0,
                                        <floating>255))
                top = table[n, ty0, tx0, ch, level] * (1 - wx) + \
                    table[n, ty0, tx1, ch, level] * wx
                bottom = table[n, ty1, tx0, ch, level] * (1 - wx) + \
                    table[n, ty1, tx1, ch, level] * wx
                res = top * (1 - wy) + bottom * wy
                y[n, row, col, ch] = _rescale(res, <floating>0, <floating>255, flo, fhi)


def clahe_forward(x, value_range=(0, 255), clip_limit=4.0, tile_grid_size=(8, 8)):
    """Keras 3's ContrastLimitedAdaptiveHistogramEqualization on x (N, H, W, C) over
    value_range: tile_grid_size (GH, GW) tiles, histograms clipped at clip_limit times the
    mean count (no clipping when clip_limit <= 0). -> y shaped as x."""
    x, (lo, hi), clip_limit, grid, tile = operands.clahe_forward(
        HOST, x, value_range, clip_limit, tile_grid_size)
    y = np.empty(x.shape, x.dtype)
    if x.size:
        table = np.empty((x.shape[0], grid[0], grid[1], x.shape[3], CLAHE_LEVELS), x.dtype)
        _clahe_tables(x, table, tile[0], tile[1], lo, hi, clip_limit)
        _clahe_apply(x, table, y, tile[0], tile[1], lo, hi)
    return y
