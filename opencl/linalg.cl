/* Linalg kernels: keras.ops' linear algebra on stacks of small dense matrices, the twin of
 * native/linalg.pyx (same names, same algorithms; see its design note).
 *
 * Legend: B the batch, m x n a matrix, n x n a square one, k a right-hand side's columns;
 * row-major. One work-item per matrix (correct first: the matrices are small and the batch
 * gives the parallelism); each works in a float scratch of its own in global memory
 * (`work`, sized by the host), so the kernels take any n. float32 throughout (the OpenCL
 * backend's dtype; the CPU twin accumulates in double).
 */
#include "common.h"

/* Jacobi: eigh zeroes an off-diagonal entry below JACOBI_EPS times its diagonal entries'
 * geometric mean; svd takes a column pair as orthogonal below JACOBI_EPS * sqrt(m) as their
 * cosine (LAPACK's sgesvj). float32's epsilon. */
#ifndef JACOBI_EPS
#define JACOBI_EPS 1.1920929e-7f
#endif
#ifndef MAX_SWEEPS
#define MAX_SWEEPS 64
#endif

typedef __global float *gfloat;
typedef __global const float *gcfloat;

void load_matrix(gcfloat src, gfloat dst, int count)
{
    for (int i = 0; i < count; ++i) dst[i] = src[i];
}

/* -- Cholesky --------------------------------------------------------------------------- */
int cholesky_in_place(gfloat a, int n)
{
    for (int j = 0; j < n; ++j) {
        float s = a[j * n + j];
        for (int p = 0; p < j; ++p) s -= a[j * n + p] * a[j * n + p];
        if (!(s > 0.0f)) return j + 1;
        const float d = sqrt(s);
        a[j * n + j] = d;
        for (int i = j + 1; i < n; ++i) {
            float t = a[i * n + j];
            for (int p = 0; p < j; ++p) t -= a[i * n + p] * a[j * n + p];
            a[i * n + j] = t / d;
        }
    }
    for (int i = 0; i < n; ++i)
        for (int j = i + 1; j < n; ++j) a[i * n + j] = 0.0f;
    return 0;
}

__kernel void cholesky_forward(__global const float *a, __global float *l, __global int *info,
                               const int B, const int n)
{
    const int b = get_global_id(0);
    GUARD(b, B);
    gfloat out = l + (size_t)b * n * n;
    load_matrix(a + (size_t)b * n * n, out, n * n);
    info[b] = cholesky_in_place(out, n);
}

/* -- LU ---------------------------------------------------------------------------------- */
__kernel void lu_factor_forward(__global const float *a, __global float *lu,
                                __global int *pivots, __global int *info, const int B,
                                const int n)
{
    const int b = get_global_id(0);
    GUARD(b, B);
    gfloat m = lu + (size_t)b * n * n;
    __global int *piv = pivots + (size_t)b * n;
    load_matrix(a + (size_t)b * n * n, m, n * n);
    int first_zero = 0;
    for (int j = 0; j < n; ++j) {
        int best = j;
        float big = fabs(m[j * n + j]);
        for (int i = j + 1; i < n; ++i) {
            if (fabs(m[i * n + j]) > big) {
                big = fabs(m[i * n + j]);
                best = i;
            }
        }
        piv[j] = best;
        if (best != j) {
            for (int p = 0; p < n; ++p) {
                const float t = m[j * n + p];
                m[j * n + p] = m[best * n + p];
                m[best * n + p] = t;
            }
        }
        if (m[j * n + j] == 0.0f) {
            if (first_zero == 0) first_zero = j + 1;
            continue;
        }
        for (int i = j + 1; i < n; ++i) {
            const float f = m[i * n + j] / m[j * n + j];
            m[i * n + j] = f;
            for (int p = j + 1; p < n; ++p) m[i * n + p] -= f * m[j * n + p];
        }
    }
    info[b] = first_zero;
}

void swap_rows(gfloat x, int i, int r, int k)
{
    for (int c = 0; c < k; ++c) {
        const float t = x[i * k + c];
        x[i * k + c] = x[r * k + c];
        x[r * k + c] = t;
    }
}

