/* Activations: activation_forward / activation_backward (elementwise, any shape) and the row
 * ops softmax_forward / softmax_backward on the last axis.
 *
 * Legend: n elements; rows x cols for softmax (cols = last axis).
 * Elementwise kernels: one work-item per element, formulas from activation.h (the twin of
 * native/_activation.pxd). Softmax: one work-group per row; max and sums go through the
 * fixed local-memory tree of wg_reduce.h, so a row's result never depends on scheduling.
 * Sizes are kernel arguments; every kernel guards its ids.
 */
#include "common.h"
#include "activation.h"
#include "wg_reduce.h"

#ifndef SOFTMAX_WG
#define SOFTMAX_WG 64 /* work-items per softmax row; a power of two */
#endif

__kernel void activation_forward(__global const float *x, __global float *y, const int n,
                                 const int act, const float alpha)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    y[i] = act_value(x[i], act, alpha);
}

/* x is only read for ACTIVATIONS_NEEDING_INPUT; the host passes y in its place otherwise. */
__kernel void activation_backward(__global const float *dy, __global const float *x,
                                  __global const float *y, __global float *dx, const int n,
                                  const int act, const float alpha)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    dx[i] = act_grad(dy[i], x[i], y[i], act, alpha);
}

__kernel __attribute__((reqd_work_group_size(SOFTMAX_WG, 1, 1)))
void softmax_forward(__global const float *x, __global float *y, const int rows, const int cols)
{
    __local float buf[SOFTMAX_WG];
    const int row = get_group_id(0);
    const int lid = get_local_id(0);
    /* A spare group works on an empty row: returning early before a barrier is undefined
     * (and crashes PoCL) even when the whole group returns. */
    const int n = row < rows ? cols : 0;
    __global const float *xr = x + (size_t)row * cols;
    __global float *yr = y + (size_t)row * cols;

    float m = -INFINITY;
    for (int j = lid; j < n; j += SOFTMAX_WG)
        m = fmax(m, xr[j]);
    m = wg_max_float(buf, m);

    float s = 0.0f;
    for (int j = lid; j < n; j += SOFTMAX_WG)
        s += exp(xr[j] - m);
    s = wg_sum_float(buf, s);

    for (int j = lid; j < n; j += SOFTMAX_WG)
        yr[j] = exp(xr[j] - m) / s;
}

/* dx = y * (dy - sum(dy * y)) over each row. */
__kernel __attribute__((reqd_work_group_size(SOFTMAX_WG, 1, 1)))
void softmax_backward(__global const float *dy, __global const float *y, __global float *dx,
                      const int rows, const int cols)
{
    __local float buf[SOFTMAX_WG];
    const int row = get_group_id(0);
    const int lid = get_local_id(0);
    const int n = row < rows ? cols : 0;
    const size_t base = (size_t)row * cols;

    float dot = 0.0f;
    for (int j = lid; j < n; j += SOFTMAX_WG)
        dot += dy[base + j] * y[base + j];
    dot = wg_sum_float(buf, dot);

    for (int j = lid; j < n; j += SOFTMAX_WG)
        dx[base + j] = y[base + j] * (dy[base + j] - dot);
}

/* -- Keras 3's row activations (native/activation.pyx's note): one work-item per row of k
 * elements, the CPU kernel's passes in float.
 * log_softmax y = x - max - log(sum(exp(x - max))), backward dy - exp(y) * sum(dy).
 * glu y = a * sigmoid(b) for the row's halves a, b (y rows of k / 2), backward from x.
 * sparsemax as Keras 3.15 computes it: the support S = {x > t} of the true sparsemax
 * threshold t (Michelot's fixed point), tau = (sum over S of w_i x_i - 1) / |S| with
 * w_i = 1 + the members of S below x_i (ties by position), y = max(x - tau, 0); backward
 * from x: dx_i = [x_i >= tau] dy_i - [i in S] w_i / |S| * sum([x >= tau] dy).
 */
float sparsemax_support(__global const float *x, const int k, int *size)
{
    float s = 0.0f;
    for (int j = 0; j < k; ++j)
        s += x[j];
    float t = (s - 1.0f) / k;
    int count = k, last = 0;
    /* t only rises (fmax: rounding cannot let the support grow back): k + 1 passes at most */
    for (int pass = 0; count != last && pass <= k; ++pass) {
        last = count;
        s = 0.0f;
        count = 0;
        for (int j = 0; j < k; ++j)
            if (x[j] > t) {
                s += x[j];
                count++;
            }
        t = fmax(t, (s - 1.0f) / count);
    }
    *size = count;
    return t;
}

