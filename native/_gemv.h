/* One-row matrix products for batch-1 inference (native/infer.pyx, issue 16).
 *
 * Legend: C input features, U units; x (C,), k (C, U) row-major as Keras stores a Dense
 * kernel (leading dimension ldk >= U), y (U,).
 *
 *   pynn_gemv_f(c, u, x, k, ldk, y):  y[j] = sum over i < c of x[i] * k[i*ldk + j]
 *   pynn_gemv_into_f(c, u, x, k, ldk, y, accum):  the same, the sum starting from y[j]
 *       itself when accum (the register-blocked rows product's accumulate: one chain of
 *       FMAs from y[j] over i in order, so a one-row recurrence step keeps its bits)
 *
 * Why not BLAS: sgemm with M = 1 packs its B panel (the whole kernel: read and written once
 * more per call) before multiplying, so the 4096x128 Dense of the small CNN spent 40 us of a
 * 42 us call moving 2 MiB twice. Here Keras's layout is already the streaming one: a block of
 * up to 256 units lives in 16 zmm accumulators while the kernel's rows go by once, in memory
 * order (one sequential stream when the block is the whole row), each x[i] broadcast once.
 * No packing, no workspace, nothing to prepare.
 *
 * Each y[j] is summed over i in order with one fused multiply-add per term in every copy,
 * so the result does not depend on the block it fell in (nor on U). The level follows the
 * microkernel's (native/_microkernel.h: PYNN_KERNEL, pynn.set_kernel): avx512 (16-float
 * vectors, 16 accumulators), avx2 (8-float vectors, 12 accumulators: 16 ymm registers),
 * generic (plain C that GCC vectorizes, separate multiply and add).
 */
#ifndef PYNN_GEMV_H
#define PYNN_GEMV_H

#include "_microkernel.h"

#if PYNN_ISA_X86
/* One block of nv (compile-time constant after inlining) vectors; the last one masked to
   `tail` lanes so any U needs no scalar loop. */
static inline __attribute__((always_inline)) PYNN_TARGET_AVX512 void
pynn_gemv_block_avx512(Py_ssize_t c, const float* x, const float* k, Py_ssize_t ldk,
                       float* y, const int nv, __mmask16 tail, int accum, const int* idx) {
    __m512 acc[16];
    Py_ssize_t t, i;
    int v;
    if (accum) {
        for (v = 0; v < nv - 1; v++) acc[v] = _mm512_loadu_ps(y + 16 * v);
        acc[nv - 1] = _mm512_maskz_loadu_ps(tail, y + 16 * (nv - 1));
    } else {
        for (v = 0; v < nv; v++) acc[v] = _mm512_setzero_ps();
    }
    for (t = 0; t < c; t++) {
        i = idx ? idx[t] : t;  /* (idx: a literal NULL or not, after inlining) */
        const float* row = k + i * ldk;
        __m512 xi = _mm512_set1_ps(x[i]);
        for (v = 0; v < nv - 1; v++)
            acc[v] = _mm512_fmadd_ps(xi, _mm512_loadu_ps(row + 16 * v), acc[v]);
        acc[nv - 1] = _mm512_fmadd_ps(
            xi, _mm512_maskz_loadu_ps(tail, row + 16 * (nv - 1)), acc[nv - 1]);
    }
    for (v = 0; v < nv - 1; v++) _mm512_storeu_ps(y + 16 * v, acc[v]);
    _mm512_mask_storeu_ps(y + 16 * (nv - 1), tail, acc[nv - 1]);
}

