/* Kernels of Keras 3's colour augmentation layers, NHWC: the twin of native/color.pyx.
 *
 * Legend: N batch, P = H*W pixels of an image, W width, C channels, B histogram bins.
 * color_transform_forward runs these kernels by transform (codes of
 * pynn/backend/operands/color.py's TRANSFORMS):
 *   color_pixels         per-pixel transforms, one work-item per pixel (all its channels);
 *   color_auto_contrast  one work-item per (image, channel) plane: min, max, stretch;
 *   color_sharpen        one work-item per element: the 3x3 smoothing and blend;
 *   color_equalize_*     Keras's histogram pooled over the batch per channel: counts by
 *                        element, a table per channel, the lookup by element.
 * Arithmetic follows Keras's order step by step in float, as the CPU's float32 path does.
 * params (N, 2): each image's row (see the operands).
 */
#include "common.h"

#define AUTO_CONTRAST 0
#define EQUALIZE 1
#define SOLARIZE 2
#define INVERT 3
#define POSTERIZE 4
#define GRAYSCALE 5
#define DEGENERATE 6
#define SHARPEN 7
#define HUE 8
#define SATURATION 9

/* Keras's _transform_value_range from [a0, a1] to [b0, b1] (the identity when equal). */
inline float rescale(const float v, const float a0, const float a1, const float b0,
                     const float b1)
{
    if (a0 == b0 && a1 == b1)
        return v;
    return (v - a0) / (a1 - a0) * (b1 - b0) + b0;
}

inline float clip(const float v, const float lo, const float hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

inline float gray(__global const float *px)
{
    const float r = 0.2989f * px[0];
    const float g = 0.587f * px[1];
    const float b = 0.114f * px[2];
    return r + g + b;
}

/* keras.src.backend.torch.image.rgb_to_hsv on one pixel. */
inline float3 rgb_to_hsv(float r, float g, float b)
{
    r = fabs(r) < FLT_EPSILON ? 0.0f : r;
    g = fabs(g) < FLT_EPSILON ? 0.0f : g;
    b = fabs(b) < FLT_EPSILON ? 0.0f : b;
    const float value = fmax(fmax(r, g), b);
    const float span = value - fmin(fmin(r, g), b);
    const float safe_value = value > 0.0f ? value : 1.0f;
    const float norm = 1.0f / (6.0f * (span > 0.0f ? span : 1.0f));
    float hue = value == g ? norm * (b - r) + (float)(2.0 / 6.0)
                           : norm * (r - g) + (float)(4.0 / 6.0);
    if (value == r)
        hue = norm * (g - b);
    return (float3)((span > 0.0f ? hue : 0.0f) + (hue < 0.0f ? 1.0f : 0.0f),
                    value > 0.0f ? span / safe_value : 0.0f, value);
}

/* keras.src.backend.torch.image.hsv_to_rgb on one pixel. */
inline float3 hsv_to_rgb(const float h, const float s, const float v)
{
    const float dh = (h - floor(h)) * 6.0f;
    const float one_minus_s = 1.0f - s;
    return (float3)(v * (one_minus_s + s * clip(fabs(dh - 3.0f) - 1.0f, 0.0f, 1.0f)),
                    v * (one_minus_s + s * clip(2.0f - fabs(dh - 2.0f), 0.0f, 1.0f)),
                    v * (one_minus_s + s * clip(2.0f - fabs(dh - 4.0f), 0.0f, 1.0f)));
}

__kernel void color_pixels(__global const float *x, __global const float *params,
                           __global float *y, const int N, const int P, const int C,
                           const int transform, const float lo, const float hi)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * P);
    const size_t i = (size_t)gid * C;
    const float a = params[2 * (gid / P)];
    const float b = params[2 * (gid / P) + 1];
    if (transform == SOLARIZE) {
        for (int ch = 0; ch < C; ++ch) {
            float v = clip(rescale(x[i + ch], lo, hi, 0.0f, 255.0f) + a, 0.0f, 255.0f);
            v = v < b ? v : 255.0f - v;
            y[i + ch] = rescale(v, 0.0f, 255.0f, lo, hi);
        }
    } else if (transform == INVERT) {
        for (int ch = 0; ch < C; ++ch)
            y[i + ch] = a != 0.0f ? b - x[i + ch] : x[i + ch];
    } else if (transform == POSTERIZE) {
        /* Keras's uint8 shift: 8 or more bits dropped leave 0 (NaN drops none). */
        const uint shift = a >= 8.0f ? 8u : (a > 0.0f ? (uint)a : 0u);
        for (int ch = 0; ch < C; ++ch) {
            float v = clip(rescale(x[i + ch], lo, hi, 0.0f, 255.0f), 0.0f, 255.0f);
            v = isnan(v) ? 0.0f : v;
            y[i + ch] = rescale((float)(((uint)v >> shift) << shift), 0.0f, 255.0f, lo, hi);
        }
    } else if (transform == GRAYSCALE) {
        const float g = C == 3 ? gray(x + i) : x[i];
        for (int ch = 0; ch < C; ++ch)
            y[i + ch] = a != 0.0f ? g : x[i + ch];
    } else if (transform == DEGENERATE) {
        const float g = gray(x + i);
        for (int ch = 0; ch < C; ++ch)
            y[i + ch] = clip(x[i + ch] + a * (g - x[i + ch]), lo, hi);
    } else if (transform == HUE) {
        const float3 hsv = rgb_to_hsv(rescale(x[i], lo, hi, 0.0f, 1.0f),
                                      rescale(x[i + 1], lo, hi, 0.0f, 1.0f),
                                      rescale(x[i + 2], lo, hi, 0.0f, 1.0f));
        float h = hsv.x + a;
        h = h > 1.0f ? h - 1.0f : h;
        h = h < 0.0f ? h + 1.0f : h;
        const float3 rgb = hsv_to_rgb(h, hsv.y, hsv.z);
        y[i] = rescale(clip(rgb.x, 0.0f, 1.0f), 0.0f, 1.0f, lo, hi);
        y[i + 1] = rescale(clip(rgb.y, 0.0f, 1.0f), 0.0f, 1.0f, lo, hi);
        y[i + 2] = rescale(clip(rgb.z, 0.0f, 1.0f), 0.0f, 1.0f, lo, hi);
    } else { /* SATURATION: on the raw values, the saturation clipped to the value range */
        const float3 hsv = rgb_to_hsv(x[i], x[i + 1], x[i + 2]);
        const float3 rgb = hsv_to_rgb(hsv.x, clip(hsv.y * a, lo, hi), hsv.z);
        y[i] = rgb.x;
        y[i + 1] = rgb.y;
        y[i + 2] = rgb.z;
    }
}

