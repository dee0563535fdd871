"""keras.ops' NumPy-like part: elementwise arithmetic with broadcasting, comparisons, math
functions, reductions over axes, matmul/dot/einsum, shapes, indexing.

Each op computes with NumPy on the host arrays of the CPU backend (already vectorized, no
Python loop over elements) and records a backward closure that keeps only what the gradient
needs. The float64 NumPy expressions here are also the tests' reference (tests/test_ops.py
checks every gradient by finite differences). 2-D ``matmul`` goes through the backend's dense
ops; on OpenCL the others run through ``pynn.ops.device`` (the elementwise family and
opencl/tensor.cl), and the few with no device formula raise (``cpu_only``).
"""

import builtins
import itertools
import math

import numpy as np

from pynn import backend
from pynn.autodiff import Tensor
from pynn.ops import device
from pynn.ops._core import cpu_only, op, record, shape_of, unbroadcast, value


def _on_device():
    return backend.current().NAME != "cpu"


def convert_to_tensor(x, dtype=None):
    """A Tensor on the current backend (a copy of host data; a Tensor is returned as is)."""
    if type(x) is Tensor and dtype is None:
        return x
    v = value(x)
    b = backend.current()
    if dtype is None:
        arr = np.asarray(v) if b.NAME == "cpu" or isinstance(v, (np.ndarray, np.generic, int,
                                                                  float, list)) else v
        if isinstance(arr, np.ndarray):
            dtype = np.float32 if arr.dtype == np.float64 and not isinstance(
                v, np.ndarray) else arr.dtype
    return Tensor(b.asarray(v, dtype) if isinstance(v, (np.ndarray, np.generic, int, float,
                                                        list)) else v)


def _unary(name, forward, grad):
    """An elementwise op: y = forward(x); dx = grad(dy, x, y) (None: no gradient)."""

    def fn(x):
        if _on_device():
            return device.unary(name, x)
        xv = value(x)
        y = forward(np.asarray(xv))
        if grad is None:
            return Tensor(y)
        return record(y, (x,), lambda dy, need: (grad(dy, xv, y),), name)

    fn.__name__ = name
    fn.__doc__ = f"keras.ops.{name}, elementwise, with its gradient."
    return op(fn)


negative = _unary("negative", np.negative, lambda dy, x, y: -dy)
abs = _unary("abs", np.abs, lambda dy, x, y: dy * np.sign(x))
absolute = _unary("absolute", np.abs, lambda dy, x, y: dy * np.sign(x))
sign = _unary("sign", np.sign, None)
exp = _unary("exp", np.exp, lambda dy, x, y: dy * y)
expm1 = _unary("expm1", np.expm1, lambda dy, x, y: dy * (y + 1))
log = _unary("log", np.log, lambda dy, x, y: dy / x)
log1p = _unary("log1p", np.log1p, lambda dy, x, y: dy / (1 + x))
log2 = _unary("log2", np.log2, lambda dy, x, y: dy / (x * math.log(2.0)))
log10 = _unary("log10", np.log10, lambda dy, x, y: dy / (x * math.log(10.0)))
sqrt = _unary("sqrt", np.sqrt, lambda dy, x, y: dy * 0.5 / y)
rsqrt = _unary("rsqrt", lambda x: 1 / np.sqrt(x), lambda dy, x, y: dy * -0.5 * y / x)
square = _unary("square", np.square, lambda dy, x, y: dy * 2 * x)
reciprocal = _unary("reciprocal", np.reciprocal, lambda dy, x, y: -dy * y * y)
sin = _unary("sin", np.sin, lambda dy, x, y: dy * np.cos(x))
cos = _unary("cos", np.cos, lambda dy, x, y: -dy * np.sin(x))
tan = _unary("tan", np.tan, lambda dy, x, y: dy * (1 + y * y))
arcsin = _unary("arcsin", np.arcsin, lambda dy, x, y: dy / np.sqrt(1 - x * x))
arccos = _unary("arccos", np.arccos, lambda dy, x, y: -dy / np.sqrt(1 - x * x))
arctan = _unary("arctan", np.arctan, lambda dy, x, y: dy / (1 + x * x))
sinh = _unary("sinh", np.sinh, lambda dy, x, y: dy * np.cosh(x))
cosh = _unary("cosh", np.cosh, lambda dy, x, y: dy * np.sinh(x))
tanh = _unary("tanh", np.tanh, lambda dy, x, y: dy * (1 - y * y))
arcsinh = _unary("arcsinh", np.arcsinh, lambda dy, x, y: dy / np.sqrt(x * x + 1))
arccosh = _unary("arccosh", np.arccosh, lambda dy, x, y: dy / np.sqrt(x * x - 1))
arctanh = _unary("arctanh", np.arctanh, lambda dy, x, y: dy / (1 - x * x))
floor = _unary("floor", np.floor, None)
ceil = _unary("ceil", np.ceil, None)
round = _unary("round", np.round, None)
logical_not = _unary("logical_not", np.logical_not, None)
isnan = _unary("isnan", np.isnan, None)
isfinite = _unary("isfinite", np.isfinite, None)


