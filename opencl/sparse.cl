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
