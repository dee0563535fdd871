"""Keras 3's preprocessing layers: Rescaling, Normalization, Resizing, CenterCrop, RandomCrop,
RandomFlip, RandomRotation, RandomZoom, RandomTranslation, RandomContrast, RandomBrightness.

Every geometric layer is one or two ``image_affine_forward`` passes: the layer builds Keras
3's affine matrix per image (keras.ops.image.affine_transform's convention) in NumPy and the
backend resamples, so a device model augments on the device and the backward is the same
op's adjoint. Crops are integer shifts (exact under any interpolation); resizes are torch's
interpolate(align_corners=False) written as a matrix. The random layers draw their
parameters in NumPy from (seed, call count): the same seed gives the same batches at any
thread count, on any backend, and a resumed fit continues the stream (runtime_state). Like
Keras's, they act only in training; outside it they pass the input through (RandomCrop
center-crops and resizes, as Keras documents).

Called on Keras's dict ``{"images", "bounding_boxes", "labels", "segmentation_masks"}`` (a
data pipeline's host arrays) the image layers move the boxes and masks with the images,
each by Keras 3.15's own transform_bounding_boxes formula given the same drawn
transformation (pynn.utils.bounding_boxes holds the box arithmetic), quirks included; see
_ImageLayer.
"""

import math
import numbers

import numpy as np

from pynn import backend, utils
from pynn import bounding_boxes as box_utils
from pynn.layers.base import Layer, shape_str

# Keras's backend.epsilon(): Normalization's floor on the standard deviation.
EPSILON = 1e-7
FILL_MODES = ("reflect", "wrap", "constant", "nearest")
INTERPOLATIONS = ("nearest", "bilinear")
# torch's 'nearest-exact' (Keras 3's 'nearest' resize) reads floor((o + 0.5) * scale); the
# affine op's nearest rounds half to even, so the coordinate is nudged below the half-way
# point by less than any fraction k / size can come near (sizes below 2**16).
_NEAREST_BIAS = 2.0 ** -16


def _name(layer):
    return f"{type(layer).__name__} '{layer.name}'"


def _choice(layer, what, value, allowed):
    if value not in allowed:
        raise ValueError(f"{_name(layer)}: {what} must be one of {allowed}, got {value!r}")
    return value


def _factor(layer, what, factor, bounds=(-1.0, 1.0)):
    """Keras's factor: a number f gives (max(-|f|, low), |f|), a pair is sorted."""
    if isinstance(factor, (tuple, list)) and len(factor) == 2 and all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) for v in factor):
        lower, upper = sorted(float(v) for v in factor)
    elif isinstance(factor, numbers.Real) and not isinstance(factor, bool):
        f = abs(float(factor))
        lower, upper = max(-f, bounds[0]), f
    else:
        raise ValueError(f"{_name(layer)}: {what} must be a number or a pair of numbers in "
                         f"[{bounds[0]}, {bounds[1]}], got {factor!r}")
    # Written as a negated chain so that a NaN factor (every comparison False) is refused.
    if not bounds[0] <= lower <= upper <= bounds[1]:
        raise ValueError(f"{_name(layer)}: {what} must lie in [{bounds[0]}, {bounds[1]}], got "
                         f"{factor!r}")
    return lower, upper


def _value_range(layer, value_range):
    if not (isinstance(value_range, (tuple, list)) and len(value_range) == 2):
        raise ValueError(f"{_name(layer)}: value_range must be (low, high), got "
                         f"{value_range!r}")
    # Non-numbers and non-finite ends were refused only in the op, at the first call.
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and np.isfinite(v)
               for v in value_range):
        raise ValueError(f"{_name(layer)}: value_range must be two finite numbers, got "
                         f"{value_range!r}")
    return tuple(sorted(float(v) for v in value_range))


def _data_format(layer, data_format):
    if data_format not in (None, "channels_last"):
        raise ValueError(f"{_name(layer)}: only data_format='channels_last' is supported, got "
                         f"{data_format!r}")


# -- affine matrices in Keras's [a0, a1, a2, b0, b1, b2] order ------------------------------

def shift_matrices(n, top, left):
    """Output (r, c) reads input (r + top, c + left): a crop."""
    m = np.zeros((n, 6))
    m[:, 0] = m[:, 4] = 1.0
    m[:, 2], m[:, 5] = left, top
    return m


def resize_matrices(n, in_size, out_size, interpolation):
    """torch's interpolate(align_corners=False): input = (o + 0.5) * in / out - 0.5, read with
    fill_mode 'nearest' (torch clamps at the edges)."""
    sy, sx = in_size[0] / out_size[0], in_size[1] / out_size[1]
    bias = _NEAREST_BIAS if interpolation == "nearest" else 0.0
    m = np.zeros((n, 6))
    m[:, 0], m[:, 2] = sx, 0.5 * sx - 0.5 + bias
    m[:, 4], m[:, 5] = sy, 0.5 * sy - 0.5 + bias
    return m


def rotation_matrices(degrees, height, width):
    """Keras's _compute_affine_matrix with angle only, about the image centre."""
    theta = np.deg2rad(np.asarray(degrees, np.float64))
    cos, sin = np.cos(theta), np.sin(theta)
    cx, cy = 0.5 * (width - 1), 0.5 * (height - 1)
    return np.stack([cos, -sin, cx - cx * cos + cy * sin,
                     sin, cos, cy - cx * sin - cy * cos], axis=1)


def zoom_matrices(width_zoom, height_zoom, height, width):
    """Keras's RandomZoom._get_zoom_matrix."""
    zx, zy = np.asarray(width_zoom, np.float64), np.asarray(height_zoom, np.float64)
    zero = np.zeros_like(zx)
    return np.stack([zx, zero, (width - 1) / 2 * (1 - zx), zero, zy,
                     (height - 1) / 2 * (1 - zy)], axis=1)


def translation_matrices(dx, dy):
    """Keras's RandomTranslation._get_translation_matrix (dx, dy in pixels)."""
    dx, dy = np.asarray(dx, np.float64), np.asarray(dy, np.float64)
    one, zero = np.ones_like(dx), np.zeros_like(dx)
    return np.stack([one, zero, -dx, zero, one, -dy], axis=1)


def flip_matrices(horizontal, vertical, height, width):
    """Per image: mirror the columns where ``horizontal``, the rows where ``vertical``."""
    h = np.asarray(horizontal, bool)
    v = np.asarray(vertical, bool)
    m = shift_matrices(len(h), 0, 0)
    m[h, 0], m[h, 2] = -1.0, width - 1
    m[v, 4], m[v, 5] = -1.0, height - 1
    return m


def aspect_box(height, width, target_height, target_width):
    """The largest centred window of the target aspect ratio (Keras's crop_to_aspect_ratio
    and smart_resize): (top, left, crop_height, crop_width)."""
    crop_h = max(min(height, int(float(width * target_height) / target_width)), 1)
    crop_w = max(min(width, int(float(height * target_width) / target_height)), 1)
    return (int(float(height - crop_h) / 2), int(float(width - crop_w) / 2), crop_h, crop_w)


