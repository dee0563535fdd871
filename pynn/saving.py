"""Model files: a zip of JSON and ``.npy`` arrays, never pickle.

Layout of ``model.pynn``::

    pynn.json            {"format": "pynn", "version": 1, "model": config, "compile": {...},
                          "weights": [names], "optimizer_state": {"iterations", "slots": [names]}}
    weights/00000.npy    one array per weight, in get_weights() order
    optimizer/00000.npy  optimizer slots, named in pynn.json

Loading trusts nothing in the file: classes are looked up in fixed registries (never imported
by name), arrays are read with ``allow_pickle=False``, every size and shape is checked before use,
and any defect becomes a ValueError that says what is wrong. Saving writes a temporary file in the
same directory and renames it over the target, so a crash mid-save leaves the old file intact.
"""

import io
import json
import math
import os
import tempfile
import zipfile

import numpy as np

FORMAT = "pynn"
VERSION = 1
MAX_JSON_BYTES = 16 << 20
# An uncompressed entry larger than this is refused: a small hostile zip cannot make pynn
# allocate unbounded memory.
MAX_ARRAY_BYTES = 8 << 30
NPY_HEADER_SLACK = 4096


def _npy_bytes(array):
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _atomic_write_zip(filepath, entries):
    filepath = os.fspath(filepath)
    directory = os.path.dirname(os.path.abspath(filepath))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".pynn-", suffix=".tmp", dir=directory)
    try:
        # mkstemp creates the file 0600; give the model file the usual umask-based mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as fh:
            with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as zf:
                for name, data in entries:
                    zf.writestr(name, data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, filepath)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _model_entries(model, include_optimizer=True):
    from pynn import losses, metrics, optimizers

    weights = model.get_weights()
    names = [v.path for v in model.weights]
    doc = {"format": FORMAT, "version": VERSION, "model": model.get_config(),
           "built_input_shape": list(model.input_shape) if model.built else None,
           "weights": names,
           "layer_state": {layer.name: layer.runtime_state() for layer in model.layers
                           if layer.runtime_state()}}
    entries = [(f"weights/{i:05d}.npy", _npy_bytes(w)) for i, w in enumerate(weights)]
    if include_optimizer and model.compiled:
        doc["compile"] = {
            "optimizer": optimizers.serialize(model.optimizer),
            "loss": losses.serialize(model.loss),
            "metrics": [m if isinstance(m, str) else metrics.serialize(m)
                        for m in model._metric_specs],
        }
        state = model.optimizer.get_state()
        slot_names = sorted(state["slots"])
        doc["optimizer_state"] = {"iterations": int(state["iterations"]), "slots": slot_names}
        entries += [(f"optimizer/{i:05d}.npy", _npy_bytes(state["slots"][k]))
                    for i, k in enumerate(slot_names)]
    return [("pynn.json", json.dumps(doc, indent=1).encode())] + entries


def save_model(model, filepath, include_optimizer=True):
    if not model.built:
        raise ValueError(f"save: model '{model.name}' is not built yet; train it or give it an "
                         f"Input first")
    _atomic_write_zip(filepath, _model_entries(model, include_optimizer))


def save_weights(model, filepath):
    save_model(model, filepath, include_optimizer=False)


class _Archive:
    """Read-only, validating view of a pynn zip."""

    def __init__(self, filepath):
        self.path = os.fspath(filepath)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"load_model: no such file: {self.path}")
        try:
            self.zf = zipfile.ZipFile(self.path, "r")
            self.infos = {info.filename: info for info in self.zf.infolist()}
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise ValueError(f"load_model: {self.path} is not a pynn model file (not a valid "
                             f"zip archive: {exc})") from None
        self.doc = self._json("pynn.json")
        if not isinstance(self.doc, dict) or self.doc.get("format") != FORMAT:
            raise ValueError(f"load_model: {self.path} is not a pynn model file")
        if self.doc.get("version") != VERSION:
            raise ValueError(f"load_model: {self.path} has format version "
                             f"{self.doc.get('version')!r}; this pynn reads version {VERSION}")

    def _read(self, name, limit):
        info = self.infos.get(name)
        if info is None:
            raise ValueError(f"load_model: {self.path} is truncated or damaged: '{name}' is "
                             f"missing")
        if info.file_size > limit:
            raise ValueError(f"load_model: '{name}' in {self.path} declares {info.file_size} "
                             f"bytes, over the limit of {limit}")
        try:
            data = self.zf.read(name)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, zipfile.LargeZipFile) as exc:
            raise ValueError(f"load_model: {self.path} is damaged: cannot read '{name}' "
                             f"({exc})") from None
        if len(data) != info.file_size:
            raise ValueError(f"load_model: {self.path} is damaged: '{name}' has the wrong size")
        return data

    def _json(self, name):
        try:
            return json.loads(self._read(name, MAX_JSON_BYTES).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"load_model: {self.path}: '{name}' is not valid JSON "
                             f"({exc})") from None

    def array(self, name, shape=None):
        """The numeric array stored as ``name``; with ``shape``, its declared size must fit
        that shape before a byte is read, and the array must have exactly that shape."""
        limit = MAX_ARRAY_BYTES
        if shape is not None:
            # 8 bytes per value (the widest dtype pynn saves) plus the .npy header.
            limit = min(limit, 8 * math.prod(shape) + NPY_HEADER_SLACK)
        data = self._read(name, limit)
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise ValueError(f"load_model: {self.path}: '{name}' is not a valid .npy array "
                             f"({exc})") from None
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
            raise ValueError(f"load_model: {self.path}: '{name}' must hold a numeric array")
        if shape is not None and tuple(arr.shape) != tuple(shape):
            raise ValueError(f"load_model: {self.path}: '{name}' has shape {arr.shape}, the "
                             f"model expects {tuple(shape)}")
        return arr

    def close(self):
        self.zf.close()


