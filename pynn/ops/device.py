"""pynn.ops on a device backend (OpenCL): the elementwise, broadcasting and reduction ops
through the backend's elementwise family (opencl/elementwise.cl), their gradients through the
same kernels, so nothing leaves the device. The CPU keeps NumPy (numpy_ops), whose results
these match (tests/test_elementwise.py).

An op with no device formula here raises (``unsupported``): never a silent host fallback.
"""

import math

import numpy as np

from pynn import backend
from pynn.ops._core import record, value

UNARY_GRADS = {
    # name -> d op(x) / dx * dy, from (dy, x, y) and the backend ``b``
    "negative": lambda b, dy, x, y: b.elementwise_unary(dy, "negative"),
    "abs": lambda b, dy, x, y: _mul(b, dy, b.elementwise_unary(x, "sign")),
    "absolute": lambda b, dy, x, y: _mul(b, dy, b.elementwise_unary(x, "sign")),
    "exp": lambda b, dy, x, y: _mul(b, dy, y),
    "expm1": lambda b, dy, x, y: _mul(b, dy, b.elementwise_unary(x, "exp")),
    "log": lambda b, dy, x, y: b.elementwise_binary(dy, x, "divide"),
    "log1p": lambda b, dy, x, y: b.elementwise_binary(dy, _add(b, x, 1.0), "divide"),
    "sqrt": lambda b, dy, x, y: b.elementwise_binary(dy, _mul(b, y, 2.0), "divide"),
    "square": lambda b, dy, x, y: _mul(b, dy, _mul(b, x, 2.0)),
    "reciprocal": lambda b, dy, x, y: b.elementwise_unary(
        _mul(b, dy, b.elementwise_unary(y, "square")), "negative"),
    "sin": lambda b, dy, x, y: _mul(b, dy, b.elementwise_unary(x, "cos")),
    "cos": lambda b, dy, x, y: b.elementwise_unary(
        _mul(b, dy, b.elementwise_unary(x, "sin")), "negative"),
    "tanh": lambda b, dy, x, y: _mul(b, dy, b.elementwise_binary(
        _scalar(b, 1.0), b.elementwise_unary(y, "square"), "subtract")),
    "sinh": lambda b, dy, x, y: _mul(b, dy, b.elementwise_unary(x, "cosh")),
    "cosh": lambda b, dy, x, y: _mul(b, dy, b.elementwise_unary(x, "sinh")),
    "arctan": lambda b, dy, x, y: b.elementwise_binary(
        dy, _add(b, b.elementwise_unary(x, "square"), 1.0), "divide"),
    "rsqrt": lambda b, dy, x, y: b.elementwise_binary(_mul(b, _mul(b, dy, y), -0.5), x,
                                                      "divide"),
    "sign": None, "floor": None, "ceil": None, "round": None,
}


def unsupported(name):
    b = backend.current()
    raise NotImplementedError(f"pynn.ops.{name}: no {b.NAME} kernel yet (pynn does not fall "
                              f"back to the CPU behind your back); run it on the CPU backend")


def _scalar(b, v):
    return b.full((), float(v), np.float32)


def _device(b, v):
    """An operand on the device: Python numbers and host arrays are uploaded (as keras.ops
    converts its arguments), device arrays pass."""
    if isinstance(v, (int, float, bool, np.generic)):
        return _scalar(b, v)
    if isinstance(v, (np.ndarray, list, tuple)):
        return b.asarray(np.asarray(v, np.float32), np.float32)
    return v


def _mul(b, a, c):
    return b.elementwise_binary(a, _device(b, c), "multiply")


def _add(b, a, c):
    return b.elementwise_binary(a, _device(b, c), "add")


def unbroadcast(b, g, shape):
    """Sum g down to ``shape`` (the gradient of broadcasting) with the device reduction."""
    shape = tuple(shape)
    if tuple(g.shape) == shape:
        return g
    lead = len(g.shape) - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(shape)
                                      if d == 1 and g.shape[lead + i] != 1)
    summed = b.reduce_axes(g, axes, "sum", True) if axes else g
    return b.reshape(summed, shape)


def unary(name, x):
    if name not in UNARY_GRADS:
        unsupported(name)
    b = backend.current()
    xv = _device(b, value(x))
    if name == "rsqrt":  # no kernel code of its own: 1 / sqrt(x)
        y = b.elementwise_unary(b.elementwise_unary(xv, "sqrt"), "reciprocal")
    else:
        y = b.elementwise_unary(xv, "abs" if name == "absolute" else name)
    grad = UNARY_GRADS[name]
    if grad is None:
        return record(y, (), None, name)
    return record(y, (x,), lambda dy, need: (grad(b, dy, xv, y),), name)


