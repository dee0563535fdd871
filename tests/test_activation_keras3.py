"""Keras 3's remaining activations (celu, glu, hard_shrink, hard_tanh, log_sigmoid, log_softmax,
soft_shrink, sparse_plus, sparse_sigmoid, sparsemax, squareplus, tanh_shrink): the ops on both
backends against tests/reference/activation_ref.py, central differences away from the kinks,
Keras 3 itself (values and torch's gradients), the Activation layer, the fused layers
(Dense, Conv2D, the recurrent layers), pynn.ops and the bad arguments.

glu, log_softmax and sparsemax act on rows of the last axis (ACTIVATIONS_ON_ROWS): only
activation_forward / activation_backward and the Activation layer compute them, and the
fused ops refuse them by name; a layer's activation='log_softmax' or 'sparsemax' runs the
row op after its linear part, activation='glu' is refused (it would halve the layer's units).
"""

import numpy as np
import pytest

import pynn
import pynn.layers as L
from pynn._native.activation import (
    activation_backward,
    activation_bias_backward,
    activation_forward,
)
from pynn.backend.api import (
    ACTIVATIONS,
    ACTIVATIONS_NEEDING_INPUT,
    ACTIVATIONS_ON_ROWS,
    DEFAULT_ALPHA,
    RNN_ACTIVATIONS,
)
from tests.backend_util import check_op, keras_on_torch
from tests.reference import gradcheck
from tests.reference.activation_ref import (
    activation_backward_ref,
    activation_bias_backward_ref,
    activation_forward_ref,
    numerical_derivative,
    sparsemax_parts_ref,
)

KERAS3 = ACTIVATIONS[ACTIVATIONS.index("celu"):]
ELEMENTWISE = tuple(a for a in KERAS3 if a not in ACTIVATIONS_ON_ROWS)
ROWS = tuple(a for a in KERAS3 if a in ACTIVATIONS_ON_ROWS)
# Parameters other than Keras's defaults, so a kernel that ignores alpha (or swaps its
# meaning) fails; the Keras tests use the defaults.
PARAM = {"celu": 0.7, "hard_shrink": 0.4, "soft_shrink": 0.3, "squareplus": 2.5}
# Each activation's kinks: the finite-difference stencils stay clear of them.
KINKS = {"celu": [0.0], "hard_tanh": [-1.0, 1.0], "sparse_plus": [-1.0, 1.0],
         "sparse_sigmoid": [-1.0, 1.0]}
SHAPES = [(1,), (7,), (3, 13), (2, 3, 7), (13, 1), (1, 31), (5, 131)]
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-14)}


def kinks(name, alpha):
    if name in ("hard_shrink", "soft_shrink"):
        return [-alpha, alpha]
    return KINKS.get(name, [])


def away_from(x, points, gap=0.02):
    """x with every element at least ``gap`` from each point (FD stencils, kink ties)."""
    for p in points:
        near = np.abs(x - p) < gap
        x = np.where(near, p + np.copysign(gap, x - p) + (x - p), x)
    return x


def shape_for(name, shape):
    """glu splits the last axis in two: it gets twice the length."""
    return shape[:-1] + (2 * shape[-1],) if name == "glu" else shape


def sample(name, shape, seed, alpha=None, scale=2.0):
    alpha = PARAM.get(name, 0.0) if alpha is None else alpha
    x = np.random.default_rng(seed).normal(size=shape_for(name, shape)) * scale
    return away_from(x, kinks(name, alpha))


def sparsemax_clear_of_kinks(x, gap=1e-3):
    """Whether every element of every row of x is ``gap`` clear of where Keras's sparsemax
    changes branch (x = tau, and the support's bound 1 + k z_(k) = C_k)."""
    tau, order, _, _ = sparsemax_parts_ref(x)
    z = np.take_along_axis(x, order, axis=-1)
    bound = z - (np.cumsum(z, axis=-1) - 1) / np.arange(1, x.shape[-1] + 1)
    return np.min(np.abs(bound)) > gap and np.min(np.abs(x - tau)) > gap


def tol(target):
    return target.rtol() if target.is_opencl else TOL[target.dtype.type]


