"""The convolution-variant layers (pynn/layers/conv_variants.py): Conv2DTranspose,
DepthwiseConv2D and SeparableConv2D, and Conv2D(groups > 1) (pynn/layers/conv.py). Backward
against central finite differences (float64, CPU) for the input, every kernel and the bias;
forward against Keras 3 (torch backend) from Keras's own weights; OpenCL against the CPU;
config round trips; bad arguments. Their ops are tested in tests/test_conv.py
(conv2d_transpose_*) and tests/test_depthwise.py (depthwise_conv2d_*, grouped_conv2d_*).
"""

import os

import numpy as np
import pytest

import pynn
from pynn import layers
from tests.reference import conv_ref, depthwise_ref
from tests.reference.gradcheck import check_layer


def _x(rng, *shape):
    # Away from zero so relu-like kinks are never within the finite-difference step.
    x = rng.standard_normal(shape)
    return x + 0.05 * np.sign(x)


# Each case: (layer class name, constructor kwargs, input shape (N, H, W, C)).
TRANSPOSE_CASES = [
    ({"filters": 3, "kernel_size": 3}, (2, 4, 5, 2)),
    ({"filters": 2, "kernel_size": 3, "strides": 2, "padding": "same", "activation": "tanh"},
     (1, 3, 4, 3)),
    ({"filters": 3, "kernel_size": (2, 3), "strides": (2, 1), "padding": "valid",
          "output_padding": (1, 0), "activation": "sigmoid"}, (2, 3, 3, 2)),
    ({"filters": 2, "kernel_size": 4, "strides": 3, "padding": "same", "output_padding": 2,
          "activation": "relu"}, (1, 3, 2, 2)),
    ({"filters": 2, "kernel_size": 3, "padding": "same", "dilation_rate": 2, "activation": "gelu"},
     (1, 4, 3, 2)),
    ({"filters": 3, "kernel_size": 1, "strides": 2, "use_bias": False, "activation": "softmax"},
     (2, 2, 3, 2)),
]
DEPTHWISE_CASES = [
    ({"kernel_size": 3}, (2, 5, 4, 3)),
    ({"kernel_size": (3, 2), "strides": 2, "padding": "same", "depth_multiplier": 2,
          "activation": "tanh"}, (1, 5, 6, 2)),
    ({"kernel_size": 3, "padding": "same", "dilation_rate": (2, 1), "activation": "elu"},
     (2, 5, 4, 2)),
    ({"kernel_size": 2, "strides": (1, 2), "depth_multiplier": 3, "use_bias": False,
          "activation": "softmax"}, (1, 4, 5, 2)),
]
SEPARABLE_CASES = [
    ({"filters": 3, "kernel_size": 3}, (2, 5, 4, 2)),
    ({"filters": 2, "kernel_size": 3, "strides": 2, "padding": "same", "depth_multiplier": 2,
          "activation": "relu"}, (1, 6, 5, 3)),
    ({"filters": 4, "kernel_size": (2, 3), "dilation_rate": 2, "padding": "same",
          "activation": "gelu"}, (1, 5, 6, 2)),
    ({"filters": 2, "kernel_size": 1, "use_bias": False, "activation": "softmax"}, (2, 3, 3, 3)),
]
GROUPED_CASES = [
    ({"filters": 4, "kernel_size": 3, "groups": 2}, (2, 5, 4, 2)),
    ({"filters": 6, "kernel_size": (3, 2), "strides": 2, "padding": "same", "groups": 3,
      "activation": "tanh"}, (1, 5, 6, 3)),
    ({"filters": 4, "kernel_size": 3, "padding": "same", "dilation_rate": (1, 2), "groups": 2,
      "use_bias": False, "activation": "gelu"}, (2, 4, 5, 4)),
]
CASES = ([("Conv2D", kw, s) for kw, s in GROUPED_CASES]
         + [("Conv2DTranspose", kw, s) for kw, s in TRANSPOSE_CASES]
         + [("DepthwiseConv2D", kw, s) for kw, s in DEPTHWISE_CASES]
         + [("SeparableConv2D", kw, s) for kw, s in SEPARABLE_CASES])
IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(CASES)]
BIAS_INIT = {"bias_initializer": "random_normal"}


def make(name, kwargs):
    cls = getattr(layers, name)
    return cls(**kwargs, **(BIAS_INIT if kwargs.get("use_bias", True) else {}))


