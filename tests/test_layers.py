"""Layers: forward against NumPy, backward against central finite differences (float64).

Every layer's input gradient and every weight gradient is checked on small odd sizes; forward
values are checked against the float64 NumPy references in ``tests/reference``.
"""

import numpy as np
import pytest

import pynn
from pynn import layers
from tests.reference import conv_ref, pool_ref
from tests.reference.activation_ref import activation_forward_ref
from tests.reference.gradcheck import check_layer, check_model

ACTIVATIONS = ["linear", "relu", "sigmoid", "tanh", "softmax", "leaky_relu", "elu", "selu",
               "gelu", "softplus"]
ALPHA = {"leaky_relu": 0.2, "elu": 1.0}


def _x(rng, *shape):
    # Away from zero so relu-like kinks are never within the finite-difference step.
    x = rng.standard_normal(shape)
    return x + 0.05 * np.sign(x)


# -- Dense ------------------------------------------------------------------------------------
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_gradients(float64, seeded, activation, use_bias):
    layer = layers.Dense(5, activation=activation, use_bias=use_bias,
                         bias_initializer="random_normal")
    x = _x(seeded, 3, 7)
    check_layer(layer, x, seeded)
    assert len(layer.weights) == (2 if use_bias else 1)


@pytest.mark.parametrize("activation", ["linear", "tanh", "softmax"])
def test_dense_3d_input_gradients(float64, seeded, activation):
    layer = layers.Dense(4, activation=activation, bias_initializer="random_normal")
    x = _x(seeded, 2, 3, 5)
    y = check_layer(layer, x, seeded)
    assert y.shape == (2, 3, 4)
    assert layer.output_shape == (None, 3, 4)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dense_forward_matches_numpy(seeded, activation):
    layer = layers.Dense(6, activation=activation, bias_initializer="random_normal")
    x = _x(seeded, 7, 3).astype(np.float32)
    y = layer(x)
    kernel, bias = layer.get_weights()
    z = x.astype(np.float64) @ kernel + bias
    expected = activation_forward_ref(z, activation, ALPHA.get(activation, 0.0))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


# -- Conv2D -----------------------------------------------------------------------------------
CONV_CASES = [
    # kernel, strides, padding, dilation, activation, input (N, H, W, C), filters
    ((3, 3), (1, 1), "valid", (1, 1), "linear", (2, 5, 6, 3), 4),
    ((3, 3), (1, 1), "same", (1, 1), "relu", (2, 5, 5, 2), 3),
    ((3, 2), (2, 2), "same", (1, 1), "tanh", (1, 7, 6, 2), 3),
    ((2, 3), (2, 1), "valid", (1, 1), "sigmoid", (2, 7, 5, 1), 2),
    ((3, 3), (1, 1), "valid", (2, 2), "elu", (1, 7, 7, 2), 2),
    ((3, 3), (1, 1), "same", (2, 1), "gelu", (1, 5, 6, 2), 3),
    ((1, 1), (1, 1), "valid", (1, 1), "softplus", (2, 3, 3, 3), 2),
    ((5, 5), (3, 3), "same", (1, 1), "leaky_relu", (1, 7, 8, 1), 2),
]


@pytest.mark.parametrize("kernel,strides,padding,dilation,activation,shape,filters", CONV_CASES)
def test_conv2d_gradients(float64, seeded, kernel, strides, padding, dilation, activation,
                          shape, filters):
    layer = layers.Conv2D(filters, kernel, strides=strides, padding=padding,
                          dilation_rate=dilation, activation=activation,
                          bias_initializer="random_normal")
    y = check_layer(layer, _x(seeded, *shape), seeded)
    assert y.shape[1:] == layer.output_shape[1:]


@pytest.mark.parametrize("kernel,strides,padding,dilation,activation,shape,filters", CONV_CASES)
def test_conv2d_forward_matches_numpy(seeded, kernel, strides, padding, dilation, activation,
                                      shape, filters):
    layer = layers.Conv2D(filters, kernel, strides=strides, padding=padding,
                          dilation_rate=dilation, activation=activation,
                          bias_initializer="random_normal")
    x = _x(seeded, *shape).astype(np.float32)
    y = layer(x)
    k, b = layer.get_weights()
    expected = conv_ref.conv2d_forward_ref(x.astype(np.float64), k.astype(np.float64),
                                       b.astype(np.float64), strides, padding, dilation,
                                       activation, ALPHA.get(activation, 0.0))
    expected = expected[0] if isinstance(expected, tuple) else expected
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_conv2d_without_bias_gradients(float64, seeded):
    layer = layers.Conv2D(3, 3, padding="same", use_bias=False)
    check_layer(layer, _x(seeded, 2, 4, 5, 2), seeded)
    assert [v.name for v in layer.weights] == ["kernel"]


