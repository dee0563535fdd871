"""The 1-D twins of the 2-D variants (pynn/layers/sequence.py): UpSampling1D, ZeroPadding1D,
Cropping1D, Conv1DTranspose and SeparableConv1D, which run the 2-D ops on (N, 1, T, C)
views. Each backend against the float64 oracles of tests/reference/sequence_ref.py (written
on the time axis, no view), OpenCL against the CPU, gradients by finite differences
(float64), Keras parity of outputs and configs, config round trips and bad inputs."""

import json

import numpy as np
import pytest

import pynn
from pynn import layers
from tests.backend_util import keras_on_torch, make_backend, rand
from tests.reference import sequence_ref as ref
from tests.reference.gradcheck import check_layer

# (make, input shape, reference(x, weights)) -- odd lengths, every padding, strides,
# dilation, output_padding, depth multipliers, activations.
CASES = {
    "up3": (lambda: layers.UpSampling1D(3), (2, 5, 3),
            lambda x, w: ref.upsampling1d_ref(x, 3)),
    "pad": (lambda: layers.ZeroPadding1D(2), (2, 5, 3),
            lambda x, w: ref.zero_padding1d_ref(x, (2, 2))),
    "pad-13": (lambda: layers.ZeroPadding1D((1, 3)), (1, 4, 2),
               lambda x, w: ref.zero_padding1d_ref(x, (1, 3))),
    "crop": (lambda: layers.Cropping1D(), (2, 7, 3),
             lambda x, w: ref.cropping1d_ref(x, (1, 1))),
    "crop-20": (lambda: layers.Cropping1D((2, 0)), (2, 5, 2),
                lambda x, w: ref.cropping1d_ref(x, (2, 0))),
    "tconv-valid": (lambda: layers.Conv1DTranspose(4, 3), (2, 5, 3),
                    lambda x, w: ref.conv1d_transpose_ref(x, *w, 1, "valid", None, 1)),
    "tconv-same-s2": (lambda: layers.Conv1DTranspose(3, 3, strides=2, padding="same",
                                                     activation="tanh"), (2, 5, 2),
                      lambda x, w: ref.conv1d_transpose_ref(x, *w, 2, "same", None, 1,
                                                            "tanh")),
    "tconv-valid-s3-op": (lambda: layers.Conv1DTranspose(2, 2, strides=3, output_padding=1),
                          (1, 4, 3),
                          lambda x, w: ref.conv1d_transpose_ref(x, *w, 3, "valid", 1, 1)),
    "tconv-same-d2-nobias": (lambda: layers.Conv1DTranspose(3, 3, padding="same",
                                                            dilation_rate=2, use_bias=False),
                             (2, 6, 2),
                             lambda x, w: ref.conv1d_transpose_ref(x, w[0], None, 1, "same",
                                                                   None, 2)),
    "sep-valid": (lambda: layers.SeparableConv1D(4, 3), (2, 7, 3),
                  lambda x, w: ref.separable_conv1d_ref(x, *w, 1, "valid", 1)),
    "sep-same-s2-m2": (lambda: layers.SeparableConv1D(3, 3, strides=2, padding="same",
                                                      depth_multiplier=2,
                                                      activation="relu"), (2, 8, 2),
                       lambda x, w: ref.separable_conv1d_ref(x, *w, 2, "same", 1, "relu")),
    "sep-same-d2-nobias": (lambda: layers.SeparableConv1D(2, 2, padding="same",
                                                          dilation_rate=2, use_bias=False),
                           (1, 5, 3),
                           lambda x, w: ref.separable_conv1d_ref(x, *w, None, 1, "same", 2)),
}
# -- Keras 3's DepthwiseConv1D --
CASES.update({
    "dw-valid": (lambda: layers.DepthwiseConv1D(3, bias_initializer="random_normal"),
                 (2, 7, 3), lambda x, w: ref.depthwise_conv1d_ref(x, *w, 1, "valid", 1)),
    "dw-same-s2-m2": (lambda: layers.DepthwiseConv1D(3, strides=2, padding="same",
                                                     depth_multiplier=2, activation="tanh",
                                                     bias_initializer="random_normal"),
                      (2, 8, 2),
                      lambda x, w: ref.depthwise_conv1d_ref(x, *w, 2, "same", 1, "tanh")),
    "dw-same-d2-m3-nobias": (lambda: layers.DepthwiseConv1D(2, padding="same",
                                                            dilation_rate=2,
                                                            depth_multiplier=3,
                                                            use_bias=False),
                             (1, 5, 3),
                             lambda x, w: ref.depthwise_conv1d_ref(x, w[0], None, 1, "same",
                                                                   2)),
    "dw-s3-d2": (lambda: layers.DepthwiseConv1D(3, strides=3, dilation_rate=2,
                                                activation="relu",
                                                bias_initializer="random_normal"),
                 (2, 13, 2), lambda x, w: ref.depthwise_conv1d_ref(x, *w, 3, "valid", 2,
                                                                   "relu")),
})


