/* bfloat16 GEMM for mixed precision (issue 17): C (m, n) = A (m, k) @ B (k, n) with A and B
 * rounded to bfloat16 (round to nearest, ties to even) and every sum accumulated in float32.
 *
 * Operands are bf16 pairs along the reduction axis (the "rows" and "pairs" formats below,
 * built by the conversions that round), kp = ceil(k / 2) pairs; an odd k is padded with a zero
 * element so the microkernel never branches on k. A is read by broadcasts from its own
 * layout (no panel copy), B 32 columns at a time.
 *
 * Two microkernels share the layout: vdpbf16ps (AVX512_BF16, compiled through target
 * attributes so any build has it, chosen at run time by __builtin_cpu_supports) and a portable
 * C one that widens each bf16 to float32 and performs the same two additions in the same order
 * as the instruction (odd element first, see the SDM's VDPBF16PS pseudocode). Products of two
 * bf16 values are exact in float32, so both give the same bits for normal numbers; the
 * instruction flushes subnormal inputs and outputs to zero, the portable kernel does not.
 * AMX tiles run the same products in other formats: _bf16amx.h.
 */
#ifndef PYNN_BF16GEMM_H
#define PYNN_BF16GEMM_H

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PYNN_BF16_X86 1
#else
#define PYNN_BF16_X86 0
#endif

/* Rows of A per microkernel call: 8 rows x 2 zmm of columns = 16 accumulators of 32. */
#define PYNN_BF16_MR 8
/* Columns of B per microkernel call: two 16-float vectors. */
#define PYNN_BF16_NR 32

static inline uint16_t pynn_bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it a NaN (quiet), whatever its payload */
        return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u); /* ties to even; overflow carries into Inf as it should */
    return (uint16_t)(u >> 16);
}

static inline float pynn_bf16_widen(uint32_t half) {
    uint32_t u = half << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* x rounded to bf16 and widened back: the value the GEMMs multiply. */
static inline float pynn_bf16_round_f32(float f) {
    return pynn_bf16_widen(pynn_bf16_round(f));
}

static inline uint32_t pynn_bf16_pair(float lo, float hi) {
    return (uint32_t)pynn_bf16_round(lo) | ((uint32_t)pynn_bf16_round(hi) << 16);
}

/* -- the two operand formats (uint32 words, each a bf16 pair, low half the even element) --
 * rows:  R (m, kp), word (r, q) = (A[r, 2q], A[r, 2q + 1]): a row-major float matrix rounded
 *        in place order (its k padded to even with a zero); the A operand, read by
 *        broadcasts.
 * pairs: P (kp, ld), word (q, j) = (B[2q, j], B[2q + 1, j]): two consecutive rows
 *        interleaved; the B operand (ld a multiple of NR, columns past n zero), read 32
 *        columns at a time. A pairs matrix also serves as a transposed A operand (row j,
 *        pair q at j + q * ld): the kernel gradients' x.T and im2col.T. */

/* n floats -> n bf16 values; and two rows of n floats -> n interleaved pairs. The AVX512_BF16
 * versions (vcvtne2ps2bf16) round the same way but read subnormal inputs as zeros. */
typedef void (*pynn_bf16_convert_fn)(const float* src, uint16_t* dst, int n);
typedef void (*pynn_bf16_interleave_fn)(const float* r0, const float* r1, uint32_t* dst, int n);

static void pynn_bf16_convert_portable(const float* src, uint16_t* dst, int n) {
    int j;
    for (j = 0; j < n; j++)
        dst[j] = pynn_bf16_round(src[j]);
}

static void pynn_bf16_interleave_portable(const float* r0, const float* r1, uint32_t* dst,
                                          int n) {
    int j;
    for (j = 0; j < n; j++)
        dst[j] = pynn_bf16_pair(r0[j], r1[j]);
}

#if PYNN_BF16_X86
__attribute__((target("avx512bf16,avx512f,avx512vl,avx512bw"))) static void
pynn_bf16_convert_avx512(const float* src, uint16_t* dst, int n) {
    int j = 0;
    for (; j + 32 <= n; j += 32) {
        __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + j + 16), _mm512_loadu_ps(src + j));
        _mm512_storeu_si512(dst + j, (__m512i)v);
    }
    for (; j < n; j += 16) {
        int left = n - j < 16 ? n - j : 16;
        __mmask16 m = (__mmask16)((1u << left) - 1);
        __m256bh v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + j));
        _mm256_mask_storeu_epi16(dst + j, m, (__m256i)v);
    }
}

