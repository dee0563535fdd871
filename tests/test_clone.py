"""pynn.models.clone_model, Model.to_json and pynn.models.model_from_json (Keras's names and
rules): the same topology with new layers and weights, on random whole models
(tests/test_fuzz_models.py's generator), and the JSON both ways with Keras 3."""

import os

import numpy as np
import pytest

import pynn
from pynn import layers as L
from pynn.models import clone_model, model_from_json
from tests.test_fuzz_models import random_case, random_model


def _case(seed):
    head, model = random_model(seed)
    weights, x, _, _ = random_case(seed, model, head, 3)
    model.set_weights([w.astype("float32") for w in weights])
    return model, (x if x.dtype.kind in "iu" else x.astype(np.float32))


@pytest.mark.parametrize("block", range(2))
def test_random_models_clone_to_their_topology_with_new_weights(block):
    drew_new = 0
    for seed in range(block * 30, (block + 1) * 30):
        model, x = _case(seed)
        clone = clone_model(model)
        assert type(clone) is type(model)
        assert clone.get_config() == model.get_config(), f"seed {seed}"
        assert [v.shape for v in clone.weights] == [v.shape for v in model.weights]
        assert all(a is not b for a, b in zip(clone.layers, model.layers))
        drew_new += any(not np.array_equal(a, b)
                        for a, b in zip(clone.get_weights(), model.get_weights()))
        clone.set_weights(model.get_weights())
        np.testing.assert_array_equal(clone.predict_on_batch(x), model.predict_on_batch(x),
                                      err_msg=f"seed {seed}")
    assert drew_new >= 25


def test_shared_layers_stay_shared_and_nested_models_are_cloned():
    inner = pynn.Sequential([L.Input((4,)), L.Dense(4, activation="tanh")], name="inner")
    inp = L.Input((4,))
    shared = L.Dense(4, name="shared")
    y = L.Add()([shared(inp), shared(inner(inp))])
    model = pynn.Model(inp, L.Dense(2)(y))
    clone = clone_model(model)
    assert len(clone.weights) == len(model.weights) == 6
    by_name = {layer.name: layer for layer in clone.layers}
    assert isinstance(by_name["inner"], pynn.Sequential)
    assert by_name["inner"] is not inner and by_name["shared"] is not shared
    assert len(by_name["shared"]._inbound_nodes) == 2
    clone.set_weights(model.get_weights())
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_array_equal(clone.predict(x, verbose=0), model.predict(x, verbose=0))


def test_clone_function_and_input_tensors():
    model = pynn.Sequential([L.Input((6,)), L.Dense(5, activation="relu"), L.Dropout(0.5),
                             L.Dense(2)])
    seen = []

    def no_dropout(layer):
        seen.append(layer.name)
        if isinstance(layer, L.Dropout):
            return L.Dropout(0.0, name=layer.name)
        return layer.__class__.from_config(layer.get_config())
    clone = clone_model(model, clone_function=no_dropout)
    assert seen == [layer.name for layer in model.layers]
    assert [layer.rate for layer in clone.layers if isinstance(layer, L.Dropout)] == [0.0]
    inp = L.Input((6,), name="fresh")
    functional = pynn.Model(inp, L.Dense(3)(L.Dense(4)(inp)))
    rebased = clone_model(functional, input_tensors=[L.Input((6,), name="new_input")])
    assert rebased.inputs[0].node.layer.name == "new_input"
    again = clone_model(model, input_tensors=L.Input((6,), name="seq_input"))
    assert again.input_shape == (None, 6)


class _Subclassed(pynn.Model):
    def __init__(self, units=3, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.hidden = L.Dense(units)

    def call(self, x):
        return self.hidden(x)

    def get_config(self):
        return {"units": self.units, "name": self.name}


def test_clone_of_a_subclassed_model_and_bad_arguments():
    model = _Subclassed(units=4)
    model.build((None, 3))
    clone = clone_model(model)
    assert type(clone) is _Subclassed and clone.units == 4 and clone is not model
    with pytest.raises(ValueError, match="subclassed model"):
        clone_model(model, clone_function=lambda layer: layer)
    with pytest.raises(TypeError, match="expected a pynn Model"):
        clone_model(L.Dense(3))
    seq = pynn.Sequential([L.Input((3,)), L.Dense(2)])
    with pytest.raises(TypeError, match="must return a pynn layer"):
        clone_model(seq, clone_function=lambda layer: None)
    with pytest.raises(ValueError, match="one input, got 2 input_tensors"):
        clone_model(seq, input_tensors=[L.Input((3,)), L.Input((3,))])


def test_model_from_json_refuses_what_is_not_a_model():
    with pytest.raises(ValueError, match="model_from_json"):
        model_from_json("{not json")
    with pytest.raises(ValueError, match="not a Keras model config"):
        model_from_json('{"class_name": "Dense", "config": {}}')
    with pytest.raises(TypeError, match="expected a JSON string"):
        model_from_json(3)


def test_json_round_trips_in_pynn():
    for seed in range(20):
        model, x = _case(seed)
        again = model_from_json(model.to_json())
        again.set_weights(model.get_weights())
        np.testing.assert_allclose(again.predict_on_batch(x), model.predict_on_batch(x),
                                   rtol=1e-6, atol=1e-6, err_msg=f"seed {seed}")


@pytest.mark.filterwarnings("ignore:Layer .* was passed an input with a mask")
def test_json_both_ways_with_keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except Exception as exc:  # noqa: BLE001 (keras missing, or its backend fails)
        pytest.skip(f"keras (torch backend) is not available: {exc}")
    from tests.test_fuzz_files import keras_divergence

    compared = 0
    for seed in range(30):
        model, x = _case(seed)
        if keras_divergence(model) is not None:
            continue
        theirs = keras.models.model_from_json(model.to_json())
        theirs.set_weights(model.get_weights())
        want = model.predict_on_batch(x)
        np.testing.assert_allclose(theirs.predict(x, verbose=0), want, rtol=2e-4, atol=2e-4,
                                   err_msg=f"seed {seed}: pynn's JSON in Keras")
        ours = model_from_json(theirs.to_json())
        ours.set_weights(model.get_weights())
        np.testing.assert_allclose(ours.predict_on_batch(x), want, rtol=1e-6, atol=1e-6,
                                   err_msg=f"seed {seed}: Keras's JSON in pynn")
        compared += 1
    assert compared >= 20
