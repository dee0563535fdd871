"""Callbacks: EarlyStopping, ModelCheckpoint, TerminateOnNaN, LearningRateScheduler, History,
ReduceLROnPlateau, CSVLogger, LambdaCallback, BackupAndRestore (ReduceLROnPlateau and
CSVLogger also against Keras itself).

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


def test_batch_logs_hold_the_running_mean_and_the_last_is_the_epoch_loss(seeded):
    model, x, y = model_and_data()
    batch_losses = []

    class Batches(callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            batch_losses.append(logs["loss"])

    history = model.fit(x, y, batch_size=10, epochs=1, shuffle=False, verbose=0,
                        callbacks=[Batches()])
    assert len(batch_losses) == 3  # 10, 10 and a partial 4
    # Batch logs hold the running sample-weighted mean (Keras 3): the last one is the epoch's.
    assert history.history["loss"][0] == pytest.approx(batch_losses[-1], rel=1e-12)
    assert batch_losses[0] != batch_losses[1]


# -- ReduceLROnPlateau, CSVLogger, LambdaCallback, BackupAndRestore ------------------------

def _keras():
    import os
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except Exception as exc:  # keras missing or its backend cannot load
        pytest.skip(f"keras (torch backend) is not available: {exc}")
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras runs on {keras.backend.backend()}, these tests want torch")
    return keras


def _drive(cb, values, monitor):
    """Feed ``values`` as ``monitor`` to cb's epoch hooks; the learning rate after each epoch
    and the ``learning_rate`` each epoch's logs hold."""
    cb.on_train_begin({})
    lrs, logged = [], []
    for epoch, v in enumerate(values):
        logs = {monitor: v}
        cb.on_epoch_begin(epoch, logs)
        cb.on_epoch_end(epoch, logs)
        lrs.append(float(np.asarray(cb.model.optimizer.learning_rate)))
        logged.append(float(logs["learning_rate"]))
    return lrs, logged


PLATEAU_CASES = [
    (dict(), [1.0] * 25),
    (dict(patience=2), [5, 4, 4.5, 4.2, 4.1, 3, 3, 3, 3, 3, 2.99995, 3]),
    (dict(patience=1, factor=0.5, cooldown=2), [3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2]),
    (dict(patience=0, factor=0.5, min_lr=0.02), [1, 1, 1, 1, 1, 1, 1]),
    (dict(monitor="val_accuracy", mode="max", patience=1, factor=0.2),
     [.5, .6, .6, .55, .7, .7, .7, .7]),
    (dict(monitor="val_acc", mode="min", patience=1), [.5, .6, .6, .4, .4, .4]),
    (dict(mode="max", patience=2, min_delta=0.1), [1, 1.05, 1.2, 1.25, 1.3, 1.5, 1.5, 1.5]),
    (dict(patience=1, min_delta=-0.5), [1, 1.2, 1.6, 1.6, 2.2]),
]


@pytest.mark.parametrize("kwargs,values", PLATEAU_CASES)
def test_reduce_lr_on_plateau_matches_keras(kwargs, values):
    keras = _keras()
    monitor = kwargs.get("monitor", "val_loss")
    km = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    km.compile(keras.optimizers.SGD(0.1), "mse")
    kcb = keras.callbacks.ReduceLROnPlateau(**kwargs)
    kcb.set_model(km)
    model, _, _ = model_and_data(pynn.optimizers.SGD(0.1))
    pcb = callbacks.ReduceLROnPlateau(**kwargs)
    pcb.set_model(model)
    k_lrs, k_logged = _drive(kcb, values, monitor)
    p_lrs, p_logged = _drive(pcb, values, monitor)
    # Keras holds the rate in a float32 variable; pynn in a Python float.
    np.testing.assert_allclose(p_lrs, k_lrs, rtol=1e-6)
    np.testing.assert_allclose(p_logged, k_logged, rtol=1e-6)
    assert (pcb.wait, pcb.cooldown_counter) == (kcb.wait, kcb.cooldown_counter)


