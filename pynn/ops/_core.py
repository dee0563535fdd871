"""What every op of ``pynn.ops`` shares: reading its arguments (Tensors, Variables, arrays,
scalars) as backend arrays, recording its node, undoing broadcasting in gradients, and the
symbolic path (an op on KerasTensors records a functional-graph node)."""

import functools

import numpy as np

from pynn import _config, backend
from pynn.autodiff import Tensor, record
from pynn.layers.base import Layer
from pynn.layers.symbolic import KerasTensor
from pynn.variables import Variable


def value(x):
    """``x`` as the current backend's array; Python scalars stay scalars (NumPy then keeps the
    other operand's dtype, as Keras does for weak scalars)."""
    t = type(x)
    if t is Tensor or t is Variable:
        return x.value
    if t in (int, float, bool) or isinstance(x, (np.ndarray, np.generic)):
        return x
    if getattr(x, "_pynn_host_state", False):  # a metric's state (pynn.metrics)
        return x.value
    if isinstance(x, (list, tuple)):
        a = np.asarray(x)
        return a.astype(_config.floatx()) if a.dtype == np.float64 else a
    return x  # a backend (device) array


def cpu_only(name):
    """The ops computed with NumPy on host arrays: on another backend they are an error, never
    a silent trip through the host."""
    b = backend.current()
    if b.NAME != "cpu":
        raise NotImplementedError(f"pynn.ops.{name}: no {b.NAME} kernel yet (pynn does not fall "
                                  f"back to the CPU behind your back); run it on the CPU "
                                  f"backend")


def shape_of(x):
    return tuple(np.shape(x)) if not hasattr(x, "shape") else tuple(x.shape)


def unbroadcast(g, shape):
    """Sum ``g`` down to ``shape``: the gradient of NumPy's broadcasting."""
    shape = tuple(shape)
    if tuple(g.shape) == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, d in enumerate(shape) if d == 1 and g.shape[lead + i] != 1)
    g = np.sum(g, axis=axes, keepdims=True) if axes else g
    return g.reshape(shape)


def _symbolic(args, kwargs):
    for a in args:
        if type(a) is KerasTensor:
            return True
        if isinstance(a, (list, tuple)) and any(type(v) is KerasTensor for v in a):
            return True
    return any(type(v) is KerasTensor for v in kwargs.values())


def op(fn):
    """Register ``fn`` as a ``pynn.ops`` op: on KerasTensors it records an op node of the
    functional graph (``pynn.layers.core.OpLayer``) instead of computing."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _symbolic(args, kwargs):
            return OpLayer.apply(fn.__name__, args, kwargs)
        return fn(*args, **kwargs)

    OPS[fn.__name__] = wrapper
    wrapper.raw = fn
    return wrapper


# name -> the public op, for the functional graph's op nodes (saved by name, never as code).
OPS = {}
# Nonzero while OpLayer runs an op on its all-ones stand-ins for the output shape (branch
# linalg: the factorisations then skip their singular / not-positive-definite errors).
SHAPE_PROBE = [0]

class OpLayer(Layer):
    """A ``pynn.ops`` op called on symbolic tensors: a weightless layer of the functional
    graph (``y = x * 2 + pynn.ops.relu(x)`` builds a model). Its config names the op and
    its constant arguments, with ``{"tensor": i}`` where the i-th input goes, so a saved
    model stores the op's name, never code. Being a layer without a backward, it is traced:
    training replays its recorded op."""

    def __init__(self, op, args=(), kwargs=None, **base):
        if op not in OPS:
            raise ValueError(f"OpLayer: unknown op {op!r}; pynn.ops has {sorted(OPS)}")
        super().__init__(**base)
        self.op = op
        self.op_args = _jsonable(list(args))
        self.op_kwargs = _jsonable(dict(kwargs or {}))

    @classmethod
    def apply(cls, name, args, kwargs):
        tensors = []

        def template(v):
            if type(v) is KerasTensor:
                tensors.append(v)
                return {"tensor": len(tensors) - 1}
            if isinstance(v, (list, tuple)) and any(type(i) is KerasTensor for i in v):
                return [template(i) for i in v]
            return v

        targs = [template(a) for a in args]
        tkwargs = {k: template(v) for k, v in kwargs.items()}
        layer = cls(name, targs, tkwargs)
        return layer(tensors if len(tensors) > 1 else tensors[0])

    def _fill(self, inputs):
        xs = inputs if isinstance(inputs, list) else [inputs]

        def fill(v):
            if isinstance(v, dict) and set(v) == {"tensor"}:
                return xs[v["tensor"]]
            if isinstance(v, list):
                return [fill(i) for i in v]
            return v

        return [fill(a) for a in self.op_args], {k: fill(v) for k, v in self.op_kwargs.items()}

    def compute_output_shape(self, input_shape):
        # The op itself decides (broadcasting, reductions): run it on a one-sample stand-in.
        several = bool(input_shape) and isinstance(input_shape[0], (tuple, list))
        shapes = list(input_shape) if several else [input_shape]
        b = backend.current()
        probes = [b.asarray(np.ones([1 if d is None else d for d in s], self.dtype), self.dtype)
                  for s in shapes]
        with np.errstate(all="ignore"):
            args, kwargs = self._fill(probes if several else probes[0])
            SHAPE_PROBE[0] += 1  # (branch linalg) a singular probe is not the user's error
            try:
                out = OPS[self.op](*args, **kwargs)
            finally:
                SHAPE_PROBE[0] -= 1
        outs = out if isinstance(out, (list, tuple)) else [out]
        result = [(None,) + tuple(o.shape[1:]) if o.ndim else () for o in outs]
        return result if isinstance(out, (list, tuple)) else result[0]

    def call(self, inputs, training=False):
        args, kwargs = self._fill(inputs)
        return OPS[self.op](*args, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(op=self.op, args=self.op_args, kwargs=self.op_kwargs)
        return config


def _jsonable(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (list, tuple)):
        return [_jsonable(i) for i in v]
    if isinstance(v, dict):
        return {k: _jsonable(i) for k, i in v.items()}
    return v


__all__ = ["OPS", "Tensor", "cpu_only", "op", "record", "shape_of", "unbroadcast", "value"]


def _register_op_layer():
    # Saved functional models name their op nodes "OpLayer": loading finds it in LAYERS like
    # any layer (pynn.layers does not import pynn.ops; pynn's __init__ imports both).
    from pynn.layers import LAYERS
    LAYERS["OpLayer"] = OpLayer


_register_op_layer()
