"""Variable's Keras API: assign, assign_add, assign_sub, numpy, dtype, ndim, np.asarray.

A change through assign reaches what is derived from weights: a model's prepared inference
plan (packed kernels, BatchNormalization folded into the layer before it) answered with the
old weights after a write into ``value`` in place, which is why assign exists.
"""

import numpy as np
import pytest

import pynn
from pynn import layers as L
from tests.backend_util import assert_close, rand


def model_with_folded_norm():
    return pynn.Sequential([L.Input((5,)), L.Dense(6, activation="relu"),
                            L.BatchNormalization(), L.Dense(4), L.Dense(3)])


def randomized(model, rng):
    model.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(w.dtype)
                       for w in model.get_weights()])
    return model


def test_a_prepared_plan_follows_assign():
    rng = np.random.default_rng(0)
    model = randomized(model_with_folded_norm(), rng)
    for batch in (1, 7):
        x = rand(rng, (batch, 5))
        model.predict_on_batch(x)  # the plan is made (and at batch 1 the lane)
        norm, dense = model.layers[1], model.layers[2]
        norm.gamma.assign(rng.uniform(2, 3, 6))
        dense.kernel.assign_add(0.25)
        norm.moving_mean.assign_sub(np.float32(0.5))
        for _ in range(2):
            assert_close(model.predict_on_batch(x), model._plan.forward([x], False)[0][0], 1e-6,
                         f"batch {batch} after assign")


def test_assign_casts_copies_and_returns_the_new_value():
    layer = L.Dense(3)
    layer.build((None, 2))
    source = np.arange(6, dtype=np.float64).reshape(2, 3)
    out = layer.kernel.assign(source)
    assert out is layer.kernel.value and out.dtype == np.float32
    np.testing.assert_array_equal(layer.kernel.numpy(), source.astype(np.float32))
    source[0, 0] = 100  # the caller's array is not the variable's
    assert layer.kernel.numpy()[0, 0] == 0
    other = L.Dense(3)
    other.build((None, 2))
    other.kernel.assign(layer.kernel)  # a Variable's value
    np.testing.assert_array_equal(other.kernel.numpy(), layer.kernel.numpy())
    layer.kernel.assign_sub([1, 2, 3])  # broadcast along the rows
    np.testing.assert_array_equal(layer.kernel.numpy(), np.float32([[-1, -1, -1], [2, 2, 2]]))
    layer.bias.assign_add(layer.bias)  # a Variable as the delta
    np.testing.assert_array_equal(layer.bias.numpy(), np.zeros(3, np.float32))


def test_numpy_dtype_ndim_and_array_conversion():
    layer = L.Dense(4, dtype="float64")
    layer.build((None, 3))
    v = layer.kernel
    assert v.dtype == "float64" and v.ndim == 2 and v.shape == (3, 4)
    copy = v.numpy()
    copy[...] = 7
    assert not np.any(v.numpy() == 7), "numpy() must return a copy"
    np.testing.assert_array_equal(np.asarray(v), v.numpy())
    assert np.asarray(v, dtype=np.float32).dtype == np.float32


def test_bad_values_name_the_variable():
    layer = L.Dense(3, name="head")
    layer.build((None, 2))
    with pytest.raises(ValueError, match=r"'head/kernel': assign expects shape \(2, 3\), "
                                         r"got \(3, 2\)"):
        layer.kernel.assign(np.zeros((3, 2)))
    with pytest.raises(TypeError, match="'head/bias': assign expects real numbers"):
        layer.bias.assign(np.array(["a", "b", "c"]))
    with pytest.raises(ValueError, match=r"'head/kernel': assign_add expects a value that "
                                         r"broadcasts to shape \(2, 3\), got shape \(2, 1, 3\)"):
        layer.kernel.assign_add(np.zeros((2, 1, 3)))
    with pytest.raises(ValueError, match="broadcasts to shape"):
        layer.kernel.assign_sub(np.zeros(2))
    with pytest.raises(TypeError, match="'head/bias': assign_sub expects real numbers"):
        layer.bias.assign_sub(np.array([1j, 2j, 3j]))
    np.testing.assert_array_equal(layer.bias.numpy(), np.zeros(3, np.float32))  # untouched


@pytest.mark.opencl
def test_assign_on_opencl_keeps_the_value_on_the_device(restore_device):
    rng = np.random.default_rng(1)
    pynn.set_device("opencl")
    model = randomized(model_with_folded_norm(), rng)
    model.compile(optimizer="sgd", loss="mse")
    x, y = rand(rng, (4, 5)), rand(rng, (4, 3))
    kernel = model.layers[0].kernel
    new = rng.uniform(-1, 1, kernel.shape)
    kernel.assign(new)
    assert type(kernel.value).__module__.startswith("pyopencl")
    np.testing.assert_array_equal(kernel.numpy(), new.astype(np.float32))
    kernel.assign_add(1.0)
    np.testing.assert_allclose(kernel.numpy(), new.astype(np.float32) + 1, rtol=1e-6)
    before = kernel.numpy()
    model.train_on_batch(x, y)  # the optimizer updates the assigned buffer
    assert not np.array_equal(kernel.numpy(), before)


@pytest.fixture
def restore_device():
    previous = pynn.get_device()
    yield
    pynn.set_device(previous)
