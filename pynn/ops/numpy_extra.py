"""More of keras.ops' NumPy-like part, as custom layers use it: cumulative ops, tiling and
padding, triangles and diagonals, axis moves, stacking, special functions, sorting, norms,
constructors, segment and scatter ops.

Two kinds of op live here. Most are compositions of the ops of ``numpy_ops`` (reshape,
broadcast_to, take, concatenate, where, the elementwise and reduction ops): those run on every
backend through the kernels those ops already use (the elementwise family, opencl/tensor.cl),
and their gradients are the composed ops' gradients. The rest run on kernels of their own
with a backward of their own (none falls back to the host on a device). Index arrays
(roll's, pad's, repeat's, diag's) are built on the host from the shapes alone, never from the
values. erf/erfc/erfinv are codes of the elementwise family, cumsum/cumprod the scan family's,
the segment and scatter ops the scatter family's, sort/argsort/top_k the sort family's
(kernels on both backends, their gradients too); in_top_k is a gather and a count.
"""

import builtins
import math

import numpy as np

from pynn import _config, backend
from pynn.autodiff import Tensor
from pynn.ops import numpy_ops as npo
from pynn.ops._core import cpu_only, op, record, shape_of, unbroadcast, value


def _host(name, x):
    """x's values as a NumPy array, for the ops with no device formula (after cpu_only)."""
    cpu_only(name)
    return np.asarray(value(x))


def _ndim(x):
    return len(shape_of(value(x)))


def _dtype(x):
    v = value(x)
    return np.asarray(v).dtype if isinstance(v, (int, float, bool, list, tuple)) else v.dtype


def _axis(name, axis, ndim):
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        raise TypeError(f"pynn.ops.{name}: axis must be an int, got {axis!r}")
    if not -ndim <= axis < builtins.max(ndim, 1):
        raise ValueError(f"pynn.ops.{name}: axis {axis} is out of range for a {ndim}-D input")
    return int(axis) % builtins.max(ndim, 1)


def _float_dtype(dtype):
    return np.dtype(_config.floatx() if dtype is None else dtype)


def _constant(array, dtype):
    """A constructor's result: a host array on the current backend (shapes only, no input)."""
    dtype = np.dtype(dtype)
    return Tensor(backend.current().asarray(np.asarray(array, dtype), dtype))


# -- cumulative ---------------------------------------------------------------------------
def _flat_axis(name, x, axis):
    if axis is None:
        return npo.reshape(x, (-1,)), 0
    return x, _axis(name, axis, _ndim(x))


def _scan(name, x, axis, dtype, op, backward):
    """cumsum/cumprod on the backend's scan kernels; integer results (CPU) have no
    gradient and are NumPy's."""
    x, axis = _flat_axis(name, x, axis)
    b = backend.current()
    xv = value(x)
    if b.NAME == "cpu":
        xv = np.asarray(xv)
        given = xv.dtype
        if dtype is not None:
            xv = xv.astype(dtype)
        if xv.dtype.kind != "f":
            return Tensor(np.cumsum(xv, axis) if op == "sum" else np.cumprod(xv, axis))
    else:
        from pynn.ops import device
        xv = device._device(b, xv)
        given = np.dtype(xv.dtype)
    y = b.scan_forward(xv, axis, op, False)

    def grad(dy, need):
        dx = backward(b, xv, dy, axis)
        return (dx.astype(given) if b.NAME == "cpu" and dx.dtype != given else dx,)

    return record(y, (x,), grad, name)


@op
def cumsum(x, axis=None, dtype=None):
    """keras.ops.cumsum (flattened when axis is None); its gradient is the reversed cumsum."""
    return _scan("cumsum", x, axis, dtype, "sum",
                 lambda b, xv, dy, axis: b.scan_forward(dy, axis, "sum", True))


@op
def cumprod(x, axis=None, dtype=None):
    """keras.ops.cumprod; its gradient exact with zeros (the scan family's
    cumprod_backward)."""
    return _scan("cumprod", x, axis, dtype, "prod",
                 lambda b, xv, dy, axis: b.cumprod_backward(xv, dy, axis))


# -- tiling, padding, rolling -------------------------------------------------------------
@op
def tile(x, repeats):
    """keras.ops.tile (NumPy's): x broadcast over interleaved repeat axes, then merged."""
    reps = [int(r) for r in np.atleast_1d(repeats)]
    if builtins.any(r < 0 for r in reps):
        raise ValueError(f"pynn.ops.tile: repeats must be >= 0, got {reps}")
    shape = shape_of(value(x))
    n = builtins.max(len(shape), len(reps))
    shape = (1,) * (n - len(shape)) + tuple(shape)
    reps = [1] * (n - len(reps)) + reps
    interleaved = [d for s in shape for d in (1, s)]
    target = [d for r, s in zip(reps, shape) for d in (r, s)]
    y = npo.broadcast_to(npo.reshape(x, interleaved), target)
    return npo.reshape(y, [r * s for r, s in zip(reps, shape)])


