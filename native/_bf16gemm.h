/* bfloat16 GEMM for mixed precision (issue 17): C (m, n) = A (m, k) @ B (k, n) with A and B
 * rounded to bfloat16 (round to nearest, ties to even) and every sum accumulated in float32.
 *
 * Packed layouts (both built by the pack functions below, which also round):
 *   A: panels of MR rows; panel p holds kp = ceil(k / 2) words per row, word (p, q, r) the
 *      bf16 pair (A[row, 2q], A[row, 2q + 1]) of row p * MR + r, low half the even element.
 *   B: panels of NR columns; word (p, q, j) the pair (B[2q, col], B[2q + 1, col]).
 * An odd k is padded with a zero element, rows and columns past the edge with zeros, so the
 * microkernel never branches on k.
 *
 * Two microkernels share the layout: vdpbf16ps (AVX512_BF16, compiled through target
 * attributes so any build has it, chosen at run time by __builtin_cpu_supports) and a portable
 * C one that widens each bf16 to float32 and performs the same two additions in the same order
 * as the instruction (odd element first, see the SDM's VDPBF16PS pseudocode). Products of two
 * bf16 values are exact in float32, so both give the same bits for normal numbers; the
 * instruction flushes subnormal inputs and outputs to zero, the portable kernel does not.
 * AMX tiles are not implemented: no machine pynn is tested on has them.
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

/* A panel: rows [0, rows) of a (row stride sm, column stride sk), k columns -> MR x kp words.
 * Rows past `rows` are zero. */
static void pynn_bf16_pack_a(const float* a, long sm, long sk, int rows, int k, uint16_t* out) {
    int kp = (k + 1) / 2, r, q;
    memset(out, 0, (size_t)kp * PYNN_BF16_MR * 2 * sizeof(uint16_t));
    for (r = 0; r < rows; r++) {
        const float* row = a + r * sm;
        for (q = 0; q < k; q++)
            out[((q >> 1) * PYNN_BF16_MR + r) * 2 + (q & 1)] = pynn_bf16_round(row[q * sk]);
    }
}

/* A B panel: columns [0, cols) of b (row stride sk, column stride sn), k rows -> kp x NR. */
static void pynn_bf16_pack_b(const float* b, long sk, long sn, int cols, int k, uint16_t* out) {
    int kp = (k + 1) / 2, j, q;
    memset(out, 0, (size_t)kp * PYNN_BF16_NR * 2 * sizeof(uint16_t));
    for (q = 0; q < k; q++) {
        const float* row = b + q * sk;
        uint16_t* dst = out + (q >> 1) * PYNN_BF16_NR * 2 + (q & 1);
        for (j = 0; j < cols; j++)
            dst[2 * j] = pynn_bf16_round(row[j * sn]);
    }
}

/* c[r, j] (+)= sum over kp pairs, for r < mr, j < nr. */
typedef void (*pynn_bf16_tile_fn)(int kp, const uint32_t* a, const uint32_t* b, float* c,
                                  long ldc, int mr, int nr, int accumulate);

