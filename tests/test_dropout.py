"""dropout_forward / dropout_backward (native/dropout.pyx, opencl/dropout.cl): the Philox4x32-10
generator against Random123's published known-answer vectors, the mask bit for bit against an
independent NumPy Philox written from the paper, the keep rate statistically, and the exact
recipe of the design note (which the OpenCL twin follows).

The NumPy oracle (tests/reference/dropout_ref.py: philox4x32_10_ref, dropout_mask_ref) is the
generator itself, tested here first against the published vectors below.

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
import pynn.layers as L
from tests.backend_util import check_op, rand
from tests.reference import gradcheck
from tests.reference.dropout_ref import (
    dropout_mask_ref,
    gaussian_dropout_backward_ref,
    gaussian_dropout_forward_ref,
    gaussian_noise_forward_ref,
    philox4x32_10_ref,
    spatial_dropout_backward_ref,
    spatial_dropout_forward_ref,
    standard_normal_ref,
)

# Random123 kat_vectors: philox4x32 10 <counter x4> <key x2> -> <output x4>.
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


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


# == issue 12: noise layers (spatial dropout, Gaussian noise and dropout) =================

# float32 tolerance of z: logf/cosf against float64 (a few ulps of |z| <= ~6.7)
Z_RTOL = {"rtol": 1e-5, "atol": 1e-5}


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 5, 7, 4), (2, 9, 1, 33), (5, 3)], ids=str)
@pytest.mark.parametrize("rate,seed,offset", [(0.3, 7, 0), (0.5, 2**40 + 3, 2**33 - 5),
                                               (0.9, 0, 11)])
def test_spatial_dropout_matches_reference(target, shape, rate, seed, offset):
    rng = np.random.default_rng(1)
    x = rand(rng, shape, target.dtype)
    # The mask is bit-exact (checked as uint8 by check_op), the values to rounding.
    _, (_, mask) = check_op(target, "spatial_dropout_forward", x, rate, seed, offset,
                            ref=spatial_dropout_forward_ref)
    dy = rand(rng, shape, target.dtype)
    check_op(target, "spatial_dropout_backward", dy, mask, rate,
             ref=spatial_dropout_backward_ref)
    assert mask.shape == (shape[0], shape[-1])


def test_spatial_dropout_drops_whole_channels_at_the_rate():
    from pynn.backend import cpu

    x = np.ones((101, 3, 5, 67), np.float32)
    y, mask = cpu.spatial_dropout_forward(x, 0.3, 5, 0)
    per_channel = y.reshape(101, -1, 67)
    assert np.all(per_channel.min(axis=1) == per_channel.max(axis=1))  # one draw per channel
    assert abs(1 - mask.mean() - 0.3) < 0.02  # 6767 draws: 4 sigma ~ 0.022
    np.testing.assert_allclose(y.mean(), 1.0, atol=0.05)  # inverted: the mean is kept


@pytest.mark.parametrize("shape", [(1,), (7, 3), (3, 5, 33)], ids=str)
def test_gaussian_noise_matches_reference(target, shape):
    x = rand(np.random.default_rng(2), shape, target.dtype)
    check_op(target, "gaussian_noise_forward", x, 0.7, 1234, 99,
             ref=gaussian_noise_forward_ref, rtol=Z_RTOL)


@pytest.mark.parametrize("shape", [(1,), (7, 3), (3, 5, 33)], ids=str)
def test_gaussian_dropout_matches_reference(target, shape):
    rng = np.random.default_rng(3)
    x = rand(rng, shape, target.dtype)
    _, (_, noise) = check_op(target, "gaussian_dropout_forward", x, 0.4, 77, 2**35,
                             ref=gaussian_dropout_forward_ref, rtol=Z_RTOL)
    dy = rand(rng, shape, target.dtype)
    check_op(target, "gaussian_dropout_backward", dy, noise,
             ref=gaussian_dropout_backward_ref)


def test_gaussian_noise_statistics(backend):
    """Mean, standard deviation and tails of the noise on a large odd-sized input."""
    x = backend.up(np.zeros((997, 1001), np.float32))
    z = backend.down(backend.op("gaussian_noise_forward")(x, 1.0, 31, 0)).astype(np.float64)
    n = z.size  # ~1e6 draws: standard errors 1e-3 (mean), 7e-4 (std)
    assert abs(z.mean()) < 5e-3
    assert abs(z.std() - 1.0) < 5e-3
    assert abs(np.mean(np.abs(z) > 1.96) - 0.05) < 5 * np.sqrt(0.05 * 0.95 / n)
    assert abs(np.mean(z ** 3)) < 0.02 and abs(np.mean(z ** 4) - 3.0) < 0.05


def test_gaussian_dropout_statistics(backend):
    rate = 0.25
    x = backend.up(np.full((499, 1003), 2.0, np.float32))
    y, noise = backend.op("gaussian_dropout_forward")(x, rate, 8, 5)
    noise = backend.down(noise).astype(np.float64)
    np.testing.assert_array_equal(backend.down(y), (2 * noise).astype(np.float32))
    assert abs(noise.mean() - 1.0) < 5e-3
    assert abs(noise.std() - np.sqrt(rate / (1 - rate))) < 5e-3


@pytest.mark.opencl
def test_noise_opencl_matches_cpu(ocl):
    """The Philox words are bit-identical, so the spatial masks are; the normals differ only
    by the two libms' logf/cosf rounding (fp64 is optional in OpenCL, so both stay float)."""
    from pynn.backend import cpu

    rng = np.random.default_rng(4)
    x = rand(rng, (5, 7, 9, 33))
    y, mask = cpu.spatial_dropout_forward(x, 0.5, 3, 17)
    y_cl, mask_cl = ocl.spatial_dropout_forward(ocl.asarray(x), 0.5, 3, 17)
    np.testing.assert_array_equal(mask_cl.get(), mask)
    np.testing.assert_array_equal(y_cl.get(), y)
    z = cpu.gaussian_noise_forward(np.zeros(100003, np.float32), 1.0, 3, 17)
    z_cl = ocl.gaussian_noise_forward(ocl.zeros((100003,)), 1.0, 3, 17).get()
    np.testing.assert_allclose(z_cl, z, rtol=1e-5, atol=2e-6)
    # Same draws: their ranks agree (a stream shifted by one element would not).
    np.testing.assert_array_equal(np.argsort(z_cl[:1000]), np.argsort(z[:1000]))


