/* Device kernels of pynn.ops' indexing, selection, casting and product ops (issue 13): the
 * OpenCL side of ops whose CPU side is NumPy in pynn/ops/numpy_ops.py (their reference and
 * the CPU results the tests compare with). Host code: pynn/backend/opencl/tensor.py.
 *
 * One work-item per output element unless said otherwise; shapes are padded in front with
 * size-1 axes to 6 (d0..d5), strides are in elements and may be 0 (broadcast) or negative
 * (a reversed slice). Gradients that gather (gather_axis_backward) loop over the indices in
 * order: deterministic, no float atomics. An index outside [-A, A) reads 0 and receives no
 * gradient (TensorFlow's GPU convention; checking it would read the indices back).
 */
#include "common.h"

#define DIM_ARGS const int d0, const int d1, const int d2, const int d3, const int d4, \
    const int d5
#define STRIDE_ARGS(p) const int p##0, const int p##1, const int p##2, const int p##3, \
    const int p##4, const int p##5

/* The offset of output element `gid` in an operand of strides s0..s5. */
#define WALK(gid, s, out)                                                             \
    do {                                                                              \
        int t_ = (gid);                                                               \
        out = (long)(t_ % d5) * s##5; t_ /= d5;                                       \
        out += (long)(t_ % d4) * s##4; t_ /= d4;                                      \
        out += (long)(t_ % d3) * s##3; t_ /= d3;                                      \
        out += (long)(t_ % d2) * s##2; t_ /= d2;                                      \
        out += (long)(t_ % d1) * s##1; t_ /= d1;                                      \
        out += (long)t_ * s##0;                                                       \
    } while (0)

/* y = x viewed at `offset` with strides s (basic slicing, flip, broadcast_to). */
__kernel void strided_copy(__global const float *x, __global float *y, const int total,
                           const int offset, DIM_ARGS, STRIDE_ARGS(s))
{
    const int gid = get_global_id(0);
    GUARD(gid, total);
    long at;
    WALK(gid, s, at);
    (void)d0;
    y[gid] = x[offset + at];
}

/* The gradient of strided_copy for views that touch each element once (slices, flips):
 * dx (zeroed by the host) receives dy at the viewed places. */
__kernel void strided_scatter(__global const float *dy, __global float *dx, const int total,
                              const int offset, DIM_ARGS, STRIDE_ARGS(s))
{
    const int gid = get_global_id(0);
    GUARD(gid, total);
    long at;
    WALK(gid, s, at);
    (void)d0;
    dx[offset + at] = dy[gid];
}

/* y = c != 0 ? a : b, the three broadcast to y's shape. */
__kernel void where_select(__global const float *c, __global const float *a,
                           __global const float *b, __global float *y, const int total,
                           DIM_ARGS, STRIDE_ARGS(c), STRIDE_ARGS(a), STRIDE_ARGS(b))
{
    const int gid = get_global_id(0);
    GUARD(gid, total);
    long oc, oa, ob;
    WALK(gid, c, oc);
    WALK(gid, a, oa);
    WALK(gid, b, ob);
    (void)d0;
    y[gid] = c[oc] != 0.0f ? a[oa] : b[ob];
}

/* x viewed (O, A, I), y (O, K, I): y[o, k, i] = x[o, idx[o*so + k*sk + i*si], i]. take
 * passes so = si = 0, take_along_axis the strides of its (O, K, I) indices. */
__kernel void gather_axis(__global const float *x, __global const int *idx, __global float *y,
                          const int total, const int A, const int K, const int I,
                          const int so, const int sk, const int si)
{
    const int gid = get_global_id(0);
    GUARD(gid, total);
    const int i = gid % I, k = (gid / I) % K, o = gid / (I * K);
    int j = idx[(long)o * so + (long)k * sk + (long)i * si];
    j = j < 0 ? j + A : j;
    y[gid] = (j >= 0 && j < A) ? x[((long)o * A + j) * I + i] : 0.0f;
}

/* dx (O, A, I) = the sum of dy[o, k, i] over the k whose index is a (repeats add up). */
__kernel void gather_axis_backward(__global const float *dy, __global const int *idx,
                                   __global float *dx, const int total, const int A,
                                   const int K, const int I, const int so, const int sk,
                                   const int si)
{
    const int gid = get_global_id(0);
    GUARD(gid, total);
    const int i = gid % I, a = (gid / I) % A, o = gid / (I * A);
    float acc = 0.0f;
    for (int k = 0; k < K; ++k) {
        int j = idx[(long)o * so + (long)k * sk + (long)i * si];
        j = j < 0 ? j + A : j;
        if (j == a)
            acc += dy[((long)o * K + k) * I + i];
    }
    dx[gid] = acc;
}

/* y (n, C): 1 where the class is the index (an index outside [0, C) gives a zero row). */
__kernel void one_hot(__global const int *idx, __global float *y, const int total,
                      const int C)
{
    const int gid = get_global_id(0);
    GUARD(gid, total);
    y[gid] = (float)(idx[gid / C] == gid % C);
}

/* The index of the first largest (code 0) or smallest (code 1) value of each contiguous row,
 * a NaN counting as the extreme (NumPy's argmax). */
__kernel void arg_reduce_rows(__global const float *x, __global int *y, const int outer,
                              const int inner, const int code)
{
    const int o = get_global_id(0);
    GUARD(o, outer);
    __global const float *row = x + (long)o * inner;
    float best = row[0];
    int at = 0;
    for (int i = 1; i < inner && !isnan(best); ++i) {
        const float v = row[i];
        if (isnan(v) || (code == 0 ? v > best : v < best)) {
            best = v;
            at = i;
        }
    }
    y[o] = at;
}