__attribute__((target("avx512bf16,avx512f,avx512vl,avx512bw"))) static void
pynn_bf16_interleave_avx512(const float* r0, const float* r1, uint32_t* dst, int n) {
    /* word j = (r0[j], r1[j]): lanes j and 16 + j of the packed conversion */
    const __m512i order = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25,
                                           9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2,
                                           17, 1, 16, 0);
    int j;
    for (j = 0; j < n; j += 16) {
        int left = n - j < 16 ? n - j : 16;
        __mmask16 m = (__mmask16)((1u << left) - 1);
        __m512bh v = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(m, r1 + j),
                                         _mm512_maskz_loadu_ps(m, r0 + j));
        _mm512_mask_storeu_epi32(dst + j, m, _mm512_permutexvar_epi16(order, (__m512i)v));
    }
}
#endif

static pynn_bf16_convert_fn pynn_bf16_convert = pynn_bf16_convert_portable;
static pynn_bf16_interleave_fn pynn_bf16_interleave = pynn_bf16_interleave_portable;

/* `rows` rows of k floats (row stride lds) -> rows format, row stride ldd words. */
static void pynn_bf16_to_rows(const float* src, long lds, int rows, int k, uint32_t* dst,
                              long ldd) {
    int r;
    for (r = 0; r < rows; r++) {
        uint32_t* d = dst + r * ldd;
        pynn_bf16_convert(src + r * lds, (uint16_t*)d, k);
        if (k & 1)
            ((uint16_t*)d)[k] = 0;
    }
}

/* k rows of n floats (row stride lds) -> pairs format (kp, ldd), columns [n, ldd) zero. */
static void pynn_bf16_to_pairs(const float* src, long lds, int k, int n, uint32_t* dst,
                               long ldd) {
    int q, j;
    for (q = 0; q < (k + 1) / 2; q++) {
        const float* r0 = src + 2 * q * lds;
        uint32_t* d = dst + q * ldd;
        if (2 * q + 1 < k) {
            pynn_bf16_interleave(r0, r0 + lds, d, n);
        } else {
            for (j = 0; j < n; j++)
                d[j] = pynn_bf16_round(r0[j]);
        }
        for (j = n; j < ldd; j++)
            d[j] = 0;
    }
}

/* dst (cols, ldd) = src (rows, cols).T in words, columns [rows, ldd) zero: a rows-format
 * weight turned into the pairs format of its transpose. */
static void pynn_bf16_transpose(const uint32_t* src, long lds, int rows, int cols,
                                uint32_t* dst, long ldd) {
    /* 16 source rows at a time: their lines stay in L1 while every column takes its 16
     * words (a column at a time over all rows re-read each line from L2 per column). */
    int r0, r, r1, c;
    for (r0 = 0; r0 < rows; r0 += 16) {
        r1 = r0 + 16 < rows ? r0 + 16 : rows;
        for (c = 0; c < cols; c++) {
            uint32_t* d = dst + c * ldd;
            for (r = r0; r < r1; r++)
                d[r] = src[r * lds + c];
        }
    }
    for (c = 0; c < cols; c++)
        for (r = rows; r < ldd; r++)
            dst[c * ldd + r] = 0;
}