__kernel void color_auto_contrast(__global const float *x, __global float *y, const int N,
                                  const int P, const int C, const float lo, const float hi)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * C);
    const size_t base = (size_t)(gid / C) * P * C + gid % C;
    float low = rescale(x[base], lo, hi, 0.0f, 255.0f), high = low;
    for (int p = 1; p < P; ++p) {
        const float v = rescale(x[base + (size_t)p * C], lo, hi, 0.0f, 255.0f);
        low = v < low ? v : low;
        high = v > high ? v : high;
    }
    const float scale = 255.0f / (high - low);
    const float offset = -low * scale;
    for (int p = 0; p < P; ++p) {
        const size_t k = base + (size_t)p * C;
        const float v = rescale(x[k], lo, hi, 0.0f, 255.0f) * scale;
        const float r = rescale(clip(v + offset, 0.0f, 255.0f), 0.0f, 255.0f, lo, hi);
        y[k] = isnan(r) ? x[k] : r;
    }
}

__kernel void color_sharpen(__global const float *x, __global const float *params,
                            __global float *y, const int N, const int P, const int W,
                            const int C, const float lo, const float hi)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * P * C);
    const int ch = gid % C;
    const int p = (gid / C) % P;
    const int n = gid / (C * P);
    const int H = P / W, r = p / W, c = p % W;
    __global const float *xn = x + (size_t)n * P * C;
    const float edge = (float)(1.0 / 13.0), centre = (float)(5.0 / 13.0);
    float s = 0.0f;
    for (int dr = -1; dr <= 1; ++dr) {
        const int rr = r + dr;
        if (rr < 0 || rr >= H)
            continue;
        for (int dc = -1; dc <= 1; ++dc) {
            const int cc = c + dc;
            if (cc < 0 || cc >= W)
                continue;
            s += (dr == 0 && dc == 0 ? centre : edge) * xn[((size_t)rr * W + cc) * C + ch];
        }
    }
    const float blend = 1.0f - params[2 * n] * 2.0f;
    const float v = xn[(size_t)p * C + ch];
    y[gid] = clip(v + blend * (s - v), lo, hi);
}

