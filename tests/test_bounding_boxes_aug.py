"""Bounding boxes through Keras 3's image layers (pynn/bounding_boxes.py as
pynn.utils.bounding_boxes, the dict call and transform_bounding_boxes of
pynn/layers/preprocessing.py and augment_geo.py).

The utilities against the float64 references (tests/reference/bounding_boxes_ref.py) and
keras.utils.bounding_boxes on random boxes in every format; each layer's
transform_bounding_boxes against Keras's given pynn's drawn transformation (boxes leaving
the image, and Keras's -1 padding rows); the dict call against its pieces; colour layers
keeping boxes; layers pynn does not transform boxes through refusing them by name; bad
inputs."""

import numpy as np
import pytest

import pynn
from pynn import layers
from tests.backend_util import keras_on_torch
from tests.reference import bounding_boxes_ref as ref

box_utils = pynn.utils.bounding_boxes
FORMATS = box_utils.SUPPORTED_FORMATS
H, W = 13, 17


@pytest.fixture
def rng():
    return np.random.default_rng(2044)


def _xyxy(rng, shape, h=H, w=W, spill=4.0):
    """xyxy boxes, some leaving the image on every side, one empty."""
    x0 = rng.uniform(-spill, w, shape)
    y0 = rng.uniform(-spill, h, shape)
    b = np.stack([x0, y0, x0 + rng.uniform(0.5, w / 2 + spill, shape),
                  y0 + rng.uniform(0.5, h / 2 + spill, shape)], -1)
    b.reshape(-1, 4)[0, 2] = b.reshape(-1, 4)[0, 0]
    return b


def _in(fmt, xyxy, h=H, w=W):
    return ref.convert_format(xyxy, "xyxy", fmt, h, w)


def _np(keras, value):
    return keras.ops.convert_to_numpy(value)


# -- the utilities against the float64 references ----------------------------------------

@pytest.mark.parametrize("source", FORMATS)
def test_convert_format_matches_the_reference(rng, source):
    boxes = _in(source, _xyxy(rng, (3, 5)))
    for target in FORMATS:
        got = box_utils.convert_format(boxes, source, target, H, W, dtype="float64")
        np.testing.assert_allclose(got, ref.convert_format(boxes, source, target, H, W),
                                   rtol=1e-12, atol=1e-12, err_msg=f"{source}->{target}")
        assert got.dtype == np.float64
    assert box_utils.convert_format(boxes, source.upper(), "xyxy", H, W).dtype == np.float32


def test_clip_to_image_size_matches_the_reference(rng):
    boxes = _xyxy(rng, (2, 7), spill=9.0)
    boxes[1, 3] = (-3.0, 2.0, -1.0, 5.0)  # wholly left of the image: empty after the clip
    labels = rng.integers(0, 5, (2, 7))
    got = box_utils.clip_to_image_size({"boxes": boxes, "labels": labels}, H, W)
    want_boxes, want_labels = ref.clip_to_image_size(boxes, labels, H, W)
    np.testing.assert_allclose(got["boxes"], want_boxes, rtol=0, atol=0)
    np.testing.assert_array_equal(got["labels"], want_labels)
    assert got["labels"][1, 3] == -1 and got["labels"][0, 0] == -1
    rel = box_utils.clip_to_image_size({"boxes": boxes / [W, H, W, H], "labels": labels},
                                       bounding_box_format="rel_xyxy")
    np.testing.assert_allclose(rel["boxes"], want_boxes / [W, H, W, H], rtol=1e-12)
    np.testing.assert_array_equal(rel["labels"], want_labels)


