"""Model files: a zip of JSON and ``.npy`` arrays, never pickle.

Layout of ``model.pynn``::

    pynn.json            {"format": "pynn", "version": 1, "model_class": "Sequential",
                          "model": config, "compile": {...}, "weights": [names],
                          "optimizer_state": {"iterations", "slots": [names]},
                          "layer_state": {...}, "rng_state": {...}}
    weights/00000.npy    one array per weight, in get_weights() order
    optimizer/00000.npy  optimizer slots, named in pynn.json

Loading trusts nothing in the file: classes are looked up in fixed registries (never imported
by name), ``.npy`` headers are parsed by pynn (``numpy.lib.format``, literal values only) and
object dtypes refused, so no pickle is ever loaded; any defect becomes a ValueError that names
the file and the member. Memory is bounded before it is spent:

- ``pynn.json`` is read up to ``MAX_JSON_BYTES``, with at most ``MAX_JSON_CONTAINERS`` lists
  and objects nested at most ``MAX_JSON_DEPTH`` deep;
- the array members together may inflate to at most ``max_compression_ratio`` times the bytes
  they occupy in the zip (``MAX_COMPRESSION_RATIO``; archives whose arrays inflate to less than
  ``RATIO_FREE_BYTES`` are exempt). pynn writes its files uncompressed (ratio 1) and deflated
  real weights stay near 1.1; only files of mostly zeros, zip bombs, go past the limit;
- each ``.npy`` member's declared size is compared with the shape the model config gives it
  before it is opened, its header is parsed and checked (shape, dtype) before anything is
  allocated, and its data is streamed straight into the one array of that shape.

Saving writes a temporary file in the same directory and renames it over the target, so a
crash mid-save leaves the old file intact. The temporary file's name (``TEMP_NAME``) holds the
host and process id of its writer: the next save in that directory deletes those whose writer
is gone.
"""

import io
import json
import math
import os
import re
import time
import zipfile
import zlib

import numpy as np
from numpy.lib import format as npy_format

from pynn import backend
from pynn.layers.base import zero_init
from pynn.variables import bump_version

FORMAT = "pynn"
VERSION = 1
# pynn.json: a 2,000-layer model writes ~1 MiB holding ~11,000 lists and objects. Parsed, JSON
# takes up to ~12 times its size (short strings) or ~25 times (empty lists), so the number of
# containers is capped too: at these limits a hostile pynn.json costs at most ~100 MiB.
MAX_JSON_BYTES = 8 << 20
MAX_JSON_CONTAINERS = 1 << 18
# Deeper nesting than any config pynn writes (about 5 levels) is refused before it is walked.
MAX_JSON_DEPTH = 64
# One array larger than this is refused.
MAX_ARRAY_BYTES = 8 << 30
# Uncompressed / compressed bytes of the array members, over the whole archive. Random float32
# deflates to ~1.08, a 90%-pruned layer to ~8; a deflated run of zeros reaches ~1000.
MAX_COMPRESSION_RATIO = 32
# Archives whose arrays inflate to at most this many bytes skip the ratio check (a small,
# freshly initialized model's zero biases compress far better than 32:1).
RATIO_FREE_BYTES = 16 << 20
# A .npy header pynn writes is 64-128 bytes; numpy caps a version-1 header at 64 KiB.
NPY_HEADER_SLACK = 4096
NPY_MIN_HEADER = 10
READ_CHUNK = 1 << 20
# .pynn-save.<pid>.<host>.<random>.tmp: a name only pynn's save() makes.
TEMP_NAME = re.compile(r"^\.pynn-save\.(?P<pid>\d+)\.(?P<host>[A-Za-z0-9_-]{1,64})\."
                       r"[0-9a-f]{8,32}\.tmp$")
# A temporary file of another host (whose writer pynn cannot probe) is stale after this long.
STALE_TEMP_SECONDS = 24 * 3600

# The ways a damaged member fails while it is inflated and read.
_READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, OSError, EOFError,
                ValueError, NotImplementedError)

# Model classes a file may name, filled by pynn.models (saving never imports models).
MODEL_CLASSES = {}


def register_model_class(cls):
    """Let files name ``cls`` (a class with ``from_config``) as their ``model_class``."""
    MODEL_CLASSES[cls.__name__] = cls
    return cls


