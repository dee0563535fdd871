/* Pooling, forward and backward side by side: maxpool2d, avgpool2d, global_avgpool2d,
 * global_maxpool2d. The twin of native/pool.pyx.
 *
 * Legend: N batch, H/W input spatial, HO/WO output spatial, C channels, PH/PW pool size,
 * SH/SW strides, PT/PL padding before (top/left; Keras 'same' puts the odd pixel after).
 * Layout NHWC: one work-item per output (or input) element with c fastest, so neighbouring
 * work-items touch neighbouring addresses. Padding never enters a window: max takes the
 * in-bounds pixels, avg divides by their count (TF/Keras 'same').
 * argmax holds h*W + w within the (n, c) plane; ties go to the first pixel in row-major
 * window order (strict >) and the first NaN wins over numbers (torch), as in BETTER below.
 * Caller-supplied argmax entries outside the plane are skipped, never followed.
 * Backward ops gather or own their output plane, so no two work-items add into one address:
 * no atomics, a fixed summation order, the same result on every run.
 */
#include "common.h"

/* v replaces the current winner: strictly greater, or the first NaN. */
#define BETTER(v, best) ((v) > (best) || (isnan(v) && !isnan(best)))

/* Window start and clipped [lo, hi) range of output o along one axis. */
#define WINDOW(o, S, P, K, LEN, lo, hi)                                                           \
    const int lo##_raw = (o) * (S) - (P);                                                         \
    const int lo = max(lo##_raw, 0);                                                              \
    const int hi = min(lo##_raw + (K), (LEN))

__kernel void maxpool2d_forward(__global const float *x, __global float *y, __global int *argmax,
                                const int N, const int H, const int W, const int C, const int HO,
                                const int WO, const int PH, const int PW, const int SH,
                                const int SW, const int PT, const int PL)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * HO * WO * C);
    const int c = gid % C;
    int t = gid / C;
    const int ow = t % WO;
    t /= WO;
    const int oh = t % HO;
    const int n = t / HO;
    WINDOW(oh, SH, PT, PH, H, h0, h1);
    WINDOW(ow, SW, PL, PW, W, w0, w1);

    __global const float *xp = x + (size_t)n * H * W * C + c;
    float best = -INFINITY;
    int best_idx = -1;
    for (int h = h0; h < h1; ++h)
        for (int w = w0; w < w1; ++w) {
            const float v = xp[(size_t)(h * W + w) * C];
            if (best_idx < 0 || BETTER(v, best)) {
                best = v;
                best_idx = h * W + w;
            }
        }
    y[gid] = best;
    argmax[gid] = best_idx;
}

/* One work-item owns the whole (n, c) plane of dx: it clears it, then adds every dy of the
 * plane in row-major output order, so overlapping windows sum in a fixed order. */
__kernel void maxpool2d_backward(__global const float *dy, __global const int *argmax,
                                 __global float *dx, const int N, const int H, const int W,
                                 const int C, const int HO, const int WO)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * C);
    const int c = gid % C;
    const int n = gid / C;
    const int plane = H * W;
    __global float *dxp = dx + (size_t)n * plane * C + c;
    for (int p = 0; p < plane; ++p)
        dxp[(size_t)p * C] = 0.0f;
    const size_t obase = (size_t)n * HO * WO * C + c;
    for (int q = 0; q < HO * WO; ++q) {
        const int a = argmax[obase + (size_t)q * C];
        if (a >= 0 && a < plane) /* argmax comes from the caller: never index outside */
            dxp[(size_t)a * C] += dy[obase + (size_t)q * C];
    }
}

__kernel void avgpool2d_forward(__global const float *x, __global float *y, const int N,
                                const int H, const int W, const int C, const int HO, const int WO,
                                const int PH, const int PW, const int SH, const int SW,
                                const int PT, const int PL)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * HO * WO * C);
    const int c = gid % C;
    int t = gid / C;
    const int ow = t % WO;
    t /= WO;
    const int oh = t % HO;
    const int n = t / HO;
    WINDOW(oh, SH, PT, PH, H, h0, h1);
    WINDOW(ow, SW, PL, PW, W, w0, w1);

    __global const float *xp = x + (size_t)n * H * W * C + c;
    float s = 0.0f;
    for (int h = h0; h < h1; ++h)
        for (int w = w0; w < w1; ++w)
            s += xp[(size_t)(h * W + w) * C];
    y[gid] = s * (1.0f / (float)((h1 - h0) * (w1 - w0)));
}

