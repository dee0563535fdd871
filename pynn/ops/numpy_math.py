"""keras.ops' remaining math: NaN-aware reductions, quantiles, statistics, counting and
searching, products (kron, cross, vdot, correlate), bitwise and integer ops, the elementwise
odds and ends (fmax, heaviside, sinc, i0, ldexp, ...), the real-input views of complex ops,
constructors and window functions.

As in ``numpy_extra``, most ops are compositions of the ops of ``numpy_ops`` and
``numpy_extra`` (where, the reductions, take, sort, the scatter family's segment_sum), so they
run on every backend and their gradients are the composed ops' gradients. NaN-aware ops
replace NaN by each reduction's neutral element with ``where`` (whose gradient sends nothing
to the replaced places); quantiles gather from the sort family's sorted rows (their gradient
goes back through the sort's permutation). i0 runs on the elementwise family's codes ``i0``
and ``i1`` (its derivative) on both backends.
The searching and counting ops with no gradient (searchsorted, digitize, isin, histogram)
keep NumPy's algorithms on the CPU, as numpy_ops does; on a device they are comparisons
against every element and a sum (one pass, no host trip).

segment_min is -segment_max(-x); segment_prod is the scatter family's 'prod' code on both
backends, its gradient exact with zeros.

The bitwise ops, shifts, gcd and lcm run on the integer family's kernels (api.INTEGER_BINARY:
int32 on both backends, int64 too on the CPU; NumPy's results, shifts past the width
included). nextafter is a code of the elementwise family (float32's own step on both backends).
Host-only, refused by name on a device (never a silent trip through the host):
unravel_index, and the ops whose output size depends on the values (unique, nonzero), which
are also refused inside a functional graph.
pynn has no complex dtype: real, imag, conj, angle and isreal give NumPy's results for real
inputs and refuse complex ones; polar, whose result is complex, is refused.
"""

import builtins
import math

import numpy as np

from pynn import _config, backend
from pynn.autodiff import Tensor
from pynn.layers.symbolic import KerasTensor
from pynn.ops import numpy_extra as npx
from pynn.ops import numpy_ops as npo
from pynn.ops._core import cpu_only, op, record, shape_of, value

LN2 = math.log(2.0)


def _shape(x):
    return tuple(shape_of(value(x)))


def _ndim(x):
    return len(_shape(x))


def _dtype(x):
    return np.dtype(npx._dtype(x))


def _floating(name, x):
    """x as a float tensor (ints are cast to floatx, as Keras's float results); complex
    refused by name."""
    kind = _dtype(x).kind
    if kind == "c":
        raise TypeError(f"pynn.ops.{name}: pynn has no complex dtype, got a complex input")
    return x if kind == "f" else npo.cast(x, _config.floatx())


