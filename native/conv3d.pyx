"""Conv3D kernels: conv.pyx's direct microkernel paths and its im2col + BLAS tiles (here
vol2col), one axis up.

Legend: N batch, D/H/W input depth/height/width, C input channels, KD/KH/KW kernel extents,
F filters, G groups (CG = C/G input and FG = F/G output channels per group), DO/HO/WO output
extents, PF/PT/PL leading pads, K = KD*KH*KW*CG (one vol2col row), R = N*DO*HO output rows
(WO voxels each; the tiling unit). Layout NDHWC; kernel (KD, KH, KW, CG, F) is a row-major
(K, F) matrix as is, group g's columns g*FG .. (g+1)*FG - 1.

Design:
- A tile is a run of whole output rows (n, do, ho). Its vol2col block (tile*WO, K) for one
  group lives in a scratch workspace bounded by ``_workspace_bytes`` and is filled on
  pynn's worker team (native/_team.h), one output row per item (for dilation 1 and one
  group each (wo, kd, kh) is one memcpy of KW*C contiguous values). Then ONE gemm per tile
  and group runs outside any team job: BLAS threads itself, nesting it would oversubscribe.
- forward: z_tile[:, group] = col @ kernel[:, group], then bias + activation in 64-row blocks
  on the team while the tile is near the cache. backward_weight: dkernel[:, group] +=
  col^T @ dz_tile[:, group] (beta 0 on the first tile). backward_input: dcol = dz_tile[:,
  group] @ kernel[:, group]^T, then col2vol as a gather over input rows (n, di, hi) in a
  fixed (kd, kh, wo, kw) order: each dx row is written by one thread, so the result is
  bit-identical for any thread count.
- 1x1x1 stride-1 ungrouped convs skip vol2col: x itself is the (R*WO, C) matrix.
- Direct path (ungrouped, while the (K, F) kernel matrix stays near L2: K*F <=
  _DIRECT_MAX_KF, conv.pyx's rule): no vol2col at all. conv.pyx's register-blocked
  microkernel (native/_microkernel.h) reads a zero-padded copy of x in blocks of 48
  consecutive output voxels, one segment per kernel row (kd, kh) whose KW*C inputs are
  contiguous in the padded row (one per tap when dilated along W), on the kernel packed
  into column panels once per call; the bias is the start value and the activation runs
  while the block is in L1. The stride-1 input gradient (C >= 16, as conv.pyx's) is the
  same forward over dz zero-padded to a 'full' conv, the kernel flipped in space with its
  channel axes swapped. backward_weight: kernel entries x filters summed over output rows,
  slab partials added in slab order. Against vol2col + BLAS on 2 shared cores (8 x
  16x32x32x16 -> 32, 3x3x3, 'same', ms): forward 50 / 175, backward_input 67 / 171,
  backward_weight 59 / 216 (bench/bench_conv3d.py has torch's conv3d beside them).
- The bias gradient and the activation's backward are activation.pyx's fused pass
  (api.conv3d_backward_composed); the transposed conv is conv3d_backward_input onto its full
  output, then Keras's window (as conv.pyx's conv2d_transpose).
Outputs are fresh arrays; temporaries come from pynn/backend/_scratch.py's pool.
"""

import numpy as np

from libc.string cimport memcpy, memset
from _blas cimport blas_init, gemm_rowmajor, floating
from _activation cimport ACT_LINEAR, bias_activation_rows, block_epilogue
from _openmp cimport omp_get_max_threads

from types import SimpleNamespace

from pynn._native.activation import activation_backward, activation_bias_backward
from pynn._native.dense import bias_backward
from pynn.backend._scratch import scratch
from pynn.backend.operands import conv3d as operands

include "_team.pxi"
from pynn.backend.operands.common import HOST
from pynn.backend.api import (
    ACTIVATIONS, ACTIVATIONS_NEEDING_INPUT, conv3d_backward_composed,
    conv3d_transpose_backward_composed,
)

blas_init()

# Bound on one tile's working set (vol2col rows + their output rows), conv.pyx's default:
# hundreds of GEMM rows per tile, near the cache between the fill and the GEMM.
_DEFAULT_WORKSPACE_BYTES = 4 << 20
_workspace_bytes = _DEFAULT_WORKSPACE_BYTES
cdef enum:
    _EPILOGUE_ROWS = 64   # rows per block of the bias + activation pass (one team item)


def _set_workspace_bytes(nbytes=None):
    """Tile-size knob for tests and benchmarks; None restores the default. Returns the old."""
    global _workspace_bytes
    old = _workspace_bytes
    _workspace_bytes = _DEFAULT_WORKSPACE_BYTES if nbytes is None else max(int(nbytes), 1)
    return old


include "_geom3.pxi"   # Geom3, shared with native/convlstm.pyx


