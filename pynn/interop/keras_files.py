"""Keras files in and out, with h5py (the optional extra ``pynn[keras]``).

Read: Keras 3 ``.keras`` (a zip of ``config.json``, ``metadata.json``, ``model.weights.h5``),
Keras 2 / tf.keras ``.h5`` (the ``model_config`` attribute and the ``model_weights`` group),
Keras 3 ``.weights.h5`` and Keras 2 weights-only ``.h5`` files. Write: ``.keras`` and
``.weights.h5`` in Keras 3's layout, which ``keras.saving.load_model`` and
``keras.Model.load_weights`` open.

pynn's layers take Keras's names, arguments and weight layouts, so a Keras config maps to
pynn's almost key for key. The rest is here:

- Keras's serialized objects (``{"module", "class_name", "config", "registered_name"}``) become
  pynn's ``{"class_name", "config"}``; a DTypePolicy becomes its dtype's name.
- A Keras argument pynn's layer lacks is dropped when it turns a feature off (None, False, 0,
  ``channels_last``) or cannot change the numbers (``unroll``, ``seed``...); any other value is
  an error naming the layer and the argument, never silently ignored.
- Weights: Keras 3 stores each layer's variables as ``layers/<snake_case class>[_n]/vars/<i>``
  (recurrent layers under ``cell/vars``, wrappers under ``layer/...``) in ``model.layers``
  order, which pynn's functional graph reproduces; Keras 2 lists them by layer name
  (``layer_names``, ``weight_names`` attributes). Either way a variable's order is
  ``get_weights()``'s, which pynn shares with Keras.
- Training state: a compiled model's ``.keras`` file carries ``compile_config`` (optimizer,
  losses, loss weights, metrics, serialized as above) and the optimizer's variables
  (``optimizer/vars/<i>``: iterations, the learning rate, then the slots group by group, as
  ``_KERAS_SLOT_GROUPS`` lists them); both ways, so training resumes across the two
  frameworks. A compile config pynn cannot honour loads the model uncompiled, with a warning.

Safety follows Keras's ``safe_mode`` and pynn's own loader: classes come from
``pynn.layers.LAYERS`` only, nothing named in the file is imported or executed (a Lambda or
any serialized function is refused), the zip may only hold plain member names (no absolute
paths, no ``..``) and may not inflate past ``MAX_COMPRESSION_RATIO``, the model is built with
shape-only placeholders, and the weights it declares are compared with the bytes the file holds
before anything is read; every array's shape and dtype are checked against the model before it
is read, and HDF5 links or storage that point outside the file are refused.
"""

import contextlib
import inspect
import io
import json
import math
import os
import time
import zipfile
import zlib

import numpy as np

from pynn import backend, saving
from pynn.layers import LAYERS
from pynn.layers.base import Layer, _snake, zero_init
from pynn.models import Model, Sequential, layer_from_config
from pynn.variables import bump_version

# The Keras version a written .keras file declares: the file holds only what Keras 3 reads
# since 3.0 (checked against the installed Keras in tests/test_keras_files.py).
KERAS_VERSION = "3.6.0"
CONFIG_NAME, METADATA_NAME, WEIGHTS_NAME = "config.json", "metadata.json", "model.weights.h5"
# One weights member larger than this is refused (pynn's own arrays have the same limit).
MAX_H5_BYTES = 8 << 30
# layer_names / weight_names attributes of a legacy .h5: far more than any model has.
MAX_NAMES = 1 << 16
# Keras's recurrent layers keep their variables in a ``cell`` sublayer.
_RNN_CLASSES = ("SimpleRNN", "LSTM", "GRU")
# -- convlstm: Keras's ConvLSTM layers keep theirs in a ``cell`` sublayer too --
_RNN_CLASSES += ("ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D")
_MODEL_CLASSES = ("Sequential", "Functional", "Model")
_MERGE_CLASSES = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate",
                  "Dot")
_SERIALIZED_FUNCTIONS = ("__lambda__", "function", "__function__")
# Keras arguments pynn's layers lack whose every value gives the same numbers at inference and
# in training (an implementation choice, a seed, a mask detail, a length check).
_ANY_VALUE = {"unroll", "implementation", "zero_output_for_mask", "renorm_momentum",
              "input_length", "use_cudnn", "seed", "lora_alpha"}
# Values of an absent feature, for Keras arguments pynn's layers lack.
_OFF_VALUES = (None, False, 0, "channels_last")


class KerasFileError(ValueError):
    """A Keras file pynn will not load: damaged, hostile, or using what pynn lacks."""


def _h5py(verb):
    try:
        import h5py
    except ImportError:
        raise ImportError(f"{verb}: Keras files (.keras, .h5) need h5py, the optional extra "
                          f"'keras': pip install 'pynn[keras]'") from None
    return h5py


class _Where:
    """Names the file (and member) every message is about."""

    def __init__(self, verb, path):
        self.verb, self.path = verb, os.fspath(path)

    def fail(self, what, member=None):
        at = f"'{member}': " if member else ""
        return KerasFileError(f"{self.verb}: {self.path}: {at}{what}")


# -- reading the zip --------------------------------------------------------------------------
def _ratio(max_compression_ratio, where):
    ratio = saving.MAX_COMPRESSION_RATIO if max_compression_ratio is None \
        else max_compression_ratio
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio >= 1:
        raise ValueError(f"{where.verb}: max_compression_ratio must be a number >= 1, got "
                         f"{max_compression_ratio!r}")
    return ratio


def _unsafe_member_name(name):
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0] or "\x00" in name


def _parse_json(data, where, member):
    containers = data.count(b"[") + data.count(b"{")
    if containers > saving.MAX_JSON_CONTAINERS:
        raise where.fail(f"holds {containers} lists and objects, over the limit of "
                         f"{saving.MAX_JSON_CONTAINERS}", member)
    try:
        doc = json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise where.fail(f"not valid JSON ({exc})", member) from None
    except RecursionError:
        raise where.fail(f"nested deeper than {saving.MAX_JSON_DEPTH} levels", member) from None
    if saving._json_depth(doc) > saving.MAX_JSON_DEPTH:
        raise where.fail(f"nested deeper than {saving.MAX_JSON_DEPTH} levels", member)
    return doc


class _KerasZip:
    """A .keras archive, checked before anything is inflated: plain member names, the three
    members Keras writes, and a bounded compression ratio."""

    def __init__(self, where, ratio):
        self.where = where
        if not os.path.isfile(where.path):
            raise FileNotFoundError(f"{where.verb}: no such file: {where.path}")
        try:
            self.zf = zipfile.ZipFile(where.path, "r")
            infos = self.zf.infolist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
            raise where.fail(f"not a Keras .keras file (not a valid zip archive: {exc})") \
                from None
        try:
            for info in infos:
                if _unsafe_member_name(info.filename):
                    raise where.fail("unsafe member name (an absolute path or '..'): refused; "
                                     "pynn extracts nothing to disk", info.filename)
            self.infos = {info.filename: info for info in infos}
            inflated = sum(info.file_size for info in infos)
            stored = sum(info.compress_size for info in infos)
            if inflated > max(ratio * stored, saving.RATIO_FREE_BYTES):
                raise where.fail(f"the members declare {inflated} bytes compressed into {stored} "
                                 f"(ratio {inflated / max(stored, 1):.0f}), over the limit of "
                                 f"{ratio}: not a real model (a zip bomb?). A file you trust "
                                 f"loads with max_compression_ratio=<higher>")
        except BaseException:
            self.zf.close()
            raise

    def read(self, name, limit):
        info = self.infos.get(name)
        if info is None:
            raise self.where.fail(f"missing: a .keras file holds {CONFIG_NAME} and "
                                  f"{WEIGHTS_NAME}", name)
        if info.file_size > limit:
            raise self.where.fail(f"declares {info.file_size} bytes, over the limit of {limit}",
                                  name)
        try:
            with self.zf.open(info) as fh:
                data = fh.read(limit + 1)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError,
                NotImplementedError) as exc:
            raise self.where.fail(f"damaged, cannot be read ({exc})", name) from None
        if len(data) != info.file_size:
            raise self.where.fail("damaged: its data does not have the size it declares", name)
        return data

    def close(self):
        self.zf.close()


