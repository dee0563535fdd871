/* General recurrence, forward and backward side by side: the twin of native/rnn_mask.pyx
 * (mask, initial state, recurrent dropout, final state; SimpleRNN, LSTM, GRU cells).
 *
 * Legend: N batch, T steps, U units, G = k*U gate columns; CELL 0 SimpleRNN, 1 LSTM,
 * 2 GRU reset_after, 3 GRU reset_before.
 * One work-group per batch row steps through the whole sequence: a row's steps depend on
 * each other and rows never do. Within a step the work-items split the gate columns (the
 * recurrent product) and then the units (the cell), with a barrier between phases; states
 * live in global memory, which the barriers' global fence orders within the group.
 * Every sum runs in a fixed order on one work-item: the results are deterministic.
 */
#include "common.h"
#include "activation.h"

#ifndef REC_WG
#define REC_WG 64 /* work-items per row: a step's columns are strided over them */
#endif

#define SYNC barrier(CLK_GLOBAL_MEM_FENCE | CLK_LOCAL_MEM_FENCE)

__kernel __attribute__((reqd_work_group_size(REC_WG, 1, 1)))
void recurrence_forward(__global const float *xw, __global const float *rk,
                        __global const float *rb, const int has_rb,
                        __global float *hs_all, __global float *cs_all,
                        __global float *gt_all, __global float *aux_all,
                        __global const float *mask_all, __global const float *rd_all,
                        __global float *y_all, __global const float *h0,
                        __global const float *c0, __global float *h_last,
                        __global float *c_last, const int T, const int U, const int cell,
                        const int act, const float alpha, const int ract, const float ralpha,
                        const int ret_seq, const int back, const int zero_out)
{
    const int n = get_group_id(0), lid = get_local_id(0);
    const int G = (cell == 0 ? 1 : cell == 1 ? 4 : 3) * U;
    __global const float *x = xw + (size_t)n * T * G;
    __global const float *mask = mask_all + (size_t)n * T;
    __global const float *rd = rd_all + (size_t)n * G;
    __global float *hs = hs_all + (size_t)n * (T + 1) * U;
    __global float *cs = cs_all + (size_t)n * (T + 1) * U;
    __global float *gt = gt_all + (size_t)n * T * G;
    __global float *aux = aux_all + (size_t)n * T * U;
    __global float *y = y_all + (size_t)n * (ret_seq ? T * U : U);
    int seen = 0;
    for (int j = lid; j < U; j += REC_WG) {
        hs[j] = h0[(size_t)n * U + j];
        if (cell == 1)
            cs[j] = c0[(size_t)n * U + j];
    }
    SYNC;
    for (int s = 0; s < T; ++s) {
        const int tx = back ? T - 1 - s : s;
        const float m = mask[tx];
        __global float *hp = hs + s * U, *hn = hs + (s + 1) * U;
        __global float *z = gt + s * G, *rh = aux + s * U;
        for (int j = lid; j < G; j += REC_WG) {
            const int gate = j / U;
            float acc = x[tx * G + j];
            if (has_rb && (cell != 2 || gate < 2))
                acc += rb[j];
            if (cell == 3 && gate == 2) { /* waits for r */
                z[j] = acc;
                continue;
            }
            float rec = (cell == 2 && gate == 2 && has_rb) ? rb[j] : 0.0f;
            for (int k = 0; k < U; ++k)
                rec += hp[k] * rd[gate * U + k] * rk[k * G + j];
            if (cell == 2 && gate == 2) {
                z[j] = acc;
                rh[j - 2 * U] = rec;
            } else {
                z[j] = acc + rec;
            }
        }
        SYNC;
        for (int j = lid; j < U; j += REC_WG) {
            if (cell == 0) {
                z[j] = act_value(z[j], act, alpha);
                hn[j] = z[j];
            } else if (cell == 1) {
                const float i = act_value(z[j], ract, ralpha);
                const float f = act_value(z[U + j], ract, ralpha);
                const float cc = act_value(z[2 * U + j], act, alpha);
                const float o = act_value(z[3 * U + j], ract, ralpha);
                z[j] = i; z[U + j] = f; z[2 * U + j] = cc; z[3 * U + j] = o;
                cs[(s + 1) * U + j] = f * cs[s * U + j] + i * cc;
                hn[j] = o * act_value(cs[(s + 1) * U + j], act, alpha);
            } else {
                z[j] = act_value(z[j], ract, ralpha);
                z[U + j] = act_value(z[U + j], ract, ralpha);
                if (cell == 2) {
                    const float hh = act_value(z[2 * U + j] + z[U + j] * rh[j], act, alpha);
                    z[2 * U + j] = hh;
                    hn[j] = z[j] * hp[j] + (1.0f - z[j]) * hh;
                }
            }
        }
        SYNC;
        if (cell == 3) { /* hh = act(x_h + (r * h_{t-1} * rdrop_h) @ R_h) */
            for (int j = lid; j < U; j += REC_WG) {
                float acc = z[2 * U + j];
                for (int k = 0; k < U; ++k)
                    acc += z[U + k] * hp[k] * rd[2 * U + k] * rk[k * G + 2 * U + j];
                const float hh = act_value(acc, act, alpha);
                z[2 * U + j] = hh;
                hn[j] = z[j] * hp[j] + (1.0f - z[j]) * hh;
            }
            SYNC;
        }
        if (m != 0.0f)
            seen = 1;
        const int live = zero_out ? m != 0.0f : seen;
        for (int j = lid; j < U; j += REC_WG) {
            if (m == 0.0f) { /* Keras: a masked step keeps every state */
                hn[j] = hp[j];
                if (cell == 1)
                    cs[(s + 1) * U + j] = cs[s * U + j];
            }
            if (ret_seq)
                y[s * U + j] = live ? hn[j] : 0.0f;
            else if (s == T - 1)
                y[j] = live ? hn[j] : 0.0f;
        }
        SYNC;
    }
    for (int j = lid; j < U; j += REC_WG) {
        h_last[(size_t)n * U + j] = hs[T * U + j];
        if (cell == 1)
            c_last[(size_t)n * U + j] = cs[T * U + j];
    }
}

