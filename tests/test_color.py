"""The color op (native/color.pyx, opencl/color.cl) against the float64 oracle of
tests/reference/color_ref.py over both backends; Keras 3's colour augmentation layers
against Keras itself on the same transformation, their own draws statistically (ranges,
per-image independence, seeds, training only), configs, gradient refusal and bad inputs."""

import json

import numpy as np
import pytest

import pynn
from pynn import layers
from pynn.backend import cpu
from tests.backend_util import check_op, keras_on_torch
from tests.reference import color_ref as ref

TOL = {np.float32: {"rtol": 2e-6, "atol": 4e-5}, np.float64: {"rtol": 1e-12, "atol": 1e-12}}


def _tol(dtype, value_range):
    """float32 errors grow with the value range's width (HSV round trips lose ~2 ulps of
    it)."""
    tol = dict(TOL[np.dtype(dtype).type])
    if np.dtype(dtype) == np.float32:
        tol["atol"] = max(tol["atol"], 2e-6 * (value_range[1] - value_range[0]))
    return tol
RGB_ONLY = ("degenerate", "hue", "saturation")
STATISTICS = ("auto_contrast", "equalize")


@pytest.fixture
def rng():
    return np.random.default_rng(2031)


def _images(rng, shape, value_range):
    """Values k + 0.4 on the 0..255 scale mapped to value_range: away from every step of
    posterize's uint8 cast and equalize's bins (multiples of 255 / 16 and 255 / 255), so
    float32 rounding cannot move a value across one; of several channels, channel 0 of image
    0 is flat (where auto_contrast keeps its input)."""
    v = rng.integers(0, 255, shape) + 0.4
    if shape[1] * shape[2] > 1 and shape[3] > 1:
        v[0, ..., 0] = 100.4
    lo, hi = value_range
    return v / 255.0 * (hi - lo) + lo


def _params(rng, transform, n):
    a = {"solarize": rng.integers(0, 60, n).astype(float),
         "invert": rng.integers(0, 2, n).astype(float),
         "posterize": rng.integers(0, 8, n).astype(float),
         "grayscale": rng.integers(0, 2, n).astype(float),
         "degenerate": rng.uniform(-1, 1, n), "sharpen": rng.uniform(0, 1, n),
         "hue": rng.uniform(-0.5, 0.5, n), "saturation": rng.uniform(0, 4, n)}[transform]
    b = {"solarize": rng.integers(0, 255, n) + 0.7,
         "invert": rng.uniform(-2, 300, n)}.get(transform, np.zeros(n))
    if n > 1:
        a[0] = 1.0 if transform in ("invert", "grayscale") else a[0]
    return np.stack([a, b], axis=1)


SHAPES = [(1, 1, 1, 3), (2, 7, 5, 3), (3, 33, 17, 3), (1, 65, 31, 1), (2, 4, 6, 5)]
TRANSFORMS = ["auto_contrast", "equalize", "solarize", "invert", "posterize", "grayscale",
              "degenerate", "sharpen", "hue", "saturation"]


def _reads(transform, channels):
    if transform in RGB_ONLY:
        return channels == 3
    return channels in (1, 3) if transform == "grayscale" else True


CASES = [(t, s) for t in TRANSFORMS for s in SHAPES if _reads(t, s[-1])]


@pytest.mark.parametrize("value_range", [(0, 255), (-1.0, 2.0)])
@pytest.mark.parametrize("transform, shape", CASES, ids=[f"{t}-{s}" for t, s in CASES])
def test_color_transform(target, rng, transform, shape, value_range):
    x = _images(rng, shape, value_range).astype(target.dtype)
    params = None if transform in STATISTICS else _params(rng, transform, shape[0])
    bins = 17 if shape[1] == 7 else 256
    args = (x, transform, None if params is None else params.astype(target.dtype), value_range,
            bins)
    _, y = check_op(target, "color_transform_forward", *args,
                    ref=ref.color_transform_forward_ref, rtol=_tol(target.dtype, value_range))
    assert y.shape == x.shape
    if transform not in ("invert", "grayscale") and shape[1] > 1:
        assert not np.allclose(y, x), f"{transform} left the images as they were"


