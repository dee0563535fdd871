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
    reflect   half-sample symmetric extension (d c b a | a b c d | d c b a) of the pixel grid.
    wrap      scipy's 'wrap': the coordinate is folded into [0, len-1] with period len - 1
              (the first and last pixels overlap), then interpolated inside the image.
- order 0 rounds half up (floor(x + 0.5)), as scipy; order 1 is bilinear. Coordinates,
  weights and sums are double for both dtypes; the result is rounded once to the image dtype.
- Channels are the innermost, contiguous axis: the four source pixels and weights of an output
  pixel are found once, then one loop runs over C.
- prange over the images of the batch (schedule static); each output pixel is written by one
  thread from its own image, so any thread count gives bit-identical results.
"""
import numpy as np

from cython.parallel cimport prange
from libc.math cimport floor

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


def affine_resample(const floating[:, :, :, ::1] x,      # IN  (N, H, W, C)
                    const double[:, ::1] matrices,        # IN  (N, 6) row-major 2x3
                    floating[:, :, :, ::1] out,           # OUT (N, HO, WO, C)
                    int order, int fill_mode, double cval):
    """Resample every image of ``x`` through its own affine matrix into ``out``.

    ``order`` is 0 (nearest pixel) or 1 (bilinear); ``fill_mode`` one of FILL_MODES' values.
    ``out`` is overwritten, never read.
    """
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3]
    cdef Py_ssize_t HO = out.shape[1], WO = out.shape[2]
    cdef Py_ssize_t n, r, col, ch, r0, c0, r1, c1
    cdef double yr, xc, fr, fc, w00, w01, w10, w11
    if matrices.shape[0] != N or matrices.shape[1] != 6:
        raise ValueError(f"affine_resample: expected matrices of shape ({N}, 6), got "
                         f"({matrices.shape[0]}, {matrices.shape[1]})")
    if out.shape[0] != N or out.shape[3] != C:
        raise ValueError(f"affine_resample: expected out of shape ({N}, HO, WO, {C}), got "
                         f"({out.shape[0]}, {out.shape[1]}, {out.shape[2]}, {out.shape[3]})")
    if order not in (0, 1):
        raise ValueError(f"affine_resample: order must be 0 or 1, got {order}")
    if fill_mode not in (FILL_CONSTANT, FILL_NEAREST, FILL_REFLECT, FILL_WRAP):
        raise ValueError(f"affine_resample: unknown fill_mode {fill_mode}")
    if N == 0 or HO == 0 or WO == 0 or C == 0:
        return
    if H == 0 or W == 0:
        raise ValueError("affine_resample: the input images are empty")
    for n in prange(N, schedule="static", nogil=True):
        for r in range(HO):
            for col in range(WO):
                yr = matrices[n, 0] * r + matrices[n, 1] * col + matrices[n, 2]
                xc = matrices[n, 3] * r + matrices[n, 4] * col + matrices[n, 5]
                if fill_mode == FILL_CONSTANT and (yr < 0 or yr > H - 1 or xc < 0
                                                   or xc > W - 1):
                    for ch in range(C):
                        out[n, r, col, ch] = <floating>cval
                    continue
                yr = _fold(yr, H, fill_mode)
                xc = _fold(xc, W, fill_mode)
                if order == 0:
                    r0 = _index(<Py_ssize_t>floor(yr + 0.5), H, fill_mode)
                    c0 = _index(<Py_ssize_t>floor(xc + 0.5), W, fill_mode)
                    for ch in range(C):
                        out[n, r, col, ch] = x[n, r0, c0, ch]
                    continue
                fr = floor(yr)
                fc = floor(xc)
                r0 = <Py_ssize_t>fr
                c0 = <Py_ssize_t>fc
                fr = yr - fr
                fc = xc - fc
                r1 = _index(r0 + 1, H, fill_mode)
                c1 = _index(c0 + 1, W, fill_mode)
                r0 = _index(r0, H, fill_mode)
                c0 = _index(c0, W, fill_mode)
                w00 = (1 - fr) * (1 - fc)
                w01 = (1 - fr) * fc
                w10 = fr * (1 - fc)
                w11 = fr * fc
                for ch in range(C):
                    out[n, r, col, ch] = <floating>(
                        w00 * x[n, r0, c0, ch] + w01 * x[n, r0, c1, ch]
                        + w10 * x[n, r1, c0, ch] + w11 * x[n, r1, c1, ch])
