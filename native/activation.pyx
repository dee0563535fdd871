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
selu uses torch's constants; derivatives at 0 follow torch (relu 0, leaky_relu/elu alpha);
relu6, hard_sigmoid, hard_silu (hard_swish) and silu (swish) are torch's, which Keras 3's
torch backend calls. Backward derives from the output y except ACTIVATIONS_NEEDING_INPUT
(gelu, silu, hard_silu, mish), which need the pre-activation x.

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
    ACT_GLU, ACT_LOG_SOFTMAX, ACT_PARALLEL_MIN, ACT_SIGMOID, ACT_SOFTMAX, TEAM_PARALLEL_MIN,
    act_backward_vec, act_forward_vec, act_value, pynn_exp_sum_f, pynn_max_f,
    add_rows_double, floating, fused_step, fused_tiling, pynn_expf, softmax_grad_row,
    softmax_row, sum_row_blocks,
)

from pynn.backend.operands import activation as operands
from pynn.backend.operands.common import HOST
from pynn.backend.operands.pool import windows_tile
from pynn.backend.api import ACTIVATIONS, ACTIVATIONS_ON_ROWS

include "_team.pxi"

from cython.parallel cimport prange
from _openmp cimport omp_get_max_threads
from libc.math cimport exp, log
from libc.string cimport memset


# Elementwise work goes out in chunks of CHUNK elements, each run by one contiguous
# vectorized loop (act_forward_vec / act_backward_vec): per-element results, so the split
# does not change a bit.
cdef enum:
    CHUNK = 8192

# activation_bias_backward's tiles: fused_tiling and fused_step (native/_activation.pxd).


ctypedef struct _ActFlatJob:
    bint is_double, backward
    const void* dy
    const void* x
    const void* y
    void* out
    Py_ssize_t n
    int act
    double alpha


cdef inline void _act_flat_chunk(const floating* dy, const floating* x, const floating* y,
                                 floating* out, Py_ssize_t n, bint backward, int act,
                                 floating alpha, Py_ssize_t c) noexcept nogil:
    cdef Py_ssize_t i0 = c * CHUNK, m = min(<Py_ssize_t>CHUNK, n - c * CHUNK)
    if backward:
        act_backward_vec(dy + i0, x + i0, y + i0, out + i0, m, act, alpha)
    else:
        act_forward_vec(x + i0, out + i0, m, act, alpha)


cdef void _act_flat_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _ActFlatJob* j = <_ActFlatJob*>ctx
    cdef long c
    for c in range(begin, end):
        if j.is_double:
            _act_flat_chunk(<const double*>j.dy, <const double*>j.x, <const double*>j.y,
                            <double*>j.out, j.n, j.backward, j.act, j.alpha, c)
        else:
            _act_flat_chunk(<const float*>j.dy, <const float*>j.x, <const float*>j.y,
                            <float*>j.out, j.n, j.backward, j.act, <float>j.alpha, c)


cdef void _act_flat_run(_ActFlatJob* job) noexcept nogil:
    """The fixed chunks on pynn's worker team (native/_team.h)."""
    cdef Py_ssize_t nchunk = (job.n + CHUNK - 1) // CHUNK
    cdef int threads = omp_get_max_threads() if job.n >= TEAM_PARALLEL_MIN else 1
    pynn_team_for(nchunk, team_grain(nchunk, threads), threads, _act_flat_job, job)


def _act_forward_flat(const floating[::1] x,     # IN  (n,)
                      floating[::1] y,           # OUT (n,)
                      int act, double alpha):
    cdef _ActFlatJob job
    if x.shape[0] == 0:
        return
    job.is_double, job.backward, job.x, job.y, job.dy, job.out = floating is double, False, \
        &x[0], &x[0], &x[0], &y[0]
    job.n, job.act, job.alpha = x.shape[0], act, alpha
    with nogil:
        _act_flat_run(&job)


def _act_backward_flat(const floating[::1] dy,   # IN  (n,)
                       const floating[::1] x,    # IN  (n,) pre-activation (NEEDING_INPUT only)
                       const floating[::1] y,    # IN  (n,) forward output
                       floating[::1] dx,         # OUT (n,)
                       int act, double alpha):
    cdef _ActFlatJob job
    if dy.shape[0] == 0:
        return
    job.is_double, job.backward, job.dy, job.x, job.y, job.out = floating is double, True, \
        &dy[0], &x[0], &y[0], &dx[0]
    job.n, job.act, job.alpha = dy.shape[0], act, alpha
    with nogil:
        _act_flat_run(&job)


ctypedef struct _PooledSrc:
    # A non-overlapping max pool over the (N, H, W, C) map whose gradient is made
    # (pooled_activation_bias_backward): its output gradient, output (NULL: linear) and
    # argmax, all (N, HPo, WPo, C).
    const void* dpool
    const void* pooled
    const int* argmax
    Py_ssize_t H, W, HPo, WPo, PH, PW, SH, SW
    Py_ssize_t* hits     # per tile: argmax entries that named a pixel of its rows


ctypedef struct _PixelWalk:
    # pixel r = (n * H + h) * W + w of the map, and its window (hp, wp) with the offsets
    # (ih, iw) inside it: stepped pixel by pixel, no division per pixel
    Py_ssize_t n, h, w, hp, wp, ih, iw