def _axes(name, axis, ndim):
    """axis (None, an int or a sequence of ints) as sorted distinct non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    many = axis if isinstance(axis, (list, tuple)) else (axis,)
    axes = sorted({npx._axis(name, a, ndim) for a in many})
    if len(axes) != len(many):
        raise ValueError(f"pynn.ops.{name}: repeated axis in {axis!r}")
    return tuple(axes)


# -- NaN-aware reductions -----------------------------------------------------------------
def _without_nan(x, fill):
    """x with NaN replaced by ``fill`` (the reduction's neutral element): no gradient goes to
    the NaN places."""
    return npo.where(npo.isnan(x), fill, x) if _dtype(x).kind == "f" else x


def _valid_count(x, axis, keepdims):
    return npo.sum(npo.cast(npo.logical_not(npo.isnan(x)), _dtype(x)), axis=axis,
                   keepdims=keepdims)


def _reduction_axis(name, x, axis):
    ndim = _ndim(x)
    return None if axis is None else _axes(name, axis, ndim)


@op
def nansum(x, axis=None, keepdims=False):
    """keras.ops.nansum: the sum with NaN counted as zero."""
    axis = _reduction_axis("nansum", x, axis)
    return npo.sum(_without_nan(x, 0), axis=axis, keepdims=keepdims)


@op
def nanprod(x, axis=None, keepdims=False):
    """keras.ops.nanprod: the product with NaN counted as one."""
    axis = _reduction_axis("nanprod", x, axis)
    return npo.prod(_without_nan(x, 1), axis=axis, keepdims=keepdims)


@op
def nanmean(x, axis=None, keepdims=False):
    """keras.ops.nanmean: the mean of the non-NaN values (NaN where there are none)."""
    axis = _reduction_axis("nanmean", x, axis)
    x = _floating("nanmean", x)
    with np.errstate(invalid="ignore", divide="ignore"):
        return npo.divide(nansum(x, axis, keepdims), _valid_count(x, axis, keepdims))


@op
def nanvar(x, axis=None, keepdims=False):
    """keras.ops.nanvar: the biased variance of the non-NaN values."""
    axis = _reduction_axis("nanvar", x, axis)
    x = _floating("nanvar", x)
    with np.errstate(invalid="ignore", divide="ignore"):
        centred = npo.subtract(_without_nan(x, 0), nanmean(x, axis, True))
        squares = npo.where(npo.isnan(x), 0, npo.square(centred))
        return npo.divide(npo.sum(squares, axis=axis, keepdims=keepdims),
                          _valid_count(x, axis, keepdims))


@op
def nanstd(x, axis=None, keepdims=False):
    return npo.sqrt(nanvar(x, axis, keepdims))


def _nan_extremum(name, x, axis, keepdims, reduce, fill):
    axis = _reduction_axis(name, x, axis)
    if _dtype(x).kind != "f":
        return reduce(x, axis=axis, keepdims=keepdims)
    out = reduce(_without_nan(x, fill), axis=axis, keepdims=keepdims)
    # Keras's (and NumPy's) all-NaN slice: NaN
    return npo.where(npo.all(npo.isnan(x), axis=axis, keepdims=keepdims), np.nan, out)


@op
def nanmax(x, axis=None, keepdims=False):
    """keras.ops.nanmax: NaN ignored; an all-NaN slice gives NaN."""
    return _nan_extremum("nanmax", x, axis, keepdims, npo.max, -np.inf)


@op
def nanmin(x, axis=None, keepdims=False):
    """keras.ops.nanmin: NaN ignored; an all-NaN slice gives NaN."""
    return _nan_extremum("nanmin", x, axis, keepdims, npo.min, np.inf)


def _nan_arg(name, x, axis, keepdims, reduce, fill):
    if axis is not None:
        npx._axis(name, axis, _ndim(x))
    if _dtype(x).kind != "f":
        return reduce(x, axis=axis, keepdims=keepdims)
    # selected in float (the device's where moves floats; positions below 2**24 are exact)
    index = npo.cast(reduce(_without_nan(x, fill), axis=axis, keepdims=keepdims), "float32")
    # Keras's rule for an all-NaN slice: -1 (NumPy raises)
    chosen = npo.where(npo.all(npo.isnan(x), axis=axis, keepdims=keepdims), -1.0, index)
    return npo.cast(chosen, "int32")


@op
def nanargmax(x, axis=None, keepdims=False):
    """keras.ops.nanargmax: int32 positions, NaN ignored, -1 for an all-NaN slice
    (Keras's)."""
    return _nan_arg("nanargmax", x, axis, keepdims, npo.argmax, -np.inf)


@op
def nanargmin(x, axis=None, keepdims=False):
    return _nan_arg("nanargmin", x, axis, keepdims, npo.argmin, np.inf)


@op
def nancumsum(x, axis=None, dtype=None):
    return npx.cumsum(_without_nan(x, 0), axis=axis, dtype=dtype)


@op
def nancumprod(x, axis=None, dtype=None):
    return npx.cumprod(_without_nan(x, 1), axis=axis, dtype=dtype)


# -- quantiles ----------------------------------------------------------------------------
QUANTILE_METHODS = ("linear", "lower", "higher", "midpoint", "nearest")


def _rows_last(name, x, axis):
    """x with the reduced axes moved last and merged into one -> (rows tensor, kept shape
    with 1s at the reduced axes)."""
    shape = _shape(x)
    axes = _axes(name, axis, len(shape))
    others = [a for a in range(len(shape)) if a not in axes]
    kept = tuple(1 if a in axes else d for a, d in enumerate(shape))
    moved = npo.transpose(x, others + list(axes)) if others else x
    length = math.prod(shape[a] for a in axes)
    return npo.reshape(moved, tuple(shape[a] for a in others) + (length,)), kept, axes


def _host_floats(q):
    """q's values in float64 (a Python list is not rounded to floatx first)."""
    if isinstance(q, (list, tuple, int, float)):
        return np.asarray(q, np.float64)
    v = value(q)
    return np.asarray(v.get() if hasattr(v, "get") else v, np.float64)


def _quantile(name, x, q, axis, method, keepdims, skip_nan):
    """NumPy's quantile (its methods 'linear', 'lower', 'higher', 'midpoint', 'nearest') of
    the sorted rows: the row's two neighbours of position q (n - 1) gathered and blended, n
    the row's length (its non-NaN count when skip_nan, NaN sorting last)."""
    if method not in QUANTILE_METHODS:
        raise ValueError(f"pynn.ops.{name}: method must be one of {QUANTILE_METHODS}, got "
                         f"{method!r}")
    qs = _host_floats(q)
    if qs.ndim > 1:
        raise ValueError(f"pynn.ops.{name}: q must be a scalar or 1-D, got shape {qs.shape}")
    if qs.size and (np.any(qs < 0) or np.any(qs > 1) or np.any(np.isnan(qs))):
        raise ValueError(f"pynn.ops.{name}: quantiles must lie in [0, 1], got {qs.tolist()}")
    if _ndim(x) == 0:
        x = npo.reshape(x, (1,))
        axis = None
    x = _floating(name, x)
    rows, kept, axes = _rows_last(name, x, axis)
    n = _shape(rows)[-1]
    if n == 0:
        raise ValueError(f"pynn.ops.{name}: cannot take quantiles of an empty slice")
    ordered = npx.sort(rows, axis=-1)
    lead = _shape(rows)[:-1]
    flat_q = qs.reshape(-1)
    if skip_nan:
        count = npo.stop_gradient(_valid_count(rows, -1, True))
        last = npo.maximum(npo.subtract(count, 1), 0)
        position = npo.multiply(last, flat_q.astype(_dtype(rows)))
        low = npo.floor(position)
        high = npo.minimum(npo.ceil(position), last)
        nearest = npo.round(position)
        fraction = npo.subtract(position, low)
    else:
        position = flat_q * (n - 1)
        low, high = np.floor(position), np.ceil(position)
        nearest, fraction = np.round(position), (position - np.floor(position)).astype(
            _dtype(rows))

    def gather(index):
        if isinstance(index, np.ndarray):
            return npo.take(ordered, index.astype(np.int32), axis=-1)
        return npo.take_along_axis(ordered, npo.cast(index, "int32"), axis=-1)

    if method == "lower":
        out = gather(low)
    elif method == "higher":
        out = gather(high)
    elif method == "nearest":
        out = gather(nearest)
    else:
        below, above = gather(low), gather(high)
        if method == "midpoint":
            out = npo.multiply(npo.add(below, above), 0.5)
        else:
            out = npo.add(below, npo.multiply(npo.subtract(above, below), fraction))
    if skip_nan:
        out = npo.where(npo.equal(count, 0), np.nan, out)
    else:  # NumPy: a NaN anywhere in the slice makes its quantiles NaN
        out = npo.where(npo.any(npo.isnan(rows), axis=-1, keepdims=True), np.nan, out)
    # (..., k) -> q's axis first, then the kept axes
    out = npx.moveaxis(out, -1, 0) if lead else out
    out_shape = kept if keepdims else tuple(d for a, d in enumerate(kept) if a not in axes)
    out = npo.reshape(out, (flat_q.size,) + out_shape)
    return npo.reshape(out, qs.shape + out_shape)


@op
def quantile(x, q, axis=None, method="linear", keepdims=False):
    """keras.ops.quantile (NumPy's methods); a NaN in a slice makes it NaN; the gradient
    goes back through the sort."""
    return _quantile("quantile", x, q, axis, method, keepdims, False)


@op
def nanquantile(x, q, axis=None, method="linear", keepdims=False):
    """keras.ops.nanquantile: the quantile of each slice's non-NaN values (NaN if none)."""
    return _quantile("nanquantile", x, q, axis, method, keepdims, True)


def _percent(name, q):
    qs = _host_floats(q)
    if qs.size and (np.any(qs < 0) or np.any(qs > 100)):
        raise ValueError(f"pynn.ops.{name}: percentiles must lie in [0, 100], got "
                         f"{qs.tolist()}")
    return qs / 100.0


@op
def percentile(x, q, axis=None, method="linear", keepdims=False):
    return _quantile("percentile", x, _percent("percentile", q), axis, method, keepdims,
                     False)


@op
def nanpercentile(x, q, axis=None, method="linear", keepdims=False):
    return _quantile("nanpercentile", x, _percent("nanpercentile", q), axis, method,
                     keepdims, True)


@op
def median(x, axis=None, keepdims=False):
    return _quantile("median", x, 0.5, axis, "linear", keepdims, False)


@op
def nanmedian(x, axis=None, keepdims=False):
    return _quantile("nanmedian", x, 0.5, axis, "linear", keepdims, True)


# -- statistics ---------------------------------------------------------------------------
@op
def average(x, axis=None, weights=None):
    """keras.ops.average (NumPy's): weights of x's shape, or 1-D along ``axis``."""
    x = _floating("average", x)
    if axis is not None:
        axis = npx._axis("average", axis, _ndim(x))
    if weights is None:
        return npo.mean(x, axis=axis)
    wshape, xshape = _shape(weights), _shape(x)
    if wshape != xshape:
        if axis is None or len(wshape) != 1 or wshape[0] != xshape[axis]:
            raise ValueError(f"pynn.ops.average: weights must have x's shape {xshape}, or be "
                             f"1-D of axis {axis}'s length, got {wshape}")
        weights = npo.reshape(weights, tuple(-1 if a == axis else 1
                                             for a in range(len(xshape))))
    weights = npo.cast(weights, _dtype(x)) if _dtype(weights) != _dtype(x) else weights
    total = npo.sum(npo.multiply(x, weights), axis=axis)
    return npo.divide(total, npo.sum(npo.broadcast_to(weights, xshape), axis=axis))


@op
def ptp(x, axis=None, keepdims=False):
    """keras.ops.ptp: max - min (ties share each end's gradient)."""
    axis = _reduction_axis("ptp", x, axis)
    return npo.subtract(npo.max(x, axis=axis, keepdims=keepdims),
                        npo.min(x, axis=axis, keepdims=keepdims))


@op
def count_nonzero(x, axis=None):
    """keras.ops.count_nonzero: int32 counts."""
    axis = _reduction_axis("count_nonzero", x, axis)
    nonzero = npo.cast(npo.not_equal(x, 0), "float32")
    return npo.cast(npo.sum(nonzero, axis=axis), "int32")


@op
def corrcoef(x):
    """keras.ops.corrcoef: Pearson's coefficients of the rows (variables) of a 1-D or 2-D
    x, clipped to [-1, 1] as NumPy."""
    if _ndim(x) > 2:
        raise ValueError(f"pynn.ops.corrcoef: expected a 1-D or 2-D input, got shape "
                         f"{_shape(x)}")
    x = _floating("corrcoef", x)
    rows = npo.reshape(x, (1, -1)) if _ndim(x) < 2 else x
    centred = npo.subtract(rows, npo.mean(rows, axis=1, keepdims=True))
    products = npo.matmul(centred, npo.transpose(centred))
    scale = npo.sqrt(npx.diagonal(products))
    with np.errstate(invalid="ignore", divide="ignore"):
        c = npo.divide(npo.divide(products, npo.reshape(scale, (-1, 1))),
                       npo.reshape(scale, (1, -1)))
    c = npo.clip(c, -1.0, 1.0)
    return npo.reshape(c, ()) if _ndim(x) < 2 else c


@op
def cdist(x, y):
    """keras.ops.cdist: Euclidean distances between the rows of x (..., P, M) and y
    (..., R, M), batch axes broadcast (Keras's formula: the gradient is NaN where a distance
    is 0, as on torch)."""
    xs, ys = _shape(x), _shape(y)
    if len(xs) < 2 or len(ys) < 2 or xs[-1] != ys[-1]:
        raise ValueError(f"pynn.ops.cdist: expected x (..., P, M) and y (..., R, M) of rank "
                         f">= 2 with the same M, got {xs} and {ys}")
    difference = npo.subtract(npo.expand_dims(x, -2), npo.expand_dims(y, -3))
    return npo.sqrt(npo.sum(npo.square(difference), axis=-1))


@op
def psnr(x1, x2, max_val):
    """keras.ops.psnr: 20 log10(max_val) - 10 log10(mean((x1 - x2)^2)) over all axes."""
    if _shape(x1) != _shape(x2):
        raise ValueError(f"pynn.ops.psnr: x1 and x2 must have the same shape, got "
                         f"{_shape(x1)} and {_shape(x2)}")
    mse = npo.mean(npo.square(npo.subtract(x1, x2)))
    peak = 20.0 * math.log10(float(_host_floats(max_val)))
    with np.errstate(divide="ignore"):
        return npo.subtract(peak, npo.multiply(npo.log10(mse), 10.0))


# -- counting and searching ---------------------------------------------------------------
def _host_array(name, x):
    cpu_only(name)
    return np.asarray(value(x))


def _integers(name, x):
    a = _host_array(name, x)
    if a.dtype.kind not in "iub":
        raise TypeError(f"pynn.ops.{name}: expected an integer input, got dtype {a.dtype}")
    return a


@op
def bincount(x, weights=None, minlength=0, sparse=False):
    """keras.ops.bincount: the count (or the weights' sum) of each value of a 1-D
    non-negative integer x, on the scatter family (both backends; the length max(x) + 1 is
    read on the host, as segment ids are); the weights' gradient is a gather."""
    if sparse:
        raise ValueError("pynn.ops.bincount: sparse=True is not supported (pynn has no "
                         "sparse tensors)")
    ids = npx._host_ints(x)
    if ids.dtype.kind not in "iu" or ids.ndim != 1:
        raise ValueError(f"pynn.ops.bincount: expected a 1-D integer x, got dtype "
                         f"{ids.dtype} shape {ids.shape}")
    if ids.size and ids.min() < 0:
        raise ValueError(f"pynn.ops.bincount: x must be non-negative, got {ids.min()}")
    if isinstance(minlength, bool) or int(minlength) < 0:
        raise ValueError(f"pynn.ops.bincount: minlength must be >= 0, got {minlength!r}")
    length = builtins.max(int(ids.max()) + 1 if ids.size else 0, int(minlength))
    if weights is None:  # a sum of ones, exact in float32 below 2**24 per bin
        ones = npo.ones((ids.shape[0],), "float32")
        return npo.cast(npx.segment_sum(ones, ids, num_segments=length), "int32")
    if _shape(weights) != ids.shape:
        raise ValueError(f"pynn.ops.bincount: weights must have x's shape {ids.shape}, got "
                         f"{_shape(weights)}")
    return npx.segment_sum(_floating("bincount", weights), ids, num_segments=length)


@op
def searchsorted(sorted_sequence, values, side="left"):
    """keras.ops.searchsorted on a 1-D ascending sequence: int32 insertion points, the count
    of the sequence's elements below (side 'left') or not above ('right') each value."""
    if side not in ("left", "right"):
        raise ValueError(f"pynn.ops.searchsorted: side must be 'left' or 'right', got "
                         f"{side!r}")
    if _ndim(sorted_sequence) != 1:
        raise ValueError(f"pynn.ops.searchsorted: sorted_sequence must be 1-D, got shape "
                         f"{_shape(sorted_sequence)}")
    if backend.current().NAME == "cpu":  # NumPy's binary search
        return Tensor(np.searchsorted(np.asarray(value(sorted_sequence)),
                                      np.asarray(value(values)), side).astype(np.int32))
    # on the device: a count against every element (O(len(sequence)) per value)
    compare = npo.less if side == "left" else npo.less_equal
    below = compare(sorted_sequence, npo.expand_dims(values, -1))
    return npo.cast(npo.sum(npo.cast(below, "float32"), axis=-1), "int32")


@op
def digitize(x, bins):
    """keras.ops.digitize: NumPy's bin index (right=False) for ascending or descending
    bins, int32."""
    if _ndim(bins) != 1:
        raise ValueError(f"pynn.ops.digitize: bins must be 1-D, got shape {_shape(bins)}")
    edges = np.asarray(value(bins) if not hasattr(value(bins), "get") else value(bins).get())
    if edges.size > 1 and np.all(np.diff(edges) <= 0) and np.any(np.diff(edges) < 0):
        # descending: the count of edges above x
        above = npo.greater(bins, npo.expand_dims(x, -1))
        return npo.cast(npo.sum(npo.cast(above, "float32"), axis=-1), "int32")
    if edges.size > 1 and np.any(np.diff(edges) < 0):
        raise ValueError("pynn.ops.digitize: bins must be monotonically increasing or "
                         "decreasing")
    if backend.current().NAME == "cpu":
        return Tensor(np.digitize(np.asarray(value(x)), edges).astype(np.int32))
    return searchsorted(bins, x, side="right")


@op
def histogram(x, bins=10, range=None):
    """keras.ops.histogram: (counts, edges) of a 1-D x in ``bins`` equal bins over
    ``range`` (x's min and max by default); the last bin includes its right edge, values
    outside the range are not counted (Keras's: float counts)."""
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"pynn.ops.histogram: bins must be a positive int, got {bins!r}")
    if _ndim(x) != 1:
        raise ValueError(f"pynn.ops.histogram: expected a 1-D input, got shape {_shape(x)}")
    x = npo.stop_gradient(_floating("histogram", x))
    if range is None:
        lo = float(np.asarray(npo.min(x))) if _shape(x)[0] else 0.0
        hi = float(np.asarray(npo.max(x))) if _shape(x)[0] else 1.0
    else:
        lo, hi = (float(v) for v in range)
        if not lo <= hi:
            raise ValueError(f"pynn.ops.histogram: range must be (min, max) with min <= max, "
                             f"got {range!r}")
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, int(bins) + 1)
    dtype = _dtype(x)
    if backend.current().NAME == "cpu":
        counts = np.histogram(np.asarray(value(x)), int(bins), (lo, hi))[0]
        return Tensor(counts.astype(dtype)), npx._constant(edges, dtype)
    # on the device: each value's bin compared with every bin (O(bins) per value)
    scaled = npo.multiply(npo.subtract(x, lo), bins / (hi - lo))
    index = npo.minimum(npo.floor(scaled), bins - 1)
    inside = npo.logical_and(npo.greater_equal(x, lo), npo.less_equal(x, hi))
    index = npo.where(inside, index, -1)
    hits = npo.equal(npo.expand_dims(index, -1), np.arange(bins, dtype=dtype))
    counts = npo.sum(npo.cast(hits, dtype), axis=0)
    return counts, npx._constant(edges, dtype)


