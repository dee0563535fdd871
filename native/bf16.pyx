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
float32 GEMM.

Where the CPU has AMX-BF16 tiles and Linux grants them (``_bf16amx.h``), every product runs
on TDPBF16PS instead, its operands converted straight into tile panels (``_amx_*`` below,
``KERNEL == "amx_bf16"``; ``PYNN_BF16_KERNEL=avx512_bf16`` keeps vdpbf16ps): on an AMX Xeon
(2 threads) the same forward GEMM took 0.17 ms against 0.50 ms in float32. AMX's sums are
within the same error bound but not vdpbf16ps's bits (see _bf16amx.h).

Parallel axes: Dense converts by blocks of rows and multiplies by tiles of the output
(prange over tiles, each tile one microkernel call over the whole reduction, so the bits
never depend on the thread count). Conv2D runs one sample per thread (im2col straight into
the bf16 rows, in chunks of rows); its kernel gradient sums per-group partials over a fixed
number of sample groups (the machine's cores, not the thread count), then adds the groups in
order. Convs of fewer than NARROW_CHANNELS input channels round and run conv.pyx's float32
kernels instead, except a narrow first layer under its max pool (bf16_conv2d_pool_*): on AMX
its 27-value windows fit one tile row (_bf16amx_pool.h).
"""
import os

import numpy as np

from cython.parallel cimport parallel, prange
from libc.stdint cimport uint16_t, uint32_t
from _activation cimport ACT_LINEAR, ACT_RELU, ACT_SOFTMAX, bias_activation_rows, block_epilogue
from _openmp cimport omp_get_max_threads, omp_get_num_threads, omp_get_thread_num

from pynn._config import usable_cores
from pynn._native import conv as float32_conv
from pynn._native.activation import _pooled_activation_bias, activation_bias_backward
from pynn._native.pool import maxpool2d_backward, maxpool2d_forward
from pynn.backend.api import ACTIVATIONS, ACTIVATIONS_NEEDING_INPUT
from pynn.backend.operands import bf16 as operands
from pynn.backend.operands.common import HOST
from pynn.backend.operands.pool import windows_tile
from pynn.backend._scratch import aligned_empty

include "_team.pxi"

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

cdef extern from "_bf16amx.h" nogil:
    long pynn_amx_kp16(long kp)
    long pynn_amx_words(long rows_or_cols, long kp)
    long pynn_amx_panels(long n)
    long pynn_amx_units(long m, long n)
    int pynn_amx_available(int kind)
    enum:
        PYNN_AMX_BF16
    void pynn_amx_a_rows(const float* src, long lds, long m, long k, long r0, long r1,
                         long kp16, uint32_t* At)
    void pynn_amx_b_pairs(const float* src, long lds, long k, long n, long q0, long q1, long t0,
                          long t1, long kp16, uint32_t* Bt)
    void pynn_amx_a_transposed(const float* y, long ldy, long R, long cols, long qb0, long qb1,
                               long cb0, long cb1, long kp16, uint32_t* At)
    void pynn_amx_b_transposed(const float* z, long ldz, long R, long K, long qb0, long qb1,
                               long jb0, long jb1, long kp16, uint32_t* Bt)
    void pynn_amx_gemm(long m, long n, long kp16, const uint32_t* At, const uint32_t* Bt,
                       float* c, long ldc, int transposed, int accumulate, long u0, long u1,
                       float* blk)
    void pynn_amx_gemm_range(long m, long n, long kp16, const uint32_t* At, const uint32_t* Bt,
                             float* c, long ldc, int transposed, int accumulate, long ip0,
                             long ip1, long jp0, long jp1, float* blk)
    void pynn_amx_im2col_a(const float* x, const pynn_bf16_conv_geom* g, int m0, int rows,
                           long kp16, uint16_t* row, uint32_t* At)
    void pynn_amx_im2col_b(const float* x, const pynn_bf16_conv_geom* g, int m0, int rows,
                           long kp16, uint16_t* tmp, uint32_t* words, uint32_t* Bt)
    ctypedef struct pynn_amx_conv_plan:
        long HO, WO, WP, C, F, KH, KW, DH, DW, kp16, pblocks, fgroups, sample_words
    void pynn_amx_pad_image(const float* x, long H, long W, long C, long WP, long PT, long PL,
                            long h0, long h1, uint32_t* xb)
    void pynn_amx_conv_units(const pynn_amx_conv_plan* pl, const uint32_t* xb,
                             const uint32_t* Bt, const float* bias, int relu, float* z,
                             long u0, long u1, float* blk)
    void pynn_amx_pair_image(const float* x, long H, long W, long C, long HP, long WP, long PT,
                             long PL, long npairs, uint32_t* even, uint32_t* odd)
    void pynn_amx_dz_positions(const float* dz, long HO, long WO, long WP, long F, long kp16,
                               uint32_t* At)
    void pynn_amx_conv_wgrad(const uint32_t* At, const uint32_t* even, const uint32_t* odd,
                             long C, long F, long KH, long KW, long DH, long DW, long WP,
                             long kp16, float* acc)
    enum:
        PYNN_AMX_GROUP

cdef extern from "_bf16amx_pool.h" nogil:
    ctypedef struct pynn_amxcp_geom:
        long N, H, W, C, F, KH, KW, SH, SW, DH, PT, PL, HO, WO
        long PH, PW, PSH, PSW, HPo, WPo, HPd, WPd, WOP
    void pynn_amxcp_image(const float* x, const pynn_amxcp_geom* g, int planar, uint16_t* out)
    void pynn_amxcp_band(const pynn_amxcp_geom* g, const uint16_t* img, const uint32_t* Bt,
                         const float* bias_rows, int relu, long hp, float* band,
                         uint16_t* abuf)
    long pynn_amxcp_wgrad(const pynn_amxcp_geom* g, const uint16_t* xq, const float* dpool,
                          const float* pooled, const int* argmax, long b0, long b1,
                          uint16_t* abuf, uint32_t* bbuf, float* acc, float* db)
    void pynn_amxcp_wide_band(const pynn_amx_conv_plan* pl, const uint32_t* img,
                              const uint32_t* Bt, const float* bias_rows, int relu, long ho0,
                              long rows, long WOP, float* band)
    ctypedef struct pynn_amxcp_pool:
        const float* dpool
        const float* pooled
        const int* argmax
        long HO, WO, F, HPo, WPo, PH, PW, PSH, PSW
    long pynn_amxcp_make_dz(const pynn_amxcp_pool* p, long n, float* dz)
    void pynn_amxcp_bias_grad(const pynn_amxcp_pool* p, long w0, long w1, double* acc)

cdef extern from "_amx.h" nogil:
    void pynn_amx_begin()
    void pynn_amx_end()

from _maxpool cimport pynn_window_max_f

cdef enum:
    # Elements below which an op stays on one thread (the wake-up costs more than the work).
    PARALLEL_MIN = 32768
    # Rows of one conv im2col chunk: bounds the per-thread buffers to CHUNK_ROWS * K bf16
    # values whatever the image size; even, so pairs never straddle two chunks.
    CHUNK_ROWS = 256
    # Rows (or pair rows) per task of the parallel conversions.
    CONVERT_BLOCK = 16
    # Elements per item of bf16_round's job.
    ROUND_CHUNK = 4096
    # Input channels below which a conv's im2col rows are too short for the bf16 path to pay
    # (a first layer's 3: 3-4x slower than float32 on Zen 4): such convs round their operands
    # (bf16_round) and run the float32 kernels, the same numerics (float32 sums of bf16
    # values) in another order.
    NARROW_CHANNELS = 8
    # Multiply-adds below which an AMX product runs on the calling thread: ~30 us of tile
    # work at ~1 TFLOP/s, about what waking the passive OpenMP team costs (an MLP's
    # 128 x 256 x 10 layer took 119 us on two threads).
    AMX_PARALLEL_MACS = 1 << 24
    # Channel pairs (C * F) up to which a Winograd kernel gradient on rounded operands beats
    # the vdpbf16ps kernels (_float32_road).
    WINO_WEIGHT_GRAD_MAX_CF = 4096

MR, NR = PYNN_BF16_MR, PYNN_BF16_NR  # the microkernel's tile (tests)
NARROW = NARROW_CHANNELS  # (tests) channels below which a conv takes the narrow roads
cdef int _GROUPS = min(16, usable_cores())

KERNEL = None
# Floats of one thread's AMX output block (32 rows x PYNN_AMX_GROUP panels of 32 columns).
cdef long _AMX_BLOCK = 32 * 32 * PYNN_AMX_GROUP
# Whether this process may use AMX tiles (asked of the OS once, at import).
_AMX_AVAILABLE = bool(pynn_amx_available(PYNN_AMX_BF16))
cdef bint _amx = False
KERNELS = ("amx_bf16", "avx512_bf16", "portable")


def _select_kernel(portable=False, amx=True):
    """Chooses the microkernel and returns its name: AMX tiles where the CPU and OS have them
    (unless ``amx`` is false), else vdpbf16ps where the CPU has AVX512_BF16, else (or with
    ``portable``) the portable C kernel. The test hook that pretends a feature is missing."""
    global KERNEL, _amx
    KERNEL = pynn_bf16_select(1 if portable else 0).decode()
    _amx = not portable and amx and KERNEL == "avx512_bf16" and _AMX_AVAILABLE
    if _amx:
        KERNEL = "amx_bf16"
    return KERNEL


def _kernel_from_env():
    name = os.environ.get("PYNN_BF16_KERNEL", "").lower()
    if name not in KERNELS + ("",):
        raise ValueError(f"PYNN_BF16_KERNEL: expected one of {', '.join(KERNELS)}, got "
                         f"{name!r}")
    return _select_kernel(portable=name == "portable", amx=name in ("", "amx_bf16"))


_kernel_from_env()


cdef inline int _panels(int n, int width) noexcept nogil:
    return (n + width - 1) // width


cdef inline long _width(int n) noexcept nogil:
    """Row stride (words) of a pairs-format operand of n columns: whole 32-column panels."""
    return <long>_panels(n, PYNN_BF16_NR) * PYNN_BF16_NR


ctypedef struct _RoundJob:
    const float* x
    float* y
    Py_ssize_t n


cdef void _round_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _RoundJob* j = <_RoundJob*>ctx
    cdef long c, i
    for c in range(begin, end):
        for i in range(c * ROUND_CHUNK, min((c + 1) * ROUND_CHUNK, j.n)):
            j.y[i] = pynn_bf16_round_f32(j.x[i])


def _round(const float[::1] x, float[::1] y):
    cdef Py_ssize_t n = x.shape[0], chunks = (n + ROUND_CHUNK - 1) // ROUND_CHUNK
    cdef int threads = omp_get_max_threads() if n >= PARALLEL_MIN else 1
    cdef _RoundJob job
    if n == 0:
        return
    job.x, job.y, job.n = &x[0], &y[0], n
    with nogil:
        pynn_team_for(chunks, team_grain(chunks, threads), threads, _round_job, &job)


def bf16_round(x):
    """float32 x with every value rounded to the nearest bfloat16 (ties to even); NaN stays
    NaN (quiet), infinities stay, values past bf16's range become infinities."""
    x = operands.bf16_round(HOST, x)
    y = np.empty(x.shape, np.float32)
    if x.size:
        _round(x.reshape(-1), y.reshape(-1))
    return y


# The vdpbf16ps and portable roads' conversions and products run on pynn's worker team
# (native/_team.h) like the float32 kernels: an OpenMP region of a step's bf16 op woke
# threads that the team's ops had let sleep (~80 us a region on a Zen 4 under the passive
# wait policy, three or four regions per Dense op).
cdef enum:
    CONVERT_ROWS = 0
    CONVERT_PAIRS = 1
    CONVERT_TRANSPOSE = 2


ctypedef struct _ConvertJob:
    int kind
    const float* src          # rows, pairs: the float32 matrix
    const uint32_t* words     # transpose: the rows-format matrix
    uint32_t* dst
    long lds, ldd
    int m, k                  # rows: m rows of k; pairs: k rows of m; transpose: m rows of k words


cdef void _convert_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _ConvertJob* j = <_ConvertJob*>ctx
    cdef long blk, i0
    for blk in range(begin, end):
        i0 = blk * CONVERT_BLOCK
        if j.kind == CONVERT_ROWS:
            pynn_bf16_to_rows(j.src + i0 * j.lds, j.lds, min(<long>CONVERT_BLOCK, j.m - i0),
                              j.k, j.dst + i0 * j.ldd, j.ldd)
        elif j.kind == CONVERT_PAIRS:
            pynn_bf16_to_pairs(j.src + 2 * i0 * j.lds, j.lds,
                               min(<long>2 * CONVERT_BLOCK, j.k - 2 * i0), j.m,
                               j.dst + i0 * j.ldd, j.ldd)
        else:
            pynn_bf16_transpose(j.words + i0, j.lds, j.m, min(<long>CONVERT_BLOCK, j.k - i0),
                                j.dst + i0 * j.ldd, j.ldd)


cdef void _convert(_ConvertJob* job, long blocks, long elements) noexcept nogil:
    cdef int threads = omp_get_max_threads() if elements >= PARALLEL_MIN else 1
    pynn_team_for(blocks, team_grain(blocks, threads), threads, _convert_job, job)


def _rows(a):
    """A C-contiguous (m, k) float32 array in the rows format: uint32 (m, ceil(k / 2))."""
    cdef const float[:, ::1] av = a
    cdef int m = a.shape[0], k = a.shape[1], kp = (k + 1) // 2
    out = np.empty((m, kp), np.uint32)
    cdef uint32_t[:, ::1] ov = out
    cdef _ConvertJob job
    if m == 0 or k == 0:
        return out
    job.kind, job.src, job.dst, job.lds, job.ldd, job.m, job.k = \
        CONVERT_ROWS, &av[0, 0], &ov[0, 0], k, kp, m, k
    with nogil:
        _convert(&job, _panels(m, CONVERT_BLOCK), <long>m * k)
    return out


def _pairs(b):
    """A C-contiguous (k, n) float32 array in the pairs format: uint32 (ceil(k / 2),
    _width(n))."""
    cdef const float[:, ::1] bv = b
    cdef int k = b.shape[0], n = b.shape[1], kp = (k + 1) // 2
    cdef long ld = _width(n)
    out = np.empty((kp, ld), np.uint32)
    cdef uint32_t[:, ::1] ov = out
    cdef _ConvertJob job
    if k == 0 or n == 0:
        return out
    job.kind, job.src, job.dst, job.lds, job.ldd, job.m, job.k = \
        CONVERT_PAIRS, &bv[0, 0], &ov[0, 0], n, ld, n, k
    with nogil:
        _convert(&job, _panels(kp, CONVERT_BLOCK), <long>n * k)
    return out


def _transposed_pairs(w):
    """The pairs format of w.T for a C-contiguous (r, c) float32 w: uint32 (ceil(c / 2),
    _width(r)), from w's rows format."""
    rows = _rows(w)
    cdef const uint32_t[:, ::1] rv = rows
    cdef int r = w.shape[0], cp = rows.shape[1]
    cdef long ld = _width(r)
    out = np.empty((cp, ld), np.uint32)
    cdef uint32_t[:, ::1] ov = out
    cdef _ConvertJob job
    if r == 0 or cp == 0:
        return out
    job.kind, job.words, job.dst, job.lds, job.ldd, job.m, job.k = \
        CONVERT_TRANSPOSE, &rv[0, 0], &ov[0, 0], cp, ld, r, cp
    with nogil:
        _convert(&job, _panels(cp, CONVERT_BLOCK), <long>r * cp)
    return out


# -- AMX (native/_bf16amx.h): operands converted straight into tile panels -----------------

def _amx_a_rows(a):
    """(A panels, kp16) of a C-contiguous float32 (m, k) array (pairs along k; m, k > 0)."""
    cdef const float[:, ::1] av = a
    cdef long m = a.shape[0], k = a.shape[1], kp16 = pynn_amx_kp16((k + 1) // 2), p
    out = np.empty(pynn_amx_words(m, (k + 1) // 2), np.uint32)
    cdef uint32_t[::1] ov = out
    with nogil:
        for p in prange(pynn_amx_panels(m), schedule="static",
                        use_threads_if=m * k >= PARALLEL_MIN):
            pynn_amx_a_rows(&av[0, 0], k, m, k, p * 32, p * 32 + 32, kp16, &ov[0])
    return out, kp16


def _amx_b_pairs(b):
    """(B panels, kp16) of a C-contiguous float32 (k, n) array (pairs along k; k, n > 0)."""
    cdef const float[:, ::1] bv = b
    cdef long k = b.shape[0], n = b.shape[1], kp16 = pynn_amx_kp16((k + 1) // 2), qb
    out = np.empty(pynn_amx_words(n, (k + 1) // 2), np.uint32)
    cdef uint32_t[::1] ov = out
    with nogil:
        for qb in prange(kp16 // 16, schedule="static", use_threads_if=n * k >= PARALLEL_MIN):
            pynn_amx_b_pairs(&bv[0, 0], n, k, n, qb * 16, qb * 16 + 16, 0,
                             pynn_amx_panels(n) * 2, kp16, &ov[0])
    return out, kp16


cdef enum:
    # How an AMX product's operand is made (_amx_product): from a row-major float32 array
    # (A: pairs along its rows' elements; B: pairs of consecutive rows), or from the array
    # transposed (A of y.T, B of z.T).
    AMX_PLAIN = 0
    AMX_TRANSPOSED = 1


def _amx_product(a, int a_kind, b, int b_kind, float[:, ::1] c, bint transposed, bias=None,
                 float[:, ::1] y=None, int act=0, double alpha=0.0):
    """c (m, n) = A @ B, or c (n, m) = (A @ B).T, on AMX tiles, in ONE job with no barrier:
    each thread takes a share of the larger operand's 32-row / 32-column panels,
    converts that share, converts the whole smaller operand into its own buffer, multiplies
    its share, then applies bias and activation to it into y. Under pynn's passive OpenMP
    waiters a region start or a barrier wakes sleeping threads: three work-shared loops in
    one region made the 784 -> 512 forward 171 -> 250 us, and three regions cost the MLP's
    bf16 step more than its products. Splitting by columns when B is the larger operand (a
    4096 -> 128 Dense, whose weight both threads converted whole before): the small CNN's
    bf16 step 11.3-11.6 -> 10.3 ms, float32's 15.2-16.8 beside it. A from a (m, k) or,
    transposed, from a (k, m); B from b (k, n) or, transposed, from b (n, k); m, n, k > 0.
    Each element's sum runs over K in one order however the product is split: the same bits
    for any thread count."""
    cdef const float[:, ::1] av = a
    cdef const float[:, ::1] bv = b
    cdef long m = a.shape[1] if a_kind == AMX_TRANSPOSED else a.shape[0]
    cdef long k = a.shape[0] if a_kind == AMX_TRANSPOSED else a.shape[1]
    cdef long n = b.shape[0] if b_kind == AMX_TRANSPOSED else b.shape[1]
    cdef long kp = (k + 1) // 2, kp16 = pynn_amx_kp16(kp)
    cdef long rp = pynn_amx_panels(m), cp = pynn_amx_panels(n)
    cdef long threads = omp_get_max_threads(), ldc = c.shape[1]
    cdef long a_words = pynn_amx_words(m, kp), b_words = pynn_amx_words(n, kp)
    # softmax needs whole rows in one thread: split the rows then
    cdef bint by_rows = (a_words >= b_words and rp > 1) or cp == 1 or act == ACT_SOFTMAX
    cdef long parts = rp if by_rows else cp
    cdef int nthreads = min(threads, parts) if m * n * k >= AMX_PARALLEL_MACS else 1
    cdef const float[::1] biasv
    cdef const float* bptr = NULL
    cdef float* yptr = NULL
    cdef uint32_t[::1] atv
    cdef uint32_t[::1] btv
    cdef float[::1] bkv
    if bias is not None:
        biasv = bias
        bptr = &biasv[0]
    if y is not None:
        yptr = &y[0, 0]
    # Fresh arrays: a training step's come back from pynn's host memory pool; the scratch
    # pool (one buffer per dtype, shared by every op) made the MLP's bf16 step 7% slower.
    # Outside a training loop, MBs of them come back page by page from the OS.
    at = np.empty(a_words * (1 if by_rows else nthreads), np.uint32)
    bt = np.empty(b_words * (nthreads if by_rows else 1), np.uint32)
    blk = np.empty(nthreads * _AMX_BLOCK, np.float32)
    atv = at
    btv = bt
    bkv = blk
    cdef _AmxProductJob job
    job.a, job.b, job.a_kind, job.b_kind = &av[0, 0], &bv[0, 0], a_kind, b_kind
    job.m, job.k, job.n, job.kp16, job.rp, job.cp, job.parts = m, k, n, kp16, rp, cp, parts
    job.shares, job.a_words, job.b_words, job.ldc = nthreads, a_words, b_words, ldc
    job.by_rows, job.transposed = by_rows, transposed
    job.at, job.bt, job.blk, job.c = &atv[0], &btv[0], &bkv[0], &c[0, 0]
    job.bias, job.y, job.act, job.alpha = bptr, yptr, act, <float>alpha
    with nogil:
        # a share per item, on pynn's worker team (native/_team.h): each share its own
        # buffers, so a thread that runs two shares gives the same bits
        pynn_team_for(nthreads, 1, nthreads, _amx_product_job, &job)


ctypedef struct _AmxProductJob:
    const float* a
    const float* b
    int a_kind, b_kind, act
    long m, k, n, kp16, rp, cp, parts, shares, a_words, b_words, ldc
    bint by_rows, transposed
    uint32_t* at
    uint32_t* bt
    float* blk
    float* c
    const float* bias
    float* y
    float alpha


cdef void _amx_product_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    """Shares [begin, end) of _amx_product: share t converts its panels of the larger
    operand (and the whole smaller one into its own buffer), multiplies, and applies the
    epilogue."""
    cdef _AmxProductJob* j = <_AmxProductJob*>ctx
    cdef long t, s0, s1, ip0, ip1, jp0, jp1
    cdef uint32_t* ap
    cdef uint32_t* bp
    for t in range(begin, end):
        s0 = t * j.parts // j.shares
        s1 = (t + 1) * j.parts // j.shares
        ap = j.at + (0 if j.by_rows else t * j.a_words)
        bp = j.bt + (t * j.b_words if j.by_rows else 0)
        if j.by_rows:   # A: this share's row panels; B: whole
            ip0, ip1, jp0, jp1 = s0, s1, 0, j.cp
            _amx_convert_a(j.a, j.a_kind, j.m, j.k, j.kp16, s0, s1, ap)
            _amx_convert_b(j.b, j.b_kind, j.n, j.k, j.kp16, 0, j.cp, bp)
        else:           # A: whole; B: this share's column panels
            ip0, ip1, jp0, jp1 = 0, j.rp, s0, s1
            _amx_convert_a(j.a, j.a_kind, j.m, j.k, j.kp16, 0, j.rp, ap)
            _amx_convert_b(j.b, j.b_kind, j.n, j.k, j.kp16, s0, s1, bp)
        if s1 > s0:
            pynn_amx_gemm_range(j.m, j.n, j.kp16, ap, bp, j.c, j.ldc, j.transposed, 0, ip0,
                                ip1, jp0, jp1, j.blk + t * _AMX_BLOCK)
            if j.bias != NULL or j.y != NULL:
                block_epilogue(j.c, j.y, j.bias, <int>(ip0 * 32), <int>min(j.m, ip1 * 32),
                               <int>(jp0 * 32), <int>min(j.n, jp1 * 32), <int>j.ldc, j.act,
                               j.alpha)


cdef void _amx_convert_a(const float* av, int kind, long m, long k, long kp16, long p0,
                         long p1, uint32_t* At) noexcept nogil:
    """Row panels [p0, p1) of A (m, k) into At."""
    if kind == AMX_TRANSPOSED:
        pynn_amx_a_transposed(av, m, k, m, 0, kp16 // 16, 2 * p0, 2 * p1, kp16, At)
    else:
        pynn_amx_a_rows(av, k, m, k, p0 * 32, min(p1 * 32, pynn_amx_panels(m) * 32),
                        kp16, At)


cdef void _amx_convert_b(const float* bv, int kind, long n, long k, long kp16, long p0,
                         long p1, uint32_t* Bt) noexcept nogil:
    """Column panels [p0, p1) of B (k, n) into Bt."""
    if kind == AMX_TRANSPOSED:
        pynn_amx_b_transposed(bv, k, n, k, 0, kp16 // 16, 2 * p0, 2 * p1, kp16, Bt)
    else:
        pynn_amx_b_pairs(bv, n, k, n, 0, kp16, 2 * p0, 2 * p1, kp16, Bt)


ctypedef struct _GemmJob:
    const uint32_t* a
    long a_rs, a_qs
    const uint32_t* b
    long ldb
    float* c
    float* y                  # the epilogue's output (may be c), or NULL: no epilogue
    const float* bias
    int m, n, kp, act
    float alpha


cdef void _gemm_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _GemmJob* j = <_GemmJob*>ctx
    cdef long t
    cdef int mp = _panels(j.m, PYNN_BF16_MR), i0, j0
    for t in range(begin, end):
        pynn_bf16_gemm_tile(j.m, j.n, j.kp, j.a, j.a_rs, j.a_qs, j.b, j.ldb, j.c, j.n, t, 0)
        if j.y != NULL:   # bias and activation while the tile is in cache
            i0 = (t % mp) * PYNN_BF16_MR
            j0 = (t // mp) * PYNN_BF16_NR
            block_epilogue(j.c, j.y, j.bias, i0, min(i0 + PYNN_BF16_MR, j.m), j0,
                           min(j0 + PYNN_BF16_NR, j.n), j.n, j.act, j.alpha)


def _gemm(a, long a_rs, long a_qs, int m, b, int n, bias=None, act_name=None,
          double alpha=0.0):
    """c (m, n) float32 of a bf16 A operand (words a, a(r, q) at r * a_rs + q * a_qs) and a
    pairs-format B (b, kp rows): one microkernel call per tile, tiles split over the team.
    With act_name (not softmax): (y, z) as dense_forward returns them, bias and activation
    applied to each tile as it is written (block_epilogue: bias_activation_rows's bits)."""
    cdef int kp = b.shape[0], tiles = pynn_bf16_tiles(m, n)
    c = np.empty((m, n), np.float32)
    epilogue = act_name is not None
    if m == 0 or n == 0 or kp == 0:   # nothing to multiply: zeros, then the epilogue
        c[...] = 0
        return _bias_act(c, bias, act_name, alpha) if epilogue else c
    keep_z = epilogue and act_name in ACTIVATIONS_NEEDING_INPUT
    y = np.empty_like(c) if keep_z else c
    cdef const uint32_t[:, ::1] av = a
    cdef const uint32_t[:, ::1] bv = b
    cdef float[:, ::1] cv = c
    cdef float[:, ::1] yv = y
    cdef const float[::1] biasv
    cdef _GemmJob job
    cdef int threads = omp_get_max_threads() if <long>m * n * kp >= PARALLEL_MIN * 4 else 1
    job.a, job.a_rs, job.a_qs, job.b, job.ldb, job.c = &av[0, 0], a_rs, a_qs, &bv[0, 0], \
        b.shape[1], &cv[0, 0]
    job.m, job.n, job.kp, job.y, job.bias, job.act, job.alpha = m, n, kp, NULL, NULL, 0, \
        <float>alpha
    if epilogue:
        job.y, job.act = &yv[0, 0], ACTIVATIONS.index(act_name)
        if bias is not None:
            biasv = bias
            job.bias = &biasv[0]
    with nogil:
        pynn_team_for(tiles, team_grain(tiles, threads), threads, _gemm_job, &job)
    return (y, c if keep_z else None) if epilogue else c


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
    if _amx and x.size and kernel.size:
        z = np.empty((x.shape[0], kernel.shape[1]), np.float32)
        keep_z = act_name in ACTIVATIONS_NEEDING_INPUT
        y = np.empty_like(z) if keep_z else z
        _amx_product(x, AMX_PLAIN, kernel, AMX_PLAIN, z, False, bias, y,
                     ACTIVATIONS.index(act_name), alpha)
        return y, (z if keep_z else None)
    a = _rows(x)
    if act_name == "softmax":   # whole rows: after the product
        z = _gemm(a, a.shape[1], 1, x.shape[0], _pairs(kernel), kernel.shape[1])
        return _bias_act(z, bias, act_name, alpha)
    return _gemm(a, a.shape[1], 1, x.shape[0], _pairs(kernel), kernel.shape[1], bias,
                 act_name, alpha)


def bf16_dense_backward_input(dz, kernel):
    """dx = bf16(dz) @ bf16(kernel).T, shape (N, C)."""
    dz, kernel = operands.bf16_dense_backward_input(HOST, dz, kernel)
    if _amx and dz.size and kernel.size:
        # dx.T = kernel @ dz.T: the weight untransposed, only the batch-sized dz transposed
        dx = np.empty((dz.shape[0], kernel.shape[0]), np.float32)
        _amx_product(kernel, AMX_PLAIN, dz, AMX_TRANSPOSED, dx, True)
        return dx
    a = _rows(dz)
    return _gemm(a, a.shape[1], 1, dz.shape[0], _transposed_pairs(kernel), kernel.shape[0])


def bf16_dense_backward_weight(x, dz):
    """dkernel = bf16(x).T @ bf16(dz), shape (C, U): x's pairs format read as the
    transposed A operand."""
    x, dz = operands.bf16_dense_backward_weight(HOST, x, dz)
    if _amx and x.size and dz.size:
        dw = np.empty((x.shape[1], dz.shape[1]), np.float32)
        _amx_product(x, AMX_TRANSPOSED, dz, AMX_PLAIN, dw, False)
        return dw
    a = _pairs(x)
    return _gemm(a, 1, a.shape[1], x.shape[1], _pairs(dz), dz.shape[1])


cdef pynn_bf16_conv_geom _geom(g):
    cdef pynn_bf16_conv_geom c
    c.h, c.w, c.c, c.kh, c.kw = g["H"], g["W"], g["C"], g["KH"], g["KW"]
    c.sh, c.sw, c.dh, c.dw = g["SH"], g["SW"], g["DH"], g["DW"]
    c.pad_top, c.pad_left, c.oh, c.ow = g["PT"], g["PL"], g["HO"], g["WO"]
    return c


def _float32_road(g, input_shape=None, weight_grad=False):
    """Whether a conv on a CPU without AMX tiles runs float32's op on bf16-rounded operands:
    where that op runs by Winograd (forward; input_shape given: the input gradient), whose
    3x3 tiles take about a quarter of the multiplies, more than vdpbf16ps's doubled rate
    gives back (Zen 4, 2 threads, batch 64, ms per call, bf16 kernels / float32 Winograd on
    rounded operands: 16x16x32 -> 64 forward 2.03 / 1.56, input gradient 2.32 / 1.49; 8x8x128
    -> 128 5.56 / 3.75 and 6.00 / 2.72). The kernel gradient (weight_grad) only up to
    WINO_WEIGHT_GRAD_MAX_CF channel pairs: Winograd's kernel gradient keeps a 16 * C * F
    partial per slab, and past that the bf16 kernels win (medians of 5 alternated rounds,
    bf16 over the float32 road: 32x32x32 -> 32 1.21, 16x16x64 -> 64 1.13, 16x16x32 -> 64
    1.15; 16x16x64 -> 128 0.90, 8x8x128 -> 128 0.87). The same numerics as the narrow
    road's: float32 sums of bf16 values, in Winograd's order (its error bound, not the
    GEMMs'). A conv under its max pool takes the narrow road both ways then
    (bf16_conv2d_pool_forward / _backward): float32's fused pair on rounded operands, the
    bias gradient from the rounded dpool (16x16x32 -> 64 relu + 2x2 pool, batch 64, backward
    over float32's: 1.185x on the wide road, 1.083x on this one, medians of 7 alternated
    rounds)."""
    if _amx:
        return False
    g = float32_conv._planned(dict(g))
    if weight_grad:
        return (g["C"] * g["F"] <= WINO_WEIGHT_GRAD_MAX_CF
                and float32_conv._use_winograd(g, np.float32))
    if input_shape is None:
        return float32_conv._use_winograd(g, np.float32)
    return float32_conv._winograd_input_grad(g, input_shape, np.float32)


# The vdpbf16ps conv roads on the worker team: samples (forward, input gradient) or sample
# groups (kernel gradient) per item, each thread's im2col chunk in its slot's buffer.
ctypedef struct _ConvJob:
    const pynn_bf16_conv_geom* geom
    const float* x            # forward, kernel gradient: x; input gradient: dz
    const float* dz           # kernel gradient
    float* out                # z, dx or the groups' partial kernel gradients
    float* y                  # forward: the epilogue's output (may be out), or NULL
    const float* bias
    float* cols
    uint32_t* abuf
    uint32_t* bbuf
    uint16_t* tmp
    const uint32_t* b
    long a_step, b_step, c_step, t_step, ldb, lda, x_step
    int m, f, k, kp, n, groups, act
    float alpha


cdef void _conv_forward_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _ConvJob* j = <_ConvJob*>ctx
    cdef uint32_t* abuf = j.abuf + slot * j.a_step
    cdef long s, zoff
    cdef int ci, m0, rows
    for s in range(begin, end):
        for ci in range(_panels(j.m, CHUNK_ROWS)):
            m0 = ci * CHUNK_ROWS
            rows = min(CHUNK_ROWS, j.m - m0)
            zoff = (s * j.m + m0) * j.f
            pynn_bf16_im2col_rows(j.x + s * j.x_step, j.geom, m0, rows, abuf, j.kp)
            pynn_bf16_gemm_serial(rows, j.f, j.kp, abuf, j.kp, 1, j.b, j.ldb, j.out + zoff,
                                  j.f, 0)
            if j.y != NULL:   # bias and activation on the chunk while it is in cache
                block_epilogue(j.out + zoff, j.y + zoff, j.bias, 0, rows, 0, j.f, j.f, j.act,
                               j.alpha)


cdef void _conv_input_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _ConvJob* j = <_ConvJob*>ctx
    cdef uint32_t* abuf = j.abuf + slot * j.a_step
    cdef float* cbuf = j.cols + slot * j.c_step
    cdef long s
    cdef int ci, m0, rows
    for s in range(begin, end):
        for ci in range(_panels(j.m, CHUNK_ROWS)):
            m0 = ci * CHUNK_ROWS
            rows = min(CHUNK_ROWS, j.m - m0)
            pynn_bf16_to_rows(j.x + (s * j.m + m0) * j.f, j.f, rows, j.f, abuf, j.kp)
            pynn_bf16_gemm_serial(rows, j.k, j.kp, abuf, j.kp, 1, j.b, j.ldb, cbuf, j.k, 0)
            pynn_bf16_col2im(cbuf, j.geom, m0, rows, j.out + s * j.x_step)


cdef void _conv_weight_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _ConvJob* j = <_ConvJob*>ctx
    cdef long grp, s
    cdef int ci, m0, rows
    cdef uint32_t* abuf
    cdef uint32_t* bbuf
    for grp in range(begin, end):
        abuf = j.abuf + grp * j.a_step
        bbuf = j.bbuf + grp * j.b_step
        for s in range(grp * j.n // j.groups, (grp + 1) * j.n // j.groups):
            for ci in range(_panels(j.m, CHUNK_ROWS)):
                m0 = ci * CHUNK_ROWS
                rows = min(CHUNK_ROWS, j.m - m0)
                pynn_bf16_im2col_pairs(j.x + s * j.x_step, j.geom, m0, rows, abuf, j.lda,
                                       j.tmp + grp * j.t_step)
                pynn_bf16_to_pairs(j.dz + (s * j.m + m0) * j.f, j.f, rows, j.f, bbuf, j.ldb)
                pynn_bf16_gemm_serial(j.k, j.f, (rows + 1) // 2, abuf, 1, j.lda, bbuf, j.ldb,
                                      j.out + grp * j.k * j.f, j.f, 1)


def bf16_conv2d_forward(x, kernel, bias, strides=(1, 1), padding="valid",
                        dilation_rate=(1, 1), activation="linear", alpha=0.0):
    """(y, z) as conv2d_forward, the product on bf16-rounded x and kernel."""
    act_name, alpha, x, kernel, bias, g = operands.bf16_conv2d_forward(
        HOST, x, kernel, bias, strides, padding, dilation_rate, activation, alpha)
    if g["C"] < NARROW_CHANNELS or _float32_road(g):
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
    if _amx and g["SH"] == 1 and g["SW"] == 1 and g["C"] % 32 == 0 and \
            act_name in ("linear", "relu"):
        # bias and relu in the conv's own write pass (y = z where nothing needs z)
        _amx_conv_direct(x, kernel.reshape(k, f), z, g, bias, act_name == "relu")
        return z, None
    if _amx:
        _amx_conv_forward(x, kernel.reshape(k, f), z, g)
        y, z2 = _bias_act(z.reshape(-1, f), bias, act_name, alpha)
        return y.reshape(z.shape), (None if z2 is None else z2.reshape(z.shape))
    b = _pairs(kernel.reshape(k, f))
    cdef int threads = omp_get_max_threads()
    ap = np.empty(threads * a_step, np.uint32)
    keep_z = act_name in ACTIVATIONS_NEEDING_INPUT
    y = np.empty_like(z) if keep_z else z
    cdef const float[:, :, :, ::1] xv = x
    cdef float[:, :, :, ::1] zv = z
    cdef float[:, :, :, ::1] yv = y
    cdef uint32_t[::1] apv = ap
    cdef const uint32_t[:, ::1] bv = b
    cdef const float[::1] biasv
    cdef _ConvJob job
    job.geom, job.x, job.out, job.y, job.bias = &geom, &xv[0, 0, 0, 0], &zv[0, 0, 0, 0], \
        &yv[0, 0, 0, 0], NULL
    job.abuf, job.a_step, job.b, job.ldb = &apv[0], a_step, &bv[0, 0], b.shape[1]
    job.m, job.f, job.kp, job.x_step = m, f, kp, <long>g["H"] * g["W"] * g["C"]
    job.act, job.alpha = ACTIVATIONS.index(act_name), <float>alpha
    if act_name == "softmax":   # whole rows: after the product
        job.y = NULL
    elif bias is not None:
        biasv = bias
        job.bias = &biasv[0]
    with nogil:
        pynn_team_for(n, 1, threads if n > 1 else 1, _conv_forward_job, &job)
    if act_name == "softmax":
        y, z2 = _bias_act(z.reshape(-1, f), bias, act_name, alpha)
        return y.reshape(z.shape), (None if z2 is None else z2.reshape(z.shape))
    return y, (z if keep_z else None)


def bf16_conv2d_backward_input(dz, kernel, input_shape, strides=(1, 1), padding="valid",
                               dilation_rate=(1, 1)):
    """dx (N, H, W, C) as conv2d_backward_input, from bf16-rounded dz and kernel:
    dcols = dz @ kernel.T by chunks of rows, each scattered back at once (col2im)."""
    dz, kernel, input_shape, g = operands.bf16_conv2d_backward_input(
        HOST, dz, kernel, input_shape, strides, padding, dilation_rate)
    if g["C"] < NARROW_CHANNELS or _float32_road(g, input_shape):
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
    if _amx and g["SH"] == 1 and g["SW"] == 1:
        # Stride 1: dx is the forward conv of dz (zero outside it) with the kernel flipped
        # and its channel axes swapped; the forward's im2col reads dz where the flipped taps
        # land, so no col2im scatter (a 32 -> 64 channel layer at batch 64: 1.69 -> 1.09 ms).
        flipped = np.ascontiguousarray(kernel[::-1, ::-1].transpose(0, 1, 3, 2))
        gt = dict(g, H=g["HO"], W=g["WO"], C=f, F=g["C"], HO=g["H"], WO=g["W"],
                  PT=(g["KH"] - 1) * g["DH"] - g["PT"], PL=(g["KW"] - 1) * g["DW"] - g["PL"])
        _amx_conv_forward(dz, flipped.reshape(-1, g["C"]), dx, gt)
        return dx
    if _amx:
        _amx_conv_backward_input(dz, kernel.reshape(k, f), dx, g)
        return dx
    b = _transposed_pairs(kernel.reshape(k, f))
    cdef int threads = omp_get_max_threads()
    ap = np.empty(threads * a_step, np.uint32)
    cols = np.empty(threads * c_step, np.float32)
    cdef const float[:, :, :, ::1] dzv = dz
    cdef float[::1] dxv = dx.reshape(-1)
    cdef uint32_t[::1] apv = ap
    cdef const uint32_t[:, ::1] bv = b
    cdef float[::1] colv = cols
    cdef _ConvJob job
    job.geom, job.x, job.out, job.cols, job.c_step = &geom, &dzv[0, 0, 0, 0], &dxv[0], \
        &colv[0], c_step
    job.abuf, job.a_step, job.b, job.ldb = &apv[0], a_step, &bv[0, 0], b.shape[1]
    job.m, job.f, job.k, job.kp, job.x_step = m, f, k, fp, x_step
    with nogil:
        pynn_team_for(n, 1, threads if n > 1 else 1, _conv_input_job, &job)
    return dx


def bf16_conv2d_backward_weight(x, dz, kernel_shape, strides=(1, 1), padding="valid",
                                dilation_rate=(1, 1)):
    """dkernel (KH, KW, C, F) as conv2d_backward_weight, from bf16-rounded x and dz:
    im2col.T @ dz per sample, by chunks of rows in the pairs format."""
    x, dz, kernel_shape, g = operands.bf16_conv2d_backward_weight(
        HOST, x, dz, kernel_shape, strides, padding, dilation_rate)
    if g["C"] < NARROW_CHANNELS or _float32_road(g, weight_grad=True):
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
    if _amx and g["SH"] == 1 and g["SW"] == 1 and g["C"] % 32 == 0:
        return _amx_conv_wgrad_direct(x, dz, g, groups)
    partial = np.zeros((groups, k, f), np.float32)
    if _amx:
        _amx_conv_backward_weight(x, dz, partial, g)
        return partial.sum(axis=0).reshape(kernel_shape) if groups > 1 else \
            partial[0].reshape(kernel_shape)
    ap = np.empty(groups * a_step, np.uint32)
    bp = np.empty(groups * b_step, np.uint32)
    tmp = np.empty(groups * t_step, np.uint16)
    cdef const float[:, :, :, ::1] xv = x
    cdef const float[:, :, :, ::1] dzv = dz
    cdef uint32_t[::1] apv = ap
    cdef uint32_t[::1] bpv = bp
    cdef uint16_t[::1] tv = tmp
    cdef float[:, :, ::1] wv = partial
    cdef _ConvJob job
    job.geom, job.x, job.dz, job.out = &geom, &xv[0, 0, 0, 0], &dzv[0, 0, 0, 0], \
        &wv[0, 0, 0]
    job.abuf, job.a_step, job.bbuf, job.b_step, job.tmp, job.t_step = &apv[0], a_step, \
        &bpv[0], b_step, &tv[0], t_step
    job.m, job.f, job.k, job.n, job.groups, job.lda, job.ldb = m, f, k, n, groups, lda, ldb
    job.x_step = <long>g["H"] * g["W"] * g["C"]
    with nogil:
        # each group's samples into its own partial (summed in group order below): the
        # same bits at any thread count
        pynn_team_for(groups, 1, omp_get_max_threads(), _conv_weight_job, &job)
    return partial.sum(axis=0).reshape(kernel_shape) if groups > 1 else \
        partial[0].reshape(kernel_shape)


# -- Conv2D on AMX: the same chunks of im2col rows as above, converted into tile panels ------

def _amx_conv_direct(x, kernel2d, z, g, bias=None, bint relu=False):
    """z (N, HO, WO, F) = the stride-1 conv of x (C a multiple of 32) from its padded bf16
    image (_bf16amx.h) [+ bias] [through relu]: the units split over the threads in
    contiguous runs."""
    _amx_conv_direct_from(x, kernel2d, z, g, bias, relu, NULL)


cdef _amx_conv_direct_from(x, kernel2d, z, g, bias, bint relu, const pynn_amxcp_pool* pool):
    """_amx_conv_direct; with pool, x is None and its images are made from the pool's arrays
    (the input gradient of a conv whose pool's backward arrays stand for its dz)."""
    cdef pynn_amx_conv_plan pl
    cdef const float[::1] biasv
    cdef const float* bptr = NULL
    if bias is not None:
        biasv = bias
        bptr = &biasv[0]
    cdef long N = g["N"], H = g["H"], W = g["W"], PT = g["PT"], PL = g["PL"]
    pl.HO, pl.WO, pl.C, pl.F = g["HO"], g["WO"], g["C"], g["F"]
    pl.KH, pl.KW, pl.DH, pl.DW = g["KH"], g["KW"], g["DH"], g["DW"]
    cdef long HP = pl.HO + (pl.KH - 1) * pl.DH
    pl.WP = pl.WO + (pl.KW - 1) * pl.DW
    pl.sample_words = HP * pl.WP * (pl.C // 2)
    pl.pblocks = (pl.HO * pl.WP + 31) // 32
    pl.fgroups = (pynn_amx_panels(pl.F) + PYNN_AMX_GROUP - 1) // PYNN_AMX_GROUP
    bt, kp16 = _amx_b_pairs(kernel2d)
    pl.kp16 = kp16
    # The last block's taps read up to 31 + (KW - 1) * DW positions past the last image.
    cdef long slack = (32 + (pl.KW - 1) * pl.DW) * (pl.C // 2)
    cdef long per_sample = pl.pblocks * pl.fgroups, threads = omp_get_max_threads()
    cdef long units = N * per_sample, own = pl.sample_words + slack, tid
    cdef long chunks = max(1, min(threads, units)), t, s
    cdef const float[:, :, :, ::1] xv
    cdef float[:, :, :, ::1] zv = z
    cdef uint32_t[::1] xbv
    cdef const uint32_t[::1] btv = bt
    cdef float[::1] bkv
    cdef _AmxConvJob job
    cdef float[::1] dzbv
    job.x, job.pool, job.dzbuf, job.dz_step = NULL, pool, NULL, 0
    if x is not None:
        xv = x
        job.x = &xv[0, 0, 0, 0]
    if pool != NULL:
        job.dz_step = H * W * pl.C
        dzbuf = aligned_empty(threads * job.dz_step, np.float32)
        dzbv = dzbuf
        job.dzbuf = &dzbv[0]
    job.pl, job.bt, job.bias, job.relu, job.z = &pl, &btv[0], bptr, relu, &zv[0, 0, 0, 0]
    job.H, job.W, job.HP, job.PT, job.PL, job.own = H, W, HP, PT, PL, own
    job.per_sample, job.units, job.chunks = per_sample, units, chunks
    if N >= 2 * threads:
        # One job, no barrier: each thread pads a sample into its own image and runs that
        # sample's units (two jobs, all images padded first, wait for each other).
        xb = np.empty(threads * own, np.uint32)
        blk = np.empty(threads * _AMX_BLOCK, np.float32)
        for t in range(threads):
            xb[t * own + pl.sample_words:(t + 1) * own] = 0
        xbv = xb
        bkv = blk
        job.xb, job.blk = &xbv[0], &bkv[0]
        with nogil:
            pynn_team_for(N, 1, threads, _amx_conv_sample_job, &job)
        return
    xb = np.empty(N * pl.sample_words + slack, np.uint32)
    xb[N * pl.sample_words:] = 0
    blk = np.empty(chunks * _AMX_BLOCK, np.float32)
    xbv = xb
    bkv = blk
    job.xb, job.blk = &xbv[0], &bkv[0]
    with nogil:
        pynn_team_for(N, 1, threads if N > 1 else 1, _amx_conv_pad_job, &job)
        pynn_team_for(chunks, 1, threads if chunks > 1 else 1, _amx_conv_units_job, &job)


ctypedef struct _AmxConvJob:
    const pynn_amx_conv_plan* pl
    const float* x
    const pynn_amxcp_pool* pool   # or NULL: the images from the pool's arrays (x NULL),
    float* dzbuf                  # through a per-slot dz of one sample (dz_step floats)
    long dz_step
    const uint32_t* bt
    const float* bias
    bint relu
    float* z
    uint32_t* xb
    float* blk
    long H, W, HP, PT, PL, own, per_sample, units, chunks


cdef inline void _amx_pad_sample(const _AmxConvJob* j, long s, int slot,
                                 uint32_t* image) noexcept nogil:
    """Sample s's padded bf16 image into `image`: from x, or from the pool's arrays through
    this slot's dz buffer."""
    cdef const pynn_amx_conv_plan* pl = j.pl
    cdef const float* src = j.x + s * j.H * j.W * pl.C if j.pool == NULL else \
        j.dzbuf + slot * j.dz_step
    if j.pool != NULL:
        pynn_amxcp_make_dz(j.pool, s, j.dzbuf + slot * j.dz_step)
    pynn_amx_pad_image(src, j.H, j.W, pl.C, pl.WP, j.PT, j.PL, 0, j.HP, image)


cdef void _amx_conv_sample_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    """Samples [begin, end), each padded into this thread's image and multiplied."""
    cdef _AmxConvJob* j = <_AmxConvJob*>ctx
    cdef const pynn_amx_conv_plan* pl = j.pl
    cdef long s, img = pl.HO * pl.WO * pl.F
    for s in range(begin, end):
        _amx_pad_sample(j, s, slot, j.xb + slot * j.own)
        pynn_amx_conv_units(pl, j.xb + slot * j.own, j.bt, j.bias, j.relu, j.z + s * img, 0,
                            j.per_sample, j.blk + slot * _AMX_BLOCK)


cdef void _amx_conv_pad_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _AmxConvJob* j = <_AmxConvJob*>ctx
    cdef long s
    for s in range(begin, end):
        _amx_pad_sample(j, s, slot, j.xb + s * j.pl.sample_words)


cdef void _amx_conv_units_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _AmxConvJob* j = <_AmxConvJob*>ctx
    cdef long t
    for t in range(begin, end):
        pynn_amx_conv_units(j.pl, j.xb, j.bt, j.bias, j.relu, j.z, t * j.units // j.chunks,
                            (t + 1) * j.units // j.chunks, j.blk + t * _AMX_BLOCK)


def _amx_conv_forward(x, kernel2d, z, g):
    """z (N, HO, WO, F) = im2col(x) @ kernel2d, one sample per thread, CHUNK_ROWS rows at a
    time (CHUNK_ROWS is a whole number of 32-row panels); stride-1 convs of channels in
    whole tiles run _amx_conv_direct instead."""
    if g["SH"] == 1 and g["SW"] == 1 and g["C"] % 32 == 0:
        return _amx_conv_direct(x, kernel2d, z, g)
    cdef pynn_bf16_conv_geom geom = _geom(g)
    cdef int n = g["N"], f = g["F"], m = g["HO"] * g["WO"]
    cdef long k = kernel2d.shape[0]
    bt, kp16_ = _amx_b_pairs(kernel2d)
    cdef long kp16 = kp16_, threads = omp_get_max_threads()
    cdef long a_step = pynn_amx_words(CHUNK_ROWS, (k + 1) // 2)
    ap = np.empty(threads * a_step, np.uint32)
    rows_tmp = np.empty(threads * 2 * kp16, np.uint16)
    blk = np.empty(threads * _AMX_BLOCK, np.float32)
    cdef const float[:, :, :, ::1] xv = x
    cdef float[:, :, :, ::1] zv = z
    cdef const uint32_t[::1] btv = bt
    cdef uint32_t[::1] apv = ap
    cdef uint16_t[::1] rtv = rows_tmp
    cdef float[::1] bkv = blk
    cdef int s, ci, m0, rows, tid
    with nogil:
        for s in prange(n, schedule="static", use_threads_if=n > 1):
            tid = omp_get_thread_num()
            for ci in range(_panels(m, CHUNK_ROWS)):
                m0 = ci * CHUNK_ROWS
                rows = min(CHUNK_ROWS, m - m0)
                pynn_amx_im2col_a(&xv[s, 0, 0, 0], &geom, m0, rows, kp16,
                                  &rtv[0] + tid * 2 * kp16, &apv[0] + tid * a_step)
                pynn_amx_gemm(rows, f, kp16, &apv[0] + tid * a_step, &btv[0],
                              &zv[s, 0, 0, 0] + <long>m0 * f, f, 0, 0, 0,
                              pynn_amx_units(rows, f), &bkv[0] + tid * _AMX_BLOCK)


def _amx_conv_backward_input(dz, kernel2d, dx, g):
    """dx += col2im(dz @ kernel2d.T) by chunks of rows, each chunk's columns computed as
    (kernel2d @ dz_chunk.T).T: the kernel untransposed, the chunk of dz transposed."""
    cdef pynn_bf16_conv_geom geom = _geom(g)
    cdef int n = g["N"], f = g["F"], m = g["HO"] * g["WO"]
    cdef long k = kernel2d.shape[0]
    at, kp16_ = _amx_a_rows(kernel2d)
    cdef long kp16 = kp16_, threads = omp_get_max_threads()
    cdef long b_step = pynn_amx_words(CHUNK_ROWS, (f + 1) // 2), c_step = <long>CHUNK_ROWS * k
    cdef long x_step = <long>g["H"] * g["W"] * g["C"]
    bp = np.empty(threads * b_step, np.uint32)
    cols = np.empty(threads * c_step, np.float32)
    blk = np.empty(threads * _AMX_BLOCK, np.float32)
    cdef const float[:, :, :, ::1] dzv = dz
    cdef float[::1] dxv = dx.reshape(-1)
    cdef const uint32_t[::1] atv = at
    cdef uint32_t[::1] bpv = bp
    cdef float[::1] colv = cols
    cdef float[::1] bkv = blk
    cdef int s, ci, m0, rows, tid
    with nogil:
        for s in prange(n, schedule="static", use_threads_if=n > 1):
            tid = omp_get_thread_num()
            for ci in range(_panels(m, CHUNK_ROWS)):
                m0 = ci * CHUNK_ROWS
                rows = min(CHUNK_ROWS, m - m0)
                pynn_amx_b_transposed(&dzv[s, 0, 0, 0] + <long>m0 * f, f, rows, f, 0,
                                      kp16 // 16, 0, pynn_amx_panels(rows) * 2, kp16,
                                      &bpv[0] + tid * b_step)
                pynn_amx_gemm(k, rows, kp16, &atv[0], &bpv[0] + tid * b_step,
                              &colv[0] + tid * c_step, k, 1, 0, 0, pynn_amx_units(k, rows),
                              &bkv[0] + tid * _AMX_BLOCK)
                pynn_bf16_col2im(&colv[0] + tid * c_step, &geom, m0, rows,
                                 &dxv[0] + s * x_step)


ctypedef struct _AmxWgradJob:
    const float* x
    const float* dz
    const pynn_amxcp_pool* pool   # or NULL: dz made from the pool's arrays (dz NULL) into
    float* dzbuf                  # a per-group buffer of one sample's dz (dz_step floats)
    long dz_step
    long* hits                    # per group, with pool
    float* acc
    uint32_t* at
    uint32_t* ev
    uint32_t* od
    long N, H, W, C, F, HO, WO, KH, KW, DH, DW, PT, PL, HP, WP, kp16, npairs
    long a_step, i_step, groups, acc_step


cdef void _amx_wgrad_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    """Groups [begin, end) of _amx_conv_wgrad_direct, each with its own buffers."""
    cdef _AmxWgradJob* j = <_AmxWgradJob*>ctx
    cdef long grp, s
    for grp in range(begin, end):
        for s in range(grp * j.N // j.groups, (grp + 1) * j.N // j.groups):
            if j.pool != NULL:
                j.hits[grp] += pynn_amxcp_make_dz(j.pool, s, j.dzbuf + grp * j.dz_step)
                pynn_amx_dz_positions(j.dzbuf + grp * j.dz_step, j.HO, j.WO, j.WP, j.F, j.kp16,
                                      j.at + grp * j.a_step)
            else:
                pynn_amx_dz_positions(j.dz + s * j.HO * j.WO * j.F, j.HO, j.WO, j.WP, j.F,
                                      j.kp16, j.at + grp * j.a_step)
            pynn_amx_pair_image(j.x + s * j.H * j.W * j.C, j.H, j.W, j.C, j.HP, j.WP, j.PT,
                                j.PL, j.npairs, j.ev + grp * j.i_step, j.od + grp * j.i_step)
            pynn_amx_conv_wgrad(j.at + grp * j.a_step, j.ev + grp * j.i_step,
                                j.od + grp * j.i_step, j.C, j.F, j.KH, j.KW, j.DH, j.DW, j.WP,
                                j.kp16, j.acc + grp * j.acc_step)


def _amx_conv_wgrad_direct(x, dz, g, long groups):
    """The (KH, KW, C, F) kernel gradient of a stride-1 conv with C a multiple of 32 from the
    padded image's pair copies (_bf16amx.h): each of `groups` fixed sample groups sums its
    samples in order into its own (taps, F, C) accumulator, the groups then added in order:
    the same bits for any thread count."""
    return _amx_conv_wgrad_from(x, dz, g, groups, NULL, None)


cdef _amx_conv_wgrad_from(x, dz, g, long groups, const pynn_amxcp_pool* pool, hits):
    """_amx_conv_wgrad_direct; with pool, dz is None and made from the pool's arrays, each
    group's argmax hits added into hits (int64, groups)."""
    cdef long N = g["N"], H = g["H"], W = g["W"], C = g["C"], F = g["F"]
    cdef long HO = g["HO"], WO = g["WO"], KH = g["KH"], KW = g["KW"], DH = g["DH"]
    cdef long DW = g["DW"], PT = g["PT"], PL = g["PL"]
    cdef long HP = HO + (KH - 1) * DH, WP = WO + (KW - 1) * DW
    cdef long kp16 = pynn_amx_kp16((HO * WP + 1) // 2)
    cdef long shift_max = (KH - 1) * DH * WP + (KW - 1) * DW
    cdef long npairs = kp16 + shift_max // 2 + 1
    cdef long Fp = pynn_amx_panels(F) * 32
    cdef long a_step = pynn_amx_words(F, kp16), i_step = npairs * C
    acc = np.zeros((groups, KH * KW, Fp, C), np.float32)
    at = np.empty(groups * a_step, np.uint32)
    ev = np.empty(groups * i_step, np.uint32)
    od = np.empty(groups * i_step, np.uint32)
    cdef const float[:, :, :, ::1] xv = x
    cdef const float[:, :, :, ::1] dzv
    cdef long[::1] hv
    cdef float[:, :, :, ::1] accv = acc
    cdef uint32_t[::1] atv = at
    cdef uint32_t[::1] evv = ev
    cdef uint32_t[::1] odv = od
    cdef long grp
    cdef _AmxWgradJob job
    cdef float[::1] dzbv
    job.dz, job.pool, job.hits, job.dzbuf, job.dz_step = NULL, pool, NULL, NULL, 0
    if dz is not None:
        dzv = dz
        job.dz = &dzv[0, 0, 0, 0]
    if pool != NULL:
        job.dz_step = HO * WO * F
        dzbuf = aligned_empty(groups * job.dz_step, np.float32)
        dzbv = dzbuf
        job.dzbuf = &dzbv[0]
    if hits is not None:
        hv = hits
        job.hits = &hv[0]
    job.x, job.acc, job.at, job.ev, job.od = &xv[0, 0, 0, 0], &accv[0, 0, 0, 0], &atv[0], \
        &evv[0], &odv[0]
    job.N, job.H, job.W, job.C, job.F, job.HO, job.WO = N, H, W, C, F, HO, WO
    job.KH, job.KW, job.DH, job.DW, job.PT, job.PL, job.HP, job.WP = KH, KW, DH, DW, PT, PL, \
        HP, WP
    job.kp16, job.npairs, job.a_step, job.i_step, job.groups = kp16, npairs, a_step, i_step, \
        groups
    job.acc_step = KH * KW * Fp * C
    with nogil:
        # a group per item, on pynn's worker team (native/_team.h)
        pynn_team_for(groups, 1, omp_get_max_threads(), _amx_wgrad_job, &job)
    total = acc[0]
    for grp in range(1, groups):
        total = total + acc[grp]
    return np.ascontiguousarray(total[:, :F, :].transpose(0, 2, 1)).reshape(KH, KW, C, F)


def _amx_conv_backward_weight(x, dz, partial, g):
    """partial[group] (K, F) += im2col(x).T @ dz over the group's samples, by chunks of rows,
    each computed as (dz_chunk.T @ im2col_chunk).T: A = the chunk of dz transposed, B = the
    im2col rows paired along the pixels."""
    cdef pynn_bf16_conv_geom geom = _geom(g)
    cdef int n = g["N"], f = g["F"], m = g["HO"] * g["WO"]
    cdef long k = partial.shape[1], groups = partial.shape[0]
    cdef long a_step = pynn_amx_words(f, CHUNK_ROWS // 2)
    cdef long b_step = pynn_amx_words(k, CHUNK_ROWS // 2)
    cdef long t_step = 2 * (k + 1), w_step = pynn_amx_panels(k) * 32
    ap = np.empty(groups * a_step, np.uint32)
    bp = np.empty(groups * b_step, np.uint32)
    tmp = np.empty(groups * t_step, np.uint16)
    words = np.empty(groups * w_step, np.uint32)
    blk = np.empty(groups * _AMX_BLOCK, np.float32)
    cdef const float[:, :, :, ::1] xv = x
    cdef const float[:, :, :, ::1] dzv = dz
    cdef float[:, :, ::1] wv = partial
    cdef uint32_t[::1] apv = ap
    cdef uint32_t[::1] bpv = bp
    cdef uint16_t[::1] tv = tmp
    cdef uint32_t[::1] wdv = words
    cdef float[::1] bkv = blk
    cdef int grp, s, ci, m0, rows
    cdef long kp16
    with nogil:
        for grp in prange(groups, schedule="static"):
            for s in range(grp * n // groups, (grp + 1) * n // groups):
                for ci in range(_panels(m, CHUNK_ROWS)):
                    m0 = ci * CHUNK_ROWS
                    rows = min(CHUNK_ROWS, m - m0)
                    kp16 = pynn_amx_kp16((rows + 1) // 2)
                    pynn_amx_a_transposed(&dzv[s, 0, 0, 0] + <long>m0 * f, f, rows, f, 0,
                                          kp16 // 16, 0, pynn_amx_panels(f) * 2, kp16,
                                          &apv[0] + grp * a_step)
                    pynn_amx_im2col_b(&xv[s, 0, 0, 0], &geom, m0, rows, kp16,
                                      &tv[0] + grp * t_step, &wdv[0] + grp * w_step,
                                      &bpv[0] + grp * b_step)
                    pynn_amx_gemm(f, k, kp16, &apv[0] + grp * a_step, &bpv[0] + grp * b_step,
                                  &wv[grp, 0, 0], f, 1, 1, 0, pynn_amx_units(f, k),
                                  &bkv[0] + grp * _AMX_BLOCK)


# -- Conv2D + MaxPooling2D of a narrow first layer on AMX (_bf16amx_pool.h) ------------------

# The slabs a kernel gradient's bands are summed in: fixed, so the bits do not depend on the
# thread count; a few per core so a busy core's share can move to the other.
cdef long _POOL_SLABS = 32


def _amx_pool_geom(g, pg):
    """_bf16amx_pool.h's geometry of conv g under pool pg, or None where its kernels do not
    apply: the window's K = KH * KW * C values past one tile row (32), F not whole 16-column
    tiles, column dilation, a pool whose windows do not tile the conv's output."""
    if not (_amx and g["KH"] * g["KW"] * g["C"] <= 32 and g["F"] % 16 == 0 and g["DW"] == 1
            and windows_tile(pg) and g["N"] and pg["HO"] and pg["WO"] and g["C"]):
        return None
    cdef pynn_amxcp_geom c
    c.N, c.H, c.W, c.C, c.F = g["N"], g["H"], g["W"], g["C"], g["F"]
    c.KH, c.KW, c.SH, c.SW, c.DH = g["KH"], g["KW"], g["SH"], g["SW"], g["DH"]
    c.PT, c.PL, c.HO, c.WO = g["PT"], g["PL"], g["HO"], g["WO"]
    c.PH, c.PW, c.PSH, c.PSW = pg["PH"], pg["PW"], pg["SH"], pg["SW"]
    c.HPo, c.WPo = pg["HO"], pg["WO"]
    c.HPd = (c.HO - 1) * c.SH + (c.KH - 1) * c.DH + 1
    c.WPd = (c.WO - 1) * c.SW + c.KW
    c.WOP = (c.WO + 15) // 16 * 16
    return c


ctypedef struct _AmxPoolJob:
    pynn_amxcp_geom g
    const float* x
    uint16_t* images       # sample n at n * image
    long image
    int planar
    const uint32_t* bt
    const float* bias_rows
    uint16_t* abuf         # per slot: abuf_step bf16 (two 16 x 32, or one 32 x 32)
    long abuf_step
    float* band            # per slot: PH * WOP * F floats
    long band_step
    int act
    float alpha
    float* pooled
    int* argmax
    const float* dpool
    const float* pool_out  # the pool's output (relu's mask) or NULL
    const int* pool_arg
    uint32_t* bbuf         # per slot: 512 words
    float* acc             # per slab: 32 x F
    float* db              # per slab: F
    long* hits             # per slab
    long slabs, bands


cdef void _amx_pool_image_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _AmxPoolJob* j = <_AmxPoolJob*>ctx
    cdef long n, xs = j.g.H * j.g.W * j.g.C
    for n in range(begin, end):
        pynn_amxcp_image(j.x + n * xs, &j.g, j.planar, j.images + n * j.image)


cdef void _amx_pool_forward_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    """Bands [begin, end) (band b = n * HPo + hp): its conv rows on the tiles into this
    slot's band buffer, the activation there, then pooled from there."""
    cdef _AmxPoolJob* j = <_AmxPoolJob*>ctx
    cdef const pynn_amxcp_geom* g = &j.g
    cdef long b, n, hp, wp, F = g.F, w0
    cdef float* band = j.band + slot * j.band_step
    cdef float* out
    pynn_amx_begin()
    for b in range(begin, end):
        n = b // g.HPo
        hp = b - n * g.HPo
        pynn_amxcp_band(g, j.images + n * j.image, j.bt, j.bias_rows, j.act == ACT_RELU, hp,
                        band, j.abuf + slot * j.abuf_step)
        if j.act != ACT_LINEAR and j.act != ACT_RELU:
            block_epilogue(band, band, <const float*>NULL, 0, <int>(g.PH * g.WOP), 0, <int>F,
                           <int>F, j.act, j.alpha)
        for wp in range(g.WPo):
            w0 = wp * g.PSW
            out = j.pooled + (b * g.WPo + wp) * F
            pynn_window_max_f(band + w0 * F, g.WOP * F, g.PH, g.PW, F,
                              <int>(hp * g.PSH * g.WO + w0), <int>g.WO, out,
                              j.argmax + (b * g.WPo + wp) * F)
    pynn_amx_end()


cdef void _amx_pool_wgrad_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _AmxPoolJob* j = <_AmxPoolJob*>ctx
    cdef long s
    for s in range(begin, end):
        j.hits[s] = pynn_amxcp_wgrad(&j.g, j.images, j.dpool, j.pool_out, j.pool_arg,
                                     s * j.bands // j.slabs, (s + 1) * j.bands // j.slabs,
                                     j.abuf + slot * j.abuf_step, j.bbuf + slot * 512,
                                     j.acc + s * 32 * j.g.F, j.db + s * j.g.F, )


cdef void _amx_pool_images(_AmxPoolJob* job, int planar, int threads) noexcept nogil:
    job.planar = planar
    pynn_team_for(job.g.N, team_grain(job.g.N, threads), threads, _amx_pool_image_job, job)


def _amx_pool_forward(x, kernel, bias, pynn_amxcp_geom geom, act_name, double alpha):
    """(pooled, argmax) of conv2d_pool_forward on the tiles (geom from _amx_pool_geom)."""
    cdef long N = geom.N, F = geom.F, K = geom.KH * geom.KW * geom.C
    cdef int threads = omp_get_max_threads()
    cdef long nb = N * geom.HPo
    pooled = np.empty((N, geom.HPo, geom.WPo, F), np.float32)
    argmax = np.empty(pooled.shape, np.int32)
    bt = aligned_empty(pynn_amx_words(F, 16), np.uint32)
    cdef uint32_t[::1] btv = bt
    cdef const float[::1] kv = kernel.reshape(-1)
    with nogil:
        pynn_amx_b_pairs(&kv[0], F, K, F, 0, 16, 0, 2 * pynn_amx_panels(F), 16, &btv[0])
    cdef long image = geom.HPd * geom.WPd * geom.C
    images = np.empty(N * image + 32, np.uint16)
    abuf = aligned_empty(threads * 1024, np.uint16)
    band = aligned_empty(threads * geom.PH * geom.WOP * F, np.float32)
    cdef float[::1] brv
    cdef const float* bias_rows = NULL
    if bias is not None:
        rows = aligned_empty(16 * F, np.float32)
        rows.reshape(16, F)[:] = bias
        brv = rows
        bias_rows = &brv[0]
    cdef const float[:, :, :, ::1] xv = x
    cdef uint16_t[::1] imv = images
    cdef uint16_t[::1] abv = abuf
    cdef float[::1] bandv = band
    cdef float[:, :, :, ::1] pv = pooled
    cdef int[:, :, :, ::1] av = argmax
    cdef _AmxPoolJob job
    job.g, job.x, job.images, job.image = geom, &xv[0, 0, 0, 0], &imv[0], image
    job.bt, job.bias_rows = &btv[0], bias_rows
    job.abuf, job.abuf_step = &abv[0], 1024
    job.band, job.band_step = &bandv[0], geom.PH * geom.WOP * F
    job.act, job.alpha = ACTIVATIONS.index(act_name), <float>alpha
    job.pooled, job.argmax = &pv[0, 0, 0, 0], &av[0, 0, 0, 0]
    with nogil:
        _amx_pool_images(&job, 0, threads)
        pynn_team_for(nb, team_grain(nb, threads), threads, _amx_pool_forward_job, &job)
    return pooled, argmax


def _amx_pool_wgrad(dpool, argmax, pooled, x, pynn_amxcp_geom geom, op):
    """(dkernel (K, F), dbias (F,)) of conv2d_pool_backward on the tiles, dz from the pool's
    arrays (pooled None: linear) rounded to bf16."""
    cdef long N = geom.N, F = geom.F, K = geom.KH * geom.KW * geom.C
    cdef int threads = omp_get_max_threads()
    cdef long nb = N * geom.HPo, slabs = min(nb, _POOL_SLABS)
    cdef long image = geom.HPd * geom.C * geom.WPd
    images = np.empty(N * image + 32, np.uint16)
    abuf = aligned_empty(threads * 1024, np.uint16)
    bbuf = aligned_empty(threads * 512, np.uint32)
    acc = np.empty((slabs, 32, F), np.float32)
    db = np.empty((slabs, F), np.float32)
    hits = np.zeros(slabs, np.int64)
    cdef const float[:, :, :, ::1] xv = x
    cdef const float[:, :, :, ::1] dv = dpool
    cdef const int[:, :, :, ::1] av = argmax
    cdef const float[:, :, :, ::1] pv
    cdef uint16_t[::1] imv = images
    cdef uint16_t[::1] abv = abuf
    cdef uint32_t[::1] bbv = bbuf
    cdef float[:, :, ::1] accv = acc
    cdef float[:, ::1] dbv = db
    cdef long[::1] hv = hits
    cdef _AmxPoolJob job
    job.g, job.x, job.images, job.image = geom, &xv[0, 0, 0, 0], &imv[0], image
    job.abuf, job.abuf_step, job.bbuf = &abv[0], 1024, &bbv[0]
    job.dpool, job.pool_arg, job.pool_out = &dv[0, 0, 0, 0], &av[0, 0, 0, 0], NULL
    if pooled is not None:
        pv = pooled
        job.pool_out = &pv[0, 0, 0, 0]
    job.acc, job.db, job.hits, job.slabs, job.bands = &accv[0, 0, 0], &dbv[0, 0], &hv[0], \
        slabs, nb
    with nogil:
        _amx_pool_images(&job, 1, threads)
        pynn_team_for(slabs, 1, threads, _amx_pool_wgrad_job, &job)
    dw = np.empty((K, F), np.float32)
    dbias = np.empty(F, np.float32)
    cdef float[:, ::1] dwv = dw
    cdef float[::1] dbo = dbias
    cdef long total_hits = 0, s, k, f
    with nogil:
        # the slabs in order: the same bits for any thread count
        for s in range(slabs):
            total_hits += hv[s]
        for k in range(K):
            for f in range(F):
                dwv[k, f] = accv[0, k, f]
            for s in range(1, slabs):
                for f in range(F):
                    dwv[k, f] = dwv[k, f] + accv[s, k, f]
        for f in range(F):
            dbo[f] = dbv[0, f]
        for s in range(1, slabs):
            for f in range(F):
                dbo[f] = dbo[f] + dbv[s, f]
    missed = N * geom.HPo * geom.WPo * F - total_hits
    if missed:
        raise ValueError(f"{op}: {missed} argmax entries lie outside their pool window "
                         f"(argmax must come from maxpool2d_forward over y with pool_size "
                         f"{(geom.PH, geom.PW)} and strides {(geom.PSH, geom.PSW)})")
    return dw, dbias


ctypedef struct _AmxWideJob:
    pynn_amx_conv_plan pl
    const float* x
    uint32_t* images       # sample n at n * own words
    long own, H, W, HP, PT, PL
    const uint32_t* bt
    const float* bias_rows
    float* band            # per slot: band_step floats
    long band_step, WOP, PH, PW, PSH, PSW, HPo, WPo
    int act
    float alpha
    float* pooled
    int* argmax


cdef void _amx_wide_pad_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _AmxWideJob* j = <_AmxWideJob*>ctx
    cdef long n, xs = j.H * j.W * j.pl.C
    for n in range(begin, end):
        pynn_amx_pad_image(j.x + n * xs, j.H, j.W, j.pl.C, j.pl.WP, j.PT, j.PL, 0, j.HP,
                           j.images + n * j.own)


cdef void _amx_wide_forward_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    """Bands [begin, end): the PH conv rows under a row of windows on the tiles into this
    slot's band, the activation there, then pooled from there."""
    cdef _AmxWideJob* j = <_AmxWideJob*>ctx
    cdef long b, n, hp, wp, w0, F = j.pl.F
    cdef float* band = j.band + slot * j.band_step
    pynn_amx_begin()
    for b in range(begin, end):
        n = b // j.HPo
        hp = b - n * j.HPo
        pynn_amxcp_wide_band(&j.pl, j.images + n * j.own, j.bt, j.bias_rows,
                             j.act == ACT_RELU, hp * j.PSH, j.PH, j.WOP, band)
        if j.act != ACT_LINEAR and j.act != ACT_RELU:
            block_epilogue(band, band, <const float*>NULL, 0, <int>(j.PH * j.WOP), 0, <int>F,
                           <int>F, j.act, j.alpha)
        for wp in range(j.WPo):
            w0 = wp * j.PSW
            pynn_window_max_f(band + w0 * F, j.WOP * F, j.PH, j.PW, F,
                              <int>(hp * j.PSH * j.pl.WO + w0), <int>j.pl.WO,
                              j.pooled + (b * j.WPo + wp) * F, j.argmax + (b * j.WPo + wp) * F)
    pynn_amx_end()


def _amx_wide_pool_forward(x, kernel, bias, g, pg, act_name, double alpha):
    """(pooled, argmax) of a stride-1 conv whose channels (C) and filters (F) come in
    multiples of 32, band by band on the tiles (pynn_amxcp_wide_band over the direct conv's
    padded image and kernel panels), each band pooled in cache: y is never whole."""
    cdef _AmxWideJob job
    cdef long N = g["N"], F = g["F"], K = g["KH"] * g["KW"] * g["C"]
    cdef int threads = omp_get_max_threads()
    job.pl.HO, job.pl.WO, job.pl.C, job.pl.F = g["HO"], g["WO"], g["C"], F
    job.pl.KH, job.pl.KW, job.pl.DH, job.pl.DW = g["KH"], g["KW"], g["DH"], g["DW"]
    job.HP = job.pl.HO + (job.pl.KH - 1) * job.pl.DH
    job.pl.WP = job.pl.WO + (job.pl.KW - 1) * job.pl.DW
    job.pl.sample_words = job.HP * job.pl.WP * (job.pl.C // 2)
    job.pl.pblocks, job.pl.fgroups = 0, 0
    bt, kp16 = _amx_b_pairs(np.ascontiguousarray(kernel.reshape(K, F)))
    job.pl.kp16 = kp16
    # a band's last 16-pixel tile reads up to 15 + (KW - 1) * DW positions past its row
    job.own = job.pl.sample_words + (32 + (job.pl.KW - 1) * job.pl.DW) * (job.pl.C // 2)
    job.H, job.W, job.PT, job.PL = g["H"], g["W"], g["PT"], g["PL"]
    job.PH, job.PW, job.PSH, job.PSW = pg["PH"], pg["PW"], pg["SH"], pg["SW"]
    job.HPo, job.WPo = pg["HO"], pg["WO"]
    job.WOP = (job.pl.WO + 15) // 16 * 16
    cdef long nb = N * job.HPo
    pooled = np.empty((N, job.HPo, job.WPo, F), np.float32)
    argmax = np.empty(pooled.shape, np.int32)
    images = aligned_empty(N * job.own, np.uint32)
    band = aligned_empty(threads * (job.PH + 1) * job.WOP * F, np.float32)
    # the slack past each image: read by the last tiles, never used (one NumPy call, not a
    # Python loop over the samples)
    images.reshape(N, job.own)[:, job.pl.sample_words:] = 0
    cdef uint32_t[::1] btv = bt
    cdef uint32_t[::1] imv = images
    cdef float[::1] bandv = band
    cdef float[::1] brv
    job.bias_rows = NULL
    if bias is not None:
        rows = aligned_empty(16 * F, np.float32)
        rows.reshape(16, F)[:] = bias
        brv = rows
        job.bias_rows = &brv[0]
    cdef const float[:, :, :, ::1] xv = x
    cdef float[:, :, :, ::1] pv = pooled
    cdef int[:, :, :, ::1] av = argmax
    job.x, job.images, job.bt = &xv[0, 0, 0, 0], &imv[0], &btv[0]
    job.band, job.band_step = &bandv[0], (job.PH + 1) * job.WOP * F
    job.act, job.alpha = ACTIVATIONS.index(act_name), <float>alpha
    job.pooled, job.argmax = &pv[0, 0, 0, 0], &av[0, 0, 0, 0]
    with nogil:
        pynn_team_for(N, team_grain(N, threads), threads, _amx_wide_pad_job, &job)
        pynn_team_for(nb, team_grain(nb, threads), threads, _amx_wide_forward_job, &job)
    return pooled, argmax


def _amx_wide_applies(g, pg):
    return (_amx and g["C"] % 32 == 0 and g["F"] % 32 == 0 and g["SH"] == 1 and g["SW"] == 1
            and windows_tile(pg) and g["N"] and pg["HO"] and pg["WO"] and g["C"])


def _named(exc, op):
    """A float32 road's error (an argmax outside its window: the operands are checked
    before) under the bf16 op the caller called, its own op name dropped."""
    head, sep, rest = str(exc).partition(": ")
    return ValueError(f"{op}: {rest if sep and ' ' not in head else exc}")


def _wide_pool_backward(op, name, a, dpool, argmax, pooled, x, z, y, kernel, g, pg, strides,
                        padding, dilation_rate, use_bias, need_input_grad):
    """bf16_conv2d_pool_backward of a wide conv (NARROW_CHANNELS channels or more): dz and
    the bias gradient in float32 from the pool's arrays (no pool input gradient where the
    windows tile the map and the activation is relu or linear), then the bf16 products,
    which round dz: the wide layers' separate road (activation_bias_backward, then the
    products), the same bits."""
    tiles = windows_tile(pg) and (name == "linear" or (name == "relu" and pooled is not None))
    if (tiles and _amx and g["SH"] == 1 and g["SW"] == 1 and g["C"] % 32 == 0
            and g["F"] % 32 == 0 and dpool.size and x.size):
        return _amx_wide_pool_backward(op, name, dpool, argmax, pooled, x, kernel, g, pg,
                                       use_bias, need_input_grad)
    if tiles:
        try:
            dz, db = _pooled_activation_bias(dpool, argmax, pooled if name == "relu" else None,
                                             pg, name, a)
        except ValueError as exc:
            raise _named(exc, op) from None
    elif y is None:
        raise ValueError(f"{op}: y (the conv's output) is needed for '{name}' under this "
                         f"pool; got None")
    else:
        dz, db = activation_bias_backward(maxpool2d_backward(dpool, argmax, tuple(y.shape)),
                                          z, y, name, a)
    dk = bf16_conv2d_backward_weight(x, dz, tuple(kernel.shape), strides, padding,
                                     dilation_rate)
    dx = (bf16_conv2d_backward_input(dz, kernel, tuple(x.shape), strides, padding,
                                     dilation_rate) if need_input_grad else None)
    return dx, dk, (db if use_bias else None)


def _amx_wide_pool_backward(op, name, dpool, argmax, pooled, x, kernel, g, pg, bint use_bias,
                            bint need_input_grad):
    """_wide_pool_backward on the tiles with no dz array: the kernel gradient's panels and
    the input gradient's padded images are made from the pool's arrays (pynn_amxcp_pool),
    the same bf16 values the separate road converts from dz, so the same dkernel and dx."""
    cdef pynn_amxcp_pool ps
    cdef const float[:, :, :, ::1] dv = dpool
    cdef const int[:, :, :, ::1] av = argmax
    cdef const float[:, :, :, ::1] pv
    cdef long N = g["N"], F = g["F"], windows = N * pg["HO"] * pg["WO"]
    cdef long groups = max(1, min(N, _GROUPS))
    ps.dpool, ps.argmax, ps.pooled = &dv[0, 0, 0, 0], &av[0, 0, 0, 0], NULL
    if name == "relu":
        pv = pooled
        ps.pooled = &pv[0, 0, 0, 0]
    ps.HO, ps.WO, ps.F = g["HO"], g["WO"], F
    ps.HPo, ps.WPo, ps.PH, ps.PW, ps.PSH, ps.PSW = pg["HO"], pg["WO"], pg["PH"], pg["PW"], \
        pg["SH"], pg["SW"]
    hits = np.zeros(groups, np.int64)
    dk = _amx_conv_wgrad_from(x, None, g, groups, &ps, hits)
    missed = windows * F - int(hits.sum())
    if missed:
        raise ValueError(f"{op}: {missed} argmax entries lie outside their pool window "
                         f"(argmax must come from maxpool2d_forward over y with pool_size "
                         f"{(pg['PH'], pg['PW'])} and strides {(pg['SH'], pg['SW'])})")
    dx = None
    if need_input_grad:   # bf16_conv2d_backward_input's stride-1 road
        dx = np.zeros(tuple(x.shape), np.float32)
        flipped = np.ascontiguousarray(kernel[::-1, ::-1].transpose(0, 1, 3, 2))
        gt = dict(g, H=g["HO"], W=g["WO"], C=F, F=g["C"], HO=g["H"], WO=g["W"],
                  PT=(g["KH"] - 1) * g["DH"] - g["PT"], PL=(g["KW"] - 1) * g["DW"] - g["PL"])
        _amx_conv_direct_from(None, flipped.reshape(-1, g["C"]), dx, gt, None, False, &ps)
    if not use_bias:
        return dx, dk, None
    # summed in double as pooled_activation_bias_backward sums its dz (its row blocks add
    # zeros and the same terms in another order: exact in double but for the last bits,
    # then one rounding to float32)
    acc = np.zeros(F, np.float64)
    cdef double[::1] accv = acc
    with nogil:
        pynn_amxcp_bias_grad(&ps, 0, windows, &accv[0])
    return dx, dk, acc.astype(np.float32)


def bf16_conv2d_pool_forward(x, kernel, bias, strides=(1, 1), padding="valid",
                             dilation_rate=(1, 1), activation="linear", alpha=0.0,
                             pool_size=(2, 2), pool_strides=(2, 2), pool_padding="valid"):
    """(pooled, argmax) as conv2d_pool_forward, the product on bf16-rounded x and kernel.

    A wide conv (NARROW_CHANNELS channels or more) on AMX, stride 1, channels and filters in
    multiples of 32, under a pool whose windows tile its output, runs band by band on the
    tiles (_amx_wide_pool_forward; 16x16x32 -> 64 relu + 2x2 pool at batch 64, Intel, ms,
    bf16_conv2d_forward then maxpool2d_forward / this: two threads 0.78 / 0.61, one 1.48 /
    0.84); elsewhere those two ops, or where _float32_road says so (no AMX, a conv that
    float32 runs by Winograd) the narrow road's float32 pair on rounded operands. A narrow
    first layer (its window K = KH * KW * C <= 32 values, F a multiple of 16, no column
    dilation) under a pool whose windows tile its output runs on AMX tiles where the
    CPU has them (_bf16amx_pool.h): 32x32x3 -> 32 relu + 2x2 pool at batch 64, Intel Xeon,
    recycled memory, ms, the float32 pair on rounded operands / this: 2 threads 1.23 /
    0.60, 1 thread 1.95 / 0.81. Elsewhere conv2d_pool_forward on the rounded operands: the
    same numerics in another order."""
    act_name, alpha, x, kernel, bias, g, pg = operands.bf16_conv2d_pool_forward(
        HOST, x, kernel, bias, strides, padding, dilation_rate, activation, alpha, pool_size,
        pool_strides, pool_padding)
    if g["C"] >= NARROW_CHANNELS and not _float32_road(g):
        if _amx_wide_applies(g, pg):
            return _amx_wide_pool_forward(x, kernel, bias, g, pg, act_name, alpha)
        y, _ = bf16_conv2d_forward(x, kernel, bias, strides, padding, dilation_rate, act_name,
                                   alpha)
        return maxpool2d_forward(y, pool_size, pool_strides, pool_padding)
    geom = _amx_pool_geom(g, pg)
    if geom is None:
        return float32_conv.conv2d_pool_forward(bf16_round(x), bf16_round(kernel), bias,
                                                strides, padding, dilation_rate, act_name,
                                                alpha, pool_size, pool_strides, pool_padding)
    return _amx_pool_forward(x, kernel, bias, geom, act_name, alpha)


def bf16_conv2d_pool_backward(dpool, argmax, pooled, x, z, y, kernel, strides=(1, 1),
                              padding="valid", dilation_rate=(1, 1), activation="linear",
                              alpha=0.0, use_bias=True, need_input_grad=True, pool_size=(2, 2),
                              pool_strides=(2, 2), pool_padding="valid"):
    """(dx or None, dkernel, dbias or None) as conv2d_pool_backward with x, kernel and dz (for
    dkernel and dx) rounded to bf16. dbias sums dz in float32: a wide conv's as the wide
    layers' separate road sums it (unrounded: _wide_pool_backward, dz from the pool's
    arrays, then bf16_conv2d_backward_weight and _input); a narrow one's from dpool rounded,
    as its float32 road on rounded operands makes it. A narrow first layer (bf16_conv2d_pool_forward's conditions, and
    column stride 1) under relu or linear, without the input gradient, sums its kernel
    gradient on AMX tiles, dz made from the pool's arrays and never written (the layer
    above, same machine: 2 threads 1.69 / 0.65 ms, 1 thread 2.22 / 0.83); elsewhere, and for
    a wide conv that _float32_road sends to float32, conv2d_pool_backward on the rounded
    operands."""
    op = "bf16_conv2d_pool_backward"
    name, a, dpool, argmax, pooled, x, z, y, kernel, g, pg = \
        operands.bf16_conv2d_pool_backward(HOST, dpool, argmax, pooled, x, z, y, kernel,
                                           strides, padding, dilation_rate, activation, alpha,
                                           pool_size, pool_strides, pool_padding)
    if g["C"] >= NARROW_CHANNELS and not _float32_road(g):
        return _wide_pool_backward(op, name, a, dpool, argmax, pooled, x, z, y, kernel, g, pg,
                                   strides, padding, dilation_rate, use_bias, need_input_grad)
    geom = None
    if (not need_input_grad and g["SW"] == 1
            and (name == "linear" or (name == "relu" and pooled is not None))):
        geom = _amx_pool_geom(g, pg)
    if geom is None:
        try:
            return float32_conv.conv2d_pool_backward(
                bf16_round(dpool), argmax, pooled, bf16_round(x), z, y, bf16_round(kernel),
                strides, padding, dilation_rate, name, a, use_bias, need_input_grad, pool_size,
                pool_strides, pool_padding)
        except ValueError as exc:
            raise _named(exc, op) from None
    dw, db = _amx_pool_wgrad(dpool, argmax, pooled if name == "relu" else None, x, geom, op)
    return None, dw.reshape(kernel.shape), (db if use_bias else None)
