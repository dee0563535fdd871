"""Keras 3's ``keras.utils.bounding_boxes`` (pynn.utils.bounding_boxes): box format
conversion, clipping, IoU / CIoU, the affine, crop and pad of boxes, and the anchor delta
encoding.

Boxes are a data pipeline's host arrays ``(..., 4)`` (one image's ``(N, 4)`` or a batch's
``(B, N, 4)``), so every function is vectorised NumPy over all boxes and images at once and
returns NumPy arrays; the formulas, casts and epsilons are Keras 3.15's (backend.epsilon()
1e-7), including its conventions: a box clipped to zero area gets label -1 (the padding
value MaxNumBoundingBoxes and Keras's densify use), ``affine_transform``, ``crop`` and ``pad``
take only "xyxy", ``clip_to_image_size`` only "xyxy" and "rel_xyxy".
"""

import math

import numpy as np

# Keras's backend.epsilon().
EPSILON = 1e-7

SUPPORTED_FORMATS = (
    "xyxy",
    "yxyx",
    "xywh",
    "center_xywh",
    "center_yxhw",
    "rel_xyxy",
    "rel_yxyx",
    "rel_xywh",
    "rel_center_xywh",
)


def check_format(where, bounding_box_format):
    """Keras's refusal of an unknown format, naming the caller."""
    if not isinstance(bounding_box_format, str) \
            or bounding_box_format.lower() not in SUPPORTED_FORMATS:
        raise ValueError(f"{where}: invalid bounding_box_format {bounding_box_format!r}. "
                         f"Supported formats: {SUPPORTED_FORMATS}")
    return bounding_box_format.lower()


def _columns(boxes):
    return tuple(boxes[..., i] for i in range(4))


def _stack(*columns):
    return np.stack(columns, axis=-1)


def _to_xyxy(boxes, source, height, width):
    a, b, c, d = _columns(boxes)
    if source == "xyxy":
        return boxes
    if source == "yxyx":
        return _stack(b, a, d, c)
    if source == "xywh":
        return _stack(a, b, a + c, b + d)
    if source == "center_xywh":
        return _stack(a - c / 2.0, b - d / 2.0, a + c / 2.0, b + d / 2.0)
    if source == "center_yxhw":
        return _stack(b - d / 2.0, a - c / 2.0, b + d / 2.0, a + c / 2.0)
    if source == "rel_xyxy":
        return _stack(a * width, b * height, c * width, d * height)
    if source == "rel_yxyx":
        return _stack(b * width, a * height, d * width, c * height)
    if source == "rel_xywh":
        return _stack(a * width, b * height, (a + c) * width, (b + d) * height)
    # rel_center_xywh
    return _stack((a - c / 2.0) * width, (b - d / 2.0) * height, (a + c / 2.0) * width,
                  (b + d / 2.0) * height)


def _from_xyxy(boxes, target, height, width):
    x1, y1, x2, y2 = _columns(boxes)
    if target == "xyxy":
        return boxes
    if target == "yxyx":
        return _stack(y1, x1, y2, x2)
    if target == "xywh":
        return _stack(x1, y1, x2 - x1, y2 - y1)
    if target == "center_xywh":
        return _stack(x1 + (x2 - x1) / 2.0, y1 + (y2 - y1) / 2.0, x2 - x1, y2 - y1)
    if target == "center_yxhw":
        return _stack(y1 + (y2 - y1) / 2.0, x1 + (x2 - x1) / 2.0, y2 - y1, x2 - x1)
    if target == "rel_xyxy":
        return _stack(x1 / width, y1 / height, x2 / width, y2 / height)
    if target == "rel_yxyx":
        return _stack(y1 / height, x1 / width, y2 / height, x2 / width)
    if target == "rel_xywh":
        return _stack(x1 / width, y1 / height, (x2 - x1) / width, (y2 - y1) / height)
    # rel_center_xywh
    return _stack((x1 + (x2 - x1) / 2.0) / width, (y1 + (y2 - y1) / 2.0) / height,
                  (x2 - x1) / width, (y2 - y1) / height)


