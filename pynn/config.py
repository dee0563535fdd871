"""``pynn.config``: Keras 3's ``keras.config`` settings as pynn has them.

Settings pynn's kernels cannot follow are refused with the reason rather than stored and
ignored: channels_first layouts (every layer is NHWC), another epsilon than the 1e-7 compiled
into the loss kernels, another backend than pynn's own.
"""

import math

from pynn._config import floatx, set_floatx  # noqa: F401 (Keras's names, re-exported)
from pynn.mixed_precision import dtype_policy, set_dtype_policy  # noqa: F401

__all__ = [
    "backend", "disable_flash_attention", "disable_interactive_logging",
    "disable_traceback_filtering", "dtype_policy", "enable_flash_attention",
    "enable_interactive_logging", "enable_traceback_filtering", "enable_unsafe_deserialization",
    "epsilon", "floatx", "image_data_format", "is_flash_attention_enabled",
    "is_interactive_logging_enabled", "is_nnx_enabled", "is_traceback_filtering_enabled",
    "max_epochs", "max_steps_per_epoch", "set_backend", "set_dtype_policy", "set_epsilon",
    "set_floatx", "set_image_data_format", "set_max_epochs", "set_max_steps_per_epoch",
]

# The fuzz factor Keras's losses clip with; pynn's loss and metric kernels have it built in.
EPSILON = 1e-7
_interactive_logging = True
_traceback_filtering = True
_flash_attention = None  # Keras's default: None, "use it where the backend can"
_unsafe_deserialization = False
_max_epochs = None
_max_steps_per_epoch = None


def backend():
    """The engine's name, where Keras answers "torch", "jax", "tensorflow" or "numpy"."""
    return "pynn"


def set_backend(backend):
    if backend != "pynn":
        raise ValueError(f"pynn.config.set_backend: pynn is its own backend (its kernels run on "
                         f"the CPU or OpenCL: pynn.set_device), it cannot switch to "
                         f"{backend!r}; only 'pynn' is accepted")


def epsilon():
    return EPSILON


def set_epsilon(value):
    """Keras's fuzz factor. pynn's loss kernels have Keras's default 1e-7 built in, so only
    that value is accepted: another one would be stored and silently ignored."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            value) or value <= 0:
        raise ValueError(f"pynn.config.set_epsilon: expected a positive finite number, got "
                         f"{value!r}")
    if float(value) != EPSILON:
        raise ValueError(f"pynn.config.set_epsilon: pynn's loss and metric kernels clip with "
                         f"Keras's default epsilon {EPSILON} compiled in; {value!r} is not "
                         f"supported")


def image_data_format():
    return "channels_last"


def set_image_data_format(data_format):
    """Only "channels_last": every pynn layer and kernel is NHWC."""
    fmt = str(data_format).lower() if isinstance(data_format, str) else data_format
    if fmt == "channels_last":
        return
    if fmt == "channels_first":
        raise ValueError("pynn.config.set_image_data_format: pynn's layers and kernels are "
                         "channels_last (NHWC) throughout; 'channels_first' is not supported "
                         "globally (transpose the data, or give a layer data_format where it "
                         "takes one)")
    raise ValueError(f"pynn.config.set_image_data_format: expected 'channels_last' or "
                     f"'channels_first', got {data_format!r}")


def enable_interactive_logging():
    """Progress bars and epoch lines print to stdout (the default)."""
    global _interactive_logging
    _interactive_logging = True


def disable_interactive_logging():
    """fit's and Progbar's progress lines go to the ``logging`` module ("pynn" logger,
    INFO) instead of stdout."""
    global _interactive_logging
    _interactive_logging = False


def is_interactive_logging_enabled():
    return _interactive_logging


def enable_traceback_filtering():
    """Kept for Keras scripts: pynn does not rewrite tracebacks, so this is only a flag."""
    global _traceback_filtering
    _traceback_filtering = True


def disable_traceback_filtering():
    global _traceback_filtering
    _traceback_filtering = False


def is_traceback_filtering_enabled():
    return _traceback_filtering


def enable_flash_attention():
    """A flag as Keras's: pynn's attention kernels are the same either way (they already
    work tile by tile), so it changes no result."""
    global _flash_attention
    _flash_attention = True


def disable_flash_attention():
    global _flash_attention
    _flash_attention = False


def is_flash_attention_enabled():
    return _flash_attention


def is_nnx_enabled():
    """Flax NNX is JAX's; never on in pynn."""
    return False


def enable_unsafe_deserialization():
    """Keras's switch for loading Lambda layers' bytecode. pynn never runs code read from a
    file, safe or not, so loading stays as it is; the flag is kept for Keras scripts."""
    global _unsafe_deserialization
    _unsafe_deserialization = True


def _positive_int_or_none(fn, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"pynn.config.{fn}: expected a positive int or None, got {value!r}")
    return value


def max_epochs():
    return _max_epochs


def set_max_epochs(max_epochs):
    """Caps every fit's epochs (Keras's testing aid); None lifts the cap."""
    global _max_epochs
    _max_epochs = _positive_int_or_none("set_max_epochs", max_epochs)


def max_steps_per_epoch():
    return _max_steps_per_epoch


def set_max_steps_per_epoch(max_steps_per_epoch):
    """Caps every fit epoch's steps; None lifts the cap."""
    global _max_steps_per_epoch
    _max_steps_per_epoch = _positive_int_or_none("set_max_steps_per_epoch",
                                                 max_steps_per_epoch)
