/* Normalization, forward and backward side by side: batch norm and group norm (layer norm is
 * group norm with one group), rms norm and unit norm (a statistic per row, at the end). The
 * twin of native/normalization.pyx.
 *
 * Legend: A axes before the batch-norm axis, C channels, B axes after it (B = 1 for
 * channels_last), M = A*B values per channel; group norm: N batch, S spatial (the axes
 * between the first and the last), G groups of CG = C/G consecutive channels.
 *
 * Reductions, all deterministic (no atomics, a fixed order set by the sizes alone):
 * - over rows per channel (batch norm, dgamma/dbeta; narrow groups): "partials" kernels,
 *   work-item (p, c) folding every P-th row of channel c so that neighbouring work-items
 *   read neighbouring channels (coalesced in channels_last), then a fold of the P partials;
 * - within a sample's group of at least GN_RUN_MIN channels (layer norm's rows): one
 *   work-group per (sample, group), a strided slice per work-item, then the tree of
 *   wg_reduce.h.
 * Statistics accumulate in float32, shifted by the first value of their slice (so the
 * variance does not cancel when |mean| >> std); variances are biased (Keras 3).
 * Elementwise passes: one work-item per element. A missing gamma (scale=False) is one and a
 * missing beta (center=False) zero: the has_gamma / has_beta flags, the buffer then unread.
 * Batch norm may end in an elementwise activation (act, alpha as activation.h): the forward
 * applies it to the normalized value, the backward takes dy back through it with the
 * pre-activation rebuilt from x (BN_PRE), never stored.
 */
#include "common.h"
#include "wg_reduce.h"
#include "activation.h"

#define GAMMA(c) (has_gamma ? gamma[c] : 1.0f)
#define BETA(c) (has_beta ? beta[c] : 0.0f)
/* The normalized value of element i in channel c, one expression for forward and backward. */
#define BN_PRE(i, c) ((x[i] - mean[c]) * (inv_std[c] * GAMMA(c)) + BETA(c))

/* dy of the activated output taken back to the pre-activation z. */
float bn_act_grad(float dy, float z, int act, float alpha)
{
    return act == ACT_LINEAR ? dy : act_grad(dy, z, act_value(z, act, alpha), act, alpha);
}

/* -- batch norm ------------------------------------------------------------------------- */

/* Stage 1 of a per-channel reduction: work-item (p, c) folds rows p, p + P, p + 2P, ... of
 * channel c, so neighbouring work-items read neighbouring channels of a row (coalesced for
 * channels_last). Statistics (backward = 0): u = x, shifted by the channel's first value;
 * backward: u = dy (through the activation), x centered on the mean. part1/part2 (P, C)
 * receive sum(u - ku) and sum((u - ku) * (x - kv)); inv_std .. alpha are read only by a
 * backward with an activation. */
__kernel void batch_norm_partials(__global const float *u, __global const float *x,
                                  __global const float *mean, __global float *part1,
                                  __global float *part2, const int A, const int C, const int B,
                                  const int P, const int backward,
                                  __global const float *inv_std, __global const float *gamma,
                                  __global const float *beta, const int has_gamma,
                                  const int has_beta, const int act, const float alpha)
{
    const int gid = get_global_id(0);
    GUARD(gid, P * C);
    const int c = gid % C, p = gid / C;
    const int M = A * B;
    const float ku = backward ? 0.0f : u[(size_t)c * B];
    const float kv = backward ? mean[c] : ku;
    float s1 = 0.0f, s2 = 0.0f;
    for (int m = p; m < M; m += P) {
        const size_t i = ((size_t)(m / B) * C + c) * B + m % B;
        const float d = (backward && act != ACT_LINEAR
                         ? bn_act_grad(u[i], BN_PRE(i, c), act, alpha) : u[i]) - ku;
        s1 += d;
        s2 += d * (x[i] - kv);
    }
    part1[gid] = s1;
    part2[gid] = s2;
}

