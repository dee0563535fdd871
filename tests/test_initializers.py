"""Initializers: Keras 3's fan conventions, limits and spreads, seeding, serialization.

Keras draws from a different generator, so values cannot match; the distributions must. The
statistical checks use large draws and tolerances of several standard errors.
"""

import math

import numpy as np
import pytest

import pynn
from pynn import initializers, layers


@pytest.mark.parametrize("shape,fans", [((7,), (7, 7)), ((30, 50), (30, 50)),
                                        ((3, 3, 4, 8), (36, 72)), ((5, 2, 6), (10, 30))])
def test_fans(shape, fans):
    assert initializers._fans(shape) == fans


@pytest.mark.parametrize("name,shape,limit", [
    ("glorot_uniform", (200, 300), math.sqrt(6 / 500)),
    ("glorot_uniform", (3, 3, 16, 32), math.sqrt(6 / (9 * 16 + 9 * 32))),
    ("he_uniform", (200, 300), math.sqrt(6 / 200)),
    ("lecun_uniform", (200, 300), math.sqrt(3 / 200)),
])
def test_uniform_limits(seeded, name, shape, limit):
    w = initializers.get(name)(shape)
    assert w.dtype == np.float32 and w.shape == shape
    assert np.abs(w).max() <= limit
    assert np.abs(w).max() > 0.98 * limit  # the whole range is used
    assert np.std(w) == pytest.approx(limit / math.sqrt(3), rel=0.03)


@pytest.mark.parametrize("name,shape,std", [
    ("glorot_normal", (300, 400), math.sqrt(2 / 700)),
    ("he_normal", (300, 400), math.sqrt(2 / 300)),
    ("lecun_normal", (3, 3, 30, 40), math.sqrt(1 / 270)),
])
def test_truncated_normals(seeded, name, shape, std):
    w = initializers.get(name)(shape).astype(np.float64)
    # The truncated draw's stddev is the target: Keras divides by 0.8796... to get it.
    assert np.std(w) == pytest.approx(std, rel=0.03)
    assert np.abs(w).max() <= 2 * std / 0.87962566103423978 + 1e-6
    assert abs(np.mean(w)) < 5 * std / math.sqrt(w.size)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_keras_statistics_agree():
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    for name in ("glorot_uniform", "he_normal", "lecun_normal", "glorot_normal"):
        k = keras.ops.convert_to_numpy(keras.initializers.get(name)((120, 80)))
        p = initializers.get(name)((120, 80))
        assert np.std(p) == pytest.approx(np.std(k), rel=0.05), name
        assert np.abs(p).max() <= np.abs(k).max() * 1.05 + 1e-3, name


def test_orthogonal():
    w = initializers.Orthogonal(gain=2.0, seed=3)((6, 4)).astype(np.float64)
    np.testing.assert_allclose(w.T @ w, 4 * np.eye(4), atol=1e-5)
    wide = initializers.Orthogonal(seed=3)((3, 7)).astype(np.float64)
    np.testing.assert_allclose(wide @ wide.T, np.eye(3), atol=1e-6)
    conv = initializers.Orthogonal(seed=1)((2, 2, 3, 5)).reshape(12, 5).astype(np.float64)
    np.testing.assert_allclose(conv.T @ conv, np.eye(5), atol=1e-5)
    with pytest.raises(ValueError, match="rank >= 2"):
        initializers.Orthogonal()((5,))


def test_constant_zeros_ones_random():
    assert np.all(initializers.get("zeros")((2, 3)) == 0)
    assert np.all(initializers.get("ones")((4,), dtype="float64") == 1)
    assert initializers.get("ones")((4,), dtype="float64").dtype == np.float64
    assert np.all(initializers.Constant(0.25)((3,)) == 0.25)
    u = initializers.RandomUniform(-0.5, 1.5, seed=0)((10000,))
    assert u.min() >= -0.5 and u.max() <= 1.5 and np.mean(u) == pytest.approx(0.5, abs=0.03)
    n = initializers.RandomNormal(1.0, 0.1, seed=0)((10000,))
    assert np.mean(n) == pytest.approx(1.0, abs=0.005) and np.std(n) == pytest.approx(0.1, rel=0.05)


