"""Keras 3's MaxNumBoundingBoxes (pynn/layers/bounding_boxes.py) against Keras on torch: the
boxes and box labels of dict inputs padded or truncated per image, everything else passed
through; the identity on images in a model (its Keras files and ONNX: test_keras_files.py,
test_onnx_export.py); config and bad inputs."""

import json

import numpy as np
import pytest

import pynn
from pynn import layers
from tests.backend_util import keras_on_torch


def _data(rng, batched=True, boxes=5):
    lead = (2,) if batched else ()
    return {"images": rng.uniform(0, 1, lead + (6, 5, 3)).astype(np.float32),
            "bounding_boxes": {"boxes": rng.uniform(0, 5, lead + (boxes, 4)).astype(np.float32),
                               "labels": rng.integers(0, 4, lead + (boxes,))},
            "labels": np.arange(2) if batched else np.int64(1)}


@pytest.mark.parametrize("max_number", [0, 1, 3, 5, 8])
@pytest.mark.parametrize("batched", [True, False])
def test_matches_keras(max_number, batched):
    keras = keras_on_torch()
    rng = np.random.default_rng(max_number)
    data = _data(rng, batched)
    kwargs = {"max_number": max_number, "fill_value": -3, "bounding_box_format": "xyxy"}
    want = keras.layers.MaxNumBoundingBoxes(**kwargs)(
        {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()})
    got = layers.MaxNumBoundingBoxes(**kwargs)(data)
    for key in ("boxes", "labels"):
        theirs = keras.ops.convert_to_numpy(want["bounding_boxes"][key])
        np.testing.assert_array_equal(got["bounding_boxes"][key], theirs, err_msg=key)
        assert got["bounding_boxes"][key].dtype == theirs.dtype, key
    np.testing.assert_array_equal(got["images"], data["images"])
    np.testing.assert_array_equal(got["labels"], data["labels"])
    # the input dict is left as it was
    assert data["bounding_boxes"]["boxes"].shape[-2] == 5


def test_pads_with_fill_value_and_keeps_the_first_boxes():
    rng = np.random.default_rng(1)
    data = _data(rng, boxes=2)
    out = layers.MaxNumBoundingBoxes(4, fill_value=7, bounding_box_format="yxyx")(data)
    boxes, labels = out["bounding_boxes"]["boxes"], out["bounding_boxes"]["labels"]
    np.testing.assert_array_equal(boxes[:, :2], data["bounding_boxes"]["boxes"])
    assert (boxes[:, 2:] == 7).all() and (labels[:, 2:] == 7).all()
    assert layers.MaxNumBoundingBoxes(1, bounding_box_format="xyxy")(data)[
        "bounding_boxes"]["labels"].tolist() == data["bounding_boxes"]["labels"][:, :1].tolist()


def test_images_alone_pass_through_in_a_model_that_trains(rng=np.random.default_rng(2)):
    model = pynn.Sequential([layers.Input((6, 5, 3)), layers.Conv2D(2, 3),
                             layers.MaxNumBoundingBoxes(3), layers.Flatten(), layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = rng.uniform(0, 1, (4, 6, 5, 3)).astype(np.float32)
    history = model.fit(x, np.ones((4, 1)), epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    layer = layers.MaxNumBoundingBoxes(3)
    np.testing.assert_array_equal(layer(x), x)


def test_config_matches_kerass():
    keras = keras_on_torch()
    kwargs = {"max_number": 6, "fill_value": 9, "bounding_box_format": "xywh", "name": "m"}
    theirs = json.loads(json.dumps(keras.layers.MaxNumBoundingBoxes(**kwargs).get_config()))
    ours = json.loads(json.dumps(layers.MaxNumBoundingBoxes(**kwargs).get_config()))
    assert set(ours) == set(theirs) and "fill_value" not in ours   # Keras drops fill_value
    for key in ("max_number", "bounding_box_format", "data_format", "name"):
        assert ours[key] == theirs[key], key
    again = layers.MaxNumBoundingBoxes.from_config(ours)
    assert again.max_number == 6 and again.fill_value == -1
    assert "bounding_box_format" not in layers.MaxNumBoundingBoxes(2).get_config()


@pytest.mark.parametrize("kwargs, message", [
    ({"max_number": -1}, "max_number"), ({"max_number": 2.5}, "max_number"),
    ({"max_number": "3"}, "max_number"), ({"max_number": 3, "fill_value": "x"}, "fill_value"),
    ({"max_number": 3, "data_format": "channels_first"}, "data_format"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        layers.MaxNumBoundingBoxes(**kwargs)


def test_bad_inputs_name_the_layer():
    rng = np.random.default_rng(3)
    data = _data(rng)
    layer = layers.MaxNumBoundingBoxes(3, name="mnb")
    with pytest.raises(ValueError, match="'mnb'.*bounding box format"):
        layer(data)
    layer = layers.MaxNumBoundingBoxes(3, bounding_box_format="xyxy", name="mnb")
    with pytest.raises(ValueError, match="'mnb'.*'images'"):
        layer({"bounding_boxes": data["bounding_boxes"]})
    with pytest.raises(ValueError, match="'mnb'.*'boxes' and 'labels' only"):
        layer({**data, "bounding_boxes": {"boxes": data["bounding_boxes"]["boxes"]}})
    with pytest.raises(ValueError, match=r"'mnb'.*\(batch, boxes, 4\)"):
        layer({**data, "bounding_boxes": {"boxes": np.zeros((2, 5, 3)),
                                          "labels": np.zeros((2, 5))}})
    with pytest.raises(ValueError, match="'mnb'.*labels"):
        layer({**data, "bounding_boxes": {"boxes": np.zeros((2, 5, 4)),
                                          "labels": np.zeros((2, 4))}})
    with pytest.raises(ValueError, match="'mnb'.*dense"):
        layer({**data, "bounding_boxes": {"boxes": [[[0, 0, 1, 1]], [[0, 0, 1, 1], [1, 1, 2, 2]]],
                                          "labels": [[1], [2, 3]]}})


def test_the_gradient_through_images_is_the_identity():
    from tests.reference.gradcheck import check_layer

    rng = np.random.default_rng(4)
    check_layer(layers.MaxNumBoundingBoxes(2), rng.standard_normal((2, 4, 3, 2)), rng)
