"""bfloat16 mixed-precision kernels (issue 17): Dense and Conv2D under Keras's mixed_bfloat16.

Legend: N batch, C input features / channels, U units, H/W spatial, F filters.

Each ``bf16_<op>`` has the contract of its float32 twin ``<op>`` (dense.pyx, conv.pyx) with
the GEMM operands rounded to bfloat16 (round to nearest, ties to even; ``bf16_round``) and
every product summed in float32; bias, activation and outputs stay float32. That is the
whole numeric definition the tests check ("float32 accumulation of bf16-rounded operands").

The products run on ``_bf16gemm.h``: operands converted to bf16 pairs along the reduction
axis (padded to even with zeros; vcvtne2ps2bf16 where the CPU has AVX512_BF16) and a
vdpbf16ps microkernel, both chosen at import by __builtin_cpu_supports; elsewhere a portable C
microkernel of the same numerics (the same bits for normal numbers; the instructions read
subnormals as zeros). ``PYNN_BF16_KERNEL=portable`` or ``_select_kernel(portable=True)``
forces it (tests). Measured on Zen 4 (2 threads), the 128 x 784 x 512 forward GEMM took
0.60 ms on vdpbf16ps, 1.17 ms on the portable kernel (gcc vectorizes it for AVX-512 there)
and 1.67 ms in float32 sgemm; a CPU without AVX-512 runs the portable kernel slower than its
float32 GEMM. No AMX path: no machine pynn is tested on has AMX.

Parallel axes: Dense converts by blocks of rows and multiplies by tiles of the output
(prange over tiles, each tile one microkernel call over the whole reduction, so the bits
never depend on the thread count). Conv2D runs one sample per thread (im2col straight into
the bf16 rows, in chunks of rows); its kernel gradient sums per-group partials over a fixed
number of sample groups (the machine's cores, not the thread count), then adds the groups in
order. Convs of fewer than NARROW_CHANNELS input channels round and run conv.pyx's float32
kernels instead.
"""
import os

import numpy as np

from cython.parallel cimport prange
from libc.stdint cimport uint16_t, uint32_t
from _activation cimport bias_activation_rows
from _openmp cimport omp_get_max_threads, omp_get_thread_num

from pynn._config import usable_cores
from pynn._native import conv as float32_conv
from pynn.backend.api import ACTIVATIONS, ACTIVATIONS_NEEDING_INPUT
from pynn.backend.operands import bf16 as operands
from pynn.backend.operands.common import HOST

cdef extern from "_bf16gemm.h" nogil:
    enum:
        PYNN_BF16_MR
        PYNN_BF16_NR
    ctypedef struct pynn_bf16_conv_geom:
        int h, w, c, kh, kw, sh, sw, dh, dw, pad_top, pad_left, oh, ow
    float pynn_bf16_round_f32(float f)
    void pynn_bf16_to_rows(const float* src, long lds, int rows, int k, uint32_t* dst,
                           long ldd)
    void pynn_bf16_to_pairs(const float* src, long lds, int k, int n, uint32_t* dst, long ldd)
    void pynn_bf16_transpose(const uint32_t* src, long lds, int rows, int cols, uint32_t* dst,
                             long ldd)
    int pynn_bf16_tiles(int m, int n)
    void pynn_bf16_gemm_tile(int m, int n, int kp, const uint32_t* a, long a_rs, long a_qs,
                             const uint32_t* b, long ldb, float* c, long ldc, int t,
                             int accumulate)
    void pynn_bf16_gemm_serial(int m, int n, int kp, const uint32_t* a, long a_rs, long a_qs,
                               const uint32_t* b, long ldb, float* c, long ldc, int accumulate)
    void pynn_bf16_im2col_rows(const float* x, const pynn_bf16_conv_geom* g, int m0, int rows,
                               uint32_t* dst, long kp)
    void pynn_bf16_im2col_pairs(const float* x, const pynn_bf16_conv_geom* g, int m0, int rows,
                                uint32_t* dst, long ldd, uint16_t* tmp)
    void pynn_bf16_col2im(const float* dcols, const pynn_bf16_conv_geom* g, int m0, int rows,
                          float* dx)
    const char* pynn_bf16_select(int portable)

