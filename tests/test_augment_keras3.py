"""Keras 3's geometric, erasing, mixing and blur augmentations (pynn/layers/augment_geo.py):
RandomShear, RandomPerspective, RandomElasticTransform, RandomErasing, CutMix, MixUp,
RandomGaussianBlur.

Their ops (image_projective_* and image_remap_forward in native/preprocessing.pyx,
image_mix_*, image_erase_forward and image_blur_forward in native/augment_mix.pyx, and the
OpenCL twins) against the float64 references; each layer's input gradient by central
differences under a fixed transformation; Keras parity by handing Keras's layer and pynn's
the same transformation; pynn's own draws (ranges, seeds, training only); configs, Keras
files both ways, ONNX as the identity, and bad inputs."""

import json

import numpy as np
import pytest

import pynn
from pynn import layers
from pynn.layers import augment_geo as ag
from tests.backend_util import check_op, keras_on_torch, rand
from tests.reference import augment_mix_ref as mix_ref
from tests.reference import preprocessing_ref as pre_ref
from tests.reference.gradcheck import check_layer

TOL = {np.float32: {"rtol": 1e-5, "atol": 2e-5}, np.float64: {"rtol": 1e-12, "atol": 1e-12}}
SHAPES = [(3, 7, 9, 2), (1, 1, 1, 3), (4, 5, 3, 1), (2, 33, 17, 5)]


@pytest.fixture
def rng():
    return np.random.default_rng(2031)


def _projective(rng, n, h, w):
    """Keras's homographies of corners moved by up to 30% and a pixel: coordinates leave
    every side (the denominator stays above 1/2)."""
    start = np.array([[0.0, 0.0], [w, 0.0], [0.0, h], [w, h]])
    start = np.repeat(start[None], n, 0)
    end = start + start * rng.uniform(-0.3, 0.3, (n, 4, 2)) + rng.uniform(-1, 1, (n, 4, 2))
    m = ag.homography_matrices(start, end)
    m[:, 6:] *= np.minimum(1.0, 0.5 / (np.abs(m[:, 6:]) @ np.array([w, h])))[:, None]
    return m


def _boxes(rng, n, h, w):
    """Boxes straddling the edges, one empty, one past the image."""
    x0 = rng.uniform(-2, w, n)
    y0 = rng.uniform(-2, h, n)
    b = np.stack([x0, x0 + rng.uniform(0, w, n), y0, y0 + rng.uniform(0, h, n)], 1)
    b[0] = (1.5, 1.5, 0.0, h)
    if n > 2:
        b[2] = (-5.0, w + 5.0, -5.0, h + 5.0)
    return b


# -- ops against the float64 references --------------------------------------------------

@pytest.mark.parametrize("fill_mode", pre_ref.FILL_MODES)
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_image_projective(target, rng, shape, interpolation, fill_mode):
    n, h, w, c = shape
    x = rand(rng, shape, target.dtype)
    m = _projective(rng, n, h, w)
    if interpolation == "nearest":
        m[:, [2, 5]] += 0.013  # keep rounding ties away from float32's half-way points
    m = m.astype(target.dtype)
    size = (h + 2, max(w - 1, 1))
    # OpenCL divides float32 coordinates (the CPU doubles): a bilinear weight moves ~1e-5
    tol = {"rtol": 1e-4, "atol": 1e-4} if target.is_opencl else TOL[target.dtype.type]
    check_op(target, "image_projective_forward", x, m, size, interpolation, fill_mode, 0.6,
             ref=pre_ref.image_projective_forward_ref, rtol=tol)
    dy = rand(rng, (n,) + size + (c,), target.dtype)
    check_op(target, "image_projective_backward", dy, m, shape, interpolation, fill_mode,
             ref=pre_ref.image_projective_backward_ref, rtol=tol)


@pytest.mark.parametrize("fill_mode", pre_ref.FILL_MODES)
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_image_remap(target, rng, shape, interpolation, fill_mode):
    n, h, w, c = shape
    x = rand(rng, shape, target.dtype)
    size = (h + 1, w + 2)
    offsets = rng.uniform(-3, 3, (n,) + size + (2,))
    if interpolation == "nearest":
        offsets = np.round(offsets) + 0.2   # no rounding ties
    offsets = offsets.astype(target.dtype)
    for value_range in ((-np.inf, np.inf), (-0.5, 0.9)):
        check_op(target, "image_remap_forward", x, offsets, interpolation, fill_mode, 0.4,
                 value_range, ref=pre_ref.image_remap_forward_ref, rtol=TOL[target.dtype.type])


