/* Attention: the scaled dot-product core of Keras 3's MultiHeadAttention, forward and
 * backward side by side. The twin of native/attention.pyx.
 *
 * Legend: N batch, T query steps, S key/value steps, H heads, K key width, V value width.
 * q (N, T, H, K), k (N, S, H, K), v (N, S, H, V) as the projections lay them out (nothing
 * transposed); probs, ds, drop and dprobs (N, H, T, S); mask (N, T, S) uchar, nonzero =
 * attend; out, dout (N, T, H, V). mask, drop and dprobs are optional: has_mask / has_drop /
 * has_dprobs say whether the buffer passed is real (the host passes another buffer in its
 * place otherwise, never read).
 *
 * Forward: attention_scores (one work-item per probs element: qs . k, with
 * qs = q * scale rounded to float first, as Keras multiplies the query), then
 * attention_softmax (one work-item per (n, h, t) row, in place: masked entries give exact
 * zeros, a row with nothing attended is all zeros, a NaN score makes its row NaN), then
 * attention_context (one work-item per out element: sum over s of probs * drop * v).
 * Backward: attention_dv (one per dv element: sum over t of probs * drop * dout),
 * attention_dprobs (one per (n, h, t, s): dp = (dout . v) * drop + dprobs, dprobs a
 * gradient reaching the returned probabilities), attention_dscores (one
 * per row, in place: ds = probs * (dp - sum_s probs * dp)), attention_dq (one per dq
 * element: scale * sum_s ds * k, the products first) and attention_dk (one per dk element:
 * sum_t ds * qs). Every output element is written by one work-item, in a fixed order: no
 * atomics, the same inputs give the same bits. Accumulation is in float (fp64 is optional
 * in OpenCL; the CPU sums the softmax in double). Sizes are kernel arguments; every kernel
 * guards its ids.
 */
#include "common.h"

/* The four indices (i0, i1, i2, i3) of a row-major id over dims (., d1, d2, d3): every
 * kernel here has one work-item per element of a 4-D result. */
inline void attention_index4(int gid, int d1, int d2, int d3, int *i0, int *i1, int *i2,
                             int *i3)
{
    *i3 = gid % d3;
    gid /= d3;
    *i2 = gid % d2;
    gid /= d2;
    *i1 = gid % d1;
    *i0 = gid / d1;
}

/* probs[n, h, t, s] = sum_k (q[n, t, h, k] * scale) k[n, s, h, k] */
__kernel void attention_scores(__global const float *q, __global const float *k,
                               __global float *probs, const int N, const int T, const int S,
                               const int H, const int K, const float scale)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * H * T * S);
    int n, h, t, s;
    attention_index4(gid, H, T, S, &n, &h, &t, &s);
    __global const float *qr = q + (((size_t)n * T + t) * H + h) * K;
    __global const float *kr = k + (((size_t)n * S + s) * H + h) * K;
    float acc = 0.0f;
    for (int c = 0; c < K; ++c) {
        const float qs = qr[c] * scale;
        acc += qs * kr[c];
    }
    probs[gid] = acc;
}

/* The masked softmax of row (n, h, t) of probs, in place. Masked scores count as -inf
 * (exp gives exact zeros); the maximum skips NaN unless the first score is one, as the CPU's
 * does (a NaN score makes the row's sum, so the whole row, NaN either way). */
__kernel void attention_softmax(__global float *probs, __global const uchar *mask,
                                const int has_mask, const int N, const int T, const int S,
                                const int H)
{
    const int row = get_global_id(0);
    GUARD(row, N * H * T);
    const int t = row % T;
    const int n = row / (H * T);
    __global float *p = probs + (size_t)row * S;
    __global const uchar *m = mask + ((size_t)n * T + t) * S;
    int kept = !has_mask;
    float top = -INFINITY;
    for (int s = 0; s < S; ++s) {
        if (has_mask && !m[s]) {
            p[s] = -INFINITY;
            continue;
        }
        const float z = p[s];
        if (!kept)
            top = z;
        else
            top = z > top ? z : top;
        kept = 1;
    }
    if (!kept) { /* nothing to attend to: Keras's Softmax(mask) gives zeros */
        for (int s = 0; s < S; ++s)
            p[s] = 0.0f;
        return;
    }
    float total = 0.0f;
    for (int s = 0; s < S; ++s) {
        const float e = exp(p[s] - top);
        p[s] = e;
        total += e;
    }
    for (int s = 0; s < S; ++s)
        p[s] = p[s] / total;
}