@op
def repeat(x, repeats, axis=None):
    """keras.ops.repeat: each element repeated along ``axis`` (flattened when None); an int
    count broadcasts, a count per element gathers."""
    x, axis = _flat_axis("repeat", x, axis)
    shape = shape_of(value(x))
    counts = np.asarray(value(repeats))
    if counts.dtype.kind not in "iu" or np.any(counts < 0):
        raise ValueError(f"pynn.ops.repeat: repeats must be non-negative integers, got "
                         f"{repeats!r}")
    if counts.ndim == 0 or counts.size == 1:
        r = int(counts.reshape(-1)[0])
        y = npo.broadcast_to(npo.expand_dims(x, axis + 1),
                             shape[:axis + 1] + (r,) + shape[axis + 1:])
        return npo.reshape(y, shape[:axis] + (shape[axis] * r,) + shape[axis + 1:])
    if counts.shape != (shape[axis],):
        raise ValueError(f"pynn.ops.repeat: repeats must be an int or {shape[axis]} ints "
                         f"(axis {axis}'s length), got shape {counts.shape}")
    return npo.take(x, np.repeat(np.arange(shape[axis]), counts), axis=axis)


PAD_MODES = ("constant", "reflect", "symmetric", "edge", "wrap")


def _pad_widths(pad_width, ndim):
    try:
        widths = np.broadcast_to(np.asarray(pad_width, np.int64), (ndim, 2))
    except (ValueError, TypeError):
        raise ValueError(f"pynn.ops.pad: pad_width must be an int, a pair or one pair per "
                         f"axis of the {ndim}-D input, got {pad_width!r}") from None
    if np.any(widths < 0):
        raise ValueError(f"pynn.ops.pad: pad_width must be >= 0, got {pad_width!r}")
    return [(int(lo), int(hi)) for lo, hi in widths]


@op
def pad(x, pad_width, mode="constant", constant_values=None):
    """keras.ops.pad: 'constant' joins constant blocks, 'reflect'/'symmetric'/'edge'/'wrap'
    gather (NumPy's index pattern of each axis), so both run on every backend."""
    if mode not in PAD_MODES:
        raise ValueError(f"pynn.ops.pad: mode must be one of {PAD_MODES}, got {mode!r}")
    if mode != "constant" and constant_values not in (None, 0):
        raise ValueError(f"pynn.ops.pad: constant_values is only for mode='constant', got "
                         f"mode={mode!r} with constant_values={constant_values!r}")
    shape = list(shape_of(value(x)))
    widths = _pad_widths(pad_width, len(shape))
    fill = 0 if constant_values is None else constant_values
    b = backend.current()
    y = x
    for axis, (lo, hi) in enumerate(widths):
        if lo == hi == 0:
            continue
        n = shape[axis]
        if mode == "constant":
            parts = []
            for w in (lo, hi):
                block = list(shape)
                block[axis] = w
                parts.append(Tensor(b.full(tuple(block), fill, _dtype(x))) if w else None)
            y = npo.concatenate([p for p in (parts[0], y, parts[1]) if p is not None], axis)
        else:
            if mode == "reflect" and builtins.max(lo, hi) >= n and n > 0:
                raise ValueError(f"pynn.ops.pad: 'reflect' pads axis {axis} of length {n} "
                                 f"by at most {n - 1}, got {(lo, hi)}")
            if n == 0:
                raise ValueError(f"pynn.ops.pad: mode {mode!r} cannot pad the empty axis "
                                 f"{axis}")
            y = npo.take(y, np.pad(np.arange(n), (lo, hi), mode=mode), axis=axis)
        shape[axis] = n + lo + hi
    return y if y is not x else npo.reshape(x, shape)


@op
def roll(x, shift, axis=None):
    """keras.ops.roll: a gather by the rolled index of each axis (flattened when None)."""
    if axis is None:
        shape = shape_of(value(x))
        return npo.reshape(roll(npo.reshape(x, (-1,)), shift, 0), shape)
    shifts = np.atleast_1d(np.asarray(shift, np.int64))
    axes = np.atleast_1d(np.asarray(axis, np.int64))
    shifts, axes = np.broadcast_arrays(shifts, axes)
    shape = shape_of(value(x))
    total = {}
    for s, a in zip(shifts, axes):
        a = _axis("roll", int(a), len(shape))
        total[a] = total.get(a, 0) + int(s)
    y = x
    for a, s in total.items():
        if shape[a] and s % shape[a]:
            y = npo.take(y, (np.arange(shape[a]) - s) % shape[a], axis=a)
    return y


def _need_ndim(name, x, at_least):
    if _ndim(x) < at_least:
        raise ValueError(f"pynn.ops.{name}: expected an input of at least {at_least} "
                         f"dimensions, got shape {shape_of(value(x))}")


@op
def fliplr(x):
    _need_ndim("fliplr", x, 2)
    return npo.flip(x, 1)


@op
def flipud(x):
    _need_ndim("flipud", x, 1)
    return npo.flip(x, 0)


# -- triangles and diagonals --------------------------------------------------------------
def _triangle(name, x, k, lower):
    _need_ndim(name, x, 2)
    rows, cols = shape_of(value(x))[-2:]
    keep = np.tri(rows, cols, int(k), dtype=bool)
    keep = keep if lower else ~np.tri(rows, cols, int(k) - 1, dtype=bool)
    return npo.where(keep, x, 0)


