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

/* x is only read for gelu; the host passes y in its place otherwise. */
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
