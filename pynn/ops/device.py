"""pynn.ops on a device backend (OpenCL): the elementwise, broadcasting and reduction ops
through the backend's elementwise family (opencl/elementwise.cl), their gradients through the
same kernels, so nothing leaves the device. The CPU keeps NumPy (numpy_ops), whose results
these match (tests/test_elementwise.py). Indexing, where, cast, one_hot, argmax/argmin, prod's
gradient and the batched products of matmul/einsum use opencl/tensor.cl; single products
the gemm core (tests/test_ops_device.py).

An op with no device formula here raises (``unsupported``): never a silent host fallback.
"""

import math

import numpy as np

from pynn import backend
from pynn.autodiff import Tensor
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
    "tan": lambda b, dy, x, y: _mul(b, dy, _add(b, b.elementwise_unary(y, "square"), 1.0)),
    "arcsin": lambda b, dy, x, y: b.elementwise_binary(dy, _one_minus_square_root(b, x),
                                                       "divide"),
    "arccos": lambda b, dy, x, y: b.elementwise_unary(b.elementwise_binary(
        dy, _one_minus_square_root(b, x), "divide"), "negative"),
    "arcsinh": lambda b, dy, x, y: b.elementwise_binary(dy, b.elementwise_unary(
        _add(b, b.elementwise_unary(x, "square"), 1.0), "sqrt"), "divide"),
    "arccosh": lambda b, dy, x, y: b.elementwise_binary(dy, b.elementwise_unary(
        _add(b, b.elementwise_unary(x, "square"), -1.0), "sqrt"), "divide"),
    "arctanh": lambda b, dy, x, y: b.elementwise_binary(dy, b.elementwise_binary(
        _scalar(b, 1.0), b.elementwise_unary(x, "square"), "subtract"), "divide"),
    "sign": None, "floor": None, "ceil": None, "round": None,
}


def _one_minus_square_root(b, x):
    """sqrt(1 - x^2), the denominator of arcsin's and arccos's derivatives."""
    return b.elementwise_unary(b.elementwise_binary(
        _scalar(b, 1.0), b.elementwise_unary(x, "square"), "subtract"), "sqrt")


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
    b = backend.current()
    if name in ("logical_not", "isnan", "isfinite"):
        return record(_kernels().predicate(_device(b, value(x)), name), (), None, name)
    if name in LOG_BASES:
        return _log_base(b, name, x)
    if name not in UNARY_GRADS:
        unsupported(name)
    xv = _device(b, value(x))
    if name == "rsqrt":  # no kernel code of its own: 1 / sqrt(x)
        y = b.elementwise_unary(b.elementwise_unary(xv, "sqrt"), "reciprocal")
    else:
        y = b.elementwise_unary(xv, "abs" if name == "absolute" else name)
    grad = UNARY_GRADS[name]
    if grad is None:
        return record(y, (), None, name)
    return record(y, (x,), lambda dy, need: (grad(b, dy, xv, y),), name)


LOG_BASES = {"log2": math.log(2.0), "log10": math.log(10.0)}


def _log_base(b, name, x):
    """log2, log10: the log kernel times 1 / ln(base) (no kernel code of their own)."""
    ln_base = LOG_BASES[name]
    xv = _device(b, value(x))
    y = _mul(b, b.elementwise_unary(xv, "log"), 1.0 / ln_base)
    return record(y, (x,), lambda dy, need: (b.elementwise_binary(dy, _mul(b, xv, ln_base),
                                                                  "divide"),), name)