def test_image_projective_with_a_vanishing_denominator_reads_fill(rng):
    """A pixel on the horizon line (c0*c + c1*r + 1 = 0) maps to infinity: fill, no crash."""
    from pynn.backend import cpu

    x = rand(rng, (1, 4, 5, 1))
    m = np.array([[1.0, 0, 0, 0, 1.0, 0, -0.5, 0.0]])  # column 2: denominator 0
    y = cpu.image_projective_forward(x, m, (4, 5), "bilinear", "constant", 9.0)
    assert np.all(np.isfinite(y)) and np.all(y[0, :, 2] == 9.0)
    np.testing.assert_array_equal(
        cpu.image_projective_forward(x, m, (4, 5), "nearest", "reflect", 0.0).shape, x.shape)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_image_mix(target, rng, shape):
    n, h, w, _ = shape
    x = rand(rng, shape, target.dtype)
    perm = rng.permutation(n).tolist()
    weights = rng.uniform(0, 1, n).astype(target.dtype)
    boxes = _boxes(rng, n, h, w).astype(target.dtype)
    tol = TOL[target.dtype.type]
    check_op(target, "image_mix_forward", x, perm, weights, boxes,
             ref=mix_ref.image_mix_forward_ref, rtol=tol)
    dy = rand(rng, shape, target.dtype)
    check_op(target, "image_mix_backward", dy, perm, weights, boxes,
             ref=mix_ref.image_mix_backward_ref, rtol=tol)


