"""Standalone activation op: forward and backward of every name in api.ACTIVATIONS.

Legend: any shape; softmax acts on the last axis, K = its length, rows = size / K.
The per-element math lives in _activation.pxd and is shared with the layers that fuse
bias + activation after their GEMM (dense.pyx, conv.pyx), so the fused and the standalone
paths cannot drift apart. Elementwise activations run one static prange over fixed chunks of
the flat array, one vectorizable loop per activation (serial below ACT_PARALLEL_MIN elements);
softmax runs one static prange over rows, its sums accumulated in double inside the row, so
every element is computed by the same instructions whatever the thread count.
Keras 3 semantics (keras/src/activations/activations.py, torch backend): gelu is the exact
erf form; leaky_relu's alpha is the negative slope; elu's alpha scales the negative branch;
selu uses torch's constants; derivatives at 0 follow torch (relu 0, leaky_relu/elu alpha).
Backward derives from the output y except gelu, which needs the pre-activation x.
"""
import math

import numpy as np

from _activation cimport (
    ACT_PARALLEL_MIN, ACT_SOFTMAX, act_backward_vec, act_forward_vec, floating,
    softmax_grad_row, softmax_row,
)

from pynn.backend._validate import activation_name, as_float_array
from pynn.backend.api import ACTIVATIONS, ACTIVATIONS_NEEDING_INPUT

from cython.parallel cimport prange


# Elementwise work goes out in chunks of CHUNK elements, each run by one contiguous
# vectorized loop (act_forward_vec / act_backward_vec): per-element results, so the split
# does not change a bit.
cdef enum:
    CHUNK = 8192


def _act_forward_flat(const floating[::1] x,     # IN  (n,)
                      floating[::1] y,           # OUT (n,)
                      int act, double alpha):
    cdef Py_ssize_t c, i0, n = x.shape[0], nchunk = (n + CHUNK - 1) // CHUNK
    cdef floating a = <floating>alpha
    with nogil:
        for c in prange(nchunk, schedule="static", use_threads_if=n >= ACT_PARALLEL_MIN):
            i0 = c * CHUNK
            act_forward_vec(&x[i0], &y[i0], min(<Py_ssize_t>CHUNK, n - i0), act, a)


def _act_backward_flat(const floating[::1] dy,   # IN  (n,)
                       const floating[::1] x,    # IN  (n,) pre-activation (read by gelu only)
                       const floating[::1] y,    # IN  (n,) forward output
                       floating[::1] dx,         # OUT (n,)
                       int act, double alpha):
    cdef Py_ssize_t c, i0, n = dy.shape[0], nchunk = (n + CHUNK - 1) // CHUNK
    cdef floating a = <floating>alpha
    with nogil:
        for c in prange(nchunk, schedule="static", use_threads_if=n >= ACT_PARALLEL_MIN):
            i0 = c * CHUNK
            act_backward_vec(&dy[i0], &x[i0], &y[i0], &dx[i0], min(<Py_ssize_t>CHUNK, n - i0),
                             act, a)


def _softmax_forward_rows(const floating[:, ::1] x,   # IN  (rows, K)
                          floating[:, ::1] y):        # OUT (rows, K)
    cdef Py_ssize_t r, rows = x.shape[0], k = x.shape[1]
    with nogil:
        for r in prange(rows, schedule="static", use_threads_if=rows * k >= ACT_PARALLEL_MIN):
            softmax_row(&x[r, 0], &y[r, 0], k)


def _softmax_backward_rows(const floating[:, ::1] dy,  # IN  (rows, K)
                           const floating[:, ::1] y,   # IN  (rows, K) forward output
                           floating[:, ::1] dx):       # OUT (rows, K)
    cdef Py_ssize_t r, rows = dy.shape[0], k = dy.shape[1]
    with nogil:
        for r in prange(rows, schedule="static", use_threads_if=rows * k >= ACT_PARALLEL_MIN):
            softmax_grad_row(&dy[r, 0], &y[r, 0], &dx[r, 0], k)


def _check_alpha(op, name, alpha):
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


def _float_array(op, name, a, dtype=None):
    """as_float_array, keeping a 0-d input 0-d (np.ascontiguousarray makes it 1-d)."""
    shape = np.shape(a) if a is not None else None
    return as_float_array(op, name, a, dtype=dtype).reshape(shape)


def _rows_view(a):
    """(rows, K) view of an array whose last axis is K (softmax's axis)."""
    k = a.shape[a.ndim - 1]
    return a.reshape(-1, k) if k else a.reshape(a.size, 0)


def activation_forward(x, activation, alpha=0.0):
    """y = activation(x), same shape and dtype as x (softmax over the last axis)."""
    op = "activation_forward"
    name = activation_name(op, activation)
    a = _check_alpha(op, name, alpha)
    x = _float_array(op, "x", x)
    if name == "softmax" and x.ndim < 1:
        raise ValueError(f"{op}: softmax needs at least 1 dimension, got shape {x.shape}")
    y = np.empty_like(x)
    if x.size == 0:
        return y
    act = ACTIVATIONS.index(name)
    if act == ACT_SOFTMAX:
        _softmax_forward_rows(_rows_view(x), _rows_view(y))
    else:
        _act_forward_flat(x.reshape(-1), y.reshape(-1), act, a)
    return y


def activation_backward(dy, x, y, activation, alpha=0.0):
    """dL/dx from dL/dy. ``y`` is the forward output (may be None for gelu); ``x`` the
    pre-activation (required for gelu, otherwise ignored but checked when given)."""
    op = "activation_backward"
    name = activation_name(op, activation)
    a = _check_alpha(op, name, alpha)
    dy = _float_array(op, "dy", dy)
    needs_x = name in ACTIVATIONS_NEEDING_INPUT
    if x is None and needs_x:
        raise ValueError(f"{op}: '{name}' needs the pre-activation 'x', got None")
    if y is None and not needs_x:
        raise ValueError(f"{op}: 'y' (the forward output) is required for '{name}', got None")
    if x is not None:
        x = _float_array(op, "x", x, dtype=dy.dtype)
        if x.shape != dy.shape:
            raise ValueError(f"{op}: 'x' must have the shape of dy {dy.shape}, got {x.shape}")
    if y is not None:
        y = _float_array(op, "y", y, dtype=dy.dtype)
        if y.shape != dy.shape:
            raise ValueError(f"{op}: 'y' must have the shape of dy {dy.shape}, got {y.shape}")
    if name == "softmax" and dy.ndim < 1:
        raise ValueError(f"{op}: softmax needs at least 1 dimension, got shape {dy.shape}")
    dx = np.empty_like(dy)
    if dy.size == 0:
        return dx
    act = ACTIVATIONS.index(name)
    if act == ACT_SOFTMAX:
        _softmax_backward_rows(_rows_view(dy), _rows_view(y), _rows_view(dx))
        return dx
    # act_grad reads x only for gelu and y only for the others: the unused one may alias.
    x_flat = (x if x is not None else y).reshape(-1)
    y_flat = (y if y is not None else x).reshape(-1)
    _act_backward_flat(dy.reshape(-1), x_flat, y_flat, dx.reshape(-1), act, a)
    return dx
