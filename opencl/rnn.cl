/* Recurrent layer kernels: SimpleRNN, LSTM and GRU (Keras 3 cells), the twin of native/rnn.pyx.
 *
 * Legend: N batch, T time steps, U units, G = k*U gate columns (k = 1 SimpleRNN, 4 LSTM with
 * gates i, f, c, o, 3 GRU with gates z, r, h). Sequences are (N, T, W) row-major: element
 * (n, t, j) sits at SEQ(n, t, W) + j. Step s reads input time tx (= s, or T-1-s with
 * go_backwards): gate buffers and their gradients sit at tx, h_seq and the LSTM cells at s.
 *
 * The host (pynn/backend/_cl_rnn.py) runs, per time step, one strided GEMM below (h_{s-1} @
 * recurrent_kernel, or dZ_s @ recurrent_kernel^T going back) and one fused step kernel, one
 * work-item per (n, j); the input projection and the weight gradients are the big GEMMs of
 * dense.cl. Each output element is written by one work-item and summed in a fixed order:
 * results are reproducible run to run.
 *
 * Upstream gradient modes (dy_mode): 0 none at this step, 1 dy is (N, T, U) and read at s,
 * 2 dy is (N, U) (the last output's gradient, passed only at the last step).
 */
#include "common.h"
#include "activation.h"

#define SEQ(n, t, w) (((size_t)(n) * T + (t)) * (size_t)(w))

/* -- strided GEMMs: C[m, n] (+)= sum_k op(A)(m, k) op(B)(k, n) ----------------------------
 * Operands are sub-matrices of larger buffers: an element offset and a leading dimension
 * (row stride) each. `accumulate` adds into C (beta = 1), else overwrites it (beta = 0). */

#define RNN_GEMM_ARGS                                                                        \
    __global const float *restrict a, const int a_off, const int lda,                        \
        __global const float *restrict b, const int b_off, const int ldb, __global float *c, \
        const int c_off, const int ldc, const int accumulate
#define RNN_STORE(m, n, v)                                                                   \
    {                                                                                        \
        __global float *dst = c + c_off + (size_t)(m) * ldc + (n);                           \
        *dst = accumulate ? *dst + (v) : (v);                                                \
    }

/* A (M x K) @ B (K x N): forward recurrent products. */
#define GEMM_NAME rnn_gemm_nn
#define GEMM_ARGS RNN_GEMM_ARGS
#define A_AT(m, k) a[a_off + (size_t)(m) * lda + (k)]
#define A_K_CONTIG 1
#define B_AT(k, n) b[b_off + (size_t)(k) * ldb + (n)]
#define B_N_CONTIG 1
#define STORE(m, n, v) RNN_STORE(m, n, v)
#include "gemm.cl"

/* A (M x K) @ B^T with B stored (N x K): dh_{s-1} = dZ_s @ recurrent_kernel^T. */
#define GEMM_NAME rnn_gemm_nt
#define GEMM_ARGS RNN_GEMM_ARGS
#define A_AT(m, k) a[a_off + (size_t)(m) * lda + (k)]
#define A_K_CONTIG 1
#define B_AT(k, n) b[b_off + (size_t)(n) * ldb + (k)]
#define B_N_CONTIG 0
#define STORE(m, n, v) RNN_STORE(m, n, v)
#include "gemm.cl"

/* A^T with A stored (K x M) @ B (K x N): d(recurrent_kernel) column blocks over N*T rows. */
#define GEMM_NAME rnn_gemm_tn
#define GEMM_ARGS RNN_GEMM_ARGS
#define A_AT(m, k) a[a_off + (size_t)(k) * lda + (m)]
#define A_K_CONTIG 0
#define B_AT(k, n) b[b_off + (size_t)(k) * ldb + (n)]
#define B_N_CONTIG 1
#define STORE(m, n, v) RNN_STORE(m, n, v)
#include "gemm.cl"

/* -- helpers -------------------------------------------------------------------------- */

float rnn_dy(__global const float *dy, const int dy_mode, const int n, const int s, const int T,
             const int U, const int j)
{
    if (dy_mode == 1)
        return dy[SEQ(n, s, U) + j];
    if (dy_mode == 2)
        return dy[(size_t)n * U + j];
    return 0.0f;
}