@pytest.mark.parametrize("per_element", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_image_erase(target, rng, shape, per_element):
    n, h, w, c = shape
    x = rand(rng, shape, target.dtype)
    fill = rand(rng, shape if per_element else (c,), target.dtype) * 2
    boxes = _boxes(rng, n, h, w).astype(target.dtype)
    check_op(target, "image_erase_forward", x, boxes, fill, (-1.0, 1.5),
             ref=mix_ref.image_erase_forward_ref, rtol=TOL[target.dtype.type])


@pytest.mark.parametrize("taps", [1, 3, 5, 7])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_image_blur(target, rng, shape, taps):
    x = rand(rng, shape, target.dtype)
    vertical = rng.uniform(0.1, 1, taps).astype(target.dtype)
    horizontal = rng.uniform(-0.5, 1, taps).astype(target.dtype)
    blur = (np.arange(shape[0]) % 3 != 1).astype(target.dtype)
    check_op(target, "image_blur_forward", x, vertical, horizontal, blur, (-0.8, 1.1),
             ref=mix_ref.image_blur_forward_ref, rtol=TOL[target.dtype.type])


def test_mix_kernels_give_the_same_bits_at_any_thread_count(num_threads, rng):
    from pynn.backend import cpu

    x = rand(rng, (9, 40, 33, 3))
    perm, w, b = rng.permutation(9), rng.uniform(size=9), _boxes(rng, 9, 40, 33)
    m = _projective(rng, 9, 40, 33)
    runs = []
    for threads in (1, 2, 3):
        num_threads(threads)
        runs.append([cpu.image_mix_forward(x, perm, w, b), cpu.image_mix_backward(x, perm, w, b),
                     cpu.image_erase_forward(x, b, x, (-1, 1)),
                     cpu.image_blur_forward(x, w[:5], w[2:7], w, (-1, 1)),
                     cpu.image_projective_backward(x, m, x.shape),
                     cpu.image_remap_forward(x, rand(np.random.default_rng(1), x.shape[:3] + (2,),
                                                     np.float64) * 3, "bilinear", "reflect")])
    for other in runs[1:]:
        for a, b_ in zip(runs[0], other):
            np.testing.assert_array_equal(a, b_)


BAD_OPS = [
    (lambda c: c.image_mix_forward(np.ones((3, 2, 2, 1)), [0, 0, 1], np.ones(3),
                                   np.ones((3, 4))),
     ValueError, r"image_mix_forward: 'permutation' must be a permutation of range\(3\)"),
    (lambda c: c.image_mix_forward(np.ones((3, 2, 2, 1)), [0, 1], np.ones(3), np.ones((3, 4))),
     ValueError, r"image_mix_forward: 'permutation' must hold one index per image \(3,\)"),
    (lambda c: c.image_mix_backward(np.ones((2, 2, 2, 1)), [0, 1], np.ones(2), np.ones((2, 3))),
     ValueError, r"image_mix_backward: 'boxes' must have the shape \(2, 4\)"),
    (lambda c: c.image_mix_forward(np.ones((2, 2, 2, 1)), [0.5, 1], np.ones(2), np.ones((2, 4))),
     TypeError, r"image_mix_forward: 'permutation' must hold integers"),
    (lambda c: c.image_mix_forward(np.ones((2, 2, 2)), [0, 1], np.ones(2), np.ones((2, 4))),
     ValueError, r"image_mix_forward: 'x' must have 4 dimensions"),
    (lambda c: c.image_erase_forward(np.ones((2, 2, 2, 3)), np.ones((2, 4)), np.ones(2), (0, 1)),
     ValueError, r"image_erase_forward: 'fill' must have the shape \(3,\)"),
    (lambda c: c.image_erase_forward(np.ones((2, 2, 2, 3)), np.ones((2, 4)), np.ones(3), (1, 0)),
     ValueError, r"image_erase_forward: 'value_range' must have low <= high"),
    (lambda c: c.image_blur_forward(np.ones((2, 3, 3, 1)), np.ones(3), np.ones(5), np.ones(2),
                                    (0, 1)),
     ValueError, r"image_blur_forward: 'vertical' and 'horizontal' must hold the same odd"),
    (lambda c: c.image_blur_forward(np.ones((2, 3, 3, 1)), np.ones(4), np.ones(4), np.ones(2),
                                    (0, 1)),
     ValueError, r"image_blur_forward: 'vertical' and 'horizontal' must hold the same odd"),
    (lambda c: c.image_blur_forward(np.ones((2, 3, 3, 1)), np.ones(3), np.ones(3), np.ones(3),
                                    (0, 1)),
     ValueError, r"image_blur_forward: 'blur' must hold one flag per image \(2,\)"),
    (lambda c: c.image_remap_forward(np.ones((2, 3, 3, 1)), np.ones((2, 3, 3, 3))),
     ValueError, r"image_remap_forward: 'offsets' must have the shape \(2, height, width, 2\)"),
    (lambda c: c.image_remap_forward(np.ones((2, 3, 3, 1)), np.ones((2, 3, 3, 2)),
                                     value_range=(1, 0)),
     ValueError, r"image_remap_forward: 'value_range' must have low <= high"),
    (lambda c: c.image_remap_forward(np.ones((2, 3, 3, 1)), np.ones((2, 3, 3, 2)), "cubic"),
     ValueError, r"image_remap_forward: interpolation must be one of"),
    (lambda c: c.image_projective_forward(np.ones((2, 3, 3, 1)), np.ones((2, 6)), (3, 3)),
     ValueError, r"image_projective_forward: 'transforms' must have the shape \(2, 8\)"),
    (lambda c: c.image_projective_forward(np.ones((1, 3, 3, 1)),
                                          np.array([[1, 0, 0, 0, 1, 0, np.nan, 0]]), (3, 3)),
     ValueError, r"image_projective_forward: matrix 0 is not finite"),
    (lambda c: c.image_projective_backward(np.ones((1, 3, 3, 1)), np.ones((1, 8)),
                                           (1, 3, 3, 2)),
     ValueError, r"image_projective_backward: 'input_shape' \(1, 3, 3, 2\) must match dy's"),
]


@pytest.mark.parametrize("call, error, match", BAD_OPS, ids=[str(i) for i in range(len(BAD_OPS))])
def test_bad_operands_are_named(call, error, match):
    from pynn.backend import cpu

    with pytest.raises(error, match=match):
        call(cpu)


# -- layers: gradients under a fixed transformation --------------------------------------

class _Fixed:
    """Runs a layer's transform_images with one transformation, as a layer check_layer
    can call (a random draw would change between the finite-difference calls)."""

    def __init__(self, layer, transformation):
        self.layer, self.t = layer, transformation
        self.name, self.weights = layer.name, []
        self.needs_input_grad = True

    def __call__(self, x, training=True):
        self.layer.needs_input_grad = self.needs_input_grad
        return self.layer.transform_images(x, self.t, training)

    def backward(self, dy):
        self.layer.needs_input_grad = self.needs_input_grad
        return self.layer.backward(dy)


GRAD_LAYERS = [
    lambda: layers.RandomShear(0.4, 0.3, seed=1),
    lambda: layers.RandomShear((0.1, 0.5), 0.2, fill_mode="constant", fill_value=0.5,
                               interpolation="nearest", seed=1),
    lambda: layers.RandomPerspective(scale=0.7, fill_value=0.25, seed=2),
    lambda: layers.RandomPerspective(factor=(0.4, 0.6), scale=0.5, seed=3),
    lambda: layers.MixUp(alpha=0.5, seed=4),
    lambda: layers.CutMix(seed=5),
    lambda: layers.RandomErasing(scale=(0.2, 0.5), value_range=(-3, 3), seed=6),
    lambda: layers.RandomErasing(fill_value=0.5, value_range=(0, 1), seed=6),
]


@pytest.mark.parametrize("make", GRAD_LAYERS, ids=[str(i) for i in range(len(GRAD_LAYERS))])
def test_layer_input_gradients(float64, seeded, make):
    layer = make()
    x = seeded.standard_normal((3, 6, 7, 2))
    layer(x, training=True)
    t = layer.get_random_transformation(x, training=True)
    y = check_layer(_Fixed(layer, t), x, seeded)
    assert y.shape == x.shape
    assert not np.allclose(y, x), "the transformation left the images alone"


# -- Keras parity: the same transformation in both ---------------------------------------

def _keras_pair(rng, name, kwargs, seed=3):
    keras = keras_on_torch()
    return keras, getattr(keras.layers, name)(**kwargs), getattr(layers, name)(seed=seed,
                                                                                **kwargs)


def _images(rng, shape=(4, 9, 11, 3)):
    x = rng.uniform(0, 255, shape).astype(np.float32)
    x.flat[0] = 17.0
    return x


@pytest.mark.parametrize("fill_mode", ["reflect", "constant", "nearest", "wrap"])
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_random_shear_matches_keras(rng, fill_mode, interpolation):
    keras, k, p = _keras_pair(rng, "RandomShear", dict(
        x_factor=0.3, y_factor=(0.1, 0.4), fill_mode=fill_mode, interpolation=interpolation,
        fill_value=3.0))
    x = _images(rng)
    t = p.get_random_transformation(x)
    t["shear_factor"] = t["shear_factor"].astype(np.float32)
    want = keras.ops.convert_to_numpy(k.transform_images(
        x, {**t, "input_shape": x.shape}, training=True))
    got = p.transform_images(x, t)
    if interpolation == "nearest":
        # float32 rounding can put a coordinate on the other side of a half: a few pixels
        assert np.mean(np.abs(got - want) > 1e-3) < 0.02
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_random_perspective_matches_keras(rng, interpolation):
    keras, k, p = _keras_pair(rng, "RandomPerspective", dict(
        factor=(0.3, 0.9), scale=0.6, interpolation=interpolation, fill_value=5.0))
    x = _images(rng, (6, 10, 12, 2))
    t = p.get_random_transformation(x)
    assert t["apply_perspective"].any() and not t["apply_perspective"].all()
    kt = {"apply_perspective": t["apply_perspective"], "input_shape": x.shape,
          "start_points": t["start_points"].astype(np.float32),
          "end_points": t["end_points"].astype(np.float32)}
    want = keras.ops.convert_to_numpy(k.transform_images(x, kt, training=True))
    got = p.transform_images(x, t)
    kept = ~t["apply_perspective"]
    np.testing.assert_array_equal(got[kept], x[kept])
    if interpolation == "nearest":
        assert np.mean(np.abs(got - want) > 1e-3) < 0.02
    else:
        # Keras solves the homography in float32, pynn in float64
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-3)


