"""Save / load: round trips, exact resumption, atomic writes, and hostile or damaged files.

A model file is a zip of JSON and .npy arrays. Every defect must surface as a ValueError that
says what is wrong; nothing in a file may ever run code (no pickle, no import by name).
"""

import io
import json
import math
import os
import signal
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

import pynn
from pynn import layers, saving


def make_model(dropout=True):
    stack = [layers.Input((6, 6, 1)),
             layers.Conv2D(3, 3, padding="same", activation="relu"),
             layers.MaxPooling2D(2),
             layers.Flatten(),
             layers.Dense(8, activation="tanh", kernel_regularizer=pynn.regularizers.L2(1e-3))]
    if dropout:
        stack.append(layers.Dropout(0.25, seed=5))
    stack.append(layers.Dense(3, activation="softmax"))
    return pynn.Sequential(stack)


def make_data(n=30, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 6, 6, 1)).astype(np.float32),
            rng.integers(0, 3, n).astype(np.int32))


def compiled(optimizer=None, dropout=True):
    model = make_model(dropout)
    model.compile(optimizer or pynn.optimizers.Adam(1e-2), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


@pytest.fixture
def trained(seeded, tmp_path):
    model = compiled()
    x, y = make_data()
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    path = tmp_path / "model.pynn"
    model.save(path)
    return model, path, x, y


# -- round trips ------------------------------------------------------------------------------
def test_round_trip_predictions_and_config(trained):
    model, path, x, _ = trained
    loaded = pynn.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert [type(a) for a in loaded.layers] == [type(b) for b in model.layers]
    assert [a.name for a in loaded.layers] == [b.name for b in model.layers]
    assert loaded.get_config() == model.get_config()
    assert loaded.count_params() == model.count_params()
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert type(loaded.optimizer) is pynn.optimizers.Adam
    assert loaded.optimizer.iterations == model.optimizer.iterations == 4
    assert loaded.evaluate(x, make_data()[1], verbose=0) == \
        model.evaluate(x, make_data()[1], verbose=0)


@pytest.mark.parametrize("optimizer", [
    lambda: pynn.optimizers.Adam(1e-2, amsgrad=True),
    lambda: pynn.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
    lambda: pynn.optimizers.RMSprop(1e-2, centered=True, momentum=0.3),
    lambda: pynn.optimizers.Adagrad(0.05),
    lambda: pynn.optimizers.AdamW(1e-2, clipnorm=1.0),
], ids=["adam-amsgrad", "sgd-nesterov", "rmsprop-centered", "adagrad", "adamw-clipnorm"])
def test_resumed_training_is_bit_identical(seeded, tmp_path, optimizer):
    x, y = make_data()
    pynn.utils.set_random_seed(7)
    straight = compiled(optimizer())
    initial = straight.get_weights()
    straight.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)

    pynn.utils.set_random_seed(7)
    first = compiled(optimizer())
    first.set_weights(initial)
    first.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    first.save(tmp_path / "half.pynn")
    del first
    resumed = pynn.load_model(tmp_path / "half.pynn")
    history = resumed.fit(x, y, batch_size=8, epochs=3, initial_epoch=1, shuffle=False,
                          verbose=0)
    assert history.epoch == [1, 2]
    for a, b in zip(resumed.get_weights(), straight.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert resumed.optimizer.iterations == straight.optimizer.iterations == 12


def test_weights_only_save(trained, tmp_path):
    model, _, x, _ = trained
    path = tmp_path / "weights.pynn"
    model.save_weights(path)
    with zipfile.ZipFile(path) as zf:
        doc = json.loads(zf.read("pynn.json"))
        assert "compile" not in doc and "optimizer_state" not in doc
        assert not [n for n in zf.namelist() if n.startswith("optimizer/")]
    fresh = make_model()
    assert not np.array_equal(fresh.predict(x), model.predict(x))
    fresh.load_weights(path)
    np.testing.assert_array_equal(fresh.predict(x), model.predict(x))
    reloaded = pynn.load_model(path)  # a weights file is still a full model description
    assert not reloaded.compiled
    np.testing.assert_array_equal(reloaded.predict(x), model.predict(x))


def test_load_weights_into_unbuilt_model(trained, tmp_path):
    model, path, x, _ = trained
    stack = [layers.Conv2D(3, 3, padding="same", activation="relu"), layers.MaxPooling2D(2),
             layers.Flatten(), layers.Dense(8, activation="tanh"), layers.Dropout(0.25),
             layers.Dense(3, activation="softmax")]
    fresh = pynn.Sequential(stack)
    fresh.load_weights(path)
    np.testing.assert_array_equal(fresh.predict(x), model.predict(x))


def test_load_without_compile(trained):
    _, path, x, _ = trained
    loaded = pynn.load_model(path, compile=False)
    assert not loaded.compiled and loaded.optimizer is None
    with pytest.raises(RuntimeError, match="compile"):
        loaded.evaluate(x, make_data()[1])


def test_save_unbuilt_model_is_refused(tmp_path):
    model = pynn.Sequential([layers.Dense(3)])
    with pytest.raises(ValueError, match="not built"):
        model.save(tmp_path / "m.pynn")
    assert not (tmp_path / "m.pynn").exists()


# -- atomic save --------------------------------------------------------------------------------
def _stray_files(directory):
    return [p.name for p in directory.iterdir() if saving.TEMP_NAME.match(p.name)]


def test_failed_save_keeps_old_file(trained, tmp_path, monkeypatch):
    model, path, _, _ = trained
    before = path.read_bytes()
    calls = {"n": 0}
    original = zipfile.ZipFile.writestr

    def failing_writestr(self, name, data, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full (simulated)")
        return original(self, name, data, *args, **kwargs)

    model.fit(*make_data(), batch_size=8, epochs=1, verbose=0)  # new weights to save
    monkeypatch.setattr(zipfile.ZipFile, "writestr", failing_writestr)
    with pytest.raises(OSError, match="simulated"):
        model.save(path)
    monkeypatch.undo()
    assert calls["n"] == 3
    assert path.read_bytes() == before
    assert _stray_files(tmp_path) == []
    pynn.load_model(path)  # still a valid file


def test_interrupted_rename_leaves_no_temp_file(trained, tmp_path, monkeypatch):
    model, path, _, _ = trained
    before = path.read_bytes()

    def failing_replace(src, dst):
        raise KeyboardInterrupt  # even a non-Exception interruption cleans up

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(KeyboardInterrupt):
        model.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before and _stray_files(tmp_path) == []


def test_saved_file_mode_follows_umask(trained):
    _, path, _, _ = trained
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)


# -- hostile and damaged files ------------------------------------------------------------------
def _rewrite(path, out, replace=None, add=None, drop=()):
    """Copy the zip at ``path`` to ``out``, replacing/adding/dropping entries."""
    replace, add = replace or {}, add or {}
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if info.filename in drop:
                continue
            data = replace.get(info.filename, src.read(info.filename))
            dst.writestr(info.filename, data)
        for name, data in add.items():
            dst.writestr(name, data)
    return out


def _doc(path):
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("pynn.json"))