/* One work-item per contiguous row: dx[j] = g * (product of the row's other values), from
 * exclusive prefix and suffix products (exact where the row holds zeros). */
__kernel void prod_backward_rows(__global const float *x, __global const float *g,
                                 __global float *dx, const int outer, const int inner)
{
    const int o = get_global_id(0);
    GUARD(o, outer);
    __global const float *row = x + (long)o * inner;
    __global float *out = dx + (long)o * inner;
    float acc = g[o];
    for (int i = 0; i < inner; ++i) {
        out[i] = acc;
        acc *= row[i];
    }
    acc = 1.0f;
    for (int i = inner - 1; i >= 0; --i) {
        out[i] *= acc;
        acc *= row[i];
    }
}

/* float -> int32 truncating toward zero (NumPy's astype), and back. */
__kernel void cast_float_to_int(__global const float *x, __global int *y, const int n)
{
    const int gid = get_global_id(0);
    GUARD(gid, n);
    y[gid] = (int)x[gid];
}

__kernel void cast_int_to_float(__global const int *x, __global float *y, const int n)
{
    const int gid = get_global_id(0);
    GUARD(gid, n);
    y[gid] = (float)x[gid];
}

#ifndef BMM_TILE
#define BMM_TILE 16 /* square tile of the batched product (local memory 2 * 16 * 16 floats) */
#endif

/* y[b] = a[b] @ c[b] for b = get_global_id(2): a (B, M, K), c (B, K, N), y (B, M, N), a batch
 * stride of 0 for an operand shared by every product. The 2-D case runs the gemm core
 * (opencl/gemm.cl) instead; this serves einsum's and matmul's batched products. */
__kernel __attribute__((reqd_work_group_size(BMM_TILE, BMM_TILE, 1)))
void batched_matmul(__global const float *a, __global const float *c, __global float *y,
                    const int M, const int N, const int K, const int batch_a,
                    const int batch_c)
{
    __local float ta[BMM_TILE][BMM_TILE];
    __local float tc[BMM_TILE][BMM_TILE];
    const int col = get_global_id(0), row = get_global_id(1), b = get_global_id(2);
    const int lc = get_local_id(0), lr = get_local_id(1);
    __global const float *ab = a + (long)b * batch_a;
    __global const float *cb = c + (long)b * batch_c;
    float acc = 0.0f;
    for (int k0 = 0; k0 < K; k0 += BMM_TILE) {
        ta[lr][lc] = (row < M && k0 + lc < K) ? ab[(long)row * K + k0 + lc] : 0.0f;
        tc[lr][lc] = (k0 + lr < K && col < N) ? cb[(long)(k0 + lr) * N + col] : 0.0f;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int k = 0; k < BMM_TILE; ++k)
            acc += ta[lr][k] * tc[k][lc];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (row < M && col < N)
        y[(long)b * M * N + (long)row * N + col] = acc;
}

/* -- issue 13's last elementwise ops: booleans are float 0/1 on the device, as the
 * comparisons of elementwise.cl give them (NumPy's bool arrays on the CPU). Their own
 * kernels rather than op codes of elementwise.cl, whose codes are the CPU table's. */

/* NumPy's npy_divmod for floats: the floor quotient (code 0) or the remainder with the sign
 * of the divisor (code 1), exact where floor(a / b) would round the quotient first. */
inline float floor_div_mod(const float a, const float b, const int want_mod)
{
    float mod = fmod(a, b);
    if (b == 0.0f)
        return want_mod ? mod : a / b;
    float div = (a - mod) / b;
    if (mod != 0.0f) {
        if ((b < 0.0f) != (mod < 0.0f)) {
            mod += b;
            div -= 1.0f;
        }
    } else {
        mod = copysign(0.0f, b);
    }
    if (want_mod)
        return mod;
    if (div == 0.0f)
        return copysign(0.0f, a / b);
    float floordiv = floor(div);
    if (div - floordiv > 0.5f)
        floordiv += 1.0f;
    return floordiv;
}

/* y = a op b broadcast to y's shape: 0 logical_and, 1 logical_or, 2 logical_xor,
 * 3 not_equal, 4 floor_divide, 5 mod. */
__kernel void broadcast_binary(__global const float *a, __global const float *b,
                               __global float *y, const int total, const int code, DIM_ARGS,
                               STRIDE_ARGS(a), STRIDE_ARGS(b))
{
    const int gid = get_global_id(0);
    GUARD(gid, total);
    long oa, ob;
    WALK(gid, a, oa);
    WALK(gid, b, ob);
    (void)d0;
    const float u = a[oa], v = b[ob];
    float r;
    switch (code) {
    case 0: r = (float)(u != 0.0f && v != 0.0f); break;
    case 1: r = (float)(u != 0.0f || v != 0.0f); break;
    case 2: r = (float)((u != 0.0f) != (v != 0.0f)); break;
    case 3: r = (float)(u != v); break;
    case 4: r = floor_div_mod(u, v, 0); break;
    default: r = floor_div_mod(u, v, 1); break;
    }
    y[gid] = r;
}

/* y = 0 logical_not, 1 isnan, 2 isfinite, 3 x != 0 (any/all reduce it with max/min). */
__kernel void predicate(__global const float *x, __global float *y, const int n,
                        const int code)
{
    const int gid = get_global_id(0);
    GUARD(gid, n);
    const float v = x[gid];
    y[gid] = (float)(code == 0 ? v == 0.0f : code == 1 ? isnan(v)
                     : code == 2 ? isfinite(v) : v != 0.0f);
}