/* hp[n, tx(s)] = h[n, s-1] (0 at s = 0): aligns h_{s-1} with dZ for one d(R) GEMM. */
__kernel void rnn_shift_prev(__global const float *h, __global float *hp, const int N,
                             const int T, const int U, const int backwards)
{
    const int i = get_global_id(0);
    GUARD(i, N * T * U);
    const int j = i % U, tx = (i / U) % T, n = i / (U * T);
    const int s = backwards ? T - 1 - tx : tx;
    hp[i] = s > 0 ? h[SEQ(n, s - 1, U) + j] : 0.0f;
}

/* y[n, :] = h[n, T-1, :]: the output without return_sequences. */
__kernel void rnn_last_step(__global const float *h, __global float *y, const int N, const int T,
                            const int U)
{
    const int i = get_global_id(0);
    GUARD(i, N * U);
    const int n = i / U, j = i % U;
    y[i] = h[SEQ(n, T - 1, U) + j];
}

/* -- SimpleRNN ------------------------------------------------------------------------ */

/* p[tx] = x_t @ W (+ h_{s-1} @ R, accumulated by the host's GEMM). */
__kernel void simple_rnn_step_forward(__global const float *p, __global const float *bias,
                                      __global float *h, const int N, const int T, const int U,
                                      const int s, const int tx, const int act,
                                      const float alpha)
{
    const int i = get_global_id(0);
    GUARD(i, N * U);
    const int n = i / U, j = i % U;
    h[SEQ(n, s, U) + j] = act_value(p[SEQ(n, tx, U) + j] + bias[j], act, alpha);
}

__kernel void simple_rnn_step_backward(__global const float *dy, const int dy_mode,
                                       __global const float *h, __global const float *dh_next,
                                       __global float *dz, const int N, const int T,
                                       const int U, const int s, const int tx, const int act,
                                       const float alpha)
{
    const int i = get_global_id(0);
    GUARD(i, N * U);
    const int n = i / U, j = i % U;
    const float dh = dh_next[i] + rnn_dy(dy, dy_mode, n, s, T, U, j);
    dz[SEQ(n, tx, U) + j] = act_grad(dh, 0.0f, h[SEQ(n, s, U) + j], act, alpha);
}

/* -- LSTM ----------------------------------------------------------------------------- */

/* g[tx] holds x_t @ W + h_{s-1} @ R and leaves holding the activated gates i, f, c~, o. */
__kernel void lstm_step_forward(__global float *g, __global const float *bias,
                                __global float *c, __global float *h, const int N, const int T,
                                const int U, const int s, const int tx, const int act,
                                const float a1, const int ract, const float a2)
{
    const int i = get_global_id(0);
    GUARD(i, N * U);
    const int n = i / U, j = i % U;
    __global float *gr = g + SEQ(n, tx, 4 * U);
    const float gi = act_value(gr[j] + bias[j], ract, a2);
    const float gf = act_value(gr[U + j] + bias[U + j], ract, a2);
    const float gc = act_value(gr[2 * U + j] + bias[2 * U + j], act, a1);
    const float go = act_value(gr[3 * U + j] + bias[3 * U + j], ract, a2);
    const float cp = s > 0 ? c[SEQ(n, s - 1, U) + j] : 0.0f;
    const float cn = gf * cp + gi * gc;
    gr[j] = gi;
    gr[U + j] = gf;
    gr[2 * U + j] = gc;
    gr[3 * U + j] = go;
    c[SEQ(n, s, U) + j] = cn;
    h[SEQ(n, s, U) + j] = go * act_value(cn, act, a1);
}

/* dz[tx] = pre-activation gradients of the gates; dc_next becomes dc_{s-1}. */
__kernel void lstm_step_backward(__global const float *dy, const int dy_mode,
                                 __global const float *g, __global const float *c,
                                 __global const float *dh_next, __global float *dc_next,
                                 __global float *dz, const int N, const int T, const int U,
                                 const int s, const int tx, const int act, const float a1,
                                 const int ract, const float a2)
{
    const int i = get_global_id(0);
    GUARD(i, N * U);
    const int n = i / U, j = i % U;
    __global const float *gr = g + SEQ(n, tx, 4 * U);
    __global float *zr = dz + SEQ(n, tx, 4 * U);
    const float gi = gr[j], gf = gr[U + j], gc = gr[2 * U + j], go = gr[3 * U + j];
    const float cn = c[SEQ(n, s, U) + j];
    const float cp = s > 0 ? c[SEQ(n, s - 1, U) + j] : 0.0f;
    const float tc = act_value(cn, act, a1);
    const float dh = dh_next[i] + rnn_dy(dy, dy_mode, n, s, T, U, j);
    const float dc = dc_next[i] + act_grad(dh * go, cn, tc, act, a1);
    zr[j] = act_grad(dc * gc, 0.0f, gi, ract, a2);
    zr[U + j] = act_grad(dc * cp, 0.0f, gf, ract, a2);
    zr[2 * U + j] = act_grad(dc * gi, 0.0f, gc, act, a1);
    zr[3 * U + j] = act_grad(dh * tc, 0.0f, go, ract, a2);
    dc_next[i] = dc * gf;
}

