/* Branch-free float32 gate activations for the recurrence kernels (native/rnn_mask.pyx):
 * the same Cephes-style functions native/rnn.pyx defines inline for its cells, kept in a
 * header of their own so the two kernel files can change independently. */
#ifndef PYNN_GATE_ACT_H
#define PYNN_GATE_ACT_H
#include <math.h>
#include <stdint.h>
#include <string.h>
/* float32 exp for the gate activations: Cephes' expf (Cody-Waite reduction by ln 2,
 * degree-5 polynomial, exponent set through the bits); sigmoid and tanh built on it are
 * within 2.5 ulp of the float64 values on [-30, 30] (inputs clamped to [-87, 88]).
 * Branch-free, so the row loops calling it vectorize, which libm's expf/tanhf do not
 * without -ffast-math. */
/* c ? a : b through the bits: GCC turns a plain ?: here into a branch around the
 * arithmetic feeding it, which only AVX-512's masked instructions let it vectorize. */
static inline float pynn_gate_self(int c, float a, float b) {
    int32_t ia, ib, r;
    const int32_t m = -(int32_t)(c != 0);
    float out;
    memcpy(&ia, &a, sizeof ia);
    memcpy(&ib, &b, sizeof ib);
    r = (ia & m) | (ib & ~m);
    memcpy(&out, &r, sizeof out);
    return out;
}
static inline float pynn_gate_expf(float x) {
    x = pynn_gate_self(x < 88.0f, x, 88.0f);
    x = pynn_gate_self(x > -87.0f, x, -87.0f);
    /* Round to nearest by adding and removing 1.5 * 2^23 (exact for |t| < 2^22):
     * floorf() would stop GCC from vectorizing the loop. */
    const float fx = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const float r = x - fx * 0.693359375f + fx * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    const int32_t bits = ((int32_t)fx + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}
static inline float pynn_gate_sigmoidf(float x) {
    return 1.0f / (1.0f + pynn_gate_expf(-x));
}
/* Cephes' tanhf: an odd polynomial below |x| = 0.625, 1 - 2/(exp(2|x|) + 1) above. */
static inline float pynn_gate_tanhf(float x) {
    const float ax = fabsf(x), z = x * x;
    const float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z
                           - 5.37397155531e-2f) * z + 1.33314422036e-1f) * z
                         - 3.33332819422e-1f) * z * x + x;
    const float big = copysignf(1.0f - 2.0f / (pynn_gate_expf(2.0f * ax) + 1.0f), x);
    return pynn_gate_self(ax < 0.625f, small, big);
}
#endif