#define PYNN_GEMV_AVX512_BODY(IDX)                                                         \
    Py_ssize_t j0;                                                                         \
    for (j0 = 0; j0 < u; j0 += 256) {                                                      \
        Py_ssize_t w = u - j0 < 256 ? u - j0 : 256;                                        \
        int nv = (int)((w + 15) / 16);                                                     \
        int rem = (int)(w - 16 * (nv - 1));                                                \
        __mmask16 tail = (__mmask16)(rem == 16 ? 0xFFFF : (1u << rem) - 1);                \
        const float* kb = k + j0;                                                          \
        float* yb = y + j0;                                                                \
        switch (nv) {                                                                      \
        PYNN_GEMV_CASE(1, IDX) PYNN_GEMV_CASE(2, IDX) PYNN_GEMV_CASE(3, IDX)               \
        PYNN_GEMV_CASE(4, IDX) PYNN_GEMV_CASE(5, IDX) PYNN_GEMV_CASE(6, IDX)               \
        PYNN_GEMV_CASE(7, IDX) PYNN_GEMV_CASE(8, IDX) PYNN_GEMV_CASE(9, IDX)               \
        PYNN_GEMV_CASE(10, IDX) PYNN_GEMV_CASE(11, IDX) PYNN_GEMV_CASE(12, IDX)            \
        PYNN_GEMV_CASE(13, IDX) PYNN_GEMV_CASE(14, IDX) PYNN_GEMV_CASE(15, IDX)            \
        PYNN_GEMV_CASE(16, IDX)                                                            \
        }                                                                                  \
    }
#define PYNN_GEMV_CASE(N, IDX) \
        case N: pynn_gemv_block_avx512(c, x, kb, ldk, yb, N, tail, accum, IDX); break;

static PYNN_TARGET_AVX512 void
pynn_gemv_avx512_f(Py_ssize_t c, Py_ssize_t u, const float* x, const float* k,
                   Py_ssize_t ldk, float* y, int accum) {
    PYNN_GEMV_AVX512_BODY(NULL)
}

/* The rows idx[0 .. c) of x and k only (ascending): a GEMV skipping x's zeros. */
static PYNN_TARGET_AVX512 void
pynn_gemv_avx512_idx_f(Py_ssize_t c, const int* idx, Py_ssize_t u, const float* x,
                       const float* k, Py_ssize_t ldk, float* y) {
    const int accum = 0;
    PYNN_GEMV_AVX512_BODY(idx)
}
#undef PYNN_GEMV_CASE
#undef PYNN_GEMV_AVX512_BODY

/* idx[0 .. m) = the positions of x's nonzero (or NaN) entries, ascending; returns m. */
static PYNN_TARGET_AVX512 Py_ssize_t
pynn_nonzero_avx512(Py_ssize_t c, const float* x, int* idx) {
    __m512i at = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i step = _mm512_set1_epi32(16);
    Py_ssize_t i = 0, m = 0;
    for (; i + 16 <= c; i += 16) {
        __mmask16 nz = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + i), _mm512_setzero_ps(),
                                          _CMP_NEQ_UQ);
        _mm512_mask_compressstoreu_epi32(idx + m, nz, at);
        m += __builtin_popcount((unsigned)nz);
        at = _mm512_add_epi32(at, step);
    }
    for (; i < c; i++) {
        idx[m] = (int)i;
        m += !(x[i] == 0.0f);
    }
    return m;
}

static inline __attribute__((always_inline)) PYNN_TARGET_AVX2 void
pynn_gemv_block_avx2(Py_ssize_t c, const float* x, const float* k, Py_ssize_t ldk,
                     float* y, const int nv, __m256i tail, int accum, const int* idx) {
    __m256 acc[12];
    Py_ssize_t t, i;
    int v;
    if (accum) {
        for (v = 0; v < nv - 1; v++) acc[v] = _mm256_loadu_ps(y + 8 * v);
        acc[nv - 1] = _mm256_maskload_ps(y + 8 * (nv - 1), tail);
    } else {
        for (v = 0; v < nv; v++) acc[v] = _mm256_setzero_ps();
    }
    for (t = 0; t < c; t++) {
        i = idx ? idx[t] : t;
        const float* row = k + i * ldk;
        __m256 xi = _mm256_set1_ps(x[i]);
        for (v = 0; v < nv - 1; v++)
            acc[v] = _mm256_fmadd_ps(xi, _mm256_loadu_ps(row + 8 * v), acc[v]);
        acc[nv - 1] = _mm256_fmadd_ps(
            xi, _mm256_maskload_ps(row + 8 * (nv - 1), tail), acc[nv - 1]);
    }
    for (v = 0; v < nv - 1; v++) _mm256_storeu_ps(y + 8 * v, acc[v]);
    _mm256_maskstore_ps(y + 8 * (nv - 1), tail, acc[nv - 1]);
}