int sparsemax_weight(__global const float *x, const int k, const float t, const int i)
{
    int w = 0;
    for (int j = 0; j < k; ++j)
        if (x[j] > t && (x[j] < x[i] || (x[j] == x[i] && j >= i)))
            w++;
    return w;
}

float sparsemax_keras_tau(__global const float *x, const int k, const float t, const int c)
{
    float s = 0.0f;
    for (int i = 0; i < k; ++i)
        if (x[i] > t)
            s += sparsemax_weight(x, k, t, i) * x[i];
    return (s - 1.0f) / c;
}

__kernel void row_activation_forward(__global const float *x, __global float *y,
                                     const int rows, const int k, const int act)
{
    const int r = get_global_id(0);
    GUARD(r, rows);
    __global const float *xr = x + (size_t)r * k;
    if (act == ACT_GLU) {
        const int h = k / 2;
        __global float *yr = y + (size_t)r * h;
        for (int j = 0; j < h; ++j)
            yr[j] = xr[j] * act_sigmoid(xr[h + j]);
        return;
    }
    __global float *yr = y + (size_t)r * k;
    if (act == ACT_LOG_SOFTMAX) {
        float m = xr[0];
        for (int j = 1; j < k; ++j)
            m = fmax(m, xr[j]);
        float s = 0.0f;
        for (int j = 0; j < k; ++j)
            s += exp(xr[j] - m);
        s = log(s);
        for (int j = 0; j < k; ++j)
            yr[j] = (xr[j] - m) - s;
        return;
    }
    int c;
    const float t = sparsemax_support(xr, k, &c);
    const float tau = sparsemax_keras_tau(xr, k, t, c);
    for (int j = 0; j < k; ++j)
        yr[j] = fmax(xr[j] - tau, 0.0f);
}

/* b: x, or y for log_softmax; dy has rows of k / 2 for glu, k otherwise. */
__kernel void row_activation_backward(__global const float *dy, __global const float *b,
                                      __global float *dx, const int rows, const int k,
                                      const int act)
{
    const int r = get_global_id(0);
    GUARD(r, rows);
    __global const float *br = b + (size_t)r * k;
    __global float *dxr = dx + (size_t)r * k;
    if (act == ACT_GLU) {
        const int h = k / 2;
        __global const float *dyr = dy + (size_t)r * h;
        for (int j = 0; j < h; ++j) {
            const float sg = act_sigmoid(br[h + j]);
            dxr[j] = dyr[j] * sg;
            dxr[h + j] = dyr[j] * br[j] * sg * (1.0f - sg);
        }
        return;
    }
    __global const float *dyr = dy + (size_t)r * k;
    float s = 0.0f;
    if (act == ACT_LOG_SOFTMAX) {
        for (int j = 0; j < k; ++j)
            s += dyr[j];
        for (int j = 0; j < k; ++j)
            dxr[j] = dyr[j] - exp(br[j]) * s;
        return;
    }
    int c;
    const float t = sparsemax_support(br, k, &c);
    const float tau = sparsemax_keras_tau(br, k, t, c);
    for (int j = 0; j < k; ++j)
        if (br[j] - tau >= 0.0f)
            s += dyr[j];
    for (int j = 0; j < k; ++j)
        dxr[j] = (br[j] - tau >= 0.0f ? dyr[j] : 0.0f)
                 - (br[j] > t ? sparsemax_weight(br, k, t, j) * s / c : 0.0f);
}

/* -- issue 12: the activation layers' parametrized ops (native/activation.pyx's note) -------
 * relu_forward / relu_backward: y = min(x, max_value) where x > threshold, else
 * negative_slope * (x - threshold); max_value is +inf when there is no cap.
 * prelu_*: x viewed as (N, M), the M feature elements merged into 4 groups of sizes d0..d3;
 * alpha's flat index is i0*s0 + i1*s1 + i2*s2 + i3*s3 (s_k = 0 on shared groups).
 * prelu_backward_alpha: one work-item per alpha element sums its whole share in a fixed
 * order (no atomics), so dalpha is deterministic.
 * softmax_lines_*: softmax along the middle axis of (outer, K, inner), one work-item per
 * line; the last axis (inner == 1) uses softmax_forward / softmax_backward above.
 */