def test_standard_normal_ref_is_box_muller_of_the_philox_words():
    z = standard_normal_ref(200001, 9, 0)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01


def test_noise_thread_invariance(num_threads):
    from pynn.backend import cpu

    x = rand(np.random.default_rng(5), (301, 7, 5, 11))
    out = []
    for n in (1, 2, 3):
        num_threads(n)
        out.append((cpu.spatial_dropout_forward(x, 0.4, 1, 2)[0],
                    cpu.gaussian_noise_forward(x, 0.5, 1, 2),
                    cpu.gaussian_dropout_forward(x, 0.4, 1, 2)[0]))
    for got in out[1:]:
        for g, w in zip(got, out[0]):
            np.testing.assert_array_equal(g, w)


def noise_layers():
    return [lambda: L.SpatialDropout2D(0.4, seed=3), lambda: L.GaussianNoise(0.5, seed=4),
            lambda: L.GaussianDropout(0.3, seed=5)]


SPATIAL = [(L.SpatialDropout1D, (3, 7, 5)), (L.SpatialDropout2D, (3, 4, 5, 7)),
           (L.SpatialDropout3D, (2, 3, 4, 2, 5))]


@pytest.mark.parametrize("cls, shape", SPATIAL)
def test_spatial_dropout_drops_whole_channels_of_every_rank(cls, shape, float64, seeded):
    """One draw per (sample, channel), shared by every step, pixel or voxel; the identity at
    inference; backward by central differences with the stream rewound; the stream resumes."""
    x = seeded.normal(size=shape) + 3.0
    layer = cls(0.5, seed=11)
    assert layer(x) is x
    y = np.asarray(layer(x, training=True)).reshape(shape[0], -1, shape[-1])
    ratio = y / x.reshape(y.shape)
    assert np.all((ratio == 0) | np.isclose(ratio, 2.0))
    assert np.all(ratio.min(axis=1) == ratio.max(axis=1))   # whole channels
    assert 0 < np.mean(ratio == 0) < 1
    small = seeded.normal(size=(2,) + shape[1:-1] + (3,))
    layer = cls(0.4, seed=3)
    gradcheck.check_layer(layer, small, seeded,
                          before_call=lambda: layer.set_runtime_state({"offset": 0}))
    state = layer.runtime_state()
    clone = cls.from_config(layer.get_config())
    clone.set_runtime_state(state)
    np.testing.assert_array_equal(clone(small, training=True), layer(small, training=True))
    with pytest.raises(ValueError, match=rf"{cls.__name__} 'bad': expected input shape"):
        cls(0.5, name="bad")(np.ones((2,) * (len(shape) + 1), np.float32))


