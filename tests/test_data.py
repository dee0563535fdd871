"""fit / evaluate / predict on PyDatasets, indexed batch sources and generators (pynn/data.py):
the same numbers as the array path, background preparation, errors surfacing, no leftover
workers."""

import threading

import numpy as np
import pytest

import pynn
from pynn import layers

N, BATCH = 40, 8


def model(seed=3):
    pynn.utils.set_random_seed(seed)
    m = pynn.Sequential([layers.Input((5,)), layers.Dense(7, activation="relu"),
                         layers.Dense(3, activation="softmax")])
    m.compile(pynn.optimizers.Adam(0.01), "sparse_categorical_crossentropy",
              metrics=["accuracy"])
    return m


def arrays(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N, 5)).astype(np.float32), rng.integers(0, 3, N)


class Arrays(pynn.utils.PyDataset):
    """Module level, so it pickles for use_multiprocessing."""

    def __init__(self, x, y, batch_size, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y, self.batch_size = x, y, batch_size
        self.epochs_ended = 0

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, i):
        s = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return self.x[s], self.y[s]

    def on_epoch_end(self):
        self.epochs_ended += 1


def looping(x, y, batch_size):
    while True:
        for i in range(0, len(x), batch_size):
            yield x[i:i + batch_size], y[i:i + batch_size]


def assert_same_weights(a, b):
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("workers", [1, 3])
def test_pydataset_fit_equals_array_fit(workers):
    x, y = arrays()
    ref = model()
    h_ref = ref.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    got = model()
    ds = Arrays(x, y, BATCH, workers=workers, max_queue_size=2)
    h = got.fit(ds, epochs=2, verbose=0)
    assert_same_weights(got, ref)
    assert h.history["loss"] == pytest.approx(h_ref.history["loss"], rel=1e-6)
    assert ds.epochs_ended == 2
    assert got.evaluate(ds, verbose=0) == pytest.approx(ref.evaluate(x, y, verbose=0),
                                                        rel=1e-6)
    np.testing.assert_allclose(got.predict(ds), ref.predict(x), rtol=1e-6)


