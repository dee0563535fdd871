/* Kernels of Keras 3's preprocessing layers, NHWC: the twin of native/preprocessing.pyx.
 *
 * Legend: N batch, H/W input spatial, HO/WO output spatial, C channels, K features of a
 * channel-wise affine map.
 * image_affine_forward: output pixel (r, c) reads the input at column a0*c + a1*r + a2, row
 * b0*c + b1*r + b2 (Keras's affine matrix, m[n] = a0 a1 a2 b0 b1 b2), neighbours fixed one by
 * one by keras.ops.image.map_coordinates' rules (see native/preprocessing.pyx); 'nearest'
 * rounds half to even (rint). One work-item per output element, c fastest.
 * image_affine_backward scatters dy through the same neighbours: one work-item owns one
 * (image, channel) plane of dx, zeroes it and adds in output order, so no two work-items
 * write one address (no atomics, the same bits each run).
 * image_projective_*: the same kernels with width 8, Keras's projective pair c0 c1 after
 * the affine six: both coordinates divided by c0*c + c1*r + 1.
 */
#include "common.h"

#define FILL_CONSTANT 0
#define FILL_NEAREST 1
#define FILL_WRAP 2
#define FILL_MIRROR 3
#define FILL_REFLECT 4
#define INTERP_NEAREST 0
/* Coordinates are clamped to +-COORD_LIMIT before the cast to int (a float past int's range
 * is undefined); any image side is far below it. */
#ifndef COORD_LIMIT
#define COORD_LIMIT 1073741824.0f
#endif

inline int mod_floor(const int a, const int n)
{
    const int r = a % n;
    return r < 0 ? r + n : r;
}

inline int mirror_index(const int i, const int n)
{
    const int s = n - 1;
    if (s == 0)
        return 0;
    return abs(mod_floor(i + s, 2 * s) - s);
}

/* A neighbour index mapped into [0, n) by Keras's index fixer of `mode`. */
inline int fix_index(const int i, const int n, const int mode)
{
    if (mode == FILL_WRAP)
        return mod_floor(i, n);
    if (mode == FILL_MIRROR)
        return mirror_index(i, n);
    if (mode == FILL_REFLECT) {
        const int m = mirror_index(2 * i + 1, 2 * n + 1) - 1;
        return m >= 0 ? m / 2 : -((-m + 1) / 2);
    }
    return clamp(i, 0, n - 1);
}

/* Up to two neighbours along one axis: fixed indices i[], weights w[], inside flags in[]. */
inline void axis_taps(float x, const int n, const int order, const int mode, int *i,
                      float *w, int *in)
{
    int lo;
    x = isnan(x) ? -COORD_LIMIT : clamp(x, -COORD_LIMIT, COORD_LIMIT);
    if (order == INTERP_NEAREST) {
        lo = (int)rint(x);
        w[0] = 1.0f;
        w[1] = 0.0f;
        i[1] = 0;
        in[1] = 0;
    } else {
        const float f = floor(x);
        lo = (int)f;
        w[1] = x - f;
        w[0] = 1.0f - w[1];
        in[1] = mode != FILL_CONSTANT || (lo + 1 >= 0 && lo + 1 < n);
        i[1] = fix_index(lo + 1, n, mode);
    }
    in[0] = mode != FILL_CONSTANT || (lo >= 0 && lo < n);
    i[0] = fix_index(lo, n, mode);
}

/* Input column and row read by output pixel (r, c) through mn (width 6 or 8 values). */
inline float2 source_point(__global const float *mn, const int width, const int r, const int c)
{
    const float den = width == 8 ? mn[6] * c + mn[7] * r + 1.0f : 1.0f;
    return (float2)((mn[0] * c + mn[1] * r + mn[2]) / den, (mn[3] * c + mn[4] * r + mn[5]) / den);
}

/* x (N, H, W, C) -> y (N, HO, WO, C) through m (N, width). */
__kernel void image_affine_forward(__global const float *x, __global const float *m,
                                   __global float *y, const int N, const int H, const int W,
                                   const int C, const int HO, const int WO, const int order,
                                   const int mode, const float fill, const int width)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * HO * WO * C);
    const int ch = gid % C;
    int t = gid / C;
    const int c = t % WO;
    t /= WO;
    const int r = t % HO;
    const int n = t / HO;
    const float2 p = source_point(m + width * n, width, r, c);
    int ri[2], ci[2], rin[2], cin[2];
    float rw[2], cw[2];
    axis_taps(p.x, W, order, mode, ci, cw, cin);
    axis_taps(p.y, H, order, mode, ri, rw, rin);
    __global const float *xn = x + (size_t)n * H * W * C + ch;
    float acc = 0.0f;
    for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 2; ++b) {
            const float wgt = rw[a] * cw[b];
            if (wgt != 0.0f)
                acc += wgt * (rin[a] && cin[b] ? xn[((size_t)ri[a] * W + ci[b]) * C] : fill);
        }
    y[gid] = acc;
}

