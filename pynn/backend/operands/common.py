"""Operand checks shared by both backends, run before any kernel.

``pynn.backend.operands.<family>`` holds one function per op of that family, named as the
op, that checks the op's arguments and returns them in the form its kernels take. The CPU
op (``native/<family>.pyx``) and the OpenCL op (``pynn/backend/opencl/<family>.py``) both
call it, each passing its array policy (``HOST`` here, ``opencl.arrays.DEVICE``): the policy
says how an array operand is taken (host arrays converted; device arrays checked, never
uploaded behind the caller's back), everything else (shapes, names, ranges, geometry) is
decided here once.

Every message names the op, what was expected and what came, so a bad call from a layer or a
user is a ValueError/TypeError and never an out-of-bounds read.
"""

import math
import operator

import numpy as np

from pynn.backend.api import ACTIVATION_ALIASES, ACTIVATIONS

FLOAT_DTYPES = (np.float32, np.float64)
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def as_float_array(op, name, a, ndim=None, dtype=None):
    """Return ``a`` as a C-contiguous float32/float64 array (copying only when needed).

    ``dtype`` pins the dtype (other float inputs are converted to it); without it float32 and
    float64 pass through and anything else numeric becomes float32.
    """
    if a is None:
        raise ValueError(f"{op}: '{name}' is required, got None")
    # The layers' own calls: already a C-contiguous float array of the right rank. Returning
    # it before the dtype inspection saves ~30 calls x 2 us per MLP training step.
    if (type(a) is np.ndarray and a.dtype in FLOAT_DTYPES and (dtype is None or a.dtype == dtype)
            and (ndim is None or a.ndim == ndim) and a.flags.c_contiguous):
        return a
    arr = np.asarray(a)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{op}: '{name}' must be a numeric array, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{op}: '{name}' must be real, got dtype {arr.dtype} (the imaginary "
                        f"part would be dropped)")
    if dtype is not None:
        target = np.dtype(dtype)
    elif arr.dtype in FLOAT_DTYPES:
        target = arr.dtype
    else:
        target = np.dtype(np.float32)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{op}: '{name}' must have {ndim} dimensions, got shape {arr.shape}")
    # asarray(order="C") rather than ascontiguousarray, which turns 0-d arrays into 1-d.
    return np.asarray(arr, dtype=target, order="C")


def as_int_array(op, name, a, ndim=None):
    """C-contiguous int32 from integer data (or floats holding whole numbers). Values are
    range-checked before narrowing: 2**32 + 1 is an error, never a wrapped 1."""
    arr = np.asarray(a)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.int32)
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(
            arr == np.round(arr)
        ):
            pass
        else:
            raise TypeError(f"{op}: '{name}' must hold integers, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{op}: '{name}' must have {ndim} dimensions, got shape {arr.shape}")
    if arr.size and arr.dtype != np.int32:
        lo, hi = arr.min(), arr.max()
        if lo < INT32_MIN or hi > INT32_MAX:
            bad = lo if lo < INT32_MIN else hi
            raise ValueError(f"{op}: '{name}' holds {bad.item()!r}, outside the int32 range "
                             f"[{INT32_MIN}, {INT32_MAX}]")
    return np.asarray(arr, dtype=np.int32, order="C")


def check_shape(op, name, arr, expected):
    """``expected`` is a tuple whose None entries match anything."""
    shape = tuple(arr.shape)
    if len(shape) == len(expected):
        # A plain loop: this runs for every operand of every op call.
        for e, s in zip(expected, shape):
            if e is not None and e != s:
                break
        else:
            return
    dims = ["?" if e is None else str(e) for e in expected]
    want = "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"
    raise ValueError(f"{op}: '{name}' must have shape {want}, got {shape}")


def same_dtype(op, *named):
    """All (name, array) pairs share one dtype."""
    dtypes = {a.dtype for _, a in named if a is not None}
    if len(dtypes) > 1:
        desc = ", ".join(f"{n}={a.dtype}" for n, a in named if a is not None)
        raise TypeError(f"{op}: arrays must share one float dtype, got {desc}")


def pair(op, name, value):
    if isinstance(value, int):
        value = (value, value)
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{op}: '{name}' must be an int or a pair of ints, got {value!r}")
    if a < 1 or b < 1:
        raise ValueError(f"{op}: '{name}' must be positive, got {value!r}")
    if a > INT32_MAX or b > INT32_MAX:
        raise ValueError(f"{op}: '{name}' must be at most {INT32_MAX} (a C int), got {value!r}")
    return a, b