/* c[r, j] (+)= sum over q < kp of a(r, q) . b(q, j), for r < mr, j < nr; a(r, q) at
 * a[r * a_rs + q * a_qs], b(q, j) at b[q * ldb + j] (32 readable words per q). */
typedef void (*pynn_bf16_tile_fn)(int kp, const uint32_t* a, long a_rs, long a_qs,
                                  const uint32_t* b, long ldb, float* c, long ldc, int mr,
                                  int nr, int accumulate);

static void pynn_bf16_tile_portable(int kp, const uint32_t* a, long a_rs, long a_qs,
                                    const uint32_t* b, long ldb, float* c, long ldc, int mr,
                                    int nr, int accumulate) {
    float acc[PYNN_BF16_MR][PYNN_BF16_NR];
    int q, r, j;
    memset(acc, 0, sizeof(acc));
    for (q = 0; q < kp; q++) {
        const uint32_t* bq = b + q * ldb;
        float b_lo[PYNN_BF16_NR], b_hi[PYNN_BF16_NR];
        for (j = 0; j < PYNN_BF16_NR; j++) {
            b_lo[j] = pynn_bf16_widen(bq[j] & 0xffffu);
            b_hi[j] = pynn_bf16_widen(bq[j] >> 16);
        }
        for (r = 0; r < mr; r++) {
            uint32_t w = a[r * a_rs + q * a_qs];
            float a_lo = pynn_bf16_widen(w & 0xffffu), a_hi = pynn_bf16_widen(w >> 16);
            for (j = 0; j < PYNN_BF16_NR; j++) {
                float t = acc[r][j] + a_hi * b_hi[j];
                acc[r][j] = t + a_lo * b_lo[j];
            }
        }
    }
    for (r = 0; r < mr; r++)
        for (j = 0; j < nr; j++)
            c[r * ldc + j] = accumulate ? c[r * ldc + j] + acc[r][j] : acc[r][j];
}

#if PYNN_BF16_X86
__attribute__((target("avx512bf16,avx512f,avx512vl,avx512bw"))) static void
pynn_bf16_tile_avx512(int kp, const uint32_t* a, long a_rs, long a_qs, const uint32_t* b,
                      long ldb, float* c, long ldc, int mr, int nr, int accumulate) {
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m512 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00, c60 = c00;
    __m512 c61 = c00, c70 = c00, c71 = c00;
    __mmask16 m0, m1;
    int q, r;
    /* Rows past mr repeat the last one: computed, never stored, no reads out of bounds. */
    const uint32_t* a0 = a;
    const uint32_t* a1 = a + (mr > 1 ? 1 : 0) * a_rs;
    const uint32_t* a2 = a + (mr > 2 ? 2 : mr - 1) * a_rs;
    const uint32_t* a3 = a + (mr > 3 ? 3 : mr - 1) * a_rs;
    const uint32_t* a4 = a + (mr > 4 ? 4 : mr - 1) * a_rs;
    const uint32_t* a5 = a + (mr > 5 ? 5 : mr - 1) * a_rs;
    const uint32_t* a6 = a + (mr > 6 ? 6 : mr - 1) * a_rs;
    const uint32_t* a7 = a + (mr > 7 ? 7 : mr - 1) * a_rs;
    long off = 0;
    for (q = 0; q < kp; q++, off += a_qs) {
        __m512bh b0 = (__m512bh)_mm512_loadu_si512(b);
        __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + 16);
        __m512bh av;
#define PYNN_BF16_ROW(A, C0, C1)                                \
        av = (__m512bh)_mm512_set1_epi32((int)(A)[off]);       \
        C0 = _mm512_dpbf16_ps(C0, av, b0);                     \
        C1 = _mm512_dpbf16_ps(C1, av, b1);
        PYNN_BF16_ROW(a0, c00, c01)
        PYNN_BF16_ROW(a1, c10, c11)
        PYNN_BF16_ROW(a2, c20, c21)
        PYNN_BF16_ROW(a3, c30, c31)
        PYNN_BF16_ROW(a4, c40, c41)
        PYNN_BF16_ROW(a5, c50, c51)
        PYNN_BF16_ROW(a6, c60, c61)
        PYNN_BF16_ROW(a7, c70, c71)
#undef PYNN_BF16_ROW
        b += ldb;
    }
    m0 = nr >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << nr) - 1);
    m1 = nr >= 32 ? (__mmask16)0xffff : nr <= 16 ? 0 : (__mmask16)((1u << (nr - 16)) - 1);
    {
        __m512 rows0[PYNN_BF16_MR] = {c00, c10, c20, c30, c40, c50, c60, c70};
        __m512 rows1[PYNN_BF16_MR] = {c01, c11, c21, c31, c41, c51, c61, c71};
        for (r = 0; r < mr; r++) {
            float* cr = c + r * ldc;
            __m512 v0 = rows0[r], v1 = rows1[r];
            if (accumulate) {
                v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, cr));
                v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, cr + 16));
            }
            _mm512_mask_storeu_ps(cr, m0, v0);
            _mm512_mask_storeu_ps(cr + 16, m1, v1);
        }
    }
}
#endif

