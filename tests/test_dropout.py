"""dropout_forward / dropout_backward (native/dropout.pyx, opencl/dropout.cl): the Philox4x32-10
generator against Random123's published known-answer vectors, the mask bit for bit against an
independent NumPy Philox written from the paper, the keep rate statistically, and the exact
recipe of the design note (which the OpenCL twin follows).

The NumPy oracle lives here rather than in tests/reference/ because it is the generator itself,
tested first against the published vectors below.

The checks that hold on both backends take the ``backend`` fixture (tests/conftest.py) and
run one body on each; OpenCL-only checks are marked ``opencl``.
"""

import os

import numpy as np
import pytest

from pynn._native.dropout import (
    dropout_backward,
    dropout_forward,
    dropout_threshold,
    philox4x32_10_block,
)
from pynn._native.info import set_num_threads
from tests.backend_util import check_op, rand

# Random123 kat_vectors: philox4x32 10 <counter x4> <key x2> -> <output x4>.
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

MASK32 = np.uint64(0xFFFFFFFF)


def philox4x32_10_ref(ctr, key):
    """Vectorized Philox4x32-10 (Salmon et al. 2011) on uint64 arrays holding 32-bit words."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) for c in ctr)
    k0, k1 = (np.uint64(k) for k in key)
    for r in range(10):
        if r:
            k0 = (k0 + np.uint64(0x9E3779B9)) & MASK32
            k1 = (k1 + np.uint64(0xBB67AE85)) & MASK32
        p0 = np.uint64(0xD2511F53) * c0
        p1 = np.uint64(0xCD9E8D57) * c2
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & MASK32,
                          (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & MASK32)
    return c0, c1, c2, c3


def dropout_mask_ref(n, rate, seed, offset):
    """The design note's recipe: counter {lo32(e), hi32(e), 0, 0}, e = (i + offset) mod 2^64,
    key {lo32(seed), hi32(seed)}, keep iff word 0 >= floor(rate * 2^32)."""
    e = [(i + offset) % 2**64 for i in range(n)]
    lo = np.array([v & 0xFFFFFFFF for v in e], dtype=np.uint64)
    hi = np.array([v >> 32 for v in e], dtype=np.uint64)
    zero = np.zeros(n, dtype=np.uint64)
    word0 = philox4x32_10_ref((lo, hi, zero, zero), (seed & 0xFFFFFFFF, seed >> 32))[0]
    threshold = int(np.floor(rate * 2.0**32))
    return (word0 >= np.uint64(threshold)).astype(np.uint8)


def _philox_block(backend):
    """The backend's own Philox4x32-10 block (the CPU kernel's, or the OpenCL host twin)."""
    if backend.is_opencl:
        from pynn.backend.opencl import dropout

        return dropout.philox4x32_10_block
    return philox4x32_10_block


@pytest.mark.parametrize("ctr,key,want", KNOWN_ANSWERS)
def test_philox_known_answers(backend, ctr, key, want):
    assert _philox_block(backend)(ctr, key) == want
    got_ref = tuple(int(w[0]) for w in philox4x32_10_ref([[c] for c in ctr], key))
    assert got_ref == want


def test_philox_matches_reference_on_random_words():
    rng = np.random.default_rng(0)
    for _ in range(50):
        ctr = [int(v) for v in rng.integers(0, 2**32, 4)]
        key = [int(v) for v in rng.integers(0, 2**32, 2)]
        want = tuple(int(w[0]) for w in philox4x32_10_ref([[c] for c in ctr], key))
        assert philox4x32_10_block(ctr, key) == want


@pytest.mark.parametrize("n", [1, 7, 13, 16, 17, 33, 1000])
@pytest.mark.parametrize("seed,offset", [
    (0, 0), (1234, 5), (2**63 + 12345, 2**32 - 5), (2**64 - 1, 2**64 - 9)])
def test_mask_bit_for_bit(n, seed, offset):
    rate = 0.37
    x = np.random.default_rng(n).uniform(0.5, 1.5, size=n).astype(np.float32)
    y, mask = dropout_forward(x, rate, seed, offset)
    np.testing.assert_array_equal(mask, dropout_mask_ref(n, rate, seed, offset))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 7), (2, 3, 5), (13,)])
def test_values_follow_the_recipe(dtype, shape):
    rate = 0.25
    x = np.random.default_rng(1).normal(size=shape).astype(dtype)
    y, mask = dropout_forward(x, rate, 99, 7)
    assert y.shape == shape and y.dtype == dtype and mask.shape == shape
    assert mask.dtype == np.uint8
    scale = dtype(1.0 / (1.0 - rate))
    want = np.where(mask == 1, x * scale, dtype(0))
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(mask.reshape(-1), dropout_mask_ref(x.size, rate, 99, 7))


def test_keep_rate_statistics():
    n = 200_000
    x = np.ones(n, np.float32)
    for rate in (0.1, 0.5, 0.9):
        _, mask = dropout_forward(x, rate, 2024, 0)
        sigma = np.sqrt(rate * (1 - rate) / n)
        assert abs(mask.mean() - (1 - rate)) < 6 * sigma, (rate, mask.mean())
    # Successive words are not trivially correlated: runs of equal mask bits look geometric.
    _, mask = dropout_forward(x, 0.5, 7, 0)
    agree = np.mean(mask[1:] == mask[:-1])
    assert abs(agree - 0.5) < 6 * np.sqrt(0.25 / n)


def test_offset_continues_the_stream():
    """Two calls that advance offset by the first call's size reproduce one big call."""
    x = np.random.default_rng(3).normal(size=101)
    y, mask = dropout_forward(x, 0.4, 5, 1000)
    y1, m1 = dropout_forward(x[:37], 0.4, 5, 1000)
    y2, m2 = dropout_forward(x[37:], 0.4, 5, 1037)
    np.testing.assert_array_equal(np.concatenate([m1, m2]), mask)
    np.testing.assert_array_equal(np.concatenate([y1, y2]), y)


