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

