/* Row loops of native/sparse.pyx's sparse_conv2d_forward (issue 18), one body for float and
 * double.
 *
 * An output row (sample b, row oy) reads KH input rows. They are first copied channel-major
 * into `xt`, each channel's padded columns split by phase modulo the stride SW,
 *     xt[((kh C + c) SW + phase) Q + q] = column q SW + phase of input row kh (0 outside),
 * so the columns one tap reads for consecutive outputs are consecutive for any stride. Then
 * for each filter and each run of PYNN_SPARSE_CH outputs, four accumulator vectors (held in
 * registers: the run is a constant length) add value * that run of columns for each of the
 * filter's nonzeros in turn; their sums, stored to `acc` (F, CH), go into y (WO, F) once
 * the run's filters are done. An accumulator row in
 * memory, updated per nonzero, cost a store-to-load round trip each time: 5.7 ns per
 * nonzero and output row (16 x 16 x 64 -> 64), where this takes about one cycle.
 *
 * The nonzeros are first made clean (pynn_sparse_conv_prepare_*): offsets clamped, indices
 * outside the kernel's KH KW C taps dropped, each kept tap turned into its xt offset. */
#ifndef PYNN_SPARSE_H
#define PYNN_SPARSE_H
#include <stddef.h>
#include <string.h>

#define PYNN_SPARSE_CH 16 /* outputs per register run */

#define PYNN_SPARSE_CONV(T, SUFFIX)                                                          \
/* indptr (F+1) / indices / values (nnz) -> clean_ptr (F+1), offsets and clean values */     \
static inline void pynn_sparse_conv_prepare_##SUFFIX(                                       \
    const int *indptr, const int *indices, const T *values, ptrdiff_t nnz, ptrdiff_t f,     \
    ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t c, ptrdiff_t dw, ptrdiff_t sw, ptrdiff_t q,       \
    ptrdiff_t *clean_ptr, ptrdiff_t *offsets, T *clean_values)                              \
{                                                                                           \
    ptrdiff_t kept = 0;                                                                     \
    clean_ptr[0] = 0;                                                                       \
    for (ptrdiff_t u = 0; u < f; ++u) {                                                     \
        /* offsets outside [0, nnz] are clamped, as the Dense kernel's */                   \
        const ptrdiff_t lo = indptr[u] < 0 ? 0 : (indptr[u] > nnz ? nnz : indptr[u]);       \
        const ptrdiff_t hi = indptr[u + 1] < lo ? lo                                        \
                             : (indptr[u + 1] > nnz ? nnz : indptr[u + 1]);                 \
        for (ptrdiff_t k = lo; k < hi; ++k) {                                               \
            const ptrdiff_t t = indices[k];                                                 \
            if (t < 0 || t >= kh * kw * c)                                                  \
                continue;                                                                   \
            const ptrdiff_t i = t / (kw * c), j = (t / c) % kw, ch = t % c;                 \
            const ptrdiff_t col = j * dw; /* the tap's column for output 0 */              \
            offsets[kept] = ((i * c + ch) * sw + col % sw) * q + col / sw;                  \
            clean_values[kept++] = values[k];                                               \
        }                                                                                   \
        clean_ptr[u + 1] = kept;                                                            \
    }                                                                                       \
}                                                                                           \
                                                                                            \
