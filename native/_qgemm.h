/* Register-blocked int8 GEMM for native/quant.pyx (issue 18): uint8 activations x int8
 * weights -> exact int32, then a fused epilogue (zero-point correction, bias, requantization,
 * relu) writing uint8.
 *
 * Weights are packed once per call in the VNNI layout: blocks of 16 units, and inside a block
 * groups of 4 consecutive k, so one 64-byte row of the pack holds W[u0..u15][k..k+3]
 *     packed[(ub * K4 + g) * 64 + 4 * lane + i] = W[16 ub + lane][4 g + i]
 * (zeros past U and past K; K4 = ceil(K / 4)). Activations are read 4 bytes at a time from a
 * row padded with zeros to 4 * K4 bytes (the caller pads). Both SIMD paths read this one pack.
 *
 * Paths, chosen at RUN time (pynn_qgemm_isa(): __builtin_cpu_supports; each path compiled
 * with its own target attribute, so any build carries all of them):
 *   amx_int8:    TDPBUSD on AMX tiles (where the CPU has them and Linux grants them,
 *                _amx.h), 32 rows x 32 units per pass, the pack loaded as tiles in place;
 *   avx512_vnni: vpdpbusd, tile 8 rows x 32 units (16 zmm accumulators);
 *   avx2:        vpmovsxbw + vpmaddwd on the same pack, tile 2 rows x 16 units. vpmaddubsw
 *                is NOT used: it adds two u8*s8 products in saturating int16, and
 *                255*127 + 255*127 = 64770 > 32767, so it is not exact for uint8 inputs.
 *                After widening to int16, vpmaddwd adds two products of |.| <= 32640 into
 *                int32 exactly;
 *   scalar:      the reference loop (also what the tests compare the others with).
 * Lane sums are exact while K * 255 * 128 < 2^31 (K <= QGEMM_MAX_K, checked by the caller).
 * Every output is written by exactly one tile with the same integer sums, so results are
 * bit-identical across paths and thread counts. */
#ifndef PYNN_QGEMM_H
#define PYNN_QGEMM_H
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <math.h>
#include <immintrin.h>
#include "_amx.h"

#define QGEMM_MAX_K 65536
#define QGEMM_NB 16 /* units per packed block */

enum { QGEMM_SCALAR = 0, QGEMM_AVX2 = 1, QGEMM_AVX512_VNNI = 2, QGEMM_AMX = 3 };

/* -1: detect; a test hook (pynn_qgemm_force) may pin a path this CPU can run. */
static int pynn_qgemm_forced = -1;

/* The one place that asks the CPU (easy to switch to a shared native/_isa.h). */
static inline int pynn_qgemm_best_isa(void)
{
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    if (pynn_amx_available(PYNN_AMX_INT8))
        return QGEMM_AMX;
    if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512vl"))
        return QGEMM_AVX512_VNNI;
    if (__builtin_cpu_supports("avx2"))
        return QGEMM_AVX2;
#endif
    return QGEMM_SCALAR;
}

static inline int pynn_qgemm_isa(void)
{
    return pynn_qgemm_forced >= 0 ? pynn_qgemm_forced : pynn_qgemm_best_isa();
}

/* 0 on success, -1 when this CPU cannot run the path. */
static inline int pynn_qgemm_force(int isa)
{
    if (isa > pynn_qgemm_best_isa())
        return -1;
    pynn_qgemm_forced = isa;
    return 0;
}

static inline void pynn_qgemm_pack(const int8_t *w, ptrdiff_t units, ptrdiff_t k,
                                   int8_t *packed, ptrdiff_t ub)
{
    /* one 16-unit block (the caller parallelizes over blocks) */
    ptrdiff_t k4 = (k + 3) / 4;
    int8_t *dst = packed + ub * k4 * 64;
    memset(dst, 0, (size_t)k4 * 64);
    for (ptrdiff_t lane = 0; lane < QGEMM_NB; ++lane) {
        ptrdiff_t u = ub * QGEMM_NB + lane;
        if (u >= units)
            break;
        const int8_t *src = w + u * k;
        for (ptrdiff_t j = 0; j < k; ++j)
            dst[(j >> 2) * 64 + 4 * lane + (j & 3)] = src[j];
    }
}

/* sum_k W[u][k] of block ub's units, from the pack (the zero-point correction): the lanes
 * summed in int32 over k groups (exact: |sum| <= 128 * 4 * K4), folded by 4. */