@op
def isin(x1, x2, assume_unique=False, invert=False):
    """keras.ops.isin: whether each element of x1 is among x2's (an equality against every
    element of x2)."""
    if backend.current().NAME == "cpu":  # NumPy's (sorting) isin
        return Tensor(np.isin(np.asarray(value(x1)), np.asarray(value(x2)), invert=invert))
    # on the device: an equality against every element of x2
    hits = npo.any(npo.equal(npo.expand_dims(x1, -1), npo.reshape(x2, (-1,))), axis=-1)
    return npo.logical_not(hits) if invert else hits


def _refuse_symbolic(name, *args):
    if builtins.any(type(a) is KerasTensor for a in args):
        raise ValueError(f"pynn.ops.{name}: the output's shape depends on the values; it "
                         f"cannot be a node of a functional graph (call it eagerly)")


def unique(x, sorted=True, return_index=False, return_inverse=False, return_counts=False,
           axis=None, size=None, fill_value=None):
    """keras.ops.unique (eager, host): the sorted distinct values, with NumPy's first
    indices, inverse and counts on request (int64, as Keras's on torch and NumPy); ``size``
    pads with ``fill_value`` (the smallest value by default) or truncates."""
    _refuse_symbolic("unique", x)
    a = _host_array("unique", x)
    if axis is not None:
        axis = npx._axis("unique", axis, a.ndim)
    values, index, inverse, counts = np.unique(a, return_index=True, return_inverse=True,
                                               return_counts=True, axis=axis)
    if size is not None:
        size = int(size)
        length = values.shape[0 if axis is None else axis]
        if size < length:
            take = np.arange(size)
            values = np.take(values, take, axis=0 if axis is None else axis)
            index, counts = index[:size], counts[:size]
        elif size > length:
            fill = values.min() if fill_value is None and values.size else (fill_value or 0)
            pad = [(0, 0)] * values.ndim
            pad[0 if axis is None else axis] = (0, size - length)
            values = np.pad(values, pad, constant_values=fill)
            index = np.pad(index, (0, size - length))
            counts = np.pad(counts, (0, size - length))
    out = [Tensor(values)]
    if return_index:
        out.append(Tensor(index.astype(np.int64)))
    if return_inverse:
        out.append(Tensor(inverse.reshape(a.shape if axis is None else -1).astype(np.int64)))
    if return_counts:
        out.append(Tensor(counts.astype(np.int64)))
    return out[0] if len(out) == 1 else tuple(out)


