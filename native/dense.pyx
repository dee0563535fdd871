"""Dense (fully connected) layer kernels.

Legend: N batch, C input features, U units. x (N, C), kernel (C, U) as in Keras.
The product goes to BLAS sgemm/dgemm without the GIL (row-major through swapped operands,
see _blas.pxd). Gradients do not accumulate: each op returns a fresh array.

Threads: with an OpenBLAS whose thread count pynn can set, each op is ONE OpenMP region over
a fixed set of bands of the result (bands of 16-column panels, or of 8 rows when the result
is taller than wide or softmax needs whole rows; one band per core of the machine). Each
band is one single-threaded GEMM, followed at once by its bias and activation while it is
still in cache; OpenBLAS is held at one thread during the region (_blas_solo_enter). Handing
each GEMM to OpenBLAS's own thread pool and the epilogue to OpenMP's made the two pools wake
and wait for each other several times per layer: the 784-512-256-10 MLP training step ran
6-8% slower that way (Zen 3, 2 threads, in-process A/B), a 512 -> 256 forward up to 25%.
Without such a BLAS the product goes to BLAS's own threading, the epilogue to a second pass.
"""
import os

import numpy as np

from cython.parallel cimport prange
from _blas cimport gemm_rowmajor, floating
from _activation cimport (
    ACT_LINEAR, ACT_PARALLEL_MIN, ACT_SOFTMAX, act_forward_vec, bias_activation_rows,
    softmax_row,
)

from pynn._config import usable_cores
from pynn.backend.operands import dense as operands
from pynn.backend.operands.common import HOST
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


cdef extern from *:
    """
    #include <dlfcn.h>
    typedef void (*pynn_blas_threads_fn)(int);
    typedef int (*pynn_blas_get_threads_fn)(void);
    static pynn_blas_threads_fn pynn_blas_set_threads = NULL;
    static pynn_blas_get_threads_fn pynn_blas_get_threads = NULL;
    /* The thread setter of the OpenBLAS behind `fn` (SciPy's sgemm): dlsym on the library
       fn lives in also searches the libraries it depends on. SciPy's wheel prefixes the
       names with scipy_; a system OpenBLAS does not. */
    static int pynn_find_blas_threads(void* fn) {
        Dl_info info;
        void* lib;
        if (!dladdr(fn, &info) || info.dli_fname == NULL) return 0;
        lib = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD);
        if (lib == NULL) return 0;
        pynn_blas_set_threads = (pynn_blas_threads_fn)dlsym(lib, "scipy_openblas_set_num_threads");
        pynn_blas_get_threads = (pynn_blas_get_threads_fn)dlsym(lib, "scipy_openblas_get_num_threads");
        if (pynn_blas_set_threads == NULL || pynn_blas_get_threads == NULL) {
            pynn_blas_set_threads = (pynn_blas_threads_fn)dlsym(lib, "openblas_set_num_threads");
            pynn_blas_get_threads = (pynn_blas_get_threads_fn)dlsym(lib, "openblas_get_num_threads");
        }
        dlclose(lib);   /* a NOLOAD handle: SciPy keeps the library loaded */
        if (pynn_blas_set_threads == NULL || pynn_blas_get_threads == NULL) {
            pynn_blas_set_threads = NULL;
            pynn_blas_get_threads = NULL;
            return 0;
        }
        return 1;
    }
    """
    ctypedef void (*pynn_blas_threads_fn)(int) noexcept nogil
    ctypedef int (*pynn_blas_get_threads_fn)() noexcept nogil
    pynn_blas_threads_fn pynn_blas_set_threads
    pynn_blas_get_threads_fn pynn_blas_get_threads
    int pynn_find_blas_threads(void* fn)

from scipy.linalg.cython_blas cimport sgemm as _scipy_sgemm

