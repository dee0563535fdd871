/* Deterministic work-group reductions for B's ops (softmax rows, losses, metrics, norms).
 *
 * A tree over local memory with a fixed pairing: the result depends only on the work-group
 * size and the order of the inputs, never on scheduling, and needs no float atomics. Scalars
 * reduce in two launches: a stage kernel of the op writes one partial per work-group (each
 * work-item first folds a grid-stride slice), then sum_partials_float / sum_partials_int (one
 * work-group) folds the partials the same way, and the host reads back one value.
 * Every work-item of the group must call these (they contain barriers); the local size must be
 * a power of two.
 */
#ifndef PYNN_WG_REDUCE_H
#define PYNN_WG_REDUCE_H

#include "common.h" /* WG_SIZE: the stage-2 group size, a power of two */

#define PYNN_WG_REDUCE(NAME, T, COMBINE)                                                          \
    T NAME(__local T *buf, T v)                                                                   \
    {                                                                                             \
        const int lid = get_local_id(0);                                                          \
        buf[lid] = v;                                                                             \
        barrier(CLK_LOCAL_MEM_FENCE);                                                             \
        for (int s = get_local_size(0) / 2; s > 0; s >>= 1) {                                     \
            if (lid < s)                                                                          \
                buf[lid] = COMBINE(buf[lid], buf[lid + s]);                                       \
            barrier(CLK_LOCAL_MEM_FENCE);                                                         \
        }                                                                                         \
        v = buf[0];                                                                               \
        /* The buffer is free again only once everybody has read the total. */                    \
        barrier(CLK_LOCAL_MEM_FENCE);                                                             \
        return v;                                                                                 \
    }

#define PYNN_ADD(a, b) ((a) + (b))
#define PYNN_MAX(a, b) fmax((a), (b))

PYNN_WG_REDUCE(wg_sum_float, float, PYNN_ADD)
PYNN_WG_REDUCE(wg_max_float, float, PYNN_MAX)
PYNN_WG_REDUCE(wg_sum_int, int, PYNN_ADD)

/* The stage-2 kernels, only in the programs that reduce to scalars (they define
 * PYNN_SUM_PARTIALS before including this file). */
#ifdef PYNN_SUM_PARTIALS

/* Stage 2 of a scalar reduction: work-group g folds partials[g*n .. g*n + n) into out[g]
 * (one group per scalar: a single loss, or the three counts of confusion_counts). */
#define PYNN_SUM_PARTIALS_KERNEL(NAME, T, WG_REDUCE)                                              \
    __kernel __attribute__((reqd_work_group_size(WG_SIZE, 1, 1)))                               \
    void NAME(__global const T *partials, __global T *out, const int n)                           \
    {                                                                                             \
        __local T buf[WG_SIZE];                                                                   \
        __global const T *seg = partials + (size_t)get_group_id(0) * n;                           \
        T acc = 0;                                                                                \
        for (int i = get_local_id(0); i < n; i += WG_SIZE)                                        \
            acc += seg[i];                                                                        \
        acc = WG_REDUCE(buf, acc);                                                                \
        if (get_local_id(0) == 0)                                                                 \
            out[get_group_id(0)] = acc;                                                           \
    }

PYNN_SUM_PARTIALS_KERNEL(sum_partials_float, float, wg_sum_float)
PYNN_SUM_PARTIALS_KERNEL(sum_partials_int, int, wg_sum_int)

#endif /* PYNN_SUM_PARTIALS */

#endif /* PYNN_WG_REDUCE_H */