def dense_bounding_boxes(layer, found, batched):
    """Keras's validate_bounding_boxes and densify: {"boxes" (N, B, 4), "labels" (N, B)} as
    host arrays (one image's gains the batch axis)."""
    if not isinstance(found, dict) or "boxes" not in found or "labels" not in found:
        raise ValueError(f"{_name(layer)}: expected `bounding_boxes` to be a dict with keys "
                         f"'boxes' and 'labels', got "
                         f"{sorted(found) if isinstance(found, dict) else type(found).__name__}")
    host = _ImageLayer._to_host
    try:
        boxes = np.asarray(host(found["boxes"]))
        labels = np.asarray(host(found["labels"]))
    except (ValueError, TypeError):
        boxes = labels = None
    if boxes is None or boxes.dtype.kind not in "biuf" or labels.dtype.kind not in "biuf":
        raise ValueError(f"{_name(layer)}: boxes and labels must be dense arrays of numbers "
                         f"(every image with as many boxes); pad ragged lists first (e.g. "
                         f"with MaxNumBoundingBoxes)") from None
    want = 3 if batched else 2
    if boxes.ndim != want or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:-1]:
        lead = "(batch_size, num_boxes" if batched else "(num_boxes"
        raise ValueError(f"{_name(layer)}: expected bounding_boxes['boxes'] of shape "
                         f"{lead}, 4) and 'labels' of shape {lead}) for "
                         f"{'a batch of images' if batched else 'one image'}, got boxes "
                         f"{boxes.shape} and labels {labels.shape}")
    if not batched:
        boxes, labels = boxes[None], labels[None]
    return {**found, "boxes": boxes, "labels": labels}


# -- the shared machinery -----------------------------------------------------------------

class _ImageLayer(Layer):
    """Images (N, H, W, C) resampled through a list of stages, each (matrices, output size,
    interpolation, fill_mode, fill_value); backward runs the stages' adjoints in reverse.

    Keras's dict input ``{"images", "bounding_boxes": {"boxes", "labels"}, "labels",
    "segmentation_masks"}`` (a data pipeline's, on the host) goes through ``_call_dict``:
    one ``get_random_transformation`` for the batch, then ``transform_images``,
    ``transform_bounding_boxes``, ``transform_labels`` and ``transform_segmentation_masks``
    with it, as Keras's BaseImagePreprocessingLayer.call. A layer whose box or mask transform
    pynn does not have refuses those entries by name rather than pass them through."""

    def __init__(self, bounding_box_format=None, **kwargs):
        super().__init__(**kwargs)
        self.bounding_box_format = (None if bounding_box_format is None else
                                    box_utils.check_format(_name(self),
                                                           bounding_box_format))

    def __call__(self, inputs, training=None, **kwargs):
        if isinstance(inputs, dict):
            return self._call_dict(inputs, training)
        return super().__call__(inputs, training=training, **kwargs)

    def _call_dict(self, data, training):
        if "images" not in data:
            raise ValueError(f"{_name(self)}: a dict input needs an 'images' entry, got keys "
                             f"{sorted(data)}")
        # Keras's call(data, training=True): a pipeline's dict is augmented unless told not.
        training = True if training is None else bool(training)
        images = self._host_images(data["images"], "images")
        batched = images.ndim == 4
        x = self._device(images if batched else images[None])
        if not self.built:
            self.build((None,) + tuple(x.shape[1:]))
        # The input's size for a transform whose transformation does not carry it.
        self._dict_images_shape = tuple(int(d) for d in x.shape)
        if "bounding_boxes" in data:  # checked before the draw, so a refusal costs none
            if not self.bounding_box_format:
                raise ValueError(f"{_name(self)}: you passed an input with a 'bounding_boxes' "
                                 f"key, but you didn't specify a bounding box format. Pass a "
                                 f"`bounding_box_format` argument to your "
                                 f"{type(self).__name__} layer, e.g. "
                                 f"`bounding_box_format='xyxy'`.")
            found = dense_bounding_boxes(self, data["bounding_boxes"], batched)
        transformation = self.get_random_transformation(x, training=training)
        out = dict(data)
        y = self.transform_images(x, transformation, training=training)
        out["images"] = y if batched else y[0]
        if "bounding_boxes" in data:
            boxes = self.transform_bounding_boxes(found, transformation, training=training)
            out["bounding_boxes"] = boxes if batched else {
                **boxes, "boxes": boxes["boxes"][0], "labels": boxes["labels"][0]}
        if "labels" in data:
            labels = np.asarray(self._to_host(data["labels"]))
            labels = self.transform_labels(labels if batched else labels[None], transformation,
                                           training=training)
            out["labels"] = labels if batched else labels[0]
        if "segmentation_masks" in data:
            masks = self._host_images(data["segmentation_masks"], "segmentation_masks")
            if masks.ndim != images.ndim or masks.shape[:-1] != images.shape[:-1]:
                raise ValueError(f"{_name(self)}: segmentation_masks must match the images' "
                                 f"batch and spatial shape {images.shape[:-1]}, got "
                                 f"{masks.shape}")
            masks = self.transform_segmentation_masks(
                self._device(masks if batched else masks[None]), transformation,
                training=training)
            out["segmentation_masks"] = masks if batched else masks[0]
        return out

    @staticmethod
    def _to_host(a):
        if isinstance(a, (np.ndarray, list, tuple, numbers.Number)):
            return a
        return backend.current().to_numpy(a)

    def _host_images(self, images, what):
        images = np.asarray(self._to_host(images))
        if images.dtype.kind not in "biuf" or images.ndim not in (3, 4):
            raise ValueError(f"{_name(self)}: expected {what} of rank 3 (single image) or 4 "
                             f"(batch of images) of numbers, got shape {images.shape} dtype "
                             f"{images.dtype}")
        return images

    @staticmethod
    def _device(images):
        # Keras casts to the compute dtype (float32); float64 stays float64 as pynn's layers do.
        dtype = np.float64 if images.dtype == np.float64 else np.float32
        return backend.current().asarray(np.ascontiguousarray(images, dtype), dtype)

    def transform_labels(self, labels, transformation, training=True):
        return labels

    def transform_bounding_boxes(self, bounding_boxes, transformation, training=True):
        raise NotImplementedError(f"{_name(self)}: pynn does not transform bounding boxes "
                                  f"through {type(self).__name__}; pass its dict input "
                                  f"without 'bounding_boxes'")

    def transform_segmentation_masks(self, segmentation_masks, transformation, training=True):
        raise NotImplementedError(f"{_name(self)}: pynn does not transform segmentation masks "
                                  f"through {type(self).__name__}; pass its dict input "
                                  f"without 'segmentation_masks'")

    def get_config(self):
        config = super().get_config()
        if self.bounding_box_format is not None:
            config["bounding_box_format"] = self.bounding_box_format
        return config

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"{_name(self)}: expected images of shape (None, height, width, "
                             f"channels), got {shape_str(input_shape)}")
        super().build(input_shape)

    def _resample(self, x, stages, training):
        b = backend.current()
        saved = []
        for matrices, size, interpolation, fill_mode, fill_value in stages:
            m = b.asarray(np.ascontiguousarray(matrices), x.dtype)
            saved.append((m, tuple(x.shape), interpolation, fill_mode))
            x = b.image_affine_forward(x, m, size, interpolation, fill_mode, fill_value)
        if training:
            self._cache = saved
        return x

    def backward(self, dy):
        saved, self._cache = self._cache, None
        if not self.needs_input_grad:
            return None
        if saved is None:  # an identity call (inactive outside training, or a no-op)
            return dy
        b = backend.current()
        for m, shape, interpolation, fill_mode in reversed(saved):
            dy = b.image_affine_backward(dy, m, shape, interpolation, fill_mode)
        return dy