__kernel void lu_solve_forward(__global const float *lu_all, __global const int *pivots,
                               __global const float *rhs, __global float *out, const int B,
                               const int n, const int k, const int transpose)
{
    const int b = get_global_id(0);
    GUARD(b, B);
    gcfloat lu = lu_all + (size_t)b * n * n;
    __global const int *piv = pivots + (size_t)b * n;
    gfloat x = out + (size_t)b * n * k;
    load_matrix(rhs + (size_t)b * n * k, x, n * k);
    if (!transpose) {
        for (int i = 0; i < n; ++i) /* a device's pivots are not checked: skip a bad one */
            if (piv[i] > i && piv[i] < n) swap_rows(x, i, piv[i], k);
        for (int i = 0; i < n; ++i)
            for (int j = 0; j < i; ++j) {
                const float f = lu[i * n + j];
                for (int c = 0; c < k; ++c) x[i * k + c] -= f * x[j * k + c];
            }
        for (int i = n - 1; i >= 0; --i) {
            for (int j = i + 1; j < n; ++j) {
                const float f = lu[i * n + j];
                for (int c = 0; c < k; ++c) x[i * k + c] -= f * x[j * k + c];
            }
            for (int c = 0; c < k; ++c) x[i * k + c] /= lu[i * n + i];
        }
    } else {
        for (int i = 0; i < n; ++i) { /* U^T y = b */
            for (int j = 0; j < i; ++j) {
                const float f = lu[j * n + i];
                for (int c = 0; c < k; ++c) x[i * k + c] -= f * x[j * k + c];
            }
            for (int c = 0; c < k; ++c) x[i * k + c] /= lu[i * n + i];
        }
        for (int i = n - 1; i >= 0; --i) /* L^T z = y, unit diagonal */
            for (int j = i + 1; j < n; ++j) {
                const float f = lu[j * n + i];
                for (int c = 0; c < k; ++c) x[i * k + c] -= f * x[j * k + c];
            }
        for (int i = n - 1; i >= 0; --i)
            if (piv[i] > i && piv[i] < n) swap_rows(x, i, piv[i], k);
    }
}

__kernel void lu_slogdet_forward(__global const float *lu_all, __global const int *pivots,
                                 __global float *sign, __global float *logabs, const int B,
                                 const int n)
{
    const int b = get_global_id(0);
    GUARD(b, B);
    gcfloat lu = lu_all + (size_t)b * n * n;
    __global const int *piv = pivots + (size_t)b * n;
    float s = 1.0f, total = 0.0f;
    for (int i = 0; i < n; ++i) {
        const float d = lu[i * n + i];
        if (piv[i] != i) s = -s;
        if (d < 0.0f) s = -s;
        if (d == 0.0f) {
            s = 0.0f;
            total = -INFINITY;
        } else if (s != 0.0f) {
            total += log(fabs(d));
        }
    }
    sign[b] = s;
    logabs[b] = total;
}

/* -- triangular solves -------------------------------------------------------------------- */
__kernel void triangular_solve_forward(__global const float *a_all, __global const float *rhs,
                                       __global float *out, const int B, const int n,
                                       const int k, const int lower, const int transpose,
                                       const int unit_diagonal)
{
    const int b = get_global_id(0);
    GUARD(b, B);
    gcfloat a = a_all + (size_t)b * n * n;
    gfloat x = out + (size_t)b * n * k;
    load_matrix(rhs + (size_t)b * n * k, x, n * k);
    const int forward = lower != transpose;
    for (int s = 0; s < n; ++s) {
        const int i = forward ? s : n - 1 - s;
        const int lo = forward ? 0 : i + 1, hi = forward ? i : n;
        for (int j = lo; j < hi; ++j) {
            const float f = transpose ? a[j * n + i] : a[i * n + j];
            for (int c = 0; c < k; ++c) x[i * k + c] -= f * x[j * k + c];
        }
        if (!unit_diagonal)
            for (int c = 0; c < k; ++c) x[i * k + c] /= a[i * n + i];
    }
}

