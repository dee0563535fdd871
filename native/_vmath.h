/* Branch-free float32 transcendental functions for the elementwise loops: activations
 * (_activation.pxd: forward, backward, the GEMM epilogues, softmax) and the recurrent
 * cells' gates (_gate_act.h). libm's expf/tanhf/erff are calls GCC cannot vectorize
 * without -ffast-math, and Cython's libc.math names are the double functions besides:
 * tanh over 256 Ki float32 took 4.1 ms on one Zen 4 core, PyTorch's 0.68. Written with
 * bit selects instead of branches, every loop that calls these vectorizes, and the same
 * expression gives the same bits wherever an element lands (a scalar tail, another thread).
 *
 * Accuracy (float32 against float64 on wide random ranges, tests/test_vmath.py): exp 1
 * ulp, tanh 1.3, expm1 (elu) 1.7, sigmoid 2.4, log1p (softplus) 2.5, silu 2.6, mish 3.3;
 * erfc (gelu) 1.3e-6 relative for |x| <= 5. NaN propagates, overflow gives inf, subnormal
 * results round once. The recurrent gates take pynn_gate_*: e^x saturated outside
 * [-87, 88], the same bits inside.
 * Methods and coefficients: Cody-Waite reduction and Cephes' polynomials for exp, log and
 * tanh; Numerical Recipes' Chebyshev fit for erfc above 1, pynn's own least-squares fit
 * below. */
#ifndef PYNN_VMATH_H
#define PYNN_VMATH_H
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Every function here is forced inline: where GCC's inliner ran out of budget (a caller
 * holding many of these loops, as act_forward_vec once inlined into a worker job), it kept
 * pynn_expf as a call and the loop around it scalar: sigmoid, silu and elu over 441 Ki
 * float32 took 2.1-3.0 ms on the Intel Xeon against 0.16 ms vectorized (perf: the time in an
 * out-of-line pynn_expf). */
#if defined(__GNUC__)
#define PYNN_VMATH_INLINE __attribute__((always_inline))
#else
#define PYNN_VMATH_INLINE
#endif

/* c ? a : b through the bits: GCC turns a plain ?: here into a branch around the
 * arithmetic feeding it, which only AVX-512's masked instructions let it vectorize. */
static inline PYNN_VMATH_INLINE float pynn_selectf(int c, float a, float b) {
    int32_t ia, ib, r;
    const int32_t m = -(int32_t)(c != 0);
    float out;
    memcpy(&ia, &a, sizeof ia);
    memcpy(&ib, &b, sizeof ib);
    r = (ia & m) | (ib & ~m);
    memcpy(&out, &r, sizeof out);
    return out;
}

/* x = n ln2 + r, |r| <= ln2 / 2 (ln2 in two parts, so r is exact): e^r by a degree-7
 * polynomial, returned, and n. n is read from the rounding constant's bits, not converted
 * from float (NaN would make that undefined); xc must lie within [-150 ln2, 144 ln2]. */
static inline PYNN_VMATH_INLINE float pynn_exp_reduced(float xc, int32_t* n) {
    /* Round to nearest by adding and removing 1.5 * 2^23 (exact for |t| < 2^22):
     * floorf() would stop GCC from vectorizing the loop. */
    const float big = xc * 1.44269504088896341f + 12582912.0f;
    const float fx = big - 12582912.0f;
    const float r = xc - fx * 0.693359375f + fx * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    int32_t bits;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    memcpy(&bits, &big, sizeof bits);
    *n = bits - 0x4B400000;   /* the bits of 1.5 * 2^23 */
    return p * (r * r) + r + 1.0f;
}

