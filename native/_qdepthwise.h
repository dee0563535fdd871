/* int8 depthwise convolution's inner loop (issue 18, native/quant.pyx): one tap of one output
 * pixel, acc[ch] += (x[ch] - zero_point) * w[ch] over the channels (depth multiplier 1).
 * In C for `restrict`: uint8 data may alias anything, and without it GCC's vectorized loop
 * sits behind a run-time overlap check per call. (x - zp) * w fits in int16 (255 * 127), so
 * the products vectorize as 16-bit multiplies widened into the int32 sums. */
#ifndef PYNN_QDEPTHWISE_H
#define PYNN_QDEPTHWISE_H
#include <stddef.h>
#include <stdint.h>
#include <math.h>

static inline void pynn_qdw_tap(int32_t *restrict acc, const uint8_t *restrict x,
                                const int8_t *restrict w, ptrdiff_t c, int32_t zero_point)
{
    for (ptrdiff_t i = 0; i < c; ++i)
        acc[i] += (int32_t)(int16_t)(((int16_t)x[i] - (int16_t)zero_point) * (int16_t)w[i]);
}

/* One tap (row iy of the input, column offset ix0 = j * dw - pl) for a whole output row:
 * acc (wo, c) += (x[ox * sw + ix0] - zp) * w over the ox whose column lies inside the input
 * (the rest read padding, the zero point, which adds nothing). x: the input row (w_in, c). */
static inline void pynn_qdw_row_tap(int32_t *restrict acc, const uint8_t *restrict x,
                                    const int8_t *restrict w, ptrdiff_t c, ptrdiff_t wo,
                                    ptrdiff_t w_in, ptrdiff_t sw, ptrdiff_t ix0,
                                    int32_t zero_point)
{
    ptrdiff_t first = ix0 >= 0 ? 0 : (-ix0 + sw - 1) / sw;
    ptrdiff_t last = w_in - 1 - ix0 < 0 ? -1 : (w_in - 1 - ix0) / sw;  /* inclusive */
    if (last > wo - 1)
        last = wo - 1;
    for (ptrdiff_t ox = first; ox <= last; ++ox)
        pynn_qdw_tap(acc + ox * c, x + (ox * sw + ix0) * c, w, c, zero_point);
}

/* The epilogue over one output pixel's C * M sums, int8_dense_forward's: sat_int32(acc +
 * bias) (in int64), times the float32 multiplier, then uint8 requantization (clamped to
 * [lo, 255]) or float32 (relu: max(., 0)). In C so the loop vectorizes (the same roundings as
 * native/quant.pyx's requantize: rintf, then the zero point, then the clamps). */
static inline int32_t pynn_qdw_sat(int32_t acc, int32_t bias)
{
    int64_t t = (int64_t)acc + (int64_t)bias;
    t = t < INT32_MIN ? INT32_MIN : t;
    t = t > INT32_MAX ? INT32_MAX : t;
    return (int32_t)t;
}

static inline void pynn_qdw_epilogue_u8(const int32_t *restrict acc,
                                        const int32_t *restrict bias,
                                        const float *restrict mult, uint8_t *restrict y,
                                        ptrdiff_t cm, float zero_point, float lo)
{
    for (ptrdiff_t u = 0; u < cm; ++u) {
        float r = rintf((float)pynn_qdw_sat(acc[u], bias[u]) * mult[u]) + zero_point;
        r = r < lo ? lo : r;
        r = r > 255.0f ? 255.0f : r;
        y[u] = (uint8_t)r;
    }
}

static inline void pynn_qdw_epilogue_f32(const int32_t *restrict acc,
                                         const int32_t *restrict bias,
                                         const float *restrict mult, float *restrict y,
                                         ptrdiff_t cm, int relu)
{
    if (relu) {
        for (ptrdiff_t u = 0; u < cm; ++u) {
            const float v = (float)pynn_qdw_sat(acc[u], bias[u]) * mult[u];
            y[u] = v < 0.0f ? 0.0f : v;
        }
    } else {
        for (ptrdiff_t u = 0; u < cm; ++u)
            y[u] = (float)pynn_qdw_sat(acc[u], bias[u]) * mult[u];
    }
}

#endif