static inline void pynn_qgemm_wsum_scalar(const int8_t *packed, ptrdiff_t k4, ptrdiff_t units,
                                          ptrdiff_t ub, int64_t *wsum)
{
    int32_t lanes[64] = {0};
    const int8_t *src = packed + ub * k4 * 64;
    for (ptrdiff_t g = 0; g < k4; ++g)
        for (int i = 0; i < 64; ++i)
            lanes[i] += src[g * 64 + i];
    for (int lane = 0; lane < QGEMM_NB && ub * QGEMM_NB + lane < units; ++lane)
        wsum[ub * QGEMM_NB + lane] = (int64_t)lanes[4 * lane] + lanes[4 * lane + 1]
                                     + lanes[4 * lane + 2] + lanes[4 * lane + 3];
}

/* The same sums as vpdpbusd of bytes 1 with the pack: each int32 lane adds its unit's 4
 * weights of a group, so the 16 lanes are the 16 units' sums, exact in int32 as above.
 * Four accumulators hide the instruction's latency: 5x faster than the widening loop
 * (784 x 512: 3 us against 16), which had cost more than a batch-1 layer's products. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
static void pynn_qgemm_wsum_vnni(const int8_t *packed, ptrdiff_t k4, ptrdiff_t units,
                                 ptrdiff_t ub, int64_t *wsum)
{
    const int8_t *src = packed + ub * k4 * 64;
    const __m512i ones = _mm512_set1_epi8(1);
    __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
    ptrdiff_t g = 0;
    for (; g + 4 <= k4; g += 4) {
        s0 = _mm512_dpbusd_epi32(s0, ones, _mm512_loadu_si512((const void *)(src + g * 64)));
        s1 = _mm512_dpbusd_epi32(s1, ones, _mm512_loadu_si512((const void *)(src + g * 64 + 64)));
        s2 = _mm512_dpbusd_epi32(s2, ones, _mm512_loadu_si512((const void *)(src + g * 64 + 128)));
        s3 = _mm512_dpbusd_epi32(s3, ones, _mm512_loadu_si512((const void *)(src + g * 64 + 192)));
    }
    for (; g < k4; ++g)
        s0 = _mm512_dpbusd_epi32(s0, ones, _mm512_loadu_si512((const void *)(src + g * 64)));
    int32_t sums[QGEMM_NB];
    _mm512_storeu_si512((void *)sums, _mm512_add_epi32(_mm512_add_epi32(s0, s1),
                                                       _mm512_add_epi32(s2, s3)));
    for (int lane = 0; lane < QGEMM_NB && ub * QGEMM_NB + lane < units; ++lane)
        wsum[ub * QGEMM_NB + lane] = sums[lane];
}

static inline void pynn_qgemm_wsum(const int8_t *packed, ptrdiff_t k4, ptrdiff_t units,
                                   ptrdiff_t ub, int64_t *wsum)
{
    if (pynn_qgemm_isa() >= QGEMM_AVX512_VNNI)
        pynn_qgemm_wsum_vnni(packed, k4, units, ub, wsum);
    else
        pynn_qgemm_wsum_scalar(packed, k4, units, ub, wsum);
}

/* The epilogue of one output: exact int64 correction + bias, int32 saturation, float32
 * requantization (rint half to even), clamp to [lo, 255]. rintf, not nearbyintf: the same
 * rounding, but glibc's nearbyintf saves and restores the FP environment on every call
 * (~40 ns), where rintf is one vroundss. */
static inline uint8_t pynn_qgemm_out(int32_t dot, int64_t correction, float multiplier,
                                     float zero_point, float lo)
{
    int64_t acc = (int64_t)dot + correction;
    if (acc < INT32_MIN)
        acc = INT32_MIN;
    if (acc > INT32_MAX)
        acc = INT32_MAX;
    /* compares, not fminf/fmaxf: without -ffinite-math-only GCC keeps those as libm calls
     * (their NaN rules), ~3 ns an output; the values are finite, so the result is the same */
    float r = rintf((float)(int32_t)acc * multiplier) + zero_point;
    r = r < lo ? lo : r;
    return (uint8_t)(r > 255.0f ? 255.0f : r);
}