@pytest.mark.parametrize("name,kwargs,shape", CASES, ids=IDS)
def test_gradients_by_finite_differences(float64, seeded, name, kwargs, shape):
    layer = make(name, kwargs)
    y = check_layer(layer, _x(seeded, *shape), seeded)
    assert y.shape[1:] == layer.output_shape[1:]
    want = {"Conv2D": ["kernel", "bias"], "Conv2DTranspose": ["kernel", "bias"],
            "DepthwiseConv2D": ["kernel", "bias"],
            "SeparableConv2D": ["depthwise_kernel", "pointwise_kernel", "bias"]}[name]
    if not kwargs.get("use_bias", True):
        want = want[:-1]
    assert [v.name for v in layer.weights] == want


@pytest.mark.parametrize("name,kwargs,shape", CASES, ids=IDS)
def test_forward_matches_the_references(seeded, name, kwargs, shape):
    layer = make(name, kwargs)
    x = _x(seeded, *shape).astype(np.float32)
    y = layer(x)
    w = [a.astype(np.float64) for a in layer.get_weights()]
    bias = w[-1] if kwargs.get("use_bias", True) else None
    act = kwargs.get("activation", "linear")
    alpha = {"elu": 1.0}.get(act, 0.0)
    strides = layer.strides
    if name == "Conv2D":
        want, _ = depthwise_ref.grouped_conv2d_forward_ref(
            x, w[0], bias, strides, layer.padding, layer.dilation_rate, layer.groups, act,
            alpha)
    elif name == "Conv2DTranspose":
        want, _ = conv_ref.conv2d_transpose_forward_ref(
            x, w[0], bias, strides, layer.padding, layer.output_padding, layer.dilation_rate,
            act, alpha)
    elif name == "DepthwiseConv2D":
        want, _ = depthwise_ref.depthwise_conv2d_forward_ref(
            x, w[0], bias, strides, layer.padding, layer.dilation_rate, act, alpha)
    else:
        t, _ = depthwise_ref.depthwise_conv2d_forward_ref(
            x, w[0], None, strides, layer.padding, layer.dilation_rate)
        want, _ = conv_ref.conv2d_forward_ref(t, w[1], bias, (1, 1), "valid", (1, 1), act)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,kwargs,shape", CASES, ids=IDS)
def test_config_round_trip(seeded, name, kwargs, shape):
    layer = make(name, kwargs)
    x = _x(seeded, *shape).astype(np.float32)
    y = layer(x)
    config = layer.get_config()
    assert layers.LAYERS[name] is type(layer)
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    clone.build((None,) + shape[1:])
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(clone(x), y)


def test_first_layer_skips_input_gradient(seeded):
    for layer in (layers.Conv2DTranspose(2, 3, strides=2), layers.DepthwiseConv2D(3),
                  layers.SeparableConv2D(2, 3)):
        x = _x(seeded, 2, 5, 5, 3).astype(np.float32)
        y = layer(x, training=True)
        layer.needs_input_grad = False
        assert layer.backward(np.ones_like(y)) is None
        assert all(v.grad is not None for v in layer.weights)


def test_callable_constraints_reach_the_weights():
    def clip(w):
        np.clip(w, -0.1, 0.1, out=w)

    t = layers.Conv2DTranspose(2, 3, kernel_constraint=clip, bias_constraint=clip)
    d = layers.DepthwiseConv2D(3, depthwise_constraint=clip)
    s = layers.SeparableConv2D(2, 3, pointwise_constraint=clip)
    for layer in (t, d, s):
        layer.build((None, 5, 5, 2))
    assert t.kernel.constraint is clip and t.bias.constraint is clip
    assert d.kernel.constraint is clip and d.bias.constraint is None
    assert s.pointwise_kernel.constraint is clip and s.depthwise_kernel.constraint is None


@pytest.mark.parametrize("make_layer, error, match", [
    (lambda: layers.Conv2DTranspose(0, 3), ValueError,
     r"Conv2DTranspose '\w+': filters must be a positive int, got 0"),
    (lambda: layers.Conv2DTranspose(2, 3, strides=2, output_padding=2), ValueError,
     r"Conv2DTranspose '\w+': 'output_padding' must lie in \[0, strides\)"),
    (lambda: layers.Conv2DTranspose(2, 3, strides=2, dilation_rate=2), ValueError,
     "strides > 1 together with dilation_rate > 1"),
    (lambda: layers.Conv2DTranspose(2, 3, padding="full"), ValueError,
     "padding must be 'valid' or 'same', got 'full'"),
    (lambda: layers.Conv2DTranspose(2, 3, data_format="channels_first"), ValueError,
     "channels_last"),
    (lambda: layers.Conv2DTranspose(2, 3, kernel_constraint="non_negative"), ValueError,
     "kernel_constraint: Could not interpret constraint identifier: 'non_negative'"),
    (lambda: layers.Conv2DTranspose(2, 3, groups=2), TypeError, "unexpected arguments"),
    (lambda: layers.Conv2D(4, 3, groups=3), ValueError,
     r"Conv2D '\w+': groups must be a positive int dividing filters \(4\), got 3"),
    (lambda: layers.Conv2D(4, 3, groups=2).build((None, 5, 5, 3)), ValueError,
     (r"Conv2D '\w+': groups=2 must divide the input channels, got input shape "
      r"\(None, 5, 5, 3\)")),
    (lambda: layers.DepthwiseConv2D(3, depth_multiplier=0), ValueError,
     r"DepthwiseConv2D '\w+': depth_multiplier must be a positive int, got 0"),
    (lambda: layers.DepthwiseConv2D((3, 3, 3)), ValueError, "kernel_size"),
    (lambda: layers.SeparableConv2D(2.5, 3), ValueError,
     r"SeparableConv2D '\w+': filters must be a positive int, got 2.5"),
    (lambda: layers.SeparableConv2D(2, 3, pointwise_constraint=3), ValueError,
     "pointwise_constraint: Could not interpret constraint identifier: 3"),
])
def test_bad_arguments_name_the_layer(make_layer, error, match):
    with pytest.raises(error, match=match):
        make_layer()


