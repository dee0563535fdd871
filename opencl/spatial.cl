/* Spatial ops of NHWC images, forward and backward side by side: pad2d (zero padding and
 * its crop) and upsample2d (nearest, bilinear). The twin of native/spatial.pyx.
 *
 * Legend: N batch, H/W input spatial, HO/WO output spatial, C channels, SH/SW upsampling
 * factors, DH/DW window offsets. One work-item per output element with c fastest, so
 * neighbouring work-items touch neighbouring addresses.
 * Padding and cropping are one window copy, y[n, h, w] = x[n, h + DH, w + DW] or 0 outside
 * x: pad2d_forward reads at (-top, -left), pad2d_backward (the crop) at (top, left).
 * Bilinear is torch's interpolate(align_corners=False, antialias=False), Keras 3's
 * ops.image.resize on the torch backend, with the weights computed in float as torch does
 * for float32. Backward ops gather: each dx element sums the outputs that read it in a
 * fixed order, so no two work-items add into one address (no atomics, same bits each run).
 */
#include "common.h"

#define UPSAMPLE_NEAREST 0
#define UPSAMPLE_BILINEAR 1

/* y[gid] of the window copy: x's pixel (h + DH, w + DW), or 0 outside x. */
inline float window_value(__global const float *x, const int gid, const int H, const int W,
                          const int C, const int HO, const int WO, const int DH,
                          const int DW)
{
    const int c = gid % C;
    int t = gid / C;
    const int w = t % WO + DW;
    t /= WO;
    const int h = t % HO + DH;
    const int n = t / HO;
    if (h < 0 || h >= H || w < 0 || w >= W)
        return 0.0f;
    return x[(((size_t)n * H + h) * W + w) * C + c];
}

/* Zero padding: x (N, H, W, C) -> y (N, HO, WO, C), x placed at (top, left). */
__kernel void pad2d_forward(__global const float *x, __global float *y, const int N,
                            const int H, const int W, const int C, const int HO, const int WO,
                            const int top, const int left)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * HO * WO * C);
    y[gid] = window_value(x, gid, H, W, C, HO, WO, -top, -left);
}

/* The crop undoing pad2d_forward (also Cropping2D's forward): dy (N, H, W, C) ->
 * dx (N, HO, WO, C) read from (top, left). */
__kernel void pad2d_backward(__global const float *dy, __global float *dx, const int N,
                             const int H, const int W, const int C, const int HO,
                             const int WO, const int top, const int left)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * HO * WO * C);
    dx[gid] = window_value(dy, gid, H, W, C, HO, WO, top, left);
}

/* Output o's two input pixels *i0, *i1 and weights *l0, *l1 along one axis. */
inline void taps(const int o, const int size_in, const int size_out, int *i0, int *i1,
                 float *l0, float *l1)
{
    const float scale = (float)size_in / (float)size_out;
    float src = fmax(scale * ((float)o + 0.5f) - 0.5f, 0.0f);
    *i0 = min((int)src, size_in - 1);
    *l1 = fmin(src - (float)*i0, 1.0f);
    *l0 = 1.0f - *l1;
    *i1 = *i0 < size_in - 1 ? *i0 + 1 : *i0;
}

/* How much input pixel i contributes to output o (both taps at the last pixel). */
inline float tap_weight(const int o, const int i, const int size_in, const int size_out)
{
    int i0, i1;
    float l0, l1;
    taps(o, size_in, size_out, &i0, &i1, &l0, &l1);
    return (i0 == i ? l0 : 0.0f) + (i1 == i ? l1 : 0.0f);
}

__kernel void upsample2d_forward(__global const float *x, __global float *y, const int N,
                                 const int H, const int W, const int C, const int SH,
                                 const int SW, const int mode)
{
    const int HO = H * SH, WO = W * SW;
    const int gid = get_global_id(0);
    GUARD(gid, N * HO * WO * C);
    const int c = gid % C;
    int t = gid / C;
    const int wo = t % WO;
    t /= WO;
    const int ho = t % HO;
    const int n = t / HO;
    __global const float *xp = x + (size_t)n * H * W * C + c;
    if (mode == UPSAMPLE_NEAREST) {
        y[gid] = xp[((size_t)(ho / SH) * W + wo / SW) * C];
        return;
    }
    int h0, h1, w0, w1;
    float a0, a1, b0, b1;
    taps(ho, H, HO, &h0, &h1, &a0, &a1);
    taps(wo, W, WO, &w0, &w1, &b0, &b1);
    const float top = b0 * xp[((size_t)h0 * W + w0) * C] + b1 * xp[((size_t)h0 * W + w1) * C];
    const float bottom =
        b0 * xp[((size_t)h1 * W + w0) * C] + b1 * xp[((size_t)h1 * W + w1) * C];
    y[gid] = a0 * top + a1 * bottom;
}

/* Gather: dx[n, hi, wi, c] sums weight * dy over the outputs that read the pixel; bilinear
 * outputs reading input i lie in [(i - 1)*S, (i + 2)*S) (the CPU kernel's window). */
