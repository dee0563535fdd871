/* ConvLSTM recurrence (Keras 3's ConvLSTM1D/2D/3D), forward and backward through time side
 * by side: convlstm_step_forward, convlstm_step_gates_backward, convlstm_step_dh,
 * convlstm_recurrent_kernel_grad. The twin of native/convlstm.pyx; the host, which enqueues
 * the steps in order, is pynn/backend/opencl/convlstm.py.
 *
 * Legend: N batch, T time steps, D/H/W spatial extents, S = D*H*W sites, R = N*S state rows,
 * F filters, G = 4F gates (i, f, c, o: Keras's order), KD/KH/KW the recurrent kernel extents
 * (Keras's 'same' stride-1 conv: leading pads (k - 1) / 2). xw (N, T, S, G); recurrent kernel
 * (KD, KH, KW, F, G); the gates gs (T, R, G) and states hs, cs (T + 1, R, F) in processing
 * order, step 0 the initial state; s the processing step, tx its input time index. mask and
 * the output weights (N, T) at the input's time index, or NULL: a masked sample keeps its
 * states, and its output is weights * h (Keras's previous output or zeros). rdrop
 * (4, R, F) or NULL: Keras's recurrent dropout, gate block k reads h * rdrop[k].
 * One work-item per (row, filter) for the step kernels: it owns the filter's four gates, so
 * the gate elementwise is fused into the conv without another pass. dh is a gather (no
 * atomics, a fixed order); the recurrent kernel's gradient one work-item per entry, summed
 * over steps and rows in order.
 */
#include "common.h"

/* Activation codes: pynn/backend/operands/convlstm.py's CONVLSTM_ACTIVATIONS. */
#define CL_LINEAR 0
#define CL_TANH 1
#define CL_SIGMOID 2
#define CL_HARD_SIGMOID 3
#define CL_RELU 4

#define CL_GEOM                                                                              \
    const int N, const int D, const int H, const int W, const int F, const int KD,           \
        const int KH, const int KW

inline float cl_act(const int code, const float v)
{
    if (code == CL_TANH)
        return tanh(v);
    if (code == CL_SIGMOID)
        return 1.0f / (1.0f + exp(-v));
    if (code == CL_HARD_SIGMOID) /* Keras 3: relu6(v + 3) / 6 */
        return clamp(v / 6.0f + 0.5f, 0.0f, 1.0f);
    if (code == CL_RELU)
        return fmax(v, 0.0f);
    return v;
}

/* The derivative from the activation's output y. */
inline float cl_dact(const int code, const float y)
{
    if (code == CL_TANH)
        return 1.0f - y * y;
    if (code == CL_SIGMOID)
        return y * (1.0f - y);
    if (code == CL_HARD_SIGMOID)
        return (y > 0.0f && y < 1.0f) ? 1.0f / 6.0f : 0.0f;
    if (code == CL_RELU)
        return y > 0.0f ? 1.0f : 0.0f;
    return 1.0f;
}

/* Per sample: the output weights of the steps (native/convlstm.pyx's _output_weights): 1 for
 * an unmasked step; a masked one 0 with zero_output, else whether any step so far (in
 * processing order) was unmasked. */
__kernel void convlstm_output_weights(__global const float *restrict mask,
                                      __global float *restrict weights, const int N,
                                      const int T, const int go_backwards,
                                      const int zero_output)
{
    const int n = get_global_id(0);
    GUARD(n, N);
    float seen = 0.0f;
    for (int s = 0; s < T; ++s) {
        const int tx = go_backwards ? T - 1 - s : s;
        const float m = mask[(size_t)n * T + tx] != 0.0f ? 1.0f : 0.0f;
        seen = fmax(seen, m);
        weights[(size_t)n * T + tx] = zero_output ? m : seen;
    }
}

/* One step: z = xw[:, tx] + conv_same(h_{s}, rk), gates, c_{s+1}, h_{s+1}; with write_y, y
 * receives the output: (N, T, S, F) at [n, s] with sequences, else (R, F). */
