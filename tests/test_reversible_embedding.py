"""Keras 3's ReversibleEmbedding: the reverse projection (tied and separate weights, with and
without the logit soft cap) against its float64 reference on both backends, gradients by
finite differences, Keras parity of outputs and gradients, config and bad arguments."""

import numpy as np
import pytest

import pynn
from pynn import layers
from tests.backend_util import keras_on_torch
from tests.reference import embedding_ref as ref
from tests.reference.gradcheck import check_layer


@pytest.fixture
def rng():
    return np.random.default_rng(77)


def _layer(input_dim, output_dim, rng, dtype="float32", **kwargs):
    layer = layers.ReversibleEmbedding(input_dim, output_dim, dtype=dtype, **kwargs)
    layer.build((None, 3))
    layer.set_weights([rng.uniform(-1, 1, w.shape).astype(dtype) for w in layer.get_weights()])
    return layer


@pytest.mark.parametrize("tie_weights", [True, False])
@pytest.mark.parametrize("cap", [None, 0.7])
@pytest.mark.parametrize("lead, input_dim, output_dim", [
    ((7,), 5, 3), ((3, 11), 31, 1), ((2, 3, 5), 33, 7),
])
def test_reverse_matches_reference(backend, rng, tie_weights, cap, lead, input_dim, output_dim):
    hidden = rng.uniform(-1, 1, lead + (output_dim,)).astype(np.float32)
    previous = pynn.backend.device()
    try:
        pynn.set_device(backend.name)
        layer = _layer(input_dim, output_dim, rng, tie_weights=tie_weights, logit_soft_cap=cap)
        weights = layer.get_weights()
        got = backend.down(layer(backend.up(hidden), reverse=True))
        want = ref.reversible_embedding_reverse_ref(
            hidden, weights[0], None if tie_weights else weights[1], cap)
    finally:
        pynn.set_device(previous)
    assert got.shape == lead + (input_dim,)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    if cap is not None:
        assert np.all(np.abs(got) < cap)


class _Reversed:
    """The layer called in reverse, for check_layer (which calls ``layer(x, training)``)."""

    def __init__(self, layer):
        self.layer, self.name = layer, layer.name

    def __call__(self, x, training=False):
        return self.layer(x, training=training, reverse=True)

    def backward(self, dy):
        return self.layer.backward(dy)

    @property
    def weights(self):
        return self.layer.weights

    @property
    def needs_input_grad(self):
        return self.layer.needs_input_grad

    @needs_input_grad.setter
    def needs_input_grad(self, value):
        self.layer.needs_input_grad = value


@pytest.mark.parametrize("tie_weights", [True, False])
@pytest.mark.parametrize("cap", [None, 1.3])
def test_reverse_gradients(rng, tie_weights, cap):
    layer = _layer(6, 4, rng, dtype="float64", tie_weights=tie_weights, logit_soft_cap=cap)
    hidden = rng.uniform(-1, 1, (2, 3, 4))
    if tie_weights:
        check_layer(_Reversed(layer), hidden, rng)
    else:
        # The lookup leaves ``embeddings`` out of the reverse call: check the input and
        # reverse_embeddings, and that embeddings' gradient is zero.
        from tests.reference.gradcheck import assert_close, numerical_grad
        y = np.asarray(layer(hidden, training=True, reverse=True))
        r = rng.standard_normal(y.shape)
        dx = np.asarray(layer.backward(r.copy()))
        assert not np.any(np.asarray(layer.embeddings.grad))
        d_rev = np.asarray(layer.reverse_embeddings.grad)

        def loss():
            return float(np.sum(np.asarray(layer(hidden, reverse=True)) * r))
        assert_close("d/dx", dx, numerical_grad(loss, hidden))
        assert_close("reverse_embeddings", d_rev,
                     numerical_grad(loss, layer.reverse_embeddings.value))