class KeepsBoxes:
    """Keras's colour layers (and blur, erasing): a dict's bounding boxes and segmentation
    masks come back as they went in."""

    def transform_bounding_boxes(self, bounding_boxes, transformation, training=True):
        return bounding_boxes

    def transform_segmentation_masks(self, segmentation_masks, transformation, training=True):
        return segmentation_masks


class _RandomLayer(_ImageLayer):
    """A seed and a call count: the draws of call k come from NumPy's generator keyed by
    (seed, k), never from the kernels."""

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = int(seed) if seed is not None else utils.new_seed()
        self._calls = 0

    def _rng(self):
        rng = np.random.default_rng([self.seed & (2**63 - 1), self._calls])
        self._calls += 1
        return rng

    def _transformation_rng(self, seed):
        # An explicit seed leaves the call count alone, so a resumed fit keeps its stream.
        return np.random.default_rng(seed) if seed is not None else self._rng()

    def runtime_state(self):
        return {"calls": self._calls}

    def set_runtime_state(self, state):
        calls = state.get("calls", 0)
        if isinstance(calls, bool) or not isinstance(calls, int) or calls < 0:
            raise ValueError(f"{_name(self)}: calls must be a non-negative int, got {calls!r}")
        self._calls = calls

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


# -- deterministic layers -----------------------------------------------------------------

class Rescaling(Layer):
    """y = x * scale + offset (scale and offset numbers or per-channel lists)."""

    supports_masking = True  # the input's mask passes on, as in Keras 3

    def __init__(self, scale, offset=0.0, **kwargs):
        super().__init__(**kwargs)
        self.scale, self.offset = scale, offset
        for what, v in (("scale", scale), ("offset", offset)):
            a = np.asarray(v, np.float64)
            if a.ndim > 1 or a.size == 0 or not np.all(np.isfinite(a)):
                raise ValueError(f"{_name(self)}: {what} must be a finite number or a list of "
                                 f"per-channel numbers, got {v!r}")

    def build(self, input_shape):
        k = max(np.size(self.scale), np.size(self.offset))
        if k > 1 and input_shape[-1] != k:
            raise ValueError(f"{_name(self)}: {k} per-channel values for input shape "
                             f"{shape_str(input_shape)}")
        super().build(input_shape)

    def _vectors(self, dtype):
        k = max(np.size(self.scale), np.size(self.offset))
        b = backend.current()
        return [b.asarray(np.broadcast_to(np.asarray(v, np.float64), (k,)).copy(), dtype)
                for v in (self.scale, self.offset)]

    def call(self, x, training=False):
        scale, offset = self._vectors(x.dtype)
        if training:
            self._cache = scale
        return backend.current().channel_affine_forward(x, scale, offset)

    def backward(self, dy):
        scale, self._cache = self._cache, None
        if not self.needs_input_grad:
            return None
        # dy/dx is the scale alone: the same op without the offset.
        return backend.current().channel_affine_forward(dy, scale, None)

    def get_config(self):
        def plain(v):
            return np.asarray(v, np.float64).tolist()
        return {**super().get_config(), "scale": plain(self.scale), "offset": plain(self.offset)}


class Normalization(Layer):
    """Keras 3's Normalization: y = (x - mean) / max(sqrt(variance), 1e-7) over the kept
    ``axis`` (or its inverse); mean, variance and count are Keras's non-trainable weights
    unless given. The kept axes must be the trailing ones (or axis=None: one mean)."""

    supports_masking = True  # the input's mask passes on, as in Keras 3

    def __init__(self, axis=-1, mean=None, variance=None, invert=False, **kwargs):
        super().__init__(**kwargs)
        if (mean is None) != (variance is None):
            raise ValueError(f"{_name(self)}: pass both mean and variance, or neither")
        self.axis = (axis,) if isinstance(axis, int) else (None if axis is None
                                                          else tuple(axis))
        self.input_mean, self.input_variance = mean, variance
        self.invert = bool(invert)

    def _kept(self, input_shape):
        rank = len(input_shape)
        if self.axis is None:
            return ()
        kept = sorted(a % rank for a in self.axis)
        if 0 in kept or kept != list(range(rank - len(kept), rank)):
            raise ValueError(f"{_name(self)}: axis {self.axis} must name trailing axes of input "
                             f"shape {shape_str(input_shape)} (not the batch axis)")
        return tuple(input_shape[a] for a in kept)

    def build(self, input_shape):
        shape = self._kept(input_shape)
        if any(d is None for d in shape):
            raise ValueError(f"{_name(self)}: the normalized axes need known sizes, got "
                             f"{shape_str(input_shape)}")
        if self.input_mean is None:
            self.mean = self.add_weight("mean", shape, "zeros", trainable=False)
            self.variance = self.add_weight("variance", shape, "ones", trainable=False)
            self.count = self.add_weight("count", (), "zeros", trainable=False)
        super().build(input_shape)

    def adapt(self, data, batch_size=None, steps=None):
        """Mean and (biased) variance of ``data`` over every axis but the kept ones: an array,
        or an iterable of batches (x or (x, ...)), ``steps`` of them at most."""
        if isinstance(data, np.ndarray) or np.isscalar(data):
            data = [np.asarray(data)]
        total, s1, s2 = 0, None, None
        for i, batch in enumerate(data):
            if steps is not None and i >= steps:
                break
            if isinstance(batch, (tuple, list)):
                batch = batch[0]
            batch = np.asarray(batch, np.float64)
            if not self.built:
                self.build((None,) + batch.shape[1:])
            k = math.prod(self._kept(batch.shape)) if self.axis is not None else 1
            rows = batch.reshape(-1, k)
            total += rows.shape[0]
            part1, part2 = rows.sum(axis=0), (rows * rows).sum(axis=0)
            s1 = part1 if s1 is None else s1 + part1
            s2 = part2 if s2 is None else s2 + part2
        if not total:
            raise ValueError(f"{_name(self)}: adapt() got no data")
        if self.input_mean is not None:
            raise ValueError(f"{_name(self)}: adapt() with a fixed mean and variance")
        mean = s1 / total
        variance = np.maximum(s2 / total - mean * mean, 0.0)
        shape = self.mean.shape
        self.set_weights([mean.reshape(shape), variance.reshape(shape), np.array(total)])

    def _vectors(self, dtype):
        """(scale, offset) on the backend, rebuilt only when the weights change (set_weights
        and adapt replace the arrays), so a training step downloads nothing."""
        b = backend.current()
        values = (None, None) if self.input_mean is not None else (self.mean.value,
                                                                   self.variance.value)
        cached = getattr(self, "_vector_cache", None)
        if cached is not None and cached[0] is b and cached[1] == dtype \
                and all(a is c for a, c in zip(cached[2], values)):
            return cached[3]
        vectors = self._build_vectors(b, dtype)
        self._vector_cache = (b, dtype, values, vectors)
        return vectors

    def _build_vectors(self, b, dtype):
        if self.input_mean is not None:
            k = math.prod(self._kept(self.input_shape)) if self.axis is not None else 1
            mean = np.broadcast_to(np.asarray(self.input_mean, np.float64), (k,))
            variance = np.broadcast_to(np.asarray(self.input_variance, np.float64), (k,))
        else:
            mean = np.asarray(b.to_numpy(self.mean.value), np.float64).reshape(-1)
            variance = np.asarray(b.to_numpy(self.variance.value), np.float64).reshape(-1)
        std = np.maximum(np.sqrt(variance), EPSILON)
        if self.invert:
            scale, offset = std, mean
        else:
            scale, offset = 1.0 / std, -mean / std
        return b.asarray(np.ascontiguousarray(scale), dtype), b.asarray(
            np.ascontiguousarray(offset), dtype)

    def call(self, x, training=False):
        scale, offset = self._vectors(x.dtype)
        if training:
            self._cache = scale
        return backend.current().channel_affine_forward(x, scale, offset)

    def backward(self, dy):
        scale, self._cache = self._cache, None
        if not self.needs_input_grad:
            return None
        return backend.current().channel_affine_forward(dy, scale, None)

    def get_config(self):
        def plain(v):
            return None if v is None else np.asarray(v, np.float64).tolist()
        axis = None if self.axis is None else (self.axis[0] if len(self.axis) == 1
                                               else list(self.axis))
        return {**super().get_config(), "axis": axis, "mean": plain(self.input_mean),
                "variance": plain(self.input_variance), "invert": self.invert}