float relu_value(float x, float max_value, float slope, float threshold)
{
    if (x > threshold)
        return x < max_value ? x : max_value;
    return slope * (x - threshold);
}

__kernel void relu_forward(__global const float *x, __global float *y, const int n,
                           const float max_value, const float slope, const float threshold)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    y[i] = relu_value(x[i], max_value, slope, threshold);
}

__kernel void relu_backward(__global const float *dy, __global const float *x,
                            __global float *dx, const int n, const float max_value,
                            const float slope, const float threshold)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    const float v = x[i];
    float g = 0.0f;
    if (v > threshold)
        g = v < max_value ? dy[i] : 0.0f;
    else if (v < threshold)
        g = slope * dy[i];
    dx[i] = g;
}

int prelu_alpha_index(int m, const int4 d, const int4 s)
{
    const int i3 = m % d.w;
    m /= d.w;
    const int i2 = m % d.z;
    m /= d.z;
    const int i1 = m % d.y;
    const int i0 = m / d.y;
    return i0 * s.x + i1 * s.y + i2 * s.z + i3 * s.w;
}

__kernel void prelu_forward(__global const float *x, __global const float *alpha,
                            __global float *y, const int n, const int cols, const int4 d,
                            const int4 s)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    const float v = x[i];
    y[i] = v > 0.0f ? v : alpha[prelu_alpha_index(i % cols, d, s)] * v;
}

__kernel void prelu_backward_input(__global const float *dy, __global const float *x,
                                   __global const float *alpha, __global float *dx,
                                   const int n, const int cols, const int4 d, const int4 s)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    dx[i] = x[i] > 0.0f ? dy[i] : alpha[prelu_alpha_index(i % cols, d, s)] * dy[i];
}

__kernel void prelu_backward_alpha(__global const float *dy, __global const float *x,
                                   __global float *dalpha, const int na, const int rows,
                                   const int cols, const int4 d, const int4 s)
{
    const int a = get_global_id(0);
    GUARD(a, na);
    const int dims[4] = {d.x, d.y, d.z, d.w};
    const int strides[4] = {s.x, s.y, s.z, s.w};
    int lo[4], hi[4];
    for (int k = 0; k < 4; ++k) {
        lo[k] = strides[k] == 0 ? 0 : (a / strides[k]) % dims[k];
        hi[k] = strides[k] == 0 ? dims[k] : lo[k] + 1;
    }
    float acc = 0.0f;
    for (int r = 0; r < rows; ++r)
        for (int i0 = lo[0]; i0 < hi[0]; ++i0)
            for (int i1 = lo[1]; i1 < hi[1]; ++i1)
                for (int i2 = lo[2]; i2 < hi[2]; ++i2) {
                    const size_t off = (size_t)r * cols + ((i0 * d.y + i1) * d.z + i2) * d.w;
                    for (int i3 = lo[3]; i3 < hi[3]; ++i3) {
                        const float v = x[off + i3];
                        if (v < 0.0f)
                            acc += v * dy[off + i3];
                    }
                }
    dalpha[a] = acc;
}

__kernel void softmax_lines_forward(__global const float *x, __global float *y,
                                    const int lines, const int k, const int inner)
{
    const int t = get_global_id(0);
    GUARD(t, lines);
    const size_t base = (size_t)(t / inner) * k * inner + t % inner;
    float m = x[base];
    for (int j = 1; j < k; ++j)
        m = fmax(m, x[base + (size_t)j * inner]);
    float s = 0.0f;
    for (int j = 0; j < k; ++j)
        s += exp(x[base + (size_t)j * inner] - m);
    for (int j = 0; j < k; ++j)
        y[base + (size_t)j * inner] = exp(x[base + (size_t)j * inner] - m) / s;
}

__kernel void softmax_lines_backward(__global const float *dy, __global const float *y,
                                     __global float *dx, const int lines, const int k,
                                     const int inner)
{
    const int t = get_global_id(0);
    GUARD(t, lines);
    const size_t base = (size_t)(t / inner) * k * inner + t % inner;
    float dot = 0.0f;
    for (int j = 0; j < k; ++j)
        dot += dy[base + (size_t)j * inner] * y[base + (size_t)j * inner];
    for (int j = 0; j < k; ++j) {
        const size_t at = base + (size_t)j * inner;
        dx[at] = y[at] * (dy[at] - dot);
    }
}
