"""Backend selection. Layers, losses and optimizers call ``backend.current().<op>``.

``pynn.set_device('cpu' | 'opencl' | 'opencl:P:D')`` or the environment variable
``PYNN_DEVICE`` choose; the CPU is the default.
"""

import os

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