@pytest.mark.parametrize("make", noise_layers())
def test_noise_layers_are_identity_at_inference(make):
    x = rand(np.random.default_rng(6), (3, 4, 5, 7))
    layer = make()
    assert layer(x) is x
    assert layer(x, training=False) is x


@pytest.mark.parametrize("make", noise_layers())
def test_noise_layer_backward_finite_differences(make, float64, seeded):
    """Rewinding the stream before every call fixes the draw, so the layer is a fixed
    linear map whose backward central differences check (the mask or noise is applied to
    dy exactly as to x)."""
    layer = make()
    x = seeded.normal(size=(2, 3, 4, 5))
    gradcheck.check_layer(layer, x, seeded, before_call=lambda: layer.set_runtime_state(
        {"offset": 0}))


@pytest.mark.parametrize("make", noise_layers())
def test_noise_layers_advance_and_resume_their_stream(make):
    x = rand(np.random.default_rng(7), (3, 4, 5, 7))
    layer = make()
    first = np.array(layer(x, training=True))
    second = np.array(layer(x, training=True))
    assert not np.array_equal(first, second)
    state = layer.runtime_state()
    third = np.array(layer(x, training=True))
    clone = type(layer).from_config(layer.get_config())
    clone.set_runtime_state(state)
    np.testing.assert_array_equal(clone(x, training=True), third)
    assert clone.get_config() == layer.get_config()
    assert set(L.LAYERS) >= {"SpatialDropout2D", "GaussianNoise", "GaussianDropout"}