def test_mixup_matches_keras(rng):
    keras, k, p = _keras_pair(rng, "MixUp", dict(alpha=0.4))
    x = _images(rng)
    t = p.get_random_transformation(x)
    kt = {"mix_weight": t["mix_weight"].astype(np.float32),
          "permutation_order": t["permutation_order"]}
    want = keras.ops.convert_to_numpy(k.transform_images(x, kt, training=True))
    np.testing.assert_allclose(p.transform_images(x, kt), want, rtol=1e-6, atol=1e-4)
    labels = np.eye(4)[[0, 1, 2, 3]]
    np.testing.assert_allclose(p.transform_labels(labels, kt), keras.ops.convert_to_numpy(
        k.transform_labels(labels, kt)), rtol=1e-6, atol=1e-6)


def _keras_masks(keras_layer, shape, boxes):
    import torch

    b = boxes.astype(np.float32)
    return keras_layer._generate_batch_mask(shape, tuple(torch.tensor(b[:, i])
                                                         for i in range(4)))


def test_cutmix_matches_keras(rng):
    keras, k, p = _keras_pair(rng, "CutMix", dict(factor=0.8))
    x = _images(rng, (5, 9, 11, 3))
    t = p.get_random_transformation(x)
    masks, weight = _keras_masks(k, x.shape, t["boxes"])
    kt = {"permutation_order": t["permutation_order"], "batch_masks": masks,
          "mix_weight": weight}
    want = keras.ops.convert_to_numpy(k.transform_images(x, kt, training=True))
    np.testing.assert_array_equal(p.transform_images(x, t), want)
    np.testing.assert_allclose(t["mix_weight"], keras.ops.convert_to_numpy(weight).ravel(),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fill_value", [None, 7.0, [1.0, 300.0, -2.0]], ids=str)
def test_random_erasing_matches_keras(rng, fill_value):
    keras, k, p = _keras_pair(rng, "RandomErasing", dict(factor=0.9, fill_value=fill_value))
    x = _images(rng, (6, 9, 11, 3))
    t = p.get_random_transformation(x)
    fill = np.clip(np.broadcast_to(t["fill_value"], x.shape), 0, 255).astype(np.float32)
    kt = {"apply_erasing": t["apply_erasing"], "fill_value": fill,
          "batch_masks": _keras_masks(k, x.shape, t["boxes"])}
    want = keras.ops.convert_to_numpy(k.transform_images(x, kt, training=True))
    np.testing.assert_array_equal(p.transform_images(x, t), want)


@pytest.mark.parametrize("kernel_size", [3, 5, (7, 7)])
def test_random_gaussian_blur_matches_keras(rng, kernel_size):
    keras, k, p = _keras_pair(rng, "RandomGaussianBlur", dict(
        factor=0.8, kernel_size=kernel_size, sigma=(0.3, 2.0), value_range=(10, 240)))
    x = _images(rng, (6, 9, 11, 3))
    t = p.get_random_transformation(x)
    assert t["should_apply_blur"].any() and not t["should_apply_blur"].all()
    kt = {"should_apply_blur": t["should_apply_blur"],
          "blur_factor": t["blur_factor"].astype(np.float32)}
    want = keras.ops.convert_to_numpy(k.transform_images(x, kt, training=True))
    np.testing.assert_allclose(p.transform_images(x, kt), want, rtol=1e-5, atol=2e-4)


@pytest.mark.parametrize("fill_mode", ["reflect", "constant", "nearest"])
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_random_elastic_transform_matches_keras(rng, fill_mode, interpolation):
    """Keras's torch backend draws the noise inside elastic_transform from torch's global
    generator: the same seed there, and the same draws handed to pynn."""
    keras, k, p = _keras_pair(rng, "RandomElasticTransform", dict(
        factor=0.8, scale=(0.5, 1.0), fill_mode=fill_mode, interpolation=interpolation,
        fill_value=9.0, value_range=(5, 250)))
    import torch

    x = _images(rng, (5, 20, 23, 3))
    t = p.get_random_transformation(x)
    assert t["apply_transform"].any() and not t["apply_transform"].all()
    torch.manual_seed(11)
    want = keras.ops.convert_to_numpy(k.transform_images(x, {
        "apply_transform": torch.tensor(t["apply_transform"]), "seed": None,
        "distortion_factor": torch.tensor(np.float32(t["distortion_factor"]))}, training=True))
    torch.manual_seed(11)
    draws = [torch.normal(0.0, 1.0, size=x.shape[:3], dtype=torch.float32).numpy()
             for _ in range(2)]
    t["noise"] = np.stack(draws, -1)
    got = p.transform_images(x, t)
    kept = ~t["apply_transform"]
    np.testing.assert_array_equal(got[kept], np.clip(x[kept], 5, 250))   # clipped, not moved
    if interpolation == "nearest":
        assert np.mean(np.abs(got - want) > 1e-3) < 0.01
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-3)