/* -- GRU ------------------------------------------------------------------------------
 * bias holds the input bias at 0 and, with reset_after, the recurrent bias at rec_off.
 * srec (N, 3U) = h_{s-1} @ R (reset_after) or [h_{s-1} @ R_zr, rh @ R_h]; unread at s = 0.
 * rh[tx] = h_{s-1} @ R_h + b_rh (reset_after) or r * h_{s-1}. */

__kernel void gru_step_forward_after(__global float *g, __global const float *srec,
                                     __global const float *bias, const int rec_off,
                                     __global float *rh, __global float *h, const int N,
                                     const int T, const int U, const int s, const int tx,
                                     const int act, const float a1, const int ract,
                                     const float a2)
{
    const int i = get_global_id(0);
    GUARD(i, N * U);
    const int n = i / U, j = i % U;
    __global float *gr = g + SEQ(n, tx, 3 * U);
    __global const float *sr = srec + (size_t)n * 3 * U;
    __global const float *b_rec = bias + rec_off;
    const int has_prev = s > 0;
    const float gz = act_value(gr[j] + bias[j] + (has_prev ? sr[j] : 0.0f) + b_rec[j], ract, a2);
    const float gr_ = act_value(gr[U + j] + bias[U + j] + (has_prev ? sr[U + j] : 0.0f)
                                    + b_rec[U + j],
                                ract, a2);
    const float rec = (has_prev ? sr[2 * U + j] : 0.0f) + b_rec[2 * U + j];
    const float hh = act_value(gr[2 * U + j] + bias[2 * U + j] + gr_ * rec, act, a1);
    const float hp = has_prev ? h[SEQ(n, s - 1, U) + j] : 0.0f;
    gr[j] = gz;
    gr[U + j] = gr_;
    gr[2 * U + j] = hh;
    rh[SEQ(n, tx, U) + j] = rec;
    h[SEQ(n, s, U) + j] = gz * hp + (1.0f - gz) * hh;
}

/* reset_after = false, first pass: z, r into g and rh = r * h_{s-1}. */
__kernel void gru_step_forward_gates(__global float *g, __global const float *srec,
                                     __global const float *bias, __global float *rh,
                                     __global const float *h, const int N, const int T,
                                     const int U, const int s, const int tx, const int ract,
                                     const float a2)
{
    const int i = get_global_id(0);
    GUARD(i, N * U);
    const int n = i / U, j = i % U;
    __global float *gr = g + SEQ(n, tx, 3 * U);
    __global const float *sr = srec + (size_t)n * 3 * U;
    const int has_prev = s > 0;
    const float gz = act_value(gr[j] + bias[j] + (has_prev ? sr[j] : 0.0f), ract, a2);
    const float gr_ = act_value(gr[U + j] + bias[U + j] + (has_prev ? sr[U + j] : 0.0f), ract,
                                a2);
    gr[j] = gz;
    gr[U + j] = gr_;
    rh[SEQ(n, tx, U) + j] = gr_ * (has_prev ? h[SEQ(n, s - 1, U) + j] : 0.0f);
}

