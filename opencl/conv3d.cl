/* Conv3D and Conv3DTranspose, forward and backward side by side (conv3d_forward,
 * conv3d_backward_input, conv3d_backward_weight, conv3d_sum_partials,
 * conv3d_transpose_window). The twin of native/conv3d.pyx; the host is
 * pynn/backend/opencl/conv3d.py.
 *
 * Legend: N batch, D/H/W input depth/height/width, C input channels, G groups, CG = C/G input
 * channels and FG filters per group, F = G*FG output channels, KD/KH/KW kernel extents,
 * DO/HO/WO output extents, sd/sh/sw strides, dd/dh/dw dilation, pf/ph/pw leading pads (Keras
 * 'same': the odd voxel goes after). Layout NDHWC; the kernel is (KD, KH, KW, CG, F): output
 * channel o of group o / FG reads input channels (o / FG)*CG ... + CG - 1.
 * One work-item per output (forward), per dx element (backward_input, a gather: no atomics, a
 * fixed order), per (voxel chunk, kernel entry) for backward_weight, whose chunk partials
 * conv3d_sum_partials adds in chunk order. Channels are the fastest index, so neighbouring
 * work-items read neighbouring addresses.
 */
#include "common.h"
#include "activation.h"

#define C3_GEOM                                                                              \
    const int N, const int D, const int H, const int W, const int C, const int G,            \
        const int CG, const int FG, const int F, const int DO, const int HO, const int WO,   \
        const int KD, const int KH, const int KW, const int sd, const int sh, const int sw,  \
        const int dd, const int dh, const int dw, const int pf, const int ph, const int pw

__kernel void conv3d_forward(__global const float *restrict x, __global const float *restrict wt,
                             __global const float *restrict bias, __global float *restrict y,
                             __global float *restrict z, const int act, const float alpha,
                             C3_GEOM)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * DO * HO * WO * F);
    const int o = gid % F;
    int t = gid / F;
    const int wo = t % WO;
    t /= WO;
    const int ho = t % HO;
    t /= HO;
    const int od = t % DO;
    const int n = t / DO;
    const int c0 = (o / FG) * CG;
    /* The bias joins after the sum, as the CPU's epilogue adds it to the GEMM's result. */
    float acc = 0.0f;
    for (int kd = 0; kd < KD; ++kd) {
        const int d = od * sd - pf + kd * dd;
        if (d < 0 || d >= D)
            continue;
        for (int kh = 0; kh < KH; ++kh) {
            const int h = ho * sh - ph + kh * dh;
            if (h < 0 || h >= H)
                continue;
            for (int kw = 0; kw < KW; ++kw) {
                const int w = wo * sw - pw + kw * dw;
                if (w < 0 || w >= W)
                    continue;
                __global const float *xp = x + ((((size_t)n * D + d) * H + h) * W + w) * C + c0;
                __global const float *kp = wt + (size_t)((kd * KH + kh) * KW + kw) * CG * F + o;
                for (int ci = 0; ci < CG; ++ci)
                    acc += xp[ci] * kp[(size_t)ci * F];
            }
        }
    }
    acc += bias ? bias[o] : 0.0f;
    if (z)
        z[gid] = acc;
    y[gid] = act_value(acc, act, alpha);
}

__kernel void conv3d_backward_input(__global const float *restrict dz,
                                    __global const float *restrict wt, __global float *restrict dx,
                                    C3_GEOM)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * D * H * W * C);
    const int c = gid % C;
    int t = gid / C;
    const int w = t % W;
    t /= W;
    const int h = t % H;
    t /= H;
    const int d = t % D;
    const int n = t / D;
    const int grp = c / CG, ci = c % CG;
    float acc = 0.0f;
    for (int kd = 0; kd < KD; ++kd) {
        const int dd_ = d + pf - kd * dd;
        if (dd_ < 0 || dd_ % sd != 0 || dd_ / sd >= DO)
            continue;
        const int od = dd_ / sd;
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
                __global const float *g =
                    dz + ((((size_t)n * DO + od) * HO + ho) * WO + wo) * F + grp * FG;
                __global const float *k =
                    wt + ((size_t)((kd * KH + kh) * KW + kw) * CG + ci) * F + grp * FG;
                float s = 0.0f;
                for (int m = 0; m < FG; ++m)
                    s += g[m] * k[m];
                acc += s;
            }
        }
    }
    dx[gid] = acc;
}

