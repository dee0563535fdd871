"""Keras 3's 3-D pooling and spatial layers and their ops: MaxPooling3D / AveragePooling3D
(maxpool3d_*, avgpool3d_*: native/pool.pyx, opencl/pool.cl), GlobalMaxPooling3D /
GlobalAveragePooling3D (the 2-D global ops on the volume read as a (D*H, W) plane),
UpSampling3D (upsample3d_*) and ZeroPadding3D / Cropping3D (pad3d_*: native/spatial.pyx,
opencl/spatial.cl).

The ops against the float64 oracles of tests/reference/pool_ref.py and spatial_ref.py on
both backends (OpenCL also against the CPU op, through check_op); golden ties, NaN and
'same' counts; torch's pooling where Keras-torch calls it directly; thread counts; the layers
by central differences, against Keras 3 (outputs and input gradients through torch's
autograd, on both backends) and through a training step; configs; bad inputs.
"""

import json

import numpy as np
import pytest

import pynn
from pynn import layers
from pynn._native import info, pool, spatial
from tests.backend_util import check_op, keras_on_torch, rand
from tests.reference import pool_ref, spatial_ref
from tests.reference.gradcheck import check_layer

TOL = {np.float32: {"rtol": 1e-5, "atol": 1e-6}, np.float64: {"rtol": 1e-13, "atol": 1e-13}}

# (x shape (N, D, H, W, C), pool_size, strides, padding): odd sizes, strides that do not
# divide, asymmetric 'same' padding, windows past the input, empty outputs and batches.
POOL_CASES = [
    ((2, 5, 7, 6, 3), (2, 2, 2), (2, 2, 2), "valid"),
    ((2, 5, 7, 6, 3), (2, 2, 2), (2, 2, 2), "same"),
    ((1, 7, 5, 9, 4), (3, 2, 2), (2, 3, 1), "valid"),
    ((2, 4, 6, 5, 2), (3, 3, 3), (1, 2, 2), "same"),     # asymmetric 'same' padding
    ((1, 9, 4, 7, 65), (3, 1, 3), (2, 1, 3), "same"),    # C past a channel block
    ((2, 3, 3, 2, 1), (5, 4, 4), (1, 1, 1), "same"),     # window wider than the volume
    ((2, 3, 4, 5, 3), (4, 2, 2), (1, 1, 1), "valid"),    # empty output (D < pool)
    ((0, 5, 5, 5, 2), (2, 2, 2), (2, 2, 2), "valid"),    # empty batch
    ((3, 1, 1, 1, 2), (2, 2, 2), (2, 2, 2), "same"),     # single voxels
    ((1, 11, 3, 5, 7), (4, 3, 2), (3, 2, 3), "valid"),
]
POOL_IDS = [f"{x}-p{p}-s{s}-{pad}" for x, p, s, pad in POOL_CASES]

# (x shape, ((front, back), (top, bottom), (left, right))): asymmetric, one-sided, empty.
PAD_CASES = [
    ((2, 3, 5, 4, 3), ((1, 1), (1, 1), (1, 1))),
    ((1, 4, 3, 5, 2), ((2, 0), (0, 3), (1, 2))),
    ((3, 1, 1, 1, 1), ((0, 4), (5, 0), (0, 1))),
    ((2, 5, 3, 6, 33), ((3, 1), (2, 4), (0, 0))),
    ((0, 3, 3, 3, 2), ((1, 2), (1, 2), (1, 2))),       # empty batch
    ((2, 0, 3, 2, 2), ((1, 1), (0, 0), (2, 0))),       # an empty volume padded: zeros
    ((2, 3, 2, 4, 0), ((1, 0), (0, 1), (1, 1))),       # no channels
]
# (x shape, size): unequal factors, 1 to 4.
UP_CASES = [
    ((2, 3, 4, 5, 3), (2, 2, 2)),
    ((1, 4, 3, 2, 7), (3, 1, 2)),
    ((2, 1, 1, 1, 2), (2, 3, 4)),
    ((3, 3, 5, 7, 5), (1, 1, 1)),
    ((1, 5, 4, 3, 65), (2, 3, 1)),
    ((0, 3, 3, 3, 2), (2, 2, 2)),
]