def test_seed_and_offset_change_the_mask():
    x = np.ones(4096)
    _, a = dropout_forward(x, 0.5, 1, 0)
    _, b = dropout_forward(x, 0.5, 2, 0)
    _, c = dropout_forward(x, 0.5, 1, 4096)
    _, a2 = dropout_forward(x, 0.5, 1, 0)
    np.testing.assert_array_equal(a, a2)
    assert np.mean(a != b) > 0.4 and np.mean(a != c) > 0.4


def test_rate_zero_is_identity():
    x = np.random.default_rng(4).normal(size=(5, 9)).astype(np.float32)
    y, mask = dropout_forward(x, 0.0, 3, 0)
    np.testing.assert_array_equal(y, x)
    assert mask.all()
    np.testing.assert_array_equal(dropout_backward(x, mask, 0.0), x)


def test_threshold_is_exact_integer_arithmetic():
    assert dropout_threshold(0.0) == 0
    assert dropout_threshold(0.5) == 2**31
    assert dropout_threshold(0.25) == 2**30
    assert dropout_threshold(np.nextafter(1.0, 0.0)) == 2**32 - 1
    assert dropout_threshold(0.1) == int(np.floor(0.1 * 2.0**32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_is_the_transpose_of_forward(dtype):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4, 6)).astype(dtype)
    dy = rng.normal(size=(4, 6)).astype(dtype)
    _, mask = dropout_forward(x, 0.3, 11, 22)
    dx = dropout_backward(dy, mask, 0.3)
    assert dx.dtype == dtype
    # The forward map is diagonal and linear in x, so its transpose applied to dy is the
    # forward of dy with the same mask.
    np.testing.assert_array_equal(dx, dropout_forward(dy, 0.3, 11, 22)[0])
    np.testing.assert_array_equal(dropout_backward(dy, mask.astype(bool), 0.3), dx)


def test_thread_invariance():
    x = np.random.default_rng(6).normal(size=100_003).astype(np.float32)
    out = []
    try:
        for n in (1, 2, 3):
            set_num_threads(n)
            y, mask = dropout_forward(x, 0.3, 77, 123)
            out.append((y, mask, dropout_backward(x, mask, 0.3)))
    finally:
        set_num_threads(os.cpu_count() or 1)
    for got in out[1:]:
        for a, b in zip(got, out[0]):
            np.testing.assert_array_equal(a, b)


def test_empty_and_scalar():
    y, mask = dropout_forward(np.zeros((0, 3), np.float32), 0.5, 1, 0)
    assert y.shape == (0, 3) and mask.shape == (0, 3)
    assert dropout_backward(y, mask, 0.5).shape == (0, 3)
    y, mask = dropout_forward(np.float64(2.0), 0.5, 1, 0)
    assert y.shape == () and mask.shape == ()
    assert y == (4.0 if mask else 0.0)


