"""Inverted dropout with a counter-based generator: forward and backward side by side.

Legend: n elements of x in C order (any shape), i the flat index, e = i + offset.

The mask is a pure function of (seed, offset, i), so it is the same for any thread count,
and the OpenCL twin (opencl/dropout.cl) reproduces it bit for bit from this recipe:

1. Generator: Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy
   as 1, 2, 3", SC 2011), exactly Random123's ``philox4x32_R(10, ctr, key)``: multipliers
   0xD2511F53 / 0xCD9E8D57, Weyl key increments 0x9E3779B9 / 0xBB67AE85, 10 rounds, the key
   bumped between rounds (9 bumps). Checked against Random123's known-answer vectors.
2. Key: the 64-bit seed, key = {seed & 0xffffffff, seed >> 32}.
3. Counter: one generator call per element, e = (i + offset) mod 2^64,
   ctr = {e & 0xffffffff, e >> 32, 0, 0}. Only output word 0 is used.
4. Keep/drop in integers: threshold = floor(rate * 2^32), computed on the host in double
   (exact: a power-of-two scaling) and passed as a uint32 (rate < 1 keeps it <= 2^32 - 1);
   keep iff out[0] >= threshold. P(keep) = 1 - threshold / 2^32; rate 0 keeps everything.
5. Values: scale = (dtype)(1 / (1 - rate)) computed on the host in double, then one
   correctly rounded multiply: y = x * scale where kept, y = 0 where dropped (a literal 0,
   not x * 0, so inf/nan inputs do not leak). Backward: dx = dy * scale where mask, else 0.
   mask is uint8, 1 keep / 0 drop.

A layer draws fresh masks by advancing ``offset`` by x.size after each call with a fixed seed
(Keras: survivors scaled by 1/(1-rate), identity outside training).
"""

import numpy as np

from libc.stdint cimport uint8_t, uint32_t, uint64_t

from _activation cimport floating
from _openmp cimport omp_get_max_threads

from pynn.backend.operands import dropout as operands
from pynn.backend.operands.common import HOST

include "_team.pxi"

# Below this many elements dropout runs on the calling thread; chunks of CHUNK elements per
# item of its backward.
cdef enum:
    PARALLEL_MIN = 32768
    CHUNK = 4096

cdef extern from *:
    """
    #define PYNN_PHILOX_M0 0xD2511F53u
    #define PYNN_PHILOX_M1 0xCD9E8D57u
    #define PYNN_PHILOX_W0 0x9E3779B9u
    #define PYNN_PHILOX_W1 0xBB67AE85u
    """
    uint32_t PHILOX_M0 "PYNN_PHILOX_M0"
    uint32_t PHILOX_M1 "PYNN_PHILOX_M1"
    uint32_t PHILOX_W0 "PYNN_PHILOX_W0"
    uint32_t PHILOX_W1 "PYNN_PHILOX_W1"

cdef enum:
    PHILOX_ROUNDS = 10


cdef inline void philox4x32_10(uint32_t* ctr, uint32_t k0, uint32_t k1) noexcept nogil:
    """In place: ctr (4 words) becomes Philox4x32-10(ctr, key={k0, k1})."""
    cdef uint64_t p0, p1
    cdef uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3]
    cdef int r
    for r in range(PHILOX_ROUNDS):
        if r > 0:
            k0 = k0 + PHILOX_W0
            k1 = k1 + PHILOX_W1
        p0 = <uint64_t>PHILOX_M0 * c0
        p1 = <uint64_t>PHILOX_M1 * c2
        c0 = <uint32_t>(p1 >> 32) ^ c1 ^ k0
        c2 = <uint32_t>(p0 >> 32) ^ c3 ^ k1
        c1 = <uint32_t>p1
        c3 = <uint32_t>p0
    ctr[0] = c0
    ctr[1] = c1
    ctr[2] = c2
    ctr[3] = c3


def philox4x32_10_block(counter, key):
    """Random123's philox4x32_R(10, counter, key) for 4 counter and 2 key words (tests)."""
    cdef uint32_t ctr[4]
    c, k = operands.philox4x32_10_block(counter, key)
    for j in range(4):
        ctr[j] = c[j]
    philox4x32_10(ctr, k[0], k[1])
    return (ctr[0], ctr[1], ctr[2], ctr[3])


