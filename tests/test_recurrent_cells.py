"""A cell written by the user with pynn.ops inside RNN(cell) (issue 14): Keras's custom-cell
contract (``state_size``, ``call(inputs, states) -> (output, new_states)``), run step by step
and trained through the autodiff that custom layers use. An LSTM written that way must give
the built-in LSTMCell's outputs and gradients from the same weights."""

import numpy as np
import pytest

import pynn
from pynn import layers, ops


class OpsLSTMCell(layers.Layer):
    """Keras's LSTM cell (gates i, f, c, o; Keras's weight layout) in pynn.ops."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.state_size = [units, units]

    def build(self, input_shape):
        u = self.units
        self.kernel = self.add_weight(shape=(input_shape[-1], 4 * u), name="kernel")
        self.recurrent_kernel = self.add_weight(shape=(u, 4 * u), name="recurrent_kernel")
        self.bias = self.add_weight(shape=(4 * u,), initializer="zeros", name="bias")

    def call(self, inputs, states):
        h, c = states
        z = ops.matmul(inputs, self.kernel) + ops.matmul(h, self.recurrent_kernel) + self.bias
        zi, zf, zc, zo = ops.split(z, 4, axis=-1)
        c = ops.sigmoid(zf) * c + ops.sigmoid(zi) * ops.tanh(zc)
        h = ops.sigmoid(zo) * ops.tanh(c)
        return h, [h, c]


def pair(units, dtype, **options):
    ours = layers.RNN(OpsLSTMCell(units, dtype=dtype), dtype=dtype, **options)
    builtin = layers.RNN(layers.LSTMCell(units, dtype=dtype), dtype=dtype, **options)
    return ours, builtin


@pytest.mark.parametrize("options", [
    {"return_sequences": True},
    {"return_sequences": False, "go_backwards": True},
    {"return_sequences": True, "return_state": True},
])
@pytest.mark.parametrize("masked", [False, True])
def test_user_cell_matches_builtin_lstm_cell(options, masked):
    rng = np.random.default_rng(3)
    n, t, c, u = 5, 7, 3, 4
    x = rng.standard_normal((n, t, c))
    mask = None
    if masked:
        mask = rng.random((n, t)) > 0.3
        mask[0] = False  # a row fully masked
        mask[1] = True
    ours, builtin = pair(u, "float64", **options)
    ours.build(x.shape)
    builtin.build(x.shape)
    weights = [rng.standard_normal(w.shape) * 0.5 for w in builtin.get_weights()]
    ours.set_weights(weights)
    builtin.set_weights(weights)
    got = ours.call(x, training=True, mask=mask)
    want = builtin.call(x, training=True, mask=mask)
    got_list = got if isinstance(got, list) else [got]
    want_list = want if isinstance(want, list) else [want]
    for a, b in zip(got_list, want_list, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    dys = [rng.standard_normal(np.shape(b)) for b in want_list]
    dy = dys if options.get("return_state") else dys[0]
    dx = ours.backward(dy)
    dx_want = builtin.backward(dy)
    np.testing.assert_allclose(dx, dx_want, rtol=1e-9, atol=1e-12)
    for v, w in zip(ours.trainable_weights, builtin.trainable_weights, strict=True):
        np.testing.assert_allclose(v.grad, w.grad, rtol=1e-9, atol=1e-12, err_msg=v.name)


def test_user_cell_trains_in_a_model_like_the_builtin_cell():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((12, 6, 3)).astype(np.float32)
    y = rng.standard_normal((12, 1)).astype(np.float32)

    def model(cell):
        return pynn.Sequential([layers.Input((6, 3)), layers.RNN(cell), layers.Dense(1)])

    ours, builtin = model(OpsLSTMCell(4)), model(layers.LSTMCell(4))
    ours.set_weights(builtin.get_weights())
    for m in (ours, builtin):
        m.compile(optimizer=pynn.optimizers.SGD(0.1), loss="mse")
        m.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(ours.get_weights(), builtin.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


def test_user_cell_options_that_are_refused():
    with pytest.raises(ValueError, match=r"RNN .*stateful=True with a user cell"):
        layers.RNN(OpsLSTMCell(3), stateful=True)

    class NoSize(layers.Layer):
        state_size = 0

        def call(self, inputs, states):
            return inputs, states

    with pytest.raises(ValueError, match=r"state_size must be a positive int.*got 0"):
        layers.RNN(NoSize())
    with pytest.raises(TypeError, match=r"cell must be .*state_size.*got int"):
        layers.RNN(3)


class OpsSimpleCell(layers.Layer):
    """A SimpleRNN cell in the pynn.ops that have OpenCL kernels (ops.split, read by the LSTM
    cell above, is host-only there for now: pynn.ops raises on OpenCL)."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.state_size = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")
        self.recurrent_kernel = self.add_weight(shape=(self.units, self.units),
                                                name="recurrent_kernel")

    def call(self, inputs, states):
        h = ops.tanh(ops.matmul(inputs, self.kernel)
                     + ops.matmul(states[0], self.recurrent_kernel))
        return h, [h]


@pytest.mark.opencl
def test_user_cell_on_opencl_matches_cpu(backend_opencl):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((6, 5, 3)).astype(np.float32)
    y = rng.standard_normal((6, 5, 2)).astype(np.float32)

    def run(device):
        pynn.set_device(device)
        try:
            pynn.utils.set_random_seed(2)
            inputs = layers.Input((5, 3))
            h = layers.RNN(OpsSimpleCell(4), return_sequences=True, go_backwards=True)(inputs)
            model = pynn.Model(inputs, layers.Dense(2)(h))
            model.compile(optimizer=pynn.optimizers.SGD(0.1), loss="mse")
            model.fit(x, y, batch_size=3, epochs=2, shuffle=False, verbose=0)
            return model.get_weights(), model.predict(x, verbose=0)
        finally:
            pynn.set_device("cpu")

    (w_cpu, p_cpu), (w_ocl, p_ocl) = run("cpu"), run("opencl")
    for a, b in zip(w_ocl, w_cpu, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    np.testing.assert_allclose(p_ocl, p_cpu, atol=1e-4)