def test_color_transform_is_the_same_at_any_thread_count(num_threads, rng):
    x = _images(rng, (6, 40, 50, 3), (0, 1)).astype(np.float32)
    for transform in TRANSFORMS:
        params = None if transform in STATISTICS else _params(rng, transform, 6)
        runs = []
        for threads in (1, 2, 3):
            num_threads(threads)
            runs.append(cpu.color_transform_forward(
                x, transform, None if params is None else params.astype(np.float32), (0, 1)))
        for other in runs[1:]:
            np.testing.assert_array_equal(other, runs[0], err_msg=transform)


def test_equalize_pools_the_batch_and_keeps_a_single_level(rng):
    """Keras's histogram counts every image of the batch per channel; a channel of one
    level (one nonzero bin) comes back unchanged."""
    x = _images(rng, (3, 5, 4, 2), (0, 255))
    x[..., 1] = 77.4
    whole = ref.color_transform_forward_ref(x, "equalize")
    alone = ref.color_transform_forward_ref(x[:1], "equalize")
    y = cpu.color_transform_forward(x, "equalize")
    np.testing.assert_allclose(y, whole, rtol=1e-12)
    assert not np.allclose(y[:1, ..., 0], alone[..., 0])
    np.testing.assert_array_equal(y[..., 1], x[..., 1])


# -- the layers against Keras on the same transformation ------------------------------------

LAYER_CASES = [
    ("AutoContrast", {}),
    ("AutoContrast", {"value_range": (0, 1)}),
    ("Equalization", {"bins": 33}),
    ("Equalization", {"value_range": (0, 1)}),
    ("Solarization", {"addition_factor": 0.2, "threshold_factor": (0.3, 0.9)}),
    ("Solarization", {"threshold_factor": 0.5, "value_range": (0, 1)}),
    ("RandomInvert", {"factor": 0.7}),
    ("RandomInvert", {"value_range": (0, 1)}),
    ("RandomPosterization", {"factor": (2, 7)}),
    ("RandomPosterization", {"factor": 4, "value_range": (0, 1)}),
    ("RandomGrayscale", {"factor": 0.5}),
    ("RandomHue", {"factor": 0.6}),
    ("RandomHue", {"factor": (0.2, 0.9), "value_range": (0, 1)}),
    ("RandomSaturation", {"factor": (0.1, 0.9)}),
    ("RandomSaturation", {"factor": 0.5, "value_range": (0, 1)}),
    ("RandomColorDegeneration", {"factor": 0.7}),
    ("RandomColorDegeneration", {"factor": (0.2, 0.6), "value_range": (0, 1)}),
    ("RandomSharpness", {"factor": 0.8}),
    ("RandomSharpness", {"factor": (0.1, 0.3), "value_range": (0, 1)}),
]


def _keras_transformation(keras, t):
    import torch

    if isinstance(t, dict):
        return {k: torch.as_tensor(np.asarray(v)) for k, v in t.items()}
    return None if t is None else torch.as_tensor(np.asarray(t))


@pytest.mark.parametrize("name, kwargs", LAYER_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(LAYER_CASES)])
def test_layers_match_keras_on_the_same_transformation(rng, name, kwargs):
    keras = keras_on_torch()
    import torch

    vr = kwargs.get("value_range", (0, 255))
    x = _images(rng, (5, 9, 7, 3), vr).astype(np.float32)
    ours = getattr(layers, name)(**kwargs)
    theirs = getattr(keras.layers, name)(**kwargs)
    t = ours.get_random_transformation(x)
    want = keras.ops.convert_to_numpy(theirs.transform_images(
        torch.as_tensor(x), _keras_transformation(keras, t), training=True))
    got = ours.transform_images(x, t)
    scale = vr[1] - vr[0]
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6 * scale, err_msg=name)
    assert not np.allclose(got, x) or name in ("RandomInvert", "RandomGrayscale")
    # Outside training Keras leaves the images alone, except AutoContrast.
    want_inference = keras.ops.convert_to_numpy(theirs(torch.as_tensor(x), training=False))
    got_inference = ours(x)
    np.testing.assert_allclose(got_inference, want_inference, rtol=2e-6, atol=2e-6 * scale)
    if name == "AutoContrast":
        assert not np.allclose(got_inference, x)
    else:
        np.testing.assert_array_equal(got_inference, x)