typedef struct {
    const uint8_t *x;      /* (N, ldx) rows padded with zeros to ldx = 4 * K4 */
    ptrdiff_t ldx;
    const int8_t *packed;  /* ceil(U / 16) blocks of K4 * 64 bytes */
    ptrdiff_t k4, n, units;
    const int64_t *correction; /* (U,) bias - x_zero_point * sum_k w */
    const int32_t *correction32; /* the same in int32 when no sum can leave int32 (|dot| <=
                                    255 * 128 * 4 K4 plus |correction| < 2^31), else NULL */
    const float *multiplier;   /* (U,) */
    float y_zero_point, lo;
    uint8_t *y;            /* (N, U), or NULL: float output */
    float *yf;             /* (N, U) float32 sat_int32(acc) * multiplier (dynamic quantization),
                              max(., 0) when relu; used when y is NULL */
    int relu;
} pynn_qgemm_args;

static inline void pynn_qgemm_store(const pynn_qgemm_args *a, ptrdiff_t row, ptrdiff_t u0,
                                    const int32_t *dots, ptrdiff_t count)
{
    if (!a->y) {
        float *yr = a->yf + row * a->units;
        for (ptrdiff_t i = 0; i < count && u0 + i < a->units; ++i) {
            int64_t acc = (int64_t)dots[i] + a->correction[u0 + i];
            acc = acc < INT32_MIN ? INT32_MIN : (acc > INT32_MAX ? INT32_MAX : acc);
            float v = (float)(int32_t)acc * a->multiplier[u0 + i];
            yr[u0 + i] = a->relu && v < 0.0f ? 0.0f : v;
        }
        return;
    }
    uint8_t *yr = a->y + row * a->units;
    for (ptrdiff_t i = 0; i < count && u0 + i < a->units; ++i)
        yr[u0 + i] = pynn_qgemm_out(dots[i], a->correction[u0 + i], a->multiplier[u0 + i],
                                    a->y_zero_point, a->lo);
}

/* Rows [r0, r1) x one 16-unit block ub, any path's remainder and the scalar path. */
static inline void pynn_qgemm_tile_scalar(const pynn_qgemm_args *a, ptrdiff_t r0,
                                          ptrdiff_t r1, ptrdiff_t ub)
{
    const int8_t *wb = a->packed + ub * a->k4 * 64;
    for (ptrdiff_t r = r0; r < r1; ++r) {
        int32_t dots[QGEMM_NB] = {0};
        const uint8_t *xr = a->x + r * a->ldx;
        for (ptrdiff_t g = 0; g < a->k4; ++g)
            for (int lane = 0; lane < QGEMM_NB; ++lane)
                for (int i = 0; i < 4; ++i)
                    dots[lane] += (int32_t)xr[4 * g + i] * (int32_t)wb[g * 64 + 4 * lane + i];
        pynn_qgemm_store(a, r, ub * QGEMM_NB, dots, QGEMM_NB);
    }
}

