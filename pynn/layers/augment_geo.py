"""Keras 3's geometric, erasing, mixing and blur augmentation layers: RandomShear,
RandomPerspective, RandomElasticTransform, RandomErasing, CutMix, MixUp, RandomGaussianBlur.

Each layer splits a call as Keras 3's do: ``get_random_transformation(images, training)``
draws the per-image parameters in NumPy (a dict under Keras's key names, from the layer's
(seed, call count) stream like pynn's other random layers; an int ``seed`` argument keys a
one-off generator instead) and
``transform_images(images, transformation, training)`` applies them with one backend op:
RandomShear is an ``image_affine`` pass, RandomPerspective an ``image_projective`` pass
(Keras's homography), CutMix and MixUp ``image_mix`` (the partner image x[perm[n]] blended
inside a box: the whole image for MixUp), RandomErasing ``image_erase``,
RandomGaussianBlur ``image_blur``, RandomElasticTransform ``image_blur`` (its noise field)
then ``image_remap``. Handing Keras's layer and pynn's the same transformation
gives the same images, which is how parity is tested. All act only in training and are the
identity otherwise (Keras); each but RandomGaussianBlur and RandomElasticTransform passes
its input gradient back through the op's adjoint (those two clip to value_range like
RandomContrast, and like it offer no input gradient: they sit at a model's input).

CutMix and MixUp mix images only inside a model (pynn's data pipeline has no map step);
called on Keras's dict ``{"images": ..., "labels": ...}`` they mix the labels too, through
``transform_labels(labels, transformation)``. RandomShear moves a dict's bounding boxes as
Keras's does; RandomErasing and RandomGaussianBlur keep them; the other layers here refuse
them by name (pynn/layers/preprocessing.py's _ImageLayer has the dict call).
"""

import numbers

import numpy as np

from pynn import backend
from pynn import bounding_boxes as box_utils
from pynn.layers.preprocessing import (
    FILL_MODES,
    INTERPOLATIONS,
    KeepsBoxes,
    _choice,
    _data_format,
    _factor,
    _name,
    _RandomLayer,
    _value_range,
)

# The projective 8-vector that reads every pixel where it is.
IDENTITY_8 = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
# Keras's CutMix adds this to its drawn alpha so Beta(alpha, alpha) stays defined at 0.
CUTMIX_ALPHA_FLOOR = 1e-6


def _number(layer, what, value, lo=None, hi=None):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{_name(layer)}: {what} must be a number, got {value!r}")
    value = float(value)
    if not np.isfinite(value) or (lo is not None and value < lo) or (
            hi is not None and value > hi):
        raise ValueError(f"{_name(layer)}: {what} must be a number in [{lo}, {hi}], got "
                         f"{value!r}")
    return value


def _unit_factor(layer, what, factor):
    """Keras's factor on [0, 1]: a number f in [0, 1] is (0, f), a pair is sorted."""
    if isinstance(factor, numbers.Real) and not isinstance(factor, bool) and not (
            0.0 <= float(factor) <= 1.0):
        raise ValueError(f"{_name(layer)}: {what} must lie in [0.0, 1.0], got {factor!r}")
    return _factor(layer, what, factor, bounds=(0.0, 1.0))


def _shear_factor(layer, what, factor):
    """Keras's RandomShear factor: a number f in [0, 1] is (-f, f); a pair is sorted. Keras
    stores a number as (-f, f) and then refuses that pair when loading its own config, so
    pynn also takes pairs in [-1, 1] and writes a symmetric pair back as the number."""
    if isinstance(factor, (tuple, list)):
        return _factor(layer, what, factor, bounds=(-1.0, 1.0))
    f = _unit_factor(layer, what, factor)[1]
    return (-f, f)


def _shear_config(pair):
    return pair[1] if pair[0] == -pair[1] else list(pair)