# PYNN_DENSE_ONE_REGION=0 keeps BLAS's own threading: an earlier per-thread split measured
# slower on an Intel AVX-512 box (MLP step 2.4 -> 3.1 ms), faster here on Zen 3.
_HAVE_BLAS_THREADS = (os.environ.get("PYNN_DENSE_ONE_REGION", "1") != "0"
                      and bool(pynn_find_blas_threads(<void*>_scipy_sgemm)))
# Open one-thread regions (any Python thread) and the BLAS thread count to restore after the
# last. Both change only with the GIL held, so concurrent ops cannot restore too early.
cdef int _solo_depth = 0
cdef int _solo_saved = 1


cdef inline void _blas_solo_enter() noexcept:
    global _solo_depth, _solo_saved
    if _solo_depth == 0:
        _solo_saved = pynn_blas_get_threads()
        pynn_blas_set_threads(1)
    _solo_depth += 1


cdef inline void _blas_solo_exit() noexcept:
    global _solo_depth
    _solo_depth -= 1
    if _solo_depth == 0:
        pynn_blas_set_threads(_solo_saved)


def _after_fork_in_child():
    # A fork while another thread was inside a one-region op leaves the child's BLAS at one
    # thread with nobody left to restore it: restore it here.
    global _solo_depth
    if _solo_depth > 0 and _HAVE_BLAS_THREADS:
        pynn_blas_set_threads(_solo_saved)
    _solo_depth = 0


os.register_at_fork(after_in_child=_after_fork_in_child)


def _one_region_mode():
    """Whether the ops run as one OpenMP region each (see the module docstring)."""
    return _HAVE_BLAS_THREADS


# Bands per product: one per core of this machine (at most 16), fixed at import like conv's
# slabs, so set_num_threads never changes which GEMM computes an element. Two per core
# packed each operand twice as often: the MLP step gained 3-5% instead of 6-8%.
cdef int _BANDS = min(16, usable_cores())


cdef inline void _block_epilogue(floating* z, floating* y, const floating* bias, int r0, int r1,
                                 int j0, int j1, int ld, int act, floating alpha) noexcept nogil:
    """Rows [r0, r1) x columns [j0, j1) of z: + bias, then y = act(z) (softmax: whole rows,
    j0 = 0 and j1 = ld). The same expressions as bias_activation_rows, so the result does not
    depend on the path."""
    cdef int r, j
    cdef floating* zr
    for r in range(r0, r1):
        zr = z + r * ld
        if bias != NULL:
            for j in range(j0, j1):
                zr[j] = zr[j] + bias[j]
        if act == ACT_SOFTMAX:
            softmax_row(zr, y + r * ld, ld)
        elif act != ACT_LINEAR or y != z:
            act_forward_vec(zr + j0, y + r * ld + j0, j1 - j0, act, alpha)