# -- the ops against the float64 reference, on the CPU (float32, float64) and OpenCL ---------
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", KERAS3)
def test_matches_reference(target, name, shape):
    alpha = PARAM.get(name, 0.0)
    x = sample(name, shape, 3).astype(target.dtype)
    dy = np.random.default_rng(4).normal(size=x.shape[:-1] + (
        x.shape[-1] // 2 if name == "glu" else x.shape[-1],)).astype(target.dtype)
    _, y = check_op(target, "activation_forward", x, name, alpha,
                    ref=lambda x, *_: activation_forward_ref(x, name, alpha), rtol=tol(target))
    want = activation_backward_ref(dy, x, name, alpha)
    check_op(target, "activation_backward", dy, x, y, name, alpha, ref=want, rtol=tol(target))
    if name in ACTIVATIONS_NEEDING_INPUT:
        check_op(target, "activation_backward", dy, x, None, name, alpha, ref=want,
                 rtol=tol(target))
    else:
        check_op(target, "activation_backward", dy, None, y, name, alpha, ref=want,
                 rtol=tol(target))


@pytest.mark.parametrize("name", KERAS3)
def test_backward_finite_differences(name):
    alpha = PARAM.get(name, 0.0)
    x = sample(name, (4, 7), 11)
    if name == "sparsemax":
        seed = 11
        while not sparsemax_clear_of_kinks(x):
            seed += 1
            x = sample(name, (4, 7), seed, scale=0.5)
        assert np.any(activation_forward(x, name) == 0) and np.any(
            np.sum(activation_forward(x, name) > 0, axis=-1) > 0), "a vacuous sparsemax test"
    y = activation_forward(x, name, alpha)
    dy = np.random.default_rng(12).normal(size=y.shape)
    dx = activation_backward(dy, x, y, name, alpha)
    fd = numerical_derivative(lambda v: float(np.sum(dy * activation_forward(v, name, alpha))),
                              x, 1e-5)
    np.testing.assert_allclose(dx, fd, rtol=1e-7, atol=1e-9, err_msg=name)


def test_sparsemax_is_keras_formula_not_a_projection():
    """Keras 3.15's sparsemax (every backend) sums the support's cumulative sums into tau, so
    its rows need not sum to 1; pynn computes Keras's numbers, not the paper's projection."""
    x = np.array([[1.0, 0.5, 0.0], [0.1, 0.2, 0.3]])
    np.testing.assert_allclose(activation_forward(x, "sparsemax"),
                               [[0.25, 0.0, 0.0], [0.0, 1 / 15, 1 / 6]], rtol=1e-12)


def test_row_activations_are_row_independent_and_thread_invariant(num_threads):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(1001, 38)).astype(np.float32)
    for name in ROWS:
        num_threads(1)
        one = activation_forward(x, name)
        dy = rng.normal(size=one.shape).astype(np.float32)
        d_one = activation_backward(dy, x, one, name)
        num_threads(3)
        np.testing.assert_array_equal(activation_forward(x, name), one, err_msg=name)
        np.testing.assert_array_equal(activation_backward(dy, x, one, name), d_one, err_msg=name)
        np.testing.assert_array_equal(activation_forward(x[5:6], name), one[5:6], err_msg=name)


@pytest.mark.parametrize("name", KERAS3)
def test_empty_and_scalar_shapes(name):
    for shape in [(0,), (0, 6), (4, 0)]:
        x = np.zeros(shape, np.float32)
        y = activation_forward(x, name, PARAM.get(name, 0.0))
        assert y.shape == (shape[:-1] + (shape[-1] // 2,) if name == "glu" else shape)
        dx = activation_backward(y, x, y if name not in ("glu",) else None, name,
                                 PARAM.get(name, 0.0))
        assert dx.shape == shape
    if name in ROWS:
        with pytest.raises(ValueError, match=f"{name} needs at least 1 dimension"):
            activation_forward(np.float64(0.5), name)
    else:
        x = np.float64(-0.7)
        np.testing.assert_allclose(activation_forward(x, name, PARAM.get(name, 0.0)),
                                   activation_forward_ref(x, name, PARAM.get(name, 0.0)))


def test_values_at_the_kinks_follow_torch():
    """At the kinks the derivative is torch's: zero where torch's backward masks with >=/<=."""
    cases = {"hard_tanh": ([-1.0, 1.0], [0, 0]), "sparse_sigmoid": ([-1.0, 1.0], [0, 0]),
             "sparse_plus": ([-1.0, 1.0], [0, 1]), "hard_shrink": ([-0.5, 0.5], [0, 0]),
             "soft_shrink": ([-0.5, 0.5], [0, 0]), "celu": ([0.0], [1])}
    for name, (points, want) in cases.items():
        x = np.array(points)
        a = DEFAULT_ALPHA.get(name, 0.0)
        y = activation_forward(x, name, a)
        np.testing.assert_array_equal(activation_backward(np.ones_like(x), x, y, name, a), want,
                                      err_msg=name)


def test_extreme_inputs_stay_finite():
    x = np.array([-1000.0, -80.0, 0.0, 80.0, 1000.0])
    for dtype in (np.float32, np.float64):
        for name in KERAS3:
            xd = x.astype(dtype) if name != "glu" else np.concatenate([x, x[::-1]]).astype(dtype)
            y = activation_forward(xd, name, DEFAULT_ALPHA.get(name, 0.0))
            assert np.all(np.isfinite(y)), (name, dtype, y)
        np.testing.assert_allclose(activation_forward(x.astype(dtype), "log_sigmoid")[[1, 3]],
                                   [-80.0, -np.exp(-80.0)], rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_activation_bias_backward(name, dtype):
    """The fused backward of a layer with a bias: dz as activation_backward's, db its sums."""
    alpha = PARAM.get(name, 0.0)
    for shape in [(7,), (5, 3, 7, 9), (4099, 33)]:
        x = sample(name, shape, 5).astype(dtype)
        dy = np.random.default_rng(6).normal(size=shape).astype(dtype)
        y = activation_forward(x, name, alpha)
        dz, db = activation_bias_backward(dy, x, y, name, alpha)
        np.testing.assert_array_equal(dz, activation_backward(dy, x, y, name, alpha))
        want_dz, want_db = activation_bias_backward_ref(dy, x, name, alpha)
        np.testing.assert_allclose(dz, want_dz, **TOL[dtype])
        scale = np.abs(want_dz).reshape(-1, shape[-1]).sum(axis=0)
        assert np.all(np.abs(db - want_db) <= 8 * np.finfo(dtype).eps * scale + 1e-6), name


# -- Keras 3 itself (torch backend): values and autograd gradients at Keras's defaults -------
def keras_grad(keras, name, x, dy, **params):
    import torch

    xt = torch.tensor(x, requires_grad=True)
    yt = keras.activations.get(name)(xt, **params)
    (yt * torch.tensor(dy)).sum().backward()
    return yt.detach().numpy(), xt.grad.numpy()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", KERAS3)
def test_matches_keras_values_and_gradients(name, dtype):
    keras = keras_on_torch()
    alpha = DEFAULT_ALPHA.get(name, 0.0)
    x = sample(name, (6, 12), 21, alpha=alpha, scale=3.0).astype(dtype)
    want_y, _ = keras_grad(keras, name, x, np.ones(1, dtype))
    dy = np.random.default_rng(22).normal(size=want_y.shape).astype(dtype)
    want_y, want_dx = keras_grad(keras, name, x, dy)
    y = activation_forward(x, name, alpha)
    dx = activation_backward(dy, x, y, name, alpha)
    t = dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(y, want_y, **t, err_msg=f"{name} forward")
    np.testing.assert_allclose(dx, want_dx, **t, err_msg=f"{name} backward")


@pytest.mark.parametrize("name,keyword", [("celu", "alpha"), ("hard_shrink", "threshold"),
                                          ("soft_shrink", "threshold"), ("squareplus", "b")])
def test_parameters_mean_what_keras_means(name, keyword):
    keras = keras_on_torch()
    x = sample(name, (4, 9), 23, scale=3.0)
    dy = np.random.default_rng(24).normal(size=x.shape)
    want_y, want_dx = keras_grad(keras, name, x, dy, **{keyword: PARAM[name]})
    y = activation_forward(x, name, PARAM[name])
    np.testing.assert_allclose(y, want_y, rtol=1e-10, atol=1e-12)
    # torch's celu backward scales by 1 / alpha rounded to float32 (derivatives.yaml's
    # alpha.toFloat()): exact for Keras's default 1.0, 1e-8 off for 0.7
    rtol = 1e-7 if name == "celu" else 1e-10
    np.testing.assert_allclose(activation_backward(dy, x, y, name, PARAM[name]), want_dx,
                               rtol=rtol, atol=1e-12)


def test_pynn_ops_take_keras_arguments():
    keras = keras_on_torch()
    x = sample("celu", (3, 8), 25, scale=3.0).astype(np.float32)
    calls = [("celu", {"alpha": 0.5}), ("hard_shrink", {"threshold": 0.3}),
             ("soft_shrink", {"threshold": 0.2}), ("squareplus", {"b": 2.0}),
             ("hard_tanh", {}), ("log_sigmoid", {}), ("sparse_plus", {}),
             ("sparse_sigmoid", {}), ("tanh_shrink", {}), ("glu", {}), ("sparsemax", {})]
    for name, kwargs in calls:
        want = keras.ops.convert_to_numpy(getattr(keras.ops, name)(x, **kwargs))
        got = np.asarray(getattr(pynn.ops, name)(x, **kwargs))
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6, err_msg=name)
    with pytest.raises(ValueError, match="only the last axis"):
        pynn.ops.glu(x, axis=0)


# -- layers -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", KERAS3)
def test_activation_layer_finite_differences(name, float64, seeded):
    layer = L.Activation(name)
    x = sample(name, (3, 8), 31)
    if name == "sparsemax":
        seed = 31
        while not sparsemax_clear_of_kinks(x):
            seed += 1
            x = sample(name, (3, 8), seed, scale=0.5)
    gradcheck.check_layer(layer, x, seeded, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", KERAS3)
def test_activation_layer_in_a_model_matches_keras(name, seeded):
    """Dense -> Activation(name) -> Dense with Keras's weights: the outputs and every weight
    gradient of a sum of squares are Keras's."""
    keras = keras_on_torch()
    import torch

    x = seeded.normal(size=(5, 6)).astype(np.float32)
    # glu ends the model: Keras's symbolic shape keeps the axis glu halves, so a Dense after
    # it would be built twice too wide in Keras
    tail = [] if name == "glu" else [3]
    k_model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8),
                                keras.layers.Activation(name)]
                               + [keras.layers.Dense(u) for u in tail])
    model = pynn.Sequential([L.Input((6,)), L.Dense(8), L.Activation(name)]
                            + [L.Dense(u) for u in tail])
    model.set_weights(k_model.get_weights())
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               keras.ops.convert_to_numpy(k_model(x)), rtol=2e-5, atol=2e-6)
    assert model.output_shape == (None, 4 if name == "glu" else 3)
    out = k_model(torch.tensor(x))
    (out * out).sum().backward()
    want = [v.value.grad.numpy() for v in k_model.trainable_weights]
    model.compile(optimizer="sgd", loss="mse")
    y = model(x, training=True)
    model.backward(2 * np.asarray(y))
    got = [np.asarray(w.grad) for w in model.trainable_weights]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_dense_and_conv2d_take_them(name, float64, seeded):
    """activation= on the fused layers: Keras's defaults, the backward by central
    differences (tanh_shrink keeps z)."""
    dense = L.Dense(4, activation=name)
    x = seeded.normal(size=(3, 5))
    y = dense(x)
    z = x @ dense.kernel.value + dense.bias.value
    np.testing.assert_allclose(y, activation_forward_ref(z, name, DEFAULT_ALPHA.get(name, 0.0)),
                               rtol=1e-12, atol=1e-12)
    z_kinks = kinks(name, DEFAULT_ALPHA.get(name, 0.0))
    if all(np.min(np.abs(z - k)) > 1e-3 for k in z_kinks):
        gradcheck.check_layer(dense, x, seeded, rtol=1e-4, atol=1e-6)
    conv = L.Conv2D(2, 3, padding="same", activation=name)
    gradcheck.check_layer(conv, seeded.normal(size=(2, 4, 5, 3)) * 0.5, seeded, rtol=1e-4,
                          atol=1e-6)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_dense_matches_keras(name, seeded):
    keras = keras_on_torch()
    x = seeded.normal(size=(5, 7)).astype(np.float32) * 2
    k_dense = keras.layers.Dense(4, activation=name)
    want = keras.ops.convert_to_numpy(k_dense(x))
    dense = L.Dense(4, activation=name)
    dense(x)
    dense.set_weights(k_dense.get_weights())
    np.testing.assert_allclose(dense(x), want, rtol=2e-5, atol=2e-6)
    assert dense.get_config()["activation"] == name