class Resizing(_ImageLayer):
    """Keras 3's Resizing (torch backend): bilinear or nearest ('nearest-exact') resize,
    optionally after the centred crop to the target aspect ratio."""

    def __init__(self, height, width, interpolation="bilinear", crop_to_aspect_ratio=False,
                 pad_to_aspect_ratio=False, fill_mode="constant", fill_value=0.0,
                 antialias=False, data_format=None, **kwargs):
        super().__init__(**kwargs)
        _data_format(self, data_format)
        self.height, self.width = int(height), int(width)
        if self.height < 1 or self.width < 1:
            raise ValueError(f"{_name(self)}: height and width must be >= 1, got "
                             f"({height}, {width})")
        self.interpolation = _choice(self, "interpolation", interpolation, INTERPOLATIONS)
        self.crop_to_aspect_ratio = bool(crop_to_aspect_ratio)
        self.pad_to_aspect_ratio = bool(pad_to_aspect_ratio)
        if antialias:
            raise NotImplementedError(f"{_name(self)}: antialias is not supported")
        if self.crop_to_aspect_ratio and self.pad_to_aspect_ratio:
            raise ValueError(f"{_name(self)}: only one of crop_to_aspect_ratio and "
                             f"pad_to_aspect_ratio can be True")
        self.fill_mode, self.fill_value = fill_mode, fill_value

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.height, self.width, input_shape[3])

    def stages(self, n, h, w, interpolation=None):
        interpolation = interpolation or self.interpolation
        top, left, ch, cw = 0, 0, h, w
        stages = []
        if self.crop_to_aspect_ratio:
            top, left, ch, cw = aspect_box(h, w, self.height, self.width)
            stages.append((shift_matrices(n, top, left), (ch, cw), "nearest", "constant", 0.0))
        elif self.pad_to_aspect_ratio:
            # Keras (torch) pads fill_value evenly on both sides of the short axis, so the
            # padded image is h + 2 * top high (not Keras's rounded pad_height).
            pad_h = max(h, int(float(w * self.height) / self.width))
            pad_w = max(w, int(float(h * self.width) / self.height))
            top, left = int(float(pad_h - h) / 2), int(float(pad_w - w) / 2)
            ch, cw = h + 2 * top, w + 2 * left
            stages.append((shift_matrices(n, -top, -left), (ch, cw), "nearest", "constant",
                           float(self.fill_value)))
        stages.append((resize_matrices(n, (ch, cw), (self.height, self.width),
                                       interpolation), (self.height, self.width),
                       interpolation, "nearest", 0.0))
        return stages

    def call(self, x, training=False):
        n, h, w, _ = x.shape
        return self._resample(x, self.stages(n, h, w), training)

    def get_random_transformation(self, images, training=True, seed=None):
        """Keras's: the input's (height, width)."""
        return int(images.shape[1]), int(images.shape[2])

    def transform_images(self, images, transformation=None, training=True):
        return self.call(images, training=training)

    def transform_segmentation_masks(self, segmentation_masks, transformation=None,
                                     training=True):
        n, h, w, _ = segmentation_masks.shape
        return self._resample(segmentation_masks, self.stages(n, h, w, "nearest"), False)

    def transform_bounding_boxes(self, bounding_boxes, transformation, training=True):
        """Keras's: boxes scaled (after the aspect window's crop or pad), clipped to the
        output; Keras leaves an all -1 or all 0 padding box at 0 (its label clipped to -1)."""
        in_h, in_w = transformation
        raw = np.asarray(bounding_boxes["boxes"])
        padding = np.all(raw == -1, axis=-1) | np.all(raw == 0, axis=-1)
        found = box_utils.convert_format(bounding_boxes, self.bounding_box_format, "xyxy",
                                         in_h, in_w)
        boxes = found["boxes"]
        if self.pad_to_aspect_ratio:
            # Scale to fit, centred by half the leftover, floored (Keras's offsets).
            scale_x = scale_y = min(np.float32(self.height / in_h),
                                    np.float32(self.width / in_w))
            top = -((self.height - np.float32(in_h) * scale_y) // 2)
            left = -((self.width - np.float32(in_w) * scale_x) // 2)
        elif self.crop_to_aspect_ratio:
            source, target = in_w / in_h, self.width / self.height
            wider = source > target
            new_w = self.height * source if wider else self.width
            new_h = self.height if wider else self.width / source
            scale_x, scale_y = np.float32(new_w / in_w), np.float32(new_h / in_h)
            left, top = np.float32((new_w - self.width) // 2), \
                np.float32((new_h - self.height) // 2)
        else:
            scale_x = np.float32(self.width / in_w)
            scale_y = np.float32(self.height / in_h)
            left = top = np.float32(0.0)
        x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
        found["boxes"] = np.stack([x1 * scale_x - left, y1 * scale_y - top,
                                   x2 * scale_x - left, y2 * scale_y - top], axis=-1)
        found = box_utils.clip_to_image_size(found, self.height, self.width, "xyxy")
        found["boxes"] = np.where(padding[..., None], np.float32(0.0), found["boxes"])
        return box_utils.convert_format(found, "xyxy", self.bounding_box_format, self.height,
                                     self.width)

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width,
                "interpolation": self.interpolation,
                "crop_to_aspect_ratio": self.crop_to_aspect_ratio,
                "pad_to_aspect_ratio": self.pad_to_aspect_ratio, "fill_mode": self.fill_mode,
                "fill_value": self.fill_value}


def _crop_or_resize(n, h, w, height, width, top=None, left=None):
    """A (height, width) crop at (top, left) (centred when None) when it fits, else Keras's
    smart_resize: the centred aspect-ratio window resized bilinearly."""
    if h >= height and w >= width:
        top = (h - height) // 2 if top is None else top
        left = (w - width) // 2 if left is None else left
        return [(shift_matrices(n, top, left), (height, width), "nearest", "constant", 0.0)]
    top, left, ch, cw = aspect_box(h, w, height, width)
    return [(shift_matrices(n, top, left), (ch, cw), "nearest", "constant", 0.0),
            (resize_matrices(n, (ch, cw), (height, width), "bilinear"), (height, width),
             "bilinear", "nearest", 0.0)]


def window_boxes(bounding_boxes, bounding_box_format, window, in_size, out_size):
    """Keras's CenterCrop box transform: xyxy boxes clipped to the window (top, left,
    height, width) and moved to its corner, scaled to out_size when the window is resized,
    clipped to the output (a box left empty gets label -1)."""
    top, left, crop_h, crop_w = window
    found = box_utils.convert_format(bounding_boxes, bounding_box_format, "xyxy", *in_size)
    x1, y1, x2, y2 = (found["boxes"][..., i] for i in range(4))
    found["boxes"] = np.stack([np.clip(x1, left, left + crop_w) - left,
                               np.clip(y1, top, top + crop_h) - top,
                               np.clip(x2, left, left + crop_w) - left,
                               np.clip(y2, top, top + crop_h) - top], axis=-1)
    if (crop_h, crop_w) != tuple(out_size):
        found = box_utils.convert_format(found, "xyxy", "rel_xyxy", crop_h, crop_w)
        found = box_utils.convert_format(found, "rel_xyxy", "xyxy", *out_size)
    found = box_utils.clip_to_image_size(found, *out_size, "xyxy")
    return box_utils.convert_format(found, "xyxy", bounding_box_format, *out_size)


class CenterCrop(_ImageLayer):
    """The centred (height, width) window; an image smaller than it is smart-resized."""

    def __init__(self, height, width, data_format=None, **kwargs):
        super().__init__(**kwargs)
        _data_format(self, data_format)
        self.height, self.width = int(height), int(width)
        if self.height < 1 or self.width < 1:
            raise ValueError(f"{_name(self)}: height and width must be >= 1, got "
                             f"({height}, {width})")

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.height, self.width, input_shape[3])

    def call(self, x, training=False):
        n, h, w, _ = x.shape
        return self._resample(x, _crop_or_resize(n, h, w, self.height, self.width), training)

    def get_random_transformation(self, images, training=True, seed=None):
        """Keras's: {"input_shape"}."""
        return {"input_shape": tuple(int(d) for d in images.shape)}

    def transform_images(self, images, transformation=None, training=True):
        return self.call(images, training=training)

    def transform_segmentation_masks(self, segmentation_masks, transformation=None,
                                     training=True):
        return self.call(segmentation_masks, training=False)

    def transform_bounding_boxes(self, bounding_boxes, transformation, training=True):
        h, w = transformation["input_shape"][-3:-1]
        if h >= self.height and w >= self.width:
            window = (int((h - self.height) / 2), int((w - self.width) / 2), self.height,
                      self.width)
        else:
            window = aspect_box(h, w, self.height, self.width)
        return window_boxes(bounding_boxes, self.bounding_box_format, window, (h, w),
                            (self.height, self.width))

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width}


# -- random layers ------------------------------------------------------------------------

class RandomCrop(_RandomLayer):
    """Training: one random (height, width) window for the batch (Keras draws one offset);
    otherwise, or when the image is not larger, the centred aspect window resized."""

    def __init__(self, height, width, seed=None, data_format=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        _data_format(self, data_format)
        self.height, self.width = int(height), int(width)
        if self.height < 1 or self.width < 1:
            raise ValueError(f"{_name(self)}: height and width must be >= 1, got "
                             f"({height}, {width})")

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.height, self.width, input_shape[3])

    def call(self, x, training=False):
        return self.transform_images(x, self.get_random_transformation(x, training), training)

    def get_random_transformation(self, images, training=True, seed=None):
        """Keras's (h_start, w_start) of the batch's window: drawn in training when the
        image is larger than the crop, else the centred aspect window's (no draw)."""
        _, h, w, _ = images.shape
        if not (training and h > self.height and w > self.width):
            return aspect_box(h, w, self.height, self.width)[:2]
        rng = self._transformation_rng(seed)
        top = int(rng.uniform(0, h - self.height + 1))
        left = int(rng.uniform(0, w - self.width + 1))
        return top, left

    def transform_images(self, images, transformation, training=True):
        x = images
        n, h, w, _ = x.shape
        if training and h > self.height and w > self.width:
            top, left = (int(np.asarray(v).reshape(-1)[0]) for v in transformation)
            stages = [(shift_matrices(n, top, left), (self.height, self.width), "nearest",
                       "constant", 0.0)]
        else:
            top, left, ch, cw = aspect_box(h, w, self.height, self.width)
            stages = [(shift_matrices(n, top, left), (ch, cw), "nearest", "constant", 0.0)]
            if (ch, cw) != (self.height, self.width):
                stages.append((resize_matrices(n, (ch, cw), (self.height, self.width),
                                               "bilinear"), (self.height, self.width),
                               "bilinear", "nearest", 0.0))
        return self._resample(x, stages, training)

    def transform_segmentation_masks(self, segmentation_masks, transformation, training=True):
        return self.transform_images(segmentation_masks, transformation, training)

    def transform_bounding_boxes(self, bounding_boxes, transformation, training=True):
        """Training: Keras 3.15's formula as it stands, which shifts x by the window's top
        and y by its left, floors at 0 and neither clips nor touches labels (the boxes read
        in the crop's size). Otherwise the images were the centred aspect window resized
        (pynn's inference crop), and the boxes follow it as CenterCrop's do."""
        if training:
            top, left = (np.float32(np.asarray(v).reshape(-1)[0]) for v in transformation)
            boxes = box_utils.convert_format(bounding_boxes["boxes"], self.bounding_box_format,
                                             "xyxy", self.height, self.width)
            a, b, c, d = (boxes[..., i] for i in range(4))
            boxes = np.stack([np.maximum(a - top, 0), np.maximum(b - left, 0),
                              np.maximum(c - top, 0), np.maximum(d - left, 0)], axis=-1)
            return {"boxes": box_utils.convert_format(boxes, "xyxy", self.bounding_box_format,
                                                      self.height, self.width),
                    "labels": bounding_boxes["labels"]}
        h, w = self._dict_images_shape[1:3]
        return window_boxes(bounding_boxes, self.bounding_box_format,
                            aspect_box(h, w, self.height, self.width), (h, w),
                            (self.height, self.width))

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width}


