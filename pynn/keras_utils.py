"""Keras 3's ``keras.utils`` / ``keras.saving`` / ``keras.backend`` helpers that pynn lacked.

They need the layers, losses, metrics and optimizers, which import ``pynn.utils``,
``pynn.saving`` and ``pynn.backend``: so those modules cannot import these, and this module
installs them there instead (the end of the file), once ``import pynn`` loads it.

Custom objects go through pynn's one registry (``pynn._registry``): Keras's
``register_keras_serializable``, ``custom_object_scope`` and ``get_custom_objects`` are its
names for what ``pynn.saving.register_serializable`` already does.
"""

import json
import logging
import os
import sys
import time

import numpy as np

from pynn import _config, _registry
from pynn._registry import custom_object_scope, get_registered_name  # noqa: F401
from pynn._registry import register_serializable as register_keras_serializable  # noqa: F401
from pynn.data import PyDataset

__all__ = [
    "Config", "CustomObjectScope", "Progbar", "Sequence", "audio_dataset_from_directory",
    "clear_session", "custom_object_scope", "deserialize_keras_object", "get_custom_objects",
    "get_registered_name", "get_registered_object", "get_source_inputs", "get_uid",
    "is_float_dtype", "is_int_dtype", "is_keras_tensor", "normalize", "pack_x_y_sample_weight",
    "result_type",
    "register_keras_serializable", "serialize_keras_object", "split_dataset",
    "standardize_dtype", "text_dataset_from_directory", "unpack_x_y_sample_weight",
]

CustomObjectScope = custom_object_scope
Sequence = PyDataset  # Keras 3 keeps keras.utils.Sequence as PyDataset's old name


def get_custom_objects():
    """The live registry of custom objects: ``get_custom_objects()["MyLayer"] = MyLayer``
    makes a file's "MyLayer" load, as in Keras."""
    return _registry._REGISTERED


def get_registered_object(name, custom_objects=None, module_objects=None):
    """The class or function registered (or given in a scope, ``custom_objects`` or
    ``module_objects``) under ``name``; None when nothing is."""
    for scope in reversed(_registry._custom_scopes):
        if name in scope:
            return scope[name]
    if name in _registry._REGISTERED:
        return _registry._REGISTERED[name]
    if custom_objects and name in custom_objects:
        return custom_objects[name]
    if module_objects and name in module_objects:
        return module_objects[name]
    return None


# -- keras.backend's names ------------------------------------------------------------------------
_uids = {}


def get_uid(prefix=""):
    """1, 2, 3, ... per ``prefix`` (Keras's counter for default names)."""
    _uids[prefix] = _uids.get(prefix, 0) + 1
    return _uids[prefix]


def clear_session(free_memory=True):
    """Forget the names handed out so far (the next Dense is "dense" again) and, with
    ``free_memory``, return pynn's recycled host blocks; models already built keep working."""
    from pynn.layers import base
    base._name_counters.clear()
    _uids.clear()
    if free_memory:
        import gc
        gc.collect()


def is_keras_tensor(x):
    """Whether ``x`` is a symbolic tensor of a functional model (``pynn.Input`` and what
    layers make of it)."""
    from pynn.layers.symbolic import KerasTensor
    return isinstance(x, KerasTensor)


# Keras's names of Python types on its non-TensorFlow backends
_PYTHON_DTYPES = {bool: "bool", int: "int32", float: "float32", str: "string", "int": "int32",
                  complex: "complex64"}
_ALLOWED_DTYPES = {"float16", "float32", "float64", "uint8", "uint16", "uint32", "uint64",
                   "int8", "int16", "int32", "int64", "bfloat16", "bool", "string",
                   "complex64", "complex128", "float8_e4m3fn", "float8_e5m2"}


def standardize_dtype(dtype):
    """Keras's dtype names: None is floatx, Python types Keras's names for them (int is
    int32), NumPy dtypes and types their names; anything else is an error."""
    if dtype is None:
        return _config.floatx()
    try:
        dtype = _PYTHON_DTYPES.get(dtype, dtype)
    except TypeError:  # unhashable
        pass
    if hasattr(dtype, "name"):
        dtype = dtype.name
    elif hasattr(dtype, "__name__"):
        dtype = dtype.__name__
    if dtype not in _ALLOWED_DTYPES:
        raise ValueError(f"Invalid dtype: {dtype!r}")
    return dtype


def is_float_dtype(dtype):
    name = standardize_dtype(dtype)
    return name.startswith(("float", "bfloat"))


def is_int_dtype(dtype):
    return standardize_dtype(dtype).startswith(("int", "uint"))


