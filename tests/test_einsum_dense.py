"""Keras 3's EinsumDense (pynn/layers/einsum_dense.py): Keras parity of outputs and every
gradient over the equation forms Keras takes, central differences, OpenCL against the CPU,
the kernel's initial spread, Keras files, and bad equations."""


import numpy as np
import pytest

from tests.backend_util import assert_step_matches_on_opencl, keras_on_torch, rand

CASES = [  # equation, output_shape, bias_axes, input shape, activation
    ("ab,bc->ac", (5,), None, (3, 4), None),
    ("ab,bc->ac", (5,), "c", (3, 4), "relu"),
    ("abc,cd->abd", (None, 6), "d", (3, 4, 5), "gelu"),
    ("abc,cde->abde", (None, 2, 3), "de", (3, 4, 5), None),
    ("abcd,cde->abe", (None, 7), "e", (3, 4, 2, 5), "tanh"),
    ("...b,bc->...c", (6,), "c", (3, 4, 5), None),
    ("...ab,bc->...ac", (None, 6), "c", (2, 3, 4, 5), "sigmoid"),
    ("abc,cd->ad", (6,), "d", (3, 4, 5), None),          # an input axis summed away
    ("abc,bd->acd", (5, 7), "cd", (3, 4, 5), None),      # contracting a middle axis
    ("abc,dc->adb", (6, 4), "d", (3, 4, 5), "swish"),    # the output's axes reordered
]


@pytest.fixture
def rng():
    return np.random.default_rng(2034)


_keras = keras_on_torch


@pytest.mark.parametrize("equation, output_shape, bias_axes, shape, activation", CASES)
def test_matches_keras_forward_and_gradients(rng, equation, output_shape, bias_axes, shape,
                                             activation):
    keras = _keras()
    import torch

    from pynn import layers

    k_layer = keras.layers.EinsumDense(equation, output_shape, bias_axes=bias_axes,
                                       activation=activation,
                                       bias_initializer="random_normal")
    x = rand(rng, shape)
    tx = torch.tensor(x, requires_grad=True)
    want = k_layer(tx)
    r = rng.standard_normal(tuple(want.shape)).astype(np.float32)
    (want * torch.tensor(r)).sum().backward()
    layer = layers.EinsumDense(equation, output_shape, bias_axes=bias_axes,
                               activation=activation)
    layer(x)
    assert [tuple(v.shape) for v in layer.weights] == [tuple(w.shape) for w in k_layer.weights]
    layer.set_weights([keras.ops.convert_to_numpy(w) for w in k_layer.weights])
    got = layer(x, training=True)
    np.testing.assert_allclose(np.asarray(got), want.detach().numpy(), atol=2e-6)
    np.testing.assert_allclose(layer.backward(r), tx.grad.numpy(), atol=2e-6)
    for v, w in zip(layer.weights, k_layer.weights):
        np.testing.assert_allclose(v.grad, w.value.grad.numpy(), atol=2e-6, err_msg=v.path)


@pytest.mark.parametrize("equation, output_shape, bias_axes, shape, activation", CASES)
def test_gradients_match_central_differences(float64, rng, equation, output_shape, bias_axes,
                                             shape, activation):
    from pynn import layers
    from tests.reference import gradcheck

    layer = layers.EinsumDense(equation, output_shape, bias_axes=bias_axes,
                               activation=activation, bias_initializer="random_normal")
    small = tuple(min(d, 3) for d in shape)
    if equation.startswith("abc,bd") or equation.startswith("ab,"):
        small = shape   # the kernel's axes follow the input's
    x = rng.standard_normal(small if "..." in equation else shape)
    gradcheck.check_layer(layer, x, rng)


@pytest.mark.opencl
def test_on_opencl_matches_the_cpu(rng):
    import pynn
    from pynn import layers as L

    def build():
        inputs = L.Input((3, 5))
        h = L.EinsumDense("abc,cde->abde", (None, 2, 3), bias_axes="de",
                          activation="tanh")(inputs)
        h = L.EinsumDense("abcd,cde->abe", (None, 4), bias_axes="e")(h)
        return pynn.Model(inputs, L.EinsumDense("abc,bcd->ad", (6,), bias_axes="d")(h))

    assert_step_matches_on_opencl(build, rand(rng, (4, 3, 5)), rand(rng, (4, 6)))


def test_kernel_starts_with_keras_spread():
    keras = _keras()
    from pynn import layers

    x = np.zeros((2, 3, 256), np.float32)
    k_layer = keras.layers.EinsumDense("abc,cde->abde", (None, 8, 32))
    k_layer(x)
    layer = layers.EinsumDense("abc,cde->abde", (None, 8, 32))
    layer(x)
    want = float(np.std(keras.ops.convert_to_numpy(k_layer.weights[0])))
    np.testing.assert_allclose(float(np.std(layer.get_weights()[0])), want, rtol=0.1)


def test_keras_files_both_ways(rng, tmp_path):
    keras = _keras()
    import pynn

    def build(lib):
        L = lib.layers
        inputs = L.Input((3, 5))
        # Keras leaves a free axis it is not told of unknown, and a kernel cannot use it
        h = L.EinsumDense("abc,cde->abde", (3, 2, 3), bias_axes="de",
                          activation="relu")(inputs)
        h = L.EinsumDense("...cd,de->...ce", (2, 4), bias_axes="e")(h)
        out = L.EinsumDense("abcd,de->ae", (2,))(h)   # b and c summed away
        return (lib.Model if hasattr(lib, "Model") else lib.models.Model)(inputs, out)

    x = rand(rng, (4, 3, 5))
    k_model = build(keras)
    k_model.save(tmp_path / "k.keras")
    model = pynn.load_model(tmp_path / "k.keras")
    np.testing.assert_allclose(model.predict(x, verbose=0), k_model.predict(x, verbose=0),
                               atol=2e-6)
    model.set_weights([w * 0.5 for w in model.get_weights()])
    model.save(tmp_path / "p.keras")
    back = keras.saving.load_model(tmp_path / "p.keras")
    np.testing.assert_allclose(back.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=2e-6)


@pytest.mark.parametrize("make, message", [
    (lambda L: L.EinsumDense("ab->b", (3,)), "invalid equation"),
    (lambda L: L.EinsumDense("ab,bz->ac", (3,)), "kernel letter 'z'"),
    (lambda L: L.EinsumDense("abc,bcd->abd", (None, 3)), "in the input, the kernel and the output"),
    (lambda L: L.EinsumDense("ab,bc->ac", (3,), bias_axes="q"), "bias_axes must be letters"),
    (lambda L: L.EinsumDense("aab,bc->ac", (3,)), "repeats a letter"),
    (lambda L: L.EinsumDense("ab,bc->ac", "x"), "output_shape must be an int"),
])
def test_bad_equations_name_the_layer(make, message):
    from pynn import layers as L

    with pytest.raises(ValueError, match=message):
        make(L)


def test_input_of_another_rank_is_refused(rng):
    from pynn import layers as L

    layer = L.EinsumDense("abc,cd->abd", (None, 4))
    with pytest.raises(ValueError, match=r"names 3 input axes, got an input of rank 2"):
        layer(rand(rng, (3, 5)))
