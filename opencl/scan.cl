/* Scan kernels: keras.ops' cumsum/cumprod along one axis, the twin of native/scan.pyx.
 *
 * Legend: the input is read as (O, N, I); a line is the N values at one (o, i), I apart.
 * One work-item per line folds it in order (from the end for `reverse`), so each output is
 * the same sequential sum as the CPU's: no atomics, no dependence on the work-group size.
 * cumprod_backward is exact where x has zeros (see native/scan.pyx's design note).
 */
#include "common.h"

__kernel void scan_forward(__global const float *x, __global float *y, const int O,
                           const int N, const int I, const int code, const int reverse)
{
    const int line = get_global_id(0);
    GUARD(line, O * I);
    const int base = (line / I) * N * I + line % I;
    float acc = code == 0 ? 0.0f : 1.0f;
    for (int k = 0; k < N; ++k) {
        const int at = base + (reverse ? N - 1 - k : k) * I;
        acc = code == 0 ? acc + x[at] : acc * x[at];
        y[at] = acc;
    }
}

__kernel void cumprod_backward(__global const float *x, __global const float *dy,
                               __global float *dx, const int O, const int N, const int I)
{
    const int line = get_global_id(0);
    GUARD(line, O * I);
    const int base = (line / I) * N * I + line % I;
    int z = N;
    for (int k = 0; k < N; ++k) {
        if (x[base + k * I] == 0.0f) { z = k; break; }
    }
    float prod = 1.0f;
    for (int k = 0; k < z; ++k) {
        prod *= x[base + k * I];
        dx[base + k * I] = prod;  /* y[k], kept for the reversed pass */
    }
    float acc = 0.0f;
    for (int k = z - 1; k >= 0; --k) {
        acc += dy[base + k * I] * dx[base + k * I];
        dx[base + k * I] = acc / x[base + k * I];
    }
    if (z < N) {
        /* the terms from the first zero on, that zero taken as 1 */
        acc = dy[base + z * I] * prod;
        for (int k = z + 1; k < N; ++k) {
            prod *= x[base + k * I];
            acc += dy[base + k * I] * prod;
            dx[base + k * I] = 0.0f;
        }
        dx[base + z * I] = acc;
    }
}
