"""Custom layers, models, losses and metrics written with pynn.ops: trained by fit through the
recorded gradients, compared with the built-in layers, saved by registered name."""

import numpy as np
import pytest

import pynn
from pynn import layers, ops
from tests.reference.gradcheck import assert_close, numerical_grad


class MyDense(layers.Layer):
    """Dense as a user writes it: matmul + bias + relu with pynn.ops."""

    def __init__(self, units, activation="relu", **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.activation = activation

    def build(self, input_shape):
        self.w = self.add_weight("kernel", (input_shape[-1], self.units), "glorot_uniform")
        self.b = self.add_weight("bias", (self.units,), "zeros")
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def call(self, x, training=False):
        z = ops.matmul(x, self.w) + self.b
        return ops.relu(z) if self.activation == "relu" else z

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation}


class Block(layers.Layer):
    """A layer made of layers (their weights are its weights) and ops."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = layers.Dense(4, activation="tanh", dtype=self.dtype)
        self.scale = None

    def build(self, input_shape):
        self.scale = self.add_weight("scale", (4,), "ones")
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (4,)

    def call(self, x, training=False):
        h = self.inner(x)
        return h * self.scale + ops.sin(h) * ops.mean(x, axis=-1, keepdims=True)


def _data(n=40, features=7, outputs=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype(np.float32)
    y = rng.standard_normal((n, outputs)).astype(np.float32)
    return x, y


def _train(model, x, y, loss="mse", epochs=3, **compile_kwargs):
    model.compile(pynn.optimizers.SGD(0.05, momentum=0.9), loss, **compile_kwargs)
    return model.fit(x, y, epochs=epochs, batch_size=8, shuffle=False, verbose=0)


def _max_diff(a, b):
    return max(float(np.abs(u - v).max()) for u, v in zip(a, b))


def test_custom_dense_trains_to_the_builtin_weights():
    x, y = _data()
    custom = pynn.Sequential([layers.Input((7,)), MyDense(9), MyDense(3, activation=None)])
    builtin = pynn.Sequential([layers.Input((7,)), layers.Dense(9, activation="relu"),
                               layers.Dense(3)])
    builtin.set_weights(custom.get_weights())
    h1, h2 = _train(custom, x, y), _train(builtin, x, y)
    assert _max_diff(custom.get_weights(), builtin.get_weights()) <= 1e-5
    np.testing.assert_allclose(h1.history["loss"], h2.history["loss"], rtol=1e-5)
    np.testing.assert_allclose(custom.predict(x, verbose=0), builtin.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_custom_layer_in_a_functional_model_matches_builtin():
    x, y = _data(seed=1)
    inp = pynn.Input((7,))
    custom = pynn.Model(inp, layers.Dense(3)(MyDense(5)(inp)))
    inp2 = pynn.Input((7,))
    builtin = pynn.Model(inp2, layers.Dense(3)(layers.Dense(5, activation="relu")(inp2)))
    builtin.set_weights(custom.get_weights())
    _train(custom, x, y)
    _train(builtin, x, y)
    assert _max_diff(custom.get_weights(), builtin.get_weights()) <= 1e-5


def test_custom_layer_backward_by_finite_differences():
    """The replayed backward of a layer of layers and ops: input and every weight."""
    rng = np.random.default_rng(2)
    layer = Block(dtype="float64")
    x = rng.standard_normal((3, 5))
    layer(x)  # builds
    assert len(layer.weights) == 3 and len(layer.trainable_weights) == 3
    r = rng.standard_normal((3, 4))
    layer.call(x, training=True)
    dx = layer.backward(r)

    def f():
        return float(np.sum(layer.call(x, training=False) * r))

    assert_close("dx", dx, numerical_grad(f, x))
    for v in layer.trainable_weights:
        assert_close(v.path, v.grad, numerical_grad(f, v.value))


def test_custom_layer_honours_needs_input_grad_and_frozen_parts():
    layer = Block(dtype="float64")
    x = np.random.default_rng(3).standard_normal((2, 5))
    layer(x)
    layer.inner.trainable = False
    assert len(layer.trainable_weights) == 1
    layer.needs_input_grad = False
    layer.call(x, training=True)
    assert layer.backward(np.ones((2, 4))) is None
    assert layer.scale.grad is not None and layer.inner.kernel.grad is None


def test_training_flag_reaches_inner_layers():
    class WithDropout(layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.drop = layers.Dropout(0.5, seed=1)

        def call(self, x, training=False):
            return self.drop(x) * 1.0

    layer = WithDropout()
    x = np.ones((4, 8), np.float32)
    np.testing.assert_array_equal(layer(x), x)
    dropped = layer(x, training=True)
    assert np.any(dropped == 0) and np.any(dropped == 2)


def test_custom_loss_function_and_subclass_match_builtin():
    x, y = _data(seed=4)

    def my_mse(y_true, y_pred):
        return ops.mean(ops.square(y_pred - y_true), axis=-1)

    class MyMSE(pynn.losses.Loss):
        def call(self, y_true, y_pred):
            return ops.mean(ops.square(y_pred - y_true), axis=-1)

    models = [pynn.Sequential([layers.Input((7,)), layers.Dense(3)]) for _ in range(3)]
    for m in models[1:]:
        m.set_weights(models[0].get_weights())
    hist = [_train(m, x, y, loss=loss).history["loss"]
            for m, loss in zip(models, ["mse", my_mse, MyMSE()])]
    for h, m in zip(hist[1:], models[1:]):
        np.testing.assert_allclose(h, hist[0], rtol=1e-5)
        assert _max_diff(m.get_weights(), models[0].get_weights()) <= 1e-6
    assert MyMSE().name == "my_mse"
    # called directly: a float on arrays
    assert abs(MyMSE()(y, y + 1.0) - 1.0) < 1e-6


def test_custom_metrics_function_and_subclass():
    class MeanAbsPred(pynn.metrics.Metric):
        def reset_state(self):
            self.total, self.count = 0.0, 0

        def update_state(self, y_true, y_pred, sample_weight=None):
            self.total += float(np.abs(np.asarray(y_pred)).sum())
            self.count += int(np.asarray(y_pred).size)

        def result(self):
            return self.total / max(self.count, 1)

    def mean_error(y_true, y_pred):
        return ops.mean(y_pred - y_true, axis=-1)

    x, y = _data(seed=5)
    model = pynn.Sequential([layers.Input((7,)), layers.Dense(3)])
    model.compile("sgd", "mse", metrics=[MeanAbsPred(), mean_error])
    logs = model.evaluate(x, y, verbose=0, batch_size=64, return_dict=True)
    pred = model.predict(x, verbose=0)
    assert abs(logs["mean_abs_pred"] - np.abs(pred).mean()) < 1e-6
    assert abs(logs["mean_error"] - (pred - y).mean()) < 1e-6


def test_activation_callable_and_lambda():
    d = layers.Dense(3, activation=ops.relu)
    assert d.activation == "relu"
    assert layers.Dense(3, activation=lambda t: t * 2).activation == "linear"  # + the callable
    lam = layers.Lambda(lambda t, k: ops.square(t) * k, output_shape=(4,),
                        arguments={"k": 2.0})
    inp = pynn.Input((4,))
    model = pynn.Model(inp, lam(inp))
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(model.predict(x, verbose=0), 2 * x ** 2)
    inferred = layers.Lambda(lambda t: ops.concatenate([t, t], axis=-1))
    assert inferred.compute_output_shape((None, 3)) == (None, 6)


def test_symbolic_ops_build_a_model_that_trains():
    inp = pynn.Input((5,))
    h = layers.Dense(4)(inp)
    out = h * 2 + ops.relu(h) - ops.mean(h, axis=-1, keepdims=True)
    model = pynn.Model(inp, out)
    assert model.output_shape == (None, 4)
    x, y = _data(features=5, outputs=4, seed=6)
    dense = model.layers[1]
    k, b = dense.kernel.value.copy(), dense.bias.value.copy()
    z = x @ k + b
    want = z * 2 + np.maximum(z, 0) - z.mean(axis=-1, keepdims=True)
    np.testing.assert_allclose(model.predict(x, verbose=0), want, rtol=1e-5, atol=1e-6)
    hist = _train(model, x, y, epochs=4)
    assert hist.history["loss"][-1] < hist.history["loss"][0]


def test_op_nodes_and_registered_objects_save_and_load(tmp_path):
    @pynn.saving.register_serializable("test_custom")
    class Scaled(MyDense):
        pass

    @pynn.saving.register_serializable("test_custom")
    def halve(t):
        return t * 0.5

    inp = pynn.Input((7,))
    h = Scaled(5, name="scaled")(inp)
    out = layers.Lambda(halve)(ops.tanh(h) + 1.0)
    model = pynn.Model(inp, out)
    model.compile("adam", "mse")
    path = tmp_path / "m.pynn"
    model.save(path)
    loaded = pynn.load_model(path)
    x, _ = _data(seed=7)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6)
    assert type(loaded.get_layer("scaled")) is Scaled


def test_unregistered_objects_are_refused_clearly(tmp_path):
    class Unregistered(MyDense):
        pass

    inp = pynn.Input((7,))
    model = pynn.Model(inp, Unregistered(3)(inp))
    with pytest.raises(ValueError, match="cannot save the layer class.*register_serializable"):
        model.save(tmp_path / "a.pynn")
    model = pynn.Model(inp, layers.Lambda(lambda t: t + 1)(inp))
    with pytest.raises(ValueError, match="Lambda '.*'.*never hold Python code"):
        model.save(tmp_path / "b.pynn")


def test_custom_objects_on_load(tmp_path):
    class Local(MyDense):
        pass

    inp = pynn.Input((7,))
    model = pynn.Model(inp, Local(3, name="local")(inp))
    with pynn.saving.custom_object_scope({"Local": Local}):
        model.save(tmp_path / "c.pynn")
    with pytest.raises(ValueError, match="Unknown layer class 'Local'"):
        pynn.load_model(tmp_path / "c.pynn")
    loaded = pynn.load_model(tmp_path / "c.pynn", custom_objects={"Local": Local})
    assert type(loaded.get_layer("local")) is Local
    raw = (tmp_path / "c.pynn").read_bytes()
    assert b"def " not in raw and b"lambda" not in raw  # names only, no code


def test_custom_layer_config_round_trip():
    layer = MyDense(6, activation=None, name="mine")
    again = MyDense.from_config(layer.get_config())
    assert again.get_config() == layer.get_config()
    lam = layers.Lambda(ops.relu, output_shape=(3,))
    with pytest.raises(ValueError, match="register"):
        lam.get_config()


class TwoLayer(pynn.Model):
    def __init__(self, units=5, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.hidden = layers.Dense(units, activation="relu")
        self.out = layers.Dense(3)

    def call(self, x, training=False):
        return self.out(self.hidden(x))


def test_subclassed_model_fit_evaluate_predict_summary_and_weights(tmp_path):
    x, y = _data(seed=8)
    model = TwoLayer()
    inp = pynn.Input((7,))
    functional = pynn.Model(inp, layers.Dense(3)(layers.Dense(5, activation="relu")(inp)))
    model.build((None, 7))
    assert model.count_params() == functional.count_params()
    functional.set_weights(model.get_weights())
    h1, h2 = _train(model, x, y), _train(functional, x, y)
    np.testing.assert_allclose(h1.history["loss"], h2.history["loss"], rtol=1e-5)
    assert _max_diff(model.get_weights(), functional.get_weights()) <= 1e-5
    assert abs(model.evaluate(x, y, verbose=0) - functional.evaluate(x, y, verbose=0)) < 1e-5
    np.testing.assert_allclose(model.predict(x, verbose=0), functional.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    lines = []
    model.summary(print_fn=lines.append)
    assert "two_layer" in lines[0] and "Total params: 58" in lines[0]
    model.save_weights(tmp_path / "w.pynn")
    fresh = TwoLayer()
    fresh.build((None, 7))
    fresh.load_weights(tmp_path / "w.pynn")
    assert _max_diff(fresh.get_weights(), model.get_weights()) == 0


class TapeStep(TwoLayer):
    def train_step(self, data):
        x, y = data
        with pynn.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(y=y, y_pred=y_pred)
        grads = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
        return {"loss": loss}

    def test_step(self, data):
        x, y = data
        return {"loss": self.compute_loss(y=y, y_pred=self(x))}


def test_overridden_train_step_with_a_tape_equals_fit():
    x, y = _data(seed=9)
    custom, plain = TapeStep(), TwoLayer()
    custom.build((None, 7))
    plain.build((None, 7))
    plain.set_weights(custom.get_weights())
    h1, h2 = _train(custom, x, y), _train(plain, x, y)
    np.testing.assert_allclose(h1.history["loss"], h2.history["loss"], rtol=1e-5)
    assert _max_diff(custom.get_weights(), plain.get_weights()) <= 1e-5
    assert abs(custom.evaluate(x, y, verbose=0, batch_size=64)
               - plain.evaluate(x, y, verbose=0, batch_size=64)) < 1e-5


def test_manual_loop_with_optimizer_apply():
    x, y = _data(seed=10)
    model = TwoLayer()
    model.build((None, 7))
    twin = TwoLayer()
    twin.build((None, 7))
    twin.set_weights(model.get_weights())
    opt = pynn.optimizers.Adam(0.01)
    loss_fn = pynn.losses.MeanSquaredError()
    for _ in range(3):
        with pynn.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_weights)
        opt.apply(grads, model.trainable_weights)
    twin.compile(pynn.optimizers.Adam(0.01), "mse")
    twin.fit(x, y, epochs=3, batch_size=len(x), verbose=0, shuffle=False)
    assert _max_diff(model.get_weights(), twin.get_weights()) <= 1e-5


def test_bad_inputs_name_the_layer():
    layer = MyDense(3, name="mine")
    layer(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"Layer 'mine' \(MyDense\) expected input shape "
                                         r"\(None, 4\), got \(None, 5\)"):
        layer(np.ones((2, 5), np.float32))
    with pytest.raises(TypeError, match="Lambda '.*': function must be callable"):
        layers.Lambda(3)
    with pytest.raises(ValueError, match="apply: got 1 gradients for 2 variables"):
        pynn.optimizers.SGD().apply([None], layer.weights)


def test_registered_subclassed_model_saves_and_loads(tmp_path):
    @pynn.saving.register_serializable("test_custom")
    class Saved(TwoLayer):
        pass

    x, y = _data(seed=11)
    model = Saved(name="saved")
    _train(model, x, y, epochs=1)
    model.save(tmp_path / "s.pynn")
    loaded = pynn.load_model(tmp_path / "s.pynn")
    assert type(loaded) is Saved and loaded.name == "saved"
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="cannot save the model class 'TwoLayer'"):
        TwoLayer().build((None, 7)).save(tmp_path / "t.pynn")


@pytest.mark.opencl
def test_custom_dense_trains_on_opencl_as_on_the_cpu():
    """The custom layer's ops (matmul, bias add with its broadcast gradient, relu) all run on
    the device (tests/test_elementwise.py covers the kernels) and train to the CPU's weights."""
    from tests.opencl_util import skip_without_opencl

    skip_without_opencl()
    x, y = _data(seed=12)

    def trained():
        model = pynn.Sequential([layers.Input((7,)), MyDense(5), layers.Dense(3)])
        model.set_weights(start)
        _train(model, x, y, epochs=2)
        return model.get_weights()

    start = pynn.Sequential([layers.Input((7,)), MyDense(5), layers.Dense(3)]).get_weights()
    on_cpu = trained()
    previous = pynn.get_device()
    pynn.set_device("opencl")
    try:
        on_device = trained()
    finally:
        pynn.set_device(previous)
    assert max(float(np.abs(a - b).max()) for a, b in zip(on_cpu, on_device)) <= 1e-5