def padding_mode(op, padding):
    p = str(padding).lower()
    if p not in ("valid", "same"):
        raise ValueError(f"{op}: padding must be 'valid' or 'same', got {padding!r}")
    return p


def conv_output_size(n, k, stride, dilation, padding):
    """Keras's output length and leading pad for one spatial axis (pad_before, out)."""
    k_eff = (k - 1) * dilation + 1
    if padding == "same":
        out = -(-n // stride)
        total = max((out - 1) * stride + k_eff - n, 0)
        return total // 2, out
    out = (n - k_eff) // stride + 1 if n >= k_eff else 0
    return 0, out


def conv_geometry(op, input_shape, kernel_shape, strides, padding, dilation_rate):
    """Checked Conv2D geometry shared by both backends: sizes, strides, dilation, the leading
    pads (PT, PL) and the output size (HO, WO), Keras's 'same'/'valid' rules."""
    n, h, w, c = input_shape
    kh, kw, kc, f = kernel_shape
    if kc != c:
        raise ValueError(f"{op}: kernel has {kc} input channels but the input has {c} "
                         f"(input shape {tuple(input_shape)}, kernel shape {tuple(kernel_shape)})")
    if kh < 1 or kw < 1:
        raise ValueError(f"{op}: kernel spatial size must be >= 1, got {tuple(kernel_shape)}")
    sh, sw = pair(op, "strides", strides)
    dh, dw = pair(op, "dilation_rate", dilation_rate)
    pad = padding_mode(op, padding)
    pt, ho = conv_output_size(h, kh, sh, dh, pad)
    pl, wo = conv_output_size(w, kw, sw, dw, pad)
    return dict(N=n, H=h, W=w, C=c, KH=kh, KW=kw, F=f, SH=sh, SW=sw, DH=dh, DW=dw,
                PT=pt, PL=pl, HO=ho, WO=wo)


def huber_delta(op, param):
    """Huber's delta from the loss op's ``param`` (None: Keras's default 1.0)."""
    if param is None:
        return 1.0
    try:
        delta = float(param)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: huber's delta ('param') must be a number, got {param!r}") from None
    if not (math.isfinite(delta) and delta > 0):
        raise ValueError(f"{op}: huber's delta ('param') must be finite and > 0, got {param!r}")
    return delta


def activation_name(op, activation):
    name = "linear" if activation is None else str(activation).lower()
    name = ACTIVATION_ALIASES.get(name, name)
    if name not in ACTIVATIONS:
        raise ValueError(f"{op}: unknown activation {activation!r}; expected one of {ACTIVATIONS}")
    return name


def check_alpha(op, name, alpha):
    """The activation parameter as a finite float (None: 0)."""
    if alpha is None:
        alpha = 0.0
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: 'alpha' must be a number, got {alpha!r}") from None
    if not math.isfinite(a):
        raise ValueError(f"{op}: 'alpha' must be finite, got {alpha!r}")
    # The backward pass reads the branch from the sign of y, which is only the sign of x when
    # the negative branch stays non-positive (Keras's LeakyReLU also rejects a negative slope).
    if name in ("leaky_relu", "elu") and a < 0:
        raise ValueError(f"{op}: {name} needs alpha >= 0, got {a}")
    # -- Keras 3's remaining activations: celu's backward reads exp(x / alpha) from y, which
    # needs alpha > 0 (torch refuses 0); the shrinks read their branch from y != 0, which is
    # |x| > threshold only for a threshold >= 0; squareplus's sqrt(x^2 + b) needs b >= 0.
    if name == "celu" and not a > 0:
        raise ValueError(f"{op}: celu needs alpha > 0 (Keras's default 1.0), got {a}")
    if name in ("hard_shrink", "soft_shrink", "squareplus") and a < 0:
        what = "b" if name == "squareplus" else "threshold"
        raise ValueError(f"{op}: {name} needs its {what} (alpha) >= 0, got {a}")
    return a


def float_array(op, name, a, dtype=None):
    """as_float_array, keeping a 0-d input 0-d (np.ascontiguousarray makes it 1-d)."""
    shape = np.shape(a) if a is not None else None
    return as_float_array(op, name, a, dtype=dtype).reshape(shape)


def shape4(op, name, shape):
    """A 4-int shape argument (an op's ``input_shape`` / ``kernel_shape``)."""
    try:
        dims = tuple(operator.index(d) for d in shape)
    except TypeError:
        raise ValueError(f"{op}: '{name}' must be a tuple of 4 ints, got {shape!r}") from None
    if len(dims) != 4 or min(dims) < 0:
        raise ValueError(f"{op}: '{name}' must be 4 non-negative ints, got {shape!r}")
    return dims


def same_shape(op, name, a, shape):
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{op}: '{name}' must have the shape {tuple(shape)}, got "
                         f"{tuple(a.shape)}")