def test_random_perspective_keeps_a_one_pixel_high_image(rng):
    """Its four corners fix no homography (Keras's solve fails): the image passes as is."""
    x = _images(rng, (2, 1, 5, 2))
    layer = layers.RandomPerspective(seed=1)
    t = layer.get_random_transformation(x)
    start = t["start_points"].copy()
    np.testing.assert_array_equal(layer.transform_images(x, t), x)
    np.testing.assert_array_equal(t["start_points"], start)


@pytest.mark.parametrize("name", ["RandomGaussianBlur", "RandomElasticTransform"])
def test_clipping_layers_offer_no_input_gradient(rng, name):
    layer = getattr(layers, name)(seed=1)
    x = _images(rng)
    layer(x, training=True)
    layer.needs_input_grad = True
    with pytest.raises(NotImplementedError, match=name + r" '.*': no input gradient"):
        layer.backward(x)


def test_input_gradients_match_keras_autograd(rng):
    """dL/dx of pynn's backward is torch's autograd through Keras's transform_images."""
    keras = keras_on_torch()
    import torch

    x = _images(rng, (4, 8, 9, 2))
    r = rng.standard_normal(x.shape).astype(np.float32)
    cases = []
    p = layers.RandomShear(0.3, 0.3, seed=1)
    t = p.get_random_transformation(x)
    t["shear_factor"] = t["shear_factor"].astype(np.float32)
    cases.append((p, t, keras.layers.RandomShear(0.3, 0.3), {**t, "input_shape": x.shape}))
    p = layers.MixUp(seed=2)
    t = p.get_random_transformation(x)
    t["mix_weight"] = t["mix_weight"].astype(np.float32)
    cases.append((p, t, keras.layers.MixUp(), t))
    p = layers.CutMix(seed=3)
    t = p.get_random_transformation(x)
    kc = keras.layers.CutMix()
    masks, weight = _keras_masks(kc, x.shape, t["boxes"])
    cases.append((p, t, kc, {"permutation_order": t["permutation_order"],
                             "batch_masks": masks, "mix_weight": weight}))
    for p, t, k, kt in cases:
        xt = torch.tensor(x, requires_grad=True)
        (k.transform_images(xt, kt, training=True) * torch.tensor(r)).sum().backward()
        p.transform_images(x, t)
        p.needs_input_grad = True
        np.testing.assert_allclose(p.backward(r), xt.grad.numpy(), rtol=1e-5, atol=1e-4,
                                   err_msg=type(p).__name__)


