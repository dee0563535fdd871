/* Elementwise kernels of pynn.ops (issue 13): unary functions, broadcasting binary ones and
 * reductions over contiguous runs. The twin of native/elementwise.pyx; op codes are the
 * indices of api.ELEMENTWISE_UNARY / ELEMENTWISE_BINARY / REDUCTIONS.
 *
 * One work-item per output element. binary: the output's shape d0..d5 (padded in front with
 * 1s) and each operand's stride along every output axis (0 where it broadcasts).
 * reduce_rows: the host moved the reduced axes last (the shape family's transpose), so each
 * output folds its contiguous run of `inner` values in order: deterministic, no atomics.
 */
#include "common.h"

/* erf's inverse (OpenCL C has none): Giles' single-precision polynomial (relative error below
 * 4e-7), then one Newton step on erf(x) - v to absorb the polynomial's last ulps. */
inline float erfinv_f(const float v)
{
    if (isnan(v) || v < -1.0f || v > 1.0f) return NAN;
    if (v == 1.0f || v == -1.0f) return v * INFINITY;
    float w = -log((1.0f - v) * (1.0f + v));
    float p;
    if (w < 5.0f) {
        w = w - 2.5f;
        p = 2.81022636e-08f;
        p = 3.43273939e-07f + p * w;
        p = -3.5233877e-06f + p * w;
        p = -4.39150654e-06f + p * w;
        p = 0.00021858087f + p * w;
        p = -0.00125372503f + p * w;
        p = -0.00417768164f + p * w;
        p = 0.246640727f + p * w;
        p = 1.50140941f + p * w;
    } else {
        w = sqrt(w) - 3.0f;
        p = -0.000200214257f;
        p = 0.000100950558f + p * w;
        p = 0.00134934322f + p * w;
        p = -0.00367342844f + p * w;
        p = 0.00573950773f + p * w;
        p = -0.0076224613f + p * w;
        p = 0.00943887047f + p * w;
        p = 1.00167406f + p * w;
        p = 2.83297682f + p * w;
    }
    const float x = p * v;
    return x - (erf(x) - v) / (1.1283791671f * exp(-x * x));
}

/* Beyond this |x| the asymptotic series of I_nu is used (see native/elementwise.pyx). */
#ifndef BESSEL_ASYMPTOTIC_FROM
#define BESSEL_ASYMPTOTIC_FROM 30.0f
#endif
#ifndef ASYMPTOTIC_TERMS
#define ASYMPTOTIC_TERMS 8
#endif

/* The modified Bessel function I_0 or I_1 (OpenCL C has neither): the power series, whose
 * terms are all positive, up to |x| = 30; e^|x| / sqrt(2 pi |x|) times the asymptotic
 * series beyond. I_0 is even, I_1 odd. */
inline float bessel_i_f(const float v, const int order)
{
    if (isnan(v)) return v;
    const float x = fabs(v);
    float total, term;
    if (x <= BESSEL_ASYMPTOTIC_FROM) {
        term = order == 0 ? 1.0f : 0.5f * x;
        total = term;
        const float quarter = 0.25f * x * x;
        for (int k = 1; term > total * 1e-8f; ++k) {
            term = term * quarter / (float)(k * (k + order));
            total += term;
        }
    } else {
        const float nu4 = 4.0f * order * order;
        term = 1.0f;
        total = 1.0f;
        for (int k = 1; k <= ASYMPTOTIC_TERMS; ++k) {
            term = term * ((float)((2 * k - 1) * (2 * k - 1)) - nu4) / (8.0f * k * x);
            total += term;
        }
        total = total * exp(x) / sqrt(2.0f * M_PI_F * x);
    }
    return order == 1 && v < 0.0f ? -total : total;
}

inline float unary_op(const float v, const int code)
{
    switch (code) {
    case 0: return -v;
    case 1: return fabs(v);
    case 2: return (float)((v > 0.0f) - (v < 0.0f));
    case 3: return exp(v);
    case 4: return expm1(v);
    case 5: return log(v);
    case 6: return log1p(v);
    case 7: return sqrt(v);
    case 8: return v * v;
    case 9: return 1.0f / v;
    case 10: return sin(v);
    case 11: return cos(v);
    case 12: return tan(v);
    case 13: return asin(v);
    case 14: return acos(v);
    case 15: return atan(v);
    case 16: return sinh(v);
    case 17: return cosh(v);
    case 18: return tanh(v);
    case 19: return asinh(v);
    case 20: return acosh(v);
    case 21: return atanh(v);
    case 22: return floor(v);
    case 23: return ceil(v);
    case 24: return rint(v); /* round: half to even, as NumPy */
    case 25: return erf(v);
    case 26: return erfc(v);
    case 27: return erfinv_f(v);
    case 28: return bessel_i_f(v, 0);
    default: return bessel_i_f(v, 1); /* i1: i0's derivative */
    }
}