def _images_of(layer, images):
    shape = tuple(images.shape)
    if len(shape) != 4:
        raise ValueError(f"{_name(layer)}: expected images of shape (batch, height, width, "
                         f"channels), got shape {shape}")
    return shape


def shear_matrices(shear_factor):
    """Keras's RandomShear._get_shear_matrix: [[1, s_x, 0], [s_y, 1, 0]] per image."""
    s = np.asarray(shear_factor, np.float64).reshape(-1, 2)
    one, zero = np.ones(len(s)), np.zeros(len(s))
    return np.stack([one, s[:, 0], zero, s[:, 1], one, zero], axis=1)


def homography_matrices(start_points, end_points):
    """keras.ops.image.compute_homography_matrix: the 8-vector per image that maps an output
    (end) point to its input (start) point, in float64."""
    s = np.asarray(start_points, np.float64).reshape(-1, 4, 2)
    e = np.asarray(end_points, np.float64).reshape(-1, 4, 2)
    n = len(s)
    a = np.zeros((n, 8, 8))
    ex, ey, sx, sy = e[..., 0], e[..., 1], s[..., 0], s[..., 1]
    a[:, 0::2, 0], a[:, 0::2, 1], a[:, 0::2, 2] = ex, ey, 1.0
    a[:, 1::2, 3], a[:, 1::2, 4], a[:, 1::2, 5] = ex, ey, 1.0
    a[:, 0::2, 6], a[:, 0::2, 7] = -sx * ex, -sx * ey
    a[:, 1::2, 6], a[:, 1::2, 7] = -sy * ex, -sy * ey
    target = s.reshape(n, 8, 1).copy()
    # Corners that coincide (an image one pixel high or wide) fix no homography: Keras's
    # solve fails there, pynn keeps such an image as it is.
    singular = np.linalg.matrix_rank(a) < 8 if n else np.zeros(0, bool)
    a[singular], target[singular] = np.eye(8), IDENTITY_8[:, None]
    return np.linalg.solve(a, target)[..., 0] if n else np.zeros((0, 8))


def box_bounds(rng, n, length, ratio):
    """Keras's _compute_crop_bounds: a window of ratio * length at a uniform start."""
    crop = np.asarray(ratio, np.float64) * length
    start = rng.uniform(0.0, 1.0, size=n) * (length - crop)
    return start, start + crop


class _Augmentation(_RandomLayer):
    """call = get_random_transformation + transform_images (Keras 3's split)."""

    def call(self, x, training=False):
        if not training:
            return x
        return self.transform_images(x, self.get_random_transformation(x, training), training)

    def compute_output_shape(self, input_shape):
        return input_shape


