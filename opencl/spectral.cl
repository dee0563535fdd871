/* Spectral kernels of Keras 3's audio front ends: the OpenCL twins of native/spectral.pyx
 * (its design note is the recipe). float32, one work-item per element or row.
 *
 * Legend: R rows, F frequency bins, T samples; mode codes are api.SPECTRUM_MODES' indices.
 * power_to_db's floor is the maximum over the whole tensor: a stage kernel writes one maximum
 * per work-group (wg_reduce.h's fixed tree), one group folds those, and the clamp reads the
 * result from the device; the backward folds its sums with sum_partials_float. Nothing goes
 * back to the host. stft is the direct DFT sum per (frame, bin) (the CPU's FFT gives the same
 * numbers to float32 rounding).
 */
#define PYNN_SUM_PARTIALS
#include "wg_reduce.h"

/* keras.backend.epsilon(): STFTSpectrogram's floor under the power and the magnitude. */
#ifndef KERAS_EPSILON
#define KERAS_EPSILON 1e-7f
#endif
/* 10 / ln(10): d(10 log10 x)/dx = DB_PER_LN / x. */
#define DB_PER_LN 4.342944819032518f

#define MODE_MAGNITUDE 0
#define MODE_PSD 1
#define MODE_ANGLE 2
#define MODE_LOG 3
#define MODE_POWER 4
#define MODE_STFT 5

/* One work-item per (row, bin); 'stft' writes both halves of its row. */
__kernel void spectrum_forward(__global const float *re, __global const float *im,
                               __global float *y, const int n, const int F, const int code,
                               const float exponent)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    const int f = i % F;
    const float a = re[i], b = im[i];
    if (code == MODE_STFT) {
        const int r = i / F;
        y[2 * r * F + f] = a;
        y[2 * r * F + F + f] = b;
        return;
    }
    const float p = a * a + b * b;
    float v;
    if (code == MODE_MAGNITUDE)
        v = sqrt(fmax(p, KERAS_EPSILON));
    else if (code == MODE_LOG)
        v = log(fmax(sqrt(fmax(p, KERAS_EPSILON)), KERAS_EPSILON));
    else if (code == MODE_PSD)
        v = (f == 0 || f == F - 1) ? p : 2.0f * p;
    else if (code == MODE_ANGLE)
        v = atan2(b, a);
    else if (exponent == 2.0f)
        v = p;
    else if (exponent == 1.0f)
        v = sqrt(p);
    else
        v = pow(sqrt(p), exponent);
    y[i] = v;
}

__kernel void spectrum_backward(__global const float *dy, __global const float *re,
                                __global const float *im, __global float *dre,
                                __global float *dim, const int n, const int F, const int code,
                                const float exponent)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    const int f = i % F;
    if (code == MODE_STFT) {
        const int r = i / F;
        dre[i] = dy[2 * r * F + f];
        dim[i] = dy[2 * r * F + F + f];
        return;
    }
    const float a = re[i], b = im[i], g = dy[i];
    const float p = a * a + b * b;
    if (code == MODE_ANGLE) {
        const float s = p > 0.0f ? g / p : 0.0f;
        dre[i] = -b * s;
        dim[i] = a * s;
        return;
    }
    float s;
    if (code == MODE_PSD)
        s = (f == 0 || f == F - 1) ? 2.0f * g : 4.0f * g;
    else if (code == MODE_MAGNITUDE)
        s = p > KERAS_EPSILON ? g / sqrt(p) : 0.0f;
    else if (code == MODE_LOG)
        s = p > KERAS_EPSILON ? g / p : 0.0f;
    else if (exponent == 2.0f)
        s = 2.0f * g;
    else
        s = p > 0.0f ? g * exponent * pow(p, exponent / 2.0f - 1.0f) : 0.0f;
    dre[i] = a * s;
    dim[i] = b * s;
}

inline float db_value(const float x, const float min_power, const float offset)
{
    return 10.0f * log10(fmax(x, min_power)) - offset;
}

/* Stage 1 of the maximum: group g folds a grid-stride slice of the dB values (or of
 * `partials` when fold is set, one group) into out[g]. */
__kernel void power_to_db_max(__global const float *x, __global float *out, const int n,
                              const float min_power, const float offset, const int fold)
{
    __local float buf[WG_SIZE];
    float m = -INFINITY;
    for (int i = get_global_id(0); i < n; i += get_global_size(0))
        m = fmax(m, fold ? x[i] : db_value(x[i], min_power, offset));
    m = wg_max_float(buf, m);
    if (get_local_id(0) == 0)
        out[get_group_id(0)] = m;
}

/* y = max(dB value, peak[0] - top_db); top_db < 0: no floor. */
__kernel void power_to_db_apply(__global const float *x, __global const float *peak,
                                __global float *y, const int n, const float min_power,
                                const float offset, const float top_db)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    const float v = db_value(x[i], min_power, offset);
    y[i] = top_db < 0.0f ? v : fmax(v, peak[0] - top_db);
}

/* Stage 1 of the backward's two sums: partials[g] the floored elements' dy, partials[G + g]
 * the count of elements at the peak. */
