/* Post-training int8 kernels (issue 18): the twin of native/quant.pyx.
 *
 * Legend: N batch, K input features, U output units. One work-item per element / output.
 * int8_dense_forward: acc = sat_int32(sum_k xq[n,k] wq[u,k] - x_zp sum_k wq[u,k] + bias[u])
 * (the dot product in int, the correction in long), yq = clamp(rint((float)acc * mult[u]) +
 * y_zp, lo, 255): the CPU's float32 roundings, so the results are bit-identical. The dot is
 * over native/_qgemm.h's VNNI pack (int8_pack_weights), 4 products at a time: dot() of
 * uchar4 x char4 where cl_khr_integer_dot_product is present, a widening multiply-add where not.
 */
#include "common.h"

uchar requantize(float v, float zero_point, float lo)
{
    float r = rint(v) + zero_point;
    r = r < lo ? lo : r;
    r = r > 255.0f ? 255.0f : r;
    return (uchar)r;
}

__kernel void quantize_forward(__global const float *x, __global uchar *q, const int n,
                               const float scale, const float zero_point)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    q[i] = requantize(x[i] / scale, zero_point, 0.0f);
}

__kernel void dequantize_forward(__global const uchar *q, __global float *y, const int n,
                                 const float scale, const float zero_point)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    y[i] = ((float)q[i] - zero_point) * scale;
}

/* int8_pack_weights: one work-item per packed byte, (ceil(U/16), k4, 64) from wq (U, K). */
__kernel void int8_pack_weights(__global const char *wq, __global char *packed, const int total,
                                const int units, const int k, const int k4)
{
    const int t = get_global_id(0);
    GUARD(t, total);
    const int ub = t / (k4 * 64), g = (t / 64) % k4, lane = (t % 64) / 4, i = t % 4;
    const int u = ub * 16 + lane, j = g * 4 + i;
    packed[t] = (u < units && j < k) ? wq[(size_t)u * k + j] : (char)0;
}

/* 4 u8 x s8 products summed exactly in int: OpenCL 3.0's integer dot product where the
 * device has it, else the portable widening multiply-add (the same integers either way). */
#ifndef QUANT_DOT_EXT
#ifdef cl_khr_integer_dot_product
#define QUANT_DOT_EXT 1
#else
#define QUANT_DOT_EXT 0
#endif
#endif
inline int dot4_us(uchar4 x, char4 w)
{
#if QUANT_DOT_EXT
    return dot(x, w);
#else
    const int4 p = convert_int4(x) * convert_int4(w);
    return p.x + p.y + p.z + p.w;
#endif
}

__kernel void int8_dense_forward(__global const uchar *xq, __global const char *packed,
                                 __global const int *bias, __global const float *mult,
                                 __global uchar *yq, __global float *yf, const int float_out,
                                 const int n, const int k, const int k4,
                                 const int units, const int use_bias, const int x_zero_point,
                                 const float y_zero_point, const float lo)
{
    const int t = get_global_id(0);
    GUARD(t, n * units);
    const int r = t / units, u = t % units;
    __global const uchar *xr = xq + (size_t)r * k;
    __global const char *wb = packed + (size_t)(u / 16) * k4 * 64 + 4 * (u % 16);
    int acc_dot = 0, wsum = 0;
    const int full = k / 4;
    for (int g = 0; g < full; ++g) {
        const char4 w = vload4(0, wb + (size_t)g * 64);
        acc_dot += dot4_us(vload4(g, xr), w);
        wsum += (int)w.x + (int)w.y + (int)w.z + (int)w.w;
    }
    for (int j = full * 4; j < k; ++j) {
        const int w = wb[(size_t)(j / 4) * 64 + j % 4];
        acc_dot += (int)xr[j] * w;
        wsum += w;
    }
    long acc = (long)acc_dot - (long)x_zero_point * (long)wsum
               + (use_bias ? (long)bias[u] : 0L);
    acc = acc < (long)INT_MIN ? (long)INT_MIN : (acc > (long)INT_MAX ? (long)INT_MAX : acc);
    const float v = (float)(int)acc * mult[u];
    if (float_out)  /* dynamic quantization: float32, relu when lo > 0 is not the flag */
        yf[t] = (lo > 0.5f && v < 0.0f) ? 0.0f : v;
    else
        yq[t] = requantize(v, y_zero_point, lo);
}

