"""Recurrent layer kernels: SimpleRNN, LSTM and GRU with Keras 3's cell equations.

Legend: N batch, T time steps, C input features, U units, G = k*U gate columns (k = 1 for
SimpleRNN, 4 for LSTM with gates i, f, c, o, 3 for GRU with gates z, r, h).
x (N, T, C); kernel (C, G); recurrent_kernel (U, G); bias (G,) or, for GRU with
reset_after, (2, G) = (input bias, recurrent bias). The initial state is zero.

Time order: step s (0..T-1) reads the input at time tx = s, or tx = T-1-s with go_backwards.
Everything indexed by the input (gate buffers, their gradients) sits at tx; everything the
recurrence produces (h_seq, the LSTM cell states) sits at s, the order Keras returns the
sequence in (go_backwards does not flip the output back).

Where the time goes, and how it is split (bench/bench_rnn.py; numbers in the commits):
  - Nothing goes through BLAS. Every product is the register-blocked microkernel of
    native/_microkernel.h, shared with conv (MR = 8 rows x 2 vectors of accumulators with
    AVX-512, 6 x 2 otherwise), reading B from column panels of NC = 2 vectors that stay in
    L1. On the one large product (the weight gradients) it matches OpenBLAS, and without
    BLAS there is no second thread pool handing the cores back and forth with pynn's
    worker team (native/_team.h), which runs every parallel loop here.
  - The recurrence is independent per sample. ONE driver serves every cell, forward and
    backward: _recurrence cuts the batch rows into fixed blocks of ROWS rows, gives each
    thread a contiguous run of whole blocks and hands it on in chunks of up to CHUNK rows;
    _forward_chunk / _backward_chunk step a chunk through time. Per step, for all rows of
    the chunk at once: gates = x_t @ kernel + h_{s-1} @ recurrent_kernel (both packed into
    panels once per call by _panels, each panel then serving every row of the chunk from
    L1), then ONE fused pass that adds the bias, applies the gate activations, updates the
    cell and writes h. Backward mirrors it: a fused pass turns dh (upstream + carried) into
    the step's pre-activation gradients dZ, then dh_{s-1} = dZ_s @ recurrent_kernel^T and
    dx_t = dZ_s @ kernel^T while dZ_s is still in cache (the transposes packed once per
    call). A cell is only its fused passes (the SimpleRNN, LSTM and GRU sections); the
    chunk functions pick them with one switch per step, never per element. GRU adds its
    own products: h_{s-1} @ R goes to a per-row buffer (srec) since r scales part of it,
    and without reset_after the h-gate product waits for r (two passes per step).
  - The weight gradients are sums over all N*T rows, so they wait for the loop to end:
    dkernel, the bias gradient and d(recurrent_kernel) come from ONE product
    [x | 1 | h_prev]^T @ dZ (_stack_t writes the left operand transposed, so each output
    row reads a contiguous stream; _gemm_tn gives each thread whole column panels and
    copies each KC-row block of dZ into an L1 buffer). GRU adds rh to the stack
    (reset_after=False) or takes the recurrent side from its own dZ (reset_after=True).
  - dZ and the stacked operand are scratch kept between calls (_take_scratch): fresh
    multi-MiB arrays come back from the kernel page by page, zeroed, which cost about a
    third of an LSTM forward + backward step here.
The gate buffer ends up holding the activated gates: that is the cache backward reads.
The fused passes work row by row with the activation chosen once per row, so their loops
vectorize; float32 sigmoid/tanh use a branch-free Cephes-style exp (<= 2.5 ulp), since
libm's calls do not vectorize without -ffast-math, and float32 LSTM and GRU
(reset_after) with the default activations run their cells as one loop per row. float64
keeps libm (gradient checks).

Determinism: every output element is summed in a fixed order (ascending k, whatever the
row group, chunk, panel or thread it falls in) by exactly one thread, so results are
bit-identical for any number of threads. Activation derivatives come from the activation's
output (``_activation.pxd``), so softmax and gelu are not offered; leaky_relu and elu use
Keras's defaults (0.2 and 1.0).
Gradients come back as fresh arrays (nothing accumulates into caller memory).
"""
import numpy as np

cimport numpy as cnp
from libc.string cimport memcpy, memset
from _openmp cimport omp_get_max_threads
from _blas cimport floating
from _activation cimport act_value, act_grad, ACT_SIGMOID, ACT_TANH

from pynn.backend._scratch import aligned_empty, give as _give_scratch, take as _take_scratch
from pynn.backend.operands import rnn as operands
from pynn.backend.operands.common import HOST

cdef enum:
    # Batch rows per block: the unit the rows are split among threads in (a thread owns a
    # contiguous run of whole blocks; see _recurrence).
    ROWS = 4
    # At most this many of a thread's rows step through time together (one chunk): per
    # step each packed panel of the recurrent kernel is loaded once into L1 and serves all
    # of them, while their states (CHUNK x U) stay in L1/L2.
    CHUNK = 32
    # Rows of B per L1 block in the products (a KC x NC block of a panel, 32 KiB of float32
    # with AVX-512), and the widest panel, for _tn_panels' block buffer.
    KC = 256
    KC_NC_MAX = 32


include "_microkernel.pxi"   # pynn._config.set_kernel reaches this module too

cnp.import_array()

cdef extern from "_gemv.h":
    void pynn_gemv_into_f(Py_ssize_t c, Py_ssize_t u, const float* x, const float* k,
                          Py_ssize_t ldk, float* y, int accum) noexcept nogil
    void pynn_gemv_rows_f(Py_ssize_t n, Py_ssize_t c, Py_ssize_t u, const float* x,
                          Py_ssize_t ldx, const float* k, Py_ssize_t ldk, float* y,
                          Py_ssize_t ldy) noexcept nogil
include "_team.pxi"

# -- the microkernel and the products built on it -------------------------------------------
# The per-step operands (kernel, recurrent_kernel, their transposes) are repacked once per
# call into column panels of NC = 2 vectors (32 floats / 16 doubles with AVX-512, half that
# otherwise): panel p holds columns [p*NC, p*NC + w) of all K rows, contiguous (row stride
# w, w = NC except in the last panel), so a panel is one linear stream that stays in L1
# while every row group of the chunk passes over it.
# The microkernel (native/_microkernel.h) keeps MR rows x 2 vectors of accumulators in
# registers through the whole k loop (GCC vector extensions, zmm with AVX-512, ymm
# otherwise where MR tops out at 6 so 16 registers hold the block). Each output sums k in
# ascending order onto its initial value (the stored c or 0) whatever the row group, panel
# or thread it falls in, so results do not depend on the thread count.


cdef inline Py_ssize_t _panel_width(floating* dummy) noexcept nogil:
    """NC for this dtype (the argument only selects the specialization)."""
    if floating is float:
        return PYNN_NC_F
    return PYNN_NC_D


cdef inline void _panel_rows(Py_ssize_t rows, Py_ssize_t n, Py_ssize_t k, const floating* a,
                             Py_ssize_t sai, Py_ssize_t sak, const floating* b,
                             Py_ssize_t ldb, floating* c, Py_ssize_t ldc,
                             int accum) noexcept nogil:
    """All rows over one panel (n <= NC columns): c[i, :n] (+)= sum_k a[i*sai + k*sak] *
    b[k*ldb + :n], in row groups of the microkernel (_microkernel.h)."""
    if floating is float:
        pynn_rows_gemm_f(rows, n, k, a, sai, sak, b, ldb, c, ldc, accum)
    else:
        pynn_rows_gemm_d(rows, n, k, a, sai, sak, b, ldb, c, ldc, accum)


cdef void _rec_mm(Py_ssize_t rows, Py_ssize_t k, Py_ssize_t n, const floating* a,
                  Py_ssize_t lda, const floating* panels, floating* c, Py_ssize_t ldc,
                  bint accumulate) noexcept nogil:
    """c[r, :n] (+)= a[r, :k] @ B for a few rows inside one thread; B (k, n) is given packed
    by _pack_panels. Panel by panel, in blocks of KC rows of B (a panel block of at most
    KC x NC values stays in L1 while all the rows pass over it)."""
    cdef Py_ssize_t nc = _panel_width(c), p0, k0 = 0, kn, w
    while True:
        kn = min(KC, k - k0)
        p0 = 0
        while p0 < n:
            w = min(nc, n - p0)
            _panel_rows(rows, w, kn, a + k0, lda, 1, panels + p0 * k + k0 * w, w, c + p0,
                        ldc, accumulate or k0 > 0)
            p0 = p0 + nc
        k0 = k0 + kn
        if k0 >= k:
            break


cdef inline void _step_mm(Py_ssize_t rows, Py_ssize_t k, Py_ssize_t n, const floating* a,
                          Py_ssize_t lda, const floating* panels, const void* raw,
                          Py_ssize_t ldraw, floating* c, Py_ssize_t ldc,
                          bint accumulate) noexcept nogil:
    """_rec_mm; for one row of float32 whose unpacked matrix is at hand (raw, rows ldraw
    apart), _gemv.h's streaming GEMV on it: up to 16 accumulators where the rows
    microkernel's one row kept two chains waiting on the FMA latency (an LSTM(128) step
    at batch 1: 5.7 us), the same sum for every output (one FMA chain over k in order, from
    c when accumulating: the microkernel's bits at the FMA levels)."""
    if floating is float:
        if raw != NULL:
            pynn_gemv_into_f(k, n, a, <const float*>raw, ldraw, c, accumulate)
            return
    _rec_mm(rows, k, n, a, lda, panels, c, ldc, accumulate)


def _pack_panels(const floating[:, ::1] m, bint trans, Py_ssize_t lo, Py_ssize_t hi):
    """B = m[:, lo:hi] (trans False) or m[:, lo:hi]^T (trans True), packed for _rec_mm:
    panel p = columns [p*NC, p*NC + w) of B, K rows of w contiguous values, at p*NC*K."""
    cdef Py_ssize_t k = m.shape[0] if not trans else hi - lo
    cdef Py_ssize_t n = hi - lo if not trans else m.shape[0]
    out = aligned_empty(k * n, np.float32 if floating is float else np.float64)
    cdef floating[::1] dst = out
    cdef Py_ssize_t nc, p0, w, kk, j
    cdef floating* d
    if k * n == 0:
        return out
    nc = _panel_width(&dst[0])
    with nogil:
        p0 = 0
        while p0 < n:
            w = n - p0 if n - p0 < nc else nc
            d = &dst[0] + p0 * k
            for kk in range(k):
                for j in range(w):
                    if trans:
                        d[kk * w + j] = m[p0 + j, lo + kk]
                    else:
                        d[kk * w + j] = m[kk, lo + p0 + j]
            p0 = p0 + nc
    return out