def _binary(name, forward, grad1, grad2):
    """A broadcasting elementwise op: y = forward(a, b); each gradient is grad(dy, a, b, y)
    summed back to its operand's shape (None: no gradient)."""

    def fn(x1, x2):
        if _on_device():
            return device.binary(name, x1, x2)
        a, b = value(x1), value(x2)
        y = forward(a, b)
        if grad1 is None:
            return Tensor(np.asarray(y))

        def backward(dy, need):
            return (unbroadcast(grad1(dy, a, b, y), shape_of(a)) if need[0] else None,
                    unbroadcast(grad2(dy, a, b, y), shape_of(b)) if need[1] else None)

        return record(np.asarray(y), (x1, x2), backward, name)

    fn.__name__ = name
    fn.__doc__ = f"keras.ops.{name}, broadcasting, with its gradient."
    return op(fn)


def _select(mask, dy):
    return np.where(mask, dy, 0).astype(dy.dtype, copy=False)


add = _binary("add", np.add, lambda dy, a, b, y: dy, lambda dy, a, b, y: dy)
subtract = _binary("subtract", np.subtract, lambda dy, a, b, y: dy, lambda dy, a, b, y: -dy)
multiply = _binary("multiply", np.multiply, lambda dy, a, b, y: dy * b,
                   lambda dy, a, b, y: dy * a)
divide = _binary("divide", np.true_divide, lambda dy, a, b, y: dy / b,
                 lambda dy, a, b, y: -dy * y / b)
true_divide = _binary("true_divide", np.true_divide, lambda dy, a, b, y: dy / b,
                      lambda dy, a, b, y: -dy * y / b)
# d(a^b)/db = a^b log a, taken as 0 where a = 0 (TensorFlow's convention, no NaN).
power = _binary("power", np.power,
                lambda dy, a, b, y: dy * b * np.power(a, np.subtract(b, 1)),
                lambda dy, a, b, y: dy * y * np.log(np.where(np.asarray(a) > 0, a, 1)))
# Ties send the gradient to the first operand (NumPy's and TensorFlow's choice).
maximum = _binary("maximum", np.maximum,
                  lambda dy, a, b, y: _select(np.asarray(a) >= b, dy),
                  lambda dy, a, b, y: _select(np.asarray(a) < b, dy))
minimum = _binary("minimum", np.minimum,
                  lambda dy, a, b, y: _select(np.asarray(a) <= b, dy),
                  lambda dy, a, b, y: _select(np.asarray(a) > b, dy))
arctan2 = _binary("arctan2", np.arctan2,
                  lambda dy, a, b, y: dy * b / (np.square(a) + np.square(b)),
                  lambda dy, a, b, y: -dy * a / (np.square(a) + np.square(b)))
floor_divide = _binary("floor_divide", np.floor_divide, None, None)
mod = _binary("mod", np.mod, None, None)
equal = _binary("equal", np.equal, None, None)
not_equal = _binary("not_equal", np.not_equal, None, None)
less = _binary("less", np.less, None, None)
less_equal = _binary("less_equal", np.less_equal, None, None)
greater = _binary("greater", np.greater, None, None)
greater_equal = _binary("greater_equal", np.greater_equal, None, None)
logical_and = _binary("logical_and", np.logical_and, None, None)
logical_or = _binary("logical_or", np.logical_or, None, None)
logical_xor = _binary("logical_xor", np.logical_xor, None, None)


