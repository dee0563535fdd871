"""Shape ops (native/shape.pyx, opencl/shape.cl) against the float64 oracles of
tests/reference/shape_ref.py over both backends; the layers on them (Permute, RepeatVector)
and Identity by finite differences and against Keras 3 itself; bad inputs."""

import json

import numpy as np
import pytest

from pynn import layers
from pynn._native import info, shape
from tests.backend_util import check_op, keras_on_torch, rand
from tests.reference import shape_ref as ref
from tests.reference.gradcheck import check_layer

# (x shape, perm over every axis)
TRANSPOSE_CASES = [
    ((3, 5, 7), (0, 2, 1)),
    ((2, 3, 4, 5), (0, 3, 1, 2)),
    ((2, 3, 4, 5), (0, 2, 3, 1)),
    ((2, 3, 4, 5), (0, 1, 2, 3)),          # identity: contiguous rows
    ((1, 2, 3, 4, 5, 3), (0, 5, 3, 1, 4, 2)),  # the six-axis limit
    ((7, 33), (1, 0)),
    ((5,), (0,)),
    ((0, 3, 4), (0, 2, 1)),                # empty batch
    ((2, 65, 17, 9), (0, 3, 2, 1)),        # large enough to thread
]
REPEAT_CASES = [((3, 5), 4), ((1, 1), 1), ((2, 33), 7), ((0, 4), 3), ((4, 0), 2),
                ((64, 130), 9)]


@pytest.fixture
def rng():
    return np.random.default_rng(77)


def tol(target):
    return target.rtol() if target.is_opencl else (1e-6 if target.dtype == np.float32 else 1e-14)


@pytest.mark.parametrize("xshape, perm", TRANSPOSE_CASES, ids=[str(c) for c in TRANSPOSE_CASES])
def test_transpose_matches_reference(target, rng, xshape, perm):
    x = rand(rng, xshape, target.dtype)
    _, y = check_op(target, "transpose_forward", x, perm, ref=ref.transpose_forward_ref,
                    rtol=0)
    dy = rand(rng, y.shape, target.dtype)
    check_op(target, "transpose_backward", dy, perm, ref=ref.transpose_backward_ref, rtol=0)


@pytest.mark.parametrize("xshape, n", REPEAT_CASES, ids=[str(c) for c in REPEAT_CASES])
def test_repeat_vector_matches_reference(target, rng, xshape, n):
    x = rand(rng, xshape, target.dtype)
    _, y = check_op(target, "repeat_vector_forward", x, n, ref=ref.repeat_vector_forward_ref,
                    rtol=0)
    dy = rand(rng, y.shape, target.dtype)
    check_op(target, "repeat_vector_backward", dy, ref=ref.repeat_vector_backward_ref,
             rtol=tol(target), kind="reduction")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thread_count_invariance(rng, dtype):
    x = rand(rng, (4, 33, 17, 70), dtype)
    dy = rand(rng, (300, 9, 40), dtype)
    previous = info.get_max_threads()
    results = []
    try:
        for n in (1, 2, 3):
            info.set_num_threads(n)
            results.append((shape.transpose_forward(x, (0, 3, 1, 2)),
                            shape.transpose_backward(x, (0, 2, 3, 1)),
                            shape.repeat_vector_forward(dy[:, 0], 5),
                            shape.repeat_vector_backward(dy)))
    finally:
        info.set_num_threads(previous)
    for res in results[1:]:
        for got, want in zip(res, results[0]):
            np.testing.assert_array_equal(got, want)


# -- layers --------------------------------------------------------------------------------

LAYER_CASES = [
    (lambda: layers.Permute((2, 1)), (3, 4, 5)),
    (lambda: layers.Permute((3, 1, 2)), (2, 3, 4, 5)),
    (lambda: layers.Permute((2, 4, 1, 3)), (1, 2, 3, 2, 3)),
    (lambda: layers.RepeatVector(3), (4, 5)),
    (lambda: layers.Identity(), (2, 3, 5)),
]
LAYER_IDS = ["permute-2", "permute-3", "permute-4", "repeat", "identity"]


@pytest.mark.parametrize("make, xshape", LAYER_CASES, ids=LAYER_IDS)
def test_layer_gradients(float64, seeded, make, xshape):
    layer = make()
    y = check_layer(layer, seeded.standard_normal(xshape), seeded)
    assert y.shape[1:] == layer.output_shape[1:]


@pytest.mark.parametrize("make, xshape", LAYER_CASES, ids=LAYER_IDS)
def test_config_round_trip(make, xshape):
    layer = make()
    config = json.loads(json.dumps(layer.get_config()))
    clone = layers.LAYERS[type(layer).__name__].from_config(config)
    assert type(clone) is type(layer) and clone.get_config() == layer.get_config()
    x = np.arange(np.prod(xshape), dtype=np.float32).reshape(xshape)
    np.testing.assert_array_equal(clone(x), layer(x))


