"""Preprocessing ops (native/preprocessing.pyx, opencl/preprocessing.cl) against the float64
oracles of tests/reference/preprocessing_ref.py over both backends; the transform op against
keras.ops.image.affine_transform on the same matrices; Keras 3's preprocessing layers by
finite differences (the differentiable ones), against Keras itself (the deterministic ones),
their seeds, configs and bad inputs."""

import json

import numpy as np
import pytest

import pynn
from pynn import layers
from pynn import layers as L
from pynn.layers import preprocessing as pp
from tests.backend_util import check_op, keras_on_torch, rand
from tests.reference import preprocessing_ref as ref
from tests.reference.gradcheck import check_layer

TOL = {np.float32: {"rtol": 1e-5, "atol": 2e-5}, np.float64: {"rtol": 1e-12, "atol": 1e-12}}


@pytest.fixture
def rng():
    return np.random.default_rng(2027)


def _matrices(rng, n, h, w):
    """Rotations, zooms and shifts mixed, so coordinates leave the image on every side."""
    deg = rng.uniform(-40, 40, n)
    m = pp.rotation_matrices(deg, h, w)
    m[:, [0, 1, 3, 4]] *= rng.uniform(0.7, 1.4, (n, 1))
    m[:, [2, 5]] += rng.uniform(-3, 3, (n, 2))
    return m


AFFINE_CASES = [((2, 7, 9, 3), (7, 9)), ((3, 5, 4, 1), (6, 3)), ((1, 1, 1, 2), (3, 2)),
                ((2, 33, 17, 5), (31, 19))]


@pytest.mark.parametrize("fill_mode", ref.FILL_MODES)
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
@pytest.mark.parametrize("shape, size", AFFINE_CASES, ids=[str(c[0]) for c in AFFINE_CASES])
def test_image_affine(target, rng, shape, size, interpolation, fill_mode):
    x = rand(rng, shape, target.dtype)
    m = _matrices(rng, shape[0], shape[1], shape[2]).astype(target.dtype)
    if interpolation == "nearest":
        # Keep rounding ties away: a float32 coordinate a hair off .5 would round the other way.
        m[:, [2, 5]] += 0.013
    tol = TOL[target.dtype.type]
    check_op(target, "image_affine_forward", x, m, size, interpolation, fill_mode, 0.7,
             ref=ref.image_affine_forward_ref, rtol=tol)
    dy = rand(rng, (shape[0],) + tuple(size) + (shape[3],), target.dtype)
    check_op(target, "image_affine_backward", dy, m, shape, interpolation, fill_mode,
             ref=ref.image_affine_backward_ref, rtol=tol)


@pytest.mark.parametrize("shape, k", [((3, 5), 5), ((2, 4, 3, 7), 7), ((2, 3, 5), 15),
                                      ((4, 6), 1), ((2, 33, 65), 65)])
def test_channel_affine(target, rng, shape, k):
    x = rand(rng, shape, target.dtype)
    scale, offset = rand(rng, (k,), target.dtype), rand(rng, (k,), target.dtype)
    tol = TOL[target.dtype.type]
    check_op(target, "channel_affine_forward", x, scale, offset,
             ref=ref.channel_affine_forward_ref, rtol=tol)
    check_op(target, "channel_affine_forward", x, scale, None,
             ref=ref.channel_affine_forward_ref, rtol=tol)


@pytest.mark.parametrize("which", ["contrast", "brightness", "both"])
@pytest.mark.parametrize("shape", [(3, 5, 7, 3), (1, 1, 1, 1), (2, 17, 9, 65)])
def test_image_adjust(target, rng, shape, which):
    x = rand(rng, shape, target.dtype)
    n = shape[0]
    contrast = rng.uniform(0.2, 1.8, n).astype(target.dtype) if which != "brightness" else None
    delta = rng.uniform(-0.5, 0.5, n).astype(target.dtype) if which != "contrast" else None
    check_op(target, "image_adjust_forward", x, contrast, delta, (-1.2, 1.5),
             ref=ref.image_adjust_forward_ref, rtol=TOL[target.dtype.type])


