/* Metric counts over one batch (the caller sums them): the twin of native/metric.pyx, whose
 * design note gives the Keras 3 semantics reproduced here.
 *
 * Legend: N rows, K classes (the last axis of a 2-D y_pred), n elements (binary metrics).
 * Every kernel is stage 1 of an integer reduction: work-items fold a grid-stride slice,
 * the local tree (wg_reduce.h) gives one partial per work-group and count, stored as
 * partial[c * groups + group]; sum_partials_int then folds each count's segment. Integer
 * sums are exact, so the counts are the CPU's whatever the launch shape.
 * - binary_matches_partial: (y_pred > threshold) as {0, 1} == y_true, elementwise.
 * - argmax_matches_partial: categorical / sparse accuracy (top == 0) or top-k (top > 0),
 *   one work-item per row; counts (hits, labels outside [0, K)).
 * - confusion_partial: (tp, fp, fn) with label = y_true != 0, prediction = y_pred > threshold.
 */
#include "common.h"
#define PYNN_SUM_PARTIALS
#include "wg_reduce.h"

/* First index of the largest value; the first NaN wins, as in torch and NumPy. */
int argmax_row(__global const float *a, int k)
{
    float m = a[0];
    if (isnan(m))
        return 0;
    int best = 0;
    for (int j = 1; j < k; ++j) {
        const float v = a[j];
        if (isnan(v))
            return j;
        if (v > m) {
            m = v;
            best = j;
        }
    }
    return best;
}

/* Keras's in_top_k: fewer than `top` scores strictly above the target's (ties count in). */
int in_top_k(__global const float *a, int k, int target, int top)
{
    const float v = a[target];
    int greater = 0;
    for (int j = 0; j < k; ++j)
        greater += a[j] > v;
    return greater < top;
}

#define STORE_PARTIAL(c, value)                                                                   \
    do {                                                                                          \
        const int total_ = wg_sum_int(buf, (value));                                              \
        if (get_local_id(0) == 0)                                                                 \
            partial[(c) * get_num_groups(0) + get_group_id(0)] = total_;                          \
    } while (0)

__kernel __attribute__((reqd_work_group_size(WG_SIZE, 1, 1)))
void binary_matches_partial(__global const float *t, __global const float *p,
                            __global int *partial, const int n, const float threshold)
{
    __local int buf[WG_SIZE];
    const int stride = get_global_size(0);
    int count = 0;
    for (int i = get_global_id(0); i < n; i += stride)
        count += t[i] == (p[i] > threshold ? 1.0f : 0.0f);
    STORE_PARTIAL(0, count);
}

/* sparse: targets are labels[r]; otherwise argmax of the one-hot row t[r] (labels unused). */
__kernel __attribute__((reqd_work_group_size(WG_SIZE, 1, 1)))
void argmax_matches_partial(__global const float *t, __global const int *labels,
                            __global const float *p, __global int *partial, const int rows,
                            const int K, const int sparse, const int top)
{
    __local int buf[WG_SIZE];
    const int stride = get_global_size(0);
    int hits = 0, bad = 0;
    for (int r = get_global_id(0); r < rows; r += stride) {
        __global const float *pr = p + (size_t)r * K;
        const int target = sparse ? labels[r] : argmax_row(t + (size_t)r * K, K);
        if (target < 0 || target >= K) {
            ++bad; /* never read past the row: the host raises on any bad label */
            continue;
        }
        hits += top == 0 ? argmax_row(pr, K) == target : in_top_k(pr, K, target, top);
    }
    STORE_PARTIAL(0, hits);
    STORE_PARTIAL(1, bad);
}

__kernel __attribute__((reqd_work_group_size(WG_SIZE, 1, 1)))
void confusion_partial(__global const float *t, __global const float *p, __global int *partial,
                       const int n, const float threshold)
{
    __local int buf[WG_SIZE];
    const int stride = get_global_size(0);
    int tp = 0, fp = 0, fn = 0;
    for (int i = get_global_id(0); i < n; i += stride) {
        const int label = t[i] != 0.0f;
        const int pred = p[i] > threshold;
        tp += label && pred;
        fp += !label && pred;
        fn += label && !pred;
    }
    STORE_PARTIAL(0, tp);
    STORE_PARTIAL(1, fp);
    STORE_PARTIAL(2, fn);
}

/* -- F-beta and AUC counts (issue 15): the twins of native/metric.pyx's ------------------
 * fbeta_row_max: each row's max (FBetaScore without a threshold); fbeta_columns: one
 * work-item per class sums its column in row order (tp, fp, fn, support), so the sums are
 * the same on every run. threshold_buckets: one work-item per element finds its bucket
 * #(thresholds < p) and counts it in an integer histogram [bucket][label] with atomics
 * (integer adds: exact in any order). */
__kernel void fbeta_row_max(__global const float *p, __global float *row_max, const int n,
                            const int k)
{
    const int r = get_global_id(0);
    if (r >= n)
        return;
    float m = p[(size_t)r * k];
    for (int j = 1; j < k; ++j)
        m = fmax(m, p[(size_t)r * k + j]);
    row_max[r] = m;
}

__kernel void fbeta_columns(__global const float *t, __global const float *p,
                            __global const float *row_max, __global float *out, const int n,
                            const int k, const int by_max, const float thr)
{
    const int j = get_global_id(0);
    if (j >= k)
        return;
    float tp = 0.0f, fp = 0.0f, fn = 0.0f, support = 0.0f;
    for (int r = 0; r < n; ++r) {
        const float pv = p[(size_t)r * k + j];
        const float tj = t[(size_t)r * k + j];
        const float pred = by_max ? (float)(pv >= row_max[r] && fabs(pv) > 1e-9f)
                                  : (float)(pv > thr);
        tp += pred * tj;
        fp += pred * (1.0f - tj);
        fn += (1.0f - pred) * tj;
        support += tj;
    }
    out[j] = tp;
    out[k + j] = fp;
    out[2 * k + j] = fn;
    out[3 * k + j] = support;
}

__kernel void threshold_buckets(__global const float *t, __global const float *p,
                                __global const float *th, __global int *hist, const int n,
                                const int nt)
{
    const int i = get_global_id(0);
    if (i >= n)
        return;
    const float v = p[i];
    int lo = 0, hi = nt;
    while (lo < hi) {
        const int mid = (lo + hi) / 2;
        if (th[mid] < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    atomic_inc(&hist[2 * lo + (t[i] != 0.0f)]);
}

/* confusion_matrix: counts[true * K + pred] with integer atomics (exact in any order); a
 * label outside [0, K) counts in counts[K * K] instead (the host raises). */
__kernel void confusion_matrix_counts(__global const int *t, __global const int *p,
                                      __global int *counts, const int n, const int k)
{
    const int i = get_global_id(0);
    if (i >= n)
        return;
    const int a = t[i], b = p[i];
    if (a < 0 || a >= k || b < 0 || b >= k)
        atomic_inc(&counts[k * k]);
    else
        atomic_inc(&counts[a * k + b]);
}
