"""pynn.applications against keras.applications (Keras 3 on torch): the same layers, names
and weight shapes; with Keras's weights copied (BatchNormalization's statistics and the biases
drawn away from their initial values, so every layer counts) the same predictions; Keras
files both ways; Keras's argument errors; one training step.

Each family is checked at its smallest member and the smallest input Keras allows (32x32),
batch 2; the larger members only for their layers and weight shapes (slow)."""

import re

import numpy as np
import pytest

import pynn
import pynn.applications as apps
import pynn.onnx
from pynn.applications import imagenet_utils
from tests.backend_util import keras_on_torch

RTOL = 1e-4
SHAPE = (32, 32, 3)
# (constructor, its family arguments): the smallest member of each family
SMALLEST = [
    ("ResNet50", {}),
    ("ResNet50V2", {}),
    ("VGG16", {}),
    ("VGG19", {}),
    ("MobileNet", {"alpha": 0.25}),
    ("MobileNetV2", {"alpha": 0.35}),
    ("MobileNetV3Small", {}),
    ("MobileNetV3Small", {"minimalistic": True}),
    ("MobileNetV3Large", {}),
    ("MobileNetV3Large", {"minimalistic": True}),
    ("DenseNet121", {}),
]
LARGER = ["ResNet101", "ResNet152", "ResNet101V2", "ResNet152V2", "DenseNet169",
          "DenseNet201"]


def _case_id(case):
    name, kwargs = case
    return name + "".join(f"-{k}={v}" for k, v in kwargs.items())


def _both(name, **kwargs):
    keras = keras_on_torch()
    keras.utils.set_random_seed(0)  # Keras's initial kernels: the same numbers every run
    kwargs.setdefault("input_shape", SHAPE)
    km = getattr(keras.applications, name)(weights=None, **kwargs)
    pm = getattr(apps, name)(weights=None, **kwargs)
    return keras, km, pm


def _randomize(km, seed=0):
    """Keras's initial weights leave BatchNormalization an identity and every bias zero:
    draw them, so a wrong epsilon, statistic or bias would show."""
    rng = np.random.default_rng(seed)
    weights = []
    for var, value in zip(km.weights, km.get_weights()):
        leaf = var.path.rsplit("/", 1)[-1]
        if leaf in ("gamma", "moving_variance"):
            value = rng.uniform(0.5, 1.5, value.shape)
        elif leaf in ("beta", "moving_mean", "bias"):
            value = rng.normal(0.0, 0.1, value.shape)
        weights.append(np.asarray(value, np.float32))
    km.set_weights(weights)
    return weights


def _images(name, seed=1):
    rng = np.random.default_rng(seed)
    # MobileNetV3 rescales [0, 255] itself (include_preprocessing); the others take [-1, 1]
    low, high = (0.0, 255.0) if name.startswith("MobileNetV3") else (-1.0, 1.0)
    return rng.uniform(low, high, (2, *SHAPE)).astype(np.float32)


def _layer_names(model):
    # Keras's model.layers holds layers only; pynn's also the op nodes (MobileNetV3's x + 3)
    return [layer.name for layer in model.layers if type(layer).__name__ != "OpLayer"]


def _assert_same_layers(km, pm):
    """Layer for layer the same class and name; a name Keras made up (re_lu_3) is checked
    for its stem only, Keras's counters running on since the session began."""
    k_layers = list(km.layers)
    p_layers = [layer for layer in pm.layers if type(layer).__name__ != "OpLayer"]
    assert len(p_layers) == len(k_layers)
    for k, p in zip(k_layers, p_layers):
        assert type(p).__name__ == type(k).__name__, (k.name, p.name)
        stem = re.sub(r"_\d+$", "", k.name)
        snake = re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", type(k).__name__).lower()
        if stem in (snake, "input_layer", "activation", "re_lu", "add", "multiply"):
            assert re.sub(r"_\d+$", "", p.name) == stem, (k.name, p.name)
        else:
            assert p.name == k.name
    assert [w.shape for w in pm.get_weights()] == [tuple(w.shape) for w in km.get_weights()]


