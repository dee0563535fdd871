"""``activation=`` a callable on built-in layers (issue 13): a pynn/Keras activation function
maps to its fused kernel; any other callable built from pynn.ops runs after the layer's
linear part, differentiated through the tape, and matches the same model written with ops;
saving such a layer needs the function registered."""

import numpy as np
import pytest

import pynn
from pynn import layers, ops
from tests.reference.gradcheck import assert_close, numerical_grad


def scaled_tanh(t):
    return ops.tanh(t) * 1.5 + ops.square(t) * 0.1


class OpsDense(layers.Layer):
    """The reference: the same function written as a custom layer of pynn.ops."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.w = self.add_weight("kernel", (input_shape[-1], self.units), "glorot_uniform")
        self.b = self.add_weight("bias", (self.units,), "zeros")
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def call(self, x, training=False):
        return scaled_tanh(ops.matmul(x, self.w) + self.b)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((24, 5)).astype(np.float32),
            rng.standard_normal((24, 3)).astype(np.float32))


def test_named_functions_map_to_the_fused_kernel():
    assert layers.Dense(3, activation=ops.relu).activation == "relu"
    assert layers.Conv2D(2, 3, activation=ops.sigmoid).activation == "sigmoid"
    assert layers.Dense(3, activation=ops.silu).activation == "silu"
    custom = layers.Dense(3, activation=scaled_tanh)
    assert custom.activation == "linear" and custom._activation_fn is scaled_tanh


def test_custom_activation_matches_the_ops_layer_and_trains():
    x, y = _data()
    ref = pynn.Sequential([layers.Input((5,)), OpsDense(3)])
    got = pynn.Sequential([layers.Input((5,)), layers.Dense(3, activation=scaled_tanh)])
    got.set_weights(ref.get_weights())
    np.testing.assert_allclose(got.predict(x, verbose=0), ref.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    histories = []
    for model in (ref, got):
        model.compile(pynn.optimizers.SGD(0.05), "mse")
        histories.append(model.fit(x, y, epochs=4, batch_size=8, shuffle=False,
                                   verbose=0).history["loss"])
    assert histories[1][-1] < histories[1][0]  # it trains
    np.testing.assert_allclose(histories[1], histories[0], rtol=1e-5)
    for a, b in zip(got.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_custom_activation_backward_by_finite_differences():
    pynn.set_floatx("float64")
    try:
        rng = np.random.default_rng(3)
        layer = layers.Conv2D(2, 3, padding="same", activation=scaled_tanh)
        x = rng.standard_normal((2, 5, 4, 3))
        layer.build(x.shape)
        r = rng.standard_normal((2, 5, 4, 2))
        layer.needs_input_grad = True
        layer(x, training=True)
        dx = layer.backward(r)

        def loss():
            return float(np.sum(layer(x, training=False) * r))

        assert_close("Conv2D(activation=fn) dx", dx, numerical_grad(loss, x), 1e-5, 1e-7)
        kernel = layer.kernel
        layer(x, training=True)
        layer.backward(r)
        got = np.array(kernel.grad)
        assert_close("Conv2D(activation=fn) dkernel", got,
                     numerical_grad(loss, kernel.value), 1e-5, 1e-7)
    finally:
        pynn.set_floatx("float32")


def test_custom_activation_under_a_tape():
    x, _ = _data(1)
    layer = layers.Dense(3, activation=scaled_tanh)
    layer.build((None, 5))
    with pynn.GradientTape() as tape:
        loss = ops.sum(layer(x, training=True))
    grads = tape.gradient(loss, layer.trainable_weights)
    z = x.astype(np.float64) @ layer.kernel.value + layer.bias.value
    dz = (1 - np.tanh(z) ** 2) * 1.5 + 0.2 * z
    np.testing.assert_allclose(grads[0].numpy(), x.T @ dz, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads[1].numpy(), dz.sum(0), rtol=1e-4, atol=1e-5)


def test_saving_needs_the_function_registered(tmp_path):
    inp = pynn.Input((5,))
    model = pynn.Model(inp, layers.Dense(3, activation=lambda t: ops.square(t))(inp))
    with pytest.raises(ValueError, match="cannot save the activation.*register_serializable"):
        model.save(tmp_path / "a.pynn")

    @pynn.saving.register_serializable("test_custom_activation")
    def cubed(t):
        return t * t * t

    model = pynn.Model(inp, layers.Dense(3, activation=cubed)(inp))
    model.save(tmp_path / "b.pynn")
    loaded = pynn.saving.load_model(tmp_path / "b.pynn")
    x, _ = _data(2)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6)
    config = model.layers[-1].get_config()
    assert config["activation"] == "test_custom_activation>cubed"
    clone = layers.Dense.from_config(config)
    assert clone._activation_fn is cubed


def test_keras_parity_of_a_callable_activation():
    import os
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    x, _ = _data(4)

    def k_act(t):
        return keras.ops.tanh(t) * 1.5 + keras.ops.square(t) * 0.1

    theirs = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, activation=k_act)])
    ours = pynn.Sequential([layers.Input((5,)), layers.Dense(3, activation=scaled_tanh)])
    ours.set_weights(theirs.get_weights())
    np.testing.assert_allclose(ours.predict(x, verbose=0),
                               np.asarray(theirs.predict(x, verbose=0)), rtol=1e-5, atol=1e-6)


@pytest.mark.opencl
def test_custom_activation_trains_on_opencl_as_on_the_cpu():
    x, y = _data(5)
    results = []
    for device in ("cpu", "opencl"):
        previous = pynn.get_device()
        pynn.set_device(device)
        try:
            model = pynn.Sequential([layers.Input((5,)), layers.Dense(3, activation=scaled_tanh)])
            if results:
                model.set_weights(results[0][0])
            start = model.get_weights()
            model.compile(pynn.optimizers.SGD(0.05), "mse")
            model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
            results.append((start, model.get_weights()))
        finally:
            pynn.set_device(previous)
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_inference_paths_keep_the_custom_activation():
    # predict's prepared plan calls Dense kernels directly, folds a BatchNormalization into
    # the Dense before it and runs mostly-zero kernels sparse: none may skip the function.
    x, _ = _data(3)
    model = pynn.Sequential([layers.Input((5,)), layers.Dense(7, activation=scaled_tanh),
                             layers.Dense(4, activation=scaled_tanh),
                             layers.BatchNormalization(), layers.Dense(3)])
    weights = model.get_weights()
    weights[2][np.abs(weights[2]) < np.quantile(np.abs(weights[2]), 0.95)] = 0.0  # sparse
    model.set_weights(weights)
    hidden = scaled_tanh(ops.matmul(x, weights[0]) + weights[1])
    hidden = scaled_tanh(ops.matmul(hidden, weights[2]) + weights[3])
    gamma, beta, mean, var = weights[4:8]
    hidden = (np.asarray(hidden) - mean) / np.sqrt(var + 1e-3) * gamma + beta
    expected = hidden @ weights[8] + weights[9]
    for got in (model.predict(x, verbose=0), model.predict(x, verbose=0),
                np.asarray(model(x)), np.asarray(model.predict_on_batch(x))):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
