"""Spatial ops (native/spatial.pyx, opencl/spatial.cl) against the float64 oracles of
tests/reference/spatial_ref.py, over both backends; the layers on them (UpSampling2D,
ZeroPadding2D, Cropping2D) by finite differences and against Keras 3 itself; bad inputs.

pad2d_forward / pad2d_backward are a zero pad and the crop that undoes it: ZeroPadding2D
runs them forward / backward, Cropping2D backward / forward.
"""

import json
import os

import numpy as np
import pytest

from pynn import layers
from pynn._native import info, spatial
from tests.backend_util import check_op, rand
from tests.reference import spatial_ref as ref
from tests.reference.gradcheck import check_layer

TOL = {np.float32: {"rtol": 1e-5, "atol": 1e-6}, np.float64: {"rtol": 1e-13, "atol": 1e-13}}

# (x shape, ((top, bottom), (left, right))): odd sizes, asymmetric and one-sided paddings.
PAD_CASES = [
    ((2, 5, 7, 3), ((1, 1), (1, 1))),
    ((1, 4, 3, 5), ((2, 0), (0, 3))),
    ((3, 1, 1, 1), ((0, 4), (5, 0))),
    ((2, 7, 6, 33), ((3, 1), (2, 4))),
    ((2, 5, 5, 2), ((0, 0), (0, 0))),
    ((0, 3, 3, 2), ((1, 2), (1, 2))),       # empty batch
    ((2, 3, 4, 0), ((1, 0), (0, 1))),       # no channels
    ((2, 0, 3, 2), ((1, 1), (0, 0))),       # an empty image padded: all zeros
    ((1, 3, 0, 2), ((0, 1), (2, 1))),
]
# (x shape, size): factors 1 to 4, unequal along H and W; one case large enough to thread.
UP_CASES = [
    ((2, 3, 5, 3), (2, 2)),
    ((1, 4, 3, 7), (3, 2)),
    ((2, 1, 1, 2), (2, 3)),
    ((1, 5, 2, 1), (1, 4)),
    ((3, 7, 9, 5), (1, 1)),
    ((2, 13, 11, 65), (2, 3)),
    ((0, 3, 3, 2), (2, 2)),
]
INTERPOLATIONS = ["nearest", "bilinear"]


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


def tol(target, interpolation="nearest"):
    if target.is_opencl:
        return target.rtol("reduction")
    if interpolation == "bilinear" and target.dtype == np.float32:
        # Bilinear weights are rounded to float32 as torch rounds them (the scale in/out,
        # then the sampling point): ~1e-7 relative per weight, times the index.
        return {"rtol": 1e-5, "atol": 1e-5}
    return TOL[target.dtype.type]


# -- ops against the reference, both backends (``target``: cpu float32/float64, opencl) ----


@pytest.mark.parametrize("shape, padding", PAD_CASES, ids=[str(c) for c in PAD_CASES])
def test_pad2d_matches_reference(target, rng, shape, padding):
    x = rand(rng, shape, target.dtype)
    _, y = check_op(target, "pad2d_forward", x, padding, ref=ref.pad2d_forward_ref,
                    rtol=tol(target))
    dy = rand(rng, y.shape, target.dtype)
    check_op(target, "pad2d_backward", dy, padding, ref=ref.pad2d_backward_ref,
             rtol=tol(target))


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("shape, size", UP_CASES, ids=[str(c) for c in UP_CASES])
def test_upsample2d_matches_reference(target, rng, shape, size, interpolation):
    x = rand(rng, shape, target.dtype)
    _, y = check_op(target, "upsample2d_forward", x, size, interpolation,
                    ref=ref.upsample2d_forward_ref, rtol=tol(target, interpolation))
    dy = rand(rng, y.shape, target.dtype)
    check_op(target, "upsample2d_backward", dy, shape, size, interpolation,
             ref=ref.upsample2d_backward_ref, rtol=tol(target, interpolation))


