"""Keras 3's SpectralNormalization: the power iteration (on the dense, elementwise and
reduction ops) against its float64 reference on both backends, Keras parity of outputs,
vector_u updates and gradients over several training calls (Dense, Conv2D), gradients by
finite differences, the all-zero kernel, config and bad arguments."""

import numpy as np
import pytest

import pynn
from pynn import layers
from tests.backend_util import keras_on_torch
from tests.reference import normalization_ref as ref
from tests.reference.gradcheck import assert_close, numerical_grad


@pytest.fixture
def rng():
    return np.random.default_rng(31)


@pytest.mark.parametrize("make, input_shape", [
    (lambda: layers.Dense(5), (None, 7)),
    (lambda: layers.Conv2D(3, (3, 2)), (None, 6, 5, 2)),
    (lambda: layers.Embedding(11, 33), (None, 4)),
    (lambda: layers.Dense(1), (None, 65)),
])
@pytest.mark.parametrize("power_iterations", [1, 3])
def test_normalized_weights_match_reference(backend, rng, make, input_shape, power_iterations):
    previous = pynn.backend.device()
    try:
        pynn.set_device(backend.name)
        layer = layers.SpectralNormalization(make(), power_iterations=power_iterations)
        layer.build(input_shape)
        kernel, u = (rng.uniform(-1, 1, v.value.shape).astype(np.float32)
                     for v in (layer.kernel, layer.vector_u))
        layer.kernel.value = backend.up(kernel)
        layer.vector_u.value = backend.up(u)
        new_u, new_kernel = (backend.down(a) for a in layer.normalized_weights())
    finally:
        pynn.set_device(previous)
    want_u, want_kernel = ref.spectral_normalize_ref(kernel, u, power_iterations)
    assert new_kernel.shape == kernel.shape and new_u.shape == u.shape
    np.testing.assert_allclose(new_u, want_u, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(new_kernel, want_kernel, rtol=1e-4, atol=1e-6)


def test_all_zero_kernel_is_left_alone(backend, rng):
    previous = pynn.backend.device()
    try:
        pynn.set_device(backend.name)
        layer = layers.SpectralNormalization(layers.Dense(3))
        layer.build((None, 4))
        layer.kernel.value = backend.up(np.zeros((4, 3), np.float32))
        u = backend.down(layer.vector_u.value).copy()
        layer(backend.up(rng.standard_normal((2, 4)).astype(np.float32)), training=True)
        np.testing.assert_array_equal(backend.down(layer.kernel.value), 0)
        np.testing.assert_array_equal(backend.down(layer.vector_u.value), u)
    finally:
        pynn.set_device(previous)


def test_training_writes_the_normalised_kernel_inference_reads_it(rng):
    layer = layers.SpectralNormalization(layers.Dense(4))
    x = rng.standard_normal((3, 6)).astype(np.float32)
    layer.build((None, 6))
    kernel, u = layer.kernel.numpy().copy(), layer.vector_u.numpy().copy()
    before = np.asarray(layer(x))
    np.testing.assert_array_equal(layer.kernel.numpy(), kernel)   # inference: unchanged
    layer(x, training=True)
    want_u, want_kernel = ref.spectral_normalize_ref(kernel, u, 1)
    np.testing.assert_allclose(layer.kernel.numpy(), want_kernel, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(layer.vector_u.numpy(), want_u, rtol=1e-5, atol=1e-7)
    # sigma of the stored kernel is now about 1 (power iteration converges over calls).
    for _ in range(30):
        layer(x, training=True)
    assert abs(np.linalg.svd(layer.kernel.numpy(), compute_uv=False)[0] - 1.0) < 1e-3
    assert not np.allclose(np.asarray(layer(x)), before)


def test_gradients_are_the_inner_layers_at_the_normalised_kernel(rng):
    """Keras's assign cuts sigma out of the gradient: the kernel's gradient is the inner
    layer's at the kernel the call wrote, checked by central differences in float64."""
    layer = layers.SpectralNormalization(layers.Dense(3, activation="tanh", dtype="float64"),
                                         power_iterations=2, dtype="float64")
    x = rng.standard_normal((4, 5))
    layer.build((None, 5))
    y = np.asarray(layer(x, training=True))
    r = rng.standard_normal(y.shape)
    dx = np.asarray(layer.backward(r.copy()))
    grads = {v.path: np.asarray(v.grad) for v in layer.trainable_weights}

    def loss():
        return float(np.sum(np.asarray(layer.layer(x)) * r))
    assert_close("d/dx", dx, numerical_grad(loss, x))
    for v in layer.trainable_weights:
        assert_close(v.path, grads[v.path], numerical_grad(loss, v.value))
    assert [v.path.split("/")[-1] for v in layer.weights] == ["kernel", "vector_u", "bias"]
    assert [v.trainable for v in layer.weights] == [True, False, True]


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("kind", ["Dense", "Conv2D"])
def test_matches_keras_over_training_calls(rng, kind):
    keras = keras_on_torch()
    import torch

    make = {"Dense": (lambda lib: lib.layers.Dense(3), (4, 5)),
            "Conv2D": (lambda lib: lib.layers.Conv2D(4, 3), (2, 6, 7, 3))}
    build, shape = make[kind]
    k_layer = keras.layers.SpectralNormalization(build(keras), power_iterations=2)
    x = rng.standard_normal(shape).astype(np.float32)
    k_layer(x)
    layer = layers.SpectralNormalization(build(pynn), power_iterations=2)
    layer.build((None,) + shape[1:])
    layer.set_weights(k_layer.get_weights())
    for _ in range(3):
        x_t = torch.tensor(x, requires_grad=True)
        k_out = k_layer(x_t, training=True)
        r = rng.standard_normal(tuple(k_out.shape)).astype(np.float32)
        (k_out * torch.tensor(r)).sum().backward()
        got = np.asarray(layer(x, training=True))
        dx = np.asarray(layer.backward(r))
        np.testing.assert_allclose(got, k_out.detach().numpy(), rtol=1e-5, atol=2e-6)
        np.testing.assert_allclose(dx, x_t.grad.numpy(), rtol=1e-5, atol=2e-6)
        np.testing.assert_allclose(layer.vector_u.numpy(), k_layer.vector_u.numpy(),
                                   rtol=1e-5, atol=1e-7)
        for var, k_var in ((layer.kernel, k_layer.layer.kernel),
                           (layer.layer.bias, k_layer.layer.bias)):
            np.testing.assert_allclose(np.asarray(var.grad), k_var.value.grad.numpy(),
                                       rtol=1e-5, atol=5e-6)
            k_var.value.grad = None
    for a, b in zip(layer.get_weights(), k_layer.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(layer(x)), k_layer(x).detach().numpy(), rtol=1e-5,
                               atol=2e-6)
    assert layer.get_config()["power_iterations"] == k_layer.get_config()["power_iterations"]


def test_config_round_trip(rng):
    layer = layers.SpectralNormalization(layers.Conv2D(2, 3, name="inner"), power_iterations=4)
    layer.build((None, 5, 5, 1))
    clone = layers.SpectralNormalization.from_config(layer.get_config())
    clone.build((None, 5, 5, 1))
    clone.set_weights(layer.get_weights())
    assert clone.power_iterations == 4 and clone.layer.name == "inner"
    x = rng.standard_normal((2, 5, 5, 1)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(clone(x)), np.asarray(layer(x)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="SpectralNormalization '.*': `power_iterations` "
                                         "should be an int greater than zero, got 0"):
        layers.SpectralNormalization(layers.Dense(2), power_iterations=0)
    with pytest.raises(ValueError, match="SpectralNormalization: layer must be a pynn Layer"):
        layers.SpectralNormalization("dense")
    wrapper = layers.SpectralNormalization(layers.Flatten())
    with pytest.raises(ValueError, match="Flatten object has no attribute 'kernel' nor "
                                         "'embeddings'"):
        wrapper.build((None, 3, 2))
    layer = layers.SpectralNormalization(layers.Dense(2))
    layer.build((None, 4))
    with pytest.raises(ValueError, match=r"expected input shape \(None, 4\), got \(None, 5\)"):
        layer(np.ones((2, 5), np.float32))
