/* Sort kernels: keras.ops' sort/argsort/top_k along the last axis of a row view (R, n), the
 * twin of native/sort.pyx (its design note holds here).
 *
 * argsort_rows: one work-item per row runs the CPU's stable bottom-up merge sort in a
 * global pair of work rows and keeps the first k positions, so both backends give the same
 * permutation (NaN last, ties in position order). Not yet the bitonic sort in local memory
 * that rows fitting a work-group could use. take/put_along_rows: one work-item per (row, j); positions outside
 * [0, n) are skipped (a device index array is not range-checked on the host).
 */
#include "common.h"

inline int before(const float a, const float b, const int descending)
{
    if (isnan(b)) return !isnan(a);
    if (isnan(a)) return 0;
    return descending ? a > b : a < b;
}

__kernel void argsort_rows(__global const float *x, __global int *order,
                           __global int *work, const int R, const int n, const int k,
                           const int descending)
{
    const int r = get_global_id(0);
    GUARD(r, R);
    __global const float *row = x + (long)r * n;
    __global int *src = work + (long)r * 2 * n;
    __global int *dst = src + n;
    for (int i = 0; i < n; ++i) src[i] = i;
    for (int width = 1; width < n; width *= 2) {
        for (int lo = 0; lo < n; lo += 2 * width) {
            const int mid = min(lo + width, n), hi = min(lo + 2 * width, n);
            int i = lo, j = mid, q = lo;
            while (i < mid && j < hi) dst[q++] = before(row[src[j]], row[src[i]], descending)
                                                ? src[j++] : src[i++];
            while (i < mid) dst[q++] = src[i++];
            while (j < hi) dst[q++] = src[j++];
        }
        __global int *swap = src;
        src = dst;
        dst = swap;
    }
    for (int i = 0; i < k; ++i) order[(long)r * k + i] = src[i];
}

__kernel void take_along_rows(__global const float *x, __global const int *index,
                              __global float *y, const int R, const int n, const int k)
{
    const int gid = get_global_id(0);
    GUARD(gid, R * k);
    const int p = index[gid];
    y[gid] = (p >= 0 && p < n) ? x[(long)(gid / k) * n + p] : 0.0f;
}

__kernel void put_along_rows(__global const float *src, __global const int *index,
                             __global float *y, const int R, const int n, const int k)
{
    /* y was zero-filled; a row's positions are distinct, so each element has one writer */
    const int gid = get_global_id(0);
    GUARD(gid, R * k);
    const int p = index[gid];
    if (p >= 0 && p < n) y[(long)(gid / k) * n + p] = src[gid];
}