class RandomFlip(_RandomLayer):
    """Each image flipped with probability 1/2 along the mode's axes."""

    MODES = ("horizontal", "vertical", "horizontal_and_vertical")

    def __init__(self, mode="horizontal_and_vertical", seed=None, data_format=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        _data_format(self, data_format)
        self.mode = _choice(self, "mode", mode, self.MODES)

    def call(self, x, training=False):
        if not training:
            return x
        return self.transform_images(x, self.get_random_transformation(x), training)

    def get_random_transformation(self, images, training=True, seed=None):
        """Keras's {"flips": (N, 1, 1, 1) bool, "input_shape"}."""
        if not training:
            return None
        n = int(images.shape[0])
        flips = self._transformation_rng(seed).uniform(size=n) <= 0.5
        return {"flips": flips.reshape(n, 1, 1, 1), "input_shape": tuple(images.shape)}

    def transform_images(self, images, transformation, training=True):
        if not training or transformation is None:
            return images
        x = images
        n, h, w, _ = x.shape
        flips = np.asarray(transformation["flips"], bool).reshape(n)
        horizontal = flips if "horizontal" in self.mode else np.zeros(n, bool)
        vertical = flips if "vertical" in self.mode else np.zeros(n, bool)
        return self._resample(x, [(flip_matrices(horizontal, vertical, h, w), (h, w),
                                   "nearest", "constant", 0.0)], training)

    def transform_segmentation_masks(self, segmentation_masks, transformation, training=True):
        return self.transform_images(segmentation_masks, transformation, training)

    def transform_bounding_boxes(self, bounding_boxes, transformation, training=True):
        """Keras's: flipped in rel_xyxy, then clipped as xyxy boxes of the input's size
        (which, on relative coordinates, floors them at 0 and clears empty boxes' labels)."""
        if not training or transformation is None:
            return bounding_boxes
        h, w = transformation["input_shape"][-3:-1]
        n = np.shape(bounding_boxes["boxes"])[0]
        flips = np.asarray(transformation["flips"], bool).reshape(n, 1, 1)
        found = box_utils.convert_format(bounding_boxes, self.bounding_box_format, "rel_xyxy",
                                         h, w)
        boxes = found["boxes"]
        if "horizontal" in self.mode:
            x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
            boxes = np.where(flips, np.stack([1 - x2, y1, 1 - x1, y2], axis=-1), boxes)
        if "vertical" in self.mode:
            x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
            boxes = np.where(flips, np.stack([x1, 1 - y2, x2, 1 - y1], axis=-1), boxes)
        found = box_utils.clip_to_image_size({**found, "boxes": boxes}, h, w, "xyxy")
        return box_utils.convert_format(found, "rel_xyxy", self.bounding_box_format, h, w)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


class _RandomAffine(_RandomLayer):
    """fill_mode, interpolation and fill_value of the rotation, zoom and translation."""

    def __init__(self, fill_mode="reflect", interpolation="bilinear", seed=None,
                 fill_value=0.0, data_format=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        _data_format(self, data_format)
        self.fill_mode = _choice(self, "fill_mode", fill_mode, FILL_MODES)
        self.interpolation = _choice(self, "interpolation", interpolation, INTERPOLATIONS)
        self.fill_value = float(fill_value)

    def call(self, x, training=False):
        if not training:
            return x
        return self.transform_images(x, self.get_random_transformation(x), training)

    def get_random_transformation(self, images, training=True, seed=None):
        """Keras's transformation dict for this batch (NumPy arrays)."""
        if not training:
            return None
        n, h, w, _ = images.shape
        return self.draw(self._transformation_rng(seed), int(n), int(h), int(w))

    def transform_images(self, images, transformation, training=True):
        if not training or transformation is None:
            return images
        n, h, w, _ = images.shape
        m = self.matrices(transformation, int(n), int(h), int(w))
        return self._resample(images, [(m, (h, w), self.interpolation, self.fill_mode,
                                        self.fill_value)], training)

    def transform_segmentation_masks(self, segmentation_masks, transformation, training=True):
        """Keras's base intent (its rotation, zoom and translation call a missing
        _transform_images): the images' transformation read nearest, so classes stay whole."""
        if not training or transformation is None:
            return segmentation_masks
        n, h, w, _ = segmentation_masks.shape
        m = self.matrices(transformation, int(n), int(h), int(w))
        return self._resample(segmentation_masks, [(m, (h, w), "nearest", self.fill_mode,
                                                    self.fill_value)], False)

    def transform_bounding_boxes(self, bounding_boxes, transformation, training=True):
        if not training or transformation is None:
            return bounding_boxes
        return self.boxes(bounding_boxes, transformation)

    def get_config(self):
        return {**super().get_config(), "fill_mode": self.fill_mode,
                "interpolation": self.interpolation, "fill_value": self.fill_value}


class RandomRotation(_RandomAffine):
    """factor: a fraction of a full turn (a number f is [-f, f])."""

    def __init__(self, factor, fill_mode="reflect", interpolation="bilinear", seed=None,
                 fill_value=0.0, data_format=None, **kwargs):
        super().__init__(fill_mode, interpolation, seed, fill_value, data_format, **kwargs)
        self.factor = _factor(self, "factor", factor)

    def draw(self, rng, n, h, w):
        degrees = rng.uniform(self.factor[0] * 360.0, self.factor[1] * 360.0, size=n)
        return {"angle": degrees, "rotation_matrix": rotation_matrices(degrees, h, w),
                "image_height": h, "image_width": w, "batch_size": n}

    def matrices(self, transformation, n, h, w):
        # From the angle, not the matrix: Keras's rotation_matrix is its 8-entry projective
        # form, and the angle is what both sides share.
        return rotation_matrices(np.asarray(transformation["angle"], np.float64).reshape(n),
                                 h, w)

    def boxes(self, bounding_boxes, transformation):
        """Keras 3.15's: the corners of the boxes as given (it reads them as xyxy whatever
        bounding_box_format says) rotated about the centre, clipped, then written in
        bounding_box_format."""
        h, w = transformation["image_height"], transformation["image_width"]
        angle = np.asarray(transformation["angle"], np.float32).reshape(-1)
        zeros = np.zeros_like(angle)
        found = dict(bounding_boxes)
        found["boxes"] = box_utils.affine_transform(
            np.asarray(bounding_boxes["boxes"]), angle, zeros, zeros, zeros + 1, zeros, zeros,
            h, w)
        found = box_utils.clip_to_image_size(found, h, w, "xyxy")
        return box_utils.convert_format(found, "xyxy", self.bounding_box_format, h, w)

    def get_config(self):
        return {**super().get_config(), "factor": list(self.factor)}


class RandomZoom(_RandomAffine):
    """Zoom 1 + uniform(height_factor) per image; width_factor None keeps the aspect."""

    def __init__(self, height_factor, width_factor=None, fill_mode="reflect",
                 interpolation="bilinear", seed=None, fill_value=0.0, data_format=None,
                 **kwargs):
        super().__init__(fill_mode, interpolation, seed, fill_value, data_format, **kwargs)
        self.height_factor = _factor(self, "height_factor", height_factor)
        self.width_factor = (None if width_factor is None
                             else _factor(self, "width_factor", width_factor))

    def draw(self, rng, n, h, w):
        hz = 1.0 + rng.uniform(*self.height_factor, size=n)
        wz = hz if self.width_factor is None else 1.0 + rng.uniform(*self.width_factor, size=n)
        return {"height_zoom": hz.reshape(n, 1), "width_zoom": wz.reshape(n, 1),
                "input_shape": (n, h, w)}

    def matrices(self, transformation, n, h, w):
        return zoom_matrices(np.asarray(transformation["width_zoom"], np.float64).reshape(n),
                             np.asarray(transformation["height_zoom"], np.float64).reshape(n),
                             h, w)

    def boxes(self, bounding_boxes, transformation):
        """Keras's: boxes clipped to where the zoom takes the image's corners (0, 0) and
        (w, h), made relative to that window and clipped to it, then read in the input's
        size."""
        n, h, w = transformation["input_shape"][:3]
        found = box_utils.convert_format(bounding_boxes, self.bounding_box_format, "xyxy",
                                         h, w)
        zx = np.asarray(transformation["width_zoom"], np.float32).reshape(n, 1)
        zy = np.asarray(transformation["height_zoom"], np.float32).reshape(n, 1)
        w_start = np.float32((w - 1) / 2) * (1 - zx)
        h_start = np.float32((h - 1) / 2) * (1 - zy)
        w_end, h_end = zx * np.float32(w) + w_start, zy * np.float32(h) + h_start
        x1, y1, x2, y2 = (found["boxes"][..., i] for i in range(4))
        found["boxes"] = np.stack([np.clip(x1, w_start, w_end) - w_start,
                                   np.clip(y1, h_start, h_end) - h_start,
                                   np.clip(x2, w_start, w_end) - w_start,
                                   np.clip(y2, h_start, h_end) - h_start], axis=-1)
        found = box_utils.convert_format(found, "xyxy", "rel_xyxy", h_end - h_start,
                                         w_end - w_start)
        found = box_utils.clip_to_image_size(found, bounding_box_format="rel_xyxy")
        return box_utils.convert_format(found, "rel_xyxy", self.bounding_box_format, h, w)

    def get_config(self):
        return {**super().get_config(), "height_factor": list(self.height_factor),
                "width_factor": None if self.width_factor is None else list(self.width_factor)}


class RandomTranslation(_RandomAffine):
    """Shifts of uniform(factor) times the height / width per image."""

    def __init__(self, height_factor, width_factor, fill_mode="reflect",
                 interpolation="bilinear", seed=None, fill_value=0.0, data_format=None,
                 **kwargs):
        super().__init__(fill_mode, interpolation, seed, fill_value, data_format, **kwargs)
        self.height_factor = _factor(self, "height_factor", height_factor)
        self.width_factor = _factor(self, "width_factor", width_factor)

    def draw(self, rng, n, h, w):
        dy = rng.uniform(*self.height_factor, size=n) * h
        dx = rng.uniform(*self.width_factor, size=n) * w
        return {"translations": np.stack([dx, dy], axis=1), "input_shape": (n, h, w)}

    def matrices(self, transformation, n, h, w):
        translations = np.asarray(transformation["translations"], np.float64).reshape(n, 2)
        return translation_matrices(translations[:, 0], translations[:, 1])

    def boxes(self, bounding_boxes, transformation):
        """Keras's: boxes moved by (dx, dy) and clipped to the image."""
        n, h, w = transformation["input_shape"][:3]
        found = box_utils.convert_format(bounding_boxes, self.bounding_box_format, "xyxy",
                                         h, w)
        shift = np.asarray(transformation["translations"], np.float32).reshape(n, 1, 2)
        found["boxes"] = found["boxes"] + np.concatenate([shift, shift], axis=-1)
        found = box_utils.clip_to_image_size(found, h, w, "xyxy")
        return box_utils.convert_format(found, "xyxy", self.bounding_box_format, h, w)

    def get_config(self):
        return {**super().get_config(), "height_factor": list(self.height_factor),
                "width_factor": list(self.width_factor)}


class _RandomColor(KeepsBoxes, _RandomLayer):
    """The value_range clip of RandomContrast and RandomBrightness. Their input gradient is
    not offered: they sit at a model's input, where none is needed."""

    def backward(self, dy):
        self._cache = None
        if self.needs_input_grad:
            raise NotImplementedError(f"{_name(self)}: no input gradient (put it at the "
                                      f"model's input)")

    def call(self, x, training=False):
        if not training:
            return x
        return self.transform_images(x, self.get_random_transformation(x), training)

    def get_random_transformation(self, images, training=True, seed=None):
        """Keras's {KEY: (N, 1, 1, 1)} per-image draw."""
        n = int(images.shape[0])
        if not training:
            return {self.KEY: np.zeros((n, 1, 1, 1))}
        return {self.KEY: self.draw(self._transformation_rng(seed), n).reshape(n, 1, 1, 1)}

    def transform_images(self, images, transformation, training=True):
        if not training:
            return images
        x = images
        value = np.asarray(transformation[self.KEY], np.float64).reshape(x.shape[0])
        contrast, delta = (value, None) if self.KEY == "contrast_factor" else (None, value)
        b = backend.current()
        return b.image_adjust_forward(
            x, None if contrast is None else b.asarray(contrast, x.dtype),
            None if delta is None else b.asarray(delta, x.dtype), self.value_range)

    def get_config(self):
        return {**super().get_config(), "factor": list(self.factor),
                "value_range": list(self.value_range)}


class RandomContrast(_RandomColor):
    """(x - mean) * uniform(1 - lower, 1 + upper) + mean per image, clipped to value_range."""

    def __init__(self, factor, value_range=(0, 255), seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.factor = _factor(self, "factor", factor, bounds=(0.0, 1.0))
        self.value_range = _value_range(self, value_range)

    KEY = "contrast_factor"

    def draw(self, rng, n):
        return rng.uniform(1.0 - self.factor[0], 1.0 + self.factor[1], size=n)


class RandomBrightness(_RandomColor):
    """x + uniform(factor) * (value_range width) per image, clipped to value_range."""

    def __init__(self, factor, value_range=(0, 255), seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.factor = _factor(self, "factor", factor)
        self.value_range = _value_range(self, value_range)

    KEY = "rgb_delta"

    def draw(self, rng, n):
        lo, hi = self.value_range
        return rng.uniform(*self.factor, size=n) * (hi - lo)


# -- Keras 3's CategoryEncoding and Discretization: token ids to counts, values to bins -----
# Both are compositions of the backends' ops (embedding_forward over an identity table for
# the one-hot rows, a comparison against the boundaries, reductions), so they run on the
# model's device; neither has a gradient (their inputs are ids or the values they bin).

ENCODING_MODES = ("one_hot", "multi_hot", "count")


def _encode(layer, ids, num_tokens, mode, count_weights=None):
    """(N,) or (N, T) token ids -> Keras's CategoryEncoding output of ``mode``."""
    b = backend.current()
    shape = tuple(ids.shape)
    if len(shape) not in (1, 2):
        raise ValueError(f"{_name(layer)}: expected inputs of rank 1 or 2 (batch, tokens), "
                         f"got shape {shape}")
    table = layer.__dict__.get("_identity")
    if table is None or tuple(table.shape) != (num_tokens, num_tokens):
        table = b.asarray(np.eye(num_tokens, dtype=np.float32), np.float32)
        layer._identity = table
    try:
        rows = b.embedding_forward(ids, table)          # (N[, T], K)
    except ValueError as exc:
        raise ValueError(f"{_name(layer)}: input values must be whole numbers in [0, "
                         f"num_tokens={num_tokens}) ({exc})") from None
    if len(shape) == 1 and mode != "one_hot":   # Keras: one unbatched sample of tokens
        out = _encode(layer, b.reshape(ids, (1, shape[0])), num_tokens, mode,
                      None if count_weights is None
                      else np.asarray(count_weights).reshape(1, shape[0]))
        return b.reshape(out, (num_tokens,))
    n = shape[0]
    steps = shape[1] if len(shape) == 2 else 1
    rows = b.reshape(rows, (n, steps, num_tokens))
    if mode == "one_hot":
        return b.reshape(rows, (n, num_tokens) if steps == 1 else (n, steps, num_tokens))
    if mode == "multi_hot":
        return b.reduce_axes(rows, (1,), "max", False)
    if count_weights is not None:
        weights = b.asarray(np.asarray(count_weights, np.float32).reshape(n, steps, 1),
                            np.float32)
        rows = b.elementwise_binary(rows, weights, "multiply")
    return b.reduce_axes(rows, (1,), "sum", False)


def _encoded_shape(input_shape, num_tokens, mode):
    if mode == "one_hot" and len(input_shape) == 2 and input_shape[1] not in (1, None):
        return tuple(input_shape) + (num_tokens,)
    return (input_shape[0], num_tokens)


class CategoryEncoding(Layer):
    """Keras 3's ``CategoryEncoding(num_tokens, output_mode="multi_hot")``: token ids in
    [0, num_tokens) of (batch,) or (batch, tokens) inputs to one-hot rows, a multi-hot row
    per sample, or per-token counts (``count_weights`` a call argument, as Keras's)."""

    def __init__(self, num_tokens=None, output_mode="multi_hot", sparse=False, **kwargs):
        super().__init__(**kwargs)
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, (int, np.integer)) \
                or num_tokens < 1:
            raise ValueError(f"{_name(self)}: num_tokens must be a positive int, got "
                             f"{num_tokens!r}")
        if output_mode not in ENCODING_MODES:
            raise ValueError(f"{_name(self)}: output_mode must be one of {ENCODING_MODES}, got "
                             f"{output_mode!r}")
        if sparse:
            raise ValueError(f"{_name(self)}: sparse outputs are not supported")
        self.num_tokens, self.output_mode = int(num_tokens), output_mode

    def __call__(self, inputs, training=None, count_weights=None, **kwargs):
        if count_weights is None:
            return Layer.__call__(self, inputs, training=training, **kwargs)
        if self.output_mode != "count":
            raise ValueError(f"{_name(self)}: count_weights is only used with "
                             f"output_mode='count', got output_mode={self.output_mode!r}")
        if not self.built:
            self.build((None,) + tuple(inputs.shape[1:]))
        return _encode(self, inputs, self.num_tokens, "count", count_weights)

    def compute_output_shape(self, input_shape):
        return _encoded_shape(input_shape, self.num_tokens, self.output_mode)

    def call(self, x, training=False):
        return _encode(self, x, self.num_tokens, self.output_mode)

    def backward(self, dy):
        return None   # token ids have no gradient

    def get_config(self):
        config = super().get_config()
        config.update(num_tokens=self.num_tokens, output_mode=self.output_mode)
        return config


class Discretization(Layer):
    """Keras 3's ``Discretization(bin_boundaries)``: each value's bin, the number of
    boundaries at or below it (keras.ops.digitize), as ids or encoded as CategoryEncoding
    does (output_mode one_hot, multi_hot, count over len(bin_boundaries) + 1 tokens).
    ``num_bins`` with ``adapt`` is not supported: give the boundaries (a Keras file of an
    adapted layer holds them)."""

    def __init__(self, bin_boundaries=None, num_bins=None, epsilon=0.01, output_mode="int",
                 sparse=False, **kwargs):
        super().__init__(**kwargs)
        if bin_boundaries is None:
            raise ValueError(f"{_name(self)}: bin_boundaries are required (adapt() from "
                             f"num_bins={num_bins!r} is not supported)")
        bounds = np.asarray(bin_boundaries, np.float64)
        if bounds.ndim != 1 or bounds.size == 0 or not np.all(np.isfinite(bounds)) \
                or np.any(np.diff(bounds) < 0):
            raise ValueError(f"{_name(self)}: bin_boundaries must be a non-empty sorted list "
                             f"of finite numbers, got {bin_boundaries!r}")
        if output_mode not in ("int",) + ENCODING_MODES:
            raise ValueError(f"{_name(self)}: output_mode must be 'int' or one of "
                             f"{ENCODING_MODES}, got {output_mode!r}")
        if sparse:
            raise ValueError(f"{_name(self)}: sparse outputs are not supported")
        self.bin_boundaries = [float(v) for v in bounds]
        self.num_bins, self.epsilon, self.output_mode = num_bins, epsilon, output_mode

    def compute_output_shape(self, input_shape):
        if self.output_mode == "int":
            return tuple(input_shape)
        return _encoded_shape(input_shape, len(self.bin_boundaries) + 1, self.output_mode)

    def call(self, x, training=False):
        b = backend.current()
        if getattr(x, "dtype", np.float32) not in (np.float32, np.float64):
            x = b.asarray(np.asarray(b.to_numpy(x), np.float32), np.float32)
        bounds = b.asarray(np.asarray(self.bin_boundaries, x.dtype), x.dtype)
        above = b.elementwise_binary(b.reshape(x, tuple(x.shape) + (1,)), bounds,
                                     "greater_equal")
        ids = b.reduce_axes(above, (len(x.shape),), "sum", False)
        if self.output_mode == "int":
            return ids
        return _encode(self, ids, len(self.bin_boundaries) + 1, self.output_mode)

    def backward(self, dy):
        return None   # a step function: no gradient reaches its input

    def get_config(self):
        config = super().get_config()
        config.update(bin_boundaries=list(self.bin_boundaries), num_bins=self.num_bins,
                      epsilon=self.epsilon, output_mode=self.output_mode, sparse=False)
        return config