def test_color_jitter_composes_keras_layers_in_keras_order(rng):
    """RandomColorJitter's draw handed to Keras's own RandomBrightness, RandomContrast,
    RandomSaturation and RandomHue, applied in that order, as Keras's jitter does."""
    keras = keras_on_torch()
    import torch

    x = _images(rng, (4, 6, 5, 3), (0, 255)).astype(np.float32)
    ours = layers.RandomColorJitter(brightness_factor=0.2, contrast_factor=0.3,
                                    saturation_factor=(0.2, 0.8), hue_factor=0.4, seed=11)
    t = ours.get_random_transformation(x)
    got = ours.transform_images(x, t)
    k = keras.layers
    want = torch.as_tensor(x)
    want = k.RandomBrightness(0.2).transform_images(
        want, {"rgb_delta": torch.as_tensor(t["brightness"].reshape(-1, 1, 1, 1),
                                            dtype=torch.float32)})
    want = k.RandomContrast(0.3).transform_images(
        want, {"contrast_factor": torch.as_tensor(t["contrast"].reshape(-1, 1, 1, 1),
                                                  dtype=torch.float32)})
    want = k.RandomSaturation((0.2, 0.8)).transform_images(
        want, _keras_transformation(keras, t["saturation"]))
    want = k.RandomHue(0.4).transform_images(want, _keras_transformation(keras, t["hue"]))
    np.testing.assert_allclose(got, keras.ops.convert_to_numpy(want), rtol=2e-6, atol=5e-4)
    np.testing.assert_array_equal(ours(x), x)


# -- pynn's own draws ---------------------------------------------------------------------

RANDOM = [
    lambda: layers.Solarization(0.3, (0.2, 0.6), seed=4),
    lambda: layers.RandomInvert(0.8, seed=4),
    lambda: layers.RandomPosterization((2, 6), seed=4),
    lambda: layers.RandomGrayscale(0.4, seed=4),
    lambda: layers.RandomHue((0.2, 0.6), seed=4),
    lambda: layers.RandomSaturation((-0.4, 0.7), seed=4),
    lambda: layers.RandomColorDegeneration(0.5, seed=4),
    lambda: layers.RandomSharpness((0.1, 0.9), seed=4),
    lambda: layers.RandomColorJitter(brightness_factor=0.2, contrast_factor=0.3,
                                     saturation_factor=0.4, hue_factor=0.4, seed=4),
]


def _draws(t):
    """One column per image of every array in a transformation (nested for the jitter)."""
    if isinstance(t, dict):
        return np.concatenate([_draws(v) for v in t.values()], axis=0)
    return np.asarray(t, np.float64).reshape(1, -1)


@pytest.mark.parametrize("make", RANDOM, ids=[str(i) for i in range(len(RANDOM))])
def test_draws_are_seeded_per_call_and_per_image(make):
    x = np.zeros((4000, 1, 1, 3), np.float32)
    a, b = make(), make()
    first, again = a.get_random_transformation(x), b.get_random_transformation(x)
    np.testing.assert_array_equal(_draws(first), _draws(again))
    second = _draws(a.get_random_transformation(x))
    first = _draws(first)
    assert not np.array_equal(first, second), "two calls drew the same transformation"
    b.set_runtime_state({"calls": 1})
    np.testing.assert_array_equal(_draws(b.get_random_transformation(x)), second)
    for row in first:
        if np.ptp(row) == 0:
            continue
        # Neighbouring images independent: no correlation between image i and i + 1.
        assert abs(np.corrcoef(row[:-1], row[1:])[0, 1]) < 0.06


