/* bfloat16 mixed precision (issue 17): the twin of native/bf16.pyx's rounding.
 *
 * bf16_round: each float32 to the nearest bfloat16 (ties to even) and back to float32, NaN
 * kept a quiet NaN: the bits of native/_bf16gemm.h's pynn_bf16_round. The bf16 GEMM ops on
 * OpenCL round their operands with it, then run the float32 dense/conv kernels, which sum in
 * float32: the CPU's numerics ("float32 accumulation of bf16-rounded operands"), not its
 * bits (the sums run in another order).
 */
#include "common.h"

__kernel void bf16_round(__global const float *x, __global float *y, const int n)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    uint u = as_uint(x[i]);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        u = (u | 0x00400000u) & 0xffff0000u;
    else
        u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    y[i] = as_float(u);
}