# Cephes-style branch-free float32 sigmoid and tanh, shared with native/rnn_mask.pyx.
cdef extern from "_gate_act.h":
    float pynn_gate_sigmoidf(float x) noexcept nogil
    float pynn_gate_tanhf(float x) noexcept nogil


# Fused LSTM cell passes for float32 with Keras's default activations (tanh, sigmoid): one
# loop over the units of a row does what the generic passes below do in up to nine, with the
# same formulas in the same order, so the two agree to rounding; all other cases take the
# generic passes.
cdef extern from *:
    """
    /* Forward: g (the row's pre-activations, bias not yet added) becomes the activated
     * gates i, f, c~, o; c = f * c_prev + i * c~ (i * c~ at the first step, cp NULL) and
     * h = o * tanh(c). */
    #define PYNN_RNN_LSTM_FWD(CP_TERM)                                                     \\
        for (j = 0; j < u; j++) {                                                          \\
            const float i = pynn_gate_sigmoidf(g[j] + b[j]);                                \\
            const float f = pynn_gate_sigmoidf(g[u + j] + b[u + j]);                        \\
            const float cc = pynn_gate_tanhf(g[2 * u + j] + b[2 * u + j]);                  \\
            const float o = pynn_gate_sigmoidf(g[3 * u + j] + b[3 * u + j]);                \\
            const float cn = CP_TERM i * cc;                                               \\
            g[j] = i; g[u + j] = f; g[2 * u + j] = cc; g[3 * u + j] = o;                   \\
            c[j] = cn;                                                                     \\
            h[j] = o * pynn_gate_tanhf(cn);                                                 \\
        }
    static inline void pynn_rnn_lstm_fwd_f(float* restrict g, const float* restrict b,
                                           const float* restrict cp, float* restrict c,
                                           float* restrict h, Py_ssize_t u) {
        Py_ssize_t j;
        if (cp) { PYNN_RNN_LSTM_FWD(f * cp[j] +) }
        else { PYNN_RNN_LSTM_FWD() }
    }

    /* Backward: dh (upstream already added) and dc (carried) give the pre-activation
     * gradients z of the four gates; dc becomes dc_{t-1}. */
    #define PYNN_RNN_LSTM_BWD(CPV)                                                         \\
        for (j = 0; j < u; j++) {                                                          \\
            const float i = g[j], f = g[u + j], cc = g[2 * u + j], o = g[3 * u + j];       \\
            const float tc = pynn_gate_tanhf(c[j]);                                         \\
            const float dcj = dc[j] + dh[j] * o * (1 - tc * tc);                           \\
            z[j] = dcj * cc * i * (1 - i);                                                 \\
            z[u + j] = dcj * (CPV) * f * (1 - f);                                          \\
            z[2 * u + j] = dcj * i * (1 - cc * cc);                                        \\
            z[3 * u + j] = dh[j] * tc * o * (1 - o);                                       \\
            dc[j] = dcj * f;                                                               \\
        }
    static inline void pynn_rnn_lstm_bwd_f(const float* restrict g, const float* restrict cp,
                                           const float* restrict c, const float* restrict dh,
                                           float* restrict dc, float* restrict z,
                                           Py_ssize_t u) {
        Py_ssize_t j;
        if (cp) { PYNN_RNN_LSTM_BWD(cp[j]) }
        else { PYNN_RNN_LSTM_BWD(0.0f) }
    }
    """
    void pynn_rnn_lstm_fwd_f(float* g, const float* b, const float* cp, float* c, float* h,
                             Py_ssize_t u) noexcept nogil
    void pynn_rnn_lstm_bwd_f(const float* g, const float* cp, const float* c,
                             const float* dh, float* dc, float* z, Py_ssize_t u) noexcept nogil


# The same for GRU with reset_after (Keras's default) and tanh/sigmoid, float32.
cdef extern from *:
    """
    /* Forward: g (x_t @ W) becomes z, r, hh; s = h_{t-1} @ R (NULL with hp at step 0);
     * rh = s_h + b_rh; h = z * h_{t-1} + (1 - z) * hh. */
    #define PYNN_RNN_GRU_FWD(S, HP)                                                        \\
        for (j = 0; j < u; j++) {                                                          \\
            const float z = pynn_gate_sigmoidf(g[j] + bi[j] + (S(j)) + br[j]);              \\
            const float r = pynn_gate_sigmoidf(g[u + j] + bi[u + j] + (S(u + j)) + br[u + j]);\\
            const float rec = (S(2 * u + j)) + br[2 * u + j];                              \\
            const float hh = pynn_gate_tanhf(g[2 * u + j] + bi[2 * u + j] + r * rec);       \\
            g[j] = z; g[u + j] = r; g[2 * u + j] = hh;                                     \\
            rh[j] = rec;                                                                   \\
            h[j] = z * (HP(j)) + (1 - z) * hh;                                             \\
        }
    #define PYNN_RNN_AT(P, J) P[J]
    #define PYNN_RNN_S(J) PYNN_RNN_AT(s, J)
    #define PYNN_RNN_HP(J) PYNN_RNN_AT(hp, J)
    #define PYNN_RNN_ZERO(J) 0.0f
    static inline void pynn_rnn_gru_fwd_f(float* restrict g, const float* restrict bi,
                                          const float* restrict br, const float* restrict s,
                                          const float* restrict hp, float* restrict rh,
                                          float* restrict h, Py_ssize_t u) {
        Py_ssize_t j;
        if (s) { PYNN_RNN_GRU_FWD(PYNN_RNN_S, PYNN_RNN_HP) }
        else { PYNN_RNN_GRU_FWD(PYNN_RNN_ZERO, PYNN_RNN_ZERO) }
    }

    /* Backward: dh (upstream already added) gives zi (input-side pre-activation gradients)
     * and zr (recurrent side: the h gate's scaled by r); dh becomes dh * z. */
    #define PYNN_RNN_GRU_BWD(HP)                                                           \\
        for (j = 0; j < u; j++) {                                                          \\
            const float z = g[j], r = g[u + j], hh = g[2 * u + j], d = dh[j];              \\
            const float dz = d * ((HP(j)) - hh) * z * (1 - z);                             \\
            const float dhh = d * (1 - z) * (1 - hh * hh);                                 \\
            const float dr = dhh * rh[j] * r * (1 - r);                                    \\
            zi[j] = dz; zi[u + j] = dr; zi[2 * u + j] = dhh;                               \\
            zr[j] = dz; zr[u + j] = dr; zr[2 * u + j] = dhh * r;                           \\
            dh[j] = d * z;                                                                 \\
        }
    static inline void pynn_rnn_gru_bwd_f(const float* restrict g, const float* restrict rh,
                                          const float* restrict hp, float* restrict dh,
                                          float* restrict zi, float* restrict zr,
                                          Py_ssize_t u) {
        Py_ssize_t j;
        if (hp) { PYNN_RNN_GRU_BWD(PYNN_RNN_HP) }
        else { PYNN_RNN_GRU_BWD(PYNN_RNN_ZERO) }
    }
    """
    void pynn_rnn_gru_fwd_f(float* g, const float* bi, const float* br, const float* s,
                            const float* hp, float* rh, float* h, Py_ssize_t u) noexcept nogil
    void pynn_rnn_gru_bwd_f(const float* g, const float* rh, const float* hp, float* dh,
                            float* zi, float* zr, Py_ssize_t u) noexcept nogil


cdef inline void _act_vec(floating* v, Py_ssize_t n, int act, floating alpha) noexcept nogil:
    """v = act(v) over one contiguous row, the activation chosen once per row (not per
    element) so the loops vectorize; float32 sigmoid and tanh use the branch-free forms
    above, everything else (and all of float64) the shared _activation.pxd formulas."""
    cdef Py_ssize_t j
    if floating is float:
        if act == ACT_SIGMOID:
            for j in range(n):
                v[j] = pynn_gate_sigmoidf(v[j])
            return
        if act == ACT_TANH:
            for j in range(n):
                v[j] = pynn_gate_tanhf(v[j])
            return
    for j in range(n):
        v[j] = act_value(v[j], act, alpha)


cdef inline void _act_grad_vec(const floating* y, floating* d, Py_ssize_t n, int act,
                               floating alpha) noexcept nogil:
    """d = dL/d(pre-activation) from d = dL/d(output) and the output y, over one row."""
    cdef Py_ssize_t j
    if act == ACT_SIGMOID:
        for j in range(n):
            d[j] = d[j] * y[j] * (1 - y[j])
    elif act == ACT_TANH:
        for j in range(n):
            d[j] = d[j] * (1 - y[j] * y[j])
    else:
        for j in range(n):
            d[j] = act_grad(d[j], <floating>0, y[j], act, alpha)


cdef inline void _add_dy(floating* dh, const floating* dy, Py_ssize_t n) noexcept nogil:
    """dh += dy over one row (dy NULL: no upstream gradient at this step)."""
    cdef Py_ssize_t j
    if dy != NULL:
        for j in range(n):
            dh[j] = dh[j] + dy[j]


cdef inline floating _at(const floating* p, Py_ssize_t i) noexcept nogil:
    """p[i], or 0 for a NULL row pointer (the zero initial state, an absent gradient)."""
    return p[i] if p != NULL else 0


cdef inline Py_ssize_t _tx(Py_ssize_t s, Py_ssize_t t_len, bint backwards) noexcept nogil:
    return t_len - 1 - s if backwards else s


cdef inline const floating* _dy_row(const floating* dy, bint full, Py_ssize_t s,
                                    Py_ssize_t t_len, Py_ssize_t units) noexcept nogil:
    """Row 0's upstream gradient at step s (NULL where there is none)."""
    if full:
        return dy + s * units
    return dy if s == t_len - 1 else NULL


def _last_step(h_seq, return_sequences):
    if return_sequences:
        return h_seq
    n, t, units = h_seq.shape
    if t == 0:
        return np.zeros((n, units), dtype=h_seq.dtype)
    return np.ascontiguousarray(h_seq[:, t - 1])