@pytest.mark.parametrize("fmt", ["xyxy", "yxyx", "center_xywh", "rel_xywh"])
@pytest.mark.parametrize("batched", [False, True])
def test_compute_iou_matches_the_reference(rng, fmt, batched):
    shape1, shape2 = ((2, 5), (2, 3)) if batched else ((5,), (3,))
    b1, b2 = _xyxy(rng, shape1), _xyxy(rng, shape2)
    b2.reshape(-1, 4)[-1] = -1.0  # Keras's padding box
    b1.reshape(-1, 4)[1] = b2.reshape(-1, 4)[1]  # one pair overlapping exactly
    a, b = _in(fmt, b1), _in(fmt, b2)
    image_shape = (H, W, 3) if fmt.startswith("rel") else None
    for masking in (False, True):
        got = box_utils.compute_iou(a, b, fmt, use_masking=masking, mask_val=-2,
                                    image_shape=image_shape)
        want = ref.compute_iou(a, b, fmt, H, W, use_masking=masking, mask_val=-2)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert (got == -2).any() and np.isclose(got, 1.0, atol=1e-5).any()


def test_compute_ciou_matches_the_reference(rng):
    b1, b2 = _xyxy(rng, (2, 6)), _xyxy(rng, (2, 6))
    b2[0, 1] = b1[0, 1]
    got = box_utils.compute_ciou(_in("center_xywh", b1), _in("center_xywh", b2),
                                 "center_xywh")
    want = np.array([[ref.ciou(p, q) for p, q in zip(r1, r2)] for r1, r2 in zip(b1, b2)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert got.shape == (2, 6)


def test_affine_transform_matches_the_reference(rng):
    boxes = _xyxy(rng, (3, 4))
    angle = rng.uniform(-180, 180, 3)
    tx, ty, scale = rng.uniform(-0.3, 0.3, 3), rng.uniform(-0.3, 0.3, 3), \
        rng.uniform(0.5, 1.5, 3)
    got = box_utils.affine_transform(boxes, angle, tx, ty, scale, np.zeros(3), np.zeros(3),
                                     H, W)
    np.testing.assert_allclose(got, ref.affine_no_shear(boxes, angle, tx, ty, scale, H, W),
                               rtol=1e-10, atol=1e-10)


def test_crop_pad_and_deltas_match_the_reference(rng):
    boxes = _xyxy(rng, (2, 5))
    got = box_utils.crop(boxes, 2, 3, 7, 9)
    want = np.clip(boxes - [3, 2, 3, 2], 0, [9, 7, 9, 7])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(box_utils.pad(boxes, 2, 3), boxes + [3, 2, 3, 2])
    anchors = _xyxy(rng, (5,), spill=0.0)
    anchors[0, 2] += 1.0  # no empty anchor: decoding needs its width
    boxes[0, 0, 2] += 0.5  # no empty box: the reference's log needs a width
    deltas = box_utils.encode_box_to_deltas(anchors, boxes, "xyxy", "xyxy")
    np.testing.assert_allclose(deltas, ref.encode(anchors, boxes, "xyxy"), rtol=2e-5,
                               atol=2e-5)
    back = box_utils.decode_deltas_to_boxes(anchors, deltas, "xyxy", "xyxy")
    np.testing.assert_allclose(back, boxes, rtol=1e-5, atol=2e-4)
    levels = box_utils.decode_deltas_to_boxes({3: anchors}, {3: deltas}, "xyxy", "xyxy")
    np.testing.assert_array_equal(levels[3], back)


# -- the utilities against Keras ---------------------------------------------------------

def test_utilities_match_keras(rng):
    keras = keras_on_torch()
    kb = keras.utils.bounding_boxes
    boxes = _xyxy(rng, (3, 5)).astype(np.float32)
    for source in FORMATS:
        given = _in(source, boxes).astype(np.float32)
        for target in FORMATS:
            np.testing.assert_allclose(
                box_utils.convert_format(given, source, target, H, W),
                _np(keras, kb.convert_format(given, source, target, H, W)), rtol=1e-6,
                atol=1e-6, err_msg=f"{source}->{target}")
    labels = rng.integers(0, 4, (3, 5))
    for fmt, scale in (("xyxy", 1.0), ("rel_xyxy", np.array([W, H, W, H], np.float32))):
        got = box_utils.clip_to_image_size({"boxes": boxes / scale, "labels": labels}, H, W,
                                           fmt)
        want = kb.clip_to_image_size({"boxes": boxes / scale, "labels": labels}, H, W, fmt)
        np.testing.assert_allclose(got["boxes"], _np(keras, want["boxes"]), rtol=1e-6)
        np.testing.assert_array_equal(got["labels"], _np(keras, want["labels"]))
    padded = boxes.copy()
    padded[:, -1] = -1
    for fmt in ("xyxy", "center_yxhw", "rel_yxyx"):
        given = _in(fmt, padded).astype(np.float32)
        np.testing.assert_allclose(
            box_utils.compute_iou(given, given[:, :3], fmt, True, image_shape=(H, W, 3)),
            _np(keras, kb.compute_iou(given, given[:, :3], fmt, True, image_shape=(H, W, 3))),
            rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(box_utils.compute_ciou(boxes, boxes[::-1], "xyxy"),
                               _np(keras, kb.compute_ciou(boxes, boxes[::-1], "xyxy")),
                               rtol=1e-5, atol=1e-5)
    angle, zero = rng.uniform(-90, 90, 3).astype(np.float32), np.zeros(3, np.float32)
    args = (angle, zero + 0.1, zero - 0.2, zero + 1.2, zero + 7.0, zero - 4.0, H, W)
    np.testing.assert_allclose(box_utils.affine_transform(boxes, *args),
                               _np(keras, kb.affine_transform(boxes, *args)), rtol=1e-5,
                               atol=1e-4)
    np.testing.assert_allclose(box_utils.crop(boxes, 2, 3, 7, 9),
                               _np(keras, kb.crop(boxes, 2, 3, 7, 9)))
    np.testing.assert_allclose(box_utils.pad(boxes, 2, 3), _np(keras, kb.pad(boxes, 2, 3)))
    anchors = np.abs(boxes[0]) + [0, 0, 1, 1]
    variance = [0.1, 0.1, 0.2, 0.2]
    for encoding in ("center_yxhw", "center_xywh"):
        deltas = box_utils.encode_box_to_deltas(anchors, boxes, "xyxy", "xywh", encoding,
                                                variance)
        np.testing.assert_allclose(deltas, _np(keras, kb.encode_box_to_deltas(
            anchors, boxes, "xyxy", "xywh", encoding, variance)), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            box_utils.decode_deltas_to_boxes(anchors, deltas, "xyxy", "rel_xyxy", encoding,
                                             variance, (H, W, 3)),
            _np(keras, kb.decode_deltas_to_boxes(
                anchors, keras.ops.convert_to_tensor(deltas), "xyxy", "rel_xyxy", encoding,
                variance, (H, W, 3))), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("call, match", [
    (lambda b: box_utils.convert_format(b, "xyxy", "xyxz"), "Supported formats"),
    (lambda b: box_utils.convert_format(b[..., :3], "xyxy", "yxyx"), "last dimension of 4"),
    (lambda b: box_utils.convert_format(b, "xyxy", "rel_xyxy"), "height and width"),
    (lambda b: box_utils.clip_to_image_size({"boxes": b}), "`height` and `width`"),
    (lambda b: box_utils.compute_iou(b[0, 0], b, "xyxy"), "boxes1 to be batched"),
    (lambda b: box_utils.compute_iou(b, b, "rel_xyxy"), "image_shape"),
    (lambda b: box_utils.compute_ciou(b, b, "rel_xyxy"), "relative"),
    (lambda b: box_utils.encode_box_to_deltas(b[0], b, "xyxy", "xyxy", variance=[1, 2]),
     "length 4"),
    (lambda b: box_utils.decode_deltas_to_boxes(b[0], b, "xyxy", "xyxy", "xyxy"),
     "encoded_format"),
])
def test_utilities_refuse_bad_inputs(rng, call, match):
    with pytest.raises(ValueError, match=match):
        call(_xyxy(rng, (2, 3)))


def test_xyxy_only_utilities_refuse_other_formats(rng):
    b = _xyxy(rng, (2, 3))
    for call in (lambda: box_utils.crop(b, 1, 1, 5, 5, "yxyx"),
                 lambda: box_utils.pad(b, 1, 1, bounding_box_format="xywh"),
                 lambda: box_utils.clip_to_image_size({"boxes": b}, 5, 5, "yxyx")):
        with pytest.raises(NotImplementedError, match="xyxy"):
            call()


# -- each layer's transform_bounding_boxes against Keras's ----------------------------------

def _padded_boxes(rng, fmt, n=3, count=6, h=H, w=W):
    """Boxes in fmt with Keras's -1 padding rows (and an all-zero one) at the end."""
    xyxy = _xyxy(rng, (n, count), h, w)
    boxes = _in(fmt, xyxy, h, w)
    boxes[:, -1] = -1.0
    boxes[0, -2] = 0.0
    labels = rng.integers(0, 9, (n, count))
    labels[:, -1] = -1
    return {"boxes": boxes.astype(np.float32), "labels": labels}


def _keras_transformation(name, t, x):
    """pynn's transformation in the types Keras's transform_bounding_boxes reads."""
    if name == "RandomFlip":
        return {"flips": np.asarray(t["flips"]), "input_shape": x.shape}
    if name == "RandomCrop":
        return tuple(int(v) for v in t)
    if name == "RandomRotation":
        return {**t, "angle": np.asarray(t["angle"], np.float32)}
    if name == "RandomZoom":
        return {"height_zoom": t["height_zoom"].astype(np.float32),
                "width_zoom": t["width_zoom"].astype(np.float32), "input_shape": x.shape}
    if name == "RandomTranslation":
        return {"translations": t["translations"].astype(np.float32), "input_shape": x.shape}
    if name == "RandomShear":
        return {"shear_factor": t["shear_factor"].astype(np.float32), "input_shape": x.shape}
    if name == "RandomPerspective":
        return {"apply_perspective": t["apply_perspective"], "input_shape": x.shape,
                "start_points": t["start_points"].astype(np.float32),
                "end_points": t["end_points"].astype(np.float32)}
    return t


LAYERS = [
    ("RandomFlip", dict(mode="horizontal_and_vertical")),
    ("RandomFlip", dict(mode="horizontal")),
    ("RandomCrop", dict(height=9, width=11)),
    ("RandomTranslation", dict(height_factor=0.3, width_factor=(-0.2, 0.4))),
    ("RandomRotation", dict(factor=0.2)),
    ("RandomZoom", dict(height_factor=(-0.4, 0.3))),
    ("RandomZoom", dict(height_factor=0.3, width_factor=(-0.3, 0.1))),
    ("RandomShear", dict(x_factor=0.3, y_factor=(0.1, 0.4))),
    ("Resizing", dict(height=8, width=21)),
    ("Resizing", dict(height=8, width=21, crop_to_aspect_ratio=True)),
    ("Resizing", dict(height=21, width=8, pad_to_aspect_ratio=True)),
    ("CenterCrop", dict(height=9, width=11)),
    ("CenterCrop", dict(height=15, width=11)),
    ("RandomPerspective", dict(factor=(0.3, 0.9), scale=0.6)),
]


@pytest.mark.parametrize("fmt", ["xyxy", "rel_xyxy", "center_xywh", "yxyx"])
@pytest.mark.parametrize("name, kwargs", LAYERS, ids=lambda v: str(v))
def test_layer_boxes_match_keras(rng, name, kwargs, fmt):
    """(Keras 3.15's RandomRotation reads the boxes it is given as xyxy whatever the
    format; handed the same boxes, pynn's does too.)"""
    keras = keras_on_torch()
    p = getattr(layers, name)(bounding_box_format=fmt, **kwargs)
    k = getattr(keras.layers, name)(bounding_box_format=fmt, **kwargs)
    x = rng.uniform(0, 255, (3, H, W, 2)).astype(np.float32)
    found = _padded_boxes(rng, fmt)
    t = p.get_random_transformation(x, training=True, seed=5)
    got = p.transform_bounding_boxes(dict(found), t, training=True)
    want = k.transform_bounding_boxes({key: v.copy() for key, v in found.items()},
                                      _keras_transformation(name, t, x), training=True)
    np.testing.assert_allclose(got["boxes"], _np(keras, want["boxes"]), rtol=1e-5, atol=2e-5)
    np.testing.assert_array_equal(got["labels"], _np(keras, want["labels"]))
    assert got["boxes"].shape == found["boxes"].shape
    assert not np.allclose(got["boxes"], found["boxes"]), "the boxes were left alone"


def test_random_layers_leave_boxes_outside_training(rng):
    for layer in (layers.RandomFlip(bounding_box_format="xyxy"),
                  layers.RandomRotation(0.2, bounding_box_format="xyxy"),
                  layers.RandomShear(0.2, bounding_box_format="xyxy")):
        found = _padded_boxes(rng, "xyxy")
        out = layer({"images": np.ones((3, H, W, 1), np.float32), "bounding_boxes": found},
                    training=False)
        np.testing.assert_array_equal(out["bounding_boxes"]["boxes"], found["boxes"])


def test_random_crop_outside_training_follows_the_resized_window(rng):
    """pynn's inference crop is the centred aspect window resized; its boxes follow it."""
    crop = layers.RandomCrop(6, 12, bounding_box_format="xyxy")
    center = layers.CenterCrop(6, 12, bounding_box_format="xyxy")
    x = rng.uniform(0, 1, (3, H, W, 1)).astype(np.float32)
    found = _padded_boxes(rng, "xyxy")
    got = crop({"images": x, "bounding_boxes": found}, training=False)
    window = pynn.layers.preprocessing.aspect_box(H, W, 6, 12)
    want = pynn.layers.preprocessing.window_boxes(found, "xyxy", window, (H, W), (6, 12))
    np.testing.assert_array_equal(got["bounding_boxes"]["boxes"], want["boxes"])
    assert got["images"].shape == center({"images": x})["images"].shape


# -- the dict call ------------------------------------------------------------------------

@pytest.mark.parametrize("name, kwargs", [LAYERS[0], LAYERS[3], LAYERS[7], LAYERS[10]],
                         ids=lambda v: str(v))
def test_dict_call_is_its_pieces(rng, name, kwargs):
    p = getattr(layers, name)(bounding_box_format="rel_xywh", seed=11, **kwargs) \
        if name != "Resizing" else layers.Resizing(bounding_box_format="rel_xywh", **kwargs)
    twin = getattr(layers, name)(bounding_box_format="rel_xywh", seed=11, **kwargs) \
        if name != "Resizing" else layers.Resizing(bounding_box_format="rel_xywh", **kwargs)
    x = rng.uniform(0, 255, (3, H, W, 3)).astype(np.float32)
    masks = rng.integers(0, 4, (3, H, W, 1)).astype(np.float32)
    found = _padded_boxes(rng, "rel_xywh")
    labels = np.array([2, 0, 1])
    out = p({"images": x, "bounding_boxes": found, "labels": labels,
             "segmentation_masks": masks})
    t = twin.get_random_transformation(x, training=True)
    np.testing.assert_array_equal(out["images"], twin.transform_images(x, t, training=True))
    want = twin.transform_bounding_boxes(dict(found), t, training=True)
    np.testing.assert_array_equal(out["bounding_boxes"]["boxes"], want["boxes"])
    np.testing.assert_array_equal(out["bounding_boxes"]["labels"], want["labels"])
    np.testing.assert_array_equal(out["labels"], labels)
    np.testing.assert_array_equal(out["segmentation_masks"],
                                  twin.transform_segmentation_masks(masks, t, training=True))
    assert set(np.unique(out["segmentation_masks"])) <= {0.0, 1.0, 2.0, 3.0}
    # one image: the batch axis added and taken off again
    one = twin({"images": x[0], "bounding_boxes": {"boxes": found["boxes"][0],
                                                   "labels": found["labels"][0]}})
    assert one["images"].shape == out["images"].shape[1:]
    assert one["bounding_boxes"]["boxes"].shape == found["boxes"].shape[1:]
    assert one["bounding_boxes"]["labels"].shape == found["labels"].shape[1:]


def test_resizing_pad_to_aspect_ratio_matches_keras_images(rng):
    keras = keras_on_torch()
    x = rng.uniform(0, 255, (2, H, W, 3)).astype(np.float32)
    for size in ((21, 8), (5, 30)):
        for interpolation in ("bilinear", "nearest"):
            kwargs = dict(pad_to_aspect_ratio=True, fill_value=7.0, interpolation=interpolation)
            got = layers.Resizing(*size, **kwargs)(x)
            want = _np(keras, keras.layers.Resizing(*size, **kwargs)(x))
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


def test_colour_layers_keep_boxes_and_masks(rng):
    x = rng.uniform(0, 255, (3, H, W, 3)).astype(np.float32)
    masks = rng.integers(0, 3, (3, H, W, 1)).astype(np.float32)
    for layer in (layers.RandomContrast(0.5, bounding_box_format="xyxy"),
                  layers.RandomBrightness(0.3, bounding_box_format="xyxy"),
                  layers.RandomHue(0.4, bounding_box_format="xyxy"),
                  layers.RandomGaussianBlur(bounding_box_format="xyxy"),
                  layers.RandomErasing(bounding_box_format="xyxy")):
        found = _padded_boxes(rng, "xyxy")
        out = layer({"images": x, "bounding_boxes": found, "segmentation_masks": masks})
        np.testing.assert_array_equal(out["bounding_boxes"]["boxes"], found["boxes"])
        np.testing.assert_array_equal(out["bounding_boxes"]["labels"], found["labels"])
        np.testing.assert_array_equal(out["segmentation_masks"], masks)
        assert out["images"].shape == x.shape


@pytest.mark.parametrize("make", [
    lambda: layers.RandomElasticTransform(bounding_box_format="xyxy"),
    lambda: layers.MixUp(bounding_box_format="xyxy"),
    lambda: layers.CutMix(bounding_box_format="xyxy"),
    lambda: layers.RandAugment(bounding_box_format="xyxy"),
])
def test_layers_without_a_box_transform_refuse_boxes_by_name(rng, make):
    layer = make()
    x = rng.uniform(0, 255, (3, H, W, 3)).astype(np.float32)
    with pytest.raises(NotImplementedError, match=f"{type(layer).__name__} '{layer.name}'.*"
                                                  f"bounding boxes"):
        layer({"images": x, "bounding_boxes": _padded_boxes(rng, "xyxy")})
    if type(layer).__name__ in ("MixUp", "CutMix"):
        return
    with pytest.raises(NotImplementedError, match="segmentation masks"):
        layer({"images": x, "segmentation_masks": x[..., :1]})


def test_mixing_layers_masks_as_keras(rng):
    """MixUp leaves a dict's masks alone, CutMix pastes them as it pastes the images."""
    x = rng.uniform(0, 255, (4, H, W, 3)).astype(np.float32)
    masks = rng.integers(0, 3, (4, H, W, 1)).astype(np.float32)
    out = layers.MixUp(seed=2)({"images": x, "segmentation_masks": masks})
    np.testing.assert_array_equal(out["segmentation_masks"], masks)
    cut, twin = layers.CutMix(seed=2), layers.CutMix(seed=2)
    out = cut({"images": x, "segmentation_masks": masks})
    t = twin.get_random_transformation(x)
    np.testing.assert_array_equal(out["segmentation_masks"],
                                  twin.transform_images(masks, t, training=True))
    assert not np.array_equal(out["segmentation_masks"], masks)


def test_random_perspective_refuses_masks_by_name(rng):
    layer = layers.RandomPerspective(bounding_box_format="xyxy", name="persp")
    with pytest.raises(NotImplementedError, match="RandomPerspective 'persp'.*segmentation"):
        layer({"images": np.ones((2, H, W, 1)), "segmentation_masks": np.ones((2, H, W, 1))})


def test_mixing_layers_mix_a_dicts_labels(rng):
    layer = layers.MixUp(seed=3)
    x = rng.uniform(0, 255, (4, H, W, 3)).astype(np.float32)
    labels = np.eye(4, dtype=np.float32)
    out = layer({"images": x, "labels": labels})
    assert out["labels"].shape == labels.shape and not np.allclose(out["labels"], labels)


# -- bad inputs ---------------------------------------------------------------------------

def test_boxes_without_a_format_are_refused_as_keras_does(rng):
    layer = layers.RandomFlip(name="flipper")
    with pytest.raises(ValueError, match="RandomFlip 'flipper'.*didn't specify a bounding "
                                         "box format"):
        layer({"images": np.ones((3, H, W, 1)), "bounding_boxes": _padded_boxes(rng, "xyxy")})


@pytest.mark.parametrize("bad, match", [
    ({"boxes": np.ones((3, 4, 4))}, "keys 'boxes' and 'labels'"),
    ({"boxes": np.ones((3, 4, 3)), "labels": np.ones((3, 4))}, r"\(batch_size, num_boxes, 4\)"),
    ({"boxes": np.ones((3, 4, 4)), "labels": np.ones((3, 5))}, "got boxes"),
    ({"boxes": np.ones((4, 4)), "labels": np.ones(4)}, r"\(batch_size, num_boxes, 4\)"),
    ({"boxes": [[[1, 2, 3, 4]], [[1, 2, 3, 4], [0, 0, 1, 1]], [[0, 0, 1, 1]]],
      "labels": [[1], [1, 2], [0]]}, "dense arrays"),
    (np.ones((3, 4, 4)), "keys 'boxes' and 'labels'"),
])
def test_bad_boxes_are_named(bad, match):
    layer = layers.RandomZoom(0.2, bounding_box_format="xyxy", name="zoomer")
    with pytest.raises(ValueError, match=f"RandomZoom 'zoomer'.*{match}"):
        layer({"images": np.ones((3, H, W, 1)), "bounding_boxes": bad})


def test_bad_formats_images_and_masks_are_named():
    with pytest.raises(ValueError, match="RandomFlip 'f'.*invalid bounding_box_format.*"
                                         "Supported formats"):
        layers.RandomFlip(bounding_box_format="xyzw", name="f")
    layer = layers.CenterCrop(5, 5, bounding_box_format="xyxy", name="c")
    with pytest.raises(ValueError, match="CenterCrop 'c'.*'images'"):
        layer({"bounding_boxes": {"boxes": np.ones((1, 4)), "labels": np.ones(1)}})
    with pytest.raises(ValueError, match="CenterCrop 'c'.*rank 3 .* or 4"):
        layer({"images": np.ones((2, 3, H, W, 1))})
    with pytest.raises(ValueError, match="CenterCrop 'c'.*segmentation_masks must match"):
        layer({"images": np.ones((2, H, W, 1)), "segmentation_masks": np.ones((2, 4, W, 1))})
    with pytest.raises(ValueError, match="Resizing 'r'.*only one of"):
        layers.Resizing(4, 4, crop_to_aspect_ratio=True, pad_to_aspect_ratio=True, name="r")


def test_config_round_trips_and_loads_in_keras():
    keras = keras_on_torch()
    for layer in (layers.RandomFlip(bounding_box_format="rel_yxyx", seed=3),
                  layers.Resizing(4, 6, pad_to_aspect_ratio=True, fill_value=2.0,
                                  bounding_box_format="xywh"),
                  layers.RandomShear(0.2, bounding_box_format="center_xywh", seed=3)):
        config = layer.get_config()
        again = type(layer).from_config(config)
        assert again.get_config() == config
        twin = getattr(keras.layers, type(layer).__name__).from_config(config)
        assert twin.bounding_box_format == layer.bounding_box_format
    assert "bounding_box_format" not in layers.RandomFlip().get_config()


# -- masks against Keras, OpenCL against the CPU, Keras files ------------------------------

@pytest.mark.parametrize("name, kwargs", [LAYERS[0], LAYERS[2], LAYERS[9], LAYERS[10],
                                          LAYERS[11]], ids=lambda v: str(v))
def test_layer_masks_match_keras(rng, name, kwargs):
    keras = keras_on_torch()
    p = getattr(layers, name)(**kwargs)
    k = getattr(keras.layers, name)(**kwargs)
    x = rng.uniform(0, 255, (3, H, W, 2)).astype(np.float32)
    masks = rng.integers(0, 5, (3, H, W, 1)).astype(np.float32)
    t = p.get_random_transformation(x, training=True, seed=4)
    got = p.transform_segmentation_masks(masks, t, training=True)
    want = k.transform_segmentation_masks(masks, _keras_transformation(name, t, x),
                                          training=True)
    np.testing.assert_allclose(got, _np(keras, want), rtol=1e-5, atol=1e-4)


@pytest.mark.opencl
def test_dict_call_on_opencl_matches_the_cpu(backend_opencl, rng):
    x = rng.uniform(0, 255, (3, H, W, 3)).astype(np.float32)
    masks = rng.integers(0, 4, (3, H, W, 1)).astype(np.float32)
    found = _padded_boxes(rng, "xyxy")
    previous = pynn.backend.device()
    makers = [lambda: layers.RandomFlip(seed=5, bounding_box_format="xyxy"),
              lambda: layers.RandomZoom(0.3, seed=5, bounding_box_format="xyxy"),
              lambda: layers.Resizing(7, 20, pad_to_aspect_ratio=True,
                                      bounding_box_format="xyxy"),
              lambda: layers.RandomContrast(0.4, seed=5, bounding_box_format="xyxy")]
    try:
        for make in makers:
            outs = []
            for device in ("cpu", "opencl"):
                pynn.set_device(device)
                out = make()({"images": x, "bounding_boxes": found,
                              "segmentation_masks": masks})
                if device == "opencl":
                    out["images"] = backend_opencl.down(out["images"])
                    out["segmentation_masks"] = backend_opencl.down(out["segmentation_masks"])
                outs.append(out)
            np.testing.assert_allclose(outs[1]["images"], outs[0]["images"], rtol=1e-4,
                                       atol=1e-3)
            np.testing.assert_allclose(outs[1]["segmentation_masks"],
                                       outs[0]["segmentation_masks"], rtol=2e-6, atol=2e-4)
            np.testing.assert_array_equal(outs[1]["bounding_boxes"]["boxes"],
                                          outs[0]["bounding_boxes"]["boxes"])
    finally:
        pynn.set_device(previous)


def test_keras_files_both_ways(tmp_path, rng):
    keras = keras_on_torch()
    K = keras.layers
    km = keras.Sequential([keras.Input((H, W, 3)),
                           K.Resizing(9, 21, pad_to_aspect_ratio=True, fill_value=4.0,
                                      bounding_box_format="rel_xyxy"),
                           K.RandomFlip(bounding_box_format="rel_xyxy"),
                           K.CenterCrop(7, 15, bounding_box_format="rel_xyxy"),
                           K.Flatten(), K.Dense(2)])
    x = rng.uniform(0, 255, (2, H, W, 3)).astype(np.float32)
    want = _np(keras, km.predict(x, verbose=0))
    km.save(tmp_path / "k.keras")
    pm = pynn.load_model(str(tmp_path / "k.keras"))
    np.testing.assert_allclose(pm.predict(x, verbose=0), want, rtol=1e-5, atol=1e-3)
    assert pm.layers[0].pad_to_aspect_ratio and pm.layers[1].bounding_box_format == "rel_xyxy"
    pm.save(str(tmp_path / "p.keras"))
    back = keras.saving.load_model(tmp_path / "p.keras")
    np.testing.assert_allclose(_np(keras, back.predict(x, verbose=0)), want, rtol=1e-5,
                               atol=1e-3)
    assert back.layers[0].pad_to_aspect_ratio and back.layers[0].fill_value == 4.0
    assert back.layers[2].bounding_box_format == "rel_xyxy"


def test_a_refused_dict_leaves_the_random_stream_alone(rng):
    layer = layers.RandomFlip(seed=8, name="f")
    twin = layers.RandomFlip(seed=8)
    x = rng.uniform(0, 1, (5, H, W, 1)).astype(np.float32)
    with pytest.raises(ValueError, match="RandomFlip 'f'"):
        layer({"images": x, "bounding_boxes": _padded_boxes(rng, "xyxy")})
    np.testing.assert_array_equal(layer({"images": x})["images"],
                                  twin({"images": x})["images"])


def test_every_public_keras_bounding_box_utility_is_here():
    keras = keras_on_torch()
    names = [n for n in dir(keras.utils.bounding_boxes) if not n.startswith("_")]
    assert len(names) >= 9
    assert [n for n in names if not callable(getattr(box_utils, n, None))] == []