# -- Keras config -> pynn config --------------------------------------------------------------
def _accepted_arguments(cls):
    """The keyword arguments ``cls(...)`` takes, up its __init__ chain (Layer's included)."""
    names = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names.update(p.name for p in params
                     if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        if klass is Layer or not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    names.discard("self")
    return names


def _plain(value, what, where):
    """A Keras config value as pynn's: serialized objects lose module and registered_name,
    dtype policies become dtype names; serialized functions are refused."""
    if isinstance(value, list):
        return [_plain(v, what, where) for v in value]
    if not isinstance(value, dict):
        return value
    class_name = value.get("class_name")
    if class_name in _SERIALIZED_FUNCTIONS or value.get("module") == "builtins":
        raise where.fail(f"{what} holds a serialized Python function ({class_name!r}); pynn "
                         f"loads no code from files (Keras's safe_mode refuses it too)",
                         CONFIG_NAME)
    if class_name in ("DTypePolicy", "FloatDTypePolicy", "Policy"):
        return _plain((value.get("config") or {}).get("name"), what, where)
    if class_name == "__tuple__":
        return _plain((value.get("config") or {}).get("value"), what, where)
    if isinstance(class_name, str) and "config" in value:
        if value.get("registered_name") not in (None, class_name):
            raise where.fail(f"{what} uses the custom object {value['registered_name']!r}, "
                             f"which pynn does not have", CONFIG_NAME)
        return {"class_name": class_name, "config": _plain(value["config"], what, where)}
    return {k: _plain(v, what, where) for k, v in value.items()}


def _input_layer_config(config, label, where):
    shape = config.get("batch_shape", config.get("batch_input_shape"))
    if shape is None and isinstance(config.get("shape"), list):
        shape = [config.get("batch_size")] + config["shape"]
    if not isinstance(shape, list) or not shape:
        raise where.fail(f"{label} needs a batch_shape list, got {shape!r}", CONFIG_NAME)
    return {"name": config.get("name"), "shape": shape[1:], "batch_size": shape[0],
            "dtype": config.get("dtype")}, {k: config[k] for k in ("sparse", "ragged", "optional")
                                            if k in config}


# Wrapper arguments that hold a whole layer config (read and written as layers are).
_NESTED_LAYER_KEYS = {"TimeDistributed": ("layer",), "Bidirectional": ("layer", "backward_layer"),
                      "RNN": ("cell",)}
# misc: Keras 3's SpectralNormalization wraps one layer
_NESTED_LAYER_KEYS.update({"SpectralNormalization": ("layer",)})


def _layer_spec(entry, where):
    """``{"class_name", "config"}`` for pynn from one Keras layer entry."""
    if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
        raise where.fail("each layer must be an object with a 'config' object", CONFIG_NAME)
    class_name = entry.get("class_name")
    config = entry["config"]
    label = f"layer '{config.get('name', entry.get('name'))}' ({class_name})"
    if class_name in ("Lambda", "TFOpLambda", "SlicingOpLambda"):
        raise where.fail(f"{label}: a Lambda layer holds Python code, which pynn never loads "
                         f"from a file (Keras's safe_mode refuses it too); rebuild the model "
                         f"with pynn layers", CONFIG_NAME)
    if class_name in _MODEL_CLASSES:
        spec = _model_spec(entry, where)
        # A nested model's masks are dropped and propagated alike; only the outer model is
        # probed (_check_masks runs on the built top-level model).
        spec.pop("masked_calls", None)
        return spec
    if class_name not in LAYERS or entry.get("registered_name") not in (None, class_name):
        raise where.fail(f"{label}: pynn has no layer {class_name!r} (custom or not yet "
                         f"implemented); pynn's layers: {', '.join(sorted(LAYERS))}", CONFIG_NAME)
    cls = LAYERS[class_name]
    if class_name == "InputLayer":
        pynn_config, extra = _input_layer_config(_plain(config, label, where), label, where)
    else:
        pynn_config, extra = {}, {}
        for key, value in config.items():
            if key in _NESTED_LAYER_KEYS.get(class_name, ()) and isinstance(value, dict):
                pynn_config[key] = _layer_spec(value, where)
            elif key == "cells" and class_name == "StackedRNNCells" and isinstance(value, list):
                pynn_config[key] = [_layer_spec(cell, where) for cell in value]
            elif key == "layers" and class_name == "Pipeline" and isinstance(value, list):
                pynn_config[key] = [_layer_spec(layer, where) for layer in value]
            elif key == "batch_input_shape":  # Keras 2: the first layer of a Sequential
                pynn_config["input_shape"] = value[1:] if isinstance(value, list) else value
            else:
                pynn_config[key] = _plain(value, f"{label} argument '{key}'", where)
        for key, value in pynn_config.items():
            if isinstance(value, dict) and key.endswith(tuple(_OBJECT_REGISTRIES)):
                pynn_config[key] = _object_spec(key, value, label, where)
    _drop_unsupported(_accepted_arguments(cls), pynn_config, extra,
                      f"{label} sets", f"pynn's {class_name}", where)
    if isinstance(pynn_config.get("axis"), list) and len(pynn_config["axis"]) == 1:
        pynn_config["axis"] = pynn_config["axis"][0]  # tf.keras 2 BatchNormalization
    return {"class_name": class_name, "config": pynn_config}


def _drop_unsupported(accepted, config, extra, who, what, where):
    """Drop from ``config`` (and ``extra``) the arguments outside ``accepted`` that leave a
    feature off; any other is an error."""
    for key in [k for k in config if k not in accepted] + list(extra):
        value = config.pop(key, extra.get(key))
        if key in _ANY_VALUE or (not isinstance(value, (list, dict)) and any(
                value is off or value == off for off in _OFF_VALUES)):
            continue
        raise where.fail(f"{who} {key}={value!r}, which {what} does not support", CONFIG_NAME)


def _registry(suffix):
    from pynn import constraints, initializers, regularizers
    if suffix == "_initializer":
        return lambda name: initializers._BY_CLASS.get(name)
    if suffix == "_regularizer":
        return lambda name: regularizers._BY_NAME.get(str(name).lower())
    return lambda name: constraints._BY_CLASS.get(name)


_OBJECT_REGISTRIES = ("_initializer", "_regularizer", "_constraint")


def _object_spec(key, spec, label, where):
    """An initializer, regularizer or constraint of a layer config, its Keras-only arguments
    dropped (or refused) as a layer's are."""
    suffix = next(s for s in _OBJECT_REGISTRIES if key.endswith(s))
    name = spec.get("class_name")
    cls = _registry(suffix)(name)
    if cls is None:
        raise where.fail(f"{label} argument '{key}' is {name!r}, which pynn does not have",
                         CONFIG_NAME)
    config = dict(spec.get("config") or {})
    _drop_unsupported(_accepted_arguments(cls), config, {}, f"{label} argument '{key}' sets",
                      f"pynn's {name}", where)
    return {"class_name": name, "config": config}


def _ref(value, where):
    """[layer, node, tensor] from Keras 3's tensor dict or Keras 2's list."""
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        value = (value.get("config") or {}).get("keras_history")
    if (isinstance(value, list) and len(value) >= 3 and isinstance(value[0], str)
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value[1:3])):
        return [value[0], value[1], value[2]]
    raise where.fail(f"a tensor reference must be [layer, node, index], got {value!r}",
                     CONFIG_NAME)


# The attention layers with projections, called as Keras's MultiHeadAttention.
_HEADS_ATTENTION = ("MultiHeadAttention", "GroupQueryAttention")
# MultiHeadAttention's call: query and value positional, key and attention_mask tensors and
# two flags by keyword (pynn.layers.attention.CallOptions); masks come from the graph.
_ATTENTION_TENSORS = ("key", "attention_mask")
_ATTENTION_FLAGS = ("use_causal_mask", "return_attention_scores")


def _attention_call(node, entry, where):
    """(refs, call options) of one Keras 3 MultiHeadAttention node."""
    args, kwargs = node.get("args") or [], dict(node.get("kwargs") or {})
    label = f"layer '{entry.get('name')}' (MultiHeadAttention)"
    if len(args) == 3 and "key" not in kwargs:   # key given by position
        kwargs["key"] = args.pop()
    if len(args) != 2:
        raise where.fail(f"{label} is called with {len(args)} positional arguments; Keras's "
                         f"call takes query and value", CONFIG_NAME)
    refs = [_ref(t, where) for t in args]
    options = {}
    for name in _ATTENTION_TENSORS:
        value = kwargs.pop(name, None)
        options[name] = value is not None
        if value is not None:
            refs.append(_ref(value, where))
    for name in _ATTENTION_FLAGS:
        value = kwargs.pop(name, False)
        if not isinstance(value, bool):
            raise where.fail(f"{label}: {name} must be true or false, got {value!r}",
                             CONFIG_NAME)
        options[name] = value
    kwargs.pop("training", None)
    if any(v is not None for v in kwargs.values()):
        raise where.fail(f"{label} is called with arguments pynn does not take "
                         f"({sorted(k for k, v in kwargs.items() if v is not None)})",
                         CONFIG_NAME)
    return refs, options


# Attention and AdditiveAttention: called on a list, with two flags by keyword that pynn keeps
# as the layer's call options (pynn.layers.attention._ScoreOptions).
_SCORE_ATTENTION = ("Attention", "AdditiveAttention")


def _score_call_options(node, entry, where):
    """The node's kwargs without the flags, which join the entry's config (every call must
    agree)."""
    kwargs = dict(node.get("kwargs") or {})
    options = {}
    for name in _ATTENTION_FLAGS:
        value = kwargs.pop(name, False)
        if not isinstance(value, bool):
            raise where.fail(f"layer '{entry.get('name')}': {name} must be true or false, got "
                             f"{value!r}", CONFIG_NAME)
        options[name] = value
    config = entry.setdefault("config", {})
    if config.setdefault("call_options", options) != options:
        raise where.fail(f"layer '{entry.get('name')}' ({entry.get('class_name')}) is called "
                         f"with other options in another call ({options}); pynn's layer "
                         f"keeps one set", CONFIG_NAME)
    return kwargs


def _calls(entry, where):
    """(refs, several) for each call of a functional layer entry, in node order; a
    MultiHeadAttention entry's call options go into its config (every call must agree)."""
    calls = []
    for node in entry.get("inbound_nodes") or []:
        if isinstance(node, dict) and entry.get("class_name") in _HEADS_ATTENTION:
            refs, options = _attention_call(node, entry, where)
            config = entry.setdefault("config", {})
            if config.setdefault("call_options", options) != options:
                raise where.fail(f"layer '{entry.get('name')}' (MultiHeadAttention) is called "
                                 f"with other options in another call ({options}); pynn's "
                                 f"layer keeps one set", CONFIG_NAME)
            calls.append((refs, True))
            continue
        if isinstance(node, dict) and entry.get("class_name") in _SCORE_ATTENTION:
            node = dict(node, kwargs=_score_call_options(node, entry, where))
        if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
            args, kwargs = node.get("args") or [], node.get("kwargs") or {}
            if len(args) != 1 or any(v is not None for k, v in kwargs.items()
                                     if k not in ("training",)):
                raise where.fail(f"layer '{entry.get('name')}' is called with arguments pynn "
                                 f"does not take ({len(args)} positional, keyword "
                                 f"{sorted(kwargs)})", CONFIG_NAME)
            several = isinstance(args[0], list)
            refs = [_ref(t, where) for t in (args[0] if several else [args[0]])]
        elif isinstance(node, list):  # Keras 2: [[layer, node, tensor, kwargs], ...]
            refs = [_ref(t, where) for t in node]
            several = len(refs) > 1 or entry.get("class_name") in _MERGE_CLASSES
        else:
            raise where.fail(f"malformed inbound node {node!r}", CONFIG_NAME)
        calls.append((refs, several))
    return calls


def _endpoints(value, where):
    """(refs, keys) of Keras's input_layers / output_layers: one ref, a list or a dict."""
    if isinstance(value, list) and value and isinstance(value[0], str):
        return [_ref(value, where)], None
    if isinstance(value, dict):
        return [_ref(v, where) for v in value.values()], list(value)
    if isinstance(value, list) and value:
        return [_ref(v, where) for v in value], list(range(len(value)))
    raise where.fail(f"the model names no inputs or outputs ({value!r})", CONFIG_NAME)