def _stack_t(const floating[:, :, ::1] x, const floating[:, :, ::1] h,
             const floating[:, :, ::1] rh, floating[:, ::1] at, bint with_rh, bint backwards):
    """The left operands of the weight gradients, transposed and stacked: column n*T + tx(s)
    of at holds [x[n, tx, :], 1, h[n, s-1, :] (zero at s = 0), rh[n, tx, :] (with_rh)], the
    rows that meet dZ[n, tx] in dkernel, the bias gradient and d(recurrent_kernel)."""
    cdef _StackJob job
    cdef Py_ssize_t n = x.shape[0]
    cdef int threads = omp_get_max_threads()
    if n == 0 or x.shape[1] == 0:
        return
    # (an empty axis has no element to point at: those loops then run zero times)
    job.is_double, job.at = floating is double, &at[0, 0]
    job.x = &x[0, 0, 0] if x.shape[2] else NULL
    job.h = &h[0, 0, 0] if h.shape[2] else NULL
    job.rh = &rh[0, 0, 0] if with_rh and rh.shape[2] else NULL
    job.t_len, job.c, job.u, job.ld = x.shape[1], x.shape[2], h.shape[2], at.shape[1]
    job.with_rh, job.backwards = with_rh, backwards
    with nogil:
        # samples on pynn's worker team; each writes its own columns of at
        pynn_team_for(n, team_grain(n, threads), threads, _stack_job, &job)


ctypedef struct _StackJob:
    bint is_double, with_rh, backwards
    const void* x
    const void* h
    const void* rh
    void* at
    Py_ssize_t t_len, c, u, ld


cdef inline void _stack_samples(const _StackJob* k, const floating* x, long begin,
                                long end) noexcept nogil:
    cdef const floating* h = <const floating*>k.h
    cdef const floating* rh = <const floating*>k.rh
    cdef floating* at = <floating*>k.at
    cdef Py_ssize_t t_len = k.t_len, c = k.c, u = k.u, ld = k.ld, s, j, tx, col
    cdef long i
    for i in range(begin, end):
        col = i * t_len
        for j in range(c):
            for s in range(t_len):
                at[j * ld + col + s] = x[(i * t_len + s) * c + j]
        for s in range(t_len):
            at[c * ld + col + s] = 1
        for j in range(u):
            for s in range(t_len):
                tx = _tx(s, t_len, k.backwards)
                at[(c + 1 + j) * ld + col + tx] = h[(i * t_len + s - 1) * u + j] if s > 0 else 0
        if k.with_rh:
            for j in range(u):
                for s in range(t_len):
                    at[(c + 1 + u + j) * ld + col + s] = rh[(i * t_len + s) * u + j]


cdef void _stack_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _StackJob* k = <_StackJob*>ctx
    if k.is_double:
        _stack_samples(k, <const double*>k.x, begin, end)
    else:
        _stack_samples(k, <const float*>k.x, begin, end)


cdef void _tn_panels(Py_ssize_t m, Py_ssize_t cols, Py_ssize_t p_lo, Py_ssize_t p_hi,
                     Py_ssize_t kdim, const floating* at, const floating* b, Py_ssize_t ldb,
                     floating* c, Py_ssize_t ldc) noexcept nogil:
    """c[:m, p*NC : p*NC + w] = at[:m, :] @ b[:, p*NC : p*NC + w] for panels p_lo <= p < p_hi
    (at: m rows of stride kdim, b: kdim rows of stride ldb). The sum over kdim runs in
    ascending blocks of KC: a block of at's rows (m x KC) stays in L2 while the panels pass
    over it; each panel's block of b is first copied into a contiguous buffer (rows of b a
    power of two apart would share a few L1 sets) that stays in L1 for all m rows."""
    cdef floating buf[KC * KC_NC_MAX]
    cdef Py_ssize_t nc = _panel_width(c), k0 = 0, kn, kk, j, p, p0, w
    while k0 < kdim:
        kn = min(KC, kdim - k0)
        for p in range(p_lo, p_hi):
            p0 = p * nc
            w = min(nc, cols - p0)
            for kk in range(kn):
                for j in range(w):
                    buf[kk * w + j] = b[(k0 + kk) * ldb + p0 + j]
            _panel_rows(m, w, kn, at + k0, kdim, 1, buf, w, c + p0, ldc, k0 > 0)
        k0 = k0 + kn


def _gemm_tn(const floating[:, ::1] at, Py_ssize_t a_row, Py_ssize_t m,
             const floating[:, ::1] b, Py_ssize_t b_col, Py_ssize_t cols,
             floating[:, ::1] c, Py_ssize_t c_row, Py_ssize_t c_col):
    """c[c_row:c_row+m, c_col:c_col+cols] = at[a_row:a_row+m] @ b[:, b_col:b_col+cols], the
    sum over all rows of b (at holds the left operand transposed, at least one column).
    Each thread takes a run of whole column panels, so every element is summed by one
    thread in a fixed order."""
    cdef Py_ssize_t kdim = at.shape[1], ldb = b.shape[1], ldc = c.shape[1]
    cdef Py_ssize_t nc, npan, nth, tid
    if m == 0 or cols == 0:
        return
    nc = _panel_width(&c[0, 0])
    npan = (cols + nc - 1) // nc
    nth = max(1, min(<Py_ssize_t>omp_get_max_threads(), npan))
    cdef _TnJob job
    job.is_double, job.at, job.b, job.c = floating is double, &at[a_row, 0], &b[0, b_col], \
        &c[c_row, c_col]
    job.m, job.cols, job.npan, job.nth, job.kdim, job.ldb, job.ldc = m, cols, npan, nth, \
        kdim, ldb, ldc
    with nogil:
        # the runs of panels (fixed by nth) on pynn's worker team
        pynn_team_for(nth, 1, <int>nth, _tn_job, &job)


ctypedef struct _TnJob:
    bint is_double
    const void* at
    const void* b
    void* c
    Py_ssize_t m, cols, npan, nth, kdim, ldb, ldc


cdef void _tn_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _TnJob* j = <_TnJob*>ctx
    cdef long tid
    for tid in range(begin, end):
        if j.is_double:
            _tn_panels(j.m, j.cols, tid * j.npan // j.nth, (tid + 1) * j.npan // j.nth,
                       j.kdim, <const double*>j.at, <const double*>j.b, j.ldb,
                       <double*>j.c, j.ldc)
        else:
            _tn_panels(j.m, j.cols, tid * j.npan // j.nth, (tid + 1) * j.npan // j.nth,
                       j.kdim, <const float*>j.at, <const float*>j.b, j.ldb, <float*>j.c,
                       j.ldc)


def _weight_grads(x, h_seq, dz, at, go_backwards, rh=None):
    """(x^T @ dz, h_prev^T @ dz, column sums of dz) over all N*T rows as row blocks of one
    fresh (C + 1 + U, G) array: rows C (the bias gradient) and C + 1 onward
    (d(recurrent_kernel)). ``dz`` is one array, or for GRU with reset_after the pair
    (input-side dz, recurrent-side dz): the input part (x, ones) meets the first and the
    ones and h_prev the second. With ``rh`` (GRU without reset_after) the h-gate columns of
    d(recurrent_kernel) pair with rh instead of h_prev. ``at`` is scratch for _stack_t,
    (C + 1 + U (+ U with rh), N*T)."""
    dz_in, dz_rec = dz if isinstance(dz, tuple) else (dz, dz)
    n, t, c = x.shape
    g = dz_in.shape[2]
    u = h_seq.shape[2]
    rows = c + 1 + u
    if n * t == 0:
        out = np.zeros((rows, g), dtype=x.dtype)
        dbias = out[c] if dz_rec is dz_in else np.zeros((2, g), dtype=x.dtype)
        return out[:c], out[c + 1:], dbias
    out = np.empty((rows, g), dtype=x.dtype)
    _stack_t(x, h_seq, h_seq if rh is None else rh, at, rh is not None, go_backwards)
    b_in, b_rec = dz_in.reshape(n * t, g), dz_rec.reshape(n * t, g)
    if rh is not None:
        # z, r columns: [x, 1, h_prev]; h columns: [x, 1] and rh for the recurrent rows.
        _gemm_tn(at, 0, rows, b_in, 0, 2 * u, out, 0, 0)
        _gemm_tn(at, 0, c + 1, b_in, 2 * u, u, out, 0, 2 * u)
        _gemm_tn(at, rows, u, b_in, 2 * u, u, out, c + 1, 2 * u)
    elif dz_rec is dz_in:
        _gemm_tn(at, 0, rows, b_in, 0, g, out, 0, 0)
    else:
        # reset_after: the second bias row is the column sum of the recurrent-side dz.
        _gemm_tn(at, 0, c + 1, b_in, 0, g, out, 0, 0)
        out_rec = np.empty((u + 1, g), dtype=x.dtype)
        _gemm_tn(at, c, u + 1, b_rec, 0, g, out_rec, 0, 0)
        return out[:c], out_rec[1:], np.stack([out[c], out_rec[0]])
    return out[:c], out[c + 1:], out[c]


# Backward scratch (dz over all steps, the stacked weight-gradient operand) comes from the
# shared pool in pynn/backend/_scratch.py: fresh multi-MiB arrays cost about a third of an
# LSTM forward + backward step here (bench/bench_rnn.py, 64 x 50 x 32, 128 units: about
# 11.5 -> 8 ms). Nothing returned to the caller lives in it.


def _dx_buffer(x, units, need_input_grad):
    """dx for the backward loop to fill (it writes every element when the recurrence runs);
    with no input gradient wanted, an (N, T, 0) stand-in that turns the product off."""
    n, t, c = x.shape
    if not need_input_grad:
        return np.empty((n, t, 0), dtype=x.dtype)
    return np.empty(x.shape, dtype=x.dtype) if n * t * units else np.zeros(x.shape, x.dtype)


# -- the recurrent driver (every cell, forward and backward; see the design note) -----------

cdef enum:
    SIMPLE_RNN, LSTM, GRU_AFTER, GRU_BEFORE     # GRU with reset_after True / False


cdef struct Rnn:
    # One call's sizes, options and operands, shared by every chunk. A struct cannot take the
    # fused dtype, so the data pointers are untyped; the chunk functions cast them to the
    # specialization's type (selected by their alpha arguments).
    int cell, act, ract
    bint backwards, full
    Py_ssize_t t, u, gw, cin, dy_ld    # time steps, units, gate columns G, x's columns
    const void* x           # forward: x (N, T, C); NULL without columns
    const void* kernel      # kernel panels (transposed for backward); NULL without columns
    const void* rec         # recurrent kernel panels (GRU_BEFORE: R_zr only)
    const void* rec_h       # GRU_BEFORE: R_h panels (its product waits for r)
    const void* bias        # (G,), or (2, G) for GRU_AFTER
    void* g                 # gates (N, T, G) at tx; SimpleRNN: h itself
    void* state             # LSTM c_seq (N, T, U) at s; GRU rh (N, T, U) at tx
    void* h                 # h_seq (N, T, U)
    void* srec              # forward, GRU: h_{s-1} @ R per row (N, G)
    const void* dy          # backward: upstream, rows of dy_ld
    void* dz                # backward: pre-activation gradients (N, T, G) at tx
    void* dzr               # GRU_AFTER: the recurrent side's (dz itself for the others)
    void* dx                # (N, T, C); NULL without columns
    void* dh                # carried dh (N, U)
    void* dc                # carried LSTM dc, or GRU_BEFORE's d(r * h_{s-1}) (N, U); else dh
    # forward of one row in float32 at an FMA level: the kernel and recurrent kernel as
    # given (C, G) and (U, G), unpacked (NULL otherwise; see _step_mm), and x @ W of every
    # step already in the gates (h for SimpleRNN) before the recurrence (_project_cols)
    const void* kernel_raw
    const void* rec_raw
    bint projected
    # ... and the recurrent kernel in REC_PANEL-column panels (pack_recurrent), when an
    # inference plan keeps them or the call packs them into scratch itself (pack_here: as
    # its input products are made); NULL: rec_raw read in place
    const void* rec_packed
    bint pack_here


