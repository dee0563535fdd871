"""clahe_forward (native/color.pyx, opencl/color.cl) against the float64 oracle of
tests/reference/color_ref.py over both backends, and Keras 3's
ContrastLimitedAdaptiveHistogramEqualization against Keras on torch: outputs, config, Keras
files both ways, the ONNX refusal, gradient refusal and bad inputs."""

import json

import numpy as np
import pytest

import pynn
from pynn import layers
from pynn.backend import cpu
from tests.backend_util import check_op, keras_on_torch
from tests.reference.color_ref import clahe_forward_ref

CLAHE = layers.ContrastLimitedAdaptiveHistogramEqualization


@pytest.fixture
def rng():
    return np.random.default_rng(77)


def _images(rng, shape, value_range=(0, 255)):
    """Levels k + 0.4 on the 0..255 scale (skewed, so the histograms are uneven), mapped to
    value_range: away from every integer step of Keras's int32 cast, so float32 rounding
    cannot move a value to another level."""
    v = np.floor(rng.beta(2, 5, shape) * 255) + 0.4
    lo, hi = value_range
    return v / 255.0 * (hi - lo) + lo


# (shape, tile_grid_size, clip_limit): padded and unpadded tiles, a grid finer than the
# image, clipping off, a limit that truncates to 0, and one that clips hard.
CASES = [((1, 1, 1, 1), (1, 1), 4.0), ((2, 7, 5, 3), (3, 2), 4.0),
         ((1, 16, 16, 1), (8, 8), 4.0), ((2, 9, 13, 3), (2, 3), 0.0),
         ((1, 5, 4, 2), (7, 6), 2.0), ((3, 33, 31, 3), (4, 4), 40.0),
         ((2, 31, 65, 1), (3, 5), 1.5)]


@pytest.mark.parametrize("value_range", [(0, 255), (-1.0, 2.0)])
@pytest.mark.parametrize("shape, grid, clip_limit", CASES,
                         ids=[f"{s}-{g}-{c}" for s, g, c in CASES])
def test_clahe_forward(target, rng, shape, grid, clip_limit, value_range):
    x = _images(rng, shape, value_range).astype(target.dtype)
    scale = value_range[1] - value_range[0]
    tol = ({"rtol": 1e-12, "atol": 1e-12 * scale} if target.dtype == np.float64
           else {"rtol": 4e-6, "atol": 4e-6 * scale})
    _, y = check_op(target, "clahe_forward", x, value_range, clip_limit, grid,
                    ref=clahe_forward_ref, rtol=tol)
    assert y.shape == x.shape
    if shape[1] * shape[2] > 1:
        assert not np.allclose(y, x), "CLAHE left the images as they were"


def test_clahe_is_the_same_at_any_thread_count(num_threads, rng):
    x = _images(rng, (6, 40, 50, 3)).astype(np.float32)
    runs = []
    for threads in (1, 2, 3):
        num_threads(threads)
        runs.append(cpu.clahe_forward(x, (0, 255), 3.0, (5, 4)))
    for other in runs[1:]:
        np.testing.assert_array_equal(other, runs[0])


def test_clip_limit_redistributes_and_a_limit_below_one_count_flattens(rng):
    x = _images(rng, (1, 8, 8, 1))
    unclipped = cpu.clahe_forward(x, (0, 255), 0.0, (1, 1))
    clipped = cpu.clahe_forward(x, (0, 255), 8.0, (1, 1))
    assert not np.allclose(clipped, unclipped)
    # 64 pixels: 2.0 * 64 / 256 = 0.5 truncates to 0 (Keras on torch counts in int64), so
    # every count becomes the spread excess and the table is the identity on the levels.
    np.testing.assert_allclose(cpu.clahe_forward(x, (0, 255), 2.0, (1, 1)), np.floor(x),
                               rtol=1e-12)


# -- the layer ---------------------------------------------------------------------------------
LAYER_CASES = [{}, {"tile_grid_size": (3, 2)}, {"clip_limit": 0.0, "tile_grid_size": (2, 3)},
               {"value_range": (0, 1), "clip_limit": 40.0, "tile_grid_size": (4, 4)}]