def test_draws_follow_keras_distributions():
    n = 20000
    x = np.zeros((n, 1, 1, 3), np.float32)
    t = layers.Solarization((0.1, 0.3), (0.2, 0.6), seed=1).get_random_transformation(x)
    # Keras scales the upper bounds alone by 255.
    assert 0.1 <= t["additions"].min() and t["additions"].max() <= 0.3 * 255
    assert 0.2 <= t["thresholds"].min() and t["thresholds"].max() <= 0.6 * 255
    t = layers.RandomInvert((0.2, 0.6), seed=1).get_random_transformation(x)
    assert abs(t["apply_inversion"].mean() - 0.4) < 0.02
    t = layers.RandomPosterization(4, seed=1).get_random_transformation(x)
    assert set(np.unique(t["shift_factor"])) == {5, 6, 7}   # randint(1, 4): 1 to 3 bits
    t = layers.RandomPosterization((5, 5), seed=1).get_random_transformation(x)
    assert set(np.unique(t["shift_factor"])) == {3}
    t = layers.RandomGrayscale(0.3, seed=1).get_random_transformation(x)
    assert t.shape == (n, 1, 1, 1) and abs(t.mean() - 0.3) < 0.02
    t = layers.RandomHue((0.2, 0.6), seed=1).get_random_transformation(x)["factor"]
    assert np.all((np.abs(t) >= 0.1) & (np.abs(t) <= 0.3)) and abs((t > 0).mean() - 0.5) < 0.02
    t = layers.RandomSaturation(0.5, seed=1).get_random_transformation(x)["factor"]
    f = np.linspace(-0.5, 0.5, 3)
    assert t.min() >= (f / (1 - f + 1e-7))[0] and t.max() <= (f / (1 - f + 1e-7))[-1]
    t = layers.RandomColorDegeneration(0.5, seed=1).get_random_transformation(x)["factor"]
    assert t.shape == (n, 1, 1, 1) and t.min() < -0.45 and t.max() > 0.45
    t = layers.RandomSharpness(0.4, seed=1).get_random_transformation(x)["factor"]
    assert t.min() >= 0 and t.max() <= 0.4 and abs(t.mean() - 0.2) < 0.01


@pytest.mark.parametrize("make", RANDOM + [lambda: layers.Equalization(),
                                           lambda: layers.AutoContrast()],
                         ids=[str(i) for i in range(len(RANDOM) + 2)])
def test_layers_act_in_training_only_except_auto_contrast(backend, rng, make):
    x = _images(rng, (8, 6, 5, 3), (0, 255)).astype(np.float32)
    previous = pynn.backend.device()
    try:
        pynn.set_device(backend.name)
        layer = make()
        trained = backend.down(layer(backend.up(x), training=True))
        inference = backend.down(layer(backend.up(x)))
    finally:
        pynn.set_device(previous)
    assert not np.allclose(trained, x)
    if isinstance(layer, layers.AutoContrast):
        np.testing.assert_allclose(inference, trained, rtol=1e-6)
    else:
        np.testing.assert_array_equal(inference, x)


@pytest.mark.opencl
def test_layers_on_opencl_match_the_cpu(backend_opencl, rng):
    x = _images(rng, (3, 9, 8, 3), (0, 255)).astype(np.float32)
    previous = pynn.backend.device()
    makers = RANDOM + [lambda: layers.Equalization(bins=64), lambda: layers.AutoContrast()]
    try:
        for make in makers:
            outs = []
            for device in ("cpu", "opencl"):
                pynn.set_device(device)
                outs.append(backend_opencl.down(make()(backend_opencl.up(x), training=True))
                            if device == "opencl" else make()(x, training=True))
            np.testing.assert_allclose(outs[1], outs[0], rtol=2e-6, atol=2e-4)
    finally:
        pynn.set_device(previous)


