"""Conv2D kernels: a direct microkernel over a zero-padded input, or im2col + BLAS tiles.

Legend: N batch, H/W input spatial, C input channels, KH/KW kernel spatial, F filters,
HO/WO output spatial, K = KH*KW*C (one im2col row), G = N*HO (output rows, the tiling unit),
M = G*WO (GEMM rows). Layout NHWC, kernel (KH, KW, C, F) = a row-major (K, F) matrix as is.

Design (chosen by measurement, see bench/bench_conv_kernels.py):
- Direct paths (the default while the (K, F) kernel matrix stays near L2: K*F <=
  _DIRECT_MAX_KF) read a zero-padded copy of the input (one pass; none for an unpadded
  'valid' conv) with a register-blocked microkernel, so no im2col matrix is ever written:
  - forward: blocks of 48 consecutive output pixels (across output rows);
    MR output pixels x one panel of filters (2 vectors) of accumulators, one segment per
    kernel row kh, whose KW*C inputs are contiguous in the padded row, one kernel row per
    sweep so the panel slice stays in L1; the bias is the start value and the activation
    runs while the block is in L1. The (K, F) kernel is packed into column panels once per
    call, so each block reads it as one sequential stream.
  - backward_weight: dkernel rows (kh, kw, c) x filters, summed over output pixels; the
    output rows are cut into a fixed number of slabs with their own (K, F) partials, added
    in slab order (deterministic, and both cores busy on a 27 x 32 result); each chunk of
    dz rows is packed into panels per thread first.
  - backward_input, stride 1: dx is the forward conv of dz zero-padded to a 'full' conv,
    with the kernel flipped in space and its channel axes swapped; a gather, so every dx
    element is written once by one thread.
  - conv2d_backward (a layer's whole backward): backward_weight's slab pass also makes dz
    from dy and y just before packing it (and the bias gradient from it), writing dz
    straight into backward_input's zero-padded buffer: the separate ops wrote dz, read it
    back for the kernel gradient and once more to pad it (in-process A/B on 2 threads:
    backward 3-5% faster for 64 -> 128 channels, 5% for 32 -> 64, 9% for the RGB layer).
  Against im2col + BLAS on 2 threads (AVX-512): RGB 3x3 layer (C = 3) forward 3x, backward
  weight 3x; 32 -> 64 and 64 -> 128 channel 3x3 layers 1.2-2x per op. On Zen 3 (AVX2)
  the 64 -> 128 layer runs forward at 88-94% of NumPy's sgemm peak, backward_input 85-88%,
  backward_weight 78-80%.
- im2col + BLAS (large K*F, and strided backward_input): a tile is a run of whole output
  rows (n, ho). Its im2col block (tile*WO, K) lives in a workspace bounded by
  ``_workspace_bytes`` and is filled in parallel (output rows; for dilation 1 each (wo,
  kh) is one memcpy of KW*C contiguous values). Then ONE gemm per tile runs outside any
  parallel job: BLAS threads itself, and nesting it would oversubscribe the cores.
  forward: y_tile = col @ kernel, then bias + activation fused in the pass right after the
  GEMM; backward_weight: dkernel += col^T @ dz_tile; backward_input: dcol = dz_tile @
  kernel^T, then col2im as a gather over input rows (n, hi) in a fixed (kh, wo) order, so
  the result is bit-identical for any thread count. 1x1 stride-1 convs skip im2col.
- Winograd F(2x2, 3x3) (native/_winograd.h): float32 3x3 stride-1 dilation-1 convs whose
  two channel counts reach 32 (_winograd_pays) run the direct paths' forward conv on the
  padded input -- the forward, and backward_input as the forward of padded dz -- as 16 GEMMs
  on the same microkernel, 2.25x fewer multiply-adds (32 -> 32 channels 1.2-1.3x, 64 -> 64
  1.7x per op on 1 thread). backward_weight of the same convs (also inside conv2d_backward,
  whose pass over dy then makes only dz and the bias gradient) transforms input tiles as the
  forward does and output-gradient tiles by A dY A^T, runs 16 GEMMs reducing over tiles in
  slabs fixed by the shape (partials added in slab order: the same bits for any thread
  count) and maps the 4x4 sums back to 3x3 by G^T (.) G (32 -> 32 1.5x, 64 -> 64 1.5x per op
  on 1 thread; table at _WINOGRAD_MIN_CHANNELS). Where the tiles are many and the map a
  multiple of 4, F(4x4, 3x3) takes over (36 GEMMs for 16 pixels: 4x fewer multiply-adds than
  direct; 1.1-1.4x F(2x2, 3x3) per op, table at _WINO4_MIN_TILES). The forward op itself
  takes Winograd from far fewer tiles (a batch-1 prediction: _WINOGRAD_MIN_TILES_FORWARD),
  F(4x4) there too (_WINO4_FEW_TILES), as the inference plans' native twin runs it
  (native/infer.pyx Conv2DWinograd, the same bits). PYNN_CONV_ALGO=
  direct|winograd|winograd4 forces one wherever Winograd applies.
- The epilogue is this file's own: a branch-free relu vectorizes, act_value's branch on random
  signs did not (it cost more than the first layer's whole GEMM).
- Every parallel loop here is a job of pynn's worker team (native/_team.h), not an OpenMP
  region: a training step's ops then wake no sleeping thread through an interrupt (the small
  CNN's step 9.7 -> 8.3 ms on 2 Intel cores). Per-thread scratch is indexed by the job's team
  slot; no result depends on which thread ran an item.
Outputs are fresh arrays; nothing accumulates into caller memory. Temporaries (padded copies,
partial sums, im2col tiles) come from the scratch pool in pynn/backend/_scratch.py.
"""

import os

import numpy as np

from libc.string cimport memcpy, memset
from _blas cimport blas_init, gemm_rowmajor, floating
from _activation cimport (
    ACT_LINEAR, ACT_RELU, ACT_SOFTMAX, act_backward_vec, act_forward_vec, act_value,
    add_rows_double,
    bias_activation_rows, softmax_grad_row, softmax_row,
)
from _openmp cimport omp_get_thread_num, omp_get_max_threads

from types import SimpleNamespace

from pynn._config import usable_cores
from pynn._native.activation import (
    _pooled_activation_bias, activation_backward, activation_bias_backward,
)
from pynn._native.dense import _INTEL as _CPU_INTEL, bias_backward
from pynn.backend._scratch import scratch
from pynn.backend.operands import conv as operands
from pynn.backend.operands.pool import windows_tile

include "_team.pxi"
from pynn.backend.operands.common import HOST
from pynn.backend.api import (
    ACTIVATIONS, ACTIVATIONS_NEEDING_INPUT, conv2d_backward_composed,
    conv2d_transpose_backward_composed,
)

blas_init()

# Bound on one tile's working set (im2col rows + their output rows): big enough that each
# GEMM has hundreds of rows and the per-tile thread wake-ups are amortized, small enough to
# stay near the cache between the fill and the GEMM. A 2-32 MiB sweep
# (bench/bench_conv_kernels.py --workspace-kib) showed no clear winner on a shared 2-core box.
_DEFAULT_WORKSPACE_BYTES = 4 << 20
_workspace_bytes = _DEFAULT_WORKSPACE_BYTES


def _set_workspace_bytes(nbytes=None):
    """Tile-size knob for tests and benchmarks; None restores the default. Returns the old."""
    global _workspace_bytes
    old = _workspace_bytes
    _workspace_bytes = _DEFAULT_WORKSPACE_BYTES if nbytes is None else max(int(nbytes), 1)
    return old


# When the direct paths replace im2col + BLAS (bench/bench_conv_kernels.py, 2 threads,
# float32): while the kernel matrix (K, F) stays near L2 (it is streamed once per MR output
# pixels): 1.2-3x BLAS up to K*F = 1152*128, 0.5-0.9x at 2304*256. backward_input (stride 1)
# follows the same rule but needs C >= 16: its conv has C output channels, and below one
# vector of them the microkernel runs its scalar tail (C = 3: 0.1x BLAS).
_DIRECT_MAX_KF = 1 << 18
_direct_max_k = None      # test knob: None = the rules above, else K <= it for every op


# backward_weight (direct): partial sums per slab of output rows, fewer when K*F is large so
# the partials stay under ~8 MiB in float32. Two slabs per core of this machine (4 to 16),
# fixed at import: set_num_threads never changes it, so results stay bit-identical for any
# thread count. Fewer, larger slabs keep each core on one partial longer (2 cores, 64 ->
# 128 channels, % of the paired sgemm peak: 16 slabs 76.5-80.6, 8: 79.3-82.1, 4: 79.8-83.0).
# A slab is swept _CHUNK_PIXELS output pixels at a time, packed into panels that stay in L1
# while every kernel row block reads them (Zen 3, 2 threads, % of the paired sgemm peak for
# 32x32x32x64->128: 64 px 75.9, 128 px 78.4, 256 px 78.5, 512 px 77.7).
_SLABS = min(16, max(4, 2 * usable_cores()))
# Output pixels per forward block: a multiple of every microkernel height (6 rows with AVX2,
# 8 with AVX-512), so that only the last block of the whole output ends in a short one. One
# output row per block (32 pixels = 5 blocks of 6 and one of 2, whose 4 accumulator chains
# cannot hide the FMA latency) left ~3% on the table on Zen 3.
_FORWARD_PIXELS = 48
_SLAB_ELEMENTS = 1 << 21
_CHUNK_PIXELS = 128
_DIRECT_MIN_C_BACKWARD_INPUT = 16


def _set_direct_max_k(k=None):
    """Path knob for tests and benchmarks: K <= k takes the microkernel paths; None
    restores the default rules, 0 forces BLAS everywhere. Returns the old value."""
    global _direct_max_k
    old = _direct_max_k
    _direct_max_k = None if k is None else int(k)
    return old


cdef struct Geom:
    Py_ssize_t N, H, W, C, KH, KW, F, SH, SW, DH, DW, PT, PL, HO, WO, K
    Py_ssize_t HP, WP   # the zero-padded input the direct paths read (see _padded_size)


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


include "_microkernel.pxi"   # pynn._config.set_kernel reaches this module too

# -- register-blocked microkernel (direct paths, no BLAS; native/_microkernel.h) ----------
# Forward: rows = output pixels, roff[i] = wo*SW*C; one segment per kernel row kh, whose
# KW*C inputs are contiguous in the padded row, so t walks them with sat = 1.
# backward_weight: rows = kernel entries (kh, kw, c) at roff[i] in the padded image; one
# segment per output row of a slab, t walks its pixels with sat = SW*C, b = dz.


cdef inline Py_ssize_t _panel_width(const floating* dummy) noexcept nogil:
    """Columns per packed panel for this dtype (the argument only picks the specialization)."""
    if floating is float:
        return PYNN_NC_F
    else:
        return PYNN_NC_D


cdef inline void _pack_panels(const floating* b, Py_ssize_t ldb, Py_ssize_t k, Py_ssize_t n,
                              floating* out) noexcept nogil:
    if floating is float:
        pynn_pack_panels_f(b, ldb, k, n, PYNN_NC_F, out)
    else:
        pynn_pack_panels_d(b, ldb, k, n, PYNN_NC_D, out)


cdef inline void _seg_gemm(Py_ssize_t m, Py_ssize_t n, Py_ssize_t nseg, Py_ssize_t tn,
                           const floating* a, const Py_ssize_t* roff, const Py_ssize_t* aseg,
                           Py_ssize_t sat, const floating* b, const Py_ssize_t* bseg,
                           Py_ssize_t ldb, floating* c, Py_ssize_t ldc, const floating* init,
                           int accum, bint wide) noexcept nogil:
    if floating is float:
        pynn_seg_gemm_f(m, n, nseg, tn, a, roff, aseg, sat, b, bseg, ldb, c, ldc, init, accum,
                        wide)
    else:
        pynn_seg_gemm_d(m, n, nseg, tn, a, roff, aseg, sat, b, bseg, ldb, c, ldc, init, accum,
                        wide)


cdef inline bint _is_pointwise(const Geom* g) noexcept nogil:
    return g.KH == 1 and g.KW == 1 and g.SH == 1 and g.SW == 1


# -- im2col / col2im -----------------------------------------------------------------------

cdef inline void _kw_range(Py_ssize_t wi0, const Geom* g, Py_ssize_t* lo,
                           Py_ssize_t* hi) noexcept nogil:
    """Kernel columns kw in [lo, hi) whose input column wi0 + kw lands inside [0, W)
    (dilation 1 only)."""
    lo[0] = _imin(_imax(-wi0, 0), g.KW)
    hi[0] = _imax(_imin(g.W - wi0, g.KW), lo[0])


cdef void _im2col_row(const floating* x, floating* dst, const Geom* g, Py_ssize_t r) noexcept nogil:
    """Fill the WO im2col rows of output row r = n*HO + ho; dst points at the first of them."""
    cdef Py_ssize_t n = r // g.HO, ho = r % g.HO
    cdef Py_ssize_t wo, kh, kw, hi, wi, wi0, lo, hi_kw
    cdef Py_ssize_t C = g.C, KWC = g.KW * g.C
    cdef const floating* xrow
    cdef floating* d
    for wo in range(g.WO):
        wi0 = wo * g.SW - g.PL
        for kh in range(g.KH):
            d = dst + wo * g.K + kh * KWC
            hi = ho * g.SH - g.PT + kh * g.DH
            if hi < 0 or hi >= g.H:
                memset(d, 0, KWC * sizeof(floating))
                continue
            xrow = x + (n * g.H + hi) * g.W * C
            if g.DW == 1:
                _kw_range(wi0, g, &lo, &hi_kw)
                if lo > 0:
                    memset(d, 0, lo * C * sizeof(floating))
                if hi_kw > lo:
                    memcpy(d + lo * C, xrow + (wi0 + lo) * C, (hi_kw - lo) * C * sizeof(floating))
                if hi_kw < g.KW:
                    memset(d + hi_kw * C, 0, (g.KW - hi_kw) * C * sizeof(floating))
            else:
                for kw in range(g.KW):
                    wi = wi0 + kw * g.DW
                    if wi < 0 or wi >= g.W:
                        memset(d + kw * C, 0, C * sizeof(floating))
                    else:
                        memcpy(d + kw * C, xrow + wi * C, C * sizeof(floating))


ctypedef struct _ColJob:
    bint is_double
    const void* src
    void* dst
    const Geom* g
    Py_ssize_t r0, r1
    const void* bias
    void* y
    Py_ssize_t rows, cols
    int act
    double alpha


cdef void _im2col_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _ColJob* j = <_ColJob*>ctx
    cdef Py_ssize_t row_len = j.g.WO * j.g.K
    cdef long r
    for r in range(j.r0 + begin, j.r0 + end):
        if j.is_double:
            _im2col_row(<const double*>j.src, <double*>j.dst + (r - j.r0) * row_len, j.g, r)
        else:
            _im2col_row(<const float*>j.src, <float*>j.dst + (r - j.r0) * row_len, j.g, r)


cdef void _im2col(const floating* x, floating* col, const Geom* g, Py_ssize_t r0,
                  Py_ssize_t r1) noexcept nogil:
    """Rows [r0, r1) on pynn's worker team (native/_team.h)."""
    cdef _ColJob job
    cdef int threads = omp_get_max_threads()
    job.is_double, job.src, job.dst, job.g, job.r0, job.r1 = floating is double, x, col, g, \
        r0, r1
    pynn_team_for(r1 - r0, team_grain(r1 - r0, threads), threads, _im2col_job, &job)


