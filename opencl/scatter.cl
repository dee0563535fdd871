/* Scatter kernels: keras.ops' segment and scatter ops on row views (rows, D), the twin of
 * native/scatter.pyx (its design note holds here).
 *
 * One work-item per output element (row, column): segment_reduce_forward folds its group
 * (order[starts[s]] .. order[starts[s+1] - 1], grouped on the host) in order, so the result is
 * the CPU's sequential fold, never a float atomic.
 */
#include "common.h"

__kernel void segment_reduce_forward(__global const float *data, __global const int *starts,
                                     __global const int *order, __global float *y,
                                     const int N, const int D, const int code)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * D);
    const int s = gid / D, j = gid % D;
    float acc = code == 0 ? 0.0f : (code == 2 ? 1.0f : -INFINITY);
    for (int k = starts[s]; k < starts[s + 1]; ++k) {
        const float v = data[order[k] * D + j];
        if (code == 0) acc += v;
        else if (code == 2) acc *= v; /* prod (opsm: segment_prod); empty: 1 */
        else if (v > acc || isnan(v)) acc = v;
    }
    y[gid] = acc;
}

__kernel void gather_rows(__global const float *src, __global const int *rows,
                          __global float *y, const int M, const int D)
{
    const int gid = get_global_id(0);
    GUARD(gid, M * D);
    const int r = rows[gid / D];
    y[gid] = r < 0 ? 0.0f : src[r * D + gid % D];
}

__kernel void select_rows(__global const float *base, __global const float *src,
                          __global const int *owner, __global float *y, const int N,
                          const int D)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * D);
    const int o = owner[gid / D];
    y[gid] = o < 0 ? base[gid] : src[o * D + gid % D];
}