/* Stage 2, statistics: channel c folds its P partials in order, then the moving statistics
 * move: moving = moving * momentum + batch * (1 - momentum). Needs M >= 1. */
__kernel void batch_norm_statistics(__global const float *part1, __global const float *part2,
                                    __global const float *x, __global float *mean,
                                    __global float *inv_std, __global float *moving_mean,
                                    __global float *moving_variance, const int A, const int C,
                                    const int B, const int P, const float momentum,
                                    const float epsilon)
{
    const int c = get_global_id(0);
    GUARD(c, C);
    float s1 = 0.0f, s2 = 0.0f;
    for (int p = 0; p < P; ++p) {
        s1 += part1[p * C + c];
        s2 += part2[p * C + c];
    }
    const float M = (float)A * B;
    const float mu = s1 / M;
    const float var = fmax(s2 / M - mu * mu, 0.0f);
    const float batch_mean = x[(size_t)c * B] + mu;
    mean[c] = batch_mean;
    inv_std[c] = rsqrt(var + epsilon);
    moving_mean[c] = moving_mean[c] * momentum + batch_mean * (1.0f - momentum);
    moving_variance[c] = moving_variance[c] * momentum + var * (1.0f - momentum);
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
                                   const int C, const int B, const int act, const float alpha)
{
    const int i = get_global_id(0);
    GUARD(i, A * C * B);
    const int c = (i / B) % C;
    y[i] = act_value(BN_PRE(i, c), act, alpha);
}

/* Stage 2, backward: dbeta = sum(dy), dgamma = sum(dy * (x - mean)) * inv_std (scale NULL:
 * no factor, group norm's channel sums), each channel's P partials folded in order. */
__kernel void channel_partials_fold(__global const float *part1, __global const float *part2,
                                    __global const float *scale, const int has_scale,
                                    __global float *dgamma, __global float *dbeta, const int C,
                                    const int P)
{
    const int c = get_global_id(0);
    GUARD(c, C);
    float s1 = 0.0f, s2 = 0.0f;
    for (int p = 0; p < P; ++p) {
        s1 += part1[p * C + c];
        s2 += part2[p * C + c];
    }
    dbeta[c] = s1;
    dgamma[c] = has_scale ? s2 * scale[c] : s2;
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
                                        const int batch_stats, __global const float *beta,
                                        const int has_beta, const int act, const float alpha)
{
    const int i = get_global_id(0);
    GUARD(i, A * C * B);
    const int c = (i / B) % C;
    const float inv = inv_std[c];
    float d = act == ACT_LINEAR ? dy[i] : bn_act_grad(dy[i], BN_PRE(i, c), act, alpha);
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

/* Stage 1 of dgamma/dbeta: work-item (p, c) folds rows p, p + P, ... of the N*S rows of
 * channel c: sum(dy) and sum(dy * yhat), yhat = xhat, or x*inv_std under rms_scaling. */
__kernel void group_norm_channel_partials(__global const float *dy, __global const float *x,
                                          __global const float *mean,
                                          __global const float *inv_std, __global float *part1,
                                          __global float *part2, const int N, const int S,
                                          const int C, const int G, const int P,
                                          const int rms_scaling)
{
    const int gid = get_global_id(0);
    GUARD(gid, P * C);
    const int c = gid % C, p = gid / C;
    const int g = c / (C / G);
    float s1 = 0.0f, s2 = 0.0f;
    for (int r = p; r < N * S; r += P) {
        const int ng = (r / S) * G + g;
        const size_t i = (size_t)r * C + c;
        const float mu = rms_scaling ? 0.0f : mean[ng];
        s1 += dy[i];
        s2 += dy[i] * (x[i] - mu) * inv_std[ng];
    }
    part1[gid] = s1;
    part2[gid] = s2;
}

/* Groups narrower than a coalesced run: stage 1 by channel columns within each sample.
 * Work-item (n, p, c) folds rows s = p, p + P, ... of sample n, channel c. Statistics
 * (backward = 0): sum(x - k) and sum((x - k)^2), k the group's first value, so channels of
 * one group add up; backward: sum(dy*gamma) and sum(dy*gamma*xhat). part1/part2 (N, P, C). */
__kernel void group_norm_column_partials(__global const float *dy, __global const float *x,
                                         __global const float *gamma, const int has_gamma,
                                         __global const float *mean,
                                         __global const float *inv_std, __global float *part1,
                                         __global float *part2, const int N, const int S,
                                         const int C, const int G, const int P,
                                         const int backward)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * P * C);
    const int c = gid % C, p = (gid / C) % P, n = gid / (C * P);
    const int CG = C / G, ng = n * G + c / CG;
    __global const float *xn = x + (size_t)n * S * C;
    float s1 = 0.0f, s2 = 0.0f;
    if (backward) {
        __global const float *dyn = dy + (size_t)n * S * C;
        const float mu = mean[ng], inv = inv_std[ng], gm = GAMMA(c);
        for (int s = p; s < S; s += P) {
            const float g = dyn[(size_t)s * C + c] * gm;
            s1 += g;
            s2 += g * (xn[(size_t)s * C + c] - mu) * inv;
        }
    } else {
        const float k = xn[(c / CG) * CG];
        for (int s = p; s < S; s += P) {
            const float d = xn[(size_t)s * C + c] - k;
            s1 += d;
            s2 += d * d;
        }
    }
    part1[gid] = s1;
    part2[gid] = s2;
}