/* partial[p, (kd, kh, kw, ci, o)] = sum over the output voxels of chunk p (P chunks of the
 * N*DO*HO*WO voxels, in order) of x[tap, channel (o / FG)*CG + ci] * dz[voxel, o]. */
__kernel void conv3d_backward_weight(__global const float *restrict x,
                                     __global const float *restrict dz,
                                     __global float *restrict partial, const int P, C3_GEOM)
{
    const int K = KD * KH * KW * CG * F;
    const int gid = get_global_id(0);
    GUARD(gid, P * K);
    const int idx = gid % K, p = gid / K;
    const int o = idx % F, t = idx / F;
    const int ci = t % CG, tap = t / CG;
    const int kw = tap % KW, kh = (tap / KW) % KH, kd = tap / (KW * KH);
    const int c = (o / FG) * CG + ci;
    const long voxels = (long)N * DO * HO * WO;
    const long q0 = voxels * p / P, q1 = voxels * (p + 1) / P;
    float acc = 0.0f;
    for (long q = q0; q < q1; ++q) {
        const int wo = q % WO;
        long r = q / WO;
        const int ho = r % HO;
        r /= HO;
        const int od = r % DO;
        const int n = r / DO;
        const int d = od * sd - pf + kd * dd;
        const int h = ho * sh - ph + kh * dh;
        const int w = wo * sw - pw + kw * dw;
        if (d < 0 || d >= D || h < 0 || h >= H || w < 0 || w >= W)
            continue;
        acc += x[((((size_t)n * D + d) * H + h) * W + w) * C + c] * dz[(size_t)q * F + o];
    }
    partial[gid] = acc;
}

/* out[i] = sum over p of partial[p, i], p in order (a fixed summation order). */
__kernel void conv3d_sum_partials(__global const float *restrict partial,
                                  __global float *restrict out, const int P, const int K)
{
    const int gid = get_global_id(0);
    GUARD(gid, K);
    float acc = 0.0f;
    for (int p = 0; p < P; ++p)
        acc += partial[(size_t)p * K + gid];
    out[gid] = acc;
}

/* y = act(src window + bias): out[n, i, j, k] = src[n, i + front, j + top, k + left] where
 * that lies in src (DS, HS, WS), else 0. Conv3DTranspose's crop of its full output, and with
 * negative offsets (no bias, linear) the gradient placed back into the full output. */
__kernel void conv3d_transpose_window(__global const float *restrict src,
                                      __global const float *restrict bias,
                                      __global float *restrict y, __global float *restrict z,
                                      const int act, const float alpha, const int N,
                                      const int DS, const int HS, const int WS, const int C,
                                      const int DO, const int HO, const int WO, const int front,
                                      const int top, const int left)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * DO * HO * WO * C);
    const int c = gid % C;
    int t = gid / C;
    const int wo = t % WO;
    t /= WO;
    const int ho = t % HO;
    t /= HO;
    const int od = t % DO;
    const int n = t / DO;
    const int d = od + front, h = ho + top, w = wo + left;
    float v = (d >= 0 && d < DS && h >= 0 && h < HS && w >= 0 && w < WS)
                  ? src[((((size_t)n * DS + d) * HS + h) * WS + w) * C + c]
                  : 0.0f;
    v += bias ? bias[c] : 0.0f;
    if (z)
        z[gid] = v;
    y[gid] = act_value(v, act, alpha);
}