static void pynn_bf16_tile_portable(int kp, const uint32_t* a, const uint32_t* b, float* c,
                                    long ldc, int mr, int nr, int accumulate) {
    float acc[PYNN_BF16_MR][PYNN_BF16_NR];
    int q, r, j;
    memset(acc, 0, sizeof(acc));
    for (q = 0; q < kp; q++) {
        const uint32_t* aq = a + q * PYNN_BF16_MR;
        const uint32_t* bq = b + q * PYNN_BF16_NR;
        float b_lo[PYNN_BF16_NR], b_hi[PYNN_BF16_NR];
        for (j = 0; j < PYNN_BF16_NR; j++) {
            b_lo[j] = pynn_bf16_widen(bq[j] & 0xffffu);
            b_hi[j] = pynn_bf16_widen(bq[j] >> 16);
        }
        for (r = 0; r < PYNN_BF16_MR; r++) {
            float a_lo = pynn_bf16_widen(aq[r] & 0xffffu), a_hi = pynn_bf16_widen(aq[r] >> 16);
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
pynn_bf16_tile_avx512(int kp, const uint32_t* a, const uint32_t* b, float* c, long ldc, int mr,
                      int nr, int accumulate) {
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m512 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00, c60 = c00;
    __m512 c61 = c00, c70 = c00, c71 = c00;
    __mmask16 m0, m1;
    int q, r;
    for (q = 0; q < kp; q++) {
        __m512bh b0 = (__m512bh)_mm512_loadu_si512(b);
        __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + 16);
        __m512bh av;
#define PYNN_BF16_ROW(R, C0, C1)                              \
        av = (__m512bh)_mm512_set1_epi32((int)a[R]);         \
        C0 = _mm512_dpbf16_ps(C0, av, b0);                   \
        C1 = _mm512_dpbf16_ps(C1, av, b1);
        PYNN_BF16_ROW(0, c00, c01)
        PYNN_BF16_ROW(1, c10, c11)
        PYNN_BF16_ROW(2, c20, c21)
        PYNN_BF16_ROW(3, c30, c31)
        PYNN_BF16_ROW(4, c40, c41)
        PYNN_BF16_ROW(5, c50, c51)
        PYNN_BF16_ROW(6, c60, c61)
        PYNN_BF16_ROW(7, c70, c71)
#undef PYNN_BF16_ROW
        a += PYNN_BF16_MR;
        b += PYNN_BF16_NR;
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
        return "avx512_bf16";
    }
#endif
    pynn_bf16_tile = pynn_bf16_tile_portable;
    return "portable";
}

/* Tiles of C for panels ip (rows) and jp (columns), over all kp pairs. */
static inline void pynn_bf16_gemm_tile(int m, int n, int kp, const uint32_t* ap,
                                       const uint32_t* bp, float* c, long ldc, int ip, int jp,
                                       int accumulate) {
    int i0 = ip * PYNN_BF16_MR, j0 = jp * PYNN_BF16_NR;
    int mr = m - i0 < PYNN_BF16_MR ? m - i0 : PYNN_BF16_MR;
    int nr = n - j0 < PYNN_BF16_NR ? n - j0 : PYNN_BF16_NR;
    pynn_bf16_tile(kp, ap + (size_t)ip * kp * PYNN_BF16_MR, bp + (size_t)jp * kp * PYNN_BF16_NR,
                   c + i0 * ldc + j0, ldc, mr, nr, accumulate);
}

/* Every tile of C, row panels inner so a B panel stays in cache (one thread). */
static void pynn_bf16_gemm_serial(int m, int n, int kp, const uint32_t* ap, const uint32_t* bp,
                                  float* c, long ldc, int accumulate) {
    int ip, jp, mp = (m + PYNN_BF16_MR - 1) / PYNN_BF16_MR, np_ = (n + PYNN_BF16_NR - 1) / PYNN_BF16_NR;
    for (jp = 0; jp < np_; jp++)
        for (ip = 0; ip < mp; ip++)
            pynn_bf16_gemm_tile(m, n, kp, ap, bp, c, ldc, ip, jp, accumulate);
}

/* -- convolution, NHWC, kernel (KH, KW, C, F): im2col straight into the packed A layout -- */
typedef struct {
    int h, w, c, kh, kw, sh, sw, dh, dw, pad_top, pad_left, oh, ow;
} pynn_bf16_conv_geom;

/* Rows [m0, m0 + rows) of one sample's im2col matrix (OH*OW, KH*KW*C), columns (kh, kw, c). */
static void pynn_bf16_pack_a_conv(const float* x, const pynn_bf16_conv_geom* g, int m0, int rows,
                                  uint16_t* out) {
    int k = g->kh * g->kw * g->c, kp = (k + 1) / 2, r, i, j, ch, q;
    memset(out, 0, (size_t)kp * PYNN_BF16_MR * 2 * sizeof(uint16_t));
    for (r = 0; r < rows; r++) {
        int m = m0 + r, oh = m / g->ow, ow = m % g->ow;
        q = 0;
        for (i = 0; i < g->kh; i++) {
            int ih = oh * g->sh - g->pad_top + i * g->dh;
            for (j = 0; j < g->kw; j++) {
                int iw = ow * g->sw - g->pad_left + j * g->dw;
                if (ih < 0 || ih >= g->h || iw < 0 || iw >= g->w) {
                    q += g->c; /* already zero */
                    continue;
                }
                const float* px = x + ((long)ih * g->w + iw) * g->c;
                for (ch = 0; ch < g->c; ch++, q++)
                    out[((q >> 1) * PYNN_BF16_MR + r) * 2 + (q & 1)] = pynn_bf16_round(px[ch]);
            }
        }
    }
}

/* Rows [i0, i0 + rows) of the transposed im2col matrix (KH*KW*C, OH*OW) of one sample. */
static void pynn_bf16_pack_a_conv_t(const float* x, const pynn_bf16_conv_geom* g, int i0,
                                    int rows, uint16_t* out) {
    int k = g->oh * g->ow, kp = (k + 1) / 2, r, oh, ow;
    memset(out, 0, (size_t)kp * PYNN_BF16_MR * 2 * sizeof(uint16_t));
    for (r = 0; r < rows; r++) {
        int row = i0 + r, ch = row % g->c, j = (row / g->c) % g->kw, i = row / (g->c * g->kw);
        for (oh = 0; oh < g->oh; oh++) {
            int ih = oh * g->sh - g->pad_top + i * g->dh;
            if (ih < 0 || ih >= g->h)
                continue;
            for (ow = 0; ow < g->ow; ow++) {
                int iw = ow * g->sw - g->pad_left + j * g->dw, q = oh * g->ow + ow;
                if (iw < 0 || iw >= g->w)
                    continue;
                out[((q >> 1) * PYNN_BF16_MR + r) * 2 + (q & 1)] =
                    pynn_bf16_round(x[((long)ih * g->w + iw) * g->c + ch]);
            }
        }
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