def _tensor_refs(value):
    """The tensor references inside a call argument (a tensor, a list of them, None, ...)."""
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        history = (value.get("config") or {}).get("keras_history")
        return [history[0]] if isinstance(history, list) and history else []
    if isinstance(value, list):
        return [name for v in value for name in _tensor_refs(v)]
    return []


def _drop_mask_ops(entries, where, outputs=()):
    """Keras 3 traces each layer's compute_mask into the functional config: op nodes
    (NotEqual, Any, LogicalOr, ...: module keras.src.ops.* in a .keras file, no module and
    no "trainable" in its legacy .h5) whose results reach layers only
    as their ``mask=`` argument. pynn propagates the same masks itself (compute_mask, issue
    14), so those nodes and arguments are dropped; returns the remaining entries and the
    (layer, call) pairs that Keras gave a mask, which the caller checks pynn masks too. An op
    node whose value is used for anything but a mask stays, and is refused as any unknown
    layer is."""
    def is_op(e):
        if not isinstance(e, dict):
            return False
        if "module" in e:   # .keras: keras.src.ops.numpy, ...
            return str(e.get("module")).startswith("keras.src.ops")
        # Keras 3's legacy .h5 writes no modules: an op's config is its name and arguments,
        # every layer's (InputLayer's aside) holds "trainable"
        config = e.get("config")
        return (isinstance(config, dict) and "trainable" not in config
                and e.get("class_name") != "InputLayer")

    def name_of(e):
        return e.get("name", (e.get("config") or {}).get("name"))

    ops = {name_of(e) for e in entries if is_op(e)}
    ops -= set(outputs)  # applications: an op node that is a model output is its value
    changed = True
    while changed:  # keep only ops whose every reader is a mask op or a mask= argument
        changed = False
        for e in entries:
            if not isinstance(e, dict):
                continue
            for node in e.get("inbound_nodes") or []:
                if not isinstance(node, dict):
                    continue
                used = _tensor_refs(node.get("args")) + [
                    r for k, v in (node.get("kwargs") or {}).items() if k != "mask"
                    for r in _tensor_refs(v)]
                if name_of(e) in ops:
                    continue
                for name in used:
                    if name in ops:
                        ops.discard(name)
                        changed = True
        for e in entries:  # an op read by a refused op is refused too
            if is_op(e) and name_of(e) not in ops:
                for node in e.get("inbound_nodes") or []:
                    for name in _tensor_refs(node.get("args") if isinstance(node, dict)
                                             else None):
                        if name in ops:
                            ops.discard(name)
                            changed = True
    kept, masked = [], []
    for e in entries:
        if isinstance(e, dict) and name_of(e) in ops:
            continue
        if isinstance(e, dict) and any(isinstance(n, dict) and "mask" in (n.get("kwargs") or {})
                                       for n in e.get("inbound_nodes") or []):
            e = dict(e, inbound_nodes=[dict(n) for n in e["inbound_nodes"]])
            for index, node in enumerate(e["inbound_nodes"]):
                kwargs = dict(node.get("kwargs") or {})
                refs = _tensor_refs(kwargs.pop("mask", None))
                if any(r not in ops for r in refs):
                    raise where.fail(f"layer '{name_of(e)}' is given an explicit mask tensor "
                                     f"({refs}); pynn derives masks from Embedding(mask_zero) "
                                     f"and Masking only", CONFIG_NAME)
                if refs:
                    masked.append((name_of(e), index))
                node["kwargs"] = kwargs
        kept.append(e)
    return kept, masked


def _check_masks(model, masked, where):
    """Every layer call that Keras gave a mask gets one from pynn's propagation too: probed
    with one zero sample through the model's plan (ids: 0 is Embedding's mask value, so the
    masks exist whatever their values)."""
    from pynn.layers.base import takes_mask

    if not masked:
        return
    by_name = {layer.name: layer for layer in model.layers}
    seen = {}
    originals = {}
    for name, _ in masked:
        layer = by_name.get(name)
        if layer is None or not takes_mask(layer):
            raise where.fail(f"layer '{name}' takes a mask in Keras that pynn's "
                             f"{type(layer).__name__} does not take", CONFIG_NAME)
        if name in originals:
            continue
        originals[name] = layer.__dict__.get("call")
        call = layer.call

        def probe(x, training=None, mask=None, _name=name, _call=call):
            seen.setdefault(_name, []).append(mask is not None)
            return _call(x, training=training, mask=mask)
        layer.call = probe
    try:
        xs = [np.zeros((1,) + tuple(t.shape[1:]), dtype=t.dtype or "float32")
              for t in model.inputs]
        model._plan.forward(xs, False)
    finally:
        for name, original in originals.items():
            layer = by_name[name]
            if original is None:
                del layer.call
            else:
                layer.call = original
    for name, index in masked:
        calls = seen.get(name, [])
        if index >= len(calls) or not calls[index]:
            raise where.fail(f"layer '{name}' (call {index}) receives a mask in Keras that "
                             f"pynn's mask propagation does not deliver; pynn cannot "
                             f"reproduce this model's masking", CONFIG_NAME)


# -- applications (branch appsA): keras.ops' arithmetic nodes of a functional graph (Keras's
# MobileNetV3 gates with ReLU6(x + 3) * (1/6)) as pynn's OpLayer, both ways --
_KERAS_NUMPY_OPS = {"Add": "add", "Subtract": "subtract", "Multiply": "multiply",
                    "Divide": "divide", "TrueDivide": "true_divide"}
_PYNN_TO_KERAS_OPS = {op: name for name, op in _KERAS_NUMPY_OPS.items()}


def _legacy_op(entry):
    # -- applications (branch appsB): Keras 3's legacy .h5 names no module; there an op
    # node's config, unlike a layer's, holds no trainable
    return "module" not in entry and "trainable" not in (entry.get("config") or {})


def _op_layer_entry(entry, where):
    """A Keras 3 op node of ``_KERAS_NUMPY_OPS`` (module keras.src.ops.numpy, called on two
    operands: tensors or numbers) as an OpLayer entry; any other entry as it is."""
    if not (isinstance(entry, dict) and entry.get("class_name") in _KERAS_NUMPY_OPS
            and (entry.get("module") == "keras.src.ops.numpy" or _legacy_op(entry))):
        return entry
    name = entry.get("name", (entry.get("config") or {}).get("name"))
    nodes = []
    for node in entry.get("inbound_nodes") or []:
        args = node.get("args") if isinstance(node, dict) else None
        if (not isinstance(args, list) or len(args) != 2 or node.get("kwargs")
                or not all(isinstance(a, (int, float)) or _tensor_refs(a) for a in args)
                or any(isinstance(a, bool) for a in args)):
            raise where.fail(f"op node '{name}' ({entry['class_name']}) is called with "
                             f"arguments pynn does not take ({args!r}); pynn reads two "
                             f"operands, tensors or numbers", CONFIG_NAME)
        nodes.append(args)
    if not nodes:
        raise where.fail(f"op node '{name}' ({entry['class_name']}) is never called",
                         CONFIG_NAME)
    if any([isinstance(a, dict) for a in args] != [isinstance(a, dict) for a in nodes[0]]
           or [a for a in args if not isinstance(a, dict)]
           != [a for a in nodes[0] if not isinstance(a, dict)] for args in nodes[1:]):
        raise where.fail(f"op node '{name}' is called with other constants in another call; "
                         f"pynn's OpLayer keeps one set", CONFIG_NAME)
    tensors = iter(range(2))
    template = [{"tensor": next(tensors)} if isinstance(a, dict) else float(a)
                for a in nodes[0]]
    calls = []
    for args in nodes:
        refs = [a for a in args if isinstance(a, dict)]
        calls.append({"args": [refs if len(refs) > 1 else refs[0]], "kwargs": {}})
    return {"class_name": "OpLayer", "name": name, "inbound_nodes": calls,
            "config": {"name": name, "op": _KERAS_NUMPY_OPS[entry["class_name"]],
                       "args": template, "kwargs": {}}}


def _keras_op_spec(layer):
    """Keras 3's op node entry of an OpLayer of ``_PYNN_TO_KERAS_OPS`` on two operands,
    else None."""
    if type(layer).__name__ != "OpLayer" or layer.op not in _PYNN_TO_KERAS_OPS \
            or layer.op_kwargs or len(layer.op_args) != 2 \
            or not all(isinstance(a, (int, float)) or (isinstance(a, dict) and set(a) == {"tensor"})
                       for a in layer.op_args):
        return None
    name = _PYNN_TO_KERAS_OPS[layer.op]
    return {"module": "keras.src.ops.numpy", "class_name": name, "config": {"name": layer.name},
            "registered_name": name}


def _output_names(value):
    """The layer names in a functional config's output_layers ([name, node, tensor], or a
    list or dict of them)."""
    if isinstance(value, list) and len(value) == 3 and isinstance(value[0], str):
        return [value[0]]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [name for v in value for name in _output_names(v)]
    return []


def _functional_config(config, where):
    entries = config.get("layers")
    if not isinstance(entries, list):
        raise where.fail("the model config has no 'layers' list", CONFIG_NAME)
    entries, masked = _drop_mask_ops(entries, where, _output_names(config.get("output_layers")))
    entries = [_op_layer_entry(e, where) for e in entries]  # applications: Keras's op nodes
    names = [e.get("name", (e.get("config") or {}).get("name")) if isinstance(e, dict) else None
             for e in entries]
    # calls first: a MultiHeadAttention's call options join its config (_calls)
    pending = {name: _calls(e, where) for name, e in zip(names, entries)}
    layers = [_layer_spec(e, where) for e in entries]
    for name, spec in zip(names, layers):
        if name is not None:
            spec["config"]["name"] = name
    made = {(name, 0) for name, spec in zip(names, layers) if spec["class_name"] == "InputLayer"}
    done = dict.fromkeys(names, 0)
    nodes = []
    # Keras lists layers, not calls: a shared layer's later call may read a tensor made by a
    # layer listed after it, so calls run as soon as what they read exists, in node order.
    progress = True
    while progress:
        progress = False
        for name in names:
            calls = pending[name]
            while calls and all((r[0], r[1]) in made for r in calls[0][0]):
                refs, several = calls.pop(0)
                made.add((name, done[name]))
                done[name] += 1
                nodes.append({"layer": name, "inputs": refs, "several": several})
                progress = True
    stuck = [name for name in names if pending[name]]
    if stuck:
        raise where.fail(f"layers {stuck} read tensors that no layer of the model makes",
                         CONFIG_NAME)
    inputs, input_keys = _endpoints(config.get("input_layers"), where)
    outputs, output_keys = _endpoints(config.get("output_layers"), where)
    # Keras 2 always lists the endpoints and unpacks a list of one; Keras 3 keeps the structure
    # the model was built with (its entries carry "module").
    if not any("module" in e for e in entries if isinstance(e, dict)):
        input_keys = None if len(inputs) == 1 else input_keys
        output_keys = None if len(outputs) == 1 else output_keys
    return {"name": config.get("name"), "trainable": config.get("trainable", True),
            "layers": layers, "nodes": nodes, "inputs": inputs, "outputs": outputs,
            "input_keys": input_keys, "output_keys": output_keys}, masked