cdef void _col2im_row(const floating* dcol, floating* dx, const Geom* g, Py_ssize_t n,
                      Py_ssize_t hi, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    """dx[n, hi, :, :] += every dcol entry of output rows [r0, r1) that reads input row hi."""
    cdef Py_ssize_t kh, kw, ho, wo, num, r, wi, wi0, lo, hi_kw, j, cnt
    cdef Py_ssize_t C = g.C, KWC = g.KW * g.C
    cdef floating* dst = dx + (n * g.H + hi) * g.W * C
    cdef const floating* src
    cdef const floating* s
    cdef floating* d
    for kh in range(g.KH):
        num = hi + g.PT - kh * g.DH
        if num < 0 or num % g.SH != 0:
            continue
        ho = num // g.SH
        r = n * g.HO + ho
        if ho >= g.HO or r < r0 or r >= r1:
            continue
        src = dcol + (r - r0) * g.WO * g.K + kh * KWC
        for wo in range(g.WO):
            wi0 = wo * g.SW - g.PL
            if g.DW == 1:
                _kw_range(wi0, g, &lo, &hi_kw)
                s = src + wo * g.K + lo * C
                d = dst + (wi0 + lo) * C
                cnt = (hi_kw - lo) * C
                for j in range(cnt):
                    d[j] += s[j]
            else:
                for kw in range(g.KW):
                    wi = wi0 + kw * g.DW
                    if wi < 0 or wi >= g.W:
                        continue
                    s = src + wo * g.K + kw * C
                    d = dst + wi * C
                    for j in range(C):
                        d[j] += s[j]


cdef void _col2im_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _ColJob* j = <_ColJob*>ctx
    cdef Py_ssize_t t0 = (j.r0 // j.g.HO) * j.g.H
    cdef long t
    for t in range(t0 + begin, t0 + end):
        if j.is_double:
            _col2im_row(<const double*>j.src, <double*>j.dst, j.g, t // j.g.H, t % j.g.H,
                        j.r0, j.r1)
        else:
            _col2im_row(<const float*>j.src, <float*>j.dst, j.g, t // j.g.H, t % j.g.H,
                        j.r0, j.r1)


cdef void _col2im(const floating* dcol, floating* dx, const Geom* g, Py_ssize_t r0,
                  Py_ssize_t r1) noexcept nogil:
    """Input rows of every image the tile touches (rows it does not reach add nothing), on
    pynn's worker team (native/_team.h): each input row is written by one thread."""
    cdef Py_ssize_t t0 = (r0 // g.HO) * g.H
    cdef Py_ssize_t t1 = ((r1 - 1) // g.HO + 1) * g.H
    cdef _ColJob job
    cdef int threads = omp_get_max_threads()
    job.is_double, job.src, job.dst, job.g, job.r0, job.r1 = floating is double, dcol, dx, g, \
        r0, r1
    pynn_team_for(t1 - t0, team_grain(t1 - t0, threads), threads, _col2im_job, &job)


# -- small-K paths: microkernel instead of BLAS ---------------------------------------------

cdef inline void _relu_row(floating* z, floating* y, Py_ssize_t cols) noexcept nogil:
    # Branch-free select, so GCC vectorizes it; act_value's branch on random signs
    # mispredicts half the time (relu through act_value cost more than the conv GEMM of
    # the first CNN layer). In place through one pointer: with y == z gcc's runtime overlap
    # check sent the two-pointer loop to its scalar copy (RGB layer forward: 0.6 ms of
    # 1.9). NaN passes through, as in act_value.
    cdef Py_ssize_t j
    cdef floating v
    if y == z:
        for j in range(cols):
            v = z[j]
            z[j] = 0 if v < 0 else v
    else:
        for j in range(cols):
            v = z[j]
            y[j] = 0 if v < 0 else v


cdef inline void _epilogue_rows(floating* z, floating* y, const floating* bias,
                                Py_ssize_t rows, Py_ssize_t cols, int act,
                                floating alpha) noexcept nogil:
    """z += bias (when not NULL), then y = act(z), for rows still in cache (serial)."""
    cdef Py_ssize_t r, j
    cdef floating* zr
    cdef floating* yr
    for r in range(rows):
        zr = z + r * cols
        yr = y + r * cols
        if bias != NULL:
            for j in range(cols):
                zr[j] = zr[j] + bias[j]
        if act == ACT_SOFTMAX:
            softmax_row(zr, yr, cols)
        elif act == ACT_RELU:
            _relu_row(zr, yr, cols)
        elif act == ACT_LINEAR:
            if yr != zr:
                for j in range(cols):
                    yr[j] = zr[j]
        else:  # one loop per activation, which vectorizes (a per-element switch does not)
            act_forward_vec(zr, yr, cols, act, alpha)


cdef void _epilogue_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _ColJob* j = <_ColJob*>ctx
    cdef long blk
    cdef Py_ssize_t off
    for blk in range(begin, end):
        off = blk * 64 * j.cols
        if j.is_double:
            _epilogue_rows(<double*>j.dst + off, <double*>j.y + off, <const double*>j.bias,
                           _imin(64, j.rows - blk * 64), j.cols, j.act, j.alpha)
        else:
            _epilogue_rows(<float*>j.dst + off, <float*>j.y + off, <const float*>j.bias,
                           _imin(64, j.rows - blk * 64), j.cols, j.act, <float>j.alpha)


cdef void _epilogue(floating* z, floating* y, const floating* bias, Py_ssize_t rows,
                    Py_ssize_t cols, int act, floating alpha) noexcept nogil:
    """The BLAS path's bias + activation pass over one tile, in blocks of 64 rows on pynn's
    worker team (native/_team.h)."""
    cdef Py_ssize_t nblk = (rows + 63) // 64
    cdef _ColJob job
    cdef int threads = omp_get_max_threads()
    job.is_double, job.dst, job.y, job.bias, job.rows, job.cols = floating is double, z, y, \
        bias, rows, cols
    job.act, job.alpha = act, alpha
    pynn_team_for(nblk, team_grain(nblk, threads), threads, _epilogue_job, &job)


ctypedef struct _PadJob:
    bint is_double, copy
    const void* x
    void* xp
    Py_ssize_t N, H, W, C, HP, WP, top, left, cols


cdef inline void _pad_row(const floating* x, floating* xp, const _PadJob* j,
                          Py_ssize_t t) noexcept nogil:
    """Row t = (n, h) of _pad (copy) or _zero_margins."""
    cdef Py_ssize_t n = t // j.HP, h = t % j.HP - j.top, C = j.C, WP = j.WP, left = j.left
    cdef floating* dst = xp + t * WP * C
    if j.copy:
        if h < 0 or h >= j.H or j.cols == 0:
            memset(dst, 0, WP * C * sizeof(floating))
        else:
            memset(dst, 0, left * C * sizeof(floating))
            memcpy(dst + left * C, x + (n * j.H + h) * j.W * C, j.cols * C * sizeof(floating))
            memset(dst + (left + j.cols) * C, 0, (WP - left - j.cols) * C * sizeof(floating))
    elif h < 0 or h >= j.H:
        memset(dst, 0, WP * C * sizeof(floating))
    else:
        memset(dst, 0, left * C * sizeof(floating))
        memset(dst + (left + j.W) * C, 0, (WP - left - j.W) * C * sizeof(floating))


cdef void _pad_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _PadJob* j = <_PadJob*>ctx
    cdef long t
    for t in range(begin, end):
        if j.is_double:
            _pad_row(<const double*>j.x, <double*>j.xp, j, t)
        else:
            _pad_row(<const float*>j.x, <float*>j.xp, j, t)


cdef void _pad_rows(const floating* x, floating* xp, Py_ssize_t N, Py_ssize_t H, Py_ssize_t W,
                    Py_ssize_t C, Py_ssize_t HP, Py_ssize_t WP, Py_ssize_t top,
                    Py_ssize_t left, bint copy) noexcept nogil:
    cdef _PadJob job
    cdef int threads = omp_get_max_threads()
    job.is_double, job.copy, job.x, job.xp = floating is double, copy, x, xp
    job.N, job.H, job.W, job.C, job.HP, job.WP, job.top, job.left = N, H, W, C, HP, WP, top, left
    job.cols = _imax(_imin(W, WP - left), 0)
    pynn_team_for(N * HP, team_grain(N * HP, threads), threads, _pad_job, &job)


cdef void _pad(const floating* x, floating* xp, Py_ssize_t N, Py_ssize_t H, Py_ssize_t W,
               Py_ssize_t C, Py_ssize_t HP, Py_ssize_t WP, Py_ssize_t top,
               Py_ssize_t left) noexcept nogil:
    """xp (N, HP, WP, C) = x (N, H, W, C) placed at (top, left) in zeros; parts of x that
    fall beyond HP or WP are left out (no window of the conv reaches them). Rows on pynn's
    worker team (native/_team.h)."""
    _pad_rows(x, xp, N, H, W, C, HP, WP, top, left, True)


# Kernel-matrix rows of a panel that one sweep over a block's rows reads: whole segments
# (kernel rows) up to 256 rows, 16 KiB of a float32 panel, so the panel slice stays in L1
# across the block's row groups (the partial sums go through z between sweeps, the same
# float32 values in the same order: no change in the result).
cdef enum:
    _FORWARD_PANEL_ROWS = 256


cdef inline void _forward_direct_block(const floating* xp, const floating* wp,
                                       const floating* bias, floating* z, floating* y,
                                       const Geom* g, Py_ssize_t* roff_buf, Py_ssize_t chunk,
                                       const Py_ssize_t* aseg, const Py_ssize_t* bseg,
                                       const Py_ssize_t* bseg_last, Py_ssize_t nseg,
                                       Py_ssize_t tn, int act, floating alpha,
                                       Py_ssize_t group, Py_ssize_t blk,
                                       int slot) noexcept nogil:
    """Block blk of _forward_direct on the thread of team slot `slot`."""
    cdef Py_ssize_t p0 = blk * chunk, M = g.N * g.HO * g.WO
    _forward_direct_pixels(xp, wp, bias, z + p0 * g.F, y + p0 * g.F, g,
                           roff_buf + slot * chunk, p0, _imin(p0 + chunk, M) - p0, aseg, bseg,
                           bseg_last, nseg, tn, act, alpha, group)


cdef inline void _forward_direct_pixels(const floating* xp, const floating* wp,
                                        const floating* bias, floating* z, floating* y,
                                        const Geom* g, Py_ssize_t* roff, Py_ssize_t p0,
                                        Py_ssize_t rows, const Py_ssize_t* aseg,
                                        const Py_ssize_t* bseg, const Py_ssize_t* bseg_last,
                                        Py_ssize_t nseg, Py_ssize_t tn, int act,
                                        floating alpha, Py_ssize_t group) noexcept nogil:
    """Output pixels [p0, p0 + rows) (flat n, ho, wo order) of the direct forward into z
    (F apart, the bias as start value) and act(z) into y (may alias z); roff: this
    thread's `rows` window offsets."""
    cdef Py_ssize_t p, n, rem, ho, wo, q0, wd, s0, ns, origin
    cdef Py_ssize_t HW = g.HO * g.WO, nc = _panel_width(wp)
    # The block's first pixel by division, the others by stepping (two divisions per
    # pixel were 0.85 of the 1.69 ms of a 32x32x3 -> 32 layer at batch 64, one thread).
    n = p0 // HW
    rem = p0 - n * HW
    ho = rem // g.WO
    wo = rem - ho * g.WO
    origin = (n * g.HP + ho * g.SH) * g.WP * g.C
    for p in range(rows):
        roff[p] = origin + wo * g.SW * g.C
        wo = wo + 1
        if wo == g.WO:
            wo = 0
            ho = ho + 1
            if ho == g.HO:
                ho = 0
                n = n + 1
            origin = (n * g.HP + ho * g.SH) * g.WP * g.C
    q0 = 0
    while q0 < g.F:
        wd = _imin(nc, g.F - q0)
        s0 = 0
        while s0 < nseg:
            ns = _imin(group, nseg - s0)
            _seg_gemm(rows, wd, ns, tn, xp, roff, aseg + s0, 1, wp + q0 * g.K,
                      (bseg if wd == nc else bseg_last) + s0, wd, z + q0,
                      g.F, bias + q0 if bias != NULL and s0 == 0 else NULL, s0 > 0,
                      False)
            s0 = s0 + ns
        q0 = q0 + nc
    _epilogue_rows(z, y, <const floating*>NULL, rows, g.F, act, alpha)


ctypedef struct _DirectJob:
    bint is_double
    const void* xp
    const void* wp
    const void* bias
    void* z
    void* y
    const Geom* g
    Py_ssize_t* roff_buf
    const Py_ssize_t* aseg
    const Py_ssize_t* bseg
    const Py_ssize_t* bseg_last
    Py_ssize_t chunk, nseg, tn, group
    int act
    double alpha


cdef void _forward_direct_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _DirectJob* j = <_DirectJob*>ctx
    cdef long blk
    for blk in range(begin, end):
        if j.is_double:
            _forward_direct_block(<const double*>j.xp, <const double*>j.wp,
                                  <const double*>j.bias, <double*>j.z, <double*>j.y, j.g,
                                  j.roff_buf, j.chunk, j.aseg, j.bseg, j.bseg_last, j.nseg,
                                  j.tn, j.act, j.alpha, j.group, blk, slot)
        else:
            _forward_direct_block(<const float*>j.xp, <const float*>j.wp,
                                  <const float*>j.bias, <float*>j.z, <float*>j.y, j.g,
                                  j.roff_buf, j.chunk, j.aseg, j.bseg, j.bseg_last, j.nseg,
                                  j.tn, j.act, <float>j.alpha, j.group, blk, slot)


cdef void _forward_direct(const floating* xp, const floating* wp, const floating* bias,
                          floating* z, floating* y, const Geom* g, Py_ssize_t* roff_buf,
                          Py_ssize_t chunk, const Py_ssize_t* aseg, const Py_ssize_t* bseg,
                          const Py_ssize_t* bseg_last, Py_ssize_t nseg, Py_ssize_t tn,
                          int act, floating alpha) noexcept nogil:
    """`chunk` consecutive output pixels per iteration, read straight from the padded input
    xp (g.HP, g.WP), panel by panel of the packed kernel wp (_pack_panels): the microkernel
    writes z with the bias as start value, and the activation runs while the block is still
    in L1. A block may span output rows (and images): each pixel's window origin goes into
    this thread's row of roff_buf. bseg holds the segments' offsets in a full panel,
    bseg_last in the last one (narrower when F is not a multiple of the panel width).
    Blocks are handed out dynamically: on a shared machine one core often runs slower for a
    while, and a static split then waits for it (in-process A/B, 2 threads, Zen 3: forward
    +2.1%, conv2d_backward +1.4%, medians of 24 paired rounds). No block's result depends on
    the thread that runs it."""
    cdef Py_ssize_t M = g.N * g.HO * g.WO, nblk = (M + chunk - 1) // chunk
    cdef Py_ssize_t group = nseg   # C = 0: empty segments, the output is the bias
    cdef int threads = omp_get_max_threads()
    cdef _DirectJob job
    if tn > 0:
        group = _imax(_FORWARD_PANEL_ROWS // tn, 1)
    job.is_double, job.xp, job.wp, job.bias, job.z, job.y, job.g = floating is double, xp, \
        wp, bias, z, y, g
    job.roff_buf, job.aseg, job.bseg, job.bseg_last = roff_buf, aseg, bseg, bseg_last
    job.chunk, job.nseg, job.tn, job.group, job.act, job.alpha = chunk, nseg, tn, group, act, \
        alpha
    # on pynn's worker team (native/_team.h), claims of neighbouring blocks
    pynn_team_for(nblk, team_grain(nblk, threads), threads, _forward_direct_job, &job)


from _maxpool cimport (pynn_infer_max_f, pynn_max_update_d, pynn_max_update_f,
                      pynn_window_max_f)


ctypedef struct _PoolForwardJob:
    _DirectJob conv       # the conv's direct forward (its z and y unused)
    void* pooled          # (N, HPo, WPo, F)
    int* argmax           # like pooled: h * WO + w of the winning conv output pixel
    int* arg_rows         # argmax NULL (inference): per team slot one row of winners that
                          # nothing reads (the update writes them anyway: it vectorizes)
    void* band_buf        # per team slot: one band of PH conv rows, band * F values
    Py_ssize_t HPo, WPo, PH, PW, SH, SW, band


cdef inline void _pool_band(const floating* yb, floating* out, int* arg, const Geom* g,
                            const _PoolForwardJob* j, Py_ssize_t hp) noexcept nogil:
    """Pooled row hp of one image from the PH conv rows of its windows (yb: PH * WO * F
    values, the activation applied): maxpool2d_forward's winner rule and window order.
    Values alone (j.argmax NULL, float32): the inference plans' max (_maxpool.h, vmaxps
    where no NaN), the same values."""
    cdef Py_ssize_t wp, i, jj, f, w0, F = g.F
    cdef const floating* px
    cdef floating* op
    cdef int* ap
    if floating is float:
        if j.argmax == NULL:
            for wp in range(j.WPo):
                pynn_infer_max_f(yb + wp * j.SW * F, g.WO * F, j.PH, j.PW, out + wp * F, F)
        else:
            for wp in range(j.WPo):
                w0 = wp * j.SW
                pynn_window_max_f(yb + w0 * F, g.WO * F, j.PH, j.PW, F,
                                  <int>(hp * j.SH * g.WO + w0), <int>g.WO, out + wp * F,
                                  arg + wp * F)
        return
    for wp in range(j.WPo):
        w0 = wp * j.SW
        op = out + wp * F
        ap = arg + wp * F
        px = yb + w0 * F    # the first pixel seeds the winner, as the pool's forward does
        for f in range(F):
            op[f] = px[f]
            ap[f] = <int>(hp * j.SH * g.WO + w0)
        for i in range(j.PH):
            for jj in range(j.PW):
                if floating is float:
                    pynn_max_update_f(yb + (i * g.WO + w0 + jj) * F, op, ap, F,
                                      <int>((hp * j.SH + i) * g.WO + w0 + jj))
                else:
                    pynn_max_update_d(yb + (i * g.WO + w0 + jj) * F, op, ap, F,
                                      <int>((hp * j.SH + i) * g.WO + w0 + jj))


cdef void _conv_pool_forward_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    """Bands [begin, end) (band b = n * HPo + hp): its PH conv rows into this slot's band
    buffer by the direct forward, then pooled from there, in L1/L2."""
    cdef _PoolForwardJob* j = <_PoolForwardJob*>ctx
    cdef _DirectJob* c = &j.conv
    cdef long b
    cdef Py_ssize_t n, hp, p0, F = c.g.F
    cdef int* arg
    for b in range(begin, end):
        n = b // j.HPo
        hp = b - n * j.HPo
        p0 = (n * c.g.HO + hp * j.SH) * c.g.WO
        arg = (j.argmax + b * j.WPo * F if j.argmax != NULL
               else j.arg_rows + slot * j.WPo * F)
        if c.is_double:
            _forward_direct_pixels(<const double*>c.xp, <const double*>c.wp,
                                   <const double*>c.bias,
                                   <double*>j.band_buf + slot * j.band * F,
                                   <double*>j.band_buf + slot * j.band * F, c.g,
                                   c.roff_buf + slot * j.band, p0, j.band, c.aseg, c.bseg,
                                   c.bseg_last, c.nseg, c.tn, c.act, c.alpha, c.group)
            _pool_band(<const double*>j.band_buf + slot * j.band * F,
                       <double*>j.pooled + b * j.WPo * F, arg, c.g, j, hp)
        else:
            _forward_direct_pixels(<const float*>c.xp, <const float*>c.wp,
                                   <const float*>c.bias,
                                   <float*>j.band_buf + slot * j.band * F,
                                   <float*>j.band_buf + slot * j.band * F, c.g,
                                   c.roff_buf + slot * j.band, p0, j.band, c.aseg, c.bseg,
                                   c.bseg_last, c.nseg, c.tn, c.act, <float>c.alpha, c.group)
            _pool_band(<const float*>j.band_buf + slot * j.band * F,
                       <float*>j.pooled + b * j.WPo * F, arg, c.g, j, hp)


def _run_conv_pool_forward(const floating[:, :, :, ::1] xp, const floating[:, :, :, ::1] w,
                           const floating[::1] bias, floating[::1] wp, Geom g,
                           const Py_ssize_t[::1] aseg, const Py_ssize_t[::1] bseg,
                           const Py_ssize_t[::1] bseg_last, Py_ssize_t tn, int act,
                           double alpha, floating[:, :, :, ::1] pooled,
                           int[:, :, :, ::1] argmax, pool_size, pool_strides):
    """The direct forward of a conv whose output only a max pool with windows that tile
    it reads, band by band (conv2d_pool_forward): the conv's output is never whole.
    argmax None: the pooled values alone (an inference plan's pair)."""
    cdef _PoolForwardJob job
    cdef int threads = omp_get_max_threads()
    cdef Py_ssize_t band = pool_size[0] * g.WO, nb = pooled.shape[0] * pooled.shape[1]
    cdef int[::1] arg_rows
    if (pooled.shape[0] != g.N or pooled.shape[3] != g.F or pooled.size == 0
            or (argmax is not None and tuple(argmax.shape) != tuple(pooled.shape))
            or pool_strides[0] < pool_size[0] or pool_strides[1] < pool_size[1]
            or (pooled.shape[1] - 1) * pool_strides[0] + pool_size[0] > g.HO
            or (pooled.shape[2] - 1) * pool_strides[1] + pool_size[1] > g.WO
            or xp.shape[0] != g.N or xp.shape[1] < g.HP or xp.shape[2] < g.WP
            or wp.shape[0] < g.K * g.F):
        raise ValueError("conv2d_pool_forward: a buffer or the pool does not fit the geometry")
    roff = np.empty(threads * band, dtype=np.intp)
    bands = np.empty(threads * band * g.F, dtype=np.float32 if floating is float else np.float64)
    cdef Py_ssize_t[::1] roffv = roff
    cdef floating[::1] bandv = bands
    job.conv.is_double = floating is double
    job.conv.xp, job.conv.wp, job.conv.bias = &xp[0, 0, 0, 0], &wp[0], _bias_ptr(bias)
    job.conv.z = job.conv.y = NULL
    job.conv.g = &g
    job.conv.roff_buf, job.conv.aseg, job.conv.bseg = &roffv[0], &aseg[0], &bseg[0]
    job.conv.bseg_last, job.conv.nseg, job.conv.tn = &bseg_last[0], aseg.shape[0], tn
    job.conv.group = aseg.shape[0] if tn <= 0 else _imax(_FORWARD_PANEL_ROWS // tn, 1)
    job.conv.act, job.conv.alpha, job.conv.chunk = act, alpha, band
    job.pooled, job.band_buf = &pooled[0, 0, 0, 0], &bandv[0]
    if argmax is not None:
        job.argmax, job.arg_rows = &argmax[0, 0, 0, 0], NULL
    else:
        arg_rows = np.empty(threads * pooled.shape[2] * g.F, dtype=np.int32)
        job.argmax, job.arg_rows = NULL, &arg_rows[0]
    job.HPo, job.WPo = pooled.shape[1], pooled.shape[2]
    job.PH, job.PW, job.SH, job.SW = pool_size[0], pool_size[1], pool_strides[0], \
        pool_strides[1]
    job.band = band
    with nogil:
        _pack_panels(&w[0, 0, 0, 0], g.F, g.K, g.F, &wp[0])
        # on pynn's worker team (native/_team.h), claims of neighbouring bands: one claim
        # per band (1,024 at batch 64) contended for the claim word, 1.45 ms against 1.21
        pynn_team_for(nb, team_grain(nb, threads), threads, _conv_pool_forward_job, &job)


cdef inline void _sum_slabs_row(const floating* part, floating* dw, Py_ssize_t k,
                                Py_ssize_t S, Py_ssize_t KF, Py_ssize_t F) noexcept nogil:
    cdef Py_ssize_t s, j
    cdef floating* d = dw + k * F
    cdef const floating* p
    for j in range(F):
        d[j] = part[k * F + j]
    for s in range(1, S):
        p = part + s * KF + k * F
        for j in range(F):
            d[j] += p[j]


ctypedef struct _PoolSrc:
    # A non-overlapping max pool over the conv's output (conv2d_pool_backward): its output
    # gradient, its output (NULL: no relu mask) and its argmax, all (N, HPo, WPo, F).
    const void* dpool
    const void* pooled
    const int* argmax
    Py_ssize_t HPo, WPo, PH, PW, SH, SW
    Py_ssize_t* hits     # per slab: argmax entries that named a pixel of its rows


cdef inline Py_ssize_t _pooled_dz_row(const _PoolSrc* p, const Geom* g, Py_ssize_t row,
                                      floating* d) noexcept nogil:
    """dz's output row `row` (n * HO + ho; WO * F values into d) as the pool's backward and
    then relu's (or linear's) would make it: each window's gradient at its argmax, where the
    pool's output is positive (relu), zeros elsewhere. Dense per pixel and vectorized over
    the channels (a select per element, no scatter). Returns how many argmax entries named a
    pixel of this row: over all rows, one per entry unless an entry lies outside its window."""
    cdef Py_ssize_t n = row // g.HO, ho = row - n * g.HO
    cdef Py_ssize_t hp = ho // p.SH, F = g.F, wp, j, f, base
    cdef int hits = 0      # at most WO * F: int lanes vectorize alongside the int argmax
    cdef const floating* dp = <const floating*>p.dpool
    cdef const floating* pv = <const floating*>p.pooled
    cdef const int* am
    cdef const floating* dv
    cdef const floating* pr
    cdef floating* dd
    cdef floating v, m
    cdef int target
    if hp >= p.HPo or ho - hp * p.SH >= p.PH:   # no window covers this row
        memset(d, 0, g.WO * F * sizeof(floating))
        return 0
    if p.SW > p.PW or p.WPo * p.SW < g.WO:   # columns no window covers
        memset(d, 0, g.WO * F * sizeof(floating))
    base = (n * p.HPo + hp) * p.WPo * F
    for wp in range(p.WPo):
        am = p.argmax + base + wp * F
        dv = dp + base + wp * F
        pr = pv + base + wp * F if pv != NULL else NULL
        for j in range(p.PW):
            target = <int>(ho * g.WO + wp * p.SW + j)
            dd = d + (wp * p.SW + j) * F
            # every operand read unconditionally: a read under the condition vectorizes
            # as a merging masked load (see act_backward_vec)
            if pr != NULL:
                for f in range(F):
                    v = dv[f]
                    m = pr[f]
                    hits += am[f] == target
                    dd[f] = v if am[f] == target and m > 0 else 0
            else:
                for f in range(F):
                    v = dv[f]
                    hits += am[f] == target
                    dd[f] = v if am[f] == target else 0
    return hits


cdef inline void _backward_weight_direct_slab(
        const floating* xp, floating* dz, floating* part, floating* dzp, const Geom* g,
        const Py_ssize_t* koff, const Py_ssize_t* row_x, const Py_ssize_t* row_dz,
        const Py_ssize_t* seg, Py_ssize_t S, Py_ssize_t chunk, const floating* dy,
        const floating* zpre, const floating* y, int act, floating alpha, double* dbpart,
        bint weight_grad, bint dz_transient, const _PoolSrc* pool, Py_ssize_t s,
        int slot) noexcept nogil:
    """Slab s of _backward_weight_direct on the thread of team slot `slot`."""
    cdef Py_ssize_t k, j, q, r, r0, r1, rows, p0, wd, off, G = g.N * g.HO
    cdef Py_ssize_t nc = _panel_width(dz), px = chunk * g.WO, row_len = g.WO * g.F
    cdef floating* buf
    cdef floating* d
    buf = dzp + slot * px * g.F
    r0 = s * G // S
    r1 = (s + 1) * G // S
    if r1 <= r0 and weight_grad:
        memset(part + s * g.K * g.F, 0, g.K * g.F * sizeof(floating))
    if dbpart != NULL:
        memset(dbpart + s * g.F, 0, g.F * sizeof(double))
    if pool != NULL:
        pool.hits[s] = 0
    r = r0
    while r < r1:
        rows = _imin(chunk, r1 - r)
        for j in range(rows):
            if not dz_transient:
                d = dz + row_dz[r + j]
            elif g.F <= nc:   # one panel: its layout is the row's own
                d = buf + j * row_len
            else:
                d = dz + slot * row_len
            if dy != NULL:
                off = (r + j) * row_len
                if act == ACT_SOFTMAX:
                    for q in range(g.WO):
                        softmax_grad_row(dy + off + q * g.F, y + off + q * g.F,
                                         d + q * g.F, g.F)
                else:
                    act_backward_vec(dy + off, zpre + off, y + off, d, row_len, act,
                                     alpha)
                if dbpart != NULL:
                    add_rows_double(d, dbpart + s * g.F, g.WO, g.F, g.F)
            elif pool != NULL:
                pool.hits[s] += _pooled_dz_row(pool, g, r + j, d)
                if dbpart != NULL:
                    add_rows_double(d, dbpart + s * g.F, g.WO, g.F, g.F)
            if weight_grad and not (dz_transient and g.F <= nc):
                _pack_panels(d, g.F, g.WO, g.F, buf + j * row_len)
        p0 = 0 if weight_grad else g.F
        while p0 < g.F:
            wd = _imin(nc, g.F - p0)
            _seg_gemm(g.K, wd, rows, g.WO, xp, koff, row_x + r, g.SW * g.C,
                      buf + p0 * g.WO, seg, wd, part + s * g.K * g.F + p0, g.F,
                      <const floating*>NULL, r > r0, False)
            p0 = p0 + nc
        r = r + chunk


ctypedef struct _BackwardDirectJob:
    bint is_double, weight_grad, dz_transient
    const void* xp
    void* dz
    void* dw
    void* part
    void* dzp
    const Geom* g
    const Py_ssize_t* koff
    const Py_ssize_t* row_x
    const Py_ssize_t* row_dz
    const Py_ssize_t* seg
    Py_ssize_t S, chunk
    const void* dy
    const void* zpre
    const void* y
    int act
    double alpha
    double* dbpart
    const _PoolSrc* pool


cdef void _backward_weight_direct_job(void* ctx, long begin, long end,
                                      int slot) noexcept nogil:
    cdef _BackwardDirectJob* j = <_BackwardDirectJob*>ctx
    cdef long s
    for s in range(begin, end):
        if j.is_double:
            _backward_weight_direct_slab(
                <const double*>j.xp, <double*>j.dz, <double*>j.part, <double*>j.dzp, j.g,
                j.koff, j.row_x, j.row_dz, j.seg, j.S, j.chunk, <const double*>j.dy,
                <const double*>j.zpre, <const double*>j.y, j.act, j.alpha, j.dbpart,
                j.weight_grad, j.dz_transient, j.pool, s, slot)
        else:
            _backward_weight_direct_slab(
                <const float*>j.xp, <float*>j.dz, <float*>j.part, <float*>j.dzp, j.g,
                j.koff, j.row_x, j.row_dz, j.seg, j.S, j.chunk, <const float*>j.dy,
                <const float*>j.zpre, <const float*>j.y, j.act, <float>j.alpha, j.dbpart,
                j.weight_grad, j.dz_transient, j.pool, s, slot)


cdef void _sum_slabs_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _BackwardDirectJob* j = <_BackwardDirectJob*>ctx
    cdef long k
    for k in range(begin, end):
        if j.is_double:
            _sum_slabs_row(<const double*>j.part, <double*>j.dw, k, j.S, j.g.K * j.g.F, j.g.F)
        else:
            _sum_slabs_row(<const float*>j.part, <float*>j.dw, k, j.S, j.g.K * j.g.F, j.g.F)


cdef void _backward_weight_direct(const floating* xp, floating* dz, floating* dw,
                                  floating* part, floating* dzp, const Geom* g,
                                  const Py_ssize_t* koff, const Py_ssize_t* row_x,
                                  const Py_ssize_t* row_dz, const Py_ssize_t* seg,
                                  Py_ssize_t S, Py_ssize_t chunk, const floating* dy,
                                  const floating* zpre, const floating* y, int act,
                                  floating alpha, double* dbpart,
                                  bint weight_grad, bint dz_transient=False,
                                  const _PoolSrc* pool=NULL) noexcept nogil:
    """The output rows are cut into S slabs fixed by the shape (not by the thread count);
    each slab sums into its own (K, F) partial, then the partials are added in slab order.
    Same bits for any number of threads, and both cores busy even when K*F is tiny (27 x 32
    for an RGB 3x3 layer). A slab is swept `chunk` output rows at a time: each dz row (at
    row_dz[r], WO*F contiguous values) is packed into column panels of its own (dzp,
    chunk*WO*F values per thread) and every kernel row block reads a panel from L1 as one
    stream, one segment per output row of the chunk (reading dz in place, a cache line per
    pixel row, ran at ~72% of the sgemm peak on Zen 3). seg[j] = j*WO*F starts output row j
    (read-only tables: the threads share them).
    With dy (conv2d_backward), each dz row is first made here from dy and y (zpre: gelu's
    pre-activation), just before its pack reads it back from L1, and its column sums go to
    the slab's row of dbpart (when not NULL): the activation's backward, the bias gradient
    and the dz that backward_input reads come out of this one pass over dy. Without
    weight_grad (dw unused) the pass makes only dz and the bias gradient, for the Winograd
    kernel gradient to read. dz_transient (with dy and weight_grad; no caller reads dz
    afterwards: a first layer's backward): each dz row is made in this thread's row of dz
    (one row_len per thread), or straight in its panel where F fits one, and never written
    out whole (8 of the 16 MiB a 32x32x3 -> 32 layer at batch 64 moved). pool (instead of
    dy; dz_transient): each dz row is made from a max pool's output gradient, argmax and
    output (_pooled_dz_row), so neither dy nor y is read (conv2d_pool_backward)."""
    cdef int threads = omp_get_max_threads()
    cdef _BackwardDirectJob job
    job.is_double, job.weight_grad, job.dz_transient = floating is double, weight_grad, \
        dz_transient
    job.xp, job.dz, job.dw, job.part, job.dzp, job.g = xp, dz, dw, part, dzp, g
    job.koff, job.row_x, job.row_dz, job.seg, job.S, job.chunk = koff, row_x, row_dz, seg, S, \
        chunk
    job.dy, job.zpre, job.y, job.act, job.alpha, job.dbpart = dy, zpre, y, act, alpha, dbpart
    job.pool = pool
    # Both loops on pynn's worker team (native/_team.h): slabs, then the slab sums per row.
    pynn_team_for(S, 1, threads, _backward_weight_direct_job, &job)
    if weight_grad:
        pynn_team_for(g.K, team_grain(g.K, threads), threads, _sum_slabs_job, &job)


cdef void _zero_margins(floating* xp, Py_ssize_t N, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C,
                        Py_ssize_t HP, Py_ssize_t WP, Py_ssize_t top,
                        Py_ssize_t left) noexcept nogil:
    """Zeros everything of xp (N, HP, WP, C) but the (H, W) window at (top, left) that a
    kernel fills itself (_pad's zeros without its copy; the window lies inside xp)."""
    _pad_rows(<const floating*>NULL, xp, N, H, W, C, HP, WP, top, left, False)


# -- Winograd F(2x2, 3x3) (native/_winograd.h) ----------------------------------------------

from _winograd cimport (pynn_wino_input_f, pynn_wino_output_f, pynn_wino_kernel_f,
    pynn_wino_gemm_f, pynn_wino_dout_f, pynn_wino_wgrad_gemm_f, pynn_wino_kernel_grad_f,
    pynn_wino4_input_f, pynn_wino4_output_f, pynn_wino4_kernel_f, pynn_wino4_dout_f,
    pynn_wino4_kernel_grad_f)


cdef void _wino_epilogue(float* z, float* y, const Geom* g, Py_ssize_t TH, Py_ssize_t TW,
                         Py_ssize_t t0, Py_ssize_t nt, int act, float alpha,
                         Py_ssize_t m) noexcept nogil:
    """The activation over a block's pixels while they are in cache: each run of the block's
    tiles (m x m pixels each) along one tile row covers m stretches of contiguous output
    pixels."""
    cdef Py_ssize_t t = t0, TT = TH * TW, n, th, tw, run, w0, w1, h, off
    if act == ACT_LINEAR and y == z:
        return
    while t < t0 + nt:
        n = t // TT
        th = (t % TT) // TW
        tw = t % TW
        run = _imin(TW - tw, t0 + nt - t)
        w0 = m * tw
        w1 = _imin(m * (tw + run), g.WO)
        for h in range(m * th, _imin(m * th + m, g.HO)):
            off = ((n * g.HO + h) * g.WO + w0) * g.F
            _epilogue_rows(z + off, y + off, <const float*>NULL, w1 - w0, g.F, act, alpha)
        t = t + run


ctypedef struct _WinoJob:
    const float* x
    Py_ssize_t XH, XW, top, left, T, m, S
    const float* up
    const float* bias
    float* z
    float* y
    const Geom* g
    float* vbuf
    float* mbuf
    float* wbuf
    const float* dz
    Py_ssize_t sn, sh
    float* part
    float* dw
    const Py_ssize_t* roff
    const float* zeros
    int act
    float alpha


cdef void _forward_winograd_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    """Blocks [begin, end) of _forward_winograd on the thread of team slot `slot`."""
    cdef _WinoJob* j = <_WinoJob*>ctx
    cdef const float* x = j.x
    cdef Py_ssize_t XH = j.XH, XW = j.XW, top = j.top, left = j.left, T = j.T, m = j.m
    cdef const float* up = j.up
    cdef const float* bias = j.bias
    cdef float* z = j.z
    cdef float* y = j.y
    cdef const Geom* g = j.g
    cdef float* vbuf = j.vbuf
    cdef float* mbuf = j.mbuf
    cdef const Py_ssize_t* roff = j.roff
    cdef const float* zeros = j.zeros
    cdef int act = j.act
    cdef float alpha = j.alpha

    cdef Py_ssize_t nk = (m + 2) * (m + 2)
    cdef Py_ssize_t ksv = g.C, rsv = nk * g.C, ksm = g.F, rsm = nk * g.F
    cdef Py_ssize_t TH = (g.HO + m - 1) // m, TW = (g.WO + m - 1) // m
    cdef Py_ssize_t ntiles = g.N * TH * TW, nc = PYNN_NC_F
    cdef Py_ssize_t t0, nt, tid
    cdef long blk
    cdef float* V
    cdef float* M
    for blk in range(begin, end):
        tid = slot
        V = vbuf + tid * nk * T * g.C
        M = mbuf + tid * nk * T * g.F
        t0 = blk * T
        nt = _imin(T, ntiles - t0)
        if m == 4:
            pynn_wino4_input_f(x, XH, XW, top, left, g.HP, g.WP, g.C, TH, TW, t0, nt, ksv, rsv,
                               zeros, V)
        else:
            pynn_wino_input_f(x, XH, XW, top, left, g.HP, g.WP, g.C, TH, TW, t0, nt, ksv, rsv,
                              zeros, V)
        pynn_wino_gemm_f(V, ksv, up, M, ksm, rsm, nt, g.C, g.F, nc, roff, <int>nk)
        if m == 4:
            pynn_wino4_output_f(M, ksm, rsm, g.F, bias, TH, TW, g.HO, g.WO, t0, nt, z)
        else:
            pynn_wino_output_f(M, ksm, rsm, g.F, bias, TH, TW, g.HO, g.WO, t0, nt, z)
        _wino_epilogue(z, y, g, TH, TW, t0, nt, act, alpha, m)


cdef void _forward_winograd(const float* x, Py_ssize_t XH, Py_ssize_t XW, Py_ssize_t top,
                            Py_ssize_t left, const float* up, const float* bias, float* z,
                            float* y, const Geom* g, float* vbuf, float* mbuf,
                            const Py_ssize_t* roff, const float* zeros, Py_ssize_t T,
                            int act, float alpha, Py_ssize_t m) noexcept nogil:
    """Blocks of T tiles (m x m output pixels each: F(2x2, 3x3) or F(4x4, 3x3); in (n, th,
    tw) order, so a block may span tile rows and images and the GEMMs keep T rows on small
    maps) handed out dynamically, as in _forward_direct: input transform (reading x, the conv's
    input at (top, left) of its padded geometry, in place), (m+2)^2 GEMMs, output transform +
    bias, activation, all in this thread's V and M blocks. A tile's (m+2)^2 transformed rows
    sit together (V element (k, i, c) at i*nk*C + k*C): each transform then reads or writes
    one stream per tile;
    16 slices of T rows each (k*T*C + i*C) made the transforms juggle 16 streams (1 thread,
    32 -> 32 channels on 32x32, batch 32: input transform 1.05-1.38 ms -> 0.77-1.09, the
    GEMMs the same within noise). No tile's result depends on the block or thread."""
    cdef Py_ssize_t TH = (g.HO + m - 1) // m, TW = (g.WO + m - 1) // m
    cdef Py_ssize_t nblk = (g.N * TH * TW + T - 1) // T
    cdef int threads = omp_get_max_threads()
    cdef _WinoJob job
    job.x, job.XH, job.XW, job.top, job.left, job.T, job.m = x, XH, XW, top, left, T, m
    job.up, job.bias, job.z, job.y, job.g, job.vbuf, job.mbuf = up, bias, z, y, g, vbuf, mbuf
    job.roff, job.zeros, job.act, job.alpha = roff, zeros, act, alpha
    # on pynn's worker team (native/_team.h)
    pynn_team_for(nblk, team_grain(nblk, threads), threads, _forward_winograd_job, &job)


def _run_forward_winograd(const float[:, :, :, ::1] x, const float[:, :, :, ::1] kernel,
                          const float[::1] bias, float[:, :, :, ::1] z, float[:, :, :, ::1] y,
                          float[::1] u, float[::1] up, float[::1] vbuf, float[::1] mbuf,
                          const float[::1] zeros, Geom g, Py_ssize_t T, int act,
                          double alpha, Py_ssize_t m=2, Py_ssize_t top=0, Py_ssize_t left=0):
    """x is the conv's input, the padded input of geometry g holding it at (top, left) (x
    itself when top = left = 0 and it has g's HP x WP)."""
    cdef const float* bptr = _bias_ptr(bias)
    cdef Py_ssize_t k, CF = g.C * g.F, threads = omp_get_max_threads()
    cdef Py_ssize_t nk = (m + 2) * (m + 2)
    cdef Py_ssize_t[::1] roff = np.arange(T, dtype=np.intp) * (nk * g.C)
    if m != 2 and m != 4:
        raise ValueError(f"conv2d (winograd): tile must be 2 or 4, got {m}")
    if bptr == NULL:
        bptr = &zeros[0]   # (zeros holds max(C, F) floats)
    if (x.shape[0] != g.N or x.shape[3] != g.C
            or kernel.shape[0] != 3 or kernel.shape[1] != 3 or kernel.shape[2] != g.C
            or kernel.shape[3] != g.F or u.shape[0] < nk * CF or up.shape[0] < nk * CF
            or vbuf.shape[0] < threads * nk * T * g.C
            or mbuf.shape[0] < threads * nk * T * g.F
            or zeros.shape[0] < max(g.C, g.F) or g.HP != g.HO + 2 or g.WP != g.WO + 2):
        raise ValueError("conv2d (winograd): a table or buffer does not fit the geometry")
    with nogil:
        if m == 4:
            pynn_wino4_kernel_f(&kernel[0, 0, 0, 0], g.C, g.F, &u[0])
        else:
            pynn_wino_kernel_f(&kernel[0, 0, 0, 0], g.C, g.F, &u[0])
        for k in range(nk):
            pynn_pack_panels_f(&u[k * CF], g.F, g.C, g.F, PYNN_NC_F, &up[k * CF])
        _forward_winograd(&x[0, 0, 0, 0], x.shape[1], x.shape[2], top, left, &up[0], bptr,
                          &z[0, 0, 0, 0], &y[0, 0, 0, 0], &g,
                          &vbuf[0], &mbuf[0], &roff[0], &zeros[0], T, act, <float>alpha, m)


cdef enum:
    # Floats between consecutive tiles' rows of V and W beyond their 16*C (16*F): with
    # C = 32 a bare row is 2 KiB, so the GEMMs' column walk down T tiles would hit 2 of
    # the L1's 64 sets.
    _WINO_ROW_PAD = 16


cdef void _backward_weight_winograd_job(void* ctx, long begin, long end,
                                        int slot) noexcept nogil:
    """Slabs [begin, end) of _backward_weight_winograd on the thread of team slot `slot`."""
    cdef _WinoJob* j = <_WinoJob*>ctx
    cdef const float* x = j.x
    cdef Py_ssize_t XH = j.XH, XW = j.XW, top = j.top, left = j.left, T = j.T, m = j.m
    cdef Py_ssize_t S = j.S, sn = j.sn, sh = j.sh
    cdef const float* dz = j.dz
    cdef float* part = j.part
    cdef const Geom* g = j.g
    cdef float* vbuf = j.vbuf
    cdef float* wbuf = j.wbuf
    cdef const Py_ssize_t* roff = j.roff
    cdef const float* zeros = j.zeros

    cdef Py_ssize_t nk = (m + 2) * (m + 2)
    cdef Py_ssize_t TH = (g.HO + m - 1) // m, TW = (g.WO + m - 1) // m
    cdef Py_ssize_t ntiles = g.N * TH * TW, nc = PYNN_NC_F, CF = g.C * g.F
    cdef Py_ssize_t rsv = nk * g.C + _WINO_ROW_PAD, rsw = nk * g.F + _WINO_ROW_PAD
    cdef Py_ssize_t t, t1, t0, nt, tid
    cdef long s
    cdef float* V
    cdef float* W
    for s in range(begin, end):
        tid = slot
        V = vbuf + tid * T * rsv
        W = wbuf + tid * T * rsw
        t0 = s * ntiles // S
        t1 = (s + 1) * ntiles // S
        if t1 <= t0:
            memset(part + s * nk * CF, 0, nk * CF * sizeof(float))
        t = t0
        while t < t1:
            nt = _imin(T, t1 - t)
            if m == 4:
                pynn_wino4_input_f(x, XH, XW, top, left, g.HP, g.WP, g.C, TH, TW, t, nt, g.C,
                                   rsv, zeros, V)
                pynn_wino4_dout_f(dz, sn, sh, g.HO, g.WO, g.F, TH, TW, t, nt, g.F, rsw, zeros,
                                  W)
            else:
                pynn_wino_input_f(x, XH, XW, top, left, g.HP, g.WP, g.C, TH, TW, t, nt, g.C, rsv,
                                  zeros, V)
                pynn_wino_dout_f(dz, sn, sh, g.HO, g.WO, g.F, TH, TW, t, nt, g.F, rsw, zeros,
                                 W)
            pynn_wino_wgrad_gemm_f(V, g.C, rsv, W, g.F, rsw, part + s * nk * CF, nt, g.C, g.F,
                                   nc, roff, t > t0, <int>nk)
            t = t + T


cdef void _wino_kernel_grad_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _WinoJob* j = <_WinoJob*>ctx
    if j.m == 4:
        pynn_wino4_kernel_grad_f(j.part, j.S, j.g.C, j.g.F, begin, end, j.dw)
    else:
        pynn_wino_kernel_grad_f(j.part, j.S, j.g.C, j.g.F, begin, end, j.dw)


cdef void _backward_weight_winograd(const float* x, Py_ssize_t XH, Py_ssize_t XW,
                                    Py_ssize_t top, Py_ssize_t left, const float* dz,
                                    Py_ssize_t sn,
                                    Py_ssize_t sh, float* dw, float* part, float* vbuf,
                                    float* wbuf, const Py_ssize_t* roff, const float* zeros,
                                    const Geom* g, Py_ssize_t T, Py_ssize_t S,
                                    Py_ssize_t m) noexcept nogil:
    """The tiles (n, th, tw order) are cut into S slabs fixed by the shape, as in
    _backward_weight_direct: each slab sums its 16 (C, F) products into its own partial,
    T tiles at a time (input transform V, output-gradient transform W = A dY A^T, 16 GEMMs
    accumulating), then the partials are added in slab order and transformed back to 3x3.
    Same bits for any number of threads."""
    cdef int threads = omp_get_max_threads()
    cdef _WinoJob job
    job.x, job.XH, job.XW, job.top, job.left, job.T, job.m, job.S = x, XH, XW, top, left, T, \
        m, S
    job.dz, job.sn, job.sh, job.dw, job.part, job.g = dz, sn, sh, dw, part, g
    job.vbuf, job.wbuf, job.roff, job.zeros = vbuf, wbuf, roff, zeros
    # Both loops on pynn's worker team (native/_team.h): slabs, then channels.
    pynn_team_for(S, 1, threads, _backward_weight_winograd_job, &job)
    pynn_team_for(g.C, team_grain(g.C, threads), threads, _wino_kernel_grad_job, &job)


def _run_backward_weight_winograd(const float[:, :, :, ::1] x, const float[::1] dz,
                                  Py_ssize_t dz0, Py_ssize_t sn, Py_ssize_t sh,
                                  float[:, :, :, ::1] dw, float[::1] part, float[::1] vbuf,
                                  float[::1] wbuf, const float[::1] zeros, Geom g,
                                  Py_ssize_t T, Py_ssize_t S, Py_ssize_t m=2,
                                  Py_ssize_t top=0, Py_ssize_t left=0):
    """dz pixel (n, h, w) at dz[dz0 + n*sn + h*sh + w*F:][:F] (dz may be a padded buffer);
    m x m output pixels per tile (2 or 4); x the conv's input at (top, left) of the padded
    input of geometry g (x itself when that is padded already)."""
    cdef Py_ssize_t threads = omp_get_max_threads(), CF = g.C * g.F
    cdef Py_ssize_t nk = (m + 2) * (m + 2)
    if m != 2 and m != 4:
        raise ValueError(f"conv2d_backward_weight (winograd): tile must be 2 or 4, got {m}")
    cdef Py_ssize_t[::1] roff = np.arange(max(g.C, 1), dtype=np.intp)
    if (x.shape[0] != g.N or x.shape[3] != g.C or g.HP != g.HO + 2 or g.WP != g.WO + 2
            or dw.shape[0] != 3 or dw.shape[1] != 3 or dw.shape[2] != g.C
            or dw.shape[3] != g.F or T < 1 or S < 1 or part.shape[0] < S * nk * CF
            or vbuf.shape[0] < threads * T * (nk * g.C + _WINO_ROW_PAD)
            or wbuf.shape[0] < threads * T * (nk * g.F + _WINO_ROW_PAD)
            or zeros.shape[0] < max(g.C, g.F)
            or dz0 < 0 or sh < g.WO * g.F or sn < g.HO * sh or g.N < 1 or g.HO < 1
            or g.WO < 1 or dz0 + (g.N - 1) * sn + (g.HO - 1) * sh + g.WO * g.F > dz.shape[0]):
        raise ValueError("conv2d_backward_weight (winograd): a table or buffer does not fit "
                         "the geometry")
    with nogil:
        _backward_weight_winograd(&x[0, 0, 0, 0], x.shape[1], x.shape[2], top, left,
                                  &dz[dz0], sn, sh, &dw[0, 0, 0, 0],
                                  &part[0], &vbuf[0], &wbuf[0], &roff[0], &zeros[0], &g, T, S,
                                  m)


# -- the three ops, pointer level ----------------------------------------------------------

cdef void _forward(const floating* x, const floating* w, const floating* bias,
                   floating* z, floating* y, floating* col, const Geom* g, Py_ssize_t tile,
                   int act, floating alpha) noexcept nogil:
    cdef Py_ssize_t r0, r1, rows, G = g.N * g.HO
    cdef const floating* a
    r0 = 0
    while r0 < G:
        r1 = _imin(r0 + tile, G)
        rows = (r1 - r0) * g.WO
        if _is_pointwise(g):
            a = x + r0 * g.WO * g.K
        else:
            _im2col(x, col, g, r0, r1)
            a = col
        _gemm(False, False, rows, g.F, g.K, a, g.K, w, g.F, <floating>0,
              z + r0 * g.WO * g.F, g.F)
        if bias != NULL or act != ACT_LINEAR or y != z:
            _epilogue(z + r0 * g.WO * g.F, y + r0 * g.WO * g.F, bias, rows, g.F, act, alpha)
        r0 = r1


cdef void _backward_weight(const floating* x, const floating* dz, floating* dw,
                           floating* col, const Geom* g, Py_ssize_t tile) noexcept nogil:
    cdef Py_ssize_t r0, r1, rows, G = g.N * g.HO
    cdef const floating* a
    cdef floating beta = 0
    r0 = 0
    while r0 < G:
        r1 = _imin(r0 + tile, G)
        rows = (r1 - r0) * g.WO
        if _is_pointwise(g):
            a = x + r0 * g.WO * g.K
        else:
            _im2col(x, col, g, r0, r1)
            a = col
        _gemm(True, False, g.K, g.F, rows, a, g.K, dz + r0 * g.WO * g.F, g.F, beta, dw, g.F)
        beta = 1
        r0 = r1


cdef void _backward_input(const floating* dz, const floating* w, floating* dx,
                          floating* col, const Geom* g, Py_ssize_t tile) noexcept nogil:
    cdef Py_ssize_t r0, r1, rows, G = g.N * g.HO
    r0 = 0
    while r0 < G:
        r1 = _imin(r0 + tile, G)
        rows = (r1 - r0) * g.WO
        if _is_pointwise(g):
            _gemm(False, True, rows, g.K, g.F, dz + r0 * g.WO * g.F, g.F, w, g.F,
                  <floating>0, dx + r0 * g.WO * g.K, g.K)
        else:
            _gemm(False, True, rows, g.K, g.F, dz + r0 * g.WO * g.F, g.F, w, g.F,
                  <floating>0, col, g.K)
            _col2im(col, dx, g, r0, r1)
        r0 = r1


# -- typed-memoryview shims (fused dispatch happens here, with the GIL) --------------------

cdef const floating* _bias_ptr(const floating[::1] b) noexcept:
    return &b[0] if b is not None and b.shape[0] > 0 else NULL


def _run_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                 const floating[::1] bias, floating[:, :, :, ::1] z, floating[:, :, :, ::1] y,
                 floating[::1] col, Geom g, Py_ssize_t tile, int act, double alpha):
    cdef const floating* bptr = _bias_ptr(bias)
    with nogil:
        _forward(&x[0, 0, 0, 0], &w[0, 0, 0, 0], bptr, &z[0, 0, 0, 0], &y[0, 0, 0, 0],
                 &col[0], &g, tile, act, <floating>alpha)


def _run_forward_direct(const floating[:, :, :, ::1] xp, const floating[:, :, :, ::1] w,
                        const floating[::1] bias, floating[:, :, :, ::1] z,
                        floating[:, :, :, ::1] y, floating[::1] wp, Geom g,
                        Py_ssize_t[::1] roff_buf, Py_ssize_t chunk,
                        const Py_ssize_t[::1] aseg, const Py_ssize_t[::1] bseg,
                        const Py_ssize_t[::1] bseg_last, Py_ssize_t tn, int act, double alpha):
    cdef const floating* bptr = _bias_ptr(bias)
    if roff_buf.shape[0] < omp_get_max_threads() * chunk:
        raise ValueError("conv2d_forward: pixel offset buffer too small")
    with nogil:
        _pack_panels(&w[0, 0, 0, 0], g.F, g.K, g.F, &wp[0])
        _forward_direct(&xp[0, 0, 0, 0], &wp[0], bptr, &z[0, 0, 0, 0], &y[0, 0, 0, 0], &g,
                        &roff_buf[0], chunk, &aseg[0], &bseg[0], &bseg_last[0],
                        aseg.shape[0], tn, act, <floating>alpha)


def _panel_columns(dtype):
    """Columns per packed kernel panel for float32 / float64."""
    return PYNN_NC_F if np.dtype(dtype) == np.float32 else PYNN_NC_D


def _run_pad(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] xp, Py_ssize_t top,
             Py_ssize_t left):
    with nogil:
        _pad(&x[0, 0, 0, 0], &xp[0, 0, 0, 0], x.shape[0], x.shape[1], x.shape[2], x.shape[3],
             xp.shape[1], xp.shape[2], top, left)


def _run_zero_margins(floating[:, :, :, ::1] xp, Py_ssize_t h, Py_ssize_t w, Py_ssize_t top,
                      Py_ssize_t left):
    if top < 0 or left < 0 or top + h > xp.shape[1] or left + w > xp.shape[2]:
        raise ValueError("conv2d: the window to keep does not lie inside the padded buffer")
    with nogil:
        _zero_margins(&xp[0, 0, 0, 0], xp.shape[0], h, w, xp.shape[3], xp.shape[1],
                      xp.shape[2], top, left)


def _run_backward_weight(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] dz,
                         floating[:, :, :, ::1] dw, floating[::1] col, Geom g,
                         Py_ssize_t tile):
    with nogil:
        _backward_weight(&x[0, 0, 0, 0], &dz[0, 0, 0, 0], &dw[0, 0, 0, 0], &col[0], &g, tile)


def _check_weight_pass(op, Geom g, Py_ssize_t xp_len, Py_ssize_t dz_len, Py_ssize_t part_len,
                       Py_ssize_t dzp_len, const Py_ssize_t[::1] koff,
                       const Py_ssize_t[::1] row_x, const Py_ssize_t[::1] row_dz,
                       const Py_ssize_t[::1] seg, Py_ssize_t slabs, Py_ssize_t chunk,
                       bint weight_grad, bint dz_transient):
    """The tables and buffers of _backward_weight_direct's pass (lengths in elements) fit
    the geometry, or ValueError naming op: nothing runs past a buffer."""
    cdef Py_ssize_t G = g.N * g.HO
    if dz_transient:
        if not weight_grad or dz_len < omp_get_max_threads() * g.WO * g.F:
            raise ValueError(f"{op}: a transient dz needs the kernel gradient and a row per "
                             f"thread")
    elif G and (np.max(row_dz) + g.WO * g.F > dz_len or np.min(row_dz) < 0):
        raise ValueError(f"{op}: a table or buffer does not fit the geometry")
    if (seg.shape[0] < chunk or koff.shape[0] != g.K or row_x.shape[0] != G
            or (weight_grad and (part_len < slabs * g.K * g.F
                                 or dzp_len < omp_get_max_threads() * chunk * g.WO * g.F
                                 or xp_len < g.N * g.HP * g.WP * g.C))):
        raise ValueError(f"{op}: a table or buffer does not fit the geometry")


def _run_backward_weight_direct(const floating[::1] xp, const floating[::1] dz,
                                floating[:, :, :, ::1] dw, floating[::1] part,
                                floating[::1] dzp, Geom g, const Py_ssize_t[::1] koff,
                                const Py_ssize_t[::1] row_x, const Py_ssize_t[::1] row_dz,
                                const Py_ssize_t[::1] seg, Py_ssize_t slabs, Py_ssize_t chunk,
                                const floating[::1] dy=None, const floating[::1] zpre=None,
                                const floating[::1] y=None, int act=ACT_LINEAR,
                                double alpha=0.0, double[::1] dbpart=None,
                                bint weight_grad=True, bint dz_transient=False):
    """dz is read, or (with dy) written: then it is a scratch buffer of the caller's.
    weight_grad=False: only dz (and dbpart) from dy; dw and part are not touched.
    dz_transient (with dy and weight_grad): dz is one row of WO*F per thread, not kept."""
    cdef Py_ssize_t out = g.N * g.HO * g.WO * g.F
    if dz_transient and dy is None:
        raise ValueError("conv2d_backward_weight: a transient dz needs dy")
    _check_weight_pass("conv2d_backward_weight", g, xp.shape[0], dz.shape[0], part.shape[0],
                       dzp.shape[0], koff, row_x, row_dz, seg, slabs, chunk, weight_grad,
                       dz_transient)
    if ((not weight_grad and dy is None)
            or (dy is not None and (dy.shape[0] != out or y is None or y.shape[0] != out
                                    or zpre is None or zpre.shape[0] != out))
            or (dbpart is not None and dbpart.shape[0] < slabs * g.F)):
        raise ValueError("conv2d_backward_weight: a table or buffer does not fit the geometry")
    with nogil:
        _backward_weight_direct(&xp[0], <floating*>&dz[0], &dw[0, 0, 0, 0], &part[0],
                                &dzp[0], &g, &koff[0], &row_x[0], &row_dz[0], &seg[0],
                                slabs, chunk, &dy[0] if dy is not None else NULL,
                                &zpre[0] if dy is not None else NULL,
                                &y[0] if dy is not None else NULL, act, <floating>alpha,
                                &dbpart[0] if dbpart is not None else NULL, weight_grad,
                                dz_transient)


def _run_backward_weight_pooled(const floating[::1] xp, floating[::1] dzrow,
                                floating[:, :, :, ::1] dw, floating[::1] part,
                                floating[::1] dzp, Geom g, const Py_ssize_t[::1] koff,
                                const Py_ssize_t[::1] row_x, const Py_ssize_t[::1] row_dz,
                                const Py_ssize_t[::1] seg, Py_ssize_t slabs, Py_ssize_t chunk,
                                const floating[:, :, :, ::1] dpool,
                                const floating[:, :, :, ::1] pooled,
                                const int[:, :, :, ::1] argmax, pool_size, pool_strides,
                                double[::1] dbpart=None, bint weight_grad=True,
                                bint dz_transient=True):
    """_run_backward_weight_direct's pass with each dz row made from a max pool's output
    gradient (and output for relu's mask; None: linear) and argmax. Returns how many argmax
    entries lie outside their window (the caller's error)."""
    cdef _PoolSrc src
    hits = np.zeros(max(slabs, 1), dtype=np.intp)
    cdef Py_ssize_t[::1] hitv = hits
    _check_weight_pass("conv2d_pool_backward", g, xp.shape[0], dzrow.shape[0], part.shape[0],
                       dzp.shape[0], koff, row_x, row_dz, seg, slabs, chunk, weight_grad,
                       dz_transient)
    if (dpool.shape[0] != g.N or dpool.shape[3] != g.F
            or tuple(argmax.shape) != tuple(dpool.shape)
            or (pooled is not None and tuple(pooled.shape) != tuple(dpool.shape))
            or pool_strides[0] < pool_size[0] or pool_strides[1] < pool_size[1]
            or dpool.shape[1] * pool_strides[0] - pool_strides[0] + pool_size[0] > g.HO
            or dpool.shape[2] * pool_strides[1] - pool_strides[1] + pool_size[1] > g.WO
            or (dbpart is not None and dbpart.shape[0] < slabs * g.F)):
        raise ValueError("conv2d_pool_backward: a table, buffer or the pool does not fit the "
                         "geometry")
    src.dpool, src.argmax = &dpool[0, 0, 0, 0], &argmax[0, 0, 0, 0]
    src.pooled = &pooled[0, 0, 0, 0] if pooled is not None else NULL
    src.HPo, src.WPo = dpool.shape[1], dpool.shape[2]
    src.PH, src.PW, src.SH, src.SW = pool_size[0], pool_size[1], pool_strides[0], \
        pool_strides[1]
    src.hits = &hitv[0]
    with nogil:
        _backward_weight_direct(&xp[0], &dzrow[0], &dw[0, 0, 0, 0], &part[0], &dzp[0], &g,
                                &koff[0], &row_x[0], &row_dz[0], &seg[0], slabs, chunk,
                                <const floating*>NULL, <const floating*>NULL,
                                <const floating*>NULL, ACT_LINEAR, 0,
                                &dbpart[0] if dbpart is not None else NULL, weight_grad,
                                dz_transient, &src)
    return dpool.shape[0] * dpool.shape[1] * dpool.shape[2] * dpool.shape[3] - int(hits.sum())


def _run_backward_input(const floating[:, :, :, ::1] dz, const floating[:, :, :, ::1] w,
                        floating[:, :, :, ::1] dx, floating[::1] col, Geom g,
                        Py_ssize_t tile):
    with nogil:
        _backward_input(&dz[0, 0, 0, 0], &w[0, 0, 0, 0], &dx[0, 0, 0, 0], &col[0], &g, tile)


# -- validation and planning (Python level) ------------------------------------------------

def _planned(g):
    """The checked geometry plus what the direct paths need: the reduction length K and the
    padded input's size."""
    g["K"] = g["KH"] * g["KW"] * g["C"]
    g["HP"], g["WP"] = _padded_size(g)
    return g


def _padded_size(g):
    """Rows and columns of the zero-padded input that the output windows reach (the input
    sits at (PT, PL) in it): exactly what the direct paths read, nothing more."""
    return (max((g["HO"] - 1) * g["SH"] + (g["KH"] - 1) * g["DH"] + 1, 0),
            max((g["WO"] - 1) * g["SW"] + (g["KW"] - 1) * g["DW"] + 1, 0))


def _pad_shape(x_shape, hp, wp, top, left):
    """Shape of x's zero-padded copy; (0,) when x already is the padded input."""
    if (hp, wp) == tuple(x_shape[1:3]) and top == 0 and left == 0:
        return (0,)
    return (x_shape[0], hp, wp, x_shape[3])


def _padded(x, xp, top, left):
    """x zero-padded into xp (a scratch view from _pad_shape), or x itself if xp is (0,)."""
    if xp.ndim == 1:
        return x
    if xp.size:
        _run_pad(x, xp, top, left)
    return xp


def _pointwise(g):
    return g["KH"] == 1 and g["KW"] == 1 and g["SH"] == 1 and g["SW"] == 1


# A 1x1 kernel with strides and no padding (a residual network's projection shortcut) reads
# only every SH-th row and SW-th column: it is the stride-1 pointwise conv of that subsample
# (one strided copy of 1/(SH*SW) of x), and its input gradient that conv's, scattered back
# into zeros. The strided geometry itself went through a padded copy of all of x and, for
# the input gradient, im2col + BLAS + col2im (32x32x32 -> 16x16x64, batch 32, 2 threads:
# CPU time per call, forward 0.31-0.45 -> 0.28 ms, backward 1.2-1.4 -> 0.65 ms).
def _strided_pointwise(g):
    return (g["KH"] == 1 and g["KW"] == 1 and (g["SH"], g["SW"]) != (1, 1)
            and g["PT"] == 0 and g["PL"] == 0)


# The subsample and the scatter back run on pynn's worker team, a row of the full-size
# array per item, each row written once (zeros and values in one pass): NumPy's strided copy
# into np.zeros ran on one thread after a separate zeroing pass (32x32x32 -> 16x16x64 at
# batch 64, two threads, Intel Xeon: backward 1.88 -> 1.49 ms, forward 0.77 -> 0.62).
ctypedef struct _StrideJob:
    bint is_double, scatter
    void* full            # (N, H, W, C): read (gather) or written whole (scatter)
    void* sub             # (N, HO, WO, C)
    Py_ssize_t H, W, C, HO, WO, SH, SW


cdef inline void _stride_row(floating* full, floating* sub, const _StrideJob* j,
                             Py_ssize_t t) noexcept nogil:
    """Gather: subsample row t = (n, ho) from its full-size row. Scatter: full-size row
    t = (n, h), the subsample's values at its strided pixels, zeros elsewhere."""
    cdef Py_ssize_t n, h, ho, w, wo, C = j.C
    cdef floating* frow
    cdef floating* srow
    if not j.scatter:
        n, ho = t // j.HO, t % j.HO
        frow = full + (n * j.H + ho * j.SH) * j.W * C
        srow = sub + t * j.WO * C
        for wo in range(j.WO):
            memcpy(srow + wo * C, frow + wo * j.SW * C, C * sizeof(floating))
        return
    n, h = t // j.H, t % j.H
    frow = full + t * j.W * C
    if h % j.SH or h // j.SH >= j.HO:
        memset(frow, 0, j.W * C * sizeof(floating))
        return
    srow = sub + (n * j.HO + h // j.SH) * j.WO * C
    for w in range(j.W):
        if w % j.SW == 0 and w // j.SW < j.WO:
            memcpy(frow + w * C, srow + (w // j.SW) * C, C * sizeof(floating))
        else:
            memset(frow + w * C, 0, C * sizeof(floating))


cdef void _stride_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _StrideJob* j = <_StrideJob*>ctx
    cdef long t
    for t in range(begin, end):
        if j.is_double:
            _stride_row(<double*>j.full, <double*>j.sub, j, t)
        else:
            _stride_row(<float*>j.full, <float*>j.sub, j, t)


def _run_stride(floating[:, :, :, ::1] full, floating[:, :, :, ::1] sub, Py_ssize_t SH,
                Py_ssize_t SW, bint scatter):
    """sub = full[:, ::SH, ::SW] (the first HO x WO of those), or scatter: full = zeros with
    sub at those pixels."""
    cdef _StrideJob job
    cdef int threads = omp_get_max_threads()
    cdef long items
    if (full.shape[0] != sub.shape[0] or full.shape[3] != sub.shape[3] or SH < 1 or SW < 1
            or (sub.shape[1] - 1) * SH >= full.shape[1] > 0
            or (sub.shape[2] - 1) * SW >= full.shape[2] > 0
            or (full.shape[1] == 0 or full.shape[2] == 0) and sub.shape[1] * sub.shape[2] > 0):
        raise ValueError("conv2d: a strided 1x1 conv's subsample does not fit its input")
    if full.size == 0 or (sub.size == 0 and not scatter):
        return
    if scatter and sub.size == 0:
        full[...] = 0
        return
    job.is_double, job.scatter = floating is double, scatter
    job.full, job.sub = &full[0, 0, 0, 0], &sub[0, 0, 0, 0]
    job.H, job.W, job.C = full.shape[1], full.shape[2], full.shape[3]
    job.HO, job.WO, job.SH, job.SW = sub.shape[1], sub.shape[2], SH, SW
    items = full.shape[0] * (full.shape[1] if scatter else sub.shape[1])
    with nogil:
        pynn_team_for(items, team_grain(items, threads), threads, _stride_job, &job)


def _subsampled(x, g):
    """x at the pixels a strided 1x1 conv reads, (N, HO, WO, C), contiguous."""
    sub = np.empty((g["N"], g["HO"], g["WO"], x.shape[3]), dtype=x.dtype)
    _run_stride(np.ascontiguousarray(x), sub, g["SH"], g["SW"], False)
    return sub


def _scattered(dxs, input_shape, g):
    """The input gradient of a strided 1x1 conv from that of its subsample: zero elsewhere."""
    dx = np.empty(input_shape, dtype=dxs.dtype)
    _run_stride(dx, np.ascontiguousarray(dxs), g["SH"], g["SW"], True)
    return dx


# The direct paths read a zero-padded copy of their input; im2col + BLAS needs none (an
# out-of-range tap is a memset in a workspace bounded by _workspace_bytes). A copy that would
# be mostly padding goes that way instead: 'same' with a dilation large against the input
# reads zeros almost everywhere (8x8 input, 3x3 kernel, dilation 8000: a 1 GiB copy per
# channel and image; 1e5: 149 GiB), and so does the 'full' padding of backward_input. Normal
# layers stay direct: a 3x3 'same' pads 32x32 to 34x34 (1.13x), 4x4 to 6x6 (2.25x), and any
# copy under one float32 workspace is allowed whatever its ratio.
_MAX_PAD_RATIO = 4


def _padding_too_large(g, op):
    """Whether the op's zero-padded copy would exceed _MAX_PAD_RATIO times its source."""
    if op == "conv2d_backward_input":   # dz padded to the 'full' conv of its direct form
        padded = (g["N"] * (g["H"] + (g["KH"] - 1) * g["DH"])
                  * (g["W"] + (g["KW"] - 1) * g["DW"]) * g["F"])
        source = g["N"] * g["HO"] * g["WO"] * g["F"]
    else:
        padded = g["N"] * g["HP"] * g["WP"] * g["C"]
        source = g["N"] * g["H"] * g["W"] * g["C"]
    return padded > max(_MAX_PAD_RATIO * source, _workspace_bytes // 4)


def _use_direct(g, op):
    backward_input = op == "conv2d_backward_input"
    if backward_input and (g["SH"], g["SW"]) != (1, 1):
        return False    # its direct form is a stride-1 forward conv of the padded dz
    if _padding_too_large(g, op):
        return False
    if _direct_max_k is not None:
        return g["K"] <= _direct_max_k
    if backward_input and g["C"] < _DIRECT_MIN_C_BACKWARD_INPUT:
        # That conv has C output channels: below one vector of them the microkernel runs
        # its scalar column tail (C = 3: 0.1x BLAS).
        return False
    return g["K"] * g["F"] <= _DIRECT_MAX_KF


def _plan(g, dtype):
    """Output rows per tile and the im2col workspace size for them (1 when none is needed)."""
    # A tile's working set: its im2col rows plus the GEMM output rows they produce.
    row_bytes = max(g["WO"] * (g["K"] + g["F"]) * np.dtype(dtype).itemsize, 1)
    tile = max(_workspace_bytes // row_bytes, 1)
    tile = min(tile, max(g["N"] * g["HO"], 1))
    return tile, (1 if _pointwise(g) else tile * g["WO"] * g["K"],)


def _kernel_segments(g):
    """Forward microkernel segments: one per kernel row (its KW*C padded inputs are
    contiguous when the dilation along W is 1), else one per kernel tap; a segment's
    offset into the padded input and into the (K, F) kernel matrix, and its length."""
    C, F, WPC = g["C"], g["F"], g["WP"] * g["C"]
    kh = np.arange(g["KH"], dtype=np.intp)
    if g["DW"] == 1:
        return kh * g["DH"] * WPC, kh * g["KW"] * C * F, g["KW"] * C
    kw = np.arange(g["KW"], dtype=np.intp)
    aseg = (kh[:, None] * g["DH"] * WPC + kw[None, :] * g["DW"] * C).ravel()
    bseg = ((kh[:, None] * g["KW"] + kw[None, :]) * C * F).ravel()
    return aseg, bseg, C


def _forward_direct_into(xp, kernel, bias, z, y, g, act, alpha):
    """The direct forward on a padded input xp (g["HP"], g["WP"]) into z and y."""
    aseg, bseg, tn = _kernel_segments(g)
    if g["K"] == 0:
        # C = 0: the output is the bias and nothing is read, but the shim still takes the
        # address of element 0 (out of bounds under PYNN_DEBUG_CYTHON=1): one-element stand-ins.
        xp = kernel = np.zeros((1, 1, 1, 1), dtype=kernel.dtype)
    roff = np.empty(omp_get_max_threads() * _FORWARD_PIXELS, dtype=np.intp)
    # Segment offsets into a packed panel: kernel row index times the panel's width.
    nc = _panel_columns(kernel.dtype)
    rows = bseg // g["F"]
    with scratch(kernel.dtype, (max(g["K"] * g["F"], 1),)) as (wp,):
        _run_forward_direct(xp, kernel, bias, z, y, wp, g, roff, _FORWARD_PIXELS, aseg,
                            rows * nc, rows * (g["F"] - (g["F"] - 1) // nc * nc), tn, act,
                            alpha)


# -- Winograd selection (3x3, stride 1, dilation 1, float32) --------------------------------
# PYNN_CONV_ALGO=direct|winograd|winograd4 forces one algorithm wherever Winograd applies
# (tests, benchmarks; winograd is F(2x2, 3x3), winograd4 F(4x4, 3x3)); "auto" (the default)
# follows _winograd_pays, then _wino_tile.
_CONV_ALGOS = ("auto", "direct", "winograd", "winograd4")
_conv_algo = os.environ.get("PYNN_CONV_ALGO", "auto")
if _conv_algo not in _CONV_ALGOS:
    raise ValueError(f"PYNN_CONV_ALGO: expected one of {_CONV_ALGOS}, got {_conv_algo!r}")

# Bytes of one thread's V and M blocks ((m+2)^2*T*(C + F) floats): half of a Zen 4 core's
# 1 MiB L2, so the packed kernel slice streamed past them does not evict them. F(4x4, 3x3)
# on Intel (2 MiB L2) measured the same at 0.5 and 1 MiB and slower at 0.25 and 2.
_WINO_BLOCK_BYTES = 1 << 19


def _set_conv_algo(algo=None):
    """Algorithm knob for tests and benchmarks ("auto", "direct", "winograd", "winograd4";
    None = "auto").
    Returns the old value."""
    global _conv_algo
    old = _conv_algo
    algo = "auto" if algo is None else algo
    if algo not in _CONV_ALGOS:
        raise ValueError(f"conv algorithm: expected one of {_CONV_ALGOS}, got {algo!r}")
    _conv_algo = algo
    return old


# Where F(2x2, 3x3) beats the direct microkernel: python -m bench.bench_winograd, AMD EPYC
# (Zen 4, AVX-512), batch 32, 'same', medians of 9 alternated rounds, 1 thread, shared machine
# (bench/results/winograd-amd-epyc-2t.json), direct / Winograd wall time:
#   channels  map    forward  backward_input
#   16 -> 16  32x32  0.85     0.86          (the transforms outweigh the GEMMs' savings)
#   32 -> 32  32x32  1.27     1.22
#   32 -> 64  16x16  1.44     1.60
#   64 -> 64  16x16  1.69     1.68
#  128 -> 128  8x8   ~1.7     1.71
# (8 -> 8 forward: 2.3x, only because direct runs its scalar column tail below one vector
# of filters; its backward_input goes to BLAS and beats Winograd 3x.) So both channel
# counts of the conv Winograd runs (for backward_input: F in, C out) must reach 32.
# backward_weight follows the forward's rule (same machine and command, --ops
# backward_weight, medians of 7-9 alternated rounds, 1 thread, CPU time):
#   32 -> 32  32x32  1.58    64 -> 64  16x16  1.48    32 -> 64  16x16  1.43
#  128 -> 128 16x16  1.46   128 -> 128  8x8   0.92    32 -> 32   8x8   1.07
#   16 -> 16  32x32  1.32     8 -> 8   32x32  1.6 (direct's scalar tail again)
# It would pay below 32 channels too, but there the forward and backward_input stay direct
# and one rule keeps the three ops of a layer together. 128 -> 128 at 8x8 loses (each
# block's 16*C*F partial is read and written for few tiles), yet that layer's whole
# backward still gains 1.19x from backward_input. Tried and dropped: blocks of tiles of 1-2
# MiB (T up to 512; the same as the forward's 0.5 MiB), tiles' rows stored k-major (16
# slices of T rows, as the GEMMs read them: 32 -> 32 5.3 ms against 4.6), the microkernel's
# wide 6 x 4-vector blocks over all F filters (64 -> 64 4.30 ms against 4.13-4.28).
_WINOGRAD_MIN_CHANNELS = 32
# Calls of fewer output tiles stay direct: the batch-1 inference lane (native/infer.pyx)
# runs direct convolutions, and a model served from several threads, some on the lane and
# some on the plan's public ops, must give every caller the same bits (a thread-scaling run
# of the small CNN at batch 1 found them differing). 512 tiles is a 32x32 map at batch 2;
# the table above was measured at batch 32.
_WINOGRAD_MIN_TILES = 512
# The forward op itself (conv2d_forward, conv2d_pool_forward, the inference plans) takes
# Winograd from this many F(2x2) tiles: an 8x8 map at batch 1. The lane runs it too now
# (native/infer.pyx Conv2DWinograd, the kernel transformed once, the public op's bits), so
# every caller still gets one answer. One thread, AMD EPYC Zen 3, batch 1, relu, 'same',
# medians of 200-300 alternated calls, microseconds direct / F(2x2) / F(4x4): the lane's
# step (kernel transformed once) 16x16 32 -> 64 155 / 130 / 86, 8x8 64 -> 64 55 / 37 / 28,
# 16x16 64 -> 64 206 / 125 / 85, 32x32 32 -> 32 316 / 267 / 171, 14x14 64 -> 128 311 / 196
# / 153; the public op (transforming per call) 16x16 32 -> 64 183 / 147 / 153, 8x8 64 ->
# 64 136 / 119 / 193, 16x16 64 -> 64 447 / 330 / 349, 4x4 128 -> 128 (4 tiles) 295 / 356 /
# 719, batch 4 8x8 64 -> 64 439 / 326 / 341.
_WINOGRAD_MIN_TILES_FORWARD = 16


def _winograd_pays(g, op=None):
    """Where F(2x2, 3x3) beats the direct microkernel (see the tables above); op "forward":
    the forward op's own threshold, else the training ops' (backward_input's forward conv,
    the kernel gradient, the bf16 roads)."""
    tiles = g["N"] * ((g["HO"] + 1) // 2) * ((g["WO"] + 1) // 2)
    least = _WINOGRAD_MIN_TILES_FORWARD if op == "forward" else _WINOGRAD_MIN_TILES
    return min(g["C"], g["F"]) >= _WINOGRAD_MIN_CHANNELS and tiles >= least


def _use_winograd(g, dtype, op=None):
    """Whether the stride-1 conv of geometry g (on its zero-padded input) runs by
    Winograd: float32 3x3 stride-1 dilation-1 convs only (float64 stays direct). op:
    "forward" for the forward op, see _winograd_pays."""
    if (np.dtype(dtype) != np.float32 or (g["KH"], g["KW"]) != (3, 3)
            or (g["SH"], g["SW"], g["DH"], g["DW"]) != (1, 1, 1, 1)
            or g["C"] == 0 or g["F"] == 0 or g["N"] * g["HO"] * g["WO"] == 0
            or _conv_algo == "direct"):
        return False
    return _conv_algo in ("winograd", "winograd4") or _winograd_pays(g, op)


# F(4x4, 3x3) against F(2x2, 3x3), where Winograd runs at all (Intel Xeon, 2 threads,
# batch 32 unless noted, medians of 3 alternated rounds of 5 calls), forward / kernel
# gradient speed-up:
#    32 -> 32   32x32  1.29 / 1.32   (batch 8: 1.17 / 1.19; batch 2: 0.78 / 1.19)
#    32 -> 32   28x28  1.30 / 1.18    64 -> 64  16x16  1.20 / 1.30   (batch 4: 0.79 / 0.90)
#    64 -> 128  16x16  1.24 / 1.27   128 -> 128 16x16  1.15 / 0.94
#   128 -> 128  28x28  1.13 / 0.85 (batch 16)
#    64 -> 64   14x14  1.02 / 1.07    64 -> 64   8x8   0.92 / 1.01   128 -> 128 8x8 0.87 / 0.92
#   128 -> 128   7x7   0.90 / 0.87   256 -> 256 14x14  0.69 / 0.43 (batch 8)
# It needs enough tiles of 16 pixels to fill the blocks, maps that 4x4 tiles cover without
# waste (14x14 computes 16x16), and for the kernel gradient, whose slabs each keep a 36*C*F
# partial, few enough channel pairs. Where the tiles run out (same machine, medians of 3
# alternated rounds), F(2x2) / F(4x4) time at 128 and 256 tiles, forward / kernel gradient
# (- not measured), on 2 threads and on 1:
#                        128 tiles: 2 threads   1 thread     256 tiles: 2 threads   1 thread
#   32 -> 64   16x16           1.03 / 0.68    1.28 / 1.20              1.32 / 1.11    1.38 / 1.30
#   32 -> 32   32x32           1.09 / 0.87    1.34 / 1.22              1.08 / 0.98    1.42 / 1.23
#   64 -> 64   16x16           0.94 / 0.78    1.28 / 1.13              1.07 / 1.15    1.38 / 1.31
#   64 -> 64    8x8            0.98 / 0.80    1.30 / 1.13                 - / 1.09       - / 1.33
#   64 -> 128  16x16           1.04 / -       1.25 / -                 1.12 / -       1.39 / -
# so 256 tiles (a 16x16 map at batch 16: the chunk a one-thread inference plan runs, where
# F(4x4) took the small CNN's batch-64 predict from 6.4 to 5.3 ms) whatever the thread
# count: the choice must not depend on it, or the bits would.
_WINO4_MIN_TILES = 256
_WINO4_MAX_WASTE = 1.1
_WINO4_MAX_WGRAD_CF = 64 * 128
# A forward of few tiles (a batch-1 or -2 prediction: a 16x16 map is 16 F(4x4) tiles, 32x32
# 64) takes F(4x4) too: the inference plans transform its kernel once, and then it is the
# fastest by far on one thread (the table at _WINOGRAD_MIN_TILES_FORWARD); the public op,
# transforming per call, runs it about as fast as F(2x2) there. Between this and
# _WINO4_MIN_TILES (Intel, two threads, above) F(2x2) stays.
_WINO4_FEW_TILES = (16, 64)


def _wino_tile(g, op="forward"):
    """Output pixels per Winograd tile side for `op` ("forward", which backward_input also
    runs, or "backward_weight"): 4 (F(4x4, 3x3)) or 2 (F(2x2, 3x3)); PYNN_CONV_ALGO=
    winograd / winograd4 force one."""
    if _conv_algo == "winograd4":
        return 4
    if _conv_algo == "winograd":
        return 2
    th, tw = (g["HO"] + 3) // 4, (g["WO"] + 3) // 4
    tiles = g["N"] * th * tw
    if 16 * th * tw > _WINO4_MAX_WASTE * g["HO"] * g["WO"]:
        return 2
    if tiles >= _WINO4_MIN_TILES and (op == "forward"
                                       or g["C"] * g["F"] <= _WINO4_MAX_WGRAD_CF):
        return 4
    if op == "forward" and _WINO4_FEW_TILES[0] <= tiles <= _WINO4_FEW_TILES[1]:
        return 4
    return 2


def _forward_winograd_into(xp, kernel, bias, z, y, g, act, alpha, top=0, left=0):
    """The Winograd forward on a padded input xp (g["HP"], g["WP"]) into z and y. The
    kernel is transformed on every call, like dense.pyx's packed weights: the optimizer
    rewrites it in place after each step and a caller's own in-place write bumps no version;
    forward and backward_input transform different kernels (the latter flipped and
    transposed), so a training step makes each once (64 -> 64 channels: ~20 us, against
    ~2 ms for the conv)."""
    C, F = g["C"], g["F"]
    m = _wino_tile(g)
    nk = (m + 2) ** 2
    T = _wino_block_tiles(g, m)
    threads = omp_get_max_threads()
    with scratch(np.float32, (nk * C * F,), (nk * C * F,), (threads * nk * T * C,),
                 (threads * nk * T * F,)) as (u, up, vbuf, mbuf):
        _run_forward_winograd(xp, kernel, bias, z, y, u, up, vbuf, mbuf,
                              np.zeros(max(C, F), dtype=np.float32), g, T, act, alpha, m, top,
                              left)


def _forward_padded(xp, kernel, bias, z, y, g, act, alpha):
    """The stride-1 forward conv of a padded input by Winograd where it applies, else by
    the direct microkernel (forward, and backward_input as the forward conv of padded dz)."""
    if _use_winograd(g, xp.dtype):
        _forward_winograd_into(xp, kernel, bias, z, y, g, act, alpha)
    else:
        _forward_direct_into(xp, kernel, bias, z, y, g, act, alpha)


def _wino_block_tiles(g, m=2):
    """Tiles per Winograd block: one thread's V and M (or W) blocks within _WINO_BLOCK_BYTES."""
    T = _WINO_BLOCK_BYTES // ((m + 2) ** 2 * 4 * (g["C"] + g["F"]))
    return min(max(T // 8 * 8, 8), 256)


def _backward_weight_winograd_into(xp, dz, dz0, sn, sh, dw, g, top=0, left=0):
    """The Winograd kernel gradient into dw (3, 3, C, F) from the padded input xp and dz
    (flat; pixel (n, h, w) at dz0 + n*sn + h*sh + w*F). Slabs of tiles as in the direct
    path, fixed by the shape: results do not depend on the thread count."""
    C, F = g["C"], g["F"]
    m = _wino_tile(g, "backward_weight")
    nk = (m + 2) ** 2
    T = _wino_block_tiles(g, m)
    ntiles = g["N"] * ((g["HO"] + m - 1) // m) * ((g["WO"] + m - 1) // m)
    # As the direct path: at least 4 slabs (both cores busy) unless there are fewer tiles.
    slabs = max(min(ntiles, _SLABS, max(_SLAB_ELEMENTS // (nk * C * F), 4)), 1)
    threads = omp_get_max_threads()
    with scratch(np.float32, (slabs * nk * C * F,), (threads * T * (nk * C + _WINO_ROW_PAD),),
                 (threads * T * (nk * F + _WINO_ROW_PAD),)) as (part, vbuf, wbuf):
        _run_backward_weight_winograd(xp, dz, dz0, sn, sh, dw, part, vbuf, wbuf,
                                      np.zeros(max(C, F), dtype=np.float32), g, T, slabs, m,
                                      top, left)


def conv2d_forward(x, kernel, bias, strides=(1, 1), padding="valid", dilation_rate=(1, 1),
                   activation="linear", alpha=0.0):
    """y = act(conv(x, kernel) + bias) -> (y, z).

    x (N, H, W, C), kernel (KH, KW, C, F), bias (F,) or None; y (N, HO, WO, F). z is the
    pre-activation when the activation needs it for backward (gelu), else None.
    """
    op = "conv2d_forward"
    act_name, alpha, x, kernel, bias, g = operands.conv2d_forward(
        HOST, x, kernel, bias, strides, padding, dilation_rate, activation, alpha)
    g = _planned(g)
    if _strided_pointwise(g) and x.size:
        return conv2d_forward(_subsampled(x, g), kernel, bias, (1, 1), "valid", (1, 1),
                              act_name, alpha)
    keep_z = act_name in ACTIVATIONS_NEEDING_INPUT
    z = np.empty((g["N"], g["HO"], g["WO"], g["F"]), dtype=x.dtype)
    y = np.empty_like(z) if keep_z else z
    if z.size:
        act = ACTIVATIONS.index(act_name)
        if _use_winograd(g, x.dtype, "forward"):   # reads x in place: no padded copy
            _forward_winograd_into(x, kernel, bias, z, y, g, act, float(alpha), g["PT"], g["PL"])
        elif _use_direct(g, op):
            with scratch(x.dtype, _pad_shape(x.shape, g["HP"], g["WP"], g["PT"], g["PL"])) as (xp,):
                xp = _padded(x, xp, g["PT"], g["PL"])
                _forward_direct_into(xp, kernel, bias, z, y, g, act, float(alpha))
        else:
            tile, col_shape = _plan(g, x.dtype)
            with scratch(x.dtype, col_shape) as (col,):
                _run_forward(x, kernel, bias, z, y, col, g, tile, act, float(alpha))
    return y, (z if keep_z else None)


def conv2d_pool_forward(x, kernel, bias, strides=(1, 1), padding="valid", dilation_rate=(1, 1),
                        activation="linear", alpha=0.0, pool_size=(2, 2), pool_strides=(2, 2),
                        pool_padding="valid"):
    """(pooled, argmax) = maxpool2d_forward(conv2d_forward(x, ...)'s y, pool_size,
    pool_strides, pool_padding): a Conv2D whose output only a MaxPooling2D reads.

    Where the conv runs direct and the pool's windows tile its output, the conv runs band
    by band (one band: the PH output rows of a row of windows, in a per-thread buffer) and
    pools each band while it is in cache: its output is never written whole, and rows no
    window reads are not computed. The same bits as the two ops. Otherwise the two ops."""
    from pynn._native.pool import maxpool2d_forward

    act_name, a, x, kernel, bias, g, pg = operands.conv2d_pool_forward(
        HOST, x, kernel, bias, strides, padding, dilation_rate, activation, alpha, pool_size,
        pool_strides, pool_padding)
    g = _planned(g)
    if not (windows_tile(pg) and pg["HO"] and pg["WO"] and g["N"] and g["K"]
            and not _strided_pointwise(g) and not _use_winograd(g, x.dtype, "forward")
            and _use_direct(g, "conv2d_forward")):
        y, _ = conv2d_forward(x, kernel, bias, strides, padding, dilation_rate, act_name, a)
        return maxpool2d_forward(y, pool_size, pool_strides, pool_padding)
    pooled = np.empty((g["N"], pg["HO"], pg["WO"], g["F"]), dtype=x.dtype)
    argmax = np.empty(pooled.shape, dtype=np.int32)
    aseg, bseg, tn = _kernel_segments(g)
    nc = _panel_columns(kernel.dtype)
    rows = bseg // g["F"]
    with scratch(x.dtype, _pad_shape(x.shape, g["HP"], g["WP"], g["PT"], g["PL"]),
                 (g["K"] * g["F"],)) as (xp, wp):
        xp = _padded(x, xp, g["PT"], g["PL"])
        _run_conv_pool_forward(xp, kernel, bias, wp, g, aseg, rows * nc,
                               rows * (g["F"] - (g["F"] - 1) // nc * nc), tn,
                               ACTIVATIONS.index(act_name), float(a), pooled, argmax,
                               (pg["PH"], pg["PW"]), (pg["SH"], pg["SW"]))
    return pooled, argmax


def conv2d_backward_input(dz, kernel, input_shape, strides=(1, 1), padding="valid",
                          dilation_rate=(1, 1)):
    """dx (N, H, W, C) = gradient of the conv w.r.t. its input, from dz (N, HO, WO, F)."""
    op = "conv2d_backward_input"
    dz, kernel, input_shape, g = operands.conv2d_backward_input(
        HOST, dz, kernel, input_shape, strides, padding, dilation_rate)
    g = _planned(g)
    if not (dz.size and 0 not in input_shape):
        return np.zeros(input_shape, dtype=dz.dtype)
    if _strided_pointwise(g):
        shape = (g["N"], g["HO"], g["WO"], g["C"])
        return _scattered(conv2d_backward_input(dz, kernel, shape), input_shape, g)
    if _use_direct(g, op) or _winograd_input_grad(g, input_shape, dz.dtype):
        # Stride 1: dx is the forward conv of dz, zero-padded to a "full" convolution.
        gt, top, left = _input_grad_geometry(g, input_shape)
        dx = np.empty(input_shape, dtype=dz.dtype)
        if _use_winograd(gt, dz.dtype):   # reads dz in place: no padded copy
            _forward_winograd_into(dz, _flipped(kernel), None, dx, dx, gt,
                                   ACTIVATIONS.index("linear"), 0.0, top, left)
            return dx
        with scratch(dz.dtype, _pad_shape(dz.shape, gt["HP"], gt["WP"], top, left)) as (dzp,):
            dzp = _padded(dz, dzp, top, left)
            _forward_padded(dzp, _flipped(kernel), None, dx, dx, gt,
                            ACTIVATIONS.index("linear"), 0.0)
        return dx
    if _strided_input_grad_fits(g, dz.dtype):   # its padded dz: dz and a tap's margin around it
        return _strided_input_grad(dz, kernel, input_shape, g)
    dx = np.zeros(input_shape, dtype=dz.dtype)
    tile, col_shape = _plan(g, dz.dtype)
    with scratch(dz.dtype, col_shape) as (col,):
        _run_backward_input(dz, kernel, dx, col, g, tile)
    return dx


# -- input gradient of a strided conv, one residue class of input pixels at a time ----------
# Input row h of a conv with stride S, top padding P and kernel height K gets dz rows
# q - t through kernel rows r + t*S (r = (h + P) mod S, q = (h + P - r) / S, t = 0, 1, ...
# while r + t*S < K): within one class (r, r') of rows and columns, dx is a stride-1
# correlation of dz with the taps of that class. Each class runs on the direct microkernel
# reading a zero-padded dz (one segment per tap row, its taps' dz pixels contiguous) and
# writing its pixels straight into dx, SW*C apart: no zeros multiplied, no column buffer and
# no scatter-add. im2col + BLAS + col2im made a 16384 x 576 column buffer for the residual
# CNN's 3x3 stride-2 32 -> 64 layer (batch 64, Intel Xeon, ms im2col / classes: two threads
# 4.0 / 3.1, one 6.3 / 5.2; 64 -> 64 two threads 8.0 / 5.4, one 12.5 / 9.6).
ctypedef struct _StridedInputJob:
    bint is_double
    const void* dzp        # (N, HPd, WPd, F) zero-padded dz
    const void* panels     # this class's kernel taps (rows (t, u, f), C columns) in panels
    void* dx               # (N, H, W, C)
    const Py_ssize_t* aseg # per tap row t: -t rows of dzp
    const Py_ssize_t* bseg # per tap row: its first panel row (full panels)
    const Py_ssize_t* bseg_last
    Py_ssize_t* roff_buf   # per team slot: cols window offsets
    Py_ssize_t N, H, W, C, F, HPd, WPd, rows, cols, q0, c0, h0, w0, SH, SW, top, left
    Py_ssize_t nseg, tn, nc


cdef inline void _strided_input_row(const floating* dzp, const floating* panels, floating* dx,
                                    const _StridedInputJob* j, Py_ssize_t item,
                                    Py_ssize_t* roff) noexcept nogil:
    """Class row `item` = (n, i): input row h0 + i*SH of image n, its pixels w0, w0 + SW, ...
    (cols of them), each the sum over the class's taps."""
    cdef Py_ssize_t n = item // j.rows, i = item % j.rows, p, p0 = 0, wd
    cdef Py_ssize_t base = ((n * j.HPd + j.q0 + i + j.top) * j.WPd + j.c0 + j.left) * j.F
    cdef floating* out = dx + ((n * j.H + j.h0 + i * j.SH) * j.W + j.w0) * j.C
    for p in range(j.cols):
        roff[p] = base + p * j.F
    while p0 < j.C:
        wd = _imin(j.nc, j.C - p0)
        _seg_gemm(j.cols, wd, j.nseg, j.tn, dzp, roff, j.aseg, 1, panels + p0 * j.nseg * j.tn,
                  j.bseg if wd == j.nc else j.bseg_last, wd, out + p0, j.SW * j.C,
                  <const floating*>NULL, 0, False)
        p0 = p0 + wd


cdef void _strided_input_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _StridedInputJob* j = <_StridedInputJob*>ctx
    cdef long t
    for t in range(begin, end):
        if j.is_double:
            _strided_input_row(<const double*>j.dzp, <const double*>j.panels, <double*>j.dx,
                               j, t, j.roff_buf + slot * j.cols)
        else:
            _strided_input_row(<const float*>j.dzp, <const float*>j.panels, <float*>j.dx, j,
                               t, j.roff_buf + slot * j.cols)


def _run_strided_input_class(const floating[:, :, :, ::1] dzp, const floating[::1] panels,
                             floating[:, :, :, ::1] dx, const Py_ssize_t[::1] aseg,
                             const Py_ssize_t[::1] bseg, const Py_ssize_t[::1] bseg_last,
                             Py_ssize_t tn, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t q0,
                             Py_ssize_t c0, Py_ssize_t h0, Py_ssize_t w0, Py_ssize_t SH,
                             Py_ssize_t SW, Py_ssize_t top, Py_ssize_t left):
    """One residue class of dx (see above): rows x cols pixels from (h0, w0), SH and SW
    apart; class pixel (i, k) reads dzp pixels (q0 + i + top - t, c0 + k + left + u) for
    tap (t, u). Checked here: every read and write lies inside its array."""
    cdef _StridedInputJob job
    cdef int threads = omp_get_max_threads()
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[3], F = dzp.shape[3]
    cdef Py_ssize_t nseg = aseg.shape[0], nc = _panel_width(&panels[0])
    if rows <= 0 or cols <= 0 or N == 0:
        return
    if (dzp.shape[0] != N or nseg < 1 or tn % F or bseg.shape[0] != nseg
            or bseg_last.shape[0] != nseg or panels.shape[0] < nseg * tn * C
            or h0 < 0 or w0 < 0 or h0 + (rows - 1) * SH >= dx.shape[1]
            or w0 + (cols - 1) * SW >= dx.shape[2]
            or q0 + top - (nseg - 1) < 0 or q0 + rows - 1 + top >= dzp.shape[1]
            or c0 + left < 0 or (c0 + cols - 1 + left) * F + tn > dzp.shape[2] * F):
        raise ValueError("conv2d_backward_input: a strided class does not fit its arrays")
    roff = np.empty(threads * cols, dtype=np.intp)
    cdef Py_ssize_t[::1] roffv = roff
    job.is_double = floating is double
    job.dzp, job.panels, job.dx = &dzp[0, 0, 0, 0], &panels[0], &dx[0, 0, 0, 0]
    job.aseg, job.bseg, job.bseg_last, job.roff_buf = &aseg[0], &bseg[0], &bseg_last[0], \
        &roffv[0]
    job.N, job.H, job.W, job.C, job.F = N, dx.shape[1], dx.shape[2], C, F
    job.HPd, job.WPd, job.rows, job.cols = dzp.shape[1], dzp.shape[2], rows, cols
    job.q0, job.c0, job.h0, job.w0, job.SH, job.SW = q0, c0, h0, w0, SH, SW
    job.top, job.left, job.nseg, job.tn, job.nc = top, left, nseg, tn, nc
    with nogil:
        pynn_team_for(N * rows, team_grain(N * rows, threads), threads, _strided_input_job,
                      &job)


def _strided_classes(g):
    """Per residue class of a strided conv's input pixels: (r, taps, first class index q,
    rows) for each dimension, from its stride, padding, kernel and sizes."""
    dims = []
    for S, P, K, H in ((g["SH"], g["PT"], g["KH"], g["H"]), (g["SW"], g["PL"], g["KW"], g["W"])):
        per = []
        for r in range(S):
            taps = -(-(K - r) // S)
            q_min = -(-(P - r) // S)
            q_max = (H - 1 + P - r) // S
            per.append((r, taps, q_min, q_max - q_min + 1))
        dims.append(per)
    return dims


def _strided_input_grad_fits(g, dtype):
    """Whether the input gradient runs by residue classes: a stride above 1, no dilation,
    every class with a tap (kernel at least the stride) and channels in whole vectors (a
    17-channel input ran its last channel in the microkernel's scalar tail: 1.7 -> 2.9 ms
    against im2col), and a class's sums long enough (a 2x2 stride-2 conv of 16 filters sums
    16 terms a class: 0.23 -> 0.25-0.43 ms)."""
    return ((g["SH"], g["SW"]) != (1, 1) and g["DH"] == 1 and g["DW"] == 1
            and g["C"] % (_panel_columns(dtype) // 2) == 0
            and g["KH"] * g["KW"] * g["F"] >= _STRIDED_CLASS_MIN_TERMS * g["SH"] * g["SW"]
            and g["KH"] >= g["SH"] and g["KW"] >= g["SW"]
            and g["C"] >= _DIRECT_MIN_C_BACKWARD_INPUT and not _strided_pointwise(g)
            and g["K"] * g["F"] <= _DIRECT_MAX_KF and _STRIDED_INPUT_GRAD)


def _strided_input_grad(dz, kernel, input_shape, g):
    """dx of a strided conv by residue classes (see _run_strided_input_class)."""
    rows_h, rows_w = _strided_classes(g)
    th = max(t for _, t, _, _ in rows_h)
    tw = max(t for _, t, _, _ in rows_w)
    # dz padded by th - 1 rows above (tap t reads q - t) and enough below for the last
    # class rows past dz (input rows no window reads get the zeros there)
    bottom = max(max(q + n - 1 for _, _, q, n in rows_h) + 1 - g["HO"], 0)
    right = max(max(q + n - 1 for _, _, q, n in rows_w) + 1 - g["WO"], 0)
    dx = np.empty(input_shape, dtype=dz.dtype)
    nc = _panel_columns(dz.dtype)
    C, F = g["C"], g["F"]
    with scratch(dz.dtype, (g["N"], g["HO"] + th - 1 + bottom, g["WO"] + tw - 1 + right, F)) \
            as (dzp,):
        _run_pad(dz, dzp, th - 1, tw - 1)
        for r, t_h, q_h, n_h in rows_h:
            for c, t_w, q_w, n_w in rows_w:
                if n_h <= 0 or n_w <= 0:
                    continue
                # taps (t, u): kernel row r + t*SH, column c + (t_w - 1 - u)*SW
                taps = kernel[r::g["SH"]][:t_h, c::g["SW"]][:, :t_w][:, ::-1]
                rows = np.ascontiguousarray(taps.transpose(0, 1, 3, 2)).reshape(-1, C)
                panels = np.concatenate([rows[:, p0:p0 + nc].ravel()
                                         for p0 in range(0, C, nc)])
                tn = t_w * F
                last = C - (C - 1) // nc * nc
                aseg = -np.arange(t_h, dtype=np.intp) * ((g["WO"] + tw - 1 + right) * F)
                bseg = np.arange(t_h, dtype=np.intp) * tn * nc
                bseg_last = np.arange(t_h, dtype=np.intp) * tn * last
                _run_strided_input_class(
                    dzp, panels, dx, aseg, bseg, bseg_last, tn, n_h, n_w, q_h, q_w,
                    q_h * g["SH"] + r - g["PT"], q_w * g["SW"] + c - g["PL"], g["SH"],
                    g["SW"], th - 1, tw - t_w)
    return dx


# Input gradients of strided convs by residue classes (_strided_input_grad); False: im2col
# and col2im (benchmarks' A/B, tests).
_STRIDED_INPUT_GRAD = True
# Terms per class sum (taps x filters, averaged over the classes) from which it pays.
_STRIDED_CLASS_MIN_TERMS = 32


def _weight_grad_tables(g):
    """Offsets the direct backward_weight reads with (see _backward_weight_direct): kernel
    entry (kh, kw, c) -> padded input, output row -> its padded input row, the slab count,
    output rows per chunk and the chunk's segment starts in a packed panel buffer."""
    C, WPC = g["C"], g["WP"] * g["C"]
    kh, kw, c = np.ogrid[:g["KH"], :g["KW"], :C]
    koff = (kh * g["DH"] * WPC + kw * g["DW"] * C + c).astype(np.intp).ravel()
    n, ho = np.divmod(np.arange(g["N"] * g["HO"], dtype=np.intp), g["HO"])
    row_x = (n * g["HP"] + ho * g["SH"]) * WPC
    rows = g["N"] * g["HO"]
    slabs = min(rows, _SLABS, max(_SLAB_ELEMENTS // max(g["K"] * g["F"], 1), 4))
    chunk = max(_CHUNK_PIXELS // max(g["WO"], 1), 1)
    seg = np.arange(chunk, dtype=np.intp) * (g["WO"] * g["F"])
    return koff, row_x, slabs, chunk, seg


def _weight_grad_scratch(x, g, slabs, chunk, weight_grad=True):
    """Scratch shapes of the direct backward_weight: x padded, slab partials, panels (the
    last two unused, one element, when the pass makes only dz)."""
    if not weight_grad:   # the Winograd kernel gradient reads x in place
        return (1,), (1,), (1,)
    return (_pad_shape(x.shape, g["HP"], g["WP"], g["PT"], g["PL"]),
            (slabs * g["K"] * g["F"],),
            (omp_get_max_threads() * chunk * g["WO"] * g["F"],))


def conv2d_backward_weight(x, dz, kernel_shape, strides=(1, 1), padding="valid",
                           dilation_rate=(1, 1)):
    """dkernel (KH, KW, C, F) = gradient of the conv w.r.t. its kernel."""
    op = "conv2d_backward_weight"
    x, dz, kernel_shape, g = operands.conv2d_backward_weight(
        HOST, x, dz, kernel_shape, strides, padding, dilation_rate)
    g = _planned(g)
    if _strided_pointwise(g) and dz.size:
        return conv2d_backward_weight(_subsampled(x, g), dz, kernel_shape)
    dw = np.zeros(kernel_shape, dtype=x.dtype)
    if dz.size and dw.size:
        if _use_winograd(g, x.dtype):   # reads x in place: no padded copy
            _backward_weight_winograd_into(x, dz.reshape(-1), 0, g["HO"] * g["WO"] * g["F"],
                                           g["WO"] * g["F"], dw, g, g["PT"], g["PL"])
        elif _use_direct(g, op):
            koff, row_x, slabs, chunk, seg = _weight_grad_tables(g)
            row_dz = np.arange(g["N"] * g["HO"], dtype=np.intp) * (g["WO"] * g["F"])
            with scratch(x.dtype, *_weight_grad_scratch(x, g, slabs, chunk)) as (xp, part, dzp):
                xp = _padded(x, xp, g["PT"], g["PL"])
                _run_backward_weight_direct(xp.reshape(-1), dz.reshape(-1), dw, part, dzp, g,
                                            koff, row_x, row_dz, seg, slabs, chunk)
        else:
            tile, col_shape = _plan(g, x.dtype)
            with scratch(x.dtype, col_shape) as (col,):
                _run_backward_weight(x, dz, dw, col, g, tile)
    return dw


def _input_grad_geometry(g, input_shape):
    """backward_input (stride 1) as the forward conv of dz zero-padded to a 'full' conv:
    that conv's geometry, and where dz sits in its padded input (top, left)."""
    n, h, w, c = input_shape
    top = (g["KH"] - 1) * g["DH"] - g["PT"]
    left = (g["KW"] - 1) * g["DW"] - g["PL"]
    gt = dict(g, H=g["HO"], W=g["WO"], C=g["F"], F=c, HO=h, WO=w, PT=top, PL=left,
              K=g["KH"] * g["KW"] * g["F"])
    gt["HP"], gt["WP"] = _padded_size(gt)
    return gt, top, left


def _winograd_input_grad(g, input_shape, dtype):
    """Whether backward_input's forward conv (stride 1 only) runs by Winograd."""
    return ((g["SH"], g["SW"]) == (1, 1)
            and _use_winograd(_input_grad_geometry(g, input_shape)[0], dtype))


def _flipped(kernel):
    """The kernel of backward_input's forward conv: flipped in space, channel axes swapped."""
    return np.ascontiguousarray(kernel[::-1, ::-1].transpose(0, 1, 3, 2))


# Where conv2d_backward takes its one pass over dy (below) rather than the separate ops.
# The pass pays by writing dz into the padded buffer the direct input gradient reads and
# feeding the direct kernel gradient from it; where the kernel gradient runs by Winograd,
# or the input gradient is not a stride-1 conv, its copy of dz serves nothing and the
# separate ops (Winograd reading dy in place) ran faster. On the Intel kind the separate
# ops won everywhere measured (Xeon, 2 threads, batch 64, 3x3 'same' unless noted; ms per
# call, fused / separate, medians of 3 alternated rounds of 9): 32x32x32->32 linear no
# bias 6.5 / 5.5, relu + bias 7.3 / 7.0, relu no bias 6.7 / 6.8; 16x16x64->64 linear 5.1 /
# 4.6; 32x32x32->64 stride 2 8.5 / 7.8; 32x32x3->32 relu + bias 4.5 / 4.3; 16x16x32->64
# 3.5 / 3.1; 5x5 8x8x128->128 39.7 / 36.2, 16x16x64->128 56.8 / 54.4. "fused" and
# "composed" force either (tests, benchmarks; PYNN_CONV_BACKWARD).
_backward_mode = os.environ.get("PYNN_CONV_BACKWARD", "auto")


def _set_backward_mode(mode):
    """Test and benchmark hook: 'auto', 'fused' or 'composed'. Returns the previous mode."""
    global _backward_mode
    if mode not in ("auto", "fused", "composed"):
        raise ValueError(f"conv backward mode must be 'auto', 'fused' or 'composed', got "
                         f"{mode!r}")
    old, _backward_mode = _backward_mode, mode
    return old


def _fused_backward_pays(winograd_weight, direct_input, intel=None, weight_epilogue=False):
    """Whether conv2d_backward's one pass beats the separate ops (see _backward_mode).
    weight_epilogue: no input gradient, and an activation or a bias to differentiate (a
    first layer): there the pass wins on Intel too, reading dy once for dz, the bias
    gradient and dkernel (2 threads, batch 64, 3x3 'same' relu + bias, ms fused /
    separate: 32x32x3->32 2.68 / 2.85, 28x28x1->32 1.82 / 1.90, 32x32x3->64 5.06 / 5.52,
    5x5 32x32x3->32 3.28 / 3.93; batch 32 64x64x3->32 4.83 / 5.93), where a linear layer
    without bias loses (2.06 / 1.39: its separate path is dkernel alone)."""
    if _backward_mode != "auto":
        return _backward_mode == "fused"
    if _CPU_INTEL if intel is None else intel:
        return weight_epilogue and not winograd_weight
    return direct_input and not winograd_weight


def _fused_pass_route(g, x_shape, dtype, name, use_bias, need_input_grad):
    """conv2d_backward's road for a planned geometry: None where the separate ops run
    (api.conv2d_backward_composed), else (direct_input, gt, top, left, winograd_weight) of
    its one pass (gt, top, left: the input gradient's padded geometry, where direct)."""
    gt, top, left = None, 0, 0
    direct_input = need_input_grad and (_use_direct(g, "conv2d_backward_input")
                                        or _winograd_input_grad(g, x_shape, dtype))
    if direct_input:
        gt, top, left = _input_grad_geometry(g, x_shape)
        if not (top >= 0 and left >= 0 and top + g["HO"] <= gt["HP"]
                and left + g["WO"] <= gt["WP"]):
            return None
    winograd_weight = _use_winograd(g, dtype)
    if not ((winograd_weight or _use_direct(g, "conv2d_backward_weight"))
            and _fused_backward_pays(winograd_weight, direct_input or not need_input_grad,
                                     None, not need_input_grad
                                     and (use_bias or name != "linear"))):
        return None
    return direct_input, gt, top, left, winograd_weight


def conv2d_backward(dy, x, z, y, kernel, strides=(1, 1), padding="valid",
                    dilation_rate=(1, 1), activation="linear", alpha=0.0, use_bias=True,
                    need_input_grad=True):
    """A Conv2D layer's whole backward -> (dx or None, dkernel, dbias or None), from dy =
    dL/dy of y = activation(conv(x, kernel) + bias); z is the pre-activation (gelu only).

    Where the direct kernels run, one pass over dy makes dz (the activation's backward), the
    bias gradient (column sums in double, per slab, added in slab order) and dkernel, and
    writes dz straight into the zero-padded buffer that backward_input's forward conv
    reads: the standalone ops would write dz, read it back for dkernel and once more to pad
    it. Where the kernel gradient runs by Winograd, that pass makes dz and the bias gradient
    only and the Winograd kernel gradient reads dz back from the padded buffer (its tiles
    need dz's 2x2 blocks, not the direct path's packed rows). Otherwise, and where that pass
    does not pay (_fused_backward_pays), the ops run one after the other
    (api.conv2d_backward_composed)."""
    name, a, dy, x, z, y, kernel, g = operands.conv2d_backward(
        HOST, dy, x, z, y, kernel, strides, padding, dilation_rate, activation, alpha)
    g = _planned(g)
    if _strided_pointwise(g) and dy.size:
        dxs, dw, db = conv2d_backward(dy, _subsampled(x, g), z, y, kernel, (1, 1), "valid",
                                      (1, 1), name, a, use_bias, need_input_grad)
        return (None if dxs is None else _scattered(dxs, x.shape, g)), dw, db
    route = _fused_pass_route(g, x.shape, dy.dtype, name, use_bias, need_input_grad)
    if route is None or not (dy.size and kernel.size):
        return conv2d_backward_composed(_COMPOSED, dy, x, z, y, kernel, strides, padding,
                                        dilation_rate, name, a, use_bias, need_input_grad)
    # act_grad reads z only for gelu and y only for the others: the unused one may alias.
    z_flat = (z if z is not None else y).reshape(-1)
    y_flat = (y if y is not None else z).reshape(-1)
    act = ACTIVATIONS.index(name)

    def make_dz(xp, dzb, dw, part, panels, koff, row_x, row_dz, seg, slabs, chunk, dbpart,
                weight_grad, dz_transient):
        _run_backward_weight_direct(xp, dzb, dw, part, panels, g, koff, row_x, row_dz, seg,
                                    slabs, chunk, dy.reshape(-1), z_flat, y_flat, act, a,
                                    dbpart, weight_grad, dz_transient)

    return _one_pass_backward(make_dz, x, kernel, g, route, strides, padding, dilation_rate,
                              dy.dtype, use_bias, need_input_grad)


def _one_pass_backward(make_dz, x, kernel, g, route, strides, padding, dilation_rate, dtype,
                       use_bias, need_input_grad):
    """conv2d_backward's one pass (route: _fused_pass_route's) -> (dx or None, dw, db or
    None); make_dz(xp, dz, dw, part, panels, koff, row_x, row_dz, seg, slabs, chunk, dbpart,
    weight_grad, dz_transient) runs the pass that makes dz (and the kernel gradient where
    weight_grad) from the layer's dy, or from a max pool's arrays (conv2d_pool_backward)."""
    direct_input, gt, top, left, winograd_weight = route
    dz_shape = (g["N"], gt["HP"], gt["WP"], g["F"]) if direct_input else \
        (g["N"], g["HO"], g["WO"], g["F"])
    koff, row_x, slabs, chunk, seg = _weight_grad_tables(g)
    n, ho = np.divmod(np.arange(g["N"] * g["HO"], dtype=np.intp), g["HO"])
    row_dz = ((n * dz_shape[1] + top + ho) * dz_shape[2] + left) * g["F"]
    dw = np.empty(kernel.shape, dtype=dtype)
    dbpart = np.empty(slabs * g["F"], dtype=np.float64) if use_bias else None
    dx = None
    # No input gradient and no Winograd pass to read it back: dz is made a row at a time.
    dz_transient = not need_input_grad and not winograd_weight
    if dz_transient:
        dz_shape = (omp_get_max_threads(), 1, g["WO"], g["F"])
    with scratch(dtype, dz_shape,
                 *_weight_grad_scratch(x, g, slabs, chunk, not winograd_weight)) as (
            dzb, xp, part, panels):
        if direct_input:
            _run_zero_margins(dzb, g["HO"], g["WO"], top, left)
        if not winograd_weight:
            xp = _padded(x, xp, g["PT"], g["PL"])
        make_dz(xp.reshape(-1), dzb.reshape(-1), dw, part, panels, koff, row_x, row_dz, seg,
                slabs, chunk, dbpart, not winograd_weight, dz_transient)
        if winograd_weight:   # that pass made only dz and the bias gradient
            _backward_weight_winograd_into(x, dzb.reshape(-1), int(row_dz[0]),
                                           dz_shape[1] * dz_shape[2] * g["F"],
                                           dz_shape[2] * g["F"], dw, g, g["PT"], g["PL"])
        if direct_input:
            dx = np.empty(x.shape, dtype=dtype)
            _forward_padded(dzb, _flipped(kernel), None, dx, dx, gt,
                            ACTIVATIONS.index("linear"), 0.0)
        elif need_input_grad:
            dx = conv2d_backward_input(dzb, kernel, x.shape, strides, padding, dilation_rate)
    db = dbpart.reshape(slabs, g["F"]).sum(axis=0).astype(dtype) if use_bias else None
    return dx, dw, db


def conv2d_pool_backward(dpool, argmax, pooled, x, z, y, kernel, strides=(1, 1),
                         padding="valid", dilation_rate=(1, 1), activation="linear", alpha=0.0,
                         use_bias=True, need_input_grad=True, pool_size=(2, 2),
                         pool_strides=(2, 2), pool_padding="valid"):
    """conv2d_backward of a Conv2D whose output y only a max pool reads, from the pool's
    output gradient dpool, argmax and output pooled -> (dx or None, dkernel, dbias or None),
    equal to conv2d_backward(maxpool2d_backward(dpool, argmax, y.shape), ...).

    relu or linear under a pool whose windows do not overlap (strides >= pool_size) and lie
    inside the map (no padding): where conv2d_backward takes its one pass (and for a linear
    first layer without bias), the same pass with each dz row made from dpool, argmax
    and pooled (relu's mask: pooled > 0 is y > 0 at the argmax): the pool's dx (zeros but
    one pixel per window, the conv output's size) is never written and y never read; a
    first layer's dz is never written whole either. 32x32x3 -> 32 relu + 2x2 pool at batch
    64, ms after a cache-clearing pass, the two ops in turn / this (Xeon): two threads
    1.78 / 1.25, one 2.83 / 1.80. Where conv2d_backward would run its separate ops (relu),
    the first of them, activation_bias_backward, is pooled_activation_bias_backward (dz
    from the pool's arrays, the same bits). Elsewhere the two ops in turn
    (api.conv2d_pool_backward_composed)."""
    from pynn._native.pool import maxpool2d_backward

    op = "conv2d_pool_backward"
    name, a, dpool, argmax, pooled, x, z, y, kernel, g, pg = operands.conv2d_pool_backward(
        HOST, dpool, argmax, pooled, x, z, y, kernel, strides, padding, dilation_rate,
        activation, alpha, pool_size, pool_strides, pool_padding)
    g = _planned(g)
    tiles = (name in ("relu", "linear") and (pooled is not None or name == "linear")
             and windows_tile(pg) and not _strided_pointwise(g))
    sized = tiles and dpool.size and kernel.size
    route = _fused_pass_route(g, x.shape, x.dtype, name, use_bias, need_input_grad) \
        if sized else None
    if (route is None and sized and name == "linear" and not use_bias and not need_input_grad
            and not _use_winograd(g, x.dtype) and _use_direct(g, "conv2d_backward_weight")):
        # a first layer with nothing to differentiate in its epilogue, where from dy the
        # kernel gradient alone runs (the same slabs, so the same bits): the transient pass
        # pays here, reading no dy
        route = (False, None, 0, 0, False)
    if route is not None:   # conv2d_backward's one pass, dz made from the pool's arrays
        mask = pooled if name == "relu" else None
        geometry = ((pg["PH"], pg["PW"]), (pg["SH"], pg["SW"]))

        def make_dz(xp, dzb, dw, part, panels, koff, row_x, row_dz, seg, slabs, chunk,
                    dbpart, weight_grad, dz_transient):
            missed = _run_backward_weight_pooled(
                xp, dzb, dw, part, panels, g, koff, row_x, row_dz, seg, slabs, chunk, dpool,
                mask, argmax, *geometry, dbpart, weight_grad, dz_transient)
            if missed:
                raise ValueError(
                    f"{op}: {missed} argmax entries lie outside their pool window (argmax "
                    f"must come from maxpool2d_forward over y with pool_size {geometry[0]} "
                    f"and strides {geometry[1]})")

        return _one_pass_backward(make_dz, x, kernel, g, route, strides, padding,
                                  dilation_rate, x.dtype, use_bias, need_input_grad)
    if name == "relu" and pooled is not None and windows_tile(pg) and (
            tiles or y is None):
        # conv2d_backward would run the separate ops: their first from the pool's arrays
        # (and a strided 1x1 conv's, whose conv2d_backward subsamples: without y, this road)
        dz, db = _pooled_activation_bias(dpool, argmax, pooled, pg, name, a)
        dw = conv2d_backward_weight(x, dz, kernel.shape, strides, padding, dilation_rate)
        dx = (conv2d_backward_input(dz, kernel, x.shape, strides, padding, dilation_rate)
              if need_input_grad else None)
        return dx, dw, db if use_bias else None
    if y is None and name != "linear" and dpool.size:
        # (linear's backward reads neither y nor z; a zero dy makes relu's mask moot)
        raise ValueError(f"{op}: y (the conv's output) is needed for '{name}' under this pool "
                         f"(windows that overlap or pad, or no pooled output); got None")
    dy = maxpool2d_backward(dpool, argmax, (g["N"], g["HO"], g["WO"], g["F"]))
    return conv2d_backward(dy, x, z, dy if y is None else y, kernel, strides, padding,
                           dilation_rate, name, a, use_bias, need_input_grad)


# The ops conv2d_backward_composed runs in turn where the fused pass does not apply.
_COMPOSED = SimpleNamespace(
    activation_backward=activation_backward, activation_bias_backward=activation_bias_backward,
    bias_backward=bias_backward, conv2d_backward_input=conv2d_backward_input,
    conv2d_backward_weight=conv2d_backward_weight, conv2d_forward=conv2d_forward)


# -- conv2d_transpose (issue 12) -------------------------------------------------------------
# No GEMM loop of its own: the forward is conv2d_backward_input of a 'valid' conv whose input
# is the full transposed output (HF, WF), the backward conv2d_forward and
# conv2d_backward_weight of that conv (api.conv2d_transpose_backward_composed). Between them
# sits one copy of the window that Keras keeps (a crop, and zero rows where output_padding
# reaches past the full output).


def _window(a, top, left, rows, cols):
    """out[:, i, j] = a[:, i + top, j + left] where that lies in a, else 0 (a strided copy)."""
    n, h, w, c = a.shape
    if (top, left, rows, cols) == (0, 0, h, w):
        return a
    out = np.zeros((n, rows, cols, c), dtype=a.dtype)
    r0, r1 = max(0, -top), min(rows, h - top)
    c0, c1 = max(0, -left), min(cols, w - left)
    if r1 > r0 and c1 > c0:
        out[:, r0:r1, c0:c1] = a[:, r0 + top:r1 + top, c0 + left:c1 + left]
    return out


def _run_bias_activation(floating[:, ::1] z, floating[:, ::1] y, bias, int act,
                         double alpha):
    cdef const floating[::1] b
    cdef const floating* bp = NULL
    if bias is not None:
        b = bias
        bp = &b[0]
    if z.shape[0] == 0 or z.shape[1] == 0:
        return
    with nogil:
        bias_activation_rows(&z[0, 0], &y[0, 0], bp, z.shape[0], z.shape[1], act,
                             <floating>alpha)


def conv2d_transpose_forward(x, kernel, bias, strides=(1, 1), padding="valid",
                             output_padding=None, dilation_rate=(1, 1), activation="linear",
                             alpha=0.0):
    """Keras's Conv2DTranspose: y = act(conv_transpose(x, kernel) + bias) -> (y, z).

    x (N, H, W, C), kernel (KH, KW, F, C), bias (F,) or None; y (N, HO, WO, F) by Keras 3's
    output length. z is the pre-activation when the activation needs it (gelu), else None."""
    name, a, x, kernel, bias, g = operands.conv2d_transpose_forward(
        HOST, x, kernel, bias, strides, padding, output_padding, dilation_rate, activation,
        alpha)
    full = conv2d_backward_input(x, kernel, (g["N"], g["HF"], g["WF"], g["F"]), strides,
                                 "valid", dilation_rate)
    z = _window(full, g["CT"], g["CL"], g["HO"], g["WO"])
    keep_z = name in ACTIVATIONS_NEEDING_INPUT
    y = np.empty_like(z) if keep_z else z
    _run_bias_activation(z.reshape(-1, g["F"]), y.reshape(-1, g["F"]), bias,
                         ACTIVATIONS.index(name), a)
    return y, (z if keep_z else None)


def _placed(dz, g):
    """dz at its crop offset in a zeroed full output (N, HF, WF, F)."""
    return _window(dz, -g["CT"], -g["CL"], g["HF"], g["WF"])


def conv2d_transpose_backward(dy, x, z, y, kernel, strides=(1, 1), padding="valid",
                              output_padding=None, dilation_rate=(1, 1), activation="linear",
                              alpha=0.0, use_bias=True, need_input_grad=True):
    """A Conv2DTranspose layer's whole backward -> (dx or None, dkernel, dbias or None), from
    dy = dL/dy of conv2d_transpose_forward; z, y as in activation_backward."""
    name, a, dy, x, z, y, kernel, g = operands.conv2d_transpose_backward(
        HOST, dy, x, z, y, kernel, strides, padding, output_padding, dilation_rate,
        activation, alpha)
    return conv2d_transpose_backward_composed(
        _COMPOSED, _placed, dy, x, z, y, kernel, g, strides, dilation_rate, name, a,
        use_bias, need_input_grad)