cdef enum:
    # Elements per generator batch (pynn_philox_keep16 below): two AVX2 vectors of counters,
    # two independent multiply chains for the CPU to overlap.
    LANES = 16


cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #if defined(__AVX2__)
    #include <immintrin.h>
    /* hi and lo words of m * a in each 32-bit lane (vpmuludq on the even and odd lanes):
     * gcc did not vectorize the scalar 32x32->64 products of the round loop, which left
     * dropout at ~18 ns per element. */
    static inline void pynn_mulhilo8(__m256i a, __m256i m, __m256i* hi, __m256i* lo) {
        const __m256i even = _mm256_mul_epu32(a, m);
        const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
        *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
        *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
    }
    #endif
    /* keep[l] = word 0 of Philox4x32-10(ctr(e0 + l), key {k0, k1}) >= threshold for
     * l < 16: philox4x32_10's arithmetic, 8 counters per AVX2 vector (two vectors for two
     * independent multiply chains), the same arithmetic lane by lane otherwise. */
    static inline void pynn_philox_keep16(uint64_t e0, uint32_t k0, uint32_t k1,
                                          uint32_t threshold, uint8_t* keep) {
        uint32_t c0[16], c1[16], c2[16], c3[16];
        int l, r;
        for (l = 0; l < 16; l++) {
            const uint64_t e = e0 + (uint64_t)l;
            c0[l] = (uint32_t)e; c1[l] = (uint32_t)(e >> 32); c2[l] = 0; c3[l] = 0;
        }
    #if defined(__AVX2__)
        {
            __m256i a0[2], a1[2], a2[2], a3[2], h0, l0, h1, l1, rk0 = _mm256_set1_epi32((int)k0);
            __m256i rk1 = _mm256_set1_epi32((int)k1), t = _mm256_set1_epi32((int)threshold);
            const __m256i m0 = _mm256_set1_epi32((int)PYNN_PHILOX_M0);
            const __m256i m1 = _mm256_set1_epi32((int)PYNN_PHILOX_M1);
            const __m256i w0 = _mm256_set1_epi32((int)PYNN_PHILOX_W0);
            const __m256i w1 = _mm256_set1_epi32((int)PYNN_PHILOX_W1);
            int v;
            uint32_t out[8];
            for (v = 0; v < 2; v++) {
                a0[v] = _mm256_loadu_si256((const __m256i*)(c0 + 8 * v));
                a1[v] = _mm256_loadu_si256((const __m256i*)(c1 + 8 * v));
                a2[v] = _mm256_setzero_si256();
                a3[v] = _mm256_setzero_si256();
            }
            for (r = 0; r < 10; r++) {
                if (r > 0) { rk0 = _mm256_add_epi32(rk0, w0); rk1 = _mm256_add_epi32(rk1, w1); }
                for (v = 0; v < 2; v++) {
                    pynn_mulhilo8(a0[v], m0, &h0, &l0);
                    pynn_mulhilo8(a2[v], m1, &h1, &l1);
                    a0[v] = _mm256_xor_si256(_mm256_xor_si256(h1, a1[v]), rk0);
                    a2[v] = _mm256_xor_si256(_mm256_xor_si256(h0, a3[v]), rk1);
                    a1[v] = l1;
                    a3[v] = l0;
                }
            }
            for (v = 0; v < 2; v++) {
                /* unsigned a0 >= t  <=>  max(a0, t) == a0 */
                const __m256i ge = _mm256_cmpeq_epi32(_mm256_max_epu32(a0[v], t), a0[v]);
                _mm256_storeu_si256((__m256i*)out, ge);
                for (l = 0; l < 8; l++) keep[8 * v + l] = (uint8_t)(out[l] & 1u);
            }
        }
    #else
        for (r = 0; r < 10; r++) {
            if (r > 0) { k0 += PYNN_PHILOX_W0; k1 += PYNN_PHILOX_W1; }
            for (l = 0; l < 16; l++) {
                const uint64_t p0 = (uint64_t)PYNN_PHILOX_M0 * c0[l];
                const uint64_t p1 = (uint64_t)PYNN_PHILOX_M1 * c2[l];
                c0[l] = (uint32_t)(p1 >> 32) ^ c1[l] ^ k0;
                c2[l] = (uint32_t)(p0 >> 32) ^ c3[l] ^ k1;
                c1[l] = (uint32_t)p1;
                c3[l] = (uint32_t)p0;
            }
        }
        for (l = 0; l < 16; l++) keep[l] = c0[l] >= threshold;
    #endif
    }
    /* v where keep, else +0.0, as a bit mask (so inf and NaN inputs never leak into dropped
     * elements, and the loops vectorize: the same ?: stayed scalar). */
    #define PYNN_KEEP_OR_ZERO(NAME, T, I)                                              \\
    static inline T NAME(T v, uint8_t keep) {                                          \\
        I bits;                                                                        \\
        memcpy(&bits, &v, sizeof bits);                                                \\
        bits &= -(I)(keep != 0);                                                       \\
        memcpy(&v, &bits, sizeof v);                                                   \\
        return v;                                                                      \\
    }
    PYNN_KEEP_OR_ZERO(pynn_keep_or_zero_f, float, int32_t)
    PYNN_KEEP_OR_ZERO(pynn_keep_or_zero_d, double, int64_t)
    """
    void pynn_philox_keep16(uint64_t e0, uint32_t k0, uint32_t k1, uint32_t threshold,
                            uint8_t* keep) noexcept nogil
    float pynn_keep_or_zero_f(float v, uint8_t keep) noexcept nogil
    double pynn_keep_or_zero_d(double v, uint8_t keep) noexcept nogil


cdef inline floating keep_or_zero(floating v, uint8_t keep) noexcept nogil:
    if floating is float:
        return pynn_keep_or_zero_f(v, keep)
    else:
        return pynn_keep_or_zero_d(v, keep)


cdef inline void dropout_lanes(const floating* x, floating* y, uint8_t* mask, Py_ssize_t count,
                               uint64_t e0, uint32_t k0, uint32_t k1, uint32_t threshold,
                               floating scale) noexcept nogil:
    """One batch of count <= LANES elements starting at counter e0 (keep is thread-local).
    test_dropout checks the masks bit for bit against an independent NumPy Philox that
    itself passes Random123's known answers."""
    cdef uint8_t keep[LANES]
    cdef Py_ssize_t l
    # A tail batch computes a few unused lanes rather than branching per lane.
    pynn_philox_keep16(e0, k0, k1, threshold, keep)
    for l in range(count):
        mask[l] = keep[l]
        y[l] = keep_or_zero(x[l] * scale, keep[l])