@op
def tril(x, k=0):
    """keras.ops.tril: zeros above the k-th diagonal of the last two axes."""
    return _triangle("tril", x, k, True)


@op
def triu(x, k=0):
    """keras.ops.triu: zeros below the k-th diagonal of the last two axes."""
    return _triangle("triu", x, k, False)


@op
def moveaxis(x, source, destination):
    ndim = _ndim(x)
    src = [_axis("moveaxis", int(a), ndim) for a in np.atleast_1d(source)]
    dst = [_axis("moveaxis", int(a), ndim) for a in np.atleast_1d(destination)]
    if len(src) != len(dst) or len(set(src)) != len(src) or len(set(dst)) != len(dst):
        raise ValueError(f"pynn.ops.moveaxis: source {source!r} and destination "
                         f"{destination!r} must be as many distinct axes")
    order = [a for a in range(ndim) if a not in src]
    for d, s in sorted(zip(dst, src)):
        order.insert(d, s)
    return npo.transpose(x, order)


@op
def swapaxes(x, axis1, axis2):
    ndim = _ndim(x)
    order = list(range(ndim))
    a, b = _axis("swapaxes", axis1, ndim), _axis("swapaxes", axis2, ndim)
    order[a], order[b] = order[b], order[a]
    return npo.transpose(x, order)


@op
def diagonal(x, offset=0, axis1=0, axis2=1):
    """keras.ops.diagonal (NumPy's): the diagonal becomes the last axis; a gather on the two
    axes merged into one."""
    _need_ndim("diagonal", x, 2)
    ndim = _ndim(x)
    a1, a2 = _axis("diagonal", axis1, ndim), _axis("diagonal", axis2, ndim)
    if a1 == a2:
        raise ValueError(f"pynn.ops.diagonal: axis1 and axis2 must differ, got {a1} twice")
    moved = moveaxis(x, (a1, a2), (-2, -1))
    shape = shape_of(value(moved))
    rows, cols = shape[-2:]
    offset = int(offset)
    start_row, start_col = builtins.max(-offset, 0), builtins.max(offset, 0)
    length = builtins.max(builtins.min(rows - start_row, cols - start_col), 0)
    steps = np.arange(length)
    flat = npo.reshape(moved, shape[:-2] + (rows * cols,))
    return npo.take(flat, (start_row + steps) * cols + start_col + steps, axis=-1)


@op
def trace(x, offset=0, axis1=0, axis2=1):
    return npo.sum(diagonal(x, offset, axis1, axis2), axis=-1)


@op
def diag(x, k=0):
    """keras.ops.diag: a 1-D x on the k-th diagonal of a square matrix (a gather from x
    followed by one zero), a 2-D x's k-th diagonal."""
    ndim = _ndim(x)
    if ndim == 2:
        return diagonal(x, k)
    if ndim != 1:
        raise ValueError(f"pynn.ops.diag: expected a 1-D or 2-D input, got shape "
                         f"{shape_of(value(x))}")
    n, k = shape_of(value(x))[0], int(k)
    size = n + builtins.abs(k)
    rows, cols = np.indices((size, size))
    on = cols - rows == k
    source = np.where(on, np.minimum(rows, cols), n)  # n: the appended zero
    zero = Tensor(backend.current().full((1,), 0, _dtype(x)))
    return npo.take(npo.concatenate([x, zero], 0), source, axis=0)


# -- products -------------------------------------------------------------------------------
@op
def outer(x1, x2):
    return npo.multiply(npo.reshape(x1, (-1, 1)), npo.reshape(x2, (1, -1)))


@op
def inner(x1, x2):
    """keras.ops.inner: the sum over both last axes (a scalar operand scales)."""
    if _ndim(x1) == 0 or _ndim(x2) == 0:
        return npo.multiply(x1, x2)
    n1, n2 = shape_of(value(x1))[-1], shape_of(value(x2))[-1]
    if n1 != n2:
        raise ValueError(f"pynn.ops.inner: the last axes must match, got shapes "
                         f"{shape_of(value(x1))} and {shape_of(value(x2))}")
    return npo.tensordot(x1, x2, axes=([-1], [-1]))


# -- shapes and stacking ------------------------------------------------------------------
@op
def ravel(x):
    return npo.reshape(x, (-1,))


@op
def unstack(x, num=None, axis=0):
    """keras.ops.unstack: the slices along ``axis`` (each a gather, with its gradient)."""
    shape = shape_of(value(x))
    axis = _axis("unstack", axis, len(shape))
    if num is not None and num != shape[axis]:
        raise ValueError(f"pynn.ops.unstack: num={num} but axis {axis} has length "
                         f"{shape[axis]}")
    lead = (builtins.slice(None),) * axis
    return [npo.getitem(x, lead + (i,)) for i in range(shape[axis])]


@op
def hstack(xs):
    """keras.ops.hstack: joined along axis 1, or axis 0 for 1-D inputs."""
    return npo.concatenate(list(xs), axis=0 if _ndim(xs[0]) == 1 else 1)


@op
def vstack(xs):
    """keras.ops.vstack: 1-D inputs become rows, then joined along axis 0."""
    return npo.concatenate([npo.reshape(x, (1, -1)) if _ndim(x) <= 1 else x for x in xs],
                           axis=0)