@pytest.mark.parametrize("layer", [layers.Conv2DTranspose(2, 3), layers.DepthwiseConv2D(3),
                                   layers.SeparableConv2D(2, 3)], ids=lambda v: type(v).__name__)
def test_bad_input_shapes_name_the_layer(layer):
    with pytest.raises(ValueError, match=rf"{type(layer).__name__} '\w+': expected input "
                                         rf"shape \(None, H, W, C\), got \(None, 5, 3\)"):
        layer.build((None, 5, 3))
    with pytest.raises(ValueError, match=type(layer).__name__):
        layer(np.ones((2, 5, 5, 3), np.float32))
        layer(np.ones((2, 5, 5, 4), np.float32))   # built for 3 channels


def test_valid_kernel_larger_than_the_input_is_an_error():
    with pytest.raises(ValueError, match=r"DepthwiseConv2D '\w+': kernel \(5, 5\)"):
        layers.DepthwiseConv2D(5).build((None, 3, 3, 2))


def test_sequential_training_step_runs():
    """The three layers in one model: a fit step lowers the loss on a tiny problem."""
    pynn.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    model = pynn.Sequential([
        layers.Input((6, 6, 2)),
        layers.SeparableConv2D(4, 3, padding="same", activation="relu"),
        layers.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2),
        layers.Conv2DTranspose(2, 3, strides=2, padding="same"),
    ])
    assert model.layers[-1].output_shape == (None, 6, 6, 2)
    x = rng.standard_normal((8, 6, 6, 2)).astype(np.float32)
    y = np.tanh(x)
    model.compile(optimizer="adam", loss="mse")
    first = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=5, batch_size=4, verbose=0)
    assert model.evaluate(x, y, verbose=0) < first


def test_saved_model_loads_with_the_same_predictions(tmp_path):
    """Saved models name classes from LAYERS only: each variant comes back from its config."""
    pynn.utils.set_random_seed(4)
    model = pynn.Sequential([
        layers.Input((7, 6, 4)),
        layers.Conv2D(6, 3, padding="same", groups=2, activation="relu"),
        layers.SeparableConv2D(4, 3, depth_multiplier=2, bias_initializer="random_normal"),
        layers.DepthwiseConv2D(2, strides=2, padding="same", depth_multiplier=2),
        layers.Conv2DTranspose(3, 3, strides=2, output_padding=1, activation="tanh"),
    ])
    model.compile(optimizer="adam", loss="mse")
    x = np.random.default_rng(4).standard_normal((3, 7, 6, 4)).astype(np.float32)
    path = tmp_path / "variants.pynn"
    model.save(path)
    loaded = pynn.load_model(path)
    assert loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


# -- OpenCL against the CPU, the layer's whole forward and backward ---------------------------


@pytest.fixture
def restore_device():
    previous = pynn.get_device()
    yield
    pynn.set_device(previous)


@pytest.mark.opencl
@pytest.mark.parametrize("name,kwargs,shape", CASES, ids=IDS)
def test_opencl_layer_matches_cpu(restore_device, name, kwargs, shape):
    from tests.opencl_util import skip_without_opencl

    skip_without_opencl()
    rng = np.random.default_rng(sum(shape))
    x = _x(rng, *shape).astype(np.float32)
    results = {}
    weights = None
    for device in ("cpu", "opencl"):
        pynn.set_device(device)
        ops = pynn.backend.current()
        layer = make(name, kwargs)
        layer.build((None,) + shape[1:])
        if weights is None:
            weights = layer.get_weights()
        layer.set_weights(weights)
        y = layer(ops.asarray(x), training=True)
        dy = np.cos(np.arange(int(np.prod(y.shape)))).reshape(y.shape).astype(np.float32)
        dx = layer.backward(ops.asarray(dy))
        results[device] = [ops.to_numpy(a) for a in (y, dx, *(v.grad for v in layer.weights))]
    for i, (got, want) in enumerate(zip(results["opencl"], results["cpu"])):
        scale = max(1.0, float(np.abs(want).max()))
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-4 * scale, f"{name} result {i}"