def _size(value, dtype):
    """A height or width: a number, or an array broadcasting against a box column (N, B)."""
    if value is None:
        return None
    return np.asarray(value, dtype=dtype)


def convert_format(boxes, source, target, height=None, width=None, dtype="float32"):
    """Keras's convert_format: boxes (..., 4) (or a dict whose "boxes" are converted) from
    ``source`` to ``target``, through xyxy; a relative format needs height and width (numbers,
    or arrays broadcasting per image as Keras's RandomZoom hands them)."""
    if isinstance(boxes, dict):
        return {**boxes, "boxes": convert_format(boxes["boxes"], source, target, height,
                                                 width, dtype)}
    boxes = np.asarray(boxes)
    if boxes.ndim == 0 or boxes.shape[-1] != 4:
        raise ValueError(f"convert_format: `boxes` must be a tensor with the last dimension "
                         f"of 4. Received: boxes.shape={boxes.shape}")
    if not isinstance(source, str) or not isinstance(target, str) \
            or source.lower() not in SUPPORTED_FORMATS \
            or target.lower() not in SUPPORTED_FORMATS:
        raise ValueError(f"convert_format: invalid source or target format (got source="
                         f"{source!r}, target={target!r}). Supported formats: "
                         f"{SUPPORTED_FORMATS}")
    source, target = source.lower(), target.lower()
    if (source.startswith("rel_") or target.startswith("rel_")) \
            and (width is None or height is None):
        raise ValueError(f"convert_format: height and width are needed to convert between "
                         f"relative and absolute formats; got source={source!r}, target="
                         f"{target!r}, height={height}, width={width}")
    boxes = boxes.astype(dtype)
    if source == target:
        return boxes
    height, width = _size(height, boxes.dtype), _size(width, boxes.dtype)
    if source.startswith("rel_") and target.startswith("rel_"):
        source, target = source[4:], target[4:]
    return _from_xyxy(_to_xyxy(boxes, source, height, width), target, height, width)


def _area_xyxy(boxes):
    x1, y1, x2, y2 = _columns(boxes)
    return (x2 - x1) * (y2 - y1)


def clip_to_image_size(bounding_boxes, height=None, width=None, bounding_box_format="xyxy"):
    """Keras's clip_to_image_size: a dict's boxes clipped to [0, width] x [0, height]
    ("xyxy") or the unit square ("rel_xyxy"); a box left with no area gets label -1."""
    if bounding_box_format not in ("xyxy", "rel_xyxy"):
        raise NotImplementedError(f"clip_to_image_size: only 'xyxy' and 'rel_xyxy' boxes are "
                                  f"clipped (as Keras), got {bounding_box_format!r}")
    if bounding_box_format == "xyxy" and (height is None or width is None):
        raise ValueError("clip_to_image_size: `height` and `width` must be set if "
                         "`format='xyxy'`.")
    if not isinstance(bounding_boxes, dict) or "boxes" not in bounding_boxes:
        raise ValueError(f"clip_to_image_size: expected a dict with 'boxes' (and 'labels'), "
                         f"got {type(bounding_boxes).__name__}")
    boxes = np.asarray(bounding_boxes["boxes"])
    labels = bounding_boxes.get("labels", None)
    if bounding_box_format == "xyxy":
        high_x, high_y = _size(width, boxes.dtype), _size(height, boxes.dtype)
    else:
        high_x = high_y = np.asarray(1.0, boxes.dtype)
    x1, y1, x2, y2 = _columns(boxes)
    boxes = _stack(np.clip(x1, 0, high_x), np.clip(y1, 0, high_y), np.clip(x2, 0, high_x),
                   np.clip(y2, 0, high_y)).astype(boxes.dtype, copy=False)
    result = dict(bounding_boxes)
    result["boxes"] = boxes
    if labels is not None:
        labels = np.asarray(labels)
        result["labels"] = np.where(_area_xyxy(boxes) > 0, labels, -1).astype(labels.dtype)
    return result


