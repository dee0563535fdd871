"""Sparse inference kernels for pruned layers (issue 18).

Legend: N batch, C input features, U output units, nnz the kernel's nonzeros.

A pruned Dense kernel (C, U) is stored by output unit (CSC of the kernel, i.e. CSR of its
transpose): ``indptr`` (U+1,) int32, ``indices`` (nnz,) int32 input rows, ``values`` (nnz,).
Below BATCH_COLUMNS_MIN rows, output (n, u) is a gather-dot over unit u's nonzeros (prange
over the flattened (N, U) outputs); from there on x is transposed once and unit u's output
column is an axpy over the batch per nonzero (prange over units), which vectorizes. Each output
is written by one thread in a fixed order, so results do not depend on the thread count. The
bias and the activation then run through the dense layers' shared epilogue (_activation.pxd).

Why by unit, not CSR of the kernel: at batch 1 a CSR-by-input product would scatter into y
(atomics or per-thread copies); by unit every output is an independent dot product of
length nnz/U, which at 80-95% sparsity is short enough that the gather costs less than the
dense GEMM's multiply by zeros (the crossover, measured: pynn/compression/sparse.py).
"""
import numpy as np

from cython.parallel cimport prange
from libc.stddef cimport size_t

from _activation cimport bias_activation_rows, floating
from pynn.backend.api import ACTIVATIONS
from pynn.backend.operands import sparse as operands
from pynn.backend.operands.common import HOST

# Below this many multiply-adds waking the OpenMP team costs more than the product.
# From this batch size on the columns of x.T are long enough to vectorize over the batch.
cdef enum:
    PARALLEL_MIN = 16384
    BATCH_COLUMNS_MIN = 4