@pytest.mark.parametrize("kwargs", LAYER_CASES)
def test_layer_matches_keras(rng, kwargs):
    keras = keras_on_torch()
    vr = kwargs.get("value_range", (0, 255))
    x = _images(rng, (3, 19, 23, 3), vr).astype(np.float32)
    want = keras.ops.convert_to_numpy(
        keras.layers.ContrastLimitedAdaptiveHistogramEqualization(**kwargs)(x))
    ours = CLAHE(**kwargs)
    scale = vr[1] - vr[0]
    for training in (False, True):   # active in both, as Keras's
        np.testing.assert_allclose(ours(x, training=training), want, rtol=2e-6,
                                   atol=2e-6 * scale)


def test_config_matches_kerass():
    keras = keras_on_torch()
    kwargs = {"value_range": (0, 1), "clip_limit": 2.5, "tile_grid_size": (3, 5), "name": "c"}
    theirs = json.loads(json.dumps(
        keras.layers.ContrastLimitedAdaptiveHistogramEqualization(**kwargs).get_config()))
    ours = json.loads(json.dumps(CLAHE(**kwargs).get_config()))
    assert set(ours) == set(theirs)
    for key in ("value_range", "clip_limit", "tile_grid_size", "data_format", "name"):
        assert ours[key] == theirs[key], key
    again = CLAHE.from_config(ours)
    x = _images(np.random.default_rng(1), (1, 6, 10, 3), (0, 1)).astype(np.float32)
    np.testing.assert_array_equal(again(x), CLAHE(**kwargs)(x))


def test_keras_files_both_ways(rng, tmp_path):
    keras = keras_on_torch()
    x = _images(rng, (2, 12, 10, 3)).astype(np.float32)
    theirs = keras.Sequential([keras.Input((12, 10, 3)),
                               keras.layers.ContrastLimitedAdaptiveHistogramEqualization(
                                   clip_limit=3.0, tile_grid_size=(3, 2)),
                               keras.layers.Flatten(), keras.layers.Dense(2)])
    theirs.save(tmp_path / "k.keras")
    ours = pynn.load_model(tmp_path / "k.keras")
    want = keras.ops.convert_to_numpy(theirs(x))
    np.testing.assert_allclose(ours.predict(x, verbose=0), want, rtol=1e-5, atol=1e-4)
    ours.save(tmp_path / "p.keras")
    back = keras.saving.load_model(tmp_path / "p.keras")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(back(x)), want, rtol=1e-5,
                               atol=1e-4)


def test_onnx_export_is_refused_by_name():
    model = pynn.Sequential([layers.Input((8, 8, 3)), CLAHE(name="clahe"), layers.Flatten(),
                             layers.Dense(1)])
    with pytest.raises(ValueError, match="'clahe'.*cannot be exported: ONNX has no histogram"):
        pynn.onnx.export(model)


def test_training_through_clahe_is_refused(rng):
    model = pynn.Sequential([layers.Input((6, 5, 3)), layers.Conv2D(3, 1), CLAHE(name="eq"),
                             layers.Flatten(), layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(NotImplementedError, match="'eq': no input gradient"):
        model.fit(rng.uniform(0, 255, (4, 6, 5, 3)), np.zeros((4, 1)), verbose=0)


# -- bad arguments and inputs -------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"tile_grid_size": (0, 2)}, "tile_grid_size"), ({"tile_grid_size": 8}, "tile_grid_size"),
    ({"tile_grid_size": (2, 2.5)}, "tile_grid_size"), ({"clip_limit": float("nan")}, "clip"),
    ({"clip_limit": "4"}, "clip_limit"), ({"value_range": (1, 1)}, "value_range"),
    ({"value_range": (0,)}, "value_range"), ({"data_format": "channels_first"}, "data_format"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CLAHE(**kwargs)


def test_bad_operands_name_the_op_and_the_layer(backend):
    x = backend.up(np.ones((1, 4, 4, 1), np.float32))
    op = backend.op("clahe_forward")
    with pytest.raises(ValueError, match="clahe_forward: 'tile_grid_size'"):
        op(x, (0, 255), 4.0, (0, 1))
    with pytest.raises(ValueError, match="clahe_forward: 'value_range'"):
        op(x, (2, 1), 4.0, (1, 1))
    with pytest.raises(ValueError, match="clahe_forward: 'clip_limit' must be finite"):
        op(x, (0, 255), float("inf"), (1, 1))
    with pytest.raises(ValueError, match="clahe_forward"):
        op(backend.up(np.ones((4, 4, 1), np.float32)), (0, 255), 4.0, (1, 1))
    with pytest.raises(ValueError, match="ContrastLimitedAdaptiveHistogramEqualization 'c'"):
        CLAHE(name="c")(np.ones((2, 3, 4), np.float32))