ctypedef struct _DropoutJob:
    bint is_double
    const void* x
    void* y
    uint8_t* mask
    const uint8_t* cmask
    Py_ssize_t n
    uint64_t offset
    uint32_t k0, k1, threshold
    double scale
    void* noise              # Gaussian: the noise kept for backward, or NULL
    const void* cnoise       # Gaussian backward: the kept noise
    double mean, stddev
    bint multiply
    Py_ssize_t sp, ch        # channel masks: the (N, S, C) view's S and C


cdef inline void _dropout_forward_batches(const _DropoutJob* j, const floating* x, floating* y,
                                          long begin, long end) noexcept nogil:
    cdef long b
    cdef Py_ssize_t i0
    for b in range(begin, end):
        i0 = b * LANES
        dropout_lanes(x + i0, y + i0, j.mask + i0, min(<Py_ssize_t>LANES, j.n - i0),
                      <uint64_t>i0 + j.offset, j.k0, j.k1, j.threshold, <floating>j.scale)


cdef void _dropout_forward_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _DropoutJob* j = <_DropoutJob*>ctx
    if j.is_double:
        _dropout_forward_batches(j, <const double*>j.x, <double*>j.y, begin, end)
    else:
        _dropout_forward_batches(j, <const float*>j.x, <float*>j.y, begin, end)