/* out[n, t, h, j] = sum_s probs[n, h, t, s] drop[n, h, t, s] v[n, s, h, j] */
__kernel void attention_context(__global const float *probs, __global const float *drop,
                                const int has_drop, __global const float *v,
                                __global float *out, const int N, const int T, const int S,
                                const int H, const int V)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * T * H * V);
    int n, t, h, j;
    attention_index4(gid, T, H, V, &n, &t, &h, &j);
    const size_t row = (((size_t)n * H + h) * T + t) * S;
    __global const float *vr = v + ((size_t)n * S * H + h) * V + j;
    const size_t vstride = (size_t)H * V;
    float acc = 0.0f;
    for (int s = 0; s < S; ++s) {
        const float p = has_drop ? probs[row + s] * drop[row + s] : probs[row + s];
        acc += p * vr[s * vstride];
    }
    out[gid] = acc;
}

/* dv[n, s, h, j] = sum_t probs[n, h, t, s] drop[n, h, t, s] dout[n, t, h, j] */
__kernel void attention_dv(__global const float *probs, __global const float *drop,
                           const int has_drop, __global const float *dout,
                           __global float *dv, const int N, const int T, const int S,
                           const int H, const int V)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * S * H * V);
    int n, s, h, j;
    attention_index4(gid, S, H, V, &n, &s, &h, &j);
    const size_t col = ((size_t)n * H + h) * T * S + s;
    __global const float *dr = dout + ((size_t)n * T * H + h) * V + j;
    const size_t dstride = (size_t)H * V;
    float acc = 0.0f;
    for (int t = 0; t < T; ++t) {
        const size_t i = col + (size_t)t * S;
        const float p = has_drop ? probs[i] * drop[i] : probs[i];
        acc += p * dr[t * dstride];
    }
    dv[gid] = acc;
}

/* dp[n, h, t, s] = (sum_j dout[n, t, h, j] v[n, s, h, j]) drop[n, h, t, s]
 *                  + dprobs[n, h, t, s] (a gradient reaching probs itself) */
__kernel void attention_dprobs(__global const float *dout, __global const float *v,
                               __global const float *drop, const int has_drop,
                               __global const float *dprobs, const int has_dprobs,
                               __global float *dp, const int N, const int T, const int S,
                               const int H, const int V)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * H * T * S);
    int n, h, t, s;
    attention_index4(gid, H, T, S, &n, &h, &t, &s);
    __global const float *dr = dout + (((size_t)n * T + t) * H + h) * V;
    __global const float *vr = v + (((size_t)n * S + s) * H + h) * V;
    float acc = 0.0f;
    for (int j = 0; j < V; ++j)
        acc += dr[j] * vr[j];
    if (has_drop)
        acc = acc * drop[gid];
    if (has_dprobs)
        acc = acc + dprobs[gid];
    dp[gid] = acc;
}

/* Row (n, h, t) of ds, holding dp, becomes probs * (dp - sum_s probs * dp) in place: the
 * softmax's Jacobian product, zero where probs is. */
__kernel void attention_dscores(__global const float *probs, __global float *ds,
                                const int rows, const int S)
{
    const int row = get_global_id(0);
    GUARD(row, rows);
    __global const float *p = probs + (size_t)row * S;
    __global float *d = ds + (size_t)row * S;
    float dot = 0.0f;
    for (int s = 0; s < S; ++s)
        dot += p[s] * d[s];
    for (int s = 0; s < S; ++s)
        d[s] = p[s] * (d[s] - dot);
}

/* dq[n, t, h, c] = scale * sum_s ds[n, h, t, s] k[n, s, h, c]: the products first, then the
 * scale, as the chain rule through q * scale rounds them. */
__kernel void attention_dq(__global const float *ds, __global const float *k,
                           __global float *dq, const int N, const int T, const int S,
                           const int H, const int K, const float scale)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * T * H * K);
    int n, t, h, c;
    attention_index4(gid, T, H, K, &n, &t, &h, &c);
    __global const float *dr = ds + (((size_t)n * H + h) * T + t) * S;
    __global const float *kr = k + ((size_t)n * S * H + h) * K + c;
    const size_t kstride = (size_t)H * K;
    float acc = 0.0f;
    for (int s = 0; s < S; ++s)
        acc += dr[s] * kr[s * kstride];
    dq[gid] = acc * scale;
}

/* dk[n, s, h, c] = sum_t ds[n, h, t, s] (q[n, t, h, c] * scale) */
__kernel void attention_dk(__global const float *ds, __global const float *q,
                           __global float *dk, const int N, const int T, const int S,
                           const int H, const int K, const float scale)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * S * H * K);
    int n, s, h, c;
    attention_index4(gid, S, H, K, &n, &s, &h, &c);
    const size_t col = ((size_t)n * H + h) * T * S + s;
    __global const float *qr = q + ((size_t)n * T * H + h) * K + c;
    const size_t qstride = (size_t)H * K;
    float acc = 0.0f;
    for (int t = 0; t < T; ++t) {
        const float qs = qr[t * qstride] * scale;
        acc += ds[col + (size_t)t * S] * qs;
    }
    dk[gid] = acc;
}
