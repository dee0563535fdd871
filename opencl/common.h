/* Shared macros of pynn's OpenCL kernels (OpenCL C 1.2, float32 data, int32 sizes).
 * Included by every .cl file through the `-I <opencl dir>` build option. */
#ifndef PYNN_COMMON_H
#define PYNN_COMMON_H

/* Work-group size of 1-D elementwise/reduction kernels; host code reads the same default. */
#ifndef WG_SIZE
#define WG_SIZE 256
#endif

/* Integer ceiling division for tile counts. */
#define CEIL_DIV(a, b) (((a) + (b) - 1) / (b))

/* Leave a work-item whose id falls past `n` (global sizes are rounded up to the local size). */
#define GUARD(id, n) \
    if ((id) >= (n)) return

#endif /* PYNN_COMMON_H */