/* Gather: each input pixel sums dy / count over the output windows that contain it. */
__kernel void avgpool2d_backward(__global const float *dy, __global float *dx, const int N,
                                 const int H, const int W, const int C, const int HO,
                                 const int WO, const int PH, const int PW, const int SH,
                                 const int SW, const int PT, const int PL)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * H * W * C);
    const int c = gid % C;
    int t = gid / C;
    const int w = t % W;
    t /= W;
    const int h = t % H;
    const int n = t / H;
    /* Outputs o with o*S - P <= i < o*S - P + K; the numerator is >= 1 - K > -S*K, so the
     * shifted ceil-division stays on non-negative ints. */
    const int oh0 = max((h + PT - PH + SH + SH * PH) / SH - PH, 0);
    const int oh1 = min((h + PT) / SH, HO - 1);
    const int ow0 = max((w + PL - PW + SW + SW * PW) / SW - PW, 0);
    const int ow1 = min((w + PL) / SW, WO - 1);

    __global const float *dyp = dy + (size_t)n * HO * WO * C + c;
    float s = 0.0f;
    for (int oh = oh0; oh <= oh1; ++oh) {
        WINDOW(oh, SH, PT, PH, H, h0, h1);
        for (int ow = ow0; ow <= ow1; ++ow) {
            WINDOW(ow, SW, PL, PW, W, w0, w1);
            const float inv = 1.0f / (float)((h1 - h0) * (w1 - w0));
            s += dyp[(size_t)(oh * WO + ow) * C] * inv;
        }
    }
    dx[gid] = s;
}

/* inv = 1 / (H*W), rounded once on the host as on the CPU. */
__kernel void global_avgpool2d_forward(__global const float *x, __global float *y, const int N,
                                       const int H, const int W, const int C, const float inv)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * C);
    const int c = gid % C;
    const int n = gid / C;
    const int plane = H * W;
    __global const float *xp = x + (size_t)n * plane * C + c;
    float s = 0.0f;
    for (int p = 0; p < plane; ++p)
        s += xp[(size_t)p * C];
    y[gid] = s * inv;
}

__kernel void global_avgpool2d_backward(__global const float *dy, __global float *dx,
                                        const int N, const int H, const int W, const int C,
                                        const float inv)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * H * W * C);
    const int c = gid % C;
    const int n = gid / (H * W * C);
    dx[gid] = dy[n * C + c] * inv;
}

__kernel void global_maxpool2d_forward(__global const float *x, __global float *y,
                                       __global int *argmax, const int N, const int H,
                                       const int W, const int C)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * C);
    const int c = gid % C;
    const int n = gid / C;
    const int plane = H * W;
    __global const float *xp = x + (size_t)n * plane * C + c;
    float best = -INFINITY;
    int best_idx = -1;
    for (int p = 0; p < plane; ++p) {
        const float v = xp[(size_t)p * C];
        if (best_idx < 0 || BETTER(v, best)) {
            best = v;
            best_idx = p;
        }
    }
    y[gid] = best;
    argmax[gid] = best_idx;
}

/* Gather: a pixel takes dy when it is its plane's argmax. */
__kernel void global_maxpool2d_backward(__global const float *dy, __global const int *argmax,
                                        __global float *dx, const int N, const int H,
                                        const int W, const int C)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * H * W * C);
    const int c = gid % C;
    const int plane = H * W;
    const int p = (gid / C) % plane;
    const int n = gid / (plane * C);
    dx[gid] = argmax[n * C + c] == p ? dy[n * C + c] : 0.0f;
}

/* -- 3-D pooling (MaxPooling3D, AveragePooling3D; branch vol) ------------------------------
 * Legend adds D depth, DO output depth, PD pool depth, SD depth stride, PF front padding.
 * The 2-D rules one axis more: argmax holds (d*H + h)*W + w within the (n, c) volume, ties
 * to the first voxel in (d, h, w) window order. maxpool3d_backward runs maxpool2d_backward
 * on the volume seen as a (D*H, W) plane: that kernel reads only the plane and the output
 * count, so it is the same scatter. */

/* The output voxel (n, od, oh, ow, c) of work-item gid, NDHWC with c fastest. */
#define OUTPUT_VOXEL(gid)                                                                         \
    const int c = (gid) % C;                                                                      \
    int t = (gid) / C;                                                                            \
    const int ow = t % WO;                                                                        \
    t /= WO;                                                                                      \
    const int oh = t % HO;                                                                        \
    t /= HO;                                                                                      \
    const int od = t % DO;                                                                        \
    const int n = t / DO