def test_truncated_file(trained, tmp_path):
    _, path, _, _ = trained
    data = path.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 30):
        bad = tmp_path / f"cut{cut}.pynn"
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="load_model"):
            pynn.load_model(bad)


def test_random_bytes(tmp_path):
    bad = tmp_path / "noise.pynn"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="not a pynn model file"):
        pynn.load_model(bad)


def test_empty_file_and_missing_file(tmp_path):
    (tmp_path / "empty.pynn").write_bytes(b"")
    with pytest.raises(ValueError):
        pynn.load_model(tmp_path / "empty.pynn")
    with pytest.raises(FileNotFoundError):
        pynn.load_model(tmp_path / "absent.pynn")


@pytest.mark.parametrize("payload", [b"{not json", b"\xff\xfe\x00", b"[1, 2]", b'"text"',
                                     b'{"format": "other", "version": 1}',
                                     b'{"format": "pynn", "version": 99}'])
def test_bad_json(trained, tmp_path, payload):
    _, path, _, _ = trained
    bad = _rewrite(path, tmp_path / "bad.pynn", replace={"pynn.json": payload})
    with pytest.raises(ValueError, match="load_model"):
        pynn.load_model(bad)


def test_missing_entries(trained, tmp_path):
    _, path, _, _ = trained
    for name in ("pynn.json", "weights/00001.npy", "optimizer/00000.npy"):
        bad = _rewrite(path, tmp_path / "missing.pynn", drop=(name,))
        with pytest.raises(ValueError, match="missing|not a pynn"):
            pynn.load_model(bad)