def test_reduce_lr_on_plateau_in_fit():
    model, x, y = model_and_data(pynn.optimizers.SGD(0.1))
    history = model.fit(x, y, epochs=6, batch_size=8, verbose=0, shuffle=False,
                        callbacks=[Script([1, 1, 1, 1, 1, 1]),
                                   callbacks.ReduceLROnPlateau("score", patience=1,
                                                               factor=0.5, mode="min")])
    # Logs carry the rate the epoch trained with; it halves after each flat epoch but the
    # first (the first value is always the best so far).
    np.testing.assert_allclose(history.history["learning_rate"],
                               [0.1, 0.1, 0.05, 0.025, 0.0125, 0.00625])
    assert model.optimizer.learning_rate == pytest.approx(0.003125)


def test_reduce_lr_on_plateau_with_a_schedule_raises_as_keras():
    sched = pynn.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    model, x, y = model_and_data(pynn.optimizers.SGD(sched))
    with pytest.raises(TypeError, match="LearningRateSchedule"):
        model.fit(x, y, epochs=3, verbose=0, callbacks=[
            Script([1, 1, 1]), callbacks.ReduceLROnPlateau("score", patience=1, mode="min")])


@pytest.mark.parametrize("monitor,minimize", [("val_loss", True), ("loss", True),
                                              ("val_accuracy", False), ("mae", True),
                                              ("val_f1_score", False)])
def test_reduce_lr_on_plateau_auto_mode(monitor, minimize):
    model, _, _ = model_and_data()
    cb = callbacks.ReduceLROnPlateau(monitor)
    cb.set_model(model)
    cb.on_train_begin()
    cb.on_epoch_end(0, {monitor: 1.0})
    assert cb._minimize is minimize
    cb = callbacks.ReduceLROnPlateau("score")  # Keras cannot tell either: an error
    cb.set_model(model)
    with pytest.raises(ValueError, match="ReduceLROnPlateau.*mode='min'"):
        cb.on_epoch_end(0, {"score": 1.0})


@pytest.mark.parametrize("kwargs,match", [
    (dict(factor=1.0), "factor"), (dict(factor=2), "factor"), (dict(factor=-0.1), "factor"),
    (dict(patience=-1), "patience"), (dict(cooldown=-2), "cooldown"),
    (dict(mode="bigger"), "mode"), (dict(min_lr=-1e-3), "min_lr"),
    (dict(factor=float("nan")), "factor"), (dict(patience=1.5), "patience"),
])
def test_reduce_lr_on_plateau_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=f"ReduceLROnPlateau.*{match}|{match}.*"):
        callbacks.ReduceLROnPlateau(**kwargs)


def _csv_run(cb, model, rows, fit_calls=1):
    cb.set_model(model)
    for _ in range(fit_calls):
        cb.on_train_begin({})
        for epoch, logs in enumerate(rows):
            cb.on_epoch_end(epoch, dict(logs))
        cb.on_train_end({})


CSV_ROWS = [{"loss": 0.5, "accuracy": 0.25, "val_loss": float("nan")},
            {"loss": float("inf"), "accuracy": 1.0, "val_loss": -float("inf")},
            {"loss": 1e-9, "accuracy": np.float32(0.5), "val_loss": 3}]


@pytest.mark.parametrize("rows", [CSV_ROWS, [{"loss": 1.0, "mae": 2.0}, {"loss": 0.5}]])
@pytest.mark.parametrize("sep", [",", ";"])
def test_csv_logger_matches_keras(tmp_path, rows, sep):
    keras = _keras()
    km = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model, _, _ = model_and_data()
    for append, calls in ((False, 1), (True, 2)):
        kpath, ppath = tmp_path / f"k{append}.csv", tmp_path / f"p{append}.csv"
        _csv_run(keras.callbacks.CSVLogger(str(kpath), sep, append), km, rows, calls)
        _csv_run(callbacks.CSVLogger(ppath, sep, append), model, rows, calls)
        assert ppath.read_text() == kpath.read_text()


def test_csv_logger_in_fit_and_append(tmp_path):
    path = tmp_path / "log.csv"
    model, x, y = model_and_data()
    model.fit(x, y, epochs=2, verbose=0, validation_split=0.25,
              callbacks=[callbacks.CSVLogger(path)])
    model.fit(x, y, epochs=3, initial_epoch=2, verbose=0, validation_split=0.25,
              callbacks=[callbacks.CSVLogger(path, append=True)])
    lines = path.read_text().splitlines()
    assert lines[0] == "epoch,accuracy,loss,val_accuracy,val_loss"
    assert [line.split(",")[0] for line in lines[1:]] == ["0", "1", "2"]
    assert all(len(line.split(",")) == 5 for line in lines)


