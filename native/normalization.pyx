"""Normalization kernels: batch norm and group norm (layer norm is group norm with one group
over x reshaped to (rows, features)), rms norm and unit norm (one statistic per row of x's
last axis; see their section at the end), forward and backward side by side.

Legend: A axes before the batch-norm axis, C channels, B axes after it (B = 1 for
channels_last), M = A*B values per channel; group norm: N batch, S spatial (everything
between the first and the last axis), G groups of CG = C/G consecutive channels.

Design:
- Statistics accumulate in double, shifted by the first value of their slice (the
  shifted-data variance: sum(x-k) and sum((x-k)^2) in one pass stay exact enough where
  sum(x^2) - M*mean^2 would cancel when |mean| >> std). Variances are biased (Keras 3).
- Reductions over rows run in a fixed number of row blocks (at most MAX_BLOCKS, set by the
  size alone), each block summed by one thread, the blocks then folded in order: the result
  is bit-identical for any thread count.
- The inner loops are C (the extern block below) with `restrict`: loops over channels of a
  channels_last row vectorize; reductions within a contiguous run keep four lanes.
  Batch norm with B = 1 reduces rows as channel columns; group norm reduces one-row
  samples' groups of at least GROUP_RUN_MIN channels as runs (layer norm's rows), anything
  else as channel columns folded into their group afterwards (the pairwise mean/variance
  rule).
- Forward: one reduction pass for the statistics, one elementwise pass to normalize.
  Backward: one reduction pass for sum(dy) and sum(dy * xhat), one elementwise pass for dx.
- A missing gamma (scale=False) is ones, a missing beta (center=False) zeros.
Outputs are fresh arrays; the forward op of batch norm in training also updates the moving
statistics in place (moving = moving*momentum + batch*(1 - momentum), Keras 3).
"""
import numpy as np

from libc.math cimport sqrt
from libc.stdlib cimport free, malloc
from _openmp cimport omp_get_max_threads

from _activation cimport ACT_LINEAR, ACT_RELU, act_backward_vec, act_forward_vec

from pynn._native.activation import activation_backward, activation_forward
from pynn.backend.api import ACTIVATIONS
from pynn.backend.operands import normalization as operands
from pynn.backend.operands.common import HOST

include "_team.pxi"

ctypedef fused floating:
    float
    double


# Below this many elements a kernel runs on the calling thread: waking the OpenMP team costs
# more than the pass.
cdef enum:
    PARALLEL_MIN = 32768
    MAX_BLOCKS = 64
    # Rows pynn_col_sums_rows sums in registers before adding into the double sums; the
    # fused activation backward hands it dz in chunks of this many rows (must match).
    SUM_ROWS = 64
    # Group norm reduces the groups of a one-row sample (layer norm's rows) of at least this
    # many channels as contiguous runs; every other case (images, sequences, narrow groups
    # such as GroupNormalization's default 32 groups of 2) as channel columns, whose loops
    # vectorize across C, folded into groups afterwards (measured: 32 -> 13 ms for a
    # training step of 4 groups of 16 on (64, 32, 32, 64)).
    GROUP_RUN_MIN = 16