static pynn_bf16_tile_fn pynn_bf16_tile = pynn_bf16_tile_portable;

/* Chooses the microkernel; returns its name. `portable` forces the C one (tests, and what a
 * CPU without AVX512_BF16 runs). */
static const char* pynn_bf16_select(int portable) {
#if PYNN_BF16_X86
    __builtin_cpu_init();
    if (!portable && __builtin_cpu_supports("avx512bf16")) {
        pynn_bf16_tile = pynn_bf16_tile_avx512;
        pynn_bf16_convert = pynn_bf16_convert_avx512;
        pynn_bf16_interleave = pynn_bf16_interleave_avx512;
        return "avx512_bf16";
    }
#endif
    pynn_bf16_tile = pynn_bf16_tile_portable;
    pynn_bf16_convert = pynn_bf16_convert_portable;
    pynn_bf16_interleave = pynn_bf16_interleave_portable;
    return "portable";
}

/* Tile t of C (m, n): row panels inner, so consecutive tiles share a B panel. */
static inline void pynn_bf16_gemm_tile(int m, int n, int kp, const uint32_t* a, long a_rs,
                                       long a_qs, const uint32_t* b, long ldb, float* c,
                                       long ldc, int t, int accumulate) {
    int mp = (m + PYNN_BF16_MR - 1) / PYNN_BF16_MR;
    int i0 = (t % mp) * PYNN_BF16_MR, j0 = (t / mp) * PYNN_BF16_NR;
    int mr = m - i0 < PYNN_BF16_MR ? m - i0 : PYNN_BF16_MR;
    int nr = n - j0 < PYNN_BF16_NR ? n - j0 : PYNN_BF16_NR;
    pynn_bf16_tile(kp, a + i0 * a_rs, a_rs, a_qs, b + j0, ldb, c + i0 * ldc + j0, ldc, mr, nr,
                   accumulate);
}

static inline int pynn_bf16_tiles(int m, int n) {
    return ((m + PYNN_BF16_MR - 1) / PYNN_BF16_MR) * ((n + PYNN_BF16_NR - 1) / PYNN_BF16_NR);
}

static void pynn_bf16_gemm_serial(int m, int n, int kp, const uint32_t* a, long a_rs,
                                  long a_qs, const uint32_t* b, long ldb, float* c, long ldc,
                                  int accumulate) {
    int t, tiles = pynn_bf16_tiles(m, n);
    for (t = 0; t < tiles; t++)
        pynn_bf16_gemm_tile(m, n, kp, a, a_rs, a_qs, b, ldb, c, ldc, t, accumulate);
}

/* -- convolution, NHWC, kernel (KH, KW, C, F) -- */
typedef struct {
    int h, w, c, kh, kw, sh, sw, dh, dw, pad_top, pad_left, oh, ow;
} pynn_bf16_conv_geom;