def _model_spec(entry, where):
    config = entry.get("config")
    if not isinstance(config, dict):
        raise where.fail("the model config must be an object", CONFIG_NAME)
    if entry.get("class_name") == "Sequential":
        layers = [_layer_spec(e, where) for e in config.get("layers") or []]
        shape = config.get("build_input_shape") or (entry.get("build_config") or {}).get(
            "input_shape")
        if (isinstance(shape, list) and shape and (not layers
                                                   or layers[0]["class_name"] != "InputLayer")
                and "input_shape" not in (layers[0]["config"] if layers else {})):
            layers.insert(0, {"class_name": "InputLayer",
                              "config": {"shape": shape[1:], "batch_size": shape[0]}})
        return {"class_name": "Sequential",
                "config": {"name": config.get("name"), "trainable": config.get("trainable", True),
                           "layers": layers}}
    functional, masked = _functional_config(config, where)
    spec = {"class_name": "Model", "config": functional}
    if masked:
        spec["masked_calls"] = masked  # checked once the model is built (_build)
    return spec


def _build(spec, where):
    """The pynn model of a converted spec, with shape-only placeholder weights."""
    masked = spec.pop("masked_calls", None)
    try:
        with zero_init():
            model = layer_from_config(spec)
            if not model.built:
                model.build()
    except KerasFileError:
        raise
    except saving._CONFIG_ERRORS as exc:
        raise where.fail(f"invalid model config ({exc})", CONFIG_NAME) from None
    except MemoryError as exc:
        raise where.fail(f"the model config asks for more memory than there is ({exc})",
                         CONFIG_NAME) from None
    _check_masks(model, masked, where)
    return model


def model_from_keras_config(doc, where):
    if not isinstance(doc, dict) or doc.get("class_name") not in _MODEL_CLASSES:
        raise where.fail(f"not a Keras model config (class {doc.get('class_name') if isinstance(doc, dict) else None!r}; "
                         f"pynn reads Sequential and functional models)", CONFIG_NAME)
    return _build(_model_spec(doc, where), where)


# -- weights ----------------------------------------------------------------------------------
def _keras_class(layer):
    if isinstance(layer, Sequential):
        return "Sequential"
    return "Functional" if isinstance(layer, Model) else type(layer).__name__


# Keras's classes whose exported name is not their own: the weights file takes the class's
_KERAS_CLASS_BEHIND = {"GroupQueryAttention": "GroupedQueryAttention"}


def _child_paths(layers, parent):
    """Keras's group name for each layer: its snake_case class, numbered per class in
    ``model.layers`` order (Keras never addresses weights by layer name)."""
    used = {}
    for layer in layers:
        name = _snake(_KERAS_CLASS_BEHIND.get(_keras_class(layer), _keras_class(layer)))
        used[name] = used.get(name, -1) + 1
        yield layer, f"{parent}/{name}" if used[name] == 0 else f"{parent}/{name}_{used[name]}"


def _var_groups(layer, path):
    """(group path, name, variables) of ``layer``'s Keras 3 weight groups, in file order."""
    if isinstance(layer, Model):
        groups = [(f"{path}/vars" if path else "vars", layer.name, [])]
        for child, child_path in _child_paths(layer.layers, f"{path}/layers" if path
                                              else "layers"):
            groups += _var_groups(child, child_path)
        return groups
    cls = type(layer).__name__
    if cls in _RNN_CLASSES:
        return [(f"{path}/vars", layer.name, []),
                (f"{path}/cell/vars", f"{_snake(cls)}_cell", layer.weights)]
    if cls == "TimeDistributed":
        return [(f"{path}/vars", layer.name, [])] + _var_groups(layer.layer, f"{path}/layer")
    if cls == "SpectralNormalization":  # Keras tracks the kernel on the wrapper too
        return ([(f"{path}/vars", layer.name, [layer.kernel, layer.vector_u])]
                + _var_groups(layer.layer, f"{path}/layer"))
    if cls == "Pipeline":  # Keras files a Pipeline's layers as a model's
        groups = [(f"{path}/vars", layer.name, [])]
        for child, child_path in _child_paths(layer.layers, f"{path}/layers"):
            groups += _var_groups(child, child_path)
        return groups
    if cls in _HEADS_ATTENTION:
        # Keras's sublayers, each an EinsumDense (kernel, then bias), and the two without
        # weights; MultiHeadAttention's file names its projections by their properties
        # (query_dense, ...), GroupQueryAttention's by their attributes (_query_dense, ...),
        # and both the gate by its attribute
        under = "_" if cls == "GroupQueryAttention" else ""
        groups = [(f"{path}/vars", layer.name, [])]
        for group, name, kernel, bias in (
                (f"{under}query_dense", "query", layer.query_kernel, layer.query_bias),
                (f"{under}key_dense", "key", layer.key_kernel, layer.key_bias),
                ("_gate_dense", "gate", layer.gate_kernel, layer.gate_bias),
                (f"{under}value_dense", "value", layer.value_kernel, layer.value_bias),
                (f"{under}output_dense", "attention_output", layer.output_kernel,
                 layer.output_bias)):
            if kernel is not None:
                groups.append((f"{path}/{group}/vars", name,
                               [v for v in (kernel, bias) if v is not None]))
        return groups + [(f"{path}/_dropout_layer/vars", "dropout", []),
                         (f"{path}/_softmax/vars", "softmax", [])]
    if cls == "Bidirectional":
        return ([(f"{path}/vars", layer.name, [])]
                + _var_groups(layer.forward_layer, f"{path}/forward_layer")
                + _var_groups(layer.backward_layer, f"{path}/backward_layer"))
    return [(f"{path}/vars", layer.name, layer.weights)]


def _check_budget(model, stored_bytes, ratio, where, member):
    """The weights the config declares must fit the bytes the file holds (at most ``ratio``
    times inflated), so a tiny file cannot make pynn allocate gigabytes it does not back."""
    values = sum(math.prod(v.shape) for v in model.weights)
    if values > max(ratio * stored_bytes, saving.RATIO_FREE_BYTES):
        raise where.fail(f"the model config declares {values} weight values but the file "
                         f"stores only {stored_bytes} bytes of weights", member)


def _check_links(h5py, h5, path, where, member):
    """Every component of ``path`` must be a link inside this file: an external link would
    make h5py open another file."""
    parts = path.split("/")
    for i in range(1, len(parts) + 1):
        sub = "/".join(parts[:i])
        link = h5.get(sub, getlink=True)
        if link is None:
            return False
        if isinstance(link, h5py.ExternalLink):
            raise where.fail(f"'{sub}' links to another file; refused", member)
    return True


INTEGER_WEIGHTS = frozenset({"count"})


def _read_array(h5py, h5, path, var, owner, ratio, where, member):
    if not _check_links(h5py, h5, path, where, member):
        raise where.fail(f"missing the weights of {owner} (no '{path}')", member)
    ds = h5[path]
    if not isinstance(ds, h5py.Dataset):
        raise where.fail(f"'{path}' ({owner}) is not an array", member)
    if tuple(ds.shape or ()) != tuple(var.shape):
        raise where.fail(f"'{path}' ({owner}) has shape {tuple(ds.shape or ())}, the model "
                         f"expects {tuple(var.shape)}", member)
    dtype = ds.dtype
    # Keras keeps a few counters as integers (Normalization's count); pynn holds them as
    # floats, exact to 2**24.
    counter = var.path.rsplit("/", 1)[-1] in INTEGER_WEIGHTS and dtype.kind in "iu"
    if (dtype.kind != "f" and not counter) or dtype.itemsize > 8 or dtype.names is not None:
        raise where.fail(f"'{path}' ({owner}) must hold floats, got dtype {dtype}", member)
    if ds.external or ds.is_virtual:
        raise where.fail(f"'{path}' ({owner}) keeps its data outside the file; refused", member)
    nbytes = math.prod(var.shape) * dtype.itemsize
    storage = ds.id.get_storage_size()
    if nbytes > max(ratio * storage, saving.RATIO_FREE_BYTES):
        raise where.fail(f"'{path}' ({owner}) inflates {storage} stored bytes to {nbytes} "
                         f"(over the ratio limit of {ratio}: a compression bomb?)", member)
    out = np.empty(tuple(var.shape), dtype)
    if out.size:
        try:
            ds.read_direct(out)
        except (OSError, ValueError, TypeError) as exc:
            raise where.fail(f"'{path}' ({owner}) cannot be read ({exc})", member) from None
    return out.astype(np.float64) if counter else out


def _assign(pairs):
    b = backend.current()
    for layer, var, arr in pairs:
        var.value = b.asarray(np.asarray(arr, order="C"), layer.dtype)  # keeps 0-d
    bump_version()


def _owner_of(model):
    """The layer that owns each variable (for its dtype and messages)."""
    owners = {}

    def walk(layer):
        for child in getattr(layer, "layers", None) or []:
            walk(child)
        inner = getattr(layer, "layer", None)
        if isinstance(inner, Layer):
            walk(inner)
        for v in layer.weights:
            owners.setdefault(id(v), layer)
    walk(model)
    return owners