def number(op, name, value, lo=None, hi=None, lo_open=False, hi_open=False, allow_nan=False):
    """A real in [lo, hi] (open ends where asked), finite unless ``allow_nan`` (which lets
    NaN and inf through: a non-finite norm poisons a step, as in Keras)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: '{name}' must be a real number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: '{name}' must be a real number, got {value!r}") from None
    if math.isnan(x):
        if allow_nan:
            return x
        raise ValueError(f"{op}: '{name}' must not be NaN")
    if math.isinf(x) and not allow_nan:
        raise ValueError(f"{op}: '{name}' must be finite, got {x}")
    if ((lo is not None and (x < lo or (lo_open and x == lo)))
            or (hi is not None and (x > hi or (hi_open and x == hi)))):
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ValueError(f"{op}: '{name}' must be in {lb}{lo if lo is not None else '-inf'}, "
                         f"{hi if hi is not None else 'inf'}{rb}, got {x}")
    return x


def uint64(op, name, value):
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: '{name}' must be an int, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{op}: '{name}' must be an int, got {value!r}") from None
    if not 0 <= v < 2**64:
        raise ValueError(f"{op}: '{name}' must be in [0, 2**64), got {v}")
    return v


def flag(op, name, value):
    if not isinstance(value, (bool, np.bool_, int, np.integer)):
        raise TypeError(f"{op}: '{name}' must be a bool, got {value!r}")
    return bool(value)


# -- array policies -------------------------------------------------------------------------


class HostArrays:
    """The CPU backend's operands: anything NumPy can read. Read-only operands are converted
    (float32 and float64 pass through, other numbers become float32, ``like`` pins the dtype);
    in-place operands must already be writable C-contiguous float ndarrays."""

    name = "cpu"
    max_elements = None  # the kernels index with Py_ssize_t

    def float_input(self, op, name, a, ndim=None, like=None):
        # The layers' own operands are already right: answer before any other work.
        if (type(a) is np.ndarray and a.flags.c_contiguous and (ndim is None or a.ndim == ndim)
                and (a.dtype == like.dtype if like is not None else a.dtype in FLOAT_DTYPES)):
            return a
        return as_float_array(op, name, a, ndim=ndim, dtype=None if like is None else like.dtype)

    def int_input(self, op, name, a, ndim=None):
        if a is None:
            raise ValueError(f"{op}: '{name}' is required, got None")
        return as_int_array(op, name, a, ndim=ndim)

    def mask_input(self, op, name, a):
        if a is None:
            raise ValueError(f"{op}: '{name}' is required, got None")
        mask = np.asarray(a)
        if mask.dtype == np.bool_:
            mask = mask.view(np.uint8)
        if mask.dtype != np.uint8:
            raise TypeError(f"{op}: '{name}' must be uint8 (or bool), got dtype {mask.dtype}")
        return np.ascontiguousarray(mask)

    def inplace(self, op, name, a, like=None):
        if a is None:
            raise ValueError(f"{op}: '{name}' is required, got None")
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{op}: '{name}' must be a numpy.ndarray (updated in place), "
                            f"got {type(a).__name__}")
        if a.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{op}: '{name}' must be float32 or float64, got {a.dtype}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{op}: '{name}' must be C-contiguous (it is updated in place)")
        if not a.flags.writeable:
            raise ValueError(f"{op}: '{name}' must be writable (it is updated in place)")
        return a

    def shares_memory(self, a, b):
        return bool(a.size and b.size and np.may_share_memory(a, b))

    def label_input(self, op, name, a):
        """Class ids as int32; floats must hold whole numbers."""
        arr = a if type(a) is np.ndarray else np.asarray(a)
        if arr.dtype.kind in "iu":   # the common case: no dtype machinery on a step's path
            return arr
        if arr.dtype == np.bool_:
            arr = arr.astype(np.int32)
        if not np.issubdtype(arr.dtype, np.integer):
            if not np.issubdtype(arr.dtype, np.floating):
                raise TypeError(f"{op}: sparse '{name}' must hold integer class ids, got "
                                f"dtype {arr.dtype}")
            whole = np.isfinite(arr) & (arr == np.round(arr))
            if not np.all(whole):
                bad = arr.reshape(-1)[np.argmin(whole.reshape(-1))]
                raise ValueError(f"{op}: sparse '{name}' must hold integer class ids, got "
                                 f"{bad}")
        return arr

    def check_labels(self, op, labels, k):
        """Checked on the host before narrowing to int32: the kernels index rows with them."""
        if labels.size and labels_out_of_range(labels, k):
            bad_mask = (labels < 0) | (labels >= k)
            bad = labels[np.argmax(bad_mask)]
            raise ValueError(f"{op}: label {bad.item()} out of range: class ids must lie "
                             f"in [0, {k}) for y_pred with K={k} classes")
        if labels.dtype == np.intc and labels.flags.c_contiguous:
            return labels
        return np.ascontiguousarray(labels, dtype=np.intc)


def labels_out_of_range(labels, k):
    """Whether any of the integer `labels` lies outside [0, k), by one reduction: seen as
    unsigned, a negative id is at least 2**(bits - 1), above every k. Each NumPy call after
    a training step's large products runs from a cold cache (about 7 us on an Intel Xeon),
    so a step's checks make as few as they can."""
    if labels.dtype.kind == "u":
        return int(labels.max()) >= k
    if labels.dtype.kind == "i":
        return int(labels.view(f"u{labels.dtype.itemsize}").max()) >= k
    return bool(np.any((labels < 0) | (labels >= k)))   # booleans and the rest


