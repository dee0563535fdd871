"""Keras 3's augmentation policies: Pipeline (its layers in order, Keras's config, files,
ONNX, bad arguments); RandAugment and AugMix against Keras's parts on the same
transformation, their draws, configs, files, ONNX and bad arguments."""

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


# -- randaug: RandAugment ----------------------------------------------------------------------

def _to_keras(keras, layer, key, t, shape):
    """One part's transformation as Keras's transform_images takes it."""
    import torch

    if t is None:
        return None
    out = {k: torch.as_tensor(np.asarray(v, np.float32 if np.asarray(v).dtype.kind == "f"
                                         else None)) if isinstance(v, np.ndarray) else v
           for k, v in t.items()}
    if key == "random_rotation":
        n, h, w = shape[:3]
        zeros = torch.zeros(n)
        out["rotation_matrix"] = layer._compute_affine_matrix(
            center_x=0.5, center_y=0.5, angle=out["angle"], translate_x=zeros,
            translate_y=zeros, scale=torch.ones(n), shear_x=zeros, shear_y=zeros, height=h,
            width=w)
    return out


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("op", range(11))
def test_rand_augment_matches_keras_on_the_same_transformation(backend, op):
    """Each of the eleven operations, and a pair of them in turn, through Keras's
    RandAugment.transform_images handed pynn's transformation."""
    keras = keras_on_torch()
    import torch

    shape = (3, 9, 11, 3)
    x = np.random.default_rng(op).uniform(0, 255, shape).astype(np.float32)
    ours = L.RandAugment(num_ops=2, factor=0.6, seed=op)
    ours.build(shape)
    theirs = keras.layers.RandAugment(num_ops=2, factor=0.6)
    theirs.build(shape)
    t = ours.get_random_transformation(x)
    t["layer_idxes"] = np.array([op, (op + 4) % 11])
    transforms = {k: _to_keras(keras, getattr(theirs, k), k, v, shape)
                  for k, v in t["transforms"].items()}
    # Keras's own parts in its loop's order. Not theirs.transform_images itself: on torch
    # RandomBrightness adds its delta in place (images += rgb_delta), so Keras's where()
    # sees every batch brightened whichever operation was picked.
    want = torch.as_tensor(x.copy())
    for index in t["layer_idxes"]:
        key = L.RandAugment.AUGMENT_LAYERS[index]
        assert key == list(transforms)[index] == theirs._AUGMENT_LAYERS[index]
        want = getattr(theirs, key).transform_images(want.clone(), transforms[key])
    want = np.asarray(keras.ops.convert_to_numpy(want))
    previous = pynn.backend.device()
    try:
        pynn.set_device(backend.name)
        got = backend.down(ours.transform_images(backend.up(x), t))
    finally:
        pynn.set_device(previous)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-3)
    assert not np.allclose(got, x)


def test_rand_augment_picks_its_operations_once_per_batch():
    """Keras 3.15: num_ops indices per call, uniform over the eleven layers; call is the
    split from the layer's stream, seeded per call."""
    x = np.random.default_rng(1).uniform(0, 255, (4, 6, 7, 3)).astype(np.float32)
    layer = L.RandAugment(num_ops=3, seed=2)
    picks = np.concatenate([layer.get_random_transformation(x)["layer_idxes"]
                            for _ in range(3000)])
    assert picks.min() == 0 and picks.max() == 10
    counts = np.bincount(picks, minlength=11) / len(picks)
    np.testing.assert_allclose(counts, 1 / 11, atol=0.01)
    a, b = L.RandAugment(num_ops=3, seed=8), L.RandAugment(num_ops=3, seed=8)
    for _ in range(3):
        np.testing.assert_array_equal(a(x, training=True),
                                      b.transform_images(x, b.get_random_transformation(x)))
    t = b.get_random_transformation(x)
    assert set(t["transforms"]) == set(L.RandAugment.AUGMENT_LAYERS)
    rot = t["transforms"]["random_rotation"]["angle"]
    assert rot.shape == (4,) and np.all((rot >= 0) & (rot <= 180))  # factor 0.5 -> (0, 0.5)
    np.testing.assert_array_equal(a(x, training=False), x)
    assert a.get_random_transformation(x, training=False) is None


def test_rand_augment_config_matches_keras():
    keras = keras_on_torch()
    ours = L.RandAugment(value_range=(0, 1), num_ops=3, factor=(0.2, 0.1),
                         interpolation="nearest", seed=4)
    theirs = keras.layers.RandAugment(value_range=(0, 1), num_ops=3, factor=(0.2, 0.1),
                                      interpolation="nearest", seed=4)
    config = ours.get_config()
    want = theirs.get_config()
    for key in ("num_ops", "interpolation", "seed"):
        assert config[key] == want[key]
    assert tuple(config["factor"]) == tuple(want["factor"]) == (0.1, 0.2)
    assert tuple(config["value_range"]) == tuple(want["value_range"])
    again = L.RandAugment.from_config(config)
    assert again.get_config() == config
    keras.layers.RandAugment.from_config(config)