# -- elementwise math ---------------------------------------------------------------------
def _special(name, grad):
    """An elementwise special function on the backend's elementwise kernels (codes of
    api.ELEMENTWISE_UNARY), its gradient composed from the same kernels on that backend."""

    def fn(x):
        b = backend.current()
        xv = value(x)
        if b.NAME == "cpu" or isinstance(xv, (int, float, bool, list, tuple, np.generic,
                                              np.ndarray)):
            xv = np.asarray(xv)
            if xv.dtype.kind != "f":
                xv = xv.astype(_config.floatx())
            if b.NAME != "cpu":
                xv = b.asarray(xv, np.float32)
        y = b.elementwise_unary(xv, name)
        return record(y, (x,), lambda dy, need: (grad(b, dy, xv, y),), name)

    fn.__name__ = name
    fn.__doc__ = f"keras.ops.{name}, elementwise, with its gradient."
    return op(fn)


TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


def _scaled_gaussian(b, dy, t, sign, scale):
    """dy * scale * exp(sign * t^2), the three derivatives' common form."""
    square = b.elementwise_unary(t, "square")
    gauss = b.elementwise_unary(square if sign > 0 else b.elementwise_unary(square, "negative"),
                                "exp")
    factor = b.full((), scale, np.dtype(t.dtype))
    return b.elementwise_binary(dy, b.elementwise_binary(gauss, factor, "multiply"), "multiply")


erf = _special("erf", lambda b, dy, x, y: _scaled_gaussian(b, dy, x, -1, TWO_OVER_SQRT_PI))
erfc = _special("erfc", lambda b, dy, x, y: _scaled_gaussian(b, dy, x, -1, -TWO_OVER_SQRT_PI))
erfinv = _special("erfinv",
                  lambda b, dy, x, y: _scaled_gaussian(b, dy, y, 1, 1.0 / TWO_OVER_SQRT_PI))


@op
def logaddexp(x1, x2):
    """log(exp(x1) + exp(x2)) around the larger operand (a constant shift: its gradient
    cancels), so large inputs do not overflow."""
    peak = npo.stop_gradient(npo.maximum(x1, x2))
    peak = npo.where(npo.isfinite(peak), peak, 0)
    total = npo.add(npo.exp(npo.subtract(x1, peak)), npo.exp(npo.subtract(x2, peak)))
    return npo.add(npo.log(total), peak)


@op
def hypot(x1, x2):
    return npo.sqrt(npo.add(npo.square(x1), npo.square(x2)))


@op
def cbrt(x):
    """The real cube root: sign(x) |x|^(1/3)."""
    return npo.multiply(npo.sign(x), npo.power(npo.abs(x), 1.0 / 3.0))


LN2 = math.log(2.0)


@op
def exp2(x):
    if _dtype(x).kind != "f":
        x = npo.cast(x, _config.floatx())
    return npo.exp(npo.multiply(x, LN2))


@op
def trunc(x):
    """Rounded toward zero; no gradient (piecewise constant)."""
    if _dtype(x).kind in "iub":
        return npo.stop_gradient(x)
    if backend.current().NAME == "cpu":
        return Tensor(np.trunc(np.asarray(value(x))))
    return npo.multiply(npo.sign(x), npo.floor(npo.abs(x)))


@op
def fmod(x1, x2):
    """C's fmod (the remainder with x1's sign); d/dx1 = 1, d/dx2 = -trunc(x1 / x2)."""
    if backend.current().NAME != "cpu":
        return npo.subtract(x1, npo.multiply(trunc(npo.divide(x1, x2)), x2))
    a, b = value(x1), value(x2)
    y = np.asarray(np.fmod(a, b))
    if y.dtype.kind != "f":
        return Tensor(y)

    def backward(dy, need):
        return (unbroadcast(dy, shape_of(a)) if need[0] else None,
                unbroadcast(-dy * np.trunc(np.true_divide(a, b)), shape_of(b))
                if need[1] else None)

    return record(y, (x1, x2), backward, "fmod")


@op
def isinf(x):
    return npo.logical_and(npo.logical_not(npo.isfinite(x)), npo.logical_not(npo.isnan(x)))


@op
def nan_to_num(x, nan=0.0, posinf=None, neginf=None):
    """NaN, +inf and -inf replaced (the dtype's largest finite values by default); the
    gradient passes where x is finite."""
    dtype = _dtype(x)
    if dtype.kind != "f":
        return x if isinstance(x, Tensor) else npo.convert_to_tensor(x)
    big = float(np.finfo(dtype).max)
    posinf = big if posinf is None else posinf
    neginf = -big if neginf is None else neginf
    y = npo.where(npo.isnan(x), nan, x)
    infinite = isinf(x)
    y = npo.where(npo.logical_and(infinite, npo.greater(x, 0)), posinf, y)
    return npo.where(npo.logical_and(infinite, npo.less(x, 0)), neginf, y)


