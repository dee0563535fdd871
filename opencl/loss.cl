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
 * - categorical_focal_rows: one work-group per row, as categorical_rows.
 * - overlap_partial / overlap_grad (dice, tversky): three sums over all elements (one partial
 *   each per work-group, folded by sum_partials_float), read back; then the gradient.
 * - generalized_ce_rows (Keras 3's categorical generalized CE): one work-group per row, as
 *   categorical_rows, with its bad-label flag.
 * - ctc_log_softmax / ctc_alpha_beta (Keras 3's CTC): the log-softmax, one work-item per
 *   step; then one work-group per sample runs the forward and backward variables in log
 *   space over the extended label (work-items over its states, a barrier per step), the
 *   loss and the gradient (work-items over steps x classes).
 * - circle_rows / circle_grad (Keras 3's Circle): one work-item per row for its loss and
 *   d loss / d similarity row; the host counts the unmasked rows; one work-item per
 *   embedding element for the gradient.
 * Every sum has a fixed order: the same inputs give the same bits on every run.
 * sample_weight: when has_w, w[i / per_weight] (elements for pointwise_partial, rows for
 * categorical_rows) multiplies each loss and its gradient; the host still divides by the
 * number of losses (Keras's sum_over_batch_size).
 */
#include "common.h"
#define PYNN_SUM_PARTIALS
#include "wg_reduce.h"

#define LOSS_MSE 0
#define LOSS_MAE 1
#define LOSS_HUBER 2
#define LOSS_BCE 3
#define LOSS_KLD 6
#define LOSS_HINGE 7
#define LOSS_SQUARED_HINGE 8
#define LOSS_CATEGORICAL_HINGE 9
#define LOSS_LOG_COSH 10
#define LOSS_POISSON 11
#define LOSS_MSLE 12
#define LOSS_MAPE 13
#define LOSS_COSINE 14
#define LOSS_FOCAL 15

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

float sigmoid_of(float x)
{
    const float e = exp(-fabs(x));
    return x >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
}

/* params (operands.loss_params): a huber's delta, the cross-entropies' label smoothing, or
 * hinge's "targets are {0, 1}"; focal reads alpha, gamma, class balancing, smoothing. */
float focal_loss(float t, float p, int from_logits, float4 prm, float lo, float hi,
                 float *grad)
{
    const float alpha = prm.x, gamma = prm.y;
    if (prm.w != 0.0f)
        t = t * (1.0f - prm.w) + 0.5f * prm.w;
    const float q = from_logits ? sigmoid_of(p) : p;
    const float dq = from_logits ? q * (1.0f - q) : 1.0f;
    const float qc = clip_to(q, lo, hi);
    const float bce = -(t * log(qc) + (1.0f - t) * log(1.0f - qc));
    const float dbce = (lo <= q && q <= hi) ? (qc - t) / (qc * (1.0f - qc)) : 0.0f;
    const float base = 1.0f - (t * q + (1.0f - t) * (1.0f - q));
    const float f = pow(base, gamma);
    const float df = (gamma != 0.0f && base > 0.0f)
                         ? -gamma * pow(base, gamma - 1.0f) * (2.0f * t - 1.0f) : 0.0f;
    const float w = prm.z != 0.0f ? t * alpha + (1.0f - t) * (1.0f - alpha) : 1.0f;
    *grad = w * (df * bce + f * dbce) * dq;
    return w * f * bce;
}

float pointwise_loss(int code, float t, float p, int from_logits, float4 prm, float lo,
                     float hi, float *grad)
{
    const float delta = prm.x;
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
    if (code == LOSS_HINGE || code == LOSS_SQUARED_HINGE) {
        const float tt = prm.x != 0.0f ? 2.0f * t - 1.0f : t;
        const float m = 1.0f - tt * p;
        if (m <= 0.0f) {
            *grad = 0.0f;
            return 0.0f;
        }
        *grad = code == LOSS_HINGE ? -tt : -2.0f * tt * m;
        return code == LOSS_HINGE ? m : m * m;
    }
    if (code == LOSS_LOG_COSH) {
        *grad = tanh(d);
        /* x + softplus(-2x) - log 2, softplus in its overflow-free form. */
        return d + fmax(-2.0f * d, 0.0f) + log1p(exp(-fabs(2.0f * d))) - M_LN2_F;
    }
    if (code == LOSS_POISSON) {
        *grad = 1.0f - t / (p + lo);
        return p - t * log(p + lo);
    }
    if (code == LOSS_MSLE) {
        /* torch.maximum propagates NaN (fmax would return eps for a NaN prediction). */
        const float a = log(((p > lo || p != p) ? p : lo) + 1.0f) - log(fmax(t, lo) + 1.0f);
        *grad = p > lo ? 2.0f * a / (p + 1.0f) : 0.0f;
        return a * a;
    }
    if (code == LOSS_MAPE) {
        const float a = 100.0f / fmax(fabs(t), lo);
        *grad = a * sign_of(d);
        return a * fabs(d);
    }
    if (code == LOSS_KLD) { /* hi is 1 here: Keras clips both to [eps, 1] */
        const float tc = clip_to(t, lo, hi), pc = clip_to(p, lo, hi);
        *grad = (lo <= p && p <= hi) ? -tc / pc : 0.0f;
        return tc * log(tc / pc);
    }
    if (code == LOSS_FOCAL)
        return focal_loss(t, p, from_logits, prm, lo, hi, grad);
    if (prm.x != 0.0f)
        t = t * (1.0f - prm.x) + 0.5f * prm.x;
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
                       const int from_logits, const int need_grad, const float4 prm,
                       const float lo, const float hi, const float scale,
                       __global const float *w, const int has_w, const int per_weight)
{
    __local float buf[WG_SIZE];
    const int stride = get_global_size(0);
    float acc = 0.0f;
    float gi;
    for (int i = get_global_id(0); i < n; i += stride) {
        const float wi = has_w ? w[i / per_weight] : 1.0f;
        acc += wi * pointwise_loss(code, t[i], p[i], from_logits, prm, lo, hi, &gi);
        if (need_grad)
            g[i] = gi * wi * scale;
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
                      const float hi, const float unweighted_scale,
                      __global const float *w, const int has_w, const int per_weight,
                      const float ls)
{
    __local float buf[LOSS_ROW_WG];
    const int row = get_group_id(0);
    const int lid = get_local_id(0);
    /* A row is linear in its weight: the weight rides on the loss and the gradient's scale. */
    const float wr = (has_w && row < rows) ? w[row / per_weight] : 1.0f;
    const float scale = unweighted_scale * wr;
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

#define TARGET(j) (sparse ? (float)((j) == label) : t[base + (j)] * (1.0f - ls) + ls / K)

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
        row_loss[row] = wr * loss;

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

/* hinge / squared_hinge: count the targets outside {0, 1}; Keras converts {0, 1} labels to
 * {-1, 1} only when there are none. One partial count per work-group. */
__kernel __attribute__((reqd_work_group_size(WG_SIZE, 1, 1)))
void non_binary_partial(__global const float *t, __global int *partial, const int n)
{
    __local int buf[WG_SIZE];
    int count = 0;
    for (int i = get_global_id(0); i < n; i += get_global_size(0))
        count += t[i] != 0.0f && t[i] != 1.0f;
    count = wg_sum_int(buf, count);
    if (get_local_id(0) == 0)
        partial[get_group_id(0)] = count;
}

/* categorical_hinge and cosine_similarity, one work-group per row (the twin of
 * categorical_hinge_row / cosine_row in native/loss.pyx). Both losses' reductions run
 * for either code, so every barrier is met unconditionally. The max's gradient goes to its
 * first argmax, found as the largest -j among the entries equal to the max. */
__kernel __attribute__((reqd_work_group_size(LOSS_ROW_WG, 1, 1)))
void pairwise_rows(__global const float *t, __global const float *p, __global float *g,
                   __global float *row_loss, const int rows, const int K, const int code,
                   const int need_grad, const float eps, const float unweighted_scale,
                   __global const float *w, const int has_w, const int per_weight)
{
    __local float buf[LOSS_ROW_WG];
    const int row = get_group_id(0);
    const int lid = get_local_id(0);
    const int k = row < rows ? K : 0;
    const size_t base = (size_t)row * K;
    __global const float *tr = t + base;
    __global const float *pr = p + base;
    const float wr = (has_w && row < rows) ? w[row / per_weight] : 1.0f;
    const float scale = unweighted_scale * wr;
    float tt = 0.0f, pp = 0.0f, tp = 0.0f, neg = -INFINITY, first = -INFINITY, nans = 0.0f;
    for (int j = lid; j < k; j += LOSS_ROW_WG) {
        tt += tr[j] * tr[j];
        pp += pr[j] * pr[j];
        tp += tr[j] * pr[j];
        const float v = (1.0f - tr[j]) * pr[j];
        neg = fmax(neg, v);
        nans += (float)(v != v);
    }
    tt = wg_sum_float(buf, tt);
    pp = wg_sum_float(buf, pp);
    tp = wg_sum_float(buf, tp);
    neg = wg_max_float(buf, neg);
    /* torch's max propagates NaN; fmax (and the tree's max) skip it. */
    if (wg_sum_float(buf, nans) > 0.0f)
        neg = NAN;
    for (int j = lid; j < k; j += LOSS_ROW_WG)
        if ((1.0f - tr[j]) * pr[j] == neg)
            first = fmax(first, -(float)j);
    first = wg_max_float(buf, first);
    const int arg = first == -INFINITY ? -1 : (int)(-first);
    if (row >= rows)
        return;
    if (code == LOSS_CATEGORICAL_HINGE) {
        const float loss = neg - tp + 1.0f;
        if (lid == 0)
            row_loss[row] = wr * ((loss > 0.0f || loss != loss) ? loss : 0.0f); /* NaN stays */
        if (need_grad)
            for (int j = lid; j < k; j += LOSS_ROW_WG)
                g[base + j] = loss > 0.0f
                                  ? (-tr[j] + (1.0f - tr[j]) * (float)(j == arg)) * scale
                                  : 0.0f;
        return;
    }
    /* Keras's normalize: 1/|x| = min(rsqrt(sum x^2), 1/eps); a capped norm is a constant. */
    const float it = fmin(rsqrt(tt), 1.0f / eps);
    const float ip = fmin(rsqrt(pp), 1.0f / eps);
    const int capped = ip >= 1.0f / eps;
    if (lid == 0)
        row_loss[row] = -wr * tp * it * ip;
    if (need_grad)
        for (int j = lid; j < k; j += LOSS_ROW_WG)
            g[base + j] = -it * (tr[j] * ip - (capped ? 0.0f : tp * ip * ip * ip * pr[j]))
                          * scale;
}

/* One element of categorical focal crossentropy: alpha (1 - qc)^gamma (-t log qc), qc = q
 * clipped; *c receives its derivative with respect to q (0 where clipped). */
float categorical_focal_term(const float q, const float t, const float alpha,
                             const float gamma, const float lo, const float hi, float *c)
{
    const float qc = clip_to(q, lo, hi);
    const float lq = log(qc);
    const float mod = pow(1.0f - qc, gamma);
    const float dmod = gamma != 0.0f ? gamma * pow(1.0f - qc, gamma - 1.0f) : 0.0f;
    *c = (lo <= q && q <= hi && t != 0.0f) ? alpha * t * (dmod * lq - mod / qc) : 0.0f;
    return -alpha * mod * t * lq;
}

/* categorical_focal_crossentropy of row r into row_loss[r] (the twin of
 * categorical_focal_row in native/loss.pyx): q the row renormalized (softmax from logits)
 * and clipped, c_j = dL/dq_j; d/dp_k = (c_k - sum_j c_j q_j) / s from probabilities,
 * q_k (c_k - sum_j c_j q_j) from logits. prm: alpha, gamma, label smoothing. */
__kernel __attribute__((reqd_work_group_size(LOSS_ROW_WG, 1, 1)))
void categorical_focal_rows(__global const float *t, __global const float *p,
                            __global float *g, __global float *row_loss, const int rows,
                            const int K, const int from_logits, const int need_grad,
                            const float lo, const float hi, const float unweighted_scale,
                            __global const float *w, const int has_w, const int per_weight,
                            const float4 prm)
{
    __local float buf[LOSS_ROW_WG];
    const int row = get_group_id(0);
    const int lid = get_local_id(0);
    const int k = row < rows ? K : 0;
    const size_t base = (size_t)row * K;
    __global const float *tr = t + base;
    __global const float *pr = p + base;
    const float wr = (has_w && row < rows) ? w[row / per_weight] : 1.0f;
    const float scale = unweighted_scale * wr;
    const float alpha = prm.x, gamma = prm.y, ls = prm.z;
#define TARGET(j) (tr[j] * (1.0f - ls) + ls / K)
#define PROB(j) (from_logits ? exp(pr[j] - m) / s : pr[j] / s)
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
    float loss = 0.0f, cq = 0.0f, c;
    for (int j = lid; j < k; j += LOSS_ROW_WG) {
        const float q = PROB(j);
        loss += categorical_focal_term(q, TARGET(j), alpha, gamma, lo, hi, &c);
        cq += c * q;
    }
    loss = wg_sum_float(buf, loss);
    cq = wg_sum_float(buf, cq);
    if (row >= rows)
        return;
    if (lid == 0)
        row_loss[row] = wr * loss;
    if (need_grad)
        for (int j = lid; j < k; j += LOSS_ROW_WG) {
            const float q = PROB(j);
            categorical_focal_term(q, TARGET(j), alpha, gamma, lo, hi, &c);
            g[base + j] = (from_logits ? q * (c - cq) : (c - cq) / s) * scale;
        }
#undef PROB
#undef TARGET
}

/* dice / tversky, stage 1: per work-group partial sums of I = sum t p, FP = sum t (1 - p)
 * and FN = sum p (1 - t), stored as three segments of partial (one per sum). */
__kernel __attribute__((reqd_work_group_size(WG_SIZE, 1, 1)))
void overlap_partial(__global const float *t, __global const float *p,
                     __global float *partial, const int n)
{
    __local float buf[WG_SIZE];
    float inter = 0.0f, fp = 0.0f, fn = 0.0f;
    for (int i = get_global_id(0); i < n; i += get_global_size(0)) {
        inter += t[i] * p[i];
        fp += (1.0f - p[i]) * t[i];
        fn += p[i] * (1.0f - t[i]);
    }
    inter = wg_sum_float(buf, inter);
    fp = wg_sum_float(buf, fp);
    fn = wg_sum_float(buf, fn);
    if (get_local_id(0) == 0) {
        const int groups = get_num_groups(0), grp = get_group_id(0);
        partial[grp] = inter;
        partial[groups + grp] = fp;
        partial[2 * groups + grp] = fn;
    }
}

/* dice / tversky, the gradient of wmean * (1 - c I / den), den = u I + a FP + b FN + eps,
 * from the sums' num = c I and den: d num = c t, d den = u t - a t + b (1 - t). */
__kernel void overlap_grad(__global const float *t, __global float *g, const int n,
                           const float4 prm, const float num, const float den,
                           const float wmean)
{
    const int i = get_global_id(0);
    if (i >= n)
        return;
    const float ti = t[i];
    const float dden = prm.y * ti - prm.z * ti + prm.w * (1.0f - ti);
    g[i] = -((prm.x * ti - num / den * dden) / den) * wmean;
}


/* -- Keras 3's categorical generalized cross-entropy, CTC and Circle losses ----------- */

/* (1 - p_y^q) / q per row on y_pred as given (no clip, no renormalization); g gets
 * -p_y^(q - 1) * scale at the label, 0 elsewhere. A label outside [0, K) sets result[1]
 * (as categorical_rows) and its row contributes 0. */
__kernel __attribute__((reqd_work_group_size(LOSS_ROW_WG, 1, 1)))
void generalized_ce_rows(__global const int *labels, __global const float *p,
                         __global float *g, __global float *row_loss,
                         __global float *result, const int rows, const int K,
                         const int need_grad, const float unweighted_scale,
                         __global const float *w, const int has_w, const int per_weight,
                         const float q)
{
    const int row = get_group_id(0);
    const int lid = get_local_id(0);
    if (row >= rows)
        return;
    const float wr = has_w ? w[row / per_weight] : 1.0f;
    const int label = labels[row];
    const int valid = label >= 0 && label < K;
    const size_t base = (size_t)row * K;
    const float py = valid ? p[base + label] : 1.0f;
    if (lid == 0) {
        row_loss[row] = valid ? wr * (1.0f - pow(py, q)) / q : 0.0f;
        if (!valid)
            result[1] = 1.0f;
    }
    if (need_grad) {
        const float d = valid ? -pow(py, q - 1.0f) * unweighted_scale * wr : 0.0f;
        for (int j = lid; j < K; j += LOSS_ROW_WG)
            g[base + j] = j == label ? d : 0.0f;
    }
}

/* log(e^a + e^b), -inf when both are. */
inline float log_add(const float a, const float b)
{
    const float m = fmax(a, b);
    return m == -INFINITY ? m : m + log(exp(a - m) + exp(b - m));
}

/* Row r of x (rows of C logits) as its log-softmax. */
__kernel void ctc_log_softmax(__global const float *x, __global float *lp, const int rows,
                              const int C)
{
    const int r = get_global_id(0);
    GUARD(r, rows);
    __global const float *xr = x + (size_t)r * C;
    float m = xr[0];
    for (int k = 1; k < C; k++)
        m = fmax(m, xr[k]);
    float total = 0.0f;
    for (int k = 0; k < C; k++)
        total += exp(xr[k] - m);
    const float lse = m + log(total);
    for (int k = 0; k < C; k++)
        lp[(size_t)r * C + k] = xr[k] - lse;
}

/* Symbol of extended-label state s: the blank (0) at even s, label (s - 1) / 2 at odd. */
#define CTC_SYMBOL(s) ((s) % 2 == 0 ? 0 : lab[(s) / 2])

/* Sample b = the work-group: Keras's CTC (blank 0, every sample T steps) on lp (B, T, C),
 * the log-softmax. out[b] = w_b * (-log p), out[B + b] = the row's label status (0 fine;
 * else the host explains it with operands.check_ctc_labels). alpha and beta (B, T, S) are
 * scratch, S = 2 * width + 1 the states of the longest label. g (need_grad) gets
 * scale * w_b * (softmax - posterior of each class at each step). Every branch before a
 * barrier depends on the sample alone: the whole group takes it. */
__kernel __attribute__((reqd_work_group_size(LOSS_ROW_WG, 1, 1)))
void ctc_alpha_beta(__global const int *labels, const int width, __global const float *lp,
                    __global float *alpha, __global float *beta, __global float *g,
                    __global float *out, const int B, const int T, const int C,
                    const int need_grad, const float unweighted_scale,
                    __global const float *w, const int has_w)
{
    const int b = get_group_id(0);
    const int lid = get_local_id(0);
    if (b >= B)
        return;
    __global const int *lab = labels + (size_t)b * width;
    /* Keras's length: the non-zero labels; they must come first, lie in [1, C) and, with a
     * blank between repeats, fit T steps. */
    int length = 0, repeats = 0, bad = 0;
    for (int i = 0; i < width; i++) {
        const int v = lab[i];
        bad |= v < 0 || v >= C || (v != 0 && i != length);
        if (v != 0) {
            repeats += i > 0 && v == lab[i - 1];
            length++;
        }
    }
    bad |= length + repeats > T;
    if (lid == 0)
        out[B + b] = (float)bad;
    if (bad) {
        if (lid == 0)
            out[b] = 0.0f;
        return;
    }
    const int S = 2 * length + 1, stride = 2 * width + 1;
    __global const float *lpb = lp + (size_t)b * T * C;
    __global float *ab = alpha + (size_t)b * T * stride;
    __global float *bb = beta + (size_t)b * T * stride;
    for (int s = lid; s < S; s += LOSS_ROW_WG)
        ab[s] = s == 0 ? lpb[0] : (s == 1 ? lpb[CTC_SYMBOL(1)] : -INFINITY);
    barrier(CLK_GLOBAL_MEM_FENCE);
    for (int t = 1; t < T; t++) {
        __global const float *prev = ab + (size_t)(t - 1) * stride;
        for (int s = lid; s < S; s += LOSS_ROW_WG) {
            const int sym = CTC_SYMBOL(s);
            float a = prev[s];
            if (s >= 1)
                a = log_add(a, prev[s - 1]);
            /* a label may skip the blank before it unless it repeats the previous label */
            if (s >= 2 && sym != 0 && sym != CTC_SYMBOL(s - 2))
                a = log_add(a, prev[s - 2]);
            ab[(size_t)t * stride + s] = a + lpb[(size_t)t * C + sym];
        }
        barrier(CLK_GLOBAL_MEM_FENCE);
    }
    __global const float *last = ab + (size_t)(T - 1) * stride;
    const float log_p = S > 1 ? log_add(last[S - 1], last[S - 2]) : last[0];
    const float wb = has_w ? w[b] : 1.0f;
    if (lid == 0)
        out[b] = -log_p * wb;
    if (!need_grad)
        return;
    for (int t = T - 1; t >= 0; t--) {
        __global const float *next = bb + (size_t)(t + 1) * stride;
        for (int s = lid; s < S; s += LOSS_ROW_WG) {
            const int sym = CTC_SYMBOL(s);
            float a;
            if (t == T - 1) {
                a = s >= S - 2 ? 0.0f : -INFINITY;
            } else {
                a = next[s];
                if (s + 1 < S)
                    a = log_add(a, next[s + 1]);
                if (s + 2 < S && sym != 0 && sym != CTC_SYMBOL(s + 2))
                    a = log_add(a, next[s + 2]);
            }
            bb[(size_t)t * stride + s] = a + lpb[(size_t)t * C + sym];
        }
        barrier(CLK_GLOBAL_MEM_FENCE);
    }
    const float scale = unweighted_scale * wb;
    for (int i = lid; i < T * C; i += LOSS_ROW_WG) {
        const int t = i / C, k = i % C;
        const float lpk = lpb[i];
        __global const float *at = ab + (size_t)t * stride;
        __global const float *bt = bb + (size_t)t * stride;
        float occupancy = 0.0f;
        /* the states showing class k: every even one for the blank, else the labels = k */
        for (int s = k == 0 ? 0 : 1; s < S; s += 2)
            if (k == 0 || lab[s / 2] == k)
                occupancy += exp(at[s] + bt[s] - lpk - log_p);
        /* + (log_p - log_p): a NaN logit makes the whole sample's gradient NaN, as
         * torch's (-log p enters its every entry) */
        g[(size_t)b * T * C + i] = (exp(lpk) - occupancy) * scale + (log_p - log_p);
    }
}
#undef CTC_SYMBOL

/* d max(x, 0) / dx as torch's maximum has it: 1 above, 0 below, 1/2 at the tie (the
 * diagonal's 1 - sim_ii is exactly 0 for rows of unit float norm). */
inline float max_slope(const float x)
{
    return x > 0.0f ? 1.0f : (x == 0.0f ? 0.5f : 0.0f);
}

/* Row i of Keras's Circle loss on embeddings e (N, D), one work-item per row: sim (N, N)
 * gets row i of e e^T and coef (N, N) w_i * d loss_i / d sim_ij (0 for a masked row: no
 * positive or no negative, or a loss that is 0 in float); out[i] = loss_i and
 * out[N + i] = w_i * loss_i where unmasked. */
__kernel void circle_rows(__global const int *labels, __global const float *e,
                          __global float *sim, __global float *coef, __global float *out,
                          const int N, const int D, const float gamma, const float margin,
                          const int remove_diagonal, const int need_grad,
                          __global const float *w, const int has_w)
{
    const int i = get_global_id(0);
    GUARD(i, N);
    __global float *sr = sim + (size_t)i * N;
    __global float *cr = coef + (size_t)i * N;
    __global const float *ei = e + (size_t)i * D;
    float pos_max = -INFINITY, neg_max = -INFINITY;
    int nonfinite = 0;
    for (int j = 0; j < N; j++) {
        __global const float *ej = e + (size_t)j * D;
        float dot = 0.0f;
        for (int k = 0; k < D; k++)
            dot += ei[k] * ej[k];
        sr[j] = dot;
        nonfinite |= !isfinite(dot);
        const float d = fmax(1.0f - dot, 0.0f);
        const int positive = labels[j] == labels[i];
        float logit;
        if (positive && remove_diagonal && j == i) {
            logit = -INFINITY;
        } else if (positive) {
            logit = -gamma * fmax(margin + d, 0.0f) * (margin - d);
            pos_max = fmax(pos_max, logit);
        } else {
            logit = gamma * fmax(1.0f + margin - d, 0.0f) * (1.0f - margin - d);
            neg_max = fmax(neg_max, logit);
        }
        cr[j] = logit;
    }
    /* A NaN or infinite similarity: a NaN loss and coefficients (Keras's mask drops the
     * row, but NaN * 0 stays NaN in its mean and gradient). */
    float loss = nonfinite ? NAN : 0.0f, lse_pos = 0.0f, lse_neg = 0.0f;
    if (!nonfinite && pos_max != -INFINITY && neg_max != -INFINITY) {
        float pos_sum = 0.0f, neg_sum = 0.0f;
        for (int j = 0; j < N; j++) {
            if (cr[j] == -INFINITY)
                continue;
            if (labels[j] == labels[i])
                pos_sum += exp(cr[j] - pos_max);
            else
                neg_sum += exp(cr[j] - neg_max);
        }
        lse_pos = pos_max + log(pos_sum);
        lse_neg = neg_max + log(neg_sum);
        const float z = lse_pos + lse_neg;
        loss = fmax(z, 0.0f) + log1p(exp(-fabs(z)));
    }
    const float wi = has_w ? w[i] : 1.0f;
    out[i] = loss;
    out[N + i] = (loss > 0.0f ? wi : 0.0f) * loss;
    if (!need_grad)
        return;
    const float z = lse_pos + lse_neg;
    const float sig = z >= 0.0f ? 1.0f / (1.0f + exp(-z)) : exp(z) / (1.0f + exp(z));
    for (int j = 0; j < N; j++) {
        float c = nonfinite ? NAN : 0.0f;
        if (loss > 0.0f && cr[j] != -INFINITY) {
            const float d = fmax(1.0f - sr[j], 0.0f);
            float dlogit;
            if (labels[j] == labels[i]) {
                const float weight = margin + d;
                dlogit = -gamma * ((margin - d) * max_slope(weight) - fmax(weight, 0.0f))
                         * exp(cr[j] - lse_pos);
            } else {
                const float weight = 1.0f + margin - d;
                dlogit = gamma * (-(1.0f - margin - d) * max_slope(weight)
                                  - fmax(weight, 0.0f)) * exp(cr[j] - lse_neg);
            }
            /* distance = max(1 - sim, 0): d distance / d sim = -max_slope(1 - sim) */
            c = -sig * dlogit * wi * max_slope(1.0f - sr[j]);
        }
        cr[j] = c;
    }
}

/* g[i, k] = scale * sum_j (coef[i, j] + coef[j, i]) e[j, k]: both uses of e_i in sim. */
__kernel void circle_grad(__global const float *e, __global const float *coef,
                          __global float *g, const int N, const int D, const float scale)
{
    const int id = get_global_id(0);
    GUARD(id, N * D);
    const int i = id / D, k = id % D;
    float acc = 0.0f;
    for (int j = 0; j < N; j++)
        acc += (coef[(size_t)i * N + j] + coef[(size_t)j * N + i]) * e[(size_t)j * D + k];
    g[id] = acc * scale;
}