/* Stage 2 of the column partials: work-item (n, g) folds its P x CG partials in order into
 * out1/out2 (N, G); with statistics = 1 they become the mean and 1/sqrt(var + epsilon). */
__kernel void group_norm_column_fold(__global const float *part1, __global const float *part2,
                                     __global const float *x, __global float *out1,
                                     __global float *out2, const int N, const int S,
                                     const int C, const int G, const int P,
                                     const int statistics, const float epsilon)
{
    const int ng = get_global_id(0);
    GUARD(ng, N * G);
    const int n = ng / G, g = ng % G, CG = C / G;
    float s1 = 0.0f, s2 = 0.0f;
    for (int p = 0; p < P; ++p) {
        const size_t row = ((size_t)n * P + p) * C + g * CG;
        for (int j = 0; j < CG; ++j) {
            s1 += part1[row + j];
            s2 += part2[row + j];
        }
    }
    if (statistics) {
        const float M = (float)S * CG;
        const float mu = s1 / M;
        out1[ng] = x[(size_t)n * S * C + g * CG] + mu;
        out2[ng] = rsqrt(fmax(s2 / M - mu * mu, 0.0f) + epsilon);
    } else {
        out1[ng] = s1;
        out2[ng] = s2;
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

/* -- rms norm and unit norm: one statistic per row of x (R, C) -------------------------- */
/* Row r: s = sum(x^2), inv = rsqrt(s / C + epsilon) (rms) or min(rsqrt(s), cap) (unit, cap =
 * 1/epsilon as the host rounds it), y = x * inv * scale. Rows of at least the host's
 * GROUP_RUN_MIN values reduce in one work-group each (the tree of wg_reduce.h), narrower
 * ones in one work-item each. dscale folds by channel columns as group norm's dgamma does. */
#define SCALE(c) (has_scale ? scale[c] : 1.0f)

/* sum over row r of u * v * (w where has_w), the values start, start + step, ... */
float row_norm_dot(__global const float *u, __global const float *v,
                   __global const float *w, const int has_w, const int r, const int C,
                   const int start, const int step)
{
    __global const float *ur = u + (size_t)r * C;
    __global const float *vr = v + (size_t)r * C;
    float s = 0.0f;
    for (int c = start; c < C; c += step)
        s += (has_w ? ur[c] * w[c] : ur[c]) * vr[c];
    return s;
}

/* The row's inverse norm from its sum of squares; NaN stays NaN (torch's minimum). */
float row_norm_inv(const float s, const int C, const float epsilon, const int unit,
                   const float cap)
{
    if (unit) {
        const float r = rsqrt(s);
        return r > cap ? cap : r;
    }
    return rsqrt(s / C + epsilon);
}

/* statistics = 1: out[r] = the inverse norm of row r of u (u = v = x, no w); statistics =
 * 0: out[r] = sum(u * v * w) (the backward's t = sum(dy * scale * x)). One work-group per
 * row. */
__kernel __attribute__((reqd_work_group_size(WG_SIZE, 1, 1)))
void row_norm_sums(__global const float *u, __global const float *v,
                   __global const float *w, const int has_w, __global float *out, const int R,
                   const int C, const int statistics, const float epsilon, const int unit,
                   const float cap)
{
    __local float buf[WG_SIZE];
    const int r = get_group_id(0);
    const int lid = get_local_id(0);
    float s = row_norm_dot(u, v, w, has_w, r, C, lid, WG_SIZE);
    s = wg_sum_float(buf, s);
    if (lid == 0)
        out[r] = statistics ? row_norm_inv(s, C, epsilon, unit, cap) : s;
}

/* row_norm_sums for narrow rows: one work-item per row. */
__kernel void row_norm_sums_narrow(__global const float *u, __global const float *v,
                                   __global const float *w, const int has_w,
                                   __global float *out, const int R, const int C,
                                   const int statistics, const float epsilon, const int unit,
                                   const float cap)
{
    const int r = get_global_id(0);
    GUARD(r, R);
    const float s = row_norm_dot(u, v, w, has_w, r, C, 0, 1);
    out[r] = statistics ? row_norm_inv(s, C, epsilon, unit, cap) : s;
}

__kernel void row_norm_normalize(__global const float *x, __global float *y,
                                 __global const float *inv, __global const float *scale,
                                 const int has_scale, const int R, const int C)
{
    const int i = get_global_id(0);
    GUARD(i, R * C);
    y[i] = x[i] * inv[i / C] * SCALE(i % C);
}

/* Stage 1 of dscale: work-item (p, c) folds rows p, p + P, ... of dy * x * inv into
 * part (P, C). */
__kernel void rms_norm_scale_partials(__global const float *dy, __global const float *x,
                                      __global const float *inv, __global float *part,
                                      const int R, const int C, const int P)
{
    const int gid = get_global_id(0);
    GUARD(gid, P * C);
    const int c = gid % C, p = gid / C;
    float s = 0.0f;
    for (int r = p; r < R; r += P) {
        const size_t i = (size_t)r * C + c;
        s += dy[i] * (x[i] * inv[r]);
    }
    part[gid] = s;
}

/* Stage 2: channel c folds its P partials in order. */
__kernel void rms_norm_scale_fold(__global const float *part, __global float *dscale,
                                  const int C, const int P)
{
    const int c = get_global_id(0);
    GUARD(c, C);
    float s = 0.0f;
    for (int p = 0; p < P; ++p)
        s += part[p * C + c];
    dscale[c] = s;
}

/* dx = inv * dy * scale - k * x, k = inv^3 t / C (rms), inv^3 t (unit), or 0 (unit where
 * inv is the cap: a constant there), t = sum(dy * scale * x) of the row. */
__kernel void row_norm_backward_input(__global const float *dy, __global const float *x,
                                      __global const float *scale, const int has_scale,
                                      __global const float *inv, __global const float *t,
                                      __global float *dx, const int R, const int C,
                                      const int unit, const float cap)
{
    const int i = get_global_id(0);
    GUARD(i, R * C);
    const int r = i / C;
    const float v = inv[r];
    const float k = unit ? (v >= cap ? 0.0f : v * v * (v * t[r])) : v * v * (v * t[r]) / C;
    dx[i] = v * dy[i] * SCALE(i % C) - k * x[i];
}