# -- data helpers ---------------------------------------------------------------------------------
def pack_x_y_sample_weight(x, y=None, sample_weight=None):
    if y is None:
        return x if not isinstance(x, (tuple, list)) else (x,)
    if sample_weight is None:
        return (x, y)
    return (x, y, sample_weight)


def unpack_x_y_sample_weight(data):
    if isinstance(data, list):
        data = tuple(data)
    if not isinstance(data, tuple):
        return (data, None, None)
    if len(data) in (1, 2, 3):
        return tuple(data) + (None,) * (3 - len(data))
    raise ValueError(f"Data is expected to be in format `x`, `(x,)`, `(x, y)`, or "
                     f"`(x, y, sample_weight)`, found: {data}")


def normalize(x, axis=-1, order=2):
    """Keras's: a NumPy array divided by its ``order``-norm along ``axis`` (a zero norm left
    as 1; Keras 3.15 reads ``axis=0`` as -1 here, and so does this), a tensor through
    ``pynn.ops.normalize``."""
    if isinstance(x, np.ndarray):
        norm = np.atleast_1d(np.linalg.norm(x, order, axis))
        norm[norm == 0] = 1
        axis = axis or -1
        return x / np.expand_dims(norm, axis)
    from pynn import ops
    return ops.normalize(x, axis=axis, order=order)


def get_source_inputs(tensor):
    """The ``pynn.Input`` tensors a symbolic tensor was computed from (the tensor itself when
    it is one; anything not symbolic as it is)."""
    from pynn.layers.symbolic import KerasTensor
    if not isinstance(tensor, KerasTensor):
        return tensor
    sources, stack, seen = [], [tensor], set()
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        parents = [p for p in _parents(t) if isinstance(p, KerasTensor)]
        if not parents:
            sources.append(t)
        stack.extend(reversed(parents))
    return sources


def _parents(t):
    node = getattr(t, "node", None) or getattr(t, "_node", None)
    if node is None:
        return []
    inputs = getattr(node, "inputs", None)
    if inputs is None:
        inputs = getattr(node, "input_tensors", [])
    from pynn import tree
    return tree.flatten(inputs)


def _split_sizes(left_size, right_size, total):
    """Keras's _rescale_dataset_split_sizes: ints are counts, floats fractions, one side may
    be None (the rest)."""
    for name, v in (("left_size", left_size), ("right_size", right_size)):
        if v is not None and type(v) not in (int, float):
            raise TypeError(f"Invalid `{name}` Type. Expected: int or float or None, "
                            f"Received: type({name})={type(v)}.")
    if left_size is None and right_size is None:
        left_size = 0.5  # Keras: both None splits in half
    if left_size == 0 and right_size == 0:
        raise ValueError("Both `left_size` and `right_size` are zero. At least one of the "
                         "split sizes must be non-zero.")
    for name, v in (("left_size", left_size), ("right_size", right_size)):
        if (type(v) is int and (v <= 0 or v >= total)) or (
                type(v) is float and (v <= 0 or v >= 1)):
            raise ValueError(f"`{name}` should be either a positive integer smaller than "
                             f"{total}, or a float within the range `[0, 1]`. Received: "
                             f"{name}={v}")
    if type(left_size) is float and type(right_size) is float and left_size + right_size > 1:
        raise ValueError("The sum of `left_size` and `right_size` is greater than 1. It must "
                         "be less than or equal to 1.")
    left = round(left_size * total) if type(left_size) is float else left_size
    right = round(right_size * total) if type(right_size) is float else right_size
    left = total - right if left is None else left
    right = total - left if right is None else right
    if left + right > total:
        raise ValueError(f"The sum of `left_size` and `right_size` should be smaller than the "
                         f"{total}. Received: left_size + right_size = {left + right}")
    if left == 0 or right == 0:
        raise ValueError(f"With `dataset` of length={total}, `left_size`={left} and "
                         f"`right_size`={right}: one side of the split would be empty")
    return int(left), int(right)


