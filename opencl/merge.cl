/* Merge kernels: the n-ary elementwise merges, concatenation and the batched dot product of
 * Keras 3's merge layers. The twin of native/merge.pyx.
 *
 * Legend: E elements of one input; Dot sees x1 as (N, P, K, Q) and x2 as (N, R, K, S) around
 * the summed axis K, y as (N, P*Q, R*S) with i = p*Q + q, j = r*S + s.
 * An op of n inputs is n-1 launches of one fold step, so any n works with fixed kernel
 * arguments; the host chains them as native/merge.pyx folds (left to right, average divides
 * at the last step), and the backward of multiply/maximum/minimum uses the same in-place
 * prefix and back sweep over the dx buffers (see native/merge.pyx's design note).
 * One work-item per element (per output or gradient row for Dot): no two work-items write
 * one address, no atomics.
 */
#include "common.h"
#include "activation.h"

/* MERGE_MODES of pynn/backend/api.py, in order (native/merge.pyx's Mode). */
#define MODE_ADD 0
#define MODE_SUBTRACT 1
#define MODE_MULTIPLY 2
#define MODE_AVERAGE 3
#define MODE_MAXIMUM 4
#define MODE_MINIMUM 5

/* torch.maximum / torch.minimum: a NaN on either side wins. */
#define MAXIMUM(a, b) (((a) > (b) || isnan(a)) ? (a) : (b))
#define MINIMUM(a, b) (((a) < (b) || isnan(a)) ? (a) : (b))

/* y = step(a, x) / divisor; y may be a (in place). divisor is n at average's last step, else 1
 * (a division by 1 is exact). */
/* One fold step y = a (mode) x, divided (average's last step), then the activation (act,
 * alpha as activation.h; linear but on merge_forward's last step). */
__kernel void merge_fold(__global const float *a, __global const float *x, __global float *y,
                         const int E, const int mode, const float divisor, const int act,
                         const float alpha)
{
    const int e = get_global_id(0);
    GUARD(e, E);
    const float u = a[e], v = x[e];
    float r;
    switch (mode) {
    case MODE_SUBTRACT: r = u - v; break;
    case MODE_MULTIPLY: r = u * v; break;
    case MODE_MAXIMUM: r = MAXIMUM(u, v); break;
    case MODE_MINIMUM: r = MINIMUM(u, v); break;
    default: r = u + v; break; /* add, average */
    }
    y[e] = act_value(r / divisor, act, alpha);
}

/* dx = sign * dy / divisor: add (1, 1), subtract's second input (-1, 1), average (1, n). */
__kernel void merge_scaled_copy(__global const float *dy, __global float *dx, const int E,
                                const float sign, const float divisor)
{
    const int e = get_global_id(0);
    GUARD(e, E);
    dx[e] = sign * dy[e] / divisor;
}

/* One step of the back sweep, input k: d holds the running value before step k and becomes
 * dx_k; m (dx_0) carries the gradient reaching that running value. torch's rule for
 * maximum/minimum: a tie gives each side half, a NaN gives both all. */
__kernel void merge_backward_step(__global float *m, __global const float *x, __global float *d,
                                  const int E, const int mode)
{
    const int e = get_global_id(0);
    GUARD(e, E);
    const float a = d[e], v = x[e], g = m[e];
    if (mode == MODE_MULTIPLY) {
        d[e] = g * a;
        m[e] = g * v;
        return;
    }
    const int a_loses = mode == MODE_MAXIMUM ? a < v : a > v;
    const int x_loses = mode == MODE_MAXIMUM ? a > v : a < v;
    const float share_a = a == v ? 0.5f : (a_loses ? 0.0f : 1.0f);
    const float share_x = a == v ? 0.5f : (x_loses ? 0.0f : 1.0f);
    d[e] = g * share_x;
    m[e] = g * share_a;
}

/* Broadcasting by Keras's merge rule, as in native/merge.pyx: an input that differs from the
 * output's shape is expanded to it, and its gradient summed back. `plan` holds R ints per
 * list of pynn.backend.operands.merge.broadcast_plan: dims then in_strides (expand), or
 * in_dims, out_strides, then NB bcast_dims and NB bcast_strides (sum). */
__kernel void merge_broadcast_to(__global const float *small, __global float *full, const int E,
                                 const int R, __global const int *plan)
{
    const int e = get_global_id(0);
    GUARD(e, E);
    __global const int *dims = plan, *in_strides = plan + R;
    int rest = e, at = 0;
    for (int d = R - 1; d >= 0; --d) {
        at += (rest % dims[d]) * in_strides[d];
        rest /= dims[d];
    }
    full[e] = small[at];
}

/* small[s] = the sum of full over the broadcast axes, in row-major order: one work-item per
 * element of the input, so nothing is written twice. */
__kernel void merge_sum_to(__global const float *full, __global float *small, const int S,
                           const int R, const int NB, __global const int *plan)
{
    const int s = get_global_id(0);
    GUARD(s, S);
    __global const int *in_dims = plan, *out_strides = plan + R;
    __global const int *bcast_dims = plan + 2 * R, *bcast_strides = plan + 2 * R + NB;
    int rest = s, base = 0, count = 1;
    for (int d = R - 1; d >= 0; --d) {
        base += (rest % in_dims[d]) * out_strides[d];
        rest /= in_dims[d];
    }
    for (int d = 0; d < NB; ++d)
        count *= bcast_dims[d];
    float acc = 0.0f;
    for (int b = 0; b < count; ++b) {
        int at = base;
        rest = b;
        for (int d = NB - 1; d >= 0; --d) {
            at += (rest % bcast_dims[d]) * bcast_strides[d];
            rest /= bcast_dims[d];
        }
        acc += full[at];
    }
    small[s] = acc;
}