/* Equalize in three passes over hist (C rows of B + 1 ints, zeroed by the host): counts by
 * element (integer atomics: the same counts in any order), each channel's row made its
 * lookup table (entry B: how many bins were nonzero), then the lookup by element.
 * to255/off255 and back/off_back are Keras's _scale_values to 0..255 and back, computed by
 * the host in double as Keras's Python does. */
__kernel void color_equalize_histogram(__global const float *x, __global int *hist,
                                       const int total, const int C, const int B,
                                       const float to255, const float off255)
{
    const int gid = get_global_id(0);
    GUARD(gid, total);
    const float v = x[gid] * to255 + off255;
    /* Keras's int32 cast truncates, then clips to the bins; NaN counts in bin 0. */
    const float at = v * (float)(B - 1) / 255.0f;
    atomic_inc(&hist[(size_t)(gid % C) * (B + 1)
                     + (!(at >= 1.0f) ? 0 : (at >= (float)(B - 1) ? B - 1 : (int)at))]);
}

__kernel void color_equalize_table(__global int *hist, const int C, const int B)
{
    const int ch = get_global_id(0);
    GUARD(ch, C);
    __global int *h = hist + (size_t)ch * (B + 1);
    int nonzero = 0, cdf = 0, cdf_min = -1;
    for (int k = 0; k < B; ++k) {
        nonzero += h[k] != 0;
        cdf += h[k];
        if (cdf_min < 0 && cdf > 0)
            cdf_min = cdf;
        h[k] = cdf;
    }
    int den = h[B - 1] - cdf_min;
    den = den == 0 ? 1 : den;
    for (int k = 0; k < B; ++k)
        h[k] = (int)clip(rint((float)((long)(h[k] - cdf_min) * 255) / (float)den), 0.0f, 255.0f);
    h[B] = nonzero;
}

__kernel void color_equalize_apply(__global const float *x, __global const int *hist,
                                   __global float *y, const int total, const int C,
                                   const int B, const float to255, const float off255,
                                   const float back, const float off_back)
{
    const int gid = get_global_id(0);
    GUARD(gid, total);
    __global const int *h = hist + (size_t)(gid % C) * (B + 1);
    const float bins1 = (float)(B - 1);
    float v = x[gid] * to255 + off255;
    if (h[B] > 1) {  /* one level alone: Keras keeps the channel */
        const float at = clip(v / 255.0f * bins1, 0.0f, bins1);
        v = (float)h[isnan(at) ? 0 : (int)at];  /* a NaN pixel reads bin 0 */
    }
    y[gid] = v * back + off_back;
}

/* -- clahe: Keras 3's ContrastLimitedAdaptiveHistogramEqualization ------------------------
 * Legend: GH x GW tiles of TH x TW pixels, L levels (Keras's 256).
 * clahe_tables: one work-item per (image, tile, channel): its histogram of Keras's int32
 * levels read through edge padding (Keras's 'symmetric' pad is torch's 'replicate'), clipped
 * at the integer limit (Keras on torch counts in int64) with the excess spread evenly, then
 * the normalized cdf, written into table (N, GH, GW, C, L).
 * clahe_apply: one work-item per output element: the four nearest tiles' entries at its
 * level, blended by Keras's tile-centre weights. */
#ifndef CLAHE_LEVELS
#define CLAHE_LEVELS 256 /* Keras's 0..255 levels */
#endif

/* Keras's int32 cast of a 0..255 value clipped to the levels; NaN reads level 0. */
inline int clahe_level(const float v)
{
    if (!(v >= 1.0f))
        return 0;
    return v >= (float)(CLAHE_LEVELS - 1) ? CLAHE_LEVELS - 1 : (int)v;
}