#define PYNN_GEMV_AVX2_BODY(IDX)                                                           \
    Py_ssize_t j0;                                                                         \
    for (j0 = 0; j0 < u; j0 += 96) {                                                       \
        Py_ssize_t w = u - j0 < 96 ? u - j0 : 96;                                          \
        int nv = (int)((w + 7) / 8);                                                       \
        int rem = (int)(w - 8 * (nv - 1)), l;                                              \
        int lanes[8];                                                                      \
        for (l = 0; l < 8; l++) lanes[l] = l < rem ? -1 : 0;                               \
        __m256i tail = _mm256_loadu_si256((const __m256i*)lanes);                          \
        const float* kb = k + j0;                                                          \
        float* yb = y + j0;                                                                \
        switch (nv) {                                                                      \
        PYNN_GEMV_CASE(1, IDX) PYNN_GEMV_CASE(2, IDX) PYNN_GEMV_CASE(3, IDX)               \
        PYNN_GEMV_CASE(4, IDX) PYNN_GEMV_CASE(5, IDX) PYNN_GEMV_CASE(6, IDX)               \
        PYNN_GEMV_CASE(7, IDX) PYNN_GEMV_CASE(8, IDX) PYNN_GEMV_CASE(9, IDX)               \
        PYNN_GEMV_CASE(10, IDX) PYNN_GEMV_CASE(11, IDX) PYNN_GEMV_CASE(12, IDX)            \
        }                                                                                  \
    }
#define PYNN_GEMV_CASE(N, IDX) \
        case N: pynn_gemv_block_avx2(c, x, kb, ldk, yb, N, tail, accum, IDX); break;

static PYNN_TARGET_AVX2 void
pynn_gemv_avx2_f(Py_ssize_t c, Py_ssize_t u, const float* x, const float* k,
                 Py_ssize_t ldk, float* y, int accum) {
    PYNN_GEMV_AVX2_BODY(NULL)
}

static PYNN_TARGET_AVX2 void
pynn_gemv_avx2_idx_f(Py_ssize_t c, const int* idx, Py_ssize_t u, const float* x,
                     const float* k, Py_ssize_t ldk, float* y) {
    const int accum = 0;
    PYNN_GEMV_AVX2_BODY(idx)
}
#undef PYNN_GEMV_CASE
#undef PYNN_GEMV_AVX2_BODY
#endif

/* 64 units per block: 16 SSE registers of accumulators, the rest streamed. */
static PYNN_TARGET_GENERIC void
pynn_gemv_generic_f(Py_ssize_t c, Py_ssize_t u, const float* x, const float* k,
                    Py_ssize_t ldk, float* y, int accum) {
    Py_ssize_t j0, i, j;
    for (j0 = 0; j0 < u; j0 += 64) {
        Py_ssize_t w = u - j0 < 64 ? u - j0 : 64;
        float acc[64];
        for (j = 0; j < w; j++) acc[j] = accum ? y[j0 + j] : 0.0f;
        for (i = 0; i < c; i++) {
            const float* row = k + i * ldk + j0;
            float xi = x[i];
            for (j = 0; j < w; j++) acc[j] = PYNN_MULADD(xi, row[j], acc[j]);
        }
        for (j = 0; j < w; j++) y[j0 + j] = acc[j];
    }
}

static void pynn_gemv_into_f(Py_ssize_t c, Py_ssize_t u, const float* x, const float* k,
                             Py_ssize_t ldk, float* y, int accum) {
    if (c <= 0) {
        Py_ssize_t j;
        if (!accum)
            for (j = 0; j < u; j++) y[j] = 0.0f;
        return;
    }
    switch (pynn_mk.level) {
#if PYNN_ISA_X86
    case PYNN_ISA_AVX512: pynn_gemv_avx512_f(c, u, x, k, ldk, y, accum); return;
    case PYNN_ISA_AVX2: pynn_gemv_avx2_f(c, u, x, k, ldk, y, accum); return;
#endif
    default: pynn_gemv_generic_f(c, u, x, k, ldk, y, accum); return;
    }
}

