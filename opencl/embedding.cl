/* Embedding, forward and backward side by side: Keras 3's Embedding. The twin of
 * native/embedding.pyx.
 *
 * Legend: M looked-up indices (index axes flattened), V vocabulary rows, D output_dim.
 * embedding_forward: one work-item per output element. The indices are read as they were
 * uploaded (INDEX_KIND 0 int, 1 long, 2 float), so the range check happens here: a bad
 * index (negative, >= V, or a float that is not a whole number) writes 0, never reads past
 * the table, and lowers *bad to its position with an int atomic_min (a flag, not data:
 * the output stays deterministic). The host reads *bad back and raises.
 * embedding_backward: one work-item per dtable element sums its row's occurrences in index
 * order from a grouping (starts, order) made on the host; no float atomics, so the same
 * inputs give the same bits.
 */
#include "common.h"

#ifndef INDEX_KIND
#define INDEX_KIND 0
#endif
#if INDEX_KIND == 1
#define INDEX_T long
#elif INDEX_KIND == 2
#define INDEX_T float
#else
#define INDEX_T int
#endif

__kernel void embedding_forward(__global const INDEX_T *indices, __global const float *table,
                                __global float *y, __global int *bad, const int M,
                                const int V, const int D)
{
    const int gid = get_global_id(0);
    GUARD(gid, M * D);
    const int m = gid / D;
    const int d = gid - m * D;
    const INDEX_T raw = indices[m];
#if INDEX_KIND == 2
    const int ok = raw >= 0.0f && raw < (float)V && raw == floor(raw);  /* NaN fails */
#else
    const int ok = raw >= 0 && raw < V;
#endif
    if (!ok) {
        y[gid] = 0.0f;
        if (d == 0)
            atomic_min(bad, m);
        return;
    }
    y[gid] = table[(size_t)(int)raw * D + d];
}

/* Row v of dtable is dy summed over order[starts[v]] .. order[starts[v + 1] - 1]. */
__kernel void embedding_backward(__global const float *dy, __global const int *starts,
                                 __global const int *order, __global float *dtable,
                                 const int V, const int D)
{
    const int gid = get_global_id(0);
    GUARD(gid, V * D);
    const int v = gid / D;
    const int d = gid - v * D;
    float acc = 0.0f;
    for (int k = starts[v]; k < starts[v + 1]; ++k)
        acc += dy[(size_t)order[k] * D + d];
    dtable[gid] = acc;
}