def nonzero(x):
    """keras.ops.nonzero (eager, host): one int32 index array per axis."""
    _refuse_symbolic("nonzero", x)
    return tuple(Tensor(i.astype(np.int32)) for i in np.nonzero(_host_array("nonzero", x)))


@op
def argpartition(x, kth, axis=-1):
    """keras.ops.argpartition: int32 indices that put the kth element in its sorted place,
    the smaller before it and the larger after (a full stable argsort is one such order)."""
    ndim = _ndim(x)
    if ndim == 0:
        raise ValueError("pynn.ops.argpartition: expected an input of at least 1 dimension, "
                         "got a scalar")
    axis = npx._axis("argpartition", axis, ndim)
    n = _shape(x)[axis]
    for k in np.atleast_1d(kth):
        if not -n <= int(k) < n:
            raise ValueError(f"pynn.ops.argpartition: kth {int(k)} is out of range for "
                             f"axis {axis} of length {n}")
    return npo.cast(npx.argsort(x, axis=axis), "int32")


@op
def unravel_index(indices, shape):
    """keras.ops.unravel_index: one int32 coordinate array per axis of ``shape`` (host:
    integer division)."""
    idx = _integers("unravel_index", indices)
    shape = tuple(int(d) for d in shape)
    size = math.prod(shape)
    if idx.size and (idx.min() < -size or idx.max() >= size):
        raise ValueError(f"pynn.ops.unravel_index: indices must lie in [0, {size}) for shape "
                         f"{shape}, got values in [{idx.min()}, {idx.max()}]")
    return tuple(Tensor(c.astype(np.int32)) for c in np.unravel_index(idx % size, shape))


