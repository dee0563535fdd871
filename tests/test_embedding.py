"""The embedding ops (native/embedding.pyx, opencl/embedding.cl) against their float64
references over both backends, and Keras 3's Embedding layer: gradients by finite
differences, Keras parity, config, masks and bad indices."""

import json

import numpy as np
import pytest

from pynn import layers
from tests.backend_util import check_op, keras_on_torch, rand
from tests.reference import embedding_ref as ref
from tests.reference.gradcheck import check_layer


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


def _indices(rng, shape, input_dim):
    idx = rng.integers(0, input_dim, shape)
    idx.reshape(-1)[0] = input_dim - 1  # the last row is always looked up
    return idx


@pytest.mark.parametrize("shape, input_dim, output_dim", [
    ((7,), 5, 3), ((3, 11), 31, 1), ((2, 3, 5), 7, 33), ((1, 1), 1, 65),
])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64, np.float32])
def test_embedding_forward(backend, rng, shape, input_dim, output_dim, index_dtype):
    idx = _indices(rng, shape, input_dim).astype(index_dtype)
    table = rand(rng, (input_dim, output_dim))
    # Upload the indices in their own dtype: OpenCL's kernel reads int32, int64 and float32.
    raw = backend.op("embedding_forward")(backend.up(idx, idx.dtype), backend.up(table))
    got = backend.down(raw)
    assert got.shape == shape + (output_dim,) and got.dtype == np.float32
    np.testing.assert_array_equal(got, ref.embedding_forward_ref(idx, table).astype(np.float32))


@pytest.mark.parametrize("shape, input_dim, output_dim", [
    ((7,), 5, 3), ((3, 11), 31, 1), ((4, 33), 7, 33), ((2, 3, 5), 65, 2),
])
def test_embedding_backward(backend, rng, shape, input_dim, output_dim):
    idx = _indices(rng, shape, input_dim).astype(np.int32)
    dy = rand(rng, shape + (output_dim,))
    check_op(backend, "embedding_backward", dy, idx, input_dim,
             ref=ref.embedding_backward_ref, kind="reduction")


def test_embedding_backward_float64_and_threads(rng, num_threads):
    """float64 on the CPU; the grouping fixes the order of every sum, so every thread count
    gives the same bits."""
    from pynn._native import embedding

    idx = rng.integers(0, 50, (64, 40))
    dy = rng.standard_normal((64, 40, 16))
    want = embedding.embedding_backward(dy, idx, 50)
    np.testing.assert_allclose(want, ref.embedding_backward_ref(dy, idx, 50), rtol=1e-12,
                               atol=1e-12)
    for n in (1, 2, 3):
        num_threads(n)
        np.testing.assert_array_equal(embedding.embedding_backward(dy, idx, 50), want)


def test_embedding_backward_is_deterministic(backend, rng):
    """Many repeats of few indices: the sums come out with the same bits on every run."""
    idx = rng.integers(0, 3, (200, 9)).astype(np.int32)
    dy = rand(rng, (200, 9, 5))
    runs = [backend.down(backend.op("embedding_backward")(backend.up(dy), backend.up(idx), 3))
            for _ in range(3)]
    for r in runs[1:]:
        np.testing.assert_array_equal(r, runs[0])


@pytest.mark.parametrize("bad, index_dtype", [
    (7, np.int32), (-1, np.int32), (2**40, np.int64), (-3, np.int64), (2.5, np.float32),
    (7.0, np.float32), (np.nan, np.float32),
])
def test_bad_indices_are_named(backend, bad, index_dtype):
    """A bad index is a ValueError naming it and input_dim, on both backends; OpenCL's
    kernel flags it instead of reading past the table."""
    idx = np.array([[0, 1], [2, 3]], dtype=np.float64)
    idx[1, 0] = bad
    idx = idx.astype(index_dtype) if index_dtype != np.float32 else idx.astype(np.float32)
    table = np.ones((7, 2), np.float32)
    with pytest.raises(ValueError, match=r"index .* out of range.*input_dim=7"):
        backend.op("embedding_forward")(backend.up(idx, idx.dtype), backend.up(table))
    dy = np.ones((2, 2, 2), np.float32)
    with pytest.raises(ValueError, match=r"index .* out of range.*input_dim=7"):
        backend.op("embedding_backward")(backend.up(dy), backend.up(idx, idx.dtype), 7)


@pytest.mark.parametrize("call, error, match", [
    (lambda o: o.embedding_forward(np.array([0]), np.ones(3, np.float32)), ValueError,
     "'table' must have 2 dimensions"),
    (lambda o: o.embedding_forward(np.array(["a"]), np.ones((3, 2), np.float32)), TypeError,
     "'indices' must be integers"),
    (lambda o: o.embedding_backward(np.ones((2, 3), np.float32), np.array([[0, 1]]), 4),
     ValueError, "'dy' must have shape"),
    (lambda o: o.embedding_backward(np.ones((2, 3), np.float32), np.array([0, 1]), 0),
     ValueError, "'input_dim' must be in"),
])
def test_bad_op_inputs(call, error, match):
    from pynn.backend import cpu

    with pytest.raises(error, match=match):
        call(cpu)


