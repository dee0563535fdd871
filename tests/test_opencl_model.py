"""Whole models on OpenCL against the same models on the CPU: training for several epochs,
evaluation, prediction, and model files moving between the two backends."""

import numpy as np
import pytest

import pynn
from pynn import layers

pytestmark = pytest.mark.opencl


@pytest.fixture
def restore_device():
    previous = pynn.get_device()
    yield
    pynn.set_device(previous)


def cnn():
    return pynn.Sequential([
        layers.Input(shape=(9, 11, 2)),
        layers.Conv2D(5, 3, padding="same", activation="relu",
                      kernel_regularizer=pynn.regularizers.L2(1e-3)),
        layers.MaxPooling2D(2, padding="same"),
        layers.Conv2D(4, (2, 3), strides=(1, 2), activation="tanh"),
        layers.AveragePooling2D(2, strides=1),
        layers.Dropout(0.25, seed=7),
        layers.Flatten(),
        layers.Dense(6, activation="softmax"),
    ])


def cnn_pooled():
    """Conv2D -> MaxPooling2D pairs whose windows tile the map: the CPU's convs take their
    gradient from the pools' arrays (conv2d_pool_backward's passes), OpenCL's from the
    pools' backward."""
    return pynn.Sequential([
        layers.Input(shape=(10, 12, 2)),
        layers.Conv2D(6, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(8, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dense(6, activation="softmax"),
    ])


def lstm():
    return pynn.Sequential([
        layers.Input(shape=(5, 3)),
        layers.LSTM(7, return_sequences=True),
        layers.GRU(4),
        layers.Dense(1, activation="sigmoid"),
    ])


def train(device, build, weights, x, y, loss, optimizer, epochs=3):
    pynn.set_device(device)
    pynn.utils.set_random_seed(5)
    model = build()
    model.set_weights(weights)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    history = model.fit(x, y, batch_size=8, epochs=epochs, verbose=0)
    return model, history.history


@pytest.mark.parametrize("case", ["cnn-adam", "cnn-sgd", "pooled-adam", "rnn-rmsprop"])
def test_training_on_opencl_matches_cpu(case, restore_device):
    rng = np.random.default_rng(3)
    if case.startswith("cnn"):
        build, loss = cnn, "sparse_categorical_crossentropy"
        x = rng.standard_normal((27, 9, 11, 2)).astype(np.float32)
        y = rng.integers(0, 6, 27)
    elif case.startswith("pooled"):
        build, loss = cnn_pooled, "sparse_categorical_crossentropy"
        x = rng.standard_normal((27, 10, 12, 2)).astype(np.float32)
        y = rng.integers(0, 6, 27)
    else:
        build, loss = lstm, "binary_crossentropy"
        x = rng.standard_normal((21, 5, 3)).astype(np.float32)
        y = (rng.random(21) > 0.5).astype(np.float32)
    optimizer = {"cnn-adam": "adam", "pooled-adam": "adam",
                 "cnn-sgd": {"class_name": "SGD", "config": {
        "learning_rate": 0.05, "momentum": 0.9, "nesterov": True}},
        "rnn-rmsprop": "rmsprop"}[case]
    pynn.set_device("cpu")
    pynn.utils.set_random_seed(1)
    initial = build().get_weights()

    cpu_model, cpu_hist = train("cpu", build, initial, x, y, loss, optimizer)
    cl_model, cl_hist = train("opencl", build, initial, x, y, loss, optimizer)
    assert all(type(v.value).__module__.startswith("pyopencl") for v in cl_model.weights), \
        "the OpenCL model's weights must live in device buffers"

    moved = max(float(np.abs(a - b).max()) for a, b in zip(cpu_model.get_weights(), initial))
    assert moved > 1e-3, "training did not change the weights: the comparison would be empty"
    for name, (a, b) in enumerate(zip(cl_model.get_weights(), cpu_model.get_weights())):
        scale = max(1.0, float(np.abs(b).max()))
        assert float(np.abs(a - b).max()) <= 1e-4 * scale, f"weight {name} differs"
    np.testing.assert_allclose(cl_hist["loss"], cpu_hist["loss"], rtol=1e-4)
    np.testing.assert_allclose(cl_hist["accuracy"], cpu_hist["accuracy"], atol=1e-6)
    pynn.set_device("opencl")
    cl_pred = cl_model.predict(x)
    pynn.set_device("cpu")
    np.testing.assert_allclose(cl_pred, cpu_model.predict(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("save_on,load_on", [("opencl", "cpu"), ("cpu", "opencl")])
def test_model_files_move_between_backends(save_on, load_on, tmp_path, restore_device):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((10, 9, 11, 2)).astype(np.float32)
    y = rng.integers(0, 6, 10)
    pynn.set_device(save_on)
    pynn.utils.set_random_seed(2)
    model = cnn()
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    want = model.predict(x)
    path = tmp_path / "m.pynn"
    model.save(path)
    pynn.set_device(load_on)
    loaded = pynn.load_model(path)
    np.testing.assert_allclose(loaded.predict(x), want, rtol=1e-4, atol=1e-5)
    assert loaded.optimizer.iterations == model.optimizer.iterations
    loaded.fit(x, y, batch_size=4, epochs=1, verbose=0)  # resumes with the restored slots


def test_bad_device_spec_is_a_clear_error(restore_device):
    # Every bad spec is the same error type: a name that is not a device.
    with pytest.raises(ValueError, match="opencl"):
        pynn.set_device("opencl:97:3")
    with pytest.raises(ValueError, match="cpu"):
        pynn.set_device("cuda")


def test_async_uploads_keep_their_source_alive(restore_device):
    """Uploads return before the copy ends; the temporary host array (here a float64 -> float32
    conversion that nothing else holds) must survive until the transfer completes."""
    pynn.set_device("opencl")
    b = pynn.backend.current()
    rng = np.random.default_rng(9)
    sources = [rng.standard_normal((257, 33)) for _ in range(6)]
    uploaded = [b.asarray(src, np.float32) for src in sources]  # six copies in flight
    for src, dev in zip(sources, uploaded):
        np.testing.assert_array_equal(b.to_numpy(dev), src.astype(np.float32))


def test_upload_is_a_snapshot_of_the_host_array(restore_device):
    """Changing a host array right after uploading it must not change the device copy."""
    pynn.set_device("opencl")
    b = pynn.backend.current()
    host = np.arange(4099, dtype=np.float32)
    dev = b.asarray(host, np.float32)
    host *= -1.0
    np.testing.assert_array_equal(b.to_numpy(dev), np.arange(4099, dtype=np.float32))


def test_float64_model_on_opencl_says_why(restore_device, float64):
    """The OpenCL kernels are float32; a float64 model is refused with the reason and the
    way out, before any kernel runs, not with a dtype mismatch deep in an op."""
    pynn.set_device("opencl")
    with pytest.raises(TypeError, match=r"float32 only.*set_floatx\('float32'\).*CPU"):
        pynn.Sequential([layers.Input(shape=(3,)), layers.Dense(2)])


@pytest.mark.parametrize("limit_after", [0, 1])
def test_device_out_of_memory_names_the_layer(restore_device, monkeypatch, limit_after):
    """A device allocation that fails (here: the device's max allocation shrunk below the
    Dense activations) is a MemoryError naming the layer and the OpenCL request, forward
    (limit_after=0) or in backward (the limit hits once the forward's outputs exist)."""
    from pynn.backend.opencl import runtime as rt

    pynn.set_device("opencl")
    model = pynn.Sequential([layers.Input(shape=(64,)), layers.Dense(256, name="wide"),
                             layers.Dense(1, name="head")])
    model.compile(optimizer="sgd", loss="mean_squared_error")
    x, y = np.ones((32, 64), np.float32), np.ones((32, 1), np.float32)
    info = dict(rt._S.info)
    shrunk = dict(info, max_alloc=32 * 256 * 4 - 1)
    if limit_after:
        original = rt.empty

        def empty(shape, dtype=np.float32, what=""):
            if "backward" in what:
                rt._S.info = shrunk
            return original(shape, dtype, what)

        monkeypatch.setattr(rt, "empty", empty)
    else:
        monkeypatch.setattr(rt._S, "info", shrunk)
    # Forward: 'wide' cannot hold its output. Backward: 'head' cannot hold the gradient of
    # its (32, 256) input.
    want = (r"Layer 'head' \(Dense\): out of memory in backward.*OpenCL" if limit_after
            else r"Layer 'wide' \(Dense\): out of memory.*OpenCL")
    try:
        with pytest.raises(MemoryError, match=want):
            model.train_on_batch(x, y)
    finally:
        rt._S.info = info
