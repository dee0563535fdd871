"""Kernels of Keras 3's preprocessing layers (pynn/layers/preprocessing.py), NHWC.

Legend: N batch, H/W input spatial, HO/WO output spatial, C channels, K features of a
channel-wise affine map (the product of the trailing axes it covers).

Design:
- One resampling op serves every geometric layer (Resizing, CenterCrop, RandomCrop,
  RandomFlip, RandomRotation, RandomZoom, RandomTranslation): the layer builds Keras 3's
  affine matrix per image in NumPy and image_affine_forward resamples. Output pixel (r, c)
  reads the input at column a0*c + a1*r + a2, row b0*c + b1*r + b2 (keras.ops.image's
  affine_transform, its 8-vector without the projective pair).
- The boundary rules are keras.ops.image.map_coordinates' (torch backend), not scipy's: each
  of an output pixel's neighbours is fixed on its own (constant: a neighbour outside the image
  reads fill_value and is blended with the inside ones; nearest: clamp; wrap: i mod n;
  mirror: d c b | a b c d | c b a; reflect: d c b a | a b c d | d c b a), and 'nearest'
  interpolation rounds half to even (rint, torch.round). That is why native/augment.pyx's
  scipy-exact resampler (one whole-coordinate test for constant, scipy's folds) is not reused.
- image_projective_forward / _backward (RandomPerspective) are the same kernels with
  Keras's 8-vector: both coordinates divided by c0*c + c1*r + 1 (perspective_transform's
  homography). A coordinate that is not finite or lies past COORD_LIMIT (a denominator near
  0) is moved to +-COORD_LIMIT before its integer part is taken: far outside either way.
- image_remap_forward (RandomElasticTransform) reads output pixel (r, c) at (r, c) plus its
  own (row, column) offset by the same taps, and clips to a value range in the same pass
  (Keras clips the elastic output); no backward (the layer, like RandomContrast, offers no
  gradient).
- The op is linear in x, so image_affine_backward scatters dy through the same neighbours and
  weights (fill_value's share goes nowhere). Each thread owns whole images of dx (the N
  images on pynn's worker team), so the scatter needs no atomics and any thread count gives
  the same bits.
- Coordinates and weights are double for both dtypes; sums are rounded once to x's dtype.
- channel_affine_forward (Rescaling, Normalization, and their backward with offset None) and
  image_adjust_forward (RandomContrast, RandomBrightness) are one pass over x, rows /
  images on the team. Random draws stay in NumPy (the layers), so the same seed gives the same
  batch at any thread count.
"""
from libc.math cimport floor, rint, isfinite
from libc.string cimport memset
from _openmp cimport omp_get_max_threads

from pynn.backend.operands import preprocessing as operands
from pynn.backend.operands.common import HOST

include "_team.pxi"

import numpy as np

ctypedef fused floating:
    float
    double

# Codes of operands.FILL_MODES / INTERPOLATIONS, in that order.
cdef enum:
    FILL_CONSTANT = 0
    FILL_NEAREST = 1
    FILL_WRAP = 2
    FILL_MIRROR = 3
    FILL_REFLECT = 4

cdef enum:
    INTERP_NEAREST = 0
    INTERP_BILINEAR = 1

# Below this many output elements a kernel runs on the calling thread.
cdef enum:
    PARALLEL_MIN = 32768

# Coordinates are clamped to +-COORD_LIMIT before the cast to an index (a float past the
# index range is undefined behaviour in C); any image side is far below it.
cdef double COORD_LIMIT = 1073741824.0


cdef inline Py_ssize_t _mod(Py_ssize_t a, Py_ssize_t n) noexcept nogil:
    """Python's a % n (the sign of n), as torch's % on the index tensors."""
    cdef Py_ssize_t r = a % n
    return r + n if r < 0 else r