def _assert_close(actual, expected, rtol=RTOL):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    scale = np.abs(expected).max()
    assert scale > 0
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale)


def _predict(model, x):
    return np.asarray(model.predict(x, verbose=0))


@pytest.mark.parametrize("case", SMALLEST, ids=_case_id)
def test_predictions_equal_keras(case):
    name, kwargs = case
    _, km, pm = _both(name, classifier_activation=None, **kwargs)
    _assert_same_layers(km, pm)
    assert pm.name == km.name
    pm.set_weights(_randomize(km))
    x = _images(name)
    expected = _predict(km, x)
    assert expected.shape == (2, 1000) and np.std(expected) > 1e-3  # not a constant output
    _assert_close(_predict(pm, x), expected)


# every pooling on the cheap families, one on each of the others
POOLINGS = [(name, kw, pooling) for name, kw in SMALLEST[4:7] + SMALLEST[2:3]
            for pooling in (None, "avg", "max")]
POOLINGS += [("ResNet50", {}, "avg"), ("ResNet50V2", {}, "max"), ("VGG19", {}, None),
             ("MobileNetV3Large", {"minimalistic": True}, "max"), ("DenseNet121", {}, "avg")]


@pytest.mark.parametrize(("name", "kwargs", "pooling"), POOLINGS,
                         ids=[f"{n}-{p}" for n, _, p in POOLINGS])
def test_feature_extractor_equals_keras(name, kwargs, pooling):
    _, km, pm = _both(name, include_top=False, pooling=pooling, **kwargs)
    _assert_same_layers(km, pm)
    pm.set_weights(_randomize(km))
    x = _images(name)
    expected = _predict(km, x)
    assert expected.ndim == (4 if pooling is None else 2)
    _assert_close(_predict(pm, x), expected)


@pytest.mark.large
@pytest.mark.parametrize("name", LARGER)
def test_larger_members_have_keras_layers(name):
    _, km, pm = _both(name, include_top=False)
    _assert_same_layers(km, pm)


# ResNet50 and DenseNet121 (10 s each) are slow; ResNet50V2 covers the ResNet code
FILE_CASES = [SMALLEST[i] for i in (1, 4, 5, 6)]
FILE_CASES += [pytest.param(*SMALLEST[i], marks=pytest.mark.slow) for i in (0, 10)]


@pytest.mark.parametrize(("name", "kwargs"), FILE_CASES,
                         ids=[_case_id(SMALLEST[i]) for i in (1, 4, 5, 6, 0, 10)])
def test_keras_files_both_ways(name, kwargs, tmp_path):
    keras, km, pm = _both(name, **kwargs)
    weights = _randomize(km)
    x = _images(name)
    expected = _predict(km, x)
    km.save(tmp_path / "keras.keras")
    loaded = pynn.load_model(str(tmp_path / "keras.keras"))
    assert _layer_names(loaded) == [layer.name for layer in km.layers]
    _assert_close(_predict(loaded, x), expected)

    pm.set_weights(weights)
    pm.save(str(tmp_path / "pynn.keras"))
    reopened = keras.saving.load_model(tmp_path / "pynn.keras")
    _assert_close(_predict(reopened, x), expected)


def test_weights_argument_loads_a_keras_weights_file(tmp_path):
    _, km, _ = _both("MobileNetV2", alpha=0.35)
    _randomize(km)
    path = tmp_path / "mobilenet_v2.weights.h5"
    km.save_weights(path)
    pm = apps.MobileNetV2(alpha=0.35, input_shape=SHAPE, weights=str(path))
    x = _images("MobileNetV2")
    _assert_close(_predict(pm, x), _predict(km, x))

    # Keras 2's layout (.h5: a group per layer, weight_names attributes)
    legacy = pytest.importorskip("keras.src.legacy.saving.legacy_h5_format")
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "mobilenet_v2.h5", "w") as fh:
        legacy.save_weights_to_hdf5_group(fh, km)
    pm = apps.MobileNetV2(alpha=0.35, input_shape=SHAPE,
                          weights=str(tmp_path / "mobilenet_v2.h5"))
    _assert_close(_predict(pm, x), _predict(km, x))

    # Keras's rule: a file of 1000 classes does not fit a classifier of 10
    with pytest.raises(ValueError, match="predictions"):
        apps.MobileNetV2(alpha=0.35, input_shape=SHAPE, weights=str(path), classes=10)


