/* Register-blocked microkernel shared by the direct Conv2D paths (native/conv.pyx) and the
 * recurrent layers (native/rnn.pyx).
 *
 * c[i, j] (i < MR, j < n) = start + sum over segments s, t < tn of
 *     a[aseg[s] + roff[i] + t*sat] * b[bseg[s] + t*ldb + j]
 * start: c itself (accum), else init[j] (a bias row), else 0.
 * Segments let one routine read a convolution straight from a zero-padded input (one
 * segment per kernel row, or per output row for the kernel gradient); the recurrent layers
 * use one segment and rows at a fixed stride (pynn_rows_gemm_*).
 * MR rows x NV vectors of accumulators stay in registers (GCC vector extensions: zmm with
 * AVX-512, ymm otherwise, where MR tops out at 6 so 16 registers hold the block); the "wide"
 * 6-row variant takes four vectors per block first where 32 registers allow it.
 * Each output element is summed in a fixed (s, t) order whatever the row block, so results
 * do not depend on how callers split rows between threads. */
#ifndef PYNN_MICROKERNEL_H
#define PYNN_MICROKERNEL_H

#include <Python.h>

#if defined(__AVX512F__)
#define PYNN_VBYTES 64
#define PYNN_MR_MAX 8
#else
#define PYNN_VBYTES 32
#define PYNN_MR_MAX 6
#endif
typedef float pynn_vf __attribute__((vector_size(PYNN_VBYTES), aligned(4), may_alias));
typedef double pynn_vd __attribute__((vector_size(PYNN_VBYTES), aligned(8), may_alias));

/* Explicit fused multiply-adds. With -ffp-contract=fast GCC fuses `acc += a * b` in some
 * inlined copies of a block and not in others (it depends on the call site), so one output
 * element came out differently from a 1-row and a 3-row block: results then depended on how
 * rows were split between threads. Spelling the FMA out makes every copy round the same. */
#if defined(__FMA__) || defined(__AVX512F__)
#include <immintrin.h>
#if PYNN_VBYTES == 64
#define PYNN_VFMA_F(s, b, c) ((pynn_vf)_mm512_fmadd_ps(_mm512_set1_ps(s), (__m512)(b), (__m512)(c)))
#define PYNN_VFMA_D(s, b, c) \
    ((pynn_vd)_mm512_fmadd_pd(_mm512_set1_pd(s), (__m512d)(b), (__m512d)(c)))
#else
#define PYNN_VFMA_F(s, b, c) ((pynn_vf)_mm256_fmadd_ps(_mm256_set1_ps(s), (__m256)(b), (__m256)(c)))
#define PYNN_VFMA_D(s, b, c) \
    ((pynn_vd)_mm256_fmadd_pd(_mm256_set1_pd(s), (__m256d)(b), (__m256d)(c)))
#endif
#define PYNN_SFMA_F(a, b, c) __builtin_fmaf((a), (b), (c))
#define PYNN_SFMA_D(a, b, c) __builtin_fma((a), (b), (c))
#else
/* No FMA instruction: the compiler has nothing to contract, so a*b + c rounds twice
 * everywhere alike. */
#define PYNN_VFMA_F(s, b, c) ((s) * (b) + (c))
#define PYNN_VFMA_D(s, b, c) ((s) * (b) + (c))
#define PYNN_SFMA_F(a, b, c) ((a) * (b) + (c))
#define PYNN_SFMA_D(a, b, c) ((a) * (b) + (c))
#endif

