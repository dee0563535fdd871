"""Kernels of Keras 3's box, mixing and blur augmentations (CutMix, MixUp, RandomErasing,
RandomGaussianBlur), NHWC.

Legend: N batch, H/W spatial, C channels, P = H*W pixels of an image.

Design:
- A box is Keras's four floats [x0, x1, y0, y1]: pixel (row r, column c) is inside when
  x0 <= c < x1 and y0 <= r < y1 (CutMix's and RandomErasing's batch_masks). An empty box
  (x0 = x1) leaves its image alone, which is how the layers skip an image.
- image_mix_forward: y[n] = w[n] * x[n] + (1 - w[n]) * x[perm[n]] inside box n, x[n] outside
  (MixUp: the whole image; CutMix: w = 0, the partner's pixels). Linear in x, so
  image_mix_backward gathers instead of scattering: dx[m] takes dy[m]'s own share and the
  share of j = inv[m], the one image that read m (perm is a permutation, checked on the
  host). Each thread owns whole images of the output: no atomics, the same bits at any
  thread count.
- image_erase_forward: y = clip(fill, lo, hi) inside the box, x outside; fill is one value
  per channel (C,) or one per element (x's shape, RandomErasing's noise). Its input gradient
  is the same op on dy with fill 0 and range (0, 0).
- image_blur_forward: Keras's gaussian_blur (a depthwise conv2d with zero padding K // 2 on
  each side, K odd) of the images where blur[n] != 0, then every image clipped to the value
  range (RandomGaussianBlur). The kernel is an outer product, so an image is blurred down
  its rows into a double scratch image of the thread's own (K taps), then across (K taps):
  2K per element instead of K*K (RandomElasticTransform's field blur has K near 0.3 *
  min(H, W): 39 taps at 128 pixels, where the direct sum was 10x slower).
- Weights and boxes are read as double for both dtypes; a mixed value is rounded once.
- The images run on pynn's worker team; below PARALLEL_MIN elements on the calling thread.
"""
from _openmp cimport omp_get_max_threads

from pynn.backend.operands import augment_mix as operands
from pynn.backend.operands.common import HOST

include "_team.pxi"

import numpy as np

ctypedef fused floating:
    float
    double

cdef enum:
    PARALLEL_MIN = 32768
    KIND_MIX = 0
    KIND_MIX_BACKWARD = 1
    KIND_ERASE = 2
    KIND_BLUR = 3


ctypedef struct _MixJob:
    bint is_double, fill_per_element
    int kind
    const void* x
    const void* weights
    const void* boxes
    const void* fill
    const int* perm      # image n's partner (mix), inv[m] (mix backward)
    const double* vertical    # blur: the K taps down the rows, then across the columns
    const double* horizontal
    double* scratch           # blur: one (H, W, C) image per team slot
    void* y
    Py_ssize_t H, W, C, K
    double lo, hi


cdef inline bint _inside(const floating* box, Py_ssize_t r, Py_ssize_t c) noexcept nogil:
    return box[0] <= c and c < box[1] and box[2] <= r and r < box[3]


cdef inline void _mix_items(const _MixJob* j, const floating* x, long begin, long end,
                            int slot) noexcept nogil:
    cdef const floating* w = <const floating*>j.weights
    cdef const floating* boxes = <const floating*>j.boxes
    cdef const floating* fill = <const floating*>j.fill
    cdef floating* y = <floating*>j.y
    cdef Py_ssize_t P = j.H * j.W, C = j.C, r, c, ch, p
    cdef long n, other
    cdef double own, share, v
    cdef const floating* xn
    cdef const floating* xo
    cdef floating* yn
    for n in range(begin, end):
        xn = x + n * P * C
        yn = y + n * P * C
        if j.kind == KIND_BLUR:
            _blur_image(j, xn, yn, j.scratch + slot * P * C, w[n] != 0.0)
            continue
        for r in range(j.H):
            for c in range(j.W):
                p = (r * j.W + c) * C
                if j.kind == KIND_MIX:
                    if _inside(boxes + 4 * n, r, c):
                        own = w[n]
                        xo = x + j.perm[n] * P * C
                        for ch in range(C):
                            yn[p + ch] = <floating>(own * xn[p + ch] + (1.0 - own) * xo[p + ch])
                    else:
                        for ch in range(C):
                            yn[p + ch] = xn[p + ch]
                elif j.kind == KIND_MIX_BACKWARD:
                    # x is dy: image n's own share, then its reader's (other = inv[n]).
                    other = j.perm[n]
                    own = w[n] if _inside(boxes + 4 * n, r, c) else 1.0
                    share = 1.0 - w[other] if _inside(boxes + 4 * other, r, c) else 0.0
                    xo = x + other * P * C
                    for ch in range(C):
                        yn[p + ch] = <floating>(own * xn[p + ch] + share * xo[p + ch])
                elif _inside(boxes + 4 * n, r, c):
                    for ch in range(C):
                        v = fill[n * P * C + p + ch] if j.fill_per_element else fill[ch]
                        yn[p + ch] = <floating>(j.lo if v < j.lo else (j.hi if v > j.hi else v))
                else:
                    for ch in range(C):
                        yn[p + ch] = xn[p + ch]