@pytest.mark.parametrize("name", ["MobileNet", "MobileNetV2", "MobileNetV3Small"])
def test_input_tensor_builds_on_the_given_input(name):
    keras = keras_on_torch()
    kwargs = {"weights": None, "include_top": False, "pooling": "avg"}
    if name != "MobileNetV3Small":
        kwargs["alpha"] = 0.25 if name == "MobileNet" else 0.35
    km = getattr(keras.applications, name)(
        input_tensor=keras.Input(shape=(48, 40, 3), name="image"), **kwargs)
    pm = getattr(apps, name)(input_tensor=pynn.Input(shape=(48, 40, 3), name="image"),
                             **kwargs)
    assert pm.layers[0].name == "image"
    assert pm.name == km.name  # Keras's mobilenet_0.25_None: the size of no input_shape
    _assert_same_layers(km, pm)
    pm.set_weights(_randomize(km))
    x = np.random.default_rng(5).uniform(-1, 1, (2, 48, 40, 3)).astype(np.float32)
    _assert_close(_predict(pm, x), _predict(km, x))


def _fit_one_batch_both(name, **kwargs):
    """Keras's and pynn's model from the same weights after one SGD step of fit on the same
    batch of 4: (Keras model, pynn model, starting weights, Keras's loss, pynn's loss)."""
    keras, km, pm = _both(name, classes=5, **kwargs)
    start = [np.asarray(w, np.float32) for w in km.get_weights()]
    pm.set_weights(start)
    rng = np.random.default_rng(2)
    x = np.concatenate([_images(name, seed=2), _images(name, seed=3)])
    y = rng.integers(0, 5, 4)
    km.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    pm.compile(optimizer=pynn.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    k_loss = km.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False).history["loss"]
    p_loss = pm.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False).history["loss"]
    return km, pm, start, k_loss, p_loss


def test_mobilenet_v2_trains_one_batch():
    """fit on one batch: BatchNormalization on the batch's statistics gives Keras's loss,
    and every weight moves. (MobileNetV2 at 32x32 trains on 1x1 maps whose batch statistics
    over 4 samples make its step ill-conditioned: float32 rounding alone moves it by
    percents, so the step itself is compared on MobileNetV3Small below.)"""
    km, pm, start, k_loss, p_loss = _fit_one_batch_both("MobileNetV2", alpha=0.35)
    assert np.all(np.isfinite(p_loss))
    np.testing.assert_allclose(p_loss, k_loss, rtol=1e-3)
    moved = [not np.array_equal(w0, w) for w0, w in zip(start, pm.get_weights())]
    assert moved[0] and moved[-1]  # the stem convolution and the classifier's bias


def test_mobilenet_v3_small_steps_as_keras():
    """One SGD step of fit, weight by weight as Keras's (the op nodes' gradients, the
    squeeze-and-excite gates, BatchNormalization's moving statistics updated)."""
    km, pm, start, k_loss, p_loss = _fit_one_batch_both("MobileNetV3Small", dropout_rate=0.0)
    np.testing.assert_allclose(p_loss, k_loss, rtol=1e-4)
    for var, w0, k_after, p_after in zip(km.weights, start, km.get_weights(),
                                         pm.get_weights()):
        k_step = np.asarray(k_after, np.float64) - w0
        p_step = np.asarray(p_after, np.float64) - w0
        assert np.linalg.norm(p_step - k_step) <= 1e-3 * np.linalg.norm(k_step) + 1e-7, \
            var.path
    assert np.linalg.norm(pm.get_weights()[0] - start[0]) > 1e-4  # it did train