def test_bilinear_weights_are_torch_half_pixel():
    """Golden values: factor 2 on a row [0, 1, 2] samples at -0.25 (clamped to 0), 0.25,
    0.75, 1.25, 1.75, 2.25 (past the last pixel: the edge repeats)."""
    x = np.array([0.0, 1.0, 2.0]).reshape(1, 1, 3, 1)
    y = spatial.upsample2d_forward(x, (1, 2), "bilinear")
    np.testing.assert_array_equal(y.ravel(), [0.0, 0.25, 0.75, 1.25, 1.75, 2.0])
    dy = np.arange(1.0, 7.0).reshape(1, 1, 6, 1)
    dx = spatial.upsample2d_backward(dy, (1, 1, 3, 1), (1, 2), "bilinear")
    np.testing.assert_array_equal(dx.ravel(), [1 + 0.75 * 2 + 0.25 * 3,
                                               0.25 * 2 + 0.75 * 3 + 0.75 * 4 + 0.25 * 5,
                                               0.25 * 4 + 0.75 * 5 + 6])


def test_bilinear_matches_torch_interpolate(rng):
    """Keras 3's torch backend is F.interpolate(align_corners=False, antialias=False): the
    same numbers, float32 and float64, forward and (through autograd) backward."""
    torch = pytest.importorskip("torch")
    for dtype in (np.float32, np.float64):
        x = rand(rng, (2, 5, 4, 3), dtype)
        size = (3, 2)
        xt = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_(True)
        yt = torch.nn.functional.interpolate(xt, size=(15, 8), mode="bilinear",
                                             align_corners=False, antialias=False)
        dy = rand(rng, (2, 15, 8, 3), dtype)
        yt.backward(torch.from_numpy(dy).permute(0, 3, 1, 2))
        want_y = yt.detach().permute(0, 2, 3, 1).numpy()
        want_dx = xt.grad.permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(spatial.upsample2d_forward(x, size, "bilinear"), want_y,
                                   **TOL[dtype])
        np.testing.assert_allclose(spatial.upsample2d_backward(dy, x.shape, size, "bilinear"),
                                   want_dx, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thread_count_invariance(rng, dtype):
    x = rand(rng, (3, 17, 15, 70), dtype)
    previous = info.get_max_threads()
    results = []
    try:
        for n in (1, 2, 3):
            info.set_num_threads(n)
            res = [spatial.pad2d_forward(x, ((2, 1), (0, 3))),
                   spatial.pad2d_backward(x, ((2, 1), (0, 3)))]
            for mode in INTERPOLATIONS:
                y = spatial.upsample2d_forward(x, (2, 3), mode)
                res += [y, spatial.upsample2d_backward(y, x.shape, (2, 3), mode)]
            results.append(res)
    finally:
        info.set_num_threads(previous)
    for res in results[1:]:
        for got, want in zip(res, results[0]):
            np.testing.assert_array_equal(got, want)


def test_backward_is_deterministic_on_backend(backend):
    rng = np.random.default_rng(3)
    dy = backend.up(rand(rng, (2, 14, 15, 3)))
    a = backend.down(backend.ops.upsample2d_backward(dy, (2, 7, 5, 3), (2, 3), "bilinear"))
    b = backend.down(backend.ops.upsample2d_backward(dy, (2, 7, 5, 3), (2, 3), "bilinear"))
    np.testing.assert_array_equal(a, b)


def test_layouts_and_read_only_inputs(rng):
    x = rand(rng, (2, 5, 6, 3), np.float32)
    view = np.asfortranarray(x)
    view.flags.writeable = False
    np.testing.assert_array_equal(spatial.pad2d_forward(view, ((1, 2), (3, 0))),
                                  spatial.pad2d_forward(x, ((1, 2), (3, 0))))
    np.testing.assert_array_equal(spatial.upsample2d_forward(view, (2, 2), "bilinear"),
                                  spatial.upsample2d_forward(x, (2, 2), "bilinear"))


# -- layers: finite differences (float64), Keras parity, config ---------------------------

LAYER_CASES = [
    (lambda: layers.UpSampling2D((2, 3)), (2, 3, 4, 2)),
    (lambda: layers.UpSampling2D(2, interpolation="bilinear"), (2, 3, 5, 2)),
    (lambda: layers.UpSampling2D((3, 2), interpolation="bilinear"), (1, 4, 3, 3)),
    (lambda: layers.ZeroPadding2D(), (2, 3, 4, 2)),
    (lambda: layers.ZeroPadding2D(((2, 0), (1, 3))), (1, 3, 5, 2)),
    (lambda: layers.Cropping2D(((1, 0), (2, 1))), (2, 4, 6, 2)),
    (lambda: layers.Cropping2D((1, 2)), (1, 5, 7, 3)),
]
LAYER_IDS = ["up-nearest", "up-bilinear", "up-bilinear-3x2", "pad", "pad-asym", "crop-asym",
             "crop-sym"]


@pytest.mark.parametrize("make, shape", LAYER_CASES, ids=LAYER_IDS)
def test_layer_gradients(float64, seeded, make, shape):
    layer = make()
    y = check_layer(layer, seeded.standard_normal(shape), seeded)
    assert y.shape[1:] == layer.output_shape[1:]


def _keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras runs on {keras.backend.backend()}, parity wants torch")
    return keras


KERAS_CASES = [
    ("UpSampling2D", {"size": (2, 3)}, (2, 3, 5, 4)),
    ("UpSampling2D", {"size": (2, 2), "interpolation": "bilinear"}, (2, 5, 3, 4)),
    ("UpSampling2D", {"size": (3, 4), "interpolation": "bilinear"}, (1, 7, 5, 3)),
    ("UpSampling2D", {"size": 1, "interpolation": "bilinear"}, (1, 3, 3, 2)),
    ("ZeroPadding2D", {"padding": 2}, (2, 3, 5, 3)),
    ("ZeroPadding2D", {"padding": (1, 3)}, (2, 3, 5, 3)),
    ("ZeroPadding2D", {"padding": ((3, 0), (1, 2))}, (2, 3, 5, 3)),
    ("Cropping2D", {"cropping": 1}, (2, 5, 6, 3)),
    ("Cropping2D", {"cropping": (2, 1)}, (2, 5, 6, 3)),
    ("Cropping2D", {"cropping": ((0, 2), (3, 0))}, (2, 5, 6, 3)),
]


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("name, kwargs, shape", KERAS_CASES,
                         ids=[f"{n}-{k}" for n, k, _ in KERAS_CASES])
def test_layer_matches_keras(backend, rng, name, kwargs, shape):
    """Same outputs as Keras 3's layer (torch backend) on the same input, and the same
    config keys and values."""
    keras = _keras()
    import pynn

    x = rand(rng, shape)
    want = np.asarray(keras.ops.convert_to_numpy(getattr(keras.layers, name)(**kwargs)(x)))
    previous = pynn.backend.device()
    try:
        pynn.set_device(backend.name)
        got = backend.down(getattr(layers, name)(**kwargs)(backend.up(x)))
    finally:
        pynn.set_device(previous)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    k_config = getattr(keras.layers, name)(**kwargs).get_config()
    p_config = getattr(layers, name)(**kwargs).get_config()
    for key in set(k_config) & set(p_config) - {"name", "dtype", "trainable"}:
        assert json.loads(json.dumps(p_config[key])) == json.loads(json.dumps(k_config[key])), key


@pytest.mark.parametrize("make", [c[0] for c in LAYER_CASES], ids=LAYER_IDS)
def test_config_round_trip(make):
    layer = make()
    config = json.loads(json.dumps(layer.get_config()))
    clone = layers.LAYERS[type(layer).__name__].from_config(config)
    assert type(clone) is type(layer) and clone.get_config() == layer.get_config()
    x = np.arange(2 * 5 * 6 * 3, dtype=np.float32).reshape(2, 5, 6, 3)
    np.testing.assert_array_equal(clone(x), layer(x))


# -- bad inputs -------------------------------------------------------------------------

X = np.ones((2, 4, 5, 3))


@pytest.mark.parametrize("call, error, match", [
    (lambda: spatial.pad2d_forward(X[0], ((1, 1), (1, 1))), ValueError, "dimensions"),
    (lambda: spatial.pad2d_forward(X, ((1, -1), (1, 1))), ValueError, "non-negative"),
    (lambda: spatial.pad2d_forward(X, (1, 1)), ValueError, r"\(\(top, bottom\)"),
    (lambda: spatial.pad2d_forward(X, ((1, 1, 1), (1, 1))), ValueError, "padding"),
    (lambda: spatial.pad2d_backward(X, ((3, 2), (0, 0))), ValueError, "H=4"),
    (lambda: spatial.pad2d_backward(X, ((0, 0), (3, 3))), ValueError, "W=5"),
    (lambda: spatial.pad2d_forward(X.astype(str), ((1, 1), (1, 1))), TypeError, "numeric"),
    (lambda: spatial.upsample2d_forward(X, (2, 0), "nearest"), ValueError, "size"),
    (lambda: spatial.upsample2d_forward(X, 2, "bicubic"), ValueError, "interpolation"),
    (lambda: spatial.upsample2d_backward(X, (2, 2, 2, 3), (2, 2), "nearest"), ValueError,
     r"'dy' must have shape \(2, 4, 4, 3\)"),
    (lambda: spatial.upsample2d_backward(X, (2, 2, 3), (2, 2), "nearest"), ValueError,
     "input_shape"),
])
def test_bad_op_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.opencl
def test_opencl_refuses_host_arrays(backend_opencl):
    with pytest.raises(TypeError, match="asarray"):
        backend_opencl.ops.pad2d_forward(X.astype(np.float32), ((1, 1), (1, 1)))
    with pytest.raises(TypeError, match="asarray"):
        backend_opencl.ops.upsample2d_forward(X.astype(np.float32), (2, 2), "nearest")


@pytest.mark.parametrize("make, error, match", [
    (lambda: layers.Cropping2D(((2, 2), (0, 0)))(X), ValueError,
     r"Cropping2D '.*'.*at least one row.*\(None, 4, 5, 3\)"),
    (lambda: layers.Cropping2D((0, 3))(X), ValueError, r"cropping \(\(0, 0\), \(3, 3\)\)"),
    (lambda: layers.Cropping2D(-1), ValueError, "Cropping2D '.*': cropping must be non-neg"),
    (lambda: layers.Cropping2D((1, 2, 3)), ValueError, "Cropping2D .*tuple of 2"),
    (lambda: layers.ZeroPadding2D(((1, 2), (3,))), ValueError, "ZeroPadding2D .*padding"),
    (lambda: layers.ZeroPadding2D("1"), ValueError, "ZeroPadding2D .*padding"),
    (lambda: layers.ZeroPadding2D()(X[0]), ValueError,
     r"ZeroPadding2D '.*': expected input shape \(None, H, W, C\), got \(None, 5, 3\)"),
    (lambda: layers.UpSampling2D(interpolation="bicubic"), ValueError,
     "UpSampling2D '.*': interpolation must be one of"),
    (lambda: layers.UpSampling2D(size=0), ValueError, "UpSampling2D '.*': size"),
    (lambda: layers.UpSampling2D(data_format="channels_first"), ValueError, "channels_last"),
    (lambda: layers.UpSampling2D(foo=1), TypeError, "foo"),
])
def test_bad_layer_inputs(make, error, match):
    with pytest.raises(error, match=match):
        make()


def _spatial_model(lib):
    """Every layer of the spatial and shape families between trainable layers, so a training
    step's weight updates depend on each one's backward."""
    L = lib.layers
    return lib.Sequential([
        L.Input((6, 7, 2)),
        L.ZeroPadding2D(((1, 0), (2, 1))),
        L.Conv2D(3, 3, activation="tanh"),
        L.UpSampling2D((2, 3), interpolation="bilinear"),
        L.Cropping2D(((1, 2), (0, 3))),
        L.Conv2D(2, 3, strides=2, activation="tanh"),
        L.UpSampling2D(2),
        L.Permute((2, 1, 3)),
        L.Flatten(),
        L.Dense(5, activation="tanh"),
        L.RepeatVector(3),
        L.Permute((2, 1)),
        L.Identity(),
        L.Flatten(),
        L.Dense(3, activation="softmax"),
    ])


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_model_matches_keras_prediction_and_training(backend, rng):
    """Keras's weights in, Keras's predictions out; one epoch of SGD (three batches) lands
    on Keras's weights, which tests every layer's backward against Keras's autodiff."""
    keras = _keras()
    import pynn

    keras.utils.set_random_seed(5)
    k_model = _spatial_model(keras)
    previous = pynn.backend.device()
    try:
        pynn.set_device(backend.name)
        _fit_against_keras(keras, pynn, k_model, rng)
    finally:
        pynn.set_device(previous)


def _fit_against_keras(keras, pynn, k_model, rng):
    p_model = _spatial_model(pynn)
    p_model.set_weights(k_model.get_weights())
    x = rand(rng, (20, 6, 7, 2))
    y = rng.integers(0, 3, 20).astype(np.int32)
    want = np.asarray(keras.ops.convert_to_numpy(k_model.predict(x, verbose=0)))
    np.testing.assert_allclose(p_model.predict(x, batch_size=8), want, rtol=1e-5, atol=1e-6)
    before = p_model.get_weights()
    for model, lib in ((k_model, keras), (p_model, pynn)):
        model.compile(optimizer=lib.optimizers.SGD(learning_rate=0.5),
                      loss="sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for got, w, w0 in zip(p_model.get_weights(), k_model.get_weights(), before):
        w = np.asarray(keras.ops.convert_to_numpy(w))
        assert np.abs(w - w0).max() > 1e-3  # the step moved every weight: not vacuous
        np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-5)


def _shared_graph(pynn):
    """A functional graph calling UpSampling2D, ZeroPadding2D, Cropping2D and RepeatVector
    twice each (shared layers: each call keeps its own cache) on two Conv2D towers."""
    L = pynn.layers
    inp = pynn.Input((4, 5, 2))
    up = L.UpSampling2D((2, 1), interpolation="bilinear")
    pad = L.ZeroPadding2D(((1, 0), (0, 2)))
    crop = L.Cropping2D(((0, 1), (2, 0)))
    perm = L.Permute((2, 1, 3))
    a = crop(pad(up(L.Conv2D(2, 2, activation="tanh")(inp))))
    b = crop(pad(up(L.Conv2D(2, (3, 1), activation="tanh")(perm(inp)))))
    a = L.Flatten()(L.Permute((2, 1, 3))(a))
    b = L.Flatten()(b)
    rep = L.RepeatVector(2)
    h = L.Dense(3, activation="tanh")(a)
    g = L.Dense(3, activation="tanh")(b)
    out = L.Flatten()(L.Identity()(L.Permute((2, 1))(rep(h))))
    out2 = L.Flatten()(rep(g))
    return pynn.Model(inp, [out, out2])


def test_shared_layers_in_a_functional_graph_by_finite_differences(float64, seeded):
    import pynn
    from tests.reference.gradcheck import check_model

    model = _shared_graph(pynn)
    model.compile("sgd", ["mse", "mse"])
    model.set_weights([seeded.standard_normal(w.shape) * 0.5 for w in model.get_weights()])
    x = seeded.standard_normal((3, 4, 5, 2))
    check_model(model, x, [seeded.standard_normal((3, 6)), seeded.standard_normal((3, 6))])


def test_saved_model_with_every_layer_loads_and_predicts_the_same(tmp_path, seeded):
    import pynn

    model = _shared_graph(pynn)
    x = seeded.standard_normal((3, 4, 5, 2)).astype(np.float32)
    model.save(tmp_path / "m.pynn")
    loaded = pynn.load_model(tmp_path / "m.pynn")
    for got, want in zip(loaded.predict(x), model.predict(x)):
        np.testing.assert_array_equal(got, want)
