"""Argument checks shared by the native wrappers, run before any ``nogil`` kernel.

Every message names the op, what was expected and what came, so a bad call from a layer or a
user is a ValueError/TypeError and never an out-of-bounds read.
"""

import math

import numpy as np

FLOAT_DTYPES = (np.float32, np.float64)


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
    arr = np.asarray(a)
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(
            arr == np.round(arr)
        ):
            arr = arr.astype(np.int64)
        else:
            raise TypeError(f"{op}: '{name}' must hold integers, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{op}: '{name}' must have {ndim} dimensions, got shape {arr.shape}")
    return np.asarray(arr, dtype=np.int32, order="C")


def check_shape(op, name, arr, expected):
    """``expected`` is a tuple whose None entries match anything."""
    shape = tuple(arr.shape)
    if len(shape) != len(expected) or any(
        e is not None and e != s for e, s in zip(expected, shape)
    ):
        want = "(" + ", ".join("?" if e is None else str(e) for e in expected) + ")"
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
    from pynn.backend.api import ACTIVATIONS

    name = "linear" if activation is None else str(activation).lower()
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
    return a


def float_array(op, name, a, dtype=None):
    """as_float_array, keeping a 0-d input 0-d (np.ascontiguousarray makes it 1-d)."""
    shape = np.shape(a) if a is not None else None
    return as_float_array(op, name, a, dtype=dtype).reshape(shape)


def activation_backward_operands(op, dy, x, y, activation, alpha):
    """The checks of an activation's backward -> (name, alpha, dy, x, y); x (the
    pre-activation) and y (the output) come back in dy's dtype and shape, either may be None
    where the activation does not read it."""
    from pynn.backend.api import ACTIVATIONS_NEEDING_INPUT

    name = activation_name(op, activation)
    a = check_alpha(op, name, alpha)
    dy = float_array(op, "dy", dy)
    needs_x = name in ACTIVATIONS_NEEDING_INPUT
    if x is None and needs_x:
        raise ValueError(f"{op}: '{name}' needs the pre-activation 'x', got None")
    if y is None and not needs_x:
        raise ValueError(f"{op}: 'y' (the forward output) is required for '{name}', got None")
    if x is not None:
        x = float_array(op, "x", x, dtype=dy.dtype)
        if x.shape != dy.shape:
            raise ValueError(f"{op}: 'x' must have the shape of dy {dy.shape}, got {x.shape}")
    if y is not None:
        y = float_array(op, "y", y, dtype=dy.dtype)
        if y.shape != dy.shape:
            raise ValueError(f"{op}: 'y' must have the shape of dy {dy.shape}, got {y.shape}")
    if name == "softmax" and dy.ndim < 1:
        raise ValueError(f"{op}: softmax needs at least 1 dimension, got shape {dy.shape}")
    return name, a, dy, x, y