cdef enum:
    # Elements below which an op stays on one thread (the wake-up costs more than the work).
    PARALLEL_MIN = 32768
    # Rows of one conv im2col chunk: bounds the per-thread buffers to CHUNK_ROWS * K bf16
    # values whatever the image size; even, so pairs never straddle two chunks.
    CHUNK_ROWS = 256
    # Rows (or pair rows) per task of the parallel conversions.
    CONVERT_BLOCK = 16
    # Input channels below which a conv's im2col rows are too short for the bf16 path to pay
    # (a first layer's 3: 3-4x slower than float32 on Zen 4): such convs round their operands
    # (bf16_round) and run the float32 kernels, the same numerics (float32 sums of bf16
    # values) in another order.
    NARROW_CHANNELS = 8

MR, NR = PYNN_BF16_MR, PYNN_BF16_NR  # the microkernel's tile (tests)
cdef int _GROUPS = min(16, usable_cores())

KERNEL = None


def _select_kernel(portable=False):
    """Chooses the microkernel (vdpbf16ps where the CPU has AVX512_BF16, unless ``portable``)
    and returns its name; the test hook that pretends the feature is missing."""
    global KERNEL
    KERNEL = pynn_bf16_select(1 if portable else 0).decode()
    return KERNEL


_select_kernel(os.environ.get("PYNN_BF16_KERNEL", "").lower() == "portable")


cdef inline int _panels(int n, int width) noexcept nogil:
    return (n + width - 1) // width


cdef inline long _width(int n) noexcept nogil:
    """Row stride (words) of a pairs-format operand of n columns: whole 32-column panels."""
    return <long>_panels(n, PYNN_BF16_NR) * PYNN_BF16_NR


def _round(const float[::1] x, float[::1] y):
    cdef Py_ssize_t n = x.shape[0], i
    with nogil:
        for i in prange(n, schedule="static", use_threads_if=n >= PARALLEL_MIN):
            y[i] = pynn_bf16_round_f32(x[i])


def bf16_round(x):
    """float32 x with every value rounded to the nearest bfloat16 (ties to even); NaN stays
    NaN (quiet), infinities stay, values past bf16's range become infinities."""
    x = operands.bf16_round(HOST, x)
    y = np.empty(x.shape, np.float32)
    if x.size:
        _round(x.reshape(-1), y.reshape(-1))
    return y


def _rows(a):
    """A C-contiguous (m, k) float32 array in the rows format: uint32 (m, ceil(k / 2))."""
    cdef const float[:, ::1] av = a
    cdef int m = a.shape[0], k = a.shape[1], kp = (k + 1) // 2, blk
    out = np.empty((m, kp), np.uint32)
    cdef uint32_t[:, ::1] ov = out
    if m == 0 or k == 0:
        return out
    with nogil:
        for blk in prange(_panels(m, CONVERT_BLOCK), schedule="static",
                          use_threads_if=<long>m * k >= PARALLEL_MIN):
            pynn_bf16_to_rows(&av[blk * CONVERT_BLOCK, 0], k,
                              min(CONVERT_BLOCK, m - blk * CONVERT_BLOCK), k,
                              &ov[blk * CONVERT_BLOCK, 0], kp)
    return out


def _pairs(b):
    """A C-contiguous (k, n) float32 array in the pairs format: uint32 (ceil(k / 2),
    _width(n))."""
    cdef const float[:, ::1] bv = b
    cdef int k = b.shape[0], n = b.shape[1], kp = (k + 1) // 2, blk, q0
    cdef long ld = _width(n)
    out = np.empty((kp, ld), np.uint32)
    cdef uint32_t[:, ::1] ov = out
    if k == 0 or n == 0:
        return out
    with nogil:
        for blk in prange(_panels(kp, CONVERT_BLOCK), schedule="static",
                          use_threads_if=<long>n * k >= PARALLEL_MIN):
            q0 = blk * CONVERT_BLOCK
            pynn_bf16_to_pairs(&bv[2 * q0, 0], n, min(2 * CONVERT_BLOCK, k - 2 * q0), n,
                               &ov[q0, 0], ld)
    return out