_keras = keras_on_torch


KERAS_CASES = [
    ("Permute", {"dims": (2, 1)}, (3, 4, 5)),
    ("Permute", {"dims": (3, 1, 2)}, (2, 3, 4, 5)),
    ("Permute", {"dims": (1, 2, 3)}, (2, 3, 4, 5)),
    ("RepeatVector", {"n": 4}, (3, 7)),
    ("Identity", {}, (2, 3, 4)),
]


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("name, kwargs, xshape", KERAS_CASES,
                         ids=[f"{n}-{k}" for n, k, _ in KERAS_CASES])
def test_layer_matches_keras(backend, rng, name, kwargs, xshape):
    keras = _keras()
    import pynn

    x = rand(rng, xshape)
    want = np.asarray(keras.ops.convert_to_numpy(getattr(keras.layers, name)(**kwargs)(x)))
    previous = pynn.backend.device()
    try:
        pynn.set_device(backend.name)
        got = backend.down(getattr(layers, name)(**kwargs)(backend.up(x)))
    finally:
        pynn.set_device(previous)
    np.testing.assert_array_equal(got, want)
    k_config = getattr(keras.layers, name)(**kwargs).get_config()
    p_config = getattr(layers, name)(**kwargs).get_config()
    for key in set(k_config) & set(p_config) - {"name", "dtype", "trainable"}:
        assert json.loads(json.dumps(p_config[key])) == json.loads(json.dumps(k_config[key])), key


# -- bad inputs ----------------------------------------------------------------------------

X = np.ones((2, 3, 4))


@pytest.mark.parametrize("call, error, match", [
    (lambda: shape.transpose_forward(X, (0, 1)), ValueError, r"permutation of the 3 axes"),
    (lambda: shape.transpose_forward(X, (0, 1, 1)), ValueError, "permutation"),
    (lambda: shape.transpose_forward(X, (0, 1, "2")), ValueError, "ints"),
    (lambda: shape.transpose_backward(X, (0, 3, 1)), ValueError, "permutation"),
    (lambda: shape.transpose_forward(np.ones((1,) * 7), tuple(range(7))), ValueError,
     "1 to 6 dimensions"),
    (lambda: shape.transpose_forward(np.ones(()), ()), ValueError, "1 to 6 dimensions"),
    (lambda: shape.repeat_vector_forward(X, 2), ValueError, "2 dimensions"),
    (lambda: shape.repeat_vector_forward(X[0], 0), ValueError, r"'n' must be in \[1"),
    (lambda: shape.repeat_vector_forward(X[0], 2.5), TypeError, "'n' must be an int"),
    (lambda: shape.repeat_vector_forward(X[0], True), TypeError, "'n' must be an int"),
    (lambda: shape.repeat_vector_backward(X[0]), ValueError, "3 dimensions"),
    (lambda: shape.repeat_vector_backward(np.ones((2, 0, 3))), ValueError, "n >= 1"),
])
def test_bad_op_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.opencl
def test_opencl_refuses_host_arrays(backend_opencl):
    with pytest.raises(TypeError, match="asarray"):
        backend_opencl.ops.transpose_forward(X.astype(np.float32), (0, 2, 1))
    with pytest.raises(TypeError, match="asarray"):
        backend_opencl.ops.repeat_vector_backward(X.astype(np.float32))


@pytest.mark.parametrize("make, error, match", [
    (lambda: layers.Permute((1, 3)), ValueError, r"Permute '.*': dims must be a permutation"),
    (lambda: layers.Permute((0, 1)), ValueError, "Permute '.*': dims must be a permutation"),
    (lambda: layers.Permute((2, 1))(np.ones((2, 3, 4, 5))), ValueError,
     r"Permute '.*': dims=\(2, 1\) .*rank 3 .*got shape \(None, 3, 4, 5\)"),
    (lambda: layers.Permute((1, 2, 3, 4, 5, 6)), ValueError, "at most 5 axes"),
    (lambda: layers.Permute("ab"), ValueError, "Permute '.*': dims must be a tuple of ints"),
    (lambda: layers.RepeatVector(0), ValueError, "RepeatVector '.*': n must be a positive"),
    (lambda: layers.RepeatVector(2.0), TypeError, "RepeatVector '.*': n must be an int"),
    (lambda: layers.RepeatVector(2)(X), ValueError,
     r"RepeatVector '.*': expected input shape \(None, F\), got \(None, 3, 4\)"),
    (lambda: layers.Identity(foo=1), TypeError, "foo"),
])
def test_bad_layer_inputs(make, error, match):
    with pytest.raises(error, match=match):
        make()