def binary(name, x1, x2):
    b = backend.current()
    if name in ("logical_and", "logical_or", "logical_xor", "not_equal", "floor_divide",
                "mod"):
        # No gradient (as on the CPU): floor_divide and mod are piecewise constant in b
        # and NumPy's mod is not differentiated by keras.ops either.
        from pynn.backend.operands.elementwise import broadcast_shape
        a, c = _device(b, value(x1)), _device(b, value(x2))
        shape = broadcast_shape(f"pynn.ops.{name}", tuple(a.shape), tuple(c.shape))
        y = _kernels().broadcast_binary(a, c, name, shape, _broadcast_strides(a.shape, shape),
                                        _broadcast_strides(c.shape, shape))
        return record(y, (), None, name)
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
    # d atan2(a, c) = (c da - a dc) / (a^2 + c^2)
    "arctan2": (lambda b, dy, a, c, y: b.elementwise_binary(_mul(b, dy, c), _norm2(b, a, c),
                                                            "divide"),
                lambda b, dy, a, c, y: b.elementwise_unary(b.elementwise_binary(
                    _mul(b, dy, a), _norm2(b, a, c), "divide"), "negative")),
    "equal": None, "not_equal": None, "less": None, "less_equal": None, "greater": None,
    "greater_equal": None,
}
BINARY_GRADS["true_divide"] = BINARY_GRADS["divide"]


def _norm2(b, a, c):
    return b.elementwise_binary(b.elementwise_unary(a, "square"),
                                b.elementwise_unary(c, "square"), "add")


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


def any_all(name, x, axis, keepdims):
    """any / all: the max / min of x != 0 (float 0/1, as the comparisons give)."""
    b = backend.current()
    xv = _device(b, value(x))
    shape = tuple(xv.shape)
    axes = _axes(axis, len(shape))
    if math.prod(shape[a] for a in axes) == 0:  # NumPy: any of nothing False, all True
        out = tuple(1 if k in axes else d for k, d in enumerate(shape)) if keepdims else \
            tuple(d for k, d in enumerate(shape) if k not in axes)
        return record(b.full(out, 0.0 if name == "any" else 1.0, np.float32), (), None, name)
    nonzero = _kernels().predicate(xv, "nonzero")
    y = b.reduce_axes(nonzero, axes, "max" if name == "any" else "min", keepdims)
    return record(y, (), None, name)


def reduction(name, x, axis, keepdims, initial=None):
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
    if initial is not None:  # NumPy's initial=: one more candidate in every reduction
        y = b.elementwise_binary(y, _scalar(b, initial), "maximum" if name == "max"
                                 else "minimum")

    def backward(dy, need):
        if name in ("sum", "mean"):
            g = dy if name == "sum" else _mul(b, dy, 1.0 / max(count, 1))
            return (_expand_to(b, g, shape, axes, keepdims),)
        # max/min: ties share the gradient equally (as on the CPU)
        y_keep = y if keepdims else b.reshape(y, tuple(1 if k in axes else d
                                                       for k, d in enumerate(shape)))
        dy_keep = dy if keepdims else b.reshape(dy, tuple(y_keep.shape))
        hit = b.elementwise_binary(xv, y_keep, "equal")
        # at least 1: where initial= won, no element is hit and none gets a gradient
        hits = b.elementwise_binary(b.reduce_axes(hit, axes, "sum", True), _scalar(b, 1.0),
                                    "maximum")
        share = b.elementwise_binary(dy_keep, hits, "divide")
        return (b.elementwise_binary(hit, share, "multiply"),)

    return record(y, (x,), backward, name)


# -- indexing, selection, casting, products (opencl/tensor.cl) -------------------------------
def _kernels():
    from pynn.backend.opencl import tensor
    return tensor


def _indices(b, v):
    """Integer indices as an int32 device array: host ones are uploaded (as keras.ops converts
    its arguments), device float ones cast on the device."""
    v = value(v)
    if isinstance(v, (int, np.integer, list, tuple, np.ndarray)):
        a = np.asarray(v)
        if a.dtype.kind not in "iu":
            raise TypeError(f"pynn.ops: indices must be integers, got dtype {a.dtype}")
        return b.asarray(a.astype(np.int32), np.int32)
    if v.dtype == np.int32:
        return v
    return _kernels().cast(v, np.int32)