def _transposed_pairs(w):
    """The pairs format of w.T for a C-contiguous (r, c) float32 w: uint32 (ceil(c / 2),
    _width(r)), from w's rows format."""
    rows = _rows(w)
    cdef const uint32_t[:, ::1] rv = rows
    cdef int r = w.shape[0], cp = rows.shape[1], blk
    cdef long ld = _width(r)
    out = np.empty((cp, ld), np.uint32)
    cdef uint32_t[:, ::1] ov = out
    if r == 0 or cp == 0:
        return out
    with nogil:
        for blk in prange(_panels(cp, CONVERT_BLOCK), schedule="static",
                          use_threads_if=<long>r * cp >= PARALLEL_MIN):
            pynn_bf16_transpose(&rv[0, blk * CONVERT_BLOCK], cp, r,
                                min(CONVERT_BLOCK, cp - blk * CONVERT_BLOCK),
                                &ov[blk * CONVERT_BLOCK, 0], ld)
    return out


def _gemm(a, long a_rs, long a_qs, int m, b, int n):
    """c (m, n) float32 of a bf16 A operand (words a, a(r, q) at r * a_rs + q * a_qs) and a
    pairs-format B (b, kp rows): one microkernel call per tile, tiles split over threads."""
    cdef int kp = b.shape[0], t, tiles = pynn_bf16_tiles(m, n)
    cdef long ldb = b.shape[1]
    c = np.empty((m, n), np.float32)
    if m == 0 or n == 0:
        return c
    if kp == 0:
        c[...] = 0
        return c
    cdef const uint32_t[:, ::1] av = a
    cdef const uint32_t[:, ::1] bv = b
    cdef float[:, ::1] cv = c
    with nogil:
        for t in prange(tiles, schedule="static",
                        use_threads_if=<long>m * n * kp >= PARALLEL_MIN * 4):
            pynn_bf16_gemm_tile(m, n, kp, &av[0, 0], a_rs, a_qs, &bv[0, 0], ldb, &cv[0, 0], n,
                                t, 0)
    return c


def _bias_act(z, bias, act_name, double alpha):
    """(y, z) of z += bias, y = act(z), as dense_forward returns them."""
    cdef float[:, ::1] zv = z
    cdef const float[::1] bv
    cdef const float* bptr = NULL
    cdef int act = ACTIVATIONS.index(act_name)
    keep_z = act_name in ACTIVATIONS_NEEDING_INPUT
    y = np.empty_like(z) if keep_z else z
    cdef float[:, ::1] yv = y
    if bias is not None:
        bv = bias
        bptr = &bv[0]
    if z.shape[0] and z.shape[1]:
        with nogil:
            bias_activation_rows(&zv[0, 0], &yv[0, 0], bptr, zv.shape[0], zv.shape[1], act,
                                 <float>alpha)
    return y, (z if keep_z else None)


def bf16_dense_forward(x, kernel, bias, activation="linear", alpha=0.0):
    """y = act(bf16(x) @ bf16(kernel) + bias) -> (y, z) as dense_forward."""
    act_name, alpha, x, kernel, bias = operands.bf16_dense_forward(HOST, x, kernel, bias,
                                                                   activation, alpha)
    a = _rows(x)
    z = _gemm(a, a.shape[1], 1, x.shape[0], _pairs(kernel), kernel.shape[1])
    return _bias_act(z, bias, act_name, alpha)


def bf16_dense_backward_input(dz, kernel):
    """dx = bf16(dz) @ bf16(kernel).T, shape (N, C)."""
    dz, kernel = operands.bf16_dense_backward_input(HOST, dz, kernel)
    a = _rows(dz)
    return _gemm(a, a.shape[1], 1, dz.shape[0], _transposed_pairs(kernel), kernel.shape[0])


def bf16_dense_backward_weight(x, dz):
    """dkernel = bf16(x).T @ bf16(dz), shape (C, U): x's pairs format read as the
    transposed A operand."""
    x, dz = operands.bf16_dense_backward_weight(HOST, x, dz)
    a = _pairs(x)
    return _gemm(a, 1, a.shape[1], x.shape[1], _pairs(dz), dz.shape[1])


cdef pynn_bf16_conv_geom _geom(g):
    cdef pynn_bf16_conv_geom c
    c.h, c.w, c.c, c.kh, c.kw = g["H"], g["W"], g["C"], g["KH"], g["KW"]
    c.sh, c.sw, c.dh, c.dw = g["SH"], g["SW"], g["DH"], g["DW"]
    c.pad_top, c.pad_left, c.oh, c.ow = g["PT"], g["PL"], g["HO"], g["WO"]
    return c


