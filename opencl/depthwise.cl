/* Channel-grouped convolutions, forward and backward side by side: DepthwiseConv2D and
 * Conv2D(groups=G) on one set of kernels (depthwise_conv2d_forward, _backward_input,
 * _backward_weight, depthwise_sum_partials; the host names them for both op families).
 * The twin of native/depthwise.pyx.
 *
 * Legend: N batch, H/W input spatial, C input channels, G groups, CG = C/G input channels and
 * FG filters per group, F = G*FG output channels, KH/KW kernel spatial, HO/WO output spatial,
 * sh/sw strides, dh/dw dilation, ph/pw leading pads (Keras 'same': the odd pixel goes after).
 * Layout NHWC; the kernel is (KH, KW, CG, F): output channel o of group o / FG reads input
 * channels (o / FG)*CG ... + CG - 1. Depthwise is G = C, CG = 1, FG = M, its (KH, KW, C, M)
 * kernel as it is: output channel c*M + m reads input channel c, Keras's order.
 * One work-item per output (forward), per dx element (backward_input, a gather: no atomics, a
 * fixed order), per (pixel chunk, kernel entry) for backward_weight, whose chunk partials
 * depthwise_sum_partials adds in chunk order. Channels are the fastest index, so neighbouring
 * work-items read neighbouring addresses.
 */
#include "common.h"
#include "activation.h"

#define DW_GEOM                                                                              \
    const int N, const int H, const int W, const int C, const int G, const int CG,           \
        const int FG, const int F, const int HO, const int WO, const int KH, const int KW,   \
        const int sh, const int sw, const int dh, const int dw, const int ph, const int pw

__kernel void depthwise_conv2d_forward(__global const float *restrict x,
                                       __global const float *restrict wt,
                                       __global const float *restrict bias,
                                       __global float *restrict y, __global float *restrict z,
                                       const int act, const float alpha, DW_GEOM)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * HO * WO * F);
    const int o = gid % F;
    int t = gid / F;
    const int wo = t % WO;
    t /= WO;
    const int ho = t % HO;
    const int n = t / HO;
    const int c0 = (o / FG) * CG;
    /* The bias is the start value, as on the CPU. */
    float acc = bias ? bias[o] : 0.0f;
    for (int kh = 0; kh < KH; ++kh) {
        const int h = ho * sh - ph + kh * dh;
        if (h < 0 || h >= H)
            continue;
        for (int kw = 0; kw < KW; ++kw) {
            const int w = wo * sw - pw + kw * dw;
            if (w < 0 || w >= W)
                continue;
            __global const float *xp = x + (((size_t)n * H + h) * W + w) * C + c0;
            __global const float *kp = wt + (size_t)(kh * KW + kw) * CG * F + o;
            for (int ci = 0; ci < CG; ++ci)
                acc += xp[ci] * kp[(size_t)ci * F];
        }
    }
    if (z)
        z[gid] = acc;
    y[gid] = act_value(acc, act, alpha);
}

__kernel void depthwise_conv2d_backward_input(__global const float *restrict dz,
                                              __global const float *restrict wt,
                                              __global float *restrict dx, DW_GEOM)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * H * W * C);
    const int c = gid % C;
    int t = gid / C;
    const int w = t % W;
    t /= W;
    const int h = t % H;
    const int n = t / H;
    const int grp = c / CG, ci = c % CG;
    float acc = 0.0f;
    for (int kh = 0; kh < KH; ++kh) {
        const int hh = h + ph - kh * dh;
        if (hh < 0 || hh % sh != 0 || hh / sh >= HO)
            continue;
        const int ho = hh / sh;
        for (int kw = 0; kw < KW; ++kw) {
            const int ww = w + pw - kw * dw;
            if (ww < 0 || ww % sw != 0 || ww / sw >= WO)
                continue;
            const int wo = ww / sw;
            __global const float *d = dz + (((size_t)n * HO + ho) * WO + wo) * F + grp * FG;
            __global const float *k = wt + ((size_t)(kh * KW + kw) * CG + ci) * F + grp * FG;
            float s = 0.0f;
            for (int m = 0; m < FG; ++m)
                s += d[m] * k[m];
            acc += s;
        }
    }
    dx[gid] = acc;
}

/* partial[p, (kh, kw, ci, o)] = sum over the output pixels of chunk p (P chunks of the
 * N*HO*WO pixels, in order) of x[tap, channel (o / FG)*CG + ci] * dz[pixel, o]. */
__kernel void depthwise_conv2d_backward_weight(__global const float *restrict x,
                                               __global const float *restrict dz,
                                               __global float *restrict partial, const int P,
                                               DW_GEOM)
{
    const int K = KH * KW * CG * F;
    const int gid = get_global_id(0);
    GUARD(gid, P * K);
    const int idx = gid % K, p = gid / K;
    const int o = idx % F, t = idx / F;
    const int ci = t % CG, tap = t / CG;
    const int kw = tap % KW, kh = tap / KW;
    const int c = (o / FG) * CG + ci;
    const long pixels = (long)N * HO * WO;
    const int p0 = (int)(pixels * p / P), p1 = (int)(pixels * (p + 1) / P);
    float acc = 0.0f;
    for (int q = p0; q < p1; ++q) {
        const int wo = q % WO, r = q / WO;
        const int ho = r % HO, n = r / HO;
        const int h = ho * sh - ph + kh * dh;
        const int w = wo * sw - pw + kw * dw;
        if (h < 0 || h >= H || w < 0 || w >= W)
            continue;
        acc += x[(((size_t)n * H + h) * W + w) * C + c] * dz[(size_t)q * F + o];
    }
    partial[gid] = acc;
}

/* out[i] = sum over p of partial[p, i], p in order (a fixed summation order). */
__kernel void depthwise_sum_partials(__global const float *restrict partial,
                                     __global float *restrict out, const int P, const int K)
{
    const int gid = get_global_id(0);
    GUARD(gid, K);
    float acc = 0.0f;
    for (int p = 0; p < P; ++p)
        acc += partial[(size_t)p * K + gid];
    out[gid] = acc;
}
