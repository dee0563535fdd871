"""Kernels of Keras 3's Hashing and HashedCrossing (pynn/layers/lookup.py): the string hashes
TensorFlow's ops use, so pynn's bins are Keras's.

Legend: N strings, L the fixed width (code points or bytes) of a NumPy string array.

Design:
- Strings live on the host, so this is host preprocessing (as TextVectorization): there is
  no OpenCL twin and no backend op. A batch is one byte buffer ``data`` with ``offsets``
  (N + 1): string i is data[offsets[i]:offsets[i + 1]].
- NumPy's fixed-width arrays are packed here, not by Python: 'U' arrays (UCS-4) are encoded
  to UTF-8 (utf8_lengths, then utf8_encode at the cumulated offsets), 'S' arrays drop their
  trailing NULs (bytes_lengths, bytes_pack), as NumPy reads them.
- fingerprint64 is FarmHash's Fingerprint64 (farmhashna::Hash64), TensorFlow's Fingerprint64
  behind tf.strings.to_hash_bucket_fast; siphash64 is SipHash-2-4 keyed by (k0, k1) (the
  key words little-endian), highwayhash's SipHash behind tf.strings.to_hash_bucket_strong;
  fingerprint_cat64 is TensorFlow's FingerprintCat64 chain of tf.sparse.cross_hashed.
- Every string (every row of a crossing) is one prange item; all arithmetic is uint64
  wrapping, as the C++ sources.
"""
from cython.parallel cimport prange
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy
from _openmp cimport omp_get_max_threads

import numpy as np

cdef enum:
    PARALLEL_MIN = 4096  # below this many strings the calling thread does it alone

# FarmHash's primes.
cdef uint64_t K0 = 0xc3a5c85c97cb3127ULL
cdef uint64_t K1 = 0xb492b66fbe98f273ULL
cdef uint64_t K2 = 0x9ae16a3b2f90404fULL
# CityHash's Hash128to64 multiplier (also FingerprintCat64's).
cdef uint64_t KMUL = 0x9ddfea08eb382d69ULL
cdef uint64_t KCAT = 0xc6a4a7935bd1e995ULL


cdef inline int _threads(Py_ssize_t work) noexcept nogil:
    return omp_get_max_threads() if work >= PARALLEL_MIN else 1


# -- FarmHash Fingerprint64 -------------------------------------------------------------------

cdef inline uint64_t _fetch64(const uint8_t* p) noexcept nogil:
    # Little-endian, as FarmHash's Fetch64 on the x86/ARM hosts pynn builds for.
    cdef uint64_t v
    memcpy(&v, p, 8)
    return v