static inline int32_t pynn_qgemm_load4(const uint8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* ---------------------------------------------------------------- AVX-512 VNNI */
#define QGEMM_VNNI_MR 8 /* the most rows of one register tile */

/* pynn_qgemm_store for 16 units [u0, u0 + 16) in vector registers: the same float32
 * operations in the same order (int64 add, int32 saturation by vpmovsqd, float32 product,
 * rint half to even by vrndscaleps, + zero point, clamp), so bit-identical to the scalar
 * epilogue; the scalar one cost ~3 ns an output, more than the products of a small conv. */
__attribute__((target("avx512f,avx512bw,avx512vl")))
static inline void pynn_qgemm_store16_avx512(const pynn_qgemm_args *a, ptrdiff_t row,
                                             ptrdiff_t u0, __m512i dots)
{
    ptrdiff_t count = a->units - u0;
    if (count <= 0)
        return;
    __mmask16 m = count >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << count) - 1u);
    __m512i acc;
    if (a->correction32) { /* no saturation possible: int32 sums are the int64 ones */
        acc = _mm512_add_epi32(dots, _mm512_maskz_loadu_epi32(m, a->correction32 + u0));
    } else {
        __mmask8 mlo = (__mmask8)(m & 0xFF), mhi = (__mmask8)(m >> 8);
        __m512i c0 = _mm512_maskz_loadu_epi64(mlo, a->correction + u0);
        __m512i c1 = _mm512_maskz_loadu_epi64(mhi, a->correction + u0 + 8);
        __m512i s0 = _mm512_add_epi64(_mm512_cvtepi32_epi64(_mm512_castsi512_si256(dots)), c0);
        __m512i s1 = _mm512_add_epi64(
            _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(dots, 1)), c1);
        acc = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtsepi64_epi32(s0)),
                                 _mm512_cvtsepi64_epi32(s1), 1);
    }
    __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(acc),
                             _mm512_maskz_loadu_ps(m, a->multiplier + u0));
    if (!a->y) {
        if (a->relu) /* v < 0 -> 0, as the scalar (keeps -0.0, which max_ps might not) */
            v = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ),
                                   _mm512_setzero_ps());
        _mm512_mask_storeu_ps(a->yf + row * a->units + u0, m, v);
        return;
    }
    __m512 r = _mm512_add_ps(_mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT |
                                                     _MM_FROUND_NO_EXC),
                             _mm512_set1_ps(a->y_zero_point));
    r = _mm512_max_ps(r, _mm512_set1_ps(a->lo));
    r = _mm512_min_ps(r, _mm512_set1_ps(255.0f));
    _mm_mask_storeu_epi8(a->y + row * a->units + u0, m,
                         _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(r)));
}
/* MR rows x the two 16-unit blocks at w0, w1 (w1 == w0 when only one exists): 2 MR zmm
 * accumulators. MR is a constant at each call, so the arrays live in registers. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"), always_inline))
static inline void pynn_qgemm_rows_vnni(const pynn_qgemm_args *a, ptrdiff_t r, ptrdiff_t ub,
                                        const int8_t *w0, const int8_t *w1, int two,
                                        const int mr)
{
    __m512i c[QGEMM_VNNI_MR][2];
#pragma GCC unroll 8
    for (int i = 0; i < mr; ++i)
        c[i][0] = c[i][1] = _mm512_setzero_si512();
    const uint8_t *x0 = a->x + r * a->ldx;
    const ptrdiff_t ld = a->ldx;
    for (ptrdiff_t g = 0; g < a->k4; ++g) {
        __m512i b0 = _mm512_loadu_si512((const void *)(w0 + g * 64));
        __m512i b1 = _mm512_loadu_si512((const void *)(w1 + g * 64));
#pragma GCC unroll 8
        for (int i = 0; i < mr; ++i) {
            __m512i v = _mm512_set1_epi32(pynn_qgemm_load4(x0 + i * ld + 4 * g));
            c[i][0] = _mm512_dpbusd_epi32(c[i][0], v, b0);
            c[i][1] = _mm512_dpbusd_epi32(c[i][1], v, b1);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < mr; ++i) {
        pynn_qgemm_store16_avx512(a, r + i, ub * QGEMM_NB, c[i][0]);
        if (two)
            pynn_qgemm_store16_avx512(a, r + i, (ub + 1) * QGEMM_NB, c[i][1]);
    }
}

/* One row: each block's sum split over four accumulators by k (g mod 4), added at the end
 * (integers: the same sums in any order). With one accumulator a block the row's
 * vpdpbusd chain waited on its 5-cycle latency each step; eight chains keep the unit busy
 * (a batch-1 784 -> 256 layer: ~3x fewer cycles in its products). */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"), always_inline))