def test_generator_with_steps_per_epoch_equals_array_fit():
    x, y = arrays()
    ref = model()
    ref.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0)
    got = model()
    got.fit(looping(x, y, BATCH), steps_per_epoch=N // BATCH, epochs=3, verbose=0)
    assert_same_weights(got, ref)


def test_validation_from_a_dataset_and_validation_freq():
    x, y = arrays()
    vx, vy = arrays(1)
    m = model()
    h = m.fit(Arrays(x, y, BATCH), validation_data=Arrays(vx, vy, 16), epochs=4,
              validation_freq=2, verbose=0)
    assert len(h.history["loss"]) == 4 and len(h.history["val_loss"]) == 2
    assert h.history["val_loss"][-1] == pytest.approx(m.evaluate(vx, vy, verbose=0)[0],
                                                      rel=1e-6)
    h = m.fit(x, y, validation_data=(vx, vy), epochs=3, validation_freq=[1, 3], verbose=0)
    assert len(h.history["val_loss"]) == 2


def test_a_finite_generator_runs_out_with_a_clear_error():
    x, y = arrays()
    m = model()

    def once():
        for i in range(0, N, BATCH):
            yield x[i:i + BATCH], y[i:i + BATCH]

    with pytest.raises(ValueError, match="gave no batch in epoch 2"):
        m.fit(once(), epochs=2, verbose=0)


class Boom(RuntimeError):
    pass


class Failing(Arrays):
    def __getitem__(self, i):
        if i == 3:
            raise Boom(f"cannot read batch {i}")
        return super().__getitem__(i)


def test_worker_errors_surface_and_no_worker_outlives_fit():
    x, y = arrays()
    before = threading.active_count()
    with pytest.raises(Boom, match="cannot read batch 3"):
        model().fit(Failing(x, y, BATCH, workers=2), epochs=1, verbose=0)

    def broken():
        yield x[:BATCH], y[:BATCH]
        raise Boom("generator broke")

    with pytest.raises(Boom, match="generator broke"):
        model().fit(broken(), steps_per_epoch=3, epochs=1, verbose=0)
    assert threading.active_count() == before


def test_stop_training_mid_epoch_stops_the_workers():
    x, y = arrays()

    class StopAfter(pynn.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                self.model.stop_training = True

    before = threading.active_count()
    h = model().fit(looping(x, y, BATCH), steps_per_epoch=5, epochs=3, verbose=0,
                    callbacks=[StopAfter()])
    assert len(h.epoch) == 1
    assert threading.active_count() == before


def test_multiprocessing_workers():
    x, y = arrays()
    ref = model()
    ref.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    got = model()
    got.fit(Arrays(x, y, BATCH, workers=2, use_multiprocessing=True), epochs=1, verbose=0)
    assert_same_weights(got, ref)


@pytest.mark.filterwarnings("ignore:Model.*_generator is deprecated:DeprecationWarning")
def test_generator_aliases_warn_and_work():
    x, y = arrays()
    m = model()
    with pytest.warns(DeprecationWarning, match="fit_generator is deprecated"):
        m.fit_generator(looping(x, y, BATCH), steps_per_epoch=2, epochs=1, verbose=0)
    loss = m.evaluate_generator(Arrays(x, y, BATCH))
    assert loss == pytest.approx(m.evaluate(x, y, verbose=0), rel=1e-6)
    np.testing.assert_allclose(m.predict_generator(Arrays(x, y, BATCH)), m.predict(x),
                               rtol=1e-6)


def test_dataset_argument_errors():
    x, y = arrays()
    m = model()
    with pytest.raises(ValueError, match="y must not be given when x is a dataset"):
        m.fit(Arrays(x, y, BATCH), y, verbose=0)
    with pytest.raises(ValueError, match="steps 9 is more than the dataset's 5 batches"):
        m.fit(Arrays(x, y, BATCH), steps_per_epoch=9, verbose=0)

    def no_targets():
        while True:
            yield x[:BATCH]

    with pytest.raises(ValueError, match="must yield \\(x, y\\)"):
        m.fit(no_targets(), steps_per_epoch=2, verbose=0)
    with pytest.raises(ValueError, match="validation_freq"):
        m.fit(x, y, validation_freq=0, verbose=0)
    with pytest.raises(ValueError, match="workers must be a positive int"):
        Arrays(x, y, BATCH, workers=0)
    unbuilt = pynn.Sequential([layers.Dense(2)])
    unbuilt.compile("sgd", "mse")
    with pytest.raises(ValueError, match="is not built"):
        unbuilt.fit(Arrays(x, y, BATCH), verbose=0)


def test_fit_on_image_data_generator_flows():
    from pynn.preprocessing.image import ImageDataGenerator

    rng = np.random.default_rng(2)
    x = rng.random((24, 6, 6, 1)).astype(np.float32)
    y = rng.integers(0, 3, 24)

    def cnn():
        pynn.utils.set_random_seed(4)
        m = pynn.Sequential([layers.Input((6, 6, 1)), layers.Conv2D(4, 3, activation="relu"),
                             layers.Flatten(), layers.Dense(3, activation="softmax")])
        m.compile("adam", "sparse_categorical_crossentropy")
        return m

    ref = cnn()
    ref.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    plain = cnn()
    flow = ImageDataGenerator().flow(x, y, batch_size=8, shuffle=False)
    plain.fit(flow, epochs=2, verbose=0)  # an endless iterator: fit reads len and indexes
    assert_same_weights(plain, ref)
    augmented = cnn()
    gen = ImageDataGenerator(rotation_range=20, horizontal_flip=True, zoom_range=0.1)
    h = augmented.fit(gen.flow(x, y, batch_size=8, seed=1), epochs=2, verbose=0)
    assert len(h.history["loss"]) == 2 and np.isfinite(h.history["loss"]).all()


@pytest.mark.parametrize("kind", ["processes", "threads", "generator"])
def test_ctrl_c_in_fit_stops_cleanly_and_leaves_no_worker(kind):
    """A KeyboardInterrupt in the training thread (Ctrl-C) leaves fit at once: it propagates,
    the worker processes or threads are gone, and the model trains again afterwards."""
    import multiprocessing

    x, y = arrays()
    m = model()

    class CtrlC(pynn.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                raise KeyboardInterrupt

    if kind == "generator":
        data = looping(x, y, BATCH)
        kwargs = {"steps_per_epoch": 4}
    else:
        data = Arrays(x, y, BATCH, workers=2, use_multiprocessing=kind == "processes")
        kwargs = {}
    before = {t.ident for t in threading.enumerate()}
    with pytest.raises(KeyboardInterrupt):
        m.fit(data, epochs=2, verbose=0, callbacks=[CtrlC()], **kwargs)
    assert multiprocessing.active_children() == []
    left = [t for t in threading.enumerate()
            if t.ident not in before and t.name.startswith("pynn-data") and t.is_alive()]
    assert left == []
    m.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)  # nothing was left half-done