def split_dataset(dataset, left_size=None, right_size=None, shuffle=False, seed=None,
                  preferred_backend=None):
    """Keras's split of an array, or a tuple/list/dict of arrays of one length, into
    (left, right) of the same structure: the first ``left_size`` samples and the last
    ``right_size`` (after one shuffle by ``np.random.RandomState(seed)`` as Keras's).
    pynn has no tf.data: the parts are arrays, which fit takes as they are."""
    from pynn import tree
    leaves = [np.asarray(a) for a in tree.flatten(dataset)]
    if not leaves or any(a.ndim == 0 for a in leaves):
        raise ValueError("split_dataset: expected an array or a tuple, list or dict of arrays "
                         "with a sample axis")
    total = len(leaves[0])
    if any(len(a) != total for a in leaves):
        raise ValueError(f"split_dataset: the arrays must have one length, got "
                         f"{[len(a) for a in leaves]}")
    left, right = _split_sizes(left_size, right_size, total)
    order = np.arange(total)
    if shuffle:
        np.random.RandomState(np.random.randint(2**31) if seed is None else seed).shuffle(order)
    left_idx, right_idx = order[:left], order[total - right:]
    return (tree.pack_sequence_as(dataset, [a[left_idx] for a in leaves]),
            tree.pack_sequence_as(dataset, [a[right_idx] for a in leaves]))


# -- Config ---------------------------------------------------------------------------------------
class Config:
    """Keras's attribute dictionary: ``config.lr = 0.1`` or ``config["lr"]``; ``freeze()``
    makes it read-only, ``as_dict()`` / ``to_json()`` give it back."""

    def __init__(self, **kwargs):
        self._config = kwargs
        self._frozen = False

    @property
    def frozen(self):
        return self._frozen

    def freeze(self):
        self._frozen = True

    def unfreeze(self):
        self._frozen = False

    def _check(self, name):
        if getattr(self, "_frozen", False):
            raise AttributeError(f"Cannot set attribute {name!r}: this Config is frozen "
                                 f"(call unfreeze() first)")

    def __setattr__(self, name, value):
        if name in ("_config", "_frozen"):
            object.__setattr__(self, name, value)
            return
        self._check(name)
        self._config[name] = value

    def __getattr__(self, name):
        if name.startswith("__") or name in ("_config", "_frozen"):
            raise AttributeError(name)
        try:
            return self._config[name]
        except KeyError:
            raise AttributeError(f"Unknown attribute: {name!r}") from None

    def __setitem__(self, key, value):
        self._check(key)
        self._config[key] = value

    def __getitem__(self, key):
        return self._config[key]

    def __delitem__(self, key):
        self._check(key)
        del self._config[key]

    def __contains__(self, key):
        return key in self._config

    def __len__(self):
        return len(self._config)

    def __iter__(self):
        return iter(self._config)

    def keys(self):
        return self._config.keys()

    def values(self):
        return self._config.values()

    def items(self):
        return self._config.items()

    def get(self, key, default=None):
        return self._config.get(key, default)

    def update(self, *args, **kwargs):
        self._check("update")
        self._config.update(*args, **kwargs)

    def pop(self, *args):
        self._check("pop")
        return self._config.pop(*args)

    def as_dict(self):
        return dict(self._config)

    def to_json(self):
        return json.dumps(self._config)

    def __repr__(self):
        return f"<Config {self._config}>"


