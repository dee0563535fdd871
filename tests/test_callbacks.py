"""Callbacks: EarlyStopping, ModelCheckpoint, TerminateOnNaN, LearningRateScheduler, History.

A scripted callback writes a chosen value into the epoch logs (callbacks share the logs dict
and run in order), so the stopping / saving decisions are checked against known sequences.
"""

import math

import numpy as np
import pytest

import pynn
from pynn import callbacks, layers


class Script(callbacks.Callback):
    """Puts ``values[epoch]`` into the logs as ``score`` and records the weights."""

    def __init__(self, values):
        super().__init__()
        self.values = values
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        logs["score"] = self.values[epoch]
        self.weights.append(self.model.get_weights())


def model_and_data(optimizer="sgd"):
    model = pynn.Sequential([layers.Input((4,)), layers.Dense(5, activation="tanh"),
                             layers.Dense(2, activation="softmax")])
    model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    return (model, rng.standard_normal((24, 4)).astype(np.float32),
            rng.integers(0, 2, 24).astype(np.int32))


# Keras's rule: ``wait`` counts epochs since the best; stop once wait >= patience.
@pytest.mark.parametrize("values,patience,mode,epochs_run", [
    ([5, 4, 4.5, 4.2, 4.1, 3, 1], 2, "min", 4),      # best at 1; waits 1, 2 -> stop at 3
    ([5, 4, 3, 2, 1, 0, -1], 1, "min", 7),           # always improving: never stops
    ([1, 2, 2, 2, 2, 2, 2], 0, "max", 3),            # patience 0: the first miss stops
    ([1, 0.5, 0.9, 0.95, 0.2, 0.1, 0.0], 3, "max", 4),
    ([0.9, 0.8, 0.7, 0.75, 0.6, 0.65, 0.55], 2, "auto", 7),  # "score": auto means min
])
def test_early_stopping_patience(seeded, values, patience, mode, epochs_run):
    model, x, y = model_and_data()
    stop = callbacks.EarlyStopping(monitor="score", patience=patience, mode=mode)
    history = model.fit(x, y, epochs=len(values), verbose=0, callbacks=[Script(values), stop])
    assert len(history.epoch) == epochs_run
    assert stop.stopped_epoch == (epochs_run - 1 if epochs_run < len(values) else 0)


def test_early_stopping_restores_best_weights(seeded):
    model, x, y = model_and_data()
    script = Script([3.0, 1.0, 2.0, 2.5, 2.7])
    stop = callbacks.EarlyStopping(monitor="score", patience=2, restore_best_weights=True,
                                   verbose=1)
    model.fit(x, y, epochs=5, verbose=0, callbacks=[script, stop])
    assert stop.best_epoch == 1 and stop.stopped_epoch == 3
    for a, b in zip(model.get_weights(), script.weights[1]):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(script.weights[1], script.weights[3]))


def test_early_stopping_min_delta_and_missing_metric(seeded):
    model, x, y = model_and_data()
    stop = callbacks.EarlyStopping(monitor="score", patience=1, min_delta=0.5)
    history = model.fit(x, y, epochs=5, verbose=0,
                        callbacks=[Script([3.0, 2.8, 2.6, 2.4, 2.2]), stop])
    assert len(history.epoch) == 2  # improvements smaller than min_delta do not count
    with pytest.warns(UserWarning, match="not in the logs"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[callbacks.EarlyStopping("val_loss")])


def test_early_stopping_on_real_val_loss_stops_a_diverging_run(seeded):
    model, x, y = model_and_data(pynn.optimizers.SGD(5.0))
    stop = callbacks.EarlyStopping(patience=1)
    history = model.fit(x, y, epochs=30, validation_split=0.25, verbose=0, callbacks=[stop])
    assert len(history.epoch) < 30


def test_model_checkpoint_save_best_only(seeded, tmp_path):
    model, x, y = model_and_data()
    script = Script([3.0, 2.0, 2.5, 1.0, 1.5])
    ckpt = callbacks.ModelCheckpoint(str(tmp_path / "m-{epoch:02d}.pynn"), monitor="score",
                                     save_best_only=True)
    model.fit(x, y, epochs=5, verbose=0, callbacks=[script, ckpt])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-01.pynn", "m-02.pynn", "m-04.pynn"]
    best = pynn.load_model(tmp_path / "m-04.pynn")
    for a, b in zip(best.get_weights(), script.weights[3]):
        np.testing.assert_array_equal(a, b)


