"""Keras 3's MaxNumBoundingBoxes: the one pynn layer that reads Keras's bounding-box inputs.

Keras's image preprocessing layers take either images or a dict
``{"images", "bounding_boxes": {"boxes" (N, B, 4), "labels" (N, B)}, "labels",
"segmentation_masks"}``; MaxNumBoundingBoxes leaves images, labels and masks as they are and
pads (with ``fill_value``) or truncates every image's boxes and box labels to ``max_number``.
Boxes are a data pipeline's host arrays (dense: Keras's ragged-list path cannot run), so the
padding is NumPy; on plain images (a model's input) the layer is the identity, on any
backend, with the identity gradient.
"""

import numbers

import numpy as np

from pynn import backend
from pynn.layers.base import Layer


def _name(layer):
    return f"{type(layer).__name__} '{layer.name}'"


class MaxNumBoundingBoxes(Layer):
    """Keras 3's ``MaxNumBoundingBoxes(max_number, fill_value=-1)``: a dict input's
    bounding_boxes padded with fill_value or truncated to max_number per image (batched
    (N, B, 4) / (N, B) or one image's (B, 4) / (B,)); Keras requires bounding_box_format
    when boxes come. Keras's get_config omits fill_value, and so does this one."""

    def __init__(self, max_number, fill_value=-1, bounding_box_format=None, data_format=None,
                 **kwargs):
        super().__init__(**kwargs)
        if isinstance(max_number, bool) or not isinstance(max_number, numbers.Real) \
                or int(max_number) < 0 or int(max_number) != max_number:
            raise ValueError(f"{_name(self)}: max_number must be a non-negative int, got "
                             f"{max_number!r}")
        if isinstance(fill_value, bool) or not isinstance(fill_value, numbers.Real):
            raise ValueError(f"{_name(self)}: fill_value must be a number, got "
                             f"{fill_value!r}")
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{_name(self)}: only data_format='channels_last' is supported, "
                             f"got {data_format!r}")
        self.max_number, self.fill_value = int(max_number), int(fill_value)
        self.bounding_box_format = bounding_box_format

    def __call__(self, inputs, training=None, **kwargs):
        if isinstance(inputs, dict):
            return self._transform_dict(inputs)
        return super().__call__(inputs, training=training, **kwargs)

    def call(self, x, training=False):
        return x

    def backward(self, dy):
        return dy if self.needs_input_grad else None

    def compute_output_shape(self, input_shape):
        return input_shape

    def _transform_dict(self, data):
        if "images" not in data:
            raise ValueError(f"{_name(self)}: a dict input needs an 'images' entry, got keys "
                             f"{sorted(data)}")
        data = dict(data)
        if "bounding_boxes" not in data:
            return data
        if not self.bounding_box_format:
            raise ValueError(f"{_name(self)}: you passed an input with a 'bounding_boxes' key, "
                             f"but you didn't specify a bounding box format. Pass a "
                             f"`bounding_box_format` argument to your MaxNumBoundingBoxes "
                             f"layer, e.g. `bounding_box_format='xyxy'`.")
        found = data["bounding_boxes"]
        if not isinstance(found, dict) or set(found) - {"boxes", "labels"} \
                or not {"boxes", "labels"} <= set(found):
            raise ValueError(f"{_name(self)}: bounding_boxes must be a dict of 'boxes' and "
                             f"'labels' only, got "
                             f"{sorted(found) if isinstance(found, dict) else type(found)}")
        batched = len(np.shape(self._host(data["images"]))) == 4
        boxes, labels = self._host(found["boxes"]), self._host(found["labels"])
        if boxes.dtype == object or labels.dtype == object:
            raise ValueError(f"{_name(self)}: boxes and labels must be dense arrays (every "
                             f"image with as many boxes); pad ragged lists first")
        want_rank = 3 if batched else 2
        if boxes.ndim != want_rank or boxes.shape[-1] != 4 or labels.ndim != want_rank - 1 \
                or labels.shape != boxes.shape[:-1]:
            raise ValueError(f"{_name(self)}: expected boxes of shape "
                             f"{'(batch, boxes, 4)' if batched else '(boxes, 4)'} and labels "
                             f"of shape {'(batch, boxes)' if batched else '(boxes,)'} "
                             f"({'batched' if batched else 'one'} image{'s' if batched else ''}"
                             f"), got boxes {boxes.shape} and labels {labels.shape}")
        if not batched:
            boxes, labels = boxes[None], labels[None]
        boxes, labels = self._fit(boxes), self._fit(labels)
        if not batched:
            boxes, labels = boxes[0], labels[0]
        data["bounding_boxes"] = {**found, "boxes": boxes, "labels": labels}
        return data

    def _fit(self, a):
        """Axis 1 truncated or padded with fill_value to max_number."""
        kept = a[:, :self.max_number]
        missing = self.max_number - kept.shape[1]
        if missing <= 0:
            return np.ascontiguousarray(kept)
        pad = [(0, 0), (0, missing)] + [(0, 0)] * (a.ndim - 2)
        return np.pad(kept, pad, constant_values=self.fill_value)

    @staticmethod
    def _host(a):
        if isinstance(a, (np.ndarray, list, tuple, numbers.Number)):
            return np.asarray(a) if not isinstance(a, list) or _dense(a) else \
                np.asarray(a, dtype=object)
        return np.asarray(backend.current().to_numpy(a))

    def get_config(self):
        config = super().get_config()
        config["data_format"] = "channels_last"
        if self.bounding_box_format is not None:
            config["bounding_box_format"] = self.bounding_box_format
        config["max_number"] = self.max_number
        return config


def _dense(values):
    try:
        np.asarray(values, dtype=np.float64)
        return True
    except ValueError:
        return False