# -- Progbar --------------------------------------------------------------------------------------
class Progbar:
    """Keras's ``keras.utils.Progbar``: ``update(current, values)`` / ``add(n, values)`` with
    ``values`` a list of ``(name, value)``; each value is shown as its mean over the steps
    seen (weighted by the steps each update covers), ``stateful_metrics`` as given.
    verbose 1 redraws a bar (at most every ``interval`` seconds), 2 writes the final line;
    with ``pynn.config.disable_interactive_logging()`` lines go to the "pynn" logger."""

    def __init__(self, target, width=20, verbose=1, interval=0.05, stateful_metrics=None,
                 stateless_metrics=None, unit_name="step"):
        if target is not None and (isinstance(target, bool) or not isinstance(
                target, (int, np.integer)) or target < 0):
            raise ValueError(f"Progbar: target must be a non-negative int or None, got "
                             f"{target!r}")
        if verbose not in (0, 1, 2):
            raise ValueError(f"Progbar: verbose must be 0, 1 or 2, got {verbose!r}")
        self.target = target
        self.width = int(width)
        self.verbose = verbose
        self.interval = float(interval)
        self.unit_name = unit_name
        self.stateful_metrics = set(stateful_metrics or ())
        self.stateless_metrics = set(stateless_metrics or ())
        self._dynamic_display = (hasattr(sys.stdout, "isatty") and sys.stdout.isatty()) or \
            "ipykernel" in sys.modules
        self._seen_so_far = 0
        self._values = {}
        self._values_order = []
        self._start = time.time()
        self._last_update = 0.0
        self._prev_total_width = 0

    def _write(self, text):
        from pynn import config
        if config.is_interactive_logging_enabled():
            sys.stdout.write(text)
            sys.stdout.flush()
        elif text.strip():
            logging.getLogger("pynn").info(text.strip("\r\n"))

    def update(self, current, values=None, finalize=None):
        if finalize is None:
            finalize = self.target is not None and current >= self.target
        for name, value in values or []:
            if name not in self._values_order:
                self._values_order.append(name)
            if name in self.stateful_metrics or name in self.stateless_metrics:
                self._values[name] = [value, 1]
            else:
                base = max(current - self._seen_so_far, 1)
                total, count = self._values.get(name, [0.0, 0])
                self._values[name] = [total + float(np.mean(value)) * base, count + base]
        self._seen_so_far = current
        now = time.time()
        if self.verbose == 0:
            return
        if self.verbose == 1 and not finalize and now - self._last_update < self.interval:
            return
        if self.verbose == 2 and not finalize:
            return
        self._last_update = now
        elapsed = now - self._start
        line = self._bar(current) if self.verbose == 1 else ""
        per_unit = elapsed / current if current else 0.0
        if finalize or self.target is None:
            line += f" {_time_text(elapsed)} {_unit_text(per_unit, self.unit_name)}"
        else:
            eta = per_unit * (self.target - current)
            line += f" {_time_text(eta)} {_unit_text(per_unit, self.unit_name)}"
        for name in self._values_order:
            total, count = self._values[name]
            v = total / max(count, 1) if name not in self.stateful_metrics else total
            v = float(np.mean(v))
            line += f" - {name}: {v:.4f}" if abs(v) > 1e-3 else f" - {name}: {v:.4e}"
        if self.verbose == 2:
            self._write(line.strip() + "\n")
            return
        if self._dynamic_display:
            padding = " " * max(self._prev_total_width - len(line), 0)
            self._write("\r" + line + padding + ("\n" if finalize else ""))
        elif finalize:
            self._write(line + "\n")
        self._prev_total_width = len(line)

    def add(self, n, values=None):
        self.update(self._seen_so_far + n, values)

    def _bar(self, current):
        if self.target is None:
            return f"{current:>7}/Unknown"
        digits = len(str(self.target))
        done = int(self.width * current / self.target) if self.target else self.width
        done = min(done, self.width)
        return f"{current:>{digits}}/{self.target} " + "━" * done + " " * (self.width - done)


def _time_text(seconds):
    if seconds >= 3600:
        return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"
    if seconds >= 60:
        return f"{int(seconds // 60)}:{int(seconds % 60):02d}"
    return f"{int(seconds)}s"


def _unit_text(seconds, unit):
    if seconds >= 1 or seconds == 0:
        return f"{seconds:.0f}s/{unit}"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.0f}ms/{unit}"
    return f"{seconds * 1e6:.0f}us/{unit}"


# -- serialize_keras_object / deserialize_keras_object ---------------------------------------------
# pynn modules -> the Keras module a saved dict names (what keras.saving writes for the same
# class), and back
_KERAS_MODULES = (("pynn.layers", "keras.layers"), ("pynn.initializers", "keras.initializers"),
                  ("pynn.regularizers", "keras.regularizers"),
                  ("pynn.constraints", "keras.constraints"), ("pynn.losses", "keras.losses"),
                  ("pynn.metrics", "keras.metrics"), ("pynn.metric_functions", "keras.metrics"),
                  ("pynn.schedules", "keras.optimizers.schedules"),
                  ("pynn.optimizers", "keras.optimizers"), ("pynn.models", "keras.models"),
                  ("pynn.activations", "keras.activations"), ("pynn.random", "keras.random"))


def _keras_module(obj):
    module = getattr(obj, "__module__", "") or ""
    for pynn_name, keras_name in _KERAS_MODULES:
        if module == pynn_name or module.startswith(pynn_name + "."):
            return keras_name
    return module