def test_training_through_a_color_layer_is_refused(rng):
    model = pynn.Sequential([layers.Input((6, 5, 3)), layers.Conv2D(3, 1),
                             layers.RandomHue(0.3, seed=1), layers.Flatten(), layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(NotImplementedError, match=r"RandomHue '.*': no input gradient"):
        model.fit(rng.uniform(0, 255, (4, 6, 5, 3)), np.zeros((4, 1)), verbose=0)


def test_a_color_layer_at_the_input_trains_saves_and_loads(rng, tmp_path):
    """Augmentation at the input trains; pynn's format keeps the layers and their draw
    streams, so the loaded model's next training-mode call draws what the original's does."""
    model = pynn.Sequential([layers.Input((6, 5, 3)), layers.RandomSharpness(0.5, seed=1),
                             layers.RandomInvert(seed=2), layers.AutoContrast(),
                             layers.Conv2D(2, 3), layers.Flatten(), layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = _images(rng, (8, 6, 5, 3), (0, 255)).astype(np.float32) / 255.0
    history = model.fit(x, np.ones((8, 1)), epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    model.save(tmp_path / "color.pynn")
    loaded = pynn.load_model(tmp_path / "color.pynn")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    for ours, theirs in zip(model.layers[:2], loaded.layers[:2]):
        np.testing.assert_array_equal(theirs(x, training=True), ours(x, training=True))


# -- configs and bad inputs -----------------------------------------------------------------

CONFIG_CASES = [
    lambda: layers.AutoContrast(value_range=(0, 1)),
    lambda: layers.Equalization(value_range=(0, 1), bins=64),
    lambda: layers.Solarization(0.1, (0.2, 0.5), value_range=(0, 1), seed=5),
    lambda: layers.RandomInvert((0.2, 0.8), seed=5),
    lambda: layers.RandomPosterization((2, 5), seed=5),
    lambda: layers.RandomGrayscale(0.7, seed=5),
    lambda: layers.RandomHue(0.3, seed=5),
    lambda: layers.RandomSaturation((0.2, 0.6), seed=5),
    lambda: layers.RandomColorDegeneration(0.4, value_range=(0, 1), seed=5),
    lambda: layers.RandomSharpness(0.3, seed=5),
    lambda: layers.RandomColorJitter((0, 1), 0.1, 0.2, 0.3, 0.4, seed=5),
]


@pytest.mark.parametrize("make", CONFIG_CASES, ids=[str(i) for i in range(len(CONFIG_CASES))])
def test_config_round_trip(make):
    layer = make()
    config = json.loads(json.dumps(layer.get_config()))
    clone = layers.LAYERS[type(layer).__name__].from_config(config)
    assert type(clone) is type(layer) and clone.get_config() == layer.get_config()
    x = _images(np.random.default_rng(0), (2, 5, 6, 3), layer.value_range).astype(np.float32)
    np.testing.assert_array_equal(clone(x, training=True), layer(x, training=True))


@pytest.mark.parametrize("make, match", [
    (lambda: layers.RandomHue(1.5), r"RandomHue '.*': factor must lie in \[0.0, 1.0\]"),
    (lambda: layers.RandomSharpness("big"), r"RandomSharpness '.*': factor must be a number"),
    (lambda: layers.RandomPosterization(9), r"RandomPosterization '.*': factor must lie in "
                                            r"\[1.0, 8.0\], got 9"),
    (lambda: layers.RandomPosterization(0.5), r"factor must lie in \[1.0, 8.0\]"),
    (lambda: layers.RandomPosterization((2, 4.5)), r"factor must be whole numbers of bits"),
    (lambda: layers.RandomHue(-0.2), r"RandomHue '.*': factor must lie in \[0.0, 1.0\], got "
                                     r"-0.2"),
    (lambda: layers.Solarization(addition_factor=-0.1), r"Solarization '.*': addition_factor"),
    (lambda: layers.RandomGrayscale(1.2), r"RandomGrayscale '.*': factor must be a number in "
                                          r"\[0, 1\], got 1.2"),
    (lambda: layers.Equalization(bins=0), r"Equalization '.*': bins must be a positive int"),
    (lambda: layers.AutoContrast(value_range=5), r"AutoContrast '.*': value_range must be "
                                                 r"\(low, high\)"),
    (lambda: layers.RandomInvert(data_format="channels_first"),
     r"RandomInvert '.*': only data_format='channels_last'"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"RandomHue '.*': expected images with 3 \(RGB\) "
                                         r"channels, got input shape \(None, 4, 4, 4\)"):
        layers.RandomHue(0.2)(np.ones((2, 4, 4, 4), np.float32), training=True)
    with pytest.raises(ValueError, match=r"RandomGrayscale '.*': expected images with 3 "
                                         r"\(RGB\) or 1 channels, got input shape "
                                         r"\(None, 5, 5, 2\)"):
        pynn.Sequential([layers.Input((5, 5, 2)), layers.RandomGrayscale()])
    with pytest.raises(TypeError, match=r"\(AutoContrast\): input must be real"):
        layers.AutoContrast()(np.ones((1, 2, 2, 3), np.complex64))
    with pytest.raises(ValueError, match=r"RandomGrayscale '.*': expected images of shape "
                                         r"\(None, height, width, channels\)"):
        layers.RandomGrayscale()(np.ones((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"AutoContrast '.*': color_transform_forward: "
                                         r"'value_range' must have low < high, got \(1.0, 1.0\)"):
        layers.AutoContrast(value_range=(1, 1))(np.ones((1, 2, 2, 3), np.float32))
    x = np.ones((2, 3, 4, 3), np.float32)
    with pytest.raises(ValueError, match=r"transform must be one of .*got 'sepia'"):
        cpu.color_transform_forward(x, "sepia", np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match=r"'params' must have the shape \(2, 2\) \(one row per "
                                         r"image\), got \(3, 2\)"):
        cpu.color_transform_forward(x, "invert", np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match=r"solarize needs params"):
        cpu.color_transform_forward(x, "solarize")
    with pytest.raises(ValueError, match=r"equalize takes no params"):
        cpu.color_transform_forward(x, "equalize", np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match=r"'bins' must be in \[1, 1048576\], got 0"):
        cpu.color_transform_forward(x, "equalize", None, (0, 255), 0)
    with pytest.raises(ValueError, match=r"'x' must have 4 dimensions, got shape \(3, 4\)"):
        cpu.color_transform_forward(np.ones((3, 4)), "equalize")
    with pytest.raises(TypeError, match=r"'x' must be real"):
        cpu.color_transform_forward(x.astype(np.complex64), "equalize")


@pytest.mark.parametrize("transform", ["equalize", "posterize", "auto_contrast"])
def test_non_finite_pixels_and_params_stay_in_bounds(target, transform):
    """NaN and infinite pixels (and a shift past 8 bits) index no table out of bounds: the
    ops answer, finite pixels stay finite where Keras's would."""
    x = np.tile(np.linspace(0, 255, 12).reshape(1, 3, 4, 1), (2, 1, 1, 3))
    x[0, 0, 0, :] = [np.nan, np.inf, -np.inf]
    params = None if transform in STATISTICS else np.array([[np.nan, 0], [12.0, 0]])
    y = target.down(target.op("color_transform_forward")(
        target.up(x.astype(target.dtype)), transform,
        None if params is None else target.up(params.astype(target.dtype)), (0, 255)))
    assert y.shape == x.shape
    if transform == "posterize":
        np.testing.assert_array_equal(y[1], 0.0)     # 12 bits dropped of 8: nothing left
        assert np.isfinite(y[0]).all()
