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
# one thread within pynn's own region there is nothing left to starve: a short spin before
# sleeping (30,000 spins, ~0.3 ms) measured 1.1-2x faster training steps than pure sleeping
# (MLP 2.1 -> 1.45 ms, func30 13.8 -> 8.4 ms, LSTM 9.2 -> 7.0 ms, small CNN 19.7 -> 16.2 ms
# on 2 AMD EPYC cores shared with other work; 10,000 and 100,000 were no better; see
# bench/README.md). libgomp falls back to its 1,000-spin throttle by itself when more
# threads than cores wait. Both must be set before libgomp loads (the first pynn._native
# import); the user's own settings win.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_os.environ.setdefault("GOMP_SPINCOUNT", "30000")
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

# Submodules that load on first use of ``pynn.<name>``; `import pynn.<name>` works as always.
_LAZY_SUBMODULES = ("onnx", "interop", "compression", "preprocessing", "distributed",
                    "examples", "bench", "data", "schedules", "constraints", "inference", "demo")


def _deferred_keras_io(key):
    """pynn.saving picks Keras readers and writers from saving.KERAS_IO, which
    pynn.interop.keras_files fills when it loads; these stand-ins load it on the first .keras or
    .h5 file instead of at `import pynn`, then hand over to the real function."""
    def load_keras_files_then_call(*args, **kwargs):
        from pynn.interop import keras_files  # noqa: F401 (replaces the stand-ins in KERAS_IO)
        return saving.KERAS_IO[key](*args, **kwargs)
    return load_keras_files_then_call


for _key in ("save", "save_h5", "save_weights", "load_keras", "load_h5", "load_weights"):
    saving.KERAS_IO.setdefault(_key, _deferred_keras_io(_key))
del _key


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
