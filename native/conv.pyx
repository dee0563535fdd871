"""Conv2D kernels: im2col + one BLAS GEMM per batch tile, or a microkernel for small K.

Legend: N batch, H/W input spatial, C input channels, KH/KW kernel spatial, F filters,
HO/WO output spatial, K = KH*KW*C (one im2col row), G = N*HO (output rows, the tiling unit),
M = G*WO (GEMM rows). Layout NHWC, kernel (KH, KW, C, F) = a row-major (K, F) matrix as is.

Design (chosen by measurement, see bench/bench_conv_kernels.py):
- A tile is a run of whole output rows (n, ho). Its im2col block (tile*WO, K) lives in a
  workspace bounded by ``_workspace_bytes`` (with the output rows) and is filled in parallel (prange over output
  rows; for dilation 1 each (wo, kh) is one memcpy of KW*C contiguous values). Then ONE
  gemm per tile runs outside any prange: BLAS threads itself, and nesting it would
  oversubscribe the cores.
- forward: y_tile = col @ kernel, then bias + activation fused in the pass right after the
  GEMM, while the tile is still in cache.
- backward_weight: dkernel += col^T @ dz_tile (beta = 1 after the first tile).
- backward_input: dcol = dz_tile @ kernel^T, then col2im as a gather: prange over input rows
  (n, hi); each thread adds only into its own dx row, in a fixed (kh, wo) order, so the
  result is bit-identical for any thread count. Tiles can split an image; the rows they
  share accumulate across tiles in tile order (fixed by shapes, not by threads).
- 1x1 stride-1 convs (no padding possible) skip im2col: x already is the (M, C) col matrix.
- Small K*F (27 x 32 for an RGB 3x3 layer; limit _DIRECT_MAX_KF): no BLAS. forward runs
  a register-blocked microkernel per output row in a prange (bias as its start value, the
  activation right after); backward_weight cuts the pixels into a fixed number of slabs, each
  with its own (K, F) partial, and adds the partials in slab order (deterministic, and both
  cores busy on a 27 x 32 result with a 65,536-long sum, which BLAS barely threads).
- The epilogue is this file's own: a branch-free relu vectorizes, act_value's branch on random
  signs did not (it cost more than the first layer's whole GEMM).
Outputs are fresh arrays; nothing accumulates into caller memory.
"""
import numpy as np

from libc.string cimport memcpy, memset
from cython.parallel cimport prange
from _blas cimport gemm_rowmajor, floating
from _activation cimport act_value, softmax_row, ACT_LINEAR, ACT_RELU, ACT_SOFTMAX
from _openmp cimport omp_get_thread_num, omp_get_max_threads

from pynn.backend._validate import (
    activation_name, as_float_array, check_shape, conv_geometry,
)
from pynn.backend.api import ACTIVATIONS, ACTIVATIONS_NEEDING_INPUT

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


# When the microkernel paths replace im2col + BLAS (bench/bench_conv_kernels.py, 2 threads,
# float32): forward while the kernel matrix (K, F) stays in L2 (it is streamed once per 8
# output pixels): 1.0-2x BLAS up to K*F = 1152*128, 0.6x at 2304*256. backward_weight has
# the same limit: 1.0-3x up to 1152*128 (K = 27: 2.5x), 0.6x at 2304*256. BLAS GEMMs with a
# K as short as 27 (an RGB 3x3 layer) are skinny and run far below peak. backward_input
# stays on BLAS: the same microkernel for dcol = dz @ kernel^T measured 0.3-1.0x.
_DIRECT_MAX_KF = 1 << 18
_direct_max_k = None      # test knob: None = the rules above, else K <= it for both ops
# backward_weight (direct): partial sums per slab of output rows (16, fewer when K*F is large
# so the partials stay under ~8 MiB in float32), and pixels per im2col block inside a slab
# (the block and its dz rows stay in L2 while the microkernel runs).
_SLABS = 16
_SLAB_ELEMENTS = 1 << 21
_SLAB_PIXELS = 256


