"""bfloat16 mixed-precision kernels (issue 17): Dense and Conv2D under Keras's mixed_bfloat16.

Legend: N batch, C input features / channels, U units, H/W spatial, F filters.

Each ``bf16_<op>`` has the contract of its float32 twin ``<op>`` (dense.pyx, conv.pyx) with
the GEMM operands rounded to bfloat16 (round to nearest, ties to even; ``bf16_round``) and
every product summed in float32; bias, activation and outputs stay float32. That is the
whole numeric definition the tests check ("float32 accumulation of bf16-rounded operands").

The products run on ``_bf16gemm.h``: operands packed as bf16 pairs along the reduction axis
(padded to even with zeros) and a vdpbf16ps microkernel where the CPU has AVX512_BF16, chosen
at import by __builtin_cpu_supports; elsewhere a portable C microkernel of the same numerics
(same bits for normal numbers), slower than float32. ``PYNN_BF16_KERNEL=portable`` or
``_select_kernel(portable=True)`` forces it (tests).

Parallel axes: Dense packs and multiplies by tiles of the output (prange over tiles, each
tile one microkernel call over the whole reduction, so the bits never depend on the thread
count). Conv2D runs one sample per thread (im2col straight into the packed layout, in chunks
of rows); its kernel gradient sums per-group partials over a fixed number of sample groups
(the machine's cores, not the thread count), then adds the groups in order.
"""
import os

import numpy as np

from cython.parallel cimport prange
from libc.stdint cimport uint16_t, uint32_t
from libc.string cimport memset
from _activation cimport bias_activation_rows
from _openmp cimport omp_get_max_threads, omp_get_thread_num

from pynn._config import usable_cores
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
    void pynn_bf16_pack_a(const float* a, long sm, long sk, int rows, int k, uint16_t* out)
    void pynn_bf16_pack_b(const float* b, long sk, long sn, int cols, int k, uint16_t* out)
    void pynn_bf16_gemm_tile(int m, int n, int kp, const uint32_t* ap, const uint32_t* bp,
                             float* c, long ldc, int ip, int jp, int accumulate)
    void pynn_bf16_gemm_serial(int m, int n, int kp, const uint32_t* ap, const uint32_t* bp,
                               float* c, long ldc, int accumulate)
    void pynn_bf16_pack_a_conv(const float* x, const pynn_bf16_conv_geom* g, int m0, int rows,
                               uint16_t* out)
    void pynn_bf16_pack_a_conv_t(const float* x, const pynn_bf16_conv_geom* g, int i0,
                                 int rows, uint16_t* out)
    void pynn_bf16_col2im(const float* dcols, const pynn_bf16_conv_geom* g, int m0, int rows,
                          float* dx)
    const char* pynn_bf16_select(int portable)

cdef enum:
    # Elements below which an op stays on one thread (the wake-up costs more than the work).
    PARALLEL_MIN = 32768
    # Rows of one conv im2col chunk: bounds the packed buffer to CHUNK_ROWS * K bf16 values
    # per thread whatever the image size; a multiple of PYNN_BF16_MR.
    CHUNK_ROWS = 256

# Sample groups of the conv kernel gradient: fixed by the machine, so the sum's order (and
# its bits) does not change with the thread count.
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