def _gather(b, x, xv, idx, axis, idx_strides, out_shape, name):
    """y = x gathered along ``axis`` by ``idx`` ((O, K, I) strides), gradient scattered back."""
    k = _kernels()
    shape = tuple(xv.shape)
    outer, inner = math.prod(shape[:axis]), math.prod(shape[axis + 1:])
    length = shape[axis]
    count = math.prod(out_shape) // max(outer * inner, 1) if outer * inner else 0
    flat = k.gather_axis(xv, idx, outer, length, inner, count, idx_strides)
    y = b.reshape(flat, tuple(out_shape))

    def backward(dy, need):
        dx = k.gather_axis_backward(dy, idx, outer, length, inner, count, idx_strides)
        return (b.reshape(dx, shape),)

    return record(y, (x,), backward, name)


def take(x, indices, axis):
    b = backend.current()
    xv = _device(b, value(x))
    if axis is None:
        xv_flat = b.reshape(xv, (-1,))
        idx = _indices(b, indices)
        shape = tuple(xv.shape)

        def flat_grad(dy, need):
            return (b.reshape(dy, shape),)

        flat = record(xv_flat, (x,), flat_grad, "reshape")
        return _gather(b, flat, xv_flat, idx, 0, (0, 1, 0), tuple(idx.shape), "take")
    axis = axis % len(xv.shape)
    idx = _indices(b, indices)
    out = tuple(xv.shape[:axis]) + tuple(idx.shape) + tuple(xv.shape[axis + 1:])
    return _gather(b, x, xv, idx, axis, (0, 1, 0), out, "take")


def take_along_axis(x, indices, axis):
    b = backend.current()
    xv = _device(b, value(x))
    idx = _indices(b, indices)
    shape = tuple(xv.shape)
    axis = axis % len(shape)
    ishape = tuple(idx.shape)
    if len(ishape) != len(shape) or any(
            i != d and i != 1 for k, (i, d) in enumerate(zip(ishape, shape)) if k != axis):
        raise ValueError(f"pynn.ops.take_along_axis: indices of shape {ishape} do not match "
                         f"x of shape {shape} outside axis {axis}")
    strides = _kernels().contiguous_strides(ishape)
    # Collapse outer/inner axes into (O, K, I) strides; an index axis of size 1 broadcasts
    # only where every outer (inner) axis does, the common cases (full or size-1 everywhere).
    outer_b = [ishape[k] == 1 for k in range(axis)]
    inner_b = [ishape[k] == 1 for k in range(axis + 1, len(shape))]
    if len(set(outer_b)) > 1 or len(set(inner_b)) > 1:
        unsupported("take_along_axis with partly broadcast indices")
    inner = math.prod(shape[axis + 1:])
    si = 0 if inner_b and inner_b[0] else 1
    so = 0 if outer_b and outer_b[0] else ishape[axis] * (inner if si else 1)
    sk = strides[axis]
    out = tuple(shape[:axis]) + (ishape[axis],) + tuple(shape[axis + 1:])
    return _gather(b, x, xv, idx, axis, (so, sk, si), out, "take_along_axis")


def where(condition, x1, x2):
    from pynn.backend.operands.elementwise import broadcast_shape
    b = backend.current()
    c = _device(b, value(condition))
    if c.dtype != np.float32:
        c = _kernels().cast(c, np.float32)
    a, d = _device(b, value(x1)), _device(b, value(x2))
    shape = broadcast_shape("pynn.ops.where", broadcast_shape(
        "pynn.ops.where", tuple(c.shape), tuple(a.shape)), tuple(d.shape))
    k = _kernels()
    y = k.where_select(c, a, d, shape, *(_broadcast_strides(t.shape, shape) for t in (c, a, d)))
    zero = _scalar(b, 0.0)

    def backward(dy, need):
        ga = unbroadcast(b, k.where_select(c, dy, zero, shape, _broadcast_strides(
            c.shape, shape), _broadcast_strides(dy.shape, shape), (0,) * len(shape)),
            a.shape) if need[1] else None
        gd = unbroadcast(b, k.where_select(c, zero, dy, shape, _broadcast_strides(
            c.shape, shape), (0,) * len(shape), _broadcast_strides(dy.shape, shape)),
            d.shape) if need[2] else None
        return None, ga, gd

    return record(y, (condition, x1, x2), backward, "where")


