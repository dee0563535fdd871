"""pynn.applications, part B: EfficientNet B0-B7, EfficientNetV2, ConvNeXt, InceptionV3,
InceptionResNetV2, Xception, NASNet against Keras 3's keras.applications (torch backend), and
the pieces they brought: Dropout's noise_shape and Keras's application layers (LayerScale,
StochasticDepth, CustomScaleLayer).

The smallest member of each family is built by both at its minimum input with weights=None,
Keras's random weights (their vectors perturbed, so batch-norm statistics are not the
identity) copied into pynn's model: layer names, weight shapes and predictions (batch 2,
inference) must agree. Automatic names (conv2d_7, add_3, ...) are compared too: Keras's
clear_session and pynn's name counters start both from zero. The larger members are
compared by layer names and weight shapes only, and are slow (Keras takes tens of seconds
to initialise each): marked ``slow``.
"""

import math

import numpy as np
import pytest

import pynn
import pynn.layers as L
import pynn.layers.base as layer_base
from pynn import applications
from tests.backend_util import keras_on_torch
from tests.reference import gradcheck
from tests.reference.dropout_ref import dropout_mask_ref

# name -> the family's minimum input, and whether the model scales 0-255 pixels itself
SMALLEST = {
    "EfficientNetB0": ((32, 32, 3), True),
    "EfficientNetV2B0": ((32, 32, 3), True),
    "ConvNeXtTiny": ((32, 32, 3), True),
    "InceptionV3": ((75, 75, 3), False),
    "InceptionResNetV2": ((75, 75, 3), False),
    "Xception": ((71, 71, 3), False),
    "NASNetMobile": ((32, 32, 3), False),
}
LARGER = ["EfficientNetB1", "EfficientNetB2", "EfficientNetB3", "EfficientNetB4",
          "EfficientNetB5", "EfficientNetB6", "EfficientNetB7", "EfficientNetV2B1",
          "EfficientNetV2B2", "EfficientNetV2B3", "EfficientNetV2S", "EfficientNetV2M",
          "EfficientNetV2L", "ConvNeXtSmall", "ConvNeXtBase", "ConvNeXtLarge",
          "ConvNeXtXLarge", "NASNetLarge"]
RTOL = 1e-4


def keras_constructor(keras, name):
    if name == "NASNetMobile":
        # Keras refuses NASNetMobile on torch (a bug it names in that backend); its NASNet
        # with NASNetMobile's arguments is the same graph
        from keras.src.applications import nasnet

        def build(input_shape=None, include_top=True, **kwargs):
            if not include_top and input_shape is None:
                input_shape = (224, 224, 3)
            return nasnet.NASNet(input_shape, penultimate_filters=1056, num_blocks=4,
                                 stem_block_filters=32, skip_reduction=False,
                                 filter_multiplier=2, include_top=include_top,
                                 default_size=224, name="nasnet_mobile", **kwargs)
        return build
    return getattr(keras.applications, name)


@pytest.fixture
def fresh_names():
    """pynn's automatic layer names counted from zero while the test builds (as Keras's
    after clear_session), restored after."""
    saved = dict(layer_base._name_counters)
    yield layer_base._name_counters.clear
    layer_base._name_counters.clear()
    layer_base._name_counters.update(saved)


def build_both(keras, fresh_names, name, **kwargs):
    keras.backend.clear_session()
    keras_model = keras_constructor(keras, name)(weights=None, **kwargs)
    fresh_names()
    return keras_model, getattr(applications, name)(weights=None, **kwargs)


def perturbed_weights(keras_model, rng):
    """Keras's initial weights with every vector moved off its initial value (BN's gamma,
    beta, moving statistics; biases), variances kept positive."""
    weights = []
    for w in keras_model.get_weights():
        if w.ndim == 1:
            w = w + rng.uniform(0.0, 0.2, w.shape).astype(w.dtype)
        weights.append(w)
    return weights


def layer_names(model):
    # Keras's model.layers leaves out its op nodes (ConvNeXt's residual sums); pynn's lists
    # them as OpLayer
    return [layer.name for layer in model.layers if type(layer).__name__ != "OpLayer"]