/* int8_im2col: one work-item per patch byte of cols (N * HO * WO, KH * KW * C). */
__kernel void int8_im2col(__global const uchar *xq, __global uchar *cols, const int total,
                          const int h, const int w, const int c, const int kh, const int kw,
                          const int sh, const int sw, const int dh, const int dw, const int pt,
                          const int pl, const int ho, const int wo, const uchar pad_value)
{
    const int t = get_global_id(0);
    GUARD(t, total);
    const int width = kh * kw * c, row = t / width, col = t % width;
    const int ch = col % c, j = (col / c) % kw, i = col / (c * kw);
    const int ox = row % wo, oy = (row / wo) % ho, b = row / (wo * ho);
    const int iy = oy * sh - pt + i * dh, ix = ox * sw - pl + j * dw;
    cols[t] = (iy >= 0 && iy < h && ix >= 0 && ix < w)
        ? xq[(((size_t)b * h + iy) * w + ix) * c + ch] : pad_value;
}

/* -- int8 depthwise convolution (issue 18, branch qbreadth) --
 * int8_depthwise_conv2d_forward: one work-item per output (n, oy, ox, c*M + m): the exact
 * int sum over the window's taps inside the input of (xq - x_zp) wq[kh, kw, c, m], bias and
 * int32 saturation in long, then int8_dense_forward's epilogue (bit-identical to the CPU). */
__kernel void int8_depthwise_conv2d_forward(__global const uchar *xq, __global const char *wq,
                                            __global const int *bias,
                                            __global const float *mult, __global uchar *yq,
                                            __global float *yf, const int float_out,
                                            const int total, const int h, const int w,
                                            const int c, const int m, const int kh,
                                            const int kw, const int sh, const int sw,
                                            const int dh, const int dw, const int pt,
                                            const int pl, const int ho, const int wo,
                                            const int use_bias, const int x_zero_point,
                                            const float y_zero_point, const float lo)
{
    const int t = get_global_id(0);
    GUARD(t, total);
    const int cm = c * m, u = t % cm, ch = u / m;
    const int ox = (t / cm) % wo, oy = (t / (cm * wo)) % ho, b = t / (cm * wo * ho);
    int sum = 0;
    for (int i = 0; i < kh; ++i) {
        const int iy = oy * sh - pt + i * dh;
        if (iy < 0 || iy >= h)
            continue;
        for (int j = 0; j < kw; ++j) {
            const int ix = ox * sw - pl + j * dw;
            if (ix < 0 || ix >= w)
                continue;
            sum += ((int)xq[(((size_t)b * h + iy) * w + ix) * c + ch] - x_zero_point)
                   * (int)wq[((size_t)i * kw + j) * cm + u];
        }
    }
    long acc = (long)sum + (use_bias ? (long)bias[u] : 0L);
    acc = acc < (long)INT_MIN ? (long)INT_MIN : (acc > (long)INT_MAX ? (long)INT_MAX : acc);
    const float v = (float)(int)acc * mult[u];
    if (float_out)
        yf[t] = (lo > 0.5f && v < 0.0f) ? 0.0f : v;
    else
        yq[t] = requantize(v, y_zero_point, lo);
}
/* -- end int8 depthwise convolution -- */

/* -- int8 chained inference (issue 18, branch q8) --
 * int8_max_pool2d: one work-item per output (n, oy, ox, c), the max over the window's taps
 * inside the input (a 'same' window always holds one). */
__kernel void int8_max_pool2d(__global const uchar *xq, __global uchar *y, const int total,
                              const int h, const int w, const int c, const int ph,
                              const int pw, const int sh, const int sw, const int pt,
                              const int pl, const int ho, const int wo)
{
    const int t = get_global_id(0);
    GUARD(t, total);
    const int ch = t % c, ox = (t / c) % wo, oy = (t / (c * wo)) % ho, b = t / (c * wo * ho);
    uchar best = 0;
    for (int i = 0; i < ph; ++i) {
        const int iy = oy * sh - pt + i;
        if (iy < 0 || iy >= h)
            continue;
        for (int j = 0; j < pw; ++j) {
            const int ix = ox * sw - pl + j;
            if (ix >= 0 && ix < w)
                best = max(best, xq[(((size_t)b * h + iy) * w + ix) * c + ch]);
        }
    }
    y[t] = best;
}
/* -- end int8 chained inference -- */
