"""The TensorBoard callback's event files: TFRecord framing and CRC-32C checked by the
callbacks module's own reader (and by tensorboard's EventAccumulator when it is installed),
Keras's train / validation layout and tags, update_freq."""

import glob
import os

import numpy as np
import pytest

import pynn
from pynn import callbacks, layers


def test_crc32c_known_values():
    # RFC 3720's check value and iSCSI's 32 zero bytes.
    assert callbacks.crc32c(b"123456789") == 0xE3069283
    assert callbacks.crc32c(bytes(32)) == 0x8A9136AA


def _fit(tmp_path, **kwargs):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)[:, None]
    model = pynn.Sequential([layers.Input((3,)), layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="sgd", loss="binary_crossentropy", metrics=["accuracy"])
    tb = callbacks.TensorBoard(log_dir=str(tmp_path / "logs"), **kwargs)
    history = model.fit(x, y, epochs=3, batch_size=8, validation_split=0.2, verbose=0,
                        callbacks=[tb])
    return history


def _events(tmp_path, which):
    files = glob.glob(str(tmp_path / "logs" / which / "events.out.tfevents.*"))
    assert len(files) == 1, files
    return files[0], callbacks.read_scalar_events(files[0])


def test_epoch_scalars_in_train_and_validation(tmp_path):
    history = _fit(tmp_path)
    _, train = _events(tmp_path, "train")
    _, val = _events(tmp_path, "validation")
    got = {(step, tag): value for step, tag, value in train}
    for epoch, loss in enumerate(history.history["loss"]):
        assert got[(epoch, "epoch_loss")] == pytest.approx(loss, rel=1e-6)
        assert (epoch, "epoch_accuracy") in got
    got_val = {(step, tag): value for step, tag, value in val}
    for epoch, loss in enumerate(history.history["val_loss"]):
        assert got_val[(epoch, "epoch_loss")] == pytest.approx(loss, rel=1e-6)
    assert not any(tag.startswith("batch_") for _, tag, _ in train)


@pytest.mark.parametrize("update_freq, steps", [("batch", [1, 2, 3, 4, 5, 6]), (2, [2, 4, 6])])
def test_batch_scalars_every_update_freq(tmp_path, update_freq, steps):
    _fit(tmp_path, update_freq=update_freq)
    _, train = _events(tmp_path, "train")
    assert sorted({s for s, tag, _ in train if tag == "batch_loss"}) == steps


def test_a_corrupt_record_is_named(tmp_path):
    _fit(tmp_path)
    path, _ = _events(tmp_path, "train")
    data = bytearray(open(path, "rb").read())
    data[-6] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(ValueError, match="bad data CRC"):
        callbacks.read_scalar_events(path)


def test_tensorboard_reads_the_file(tmp_path):
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")
    history = _fit(tmp_path)
    acc = accumulator.EventAccumulator(os.path.join(tmp_path, "logs", "train"))
    acc.Reload()
    losses = [e.value for e in acc.Scalars("epoch_loss")]
    np.testing.assert_allclose(losses, history.history["loss"], rtol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="TensorBoard: update_freq must be 'epoch', 'batch'"):
        callbacks.TensorBoard(update_freq=0)
    with pytest.raises(NotImplementedError, match="TensorBoard: only scalars"):
        callbacks.TensorBoard(histogram_freq=1)