#define PYNN_SK_BLOCK(T, V, NV, MR, VFMA)                                              \
    {                                                                                  \
        V acc[MR][NV]; const T* ap[MR]; int i, v; Py_ssize_t s, t;                     \
        for (i = 0; i < MR; i++) for (v = 0; v < NV; v++) {                            \
            if (accum) acc[i][v] = *(const V*)(c + i * ldc + j + v * VL);              \
            else if (init) acc[i][v] = *(const V*)(init + j + v * VL);                 \
            else acc[i][v] = (V){0};                                                   \
        }                                                                              \
        for (s = 0; s < nseg; s++) {                                                   \
            const T* bs = b + bseg[s] + j;                                             \
            for (i = 0; i < MR; i++) ap[i] = a + aseg[s] + roff[i];                    \
            for (t = 0; t < tn; t++) {                                                 \
                V bv[NV];                                                              \
                for (v = 0; v < NV; v++) bv[v] = *(const V*)(bs + t * ldb + v * VL);   \
                for (i = 0; i < MR; i++) {                                             \
                    const T av = ap[i][t * sat];                                       \
                    for (v = 0; v < NV; v++) acc[i][v] = VFMA(av, bv[v], acc[i][v]);   \
                }                                                                      \
            }                                                                          \
        }                                                                              \
        for (i = 0; i < MR; i++) for (v = 0; v < NV; v++)                              \
            *(V*)(c + i * ldc + j + v * VL) = acc[i][v];                               \
    }

#define PYNN_SK(NAME, T, V, MR, WIDE, VFMA, SFMA)                                      \
static inline void NAME(Py_ssize_t n, Py_ssize_t nseg, Py_ssize_t tn, const T* a,      \
                        const Py_ssize_t* roff, const Py_ssize_t* aseg, Py_ssize_t sat, \
                        const T* b, const Py_ssize_t* bseg, Py_ssize_t ldb, T* c,      \
                        Py_ssize_t ldc, const T* init, int accum) {                    \
    enum { VL = PYNN_VBYTES / sizeof(T) };                                             \
    Py_ssize_t j = 0, s, t; int i;                                                     \
    if (WIDE) for (; j + 4 * VL <= n; j += 4 * VL) PYNN_SK_BLOCK(T, V, 4, MR, VFMA)    \
    for (; j + 2 * VL <= n; j += 2 * VL) PYNN_SK_BLOCK(T, V, 2, MR, VFMA)              \
    for (; j + VL <= n; j += VL) PYNN_SK_BLOCK(T, V, 1, MR, VFMA)                      \
    for (; j < n; j++) for (i = 0; i < MR; i++) {                                      \
        T sum = accum ? c[i * ldc + j] : (init ? init[j] : (T)0);                      \
        for (s = 0; s < nseg; s++) for (t = 0; t < tn; t++)                            \
            sum = SFMA(a[aseg[s] + roff[i] + t * sat], b[bseg[s] + t * ldb + j], sum); \
        c[i * ldc + j] = sum;                                                          \
    }                                                                                  \
}