@op
def clip(x, x_min, x_max):
    """keras.ops.clip; the gradient passes where x lies inside [x_min, x_max]."""
    if _on_device():
        return minimum(maximum(x, x_min), x_max)
    xv = np.asarray(value(x))
    y = np.clip(xv, x_min, x_max)
    return record(y, (x,), lambda dy, need: (_select((xv >= x_min) & (xv <= x_max), dy),),
                  "clip")


@op
def where(condition, x1=None, x2=None):
    """keras.ops.where: x1 where condition, else x2 (broadcasting); with one argument, the
    indices where it holds."""
    if _on_device() and not (x1 is None and x2 is None):
        return device.where(condition, x1, x2)
    cpu_only("where")
    c = np.asarray(value(condition)).astype(bool)
    if x1 is None and x2 is None:
        return tuple(Tensor(i) for i in np.nonzero(c))
    a, b = value(x1), value(x2)
    y = np.asarray(np.where(c, a, b))

    def backward(dy, need):
        return (None,
                unbroadcast(_select(c, dy), shape_of(a)) if need[1] else None,
                unbroadcast(_select(~c, dy), shape_of(b)) if need[2] else None)

    return record(y, (condition, x1, x2), backward, "where")


@op
def stop_gradient(x):
    """The value of x, through which no gradient flows."""
    return Tensor(value(x))


@op
def cast(x, dtype):
    """keras.ops.cast; between float types the gradient is cast back."""
    if _on_device():
        return device.cast(x, dtype)
    xv = np.asarray(value(x))
    dtype = np.dtype(dtype)
    y = xv.astype(dtype)
    if dtype.kind != "f" or xv.dtype.kind != "f":
        return Tensor(y)
    return record(y, (x,), lambda dy, need: (dy.astype(xv.dtype),), "cast")


@op
def zeros_like(x, dtype=None):
    return Tensor(np.zeros(shape_of(value(x)), dtype or value(x).dtype))


@op
def ones_like(x, dtype=None):
    return Tensor(np.ones(shape_of(value(x)), dtype or value(x).dtype))


@op
def zeros(shape, dtype="float32"):
    return Tensor(backend.current().zeros(tuple(shape), dtype))


@op
def ones(shape, dtype="float32"):
    return Tensor(backend.current().full(tuple(shape), 1.0, dtype))


# -- reductions ---------------------------------------------------------------------------
def _axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    return tuple(int(a) % ndim for a in axes) if ndim else ()


def _expand(g, shape, axes, keepdims):
    """A reduced gradient brought back to the operand's shape (broadcast, not copied)."""
    if not keepdims:
        g = np.expand_dims(g, axes) if axes else g
    return np.broadcast_to(g, shape)


@op
def sum(x, axis=None, keepdims=False):
    if _on_device():
        return device.reduction("sum", x, axis, keepdims)
    xv = np.asarray(value(x))
    axes = _axes(axis, xv.ndim)
    y = np.asarray(np.sum(xv, axis=axes, keepdims=keepdims))
    return record(y, (x,), lambda dy, need: (_expand(dy, xv.shape, axes, keepdims),), "sum")


@op
def mean(x, axis=None, keepdims=False):
    if _on_device():
        return device.reduction("mean", x, axis, keepdims)
    xv = np.asarray(value(x))
    axes = _axes(axis, xv.ndim)
    y = np.asarray(np.mean(xv, axis=axes, keepdims=keepdims))
    count = math.prod(xv.shape[a] for a in axes)
    return record(y, (x,), lambda dy, need: (_expand(dy / count, xv.shape, axes, keepdims),),
                  "mean")