cdef inline void _unit_range(const int* indptr, Py_ssize_t u, Py_ssize_t nnz,
                             Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    # Offsets outside [0, nnz] are clamped, so a bad indptr never reads past indices.
    lo[0] = min(max(<Py_ssize_t>indptr[u], 0), nnz)
    hi[0] = min(max(<Py_ssize_t>indptr[u + 1], lo[0]), nnz)


def _gather_dot(const floating[:, ::1] x,     # IN (N, C)
                const int[::1] indptr,         # IN (U+1,)
                const int[::1] indices,        # IN (nnz,)
                const floating[::1] values,    # IN (nnz,)
                floating[:, ::1] y):           # OUT (N, U)
    """Small batches: each output (n, u) is a gather-dot over unit u's nonzeros."""
    cdef Py_ssize_t n = x.shape[0], c = x.shape[1], units = y.shape[1], t, r, u, k, lo, hi
    cdef Py_ssize_t nnz = indices.shape[0]
    cdef size_t col
    cdef floating acc
    with nogil:
        for t in prange(n * units, schedule="static", use_threads_if=n * nnz >= PARALLEL_MIN):
            r = t // units
            u = t % units
            _unit_range(&indptr[0], u, nnz, &lo, &hi)
            acc = 0
            for k in range(lo, hi):
                col = <size_t>indices[k]
                if col < <size_t>c:  # an index outside [0, C) is skipped (negative wraps)
                    acc = acc + x[r, col] * values[k]
            y[r, u] = acc


def _batch_columns(const floating[:, ::1] xt,  # IN (C, N): x transposed
                   const int[::1] indptr,       # IN (U+1,)
                   const int[::1] indices,      # IN (nnz,)
                   const floating[::1] values,  # IN (nnz,)
                   floating[:, ::1] yt):        # OUT (U, N): y transposed
    """Larger batches: unit u's output column is a sum of x's columns (rows of x.T) scaled by
    its nonzeros, a vectorized axpy over the batch per nonzero; units are split over
    threads."""
    cdef Py_ssize_t c = xt.shape[0], n = xt.shape[1], units = yt.shape[0], u, k, r, lo, hi
    cdef Py_ssize_t nnz = indices.shape[0]
    cdef size_t col
    cdef floating v
    cdef floating* out
    cdef const floating* src
    with nogil:
        for u in prange(units, schedule="static", use_threads_if=n * nnz >= PARALLEL_MIN):
            out = &yt[u, 0]
            for r in range(n):
                out[r] = 0
            _unit_range(&indptr[0], u, nnz, &lo, &hi)
            for k in range(lo, hi):
                col = <size_t>indices[k]
                if col < <size_t>c:
                    v = values[k]
                    src = &xt[col, 0]
                    for r in range(n):
                        out[r] = out[r] + src[r] * v


def sparse_dense_forward(x, indptr, indices, values, bias, activation="linear", alpha=0.0):
    """y = act(x @ kernel + bias) (N, U) from the kernel's nonzeros by unit (see the module
    docstring); the inference twin of dense_forward (no pre-activation is kept). Index
    entries outside x's features, and offsets outside the nonzeros, are skipped."""
    name, alpha, x, indptr, indices, values, bias = operands.sparse_dense_forward(
        HOST, x, indptr, indices, values, bias, activation, alpha)
    units = indptr.shape[0] - 1
    n = x.shape[0]
    if n * units == 0:
        return np.empty((n, units), dtype=x.dtype)
    if n < BATCH_COLUMNS_MIN:
        y = np.empty((n, units), dtype=x.dtype)
        _gather_dot(x, indptr, indices, values, y)
    else:
        yt = np.empty((units, n), dtype=x.dtype)
        _batch_columns(np.ascontiguousarray(x.T), indptr, indices, values, yt)
        y = np.ascontiguousarray(yt.T)
    _epilogue(y, bias, ACTIVATIONS.index(name), float(alpha))
    return y


def _epilogue(floating[:, ::1] y, bias, int act, double alpha):
    cdef const floating[::1] b
    cdef const floating* bptr = NULL
    if bias is not None:
        b = bias
        bptr = &b[0]
    with nogil:
        bias_activation_rows(&y[0, 0], &y[0, 0], bptr, y.shape[0], y.shape[1], act,
                             <floating>alpha)


# -- sparse Conv2D (issue 18): a pruned Conv2D's kernel (KH, KW, C, F) by output filter, its
# tap indices t = (kh KW + kw) C + c (kernel.reshape(-1, F) by unit, as the Dense's) --------
from _openmp cimport omp_get_max_threads, omp_get_thread_num

cdef extern from "_sparse.h" nogil:
    int PYNN_SPARSE_CH
    void pynn_sparse_conv_prepare_f32(const int* indptr, const int* indices,
                                      const float* values, Py_ssize_t nnz, Py_ssize_t f,
                                      Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t c,
                                      Py_ssize_t dw, Py_ssize_t sw, Py_ssize_t q,
                                      Py_ssize_t* clean_ptr, Py_ssize_t* offsets,
                                      float* clean_values)
    void pynn_sparse_conv_prepare_f64(const int* indptr, const int* indices,
                                      const double* values, Py_ssize_t nnz, Py_ssize_t f,
                                      Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t c,
                                      Py_ssize_t dw, Py_ssize_t sw, Py_ssize_t q,
                                      Py_ssize_t* clean_ptr, Py_ssize_t* offsets,
                                      double* clean_values)
    void pynn_sparse_conv_row_f32(const float* x, float* xt, float* acc, float* y,
                                  const Py_ssize_t* ptr, const Py_ssize_t* offsets,
                                  const float* values, Py_ssize_t b, Py_ssize_t oy,
                                  Py_ssize_t h, Py_ssize_t w, Py_ssize_t c, Py_ssize_t kh,
                                  Py_ssize_t dh, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt,
                                  Py_ssize_t pl, Py_ssize_t q, Py_ssize_t wo, Py_ssize_t f)
    void pynn_sparse_conv_row_f64(const double* x, double* xt, double* acc, double* y,
                                  const Py_ssize_t* ptr, const Py_ssize_t* offsets,
                                  const double* values, Py_ssize_t b, Py_ssize_t oy,
                                  Py_ssize_t h, Py_ssize_t w, Py_ssize_t c, Py_ssize_t kh,
                                  Py_ssize_t dh, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt,
                                  Py_ssize_t pl, Py_ssize_t q, Py_ssize_t wo, Py_ssize_t f)

CONV_RUN = PYNN_SPARSE_CH  # outputs one register run covers (the scratch's over-read pad)


def _conv_rows(const floating[:, :, :, ::1] x,   # IN (N, H, W, C)
               const int[::1] indptr,             # IN (F+1,)
               const int[::1] indices,            # IN (nnz,) tap indices
               const floating[::1] values,        # IN (nnz,)
               floating[:, ::1] scratch,          # SCRATCH (threads, KH C SW Q + CH + F CH)
               Py_ssize_t[::1] clean_ptr,         # SCRATCH (F+1,)
               Py_ssize_t[::1] offsets,           # SCRATCH (nnz,)
               floating[::1] clean_values,        # SCRATCH (nnz,)
               floating[:, ::1] y,                # OUT (N HO, WO F)
               int kh, int kw, int sh, int sw, int dh, int dw, int pt, int pl, int ho,
               int wo, int q):
    cdef Py_ssize_t n = x.shape[0], h = x.shape[1], w = x.shape[2], c = x.shape[3]
    cdef Py_ssize_t f = indptr.shape[0] - 1, nnz = indices.shape[0], t
    cdef Py_ssize_t xt_size = kh * c * sw * q + PYNN_SPARSE_CH
    cdef floating* s
    cdef int* no_index = NULL
    with nogil:
        if floating is float:
            pynn_sparse_conv_prepare_f32(&indptr[0], &indices[0] if nnz else no_index,
                                         &values[0] if nnz else NULL, nnz, f, kh, kw, c, dw,
                                         sw, q, &clean_ptr[0], &offsets[0],
                                         &clean_values[0])
        else:
            pynn_sparse_conv_prepare_f64(&indptr[0], &indices[0] if nnz else no_index,
                                         &values[0] if nnz else NULL, nnz, f, kh, kw, c, dw,
                                         sw, q, &clean_ptr[0], &offsets[0],
                                         &clean_values[0])
        # one (sample, output row) per iteration, each thread in its own scratch
        for t in prange(n * ho, schedule="static",
                        use_threads_if=n * ho * wo * (nnz + kh * c) >= PARALLEL_MIN):
            s = &scratch[omp_get_thread_num(), 0]
            if floating is float:
                pynn_sparse_conv_row_f32(&x[0, 0, 0, 0], s, s + xt_size, &y[t, 0],
                                         &clean_ptr[0], &offsets[0], &clean_values[0],
                                         t // ho, t % ho, h, w, c, kh, dh, sh, sw, pt, pl, q,
                                         wo, f)
            else:
                pynn_sparse_conv_row_f64(&x[0, 0, 0, 0], s, s + xt_size, &y[t, 0],
                                         &clean_ptr[0], &offsets[0], &clean_values[0],
                                         t // ho, t % ho, h, w, c, kh, dh, sh, sw, pt, pl, q,
                                         wo, f)


def sparse_conv2d_forward(x, indptr, indices, values, bias, kernel_size, strides=(1, 1),
                          padding="valid", dilation_rate=(1, 1), activation="linear",
                          alpha=0.0):
    """y = act(conv2d(x, kernel) + bias) (N, HO, WO, F), Conv2D's geometry, from the
    (KH, KW, C, F) kernel's nonzeros by output filter: indices are taps (kh KW + kw) C + c
    (the kernel reshaped to (KH KW C, F), stored as sparse_dense_forward's). An index
    outside the kernel is skipped, offsets are clamped to the nonzeros."""
    name, alpha, x, indptr, indices, values, bias, g = operands.sparse_conv2d_forward(
        HOST, x, indptr, indices, values, bias, kernel_size, strides, padding, dilation_rate,
        activation, alpha)
    f = indptr.shape[0] - 1
    y = np.empty((g["N"], g["HO"], g["WO"], f), dtype=x.dtype)
    if not y.size:
        return y
    # the padded input columns one output row reads, by phase modulo the stride
    sw = g["SW"]
    q = -(-((g["WO"] - 1) * sw + (g["KW"] - 1) * g["DW"] + 1) // sw)
    scratch = np.empty((omp_get_max_threads(),
                        g["KH"] * g["C"] * sw * q + CONV_RUN + f * CONV_RUN), dtype=x.dtype)
    nnz = max(indices.shape[0], 1)
    flat = y.reshape(g["N"] * g["HO"], g["WO"] * f)
    _conv_rows(x, indptr, indices, values, scratch, np.empty(f + 1, np.intp),
               np.empty(nnz, np.intp), np.empty(nnz, x.dtype), flat, g["KH"], g["KW"],
               g["SH"], sw, g["DH"], g["DW"], g["PT"], g["PL"], g["HO"], g["WO"], q)
    _epilogue(y.reshape(-1, f), bias, ACTIVATIONS.index(name), float(alpha))
    return y