def bf16_conv2d_forward(x, kernel, bias, strides=(1, 1), padding="valid",
                        dilation_rate=(1, 1), activation="linear", alpha=0.0):
    """(y, z) as conv2d_forward, the product on bf16-rounded x and kernel."""
    act_name, alpha, x, kernel, bias, g = operands.bf16_conv2d_forward(
        HOST, x, kernel, bias, strides, padding, dilation_rate, activation, alpha)
    if g["C"] < NARROW_CHANNELS:
        return float32_conv.conv2d_forward(bf16_round(x), bf16_round(kernel), bias, strides,
                                           padding, dilation_rate, act_name, alpha)
    cdef pynn_bf16_conv_geom geom = _geom(g)
    cdef int n = g["N"], f = g["F"], m = g["HO"] * g["WO"]
    cdef int k = g["KH"] * g["KW"] * g["C"], kp = (k + 1) // 2
    cdef long a_step = <long>CHUNK_ROWS * kp
    z = np.empty((n, g["HO"], g["WO"], f), np.float32)
    if z.size == 0:
        return z, (z if act_name in ACTIVATIONS_NEEDING_INPUT else None)
    if k == 0:
        z[...] = 0
        return _bias_act(z.reshape(-1, f), bias, act_name, alpha)
    b = _pairs(kernel.reshape(k, f))
    ap = np.empty(omp_get_max_threads() * a_step, np.uint32)
    cdef const float[:, :, :, ::1] xv = x
    cdef float[:, :, :, ::1] zv = z
    cdef uint32_t[::1] apv = ap
    cdef const uint32_t[:, ::1] bv = b
    cdef long ldb = b.shape[1]
    cdef int s, m0, rows, ci
    cdef uint32_t* abuf
    with nogil:
        for s in prange(n, schedule="static", use_threads_if=n > 1):
            abuf = &apv[0] + omp_get_thread_num() * a_step
            for ci in range(_panels(m, CHUNK_ROWS)):
                m0 = ci * CHUNK_ROWS
                rows = min(CHUNK_ROWS, m - m0)
                pynn_bf16_im2col_rows(&xv[s, 0, 0, 0], &geom, m0, rows, abuf, kp)
                pynn_bf16_gemm_serial(rows, f, kp, abuf, kp, 1, &bv[0, 0], ldb,
                                      &zv[s, 0, 0, 0] + <long>m0 * f, f, 0)
    y, z2 = _bias_act(z.reshape(-1, f), bias, act_name, alpha)
    return y.reshape(z.shape), (None if z2 is None else z2.reshape(z.shape))


def bf16_conv2d_backward_input(dz, kernel, input_shape, strides=(1, 1), padding="valid",
                               dilation_rate=(1, 1)):
    """dx (N, H, W, C) as conv2d_backward_input, from bf16-rounded dz and kernel:
    dcols = dz @ kernel.T by chunks of rows, each scattered back at once (col2im)."""
    dz, kernel, input_shape, g = operands.bf16_conv2d_backward_input(
        HOST, dz, kernel, input_shape, strides, padding, dilation_rate)
    if g["C"] < NARROW_CHANNELS:
        return float32_conv.conv2d_backward_input(bf16_round(dz), bf16_round(kernel),
                                                  input_shape, strides, padding, dilation_rate)
    cdef pynn_bf16_conv_geom geom = _geom(g)
    cdef int n = g["N"], f = g["F"], m = g["HO"] * g["WO"]
    cdef int k = g["KH"] * g["KW"] * g["C"], fp = (f + 1) // 2
    cdef long a_step = <long>CHUNK_ROWS * fp, c_step = <long>CHUNK_ROWS * k
    cdef long x_step = <long>g["H"] * g["W"] * g["C"]
    dx = np.zeros(input_shape, np.float32)
    if dx.size == 0 or dz.size == 0:
        return dx
    b = _transposed_pairs(kernel.reshape(k, f))
    threads = omp_get_max_threads()
    ap = np.empty(threads * a_step, np.uint32)
    cols = np.empty(threads * c_step, np.float32)
    cdef const float[:, :, :, ::1] dzv = dz
    cdef float[::1] dxv = dx.reshape(-1)
    cdef uint32_t[::1] apv = ap
    cdef const uint32_t[:, ::1] bv = b
    cdef long ldb = b.shape[1]
    cdef float[::1] colv = cols
    cdef int s, m0, rows, tid, ci
    cdef uint32_t* abuf
    cdef float* cbuf
    with nogil:
        for s in prange(n, schedule="static", use_threads_if=n > 1):
            tid = omp_get_thread_num()
            abuf = &apv[0] + tid * a_step
            cbuf = &colv[0] + tid * c_step
            for ci in range(_panels(m, CHUNK_ROWS)):
                m0 = ci * CHUNK_ROWS
                rows = min(CHUNK_ROWS, m - m0)
                pynn_bf16_to_rows(&dzv[s, 0, 0, 0] + <long>m0 * f, f, rows, f, abuf, fp)
                pynn_bf16_gemm_serial(rows, k, fp, abuf, fp, 1, &bv[0, 0], ldb, cbuf, k, 0)
                pynn_bf16_col2im(cbuf, &geom, m0, rows, &dxv[0] + s * x_step)
    return dx