static inline void pynn_sparse_conv_row_##SUFFIX(                                           \
    const T *restrict x, T *restrict xt, T *restrict acc, T *restrict y,                    \
    const ptrdiff_t *restrict ptr,                                                          \
    const ptrdiff_t *restrict offsets, const T *restrict values, ptrdiff_t b, ptrdiff_t oy, \
    ptrdiff_t h, ptrdiff_t w, ptrdiff_t c, ptrdiff_t kh, ptrdiff_t dh, ptrdiff_t sh,        \
    ptrdiff_t sw, ptrdiff_t pt, ptrdiff_t pl, ptrdiff_t q, ptrdiff_t wo, ptrdiff_t f)       \
{                                                                                           \
    const ptrdiff_t cols = sw * q;                                                          \
    for (ptrdiff_t i = 0; i < kh; ++i) {                                                    \
        const ptrdiff_t iy = oy * sh - pt + i * dh;                                         \
        T *restrict rows = xt + i * c * cols;                                               \
        if (iy < 0 || iy >= h) {                                                            \
            memset(rows, 0, (size_t)(c * cols) * sizeof(T));                                 \
            continue;                                                                       \
        }                                                                                   \
        const T *restrict xr = x + (b * h + iy) * w * c;                                    \
        for (ptrdiff_t ip = 0; ip < cols; ++ip) {                                           \
            const ptrdiff_t ix = ip - pl, at = (ip % sw) * q + ip / sw;                     \
            if (ix < 0 || ix >= w) {                                                        \
                for (ptrdiff_t ch = 0; ch < c; ++ch)                                        \
                    rows[ch * cols + at] = 0;                                               \
            } else {                                                                        \
                for (ptrdiff_t ch = 0; ch < c; ++ch)                                        \
                    rows[ch * cols + at] = xr[ix * c + ch];                                 \
            }                                                                               \
        }                                                                                   \
    }                                                                                       \
    for (ptrdiff_t ox0 = 0; ox0 < wo; ox0 += PYNN_SPARSE_CH) {                              \
        const T *restrict base = xt + ox0;                                                  \
        for (ptrdiff_t u = 0; u < f; ++u) {                                                 \
            T s0[PYNN_SPARSE_CH] = {0}, s1[PYNN_SPARSE_CH] = {0};                           \
            T s2[PYNN_SPARSE_CH] = {0}, s3[PYNN_SPARSE_CH] = {0};                           \
            const ptrdiff_t hi = ptr[u + 1];                                                \
            ptrdiff_t k = ptr[u];                                                           \
            for (; k + 4 <= hi; k += 4) {                                                   \
                const T *restrict p0 = base + offsets[k], *restrict p1 = base + offsets[k + 1]; \
                const T *restrict p2 = base + offsets[k + 2], *restrict p3 = base + offsets[k + 3]; \
                const T v0 = values[k], v1 = values[k + 1], v2 = values[k + 2];             \
                const T v3 = values[k + 3];                                                 \
                for (int j = 0; j < PYNN_SPARSE_CH; ++j) {                                  \
                    s0[j] += v0 * p0[j];                                                    \
                    s1[j] += v1 * p1[j];                                                    \
                    s2[j] += v2 * p2[j];                                                    \
                    s3[j] += v3 * p3[j];                                                    \
                }                                                                           \
            }                                                                               \
            for (; k < hi; ++k) {                                                           \
                const T *restrict p0 = base + offsets[k];                                   \
                const T v0 = values[k];                                                     \
                for (int j = 0; j < PYNN_SPARSE_CH; ++j)                                    \
                    s0[j] += v0 * p0[j];                                                    \
            }                                                                               \
            /* a vector store here; the transpose into y below, once per run */             \
            T *restrict out = acc + u * PYNN_SPARSE_CH;                                     \
            for (int j = 0; j < PYNN_SPARSE_CH; ++j)                                        \
                out[j] = (s0[j] + s1[j]) + (s2[j] + s3[j]);                                 \
        }                                                                                   \
        const ptrdiff_t run = wo - ox0 < PYNN_SPARSE_CH ? wo - ox0 : PYNN_SPARSE_CH;       \
        for (ptrdiff_t j = 0; j < run; ++j)                                                 \
            for (ptrdiff_t u = 0; u < f; ++u)                                               \
                y[(ox0 + j) * f + u] = acc[u * PYNN_SPARSE_CH + j];                         \
    }                                                                                       \
}

PYNN_SPARSE_CONV(float, f32)
PYNN_SPARSE_CONV(double, f64)
#endif