def _read_keras3_weights(h5py, h5, model, ratio, where, member):
    """Every weight of ``model`` from a Keras 3 weights file, read before any is assigned."""
    owners = _owner_of(model)
    pairs = []
    for path, _, variables in _var_groups(model, ""):
        if not variables:
            continue
        if not _check_links(h5py, h5, path, where, member):
            raise where.fail(f"missing the weights of layer '{owners[id(variables[0])].name}' "
                             f"(no group '{path}')", member)
        group = h5[path]
        stored = len(group) if isinstance(group, h5py.Group) else 0
        if stored != len(variables):
            layer = owners[id(variables[0])]
            raise where.fail(f"'{path}' holds {stored} arrays; layer '{layer.name}' "
                             f"({type(layer).__name__}) has {len(variables)} weights", member)
        for i, var in enumerate(variables):
            layer = owners[id(var)]
            arr = _read_array(h5py, h5, f"{path}/{i}", var,
                              f"layer '{layer.name}' weight '{var.path}'", ratio, where, member)
            pairs.append((layer, var, arr))
    return pairs


def _names_attr(attrs, key, where, member):
    names = attrs.get(key)
    if names is None:
        return None
    names = np.asarray(names).ravel()
    if names.size > MAX_NAMES:
        raise where.fail(f"attribute '{key}' lists {names.size} names, over {MAX_NAMES}", member)
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def _read_legacy_weights(h5py, group, model, ratio, where, member):
    """Keras 2's layout: ``layer_names`` and per layer ``weight_names``; matched, as Keras 2
    matches them, by position among the layers that have weights."""
    layer_names = _names_attr(group.attrs, "layer_names", where, member)
    if layer_names is None:
        raise where.fail("neither a Keras 3 weights file nor a Keras 2 one (no 'layers' group, "
                         "no 'layer_names' attribute)", member)
    saved = []
    for name in layer_names:
        if not _check_links(h5py, group, name, where, member):
            raise where.fail(f"'layer_names' lists '{name}', which the file lacks", member)
        names = _names_attr(group[name].attrs, "weight_names", where, member) or []
        if names:
            saved.append((name, names))
    ours = [layer for layer in model.layers if layer.weights]
    if len(saved) != len(ours):
        raise where.fail(f"holds weights for {len(saved)} layers ({[s[0] for s in saved][:8]}); "
                         f"model '{model.name}' has {len(ours)} layers with weights "
                         f"({[layer.name for layer in ours][:8]})", member)
    owners = _owner_of(model)
    pairs = []
    for layer, (name, names) in zip(ours, saved):
        variables = layer.weights
        if len(names) != len(variables):
            raise where.fail(f"layer '{name}' holds {len(names)} weights; layer '{layer.name}' "
                             f"({type(layer).__name__}) has {len(variables)}", member)
        for weight_name, var in zip(names, variables):
            owner = owners.get(id(var), layer)
            arr = _read_array(h5py, group, f"{name}/{weight_name}", var,
                              f"layer '{layer.name}' weight '{var.path}'", ratio, where, member)
            pairs.append((owner, var, arr))
    return pairs


def _read_weights_file(h5py, h5, model, ratio, where, member):
    if "layers" in h5 or "vars" in h5:
        return _read_keras3_weights(h5py, h5, model, ratio, where, member)
    if "model_weights" in h5:
        return _read_legacy_weights(h5py, h5["model_weights"], model, ratio, where, member)
    return _read_legacy_weights(h5py, h5, model, ratio, where, member)


def _open_h5(h5py, source, where, member, ratio):
    """(the h5py-like module to read it with, the open file): a snapshot made by a child
    process (pynn.interop.h5_snapshot: libhdf5 cannot hang or crash this process on a
    hostile file), or with PYNN_H5_SANDBOX=0 the file opened here."""
    from pynn.interop import h5_snapshot

    if h5_snapshot.enabled():
        size = (os.path.getsize(source) if isinstance(source, str)
                else len(source.getbuffer()))
        data = source if isinstance(source, str) else source.getvalue()
        try:
            return h5_snapshot, h5_snapshot.read(data, ratio, saving.RATIO_FREE_BYTES, size)
        except h5_snapshot.SnapshotError as exc:
            raise where.fail(f"not a valid HDF5 file: {exc}", member) from None
    try:
        return h5py, h5py.File(source, "r")
    except (OSError, ValueError) as exc:
        raise where.fail(f"not a valid HDF5 file ({exc})", member) from None


def _raised_in_h5py(exc):
    tb = exc.__traceback__
    while tb is not None:
        if f"{os.sep}h5py{os.sep}" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


@contextlib.contextmanager
def _file_errors(where):
    """A damaged or malformed file gives a KerasFileError naming it, whatever part of the
    reading trips over it: HDF5 structures h5py cannot follow (its KeyError, RuntimeError,
    OSError), a member whose deflate stream is broken, and config values of types the
    checks did not foresee (a list where a dict goes, ...)."""
    try:
        yield
    except KerasFileError:
        raise
    except (zlib.error, zipfile.BadZipFile, EOFError) as exc:
        raise where.fail(f"a damaged zip member ({exc})") from None
    except (OSError, RuntimeError) as exc:
        if not _raised_in_h5py(exc):
            raise
        raise where.fail(f"damaged HDF5 data ({exc})") from None
    except saving._CONFIG_ERRORS as exc:
        what = "damaged HDF5 data" if _raised_in_h5py(exc) else "a malformed value"
        raise where.fail(f"{what} ({type(exc).__name__}: {exc})") from None


# -- public entry points ----------------------------------------------------------------------
def load_keras(filepath, max_compression_ratio=None, verb="load_model", compile=True):
    """A pynn model from a Keras 3 ``.keras`` file (compiled as the file says, its optimizer's
    state restored, unless ``compile`` is False)."""
    h5py = _h5py(verb)
    where = _Where(verb, filepath)
    with _file_errors(where):
        return _load_keras(h5py, where, max_compression_ratio, compile)


def _load_keras(h5py, where, max_compression_ratio, compile):
    ratio = _ratio(max_compression_ratio, where)
    archive = _KerasZip(where, ratio)
    try:
        if METADATA_NAME in archive.infos:
            _parse_json(archive.read(METADATA_NAME, saving.MAX_JSON_BYTES), where,
                        METADATA_NAME)
        doc = _parse_json(archive.read(CONFIG_NAME, saving.MAX_JSON_BYTES), where, CONFIG_NAME)
        model = model_from_keras_config(doc, where)
        info = archive.infos.get(WEIGHTS_NAME)
        _check_budget(model, info.file_size if info else 0, ratio, where, WEIGHTS_NAME)
        data = archive.read(WEIGHTS_NAME, MAX_H5_BYTES)
    finally:
        archive.close()
    h5py, h5 = _open_h5(h5py, io.BytesIO(data), where, WEIGHTS_NAME, ratio)
    with h5:
        _assign(_read_keras3_weights(h5py, h5, model, ratio, where, WEIGHTS_NAME))
        if compile:
            _restore_keras_compile(model, doc, h5, where)
    return model


def load_h5(filepath, max_compression_ratio=None, verb="load_model"):
    """A pynn model from a Keras 2 / tf.keras (or Keras 3 legacy) ``.h5`` file."""
    h5py = _h5py(verb)
    where = _Where(verb, filepath)
    if not os.path.isfile(where.path):
        raise FileNotFoundError(f"{verb}: no such file: {where.path}")
    with _file_errors(where):
        return _load_h5(h5py, where, max_compression_ratio)


def _load_h5(h5py, where, max_compression_ratio):
    ratio = _ratio(max_compression_ratio, where)
    h5py, h5 = _open_h5(h5py, where.path, where, None, ratio)
    with h5:
        raw = h5.attrs.get("model_config")
        if raw is None:
            raise where.fail("holds no 'model_config' attribute: a weights-only file loads "
                             "with model.load_weights")
        raw = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)
        if len(raw) > saving.MAX_JSON_BYTES:
            raise where.fail(f"'model_config' holds {len(raw)} bytes, over the limit of "
                             f"{saving.MAX_JSON_BYTES}")
        model = model_from_keras_config(_parse_json(raw, where, "model_config"), where)
        _check_budget(model, os.path.getsize(where.path), ratio, where, None)
        _assign(_read_weights_file(h5py, h5, model, ratio, where, None))
    return model


def load_weights(model, filepath, max_compression_ratio=None):
    """Keras weights (``.weights.h5`` of Keras 3, ``.h5`` of Keras 2, or a ``.keras`` file's)
    into the built ``model``; nothing is assigned unless every array fits."""
    verb = "load_weights"
    h5py = _h5py(verb)
    where = _Where(verb, filepath)
    ratio = _ratio(max_compression_ratio, where)
    if not model.built:
        raise ValueError(f"{verb}: model '{model.name}' is not built; Keras weight files hold "
                         f"no input shape: build it (or give it an Input) first")
    if not where.path.lower().endswith(".keras") and not os.path.isfile(where.path):
        raise FileNotFoundError(f"{verb}: no such file: {where.path}")
    with _file_errors(where):
        if where.path.lower().endswith(".keras"):
            archive = _KerasZip(where, ratio)
            try:
                data = archive.read(WEIGHTS_NAME, MAX_H5_BYTES)
            finally:
                archive.close()
            source, member = io.BytesIO(data), WEIGHTS_NAME
        else:
            source, member = where.path, None
        h5py, h5 = _open_h5(h5py, source, where, member, ratio)
        with h5:
            _assign(_read_weights_file(h5py, h5, model, ratio, where, member))


# -- pynn -> Keras ----------------------------------------------------------------------------
_OBJECT_MODULES = (("_initializer", "keras.initializers"), ("_regularizer", "keras.regularizers"),
                   ("_constraint", "keras.constraints"))


# Keys of pynn's get_config() that Keras's constructor refuses (Keras's SpatialDropout2D
# takes no ``trainable``).
_NOT_IN_KERAS = {name: ("trainable",) for name in ("SpatialDropout1D", "SpatialDropout2D",
                                                    "SpatialDropout3D", "Discretization")}
# -- applications (branch appsB): the custom layers of keras.applications, by their module;
# Keras's StochasticDepth takes no seed --
_KERAS_APPLICATION_LAYERS = {"LayerScale": "keras.src.applications.convnext",
                             "StochasticDepth": "keras.src.applications.convnext",
                             "CustomScaleLayer": "keras.src.applications.inception_resnet_v2"}