cdef extern from *:
    """
    /* The inner loops over one contiguous run, in C so that `restrict` tells gcc the outputs
     * alias nothing: the per-index ("col") loops then vectorize across channels. The
     * reductions within a run ("row") keep four lanes folded in a fixed order, the same
     * bits on every run; s1, s2 accumulate in double. */
    #define PYNN_NORM_KERNELS(SUF, T)                                                        \\
    /* s1[i] += u[i] - ku[i], s2[i] += (u[i] - ku[i]) * (v[i] - kv[i]); ku NULL: 0. */     \\
    static inline void pynn_col_sums_##SUF(const T* restrict u, const T* restrict v,       \\
            const T* restrict ku, const T* restrict kv, Py_ssize_t n,                       \\
            double* restrict s1, double* restrict s2) {                                     \\
        Py_ssize_t i;                                                                       \\
        if (ku) {                                                                           \\
            for (i = 0; i < n; i++) {                                                       \\
                const double a = (double)u[i] - ku[i];                                      \\
                s1[i] += a;                                                                 \\
                s2[i] += a * ((double)v[i] - kv[i]);                                        \\
            }                                                                               \\
        } else {                                                                            \\
            for (i = 0; i < n; i++) {                                                       \\
                s1[i] += u[i];                                                              \\
                s2[i] += (double)u[i] * ((double)v[i] - kv[i]);                             \\
            }                                                                               \\
        }                                                                                   \\
    }                                                                                       \\
    /* pynn_col_sums over `rows` rows of C (row stride C): s1[c] += sum over the rows of     \
     * u - ku, s2[c] likewise of (u - ku) * (v - kv). Blocks of 64 rows x 16 channels sum   \
     * into register accumulators, added to s1/s2 once per block, every channel of a block  \
     * while its rows are in L1: the row-at-a-time loop loaded and stored all 2*C double    \
     * sums for every row (a batch norm's statistics pass of 32 channels ran at 13 GB/s).   \
     * Two blocks of 16 channels at a time where C has them: both halves of a row's line in  \
     * one pass, twice the independent sums (a 64x32x32x32 batch's statistics, Intel, one    \
     * thread: 0.62 -> 0.41 ms; two 0.40 -> 0.30). Fixed blocks: the same bits on every call.\
     * ku NULL: 0. */                                                                       \
    static inline void pynn_col_sums_rows_##SUF(const T* restrict u, const T* restrict v,  \
            const T* restrict ku, const T* restrict kv, Py_ssize_t rows, Py_ssize_t C,      \
            double* restrict s1, double* restrict s2) {                                     \
        Py_ssize_t r0, r, c0, c, rn, cn;                                                    \
        for (r0 = 0; r0 < rows; r0 += 64) {                                                 \
            rn = rows - r0 < 64 ? rows - r0 : 64;                                           \
            for (c0 = 0; c0 < C; c0 += cn) {                                                \
                double k1[32], k2[32], a[32] = {0}, b[32] = {0};                            \
                cn = C - c0 >= 32 ? 32 : C - c0 < 16 ? C - c0 : 16;                         \
                for (c = 0; c < 32; c++) {                                                  \
                    k1[c] = (ku && c < cn) ? (double)ku[c0 + c] : 0.0;                      \
                    k2[c] = c < cn ? (double)kv[c0 + c] : 0.0;                              \
                }                                                                           \
                if (cn == 32) {                                                             \
                    pynn_col_sums_32_##SUF(u, v, k1, k2, r0, rn, C, c0, a, b);              \
                } else if (cn == 16) {                                                      \
                    pynn_col_sums_16_##SUF(u, v, k1, k2, r0, rn, C, c0, a, b);              \
                } else {                                                                    \
                    for (r = r0; r < r0 + rn; r++)                                          \
                        for (c = 0; c < cn; c++) {                                          \
                            const double d = (double)u[r * C + c0 + c] - k1[c];             \
                            a[c] += d;                                                      \
                            b[c] += d * ((double)v[r * C + c0 + c] - k2[c]);                \
                        }                                                                   \
                }                                                                           \
                for (c = 0; c < cn; c++) {                                                  \
                    s1[c0 + c] += a[c];                                                     \
                    s2[c0 + c] += b[c];                                                     \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
    }                                                                                       \
    /* *s1 += sum(u - ku), *s2 += sum((u - ku) * (v - kv)). */                              \\
    static inline void pynn_row_sums_##SUF(const T* restrict u, const T* restrict v,       \\
            double ku, double kv, Py_ssize_t n, double* s1, double* s2) {                   \\
        double a[4] = {0, 0, 0, 0}, b[4] = {0, 0, 0, 0};                                    \\
        Py_ssize_t i = 0;                                                                   \\
        int l;                                                                              \\
        for (; i + 4 <= n; i += 4)                                                          \\
            for (l = 0; l < 4; l++) {                                                       \\
                const double d = (double)u[i + l] - ku;                                     \\
                a[l] += d;                                                                  \\
                b[l] += d * ((double)v[i + l] - kv);                                        \\
            }                                                                               \\
        for (; i < n; i++) {                                                                \\
            const double d = (double)u[i] - ku;                                             \\
            a[0] += d;                                                                      \\
            b[0] += d * ((double)v[i] - kv);                                                \\
        }                                                                                   \\
        *s1 += (a[0] + a[1]) + (a[2] + a[3]);                                               \\
        *s2 += (b[0] + b[1]) + (b[2] + b[3]);                                               \\
    }                                                                                       \\
    /* dz = the relu's backward of dy at z = (x - m) * s + t (the forward's expression, so  \
     * its bits): dy where z > 0 (where relu(z) > 0), else 0, all per index; one loop that   \
     * vectorizes (the affine, relu and relu-backward loops apart ran at 24 GB/s). */        \
    static inline void pynn_bn_relu_dz_##SUF(const T* restrict dy, const T* restrict x,    \
            const T* restrict m, const T* restrict s, const T* restrict t, T* restrict dz,  \
            Py_ssize_t n) {                                                                 \
        for (Py_ssize_t i = 0; i < n; i++) {                                                \
            const T z = (x[i] - m[i]) * s[i] + t[i];                                        \
            dz[i] = z > 0 ? dy[i] : (T)0;                                                   \
        }                                                                                   \
    }                                                                                       \
    /* y = (x - m) * s + t, all per index. */                                               \\
    static inline void pynn_affine_##SUF(const T* restrict x, T* restrict y,               \\
            const T* restrict m, const T* restrict s, const T* restrict t, Py_ssize_t n) {  \\
        for (Py_ssize_t i = 0; i < n; i++)                                                  \\
            y[i] = (x[i] - m[i]) * s[i] + t[i];                                             \\
    }                                                                                       \\
    /* y = (x - mu) * inv * gamma + beta: mu, inv of the group, gamma, beta per index. */   \\
    static inline void pynn_group_affine_##SUF(const T* restrict x, T* restrict y, T mu,   \\
            T inv, const T* restrict gamma, const T* restrict beta, Py_ssize_t n) {         \\
        for (Py_ssize_t i = 0; i < n; i++)                                                  \\
            y[i] = (x[i] - mu) * inv * gamma[i] + beta[i];                                  \\
    }                                                                                       \\
    /* dx = kdy * dy + kx * (x - m) + k0, all per index. */                                 \\
    static inline void pynn_bn_dx_##SUF(const T* restrict dy, const T* restrict x,         \\
            const T* restrict m, const T* restrict kdy, const T* restrict kx,               \\
            const T* restrict k0, T* restrict dx, Py_ssize_t n) {                           \\
        for (Py_ssize_t i = 0; i < n; i++)                                                  \\
            dx[i] = kdy[i] * dy[i] + kx[i] * (x[i] - m[i]) + k0[i];                         \\
    }                                                                                       \\
    /* One group's run of n channels: dbeta[i] += dy, dgamma[i] += dy * yhat (per index);  \\
     * *sg += sum(dy * gamma), *sgx += sum(dy * gamma * xhat). yhat = xhat = (x - mu)*inv, \\
     * or x*inv under rms_scaling. */                                                      \\
    static inline void pynn_group_back_sums_##SUF(const T* restrict dy,                    \\
            const T* restrict x, const T* restrict gamma, Py_ssize_t n, double mu,          \\
            double inv, int rms, double* restrict dgamma, double* restrict dbeta,           \\
            double* sg, double* sgx) {                                                      \\
        const double center = rms ? 0.0 : mu;                                               \\
        double a[4] = {0, 0, 0, 0}, b[4] = {0, 0, 0, 0};                                    \\
        Py_ssize_t i = 0;                                                                   \\
        int l;                                                                              \\
        for (i = 0; i < n; i++) {                                                           \\
            dbeta[i] += dy[i];                                                              \\
            dgamma[i] += (double)dy[i] * (((double)x[i] - center) * inv);                   \\
        }                                                                                   \\
        for (i = 0; i + 4 <= n; i += 4)                                                     \\
            for (l = 0; l < 4; l++) {                                                       \\
                const double g = (double)dy[i + l] * gamma[i + l];                          \\
                a[l] += g;                                                                  \\
                b[l] += g * (((double)x[i + l] - mu) * inv);                                \\
            }                                                                               \\
        for (; i < n; i++) {                                                                \\
            const double g = (double)dy[i] * gamma[i];                                      \\
            a[0] += g;                                                                      \\
            b[0] += g * (((double)x[i] - mu) * inv);                                        \\
        }                                                                                   \\
        *sg += (a[0] + a[1]) + (a[2] + a[3]);                                               \\
        *sgx += (b[0] + b[1]) + (b[2] + b[3]);                                              \\
    }                                                                                       \\
    /* dx = inv * dy * gamma - a1 - a2 * (x - mu), gamma per index. */                     \\
    static inline void pynn_group_dx_##SUF(const T* restrict dy, const T* restrict x,      \\
            const T* restrict gamma, T mu, T inv, T a1, T a2, T* restrict dx,               \\
            Py_ssize_t n) {                                                                 \\
        for (Py_ssize_t i = 0; i < n; i++)                                                  \\
            dx[i] = inv * dy[i] * gamma[i] - a1 - a2 * (x[i] - mu);                         \\
    }
    /* pynn_col_sums_rows_f's full 16-channel blocks on GCC's generic vectors: written as
     * scalar loops, GCC made them scalar float-to-double conversions (a statistics pass at
     * 20 GB/s). The same operations in the same order per lane: the same bits. */
    typedef float pynn_v8f __attribute__((vector_size(32)));
    typedef double pynn_v8d __attribute__((vector_size(64)));
    #if defined(__AVX512F__)
    #include <immintrin.h>
    /* one vcvtps2pd zmm: GCC's generic conversion (its 256-bit preference on Sapphire
       Rapids) split each into two ymm conversions, an extract and an insert, all on one
       port (a 64x32x32x32 batch's statistics, one thread: 0.99 -> 0.62 ms) */
    static inline pynn_v8d pynn_v8f_to_d(const float* p) {
        return (pynn_v8d)_mm512_cvtps_pd(_mm256_loadu_ps(p));
    }
    #else
    static inline pynn_v8d pynn_v8f_to_d(const float* p) {
        pynn_v8f v;
        memcpy(&v, p, sizeof(v));
        return __builtin_convertvector(v, pynn_v8d);
    }
    #endif
    static inline void pynn_col_sums_16_f(const float* restrict u, const float* restrict v,
            const double* k1, const double* k2, Py_ssize_t r0, Py_ssize_t rn, Py_ssize_t C,
            Py_ssize_t c0, double* restrict a, double* restrict b) {
        pynn_v8d a0, a1, b0, b1, p0, p1, q0, q1;
        Py_ssize_t r;
        memcpy(&a0, a, 64); memcpy(&a1, a + 8, 64);
        memcpy(&b0, b, 64); memcpy(&b1, b + 8, 64);
        memcpy(&p0, k1, 64); memcpy(&p1, k1 + 8, 64);
        memcpy(&q0, k2, 64); memcpy(&q1, k2 + 8, 64);
        if (u == v && !memcmp(k1, k2, 16 * sizeof(double))) {
            /* the statistics (u = v, one shift): v - kv is d itself, converted once */
            for (r = r0; r < r0 + rn; r++) {
                const float* ur = u + r * C + c0;
                pynn_v8d d0 = pynn_v8f_to_d(ur) - p0, d1 = pynn_v8f_to_d(ur + 8) - p1;
                a0 += d0;
                a1 += d1;
                b0 += d0 * d0;
                b1 += d1 * d1;
            }
        } else {
            for (r = r0; r < r0 + rn; r++) {
                const float* ur = u + r * C + c0;
                const float* vr = v + r * C + c0;
                pynn_v8d d0 = pynn_v8f_to_d(ur) - p0, d1 = pynn_v8f_to_d(ur + 8) - p1;
                a0 += d0;
                a1 += d1;
                b0 += d0 * (pynn_v8f_to_d(vr) - q0);
                b1 += d1 * (pynn_v8f_to_d(vr + 8) - q1);
            }
        }
        memcpy(a, &a0, 64); memcpy(a + 8, &a1, 64);
        memcpy(b, &b0, 64); memcpy(b + 8, &b1, 64);
    }
    /* pynn_col_sums_16_f over channels c0 .. c0 + 32: each lane's operations and order are
       the 16-channel kernel's (the same bits), both halves of a row in one iteration */
    static inline void pynn_col_sums_32_f(const float* restrict u, const float* restrict v,
            const double* k1, const double* k2, Py_ssize_t r0, Py_ssize_t rn, Py_ssize_t C,
            Py_ssize_t c0, double* restrict a, double* restrict b) {
        pynn_v8d a0, a1, a2, a3, b0, b1, b2, b3, p0, p1, p2, p3, q0, q1, q2, q3;
        Py_ssize_t r;
        memcpy(&a0, a, 64); memcpy(&a1, a + 8, 64); memcpy(&a2, a + 16, 64);
        memcpy(&a3, a + 24, 64);
        memcpy(&b0, b, 64); memcpy(&b1, b + 8, 64); memcpy(&b2, b + 16, 64);
        memcpy(&b3, b + 24, 64);
        memcpy(&p0, k1, 64); memcpy(&p1, k1 + 8, 64); memcpy(&p2, k1 + 16, 64);
        memcpy(&p3, k1 + 24, 64);
        memcpy(&q0, k2, 64); memcpy(&q1, k2 + 8, 64); memcpy(&q2, k2 + 16, 64);
        memcpy(&q3, k2 + 24, 64);
        if (u == v && !memcmp(k1, k2, 32 * sizeof(double))) {
            for (r = r0; r < r0 + rn; r++) {
                const float* ur = u + r * C + c0;
                pynn_v8d d0 = pynn_v8f_to_d(ur) - p0, d1 = pynn_v8f_to_d(ur + 8) - p1;
                pynn_v8d d2 = pynn_v8f_to_d(ur + 16) - p2, d3 = pynn_v8f_to_d(ur + 24) - p3;
                a0 += d0; a1 += d1; a2 += d2; a3 += d3;
                b0 += d0 * d0; b1 += d1 * d1; b2 += d2 * d2; b3 += d3 * d3;
            }
        } else {
            for (r = r0; r < r0 + rn; r++) {
                const float* ur = u + r * C + c0;
                const float* vr = v + r * C + c0;
                pynn_v8d d0 = pynn_v8f_to_d(ur) - p0, d1 = pynn_v8f_to_d(ur + 8) - p1;
                pynn_v8d d2 = pynn_v8f_to_d(ur + 16) - p2, d3 = pynn_v8f_to_d(ur + 24) - p3;
                a0 += d0; a1 += d1; a2 += d2; a3 += d3;
                b0 += d0 * (pynn_v8f_to_d(vr) - q0);
                b1 += d1 * (pynn_v8f_to_d(vr + 8) - q1);
                b2 += d2 * (pynn_v8f_to_d(vr + 16) - q2);
                b3 += d3 * (pynn_v8f_to_d(vr + 24) - q3);
            }
        }
        memcpy(a, &a0, 64); memcpy(a + 8, &a1, 64); memcpy(a + 16, &a2, 64);
        memcpy(a + 24, &a3, 64);
        memcpy(b, &b0, 64); memcpy(b + 8, &b1, 64); memcpy(b + 16, &b2, 64);
        memcpy(b + 24, &b3, 64);
    }
    /* double data has no conversion to spare: the plain loop vectorizes as it is */
    static inline void pynn_col_sums_16_d(const double* restrict u, const double* restrict v,
            const double* k1, const double* k2, Py_ssize_t r0, Py_ssize_t rn, Py_ssize_t C,
            Py_ssize_t c0, double* restrict a, double* restrict b) {
        Py_ssize_t r, c;
        for (r = r0; r < r0 + rn; r++)
            for (c = 0; c < 16; c++) {
                const double d = u[r * C + c0 + c] - k1[c];
                a[c] += d;
                b[c] += d * (v[r * C + c0 + c] - k2[c]);
            }
    }
    static inline void pynn_col_sums_32_d(const double* restrict u, const double* restrict v,
            const double* k1, const double* k2, Py_ssize_t r0, Py_ssize_t rn, Py_ssize_t C,
            Py_ssize_t c0, double* restrict a, double* restrict b) {
        pynn_col_sums_16_d(u, v, k1, k2, r0, rn, C, c0, a, b);
        pynn_col_sums_16_d(u, v, k1 + 16, k2 + 16, r0, rn, C, c0 + 16, a + 16, b + 16);
    }
    PYNN_NORM_KERNELS(f, float)
    PYNN_NORM_KERNELS(d, double)
    """
    void pynn_bn_relu_dz_f(const float* dy, const float* x, const float* m, const float* s,
                           const float* t, float* dz, Py_ssize_t n) noexcept nogil
    void pynn_bn_relu_dz_d(const double* dy, const double* x, const double* m,
                           const double* s, const double* t, double* dz,
                           Py_ssize_t n) noexcept nogil
    void pynn_col_sums_rows_f(const float* u, const float* v, const float* ku,
                              const float* kv, Py_ssize_t rows, Py_ssize_t C, double* s1,
                              double* s2) noexcept nogil
    void pynn_col_sums_rows_d(const double* u, const double* v, const double* ku,
                              const double* kv, Py_ssize_t rows, Py_ssize_t C, double* s1,
                              double* s2) noexcept nogil
    void pynn_col_sums_f(const float* u, const float* v, const float* ku, const float* kv,
                         Py_ssize_t n, double* s1, double* s2) noexcept nogil
    void pynn_col_sums_d(const double* u, const double* v, const double* ku, const double* kv,
                         Py_ssize_t n, double* s1, double* s2) noexcept nogil
    void pynn_row_sums_f(const float* u, const float* v, double ku, double kv, Py_ssize_t n,
                         double* s1, double* s2) noexcept nogil
    void pynn_row_sums_d(const double* u, const double* v, double ku, double kv, Py_ssize_t n,
                         double* s1, double* s2) noexcept nogil
    void pynn_affine_f(const float* x, float* y, const float* m, const float* s,
                       const float* t, Py_ssize_t n) noexcept nogil
    void pynn_affine_d(const double* x, double* y, const double* m, const double* s,
                       const double* t, Py_ssize_t n) noexcept nogil
    void pynn_group_affine_f(const float* x, float* y, float mu, float inv, const float* gamma,
                             const float* beta, Py_ssize_t n) noexcept nogil
    void pynn_group_affine_d(const double* x, double* y, double mu, double inv,
                             const double* gamma, const double* beta,
                             Py_ssize_t n) noexcept nogil
    void pynn_bn_dx_f(const float* dy, const float* x, const float* m, const float* kdy,
                      const float* kx, const float* k0, float* dx, Py_ssize_t n) noexcept nogil
    void pynn_bn_dx_d(const double* dy, const double* x, const double* m, const double* kdy,
                      const double* kx, const double* k0, double* dx,
                      Py_ssize_t n) noexcept nogil
    void pynn_group_back_sums_f(const float* dy, const float* x, const float* gamma,
                                Py_ssize_t n, double mu, double inv, int rms, double* dgamma,
                                double* dbeta, double* sg, double* sgx) noexcept nogil
    void pynn_group_back_sums_d(const double* dy, const double* x, const double* gamma,
                                Py_ssize_t n, double mu, double inv, int rms, double* dgamma,
                                double* dbeta, double* sg, double* sgx) noexcept nogil
    void pynn_group_dx_f(const float* dy, const float* x, const float* gamma, float mu,
                         float inv, float a1, float a2, float* dx, Py_ssize_t n) noexcept nogil
    void pynn_group_dx_d(const double* dy, const double* x, const double* gamma, double mu,
                         double inv, double a1, double a2, double* dx,
                         Py_ssize_t n) noexcept nogil