static inline void pynn_qgemm_row1_vnni(const pynn_qgemm_args *a, ptrdiff_t r, ptrdiff_t ub,
                                        const int8_t *w0, const int8_t *w1, int two)
{
    __m512i c0[4], c1[4];
    for (int j = 0; j < 4; ++j)
        c0[j] = c1[j] = _mm512_setzero_si512();
    const uint8_t *x0 = a->x + r * a->ldx;
    ptrdiff_t g = 0;
    for (; g + 4 <= a->k4; g += 4) {
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
            __m512i v = _mm512_set1_epi32(pynn_qgemm_load4(x0 + 4 * (g + j)));
            c0[j] = _mm512_dpbusd_epi32(c0[j], v,
                                        _mm512_loadu_si512((const void *)(w0 + (g + j) * 64)));
            c1[j] = _mm512_dpbusd_epi32(c1[j], v,
                                        _mm512_loadu_si512((const void *)(w1 + (g + j) * 64)));
        }
    }
    for (; g < a->k4; ++g) {
        __m512i v = _mm512_set1_epi32(pynn_qgemm_load4(x0 + 4 * g));
        c0[0] = _mm512_dpbusd_epi32(c0[0], v, _mm512_loadu_si512((const void *)(w0 + g * 64)));
        c1[0] = _mm512_dpbusd_epi32(c1[0], v, _mm512_loadu_si512((const void *)(w1 + g * 64)));
    }
    __m512i s0 = _mm512_add_epi32(_mm512_add_epi32(c0[0], c0[1]),
                                  _mm512_add_epi32(c0[2], c0[3]));
    __m512i s1 = _mm512_add_epi32(_mm512_add_epi32(c1[0], c1[1]),
                                  _mm512_add_epi32(c1[2], c1[3]));
    pynn_qgemm_store16_avx512(a, r, ub * QGEMM_NB, s0);
    if (two)
        pynn_qgemm_store16_avx512(a, r, (ub + 1) * QGEMM_NB, s1);
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
static void pynn_qgemm_block_vnni(const pynn_qgemm_args *a, ptrdiff_t r0, ptrdiff_t r1,
                                  ptrdiff_t ub)
{
    /* two 16-unit blocks (ub, ub + 1) when both exist, else one. 8 rows x 32 units (16
     * accumulators: two weight loads and eight broadcasts feed 16 vpdpbusd) ran at 214
     * GMAC/s on one Zen 4 core against 165 for 4 x 32 (K = 576, U = 64); the rest of the
     * tile takes 4 rows, then 1. */
    const ptrdiff_t nblocks = (a->units + QGEMM_NB - 1) / QGEMM_NB;
    const int two = ub + 1 < nblocks;
    const int8_t *w0 = a->packed + ub * a->k4 * 64;
    const int8_t *w1 = two ? w0 + a->k4 * 64 : w0;
    ptrdiff_t r = r0;
    for (; r + 8 <= r1; r += 8)
        pynn_qgemm_rows_vnni(a, r, ub, w0, w1, two, 8);
    for (; r + 4 <= r1; r += 4)
        pynn_qgemm_rows_vnni(a, r, ub, w0, w1, two, 4);
    for (; r < r1; ++r)
        pynn_qgemm_row1_vnni(a, r, ub, w0, w1, two);
}

/* ---------------------------------------------------------------- AMX (TDPBUSD) */
/* The pack is already the B operand of a tile: 16 consecutive 64-byte rows of a block are
 * 16 groups of 4 k for its 16 units, one tile. A tile is 16 rows of x, 64 bytes (16 groups)
 * each, loaded in place. Rows x 32 units per pass: 2 x 2 int32 tiles, then the VNNI path's
 * vector epilogue row by row. A short last step of K, and rows past the tile's end, go
 * through zero-padded 1 KiB copies (nothing past K4 groups or past r1 is read). Integer
 * sums: the same bits as the other paths. */