/* dx (N, H, W, C) of image_affine_forward from dy (N, HO, WO, C): work-item (n, ch). */
__kernel void image_affine_backward(__global const float *dy, __global const float *m,
                                    __global float *dx, const int N, const int H,
                                    const int W, const int C, const int HO, const int WO,
                                    const int order, const int mode, const int width)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * C);
    const int ch = gid % C;
    const int n = gid / C;
    __global const float *mn = m + width * n;
    __global float *dxn = dx + (size_t)n * H * W * C + ch;
    __global const float *dyn = dy + (size_t)n * HO * WO * C + ch;
    for (int p = 0; p < H * W; ++p)
        dxn[(size_t)p * C] = 0.0f;
    for (int r = 0; r < HO; ++r)
        for (int c = 0; c < WO; ++c) {
            int ri[2], ci[2], rin[2], cin[2];
            float rw[2], cw[2];
            const float2 p = source_point(mn, width, r, c);
            axis_taps(p.x, W, order, mode, ci, cw, cin);
            axis_taps(p.y, H, order, mode, ri, rw, rin);
            const float g = dyn[((size_t)r * WO + c) * C];
            for (int a = 0; a < 2; ++a)
                for (int b = 0; b < 2; ++b) {
                    const float wgt = rw[a] * cw[b];
                    if (wgt != 0.0f && rin[a] && cin[b])
                        dxn[((size_t)ri[a] * W + ci[b]) * C] += wgt * g;
                }
        }
}

/* y = x * scale + offset (has_offset) or x * scale, scale/offset (K,) over x's last K. */
__kernel void channel_affine_forward(__global const float *x, __global const float *scale,
                                     __global const float *offset, __global float *y,
                                     const int total, const int K, const int has_offset)
{
    const int gid = get_global_id(0);
    GUARD(gid, total);
    const int k = gid % K;
    y[gid] = has_offset ? x[gid] * scale[k] + offset[k] : x[gid] * scale[k];
}

/* RandomContrast / RandomBrightness: work-item (n, ch) over its P pixels,
 * y = clip((x - mean) * contrast[n] + mean + delta[n], lo, hi) (mean only with contrast). */
__kernel void image_adjust_forward(__global const float *x, __global const float *contrast,
                                   __global const float *delta, __global float *y,
                                   const int N, const int P, const int C,
                                   const int has_contrast, const int has_delta,
                                   const float lo, const float hi)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * C);
    const int ch = gid % C;
    const int n = gid / C;
    __global const float *xn = x + (size_t)n * P * C + ch;
    __global float *yn = y + (size_t)n * P * C + ch;
    float mean = 0.0f;
    if (has_contrast) {
        for (int p = 0; p < P; ++p)
            mean += xn[(size_t)p * C];
        mean /= (float)P;
    }
    const float factor = has_contrast ? contrast[n] : 1.0f;
    const float shift = has_delta ? delta[n] : 0.0f;
    for (int p = 0; p < P; ++p) {
        float v = xn[(size_t)p * C];
        if (has_contrast)
            v = (v - mean) * factor + mean;
        yn[(size_t)p * C] = clamp(v + shift, lo, hi);
    }
}

/* RandomElasticTransform: output pixel (r, c) of image n reads x[n] at row r + offsets[..., 0],
 * column c + offsets[..., 1] (N, HO, WO, 2), clamped to [lo, hi]. One work-item per element. */
__kernel void image_remap_forward(__global const float *x, __global const float *offsets,
                                  __global float *y, const int N, const int H, const int W,
                                  const int C, const int HO, const int WO, const int order,
                                  const int mode, const float fill, const float lo,
                                  const float hi)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * HO * WO * C);
    const int ch = gid % C;
    const int pixel = gid / C;
    const int n = pixel / (HO * WO);
    int ri[2], ci[2], rin[2], cin[2];
    float rw[2], cw[2];
    const int c = pixel % WO;
    const int r = (pixel / WO) % HO;
    axis_taps(r + offsets[2 * (size_t)pixel], H, order, mode, ri, rw, rin);
    axis_taps(c + offsets[2 * (size_t)pixel + 1], W, order, mode, ci, cw, cin);
    __global const float *xn = x + (size_t)n * H * W * C + ch;
    float acc = 0.0f;
    for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 2; ++b) {
            const float wgt = rw[a] * cw[b];
            if (wgt != 0.0f)
                acc += wgt * (rin[a] && cin[b] ? xn[((size_t)ri[a] * W + ci[b]) * C] : fill);
        }
    y[gid] = clamp(acc, lo, hi);
}