/* -- QR ---------------------------------------------------------------------------------- */
__kernel void qr_forward(__global const float *a, __global float *q_all, __global float *r_all,
                         __global float *work, const int B, const int m, const int n,
                         const int qcols)
{
    const int b = get_global_id(0);
    GUARD(b, B);
    const int p = min(m, n);
    gfloat r = work + (size_t)b * (m * n + p);
    gfloat tau = r + m * n;
    gfloat q = q_all + (size_t)b * m * qcols;
    load_matrix(a + (size_t)b * m * n, r, m * n);
    for (int j = 0; j < p; ++j) { /* LAPACK's dlarfg reflectors */
        const float alpha = r[j * n + j];
        float xnorm = 0.0f;
        for (int i = j + 1; i < m; ++i) xnorm = hypot(xnorm, r[i * n + j]);
        if (xnorm == 0.0f) {
            tau[j] = 0.0f;
            continue;
        }
        const float beta = -copysign(hypot(alpha, xnorm), alpha);
        tau[j] = (beta - alpha) / beta;
        const float scale = 1.0f / (alpha - beta);
        for (int i = j + 1; i < m; ++i) r[i * n + j] *= scale;
        r[j * n + j] = beta;
        for (int c = j + 1; c < n; ++c) {
            float dot = r[j * n + c];
            for (int i = j + 1; i < m; ++i) dot += r[i * n + j] * r[i * n + c];
            dot *= tau[j];
            r[j * n + c] -= dot;
            for (int i = j + 1; i < m; ++i) r[i * n + c] -= dot * r[i * n + j];
        }
    }
    for (int i = 0; i < m; ++i)
        for (int c = 0; c < qcols; ++c) q[i * qcols + c] = i == c ? 1.0f : 0.0f;
    for (int j = p - 1; j >= 0; --j) {
        if (tau[j] == 0.0f) continue;
        for (int c = j; c < qcols; ++c) {
            float dot = q[j * qcols + c];
            for (int i = j + 1; i < m; ++i) dot += r[i * n + j] * q[i * qcols + c];
            dot *= tau[j];
            q[j * qcols + c] -= dot;
            for (int i = j + 1; i < m; ++i) q[i * qcols + c] -= dot * r[i * n + j];
        }
    }
    gfloat rout = r_all + (size_t)b * qcols * n;
    for (int i = 0; i < qcols; ++i)
        for (int j = 0; j < n; ++j) rout[i * n + j] = (j >= i && i < m) ? r[i * n + j] : 0.0f;
}

/* -- shared by eigh and svd -------------------------------------------------------------- */
void swap_columns(gfloat v, int rows, int stride, int i, int j)
{
    for (int r = 0; r < rows; ++r) {
        const float t = v[r * stride + i];
        v[r * stride + i] = v[r * stride + j];
        v[r * stride + j] = t;
    }
}

/* Selection sort of w (cols) with the first cols columns of v (and of v2 unless rows2 is 0)
 * moved alongside. */
void sort_columns(gfloat w, gfloat v, int rows, int stride, gfloat v2, int rows2, int stride2,
                  int cols, int descending)
{
    for (int i = 0; i < cols; ++i) {
        int best = i;
        for (int j = i + 1; j < cols; ++j)
            if (descending ? w[j] > w[best] : w[j] < w[best]) best = j;
        if (best != i) {
            const float t = w[i];
            w[i] = w[best];
            w[best] = t;
            swap_columns(v, rows, stride, i, best);
            if (rows2) swap_columns(v2, rows2, stride2, i, best);
        }
    }
}

float sign_of_largest(gfloat v, int rows, int stride, int col)
{
    float big = 0.0f, sign = 1.0f;
    for (int r = 0; r < rows; ++r) {
        if (fabs(v[r * stride + col]) > big) {
            big = fabs(v[r * stride + col]);
            sign = copysign(1.0f, v[r * stride + col]);
        }
    }
    return sign;
}

void rotate_columns(gfloat x, int rows, int stride, int p, int q, float c, float s)
{
    for (int i = 0; i < rows; ++i) {
        const float a = x[i * stride + p], b = x[i * stride + q];
        x[i * stride + p] = c * a - s * b;
        x[i * stride + q] = s * a + c * b;
    }
}