def test_conv2d_first_layer_skips_input_gradient(float64, seeded):
    model = pynn.Sequential([layers.Input((5, 5, 1)), layers.Conv2D(2, 3), layers.Flatten(),
                             layers.Dense(3)])
    assert model.layers[0].needs_input_grad is False
    assert model.layers[2].needs_input_grad is True


# -- Pooling ----------------------------------------------------------------------------------
POOL_CASES = [
    ((2, 2), None, "valid", (2, 5, 6, 3)),
    ((3, 3), (2, 2), "valid", (1, 7, 7, 2)),
    ((2, 2), None, "same", (2, 5, 5, 2)),
    ((3, 2), (1, 2), "same", (1, 4, 5, 3)),
]


@pytest.mark.parametrize("pool,strides,padding,shape", POOL_CASES)
@pytest.mark.parametrize("cls", [layers.MaxPooling2D, layers.AveragePooling2D])
def test_pooling_gradients(float64, seeded, cls, pool, strides, padding, shape):
    layer = cls(pool, strides=strides, padding=padding)
    # Distinct values: max pooling has no ties, so the maximum is differentiable.
    x = seeded.permutation(np.prod(shape)).reshape(shape) * 0.1 + 0.01 * _x(seeded, *shape)
    y = check_layer(layer, x, seeded)
    assert y.shape[1:] == layer.output_shape[1:]


