"""Activation ops: forward and backward of every name in api.ACTIVATIONS, and the backward
fused with the bias gradient (activation_bias_backward).

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

activation_bias_backward fuses activation_backward with the bias gradient (bias_backward of
dense.pyx: the sum of dz over every axis but the last) so the layers read dy and y once and
write dz once. Work items are (row block, column block) tiles of the (rows, K) view, a tiling
fixed by the shape alone; each writes the double column sums of its tile to its own row of a
partial array, and the partials are added in row-block order: bit-identical for any thread
count. dense.pyx's column sums parallelise over column blocks only, which leaves a conv
layer's 32 or 64 filters on one thread; row blocks keep every thread busy.
"""

import numpy as np

from _activation cimport (
    ACT_PARALLEL_MIN, ACT_SOFTMAX, act_backward_vec, act_forward_vec, add_rows_double,
    floating, softmax_grad_row, softmax_row,
)

from pynn.backend.operands import activation as operands
from pynn.backend.operands.common import HOST
from pynn.backend.api import ACTIVATIONS

from cython.parallel cimport prange


# Elementwise work goes out in chunks of CHUNK elements, each run by one contiguous
# vectorized loop (act_forward_vec / act_backward_vec): per-element results, so the split
# does not change a bit.
cdef enum:
    CHUNK = 8192

# Tiling of activation_bias_backward (see the module note). A tile spans at most
# FUSED_COL_BLOCK columns (softmax: whole rows), at least FUSED_MIN_TILE elements (or one row),
# and the row blocks aim at FUSED_TILES tiles in all: enough for a team of threads, few
# enough that the partial sums stay a small fraction of dz. A tile's rows go through the
# activation and the column sums FUSED_SUB elements at a time, so the sums read dz from L1:
# on (64*32*32, 32) float32, one thread, sub-blocks of 256 or 512 elements ran as fast as
# activation_backward alone, 1024 or more about 1.5x slower (float64: 256 best).
cdef enum:
    FUSED_COL_BLOCK = 512
    FUSED_MIN_TILE = 4096
    FUSED_TILES = 64
    FUSED_SUB = 256


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


cdef void _act_bias_tile(const floating* dy, const floating* x, const floating* y,
                         floating* dz, double* acc, Py_ssize_t r0, Py_ssize_t r1,
                         Py_ssize_t j0, Py_ssize_t w, Py_ssize_t cols, int act,
                         floating alpha) noexcept nogil:
    """dz = act_grad(dy) on rows [r0, r1) x columns [j0, j0 + w) of (rows, cols) arrays, and
    acc[j] = the sum of those rows of dz[:, j0 + j] (softmax: w == cols)."""
    cdef Py_ssize_t r = r0, i, j, rr, off
    cdef Py_ssize_t step = max(1, <Py_ssize_t>FUSED_SUB // w)
    for j in range(w):
        acc[j] = 0
    # Each group of rows is summed right after it is written, while it is still in L1.
    while r < r1:
        rr = min(step, r1 - r)
        off = r * cols + j0
        if act == ACT_SOFTMAX:
            for i in range(rr):
                softmax_grad_row(dy + off + i * cols, y + off + i * cols, dz + off + i * cols,
                                 cols)
        elif w == cols:
            # Whole rows are contiguous: one vectorized call covers them all.
            act_backward_vec(dy + off, x + off, y + off, dz + off, rr * cols, act, alpha)
        else:
            for i in range(rr):
                act_backward_vec(dy + off + i * cols, x + off + i * cols, y + off + i * cols,
                                 dz + off + i * cols, w, act, alpha)
        add_rows_double(dz + off, acc, rr, w, cols)
        r += rr


def _act_bias_backward_rows(const floating[:, ::1] dy,   # IN  (rows, K)
                            const floating[:, ::1] x,    # IN  (rows, K) read by gelu only
                            const floating[:, ::1] y,    # IN  (rows, K) forward output
                            floating[:, ::1] dz,         # OUT (rows, K)
                            floating[::1] db,            # OUT (K,)
                            int act, double alpha):
    cdef Py_ssize_t rows = dy.shape[0], cols = dy.shape[1]
    cdef Py_ssize_t cbw = cols, ncb, nrb, rb_rows, t, rb, cb, j0, j
    cdef floating a = <floating>alpha
    cdef double s
    cdef double[:, ::1] partial
    if act != ACT_SOFTMAX and cols > FUSED_COL_BLOCK:
        cbw = FUSED_COL_BLOCK
    ncb = (cols + cbw - 1) // cbw
    nrb = max(1, <Py_ssize_t>FUSED_TILES // ncb)
    rb_rows = max((rows + nrb - 1) // nrb, (<Py_ssize_t>FUSED_MIN_TILE + cbw - 1) // cbw)
    nrb = (rows + rb_rows - 1) // rb_rows
    partial = np.empty((nrb, cols), dtype=np.float64)
    with nogil:
        for t in prange(nrb * ncb, schedule="static",
                        use_threads_if=rows * cols >= ACT_PARALLEL_MIN):
            rb = t // ncb
            cb = t % ncb
            j0 = cb * cbw
            _act_bias_tile(&dy[0, 0], &x[0, 0], &y[0, 0], &dz[0, 0], &partial[rb, j0],
                           rb * rb_rows, min(rows, (rb + 1) * rb_rows), j0,
                           min(cbw, cols - j0), cols, act, a)
        for j in range(cols):
            s = 0
            for rb in range(nrb):
                s = s + partial[rb, j]
            db[j] = <floating>s


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


def _rows_view(a):
    """(rows, K) view of an array whose last axis is K (softmax's axis)."""
    k = a.shape[a.ndim - 1]
    return a.reshape(-1, k) if k else a.reshape(a.size, 0)


def activation_forward(x, activation, alpha=0.0):
    """y = activation(x), same shape and dtype as x (softmax over the last axis)."""
    name, a, x = operands.activation_forward(HOST, x, activation, alpha)
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
    name, a, dy, x, y = operands.activation_backward(HOST, dy, x, y, activation, alpha)
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


def activation_bias_backward(dy, x, y, activation, alpha=0.0):
    """(dz, db): dz = activation_backward(dy, x, y, activation, alpha) and db = the sum of dz
    over every axis but the last (bias_backward(dz)), from one pass over dy and y.

    db is summed in double over fixed row blocks (see the module note): it does not depend
    on the thread count, and it can differ from bias_backward(dz), a float32 running sum, by
    that sum's rounding."""
    name, a, dy, x, y = operands.activation_bias_backward(HOST, dy, x, y, activation, alpha)
    dz = np.empty_like(dy)
    db = np.zeros(dy.shape[dy.ndim - 1], dtype=dy.dtype)
    if dy.size == 0:
        return dz, db
    # act_grad reads x only for gelu and y only for the others: the unused one may alias.
    x_rows = _rows_view(x if x is not None else y)
    y_rows = _rows_view(y if y is not None else x)
    _act_bias_backward_rows(_rows_view(dy), x_rows, y_rows, _rows_view(dz), db,
                            ACTIVATIONS.index(name), a)
    return dz, db