@pytest.mark.parametrize("case", CASES)
def test_layer_gradients(float64, seeded, case):
    make, shape, _ = CASES[case]
    layer = make()
    y = check_layer(layer, seeded.standard_normal(shape), seeded)
    assert y.shape[1:] == tuple(layer.output_shape[1:])


def _on(backend, fn):
    previous = pynn.backend.device()
    try:
        pynn.set_device(backend.name)
        return fn()
    finally:
        pynn.set_device(previous)


@pytest.mark.parametrize("case", CASES)
def test_layer_matches_reference(backend, case):
    """float32 forward on each backend against the float64 oracle, from random weights."""
    make, shape, reference = CASES[case]
    rng = np.random.default_rng(len(case))
    x = rand(rng, shape)

    def run():
        layer = make()
        layer.build((None,) + shape[1:])
        weights = [rand(rng, w.shape) for w in layer.get_weights()]
        layer.set_weights(weights)
        return backend.down(layer(backend.up(x))), weights, layer

    got, weights, layer = _on(backend, run)
    want = reference(x, weights)
    assert got.shape == want.shape == (shape[0],) + tuple(layer.output_shape[1:])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1, np.abs(want).max()))


@pytest.mark.opencl
@pytest.mark.parametrize("case", CASES)
def test_layer_opencl_matches_cpu(case):
    """Forward, input gradient and weight gradients: OpenCL against the CPU, float32."""
    from tests.opencl_util import skip_without_opencl

    skip_without_opencl()
    make, shape, _ = CASES[case]
    rng = np.random.default_rng(7)
    x = rand(rng, shape)
    probe = make()
    probe.build((None,) + shape[1:])
    weights = [rand(rng, w.shape) for w in probe.get_weights()]
    dy = rand(rng, (shape[0],) + tuple(probe.output_shape[1:]))
    results = []
    for name in ("cpu", "opencl"):
        be = make_backend(name)

        def run(be=be):
            layer = make()
            layer.build((None,) + shape[1:])
            layer.set_weights(weights)
            y = layer(be.up(x), training=True)
            dx = layer.backward(be.up(dy))
            return [be.down(y), be.down(dx)] + [be.down(v.grad) for v in layer.weights]

        results.append(_on(be, run))
    for i, (got, want) in enumerate(zip(results[1], results[0])):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1, np.abs(want).max()),
                                   err_msg=f"output {i} (y, dx, weight grads)")


@pytest.mark.parametrize("case", CASES)
def test_config_round_trip(case):
    make, shape, _ = CASES[case]
    rng = np.random.default_rng(3)
    layer = make()
    layer.build((None,) + shape[1:])
    layer.set_weights([rand(rng, w.shape) for w in layer.get_weights()])
    config = json.loads(json.dumps(layer.get_config()))
    twin = layers.LAYERS[type(layer).__name__].from_config(config)
    twin.build((None,) + shape[1:])
    twin.set_weights(layer.get_weights())
    x = rand(rng, shape)
    np.testing.assert_array_equal(np.asarray(twin(x)), np.asarray(layer(x)))
    assert twin.get_config() == layer.get_config()


_keras = keras_on_torch