cdef inline void _dropout_backward_chunks(const _DropoutJob* j, const floating* dy,
                                          floating* dx, long begin, long end) noexcept nogil:
    cdef floating s = <floating>j.scale
    cdef Py_ssize_t i
    for i in range(begin * CHUNK, min(end * CHUNK, j.n)):
        dx[i] = keep_or_zero(dy[i] * s, j.cmask[i])


cdef void _dropout_backward_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _DropoutJob* j = <_DropoutJob*>ctx
    if j.is_double:
        _dropout_backward_chunks(j, <const double*>j.x, <double*>j.y, begin, end)
    else:
        _dropout_backward_chunks(j, <const float*>j.x, <float*>j.y, begin, end)


cdef inline int _threads_for(Py_ssize_t n) noexcept nogil:
    return omp_get_max_threads() if n >= PARALLEL_MIN else 1


def _dropout_forward(const floating[::1] x,    # IN  (n,)
                     floating[::1] y,          # OUT (n,)
                     uint8_t[::1] mask,        # OUT (n,)
                     uint64_t seed, uint64_t offset, uint32_t threshold, double scale):
    """Batches of LANES elements on pynn's worker team (native/_team.h); each element's
    mask comes from its own counter, so no bit depends on who ran it."""
    cdef Py_ssize_t n = x.shape[0]
    cdef Py_ssize_t nb = (n + LANES - 1) // LANES
    cdef int threads = _threads_for(n)
    cdef _DropoutJob job
    if n == 0:
        return
    job.is_double, job.x, job.y, job.mask, job.n = floating is double, &x[0], &y[0], \
        &mask[0], n
    job.offset, job.k0, job.k1, job.threshold, job.scale = offset, <uint32_t>seed, \
        <uint32_t>(seed >> 32), threshold, scale
    with nogil:
        pynn_team_for(nb, team_grain(nb, threads), threads, _dropout_forward_job, &job)


def _dropout_backward(const floating[::1] dy,     # IN  (n,)
                      const uint8_t[::1] mask,    # IN  (n,)
                      floating[::1] dx,           # OUT (n,)
                      double scale):
    cdef Py_ssize_t n = dy.shape[0], chunks = (n + CHUNK - 1) // CHUNK
    cdef int threads = _threads_for(n)
    cdef _DropoutJob job
    if n == 0:
        return
    job.is_double, job.x, job.cmask, job.y, job.n, job.scale = floating is double, &dy[0], \
        &mask[0], &dx[0], n, scale
    with nogil:
        pynn_team_for(chunks, team_grain(chunks, threads), threads, _dropout_backward_job,
                      &job)


def dropout_threshold(rate):
    """The uint32 keep threshold floor(rate * 2^32) of the design note (the OpenCL host
    passes the same number)."""
    return operands.dropout_threshold(rate)


def dropout_forward(x, rate, seed, offset=0):
    """Inverted dropout -> (y, mask). mask is uint8 shaped like x (1 keep, 0 drop); survivors
    are scaled by 1/(1-rate). See the design note for the exact bit recipe."""
    r, seed, offset, x = operands.dropout_forward(HOST, x, rate, seed, offset)
    y = np.empty_like(x)
    mask = np.empty(x.shape, dtype=np.uint8)
    if x.size == 0:
        return y, mask
    _dropout_forward(x.reshape(-1), y.reshape(-1), mask.reshape(-1), seed, offset,
                     dropout_threshold(r), 1.0 / (1.0 - r))
    return y, mask


def dropout_backward(dy, mask, rate):
    """dx = dy * mask / (1 - rate), shape and dtype of dy."""
    r, dy, mask = operands.dropout_backward(HOST, dy, mask, rate)
    dx = np.empty_like(dy)
    if dy.size == 0:
        return dx
    _dropout_backward(dy.reshape(-1), mask.reshape(-1), dx.reshape(-1), 1.0 / (1.0 - r))
    return dx