def test_rand_augment_keras_file_both_ways(tmp_path):
    keras = keras_on_torch()
    model = pynn.Sequential([pynn.Input((6, 5, 3)), L.RandAugment(num_ops=1, seed=3),
                             L.Flatten(), L.Dense(2)])
    x = np.random.default_rng(5).uniform(0, 255, (2, 6, 5, 3)).astype(np.float32)
    model.save(tmp_path / "r.keras")
    theirs = keras.saving.load_model(tmp_path / "r.keras")
    layer = next(la for la in theirs.layers if type(la).__name__ == "RandAugment")
    assert layer.num_ops == 1 and layer.seed == 3
    np.testing.assert_allclose(np.asarray(theirs.predict(x, verbose=0)), model.predict(x),
                               rtol=1e-5, atol=1e-4)
    theirs.save(tmp_path / "k.keras")
    back = pynn.load_model(tmp_path / "k.keras")
    inner = next(la for la in back.layers if type(la).__name__ == "RandAugment")
    assert inner.num_ops == 1 and inner.seed == 3
    np.testing.assert_allclose(back.predict(x), model.predict(x), rtol=1e-5, atol=1e-4)


def test_rand_augment_onnx_export_is_the_identity():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = pynn.Sequential([pynn.Input((6, 5, 3)), L.RandAugment(seed=1), L.Flatten(),
                             L.Dense(2)])
    x = np.random.default_rng(6).uniform(0, 255, (2, 6, 5, 3)).astype(np.float32)
    proto = pynn.onnx.export(model)
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, model.predict(x), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_ops": -1}, "num_ops must be an int >= 0"),
    ({"num_ops": 1.5}, "num_ops must be an int >= 0"),
    ({"factor": 1.5}, r"factor must be a number or a pair of numbers in \[0, 1\]"),
    ({"factor": (0.1, 0.2, 0.3)}, "factor must be"),
    ({"interpolation": "cubic"}, "interpolation"),
])
def test_rand_augment_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        L.RandAugment(**kwargs)
    assert "rand_augment" in str(info.value) or "RandAugment" in str(info.value)