@pytest.mark.parametrize("name", ["hard_tanh", "log_sigmoid", "squareplus", "celu"])
def test_recurrent_layers_match_keras(name, seeded):
    """The recurrent kernels derive from the output: the new ones that can are
    RNN_ACTIVATIONS, with Keras's default parameters."""
    keras = keras_on_torch()
    assert name in RNN_ACTIVATIONS
    x = seeded.normal(size=(3, 5, 4)).astype(np.float32)
    for k_cls, cls in [(keras.layers.SimpleRNN, L.SimpleRNN), (keras.layers.GRU, L.GRU)]:
        k_layer = k_cls(6, activation=name, return_sequences=True)
        want = keras.ops.convert_to_numpy(k_layer(x))
        layer = cls(6, activation=name, return_sequences=True)
        layer(x)
        layer.set_weights(k_layer.get_weights())
        np.testing.assert_allclose(layer(x), want, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("kind,kwargs", [
    ("SimpleRNN", {"activation": "tanh_shrink"}), ("LSTM", {"activation": "log_softmax"}),
    ("GRU", {"recurrent_activation": "sparsemax"})], ids=str)
def test_recurrent_layers_run_the_others_in_the_ops_cell(kind, kwargs, seeded):
    """tanh_shrink, log_softmax and sparsemax have no recurrent kernel (their derivative
    needs the input or the row): by name they run in the ops cell, saved by name; Keras's
    outputs with Keras's weights; glu (it would halve the state) is refused."""
    keras = keras_on_torch()
    x = seeded.normal(size=(3, 5, 4)).astype(np.float32)
    k_layer = getattr(keras.layers, kind)(6, return_sequences=True, **kwargs)
    want = keras.ops.convert_to_numpy(k_layer(x))
    layer = getattr(L, kind)(6, return_sequences=True, **kwargs)
    layer(x)
    layer.set_weights(k_layer.get_weights())
    np.testing.assert_allclose(layer(x), want, rtol=1e-5, atol=1e-6)
    config = layer.get_config()
    assert all(config[k] == v for k, v in kwargs.items())
    assert type(getattr(L, kind).from_config(config)).__name__ == kind


def test_recurrent_ops_cell_finite_differences(float64, seeded):
    layer = L.SimpleRNN(4, activation="tanh_shrink", return_sequences=True)
    gradcheck.check_layer(layer, seeded.normal(size=(2, 3, 5)), seeded, rtol=1e-5, atol=1e-7)


def test_recurrent_layers_refuse_glu():
    assert "glu" not in RNN_ACTIVATIONS
    with pytest.raises(ValueError, match="glu"):
        L.SimpleRNN(3, activation="glu")


def test_model_trains_saves_and_loads(seeded, tmp_path):
    model = pynn.Sequential([
        L.Input((6, 6, 2)), L.Conv2D(4, 3, activation="celu"), L.Flatten(),
        L.Dense(8, activation="squareplus"), L.Activation("glu"), L.Dense(6, "hard_tanh"),
        L.Activation("sparsemax"), L.Dense(3), L.Activation("log_softmax")])
    model.compile(optimizer="adam", loss="mse")
    x = seeded.normal(size=(20, 6, 6, 2)).astype(np.float32)
    y = seeded.normal(size=(20, 3)).astype(np.float32)
    history = model.fit(x, y, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    path = tmp_path / "model.pynn"
    model.save(str(path))
    loaded = pynn.load_model(str(path))
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


# -- bad arguments ------------------------------------------------------------------------
def test_bad_arguments_are_named():
    x = np.ones((2, 6), np.float32)
    with pytest.raises(ValueError, match=r"activation_forward: celu needs alpha > 0"):
        activation_forward(x, "celu", 0.0)
    with pytest.raises(ValueError, match=r"soft_shrink needs its threshold \(alpha\) >= 0"):
        activation_forward(x, "soft_shrink", -0.1)
    with pytest.raises(ValueError, match=r"squareplus needs its b \(alpha\) >= 0"):
        activation_forward(x, "squareplus", -1.0)
    with pytest.raises(ValueError, match=r"glu needs an even last axis .* \(2, 5\)"):
        activation_forward(np.ones((2, 5)), "glu")
    with pytest.raises(ValueError, match=r"glu's 'dy' must have x's shape \(2, 6\) with the "
                                         r"last axis halved, got \(2, 6\)"):
        activation_backward(x, x, None, "glu")
    with pytest.raises(ValueError, match="'sparsemax' needs the pre-activation 'x'"):
        activation_backward(x, None, x, "sparsemax")
    from pynn._native.dense import dense_forward

    for name in ROWS:
        with pytest.raises(ValueError, match=f"dense_forward: activation '{name}' acts on "
                                             f"whole rows"):
            dense_forward(x, np.ones((6, 4), np.float32), None, name, 0.0)
        with pytest.raises(ValueError, match="activation_bias_backward: activation"):
            activation_bias_backward(x, x, x, name)
    with pytest.raises(ValueError, match=r"Dense 'd': activation 'glu' acts on whole rows "
                                         r".* Activation\('glu'\)"):
        L.Dense(4, activation="glu", name="d")
    with pytest.raises(ValueError, match="Dense 'd': activation 'threshold' needs its "
                                         "threshold and default_value"):
        L.Dense(4, activation="threshold", name="d")
    with pytest.raises(ValueError, match=r"Activation 'a': glu .* needs it even, got input "
                                         r"shape \(None, 5\)"):
        L.Activation("glu", name="a").build((None, 5))


# -- OpenCL: the fused epilogues and a trained model against the CPU -----------------------
@pytest.mark.opencl
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_dense_fused_on_opencl(ocl, name):
    from tests.backend_util import assert_close

    rng = np.random.default_rng(8)
    x, w, b = (rng.normal(size=s).astype(np.float32) for s in [(5, 7), (7, 3), (3,)])
    alpha = PARAM.get(name, 0.0)
    y, z = ocl.dense_forward(ocl.asarray(x), ocl.asarray(w), ocl.asarray(b), name, alpha)
    want = activation_forward_ref(x.astype(np.float64) @ w + b, name, alpha)
    assert_close(y.get(), want, 1e-4, f"dense_forward {name} on opencl")
    assert (z is not None) == (name in ACTIVATIONS_NEEDING_INPUT)


@pytest.mark.opencl
def test_model_trains_alike_on_opencl(seeded):
    """One SGD step of a model of the new activations: OpenCL's loss and weights as the
    CPU's."""
    x = seeded.normal(size=(16, 5, 5, 2)).astype(np.float32)
    y = seeded.normal(size=(16, 3)).astype(np.float32)
    results = []
    previous = pynn.backend.current().NAME
    for device in ("cpu", "opencl"):
        pynn.set_device(device)
        try:
            pynn.utils.set_random_seed(5)
            model = pynn.Sequential([
                L.Input((5, 5, 2)), L.Conv2D(3, 3, activation="soft_shrink"), L.Flatten(),
                L.Dense(8, activation="log_sigmoid"), L.Activation("glu"),
                L.Dense(6, activation="tanh_shrink"), L.Activation("sparsemax"), L.Dense(3),
                L.Activation("log_softmax")])
            model.compile(optimizer="sgd", loss="mse")
            loss = model.train_on_batch(x, y)
            results.append((loss, model.get_weights()))
        finally:
            pynn.set_device(previous)
    (loss_cpu, w_cpu), (loss_ocl, w_ocl) = results
    np.testing.assert_allclose(loss_ocl, loss_cpu, rtol=1e-4)
    for a, b in zip(w_ocl, w_cpu):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# -- log_softmax and sparsemax as a layer's activation= --------------------------------------
@pytest.mark.parametrize("name", ["log_softmax", "sparsemax"])
def test_layers_take_log_softmax_and_sparsemax(name, float64, seeded):
    """The row op runs after the layer's linear part (no fused epilogue): Keras's outputs and
    gradients with Keras's weights, central differences, and the name in the config."""
    dense = L.Dense(6, activation=name)
    x = seeded.normal(size=(4, 5))
    y = dense(x)
    z = x @ dense.kernel.value + dense.bias.value
    np.testing.assert_allclose(y, activation_forward_ref(z, name), rtol=1e-12, atol=1e-12)
    assert dense.get_config()["activation"] == name
    assert type(L.Dense.from_config(dense.get_config())).__name__ == "Dense"
    if name == "log_softmax" or sparsemax_clear_of_kinks(z):
        gradcheck.check_layer(dense, x, seeded, rtol=1e-5, atol=1e-7)
    conv = L.Conv2D(4, 3, padding="same", activation=name)
    x4 = seeded.normal(size=(2, 4, 5, 3)) * 0.5
    y4 = conv(x4)
    linear = L.Conv2D(4, 3, padding="same")
    linear(x4)
    linear.set_weights(conv.get_weights())
    np.testing.assert_allclose(y4, activation_forward_ref(linear(x4), name), rtol=1e-12,
                               atol=1e-12)
    assert conv.get_config()["activation"] == name


@pytest.mark.parametrize("name", ["log_softmax", "sparsemax"])
def test_dense_with_a_row_activation_matches_keras(name, seeded):
    keras = keras_on_torch()
    import torch

    x = seeded.normal(size=(5, 6)).astype(np.float32)
    k_model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(7, activation=name),
                                keras.layers.Dense(3)])
    model = pynn.Sequential([L.Input((6,)), L.Dense(7, activation=name), L.Dense(3)])
    model.set_weights(k_model.get_weights())
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               keras.ops.convert_to_numpy(k_model(x)), rtol=2e-5, atol=2e-6)
    out = k_model(torch.tensor(x))
    (out * out).sum().backward()
    model.compile(optimizer="sgd", loss="mse")
    y = model(x, training=True)
    model.backward(2 * np.asarray(y))
    for w, k in zip(model.trainable_weights, k_model.trainable_weights):
        np.testing.assert_allclose(np.asarray(w.grad), k.value.grad.numpy(), rtol=1e-4,
                                   atol=1e-5, err_msg=name)