# -- pynn's own draws -----------------------------------------------------------------------

RANDOM = [
    lambda: layers.RandomShear(0.3, 0.2, seed=7),
    lambda: layers.RandomPerspective(seed=7),
    lambda: layers.RandomErasing(seed=7, value_range=(0, 1)),
    lambda: layers.CutMix(seed=7),
    lambda: layers.MixUp(seed=7),
    lambda: layers.RandomGaussianBlur(seed=7, value_range=(0, 1)),
    lambda: layers.RandomElasticTransform(seed=7, value_range=(0, 1)),
]


@pytest.mark.parametrize("make", RANDOM, ids=[str(i) for i in range(len(RANDOM))])
def test_random_layers_are_seeded_and_training_only(backend, num_threads, rng, make):
    x = rng.uniform(0, 1, (6, 8, 9, 3)).astype(np.float32)
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
    assert not np.allclose(runs[0][0], runs[0][1]), "two calls drew the same transformation"
    assert not np.allclose(runs[0][0], x), "training left the images alone"
    np.testing.assert_array_equal(inference, x)


@pytest.mark.parametrize("make", RANDOM, ids=[str(i) for i in range(len(RANDOM))])
def test_a_seed_argument_draws_apart_from_the_layers_stream(make):
    layer, x = make(), np.ones((3, 5, 6, 3))
    a, b = (layer.get_random_transformation(x, seed=9) for _ in range(2))
    assert layer.runtime_state() == {"calls": 0}
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_draws_follow_keras_distributions():
    x = np.zeros((4000, 6, 8, 1))
    t = layers.RandomShear((0.1, 0.3), 0.2, seed=1).get_random_transformation(x)
    s = np.abs(t["shear_factor"])
    assert 0.1 <= s[:, 0].min() and s[:, 0].max() <= 0.3 and s[:, 1].max() <= 0.2
    sign = np.sign(t["shear_factor"][:, 0])   # x_factor is positive: the flip alone
    assert abs(np.mean(sign > 0) - 0.5) < 0.05
    t = layers.RandomPerspective(factor=0.5, scale=0.4, seed=1).get_random_transformation(x)
    assert abs(t["apply_perspective"].mean() - 0.25) < 0.03   # E[uniform(0, 0.5)]
    shift = t["end_points"] - t["start_points"]
    assert np.all(np.abs(shift) <= 0.2 * t["start_points"] + 1e-12)
    t = layers.MixUp(alpha=0.3, seed=1).get_random_transformation(x)
    assert sorted(t["permutation_order"]) == list(range(4000))
    assert abs(t["mix_weight"].mean() - 0.5) < 0.03 and t["mix_weight"].var() > 0.15
    t = layers.CutMix(seed=1).get_random_transformation(x)
    b = t["boxes"]
    assert np.all(b[:, 0] >= 0) and np.all(b[:, 1] <= 8 + 1e-9) and np.all(b[:, 3] <= 6 + 1e-9)
    np.testing.assert_allclose((b[:, 1] - b[:, 0]) / 8, (b[:, 3] - b[:, 2]) / 6)
    t = layers.RandomErasing(factor=(0.2, 0.6), scale=(0.1, 0.4), seed=1
                             ).get_random_transformation(x)
    area = (t["boxes"][:, 1] - t["boxes"][:, 0]) * (t["boxes"][:, 3] - t["boxes"][:, 2]) / 48
    assert area.min() >= 0.1 ** 2 - 1e-9 and area.max() <= 0.4 + 1e-9
    assert abs(t["apply_erasing"].mean() - 0.4) < 0.03
    assert t["fill_value"].shape == x.shape
    t = layers.RandomElasticTransform(factor=(0.1, 0.5), scale=(0.2, 0.6), seed=1
                                      ).get_random_transformation(x)
    assert abs(t["apply_transform"].mean() - 0.3) < 0.03 and 0.2 <= t["distortion_factor"] <= 0.6
    assert t["noise"].shape == x.shape[:3] + (2,) and abs(t["noise"].std() - 1) < 0.02
    assert layers.RandomElasticTransform(scale=0.0).get_random_transformation(x) is None
    t = layers.RandomGaussianBlur(factor=(0.2, 0.4), sigma=(0.5, 3.0), seed=1
                                  ).get_random_transformation(x)
    assert abs(t["should_apply_blur"].mean() - 0.3) < 0.03
    assert t["blur_factor"].shape == (2,) and np.all((t["blur_factor"] >= 0.5) &
                                                      (t["blur_factor"] <= 3.0 + 1e-6))