def affine_matrices(angle, translate_x, translate_y, scale, shear_x, shear_y, height, width,
                    center_x=0.5, center_y=0.5):
    """Keras's _compute_inverse_affine_matrix: (B, 3, 3) taking a box corner of the input to
    the output (angles and shears in degrees, translations and centre as fractions)."""
    angle = np.asarray(angle)
    dtype = angle.dtype if angle.dtype.kind == "f" else np.float32
    angle = angle.astype(dtype)
    values = [np.asarray(v, dtype) for v in (translate_x, translate_y, scale, shear_x,
                                              shear_y)]
    translate_x, translate_y, scale, shear_x, shear_y = values
    cx = center_x * (width - 1)
    cy = center_y * (height - 1)
    rot = -angle * (1.0 / 180.0 * math.pi)
    tx = -translate_x * (width - 1)
    ty = -translate_y * (height - 1)
    sx = -shear_x * (1.0 / 180.0 * math.pi)
    sy = -shear_y * (1.0 / 180.0 * math.pi)
    cos_sy, tan_sx = np.cos(sy), np.tan(sx)
    a = np.cos(rot - sy) / cos_sy
    b = a * tan_sx + np.sin(rot)
    c = -np.sin(rot - sy) / cos_sy
    d = np.cos(rot) - c * tan_sx
    a0, a1, b0, b1 = d * scale, -b * scale, -c * scale, a * scale
    a2 = cx - a0 * (cx + tx) - a1 * (cy + ty)
    b2 = cy - b0 * (cx + tx) - b1 * (cy + ty)
    zeros, ones = np.zeros_like(a0), np.ones_like(a0)
    return np.stack([a0, a1, a2, b0, b1, b2, zeros, zeros, ones], -1).reshape(-1, 3, 3) \
        .astype(dtype, copy=False)


def affine_transform(boxes, angle, translate_x, translate_y, scale, shear_x, shear_y, height,
                     width, center_x=None, center_y=None, bounding_box_format="xyxy"):
    """Keras's affine_transform: each (B, N, 4) xyxy box's four corners mapped by its image's
    affine, and the axis-aligned box around them (unclipped)."""
    if bounding_box_format != "xyxy":
        raise NotImplementedError(f"affine_transform: only 'xyxy' boxes are transformed (as "
                                  f"Keras), got {bounding_box_format!r}")
    boxes = np.asarray(boxes)
    if boxes.ndim != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"affine_transform: expected boxes of shape (batch, boxes, 4), got "
                         f"{boxes.shape}")
    matrix = affine_matrices(angle, translate_x, translate_y, scale, shear_x, shear_y, height,
                             width, 0.5 if center_x is None else center_x,
                             0.5 if center_y is None else center_y)
    if matrix.shape[0] != boxes.shape[0]:
        raise ValueError(f"affine_transform: {matrix.shape[0]} transformations for a batch of "
                         f"{boxes.shape[0]} images")
    boxes = boxes.astype(matrix.dtype)
    x1, y1, x2, y2 = _columns(boxes)
    corners = np.stack([np.stack([x1, y1], -1), np.stack([x2, y1], -1),
                        np.stack([x2, y2], -1), np.stack([x1, y2], -1)], axis=2)
    moved = np.einsum("bnkj,bij->bnki", corners, matrix[:, :2, :2]) \
        + matrix[:, None, None, :2, 2]
    return np.concatenate([moved.min(axis=2), moved.max(axis=2)], axis=-1)


def crop(boxes, top, left, height, width, bounding_box_format="xyxy"):
    """Keras's crop: xyxy boxes shifted by (-left, -top) and clipped to the window."""
    if bounding_box_format != "xyxy":
        raise NotImplementedError(f"crop: only 'xyxy' boxes are cropped (as Keras), got "
                                  f"{bounding_box_format!r}")
    x1, y1, x2, y2 = _columns(np.asarray(boxes))
    return _stack(np.clip(x1 - left, 0, width), np.clip(y1 - top, 0, height),
                  np.clip(x2 - left, 0, width), np.clip(y2 - top, 0, height))