static void pynn_gemv_f(Py_ssize_t c, Py_ssize_t u, const float* x, const float* k,
                        Py_ssize_t ldk, float* y) {
    pynn_gemv_into_f(c, u, x, k, ldk, y, 0);
}

/* pynn_gemv_f for an x with zeros (a relu layer's output, pooled or not): the kernel rows of
 * x's zero entries are not read. Each y[j] is the same chain of FMAs over the other rows in
 * order; a skipped term x[i] * k[i][j] = +-0 leaves a nonzero sum as it is, so y is
 * pynn_gemv_f's to the sign of an exact zero, provided no kernel entry is infinite or NaN
 * (0 * inf is NaN: the caller checks its kernels once). Rows past PYNN_GEMV_SKIP_MAX, the
 * generic level, or x with under 1/16 zeros take pynn_gemv_f (the index pass is the cost:
 * ~c/4 cycles with AVX-512's compress, ~c with AVX2). */
#define PYNN_GEMV_SKIP_MAX 8192

static void pynn_gemv_skip_f(Py_ssize_t c, Py_ssize_t u, const float* x, const float* k,
                             Py_ssize_t ldk, float* y, int* idx) {
#if PYNN_ISA_X86
    Py_ssize_t m, i;
    if (c > 0 && c <= PYNN_GEMV_SKIP_MAX && pynn_mk.level == PYNN_ISA_AVX512) {
        m = pynn_nonzero_avx512(c, x, idx);
        if (m < c - c / 16) {
            pynn_gemv_avx512_idx_f(m, idx, u, x, k, ldk, y);
            return;
        }
    } else if (c > 0 && c <= PYNN_GEMV_SKIP_MAX && pynn_mk.level == PYNN_ISA_AVX2) {
        for (m = 0, i = 0; i < c; i++) {
            idx[m] = (int)i;
            m += !(x[i] == 0.0f);
        }
        if (m < c - c / 16) {
            pynn_gemv_avx2_idx_f(m, idx, u, x, k, ldk, y);
            return;
        }
    }
#endif
    pynn_gemv_f(c, u, x, k, ldk, y);
}

/* A few rows at once: y[r][j] = sum over i < c of x[r*ldx + i] * k[i*ldk + j] for r < n
 * (1 <= n <= PYNN_GEMV_ROWS_MAX), each y[r][j] summed over i in order with one FMA per term
 * as pynn_gemv_f sums it (and the rows product, native/_microkernel.h): the same bits. The
 * kernel streams by once for all n rows, in Keras's layout, no packed copy: a block of
 * columns holds n x nv accumulators (avx512 16, avx2 12 of the 16 ymm), each kernel vector
 * loaded once and fed to n FMAs. The rows product packs nothing either, but its 6-row blocks
 * run 2-row blocks here and walk a packed copy in column strips: the small CNN's
 * 4096 -> 128 at batch 2 took 74 us on Zen 3, the one-row GEMV 45. */
#define PYNN_GEMV_ROWS_MAX 4

#if PYNN_ISA_X86
static inline __attribute__((always_inline)) PYNN_TARGET_AVX512 void
pynn_gemv_rows_block_avx512(Py_ssize_t c, const float* x, Py_ssize_t ldx, const float* k,
                            Py_ssize_t ldk, float* y, Py_ssize_t ldy, const int n,
                            const int nv, __mmask16 tail) {
    __m512 acc[PYNN_GEMV_ROWS_MAX][8];
    Py_ssize_t i;
    int r, v;
    for (r = 0; r < n; r++) for (v = 0; v < nv; v++) acc[r][v] = _mm512_setzero_ps();
    for (i = 0; i < c; i++) {
        const float* row = k + i * ldk;
        __m512 kv[8];
        for (v = 0; v < nv - 1; v++) kv[v] = _mm512_loadu_ps(row + 16 * v);
        kv[nv - 1] = _mm512_maskz_loadu_ps(tail, row + 16 * (nv - 1));
        for (r = 0; r < n; r++) {
            __m512 xi = _mm512_set1_ps(x[r * ldx + i]);
            for (v = 0; v < nv; v++) acc[r][v] = _mm512_fmadd_ps(xi, kv[v], acc[r][v]);
        }
    }
    for (r = 0; r < n; r++) {
        for (v = 0; v < nv - 1; v++) _mm512_storeu_ps(y + r * ldy + 16 * v, acc[r][v]);
        _mm512_mask_storeu_ps(y + r * ldy + 16 * (nv - 1), tail, acc[r][nv - 1]);
    }
}