cdef void _gemm_bands(bint ta, bint tb, int m, int n, int k, const floating* a, int lda,
                      const floating* b, int ldb, floating* c, int ldc, const floating* bias,
                      floating* y, int act, floating alpha, int bands) noexcept nogil:
    """c (m, n) = op(a) @ op(b) in `bands` bands of c (16-column panels, or 8 rows when c
    is taller than wide or softmax needs whole rows), one single-threaded GEMM each, the
    epilogue (when bias or y is given) right after on the same band. The bands depend on the
    shape and the machine only, never on the thread count: a BLAS kernel sums an element
    differently at a tile edge, so bands cut per thread gave other bits for 2 threads than
    for 1."""
    cdef int band, i0, i1, j0, j1, units
    cdef bint by_cols = n > m and act != ACT_SOFTMAX
    units = (n + 15) // 16 if by_cols else (m + 7) // 8
    for band in prange(bands, schedule="static"):
        i0, i1, j0, j1 = 0, m, 0, n
        if by_cols:
            j0 = (band * units // bands) * 16
            j1 = _imin(((band + 1) * units // bands) * 16, n)
        else:
            i0 = (band * units // bands) * 8
            i1 = _imin(((band + 1) * units // bands) * 8, m)
        if i1 > i0 and j1 > j0:
            gemm_rowmajor(ta, tb, i1 - i0, j1 - j0, k, <floating>1,
                          a + (i0 if ta else i0 * lda), lda,
                          b + (j0 * ldb if tb else j0), ldb, <floating>0,
                          c + i0 * ldc + j0, ldc)
            if bias != NULL or y != NULL:
                _block_epilogue(c, y, bias, i0, i1, j0, j1, ldc, act, alpha)


cdef inline int _imin(int a, int b) noexcept nogil:
    return a if a < b else b


def _gemm_one_region(bint trans_a, bint trans_b, const floating[:, ::1] a,
                     const floating[:, ::1] b, floating[:, ::1] c, int k, bias,
                     floating[:, ::1] y, int act, double alpha):
    """c = op(a) @ op(b) [+ bias, y = act(c)] as one OpenMP region (_gemm_bands); False
    (nothing done) without an OpenBLAS to hold at one thread or for an empty product, and the
    caller takes the two-pass path."""
    cdef int m = c.shape[0], n = c.shape[1]
    cdef const floating[::1] bv
    cdef const floating* bptr = NULL
    cdef floating* yptr = NULL
    cdef int bands
    if m == 0 or n == 0 or k == 0 or not _HAVE_BLAS_THREADS:
        return False
    bands = min(_BANDS, (n + 15) // 16 if n > m and act != ACT_SOFTMAX else (m + 7) // 8)
    if bias is not None:
        bv = bias
        bptr = &bv[0]
    if y is not None:
        yptr = &y[0, 0]
    _blas_solo_enter()
    try:
        with nogil:
            _gemm_bands(trans_a, trans_b, m, n, k, &a[0, 0], a.shape[1], &b[0, 0],
                        b.shape[1], &c[0, 0], n, bptr, yptr, act, <floating>alpha, bands)
    finally:
        _blas_solo_exit()
    return True


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
    act_name, alpha, x, kernel, bias = operands.dense_forward(HOST, x, kernel, bias,
                                                              activation, alpha)
    n, units = x.shape[0], kernel.shape[1]
    z = np.empty((n, units), dtype=x.dtype)
    act = ACTIVATIONS.index(act_name)
    keep_z = act_name in ACTIVATIONS_NEEDING_INPUT
    y = np.empty_like(z) if keep_z else z
    if _gemm_one_region(False, False, x, kernel, z, x.shape[1], bias, y, act, float(alpha)):
        return y, (z if keep_z else None)
    _gemm(False, False, x, kernel, z, x.shape[1])
    _bias_act(z, y, bias, act, float(alpha))
    return y, (z if keep_z else None)


def dense_backward_input(dz, kernel):
    """dx = dz @ kernel.T, shape (N, C)."""
    dz, kernel = operands.dense_backward_input(HOST, dz, kernel)
    dx = np.empty((dz.shape[0], kernel.shape[0]), dtype=dz.dtype)
    if _gemm_one_region(False, True, dz, kernel, dx, dz.shape[1], None, None, 0, 0.0):
        return dx
    _gemm(False, True, dz, kernel, dx, dz.shape[1])
    return dx


def dense_backward_weight(x, dz):
    """dkernel = x.T @ dz, shape (C, U)."""
    x, dz = operands.dense_backward_weight(HOST, x, dz)
    dw = np.empty((x.shape[1], dz.shape[1]), dtype=x.dtype)
    if _gemm_one_region(True, False, x, dz, dw, x.shape[0], None, None, 0, 0.0):
        return dw
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
    dz = operands.bias_backward(HOST, dz)
    cols = dz.shape[dz.ndim - 1]
    flat = dz.reshape(-1, cols) if cols else dz.reshape(0, 0)
    out = np.zeros(cols, dtype=dz.dtype)
    if flat.shape[0] and cols:
        _column_sums(flat, out)
    return out