# Dispatch of the C loops above on the fused dtype.
cdef inline void _bn_relu_dz(const floating* dy, const floating* x, const floating* m,
                             const floating* sc, const floating* t, floating* dz,
                             Py_ssize_t n) noexcept nogil:
    if floating is float:
        pynn_bn_relu_dz_f(dy, x, m, sc, t, dz, n)
    else:
        pynn_bn_relu_dz_d(dy, x, m, sc, t, dz, n)


cdef inline void _col_sums_rows(const floating* u, const floating* v, const floating* ku,
                                const floating* kv, Py_ssize_t rows, Py_ssize_t C, double* s1,
                                double* s2) noexcept nogil:
    if floating is float:
        pynn_col_sums_rows_f(u, v, ku, kv, rows, C, s1, s2)
    else:
        pynn_col_sums_rows_d(u, v, ku, kv, rows, C, s1, s2)


cdef inline void _col_sums(const floating* u, const floating* v, const floating* ku,
                           const floating* kv, Py_ssize_t n, double* s1,
                           double* s2) noexcept nogil:
    if floating is float:
        pynn_col_sums_f(u, v, ku, kv, n, s1, s2)
    else:
        pynn_col_sums_d(u, v, ku, kv, n, s1, s2)


cdef inline void _row_sums(const floating* u, const floating* v, double ku, double kv,
                           Py_ssize_t n, double* s1, double* s2) noexcept nogil:
    if floating is float:
        pynn_row_sums_f(u, v, ku, kv, n, s1, s2)
    else:
        pynn_row_sums_d(u, v, ku, kv, n, s1, s2)


cdef inline void _affine(const floating* x, floating* y, const floating* m, const floating* s,
                         const floating* t, Py_ssize_t n) noexcept nogil:
    if floating is float:
        pynn_affine_f(x, y, m, s, t, n)
    else:
        pynn_affine_d(x, y, m, s, t, n)


cdef inline void _group_affine(const floating* x, floating* y, floating mu, floating inv,
                               const floating* gamma, const floating* beta,
                               Py_ssize_t n) noexcept nogil:
    if floating is float:
        pynn_group_affine_f(x, y, mu, inv, gamma, beta, n)
    else:
        pynn_group_affine_d(x, y, mu, inv, gamma, beta, n)


cdef inline void _bn_dx(const floating* dy, const floating* x, const floating* m,
                        const floating* kdy, const floating* kx, const floating* k0,
                        floating* dx, Py_ssize_t n) noexcept nogil:
    if floating is float:
        pynn_bn_dx_f(dy, x, m, kdy, kx, k0, dx, n)
    else:
        pynn_bn_dx_d(dy, x, m, kdy, kx, k0, dx, n)


cdef inline void _group_back_sums(const floating* dy, const floating* x, const floating* gamma,
                                  Py_ssize_t n, double mu, double inv, int rms, double* dgamma,
                                  double* dbeta, double* sg, double* sgx) noexcept nogil:
    if floating is float:
        pynn_group_back_sums_f(dy, x, gamma, n, mu, inv, rms, dgamma, dbeta, sg, sgx)
    else:
        pynn_group_back_sums_d(dy, x, gamma, n, mu, inv, rms, dgamma, dbeta, sg, sgx)


cdef inline void _group_dx(const floating* dy, const floating* x, const floating* gamma,
                           floating mu, floating inv, floating a1, floating a2, floating* dx,
                           Py_ssize_t n) noexcept nogil:
    if floating is float:
        pynn_group_dx_f(dy, x, gamma, mu, inv, a1, a2, dx, n)
    else:
        pynn_group_dx_d(dy, x, gamma, mu, inv, a1, a2, dx, n)