@op
def isclose(x1, x2, rtol=1e-05, atol=1e-08, equal_nan=False):
    """|x1 - x2| <= atol + rtol |x2| (NumPy's, asymmetric), infinities equal only to
    themselves."""
    finite = npo.logical_and(npo.isfinite(x1), npo.isfinite(x2))
    with np.errstate(invalid="ignore"):  # inf - inf: decided by the equality below
        near = npo.less_equal(npo.abs(npo.subtract(x1, x2)),
                              npo.add(npo.multiply(npo.abs(x2), rtol), atol))
    close = npo.logical_or(npo.logical_and(finite, near),
                           npo.logical_and(npo.logical_not(finite), npo.equal(x1, x2)))
    if equal_nan:
        close = npo.logical_or(close, npo.logical_and(npo.isnan(x1), npo.isnan(x2)))
    return close


# -- sorting ------------------------------------------------------------------------------
def _row_sort(x, descending, k=None):
    """x's last axis sorted per row on the backend's sort kernels -> (backend, rows view,
    shape, int32 positions (R, k), values (R, k))."""
    b = backend.current()
    xv = _operand(b, x)
    shape = tuple(shape_of(xv))
    x2 = b.reshape(xv, (math.prod(shape[:-1]), shape[-1]))
    order = b.argsort_rows(x2, descending, k)
    return b, x2, shape, order, b.take_along_rows(x2, order)


def _is_float(x):
    return np.dtype(_dtype(x)).kind == "f"


@op
def sort(x, axis=-1):
    """keras.ops.sort (ascending, NaN last); the gradient goes back to each value's place."""
    ndim = _ndim(x)
    if ndim == 0:
        return npo.convert_to_tensor(x)
    axis = _axis("sort", axis, ndim)
    if not _is_float(x):
        return Tensor(np.sort(_host("sort", x), axis=axis, kind="stable"))
    if axis != ndim - 1:
        return moveaxis(sort(moveaxis(x, axis, -1)), -1, axis)
    b, x2, shape, order, values = _row_sort(x, False)
    return record(b.reshape(values, shape), (x,), lambda dy, need: (b.reshape(
        b.put_along_rows(b.reshape(dy, tuple(x2.shape)), order, shape[-1]), shape),), "sort")


@op
def argsort(x, axis=-1):
    """keras.ops.argsort (ascending, ties in their order, NaN last), int32 indices as
    Keras's."""
    ndim = _ndim(x)
    if ndim == 0:
        return Tensor(np.zeros((), np.int32))
    axis = _axis("argsort", axis, ndim)
    if not _is_float(x):
        return Tensor(np.argsort(_host("argsort", x), axis=axis, kind="stable").astype(
            np.int32))
    if axis != ndim - 1:
        moved = argsort(moveaxis(x, axis, -1))
        if backend.current().NAME == "cpu":
            return moveaxis(moved, -1, axis)
        # The device's transpose moves floats: positions below 2**24 pass exactly.
        return npo.cast(moveaxis(npo.cast(moved, "float32"), -1, axis), "int32")
    b, _, shape, order, _ = _row_sort(x, False)
    return Tensor(b.reshape(order, shape))


@op
def top_k(x, k, sorted=True):
    """keras.ops.top_k along the last axis: (values, int32 indices), the largest first (ties
    to the lower index); the gradient goes to the chosen places."""
    if _ndim(x) == 0:
        raise ValueError("pynn.ops.top_k: expected an input of at least 1 dimension, got a "
                         "scalar")
    n = shape_of(value(x))[-1]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= n:
        raise ValueError(f"pynn.ops.top_k: k must be an int in [0, {n}] (the last axis's "
                         f"length), got {k!r}")
    if not _is_float(x):
        xv = _host("top_k", x)
        order = np.argsort(-xv, axis=-1, kind="stable")[..., :int(k)]
        return Tensor(np.take_along_axis(xv, order, -1)), Tensor(order.astype(np.int32))
    b, x2, shape, order, values = _row_sort(x, True, int(k))
    out_shape = shape[:-1] + (int(k),)
    out = record(b.reshape(values, out_shape), (x,), lambda dy, need: (b.reshape(
        b.put_along_rows(b.reshape(dy, tuple(order.shape)), order, n), shape),), "top_k")
    return out, Tensor(b.reshape(order, out_shape))


@op
def in_top_k(targets, predictions, k):
    """Whether each target's score is at least the k-th largest of its row (Keras's rule on
    torch: a tie with the k-th counts), i.e. fewer than k scores lie strictly above it: one
    gather and a count on the backend (float 0/1 on a device, as its predicates)."""
    t = _host_ints(targets)
    b = backend.current()
    p = _operand(b, predictions)
    shape = tuple(shape_of(p))
    if len(shape) != 2 or t.shape != shape[:1]:
        raise ValueError(f"pynn.ops.in_top_k: expected targets (N,) and predictions (N, C), "
                         f"got {t.shape} and {shape}")
    if not 1 <= int(k) <= shape[1]:
        raise ValueError(f"pynn.ops.in_top_k: k must be in [1, {shape[1]}], got {k!r}")
    if t.size and (t.min() < 0 or t.max() >= shape[1]):
        raise ValueError(f"pynn.ops.in_top_k: targets must lie in [0, {shape[1]}), got "
                         f"values in [{t.min()}, {t.max()}]")
    dtype = np.dtype(p.dtype)
    if dtype.kind != "f":
        p = b.asarray(np.asarray(p, np.float64), np.float64)
        dtype = np.dtype(np.float64)
    index = t.reshape(-1, 1).astype(np.int32)
    target = b.take_along_rows(p, index if b.NAME == "cpu" else b.asarray(index, np.int32))
    above = b.reduce_axes(b.elementwise_binary(p, target, "greater"), (1,), "sum", False)
    hit = b.elementwise_binary(b.elementwise_binary(above, b.full((), float(k), dtype), "less"),
                               b.reshape(b.elementwise_binary(target, target, "equal"),
                                         shape[:1]), "multiply")
    return Tensor(np.asarray(hit) > 0.5 if b.NAME == "cpu" else hit)