@pytest.fixture
def rng():
    return np.random.default_rng(3303)


def tol(target):
    return target.rtol("reduction") if target.is_opencl else TOL[target.dtype.type]


def distinct(rng, shape, dtype):
    """Random values without ties (max pooling's winner is then unique)."""
    size = int(np.prod(shape))
    return (rng.permutation(size).reshape(shape) / max(size, 1) - 0.45).astype(dtype)


# -- the ops against their references, on both backends ------------------------------------


@pytest.mark.parametrize("shape, p, s, pad", POOL_CASES, ids=POOL_IDS)
def test_maxpool3d_matches_reference(target, rng, shape, p, s, pad):
    x = distinct(rng, shape, target.dtype)
    (y, argmax), (y_host, arg_host) = check_op(
        target, "maxpool3d_forward", x, p, s, pad, ref=pool_ref.maxpool3d_forward_ref,
        rtol=tol(target))
    dy = rand(rng, y_host.shape, target.dtype)
    check_op(target, "maxpool3d_backward", dy, arg_host, shape,
             ref=pool_ref.maxpool3d_backward_ref, rtol=tol(target))


@pytest.mark.parametrize("shape, p, s, pad", POOL_CASES, ids=POOL_IDS)
def test_avgpool3d_matches_reference(target, rng, shape, p, s, pad):
    x = rand(rng, shape, target.dtype)
    _, y = check_op(target, "avgpool3d_forward", x, p, s, pad,
                    ref=pool_ref.avgpool3d_forward_ref, rtol=tol(target))
    dy = rand(rng, y.shape, target.dtype)
    check_op(target, "avgpool3d_backward", dy, shape, p, s, pad,
             ref=pool_ref.avgpool3d_backward_ref, rtol=tol(target))


@pytest.mark.parametrize("shape, padding", PAD_CASES, ids=[str(c) for c in PAD_CASES])
def test_pad3d_matches_reference(target, rng, shape, padding):
    x = rand(rng, shape, target.dtype)
    _, y = check_op(target, "pad3d_forward", x, padding, ref=spatial_ref.pad3d_forward_ref,
                    rtol=tol(target))
    dy = rand(rng, y.shape, target.dtype)
    check_op(target, "pad3d_backward", dy, padding, ref=spatial_ref.pad3d_backward_ref,
             rtol=tol(target))


@pytest.mark.parametrize("shape, size", UP_CASES, ids=[str(c) for c in UP_CASES])
def test_upsample3d_matches_reference(target, rng, shape, size):
    x = rand(rng, shape, target.dtype)
    _, y = check_op(target, "upsample3d_forward", x, size,
                    ref=spatial_ref.upsample3d_forward_ref, rtol=tol(target))
    dy = rand(rng, y.shape, target.dtype)
    check_op(target, "upsample3d_backward", dy, shape, size,
             ref=spatial_ref.upsample3d_backward_ref, rtol=tol(target))


def test_maxpool3d_ties_and_nan_take_the_first_voxel_in_window_order(backend):
    """Ties keep the first voxel in (d, h, w) order; a NaN wins over numbers (the first
    NaN), as maxpool2d: argmax and value on both backends."""
    x = np.zeros((1, 2, 2, 2, 3), np.float32)
    x[0, 1, 0, 1, 0] = x[0, 1, 1, 0, 0] = 2.0      # a tie at (1, 0, 1) then (1, 1, 0)
    x[0, 1, 1, 1, 1] = np.nan
    x[0, 0, 1, 0, 1] = np.nan                      # the first NaN in window order
    x[0, :, :, :, 2] = -1.0                        # all tied: the first voxel
    y, arg = backend.ops.maxpool3d_forward(backend.up(x), (2, 2, 2), (2, 2, 2), "valid")
    y, arg = backend.down(y).ravel(), backend.down(arg).ravel()
    np.testing.assert_array_equal(arg, [(1 * 2 + 0) * 2 + 1, (0 * 2 + 1) * 2 + 0, 0])
    np.testing.assert_array_equal(y, [2.0, np.nan, -1.0])


