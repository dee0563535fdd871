"""Keras 3 parity (torch backend) of custom code: the same custom layer, subclassed model and
custom loss written once against ``lib.ops`` / ``lib.layers.Layer`` for both libraries, and
pynn's GradientTape train_step against Keras's fit, from the same weights."""

import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
try:
    import keras
    import torch
except Exception as exc:  # noqa: BLE001 (keras missing or its backend cannot load)
    pytest.skip(f"keras (torch backend) is not available: {exc}", allow_module_level=True)
if keras.backend.backend() != "torch":
    pytest.skip(f"keras runs on {keras.backend.backend()}, these tests want torch",
                allow_module_level=True)

import pynn

torch.set_num_threads(2)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

N, BATCH = 40, 16


def rel_diff(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def max_weight_diff(p, k):
    return max(rel_diff(a, b) for a, b in zip(p.get_weights(), k.get_weights()))


def make_custom_dense(lib):
    class CustomDense(lib.layers.Layer):
        def __init__(self, units, **kwargs):
            super().__init__(**kwargs)
            self.units = units

        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(input_shape[-1], self.units),
                                          initializer="glorot_uniform", name="kernel")
            self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

        def compute_output_shape(self, input_shape):
            return tuple(input_shape[:-1]) + (self.units,)

        def call(self, x):
            return lib.ops.relu(lib.ops.matmul(x, self.kernel) + self.bias)

    return CustomDense


def make_subclassed(lib):
    class Net(lib.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.hidden = lib.layers.Dense(8, activation="tanh")
            self.out = lib.layers.Dense(3)

        def call(self, x, training=False):
            h = self.hidden(x)
            return self.out(h * lib.ops.sigmoid(h))

    return Net


def data(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((N, 6)).astype(np.float32),
            rng.standard_normal((N, 3)).astype(np.float32))


def fit_both(pm, km, loss="mse", epochs=2):
    x, y = data()
    km.compile(keras.optimizers.SGD(0.05, momentum=0.9), loss)
    pm.compile(pynn.optimizers.SGD(0.05, momentum=0.9), loss)
    kh = km.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0)
    ph = pm.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0)
    return x, ph.history["loss"], kh.history["loss"]


def test_custom_layer_parity():
    km = keras.Sequential([keras.Input((6,)), make_custom_dense(keras)(5),
                           keras.layers.Dense(3)])
    pm = pynn.Sequential([pynn.Input((6,)), make_custom_dense(pynn)(5), pynn.layers.Dense(3)])
    pm.set_weights(km.get_weights())
    x, pl, kl = fit_both(pm, km)
    assert max_weight_diff(pm, km) < 1e-5
    np.testing.assert_allclose(pl, kl, rtol=1e-5)
    assert rel_diff(pm.predict(x, verbose=0), km.predict(x, verbose=0)) < 1e-5


def test_subclassed_model_parity():
    km, pm = make_subclassed(keras)(), make_subclassed(pynn)()
    km(data()[0][:1])  # Keras builds a subclassed model by calling it
    pm(data()[0][:1])
    pm.set_weights(km.get_weights())
    x, pl, kl = fit_both(pm, km)
    assert max_weight_diff(pm, km) < 1e-5
    np.testing.assert_allclose(pl, kl, rtol=1e-5)
    assert rel_diff(pm.predict(x, verbose=0), km.predict(x, verbose=0)) < 1e-5


def test_custom_loss_parity():
    def make_loss(lib):
        def smooth_l1(y_true, y_pred):
            d = lib.ops.abs(y_pred - y_true)
            return lib.ops.mean(lib.ops.where(d < 1.0, 0.5 * d * d, d - 0.5), axis=-1)
        return smooth_l1

    km = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    pm = pynn.Sequential([pynn.Input((6,)), pynn.layers.Dense(3)])
    pm.set_weights(km.get_weights())
    x, y = data(1)
    km.compile(keras.optimizers.SGD(0.1), make_loss(keras))
    pm.compile(pynn.optimizers.SGD(0.1), make_loss(pynn))
    kh = km.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    ph = pm.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    assert max_weight_diff(pm, km) < 1e-5
    np.testing.assert_allclose(ph.history["loss"], kh.history["loss"], rtol=1e-5)


def test_tape_train_step_matches_keras_fit():
    base = make_subclassed(pynn)

    class TapeNet(base):
        def train_step(self, data):
            x, y = data
            with pynn.GradientTape() as tape:
                loss = self.compute_loss(y=y, y_pred=self(x, training=True))
            grads = tape.gradient(loss, self.trainable_weights)
            self.optimizer.apply(grads, self.trainable_weights)
            return {"loss": loss}

    km, pm = make_subclassed(keras)(), TapeNet()
    km(data()[0][:1])
    pm(data()[0][:1])
    pm.set_weights(km.get_weights())
    _, pl, kl = fit_both(pm, km)
    assert max_weight_diff(pm, km) < 1e-5
    np.testing.assert_allclose(pl, kl, rtol=1e-5)