/* One input's piece of every row: y row o holds `width` elements of x at `offset` (forward);
 * with `to_parts` the copy goes the other way (backward: the slice of dy back to dx). */
__kernel void concatenate_part(__global float *whole, __global float *part, const int rows,
                               const int width, const int row_len, const int offset,
                               const int to_parts)
{
    const int gid = get_global_id(0);
    GUARD(gid, rows * width);
    const int o = gid / width, t = gid % width;
    const size_t w = (size_t)o * row_len + offset + t;
    if (to_parts)
        part[gid] = whole[w];
    else
        whole[w] = part[gid];
}

/* Each (m, q) vector along K of x (M, K, Q) scaled by min(rsqrt(sum x^2), 1/eps): keras.ops
 * normalize. One work-item per vector. */
__kernel void l2_normalize(__global const float *x, __global float *xhat, const int M,
                           const int K, const int Q, const float eps)
{
    const int v = get_global_id(0);
    GUARD(v, M * Q);
    __global const float *xp = x + (size_t)(v / Q) * K * Q + v % Q;
    __global float *hp = xhat + (size_t)(v / Q) * K * Q + v % Q;
    float ss = 0.0f;
    for (int k = 0; k < K; ++k)
        ss += xp[(size_t)k * Q] * xp[(size_t)k * Q];
    const float inv = ss <= eps * eps ? 1.0f / eps : rsqrt(ss);
    for (int k = 0; k < K; ++k)
        hp[(size_t)k * Q] = xp[(size_t)k * Q] * inv;
}

/* dx from g = d/dxhat: inv * (g - xhat * <g, xhat>) while the norm is above eps, g * inv where
 * the cap holds inv constant. */
__kernel void l2_normalize_backward(__global const float *x, __global const float *g,
                                    __global float *dx, const int M, const int K, const int Q,
                                    const float eps)
{
    const int v = get_global_id(0);
    GUARD(v, M * Q);
    const size_t base = (size_t)(v / Q) * K * Q + v % Q;
    float ss = 0.0f;
    for (int k = 0; k < K; ++k)
        ss += x[base + (size_t)k * Q] * x[base + (size_t)k * Q];
    const int capped = ss <= eps * eps;
    const float inv = capped ? 1.0f / eps : rsqrt(ss);
    float proj = 0.0f;
    if (!capped) {
        for (int k = 0; k < K; ++k)
            proj += g[base + (size_t)k * Q] * x[base + (size_t)k * Q];
        proj *= inv * inv;
    }
    for (int k = 0; k < K; ++k)
        dx[base + (size_t)k * Q] = inv * (g[base + (size_t)k * Q] - x[base + (size_t)k * Q] * proj);
}

#define A_AT(n, i) (((size_t)(n) * P + (i) / Q) * K * Q + (i) % Q)
#define B_AT(n, j) (((size_t)(n) * R + (j) / S) * K * S + (j) % S)

/* y[n, i, j] = sum_k a[n, p, k, q] * b[n, r, k, s]: one work-item per output element. */
__kernel void dot_forward(__global const float *a, __global const float *b, __global float *y,
                          const int N, const int P, const int K, const int Q, const int R,
                          const int S)
{
    const int gid = get_global_id(0);
    const int I = P * Q, J = R * S;
    GUARD(gid, N * I * J);
    const int j = gid % J, i = (gid / J) % I, n = gid / (I * J);
    __global const float *ap = a + A_AT(n, i);
    __global const float *bp = b + B_AT(n, j);
    float acc = 0.0f;
    for (int k = 0; k < K; ++k)
        acc += ap[(size_t)k * Q] * bp[(size_t)k * S];
    y[gid] = acc;
}

/* da[n, p, k, q] = sum_j dy[n, i, j] * b[n, r, k, s]: one work-item per element of da. */
__kernel void dot_backward_x1(__global const float *dy, __global const float *b,
                              __global float *da, const int N, const int P, const int K,
                              const int Q, const int R, const int S)
{
    const int gid = get_global_id(0);
    const int I = P * Q, J = R * S;
    GUARD(gid, N * P * K * Q);
    const int q = gid % Q, k = (gid / Q) % K, p = (gid / (Q * K)) % P, n = gid / (Q * K * P);
    const int i = p * Q + q;
    __global const float *g = dy + ((size_t)n * I + i) * J;
    float acc = 0.0f;
    for (int j = 0; j < J; ++j)
        acc += g[j] * b[B_AT(n, j) + (size_t)k * S];
    da[gid] = acc;
}

/* db[n, r, k, s] = sum_i dy[n, i, j] * a[n, p, k, q]: one work-item per element of db. */
__kernel void dot_backward_x2(__global const float *dy, __global const float *a,
                              __global float *db, const int N, const int P, const int K,
                              const int Q, const int R, const int S)
{
    const int gid = get_global_id(0);
    const int I = P * Q, J = R * S;
    GUARD(gid, N * R * K * S);
    const int s = gid % S, k = (gid / S) % K, r = (gid / (S * K)) % R, n = gid / (S * K * R);
    const int j = r * S + s;
    __global const float *g = dy + (size_t)n * I * J + j;
    float acc = 0.0f;
    for (int i = 0; i < I; ++i)
        acc += g[(size_t)i * J] * a[A_AT(n, i) + (size_t)k * Q];
    db[gid] = acc;
}