#if PYNN_AMX
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
static void pynn_qgemm_block_amx(const pynn_qgemm_args *a, ptrdiff_t r0, ptrdiff_t r1,
                                 ptrdiff_t ub)
{
    const ptrdiff_t nblocks = (a->units + QGEMM_NB - 1) / QGEMM_NB;
    const int two = ub + 1 < nblocks;
    const int8_t *w0 = a->packed + ub * a->k4 * 64;
    const int8_t *w1 = two ? w0 + a->k4 * 64 : w0;
    const ptrdiff_t k4 = a->k4, ktail = k4 % 16, kfull = k4 - ktail, ld = a->ldx;
    int32_t c[32 * 32] __attribute__((aligned(64)));
    uint8_t at[2][1024] __attribute__((aligned(64)));
    int8_t bt[2][1024] __attribute__((aligned(64)));
    if (ktail) {
        memset(bt, 0, sizeof(bt));
        memcpy(bt[0], w0 + kfull * 64, (size_t)ktail * 64);
        memcpy(bt[1], w1 + kfull * 64, (size_t)ktail * 64);
    }
    pynn_amx_begin();
    for (ptrdiff_t r = r0; r < r1; r += 32) {
        const ptrdiff_t rows = r1 - r < 32 ? r1 - r : 32;
        PYNN_AMX_ZERO(0);
        PYNN_AMX_ZERO(1);
        PYNN_AMX_ZERO(2);
        PYNN_AMX_ZERO(3);
        for (ptrdiff_t g0 = 0; g0 < k4; g0 += 16) {
            const int tail = g0 == kfull;
            const ptrdiff_t bytes = tail ? 4 * ktail : 64;
            const int8_t *b0 = tail ? bt[0] : w0 + g0 * 64;
            const int8_t *b1 = tail ? bt[1] : w1 + g0 * 64;
            const uint8_t *a0 = a->x + r * ld + 4 * g0, *a1 = a0 + 16 * ld;
            ptrdiff_t s0 = ld, s1 = ld;
            if (tail || rows < 16) { /* rows [0, 16) through a zero-padded copy */
                memset(at[0], 0, 1024);
                for (ptrdiff_t i = 0; i < rows && i < 16; ++i)
                    memcpy(at[0] + 64 * i, a0 + i * ld, (size_t)bytes);
                a0 = at[0];
                s0 = 64;
            }
            if (tail || rows < 32) {
                memset(at[1], 0, 1024);
                for (ptrdiff_t i = 16; i < rows; ++i)
                    memcpy(at[1] + 64 * (i - 16), a->x + (r + i) * ld + 4 * g0, (size_t)bytes);
                a1 = at[1];
                s1 = 64;
            }
            PYNN_AMX_LOAD(4, a0, s0);
            PYNN_AMX_LOAD(6, b0, 64);
            PYNN_AMX_DPBUSD(0, 4, 6);
            PYNN_AMX_LOAD(7, b1, 64);
            PYNN_AMX_DPBUSD(1, 4, 7);
            PYNN_AMX_LOAD(5, a1, s1);
            PYNN_AMX_DPBUSD(2, 5, 6);
            PYNN_AMX_DPBUSD(3, 5, 7);
        }
        PYNN_AMX_STORE(0, c, 128);
        PYNN_AMX_STORE(1, c + 16, 128);
        PYNN_AMX_STORE(2, c + 16 * 32, 128);
        PYNN_AMX_STORE(3, c + 16 * 32 + 16, 128);
        for (ptrdiff_t i = 0; i < rows; ++i) {
            pynn_qgemm_store16_avx512(a, r + i, ub * QGEMM_NB,
                                      _mm512_load_si512((const void *)(c + 32 * i)));
            if (two)
                pynn_qgemm_store16_avx512(a, r + i, (ub + 1) * QGEMM_NB,
                                          _mm512_load_si512((const void *)(c + 32 * i + 16)));
        }
    }
    pynn_amx_end();
}
#else
static void pynn_qgemm_block_amx(const pynn_qgemm_args *a, ptrdiff_t r0, ptrdiff_t r1,
                                 ptrdiff_t ub)
{
    pynn_qgemm_block_vnni(a, r0, r1, ub);
}
#endif

/* ---------------------------------------------------------------- AVX2 */
#define QGEMM_AVX2_MR 2
/* 4 units x 4 k of the pack (16 bytes) -> 16 int16; times x's 4 values repeated -> vpmaddwd
 * gives int32 pairs [u0: k0k1, u0: k2k3, u1: ..., u3: k2k3]. hadd + permute fold pairs. */
__attribute__((target("avx2")))
static inline __m256i pynn_qgemm_fold_avx2(__m256i lo4, __m256i hi4)
{
    /* lo4: units 0..3 as pairs, hi4: units 4..7 -> units 0..7 in order */
    __m256i h = _mm256_hadd_epi32(lo4, hi4); /* [u0 u1 u4 u5 | u2 u3 u6 u7] */
    return _mm256_permute4x64_epi64(h, 0xD8);
}