# -- the layer ------------------------------------------------------------------------------

def test_layer_gradient(float64, seeded):
    """Finite differences of the table (the indices have no gradient)."""
    layer = layers.Embedding(9, 4)
    idx = seeded.integers(0, 9, (3, 7)).astype(np.float64)
    y = check_layer(layer, idx, seeded, check_input=False)
    assert y.shape == (3, 7, 4)
    layer(idx, training=True)
    layer.needs_input_grad = True
    assert layer.backward(np.ones((3, 7, 4))) is None


def test_layer_opencl_matches_cpu(backend, rng):
    import pynn

    idx = rng.integers(0, 13, (5, 6)).astype(np.int32)
    table = rand(rng, (13, 4))
    dy = rand(rng, (5, 6, 4))
    previous = pynn.backend.device()
    try:
        pynn.set_device(backend.name)
        layer = layers.Embedding(13, 4)
        layer.build((None, 6))
        layer.set_weights([table])
        y = backend.down(layer(backend.up(idx), training=True))
        layer.backward(backend.up(dy))
        grad = backend.down(layer.embeddings.grad)
    finally:
        pynn.set_device(previous)
    np.testing.assert_array_equal(y, table[idx])
    np.testing.assert_allclose(grad, ref.embedding_backward_ref(dy, idx, 13), rtol=1e-5,
                               atol=1e-6)


def test_layer_names_itself_on_a_bad_index():
    layer = layers.Embedding(5, 2, name="tokens")
    with pytest.raises(ValueError, match=r"Embedding 'tokens': .*index 5 .*input_dim=5"):
        layer(np.array([[1, 5]]))


def test_mask_zero_and_shapes():
    layer = layers.Embedding(6, 3, mask_zero=True)
    idx = np.array([[0, 2, 0], [5, 0, 1]])
    np.testing.assert_array_equal(layer.compute_mask(idx), idx != 0)
    assert layers.Embedding(6, 3).compute_mask(idx) is None
    assert layer.compute_output_shape((None, 3)) == (None, 3, 3)
    layer(idx)
    assert [w.shape for w in layer.get_weights()] == [(6, 3)]
    w = layer.get_weights()[0]
    assert np.all(np.abs(w) <= 0.05) and np.any(w != 0)  # Keras's uniform(-0.05, 0.05)


def test_input_length_is_ignored_with_a_warning():
    with pytest.warns(UserWarning, match="input_length"):
        layer = layers.Embedding(4, 2, input_length=7)
    assert "input_length" not in layer.get_config()


@pytest.mark.parametrize("kwargs, match", [
    ({"input_dim": 0, "output_dim": 2}, "input_dim must be a positive int"),
    ({"input_dim": 3, "output_dim": 2.5}, "output_dim must be a positive int"),
    ({"input_dim": 3, "output_dim": 2, "embeddings_initializer": "nope"}, "initializer"),
])
def test_bad_layer_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        layers.Embedding(**kwargs)


def test_unknown_argument_is_a_type_error():
    with pytest.raises(TypeError, match="unexpected"):
        layers.Embedding(3, 2, bogus=1)


def test_config_round_trip():
    layer = layers.Embedding(11, 3, mask_zero=True, embeddings_regularizer="l2")
    config = json.loads(json.dumps(layer.get_config()))
    clone = layers.LAYERS["Embedding"].from_config(config)
    assert clone.get_config() == layer.get_config()
    idx = np.array([[1, 2, 10]])
    layer(idx)
    clone(idx)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(clone(idx), layer(idx))


_keras = keras_on_torch


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_layer_matches_keras(backend, rng):
    """Same outputs from Keras's weights, int and float indices; same config values."""
    keras = _keras()
    import pynn

    k_layer = keras.layers.Embedding(17, 5)
    idx = rng.integers(0, 17, (4, 9))
    want = np.asarray(keras.ops.convert_to_numpy(k_layer(idx)))
    previous = pynn.backend.device()
    try:
        pynn.set_device(backend.name)
        layer = layers.Embedding(17, 5)
        layer.build((None, 9))
        layer.set_weights(k_layer.get_weights())
        for data in (idx.astype(np.int32), idx.astype(np.float32)):
            got = backend.down(layer(backend.up(data, data.dtype)))
            np.testing.assert_array_equal(got, want)
    finally:
        pynn.set_device(previous)
    k_config, p_config = k_layer.get_config(), layers.Embedding(17, 5).get_config()
    for key in ("input_dim", "output_dim", "mask_zero"):
        assert p_config[key] == k_config[key]
    assert p_config["embeddings_initializer"]["config"]["minval"] == -0.05