# -- custom objects (issue 13): the registry lives in pynn._registry (layers import it) -----
from pynn._registry import (  # noqa: E402,F401
    _REGISTERED, _custom_scopes, custom_object_scope, get_registered_name, lookup_custom,
    lookup_serializable, register_serializable, serializable_name,
)


def _npy_bytes(array):
    buf = io.BytesIO()
    # ascontiguousarray makes a 0-d weight (Normalization's count) 1-d: keep the shape.
    np.save(buf, np.ascontiguousarray(array).reshape(np.shape(array)), allow_pickle=False)
    return buf.getvalue()


# -- saving -----------------------------------------------------------------------------------
def _host():
    import socket

    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64] or "host"


def _writer_alive(pid):
    if pid == os.getpid() or os.name != "posix":  # Windows' os.kill would end the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's process (or unprobeable): leave its file alone
    return True


def _remove_stale_temps(directory):
    """Delete temporary files that a killed save left in ``directory``: those of this host
    whose process is gone, and any older than STALE_TEMP_SECONDS."""
    host, now = _host(), time.time()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        match = TEMP_NAME.match(entry.name)
        if match is None:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            dead = match["host"] == host and not _writer_alive(int(match["pid"]))
            if dead or now - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMP_SECONDS:
                os.unlink(entry.path)
        except OSError:
            pass  # raced with another cleaner or not ours to delete


# -- compression (issue 18): a member that is mostly zero bytes (a pruned kernel) is stored
# deflated, so the file holds little more than its nonzeros; the rest stay stored, as before.
# The loader reads either, and its inflation limit (MAX_COMPRESSION_RATIO) still applies.
def _member_compression(data):
    return zipfile.ZIP_DEFLATED if data.count(0) > len(data) // 2 else zipfile.ZIP_STORED


def _atomic_write_zip(filepath, entries):
    filepath = os.fspath(filepath)
    directory = os.path.dirname(os.path.abspath(filepath))
    os.makedirs(directory, exist_ok=True)
    _remove_stale_temps(directory)
    import secrets

    tmp = os.path.join(directory, f".pynn-save.{os.getpid()}.{_host()}.{secrets.token_hex(6)}.tmp")
    # O_EXCL: never reuse a name; mode 0o666 gives the model file the usual umask-based mode.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as zf:
                for name, data in entries:
                    zf.writestr(name, data, compress_type=_member_compression(data))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, filepath)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# -- float16 weight storage (issue 18, branch qbreadth) --
WEIGHTS_DTYPES = (None, "float32", "float16")
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def _check_weights_dtype(weights_dtype, verb):
    if weights_dtype not in WEIGHTS_DTYPES:
        raise ValueError(f"{verb}: weights_dtype must be one of {WEIGHTS_DTYPES}, got "
                         f"{weights_dtype!r}")


def _stored_weights(weights, weights_dtype):
    """The arrays to write: with "float16", float weights halve (loading casts them back to
    the layer's float32); integer weights (int8 kernels) stay, and so does a float weight
    with a value past float16's range (a large moving variance would load as inf)."""
    if weights_dtype != "float16":
        return weights
    return [w.astype(np.float16) if w.dtype.kind == "f" and w.dtype.itemsize > 2
            and (not w.size or float(np.abs(w).max()) <= _FLOAT16_MAX) else w
            for w in weights]
# -- end float16 weight storage --


def _model_entries(model, include_optimizer=True, weights_only=False, weights_dtype=None):
    weights = _stored_weights(model.get_weights(), weights_dtype)
    names = [v.path for v in model.weights]
    model_class = type(model).__name__
    if not weights_only and (model_class not in MODEL_CLASSES
                             or MODEL_CLASSES[model_class] is not type(model)):
        # A subclassed model is rebuilt by its registered class (a weights file is loaded
        # into a model the caller built, so it needs none).
        model_class = serializable_name(type(model), "model class")
    doc = {"format": FORMAT, "version": VERSION, "model_class": model_class,
           "model": model.get_config(),
           "built_input_shape": list(model.input_shape) if model.built else None,
           "weights": names,
           "layer_state": {layer.name: layer.runtime_state() for layer in model.layers
                           if layer.runtime_state()},
           "rng_state": model.rng_state()}
    entries = [(f"weights/{i:05d}.npy", _npy_bytes(w)) for i, w in enumerate(weights)]
    if include_optimizer and model.compiled:
        doc["compile"] = model._compile_config()
        state = model.optimizer.get_state()
        slot_names = sorted(state["slots"])
        doc["optimizer_state"] = {"iterations": int(state["iterations"]), "slots": slot_names}
        entries += [(f"optimizer/{i:05d}.npy", _npy_bytes(state["slots"][k]))
                    for i, k in enumerate(slot_names)]
    return [("pynn.json", json.dumps(doc, indent=1).encode())] + entries