def _broadcast_strides(shape, out_shape):
    shape = tuple(shape)
    strides = [0] * len(out_shape)
    step, lead = 1, len(out_shape) - len(shape)
    for k in range(len(shape) - 1, -1, -1):
        strides[lead + k] = step if shape[k] != 1 else 0
        step *= shape[k]
    return tuple(strides)


def broadcast_to(x, shape):
    b = backend.current()
    xv = _device(b, value(x))
    shape = tuple(int(d) for d in shape)
    y = _kernels().strided_copy(xv, 0, shape, _broadcast_strides(xv.shape, shape))
    own = tuple(xv.shape)
    return record(y, (x,), lambda dy, need: (unbroadcast(b, dy, own),), "broadcast_to")


def flip(x, axis):
    b = backend.current()
    xv = _device(b, value(x))
    shape = tuple(xv.shape)
    axes = _axes(axis, len(shape))
    strides = list(_kernels().contiguous_strides(shape))
    offset = 0
    for a in axes:
        offset += (shape[a] - 1) * strides[a]
        strides[a] = -strides[a]
    k = _kernels()
    y = k.strided_copy(xv, offset, shape, strides)
    return record(y, (x,), lambda dy, need: (k.strided_copy(dy, offset, shape, strides),),
                  "flip")


def cast(x, dtype):
    b = backend.current()
    xv = _device(b, value(x))
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        dtype = np.dtype(np.float32)  # the device's float (arrays.asarray says why)
    y = _kernels().cast(xv, dtype)
    if dtype.kind != "f" or xv.dtype.kind != "f":
        return record(y, (), None, "cast")
    return record(y, (x,), lambda dy, need: (dy,), "cast")


def one_hot(x, num_classes, axis, dtype):
    b = backend.current()
    idx = _indices(b, x)
    y = _kernels().one_hot(idx, int(num_classes))
    if axis not in (-1, len(idx.shape)):
        n = len(y.shape)
        axis = axis % n
        perm = list(range(n - 1))
        perm.insert(axis, n - 1)
        y = b.transpose_forward(y, tuple(perm))
    if np.dtype(dtype) != np.float32:
        y = _kernels().cast(y, dtype)
    return record(y, (), None, "one_hot")


def _rows(b, xv, axes):
    """xv with ``axes`` moved last (the shape family's transpose), and the inverse perm."""
    n = len(xv.shape)
    kept = [k for k in range(n) if k not in axes]
    perm = kept + list(axes)
    if perm == list(range(n)):
        return xv, None
    inverse = tuple(int(i) for i in np.argsort(perm))
    return b.transpose_forward(xv, tuple(perm)), inverse


def arg_reduce(name, x, axis, keepdims):
    b = backend.current()
    xv = _device(b, value(x))
    shape = tuple(xv.shape)
    if axis is None:
        moved, outer, inner = b.reshape(xv, (-1,)), 1, math.prod(shape)
        out = (1,) * len(shape) if keepdims else ()
    else:
        axis = axis % len(shape)
        moved, _ = _rows(b, xv, (axis,))
        inner = shape[axis]
        outer = math.prod(shape) // max(inner, 1)
        out = tuple(1 if k == axis else d for k, d in enumerate(shape)) if keepdims else \
            tuple(d for k, d in enumerate(shape) if k != axis)
    if inner == 0:
        raise ValueError(f"pynn.ops.{name}: an empty axis has no {name}")
    y = _kernels().arg_reduce_rows(moved, outer, inner, name)
    return record(b.reshape(y, out), (), None, name)


def prod(x, axis, keepdims):
    b = backend.current()
    xv = _device(b, value(x))
    shape = tuple(xv.shape)
    axes = _axes(axis, len(shape))
    y = b.reduce_axes(xv, axes, "prod", keepdims)

    def backward(dy, need):
        moved, inverse = _rows(b, xv, axes)
        inner = math.prod(shape[a] for a in axes)
        outer = math.prod(shape) // max(inner, 1)
        g = b.reshape(dy, (outer,)) if outer else dy
        dx = _kernels().prod_backward_rows(moved, g, outer, inner)
        if inverse is not None:
            dx = b.transpose_forward(dx, inverse)
        return (b.reshape(dx, shape),)

    return record(y, (x,), backward, "prod")