def _expect(cond, path, what):
    if not cond:
        raise ValueError(f"load_model: {path}: malformed file ({what})")


def _build_model(archive):
    from pynn.layers.base import zero_init
    from pynn.models import Sequential

    doc = archive.doc
    config = doc.get("model")
    _expect(isinstance(config, dict) and isinstance(config.get("layers"), list), archive.path,
            "'model' must be an object with a 'layers' list")
    for spec in config["layers"]:
        _expect(isinstance(spec, dict) and isinstance(spec.get("config", {}), dict),
                archive.path, "each layer must be an object with a 'config' object")
    try:
        with zero_init():
            model = Sequential.from_config(config)
            shape = doc.get("built_input_shape")
            if shape is not None and not model.built:
                _expect(isinstance(shape, list), archive.path,
                        "'built_input_shape' must be a list")
                model.build(tuple(shape))
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        if str(exc).startswith("load_model:"):
            raise
        raise ValueError(f"load_model: {archive.path}: invalid model config ({exc})") from None
    except MemoryError:
        raise ValueError(f"load_model: {archive.path}: the model config asks for more memory "
                         f"than there is") from None
    _check_weight_budget(model, archive)
    return model


def _check_weight_budget(model, archive):
    """The weights the config declares must match the bytes the archive holds: a tiny file
    cannot make load_model allocate gigabytes that the file does not back."""
    stored = sum(info.file_size for name, info in archive.infos.items()
                 if name.startswith("weights/"))
    values = sum(math.prod(v.shape) for v in model.weights)
    if values > stored:  # every stored value takes at least one byte
        raise ValueError(f"load_model: {archive.path}: the model config declares {values} "
                         f"weight values but the file stores only {stored} bytes of weights")


def _load_weights_into(model, archive):
    names = archive.doc.get("weights")
    _expect(isinstance(names, list), archive.path, "'weights' must be a list")
    variables = model.weights
    if len(names) != len(variables):
        raise ValueError(f"load_model: {archive.path} holds {len(names)} weights but the model "
                         f"has {len(variables)}")
    arrays = [archive.array(f"weights/{i:05d}.npy", v.shape) for i, v in enumerate(variables)]
    model.set_weights(arrays)


def _load_layer_state(model, archive):
    states = archive.doc.get("layer_state", {})
    _expect(isinstance(states, dict), archive.path, "'layer_state' must be an object")
    by_name = {layer.name: layer for layer in model.layers}
    for name, state in states.items():
        _expect(name in by_name and isinstance(state, dict), archive.path,
                f"'layer_state' names an unknown layer {name!r}")
        by_name[name].set_runtime_state(state)


def load_model(filepath, compile=True):
    """Rebuild a model saved by ``model.save``; with its optimizer state when compiled, so
    ``fit`` resumes where it stopped."""
    from pynn import losses, metrics, optimizers

    archive = _Archive(filepath)
    try:
        model = _build_model(archive)
        _load_weights_into(model, archive)
        _load_layer_state(model, archive)
        spec = archive.doc.get("compile")
        if compile and spec is not None:
            _expect(isinstance(spec, dict), archive.path, "'compile' must be an object")
            try:
                metric_specs = [m if isinstance(m, str) else metrics.get(m)
                                for m in spec.get("metrics", [])]
                model.compile(optimizer=optimizers.get(spec["optimizer"]),
                              loss=losses.get(spec["loss"]), metrics=metric_specs)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                raise ValueError(f"load_model: {archive.path}: invalid compile config "
                                 f"({exc})") from None
            state = archive.doc.get("optimizer_state")
            if state is not None:
                _expect(isinstance(state, dict) and isinstance(state.get("slots"), list)
                        and isinstance(state.get("iterations"), int), archive.path,
                        "'optimizer_state' must hold 'iterations' and 'slots'")
                shapes = {v.path: v.shape for v in model.weights}
                slots = {}
                for i, name in enumerate(state["slots"]):
                    _expect(isinstance(name, str), archive.path, "slot names must be strings")
                    owner = shapes.get(name.rsplit("/", 1)[0])
                    if owner is None:
                        raise ValueError(f"load_model: {archive.path}: optimizer slot "
                                         f"{name!r} names no weight of the model")
                    slots[name] = archive.array(f"optimizer/{i:05d}.npy", owner)
                model.optimizer.set_state({"iterations": state["iterations"], "slots": slots},
                                          model.trainable_weights)
        return model
    finally:
        archive.close()


def load_weights(model, filepath):
    archive = _Archive(filepath)
    try:
        if not model.built:
            shape = archive.doc.get("built_input_shape")
            _expect(isinstance(shape, list), archive.path, "'built_input_shape' is missing")
            model.build(tuple(shape))
        _load_weights_into(model, archive)  # by position, as Keras: layer names may differ
    finally:
        archive.close()