__kernel void maxpool3d_forward(__global const float *x, __global float *y, __global int *argmax,
                                const int N, const int D, const int H, const int W, const int C,
                                const int DO, const int HO, const int WO, const int PD,
                                const int PH, const int PW, const int SD, const int SH,
                                const int SW, const int PF, const int PT, const int PL)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * DO * HO * WO * C);
    OUTPUT_VOXEL(gid);
    WINDOW(od, SD, PF, PD, D, d0, d1);
    WINDOW(oh, SH, PT, PH, H, h0, h1);
    WINDOW(ow, SW, PL, PW, W, w0, w1);

    __global const float *xp = x + (size_t)n * D * H * W * C + c;
    float best = -INFINITY;
    int best_idx = -1;
    for (int d = d0; d < d1; ++d)
        for (int h = h0; h < h1; ++h)
            for (int w = w0; w < w1; ++w) {
                const int idx = (d * H + h) * W + w;
                const float v = xp[(size_t)idx * C];
                if (best_idx < 0 || BETTER(v, best)) {
                    best = v;
                    best_idx = idx;
                }
            }
    y[gid] = best;
    argmax[gid] = best_idx;
}

__kernel void avgpool3d_forward(__global const float *x, __global float *y, const int N,
                                const int D, const int H, const int W, const int C, const int DO,
                                const int HO, const int WO, const int PD, const int PH,
                                const int PW, const int SD, const int SH, const int SW,
                                const int PF, const int PT, const int PL)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * DO * HO * WO * C);
    OUTPUT_VOXEL(gid);
    WINDOW(od, SD, PF, PD, D, d0, d1);
    WINDOW(oh, SH, PT, PH, H, h0, h1);
    WINDOW(ow, SW, PL, PW, W, w0, w1);

    __global const float *xp = x + (size_t)n * D * H * W * C + c;
    float s = 0.0f;
    for (int d = d0; d < d1; ++d)
        for (int h = h0; h < h1; ++h)
            for (int w = w0; w < w1; ++w)
                s += xp[((size_t)(d * H + h) * W + w) * C];
    y[gid] = s * (1.0f / (float)((d1 - d0) * (h1 - h0) * (w1 - w0)));
}

/* Gather: each input voxel sums dy / count over the output windows that contain it, in
 * (od, oh, ow) order as the CPU row kernel. */
__kernel void avgpool3d_backward(__global const float *dy, __global float *dx, const int N,
                                 const int D, const int H, const int W, const int C,
                                 const int DO, const int HO, const int WO, const int PD,
                                 const int PH, const int PW, const int SD, const int SH,
                                 const int SW, const int PF, const int PT, const int PL)
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
    /* As avgpool2d_backward: the shifted ceil-division stays on non-negative ints. */
    const int od0 = max((d + PF - PD + SD + SD * PD) / SD - PD, 0);
    const int od1 = min((d + PF) / SD, DO - 1);
    const int oh0 = max((h + PT - PH + SH + SH * PH) / SH - PH, 0);
    const int oh1 = min((h + PT) / SH, HO - 1);
    const int ow0 = max((w + PL - PW + SW + SW * PW) / SW - PW, 0);
    const int ow1 = min((w + PL) / SW, WO - 1);

    __global const float *dyp = dy + (size_t)n * DO * HO * WO * C + c;
    float s = 0.0f;
    for (int od = od0; od <= od1; ++od) {
        WINDOW(od, SD, PF, PD, D, d0, d1);
        for (int oh = oh0; oh <= oh1; ++oh) {
            WINDOW(oh, SH, PT, PH, H, h0, h1);
            for (int ow = ow0; ow <= ow1; ++ow) {
                WINDOW(ow, SW, PL, PW, W, w0, w1);
                const float inv = 1.0f / (float)((d1 - d0) * (h1 - h0) * (w1 - w0));
                s += dyp[((size_t)(od * HO + oh) * WO + ow) * C] * inv;
            }
        }
    }
    dx[gid] = s;
}