# -- file formats by suffix --
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
# Keras files' readers and writers, registered by pynn.interop.keras_files (pynn's __init__
# puts stand-ins here that import it on first use): it builds models, so saving must not
# import it.
KERAS_IO = {}
# ONNX files in: pynn.onnx_import's load, put here by pynn/__init__ as KERAS_IO's readers are
# (saving importing it would close an import cycle through pynn.models)
ONNX_IO = {}


def _keras_format(filepath, verb):
    """The Keras suffix of ``filepath`` (None for a .pynn file); any other suffix is an error,
    so a name never silently gets a format it does not say."""
    name = os.fspath(filepath).lower()
    if name.endswith(".pynn"):
        return None
    for suffix in KERAS_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise ValueError(f"{verb}: {os.fspath(filepath)!r}: the suffix decides the format: '.pynn' "
                     f"(pynn's own, with the optimizer state), '.keras' (Keras 3) or '.h5' "
                     f"(Keras weights, and Keras 2 models to load)")


def save_model(model, filepath, include_optimizer=True, weights_dtype=None):
    suffix = _keras_format(filepath, "save")
    _check_weights_dtype(weights_dtype, "save")
    if suffix is not None and weights_dtype == "float16":
        raise ValueError(f"save: weights_dtype='float16' is a .pynn option, got "
                         f"{os.fspath(filepath)!r}")
    if suffix is not None:
        return KERAS_IO["save" if suffix == ".keras" else "save_h5"](model, filepath)
    if not model.built:
        raise ValueError(f"save: model '{model.name}' is not built yet; train it or give it an "
                         f"Input first")
    _atomic_write_zip(filepath, _model_entries(model, include_optimizer,
                                               weights_dtype=weights_dtype))


def save_weights(model, filepath):
    suffix = _keras_format(filepath, "save_weights")
    if suffix is not None:
        if suffix == ".keras":
            raise ValueError(f"save_weights: Keras weights files end in '.weights.h5', got "
                             f"{filepath!r}")
        return KERAS_IO["save_weights"](model, filepath)
    if not model.built:
        raise ValueError(f"save_weights: model '{model.name}' is not built yet")
    _atomic_write_zip(filepath, _model_entries(model, include_optimizer=False,
                                               weights_only=True))


# -- loading ----------------------------------------------------------------------------------
def _json_depth(value):
    """Nesting depth of a parsed JSON value, without recursion."""
    depth, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            depth = max(depth, level)
            if depth > MAX_JSON_DEPTH:
                return depth
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return depth