def test_csv_logger_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="CSVLogger.*separator"):
        callbacks.CSVLogger(tmp_path / "a.csv", separator=";;")
    with pytest.raises(ValueError, match="CSVLogger.*does not exist"):
        callbacks.CSVLogger(tmp_path / "missing" / "a.csv")
    cb = callbacks.CSVLogger(tmp_path)  # a directory: fails when opened
    cb.set_model(model_and_data()[0])
    with pytest.raises(ValueError, match="CSVLogger.*cannot open"):
        cb.on_train_begin()


def test_lambda_callback_signatures():
    calls = []
    cb = callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: calls.append(("eb", epoch)),
        on_epoch_end=lambda epoch, logs: calls.append(("ee", epoch, sorted(logs))),
        on_train_begin=lambda logs: calls.append(("tb",)),
        on_train_end=lambda logs: calls.append(("te", sorted(logs))),
        on_train_batch_begin=lambda batch, logs: calls.append(("bb", batch)),
        on_train_batch_end=lambda batch, logs: calls.append(("be", batch, sorted(logs))))
    model, x, y = model_and_data()
    model.fit(x, y, epochs=2, batch_size=12, verbose=0, callbacks=[cb])
    # batch logs: the running loss and metrics, as Keras 3 gives them
    epoch = [("bb", 0), ("be", 0, ["accuracy", "loss"]), ("bb", 1),
             ("be", 1, ["accuracy", "loss"])]
    assert calls == ([("tb",), ("eb", 0)] + epoch + [("ee", 0, ["accuracy", "loss"]),
                     ("eb", 1)] + epoch + [("ee", 1, ["accuracy", "loss"]),
                     ("te", ["accuracy", "loss"])])
    # Unset hooks stay no-ops; other hooks by keyword; unknown ones are errors.
    seen = []
    cb = callbacks.LambdaCallback(on_test_begin=lambda logs: seen.append(logs))
    cb.on_epoch_end(0, {})
    cb.on_test_begin({"a": 1})
    assert seen == [{"a": 1}]
    with pytest.raises(ValueError, match="LambdaCallback.*on_epoch_ending"):
        callbacks.LambdaCallback(on_epoch_ending=print)
    with pytest.raises(ValueError, match="LambdaCallback.*callable"):
        callbacks.LambdaCallback(on_epoch_end=3)


class Crash(callbacks.Callback):
    """Raises once, at the second batch of ``epoch`` (mid-epoch: weights already moved)."""

    def __init__(self, epoch):
        super().__init__()
        self.crash_epoch, self.armed, self.epoch = epoch, True, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.armed and self.epoch == self.crash_epoch and batch == 1:
            self.armed = False
            raise RuntimeError("interrupted")


def _fresh(optimizer, weights, seed):
    model, x, y = model_and_data(optimizer)
    model.set_weights(weights)
    model.set_rng_state({"shuffle": np.random.default_rng(seed).bit_generator.state})
    return model, x, y


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("opt", ["sgd_momentum", "adam"])
def test_backup_and_restore_resumes_bit_for_bit(tmp_path, shuffle, opt):
    make = {"sgd_momentum": lambda: pynn.optimizers.SGD(0.05, momentum=0.9),
            "adam": lambda: pynn.optimizers.Adam(0.01)}[opt]
    weights = model_and_data()[0].get_weights()
    ref, x, y = _fresh(make(), weights, 3)
    ref_hist = ref.fit(x, y, epochs=6, batch_size=5, shuffle=shuffle, verbose=0)

    backup = tmp_path / "backup"
    model, _, _ = _fresh(make(), weights, 3)
    cb = callbacks.BackupAndRestore(backup)
    crash = Crash(3)
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(x, y, epochs=6, batch_size=5, shuffle=shuffle, verbose=0,
                  callbacks=[cb, crash])
    assert (backup / "latest.pynn").exists()
    hist = model.fit(x, y, epochs=6, batch_size=5, shuffle=shuffle, verbose=0,
                     callbacks=[cb, crash])
    assert hist.epoch == [3, 4, 5]
    assert hist.history["loss"] == ref_hist.history["loss"][3:]
    for got, want in zip(model.get_weights(), ref.get_weights()):
        np.testing.assert_array_equal(got, want)
    assert model.optimizer.iterations == ref.optimizer.iterations
    assert not backup.exists()  # deleted after the successful fit