/* 2^n for n in [-126, 127] (any other n gives some float, never undefined behaviour) */
static inline PYNN_VMATH_INLINE float pynn_pow2i(int32_t n) {
    const uint32_t bits = (uint32_t)(n + 127) << 23;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* e^x. The clamps keep NaN (a false compare leaves x); 2^n goes on as two exact factors
 * (n in [-150, 144]), so overflow gives inf and subnormal results round once, with no
 * select after the polynomial. */
static inline PYNN_VMATH_INLINE float pynn_expf(float x) {
    float xc = pynn_selectf(x > 100.0f, 100.0f, x);    /* e^100 overflows: inf */
    xc = pynn_selectf(xc < -104.0f, -104.0f, xc);       /* e^-104 rounds to 0 */
    int32_t n;
    const float p = pynn_exp_reduced(xc, &n);
    const int32_t h = n >> 1;
    return (p * pynn_pow2i(h)) * pynn_pow2i(n - h);
}

/* The recurrent gates' e^x, saturated to [e^-87, e^88] (sigmoid and tanh of it are already
 * their float32 limits) with one scaling: 20% faster than pynn_expf in the gate loops, the
 * same bits inside that range. */
static inline PYNN_VMATH_INLINE float pynn_gate_expf(float x) {
    float xc = pynn_selectf(x > 88.0f, 88.0f, x);
    xc = pynn_selectf(xc < -87.0f, -87.0f, xc);
    int32_t n;
    const float p = pynn_exp_reduced(xc, &n);
    return p * pynn_pow2i(n);
}

/* e^x - 1: Taylor's series to x^8 / 8! for |x| < 0.5 (where e^x - 1 would cancel),
 * e^x - 1 above. */
static inline PYNN_VMATH_INLINE float pynn_expm1f(float x) {
    float p = 2.4801587302e-5f;              /* 1/8! */
    p = p * x + 1.9841269841e-4f;            /* 1/7! */
    p = p * x + 1.3888888889e-3f;
    p = p * x + 8.3333333333e-3f;
    p = p * x + 4.1666666667e-2f;
    p = p * x + 1.6666666667e-1f;
    p = p * x + 0.5f;
    /* copysignf: -0 + +0 rounds to +0, and expm1(-0) is -0 */
    const float small = copysignf(p * (x * x) + x, x);
    return pynn_selectf(fabsf(x) < 0.5f, small, pynn_expf(x) - 1.0f);
}

/* ln(x) for normal positive x (callers pass only those): x = m 2^e with m in
 * [sqrt(1/2), sqrt(2)), a polynomial in f = m - 1. */
static inline PYNN_VMATH_INLINE float pynn_logf_normal(float x) {
    int32_t ix;
    memcpy(&ix, &x, sizeof ix);
    float e = (float)((ix >> 23) - 126);
    const int32_t im = (ix & 0x007fffff) | 0x3f000000;  /* m in [0.5, 1) */
    float m;
    memcpy(&m, &im, sizeof m);
    const int low = m < 0.70710678118654752f;
    e = pynn_selectf(low, e - 1.0f, e);
    const float f = pynn_selectf(low, m + m - 1.0f, m - 1.0f);
    const float z = f * f;
    float y = 7.0376836292e-2f;
    y = y * f - 1.1514610310e-1f;
    y = y * f + 1.1676998740e-1f;
    y = y * f - 1.2420140846e-1f;
    y = y * f + 1.4249322787e-1f;
    y = y * f - 1.6668057665e-1f;
    y = y * f + 2.0000714765e-1f;
    y = y * f - 2.4999993993e-1f;
    y = y * f + 3.3333331174e-1f;
    y = y * f * z;
    y = y - 2.12194440e-4f * e;
    y = y - 0.5f * z;
    return f + y + 0.693359375f * e;
}

/* ln(1 + u) for u >= 0 (and NaN): ln(w) u / (w - 1) with w = 1 + u rounded, which puts
 * back what the rounding of w lost; u where w rounds to 1. */
static inline PYNN_VMATH_INLINE float pynn_log1pf(float u) {
    const float w = 1.0f + u;
    const float l = pynn_logf_normal(w) * u / (w - 1.0f);
    return pynn_selectf(w == 1.0f, u, pynn_selectf(u > 3.40282347e38f, INFINITY, l));
}

static inline PYNN_VMATH_INLINE float pynn_sigmoidf(float x) {
    return 1.0f / (1.0f + pynn_expf(-x));
}

static inline PYNN_VMATH_INLINE float pynn_gate_sigmoidf(float x) {
    return 1.0f / (1.0f + pynn_gate_expf(-x));
}

/* Cephes' tanhf from e2ax = e^(2|x|): an odd polynomial below |x| = 0.625,
 * 1 - 2/(e2ax + 1) above. */
static inline PYNN_VMATH_INLINE float pynn_tanh_from(float x, float e2ax) {
    const float ax = fabsf(x), z = x * x;
    const float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z
                           - 5.37397155531e-2f) * z + 1.33314422036e-1f) * z
                         - 3.33332819422e-1f) * z * x + x;
    const float big = copysignf(1.0f - 2.0f / (e2ax + 1.0f), x);
    return pynn_selectf(ax < 0.625f, small, big);
}