def test_same_avgpool3d_averages_in_bounds_voxels_only():
    """Golden values: pool 2, stride 2, 'same' on a 3x1x1 ramp pads one voxel after: the
    last window holds one voxel, so it averages to that voxel (not half of it)."""
    x = np.array([1.0, 2.0, 6.0]).reshape(1, 3, 1, 1, 1)
    y = pool.avgpool3d_forward(x, (2, 1, 1), (2, 1, 1), "same")
    np.testing.assert_array_equal(y.ravel(), [1.5, 6.0])
    dx = pool.avgpool3d_backward(np.array([2.0, 3.0]).reshape(1, 2, 1, 1, 1), x.shape,
                                 (2, 1, 1), (2, 1, 1), "same")
    np.testing.assert_array_equal(dx.ravel(), [1.0, 1.0, 3.0])


def test_asymmetric_same_avgpool3d_is_tf_and_jax_keras():
    """Pool 4, stride 1, 'same' on a ramp of 5 pads 1 before and 2 after: the in-bounds means
    (TF and JAX Keras, ONNX's count_include_pad=0). Keras 3.15's torch backend replicates
    the edge voxels where the padding is asymmetric instead and gives [0.75, 1.5, 2.5, 3.25,
    3.75] (keras-team/keras#23233 makes it average in-bounds voxels); max pooling is the
    same either way."""
    x = np.arange(5.0).reshape(1, 5, 1, 1, 1)
    y = pool.avgpool3d_forward(x, (4, 1, 1), (1, 1, 1), "same")
    np.testing.assert_allclose(y.ravel(), [1.0, 1.5, 2.5, 3.0, 3.5], rtol=1e-15)


@pytest.mark.parametrize("case", [((2, 7, 5, 9, 3), (3, 3, 3), (1, 1, 1), "same"),
                                  ((1, 9, 7, 5, 2), (3, 3, 3), (2, 2, 2), "same"),
                                  ((2, 8, 7, 9, 2), (2, 3, 4), (2, 3, 2), "valid")])