cdef void _forward_chunk(const Rnn* r, Py_ssize_t r0, Py_ssize_t rows, floating a1,
                         floating a2) noexcept nogil:
    """Rows [r0, r0 + rows) through all T steps: gates = x_tx @ W (+ h_{s-1} @ R), then the
    cell's pass (GRU's recurrent product goes to srec: r scales part of it)."""
    cdef Py_ssize_t t_len = r.t, u = r.u, gw = r.gw, cin = r.cin, s, tx
    cdef Py_ssize_t ld = t_len * u, g_ld = t_len * gw, xld = t_len * cin
    cdef int cell = r.cell
    cdef const floating* x = <const floating*>r.x + r0 * xld if cin > 0 else NULL
    cdef const floating* w = <const floating*>r.kernel
    cdef const floating* rk = <const floating*>r.rec
    cdef const floating* rk_h = <const floating*>r.rec_h
    cdef const floating* b = <const floating*>r.bias
    cdef floating* g = <floating*>r.g + r0 * g_ld
    cdef floating* st = <floating*>r.state + r0 * ld
    cdef floating* h = <floating*>r.h + r0 * ld
    cdef floating* sp = <floating*>r.srec + r0 * gw if r.srec != NULL else NULL
    cdef floating* gs
    cdef floating* hp
    for s in range(t_len):
        tx = _tx(s, t_len, r.backwards)
        hp = h + (s - 1) * u if s > 0 else NULL
        gs = h + s * u if cell == SIMPLE_RNN else g + tx * gw
        if not r.projected:
            _step_mm(rows, cin, gw, x + tx * cin, xld, w, r.kernel_raw, gw, gs, g_ld, False)
        if cell == SIMPLE_RNN or cell == LSTM:
            if s > 0:
                _step_mm(rows, u, gw, hp, ld, rk, r.rec_raw, gw, gs, g_ld, True)
            if cell == SIMPLE_RNN:
                _simple_step_forward(r, rows, b, gs, a1)
            else:
                _lstm_step_forward(r, rows, gs, b, st + (s - 1) * u if s > 0 else NULL,
                                   st + s * u, h + s * u, a1, a2)
        elif cell == GRU_AFTER:
            if s > 0:
                _step_mm(rows, u, gw, hp, ld, rk, r.rec_raw, gw, sp, gw, False)
            _gru_step_forward_after(r, rows, gs, sp if s > 0 else NULL, b, b + gw, hp,
                                    st + tx * u, h + s * u, a1, a2)
        else:
            if s > 0:
                _step_mm(rows, u, 2 * u, hp, ld, rk, r.rec_raw, gw, sp, gw, False)
            _gru_step_forward_gates(r, rows, gs, sp if s > 0 else NULL, b, hp, st + tx * u, a2)
            if s > 0:
                _step_mm(rows, u, u, st + tx * u, ld, rk_h,
                         <const float*>r.rec_raw + 2 * u if r.rec_raw != NULL else NULL, gw,
                         sp + 2 * u, gw, False)
            _gru_step_forward_out(r, rows, gs, sp if s > 0 else NULL, b, hp, h + s * u, a1)


cdef void _backward_chunk(const Rnn* r, Py_ssize_t r0, Py_ssize_t rows, floating a1,
                          floating a2) noexcept nogil:
    """Rows [r0, r0 + rows) from step T-1 down to 0: the cell's pass turns dh into dz, then
    dh_{s-1} = dz_s @ R^T and dx_tx = dz_s @ W^T while dz_s is in cache."""
    cdef Py_ssize_t t_len = r.t, u = r.u, gw = r.gw, cin = r.cin, dy_ld = r.dy_ld, s, tx
    cdef Py_ssize_t ld = t_len * u, g_ld = t_len * gw, xld = t_len * cin
    cdef int cell = r.cell
    cdef const floating* wt = <const floating*>r.kernel
    cdef const floating* rk = <const floating*>r.rec
    cdef const floating* rk_h = <const floating*>r.rec_h
    cdef const floating* dy = <const floating*>r.dy + r0 * dy_ld
    cdef const floating* g = <const floating*>r.g + r0 * g_ld
    cdef const floating* st = <const floating*>r.state + r0 * ld
    cdef const floating* h = <const floating*>r.h + r0 * ld
    cdef floating* dz = <floating*>r.dz + r0 * g_ld
    cdef floating* dzr = <floating*>r.dzr + r0 * g_ld
    cdef floating* dx = <floating*>r.dx + r0 * xld if cin > 0 else NULL
    cdef floating* dh = <floating*>r.dh + r0 * u
    cdef floating* dc = <floating*>r.dc + r0 * u
    cdef const floating* dys
    cdef const floating* hp
    cdef floating* zs
    for s in range(t_len - 1, -1, -1):
        tx = _tx(s, t_len, r.backwards)
        dys = _dy_row(dy, r.full, s, t_len, u)
        hp = h + (s - 1) * u if s > 0 else NULL
        zs = dz + tx * gw
        if cell == SIMPLE_RNN:
            _simple_step_backward(r, rows, dys, h + s * u, dh, zs, a1)
        elif cell == LSTM:
            _lstm_step_backward(r, rows, dys, g + tx * gw,
                                st + (s - 1) * u if s > 0 else NULL, st + s * u, dh, dc, zs,
                                a1, a2)
        elif cell == GRU_AFTER:
            _gru_step_backward_after(r, rows, dys, g + tx * gw, st + tx * u, hp, dh, zs,
                                     dzr + tx * gw, a1, a2)
        else:
            _gru_step_backward_out(r, rows, dys, g + tx * gw, hp, dh, zs, a1, a2)
            if s > 0:
                # d(r * h_{s-1}) = dZ_h @ R_h^T, before r's gradient can be formed.
                _rec_mm(rows, u, u, zs + 2 * u, g_ld, rk_h, dc, u, False)
            _gru_step_backward_gates(r, rows, g + tx * gw, dc if s > 0 else NULL, hp, dh, zs,
                                     a2)
        if s > 0:
            # dh_{s-1} = dZ_s @ R^T. GRU: from the recurrent side's dZ (without reset_after
            # only z and r: R_h^T came in above), added to the direct term dh * z.
            _rec_mm(rows, 2 * u if cell == GRU_BEFORE else gw, u, dzr + tx * gw, g_ld, rk, dh,
                    u, cell == GRU_AFTER or cell == GRU_BEFORE)
        if cin > 0:
            _rec_mm(rows, gw, cin, zs, g_ld, wt, dx + tx * cin, xld, False)


cdef void _recurrence(const Rnn* r, Py_ssize_t n, bint grad, floating a1,
                      floating a2) noexcept nogil:
    """Each run (one per ROWS block at most, as many as threads) takes a contiguous range of
    whole blocks, rows [r0, r1), and steps it through time in chunks of up to CHUNK rows."""
    cdef _RecurrenceJob job
    job.is_double, job.grad, job.r, job.n, job.a1, job.a2 = floating is double, grad, r, n, \
        a1, a2
    job.nblk = (n + ROWS - 1) // ROWS
    job.nth = max(1, min(<Py_ssize_t>omp_get_max_threads(), job.nblk))
    # the runs (fixed by nth) on pynn's worker team: a run is a whole sequence's work
    pynn_team_for(job.nth, 1, <int>job.nth, _recurrence_job, &job)


ctypedef struct _RecurrenceJob:
    bint is_double, grad
    const Rnn* r
    Py_ssize_t n, nblk, nth
    double a1, a2