def test_forward_lookup_unchanged(rng):
    layer = _layer(9, 4, rng, tie_weights=False)
    idx = rng.integers(0, 9, (4, 3))
    np.testing.assert_array_equal(np.asarray(layer(idx)), layer.get_weights()[0][idx])
    assert layer.compute_mask(idx) is None   # mask_zero False
    assert [w.path.split("/")[-1] for w in layer.weights] == ["embeddings", "reverse_embeddings"]


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("tie_weights", [True, False])
def test_matches_keras(rng, tie_weights):
    """Outputs of both directions and the reverse call's gradients from Keras's weights."""
    keras = keras_on_torch()
    import torch

    k_layer = keras.layers.ReversibleEmbedding(13, 6, tie_weights=tie_weights,
                                               logit_soft_cap=2.5)
    idx = rng.integers(0, 13, (4, 5))
    k_layer(idx)
    hidden = rng.uniform(-1, 1, (4, 5, 6)).astype(np.float32)
    layer = layers.ReversibleEmbedding(13, 6, tie_weights=tie_weights, logit_soft_cap=2.5)
    layer.build((None, 5))
    layer.set_weights(k_layer.get_weights())
    np.testing.assert_array_equal(np.asarray(layer(idx)),
                                  keras.ops.convert_to_numpy(k_layer(idx)))

    h_t = torch.tensor(hidden, requires_grad=True)
    k_out = k_layer(h_t, reverse=True)
    r = rng.standard_normal(tuple(k_out.shape)).astype(np.float32)
    (k_out * torch.tensor(r)).sum().backward()
    got = np.asarray(layer(hidden, training=True, reverse=True))
    np.testing.assert_allclose(got, k_out.detach().numpy(), rtol=1e-5, atol=1e-6)
    dx = np.asarray(layer.backward(r))
    np.testing.assert_allclose(dx, h_t.grad.numpy(), rtol=1e-5, atol=1e-6)
    compared = 0
    for k_var, var in zip(k_layer.trainable_weights, layer.trainable_weights):
        if k_var.value.grad is not None:
            np.testing.assert_allclose(np.asarray(var.grad), k_var.value.grad.numpy(),
                                       rtol=1e-5, atol=1e-6)
            compared += 1
    assert compared == 1   # embeddings (tied) or reverse_embeddings

    k_config, p_config = k_layer.get_config(), layer.get_config()
    for key in ("input_dim", "output_dim", "tie_weights", "reverse_dtype", "logit_soft_cap",
                "mask_zero"):
        assert p_config[key] == k_config[key], key


def test_config_round_trip(rng):
    layer = _layer(8, 3, rng, tie_weights=False, logit_soft_cap=4.0)
    clone = layers.ReversibleEmbedding.from_config(layer.get_config())
    clone.build((None, 3))
    clone.set_weights(layer.get_weights())
    hidden = rng.uniform(-1, 1, (2, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(clone(hidden, reverse=True)),
                                  np.asarray(layer(hidden, reverse=True)))


@pytest.mark.parametrize("kwargs, match", [
    (dict(tie_weights="yes"), "tie_weights must be True or False"),
    (dict(logit_soft_cap=0.0), "logit_soft_cap must be None or a positive number"),
    (dict(logit_soft_cap="big"), "logit_soft_cap must be None or a positive number"),
    (dict(reverse_dtype="float16"), "reverse_dtype must be None or the layer's"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=f"ReversibleEmbedding '.*': {match}"):
        layers.ReversibleEmbedding(5, 3, **kwargs)


def test_bad_inputs(rng):
    layer = _layer(5, 3, rng)
    with pytest.raises(ValueError, match=r"ReversibleEmbedding '.*' \(reverse=True\) expected "
                                         r"hidden states of last axis 3, got shape \(2, 4\)"):
        layer(np.zeros((2, 4), np.float32), reverse=True)
    with pytest.raises(TypeError, match="reverse must be True or False"):
        layer(np.zeros((2, 3), np.float32), reverse="yes")
    with pytest.raises(NotImplementedError, match="reverse=True in a functional model"):
        layer(pynn.Input((4, 3)), reverse=True)


def test_reverse_call_under_a_gradient_tape(rng):
    """The tied model's usual shape: lookup, then logits through the same table, taken by a
    GradientTape (the call's direction rides in the layer's cache)."""
    layer = _layer(7, 4, rng, dtype="float64")
    hidden = rng.standard_normal((1, 3, 4))
    table = layer.embeddings.numpy().copy()
    with pynn.GradientTape() as tape:
        x = pynn.ops.convert_to_tensor(hidden)
        tape.watch(x)
        logits = layer(x, training=True, reverse=True)
        loss = pynn.ops.sum(logits * logits)
    d_table, d_hidden = tape.gradient(loss, [layer.embeddings, x])
    y = hidden[0] @ table.T
    np.testing.assert_allclose(np.asarray(d_table), (2 * y).T @ hidden[0], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(d_hidden)[0], 2 * y @ table, rtol=1e-12)
