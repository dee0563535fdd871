"""Dense (fully connected) layer kernels.

Legend: N batch, C input features, U units. x (N, C), kernel (C, U) as in Keras.
The product goes to BLAS sgemm/dgemm without the GIL (row-major through swapped operands,
see _blas.pxd); bias and activation are fused into the single pass that follows it.
Gradients do not accumulate: each op returns a fresh array.
"""
import numpy as np

from cython.parallel cimport prange
from _blas cimport gemm_rowmajor, floating
from _activation cimport ACT_PARALLEL_MIN, bias_activation_rows

from pynn.backend._validate import (
    activation_name, as_float_array, check_shape, same_dtype,
)
from pynn.backend.api import ACTIVATIONS, ACTIVATIONS_NEEDING_INPUT


def _gemm(bint trans_a, bint trans_b, const floating[:, ::1] a, const floating[:, ::1] b,
          floating[:, ::1] c, int k):
    cdef int m = c.shape[0], n = c.shape[1]
    cdef int lda = a.shape[1], ldb = b.shape[1], ldc = c.shape[1]
    if m == 0 or n == 0:
        return
    if k == 0:
        c[:, :] = 0
        return
    with nogil:
        gemm_rowmajor(trans_a, trans_b, m, n, k, <floating>1, &a[0, 0], lda,
                      &b[0, 0], ldb, <floating>0, &c[0, 0], ldc)


def _bias_act(floating[:, ::1] z, floating[:, ::1] y, bias, int act, double alpha):
    cdef const floating[::1] b
    cdef const floating* bptr = NULL
    cdef Py_ssize_t rows = z.shape[0], cols = z.shape[1]
    if rows == 0 or cols == 0:
        return
    if bias is not None:
        b = bias
        bptr = &b[0]
    with nogil:
        bias_activation_rows(&z[0, 0], &y[0, 0], bptr, rows, cols, act, <floating>alpha)


def dense_forward(x, kernel, bias, activation="linear", alpha=0.0):
    """y = act(x @ kernel + bias) -> (y, z); z is the pre-activation when the activation
    needs it for backward (gelu), else None."""
    op = "dense_forward"
    act_name = activation_name(op, activation)
    x = as_float_array(op, "x", x, ndim=2)
    kernel = as_float_array(op, "kernel", kernel, ndim=2, dtype=x.dtype)
    check_shape(op, "kernel", kernel, (x.shape[1], None))
    if bias is not None:
        bias = as_float_array(op, "bias", bias, ndim=1, dtype=x.dtype)
        check_shape(op, "bias", bias, (kernel.shape[1],))
    n, units = x.shape[0], kernel.shape[1]
    z = np.empty((n, units), dtype=x.dtype)
    _gemm(False, False, x, kernel, z, x.shape[1])
    act = ACTIVATIONS.index(act_name)
    keep_z = act_name in ACTIVATIONS_NEEDING_INPUT
    y = np.empty_like(z) if keep_z else z
    _bias_act(z, y, bias, act, float(alpha))
    return y, (z if keep_z else None)


def dense_backward_input(dz, kernel):
    """dx = dz @ kernel.T, shape (N, C)."""
    op = "dense_backward_input"
    dz = as_float_array(op, "dz", dz, ndim=2)
    kernel = as_float_array(op, "kernel", kernel, ndim=2, dtype=dz.dtype)
    check_shape(op, "kernel", kernel, (None, dz.shape[1]))
    dx = np.empty((dz.shape[0], kernel.shape[0]), dtype=dz.dtype)
    _gemm(False, True, dz, kernel, dx, dz.shape[1])
    return dx


def dense_backward_weight(x, dz):
    """dkernel = x.T @ dz, shape (C, U)."""
    op = "dense_backward_weight"
    x = as_float_array(op, "x", x, ndim=2)
    dz = as_float_array(op, "dz", dz, ndim=2, dtype=x.dtype)
    check_shape(op, "dz", dz, (x.shape[0], None))
    dw = np.empty((x.shape[1], dz.shape[1]), dtype=x.dtype)
    _gemm(True, False, x, dz, dw, x.shape[0])
    return dw


def _column_sums(const floating[:, ::1] a, floating[::1] out):
    # Each thread owns a block of columns, so the sum order is fixed: bit-reproducible for any
    # thread count.
    cdef Py_ssize_t rows = a.shape[0], cols = a.shape[1], r, j, j0, j1, blk
    cdef Py_ssize_t block = 64
    cdef Py_ssize_t nblk = (cols + block - 1) // block
    cdef double acc
    with nogil:
        for blk in prange(nblk, schedule="static",
                          use_threads_if=rows * cols >= ACT_PARALLEL_MIN):
            j0 = blk * block
            j1 = j0 + block
            if j1 > cols:
                j1 = cols
            for j in range(j0, j1):
                out[j] = 0
            for r in range(rows):
                for j in range(j0, j1):
                    out[j] += a[r, j]


def bias_backward(dz):
    """Sum of dz over every axis but the last."""
    op = "bias_backward"
    dz = as_float_array(op, "dz", dz)
    if dz.ndim < 1:
        raise ValueError(f"{op}: 'dz' must have at least 1 dimension, got shape {dz.shape}")
    cols = dz.shape[dz.ndim - 1]
    flat = dz.reshape(-1, cols) if cols else dz.reshape(0, 0)
    out = np.zeros(cols, dtype=dz.dtype)
    if flat.shape[0] and cols:
        _column_sums(flat, out)
    return out