__kernel __attribute__((reqd_work_group_size(REC_WG, 1, 1)))
void recurrence_backward(__global const float *dy_all, __global float *dh_all,
                         __global float *dc_all, __global const float *rk,
                         __global const float *hs_all, __global const float *cs_all,
                         __global const float *gt_all, __global const float *aux_all,
                         __global const float *mask_all, __global const float *rd_all,
                         __global float *dxw_all, __global float *dzr_all, const int T,
                         const int U, const int cell, const int act, const float alpha,
                         const int ract, const float ralpha, const int ret_seq,
                         const int back, const int zero_out)
{
    const int n = get_group_id(0), lid = get_local_id(0);
    const int G = (cell == 0 ? 1 : cell == 1 ? 4 : 3) * U, K = G / U;
    __global const float *mask = mask_all + (size_t)n * T;
    __global const float *rd = rd_all + (size_t)n * G;
    __global const float *hs = hs_all + (size_t)n * (T + 1) * U;
    __global const float *cs = cs_all + (size_t)n * (T + 1) * U;
    __global const float *gt = gt_all + (size_t)n * T * G;
    __global const float *aux = aux_all + (size_t)n * T * U;
    __global const float *dy = dy_all + (size_t)n * (ret_seq ? T * U : U);
    __global float *dh = dh_all + (size_t)n * U, *dc = dc_all + (size_t)n * U;
    int first = T;
    for (int s = 0; s < T; ++s)
        if (mask[back ? T - 1 - s : s] != 0.0f) {
            first = s;
            break;
        }
    for (int s = T - 1; s >= 0; --s) {
        const int tx = back ? T - 1 - s : s;
        const float m = mask[tx];
        const int live = zero_out ? m != 0.0f : s >= first;
        __global float *dzr = dzr_all + ((size_t)n * T + s) * G;
        __global float *dx = dxw_all + ((size_t)n * T + tx) * G;
        __global const float *z = gt + s * G, *hp = hs + s * U;
        for (int j = lid; j < U; j += REC_WG) {
            if (live && (ret_seq || s == T - 1))
                dh[j] += ret_seq ? dy[s * U + j] : dy[j];
            if (m == 0.0f)
                continue;
            if (cell == 0) {
                dzr[j] = act_grad(dh[j], z[j], z[j], act, alpha);
                dh[j] = 0.0f;
            } else if (cell == 1) {
                const float c = cs[(s + 1) * U + j];
                const float yc = act_value(c, act, alpha);
                const float dcn = dc[j] + act_grad(dh[j] * z[3 * U + j], c, yc, act, alpha);
                dzr[3 * U + j] = act_grad(dh[j] * yc, 0.0f, z[3 * U + j], ract, ralpha);
                dzr[j] = act_grad(dcn * z[2 * U + j], 0.0f, z[j], ract, ralpha);
                dzr[U + j] = act_grad(dcn * cs[s * U + j], 0.0f, z[U + j], ract, ralpha);
                dzr[2 * U + j] = act_grad(dcn * z[j], 0.0f, z[2 * U + j], act, alpha);
                dc[j] = dcn * z[U + j];
                dh[j] = 0.0f;
            } else {
                const float zz = z[j], hh = z[2 * U + j];
                const float dhh = act_grad(dh[j] * (1.0f - zz), 0.0f, hh, act, alpha);
                dzr[j] = act_grad(dh[j] * (hp[j] - hh), 0.0f, zz, ract, ralpha);
                dx[2 * U + j] = dhh;
                if (cell == 2) {
                    dzr[U + j] = act_grad(dhh * aux[s * U + j], 0.0f, z[U + j], ract, ralpha);
                    dzr[2 * U + j] = dhh * z[U + j];
                } else {
                    dzr[2 * U + j] = dhh;
                }
                dh[j] *= zz;
            }
        }
        SYNC;
        if (cell == 3 && m != 0.0f) { /* r's gradient needs dhh @ R_h^T */
            for (int k = lid; k < U; k += REC_WG) {
                float q = 0.0f;
                for (int j = 0; j < U; ++j)
                    q += dzr[2 * U + j] * rk[k * G + 2 * U + j];
                dzr[U + k] = act_grad(q * hp[k] * rd[2 * U + k], 0.0f, z[U + k], ract, ralpha);
                dh[k] += q * z[U + k] * rd[2 * U + k];
            }
        }
        SYNC;
        if (m == 0.0f) { /* the states passed through: so does their gradient */
            for (int j = lid; j < G; j += REC_WG) {
                dzr[j] = 0.0f;
                dx[j] = 0.0f;
            }
        } else {
            for (int k = lid; k < U; k += REC_WG) {
                float add = 0.0f;
                for (int gate = 0; gate < K; ++gate) {
                    if (cell == 3 && gate == 2)
                        continue;
                    float a = 0.0f;
                    for (int j = 0; j < U; ++j)
                        a += dzr[gate * U + j] * rk[k * G + gate * U + j];
                    add += a * rd[gate * U + k];
                }
                dh[k] += add;
            }
            for (int j = lid; j < G; j += REC_WG)
                if (!(cell >= 2 && j >= 2 * U))
                    dx[j] = dzr[j];
        }
        SYNC;
    }
}