def test_matches_torch_pool3d_where_padding_is_symmetric(rng, case):
    """torch's avg_pool3d(count_include_pad=False) and max_pool3d(return_indices=True) (its
    indices are the same flat (d*H + h)*W + w): Keras-torch calls them directly when the
    'same' padding is symmetric."""
    torch = pytest.importorskip("torch")
    x_shape, p, s, pad = case
    tp = []
    for n, k, st in zip(x_shape[1:4], p, s):
        total = max((-(-n // st) - 1) * st + k - n, 0) if pad == "same" else 0
        assert total % 2 == 0, "a case with symmetric padding is needed here"
        tp.append(total // 2)
    x = rng.standard_normal(x_shape)
    xt = torch.from_numpy(x).permute(0, 4, 1, 2, 3)
    yt = torch.nn.functional.avg_pool3d(xt, p, s, tp, count_include_pad=False)
    np.testing.assert_allclose(pool.avgpool3d_forward(x, p, s, pad),
                               yt.permute(0, 2, 3, 4, 1).numpy(), rtol=1e-13)
    mt, it = torch.nn.functional.max_pool3d(xt, p, s, tp, return_indices=True)
    y, arg = pool.maxpool3d_forward(x, p, s, pad)
    np.testing.assert_array_equal(y, mt.permute(0, 2, 3, 4, 1).numpy())
    np.testing.assert_array_equal(arg, it.permute(0, 2, 3, 4, 1).numpy())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thread_count_invariance(rng, dtype):
    x = rand(rng, (3, 9, 11, 10, 20), dtype)
    p, s, pad = (3, 3, 2), (2, 1, 2), "same"
    previous = info.get_max_threads()
    results = []
    try:
        for n in (1, 2, 3):
            info.set_num_threads(n)
            y, arg = pool.maxpool3d_forward(x, p, s, pad)
            a = pool.avgpool3d_forward(x, p, s, pad)
            u = spatial.upsample3d_forward(x, (2, 1, 3))
            results.append((y, arg, a, pool.maxpool3d_backward(y, arg, x.shape),
                            pool.avgpool3d_backward(a, x.shape, p, s, pad),
                            spatial.pad3d_forward(x, ((2, 1), (0, 3), (1, 1))),
                            spatial.pad3d_backward(x, ((2, 1), (0, 3), (1, 1))), u,
                            spatial.upsample3d_backward(u, x.shape, (2, 1, 3))))
    finally:
        info.set_num_threads(previous)
    for res in results[1:]:
        for got, want in zip(res, results[0]):
            np.testing.assert_array_equal(got, want)


def test_layouts_and_read_only_inputs(rng):
    x = distinct(rng, (2, 5, 4, 6, 3), np.float32)
    view = np.asfortranarray(x)
    view.flags.writeable = False
    for op, args in ((pool.maxpool3d_forward, ((2, 2, 2), (1, 2, 2), "same")),
                     (pool.avgpool3d_forward, (3, 2, "same")),
                     (spatial.pad3d_forward, (((1, 2), (3, 0), (0, 1)),)),
                     (spatial.upsample3d_forward, ((2, 1, 2),))):
        got, want = op(view, *args), op(x, *args)
        for g, w in zip(got if isinstance(got, tuple) else (got,),
                        want if isinstance(want, tuple) else (want,)):
            np.testing.assert_array_equal(g, w)


# -- layers: central differences (float64), configs ----------------------------------------

LAYER_CASES = [
    (lambda: layers.MaxPooling3D(), (2, 4, 5, 4, 2)),
    (lambda: layers.MaxPooling3D((3, 2, 2), strides=(2, 1, 3), padding="same"), (1, 5, 4, 7, 2)),
    (lambda: layers.AveragePooling3D(2), (2, 5, 4, 3, 2)),
    (lambda: layers.AveragePooling3D((3, 3, 2), strides=2, padding="same"), (1, 4, 5, 5, 2)),
    (lambda: layers.GlobalMaxPooling3D(), (2, 3, 4, 2, 3)),
    (lambda: layers.GlobalMaxPooling3D(keepdims=True), (2, 2, 3, 3, 2)),
    (lambda: layers.GlobalAveragePooling3D(), (2, 3, 2, 4, 3)),
    (lambda: layers.GlobalAveragePooling3D(keepdims=True), (1, 3, 3, 2, 2)),
    (lambda: layers.UpSampling3D((2, 1, 3)), (2, 2, 3, 2, 2)),
    (lambda: layers.ZeroPadding3D((1, (2, 0), 0)), (1, 2, 3, 4, 2)),
    (lambda: layers.Cropping3D(((1, 0), 1, (0, 2))), (2, 3, 4, 5, 2)),
]
LAYER_IDS = ["max", "max-same", "avg", "avg-same", "gmax", "gmax-keep", "gavg", "gavg-keep",
             "up", "pad", "crop"]


@pytest.mark.parametrize("make, shape", LAYER_CASES, ids=LAYER_IDS)
def test_layer_gradients_by_central_differences(float64, seeded, make, shape):
    layer = make()
    x = seeded.permutation(int(np.prod(shape))).reshape(shape) / 7.0  # distinct: max is smooth
    y = check_layer(layer, x, seeded)
    assert y.shape[1:] == layer.output_shape[1:]


@pytest.mark.parametrize("make", [c[0] for c in LAYER_CASES], ids=LAYER_IDS)
def test_config_round_trip(make):
    layer = make()
    config = json.loads(json.dumps(layer.get_config()))
    clone = layers.LAYERS[type(layer).__name__].from_config(config)
    assert type(clone) is type(layer) and clone.get_config() == layer.get_config()
    x = np.arange(2 * 5 * 6 * 7 * 3, dtype=np.float32).reshape(2, 5, 6, 7, 3) % 11
    np.testing.assert_array_equal(clone(x), layer(x))


def test_keras_aliases_name_the_classes():
    assert layers.MaxPool3D is layers.MaxPooling3D
    assert layers.AvgPool3D is layers.AveragePooling3D
    assert layers.GlobalMaxPool3D is layers.GlobalMaxPooling3D
    assert layers.GlobalAvgPool3D is layers.GlobalAveragePooling3D
    names = ["MaxPooling3D", "AveragePooling3D", "GlobalMaxPooling3D", "GlobalAveragePooling3D",
             "UpSampling3D", "ZeroPadding3D", "Cropping3D", "MaxPool3D", "AvgPool3D",
             "GlobalMaxPool3D", "GlobalAvgPool3D"]
    assert set(names) <= set(layers.__all__)
    namespace = {}
    exec("from pynn.layers import *", namespace)
    assert all(namespace[n] is getattr(layers, n) for n in names)


def test_numpy_integers_are_taken_as_keras_takes_ints():
    assert layers.MaxPooling3D(np.int64(3)).pool_size == (3, 3, 3)
    assert layers.UpSampling3D(np.array([1, 2, 3])).size == (1, 2, 3)
    assert layers.Cropping3D(np.int32(2)).cropping == ((2, 2),) * 3


def test_defaults_are_keras():
    assert layers.MaxPooling3D().pool_size == (2, 2, 2)
    assert layers.AveragePooling3D(3).strides == (3, 3, 3)
    assert layers.UpSampling3D().size == (2, 2, 2)
    assert layers.ZeroPadding3D().padding == ((1, 1),) * 3
    assert layers.Cropping3D().cropping == ((1, 1),) * 3
    assert layers.ZeroPadding3D((1, 2, 3)).padding == ((1, 1), (2, 2), (3, 3))
    assert layers.GlobalAveragePooling3D().keepdims is False


# -- Keras parity: outputs and input gradients (torch's autograd of the Keras layer) -------

KERAS_CASES = [
    ("MaxPooling3D", {}, (2, 4, 5, 6, 3)),
    ("MaxPooling3D", {"pool_size": (3, 2, 2), "strides": (2, 3, 1), "padding": "same"},
     (2, 5, 7, 4, 3)),
    ("MaxPool3D", {"pool_size": 3, "strides": 1, "padding": "same"}, (1, 4, 5, 6, 2)),
    ("AveragePooling3D", {"pool_size": (2, 3, 2), "strides": (1, 2, 3)}, (2, 5, 7, 6, 3)),
    # 'same' where the padding is symmetric on every axis (Keras 3.15's torch backend
    # replicates the edge where it is not: keras-team/keras#23233).
    ("AvgPool3D", {"pool_size": 3, "strides": 1, "padding": "same"}, (2, 4, 5, 3, 2)),
    ("AveragePooling3D", {"pool_size": 3, "strides": 2, "padding": "same"}, (1, 5, 7, 9, 2)),
    ("GlobalMaxPooling3D", {}, (2, 3, 4, 5, 3)),
    ("GlobalMaxPool3D", {"keepdims": True}, (2, 3, 4, 5, 3)),
    ("GlobalAveragePooling3D", {}, (2, 3, 4, 5, 3)),
    ("GlobalAvgPool3D", {"keepdims": True}, (2, 3, 4, 5, 3)),
    ("UpSampling3D", {}, (2, 2, 3, 4, 3)),
    ("UpSampling3D", {"size": (1, 3, 2)}, (2, 3, 2, 3, 2)),
    ("ZeroPadding3D", {}, (2, 3, 4, 2, 3)),
    ("ZeroPadding3D", {"padding": 2}, (1, 2, 3, 4, 2)),
    ("ZeroPadding3D", {"padding": (1, 0, 3)}, (2, 3, 4, 2, 3)),
    ("ZeroPadding3D", {"padding": ((2, 0), (1, 3), (0, 1))}, (2, 3, 4, 2, 3)),
    ("Cropping3D", {}, (2, 4, 5, 6, 3)),
    ("Cropping3D", {"cropping": 2}, (1, 5, 6, 7, 2)),
    ("Cropping3D", {"cropping": (1, 0, 2)}, (2, 4, 5, 6, 3)),
    ("Cropping3D", {"cropping": ((0, 2), (3, 0), (1, 1))}, (2, 4, 5, 6, 3)),
]


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("name, kwargs, shape", KERAS_CASES,
                         ids=[f"{n}-{k}" for n, k, _ in KERAS_CASES])
def test_layer_matches_keras(backend, rng, name, kwargs, shape):
    """Keras 3's layer (torch backend) on the same input: the same output, the same input
    gradient of sum(y * r) through torch's autograd, and the same config values."""
    keras = keras_on_torch()
    import torch

    x = distinct(rng, shape, np.float32)
    k_layer = getattr(keras.layers, name)(**kwargs)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = k_layer(xt)
    r = rand(rng, tuple(yt.shape), np.float32)
    (yt * torch.from_numpy(r)).sum().backward()
    want_y = yt.detach().cpu().numpy()
    want_dx = xt.grad.cpu().numpy()
    previous = pynn.get_device()
    try:
        pynn.set_device(backend.name)
        p_layer = getattr(layers, name)(**kwargs)
        got_y = backend.down(p_layer(backend.up(x), training=True))
        got_dx = backend.down(p_layer.backward(backend.up(r)))
    finally:
        pynn.set_device(previous)
    np.testing.assert_allclose(got_y, want_y, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_dx, want_dx, rtol=1e-5, atol=1e-6)
    k_config = k_layer.get_config()
    p_config = p_layer.get_config()
    for key in set(k_config) & set(p_config) - {"name", "dtype", "trainable"}:
        assert json.loads(json.dumps(p_config[key])) == json.loads(json.dumps(k_config[key])), key


def _volume_model(lib):
    """Every 3-D layer between trainable Dense layers (Dense acts on the channels), so a
    training step's weight updates depend on each one's backward."""
    L = lib.layers
    return lib.Sequential([
        L.Input((4, 5, 6, 2)),
        L.ZeroPadding3D(((1, 0), (0, 2), 1)),
        L.Dense(3, activation="tanh"),
        L.MaxPooling3D((2, 3, 2), strides=(2, 2, 3), padding="same"),
        L.UpSampling3D((2, 1, 2)),
        L.Cropping3D(((0, 1), (1, 0), (2, 0))),
        L.Dense(4, activation="tanh"),
        L.AveragePooling3D(3, strides=1, padding="same"),
        L.Dense(3, activation="tanh"),
        L.GlobalMaxPooling3D(keepdims=True),
        L.Flatten(),
        L.Dense(3, activation="softmax"),
    ])


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_model_matches_keras_prediction_and_training(backend, rng):
    """Keras's weights in, Keras's predictions out; one epoch of SGD (three batches) lands on
    Keras's weights: every layer's backward against Keras's autodiff, on both backends."""
    keras = keras_on_torch()
    keras.utils.set_random_seed(7)
    k_model = _volume_model(keras)
    previous = pynn.get_device()
    try:
        pynn.set_device(backend.name)
        p_model = _volume_model(pynn)
        p_model.set_weights(k_model.get_weights())
        x = rand(rng, (20, 4, 5, 6, 2))
        y = rng.integers(0, 3, 20).astype(np.int32)
        want = np.asarray(keras.ops.convert_to_numpy(k_model.predict(x, verbose=0)))
        np.testing.assert_allclose(p_model.predict(x, batch_size=8), want, rtol=1e-5,
                                   atol=1e-6)
        before = p_model.get_weights()
        for model, lib in ((k_model, keras), (p_model, pynn)):
            model.compile(optimizer=lib.optimizers.SGD(learning_rate=0.5),
                          loss="sparse_categorical_crossentropy")
            model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        for got, w, w0 in zip(p_model.get_weights(), k_model.get_weights(), before):
            w = np.asarray(keras.ops.convert_to_numpy(w))
            assert np.abs(w - w0).max() > 1e-4  # the step moved every weight: not vacuous
            np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-5)
    finally:
        pynn.set_device(previous)


# -- bad inputs ----------------------------------------------------------------------------

X = np.ones((2, 4, 5, 6, 3))


@pytest.mark.parametrize("call, error, match", [
    (lambda: pool.maxpool3d_forward(X[0], 2, 2, "valid"), ValueError, "dimensions"),
    (lambda: pool.maxpool3d_forward(X, (2, 2), 2, "valid"), ValueError,
     "maxpool3d_forward: 'pool_size' must be an int or 3"),
    (lambda: pool.avgpool3d_forward(X, 2, (1, 0, 1), "valid"), ValueError,
     "avgpool3d_forward: 'strides' must be an int or 3 positive"),
    (lambda: pool.avgpool3d_forward(X, 2, 2, "full"), ValueError, "'valid' or 'same'"),
    (lambda: pool.maxpool3d_forward(X.astype(str), 2, 2, "valid"), TypeError, "numeric"),
    (lambda: pool.maxpool3d_backward(np.ones((2, 2, 2, 3, 3)), np.zeros((2, 2, 2, 3, 2),
                                                                       np.int32), X.shape),
     ValueError, "'argmax' must have shape"),
    (lambda: pool.maxpool3d_backward(np.ones((2, 2, 2, 3, 3)),
                                     np.full((2, 2, 2, 3, 3), 120, np.int32), X.shape),
     ValueError, r"argmax entries outside \[0, D\*H\*W\) = \[0, 120\)"),
    (lambda: pool.maxpool3d_backward(np.ones((2, 2, 2, 3, 3)),
                                     np.zeros((2, 2, 2, 3, 3), np.int32), (2, 4, 5, 3)),
     ValueError, "input_shape"),
    (lambda: pool.maxpool3d_backward(np.ones((1, 1, 1, 1, 1)), np.zeros((1, 1, 1, 1, 1),
                                                                       np.int32),
                                     (1, 2**11, 2**11, 2**10, 1)),
     ValueError, "maxpool3d_backward: a volume of D\\*H\\*W = 4294967296 voxels exceeds"),
    (lambda: pool.avgpool3d_backward(np.ones((2, 2, 2, 2, 3)), X.shape, 2, 2, "valid"),
     ValueError, r"'dy' must have shape \(2, 2, 2, 3, 3\)"),
    (lambda: spatial.pad3d_forward(X, ((1, 1), (1, 1))), ValueError,
     r"pad3d_forward: 'padding' must be \(\(front, back\)"),
    (lambda: spatial.pad3d_forward(X, ((1, 1), (1, -1), (0, 0))), ValueError, "non-negative"),
    (lambda: spatial.pad3d_backward(X, ((3, 2), (0, 0), (0, 0))), ValueError, "D=4"),
    (lambda: spatial.pad3d_backward(X, ((0, 0), (0, 0), (3, 4))), ValueError, "W=6"),
    (lambda: spatial.upsample3d_forward(X, (2, 0, 1)), ValueError,
     "upsample3d_forward: 'size'"),
    (lambda: spatial.upsample3d_forward(X[..., 0], 2), ValueError, "dimensions"),
    (lambda: spatial.upsample3d_backward(X, (2, 2, 2, 3, 3), 2), ValueError,
     r"'dy' must have shape \(2, 4, 4, 6, 3\)"),
    (lambda: spatial.upsample3d_backward(X, (2, 2, 3), 2), ValueError, "input_shape"),
])
def test_bad_op_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.opencl
def test_opencl_refuses_host_arrays(backend_opencl):
    x = X.astype(np.float32)
    for call in (lambda: backend_opencl.ops.maxpool3d_forward(x, 2, 2, "valid"),
                 lambda: backend_opencl.ops.avgpool3d_forward(x, 2, 2, "valid"),
                 lambda: backend_opencl.ops.pad3d_forward(x, ((1, 1),) * 3),
                 lambda: backend_opencl.ops.upsample3d_forward(x, 2)):
        with pytest.raises(TypeError, match="asarray"):
            call()


@pytest.mark.opencl
def test_opencl_skips_an_argmax_outside_the_volume(backend_opencl):
    """The CPU raises on an out-of-range argmax; the OpenCL kernel skips it (never writes
    outside dx), as maxpool2d_backward."""
    ocl = backend_opencl.ops
    dy = ocl.asarray(np.ones((1, 1, 1, 1, 2), np.float32))
    arg = ocl.asarray(np.array([8, 3], np.int32).reshape(1, 1, 1, 1, 2), np.int32)
    dx = ocl.maxpool3d_backward(dy, arg, (1, 2, 2, 2, 2)).get()
    want = np.zeros((1, 8, 2), np.float32)
    want[0, 3, 1] = 1.0
    np.testing.assert_array_equal(dx.reshape(1, 8, 2), want)


@pytest.mark.parametrize("make, error, match", [
    (lambda: layers.MaxPooling3D(pool_size=(2, 2)), ValueError,
     "MaxPooling3D '.*': pool_size must be an int or 3"),
    (lambda: layers.AveragePooling3D(strides=(1, 0, 1)), ValueError,
     "AveragePooling3D '.*': strides"),
    (lambda: layers.MaxPooling3D(padding="causal"), ValueError, "'valid' or 'same'"),
    (lambda: layers.MaxPooling3D(2**64), ValueError, "MaxPooling3D '.*': pool_size must be at"),
    (lambda: layers.MaxPooling3D(True), ValueError, "MaxPooling3D '.*': pool_size must be an"),
    (lambda: layers.AveragePooling3D(2.5), ValueError, "AveragePooling3D '.*': pool_size"),
    (lambda: layers.MaxPooling3D(data_format="channels_first"), ValueError, "channels_last"),
    (lambda: layers.MaxPooling3D(5)(X), ValueError,
     r"MaxPooling3D '.*': pool_size \(5, 5, 5\) is larger than the input"),
    (lambda: layers.AveragePooling3D()(X[0]), ValueError,
     r"AveragePooling3D '.*': expected input shape \(None, D, H, W, C\), got \(None, 5, 6, 3\)"),
    (lambda: layers.GlobalMaxPooling3D()(X[..., 0]), ValueError,
     r"GlobalMaxPooling3D '.*': expected input shape \(None, D, H, W, C\)"),
    (lambda: layers.GlobalAveragePooling3D(data_format="channels_first"), ValueError,
     "channels_last"),
    (lambda: layers.UpSampling3D(size=(2, 2)), ValueError, "UpSampling3D '.*': size"),
    (lambda: layers.UpSampling3D(interpolation="bilinear"), TypeError, "interpolation"),
    (lambda: layers.ZeroPadding3D(((1, 2), (3,), 1)), ValueError, "ZeroPadding3D .*padding"),
    (lambda: layers.ZeroPadding3D("1"), ValueError, "ZeroPadding3D .*padding"),
    (lambda: layers.ZeroPadding3D((1, 1)), ValueError, "ZeroPadding3D .*tuple of 3"),
    (lambda: layers.Cropping3D(-1), ValueError, "Cropping3D '.*': cropping must be non-neg"),
    (lambda: layers.Cropping3D(((2, 2), 0, 0))(X), ValueError,
     r"Cropping3D '.*'.*at least one voxel.*\(None, 4, 5, 6, 3\)"),
    (lambda: layers.Cropping3D()(X[0]), ValueError,
     r"Cropping3D '.*': expected input shape \(None, D, H, W, C\)"),
])
def test_bad_layer_inputs(make, error, match):
    with pytest.raises(error, match=match):
        make()