# -- issue 12: noise layers (SpatialDropout, GaussianNoise, GaussianDropout) ---------------
# Spatial dropout: x viewed as (N, S, C); the (N, C) mask is exactly dropout_forward's mask
# of an (N, C) array (the same generator call per mask element, e = n*C + c + offset), so it
# reuses _dropout_forward on a ones array; one kernel then applies a channel mask for both
# forward and backward (the same math: v * scale where kept, a literal 0 where dropped).
# Gaussian noise: element i draws one standard normal z from Box-Muller on words 0 and 1 of
# its Philox call (steps 1-3 above, e = i + offset): u1 = (w0 + 1) / 2^32 in (0, 1],
# u2 = w1 / 2^32, z = sqrt(-2 log u1) cos(2 pi u2), in float as the OpenCL twin (fp64 is
# optional there): the Philox words are bit-identical on both backends, z agrees to the
# libm's rounding. noise = mean + stddev * z in the array's dtype; GaussianNoise adds
# stddev * z, GaussianDropout multiplies by 1 + sqrt(rate / (1 - rate)) * z (Keras 3).
from libc.math cimport cosf, fma, fmaf, logf, sqrtf

cdef extern from *:
    """
    #define PYNN_TWO_PI_F 6.28318530717958647692f
    #define PYNN_INV_2_32_F 2.3283064365386963e-10f
    """
    float TWO_PI_F "PYNN_TWO_PI_F"
    float INV_2_32_F "PYNN_INV_2_32_F"


cdef inline float philox_normal(uint64_t e, uint32_t k0, uint32_t k1) noexcept nogil:
    cdef uint32_t ctr[4]
    cdef float u1, u2
    ctr[0] = <uint32_t>e
    ctr[1] = <uint32_t>(e >> 32)
    ctr[2] = 0
    ctr[3] = 0
    philox4x32_10(ctr, k0, k1)
    # (w0 + 1) in float rounds to a multiple of 2^-24 at most 1: u1 stays in (0, 1].
    # Every step in float (C promotes a bare 1.0 to double), as opencl/dropout.cl does.
    u1 = (<float>ctr[0] + <float>1) * INV_2_32_F
    u2 = <float>ctr[1] * INV_2_32_F
    return sqrtf(<float>-2 * logf(u1)) * cosf(TWO_PI_F * u2)


cdef inline floating mean_plus(floating m, floating s, float z) noexcept nogil:
    """m + s * z as one fused multiply-add: the same rounding on every compiler and
    device (a contraction left to the compiler differs between them)."""
    if floating is float:
        return fmaf(s, z, m)
    else:
        return fma(s, <double>z, m)


cdef inline void _gaussian_chunks(const _DropoutJob* j, const floating* x, long begin,
                                  long end) noexcept nogil:
    """Chunks [begin, end): each element's noise from its own counter."""
    cdef floating* y = <floating*>j.y
    cdef floating* noise = <floating*>j.noise
    cdef floating m = <floating>j.mean, s = <floating>j.stddev, v
    cdef Py_ssize_t i
    for i in range(begin * CHUNK, min(end * CHUNK, j.n)):
        v = mean_plus(m, s, philox_normal(<uint64_t>i + j.offset, j.k0, j.k1))
        if noise != NULL:
            noise[i] = v
        y[i] = x[i] * v if j.multiply else x[i] + v


cdef void _gaussian_forward_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _DropoutJob* j = <_DropoutJob*>ctx
    if j.is_double:
        _gaussian_chunks(j, <const double*>j.x, begin, end)
    else:
        _gaussian_chunks(j, <const float*>j.x, begin, end)


def _gaussian_forward(const floating[::1] x,    # IN  (n,)
                      floating[::1] y,          # OUT (n,)
                      floating[::1] noise,      # OUT (n,) or (0,): not kept
                      uint64_t seed, uint64_t offset, double mean, double stddev,
                      bint multiply):
    """Chunks on pynn's worker team (large inputs) or the calling thread."""
    cdef Py_ssize_t n = x.shape[0], chunks = (n + CHUNK - 1) // CHUNK
    cdef int threads = _threads_for(n)
    cdef _DropoutJob job
    if n == 0:
        return
    job.is_double, job.x, job.y, job.n = floating is double, &x[0], &y[0], n
    job.noise = &noise[0] if noise.shape[0] == n else NULL
    job.offset, job.k0, job.k1 = offset, <uint32_t>seed, <uint32_t>(seed >> 32)
    job.mean, job.stddev, job.multiply = <floating>mean, <floating>stddev, multiply
    with nogil:
        pynn_team_for(chunks, team_grain(chunks, threads), threads, _gaussian_forward_job,
                      &job)


