/* Normalization, forward and backward side by side: batch norm and group norm (layer norm is
 * group norm with one group). The twin of native/normalization.pyx.
 *
 * Legend: A axes before the batch-norm axis, C channels, B axes after it (B = 1 for
 * channels_last), M = A*B values per channel; group norm: N batch, S spatial (the axes
 * between the first and the last), G groups of CG = C/G consecutive channels.
 *
 * Reductions: one work-group per statistic (a channel, or a (sample, group) pair) folds a
 * strided slice per work-item, then the fixed tree of wg_reduce.h: no atomics, the same bits
 * on every run. Statistics accumulate in float32, shifted by the first value of their slice
 * (so the variance does not cancel when |mean| >> std); variances are biased (Keras 3).
 * Elementwise passes: one work-item per element. A missing gamma (scale=False) is one and a
 * missing beta (center=False) zero: the has_gamma / has_beta flags, the buffer then unread.
 */
#include "common.h"
#include "wg_reduce.h"

#define GAMMA(c) (has_gamma ? gamma[c] : 1.0f)
#define BETA(c) (has_beta ? beta[c] : 0.0f)

/* -- batch norm ------------------------------------------------------------------------- */

/* Group c: the batch statistics of channel c (M >= 1), the moving ones updated in place:
 * moving = moving * momentum + batch * (1 - momentum). */
__kernel __attribute__((reqd_work_group_size(WG_SIZE, 1, 1)))
void batch_norm_statistics(__global const float *x, __global float *mean,
                           __global float *inv_std, __global float *moving_mean,
                           __global float *moving_variance, const int A, const int C,
                           const int B, const float momentum, const float epsilon)
{
    __local float buf[WG_SIZE];
    const int c = get_group_id(0);
    const int lid = get_local_id(0);
    const int M = A * B;
    const float k = x[(size_t)c * B];
    float s1 = 0.0f, s2 = 0.0f;
    for (int m = lid; m < M; m += WG_SIZE) {
        const float d = x[((size_t)(m / B) * C + c) * B + m % B] - k;
        s1 += d;
        s2 += d * d;
    }
    s1 = wg_sum_float(buf, s1);
    s2 = wg_sum_float(buf, s2);
    if (lid == 0) {
        const float mu = s1 / M;
        const float var = fmax(s2 / M - mu * mu, 0.0f);
        mean[c] = k + mu;
        inv_std[c] = rsqrt(var + epsilon);
        moving_mean[c] = moving_mean[c] * momentum + (k + mu) * (1.0f - momentum);
        moving_variance[c] = moving_variance[c] * momentum + var * (1.0f - momentum);
    }
}

/* Inference: the moving statistics are the ones to normalize with. */
__kernel void batch_norm_moving_statistics(__global const float *moving_mean,
                                           __global const float *moving_variance,
                                           __global float *mean, __global float *inv_std,
                                           const int C, const float epsilon)
{
    const int c = get_global_id(0);
    GUARD(c, C);
    mean[c] = moving_mean[c];
    inv_std[c] = rsqrt(moving_variance[c] + epsilon);
}

__kernel void batch_norm_normalize(__global const float *x, __global float *y,
                                   __global const float *mean, __global const float *inv_std,
                                   __global const float *gamma, __global const float *beta,
                                   const int has_gamma, const int has_beta, const int A,
                                   const int C, const int B)
{
    const int i = get_global_id(0);
    GUARD(i, A * C * B);
    const int c = (i / B) % C;
    y[i] = (x[i] - mean[c]) * (inv_std[c] * GAMMA(c)) + BETA(c);
}

/* Group c: dbeta = sum(dy), dgamma = sum(dy * xhat) over channel c. */
__kernel __attribute__((reqd_work_group_size(WG_SIZE, 1, 1)))
void batch_norm_sums(__global const float *dy, __global const float *x,
                     __global const float *mean, __global const float *inv_std,
                     __global float *dgamma, __global float *dbeta, const int A, const int C,
                     const int B)
{
    __local float buf[WG_SIZE];
    const int c = get_group_id(0);
    const int lid = get_local_id(0);
    const int M = A * B;
    const float mu = mean[c];
    float s1 = 0.0f, s2 = 0.0f;
    for (int m = lid; m < M; m += WG_SIZE) {
        const size_t i = ((size_t)(m / B) * C + c) * B + m % B;
        s1 += dy[i];
        s2 += dy[i] * (x[i] - mu);
    }
    s1 = wg_sum_float(buf, s1);
    s2 = wg_sum_float(buf, s2);
    if (lid == 0) {
        dbeta[c] = s1;
        dgamma[c] = s2 * inv_std[c];
    }
}

/* dx = gamma*inv_std*dy, less the batch statistics' share when they came from this batch:
 * gamma*inv_std*(dy - dbeta/M - xhat*dgamma/M). */
__kernel void batch_norm_backward_input(__global const float *dy, __global const float *x,
                                        __global const float *gamma, const int has_gamma,
                                        __global const float *mean,
                                        __global const float *inv_std,
                                        __global const float *dgamma,
                                        __global const float *dbeta, __global float *dx,
                                        const int A, const int C, const int B,
                                        const int batch_stats)
{
    const int i = get_global_id(0);
    GUARD(i, A * C * B);
    const int c = (i / B) % C;
    const float inv = inv_std[c];
    float d = dy[i];
    if (batch_stats) {
        const float M = (float)A * B;
        d -= dbeta[c] / M + (x[i] - mean[c]) * inv * dgamma[c] / M;
    }
    dx[i] = GAMMA(c) * inv * d;
}

/* -- group norm (and layer norm) -------------------------------------------------------- */