__kernel void power_to_db_grad_sums(__global const float *dy, __global const float *x,
                                    __global const float *peak, __global float *partials,
                                    const int n, const float min_power, const float offset,
                                    const float top_db)
{
    __local float buf[WG_SIZE];
    const float floor_db = peak[0] - top_db;
    float s = 0.0f, c = 0.0f;
    for (int i = get_global_id(0); i < n; i += get_global_size(0)) {
        const float v = db_value(x[i], min_power, offset);
        if (v < floor_db)
            s += dy[i];
        if (v == peak[0])
            c += 1.0f;
    }
    s = wg_sum_float(buf, s);
    c = wg_sum_float(buf, c);
    if (get_local_id(0) == 0) {
        partials[get_group_id(0)] = s;
        partials[get_num_groups(0) + get_group_id(0)] = c;
    }
}

/* dx = (dy where not floored, + the floored sum shared by the maxima) * DB_PER_LN / x above
 * min_power; sums[0] the floored dy, sums[1] the count at the peak (top_db < 0: neither). */
__kernel void power_to_db_backward(__global const float *dy, __global const float *x,
                                   __global const float *peak, __global const float *sums,
                                   __global float *dx, const int n, const float min_power,
                                   const float offset, const float top_db)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    const float xi = x[i];
    if (!(xi > min_power)) {
        dx[i] = 0.0f;
        return;
    }
    float g = dy[i];
    if (top_db >= 0.0f) {
        const float v = db_value(xi, min_power, offset);
        if (v < peak[0] - top_db)
            g = 0.0f;
        if (v == peak[0])
            g += sums[1] > 0.0f ? sums[0] / sums[1] : 0.0f;
    }
    dx[i] = g * DB_PER_LN / xi;
}

/* (R, T) -> (R, T + 2 pad): one work-item per output sample, reading its mirror's source. */
__kernel void reflect_pad1d_forward(__global const float *x, __global float *y, const int n,
                                    const int T, const int pad)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    const int W = T + 2 * pad;
    const int r = i / W;
    int t = i % W - pad;
    t = t < 0 ? -t : t;
    t = t >= T ? 2 * (T - 1) - t : t;
    y[i] = x[r * T + t];
}

/* (R, T + 2 pad) -> (R, T): one work-item per input sample, its centre plus its mirrors (at
 * most one on each side, since pad < T). */
__kernel void reflect_pad1d_backward(__global const float *dy, __global float *dx, const int n,
                                     const int T, const int pad)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    const int W = T + 2 * pad;
    const int r = i / T, t = i % T;
    __global const float *row = dy + (size_t)r * W;
    float g = row[pad + t];
    if (t >= 1 && t <= pad)
        g += row[pad - t];
    if (t <= T - 2 && T - 1 - t <= pad)
        g += row[pad + T - 1 + (T - 1 - t)];
    dx[i] = g;
}

/* stft: one work-item per (row, frame, bin), the direct sum over the frame against the
 * twiddle tables cos_t / sin_t of exp(2 pi i m / N) (index n k mod N); the CPU runs an FFT,
 * the device the N independent products of each bin in parallel. */
__kernel void stft_forward(__global const float *x, __global const float *window,
                           __global const float *cos_t, __global const float *sin_t,
                           __global float *real, __global float *imag, const int n_items,
                           const int T, const int N, const int frames, const int stride)
{
    const int i = get_global_id(0);
    GUARD(i, n_items);
    const int F = N / 2 + 1;
    const int k = i % F, rf = i / F;
    const int r = rf / frames, f = rf % frames;
    __global const float *v = x + (size_t)r * T + (size_t)f * stride;
    float sr = 0.0f, si = 0.0f;
    int m = 0;
    for (int n = 0; n < N; ++n) {
        const float a = v[n] * window[n];
        sr += a * cos_t[m];
        si -= a * sin_t[m];
        m += k;
        if (m >= N)
            m -= N;
    }
    real[i] = sr;
    imag[i] = si;
}

/* One work-item per (row, sample): the frames covering the sample, in frame order, each
 * w[n] Re(sum_k (dre[k] + i dim[k]) exp(+2 pi i n k / N)) at its offset n. */
__kernel void stft_backward(__global const float *dre, __global const float *dim,
                            __global const float *window, __global const float *cos_t,
                            __global const float *sin_t, __global float *dx, const int n_items,
                            const int T, const int N, const int frames, const int stride)
{
    const int i = get_global_id(0);
    GUARD(i, n_items);
    const int F = N / 2 + 1;
    const int r = i / T, t = i % T;
    const int first = t >= N ? (t - N) / stride + 1 : 0;
    const int last = min(t / stride, frames - 1);
    float g = 0.0f;
    for (int f = first; f <= last; ++f) {
        const int n = t - f * stride;
        __global const float *a = dre + ((size_t)r * frames + f) * F;
        __global const float *b = dim + ((size_t)r * frames + f) * F;
        float s = 0.0f;
        int m = 0;
        for (int k = 0; k < F; ++k) {
            s += a[k] * cos_t[m] - b[k] * sin_t[m];
            m += n;
            if (m >= N)
                m -= N;
        }
        g += window[n] * s;
    }
    dx[i] = g;
}