cdef inline void _channel_rows(const _DropoutJob* j, const floating* x, long begin,
                               long end) noexcept nogil:
    """Samples [begin, end): x * scale where the sample's channel is kept, else 0."""
    cdef floating* y = <floating*>j.y
    cdef floating sc = <floating>j.scale
    cdef Py_ssize_t s, c, sp = j.sp, ch = j.ch, at
    cdef long n
    for n in range(begin, end):
        for s in range(sp):
            at = (n * sp + s) * ch
            for c in range(ch):
                y[at + c] = keep_or_zero(x[at + c] * sc, j.cmask[n * ch + c])


cdef void _channel_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _DropoutJob* j = <_DropoutJob*>ctx
    if j.is_double:
        _channel_rows(j, <const double*>j.x, begin, end)
    else:
        _channel_rows(j, <const float*>j.x, begin, end)


def _channel_mask_apply(const floating[:, :, ::1] x,   # IN  (N, S, C)
                        const uint8_t[:, ::1] mask,    # IN  (N, C)
                        floating[:, :, ::1] y,         # OUT (N, S, C)
                        double scale):
    """Samples on pynn's worker team (large inputs) or the calling thread."""
    cdef Py_ssize_t rows = x.shape[0]
    cdef int threads = _threads_for(rows * x.shape[1] * x.shape[2])
    cdef _DropoutJob job
    if rows == 0 or x.shape[1] == 0 or x.shape[2] == 0:
        return
    job.is_double, job.x, job.y, job.cmask = floating is double, &x[0, 0, 0], &y[0, 0, 0], \
        &mask[0, 0]
    job.sp, job.ch, job.scale = x.shape[1], x.shape[2], scale
    with nogil:
        pynn_team_for(rows, team_grain(rows, threads), threads, _channel_job, &job)


def _channel_view(a):
    """(N, S, C) view of an (N, ..., C) array."""
    return a.reshape(a.shape[0], -1, a.shape[a.ndim - 1])


def spatial_dropout_forward(x, rate, seed, offset=0):
    """Channel dropout -> (y, mask): x (N, ..., C), mask uint8 (N, C), one draw per
    (sample, channel), survivors scaled by 1/(1-rate)."""
    r, seed, offset, x = operands.spatial_dropout_forward(HOST, x, rate, seed, offset)
    n, c = x.shape[0], x.shape[x.ndim - 1]
    y = np.empty_like(x)
    mask = np.empty((n, c), dtype=np.uint8)
    if n * c == 0:
        return y, mask
    # dropout_forward's generator, kept for its mask (its y is a by-product).
    ones = np.ones(n * c, dtype=np.float32)
    _dropout_forward(ones, np.empty_like(ones), mask.reshape(-1), seed, offset,
                     dropout_threshold(r), 1.0 / (1.0 - r))
    if x.size:
        _channel_mask_apply(_channel_view(x), mask, _channel_view(y), 1.0 / (1.0 - r))
    return y, mask


def spatial_dropout_backward(dy, mask, rate):
    """dx = dy * mask[n, c] / (1 - rate)."""
    r, dy, mask = operands.spatial_dropout_backward(HOST, dy, mask, rate)
    dx = np.empty_like(dy)
    if dy.size:
        _channel_mask_apply(_channel_view(dy), mask, _channel_view(dx), 1.0 / (1.0 - r))
    return dx


def gaussian_noise_forward(x, stddev, seed, offset=0):
    """y = x + stddev * z, z standard normal from the Philox stream (see the note)."""
    s, seed, offset, x = operands.gaussian_noise_forward(HOST, x, stddev, seed, offset)
    y = np.empty_like(x)
    if x.size:
        _gaussian_forward(x.reshape(-1), y.reshape(-1), np.empty(0, x.dtype), seed, offset,
                          0.0, s, False)
    return y