__kernel void convlstm_step_forward(__global const float *restrict xw,
                                    __global const float *restrict rk,
                                    __global float *restrict gs, __global float *restrict hs,
                                    __global float *restrict cs,
                                    __global const float *restrict mask,
                                    __global const float *restrict rdrop,
                                    __global const float *restrict weights,
                                    __global float *restrict y, const int write_y,
                                    const int sequences, const int T, const int s, const int tx,
                                    const int act, const int ract, CL_GEOM)
{
    const int gid = get_global_id(0);
    const int S = D * H * W, R = N * S, G = 4 * F;
    GUARD(gid, R * F);
    const int j = gid % F;
    const int r = gid / F;
    const int n = r / S, site = r % S;
    const int w0 = site % W, h0 = (site / W) % H, d0 = site / (W * H);
    const int pf = (KD - 1) / 2, pt = (KH - 1) / 2, pl = (KW - 1) / 2;
    __global const float *xrow = xw + (((size_t)n * T + tx) * S + site) * G;
    float zi = xrow[j], zf = xrow[F + j], zc = xrow[2 * F + j], zo = xrow[3 * F + j];
    __global const float *hp = hs + (size_t)s * R * F;
    for (int kd = 0; kd < KD; ++kd) {
        const int d = d0 + kd - pf;
        if (d < 0 || d >= D)
            continue;
        for (int kh = 0; kh < KH; ++kh) {
            const int hh = h0 + kh - pt;
            if (hh < 0 || hh >= H)
                continue;
            for (int kw = 0; kw < KW; ++kw) {
                const int w = w0 + kw - pl;
                if (w < 0 || w >= W)
                    continue;
                const size_t other = (((size_t)n * D + d) * H + hh) * W + w;
                __global const float *hrow = hp + other * F;
                __global const float *kp = rk + (size_t)((kd * KH + kh) * KW + kw) * F * G + j;
                for (int q = 0; q < F; ++q) {
                    const float v = hrow[q];
                    __global const float *kq = kp + (size_t)q * G;
                    if (rdrop) {
                        __global const float *m = rdrop + other * F + q;
                        const size_t block = (size_t)R * F;
                        zi += v * m[0] * kq[0];
                        zf += v * m[block] * kq[F];
                        zc += v * m[2 * block] * kq[2 * F];
                        zo += v * m[3 * block] * kq[3 * F];
                    } else {
                        zi += v * kq[0];
                        zf += v * kq[F];
                        zc += v * kq[2 * F];
                        zo += v * kq[3 * F];
                    }
                }
            }
        }
    }
    const float i = cl_act(ract, zi), f = cl_act(ract, zf);
    const float cc = cl_act(act, zc), o = cl_act(ract, zo);
    const size_t row = (size_t)r * F + j;
    const bool kept = mask && mask[(size_t)n * T + tx] == 0.0f;
    const float c = kept ? cs[(size_t)s * R * F + row] : f * cs[(size_t)s * R * F + row] + i * cc;
    const float h = kept ? hs[(size_t)s * R * F + row] : o * cl_act(act, c);
    __global float *grow = gs + ((size_t)s * R + r) * G;
    grow[j] = i;
    grow[F + j] = f;
    grow[2 * F + j] = cc;
    grow[3 * F + j] = o;
    cs[(size_t)(s + 1) * R * F + row] = c;
    hs[(size_t)(s + 1) * R * F + row] = h;
    if (write_y) {
        const float out = weights ? h * weights[(size_t)n * T + tx] : h;
        y[sequences ? (((size_t)n * T + s) * S + site) * F + j : row] = out;
    }
}

/* The gate gradients of step s into dxw (N, T, S, G) at [n, tx]; dh IN the carried state
 * gradient (plus dy here: dy_mode 1 reads dy (N, T, S, F) at [n, s], 2 reads dy (R, F) as
 * the last step's, 0 none), dc IN/OUT the cell gradient (becomes dc_{s-1}). */
__kernel void convlstm_step_gates_backward(__global const float *restrict gs,
                                           __global const float *restrict cs,
                                           __global const float *restrict dy,
                                           __global const float *restrict mask,
                                           __global const float *restrict weights,
                                           __global float *restrict dh,
                                           __global float *restrict dc,
                                           __global float *restrict dxw, const int T,
                                           const int s, const int tx, const int dy_mode,
                                           const int act, const int ract, CL_GEOM)
{
    const int gid = get_global_id(0);
    const int S = D * H * W, R = N * S, G = 4 * F;
    GUARD(gid, R * F);
    const int j = gid % F;
    const int r = gid / F;
    const int n = r / S, site = r % S;
    const size_t row = (size_t)r * F + j;
    const float w = weights ? weights[(size_t)n * T + tx] : 1.0f;
    float dhv = dh[row];
    if (dy_mode == 1)
        dhv += w * dy[(((size_t)n * T + s) * S + site) * F + j];
    else if (dy_mode == 2)
        dhv += w * dy[row];
    __global float *drow = dxw + (((size_t)n * T + tx) * S + site) * G;
    if (mask && mask[(size_t)n * T + tx] == 0.0f) {
        /* the states passed this step unchanged: so do their gradients */
        drow[j] = drow[F + j] = drow[2 * F + j] = drow[3 * F + j] = 0.0f;
        dh[row] = dhv;
        return;
    }
    __global const float *grow = gs + ((size_t)s * R + r) * G;
    const float i = grow[j], f = grow[F + j], cc = grow[2 * F + j], o = grow[3 * F + j];
    const float ac = cl_act(act, cs[(size_t)(s + 1) * R * F + row]);
    const float d = dc[row] + dhv * o * cl_dact(act, ac);
    drow[j] = d * cc * cl_dact(ract, i);
    drow[F + j] = d * cs[(size_t)s * R * F + row] * cl_dact(ract, f);
    drow[2 * F + j] = d * i * cl_dact(act, cc);
    drow[3 * F + j] = dhv * ac * cl_dact(ract, o);
    dc[row] = d * f;
}

