/* Shape ops, forward and backward side by side: transpose (Keras's Permute) and
 * repeat_vector (RepeatVector). The twin of native/shape.pyx.
 *
 * Legend: N batch, F features, R repeats. One work-item per output element.
 * transpose: y's shape d0..d5 and x's stride s0..s5 along each of y's axes (x's strides in
 * perm order), padded with leading size-1 axes to MAX_DIMS = 6; the host passes the inverse
 * permutation for the backward, so one kernel serves both ops.
 * repeat_vector_backward sums the R rows of a sample in order: a gather, no atomics.
 */
#include "common.h"

inline void transpose_body(__global const float *x, __global float *y, const int total,
                           const int d0, const int d1, const int d2, const int d3,
                           const int d4, const int d5, const int s0, const int s1,
                           const int s2, const int s3, const int s4, const int s5)
{
    const int gid = get_global_id(0);
    GUARD(gid, total);
    int t = gid;
    size_t offset = (size_t)(t % d5) * s5;
    t /= d5;
    offset += (size_t)(t % d4) * s4;
    t /= d4;
    offset += (size_t)(t % d3) * s3;
    t /= d3;
    offset += (size_t)(t % d2) * s2;
    t /= d2;
    offset += (size_t)(t % d1) * s1;
    t /= d1;
    offset += (size_t)t * s0;
    (void)d0;
    y[gid] = x[offset];
}

#define TRANSPOSE_ARGS                                                                    \
    const int total, const int d0, const int d1, const int d2, const int d3, const int d4, \
        const int d5, const int s0, const int s1, const int s2, const int s3, const int s4, \
        const int s5

__kernel void transpose_forward(__global const float *x, __global float *y, TRANSPOSE_ARGS)
{
    transpose_body(x, y, total, d0, d1, d2, d3, d4, d5, s0, s1, s2, s3, s4, s5);
}

/* The host passes the inverse permutation: dx = transpose(dy, inverse(perm)). */
__kernel void transpose_backward(__global const float *dy, __global float *dx, TRANSPOSE_ARGS)
{
    transpose_body(dy, dx, total, d0, d1, d2, d3, d4, d5, s0, s1, s2, s3, s4, s5);
}

__kernel void repeat_vector_forward(__global const float *x, __global float *y, const int N,
                                    const int R, const int F)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * R * F);
    const int f = gid % F;
    const int n = gid / (R * F);
    y[gid] = x[(size_t)n * F + f];
}

__kernel void repeat_vector_backward(__global const float *dy, __global float *dx, const int N,
                                     const int R, const int F)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * F);
    const int f = gid % F;
    const int n = gid / F;
    __global const float *p = dy + (size_t)n * R * F + f;
    float s = 0.0f;
    for (int k = 0; k < R; ++k)
        s += p[(size_t)k * F];
    dx[gid] = s;
}