def gaussian_dropout_forward(x, rate, seed, offset=0):
    """-> (y, noise): noise = 1 + sqrt(rate / (1 - rate)) * z, y = x * noise."""
    s, seed, offset, x = operands.gaussian_dropout_forward(HOST, x, rate, seed, offset)
    y = np.empty_like(x)
    noise = np.empty_like(x)
    if x.size:
        _gaussian_forward(x.reshape(-1), y.reshape(-1), noise.reshape(-1), seed, offset,
                          1.0, s, True)
    return y, noise


def gaussian_dropout_backward(dy, noise):
    """dx = dy * noise."""
    dy, noise = operands.gaussian_dropout_backward(HOST, dy, noise)
    dx = np.empty_like(dy)
    if dy.size:
        _gaussian_backward(dy.reshape(-1), noise.reshape(-1), dx.reshape(-1))
    return dx


cdef inline void _gaussian_back_chunks(const _DropoutJob* j, const floating* dy, long begin,
                                       long end) noexcept nogil:
    cdef const floating* noise = <const floating*>j.cnoise
    cdef floating* dx = <floating*>j.y
    cdef Py_ssize_t i
    for i in range(begin * CHUNK, min(end * CHUNK, j.n)):
        dx[i] = dy[i] * noise[i]


cdef void _gaussian_backward_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _DropoutJob* j = <_DropoutJob*>ctx
    if j.is_double:
        _gaussian_back_chunks(j, <const double*>j.x, begin, end)
    else:
        _gaussian_back_chunks(j, <const float*>j.x, begin, end)


def _gaussian_backward(const floating[::1] dy,     # IN  (n,)
                       const floating[::1] noise,  # IN  (n,)
                       floating[::1] dx):          # OUT (n,)
    """Chunks on pynn's worker team (large inputs) or the calling thread."""
    cdef Py_ssize_t n = dy.shape[0], chunks = (n + CHUNK - 1) // CHUNK
    cdef int threads = _threads_for(n)
    cdef _DropoutJob job
    if n == 0:
        return
    job.is_double, job.x, job.cnoise, job.y, job.n = floating is double, &dy[0], &noise[0], \
        &dx[0], n
    with nogil:
        pynn_team_for(chunks, team_grain(chunks, threads), threads, _gaussian_backward_job,
                      &job)


# -- Keras 3's AlphaDropout -------------------------------------------------------------------
# The mask is dropout_forward's mask of a noise_shape array (mask element j draws counter
# j + offset), drawn by _dropout_forward on a ones array as spatial dropout does; x reads it
# broadcast (stride 0 along the axes where noise_shape is 1). Values: Keras's
# a*(x*keep + alpha_p*(1 - keep)) + b as y = fma(a, x, b) where kept and the constant
# dropped = a*alpha_p + b (rounded once on the host) where dropped; the backward is dy * a
# where kept, a literal 0 where dropped. a, b, dropped come from operands.alpha_dropout_affine.
# x is viewed as rows of its last axis; a row finds its mask offset once (ALPHA_RANK axes).
cdef enum:
    ALPHA_RANK = 8


ctypedef struct _AlphaJob:
    bint is_double
    bint backward
    const void* x
    void* y
    const uint8_t* mask
    Py_ssize_t rows, cols, ndim
    Py_ssize_t dims[ALPHA_RANK]
    Py_ssize_t strides[ALPHA_RANK]
    double a, b, dropped


cdef inline Py_ssize_t _alpha_row_base(const _AlphaJob* j, Py_ssize_t r) noexcept nogil:
    """The mask offset of row r (its index over every axis but the last)."""
    cdef Py_ssize_t base = 0, k
    for k in range(j.ndim - 2, -1, -1):
        base += (r % j.dims[k]) * j.strides[k]
        r //= j.dims[k]
    return base