cdef inline Py_ssize_t _imax(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a > b else b


cdef inline Py_ssize_t _imin(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a < b else b


cdef void _gemm(bint trans_a, bint trans_b, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                const floating* a, Py_ssize_t lda, const floating* b, Py_ssize_t ldb,
                floating beta, floating* c, Py_ssize_t ldc) noexcept nogil:
    """gemm_rowmajor that also accepts k == 0 (BLAS rejects a zero leading dimension)."""
    cdef Py_ssize_t i
    if m <= 0 or n <= 0:
        return
    if k <= 0:
        if beta == 0:
            for i in range(m):
                memset(c + i * ldc, 0, n * sizeof(floating))
        return
    gemm_rowmajor(trans_a, trans_b, <int>m, <int>n, <int>k, <floating>1, a, <int>lda,
                  b, <int>ldb, beta, c, <int>ldc)


cdef inline bint _is_pointwise(const Geom3* g) noexcept nogil:
    return (g.KD == 1 and g.KH == 1 and g.KW == 1 and g.SD == 1 and g.SH == 1
            and g.SW == 1 and g.G == 1)


# -- vol2col / col2vol ----------------------------------------------------------------------

cdef void conv3d_vol2col_row(const floating* x, floating* dst, const Geom3* g, Py_ssize_t r,
                             Py_ssize_t grp) noexcept nogil:
    """The WO vol2col rows of output row r = (n*DO + do)*HO + ho for group grp; dst points
    at the first of them. Row entries in the kernel's (kd, kh, kw, c) order."""
    cdef Py_ssize_t ho = r % g.HO, do = (r // g.HO) % g.DO, n = r // (g.HO * g.DO)
    cdef Py_ssize_t wo, kd, kh, kw, di, hi, wi, wi0, lo, hi_kw
    cdef Py_ssize_t C = g.C, CG = g.CG, KWC = g.KW * g.CG
    cdef const floating* xrow
    cdef floating* d
    for wo in range(g.WO):
        wi0 = wo * g.SW - g.PL
        for kd in range(g.KD):
            di = do * g.SD - g.PF + kd * g.DD
            for kh in range(g.KH):
                d = dst + wo * g.K + (kd * g.KH + kh) * KWC
                hi = ho * g.SH - g.PT + kh * g.DH
                if di < 0 or di >= g.D or hi < 0 or hi >= g.H:
                    memset(d, 0, KWC * sizeof(floating))
                    continue
                xrow = x + ((n * g.D + di) * g.H + hi) * g.W * C + grp * CG
                if g.DW == 1 and g.G == 1:   # the taps' inputs are one contiguous run
                    lo = _imin(_imax(-wi0, 0), g.KW)
                    hi_kw = _imax(_imin(g.W - wi0, g.KW), lo)
                    if lo > 0:
                        memset(d, 0, lo * C * sizeof(floating))
                    if hi_kw > lo:
                        memcpy(d + lo * C, xrow + (wi0 + lo) * C,
                               (hi_kw - lo) * C * sizeof(floating))
                    if hi_kw < g.KW:
                        memset(d + hi_kw * C, 0, (g.KW - hi_kw) * C * sizeof(floating))
                    continue
                for kw in range(g.KW):
                    wi = wi0 + kw * g.DW
                    if wi < 0 or wi >= g.W:
                        memset(d + kw * CG, 0, CG * sizeof(floating))
                    else:
                        memcpy(d + kw * CG, xrow + wi * C, CG * sizeof(floating))


cdef void conv3d_col2vol_row(const floating* dcol, floating* dx, const Geom3* g, Py_ssize_t t,
                             Py_ssize_t grp, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    """dx[n, di, hi, :, group grp] += every dcol entry of output rows [r0, r1) that reads
    input row t = (n*D + di)*H + hi."""
    cdef Py_ssize_t hi = t % g.H, di = (t // g.H) % g.D, n = t // (g.H * g.D)
    cdef Py_ssize_t kd, kh, kw, do, ho, wo, wi, wi0, num_d, num_h, r, j
    cdef Py_ssize_t C = g.C, CG = g.CG, KWC = g.KW * g.CG
    cdef floating* dst = dx + ((n * g.D + di) * g.H + hi) * g.W * C + grp * CG
    cdef const floating* src
    cdef const floating* s
    cdef floating* d
    for kd in range(g.KD):
        num_d = di + g.PF - kd * g.DD
        if num_d < 0 or num_d % g.SD != 0 or num_d // g.SD >= g.DO:
            continue
        do = num_d // g.SD
        for kh in range(g.KH):
            num_h = hi + g.PT - kh * g.DH
            if num_h < 0 or num_h % g.SH != 0 or num_h // g.SH >= g.HO:
                continue
            ho = num_h // g.SH
            r = (n * g.DO + do) * g.HO + ho
            if r < r0 or r >= r1:
                continue
            src = dcol + (r - r0) * g.WO * g.K + (kd * g.KH + kh) * KWC
            for wo in range(g.WO):
                wi0 = wo * g.SW - g.PL
                for kw in range(g.KW):
                    wi = wi0 + kw * g.DW
                    if wi < 0 or wi >= g.W:
                        continue
                    s = src + wo * g.K + kw * CG
                    d = dst + wi * C
                    for j in range(CG):
                        d[j] += s[j]


ctypedef struct _Job:
    bint is_double
    const void* src
    void* dst
    void* y
    const void* bias
    const Geom3* g
    Py_ssize_t grp, r0, r1, rows, cols
    int act
    double alpha


cdef void _vol2col_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _Job* j = <_Job*>ctx
    cdef Py_ssize_t row_len = j.g.WO * j.g.K
    cdef long r
    for r in range(j.r0 + begin, j.r0 + end):
        if j.is_double:
            conv3d_vol2col_row(<const double*>j.src, <double*>j.dst + (r - j.r0) * row_len,
                               j.g, r, j.grp)
        else:
            conv3d_vol2col_row(<const float*>j.src, <float*>j.dst + (r - j.r0) * row_len,
                               j.g, r, j.grp)


cdef void _vol2col(const floating* x, floating* col, const Geom3* g, Py_ssize_t grp,
                   Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    cdef _Job job
    cdef int threads = omp_get_max_threads()
    job.is_double, job.src, job.dst, job.g, job.grp, job.r0, job.r1 = \
        floating is double, x, col, g, grp, r0, r1
    pynn_team_for(r1 - r0, team_grain(r1 - r0, threads), threads, _vol2col_job, &job)


cdef void _col2vol_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _Job* j = <_Job*>ctx
    cdef Py_ssize_t t0 = (j.r0 // (j.g.HO * j.g.DO)) * j.g.D * j.g.H
    cdef long t
    for t in range(t0 + begin, t0 + end):
        if j.is_double:
            conv3d_col2vol_row(<const double*>j.src, <double*>j.dst, j.g, t, j.grp, j.r0, j.r1)
        else:
            conv3d_col2vol_row(<const float*>j.src, <float*>j.dst, j.g, t, j.grp, j.r0, j.r1)


cdef void _col2vol(const floating* dcol, floating* dx, const Geom3* g, Py_ssize_t grp,
                   Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    """The input rows of every sample the tile touches (rows it does not reach add
    nothing), one per team item."""
    cdef Py_ssize_t per_sample = g.D * g.H, rows_per_sample = g.DO * g.HO
    cdef Py_ssize_t t0 = (r0 // rows_per_sample) * per_sample
    cdef Py_ssize_t t1 = ((r1 - 1) // rows_per_sample + 1) * per_sample
    cdef _Job job
    cdef int threads = omp_get_max_threads()
    job.is_double, job.src, job.dst, job.g, job.grp, job.r0, job.r1 = \
        floating is double, dcol, dx, g, grp, r0, r1
    pynn_team_for(t1 - t0, team_grain(t1 - t0, threads), threads, _col2vol_job, &job)


cdef void _epilogue_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _Job* j = <_Job*>ctx
    cdef long blk
    cdef Py_ssize_t off, rows
    for blk in range(begin, end):
        off = blk * _EPILOGUE_ROWS * j.cols
        rows = _imin(_EPILOGUE_ROWS, j.rows - blk * _EPILOGUE_ROWS)
        if j.is_double:
            block_epilogue(<double*>j.dst + off, <double*>j.y + off, <const double*>j.bias,
                           0, <int>rows, 0, <int>j.cols, <int>j.cols, j.act, j.alpha)
        else:
            block_epilogue(<float*>j.dst + off, <float*>j.y + off, <const float*>j.bias,
                           0, <int>rows, 0, <int>j.cols, <int>j.cols, j.act, <float>j.alpha)


cdef void _epilogue(floating* z, floating* y, const floating* bias, Py_ssize_t rows,
                    Py_ssize_t cols, int act, double alpha) noexcept nogil:
    """z += bias, y = act(z) over one tile, in blocks of rows on the team."""
    cdef Py_ssize_t nblk = (rows + _EPILOGUE_ROWS - 1) // _EPILOGUE_ROWS
    cdef _Job job
    cdef int threads = omp_get_max_threads()
    job.is_double, job.dst, job.y, job.bias, job.rows, job.cols = floating is double, z, y, \
        bias, rows, cols
    job.act, job.alpha = act, alpha
    pynn_team_for(nblk, team_grain(nblk, threads), threads, _epilogue_job, &job)


# -- the three GEMM loops -----------------------------------------------------------------

cdef void conv3d_forward_tiles(const floating* x, const floating* w, const floating* bias,
                               floating* z, floating* y, floating* col, const Geom3* g,
                               Py_ssize_t tile, int act, double alpha) noexcept nogil:
    cdef Py_ssize_t r0, r1, rows, grp, R = g.N * g.DO * g.HO
    cdef const floating* a
    r0 = 0
    while r0 < R:
        r1 = _imin(r0 + tile, R)
        rows = (r1 - r0) * g.WO
        for grp in range(g.G):
            if _is_pointwise(g):
                a = x + r0 * g.WO * g.K
            else:
                _vol2col(x, col, g, grp, r0, r1)
                a = col
            _gemm(False, False, rows, g.FG, g.K, a, g.K, w + grp * g.FG, g.F, <floating>0,
                  z + r0 * g.WO * g.F + grp * g.FG, g.F)
        if bias != NULL or act != ACT_LINEAR or y != z:
            _epilogue(z + r0 * g.WO * g.F, y + r0 * g.WO * g.F, bias, rows, g.F, act, alpha)
        r0 = r1


cdef void conv3d_backward_weight_tiles(const floating* x, const floating* dz, floating* dw,
                                       floating* col, const Geom3* g,
                                       Py_ssize_t tile) noexcept nogil:
    cdef Py_ssize_t r0, r1, rows, grp, R = g.N * g.DO * g.HO
    cdef const floating* a
    cdef floating beta = 0
    r0 = 0
    while r0 < R:
        r1 = _imin(r0 + tile, R)
        rows = (r1 - r0) * g.WO
        for grp in range(g.G):
            if _is_pointwise(g):
                a = x + r0 * g.WO * g.K
            else:
                _vol2col(x, col, g, grp, r0, r1)
                a = col
            _gemm(True, False, g.K, g.FG, rows, a, g.K, dz + r0 * g.WO * g.F + grp * g.FG,
                  g.F, beta, dw + grp * g.FG, g.F)
        beta = 1
        r0 = r1


cdef void conv3d_backward_input_tiles(const floating* dz, const floating* w, floating* dx,
                                      floating* col, const Geom3* g,
                                      Py_ssize_t tile) noexcept nogil:
    """dx must be zeroed (col2vol accumulates) unless the conv is pointwise."""
    cdef Py_ssize_t r0, r1, rows, grp, R = g.N * g.DO * g.HO
    r0 = 0
    while r0 < R:
        r1 = _imin(r0 + tile, R)
        rows = (r1 - r0) * g.WO
        for grp in range(g.G):
            if _is_pointwise(g):
                _gemm(False, True, rows, g.K, g.F, dz + r0 * g.WO * g.F, g.F, w, g.F,
                      <floating>0, dx + r0 * g.WO * g.K, g.K)
            else:
                _gemm(False, True, rows, g.K, g.FG, dz + r0 * g.WO * g.F + grp * g.FG, g.F,
                      w + grp * g.FG, g.F, <floating>0, col, g.K)
                _col2vol(col, dx, g, grp, r0, r1)
        r0 = r1


# -- direct path: conv.pyx's microkernel on a zero-padded input, no vol2col ------------------

include "_microkernel.pxi"   # pynn._config.set_kernel reaches this module too

cdef enum:
    # Output voxels per block: a multiple of every microkernel height (6 rows with AVX2, 8
    # with AVX-512), so only the last block of the whole output ends in a short one.
    _FORWARD_VOXELS = 48
    # Packed kernel rows one sweep of a block reads before the next segment group starts
    # (conv.pyx's _FORWARD_PANEL_ROWS): the panel slice stays in L1.
    _FORWARD_PANEL_ROWS = 256


cdef inline void _seg_gemm(Py_ssize_t m, Py_ssize_t n, Py_ssize_t nseg, Py_ssize_t tn,
                           const floating* a, const Py_ssize_t* roff, const Py_ssize_t* aseg,
                           Py_ssize_t sat, const floating* b, const Py_ssize_t* bseg,
                           Py_ssize_t ldb, floating* c, Py_ssize_t ldc, const floating* init,
                           int accum) noexcept nogil:
    if floating is float:
        pynn_seg_gemm_f(m, n, nseg, tn, a, roff, aseg, sat, b, bseg, ldb, c, ldc, init, accum,
                        False)
    else:
        pynn_seg_gemm_d(m, n, nseg, tn, a, roff, aseg, sat, b, bseg, ldb, c, ldc, init, accum,
                        False)


ctypedef struct _DirectJob:
    bint is_double
    const void* xp
    const void* wp
    const void* bias
    void* z
    void* y
    const Geom3* g
    Py_ssize_t* roff_buf
    const Py_ssize_t* aseg
    const Py_ssize_t* bseg
    const Py_ssize_t* bseg_last
    Py_ssize_t nseg, tn, group, nc
    int act
    double alpha


cdef void conv3d_forward_direct_voxels(const floating* xp, const floating* wp,
                                       const floating* bias, floating* z, floating* y,
                                       const _DirectJob* j, Py_ssize_t* roff, Py_ssize_t p0,
                                       Py_ssize_t rows) noexcept nogil:
    """Output voxels [p0, p0 + rows) (flat n, do, ho, wo order) into z (F apart, the bias as
    start value) and act(z) into y (may alias z); z, y point at voxel p0's row; roff: this
    thread's `rows` window offsets into the padded input."""
    cdef const Geom3* g = j.g
    cdef Py_ssize_t p, t, n, od, ho, wo, origin, q0, wd, s0, ns
    cdef Py_ssize_t C = g.C, F = g.F
    # The block's first voxel by division, the others by stepping.
    wo = p0 % g.WO
    t = p0 // g.WO
    ho = t % g.HO
    t = t // g.HO
    od = t % g.DO
    n = t // g.DO
    origin = ((n * g.DP + od * g.SD) * g.HP + ho * g.SH) * g.WP * C
    for p in range(rows):
        roff[p] = origin + wo * g.SW * C
        wo = wo + 1
        if wo == g.WO:
            wo = 0
            ho = ho + 1
            if ho == g.HO:
                ho = 0
                od = od + 1
                if od == g.DO:
                    od = 0
                    n = n + 1
            origin = ((n * g.DP + od * g.SD) * g.HP + ho * g.SH) * g.WP * C
    q0 = 0
    while q0 < F:
        wd = _imin(j.nc, F - q0)
        s0 = 0
        while s0 < j.nseg:
            ns = _imin(j.group, j.nseg - s0)
            _seg_gemm(rows, wd, ns, j.tn, xp, roff, j.aseg + s0, 1, wp + q0 * g.K,
                      (j.bseg if wd == j.nc else j.bseg_last) + s0, wd, z + q0, F,
                      bias + q0 if bias != NULL and s0 == 0 else NULL, s0 > 0)
            s0 = s0 + ns
        q0 = q0 + j.nc
    block_epilogue(z, y, <const floating*>NULL, 0, <int>rows, 0, <int>F, <int>F, j.act,
                   <floating>j.alpha)


cdef void _forward_direct_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _DirectJob* j = <_DirectJob*>ctx
    cdef Py_ssize_t M = j.g.N * j.g.DO * j.g.HO * j.g.WO, p0, off
    cdef long blk
    for blk in range(begin, end):
        p0 = blk * _FORWARD_VOXELS
        off = p0 * j.g.F
        if j.is_double:
            conv3d_forward_direct_voxels(
                <const double*>j.xp, <const double*>j.wp, <const double*>j.bias,
                <double*>j.z + off, <double*>j.y + off, j, j.roff_buf + slot * _FORWARD_VOXELS,
                p0, _imin(p0 + _FORWARD_VOXELS, M) - p0)
        else:
            conv3d_forward_direct_voxels(
                <const float*>j.xp, <const float*>j.wp, <const float*>j.bias,
                <float*>j.z + off, <float*>j.y + off, j, j.roff_buf + slot * _FORWARD_VOXELS,
                p0, _imin(p0 + _FORWARD_VOXELS, M) - p0)


cdef void conv3d_forward_direct(const floating* xp, const floating* w, floating* wp,
                                const floating* bias, floating* z, floating* y, const Geom3* g,
                                Py_ssize_t* roff_buf, const Py_ssize_t* aseg,
                                const Py_ssize_t* bseg, const Py_ssize_t* bseg_last,
                                Py_ssize_t nseg, Py_ssize_t tn, int act,
                                double alpha) noexcept nogil:
    """The kernel (K, F) packed into panels (wp), then blocks of output voxels handed out
    dynamically on the team (no block's result depends on the thread that runs it)."""
    cdef Py_ssize_t M = g.N * g.DO * g.HO * g.WO
    cdef Py_ssize_t nblk = (M + _FORWARD_VOXELS - 1) // _FORWARD_VOXELS
    cdef int threads = omp_get_max_threads()
    cdef _DirectJob job
    if floating is float:
        job.nc = PYNN_NC_F
        pynn_pack_panels_f(w, g.F, g.K, g.F, PYNN_NC_F, wp)
    else:
        job.nc = PYNN_NC_D
        pynn_pack_panels_d(w, g.F, g.K, g.F, PYNN_NC_D, wp)
    job.is_double, job.xp, job.wp, job.bias, job.z, job.y, job.g = floating is double, xp, \
        wp, bias, z, y, g
    job.roff_buf, job.aseg, job.bseg, job.bseg_last = roff_buf, aseg, bseg, bseg_last
    job.nseg, job.tn, job.act, job.alpha = nseg, tn, act, alpha
    job.group = _imax(_FORWARD_PANEL_ROWS // tn, 1) if tn > 0 else nseg
    pynn_team_for(nblk, team_grain(nblk, threads), threads, _forward_direct_job, &job)


# backward_weight: rows = kernel entries (kd, kh, kw, c) at koff[i] in the padded input;
# one segment per output row (n, do, ho), t walks its WO voxels SW*C apart, b = dz. The output
# rows are cut into a fixed number of slabs (by the shape, never the thread count), each
# summed into its own (K, F) partial a chunk of rows at a time (the chunk's dz stays in L1
# while every block of kernel entries reads it); the partials are added in slab order.

ctypedef struct _WeightJob:
    bint is_double
    const void* xp
    const void* dz
    void* part
    const Geom3* g
    const Py_ssize_t* koff
    const Py_ssize_t* arow
    const Py_ssize_t* brow
    Py_ssize_t slabs, chunk, nc


cdef void conv3d_backward_weight_direct_slab(const floating* xp, const floating* dz,
                                             floating* part, const _WeightJob* j,
                                             Py_ssize_t slab) noexcept nogil:
    """Partial slab of dkernel: output rows [R*slab/S, R*(slab+1)/S)."""
    cdef const Geom3* g = j.g
    cdef Py_ssize_t R = g.N * g.DO * g.HO, r0, r1, c0, rows, q0, wd
    r0 = R * slab // j.slabs
    r1 = R * (slab + 1) // j.slabs
    memset(part, 0, g.K * g.F * sizeof(floating))
    c0 = r0
    while c0 < r1:
        rows = _imin(j.chunk, r1 - c0)
        q0 = 0
        while q0 < g.F:
            wd = _imin(j.nc, g.F - q0)
            _seg_gemm(g.K, wd, rows, g.WO, xp, j.koff, j.arow + c0, g.SW * g.C, dz + q0,
                      j.brow + c0, g.F, part + q0, g.F, <const floating*>NULL, True)
            q0 = q0 + j.nc
        c0 = c0 + rows


cdef void _weight_direct_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _WeightJob* j = <_WeightJob*>ctx
    cdef Py_ssize_t kf = j.g.K * j.g.F
    cdef long slab
    for slab in range(begin, end):
        if j.is_double:
            conv3d_backward_weight_direct_slab(<const double*>j.xp, <const double*>j.dz,
                                               <double*>j.part + slab * kf, j, slab)
        else:
            conv3d_backward_weight_direct_slab(<const float*>j.xp, <const float*>j.dz,
                                               <float*>j.part + slab * kf, j, slab)


cdef void conv3d_backward_weight_direct(const floating* xp, const floating* dz, floating* part,
                                        const Geom3* g, const Py_ssize_t* koff,
                                        const Py_ssize_t* arow, const Py_ssize_t* brow,
                                        Py_ssize_t slabs, Py_ssize_t chunk) noexcept nogil:
    cdef int threads = omp_get_max_threads()
    cdef _WeightJob job
    job.is_double, job.xp, job.dz, job.part, job.g = floating is double, xp, dz, part, g
    job.koff, job.arow, job.brow, job.slabs, job.chunk = koff, arow, brow, slabs, chunk
    job.nc = PYNN_NC_F if floating is float else PYNN_NC_D
    pynn_team_for(slabs, 1, threads, _weight_direct_job, &job)


# -- typed-memoryview shims (fused dispatch happens here, with the GIL) --------------------

cdef Geom3 _geom(dict g):
    cdef Geom3 s
    s.N, s.D, s.H, s.W, s.C = g["N"], g["D"], g["H"], g["W"], g["C"]
    s.KD, s.KH, s.KW, s.F, s.G = g["KD"], g["KH"], g["KW"], g["F"], g["G"]
    s.CG, s.FG = g["C"] // g["G"], g["F"] // g["G"]
    s.SD, s.SH, s.SW, s.DD, s.DH, s.DW = g["SD"], g["SH"], g["SW"], g["DD"], g["DH"], g["DW"]
    s.PF, s.PT, s.PL, s.DO, s.HO, s.WO = g["PF"], g["PT"], g["PL"], g["DO"], g["HO"], g["WO"]
    s.K = s.KD * s.KH * s.KW * s.CG
    s.DP, s.HP, s.WP = g.get("DP", 0), g.get("HP", 0), g.get("WP", 0)
    return s


def _run_forward(const floating[::1] x, const floating[::1] w, const floating[::1] bias,
                 floating[::1] z, floating[::1] y, floating[::1] col, dict geometry,
                 Py_ssize_t tile, int act, double alpha):
    cdef Geom3 g = _geom(geometry)
    cdef const floating* bptr = &bias[0] if bias is not None and bias.shape[0] > 0 else NULL
    with nogil:
        conv3d_forward_tiles(&x[0], &w[0], bptr, &z[0], &y[0], &col[0], &g, tile, act, alpha)


def _run_backward_weight(const floating[::1] x, const floating[::1] dz, floating[::1] dw,
                         floating[::1] col, dict geometry, Py_ssize_t tile):
    cdef Geom3 g = _geom(geometry)
    with nogil:
        conv3d_backward_weight_tiles(&x[0], &dz[0], &dw[0], &col[0], &g, tile)


def _run_backward_input(const floating[::1] dz, const floating[::1] w, floating[::1] dx,
                        floating[::1] col, dict geometry, Py_ssize_t tile):
    cdef Geom3 g = _geom(geometry)
    with nogil:
        conv3d_backward_input_tiles(&dz[0], &w[0], &dx[0], &col[0], &g, tile)


def _run_forward_direct(const floating[::1] xp, const floating[::1] w, floating[::1] wp,
                        const floating[::1] bias, floating[::1] z, floating[::1] y,
                        dict geometry, Py_ssize_t[::1] roff_buf, const Py_ssize_t[::1] aseg,
                        const Py_ssize_t[::1] bseg, const Py_ssize_t[::1] bseg_last,
                        Py_ssize_t tn, int act, double alpha):
    cdef Geom3 g = _geom(geometry)
    cdef const floating* bptr = &bias[0] if bias is not None and bias.shape[0] > 0 else NULL
    if roff_buf.shape[0] < omp_get_max_threads() * _FORWARD_VOXELS:
        raise ValueError("conv3d_forward: voxel offset buffer too small")
    if xp.shape[0] < g.N * g.DP * g.HP * g.WP * g.C or wp.shape[0] < g.K * g.F:
        raise ValueError("conv3d_forward: padded input or panel buffer too small")
    with nogil:
        conv3d_forward_direct(&xp[0], &w[0], &wp[0], bptr, &z[0], &y[0], &g, &roff_buf[0],
                              &aseg[0], &bseg[0], &bseg_last[0], aseg.shape[0], tn, act,
                              alpha)


def _run_backward_weight_direct(const floating[::1] xp, const floating[::1] dz,
                                floating[::1] part, dict geometry, const Py_ssize_t[::1] koff,
                                const Py_ssize_t[::1] arow, const Py_ssize_t[::1] brow,
                                Py_ssize_t slabs, Py_ssize_t chunk):
    cdef Geom3 g = _geom(geometry)
    cdef Py_ssize_t R = g.N * g.DO * g.HO
    if (koff.shape[0] != g.K or arow.shape[0] != R or brow.shape[0] != R
            or part.shape[0] < slabs * g.K * g.F or slabs < 1 or chunk < 1
            or xp.shape[0] < g.N * g.DP * g.HP * g.WP * g.C or dz.shape[0] < R * g.WO * g.F):
        raise ValueError("conv3d_backward_weight: direct pass tables do not fit the geometry")
    with nogil:
        conv3d_backward_weight_direct(&xp[0], &dz[0], &part[0], &g, &koff[0], &arow[0],
                                      &brow[0], slabs, chunk)


# When the direct path replaces vol2col + BLAS: conv.pyx's rules (its _DIRECT_MAX_KF and
# _DIRECT_MIN_C_BACKWARD_INPUT, measured on 2-D convs), ungrouped convs only. A padded copy
# larger than _MAX_PAD_RATIO times its source (a huge 'same' pad on a tiny input) goes to
# vol2col, which never pads.
_DIRECT_MAX_KF = 1 << 18
_DIRECT_MIN_C_BACKWARD_INPUT = 16
_MAX_PAD_RATIO = 8
_ALGOS = (None, "direct", "vol2col")
_algo = None


def _set_algo(algo=None):
    """Path knob for tests and benchmarks: 'direct' wherever the direct path applies
    (ungrouped; stride 1 for the input gradient), 'vol2col' everywhere, None the rules
    above. Returns the old value."""
    global _algo
    if algo not in _ALGOS:
        raise ValueError(f"conv3d: algo must be one of {_ALGOS}, got {algo!r}")
    old, _algo = _algo, algo
    return old


def _use_direct(g, kernel_f, padded, source, backward_input=False):
    if g["G"] != 1 or _algo == "vol2col":
        return False
    if padded > max(_MAX_PAD_RATIO * source, _workspace_bytes // 4):
        return False
    if _algo == "direct":
        return True
    if backward_input and g["C"] < _DIRECT_MIN_C_BACKWARD_INPUT:
        return False   # that conv has C outputs: the microkernel's scalar tail below a vector
    return g["KD"] * g["KH"] * g["KW"] * g["C"] * kernel_f <= _DIRECT_MAX_KF


def _padded_copy(a, front, top, left, shape):
    """a (N, D, H, W, C) at (front, top, left) in zeros of `shape` (N, DP, HP, WP, C), cut
    where it reaches past them; a itself when that is all of it."""
    if (front, top, left) == (0, 0, 0) and tuple(a.shape) == tuple(shape):
        return a
    out = np.zeros(shape, dtype=a.dtype)
    d, h, w = (min(a.shape[i], shape[i] - o) for i, o in ((1, front), (2, top), (3, left)))
    out[:, front:front + d, top:top + h, left:left + w] = a[:, :d, :h, :w]
    return out


def _direct_segments(g, nc):
    """Microkernel segments: one per kernel row (kd, kh) (its KW*C padded inputs are
    contiguous when the W dilation is 1), else one per tap; each segment's offset into the
    padded input, its first row of the packed kernel times a full and the last panel's
    width, and its length."""
    C, F, WPC = g["C"], g["F"], g["WP"] * g["C"]
    kd = np.arange(g["KD"], dtype=np.intp)[:, None]
    kh = np.arange(g["KH"], dtype=np.intp)[None, :]
    rows_dh = (kd * g["DD"] * g["HP"] + kh * g["DH"]) * WPC
    if g["DW"] == 1:
        aseg = rows_dh.ravel()
        first = ((kd * g["KH"] + kh) * g["KW"] * C).ravel()
        tn = g["KW"] * C
    else:
        kw = np.arange(g["KW"], dtype=np.intp)
        aseg = (rows_dh[..., None] + kw * g["DW"] * C).ravel()
        first = (((kd * g["KH"] + kh)[..., None] * g["KW"] + kw) * C).ravel()
        tn = C
    last = F - (F - 1) // nc * nc
    return aseg, first * nc, first * last, tn


def _forward_direct_into(xp, kernel, bias, z, y, g, act, alpha):
    """y = act(conv(xp, kernel) + bias) on the padded input xp (N, DP, HP, WP, C), 'valid'
    over it, into z and y."""
    g = dict(g, DP=xp.shape[1], HP=xp.shape[2], WP=xp.shape[3])
    nc = PYNN_NC_F if kernel.dtype == np.float32 else PYNN_NC_D
    aseg, bseg, bseg_last, tn = _direct_segments(g, nc)
    roff = np.empty(omp_get_max_threads() * _FORWARD_VOXELS, dtype=np.intp)
    with scratch(kernel.dtype, (kernel.size,)) as (wp,):
        _run_forward_direct(xp.reshape(-1), kernel.reshape(-1), wp, bias, z.reshape(-1),
                            y.reshape(-1), g, roff, aseg, bseg, bseg_last, tn, act, alpha)


# backward_weight (direct): a fixed number of slabs (the shape decides, never the thread
# count: the same bits on any), fewer when K*F is large so the partials stay near
# _SLAB_ELEMENTS; each slab swept _CHUNK_VOXELS output voxels (whole rows) at a time.
_SLABS = 16
_SLAB_ELEMENTS = 1 << 21
_CHUNK_VOXELS = 128


def _backward_weight_direct(x, dz, dw, g, shape):
    """dkernel (K, F) into dw from the padded x (shape) and dz, slab partials added in order."""
    xp = _padded_copy(x, g["PF"], g["PT"], g["PL"], shape)
    g = dict(g, DP=shape[1], HP=shape[2], WP=shape[3])
    C, WPC = g["C"], g["WP"] * g["C"]
    kd, kh, kw, c = np.ix_(*(np.arange(n, dtype=np.intp)
                             for n in (g["KD"], g["KH"], g["KW"], C)))
    koff = ((kd * g["DD"] * g["HP"] + kh * g["DH"]) * WPC + kw * g["DW"] * C + c).ravel()
    n, od, oh = np.ix_(*(np.arange(v, dtype=np.intp) for v in (g["N"], g["DO"], g["HO"])))
    arow = (((n * g["DP"] + od * g["SD"]) * g["HP"] + oh * g["SH"]) * WPC).ravel()
    rows = arow.size
    brow = np.arange(rows, dtype=np.intp) * (g["WO"] * g["F"])
    kf = koff.size * g["F"]
    slabs = max(1, min(_SLABS, _SLAB_ELEMENTS // max(kf, 1), rows))
    chunk = max(1, _CHUNK_VOXELS // max(g["WO"], 1))
    with scratch(x.dtype, (slabs * kf,)) as (part,):
        _run_backward_weight_direct(xp.reshape(-1), dz.reshape(-1), part, g, koff, arow,
                                    brow, slabs, chunk)
        np.sum(part.reshape(slabs, kf), axis=0, out=dw.reshape(-1))


def _padded_shape(g):
    """(N, DP, HP, WP, C): the zero-padded input the output windows reach (x sits at (PF,
    PT, PL) in it), exactly what the direct paths read."""
    return (g["N"], *(max((g[o] - 1) * g[s] + (g[k] - 1) * g[d] + 1, 0) for o, k, s, d in (
        ("DO", "KD", "SD", "DD"), ("HO", "KH", "SH", "DH"), ("WO", "KW", "SW", "DW"))), g["C"])


def _plan(g, dtype):
    """Output rows per tile and the vol2col workspace shape (one element when none)."""
    k = g["KD"] * g["KH"] * g["KW"] * (g["C"] // g["G"])
    row_bytes = max(g["WO"] * (k + g["F"]) * np.dtype(dtype).itemsize, 1)
    rows = max(g["N"] * g["DO"] * g["HO"], 1)
    tile = min(max(_workspace_bytes // row_bytes, 1), rows)
    pointwise = (g["KD"], g["KH"], g["KW"], g["SD"], g["SH"], g["SW"], g["G"]) == (1,) * 7
    return tile, (1 if pointwise else tile * g["WO"] * k,)


def conv3d_forward(x, kernel, bias, strides=(1, 1, 1), padding="valid",
                   dilation_rate=(1, 1, 1), groups=1, activation="linear", alpha=0.0):
    """y = act(conv3d(x, kernel) + bias) -> (y, z).

    x (N, D, H, W, C), kernel (KD, KH, KW, C/groups, F), bias (F,) or None; y (N, DO, HO,
    WO, F). z is the pre-activation when the activation needs it for backward, else None.
    """
    name, a, x, kernel, bias, g = operands.conv3d_forward(
        HOST, x, kernel, bias, strides, padding, dilation_rate, groups, activation, alpha)
    keep_z = name in ACTIVATIONS_NEEDING_INPUT
    z = np.empty((g["N"], g["DO"], g["HO"], g["WO"], g["F"]), dtype=x.dtype)
    y = np.empty_like(z) if keep_z else z
    if z.size:
        if not kernel.size or not x.size:   # an empty reduction: the bias alone
            z[...] = 0
            _run_bias_activation(z, y, bias, ACTIVATIONS.index(name), a)
        else:
            shape = _padded_shape(g)
            if _use_direct(g, g["F"], np.prod(shape), x.size):
                xp = _padded_copy(x, g["PF"], g["PT"], g["PL"], shape)
                _forward_direct_into(xp, kernel, bias, z, y, g, ACTIVATIONS.index(name),
                                     float(a))
            else:
                tile, col_shape = _plan(g, x.dtype)
                with scratch(x.dtype, col_shape) as (col,):
                    _run_forward(x.reshape(-1), kernel.reshape(-1), bias, z.reshape(-1),
                                 y.reshape(-1), col.reshape(-1), g, tile,
                                 ACTIVATIONS.index(name), float(a))
    return y, (z if keep_z else None)


def conv3d_backward_input(dz, kernel, input_shape, strides=(1, 1, 1), padding="valid",
                          dilation_rate=(1, 1, 1), groups=1):
    """dx (N, D, H, W, C) = gradient of the conv w.r.t. its input, from dz (N, DO, HO, WO, F)."""
    dz, kernel, input_shape, g = operands.conv3d_backward_input(
        HOST, dz, kernel, input_shape, strides, padding, dilation_rate, groups)
    if dz.size and kernel.size and (g["SD"], g["SH"], g["SW"]) == (1, 1, 1):
        # dx is the forward conv of dz zero-padded to a 'full' conv, the kernel flipped
        full = [(k - 1) * d for k, d in ((g["KD"], g["DD"]), (g["KH"], g["DH"]),
                                          (g["KW"], g["DW"]))]
        shape = (g["N"], g["D"] + full[0], g["H"] + full[1], g["W"] + full[2], g["F"])
        if _use_direct(g, g["C"], np.prod(shape), dz.size, backward_input=True):
            dzp = _padded_copy(dz, full[0] - g["PF"], full[1] - g["PT"], full[2] - g["PL"],
                               shape)
            flipped = np.ascontiguousarray(kernel[::-1, ::-1, ::-1].transpose(0, 1, 2, 4, 3))
            gt = dict(g, C=g["F"], F=g["C"], DO=g["D"], HO=g["H"], WO=g["W"], SD=1, SH=1,
                      SW=1)
            dx = np.empty(input_shape, dtype=dz.dtype)
            _forward_direct_into(dzp, flipped, None, dx, dx, gt, ACTIVATIONS.index("linear"),
                                 0.0)
            return dx
    dx = np.zeros(input_shape, dtype=dz.dtype)
    if dz.size and dx.size and kernel.size:
        tile, col_shape = _plan(g, dz.dtype)
        with scratch(dz.dtype, col_shape) as (col,):
            _run_backward_input(dz.reshape(-1), kernel.reshape(-1), dx.reshape(-1),
                                col.reshape(-1), g, tile)
    return dx


def conv3d_backward_weight(x, dz, kernel_shape, strides=(1, 1, 1), padding="valid",
                           dilation_rate=(1, 1, 1), groups=1):
    """dkernel (KD, KH, KW, C/groups, F) = gradient of the conv w.r.t. its kernel."""
    x, dz, kernel_shape, g = operands.conv3d_backward_weight(
        HOST, x, dz, kernel_shape, strides, padding, dilation_rate, groups)
    dw = np.zeros(kernel_shape, dtype=x.dtype)
    shape = _padded_shape(g)
    if dz.size and dw.size and _use_direct(g, g["F"], np.prod(shape), x.size):
        _backward_weight_direct(x, dz, dw, g, shape)
    elif dz.size and dw.size:
        tile, col_shape = _plan(g, x.dtype)
        with scratch(x.dtype, col_shape) as (col,):
            _run_backward_weight(x.reshape(-1), dz.reshape(-1), dw.reshape(-1),
                                 col.reshape(-1), g, tile)
    return dw


def conv3d_backward(dy, x, z, y, kernel, strides=(1, 1, 1), padding="valid",
                    dilation_rate=(1, 1, 1), groups=1, activation="linear", alpha=0.0,
                    use_bias=True, need_input_grad=True):
    """A Conv3D layer's whole backward -> (dx or None, dkernel, dbias or None), from dy =
    dL/dy of conv3d_forward; z, y as in activation_backward."""
    name, a, dy, x, z, y, kernel, _ = operands.conv3d_backward(
        HOST, dy, x, z, y, kernel, strides, padding, dilation_rate, groups, activation, alpha)
    return conv3d_backward_composed(_COMPOSED, dy, x, z, y, kernel, strides, padding,
                                    dilation_rate, groups, name, a, use_bias, need_input_grad)


# -- conv3d_transpose: conv3d_backward_input onto the full output, then Keras's window -----

def _window(a, front, top, left, depth, rows, cols):
    """out[:, i, j, k] = a[:, i + front, j + top, k + left] where that lies in a, else 0."""
    n, d, h, w, c = a.shape
    if (front, top, left, depth, rows, cols) == (0, 0, 0, d, h, w):
        return a
    out = np.zeros((n, depth, rows, cols, c), dtype=a.dtype)
    spans = [(max(0, -o), min(size, extent - o), o)
             for o, size, extent in ((front, depth, d), (top, rows, h), (left, cols, w))]
    if all(hi > lo for lo, hi, _ in spans):
        (d0, d1, fo), (h0, h1, to), (w0, w1, lo_) = spans
        out[:, d0:d1, h0:h1, w0:w1] = a[:, d0 + fo:d1 + fo, h0 + to:h1 + to,
                                        w0 + lo_:w1 + lo_]
    return out


def _run_bias_activation(z, y, bias, int act, double alpha):
    cdef Py_ssize_t f = z.shape[4]
    if z.size:
        _bias_activation_rows(z.reshape(-1, f), y.reshape(-1, f), bias, act, alpha)


def _bias_activation_rows(floating[:, ::1] z, floating[:, ::1] y, bias, int act,
                          double alpha):
    cdef const floating[::1] b
    cdef const floating* bp = NULL
    if bias is not None:
        b = bias
        bp = &b[0]
    with nogil:
        bias_activation_rows(&z[0, 0], &y[0, 0], bp, z.shape[0], z.shape[1], act,
                             <floating>alpha)


def conv3d_transpose_forward(x, kernel, bias, strides=(1, 1, 1), padding="valid",
                             output_padding=None, dilation_rate=(1, 1, 1), activation="linear",
                             alpha=0.0):
    """Keras's Conv3DTranspose: y = act(conv_transpose(x, kernel) + bias) -> (y, z).

    x (N, D, H, W, C), kernel (KD, KH, KW, F, C), bias (F,) or None; y (N, DO, HO, WO, F) by
    Keras 3's output length."""
    name, a, x, kernel, bias, g = operands.conv3d_transpose_forward(
        HOST, x, kernel, bias, strides, padding, output_padding, dilation_rate, activation,
        alpha)
    full = conv3d_backward_input(x, kernel, (g["N"], g["DF"], g["HF"], g["WF"], g["F"]),
                                 strides, "valid", dilation_rate, 1)
    z = _window(full, g["CF"], g["CT"], g["CL"], g["DO"], g["HO"], g["WO"])
    keep_z = name in ACTIVATIONS_NEEDING_INPUT
    y = np.empty_like(z) if keep_z else z
    _run_bias_activation(z, y, bias, ACTIVATIONS.index(name), a)
    return y, (z if keep_z else None)


def _placed(dz, g):
    """dz at its crop offset in a zeroed full output (N, DF, HF, WF, F)."""
    return _window(dz, -g["CF"], -g["CT"], -g["CL"], g["DF"], g["HF"], g["WF"])


def conv3d_transpose_backward(dy, x, z, y, kernel, strides=(1, 1, 1), padding="valid",
                              output_padding=None, dilation_rate=(1, 1, 1), activation="linear",
                              alpha=0.0, use_bias=True, need_input_grad=True):
    """A Conv3DTranspose layer's whole backward -> (dx or None, dkernel, dbias or None)."""
    name, a, dy, x, z, y, kernel, g = operands.conv3d_transpose_backward(
        HOST, dy, x, z, y, kernel, strides, padding, output_padding, dilation_rate,
        activation, alpha)
    return conv3d_transpose_backward_composed(
        _COMPOSED, _placed, dy, x, z, y, kernel, g, strides, dilation_rate, name, a,
        use_bias, need_input_grad)


# The ops the composed backwards run in turn.
_COMPOSED = SimpleNamespace(
    activation_backward=activation_backward, activation_bias_backward=activation_bias_backward,
    bias_backward=bias_backward, conv3d_backward_input=conv3d_backward_input,
    conv3d_backward_weight=conv3d_backward_weight, conv3d_forward=conv3d_forward)


# -- convlstm (native/convlstm.pyx): the direct forward as C entry points, so the ConvLSTM's
# nogil step loop runs its recurrent conv (and that conv's input gradient) on this microkernel
# path without a Python round trip per step: capsules of the two typed specializations.
from cpython.pycapsule cimport PyCapsule_New


def _direct_forward_capsules():
    """(float, double) capsules of conv3d_forward_direct (signature in native/convlstm.pyx)."""
    return (PyCapsule_New(<void*>conv3d_forward_direct[float],
                          b"pynn.conv3d.forward_direct_f", NULL),
            PyCapsule_New(<void*>conv3d_forward_direct[double],
                          b"pynn.conv3d.forward_direct_d", NULL))


def _direct_forward_plan(dict g, dtype):
    """-> (aseg, bseg, bseg_last, tn, roff) for conv3d_forward_direct over a padded input of
    geometry ``g`` (DP, HP, WP set)."""
    nc = PYNN_NC_F if np.dtype(dtype) == np.float32 else PYNN_NC_D
    aseg, bseg, bseg_last, tn = _direct_segments(g, nc)
    roff = np.empty(omp_get_max_threads() * _FORWARD_VOXELS, dtype=np.intp)
    return aseg, bseg, bseg_last, tn, roff
