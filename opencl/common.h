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

/* Vector types and accesses by width w in {1, 2, 4}, w a macro or literal: FLOATN(1) is
 * plain float, so one code path serves the scalar and the vector builds. */
#define PYNN_CAT_(a, b) a##b
#define PYNN_CAT(a, b) PYNN_CAT_(a, b)
#define PYNN_FLOAT_1 float
#define PYNN_FLOAT_2 float2
#define PYNN_FLOAT_4 float4
#define FLOATN(w) PYNN_CAT(PYNN_FLOAT_, w)
/* One aligned load of w floats at p: the caller guarantees p is a multiple of w floats past
 * the start of a buffer (buffers are aligned far beyond 16 bytes). */
#define VREAD(w, p) (*(__global const FLOATN(w) *)(p))
/* Spill a FLOATN(w) into a private float[w] so elements can be indexed in a loop. */
#define PYNN_VSTORE_1(v, p) ((p)[0] = (v))
#define PYNN_VSTORE_2(v, p) vstore2((v), 0, (p))
#define PYNN_VSTORE_4(v, p) vstore4((v), 0, (p))
#define VSPILL(w, v, p) PYNN_CAT(PYNN_VSTORE_, w)(v, p)

#endif /* PYNN_COMMON_H */