# -- getitem: basic indexing as a strided view, one integer array as a take ----------------
def getitem(x, key):
    b = backend.current()
    xv = _device(b, value(x))
    shape = tuple(xv.shape)
    key = key if isinstance(key, tuple) else (key,)
    key = tuple(value(k) if type(k) is Tensor else k for k in key)
    key = _host_masks_as_indices(b, x, xv, key)
    if not isinstance(key, tuple):  # a whole-shape mask: already gathered
        return key
    arrays = [i for i, k in enumerate(key) if not isinstance(
        k, (int, np.integer, slice, type(None), type(Ellipsis)))]
    if len(arrays) > 1:
        unsupported("getitem with several index arrays")
    if arrays:
        at = arrays[0]
        ints = [i for i, k in enumerate(key) if isinstance(k, (int, np.integer))]
        # NumPy moves the indexed axes first when ints and the array are not adjacent.
        span = sorted(ints + arrays)
        if span and span[-1] - span[0] + 1 != len(span):
            unsupported("getitem with an index array apart from integer indices")
        arr = key[at]
        if getattr(arr, "dtype", None) is not None and np.dtype(arr.dtype) == np.bool_:
            unsupported("getitem with a boolean mask on the device (its size is "
                        "data-dependent; a NumPy mask works)")
        basic = key[:at] + (slice(None),) + key[at + 1:]
        view = getitem(x, basic)
        # The array's axis in the view: the axes before it, less the ones ints removed, plus
        # the ones None added; an Ellipsis before it stands for the axes it spans.
        pos = 0
        for k in key[:at]:
            if k is Ellipsis:
                pos += len(shape) - sum(1 for j in key if j is not None and j is not Ellipsis)
            elif k is None or isinstance(k, slice):
                pos += 1
        return take(view, arr, pos)
    offset, out_shape, strides = _basic_view(shape, key)
    k = _kernels()
    y = k.strided_copy(xv, offset, out_shape, strides)
    return record(y, (x,), lambda dy, need: (k.strided_scatter(dy, shape, offset, strides),),
                  "getitem")


def _host_masks_as_indices(b, x, xv, key):
    """A boolean mask held by the host has a size the host knows: a 1-D one becomes the
    integer indices of its True entries (np.flatnonzero), one of x's whole shape the take of
    those indices from flat x. Masks on the device stay an error (reading them back to size
    the result would be the host round trip pynn.ops does not make)."""
    masks = [i for i, k in enumerate(key) if isinstance(k, np.ndarray) and k.dtype == np.bool_]
    if not masks:
        return key
    shape = tuple(xv.shape)
    at = masks[0]
    mask = key[at]
    if len(key) == 1 and mask.ndim == len(shape) and mask.ndim > 1:
        if mask.shape != shape:
            raise IndexError(f"boolean index of shape {mask.shape} does not match the indexed "
                             f"array of shape {shape}")
        flat = np.flatnonzero(mask)
        return take(x, flat.astype(np.int32), None)
    if mask.ndim != 1:
        unsupported("getitem with a boolean mask over some of several axes")
    if Ellipsis not in key[:at]:
        axis = sum(1 for k in key[:at] if k is not None)
        if axis < len(shape) and shape[axis] != mask.size:
            raise IndexError(f"boolean index did not match indexed array along axis {axis}; "
                             f"size of axis is {shape[axis]} but size of corresponding boolean "
                             f"axis is {mask.size}")
    return key[:at] + (np.flatnonzero(mask),) + key[at + 1:]


