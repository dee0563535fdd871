"""Affine resampling of a batch of images, the one native pass of ImageDataGenerator, NHWC.

Legend: N batch, H/W input spatial, HO/WO output spatial, C channels.

Design:
- Every geometric transform of an image (rotation, shifts, shear, zoom, flips) arrives already
  composed into one 2x3 matrix per image (pynn/preprocessing/image.py builds them in NumPy, in
  Keras's order and conventions): the input pixel sampled for output pixel (r, c) is
      (m[0] r + m[1] c + m[2],  m[3] r + m[4] c + m[5])    (row, column).
  The kernel only resamples, so the random draws stay in NumPy and the same seed gives the same
  batch at any thread count.
- Boundary handling follows scipy.ndimage.affine_transform's modes exactly (Keras passes its
  fill_mode straight to scipy, so these are Keras's semantics too):
    constant  a coordinate outside [0, len-1] (either axis) takes cval; no blending with cval.
    nearest   the coordinate is clamped to [0, len-1].
    reflect   half-sample symmetric extension (d c b a | a b c d | d c b a) of the pixel grid,
              the coordinate folded as scipy folds it (so order-0 ties round as scipy's do).
    wrap      scipy's 'wrap': the coordinate is folded into [0, len-1] with period len - 1
              (the first and last pixels overlap), then interpolated inside the image.
- order 0 rounds half up (floor(x + 0.5)), as scipy; order 1 is bilinear. Coordinates,
  weights and sums are double for both dtypes; the result is rounded once to the image dtype.
- Channels are the innermost, contiguous axis: the four source pixels and weights of an output
  pixel are found once, then one loop runs over C. A bilinear pixel whose four sources lie
  inside the image (most of them) skips the fill-mode code; the general path gives the same
  numbers there.
- Output image n reads input image source[n]: a batch is resampled straight out of the whole
  data set, with no gathered copy of the batch first.
- prange over the images of the batch (schedule static); each output pixel is written by one
  thread from its own image, so any thread count gives bit-identical results.
- Matrices must be finite (checked before the parallel loop): a NaN coordinate has no pixel.
"""
from cython.parallel cimport prange
from libc.math cimport floor, isfinite

ctypedef fused floating:
    float
    double

cdef enum:
    FILL_CONSTANT = 0
    FILL_NEAREST = 1
    FILL_REFLECT = 2
    FILL_WRAP = 3

FILL_MODES = {"constant": FILL_CONSTANT, "nearest": FILL_NEAREST, "reflect": FILL_REFLECT,
              "wrap": FILL_WRAP}


cdef inline double _fold(double x, Py_ssize_t n, int mode) noexcept nogil:
    """A continuous coordinate folded as scipy folds it: into [0, n-1] (nearest, wrap) or into
    (-1, n) (reflect, whose outer neighbours _index then mirrors); constant is left alone."""
    cdef double period
    if mode == FILL_NEAREST:
        if x < 0:
            return 0
        if x > n - 1:
            return n - 1
    elif mode == FILL_REFLECT:
        if n <= 1:
            return 0
        # scipy's NI_EXTEND_REFLECT on the continuous coordinate; folding before rounding
        # keeps its tie-breaking for order 0 (a half-pixel coordinate in the mirrored part).
        period = 2 * n
        if x < 0:
            if x < -period:
                x += period * <Py_ssize_t>(-x / period)
            x = x + period if x < -n else -x - 1
        elif x > n - 1:
            x -= period * <Py_ssize_t>(x / period)
            if x >= n:
                x = period - x - 1
    elif mode == FILL_WRAP:
        if n <= 1:
            return 0
        period = n - 1
        # scipy's ni_interpolation.c map_coordinate, NI_EXTEND_WRAP, truncating divisions kept.
        if x < 0:
            x += period * (<Py_ssize_t>(-x / period) + 1)
        elif x > n - 1:
            x -= period * <Py_ssize_t>(x / period)
    return x


cdef inline Py_ssize_t _index(Py_ssize_t i, Py_ssize_t n, int mode) noexcept nogil:
    """A neighbour's pixel index mapped into [0, n): reflect mirrors the one step outside that
    its fold leaves; otherwise a clamp covers the neighbour of a coordinate exactly on n-1."""
    cdef Py_ssize_t period
    if mode == FILL_REFLECT:
        if n == 1:
            return 0
        period = 2 * n
        i = i % period
        if i < 0:
            i += period
        if i >= n:
            i = period - 1 - i
        return i
    if i < 0:
        return 0
    if i > n - 1:
        return n - 1
    return i