@pytest.mark.parametrize("class_name", ["Lambda_", "os.system", "__import__", "Functional_", ""])
def test_unknown_layer_class(trained, tmp_path, class_name):
    _, path, _, _ = trained
    doc = _doc(path)
    doc["model"]["layers"][2]["class_name"] = class_name
    bad = _rewrite(path, tmp_path / "cls.pynn", replace={"pynn.json": json.dumps(doc)})
    with pytest.raises(ValueError, match="Unknown layer class"):
        pynn.load_model(bad)


@pytest.mark.parametrize("mutation", [
    lambda d: d["model"].update(layers="dense"),
    lambda d: d["model"]["layers"].append([1, 2]),
    lambda d: d["model"]["layers"][1]["config"].update(filters="many"),
    lambda d: d["model"]["layers"][1]["config"].update(kernel_size=[0, 3]),
    lambda d: d["model"]["layers"][1]["config"].update(evil="x"),
    lambda d: d["model"]["layers"][1]["config"].update(dtype="object"),
    lambda d: d["model"]["layers"][0]["config"].update(shape="abc"),
    lambda d: d["model"]["layers"][1]["config"].update(kernel_initializer={"class_name": "X"}),
    lambda d: d.update(weights="all"),
    lambda d: d["compile"].update(optimizer={"class_name": "subprocess.Popen"}),
    lambda d: d["compile"].update(loss="no_such_loss"),
    lambda d: d["optimizer_state"].update(iterations="3"),
    lambda d: d["optimizer_state"].update(slots=["dense/kernel/momentum", 5]),
    lambda d: d.update(layer_state={"nope": {"offset": 1}}),
    lambda d: d.update(layer_state={"dropout": {"offset": -1}}),
], ids=["layers-not-list", "layer-not-object", "bad-filters", "zero-kernel", "unknown-arg",
        "object-dtype", "bad-input-shape", "unknown-initializer", "weights-not-list",
        "unknown-optimizer", "unknown-loss", "bad-iterations", "bad-slot-name",
        "state-unknown-layer", "state-negative-offset"])
def test_malformed_config(trained, tmp_path, mutation):
    _, path, _, _ = trained
    doc = _doc(path)
    for layer in doc["model"]["layers"]:
        if layer["class_name"] == "Dropout":
            doc.setdefault("layer_state", {})
            layer["config"]["name"] = "dropout"
            doc["layer_state"] = {"dropout": {"offset": 1}}
    mutation(doc)
    bad = _rewrite(path, tmp_path / "cfg.pynn", replace={"pynn.json": json.dumps(doc)})
    with pytest.raises(ValueError):
        pynn.load_model(bad)


class _Boom:
    """Unpickling this would create a marker file: proof that code ran."""

    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_object_array_never_runs(trained, tmp_path):
    _, path, _, _ = trained
    marker = tmp_path / "pwned"
    _Boom.marker = marker
    buf = io.BytesIO()
    np.save(buf, np.array([_Boom()], dtype=object), allow_pickle=True)
    for entry in ("weights/00000.npy", "optimizer/00000.npy"):
        bad = _rewrite(path, tmp_path / "pickle.pynn", replace={entry: buf.getvalue()})
        with pytest.raises(ValueError, match="not a valid .npy|numeric"):
            pynn.load_model(bad)
        assert not marker.exists()