def _basic_view(shape, key):
    n_index = sum(1 for k in key if k is not None and k is not Ellipsis)
    if sum(1 for k in key if k is Ellipsis) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if n_index > len(shape):
        raise IndexError(f"too many indices for an array of shape {shape}")
    full = []
    for k in key:
        if k is Ellipsis:
            full.extend([slice(None)] * (len(shape) - n_index))
        else:
            full.append(k)
    full.extend([slice(None)] * (len(shape) - sum(1 for k in full if k is not None)))
    base = _kernels().contiguous_strides(shape)
    offset, out_shape, strides, axis = 0, [], [], 0
    for k in full:
        if k is None:
            out_shape.append(1)
            strides.append(0)
            continue
        d = shape[axis]
        if isinstance(k, slice):
            start, stop, step = k.indices(d)
            n = len(range(start, stop, step))
            offset += start * base[axis] if n else 0
            out_shape.append(n)
            strides.append(step * base[axis])
        else:
            i = int(k)
            if not -d <= i < d:
                raise IndexError(f"index {i} is out of bounds for axis {axis} with size {d}")
            offset += (i % d) * base[axis]
        axis += 1
    return offset, tuple(out_shape), tuple(strides)


# -- matmul, einsum: the gemm core for single products, batched_matmul for stacks ----------
def _matmul2(b, a, c):
    y, _ = b.dense_forward(a, c, None, "linear", 0.0)
    return y


def _bmm(b, a, c):
    """(B, M, K) @ (B, K, N) (either operand may have B = 1: shared)."""
    ba, m, kk = a.shape
    bc, _, n = c.shape
    batch = max(ba, bc)
    if batch == 1:
        return b.reshape(_matmul2(b, b.reshape(a, (m, kk)), b.reshape(c, (kk, n))),
                         (1, m, n))
    if bc == 1:  # one right operand for every product: one GEMM over the stacked rows
        return b.reshape(_matmul2(b, b.reshape(a, (ba * m, kk)), b.reshape(c, (kk, n))),
                         (ba, m, n))
    return _kernels().batched_matmul(a, c, batch, m, n, kk, ba == 1, bc == 1)



def einsum(subscripts, operands):
    """Two-operand einsum as transposes, a (batched) product and a transpose back; one
    operand: a transpose and a sum. Gradients are einsums of dy with the other operand."""
    b = backend.current()
    spec = subscripts.replace(" ", "")
    ins, out = spec.split("->")
    terms = ins.split(",")
    vals = [_device(b, value(x)) for x in operands]
    for t, v in zip(terms, vals):
        if len(set(t)) != len(t):
            unsupported(f"einsum with a repeated index in {t!r}")
        if len(t) != len(v.shape):
            raise ValueError(f"pynn.ops.einsum: {t!r} names {len(t)} axes of an operand of "
                             f"shape {tuple(v.shape)}")
    y = _einsum_value(b, terms, out, vals)

    def backward(dy, need):
        grads = []
        for k, (t, v) in enumerate(zip(terms, vals)):
            if not need[k]:
                grads.append(None)
                continue
            others = [terms[j] for j in range(len(terms)) if j != k]
            present = set(out).union(*others) if others else set(out)
            kept = "".join(c for c in t if c in present)
            g = _einsum_value(b, [out] + others, kept,
                              [dy] + [vals[j] for j in range(len(terms)) if j != k])
            if kept != t:
                g = b.reshape(g, tuple(v.shape[i] if c in present else 1
                                       for i, c in enumerate(t)))
                g = _kernels().strided_copy(g, 0, tuple(v.shape),
                                            _broadcast_strides(g.shape, tuple(v.shape)))
            grads.append(g)
        return tuple(grads)

    return record(y, tuple(operands), backward, "einsum")


def _permute(b, v, term, order):
    perm = tuple(term.index(c) for c in order)
    return v if perm == tuple(range(len(term))) else b.transpose_forward(v, perm)


