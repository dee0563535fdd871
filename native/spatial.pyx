"""Spatial kernels of NHWC images: zero padding / cropping and integer-factor upsampling.

Legend: N batch, H/W input spatial, HO/WO output spatial, C channels, SH/SW upsampling
factors, DH/DW window offsets.

Design:
- Padding and cropping are one window copy: y[n, h, w] = x[n, h + DH, w + DW], zero where
  that pixel lies outside x. Padding reads at negative offsets (-top, -left), cropping at
  positive ones, so pad2d_forward's backward (the crop) is pad2d_backward and the other way
  round: ZeroPadding2D and Cropping2D share this one pair of ops.
- Upsampling follows Keras 3: 'nearest' repeats each pixel (ops.repeat), 'bilinear' is
  ops.image.resize, i.e. torch's interpolate(align_corners=False, antialias=False) on the
  torch backend: source coordinate (o + 0.5) * (in / out) - 0.5 clamped at 0, neighbours
  floor and floor + 1 (the last pixel repeated at the edge), weights computed in the data's
  own precision as torch does, once per axis and call (a table of HO and one of WO taps).
- The window copy and upsample2d_forward write each output row (n, ho) from one thread
  (the N*HO rows on pynn's worker team). upsample2d_backward gathers by input row (n, hi):
  one thread owns a dx row and sums every output that read it in a fixed order, so results
  are bit-identical for any thread count and no dx element is written twice (no scatter, no
  atomics).
Outputs are fresh arrays; nothing accumulates into caller memory.
"""
import numpy as np

from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from _openmp cimport omp_get_max_threads

from pynn.backend.operands import spatial as operands
from pynn.backend.operands.common import HOST

include "_team.pxi"

ctypedef fused floating:
    float
    double


# Below this many output elements a kernel runs on the calling thread: handing rows to the
# worker team costs more than the pass.
cdef enum:
    PARALLEL_MIN = 32768


cdef inline int _threads(Py_ssize_t work) noexcept nogil:
    return omp_get_max_threads() if work >= PARALLEL_MIN else 1


