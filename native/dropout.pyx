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
import math
import operator

import numpy as np

from cython.parallel cimport prange
from libc.stdint cimport uint8_t, uint32_t, uint64_t

from _activation cimport floating

from pynn.backend._validate import as_float_array

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
    c = [int(v) for v in counter]
    k = [int(v) for v in key]
    if len(c) != 4 or len(k) != 2 or not all(0 <= v < 2**32 for v in c + k):
        raise ValueError("philox4x32_10_block: expected 4 counter and 2 key uint32 words, "
                         f"got counter={counter!r}, key={key!r}")
    for j in range(4):
        ctr[j] = c[j]
    philox4x32_10(ctr, k[0], k[1])
    return (ctr[0], ctr[1], ctr[2], ctr[3])


cdef enum:
    # Elements per generator batch: the round loop runs over this many independent counters,
    # which gives the CPU (and the vectorizer) independent multiply chains to overlap.
    LANES = 16


cdef inline void philox_keep_lanes(uint64_t e0, uint32_t k0, uint32_t k1, uint32_t threshold,
                                   uint8_t* keep) noexcept nogil:
    """keep[l] = word 0 of Philox4x32-10(ctr(e0 + l), key) >= threshold, l < LANES.

    philox4x32_10's arithmetic, lane-major; test_dropout checks the masks bit for bit against
    an independent NumPy Philox that itself passes Random123's known answers."""
    cdef uint32_t c0[LANES]
    cdef uint32_t c1[LANES]
    cdef uint32_t c2[LANES]
    cdef uint32_t c3[LANES]
    cdef uint64_t p0, p1, e
    cdef uint32_t rk0 = k0, rk1 = k1
    cdef int r, l
    for l in range(LANES):
        e = e0 + <uint64_t>l
        c0[l] = <uint32_t>e
        c1[l] = <uint32_t>(e >> 32)
        c2[l] = 0
        c3[l] = 0
    for r in range(PHILOX_ROUNDS):
        if r > 0:
            rk0 = rk0 + PHILOX_W0
            rk1 = rk1 + PHILOX_W1
        for l in range(LANES):
            p0 = <uint64_t>PHILOX_M0 * c0[l]
            p1 = <uint64_t>PHILOX_M1 * c2[l]
            c0[l] = <uint32_t>(p1 >> 32) ^ c1[l] ^ rk0
            c2[l] = <uint32_t>(p0 >> 32) ^ c3[l] ^ rk1
            c1[l] = <uint32_t>p1
            c3[l] = <uint32_t>p0
    for l in range(LANES):
        keep[l] = c0[l] >= threshold


cdef inline void dropout_lanes(const floating* x, floating* y, uint8_t* mask, Py_ssize_t count,
                               uint64_t e0, uint32_t k0, uint32_t k1, uint32_t threshold,
                               floating scale) noexcept nogil:
    """One batch of count <= LANES elements starting at counter e0 (keep is thread-local)."""
    cdef uint8_t keep[LANES]
    cdef Py_ssize_t l
    # A tail batch computes a few unused lanes rather than branching per lane.
    philox_keep_lanes(e0, k0, k1, threshold, keep)
    for l in range(count):
        mask[l] = keep[l]
        y[l] = x[l] * scale if keep[l] else 0


def _dropout_forward(const floating[::1] x,    # IN  (n,)
                     floating[::1] y,          # OUT (n,)
                     uint8_t[::1] mask,        # OUT (n,)
                     uint64_t seed, uint64_t offset, uint32_t threshold, double scale):
    cdef Py_ssize_t b, i0, n = x.shape[0]
    cdef Py_ssize_t nb = (n + LANES - 1) // LANES
    cdef uint32_t k0 = <uint32_t>seed, k1 = <uint32_t>(seed >> 32)
    with nogil:
        for b in prange(nb, schedule="static"):
            i0 = b * LANES
            dropout_lanes(&x[i0], &y[i0], &mask[i0], min(LANES, n - i0),
                          <uint64_t>i0 + offset, k0, k1, threshold, <floating>scale)


def _dropout_backward(const floating[::1] dy,     # IN  (n,)
                      const uint8_t[::1] mask,    # IN  (n,)
                      floating[::1] dx,           # OUT (n,)
                      double scale):
    cdef Py_ssize_t i, n = dy.shape[0]
    cdef floating s = <floating>scale
    with nogil:
        for i in prange(n, schedule="static"):
            dx[i] = dy[i] * s if mask[i] != 0 else 0


def _check_rate(op, rate):
    try:
        r = float(rate)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: 'rate' must be a number, got {rate!r}") from None
    if not (0.0 <= r < 1.0):
        raise ValueError(f"{op}: 'rate' must be in [0, 1), got {rate!r}")
    return r


def _check_u64(op, name, value):
    if isinstance(value, bool):
        raise TypeError(f"{op}: '{name}' must be an int, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{op}: '{name}' must be an int, got {value!r}") from None
    if not 0 <= v < 2**64:
        raise ValueError(f"{op}: '{name}' must be in [0, 2**64), got {v}")
    return v


def dropout_threshold(rate):
    """The uint32 keep threshold floor(rate * 2^32) of the design note (the OpenCL host
    passes the same number)."""
    return int(math.floor(_check_rate("dropout_threshold", rate) * 4294967296.0))


def dropout_forward(x, rate, seed, offset=0):
    """Inverted dropout -> (y, mask). mask is uint8 shaped like x (1 keep, 0 drop); survivors
    are scaled by 1/(1-rate). See the design note for the exact bit recipe."""
    op = "dropout_forward"
    r = _check_rate(op, rate)
    seed = _check_u64(op, "seed", seed)
    offset = _check_u64(op, "offset", offset)
    shape = np.shape(x) if x is not None else None
    x = as_float_array(op, "x", x).reshape(shape)  # 0-d stays 0-d
    y = np.empty_like(x)
    mask = np.empty(x.shape, dtype=np.uint8)
    if x.size == 0:
        return y, mask
    _dropout_forward(x.reshape(-1), y.reshape(-1), mask.reshape(-1), seed, offset,
                     dropout_threshold(r), 1.0 / (1.0 - r))
    return y, mask


def dropout_backward(dy, mask, rate):
    """dx = dy * mask / (1 - rate), shape and dtype of dy."""
    op = "dropout_backward"
    r = _check_rate(op, rate)
    shape = np.shape(dy) if dy is not None else None
    dy = as_float_array(op, "dy", dy).reshape(shape)
    if mask is None:
        raise ValueError(f"{op}: 'mask' is required, got None")
    mask = np.asarray(mask)
    if mask.dtype == np.bool_:
        mask = mask.view(np.uint8)
    if mask.dtype != np.uint8:
        raise TypeError(f"{op}: 'mask' must be uint8 (or bool), got dtype {mask.dtype}")
    if mask.shape != dy.shape:
        raise ValueError(f"{op}: 'mask' must have the shape of dy {dy.shape}, got {mask.shape}")
    mask = np.ascontiguousarray(mask)
    dx = np.empty_like(dy)
    if dy.size == 0:
        return dx
    _dropout_backward(dy.reshape(-1), mask.reshape(-1), dx.reshape(-1), 1.0 / (1.0 - r))
    return dx