@pytest.mark.parametrize("array", [np.zeros((2, 2), np.float32), np.array(["a", "b"]),
                                   np.zeros(3, dtype=[("a", "f4")]), np.array(1.0 + 2j)],
                         ids=["wrong-shape", "strings", "structured", "complex"])
def test_wrong_weight_arrays(trained, tmp_path, array):
    _, path, _, _ = trained
    buf = io.BytesIO()
    np.save(buf, array)
    bad = _rewrite(path, tmp_path / "shape.pynn", replace={"weights/00000.npy": buf.getvalue()})
    with pytest.raises(ValueError, match="shape|numeric|size"):
        pynn.load_model(bad)


def test_weight_count_mismatch(trained, tmp_path):
    _, path, _, _ = trained
    doc = _doc(path)
    doc["weights"] = doc["weights"][:-1]
    bad = _rewrite(path, tmp_path / "count.pynn", replace={"pynn.json": json.dumps(doc)})
    with pytest.raises(ValueError, match="holds 5 weights but model '.*' has 6"):
        pynn.load_model(bad)


def test_optimizer_slot_with_wrong_shape(trained, tmp_path):
    _, path, _, _ = trained
    buf = io.BytesIO()
    np.save(buf, np.zeros(7, np.float32))
    bad = _rewrite(path, tmp_path / "slot.pynn", replace={"optimizer/00000.npy": buf.getvalue()})
    with pytest.raises(ValueError, match="shape|size"):
        pynn.load_model(bad)


def _set_declared_size(data, name, size):
    """Patch the uncompressed size of entry ``name`` in both its local and central headers."""
    data = bytearray(data)
    encoded = name.encode()
    local = data.find(b"PK\x03\x04" + b"\x00" * 0)
    while local != -1:
        nlen = struct.unpack_from("<H", data, local + 26)[0]
        if bytes(data[local + 30:local + 30 + nlen]) == encoded:
            struct.pack_into("<I", data, local + 22, size)
        local = data.find(b"PK\x03\x04", local + 4)
    central = data.find(b"PK\x01\x02")
    while central != -1:
        nlen = struct.unpack_from("<H", data, central + 28)[0]
        if bytes(data[central + 46:central + 46 + nlen]) == encoded:
            struct.pack_into("<I", data, central + 24, size)
        central = data.find(b"PK\x01\x02", central + 4)
    return bytes(data)


@pytest.mark.parametrize("entry", ["pynn.json", "weights/00000.npy", "optimizer/00001.npy"])
def test_entry_declaring_huge_size(trained, tmp_path, entry):
    _, path, _, _ = trained
    bad = tmp_path / "huge.pynn"
    bad.write_bytes(_set_declared_size(path.read_bytes(), entry, 0xFFFFFFF0))
    with pytest.raises(ValueError, match="declares|damaged|limit"):
        pynn.load_model(bad)


def test_config_declaring_huge_layers(trained, tmp_path):
    """A few hundred bytes of JSON must not allocate gigabytes before the check fails."""
    _, path, _, _ = trained
    for units in (40_000, 10**9):
        doc = _doc(path)
        dense = next(l for l in doc["model"]["layers"] if l["class_name"] == "Dense")
        dense["config"]["units"] = units
        bad = _rewrite(path, tmp_path / "big.pynn", replace={"pynn.json": json.dumps(doc)})
        with pytest.raises(ValueError):
            pynn.load_model(bad)


def test_zip_bomb_entry_is_refused_before_inflating(trained, tmp_path, monkeypatch):
    _, path, _, _ = trained
    monkeypatch.setattr(saving, "MAX_JSON_BYTES", 1000)
    doc = _doc(path)
    doc["padding"] = " " * 5000
    bad = tmp_path / "bomb.pynn"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = json.dumps(doc) if info.filename == "pynn.json" else src.read(info.filename)
            dst.writestr(info.filename, data)
    with pytest.raises(ValueError, match="over the limit"):
        pynn.load_model(bad)


# -- bounded memory: zip bombs, hostile headers, deep JSON (issue 11.3, 11.4) -------------------
def _npy_header(shape, dtype="<f4"):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": dtype, "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


