/* DepthwiseConv2D, forward and backward side by side: depthwise_conv2d_forward,
 * depthwise_conv2d_backward_input, depthwise_conv2d_backward_weight (+ its partial sums).
 * The twin of native/depthwise.pyx.
 *
 * Legend: N batch, H/W input spatial, C input channels, M depth multiplier, CM = C*M output
 * channels, KH/KW kernel spatial, HO/WO output spatial, sh/sw strides, dh/dw dilation, ph/pw
 * leading pads (Keras 'same': the odd pixel goes after). Layout NHWC; the kernel (KH, KW, C, M)
 * is read as (KH, KW, CM): output channel o = c*M + m reads input channel c = o / M.
 * One work-item per output (forward), per dx element (backward_input, a gather: no atomics, a
 * fixed order), per (pixel chunk, kernel entry) for backward_weight, whose chunk partials
 * depthwise_sum_partials adds in chunk order. Channels are the fastest index, so neighbouring
 * work-items read neighbouring addresses.
 */
#include "common.h"
#include "activation.h"

#define DW_GEOM                                                                              \
    const int N, const int H, const int W, const int C, const int M, const int HO,           \
        const int WO, const int KH, const int KW, const int sh, const int sw, const int dh, \
        const int dw, const int ph, const int pw

__kernel void depthwise_conv2d_forward(__global const float *restrict x,
                                       __global const float *restrict wt,
                                       __global const float *restrict bias,
                                       __global float *restrict y, __global float *restrict z,
                                       const int act, const float alpha, DW_GEOM)
{
    const int CM = C * M;
    const int gid = get_global_id(0);
    GUARD(gid, N * HO * WO * CM);
    const int o = gid % CM;
    int t = gid / CM;
    const int wo = t % WO;
    t /= WO;
    const int ho = t % HO;
    const int n = t / HO;
    const int c = o / M;
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
            acc += x[(((size_t)n * H + h) * W + w) * C + c] * wt[(kh * KW + kw) * CM + o];
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
    const int CM = C * M;
    const int gid = get_global_id(0);
    GUARD(gid, N * H * W * C);
    const int c = gid % C;
    int t = gid / C;
    const int w = t % W;
    t /= W;
    const int h = t % H;
    const int n = t / H;
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
            __global const float *d = dz + (((size_t)n * HO + ho) * WO + wo) * CM + c * M;
            __global const float *k = wt + (kh * KW + kw) * CM + c * M;
            float s = 0.0f;
            for (int m = 0; m < M; ++m)
                s += d[m] * k[m];
            acc += s;
        }
    }
    dx[gid] = acc;
}

/* partial[p, (kh, kw, o)] = sum over the output pixels of chunk p (P chunks of the
 * N*HO*WO pixels, in order) of x[tap] * dz[pixel, o]. */
__kernel void depthwise_conv2d_backward_weight(__global const float *restrict x,
                                               __global const float *restrict dz,
                                               __global float *restrict partial, const int P,
                                               DW_GEOM)
{
    const int CM = C * M, K = KH * KW * CM;
    const int gid = get_global_id(0);
    GUARD(gid, P * K);
    const int idx = gid % K, p = gid / K;
    const int o = idx % CM, tap = idx / CM;
    const int kw = tap % KW, kh = tap / KW;
    const int c = o / M;
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
        acc += x[(((size_t)n * H + h) * W + w) * C + c] * dz[(size_t)q * CM + o];
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