/* -- adaptive pooling (Keras 3's AdaptiveAveragePooling/AdaptiveMaxPooling 1D-3D) -----------
 * x (N, *spatial, C) seen as (N, D, H, W, C), the missing leading axes of length 1. Output o
 * of an axis of length L pooled to O reads [floor(o*L/O), ceil((o+1)*L/O)) (torch's rule);
 * outputs covering input i are [floor(i*O/L), ceil((i+1)*O/L)). argmax holds d*H*W + h*W + w
 * within the (n, c) plane; the max's backward is maxpool2d_backward on the (N, P, 1, C)
 * views (it reads no geometry). */
/* In long: o*L may pass 2^31 where the sizes alone do not. */
#define BIN_START(o, L, O) ((int)((long)(o) * (L) / (O)))
#define BIN_END(o, L, O) ((int)((((long)(o) + 1) * (L) + (O) - 1) / (O)))

__kernel void adaptive_avgpool_forward(__global const float *x, __global float *y, const int N,
                                       const int D, const int H, const int W, const int C,
                                       const int OD, const int OH, const int OW)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * OD * OH * OW * C);
    const int c = gid % C;
    int t = gid / C;
    const int ow = t % OW;
    t /= OW;
    const int oh = t % OH;
    t /= OH;
    const int od = t % OD;
    const int n = t / OD;
    const int d0 = BIN_START(od, D, OD), d1 = BIN_END(od, D, OD);
    const int h0 = BIN_START(oh, H, OH), h1 = BIN_END(oh, H, OH);
    const int w0 = BIN_START(ow, W, OW), w1 = BIN_END(ow, W, OW);
    __global const float *xp = x + (size_t)n * D * H * W * C + c;
    float s = 0.0f;
    for (int d = d0; d < d1; ++d)
        for (int h = h0; h < h1; ++h)
            for (int w = w0; w < w1; ++w)
                s += xp[(size_t)((d * H + h) * W + w) * C];
    y[gid] = s * (1.0f / (float)((d1 - d0) * (h1 - h0) * (w1 - w0)));
}

__kernel void adaptive_maxpool_forward(__global const float *x, __global float *y,
                                       __global int *argmax, const int N, const int D,
                                       const int H, const int W, const int C, const int OD,
                                       const int OH, const int OW)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * OD * OH * OW * C);
    const int c = gid % C;
    int t = gid / C;
    const int ow = t % OW;
    t /= OW;
    const int oh = t % OH;
    t /= OH;
    const int od = t % OD;
    const int n = t / OD;
    const int d0 = BIN_START(od, D, OD), d1 = BIN_END(od, D, OD);
    const int h0 = BIN_START(oh, H, OH), h1 = BIN_END(oh, H, OH);
    const int w0 = BIN_START(ow, W, OW), w1 = BIN_END(ow, W, OW);
    __global const float *xp = x + (size_t)n * D * H * W * C + c;
    float best = -INFINITY;
    int best_idx = -1;
    for (int d = d0; d < d1; ++d)
        for (int h = h0; h < h1; ++h)
            for (int w = w0; w < w1; ++w) {
                const int p = (d * H + h) * W + w;
                const float v = xp[(size_t)p * C];
                if (best_idx < 0 || BETTER(v, best)) {
                    best = v;
                    best_idx = p;
                }
            }
    y[gid] = best;
    argmax[gid] = best_idx;
}

/* Gather: each input pixel sums dy / count over the output bins that contain it, in
 * (od, oh, ow) order as the CPU. */
__kernel void adaptive_avgpool_backward(__global const float *dy, __global float *dx,
                                        const int N, const int D, const int H, const int W,
                                        const int C, const int OD, const int OH, const int OW)
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
    __global const float *dyp = dy + (size_t)n * OD * OH * OW * C + c;
    float s = 0.0f;
    for (int od = BIN_START(d, OD, D); od < BIN_END(d, OD, D); ++od) {
        const int dn = BIN_END(od, D, OD) - BIN_START(od, D, OD);
        for (int oh = BIN_START(h, OH, H); oh < BIN_END(h, OH, H); ++oh) {
            const int hn = BIN_END(oh, H, OH) - BIN_START(oh, H, OH);
            for (int ow = BIN_START(w, OW, W); ow < BIN_END(w, OW, W); ++ow) {
                const int wn = BIN_END(ow, W, OW) - BIN_START(ow, W, OW);
                const float inv = 1.0f / (float)(dn * hn * wn);
                s += dyp[(size_t)((od * OH + oh) * OW + ow) * C] * inv;
            }
        }
    }
    dx[gid] = s;
}