class _Archive:
    """Read-only, validating view of a pynn zip. ``verb`` (load_model, load_weights) starts
    every message."""

    def __init__(self, filepath, verb="load_model", max_compression_ratio=None):
        self.path = os.fspath(filepath)
        self.verb = verb
        self.ratio = MAX_COMPRESSION_RATIO if max_compression_ratio is None \
            else max_compression_ratio
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) \
                or not self.ratio >= 1:
            raise ValueError(f"{verb}: max_compression_ratio must be a number >= 1, got "
                             f"{max_compression_ratio!r}")
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"{verb}: no such file: {self.path}")
        try:
            self.zf = zipfile.ZipFile(self.path, "r")
            self.infos = {info.filename: info for info in self.zf.infolist()}
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
            raise ValueError(f"{verb}: {self.path} is not a pynn model file (not a valid zip "
                             f"archive: {exc})") from None
        try:
            self.doc = self._json("pynn.json")
            if not isinstance(self.doc, dict) or self.doc.get("format") != FORMAT:
                raise ValueError(f"{verb}: {self.path} is not a pynn model file ('pynn.json' "
                                 f"does not say format 'pynn')")
            if self.doc.get("version") != VERSION:
                raise ValueError(f"{verb}: {self.path}: 'pynn.json' has format version "
                                 f"{self.doc.get('version')!r}; this pynn reads version "
                                 f"{VERSION}")
            self._check_compression()
        except BaseException:
            self.zf.close()
            raise

    def fail(self, member, what):
        """The ValueError for a defect of ``member``."""
        return ValueError(f"{self.verb}: {self.path}: '{member}': {what}")

    def expect(self, cond, what, member="pynn.json"):
        if not cond:
            raise self.fail(member, f"malformed file ({what})")

    def _info(self, name):
        info = self.infos.get(name)
        if info is None:
            raise self.fail(name, "missing: the file is truncated or damaged")
        return info

    def _check_compression(self):
        """The array members may not inflate past ``ratio`` times their stored bytes."""
        arrays = [info for name, info in self.infos.items()
                  if name.startswith(("weights/", "optimizer/"))]
        inflated = sum(info.file_size for info in arrays)
        stored = sum(info.compress_size for info in arrays)
        if inflated > max(self.ratio * stored, RATIO_FREE_BYTES):
            worst = max(arrays, key=lambda i: i.file_size / max(i.compress_size, 1))
            raise self.fail(worst.filename,
                            f"the arrays declare {inflated} bytes compressed into {stored} "
                            f"(ratio {inflated / max(stored, 1):.0f}, this member "
                            f"{worst.file_size / max(worst.compress_size, 1):.0f}), over the "
                            f"limit of {self.ratio}: not real weights (a zip bomb?). A file "
                            f"you trust loads with max_compression_ratio=<higher>")

    def _open(self, name):
        info = self._info(name)
        try:
            return self.zf.open(info)
        except _READ_ERRORS + (RuntimeError,) as exc:  # RuntimeError: an encrypted member
            raise self.fail(name, f"cannot be read ({exc})") from None

    def _read(self, name, limit):
        info = self._info(name)
        if info.file_size > limit:
            raise self.fail(name, f"declares {info.file_size} bytes, over the limit of {limit}")
        try:
            with self._open(name) as fh:
                data = fh.read(limit + 1)
        except _READ_ERRORS as exc:
            if str(exc).startswith(f"{self.verb}:"):
                raise
            raise self.fail(name, f"damaged, cannot be read ({exc})") from None
        if len(data) != info.file_size:
            raise self.fail(name, "damaged: its data does not have the size it declares")
        return data

    def _json(self, name):
        data = self._read(name, MAX_JSON_BYTES)
        containers = data.count(b"[") + data.count(b"{")  # an upper bound: brackets in strings
        if containers > MAX_JSON_CONTAINERS:
            raise self.fail(name, f"holds {containers} lists and objects, over the limit of "
                                  f"{MAX_JSON_CONTAINERS}")
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, int digit limit
            if str(exc).startswith(f"{self.verb}:"):
                raise
            raise self.fail(name, f"not valid JSON ({exc})") from None
        except RecursionError:
            raise self.fail(name, f"nested deeper than {MAX_JSON_DEPTH} levels") from None
        if _json_depth(doc) > MAX_JSON_DEPTH:
            raise self.fail(name, f"nested deeper than {MAX_JSON_DEPTH} levels")
        return doc

    def array(self, name, shape, owner=None):
        """The numeric array stored as ``name``, which must have exactly ``shape``: the
        member's declared size is checked against ``shape`` before it is opened, its .npy
        header before anything is allocated. ``owner`` (a weight's path) goes into messages."""
        shape = tuple(shape)
        what = f"(for {owner}) " if owner else ""
        info = self._info(name)
        values = math.prod(shape)
        # Between 1 and 8 bytes per value (the dtypes a weight may be stored in), plus a header.
        low, high = values + NPY_MIN_HEADER, 8 * values + NPY_HEADER_SLACK
        if not low <= info.file_size <= high:
            raise self.fail(name, f"{what}declares {info.file_size} bytes, which cannot hold "
                                  f"an array of shape {shape} ({values} values)")
        if info.file_size > MAX_ARRAY_BYTES:
            raise self.fail(name, f"declares {info.file_size} bytes, over the limit of "
                                  f"{MAX_ARRAY_BYTES}")
        try:
            with self._open(name) as fh:
                return self._read_npy(fh, name, info.file_size, shape, what)
        except _READ_ERRORS as exc:
            if str(exc).startswith(f"{self.verb}:"):
                raise
            raise self.fail(name, f"damaged, cannot be read ({exc})") from None

    def _read_npy(self, fh, name, file_size, shape, what):
        try:
            version = npy_format.read_magic(fh)
            if version == (1, 0):
                header = npy_format.read_array_header_1_0(fh, max_header_size=NPY_HEADER_SLACK)
            elif version == (2, 0):
                header = npy_format.read_array_header_2_0(fh, max_header_size=NPY_HEADER_SLACK)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except (ValueError, TypeError, SyntaxError, EOFError, MemoryError,
                RecursionError) as exc:
            raise self.fail(name, f"not a valid .npy array ({exc})") from None
        stored_shape, fortran, dtype = header
        if dtype.hasobject or dtype.names is not None or dtype.subdtype is not None \
                or dtype.kind not in "fiu" or dtype.itemsize > 8:
            raise self.fail(name, f"{what}must hold a numeric array, got dtype {dtype} (object "
                                  f"arrays, which would need pickle, are never read)")
        if tuple(stored_shape) != shape:
            raise self.fail(name, f"{what}has shape {tuple(stored_shape)}, the model expects "
                                  f"{shape}")
        nbytes = math.prod(shape) * dtype.itemsize
        if fh.tell() + nbytes != file_size:
            raise self.fail(name, f"{what}declares {file_size} bytes but its header says "
                                  f"{fh.tell()} + {nbytes} ({shape} of {dtype})")
        out = np.empty(shape[::-1] if fortran else shape, dtype)
        view = memoryview(out).cast("B")  # C-contiguous: fortran data is read as its transpose
        pos = 0
        while pos < nbytes:
            got = fh.readinto(view[pos:pos + READ_CHUNK])
            if not got:
                raise self.fail(name, f"damaged: its data ends after {pos} of {nbytes} bytes")
            pos += got
        return out.T if fortran else out

    def close(self):
        self.zf.close()