def test_include_preprocessing_off_and_alpha():
    _, km, pm = _both("MobileNetV3Small", alpha=0.75, include_preprocessing=False,
                      classifier_activation=None)
    _assert_same_layers(km, pm)
    pm.set_weights(_randomize(km))
    x = _images("MobileNet")  # [-1, 1]: what the model takes without its Rescaling
    _assert_close(_predict(pm, x), _predict(km, x))


@pytest.mark.opencl
@pytest.mark.parametrize("case", [SMALLEST[i] for i in (1, 4, 5, 6, 10)], ids=_case_id)
def test_opencl_equals_keras(case):
    """The whole model on the OpenCL device (every op there; none falls back to the CPU)."""
    from tests.opencl_util import skip_without_opencl

    skip_without_opencl()
    name, kwargs = case
    keras = keras_on_torch()
    km = getattr(keras.applications, name)(weights=None, input_shape=SHAPE,
                                           classifier_activation=None, **kwargs)
    weights = _randomize(km)
    x = _images(name)
    previous = pynn.get_device()
    pynn.set_device("opencl")
    try:
        pm = getattr(apps, name)(weights=None, input_shape=SHAPE, classifier_activation=None,
                                 **kwargs)
        pm.set_weights(weights)
        actual = _predict(pm, x)
    finally:
        pynn.set_device(previous)
    _assert_close(actual, _predict(km, x))


ONNX_CASES = [SMALLEST[i] for i in (4, 5, 6, 9)]
ONNX_CASES += [pytest.param(*SMALLEST[i], marks=pytest.mark.slow) for i in (0, 1, 2, 10)]


@pytest.mark.parametrize(("name", "kwargs"), ONNX_CASES,
                         ids=[_case_id(SMALLEST[i]) for i in (4, 5, 6, 9, 0, 1, 2, 10)])
def test_onnx_export_equals_predict(name, kwargs):
    """ONNX export (MobileNetV3's op nodes included) run by onnxruntime: predict's numbers."""
    ort = pytest.importorskip("onnxruntime")
    keras = keras_on_torch()
    km = getattr(keras.applications, name)(weights=None, input_shape=SHAPE, **kwargs)
    pm = getattr(apps, name)(weights=None, input_shape=SHAPE, classifier_activation=None,
                             **kwargs)
    pm.set_weights(_randomize(km))
    x = _images(name)
    proto = pynn.onnx.export(pm)
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    want = _predict(pm, x)
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


# -- Keras's argument errors --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ResNet50", "VGG16", "MobileNet", "MobileNetV2",
                                  "MobileNetV3Small", "DenseNet121"])
def test_input_smaller_than_keras_allows(name):
    keras = keras_on_torch()
    shape = (31, 32, 3)
    with pytest.raises(ValueError, match="at least 32x32") as keras_error:
        getattr(keras.applications, name)(weights=None, include_top=False, input_shape=shape)
    with pytest.raises(ValueError) as pynn_error:
        getattr(apps, name)(weights=None, include_top=False, input_shape=shape)
    assert str(pynn_error.value) == str(keras_error.value)


def test_argument_errors():
    with pytest.raises(ValueError, match="pynn downloads nothing"):
        apps.ResNet50(weights="imagenet")
    with pytest.raises(ValueError, match="path to the weights file"):
        apps.VGG16(weights="/nonexistent/vgg16.h5")
    with pytest.raises(ValueError, match="static `input_shape`"):
        apps.DenseNet121(weights=None, input_shape=(None, None, 3))
    with pytest.raises(ValueError, match="three integers"):
        apps.ResNet50V2(weights=None, input_shape=(32, 32))
    with pytest.raises(ValueError, match="pooling"):
        apps.MobileNetV2(weights=None, include_top=False, pooling="min")
    with pytest.raises(ValueError, match="classes"):
        apps.VGG19(weights=None, classes=0, input_shape=SHAPE)
    with pytest.raises(ValueError, match="symbolic tensor"):
        apps.MobileNet(weights=None, input_tensor=np.zeros((1, 32, 32, 3)))