static inline PYNN_VMATH_INLINE float pynn_tanhf(float x) {
    /* copysignf: the polynomial's -0 + +0 rounds to +0, and tanh(-0) is -0 */
    return copysignf(pynn_tanh_from(x, pynn_expf(2.0f * fabsf(x))), x);
}

static inline PYNN_VMATH_INLINE float pynn_gate_tanhf(float x) {
    return pynn_tanh_from(x, pynn_gate_expf(2.0f * fabsf(x)));
}

/* erfc(x) = 1 - erf(x). Below |x| = 1: 1 - x P(x^2), P a degree-6 least-squares fit of
 * erf(x)/x on Chebyshev nodes (relative 1.4e-9; pynn's own fit). Above: t e^(-x^2 + Q(t)),
 * t = 1 / (1 + |x|/2), Q Numerical Recipes' degree-9 Chebyshev fit (relative 1.2e-7 in exact
 * arithmetic; e^-x^2 takes x^2's rounding: up to 1e-6 relative in float32), 2 - that below
 * 0. */
static inline PYNN_VMATH_INLINE float pynn_erfcf(float x) {
    const float ax = fabsf(x), u = x * x;
    float q = 7.898210210369025e-05f;
    q = q * u - 8.02435412953297e-04f;
    q = q * u + 5.1900535779179505e-03f;
    q = q * u - 2.6854808537260747e-02f;
    q = q * u + 1.1283612428245772e-01f;
    q = q * u - 3.761262884332526e-01f;
    q = q * u + 1.1283791665100527f;
    const float near = 1.0f - x * q;
    const float t = 1.0f / (1.0f + 0.5f * ax);
    float p = 0.17087277f;
    p = p * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t - 1.26551223f;
    const float r = t * pynn_expf(p - u);
    return pynn_selectf(ax < 1.0f, near, pynn_selectf(x < 0.0f, 2.0f - r, r));
}

/* -- activations (the expressions _activation.pxd's float32 loops and act_value share) -- */

#define PYNN_SELU_ALPHA_F 1.67326324235437728f
#define PYNN_SELU_SCALE_F 1.05070098735548049f

static inline PYNN_VMATH_INLINE float pynn_elu_f(float x, float alpha) {
    return pynn_selectf(x > 0.0f, x, alpha * pynn_expm1f(x));
}

static inline PYNN_VMATH_INLINE float pynn_selu_f(float x) {
    return pynn_selectf(x > 0.0f, PYNN_SELU_SCALE_F * x,
                        (PYNN_SELU_SCALE_F * PYNN_SELU_ALPHA_F) * pynn_expm1f(x));
}

/* The exact GELU (Keras's default): x Phi(x) = x erfc(-x / sqrt 2) / 2. */
static inline PYNN_VMATH_INLINE float pynn_gelu_f(float x) {
    return 0.5f * x * pynn_erfcf(-0.70710678118654752f * x);
}

/* Phi(x) + x phi(x) */
static inline PYNN_VMATH_INLINE float pynn_gelu_grad_f(float x) {
    return 0.5f * pynn_erfcf(-0.70710678118654752f * x)
        + x * 0.39894228040143268f * pynn_expf(-0.5f * x * x);
}

/* max(x, 0) + ln(1 + e^-|x|): no overflow on either side */
static inline PYNN_VMATH_INLINE float pynn_softplus_f(float x) {
    /* a select, not fmaxf: GCC calls libm's fmaxf, which keeps the loop scalar */
    return pynn_selectf(x > 0.0f, x, 0.0f) + pynn_log1pf(pynn_expf(-fabsf(x)));
}

static inline PYNN_VMATH_INLINE float pynn_silu_f(float x) {
    return x * pynn_sigmoidf(x);
}

static inline PYNN_VMATH_INLINE float pynn_silu_grad_f(float x) {
    const float s = pynn_sigmoidf(x);
    return s * (1.0f + x * (1.0f - s));
}