def _extremum(name, reduce):
    def fn(x, axis=None, keepdims=False, initial=None):
        if _on_device():
            return device.reduction({"amax": "max", "amin": "min"}.get(name, name), x, axis,
                                    keepdims, initial)
        xv = np.asarray(value(x))
        axes = _axes(axis, xv.ndim)
        y = np.asarray(reduce(xv, axis=axes, keepdims=True) if initial is None else
                       reduce(xv, axis=axes, keepdims=True, initial=initial))

        def backward(dy, need):
            # Ties share the gradient equally (TensorFlow's reduce_max convention).
            hit = xv == y
            count = np.sum(hit, axis=axes, keepdims=True)
            g = dy if keepdims else (np.expand_dims(dy, axes) if axes else dy)
            return (np.where(hit, g / np.maximum(count, 1), 0).astype(xv.dtype),)

        out = y if keepdims else np.squeeze(y, axis=axes)
        return record(np.asarray(out), (x,), backward, name)

    fn.__name__ = name
    return op(fn)


max = _extremum("max", np.max)
min = _extremum("min", np.min)
amax = _extremum("amax", np.max)
amin = _extremum("amin", np.min)


@op
def prod(x, axis=None, keepdims=False):
    if _on_device():
        return device.prod(x, axis, keepdims)
    xv = np.asarray(value(x))
    axes = _axes(axis, xv.ndim)
    y = np.asarray(np.prod(xv, axis=axes, keepdims=True))

    def backward(dy, need):
        g = dy if keepdims else (np.expand_dims(dy, axes) if axes else dy)
        # Products of the others, exact with zeros: exclusive cumulative products both ways
        # would be exact too, but the common case has no zero: y / x where x != 0.
        nonzero = xv != 0
        if np.all(nonzero):
            return ((g * y / xv).astype(xv.dtype),)
        moved = np.moveaxis(xv, axes, range(len(axes))).reshape((-1,) + tuple(
            np.delete(xv.shape, axes)))
        left = np.cumprod(np.concatenate([np.ones_like(moved[:1]), moved[:-1]]), axis=0)
        right = np.cumprod(np.concatenate([np.ones_like(moved[:1]), moved[::-1][:-1]]),
                           axis=0)[::-1]
        others = (left * right).reshape(
            tuple(xv.shape[a] for a in axes) + tuple(np.delete(xv.shape, axes)))
        others = np.moveaxis(others, range(len(axes)), axes)
        return ((g * others).astype(xv.dtype),)

    out = y if keepdims else np.squeeze(y, axis=axes)
    return record(np.asarray(out), (x,), backward, "prod")


@op
def var(x, axis=None, keepdims=False):
    """keras.ops.var: the biased (population) variance."""
    m = mean(x, axis=axis, keepdims=True)
    return mean(square(subtract(x, m)), axis=axis, keepdims=keepdims)


@op
def std(x, axis=None, keepdims=False):
    return sqrt(var(x, axis=axis, keepdims=keepdims))


@op
def logsumexp(x, axis=None, keepdims=False):
    if _on_device():  # composed: the peak is a constant shift (its gradient cancels)
        peak = stop_gradient(max(x, axis=axis, keepdims=True))
        out = add(log(sum(exp(subtract(x, peak)), axis=axis, keepdims=True)), peak)
        return out if keepdims else squeeze(out, axis if axis is not None else None)
    xv = np.asarray(value(x))
    axes = _axes(axis, xv.ndim)
    peak = np.max(xv, axis=axes, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0)
    y = np.log(np.sum(np.exp(xv - peak), axis=axes, keepdims=True)) + peak

    def backward(dy, need):
        g = dy if keepdims else (np.expand_dims(dy, axes) if axes else dy)
        return ((g * np.exp(xv - y)).astype(xv.dtype),)

    out = y if keepdims else np.squeeze(y, axis=axes)
    return record(np.asarray(out), (x,), backward, "logsumexp")


def _arg(name, reduce):
    def fn(x, axis=None, keepdims=False):
        if name in ("argmax", "argmin") and _on_device():
            return device.arg_reduce(name, x, axis, keepdims)
        if _on_device():
            return device.any_all(name, x, axis, keepdims)
        xv = np.asarray(value(x))
        return Tensor(np.asarray(reduce(xv, axis=axis, keepdims=keepdims)))

    fn.__name__ = name
    return op(fn)


