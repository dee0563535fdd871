"""Pure-Python references of the string hashes of native/hashing.pyx (integers only, no
floats): SipHash-2-4 written from the paper (Aumasson & Bernstein, 2012) and TensorFlow's
FingerprintCat64. FarmHash's Fingerprint64 is checked against the pyfarmhash package."""

MASK = (1 << 64) - 1


def _rotl(v, r):
    return ((v << r) | (v >> (64 - r))) & MASK


def _sip_round(v0, v1, v2, v3):
    v0 = (v0 + v1) & MASK
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 = (v2 + v3) & MASK
    v3 = _rotl(v3, 16) ^ v2
    v0 = (v0 + v3) & MASK
    v3 = _rotl(v3, 21) ^ v0
    v2 = (v2 + v1) & MASK
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


def siphash24_ref(message, k0, k1):
    """SipHash-2-4 of the bytes ``message`` keyed by the 64-bit words k0, k1 (the 16-byte
    key read little-endian) -> int in [0, 2**64)."""
    v = [k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D, k0 ^ 0x6C7967656E657261,
         k1 ^ 0x7465646279746573]
    n = len(message)
    padded = message + bytes(7 - n % 8) + bytes([n & 0xFF])
    for i in range(0, len(padded), 8):
        m = int.from_bytes(padded[i:i + 8], "little")
        v[3] ^= m
        v = list(_sip_round(*_sip_round(*v)))
        v[0] ^= m
    v[2] ^= 0xFF
    for _ in range(4):
        v = list(_sip_round(*v))
    return v[0] ^ v[1] ^ v[2] ^ v[3]


def _shift_mix(v):
    return v ^ (v >> 47)


def fingerprint_cat64_ref(fp1, fp2):
    """TensorFlow's FingerprintCat64 (tensorflow/core/platform/fingerprint.h)."""
    mul = 0xC6A4A7935BD1E995
    result = fp1 ^ mul
    result ^= (_shift_mix((fp2 * mul) & MASK) * mul) & MASK
    result = (result * mul) & MASK
    result = (_shift_mix(result) * mul) & MASK
    return _shift_mix(result)


def cross_hashed_ref(feature_ids, num_bins, key=0xDECAFCAFFE):
    """tf.sparse.cross_hashed of one row: the features' 64-bit ids chained from ``key``."""
    h = key
    for fid in feature_ids:
        h = fingerprint_cat64_ref(h, fid & MASK)
    return h % num_bins


# The first entries of SipHash's published vectors (vectors_sip64 of the reference code):
# key 00 01 .. 0f, message 00 01 .. (n - 1) for n = 0..7, and the paper's 15-byte example.
SIPHASH24_VECTORS = {0: 0x726FDB47DD0E0E31, 1: 0x74F839C593DC67FD, 2: 0x0D6C8009D9A94F5A,
                     3: 0x85676696D7FB7E2D, 4: 0xCF2794E0277187B7, 5: 0x18765564CD99A68D,
                     6: 0xCBC9466E58FEE3CE, 7: 0xAB0200F58B01D137, 15: 0xA129CA6149BE45E5}
SIPHASH24_KEY = (0x0706050403020100, 0x0F0E0D0C0B0A0908)