static inline PYNN_VMATH_INLINE float pynn_mish_f(float x) {
    return x * pynn_tanhf(pynn_softplus_f(x));
}

static inline PYNN_VMATH_INLINE float pynn_mish_grad_f(float x) {
    const float t = pynn_tanhf(pynn_softplus_f(x));
    return t + x * (1.0f - t * t) * pynn_sigmoidf(x);
}

/* -- Keras 3's remaining activations (act): celu, log_sigmoid, tanh_shrink -- */
static inline PYNN_VMATH_INLINE float pynn_celu_f(float x, float alpha) {
    return pynn_selectf(x > 0.0f, x, alpha * pynn_expm1f(x / alpha));
}

/* min(x, 0) - ln(1 + e^-|x|) = -softplus(-x) */
static inline PYNN_VMATH_INLINE float pynn_log_sigmoid_f(float x) {
    return -pynn_softplus_f(-x);
}

static inline PYNN_VMATH_INLINE float pynn_tanh_shrink_f(float x) {
    return x - pynn_tanhf(x);
}

/* The largest of x[0..n), n >= 1, over 16 lanes, then across them (exact in any order; a
 * NaN is skipped unless x[0] is one: the exponentials of a row with one are NaN anyway). */
static inline PYNN_VMATH_INLINE float pynn_max_f(const float* x, ptrdiff_t n) {
    ptrdiff_t j = 1, l;
    float m = x[0], top[16];
    if (n >= 32) {
        for (l = 0; l < 16; l++)
            top[l] = x[l];
        for (j = 16; j + 16 <= n; j += 16)
            for (l = 0; l < 16; l++)
                top[l] = x[j + l] > top[l] ? x[j + l] : top[l];
        for (l = 1; l < 16; l++)
            m = top[l] > m ? top[l] : m;
        m = top[0] > m ? top[0] : m;
    }
    for (; j < n; j++)
        m = x[j] > m ? x[j] : m;
    return m;
}

/* sum of e^(x[j] - m) in double, eight lanes added in a fixed order (so the loop
 * vectorizes and any caller gets the same bits); out (may be x, or NULL) keeps the
 * exponentials. */
static inline double pynn_exp_sum_f(const float* x, float m, float* out, ptrdiff_t n) {
    ptrdiff_t j, l;
    double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0}, s;
    if (out) {
        for (j = 0; j < n; j++)
            out[j] = pynn_expf(x[j] - m);
        for (j = 0; j + 8 <= n; j += 8)
            for (l = 0; l < 8; l++)
                lane[l] += (double)out[j + l];
    } else {
        for (j = 0; j + 8 <= n; j += 8)
            for (l = 0; l < 8; l++)
                lane[l] += (double)pynn_expf(x[j + l] - m);
    }
    s = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
    for (; j < n; j++)   /* out[j] where kept: x may be out, overwritten */
        s += (double)(out ? out[j] : pynn_expf(x[j] - m));
    return s;
}

/* softmax over one row (y may be z): each e^(z - max) times the reciprocal of their sum,
 * in double, rounded once. */
static inline void pynn_softmax_row_f(const float* z, float* y, ptrdiff_t cols) {
    ptrdiff_t j;
    const double r = 1.0 / pynn_exp_sum_f(z, pynn_max_f(z, cols), y, cols);
    /* a product per element, not a quotient: 1.6x faster at 1024 columns */
    for (j = 0; j < cols; j++)
        y[j] = (float)((double)y[j] * r);
}

/* The softmax Jacobian-vector product over one row, from the output: dx = y (dy - sum dy y)
 * (dx may be dy), the dot in double over eight lanes in a fixed order (a running double sum
 * took 4 cycles an element: 1.7 ms for 128 x 10,000 against PyTorch's 0.9). */
static inline void pynn_softmax_grad_row_f(const float* dy, const float* y, float* dx,
                                           ptrdiff_t cols) {
    double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0}, dot;
    ptrdiff_t j = 0, l;
    for (; j + 8 <= cols; j += 8)
        for (l = 0; l < 8; l++)
            lane[l] += (double)dy[j + l] * (double)y[j + l];
    dot = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
    for (; j < cols; j++)
        dot += (double)dy[j] * (double)y[j];
    for (j = 0; j < cols; j++)
        dx[j] = (float)((double)y[j] * ((double)dy[j] - dot));
}
#endif
