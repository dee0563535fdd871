/* Inverted dropout, forward and backward: the bit-exact twin of native/dropout.pyx (its
 * design note is the recipe; the steps below follow its numbering).
 *
 * Legend: n elements in C order (any shape), i the flat index, e = i + offset (mod 2^64).
 * 1. Philox4x32-10, exactly Random123's philox4x32_R(10, ctr, key).
 * 2. key = {seed & 0xffffffff, seed >> 32}.
 * 3. One generator call per element, ctr = {e & 0xffffffff, e >> 32, 0, 0}; word 0 is used.
 * 4. keep iff word0 >= threshold, threshold = floor(rate * 2^32) from the host.
 * 5. y = x * scale where kept, a literal 0 where dropped; scale = (float)(1 / (1 - rate)).
 * The mask is a pure function of (seed, offset, i): one work-item per element, any launch
 * shape gives the CPU's mask.
 */
#include "common.h"

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u
#define PHILOX_ROUNDS 10

uint4 philox4x32_10(uint4 c, uint k0, uint k1)
{
    for (int r = 0; r < PHILOX_ROUNDS; ++r) {
        if (r > 0) {
            k0 += PHILOX_W0;
            k1 += PHILOX_W1;
        }
        const uint hi0 = mul_hi(PHILOX_M0, c.x);
        const uint lo0 = PHILOX_M0 * c.x;
        const uint hi1 = mul_hi(PHILOX_M1, c.z);
        const uint lo1 = PHILOX_M1 * c.z;
        c = (uint4)(hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0);
    }
    return c;
}

__kernel void dropout_forward(__global const float *x, __global float *y,
                              __global uchar *mask, const int n, const ulong seed,
                              const ulong offset, const uint threshold, const float scale)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    const ulong e = (ulong)i + offset;
    const uint4 r = philox4x32_10((uint4)((uint)e, (uint)(e >> 32), 0u, 0u), (uint)seed,
                                  (uint)(seed >> 32));
    const int keep = r.x >= threshold;
    mask[i] = (uchar)keep;
    y[i] = keep ? x[i] * scale : 0.0f;
}

__kernel void dropout_backward(__global const float *dy, __global const uchar *mask,
                               __global float *dx, const int n, const float scale)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    dx[i] = mask[i] != 0 ? dy[i] * scale : 0.0f;
}

/* Known-answer hook for tests: out[j] = Philox4x32-10(ctr[j], key). */
__kernel void philox4x32_10_block(__global const uint4 *ctr, __global uint4 *out, const int n,
                                  const uint k0, const uint k1)
{
    const int j = get_global_id(0);
    GUARD(j, n);
    out[j] = philox4x32_10(ctr[j], k0, k1);
}

/* -- issue 12: noise layers (native/dropout.pyx's note for the recipe) ---------------------
 * spatial_dropout_apply: y = x * scale where mask[n, c], else 0, x viewed as (N, S, C); the
 * (N, C) mask comes from dropout_forward on an (N, C) array. It serves forward and backward.
 * gaussian_*: z from Box-Muller on words 0 and 1 of element i's Philox call, in float;
 * noise = fma(stddev, z, mean), then y = x + noise (GaussianNoise, mean 0) or y = x * noise
 * (GaussianDropout, mean 1).
 */
#define TWO_PI_F 6.28318530717958647692f
#define INV_2_32_F 2.3283064365386963e-10f

float philox_normal(const ulong e, const ulong seed)
{
    const uint4 r = philox4x32_10((uint4)((uint)e, (uint)(e >> 32), 0u, 0u), (uint)seed,
                                  (uint)(seed >> 32));
    const float u1 = ((float)r.x + 1.0f) * INV_2_32_F; /* in (0, 1] */
    const float u2 = (float)r.y * INV_2_32_F;
    return sqrt(-2.0f * log(u1)) * cos(TWO_PI_F * u2);
}

__kernel void spatial_dropout_apply(__global const float *x, __global const uchar *mask,
                                    __global float *y, const int n, const int spatial_channels,
                                    const int channels, const float scale)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    const int m = (i / spatial_channels) * channels + i % channels;
    y[i] = mask[m] != 0 ? x[i] * scale : 0.0f;
}

__kernel void gaussian_noise_forward(__global const float *x, __global float *y,
                                     __global float *noise, const int n, const ulong seed,
                                     const ulong offset, const float mean, const float stddev,
                                     const int multiply, const int keep_noise)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    const float v = fma(stddev, philox_normal((ulong)i + offset, seed), mean);
    if (keep_noise)
        noise[i] = v;
    y[i] = multiply ? x[i] * v : x[i] + v;
}

__kernel void gaussian_dropout_backward(__global const float *dy, __global const float *noise,
                                        __global float *dx, const int n)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    dx[i] = dy[i] * noise[i];
}

/* -- Keras 3's AlphaDropout (native/dropout.pyx's note for the recipe) -----------------------
 * The mask is dropout_forward's mask of a noise_shape array; x reads it broadcast: element i
 * of x, with index (i_0, ..., i_7) over dims d_k (leading axes of size 1), reads
 * mask[sum i_k * s_k], s_k 0 where noise_shape is 1. Forward y = fma(a, x, b) where kept, the
 * host's dropped = a*alpha_p + b where dropped; backward dx = dy * a where kept, else 0.
 */
__kernel void alpha_dropout_apply(__global const float *x, __global const uchar *mask,
                                  __global float *y, const int n, const int backward,
                                  const float a, const float b, const float dropped,
                                  const int d1, const int d2, const int d3, const int d4,
                                  const int d5, const int d6, const int d7, const int s0,
                                  const int s1, const int s2, const int s3, const int s4,
                                  const int s5, const int s6, const int s7)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    const int dims[7] = {d1, d2, d3, d4, d5, d6, d7};
    const int strides[8] = {s0, s1, s2, s3, s4, s5, s6, s7};
    int rest = i, at = 0;
    for (int k = 7; k > 0; --k) {
        at += (rest % dims[k - 1]) * strides[k];
        rest /= dims[k - 1];
    }
    const int keep = mask[at + rest * strides[0]] != 0;
    if (backward)
        y[i] = keep ? x[i] * a : 0.0f;
    else
        y[i] = keep ? fma(a, x[i], b) : dropped;
}