def images(rng, shape, pixels, n=2):
    low, high = (0.0, 255.0) if pixels else (-1.0, 1.0)
    return rng.uniform(low, high, (n,) + shape).astype(np.float32)


def assert_predictions_equal(keras_model, model, x):
    want = np.asarray(keras_model.predict(x, verbose=0))
    got = np.asarray(model.predict(x, verbose=0))
    assert got.shape == want.shape
    scale = np.max(np.abs(want))
    assert scale > 0
    err = np.max(np.abs(got - want)) / scale
    assert err <= RTOL, f"max relative error {err:.2e}"


# -- the smallest member of each family, against Keras ------------------------------------
@pytest.mark.parametrize("name", sorted(SMALLEST))
def test_smallest_member_matches_keras(name, fresh_names):
    keras = keras_on_torch()
    shape, pixels = SMALLEST[name]
    keras_model, model = build_both(keras, fresh_names, name, input_shape=shape, classes=6,
                                    classifier_activation=None)
    assert layer_names(model) == [layer.name for layer in keras_model.layers]
    assert model.name == keras_model.name
    assert [tuple(w.shape) for w in model.get_weights()] == [
        w.shape for w in keras_model.get_weights()]
    weights = perturbed_weights(keras_model, np.random.default_rng(0))
    keras_model.set_weights(weights)
    model.set_weights(weights)
    assert_predictions_equal(keras_model, model, images(np.random.default_rng(1), shape, pixels))


# The families whose feature extractors compare outputs too (the others shapes and names)
POOLING_FORWARD = ("EfficientNetB0", "ConvNeXtTiny", "Xception")


@pytest.mark.parametrize("pooling", [None, "avg", "max"])
@pytest.mark.parametrize("name", sorted(SMALLEST))
def test_feature_extractor_with_each_pooling(name, pooling, fresh_names):
    keras = keras_on_torch()
    shape, pixels = SMALLEST[name]
    keras_model, model = build_both(keras, fresh_names, name, include_top=False,
                                    input_shape=shape, pooling=pooling)
    assert layer_names(model) == [layer.name for layer in keras_model.layers]
    assert model.output_shape == tuple(keras_model.output_shape)
    if name in POOLING_FORWARD:
        weights = perturbed_weights(keras_model, np.random.default_rng(2))
        keras_model.set_weights(weights)
        model.set_weights(weights)
        assert_predictions_equal(keras_model, model,
                                 images(np.random.default_rng(3), shape, pixels))


def test_feature_extractor_takes_any_image_size_without_input_shape(fresh_names):
    keras = keras_on_torch()
    keras_model, model = build_both(keras, fresh_names, "EfficientNetB0", include_top=False,
                                    pooling="avg")
    assert model.input_shape == (None, None, None, 3) == tuple(keras_model.input_shape)
    weights = perturbed_weights(keras_model, np.random.default_rng(4))
    keras_model.set_weights(weights)
    model.set_weights(weights)
    assert_predictions_equal(keras_model, model,
                             images(np.random.default_rng(5), (41, 37, 3), True, n=1))


def test_input_tensor_is_the_models_input(fresh_names):
    inp = pynn.Input((33, 35, 3))
    model = applications.ConvNeXtTiny(weights=None, input_tensor=inp, include_top=False,
                                      pooling="avg")
    assert model.inputs[0] is inp
    # a tensor made from an Input: the model starts at that Input (Keras's source inputs)
    source = pynn.Input((71, 71, 3))
    model = applications.Xception(weights=None, input_tensor=L.Rescaling(0.5)(source),
                                  include_top=False)
    assert model.inputs[0] is source
    assert type(model.layers[1]).__name__ == "Rescaling"


@pytest.mark.large
@pytest.mark.parametrize("name", LARGER)
def test_larger_members_have_keras_layers_and_weight_shapes(name, fresh_names):
    keras = keras_on_torch()
    keras_model, model = build_both(keras, fresh_names, name, include_top=True, classes=10,
                                    input_shape=(32, 32, 3))
    assert len(model.layers) - sum(type(la).__name__ == "OpLayer" for la in model.layers) \
        == len(keras_model.layers)
    assert layer_names(model) == [layer.name for layer in keras_model.layers]
    assert [tuple(v.shape) for v in model.weights] == [tuple(v.shape)
                                                      for v in keras_model.weights]