/* Row m of one sample's im2col matrix (OH*OW, KH*KW*C), columns (kh, kw, c), as bf16
 * (KH*KW*C values, then a zero when that count is odd). */
static void pynn_bf16_im2col_row(const float* x, const pynn_bf16_conv_geom* g, int m,
                                 uint16_t* out) {
    int oh = m / g->ow, ow = m % g->ow, i, j, k = g->kh * g->kw * g->c;
    uint16_t* o = out;
    for (i = 0; i < g->kh; i++) {
        int ih = oh * g->sh - g->pad_top + i * g->dh;
        for (j = 0; j < g->kw; j++, o += g->c) {
            int iw = ow * g->sw - g->pad_left + j * g->dw;
            if (ih < 0 || ih >= g->h || iw < 0 || iw >= g->w) {
                memset(o, 0, g->c * sizeof(uint16_t));
                continue;
            }
            pynn_bf16_convert(x + ((long)ih * g->w + iw) * g->c, o, g->c);
        }
    }
    if (k & 1)
        out[k] = 0;
}

/* Rows [m0, m0 + rows) of im2col in the rows format (row stride kp words). */
static void pynn_bf16_im2col_rows(const float* x, const pynn_bf16_conv_geom* g, int m0,
                                  int rows, uint32_t* dst, long kp) {
    int r;
    for (r = 0; r < rows; r++)
        pynn_bf16_im2col_row(x, g, m0 + r, (uint16_t*)(dst + r * kp));
}

/* Rows [m0, m0 + rows) of im2col (rows even, or the last rows of the matrix) in the pairs
 * format (rows / 2 pair rows of ldd words); `tmp` holds two bf16 rows of k + 1 values. */
static void pynn_bf16_im2col_pairs(const float* x, const pynn_bf16_conv_geom* g, int m0,
                                   int rows, uint32_t* dst, long ldd, uint16_t* tmp) {
    int k = g->kh * g->kw * g->c, q, j;
    uint16_t* r0 = tmp;
    uint16_t* r1 = tmp + k + 1;
    for (q = 0; q < (rows + 1) / 2; q++) {
        uint32_t* d = dst + q * ldd;
        pynn_bf16_im2col_row(x, g, m0 + 2 * q, r0);
        if (2 * q + 1 < rows)
            pynn_bf16_im2col_row(x, g, m0 + 2 * q + 1, r1);
        else
            memset(r1, 0, k * sizeof(uint16_t));
        for (j = 0; j < k; j++)
            d[j] = (uint32_t)r0[j] | ((uint32_t)r1[j] << 16);
        for (j = k; j < ldd; j++)
            d[j] = 0;
    }
}

/* dx (one sample, H, W, C) += col2im of rows [m0, m0 + rows) of dcols (OH*OW, KH*KW*C),
 * dcols pointing at row m0. */
static void pynn_bf16_col2im(const float* dcols, const pynn_bf16_conv_geom* g, int m0, int rows,
                             float* dx) {
    int k = g->kh * g->kw * g->c, m, i, j, ch;
    for (m = m0; m < m0 + rows; m++) {
        int oh = m / g->ow, ow = m % g->ow;
        const float* row = dcols + (long)(m - m0) * k;
        for (i = 0; i < g->kh; i++) {
            int ih = oh * g->sh - g->pad_top + i * g->dh;
            if (ih < 0 || ih >= g->h)
                continue;
            for (j = 0; j < g->kw; j++) {
                int iw = ow * g->sw - g->pad_left + j * g->dw;
                if (iw < 0 || iw >= g->w)
                    continue;
                float* px = dx + ((long)ih * g->w + iw) * g->c;
                const float* src = row + (i * g->kw + j) * g->c;
                for (ch = 0; ch < g->c; ch++)
                    px[ch] += src[ch];
            }
        }
    }
}

#endif