# -- norms --------------------------------------------------------------------------------
def _vector_norm(x, ord, axis, keepdims):
    a = npo.abs(x)
    if ord is None or ord == 2:
        return npo.sqrt(npo.sum(npo.square(x), axis=axis, keepdims=keepdims))
    if ord == 1:
        return npo.sum(a, axis=axis, keepdims=keepdims)
    if ord == np.inf:
        return npo.max(a, axis=axis, keepdims=keepdims)
    if ord == -np.inf:
        return npo.min(a, axis=axis, keepdims=keepdims)
    if ord == 0:
        return npo.sum(npo.cast(npo.not_equal(x, 0), _dtype(x)), axis=axis,
                       keepdims=keepdims)
    if isinstance(ord, str):
        raise ValueError(f"pynn.ops.norm: ord {ord!r} is for matrices (2 axes)")
    return npo.power(npo.sum(npo.power(a, float(ord)), axis=axis, keepdims=keepdims),
                     1.0 / float(ord))


def _matrix_norm(x, ord, axes, keepdims):
    rows, cols = axes
    if ord in (None, "fro"):
        return npo.sqrt(npo.sum(npo.square(x), axis=axes, keepdims=keepdims))
    if ord in (1, -1, np.inf, -np.inf):
        summed, other = (rows, cols) if ord in (1, -1) else (cols, rows)
        sums = npo.sum(npo.abs(x), axis=summed, keepdims=True)
        pick = npo.max if ord in (1, np.inf) else npo.min
        out = pick(sums, axis=other, keepdims=True)
        return out if keepdims else npo.squeeze(out, axis=axes)
    raise ValueError(f"pynn.ops.norm: matrix ord {ord!r} is not supported (pynn has 'fro', "
                     f"1, -1, inf, -inf; 'nuc', 2 and -2 need a singular value decomposition)")


@op
def norm(x, ord=None, axis=None, keepdims=False):
    """keras.ops.norm: vector norms over one axis (or all, flattened), matrix norms over
    two."""
    ndim = _ndim(x)
    if _dtype(x).kind != "f":
        x = npo.cast(x, _config.floatx())
    if axis is None:
        if ord is not None and ndim == 2:
            return _matrix_norm(x, ord, (0, 1), keepdims)
        if ord is not None and ndim != 1:
            raise ValueError(f"pynn.ops.norm: ord={ord!r} with axis=None needs a 1-D or 2-D "
                             f"input, got {ndim}-D")
        out = _vector_norm(npo.reshape(x, (-1,)), ord, 0, False)
        return npo.reshape(out, (1,) * ndim) if keepdims else out
    axes = [_axis("norm", int(a), ndim) for a in np.atleast_1d(axis)]
    if len(axes) == 1:
        return _vector_norm(x, ord, axes[0], keepdims)
    if len(axes) == 2 and axes[0] != axes[1]:
        return _matrix_norm(x, ord, tuple(axes), keepdims)
    raise ValueError(f"pynn.ops.norm: axis must be one axis or two distinct axes, got "
                     f"{axis!r}")


# -- constructors -------------------------------------------------------------------------
@op
def eye(N, M=None, k=0, dtype=None):
    return _constant(np.eye(int(N), None if M is None else int(M), int(k)),
                     _float_dtype(dtype))


@op
def identity(n, dtype=None):
    return _constant(np.eye(int(n)), _float_dtype(dtype))


@op
def tri(N, M=None, k=0, dtype=None):
    return _constant(np.tri(int(N), None if M is None else int(M), int(k)),
                     _float_dtype(dtype))


@op
def full(shape, fill_value, dtype=None):
    """keras.ops.full: floatx unless a dtype is given, whatever the fill (Keras's rule)."""
    dtype = _float_dtype(dtype)
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(
        int(d) for d in shape)
    fill = value(fill_value)
    if isinstance(fill, (int, float, bool, np.generic)):
        return Tensor(backend.current().full(shape, fill, dtype))
    return npo.broadcast_to(npo.cast(fill_value, dtype), shape)


@op
def full_like(x, fill_value, dtype=None):
    return full(shape_of(value(x)), fill_value, _dtype(x) if dtype is None else dtype)


@op
def arange(start, stop=None, step=None, dtype=None):
    """keras.ops.arange: int32 for int arguments, floatx otherwise (Keras's rule)."""
    step = 1 if step is None else step
    if dtype is None:
        ints = builtins.all(isinstance(v, (int, np.integer)) for v in (start, stop, step)
                            if v is not None)
        dtype = np.int32 if ints else _config.floatx()
    values = np.arange(start, stop, step) if stop is not None else np.arange(0, start, step)
    return _constant(values, dtype)