def test_noise_layers_match_keras_in_distribution():
    """Keras draws from another generator, so the parity is statistical: the same mean and
    spread of y - x (GaussianNoise), y / x (GaussianDropout) and of dropped channels."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    x = np.ones((64, 6, 6, 50), np.float32)
    for ours, theirs, stat in [
        (L.GaussianNoise(0.3, seed=1), keras.layers.GaussianNoise(0.3, seed=1),
         lambda y: (np.mean(y - x), np.std(y - x))),
        (L.GaussianDropout(0.2, seed=1), keras.layers.GaussianDropout(0.2, seed=1),
         lambda y: (np.mean(y), np.std(y))),
        (L.SpatialDropout2D(0.3, seed=1), keras.layers.SpatialDropout2D(0.3, seed=1),
         lambda y: (np.mean(y[:, 0, 0, :] == 0), np.mean(y))),
    ]:
        got = stat(np.asarray(ours(x, training=True)))
        want = stat(keras.ops.convert_to_numpy(theirs(x, training=True)))
        np.testing.assert_allclose(got, want, atol=0.03)
    for ours, theirs, shape in [
        (L.SpatialDropout1D(0.3, seed=1), keras.layers.SpatialDropout1D(0.3, seed=1),
         (400, 5, 50)),
        (L.SpatialDropout3D(0.3, seed=1), keras.layers.SpatialDropout3D(0.3, seed=1),
         (100, 2, 3, 2, 50)),
    ]:
        x = np.ones(shape, np.float32)

        def stat(y):   # the dropped share, the mean, and whether the steps share each draw
            y = y.reshape(shape[0], -1, shape[-1])
            return np.mean(y[:, 0] == 0), np.mean(y), np.mean(y.min(1) == y.max(1))

        got = stat(np.asarray(ours(x, training=True)))
        want = stat(keras.ops.convert_to_numpy(theirs(x, training=True)))
        np.testing.assert_allclose(got, want, atol=0.03)


def test_noise_bad_inputs_name_what_came(backend):
    b = backend.ops
    x = backend.up(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"spatial_dropout_forward: 'rate' must be in \[0, 1\)"):
        b.spatial_dropout_forward(x, 1.0, 0, 0)
    with pytest.raises(ValueError, match=r"spatial_dropout_forward: 'x' must be \(N, \.\.\., C\)"):
        b.spatial_dropout_forward(backend.up(np.ones(3, np.float32)), 0.5, 0, 0)
    with pytest.raises(ValueError, match=r"spatial_dropout_backward: 'mask' must have shape "
                                         r"\(N, C\) = \(2, 3\), got \(3, 2\)"):
        b.spatial_dropout_backward(x, backend.up(np.ones((3, 2), np.uint8)), 0.5)
    with pytest.raises(ValueError, match=r"gaussian_noise_forward: 'stddev' must be in"):
        b.gaussian_noise_forward(x, -1.0, 0, 0)
    with pytest.raises(ValueError, match=r"gaussian_dropout_backward: 'noise' must have the "
                                         r"shape of dy"):
        b.gaussian_dropout_backward(x, backend.up(np.ones((3, 2), np.float32)))
    with pytest.raises(ValueError, match=r"SpatialDropout2D 'sd': rate must be a number in "
                                         r"\[0, 1\), got 2"):
        L.SpatialDropout2D(2, name="sd")
    with pytest.raises(ValueError, match=r"GaussianNoise 'gn': stddev must be a finite number"):
        L.GaussianNoise(float("nan"), name="gn")
    with pytest.raises(ValueError, match=r"SpatialDropout2D 'sd2': expected input shape "
                                         r"\(None, H, W, C\)"):
        L.SpatialDropout2D(0.5, name="sd2")(np.ones((2, 3), np.float32))


# -- Keras 3's AlphaDropout: alpha_dropout_forward / alpha_dropout_backward ---------------
from tests.reference.dropout_ref import (  # noqa: E402
    alpha_dropout_backward_ref,
    alpha_dropout_forward_ref,
)

# (x shape, noise_shape): the whole input, a draw shared along time, along the batch,
# along the spatial axes of an image, a 0-d-like vector, broadcast axes of size 1.
ALPHA_CASES = [
    ((5, 7), None),
    ((3, 9, 5), (None, 1, None)),
    ((3, 9, 5), (1, 9, 1)),
    ((2, 3, 4, 33), (2, 1, 1, 33)),
    ((13,), None),
    ((4, 1, 3), (None, 1, 1)),
    ((2, 3, 2, 2, 1, 2, 2, 3), (None, 1, 2, 1, 1, 1, 2, None)),
]


@pytest.mark.parametrize("shape,noise_shape", ALPHA_CASES, ids=str)
@pytest.mark.parametrize("rate,seed,offset", [(0.3, 7, 0), (0.05, 2**40 + 3, 2**33 - 5),
                                               (0.9, 0, 11)])
def test_alpha_dropout_matches_reference(target, shape, noise_shape, rate, seed, offset):
    rng = np.random.default_rng(12)
    x = rand(rng, shape, target.dtype)
    # The mask bit for bit (uint8, as dropout_forward's mask of a noise_shape array), the
    # values to rounding.
    _, (_, mask) = check_op(target, "alpha_dropout_forward", x, rate, seed, offset,
                            noise_shape, ref=alpha_dropout_forward_ref)
    dy = rand(rng, shape, target.dtype)
    check_op(target, "alpha_dropout_backward", dy, mask, rate,
             ref=alpha_dropout_backward_ref)
    if noise_shape is not None:
        assert mask.shape == tuple(n if d is None else d for d, n in zip(noise_shape, shape))


def test_alpha_dropout_mask_is_dropouts_mask_of_the_noise_shape():
    from pynn.backend import cpu

    x = rand(np.random.default_rng(13), (6, 5, 4))
    _, mask = cpu.alpha_dropout_forward(x, 0.4, 99, 3, (None, 1, None))
    _, want = cpu.dropout_forward(np.ones((6, 1, 4), np.float32), 0.4, 99, 3)
    np.testing.assert_array_equal(mask, want)


def test_alpha_dropout_keeps_mean_and_variance_of_standard_normal_inputs(backend):
    """Keras's claim (the self-normalizing property): standard-normal inputs keep mean 0 and
    variance 1; the dropped share is the rate."""
    for rate in (0.1, 0.3, 0.6):
        x = np.random.default_rng(14).standard_normal((997, 1001)).astype(np.float32)
        y, mask = backend.op("alpha_dropout_forward")(backend.up(x), rate, 5, 0, None)
        y = backend.down(y).astype(np.float64)
        mask = backend.down(mask)
        n = y.size  # ~1e6 draws: standard error of the mean ~1e-3, of the variance ~2e-3
        assert abs(1 - mask.mean() - rate) < 5 * np.sqrt(rate * (1 - rate) / n)
        assert abs(y.mean()) < 6e-3, (rate, y.mean())
        assert abs(y.var() - 1.0) < 1e-2, (rate, y.var())


def test_alpha_dropout_thread_invariance(num_threads):
    from pynn.backend import cpu

    x = rand(np.random.default_rng(15), (301, 7, 5, 11))
    out = []
    for n in (1, 2, 3):
        num_threads(n)
        y, mask = cpu.alpha_dropout_forward(x, 0.4, 1, 2, (None, 1, None, None))
        out.append((y, mask, cpu.alpha_dropout_backward(x, mask, 0.4)))
    for got in out[1:]:
        for g, w in zip(got, out[0]):
            np.testing.assert_array_equal(g, w)


@pytest.mark.opencl
def test_alpha_dropout_opencl_matches_cpu(ocl):
    from pynn.backend import cpu

    x = rand(np.random.default_rng(16), (5, 7, 9, 33))
    y, mask = cpu.alpha_dropout_forward(x, 0.35, 3, 17, (5, 1, 9, None))
    y_cl, mask_cl = ocl.alpha_dropout_forward(ocl.asarray(x), 0.35, 3, 17, (5, 1, 9, None))
    np.testing.assert_array_equal(mask_cl.get(), mask)
    np.testing.assert_allclose(y_cl.get(), y, rtol=1e-6, atol=1e-6)
    dx_cl = ocl.alpha_dropout_backward(ocl.asarray(np.cos(x)), mask_cl, 0.35)
    np.testing.assert_array_equal(dx_cl.get(), cpu.alpha_dropout_backward(np.cos(x), mask,
                                                                          0.35))


@pytest.mark.parametrize("noise_shape", [None, (None, 1, None, 1)], ids=["full", "shared"])
def test_alpha_dropout_layer(noise_shape, float64, seeded):
    """The identity at inference and with rate 0; backward by central differences with the
    stream rewound (the mask fixed); the stream advances by the mask's size and resumes."""
    x = seeded.normal(size=(3, 4, 5, 2))
    layer = L.AlphaDropout(0.3, noise_shape=noise_shape, seed=21)
    assert layer(x) is x
    assert L.AlphaDropout(0.0)(x, training=True) is x
    gradcheck.check_layer(layer, x, seeded,
                          before_call=lambda: layer.set_runtime_state({"offset": 0}))
    layer.set_runtime_state({"offset": 0})
    first = np.array(layer(x, training=True))
    assert layer.runtime_state()["offset"] == (x.size if noise_shape is None else 3 * 5)
    state = layer.runtime_state()
    second = np.array(layer(x, training=True))
    assert not np.array_equal(first, second)
    clone = L.AlphaDropout.from_config(layer.get_config())
    clone.set_runtime_state(state)
    np.testing.assert_array_equal(clone(x, training=True), second)
    assert clone.get_config() == layer.get_config()
    assert L.LAYERS["AlphaDropout"] is L.AlphaDropout