cdef void _resample_image(const floating* src, floating* dst, const double* m,
                          Py_ssize_t H, Py_ssize_t W, Py_ssize_t C, Py_ssize_t HO,
                          Py_ssize_t WO, int order, int mode, double cval) noexcept nogil:
    """One image: every output pixel (r, c) reads its source pixels through m."""
    cdef Py_ssize_t r, col, ch, r0, c0, r1, c1, row = W * C
    cdef double yr, xc, fr, fc, w00, w01, w10, w11
    cdef const floating* p00
    cdef const floating* p01
    cdef const floating* p10
    cdef const floating* p11
    cdef floating* o
    cdef double m0 = m[0], m1 = m[1], m2 = m[2], m3 = m[3], m4 = m[4], m5 = m[5]
    for r in range(HO):
        for col in range(WO):
            o = dst + (r * WO + col) * C
            yr = m0 * r + m1 * col + m2
            xc = m3 * r + m4 * col + m5
            if order == 1 and yr >= 0 and xc >= 0 and yr < H - 1 and xc < W - 1:
                # Inside the image with both neighbours: no fill mode applies (most pixels).
                fr = floor(yr)
                fc = floor(xc)
                r0 = <Py_ssize_t>fr
                c0 = <Py_ssize_t>fc
                fr = yr - fr
                fc = xc - fc
                p00 = src + r0 * row + c0 * C
                p01 = p00 + C
                p10 = p00 + row
                p11 = p10 + C
            elif mode == FILL_CONSTANT and (yr < 0 or yr > H - 1 or xc < 0 or xc > W - 1):
                for ch in range(C):
                    o[ch] = <floating>cval
                continue
            else:
                yr = _fold(yr, H, mode)
                xc = _fold(xc, W, mode)
                if order == 0:
                    r0 = _index(<Py_ssize_t>floor(yr + 0.5), H, mode)
                    c0 = _index(<Py_ssize_t>floor(xc + 0.5), W, mode)
                    p00 = src + r0 * row + c0 * C
                    for ch in range(C):
                        o[ch] = p00[ch]
                    continue
                fr = floor(yr)
                fc = floor(xc)
                r0 = <Py_ssize_t>fr
                c0 = <Py_ssize_t>fc
                fr = yr - fr
                fc = xc - fc
                r1 = _index(r0 + 1, H, mode)
                c1 = _index(c0 + 1, W, mode)
                r0 = _index(r0, H, mode)
                c0 = _index(c0, W, mode)
                p00 = src + r0 * row + c0 * C
                p01 = src + r0 * row + c1 * C
                p10 = src + r1 * row + c0 * C
                p11 = src + r1 * row + c1 * C
            w00 = (1 - fr) * (1 - fc)
            w01 = (1 - fr) * fc
            w10 = fr * (1 - fc)
            w11 = fr * fc
            for ch in range(C):
                o[ch] = <floating>(w00 * p00[ch] + w01 * p01[ch] + w10 * p10[ch]
                                   + w11 * p11[ch])


def affine_resample(const floating[:, :, :, ::1] x,      # IN  (M, H, W, C) image pool
                    const Py_ssize_t[::1] source,         # IN  (N,) image of x per output
                    const double[:, ::1] matrices,        # IN  (N, 6) row-major 2x3
                    floating[:, :, :, ::1] out,           # OUT (N, HO, WO, C)
                    int order, int fill_mode, double cval):
    """Resample image ``x[source[n]]`` through ``matrices[n]`` into ``out[n]``, for every n.

    ``source`` lets a batch be read straight from a whole data set (no gathered copy of the
    batch first). ``order`` is 0 (nearest pixel) or 1 (bilinear); ``fill_mode`` one of
    FILL_MODES' values. ``out`` is overwritten, never read.
    """
    cdef Py_ssize_t M = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3]
    cdef Py_ssize_t N = source.shape[0], HO = out.shape[1], WO = out.shape[2]
    cdef Py_ssize_t n
    cdef int k
    for n in range(N):
        if source[n] < 0 or source[n] >= M:
            raise ValueError(f"affine_resample: source[{n}] = {source[n]} is not an image "
                             f"of x (it holds {M})")
    if matrices.shape[0] != N or matrices.shape[1] != 6:
        raise ValueError(f"affine_resample: expected matrices of shape ({N}, 6), got "
                         f"({matrices.shape[0]}, {matrices.shape[1]})")
    if out.shape[0] != N or out.shape[3] != C:
        raise ValueError(f"affine_resample: expected out of shape ({N}, HO, WO, {C}), got "
                         f"({out.shape[0]}, {out.shape[1]}, {out.shape[2]}, {out.shape[3]})")
    for n in range(N):
        for k in range(6):
            if not isfinite(matrices[n, k]):
                raise ValueError(f"affine_resample: matrix {n} is not finite: "
                                 f"{[matrices[n, j] for j in range(6)]}")
    if order not in (0, 1):
        raise ValueError(f"affine_resample: order must be 0 or 1, got {order}")
    if fill_mode not in (FILL_CONSTANT, FILL_NEAREST, FILL_REFLECT, FILL_WRAP):
        raise ValueError(f"affine_resample: unknown fill_mode {fill_mode}")
    if N == 0 or HO == 0 or WO == 0 or C == 0:
        return
    if H == 0 or W == 0:
        raise ValueError("affine_resample: the input images are empty")
    for n in prange(N, schedule="static", nogil=True):
        _resample_image(&x[source[n], 0, 0, 0], &out[n, 0, 0, 0], &matrices[n, 0], H, W, C,
                        HO, WO, order, fill_mode, cval)