/* -- symmetric eigenproblem: cyclic Jacobi ------------------------------------------------ */
__kernel void eigh_forward(__global const float *a_all, __global float *w_all,
                           __global float *v_all, __global float *work, const int B,
                           const int n)
{
    const int b = get_global_id(0);
    GUARD(b, B);
    gfloat a = work + (size_t)b * (2 * n * n + n);
    gfloat v = a + n * n;
    gfloat w = v + n * n;
    gcfloat src = a_all + (size_t)b * n * n;
    for (int i = 0; i < n; ++i)
        for (int j = 0; j < n; ++j) {
            a[i * n + j] = j > i ? src[j * n + i] : src[i * n + j];
            v[i * n + j] = i == j ? 1.0f : 0.0f;
        }
    for (int sweep = 0; sweep < MAX_SWEEPS; ++sweep) {
        int rotated = 0;
        for (int p = 0; p < n - 1; ++p)
            for (int q = p + 1; q < n; ++q) {
                const float apq = a[p * n + q];
                /* negligible beside its diagonal entries: zero (a rotation zeroes it too) */
                if (fabs(apq) <= JACOBI_EPS * sqrt(fabs(a[p * n + p]) * fabs(a[q * n + q]))) {
                    a[p * n + q] = a[q * n + p] = 0.0f;
                    continue;
                }
                rotated = 1;
                const float theta = (a[q * n + q] - a[p * n + p]) / (2.0f * apq);
                const float t = copysign(1.0f, theta) / (fabs(theta) + sqrt(theta * theta + 1.0f));
                const float c = 1.0f / sqrt(t * t + 1.0f), s = t * c;
                for (int i = 0; i < n; ++i) { /* rows p, q, mirrored into the columns */
                    if (i == p || i == q) continue;
                    const float x = a[p * n + i], y = a[q * n + i];
                    a[p * n + i] = a[i * n + p] = c * x - s * y;
                    a[q * n + i] = a[i * n + q] = s * x + c * y;
                }
                a[p * n + p] -= t * apq;
                a[q * n + q] += t * apq;
                a[p * n + q] = a[q * n + p] = 0.0f;
                rotate_columns(v, n, n, p, q, c, s);
            }
        if (!rotated) break;
    }
    for (int i = 0; i < n; ++i) w[i] = a[i * n + i];
    sort_columns(w, v, n, n, v, 0, 0, n, 0);
    gfloat wout = w_all + (size_t)b * n;
    gfloat vout = v_all + (size_t)b * n * n;
    for (int j = 0; j < n; ++j) {
        wout[j] = w[j];
        const float sign = sign_of_largest(v, n, n, j);
        for (int i = 0; i < n; ++i) vout[i * n + j] = sign * v[i * n + j];
    }
}