/* Keras's edge-replicated table row p in [0, grid + 1] -> the tile it holds. */
inline int clahe_tile(const int p, const int grid)
{
    return p < 1 ? 0 : (p > grid ? grid - 1 : p - 1);
}

__kernel void clahe_tables(__global const float *x, __global float *table, const int N,
                           const int H, const int W, const int C, const int GH, const int GW,
                           const int TH, const int TW, const float lo, const float hi,
                           const float limit)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * GH * GW * C);
    const int ch = gid % C;
    const int gx = (gid / C) % GW;
    const int gy = (gid / (C * GW)) % GH;
    const int n = gid / (C * GW * GH);
    __global float *hist = table + (size_t)gid * CLAHE_LEVELS;
    for (int k = 0; k < CLAHE_LEVELS; ++k)
        hist[k] = 0.0f;
    for (int r = gy * TH; r < gy * TH + TH; ++r) {
        const size_t row = ((size_t)n * H + min(r, H - 1)) * W;
        for (int q = gx * TW; q < gx * TW + TW; ++q) {
            const float v = rescale(x[(row + min(q, W - 1)) * C + ch], lo, hi, 0.0f, 255.0f);
            hist[clahe_level(v)] += 1.0f;
        }
    }
    if (limit >= 0.0f) { /* negative: no clipping (Keras's clip_limit <= 0) */
        float excess = 0.0f;
        for (int k = 0; k < CLAHE_LEVELS; ++k) {
            const float kept = hist[k] < limit ? hist[k] : limit;
            excess += hist[k] - kept;
            hist[k] = kept;
        }
        excess = excess / 256.0f;
        for (int k = 0; k < CLAHE_LEVELS; ++k)
            hist[k] += excess;
    }
    float cdf = 0.0f, cdf_min;
    for (int k = 0; k < CLAHE_LEVELS; ++k) {
        cdf += hist[k];
        hist[k] = cdf;
    }
    cdf_min = hist[0];
    for (int k = 0; k < CLAHE_LEVELS; ++k)
        cdf_min = hist[k] < cdf_min ? hist[k] : cdf_min;
    float den = (float)(TH * TW) - cdf_min;
    den = den == 0.0f ? 1.0f : den;
    for (int k = 0; k < CLAHE_LEVELS; ++k)
        hist[k] = clip((hist[k] - cdf_min) * 255.0f / den, 0.0f, 255.0f);
}

__kernel void clahe_apply(__global const float *x, __global const float *table,
                          __global float *y, const int N, const int H, const int W,
                          const int C, const int GH, const int GW, const int TH, const int TW,
                          const float lo, const float hi)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * H * W * C);
    const int ch = gid % C;
    const int col = (gid / C) % W;
    const int row = (gid / (C * W)) % H;
    const int n = gid / (C * W * H);
    /* Keras's float32 grid: (i - T / 2) / T + 1, its floor and fraction. */
    const float gy = ((float)row - (float)(TH / 2.0f)) / (float)TH + 1.0f;
    const float gx = ((float)col - (float)(TW / 2.0f)) / (float)TW + 1.0f;
    const float fy = floor(gy), fx = floor(gx);
    const float wy = gy - fy, wx = gx - fx;
    const int ty0 = clahe_tile((int)fy, GH), ty1 = clahe_tile((int)fy + 1, GH);
    const int tx0 = clahe_tile((int)fx, GW), tx1 = clahe_tile((int)fx + 1, GW);
    const int level = clahe_level(rescale(x[gid], lo, hi, 0.0f, 255.0f));
    __global const float *t = table + (size_t)n * GH * GW * C * CLAHE_LEVELS
                              + (size_t)ch * CLAHE_LEVELS + level;
    const size_t sy = (size_t)GW * C * CLAHE_LEVELS, sx = (size_t)C * CLAHE_LEVELS;
    const float top = t[ty0 * sy + tx0 * sx] * (1.0f - wx) + t[ty0 * sy + tx1 * sx] * wx;
    const float bottom = t[ty1 * sy + tx0 * sx] * (1.0f - wx) + t[ty1 * sy + tx1 * sx] * wx;
    y[gid] = rescale(top * (1.0f - wy) + bottom * wy, 0.0f, 255.0f, lo, hi);
}
