"""Dense (fully connected) layer kernels.

Legend: N batch, C input features, U units. x (N, C), kernel (C, U) as in Keras.
Two ways to the product, chosen per op and shape by _micro_rule (measured crossover):
pynn's register-blocked microkernel (native/_microkernel.h, as Conv2D's direct paths; see
"register-blocked microkernel path" below) for the float32 products of training where it
wins on the CPU at hand (the rule differs between Intel and AMD), and
BLAS sgemm/dgemm without the GIL (row-major through swapped operands, see _blas.pxd) for
the rest. Gradients do not accumulate: each op returns a fresh array.

BLAS threads: with an OpenBLAS whose thread count pynn can set, each op is ONE job of pynn's
worker team (native/_team.h) over a fixed set of bands of the result (bands of 16-column
panels, or of 8 rows when the result is taller than wide or softmax needs whole rows; one
band per core of the machine). Each band is one single-threaded GEMM, followed at once by
its bias and activation while it is still in cache; OpenBLAS is held at one thread during
the job (_blas_solo_enter). Handing
each GEMM to OpenBLAS's own thread pool and the epilogue to OpenMP's made the two pools wake
and wait for each other several times per layer: the 784-512-256-10 MLP training step ran
6-8% slower that way (Zen 3, 2 threads, in-process A/B), a 512 -> 256 forward up to 25%.
Products under _SERIAL_MACS multiply-adds are one GEMM on the calling thread instead: a
wake-up costs more than the second core gives them. Without such a BLAS the product
goes to BLAS's own threading, the epilogue to a second pass.
"""
import os
from types import SimpleNamespace

import numpy as np

from _openmp cimport omp_get_max_threads
from _blas cimport (
    blas_init, floating, gemm_rowmajor, pynn_blas_ilp64, pynn_blas_sgemm_address,
)
from _activation cimport (
    ACT_LINEAR, ACT_PARALLEL_MIN, ACT_RELU, ACT_SOFTMAX, TEAM_PARALLEL_MIN, act_forward_vec,
    add_rows_double, bias_activation_rows, block_epilogue, fused_step,
    fused_tiling, softmax_row, sum_row_blocks,
)

from pynn._config import usable_cores
from pynn._native.activation import activation_backward, activation_bias_backward
from pynn.backend._scratch import give, scratch, take
from pynn.backend.operands import dense as operands
from pynn.backend.operands.common import HOST
from pynn.backend.api import (
    ACTIVATIONS, ACTIVATIONS_NEEDING_INPUT, dense_backward_input_activation_composed,
)

blas_init()