def test_layouts_give_the_same_result():
    base = np.random.default_rng(8).normal(size=(6, 10))
    want = dropout_forward(base, 0.5, 3, 0)
    strided = np.zeros((6, 20))
    strided[:, ::2] = base
    readonly = base.copy()
    readonly.setflags(write=False)
    for x in (np.asfortranarray(base), strided[:, ::2], readonly):
        got = dropout_forward(x, 0.5, 3, 0)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_bad_inputs():
    x = np.ones((2, 3), np.float32)
    for rate in (-0.1, 1.0, 1.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"'rate' must be in \[0, 1\)"):
            dropout_forward(x, rate, 0, 0)
    with pytest.raises(TypeError, match="'rate'"):
        dropout_forward(x, "half", 0, 0)
    for bad in (-1, 2**64):
        with pytest.raises(ValueError, match="'seed'"):
            dropout_forward(x, 0.5, bad, 0)
        with pytest.raises(ValueError, match="'offset'"):
            dropout_forward(x, 0.5, 0, bad)
    for bad in (1.5, None, True, "3"):
        with pytest.raises(TypeError, match="'seed'"):
            dropout_forward(x, 0.5, bad, 0)
    with pytest.raises(ValueError, match="'x' is required"):
        dropout_forward(None, 0.5, 0, 0)
    with pytest.raises(TypeError, match="numeric"):
        dropout_forward(np.array(["a"]), 0.5, 0, 0)
    _, mask = dropout_forward(x, 0.5, 0, 0)
    with pytest.raises(ValueError, match="1\\)"):
        dropout_backward(x, mask, 1.0)
    with pytest.raises(ValueError, match="'mask' is required"):
        dropout_backward(x, None, 0.5)
    with pytest.raises(TypeError, match="uint8"):
        dropout_backward(x, mask.astype(np.float32), 0.5)
    with pytest.raises(ValueError, match="shape of dy"):
        dropout_backward(x, mask.reshape(3, 2), 0.5)
    with pytest.raises(ValueError, match="4 counter and 2 key"):
        philox4x32_10_block((0, 0, 0), (0, 0))


# -- over both backends (the `backend` fixture) ----------------------------------------------


@pytest.mark.parametrize("shape", [(1,), (3, 7), (13, 5, 3)], ids=str)
@pytest.mark.parametrize("rate", [0.0, 0.37, 0.9])
@pytest.mark.parametrize("seed,offset", [(0, 0), (123456789012345, 5), (2**64 - 1, 2**64 - 3)])
def test_dropout_mask_bit_for_bit_on_backend(backend, shape, rate, seed, offset):
    """The mask against the NumPy Philox recipe (and, on OpenCL, the CPU's) bit for bit."""
    rng = np.random.default_rng(len(shape))
    x, dy = rand(rng, shape), rand(rng, shape)
    mask_ref = dropout_mask_ref(x.size, rate, seed, offset).reshape(shape)
    scale = np.float32(1.0 / (1.0 - rate))
    _, (y, mask) = check_op(backend, "dropout_forward", x, rate, seed, offset,
                            ref=(np.where(mask_ref == 1, x * scale, 0).astype(np.float64),
                                 mask_ref))
    np.testing.assert_array_equal(mask, mask_ref)
    check_op(backend, "dropout_backward", dy, mask, rate,
             ref=np.where(mask_ref == 1, dy * scale, 0).astype(np.float64))


def test_dropout_statistics_on_backend(backend):
    ops = backend.ops
    x = backend.up(np.ones(20001, np.float32))
    y, mask = ops.dropout_forward(x, 0.25, 42, 0)
    keep = backend.down(mask).astype(bool)
    assert abs(keep.mean() - 0.75) < 0.02
    np.testing.assert_array_equal(backend.down(y), np.where(keep, np.float32(1 / 0.75), 0))
    _, mask2 = ops.dropout_forward(x, 0.25, 42, 20001)  # the next offset draws a new mask
    assert (backend.down(mask2) != backend.down(mask)).any()
    e, m = ops.dropout_forward(ops.zeros((0, 3)), 0.5, 1, 0)
    assert e.shape == m.shape == (0, 3)


@pytest.mark.opencl
def test_dropout_bad_inputs_opencl(ocl):
    x = ocl.asarray(np.ones(20001, np.float32))
    _, mask = ocl.dropout_forward(x, 0.25, 42, 0)
    with pytest.raises(ValueError, match="rate"):
        ocl.dropout_forward(x, 1.0, 0, 0)
    with pytest.raises(ValueError, match="seed"):
        ocl.dropout_forward(x, 0.5, -1, 0)
    with pytest.raises(TypeError, match="offset"):
        ocl.dropout_forward(x, 0.5, 0, 1.5)
    with pytest.raises(TypeError, match="uint8"):
        ocl.dropout_backward(x, x, 0.5)
    with pytest.raises(ValueError, match="shape"):
        ocl.dropout_backward(ocl.zeros((3,)), mask, 0.5)