@pytest.mark.parametrize("name", sorted(SMALLEST) + LARGER)
def test_constructors_take_keras_arguments(name):
    import inspect

    keras = keras_on_torch()
    assert str(inspect.signature(getattr(applications, name))) == str(
        inspect.signature(getattr(keras.applications, name)))


# -- Keras files -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["EfficientNetB0", "ConvNeXtTiny"])
def test_keras_files_both_ways(name, fresh_names, tmp_path):
    keras = keras_on_torch()
    shape, pixels = SMALLEST[name]
    keras_model, model = build_both(keras, fresh_names, name, input_shape=shape, classes=4)
    weights = perturbed_weights(keras_model, np.random.default_rng(6))
    keras_model.set_weights(weights)
    x = images(np.random.default_rng(7), shape, pixels)
    keras_model.save(tmp_path / "k.keras")
    loaded = pynn.load_model(tmp_path / "k.keras")
    assert layer_names(loaded) == [layer.name for layer in keras_model.layers]
    assert_predictions_equal(keras_model, loaded, x)

    model.set_weights(weights)
    model.save(tmp_path / "p.keras")
    back = keras.saving.load_model(tmp_path / "p.keras")
    assert [layer.name for layer in back.layers] == [layer.name for layer in keras_model.layers]
    assert_predictions_equal(back, model, x)


def test_weights_file_is_loaded(fresh_names, tmp_path):
    keras = keras_on_torch()
    keras_model, _ = build_both(keras, fresh_names, "EfficientNetV2B0", input_shape=(32, 32, 3),
                                classes=3)
    keras_model.set_weights(perturbed_weights(keras_model, np.random.default_rng(8)))
    keras_model.save_weights(tmp_path / "v2.weights.h5")
    model = applications.EfficientNetV2B0(weights=str(tmp_path / "v2.weights.h5"),
                                          input_shape=(32, 32, 3), classes=3)
    assert_predictions_equal(keras_model, model,
                             images(np.random.default_rng(9), (32, 32, 3), True))