def test_threshold_is_an_op_with_keras_arguments():
    """keras.ops.threshold(x, threshold, default_value): the values and the gradient."""
    keras = keras_on_torch()
    import torch

    x = away_from(np.random.default_rng(41).normal(size=(4, 7)), [0.3]).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    want = keras.ops.threshold(xt, 0.3, -2.0)
    want.sum().backward()
    xv = pynn.ops.convert_to_tensor(x)
    with pynn.GradientTape() as tape:
        tape.watch(xv)
        y = pynn.ops.threshold(xv, 0.3, -2.0)
        loss = pynn.ops.sum(y)
    np.testing.assert_array_equal(y.numpy(), want.detach().numpy())
    np.testing.assert_array_equal(tape.gradient(loss, xv).numpy(), xt.grad.numpy())


def test_structured_pruning_refuses_to_cut_glu_pairs():
    from pynn.compression.structured import prune_structured

    model = pynn.Sequential([L.Input((5,)), L.Dense(8), L.Activation("glu"), L.Dense(2)])
    with pytest.raises(ValueError, match=r"through layer .*Activation\('glu'\) pairs"):
        prune_structured(model, 0.5)
    model = pynn.Sequential([L.Input((5,)), L.Dense(8), L.Activation("sparse_plus"),
                             L.Dense(2)])
    assert prune_structured(model, 0.5).layers[0].units == 4


