"""A trainable (or not) tensor held by a layer, living on the current backend."""

import numpy as np


# Bumped whenever weights may have changed (an optimizer step, set_weights, a load): caches
# derived from weights (the inference plan's folded kernels) compare it to know they are stale.
_version = [0]


def bump_version():
    _version[0] += 1


def version():
    return _version[0]


class Variable:
    """``value`` is a backend array; ``grad`` is filled by the layer's backward pass.

    ``path`` is unique within a model ("dense_1/kernel") and names the variable in saved files
    and in optimizer state.

    Change a value with ``assign`` (or ``assign_add``, ``assign_sub``, a layer's
    ``set_weights``), as in Keras: what is derived from weights (a model's prepared inference
    plan, its packed and folded kernels) then follows. A write into ``value`` in place is
    not seen there until something else changes the weights.
    """

    __slots__ = ("value", "grad", "path", "trainable", "regularizer", "constraint", "mask")

    def __init__(self, value, path, trainable=True, regularizer=None, constraint=None):
        self.value = value
        self.grad = None
        self.path = path
        self.trainable = trainable
        self.regularizer = regularizer
        # Called as constraint(value) after each optimizer update, projecting the backend
        # array in place (Keras applies constraints at the same point).
        self.constraint = constraint
        # Pruning (pynn.compression): None, or a backend uint8 array shaped like value whose
        # zeros the optimizer's fused update keeps at exactly zero.
        self.mask = None

    @property
    def shape(self):
        return tuple(self.value.shape)

    @property
    def name(self):
        return self.path.rsplit("/", 1)[-1]

    @property
    def dtype(self):
        """The value's dtype, by name ("float32"), as Keras's."""
        return str(self.value.dtype)

    @property
    def ndim(self):
        return len(self.value.shape)

    def numpy(self):
        """A NumPy copy of the value, wherever it lives (OpenCL: a download)."""
        host = self.value.get() if hasattr(self.value, "get") else self.value
        return np.array(host, copy=True)

    def __array__(self, dtype=None, copy=None):
        out = self.numpy()
        return out if dtype is None else out.astype(dtype, copy=False)

    def assign(self, value):
        """Sets the value to ``value`` (an array-like of the variable's shape, or a Variable)
        cast to the variable's dtype, on the current backend, and returns the new value. A
        copy: later writes into ``value`` by the caller do not reach the variable."""
        from pynn import backend

        new = _real(self, "assign", value)
        if tuple(new.shape) != self.shape:
            raise ValueError(f"Variable '{self.path}': assign expects shape {self.shape}, got "
                             f"{tuple(new.shape)}")
        dtype = self.value.dtype
        self.value = backend.current().asarray(np.array(new, dtype=dtype, copy=True), dtype)
        bump_version()
        return self.value

    def assign_add(self, delta):
        """``assign`` of value + delta (delta broadcast to the variable's shape)."""
        return self.assign(self._shifted("assign_add", np.add, delta))

    def assign_sub(self, delta):
        """``assign`` of value - delta (delta broadcast to the variable's shape)."""
        return self.assign(self._shifted("assign_sub", np.subtract, delta))

    def _shifted(self, name, op, delta):
        delta = _real(self, name, delta)
        try:
            if np.broadcast_shapes(delta.shape, self.shape) != self.shape:
                raise ValueError
        except ValueError:
            raise ValueError(f"Variable '{self.path}': {name} expects a value that broadcasts "
                             f"to shape {self.shape}, got shape {tuple(delta.shape)}") from None
        current = self.numpy()
        return op(current, delta.astype(current.dtype, copy=False))

    def __repr__(self):
        return f"<Variable {self.path} shape={self.shape} trainable={self.trainable}>"


def _real(variable, op, value):
    """value (array-like or a Variable) as a NumPy array of real numbers, or a TypeError."""
    out = value.numpy() if isinstance(value, Variable) else np.asarray(value)
    if out.dtype.kind not in "biuf":
        raise TypeError(f"Variable '{variable.path}': {op} expects real numbers, got dtype "
                        f"{out.dtype}")
    return out