def test_image_affine_same_bits_at_any_thread_count(num_threads, rng):
    from pynn.backend import cpu

    x = rand(rng, (9, 40, 37, 3))
    m = _matrices(rng, 9, 40, 37)
    dy = rand(rng, (9, 40, 37, 3))
    results = []
    for t in (1, 2, 3):
        num_threads(t)
        results.append((cpu.image_affine_forward(x, m, (40, 37), "bilinear", "reflect", 0.0),
                        cpu.image_affine_backward(dy, m, x.shape, "bilinear", "reflect")))
    for y, dx in results[1:]:
        np.testing.assert_array_equal(y, results[0][0])
        np.testing.assert_array_equal(dx, results[0][1])


# -- Keras parity ---------------------------------------------------------------------------

_keras = keras_on_torch


@pytest.mark.parametrize("fill_mode", ref.FILL_MODES)
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_transform_matches_keras_affine_transform(rng, interpolation, fill_mode):
    """The random layers' transform, given the same parameters, is Keras's."""
    keras = _keras()
    from pynn.backend import cpu

    x = rand(rng, (3, 9, 11, 2))
    m = _matrices(rng, 3, 9, 11)
    m[:, [2, 5]] += 0.013
    keras_m = np.concatenate([m, np.zeros((3, 2))], axis=1).astype(np.float32)
    want = keras.ops.convert_to_numpy(keras.ops.image.affine_transform(
        x, keras_m, interpolation=interpolation, fill_mode=fill_mode, fill_value=0.3))
    got = cpu.image_affine_forward(x, m.astype(np.float32), (9, 11), interpolation, fill_mode,
                                   0.3)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


KERAS_CASES = [
    ("Rescaling", {"scale": 1 / 255.0, "offset": -0.5}, (2, 5, 4, 3)),
    ("Rescaling", {"scale": 2.0}, (3, 7)),
    ("Resizing", {"height": 9, "width": 13}, (2, 5, 7, 3)),
    ("Resizing", {"height": 3, "width": 4}, (2, 9, 7, 2)),
    ("Resizing", {"height": 8, "width": 5, "interpolation": "nearest"}, (2, 5, 7, 3)),
    ("Resizing", {"height": 6, "width": 6, "crop_to_aspect_ratio": True}, (2, 5, 9, 3)),
    ("CenterCrop", {"height": 3, "width": 5}, (2, 6, 7, 3)),
    ("CenterCrop", {"height": 8, "width": 6}, (2, 5, 7, 3)),
    ("Normalization", {"mean": [0.5, -1.0, 2.0], "variance": [4.0, 0.25, 1.0]}, (2, 4, 3)),
    ("Normalization", {"mean": 0.5, "variance": 2.0, "axis": None}, (2, 4, 3)),
    ("Normalization", {"mean": [0.5, 1.0], "variance": [4.0, 9.0], "invert": True}, (3, 2)),
]


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("name, kwargs, shape", KERAS_CASES,
                         ids=[f"{n}-{k}" for n, k, _ in KERAS_CASES])
