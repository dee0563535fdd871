"""Random whole models (tests/test_fuzz_models.py's generator) through every file pynn
writes, and through Keras 3 itself:

- the native ``.pynn`` file and ``.weights.h5`` load back to the same bits;
- pynn's ``.keras`` and ``.h5`` files load back into pynn, the ``.keras`` one into Keras 3,
  whose predictions agree, and the ``.keras``, ``.h5`` and ``.weights.h5`` files Keras then
  writes load into pynn;
- compiled with SGD and momentum, the ``.keras`` file carries the training state: Keras's
  ``train_on_batch`` from it moves every weight as pynn's does (so the gradients agree,
  layer by layer, masks included), and so does pynn's from the file Keras writes then;
- ``fit`` with random options (batch sizes, validation_split, sample_weight,
  class_weight, a metric) gives Keras's history and weights;
- ``pynn.onnx.export`` gives a graph onnxruntime runs to pynn's numbers.

Found this way: the ONNX exporter refused every layer reading a mask (the Embedding
(mask_zero) text classifiers: a masked mean, a masked LSTM or GRU), and a
BatchNormalization or TimeDistributed(Dense) after one, which ignore it at inference;
Keras 3's legacy .h5 of a masked model (its masks traced as op nodes without modules) was
refused; a compiled Keras file whose single loss Keras wrote as an object loaded
uncompiled (its keys read as output names); fit weighed validation_split's part by
class_weight.
Where Keras 3.15 itself parts from its own rules the comparison is skipped, and
``keras_divergence`` says why (README, "Keras and ONNX files"). Each test runs a block of
seeds; a failure names the seed, which ``check_*`` reproduces alone.
"""

import os
import warnings

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
try:
    import h5py  # noqa: F401  (the .keras weights)
    import keras
except Exception as exc:  # noqa: BLE001 (keras or h5py missing, or its backend fails)
    pytest.skip(f"keras (torch backend) and h5py are not available: {exc}",
                allow_module_level=True)

import pynn
from tests.test_fuzz_models import assert_agrees, random_case, random_model

BLOCKS, SEEDS_PER_BLOCK = 4, 50
STOCHASTIC = {"Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianNoise",
              "GaussianDropout", "AlphaDropout"}


def _layers(model):
    """Every layer, wrappers' inner layers too."""
    for layer in model.layers:
        yield layer
        for inner in (getattr(layer, "layer", None), getattr(layer, "forward_layer", None)):
            if inner is not None:
                yield inner


def _masked(model):
    return any(type(la).__name__ == "Masking" or getattr(la, "mask_zero", False)
               for la in model.layers)


