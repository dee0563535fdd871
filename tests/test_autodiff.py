"""pynn.GradientTape: watching, persistence, non-scalar targets, unconnected sources, a
variable used twice, built-in layers as one node, and nothing recorded at inference."""

import numpy as np
import pytest

import pynn
from pynn import layers, ops
from pynn.variables import Variable
from tests.reference.gradcheck import assert_close, numerical_grad


def _var(a, name="v", trainable=True):
    return Variable(np.array(a, dtype=np.float64), name, trainable=trainable)


def test_trainable_variables_are_watched_and_tensors_are_not():
    v = _var([1.0, 2.0])
    t = ops.convert_to_tensor(np.array([3.0, 4.0]))
    with pynn.GradientTape() as tape:
        y = ops.sum(v * t)
    gv, gt = tape.gradient(y, [v, t])
    np.testing.assert_allclose(gv.numpy(), [3.0, 4.0])
    assert gt is None  # an unwatched tensor is a constant


def test_watch_a_tensor_and_unconnected_source_is_none():
    t = ops.convert_to_tensor(np.array([1.0, -2.0]))
    other = _var([5.0])
    with pynn.GradientTape() as tape:
        tape.watch(t)
        y = ops.sum(ops.square(t))
    gt, go = tape.gradient(y, [t, other])
    np.testing.assert_allclose(gt.numpy(), [2.0, -4.0])
    assert go is None


def test_non_trainable_variable_is_not_watched_unless_asked():
    frozen = _var([2.0], trainable=False)
    with pynn.GradientTape() as tape:
        y = ops.sum(frozen * 3)
    assert tape.gradient(y, frozen) is None
    with pynn.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(frozen)
        y = ops.sum(frozen * 3)
    np.testing.assert_allclose(tape.gradient(y, frozen).numpy(), [3.0])


def test_non_scalar_target_gradient_is_that_of_its_sum():
    v = _var([[1.0, 2.0], [3.0, 4.0]])
    with pynn.GradientTape() as tape:
        y = v * v  # not reduced
    np.testing.assert_allclose(tape.gradient(y, v).numpy(), 2 * v.value)
    with pynn.GradientTape() as tape:
        y = v * v
    seed = np.array([[1.0, 0.0], [0.5, 2.0]])
    np.testing.assert_allclose(tape.gradient(y, v, output_gradients=seed).numpy(),
                               2 * v.value * seed)


def test_variable_used_twice_adds_up():
    v = _var([1.5, -0.5])
    with pynn.GradientTape() as tape:
        y = ops.sum(v * v + ops.exp(v) * v)
    want = 2 * v.value + np.exp(v.value) * (1 + v.value)
    np.testing.assert_allclose(tape.gradient(y, v).numpy(), want)


def test_persistent_tape_answers_twice_and_default_once():
    v = _var([2.0])
    with pynn.GradientTape(persistent=True) as tape:
        y = ops.sum(v ** 3)
        z = ops.sum(v * 4)
    np.testing.assert_allclose(tape.gradient(y, v).numpy(), [12.0])
    np.testing.assert_allclose(tape.gradient(z, v).numpy(), [4.0])
    with pynn.GradientTape() as tape:
        y = ops.sum(v ** 3)
    tape.gradient(y, v)
    with pytest.raises(RuntimeError, match="non-persistent"):
        tape.gradient(y, v)


def test_gradient_of_a_dict_and_single_source():
    a, b = _var([1.0]), _var([2.0])
    with pynn.GradientTape() as tape:
        y = ops.sum(a * b)
    grads = tape.gradient(y, {"a": a, "b": b})
    assert set(grads) == {"a", "b"}
    np.testing.assert_allclose(grads["a"].numpy(), [2.0])


def test_nothing_is_recorded_outside_a_tape():
    v = _var([1.0])
    y = v * 2
    assert y.node is None
    with pynn.GradientTape() as tape, tape.stop_recording():
        z = v * 2
    assert z.node is None


def test_watch_refuses_arrays():
    with pynn.GradientTape() as tape, pytest.raises(TypeError, match="convert_to_tensor"):
        tape.watch(np.ones(2))


def test_builtin_layer_is_one_node_with_its_fused_backward():
    """Dense under a tape is recorded once (its fused backward), and gives the same
    gradients as the finite differences of its forward."""
    rng = np.random.default_rng(0)
    layer = layers.Dense(3, activation="tanh", dtype="float64")
    x = rng.standard_normal((4, 5))
    layer.build((None, 5))
    r = rng.standard_normal((4, 3))
    xt = ops.convert_to_tensor(x)
    with pynn.GradientTape() as tape:
        tape.watch(xt)
        y = layer(xt, training=True)
        loss = ops.sum(y * r)
    assert y.node is not None and y.node.name == layer.name
    assert all(getattr(i, "node", None) is None for i in y.node.inputs)  # not its ops
    gx, gk, gb = tape.gradient(loss, [xt, layer.kernel, layer.bias])

    def f():
        return float(np.sum(np.asarray(layer(x)) * r))

    assert_close("dx", gx.numpy(), numerical_grad(f, x))
    assert_close("dkernel", gk.numpy(), numerical_grad(f, layer.kernel.value))
    assert_close("dbias", gb.numpy(), numerical_grad(f, layer.bias.value))
    assert layer.kernel.grad is None  # the tape's node left the layer's grads as they were


def test_layer_shared_twice_under_a_tape():
    layer = layers.Dense(2, use_bias=False, dtype="float64")
    layer.build((None, 2))
    layer.set_weights([np.array([[1.0, 2.0], [3.0, 4.0]])])
    x = np.array([[1.0, -1.0]])
    with pynn.GradientTape() as tape:
        y = layer(layer(x, training=True), training=True)
        loss = ops.sum(y)
    g = tape.gradient(loss, layer.kernel).numpy()
    k = layer.kernel.value

    def f():
        return float(np.sum((x @ k) @ k))

    assert_close("shared kernel", g, numerical_grad(f, k))


def test_builtin_layer_called_in_inference_under_a_tape_says_so():
    layer = layers.Dense(2)
    x = np.ones((1, 3), np.float32)
    with pynn.GradientTape() as tape:
        y = ops.sum(layer(x))
    with pytest.raises(RuntimeError, match="training=True"):
        tape.gradient(y, layer.kernel)


def test_deep_chain_does_not_recurse():
    v = _var([1.0])
    with pynn.GradientTape() as tape:
        y = v
        for _ in range(3000):
            y = y * 1.0
        y = ops.sum(y)
    np.testing.assert_allclose(tape.gradient(y, v).numpy(), [1.0])