def test_sparsemax_ties_and_non_finite_rows_end(target):
    """Ties give Keras's values (every tied element in the support), and a row with NaN or
    inf still ends (the support search is bounded): no hang on either backend."""
    x = np.array([[0.0, 0.0, 0.0, 0.0], [2.0, 2.0, -1.0, -1.0]], target.dtype)
    check_op(target, "activation_forward", x, "sparsemax", 0.0,
             ref=lambda x, *_: activation_forward_ref(x, "sparsemax"), rtol=tol(target))
    bad = np.array([[np.nan, 1.0, 0.5], [np.inf, 0.0, 1.0], [-np.inf, 0.0, 1.0]],
                   target.dtype)
    y = target.down(target.op("activation_forward")(target.up(bad), "sparsemax", 0.0))
    assert y.shape == bad.shape
    with np.errstate(invalid="ignore"):  # the reference's -inf - -inf
        want = activation_forward_ref(bad[2:3].astype(np.float64), "sparsemax")[0]
    np.testing.assert_allclose(y[2], want, rtol=1e-5)


def test_row_activation_functions_given_to_layers_are_their_names(seeded):
    keras = keras_on_torch()
    x = seeded.normal(size=(3, 5)).astype(np.float32)
    for fn in (keras.activations.log_softmax, pynn.ops.sparsemax):
        dense = L.Dense(4, activation=fn)
        y = np.asarray(dense(x))
        linear = L.Dense(4)
        linear(x)
        linear.set_weights(dense.get_weights())
        np.testing.assert_allclose(y, activation_forward_ref(linear(x), fn.__name__),
                                   rtol=2e-5, atol=2e-6)
        assert dense.get_config()["activation"] == fn.__name__
    assert L.Activation(keras.activations.glu).activation == "glu"
    with pytest.raises(ValueError, match="Dense 'g': activation 'glu' acts on whole rows"):
        L.Dense(4, activation=keras.activations.glu, name="g")