@pytest.mark.parametrize("pool,strides,padding,shape", POOL_CASES)
def test_pooling_forward_matches_numpy(seeded, pool, strides, padding, shape):
    x = _x(seeded, *shape).astype(np.float32)
    s = strides or pool
    y_max = layers.MaxPooling2D(pool, strides=strides, padding=padding)(x)
    y_avg = layers.AveragePooling2D(pool, strides=strides, padding=padding)(x)
    ref_max = pool_ref.maxpool2d_forward_ref(x.astype(np.float64), pool, s, padding)
    ref_max = ref_max[0] if isinstance(ref_max, tuple) else ref_max
    np.testing.assert_allclose(y_max, ref_max, rtol=1e-6)
    np.testing.assert_allclose(y_avg, pool_ref.avgpool2d_forward_ref(x.astype(np.float64), pool, s,
                                                                 padding), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", [layers.GlobalAveragePooling2D, layers.GlobalMaxPooling2D])
@pytest.mark.parametrize("keepdims", [False, True])
def test_global_pooling_gradients(float64, seeded, cls, keepdims):
    shape = (2, 3, 5, 4)
    x = seeded.permutation(np.prod(shape)).reshape(shape) * 0.1
    layer = cls(keepdims=keepdims)
    y = check_layer(layer, x, seeded)
    assert y.shape == ((2, 1, 1, 4) if keepdims else (2, 4))
    expected = x.mean(axis=(1, 2)) if cls is layers.GlobalAveragePooling2D else x.max(axis=(1, 2))
    np.testing.assert_allclose(y.reshape(2, 4), expected, rtol=1e-12)


# -- shape-only layers ------------------------------------------------------------------------
def test_flatten_gradients(float64, seeded):
    layer = layers.Flatten()
    y = check_layer(layer, _x(seeded, 3, 2, 3, 2), seeded)
    assert y.shape == (3, 12) and layer.output_shape == (None, 12)


@pytest.mark.parametrize("target,expected", [((6, 2), (6, 2)), ((-1, 3), (4, 3)),
                                             ((2, 2, 3), (2, 2, 3))])
def test_reshape_gradients(float64, seeded, target, expected):
    layer = layers.Reshape(target)
    y = check_layer(layer, _x(seeded, 2, 3, 4), seeded)
    assert y.shape == (2,) + expected


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_layer_gradients(float64, seeded, activation):
    layer = layers.Activation(activation)
    x = _x(seeded, 3, 5)
    y = check_layer(layer, x, seeded)
    np.testing.assert_allclose(y, activation_forward_ref(x, activation,
                                                         ALPHA.get(activation, 0.0)),
                               rtol=1e-10, atol=1e-12)


def test_dropout_gradients_with_fixed_seed(float64, seeded):
    layer = layers.Dropout(0.4, seed=7)

    def rewind():
        layer._offset = 0

    x = _x(seeded, 4, 9)
    y = check_layer(layer, x, seeded, before_call=rewind)
    kept = y != 0
    assert 0 < kept.sum() < kept.size
    np.testing.assert_allclose(y[kept], x[kept] / 0.6, rtol=1e-12)


def test_dropout_is_identity_outside_training(seeded):
    layer = layers.Dropout(0.5, seed=3)
    x = _x(seeded, 4, 6).astype(np.float32)
    np.testing.assert_array_equal(layer(x, training=False), x)


def test_dropout_masks_differ_between_steps_and_repeat_with_seed(seeded):
    x = np.ones((8, 16), np.float32)
    a = layers.Dropout(0.5, seed=11)
    b = layers.Dropout(0.5, seed=11)
    first, second = a(x, training=True), a(x, training=True)
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(first, b(x, training=True))


# -- whole model + every loss -----------------------------------------------------------------
def _small_cnn(outputs, activation, regularizer=None):
    return pynn.Sequential([
        layers.Input((5, 5, 2)),
        layers.Conv2D(3, 3, padding="same", activation="tanh", bias_initializer="random_normal",
                      kernel_regularizer=regularizer),
        layers.MaxPooling2D(2),
        layers.Conv2D(2, 1, activation="elu"),
        layers.Flatten(),
        layers.Dense(outputs, activation=activation, bias_initializer="random_normal",
                     kernel_regularizer=regularizer),
    ])


LOSS_CASES = [
    ("sparse_categorical_crossentropy", 3, "softmax", "sparse"),
    ("categorical_crossentropy", 3, "softmax", "onehot"),
    ("binary_crossentropy", 1, "sigmoid", "binary"),
    ("binary_crossentropy", 2, "sigmoid", "binary"),
    ("mse", 3, "linear", "real"),
    ("mae", 2, "linear", "real"),
    ("huber", 2, "linear", "real"),
]


def _targets(rng, kind, n, outputs):
    if kind == "sparse":
        return rng.integers(0, outputs, n)
    if kind == "onehot":
        return np.eye(outputs)[rng.integers(0, outputs, n)]
    if kind == "binary":
        return rng.integers(0, 2, (n, outputs)).astype(np.float64)
    return rng.standard_normal((n, outputs)) * 2


@pytest.mark.parametrize("loss,outputs,activation,kind", LOSS_CASES)
def test_model_gradients_for_each_loss(float64, seeded, loss, outputs, activation, kind):
    model = _small_cnn(outputs, activation)
    model.compile("sgd", loss)
    x = _x(seeded, 3, 5, 5, 2)
    y = model._prepare_targets(_targets(seeded, kind, 3, outputs), 3, "test")[0]
    check_model(model, x, y)


@pytest.mark.parametrize("loss", [pynn.losses.CategoricalCrossentropy(from_logits=True),
                                  pynn.losses.SparseCategoricalCrossentropy(from_logits=True),
                                  pynn.losses.BinaryCrossentropy(from_logits=True)])
def test_model_gradients_from_logits(float64, seeded, loss):
    kind = {"categorical_crossentropy": "onehot", "binary_crossentropy": "binary",
            "sparse_categorical_crossentropy": "sparse"}[loss.backend_name]
    model = _small_cnn(3, None)
    model.compile("sgd", loss)
    y = model._prepare_targets(_targets(seeded, kind, 4, 3), 4, "test")[0]
    check_model(model, _x(seeded, 4, 5, 5, 2), y)


def test_model_gradients_with_l1_l2_regularizers(float64, seeded):
    model = _small_cnn(3, "softmax", regularizer=pynn.regularizers.L1L2(l1=0.01, l2=0.02))
    model.compile("sgd", "categorical_crossentropy")
    y = model._prepare_targets(_targets(seeded, "onehot", 3, 3), 3, "test")[0]
    check_model(model, _x(seeded, 3, 5, 5, 2), y)


def test_model_gradients_mlp_with_dropout(float64, seeded):
    model = pynn.Sequential([layers.Input((4, 3)), layers.Dense(5, activation="selu"),
                             layers.Dropout(0.3, seed=5), layers.Flatten(),
                             layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    dropout = model.layers[1]
    y = model._prepare_targets(seeded.integers(0, 2, 3), 3, "test")[0]
    check_model(model, _x(seeded, 3, 4, 3), y,
                before_forward=lambda: setattr(dropout, "_offset", 0))


# -- Keras's second names ----------------------------------------------------------------------
def test_keras_aliases_name_the_same_layers():
    """Where Keras gives one layer two names (Convolution2D, MaxPool2D, ...) and pynn has the
    layer, pynn's two names are one class too."""
    from tests.backend_util import keras_on_torch

    keras = keras_on_torch()
    public = {name: getattr(keras.layers, name) for name in dir(keras.layers)
              if name[:1].isupper()}
    pairs = [(a, b) for a in public for b in public
             if a < b and public[a] is public[b] and (hasattr(layers, a) or hasattr(layers, b))]
    assert pairs, "keras.layers names no alias"
    for a, b in pairs:
        assert hasattr(layers, a) and hasattr(layers, b), f"pynn.layers lacks {a} or {b}"
        assert getattr(layers, a) is getattr(layers, b), (a, b)