def test_seeds():
    a = initializers.GlorotUniform(seed=5)((4, 6))
    b = initializers.GlorotUniform(seed=5)((4, 6))
    c = initializers.GlorotUniform(seed=6)((4, 6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    pynn.utils.set_random_seed(9)
    d1 = layers.Dense(5)
    d1.build((None, 3))
    pynn.utils.set_random_seed(9)
    d2 = layers.Dense(5)
    d2.build((None, 3))
    np.testing.assert_array_equal(d1.get_weights()[0], d2.get_weights()[0])
    assert np.all(d1.get_weights()[1] == 0)  # bias: zeros by default, as Keras


@pytest.mark.parametrize("init", [
    initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal", seed=1),
    initializers.HeUniform(seed=2), initializers.Constant(3.0),
    initializers.RandomNormal(0.5, 0.2, seed=4), initializers.Orthogonal(1.5, seed=1),
])
def test_serialize_round_trip(init):
    again = initializers.get(initializers.serialize(init))
    assert type(again) is type(init) and again.get_config() == init.get_config()
    np.testing.assert_array_equal(again((4, 5)), init((4, 5)))


@pytest.mark.parametrize("bad", ["nope", 3, {"class_name": "os.system"}, None])
def test_unknown_initializer(bad):
    with pytest.raises(ValueError, match="Unknown initializer"):
        initializers.get(bad)


@pytest.mark.parametrize("kwargs", [{"scale": 0}, {"mode": "fan_max"},
                                    {"distribution": "cauchy"}])
def test_variance_scaling_validation(kwargs):
    with pytest.raises(ValueError):
        initializers.VarianceScaling(**kwargs)


@pytest.mark.parametrize("name", ["glorot_uniform", "he_normal", "random_normal",
                                  "random_uniform", "variance_scaling"])
def test_float32_weights_are_drawn_in_float32(seeded, name):
    """Peak memory of one float32 draw: the array itself, not a float64 draw and its cast
    (three times as much)."""
    import tracemalloc

    shape = (500, 400)
    tracemalloc.start()
    try:
        w = initializers.get(name)(shape, dtype="float32")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert w.dtype == np.float32 and w.shape == shape
    nbytes = 500 * 400 * 4
    assert peak < 1.6 * nbytes  # the truncated normal's two masks add half


def test_float64_draws_are_numpys_values():
    """float64 weights keep the values NumPy's uniform/normal give for the same seed."""
    rng = np.random.default_rng(3)
    np.testing.assert_array_equal(initializers.RandomUniform(-0.2, 0.3, seed=3)((40, 7),
                                                                                "float64"),
                                  rng.uniform(-0.2, 0.3, (40, 7)))
    rng = np.random.default_rng(3)
    np.testing.assert_array_equal(initializers.RandomNormal(0.1, 0.5, seed=3)((40, 7),
                                                                              "float64"),
                                  0.1 + 0.5 * rng.standard_normal((40, 7)))


def test_truncated_normal_and_identity_are_keras_s(seeded):
    """keras.initializers.TruncatedNormal (two standard deviations) and Identity, by name
    and class, their configs Keras's."""
    w = initializers.get("truncated_normal")((400, 300))
    assert np.abs(w).max() <= 2 * 0.05 and np.abs(w).max() > 1.9 * 0.05
    assert np.std(w) == pytest.approx(0.05 * 0.87962566, rel=0.03)
    shifted = initializers.TruncatedNormal(mean=1.0, stddev=0.2, seed=3)((100, 100))
    assert abs(shifted.mean() - 1.0) < 0.01 and np.abs(shifted - 1.0).max() <= 0.4
    np.testing.assert_array_equal(initializers.get("identity")((3, 4)), np.eye(3, 4))
    np.testing.assert_array_equal(initializers.Identity(2.5)((2, 2)), 2.5 * np.eye(2))
    for name, config in (("TruncatedNormal", {"mean": 0.0, "stddev": 0.05, "seed": None}),
                         ("IdentityInitializer", {"gain": 1.0}),
                         ("OrthogonalInitializer", {"gain": 1.0, "seed": None})):
        got = initializers.get({"class_name": name, "config": config})
        assert got.get_config() == config
    with pytest.raises(ValueError, match="takes 2-D shapes"):
        initializers.Identity()((2, 2, 2))
    layer = layers.Dense(4, kernel_initializer="identity")
    layer.build((None, 4))
    np.testing.assert_array_equal(layer.kernel.value, np.eye(4))
