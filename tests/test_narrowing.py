"""Every integer conversion at the boundary range-checks before narrowing (issue 11): a label
of 2**32 + 1 is an error naming the value, never a silently wrapped 1, on both backends and
through every entry point (the backend's asarray, the loss and metric objects, fit)."""

import numpy as np
import pytest

import pynn
from pynn import layers, losses, metrics

BACKENDS = ["cpu", pytest.param("opencl", marks=pytest.mark.opencl)]
WRAPS_TO_ONE = 2**32 + 1


@pytest.fixture(params=BACKENDS)
def device(request):
    previous = pynn.get_device()
    pynn.set_device(request.param)
    yield request.param
    pynn.set_device(previous)


def test_asarray_refuses_integers_its_dtype_cannot_hold(device):
    from pynn import backend

    ops = backend.current()
    with pytest.raises(ValueError, match="4294967297 does not fit int32"):
        ops.asarray(np.array([0, WRAPS_TO_ONE]), np.int32)
    with pytest.raises(ValueError, match="does not fit int32"):
        ops.asarray(np.array([-(2**31) - 1]), np.int32)
    got = ops.to_numpy(ops.asarray(np.array([-(2**31), 2**31 - 1], np.int64), np.int32))
    assert got.tolist() == [-(2**31), 2**31 - 1]
    with pytest.raises(TypeError, match="imaginary"):
        ops.asarray(np.array([1 + 2j]), np.float32)


def test_sparse_loss_and_accuracy_refuse_a_wrapping_label(device):
    y_pred = np.full((3, 4), 0.25, np.float32)
    y_true = np.array([0, WRAPS_TO_ONE, 1])
    with pytest.raises(ValueError, match="4294967297"):
        losses.SparseCategoricalCrossentropy()(y_true, y_pred)
    accuracy = metrics.SparseCategoricalAccuracy()
    with pytest.raises(ValueError, match="4294967297"):
        accuracy.update_state(y_true, y_pred)


def test_fit_refuses_a_wrapping_label(device):
    model = pynn.Sequential([layers.Input(shape=(2,)), layers.Dense(3, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match="4294967297"):
        model.fit(np.ones((2, 2), np.float32), np.array([0, WRAPS_TO_ONE]), verbose=0)
    for a, b in zip(before, model.get_weights()):
        assert np.array_equal(a, b), "a refused batch changed the weights"