cdef inline void _blur_image(const _MixJob* j, const floating* xn, floating* yn,
                             double* down, bint blur) noexcept nogil:
    """yn = clip(the zero-padded separable blur of xn, or xn, lo, hi); ``down`` (H, W, C)
    receives the pass down the rows."""
    cdef Py_ssize_t pad = j.K // 2, i, r, c, ch, rr, cc, C = j.C, W = j.W, row = j.W * j.C
    cdef Py_ssize_t p
    cdef double v, tap
    if blur:
        for p in range(j.H * row):
            down[p] = 0.0
        for r in range(j.H):
            for i in range(j.K):
                rr = r + i - pad
                if rr < 0 or rr >= j.H:
                    continue
                tap = j.vertical[i]
                for p in range(row):
                    down[r * row + p] += tap * xn[rr * row + p]
    for r in range(j.H):
        for c in range(W):
            for ch in range(C):
                p = r * row + c * C + ch
                if blur:
                    v = 0.0
                    for i in range(j.K):
                        cc = c + i - pad
                        if cc >= 0 and cc < W:
                            v += j.horizontal[i] * down[r * row + cc * C + ch]
                else:
                    v = xn[p]
                yn[p] = <floating>(j.lo if v < j.lo else (j.hi if v > j.hi else v))


cdef void _mix_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _MixJob* j = <_MixJob*>ctx
    if j.is_double:
        _mix_items(j, <const double*>j.x, begin, end, slot)
    else:
        _mix_items(j, <const float*>j.x, begin, end, slot)


def _run(int kind, const floating[:, :, :, ::1] x, const floating[::1] weights,
         const floating[:, ::1] boxes, const floating[::1] fill, const int[::1] perm,
         floating[:, :, :, ::1] y, bint fill_per_element, double lo, double hi,
         const double[::1] vertical=None, const double[::1] horizontal=None,
         double[::1] scratch=None):
    cdef Py_ssize_t N = x.shape[0]
    cdef _MixJob job
    cdef int threads
    if N == 0 or x.shape[1] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
        return
    job.is_double, job.kind, job.fill_per_element = floating is double, kind, fill_per_element
    job.x, job.weights, job.boxes, job.fill = &x[0, 0, 0, 0], &weights[0], &boxes[0, 0], \
        &fill[0]
    job.perm, job.y = &perm[0], &y[0, 0, 0, 0]
    job.H, job.W, job.C, job.lo, job.hi = x.shape[1], x.shape[2], x.shape[3], lo, hi
    job.K = 0 if vertical is None else vertical.shape[0]
    job.vertical = NULL if vertical is None else &vertical[0]
    job.horizontal = NULL if horizontal is None else &horizontal[0]
    threads = omp_get_max_threads() if N * job.H * job.W * job.C >= PARALLEL_MIN else 1
    if kind == KIND_BLUR:
        scratch = np.empty(threads * job.H * job.W * job.C)
    job.scratch = NULL if scratch is None else &scratch[0]
    with nogil:
        pynn_team_for(N, team_grain(N, threads), threads, _mix_job, &job)


def image_mix_forward(x, permutation, weights, boxes):
    """(N, H, W, C): y[n] = weights[n] * x[n] + (1 - weights[n]) * x[permutation[n]] inside
    boxes[n] = [x0, x1, y0, y1] (x0 <= column < x1, y0 <= row < y1), x[n] outside."""
    x, perm, _, weights, boxes = operands.image_mix_forward(HOST, x, permutation, weights,
                                                            boxes)
    y = np.empty(x.shape, x.dtype)
    _run(KIND_MIX, x, weights, boxes, weights, perm, y, False, 0.0, 0.0)
    return y


def image_mix_backward(dy, permutation, weights, boxes):
    """dx of image_mix_forward: dx[m] = dy[m] * (weights[m] inside box m, else 1)
    + dy[j] * (1 - weights[j] inside box j, else 0) for the j with permutation[j] = m."""
    dy, _, inverse, weights, boxes = operands.image_mix_backward(HOST, dy, permutation,
                                                                 weights, boxes)
    dx = np.empty(dy.shape, dy.dtype)
    _run(KIND_MIX_BACKWARD, dy, weights, boxes, weights, inverse, dx, False, 0.0, 0.0)
    return dx


def image_erase_forward(x, boxes, fill, value_range):
    """(N, H, W, C): clip(fill, *value_range) inside boxes[n] = [x0, x1, y0, y1], x outside;
    fill (C,) per channel or x's shape per element."""
    x, boxes, fill, per_element, (lo, hi) = operands.image_erase_forward(
        HOST, x, boxes, fill, value_range)
    y = np.empty(x.shape, x.dtype)
    if x.size:
        _run(KIND_ERASE, x, fill.reshape(-1)[:1], boxes, fill.reshape(-1),
             np.zeros(1, np.int32), y, per_element, lo, hi)
    return y


def image_blur_forward(x, vertical, horizontal, blur, value_range):
    """(N, H, W, C): clip(the images where blur[n] != 0 convolved with the outer product of
    vertical (K,) down the rows and horizontal (K,) across the columns, zero padding K // 2,
    the others as they are, *value_range); K odd (keras.ops.image.gaussian_blur)."""
    x, vertical, horizontal, blur, (lo, hi) = operands.image_blur_forward(
        HOST, x, vertical, horizontal, blur, value_range)
    y = np.empty(x.shape, x.dtype)
    if x.size:
        _run(KIND_BLUR, x, blur, np.zeros((x.shape[0], 4), x.dtype), blur,
             np.zeros(1, np.int32), y, False, lo, hi,
             np.ascontiguousarray(vertical, np.float64),
             np.ascontiguousarray(horizontal, np.float64))
    return y