# -- segments (beside numpy_extra's segment_sum / segment_max, on the scatter family) --------
@op
def segment_min(data, segment_ids, num_segments=None, sorted=False):
    """keras.ops.segment_min: -segment_max(-data); an empty segment holds +inf (an int
    dtype's largest value); ties in a segment share its gradient."""
    if _dtype(data).kind != "f":
        b, d, shape, n, rows, keep, starts, order = npx._segments(
            "segment_min", data, segment_ids, num_segments)
        return npx._integer_segments(d, rows, keep, n, np.minimum, np.iinfo(d.dtype).max)
    return npo.negative(npx.segment_max(npo.negative(data), segment_ids, num_segments))


@op
def segment_prod(data, segment_ids, num_segments=None, sorted=False):
    """keras.ops.segment_prod: each segment's rows multiplied in row order (the scatter
    family's 'prod'; an empty segment is 1). The gradient of a row is the product of the
    segment's others, exact with zeros: the product of the segment's non-zero rows and its
    count of zeros decide it."""
    b, d, shape, n, rows, keep, starts, order = npx._segments("segment_prod", data,
                                                              segment_ids, num_segments)
    if np.dtype(d.dtype).kind != "f":
        return npx._integer_segments(d, rows, keep, n, np.multiply, 1)
    d2 = npx._rows_view(b, d, shape[0])
    y2 = b.segment_reduce_forward(d2, starts, order, "prod")
    y = b.reshape(y2, (n,) + shape[1:])

    def backward(dy, need):
        dtype = np.dtype(d.dtype)
        one = b.full((), 1.0, dtype)
        zero = b.elementwise_binary(d2, b.full((), 0.0, dtype), "equal")
        nonzero = b.elementwise_binary(one, zero, "subtract")
        # the rows with a zero count as 1 in the product of the others
        others = b.segment_reduce_forward(b.elementwise_binary(
            b.elementwise_binary(d2, nonzero, "multiply"), zero, "add"), starts, order,
            "prod")
        zeros = b.segment_reduce_forward(zero, starts, order, "sum")
        g = b.elementwise_binary(npx._rows_view(b, dy, n), others, "multiply")
        g_row = b.gather_rows(g, rows)
        zeros_row = b.gather_rows(zeros, rows)
        # a non-zero row: g / x where its segment has no zero; a zero row: g where it is the
        # segment's only zero; else 0
        no_zero = b.elementwise_binary(zeros_row, b.full((), 0.0, dtype), "equal")
        one_zero = b.elementwise_binary(zeros_row, one, "equal")
        safe = b.elementwise_binary(d2, zero, "add")
        at_nonzero = b.elementwise_binary(b.elementwise_binary(g_row, safe, "divide"),
                                          b.elementwise_binary(no_zero, nonzero, "multiply"),
                                          "multiply")
        at_zero = b.elementwise_binary(g_row, b.elementwise_binary(one_zero, zero,
                                                                   "multiply"), "multiply")
        return (b.reshape(b.elementwise_binary(at_nonzero, at_zero, "add"), shape),)

    return record(y, (data,), backward, "segment_prod")


# -- differences, integrals, products ---------------------------------------------------------
def _slice_axis(x, start, stop, axis):
    return npo.take(x, np.arange(start, stop, dtype=np.int32), axis=axis)


@op
def diff(a, n=1, axis=-1):
    """keras.ops.diff: the n-th forward difference along ``axis``."""
    if isinstance(n, bool) or int(n) < 0:
        raise ValueError(f"pynn.ops.diff: n must be >= 0, got {n!r}")
    axis = npx._axis("diff", axis, _ndim(a))
    for _ in range(int(n)):
        length = _shape(a)[axis]
        if length == 0:
            break
        a = npo.subtract(_slice_axis(a, 1, length, axis), _slice_axis(a, 0, length - 1, axis))
    return a


@op
def trapezoid(y, x=None, dx=1.0, axis=-1):
    """keras.ops.trapezoid: the trapezoidal rule along ``axis`` with sample points x (1-D
    or y's shape) or spacing dx."""
    y = _floating("trapezoid", y)
    axis = npx._axis("trapezoid", axis, _ndim(y))
    length = _shape(y)[axis]
    pairs = npo.add(_slice_axis(y, 1, length, axis), _slice_axis(y, 0, length - 1, axis))
    if x is None:
        return npo.multiply(npo.sum(pairs, axis=axis), 0.5 * float(dx))
    if _ndim(x) == 1:
        if _shape(x)[0] != length:
            raise ValueError(f"pynn.ops.trapezoid: x must hold {length} points (axis "
                             f"{axis}'s length), got {_shape(x)[0]}")
        x = npo.reshape(x, tuple(-1 if a == axis else 1 for a in range(_ndim(y))))
        spacing = diff(x, axis=axis)
    else:
        spacing = diff(x, axis=axis)
    return npo.multiply(npo.sum(npo.multiply(pairs, spacing), axis=axis), 0.5)