def serialize_keras_object(obj):
    """Keras's saved form: ``{"module", "class_name", "config", "registered_name"}`` for an
    object with get_config, ``{"class_name": "function", "config": name, ...}`` for a
    function, ``__numpy__`` for arrays; plain values and containers as they are."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return {"class_name": "__numpy__", "config": {"value": obj.tolist(),
                                                      "dtype": obj.dtype.name}}
    if isinstance(obj, (list, tuple)):
        return type(obj)(serialize_keras_object(v) for v in obj)
    if isinstance(obj, dict):
        return {k: serialize_keras_object(v) for k, v in obj.items()}
    key = getattr(obj, "_pynn_serializable_name", None)
    if isinstance(obj, type):
        return {"module": _keras_module(obj), "class_name": "__type__",
                "config": key or obj.__name__, "registered_name": key}
    if callable(obj) and not hasattr(obj, "get_config"):
        if key is not None:
            return {"module": getattr(obj, "__module__", None), "class_name": "function",
                    "config": key, "registered_name": key}
        return {"module": "builtins", "class_name": "function", "config": obj.__name__,
                "registered_name": "function"}
    if not hasattr(obj, "get_config"):
        raise TypeError(f"serialize_keras_object: cannot serialize {obj!r}: it has no "
                        f"get_config()")
    type_key = getattr(type(obj), "_pynn_serializable_name", None)
    return {"module": _keras_module(type(obj)), "class_name": type(obj).__name__,
            "config": serialize_keras_object(obj.get_config()), "registered_name": type_key}


def _find_function(name, module):
    from pynn import activations, losses, metrics
    tables = {"keras.losses": (losses, metrics), "keras.metrics": (metrics, losses)}
    for mod in tables.get(module, (activations, losses, metrics)):
        fn = getattr(mod, name, None)
        if callable(fn) and not isinstance(fn, type):
            return fn
    return None


def _find_class(name, module):
    import importlib
    candidates = [pynn_name for pynn_name, keras_name in _KERAS_MODULES if keras_name == module]
    candidates += [p for p, _ in _KERAS_MODULES if p not in candidates]
    for pynn_name in candidates:
        mod = importlib.import_module(pynn_name)
        cls = getattr(mod, name, None)
        if isinstance(cls, type):
            return cls
    return None


def deserialize_keras_object(config, custom_objects=None, safe_mode=True, **kwargs):
    """The object a saved form describes: classes and functions come from pynn's modules,
    the registry, ``custom_objects`` or an open ``custom_object_scope``; never from code in
    the config (``safe_mode`` is always on). A string stays a string, as in Keras."""
    custom = dict(custom_objects or {})
    custom.update(kwargs.get("module_objects") or {})
    if config is None or isinstance(config, (bool, int, float)):
        return config
    if isinstance(config, str):
        return custom.get(config, config)
    if isinstance(config, (list, tuple)):
        return type(config)(deserialize_keras_object(v, custom) for v in config)
    if not isinstance(config, dict):
        raise TypeError(f"deserialize_keras_object: could not parse config {config!r}")
    if "class_name" not in config or "config" not in config:
        return {k: deserialize_keras_object(v, custom) for k, v in config.items()}
    class_name, inner = config["class_name"], config["config"]
    module = config.get("module")
    registered = config.get("registered_name")
    if class_name == "__numpy__":
        return np.array(inner["value"], dtype=inner["dtype"])
    if class_name == "__tuple__":
        return tuple(deserialize_keras_object(v, custom) for v in inner["value"])
    if class_name in ("function", "__type__"):
        name = inner if isinstance(inner, str) else registered
        found = custom.get(name) or get_registered_object(name)
        if found is None and class_name == "function":
            found = _find_function(str(name).split(">")[-1], module)
        if found is None and class_name == "__type__":
            found = _find_class(str(name).split(">")[-1], module)
        if found is None:
            raise ValueError(f"deserialize_keras_object: unknown {class_name[:8].strip('_')} "
                             f"{name!r}; register it (register_keras_serializable) or pass "
                             f"custom_objects")
        return found
    cls = None
    for key in (registered, class_name):
        if key:
            cls = custom.get(key) or get_registered_object(key)
            if cls is not None:
                break
    if cls is None:
        cls = _find_class(class_name, module)
    if cls is None:
        raise ValueError(f"deserialize_keras_object: unknown class {class_name!r} (module "
                         f"{module!r}); register it (register_keras_serializable) or pass "
                         f"custom_objects")
    with custom_object_scope(custom):
        inner = {k: _maybe_object(v, custom) for k, v in dict(inner).items()} \
            if isinstance(inner, dict) else inner
        if isinstance(inner, dict) and cls is _find_class(class_name, module):
            inner = _without_keras_only_arguments(cls, inner)
        return cls.from_config(inner)


def _without_keras_only_arguments(cls, config):
    """A Keras config of one of pynn's classes with the arguments pynn's class lacks dropped
    where they are off (None or False: input_axes=None of Keras's initializers); one that is
    set is an error naming it."""
    from pynn.interop.keras_files import _accepted_arguments
    accepted = _accepted_arguments(cls)
    if not accepted or "kwargs" in accepted:
        return config
    kept = {}
    for key, value in config.items():
        if key in accepted:
            kept[key] = value
        elif value is not None and value is not False:
            raise ValueError(f"deserialize_keras_object: {cls.__name__} {key}={value!r} is a "
                             f"Keras argument pynn's {cls.__name__} does not support")
    return kept


def _maybe_object(value, custom):
    """A nested saved object inside a config (an initializer of a layer's config): rebuilt;
    anything else kept."""
    if isinstance(value, dict) and "class_name" in value and "config" in value and (
            "module" in value or value["class_name"] in ("__numpy__", "__tuple__")):
        return deserialize_keras_object(value, custom)
    return value


# -- text and audio datasets from directories ------------------------------------------------------
def _index_directory(directory, labels, class_names, extensions, follow_links, where):
    """(file paths, labels, class names) as Keras indexes a directory: class folders in
    sorted order (or ``class_names``), files sorted within each."""
    from pynn.preprocessing.image_files import _class_folders, _walk_files
    directory = os.fspath(directory)
    if labels == "inferred":
        names = _class_folders(directory, class_names, where, skip_hidden=True)
        paths, label_list = [], []
        for index, name in enumerate(names):
            found, _ = _walk_files(os.path.join(directory, name), extensions, follow_links,
                                   where)
            paths += [os.path.join(root, fname) for root, fname in found]
            label_list += [index] * len(found)
        label_array = np.asarray(label_list, dtype=np.int32)
    else:
        if class_names is not None:
            raise ValueError(f"{where}: class_names goes with labels='inferred' only")
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"{where}: {directory} is not a directory")
        found, _ = _walk_files(directory, extensions, follow_links, where)
        paths = [os.path.join(root, fname) for root, fname in found]
        if labels is None:
            label_array, names = np.zeros(len(paths), np.int32), None
        else:
            label_array = np.asarray(labels)
            if len(label_array) != len(paths):
                raise ValueError(f"{where}: got {len(label_array)} labels for {len(paths)} "
                                 f"files in {directory}")
            names = [str(v) for v in sorted(set(label_array.tolist()))]
    if not paths:
        raise ValueError(f"{where}: found no files ({', '.join(extensions)}) in {directory}")
    return paths, label_array, names


def _check_dataset_args(where, label_mode, validation_split, subset, shuffle, seed, batch_size):
    if label_mode not in ("int", "categorical", "binary", None):
        raise ValueError(f'{where}: label_mode must be "int", "categorical", "binary" or None, '
                         f"got {label_mode!r}")
    if validation_split is not None and not 0 < validation_split < 1:
        raise ValueError(f"{where}: validation_split must be between 0 and 1, got "
                         f"{validation_split!r}")
    if (validation_split is None) != (subset is None):
        raise ValueError(f"{where}: validation_split and subset go together: got "
                         f"validation_split={validation_split!r}, subset={subset!r}")
    if subset not in (None, "training", "validation", "both"):
        raise ValueError(f'{where}: subset must be "training", "validation" or "both", got '
                         f"{subset!r}")
    if validation_split and shuffle and seed is None:
        raise ValueError(f"{where}: with validation_split and shuffle=True, give a seed so the "
                         f"training and validation subsets do not overlap")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(
            batch_size, int) or batch_size < 1):
        raise ValueError(f"{where}: batch_size must be a positive int or None, got "
                         f"{batch_size!r}")


def _split_files(where, paths, label_array, names, label_mode, shuffle, seed,
                 validation_split, subset, verbose, make):
    if label_mode == "binary" and (names is None or len(names) != 2):
        raise ValueError(f'{where}: label_mode="binary" needs exactly 2 classes, got '
                         f"class_names={names}")
    if verbose:
        suffix = f" belonging to {len(names)} classes" if names is not None else ""
        print(f"Found {len(paths)} files{suffix}.")
    label_array = np.asarray(label_array)
    if shuffle:
        # Keras's order: both lists shuffled by RandomState generators of one seed
        if seed is None:
            seed = int(np.random.randint(1e6))
        np.random.RandomState(seed).shuffle(paths)
        np.random.RandomState(seed).shuffle(label_array)
    everything = np.arange(len(paths))
    dataset_seed = seed if seed is not None else 0
    if subset is None:
        return make(everything, paths, label_array, dataset_seed)
    num_val = int(validation_split * len(paths))
    if num_val == 0 or num_val == len(paths):
        raise ValueError(f"{where}: validation_split={validation_split} of {len(paths)} files "
                         f"leaves an empty subset")
    training, validation = everything[:-num_val], everything[-num_val:]
    if subset == "both":
        return (make(training, paths, label_array, dataset_seed),
                make(validation, paths, label_array, dataset_seed))
    return make(training if subset == "training" else validation, paths, label_array,
                dataset_seed)


def text_dataset_from_directory(directory, labels="inferred", label_mode="int",
                                class_names=None, batch_size=32, max_length=None, shuffle=True,
                                seed=None, validation_split=None, subset=None,
                                follow_links=False, format="tf", verbose=True):
    """Batches of the ``.txt`` files of ``directory/<class>/...`` as Keras 3's: x an array of
    strings (each file's text, cut to ``max_length`` characters), y its labels; Keras's file
    order, shuffle and split. Returns a PyDataset (a pair for ``subset='both'``)."""
    where = "text_dataset_from_directory"
    _check_dataset_args(where, label_mode, validation_split, subset, shuffle, seed, batch_size)
    if format not in ("tf", "grain"):
        raise ValueError(f'{where}: format must be "tf" or "grain", got {format!r}')
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(
            max_length, int) or max_length < 1):
        raise ValueError(f"{where}: max_length must be a positive int or None, got "
                         f"{max_length!r}")
    if labels is None:
        label_mode = None
    paths, label_array, names = _index_directory(directory, labels, class_names, (".txt",),
                                                 follow_links, where)

    def load(batch_paths):
        texts = []
        for path in batch_paths:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
            texts.append(text[:max_length] if max_length is not None else text)
        out = np.empty(len(texts), dtype=object)
        out[:] = texts
        return out

    def make(part, all_paths, all_labels, dataset_seed):
        from pynn.preprocessing import image_files

        return image_files.FileDataset([all_paths[i] for i in part], all_labels[part], names,
                                       label_mode, batch_size, shuffle, dataset_seed, load)

    return _split_files(where, paths, label_array, names, label_mode, shuffle, seed,
                        validation_split, subset, verbose, make)


def read_wav(path, where="read_wav"):
    """(samples (T, channels) float32 in [-1, 1], sampling rate) of a PCM WAV file, read with
    the standard library's ``wave`` (8-bit unsigned, 16/24/32-bit signed samples)."""
    import wave
    try:
        with wave.open(os.fspath(path), "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"{where}: {path} is not a PCM WAV file pynn can read ({exc})") \
            from None
    raw = np.frombuffer(frames, dtype=np.uint8)
    if width == 1:
        data = (raw.astype(np.float32) - 128.0) / 128.0
    elif width in (2, 4):
        ints = raw.view(np.dtype(f"<i{width}"))
        data = ints.astype(np.float32) / float(2 ** (8 * width - 1))
    elif width == 3:
        triples = raw.reshape(-1, 3).astype(np.int32)
        ints = triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)
        ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
        data = ints.astype(np.float32) / float(1 << 23)
    else:
        raise ValueError(f"{where}: {path} has {8 * width}-bit samples; pynn reads 8, 16, 24 "
                         f"and 32-bit PCM")
    return data.reshape(-1, channels), rate


def audio_dataset_from_directory(directory, labels="inferred", label_mode="int",
                                 class_names=None, batch_size=32, sampling_rate=None,
                                 output_sequence_length=None, ragged=False, shuffle=True,
                                 seed=None, validation_split=None, subset=None,
                                 follow_links=False, verbose=True):
    """Batches of the ``.wav`` files of ``directory/<class>/...`` as Keras 3's: x float32
    (batch, T, channels) in [-1, 1], each clip cut or zero-padded to
    ``output_sequence_length`` (else to the batch's longest); Keras's file order, shuffle and
    split. ``sampling_rate`` must match the files' (pynn does not resample: Keras needs
    tensorflow-io for that)."""
    where = "audio_dataset_from_directory"
    _check_dataset_args(where, label_mode, validation_split, subset, shuffle, seed, batch_size)
    if ragged:
        raise ValueError(f"{where}: ragged=True gives tf.RaggedTensors, which pynn has not; "
                         f"leave ragged=False (clips are zero-padded to one length)")
    for name, v in (("sampling_rate", sampling_rate),
                    ("output_sequence_length", output_sequence_length)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{where}: {name} must be a positive int or None, got {v!r}")
    if labels is None:
        label_mode = None
    paths, label_array, names = _index_directory(directory, labels, class_names, (".wav",),
                                                 follow_links, where)

    def load(batch_paths):
        clips = []
        for path in batch_paths:
            data, rate = read_wav(path, where)
            if sampling_rate is not None and rate != sampling_rate:
                raise ValueError(f"{where}: {path} is sampled at {rate} Hz, not the "
                                 f"sampling_rate {sampling_rate}; pynn does not resample")
            clips.append(data)
        channels = {c.shape[1] for c in clips}
        if len(channels) > 1:
            raise ValueError(f"{where}: the clips of one batch have different channel counts "
                             f"{sorted(channels)}")
        length = output_sequence_length or max(len(c) for c in clips)
        out = np.zeros((len(clips), length, channels.pop()), np.float32)
        for i, clip in enumerate(clips):  # one copy per file: the files are read one by one
            out[i, :min(len(clip), length)] = clip[:length]
        return out

    def make(part, all_paths, all_labels, dataset_seed):
        from pynn.preprocessing import image_files

        return image_files.FileDataset([all_paths[i] for i in part], all_labels[part], names,
                                       label_mode, batch_size, shuffle, dataset_seed, load)

    return _split_files(where, paths, label_array, names, label_mode, shuffle, seed,
                        validation_split, subset, verbose, make)


# -- keras.backend's dtype promotion -------------------------------------------------------------
# Keras's type promotion lattice (adapted by Keras from JAX's): each dtype's next wider ones;
# "int"/"float" are the weak types of Python scalars
_PROMOTION = {
    "bool": ["int"], "uint8": ["int16", "uint16"], "uint16": ["int32", "uint32"],
    "uint32": ["int64", "uint64"], "uint64": ["float"], "int": ["uint8", "int8", "complex64"],
    "int8": ["int16"], "int16": ["int32"], "int32": ["int64"], "int64": ["float"],
    "float": ["bfloat16", "float16"], "bfloat16": ["float32"], "float16": ["float32"],
    "float32": ["float64", "complex64"], "float64": ["complex128"],
    "complex64": ["complex128"], "complex128": [],
}


def _upper_bounds(dtype):
    seen, stack = set(), [dtype]
    while stack:
        d = stack.pop()
        if d not in seen:
            seen.add(d)
            stack.extend(_PROMOTION[d])
    return seen


def result_type(*dtypes):
    """Keras's result_type: the least upper bound of the dtypes on Keras's promotion lattice
    (int32 with float16 gives float16, uint8 with int8 int16; Python int and float are weak
    and take the other operand's kind), then 64-bit types made 32-bit as Keras does (float64
    with float64 is float32); no dtype gives floatx."""
    if not dtypes:
        return _config.floatx()
    names = []
    for d in dtypes:
        if d is int or d is float:
            names.append("int" if d is int else "float")
        else:
            name = standardize_dtype(d)
            if name not in _PROMOTION:
                raise ValueError(f"result_type: unsupported dtype {d!r}")
            names.append(name)
    common = set.intersection(*(_upper_bounds(n) for n in names))
    best = [c for c in common if common <= _upper_bounds(c)][0]
    best = {"int": "int32", "float": _config.floatx()}.get(best, best)
    # Keras then makes every 64-bit result 32-bit (JAX's default, kept on every backend)
    return {"int64": "int32", "uint64": "uint32", "float64": "float32",
            "complex128": "complex64"}.get(best, best)


# -- installed into pynn.utils, pynn.saving and pynn.backend as Keras names them ------------------
def _install():
    from pynn import backend, config, saving, utils
    from pynn import orthogonal_regularizer  # noqa: F401 (registers it in pynn.regularizers)
    for name in ("Config", "CustomObjectScope", "Progbar", "Sequence",
                 "audio_dataset_from_directory", "clear_session", "custom_object_scope",
                 "deserialize_keras_object", "get_custom_objects", "get_registered_name",
                 "get_registered_object", "get_source_inputs", "is_keras_tensor", "normalize",
                 "pack_x_y_sample_weight", "register_keras_serializable",
                 "serialize_keras_object", "split_dataset", "standardize_dtype",
                 "text_dataset_from_directory", "unpack_x_y_sample_weight"):
        setattr(utils, name, globals()[name])
    for name in ("disable_interactive_logging", "enable_interactive_logging",
                 "is_interactive_logging_enabled"):
        setattr(utils, name, getattr(config, name))
    for name in ("CustomObjectScope", "deserialize_keras_object", "get_custom_objects",
                 "get_registered_object", "register_keras_serializable",
                 "serialize_keras_object"):
        setattr(saving, name, globals()[name])
    for name in ("clear_session", "get_uid", "is_float_dtype", "is_int_dtype",
                 "is_keras_tensor", "result_type", "standardize_dtype"):
        setattr(backend, name, globals()[name])
    for name in ("epsilon", "set_epsilon", "floatx", "set_floatx", "image_data_format",
                 "set_image_data_format", "backend"):
        setattr(backend, name, getattr(config, name))


_install()