def pad(boxes, top, left, height=None, width=None, bounding_box_format="xyxy"):
    """Keras's pad: xyxy boxes shifted by (left, top)."""
    if bounding_box_format != "xyxy":
        raise NotImplementedError(f"pad: only 'xyxy' boxes are padded (as Keras), got "
                                  f"{bounding_box_format!r}")
    x1, y1, x2, y2 = _columns(np.asarray(boxes))
    return _stack(x1 + left, y1 + top, x2 + left, y2 + top)


def _variance(variance):
    if variance is None:
        return None
    variance = np.asarray(variance, np.float32)
    if variance.ndim == 0 or variance.shape[-1] != 4:
        raise ValueError(f"`variance` must be length 4, got {variance}")
    return variance


def _image_size(image_shape):
    if image_shape is None:
        return None, None
    height, width, _ = image_shape
    return height, width


def encode_box_to_deltas(anchors, boxes, anchor_format, box_format,
                         encoding_format="center_yxhw", variance=None, image_shape=None):
    """Keras's encode_box_to_deltas: (centre offset / anchor size, log(size / anchor size))
    in ``encoding_format``, divided by ``variance``; anchors (N, 4), boxes (N, 4) or
    (B, N, 4)."""
    variance = _variance(variance)
    if encoding_format not in ("center_xywh", "center_yxhw"):
        raise ValueError(f"`encoding_format` should be one of 'center_xywh' or "
                         f"'center_yxhw', got {encoding_format}")
    height, width = _image_size(image_shape)
    anchors = convert_format(anchors, anchor_format, encoding_format, height, width)
    boxes = convert_format(boxes, box_format, encoding_format, height, width)
    anchor_size = np.maximum(anchors[..., 2:], np.float32(EPSILON))
    box_size = np.maximum(boxes[..., 2:], np.float32(EPSILON))
    deltas = np.concatenate([(boxes[..., :2] - anchors[..., :2]) / anchor_size,
                             np.log(box_size / anchor_size)], axis=-1)
    return deltas if variance is None else deltas / variance


def decode_deltas_to_boxes(anchors, boxes_delta, anchor_format, box_format,
                           encoded_format="center_yxhw", variance=None, image_shape=None):
    """Keras's decode_deltas_to_boxes, encode_box_to_deltas's inverse; anchors and deltas may
    be dicts of levels."""
    variance = _variance(variance)
    if encoded_format not in ("center_xywh", "center_yxhw"):
        raise ValueError(f"`encoded_format` should be 'center_xywh' or 'center_yxhw', but got "
                         f"'{encoded_format}'.")
    height, width = _image_size(image_shape)

    def decode_level(anchor, delta):
        anchor = convert_format(anchor, anchor_format, encoded_format, height, width)
        delta = np.asarray(delta)
        if variance is not None:
            delta = delta * variance
        box = np.concatenate([delta[..., :2] * anchor[..., 2:] + anchor[..., :2],
                              np.exp(delta[..., 2:]) * anchor[..., 2:]], axis=-1)
        return convert_format(box, encoded_format, box_format, height, width)

    if isinstance(anchors, dict) and isinstance(boxes_delta, dict):
        return {level: decode_level(anchor, boxes_delta[level])
                for level, anchor in anchors.items()}
    return decode_level(anchors, boxes_delta)