argmax = _arg("argmax", np.argmax)
argmin = _arg("argmin", np.argmin)
any = _arg("any", np.any)
all = _arg("all", np.all)


# -- products -------------------------------------------------------------------------------
@op
def matmul(x1, x2):
    """keras.ops.matmul (NumPy's broadcasting rules). 2-D products run through the backend's
    dense ops (BLAS on the CPU, the gemm kernel on OpenCL): the same kernels as Dense."""
    a, b = value(x1), value(x2)
    be = backend.current()
    if getattr(a, "ndim", 0) == 2 and getattr(b, "ndim", 0) == 2 and a.dtype == b.dtype \
            and a.dtype in (np.float32, np.float64):
        y, _ = be.dense_forward(a, b, None, "linear", 0.0)

        def backward2(dy, need):
            return (be.dense_backward_input(dy, b) if need[0] else None,
                    be.dense_backward_weight(a, dy) if need[1] else None)

        return record(y, (x1, x2), backward2, "matmul")
    if _on_device():
        return device.matmul(x1, x2)
    a, b = np.asarray(a), np.asarray(b)
    y = np.matmul(a, b)

    def backward(dy, need):
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        d = dy
        # b's axis first: two vectors' product is a 0-d dy, which takes -1, then -2
        if b.ndim == 1:
            d = np.expand_dims(d, -1)
        if a.ndim == 1:
            d = np.expand_dims(d, -2)
        ga = np.matmul(d, np.swapaxes(b2, -1, -2)) if need[0] else None
        gb = np.matmul(np.swapaxes(a2, -1, -2), d) if need[1] else None
        if ga is not None:
            ga = unbroadcast(ga, a2.shape).reshape(a.shape)
        if gb is not None:
            gb = unbroadcast(gb, b2.shape).reshape(b.shape)
        return ga, gb

    return record(np.asarray(y), (x1, x2), backward, "matmul")


@op
def dot(x1, x2):
    """keras.ops.dot (NumPy's dot): a scalar product scales, N-D by 1-D or 2-D is matmul."""
    a, b = value(x1), value(x2)
    if np.ndim(a) == 0 or np.ndim(b) == 0:
        return multiply(x1, x2)
    if np.ndim(b) <= 2:
        return matmul(x1, x2)
    return tensordot(x1, x2, axes=([-1], [-2]))


@op
def tensordot(x1, x2, axes=2):
    a, b = value(x1), value(x2)
    if isinstance(axes, (int, np.integer)):
        ax_a, ax_b = list(range(a.ndim - axes, a.ndim)), list(range(axes))
    else:
        ax_a = [int(i) % a.ndim for i in np.atleast_1d(axes[0])]
        ax_b = [int(i) % b.ndim for i in np.atleast_1d(axes[1])]
    letters = "abcdefghijklmnopqrstuvwxyz"
    sa = [letters[i] for i in range(a.ndim)]
    sb = [letters[a.ndim + i] for i in range(b.ndim)]
    for i, j in zip(ax_a, ax_b):
        sb[j] = sa[i]
    out = [c for i, c in enumerate(sa) if i not in ax_a] + \
        [c for j, c in enumerate(sb) if j not in ax_b]
    return einsum(f"{''.join(sa)},{''.join(sb)}->{''.join(out)}", x1, x2)