cdef inline void _alpha_rows(const _AlphaJob* j, const floating* x, floating* y, long begin,
                             long end) noexcept nogil:
    cdef floating a = <floating>j.a, b = <floating>j.b, dropped = <floating>j.dropped
    cdef Py_ssize_t r, c, base, step = j.strides[j.ndim - 1], cols = j.cols
    cdef const uint8_t* m
    for r in range(begin, end):
        base = _alpha_row_base(j, r)
        m = j.mask + base
        if j.backward:
            for c in range(cols):
                y[r * cols + c] = keep_or_zero(x[r * cols + c] * a, m[c * step])
        else:
            for c in range(cols):
                y[r * cols + c] = fma_of(a, x[r * cols + c], b) if m[c * step] else dropped


cdef inline floating fma_of(floating a, floating x, floating b) noexcept nogil:
    if floating is float:
        return fmaf(a, x, b)
    else:
        return fma(a, x, b)


cdef void _alpha_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _AlphaJob* j = <_AlphaJob*>ctx
    if j.is_double:
        _alpha_rows(j, <const double*>j.x, <double*>j.y, begin, end)
    else:
        _alpha_rows(j, <const float*>j.x, <float*>j.y, begin, end)


def _alpha_apply(const floating[::1] x,       # IN  (n,) x or dy
                 const uint8_t[::1] mask,     # IN  the noise_shape mask
                 floating[::1] y,             # OUT (n,) y or dx
                 shape, strides, double a, double b, double dropped, bint backward):
    """Rows of the last axis on pynn's worker team (large inputs) or the calling thread."""
    cdef Py_ssize_t n = x.shape[0], k
    cdef _AlphaJob job
    cdef int threads = _threads_for(n)
    if n == 0:
        return
    job.is_double, job.backward, job.x, job.y, job.mask = floating is double, backward, \
        &x[0], &y[0], &mask[0]
    job.ndim = len(shape)
    for k in range(job.ndim):
        job.dims[k], job.strides[k] = shape[k], strides[k]
    job.cols = shape[job.ndim - 1]
    job.rows = n // job.cols
    job.a, job.b, job.dropped = a, b, dropped
    with nogil:
        pynn_team_for(job.rows, team_grain(job.rows, threads), threads, _alpha_job, &job)


def _alpha_view(shape):
    """The kernels' view of a shape: at least one axis (a 0-d x is one element)."""
    return tuple(shape) if len(shape) else (1,)


def alpha_dropout_forward(x, rate, seed, offset=0, noise_shape=None):
    """Keras's AlphaDropout -> (y, mask): mask uint8 of noise_shape (None: x's shape; None
    entries take x's size), 1 keep / 0 drop, drawn as dropout_forward's mask of such an
    array; y = a*x + b where kept, a*alpha_p + b where dropped (see the note above)."""
    r, seed, offset, x, mask_shape = operands.alpha_dropout_forward(HOST, x, rate, seed,
                                                                    offset, noise_shape)
    y = np.empty_like(x)
    mask = np.empty(mask_shape, dtype=np.uint8)
    if mask.size:
        ones = np.ones(mask.size, dtype=np.float32)
        _dropout_forward(ones, np.empty_like(ones), mask.reshape(-1), seed, offset,
                         dropout_threshold(r), 1.0 / (1.0 - r))
    if x.size:
        shape = _alpha_view(x.shape)
        strides = operands.broadcast_strides(shape, _alpha_view(mask_shape))
        _alpha_apply(x.reshape(-1), mask.reshape(-1), y.reshape(-1), shape, strides,
                     *operands.alpha_dropout_affine(r), False)
    return y, mask


def alpha_dropout_backward(dy, mask, rate):
    """dx = dy * a where the (broadcast) mask keeps, 0 where it drops."""
    r, dy, mask = operands.alpha_dropout_backward(HOST, dy, mask, rate)
    dx = np.empty_like(dy)
    if dy.size:
        shape = _alpha_view(dy.shape)
        strides = operands.broadcast_strides(shape, _alpha_view(mask.shape))
        _alpha_apply(dy.reshape(-1), mask.reshape(-1), dx.reshape(-1), shape, strides,
                     *operands.alpha_dropout_affine(r), True)
    return dx