# -- training ------------------------------------------------------------------------------
def test_efficientnet_b0_trains_one_step():
    model = applications.EfficientNetB0(weights=None, input_shape=(32, 32, 3), classes=3)
    model.compile(optimizer=pynn.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    before = model.get_weights()
    x = images(np.random.default_rng(10), (32, 32, 3), True)
    loss = model.train_on_batch(x, np.array([0, 2]))
    assert math.isfinite(loss)
    after = model.get_weights()
    kernel = [v.path for v in model.weights].index("stem_conv/kernel")
    assert not np.allclose(after[kernel], before[kernel])
    moving = [v.path for v in model.weights].index("stem_bn/moving_mean")
    assert not np.allclose(after[moving], before[moving])


# -- bad arguments: Keras's errors (and pynn's for "imagenet") -----------------------------
def keras_error(call):
    with pytest.raises(Exception) as info:
        call()
    return type(info.value), str(info.value)


BAD_ARGUMENTS = [
    ("EfficientNetB0", dict(weights="no/such/file.h5")),
    ("EfficientNetV2B0", dict(weights="no/such/file.h5")),
    ("InceptionV3", dict(weights="no/such/file.h5")),
    ("Xception", dict(weights="no/such/file.h5")),
    ("ConvNeXtTiny", dict(input_shape=(16, 16, 3))),
    ("InceptionV3", dict(input_shape=(74, 80, 3))),
    ("Xception", dict(input_shape=(None, None, 3))),
    ("InceptionResNetV2", dict(input_shape=(80, 80))),
    ("EfficientNetV2B0", dict(include_top=False, input_shape=(31, 64, 3))),
    ("EfficientNetV2B0", dict(name="my_net")),
]


@pytest.mark.parametrize("name,kwargs", BAD_ARGUMENTS, ids=str)
def test_bad_arguments_give_keras_errors(name, kwargs, fresh_names):
    keras = keras_on_torch()
    want = keras_error(lambda: getattr(keras.applications, name)(
        **dict(dict(weights=None), **kwargs)))
    got = keras_error(lambda: getattr(applications, name)(**dict(dict(weights=None), **kwargs)))
    assert got == want


def test_unusual_channel_count_warns_as_keras(fresh_names):
    with pytest.warns(UserWarning, match="expects 1 or 3 input channels.*with 4 input"):
        model = applications.Xception(weights=None, include_top=False,
                                      input_shape=(71, 71, 4))
    assert model.input_shape == (None, 71, 71, 4)


def test_convnext_with_stochastic_depth_is_keras(fresh_names):
    keras = keras_on_torch()
    from keras.src.applications import convnext as keras_convnext

    from pynn.applications import convnext

    kwargs = dict(depths=[1, 1, 2, 1], projection_dims=[8, 16, 24, 32], drop_path_rate=0.3,
                  include_top=True, input_shape=(32, 32, 3), classes=3, weights=None,
                  name="convnext_mini")
    keras.backend.clear_session()
    keras_model = keras_convnext.ConvNeXt(**kwargs)
    fresh_names()
    model = convnext.ConvNeXt(**kwargs)
    assert layer_names(model) == [layer.name for layer in keras_model.layers]
    assert sum(type(la).__name__ == "StochasticDepth" for la in model.layers) == 4
    weights = perturbed_weights(keras_model, np.random.default_rng(16))
    keras_model.set_weights(weights)
    model.set_weights(weights)
    assert_predictions_equal(keras_model, model,
                             images(np.random.default_rng(17), (32, 32, 3), True))


def test_nasnet_filters_rule_is_keras():
    from pynn.applications import nasnet

    with pytest.raises(ValueError, match="must be a multiple of 24"):
        nasnet.NASNet((32, 32, 3), penultimate_filters=1000, weights=None)


@pytest.mark.parametrize("name", sorted(SMALLEST))
def test_imagenet_weights_are_refused_clearly(name):
    with pytest.raises(ValueError, match="pynn downloads nothing.*weights=None"):
        getattr(applications, name)(weights="imagenet")


def test_preprocess_input_is_keras():
    keras = keras_on_torch()
    # the 'tf' mode is imagenet_utils' (pynn.applications, part A)
    pytest.importorskip("pynn.applications.imagenet_utils")
    x = np.random.default_rng(11).uniform(0, 255, (2, 5, 4, 3)).astype(np.float32)
    for family in ("efficientnet", "efficientnet_v2", "convnext"):
        assert getattr(applications, family).preprocess_input(x) is x
    for family in ("inception_v3", "inception_resnet_v2", "xception", "nasnet"):
        want = getattr(keras.applications, family).preprocess_input(x.copy())
        np.testing.assert_allclose(getattr(applications, family).preprocess_input(x.copy()),
                                   want, rtol=1e-6)


# -- Dropout's noise_shape -------------------------------------------------------------------
@pytest.mark.parametrize("shape,noise_shape", [
    ((5, 3, 4, 2), (None, 1, 1, 1)), ((3, 7, 5), (None, 1, 5)), ((4, 6), (1, 6)),
    ((2, 3, 3, 7), (None, 3, 1, None))], ids=str)
def test_dropout_noise_shape_matches_reference(shape, noise_shape):
    rate, seed = 0.4, 77
    layer = L.Dropout(rate, noise_shape=noise_shape, seed=seed)
    x = np.random.default_rng(12).uniform(0.5, 1.5, shape).astype(np.float32)
    y = np.asarray(layer(x, training=True))
    drawn = tuple(n if d is None else d for d, n in zip(noise_shape, shape))
    keep = dropout_mask_ref(math.prod(drawn), rate, seed, 0).reshape(drawn)
    np.testing.assert_allclose(y, x * keep / (1 - rate), rtol=1e-6)
    assert 0 < keep.sum() < keep.size or keep.size < 4
    # the stream moves on by the draws of the noise shape
    y2 = np.asarray(layer(x, training=True))
    keep2 = dropout_mask_ref(math.prod(drawn), rate, seed, math.prod(drawn)).reshape(drawn)
    np.testing.assert_allclose(y2, x * keep2 / (1 - rate), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(layer(x)), x)


def test_dropout_noise_shape_gradient(float64, seeded):
    layer = L.Dropout(0.5, noise_shape=(None, 1, 1, 1), seed=5)
    x = seeded.standard_normal((6, 3, 2, 2))

    def rewind():
        layer._offset = 0

    y = gradcheck.check_layer(layer, x, seeded, before_call=rewind)
    per_sample = np.abs(y).reshape(6, -1).max(axis=1)
    assert (per_sample == 0).any() and (per_sample > 0).any(), "whole samples are dropped"


def test_dropout_noise_shape_config_and_keras():
    keras = keras_on_torch()
    layer = L.Dropout(0.2, noise_shape=(None, 1, 1, 1))
    config = layer.get_config()
    assert config["noise_shape"] == [None, 1, 1, 1]
    assert L.Dropout.from_config(config).noise_shape == (None, 1, 1, 1)
    assert keras.layers.Dropout(0.2, noise_shape=(None, 1, 1, 1)).get_config()[
        "noise_shape"] == (None, 1, 1, 1)


@pytest.mark.parametrize("noise_shape,input_shape", [
    ((None, 2), (None, 3, 4)), ((None, 2, 1), (None, 3, 4)), ((None, 0), (None, 3))], ids=str)
def test_dropout_bad_noise_shape_is_named(noise_shape, input_shape):
    with pytest.raises(ValueError, match="Dropout 'd': noise_shape"):
        layer = L.Dropout(0.3, noise_shape=noise_shape, name="d")
        layer.build(input_shape)


# -- Keras's application layers ---------------------------------------------------------------
def test_layer_scale_gradients(float64, seeded):
    layer = L.LayerScale(0.3, 5)
    layer.build((None, 3, 2, 5))
    layer.set_weights([seeded.standard_normal(5)])
    gradcheck.check_layer(layer, seeded.standard_normal((2, 3, 2, 5)), seeded)


def test_custom_scale_layer_gradients(float64, seeded):
    layer = L.CustomScaleLayer(0.17)
    x, branch = seeded.standard_normal((2, 3, 4, 5)), seeded.standard_normal((2, 3, 4, 5))
    y = np.asarray(layer([x, branch]))
    np.testing.assert_allclose(y, x + 0.17 * branch, rtol=1e-12)
    r = seeded.standard_normal(y.shape)
    layer([x, branch], training=True)
    dx, dbranch = layer.backward(r)
    for i, (arg, grad) in enumerate(((x, dx), (branch, dbranch))):
        def loss():
            return float(np.sum(np.asarray(layer([x, branch])) * r))
        gradcheck.assert_close(f"input {i}", grad, gradcheck.numerical_grad(loss, arg))


def test_stochastic_depth_drops_whole_samples(float64, seeded):
    layer = L.StochasticDepth(0.5, seed=9)
    x = seeded.uniform(0.5, 1.5, (8, 3, 2, 4))
    np.testing.assert_array_equal(np.asarray(layer(x)), x)

    def rewind():
        layer._offset = 0

    y = gradcheck.check_layer(layer, x, seeded, before_call=rewind)
    keep = dropout_mask_ref(8, 0.5, 9, 0).reshape(8, 1, 1, 1)
    np.testing.assert_allclose(y, x * keep * 2.0)


def test_application_layers_match_keras():
    keras = keras_on_torch()
    import torch
    from keras.src.applications.convnext import LayerScale
    from keras.src.applications.inception_resnet_v2 import CustomScaleLayer

    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 3, 3, 4)).astype(np.float32)
    gamma = rng.standard_normal(4).astype(np.float32)
    r = rng.standard_normal(x.shape).astype(np.float32)
    ours = L.LayerScale(1e-6, 4)
    ours.build(x.shape)
    ours.set_weights([gamma])
    theirs = LayerScale(1e-6, 4)
    theirs.build(x.shape)
    theirs.set_weights([gamma])
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    (yt * torch.tensor(r)).sum().backward()
    np.testing.assert_allclose(np.asarray(ours(x, training=True)), yt.detach().numpy(),
                               rtol=1e-6)
    dx = ours.backward(r)
    np.testing.assert_allclose(np.asarray(dx), xt.grad.numpy(), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(ours.gamma.grad), theirs.weights[0].value.grad.numpy(),
                               rtol=1e-5)
    assert ours.get_config()["projection_dim"] == theirs.get_config()["projection_dim"]

    branch = rng.standard_normal(x.shape).astype(np.float32)
    np.testing.assert_allclose(np.asarray(L.CustomScaleLayer(0.2)([x, branch])),
                               np.asarray(CustomScaleLayer(0.2)([x, branch]).detach()),
                               rtol=1e-6)