@op
def einsum(subscripts, *operands):
    """keras.ops.einsum for one or two operands, explicit or implicit output, no ellipsis."""
    if "." in subscripts:
        raise ValueError(f"pynn.ops.einsum: ellipsis ('...') is not supported, got "
                         f"{subscripts!r}")
    if len(operands) not in (1, 2):
        raise ValueError(f"pynn.ops.einsum: takes 1 or 2 operands, got {len(operands)}")
    spec = subscripts.replace(" ", "")
    if "->" in spec:
        ins, out = spec.split("->")
    else:
        ins = spec
        letters = ins.replace(",", "")
        out = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    if _on_device():
        return device.einsum(f"{ins}->{out}", operands)
    terms = ins.split(",")
    vals = [np.asarray(value(x)) for x in operands]
    y = np.asarray(np.einsum(f"{ins}->{out}", *vals))

    def grad_of(k, dy):
        # d/d operand k: contract dy with the other operand onto k's letters; letters of k
        # found in neither are broadcast back (a sum's gradient), repeated ones (a diagonal)
        # are not supported.
        term = terms[k]
        if len(set(term)) != len(term):
            raise ValueError(f"pynn.ops.einsum: no gradient for repeated indices in {term!r}")
        others = [terms[j] for j in range(len(terms)) if j != k]
        present = set(out).union(*others) if others else set(out)
        kept = "".join(c for c in term if c in present)
        args = [dy] + [vals[j] for j in range(len(terms)) if j != k]
        g = np.einsum(f"{','.join([out] + others)}->{kept}", *args)
        shape = [vals[k].shape[i] if c in present else 1 for i, c in enumerate(term)]
        return np.broadcast_to(g.reshape(shape), vals[k].shape).astype(vals[k].dtype)

    def backward(dy, need):
        return tuple(grad_of(k, dy) if need[k] else None for k in range(len(vals)))

    return record(y, operands, backward, "einsum")


# -- shapes ---------------------------------------------------------------------------------
def _reshaping(name, forward):
    """An op that only moves values: the gradient is its inverse on dy."""

    def fn(x, *args, **kwargs):
        xv = value(x)
        y, inverse = forward(xv, *args, **kwargs)
        return record(y, (x,), lambda dy, need: (inverse(dy),), name)

    fn.__name__ = name
    return op(fn)


def _reshape(xv, newshape):
    be = backend.current()
    shape = tuple(xv.shape)
    return be.reshape(xv, tuple(int(d) for d in newshape)), lambda dy: be.reshape(dy, shape)


def _transpose(xv, axes=None):
    perm = tuple(reversed(range(xv.ndim))) if axes is None else tuple(
        int(a) % xv.ndim for a in axes)
    inverse = tuple(int(i) for i in np.argsort(perm))
    if _on_device():  # the Permute layer's kernel
        b = backend.current()
        return b.transpose_forward(xv, perm), lambda dy: b.transpose_forward(dy, inverse)
    return np.transpose(xv, perm), lambda dy: np.transpose(dy, inverse)


def _expand_dims(xv, axis):
    be = backend.current()
    shape = tuple(xv.shape)
    return be.reshape(xv, np.expand_dims(np.empty(shape, np.int8), axis).shape), \
        lambda dy: be.reshape(dy, shape)


def _squeeze(xv, axis=None):
    be = backend.current()
    shape = tuple(xv.shape)
    return be.reshape(xv, np.squeeze(np.empty(shape, np.int8), axis).shape), \
        lambda dy: be.reshape(dy, shape)


def _broadcast_to(xv, shape):
    own = tuple(xv.shape)
    return np.broadcast_to(xv, tuple(shape)), lambda dy: unbroadcast(dy, own)


def _flip(xv, axis=None):
    return np.flip(xv, axis), lambda dy: np.flip(dy, axis)


reshape = _reshaping("reshape", _reshape)
transpose = _reshaping("transpose", _transpose)
expand_dims = _reshaping("expand_dims", _expand_dims)
squeeze = _reshaping("squeeze", _squeeze)
_broadcast_to_cpu = _reshaping("broadcast_to", _broadcast_to)
_flip_cpu = _reshaping("flip", _flip)


@op
def broadcast_to(x, shape):
    if _on_device():
        return device.broadcast_to(x, shape)
    return _broadcast_to_cpu.raw(x, shape)


@op
def flip(x, axis=None):
    if _on_device():
        return device.flip(x, axis)
    return _flip_cpu.raw(x, axis)


@op
def getitem(x, key):
    """``x[key]`` (basic and integer-array indexing); the gradient scatters back, adding where
    an index repeats."""
    if _on_device():
        return device.getitem(x, key)
    xv = np.asarray(value(x))
    key = tuple(value(k) if type(k) is Tensor else k for k in key) if isinstance(key, tuple) \
        else (value(key) if type(key) is Tensor else key)
    y = np.asarray(xv[key])

    def backward(dy, need):
        g = np.zeros(xv.shape, dy.dtype)
        np.add.at(g, key, dy)
        return (g,)

    return record(y, (x,), backward, "getitem")