def _model_class(archive):
    name = archive.doc.get("model_class", "Sequential")
    if isinstance(name, str) and name not in MODEL_CLASSES and ">" in name:
        try:  # a registered subclassed model (issue 13)
            cls = lookup_serializable(name, "model class")
        except ValueError as exc:
            raise archive.fail("pynn.json", str(exc)) from None
        if isinstance(cls, type) and any(c.__name__ == "Model" for c in cls.__mro__):
            return cls
    if not isinstance(name, str) or name not in MODEL_CLASSES:
        raise archive.fail("pynn.json", f"unknown model class {name!r}; pynn knows "
                                        f"{sorted(MODEL_CLASSES)}")
    return MODEL_CLASSES[name]


# The ways a hostile config can fail inside a layer's constructor or build.
_CONFIG_ERRORS = (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError,
                  RecursionError, ZeroDivisionError)


def _build_model(archive):
    doc = archive.doc
    config = doc.get("model")
    archive.expect(isinstance(config, dict) and isinstance(config.get("layers"), list),
                   "'model' must be an object with a 'layers' list")
    for spec in config["layers"]:
        archive.expect(isinstance(spec, dict) and isinstance(spec.get("config", {}), dict),
                       "each layer must be an object with a 'config' object")
    cls = _model_class(archive)
    try:
        with zero_init():
            model = cls.from_config(config)
            shape = doc.get("built_input_shape")
            if shape is not None and not model.built:
                archive.expect(isinstance(shape, list), "'built_input_shape' must be a list")
                model.build(tuple(shape))
    except _CONFIG_ERRORS as exc:
        if str(exc).startswith(f"{archive.verb}:"):
            raise
        raise archive.fail("pynn.json", f"invalid model config ({exc})") from None
    except MemoryError as exc:
        raise archive.fail("pynn.json", f"the model config asks for more memory than there is "
                                        f"({exc})") from None
    _check_weight_budget(model, archive)
    return model