class RandomShear(_Augmentation):
    """Shears by s_x along x and s_y along y (uniform in x_factor / y_factor, the pair's sign
    flipped with probability 1/2) about the top-left corner, Keras's matrix."""

    def __init__(self, x_factor=0.0, y_factor=0.0, interpolation="bilinear",
                 fill_mode="reflect", fill_value=0.0, data_format=None, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        _data_format(self, data_format)
        self.x_factor = _shear_factor(self, "x_factor", x_factor)
        self.y_factor = _shear_factor(self, "y_factor", y_factor)
        self.interpolation = _choice(self, "interpolation", interpolation, INTERPOLATIONS)
        self.fill_mode = _choice(self, "fill_mode", fill_mode, FILL_MODES)
        self.fill_value = _number(self, "fill_value", fill_value)

    def get_random_transformation(self, images, training=True, seed=None):
        """{"shear_factor": (N, 2) [s_x, s_y], "input_shape"}, or None outside training."""
        if not training:
            return None
        shape = _images_of(self, images)
        n = shape[0]
        rng = self._rng() if seed is None else np.random.default_rng(seed)
        invert = np.where(rng.uniform(size=(n, 1)) > 0.5, -1.0, 1.0)
        shear_y = rng.uniform(*self.y_factor, size=(n, 1))
        shear_x = rng.uniform(*self.x_factor, size=(n, 1))
        return {"shear_factor": np.concatenate([shear_x, shear_y], axis=1) * invert,
                "input_shape": tuple(int(d) for d in shape)}

    def transform_images(self, images, transformation, training=True):
        if not training or transformation is None:
            return images
        _, h, w, _ = _images_of(self, images)
        m = shear_matrices(transformation["shear_factor"])
        return self._resample(images, [(m, (h, w), self.interpolation, self.fill_mode,
                                        self.fill_value)], training)

    def transform_segmentation_masks(self, segmentation_masks, transformation, training=True):
        """The images' shear read nearest (Keras's base intent; its RandomShear has none)."""
        if not training or transformation is None:
            return segmentation_masks
        _, h, w, _ = _images_of(self, segmentation_masks)
        m = shear_matrices(transformation["shear_factor"])
        return self._resample(segmentation_masks, [(m, (h, w), "nearest", self.fill_mode,
                                                    self.fill_value)], False)

    def transform_bounding_boxes(self, bounding_boxes, transformation, training=True):
        """Keras's: in rel_xyxy, each x edge moved by -s_x times the y edge that keeps the
        box covering the sheared one, likewise y by s_y (its sign rules as Keras 3.15 writes
        them), clipped to the unit square."""
        if not training or transformation is None:
            return bounding_boxes
        h, w = transformation["input_shape"][1:3]
        found = box_utils.convert_format(bounding_boxes, self.bounding_box_format, "rel_xyxy",
                                         h, w)
        shear = np.asarray(transformation["shear_factor"], np.float32)
        sx, sy = shear[:, 0:1], shear[:, 1:2]
        x1, y1, x2, y2 = (found["boxes"][..., i] for i in range(4))
        x1 = np.where(sx < 0, x1 - sx * y1, x1 - sx * y2)
        x2 = np.where(sx < 0, x2 - sx * y2, x2 - sx * y1)
        y1 = np.where(sy > 0, y1 - sy * x2, y1 - sy * x1)
        y2 = np.where(sy > 0, y2 - sy * x1, y2 - sy * x2)
        found["boxes"] = np.stack([x1, y1, x2, y2], axis=-1)
        found = box_utils.clip_to_image_size(found, h, w, "rel_xyxy")
        return box_utils.convert_format(found, "rel_xyxy", self.bounding_box_format, h, w)

    def get_config(self):
        return {**super().get_config(), "x_factor": _shear_config(self.x_factor),
                "y_factor": _shear_config(self.y_factor), "interpolation": self.interpolation,
                "fill_mode": self.fill_mode, "fill_value": self.fill_value,
                "data_format": "channels_last"}


class RandomPerspective(_Augmentation):
    """Each image (with probability uniform(factor)) moves its corners by up to scale / 2 of
    their coordinates and is resampled through the homography; fill_mode constant."""

    def __init__(self, factor=1.0, scale=1.0, interpolation="bilinear", fill_value=0.0,
                 seed=None, data_format=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        _data_format(self, data_format)
        self.factor = _unit_factor(self, "factor", factor)
        self.scale = _number(self, "scale", scale, 0.0, 1.0)
        self.interpolation = _choice(self, "interpolation", interpolation, INTERPOLATIONS)
        self.fill_value = _number(self, "fill_value", fill_value)

    def get_random_transformation(self, images, training=True, seed=None):
        """{"apply_perspective": (N,) bool, "start_points", "end_points": (N, 4, 2) corner
        (x, y) pairs, "input_shape"}, or None outside training."""
        if not training:
            return None
        n, h, w, _ = _images_of(self, images)
        rng = self._rng() if seed is None else np.random.default_rng(seed)
        probability = rng.uniform(*self.factor, size=n)
        apply = rng.uniform(0.0, 1.0, size=n) < probability
        shift = rng.uniform(-0.5 * self.scale, 0.5 * self.scale, size=(n, 4, 2))
        start = np.repeat(np.array([[[0.0, 0.0], [w - 1, 0.0], [0.0, h - 1],
                                     [w - 1, h - 1]]]), n, axis=0)
        return {"apply_perspective": apply, "start_points": start,
                "end_points": start + start * shift,
                "input_shape": tuple(int(d) for d in images.shape)}

    def transform_images(self, images, transformation, training=True):
        if not training or transformation is None:
            return images
        n, h, w, _ = _images_of(self, images)
        t = homography_matrices(transformation["start_points"], transformation["end_points"])
        # An image left alone reads itself: the identity samples every pixel exactly.
        keep = ~np.asarray(transformation["apply_perspective"], bool).reshape(n)
        t[keep] = IDENTITY_8
        b = backend.current()
        m = b.asarray(np.ascontiguousarray(t), images.dtype)
        self._cache = (m, tuple(images.shape))
        return b.image_projective_forward(images, m, (h, w), self.interpolation, "constant",
                                          self.fill_value)

    def transform_bounding_boxes(self, bounding_boxes, transformation, training=True):
        """Keras's: each box's corners through the inverse homography (output points to
        input ones, inverted), the box around them where the image was warped, clipped;
        Keras 3.15 hands them back as xyxy whatever bounding_box_format says, and so does
        this."""
        if not training or transformation is None:
            return bounding_boxes
        h, w = transformation["input_shape"][1:3]
        found = box_utils.convert_format(bounding_boxes, self.bounding_box_format, "xyxy",
                                         h, w)
        boxes = found["boxes"]
        n = boxes.shape[0]
        homography = np.concatenate([homography_matrices(transformation["start_points"],
                                                         transformation["end_points"]),
                                     np.ones((n, 1))], axis=1).reshape(n, 3, 3)
        forward = np.linalg.inv(homography)
        x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
        corners = np.stack([np.stack([x1, y1], -1), np.stack([x2, y2], -1),
                            np.stack([x1, y2], -1), np.stack([x2, y1], -1)], axis=2)
        moved = np.einsum("nbkj,nij->nbki", corners, forward[:, :, :2]) \
            + forward[:, None, None, :, 2]
        xy = moved[..., :2] / moved[..., 2:]
        warped = np.concatenate([xy.min(axis=2), xy.max(axis=2)], axis=-1).astype(boxes.dtype)
        apply = np.asarray(transformation["apply_perspective"], bool).reshape(n, 1, 1)
        found["boxes"] = np.where(apply, warped, boxes)
        return box_utils.clip_to_image_size(found, h, w, "xyxy")

    def backward(self, dy):
        saved, self._cache = self._cache, None
        if not self.needs_input_grad:
            return None
        if saved is None:
            return dy
        m, shape = saved
        return backend.current().image_projective_backward(dy, m, shape, self.interpolation,
                                                           "constant")

    def get_config(self):
        return {**super().get_config(), "factor": list(self.factor), "scale": self.scale,
                "interpolation": self.interpolation, "fill_value": self.fill_value,
                "data_format": "channels_last"}


class _Mixing(_Augmentation):
    """image_mix through a permutation, weights and boxes; backward is the op's adjoint."""

    def _mix(self, images, permutation, weights, boxes, training):
        b = backend.current()
        w = b.asarray(np.ascontiguousarray(weights, np.float64), images.dtype)
        bx = b.asarray(np.ascontiguousarray(boxes, np.float64), images.dtype)
        perm = np.asarray(permutation)
        if training:
            self._cache = (perm, w, bx)
        return b.image_mix_forward(images, perm, w, bx)

    def backward(self, dy):
        saved, self._cache = self._cache, None
        if not self.needs_input_grad:
            return None
        if saved is None:
            return dy
        return backend.current().image_mix_backward(dy, *saved)

    def transform_labels(self, labels, transformation, training=True):
        """Keras's mixed labels: w * labels + (1 - w) * labels[perm] (host arrays)."""
        if not training or transformation is None:
            return labels
        labels = np.asarray(labels)
        w = np.asarray(transformation["mix_weight"], np.float64).reshape(-1, 1)
        perm = np.asarray(transformation["permutation_order"])
        return w * labels + (1.0 - w) * labels[perm]


class MixUp(_Mixing):
    """y = w * x + (1 - w) * x[perm], w ~ Beta(alpha, alpha) per image, perm a shuffle."""

    def __init__(self, alpha=0.2, data_format=None, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        _data_format(self, data_format)
        self.alpha = _number(self, "alpha", alpha, 0.0)
        if self.alpha <= 0.0:
            raise ValueError(f"{_name(self)}: alpha must be a number > 0, got {alpha!r}")

    def get_random_transformation(self, images, training=True, seed=None):
        """{"mix_weight": (N,), "permutation_order": (N,) ints}."""
        n = _images_of(self, images)[0]
        rng = self._rng() if seed is None else np.random.default_rng(seed)
        return {"permutation_order": rng.permutation(n),
                "mix_weight": rng.beta(self.alpha, self.alpha, size=n)}

    def transform_images(self, images, transformation, training=True):
        if not training or transformation is None:
            return images
        n, h, w, _ = _images_of(self, images)
        boxes = np.tile([0.0, w, 0.0, h], (n, 1))
        return self._mix(images, transformation["permutation_order"],
                         transformation["mix_weight"], boxes, training)

    def transform_segmentation_masks(self, segmentation_masks, transformation, training=True):
        """Keras's: a dict's masks are not blended. (Its boxes are refused: Keras 3.15
        appends the partner's boxes along the box axis but its labels along the batch axis,
        so its boxes and labels no longer pair up.)"""
        return segmentation_masks

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "data_format": "channels_last"}


class CutMix(_Mixing):
    """A box of each image, of area 1 - w (w ~ Beta(a, a), a ~ uniform(factor)), replaced by
    the same box of x[perm]; mix_weight is 1 - the box's share of the image."""

    def __init__(self, factor=1.0, seed=None, data_format=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        _data_format(self, data_format)
        self.factor = _unit_factor(self, "factor", factor)

    def get_random_transformation(self, images, training=True, seed=None):
        """{"permutation_order": (N,), "boxes": (N, 4) [x0, x1, y0, y1], "mix_weight": (N,)},
        or None outside training."""
        if not training:
            return None
        n, h, w, _ = _images_of(self, images)
        rng = self._rng() if seed is None else np.random.default_rng(seed)
        alpha = rng.uniform(*self.factor) + CUTMIX_ALPHA_FLOOR
        ratio = np.sqrt(1.0 - rng.beta(alpha, alpha, size=n))
        x0, x1 = box_bounds(rng, n, w, ratio)
        y0, y1 = box_bounds(rng, n, h, ratio)
        return {"permutation_order": rng.permutation(n),
                "boxes": np.stack([x0, x1, y0, y1], axis=1),
                "mix_weight": 1.0 - (x1 - x0) * (y1 - y0) / (w * h)}

    def transform_images(self, images, transformation, training=True):
        if not training or transformation is None:
            return images
        n = _images_of(self, images)[0]
        return self._mix(images, transformation["permutation_order"], np.zeros(n),
                         transformation["boxes"], training)

    def transform_segmentation_masks(self, segmentation_masks, transformation, training=True):
        """Keras's: the masks cut and pasted as the images are (its boxes: not implemented,
        and refused here too)."""
        return self.transform_images(segmentation_masks, transformation, training)

    def get_config(self):
        return {**super().get_config(), "factor": list(self.factor),
                "data_format": "channels_last"}


class RandomErasing(KeepsBoxes, _Augmentation):
    """With probability uniform(factor), a box of sqrt(uniform(scale)) of each side is set to
    fill_value (a number, one per channel, or None: normal noise * value_range[1]), clipped
    to value_range."""

    def __init__(self, factor=1.0, scale=(0.02, 0.33), fill_value=None, value_range=(0, 255),
                 seed=None, data_format=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        _data_format(self, data_format)
        self.factor = _unit_factor(self, "factor", factor)
        self.scale = _unit_factor(self, "scale", scale)
        if fill_value is None:
            self.fill_value = None
        elif isinstance(fill_value, (tuple, list)):
            if len(fill_value) != 3:
                raise ValueError(f"{_name(self)}: fill_value must be a number or three numbers "
                                 f"(one per channel), got {fill_value!r}")
            self.fill_value = [_number(self, "fill_value", v) for v in fill_value]
        else:
            self.fill_value = _number(self, "fill_value", fill_value)
        self.value_range = _value_range(self, value_range)

    def get_random_transformation(self, images, training=True, seed=None):
        """{"apply_erasing": (N,) bool, "boxes": (N, 4) [x0, x1, y0, y1], "fill_value": (C,)
        or the images' shape (before the clip to value_range)}, or None outside training."""
        if not training:
            return None
        n, h, w, c = _images_of(self, images)
        rng = self._rng() if seed is None else np.random.default_rng(seed)
        side = np.sqrt(rng.uniform(*self.scale, size=(n, 2)))
        x0, x1 = box_bounds(rng, n, w, side[:, 0])
        y0, y1 = box_bounds(rng, n, h, side[:, 1])
        probability = rng.uniform(*self.factor, size=n)
        apply = rng.uniform(0.0, 1.0, size=n) < probability
        if self.fill_value is None:
            fill = rng.standard_normal((n, h, w, c)) * self.value_range[1]
        else:
            if isinstance(self.fill_value, list) and c != 3:
                raise ValueError(f"{_name(self)}: fill_value holds 3 values, one per channel, "
                                 f"but the images have {c} channels")
            fill = np.broadcast_to(np.asarray(self.fill_value, np.float64), (c,)).copy()
        return {"apply_erasing": apply, "boxes": np.stack([x0, x1, y0, y1], axis=1),
                "fill_value": fill}

    def _boxes(self, transformation):
        # An image not erased gets an empty box: no pixel lies in [0, 0).
        boxes = np.array(transformation["boxes"], np.float64).reshape(-1, 4)
        boxes[~np.asarray(transformation["apply_erasing"], bool).reshape(-1)] = 0.0
        return boxes

    def transform_images(self, images, transformation, training=True):
        if not training or transformation is None:
            return images
        _images_of(self, images)
        b = backend.current()
        boxes = b.asarray(self._boxes(transformation), images.dtype)
        fill = b.asarray(np.ascontiguousarray(transformation["fill_value"], np.float64),
                         images.dtype)
        if training:
            self._cache = boxes
        return b.image_erase_forward(images, boxes, fill, self.value_range)

    def backward(self, dy):
        boxes, self._cache = self._cache, None
        if not self.needs_input_grad:
            return None
        if boxes is None:
            return dy
        # Erased pixels do not depend on x: the same op with fill 0 clears their gradient.
        b = backend.current()
        zero = b.asarray(np.zeros(dy.shape[-1]), dy.dtype)
        return b.image_erase_forward(dy, boxes, zero, (0.0, 0.0))

    def get_config(self):
        return {**super().get_config(), "factor": list(self.factor), "scale": list(self.scale),
                "fill_value": self.fill_value, "value_range": list(self.value_range),
                "data_format": "channels_last"}


def gaussian_taps(size, sigma):
    """keras.ops.image.gaussian_blur's 1-D kernel: exp(-x^2 / (2 sigma^2)) over the size
    taps centred on 0, normalized to sum 1 (float64)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


class RandomGaussianBlur(KeepsBoxes, _Augmentation):
    """With probability uniform(factor) per image, a Gaussian blur of kernel_size taps with
    one (sigma_x, sigma_y) ~ uniform(sigma) + 1e-6 for the batch (Keras draws two numbers per
    call); every image is then clipped to value_range."""

    # Keras's floor on the drawn sigma.
    SIGMA_FLOOR = 1e-6

    def __init__(self, factor=1.0, kernel_size=3, sigma=1.0, value_range=(0, 255),
                 data_format=None, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        _data_format(self, data_format)
        self.factor = _unit_factor(self, "factor", factor)
        self.kernel_size = self._kernel_size(kernel_size)
        self.sigma = self._sigma(sigma)
        self.value_range = _value_range(self, value_range)

    def _kernel_size(self, kernel_size):
        sizes = kernel_size if isinstance(kernel_size, (tuple, list)) else (kernel_size,) * 2
        ok = len(sizes) == 2 and all(
            isinstance(k, numbers.Integral) and not isinstance(k, bool) and k > 0 and k % 2
            for k in sizes)
        if not ok:
            raise ValueError(f"{_name(self)}: kernel_size must be an odd positive int or two "
                             f"of them, got {kernel_size!r}")
        if sizes[0] != sizes[1]:
            # Keras's torch backend views the (k1, k0) outer product as (k0, k1) and pads both
            # axes by k0 // 2: not a blur, so pynn refuses it.
            raise ValueError(f"{_name(self)}: kernel_size must be square (Keras's blur pads "
                             f"both axes by the first size), got {kernel_size!r}")
        return (int(sizes[0]), int(sizes[1]))

    def _sigma(self, sigma):
        if isinstance(sigma, (tuple, list)) and len(sigma) == 2 and all(
                isinstance(v, numbers.Real) and not isinstance(v, bool) for v in sigma):
            lower, upper = sorted(float(v) for v in sigma)
            # NaN or inf would reach NumPy's uniform draw (OverflowError) at the first call.
            if not (0.0 <= lower <= 1.0 and lower <= upper < float("inf")):
                raise ValueError(f"{_name(self)}: sigma's lower end must lie in [0.0, 1.0] "
                                 f"and its upper end be finite, got {sigma!r}")
            return lower, upper
        return _unit_factor(self, "sigma", sigma)

    def get_random_transformation(self, images, training=True, seed=None):
        """{"should_apply_blur": (N,) bool, "blur_factor": (2,) [sigma_x, sigma_y]}, or None
        outside training."""
        if not training:
            return None
        n = _images_of(self, images)[0]
        rng = self._rng() if seed is None else np.random.default_rng(seed)
        probability = rng.uniform(*self.factor, size=n)
        apply = rng.uniform(0.0, 1.0, size=n) < probability
        return {"should_apply_blur": apply,
                "blur_factor": rng.uniform(*self.sigma, size=2) + self.SIGMA_FLOOR}

    def transform_images(self, images, transformation, training=True):
        if not training or transformation is None:
            return images
        _images_of(self, images)
        sigma_x, sigma_y = np.asarray(transformation["blur_factor"], np.float64).reshape(2)
        size = self.kernel_size[0]
        b = backend.current()
        blur = np.asarray(transformation["should_apply_blur"], np.float64)
        return b.image_blur_forward(images, b.asarray(gaussian_taps(size, sigma_y), images.dtype),
                                    b.asarray(gaussian_taps(size, sigma_x), images.dtype),
                                    b.asarray(blur, images.dtype), self.value_range)

    def backward(self, dy):
        self._cache = None
        if self.needs_input_grad:
            raise NotImplementedError(f"{_name(self)}: no input gradient (put it at the "
                                      f"model's input)")

    def get_config(self):
        return {**super().get_config(), "factor": list(self.factor),
                "kernel_size": list(self.kernel_size), "sigma": list(self.sigma),
                "value_range": list(self.value_range), "data_format": "channels_last"}


class RandomElasticTransform(_Augmentation):
    """With probability uniform(factor) per image, each pixel moves by alpha times a
    Gaussian-blurred (sigma) field of normal noise scaled by sigma, alpha = 0.1 * d * max(H,
    W) and sigma = 0.05 * d * min(H, W) for one d ~ uniform(scale) per batch
    (keras.ops.image.elastic_transform); every image is then clipped to value_range."""

    def __init__(self, factor=1.0, scale=1.0, interpolation="bilinear", fill_mode="reflect",
                 fill_value=0.0, value_range=(0, 255), seed=None, data_format=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        _data_format(self, data_format)
        self.factor = _unit_factor(self, "factor", factor)
        self.scale = _unit_factor(self, "scale", scale)
        self.interpolation = _choice(self, "interpolation", interpolation, INTERPOLATIONS)
        self.fill_mode = _choice(self, "fill_mode", fill_mode, FILL_MODES)
        self.fill_value = _number(self, "fill_value", fill_value)
        self.value_range = _value_range(self, value_range)

    @staticmethod
    def elastic_params(height, width, distortion):
        """Keras's get_elastic_transform_params: (alpha, sigma)."""
        return max(height, width) * 0.1 * distortion, min(height, width) * 0.05 * distortion

    def get_random_transformation(self, images, training=True, seed=None):
        """{"apply_transform": (N,) bool, "distortion_factor": a float, "noise": (N, H, W, 2)
        standard normal draws (the column, then the row displacement before blur and
        scaling: Keras's torch backend draws them inside elastic_transform)}, or None outside
        training or where scale or factor is 0 (as Keras)."""
        if not training or self.scale[1] == 0 or self.factor[1] == 0:
            return None
        n, h, w, _ = _images_of(self, images)
        rng = self._rng() if seed is None else np.random.default_rng(seed)
        probability = rng.uniform(*self.factor, size=n)
        apply = rng.uniform(0.0, 1.0, size=n) < probability
        return {"apply_transform": apply,
                "distortion_factor": float(rng.uniform(*self.scale)),
                "noise": rng.standard_normal((n, h, w, 2))}

    def transform_images(self, images, transformation, training=True):
        if not training or transformation is None:
            return images
        n, h, w, _ = _images_of(self, images)
        alpha, sigma = self.elastic_params(h, w, transformation["distortion_factor"])
        b = backend.current()
        # Keras's kernel size: int(6 sigma) made odd; the field is blurred with zero padding.
        # The blur is linear, so alpha scales the noise before it: the blurred field is the
        # offsets themselves and never leaves the device. Row offsets first (noise channel 1,
        # Keras's dy), then columns.
        taps = b.asarray(gaussian_taps(int(6 * sigma) | 1, sigma), images.dtype)
        noise = np.asarray(transformation["noise"], np.float64)[..., ::-1] * (sigma * alpha)
        # An image left alone gets no offsets: it reads every pixel where it is.
        noise[~np.asarray(transformation["apply_transform"], bool).reshape(n)] = 0.0
        wide = float(np.finfo(np.float32).max)
        offsets = b.image_blur_forward(b.asarray(np.ascontiguousarray(noise), images.dtype),
                                       taps, taps, b.asarray(np.ones(n), images.dtype),
                                       (-wide, wide))
        return b.image_remap_forward(images, offsets, self.interpolation, self.fill_mode,
                                     self.fill_value, self.value_range)

    def backward(self, dy):
        self._cache = None
        if self.needs_input_grad:
            raise NotImplementedError(f"{_name(self)}: no input gradient (put it at the "
                                      f"model's input)")

    def get_config(self):
        return {**super().get_config(), "factor": list(self.factor), "scale": list(self.scale),
                "interpolation": self.interpolation, "fill_mode": self.fill_mode,
                "fill_value": self.fill_value, "value_range": list(self.value_range),
                "data_format": "channels_last"}