inline float binary_op(const float a, const float b, const int code)
{
    switch (code) {
    case 0: return a + b;
    case 1: return a - b;
    case 2: return a * b;
    case 3: return a / b;
    case 4: return (a >= b || isnan(a)) ? a : b; /* NaN propagates, as np.maximum */
    case 5: return (a <= b || isnan(a)) ? a : b;
    case 6: return pow(a, b);
    case 7: return atan2(a, b);
    case 8: return (float)(a == b);
    case 9: return (float)(a > b);
    case 10: return (float)(a >= b);
    case 11: return (float)(a < b);
    case 12: return (float)(a <= b);
    default: return nextafter(a, b);
    }
}

__kernel void elementwise_unary(__global const float *x, __global float *y, const int n,
                                const int code)
{
    const int gid = get_global_id(0);
    GUARD(gid, n);
    y[gid] = unary_op(x[gid], code);
}

__kernel void elementwise_binary(__global const float *a, __global const float *b,
                                 __global float *y, const int n, const int code,
                                 const int d0, const int d1, const int d2, const int d3,
                                 const int d4, const int d5, const int a0, const int a1,
                                 const int a2, const int a3, const int a4, const int a5,
                                 const int b0, const int b1, const int b2, const int b3,
                                 const int b4, const int b5)
{
    const int gid = get_global_id(0);
    GUARD(gid, n);
    int t = gid, i;
    size_t oa = 0, ob = 0;
    i = t % d5; oa += (size_t)i * a5; ob += (size_t)i * b5; t /= d5;
    i = t % d4; oa += (size_t)i * a4; ob += (size_t)i * b4; t /= d4;
    i = t % d3; oa += (size_t)i * a3; ob += (size_t)i * b3; t /= d3;
    i = t % d2; oa += (size_t)i * a2; ob += (size_t)i * b2; t /= d2;
    i = t % d1; oa += (size_t)i * a1; ob += (size_t)i * b1; t /= d1;
    oa += (size_t)t * a0;
    ob += (size_t)t * b0;
    (void)d0;
    y[gid] = binary_op(a[oa], b[ob], code);
}

__kernel void reduce_rows(__global const float *x, __global float *y, const int outer,
                          const int inner, const int code)
{
    const int o = get_global_id(0);
    GUARD(o, outer);
    __global const float *row = x + (size_t)o * inner;
    float acc = code == 0 ? 0.0f : (code == 3 ? 1.0f : row[0]);
    for (int i = 0; i < inner; ++i) {
        const float v = row[i];
        if (code == 0) acc += v;
        else if (code == 1) acc = (v > acc || isnan(v)) ? v : acc;
        else if (code == 2) acc = (v < acc || isnan(v)) ? v : acc;
        else acc *= v;
    }
    y[o] = acc;
}

/* -- opsm: integer ops on int32 (api.INTEGER_BINARY), NumPy's results: shifts past the width
 * or by a negative count give 0 (left) or the sign alone (right); gcd/lcm on magnitudes in
 * unsigned arithmetic (|INT_MIN| wraps as NumPy's). */
inline uint gcd_u(uint x, uint y)
{
    while (y) {
        const uint t = x % y;
        x = y;
        y = t;
    }
    return x;
}

inline int integer_op(const int a, const int b, const int code)
{
    const uint ua = a < 0 ? (uint)0 - (uint)a : (uint)a;
    const uint ub = b < 0 ? (uint)0 - (uint)b : (uint)b;
    switch (code) {
    case 0: return a & b;
    case 1: return a | b;
    case 2: return a ^ b;
    case 3: return (b < 0 || b >= 32) ? 0 : (int)((uint)a << b);
    case 4: return (b < 0 || b >= 32) ? (a < 0 ? -1 : 0) : a >> b;
    case 5: return (int)gcd_u(ua, ub);
    default: {
        const uint g = gcd_u(ua, ub);
        return g == 0 ? 0 : (int)(ua / g * ub);
    }
    }
}

__kernel void integer_binary(__global const int *a, __global const int *b, __global int *y,
                             const int n, const int code, const int d0, const int d1,
                             const int d2, const int d3, const int d4, const int d5,
                             const int a0, const int a1, const int a2, const int a3,
                             const int a4, const int a5, const int b0, const int b1,
                             const int b2, const int b3, const int b4, const int b5)
{
    const int gid = get_global_id(0);
    GUARD(gid, n);
    int t = gid, i;
    size_t oa = 0, ob = 0;
    i = t % d5; oa += (size_t)i * a5; ob += (size_t)i * b5; t /= d5;
    i = t % d4; oa += (size_t)i * a4; ob += (size_t)i * b4; t /= d4;
    i = t % d3; oa += (size_t)i * a3; ob += (size_t)i * b3; t /= d3;
    i = t % d2; oa += (size_t)i * a2; ob += (size_t)i * b2; t /= d2;
    i = t % d1; oa += (size_t)i * a1; ob += (size_t)i * b1; t /= d1;
    oa += (size_t)t * a0;
    ob += (size_t)t * b0;
    (void)d0;
    y[gid] = integer_op(a[oa], b[ob], code);
}