@op
def vander(x, N=None, increasing=False):
    """keras.ops.vander: the powers of a 1-D x as columns (a cumulative product of x, so
    the gradient is exact at x = 0)."""
    if _ndim(x) != 1:
        raise ValueError(f"pynn.ops.vander: expected a 1-D input, got shape {_shape(x)}")
    m = _shape(x)[0]
    n = m if N is None else int(N)
    if n < 0:
        raise ValueError(f"pynn.ops.vander: N must be >= 0, got {N!r}")
    column = npo.reshape(x, (m, 1))
    if n == 0:
        return npo.multiply(npo.broadcast_to(column, (m, 0)), 0)
    ones = npo.ones_like(column)
    powers = npx.cumprod(npo.concatenate([ones, npo.broadcast_to(column, (m, n - 1))], 1),
                         axis=1) if n > 1 else ones
    return powers if increasing else npo.flip(powers, 1)


@op
def vdot(x1, x2):
    """keras.ops.vdot: the dot product of the flattened inputs."""
    a, b = npo.reshape(x1, (-1,)), npo.reshape(x2, (-1,))
    if _shape(a) != _shape(b):
        raise ValueError(f"pynn.ops.vdot: the inputs must have as many elements, got shapes "
                         f"{_shape(x1)} and {_shape(x2)}")
    return npo.sum(npo.multiply(a, b))


@op
def kron(x1, x2):
    """keras.ops.kron: the Kronecker product (each block of x1's element times x2), as an
    interleaved outer product."""
    s1, s2 = _shape(x1), _shape(x2)
    nd = builtins.max(len(s1), len(s2))
    s1, s2 = (1,) * (nd - len(s1)) + s1, (1,) * (nd - len(s2)) + s2
    a = npo.reshape(x1, tuple(d for s in s1 for d in (s, 1)))
    b = npo.reshape(x2, tuple(d for s in s2 for d in (1, s)))
    return npo.reshape(npo.multiply(a, b), tuple(p * q for p, q in zip(s1, s2)))


def _component(v, i):
    return npo.take(v, np.asarray(i, np.int32), axis=-1)


@op
def cross(x1, x2, axisa=-1, axisb=-1, axisc=-1, axis=None):
    """keras.ops.cross: the cross product of 3-vectors (or 2-vectors, zero-extended) along
    axisa/axisb, the result's vector axis at axisc (all of them ``axis`` when given)."""
    if axis is not None:
        axisa = axisb = axisc = axis
    a = npx.moveaxis(x1, npx._axis("cross", axisa, _ndim(x1)), -1)
    b = npx.moveaxis(x2, npx._axis("cross", axisb, _ndim(x2)), -1)
    na, nb = _shape(a)[-1], _shape(b)[-1]
    if na not in (2, 3) or nb not in (2, 3):
        raise ValueError(f"pynn.ops.cross: the vector axes must have 2 or 3 components, got "
                         f"{na} and {nb}")
    if na == nb == 2:  # NumPy: the z component alone
        return npo.subtract(npo.multiply(_component(a, 0), _component(b, 1)),
                            npo.multiply(_component(a, 1), _component(b, 0)))

    def padded(v, n):
        return v if n == 3 else npo.concatenate([v, npo.multiply(_component(v, [0]), 0)], -1)

    a, b = padded(a, na), padded(b, nb)
    rot_a1, rot_b2 = _component(a, [1, 2, 0]), _component(b, [2, 0, 1])
    rot_a2, rot_b1 = _component(a, [2, 0, 1]), _component(b, [1, 2, 0])
    c = npo.subtract(npo.multiply(rot_a1, rot_b2), npo.multiply(rot_a2, rot_b1))
    return npx.moveaxis(c, -1, npx._axis("cross", axisc, _ndim(c)))


CORRELATE_MODES = ("valid", "same", "full")