/* reset_after = false, second pass: srec[:, 2U:] = rh @ R_h. */
__kernel void gru_step_forward_out(__global float *g, __global const float *srec,
                                   __global const float *bias, __global float *h, const int N,
                                   const int T, const int U, const int s, const int tx,
                                   const int act, const float a1)
{
    const int i = get_global_id(0);
    GUARD(i, N * U);
    const int n = i / U, j = i % U;
    __global float *gr = g + SEQ(n, tx, 3 * U);
    const int has_prev = s > 0;
    const float gz = gr[j];
    const float hh = act_value(gr[2 * U + j] + bias[2 * U + j]
                                   + (has_prev ? srec[(size_t)n * 3 * U + 2 * U + j] : 0.0f),
                               act, a1);
    const float hp = has_prev ? h[SEQ(n, s - 1, U) + j] : 0.0f;
    gr[2 * U + j] = hh;
    h[SEQ(n, s, U) + j] = gz * hp + (1.0f - gz) * hh;
}

/* dzi / dzr: input- and recurrent-side pre-activation gradients (the h gate's differ by the
 * factor r); dh_next becomes the direct term dh * z, the host's GEMM adds dzr @ R^T. */
__kernel void gru_step_backward_after(__global const float *dy, const int dy_mode,
                                      __global const float *g, __global const float *rh,
                                      __global const float *h, __global float *dh_next,
                                      __global float *dzi, __global float *dzr, const int N,
                                      const int T, const int U, const int s, const int tx,
                                      const int act, const float a1, const int ract,
                                      const float a2)
{
    const int i = get_global_id(0);
    GUARD(i, N * U);
    const int n = i / U, j = i % U;
    __global const float *gr = g + SEQ(n, tx, 3 * U);
    const size_t zo = SEQ(n, tx, 3 * U);
    const float gz = gr[j], gr_ = gr[U + j], hh = gr[2 * U + j];
    const float hp = s > 0 ? h[SEQ(n, s - 1, U) + j] : 0.0f;
    const float dh = dh_next[i] + rnn_dy(dy, dy_mode, n, s, T, U, j);
    const float dah = act_grad(dh * (1.0f - gz), 0.0f, hh, act, a1);
    const float daz = act_grad(dh * (hp - hh), 0.0f, gz, ract, a2);
    const float dar = act_grad(dah * rh[SEQ(n, tx, U) + j], 0.0f, gr_, ract, a2);
    dzi[zo + j] = daz;
    dzi[zo + U + j] = dar;
    dzi[zo + 2 * U + j] = dah;
    dzr[zo + j] = daz;
    dzr[zo + U + j] = dar;
    dzr[zo + 2 * U + j] = dah * gr_;
    dh_next[i] = dh * gz;
}

/* reset_after = false, first pass: z and h gate gradients; dh_next = dh * z. */
__kernel void gru_step_backward_out(__global const float *dy, const int dy_mode,
                                    __global const float *g, __global const float *h,
                                    __global float *dh_next, __global float *dz, const int N,
                                    const int T, const int U, const int s, const int tx,
                                    const int act, const float a1, const int ract,
                                    const float a2)
{
    const int i = get_global_id(0);
    GUARD(i, N * U);
    const int n = i / U, j = i % U;
    const size_t zo = SEQ(n, tx, 3 * U);
    const float gz = g[zo + j], hh = g[zo + 2 * U + j];
    const float hp = s > 0 ? h[SEQ(n, s - 1, U) + j] : 0.0f;
    const float dh = dh_next[i] + rnn_dy(dy, dy_mode, n, s, T, U, j);
    dz[zo + j] = act_grad(dh * (hp - hh), 0.0f, gz, ract, a2);
    dz[zo + 2 * U + j] = act_grad(dh * (1.0f - gz), 0.0f, hh, act, a1);
    dh_next[i] = dh * gz;
}

/* reset_after = false, second pass: drh = d(r * h_{s-1}) = dZ_h @ R_h^T (unread at s = 0)
 * gives the r gate gradient and the r-scaled part of dh_{s-1}. */
__kernel void gru_step_backward_gates(__global const float *g, __global const float *drh,
                                      __global const float *h, __global float *dh_next,
                                      __global float *dz, const int N, const int T, const int U,
                                      const int s, const int tx, const int ract, const float a2)
{
    const int i = get_global_id(0);
    GUARD(i, N * U);
    const int n = i / U, j = i % U;
    const size_t zo = SEQ(n, tx, 3 * U);
    const float gr_ = g[zo + U + j];
    const float d = s > 0 ? drh[i] : 0.0f;
    const float hp = s > 0 ? h[SEQ(n, s - 1, U) + j] : 0.0f;
    dz[zo + U + j] = act_grad(d * hp, 0.0f, gr_, ract, a2);
    dh_next[i] += d * gr_;
}