__attribute__((target("avx2")))
static void pynn_qgemm_block_avx2(const pynn_qgemm_args *a, ptrdiff_t r0, ptrdiff_t r1,
                                  ptrdiff_t ub)
{
    const int8_t *wb = a->packed + ub * a->k4 * 64;
    int32_t dots[QGEMM_NB];
    ptrdiff_t r = r0;
    for (; r < r1; r += QGEMM_AVX2_MR) {
        const int rows = r + 1 < r1 ? 2 : 1;
        __m256i c0[4], c1[4];
        for (int q = 0; q < 4; ++q)
            c0[q] = c1[q] = _mm256_setzero_si256();
        const uint8_t *x0 = a->x + r * a->ldx;
        const uint8_t *x1 = rows == 2 ? x0 + a->ldx : x0;
        for (ptrdiff_t g = 0; g < a->k4; ++g) {
            /* x0..x3 widened to int16 and repeated over the 4 units of a chunk */
            __m256i v0 = _mm256_set1_epi64x((long long)_mm_cvtsi128_si64(_mm_cvtepu8_epi16(
                _mm_cvtsi32_si128(pynn_qgemm_load4(x0 + 4 * g)))));
            __m256i v1 = _mm256_set1_epi64x((long long)_mm_cvtsi128_si64(_mm_cvtepu8_epi16(
                _mm_cvtsi32_si128(pynn_qgemm_load4(x1 + 4 * g)))));
            const int8_t *wg = wb + g * 64;
            for (int q = 0; q < 4; ++q) {
                __m256i w = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(wg + 16 * q)));
                c0[q] = _mm256_add_epi32(c0[q], _mm256_madd_epi16(w, v0));
                c1[q] = _mm256_add_epi32(c1[q], _mm256_madd_epi16(w, v1));
            }
        }
        _mm256_storeu_si256((__m256i *)dots, pynn_qgemm_fold_avx2(c0[0], c0[1]));
        _mm256_storeu_si256((__m256i *)(dots + 8), pynn_qgemm_fold_avx2(c0[2], c0[3]));
        pynn_qgemm_store(a, r, ub * QGEMM_NB, dots, QGEMM_NB);
        if (rows == 2) {
            _mm256_storeu_si256((__m256i *)dots, pynn_qgemm_fold_avx2(c1[0], c1[1]));
            _mm256_storeu_si256((__m256i *)(dots + 8), pynn_qgemm_fold_avx2(c1[2], c1[3]));
            pynn_qgemm_store(a, r + 1, ub * QGEMM_NB, dots, QGEMM_NB);
        }
    }
}

/* Rows [r0, r1) times the unit blocks a tile owns: VNNI tiles are 2 blocks wide (ub even),
 * the others 1. */
static inline ptrdiff_t pynn_qgemm_blocks_per_tile(int isa)
{
    return isa >= QGEMM_AVX512_VNNI ? 2 : 1;
}

static inline void pynn_qgemm_tile(const pynn_qgemm_args *a, int isa, ptrdiff_t r0,
                                   ptrdiff_t r1, ptrdiff_t ub)
{
    /* under 16 rows a tile would multiply mostly zero rows (batch 1: 30 us against VNNI's
       23 for 784 -> 512); the same integer sums either way */
    if (isa == QGEMM_AMX && r1 - r0 >= 16)
        pynn_qgemm_block_amx(a, r0, r1, ub);
    else if (isa >= QGEMM_AVX512_VNNI)
        pynn_qgemm_block_vnni(a, r0, r1, ub);
    else if (isa == QGEMM_AVX2)
        pynn_qgemm_block_avx2(a, r0, r1, ub);
    else
        pynn_qgemm_tile_scalar(a, r0, r1, ub);
}

/* int8_im2col's patch rows of one (sample b, output row oy): row ox of `cols` (ldc bytes
 * apart) holds the KH x KW taps of C channels each, padding taps `pad`. In C with restrict
 * and fixed-size copies: Cython's loop (or a memcpy call) per tap cost 2.5-5 ns a tap, the
 * im2col then costing more than the GEMM in the digits CNN (C = 1 and 32). */
static inline void pynn_qim2col_copy(uint8_t *restrict dst, const uint8_t *restrict src,
                                     ptrdiff_t n)
{
    /* fixed-size moves, the last one overlapping the one before (same bytes) */
    if (n >= 16) {
        for (ptrdiff_t i = 0; i + 16 < n; i += 16)
            memcpy(dst + i, src + i, 16);
        memcpy(dst + n - 16, src + n - 16, 16);
    } else if (n >= 8) {
        memcpy(dst, src, 8);
        memcpy(dst + n - 8, src + n - 8, 8);
    } else if (n >= 4) {
        memcpy(dst, src, 4);
        memcpy(dst + n - 4, src + n - 4, 4);
    } else { /* spelled out: GCC's loop for a runtime n < 4 cost ~20 cycles */
        if (n > 0)
            dst[0] = src[0];
        if (n > 1)
            dst[1] = src[1];
        if (n > 2)
            dst[2] = src[2];
    }
}

static inline void pynn_qim2col_fill(uint8_t *dst, uint8_t pad, ptrdiff_t n)
{
    if (n > 8) {
        memset(dst, pad, (size_t)n);
        return;
    }
    for (ptrdiff_t i = 0; i < n; ++i)
        dst[i] = pad;
}