/* dh (R, F) = the gradient reaching h_{s-1} through step s's recurrent conv: a gather over
 * the sites that read it, from dxw's gate gradients at [n, tx]; plus, for a masked sample,
 * the gradient its kept state carries through the step. */
__kernel void convlstm_step_dh(__global const float *restrict dxw,
                               __global const float *restrict rk,
                               __global const float *restrict mask,
                               __global const float *restrict rdrop, __global float *restrict dh,
                               const int T, const int tx, CL_GEOM)
{
    const int gid = get_global_id(0);
    const int S = D * H * W, R = N * S, G = 4 * F;
    GUARD(gid, R * F);
    const int q = gid % F;
    const int r = gid / F;
    const int n = r / S, site = r % S;
    const int w0 = site % W, h0 = (site / W) % H, d0 = site / (W * H);
    const int pf = (KD - 1) / 2, pt = (KH - 1) / 2, pl = (KW - 1) / 2;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f}; /* per gate block: rdrop scales each */
    for (int kd = 0; kd < KD; ++kd) {
        const int d = d0 - kd + pf;
        if (d < 0 || d >= D)
            continue;
        for (int kh = 0; kh < KH; ++kh) {
            const int hh = h0 - kh + pt;
            if (hh < 0 || hh >= H)
                continue;
            for (int kw = 0; kw < KW; ++kw) {
                const int w = w0 - kw + pl;
                if (w < 0 || w >= W)
                    continue;
                const int other = (d * H + hh) * W + w;
                __global const float *drow = dxw + (((size_t)n * T + tx) * S + other) * G;
                __global const float *kp =
                    rk + ((size_t)((kd * KH + kh) * KW + kw) * F + q) * G;
                for (int g = 0; g < G; ++g)
                    acc[g / F] += drow[g] * kp[g];
            }
        }
    }
    float total = acc[0] + acc[1] + acc[2] + acc[3];
    if (rdrop) {
        __global const float *m = rdrop + (size_t)r * F + q;
        const size_t block = (size_t)R * F;
        total = acc[0] * m[0] + acc[1] * m[block] + acc[2] * m[2 * block] +
                acc[3] * m[3 * block];
    }
    if (mask && mask[(size_t)n * T + tx] == 0.0f)
        total += dh[(size_t)r * F + q];
    dh[(size_t)r * F + q] = total;
}

/* drk (KD, KH, KW, F, G): each entry summed over the steps (in order) and rows of
 * h_{s}[neighbour] * dz_s[row]; go_backwards maps step s to input time T - 1 - s. */
__kernel void convlstm_recurrent_kernel_grad(__global const float *restrict hs,
                                             __global const float *restrict rdrop,
                                             __global const float *restrict dxw,
                                             __global float *restrict drk, const int T,
                                             const int go_backwards, CL_GEOM)
{
    const int gid = get_global_id(0);
    const int S = D * H * W, R = N * S, G = 4 * F;
    GUARD(gid, KD * KH * KW * F * G);
    const int g = gid % G;
    int t = gid / G;
    const int q = t % F;
    t /= F;
    const int kw = t % KW;
    t /= KW;
    const int kh = t % KH;
    const int kd = t / KH;
    const int pf = (KD - 1) / 2, pt = (KH - 1) / 2, pl = (KW - 1) / 2;
    float acc = 0.0f;
    for (int s = 0; s < T; ++s) {
        const int tx = go_backwards ? T - 1 - s : s;
        __global const float *hp = hs + (size_t)s * R * F;
        for (int r = 0; r < R; ++r) {
            const int n = r / S, site = r % S;
            const int d = site / (W * H) + kd - pf;
            const int hh = (site / W) % H + kh - pt;
            const int w = site % W + kw - pl;
            if (d < 0 || d >= D || hh < 0 || hh >= H || w < 0 || w >= W)
                continue;
            const size_t other = (((size_t)n * D + d) * H + hh) * W + w;
            const float scale = rdrop ? rdrop[((size_t)(g / F) * R + other) * F + q] : 1.0f;
            acc += hp[other * F + q] * scale * dxw[(((size_t)n * T + tx) * S + site) * G + g];
        }
    }
    drk[gid] = acc;
}