def test_backup_and_restore_into_a_new_model_and_keep_checkpoint(tmp_path):
    weights = model_and_data()[0].get_weights()
    ref, x, y = _fresh(pynn.optimizers.Adam(0.01), weights, 1)
    ref.fit(x, y, epochs=4, batch_size=6, verbose=0)
    model, _, _ = _fresh(pynn.optimizers.Adam(0.01), weights, 1)
    cb = callbacks.BackupAndRestore(tmp_path / "b", delete_checkpoint=False)
    with pytest.raises(RuntimeError):
        model.fit(x, y, epochs=4, batch_size=6, verbose=0, callbacks=[cb, Crash(2)])
    # As after a crashed process: a new model (other layer names), a new callback.
    again, _, _ = _fresh(pynn.optimizers.Adam(0.01), [w * 0 for w in weights], 99)
    again.fit(x, y, epochs=4, batch_size=6, verbose=0,
              callbacks=[callbacks.BackupAndRestore(tmp_path / "b", delete_checkpoint=False)])
    for got, want in zip(again.get_weights(), ref.get_weights()):
        np.testing.assert_array_equal(got, want)
    assert (tmp_path / "b" / "latest.pynn").exists()


def test_backup_and_restore_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="BackupAndRestore.*save_freq"):
        callbacks.BackupAndRestore(tmp_path, save_freq=0)
    with pytest.raises(ValueError, match="BackupAndRestore.*save_freq"):
        callbacks.BackupAndRestore(tmp_path, save_freq="batch")
    with pytest.raises(ValueError, match="BackupAndRestore.*backup_dir"):
        callbacks.BackupAndRestore("")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="BackupAndRestore.*not a directory"):
        callbacks.BackupAndRestore(tmp_path / "file")
    cb = callbacks.BackupAndRestore(tmp_path / "file" / "sub")
    model, x, y = model_and_data()
    with pytest.raises(ValueError, match="BackupAndRestore.*cannot write"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[cb])


def test_backup_and_restore_every_n_batches_resumes_at_the_backup_epoch(tmp_path):
    # Keras 3: a batch-level backup names the epoch it was taken in; fit restarts that epoch
    # from its start with the backed-up weights.
    weights = model_and_data()[0].get_weights()
    ref, x, y = _fresh(pynn.optimizers.SGD(0.05, momentum=0.9), weights, 5)
    ref.fit(x, y, epochs=2, batch_size=6, shuffle=False, verbose=0)
    ref.fit(x, y, epochs=4, initial_epoch=1, batch_size=6, shuffle=False, verbose=0)
    model, _, _ = _fresh(pynn.optimizers.SGD(0.05, momentum=0.9), weights, 5)
    cb = callbacks.BackupAndRestore(tmp_path / "b", save_freq=2)
    crash = Crash(2)  # 4 batches an epoch: the last backup is after epoch 1's 4th batch
    with pytest.raises(RuntimeError):
        model.fit(x, y, epochs=4, batch_size=6, shuffle=False, verbose=0, callbacks=[cb, crash])
    hist = model.fit(x, y, epochs=4, batch_size=6, shuffle=False, verbose=0,
                     callbacks=[cb, crash])
    assert hist.epoch == [1, 2, 3]
    for got, want in zip(model.get_weights(), ref.get_weights()):
        np.testing.assert_array_equal(got, want)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("verbose", [1, 2])
def test_progbar_logger_draws_the_one_bar(capsys, verbose):
    model, x, y = model_and_data()
    model.fit(x, y, epochs=2, batch_size=12, verbose=verbose)
    own = capsys.readouterr().out
    model.fit(x, y, epochs=2, batch_size=12, verbose=verbose,
              callbacks=[callbacks.ProgbarLogger()])
    logged = capsys.readouterr().out

    def shape(text):  # the lines without their timings and values
        return [line.split(" ")[0] for line in text.splitlines()]
    assert shape(logged) == shape(own)
    assert logged.count("Epoch 2/2") == 1 and "loss:" in logged and "accuracy:" in logged
    model.fit(x, y, epochs=1, batch_size=12, verbose=0, callbacks=[callbacks.ProgbarLogger()])
    assert capsys.readouterr().out == ""
