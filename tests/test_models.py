"""Sequential: building, fit / evaluate / predict semantics, output formats, summary and
reproducibility (seed and thread count)."""

import os
import re

import numpy as np
import pytest

import pynn
from pynn import layers


def mlp(dropout=0.0):
    stack = [layers.Input((5,)), layers.Dense(7, activation="relu")]
    if dropout:
        stack.append(layers.Dropout(dropout))
    stack.append(layers.Dense(3, activation="softmax"))
    return pynn.Sequential(stack)


def cnn():
    return pynn.Sequential([
        layers.Input((8, 8, 1)),
        layers.Conv2D(4, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(6, 3, activation="relu"),
        layers.AveragePooling2D(2),
        layers.Flatten(),
        layers.Dropout(0.2),
        layers.Dense(10, activation="softmax"),
    ])


def data(n=50, features=(5,), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n,) + features).astype(np.float32),
            rng.integers(0, classes, n).astype(np.int32))


def compiled(model, optimizer="adam", loss="sparse_categorical_crossentropy",
             metrics=("accuracy",)):
    model.compile(optimizer=optimizer, loss=loss, metrics=list(metrics))
    return model


# -- building -----------------------------------------------------------------------------------
def test_deferred_build_on_first_fit(seeded):
    model = compiled(pynn.Sequential([layers.Dense(4, activation="relu"), layers.Dense(3)]),
                     loss=pynn.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert not model.built
    with pytest.raises(ValueError, match="not built"):
        model.count_params()
    x, y = data()
    model.fit(x, y, epochs=1, verbose=0)
    assert model.built and model.input_shape == (None, 5) and model.output_shape == (None, 3)
    assert model.count_params() == 5 * 4 + 4 + 4 * 3 + 3


def test_input_shape_keyword_builds_immediately():
    model = pynn.Sequential([layers.Dense(4, input_shape=(6,)), layers.Dense(2)])
    assert model.built and model.count_params() == 6 * 4 + 4 + 4 * 2 + 2


def test_add_and_layer_names_follow_keras():
    model = pynn.Sequential(name="net")
    model.add(layers.Input((8, 8, 1)))
    model.add(layers.Conv2D(2, 3))
    model.add(layers.MaxPooling2D())
    model.add(layers.GlobalAveragePooling2D())
    names = [layer.name for layer in model.layers]
    assert re.fullmatch(r"conv2d(_\d+)?", names[0]), names
    assert re.fullmatch(r"max_pooling2d(_\d+)?", names[1]), names
    assert re.fullmatch(r"global_average_pooling2d(_\d+)?", names[2]), names
    with pytest.raises(ValueError, match="Input can only be the first"):
        model.add(layers.Input((3,)))
    with pytest.raises(TypeError, match="expected a pynn layer"):
        model.add("dense")
    with pytest.raises(ValueError, match="duplicate layer name"):
        model.add(layers.Dense(2, name=names[0]))


# -- fit / evaluate / predict ---------------------------------------------------------------------
def test_history_contents(seeded):
    model = compiled(mlp())
    x, y = data()
    history = model.fit(x, y, batch_size=16, epochs=3, validation_split=0.2, verbose=0)
    assert history is model.history
    assert history.epoch == [0, 1, 2]
    assert list(history.history) == ["accuracy", "loss", "val_accuracy", "val_loss"]
    for values in history.history.values():
        assert len(values) == 3 and all(isinstance(v, float) and np.isfinite(v) for v in values)
    assert all(0.0 <= a <= 1.0 for a in history.history["accuracy"])


def test_validation_split_takes_the_last_samples_before_shuffling(seeded):
    model = compiled(mlp(), optimizer="sgd")
    x, y = data(40)
    history = model.fit(x, y, batch_size=8, epochs=1, validation_split=0.25, verbose=0)
    val_loss, val_acc = model.evaluate(x[30:], y[30:], verbose=0)
    assert history.history["val_loss"][0] == pytest.approx(val_loss, rel=1e-6)
    assert history.history["val_accuracy"][0] == pytest.approx(val_acc)


def test_validation_data_and_initial_epoch(seeded):
    model = compiled(mlp())
    x, y = data()
    history = model.fit(x, y, epochs=4, initial_epoch=2, validation_data=(x[:10], y[:10]),
                        verbose=0)
    assert history.epoch == [2, 3]
    assert len(history.history["val_loss"]) == 2


def test_training_reduces_loss(seeded):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((120, 5)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int32) + (x[:, 2] > 1)
    model = compiled(mlp(), optimizer=pynn.optimizers.Adam(0.02))
    history = model.fit(x, y, batch_size=16, epochs=15, verbose=0)
    assert history.history["loss"][-1] < 0.6 * history.history["loss"][0]
    assert history.history["accuracy"][-1] > 0.8


def test_evaluate_forms(seeded):
    model = compiled(mlp())
    x, y = data()
    loss, acc = model.evaluate(x, y, verbose=0)
    as_dict = model.evaluate(x, y, verbose=0, return_dict=True)
    assert as_dict == {"accuracy": acc, "loss": loss}
    expected_acc = np.mean(model.predict(x).argmax(1) == y)
    assert acc == pytest.approx(expected_acc)
    plain = compiled(mlp(), metrics=())
    assert isinstance(plain.evaluate(x, y, verbose=0), float)


def test_evaluate_is_batch_size_invariant(seeded):
    model = compiled(mlp())
    x, y = data(37)
    a = model.evaluate(x, y, batch_size=5, verbose=0)
    b = model.evaluate(x, y, batch_size=37, verbose=0)
    assert a[0] == pytest.approx(b[0], rel=1e-6) and a[1] == b[1]


def test_predict_matches_manual_forward_and_batching(seeded):
    model = mlp()
    x, _ = data(23)
    kernel0, bias0, kernel1, bias1 = model.get_weights()
    hidden = np.maximum(x.astype(np.float64) @ kernel0 + bias0, 0)
    logits = hidden @ kernel1 + bias1
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    for batch_size in (1, 4, 23, 100):
        np.testing.assert_allclose(model.predict(x, batch_size=batch_size), expected,
                                   rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.predict_on_batch(x), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model(x), expected, rtol=1e-5, atol=1e-6)


def test_train_and_test_on_batch(seeded):
    model = compiled(mlp(), optimizer="sgd")
    x, y = data(16)
    before = model.get_weights()
    loss, acc = model.train_on_batch(x, y)
    assert np.isfinite(loss) and 0 <= acc <= 1
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    logs = model.test_on_batch(x, y, return_dict=True)
    assert set(logs) == {"loss", "accuracy"}
    assert logs["loss"] == pytest.approx(model.evaluate(x, y, verbose=0)[0], rel=1e-6)


def test_frozen_layer_does_not_change(seeded):
    model = compiled(mlp())
    model.layers[0].trainable = False
    frozen = model.layers[0].get_weights()
    model.fit(*data(), epochs=2, verbose=0)
    for a, b in zip(frozen, model.layers[0].get_weights()):
        np.testing.assert_array_equal(a, b)
    assert model.count_params() == 5 * 7 + 7 + 7 * 3 + 3


@pytest.mark.parametrize("loss,activation,units,expected", [
    ("sparse_categorical_crossentropy", "softmax", 3, "SparseCategoricalAccuracy"),
    ("categorical_crossentropy", "softmax", 3, "CategoricalAccuracy"),
    ("binary_crossentropy", "sigmoid", 1, "BinaryAccuracy"),
    ("mse", "linear", 1, "BinaryAccuracy"),
])
def test_accuracy_resolves_like_keras(loss, activation, units, expected):
    model = pynn.Sequential([layers.Input((4,)), layers.Dense(units, activation=activation)])
    model.compile("sgd", loss, metrics=["accuracy"])
    assert type(model._resolve_metrics()[0]).__name__ == expected


@pytest.mark.parametrize("loss,targets", [("sparse_categorical_crossentropy", "labels"),
                                          ("categorical_crossentropy", "onehot")])
def test_accuracies_of_sequence_outputs(seeded, loss, targets):
    """(N, T, K) outputs: every time step is one prediction, as Keras's accuracies count."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 5, 3)).astype(np.float32)
    labels = rng.integers(0, 4, (9, 5))
    y = labels if targets == "labels" else np.eye(4, dtype=np.float32)[labels]
    model = pynn.Sequential([layers.Input((5, 3)), layers.SimpleRNN(6, return_sequences=True),
                             layers.Dense(4, activation="softmax")])
    top_k = ("sparse_" if targets == "labels" else "") + "top_k_categorical_accuracy"
    model.compile("adam", loss, metrics=["accuracy", pynn.metrics.get(top_k).__class__(k=2)])
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    _, acc, top2 = model.evaluate(x, y, batch_size=4, verbose=0)
    p = model.predict(x)
    assert acc == pytest.approx(np.mean(p.argmax(-1) == labels))
    ranks = (p > np.take_along_axis(p, labels[..., None], -1)).sum(-1)
    assert top2 == pytest.approx(np.mean(ranks < 2))


def test_binary_model_with_flat_targets(seeded):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)  # shape (N,) for a (N, 1) output
    model = pynn.Sequential([layers.Input((4,)), layers.Dense(1, activation="sigmoid")])
    model.compile(pynn.optimizers.SGD(0.5), "binary_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, epochs=10, verbose=0)
    assert history.history["accuracy"][-1] > 0.8


# -- output formats -------------------------------------------------------------------------------
def test_verbose_0_prints_nothing(seeded, capsys):
    model = compiled(mlp())
    model.fit(*data(), epochs=2, verbose=0)
    model.evaluate(*data(), verbose=0)
    model.predict(data()[0], verbose=0)
    assert capsys.readouterr().out == ""


def test_verbose_1_progress_bar_in_a_pipe(seeded, capsys):
    model = compiled(mlp())
    model.fit(*data(), batch_size=16, epochs=2, verbose=1)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Epoch 1/2" and lines[2] == "Epoch 2/2" and len(lines) == 4
    pattern = (r"4/4 ━{20} \d+s \d+(us|ms|s)/step - accuracy: \d\.\d{4} - loss: \d\.\d{4}")
    for line in (lines[1], lines[3]):
        assert re.fullmatch(pattern, line), line


def test_verbose_2_one_line_per_epoch(seeded, capsys):
    model = compiled(mlp())
    model.fit(*data(), batch_size=16, epochs=2, validation_split=0.2, verbose=2)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[0] == "Epoch 1/2"
    pattern = (r"3/3 - \d+s - \d+(us|ms|s)/step - accuracy: \d\.\d{4} - loss: \d\.\d{4} - "
               r"val_accuracy: \d\.\d{4} - val_loss: \d\.\d{4}")
    assert re.fullmatch(pattern, lines[1]), lines[1]
    assert "\r" not in capsys.readouterr().out


def test_evaluate_verbose_prints_one_line(seeded, capsys):
    model = compiled(mlp())
    model.evaluate(*data(), batch_size=10, verbose=1)
    out = capsys.readouterr().out
    assert re.fullmatch(r"5/5 ━{20} \d+s \d+(us|ms|s)/step - accuracy: \d\.\d{4} - "
                        r"loss: \d\.\d{4}\n", out), out


def test_summary_and_count_params_match_keras(capsys):
    model = cnn()
    model.summary()
    out = capsys.readouterr().out
    counts = [layer.count_params() for layer in model.layers]
    # (3*3*1 + 1)*4, (3*3*4 + 1)*6, (1*1*6 + 1)*10 after pooling to 1x1
    assert counts == [40, 0, 222, 0, 0, 0, 70]
    assert model.count_params() == sum(counts) == 332
    for layer in model.layers:
        row = next(line for line in out.splitlines() if layer.name + " " in line)
        assert type(layer).__name__ in row
        assert "(None, " + ", ".join(str(d) for d in layer.output_shape[1:]) + ")" in row
        assert f"{layer.count_params():,}" in row
    assert " Total params: 332" in out and " Trainable params: 332" in out
    assert " Non-trainable params: 0" in out

    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    k_model = keras.Sequential([
        keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, padding="same"),
        keras.layers.MaxPooling2D(2), keras.layers.Conv2D(6, 3), keras.layers.AveragePooling2D(2),
        keras.layers.Flatten(), keras.layers.Dropout(0.2), keras.layers.Dense(10)])
    assert [layer.count_params() for layer in k_model.layers] == counts
    assert [tuple(layer.output.shape) for layer in k_model.layers] == \
        [layer.output_shape for layer in model.layers]


def test_summary_of_unbuilt_model_and_print_fn():
    model = pynn.Sequential([layers.Dense(3)])
    captured = []
    model.summary(print_fn=captured.append)
    assert "unbuilt" in captured[0] and "Total params" not in captured[0]


# -- reproducibility ------------------------------------------------------------------------------
def _seeded_fit(seed):
    pynn.utils.set_random_seed(seed)
    model = compiled(cnn(), optimizer=pynn.optimizers.Adam(0.01))
    x, y = data(45, (8, 8, 1), classes=10)
    history = model.fit(x, y, batch_size=8, epochs=2, shuffle=True, verbose=0)
    return model.get_weights(), history.history["loss"]


def test_seed_makes_fits_bit_identical():
    w1, l1 = _seeded_fit(5)
    w2, l2 = _seeded_fit(5)
    w3, _ = _seeded_fit(6)
    assert l1 == l2
    for a, b in zip(w1, w2):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(w1, w3))


def test_fit_is_thread_count_invariant(num_threads):
    results = []
    for n in (1, 2):
        num_threads(n)
        assert pynn.get_num_threads() == n
        results.append(_seeded_fit(11))
    (w1, l1), (w2, l2) = results
    assert l1 == l2
    for a, b in zip(w1, w2):
        np.testing.assert_array_equal(a, b)


def test_call_converts_host_data(seeded):
    model = mlp()
    x, _ = data(4)
    np.testing.assert_array_equal(model(x.astype(np.float64)), model.predict(x))
    np.testing.assert_array_equal(model(x.tolist()), model.predict(x))
    with pytest.raises(ValueError, match="expects input shape"):
        model(np.zeros((2, 3)))


def test_progbar_redraws_in_place_on_a_terminal():
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    bar = pynn.callbacks.Progbar(4, verbose=1, stream=stream)
    for step in range(1, 5):
        bar.last_draw = 0.0  # defeat the 50 ms redraw throttle
        bar.update(step, {"loss": 1.0 / step})
    bar.update(4, {"loss": 0.25}, finalize=True)
    text = stream.getvalue()
    assert text.count("\r") == 5 and text.endswith("\n") and text.count("\n") == 1
    assert "4/4" in text.rsplit("\r", 1)[1] and "loss: 0.2500" in text