@pytest.mark.parametrize("noise_shape", [None, (None, 1, 3)], ids=["full", "shared"])
def test_alpha_dropout_matches_keras_with_the_same_mask(monkeypatch, noise_shape):
    """Keras keeps an element where its uniform draw is >= rate: handing Keras's layer
    uniforms that say pynn's mask (1 keep, 0 drop) gives its output and input gradient
    (torch autograd) for the same draw, which pynn's must equal; the configs agree."""
    from tests.backend_util import keras_on_torch

    keras = keras_on_torch()
    import torch

    rate = 0.3
    x = rand(np.random.default_rng(17), (4, 6, 3))
    layer = L.AlphaDropout(rate, noise_shape=noise_shape, seed=8)
    y = np.asarray(layer(x, training=True))
    mask = np.asarray(layer._cache)
    r = np.cos(np.arange(x.size)).reshape(x.shape).astype(np.float32)
    dx = np.asarray(layer.backward(r))

    k_layer = keras.layers.AlphaDropout(rate, noise_shape=noise_shape, seed=8)

    def uniform(shape, seed=None, **kwargs):
        assert tuple(shape) == mask.shape
        return torch.tensor(mask.astype(np.float32))

    from keras.src import ops as keras_ops   # the module Keras's AlphaDropout draws from

    monkeypatch.setattr(keras_ops.random, "uniform", uniform)
    xt = torch.tensor(x, requires_grad=True)
    yt = k_layer(xt, training=True)
    (yt * torch.tensor(r)).sum().backward()
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(keras.ops.convert_to_numpy(k_layer(x))), x)
    k_config, config = k_layer.get_config(), layer.get_config()
    for key in ("rate", "seed"):
        assert config[key] == k_config[key]
    assert config["noise_shape"] == (None if noise_shape is None else list(noise_shape))