def _check_weight_budget(model, archive):
    """The weights the config declares must match the bytes the archive holds: a tiny file
    cannot make load_model allocate gigabytes that the file does not back."""
    stored = sum(info.file_size for name, info in archive.infos.items()
                 if name.startswith("weights/"))
    values = sum(math.prod(v.shape) for v in model.weights)
    if values > stored:  # every stored value takes at least one byte
        raise archive.fail("pynn.json", f"the model config declares {values} weight values but "
                                        f"the file stores only {stored} bytes of weights")


def _weight_owners(model):
    """(layer, variable) for every weight, in get_weights() order."""
    return [(layer, v) for layer in model.layers for v in layer.weights]


def _load_weights_into(model, archive, atomic):
    """Read every weight member into ``model``. ``atomic``: read them all before the first
    assignment, so a bad member leaves the model as it was (twice the weights' memory at the
    peak); otherwise assign each as it is read (a model being built, discarded on failure)."""
    names = archive.doc.get("weights")
    archive.expect(isinstance(names, list) and all(isinstance(n, str) for n in names),
                   "'weights' must be a list of names")
    owners = _weight_owners(model)
    if len(names) != len(owners):
        saved = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        wanted = ", ".join(v.path for _, v in owners[:8]) + (", ..." if len(owners) > 8 else "")
        raise archive.fail("pynn.json", f"holds {len(names)} weights but model "
                                        f"'{model.name}' has {len(owners)} (saved: [{saved}]; "
                                        f"the model's: [{wanted}])")
    b = backend.current()
    pending = []
    for i, ((layer, var), saved) in enumerate(zip(owners, names)):
        owner = f"layer '{layer.name}' weight '{var.path}', saved as '{saved}'"
        arr = archive.array(f"weights/{i:05d}.npy", var.shape, owner)
        # archive.array checked shape and dtype: the array is fresh, no copy is needed.
        # int8 weights (pynn.compression.quantization) keep their integer dtype
        dtype = var.value.dtype if np.dtype(var.value.dtype).kind in "iu" else layer.dtype
        if atomic:
            pending.append((var, arr, dtype))
        else:
            var.value = b.asarray(arr, dtype)
    for var, arr, dtype in pending:
        var.value = b.asarray(arr, dtype)
    bump_version()


def _load_layer_state(model, archive):
    states = archive.doc.get("layer_state", {})
    archive.expect(isinstance(states, dict), "'layer_state' must be an object")
    by_name = {layer.name: layer for layer in model.layers}
    for name, state in states.items():
        archive.expect(name in by_name and isinstance(state, dict),
                       f"'layer_state' names an unknown layer {name!r}")
        try:
            by_name[name].set_runtime_state(state)
        except (ValueError, TypeError) as exc:
            raise archive.fail("pynn.json", f"invalid 'layer_state' ({exc})") from None


def _load_rng_state(model, archive):
    state = archive.doc.get("rng_state", {})
    archive.expect(isinstance(state, dict), "'rng_state' must be an object")
    try:
        model.set_rng_state(state)
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        raise archive.fail("pynn.json", f"invalid 'rng_state' ({exc})") from None


def _compile_from(model, archive, spec):
    archive.expect(isinstance(spec, dict), "'compile' must be an object")
    try:
        model._compile_from_config(spec)
    except _CONFIG_ERRORS as exc:
        raise archive.fail("pynn.json", f"invalid compile config ({exc})") from None
    if getattr(model, "_traced", False) and isinstance(archive.doc.get("weights"), list):
        # A subclassed model's constructor names its layers afresh: match by position.
        weight_for = dict(zip(archive.doc["weights"], model.weights))
    else:
        weight_for = {v.path: v for v in model.weights}
    _load_optimizer_state(model, archive, weight_for)