def binary(name, x1, x2):
    b = backend.current()
    if name not in BINARY_GRADS:
        unsupported(name)
    a, c = _device(b, value(x1)), _device(b, value(x2))
    y = b.elementwise_binary(a, c, "divide" if name == "true_divide" else name)
    grads = BINARY_GRADS[name]
    if grads is None:
        return record(y, (), None, name)

    def backward(dy, need):
        return (unbroadcast(b, grads[0](b, dy, a, c, y), a.shape) if need[0] else None,
                unbroadcast(b, grads[1](b, dy, a, c, y), c.shape) if need[1] else None)

    return record(y, (x1, x2), backward, name)


def _mask(b, a, c, op):
    return b.elementwise_binary(a, c, op)


BINARY_GRADS = {
    "add": (lambda b, dy, a, c, y: dy, lambda b, dy, a, c, y: dy),
    "subtract": (lambda b, dy, a, c, y: dy,
                 lambda b, dy, a, c, y: b.elementwise_unary(dy, "negative")),
    "multiply": (lambda b, dy, a, c, y: _mul(b, dy, c), lambda b, dy, a, c, y: _mul(b, dy, a)),
    "divide": (lambda b, dy, a, c, y: b.elementwise_binary(dy, c, "divide"),
               lambda b, dy, a, c, y: b.elementwise_unary(
                   b.elementwise_binary(_mul(b, dy, y), c, "divide"), "negative")),
    "maximum": (lambda b, dy, a, c, y: _mul(b, dy, _mask(b, a, c, "greater_equal")),
                lambda b, dy, a, c, y: _mul(b, dy, _mask(b, a, c, "less"))),
    "minimum": (lambda b, dy, a, c, y: _mul(b, dy, _mask(b, a, c, "less_equal")),
                lambda b, dy, a, c, y: _mul(b, dy, _mask(b, a, c, "greater"))),
    "power": (lambda b, dy, a, c, y: _mul(b, _mul(b, dy, c), b.elementwise_binary(
                  a, _add(b, c, -1.0), "power")),
              lambda b, dy, a, c, y: _mul(b, _mul(b, dy, y), b.elementwise_unary(
                  b.elementwise_binary(a, _scalar(b, 1e-30), "maximum"), "log"))),
    "equal": None, "not_equal": None, "less": None, "less_equal": None, "greater": None,
    "greater_equal": None,
}
BINARY_GRADS["true_divide"] = BINARY_GRADS["divide"]


def _axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    return tuple(sorted(int(a) % ndim for a in axes))


def _expand_to(b, g, shape, axes, keepdims):
    """dy of a reduction, broadcast back over the reduced axes (times ones on the device)."""
    if not keepdims:
        g = b.reshape(g, tuple(1 if k in axes else d for k, d in enumerate(shape)))
    return b.elementwise_binary(g, b.full(tuple(shape), 1.0, np.float32), "multiply")


def reduction(name, x, axis, keepdims):
    b = backend.current()
    if name not in ("sum", "mean", "max", "min"):
        unsupported(name)
    xv = _device(b, value(x))
    shape = tuple(xv.shape)
    axes = _axes(axis, len(shape))
    op = "sum" if name == "mean" else name
    y = b.reduce_axes(xv, axes, op, keepdims)
    count = math.prod(shape[a] for a in axes)
    if name == "mean":
        y = _mul(b, y, 1.0 / max(count, 1))

    def backward(dy, need):
        if name in ("sum", "mean"):
            g = dy if name == "sum" else _mul(b, dy, 1.0 / max(count, 1))
            return (_expand_to(b, g, shape, axes, keepdims),)
        # max/min: ties share the gradient equally (as on the CPU)
        y_keep = y if keepdims else b.reshape(y, tuple(1 if k in axes else d
                                                       for k, d in enumerate(shape)))
        dy_keep = dy if keepdims else b.reshape(dy, tuple(y_keep.shape))
        hit = b.elementwise_binary(xv, y_keep, "equal")
        share = b.elementwise_binary(dy_keep, b.reduce_axes(hit, axes, "sum", True), "divide")
        return (b.elementwise_binary(hit, share, "multiply"),)

    return record(y, (x,), backward, name)
