/* Register-blocked microkernel shared by the direct Conv2D paths (native/conv.pyx) and the
 * recurrent layers (native/rnn.pyx, native/rnn_mask.pyx).
 *
 * c[i, j] (i < MR, j < n) = start + sum over segments s, t < tn of
 *     a[aseg[s] + roff[i] + t*sat] * b[bseg[s] + t*ldb + j]
 * start: c itself (accum), else init[j] (a bias row), else 0.
 * Segments let one routine read a convolution straight from a zero-padded input (one
 * segment per kernel row, or per output row for the kernel gradient); the recurrent layers
 * use one segment and rows at a fixed stride (pynn_rows_gemm_*).
 * MR rows x NV vectors of accumulators stay in registers (GCC vector extensions); the "wide"
 * 6-row variant takes four vectors per block first where 32 registers allow it.
 * Each output element is summed in a fixed (s, t) order whatever the row block, so results
 * do not depend on how callers split rows between threads.
 *
 * Run-time dispatch (native/_isa.h): three copies of every kernel are compiled in every
 * build, each with its own target attribute whatever -march the build used --
 *   avx512   zmm, MR up to 8 (6 rows x 4 vectors when wide), 32 registers
 *   avx2     ymm + FMA, MR up to 6 so 16 registers hold the block
 *   generic  16-byte SSE vectors, no FMA, MR up to 6 (12 accumulators of 16 registers)
 * -- and the entry points (pynn_seg_gemm_f/_d, pynn_rows_gemm_f/_d) call the copy in this
 * module's table pynn_mk. The table is filled when the module is loaded (the best level of
 * the CPU, or PYNN_KERNEL's) and changed by pynn_mk_select, which the Python setter of each
 * module calls (native/_microkernel.pxi; pynn/_config.py set_kernel calls them all): every
 * extension module that includes this header has its own static copy of the table.
 * PYNN_VBYTES, PYNN_MR_MAX and the panel widths PYNN_NC_F/_D are the chosen copy's, read at
 * run time: a caller that packs panels reads them once per call, and set_kernel must not
 * run while kernels do. */
#ifndef PYNN_MICROKERNEL_H
#define PYNN_MICROKERNEL_H

#include <Python.h>
#include "_isa.h"
#if PYNN_ISA_X86
#include <immintrin.h>
#endif

typedef float pynn_vf16 __attribute__((vector_size(16), aligned(4), may_alias));
typedef double pynn_vd16 __attribute__((vector_size(16), aligned(8), may_alias));
typedef float pynn_vf32 __attribute__((vector_size(32), aligned(4), may_alias));
typedef double pynn_vd32 __attribute__((vector_size(32), aligned(8), may_alias));
typedef float pynn_vf64 __attribute__((vector_size(64), aligned(4), may_alias));
typedef double pynn_vd64 __attribute__((vector_size(64), aligned(8), may_alias));

/* Explicit fused multiply-adds. With -ffp-contract=fast GCC fuses `acc += a * b` in some
 * inlined copies of a block and not in others (it depends on the call site), so one output
 * element came out differently from a 1-row and a 3-row block: results then depended on how
 * rows were split between threads. Spelling the FMA out makes every copy round the same.
 * The generic copy is compiled without FMA (PYNN_TARGET_GENERIC): nothing to contract, so
 * a*b + c rounds twice everywhere alike. */
#define PYNN_VFMA512_F(s, b, c) \
    ((pynn_vf64)_mm512_fmadd_ps(_mm512_set1_ps(s), (__m512)(b), (__m512)(c)))
#define PYNN_VFMA512_D(s, b, c) \
    ((pynn_vd64)_mm512_fmadd_pd(_mm512_set1_pd(s), (__m512d)(b), (__m512d)(c)))
#define PYNN_VFMA256_F(s, b, c) \
    ((pynn_vf32)_mm256_fmadd_ps(_mm256_set1_ps(s), (__m256)(b), (__m256)(c)))
#define PYNN_VFMA256_D(s, b, c) \
    ((pynn_vd32)_mm256_fmadd_pd(_mm256_set1_pd(s), (__m256d)(b), (__m256d)(c)))
#define PYNN_SFMA_F(a, b, c) __builtin_fmaf((a), (b), (c))
#define PYNN_SFMA_D(a, b, c) __builtin_fma((a), (b), (c))
#define PYNN_MULADD(a, b, c) ((a) * (b) + (c))