__kernel void upsample2d_backward(__global const float *dy, __global float *dx, const int N,
                                  const int H, const int W, const int C, const int SH,
                                  const int SW, const int mode)
{
    const int HO = H * SH, WO = W * SW;
    const int gid = get_global_id(0);
    GUARD(gid, N * H * W * C);
    const int c = gid % C;
    int t = gid / C;
    const int wi = t % W;
    t /= W;
    const int hi = t % H;
    const int n = t / H;
    __global const float *dyp = dy + (size_t)n * HO * WO * C + c;
    float s = 0.0f;
    if (mode == UPSAMPLE_NEAREST) {
        for (int ho = hi * SH; ho < hi * SH + SH; ++ho)
            for (int wo = wi * SW; wo < wi * SW + SW; ++wo)
                s += dyp[((size_t)ho * WO + wo) * C];
        dx[gid] = s;
        return;
    }
    /* (i + 2)*S is formed only when it stays within HO: it could pass INT_MAX. */
    const int ho0 = max((hi - 1) * SH, 0), ho1 = hi + 2 >= H ? HO : (hi + 2) * SH;
    const int wo0 = max((wi - 1) * SW, 0), wo1 = wi + 2 >= W ? WO : (wi + 2) * SW;
    for (int ho = ho0; ho < ho1; ++ho) {
        const float wh = tap_weight(ho, hi, H, HO);
        if (wh == 0.0f)
            continue;
        for (int wo = wo0; wo < wo1; ++wo) {
            const float ww = tap_weight(wo, wi, W, WO);
            if (ww != 0.0f)
                s += wh * ww * dyp[((size_t)ho * WO + wo) * C];
        }
    }
    dx[gid] = s;
}

/* -- 3-D spatial ops (ZeroPadding3D, Cropping3D, UpSampling3D; branch vol) -----------------
 * Legend adds D/DO input/output depth, DD depth offset, SD depth factor. pad3d is the window
 * copy y[n, d, h, w] = x[n, d + DD, h + DH, w + DW] (0 outside x); upsample3d repeats each
 * voxel (Keras's UpSampling3D, 'nearest' only) and its backward gathers the SD*SH*SW copies
 * in (do, ho, wo) order, as the CPU. */

inline float window3d_value(__global const float *x, const int gid, const int D, const int H,
                            const int W, const int C, const int DO, const int HO, const int WO,
                            const int DD, const int DH, const int DW)
{
    const int c = gid % C;
    int t = gid / C;
    const int w = t % WO + DW;
    t /= WO;
    const int h = t % HO + DH;
    t /= HO;
    const int d = t % DO + DD;
    const int n = t / DO;
    if (d < 0 || d >= D || h < 0 || h >= H || w < 0 || w >= W)
        return 0.0f;
    return x[((((size_t)n * D + d) * H + h) * W + w) * C + c];
}

/* Zero padding: x (N, D, H, W, C) -> y (N, DO, HO, WO, C), x placed at (front, top, left). */
__kernel void pad3d_forward(__global const float *x, __global float *y, const int N,
                            const int D, const int H, const int W, const int C, const int DO,
                            const int HO, const int WO, const int front, const int top,
                            const int left)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * DO * HO * WO * C);
    y[gid] = window3d_value(x, gid, D, H, W, C, DO, HO, WO, -front, -top, -left);
}

/* The crop undoing pad3d_forward (also Cropping3D's forward): dy (N, D, H, W, C) ->
 * dx (N, DO, HO, WO, C) read from (front, top, left). */
__kernel void pad3d_backward(__global const float *dy, __global float *dx, const int N,
                             const int D, const int H, const int W, const int C, const int DO,
                             const int HO, const int WO, const int front, const int top,
                             const int left)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * DO * HO * WO * C);
    dx[gid] = window3d_value(dy, gid, D, H, W, C, DO, HO, WO, front, top, left);
}

__kernel void upsample3d_forward(__global const float *x, __global float *y, const int N,
                                 const int D, const int H, const int W, const int C,
                                 const int SD, const int SH, const int SW)
{
    const int DO = D * SD, HO = H * SH, WO = W * SW;
    const int gid = get_global_id(0);
    GUARD(gid, N * DO * HO * WO * C);
    const int c = gid % C;
    int t = gid / C;
    const int wo = t % WO;
    t /= WO;
    const int ho = t % HO;
    t /= HO;
    const int d = (t % DO) / SD;
    const int n = t / DO;
    y[gid] = x[((((size_t)n * D + d) * H + ho / SH) * W + wo / SW) * C + c];
}

__kernel void upsample3d_backward(__global const float *dy, __global float *dx, const int N,
                                  const int D, const int H, const int W, const int C,
                                  const int SD, const int SH, const int SW)
{
    const int DO = D * SD, HO = H * SH, WO = W * SW;
    const int gid = get_global_id(0);
    GUARD(gid, N * D * H * W * C);
    const int c = gid % C;
    int t = gid / C;
    const int wi = t % W;
    t /= W;
    const int hi = t % H;
    t /= H;
    const int di = t % D;
    const int n = t / D;
    __global const float *dyp = dy + (size_t)n * DO * HO * WO * C + c;
    float s = 0.0f;
    for (int d = di * SD; d < di * SD + SD; ++d)
        for (int ho = hi * SH; ho < hi * SH + SH; ++ho)
            for (int wo = wi * SW; wo < wi * SW + SW; ++wo)
                s += dyp[(((size_t)d * HO + ho) * WO + wo) * C];
    dx[gid] = s;
}