def test_alpha_dropout_bad_inputs_name_what_came(backend):
    b = backend.ops
    x = backend.up(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"alpha_dropout_forward: 'rate' must be in \[0, 1\)"):
        b.alpha_dropout_forward(x, 1.0, 0, 0, None)
    with pytest.raises(ValueError, match=r"alpha_dropout_forward: 'noise_shape' must have "
                                         r"one entry per axis"):
        b.alpha_dropout_forward(x, 0.5, 0, 0, (2,))
    with pytest.raises(ValueError, match=r"alpha_dropout_forward: 'noise_shape' entries must "
                                         r"be None, 1 or x's size"):
        b.alpha_dropout_forward(x, 0.5, 0, 0, (2, 2))
    with pytest.raises(ValueError, match=r"alpha_dropout_forward: 'x' may have at most 8"):
        b.alpha_dropout_forward(backend.up(np.ones((1,) * 9, np.float32)), 0.5, 0, 0, None)
    with pytest.raises(ValueError, match=r"alpha_dropout_backward: 'mask' must have dy's "
                                         r"rank"):
        b.alpha_dropout_backward(x, backend.up(np.ones((3, 2), np.uint8)), 0.5)
    with pytest.raises(ValueError, match=r"AlphaDropout 'ad': rate must be a number in "
                                         r"\[0, 1\), got 1"):
        L.AlphaDropout(1, name="ad")
    with pytest.raises(ValueError, match=r"AlphaDropout 'ad2': noise_shape must be None or"):
        L.AlphaDropout(0.5, noise_shape=(None, 0), name="ad2")
    with pytest.raises(ValueError, match=r"AlphaDropout 'ad3': noise_shape \(None, 1\) needs "
                                         r"one entry per axis"):
        L.AlphaDropout(0.5, noise_shape=(None, 1), name="ad3")(np.ones((2, 3, 4), np.float32))