cdef inline uint64_t _fetch32(const uint8_t* p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v


cdef inline uint64_t _rotate(uint64_t v, int shift) noexcept nogil:
    return v if shift == 0 else (v >> shift) | (v << (64 - shift))


cdef inline uint64_t _shift_mix(uint64_t v) noexcept nogil:
    return v ^ (v >> 47)


cdef inline uint64_t _hash_len16(uint64_t u, uint64_t v, uint64_t mul) noexcept nogil:
    cdef uint64_t a = (u ^ v) * mul
    a ^= a >> 47
    cdef uint64_t b = (v ^ a) * mul
    b ^= b >> 47
    return b * mul


cdef inline uint64_t _hash_len0to16(const uint8_t* s, uint64_t n) noexcept nogil:
    cdef uint64_t mul, a, b, c, d
    cdef uint32_t y, z
    if n >= 8:
        mul = K2 + n * 2
        a = _fetch64(s) + K2
        b = _fetch64(s + n - 8)
        c = _rotate(b, 37) * mul + a
        d = (_rotate(a, 25) + b) * mul
        return _hash_len16(c, d, mul)
    if n >= 4:
        mul = K2 + n * 2
        return _hash_len16(n + (_fetch32(s) << 3), _fetch32(s + n - 4), mul)
    if n > 0:
        y = <uint32_t>s[0] + (<uint32_t>s[n >> 1] << 8)
        z = <uint32_t>n + (<uint32_t>s[n - 1] << 2)
        return _shift_mix(y * K2 ^ z * K0) * K2
    return K2


cdef inline uint64_t _hash_len17to32(const uint8_t* s, uint64_t n) noexcept nogil:
    cdef uint64_t mul = K2 + n * 2
    cdef uint64_t a = _fetch64(s) * K1
    cdef uint64_t b = _fetch64(s + 8)
    cdef uint64_t c = _fetch64(s + n - 8) * mul
    cdef uint64_t d = _fetch64(s + n - 16) * K2
    return _hash_len16(_rotate(a + b, 43) + _rotate(c, 30) + d, a + _rotate(b + K2, 18) + c,
                       mul)


cdef inline uint64_t _hash_len33to64(const uint8_t* s, uint64_t n) noexcept nogil:
    cdef uint64_t mul = K2 + n * 2
    cdef uint64_t a = _fetch64(s) * K2
    cdef uint64_t b = _fetch64(s + 8)
    cdef uint64_t c = _fetch64(s + n - 8) * mul
    cdef uint64_t d = _fetch64(s + n - 16) * K2
    cdef uint64_t y = _rotate(a + b, 43) + _rotate(c, 30) + d
    cdef uint64_t z = _hash_len16(y, a + _rotate(b + K2, 18) + c, mul)
    cdef uint64_t e = _fetch64(s + 16) * mul
    cdef uint64_t f = _fetch64(s + 24)
    cdef uint64_t g = (y + _fetch64(s + n - 32)) * mul
    cdef uint64_t h = (z + _fetch64(s + n - 24)) * mul
    return _hash_len16(_rotate(e + f, 43) + _rotate(g, 30) + h, e + _rotate(f + a, 18) + g,
                       mul)


cdef inline void _weak_hash_len32(const uint8_t* s, uint64_t a, uint64_t b,
                                  uint64_t* out) noexcept nogil:
    """FarmHash's WeakHashLen32WithSeeds of s[0:32], a, b -> out[0], out[1]."""
    cdef uint64_t w = _fetch64(s), x = _fetch64(s + 8), y = _fetch64(s + 16)
    cdef uint64_t z = _fetch64(s + 24), c
    a += w
    b = _rotate(b + a + z, 21)
    c = a
    a += x
    a += y
    b += _rotate(a, 44)
    out[0] = a + z
    out[1] = b + c


cdef uint64_t _fingerprint64(const uint8_t* s, uint64_t n) noexcept nogil:
    if n <= 16:
        return _hash_len0to16(s, n)
    if n <= 32:
        return _hash_len17to32(s, n)
    if n <= 64:
        return _hash_len33to64(s, n)
    # Over 64 bytes: 64-byte blocks through a 56-byte state v, w, x, y, z.
    cdef uint64_t seed = 81
    cdef uint64_t x = seed, y = seed * K1 + 113, z, mul, t
    cdef uint64_t v[2]
    cdef uint64_t w[2]
    z = _shift_mix(y * K2 + 113) * K2
    v[0] = v[1] = w[0] = w[1] = 0
    x = x * K2 + _fetch64(s)
    cdef const uint8_t* end = s + ((n - 1) // 64) * 64
    cdef const uint8_t* last64 = end + ((n - 1) & 63) - 63
    while True:
        x = _rotate(x + y + v[0] + _fetch64(s + 8), 37) * K1
        y = _rotate(y + v[1] + _fetch64(s + 48), 42) * K1
        x ^= w[1]
        y += v[0] + _fetch64(s + 40)
        z = _rotate(z + w[0], 33) * K1
        _weak_hash_len32(s, v[1] * K1, x + w[0], v)
        _weak_hash_len32(s + 32, z + w[1], y + _fetch64(s + 16), w)
        t = z
        z = x
        x = t
        s += 64
        if s == end:
            break
    mul = K1 + ((z & 0xff) << 1)
    s = last64
    w[0] += (n - 1) & 63
    v[0] += w[0]
    w[0] += v[0]
    x = _rotate(x + y + v[0] + _fetch64(s + 8), 37) * mul
    y = _rotate(y + v[1] + _fetch64(s + 48), 42) * mul
    x ^= w[1] * 9
    y += v[0] * 9 + _fetch64(s + 40)
    z = _rotate(z + w[0], 33) * mul
    _weak_hash_len32(s, v[1] * mul, x + w[0], v)
    _weak_hash_len32(s + 32, z + w[1], y + _fetch64(s + 16), w)
    t = z
    z = x
    x = t
    return _hash_len16(_hash_len16(v[0], w[0], mul) + _shift_mix(y) * K0 + z,
                       _hash_len16(v[1], w[1], mul) + x, mul)


# -- SipHash-2-4 --------------------------------------------------------------------------------

cdef inline void _sip_round(uint64_t* v) noexcept nogil:
    v[0] += v[1]
    v[1] = _rotate(v[1], 64 - 13) ^ v[0]
    v[0] = _rotate(v[0], 64 - 32)
    v[2] += v[3]
    v[3] = _rotate(v[3], 64 - 16) ^ v[2]
    v[0] += v[3]
    v[3] = _rotate(v[3], 64 - 21) ^ v[0]
    v[2] += v[1]
    v[1] = _rotate(v[1], 64 - 17) ^ v[2]
    v[2] = _rotate(v[2], 64 - 32)


cdef inline void _sip_block(uint64_t* v, uint64_t m) noexcept nogil:
    v[3] ^= m
    _sip_round(v)
    _sip_round(v)
    v[0] ^= m


cdef uint64_t _siphash64(const uint8_t* s, uint64_t n, uint64_t k0,
                         uint64_t k1) noexcept nogil:
    # _rotate turns right; SipHash's rotations are to the left, hence 64 - r above.
    cdef uint64_t v[4]
    cdef uint64_t last = n << 56
    cdef uint64_t i, blocks = n // 8
    v[0] = k0 ^ 0x736f6d6570736575ULL
    v[1] = k1 ^ 0x646f72616e646f6dULL
    v[2] = k0 ^ 0x6c7967656e657261ULL
    v[3] = k1 ^ 0x7465646279746573ULL
    for i in range(blocks):
        _sip_block(v, _fetch64(s + 8 * i))
    for i in range(n & 7):
        last |= (<uint64_t>s[8 * blocks + i]) << (8 * i)
    _sip_block(v, last)
    v[2] ^= 0xff
    for i in range(4):
        _sip_round(v)
    return v[0] ^ v[1] ^ v[2] ^ v[3]


# -- packing NumPy's fixed-width strings ----------------------------------------------------------

cdef inline int _utf8_width(uint32_t c) noexcept nogil:
    # Lone surrogates take 3 bytes (Python's 'surrogatepass').
    return 1 if c < 0x80 else (2 if c < 0x800 else (3 if c < 0x10000 else 4))


cdef inline Py_ssize_t _ucs4_length(const uint32_t[:, ::1] codes, Py_ssize_t i) noexcept nogil:
    """NumPy's length of row i: trailing NULs are padding."""
    cdef Py_ssize_t n = codes.shape[1]
    while n > 0 and codes[i, n - 1] == 0:
        n -= 1
    return n


def utf8_lengths(const uint32_t[:, ::1] codes,   # IN  (N, L) UCS-4
                 int64_t[::1] out):              # OUT (N,) UTF-8 byte counts
    cdef Py_ssize_t i, k
    cdef int64_t total
    for i in prange(codes.shape[0], schedule="static", nogil=True,
                    num_threads=_threads(codes.shape[0])):
        total = 0
        for k in range(_ucs4_length(codes, i)):
            total = total + _utf8_width(codes[i, k])
        out[i] = total


def utf8_encode(const uint32_t[:, ::1] codes,   # IN  (N, L) UCS-4
                const int64_t[::1] offsets,     # IN  (N + 1,) from utf8_lengths
                uint8_t[::1] data):             # OUT (offsets[N],) the UTF-8 bytes
    cdef Py_ssize_t i, k
    cdef int64_t at
    cdef uint32_t c
    for i in prange(codes.shape[0], schedule="static", nogil=True,
                    num_threads=_threads(codes.shape[0])):
        at = offsets[i]
        for k in range(_ucs4_length(codes, i)):
            c = codes[i, k]
            if c < 0x80:
                data[at] = <uint8_t>c
                at = at + 1
            elif c < 0x800:
                data[at] = <uint8_t>(0xC0 | (c >> 6))
                data[at + 1] = <uint8_t>(0x80 | (c & 0x3F))
                at = at + 2
            elif c < 0x10000:
                data[at] = <uint8_t>(0xE0 | (c >> 12))
                data[at + 1] = <uint8_t>(0x80 | ((c >> 6) & 0x3F))
                data[at + 2] = <uint8_t>(0x80 | (c & 0x3F))
                at = at + 3
            else:
                data[at] = <uint8_t>(0xF0 | (c >> 18))
                data[at + 1] = <uint8_t>(0x80 | ((c >> 12) & 0x3F))
                data[at + 2] = <uint8_t>(0x80 | ((c >> 6) & 0x3F))
                data[at + 3] = <uint8_t>(0x80 | (c & 0x3F))
                at = at + 4


def bytes_lengths(const uint8_t[:, ::1] raw,   # IN  (N, L) an 'S' array's bytes
                  int64_t[::1] out):           # OUT (N,) lengths without trailing NULs
    cdef Py_ssize_t i, n
    for i in prange(raw.shape[0], schedule="static", nogil=True,
                    num_threads=_threads(raw.shape[0])):
        n = raw.shape[1]
        while n > 0 and raw[i, n - 1] == 0:
            n = n - 1
        out[i] = n


def bytes_pack(const uint8_t[:, ::1] raw,      # IN  (N, L)
               const int64_t[::1] offsets,     # IN  (N + 1,) from bytes_lengths
               uint8_t[::1] data):             # OUT (offsets[N],)
    cdef Py_ssize_t i
    for i in prange(raw.shape[0], schedule="static", nogil=True,
                    num_threads=_threads(raw.shape[0])):
        if offsets[i + 1] > offsets[i]:
            memcpy(&data[offsets[i]], &raw[i, 0], offsets[i + 1] - offsets[i])


# -- the hashes over a batch ----------------------------------------------------------------------

cdef inline const uint8_t* _at(const uint8_t[::1] data, int64_t offset) noexcept nogil:
    # An empty buffer has no element 0 to take the address of.
    return &data[0] + offset if data.shape[0] > 0 else NULL


def _fingerprint64_batch(const uint8_t[::1] data, const int64_t[::1] offsets,
                         uint64_t[::1] out):
    cdef Py_ssize_t i
    for i in prange(out.shape[0], schedule="static", nogil=True,
                    num_threads=_threads(out.shape[0])):
        out[i] = _fingerprint64(_at(data, offsets[i]), offsets[i + 1] - offsets[i])


def _siphash64_batch(const uint8_t[::1] data, const int64_t[::1] offsets, uint64_t k0,
                     uint64_t k1, uint64_t[::1] out):
    cdef Py_ssize_t i
    for i in prange(out.shape[0], schedule="static", nogil=True,
                    num_threads=_threads(out.shape[0])):
        out[i] = _siphash64(_at(data, offsets[i]), offsets[i + 1] - offsets[i], k0, k1)


def _fingerprint_cat64_rows(const uint64_t[:, ::1] columns, uint64_t key, uint64_t[::1] out):
    cdef Py_ssize_t i, j
    cdef uint64_t h
    for i in prange(columns.shape[0], schedule="static", nogil=True,
                    num_threads=_threads(columns.shape[0])):
        h = key
        for j in range(columns.shape[1]):
            # TensorFlow's FingerprintCat64(h, column j).
            h = h ^ KCAT
            h = h ^ (_shift_mix(columns[i, j] * KCAT) * KCAT)
            h = h * KCAT
            h = _shift_mix(h) * KCAT
            h = _shift_mix(h)
        out[i] = h


def _checked(data, offsets):
    data = np.ascontiguousarray(data, np.uint8).reshape(-1)
    offsets = np.ascontiguousarray(offsets, np.int64).reshape(-1)
    if offsets.size < 1 or offsets[0] < 0 or offsets[offsets.size - 1] > data.size \
            or np.any(np.diff(offsets) < 0):
        raise ValueError(f"hashing: offsets must rise from >= 0 to at most len(data)="
                         f"{data.size}, got {offsets[:8]}...")
    return data, offsets


def fingerprint64(data, offsets):
    """FarmHash Fingerprint64 of each string data[offsets[i]:offsets[i + 1]] -> uint64 (N,)."""
    data, offsets = _checked(data, offsets)
    out = np.empty(offsets.size - 1, np.uint64)
    _fingerprint64_batch(data, offsets, out)
    return out


def siphash64(data, offsets, k0, k1):
    """SipHash-2-4 keyed by the words (k0, k1) of each string -> uint64 (N,)."""
    data, offsets = _checked(data, offsets)
    out = np.empty(offsets.size - 1, np.uint64)
    _siphash64_batch(data, offsets, k0, k1, out)
    return out


def fingerprint_cat64(columns, key):
    """TensorFlow's chain h = key; h = FingerprintCat64(h, column) over each row's columns
    (N, F) uint64 -> uint64 (N,)."""
    columns = np.ascontiguousarray(columns, np.uint64)
    if columns.ndim != 2:
        raise ValueError(f"hashing: columns must be (N, F), got shape {columns.shape}")
    out = np.empty(columns.shape[0], np.uint64)
    _fingerprint_cat64_rows(columns, key, out)
    return out
