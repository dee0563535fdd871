/* Sparse inference kernels for pruned layers (issue 18): the twin of native/sparse.pyx.
 *
 * Legend: N batch, C input features, U output units, nnz the kernel's nonzeros.
 * The Dense kernel (C, U) by output unit: indptr (U+1), indices (nnz) input rows, values
 * (nnz). One work-item per output element (n, u): a gather-dot over unit u's nonzeros, then
 * bias and the activation (act_value; softmax runs after as its own row op, as dense_forward's
 * epilogue does). An index outside [0, C) is skipped and offsets are clamped to [0, nnz], as
 * on the CPU: a bad index array costs its terms, never a read past an array.
 */
#include "common.h"
#include "activation.h"

__kernel void sparse_dense_forward(__global const float *x, __global const int *indptr,
                                   __global const int *indices, __global const float *values,
                                   __global const float *bias, __global float *y, const int n,
                                   const int c, const int units, const int nnz,
                                   const int use_bias,
                                   const int act, const float alpha)
{
    const int t = get_global_id(0);
    GUARD(t, n * units);
    const int r = t / units, u = t % units;
    __global const float *xr = x + (size_t)r * c;
    float acc = 0.0f;
    const int lo = clamp(indptr[u], 0, nnz), hi = clamp(indptr[u + 1], lo, nnz);
    for (int k = lo; k < hi; ++k) {
        const int col = indices[k];
        if (col >= 0 && col < c)
            acc = fma(xr[col], values[k], acc);
    }
    if (use_bias)
        acc += bias[u];
    y[t] = act_value(acc, act, alpha);
}

/* sparse_conv2d_forward: one work-item per output element (n, oy, ox, f), a gather-dot over
 * filter f's nonzeros, whose indices are taps t = (kh KW + kw) C + c of the (KH, KW, C, F)
 * kernel; taps outside the input (padding) and indices outside the kernel add nothing. */
__kernel void sparse_conv2d_forward(__global const float *x, __global const int *indptr,
                                    __global const int *indices, __global const float *values,
                                    __global const float *bias, __global float *y,
                                    const int total, const int h, const int w, const int c,
                                    const int kh, const int kw, const int sh, const int sw,
                                    const int dh, const int dw, const int pt, const int pl,
                                    const int ho, const int wo, const int filters,
                                    const int nnz, const int use_bias, const int act,
                                    const float alpha)
{
    const int t = get_global_id(0);
    GUARD(t, total);
    const int u = t % filters, pixel = t / filters;
    const int ox = pixel % wo, oy = (pixel / wo) % ho, b = pixel / (wo * ho);
    const int taps = kh * kw * c;
    float acc = 0.0f;
    const int lo = clamp(indptr[u], 0, nnz), hi = clamp(indptr[u + 1], lo, nnz);
    for (int k = lo; k < hi; ++k) {
        const int tap = indices[k];
        if (tap < 0 || tap >= taps)
            continue;
        const int i = tap / (kw * c), j = (tap / c) % kw, ch = tap % c;
        const int iy = oy * sh - pt + i * dh, ix = ox * sw - pl + j * dw;
        if (iy >= 0 && iy < h && ix >= 0 && ix < w)
            acc = fma(x[(((size_t)b * h + iy) * w + ix) * c + ch], values[k], acc);
    }
    if (use_bias)
        acc += bias[u];
    y[t] = act_value(acc, act, alpha);
}