static PYNN_TARGET_AVX512 void
pynn_gemv_rows_avx512_f(Py_ssize_t n, Py_ssize_t c, Py_ssize_t u, const float* x,
                        Py_ssize_t ldx, const float* k, Py_ssize_t ldk, float* y,
                        Py_ssize_t ldy) {
    /* 16 accumulators: 8 vectors for 2 rows, 5 for 3, 4 for 4 (1 row: pynn_gemv_f) */
    const int per = n == 2 ? 8 : n == 3 ? 5 : 4;
    Py_ssize_t j0;
    for (j0 = 0; j0 < u; j0 += 16 * per) {
        Py_ssize_t w = u - j0 < 16 * per ? u - j0 : 16 * per;
        int nv = (int)((w + 15) / 16);
        int rem = (int)(w - 16 * (nv - 1));
        __mmask16 tail = (__mmask16)(rem == 16 ? 0xFFFF : (1u << rem) - 1);
#define PYNN_GEMV_ROWS_CASE(R, N) \
        case N: pynn_gemv_rows_block_avx512(c, x, ldx, k + j0, ldk, y + j0, ldy, R, N, tail); \
            break;
        if (n == 2) {
            switch (nv) { PYNN_GEMV_ROWS_CASE(2, 1) PYNN_GEMV_ROWS_CASE(2, 2)
                PYNN_GEMV_ROWS_CASE(2, 3) PYNN_GEMV_ROWS_CASE(2, 4) PYNN_GEMV_ROWS_CASE(2, 5)
                PYNN_GEMV_ROWS_CASE(2, 6) PYNN_GEMV_ROWS_CASE(2, 7) PYNN_GEMV_ROWS_CASE(2, 8) }
        } else if (n == 3) {
            switch (nv) { PYNN_GEMV_ROWS_CASE(3, 1) PYNN_GEMV_ROWS_CASE(3, 2)
                PYNN_GEMV_ROWS_CASE(3, 3) PYNN_GEMV_ROWS_CASE(3, 4) PYNN_GEMV_ROWS_CASE(3, 5) }
        } else {
            switch (nv) { PYNN_GEMV_ROWS_CASE(4, 1) PYNN_GEMV_ROWS_CASE(4, 2)
                PYNN_GEMV_ROWS_CASE(4, 3) PYNN_GEMV_ROWS_CASE(4, 4) }
        }
#undef PYNN_GEMV_ROWS_CASE
    }
}

static inline __attribute__((always_inline)) PYNN_TARGET_AVX2 void
pynn_gemv_rows_block_avx2(Py_ssize_t c, const float* x, Py_ssize_t ldx, const float* k,
                          Py_ssize_t ldk, float* y, Py_ssize_t ldy, const int n,
                          const int nv, __m256i tail) {
    __m256 acc[PYNN_GEMV_ROWS_MAX][6];
    Py_ssize_t i;
    int r, v;
    for (r = 0; r < n; r++) for (v = 0; v < nv; v++) acc[r][v] = _mm256_setzero_ps();
    for (i = 0; i < c; i++) {
        const float* row = k + i * ldk;
        __m256 kv[6];
        for (v = 0; v < nv - 1; v++) kv[v] = _mm256_loadu_ps(row + 8 * v);
        kv[nv - 1] = _mm256_maskload_ps(row + 8 * (nv - 1), tail);
        for (r = 0; r < n; r++) {
            __m256 xi = _mm256_set1_ps(x[r * ldx + i]);
            for (v = 0; v < nv; v++) acc[r][v] = _mm256_fmadd_ps(xi, kv[v], acc[r][v]);
        }
    }
    for (r = 0; r < n; r++) {
        for (v = 0; v < nv - 1; v++) _mm256_storeu_ps(y + r * ldy + 8 * v, acc[r][v]);
        _mm256_maskstore_ps(y + r * ldy + 8 * (nv - 1), tail, acc[r][nv - 1]);
    }
}