def _load_optimizer_state(model, archive, weight_for):
    """The saved optimizer state into ``model.optimizer``; ``weight_for`` maps a saved
    weight's path to the model's variable (the identity for a rebuilt model, by position for
    an existing one whose layers may be named differently)."""
    state = archive.doc.get("optimizer_state")
    if state is None:
        return
    archive.expect(isinstance(state, dict) and isinstance(state.get("slots"), list)
                   and isinstance(state.get("iterations"), int)
                   and not isinstance(state.get("iterations"), bool)
                   and 0 <= state["iterations"] < 2**63,
                   "'optimizer_state' must hold 'iterations' (an int >= 0) and 'slots'")
    slots = {}
    for i, name in enumerate(state["slots"]):
        archive.expect(isinstance(name, str), "slot names must be strings")
        path, slot = name.rsplit("/", 1) if "/" in name else (name, "")
        var = weight_for.get(path)
        if var is None:
            raise archive.fail("pynn.json", f"optimizer slot {name!r} names no weight of the "
                                            f"model")
        key = f"{var.path}/{slot}" if "/" in name else var.path
        slots[key] = archive.array(f"optimizer/{i:05d}.npy", var.shape, f"optimizer slot {name}")
    try:
        model.optimizer.set_state({"iterations": state["iterations"], "slots": slots},
                                  model.trainable_weights)
    except (ValueError, TypeError) as exc:
        raise archive.fail("pynn.json", f"invalid 'optimizer_state' ({exc})") from None


def load_model(filepath, custom_objects=None, compile=True, max_compression_ratio=None):
    """Rebuild a model saved by ``model.save``; with its optimizer state when compiled, so
    ``fit`` resumes where it stopped.

    ``max_compression_ratio`` (default ``MAX_COMPRESSION_RATIO``) bounds how far the weights
    may inflate compared with the bytes they take in the file; raise it only for a file you
    trust that was re-zipped with compression and holds mostly zeros.
    """
    if os.fspath(filepath).lower().endswith(".onnx"):
        # ONNX files in: a functional model of pynn layers (pynn.onnx_import, through ONNX_IO)
        return ONNX_IO["load"](filepath)
    suffix = _keras_format(filepath, "load_model")
    if suffix is not None:
        if suffix == ".keras":
            return KERAS_IO["load_keras"](filepath, max_compression_ratio, compile=compile)
        return KERAS_IO["load_h5"](filepath, max_compression_ratio)
    archive = _Archive(filepath, "load_model", max_compression_ratio)
    try:
        with custom_object_scope(custom_objects):
            return _load_model_from(archive, compile)
    finally:
        archive.close()


def _load_model_from(archive, compile):
    model = _build_model(archive)
    _load_weights_into(model, archive, atomic=False)
    _load_layer_state(model, archive)
    _load_rng_state(model, archive)
    spec = archive.doc.get("compile")
    if compile and spec is not None:
        _compile_from(model, archive, spec)
    return model


def load_weights(model, filepath, max_compression_ratio=None):
    """Load the weights of a file written by ``save`` or ``save_weights`` into ``model``, by
    position (as Keras: layer names may differ)."""
    if _keras_format(filepath, "load_weights") is not None:
        return KERAS_IO["load_weights"](model, filepath, max_compression_ratio)
    archive = _Archive(filepath, "load_weights", max_compression_ratio)
    try:
        if not model.built:
            shape = archive.doc.get("built_input_shape")
            archive.expect(isinstance(shape, list), "'built_input_shape' is missing")
            try:
                model.build(tuple(shape))
            except _CONFIG_ERRORS as exc:
                raise archive.fail("pynn.json", f"model '{model.name}' cannot be built for the "
                                                f"saved input shape {shape} ({exc})") from None
        _load_weights_into(model, archive, atomic=True)
    finally:
        archive.close()


def restore_training_state(model, filepath, max_compression_ratio=None):
    """Load a file written by ``save`` into the compiled ``model`` itself: weights, layer
    state, the shuffle generator and the optimizer's slots and iterations, so ``fit`` goes on
    exactly as the saved model would. Slots are matched to weights by position, as weights
    are, so a model whose layers got other names still resumes."""
    archive = _Archive(filepath, "restore_training_state", max_compression_ratio)
    try:
        if not model.built:
            shape = archive.doc.get("built_input_shape")
            archive.expect(isinstance(shape, list), "'built_input_shape' is missing")
            model.build(tuple(shape))
        _load_weights_into(model, archive, atomic=True)
        _load_layer_state(model, archive)
        _load_rng_state(model, archive)
        if model.compiled:
            _load_optimizer_state(model, archive,
                                  dict(zip(archive.doc["weights"], model.weights)))
    finally:
        archive.close()