def test_rand_augment_bad_input_and_no_gradient():
    with pytest.raises(ValueError, match="height, width, channels"):
        L.RandAugment()(np.zeros((2, 5, 3), np.float32), training=True)
    model = pynn.Sequential([pynn.Input((4, 4, 3)), L.Dense(3), L.RandAugment(seed=1),
                             L.Flatten(), L.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(NotImplementedError, match="no input gradient"):
        model.fit(np.ones((2, 4, 4, 3), np.float32), np.ones((2, 1), np.float32), epochs=1,
                  verbose=0)


# -- randaug: AugMix ---------------------------------------------------------------------------

def _aug_mix_transformation(ours, x, chains):
    """A drawn transformation whose chains are set to ``chains`` (lists of part names), each
    step's transformation drawn by that part."""
    t = ours.get_random_transformation(x)
    rng = np.random.default_rng(3)
    t["chain_transforms"] = [[{"layer_name": key, "transformation":
                               ours.parts[key].get_random_transformation(x, seed=rng)}
                              for key in chain] for chain in chains]
    return t


AUG_MIX_CHAINS = [
    [["random_shear", "random_brightness"], ["random_rotation"], []],
    [["solarization", "random_translation", "equalization"], ["random_contrast"],
     ["random_posterization", "auto_contrast"]],
    [["random_color_degeneration", "random_sharpness"], ["random_brightness",
                                                          "random_rotation"], ["solarization"]],
]


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("case", range(len(AUG_MIX_CHAINS)))
def test_aug_mix_matches_keras_on_the_same_transformation(backend, case):
    keras = keras_on_torch()
    import torch

    shape = (3, 9, 11, 3)
    x = np.random.default_rng(case).uniform(0, 255, shape).astype(np.float32)
    ours = L.AugMix(factor=0.6, alpha=0.7, seed=case)
    ours.build(shape)
    theirs = keras.layers.AugMix(factor=0.6, alpha=0.7)
    theirs.build(shape)
    t = _aug_mix_transformation(ours, x, AUG_MIX_CHAINS[case])
    keras_t = {"chain_mixing_weights": torch.as_tensor(t["chain_mixing_weights"],
                                                       dtype=torch.float32),
               "weight_sample": torch.as_tensor(t["weight_sample"], dtype=torch.float32),
               "chain_transforms": [[{"layer_name": s["layer_name"], "transformation":
                                      _to_keras(keras, getattr(theirs, s["layer_name"]),
                                                s["layer_name"], s["transformation"], shape)}
                                     for s in chain] for chain in t["chain_transforms"]]}
    want = np.asarray(keras.ops.convert_to_numpy(theirs.transform_images(
        torch.as_tensor(x.copy()), keras_t, training=True)))
    previous = pynn.backend.device()
    try:
        pynn.set_device(backend.name)
        got = backend.down(ours.transform_images(backend.up(x), t))
    finally:
        pynn.set_device(previous)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-3)
    assert not np.allclose(got, x)


def test_aug_mix_draws_follow_keras_distributions():
    x = np.random.default_rng(1).uniform(0, 255, (2, 5, 6, 3)).astype(np.float32)
    layer = L.AugMix(num_chains=4, chain_depth=2, alpha=0.5, seed=2)
    ts = [layer.get_random_transformation(x) for _ in range(2000)]
    weights = np.stack([t["chain_mixing_weights"] for t in ts])
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(weights.mean(axis=0), 0.25, atol=0.02)
    sample = np.array([t["weight_sample"] for t in ts])
    assert 0 <= sample.min() and sample.max() <= 1 and abs(sample.mean() - 0.5) < 0.03
    # Beta(0.5, 0.5) has variance 1/8 (Beta(1, 1) would have 1/12)
    assert abs(sample.var() - 0.125) < 0.01
    steps = [s["layer_name"] for t in ts for chain in t["chain_transforms"] for s in chain]
    # each step one of the eleven parts or skipped, uniformly over twelve choices
    assert abs(len(steps) / (2000 * 4 * 2) - 11 / 12) < 0.02
    assert set(steps) == set(L.AugMix.ALL_OPS)
    geometric = L.AugMix(all_ops=False, seed=2)
    names = {s["layer_name"] for _ in range(200)
             for chain in geometric.get_random_transformation(x)["chain_transforms"]
             for s in chain}
    assert names == set(L.AugMix.GEOMETRIC_OPS)
    a, b = L.AugMix(seed=8), L.AugMix(seed=8)
    for _ in range(3):
        np.testing.assert_array_equal(a(x, training=True),
                                      b.transform_images(x, b.get_random_transformation(x)))
    np.testing.assert_array_equal(a(x, training=False), x)


def test_aug_mix_config_matches_keras():
    keras = keras_on_torch()
    kwargs = dict(value_range=(0, 1), num_chains=2, chain_depth=4, factor=(0.4, 0.1),
                  alpha=0.5, all_ops=False, interpolation="nearest", seed=4)
    config = L.AugMix(**kwargs).get_config()
    want = keras.layers.AugMix(**kwargs).get_config()
    for key in ("num_chains", "chain_depth", "alpha", "all_ops", "interpolation", "seed"):
        assert config[key] == want[key], key
    assert tuple(config["factor"]) == tuple(want["factor"]) == (0.1, 0.4)
    assert tuple(config["value_range"]) == tuple(want["value_range"])
    assert L.AugMix.from_config(config).get_config() == config
    keras.layers.AugMix.from_config(config)


def test_aug_mix_keras_file_both_ways_and_onnx(tmp_path):
    keras = keras_on_torch()
    model = pynn.Sequential([pynn.Input((6, 5, 3)), L.AugMix(num_chains=2, seed=3),
                             L.Flatten(), L.Dense(2)])
    x = np.random.default_rng(5).uniform(0, 255, (2, 6, 5, 3)).astype(np.float32)
    model.save(tmp_path / "a.keras")
    theirs = keras.saving.load_model(tmp_path / "a.keras")
    layer = next(la for la in theirs.layers if type(la).__name__ == "AugMix")
    assert layer.num_chains == 2 and layer.seed == 3
    np.testing.assert_allclose(np.asarray(theirs.predict(x, verbose=0)), model.predict(x),
                               rtol=1e-5, atol=1e-4)
    theirs.save(tmp_path / "k.keras")
    back = pynn.load_model(tmp_path / "k.keras")
    inner = next(la for la in back.layers if type(la).__name__ == "AugMix")
    assert inner.num_chains == 2 and inner.seed == 3
    np.testing.assert_allclose(back.predict(x), model.predict(x), rtol=1e-5, atol=1e-4)
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(pynn.onnx.export(model).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, model.predict(x), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_chains": 0}, "num_chains must be an int >= 1"),
    ({"chain_depth": 2.0}, "chain_depth must be an int >= 1"),
    ({"alpha": 0.0}, "alpha must be a number > 0"),
    ({"all_ops": "yes"}, "all_ops must be a bool"),
    ({"factor": -0.5}, r"factor must be a number or a pair of numbers in \[0, 1\]"),
    ({"value_range": (0, 1, 2)}, r"value_range must be \(low, high\)"),
])
def test_aug_mix_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        L.AugMix(**kwargs)
    assert "aug_mix" in str(info.value) or "AugMix" in str(info.value)