cdef inline void _walk_start(_PixelWalk* p, const _PooledSrc* s, Py_ssize_t r) noexcept nogil:
    p.n = r // (s.H * s.W)
    p.h = (r // s.W) % s.H
    p.w = r % s.W
    p.hp, p.ih = p.h // s.SH, p.h % s.SH
    p.wp, p.iw = p.w // s.SW, p.w % s.SW


cdef inline void _walk_next(_PixelWalk* p, const _PooledSrc* s) noexcept nogil:
    p.w += 1
    p.iw += 1
    if p.iw == s.SW:
        p.iw = 0
        p.wp += 1
    if p.w == s.W:
        p.w = p.wp = p.iw = 0
        p.h += 1
        p.ih += 1
        if p.ih == s.SH:
            p.ih = 0
            p.hp += 1
        if p.h == s.H:
            p.h = p.hp = p.ih = 0
            p.n += 1


cdef inline Py_ssize_t _pooled_dz_rows(const _PooledSrc* s, _PixelWalk* p, floating* dz,
                                       Py_ssize_t rows, Py_ssize_t j0, Py_ssize_t w,
                                       Py_ssize_t cols) noexcept nogil:
    """dz rows (pixels) [p, p + rows), columns [j0, j0 + w): the window's gradient at its
    argmax where the pool's output is positive (None: anywhere), zeros elsewhere. Every
    operand read unconditionally (see act_backward_vec). Returns how many argmax entries
    named one of these pixels (over the map: one per entry unless one lies outside its
    window)."""
    cdef Py_ssize_t i, j, e
    cdef int target, hits = 0
    cdef floating v, m
    cdef floating* d
    cdef const floating* dp = <const floating*>s.dpool
    cdef const floating* pv = <const floating*>s.pooled
    cdef const int* am
    for i in range(rows):
        d = dz + i * cols + j0
        if p.ih < s.PH and p.iw < s.PW and p.hp < s.HPo and p.wp < s.WPo:
            e = ((p.n * s.HPo + p.hp) * s.WPo + p.wp) * cols + j0
            target = <int>(p.h * s.W + p.w)
            am = s.argmax + e
            if pv != NULL:
                for j in range(w):
                    v = dp[e + j]
                    m = pv[e + j]
                    hits += am[j] == target
                    d[j] = v if am[j] == target and m > 0 else 0
            else:
                for j in range(w):
                    v = dp[e + j]
                    hits += am[j] == target
                    d[j] = v if am[j] == target else 0
        else:
            memset(d, 0, w * sizeof(floating))
        _walk_next(p, s)
    return hits


cdef void _act_bias_tile(const floating* dy, const floating* x, const floating* y,
                         floating* dz, double* acc, Py_ssize_t r0, Py_ssize_t r1,
                         Py_ssize_t j0, Py_ssize_t w, Py_ssize_t cols, int act,
                         floating alpha, const _PooledSrc* pool=NULL,
                         Py_ssize_t* hits=NULL) noexcept nogil:
    """dz = act_grad(dy) on rows [r0, r1) x columns [j0, j0 + w) of (rows, cols) arrays, and
    acc[j] = the sum of those rows of dz[:, j0 + j] (softmax: w == cols). pool (instead of
    dy, x and y): dz made from a max pool's arrays (_pooled_dz_rows), summed alike."""
    cdef Py_ssize_t r = r0, i, j, rr, off
    cdef Py_ssize_t step = fused_step(w)
    cdef _PixelWalk walk
    for j in range(w):
        acc[j] = 0
    if pool != NULL:
        hits[0] = 0
        _walk_start(&walk, pool, r0)
    # Each group of rows is summed right after it is written, while it is still in L1.
    while r < r1:
        rr = min(step, r1 - r)
        off = r * cols + j0
        if pool != NULL:
            hits[0] += _pooled_dz_rows(pool, &walk, dz + off - j0, rr, j0, w, cols)
        elif act == ACT_SOFTMAX:
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


ctypedef struct _ActBiasJob:
    bint is_double
    const void* dy
    const void* x
    const void* y
    void* dz
    double* partial
    Py_ssize_t rows, cols, cbw, ncb, rb_rows
    int act
    double alpha
    const _PooledSrc* pool


cdef void _act_bias_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _ActBiasJob* j = <_ActBiasJob*>ctx
    cdef long t
    cdef Py_ssize_t rb, j0, r0, r1
    for t in range(begin, end):
        rb = t // j.ncb
        j0 = (t % j.ncb) * j.cbw
        r0 = rb * j.rb_rows
        r1 = min(j.rows, (rb + 1) * j.rb_rows)
        if j.is_double:
            _act_bias_tile(<const double*>j.dy, <const double*>j.x, <const double*>j.y,
                           <double*>j.dz, j.partial + rb * j.cols + j0, r0, r1, j0,
                           min(j.cbw, j.cols - j0), j.cols, j.act, j.alpha, j.pool,
                           j.pool.hits + t if j.pool != NULL else NULL)
        else:
            _act_bias_tile(<const float*>j.dy, <const float*>j.x, <const float*>j.y,
                           <float*>j.dz, j.partial + rb * j.cols + j0, r0, r1, j0,
                           min(j.cbw, j.cols - j0), j.cols, j.act, <float>j.alpha, j.pool,
                           j.pool.hits + t if j.pool != NULL else NULL)


def _act_bias_backward_rows(const floating[:, ::1] dy,   # IN  (rows, K)
                            const floating[:, ::1] x,    # IN  (rows, K) NEEDING_INPUT only
                            const floating[:, ::1] y,    # IN  (rows, K) forward output
                            floating[:, ::1] dz,         # OUT (rows, K)
                            floating[::1] db,            # OUT (K,)
                            int act, double alpha, pool=None):
    """pool: None, or (dpool, pooled or None, argmax, (H, W, PH, PW, SH, SW)) with dpool,
    pooled (N, HPo, WPo, K) floating and argmax int32 alike: dz made from them
    (pooled_activation_bias_backward; dy, x and y are then not read)."""
    cdef Py_ssize_t rows = dy.shape[0], cols = dy.shape[1]
    cdef _PooledSrc src
    cdef const floating[:, :, :, ::1] dpv
    cdef const floating[:, :, :, ::1] ppv
    cdef const int[:, :, :, ::1] amv
    cdef Py_ssize_t[::1] hitv
    cdef Py_ssize_t cbw = cols, ncb, nrb, rb_rows, rb, j
    cdef double[:, ::1] partial
    cdef _ActBiasJob job
    cdef int threads = omp_get_max_threads() if rows * cols >= TEAM_PARALLEL_MIN else 1
    fused_tiling(rows, cols, act, &cbw, &ncb, &nrb, &rb_rows)
    partial = np.empty((nrb, cols), dtype=np.float64)
    job.is_double = floating is double
    job.dy, job.x, job.y, job.dz, job.partial = &dy[0, 0], &x[0, 0], &y[0, 0], &dz[0, 0], \
        &partial[0, 0]
    job.rows, job.cols, job.cbw, job.ncb, job.rb_rows = rows, cols, cbw, ncb, rb_rows
    job.act, job.alpha = act, alpha
    job.pool = NULL
    if pool is not None:
        dpv, amv = pool[0], pool[2]
        src.dpool, src.argmax = &dpv[0, 0, 0, 0], &amv[0, 0, 0, 0]
        src.pooled = NULL
        if pool[1] is not None:
            ppv = pool[1]
            src.pooled = &ppv[0, 0, 0, 0]
        src.HPo, src.WPo = dpv.shape[1], dpv.shape[2]
        src.H, src.W, src.PH, src.PW, src.SH, src.SW = pool[3]
        hits = np.zeros(nrb * ncb, dtype=np.intp)
        hitv = hits
        src.hits = &hitv[0]
        job.pool = &src
    with nogil:
        # on pynn's worker team (native/_team.h): tiles are fixed by the shape alone
        pynn_team_for(nrb * ncb, team_grain(nrb * ncb, threads), threads, _act_bias_job,
                      &job)
        sum_row_blocks(&partial[0, 0], nrb, cols, &db[0])
    if pool is not None:
        return int(hits.sum())


# The row and elementwise ops below on pynn's worker team: one job type, its kind saying
# which loop; each row or element is computed alone (the same bits at any thread count).
cdef enum:
    OPJOB_SOFTMAX_FWD = 0
    OPJOB_SOFTMAX_BWD = 1
    OPJOB_RELU_FWD = 2
    OPJOB_RELU_BWD = 3
    OPJOB_PRELU_FWD = 4
    OPJOB_PRELU_DX = 5
    OPJOB_PRELU_DALPHA = 6
    # -- Keras 3's row activations (glu, log_softmax, sparsemax): one row an item
    OPJOB_ROW_FWD = 7
    OPJOB_ROW_BWD = 8
    OPJOB_CHUNK = 8192   # elements per claim of the elementwise kinds


ctypedef struct _OpJob:
    bint is_double
    int kind
    const void* a        # x, or dy for the backwards
    const void* b        # y (softmax backward), x (relu and prelu backwards)
    const void* alpha
    const Py_ssize_t* index
    void* out
    double* partial
    Py_ssize_t n, k, rb_rows, na
    double mv, slope, threshold
    int act              # the row activation of OPJOB_ROW_*


cdef inline void _op_items(const _OpJob* j, const floating* a, long begin,
                           long end) noexcept nogil:
    cdef const floating* b = <const floating*>j.b
    cdef const floating* alpha = <const floating*>j.alpha
    cdef floating* out = <floating*>j.out
    cdef floating mv = <floating>j.mv, sl = <floating>j.slope, th = <floating>j.threshold
    cdef floating v, a_m
    cdef Py_ssize_t k = j.k, i, i0, i1, m, n
    cdef long r
    if j.kind == OPJOB_SOFTMAX_FWD:
        for r in range(begin, end):
            softmax_row(a + r * k, out + r * k, k)
    elif j.kind == OPJOB_SOFTMAX_BWD:
        for r in range(begin, end):
            softmax_grad_row(a + r * k, b + r * k, out + r * k, k)
    elif j.kind == OPJOB_RELU_FWD or j.kind == OPJOB_RELU_BWD:
        i0 = begin * <Py_ssize_t>OPJOB_CHUNK
        i1 = min(end * <Py_ssize_t>OPJOB_CHUNK, j.n)
        if j.kind == OPJOB_RELU_FWD:
            for i in range(i0, i1):
                out[i] = relu_value(a[i], mv, sl, th)
        else:
            for i in range(i0, i1):
                out[i] = relu_grad(a[i], b[i], mv, sl, th)
    elif j.kind == OPJOB_ROW_FWD:
        for r in range(begin, end):
            row_act_forward(a + r * k, out + r * (k // 2 if j.act == ACT_GLU else k), k,
                            j.act)
    elif j.kind == OPJOB_ROW_BWD:
        # a: dy (rows, K or K/2 for glu), b: x (log_softmax: y); out: dx (rows, K)
        for r in range(begin, end):
            row_act_backward(a + r * (k // 2 if j.act == ACT_GLU else k), b + r * k,
                             out + r * k, k, j.act)
    elif j.kind == OPJOB_PRELU_FWD:
        for r in range(begin, end):
            for m in range(k):
                # Keras's relu(x) - alpha * relu(-x), without a branch (a data-dependent
                # branch mispredicts on half the elements); NaN passes through the first term.
                v = a[r * k + m]
                out[r * k + m] = (0 if v < 0 else v) + alpha[j.index[m]] * (v if v < 0 else 0)
    elif j.kind == OPJOB_PRELU_DX:
        for r in range(begin, end):
            for m in range(k):
                # alpha is loaded whatever the sign: a load under the condition stays a
                # branch, mispredicted on half the elements.
                v = b[r * k + m]
                a_m = alpha[j.index[m]]
                out[r * k + m] = a[r * k + m] * (1 if v > 0 else a_m)
    else:  # OPJOB_PRELU_DALPHA: row block r's partials of dalpha
        for r in range(begin, end):
            for n in range(r * j.rb_rows, min(j.n, (r + 1) * j.rb_rows)):
                for m in range(k):
                    v = b[n * k + m]
                    j.partial[r * j.na + j.index[m]] += <double>(v if v < 0 else 0) * a[n * k + m]


cdef void _op_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _OpJob* j = <_OpJob*>ctx
    if j.is_double:
        _op_items(j, <const double*>j.a, begin, end)
    else:
        _op_items(j, <const float*>j.a, begin, end)


cdef void _op_run(_OpJob* job, long items, Py_ssize_t work) noexcept nogil:
    cdef int threads = omp_get_max_threads() if work >= TEAM_PARALLEL_MIN else 1
    pynn_team_for(items, team_grain(items, threads), threads, _op_job, job)


cdef void _op_init(_OpJob* job, int kind, bint is_double, const void* a, const void* b,
                   void* out, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    job.kind, job.is_double, job.a, job.b, job.out, job.n, job.k = kind, is_double, a, b, \
        out, n, k
    job.alpha, job.index, job.partial = NULL, NULL, NULL


def _softmax_forward_rows(const floating[:, ::1] x,   # IN  (rows, K)
                          floating[:, ::1] y):        # OUT (rows, K)
    cdef Py_ssize_t rows = x.shape[0], k = x.shape[1]
    cdef _OpJob job
    _op_init(&job, OPJOB_SOFTMAX_FWD, floating is double, &x[0, 0], NULL, &y[0, 0], rows, k)
    with nogil:
        _op_run(&job, rows, rows * k)


def _softmax_backward_rows(const floating[:, ::1] dy,  # IN  (rows, K)
                           const floating[:, ::1] y,   # IN  (rows, K) forward output
                           floating[:, ::1] dx):       # OUT (rows, K)
    cdef Py_ssize_t rows = dy.shape[0], k = dy.shape[1]
    cdef _OpJob job
    _op_init(&job, OPJOB_SOFTMAX_BWD, floating is double, &dy[0, 0], &y[0, 0], &dx[0, 0],
             rows, k)
    with nogil:
        _op_run(&job, rows, rows * k)


# -- Keras 3's row activations (the formulas of Keras 3's torch backend):
# log_softmax y = x - max - log(sum(exp(x - max))), backward dy - exp(y) * sum(dy).
# glu y = a * sigmoid(b) for the halves a, b of the last axis, backward from x.
# sparsemax as Keras 3.15 computes it on every backend (keras/src/backend/*/nn.py): the
# support S is sparsemax's (the c largest x with 1 + c x_(c) > x_(1) + ... + x_(c)), but
# tau = (C_1 + ... + C_c - 1) / c sums the sorted cumulative sums C_i (not C_c - 1: the rows
# do not sum to 1), and y = max(x - tau, 0). S comes from Michelot's fixed point (no sort:
# the support shrinks from the whole row to {x > t}, t = (sum over it - 1) / its size, until
# it stops changing; that t is the true sparsemax threshold), and C_1 + ... + C_c =
# sum over S of w_i x_i, w_i = 1 + the members of S below x_i (ties broken by position).
# Backward from x (torch's autograd of that formula): with m_i = [x_i - tau >= 0] (clamp's
# mask), dx_i = m_i dy_i - [i in S] w_i / c * sum(m dy). O(K) per pass plus O(K c).
# Sums run in double in the row's order: the same bits at any thread count.
cdef inline double sparsemax_support(const floating* x, Py_ssize_t k,
                                     Py_ssize_t* size) noexcept nogil:
    """The true sparsemax threshold t of x (support S = {x > t}); size gets |S|. t only
    rises (exact arithmetic has it so; the max keeps rounding from letting the support grow
    back), so the support only shrinks and the loop ends within k + 1 passes."""
    cdef Py_ssize_t j, count = k, last = 0, passes = 0
    cdef double s = 0, t
    for j in range(k):
        s += x[j]
    t = (s - 1) / k
    while count != last and passes <= k:
        last = count
        passes += 1
        s, count = 0, 0
        for j in range(k):
            if x[j] > t:
                s += x[j]
                count += 1
        if (s - 1) / count > t or t != t:
            t = (s - 1) / count
    size[0] = count
    return t


cdef inline Py_ssize_t sparsemax_weight(const floating* x, Py_ssize_t k, double t,
                                        Py_ssize_t i) noexcept nogil:
    """w_i of a support member i: 1 + the members below x_i (equal ones after i count)."""
    cdef Py_ssize_t j, w = 0
    for j in range(k):
        if x[j] > t and (x[j] < x[i] or (x[j] == x[i] and j >= i)):
            w += 1
    return w


cdef inline double sparsemax_keras_tau(const floating* x, Py_ssize_t k, double t,
                                       Py_ssize_t c) noexcept nogil:
    cdef Py_ssize_t i
    cdef double s = 0
    for i in range(k):
        if x[i] > t:
            s += sparsemax_weight(x, k, t, i) * <double>x[i]
    return (s - 1) / c


cdef inline void row_act_forward(const floating* x, floating* y, Py_ssize_t k,
                                 int act) noexcept nogil:
    """y = act(x) of one row: x has k elements, y k (k / 2 for glu)."""
    cdef Py_ssize_t j, h = k // 2, c
    cdef floating m
    cdef double s = 0, t, tau
    if k <= 0:
        return
    if act == ACT_GLU:
        for j in range(h):
            y[j] = x[j] * act_value(x[h + j], ACT_SIGMOID, <floating>0)
        return
    if act == ACT_LOG_SOFTMAX:
        if floating is float:   # softmax_row's vector sum (native/_vmath.h)
            m = pynn_max_f(x, k)
            s = pynn_exp_sum_f(x, m, NULL, k)
        else:
            m = x[0]
            for j in range(1, k):
                if x[j] > m:
                    m = x[j]
            for j in range(k):
                s += exp(x[j] - m)
        s = log(s)
        for j in range(k):
            y[j] = <floating>((x[j] - m) - s)
        return
    t = sparsemax_support(x, k, &c)
    tau = sparsemax_keras_tau(x, k, t, c)
    for j in range(k):
        y[j] = <floating>(x[j] - tau) if x[j] - tau > 0 else 0


cdef inline void row_act_backward(const floating* dy, const floating* x, floating* dx,
                                  Py_ssize_t k, int act) noexcept nogil:
    """dx of one row (k elements) from dy (k, or k / 2 for glu) and x (log_softmax: y)."""
    cdef Py_ssize_t j, h = k // 2, c
    cdef floating sg
    cdef double s = 0, t, tau
    if act == ACT_GLU:
        for j in range(h):
            sg = act_value(x[h + j], ACT_SIGMOID, <floating>0)
            dx[j] = dy[j] * sg
            dx[h + j] = dy[j] * x[j] * sg * (1 - sg)
        return
    if act == ACT_LOG_SOFTMAX:   # x holds y here
        for j in range(k):
            s += dy[j]
        for j in range(k):
            if floating is float:
                dx[j] = <floating>(dy[j] - pynn_expf(x[j]) * s)
            else:
                dx[j] = <floating>(dy[j] - exp(x[j]) * s)
        return
    t = sparsemax_support(x, k, &c)
    tau = sparsemax_keras_tau(x, k, t, c)
    for j in range(k):
        if x[j] - tau >= 0:
            s += dy[j]
    for j in range(k):
        dx[j] = <floating>((dy[j] if x[j] - tau >= 0 else 0)
                           - (sparsemax_weight(x, k, t, j) * s / c if x[j] > t else 0))


def _row_act_forward(const floating[:, ::1] x,   # IN  (rows, K)
                     floating[:, ::1] y,         # OUT (rows, K), (rows, K / 2) for glu
                     int act):
    cdef Py_ssize_t rows = x.shape[0], k = x.shape[1]
    cdef _OpJob job
    _op_init(&job, OPJOB_ROW_FWD, floating is double, &x[0, 0], NULL, &y[0, 0], rows, k)
    job.act = act
    with nogil:
        _op_run(&job, rows, rows * k)


def _row_act_backward(const floating[:, ::1] dy,  # IN  (rows, K), (rows, K / 2) for glu
                      const floating[:, ::1] b,   # IN  (rows, K): x, or y for log_softmax
                      floating[:, ::1] dx,        # OUT (rows, K)
                      int act):
    cdef Py_ssize_t rows = b.shape[0], k = b.shape[1]
    cdef _OpJob job
    _op_init(&job, OPJOB_ROW_BWD, floating is double, &dy[0, 0], &b[0, 0], &dx[0, 0], rows, k)
    job.act = act
    with nogil:
        _op_run(&job, rows, rows * k)


def _rows_view(a):
    """(rows, K) view of an array whose last axis is K (softmax's axis)."""
    k = a.shape[a.ndim - 1]
    return a.reshape(-1, k) if k else a.reshape(a.size, 0)


def activation_forward(x, activation, alpha=0.0):
    """y = activation(x), same shape and dtype as x (softmax over the last axis)."""
    name, a, x = operands.activation_forward(HOST, x, activation, alpha)
    if name == "glu":
        y = np.empty(x.shape[:x.ndim - 1] + (x.shape[x.ndim - 1] // 2,), dtype=x.dtype)
    else:
        y = np.empty_like(x)
    if y.size == 0:
        return y
    act = ACTIVATIONS.index(name)
    if act == ACT_SOFTMAX:
        _softmax_forward_rows(_rows_view(x), _rows_view(y))
    elif name in ACTIVATIONS_ON_ROWS:
        _row_act_forward(_rows_view(x), _rows_view(y), act)
    else:
        _act_forward_flat(x.reshape(-1), y.reshape(-1), act, a)
    return y


def activation_backward(dy, x, y, activation, alpha=0.0):
    """dL/dx from dL/dy. ``y`` is the forward output (may be None for
    ACTIVATIONS_NEEDING_INPUT); ``x`` the pre-activation (required for those, otherwise
    ignored but checked when given)."""
    name, a, dy, x, y = operands.activation_backward(HOST, dy, x, y, activation, alpha)
    dx = np.empty_like(x if name == "glu" else dy)
    if dx.size == 0:
        return dx
    act = ACTIVATIONS.index(name)
    if act == ACT_SOFTMAX:
        _softmax_backward_rows(_rows_view(dy), _rows_view(y), _rows_view(dx))
        return dx
    if name in ACTIVATIONS_ON_ROWS:
        _row_act_backward(_rows_view(dy), _rows_view(y if name == "log_softmax" else x),
                          _rows_view(dx), act)
        return dx
    # act_grad reads x only for ACTIVATIONS_NEEDING_INPUT and y only for the others: the
    # unused one may alias.
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
    # act_grad reads x only for ACTIVATIONS_NEEDING_INPUT and y only for the others: the
    # unused one may alias.
    x_rows = _rows_view(x if x is not None else y)
    y_rows = _rows_view(y if y is not None else x)
    _act_bias_backward_rows(_rows_view(dy), x_rows, y_rows, _rows_view(dz), db,
                            ACTIVATIONS.index(name), a)
    return dz, db


def pooled_activation_bias_backward(dpool, argmax, pooled, y, pool_size, strides,
                                    padding="valid", activation="relu", alpha=0.0):
    """(dz, db) of a layer whose output y only a max pool reads, from the pool's output
    gradient dpool, argmax and output pooled: activation_bias_backward(maxpool2d_backward(
    dpool, argmax, y.shape), None, y, activation, alpha), the same bits.

    relu (pooled given: its mask, pooled > 0 being y > 0 at the argmax) and linear under a
    pool whose windows tile the map (pool_gradient's windows_tile) make each row of dz from
    the pool's arrays in activation_bias_backward's own tiles and sums: the pool's input
    gradient is never written and y never read. Otherwise the two ops in turn."""
    name, a, dpool, argmax, pooled, y, pg = operands.pooled_activation_bias_backward(
        HOST, dpool, argmax, pooled, y, pool_size, strides, padding, activation, alpha)
    if name not in ("relu", "linear") or not windows_tile(pg) or (
            name == "relu" and pooled is None) or not y.size:
        from pynn._native.pool import maxpool2d_backward

        return activation_bias_backward(maxpool2d_backward(dpool, argmax, y.shape), None, y,
                                        name, a)
    return _pooled_activation_bias(dpool, argmax, pooled, pg, name, a)


def _pooled_activation_bias(dpool, argmax, pooled, pg, name, alpha):
    """pooled_activation_bias_backward's own pass on checked operands (relu or linear, pg's
    windows tiling the map): needs the pool input's shape only, not y itself."""
    op = "pooled_activation_bias_backward"
    dz = np.empty((pg["N"], pg["H"], pg["W"], pg["C"]), dtype=dpool.dtype)
    db = np.zeros(pg["C"], dtype=dpool.dtype)
    if dz.size == 0 or dpool.size == 0:   # no window, or nothing to route: all zeros
        dz.fill(0)
        return dz, db
    rows = _rows_view(dz)
    missed = dpool.size - _act_bias_backward_rows(
        rows, rows, rows, rows, db, ACTIVATIONS.index(name), alpha,
        (dpool, pooled if name == "relu" else None, argmax,
         (pg["H"], pg["W"], pg["PH"], pg["PW"], pg["SH"], pg["SW"])))
    if missed:
        raise ValueError(f"{op}: {missed} argmax entries lie outside their pool window (argmax "
                         f"must come from maxpool2d_forward over y with pool_size "
                         f"{(pg['PH'], pg['PW'])} and strides {(pg['SH'], pg['SW'])})")
    return dz, db


# -- issue 12: the activation layers' parametrized ops ------------------------------------
# relu_forward / relu_backward: Keras 3's relu(x, negative_slope, max_value, threshold) as one
# elementwise formula (keras/src/activations/activations.py ReLU.static_call):
#   y = min(x, max_value) where x > threshold, else negative_slope * (x - threshold);
# its derivative is 1 on (threshold, max_value), negative_slope below threshold, 0 elsewhere
# (0 at x == threshold, as torch's relu). Backward reads x: with a threshold the output
# alone does not say which branch an element took.
# prelu_forward / prelu_backward: y = x where x > 0, else alpha * x, alpha broadcast over the
# batch and the shared axes through an index array (alpha's element for each feature element,
# made once per call by NumPy's broadcast). dalpha is summed in double over PRELU_ROW_BLOCKS
# fixed row blocks, each a sequential pass over its rows, then the blocks in order: it does not
# depend on the thread count. (The OpenCL twin walks merged axis groups instead, one
# work-item per alpha element.)
# softmax_forward / softmax_backward: softmax along any axis of x viewed as (outer, K, inner);
# inner == 1 (the last axis) is the row kernel above, other axes walk a strided line.

cdef inline floating relu_value(floating x, floating max_value, floating slope,
                                floating threshold) noexcept nogil:
    if x > threshold:
        return x if x < max_value else max_value
    return slope * (x - threshold)


cdef inline floating relu_grad(floating dy, floating x, floating max_value, floating slope,
                               floating threshold) noexcept nogil:
    if x > threshold:
        return dy if x < max_value else 0
    if x < threshold:
        return slope * dy
    return 0


def _relu_forward_flat(const floating[::1] x,   # IN  (n,)
                       floating[::1] y,         # OUT (n,)
                       double max_value, double slope, double threshold):
    cdef Py_ssize_t n = x.shape[0]
    cdef _OpJob job
    _op_init(&job, OPJOB_RELU_FWD, floating is double, &x[0], NULL, &y[0], n, 0)
    job.mv, job.slope, job.threshold = <floating>max_value, <floating>slope, \
        <floating>threshold
    with nogil:
        _op_run(&job, (n + OPJOB_CHUNK - 1) // OPJOB_CHUNK, n)


def _relu_backward_flat(const floating[::1] dy,  # IN  (n,)
                        const floating[::1] x,   # IN  (n,)
                        floating[::1] dx,        # OUT (n,)
                        double max_value, double slope, double threshold):
    cdef Py_ssize_t n = x.shape[0]
    cdef _OpJob job
    _op_init(&job, OPJOB_RELU_BWD, floating is double, &dy[0], &x[0], &dx[0], n, 0)
    job.mv, job.slope, job.threshold = <floating>max_value, <floating>slope, \
        <floating>threshold
    with nogil:
        _op_run(&job, (n + OPJOB_CHUNK - 1) // OPJOB_CHUNK, n)


def relu_forward(x, max_value=None, negative_slope=0.0, threshold=0.0):
    """Keras 3's parametrized relu (see the note above); max_value None means no cap."""
    mv, s, t, x = operands.relu_forward(HOST, x, max_value, negative_slope, threshold)
    y = np.empty_like(x)
    if x.size:
        _relu_forward_flat(x.reshape(-1), y.reshape(-1), mv, s, t)
    return y


def relu_backward(dy, x, max_value=None, negative_slope=0.0, threshold=0.0):
    """dL/dx of relu_forward from dL/dy and the forward input x."""
    mv, s, t, dy, x = operands.relu_backward(HOST, dy, x, max_value, negative_slope,
                                             threshold)
    dx = np.empty_like(dy)
    if dy.size:
        _relu_backward_flat(dy.reshape(-1), x.reshape(-1), dx.reshape(-1), mv, s, t)
    return dx


# Row blocks of prelu_backward's alpha gradient: each block sums its rows into its own row of
# partials, and the blocks are added in order, so dalpha depends on the shape alone.
cdef enum:
    PRELU_ROW_BLOCKS = 16


def _prelu_forward(const floating[:, ::1] x,      # IN  (N, M)
                   const floating[::1] alpha,     # IN  (A,)
                   const Py_ssize_t[::1] index,   # IN  (M,) alpha's element for feature m
                   floating[:, ::1] y):           # OUT (N, M)
    cdef Py_ssize_t rows = x.shape[0], cols = x.shape[1]
    cdef _OpJob job
    _op_init(&job, OPJOB_PRELU_FWD, floating is double, &x[0, 0], NULL, &y[0, 0], rows, cols)
    job.alpha, job.index = &alpha[0], &index[0]
    with nogil:
        _op_run(&job, rows, rows * cols)


def _prelu_backward(const floating[:, ::1] dy,     # IN  (N, M)
                    const floating[:, ::1] x,      # IN  (N, M)
                    const floating[::1] alpha,     # IN  (A,)
                    const Py_ssize_t[::1] index,   # IN  (M,)
                    floating[:, ::1] dx,           # OUT (N, M), or (0, 0): not wanted
                    floating[::1] dalpha):         # OUT (A,)
    cdef Py_ssize_t rows = x.shape[0], cols = x.shape[1], na = alpha.shape[0]
    cdef Py_ssize_t nrb = min(rows, <Py_ssize_t>PRELU_ROW_BLOCKS)
    cdef Py_ssize_t rb_rows = (rows + nrb - 1) // nrb
    cdef Py_ssize_t a
    cdef bint want_dx = dx.shape[0] == rows
    cdef double[:, ::1] partial = np.zeros((nrb, na), dtype=np.float64)
    cdef _OpJob job
    _op_init(&job, OPJOB_PRELU_DX, floating is double, &dy[0, 0], &x[0, 0],
             &dx[0, 0] if want_dx else NULL, rows, cols)
    job.alpha, job.index, job.partial, job.rb_rows, job.na = &alpha[0], &index[0], \
        &partial[0, 0], rb_rows, na
    with nogil:
        if want_dx:
            _op_run(&job, rows, rows * cols)
        job.kind = OPJOB_PRELU_DALPHA
        _op_run(&job, nrb, rows * cols)
        if nrb and na:
            sum_row_blocks(&partial[0, 0], nrb, na, &dalpha[0])
        else:
            for a in range(na):
                dalpha[a] = 0


def _prelu_index(x_shape, alpha):
    """alpha's flat index for each feature element of x (the same for every sample): NumPy's
    broadcast of alpha's positions over x.shape[1:]."""
    positions = np.arange(alpha.size, dtype=np.intp).reshape(alpha.shape)
    return np.ascontiguousarray(np.broadcast_to(positions, x_shape[1:])).reshape(-1)


def prelu_forward(x, alpha):
    """y = x where x > 0, else alpha * x; x (N, ...), alpha shaped like x.shape[1:] with 1 on
    the shared axes (Keras's PReLU weight)."""
    x, alpha, _, _ = operands.prelu_forward(HOST, x, alpha)
    y = np.empty_like(x)
    if x.size:
        _prelu_forward(x.reshape(x.shape[0], -1), alpha.reshape(-1),
                       _prelu_index(x.shape, alpha), y.reshape(x.shape[0], -1))
    return y


def prelu_backward(dy, x, alpha, need_input_grad=True):
    """(dx or None, dalpha): dalpha sums x * dy where x < 0 over the batch and the shared
    axes (in double, a fixed order: the same for any thread count)."""
    dy, x, alpha, _, _ = operands.prelu_backward(HOST, dy, x, alpha)
    n = x.shape[0]
    dx = np.empty_like(dy) if need_input_grad else None
    dalpha = np.zeros(alpha.shape, dtype=dy.dtype)
    if x.size:
        dx2 = dx.reshape(n, -1) if dx is not None else np.empty((0, 0), dtype=dy.dtype)
        _prelu_backward(dy.reshape(n, -1), x.reshape(n, -1), alpha.reshape(-1),
                        _prelu_index(x.shape, alpha), dx2, dalpha.reshape(-1))
    elif dx is not None:
        dx[...] = 0
    return dx, dalpha


def _softmax_forward_lines(const floating[:, :, ::1] x,   # IN  (outer, K, inner)
                           floating[:, :, ::1] y):        # OUT (outer, K, inner)
    cdef Py_ssize_t t, o, i, j, outer = x.shape[0], k = x.shape[1], inner = x.shape[2]
    cdef floating m
    cdef double s
    with nogil:
        for t in prange(outer * inner, schedule="static",
                        use_threads_if=outer * k * inner >= ACT_PARALLEL_MIN):
            o = t // inner
            i = t % inner
            # softmax_row's steps and precision on a strided line.
            m = x[o, 0, i]
            for j in range(1, k):
                if x[o, j, i] > m:
                    m = x[o, j, i]
            s = 0
            for j in range(k):
                if floating is float:
                    y[o, j, i] = pynn_expf(x[o, j, i] - m)
                else:
                    y[o, j, i] = exp(x[o, j, i] - m)
                s = s + y[o, j, i]
            for j in range(k):
                y[o, j, i] = <floating>(y[o, j, i] / s)


def _softmax_backward_lines(const floating[:, :, ::1] dy,  # IN  (outer, K, inner)
                            const floating[:, :, ::1] y,   # IN  (outer, K, inner)
                            floating[:, :, ::1] dx):       # OUT (outer, K, inner)
    cdef Py_ssize_t t, o, i, j, outer = y.shape[0], k = y.shape[1], inner = y.shape[2]
    cdef double dot
    with nogil:
        for t in prange(outer * inner, schedule="static",
                        use_threads_if=outer * k * inner >= ACT_PARALLEL_MIN):
            o = t // inner
            i = t % inner
            dot = 0
            for j in range(k):
                dot = dot + <double>dy[o, j, i] * y[o, j, i]
            for j in range(k):
                dx[o, j, i] = <floating>(y[o, j, i] * (dy[o, j, i] - dot))


def softmax_forward(x, axis=-1):
    """Softmax of x along ``axis`` (any axis; the last one runs the row kernel)."""
    x, lines = operands.softmax_forward(HOST, x, axis)
    y = np.empty_like(x)
    if x.size:
        if lines[2] == 1:
            _softmax_forward_rows(x.reshape(-1, lines[1]), y.reshape(-1, lines[1]))
        else:
            _softmax_forward_lines(x.reshape(lines), y.reshape(lines))
    return y


def softmax_backward(dy, y, axis=-1):
    """dL/dx of softmax_forward from dL/dy and its output y."""
    dy, y, lines = operands.softmax_backward(HOST, dy, y, axis)
    dx = np.empty_like(dy)
    if dy.size:
        if lines[2] == 1:
            _softmax_backward_rows(dy.reshape(-1, lines[1]), y.reshape(-1, lines[1]),
                                   dx.reshape(-1, lines[1]))
        else:
            _softmax_backward_lines(dy.reshape(lines), y.reshape(lines), dx.reshape(lines))
    return dx