def test_layer_matches_keras(backend, rng, name, kwargs, shape):
    keras = _keras()
    import pynn

    x = rand(rng, shape)
    want = np.asarray(keras.ops.convert_to_numpy(getattr(keras.layers, name)(**kwargs)(x)))
    previous = pynn.backend.device()
    try:
        pynn.set_device(backend.name)
        got = backend.down(getattr(layers, name)(**kwargs)(backend.up(x)))
    finally:
        pynn.set_device(previous)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_normalization_adapt_and_weights_match_keras(rng):
    keras = _keras()
    data = rand(rng, (40, 5, 3)) * 3 + 1
    k = keras.layers.Normalization(axis=-1)
    k.adapt(data)
    p = layers.Normalization(axis=-1)
    p.adapt(data)
    # mean and variance as Keras's; count holds the samples seen (Keras 3.15 leaves it 0).
    for got, want in zip(p.get_weights()[:2], k.get_weights()[:2]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert p.get_weights()[2] == 40 * 5
    q = layers.Normalization(axis=-1)
    q.build((None, 5, 3))
    q.set_weights(k.get_weights())
    x = rand(rng, (4, 5, 3))
    np.testing.assert_allclose(q(x), keras.ops.convert_to_numpy(k(x)), rtol=1e-5, atol=1e-5)


# -- gradients ------------------------------------------------------------------------------

GRAD_CASES = [
    (lambda: layers.Rescaling(0.5, 0.25), (2, 3, 4, 2)),
    (lambda: layers.Rescaling([0.5, 2.0, -1.0]), (2, 3, 3)),
    (lambda: layers.Normalization(mean=[0.5, 1.0], variance=[4.0, 9.0]), (3, 2)),
    (lambda: layers.Resizing(5, 7), (2, 4, 3, 2)),
    (lambda: layers.Resizing(3, 2, crop_to_aspect_ratio=True), (2, 5, 6, 2)),
    (lambda: layers.CenterCrop(3, 3), (2, 5, 4, 2)),
    (lambda: layers.CenterCrop(6, 4), (1, 3, 5, 2)),
]


@pytest.mark.parametrize("make, shape", GRAD_CASES, ids=[str(i) for i in range(len(GRAD_CASES))])
def test_layer_gradients(float64, seeded, make, shape):
    layer = make()
    y = check_layer(layer, seeded.standard_normal(shape), seeded)
    assert y.shape[1:] == layer.output_shape[1:]


@pytest.mark.parametrize("make", [
    lambda: layers.RandomRotation(0.2, seed=3),
    lambda: layers.RandomZoom(0.3, seed=3, fill_mode="constant"),
    lambda: layers.RandomTranslation(0.2, 0.3, seed=3, fill_mode="wrap"),
    lambda: layers.RandomFlip(seed=3),
    lambda: layers.RandomCrop(3, 4, seed=3),
])
def test_random_geometric_layers_backpropagate_their_transform(float64, seeded, make):
    """The random draw is rewound before each call, so the layer is a fixed linear map."""
    layer = make()
    x = seeded.standard_normal((2, 6, 7, 2))
    layer(x)
    check_layer(layer, x, seeded, before_call=lambda: layer.set_runtime_state({"calls": 0}))


# -- random layers: active in training only, seeded ------------------------------------------

RANDOM = [
    lambda: layers.RandomFlip("horizontal", seed=7),
    lambda: layers.RandomRotation((-0.1, 0.2), seed=7),
    lambda: layers.RandomZoom(0.2, (-0.1, 0.3), seed=7),
    lambda: layers.RandomTranslation(0.1, 0.2, seed=7, fill_mode="nearest"),
    lambda: layers.RandomContrast(0.5, seed=7),
    lambda: layers.RandomBrightness(0.3, value_range=(0, 1), seed=7),
    lambda: layers.RandomCrop(4, 5, seed=7),
]


@pytest.mark.parametrize("make", RANDOM, ids=[str(i) for i in range(len(RANDOM))])
def test_random_layers_are_seeded_and_training_only(backend, num_threads, rng, make):
    import pynn

    x = rng.uniform(0, 1, (5, 8, 9, 3)).astype(np.float32)
    previous = pynn.backend.device()
    try:
        pynn.set_device(backend.name)
        runs = []
        for threads in (1, 3):
            num_threads(threads)
            layer = make()
            runs.append([backend.down(layer(backend.up(x), training=True)) for _ in range(2)])
        inference = backend.down(make()(backend.up(x)))
    finally:
        pynn.set_device(previous)
    for a, b in zip(*runs):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert not np.allclose(runs[0][0], runs[0][1]), "two calls drew the same transform"
    if isinstance(make(), layers.RandomCrop):
        assert inference.shape == (5, 4, 5, 3)
    else:
        np.testing.assert_array_equal(inference, x)


def test_random_flip_and_rotation_transform_the_image(rng):
    x = rng.uniform(0, 1, (16, 5, 6, 1)).astype(np.float32)
    y = layers.RandomFlip("horizontal", seed=1)(x, training=True)
    flipped = np.array([np.array_equal(a, b[:, ::-1]) for a, b in zip(y, x)])
    kept = np.array([np.array_equal(a, b) for a, b in zip(y, x)])
    assert np.all(flipped | kept) and flipped.any() and kept.any()
    layer = layers.RandomRotation((0.25, 0.25), seed=1, interpolation="nearest")
    square = rng.uniform(0, 1, (2, 5, 5, 1)).astype(np.float32)
    np.testing.assert_array_equal(layer(square, training=True), np.rot90(square, 1, (1, 2)))


def test_preprocessing_model_trains(backend, rng):
    """A model that augments inside itself fits and predicts (augmentation off there), on
    each backend: on OpenCL the whole pipeline runs on the device."""
    import pynn

    previous = pynn.backend.device()
    try:
        pynn.set_device(backend.name)
        model = pynn.Sequential([
            layers.Input((8, 8, 1)), layers.Rescaling(1 / 255.0), layers.RandomFlip(seed=1),
            layers.RandomRotation(0.05, seed=2), layers.RandomContrast(0.2, (0, 1), seed=3),
            layers.Conv2D(2, 3), layers.Flatten(), layers.Dense(2, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        x = rng.uniform(0, 255, (16, 8, 8, 1)).astype(np.float32)
        y = rng.integers(0, 2, 16)
        history = model.fit(x, y, epochs=2, batch_size=8, verbose=0)
        assert np.all(np.isfinite(history.history["loss"]))
        np.testing.assert_array_equal(model.predict(x, verbose=0), model.predict(x, verbose=0))
    finally:
        pynn.set_device(previous)


# -- configs and bad inputs -----------------------------------------------------------------

CONFIG_CASES = [
    lambda: layers.Rescaling(0.5, offset=[1.0, 2.0]),
    lambda: layers.Normalization(axis=(-2, -1), mean=1.0, variance=2.0),
    lambda: layers.Resizing(4, 5, interpolation="nearest", crop_to_aspect_ratio=True),
    lambda: layers.CenterCrop(3, 2),
    lambda: layers.RandomCrop(3, 2, seed=5),
    lambda: layers.RandomFlip("vertical", seed=5),
    lambda: layers.RandomRotation(0.1, fill_mode="constant", fill_value=1.0, seed=5),
    lambda: layers.RandomZoom((-0.2, 0.1), 0.3, interpolation="nearest", seed=5),
    lambda: layers.RandomTranslation(0.1, (-0.2, 0.3), seed=5),
    lambda: layers.RandomContrast((0.1, 0.4), value_range=(0, 1), seed=5),
    lambda: layers.RandomBrightness(0.2, seed=5),
]


@pytest.mark.parametrize("make", CONFIG_CASES, ids=[str(i) for i in range(len(CONFIG_CASES))])
def test_config_round_trip(make):
    layer = make()
    config = json.loads(json.dumps(layer.get_config()))
    clone = layers.LAYERS[type(layer).__name__].from_config(config)
    assert type(clone) is type(layer) and clone.get_config() == layer.get_config()
    x = np.arange(2 * 5 * 6 * 2, dtype=np.float32).reshape(2, 5, 6, 2)
    np.testing.assert_array_equal(clone(x, training=True), layer(x, training=True))


@pytest.mark.parametrize("make, match", [
    (lambda: layers.RandomRotation(1.5), r"RandomRotation '.*': factor must lie in"),
    (lambda: layers.RandomZoom("big"), r"RandomZoom '.*': height_factor must be a number"),
    (lambda: layers.RandomFlip("diagonal"), r"RandomFlip '.*': mode must be one of"),
    (lambda: layers.RandomTranslation(0.1, 0.1, fill_mode="smear"),
     r"RandomTranslation '.*': fill_mode must be one of"),
    (lambda: layers.RandomContrast(0.1, value_range=5), r"value_range must be \(low, high\)"),
    (lambda: layers.Resizing(0, 3), r"Resizing '.*': height and width must be >= 1"),
    (lambda: layers.Normalization(mean=1.0), r"pass both mean and variance"),
    (lambda: layers.Rescaling(float("nan")), r"Rescaling '.*': scale must be a finite"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"CenterCrop '.*': expected images of shape "
                                         r"\(None, height, width, channels\), got"):
        layers.CenterCrop(2, 2)(np.ones((2, 5, 5)))
    with pytest.raises(ValueError, match=r"Normalization '.*': axis \(1,\) must name trailing"):
        layers.Normalization(axis=1, mean=0.0, variance=1.0)(np.ones((2, 3, 4)))
    with pytest.raises(NotImplementedError, match=r"RandomContrast '.*': no input gradient"):
        layer = layers.RandomContrast(0.2)
        layer(np.ones((1, 2, 2, 1)), training=True)
        layer.backward(np.ones((1, 2, 2, 1)))
    from pynn.backend import cpu
    x = np.ones((2, 3, 4, 1), np.float32)
    with pytest.raises(ValueError, match=r"image_affine_forward: 'matrices' must have the "
                                         r"shape \(2, 6\).*got \(2, 4\)"):
        cpu.image_affine_forward(x, np.ones((2, 4), np.float32), (3, 4))
    with pytest.raises(ValueError, match=r"fill_mode must be one of .*got 'smear'"):
        cpu.image_affine_forward(x, np.ones((2, 6), np.float32), (3, 4), "bilinear", "smear")
    with pytest.raises(ValueError, match=r"matrix 1 is not finite"):
        cpu.image_affine_forward(x, np.array([[1, 0, 0, 0, 1, 0], [np.nan] * 6], np.float32),
                                 (3, 4))
    with pytest.raises(ValueError, match=r"channel_affine_forward: 'scale' of 3 values must "
                                         r"cover a run of x's trailing axes"):
        cpu.channel_affine_forward(np.ones((2, 4)), np.ones(3), None)
    with pytest.raises(ValueError, match=r"image_adjust_forward: 'contrast' must hold one "
                                         r"value per image \(2,\), got \(3,\)"):
        cpu.image_adjust_forward(x, np.ones(3, np.float32), None, (0, 1))


def test_model_with_preprocessing_layers_saves_and_loads(tmp_path, rng):
    """Configs, Normalization's adapted weights and the random layers' stream positions
    survive a save: the loaded model predicts the same and augments the same next batch."""
    import pynn

    data = rng.uniform(0, 255, (12, 6, 7, 2)).astype(np.float32)
    norm = layers.Normalization()
    norm.adapt(data)
    model = pynn.Sequential([
        layers.Input((6, 7, 2)), layers.Rescaling(2.0, 1.0), norm,
        layers.RandomZoom(0.2, seed=4), layers.Resizing(5, 5), layers.Flatten(),
        layers.Dense(3)])
    model(data, training=True)
    path = tmp_path / "m.pynn"
    pynn.saving.save_model(model, str(path))
    again = pynn.saving.load_model(str(path))
    np.testing.assert_allclose(again.predict(data, verbose=0), model.predict(data, verbose=0),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(again(data, training=True), model(data, training=True),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_random_layers_build_keras_matrices_and_images(rng):
    """Given the same drawn parameters, RandomRotation / RandomZoom / RandomTranslation /
    RandomFlip build Keras's matrices and, through Keras's own transform_images, the same
    images as pynn's op."""
    keras = _keras()
    from pynn.backend import cpu

    n, h, w = 3, 9, 11
    x = rand(rng, (n, h, w, 2))
    deg = rng.uniform(-30, 30, n).astype(np.float32)
    zoom = rng.uniform(0.8, 1.3, (n, 2)).astype(np.float32)  # (width, height), Keras's order
    shift = rng.uniform(-3, 3, (n, 2)).astype(np.float32)    # (dx, dy) pixels
    flips = np.array([True, False, True])

    def np_(t):
        return np.asarray(keras.ops.convert_to_numpy(t))

    tensor = keras.ops.convert_to_tensor
    zeros = tensor(np.zeros(n, np.float32))
    k_rot = np_(keras.layers.RandomRotation(0.1)._compute_affine_matrix(
        center_x=0.5, center_y=0.5, angle=tensor(deg), translate_x=zeros, translate_y=zeros,
        scale=tensor(np.ones(n, np.float32)), shear_x=zeros, shear_y=zeros, height=h,
        width=w))
    k_zoom = np_(keras.layers.RandomZoom(0.2)._get_zoom_matrix(
        tensor(zoom), h, w))
    k_shift = np_(keras.layers.RandomTranslation(0.1, 0.1)._get_translation_matrix(
        tensor(shift)))
    cases = [(k_rot, pp.rotation_matrices(deg, h, w)),
             (k_zoom, pp.zoom_matrices(zoom[:, 0], zoom[:, 1], h, w)),
             (k_shift, pp.translation_matrices(shift[:, 0], shift[:, 1]))]
    for keras_m, ours in cases:
        np.testing.assert_allclose(ours, keras_m[:, :6], rtol=1e-5, atol=1e-5)
        want = np_(keras.ops.image.affine_transform(x, keras_m, fill_mode="reflect"))
        got = cpu.image_affine_forward(x, ours.astype(np.float32), (h, w), "bilinear",
                                       "reflect", 0.0)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    flip = keras.layers.RandomFlip("horizontal")
    want = np_(flip.transform_images(
        x, {"flips": tensor(flips[:, None, None, None]),
            "input_shape": x.shape}))
    got = cpu.image_affine_forward(x, pp.flip_matrices(flips, np.zeros(n, bool), h, w), (h, w),
                                   "nearest", "constant", 0.0)
    np.testing.assert_array_equal(got, want)


# -- CategoryEncoding and Discretization -------------------------------------------------------

@pytest.mark.parametrize("mode", ["one_hot", "multi_hot", "count"])
@pytest.mark.parametrize("shape", [(4,), (4, 1), (4, 3)])
def test_category_encoding_matches_keras(mode, shape):
    keras = _keras()
    ids = np.random.default_rng(3).integers(0, 6, shape)
    want = keras.ops.convert_to_numpy(keras.layers.CategoryEncoding(6, mode)(ids))
    got = np.asarray(L.CategoryEncoding(6, mode)(ids))
    np.testing.assert_array_equal(got, want)
    if mode == "count" and len(shape) == 2:
        weights = np.random.default_rng(4).random(shape).astype(np.float32)
        want = keras.ops.convert_to_numpy(
            keras.layers.CategoryEncoding(6, mode)(ids, count_weights=weights))
        np.testing.assert_allclose(L.CategoryEncoding(6, mode)(ids, count_weights=weights),
                                   want, rtol=1e-6)


@pytest.mark.parametrize("mode", ["int", "one_hot", "multi_hot", "count"])
def test_discretization_matches_keras(mode):
    keras = _keras()
    x = np.random.default_rng(5).standard_normal((5, 3)).astype(np.float32)
    x[0, :] = [-0.5, 0.0, 1.0]   # values on the boundaries go to the upper bin
    bounds = [-0.5, 0.0, 1.0]
    want = keras.ops.convert_to_numpy(keras.layers.Discretization(bin_boundaries=bounds,
                                                                  output_mode=mode)(x))
    got = np.asarray(L.Discretization(bin_boundaries=bounds, output_mode=mode)(x))
    np.testing.assert_array_equal(got, want)


@pytest.mark.opencl
def test_encoded_features_train_and_run_on_opencl_as_on_the_cpu():
    """A tabular model (a binned column and counted tokens) trains; on OpenCL its
    predictions and step equal the CPU's (the layers are the backends' ops)."""
    from tests.backend_util import assert_step_matches_on_opencl

    def build():
        values, tokens = L.Input((3,)), L.Input((4,), dtype="int32")
        binned = L.Discretization(bin_boundaries=[-0.5, 0.0, 1.0],
                                  output_mode="one_hot")(values)
        counted = L.CategoryEncoding(num_tokens=6, output_mode="count")(tokens)
        joined = L.Concatenate()([L.Flatten()(binned), counted])
        return pynn.Model([values, tokens], L.Dense(2)(joined))

    rng = np.random.default_rng(6)
    xs = [rng.standard_normal((16, 3)).astype(np.float32),
          rng.integers(0, 6, (16, 4)).astype(np.int32)]
    y = rng.standard_normal((16, 2)).astype(np.float32)
    model = build()
    model.compile("adam", "mse")
    history = model.fit(xs, y, epochs=20, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    assert_step_matches_on_opencl(build, xs, y)


def test_encoding_bad_arguments_name_the_layer():
    with pytest.raises(ValueError, match=r"CategoryEncoding 'ce': input values must be whole "
                                         r"numbers in \[0, num_tokens=3\)"):
        L.CategoryEncoding(3, name="ce")(np.array([0, 5]))
    with pytest.raises(ValueError, match="output_mode must be one of"):
        L.CategoryEncoding(3, "tf_idf")
    with pytest.raises(ValueError, match="num_tokens must be a positive int"):
        L.CategoryEncoding(0)
    with pytest.raises(ValueError, match="count_weights is only used with output_mode='count'"):
        L.CategoryEncoding(3, "one_hot")(np.array([[0, 1]]), count_weights=np.ones((1, 2)))
    with pytest.raises(ValueError, match="bin_boundaries are required"):
        L.Discretization(num_bins=4)
    with pytest.raises(ValueError, match="sorted list"):
        L.Discretization(bin_boundaries=[1.0, 0.0])


# -- Keras's get_random_transformation / transform_images split ----------------------------

SPLIT_CASES = [
    ("RandomRotation", {"factor": 0.2, "fill_mode": "reflect"}, (3, 9, 11, 2)),
    ("RandomZoom", {"height_factor": (-0.3, 0.2), "width_factor": 0.25,
                    "fill_mode": "nearest"}, (3, 9, 11, 2)),
    ("RandomZoom", {"height_factor": 0.3}, (2, 7, 8, 3)),
    ("RandomTranslation", {"height_factor": 0.2, "width_factor": (-0.3, 0.1),
                           "fill_mode": "constant", "fill_value": 0.4}, (3, 9, 11, 2)),
    ("RandomFlip", {"mode": "horizontal_and_vertical"}, (5, 7, 6, 2)),
    ("RandomFlip", {"mode": "vertical"}, (5, 7, 6, 2)),
    ("RandomCrop", {"height": 5, "width": 4}, (2, 9, 7, 3)),
    ("RandomContrast", {"factor": (0.4, 0.7), "value_range": (0, 1)}, (3, 6, 5, 3)),
    ("RandomBrightness", {"factor": (-0.3, 0.4), "value_range": (-1, 2)}, (3, 6, 5, 3)),
]
SPLIT_IDS = [f"{n}-{i}" for i, (n, _, _) in enumerate(SPLIT_CASES)]


def _keras_split_transformation(keras, name, layer, t, shape):
    """Our transformation as Keras's transform_images takes it (tensors; Keras's rotation
    matrix built by Keras from our angle)."""
    tensor = keras.ops.convert_to_tensor
    if name == "RandomCrop":
        return tuple(int(v) for v in t)
    out = {k: (tensor(np.asarray(v, np.float32 if np.asarray(v).dtype.kind == "f" else None))
               if isinstance(v, np.ndarray) else v) for k, v in t.items()}
    if name == "RandomRotation":
        n, h, w = shape[0], shape[1], shape[2]
        zeros = tensor(np.zeros(n, np.float32))
        out["rotation_matrix"] = layer._compute_affine_matrix(
            center_x=0.5, center_y=0.5, angle=out["angle"], translate_x=zeros,
            translate_y=zeros, scale=tensor(np.ones(n, np.float32)), shear_x=zeros,
            shear_y=zeros, height=h, width=w)
    return out


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("name, kwargs, shape", SPLIT_CASES, ids=SPLIT_IDS)
def test_split_matches_keras_on_the_same_transformation(backend, rng, name, kwargs, shape):
    """Keras's transform_images handed pynn's drawn transformation gives pynn's images, on
    both backends, and keeps Keras's keys."""
    keras = _keras()
    x = rand(rng, shape) * 0.5 + 0.5 if "value_range" in kwargs else rand(rng, shape)
    ours = getattr(layers, name)(**kwargs, seed=11)
    t = ours.get_random_transformation(x)
    theirs = getattr(keras.layers, name)(**kwargs)
    theirs.build(shape)
    want = np.asarray(keras.ops.convert_to_numpy(theirs.transform_images(
        keras.ops.convert_to_tensor(x),
        _keras_split_transformation(keras, name, theirs, t, shape), training=True)))
    keys = {"RandomRotation": {"angle", "rotation_matrix"}, "RandomZoom": {"height_zoom",
            "width_zoom"}, "RandomTranslation": {"translations"}, "RandomFlip": {"flips"},
            "RandomContrast": {"contrast_factor"}, "RandomBrightness": {"rgb_delta"}}
    if name != "RandomCrop":
        assert keys[name] <= set(t)
    previous = pynn.backend.device()
    try:
        pynn.set_device(backend.name)
        got = backend.down(ours.transform_images(backend.up(x), t, training=True))
    finally:
        pynn.set_device(previous)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name, kwargs, shape", SPLIT_CASES, ids=SPLIT_IDS)
def test_call_is_the_split_with_the_same_draws(rng, name, kwargs, shape):
    """call(training=True) == transform_images(get_random_transformation) from a twin of
    the same seed, call after call; an explicit seed draws without moving the stream."""
    x = rand(rng, shape) * 0.5 + 0.5
    a = getattr(layers, name)(**kwargs, seed=5)
    b = getattr(layers, name)(**kwargs, seed=5)
    for _ in range(2):
        t = b.get_random_transformation(x)
        np.testing.assert_array_equal(a(x, training=True), b.transform_images(x, t))
    calls = b.runtime_state()["calls"]
    seeded = b.get_random_transformation(x, seed=123)
    assert b.runtime_state()["calls"] == calls
    again = getattr(layers, name)(**kwargs, seed=9).get_random_transformation(x, seed=123)
    for left, right in zip(*(s.values() if isinstance(s, dict) else s
                             for s in (seeded, again))):
        np.testing.assert_array_equal(np.asarray(left), np.asarray(right))
    if name == "RandomCrop":
        return
    assert b.get_random_transformation(x, training=False) is None or \
        not np.any(next(iter(b.get_random_transformation(x, training=False).values())))
    np.testing.assert_array_equal(b(x, training=False), x)


def test_split_draws_follow_keras_distributions():
    x = np.zeros((4000, 3, 3, 1), np.float32)
    t = layers.RandomRotation((-0.1, 0.2), seed=1).get_random_transformation(x)["angle"]
    assert -36.0 <= t.min() < -35 and 71 < t.max() <= 72.0 and abs(t.mean() - 18.0) < 1.0
    t = layers.RandomZoom((-0.2, 0.1), seed=1).get_random_transformation(x)
    np.testing.assert_array_equal(t["height_zoom"], t["width_zoom"])
    assert 0.8 <= t["height_zoom"].min() < 0.81 and 1.09 < t["height_zoom"].max() <= 1.1
    t = layers.RandomTranslation(0.1, (0.0, 0.2), seed=1).get_random_transformation(x)
    dx, dy = t["translations"].T
    assert dx.min() >= 0 and 0.59 < dx.max() <= 0.6 and -0.3 <= dy.min() < -0.29
    flips = layers.RandomFlip(seed=1).get_random_transformation(x)["flips"]
    assert flips.shape == (4000, 1, 1, 1) and abs(flips.mean() - 0.5) < 0.03
    t = layers.RandomBrightness(0.1, (0, 2), seed=1).get_random_transformation(x)["rgb_delta"]
    assert t.shape == (4000, 1, 1, 1) and -0.2 <= t.min() < -0.19 and 0.19 < t.max() <= 0.2
    t = layers.RandomContrast((0.3, 0.5), seed=1).get_random_transformation(x)
    t = t["contrast_factor"]
    assert 0.7 <= t.min() < 0.71 and 1.49 < t.max() <= 1.5