include "_team.pxi"


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
    /* The thread setter of the OpenBLAS behind `fn` (the sgemm native/_blas.h found): dlsym
       on the library fn lives in also searches the libraries it depends on. The wheels'
       OpenBLAS prefix the names with scipy_ (NumPy's, ILP64, also suffix them 64_); a
       system OpenBLAS does neither. */
    static const char* const pynn_blas_thread_names[][2] = {
        {"scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"},
        {"scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"},
        {"openblas_set_num_threads64_", "openblas_get_num_threads64_"},
        {"openblas_set_num_threads", "openblas_get_num_threads"},
    };
    static int pynn_find_blas_threads(void* fn) {
        Dl_info info;
        void* lib;
        int k;
        if (fn == NULL || !dladdr(fn, &info) || info.dli_fname == NULL) return 0;
        lib = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD);
        if (lib == NULL) return 0;
        for (k = 0; k < 4; k++) {
            pynn_blas_set_threads = (pynn_blas_threads_fn)dlsym(lib, pynn_blas_thread_names[k][0]);
            pynn_blas_get_threads = (pynn_blas_get_threads_fn)dlsym(lib, pynn_blas_thread_names[k][1]);
            if (pynn_blas_set_threads != NULL && pynn_blas_get_threads != NULL) break;
        }
        dlclose(lib);   /* a NOLOAD handle: its loader keeps the library loaded */
        if (pynn_blas_set_threads == NULL || pynn_blas_get_threads == NULL) {
            pynn_blas_set_threads = NULL;
            pynn_blas_get_threads = NULL;
            return 0;
        }
        return 1;
    }
    /* The file of the library fn lives in ("" if none). */
    static const char* pynn_blas_path(void* fn) {
        Dl_info info;
        if (fn != NULL && dladdr(fn, &info) && info.dli_fname != NULL) return info.dli_fname;
        return "";
    }
    """
    const char* pynn_blas_path(void* fn)
    ctypedef void (*pynn_blas_threads_fn)(int) noexcept nogil
    ctypedef int (*pynn_blas_get_threads_fn)() noexcept nogil
    pynn_blas_threads_fn pynn_blas_set_threads
    pynn_blas_get_threads_fn pynn_blas_get_threads
    int pynn_find_blas_threads(void* fn)

# PYNN_DENSE_ONE_REGION=0 keeps BLAS's own threading: an earlier per-thread split measured
# slower on an Intel AVX-512 box (MLP step 2.4 -> 3.1 ms), faster here on Zen 3.
_HAVE_BLAS_THREADS = (os.environ.get("PYNN_DENSE_ONE_REGION", "1") != "0"
                      and bool(pynn_find_blas_threads(pynn_blas_sgemm_address())))
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


def _blas_solo(bint enter):
    """Hold BLAS at one thread (enter) or let it go (leave) around another module's team job
    whose items each run their own small GEMMs (native/attention.pyx); nested like this
    module's own regions. False where BLAS's threads cannot be set: the caller then runs
    its items on one thread and lets BLAS thread each product itself."""
    if not _HAVE_BLAS_THREADS:
        return False
    if enter:
        _blas_solo_enter()
    else:
        _blas_solo_exit()
    return True


def _after_fork_in_child():
    # A fork while another thread was inside a one-region op leaves the child's BLAS at one
    # thread with nobody left to restore it: restore it here.
    global _solo_depth
    if _solo_depth > 0 and _HAVE_BLAS_THREADS:
        pynn_blas_set_threads(_solo_saved)
    _solo_depth = 0


os.register_at_fork(after_in_child=_after_fork_in_child)


def _blas_library():
    """(file, "ILP64" or "LP64") of the BLAS the kernels call (native/_blas.h)."""
    return (pynn_blas_path(pynn_blas_sgemm_address()).decode(),
            "ILP64" if pynn_blas_ilp64 else "LP64")


def _one_region_mode():
    """Whether the ops run as one OpenMP region each (see the module docstring)."""
    return _HAVE_BLAS_THREADS


# Bands per product: one per core of this machine (at most 16), fixed at import like conv's
# slabs, so set_num_threads never changes which GEMM computes an element. Two per core
# packed each operand twice as often: the MLP step gained 3-5% instead of 6-8%.
cdef int _BANDS = min(16, usable_cores())

# Products under this many multiply-adds run as one GEMM on the calling thread, no region.
# Waking a sleeping worker costs 60-100 us on the VMs pynn is measured on (an empty 2-thread
# region after a 20 us gap: 59 us, after 0-10 us: 1.5 us), 20-30 us while the keep-warm
# spinners run (native/_warm.h: training, evaluation and prediction loops). Timed one call
# after 50 us of other work, banding a 64x256x256 product did not pay (Intel, forward
# banded / serial 89 / 82 us), and the threshold stood at 6M multiply-adds. A training
# step's ops come closer together than that, with the team's worker still spinning: the
# 30-layer functional model of the suite (bench/bench_serial_macs.py, steps alternated in
# one process, Intel Xeon, 2 threads, ms at 6M / 1M) width 256 batch 64 (4.2M a product)
# 6.78 / 5.01, batch 32 5.37 / 3.87, batch 16 4.22 / 2.90; width 128 batch 64 2.97 / 2.67;
# width 512 batch 16 14.1 / 8.95; at 0.5M a product (width 128 batch 32) 1.80 / 1.78.
# The rule is the shape's alone, so the bits never depend on the thread count.
_SERIAL_MACS_DEFAULT = 1e6
cdef double _SERIAL_MACS = _SERIAL_MACS_DEFAULT


def _set_serial_macs(macs=None):
    """Test hook: the serial threshold in multiply-adds (0: always banded; None: the
    default). Returns the old value."""
    global _SERIAL_MACS
    old = _SERIAL_MACS
    _SERIAL_MACS = _SERIAL_MACS_DEFAULT if macs is None else float(macs)
    return old


cdef inline void _gemm_band(bint ta, bint tb, int m, int n, int k, const floating* a,
                            int lda, const floating* b, int ldb, floating* c, int ldc,
                            const floating* bias, floating* y, int act, floating alpha,
                            int band, int bands) noexcept nogil:
    """Band `band` of `bands` of c (see _gemm_bands): its GEMM, then its epilogue (softmax
    in column bands: the bias only, the rows after every band)."""
    cdef int i0, i1, j0, j1, units
    cdef bint by_cols = n > m
    units = (n + 15) // 16 if by_cols else (m + 7) // 8
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
        if by_cols and act == ACT_SOFTMAX:
            if bias != NULL:
                block_epilogue(c, c, bias, i0, i1, j0, j1, ldc, ACT_LINEAR, alpha)
        elif bias != NULL or y != NULL:
            block_epilogue(c, y, bias, i0, i1, j0, j1, ldc, act, alpha)


ctypedef struct _BandsJob:
    bint ta, tb, is_double
    int m, n, k, lda, ldb, ldc, act, bands
    const void* a
    const void* b
    void* c
    const void* bias
    void* y
    double alpha
    # the layer below's relu and bias in each column band (dense_backward_input_activation):
    # its output y_below (NULL: no such epilogue) and activation_bias_backward's tiles' sums
    const void* y_below
    double* partial
    Py_ssize_t cbw, nrb, rb_rows


cdef void _bands_items(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _BandsJob* j = <_BandsJob*>ctx
    cdef long band
    cdef int units, j0, j1
    for band in range(begin, end):
        if j.is_double:
            _gemm_band(j.ta, j.tb, j.m, j.n, j.k, <const double*>j.a, j.lda,
                       <const double*>j.b, j.ldb, <double*>j.c, j.ldc,
                       <const double*>j.bias, <double*>j.y, j.act, j.alpha, <int>band,
                       j.bands)
        else:
            _gemm_band(j.ta, j.tb, j.m, j.n, j.k, <const float*>j.a, j.lda,
                       <const float*>j.b, j.ldb, <float*>j.c, j.ldc,
                       <const float*>j.bias, <float*>j.y, j.act, <float>j.alpha, <int>band,
                       j.bands)
        if j.y_below != NULL:   # column bands only (see dense_backward_input_activation)
            units = (j.n + 15) // 16
            j0 = (<int>band * units // j.bands) * 16
            j1 = _imin(((<int>band + 1) * units // j.bands) * 16, j.n)
            if j.is_double:
                _relu_bias_columns(<double*>j.c, <const double*>j.y_below, j.partial, j.m,
                                   j.n, j0, j1, j.cbw, j.nrb, j.rb_rows)
            else:
                _relu_bias_columns(<float*>j.c, <const float*>j.y_below, j.partial, j.m,
                                   j.n, j0, j1, j.cbw, j.nrb, j.rb_rows)


cdef inline void _relu_backward_inplace(floating* g, const floating* y,
                                        Py_ssize_t n) noexcept nogil:
    """g = relu's backward of g through y (act_backward_vec's select, in place: with g
    passed as both its dy and dx GCC's overlap check sent every row down the scalar loop,
    50 us of a 128 x 512 band epilogue)."""
    cdef Py_ssize_t j
    for j in range(n):
        g[j] = g[j] if y[j] > 0 else 0


cdef void _relu_bias_columns(floating* g, const floating* y, double* partial, Py_ssize_t rows,
                             Py_ssize_t cols, Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t cbw,
                             Py_ssize_t nrb, Py_ssize_t rb_rows) noexcept nogil:
    """g (rows, cols), an input gradient, becomes dz = relu's backward of it through y (the
    layer below's output) over columns [j0, j1), in place, and partial (nrb, cols) gets those
    columns' sums of activation_bias_backward's tiles (fused_tiling): each tile's rows in
    its own steps (fused_step of the tile's width), the same additions in the same order,
    so sum_row_blocks gives its bits. relu's backward selects: the same bits too."""
    cdef Py_ssize_t rb, r0, r1, r, rr, i, cb, t0, a0, a1, w
    cdef double* acc
    if j1 <= j0:
        return
    for rb in range(nrb):
        r0 = rb * rb_rows
        r1 = min(rows, r0 + rb_rows)
        for cb in range(j0 // cbw, (j1 - 1) // cbw + 1):
            t0 = cb * cbw
            w = min(cbw, cols - t0)
            a0, a1 = max(j0, t0), min(j1, t0 + w)
            acc = partial + rb * cols + a0
            for i in range(a1 - a0):
                acc[i] = 0
            r = r0
            while r < r1:
                rr = min(fused_step(w), r1 - r)
                for i in range(r, r + rr):
                    _relu_backward_inplace(g + i * cols + a0, y + i * cols + a0, a1 - a0)
                add_rows_double(g + r * cols + a0, acc, rr, a1 - a0, cols)
                r += rr


cdef void _softmax_rows_items(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _BandsJob* j = <_BandsJob*>ctx
    cdef long r
    for r in range(begin, end):
        if j.is_double:
            softmax_row(<double*>j.c + r * j.ldc, <double*>j.y + r * j.ldc, j.n)
        else:
            softmax_row(<float*>j.c + r * j.ldc, <float*>j.y + r * j.ldc, j.n)


cdef void _gemm_bands(bint ta, bint tb, int m, int n, int k, const floating* a, int lda,
                      const floating* b, int ldb, floating* c, int ldc, const floating* bias,
                      floating* y, int act, floating alpha, int bands) noexcept nogil:
    """c (m, n) = op(a) @ op(b) in `bands` bands of c (16-column panels, or 8 rows when c
    is taller than wide), one single-threaded GEMM each, the epilogue (when bias or y is
    given) right after on the same band; softmax, which needs whole rows, then runs over the
    rows of column bands (row bands of a wide softmax layer packed all of b once per band:
    32 x 1024 -> 10000 took 29.4 ms on one thread against 17.1 without softmax). The bands
    depend on the shape and the machine only, never on the thread count: a BLAS kernel sums
    an element differently at a tile edge, so bands cut per thread gave other bits for 2
    threads than for 1. The bands run on pynn's worker team (native/_team.h)."""
    cdef _BandsJob job
    cdef int threads = omp_get_max_threads()
    job.ta, job.tb, job.is_double = ta, tb, floating is double
    job.m, job.n, job.k, job.lda, job.ldb, job.ldc = m, n, k, lda, ldb, ldc
    job.act, job.bands, job.alpha = act, bands, alpha
    job.a, job.b, job.c, job.bias, job.y = a, b, c, bias, y
    job.y_below, job.partial = NULL, NULL
    pynn_team_for(bands, 1, threads, _bands_items, &job)
    if act == ACT_SOFTMAX and n > m:
        if <double>m * n < TEAM_PARALLEL_MIN:
            threads = 1
        pynn_team_for(m, team_grain(m, threads), threads, _softmax_rows_items, &job)


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
    bands = min(_BANDS, (n + 15) // 16 if n > m else (m + 7) // 8)
    if <double>m * n * k < _SERIAL_MACS:
        bands = 0   # one GEMM on this thread (see _SERIAL_MACS)
    if bias is not None:
        bv = bias
        bptr = &bv[0]
    if y is not None:
        yptr = &y[0, 0]
    _blas_solo_enter()
    try:
        with nogil:
            if bands == 0:
                gemm_rowmajor(trans_a, trans_b, m, n, k, <floating>1, &a[0, 0], a.shape[1],
                              &b[0, 0], b.shape[1], <floating>0, &c[0, 0], n)
                if bptr != NULL or yptr != NULL:
                    block_epilogue(&c[0, 0], yptr, bptr, 0, m, 0, n, n, act, <floating>alpha)
            else:
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


# -- register-blocked microkernel path (native/_microkernel.h, as Conv2D's direct paths) ---
# Each op is one or two team jobs over the result (_micro_region): the B operand packed
# into panels (one sequential stream per microkernel block, the last panel zero-padded to
# whole vectors),
# then tiles of _TILE_ROWS rows x one panel, each running pynn_seg_gemm_*; the forward's
# bias is the microkernel's start row and its activation runs on the tile while it is still
# in cache. The microkernel sums each element in a fixed order whatever the row block, so
# the result does not depend on the tiles or the thread count.
#   forward          z = x @ kernel:     a = x rows, b = kernel packed
#   backward_input   dx.T = kernel @ dz.T: a = kernel rows read in place, b = dz.T packed
#                    (PYNN_DENSE_PACK transposing), each tile stored transposed into dx
#   backward_weight  dk = x.T @ dz:      a = x.T (x read in place: row c of x.T is column
#                    c, sat = C), b = dz packed
# Only the forward packs the weights, every call: the optimizer rewrites them in place
# after every step, so a pack kept across calls would have to trust a version counter
# (pynn.variables.version) that a caller's own in-place write (a finite-difference check,
# `kernel.value[...] = w`) never bumps; and a training step reads them in two layouts
# (kernel for forward, kernel.T for backward_input), so one pack could not serve both.
# The pack costs one pass over the weights against N/MR passes by the GEMM itself.
include "_microkernel.pxi"   # pynn._config.set_kernel reaches this module too


cdef extern from *:
    """
    /* Columns [p0, p0 + w) of b (k x n, row stride ldb; transposed: b holds b.T, n x k)
       as one panel at out with row stride ws >= w, columns [w, ws) zero: a last
       panel padded to whole vectors keeps the microkernel off its scalar tail (a 10-unit
       output layer ran at 1 GFLOP/s there, 23 through BLAS). Transposed, 16 rows of the
       panel at a time, so the w source rows' cache lines stay in L1 across the block. */
    #define PYNN_DENSE_PACK(NAME, T)                                                      \\
    static void NAME(const T* b, Py_ssize_t ldb, int transposed, Py_ssize_t k,          \\
                     Py_ssize_t p0, Py_ssize_t w, Py_ssize_t ws, T* out) {              \\
        T* d = out;                                                                     \\
        Py_ssize_t r, r0, r1, j;                                                        \\
        for (r0 = 0; r0 < k; r0 += 16) {                                                \\
            r1 = r0 + 16 < k ? r0 + 16 : k;                                             \\
            for (r = r0; r < r1; r++) {                                                 \\
                T* dr = d + r * ws;                                                     \\
                if (transposed)                                                         \\
                    for (j = 0; j < w; j++) dr[j] = b[(p0 + j) * ldb + r];              \\
                else                                                                    \\
                    for (j = 0; j < w; j++) dr[j] = b[r * ldb + p0 + j];                \\
                for (; j < ws; j++) dr[j] = 0;                                          \\
            }                                                                           \\
        }                                                                               \\
    }
    PYNN_DENSE_PACK(pynn_dense_pack_f, float)
    PYNN_DENSE_PACK(pynn_dense_pack_d, double)
    """
    void pynn_dense_pack_f(const float* b, Py_ssize_t ldb, int transposed, Py_ssize_t k,
                           Py_ssize_t p0, Py_ssize_t w, Py_ssize_t ws, float* out) noexcept nogil
    void pynn_dense_pack_d(const double* b, Py_ssize_t ldb, int transposed, Py_ssize_t k,
                           Py_ssize_t p0, Py_ssize_t w, Py_ssize_t ws, double* out) noexcept nogil


# Rows per tile: a multiple of every microkernel height (6 and 8), so only the last tile of
# a column ends in a short block.
cdef enum:
    _TILE_ROWS = 96
    _TILE_ALIGN = 24    # the least common multiple of the microkernel heights

# Columns per panel: four vectors (a module variable for the reason given at _k_block), so
# that with 32 vector registers the microkernel's 6-row "wide" block (4 vectors, 24
# accumulators) runs; with AVX2 the same panel is two 6-row blocks of 2 vectors. Zen 4, one thread, GFLOP/s of forward /
# backward_weight at 128 x 784 -> 512 (min of 25 alternated runs; BLAS 83 / 97): 64-column
# wide panels 102 / 105, 32-column 8-row panels 95 / 87.
cdef int _panel_vectors = 4


cdef inline Py_ssize_t _panel(const floating* dummy) noexcept nogil:
    if floating is float:
        return _panel_vectors * PYNN_NC_F // 2
    else:
        return _panel_vectors * PYNN_NC_D // 2


cdef inline void _pack(bint transposed, const floating* b, Py_ssize_t ldb, Py_ssize_t k,
                       Py_ssize_t p0, Py_ssize_t w, Py_ssize_t ws, floating* out) noexcept nogil:
    """Panel [p0, p0 + w) of b (k x n, or of b.T when transposed: b is then n x k) at out,
    row stride ws (see PYNN_DENSE_PACK); the header's pack where it does the same."""
    if not transposed and ws == w:
        if floating is float:
            pynn_pack_panels_f(b + p0, ldb, k, w, w, out)
        else:
            pynn_pack_panels_d(b + p0, ldb, k, w, w, out)
    elif floating is float:
        pynn_dense_pack_f(b, ldb, transposed, k, p0, w, ws, out)
    else:
        pynn_dense_pack_d(b, ldb, transposed, k, p0, w, ws, out)


# Reduction steps per microkernel call and its wide-block flag, module variables on
# purpose: with the call's accum/wide/bias arguments constant (one call per tile) GCC
# specialized the inlined microkernel into code that ran at half speed (forward 128 x 784
# -> 512: 47 against 92 GFLOP per CPU-s). Slices of 256 steps (BLIS's kc: the panel slice
# stays in L1 across the tile's row blocks) and one whole pass measured alike there (88 /
# 84-92). On an Intel Xeon (48 KiB L1d, 2 MiB L2; relu forward, keep-warm on, medians of 5
# alternated rounds of 31 calls, microseconds at kc 64 / 128 / 256 / whole) the whole pass
# wins, more so on two threads: 128x784->512 one thread 746 / 725 / 741 / 694, two 527 / 452
# / 450 / 394; 64x4096->128 two 329 / 311 / 308 / 271; 128x1024->1024 two 1114 / 1010 /
# 1056 / 990. So there it is one pass (set below, once _INTEL is known). Same bits either way.
cdef int _wide = 1
cdef Py_ssize_t _k_block = 256


cdef void _micro_tile(const floating* a, Py_ssize_t row_stride, Py_ssize_t sat,
                      const floating* panel, floating* c, Py_ssize_t ldc, Py_ssize_t rows,
                      Py_ssize_t w, Py_ssize_t k, const Py_ssize_t* roff,
                      const floating* bias) noexcept nogil:
    """c (rows, w) = a @ panel (k, w) [+ bias as the start row], _k_block steps a call; the
    later calls add onto c (accum): the same chain of FMAs as one pass, so the same bits."""
    cdef Py_ssize_t zero = 0, k0 = 0, kb
    cdef Py_ssize_t kc = _k_block
    while k0 < k:
        kb = _imin(kc, k - k0)
        if floating is float:
            pynn_seg_gemm_f(rows, w, 1, kb, a + k0 * sat, roff, &zero, sat, panel + k0 * w,
                            &zero, w, c, ldc, bias if k0 == 0 else NULL, k0 > 0, _wide)
        else:
            pynn_seg_gemm_d(rows, w, 1, kb, a + k0 * sat, roff, &zero, sat, panel + k0 * w,
                            &zero, w, c, ldc, bias if k0 == 0 else NULL, k0 > 0, _wide)
        k0 += kb


cdef inline void _micro_panel_tile(const floating* a, Py_ssize_t row_stride, Py_ssize_t sat,
                                   const floating* panel, floating* c, Py_ssize_t m,
                                   Py_ssize_t n, Py_ssize_t k, const Py_ssize_t* roff,
                                   const floating* bias, floating* tail,
                                   const floating* tail_bias, Py_ssize_t i0, Py_ssize_t rows,
                                   Py_ssize_t p0, Py_ssize_t nc,
                                   Py_ssize_t last_ws) noexcept nogil:
    """Rows [i0, i0 + rows) x the panel at column p0 of c (through tail when padded), the
    panel packed at `panel`."""
    cdef Py_ssize_t w = _imin(nc, n - p0), r, j
    cdef floating* t
    cdef const floating* start = NULL
    if p0 + nc < n or last_ws == w:
        if bias != NULL:
            start = bias + p0
        _micro_tile(a + i0 * row_stride, row_stride, sat, panel, c + i0 * n + p0,
                    n, rows, w, k, roff, start)
        return
    if bias != NULL:
        start = tail_bias
    t = tail + i0 * last_ws
    _micro_tile(a + i0 * row_stride, row_stride, sat, panel, t, last_ws, rows,
                last_ws, k, roff, start)
    for r in range(rows):
        for j in range(w):
            c[(i0 + r) * n + p0 + j] = t[r * last_ws + j]


ctypedef struct _MicroJob:
    bint is_double, b_transposed
    const void* a
    const void* b
    void* c
    void* packed
    void* tail
    const void* tail_bias
    const void* bias
    void* y
    void* out_t
    Py_ssize_t row_stride, sat, ldb, m, n, k, nc, panels, row_tiles, tile_rows, last_ws
    const Py_ssize_t* roff
    int act
    double alpha


cdef inline void _micro_pack_items(const _MicroJob* j, const floating* b, floating* packed,
                                   long begin, long end) noexcept nogil:
    cdef long pp
    for pp in range(begin, end):
        _pack(j.b_transposed, b, j.ldb, j.k, pp * j.nc, _imin(j.nc, j.n - pp * j.nc),
              j.last_ws if pp == j.panels - 1 else j.nc, packed + pp * j.nc * j.k)


cdef void _micro_pack_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _MicroJob* j = <_MicroJob*>ctx
    if j.is_double:
        _micro_pack_items(j, <const double*>j.b, <double*>j.packed, begin, end)
    else:
        _micro_pack_items(j, <const float*>j.b, <float*>j.packed, begin, end)


cdef inline void _micro_tile_items(const _MicroJob* j, const floating* a, floating* c,
                                   const floating* packed, floating* tail,
                                   const floating* tail_bias, const floating* bias,
                                   floating* y, floating* out_t, const floating* own_panel,
                                   long begin, long end) noexcept nogil:
    """Tiles [begin, end); own_panel (or NULL): every tile's panel, packed there instead of
    at its place in packed (the panel job's per-thread panel)."""
    cdef Py_ssize_t n = j.n, nc = j.nc, row_tiles = j.row_tiles, panels = j.panels
    cdef Py_ssize_t tile, p, q, i0, rows
    cdef floating alpha = <floating>j.alpha
    for tile in range(begin, end):
        if j.act == ACT_SOFTMAX:
            # softmax needs a whole row: a tile is a row block across every panel
            i0 = tile * j.tile_rows
            rows = _imin(j.tile_rows, j.m - i0)
            for q in range(panels):
                _micro_panel_tile(a, j.row_stride, j.sat, packed + q * nc * j.k, c, j.m, n,
                                  j.k, j.roff, bias, tail, tail_bias, i0, rows, q * nc, nc,
                                  j.last_ws)
            block_epilogue(c, y, <const floating*>NULL, <int>i0, <int>(i0 + rows), 0,
                           <int>n, <int>n, j.act, alpha)
            continue
        # row blocks inner: consecutive tiles of a claim share a packed panel
        p = tile // row_tiles
        i0 = (tile % row_tiles) * j.tile_rows
        rows = _imin(j.tile_rows, j.m - i0)
        _micro_panel_tile(a, j.row_stride, j.sat,
                          own_panel if own_panel != NULL else packed + p * nc * j.k, c, j.m,
                          n, j.k, j.roff, bias, tail, tail_bias, i0, rows, p * nc, nc,
                          j.last_ws)
        if y != NULL:
            block_epilogue(c, y, <const floating*>NULL, <int>i0, <int>(i0 + rows),
                           <int>(p * nc), <int>_imin(p * nc + nc, n), <int>n, j.act, alpha)
        if out_t != NULL:
            _store_transposed(c, n, out_t, j.m, i0, rows, p * nc, _imin(nc, n - p * nc))


cdef inline void _micro_tiles(const _MicroJob* j, const void* own_panel, long begin,
                              long end) noexcept nogil:
    if j.is_double:
        _micro_tile_items(j, <const double*>j.a, <double*>j.c, <const double*>j.packed,
                          <double*>j.tail, <const double*>j.tail_bias,
                          <const double*>j.bias, <double*>j.y, <double*>j.out_t,
                          <const double*>own_panel, begin, end)
    else:
        _micro_tile_items(j, <const float*>j.a, <float*>j.c, <const float*>j.packed,
                          <float*>j.tail, <const float*>j.tail_bias,
                          <const float*>j.bias, <float*>j.y, <float*>j.out_t,
                          <const float*>own_panel, begin, end)


cdef void _micro_tile_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    _micro_tiles(<_MicroJob*>ctx, NULL, begin, end)


cdef void _micro_panel_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    """Panels [begin, end): each packed, then every row tile of it. Each thread packs into
    its own panel-sized slice of packed (slot's), reused panel after panel: the packed
    kernel never spreads over the whole buffer, so it stays in the core's L2 and evicts
    less of everything else (the Python and NumPy state the step's small ops run on)."""
    cdef _MicroJob* j = <_MicroJob*>ctx
    cdef long p
    cdef Py_ssize_t size = j.nc * j.k
    cdef void* own
    for p in range(begin, end):
        if j.is_double:
            own = <double*>j.packed + slot * size
            _pack(j.b_transposed, <const double*>j.b, j.ldb, j.k, p * j.nc,
                  _imin(j.nc, j.n - p * j.nc), j.last_ws if p == j.panels - 1 else j.nc,
                  <double*>own)
        else:
            own = <float*>j.packed + slot * size
            _pack(j.b_transposed, <const float*>j.b, j.ldb, j.k, p * j.nc,
                  _imin(j.nc, j.n - p * j.nc), j.last_ws if p == j.panels - 1 else j.nc,
                  <float*>own)
        _micro_tiles(j, own, p * j.row_tiles, (p + 1) * j.row_tiles)


cdef void _micro_region(const floating* a, Py_ssize_t row_stride, Py_ssize_t sat,
                        const floating* b, Py_ssize_t ldb, bint b_transposed,
                        floating* c, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                        floating* packed, floating* tail, floating* tail_bias,
                        const floating* bias, floating* y, int act, floating alpha,
                        floating* out_t) noexcept nogil:
    """c (m, n) = a @ b [+ bias, y = act(c)], row i of a at a + i*row_stride, its t-th
    element at + t*sat; b (k, n) or, b_transposed, b.T given as (n, k). packed: k *
    panels * nc elements; tail (m x nc) and tail_bias (nc): where the last panel is padded
    to whole vectors, its tiles are computed there and their real columns copied to c.
    out_t (n, m) or NULL: each tile is also stored transposed there while in cache.
    On pynn's worker team: a job of panels, each packed and then computed by one thread,
    where they are at least two per thread; else two jobs, every panel packed before any
    tile reads it."""
    cdef Py_ssize_t nc = _panel(a)
    cdef Py_ssize_t vl = nc // _panel_vectors   # floats (doubles) per vector register
    cdef Py_ssize_t panels = (n + nc - 1) // nc
    cdef Py_ssize_t last = (panels - 1) * nc
    cdef Py_ssize_t last_w = n - last
    cdef Py_ssize_t last_ws = (last_w + vl - 1) // vl * vl
    cdef Py_ssize_t row_tiles = (m + _TILE_ROWS - 1) // _TILE_ROWS
    # Rows per tile: m split evenly over row_tiles, rounded up to whole microkernel blocks
    # (so 128 rows are 72 + 56, not 96 + 32: a thread's tiles then take alike).
    cdef Py_ssize_t tile_rows = _imin(_TILE_ROWS, (m + row_tiles * _TILE_ALIGN - 1)
                                      // (row_tiles * _TILE_ALIGN) * _TILE_ALIGN)
    cdef Py_ssize_t i, items
    cdef Py_ssize_t roff[_TILE_ROWS]
    cdef int threads = omp_get_max_threads()
    cdef _MicroJob job
    for i in range(_TILE_ROWS):
        roff[i] = i * row_stride
    if last_ws != last_w and bias != NULL:
        for i in range(last_ws):
            tail_bias[i] = bias[last + i] if i < last_w else 0
    job.is_double, job.b_transposed = floating is double, b_transposed
    job.a, job.b, job.c, job.packed, job.tail, job.tail_bias = a, b, c, packed, tail, tail_bias
    job.bias, job.y, job.out_t, job.roff = bias, y, out_t, roff
    job.row_stride, job.sat, job.ldb, job.m, job.n, job.k = row_stride, sat, ldb, m, n, k
    job.nc, job.panels, job.row_tiles, job.last_ws = nc, panels, row_tiles, last_ws
    job.tile_rows = tile_rows
    job.act, job.alpha = act, alpha
    if act != ACT_SOFTMAX and panels >= 2 * threads:
        # One job, a run of panels per claim: the thread that packs a panel computes all its
        # tiles, reading it from its own cache (with a pack job first, half the panels came
        # from the other core's: on two Intel cores, relu forward, microseconds two jobs /
        # one, no keep-warm: 72x1024->256 250 / 184, 72x256->1024 258 / 188, 128x784->512
        # 483 / 427; with keep-warm one thread / two: 316 / 163, 339 / 161, 808 / 401).
        pynn_team_for(panels, (panels + threads - 1) // threads, threads, _micro_panel_job,
                      &job)
        return
    pynn_team_for(panels, team_grain(panels, threads), threads, _micro_pack_job, &job)
    items = row_tiles if act == ACT_SOFTMAX else row_tiles * panels
    pynn_team_for(items, team_grain(items, threads), threads, _micro_tile_job, &job)


cdef inline void _store_transposed(const floating* c, Py_ssize_t ldc, floating* out,
                                   Py_ssize_t ldo, Py_ssize_t i0, Py_ssize_t rows,
                                   Py_ssize_t j0, Py_ssize_t w) noexcept nogil:
    """out[j, i] = c[i, j] over rows [i0, i0 + rows) x columns [j0, j0 + w): contiguous
    writes, the tile's reads still in cache."""
    cdef Py_ssize_t r, j
    for j in range(j0, j0 + w):
        for r in range(i0, i0 + rows):
            out[j * ldo + r] = c[r * ldc + j]


# Which ops take the microkernel: "auto" (the measured rule in _micro_wins), "micro" or
# "blas" (tests and benchmarks force either side of the crossover, _set_gemm_path).
_gemm_path = os.environ.get("PYNN_DENSE_GEMM", "auto")


def _set_k_block(Py_ssize_t k):
    """Benchmark hook: the microkernel's reduction steps per call; returns the old value."""
    global _k_block
    if k < 1:
        raise ValueError(f"_set_k_block: expected k >= 1, got {k}")
    old, _k_block = _k_block, k
    return old


def _set_gemm_path(path):
    """Test and benchmark hook: 'auto', 'micro' or 'blas'. Returns the previous setting."""
    global _gemm_path
    if path not in ("auto", "micro", "blas"):
        raise ValueError(f"dense gemm path must be 'auto', 'micro' or 'blas', got {path!r}")
    old, _gemm_path = _gemm_path, path
    return old


def _forward_into(x, kernel, bias, z, y, int act, double alpha):
    """dense_forward's product and epilogue on checked operands into z (N, U) and y (may
    be z), by the path the rules pick for the shape (the inference plan's Dense calls it
    too, so it gets dense_forward's bits)."""
    n, units, k = x.shape[0], kernel.shape[1], x.shape[1]
    if not (n and units and k):   # nothing to multiply: zeros (k = 0), then the epilogue
        _gemm(False, False, x, kernel, z, k)
        _bias_act(z, y, bias, act, alpha)
        return
    if _micro_wins("forward", x.dtype, n, units, k):
        _micro_gemm(x, k, 1, kernel, False, z, k, bias, y, act, alpha)
    elif not _gemm_one_region(False, False, x, kernel, z, k, bias, y, act, alpha):
        _gemm(False, False, x, kernel, z, k)
        _bias_act(z, y, bias, act, alpha)


def _micro_wins(op, dtype, m, n, k):
    """Whether `op` computing c (m, n) = a (m, k) @ b (k, n) takes the microkernel."""
    if _gemm_path != "auto":
        return _gemm_path == "micro"
    return _micro_rule(op, dtype, m, n, k)


cdef extern from *:
    """
    static int pynn_dense_cpu_intel(void) {
    #if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
        __builtin_cpu_init();
        return __builtin_cpu_is("intel");
    #else
        return 0;
    #endif
    }
    """
    int pynn_dense_cpu_intel() noexcept nogil

# The crossover differs between the two CPU kinds pynn is measured on, both at the avx512
# level: an Intel Xeon's OpenBLAS forward trails the microkernel where an AMD EPYC's leads.
_INTEL = bool(pynn_dense_cpu_intel())
if _INTEL:
    _k_block = 1 << 30   # one pass (see _k_block)
# Intel's forward crossover: from the serial threshold (below it BLAS runs on the calling
# thread, no region) up to this many multiply-adds, above which BLAS's blocking of the
# larger products wins again.
_INTEL_FORWARD_MAX_MACS = 100e6
# ... and down to this many, or to _SERIAL_MACS with 16 rows and more: a few rows pack the
# whole kernel for little work (Intel, 2 threads, relu forward, us microkernel / BLAS bands:
# 4x512->512 71 / 15, 8x512->256 50 / 15, 1x4096->256 324 / 145; the 30-layer model's step
# at 16-64 rows, 1-4M multiply-adds a product, 1-8% faster on the microkernel).
_INTEL_FORWARD_MIN_MACS = 6e6


def _micro_rule(op, dtype, m, n, k, intel=None):
    """Where the microkernel beats OpenBLAS by wall time on this machine (intel: the rule
    of the Intel kind, True, or of the others, False, instead).

    Measured on a quiet AMD EPYC (Zen 4, 2 threads, medians of 100-200 calls, the two paths
    alternated; microseconds, BLAS / microkernel):
      forward          64x784->512 394-524 / 464-512; 128x784->512 655-859 / 748-752;
                       64x512->256 210 / 267-326; 64x1024->1024 877 / 897;
                       128x2048->1024 2960-3050 / 2930
      backward_weight  64x784x512 335-339 / 423-427; 128x512x256 243 / 340;
                       32x1024x1024 524 / 594-684; 128x1024x1024 1580-1635 / 1576
      backward_input   64: 784<-512 358 / 528; 128: 512<-256 250 / 384;
                       32: 1024<-1024 764-770 / 571-616; 128: 1024<-1024 1819 / 2005;
                       8: 4096<-4096 8000 / 3073
    So there only the input gradient of a small batch through wide layers, where OpenBLAS's
    small-M kernel falls behind, takes the microkernel. (Timed by CPU seconds on a machine
    shared by 8 sessions, bench/results/dense-amd-epyc-2t.json, the microkernel looked level
    or ahead at the MLP's widths; by wall time alone it is not: it pays for packing b and
    two parallel regions per call.)
    On an Intel Xeon (AVX-512, 2 threads, keep-warm spinners on as in training, each call
    after 50 us of other work, medians of 5 alternated rounds of 41 calls; forward with
    relu, BLAS / microkernel): 128x784->512 578 / 540; 128x512->256 209 / 178; 64x784->512
    353 / 301; 64x512->256 129 / 111; 128x256->256 137 / 114; 256x256->256 186 / 175;
    32x1024->1024 615 / 583; 128x4096->128 802 / 767; 1024x128->64 114 / 108;
    128x1024->1024 1292 / 1282; 512x784->512 1646 / 1699; 128x2048->1024 2577 / 2713;
    under 6M multiply-adds 128x256->10 15 / 48, 256x512->10 60 / 81. The input and kernel
    gradients tied or lost there (128x784x512: 506 / 541 and 439 / 429). So on Intel the
    forward from _INTEL_FORWARD_MIN_MACS (from _SERIAL_MACS with 16 rows or more) to
    _INTEL_FORWARD_MAX_MACS multiply-adds takes it too.
    float64 stays on BLAS (the training paths are float32). PYNN_DENSE_GEMM=micro forces
    the microkernel everywhere."""
    if dtype != np.float32:
        return False
    if intel is None:
        intel = _INTEL and pynn_mk_level() == 2
    if op == "backward_input":
        return 8 <= m <= 64 and n >= 1024 and k >= 1024
    if op == "forward" and intel:
        macs = <double>m * n * k
        return macs <= _INTEL_FORWARD_MAX_MACS and (
            macs >= _INTEL_FORWARD_MIN_MACS or (macs >= _SERIAL_MACS and m >= 16))
    return False


def _micro_gemm(a, Py_ssize_t row_stride, Py_ssize_t sat, b, bint b_transposed,
                floating[:, ::1] c, Py_ssize_t k, bias, floating[:, ::1] y, int act,
                double alpha, floating[:, ::1] out_t=None):
    """c = a @ b through _micro_region; a, b any arrays of c's dtype whose strides the
    caller described (see _micro_region)."""
    cdef Py_ssize_t m = c.shape[0], n = c.shape[1]
    cdef const floating[::1] av = a.reshape(-1)
    cdef const floating[::1] bv = b.reshape(-1)
    cdef const floating[::1] biasv
    cdef floating[::1] packed
    cdef const floating* bptr = NULL
    cdef floating* yptr = NULL
    cdef floating* out_t_ptr = NULL
    cdef Py_ssize_t ldb = b.shape[1]
    cdef floating[::1] tail, tail_bias
    cdef Py_ssize_t nc = _panel(<floating*>NULL)
    if bias is not None:
        biasv = bias
        bptr = &biasv[0]
    if y is not None:
        yptr = &y[0, 0]
    if out_t is not None:
        out_t_ptr = &out_t[0, 0]
    cdef Py_ssize_t panels = (n + nc - 1) // nc
    buf, (packed, tail, tail_bias) = take(np.float32 if floating is float else np.float64,
                                          (k * panels * nc,), (m * nc,), (nc,))
    try:
        with nogil:
            _micro_region(&av[0], row_stride, sat, &bv[0], ldb, b_transposed, &c[0, 0], m, n,
                          k, &packed[0], &tail[0], &tail_bias[0], bptr, yptr, act,
                          <floating>alpha, out_t_ptr)
    finally:
        give(buf)


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
    _forward_into(x, kernel, bias, z, y, act, float(alpha))
    return y, (z if keep_z else None)


def dense_backward_input(dz, kernel):
    """dx = dz @ kernel.T, shape (N, C)."""
    dz, kernel = operands.dense_backward_input(HOST, dz, kernel)
    dx = np.empty((dz.shape[0], kernel.shape[0]), dtype=dz.dtype)
    if dx.size and dz.shape[1] and _micro_wins("backward_input", dz.dtype, dx.shape[0],
                                               dx.shape[1], dz.shape[1]):
        # dx.T = kernel @ dz.T: the kernel is read in place and only dz is packed (dz @
        # kernel.T would pack kernel.T, a transposing pass over the weights: 39 against 85
        # GFLOP/s at 64 x 784 <- 512); each tile of dx.T goes to dx while in cache.
        with scratch(dx.dtype, (dx.shape[1], dx.shape[0])) as (dx_t,):
            _micro_gemm(kernel, kernel.shape[1], 1, dz, True, dx_t, dz.shape[1], None, None, 0,
                        0.0, dx)
        return dx
    if _gemm_one_region(False, True, dz, kernel, dx, dz.shape[1], None, None, 0, 0.0):
        return dx
    _gemm(False, True, dz, kernel, dx, dz.shape[1])
    return dx


def dense_backward_input_activation(dz, kernel, z, y, activation, alpha=0.0, use_bias=True):
    """(dz_below, dbias_below or None): bias_activation_backward of dense_backward_input(dz,
    kernel) through the layer below's activation (z, y its pre-activation and output), the
    same bits. relu with a bias, where the product runs on BLAS on the calling thread or in
    column bands (wider than tall), makes dz_below in place of the input gradient and the
    bias sums band by band while the band is in cache (activation_bias_backward's tiles'
    sums: native/_activation.pxd); elsewhere the two ops in turn."""
    name, a, dz, kernel, z, y = operands.dense_backward_input_activation(
        HOST, dz, kernel, z, y, activation, alpha)
    rows, cols, k = dz.shape[0], kernel.shape[0], dz.shape[1]
    if (name == "relu" and use_bias and rows and cols and k and _HAVE_BLAS_THREADS
            and not _micro_wins("backward_input", dz.dtype, rows, cols, k)
            and (cols > rows or <double>rows * cols * k < _SERIAL_MACS)):
        return _relu_bias_below(dz, kernel, y)
    return dense_backward_input_activation_composed(_OPS, dz, kernel, z, y, name, a, use_bias)


def _relu_bias_below(const floating[:, ::1] dz, const floating[:, ::1] kernel,
                     const floating[:, ::1] y):
    """dense_backward_input_activation's fused road (relu, a bias) on checked operands."""
    cdef int rows = dz.shape[0], cols = kernel.shape[0], k = dz.shape[1]
    cdef Py_ssize_t cbw, ncb, nrb, rb_rows
    cdef _BandsJob job
    cdef int threads = omp_get_max_threads()
    dtype = np.float32 if floating is float else np.float64
    g = np.empty((rows, cols), dtype=dtype)
    db = np.empty(cols, dtype=dtype)
    cdef floating[:, ::1] gv = g
    cdef floating[::1] dbv = db
    fused_tiling(rows, cols, ACT_RELU, &cbw, &ncb, &nrb, &rb_rows)
    partial = np.empty((nrb, cols), dtype=np.float64)
    cdef double[:, ::1] pv = partial
    cdef bint serial = <double>rows * cols * k < _SERIAL_MACS
    job.ta, job.tb, job.is_double = False, True, floating is double
    job.m, job.n, job.k, job.lda, job.ldb, job.ldc = rows, cols, k, k, k, cols
    job.act, job.alpha = ACT_LINEAR, 0.0
    job.bands = min(_BANDS, (cols + 15) // 16)
    job.a, job.b, job.c, job.bias, job.y = &dz[0, 0], &kernel[0, 0], &gv[0, 0], NULL, NULL
    job.y_below, job.partial = &y[0, 0], &pv[0, 0]
    job.cbw, job.nrb, job.rb_rows = cbw, nrb, rb_rows
    _blas_solo_enter()
    try:
        with nogil:
            if serial:   # dense_backward_input's one GEMM on this thread (see _SERIAL_MACS)
                gemm_rowmajor(False, True, rows, cols, k, <floating>1, &dz[0, 0], k,
                              &kernel[0, 0], k, <floating>0, &gv[0, 0], cols)
                _relu_bias_columns(&gv[0, 0], &y[0, 0], &pv[0, 0], rows, cols, 0, cols, cbw,
                                   nrb, rb_rows)
            else:        # its column bands, each band's relu and sums right after it
                pynn_team_for(job.bands, 1, threads, _bands_items, &job)
            sum_row_blocks(&pv[0, 0], nrb, cols, &dbv[0])
    finally:
        _blas_solo_exit()
    return g, db


def dense_backward_weight(x, dz):
    """dkernel = x.T @ dz, shape (C, U)."""
    x, dz = operands.dense_backward_weight(HOST, x, dz)
    dw = np.empty((x.shape[1], dz.shape[1]), dtype=x.dtype)
    if dw.size and x.shape[0] and _micro_wins("backward_weight", x.dtype, dw.shape[0],
                                              dw.shape[1], x.shape[0]):
        _micro_gemm(x, 1, x.shape[1], dz, False, dw, x.shape[0], None, None, 0, 0.0)
        return dw
    if _gemm_one_region(True, False, x, dz, dw, x.shape[0], None, None, 0, 0.0):
        return dw
    _gemm(True, False, x, dz, dw, x.shape[0])
    return dw


ctypedef struct _ColumnSumsJob:
    bint is_double
    const void* a
    void* out
    Py_ssize_t rows, cols


cdef inline void _column_block(const floating* a, floating* out, Py_ssize_t rows,
                               Py_ssize_t cols, Py_ssize_t blk) noexcept nogil:
    """Columns [64 blk, 64 blk + 64) summed in double, as activation_bias_backward sums a
    layer's bias gradient: float32 sums drifted 75 ulp at 32 Ki rows (a conv layer's
    N*H*W) and 200 at 256 Ki, so a linear layer's bias gradient was the least accurate."""
    cdef double acc[64]
    cdef Py_ssize_t j, j0 = blk * 64, w = min(64, cols - blk * 64)
    for j in range(w):
        acc[j] = 0
    add_rows_double(a + j0, acc, rows, w, cols)
    for j in range(w):
        out[j0 + j] = <floating>acc[j]


cdef void _column_sums_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _ColumnSumsJob* k = <_ColumnSumsJob*>ctx
    cdef long blk
    for blk in range(begin, end):
        if k.is_double:
            _column_block(<const double*>k.a, <double*>k.out, k.rows, k.cols, blk)
        else:
            _column_block(<const float*>k.a, <float*>k.out, k.rows, k.cols, blk)


def _column_sums(const floating[:, ::1] a, floating[::1] out):
    # Each thread owns a block of 64 columns, so the sum order is fixed: bit-reproducible for
    # any thread count. Blocks on pynn's worker team (native/_team.h).
    cdef Py_ssize_t rows = a.shape[0], cols = a.shape[1]
    cdef Py_ssize_t nblk = (cols + 63) // 64
    cdef int threads = omp_get_max_threads() if rows * cols >= TEAM_PARALLEL_MIN else 1
    cdef _ColumnSumsJob job
    job.is_double, job.a, job.out, job.rows, job.cols = floating is double, &a[0, 0], \
        &out[0], rows, cols
    with nogil:
        pynn_team_for(nblk, 1, threads, _column_sums_job, &job)


def bias_backward(dz):
    """Sum of dz over every axis but the last."""
    dz = operands.bias_backward(HOST, dz)
    cols = dz.shape[dz.ndim - 1]
    flat = dz.reshape(-1, cols) if cols else dz.reshape(0, 0)
    out = np.zeros(cols, dtype=dz.dtype)
    if flat.shape[0] and cols:
        _column_sums(flat, out)
    return out


# The ops dense_backward_input_activation composes where it does not fuse.
_OPS = SimpleNamespace(dense_backward_input=dense_backward_input, bias_backward=bias_backward,
                       activation_backward=activation_backward,
                       activation_bias_backward=activation_bias_backward)