def _zero_bomb(path, units=4096, inputs=2048):
    """A Dense(inputs -> units) model whose float32 zeros are deflated: ~32 MiB in ~32 KiB."""
    model = pynn.Sequential([layers.Input((inputs,)), layers.Dense(units)])
    model.save(path)
    doc = _doc(path)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("pynn.json", json.dumps(doc))
        for i, shape in enumerate([(inputs, units), (units,)]):
            with zf.open(f"weights/{i:05d}.npy", "w", force_zip64=True) as fh:
                fh.write(_npy_header(shape))
                zeros = bytes(1 << 20)
                left = math.prod(shape) * 4
                while left:
                    fh.write(zeros[:min(left, len(zeros))])
                    left -= min(left, len(zeros))
    return path


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_deflated_zeros_are_refused_before_inflating(tmp_path):
    """Before: the sizes the zip declared were believed, and 32 KiB became 64 MiB."""
    bomb = _zero_bomb(tmp_path / "bomb.pynn")
    assert bomb.stat().st_size < 200_000

    def load():
        with pytest.raises(ValueError, match=r"bomb.pynn: 'weights/0000\d.npy': .*ratio .*"
                                             r"max_compression_ratio"):
            pynn.load_model(bomb)

    _, peak = _peak_bytes(load)
    assert peak < 2 << 20


def test_raised_ratio_loads_with_one_copy_of_the_weights(tmp_path):
    bomb = _zero_bomb(tmp_path / "bomb.pynn")
    model, peak = _peak_bytes(lambda: pynn.load_model(bomb, max_compression_ratio=2000))
    assert model.count_params() == 2048 * 4096 + 4096
    assert not np.any(model.layers[0].kernel.value)
    nbytes = (2048 * 4096 + 4096) * 4
    assert peak < nbytes * 1.25  # streamed into place: no second copy, no bytes object
    with pytest.raises(ValueError, match=">= 1"):
        pynn.load_model(bomb, max_compression_ratio=0)