def _set_direct_max_k(k=None):
    """Path knob for tests and benchmarks: K <= k takes the microkernel paths; None
    restores the default rules, 0 forces BLAS everywhere. Returns the old value."""
    global _direct_max_k
    old = _direct_max_k
    _direct_max_k = None if k is None else int(k)
    return old


cdef struct Geom:
    Py_ssize_t N, H, W, C, KH, KW, F, SH, SW, DH, DW, PT, PL, HO, WO, K


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


# -- register-blocked microkernel (small-K paths, no BLAS) ---------------------------------
# c[i, j] (i < MR, j < n) = start + sum over t < tn of a[i*sai + t*sat] * b[t*ldb + j]
# start: c itself (acc), else init[j] (a bias row), else 0. One routine serves both
# forward (rows = pixels, t = K: sai = K, sat = 1) and backward_weight (rows = K entries,
# t = pixels: sai = 1, sat = K). MR rows x 2 vectors of accumulators stay in registers
# (GCC vector extensions: 64-byte vectors are zmm with AVX-512, split in two with AVX2).
# Each output element is summed in plain t order, so results do not depend on threads.
cdef extern from *:
    """
    typedef float pynn_vf __attribute__((vector_size(64), aligned(4), may_alias));
    typedef double pynn_vd __attribute__((vector_size(64), aligned(8), may_alias));

    #define PYNN_MK_BLOCK(T, V, NV, MR)                                                    \\
        {                                                                                  \\
            V acc[MR][NV]; int i, v; Py_ssize_t t;                                         \\
            for (i = 0; i < MR; i++) for (v = 0; v < NV; v++) {                            \\
                if (accum) acc[i][v] = *(const V*)(c + i * ldc + j + v * VL);              \\
                else if (init) acc[i][v] = *(const V*)(init + j + v * VL);                 \\
                else acc[i][v] = (V){0};                                                   \\
            }                                                                              \\
            for (t = 0; t < tn; t++) {                                                     \\
                const T* bt = b + t * ldb + j;                                             \\
                V bv[NV];                                                                  \\
                for (v = 0; v < NV; v++) bv[v] = *(const V*)(bt + v * VL);                 \\
                for (i = 0; i < MR; i++) {                                                 \\
                    T av = a[i * sai + t * sat];                                           \\
                    for (v = 0; v < NV; v++) acc[i][v] += av * bv[v];                      \\
                }                                                                          \\
            }                                                                              \\
            for (i = 0; i < MR; i++) for (v = 0; v < NV; v++)                              \\
                *(V*)(c + i * ldc + j + v * VL) = acc[i][v];                               \\
        }

    #define PYNN_MK(NAME, T, V, MR)                                                        \\
    static inline void NAME(Py_ssize_t n, Py_ssize_t tn, const T* a, Py_ssize_t sai,      \\
                            Py_ssize_t sat, const T* b, Py_ssize_t ldb, T* c,             \\
                            Py_ssize_t ldc, const T* init, int accum) {                   \\
        enum { VL = 64 / sizeof(T) };                                                      \\
        Py_ssize_t j = 0, t; int i;                                                        \\
        for (; j + 2 * VL <= n; j += 2 * VL) PYNN_MK_BLOCK(T, V, 2, MR)                    \\
        for (; j + VL <= n; j += VL) PYNN_MK_BLOCK(T, V, 1, MR)                            \\
        for (; j < n; j++) for (i = 0; i < MR; i++) {                                      \\
            T s = accum ? c[i * ldc + j] : (init ? init[j] : (T)0);                        \\
            for (t = 0; t < tn; t++) s += a[i * sai + t * sat] * b[t * ldb + j];           \\
            c[i * ldc + j] = s;                                                            \\
        }                                                                                  \\
    }

    PYNN_MK(pynn_mk8_f, float, pynn_vf, 8)
    PYNN_MK(pynn_mk6_f, float, pynn_vf, 6)
    PYNN_MK(pynn_mk4_f, float, pynn_vf, 4)
    PYNN_MK(pynn_mk2_f, float, pynn_vf, 2)
    PYNN_MK(pynn_mk1_f, float, pynn_vf, 1)
    PYNN_MK(pynn_mk8_d, double, pynn_vd, 8)
    PYNN_MK(pynn_mk6_d, double, pynn_vd, 6)
    PYNN_MK(pynn_mk4_d, double, pynn_vd, 4)
    PYNN_MK(pynn_mk2_d, double, pynn_vd, 2)
    PYNN_MK(pynn_mk1_d, double, pynn_vd, 1)
    """
    void pynn_mk8_f(Py_ssize_t n, Py_ssize_t tn, const float* a, Py_ssize_t sai,
                    Py_ssize_t sat, const float* b, Py_ssize_t ldb, float* c, Py_ssize_t ldc,
                    const float* init, int accum) noexcept nogil
    void pynn_mk6_f(Py_ssize_t n, Py_ssize_t tn, const float* a, Py_ssize_t sai,
                    Py_ssize_t sat, const float* b, Py_ssize_t ldb, float* c, Py_ssize_t ldc,
                    const float* init, int accum) noexcept nogil
    void pynn_mk4_f(Py_ssize_t n, Py_ssize_t tn, const float* a, Py_ssize_t sai,
                    Py_ssize_t sat, const float* b, Py_ssize_t ldb, float* c, Py_ssize_t ldc,
                    const float* init, int accum) noexcept nogil
    void pynn_mk2_f(Py_ssize_t n, Py_ssize_t tn, const float* a, Py_ssize_t sai,
                    Py_ssize_t sat, const float* b, Py_ssize_t ldb, float* c, Py_ssize_t ldc,
                    const float* init, int accum) noexcept nogil
    void pynn_mk1_f(Py_ssize_t n, Py_ssize_t tn, const float* a, Py_ssize_t sai,
                    Py_ssize_t sat, const float* b, Py_ssize_t ldb, float* c, Py_ssize_t ldc,
                    const float* init, int accum) noexcept nogil
    void pynn_mk8_d(Py_ssize_t n, Py_ssize_t tn, const double* a, Py_ssize_t sai,
                    Py_ssize_t sat, const double* b, Py_ssize_t ldb, double* c,
                    Py_ssize_t ldc, const double* init, int accum) noexcept nogil
    void pynn_mk6_d(Py_ssize_t n, Py_ssize_t tn, const double* a, Py_ssize_t sai,
                    Py_ssize_t sat, const double* b, Py_ssize_t ldb, double* c,
                    Py_ssize_t ldc, const double* init, int accum) noexcept nogil
    void pynn_mk4_d(Py_ssize_t n, Py_ssize_t tn, const double* a, Py_ssize_t sai,
                    Py_ssize_t sat, const double* b, Py_ssize_t ldb, double* c,
                    Py_ssize_t ldc, const double* init, int accum) noexcept nogil
    void pynn_mk2_d(Py_ssize_t n, Py_ssize_t tn, const double* a, Py_ssize_t sai,
                    Py_ssize_t sat, const double* b, Py_ssize_t ldb, double* c,
                    Py_ssize_t ldc, const double* init, int accum) noexcept nogil
    void pynn_mk1_d(Py_ssize_t n, Py_ssize_t tn, const double* a, Py_ssize_t sai,
                    Py_ssize_t sat, const double* b, Py_ssize_t ldb, double* c,
                    Py_ssize_t ldc, const double* init, int accum) noexcept nogil