@op
def correlate(x1, x2, mode="valid"):
    """keras.ops.correlate of two 1-D inputs (NumPy's: c[k] = sum_n x1[n + k] x2[n], the
    longer input sliding when x2 is longer, reversed): windows of the zero-padded x1 gathered
    by host indices, times x2."""
    if mode not in CORRELATE_MODES:
        raise ValueError(f"pynn.ops.correlate: mode must be one of {CORRELATE_MODES}, got "
                         f"{mode!r}")
    if _ndim(x1) != 1 or _ndim(x2) != 1:
        raise ValueError(f"pynn.ops.correlate: expected 1-D inputs, got shapes {_shape(x1)} "
                         f"and {_shape(x2)}")
    n, m = _shape(x1)[0], _shape(x2)[0]
    if n == 0 or m == 0:
        raise ValueError("pynn.ops.correlate: the inputs must not be empty")
    if m > n:
        return npo.flip(correlate(x2, x1, mode), 0)
    x1, x2 = _floating("correlate", x1), _floating("correlate", x2)
    left = {"valid": 0, "same": m // 2, "full": m - 1}[mode]
    right = {"valid": 0, "same": m - 1 - m // 2, "full": m - 1}[mode]
    padded = npx.pad(x1, ((left, right),)) if left or right else x1
    count = n + left + right - m + 1
    windows = npo.take(padded, (np.arange(count)[:, None] + np.arange(m)[None, :]).astype(
        np.int32), axis=0)
    return npo.sum(npo.multiply(windows, x2), axis=-1)


@op
def append(x1, x2, axis=None):
    """keras.ops.append (NumPy's): x2 after x1 along ``axis``, both flattened when None."""
    if axis is None:
        return npo.concatenate([npo.reshape(x1, (-1,)), npo.reshape(x2, (-1,))], axis=0)
    if _ndim(x1) != _ndim(x2):
        raise ValueError(f"pynn.ops.append: x1 and x2 must have as many dimensions, got "
                         f"shapes {_shape(x1)} and {_shape(x2)}")
    return npo.concatenate([x1, x2], axis=npx._axis("append", axis, _ndim(x1)))


@op
def allclose(x1, x2, rtol=1e-05, atol=1e-08, equal_nan=False):
    return npo.all(npx.isclose(x1, x2, rtol=rtol, atol=atol, equal_nan=equal_nan))


# -- bitwise and integer ops (the integer family: int32 on both backends, int64 on the CPU) --
KERNEL_INTEGERS = (np.dtype(np.int32), np.dtype(np.int64))


def _integer_operand(name, x, like=None):
    """x's integers: a Python int takes the other operand's dtype (a weak scalar, as NumPy's
    and Keras's); floats are refused by name."""
    v = value(x)
    if isinstance(v, bool) or (isinstance(v, int) and like is None):
        v = np.asarray(v)
    elif isinstance(v, int):
        v = np.asarray(v, like)
    dtype = np.dtype(getattr(v, "dtype", None) or np.asarray(v).dtype)
    if dtype.kind not in "iub":
        raise TypeError(f"pynn.ops.{name}: expected an integer input, got dtype {dtype}")
    return v, dtype


def _integer_call(name, kernel_op, numpy_fn, x, y=None):
    b = backend.current()
    a, a_dtype = _integer_operand(name, x)
    if y is None:
        operands, dtypes = [a], [a_dtype]
    else:
        c, c_dtype = _integer_operand(name, y, like=a_dtype)
        if isinstance(value(x), int) and not isinstance(value(x), bool):
            a, a_dtype = _integer_operand(name, np.asarray(value(x), c_dtype))
        operands, dtypes = [a, c], [a_dtype, c_dtype]
    if b.NAME == "cpu":
        arrays = [np.asarray(v) for v in operands]
        dtype = np.result_type(*arrays)
        if dtype not in KERNEL_INTEGERS:  # bool, 8/16-bit and unsigned ints: NumPy's
            return Tensor(np.asarray(numpy_fn(*arrays)))
        arrays = [v.astype(dtype, copy=False) for v in arrays]
    else:  # the device's integers are int32: host ints upload, device floats are refused
        arrays = [b.asarray(np.asarray(v), np.int32) if isinstance(v, (np.ndarray, np.generic))
                  else v for v in operands]
    if y is None:
        return Tensor(b.integer_unary(arrays[0], kernel_op))
    return Tensor(b.integer_binary(arrays[0], arrays[1], kernel_op))


def _integer_binary(name, kernel_op, numpy_fn, shift=False):
    def f(x, y):
        if shift:
            for v in (x, y):
                if _integer_operand(name, v)[1].kind == "b":
                    raise TypeError(f"pynn.ops.{name}: expected integer inputs, got bool")
        return _integer_call(name, kernel_op, numpy_fn, x, y)

    f.__name__ = name
    f.__doc__ = (f"keras.ops.{name}: NumPy's on integers (the integer family's "
                 f"{kernel_op!r} on both backends), floats refused.")
    return op(f)


def _integer_unary(name):
    def f(x):
        return _integer_call(name, "invert", np.invert, x)

    f.__name__ = name
    f.__doc__ = f"keras.ops.{name}: ~x on integers (bool: logical not, as NumPy's)."
    return op(f)


bitwise_and = _integer_binary("bitwise_and", "bitwise_and", np.bitwise_and)
bitwise_or = _integer_binary("bitwise_or", "bitwise_or", np.bitwise_or)
bitwise_xor = _integer_binary("bitwise_xor", "bitwise_xor", np.bitwise_xor)
bitwise_not = _integer_unary("bitwise_not")
bitwise_invert = _integer_unary("bitwise_invert")
left_shift = _integer_binary("left_shift", "left_shift", np.left_shift, shift=True)
right_shift = _integer_binary("right_shift", "right_shift", np.right_shift, shift=True)
bitwise_left_shift = _integer_binary("bitwise_left_shift", "left_shift", np.left_shift,
                                     shift=True)
bitwise_right_shift = _integer_binary("bitwise_right_shift", "right_shift", np.right_shift,
                                      shift=True)
gcd = _integer_binary("gcd", "gcd", np.gcd, shift=True)
lcm = _integer_binary("lcm", "lcm", np.lcm, shift=True)


# -- elementwise ----------------------------------------------------------------------------
i0 = npx._special("i0", lambda b, dy, x, y: b.elementwise_binary(
    dy, b.elementwise_unary(x, "i1"), "multiply"))
i0.__doc__ = ("keras.ops.i0: the modified Bessel function of order 0 (the elementwise "
              "family's code); its gradient is i1 (code i1).")


@op
def sinc(x):
    """keras.ops.sinc: sin(pi x) / (pi x), 1 at 0 (the division guarded so that its
    gradient is 0, not NaN, there)."""
    x = _floating("sinc", x)
    zero = npo.equal(x, 0)
    scaled = npo.multiply(npo.where(zero, 1.0, x), math.pi)
    return npo.where(zero, 1.0, npo.divide(npo.sin(scaled), scaled))


@op
def fabs(x):
    return npo.abs(_floating("fabs", x))


@op
def deg2rad(x):
    return npo.multiply(_floating("deg2rad", x), math.pi / 180.0)


@op
def rad2deg(x):
    return npo.multiply(_floating("rad2deg", x), 180.0 / math.pi)


@op
def fmax(x1, x2):
    """keras.ops.fmax: the larger, a NaN operand ignored (NaN only where both are)."""
    return npo.where(npo.isnan(x2), x1, npo.where(npo.isnan(x1), x2, npo.maximum(x1, x2)))


@op
def fmin(x1, x2):
    return npo.where(npo.isnan(x2), x1, npo.where(npo.isnan(x1), x2, npo.minimum(x1, x2)))


@op
def heaviside(x1, x2):
    """keras.ops.heaviside: 0 below 0, x2 at 0, 1 above (NaN stays NaN); floatx for
    integer inputs."""
    x1 = _floating("heaviside", x1)
    step = npo.where(npo.greater(x1, 0), 1.0, npo.where(npo.equal(x1, 0), x2, 0.0))
    step = npo.where(npo.isnan(x1), np.nan, step)
    return npo.cast(step, _dtype(x1)) if _dtype(step) != _dtype(x1) else step


@op
def signbit(x):
    """keras.ops.signbit: whether the sign bit is set (-0.0 included)."""
    if backend.current().NAME == "cpu":
        return Tensor(np.signbit(np.asarray(value(x))))
    # on the device: negative, or a zero whose reciprocal is -inf
    with np.errstate(divide="ignore"):
        return npo.logical_or(npo.less(x, 0), npo.logical_and(
            npo.equal(x, 0), npo.less(npo.reciprocal(x), 0)))


@op
def ldexp(x1, x2):
    """keras.ops.ldexp: x1 * 2^x2 for integer x2 (exact: powers of two)."""
    exponent = np.asarray(value(x2)) if not hasattr(value(x2), "get") else value(x2).get()
    if np.asarray(exponent).dtype.kind not in "iu":
        raise TypeError(f"pynn.ops.ldexp: x2 must be integers, got dtype "
                        f"{np.asarray(exponent).dtype}")
    x1 = _floating("ldexp", x1)
    return npo.multiply(x1, np.ldexp(np.ones((), _dtype(x1)), exponent).astype(_dtype(x1)))


@op
def nextafter(x1, x2):
    """keras.ops.nextafter: the next float of x1's dtype after x1 toward x2 (the elementwise
    family's code, float32's own step on both backends); no gradient."""
    b = backend.current()
    a = npx._operand(b, _floating("nextafter", x1))
    toward = value(_floating("nextafter", x2))
    if b.NAME == "cpu":
        toward = np.asarray(toward, a.dtype)
    else:
        from pynn.ops import device
        toward = device._device(b, toward)
    return Tensor(b.elementwise_binary(a, toward, "nextafter"))


@op
def logaddexp2(x1, x2):
    """log2(2^x1 + 2^x2), through logaddexp's stable form."""
    return npo.multiply(npx.logaddexp(npo.multiply(x1, LN2), npo.multiply(x2, LN2)),
                        1.0 / LN2)


@op
def isneginf(x):
    return npo.logical_and(npx.isinf(x), npo.less(x, 0))


@op
def isposinf(x):
    return npo.logical_and(npx.isinf(x), npo.greater(x, 0))


@op
def divide_no_nan(x1, x2):
    """keras.ops.divide_no_nan: x1 / x2, 0 where x2 is 0 (its gradients 0 there too)."""
    zero = npo.equal(x2, 0)
    return npo.where(zero, 0.0, npo.divide(x1, npo.where(zero, 1.0, x2)))


@op
def saturate_cast(x, dtype):
    """keras.ops.saturate_cast: clipped to the target dtype's range, then cast."""
    dtype = np.dtype(dtype)
    info = np.iinfo(dtype) if dtype.kind in "iu" else (np.finfo(dtype) if dtype.kind == "f"
                                                       else None)
    if info is None:
        return npo.cast(x, dtype)
    source = _dtype(x)
    b = backend.current()
    if b.NAME != "cpu" and dtype.name not in ("float32", "int32"):
        raise TypeError(f"pynn.ops.saturate_cast: the {b.NAME} backend holds float32 and "
                        f"int32 only, got dtype {dtype}")
    if source.kind == "f" and dtype.kind in "iu":
        # the float just inside the integer range (int32's max is not a float32)
        top = source.type(info.max)
        if float(top) > info.max:  # Python's exact comparison, not NumPy's in float
            top = np.nextafter(top, source.type(0))
        return npo.cast(npo.clip(x, float(info.min), float(top)), dtype)
    if source.kind in "iu" and dtype.kind in "iu":
        cpu_only("saturate_cast")
        return Tensor(np.clip(np.asarray(value(x)), builtins.max(info.min, np.iinfo(
            source).min), builtins.min(info.max, np.iinfo(source).max)).astype(dtype))
    if source.kind == "f" and dtype.kind == "f" and np.finfo(dtype).max < np.finfo(
            source).max:
        return npo.cast(npo.clip(x, float(info.min), float(info.max)), dtype)
    return npo.cast(x, dtype)


# -- complex views of real inputs ---------------------------------------------------------
def _real_input(name, x):
    if _dtype(x).kind == "c":
        raise TypeError(f"pynn.ops.{name}: pynn has no complex dtype, got a complex input")
    return x


@op
def real(x):
    """keras.ops.real: a real input itself."""
    return npo.convert_to_tensor(_real_input("real", x))


@op
def imag(x):
    """keras.ops.imag: zeros for a real input."""
    return npo.multiply(npo.stop_gradient(_real_input("imag", x)), 0)


@op
def conj(x):
    return npo.convert_to_tensor(_real_input("conj", x))


@op
def conjugate(x):
    return npo.convert_to_tensor(_real_input("conjugate", x))


@op
def angle(x):
    """keras.ops.angle of a real input: pi where it is negative (or -0.0), else 0."""
    x = _floating("angle", _real_input("angle", x))
    return npo.stop_gradient(npo.arctan2(npo.zeros(_shape(x), _dtype(x)), x))


@op
def isreal(x):
    """keras.ops.isreal: True everywhere for a real input."""
    x = npo.stop_gradient(_real_input("isreal", x))
    return npo.logical_or(npo.isnan(x), npo.logical_not(npo.isnan(x)))


def polar(abs_, angle):
    """keras.ops.polar: refused; its result is complex and pynn has no complex dtype."""
    raise NotImplementedError("pynn.ops.polar: the result is complex and pynn has no complex "
                              "dtype")


# -- constructors -------------------------------------------------------------------------
def _sequence_args(name, num):
    if isinstance(num, bool) or int(num) < 0:
        raise ValueError(f"pynn.ops.{name}: num must be >= 0, got {num!r}")
    return int(num)


@op
def logspace(start, stop, num=50, endpoint=True, base=10, dtype=None, axis=0):
    values = np.logspace(np.asarray(value(start), np.float64), np.asarray(value(stop),
                         np.float64), _sequence_args("logspace", num), endpoint=endpoint,
                         base=base, axis=axis)
    return npx._constant(values, npx._float_dtype(dtype))


@op
def geomspace(start, stop, num=50, endpoint=True, dtype=None, axis=0):
    s, e = np.asarray(value(start), np.float64), np.asarray(value(stop), np.float64)
    if np.any(s == 0) or np.any(e == 0):
        raise ValueError("pynn.ops.geomspace: start and stop must not be 0")
    values = np.geomspace(s, e, _sequence_args("geomspace", num), endpoint=endpoint,
                          axis=axis)
    return npx._constant(values, npx._float_dtype(dtype))


def _window(name, x, make):
    m = np.asarray(value(x))
    if m.ndim or m.dtype.kind not in "iu":
        raise ValueError(f"pynn.ops.{name}: expected the window length as an int, got "
                         f"{x!r}")
    return npx._constant(make(int(m)), _config.floatx())


@op
def bartlett(x):
    return _window("bartlett", x, np.bartlett)


@op
def blackman(x):
    return _window("blackman", x, np.blackman)


@op
def hamming(x):
    return _window("hamming", x, np.hamming)


@op
def hanning(x):
    return _window("hanning", x, np.hanning)


@op
def kaiser(x, beta):
    return _window("kaiser", x, lambda m: np.kaiser(m, float(beta)))


__all__ = sorted(name for name, fn in dict(globals()).items()
                 if (hasattr(fn, "raw") or name in ("unique", "nonzero", "polar"))
                 and not name.startswith("_"))
