/* Losses: value and gradient d(loss)/d(y_pred) in one fused pass, the twin of native/loss.pyx
 * (Keras 3 semantics; its design note lists the details reproduced here).
 *
 * Legend: N rows (every axis of y_pred but the last), K the last axis, n = N * K elements.
 * Codes follow pynn.backend.api.LOSSES. The gradient carries the mean's 1/n (pointwise
 * losses) or 1/N (cross-entropies) through `scale`; the host divides the summed loss.
 * - pointwise_partial (MSE, MAE, Huber, binary CE): grid-stride over elements, one partial
 *   loss per work-group, folded by sum_partials_float (wg_reduce.h).
 * - categorical_rows (categorical and sparse CE): one work-group per row; max, exp-sum and
 *   dot products go through the local tree, then row_loss[r] is folded by
 *   sum_partials_float. A sparse row is a categorical row with a virtual one-hot target.
 * Every sum has a fixed order: the same inputs give the same bits on every run.
 */
#include "common.h"
#define PYNN_SUM_PARTIALS
#include "wg_reduce.h"

#define LOSS_MSE 0
#define LOSS_MAE 1
#define LOSS_HUBER 2
#define LOSS_BCE 3

#ifndef LOSS_ROW_WG
#define LOSS_ROW_WG 64 /* work-items per cross-entropy row; a power of two */
#endif

float sign_of(float d)
{
    return (float)((d > 0.0f) - (d < 0.0f));
}

/* Loss of one element; *grad receives d/dp (before the 1/n scale). */
/* Keras's clip: NaN stays NaN (OpenCL's clamp and fmin/fmax would return a bound and hide a
 * NaN prediction behind the clipped loss, as the CPU kernels do not). */
inline float clip_to(const float q, const float lo, const float hi)
{
    return q < lo ? lo : (q > hi ? hi : q);
}

float pointwise_loss(int code, float t, float p, int from_logits, float delta, float lo,
                     float hi, float *grad)
{
    const float d = p - t;
    if (code == LOSS_MSE) {
        *grad = 2.0f * d;
        return d * d;
    }
    if (code == LOSS_MAE) {
        *grad = sign_of(d); /* 0 at d == 0, torch's sign */
        return fabs(d);
    }
    if (code == LOSS_HUBER) {
        const float a = fabs(d);
        if (a <= delta) {
            *grad = d;
            return 0.5f * d * d;
        }
        *grad = delta * sign_of(d);
        return delta * a - 0.5f * delta * delta;
    }
    if (from_logits) {
        /* torch's stable form; sigmoid(p) from the same exp(-|p|), no overflow either side. */
        const float a = exp(-fabs(p));
        *grad = (p >= 0.0f ? 1.0f / (1.0f + a) : a / (1.0f + a)) - t;
        return fmax(p, 0.0f) - p * t + log1p(a);
    }
    const float pc = clip_to(p, lo, hi);
    /* The clip's gradient is torch's: 1 inside [lo, hi] (bounds included), 0 outside. */
    *grad = (lo <= p && p <= hi) ? (pc - t) / (pc * (1.0f - pc)) : 0.0f;
    return -(t * log(pc) + (1.0f - t) * log(1.0f - pc));
}

__kernel __attribute__((reqd_work_group_size(WG_SIZE, 1, 1)))
void pointwise_partial(__global const float *t, __global const float *p, __global float *g,
                       __global float *partial, const int n, const int code,
                       const int from_logits, const int need_grad, const float delta,
                       const float lo, const float hi, const float scale)
{
    __local float buf[WG_SIZE];
    const int stride = get_global_size(0);
    float acc = 0.0f;
    float gi;
    for (int i = get_global_id(0); i < n; i += stride) {
        acc += pointwise_loss(code, t[i], p[i], from_logits, delta, lo, hi, &gi);
        if (need_grad)
            g[i] = gi * scale;
    }
    acc = wg_sum_float(buf, acc);
    if (get_local_id(0) == 0)
        partial[get_group_id(0)] = acc;
}

/* -sum_j t_j log(prob_j) of row r into row_loss[r]; g (when need_grad) gets scale * d/dp.
 * sparse: t is unused and the target is one-hot at labels[r]; a label outside [0, K) sets
 * result[1] = 1 (every writer stores the same value: no race on the outcome) and the row
 * contributes 0. result[0] is left to sum_partials_float (the loss sum).
 * Probabilities are renormalized per row and clipped to [lo, hi]; the renormalization's
 * Jacobian gives g_k = (c_k + sum_{j unclipped} t_j) / s with c_k = -t_k / q_k (unclipped k). */
__kernel __attribute__((reqd_work_group_size(LOSS_ROW_WG, 1, 1)))
void categorical_rows(__global const float *t, __global const int *labels,
                      __global const float *p, __global float *g, __global float *row_loss,
                      __global float *result, const int rows, const int K, const int sparse,
                      const int from_logits, const int need_grad, const float lo,
                      const float hi, const float scale)
{
    __local float buf[LOSS_ROW_WG];
    const int row = get_group_id(0);
    const int lid = get_local_id(0);
    int label = -1;
    int valid = row < rows;
    if (valid && sparse) {
        label = labels[row];
        valid = label >= 0 && label < K;
        if (!valid && lid == 0)
            result[1] = 1.0f;
    }
    /* Invalid rows loop over nothing but still meet every barrier: an early return before a
     * barrier is undefined. */
    const int k = valid ? K : 0;
    const size_t base = (size_t)row * K;
    __global const float *pr = p + base;

#define TARGET(j) (sparse ? (float)((j) == label) : t[base + (j)])

    /* Three passes, each closed by a reduction every work-item reaches (no barrier sits
     * under a branch): the row max (logits), the normalizer s, then loss and target mass. */
    float m = -INFINITY;
    if (from_logits)
        for (int j = lid; j < k; j += LOSS_ROW_WG)
            m = fmax(m, pr[j]);
    m = wg_max_float(buf, m);
    if (!from_logits)
        m = 0.0f;

    float s = 0.0f;
    for (int j = lid; j < k; j += LOSS_ROW_WG)
        s += from_logits ? exp(pr[j] - m) : pr[j];
    s = wg_sum_float(buf, s);
    const float lse = m + log(s);

    float loss = 0.0f, tsum = 0.0f;
    for (int j = lid; j < k; j += LOSS_ROW_WG) {
        const float tj = TARGET(j);
        if (from_logits) {
            loss += tj * (lse - pr[j]);
            tsum += tj;
        } else {
            const float q = pr[j] / s;
            loss -= tj * log(clip_to(q, lo, hi));
            if (lo <= q && q <= hi)
                tsum += tj;
        }
    }
    loss = wg_sum_float(buf, loss);
    tsum = wg_sum_float(buf, tsum);
    if (lid == 0 && row < rows)
        row_loss[row] = loss;

    if (need_grad && row < rows) {
        __global float *gr = g + base;
        if (!valid) {
            for (int j = lid; j < K; j += LOSS_ROW_WG)
                gr[j] = 0.0f;
        } else if (from_logits) {
            for (int j = lid; j < k; j += LOSS_ROW_WG)
                gr[j] = (tsum * exp(pr[j] - m) / s - TARGET(j)) * scale;
        } else {
            for (int j = lid; j < k; j += LOSS_ROW_WG) {
                const float q = pr[j] / s;
                const float c = (lo <= q && q <= hi) ? -TARGET(j) / q : 0.0f;
                gr[j] = (c + tsum) / s * scale;
            }
        }
    }
#undef TARGET
}