@pytest.mark.parametrize("make,shape,why", [
    (lambda: L.LayerScale(0.1, 4, name="s"), (None, 3, 5), "projection_dim=4"),
    (lambda: L.LayerScale(0.1, 0, name="s"), (None, 3), "positive int"),
    (lambda: L.CustomScaleLayer("big", name="s"), [(None, 3), (None, 3)], "a number"),
    (lambda: L.CustomScaleLayer(0.1, name="s"), [(None, 3), (None, 4)], "two inputs of one"),
    (lambda: L.StochasticDepth(1.5, name="s"), (None, 3), r"\[0, 1\)"),
], ids=["scale-width", "scale-dim", "custom-scale", "custom-shapes", "depth-rate"])
def test_application_layers_bad_arguments_are_named(make, shape, why):
    with pytest.raises(ValueError, match=f"'s'.*{why}"):
        make().build(shape)


@pytest.mark.opencl
def test_application_layers_on_opencl_match_the_cpu():
    from tests.opencl_util import skip_without_opencl

    skip_without_opencl()
    rng = np.random.default_rng(14)
    x = rng.standard_normal((3, 4, 2, 5)).astype(np.float32)
    r = rng.standard_normal(x.shape).astype(np.float32)
    results = {}
    for device in ("cpu", "opencl"):
        previous = pynn.get_device()
        pynn.set_device(device)
        try:
            b = pynn.backend.current()
            xb, dy = b.asarray(x, np.float32), b.asarray(r, np.float32)
            out = []
            for layer in (L.LayerScale(0.5, 5), L.StochasticDepth(0.5, seed=3),
                          L.Dropout(0.5, noise_shape=(None, 1, 2, 1), seed=4)):
                layer.build(x.shape)
                if layer.weights:
                    layer.set_weights([rng.standard_normal(5).astype(np.float32)]
                                      if device == "cpu" else results["gamma"])
                    results.setdefault("gamma", layer.get_weights())
                y = layer(xb, training=True)
                out += [b.to_numpy(y), b.to_numpy(layer.backward(dy))]
            out.append(b.to_numpy(L.CustomScaleLayer(0.3)([xb, dy])))
            results[device] = out
        finally:
            pynn.set_device(previous)
    for got, want in zip(results["opencl"], results["cpu"]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.opencl
@pytest.mark.parametrize("name", ["EfficientNetB0", "ConvNeXtTiny", "InceptionResNetV2"])
def test_applications_on_opencl_predict_as_on_the_cpu(name):
    from tests.opencl_util import skip_without_opencl

    skip_without_opencl()
    shape, pixels = SMALLEST[name]
    x = images(np.random.default_rng(15), shape, pixels, n=1)
    answers, weights = {}, None
    for device in ("cpu", "opencl"):
        previous = pynn.get_device()
        pynn.set_device(device)
        try:
            model = getattr(applications, name)(weights=None, input_shape=shape, classes=5,
                                                classifier_activation=None)
            weights = weights or [w + 0.1 * (w.ndim == 1) for w in model.get_weights()]
            model.set_weights(weights)
            answers[device] = np.asarray(model.predict(x, verbose=0))
        finally:
            pynn.set_device(previous)
    scale = np.max(np.abs(answers["cpu"]))
    np.testing.assert_allclose(answers["opencl"], answers["cpu"], atol=1e-4 * scale)