static PYNN_TARGET_AVX2 void
pynn_gemv_rows_avx2_f(Py_ssize_t n, Py_ssize_t c, Py_ssize_t u, const float* x,
                      Py_ssize_t ldx, const float* k, Py_ssize_t ldk, float* y,
                      Py_ssize_t ldy) {
    /* 12 accumulators: 6 vectors for 2 rows, 4 for 3, 3 for 4 */
    const int per = n == 2 ? 6 : n == 3 ? 4 : 3;
    Py_ssize_t j0;
    for (j0 = 0; j0 < u; j0 += 8 * per) {
        Py_ssize_t w = u - j0 < 8 * per ? u - j0 : 8 * per;
        int nv = (int)((w + 7) / 8);
        int rem = (int)(w - 8 * (nv - 1)), l;
        int lanes[8];
        for (l = 0; l < 8; l++) lanes[l] = l < rem ? -1 : 0;
        __m256i tail = _mm256_loadu_si256((const __m256i*)lanes);
#define PYNN_GEMV_ROWS_CASE(R, N) \
        case N: pynn_gemv_rows_block_avx2(c, x, ldx, k + j0, ldk, y + j0, ldy, R, N, tail); \
            break;
        if (n == 2) {
            switch (nv) { PYNN_GEMV_ROWS_CASE(2, 1) PYNN_GEMV_ROWS_CASE(2, 2)
                PYNN_GEMV_ROWS_CASE(2, 3) PYNN_GEMV_ROWS_CASE(2, 4) PYNN_GEMV_ROWS_CASE(2, 5)
                PYNN_GEMV_ROWS_CASE(2, 6) }
        } else if (n == 3) {
            switch (nv) { PYNN_GEMV_ROWS_CASE(3, 1) PYNN_GEMV_ROWS_CASE(3, 2)
                PYNN_GEMV_ROWS_CASE(3, 3) PYNN_GEMV_ROWS_CASE(3, 4) }
        } else {
            switch (nv) { PYNN_GEMV_ROWS_CASE(4, 1) PYNN_GEMV_ROWS_CASE(4, 2)
                PYNN_GEMV_ROWS_CASE(4, 3) }
        }
#undef PYNN_GEMV_ROWS_CASE
    }
}
#endif

/* n rows (1 <= n <= PYNN_GEMV_ROWS_MAX) of y (row stride ldy) from x (row stride ldx).
   The generic level runs pynn_gemv_f per row: its bits are the GEMV's, which there differ
   from the rows product's (separate multiply and add, summed in other orders). */
static void pynn_gemv_rows_f(Py_ssize_t n, Py_ssize_t c, Py_ssize_t u, const float* x,
                             Py_ssize_t ldx, const float* k, Py_ssize_t ldk, float* y,
                             Py_ssize_t ldy) {
    Py_ssize_t r;
    if (n > 1 && c > 0) {
        switch (pynn_mk.level) {
#if PYNN_ISA_X86
        case PYNN_ISA_AVX512: pynn_gemv_rows_avx512_f(n, c, u, x, ldx, k, ldk, y, ldy); return;
        case PYNN_ISA_AVX2: pynn_gemv_rows_avx2_f(n, c, u, x, ldx, k, ldk, y, ldy); return;
#endif
        default: break;
        }
    }
    for (r = 0; r < n; r++) pynn_gemv_f(c, u, x + r * ldx, k, ldk, y + r * ldy);
}

#endif