def compute_iou(boxes1, boxes2, bounding_box_format, use_masking=False, mask_val=-1,
                image_shape=None):
    """Keras's compute_iou: the (N, M) (or (B, N, M)) IoU of every pair, the union padded by
    epsilon; with use_masking, a pair with a box of all-negative coordinates is mask_val."""
    boxes1, boxes2 = np.asarray(boxes1), np.asarray(boxes2)
    for which, boxes in (("boxes1", boxes1), ("boxes2", boxes2)):
        if boxes.ndim not in (2, 3):
            raise ValueError(f"compute_iou() expects {which} to be batched, or to be "
                             f"unbatched. Received len(boxes1.shape)={boxes1.ndim}, "
                             f"len(boxes2.shape)={boxes2.ndim}. Expected either "
                             f"len({which}.shape)=2 AND or len({which}.shape)=3.")
    if "rel" in bounding_box_format and image_shape is None:
        raise ValueError(f"compute_iou: with a relative bounding box format (e.g. `rel_yxyx`) "
                         f"the `image_shape` argument must be provided. Received "
                         f"`image_shape`: {image_shape}")
    height, width = _image_size(image_shape)
    boxes1 = convert_format(boxes1, bounding_box_format, "yxyx", height, width)
    boxes2 = convert_format(boxes2, bounding_box_format, "yxyx", height, width)
    top1, left1, bottom1, right1 = (c[..., None] for c in _columns(boxes1))
    top2, left2, bottom2, right2 = (c[..., None, :] for c in _columns(boxes2))
    intersect = np.maximum(0, np.minimum(bottom1, bottom2) - np.maximum(top1, top2)) \
        * np.maximum(0, np.minimum(right1, right2) - np.maximum(left1, left2))
    area1 = ((bottom1 - top1) * (right1 - left1))
    area2 = ((bottom2 - top2) * (right2 - left2))
    iou = intersect / (area1 + area2 - intersect + np.float32(EPSILON))
    if not use_masking:
        return iou
    background = (boxes1.max(axis=-1) < 0)[..., None] | (boxes2.max(axis=-1) < 0)[..., None, :]
    return np.where(background, np.asarray(mask_val, iou.dtype), iou)


def compute_ciou(boxes1, boxes2, bounding_box_format, image_shape=None):
    """Keras's compute_ciou: the complete IoU of each pair of boxes (same shapes, paired
    elementwise): IoU - centre distance² / enclosing diagonal² - v·alpha."""
    if "rel" in bounding_box_format:
        raise ValueError(f"compute_ciou: relative bounding box formats (e.g. `rel_yxyx`) are "
                         f"refused (as Keras). Received `image_shape`: {image_shape}")
    height, width = _image_size(image_shape)
    boxes1 = convert_format(boxes1, bounding_box_format, "xyxy", height, width)
    boxes2 = convert_format(boxes2, bounding_box_format, "xyxy", height, width)
    eps = np.float32(EPSILON)
    x_min1, y_min1, x_max1, y_max1 = _columns(boxes1)
    x_min2, y_min2, x_max2, y_max2 = _columns(boxes2)
    width_1, height_1 = x_max1 - x_min1, y_max1 - y_min1 + eps
    width_2, height_2 = x_max2 - x_min2, y_max2 - y_min2 + eps
    intersection = np.maximum(np.minimum(x_max1, x_max2) - np.maximum(x_min1, x_min2), 0) \
        * np.maximum(np.minimum(y_max1, y_max2) - np.maximum(y_min1, y_min2), 0)
    union = width_1 * height_1 + width_2 * height_2 - intersection + eps
    iou = intersection / (union + eps)
    convex_width = np.maximum(x_max1, x_max2) - np.minimum(x_min1, x_min2)
    convex_height = np.maximum(y_max1, y_max2) - np.minimum(y_min1, y_min2)
    diagonal_squared = convex_width ** 2 + convex_height ** 2 + eps
    centers_squared = ((x_min1 + x_max1) / 2 - (x_min2 + x_max2) / 2) ** 2 \
        + ((y_min1 + y_max1) / 2 - (y_min2 + y_max2) / 2) ** 2
    v = np.float32(4 / math.pi ** 2) * (np.arctan(width_2 / height_2)
                                        - np.arctan(width_1 / height_1)) ** 2
    alpha = v / (v - iou + (1 + eps))
    return iou - (centers_squared / diagonal_squared + v * alpha)