static inline void pynn_qim2col_row(const uint8_t *restrict x, uint8_t *restrict cols,
                                    ptrdiff_t ldc, ptrdiff_t b, ptrdiff_t oy, ptrdiff_t h,
                                    ptrdiff_t w, ptrdiff_t c, ptrdiff_t kh, ptrdiff_t kw,
                                    ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t dh, ptrdiff_t dw,
                                    ptrdiff_t pt, ptrdiff_t pl, ptrdiff_t wo, ptrdiff_t ox0,
                                    uint8_t pad, ptrdiff_t n, int spill)
{
    /* output pixels ox0 .. wo - 1 of the row (row ox at cols + ox * ldc). `spill`: the
     * caller lets each window row be written as one 16-byte move when it is at most 16
     * bytes, the surplus landing on bytes written next (the pixel's next window row, the
     * next pixel's row) or past K (whose weights are zero, so any byte there adds 0); the
     * move is taken only where 16 bytes of the input (n samples) can be read. For C = 1
     * and 3 the per-size copies cost most of a first layer's time. */
    const uint8_t *x_end = x + n * h * w * c;
    for (ptrdiff_t ox = ox0; ox < wo; ++ox) {
        uint8_t *restrict dst = cols + ox * ldc;
        for (ptrdiff_t i = 0; i < kh; ++i) {
            const ptrdiff_t iy = oy * sh - pt + i * dh;
            const int row_in = iy >= 0 && iy < h;
            const uint8_t *xrow = x + ((b * h + (row_in ? iy : 0)) * w) * c;
            const ptrdiff_t ix0 = ox * sw - pl;
            if (row_in && dw == 1 && ix0 >= 0 && ix0 + kw <= w) {
                /* the window's row inside the input: KW taps of C channels are contiguous */
                if (spill && kw * c <= 16 && xrow + ix0 * c + 16 <= x_end)
                    memcpy(dst, xrow + ix0 * c, 16);
                else
                    pynn_qim2col_copy(dst, xrow + ix0 * c, kw * c);
                dst += kw * c;
                continue;
            }
            for (ptrdiff_t j = 0; j < kw; ++j, dst += c) {
                const ptrdiff_t ix = ox * sw - pl + j * dw;
                if (row_in && ix >= 0 && ix < w) {
                    pynn_qim2col_copy(dst, xrow + ix * c, c);
                } else {
                    pynn_qim2col_fill(dst, pad, c);
                }
            }
        }
    }
}

/* The int8 Conv2D without the whole im2col matrix (MBs at batch 64: page faults and
 * memory traffic cost more than the products): output pixels [p0, p1) (at most one row
 * tile) gathered into `buf` (rows ldx = 4 * K4 bytes, zero past K, which im2col never
 * writes; the gather's 16-byte moves may leave bytes there, which meet zero weights), then
 * every column tile of the GEMM over them. `buf` holds 16 bytes past its last row. The same integer sums and epilogue
 * as int8_im2col + int8_dense_forward, so the same bits. */
typedef struct {
    const uint8_t *x; /* (N, H, W, C) */
    ptrdiff_t n, h, w, c, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo;
    uint8_t pad;
} pynn_qconv_geom;

static inline void pynn_qconv_tile(const pynn_qgemm_args *a, const pynn_qconv_geom *g,
                                   int isa, uint8_t *buf, ptrdiff_t p0, ptrdiff_t p1)
{
    ptrdiff_t p = p0;
    while (p < p1) { /* runs of pixels along one output row */
        const ptrdiff_t ox = p % g->wo, row = p / g->wo;
        ptrdiff_t count = g->wo - ox;
        if (count > p1 - p)
            count = p1 - p;
        pynn_qim2col_row(g->x, buf + (p - p0) * a->ldx - ox * a->ldx, a->ldx, row / g->ho,
                         row % g->ho, g->h, g->w, g->c, g->kh, g->kw, g->sh, g->sw, g->dh,
                         g->dw, g->pt, g->pl, ox + count, ox, g->pad, g->n, 1);
        p += count;
    }
    pynn_qgemm_args t = *a;
    t.x = buf;
    t.n = p1 - p0;
    if (t.y)
        t.y += p0 * a->units;
    else
        t.yf += p0 * a->units;
    const ptrdiff_t nblocks = (a->units + QGEMM_NB - 1) / QGEMM_NB;
    const ptrdiff_t bpt = pynn_qgemm_blocks_per_tile(isa);
    for (ptrdiff_t ub = 0; ub < nblocks; ub += bpt)
        pynn_qgemm_tile(&t, isa, 0, p1 - p0, ub);
}

#endif