"""Keras 3's augmentation policies: Pipeline (its layers in order, Keras's config, files,
ONNX, bad arguments)."""

import json
import zipfile

import numpy as np
import pytest

import pynn
from pynn import layers as L
from tests.backend_util import keras_on_torch
from tests.reference.gradcheck import check_layer


def images(shape=(3, 7, 5, 3), seed=0):
    return np.random.default_rng(seed).uniform(-3, 3, shape).astype(np.float32)


def test_pipeline_applies_its_layers_in_order():
    """Called alone it trains (Keras's default), each layer on the one before's output."""
    x = images()
    pipe = L.Pipeline([L.RandomInvert(0.5, value_range=(-3, 3), seed=4),
                       L.AutoContrast(value_range=(-3, 3)), L.RandomFlip(seed=5)])
    got = pipe(x)
    first, second, third = (L.RandomInvert(0.5, value_range=(-3, 3), seed=4),
                            L.AutoContrast(value_range=(-3, 3)), L.RandomFlip(seed=5))
    want = third(second(first(x, training=True), training=True), training=True)
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got, second(x))  # the random layers acted


def test_pipeline_at_inference_keeps_only_what_acts_there():
    x = images(seed=1)
    pipe = L.Pipeline([L.RandomInvert(1.0, value_range=(-3, 3), seed=4),
                       L.AutoContrast(value_range=(-3, 3))])
    np.testing.assert_array_equal(pipe(x, training=False),
                                  L.AutoContrast(value_range=(-3, 3))(x))


def test_pipeline_gradients_flow_through_its_layers():
    """A Pipeline of Dense layers: input and weight gradients against central differences in
    float64 (its weights are its layers', in order)."""
    rng = np.random.default_rng(2)
    pipe = L.Pipeline([L.Dense(4, activation="tanh", dtype="float64"),
                       L.Dense(3, dtype="float64")], dtype="float64")
    x = rng.standard_normal((3, 5))
    pipe.build((None, 5))
    for v in pipe.weights:
        v.assign(rng.standard_normal(v.shape))
    assert [tuple(v.shape) for v in pipe.weights] == [(5, 4), (4,), (4, 3), (3,)]
    check_layer(pipe, x, rng)