/* acc and bv are of a plain vector type (R: natural alignment, no may_alias); V (loads
   and stores through memory) is under-aligned and may_alias. Declared as V, GCC kept the
   8-row block's accumulators in rotating registers, copied nine of them and spilled one to
   the stack on every step (Intel Xeon, 64 x 784 -> 256 on packed panels, one thread:
   140 -> 130 us). */
#define PYNN_SK_BLOCK(T, V, VL, NV, MR, VFMA)                                          \
    {                                                                                  \
        typedef T R __attribute__((vector_size(sizeof(V))));                           \
        R acc[MR][NV]; const T* ap[MR]; int i, v; Py_ssize_t s, t;                     \
        for (i = 0; i < MR; i++) for (v = 0; v < NV; v++) {                            \
            if (accum) acc[i][v] = *(const V*)(c + i * ldc + j + v * VL);              \
            else if (init) acc[i][v] = *(const V*)(init + j + v * VL);                 \
            else acc[i][v] = (V){0};                                                   \
        }                                                                              \
        for (s = 0; s < nseg; s++) {                                                   \
            const T* bs = b + bseg[s] + j;                                             \
            for (i = 0; i < MR; i++) ap[i] = a + aseg[s] + roff[i];                    \
            for (t = 0; t < tn; t++) {                                                 \
                R bv[NV];                                                              \
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

/* The last n - j < VL columns as one masked vector: lanes past them are neither read nor
   written (masked loads do not fault past a buffer's end), and each lane runs the same FMA
   chain, in the same (s, t) order, as the scalar loop below: the same bits. The scalar loop
   ran a column at a time with strided reads of a: a 56x56x144 -> 24 1x1 convolution took
   2.7 ms against 0.22 ms for 144 -> 32 (AVX-512, 16-float vectors: 8 columns were left). */
#define PYNN_SK_TAIL(T, V, MR, VFMA, MLOAD, MSTORE)                                    \
    {                                                                                  \
        typedef T R __attribute__((vector_size(sizeof(V))));                           \
        const int rem = (int)(n - j);                                                  \
        R acc[MR]; const T* ap[MR]; int i; Py_ssize_t s, t;                            \
        for (i = 0; i < MR; i++) {                                                     \
            if (accum) acc[i] = MLOAD(c + i * ldc + j, rem);                           \
            else if (init) acc[i] = MLOAD(init + j, rem);                              \
            else acc[i] = (R){0};                                                      \
        }                                                                              \
        for (s = 0; s < nseg; s++) {                                                   \
            const T* bs = b + bseg[s] + j;                                             \
            for (i = 0; i < MR; i++) ap[i] = a + aseg[s] + roff[i];                    \
            for (t = 0; t < tn; t++) {                                                 \
                const R bv = MLOAD(bs + t * ldb, rem);                                 \
                for (i = 0; i < MR; i++) acc[i] = VFMA(ap[i][t * sat], bv, acc[i]);    \
            }                                                                          \
        }                                                                              \
        for (i = 0; i < MR; i++) MSTORE(c + i * ldc + j, acc[i], rem);                 \
        j = n;                                                                         \
    }

#define PYNN_SK(NAME, TARGET, T, V, VBYTES, MR, WIDE, VFMA, SFMA, MASKED, MLOAD, MSTORE) \
static inline TARGET void NAME(Py_ssize_t n, Py_ssize_t nseg, Py_ssize_t tn,           \
                               const T* a, const Py_ssize_t* roff,                     \
                               const Py_ssize_t* aseg, Py_ssize_t sat, const T* b,     \
                               const Py_ssize_t* bseg, Py_ssize_t ldb, T* c,           \
                               Py_ssize_t ldc, const T* init, int accum) {             \
    enum { VL = VBYTES / sizeof(T) };                                                  \
    Py_ssize_t j = 0, s, t; int i;                                                     \
    if (WIDE) for (; j + 4 * VL <= n; j += 4 * VL) PYNN_SK_BLOCK(T, V, VL, 4, MR, VFMA) \
    for (; j + 2 * VL <= n; j += 2 * VL) PYNN_SK_BLOCK(T, V, VL, 2, MR, VFMA)          \
    for (; j + VL <= n; j += VL) PYNN_SK_BLOCK(T, V, VL, 1, MR, VFMA)                  \
    if (MASKED && j < n) PYNN_SK_TAIL(T, V, MR, VFMA, MLOAD, MSTORE)                   \
    for (; j < n; j++) for (i = 0; i < MR; i++) {                                      \
        T sum = accum ? c[i * ldc + j] : (init ? init[j] : (T)0);                      \
        for (s = 0; s < nseg; s++) for (t = 0; t < tn; t++)                            \
            sum = SFMA(a[aseg[s] + roff[i] + t * sat], b[bseg[s] + t * ldb + j], sum); \
        c[i * ldc + j] = sum;                                                          \
    }                                                                                  \
}

/* All m rows, in blocks of MRMAX rows, then the largest smaller block that fits
   (6, 4, 3, 2, 1). wide: 6-row blocks of four vectors (24 accumulators) instead of
   8-row blocks of two, where there are 32 vector registers (avx512; elsewhere wide is the
   plain 6-row block). */
#define PYNN_SK_RUN(K, R)                                                              \
    { K(n, nseg, tn, a, roff + i, aseg, sat, b, bseg, ldb, c + i * ldc, ldc, init,     \
        accum); i += R; }
#define PYNN_SEG_GEMM(NAME, TARGET, T, P, MRMAX)                                       \
static TARGET void NAME(Py_ssize_t m, Py_ssize_t n, Py_ssize_t nseg, Py_ssize_t tn,    \
                        const T* a, const Py_ssize_t* roff, const Py_ssize_t* aseg,    \
                        Py_ssize_t sat, const T* b, const Py_ssize_t* bseg,            \
                        Py_ssize_t ldb, T* c, Py_ssize_t ldc, const T* init,           \
                        int accum, int wide) {                                         \
    Py_ssize_t i = 0;                                                                  \
    while (i < m) {                                                                    \
        Py_ssize_t left = m - i;                                                       \
        if (left >= 8 && MRMAX >= 8 && !wide) PYNN_SK_RUN(P##8, 8)                     \
        else if (left >= 6 && wide) PYNN_SK_RUN(P##6w, 6)                              \
        else if (left >= 6) PYNN_SK_RUN(P##6, 6)                                       \
        else if (left >= 4) PYNN_SK_RUN(P##4, 4)                                       \
        else if (left == 3) PYNN_SK_RUN(P##3, 3)                                       \
        else if (left == 2) PYNN_SK_RUN(P##2, 2)                                       \
        else PYNN_SK_RUN(P##1, 1)                                                      \
    }                                                                                  \
}

/* Rows at a fixed stride (row i at a + i*sai, t at + t*sak), one segment, no bias row.
   The reduction runs in blocks of rows of b of at most PYNN_ROWS_B_BYTES, c carrying the
   partial sums between them: each 64-row group sweeps all of b, so a b larger than L2 came
   from L3 once per group. Intel Xeon, one thread, microseconds unblocked / blocked: 64 x
   4096 x 128 910-932 / 548-558, 128 x 512 x 2048 4971-5261 / 2580-2593, 64 x 256 x 1024
   303-310 / 277-280, 64 x 784 x 256 193 / 194 (256 KiB beat 512 KiB and 1 MiB on each).
   c holds exactly the float32 the accumulators held, so an element's sum is the same FMA
   chain, in the same order, blocked or not. Where the level has 32 vector registers
   (WIDE: avx512) the rows go in 6-row blocks of four vectors, as dense.pyx's tiles do: each
   broadcast of a feeds 4 FMAs instead of 2. On a Zen 4 EPYC, one thread, the MLP
   784-256-128-10 chain at batch 64 took 436 -> 292 us (medians of 9 rounds of 50 calls,
   onnxruntime alternated beside it: 311 -> 294 us; 784 -> 256 -> 16: 370 -> 253), and the
   recurrent layers' step products with it (bench_rnn.py, 2 threads, LSTM(128) training at
   64 x 100 x 32: 31.0 -> 26.2 ms, GRU 24.7 -> 21.6). The same bits either way (each
   element's FMA chain does not depend on the block). */
#define PYNN_ROWS_B_BYTES (1 << 18)
#define PYNN_ROWS_GEMM(NAME, TARGET, T, SEG, WIDE)                                     \
static TARGET void NAME(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const T* a,          \
                        Py_ssize_t sai, Py_ssize_t sak, const T* b, Py_ssize_t ldb,    \
                        T* c, Py_ssize_t ldc, int accum) {                             \
    Py_ssize_t roff[64], zero = 0, i0, i, rows, k0, kb;                                \
    Py_ssize_t kc = PYNN_ROWS_B_BYTES / ((Py_ssize_t)sizeof(T) * (n > 0 ? n : 1));     \
    if (kc < 64) kc = 64;                                                              \
    if (k <= kc + kc / 2) kc = k;  /* no short last block */                           \
    for (k0 = 0; k0 < k || k0 == 0; k0 += kc) {                                        \
        kb = k - k0 < kc ? k - k0 : kc;                                                \
        for (i0 = 0; i0 < m; i0 += 64) {                                               \
            rows = m - i0 < 64 ? m - i0 : 64;                                          \
            for (i = 0; i < rows; i++) roff[i] = i * sai;                              \
            SEG(rows, n, 1, kb, a + i0 * sai + k0 * sak, roff, &zero, sak, b + k0 * ldb, \
                &zero, ldb, c + i0 * ldc, ldc, (const T*)0, accum || k0 > 0, WIDE);    \
        }                                                                              \
        if (k == 0) break;                                                             \
    }                                                                                  \
}

/* One level's copy for one dtype: pynn_<isa>_<sfx>_sk{8,6,6w,4,3,2,1}, then
   pynn_<isa>_seg_gemm_<sfx> and pynn_<isa>_rows_gemm_<sfx>. */
#define PYNN_MK_LEVEL(ISA, TARGET, SFX, T, V, VBYTES, MRMAX, WIDE, VFMA, SFMA, MASKED,  \
                      MLOAD, MSTORE)                                                   \
    PYNN_SK(pynn_##ISA##_##SFX##_sk8, TARGET, T, V, VBYTES, 8, 0, VFMA, SFMA, MASKED,  \
            MLOAD, MSTORE)                                                             \
    PYNN_SK(pynn_##ISA##_##SFX##_sk6, TARGET, T, V, VBYTES, 6, 0, VFMA, SFMA, MASKED,  \
            MLOAD, MSTORE)                                                             \
    PYNN_SK(pynn_##ISA##_##SFX##_sk6w, TARGET, T, V, VBYTES, 6, WIDE, VFMA, SFMA,      \
            MASKED, MLOAD, MSTORE)                                                     \
    PYNN_SK(pynn_##ISA##_##SFX##_sk4, TARGET, T, V, VBYTES, 4, 0, VFMA, SFMA, MASKED,  \
            MLOAD, MSTORE)                                                             \
    PYNN_SK(pynn_##ISA##_##SFX##_sk3, TARGET, T, V, VBYTES, 3, 0, VFMA, SFMA, MASKED,  \
            MLOAD, MSTORE)                                                             \
    PYNN_SK(pynn_##ISA##_##SFX##_sk2, TARGET, T, V, VBYTES, 2, 0, VFMA, SFMA, MASKED,  \
            MLOAD, MSTORE)                                                             \
    PYNN_SK(pynn_##ISA##_##SFX##_sk1, TARGET, T, V, VBYTES, 1, 0, VFMA, SFMA, MASKED,  \
            MLOAD, MSTORE)                                                             \
    PYNN_SEG_GEMM(pynn_##ISA##_seg_gemm_##SFX, TARGET, T, pynn_##ISA##_##SFX##_sk, MRMAX) \
    PYNN_ROWS_GEMM(pynn_##ISA##_rows_gemm_##SFX, TARGET, T, pynn_##ISA##_seg_gemm_##SFX, WIDE)

/* Masked loads and stores of the first rem lanes (PYNN_SK_TAIL). The generic level has
   none: its stand-ins are never run (MASKED 0 keeps the scalar loop there). */
#define PYNN_MLOAD_NONE(p, rem) ((void)(p), (void)(rem), (R){0})
#define PYNN_MSTORE_NONE(p, v, rem) ((void)(v))
#if PYNN_ISA_X86
#define PYNN_MLOAD512_F(p, rem) \
    ((pynn_vf64)_mm512_maskz_loadu_ps((__mmask16)((1u << (rem)) - 1u), (p)))
#define PYNN_MSTORE512_F(p, v, rem) \
    _mm512_mask_storeu_ps((p), (__mmask16)((1u << (rem)) - 1u), (__m512)(v))
#define PYNN_MLOAD512_D(p, rem) \
    ((pynn_vd64)_mm512_maskz_loadu_pd((__mmask8)((1u << (rem)) - 1u), (p)))
#define PYNN_MSTORE512_D(p, v, rem) \
    _mm512_mask_storeu_pd((p), (__mmask8)((1u << (rem)) - 1u), (__m512d)(v))
/* AVX2 masks are vectors: rem all-ones lanes read from a window of this row of ints. */
static const int pynn_lane_mask_i32[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                           0, 0, 0, 0, 0, 0, 0, 0};
static const long long pynn_lane_mask_i64[8] = {-1, -1, -1, -1, 0, 0, 0, 0};
#define PYNN_MASK256_F(rem) _mm256_loadu_si256((const __m256i*)(pynn_lane_mask_i32 + 8 - (rem)))
#define PYNN_MASK256_D(rem) _mm256_loadu_si256((const __m256i*)(pynn_lane_mask_i64 + 4 - (rem)))
#define PYNN_MLOAD256_F(p, rem) ((pynn_vf32)_mm256_maskload_ps((p), PYNN_MASK256_F(rem)))
#define PYNN_MSTORE256_F(p, v, rem) _mm256_maskstore_ps((p), PYNN_MASK256_F(rem), (__m256)(v))
#define PYNN_MLOAD256_D(p, rem) ((pynn_vd32)_mm256_maskload_pd((p), PYNN_MASK256_D(rem)))
#define PYNN_MSTORE256_D(p, v, rem) \
    _mm256_maskstore_pd((p), PYNN_MASK256_D(rem), (__m256d)(v))
#endif

/* The generic copy uses vector_size(16) types: SSE2 on every x86-64, and GCC lowers them to
   scalars elsewhere. */
PYNN_MK_LEVEL(generic, PYNN_TARGET_GENERIC, f, float, pynn_vf16, 16, 6, 0, PYNN_MULADD,
              PYNN_MULADD, 0, PYNN_MLOAD_NONE, PYNN_MSTORE_NONE)
PYNN_MK_LEVEL(generic, PYNN_TARGET_GENERIC, d, double, pynn_vd16, 16, 6, 0, PYNN_MULADD,
              PYNN_MULADD, 0, PYNN_MLOAD_NONE, PYNN_MSTORE_NONE)
#if PYNN_ISA_X86
PYNN_MK_LEVEL(avx2, PYNN_TARGET_AVX2, f, float, pynn_vf32, 32, 6, 0, PYNN_VFMA256_F,
              PYNN_SFMA_F, 1, PYNN_MLOAD256_F, PYNN_MSTORE256_F)
PYNN_MK_LEVEL(avx2, PYNN_TARGET_AVX2, d, double, pynn_vd32, 32, 6, 0, PYNN_VFMA256_D,
              PYNN_SFMA_D, 1, PYNN_MLOAD256_D, PYNN_MSTORE256_D)
PYNN_MK_LEVEL(avx512, PYNN_TARGET_AVX512, f, float, pynn_vf64, 64, 8, 1, PYNN_VFMA512_F,
              PYNN_SFMA_F, 1, PYNN_MLOAD512_F, PYNN_MSTORE512_F)
PYNN_MK_LEVEL(avx512, PYNN_TARGET_AVX512, d, double, pynn_vd64, 64, 8, 1, PYNN_VFMA512_D,
              PYNN_SFMA_D, 1, PYNN_MLOAD512_D, PYNN_MSTORE512_D)
#endif

/* This module's choice (see the top of the file). */
typedef struct {
    int level, vbytes, mr_max, nc_f, nc_d;
    void (*seg_gemm_f)(Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, const float*,
                       const Py_ssize_t*, const Py_ssize_t*, Py_ssize_t, const float*,
                       const Py_ssize_t*, Py_ssize_t, float*, Py_ssize_t, const float*,
                       int, int);
    void (*seg_gemm_d)(Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, const double*,
                       const Py_ssize_t*, const Py_ssize_t*, Py_ssize_t, const double*,
                       const Py_ssize_t*, Py_ssize_t, double*, Py_ssize_t, const double*,
                       int, int);
    void (*rows_gemm_f)(Py_ssize_t, Py_ssize_t, Py_ssize_t, const float*, Py_ssize_t,
                        Py_ssize_t, const float*, Py_ssize_t, float*, Py_ssize_t, int);
    void (*rows_gemm_d)(Py_ssize_t, Py_ssize_t, Py_ssize_t, const double*, Py_ssize_t,
                        Py_ssize_t, const double*, Py_ssize_t, double*, Py_ssize_t, int);
} pynn_mk_table;
static pynn_mk_table pynn_mk;

#define PYNN_MK_SET(ISA, LEVEL, VBYTES, MRMAX)                                         \
    { pynn_mk_table t = {LEVEL, VBYTES, MRMAX, 2 * VBYTES / 4, 2 * VBYTES / 8,         \
                         pynn_##ISA##_seg_gemm_f, pynn_##ISA##_seg_gemm_d,             \
                         pynn_##ISA##_rows_gemm_f, pynn_##ISA##_rows_gemm_d};          \
      pynn_mk = t; }

/* 0, or -1 when this CPU cannot run the level (the table is then unchanged). */
static int pynn_mk_select(int level) {
    if (!pynn_isa_available(level)) return -1;
    switch (level) {
#if PYNN_ISA_X86
    case PYNN_ISA_AVX512: PYNN_MK_SET(avx512, PYNN_ISA_AVX512, 64, 8) break;
    case PYNN_ISA_AVX2: PYNN_MK_SET(avx2, PYNN_ISA_AVX2, 32, 6) break;
#endif
    default: PYNN_MK_SET(generic, PYNN_ISA_GENERIC, 16, 6) break;
    }
    return 0;
}

static inline int pynn_mk_level(void) { return pynn_mk.level; }

/* At load: PYNN_KERNEL's level when this CPU has it, else the best one. (An unknown or
   unavailable PYNN_KERNEL is reported by pynn/_config.py, which raises at import.) */
__attribute__((constructor)) static void pynn_mk_init(void) {
    int want = pynn_isa_requested();
    if (want < 0 || pynn_mk_select(want) != 0) pynn_mk_select(pynn_isa_best());
}

/* The entry points of every caller: same names and signatures in every build. */
static void pynn_seg_gemm_f(Py_ssize_t m, Py_ssize_t n, Py_ssize_t nseg, Py_ssize_t tn,
                            const float* a, const Py_ssize_t* roff, const Py_ssize_t* aseg,
                            Py_ssize_t sat, const float* b, const Py_ssize_t* bseg,
                            Py_ssize_t ldb, float* c, Py_ssize_t ldc, const float* init,
                            int accum, int wide) {
    pynn_mk.seg_gemm_f(m, n, nseg, tn, a, roff, aseg, sat, b, bseg, ldb, c, ldc, init,
                       accum, wide);
}
static void pynn_seg_gemm_d(Py_ssize_t m, Py_ssize_t n, Py_ssize_t nseg, Py_ssize_t tn,
                            const double* a, const Py_ssize_t* roff, const Py_ssize_t* aseg,
                            Py_ssize_t sat, const double* b, const Py_ssize_t* bseg,
                            Py_ssize_t ldb, double* c, Py_ssize_t ldc, const double* init,
                            int accum, int wide) {
    pynn_mk.seg_gemm_d(m, n, nseg, tn, a, roff, aseg, sat, b, bseg, ldb, c, ldc, init,
                       accum, wide);
}
static void pynn_rows_gemm_f(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float* a,
                             Py_ssize_t sai, Py_ssize_t sak, const float* b, Py_ssize_t ldb,
                             float* c, Py_ssize_t ldc, int accum) {
    pynn_mk.rows_gemm_f(m, n, k, a, sai, sak, b, ldb, c, ldc, accum);
}
static void pynn_rows_gemm_d(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const double* a,
                             Py_ssize_t sai, Py_ssize_t sak, const double* b, Py_ssize_t ldb,
                             double* c, Py_ssize_t ldc, int accum) {
    pynn_mk.rows_gemm_d(m, n, k, a, sai, sak, b, ldb, c, ldc, accum);
}

/* The chosen level's vector width in bytes, most rows per block, and columns per packed
   panel (conv forward, recurrent layers: the two vectors of one block). */
#define PYNN_VBYTES (pynn_mk.vbytes)
#define PYNN_MR_MAX (pynn_mk.mr_max)
#define PYNN_NC_F (pynn_mk.nc_f)
#define PYNN_NC_D (pynn_mk.nc_d)
/* Compile-time bounds of those for every level, for fixed-size buffers. */
#define PYNN_VBYTES_LIMIT 64
#define PYNN_MR_LIMIT 8
#define PYNN_NC_F_LIMIT 32
#define PYNN_NC_D_LIMIT 16

/* b (k rows x n columns, row stride ldb) packed into column panels of nc columns: panel p
 * holds columns [p*nc, p*nc + w) of every row (w = nc but in the last panel), contiguous
 * with row stride w, at out + p*nc*k. The microkernel then reads one sequential stream per
 * block; reading the rows of b in place (one cache line per row, 4*ldb bytes apart) cost
 * the conv forward ~13% on Zen 3. A plain copy: one build of it serves every level. */
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