@op
def linspace(start, stop, num=50, endpoint=True, retstep=False, dtype=None, axis=0):
    values, step = np.linspace(value(start), value(stop), int(num), endpoint=endpoint,
                               retstep=True, axis=axis)
    out = _constant(values, _float_dtype(dtype))
    return (out, step) if retstep else out


# -- segments and scatters ----------------------------------------------------------------
# On the scatter family's kernels (both backends): float operands are viewed as rows (rows,
# D); the index arrays (host integers) are grouped or given owners on the host, as
# embedding_backward's, so every output row is folded by one work unit in a fixed order.
def _operand(b, x):
    """x's values on backend b (host data uploaded on a device, as keras.ops converts)."""
    v = value(x)
    if b.NAME == "cpu":
        return np.asarray(v)
    from pynn.ops import device
    return device._device(b, v)


def _host_ints(x):
    v = value(x)
    return np.asarray(v.get() if hasattr(v, "get") else v)


def _group(ids, n):
    """(starts, order): the rows with id s are order[starts[s]:starts[s+1]], in row order."""
    starts = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(ids, minlength=n), out=starts[1:])
    return starts, np.argsort(ids, kind="stable")


def _rows_view(b, a, rows):
    shape = tuple(shape_of(a))
    width = math.prod(shape) // rows if rows else math.prod(shape[1:])
    return b.reshape(a, (rows, width))


def _segments(name, data, segment_ids, num_segments):
    b = backend.current()
    d = _operand(b, data)
    ids = _host_ints(segment_ids)
    shape = tuple(shape_of(d))
    if ids.dtype.kind not in "iu":
        raise TypeError(f"pynn.ops.{name}: segment_ids must be integers, got dtype "
                        f"{ids.dtype}")
    if ids.ndim != 1 or len(shape) < 1 or ids.shape[0] != shape[0]:
        raise ValueError(f"pynn.ops.{name}: segment_ids must be 1-D, one per row of data, "
                         f"got {ids.shape} for data {shape}")
    n = int(ids.max()) + 1 if num_segments is None and ids.size else int(num_segments or 0)
    # Keras's rule (torch and TensorFlow): rows whose id lies outside [0, n) are dropped.
    keep = (ids >= 0) & (ids < n)
    rows = np.where(keep, ids, -1).astype(np.int64)
    starts, order = _group(ids[keep].astype(np.int64), n)
    return b, d, shape, n, rows, keep, starts, np.flatnonzero(keep)[order]


def _integer_segments(d, rows, keep, n, reduce, fill):
    y = np.full((n,) + d.shape[1:], fill, d.dtype)
    reduce.at(y, rows[keep], d[keep])
    return Tensor(y)


@op
def segment_sum(data, segment_ids, num_segments=None, sorted=False):
    """keras.ops.segment_sum: each segment's rows summed in row order (deterministic)."""
    b, d, shape, n, rows, keep, starts, order = _segments("segment_sum", data, segment_ids,
                                                          num_segments)
    if np.dtype(d.dtype).kind != "f":
        return _integer_segments(d, rows, keep, n, np.add, 0)
    y = b.reshape(b.segment_reduce_forward(_rows_view(b, d, shape[0]), starts, order, "sum"),
                  (n,) + shape[1:])

    def backward(dy, need):
        return (b.reshape(b.gather_rows(_rows_view(b, dy, n), rows), shape),)

    return record(y, (data,), backward, "segment_sum")


@op
def segment_max(data, segment_ids, num_segments=None, sorted=False):
    """keras.ops.segment_max; an empty segment holds -inf (Keras's on torch; an int dtype's
    lowest value); ties in a segment share its gradient."""
    b, d, shape, n, rows, keep, starts, order = _segments("segment_max", data, segment_ids,
                                                          num_segments)
    if np.dtype(d.dtype).kind != "f":
        return _integer_segments(d, rows, keep, n, np.maximum, np.iinfo(d.dtype).min)
    d2 = _rows_view(b, d, shape[0])
    y2 = b.segment_reduce_forward(d2, starts, order, "max")
    y = b.reshape(y2, (n,) + shape[1:])

    def backward(dy, need):
        dtype = np.dtype(d.dtype)
        kept = b.asarray(keep.astype(dtype).reshape(-1, 1), dtype)
        hit = b.elementwise_binary(b.elementwise_binary(d2, b.gather_rows(y2, rows), "equal"),
                                   kept, "multiply")
        count = b.segment_reduce_forward(hit, starts, order, "sum")
        share = b.elementwise_binary(_rows_view(b, dy, n), b.elementwise_binary(
            count, b.full((), 1.0, dtype), "maximum"), "divide")
        return (b.reshape(b.elementwise_binary(hit, b.gather_rows(share, rows), "multiply"),
                          shape),)

    return record(y, (data,), backward, "segment_max")