def test_pipeline_of_augmentations_trains_at_a_models_input():
    """fit runs the Pipeline in training (its augmentations draw) and asks its first layer
    for no input gradient, which augmentations do not offer."""
    rng = np.random.default_rng(8)
    model = pynn.Sequential([pynn.Input((6, 5, 3)),
                             L.Pipeline([L.RandomInvert(0.5, value_range=(-3, 3), seed=1),
                                         L.RandomFlip(seed=2), L.Flatten(), L.Dense(2)])])
    model.compile(optimizer="sgd", loss="mse")
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(images((8, 6, 5, 3), seed=9), rng.standard_normal((8, 2)),
                        epochs=2, batch_size=4, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert not np.allclose(model.get_weights()[0], before[0])


def test_pipeline_keras_parity_at_inference():
    keras = keras_on_torch()
    x = images(seed=3)
    ours = L.Pipeline([L.AutoContrast(value_range=(-3, 3)), L.RandomInvert(0.5, seed=1)])
    theirs = keras.layers.Pipeline([keras.layers.AutoContrast(value_range=(-3, 3)),
                                    keras.layers.RandomInvert(0.5, seed=1)])
    np.testing.assert_allclose(ours(x, training=False),
                               np.asarray(theirs(x, training=False)), rtol=1e-6, atol=1e-6)
    config = ours.get_config()
    assert sorted(config) == ["layers", "name"]  # Keras's Pipeline takes nothing more
    assert [e["class_name"] for e in config["layers"]] == ["AutoContrast", "RandomInvert"]
    back = L.Pipeline.from_config(json.loads(json.dumps(config)))
    assert [type(layer).__name__ for layer in back.layers] == ["AutoContrast", "RandomInvert"]
    assert back.layers[1].get_config() == ours.layers[1].get_config()


def test_pipeline_keras_file_both_ways(tmp_path):
    keras = keras_on_torch()
    model = pynn.Sequential([pynn.Input((6, 5, 3)),
                             L.Pipeline([L.AutoContrast(value_range=(-3, 3)),
                                         L.RandomFlip(seed=3)]),
                             L.Flatten(), L.Dense(2)])
    x = images((2, 6, 5, 3), seed=5)
    model.save(tmp_path / "p.keras")
    with zipfile.ZipFile(tmp_path / "p.keras") as z:
        config = json.loads(z.read("config.json"))
    entry = next(e for e in config["config"]["layers"] if e["class_name"] == "Pipeline")
    assert [e["class_name"] for e in entry["config"]["layers"]] == ["AutoContrast",
                                                                     "RandomFlip"]
    theirs = keras.saving.load_model(tmp_path / "p.keras")
    np.testing.assert_allclose(np.asarray(theirs.predict(x, verbose=0)), model.predict(x),
                               rtol=1e-5, atol=1e-5)
    theirs.save(tmp_path / "k.keras")
    back = pynn.load_model(tmp_path / "k.keras")
    np.testing.assert_allclose(back.predict(x), model.predict(x), rtol=1e-5, atol=1e-5)


def test_pipeline_weights_in_keras_files_both_ways(tmp_path):
    """Keras files a Pipeline's weights under pipeline/layers/<layer>, as a nested model's."""
    keras = keras_on_torch()
    theirs = keras.Sequential([keras.Input((4,)), keras.layers.Pipeline(
        [keras.layers.Dense(3, activation="tanh"), keras.layers.Dense(2)])])
    x = np.random.default_rng(7).standard_normal((3, 4)).astype(np.float32)
    theirs.save(tmp_path / "k.keras")
    ours = pynn.load_model(tmp_path / "k.keras")
    want = np.asarray(theirs.predict(x, verbose=0))
    np.testing.assert_allclose(ours.predict(x), want, rtol=1e-5, atol=1e-6)
    ours.set_weights([w * 2 for w in ours.get_weights()])
    ours.save(tmp_path / "p.keras")
    again = keras.saving.load_model(tmp_path / "p.keras")
    np.testing.assert_allclose(np.asarray(again.predict(x, verbose=0)), ours.predict(x),
                               rtol=1e-5, atol=1e-6)


def test_pipeline_onnx_export_is_its_layers_at_inference():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = pynn.Sequential([pynn.Input((6, 5, 3)),
                             L.Pipeline([L.RandomInvert(0.5, seed=1),
                                         L.AutoContrast(value_range=(-3, 3))]),
                             L.Flatten(), L.Dense(2)])
    x = images((2, 6, 5, 3), seed=6)
    proto = pynn.onnx.export(model)
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, model.predict(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layers, match", [
    ("AutoContrast", "layers must be a list of pynn Layer"),
    ([L.AutoContrast(), "flip"], "layers must be a list of pynn Layer"),
])
def test_pipeline_bad_layers(layers, match):
    with pytest.raises(ValueError, match=match):
        L.Pipeline(layers)


@pytest.mark.parametrize("config, match", [
    ({"name": "p"}, "config must hold 'layers'"),
    ({"layers": [{"class_name": "NoSuchLayer", "config": {}}]}, "unknown layer class"),
])
def test_pipeline_bad_config(config, match):
    with pytest.raises(ValueError, match=f"Pipeline: .*{match}"):
        L.Pipeline.from_config(config)


def test_pipeline_bad_input_names_the_inner_layer():
    pipe = L.Pipeline([L.Flatten(), L.Dense(2)])
    pipe.build((None, 4, 3))
    with pytest.raises(ValueError, match="expected input shape"):
        pipe(images((2, 4, 5)))