/* Element k of group g of sample n, k in [0, S*CG). */
#define GN_INDEX(n, g, k) (((size_t)(n) * S + (k) / CG) * C + (size_t)(g) * CG + (k) % CG)

/* Group (n, g): mean and 1/sqrt(var + epsilon) over the group's S*CG values. */
__kernel __attribute__((reqd_work_group_size(WG_SIZE, 1, 1)))
void group_norm_statistics(__global const float *x, __global float *mean,
                           __global float *inv_std, const int N, const int S, const int C,
                           const int G, const float epsilon)
{
    __local float buf[WG_SIZE];
    const int ng = get_group_id(0);
    const int n = ng / G, g = ng % G, CG = C / G;
    const int lid = get_local_id(0);
    const int M = S * CG;
    const float k = x[GN_INDEX(n, g, 0)];
    float s1 = 0.0f, s2 = 0.0f;
    for (int m = lid; m < M; m += WG_SIZE) {
        const float d = x[GN_INDEX(n, g, m)] - k;
        s1 += d;
        s2 += d * d;
    }
    s1 = wg_sum_float(buf, s1);
    s2 = wg_sum_float(buf, s2);
    if (lid == 0) {
        const float mu = s1 / M;
        mean[ng] = k + mu;
        inv_std[ng] = rsqrt(fmax(s2 / M - mu * mu, 0.0f) + epsilon);
    }
}

/* rms_scaling (Keras's deprecated option) scales x by the inverse std without centering. */
__kernel void group_norm_normalize(__global const float *x, __global float *y,
                                   __global const float *mean, __global const float *inv_std,
                                   __global const float *gamma, __global const float *beta,
                                   const int has_gamma, const int has_beta, const int N,
                                   const int S, const int C, const int G, const int rms_scaling)
{
    const int i = get_global_id(0);
    GUARD(i, N * S * C);
    const int c = i % C;
    const int ng = (i / (S * C)) * G + c / (C / G);
    const float mu = rms_scaling ? 0.0f : mean[ng];
    y[i] = (x[i] - mu) * inv_std[ng] * GAMMA(c) + BETA(c);
}

/* Group (n, g): sg = sum(dy*gamma), sgx = sum(dy*gamma*xhat), xhat the centered normalized x. */
__kernel __attribute__((reqd_work_group_size(WG_SIZE, 1, 1)))
void group_norm_group_sums(__global const float *dy, __global const float *x,
                           __global const float *gamma, const int has_gamma,
                           __global const float *mean, __global const float *inv_std,
                           __global float *sg, __global float *sgx, const int N, const int S,
                           const int C, const int G)
{
    __local float buf[WG_SIZE];
    const int ng = get_group_id(0);
    const int n = ng / G, g = ng % G, CG = C / G;
    const int lid = get_local_id(0);
    const int M = S * CG;
    const float mu = mean[ng];
    float s1 = 0.0f, s2 = 0.0f;
    for (int m = lid; m < M; m += WG_SIZE) {
        const size_t i = GN_INDEX(n, g, m);
        const float d = dy[i] * GAMMA(g * CG + m % CG);
        s1 += d;
        s2 += d * (x[i] - mu);
    }
    s1 = wg_sum_float(buf, s1);
    s2 = wg_sum_float(buf, s2);
    if (lid == 0) {
        sg[ng] = s1;
        sgx[ng] = s2 * inv_std[ng];
    }
}

/* Group c: dbeta = sum(dy), dgamma = sum(dy * yhat) over the N*S rows of channel c
 * (yhat = xhat, or x*inv_std under rms_scaling). */
__kernel __attribute__((reqd_work_group_size(WG_SIZE, 1, 1)))
void group_norm_channel_sums(__global const float *dy, __global const float *x,
                             __global const float *mean, __global const float *inv_std,
                             __global float *dgamma, __global float *dbeta, const int N,
                             const int S, const int C, const int G, const int rms_scaling)
{
    __local float buf[WG_SIZE];
    const int c = get_group_id(0);
    const int g = c / (C / G);
    const int lid = get_local_id(0);
    float s1 = 0.0f, s2 = 0.0f;
    for (int r = lid; r < N * S; r += WG_SIZE) {
        const int ng = (r / S) * G + g;
        const size_t i = (size_t)r * C + c;
        const float mu = rms_scaling ? 0.0f : mean[ng];
        s1 += dy[i];
        s2 += dy[i] * (x[i] - mu) * inv_std[ng];
    }
    s1 = wg_sum_float(buf, s1);
    s2 = wg_sum_float(buf, s2);
    if (lid == 0) {
        dbeta[c] = s1;
        dgamma[c] = s2;
    }
}

/* dx = inv*(g - a*mean(g) - xhat*(mean(g*xhat) + b*mu*inv*mean(g))), g = dy*gamma, with
 * (a, b) = (1, 0), or (0, 1) under rms_scaling (the mean enters through the variance only). */
__kernel void group_norm_backward_input(__global const float *dy, __global const float *x,
                                        __global const float *gamma, const int has_gamma,
                                        __global const float *mean,
                                        __global const float *inv_std,
                                        __global const float *sg, __global const float *sgx,
                                        __global float *dx, const int N, const int S,
                                        const int C, const int G, const int rms_scaling)
{
    const int i = get_global_id(0);
    GUARD(i, N * S * C);
    const int c = i % C;
    const int ng = (i / (S * C)) * G + c / (C / G);
    const float M = (float)S * (C / G);
    const float inv = inv_std[ng], mu = mean[ng];
    const float xhat = (x[i] - mu) * inv;
    const float mg = sg[ng] / M, mgx = sgx[ng] / M;
    const float g = dy[i] * GAMMA(c);
    dx[i] = rms_scaling ? inv * (g - xhat * (mgx + mu * inv * mg))
                        : inv * (g - mg - xhat * mgx);
}