def test_classifier_activation_with_weights_file(tmp_path):
    model = apps.MobileNet(alpha=0.25, input_shape=SHAPE, weights=None)
    path = tmp_path / "m.weights.h5"
    model.save_weights(str(path))
    with pytest.raises(ValueError, match="Only `None` and `softmax`"):
        apps.MobileNet(alpha=0.25, input_shape=SHAPE, weights=str(path),
                       classifier_activation="sigmoid")


def test_unknown_constructor_and_submodules():
    assert apps.resnet.ResNet50 is apps.ResNet50
    assert apps.vgg19.preprocess_input is apps.vgg16.preprocess_input
    with pytest.raises(AttributeError, match="ResNet18"):
        apps.ResNet18  # noqa: B018


# -- imagenet_utils ---------------------------------------------------------------------------

@pytest.mark.parametrize("module", ["resnet", "resnet_v2", "vgg16", "vgg19", "mobilenet",
                                    "mobilenet_v2", "mobilenet_v3", "densenet"])
@pytest.mark.parametrize("data_format", [None, "channels_first"])
def test_preprocess_input_equals_keras(module, data_format):
    keras = keras_on_torch()
    rng = np.random.default_rng(3)
    shape = (2, 3, 5, 7) if data_format == "channels_first" else (2, 5, 7, 3)
    x = rng.uniform(0, 255, shape).astype(np.float32)
    kmod = getattr(keras.applications, module)
    expected = np.asarray(kmod.preprocess_input(x.copy(), data_format=data_format))
    actual = getattr(apps, module).preprocess_input(x.copy(), data_format=data_format)
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-5)


def test_preprocess_input_integers_and_errors():
    keras = keras_on_torch()
    x = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    for mode in imagenet_utils.PREPROCESS_MODES:
        expected = keras.applications.imagenet_utils.preprocess_input(x, mode=mode)
        actual = imagenet_utils.preprocess_input(x, mode=mode)
        assert actual.dtype == np.float32
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-5)
    with pytest.raises(ValueError, match="Expected mode"):
        imagenet_utils.preprocess_input(x, mode="keras")
    with pytest.raises(ValueError, match="Expected data_format"):
        imagenet_utils.preprocess_input(x, data_format="nhwc")
    with pytest.raises(ValueError, match="3 color channels"):
        imagenet_utils.preprocess_input(np.zeros((2, 4, 4, 4), np.float32))


def test_decode_predictions_reads_only_a_local_index(tmp_path, monkeypatch):
    monkeypatch.setattr(imagenet_utils, "CLASS_INDEX", None)
    monkeypatch.delenv(imagenet_utils.CLASS_INDEX_ENV, raising=False)
    preds = np.random.default_rng(4).uniform(size=(2, 1000)).astype(np.float32)
    with pytest.raises(ValueError, match="pynn downloads nothing"):
        apps.resnet.decode_predictions(preds)
    with pytest.raises(ValueError, match=r"\(samples, 1000\)"):
        imagenet_utils.decode_predictions(preds[:, :10])
    index = tmp_path / "imagenet_class_index.json"
    index.write_text("{" + ", ".join(f'"{i}": ["n{i:08d}", "class_{i}"]' for i in range(1000))
                     + "}")
    decoded = apps.densenet.decode_predictions(preds, top=3, class_index_path=str(index))
    for row, pred in zip(decoded, preds):
        best = np.argsort(pred)[::-1][:3]
        assert [r[1] for r in row] == [f"class_{i}" for i in best]
        assert [r[2] for r in row] == list(pred[best])
    bad = tmp_path / "bad.json"
    bad.write_text('{"0": ["n0", "x"]}')
    with pytest.raises(ValueError, match="not ImageNet's class index"):
        imagenet_utils.decode_predictions(preds, class_index_path=str(bad))