cdef void _small_gemm(Py_ssize_t m, Py_ssize_t n, Py_ssize_t tn, const floating* a,
                      Py_ssize_t sai, Py_ssize_t sat, const floating* b, Py_ssize_t ldb,
                      floating* c, Py_ssize_t ldc, const floating* init,
                      int accum) noexcept nogil:
    """All m rows of the microkernel product, in blocks of 8 (16 accumulators: 1.2-1.8x
    the 6-row block on AVX-512), then 6, 4, 2, 1 rows."""
    cdef Py_ssize_t i = 0
    while i < m:
        if floating is float:
            if m - i >= 8:
                pynn_mk8_f(n, tn, a + i * sai, sai, sat, b, ldb, c + i * ldc, ldc, init, accum)
                i += 8
            elif m - i >= 6:
                pynn_mk6_f(n, tn, a + i * sai, sai, sat, b, ldb, c + i * ldc, ldc, init, accum)
                i += 6
            elif m - i >= 4:
                pynn_mk4_f(n, tn, a + i * sai, sai, sat, b, ldb, c + i * ldc, ldc, init, accum)
                i += 4
            elif m - i >= 2:
                pynn_mk2_f(n, tn, a + i * sai, sai, sat, b, ldb, c + i * ldc, ldc, init, accum)
                i += 2
            else:
                pynn_mk1_f(n, tn, a + i * sai, sai, sat, b, ldb, c + i * ldc, ldc, init, accum)
                i += 1
        else:
            if m - i >= 8:
                pynn_mk8_d(n, tn, a + i * sai, sai, sat, b, ldb, c + i * ldc, ldc, init, accum)
                i += 8
            elif m - i >= 6:
                pynn_mk6_d(n, tn, a + i * sai, sai, sat, b, ldb, c + i * ldc, ldc, init, accum)
                i += 6
            elif m - i >= 4:
                pynn_mk4_d(n, tn, a + i * sai, sai, sat, b, ldb, c + i * ldc, ldc, init, accum)
                i += 4
            elif m - i >= 2:
                pynn_mk2_d(n, tn, a + i * sai, sai, sat, b, ldb, c + i * ldc, ldc, init, accum)
                i += 2
            else:
                pynn_mk1_d(n, tn, a + i * sai, sai, sat, b, ldb, c + i * ldc, ldc, init, accum)
                i += 1


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