def _flat_rows(name, indices, shape):
    """indices (..., k) into shape -> (their row numbers in the (prod(shape[:k]), rest) view,
    that view's row count, the index tuple's batch shape)."""
    idx = _host_ints(indices)
    if idx.dtype.kind not in "iu" or idx.ndim < 1 or idx.shape[-1] > len(shape):
        raise ValueError(f"pynn.ops.{name}: indices must be integers of shape (..., k) with "
                         f"k <= {len(shape)}, got dtype {idx.dtype} shape {idx.shape}")
    k = idx.shape[-1]
    lead = tuple(shape[:k])
    idx = idx.reshape(-1, k).astype(np.int64)
    idx = np.where(idx < 0, idx + np.asarray(lead, np.int64), idx)
    if idx.size and (np.any(idx < 0) or np.any(idx >= np.asarray(lead, np.int64))):
        raise ValueError(f"pynn.ops.{name}: indices out of range for shape {tuple(shape)}")
    return np.ravel_multi_index(tuple(idx.T), lead) if k else np.zeros(
        idx.shape[0], np.int64), math.prod(lead)


@op
def scatter(indices, values, shape):
    """keras.ops.scatter: zeros of ``shape`` with ``values`` added at ``indices`` (repeats
    add up, in index order)."""
    b = backend.current()
    v = _operand(b, values)
    shape = tuple(int(d) for d in shape)
    flat, lead = _flat_rows("scatter", indices, shape)
    if np.dtype(v.dtype).kind != "f":
        y = np.zeros((lead, math.prod(shape) // builtins.max(lead, 1)), v.dtype)
        np.add.at(y, flat, v.reshape(flat.size, -1))
        return Tensor(y.reshape(shape))
    starts, order = _group(flat, lead)
    y = b.reshape(b.segment_reduce_forward(_rows_view(b, v, flat.size), starts, order, "sum"),
                  shape)
    vshape = tuple(shape_of(v))
    return record(y, (values,), lambda dy, need: (
        b.reshape(b.gather_rows(_rows_view(b, dy, lead), flat), vshape),), "scatter")


def _replace_rows(name, b, x, xshape, flat, lead, u, args):
    """x viewed as (lead, rest) with row flat[m] replaced by u's row m (the last one where
    flat repeats, as NumPy's assignment); gradients: dy off those rows to x, dy at them to
    every update."""
    owner = np.full(lead, -1, np.int64)
    owner[flat] = np.arange(flat.size)
    ushape = tuple(shape_of(u))
    y = b.reshape(b.select_rows(_rows_view(b, x, lead), _rows_view(b, u, flat.size), owner),
                  xshape)
    untouched = np.where(owner < 0, np.arange(lead), -1)

    def backward(dy, need):
        dy2 = _rows_view(b, dy, lead)
        return (b.reshape(b.gather_rows(dy2, untouched), xshape), None,
                b.reshape(b.gather_rows(dy2, flat), ushape))

    return record(y, args, backward, name)


@op
def scatter_update(inputs, indices, updates, reduction=None):
    """keras.ops.scatter_update: ``inputs`` with the places at ``indices`` replaced by
    ``updates``; gradients: dy off those places to inputs, dy at them to updates."""
    if reduction is not None:
        raise ValueError(f"pynn.ops.scatter_update: reduction={reduction!r} is not supported "
                         f"(only None, replacement)")
    b = backend.current()
    x, u = _operand(b, inputs), _operand(b, updates)
    xshape = tuple(shape_of(x))
    flat, lead = _flat_rows("scatter_update", indices, xshape)
    if np.dtype(x.dtype).kind != "f":
        y = x.copy().reshape(lead, -1)
        y[flat] = np.asarray(u).reshape(flat.size, -1)
        return Tensor(y.reshape(xshape))
    if np.dtype(u.dtype) != np.dtype(x.dtype):
        u = b.asarray(np.asarray(u), x.dtype) if b.NAME == "cpu" else u
    return _replace_rows("scatter_update", b, x, xshape, flat, lead, u,
                         (inputs, indices, updates))


@op
def slice_update(inputs, start_indices, updates):
    """keras.ops.slice_update: ``updates`` written into ``inputs`` from ``start_indices``
    (each element of the slice a row of its own, numbered from the shapes alone)."""
    b = backend.current()
    x, u = _operand(b, inputs), _operand(b, updates)
    xshape, ushape = tuple(shape_of(x)), tuple(shape_of(u))
    starts = [int(s) for s in _host_ints(start_indices).reshape(-1)]
    if len(starts) != len(xshape) or len(ushape) != len(xshape) or builtins.any(
            s < 0 or s + n > d for s, n, d in zip(starts, ushape, xshape)):
        raise ValueError(f"pynn.ops.slice_update: updates of shape {ushape} from "
                         f"{starts} do not fit inputs of shape {xshape}")
    key = tuple(builtins.slice(s, s + n) for s, n in zip(starts, ushape))
    size = math.prod(xshape)
    flat = np.arange(size).reshape(xshape)[key].reshape(-1)
    if np.dtype(x.dtype).kind != "f":
        y = x.copy()
        y[key] = u
        return Tensor(y)
    if np.dtype(u.dtype) != np.dtype(x.dtype):
        u = b.asarray(np.asarray(u), x.dtype) if b.NAME == "cpu" else u
    return _replace_rows("slice_update", b, x, xshape, flat, size, u,
                         (inputs, start_indices, updates))


__all__ = sorted(name for name, fn in dict(globals()).items()
                 if hasattr(fn, "raw") and not name.startswith("_"))
