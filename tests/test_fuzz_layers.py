"""Property-based fuzz of layer configurations and inputs (issue 11, "keep it that way").

Hypothesis draws stacks of layers with random arguments (valid and not) and random inputs
(matching the model and not). Whatever comes, pynn must either give an output of the shape
the model announces, finite for finite inputs, and train one step to a finite loss, or raise
ValueError / TypeError naming the layer or the call at fault: never another exception, a
crash or a hang (MemoryError at build is allowed for weights beyond the machine's memory,
naming the layer). Seeded (derandomized) and bounded, so a CI run is repeatable.
"""

from functools import partial

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import pynn  # noqa: E402
from pynn import layers as L  # noqa: E402

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))
# Small values mostly; sometimes values no layer can take (0, negatives, 2**63, floats).
SIZE = st.one_of(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5),
                 st.sampled_from([0, -1, 2**31, 2**63, 2**64, 1.5]))
LAYER_NAMES = ("Conv2D", "MaxPooling2D", "AveragePooling2D", "Dropout", "Activation",
               "Flatten", "GlobalAveragePooling2D", "GlobalMaxPooling2D", "Dense",
               "SimpleRNN", "LSTM", "GRU", "Input")
ACTIVATION = st.sampled_from([None, "relu", "tanh", "sigmoid", "softmax", "gelu", "elu",
                              "leaky_relu", "selu", "softplus", "linear", "swish", 3])
PADDING = st.sampled_from(["valid", "same", "full"])


@st.composite
def image_layer(draw):
    kind = draw(st.sampled_from(["conv", "maxpool", "avgpool", "dropout", "activation"]))
    if kind == "conv":
        return partial(L.Conv2D, draw(SIZE), draw(st.one_of(SIZE, st.tuples(SIZE, SIZE))),
                        strides=draw(st.one_of(st.integers(1, 3), SIZE)),
                        padding=draw(PADDING),
                        dilation_rate=draw(st.one_of(st.just(1), st.integers(1, 3), SIZE)),
                        activation=draw(ACTIVATION))
    if kind in ("maxpool", "avgpool"):
        cls = L.MaxPooling2D if kind == "maxpool" else L.AveragePooling2D
        return partial(cls, draw(st.one_of(st.integers(1, 3), SIZE)),
                   strides=draw(st.one_of(st.none(), st.integers(1, 3), SIZE)),
                   padding=draw(PADDING))
    if kind == "dropout":
        return partial(L.Dropout, draw(st.sampled_from([0.0, 0.3, 0.99, 1.0, -0.1, "x"])))
    return partial(L.Activation, draw(ACTIVATION))


@st.composite
def image_model(draw):
    shape = (draw(st.integers(1, 9)), draw(st.integers(1, 9)), draw(st.integers(1, 4)))
    stack = [partial(L.Input, shape=shape)]
    stack += draw(st.lists(image_layer(), min_size=1, max_size=4))
    head = draw(st.sampled_from(["flatten", "gap", "gmp"]))
    stack.append({"flatten": L.Flatten, "gap": L.GlobalAveragePooling2D,
                  "gmp": L.GlobalMaxPooling2D}[head])
    stack.append(partial(L.Dense, draw(st.integers(1, 4)), activation=draw(ACTIVATION)))
    return stack, shape


@st.composite
def sequence_model(draw):
    shape = (draw(st.integers(1, 6)), draw(st.integers(1, 4)))
    cls = draw(st.sampled_from([L.SimpleRNN, L.LSTM, L.GRU]))
    kwargs = dict(return_sequences=draw(st.booleans()), go_backwards=draw(st.booleans()),
                  activation=draw(st.sampled_from(["tanh", "relu", "gelu", "softmax", None])))
    if cls is not L.SimpleRNN:
        kwargs["recurrent_activation"] = draw(st.sampled_from(["sigmoid", "hard_sigmoid",
                                                               "tanh"]))
    if cls is L.GRU:
        kwargs["reset_after"] = draw(st.booleans())
    stack = [partial(L.Input, shape=shape), partial(cls, draw(SIZE), **kwargs)]
    if kwargs["return_sequences"]:
        stack.append(L.Flatten)
    stack.append(partial(L.Dense, draw(st.integers(1, 3))))
    return stack, shape


def _input(draw_shape, batch, rng, mismatch):
    shape = tuple(draw_shape)
    if mismatch == "rank":
        shape = shape[:-1]
    elif mismatch == "size":
        shape = shape[:-1] + (shape[-1] + 1,)
    return rng.standard_normal((batch,) + shape).astype(np.float32)


def _run(build, mismatch, batch):
    """Build (each layer from its drawn constructor call), predict and train one step; only
    ValueError / TypeError may escape, and each has a message."""
    rng = np.random.default_rng(batch)
    try:
        makers, shape = build
        model = pynn.Sequential([make() for make in makers])
        model.compile(optimizer="adam", loss="mean_squared_error")
    except (ValueError, TypeError, MemoryError) as exc:
        # MemoryError only for weights beyond the machine, said at once, naming the layer.
        assert any(name in str(exc) for name in LAYER_NAMES), f"names no layer: {exc}"
        return
    x = _input(shape, batch, rng, mismatch)
    try:
        y = model.predict(x, verbose=0)
    except (ValueError, TypeError) as exc:
        assert mismatch or batch == 0, f"a valid input was refused: {exc}"
        return
    assert not mismatch, "an input of the wrong shape was accepted"
    assert y.shape == (batch,) + tuple(model.output_shape[1:])
    assert np.all(np.isfinite(y)), "finite inputs gave non-finite outputs"
    if batch:
        target = rng.standard_normal(y.shape).astype(np.float32)
        loss = model.train_on_batch(x, target)
        loss = loss[0] if isinstance(loss, (list, tuple)) else loss
        assert np.isfinite(loss)


@SETTINGS
@given(image_model(), st.sampled_from([None, None, "rank", "size"]), st.integers(0, 3))
def test_image_stacks(cpu_backend, build, mismatch, batch):
    _run(build, mismatch, batch)


@SETTINGS
@given(sequence_model(), st.sampled_from([None, None, "rank", "size"]), st.integers(0, 3))
def test_sequence_stacks(cpu_backend, build, mismatch, batch):
    _run(build, mismatch, batch)