def test_model_checkpoint_every_epoch_weights_only(seeded, tmp_path):
    model, x, y = model_and_data()
    ckpt = callbacks.ModelCheckpoint(str(tmp_path / "w.pynn"), save_weights_only=True,
                                     verbose=1)
    model.fit(x, y, epochs=2, verbose=0, callbacks=[ckpt])
    fresh, _, _ = model_and_data()
    fresh.load_weights(tmp_path / "w.pynn")
    for a, b in zip(fresh.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="save_freq"):
        callbacks.ModelCheckpoint("x.pynn", save_freq=10)


def test_terminate_on_nan(seeded, capsys):
    # A linear regression with a huge learning rate overflows float32 within a few steps
    # (cross-entropy would not: its clipping keeps the loss finite).
    model = pynn.Sequential([layers.Input((4,)), layers.Dense(3), layers.Dense(1)])
    model.compile(pynn.optimizers.SGD(1e20), "mse")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, 4)).astype(np.float32)
    y = rng.standard_normal((24, 1)).astype(np.float32)
    seen = []

    class Batches(callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(logs["loss"])

    with pytest.warns(RuntimeWarning, match=r"loss became (nan|inf) at epoch 1, batch \d+/3"):
        history = model.fit(x, y, batch_size=8, epochs=5, verbose=0,
                            callbacks=[Batches(), callbacks.TerminateOnNaN()])
    assert not math.isfinite(seen[-1]) and all(math.isfinite(v) for v in seen[:-1])
    assert len(history.epoch) == 1
    assert "Invalid loss, terminating training" in capsys.readouterr().out


def test_learning_rate_scheduler(seeded):
    model, x, y = model_and_data(pynn.optimizers.SGD(0.1))
    seen = []

    class Probe(callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(self.model.optimizer.learning_rate)

    schedule = callbacks.LearningRateScheduler(lambda epoch, lr: lr * 0.5 if epoch else lr)
    history = model.fit(x, y, epochs=4, verbose=0, callbacks=[schedule, Probe()])
    assert seen == pytest.approx([0.1, 0.05, 0.025, 0.0125])
    assert history.history["learning_rate"] == pytest.approx(seen)


def test_learning_rate_scheduler_single_argument_and_bad_value(seeded):
    model, x, y = model_and_data(pynn.optimizers.Adam(0.1))
    model.fit(x, y, epochs=2, verbose=0,
              callbacks=[callbacks.LearningRateScheduler(lambda epoch: 0.01 / (epoch + 1))])
    assert model.optimizer.learning_rate == pytest.approx(0.005)
    with pytest.raises(ValueError, match="schedule returned"):
        model.fit(x, y, epochs=1, verbose=0,
                  callbacks=[callbacks.LearningRateScheduler(lambda epoch: float("nan"))])


def test_callback_hook_order_and_history(seeded):
    model, x, y = model_and_data()
    events = []

    class Recorder(callbacks.Callback):
        def on_train_begin(self, logs=None):
            events.append("train_begin")

        def on_epoch_begin(self, epoch, logs=None):
            events.append(f"epoch_begin {epoch}")

        def on_train_batch_end(self, batch, logs=None):
            events.append(f"batch {batch}")

        def on_epoch_end(self, epoch, logs=None):
            events.append(f"epoch_end {epoch} {sorted(logs)}")

        def on_train_end(self, logs=None):
            events.append("train_end")

    recorder = Recorder()
    model.fit(x, y, batch_size=10, epochs=2, verbose=0, callbacks=[recorder])
    assert recorder.model is model and recorder.params["steps"] == 3
    assert events == ["train_begin",
                      "epoch_begin 0", "batch 0", "batch 1", "batch 2",
                      "epoch_end 0 ['accuracy', 'loss']",
                      "epoch_begin 1", "batch 0", "batch 1", "batch 2",
                      "epoch_end 1 ['accuracy', 'loss']", "train_end"]


def test_history_loss_is_the_sample_weighted_mean_of_batch_losses(seeded):
    model, x, y = model_and_data()
    batch_losses = []

    class Batches(callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            batch_losses.append(logs["loss"])

    history = model.fit(x, y, batch_size=10, epochs=1, shuffle=False, verbose=0,
                        callbacks=[Batches()])
    assert len(batch_losses) == 3  # 10, 10 and a partial 4
    expected = (10 * batch_losses[0] + 10 * batch_losses[1] + 4 * batch_losses[2]) / 24
    assert history.history["loss"][0] == pytest.approx(expected, rel=1e-12)