KERAS_CASES = [
    ("UpSampling1D", {"size": 3}, (2, 5, 3)),
    ("ZeroPadding1D", {"padding": (1, 3)}, (2, 5, 3)),
    ("Cropping1D", {"cropping": (2, 1)}, (2, 7, 3)),
    ("Conv1DTranspose", {"filters": 4, "kernel_size": 3}, (2, 5, 3)),
    ("Conv1DTranspose", {"filters": 3, "kernel_size": 3, "strides": 2, "padding": "same",
                         "activation": "relu"}, (2, 5, 2)),
    ("Conv1DTranspose", {"filters": 2, "kernel_size": 4, "strides": 3, "output_padding": 2},
     (2, 4, 3)),
    ("Conv1DTranspose", {"filters": 2, "kernel_size": 3, "dilation_rate": 2,
                         "padding": "same"}, (2, 6, 3)),
    ("SeparableConv1D", {"filters": 4, "kernel_size": 3}, (2, 7, 3)),
    ("SeparableConv1D", {"filters": 3, "kernel_size": 3, "strides": 2, "padding": "same",
                         "depth_multiplier": 2, "activation": "tanh"}, (2, 8, 2)),
    ("SeparableConv1D", {"filters": 2, "kernel_size": 2, "dilation_rate": 2,
                         "padding": "same"}, (2, 5, 3)),
]
# -- Keras 3's DepthwiseConv1D (Keras takes strides and dilation together here) --
KERAS_CASES += [
    ("DepthwiseConv1D", {"kernel_size": 3}, (2, 7, 3)),
    ("DepthwiseConv1D", {"kernel_size": 3, "strides": 2, "padding": "same",
                         "depth_multiplier": 2, "activation": "relu"}, (2, 8, 3)),
    ("DepthwiseConv1D", {"kernel_size": 2, "dilation_rate": 3, "padding": "same",
                         "depth_multiplier": 3, "use_bias": False}, (2, 7, 2)),
    ("DepthwiseConv1D", {"kernel_size": 3, "strides": 2, "dilation_rate": 2}, (1, 11, 2)),
]


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("name, kwargs, shape", KERAS_CASES,
                         ids=[f"{n}-{k}" for n, k, _ in KERAS_CASES])
def test_layer_matches_keras(backend, name, kwargs, shape):
    """Same outputs as Keras 3's layer from Keras's weights (same shapes); same config
    values."""
    keras = _keras()
    x = rand(np.random.default_rng(11), shape)
    k_layer = getattr(keras.layers, name)(**kwargs)
    want = np.asarray(keras.ops.convert_to_numpy(k_layer(x)))

    def run():
        layer = getattr(layers, name)(**kwargs)
        layer.build((None,) + shape[1:])
        layer.set_weights(k_layer.get_weights())
        return backend.down(layer(backend.up(x))), layer

    got, layer = _on(backend, run)
    assert [w.shape for w in layer.get_weights()] == [w.shape for w in k_layer.get_weights()]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    k_config, p_config = k_layer.get_config(), layer.get_config()
    shared = set(k_config) & set(p_config) - {"name", "dtype", "trainable",
                                              "kernel_initializer", "bias_initializer",
                                              "depthwise_initializer",
                                              "pointwise_initializer"}
    assert {"padding"} & shared or {"size", "cropping"} & shared
    for key in shared:
        assert json.loads(json.dumps(p_config[key])) == json.loads(json.dumps(k_config[key])), key


BAD = [
    (lambda: layers.UpSampling1D(0), "UpSampling1D", "size must be a positive int"),
    (lambda: layers.ZeroPadding1D((1, -1)), "ZeroPadding1D", "non-negative"),
    (lambda: layers.ZeroPadding1D((1, 2, 3)), "ZeroPadding1D", "tuple of 2 ints"),
    (lambda: layers.Cropping1D("a"), "Cropping1D", "tuple of 2 ints"),
    (lambda: layers.Conv1DTranspose(2, 3, strides=2, output_padding=2), "Conv1DTranspose",
     "output_padding"),
    (lambda: layers.Conv1DTranspose(2, 3, strides=2, dilation_rate=2), "Conv1DTranspose",
     "strides > 1 together with dilation_rate > 1"),
    (lambda: layers.SeparableConv1D(2, 3, padding="causal"), "SeparableConv1D", "padding"),
    (lambda: layers.SeparableConv1D(2, 0), "SeparableConv1D", "kernel_size"),
    (lambda: layers.Conv1DTranspose(2, 3, bogus=1), "Conv1DTranspose", "bogus"),
]
# -- Keras 3's DepthwiseConv1D --
BAD += [
    (lambda: layers.DepthwiseConv1D(3, padding="causal"), "DepthwiseConv1D", "padding"),
    (lambda: layers.DepthwiseConv1D(0), "DepthwiseConv1D", "kernel_size"),
    (lambda: layers.DepthwiseConv1D(3, depth_multiplier=0), "DepthwiseConv1D",
     "depth_multiplier"),
    (lambda: layers.DepthwiseConv1D(3, data_format="channels_first"), "DepthwiseConv1D",
     "data_format"),
]


@pytest.mark.parametrize("make, who, what", BAD, ids=[f"{w}-{i}" for i, (_, w, _) in
                                                      enumerate(BAD)])
def test_bad_arguments(make, who, what):
    with pytest.raises((ValueError, TypeError), match=who) as info:
        make()
    assert what in str(info.value)


