/* Sort kernels: keras.ops' sort/argsort/top_k along the last axis of a row view (R, n), the
 * twin of native/sort.pyx (its design note holds here).
 *
 * argsort_rows: one work-item per row runs the CPU's stable bottom-up merge sort in a
 * global pair of work rows and keeps the first k positions, so both backends give the same
 * permutation (NaN last, ties in position order); argsort_rows_bitonic below takes the rows
 * that fit local memory. take/put_along_rows: one work-item per (row, j); positions outside
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

/* Rows of at most BITONIC_MAX values: one work-group per row sorts (key, position) pairs
 * in local memory with a bitonic network over the next power of two P >= n. The compare is
 * a total order (the merge's order, then the position; padding after everything), so the
 * network gives exactly the stable permutation the merge gives. P / 2 work-items, each one
 * compare-exchange per stage. */
#ifndef BITONIC_MAX
#define BITONIC_MAX 512  /* the longest row sorted in local memory (a power of two) */
#endif

inline int pair_before(const float a, const int ia, const float b, const int ib,
                       const int n, const int descending)
{
    if (ia >= n || ib >= n) return ia < ib;  /* padding last, in position order */
    if (before(a, b, descending)) return 1;
    if (before(b, a, descending)) return 0;
    return ia < ib;
}

__kernel void argsort_rows_bitonic(__global const float *x, __global int *order, const int R,
                                   const int n, const int k, const int P,
                                   const int descending)
{
    __local float key[BITONIC_MAX];
    __local int pos[BITONIC_MAX];
    const int r = get_group_id(0), t = get_local_id(0), pairs = P / 2;
    if (r >= R) return;
    __global const float *row = x + (long)r * n;
    for (int i = t; i < P; i += pairs) {
        key[i] = i < n ? row[i] : 0.0f;
        pos[i] = i;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int size = 2; size <= P; size *= 2) {
        for (int stride = size / 2; stride > 0; stride /= 2) {
            const int lo = 2 * t - (t & (stride - 1)), hi = lo + stride;
            const int up = (lo & size) == 0;
            const float ka = key[lo], kb = key[hi];
            const int pa = pos[lo], pb = pos[hi];
            if (pair_before(kb, pb, ka, pa, n, descending) == up) {
                key[lo] = kb; key[hi] = ka;
                pos[lo] = pb; pos[hi] = pa;
            }
            barrier(CLK_LOCAL_MEM_FENCE);
        }
    }
    for (int i = t; i < k; i += pairs) order[(long)r * k + i] = pos[i];
}