@op
def slice(x, start_indices, shape):
    return getitem(x, tuple(builtins.slice(int(s), int(s) + int(n))
                            for s, n in zip(start_indices, shape)))


@op
def concatenate(xs, axis=0):
    if _on_device():  # the Concatenate layer's kernels
        b = backend.current()
        vals = [device._device(b, value(x)) for x in xs]
        axis = axis % len(vals[0].shape)
        sizes = [int(v.shape[axis]) for v in vals]
        y = b.concatenate_forward(vals, axis)
        return record(y, tuple(xs), lambda dy, need: tuple(
            b.concatenate_backward(dy, sizes, axis)), "concatenate")
    vals = [np.asarray(value(x)) for x in xs]
    y = np.concatenate(vals, axis=axis)
    bounds = np.cumsum([v.shape[axis] for v in vals])[:-1]

    def backward(dy, need):
        return tuple(np.split(dy, bounds, axis=axis))

    return record(y, tuple(xs), backward, "concatenate")


@op
def stack(xs, axis=0):
    return concatenate([expand_dims(x, axis) for x in xs], axis=axis)


@op
def split(x, indices_or_sections, axis=0):
    """keras.ops.split: a list of Tensors, each a slice of x (so each has its gradient)."""
    xv = value(x)
    n = xv.shape[axis]
    if isinstance(indices_or_sections, (int, np.integer)):
        if n % indices_or_sections:
            raise ValueError(f"pynn.ops.split: axis {axis} of length {n} does not split into "
                             f"{indices_or_sections} equal parts")
        step = n // indices_or_sections
        bounds = list(range(0, n + 1, step))
    else:
        bounds = [0] + [int(i) for i in indices_or_sections] + [n]
    axis = axis % xv.ndim
    out = []
    for lo, hi in itertools.pairwise(bounds):
        key = (builtins.slice(None),) * axis + (builtins.slice(lo, hi),)
        out.append(getitem(x, key))
    return out


@op
def take(x, indices, axis=None):
    if _on_device():
        return device.take(x, indices, axis)
    xv = np.asarray(value(x))
    idx = np.asarray(value(indices)).astype(np.int64)
    if axis is None:
        flat = reshape(x, (-1,))
        return getitem(flat, idx)
    axis = axis % xv.ndim
    return getitem(x, (builtins.slice(None),) * axis + (idx,))


@op
def take_along_axis(x, indices, axis=None):
    if _on_device():
        if axis is None:
            return device.take_along_axis(reshape(x, (-1,)), reshape(indices, (-1,)), 0)
        return device.take_along_axis(x, indices, axis)
    xv = np.asarray(value(x))
    idx = np.asarray(value(indices)).astype(np.int64)
    if axis is None:
        return take_along_axis(reshape(x, (-1,)), np.reshape(idx, (-1,)), 0)
    axis = axis % xv.ndim
    idx = np.where(idx < 0, idx + xv.shape[axis], idx)
    y = np.take_along_axis(xv, idx, axis)
    idx = np.broadcast_to(idx, y.shape)  # broadcast indices scatter once per output

    def backward(dy, need):
        g = np.zeros(xv.shape, dy.dtype)
        grids = list(np.indices(idx.shape, sparse=True))
        grids[axis] = idx
        np.add.at(g, tuple(grids), dy)
        return (g,)

    return record(y, (x,), backward, "take_along_axis")


@op
def one_hot(x, num_classes, axis=-1, dtype="float32"):
    if _on_device():
        return device.one_hot(x, num_classes, axis, dtype)
    idx = np.asarray(value(x)).astype(np.int64)
    y = (idx[..., None] == np.arange(int(num_classes))).astype(dtype)
    if axis not in (-1, idx.ndim):
        y = np.moveaxis(y, -1, axis)
    return Tensor(y)
