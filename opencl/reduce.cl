/* Reductions of the dense/conv family: bias_backward (sum of dz over every axis but the last)
 * and activation_bias_backward (the activation gradient dz computed inside that sum's first
 * pass, so dy and y are read once and dz written once).
 *
 * Legend: R rows (N, or N*HO*WO for conv), C columns (units U or filters F).
 * Deterministic by construction, no float atomics: pass 1 gives each (column, row chunk) pair
 * one work-item that sums its rows in order; pass 2 sums the chunk partials of a column in
 * order. The chunk length is chosen by the host from the shape alone, so a shape always sums
 * in the same order on every run. Adjacent work-items read adjacent columns (coalesced).
 */
#include "common.h"
#include "activation.h"

/* partial[k, c] = sum of x[r, c] for r in chunk k (rows k*chunk_rows ... ). */
__kernel void bias_backward_partial(const int rows, const int cols, const int chunk_rows,
                                    __global const float* restrict x,
                                    __global float* restrict partial) {
    const int c = get_global_id(0);
    const int k = get_global_id(1);
    const int r0 = k * chunk_rows;
    GUARD(c, cols);
    if (r0 >= rows) return;
    const int r1 = min(rows, r0 + chunk_rows);
    float acc = 0.0f;
    for (int r = r0; r < r1; ++r) acc += x[(size_t)r * cols + c];
    partial[(size_t)k * cols + c] = acc;
}

/* dz = act_grad(dy, x, y) and partial[k, c] = sum of dz[r, c] for r in chunk k, as above
 * (every activation but softmax; x is only read by gelu, the host passes y in its place
 * otherwise). */
__kernel void activation_bias_backward_partial(const int rows, const int cols,
                                               const int chunk_rows,
                                               __global const float* restrict dy,
                                               __global const float* x,
                                               __global const float* y,
                                               __global float* restrict dz,
                                               __global float* restrict partial,
                                               const int act, const float alpha) {
    const int c = get_global_id(0);
    const int k = get_global_id(1);
    const int r0 = k * chunk_rows;
    GUARD(c, cols);
    if (r0 >= rows) return;
    const int r1 = min(rows, r0 + chunk_rows);
    float acc = 0.0f;
    for (int r = r0; r < r1; ++r) {
        const size_t i = (size_t)r * cols + c;
        const float g = act_grad(dy[i], x[i], y[i], act, alpha);
        dz[i] = g;
        acc += g;
    }
    partial[(size_t)k * cols + c] = acc;
}

/* out[c] = sum over k of partial[k, c], k ascending. */
__kernel void bias_backward_final(const int chunks, const int cols,
                                  __global const float* restrict partial,
                                  __global float* restrict out) {
    const int c = get_global_id(0);
    GUARD(c, cols);
    float acc = 0.0f;
    for (int k = 0; k < chunks; ++k) acc += partial[(size_t)k * cols + c];
    out[c] = acc;
}