@pytest.mark.parametrize("make, shape, what", [
    (lambda: layers.Cropping1D((3, 2)), (None, 5, 2), "at least one step"),
    (lambda: layers.UpSampling1D(), (None, 5, 2, 1), "expected input shape (None, T, C)"),
    (lambda: layers.SeparableConv1D(2, 5), (None, 3, 2), "larger than the input"),
    (lambda: layers.Conv1DTranspose(2, 3), (None, 4), "expected input shape (None, T, C)"),
], ids=["crop-all", "up-4d", "sep-short", "tconv-2d"])
def test_bad_input_shapes(make, shape, what):
    layer = make()
    with pytest.raises(ValueError, match=type(layer).__name__) as info:
        layer.build(shape) if layer.compute_output_shape(shape) else None
    message = str(info.value)
    assert what in message and str(shape[1]) in message, message


def test_model_of_the_new_layers_trains_saves_and_loads(tmp_path, seeded):
    """Every new layer in one model: fit runs their backward, a saved model names them from
    LAYERS and gives the same predictions after loading."""
    model = pynn.Sequential([
        layers.Input((9, 3)),
        layers.SeparableConv1D(4, 3, padding="same", depth_multiplier=2, activation="relu"),
        layers.UpSampling1D(2),
        layers.ZeroPadding1D((1, 2)),
        layers.Cropping1D((2, 1)),
        layers.Conv1DTranspose(2, 3, strides=2, padding="same"),
    ])
    assert model.output_shape == (None, 36, 2)
    x = seeded.standard_normal((5, 9, 3)).astype(np.float32)
    y = seeded.standard_normal((5, 36, 2)).astype(np.float32)
    model.compile(optimizer="adam", loss="mse")
    before = [w.copy() for w in model.get_weights()]
    model.fit(x, y, epochs=1, batch_size=5, verbose=0)
    assert all(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    path = tmp_path / "seq1d.pynn"
    model.save(path)
    loaded = pynn.load_model(path)
    assert [type(layer).__name__ for layer in loaded.layers] == [
        type(layer).__name__ for layer in model.layers]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


# -- Keras 3's DepthwiseConv1D: gradients against Keras's (torch autograd) -------------------


@pytest.mark.parametrize("kwargs, shape", [
    ({"kernel_size": 3}, (2, 7, 3)),
    ({"kernel_size": 3, "strides": 2, "padding": "same", "depth_multiplier": 2,
      "activation": "tanh"}, (2, 8, 3)),
    ({"kernel_size": 2, "dilation_rate": 2, "padding": "same", "depth_multiplier": 3,
      "use_bias": False}, (1, 6, 2)),
], ids=["valid", "same-s2-m2-tanh", "same-d2-m3-nobias"])
def test_depthwise_conv1d_gradients_match_keras(kwargs, shape):
    keras = _keras()
    import torch

    rng = np.random.default_rng(5)
    x = rand(rng, shape)
    k_layer = keras.layers.DepthwiseConv1D(**kwargs, bias_initializer="random_normal")
    xt = torch.tensor(x, requires_grad=True)
    yt = k_layer(xt)
    r = rand(rng, tuple(yt.shape))
    (yt * torch.tensor(r)).sum().backward()
    want = [xt.grad.numpy()] + [v.value.grad.numpy() for v in k_layer.weights]

    layer = layers.DepthwiseConv1D(**kwargs)
    layer.build((None,) + shape[1:])
    layer.set_weights([keras.ops.convert_to_numpy(w) for w in k_layer.weights])
    y = layer(x, training=True)
    np.testing.assert_allclose(y, keras.ops.convert_to_numpy(yt), rtol=1e-5, atol=1e-5)
    got = [layer.backward(r)] + [np.asarray(v.grad) for v in layer.weights]
    assert [v.name for v in layer.weights] == [v.name for v in k_layer.weights]
    for name, a, b in zip(["x"] + [v.name for v in layer.weights], got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)


def test_depthwise_conv1d_refuses_what_keras_refuses():
    with pytest.raises(ValueError, match="DepthwiseConv1D 'dw'.*padding"):
        layers.DepthwiseConv1D(3, padding="causal", name="dw")
    layer = layers.DepthwiseConv1D(5, name="dw5")
    with pytest.raises(ValueError, match="DepthwiseConv1D 'dw5'.*larger than the input"):
        layer.compute_output_shape((None, 3, 2))
    with pytest.raises(ValueError, match="DepthwiseConv1D 'dw5'.*expected input shape"):
        layer.build((None, 3, 2, 1))