cdef void _im2col(const floating* x, floating* col, const Geom* g, Py_ssize_t r0,
                  Py_ssize_t r1) noexcept nogil:
    cdef Py_ssize_t r
    cdef Py_ssize_t row_len = g.WO * g.K
    for r in prange(r0, r1, schedule="static"):
        _im2col_row(x, col + (r - r0) * row_len, g, r)


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


cdef void _col2im(const floating* dcol, floating* dx, const Geom* g, Py_ssize_t r0,
                  Py_ssize_t r1) noexcept nogil:
    cdef Py_ssize_t t
    # Input rows of every image the tile touches; rows it does not reach add nothing.
    cdef Py_ssize_t t0 = (r0 // g.HO) * g.H
    cdef Py_ssize_t t1 = ((r1 - 1) // g.HO + 1) * g.H
    for t in prange(t0, t1, schedule="static"):
        _col2im_row(dcol, dx, g, t // g.H, t % g.H, r0, r1)


# -- small-K paths: microkernel instead of BLAS ---------------------------------------------

cdef inline void _relu_row(const floating* z, floating* y, Py_ssize_t cols) noexcept nogil:
    # Branch-free select, so GCC vectorizes it; act_value's branch on random signs
    # mispredicts half the time (relu through act_value cost more than the conv GEMM of
    # the first CNN layer). NaN passes through, as in act_value.
    cdef Py_ssize_t j
    cdef floating v
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
        else:
            for j in range(cols):
                yr[j] = act_value(zr[j], act, alpha)


cdef void _epilogue(floating* z, floating* y, const floating* bias, Py_ssize_t rows,
                    Py_ssize_t cols, int act, floating alpha) noexcept nogil:
    """The BLAS path's bias + activation pass over one tile, in blocks of 64 rows."""
    cdef Py_ssize_t blk, nblk = (rows + 63) // 64
    for blk in prange(nblk, schedule="static"):
        _epilogue_rows(z + blk * 64 * cols, y + blk * 64 * cols, bias,
                       _imin(64, rows - blk * 64), cols, act, alpha)


cdef inline void _forward_direct_row(const floating* x, const floating* w,
                                     const floating* bias, floating* z, floating* y,
                                     floating* buf, const Geom* g, Py_ssize_t r, int act,
                                     floating alpha) noexcept nogil:
    cdef const floating* a
    cdef Py_ssize_t off = r * g.WO * g.F
    if _is_pointwise(g):
        a = x + r * g.WO * g.K
    else:
        _im2col_row(x, buf, g, r)
        a = buf
    _small_gemm(g.WO, g.F, g.K, a, g.K, 1, w, g.F, z + off, g.F, bias, 0)
    _epilogue_rows(z + off, y + off, <const floating*>NULL, g.WO, g.F, act, alpha)


cdef void _forward_direct(const floating* x, const floating* w, const floating* bias,
                          floating* z, floating* y, floating* col, const Geom* g, int act,
                          floating alpha) noexcept nogil:
    """One output row (n, ho) per iteration: its im2col rows go to the thread's own slice
    of col, the microkernel writes z with the bias as start value, and the activation runs
    while the row is in L1. No BLAS call: with K this small its GEMMs are skinny and slow."""
    cdef Py_ssize_t r, G = g.N * g.HO
    for r in prange(G, schedule="static"):
        _forward_direct_row(x, w, bias, z, y, col + omp_get_thread_num() * g.WO * g.K, g,
                            r, act, alpha)


cdef inline void _backward_weight_slab(const floating* x, const floating* dz, floating* part,
                                       floating* buf, const Geom* g, Py_ssize_t r0,
                                       Py_ssize_t r1, Py_ssize_t sub) noexcept nogil:
    """part (K, F) = col^T @ dz over output rows [r0, r1), sub rows at a time."""
    cdef Py_ssize_t r = r0, re, rr, rows
    cdef const floating* a
    cdef int accum = 0
    if r0 >= r1:
        memset(part, 0, g.K * g.F * sizeof(floating))
        return
    while r < r1:
        re = _imin(r + sub, r1)
        rows = (re - r) * g.WO
        if _is_pointwise(g):
            a = x + r * g.WO * g.K
        else:
            for rr in range(r, re):
                _im2col_row(x, buf + (rr - r) * g.WO * g.K, g, rr)
            a = buf
        _small_gemm(g.K, g.F, rows, a, 1, g.K, dz + r * g.WO * g.F, g.F, part, g.F,
                    <const floating*>NULL, accum)
        accum = 1
        r = re


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


cdef void _backward_weight_direct(const floating* x, const floating* dz, floating* dw,
                                  floating* col, floating* part, const Geom* g, Py_ssize_t S,
                                  Py_ssize_t sub) noexcept nogil:
    """The long pixel dimension is cut into S slabs fixed by the shape (not by the thread
    count); each slab sums into its own (K, F) partial, then the partials are added in slab
    order. Same bits for any number of threads, and both cores busy even when K*F is tiny."""
    cdef Py_ssize_t s, k, G = g.N * g.HO
    for s in prange(S, schedule="static"):
        _backward_weight_slab(x, dz, part + s * g.K * g.F, col + s * sub * g.WO * g.K, g,
                              s * G // S, (s + 1) * G // S, sub)
    for k in prange(g.K, schedule="static"):
        _sum_slabs_row(part, dw, k, S, g.K * g.F, g.F)


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

def _run_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w, bias,
                 floating[:, :, :, ::1] z, floating[:, :, :, ::1] y, floating[::1] col,
                 Geom g, Py_ssize_t tile, int act, double alpha, bint direct):
    cdef const floating[::1] b
    cdef const floating* bptr = NULL
    if bias is not None:
        b = bias
        bptr = &b[0] if b.shape[0] > 0 else NULL
    with nogil:
        if direct:
            _forward_direct(&x[0, 0, 0, 0], &w[0, 0, 0, 0], bptr, &z[0, 0, 0, 0],
                            &y[0, 0, 0, 0], &col[0], &g, act, <floating>alpha)
        else:
            _forward(&x[0, 0, 0, 0], &w[0, 0, 0, 0], bptr, &z[0, 0, 0, 0], &y[0, 0, 0, 0],
                     &col[0], &g, tile, act, <floating>alpha)


def _run_backward_weight(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] dz,
                         floating[:, :, :, ::1] dw, floating[::1] col, Geom g,
                         Py_ssize_t tile):
    with nogil:
        _backward_weight(&x[0, 0, 0, 0], &dz[0, 0, 0, 0], &dw[0, 0, 0, 0], &col[0], &g, tile)


def _run_backward_weight_direct(const floating[:, :, :, ::1] x,
                                const floating[:, :, :, ::1] dz, floating[:, :, :, ::1] dw,
                                floating[::1] col, floating[::1] part, Geom g, Py_ssize_t S,
                                Py_ssize_t sub):
    with nogil:
        _backward_weight_direct(&x[0, 0, 0, 0], &dz[0, 0, 0, 0], &dw[0, 0, 0, 0], &col[0],
                                &part[0], &g, S, sub)


def _run_backward_input(const floating[:, :, :, ::1] dz, const floating[:, :, :, ::1] w,
                        floating[:, :, :, ::1] dx, floating[::1] col, Geom g,
                        Py_ssize_t tile):
    with nogil:
        _backward_input(&dz[0, 0, 0, 0], &w[0, 0, 0, 0], &dx[0, 0, 0, 0], &col[0], &g, tile)


# -- validation and planning (Python level) ------------------------------------------------

def _geometry(op, input_shape, kernel_shape, strides, padding, dilation_rate):
    g = conv_geometry(op, input_shape, kernel_shape, strides, padding, dilation_rate)
    g["K"] = g["KH"] * g["KW"] * g["C"]
    return g


def _shape4(op, name, shape):
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise ValueError(f"{op}: '{name}' must be a tuple of 4 ints, got {shape!r}")
    if len(dims) != 4 or min(dims) < 0:
        raise ValueError(f"{op}: '{name}' must be 4 non-negative ints, got {shape!r}")
    return dims


def _pointwise(g):
    return g["KH"] == 1 and g["KW"] == 1 and g["SH"] == 1 and g["SW"] == 1


def _use_direct(g, op):
    if _direct_max_k is not None:
        return g["K"] <= _direct_max_k
    return g["K"] * g["F"] <= _DIRECT_MAX_KF


def _plan(g, dtype):
    """Output rows per tile and the workspace for them (None when no im2col is needed)."""
    # A tile's working set: its im2col rows plus the GEMM output rows they produce.
    row_bytes = max(g["WO"] * (g["K"] + g["F"]) * np.dtype(dtype).itemsize, 1)
    tile = max(_workspace_bytes // row_bytes, 1)
    tile = min(tile, max(g["N"] * g["HO"], 1))
    col = np.empty(1 if _pointwise(g) else tile * g["WO"] * g["K"], dtype=dtype)
    return tile, col


def conv2d_forward(x, kernel, bias, strides=(1, 1), padding="valid", dilation_rate=(1, 1),
                   activation="linear", alpha=0.0):
    """y = act(conv(x, kernel) + bias) -> (y, z).

    x (N, H, W, C), kernel (KH, KW, C, F), bias (F,) or None; y (N, HO, WO, F). z is the
    pre-activation when the activation needs it for backward (gelu), else None.
    """
    op = "conv2d_forward"
    act_name = activation_name(op, activation)
    x = as_float_array(op, "x", x, ndim=4)
    kernel = as_float_array(op, "kernel", kernel, ndim=4, dtype=x.dtype)
    g = _geometry(op, x.shape, kernel.shape, strides, padding, dilation_rate)
    if bias is not None:
        bias = as_float_array(op, "bias", bias, ndim=1, dtype=x.dtype)
        check_shape(op, "bias", bias, (g["F"],))
    keep_z = act_name in ACTIVATIONS_NEEDING_INPUT
    z = np.empty((g["N"], g["HO"], g["WO"], g["F"]), dtype=x.dtype)
    y = np.empty_like(z) if keep_z else z
    if z.size:
        act = ACTIVATIONS.index(act_name)
        if _use_direct(g, op):
            # One im2col row block (WO, K) per thread.
            col = np.empty(1 if _pointwise(g) else
                           max(omp_get_max_threads(), 1) * g["WO"] * g["K"], dtype=x.dtype)
            _run_forward(x, kernel, bias, z, y, col, g, 0, act, float(alpha), True)
        else:
            tile, col = _plan(g, x.dtype)
            _run_forward(x, kernel, bias, z, y, col, g, tile, act, float(alpha), False)
    return y, (z if keep_z else None)


def conv2d_backward_input(dz, kernel, input_shape, strides=(1, 1), padding="valid",
                          dilation_rate=(1, 1)):
    """dx (N, H, W, C) = gradient of the conv w.r.t. its input, from dz (N, HO, WO, F)."""
    op = "conv2d_backward_input"
    dz = as_float_array(op, "dz", dz, ndim=4)
    kernel = as_float_array(op, "kernel", kernel, ndim=4, dtype=dz.dtype)
    input_shape = _shape4(op, "input_shape", input_shape)
    g = _geometry(op, input_shape, kernel.shape, strides, padding, dilation_rate)
    check_shape(op, "dz", dz, (g["N"], g["HO"], g["WO"], g["F"]))
    dx = np.zeros(input_shape, dtype=dz.dtype)
    if dz.size and dx.size:
        tile, col = _plan(g, dz.dtype)
        _run_backward_input(dz, kernel, dx, col, g, tile)
    return dx


def conv2d_backward_weight(x, dz, kernel_shape, strides=(1, 1), padding="valid",
                           dilation_rate=(1, 1)):
    """dkernel (KH, KW, C, F) = gradient of the conv w.r.t. its kernel."""
    op = "conv2d_backward_weight"
    x = as_float_array(op, "x", x, ndim=4)
    dz = as_float_array(op, "dz", dz, ndim=4, dtype=x.dtype)
    kernel_shape = _shape4(op, "kernel_shape", kernel_shape)
    g = _geometry(op, x.shape, kernel_shape, strides, padding, dilation_rate)
    check_shape(op, "dz", dz, (g["N"], g["HO"], g["WO"], g["F"]))
    dw = np.zeros(kernel_shape, dtype=x.dtype)
    if dz.size and dw.size:
        if _use_direct(g, op):
            rows = g["N"] * g["HO"]
            slabs = min(rows, _SLABS, max(_SLAB_ELEMENTS // max(g["K"] * g["F"], 1), 4))
            sub = min(max(_SLAB_PIXELS // max(g["WO"], 1), 1), -(-rows // slabs))
            col = np.empty(1 if _pointwise(g) else slabs * sub * g["WO"] * g["K"],
                           dtype=x.dtype)
            part = np.empty(slabs * g["K"] * g["F"], dtype=x.dtype)
            _run_backward_weight_direct(x, dz, dw, col, part, g, slabs, sub)
        else:
            tile, col = _plan(g, x.dtype)
            _run_backward_weight(x, dz, dw, col, g, tile)
    return dw