def bf16_conv2d_backward_weight(x, dz, kernel_shape, strides=(1, 1), padding="valid",
                                dilation_rate=(1, 1)):
    """dkernel (KH, KW, C, F) as conv2d_backward_weight, from bf16-rounded x and dz:
    im2col.T @ dz per sample, by chunks of rows in the pairs format."""
    x, dz, kernel_shape, g = operands.bf16_conv2d_backward_weight(
        HOST, x, dz, kernel_shape, strides, padding, dilation_rate)
    if g["C"] < NARROW_CHANNELS:
        return float32_conv.conv2d_backward_weight(bf16_round(x), bf16_round(dz), kernel_shape,
                                                   strides, padding, dilation_rate)
    cdef pynn_bf16_conv_geom geom = _geom(g)
    cdef int n = g["N"], f = g["F"], m = g["HO"] * g["WO"]
    cdef int k = g["KH"] * g["KW"] * g["C"]
    cdef int groups = max(1, min(n, _GROUPS))
    cdef long lda = _width(k), ldb = _width(f)
    cdef long a_step = CHUNK_ROWS // 2 * lda, b_step = CHUNK_ROWS // 2 * ldb
    cdef long t_step = 2 * (k + 1)
    if n == 0 or m == 0 or k == 0 or f == 0:
        return np.zeros(kernel_shape, np.float32)
    ap = np.empty(groups * a_step, np.uint32)
    bp = np.empty(groups * b_step, np.uint32)
    tmp = np.empty(groups * t_step, np.uint16)
    partial = np.zeros((groups, k, f), np.float32)
    cdef const float[:, :, :, ::1] xv = x
    cdef const float[:, :, :, ::1] dzv = dz
    cdef uint32_t[::1] apv = ap
    cdef uint32_t[::1] bpv = bp
    cdef uint16_t[::1] tv = tmp
    cdef float[:, :, ::1] wv = partial
    cdef int grp, s, m0, rows, ci
    cdef uint32_t* abuf
    cdef uint32_t* bbuf
    with nogil:
        for grp in prange(groups, schedule="static"):
            abuf = &apv[0] + grp * a_step
            bbuf = &bpv[0] + grp * b_step
            for s in range(grp * n // groups, (grp + 1) * n // groups):
                for ci in range(_panels(m, CHUNK_ROWS)):
                    m0 = ci * CHUNK_ROWS
                    rows = min(CHUNK_ROWS, m - m0)
                    pynn_bf16_im2col_pairs(&xv[s, 0, 0, 0], &geom, m0, rows, abuf, lda,
                                           &tv[0] + grp * t_step)
                    pynn_bf16_to_pairs(&dzv[s, 0, 0, 0] + <long>m0 * f, f, rows, f, bbuf, ldb)
                    pynn_bf16_gemm_serial(k, f, (rows + 1) // 2, abuf, 1, lda, bbuf, ldb,
                                          &wv[grp, 0, 0], f, 1)
    return partial.sum(axis=0).reshape(kernel_shape) if groups > 1 else \
        partial[0].reshape(kernel_shape)