def test_deflated_real_weights_still_load(trained, tmp_path):
    model, path, x, _ = trained
    deflated = tmp_path / "deflated.pynn"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(deflated, "w",
                                                       zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    np.testing.assert_array_equal(pynn.load_model(deflated).predict(x), model.predict(x))


@pytest.mark.parametrize("entry", ["weights/00000.npy", "optimizer/00000.npy"])
def test_npy_header_declaring_huge_shape_is_refused_before_allocating(trained, tmp_path, entry):
    """8 bytes of data under a header declaring 10**12 values: NumPy alone would ask for
    terabytes (MemoryError) before pynn could compare the shape."""
    _, path, _, _ = trained
    data = _npy_header((10**12,), "<f8") + bytes(8)
    bad = _rewrite(path, tmp_path / "huge.pynn", replace={entry: data})
    with pytest.raises(ValueError, match=rf"huge.pynn: '{entry}': .*"):
        pynn.load_model(bad)


@pytest.mark.parametrize("data", [
    _npy_header((3, 3, 1, 3)) + bytes(10),                     # header shape right, data short
    _npy_header((3, 3, 1, 3), "|O") + bytes(27 * 8),           # object dtype
    _npy_header((3, 3, 1, 3), "<c8") + bytes(27 * 8),          # complex
    b"\x93NUMPY\x03\x00" + bytes(200),                         # unknown version
    b"\x93NUMPY\x01\x00\xff\xff" + b"{" * 300,                 # header longer than the file
    _npy_header((3, 3, 1, 3)).replace(b"'shape'", b"'shap\xff'") + bytes(108),
], ids=["short-data", "object", "complex", "version-3", "long-header", "bad-header"])
def test_malformed_npy_members(trained, tmp_path, data):
    _, path, _, _ = trained
    bad = _rewrite(path, tmp_path / "npy.pynn", replace={"weights/00000.npy": data})
    with pytest.raises(ValueError, match=r"npy.pynn: 'weights/00000.npy': "):
        pynn.load_model(bad)


def test_fortran_order_and_other_dtypes_load(trained, tmp_path):
    model, path, x, _ = trained
    kernel = model.layers[-1].kernel.value
    buf = io.BytesIO()
    np.save(buf, np.asfortranarray(kernel.astype(">f8")))
    good = _rewrite(path, tmp_path / "f.pynn", replace={"weights/00004.npy": buf.getvalue()})
    np.testing.assert_array_equal(pynn.load_model(good).predict(x), model.predict(x))


@pytest.mark.parametrize("depth", [100_000, 200])
def test_deeply_nested_json(trained, tmp_path, depth):
    _, path, _, _ = trained
    doc = _doc(path)
    nested = "[" * depth + "]" * depth
    payload = json.dumps(doc)[:-1] + f', "extra": {nested}}}'
    bad = _rewrite(path, tmp_path / "deep.pynn", replace={"pynn.json": payload})
    with pytest.raises(ValueError, match=r"deep.pynn: 'pynn.json': nested deeper than"):
        pynn.load_model(bad)


def test_json_of_many_small_containers_is_refused_before_parsing(trained, tmp_path):
    """~1 MiB of "[]," would parse into ~25 MiB of lists; the cap is checked on the bytes."""
    _, path, _, _ = trained
    doc = _doc(path)
    payload = json.dumps(doc)[:-1] + ', "extra": [' + "[]," * 300_000 + "[]]}"
    bad = _rewrite(path, tmp_path / "many.pynn", replace={"pynn.json": payload})
    with pytest.raises(ValueError, match=r"many.pynn: 'pynn.json': holds 300\d+ lists and "
                                         r"objects, over the limit"):
        pynn.load_model(bad)


def test_config_errors_name_file_and_member(trained, tmp_path):
    _, path, _, _ = trained
    doc = _doc(path)
    doc["model"]["layers"][1]["config"]["strides"] = [2**64, 1]
    bad = _rewrite(path, tmp_path / "cfg.pynn", replace={"pynn.json": json.dumps(doc)})
    with pytest.raises(ValueError, match=r"cfg.pynn: 'pynn.json': invalid model config"):
        pynn.load_model(bad)


# -- load_weights context (issue 11.7) ----------------------------------------------------------
def test_load_weights_errors_name_file_layer_and_shapes(trained, tmp_path):
    _, path, _, _ = trained
    other = pynn.Sequential([layers.Input((6, 6, 1)),
                             layers.Conv2D(3, 3, padding="same", name="c"),
                             layers.MaxPooling2D(2), layers.Flatten(),
                             layers.Dense(5, name="d1"), layers.Dropout(0.25),
                             layers.Dense(3, name="d2")])
    before = other.get_weights()
    with pytest.raises(ValueError) as info:
        other.load_weights(path)
    message = str(info.value)
    assert message.startswith(f"load_weights: {path}: 'weights/00002.npy': ")
    assert "layer 'd1' weight 'd1/kernel', saved as 'dense_" in message
    assert "has shape (27, 8), the model expects (27, 5)" in message
    for a, b in zip(other.get_weights(), before):  # nothing half-loaded
        np.testing.assert_array_equal(a, b)

    fewer = pynn.Sequential([layers.Input((6, 6, 1)), layers.Flatten(), layers.Dense(3)])
    with pytest.raises(ValueError, match=r"load_weights: .*'pynn.json': holds 6 weights but "
                                         r"model '.*' has 2 \(saved: \[conv2d"):
        fewer.load_weights(path)

    unbuilt = pynn.Sequential([layers.Dense(3)])
    doc = _doc(path)
    doc["built_input_shape"] = [None, 0]
    bad = _rewrite(path, tmp_path / "shape.pynn", replace={"pynn.json": json.dumps(doc)})
    with pytest.raises(ValueError, match=r"load_weights: .*shape.pynn: 'pynn.json': "):
        unbuilt.load_weights(bad)


# -- temporary files of killed saves (issue 11.7) -----------------------------------------------
def _pynn_env():
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(pynn.__file__))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