def _einsum_value(b, terms, out, vals):
    size = {}
    for t, v in zip(terms, vals):
        for c, d in zip(t, v.shape):
            size[c] = d
    # Letters in one operand only and not in the output are summed there first.
    summed_vals, summed_terms = [], []
    for k, (t, v) in enumerate(zip(terms, vals)):
        elsewhere = set(out).union(*(terms[j] for j in range(len(terms)) if j != k))
        drop = [i for i, c in enumerate(t) if c not in elsewhere]
        if drop:
            v = b.reduce_axes(v, tuple(drop), "sum", False)
            t = "".join(c for c in t if c in elsewhere)
        summed_vals.append(v)
        summed_terms.append(t)
    if len(summed_terms) == 1:
        (t,), (v,) = summed_terms, summed_vals
        return _permute(b, v, t, out) if t else v
    (ta, tc), (va, vc) = summed_terms, summed_vals
    batch = "".join(c for c in ta if c in tc and c in out)
    contract = "".join(c for c in ta if c in tc and c not in out)
    left = "".join(c for c in ta if c not in tc)
    right = "".join(c for c in tc if c not in ta)
    nb = math.prod(size[c] for c in batch)
    m = math.prod(size[c] for c in left)
    n = math.prod(size[c] for c in right)
    kk = math.prod(size[c] for c in contract)
    a3 = b.reshape(_permute(b, va, ta, batch + left + contract), (nb, m, kk))
    c3 = b.reshape(_permute(b, vc, tc, batch + contract + right), (nb, kk, n))
    if kk == 0 or m * n * nb == 0:
        y = b.zeros((nb, m, n), np.float32)
    else:
        y = _bmm(b, a3, c3)
    got = batch + left + right
    y = b.reshape(y, tuple(size[c] for c in got))
    return _permute(b, y, got, out)


def matmul(x1, x2):
    """N-D matmul with NumPy's broadcasting of the stack axes, through einsum's products."""
    b = backend.current()
    a, c = _device(b, value(x1)), _device(b, value(x2))
    if len(a.shape) == 0 or len(c.shape) == 0:
        raise ValueError("pynn.ops.matmul: scalars are not allowed (use multiply)")
    a_shape, c_shape = tuple(a.shape), tuple(c.shape)
    a2 = b.reshape(a, (1,) + a_shape) if len(a_shape) == 1 else a
    c2 = b.reshape(c, c_shape + (1,)) if len(c_shape) == 1 else c
    if a2.shape[-1] != c2.shape[-2]:
        raise ValueError(f"pynn.ops.matmul: shapes {a_shape} and {c_shape} do not align")
    from pynn.backend.operands.elementwise import broadcast_shape
    stack = broadcast_shape("pynn.ops.matmul", tuple(a2.shape[:-2]), tuple(c2.shape[:-2]))
    m, kk, n = a2.shape[-2], a2.shape[-1], c2.shape[-1]
    nb = math.prod(stack)
    k = _kernels()

    def stacked(v):
        full = stack + tuple(v.shape[-2:])
        if tuple(v.shape) != full and math.prod(v.shape[:-2]) != 1:
            v = k.strided_copy(v, 0, full, _broadcast_strides(v.shape, full))
        return b.reshape(v, (math.prod(v.shape[:-2]),) + tuple(v.shape[-2:]))

    a3, c3 = stacked(a2), stacked(c2)
    y = b.reshape(_bmm(b, a3, c3), stack + (m, n))
    out_shape = stack + ((m,) if len(a_shape) > 1 else ()) + ((n,) if len(c_shape) > 1 else ())
    y = b.reshape(y, out_shape)

    def backward(dy, need):
        d3 = b.reshape(dy, (nb, m, n))
        ga = gc = None
        if need[0]:
            ct = b.transpose_forward(c3, (0, 2, 1))
            ga = b.reshape(_bmm(b, d3, ct), stack + (m, kk))
            ga = b.reshape(unbroadcast(b, ga, tuple(a2.shape)), a_shape)
        if need[1]:
            at = b.transpose_forward(a3, (0, 2, 1))
            gc = b.reshape(_bmm(b, at, d3), stack + (kk, n))
            gc = b.reshape(unbroadcast(b, gc, tuple(c2.shape)), c_shape)
        return ga, gc

    return record(y, (x1, x2), backward, "matmul")