/* Every row-block size for one dtype: pynn_sk{8,6,6w,4,3,2,1}_SFX. */
#define PYNN_SK_ALL(SFX, T, V, VFMA, SFMA)                                             \
    PYNN_SK(pynn_sk8_##SFX, T, V, 8, 0, VFMA, SFMA)                                    \
    PYNN_SK(pynn_sk6_##SFX, T, V, 6, 0, VFMA, SFMA)                                    \
    PYNN_SK(pynn_sk6w_##SFX, T, V, 6, PYNN_VBYTES == 64, VFMA, SFMA)                   \
    PYNN_SK(pynn_sk4_##SFX, T, V, 4, 0, VFMA, SFMA)                                    \
    PYNN_SK(pynn_sk3_##SFX, T, V, 3, 0, VFMA, SFMA)                                    \
    PYNN_SK(pynn_sk2_##SFX, T, V, 2, 0, VFMA, SFMA)                                    \
    PYNN_SK(pynn_sk1_##SFX, T, V, 1, 0, VFMA, SFMA)
PYNN_SK_ALL(f, float, pynn_vf, PYNN_VFMA_F, PYNN_SFMA_F)
PYNN_SK_ALL(d, double, pynn_vd, PYNN_VFMA_D, PYNN_SFMA_D)

/* All m rows, in blocks of PYNN_MR_MAX rows, then the largest smaller block that fits
   (6, 4, 3, 2, 1). wide: 6-row blocks of four vectors (24 accumulators) instead of
   8-row blocks of two, where there are 32 vector registers. */
#define PYNN_SK_RUN(K, R)                                                              \
    { K(n, nseg, tn, a, roff + i, aseg, sat, b, bseg, ldb, c + i * ldc, ldc, init,     \
        accum); i += R; }
#define PYNN_SEG_GEMM(NAME, T, SFX)                                                    \
static void NAME(Py_ssize_t m, Py_ssize_t n, Py_ssize_t nseg, Py_ssize_t tn,           \
                 const T* a, const Py_ssize_t* roff, const Py_ssize_t* aseg,           \
                 Py_ssize_t sat, const T* b, const Py_ssize_t* bseg, Py_ssize_t ldb,   \
                 T* c, Py_ssize_t ldc, const T* init, int accum, int wide) {           \
    Py_ssize_t i = 0;                                                                  \
    while (i < m) {                                                                    \
        Py_ssize_t left = m - i;                                                       \
        if (left >= 8 && PYNN_MR_MAX >= 8 && !wide) PYNN_SK_RUN(pynn_sk8_##SFX, 8)     \
        else if (left >= 6 && wide) PYNN_SK_RUN(pynn_sk6w_##SFX, 6)                    \
        else if (left >= 6) PYNN_SK_RUN(pynn_sk6_##SFX, 6)                             \
        else if (left >= 4) PYNN_SK_RUN(pynn_sk4_##SFX, 4)                             \
        else if (left == 3) PYNN_SK_RUN(pynn_sk3_##SFX, 3)                             \
        else if (left == 2) PYNN_SK_RUN(pynn_sk2_##SFX, 2)                             \
        else PYNN_SK_RUN(pynn_sk1_##SFX, 1)                                            \
    }                                                                                  \
}
PYNN_SEG_GEMM(pynn_seg_gemm_f, float, f)
PYNN_SEG_GEMM(pynn_seg_gemm_d, double, d)

/* Rows at a fixed stride (row i at a + i*sai, t at + t*sak), one segment, no bias row. */
#define PYNN_ROWS_GEMM(NAME, T, SEG)                                                   \
static void NAME(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const T* a, Py_ssize_t sai, \
                 Py_ssize_t sak, const T* b, Py_ssize_t ldb, T* c, Py_ssize_t ldc,     \
                 int accum) {                                                          \
    Py_ssize_t roff[64], zero = 0, i0, i, rows;                                        \
    for (i0 = 0; i0 < m; i0 += 64) {                                                   \
        rows = m - i0 < 64 ? m - i0 : 64;                                              \
        for (i = 0; i < rows; i++) roff[i] = i * sai;                                  \
        SEG(rows, n, 1, k, a + i0 * sai, roff, &zero, sak, b, &zero, ldb, c + i0 * ldc, \
            ldc, (const T*)0, accum, 0);                                               \
    }                                                                                  \
}
PYNN_ROWS_GEMM(pynn_rows_gemm_f, float, pynn_seg_gemm_f)
PYNN_ROWS_GEMM(pynn_rows_gemm_d, double, pynn_seg_gemm_d)

/* Columns per packed panel (conv forward, recurrent layers): the two vectors of one block. */
#define PYNN_NC_F (2 * PYNN_VBYTES / 4)
#define PYNN_NC_D (2 * PYNN_VBYTES / 8)

/* b (k rows x n columns, row stride ldb) packed into column panels of nc columns: panel p
 * holds columns [p*nc, p*nc + w) of every row (w = nc but in the last panel), contiguous
 * with row stride w, at out + p*nc*k. The microkernel then reads one sequential stream per
 * block; reading the rows of b in place (one cache line per row, 4*ldb bytes apart) cost
 * the conv forward ~13% on Zen 3. */
#define PYNN_PACK_PANELS(NAME, T)                                                      \
static void NAME(const T* b, Py_ssize_t ldb, Py_ssize_t k, Py_ssize_t n, Py_ssize_t nc, \
                 T* out) {                                                             \
    Py_ssize_t p0, w, r, j;                                                            \
    for (p0 = 0; p0 < n; p0 += nc) {                                                   \
        T* d = out + p0 * k;                                                           \
        w = n - p0 < nc ? n - p0 : nc;                                                 \
        for (r = 0; r < k; r++)                                                        \
            for (j = 0; j < w; j++) d[r * w + j] = b[r * ldb + p0 + j];                \
    }                                                                                  \
}
PYNN_PACK_PANELS(pynn_pack_panels_f, float)
PYNN_PACK_PANELS(pynn_pack_panels_d, double)

#endif
