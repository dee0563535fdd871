"""pynn: a native neural-network engine with a Keras-3-like API.

    import pynn
    model = pynn.Sequential([pynn.layers.Input((8, 8, 1)),
                             pynn.layers.Conv2D(16, 3, activation="relu"),
                             pynn.layers.Flatten(),
                             pynn.layers.Dense(10, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=5)
"""

__version__ = "0.1.0"

import os as _os

# OpenMP worker threads spin-wait after each parallel region by default (libgomp: ~300,000
# spins, about 3 ms). pynn alternated its OpenMP kernels with multi-threaded BLAS calls whose
# own threads also spin, so the two pools starved each other (a small CNN's step measured 4 ms
# with one thread and 140 ms with two): waiters were made to sleep (PASSIVE). Sleeping costs
# a futex wake-up per parallel region instead, and since every BLAS call inside pynn runs on
# one thread within pynn's own region there is nothing left to starve inside one process: a
# short spin before sleeping pays (alone on 2 AMD EPYC cores, MLP step 2.9 -> 1.75 ms at
# 1,000 spins, 1.5 ms at 30,000). Across processes it does not: libgomp's throttle counts only
# its own process's threads, so two 2-thread pynn processes on 2 cores spin while the thread
# they wait for is off its core, and 30,000 spins made that 7x slower (MLP 3.8 -> 27 ms, CNN
# 14 -> 61 ms; the digits demo 4.5 -> 72 s), 1,000 spins 1.2x (bench/bench_spin.py,
# bench/results/spin-amd-epyc-2t.json). 1,000 keeps most of the gain where pynn is alone
# and bounds the loss where it is not; a dedicated machine may set GOMP_SPINCOUNT=30000.
# Both must be set before libgomp loads (the first pynn._native import); the user's own
# settings win.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_os.environ.setdefault("GOMP_SPINCOUNT", "1000")
# OpenBLAS's own workers likewise spin after each GEMM (2^28 cycles by default) and then take
# the cores from the OpenMP im2col/epilogue passes that follow: a Conv2D training step measured
# 123 ms by default and 77-87 ms with a short spin. Too short a spin costs the MLP its hot BLAS
# threads between small GEMMs; 2^18 cycles (~0.1 ms) measured best for both (bench/README.md).
# SciPy's OpenBLAS, the one pynn's kernels call, reads this when pynn first loads it.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "18")

# What building, fitting and predicting with a model needs loads here; everything else (the
# subpackages below) loads on first attribute access (PEP 562), so applications that embed a
# model do not pay for ONNX export, Keras files, compression or the examples.
from pynn import (
    backend,
    callbacks,
    initializers,
    layers,
    losses,
    metrics,
    ops,  # gives symbolic tensors and Tensors their operators (x * 2) when it loads
    optimizers,
    regularizers,
    saving,
    utils,
)
from pynn._config import (
    floatx,
    get_num_threads,
    set_floatx,
    set_num_threads,
    threads,
)
from pynn.autodiff import GradientTape, Tensor
from pynn.backend import set_device
from pynn.layers import Input
from pynn.models import Model, Sequential
from pynn.saving import load_model
from pynn import keras_utils  # noqa: E402,F401 (api: installs Keras's utils/saving/backend names)

# Submodules that load on first use of ``pynn.<name>``; `import pynn.<name>` works as always.
_LAZY_SUBMODULES = ("onnx", "interop", "compression", "preprocessing", "distributed",
                    "examples", "bench", "data", "schedules", "constraints", "inference", "demo",
                    "applications")
# -- api: Keras 3's keras.activations, keras.config, keras.random and keras.tree
_LAZY_SUBMODULES += ("activations", "config", "random", "tree")


def _deferred_keras_io(key):
    """pynn.saving picks Keras readers and writers from saving.KERAS_IO, which
    pynn.interop.keras_files fills when it loads; these stand-ins load it on the first .keras or
    .h5 file instead of at `import pynn`, then hand over to the real function."""
    def load_keras_files_then_call(*args, **kwargs):
        from pynn.interop import keras_files  # noqa: F401 (replaces the stand-ins in KERAS_IO)
        return saving.KERAS_IO[key](*args, **kwargs)
    return load_keras_files_then_call


for _key in ("save", "save_h5", "save_weights", "load_keras", "load_h5", "load_weights",
             "to_json", "from_json"):
    saving.KERAS_IO.setdefault(_key, _deferred_keras_io(_key))
del _key


def _deferred_onnx_load(*args, **kwargs):
    """pynn.load_model('m.onnx'): pynn.onnx_import loads on the first ONNX file."""
    from pynn import onnx_import
    return onnx_import.load(*args, **kwargs)


saving.ONNX_IO.setdefault("load", _deferred_onnx_load)  # ONNX files in (pynn.onnx_import)


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"pynn.{name}")  # also binds it as pynn.<name>
    raise AttributeError(f"module 'pynn' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))


def devices():
    """Every OpenCL platform and device (an empty list when pyopencl or a driver is missing)."""
    try:
        from pynn.backend.opencl import runtime as _cl_runtime
    except ImportError:
        return []
    try:
        return _cl_runtime.devices()
    except Exception:  # no ICD loader or no platform: there is simply no device to list
        return []


def get_device():
    return backend.device()


__all__ = [
    "GradientTape",
    "Input",
    "Model",
    "Sequential",
    "Tensor",
    "backend",
    "callbacks",
    "devices",
    "floatx",
    "get_device",
    "get_num_threads",
    "initializers",
    "layers",
    "load_model",
    "losses",
    "metrics",
    "ops",
    "optimizers",
    "regularizers",
    "saving",
    "set_device",
    "set_floatx",
    "set_num_threads",
    "threads",
    "utils",
]