def keras_divergence(model, training=False):
    """Why Keras 3.15 (torch backend) cannot be the reference for ``model``, or None:
    its average pooling with "same" padding split unevenly repeats the edge instead of
    averaging the window's inside, its masked BatchNormalization over one channel fails
    (IndexError) while training, and its fused MultiHeadAttention answers a query step
    that may attend to nothing otherwise than its masked Softmax."""
    for layer in _layers(model):
        kind = type(layer).__name__
        if kind in ("AveragePooling1D", "AveragePooling2D") and layer.padding == "same":
            spatial = layer.input_shape[1:-1]
            pools = np.atleast_1d(layer.pool_size)
            strides = np.atleast_1d(layer.strides)
            for n, p, s in zip(spatial, pools, strides):
                pad = max((-(-n // s) - 1) * s + p - n, 0)
                if pad % 2:
                    return f"{layer.name}: 'same' average pooling padded unevenly"
        if (training and kind == "BatchNormalization" and _masked(model)
                and layer.input_shape[-1] == 1):
            return f"{layer.name}: masked batch normalization over one channel"
        if kind == "MultiHeadAttention" and _masked(model) and layer.dropout == 0:
            # a masked query step attends to nothing: Keras's fused path (no dropout) then
            # attends to every key alike, its masked Softmax (and pynn) give zeros
            # (tests/test_attention.py::test_a_row_attending_to_nothing_differs_only_on_keras_fused_path)
            return f"{layer.name}: Keras's fused attention on a masked query step"
    return None


def _case(seed, batch=3):
    head, model = random_model(seed)
    weights, x, y, loss = random_case(seed, model, head, batch)
    model.set_weights([w.astype("float32") for w in weights])
    x = x if x.dtype.kind in "iu" else x.astype(np.float32)
    y = y if y.dtype.kind in "iu" else y.astype(np.float32)
    return model, x, y, loss


def check_files(seed, tmp_path):
    """.pynn, .keras (pynn and Keras loading it) and ONNX against the model's predictions."""
    model, x, _, _ = _case(seed)
    want = np.asarray(model.predict_on_batch(x))
    native = tmp_path / f"m{seed}.pynn"
    model.save(native)
    assert_agrees(pynn.load_model(native).predict_on_batch(x), want, 0.0,
                  f"seed {seed}: .pynn")

    for suffix in (".keras", ".h5"):
        path = tmp_path / f"m{seed}{suffix}"
        model.save(path)
        assert_agrees(pynn.load_model(path).predict_on_batch(x), want, 1e-6,
                      f"seed {seed}: {suffix} into pynn")
    weights = tmp_path / f"m{seed}.weights.h5"
    model.save_weights(weights)
    twin = random_model(seed)[1]
    twin.load_weights(weights)
    assert_agrees(twin.predict_on_batch(x), want, 0.0, f"seed {seed}: .weights.h5")
    if keras_divergence(model) is None:
        theirs = keras.saving.load_model(tmp_path / f"m{seed}.keras")
        assert_agrees(theirs.predict(x, verbose=0), want, 2e-4, f"seed {seed}: .keras into Keras")
        # and the files Keras writes of it, read by pynn (its legacy .h5 traces the masks
        # as op nodes that Keras's own loader does not know)
        for suffix in (".keras", ".h5"):
            path = tmp_path / f"k{seed}{suffix}"
            theirs.save(path)
            assert_agrees(pynn.load_model(path).predict_on_batch(x), want, 2e-6,
                          f"seed {seed}: Keras's {suffix} into pynn")
        theirs.save_weights(weights)
        twin.load_weights(weights)
        assert_agrees(twin.predict_on_batch(x), want, 2e-6,
                      f"seed {seed}: Keras's .weights.h5 into pynn")

    check_onnx(seed, model, x, want)


def check_onnx(seed, model, x, want):
    onnx = pytest.importorskip("onnx")  # noqa: F841
    ort = pytest.importorskip("onnxruntime")
    import pynn.onnx

    proto = pynn.onnx.export(model)   # every layer the generator draws exports, masked too
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(proto.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0]
    xs = x.astype(np.int64) if "int64" in feed.type else x
    assert_agrees(session.run(None, {feed.name: xs})[0], want, 1e-4, f"seed {seed}: ONNX")


def check_keras_training(seed, tmp_path):
    """SGD steps with momentum from pynn's compiled .keras file, in Keras and in pynn: the
    losses and every weight's update agree; then from the file Keras writes (its momentum
    slots too) into pynn, one more step each."""
    model, x, y, loss = _case(seed, batch=4)
    if STOCHASTIC & {type(la).__name__ for la in _layers(model)}:
        return  # the two draw other noise
    if keras_divergence(model, training=True) is not None:
        return
    model.compile(optimizer=pynn.optimizers.SGD(0.1, momentum=0.5), loss=loss)
    path = tmp_path / f"t{seed}.keras"
    model.save(path)
    theirs = keras.saving.load_model(path)
    for step in range(3):
        if step == 2:  # Keras's file, slots and all, into pynn
            theirs.save(path)
            model = pynn.load_model(path)
            assert model.compiled, f"seed {seed}: Keras's file loads uncompiled"
        before = model.get_weights()
        ours_loss = float(model.train_on_batch(x, y))
        their_loss = float(theirs.train_on_batch(x, y))
        assert abs(ours_loss - their_loss) <= 1e-5 * max(1.0, abs(their_loss)), \
            f"seed {seed} step {step}: loss {ours_loss} against Keras's {their_loss}"
        for v, w0, ours, their in zip(model.weights, before, model.get_weights(),
                                      theirs.get_weights()):
            assert_agrees(ours - w0, their - w0, 2e-5,
                          f"seed {seed} step {step}: update of {v.path}")


def check_keras_fit(seed, tmp_path):
    """fit with random options (batch sizes that do not divide the data, validation_split,
    sample_weight, class_weight, a metric), two epochs of SGD from pynn's compiled .keras
    file in Keras and in pynn: the same history and weights. False where the model draws
    noise, Keras parts from its rules, or Keras's own fit fails (its torch backend)."""
    head, model = random_model(seed)
    if STOCHASTIC & {type(la).__name__ for la in _layers(model)} or keras_divergence(
            model, training=True):
        return False
    rng = np.random.default_rng([seed, 9])
    n = int(rng.integers(5, 23))
    weights, x, y, loss = random_case(seed, model, head, n)
    model.set_weights([w.astype("float32") for w in weights])
    x = x if x.dtype.kind in "iu" else x.astype(np.float32)
    y = y if y.dtype.kind in "iu" else y.astype(np.float32)
    options = dict(batch_size=int(rng.integers(1, n + 3)), epochs=2, shuffle=False, verbose=0)
    if rng.random() < 0.4:
        options["validation_split"] = float(rng.choice([0.2, 0.25, 0.5]))
    if rng.random() < 0.4:
        options["sample_weight"] = rng.uniform(0, 2, n).astype(np.float32)
    elif head == "softmax" and rng.random() < 0.6:
        options["class_weight"] = {c: float(rng.uniform(0.2, 3))
                                   for c in range(model.output_shape[-1])}
    metrics = ["accuracy"] if head == "softmax" and rng.random() < 0.5 else []
    model.compile(optimizer=pynn.optimizers.SGD(0.05), loss=loss, metrics=metrics)
    path = tmp_path / f"f{seed}.keras"
    model.save(path)
    theirs = keras.saving.load_model(path)
    ours = model.fit(x, y, **options).history
    try:
        expected = theirs.fit(x, y, **options).history
    except RuntimeError:   # torch's own limits inside Keras's fit
        return False
    what = f"seed {seed} {sorted(options)}"
    assert sorted(ours) == sorted(expected), what
    for key in ours:
        np.testing.assert_allclose(ours[key], expected[key], rtol=2e-4, atol=2e-5,
                                   err_msg=f"{what}: {key}")
    for v, a, b in zip(model.weights, model.get_weights(), theirs.get_weights()):
        assert_agrees(a, b, 1e-4, f"{what}: {v.path}")
    return True


def seeds(block):
    return range(block * SEEDS_PER_BLOCK, (block + 1) * SEEDS_PER_BLOCK)


@pytest.fixture
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture
def in_process_after_block_0(request, monkeypatch):
    """Block 0 reads its HDF5 files in the child process, as users do; the others here (a
    child costs 0.15 s a file), the same readers over h5py itself."""
    if request.node.callspec.params["block"] > 0:
        monkeypatch.setenv("PYNN_H5_SANDBOX", "0")


@pytest.mark.parametrize("block", range(BLOCKS))
def test_random_models_survive_every_file(block, tmp_path, quiet, in_process_after_block_0):
    for seed in seeds(block):
        check_files(seed, tmp_path)


@pytest.mark.parametrize("block", range(BLOCKS))
def test_keras_trains_pynns_keras_files_as_pynn_does(block, tmp_path, quiet,
                                                     in_process_after_block_0):
    for seed in seeds(block):
        check_keras_training(seed, tmp_path)


def test_fit_options_train_as_in_keras(tmp_path, quiet):
    """Found this way: with class_weight and validation_split, pynn weighed the validation
    part by the class weights too (Keras weighs it by sample_weight alone)."""
    compared = sum(check_keras_fit(seed, tmp_path) for seed in range(60))
    assert compared >= 30, compared


def test_the_divergences_skipped_are_keras_own():
    """keras_divergence's first rule names a real difference: Keras 3.15's 'same' average
    pooling over an uneven pad answers otherwise than the window's mean (pynn's, and
    Keras's own with an even pad)."""
    layer = keras.layers.AveragePooling1D(3, strides=3, padding="same")
    x = np.arange(1.0, 6.0, dtype=np.float32).reshape(1, 5, 1)   # pad 1: one on the right
    theirs = np.asarray(layer(x)).ravel()
    model = pynn.Sequential([pynn.layers.Input((5, 1)),
                             pynn.layers.AveragePooling1D(3, strides=3, padding="same")])
    ours = np.asarray(model.predict_on_batch(x)).ravel()
    np.testing.assert_allclose(ours, [2.0, 4.5])    # the means of (1, 2, 3) and (4, 5)
    assert keras_divergence(model) is not None
    if np.allclose(theirs, ours):
        pytest.skip("this Keras pools as pynn does: drop keras_divergence's pooling rule")


# -- audio models (branch audio): their seeds through every file and Keras's training --
from tests.test_fuzz_models import AUDIO_SEEDS  # noqa: E402


def test_audio_models_survive_every_file_and_train_as_in_keras(tmp_path, quiet):
    for seed in AUDIO_SEEDS:
        check_files(seed, tmp_path)
        check_keras_training(seed, tmp_path)