def test_mixing_layers_train_inside_a_model(backend, rng):
    previous = pynn.backend.device()
    try:
        pynn.set_device(backend.name)
        model = pynn.Sequential([
            layers.Input((8, 8, 1)), layers.RandomShear(0.2, 0.2, seed=1),
            layers.RandomPerspective(scale=0.3, seed=2), layers.MixUp(seed=3),
            layers.CutMix(seed=4), layers.RandomErasing(value_range=(0, 1), seed=5),
            layers.Conv2D(2, 3), layers.Flatten(), layers.Dense(2, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        x = rng.uniform(0, 1, (16, 8, 8, 1)).astype(np.float32)
        y = rng.integers(0, 2, 16)
        history = model.fit(x, y, epochs=2, batch_size=8, verbose=0)
        assert np.all(np.isfinite(history.history["loss"]))
        np.testing.assert_array_equal(model.predict(x, verbose=0), model.predict(x, verbose=0))
    finally:
        pynn.set_device(previous)


# -- configs, files, ONNX, bad arguments ------------------------------------------------------

CONFIGS = [
    lambda: layers.RandomShear((0.1, 0.2), 0.3, "nearest", "wrap", 2.0, seed=5),
    lambda: layers.RandomPerspective((0.2, 0.8), 0.5, "nearest", 1.5, seed=5),
    lambda: layers.RandomErasing(0.5, (0.1, 0.2), [1.0, 2.0, 3.0], (0, 10), seed=5),
    lambda: layers.RandomErasing(fill_value=4.0, seed=5),
    lambda: layers.CutMix(0.4, seed=5),
    lambda: layers.MixUp(0.7, seed=5),
    lambda: layers.RandomGaussianBlur((0.2, 0.9), 5, (0.5, 2.0), (0, 1), seed=5),
    lambda: layers.RandomElasticTransform((0.3, 1.0), 0.6, "nearest", "constant", 2.0, (0, 9),
                                          seed=5),
]


@pytest.mark.parametrize("make", CONFIGS, ids=[str(i) for i in range(len(CONFIGS))])
def test_config_round_trip(make):
    layer = make()
    config = json.loads(json.dumps(layer.get_config()))
    clone = layers.LAYERS[type(layer).__name__].from_config(config)
    assert type(clone) is type(layer) and clone.get_config() == layer.get_config()
    x = np.arange(4 * 5 * 6 * 3, dtype=np.float32).reshape(4, 5, 6, 3)
    np.testing.assert_array_equal(layer(x, training=True), clone(x, training=True))


@pytest.mark.parametrize("make", CONFIGS, ids=[str(i) for i in range(len(CONFIGS))])
def test_config_loads_in_keras(make):
    keras = keras_on_torch()
    layer = make()
    k = getattr(keras.layers, type(layer).__name__).from_config(layer.get_config())
    for key, value in layer.get_config().items():
        if key not in ("name", "trainable", "dtype"):
            got = k.get_config()[key]
            if key in ("x_factor", "y_factor") and not isinstance(value, list):
                value = [-value, value]   # Keras stores a number as its pair
            assert (list(got) if isinstance(got, tuple) else got) == value, key


def _keras_model(keras):
    K = keras.layers
    return keras.Sequential([
        keras.Input((9, 10, 3)), K.RandomShear(0.2, (0.1, 0.3), fill_mode="constant"),
        K.RandomPerspective(0.5, 0.4), K.RandomErasing(fill_value=2.0),
        K.CutMix(0.5), K.MixUp(0.3), K.RandomGaussianBlur(0.5, 5, 0.8),
        K.RandomElasticTransform(0.5, 0.7, fill_mode="nearest"), K.Flatten(), K.Dense(2)])


def test_keras_files_both_ways(tmp_path, rng):
    keras = keras_on_torch()
    km = _keras_model(keras)
    x = _images(rng, (3, 9, 10, 3))
    km.save(tmp_path / "k.keras")
    pm = pynn.load_model(str(tmp_path / "k.keras"))
    want = keras.ops.convert_to_numpy(km.predict(x, verbose=0))
    np.testing.assert_allclose(pm.predict(x, verbose=0), want, rtol=1e-5, atol=1e-3)
    kinds = [type(lay).__name__ for lay in pm.layers]
    for name in ("RandomShear", "RandomPerspective", "RandomErasing", "CutMix", "MixUp",
                 "RandomGaussianBlur", "RandomElasticTransform"):
        assert name in kinds
    pm.save(str(tmp_path / "p.keras"))
    back = keras.saving.load_model(tmp_path / "p.keras")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(back.predict(x, verbose=0)), want,
                               rtol=1e-5, atol=1e-3)
    assert back.layers[0].get_config()["y_factor"] in ([0.1, 0.3], (0.1, 0.3))
    assert back.layers[0].get_config()["x_factor"] == (-0.2, 0.2)


def test_onnx_export_is_the_identity_at_inference(tmp_path, rng):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = pynn.Sequential([
        layers.Input((6, 7, 2)), layers.RandomShear(0.2, 0.2, seed=1),
        layers.RandomPerspective(seed=2), layers.RandomErasing(seed=3), layers.CutMix(seed=4),
        layers.MixUp(seed=5), layers.RandomGaussianBlur(seed=6),
        layers.RandomElasticTransform(seed=7), layers.Flatten(), layers.Dense(3)])
    x = rng.standard_normal((2, 6, 7, 2)).astype(np.float32)
    path = str(tmp_path / "m.onnx")
    pynn.onnx.export(model, path)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


BAD_LAYERS = [
    (lambda: layers.RandomShear(1.5), r"RandomShear '.*': x_factor must lie in \[0.0, 1.0\]"),
    (lambda: layers.RandomShear(0.1, (0.2, 1.2)), r"RandomShear '.*': y_factor must lie in"),
    (lambda: layers.RandomShear(0.1, fill_mode="mirror"), r"RandomShear '.*': fill_mode must"),
    (lambda: layers.RandomShear(0.1, interpolation="cubic"), r"RandomShear '.*': interpolat"),
    (lambda: layers.RandomPerspective(scale=1.5), r"RandomPerspective '.*': scale must be a "),
    (lambda: layers.RandomPerspective(factor="x"), r"RandomPerspective '.*': factor must be"),
    (lambda: layers.RandomPerspective(data_format="channels_first"),
     r"RandomPerspective '.*': only data_format='channels_last'"),
    (lambda: layers.MixUp(alpha=0.0), r"MixUp '.*': alpha must be a number > 0"),
    (lambda: layers.MixUp(alpha="a"), r"MixUp '.*': alpha must be a number"),
    (lambda: layers.CutMix(-0.5), r"CutMix '.*': factor must lie in"),
    (lambda: layers.RandomErasing(fill_value=[1, 2]), r"RandomErasing '.*': fill_value must "
                                                      r"be a number or three numbers"),
    (lambda: layers.RandomErasing(scale=(0.1, 2)), r"RandomErasing '.*': scale must lie in"),
    (lambda: layers.RandomErasing(value_range=3), r"RandomErasing '.*': value_range must be"),
    (lambda: layers.RandomGaussianBlur(kernel_size=4), r"RandomGaussianBlur '.*': kernel_size "
                                                       r"must be an odd positive int"),
    (lambda: layers.RandomGaussianBlur(kernel_size=(3, 5)), r"kernel_size must be square"),
    (lambda: layers.RandomGaussianBlur(sigma=1.5), r"RandomGaussianBlur '.*': sigma must lie"),
    (lambda: layers.RandomGaussianBlur(sigma=(1.5, 3)), r"sigma's lower end must lie in"),
    (lambda: layers.RandomElasticTransform(scale=2), r"RandomElasticTransform '.*': scale must"),
    (lambda: layers.RandomElasticTransform(fill_mode="mirror"), r"fill_mode must be one of"),
]


@pytest.mark.parametrize("make, match", BAD_LAYERS, ids=[str(i) for i in range(len(BAD_LAYERS))])
def test_bad_arguments_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"CutMix '.*': expected images of shape"):
        layers.CutMix(seed=1)(np.ones((2, 3, 4)), training=True)
    with pytest.raises(ValueError, match=r"RandomErasing '.*': fill_value holds 3 values"):
        layers.RandomErasing(fill_value=[1, 2, 3], seed=1)(np.ones((2, 3, 4, 2)), training=True)