cdef inline Py_ssize_t _imax(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a > b else b


cdef inline Py_ssize_t _imin(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a < b else b


# -- pad / crop: one window copy ------------------------------------------------------------

cdef void _window_row(const floating* x, floating* y, Py_ssize_t H, Py_ssize_t W,
                      Py_ssize_t C, Py_ssize_t HO, Py_ssize_t WO, Py_ssize_t DH,
                      Py_ssize_t DW, Py_ssize_t r) noexcept nogil:
    """Output row r = n*HO + ho: zeros, the in-bounds run of x's row ho + DH, zeros."""
    cdef Py_ssize_t n = r // HO, h = r % HO + DH
    cdef Py_ssize_t w0 = _imax(-DW, 0), w1 = _imin(W - DW, WO)
    cdef floating* yr = y + r * WO * C
    if h < 0 or h >= H or w1 <= w0:
        memset(yr, 0, WO * C * sizeof(floating))
        return
    memset(yr, 0, w0 * C * sizeof(floating))
    memcpy(yr + w0 * C, x + ((n * H + h) * W + w0 + DW) * C, (w1 - w0) * C * sizeof(floating))
    memset(yr + w1 * C, 0, (WO - w1) * C * sizeof(floating))


ctypedef struct _SpatialJob:
    bint is_double
    int mode
    const void* x
    void* y
    Py_ssize_t H, W, C, HO, WO, DH, DW, SH, SW
    const Taps* th
    const Taps* tw


cdef void _window_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _SpatialJob* j = <_SpatialJob*>ctx
    cdef long r
    for r in range(begin, end):
        if j.is_double:
            _window_row(<const double*>j.x, <double*>j.y, j.H, j.W, j.C, j.HO, j.WO, j.DH,
                        j.DW, r)
        else:
            _window_row(<const float*>j.x, <float*>j.y, j.H, j.W, j.C, j.HO, j.WO, j.DH,
                        j.DW, r)


def _window_copy(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y, Py_ssize_t DH,
                 Py_ssize_t DW):
    """Output rows on pynn's worker team (native/_team.h)."""
    cdef Py_ssize_t N = y.shape[0]
    cdef _SpatialJob job
    cdef int threads
    job.is_double, job.x, job.y = floating is double, \
        <const void*>(&x[0, 0, 0, 0] if x.size else NULL), &y[0, 0, 0, 0]
    job.H, job.W, job.C, job.HO, job.WO, job.DH, job.DW = x.shape[1], x.shape[2], \
        x.shape[3], y.shape[1], y.shape[2], DH, DW
    threads = _threads(N * job.HO * job.WO * job.C)
    with nogil:
        pynn_team_for(N * job.HO, team_grain(N * job.HO, threads), threads, _window_job, &job)


def pad2d_forward(x, padding):
    """Zero padding: (N, H, W, C) -> (N, top + H + bottom, left + W + right, C)."""
    x, ((t, _), (l, _)), out = operands.pad2d_forward(HOST, x, padding)
    y = np.empty(out, dtype=x.dtype)
    if y.size:
        _window_copy(x, y, -t, -l)
    return y


def pad2d_backward(dy, padding):
    """The crop that undoes pad2d_forward: dy (N, H, W, C) -> (N, H - top - bottom,
    W - left - right, C). Also Cropping2D's forward."""
    dy, ((t, _), (l, _)), out = operands.pad2d_backward(HOST, dy, padding)
    dx = np.empty(out, dtype=dy.dtype)
    if dx.size:
        _window_copy(dy, dx, t, l)
    return dx


# -- upsampling -----------------------------------------------------------------------------

cdef enum:
    NEAREST = 0
    BILINEAR = 1


cdef struct Taps:
    Py_ssize_t i0, i1
    double l0, l1


cdef inline Taps _taps(Py_ssize_t o, Py_ssize_t size_in, Py_ssize_t size_out,
                       bint single) noexcept nogil:
    """The two input pixels and weights of output o along one axis (torch's linear
    upsample, align_corners=False): in float32 when ``single``, as torch computes them for
    float32 data, else in double."""
    cdef Taps t
    cdef float fscale, fsrc
    cdef double scale, src
    if single:
        fscale = <float>size_in / <float>size_out
        fsrc = fscale * (<float>o + <float>0.5) - <float>0.5
        if fsrc < 0:
            fsrc = 0
        t.i0 = _imin(<Py_ssize_t>fsrc, size_in - 1)
        fsrc = fsrc - <float>t.i0
        if fsrc > 1:
            fsrc = 1
        t.l1 = fsrc
        t.l0 = <float>1 - fsrc
    else:
        scale = <double>size_in / <double>size_out
        src = scale * (<double>o + 0.5) - 0.5
        if src < 0:
            src = 0
        t.i0 = _imin(<Py_ssize_t>src, size_in - 1)
        src = src - <double>t.i0
        if src > 1:
            src = 1
        t.l1 = src
        t.l0 = 1 - src
    t.i1 = t.i0 + 1 if t.i0 < size_in - 1 else t.i0
    return t


cdef inline double _weight(Taps t, Py_ssize_t i) noexcept nogil:
    """How much input pixel i contributes to the output of ``t`` (both taps at an edge)."""
    cdef double wgt = 0
    if t.i0 == i:
        wgt = t.l0
    if t.i1 == i:
        wgt = wgt + t.l1
    return wgt


cdef Taps* _tap_table(Py_ssize_t size_in, Py_ssize_t factor, bint single) noexcept nogil:
    """The taps of every output along one axis (NULL when out of memory): computed once per
    call, not once per pixel (a division each)."""
    cdef Py_ssize_t o, size_out = size_in * factor
    cdef Taps* table = <Taps*>malloc(size_out * sizeof(Taps))
    if table != NULL:
        for o in range(size_out):
            table[o] = _taps(o, size_in, size_out, single)
    return table


cdef void _upsample_row(const floating* x, floating* y, Py_ssize_t H, Py_ssize_t W,
                        Py_ssize_t C, Py_ssize_t SH, Py_ssize_t SW, const Taps* th,
                        const Taps* tw, Py_ssize_t r) noexcept nogil:
    """Output row r = n*HO + ho; th/tw are the tap tables (NULL: 'nearest')."""
    cdef Py_ssize_t HO = H * SH, WO = W * SW
    cdef Py_ssize_t n = r // HO, ho = r % HO, wo, c
    cdef const floating* a
    cdef const floating* b
    cdef const floating* p
    cdef const floating* q
    cdef floating* yp
    cdef floating h0, h1, w0, w1
    if th == NULL:
        p = x + (n * H + ho // SH) * W * C
        for wo in range(WO):
            memcpy(y + (r * WO + wo) * C, p + (wo // SW) * C, C * sizeof(floating))
        return
    h0 = <floating>th[ho].l0
    h1 = <floating>th[ho].l1
    a = x + (n * H + th[ho].i0) * W * C
    b = x + (n * H + th[ho].i1) * W * C
    for wo in range(WO):
        w0 = <floating>tw[wo].l0
        w1 = <floating>tw[wo].l1
        yp = y + (r * WO + wo) * C
        p = a + tw[wo].i0 * C
        q = a + tw[wo].i1 * C
        for c in range(C):
            yp[c] = h0 * (w0 * p[c] + w1 * q[c])
        p = b + tw[wo].i0 * C
        q = b + tw[wo].i1 * C
        for c in range(C):
            yp[c] += h1 * (w0 * p[c] + w1 * q[c])


cdef void _upsample_backward_row(const floating* dy, floating* dx, Py_ssize_t H,
                                 Py_ssize_t W, Py_ssize_t C, Py_ssize_t SH, Py_ssize_t SW,
                                 const Taps* th, const Taps* tw, Py_ssize_t t) noexcept nogil:
    """dx row t = n*H + hi: the sum over every output that read it, in (ho, wo) order.
    Bilinear outputs reading input i lie in [(i - 1)*S, (i + 2)*S): the sampling point of
    output o sits within one pixel of i, and floor/rounding slips stay inside that margin."""
    cdef Py_ssize_t HO = H * SH, WO = W * SW
    cdef Py_ssize_t n = t // H, hi = t % H, wi, ho, wo, ho0, ho1, wo0, wo1, c
    cdef floating* drow = dx + t * W * C
    cdef floating* xp
    cdef const floating* dp
    cdef floating wh, ww
    memset(drow, 0, W * C * sizeof(floating))
    if th == NULL:
        for ho in range(hi * SH, hi * SH + SH):
            for wi in range(W):
                xp = drow + wi * C
                for wo in range(wi * SW, wi * SW + SW):
                    dp = dy + ((n * HO + ho) * WO + wo) * C
                    for c in range(C):
                        xp[c] += dp[c]
        return
    ho0 = _imax((hi - 1) * SH, 0)
    ho1 = _imin((hi + 2) * SH, HO)
    for ho in range(ho0, ho1):
        wh = <floating>_weight(th[ho], hi)
        if wh == 0:
            continue
        for wi in range(W):
            xp = drow + wi * C
            wo0 = _imax((wi - 1) * SW, 0)
            wo1 = _imin((wi + 2) * SW, WO)
            for wo in range(wo0, wo1):
                ww = <floating>_weight(tw[wo], wi)
                if ww == 0:
                    continue
                ww = wh * ww
                dp = dy + ((n * HO + ho) * WO + wo) * C
                for c in range(C):
                    xp[c] += ww * dp[c]


cdef int _tables(Py_ssize_t H, Py_ssize_t W, Py_ssize_t SH, Py_ssize_t SW, int mode,
                 bint single, Taps** th, Taps** tw) except -1:
    th[0] = tw[0] = NULL
    if mode == NEAREST:
        return 0
    th[0] = _tap_table(H, SH, single)
    tw[0] = _tap_table(W, SW, single)
    if th[0] == NULL or tw[0] == NULL:
        free(th[0])
        free(tw[0])
        raise MemoryError("upsample2d: no memory for the interpolation tables")
    return 0


cdef void _upsample_forward_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _SpatialJob* j = <_SpatialJob*>ctx
    cdef long r
    for r in range(begin, end):
        if j.is_double:
            _upsample_row(<const double*>j.x, <double*>j.y, j.H, j.W, j.C, j.SH, j.SW, j.th,
                          j.tw, r)
        else:
            _upsample_row(<const float*>j.x, <float*>j.y, j.H, j.W, j.C, j.SH, j.SW, j.th,
                          j.tw, r)


cdef void _upsample_backward_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _SpatialJob* j = <_SpatialJob*>ctx
    cdef long t
    for t in range(begin, end):
        if j.is_double:
            _upsample_backward_row(<const double*>j.x, <double*>j.y, j.H, j.W, j.C, j.SH,
                                   j.SW, j.th, j.tw, t)
        else:
            _upsample_backward_row(<const float*>j.x, <float*>j.y, j.H, j.W, j.C, j.SH,
                                   j.SW, j.th, j.tw, t)


def _upsample_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y,
                      Py_ssize_t SH, Py_ssize_t SW, int mode):
    """Output rows on pynn's worker team."""
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3]
    cdef Py_ssize_t total = N * H * SH * W * SW * C
    cdef Taps* th
    cdef Taps* tw
    cdef _SpatialJob job
    cdef int threads = _threads(total)
    _tables(H, W, SH, SW, mode, floating is float, &th, &tw)
    job.is_double, job.x, job.y = floating is double, &x[0, 0, 0, 0], &y[0, 0, 0, 0]
    job.H, job.W, job.C, job.SH, job.SW, job.th, job.tw = H, W, C, SH, SW, th, tw
    with nogil:
        pynn_team_for(N * H * SH, team_grain(N * H * SH, threads), threads,
                      _upsample_forward_job, &job)
    free(th)
    free(tw)


def _upsample_backward(const floating[:, :, :, ::1] dy, floating[:, :, :, ::1] dx,
                       Py_ssize_t SH, Py_ssize_t SW, int mode):
    """Input rows on pynn's worker team (each input row gathers from its own outputs)."""
    cdef Py_ssize_t N = dx.shape[0], H = dx.shape[1], W = dx.shape[2], C = dx.shape[3]
    cdef Py_ssize_t total = N * H * SH * W * SW * C
    cdef Taps* th
    cdef Taps* tw
    cdef _SpatialJob job
    cdef int threads = _threads(total)
    _tables(H, W, SH, SW, mode, floating is float, &th, &tw)
    job.is_double, job.x, job.y = floating is double, &dy[0, 0, 0, 0], &dx[0, 0, 0, 0]
    job.H, job.W, job.C, job.SH, job.SW, job.th, job.tw = H, W, C, SH, SW, th, tw
    with nogil:
        pynn_team_for(N * H, team_grain(N * H, threads), threads, _upsample_backward_job,
                      &job)
    free(th)
    free(tw)


def upsample2d_forward(x, size, interpolation="nearest"):
    """(N, H, W, C) -> (N, H*SH, W*SW, C), 'nearest' or 'bilinear' as Keras 3."""
    x, (sh, sw), mode, out = operands.upsample2d_forward(HOST, x, size, interpolation)
    y = np.empty(out, dtype=x.dtype)
    if y.size:
        _upsample_forward(x, y, sh, sw, NEAREST if mode == "nearest" else BILINEAR)
    return y


def upsample2d_backward(dy, input_shape, size, interpolation="nearest"):
    """dx (input_shape): each output's gradient spread back over the pixels it read."""
    dy, input_shape, (sh, sw), mode = operands.upsample2d_backward(HOST, dy, input_shape,
                                                                   size, interpolation)
    dx = np.empty(input_shape, dtype=dy.dtype)
    if dx.size:
        _upsample_backward(dy, dx, sh, sw, NEAREST if mode == "nearest" else BILINEAR)
    return dx


# -- 3-D spatial ops (ZeroPadding3D, Cropping3D, UpSampling3D; branch vol) -------------------
#
# Legend: D/H/W input depth, height, width, DO/HO/WO output, DD/DH/DW window offsets, SD/SH/SW
# upsampling factors. pad3d is the 2-D window copy with a depth offset: output row
# (n, do, ho) is zeros, the in-bounds run of x's row (n, do + DD, ho + DH), zeros.
# upsample3d is Keras's UpSampling3D: ops.repeat along each axis ('nearest' only). Rows on
# OpenMP threads, one writer per output row: the pad copy by output row; upsample3d by input
# row (n, di, hi), which expands its row once and copies it into its other SD*SH - 1 output
# rows (one memcpy per pixel per output row was 8x slower), and its backward gathers into
# that dx row in (do, ho, wo) order: bit-identical for any thread count.

from cython.parallel cimport prange


cdef struct Window3:
    Py_ssize_t D, H, W, C, DO, HO, WO, DD, DH, DW


cdef void _window3d_row(const floating* x, floating* y, const Window3* g,
                        Py_ssize_t r) noexcept nogil:
    """Output row r = (n*DO + do)*HO + ho."""
    cdef Py_ssize_t ho = r % g.HO, do = (r // g.HO) % g.DO, n = r // (g.HO * g.DO)
    cdef Py_ssize_t d = do + g.DD, h = ho + g.DH, C = g.C
    cdef Py_ssize_t w0 = _imax(-g.DW, 0), w1 = _imin(g.W - g.DW, g.WO)
    cdef floating* yr = y + r * g.WO * C
    if d < 0 or d >= g.D or h < 0 or h >= g.H or w1 <= w0:
        memset(yr, 0, g.WO * C * sizeof(floating))
        return
    memset(yr, 0, w0 * C * sizeof(floating))
    memcpy(yr + w0 * C, x + (((n * g.D + d) * g.H + h) * g.W + w0 + g.DW) * C,
           (w1 - w0) * C * sizeof(floating))
    memset(yr + w1 * C, 0, (g.WO - w1) * C * sizeof(floating))


def _window3d_copy(const floating[:, :, :, :, ::1] x, floating[:, :, :, :, ::1] y,
                   Py_ssize_t DD, Py_ssize_t DH, Py_ssize_t DW):
    cdef Window3 g
    cdef Py_ssize_t rows = y.shape[0] * y.shape[1] * y.shape[2], r
    cdef const floating* xp = &x[0, 0, 0, 0, 0] if x.size else NULL
    cdef floating* yp = &y[0, 0, 0, 0, 0]
    g.D, g.H, g.W, g.C = x.shape[1], x.shape[2], x.shape[3], x.shape[4]
    g.DO, g.HO, g.WO = y.shape[1], y.shape[2], y.shape[3]
    g.DD, g.DH, g.DW = DD, DH, DW
    for r in prange(rows, schedule="static", nogil=True,
                    use_threads_if=rows * g.WO * g.C >= PARALLEL_MIN):
        _window3d_row(xp, yp, &g, r)


def pad3d_forward(x, padding):
    """Zero padding: (N, D, H, W, C) -> (N, front + D + back, top + H + bottom,
    left + W + right, C)."""
    x, ((f, _), (t, _), (l, _)), out = operands.pad3d_forward(HOST, x, padding)
    y = np.empty(out, dtype=x.dtype)
    if y.size:
        _window3d_copy(x, y, -f, -t, -l)
    return y


def pad3d_backward(dy, padding):
    """The crop that undoes pad3d_forward (also Cropping3D's forward): dy (N, D, H, W, C) ->
    (N, D - front - back, H - top - bottom, W - left - right, C)."""
    dy, ((f, _), (t, _), (l, _)), out = operands.pad3d_backward(HOST, dy, padding)
    dx = np.empty(out, dtype=dy.dtype)
    if dx.size:
        _window3d_copy(dy, dx, f, t, l)
    return dx


cdef void _upsample3d_rows(const floating* x, floating* y, const Window3* g, Py_ssize_t SD,
                           Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t t) noexcept nogil:
    """x's row t = (n*D + di)*H + hi, each pixel SW times, into the first of its SD*SH
    output rows, then that row copied into the others: the thread owns all of them."""
    cdef Py_ssize_t hi = t % g.H, di = (t // g.H) % g.D, n = t // (g.H * g.D), wo, a, b
    cdef Py_ssize_t row = g.WO * g.C
    cdef const floating* p = x + t * g.W * g.C
    cdef floating* first = y + ((n * g.DO + di * SD) * g.HO + hi * SH) * row
    for wo in range(g.WO):
        memcpy(first + wo * g.C, p + (wo // SW) * g.C, g.C * sizeof(floating))
    for a in range(SD):
        for b in range(SH):
            if a or b:
                memcpy(first + (a * g.HO + b) * row, first, row * sizeof(floating))


cdef void _upsample3d_backward_row(const floating* dy, floating* dx, const Window3* g,
                                   Py_ssize_t SD, Py_ssize_t SH, Py_ssize_t SW,
                                   Py_ssize_t t) noexcept nogil:
    """dx row t = (n*D + di)*H + hi: the sum of its SD*SH*SW copies, in (do, ho, wo) order."""
    cdef Py_ssize_t hi = t % g.H, di = (t // g.H) % g.D, n = t // (g.H * g.D)
    cdef Py_ssize_t do, ho, wi, wo, c, C = g.C
    cdef floating* drow = dx + t * g.W * C
    cdef floating* xp
    cdef const floating* dp
    memset(drow, 0, g.W * C * sizeof(floating))
    for do in range(di * SD, di * SD + SD):
        for ho in range(hi * SH, hi * SH + SH):
            for wi in range(g.W):
                xp = drow + wi * C
                for wo in range(wi * SW, wi * SW + SW):
                    dp = dy + (((n * g.DO + do) * g.HO + ho) * g.WO + wo) * C
                    for c in range(C):
                        xp[c] += dp[c]


def _upsample3d(const floating[:, :, :, :, ::1] src, floating[:, :, :, :, ::1] dst,
                Py_ssize_t SD, Py_ssize_t SH, Py_ssize_t SW, bint backward):
    """Forward: src x, dst y. Backward: src dy, dst dx. Either way one item per input row
    (n, di, hi), which owns its output rows (forward) or its dx row (backward)."""
    cdef Window3 g
    cdef const floating* sp = &src[0, 0, 0, 0, 0]
    cdef floating* dp = &dst[0, 0, 0, 0, 0]
    cdef Py_ssize_t r, rows
    cdef Py_ssize_t total = src.size if backward else dst.size
    g.C = src.shape[4]
    if backward:
        g.D, g.H, g.W = dst.shape[1], dst.shape[2], dst.shape[3]
        g.DO, g.HO, g.WO = src.shape[1], src.shape[2], src.shape[3]
    else:
        g.D, g.H, g.W = src.shape[1], src.shape[2], src.shape[3]
        g.DO, g.HO, g.WO = dst.shape[1], dst.shape[2], dst.shape[3]
    rows = src.shape[0] * g.D * g.H
    if backward:
        for r in prange(rows, schedule="static", nogil=True,
                        use_threads_if=total >= PARALLEL_MIN):
            _upsample3d_backward_row(sp, dp, &g, SD, SH, SW, r)
    else:
        for r in prange(rows, schedule="static", nogil=True,
                        use_threads_if=total >= PARALLEL_MIN):
            _upsample3d_rows(sp, dp, &g, SD, SH, SW, r)


def upsample3d_forward(x, size):
    """(N, D, H, W, C) -> (N, D*SD, H*SH, W*SW, C): each voxel repeated (Keras's
    UpSampling3D)."""
    x, (sd, sh, sw), out = operands.upsample3d_forward(HOST, x, size)
    y = np.empty(out, dtype=x.dtype)
    if y.size:
        _upsample3d(x, y, sd, sh, sw, False)
    return y


def upsample3d_backward(dy, input_shape, size):
    """dx (input_shape): each voxel's gradient, the sum over its SD*SH*SW copies."""
    dy, input_shape, (sd, sh, sw) = operands.upsample3d_backward(HOST, dy, input_shape, size)
    dx = np.empty(input_shape, dtype=dy.dtype)
    if dx.size:
        _upsample3d(dy, dx, sd, sh, sw, True)
    return dx
