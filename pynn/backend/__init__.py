"""Backend selection. Layers, losses and optimizers call ``backend.current().<op>``.

``pynn.set_device('cpu' | 'opencl' | 'opencl:P:D')`` or the environment variable
``PYNN_DEVICE`` choose; the CPU is the default.
"""

import os

from pynn import _config

_current = None
_device = None


def current():
    """The active backend module (``pynn.backend.cpu`` or ``pynn.backend.opencl``)."""
    global _current
    if _current is None:
        set_device(os.environ.get("PYNN_DEVICE", "cpu"))
    return _current


def device():
    current()
    return _device


def set_device(spec="cpu"):
    """Select the backend: 'cpu', 'opencl' (best device) or 'opencl:P:D' (platform P, device D)."""
    global _current, _device
    spec = str(spec).strip().lower()
    if spec == "cpu":
        from pynn.backend import cpu

        _current, _device = cpu, "cpu"
    elif spec == "opencl" or spec.startswith("opencl:"):
        from pynn.backend import opencl

        opencl.select_device(spec)
        _current, _device = opencl, spec
    else:
        raise ValueError(f"set_device: expected 'cpu', 'opencl' or 'opencl:P:D', got {spec!r}")
    return _device


_loop_depth = 0


class host_memory_loop:
    """Runs a loop of steps on recycled host memory (``pynn._native.memory``): every NumPy
    array made inside, by the kernels or by NumPy itself, reuses the blocks the previous step
    freed. ``trim=True`` (fit, evaluate, predict) gives the idle blocks back when the
    outermost such loop ends; train_on_batch-style calls keep them for the next call, up to
    the pool's limit."""

    __slots__ = ("_trim", "_scope")

    def __init__(self, trim=False):
        from pynn._native import memory

        self._trim = trim
        self._scope = memory.recycling()

    def __enter__(self):
        global _loop_depth
        _config.apply_to_this_thread()
        _loop_depth += 1
        self._scope.__enter__()
        return self

    def __exit__(self, *exc):
        global _loop_depth
        self._scope.__exit__(*exc)
        _loop_depth -= 1
        if self._trim and _loop_depth == 0:
            from pynn._native import memory

            memory.trim()
        return False


# -- api: Keras 3's keras.backend names --------------------------------------------------------
def backend():
    """The engine's name (Keras answers "torch", "jax", ...)."""
    return "pynn"


def epsilon():
    from pynn import config
    return config.epsilon()


def set_epsilon(value):
    from pynn import config
    config.set_epsilon(value)


def floatx():
    return _config.floatx()


def set_floatx(value):
    _config.set_floatx(value)


def image_data_format():
    from pynn import config
    return config.image_data_format()


def set_image_data_format(data_format):
    from pynn import config
    config.set_image_data_format(data_format)


def clear_session(free_memory=True):
    from pynn import keras_utils
    keras_utils.clear_session(free_memory)


def get_uid(prefix=""):
    from pynn import keras_utils
    return keras_utils.get_uid(prefix)


def is_keras_tensor(x):
    from pynn import keras_utils
    return keras_utils.is_keras_tensor(x)


def standardize_dtype(dtype):
    from pynn import keras_utils
    return keras_utils.standardize_dtype(dtype)


def is_float_dtype(dtype):
    from pynn import keras_utils
    return keras_utils.is_float_dtype(dtype)


def is_int_dtype(dtype):
    from pynn import keras_utils
    return keras_utils.is_int_dtype(dtype)


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
    from pynn import keras_utils
    if not dtypes:
        return _config.floatx()
    names = []
    for d in dtypes:
        if d is int or d is float:
            names.append("int" if d is int else "float")
        else:
            name = keras_utils.standardize_dtype(d)
            if name not in _PROMOTION:
                raise ValueError(f"result_type: unsupported dtype {d!r}")
            names.append(name)
    common = set.intersection(*(_upper_bounds(n) for n in names))
    best = [c for c in common if common <= _upper_bounds(c)][0]
    best = {"int": "int32", "float": _config.floatx()}.get(best, best)
    # Keras then makes every 64-bit result 32-bit (JAX's default, kept on every backend)
    return {"int64": "int32", "uint64": "uint32", "float64": "float32",
            "complex128": "complex64"}.get(best, best)