cdef inline void _recurrence_run(const _RecurrenceJob* j, long tid, floating a1,
                                 floating a2) noexcept nogil:
    cdef Py_ssize_t rows, r0 = min(tid * j.nblk // j.nth * ROWS, j.n)
    cdef Py_ssize_t r1 = min((tid + 1) * j.nblk // j.nth * ROWS, j.n)
    while r0 < r1:
        rows = min(CHUNK, r1 - r0)
        if j.grad:
            _backward_chunk(j.r, r0, rows, a1, a2)
        else:
            _forward_chunk(j.r, r0, rows, a1, a2)
        r0 = r0 + rows


cdef void _recurrence_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _RecurrenceJob* j = <_RecurrenceJob*>ctx
    cdef long tid
    for tid in range(begin, end):
        if j.is_double:
            _recurrence_run(j, tid, <double>j.a1, <double>j.a2)
        else:
            _recurrence_run(j, tid, <float>j.a1, <float>j.a2)


# -- one sample: the input products hoisted, the recurrent product split over the team -----
# At batch 1 every product is a GEMV streaming its weights from L2 (an LSTM(128) step reads
# its 256 KB recurrent kernel: about 2 of the step's 3 us on one core), so the recurrence
# ran on one core however many pynn had. Here:
#   - x @ W of every step is one pass before the recurrence (_project_cols): the kernel
#     streams by once for PROJECT_ROWS steps instead of once a step; the rows GEMV sums
#     each output as the one-row GEMV does (the same bits).
#   - An inference plan keeps R in panels of REC_PANEL columns (pack_recurrent, passed by
#     packed_forward; pynn/inference.py's _Recurrent): a step's GEMV then streams each
#     panel in order where in place it read 1 KB of every 2 KB row (3 KB rows for a
#     GRU(256)); one thread, us a call of 32 steps: LSTM(128) 130-140 -> 107-111, GRU(256)
#     390-401 -> 236-246. A call given no panels (the op called directly, the general path)
#     makes them itself into scratch from PACK_MIN_STEPS steps on one thread (the op cannot
#     know that R has not changed since an earlier copy): LSTM(128) 124-135 -> 107-114,
#     GRU(256) 375-401 -> 304-317 a call. A split call reads R in place (below).
#   - With several threads each step's recurrent product h_{s-1} @ R is cut into column
#     ranges (multiples of 16 columns), one affine team job a step, range p on team slot p,
#     whose L2 keeps those columns of R from step to step; then the caller runs the cell on
#     all units. Column ranges, not unit ranges: a range of units is k strips of R (one per
#     gate), which ran at half the GEMV's speed in place (four accumulators a strip, rows of
#     256 bytes 2 KB apart that the prefetchers did not follow) and needed a packed copy of
#     R per call (~10 us for an LSTM(128)); a column range is the contiguous block the
#     unsplit GEMV walks anyway. Each output is summed as unsplit and the cell is
#     _forward_chunk's: the results are one thread's bits. As a batch-1 lane's split layers
#     (native/_team.h, pynn_team_lane_threads) the ranges run on the team only while its
#     worker is awake, i.e. while calls come close together: waking a sleeping one costs a
#     virtual machine's caller more than the split saves (LSTM(128) over 32 steps called
#     every millisecond: 138 -> 178 us when each call woke it).
cdef enum:
    # A one-row call given no panels packs R into scratch itself from this many steps: the
    # copy (LSTM(128): 256 KB, ~8 us) costs about 8 steps' worth of what it saves.
    PACK_MIN_STEPS = 16
    # Columns of a packed recurrent kernel's panel: the AVX-512 GEMV's block (16 vectors).
    # The AVX2 GEMV's 96-column blocks gain as much from it (Intel Xeon at that level, one
    # thread, us a call of 32 steps, in place -> packed: LSTM(128) 149 -> 108, LSTM(256)
    # 620 -> 370; at AVX-512 128 -> 96 and 525 -> 312).
    REC_PANEL = 256
    # Steps per pass of the input products: two rows keep 8 vectors of columns a block;
    # four (the GEMV's most) keep 4, and a GRU(256)'s 768-column kernel then ran in 64-column
    # strips 3 KB apart (one thread, us a call: 345 with the products in the steps, 365 with
    # four rows, 350 with two; GRU(128) 109 -> 96, LSTM(64) 46 -> 44).
    PROJECT_ROWS = 2
    SPLIT_PARTS_MAX = 8
    # A range's multiply-adds per step at least (its GEMV's floats): a step of 128K or more
    # splits in two. Intel Xeon, a batch-1 plan (the recurrent kernel packed), us per call
    # of 32 steps, one thread -> two, calls back to back: LSTM(256) 309-313 -> 246-278,
    # GRU(256) 220-225 -> 180-182, but LSTM(128) (64K a step) 100 -> 98-102: the step's
    # job hand-offs (~0.5-0.8 us) ate what the halved GEMV saved. Beside another process's
    # busy loop a split step loses 5-10% instead (the worker shares its core).
    SPLIT_PART_MIN_MACS = 65536


ctypedef struct _ColumnsJob:
    const Rnn* r
    Py_ssize_t s                # the step; -1: the input products
    Py_ssize_t bounds[SPLIT_PARTS_MAX + 1]


cdef void _project_cols(const Rnn* r, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    """Columns [c0, c1) of x @ W for every step of one sample: x_t into the gates at t (their
    input time index), for SimpleRNN x_tx into h at s (x read from its last step back with
    go_backwards)."""
    cdef Py_ssize_t t_len = r.t, cin = r.cin, gw = r.gw, t0, rows, j
    cdef const float* x = <const float*>r.x
    cdef Py_ssize_t ldx = cin
    cdef float* dst = (<float*>r.h if r.cell == SIMPLE_RNN else <float*>r.g) + c0
    if cin == 0:
        for t0 in range(t_len):
            for j in range(c1 - c0):
                dst[t0 * gw + j] = 0
        return
    if r.cell == SIMPLE_RNN and r.backwards:
        x = x + (t_len - 1) * cin
        ldx = -cin
    t0 = 0
    while t0 < t_len:
        rows = min(<Py_ssize_t>PROJECT_ROWS, t_len - t0)
        pynn_gemv_rows_f(rows, cin, c1 - c0, x + t0 * ldx, ldx,
                         <const float*>r.kernel_raw + c0, gw, dst + t0 * gw, gw)
        t0 = t0 + rows


cdef void _rec_gemv(const Rnn* r, const float* hp, Py_ssize_t c0, Py_ssize_t c1, float* dst,
                    int accum) noexcept nogil:
    """dst[c0:c1] (+)= h_{s-1} @ R[:, c0:c1] for one row, from the packed panels where a plan
    keeps them (each panel's rows contiguous: one sequential stream a block), else from R
    in place (rows gw apart); the same sums either way."""
    cdef const float* pk = <const float*>r.rec_packed
    cdef Py_ssize_t p0, w, a, e
    if pk == NULL:
        pynn_gemv_into_f(r.u, c1 - c0, hp, <const float*>r.rec_raw + c0, r.gw, dst + c0,
                         accum)
        return
    p0 = c0 // REC_PANEL * REC_PANEL
    while p0 < c1:
        w = min(<Py_ssize_t>REC_PANEL, r.gw - p0)
        a, e = max(c0, p0), min(c1, p0 + w)
        pynn_gemv_into_f(r.u, e - a, hp, pk + r.u * p0 + (a - p0), w, dst + a, accum)
        p0 = p0 + REC_PANEL


cdef void _pack_rec(const float* rk, Py_ssize_t u, Py_ssize_t g, float* dst, Py_ssize_t c0,
                   Py_ssize_t c1) noexcept nogil:
    """Columns [c0, c1) of R (u, g) into its panels of REC_PANEL columns: panel p (columns
    [p * REC_PANEL, + w)) at u * p * REC_PANEL, its u rows of w contiguous (a column range
    of the one-row split packs its own columns, which its core then reads)."""
    cdef Py_ssize_t p0 = c0 // REC_PANEL * REC_PANEL, w, a, e, i
    while p0 < c1:
        w = min(<Py_ssize_t>REC_PANEL, g - p0)
        a, e = max(c0, p0), min(c1, p0 + w)
        for i in range(u):
            memcpy(dst + u * p0 + i * w + (a - p0), rk + i * g + a, (e - a) * sizeof(float))
        p0 = p0 + REC_PANEL


def _checked_panels(who, packed, Py_ssize_t u, Py_ssize_t g):
    """packed, if it holds pack_recurrent's u * g floats for a (u, g) recurrent kernel."""
    cdef const float[::1] pk = packed
    if pk.shape[0] != max(u * g, 1):
        raise ValueError(f"{who}: expected pack_recurrent's {u * g} floats for a ({u}, {g}) "
                         f"recurrent kernel, got {pk.shape[0]}")
    return packed


def pack_recurrent(const float[:, ::1] recurrent_kernel):
    """The recurrent kernel (U, G) in panels (_pack_rec), for an inference plan to keep and
    pass to packed_forward (a batch-1 step's GEMV then streams each block of R in order)."""
    cdef Py_ssize_t u = recurrent_kernel.shape[0], g = recurrent_kernel.shape[1]
    out = aligned_empty(max(u * g, 1), np.float32)
    cdef float[::1] dst = out
    if u * g:
        _pack_rec(&recurrent_kernel[0, 0], u, g, &dst[0], 0, g)
    return out


cdef void _columns_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    """Column ranges [begin, end) of step s's recurrent product (of the input products for
    s = -1), as _forward_chunk's one-row _step_mm would make them."""
    cdef _ColumnsJob* j = <_ColumnsJob*>ctx
    cdef const Rnn* r = j.r
    cdef Py_ssize_t u = r.u, gw = r.gw, s = j.s, c0, c1
    cdef const float* hp = <const float*>r.h + (s - 1) * u
    cdef float* dst
    cdef long p
    for p in range(begin, end):
        c0, c1 = j.bounds[p], j.bounds[p + 1]
        if s < 0:
            if r.pack_here:
                _pack_rec(<const float*>r.rec_raw, u, gw, <float*>r.rec_packed, c0, c1)
            _project_cols(r, c0, c1)
        elif r.cell == GRU_AFTER:
            _rec_gemv(r, hp, c0, c1, <float*>r.srec, 0)
        else:
            dst = (<float*>r.h + s * u if r.cell == SIMPLE_RNN
                   else <float*>r.g + _tx(s, r.t, r.backwards) * gw)
            _rec_gemv(r, hp, c0, c1, dst, 1)


cdef int _split_parts(const Rnn* r, int threads) noexcept nogil:
    """Column ranges of one sample's recurrent product (1: unsplit): cells whose step is one
    product then one pass (SimpleRNN, LSTM, GRU with reset_after), ranges of 16 columns or
    more and SPLIT_PART_MIN_MACS each."""
    cdef Py_ssize_t parts
    if threads < 2 or r.t < 2 or r.cell == GRU_BEFORE:
        return 1
    parts = min(<Py_ssize_t>threads, <Py_ssize_t>SPLIT_PARTS_MAX, r.gw // 16,
                r.gw * r.u // SPLIT_PART_MIN_MACS)
    return <int>parts if parts > 1 else 1


cdef void _forward_one(const Rnn* r, int threads, float a1, float a2) noexcept nogil:
    """One sample through all steps (float32, the matrices as given): the input products
    first, then each step's recurrent product (split where _split_parts says) and cell."""
    cdef _ColumnsJob job
    cdef int parts = _split_parts(r, threads), p
    cdef Py_ssize_t s, tx, u = r.u, gw = r.gw
    cdef float* g = <float*>r.g
    cdef float* st = <float*>r.state
    cdef float* h = <float*>r.h
    cdef const float* b = <const float*>r.bias
    if r.cell == GRU_BEFORE:
        _project_cols(r, 0, gw)
        _forward_chunk(r, 0, 1, a1, a2)
        return
    job.r = r
    for p in range(parts):
        job.bounds[p] = gw * p // parts // 16 * 16
    job.bounds[parts] = gw
    job.s = -1
    pynn_team_for_affine(parts, threads, _columns_job, &job)
    for s in range(r.t):
        tx = _tx(s, r.t, r.backwards)
        if s > 0:
            job.s = s
            pynn_team_for_affine(parts, threads, _columns_job, &job)
        if r.cell == SIMPLE_RNN:
            _simple_step_forward(r, 1, b, h + s * u, a1)
        elif r.cell == LSTM:
            _lstm_step_forward(r, 1, g + tx * gw, b, st + (s - 1) * u if s > 0 else NULL,
                               st + s * u, h + s * u, a1, a2)
        else:
            _gru_step_forward_after(r, 1, g + tx * gw, <float*>r.srec if s > 0 else NULL, b,
                                    b + gw, h + (s - 1) * u if s > 0 else NULL, st + tx * u,
                                    h + s * u, a1, a2)


cdef void _run_one_row(Rnn* r, int threads, float a1, float a2) noexcept nogil:
    """A one-row float32 forward on pynn's `threads` (the process-wide count): split where
    _split_parts says, on the team's worker only while it is awake."""
    if _split_parts(r, threads) > 1:
        _forward_one(r, pynn_team_lane_threads(), a1, a2)
        pynn_team_lane_done()
    else:
        _forward_one(r, 1, a1, a2)


cdef Rnn _rnn(int cell, Py_ssize_t t, Py_ssize_t u, Py_ssize_t gw, Py_ssize_t cin, int act,
              int ract, bint backwards) noexcept:
    cdef Rnn r
    memset(&r, 0, sizeof(r))
    r.cell, r.act, r.ract, r.backwards = cell, act, ract, backwards
    r.t, r.u, r.gw, r.cin = t, u, gw, cin
    return r


def _panels(int cell, kernel, recurrent_kernel, bint trans):
    """The per-step products' operands packed once per call (transposed for backward):
    kernel, recurrent kernel and its h-gate columns apart for GRU_BEFORE, where r applies
    between the two products."""
    g, u = kernel.shape[1], recurrent_kernel.shape[0]
    rk = _pack_panels(recurrent_kernel, trans, 0, 2 * u if cell == GRU_BEFORE else g)
    rk_h = _pack_panels(recurrent_kernel, trans, 2 * u, 3 * u) if cell == GRU_BEFORE else rk
    return _pack_panels(kernel, trans, 0, g), rk, rk_h


def _forward(int cell, const floating[:, :, ::1] x, kernel, recurrent_kernel,
             const floating[::1] bias, floating[:, :, ::1] g, floating[:, :, ::1] state,
             floating[:, :, ::1] h, int act, double a1, int ract, double a2, bint backwards,
             packed=None):
    """Fill h, the gates (activated) and the cell's state (see Rnn); N*T*U > 0. SimpleRNN
    passes h for g and state. packed: pack_recurrent(recurrent_kernel), read by a one-row
    float32 forward (else unused)."""
    cdef Rnn r = _rnn(cell, h.shape[1], h.shape[2], g.shape[2], x.shape[2], act, ract,
                      backwards)
    cdef const floating[::1] w, rk, rk_h
    cdef floating[:, ::1] srec
    cdef const float[:, ::1] kraw, rraw
    cdef const float[::1] pk
    cdef float[::1] own
    cdef int threads
    scratch = None
    dtype = np.float32 if floating is float else np.float64
    if floating is float and h.shape[0] == 1 and pynn_mk_level() != 0:
        # one row (batch-1 inference) at an FMA level: every product a GEMV on the matrices
        # as given (_step_mm), nothing packed
        kraw = np.ascontiguousarray(kernel, dtype=np.float32)
        rraw = np.ascontiguousarray(recurrent_kernel, dtype=np.float32)
        w = rk = rk_h = np.zeros(1, dtype=dtype)  # (the panels' pointers, unread)
        r.kernel_raw = &kraw[0, 0] if r.cin > 0 else NULL
        r.rec_raw = &rraw[0, 0]
        r.projected = True
        if packed is not None:
            pk = _checked_panels("packed_forward", packed, r.u, r.gw)
            r.rec_packed = &pk[0]
        elif (r.t >= PACK_MIN_STEPS and cell != GRU_BEFORE
                and _split_parts(&r, pynn_team_threads()) == 1):
            # no panels kept by a plan, and the steps on one thread: packed here, into
            # scratch, with the input products (a split call reads R in place: each range
            # then stays in its core's L2 from call to call, where a fresh copy each call
            # had GRU(256) on two threads at 320 us against 225)
            scratch, (own,) = _take_scratch(np.float32, (r.u * r.gw,))
            r.rec_packed = &own[0]
            r.pack_here = True
    else:
        w, rk, rk_h = _panels(cell, kernel, recurrent_kernel, False)
    r.x = &x[0, 0, 0] if r.cin > 0 else NULL
    r.kernel = &w[0] if r.cin > 0 else NULL
    r.rec, r.rec_h, r.bias = &rk[0], &rk_h[0], &bias[0]
    r.g, r.state, r.h = &g[0, 0, 0], &state[0, 0, 0], &h[0, 0, 0]
    if cell == GRU_AFTER or cell == GRU_BEFORE:
        srec = np.zeros((h.shape[0], r.gw), dtype=dtype)
        r.srec = &srec[0, 0]
    # pynn's process-wide count, as a batch-1 lane's (an inference plan runs a batch-1 call
    # with OpenMP's count at one: its lanes split their own layers)
    threads = pynn_team_threads()
    try:
        with nogil:
            if floating is float and r.projected:
                _run_one_row(&r, threads, <float>a1, <float>a2)
            else:
                _recurrence(&r, h.shape[0], False, <floating>a1, <floating>a2)
    finally:
        if scratch is not None:
            _give_scratch(scratch)


def _backward(int cell, const floating[:, ::1] dy, bint full, kernel, recurrent_kernel,
              const floating[:, :, ::1] g, const floating[:, :, ::1] state,
              const floating[:, :, ::1] h, floating[:, :, ::1] dz, floating[:, :, ::1] dzr,
              floating[:, :, ::1] dx, int act, double a1, int ract, double a2, bint backwards):
    """Fill dz (and dzr, GRU_AFTER's recurrent side; pass dz for the others) at every step
    and dx when it has columns; N*T*U > 0. g, state and h are forward's (see Rnn)."""
    cdef Rnn r = _rnn(cell, h.shape[1], h.shape[2], g.shape[2], dx.shape[2], act, ract,
                      backwards)
    dtype = np.float32 if floating is float else np.float64
    cdef floating[:, ::1] dh = np.zeros((h.shape[0], r.u), dtype=dtype)
    cdef floating[:, ::1] dc = (np.zeros((h.shape[0], r.u), dtype=dtype)
                                if cell == LSTM or cell == GRU_BEFORE else dh)
    cdef const floating[::1] w, rk, rk_h
    w, rk, rk_h = _panels(cell, kernel, recurrent_kernel, True)
    r.full, r.dy_ld, r.dy = full, dy.shape[1], &dy[0, 0]
    r.kernel = &w[0] if r.cin > 0 else NULL
    r.rec, r.rec_h = &rk[0], &rk_h[0]
    r.g, r.state, r.h = <void*>&g[0, 0, 0], <void*>&state[0, 0, 0], <void*>&h[0, 0, 0]
    r.dz, r.dzr, r.dh, r.dc = &dz[0, 0, 0], &dzr[0, 0, 0], &dh[0, 0], &dc[0, 0]
    r.dx = &dx[0, 0, 0] if r.cin > 0 else NULL
    with nogil:
        _recurrence(&r, h.shape[0], True, <floating>a1, <floating>a2)


# -- the public ops: checked operands in, one driver per direction ------------------------

def _recurrent_forward(int cell, c, x, kernel, recurrent_kernel, bias, flags, packed=None):
    """Any cell's forward -> (y, cache), the cache shaped as operands.cache_shapes says."""
    n, t, _ = x.shape
    # Every element of the results and caches is written (np.empty: no zeroing pass).
    cache = [np.empty(shape, dtype=x.dtype) for shape in operands.cache_shapes(c, n, t)]
    h_seq = cache[0]
    gates, state = (cache[1], cache[2]) if len(cache) == 3 else (h_seq, h_seq)
    if bias is None:
        bias = np.zeros(operands.bias_shape(c, flags.reset_after), dtype=x.dtype)
    ract, ralpha = (c.act, c.alpha) if c.ract is None else (c.ract, c.ralpha)
    if n * t * c.units:
        _forward(cell, x, kernel, recurrent_kernel, bias.reshape(-1), gates, state, h_seq,
                 c.act, c.alpha, ract, ralpha, flags.go_backwards, packed)
    return _last_step(h_seq, flags.return_sequences), tuple(cache)


def packed_forward(name, packed, *args):
    """``{name}_forward(*args)`` (name: simple_rnn, lstm, gru) with its recurrent kernel's
    panels made once (pack_recurrent, kept by an inference plan while the weights stay):
    the same checks and bits; the panels are read by a one-row float32 call."""
    return _recurrent_forward(*_checked_forward(name, args), packed)


cdef class OneRow:
    """``packed_forward(name, packed, x, *rest)`` for one float32 sample of x's features
    and any number of steps (a masked request runs its kept steps), its operands checked
    once (an inference plan's batch-1 recurrent step, as DenseChain's predict_one is a Dense
    chain's): ``run(x)`` -> y, a fresh array with the op's bits, or None for an x of other
    features or layout or at the generic microkernel level (the caller then takes the op). The op's checks, conversions and Python took ~10 us a call, an
    LSTM(128) over 32 steps ~100."""
    cdef Rnn base               # the pointers that do not change from call to call
    cdef object keep            # the arrays they point into
    cdef float a1, a2
    cdef Py_ssize_t c, u, g
    cdef bint sequences

    def __init__(self, name, packed, x, *rest):
        cdef const float[:, ::1] kraw, rraw
        cdef const float[::1] b, pk
        cell, c, x, kernel, rk, bias, flags = _checked_forward(name, (x,) + rest)
        if x.dtype != np.float32 or x.shape[0] != 1 or x.shape[1] * c.units == 0:
            raise ValueError(f"OneRow: expected one float32 sample of one step or more, got "
                             f"{x.dtype} {x.shape}")
        if bias is None:
            bias = np.zeros(operands.bias_shape(c, flags.reset_after), dtype=np.float32)
        ract, ralpha = (c.act, c.alpha) if c.ract is None else (c.ract, c.ralpha)
        self.c, self.u = x.shape[2], c.units
        self.g = c.gates * c.units
        self.base = _rnn(cell, x.shape[1], self.u, self.g, self.c, c.act, ract,
                         flags.go_backwards)
        self.a1, self.a2, self.sequences = c.alpha, ralpha, flags.return_sequences
        kraw = np.ascontiguousarray(kernel, dtype=np.float32)
        rraw = np.ascontiguousarray(rk, dtype=np.float32)
        b = np.ascontiguousarray(bias, dtype=np.float32).reshape(-1)
        self.keep = [kraw.base, rraw.base, b.base, packed]
        self.base.kernel_raw = &kraw[0, 0] if self.c > 0 else NULL
        self.base.rec_raw = &rraw[0, 0]
        self.base.bias = &b[0]
        self.base.projected = True
        if packed is not None and cell != GRU_BEFORE:
            pk = _checked_panels("OneRow", packed, self.u, self.g)
            self.base.rec_packed = &pk[0]

    def run(self, x):
        cdef cnp.ndarray a, h, g, st, srec
        cdef cnp.npy_intp dims[3]
        cdef Rnn r = self.base
        cdef int threads
        if type(x) is not np.ndarray or pynn_mk_level() == 0:
            return None
        a = <cnp.ndarray>x
        if (cnp.PyArray_NDIM(a) != 3 or cnp.PyArray_DIM(a, 0) != 1
                or cnp.PyArray_DIM(a, 1) < 1 or cnp.PyArray_DIM(a, 2) != self.c
                or cnp.PyArray_TYPE(a) != cnp.NPY_FLOAT32
                or not cnp.PyArray_ISCARRAY_RO(a) or not cnp.PyArray_ISNOTSWAPPED(a)):
            return None
        r.t = cnp.PyArray_DIM(a, 1)
        dims[0], dims[1], dims[2] = 1, r.t, self.u
        h = cnp.PyArray_EMPTY(3, dims, cnp.NPY_FLOAT32, 0)
        r.x = cnp.PyArray_DATA(a) if self.c > 0 else NULL
        r.h = cnp.PyArray_DATA(h)
        if r.cell == SIMPLE_RNN:
            r.g = r.state = r.h
        else:
            st = cnp.PyArray_EMPTY(3, dims, cnp.NPY_FLOAT32, 0)
            dims[2] = self.g
            g = cnp.PyArray_EMPTY(3, dims, cnp.NPY_FLOAT32, 0)
            r.g, r.state = cnp.PyArray_DATA(g), cnp.PyArray_DATA(st)
            if r.cell == GRU_AFTER or r.cell == GRU_BEFORE:
                dims[1] = 1  # (1, G): one row's recurrent sums
                srec = cnp.PyArray_ZEROS(2, dims + 1, cnp.NPY_FLOAT32, 0)
                r.srec = cnp.PyArray_DATA(srec)
        threads = pynn_team_threads()
        with nogil:
            _run_one_row(&r, threads, self.a1, self.a2)
        return h if self.sequences else _last_step(h, False)


def _checked_forward(name, args):
    """(cell, operands...) of ``{name}_forward(*args)`` (name: simple_rnn, lstm, gru)."""
    if name == "simple_rnn":
        return (SIMPLE_RNN,) + tuple(operands.simple_rnn_forward(HOST, *args))
    if name == "lstm":
        return (LSTM,) + tuple(operands.lstm_forward(HOST, *args))
    if name == "gru":
        c, x, kernel, rk, bias, flags = operands.gru_forward(HOST, *args)
        return (GRU_AFTER if flags.reset_after else GRU_BEFORE, c, x, kernel, rk, bias, flags)
    raise ValueError(f"packed_forward: expected simple_rnn, lstm or gru, got {name!r}")


def _recurrent_backward(int cell, c, dy, x, kernel, recurrent_kernel, cache, flags):
    """Any cell's backward -> (dx or None, dkernel, drecurrent_kernel, dbias)."""
    n, t, _ = x.shape
    u = c.units
    h_seq = cache[0]
    gates, state = (cache[1], cache[2]) if len(cache) == 3 else (h_seq, h_seq)
    ract, ralpha = (c.act, c.alpha) if c.ract is None else (c.ract, c.ralpha)
    # GRU with reset_after keeps the recurrent side's pre-activation gradient apart; without
    # it the stacked weight-gradient operand carries rh as well.
    split = cell == GRU_AFTER
    with_rh = cell == GRU_BEFORE
    buf, (dz, dzr, at) = _take_scratch(
        x.dtype, (n, t, c.gates * u), (n, t, c.gates * u) if split else (0,),
        (x.shape[2] + 1 + u + (u if with_rh else 0), n * t))
    if not split:
        dzr = dz
    try:
        dx = _dx_buffer(x, u, flags.need_input_grad)
        if n * t * u:
            _backward(cell, dy.reshape(n, -1), flags.return_sequences, kernel,
                      recurrent_kernel, gates, state, h_seq, dz, dzr, dx, c.act, c.alpha,
                      ract, ralpha, flags.go_backwards)
        if split:
            dkernel, drk, dbias = _weight_grads(x, h_seq, (dz, dzr), at, flags.go_backwards)
        else:
            dkernel, drk, dbias = _weight_grads(x, h_seq, dz, at, flags.go_backwards,
                                                state if with_rh else None)
    finally:
        _give_scratch(buf)
    return dx if flags.need_input_grad else None, dkernel, drk, dbias


# -- SimpleRNN ------------------------------------------------------------------------------

cdef void _simple_step_forward(const Rnn* r, Py_ssize_t rows, const floating* bias,
                               floating* h, floating alpha) noexcept nogil:
    """h holds x_t @ W + h_{t-1} @ R and leaves holding act(h + bias)."""
    cdef Py_ssize_t n, j, u = r.u, ld = r.t * r.u
    cdef floating* hr
    for n in range(rows):
        hr = h + n * ld
        for j in range(u):
            hr[j] = hr[j] + bias[j]
        _act_vec(hr, u, r.act, alpha)


cdef void _simple_step_backward(const Rnn* r, Py_ssize_t rows, const floating* dy,
                                const floating* h, floating* dh_next, floating* dz,
                                floating alpha) noexcept nogil:
    cdef Py_ssize_t n, j, u = r.u, ld = r.t * r.u
    cdef floating* dhr
    for n in range(rows):
        dhr = dh_next + n * u
        _add_dy(dhr, dy + n * r.dy_ld if dy != NULL else NULL, u)
        for j in range(u):
            dz[n * ld + j] = dhr[j]
        _act_grad_vec(h + n * ld, dz + n * ld, u, r.act, alpha)


def simple_rnn_forward(x, kernel, recurrent_kernel, bias, activation="tanh",
                       return_sequences=False, go_backwards=False):
    """h_t = act(x_t @ kernel + h_{t-1} @ recurrent_kernel + bias) -> (y, cache).

    y is h_seq (N, T, U) with return_sequences, else the last output (N, U); cache = (h_seq,).
    """
    return _recurrent_forward(SIMPLE_RNN, *operands.simple_rnn_forward(
        HOST, x, kernel, recurrent_kernel, bias, activation, return_sequences, go_backwards))


def simple_rnn_backward(dy, x, kernel, recurrent_kernel, cache, activation="tanh",
                        return_sequences=False, go_backwards=False, need_input_grad=True):
    """-> (dx or None, dkernel, drecurrent_kernel, dbias); dy is (N, T, U) with
    return_sequences, else (N, U)."""
    return _recurrent_backward(SIMPLE_RNN, *operands.simple_rnn_backward(
        HOST, dy, x, kernel, recurrent_kernel, cache, activation, return_sequences,
        go_backwards, need_input_grad))


# -- LSTM -----------------------------------------------------------------------------------

cdef void _lstm_step_forward(const Rnn* r, Py_ssize_t rows, floating* g,
                             const floating* bias, const floating* c_prev, floating* c,
                             floating* h, floating a1, floating a2) noexcept nogil:
    """g holds x_t @ W + h_{t-1} @ R; it leaves holding the activated gates i, f, c~, o."""
    cdef Py_ssize_t n, j, u = r.u, ld = r.t * r.u, g_ld = r.t * r.gw
    cdef int act = r.act, ract = r.ract
    cdef floating* gr
    cdef floating* cr
    cdef floating* hr
    cdef const floating* cp
    for n in range(rows):
        gr = g + n * g_ld
        cr = c + n * ld
        hr = h + n * ld
        if floating is float:
            if act == ACT_TANH and ract == ACT_SIGMOID:
                pynn_rnn_lstm_fwd_f(gr, bias, c_prev + n * ld if c_prev != NULL else NULL, cr,
                                    hr, u)
                continue
        for j in range(4 * u):
            gr[j] = gr[j] + bias[j]
        _act_vec(gr, 2 * u, ract, a2)
        _act_vec(gr + 2 * u, u, act, a1)
        _act_vec(gr + 3 * u, u, ract, a2)
        if c_prev != NULL:
            cp = c_prev + n * ld
            for j in range(u):
                cr[j] = gr[u + j] * cp[j] + gr[j] * gr[2 * u + j]
        else:
            for j in range(u):
                cr[j] = gr[j] * gr[2 * u + j]
        for j in range(u):
            hr[j] = cr[j]
        _act_vec(hr, u, act, a1)
        for j in range(u):
            hr[j] = gr[3 * u + j] * hr[j]


cdef void _lstm_step_backward(const Rnn* r, Py_ssize_t rows, const floating* dy,
                              const floating* g, const floating* c_prev, const floating* c,
                              floating* dh_next, floating* dc_next, floating* dz, floating a1,
                              floating a2) noexcept nogil:
    """dz = pre-activation gradients of the four gates; dc_next becomes dc_{t-1}.

    The dz row doubles as scratch: its o slot first holds act(c_t), its c~ slot the
    gradient through act(c_t), each overwritten by the final value of the same element."""
    cdef Py_ssize_t n, j, u = r.u, ld = r.t * r.u, g_ld = r.t * r.gw
    cdef int act = r.act, ract = r.ract
    cdef const floating* gr
    cdef const floating* cr
    cdef floating* zr
    cdef floating* dhr
    cdef floating* dcr
    cdef floating dc, cpv
    for n in range(rows):
        gr = g + n * g_ld
        cr = c + n * ld
        zr = dz + n * g_ld
        dhr = dh_next + n * u
        dcr = dc_next + n * u
        _add_dy(dhr, dy + n * r.dy_ld if dy != NULL else NULL, u)
        if floating is float:
            if act == ACT_TANH and ract == ACT_SIGMOID:
                pynn_rnn_lstm_bwd_f(gr, c_prev + n * ld if c_prev != NULL else NULL, cr, dhr,
                                    dcr, zr, u)
                continue
        for j in range(u):
            zr[3 * u + j] = cr[j]
        _act_vec(zr + 3 * u, u, act, a1)
        for j in range(u):
            zr[2 * u + j] = dhr[j] * gr[3 * u + j]
        _act_grad_vec(zr + 3 * u, zr + 2 * u, u, act, a1)
        for j in range(u):
            cpv = c_prev[n * ld + j] if c_prev != NULL else 0
            dc = dcr[j] + zr[2 * u + j]
            zr[j] = dc * gr[2 * u + j]
            zr[u + j] = dc * cpv
            zr[2 * u + j] = dc * gr[j]
            zr[3 * u + j] = dhr[j] * zr[3 * u + j]
            dcr[j] = dc * gr[u + j]
        _act_grad_vec(gr, zr, 2 * u, ract, a2)
        _act_grad_vec(gr + 2 * u, zr + 2 * u, u, act, a1)
        _act_grad_vec(gr + 3 * u, zr + 3 * u, u, ract, a2)


def lstm_forward(x, kernel, recurrent_kernel, bias, activation="tanh",
                 recurrent_activation="sigmoid", return_sequences=False, go_backwards=False):
    """Keras's LSTM (gates i, f, c, o) -> (y, cache).

    y is h_seq (N, T, U) with return_sequences, else the last output (N, U);
    cache = (h_seq, gates (N, T, 4U) activated, at the input's time index, c_seq (N, T, U)).
    """
    return _recurrent_forward(LSTM, *operands.lstm_forward(
        HOST, x, kernel, recurrent_kernel, bias, activation, recurrent_activation,
        return_sequences, go_backwards))


def lstm_backward(dy, x, kernel, recurrent_kernel, cache, activation="tanh",
                  recurrent_activation="sigmoid", return_sequences=False, go_backwards=False,
                  need_input_grad=True):
    """-> (dx or None, dkernel, drecurrent_kernel, dbias (4U,))."""
    return _recurrent_backward(LSTM, *operands.lstm_backward(
        HOST, dy, x, kernel, recurrent_kernel, cache, activation, recurrent_activation,
        return_sequences, go_backwards, need_input_grad))


# -- GRU ------------------------------------------------------------------------------------
# reset_after=True: rh = h_{t-1} @ R_h + b_rh is kept (it multiplies r), and one small GEMM
# per step gives h_{t-1} @ R for all three gates. reset_after=False: r applies before the
# product, so a step is GEMM (z, r) -> pass -> GEMM ((r*h) @ R_h) -> pass, and the cache keeps
# rh = r * h_{t-1}, the left operand of d(R_h).

cdef void _gru_step_forward_after(const Rnn* r, Py_ssize_t rows, floating* g,
                                  const floating* srec, const floating* b_in,
                                  const floating* b_rec, const floating* h_prev, floating* rh,
                                  floating* h, floating a1, floating a2) noexcept nogil:
    """g holds x_t @ W and leaves holding z, r, hh; srec = h_{t-1} @ R (NULL at step 0)."""
    cdef Py_ssize_t n, j, u = r.u, ld = r.t * r.u, g_ld = r.t * r.gw
    cdef int act = r.act, ract = r.ract
    cdef floating* gr
    cdef floating* rr
    cdef floating* hr
    cdef floating rec
    for n in range(rows):
        gr = g + n * g_ld
        rr = rh + n * ld
        hr = h + n * ld
        if floating is float:
            if act == ACT_TANH and ract == ACT_SIGMOID:
                pynn_rnn_gru_fwd_f(gr, b_in, b_rec, srec + n * 3 * u if srec != NULL else NULL,
                                   h_prev + n * ld if h_prev != NULL else NULL, rr, hr, u)
                continue
        for j in range(2 * u):
            gr[j] = gr[j] + b_in[j] + _at(srec, n * 3 * u + j) + b_rec[j]
        _act_vec(gr, 2 * u, ract, a2)
        for j in range(u):
            rec = _at(srec, n * 3 * u + 2 * u + j) + b_rec[2 * u + j]
            rr[j] = rec
            gr[2 * u + j] = gr[2 * u + j] + b_in[2 * u + j] + gr[u + j] * rec
        _act_vec(gr + 2 * u, u, act, a1)
        for j in range(u):
            hr[j] = gr[j] * _at(h_prev, n * ld + j) + (1 - gr[j]) * gr[2 * u + j]


cdef void _gru_step_forward_gates(const Rnn* r, Py_ssize_t rows, floating* g,
                                  const floating* srec, const floating* b_in,
                                  const floating* h_prev, floating* rh,
                                  floating a2) noexcept nogil:
    """reset_after=False, first pass: z, r into g and rh = r * h_{t-1}."""
    cdef Py_ssize_t n, j, u = r.u, ld = r.t * r.u, g_ld = r.t * r.gw
    cdef int ract = r.ract
    cdef floating* gr
    for n in range(rows):
        gr = g + n * g_ld
        for j in range(2 * u):
            gr[j] = gr[j] + b_in[j] + _at(srec, n * 3 * u + j)
        _act_vec(gr, 2 * u, ract, a2)
        for j in range(u):
            rh[n * ld + j] = gr[u + j] * _at(h_prev, n * ld + j)


cdef void _gru_step_forward_out(const Rnn* r, Py_ssize_t rows, floating* g,
                                const floating* srec, const floating* b_in,
                                const floating* h_prev, floating* h, floating a1) noexcept nogil:
    """reset_after=False, second pass: srec[:, 2U:] = rh @ R_h (srec NULL at step 0)."""
    cdef Py_ssize_t n, j, u = r.u, ld = r.t * r.u, g_ld = r.t * r.gw
    cdef int act = r.act
    cdef floating* gr
    for n in range(rows):
        gr = g + n * g_ld
        for j in range(u):
            gr[2 * u + j] = gr[2 * u + j] + b_in[2 * u + j] + _at(srec, n * 3 * u + 2 * u + j)
        _act_vec(gr + 2 * u, u, act, a1)
        for j in range(u):
            h[n * ld + j] = gr[j] * _at(h_prev, n * ld + j) + (1 - gr[j]) * gr[2 * u + j]


cdef void _gru_step_backward_after(const Rnn* r, Py_ssize_t rows, const floating* dy,
                                   const floating* g, const floating* rh,
                                   const floating* h_prev, floating* dh_next, floating* dzi,
                                   floating* dzr, floating a1, floating a2) noexcept nogil:
    """dzi: gradients of the input-side pre-activations; dzr: of the recurrent-side ones
    (they differ in the h gate, scaled by r); dh_next becomes the direct term dh * z."""
    cdef Py_ssize_t n, j, u = r.u, ld = r.t * r.u, g_ld = r.t * r.gw
    cdef int act = r.act, ract = r.ract
    cdef const floating* gr
    cdef floating* zi
    cdef floating* zr
    cdef floating* dhr
    for n in range(rows):
        gr = g + n * g_ld
        zi = dzi + n * g_ld
        zr = dzr + n * g_ld
        dhr = dh_next + n * u
        _add_dy(dhr, dy + n * r.dy_ld if dy != NULL else NULL, u)
        if floating is float:
            if act == ACT_TANH and ract == ACT_SIGMOID:
                pynn_rnn_gru_bwd_f(gr, rh + n * ld, h_prev + n * ld if h_prev != NULL else NULL,
                                   dhr, zi, zr, u)
                continue
        for j in range(u):
            zi[j] = dhr[j] * (_at(h_prev, n * ld + j) - gr[2 * u + j])
            zi[2 * u + j] = dhr[j] * (1 - gr[j])
        _act_grad_vec(gr + 2 * u, zi + 2 * u, u, act, a1)
        for j in range(u):
            zi[u + j] = zi[2 * u + j] * rh[n * ld + j]
        _act_grad_vec(gr, zi, 2 * u, ract, a2)
        for j in range(u):
            zr[j] = zi[j]
            zr[u + j] = zi[u + j]
            zr[2 * u + j] = zi[2 * u + j] * gr[u + j]
            dhr[j] = dhr[j] * gr[j]


cdef void _gru_step_backward_out(const Rnn* r, Py_ssize_t rows, const floating* dy,
                                 const floating* g, const floating* h_prev, floating* dh_next,
                                 floating* dz, floating a1, floating a2) noexcept nogil:
    """reset_after=False, first pass: the z and h gate gradients; dh_next = dh * z."""
    cdef Py_ssize_t n, j, u = r.u, ld = r.t * r.u, g_ld = r.t * r.gw
    cdef int act = r.act, ract = r.ract
    cdef const floating* gr
    cdef floating* zr
    cdef floating* dhr
    for n in range(rows):
        gr = g + n * g_ld
        zr = dz + n * g_ld
        dhr = dh_next + n * u
        _add_dy(dhr, dy + n * r.dy_ld if dy != NULL else NULL, u)
        for j in range(u):
            zr[j] = dhr[j] * (_at(h_prev, n * ld + j) - gr[2 * u + j])
            zr[2 * u + j] = dhr[j] * (1 - gr[j])
            dhr[j] = dhr[j] * gr[j]
        _act_grad_vec(gr, zr, u, ract, a2)
        _act_grad_vec(gr + 2 * u, zr + 2 * u, u, act, a1)


cdef void _gru_step_backward_gates(const Rnn* r, Py_ssize_t rows, const floating* g,
                                   const floating* drh, const floating* h_prev,
                                   floating* dh_next, floating* dz, floating a2) noexcept nogil:
    """reset_after=False, second pass: drh = d(r * h_{t-1}) gives the r gate gradient and
    the r-scaled part of dh_{t-1} (drh and h_prev are NULL at step 0)."""
    cdef Py_ssize_t n, j, u = r.u, ld = r.t * r.u, g_ld = r.t * r.gw
    cdef const floating* gr
    cdef floating* zr
    cdef floating d
    for n in range(rows):
        gr = g + n * g_ld
        zr = dz + n * g_ld
        for j in range(u):
            d = _at(drh, n * u + j)
            zr[u + j] = d * _at(h_prev, n * ld + j)
            dh_next[n * u + j] = dh_next[n * u + j] + d * gr[u + j]
        _act_grad_vec(gr + u, zr + u, u, r.ract, a2)


def gru_forward(x, kernel, recurrent_kernel, bias, activation="tanh",
                recurrent_activation="sigmoid", reset_after=True, return_sequences=False,
                go_backwards=False):
    """Keras's GRU (gates z, r, h) -> (y, cache).

    bias is (2, 3U) with reset_after (input row, recurrent row), else (3U,), or None.
    y is h_seq (N, T, U) with return_sequences, else the last output (N, U);
    cache = (h_seq, gates (N, T, 3U) activated z, r, hh at the input's time index,
    rh (N, T, U): h_{t-1} @ R_h + b_rh with reset_after, else r * h_{t-1}).
    """
    c, x, kernel, recurrent_kernel, bias, flags = operands.gru_forward(
        HOST, x, kernel, recurrent_kernel, bias, activation, recurrent_activation, reset_after,
        return_sequences, go_backwards)
    return _recurrent_forward(GRU_AFTER if flags.reset_after else GRU_BEFORE, c, x, kernel,
                              recurrent_kernel, bias, flags)


def gru_backward(dy, x, kernel, recurrent_kernel, cache, activation="tanh",
                 recurrent_activation="sigmoid", reset_after=True, return_sequences=False,
                 go_backwards=False, need_input_grad=True):
    """-> (dx or None, dkernel, drecurrent_kernel, dbias shaped like the bias)."""
    c, dy, x, kernel, recurrent_kernel, cache, flags = operands.gru_backward(
        HOST, dy, x, kernel, recurrent_kernel, cache, activation, recurrent_activation,
        reset_after, return_sequences, go_backwards, need_input_grad)
    return _recurrent_backward(GRU_AFTER if flags.reset_after else GRU_BEFORE, c, dy, x,
                               kernel, recurrent_kernel, cache, flags)