cdef void _gemm(const float* a, long sam, long sak, const float* b, long sbk, long sbn, int m,
                int n, int k, float* c, uint16_t* ap, uint16_t* bp) noexcept nogil:
    """c (m, n) = a (m, k) @ b (k, n), strided operands, packed into ap / bp first."""
    cdef int kp = (k + 1) // 2, mp = _panels(m, PYNN_BF16_MR), np_ = _panels(n, PYNN_BF16_NR), p, t
    cdef bint threads = <long>m * n * k >= PARALLEL_MIN * 8
    for p in prange(mp, schedule="static", use_threads_if=threads):
        pynn_bf16_pack_a(a + p * PYNN_BF16_MR * sam, sam, sak, min(PYNN_BF16_MR, m - p * PYNN_BF16_MR), k,
                         ap + <long>p * kp * PYNN_BF16_MR * 2)
    for p in prange(np_, schedule="static", use_threads_if=threads):
        pynn_bf16_pack_b(b + p * PYNN_BF16_NR * sbn, sbk, sbn, min(PYNN_BF16_NR, n - p * PYNN_BF16_NR), k,
                         bp + <long>p * kp * PYNN_BF16_NR * 2)
    # Row panels inner: consecutive tiles of one thread share a B panel.
    for t in prange(mp * np_, schedule="static", use_threads_if=threads):
        pynn_bf16_gemm_tile(m, n, kp, <uint32_t*>ap, <uint32_t*>bp, c, n, t % mp, t // mp, 0)


def _matmul(a, b, bint trans_a, bint trans_b):
    """op(a) @ op(b) on the bf16 kernel; a, b C-contiguous 2-D float32."""
    cdef const float[:, ::1] av = a
    cdef const float[:, ::1] bv = b
    cdef int m = a.shape[1] if trans_a else a.shape[0]
    cdef int k = a.shape[0] if trans_a else a.shape[1]
    cdef int n = b.shape[0] if trans_b else b.shape[1]
    cdef long lda = a.shape[1], ldb = b.shape[1]
    c = np.empty((m, n), np.float32)
    cdef float[:, ::1] cv = c
    if m == 0 or n == 0:
        return c
    ap = np.empty(_panels(m, PYNN_BF16_MR) * ((k + 1) // 2) * PYNN_BF16_MR * 2 + 1, np.uint16)
    bp = np.empty(_panels(n, PYNN_BF16_NR) * ((k + 1) // 2) * PYNN_BF16_NR * 2 + 1, np.uint16)
    cdef uint16_t[::1] apv = ap
    cdef uint16_t[::1] bpv = bp
    with nogil:
        _gemm(&av[0, 0], 1 if trans_a else lda, lda if trans_a else 1,
              &bv[0, 0], 1 if trans_b else ldb, ldb if trans_b else 1,
              m, n, k, &cv[0, 0], &apv[0], &bpv[0])
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
    return _bias_act(_matmul(x, kernel, False, False), bias, act_name, alpha)


def bf16_dense_backward_input(dz, kernel):
    """dx = bf16(dz) @ bf16(kernel).T, shape (N, C)."""
    dz, kernel = operands.bf16_dense_backward_input(HOST, dz, kernel)
    return _matmul(dz, kernel, False, True)


def bf16_dense_backward_weight(x, dz):
    """dkernel = bf16(x).T @ bf16(dz), shape (C, U)."""
    x, dz = operands.bf16_dense_backward_weight(HOST, x, dz)
    return _matmul(x, dz, True, False)


cdef pynn_bf16_conv_geom _geom(g):
    cdef pynn_bf16_conv_geom c
    c.h, c.w, c.c, c.kh, c.kw = g["H"], g["W"], g["C"], g["KH"], g["KW"]
    c.sh, c.sw, c.dh, c.dw = g["SH"], g["SW"], g["DH"], g["DW"]
    c.pad_top, c.pad_left, c.oh, c.ow = g["PT"], g["PL"], g["HO"], g["WO"]
    return c


def _packed_b(b, bint trans_b):
    """op(b) (k, n) of a 2-D float32 array packed as the B operand, for all calls of an op."""
    cdef const float[:, ::1] bv = b
    cdef int k = b.shape[1] if trans_b else b.shape[0]
    cdef int n = b.shape[0] if trans_b else b.shape[1]
    cdef long ldb = b.shape[1]
    cdef int kp = (k + 1) // 2, p, np_ = _panels(n, PYNN_BF16_NR)
    bp = np.empty(np_ * kp * PYNN_BF16_NR * 2 + 1, np.uint16)
    cdef uint16_t[::1] bpv = bp
    with nogil:
        for p in prange(np_, schedule="static"):
            pynn_bf16_pack_b(&bv[0, 0] + p * PYNN_BF16_NR * (1 if not trans_b else ldb),
                             1 if trans_b else ldb, ldb if trans_b else 1,
                             min(PYNN_BF16_NR, n - p * PYNN_BF16_NR), k, &bpv[0] + <long>p * kp * PYNN_BF16_NR * 2)
    return bp


def bf16_conv2d_forward(x, kernel, bias, strides=(1, 1), padding="valid",
                        dilation_rate=(1, 1), activation="linear", alpha=0.0):
    """(y, z) as conv2d_forward, the product on bf16-rounded x and kernel."""
    act_name, alpha, x, kernel, bias, g = operands.bf16_conv2d_forward(
        HOST, x, kernel, bias, strides, padding, dilation_rate, activation, alpha)
    cdef pynn_bf16_conv_geom geom = _geom(g)
    cdef int n = g["N"], f = g["F"], m = g["HO"] * g["WO"]
    cdef int k = g["KH"] * g["KW"] * g["C"], kp = (k + 1) // 2
    cdef long a_step = CHUNK_ROWS * kp * 2
    z = np.empty((n, g["HO"], g["WO"], f), np.float32)
    if z.size == 0:
        return z, (z if act_name in ACTIVATIONS_NEEDING_INPUT else None)
    bp = _packed_b(kernel.reshape(k, f), False)
    ap = np.empty(omp_get_max_threads() * a_step + 1, np.uint16)
    cdef const float[:, :, :, ::1] xv = x
    cdef float[:, :, :, ::1] zv = z
    cdef uint16_t[::1] apv = ap
    cdef uint16_t[::1] bpv = bp
    cdef int s, m0, rows, p, ci
    cdef uint16_t* abuf
    with nogil:
        for s in prange(n, schedule="static", use_threads_if=n > 1):
            abuf = &apv[0] + omp_get_thread_num() * a_step
            for ci in range(_panels(m, CHUNK_ROWS)):
                m0 = ci * CHUNK_ROWS
                rows = min(CHUNK_ROWS, m - m0)
                for p in range(_panels(rows, PYNN_BF16_MR)):
                    pynn_bf16_pack_a_conv(&xv[s, 0, 0, 0], &geom, m0 + p * PYNN_BF16_MR,
                                          min(PYNN_BF16_MR, rows - p * PYNN_BF16_MR), abuf + p * kp * PYNN_BF16_MR * 2)
                pynn_bf16_gemm_serial(rows, f, kp, <uint32_t*>abuf, <uint32_t*>&bpv[0],
                                      &zv[s, 0, 0, 0] + <long>m0 * f, f, 0)
    y, z2 = _bias_act(z.reshape(-1, f), bias, act_name, alpha)
    return y.reshape(z.shape), (None if z2 is None else z2.reshape(z.shape))


def bf16_conv2d_backward_input(dz, kernel, input_shape, strides=(1, 1), padding="valid",
                               dilation_rate=(1, 1)):
    """dx (N, H, W, C) as conv2d_backward_input, from bf16-rounded dz and kernel."""
    dz, kernel, input_shape, g = operands.bf16_conv2d_backward_input(
        HOST, dz, kernel, input_shape, strides, padding, dilation_rate)
    cdef pynn_bf16_conv_geom geom = _geom(g)
    cdef int n = g["N"], f = g["F"], m = g["HO"] * g["WO"]
    cdef int k = g["KH"] * g["KW"] * g["C"], fp = (f + 1) // 2
    cdef long a_step = CHUNK_ROWS * fp * 2 + 1, c_step = <long>CHUNK_ROWS * k
    cdef long x_step = <long>g["H"] * g["W"] * g["C"]
    dx = np.zeros(input_shape, np.float32)
    if dx.size == 0 or dz.size == 0:
        return dx
    # B = kernel.T (F, KH*KW*C): dcols = dz @ kernel.T, then col2im.
    bp = _packed_b(kernel.reshape(k, f), True)
    threads = omp_get_max_threads()
    ap = np.empty(threads * a_step, np.uint16)
    cols = np.empty(threads * c_step, np.float32)
    cdef const float[:, :, :, ::1] dzv = dz
    cdef float[::1] dxv = dx.reshape(-1)
    cdef uint16_t[::1] apv = ap
    cdef uint16_t[::1] bpv = bp
    cdef float[::1] colv = cols
    cdef int s, m0, rows, p, tid, ci
    cdef uint16_t* abuf
    cdef float* cbuf
    cdef const float* dzs
    with nogil:
        for s in prange(n, schedule="static", use_threads_if=n > 1):
            tid = omp_get_thread_num()
            abuf = &apv[0] + tid * a_step
            cbuf = &colv[0] + tid * c_step
            dzs = &dzv[s, 0, 0, 0]
            for ci in range(_panels(m, CHUNK_ROWS)):
                m0 = ci * CHUNK_ROWS
                rows = min(CHUNK_ROWS, m - m0)
                for p in range(_panels(rows, PYNN_BF16_MR)):
                    pynn_bf16_pack_a(dzs + <long>(m0 + p * PYNN_BF16_MR) * f, f, 1,
                                     min(PYNN_BF16_MR, rows - p * PYNN_BF16_MR), f, abuf + p * fp * PYNN_BF16_MR * 2)
                pynn_bf16_gemm_serial(rows, k, fp, <uint32_t*>abuf, <uint32_t*>&bpv[0], cbuf,
                                      k, 0)
                pynn_bf16_col2im(cbuf, &geom, m0, rows, &dxv[0] + s * x_step)
    return dx


def bf16_conv2d_backward_weight(x, dz, kernel_shape, strides=(1, 1), padding="valid",
                                dilation_rate=(1, 1)):
    """dkernel (KH, KW, C, F) as conv2d_backward_weight, from bf16-rounded x and dz."""
    x, dz, kernel_shape, g = operands.bf16_conv2d_backward_weight(
        HOST, x, dz, kernel_shape, strides, padding, dilation_rate)
    cdef pynn_bf16_conv_geom geom = _geom(g)
    cdef int n = g["N"], f = g["F"], m = g["HO"] * g["WO"]
    cdef int k = g["KH"] * g["KW"] * g["C"], mp2 = (m + 1) // 2
    cdef int groups = max(1, min(n, _GROUPS))
    cdef long a_step = CHUNK_ROWS * mp2 * 2 + 1
    cdef long b_step = <long>_panels(f, PYNN_BF16_NR) * mp2 * PYNN_BF16_NR * 2 + 1, w_step = <long>k * f
    if n == 0 or m == 0 or k == 0 or f == 0:
        return np.zeros(kernel_shape, np.float32)
    ap = np.empty(groups * a_step, np.uint16)
    bp = np.empty(groups * b_step, np.uint16)
    partial = np.zeros((groups, k, f), np.float32)
    cdef const float[:, :, :, ::1] xv = x
    cdef const float[:, :, :, ::1] dzv = dz
    cdef uint16_t[::1] apv = ap
    cdef uint16_t[::1] bpv = bp
    cdef float[:, :, ::1] wv = partial
    cdef int grp, s, i0, rows, p, ci
    cdef uint16_t* abuf
    cdef uint16_t* bbuf
    with nogil:
        for grp in prange(groups, schedule="static"):
            abuf = &apv[0] + grp * a_step
            bbuf = &bpv[0] + grp * b_step
            for s in range(grp * n // groups, (grp + 1) * n // groups):
                # B = dz of sample s (HO*WO, F), A = its im2col transposed (KH*KW*C, HO*WO).
                for p in range(_panels(f, PYNN_BF16_NR)):
                    pynn_bf16_pack_b(&dzv[s, 0, 0, 0] + p * PYNN_BF16_NR, f, 1, min(PYNN_BF16_NR, f - p * PYNN_BF16_NR), m,
                                     bbuf + <long>p * mp2 * PYNN_BF16_NR * 2)
                for ci in range(_panels(k, CHUNK_ROWS)):
                    i0 = ci * CHUNK_ROWS
                    rows = min(CHUNK_ROWS, k - i0)
                    for p in range(_panels(rows, PYNN_BF16_MR)):
                        pynn_bf16_pack_a_conv_t(&xv[s, 0, 0, 0], &geom, i0 + p * PYNN_BF16_MR,
                                                min(PYNN_BF16_MR, rows - p * PYNN_BF16_MR),
                                                abuf + p * mp2 * PYNN_BF16_MR * 2)
                    pynn_bf16_gemm_serial(rows, f, mp2, <uint32_t*>abuf, <uint32_t*>bbuf,
                                          &wv[grp, i0, 0], f, 1)
    return partial.sum(axis=0).reshape(kernel_shape) if groups > 1 else \
        partial[0].reshape(kernel_shape)