/* Row k < U of the output: drecurrent_kernel[k, j] = sum over rows and steps of the gate
 * block's operand h_{t-1}[k] * rdrop[k] (* r[k] for GRU reset_before's h gate) times dzr[j];
 * row U: drecurrent_bias[j] = sum of dzr[j]. One work-item per element, in a fixed order. */
__kernel void recurrence_weight_grad(__global const float *hs, __global const float *gt,
                                     __global const float *rd, __global const float *dzr,
                                     __global float *drk, __global float *drb, const int N,
                                     const int T, const int U, const int cell)
{
    const int G = (cell == 0 ? 1 : cell == 1 ? 4 : 3) * U;
    const int gid = get_global_id(0);
    GUARD(gid, (U + 1) * G);
    const int k = gid / G, j = gid - k * G, gate = j / U;
    float acc = 0.0f;
    for (int n = 0; n < N; ++n) {
        const float drop = k < U ? rd[(size_t)n * G + gate * U + k] : 1.0f;
        for (int s = 0; s < T; ++s) {
            const size_t row = (size_t)n * T + s;
            float a = 1.0f;
            if (k < U) {
                a = hs[((size_t)n * (T + 1) + s) * U + k] * drop;
                if (cell == 3 && gate == 2)
                    a *= gt[row * G + U + k];
            }
            acc += a * dzr[row * G + j];
        }
    }
    if (k < U)
        drk[gid] = acc;
    else
        drb[j] = acc;
}

/* x (N, T, C) times scale (N, C) at every step: RNN input dropout fixed over time. */
__kernel void sequence_scale(__global const float *x, __global const float *scale,
                             __global float *y, const int N, const int T, const int C)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * T * C);
    const int c = gid % C, n = gid / (T * C);
    y[gid] = x[gid] * scale[n * C + c];
}

/* y[n, s] = x[n, T-1-s]: Bidirectional's backward direction back in input order. */
__kernel void sequence_reverse(__global const float *x, __global float *y, const int N,
                               const int T, const int F)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * T * F);
    const int f = gid % F, s = (gid / F) % T, n = gid / (T * F);
    y[gid] = x[((size_t)n * T + (T - 1 - s)) * F + f];
}