# -- Keras 3 parity: the same outputs from Keras's own weights --------------------------------

PARITY_TRANSPOSE = [
    {"filters": 3, "kernel_size": 3},
    {"filters": 3, "kernel_size": 3, "padding": "same"},
    {"filters": 2, "kernel_size": 3, "strides": 2},
    {"filters": 2, "kernel_size": 3, "strides": 2, "padding": "same"},
    {"filters": 2, "kernel_size": 4, "strides": 2, "padding": "same"},
    {"filters": 2, "kernel_size": (3, 2), "strides": (2, 3), "padding": "same"},
    {"filters": 2, "kernel_size": 3, "strides": 2, "output_padding": 1},
    {"filters": 2, "kernel_size": 3, "strides": 2, "padding": "same", "output_padding": (1, 0)},
    {"filters": 2, "kernel_size": 4, "strides": 3, "padding": "same", "output_padding": (2, 1)},
    {"filters": 2, "kernel_size": 2, "strides": 3},
    {"filters": 2, "kernel_size": 3, "dilation_rate": 2, "padding": "same"},
    {"filters": 2, "kernel_size": (2, 3), "dilation_rate": (2, 1)},
    {"filters": 4, "kernel_size": 3, "strides": 2, "padding": "same", "activation": "relu"},
]
PARITY_DEPTHWISE = [
    {"kernel_size": 3},
    {"kernel_size": 3, "padding": "same", "depth_multiplier": 2},
    {"kernel_size": (3, 2), "strides": 2, "padding": "same"},
    {"kernel_size": 3, "strides": 2, "depth_multiplier": 2, "activation": "tanh"},
    {"kernel_size": 3, "dilation_rate": 2, "padding": "same", "depth_multiplier": 2},
    {"kernel_size": 2, "strides": (1, 2), "padding": "valid", "depth_multiplier": 3},
]
PARITY_SEPARABLE = [
    {"filters": 3, "kernel_size": 3},
    {"filters": 4, "kernel_size": 3, "padding": "same", "depth_multiplier": 2},
    {"filters": 2, "kernel_size": 3, "strides": 2, "padding": "same", "activation": "relu"},
    {"filters": 3, "kernel_size": (2, 3), "dilation_rate": 2, "padding": "same",
     "depth_multiplier": 2},
]
PARITY_GROUPED = [
    {"filters": 6, "kernel_size": 3, "groups": 3},
    {"filters": 3, "kernel_size": 3, "strides": 2, "padding": "same", "groups": 3,
     "activation": "relu"},
    {"filters": 6, "kernel_size": (2, 3), "dilation_rate": 2, "padding": "same", "groups": 3},
]
PARITY = ([("Conv2D", kw) for kw in PARITY_GROUPED]
          + [("Conv2DTranspose", kw) for kw in PARITY_TRANSPOSE]
          + [("DepthwiseConv2D", kw) for kw in PARITY_DEPTHWISE]
          + [("SeparableConv2D", kw) for kw in PARITY_SEPARABLE])


@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except Exception as exc:  # noqa: BLE001 (keras missing, or its backend cannot load)
        pytest.skip(f"keras (torch backend) is not available: {exc}")
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras runs on {keras.backend.backend()}, these tests want torch")
    return keras


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("name,kwargs", PARITY,
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(PARITY)])
@pytest.mark.parametrize("hw", [(7, 5), (4, 6)], ids=["7x5", "4x6"])
def test_outputs_match_keras(keras, name, kwargs, hw):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, *hw, 3)).astype(np.float32)
    # A random bias, so that a misplaced one shows.
    klayer = getattr(keras.layers, name)(**kwargs, bias_initializer="random_normal")
    want = np.asarray(keras.ops.convert_to_numpy(klayer(x)))
    layer = getattr(layers, name)(**kwargs)
    layer.build((None, *hw, 3))
    layer.set_weights([np.asarray(w) for w in klayer.get_weights()])
    got = layer(x)
    assert got.shape == want.shape == tuple(klayer.compute_output_shape(x.shape))
    assert layer.output_shape[1:] == want.shape[1:]
    scale = max(1.0, float(np.abs(want).max()))
    assert np.abs(got - want).max() <= 1e-5 * scale
