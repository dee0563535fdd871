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

# OpenMP worker threads spin-wait after each parallel region by default. pynn alternates its
# OpenMP kernels with BLAS calls whose own threads also spin, so on a machine with as many
# cores as threads the two pools starve each other: a small CNN's training step measured
# 4 ms with one thread and 140 ms with two. Sleeping waiters cost a few microseconds per
# region instead. This must be set before libgomp loads (the first pynn._native import);
# an explicit OMP_WAIT_POLICY from the user wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# OpenBLAS's own workers likewise spin after each GEMM (2^28 cycles by default) and then take
# the cores from the OpenMP im2col/epilogue passes that follow: a Conv2D training step measured
# 123 ms by default and 77-87 ms with a short spin. Too short a spin costs the MLP its hot BLAS
# threads between small GEMMs; 2^18 cycles (~0.1 ms) measured best for both (bench/README.md).
# SciPy's OpenBLAS, the one pynn's kernels call, reads this when pynn first loads it.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "18")

from pynn import (  # noqa: E402
    backend,
    callbacks,
    initializers,
    layers,
    losses,
    metrics,
    onnx,  # noqa: F401 (pynn.onnx only; the onnx package itself loads on export)
    ops,
    optimizers,
    regularizers,
    saving,
    utils,
)
from pynn.autodiff import GradientTape, Tensor  # noqa: E402
from pynn._config import (  # noqa: E402
    floatx,
    get_num_threads,
    set_floatx,
    set_num_threads,
    threads,
)
from pynn.backend import set_device  # noqa: E402
# Registers the .keras and .h5 formats with pynn.saving (h5py itself loads on first use).
from pynn.interop import keras_files as _keras_files  # noqa: E402, F401
from pynn.layers import Input  # noqa: E402
from pynn.models import Model, Sequential  # noqa: E402
from pynn.saving import load_model  # noqa: E402


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


__all__ = ["ops", "GradientTape", "Tensor", "saving", "Model", "Sequential", "Input", "load_model", "threads", "layers", "losses", "metrics", "optimizers",
           "initializers", "regularizers", "callbacks", "utils", "backend", "set_device",
           "get_device", "devices", "set_num_threads", "get_num_threads", "floatx", "set_floatx"]