_NOT_IN_KERAS["StochasticDepth"] = ("seed",)


def _keras_object(value, module):
    if not isinstance(value, dict):
        return value
    return {"module": module, "class_name": value["class_name"],
            "config": value.get("config", {}), "registered_name": None}


def _json_shape(shape):
    if isinstance(shape, (list, tuple)):
        return [_json_shape(s) for s in shape]
    return None if shape is None else int(shape)


def _dtype_policy(name):
    if isinstance(name, dict):  # a mixed policy, already in Keras's form (pynn.mixed_precision)
        return name
    return {"module": "keras", "class_name": "DTypePolicy", "config": {"name": name},
            "registered_name": None}


def _keras_seeds(value):
    """Keras (torch and TensorFlow backends) takes int32 seeds; pynn draws 63-bit ones. A seed
    only picks random draws, so the written file keeps its low 31 bits."""
    if isinstance(value, dict):
        return {k: (v % 2**31 if k == "seed" and isinstance(v, int) and not isinstance(v, bool)
                    else _keras_seeds(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_keras_seeds(v) for v in value]
    return value


def _keras_layer_config(layer):
    """Keras's ``get_config()`` of a pynn layer (pynn's keys are Keras's)."""
    config = _keras_seeds(layer.get_config())
    config.pop("input_shape", None)
    for key in _NOT_IN_KERAS.get(type(layer).__name__, ()):
        config.pop(key, None)  # a Keras 3 model states its input with an InputLayer
    out = {}
    for key, value in config.items():
        module = next((m for suffix, m in _OBJECT_MODULES if key.endswith(suffix)), None)
        if key == "dtype":
            value = _dtype_policy(value)
        elif key in _NESTED_LAYER_KEYS.get(type(layer).__name__, ()) and isinstance(
                value, dict):
            value = _keras_nested_spec(value)
        elif key == "cells" and isinstance(value, list):
            value = [_keras_nested_spec(cell) for cell in value]
        elif key == "layers" and type(layer).__name__ == "Pipeline" and isinstance(value, list):
            value = [_keras_nested_spec(inner) for inner in value]
        elif module is not None:
            value = _keras_object(value, module)
        out[key] = value
    return out


# pynn layers with no Keras 3 class of the same meaning: a Keras file cannot hold them.
_NOT_KERAS_LAYERS = {
    "OpLayer": "an op applied to symbolic tensors (x * 2, pynn.ops.relu(x), ...) has no Keras "
               "layer form here",
    "PruneLowMagnitude": "Keras has no pruning wrapper; call "
                         "pynn.compression.pruning.strip_pruning(model) first",
    "Lambda": "Keras files from pynn never hold Python code",
}
# Keras's RNN(cell) configs carry every cell argument, pynn's cells only units: not written
# (or read) until the cells take Keras's full argument lists.
_NOT_KERAS_LAYERS.update({name: "RNN(cell) and its cells are not in Keras files yet; use "
                                "SimpleRNN, LSTM or GRU, which hold the same weights"
                          for name in ("RNN", "SimpleRNNCell", "LSTMCell", "GRUCell",
                                       "StackedRNNCells")})
# -- int8 (issue 18, branch quant): pynn's int8 layers and QAT node are not Keras's --
_NOT_KERAS_LAYERS.update({name: "pynn's int8 layers have no Keras file form; save the int8 "
                                "model as .pynn, or the float model as .keras"
                          for name in ("QuantizedDense", "QuantizedConv2D", "FakeQuant")})
# -- int8 breadth (issue 18, branch qbreadth): the same for the other int8 layers --
_NOT_KERAS_LAYERS.update({name: _NOT_KERAS_LAYERS["QuantizedDense"]
                          for name in ("QuantizedConv1D", "QuantizedDepthwiseConv2D",
                                       "QuantizedSeparableConv2D", "QuantizedSimpleRNN",
                                       "QuantizedLSTM", "QuantizedGRU")})
# -- int8 chains (issue 18, branch q8): the uint8 max pooling between int8 layers --
_NOT_KERAS_LAYERS["QuantizedMaxPooling2D"] = _NOT_KERAS_LAYERS["QuantizedDense"]


def _keras_nested_spec(spec):
    """A wrapped layer's ``{"class_name", "config"}`` from pynn's get_config, as Keras
    serializes it."""
    cls = LAYERS.get(spec.get("class_name"))
    if cls is None:
        raise ValueError(f"save: a wrapped layer of class {spec.get('class_name')!r} cannot be "
                         f"written to a Keras file")
    return _keras_layer_spec(cls.from_config(dict(spec["config"])), with_build=False)


def _keras_layer_spec(layer, with_build=True):
    cls = type(layer).__name__
    if isinstance(layer, Model):
        return keras_model_spec(layer)
    if _keras_op_spec(layer) is not None:  # applications: Keras's op nodes
        return _keras_op_spec(layer)
    if cls in _NOT_KERAS_LAYERS or LAYERS.get(cls) is not type(layer):
        why = _NOT_KERAS_LAYERS.get(cls, "it is a custom layer, which Keras could open only "
                                         "with its Python class")
        raise ValueError(f"save: layer '{layer.name}' ({cls}) cannot be written to a Keras "
                         f"file: {why}. Save the model as .pynn instead")
    if cls == "InputLayer":
        config = layer.get_config()
        return {"module": "keras.layers", "class_name": "InputLayer",
                "config": {"batch_shape": [config.get("batch_size")] + list(config["shape"]),
                           "dtype": config.get("dtype"), "sparse": False, "name": layer.name},
                "registered_name": None}
    spec = {"module": "keras.layers", "class_name": cls, "config": _keras_layer_config(layer),
            "registered_name": None}
    if cls in _KERAS_APPLICATION_LAYERS:  # -- applications (branch appsB) --
        spec.update(module=_KERAS_APPLICATION_LAYERS[cls], registered_name=cls)
    if layer.built and with_build:
        spec["build_config"] = {"input_shape": _json_shape(layer.input_shape)}
    if cls in _SCORE_ATTENTION:
        spec["config"].pop("call_options", None)   # Keras keeps them in the nodes
    if cls in _HEADS_ATTENTION:
        spec["config"].pop("call_options", None)   # Keras keeps them in the nodes
        if layer.built and with_build:
            shapes = [_json_shape(s) for s in layer.input_shape]
            names = ["query_shape", "value_shape"] + (
                ["key_shape"] if layer._call_options and layer._call_options.key else [])
            spec["build_config"] = {"shapes_dict": dict(zip(names, shapes))}
    return spec


def _keras_call(node, node_index):
    """Keras 3's inbound node of one pynn node."""
    layer = node.layer
    if _keras_op_spec(layer) is not None:  # applications: an op node's operands in place
        return {"args": [_tensor(node.inputs[a["tensor"]], node_index) if isinstance(a, dict)
                         else a for a in layer.op_args], "kwargs": {}}
    if type(layer).__name__ in _HEADS_ATTENTION:
        options = layer._call_options
        tensors = [_tensor(t, node_index) for t in node.inputs]
        kwargs = {}
        rest = tensors[2:]
        for name in _ATTENTION_TENSORS:
            if getattr(options, name):
                kwargs[name] = rest.pop(0)
        for name in _ATTENTION_FLAGS:
            if getattr(options, name):
                kwargs[name] = True
        return {"args": tensors[:2], "kwargs": kwargs}
    kwargs = {}
    if type(layer).__name__ in _SCORE_ATTENTION and layer._call_options is not None:
        kwargs = {k: True for k, v in layer._call_options.as_dict().items() if v}
    return {"args": [[_tensor(t, node_index) for t in node.inputs] if node.several
                     else _tensor(node.inputs[0], node_index)], "kwargs": kwargs}


def _tensor(t, node_index):
    return {"class_name": "__keras_tensor__",
            "config": {"shape": _json_shape(t.shape), "dtype": t.dtype,
                       "keras_history": [t.node.layer.name, node_index[id(t.node)], t.index]}}


def _structure(keys, refs):
    if keys is None:
        return refs[0]
    if all(isinstance(k, int) for k in keys):
        return list(refs)
    return dict(zip(keys, refs))


def keras_model_spec(model):
    """Keras 3's serialized form of a pynn Sequential or functional model."""
    if type(model) not in (Model, Sequential):
        raise ValueError(f"save: model '{model.name}' is a subclass of Model "
                         f"({type(model).__name__}); a Keras file can hold only Sequential and "
                         f"functional models. Save it as .pynn, or its weights as .weights.h5")
    if not model.built:
        raise ValueError(f"save: model '{model.name}' is not built yet; train it or give it an "
                         f"Input first")
    build_config = {"input_shape": _json_shape(model.input_shape)}
    if isinstance(model, Sequential):
        input_spec = {"module": "keras.layers", "class_name": "InputLayer",
                      "config": {"batch_shape": _json_shape(model.input_shape),
                                 "dtype": model.layers[0].dtype if model.layers else "float32",
                                 "sparse": False, "name": f"{model.name}_input"},
                      "registered_name": None}
        return {"module": "keras", "class_name": "Sequential",
                "config": {"name": model.name, "trainable": model.trainable,
                           "dtype": _dtype_policy(model.layers[0].dtype if model.layers
                                                  else "float32"),
                           "layers": [input_spec] + [_keras_layer_spec(layer)
                                                     for layer in model.layers],
                           "build_input_shape": build_config["input_shape"]},
                "registered_name": None, "build_config": build_config}
    graph = model._graph
    node_index, counts, calls = {}, {}, {}
    for node in graph.nodes:
        node_index[id(node)] = counts.get(id(node.layer), 0)
        counts[id(node.layer)] = node_index[id(node)] + 1
        calls.setdefault(id(node.layer), []).append(node)
    for t in graph.inputs:
        node_index.setdefault(id(t.node), 0)
    layers = []
    for layer in model.layers:
        spec = _keras_layer_spec(layer)
        spec["name"] = layer.name
        spec["inbound_nodes"] = [_keras_call(node, node_index)
                                 for node in calls.get(id(layer), []) if not node.is_input]
        layers.append(spec)

    def ref(t):
        return [t.node.layer.name, node_index[id(t.node)], t.index]
    return {"module": "keras.src.models.functional", "class_name": "Functional",
            "config": {"name": model.name, "trainable": model.trainable, "layers": layers,
                       "input_layers": _structure(model._input_keys,
                                                  [ref(t) for t in graph.inputs]),
                       "output_layers": _structure(model._output_keys,
                                                   [ref(t) for t in graph.outputs])},
            "registered_name": "Functional", "build_config": build_config}


def _weights_h5_bytes(h5py, model, optimizer_vars=None):
    b = backend.current()
    buf = io.BytesIO()
    with h5py.File(buf, "w") as h5:
        h5.create_group("layers")
        for path, name, variables in _var_groups(model, ""):
            group = h5.require_group(path)
            group.attrs["name"] = name
            for i, var in enumerate(variables):
                group.create_dataset(str(i), data=np.asarray(b.to_numpy(var.value)))
        if optimizer_vars is not None:
            group = h5.require_group("optimizer/vars")
            for i, value in enumerate(optimizer_vars):
                group.create_dataset(str(i), data=value)
            if type(model.optimizer).__name__ == "LossScaleOptimizer":
                # api: Keras also keeps the inner optimizer's own variables under its name
                group = h5.require_group("optimizer/inner_optimizer/vars")
                for i, value in enumerate(optimizer_vars[4:]):
                    group.create_dataset(str(i), data=value)
    return buf.getvalue()


# -- compile state: Keras 3 keeps compile()'s arguments in config.json ("compile_config") and
# the optimizer's variables in model.weights.h5 ("optimizer/vars/<i>"), so a loaded model
# trains on where it stopped. The variables' order (keras/src/optimizers/*.py build(), Keras
# 3.15): iterations, the learning rate unless a schedule gives it, then group by group every
# trainable variable's slots of the group, and Nadam's running product of its momentum
# schedule last.
_KERAS_SLOT_GROUPS = {
    "SGD": [("momentum",)], "Adam": [("momentum", "velocity"), ("velocity_hat",)],
    "AdamW": [("momentum", "velocity"), ("velocity_hat",)],
    "RMSprop": [("velocity",), ("momentum",), ("average_gradient",)],
    "Adagrad": [("accumulator",)], "Nadam": [("momentum", "velocity")],
    "Adamax": [("momentum", "norm")],
    "Adadelta": [("accumulated_grad", "accumulated_delta_var")],
    "Ftrl": [("accumulator", "linear")], "Lion": [("momentum",)]}
# opt: Lamb, Adafactor and Muon, one group each; a variable lists only the slots Keras gives it
# (Muon's velocity is its AdamW branch's; Adafactor's r and c are scalar placeholders below
# rank 2), see _variable_slot_shapes.
_KERAS_SLOT_GROUPS.update({"Lamb": [("momentum", "velocity")],
                           "Adafactor": [("r", "c", "velocity")],
                           "Muon": [("momentum", "velocity")]})
# misc: ScheduleFreeAdamW (its momentum is z, initialised to the variable)
_KERAS_SLOT_GROUPS.update({"ScheduleFreeAdamW": [("momentum", "velocity")]})
# Keras optimizer options pynn does not have, at the values that change nothing.
_KERAS_OPTIMIZER_DEFAULTS = {"use_ema": False, "ema_momentum": 0.99,
                             "ema_overwrite_frequency": None, "loss_scale_factor": None,
                             "gradient_accumulation_steps": None}
# ... and loss / metric options, likewise (a metric's dtype is its variables', float32).
_KERAS_OBJECT_DEFAULTS = {"reduction": ("sum_over_batch_size",), "dtype": (None, "float32"),
                          "ignore_class": (None,)}


def _keras_objects(spec, module):
    """pynn's serialized compile arguments with Keras's ``module`` / ``registered_name``
    keys (a schedule inside an optimizer gets its own module)."""
    if isinstance(spec, list):
        return [_keras_objects(v, module) for v in spec]
    if isinstance(spec, dict) and "class_name" not in spec:
        return {k: _keras_objects(v, module) for k, v in spec.items()}
    if not isinstance(spec, dict):
        return spec
    config = dict(spec["config"])
    if module == "keras.optimizers" and spec["class_name"] in _WRAPPING_OPTIMIZERS:
        return _keras_wrapping_optimizer(spec, config)  # api
    if module == "keras.optimizers":
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = _keras_objects(config["learning_rate"],
                                                     "keras.optimizers.schedules")
        # api: the EMA arguments pynn's config carries (when set) win over the defaults
        config = {**config, **_KERAS_OPTIMIZER_DEFAULTS, **{
            k: config[k] for k in _EMA_ARGUMENTS if k in config}}
    return {"module": module, "class_name": spec["class_name"], "config": config,
            "registered_name": None}


def _pynn_objects(spec, module, where):
    """Keras's serialized compile arguments as pynn takes them: ``module`` and
    ``registered_name`` dropped, options pynn lacks dropped where they hold Keras's defaults
    (any other value is refused by name)."""
    if isinstance(spec, list):
        return [_pynn_objects(v, module, where) for v in spec]
    if isinstance(spec, dict) and "class_name" not in spec:
        return {k: _pynn_objects(v, module, where) for k, v in spec.items()}
    if not isinstance(spec, dict):
        return spec
    config = dict(spec.get("config") or {})
    if module == "keras.optimizers" and spec.get("class_name") in _WRAPPING_OPTIMIZERS:
        return _pynn_wrapping_optimizer(spec, config, where)  # api
    defaults = ({k: (v,) for k, v in _KERAS_OPTIMIZER_DEFAULTS.items()
                 if k not in _EMA_ARGUMENTS}  # api: pynn's optimizers take Keras's EMA
                if module == "keras.optimizers" else _KERAS_OBJECT_DEFAULTS)
    for key, allowed in defaults.items():
        if key in config:
            value = config.pop(key)
            if value not in allowed:
                raise ValueError(f"{spec['class_name']}: {key}={value!r} is not supported "
                                 f"(pynn takes {key}={allowed[0]!r})")
    if module == "keras.optimizers" and isinstance(config.get("learning_rate"), dict):
        config["learning_rate"] = _pynn_objects(config["learning_rate"],
                                                "keras.optimizers.schedules", where)
    return {"class_name": spec["class_name"], "config": config}


def _instances(spec, get):
    """Serialized losses or metrics ({"class_name", "config"}) as objects, inside lists and
    per-output dicts: compile() reads a dict as one entry per output (Keras writes a loss
    object there whenever compile() was given one, or loaded one)."""
    if isinstance(spec, list):
        return [_instances(v, get) for v in spec]
    if isinstance(spec, dict) and "class_name" in spec:
        return get(spec)
    if isinstance(spec, dict):
        return {k: _instances(v, get) for k, v in spec.items()}
    return spec


def _keras_compile_config(model):
    """compile()'s arguments in Keras 3's compile_config layout; None when not compiled."""
    if not getattr(model, "compiled", False) or model.optimizer is None:
        return None
    config = model._compile_config()
    return {"optimizer": _keras_objects(config["optimizer"], "keras.optimizers"),
            "loss": _keras_objects(config["loss"], "keras.losses"),
            "loss_weights": config.get("loss_weights"),
            "metrics": _keras_objects(config.get("metrics"), "keras.metrics"),
            "weighted_metrics": _keras_objects(config.get("weighted_metrics"),
                                               "keras.metrics"),
            "run_eagerly": False, "steps_per_execution": 1, "jit_compile": False}


def _slot_order(opt):
    """[slot name per group] in Keras's variable order for ``opt``'s own slots."""
    names = [n for n, _ in opt._slot_specs()]
    groups = [[n for n in group if n in names]
              for group in _KERAS_SLOT_GROUPS[type(opt).__name__]]
    return [g for g in groups if g]


def _variable_slot_shapes(opt, variable):
    """{slot name: shape} of ``variable``'s slots (opt: optimizers whose slots depend on the
    variable say so through ``_variable_slot_specs``; the others shape every slot like it)."""
    specs = getattr(opt, "_variable_slot_specs", None)
    if specs is not None:
        return {name: shape for name, shape, _ in specs(variable)}
    return {name: tuple(variable.shape) for name, _ in opt._slot_specs()}


def _keras_optimizer_vars(model):
    """The optimizer's variables as Keras 3 lists them (None: an optimizer Keras lacks)."""
    opt = model.optimizer
    if type(opt).__name__ == "LossScaleOptimizer":  # api: its own four, then the inner's
        inner = _keras_optimizer_vars(_OptimizerOf(model, opt.inner_optimizer))
        return None if inner is None else [
            np.asarray(0, np.int64), np.asarray(0.0, np.float32),
            np.asarray(opt.step_counter, np.int64),
            np.asarray(opt.dynamic_scale, np.float32)] + inner
    if type(opt).__name__ not in _KERAS_SLOT_GROUPS:
        return None
    from pynn.schedules import LearningRateSchedule

    state = opt.get_state()
    inits = dict(opt._slot_specs())
    out = [np.asarray(opt.iterations, np.int64)]
    if not isinstance(opt._learning_rate, LearningRateSchedule):
        out.append(np.asarray(opt._learning_rate, np.float32))
    out += _keras_ema_vars(opt, model.trainable_weights)  # api: Keras's "average" variables
    for group in _slot_order(opt):
        for v in model.trainable_weights:
            shapes = _variable_slot_shapes(opt, v)
            for name in (n for n in group if n in shapes):
                value = state["slots"].get(f"{v.path}/{name}")
                if value is None and inits[name] is None:
                    value = v.numpy()   # misc: ScheduleFreeAdamW's z starts as its variable
                out.append(np.full(shapes[name], inits[name], np.float32) if value is None
                           else np.asarray(value, np.float32))
    if type(opt).__name__ == "Nadam":
        out.append(np.asarray(opt._u_product, np.float32))
    return out


def _restore_keras_compile(model, doc, h5, where):
    """compile() from the file's compile_config, then the optimizer's variables where the
    file has them. A compile_config pynn cannot honour leaves the model uncompiled, with a
    warning naming why (Keras's loader does the same)."""
    import warnings

    from pynn import losses, metrics, optimizers

    config = doc.get("compile_config")
    if not isinstance(config, dict) or not config:  # an uncompiled model's is {}
        return
    try:
        model.compile(
            optimizer=optimizers.get(_pynn_objects(config["optimizer"], "keras.optimizers",
                                                   where)),
            loss=_instances(_pynn_objects(config.get("loss"), "keras.losses", where),
                            losses.get),
            metrics=_instances(_pynn_objects(config.get("metrics"), "keras.metrics", where),
                               metrics.get),
            loss_weights=config.get("loss_weights"),
            weighted_metrics=_instances(_pynn_objects(config.get("weighted_metrics"),
                                                      "keras.metrics", where), metrics.get))
    except (ValueError, TypeError, KeyError) as exc:
        model.compiled = False
        warnings.warn(f"{where.verb}: {where.path}: the model loads uncompiled: its compile "
                      f"config cannot be honoured ({exc})", stacklevel=3)
        return
    group = h5.get("optimizer/vars") if h5 is not None else None
    if group is None:
        return
    opt = model.optimizer
    values = None
    if type(opt).__name__ == "LossScaleOptimizer" and len(group) > 4:
        # api: Keras's LossScaleOptimizer: iteration, learning_rate, step_counter,
        # dynamic_scale, then its inner optimizer's variables
        values = [np.asarray(group[str(i)]) for i in range(len(group))]
        opt.step_counter, opt.dynamic_scale = int(values[2]), float(values[3])
        opt, values = opt.inner_optimizer, values[4:]
    if type(opt).__name__ not in _KERAS_SLOT_GROUPS:
        return
    if values is None:
        values = [np.asarray(group[str(i)]) for i in range(len(group))]
    from pynn.schedules import LearningRateSchedule

    variables = model.trainable_weights
    order = _slot_order(opt)
    lr_var = not isinstance(opt._learning_rate, LearningRateSchedule)
    ema = len(variables) if getattr(opt, "use_ema", False) else 0  # api: the averages
    want = 1 + lr_var + ema + sum(len([n for n in g if n in _variable_slot_shapes(opt, v)])
                                  for g in order for v in variables) + (
        type(opt).__name__ == "Nadam")
    if len(values) != want or any(k not in group for k in map(str, range(len(values)))):
        warnings.warn(f"{where.verb}: {where.path}: the optimizer starts afresh: the file "
                      f"holds {len(values)} optimizer variables, {type(opt).__name__} over "
                      f"{len(variables)} trainable weights has {want}", stacklevel=3)
        return
    k = 1 + lr_var + ema
    slots = {}
    for group_names in order:
        for v in variables:
            shapes = _variable_slot_shapes(opt, v)
            for name in (n for n in group_names if n in shapes):
                slots[f"{v.path}/{name}"] = values[k]
                k += 1
    opt.set_state({"iterations": int(values[0]), "slots": slots}, variables)
    if type(opt).__name__ == "Nadam":
        opt._u_product = float(values[-1])
    if ema:  # api
        _restore_ema(opt, variables, values[1 + lr_var:1 + lr_var + ema])


def save_keras(model, filepath):
    """``model`` as a Keras 3 ``.keras`` file: its architecture and weights, and when
    compiled compile()'s arguments and the optimizer's variables, as Keras writes them."""
    h5py = _h5py("save")
    spec = keras_model_spec(model)
    try:
        compile_config = _keras_compile_config(model)
    except (ValueError, TypeError) as exc:
        # a loss or schedule that is Python code: the model itself is still worth the file
        import warnings

        warnings.warn(f"save: {os.fspath(filepath)}: compile()'s arguments and the optimizer's "
                      f"state are not written ({exc}); the file loads uncompiled",
                      stacklevel=3)
        compile_config = None
    optimizer_vars = None
    if compile_config is not None:
        spec["compile_config"] = compile_config
        optimizer_vars = _keras_optimizer_vars(model)
    metadata = {"keras_version": KERAS_VERSION,
                "date_saved": time.strftime("%Y-%m-%d@%H:%M:%S")}
    saving._atomic_write_zip(filepath, [
        (METADATA_NAME, json.dumps(metadata).encode()),
        (CONFIG_NAME, json.dumps(spec).encode()),
        (WEIGHTS_NAME, _weights_h5_bytes(h5py, model, optimizer_vars))])


def _write_legacy_weights(h5py, group, model):
    """Keras 2's layout, which Keras 3 still reads from ``.h5`` names: ``layer_names``, and per
    layer its ``weight_names`` naming datasets below the layer's group."""
    b = backend.current()
    group.attrs["layer_names"] = [layer.name.encode() for layer in model.layers]
    group.attrs["backend"] = "pynn"
    group.attrs["keras_version"] = KERAS_VERSION
    for layer in model.layers:
        sub = group.create_group(layer.name)
        sub.attrs["weight_names"] = [v.path.encode() for v in layer.weights]
        for v in layer.weights:
            sub.create_dataset(v.path, data=np.asarray(b.to_numpy(v.value)))
    group.create_group("top_level_model_weights").attrs["weight_names"] = np.array([], "S1")


def _legacy_h5_bytes(h5py, model, with_config):
    buf = io.BytesIO()
    with h5py.File(buf, "w") as h5:
        if with_config:
            h5.attrs["model_config"] = json.dumps(keras_model_spec(model))
            h5.attrs["keras_version"] = KERAS_VERSION
            h5.attrs["backend"] = "pynn"
            _write_legacy_weights(h5py, h5.create_group("model_weights"), model)
        else:
            _write_legacy_weights(h5py, h5, model)
    return buf.getvalue()


def _atomic_write(filepath, data):
    filepath = os.fspath(filepath)
    tmp = os.path.join(os.path.dirname(os.path.abspath(filepath)),
                       f".{os.path.basename(filepath)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, filepath)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_h5(model, filepath):
    """``model`` as a legacy (Keras 2 layout) ``.h5`` model file, which Keras 3 also loads."""
    _atomic_write(filepath, _legacy_h5_bytes(_h5py("save"), model, with_config=True))


def save_weights(model, filepath):
    """``model``'s weights: Keras 3's layout for ``.weights.h5`` names, Keras 2's for other
    ``.h5`` names (as Keras 3 reads them)."""
    h5py = _h5py("save_weights")
    if not model.built:
        raise ValueError(f"save_weights: model '{model.name}' is not built yet")
    if os.fspath(filepath).lower().endswith(".weights.h5"):
        data = _weights_h5_bytes(h5py, model)
    else:
        data = _legacy_h5_bytes(h5py, model, with_config=False)
    _atomic_write(filepath, data)

def model_to_json(model, **kwargs):
    """Model.to_json: Keras 3's serialized form of the architecture, as JSON text."""
    return json.dumps(keras_model_spec(model), **kwargs)


def model_from_json(text):
    """pynn.models.model_from_json on the encoded text."""
    where = _Where("model_from_json", "<json string>")
    return model_from_keras_config(_parse_json(text, where, "json"), where)


saving.KERAS_IO.update(save=save_keras, save_h5=save_h5, save_weights=save_weights,
                       load_keras=load_keras, load_h5=load_h5, load_weights=load_weights,
                       to_json=model_to_json, from_json=model_from_json)


# -- api: Keras 3's EMA variables, LossScaleOptimizer and MultiOptimizer in .keras files -------
_EMA_ARGUMENTS = ("use_ema", "ema_momentum", "ema_overwrite_frequency")
_WRAPPING_OPTIMIZERS = ("LossScaleOptimizer", "MultiOptimizer")


class _OptimizerOf:
    """A model seen with another optimizer (a LossScaleOptimizer's inner one)."""

    def __init__(self, model, optimizer):
        self.optimizer = optimizer
        self.trainable_weights = model.trainable_weights


def _keras_ema_vars(opt, variables):
    """Keras's "<variable>_average" optimizer variables (zeros before the first step, as
    Keras builds them), after iteration and learning_rate."""
    if not getattr(opt, "use_ema", False):
        return []
    be = backend.current()
    return [np.asarray(be.to_numpy(opt._ema[v.path]), np.float32) if v.path in opt._ema
            else np.zeros(tuple(v.shape), np.float32) for v in variables]


def _restore_ema(opt, variables, averages):
    be = backend.current()
    opt._ema, opt._ema_variables = {}, []
    for v, average in zip(variables, averages):
        opt._ema[v.path] = be.asarray(np.asarray(average, np.float32), v.value.dtype)
        opt._ema_variables.append(v)


def _keras_wrapping_optimizer(spec, config):
    """A LossScaleOptimizer's inner optimizer, a MultiOptimizer's OptimizerMap, in Keras's
    nested form (these two take none of the base optimizer's defaults)."""
    name = spec["class_name"]
    if name == "LossScaleOptimizer":
        config["inner_optimizer"] = _keras_objects(config["inner_optimizer"],
                                                   "keras.optimizers")
    else:
        mapping = dict(config["optimizer_map"]["config"])
        mapping["default_optimizer"] = _keras_objects(mapping["default_optimizer"],
                                                      "keras.optimizers")
        mapping["optimizer_map"] = {k: _keras_objects(v, "keras.optimizers")
                                    for k, v in (mapping.get("optimizer_map") or {}).items()}
        config["optimizer_map"] = {"module": "keras.optimizers", "class_name": "OptimizerMap",
                                   "config": mapping, "registered_name": None}
    return {"module": "keras.optimizers", "class_name": name, "config": config,
            "registered_name": None}


def _pynn_wrapping_optimizer(spec, config, where):
    name = spec["class_name"]
    if name == "LossScaleOptimizer":
        config["inner_optimizer"] = _pynn_objects(config["inner_optimizer"], "keras.optimizers",
                                                  where)
    else:
        mapping = dict((config.get("optimizer_map") or {}).get("config") or {})
        mapping["default_optimizer"] = _pynn_objects(mapping.get("default_optimizer"),
                                                     "keras.optimizers", where)
        mapping["optimizer_map"] = {k: _pynn_objects(v, "keras.optimizers", where)
                                    for k, v in (mapping.get("optimizer_map") or {}).items()}
        config["optimizer_map"] = {"class_name": "OptimizerMap", "config": mapping}
        if config.get("loss_scale_factor") is None:
            config.pop("loss_scale_factor", None)
    return {"class_name": name, "config": config}