cdef inline Py_ssize_t _imin(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a < b else b


cdef inline Py_ssize_t _blocks(Py_ssize_t rows) noexcept nogil:
    return rows if rows < MAX_BLOCKS else MAX_BLOCKS


# -- batch norm -----------------------------------------------------------------------------

cdef void _bn_sums_block(const floating* u, const floating* v, const floating* ku,
                         const floating* kv, double* s1, double* s2, Py_ssize_t a0,
                         Py_ssize_t a1, Py_ssize_t C, Py_ssize_t B) noexcept nogil:
    """Rows [a0, a1) into the block's per-channel s1 += u - ku, s2 += (u - ku) * (v - kv)
    (ku NULL: 0). Statistics: u = v = x, ku = kv = the shift; backward: u = dy, v = x,
    kv = the mean."""
    cdef Py_ssize_t a, c, base
    if B == 1:
        _col_sums_rows(u + a0 * C, v + a0 * C, ku, kv, a1 - a0, C, s1, s2)
        return
    for a in range(a0, a1):
        for c in range(C):
            base = (a * C + c) * B
            _row_sums(u + base, v + base, ku[c] if ku != NULL else 0.0, kv[c], B, &s1[c],
                      &s2[c])


ctypedef struct _BnJob:
    bint is_double, sums
    const void* u
    const void* v
    const void* ku
    const void* kv
    void* y
    double* part
    Py_ssize_t part_stride, A, C, B, RT, nb
    const void* mean
    const void* scale
    const void* beta
    const void* kdy
    const void* kx
    const void* k0
    int act
    double alpha


cdef void _bn_sums_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _BnJob* j = <_BnJob*>ctx
    cdef long i
    cdef double* p
    for i in range(begin, end):
        p = j.part + 2 * (i + 1) * j.part_stride
        if j.is_double:
            _bn_sums_block(<const double*>j.u, <const double*>j.v, <const double*>j.ku,
                           <const double*>j.kv, p, p + j.part_stride, j.A * i // j.nb,
                           j.A * (i + 1) // j.nb, j.C, j.B)
        else:
            _bn_sums_block(<const float*>j.u, <const float*>j.v, <const float*>j.ku,
                           <const float*>j.kv, p, p + j.part_stride, j.A * i // j.nb,
                           j.A * (i + 1) // j.nb, j.C, j.B)


cdef inline int _threads_for(Py_ssize_t work) noexcept nogil:
    return omp_get_max_threads() if work >= PARALLEL_MIN else 1


cdef void _bn_sums(const floating* u, const floating* v, const floating* ku, const floating* kv,
                   double[:, ::1] part, Py_ssize_t A, Py_ssize_t C, Py_ssize_t B) noexcept nogil:
    """part[0] = per-channel s1, part[1] = s2, each folded over the row blocks in order.
    ``part`` is (2 * (blocks + 1), C), zeroed. The blocks run on pynn's worker team
    (native/_team.h)."""
    cdef Py_ssize_t nb = _blocks(A), i, c
    cdef _BnJob job
    job.is_double, job.u, job.v, job.ku, job.kv = floating is double, u, v, ku, kv
    job.part, job.part_stride, job.A, job.C, job.B, job.nb = &part[0, 0], part.shape[1], A, \
        C, B, nb
    pynn_team_for(nb, 1, _threads_for(A * C * B), _bn_sums_job, &job)
    for i in range(nb):
        for c in range(C):
            part[0, c] += part[2 * (i + 1), c]
            part[1, c] += part[2 * (i + 1) + 1, c]


def _bn_statistics(const floating[::1] x, floating[::1] mean, floating[::1] inv_std,
                   floating[::1] moving_mean, floating[::1] moving_variance, Py_ssize_t A,
                   Py_ssize_t C, Py_ssize_t B, double momentum, double epsilon):
    """Batch mean and 1/sqrt(var + eps) per channel (OUT), the moving statistics updated
    (IN/OUT). Needs M = A*B >= 1."""
    cdef double[:, ::1] part = np.zeros((2 * (_blocks(A) + 1), C))
    cdef double m = <double>A * B, mu, var, k
    cdef Py_ssize_t c
    # The first value of each channel is its shift.
    cdef floating[::1] shift = np.empty(C, dtype=np.asarray(mean).dtype)
    for c in range(C):
        shift[c] = x[c * B]
    with nogil:
        _bn_sums(&x[0], &x[0], &shift[0], &shift[0], part, A, C, B)
        for c in range(C):
            k = shift[c]
            mu = part[0, c] / m
            var = part[1, c] / m - mu * mu
            if var < 0.0:
                var = 0.0
            mean[c] = <floating>(k + mu)
            inv_std[c] = <floating>(1.0 / sqrt(var + epsilon))
            moving_mean[c] = <floating>(moving_mean[c] * momentum + (k + mu) * (1.0 - momentum))
            moving_variance[c] = <floating>(moving_variance[c] * momentum
                                            + var * (1.0 - momentum))


cdef inline void _bn_run(const floating* x, floating* y, floating mu, floating sc,
                         floating sh, Py_ssize_t n) noexcept nogil:
    """One channel's contiguous run (B > 1): y = (x - mu) * sc + sh."""
    cdef Py_ssize_t b
    for b in range(n):
        y[b] = (x[b] - mu) * sc + sh


cdef inline void _bn_normalize_row(const floating* x, floating* y, const floating* mean,
                                   const floating* scale, const floating* beta, Py_ssize_t a,
                                   Py_ssize_t C, Py_ssize_t B, int act,
                                   floating alpha) noexcept nogil:
    cdef Py_ssize_t c, base
    if B == 1:
        _affine(x + a * C, y + a * C, mean, scale, beta, C)
        if act != ACT_LINEAR:
            act_forward_vec(y + a * C, y + a * C, C, act, alpha)
    else:
        for c in range(C):
            base = (a * C + c) * B
            _bn_run(x + base, y + base, mean[c], scale[c], beta[c], B)
            if act != ACT_LINEAR:
                act_forward_vec(y + base, y + base, B, act, alpha)


cdef void _bn_normalize_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _BnJob* j = <_BnJob*>ctx
    cdef long a
    for a in range(begin, end):
        if j.is_double:
            _bn_normalize_row(<const double*>j.u, <double*>j.y, <const double*>j.mean,
                              <const double*>j.scale, <const double*>j.beta, a, j.C, j.B,
                              j.act, j.alpha)
        else:
            _bn_normalize_row(<const float*>j.u, <float*>j.y, <const float*>j.mean,
                              <const float*>j.scale, <const float*>j.beta, a, j.C, j.B,
                              j.act, <float>j.alpha)


def _bn_normalize(const floating[::1] x, floating[::1] y, const floating[::1] mean,
                  const floating[::1] inv_std, const floating[::1] gamma,
                  const floating[::1] beta, Py_ssize_t A, Py_ssize_t C, Py_ssize_t B,
                  int act=ACT_LINEAR, double alpha=0.0):
    """y = act((x - mean) * inv_std * gamma + beta), per channel; the activation runs on
    each row (channels_last) or channel run while it is still in L1. Rows on pynn's worker
    team (native/_team.h)."""
    cdef floating[::1] scale = np.empty(C, dtype=np.asarray(mean).dtype)
    cdef Py_ssize_t c
    cdef _BnJob job
    cdef int threads = _threads_for(A * C * B)
    for c in range(C):
        scale[c] = inv_std[c] * gamma[c]
    job.is_double, job.u, job.y, job.mean, job.scale, job.beta = floating is double, &x[0], \
        &y[0], &mean[0], &scale[0], &beta[0]
    job.C, job.B, job.act, job.alpha = C, B, act, alpha
    with nogil:
        pynn_team_for(A, team_grain(A, threads), threads, _bn_normalize_job, &job)


cdef inline void _bn_act_backward_block(const floating* dy, const floating* x,
                                        const floating* mean_t, const floating* scale_t,
                                        const floating* beta_t, int act, floating alpha,
                                        double* part, const floating* kdy_t,
                                        const floating* kx_t, const floating* k0_t,
                                        floating* dx, Py_ssize_t A, Py_ssize_t C,
                                        Py_ssize_t RT, bint sums, Py_ssize_t nb,
                                        Py_ssize_t i) noexcept nogil:
    """Row block i of _bn_act_backward_rows (part: its (2 * (nb + 1), C) rows)."""
    cdef Py_ssize_t a, r0, a1, rn, n
    cdef floating* scratch
    cdef floating* z
    cdef floating* y
    cdef floating* dz
    cdef floating* d
    # z and y of RT rows, then dz of up to SUM_ROWS rows, summed as _bn_sums sums dy
    # (the same blocks of rows from the same start: the same bits as the unfused path)
    scratch = <floating*>malloc((2 * RT + SUM_ROWS) * C * sizeof(floating))
    if scratch != NULL:
        z = scratch
        y = scratch + RT * C
        dz = scratch + 2 * RT * C
        a1 = A * (i + 1) // nb
        r0 = A * i // nb
        while r0 < a1:
            a = r0
            while a < _imin(r0 + SUM_ROWS, a1):
                rn = _imin(RT, _imin(r0 + SUM_ROWS, a1) - a)
                n = rn * C
                d = dz + (a - r0) * C if sums else dz
                if act == ACT_RELU:
                    _bn_relu_dz(dy + a * C, x + a * C, mean_t, scale_t, beta_t, d, n)
                else:
                    _affine(x + a * C, z, mean_t, scale_t, beta_t, n)
                    act_forward_vec(z, y, n, act, alpha)
                    act_backward_vec(dy + a * C, z, y, d, n, act, alpha)
                if not sums:
                    _bn_dx(dz, x + a * C, mean_t, kdy_t, kx_t, k0_t, dx + a * C, n)
                a = a + rn
            if sums:
                _col_sums_rows(dz, x + r0 * C, <const floating*>NULL, mean_t,
                               _imin(SUM_ROWS, a1 - r0), C, part + 2 * (i + 1) * C,
                               part + (2 * (i + 1) + 1) * C)
            r0 = r0 + SUM_ROWS
        free(scratch)


cdef void _bn_act_backward_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _BnJob* j = <_BnJob*>ctx
    cdef long i
    for i in range(begin, end):
        if j.is_double:
            _bn_act_backward_block(<const double*>j.u, <const double*>j.v,
                                   <const double*>j.mean, <const double*>j.scale,
                                   <const double*>j.beta, j.act, j.alpha, j.part,
                                   <const double*>j.kdy, <const double*>j.kx,
                                   <const double*>j.k0, <double*>j.y, j.A, j.C, j.RT, j.sums,
                                   j.nb, i)
        else:
            _bn_act_backward_block(<const float*>j.u, <const float*>j.v,
                                   <const float*>j.mean, <const float*>j.scale,
                                   <const float*>j.beta, j.act, <float>j.alpha, j.part,
                                   <const float*>j.kdy, <const float*>j.kx,
                                   <const float*>j.k0, <float*>j.y, j.A, j.C, j.RT, j.sums,
                                   j.nb, i)


cdef void _bn_act_backward_rows(const floating* dy, const floating* x, const floating* mean_t,
                                const floating* scale_t, const floating* beta_t, int act,
                                floating alpha, double[:, ::1] part, const floating* kdy_t,
                                const floating* kx_t, const floating* k0_t, floating* dx,
                                Py_ssize_t A, Py_ssize_t C, Py_ssize_t RT,
                                bint sums) noexcept nogil:
    """Batch norm backward through a fused activation, channels_last: sums (into part's
    block rows, as _bn_sums) of dz and dz * (x - mean), or dx = kdy*dz + kx*(x - mean) + k0,
    with dz recomputed in a block's own scratch: the forward's pre-activation z and output y
    by the same expressions (_affine, act_forward_vec), so the derivative sees the forward's
    bits without either being kept. The same two passes over dy and x as without an
    activation: the activation's backward pass over memory is gone. The per-channel factors
    come tiled over RT rows (*_t, RT*C values), so each loop runs over RT rows at once (one
    row of 32 channels at a time, four calls per 128 bytes, ran at 24 GB/s)."""
    cdef _BnJob job
    job.is_double, job.sums, job.u, job.v = floating is double, sums, dy, x
    job.mean, job.scale, job.beta, job.act, job.alpha = mean_t, scale_t, beta_t, act, alpha
    job.part, job.kdy, job.kx, job.k0, job.y = &part[0, 0], kdy_t, kx_t, k0_t, dx
    job.A, job.C, job.RT, job.nb = A, C, RT, _blocks(A)
    # blocks on pynn's worker team (native/_team.h)
    pynn_team_for(job.nb, 1, _threads_for(A * C), _bn_act_backward_job, &job)


cdef inline void _bn_dx_row(const floating* dy, const floating* x, const floating* mean,
                            const floating* k_dy, const floating* k_x, const floating* k_0,
                            floating* dx, Py_ssize_t a, Py_ssize_t C,
                            Py_ssize_t B) noexcept nogil:
    cdef Py_ssize_t c, b, base
    if B == 1:
        _bn_dx(dy + a * C, x + a * C, mean, k_dy, k_x, k_0, dx + a * C, C)
    else:
        for c in range(C):
            base = (a * C + c) * B
            for b in range(B):
                dx[base + b] = k_dy[c] * dy[base + b] + k_x[c] * (x[base + b] - mean[c]) + k_0[c]


cdef void _bn_dx_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _BnJob* j = <_BnJob*>ctx
    cdef long a
    for a in range(begin, end):
        if j.is_double:
            _bn_dx_row(<const double*>j.u, <const double*>j.v, <const double*>j.mean,
                       <const double*>j.kdy, <const double*>j.kx, <const double*>j.k0,
                       <double*>j.y, a, j.C, j.B)
        else:
            _bn_dx_row(<const float*>j.u, <const float*>j.v, <const float*>j.mean,
                       <const float*>j.kdy, <const float*>j.kx, <const float*>j.k0,
                       <float*>j.y, a, j.C, j.B)


def _bn_backward(const floating[::1] dy, const floating[::1] x, const floating[::1] gamma,
                 const floating[::1] mean, const floating[::1] inv_std, floating[::1] dx,
                 floating[::1] dgamma, floating[::1] dbeta, Py_ssize_t A, Py_ssize_t C,
                 Py_ssize_t B, bint batch_stats, bint need_input_grad,
                 const floating[::1] beta=None, int act=ACT_LINEAR, double alpha=0.0):
    """dgamma = sum(dy * xhat), dbeta = sum(dy) (OUT); dx (OUT, when need_input_grad) is
    gamma*inv_std*dy, less the statistics' share when they came from this batch:
    gamma*inv_std*(dy - dbeta/M - xhat*dgamma/M). With an activation (channels_last, B = 1;
    ``beta`` then given), dy is the activation's output gradient, taken back through it row
    by row inside both passes."""
    cdef double[:, ::1] part = np.zeros((2 * (_blocks(A) + 1), C))
    cdef double m = <double>A * B
    cdef floating[::1] k_dy = np.empty(C, dtype=np.asarray(dgamma).dtype)
    cdef floating[::1] k_x = np.empty_like(k_dy)
    cdef floating[::1] k_0 = np.empty_like(k_dy)
    cdef floating[::1] scale = np.empty_like(k_dy)
    cdef Py_ssize_t a, c, b, base, nb = _blocks(A), i
    cdef double inv, g
    cdef bint fused = act != ACT_LINEAR
    # Rows per fused loop: the tiled factors (six arrays of RT*C) stay small.
    cdef Py_ssize_t RT = max(1, min(<Py_ssize_t>SUM_ROWS, 1024 // max(C, 1)))
    dtype = np.asarray(dgamma).dtype
    cdef floating[::1] mean_t, scale_t, beta_t, kdy_t, kx_t, k0_t
    if fused:
        for c in range(C):
            scale[c] = inv_std[c] * gamma[c]  # the forward's factor, rounded as it rounds
        mean_t = np.tile(np.asarray(mean), RT)
        scale_t = np.tile(np.asarray(scale), RT)
        beta_t = np.tile(np.asarray(beta), RT)
    with nogil:
        if m > 0 and fused:
            _bn_act_backward_rows(&dy[0], &x[0], &mean_t[0], &scale_t[0], &beta_t[0], act,
                                  <floating>alpha, part, NULL, NULL, NULL, NULL, A, C, RT,
                                  True)
            for i in range(nb):
                for c in range(C):
                    part[0, c] += part[2 * (i + 1), c]
                    part[1, c] += part[2 * (i + 1) + 1, c]
        elif m > 0:
            _bn_sums(&dy[0], &x[0], <const floating*>NULL, &mean[0], part, A, C, B)
        for c in range(C):
            inv = inv_std[c]
            g = gamma[c] * inv
            dbeta[c] = <floating>part[0, c]
            dgamma[c] = <floating>(part[1, c] * inv)
            # dx = k_dy*dy + k_x*(x - mean) + k_0
            k_dy[c] = <floating>g
            if batch_stats and m > 0:
                k_x[c] = <floating>(-g * inv * inv * part[1, c] / m)
                k_0[c] = <floating>(-g * part[0, c] / m)
            else:
                k_x[c] = 0
                k_0[c] = 0
    if not need_input_grad or m == 0:
        return
    if fused:
        kdy_t = np.tile(np.asarray(k_dy), RT)
        kx_t = np.tile(np.asarray(k_x), RT)
        k0_t = np.tile(np.asarray(k_0), RT)
        with nogil:
            _bn_act_backward_rows(&dy[0], &x[0], &mean_t[0], &scale_t[0], &beta_t[0], act,
                                  <floating>alpha, part, &kdy_t[0], &kx_t[0], &k0_t[0], &dx[0],
                                  A, C, RT, False)
        return
    cdef _BnJob job
    cdef int threads = _threads_for(A * C * B)
    job.is_double, job.u, job.v, job.mean, job.kdy, job.kx, job.k0, job.y = \
        floating is double, &dy[0], &x[0], &mean[0], &k_dy[0], &k_x[0], &k_0[0], &dx[0]
    job.C, job.B = C, B
    with nogil:
        pynn_team_for(A, team_grain(A, threads), threads, _bn_dx_job, &job)


def _ones_or(v, c, dtype, fill):
    return np.full(c, fill, dtype=dtype) if v is None else v


def batch_norm_forward(x, gamma, beta, moving_mean, moving_variance, axis=-1, momentum=0.99,
                       epsilon=1e-3, training=False, activation="linear", alpha=0.0):
    """Batch normalization over every axis but ``axis`` -> (y, mean, inv_std), mean and
    inv_std (C,) the statistics y was normalized with (the batch's when training, else the
    moving ones), for batch_norm_backward. Training also updates moving_mean and
    moving_variance in place; an empty batch leaves them alone. ``activation`` (any
    elementwise one) is applied to the normalized values in the same pass."""
    (x, gamma, beta, moving_mean, moving_variance, (A, C, B), momentum, epsilon,
     training, (act_name, act_alpha)) = operands.batch_norm_forward(
        HOST, x, gamma, beta, moving_mean, moving_variance, axis, momentum, epsilon, training,
        activation, alpha)
    dtype = x.dtype
    gamma = _ones_or(gamma, C, dtype, 1)
    beta = _ones_or(beta, C, dtype, 0)
    y = np.empty_like(x)
    mean = np.empty(C, dtype=dtype)
    inv_std = np.empty(C, dtype=dtype)
    if training and A * B > 0:
        _bn_statistics(x.reshape(-1), mean, inv_std, moving_mean, moving_variance, A, C, B,
                       momentum, epsilon)
    else:
        mean[:] = moving_mean
        inv_std[:] = 1.0 / np.sqrt(moving_variance.astype(np.float64) + epsilon)
    if x.size:
        _bn_normalize(x.reshape(-1), y.reshape(-1), mean, inv_std, gamma, beta, A, C, B,
                      ACTIVATIONS.index(act_name), act_alpha)
    return y, mean, inv_std


def batch_norm_apply(x, gamma, beta, mean, inv_std, axis=-1, activation="linear", alpha=0.0):
    """y = act((x - mean) * inv_std * gamma + beta) with given statistics: batch_norm_forward's
    own normalizing pass, so y has the bits the forward gave with those statistics (a
    training plan rebuilds a fused BatchNormalization's output with it in backward instead
    of keeping it)."""
    x, gamma, beta, mean, inv_std, (A, C, B), (act_name, act_alpha) = \
        operands.batch_norm_apply(HOST, x, gamma, beta, mean, inv_std, axis, activation,
                                  alpha)
    dtype = x.dtype
    y = np.empty_like(x)
    if x.size:
        _bn_normalize(x.reshape(-1), y.reshape(-1), mean, inv_std,
                      _ones_or(gamma, C, dtype, 1), _ones_or(beta, C, dtype, 0), A, C, B,
                      ACTIVATIONS.index(act_name), act_alpha)
    return y


def batch_norm_backward(dy, x, gamma, mean, inv_std, axis=-1, batch_stats=True,
                        need_input_grad=True, beta=None, activation="linear", alpha=0.0):
    """-> (dx or None, dgamma, dbeta) of y = batch_norm_forward(x, ...)[0] with its returned
    mean and inv_std; ``batch_stats``: they were the batch's (training), so dx carries their
    dependence on x; otherwise they were constants (inference, trainable=False). With the
    forward's ``activation`` (and its ``beta``), dy is the gradient of the activated output;
    the pre-activation is rebuilt from x, never stored."""
    (dy, x, gamma, mean, inv_std, (A, C, B), batch_stats, need_input_grad, beta,
     (act_name, act_alpha)) = operands.batch_norm_backward(
        HOST, dy, x, gamma, mean, inv_std, axis, batch_stats, need_input_grad, beta,
        activation, alpha)
    dtype = x.dtype
    gamma = _ones_or(gamma, C, dtype, 1)
    beta = _ones_or(beta, C, dtype, 0)
    act = ACTIVATIONS.index(act_name)
    if act != ACT_LINEAR and B > 1 and x.size:
        # channels_first: the activation's gradient as its own pass (rows are not runs of
        # channels here), then the plain backward.
        z = np.empty_like(x)
        _bn_normalize(x.reshape(-1), z.reshape(-1), mean, inv_std, gamma, beta, A, C, B)
        dy = activation_backward(dy, z, activation_forward(z, act_name, act_alpha), act_name,
                                 act_alpha)
        act = ACT_LINEAR
    dx = np.empty_like(x) if need_input_grad else None
    dgamma = np.empty(C, dtype=dtype)
    dbeta = np.empty(C, dtype=dtype)
    flat = x.reshape(-1)
    _bn_backward(dy.reshape(-1), flat, gamma, mean, inv_std,
                 dx.reshape(-1) if dx is not None else np.empty(1, dtype), dgamma, dbeta, A, C, B,
                 batch_stats, need_input_grad, beta, act, act_alpha)
    return dx, dgamma, dbeta


# -- group norm (and layer norm) -----------------------------------------------------------

cdef void _gn_stats_row(const floating* x, floating* mean, floating* inv_std, double* s1,
                        double* s2, Py_ssize_t S, Py_ssize_t C, Py_ssize_t G,
                        double epsilon) noexcept nogil:
    """Sample n: x its (S, C) slab; mean, inv_std, s1, s2 its G entries. The shift of a group
    is its first value."""
    cdef Py_ssize_t CG = C // G, s, g
    cdef double k, mu, var, m = <double>S * CG
    for g in range(G):
        s1[g] = 0.0
        s2[g] = 0.0
    for s in range(S):
        for g in range(G):
            k = x[g * CG]
            _row_sums(x + s * C + g * CG, x + s * C + g * CG, k, k, CG, &s1[g], &s2[g])
    for g in range(G):
        mu = s1[g] / m
        var = s2[g] / m - mu * mu
        if var < 0.0:
            var = 0.0
        mean[g] = <floating>(x[g * CG] + mu)
        inv_std[g] = <floating>(1.0 / sqrt(var + epsilon))


cdef void _gn_forward_columns(const floating* x, floating* y, floating* mean,
                              floating* inv_std, const floating* gamma, const floating* beta,
                              double* t1, double* t2, floating* center, floating* scale,
                              Py_ssize_t S, Py_ssize_t C, Py_ssize_t G, double epsilon,
                              bint rms_scaling) noexcept nogil:
    """Sample n (x, y its (S, C) slab; mean, inv_std its G entries; the rest scratch of C):
    per-channel shifted sums over S (shift: the first row), folded into each group by the
    pairwise rule (equal counts: the group mean is the mean of the channel means, its
    centered sum of squares the channels' plus S * sum((mean_c - mean_g)^2)); then the rows
    normalized with per-channel center and scale."""
    cdef Py_ssize_t CG = C // G, s, g, c
    cdef double mu, m2, mc, inv
    for c in range(C):
        t1[c] = 0.0
        t2[c] = 0.0
    for s in range(S):
        _col_sums(x + s * C, x + s * C, x, x, C, t1, t2)
    for c in range(C):
        # t1 -> the channel mean, t2 -> its centered sum of squares
        mc = t1[c] / S
        t2[c] = t2[c] - t1[c] * mc
        t1[c] = x[c] + mc
    for g in range(G):
        mu = 0.0
        for c in range(g * CG, (g + 1) * CG):
            mu = mu + t1[c]
        mu = mu / CG
        m2 = 0.0
        for c in range(g * CG, (g + 1) * CG):
            m2 = m2 + t2[c] + S * (t1[c] - mu) * (t1[c] - mu)
        m2 = m2 / (S * CG)
        if m2 < 0.0:
            m2 = 0.0
        inv = 1.0 / sqrt(m2 + epsilon)
        mean[g] = <floating>mu
        inv_std[g] = <floating>inv
        for c in range(g * CG, (g + 1) * CG):
            center[c] = 0 if rms_scaling else mean[g]
            scale[c] = inv_std[g] * gamma[c]
    for s in range(S):
        _affine(x + s * C, y + s * C, center, scale, beta, C)


ctypedef struct _GnJob:
    bint is_double, rms_scaling, columns
    const void* x
    const void* dy
    void* y              # forward: y; backward: dx
    void* mean
    void* inv_std
    const void* gamma
    const void* beta
    double* cols         # (2 * nb, C): a block's per-channel double sums
    void* vecs           # (2 * nb or 4 * nb, C) of x's type: a block's per-channel vectors
    double* sums         # forward rows: (2 * N, G)
    double* part         # backward: (2 * (nb + 1), C), block i's at rows 2 * (i + 1), + 1
    double* sg
    double* sgx
    Py_ssize_t N, S, C, G, nb
    double epsilon, m


cdef inline void _gn_forward_blocks(const _GnJob* j, const floating* x, long begin,
                                    long end) noexcept nogil:
    """Blocks [begin, end) of the channel-columns forward (S > 1 or short groups)."""
    cdef Py_ssize_t C = j.C, G = j.G, slab = j.S * j.C, n
    cdef floating* y = <floating*>j.y
    cdef floating* vecs = <floating*>j.vecs
    cdef long i
    for i in range(begin, end):
        for n in range(j.N * i // j.nb, j.N * (i + 1) // j.nb):
            _gn_forward_columns(x + n * slab, y + n * slab, <floating*>j.mean + n * G,
                                <floating*>j.inv_std + n * G, <const floating*>j.gamma,
                                <const floating*>j.beta, j.cols + 2 * i * C,
                                j.cols + (2 * i + 1) * C, vecs + 2 * i * C,
                                vecs + (2 * i + 1) * C, j.S, C, G, j.epsilon, j.rms_scaling)


cdef inline void _gn_forward_samples(const _GnJob* j, const floating* x, long begin,
                                     long end) noexcept nogil:
    """Samples [begin, end) of the group-runs forward (S == 1, long groups)."""
    cdef Py_ssize_t C = j.C, G = j.G, CG = j.C // j.G, slab = j.S * j.C, s, g, at
    cdef floating* y = <floating*>j.y
    cdef floating* mean = <floating*>j.mean
    cdef floating* inv_std = <floating*>j.inv_std
    cdef const floating* gamma = <const floating*>j.gamma
    cdef const floating* beta = <const floating*>j.beta
    cdef floating mu
    cdef long n
    for n in range(begin, end):
        _gn_stats_row(x + n * slab, mean + n * G, inv_std + n * G, j.sums + 2 * n * G,
                      j.sums + (2 * n + 1) * G, j.S, C, G, j.epsilon)
        for s in range(j.S):
            for g in range(G):
                # rms_scaling (Keras's deprecated option) scales x by the inverse std
                # without centering it.
                mu = 0 if j.rms_scaling else mean[n * G + g]
                at = n * slab + s * C + g * CG
                _group_affine(x + at, y + at, mu, inv_std[n * G + g], gamma + g * CG,
                              beta + g * CG, CG)


cdef void _gn_forward_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _GnJob* j = <_GnJob*>ctx
    if j.columns:
        if j.is_double:
            _gn_forward_blocks(j, <const double*>j.x, begin, end)
        else:
            _gn_forward_blocks(j, <const float*>j.x, begin, end)
    elif j.is_double:
        _gn_forward_samples(j, <const double*>j.x, begin, end)
    else:
        _gn_forward_samples(j, <const float*>j.x, begin, end)


def _gn_forward(const floating[::1] x, floating[::1] y, floating[::1] mean,
                floating[::1] inv_std, const floating[::1] gamma, const floating[::1] beta,
                Py_ssize_t N, Py_ssize_t S, Py_ssize_t C, Py_ssize_t G, double epsilon,
                bint rms_scaling):
    """Blocks of samples (channel columns: S > 1 or short groups) or samples (group runs) on
    pynn's worker team (native/_team.h); each sample's sums run in one fixed order, so the
    bits do not depend on the thread count."""
    cdef Py_ssize_t nb = _blocks(N)
    cdef double[:, ::1] sums = np.empty((2 * N, G))
    cdef double[:, ::1] cols = np.empty((2 * nb, C))
    cdef floating[:, ::1] vecs = np.empty((2 * nb, C), dtype=np.asarray(mean).dtype)
    cdef _GnJob job
    cdef int threads = _threads_for(N * S * C)
    job.is_double, job.rms_scaling = floating is double, rms_scaling
    job.columns = S > 1 or C // G < GROUP_RUN_MIN
    job.x, job.y, job.mean, job.inv_std = &x[0], &y[0], &mean[0], &inv_std[0]
    job.gamma, job.beta = &gamma[0], &beta[0]
    job.cols, job.vecs, job.sums = &cols[0, 0], &vecs[0, 0], &sums[0, 0]
    job.N, job.S, job.C, job.G, job.nb, job.epsilon = N, S, C, G, nb, epsilon
    with nogil:
        if job.columns:
            pynn_team_for(nb, 1, threads, _gn_forward_job, &job)
        else:
            pynn_team_for(N, team_grain(N, threads), threads, _gn_forward_job, &job)


cdef void _gn_sums_columns(const floating* dy, const floating* x, const floating* gamma,
                           const floating* mean, const floating* inv_std, double* t1,
                           double* t2, floating* center, double* dgamma, double* dbeta,
                           double* sg, double* sgx, Py_ssize_t S, Py_ssize_t C, Py_ssize_t G,
                           bint rms_scaling) noexcept nogil:
    """Sample n by channel columns: t1 = sum(dy), t2 = sum(dy * (x - mean)) per channel over
    S, then the block's dgamma, dbeta (per channel) and the sample's sg, sgx (per group)."""
    cdef Py_ssize_t CG = C // G, s, g, c
    cdef double inv
    for c in range(C):
        t1[c] = 0.0
        t2[c] = 0.0
        center[c] = mean[c // CG]
    for s in range(S):
        _col_sums(dy + s * C, x + s * C, <const floating*>NULL, center, C, t1, t2)
    for g in range(G):
        inv = inv_std[g]
        sg[g] = 0.0
        sgx[g] = 0.0
        for c in range(g * CG, (g + 1) * CG):
            dbeta[c] += t1[c]
            dgamma[c] += (t2[c] + mean[g] * t1[c] if rms_scaling else t2[c]) * inv
            sg[g] += gamma[c] * t1[c]
            sgx[g] += gamma[c] * t2[c] * inv


cdef inline double _group_dx_a1(double inv, double sg, double m,
                                bint rms_scaling) noexcept nogil:
    """a1 of one group's dx = inv*(dy*gamma) - a1 - a2*(x - mu)."""
    return 0.0 if rms_scaling else inv * sg / m


cdef inline double _group_dx_a2(double mu, double inv, double sg, double sgx, double m,
                                bint rms_scaling) noexcept nogil:
    """a2 of one group's dx = inv*(dy*gamma) - a1 - a2*(x - mu)."""
    if rms_scaling:
        return inv * inv * (sgx + mu * inv * sg) / m
    return inv * inv * sgx / m


cdef void _gn_dx_columns(const floating* dy, const floating* x, const floating* gamma,
                         const floating* mean, const floating* inv_std, const double* sg,
                         const double* sgx, floating* dx, floating* center, floating* k_dy,
                         floating* k_x, floating* k_0, double m, Py_ssize_t S, Py_ssize_t C,
                         Py_ssize_t G, bint rms_scaling) noexcept nogil:
    """Sample n: the group coefficients spread over the channels, then dx row by row."""
    cdef Py_ssize_t CG = C // G, s, g, c
    cdef double a1, a2
    for g in range(G):
        a1 = _group_dx_a1(inv_std[g], sg[g], m, rms_scaling)
        a2 = _group_dx_a2(mean[g], inv_std[g], sg[g], sgx[g], m, rms_scaling)
        for c in range(g * CG, (g + 1) * CG):
            center[c] = mean[g]
            k_dy[c] = <floating>(inv_std[g] * gamma[c])
            k_x[c] = <floating>(-a2)
            k_0[c] = <floating>(-a1)
    for s in range(S):
        _bn_dx(dy + s * C, x + s * C, center, k_dy, k_x, k_0, dx + s * C, C)


cdef inline void _gn_back_sums_blocks(const _GnJob* j, const floating* dy, long begin,
                                      long end) noexcept nogil:
    """Blocks [begin, end): per (n, g) sg, sgx and the block's per-channel dgamma, dbeta."""
    cdef Py_ssize_t C = j.C, G = j.G, CG = j.C // j.G, slab = j.S * j.C, s, g, at, n
    cdef const floating* x = <const floating*>j.x
    cdef const floating* gamma = <const floating*>j.gamma
    cdef const floating* mean = <const floating*>j.mean
    cdef const floating* inv_std = <const floating*>j.inv_std
    cdef floating* vecs = <floating*>j.vecs
    cdef double* dgamma
    cdef double* dbeta
    cdef long i
    for i in range(begin, end):
        dgamma = j.part + 2 * (i + 1) * C
        dbeta = dgamma + C
        for n in range(j.N * i // j.nb, j.N * (i + 1) // j.nb):
            if j.columns:
                _gn_sums_columns(dy + n * slab, x + n * slab, gamma, mean + n * G,
                                 inv_std + n * G, j.cols + 2 * i * C,
                                 j.cols + (2 * i + 1) * C, vecs + 4 * i * C, dgamma, dbeta,
                                 j.sg + n * G, j.sgx + n * G, j.S, C, G, j.rms_scaling)
                continue
            for s in range(j.S):
                for g in range(G):
                    at = n * slab + s * C + g * CG
                    _group_back_sums(dy + at, x + at, gamma + g * CG, CG, mean[n * G + g],
                                     inv_std[n * G + g], j.rms_scaling, dgamma + g * CG,
                                     dbeta + g * CG, j.sg + n * G + g, j.sgx + n * G + g)


cdef void _gn_back_sums_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _GnJob* j = <_GnJob*>ctx
    if j.is_double:
        _gn_back_sums_blocks(j, <const double*>j.dy, begin, end)
    else:
        _gn_back_sums_blocks(j, <const float*>j.dy, begin, end)


cdef inline void _gn_dx_items(const _GnJob* j, const floating* dy, long begin,
                              long end) noexcept nogil:
    """dx of blocks [begin, end) (channel columns) or of samples [begin, end) (group runs)."""
    cdef Py_ssize_t C = j.C, G = j.G, CG = j.C // j.G, slab = j.S * j.C, s, g, at, n
    cdef const floating* x = <const floating*>j.x
    cdef const floating* gamma = <const floating*>j.gamma
    cdef const floating* mean = <const floating*>j.mean
    cdef const floating* inv_std = <const floating*>j.inv_std
    cdef floating* dx = <floating*>j.y
    cdef floating* vecs = <floating*>j.vecs
    cdef double mu, inv, a1, a2
    cdef long i
    if j.columns:
        for i in range(begin, end):
            for n in range(j.N * i // j.nb, j.N * (i + 1) // j.nb):
                _gn_dx_columns(dy + n * slab, x + n * slab, gamma, mean + n * G,
                               inv_std + n * G, j.sg + n * G, j.sgx + n * G, dx + n * slab,
                               vecs + 4 * i * C, vecs + (4 * i + 1) * C,
                               vecs + (4 * i + 2) * C, vecs + (4 * i + 3) * C, j.m, j.S, C,
                               G, j.rms_scaling)
        return
    for n in range(begin, end):
        for g in range(G):
            mu = mean[n * G + g]
            inv = inv_std[n * G + g]
            a1 = _group_dx_a1(inv, j.sg[n * G + g], j.m, j.rms_scaling)
            a2 = _group_dx_a2(mu, inv, j.sg[n * G + g], j.sgx[n * G + g], j.m, j.rms_scaling)
            for s in range(j.S):
                at = n * slab + s * C + g * CG
                _group_dx(dy + at, x + at, gamma + g * CG, <floating>mu, <floating>inv,
                          <floating>a1, <floating>a2, dx + at, CG)


cdef void _gn_dx_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _GnJob* j = <_GnJob*>ctx
    if j.is_double:
        _gn_dx_items(j, <const double*>j.dy, begin, end)
    else:
        _gn_dx_items(j, <const float*>j.dy, begin, end)


def _gn_backward(const floating[::1] dy, const floating[::1] x, const floating[::1] gamma,
                 const floating[::1] mean, const floating[::1] inv_std, floating[::1] dx,
                 floating[::1] dgamma, floating[::1] dbeta, Py_ssize_t N, Py_ssize_t S,
                 Py_ssize_t C, Py_ssize_t G, bint rms_scaling, bint need_input_grad):
    """Per (n, g) sg = sum(dy*gamma), sgx = sum(dy*gamma*xhat) and per channel dgamma, dbeta
    (partials per row block), then dx = inv*(g - a*mean(g) - xhat*(mean(g*xhat) +
    b*mu*inv*mean(g))), g = dy*gamma, with (a, b) = (1, 0), or (0, 1) under rms_scaling
    (y = x*inv*gamma: the mean enters through the variance only). Both passes on pynn's
    worker team; the partials of the fixed blocks add in block order."""
    cdef Py_ssize_t nb = _blocks(N), i, c
    cdef double[:, ::1] part = np.zeros((2 * (nb + 1), C))
    cdef double[::1] sg = np.zeros(N * G)
    cdef double[::1] sgx = np.zeros(N * G)
    cdef double[:, ::1] cols = np.empty((2 * nb, C))
    cdef floating[:, ::1] vecs = np.empty((4 * nb, C), dtype=np.asarray(mean).dtype)
    cdef _GnJob job
    cdef int threads = _threads_for(N * S * C)
    job.is_double, job.rms_scaling = floating is double, rms_scaling
    job.columns = S > 1 or C // G < GROUP_RUN_MIN
    job.dy, job.x, job.y, job.mean, job.inv_std = &dy[0], &x[0], &dx[0], &mean[0], &inv_std[0]
    job.gamma, job.cols, job.vecs, job.part = &gamma[0], &cols[0, 0], &vecs[0, 0], &part[0, 0]
    job.sg, job.sgx = &sg[0], &sgx[0]
    job.N, job.S, job.C, job.G, job.nb, job.m = N, S, C, G, nb, <double>S * (C // G)
    with nogil:
        pynn_team_for(nb, 1, threads, _gn_back_sums_job, &job)
    for i in range(nb):
        for c in range(C):
            part[0, c] += part[2 * (i + 1), c]
            part[1, c] += part[2 * (i + 1) + 1, c]
    for c in range(C):
        dgamma[c] = <floating>part[0, c]
        dbeta[c] = <floating>part[1, c]
    if not need_input_grad:
        return
    with nogil:
        if job.columns:
            pynn_team_for(nb, 1, threads, _gn_dx_job, &job)
        else:
            pynn_team_for(N, team_grain(N, threads), threads, _gn_dx_job, &job)


def group_norm_forward(x, gamma, beta, groups, epsilon=1e-3, rms_scaling=False):
    """Group normalization of x (N, ..., C): per sample and group of C/groups consecutive
    channels, over the group's channels and every axis between the first and the last
    -> (y, mean, inv_std), mean and inv_std (N, groups) for group_norm_backward."""
    x, gamma, beta, (N, S, C, G), epsilon, rms_scaling = operands.group_norm_forward(
        HOST, x, gamma, beta, groups, epsilon, rms_scaling)
    dtype = x.dtype
    gamma = _ones_or(gamma, C, dtype, 1)
    beta = _ones_or(beta, C, dtype, 0)
    y = np.empty_like(x)
    mean = np.zeros((N, G), dtype=dtype)
    inv_std = np.zeros((N, G), dtype=dtype)
    if x.size:
        _gn_forward(x.reshape(-1), y.reshape(-1), mean.reshape(-1), inv_std.reshape(-1),
                    gamma, beta, N, S, C, G, epsilon, rms_scaling)
    return y, mean, inv_std


def group_norm_backward(dy, x, gamma, mean, inv_std, groups, rms_scaling=False,
                        need_input_grad=True):
    """-> (dx or None, dgamma, dbeta) of y = group_norm_forward(x, ...)[0]."""
    (dy, x, gamma, mean, inv_std, (N, S, C, G), rms_scaling,
     need_input_grad) = operands.group_norm_backward(HOST, dy, x, gamma, mean, inv_std, groups,
                                                     rms_scaling, need_input_grad)
    dtype = x.dtype
    gamma = _ones_or(gamma, C, dtype, 1)
    dx = np.empty_like(x) if need_input_grad else None
    dgamma = np.zeros(C, dtype=dtype)
    dbeta = np.zeros(C, dtype=dtype)
    if x.size:
        flat = x.reshape(-1)
        _gn_backward(dy.reshape(-1), flat, gamma, mean.reshape(-1), inv_std.reshape(-1),
                     dx.reshape(-1) if dx is not None else np.empty(1, dtype), dgamma, dbeta,
                     N, S, C, G, rms_scaling, need_input_grad)
    return dx, dgamma, dbeta


# -- rms norm and unit norm: one statistic per row of x (R, C) --------------------------------
#
# Row r: s = sum(x^2) in double (four lanes folded in a fixed order), then inv = 1/sqrt(s/C +
# epsilon) (rms) or min(1/sqrt(s), 1/epsilon) (unit), y = x * inv * scale. Rows are
# independent: the forward runs them on pynn's worker team in any split. The backward runs
# fixed blocks of rows (at most MAX_BLOCKS, set by R alone): a row's dx needs only its own
# t = sum(dy * scale * x), and each block sums its dscale into its own double partial, the
# partials then folded in block order, so the bits never depend on the thread count.

cdef extern from *:
    """
    #define PYNN_ROW_NORM_KERNELS(SUF, T)                                                    \\
    /* sum(u * v * w) over one row (w NULL: ones), four lanes in double, fixed order. */    \\
    static inline double pynn_row_dot_##SUF(const T* restrict u, const T* restrict v,      \\
            const T* restrict w, Py_ssize_t n) {                                            \\
        double a[4] = {0, 0, 0, 0};                                                         \\
        Py_ssize_t i = 0;                                                                   \\
        int l;                                                                              \\
        if (w) {                                                                            \\
            for (; i + 4 <= n; i += 4)                                                      \\
                for (l = 0; l < 4; l++)                                                     \\
                    a[l] += (double)u[i + l] * w[i + l] * v[i + l];                         \\
            for (; i < n; i++)                                                              \\
                a[0] += (double)u[i] * w[i] * v[i];                                         \\
        } else {                                                                            \\
            for (; i + 4 <= n; i += 4)                                                      \\
                for (l = 0; l < 4; l++)                                                     \\
                    a[l] += (double)u[i + l] * v[i + l];                                    \\
            for (; i < n; i++)                                                              \\
                a[0] += (double)u[i] * v[i];                                                \\
        }                                                                                   \\
        return (a[0] + a[1]) + (a[2] + a[3]);                                               \\
    }                                                                                       \\
    /* y = x * inv * scale (scale NULL: ones), per index. */                                \\
    static inline void pynn_row_scale_##SUF(const T* restrict x, T* restrict y, T inv,     \\
            const T* restrict scale, Py_ssize_t n) {                                        \\
        Py_ssize_t i;                                                                       \\
        if (scale) {                                                                        \\
            for (i = 0; i < n; i++)                                                         \\
                y[i] = x[i] * inv * scale[i];                                               \\
        } else {                                                                            \\
            for (i = 0; i < n; i++)                                                         \\
                y[i] = x[i] * inv;                                                          \\
        }                                                                                   \\
    }                                                                                       \\
    /* dscale[i] += dy * x * inv (double), per index. */                                    \\
    static inline void pynn_row_dscale_##SUF(const T* restrict dy, const T* restrict x,    \\
            double inv, Py_ssize_t n, double* restrict dscale) {                            \\
        for (Py_ssize_t i = 0; i < n; i++)                                                  \\
            dscale[i] += (double)dy[i] * ((double)x[i] * inv);                              \\
    }                                                                                       \\
    /* dx = inv * dy * scale - k * x (scale NULL: ones), per index. */                      \\
    static inline void pynn_row_dx_##SUF(const T* restrict dy, const T* restrict x,        \\
            const T* restrict scale, T inv, T k, T* restrict dx, Py_ssize_t n) {            \\
        Py_ssize_t i;                                                                       \\
        if (scale) {                                                                        \\
            for (i = 0; i < n; i++)                                                         \\
                dx[i] = inv * dy[i] * scale[i] - k * x[i];                                  \\
        } else {                                                                            \\
            for (i = 0; i < n; i++)                                                         \\
                dx[i] = inv * dy[i] - k * x[i];                                             \\
        }                                                                                   \\
    }
    PYNN_ROW_NORM_KERNELS(f, float)
    PYNN_ROW_NORM_KERNELS(d, double)
    """
    double pynn_row_dot_f(const float* u, const float* v, const float* w,
                          Py_ssize_t n) noexcept nogil
    double pynn_row_dot_d(const double* u, const double* v, const double* w,
                          Py_ssize_t n) noexcept nogil
    void pynn_row_scale_f(const float* x, float* y, float inv, const float* scale,
                          Py_ssize_t n) noexcept nogil
    void pynn_row_scale_d(const double* x, double* y, double inv, const double* scale,
                          Py_ssize_t n) noexcept nogil
    void pynn_row_dscale_f(const float* dy, const float* x, double inv, Py_ssize_t n,
                           double* dscale) noexcept nogil
    void pynn_row_dscale_d(const double* dy, const double* x, double inv, Py_ssize_t n,
                           double* dscale) noexcept nogil
    void pynn_row_dx_f(const float* dy, const float* x, const float* scale, float inv, float k,
                       float* dx, Py_ssize_t n) noexcept nogil
    void pynn_row_dx_d(const double* dy, const double* x, const double* scale, double inv,
                       double k, double* dx, Py_ssize_t n) noexcept nogil


cdef inline double _row_dot(const floating* u, const floating* v, const floating* w,
                            Py_ssize_t n) noexcept nogil:
    if floating is float:
        return pynn_row_dot_f(u, v, w, n)
    else:
        return pynn_row_dot_d(u, v, w, n)


cdef inline void _row_scale(const floating* x, floating* y, floating inv,
                            const floating* scale, Py_ssize_t n) noexcept nogil:
    if floating is float:
        pynn_row_scale_f(x, y, inv, scale, n)
    else:
        pynn_row_scale_d(x, y, inv, scale, n)


cdef inline void _row_dscale(const floating* dy, const floating* x, double inv, Py_ssize_t n,
                             double* dscale) noexcept nogil:
    if floating is float:
        pynn_row_dscale_f(dy, x, inv, n, dscale)
    else:
        pynn_row_dscale_d(dy, x, inv, n, dscale)


cdef inline void _row_dx(const floating* dy, const floating* x, const floating* scale,
                         floating inv, floating k, floating* dx, Py_ssize_t n) noexcept nogil:
    if floating is float:
        pynn_row_dx_f(dy, x, scale, inv, k, dx, n)
    else:
        pynn_row_dx_d(dy, x, scale, inv, k, dx, n)


ctypedef struct _RowJob:
    bint is_double, unit, need_dx
    const void* x
    const void* dy
    const void* scale    # NULL: ones
    void* y              # forward: y; backward: dx
    void* inv
    double* part         # backward: (nb, C) block partials of dscale, or NULL
    Py_ssize_t R, C, nb
    double epsilon, cap  # cap: 1/epsilon in x's dtype (unit norm)


cdef inline void _row_norm_forward_rows(const _RowJob* j, const floating* x, long begin,
                                        long end) noexcept nogil:
    """Rows [begin, end): inv = 1/sqrt(mean(x^2) + eps), or min(1/sqrt(sum(x^2)), cap);
    y = x * inv * scale. A NaN sum gives a NaN inv (torch's minimum propagates it)."""
    cdef Py_ssize_t C = j.C
    cdef floating* y = <floating*>j.y
    cdef floating* inv = <floating*>j.inv
    cdef double s, r
    cdef long n
    for n in range(begin, end):
        s = _row_dot(x + n * C, x + n * C, <const floating*>NULL, C)
        if j.unit:
            r = 1.0 / sqrt(s)
            if r > j.cap:
                r = j.cap
        else:
            r = 1.0 / sqrt(s / C + j.epsilon)
        inv[n] = <floating>r
        _row_scale(x + n * C, y + n * C, inv[n], <const floating*>j.scale, C)


cdef void _row_norm_forward_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _RowJob* j = <_RowJob*>ctx
    if j.is_double:
        _row_norm_forward_rows(j, <const double*>j.x, begin, end)
    else:
        _row_norm_forward_rows(j, <const float*>j.x, begin, end)


cdef inline void _row_norm_backward_blocks(const _RowJob* j, const floating* dy, long begin,
                                           long end) noexcept nogil:
    """Blocks [begin, end) of rows: the block's dscale partial (rms), then per row
    t = sum(dy * scale * x) and dx = inv * dy * scale - k * x, k = inv^3 t / C (rms),
    inv^3 t (unit), or 0 (unit where the cap holds: inv is a constant there)."""
    cdef Py_ssize_t C = j.C, c
    cdef const floating* x = <const floating*>j.x
    cdef const floating* scale = <const floating*>j.scale
    cdef const floating* inv = <const floating*>j.inv
    cdef floating* dx = <floating*>j.y
    cdef double* part
    cdef double r, k
    cdef long i, n
    for i in range(begin, end):
        part = j.part + i * C if j.part != NULL else NULL
        if part != NULL:
            for c in range(C):
                part[c] = 0.0
        for n in range(j.R * i // j.nb, j.R * (i + 1) // j.nb):
            r = inv[n]
            if part != NULL:
                _row_dscale(dy + n * C, x + n * C, r, C, part)
            if not j.need_dx:
                continue
            if j.unit and r >= j.cap:
                k = 0.0
            else:
                k = r * r * r * _row_dot(dy + n * C, x + n * C, scale, C)
                if not j.unit:
                    k = k / C
            _row_dx(dy + n * C, x + n * C, scale, inv[n], <floating>k, dx + n * C, C)


cdef void _row_norm_backward_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _RowJob* j = <_RowJob*>ctx
    if j.is_double:
        _row_norm_backward_blocks(j, <const double*>j.dy, begin, end)
    else:
        _row_norm_backward_blocks(j, <const float*>j.dy, begin, end)


def _row_norm_forward(const floating[::1] x, floating[::1] y, floating[::1] inv, scale,
                      Py_ssize_t R, Py_ssize_t C, double epsilon, bint unit):
    """y (OUT), inv (OUT) of x (IN) viewed as (R, C); scale (IN, (C,)) or None."""
    cdef const floating[::1] s
    cdef _RowJob job
    cdef int threads = _threads_for(R * C)
    job.is_double, job.unit, job.need_dx = floating is double, unit, False
    job.x, job.y, job.inv, job.scale, job.part = &x[0], &y[0], &inv[0], NULL, NULL
    if scale is not None:
        s = scale
        job.scale = &s[0]
    job.R, job.C, job.nb = R, C, 0
    job.epsilon = epsilon
    job.cap = <floating>(1.0 / epsilon) if unit else 0.0
    with nogil:
        pynn_team_for(R, team_grain(R, threads), threads, _row_norm_forward_job, &job)


def _row_norm_backward(const floating[::1] dy, const floating[::1] x, scale,
                       const floating[::1] inv, floating[::1] dx, dscale, Py_ssize_t R,
                       Py_ssize_t C, double epsilon, bint unit, bint need_input_grad):
    """dx (OUT, when need_input_grad) and dscale (OUT, (C,) of x's dtype, or None) of x (IN)
    viewed as (R, C)."""
    cdef const floating[::1] s
    cdef floating[::1] ds
    cdef Py_ssize_t nb = _blocks(R), i, c
    cdef double[:, ::1] part
    cdef _RowJob job
    cdef int threads = _threads_for(R * C)
    job.is_double, job.unit, job.need_dx = floating is double, unit, need_input_grad
    job.dy, job.x, job.y, job.scale, job.part = &dy[0], &x[0], &dx[0], NULL, NULL
    job.inv = <void*>&inv[0]  # read only here
    if scale is not None:
        s = scale
        job.scale = &s[0]
    if dscale is not None:
        part = np.empty((nb, C))
        job.part = &part[0, 0]
    job.R, job.C, job.nb = R, C, nb
    job.epsilon = epsilon
    job.cap = <floating>(1.0 / epsilon) if unit else 0.0
    with nogil:
        pynn_team_for(nb, 1, threads, _row_norm_backward_job, &job)
    if dscale is not None:
        ds = dscale
        for c in range(C):
            for i in range(1, nb):
                part[0, c] += part[i, c]
            ds[c] = <floating>part[0, c]


def rms_norm_forward(x, scale, epsilon=1e-6):
    """Keras 3's RMS normalization over the last axis of x (..., C): y = x * inv_rms * scale,
    inv_rms = 1/sqrt(mean(x^2) + epsilon) per row -> (y, inv_rms of shape x.shape[:-1])."""
    x, scale, (R, C), epsilon = operands.rms_norm_forward(HOST, x, scale, epsilon)
    y = np.empty_like(x)
    inv = np.zeros(x.shape[:x.ndim - 1], dtype=x.dtype)  # wraparound is off
    if x.size:
        _row_norm_forward(x.reshape(-1), y.reshape(-1), inv.reshape(-1), scale, R, C, epsilon,
                          False)
    return y, inv


def rms_norm_backward(dy, x, scale, inv_rms, need_input_grad=True):
    """-> (dx or None, dscale) of y = rms_norm_forward(x, scale, ...)[0]: dscale = sum over the
    rows of dy * x * inv_rms; dx = inv_rms * g - x * inv_rms^3 * mean(g * x), g = dy * scale."""
    dy, x, scale, inv_rms, (R, C), need_input_grad = operands.rms_norm_backward(
        HOST, dy, x, scale, inv_rms, need_input_grad)
    dx = np.empty_like(x) if need_input_grad else None
    dscale = np.zeros(C, dtype=x.dtype)
    if x.size:
        _row_norm_backward(dy.reshape(-1), x.reshape(-1), scale, inv_rms.reshape(-1),
                           dx.reshape(-1) if dx is not None else np.empty(1, x.dtype), dscale,
                           R, C, 0.0, False, need_input_grad)
    return dx, dscale


def unit_norm_forward(x, epsilon=1e-12):
    """Keras 3's ops.normalize(x, order=2) over the last axis of x (..., C): y = x * inv_norm,
    inv_norm = min(1/sqrt(sum(x^2)), 1/epsilon) per row -> (y, inv_norm)."""
    x, (R, C), epsilon = operands.unit_norm_forward(HOST, x, epsilon)
    y = np.empty_like(x)
    inv = np.zeros(x.shape[:x.ndim - 1], dtype=x.dtype)  # wraparound is off
    if x.size:
        _row_norm_forward(x.reshape(-1), y.reshape(-1), inv.reshape(-1), None, R, C, epsilon,
                          True)
    return y, inv


def unit_norm_backward(dy, x, inv_norm, epsilon=1e-12):
    """-> dx of y = unit_norm_forward(x, epsilon)[0]: inv * dy - x * inv^3 * sum(dy * x) per
    row, or inv * dy in the rows where inv_norm is the cap 1/epsilon (a constant there)."""
    dy, x, inv_norm, (R, C), epsilon = operands.unit_norm_backward(HOST, dy, x, inv_norm,
                                                                   epsilon)
    dx = np.empty_like(x)
    if x.size:
        _row_norm_backward(dy.reshape(-1), x.reshape(-1), None, inv_norm.reshape(-1),
                           dx.reshape(-1), None, R, C, epsilon, True, True)
    return dx