/* -- SVD: one-sided Jacobi on the taller of A and A^T ----------------------------------- */
__kernel void svd_forward(__global const float *a_all, __global float *u_all,
                          __global float *s_all, __global float *vh_all, __global float *work,
                          const int B, const int m, const int n, const int compute_uv,
                          const int wide, const int ucols)
{
    const int b = get_global_id(0);
    GUARD(b, B);
    const int rows = wide ? n : m, cols = wide ? m : n;
    gfloat g = work + (size_t)b * (rows * cols + rows * ucols + cols * cols + cols + rows);
    gfloat u = g + rows * cols;
    gfloat v = u + rows * ucols;
    gfloat s = v + cols * cols;
    gfloat scratch = s + cols;
    gcfloat src = a_all + (size_t)b * m * n;
    for (int i = 0; i < rows; ++i)
        for (int j = 0; j < cols; ++j) g[i * cols + j] = wide ? src[j * n + i] : src[i * n + j];
    for (int i = 0; i < cols; ++i)
        for (int j = 0; j < cols; ++j) v[i * cols + j] = i == j ? 1.0f : 0.0f;
    const float tol = JACOBI_EPS * sqrt((float)rows);
    for (int sweep = 0; sweep < MAX_SWEEPS; ++sweep) {
        int rotated = 0;
        for (int p = 0; p < cols - 1; ++p)
            for (int q = p + 1; q < cols; ++q) {
                float alpha = 0.0f, beta = 0.0f, gamma = 0.0f;
                for (int i = 0; i < rows; ++i) {
                    alpha += g[i * cols + p] * g[i * cols + p];
                    beta += g[i * cols + q] * g[i * cols + q];
                    gamma += g[i * cols + p] * g[i * cols + q];
                }
                if (gamma == 0.0f || fabs(gamma) <= tol * sqrt(alpha * beta)) continue;
                rotated = 1;
                const float zeta = (beta - alpha) / (2.0f * gamma);
                const float t = copysign(1.0f, zeta) / (fabs(zeta) + sqrt(1.0f + zeta * zeta));
                const float c = 1.0f / sqrt(1.0f + t * t), sn = c * t;
                rotate_columns(g, rows, cols, p, q, c, sn);
                rotate_columns(v, cols, cols, p, q, c, sn);
            }
        if (!rotated) break;
    }
    for (int j = 0; j < cols; ++j) {
        float sum = 0.0f;
        for (int i = 0; i < rows; ++i) sum += g[i * cols + j] * g[i * cols + j];
        s[j] = sqrt(sum);
    }
    sort_columns(s, g, rows, cols, v, cols, cols, cols, 1);
    int valid = cols;
    for (int j = 0; j < cols; ++j)
        if (s[j] == 0.0f) {
            valid = j;
            break;
        }
    for (int j = 0; j < ucols; ++j)
        for (int i = 0; i < rows; ++i) u[i * ucols + j] = j < valid ? g[i * cols + j] / s[j] : 0.0f;
    /* complete U: Gram-Schmidt (twice) of e_0, e_1, ... against the columns before */
    int e = 0;
    for (int j = valid; j < ucols; ++j) {
        while (e < rows) {
            for (int i = 0; i < rows; ++i) scratch[i] = i == e ? 1.0f : 0.0f;
            ++e;
            for (int rep = 0; rep < 2; ++rep)
                for (int c = 0; c < j; ++c) {
                    float dot = 0.0f;
                    for (int i = 0; i < rows; ++i) dot += u[i * ucols + c] * scratch[i];
                    for (int i = 0; i < rows; ++i) scratch[i] -= dot * u[i * ucols + c];
                }
            float norm = 0.0f;
            for (int i = 0; i < rows; ++i) norm += scratch[i] * scratch[i];
            norm = sqrt(norm);
            if (norm > 0.5f) {
                for (int i = 0; i < rows; ++i) u[i * ucols + j] = scratch[i] / norm;
                break;
            }
        }
    }
    for (int j = 0; j < cols; ++j) s_all[(size_t)b * cols + j] = s[j];
    if (!compute_uv) return;
    for (int j = 0; j < cols; ++j) { /* A's left vector's largest entry positive */
        const float sign = wide ? sign_of_largest(v, cols, cols, j)
                                : sign_of_largest(u, rows, ucols, j);
        for (int i = 0; i < rows; ++i) u[i * ucols + j] *= sign;
        for (int i = 0; i < cols; ++i) v[i * cols + j] *= sign;
    }
    if (!wide) {
        gfloat uo = u_all + (size_t)b * rows * ucols;
        gfloat vo = vh_all + (size_t)b * cols * cols;
        for (int i = 0; i < rows * ucols; ++i) uo[i] = u[i];
        for (int i = 0; i < cols; ++i)
            for (int j = 0; j < cols; ++j) vo[i * cols + j] = v[j * cols + i];
    } else {
        gfloat uo = u_all + (size_t)b * cols * cols;
        gfloat vo = vh_all + (size_t)b * ucols * rows;
        for (int i = 0; i < cols * cols; ++i) uo[i] = v[i];
        for (int i = 0; i < ucols; ++i)
            for (int j = 0; j < rows; ++j) vo[i * rows + j] = u[j * ucols + i];
    }
}