_KILLED_SAVE = """
import os, signal, sys
import pynn
model = pynn.Sequential([pynn.layers.Input((3,)), pynn.layers.Dense(2)])
os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)  # dies mid-save
model.save(sys.argv[1])
"""


def test_next_save_removes_temp_files_of_killed_saves(tmp_path):
    target = tmp_path / "model.pynn"
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(target)],
                              env=_pynn_env(), capture_output=True)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
        # The second killed save already removed the first one's temporary file.
        assert not target.exists() and len(list(tmp_path.iterdir())) == 1

    host = saving._host()
    alive = f".pynn-save.{os.getppid()}.{host}.0123456789ab.tmp"   # a save in progress
    remote = ".pynn-save.1.elsewhere.0123456789ab.tmp"             # another host's, recent
    old = ".pynn-save.1.elsewhere.ba9876543210.tmp"                # another host's, 2 days old
    keep = [alive, remote, "notes.tmp", ".pynn-save.txt", "model.pynn.tmp"]
    for name in keep + [old]:
        (tmp_path / name).write_bytes(b"x")
    os.utime(tmp_path / old, (time.time() - 2 * 86400,) * 2)

    pynn.Sequential([layers.Input((3,)), layers.Dense(2)]).save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep + ["model.pynn"])
    pynn.load_model(target)


# -- resume in a fresh process (issue 11.8) -----------------------------------------------------
_RESUME = """
import sys
import numpy as np
import pynn
from pynn import layers

def model():
    m = pynn.Sequential([layers.Input((6,)), layers.Dense(16, activation="relu"),
                         layers.Dropout(0.3), layers.Dense(3, activation="softmax")])
    m.compile(pynn.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    return m

rng = np.random.default_rng(0)
x = rng.standard_normal((50, 6)).astype(np.float32)
y = rng.integers(0, 3, 50)
pynn.set_num_threads(1)
mode, path, out = sys.argv[1:]
if mode == "first":
    pynn.utils.set_random_seed(7)
    straight = model()
    straight.fit(x, y, batch_size=8, epochs=3, shuffle=True, verbose=0)
    np.savez(out, *straight.get_weights())
    pynn.utils.set_random_seed(7)
    half = model()
    half.fit(x, y, batch_size=8, epochs=1, shuffle=True, verbose=0)
    half.save(path)
else:
    resumed = pynn.load_model(path)
    resumed.fit(x, y, batch_size=8, epochs=3, initial_epoch=1, shuffle=True, verbose=0)
    np.savez(out, *resumed.get_weights())
"""


def test_resume_in_a_fresh_process_is_bit_identical(tmp_path):
    """Shuffle order and dropout masks continue where the saved run stopped, even though the
    resuming process never drew from pynn's generator."""
    half = tmp_path / "half.pynn"
    for mode, out in (("first", "straight.npz"), ("resume", "resumed.npz")):
        proc = subprocess.run([sys.executable, "-c", _RESUME, mode, str(half),
                               str(tmp_path / out)], env=_pynn_env(), capture_output=True)
        assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    straight, resumed = np.load(tmp_path / "straight.npz"), np.load(tmp_path / "resumed.npz")
    assert len(straight.files) == len(resumed.files) == 4
    for name in straight.files:
        np.testing.assert_array_equal(resumed[name], straight[name])


def test_rng_state_is_validated(trained, tmp_path):
    model, path, x, y = trained
    model.fit(x, y, epochs=1, shuffle=True, verbose=0)
    model.save(path)
    assert _doc(path)["rng_state"]["shuffle"]["bit_generator"] == "PCG64"
    for state in ({"shuffle": {"bit_generator": "MT19937"}}, {"shuffle": 3}, {"other": {}},
                  {"shuffle": {"bit_generator": "PCG64", "state": {"state": -1, "inc": 1}}},
                  []):
        doc = _doc(path)
        doc["rng_state"] = state
        bad = _rewrite(path, tmp_path / "rng.pynn", replace={"pynn.json": json.dumps(doc)})
        with pytest.raises(ValueError, match=r"rng.pynn: 'pynn.json': "):
            pynn.load_model(bad)