cdef inline Py_ssize_t _mirror(Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t s = n - 1
    if s == 0:
        return 0
    i = _mod(i + s, 2 * s) - s
    return -i if i < 0 else i


cdef inline Py_ssize_t _fix(Py_ssize_t i, Py_ssize_t n, int mode) noexcept nogil:
    """A neighbour index mapped into [0, n) by Keras's index fixer of ``mode``."""
    cdef Py_ssize_t m
    if mode == FILL_WRAP:
        return _mod(i, n)
    if mode == FILL_MIRROR:
        return _mirror(i, n)
    if mode == FILL_REFLECT:
        m = _mirror(2 * i + 1, 2 * n + 1) - 1
        return m // 2 if m >= 0 else -((-m + 1) // 2)
    return 0 if i < 0 else (n - 1 if i > n - 1 else i)


cdef struct Taps:
    # Up to two neighbours per axis: fixed indices, weights, and whether each lies inside.
    Py_ssize_t i0, i1
    double w0, w1
    bint in0, in1


cdef inline Taps _taps(double x, Py_ssize_t n, int order, int mode) noexcept nogil:
    cdef Taps t
    cdef double f
    cdef Py_ssize_t lo
    if not (x > -COORD_LIMIT):  # also NaN
        x = -COORD_LIMIT
    elif x > COORD_LIMIT:
        x = COORD_LIMIT
    if order == INTERP_NEAREST:
        lo = <Py_ssize_t>rint(x)
        t.w0, t.w1 = 1.0, 0.0
        t.i1, t.in1 = 0, False
    else:
        f = floor(x)
        lo = <Py_ssize_t>f
        t.w1 = x - f
        t.w0 = 1.0 - t.w1
        t.in1 = mode != FILL_CONSTANT or (lo + 1 >= 0 and lo + 1 < n)
        t.i1 = _fix(lo + 1, n, mode)
    t.in0 = mode != FILL_CONSTANT or (lo >= 0 and lo < n)
    t.i0 = _fix(lo, n, mode)
    return t


cdef void _affine_image(const floating* x, floating* y, const floating* m, Py_ssize_t H,
                        Py_ssize_t W, Py_ssize_t C, Py_ssize_t HO, Py_ssize_t WO, int order,
                        int mode, double fill, bint projective) noexcept nogil:
    """One image: y (HO, WO, C) resampled from x (H, W, C) through m (6 values, or 8 when
    ``projective``)."""
    cdef Py_ssize_t r, c, ch, k
    cdef Taps tr, tc
    cdef double a0 = m[0], a1 = m[1], a2 = m[2], b0 = m[3], b1 = m[4], b2 = m[5]
    cdef double c0 = m[6] if projective else 0.0, c1 = m[7] if projective else 0.0, den = 1.0
    cdef double wgt[4]
    cdef bint inside[4]
    cdef const floating* src[4]
    cdef double acc
    cdef floating* o
    for r in range(HO):
        for c in range(WO):
            if projective:
                den = c0 * c + c1 * r + 1.0
            tc = _taps((a0 * c + a1 * r + a2) / den, W, order, mode)
            tr = _taps((b0 * c + b1 * r + b2) / den, H, order, mode)
            wgt[0] = tr.w0 * tc.w0
            wgt[1] = tr.w0 * tc.w1
            wgt[2] = tr.w1 * tc.w0
            wgt[3] = tr.w1 * tc.w1
            inside[0] = tr.in0 and tc.in0
            inside[1] = tr.in0 and tc.in1
            inside[2] = tr.in1 and tc.in0
            inside[3] = tr.in1 and tc.in1
            src[0] = x + (tr.i0 * W + tc.i0) * C
            src[1] = x + (tr.i0 * W + tc.i1) * C
            src[2] = x + (tr.i1 * W + tc.i0) * C
            src[3] = x + (tr.i1 * W + tc.i1) * C
            o = y + (r * WO + c) * C
            for ch in range(C):
                acc = 0.0
                for k in range(4):
                    if wgt[k] != 0.0:
                        acc = acc + wgt[k] * (src[k][ch] if inside[k] else fill)
                o[ch] = <floating>acc


cdef void _affine_image_backward(const floating* dy, floating* dx, const floating* m,
                                 Py_ssize_t H, Py_ssize_t W, Py_ssize_t C, Py_ssize_t HO,
                                 Py_ssize_t WO, int order, int mode,
                                 bint projective) noexcept nogil:
    """One image: dx (H, W, C) = the adjoint of _affine_image applied to dy (HO, WO, C)."""
    cdef Py_ssize_t r, c, ch, k
    cdef Taps tr, tc
    cdef double a0 = m[0], a1 = m[1], a2 = m[2], b0 = m[3], b1 = m[4], b2 = m[5]
    cdef double c0 = m[6] if projective else 0.0, c1 = m[7] if projective else 0.0, den = 1.0
    cdef double wgt[4]
    cdef floating* dst[4]
    cdef const floating* g
    memset(dx, 0, H * W * C * sizeof(floating))
    for r in range(HO):
        for c in range(WO):
            if projective:
                den = c0 * c + c1 * r + 1.0
            tc = _taps((a0 * c + a1 * r + a2) / den, W, order, mode)
            tr = _taps((b0 * c + b1 * r + b2) / den, H, order, mode)
            wgt[0] = tr.w0 * tc.w0 if tr.in0 and tc.in0 else 0.0
            wgt[1] = tr.w0 * tc.w1 if tr.in0 and tc.in1 else 0.0
            wgt[2] = tr.w1 * tc.w0 if tr.in1 and tc.in0 else 0.0
            wgt[3] = tr.w1 * tc.w1 if tr.in1 and tc.in1 else 0.0
            dst[0] = dx + (tr.i0 * W + tc.i0) * C
            dst[1] = dx + (tr.i0 * W + tc.i1) * C
            dst[2] = dx + (tr.i1 * W + tc.i0) * C
            dst[3] = dx + (tr.i1 * W + tc.i1) * C
            g = dy + (r * WO + c) * C
            for k in range(4):
                if wgt[k] != 0.0:
                    for ch in range(C):
                        dst[k][ch] = <floating>(dst[k][ch] + wgt[k] * g[ch])


cdef void _remap_image(const floating* x, floating* y, const floating* coords, Py_ssize_t H,
                       Py_ssize_t W, Py_ssize_t C, Py_ssize_t HO, Py_ssize_t WO, int order,
                       int mode, double fill, double lo, double hi) noexcept nogil:
    """One image: y[r, c] = clip(x read at (r + offsets[r, c, 0], c + offsets[r, c, 1]),
    lo, hi); ``coords`` holds the offsets."""
    cdef Py_ssize_t r, c, ch, k
    cdef Taps tr, tc
    cdef double wgt[4]
    cdef bint inside[4]
    cdef const floating* src[4]
    cdef double acc
    cdef floating* o
    for r in range(HO):
        for c in range(WO):
            tr = _taps(r + coords[2 * (r * WO + c)], H, order, mode)
            tc = _taps(c + coords[2 * (r * WO + c) + 1], W, order, mode)
            wgt[0], wgt[1] = tr.w0 * tc.w0, tr.w0 * tc.w1
            wgt[2], wgt[3] = tr.w1 * tc.w0, tr.w1 * tc.w1
            inside[0], inside[1] = tr.in0 and tc.in0, tr.in0 and tc.in1
            inside[2], inside[3] = tr.in1 and tc.in0, tr.in1 and tc.in1
            src[0] = x + (tr.i0 * W + tc.i0) * C
            src[1] = x + (tr.i0 * W + tc.i1) * C
            src[2] = x + (tr.i1 * W + tc.i0) * C
            src[3] = x + (tr.i1 * W + tc.i1) * C
            o = y + (r * WO + c) * C
            for ch in range(C):
                acc = 0.0
                for k in range(4):
                    if wgt[k] != 0.0:
                        acc = acc + wgt[k] * (src[k][ch] if inside[k] else fill)
                o[ch] = <floating>(lo if acc < lo else (hi if acc > hi else acc))


def _check_finite(m, op="image_affine"):
    if not np.isfinite(m).all():
        bad = int(np.argmin(np.isfinite(m).all(axis=1)))
        raise ValueError(f"{op}: matrix {bad} is not finite: {m[bad].tolist()}")


ctypedef struct _PrepJob:
    bint is_double, flag_a, flag_b
    int width            # values per matrix: 6 affine, 8 projective
    int kind             # 0 affine images, 1 affine backward images, 2 channel rows, 3 adjust,
                         # 4 remap images
    const void* x
    const void* m        # the matrices (affine), scale (channel), factor (adjust)
    const void* m2       # offset (channel), delta (adjust)
    void* y
    double* means
    Py_ssize_t H, W, C, HO, WO, K, P
    int order, mode
    double fill, lo, hi


cdef inline void _prep_items(const _PrepJob* j, const floating* x, long begin,
                             long end) noexcept nogil:
    """Images [begin, end) (affine, adjust) or rows (channel affine), each by one thread."""
    cdef const floating* m = <const floating*>j.m
    cdef const floating* m2 = <const floating*>j.m2
    cdef floating* y = <floating*>j.y
    cdef Py_ssize_t xs = j.H * j.W * j.C, ys = j.HO * j.WO * j.C, k
    cdef long n
    for n in range(begin, end):
        if j.kind == 0:
            _affine_image(x + n * xs, y + n * ys, m + j.width * n, j.H, j.W, j.C, j.HO, j.WO,
                          j.order, j.mode, j.fill, j.width == 8)
        elif j.kind == 1:  # x is dy (HO, WO), y is dx (H, W)
            _affine_image_backward(x + n * ys, y + n * xs, m + j.width * n, j.H, j.W, j.C,
                                   j.HO, j.WO, j.order, j.mode, j.width == 8)
        elif j.kind == 4:
            _remap_image(x + n * xs, y + n * ys, m + 2 * n * j.HO * j.WO, j.H, j.W, j.C, j.HO,
                         j.WO, j.order, j.mode, j.fill, j.lo, j.hi)
        elif j.kind == 2:
            for k in range(j.K):
                if j.flag_a:
                    y[n * j.K + k] = x[n * j.K + k] * m[k] + m2[k]
                else:
                    y[n * j.K + k] = x[n * j.K + k] * m[k]
        else:
            _adjust_image(x + n * j.P * j.C, y + n * j.P * j.C, j.means + n * j.C, j.P, j.C,
                          m[n] if j.flag_a else 1.0, m2[n] if j.flag_b else 0.0, j.flag_a,
                          j.lo, j.hi)


cdef void _prep_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _PrepJob* j = <_PrepJob*>ctx
    if j.is_double:
        _prep_items(j, <const double*>j.x, begin, end)
    else:
        _prep_items(j, <const float*>j.x, begin, end)


cdef void _prep_run(_PrepJob* job, long items, Py_ssize_t work) noexcept nogil:
    """The items on pynn's worker team, or on the calling thread below PARALLEL_MIN."""
    cdef int threads = omp_get_max_threads() if work >= PARALLEL_MIN else 1
    pynn_team_for(items, team_grain(items, threads), threads, _prep_job, job)


def _affine_forward(const floating[:, :, :, ::1] x, const floating[:, ::1] m,
                    floating[:, :, :, ::1] y, int order, int mode, double fill):
    cdef Py_ssize_t N = x.shape[0]
    cdef _PrepJob job
    if N == 0 or x.shape[3] == 0:
        return
    job.is_double, job.kind, job.x, job.m, job.y = floating is double, 0, &x[0, 0, 0, 0], \
        &m[0, 0], &y[0, 0, 0, 0]
    job.H, job.W, job.C, job.HO, job.WO = x.shape[1], x.shape[2], x.shape[3], y.shape[1], \
        y.shape[2]
    job.order, job.mode, job.fill, job.width = order, mode, fill, m.shape[1]
    with nogil:
        _prep_run(&job, N, N * job.HO * job.WO * job.C)


def _affine_backward(const floating[:, :, :, ::1] dy, const floating[:, ::1] m,
                     floating[:, :, :, ::1] dx, int order, int mode):
    cdef Py_ssize_t N = dx.shape[0]
    cdef _PrepJob job
    if N == 0 or dx.shape[3] == 0:
        return
    job.is_double, job.kind, job.x, job.m, job.y = floating is double, 1, &dy[0, 0, 0, 0], \
        &m[0, 0], &dx[0, 0, 0, 0]
    job.H, job.W, job.C, job.HO, job.WO = dx.shape[1], dx.shape[2], dx.shape[3], \
        dy.shape[1], dy.shape[2]
    job.order, job.mode, job.width = order, mode, m.shape[1]
    with nogil:
        _prep_run(&job, N, N * job.HO * job.WO * job.C)


def image_affine_forward(x, matrices, output_size, interpolation="bilinear",
                         fill_mode="constant", fill_value=0.0):
    """Resample each image x[n] (N, H, W, C) through Keras's affine matrices[n] (N, 6) into
    (N, HO, WO, C), output_size = (HO, WO); keras.ops.image.affine_transform's rules."""
    x, m, out, order, mode, fill = operands.image_affine_forward(
        HOST, x, matrices, output_size, interpolation, fill_mode, fill_value)
    _check_finite(m)
    y = np.empty(out, x.dtype)
    _affine_forward(x, m, y, order, mode, fill)
    return y


def image_affine_backward(dy, matrices, input_shape, interpolation="bilinear",
                          fill_mode="constant"):
    """dx (input_shape) of image_affine_forward: dy scattered through the same neighbours
    and weights; neighbours that read fill_value contribute nothing."""
    dy, m, shape, order, mode = operands.image_affine_backward(
        HOST, dy, matrices, input_shape, interpolation, fill_mode)
    _check_finite(m)
    dx = np.empty(shape, dy.dtype)
    if dx.size:
        _affine_backward(dy, m, dx, order, mode)
    return dx


def _channel_affine(const floating[:, ::1] x, const floating[::1] scale,
                    const floating[::1] offset, floating[:, ::1] y, bint has_offset):
    cdef Py_ssize_t R = x.shape[0]
    cdef _PrepJob job
    if R == 0 or x.shape[1] == 0:
        return
    job.is_double, job.kind, job.x, job.m, job.m2, job.y = floating is double, 2, &x[0, 0], \
        &scale[0], &offset[0], &y[0, 0]
    job.K, job.flag_a = x.shape[1], has_offset
    with nogil:
        _prep_run(&job, R, R * job.K)


def channel_affine_forward(x, scale, offset=None):
    """y = x * scale + offset, scale and offset (K,) broadcast over x's trailing K values
    (Rescaling, Normalization); offset None is y = x * scale, their input gradient."""
    x, scale, offset, k = operands.channel_affine_forward(HOST, x, scale, offset)
    y = np.empty(x.shape, x.dtype)
    if x.size:
        _channel_affine(x.reshape(-1, k), scale, scale if offset is None else offset,
                        y.reshape(-1, k), offset is not None)
    return y


cdef void _adjust_image(const floating* x, floating* y, double* mean, Py_ssize_t P,
                        Py_ssize_t C, double factor, double delta, bint contrast, double lo,
                        double hi) noexcept nogil:
    """One image of P pixels: y = clip((x - mean) * factor + mean + delta, lo, hi), the mean
    (per channel over the pixels, into ``mean``) when ``contrast``, else y = clip(x + delta, lo, hi)."""
    cdef Py_ssize_t p, ch
    cdef double v
    if contrast:
        for ch in range(C):
            mean[ch] = 0.0
        for p in range(P):
            for ch in range(C):
                mean[ch] += x[p * C + ch]
        for ch in range(C):
            mean[ch] /= P
    for p in range(P):
        for ch in range(C):
            v = x[p * C + ch]
            if contrast:
                v = (v - mean[ch]) * factor + mean[ch]
            v = v + delta
            y[p * C + ch] = <floating>(lo if v < lo else (hi if v > hi else v))


def _adjust(const floating[:, :, ::1] x, const floating[::1] factor,
            const floating[::1] delta, floating[:, :, ::1] y, double[:, ::1] means,
            bint contrast, bint shift, double lo, double hi):
    cdef Py_ssize_t N = x.shape[0]
    cdef _PrepJob job
    if N == 0 or x.shape[1] == 0 or x.shape[2] == 0:
        return
    job.is_double, job.kind, job.x, job.m, job.m2, job.y = floating is double, 3, \
        &x[0, 0, 0], &factor[0], &delta[0], &y[0, 0, 0]
    job.means, job.P, job.C = &means[0, 0], x.shape[1], x.shape[2]
    job.flag_a, job.flag_b, job.lo, job.hi = contrast, shift, lo, hi
    with nogil:
        _prep_run(&job, N, N * job.P * job.C)


def image_adjust_forward(x, contrast, delta, value_range):
    """RandomContrast / RandomBrightness on (N, H, W, C): per image n,
    y = clip((x - mean) * contrast[n] + mean + delta[n], *value_range), mean per channel over
    H and W; contrast None skips the mean (factor 1), delta None adds 0."""
    x, contrast, delta, (lo, hi) = operands.image_adjust_forward(HOST, x, contrast, delta,
                                                                 value_range)
    n, h, w, c = x.shape
    y = np.empty(x.shape, x.dtype)
    if x.size:
        dummy = np.zeros(n, x.dtype)
        _adjust(x.reshape(n, h * w, c), dummy if contrast is None else contrast,
                dummy if delta is None else delta, y.reshape(n, h * w, c),
                np.empty((n, c), np.float64), contrast is not None, delta is not None, lo, hi)
    return y


# -- RandomPerspective (auggeo): the resampler above with Keras's projective pair --------

def image_projective_forward(x, transforms, output_size, interpolation="bilinear",
                             fill_mode="constant", fill_value=0.0):
    """image_affine_forward through Keras's 8-vector transforms[n] (N, 8): output pixel
    (r, c) reads column (a0*c + a1*r + a2) / d, row (b0*c + b1*r + b2) / d with
    d = c0*c + c1*r + 1 (keras.ops.image.perspective_transform)."""
    x, m, out, order, mode, fill = operands.image_projective_forward(
        HOST, x, transforms, output_size, interpolation, fill_mode, fill_value)
    _check_finite(m, "image_projective_forward")
    y = np.empty(out, x.dtype)
    _affine_forward(x, m, y, order, mode, fill)
    return y


def image_projective_backward(dy, transforms, input_shape, interpolation="bilinear",
                              fill_mode="constant"):
    """dx (input_shape) of image_projective_forward: dy scattered through the same taps."""
    dy, m, shape, order, mode = operands.image_projective_backward(
        HOST, dy, transforms, input_shape, interpolation, fill_mode)
    _check_finite(m, "image_projective_backward")
    dx = np.empty(shape, dy.dtype)
    if dx.size:
        _affine_backward(dy, m, dx, order, mode)
    return dx


# -- RandomElasticTransform (auggeo): a per-pixel offset field, then the value-range clip

def _remap(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] coords,
           floating[:, :, :, ::1] y, int order, int mode, double fill, double lo, double hi):
    cdef Py_ssize_t N = x.shape[0]
    cdef _PrepJob job
    if N == 0 or x.shape[3] == 0:
        return
    job.is_double, job.kind, job.x, job.m, job.y = floating is double, 4, &x[0, 0, 0, 0], \
        &coords[0, 0, 0, 0], &y[0, 0, 0, 0]
    job.H, job.W, job.C, job.HO, job.WO = x.shape[1], x.shape[2], x.shape[3], y.shape[1], \
        y.shape[2]
    job.order, job.mode, job.fill, job.lo, job.hi = order, mode, fill, lo, hi
    with nogil:
        _prep_run(&job, N, N * job.HO * job.WO * job.C)


def image_remap_forward(x, offsets, interpolation="bilinear", fill_mode="constant",
                        fill_value=0.0, value_range=(-np.inf, np.inf)):
    """(N, H, W, C) -> (N, HO, WO, C): output pixel (r, c) of image n reads x[n] at row
    r + offsets[n, r, c, 0], column c + offsets[n, r, c, 1] (keras.ops.image.map_coordinates'
    rules), clipped to value_range."""
    x, coords, out, order, mode, fill, (lo, hi) = operands.image_remap_forward(
        HOST, x, offsets, interpolation, fill_mode, fill_value, value_range)
    y = np.empty(out, x.dtype)
    _remap(x, coords, y, order, mode, fill, lo, hi)
    return y