HOST = HostArrays()


def check_count(arrays, op, name, n):
    """Sizes a backend cannot index (OpenCL's int32) are refused before any allocation."""
    limit = arrays.max_elements
    if limit is not None and n > limit:
        raise ValueError(f"{op}: '{name}' has {n} elements; the {arrays.name} kernels index "
                         f"with int32 (at most {limit})")


def slot(arrays, op, name, a, like):
    """An in-place operand shaped and typed like ``like`` (an optimizer slot, a gradient
    buffer), sharing no memory with it; None passes through."""
    if a is None:
        return None
    if (type(a) is np.ndarray and type(like) is np.ndarray and a.dtype == like.dtype
            and a.shape == like.shape and a.flags.c_contiguous and a.flags.writeable):
        # The optimizer's own slots: one pass of cheap checks (this runs per variable per step).
        if arrays.shares_memory(a, like):
            raise ValueError(f"{op}: '{name}' must not share memory with 'w'")
        return a
    arrays.inplace(op, name, a)
    if a.dtype != like.dtype:
        raise TypeError(f"{op}: '{name}' must have the dtype of 'w' ({like.dtype}), got "
                        f"{a.dtype}")
    if a.shape != like.shape:
        raise ValueError(f"{op}: '{name}' must have the shape of 'w' {like.shape}, got "
                         f"{a.shape}")
    if arrays.shares_memory(a, like):
        raise ValueError(f"{op}: '{name}' must not share memory with 'w'")
    return a


def distinct(arrays, op, **named):
    """No two of the named in-place operands share memory."""
    items = [(n, a) for n, a in named.items() if a is not None and a.size]
    for i, (ni, ai) in enumerate(items):
        for nj, aj in items[i + 1:]:
            if arrays.shares_memory(ai, aj):
                raise ValueError(f"{op}: '{ni}' and '{nj}' must not share memory")


def host_array(op, x, dtype):
    """Host data as a C-contiguous array of ``dtype`` (a backend's ``asarray``): complex data
    and integers that ``dtype`` cannot hold are errors, never silently cut."""
    if type(x) is np.ndarray and x.dtype is dtype and x.flags.c_contiguous:
        return x   # a step's own arrays (uploaded as they are): no NumPy calls
    arr = np.asarray(x)
    dtype = np.dtype(dtype)
    if np.issubdtype(arr.dtype, np.complexfloating) and dtype.kind != "c":
        raise TypeError(f"{op}: complex data ({arr.dtype}) cannot become {dtype}; the "
                        f"imaginary part would be dropped")
    if dtype.kind in "iu" and arr.size and arr.dtype != dtype and arr.dtype.kind in "iuf":
        info = np.iinfo(dtype)
        lo, hi = arr.min(), arr.max()
        if not (lo >= info.min and hi <= info.max):
            bad = lo if not lo >= info.min else hi
            raise ValueError(f"{op}: value {bad.item()!r} does not fit {dtype} "
                             f"[{info.min}, {info.max}]")
    return np.asarray(arr, dtype=dtype, order="C")
