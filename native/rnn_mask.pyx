"""General recurrence kernels: the mask, the initial state, recurrent dropout and the final
state that Keras's recurrent layers offer, for the SimpleRNN, LSTM and GRU cells.

Legend: N batch, T time steps, U units, k gates (1 SimpleRNN, 4 LSTM i f c o, 3 GRU z r h),
G = k*U gate columns. xw (N, T, G) is the input projection x @ kernel + input bias, made
by the layer with one dense op over all N*T rows (the input side has no recurrence).

Why a second family beside native/rnn.pyx: the rnn ops are the tuned fast path of the plain
case (zero initial state, no mask, no dropout) and their cell loops are being optimized on
their own; everything else runs here, on one short loop per row, so neither disturbs the
other. The layers pick the fast path whenever it computes the same thing.

Keras's rules (keras/src/backend/*/rnn.py): at a masked step the states keep their previous
values and the output repeats the previous output (zeros before the first unmasked step);
with zero_output_for_mask (Bidirectional with return_sequences) a masked step outputs zeros.
Recurrent dropout multiplies h_{t-1} by a per-gate mask fixed over time (Keras's
implementation 1): column block g of the recurrent product reads h_{t-1} * rdrop[:, g].

Parallel axis: the batch (blocks of up to BLOCK rows on pynn's worker team, sized so every
thread gets one); a block runs its whole sequence on one thread, since a row's steps depend
on each other and different rows never do. The recurrent kernel (and its transpose, for backward) is
packed once per call into column panels per gate block, the layout native/rnn.pyx's fast
path uses (its _pack_panels is reused): per step each panel (at most U x NC values) stays in
L1 while all the block's rows pass over it. Unpacked, its rows sit a power of two apart and
share a few L1 sets, and 8-row blocks re-streamed the whole kernel from L2 per 8 rows: that
made the masked path ~3x slower than the plain one. Every sum runs in a fixed order on one
thread, so results do not depend on the thread count. The weight
gradients are sums over all rows: they come after the loop from one product per gate block
(NumPy's BLAS on the stored operands).
"""
import numpy as np

from libc.string cimport memcpy, memset
from _activation cimport act_value, act_grad, floating, ACT_SIGMOID, ACT_TANH
from _openmp cimport omp_get_max_threads

from pynn.backend.operands import rnn_mask as operands
from pynn.backend.operands.common import HOST
from pynn.backend._scratch import aligned_empty, give as _give_scratch, take as _take_scratch
# The fast path's packing (native/rnn.pyx): the same panel layout serves both families.
from pynn._native.rnn import _pack_panels

cdef enum:
    PARALLEL_MIN = 32768  # values below which a sequence pass stays on the calling thread
    # At most this many rows step through time together on one thread: each packed panel
    # loaded per step serves all of them from L1 (native/rnn.pyx's CHUNK).
    BLOCK = 32
    # Rows of B per L1 block in the panel products (native/rnn.pyx's KC).
    KC = 256
    SIMPLE_RNN = 0
    LSTM = 1
    GRU_AFTER = 2
    GRU_BEFORE = 3


cdef struct Rec:
    int cell, act, ract, ret_seq, back, zero_out, has_rd
    double alpha, ralpha
    Py_ssize_t t, u, g
    void* xw        # IN  (N, T, G)        forward
    void* rk        # IN  (U, G) (GRU_BEFORE's h-gate product reads it unpacked)
    void* rkp       # IN  k gate blocks R[:, g*U:(g+1)*U] packed (forward) or transposed
                    #     (backward) by rnn._pack_panels, U*U values each
    void* rk_t      # IN  (G, U) the transpose (backward, GRU_BEFORE)
    void* rb        # IN  (G,) or NULL
    void* hs        # OUT (N, T+1, U)      forward; IN backward
    void* cs        # OUT (N, T+1, U)      LSTM
    void* gates     # OUT (N, T, G)
    void* aux       # OUT (N, T, U)        gru: h @ R_h + b_rh
    void* mask      # IN  (N, T)
    void* rdrop     # IN  (N, G)
    void* y         # OUT (N, T, U) or (N, U)
    void* dy        # IN  backward
    void* dh        # IN/OUT (N, U): dh_last in, dh0 out
    void* dc        # IN/OUT (N, U)
    void* dxw       # OUT (N, T, G), at the input's time index
    void* dzr       # OUT (N, T, G), the recurrent side, processing order
    void* tmp       # scratch (N, U)


include "_microkernel.pxi"   # pynn._config.set_kernel reaches this module too
include "_team.pxi"

# The register-blocked microkernel of native/_microkernel.h (shared with conv and rnn):
# c[i, :n] (+)= sum_k a[i*sai + k*sak] * b[k*ldb + :n], for n <= NC columns per call.


# float32 sigmoid and tanh without libm calls, so the cell loops vectorize (Keras's default
# activations; native/_gate_act.h).
cdef extern from "_gate_act.h":
    float pynn_gate_tanhf(float x) noexcept nogil
    void pynn_gate_lstm_fwd_f(float* z, const float* cp, float* cn, float* h,
                              Py_ssize_t u) noexcept nogil
    void pynn_gate_lstm_bwd_f(const float* z, const float* cp, const float* cn, float* dh,
                              float* dc, float* dz, float* dx, Py_ssize_t u) noexcept nogil
    void pynn_gate_gru_fwd_f(float* z, const float* rh, const float* hp, float* h,
                             Py_ssize_t u) noexcept nogil
    void pynn_gate_gru_bwd_f(const float* z, const float* rh, const float* hp, float* dh,
                             float* dz, float* dx, Py_ssize_t u) noexcept nogil
    void pynn_gate_tanh_row_f(float* v, Py_ssize_t u) noexcept nogil


cdef void _gate_mm(Py_ssize_t rows, Py_ssize_t u, const floating* a, Py_ssize_t lda,
                   const floating* panels, floating* c, Py_ssize_t ldc,
                   int accum) noexcept nogil:
    """c[i, :u] (+)= a[i*lda : i*lda + u] @ B for one gate block B (u x u), packed by
    rnn._pack_panels: panel by panel, in blocks of KC rows of B (native/rnn.pyx's _rec_mm)."""
    cdef Py_ssize_t nc = PYNN_NC_F if floating is float else PYNN_NC_D, p0, k0 = 0, kn, w
    while k0 < u:
        kn = min(KC, u - k0)
        p0 = 0
        while p0 < u:
            w = min(nc, u - p0)
            if floating is float:
                pynn_rows_gemm_f(rows, w, kn, a + k0, lda, 1, panels + p0 * u + k0 * w, w,
                                 c + p0, ldc, accum or k0 > 0)
            else:
                pynn_rows_gemm_d(rows, w, kn, a + k0, lda, 1, panels + p0 * u + k0 * w, w,
                                 c + p0, ldc, accum or k0 > 0)
            p0 = p0 + nc
        k0 = k0 + kn


cdef inline Py_ssize_t _tx(Py_ssize_t s, Py_ssize_t t, int back) noexcept nogil:
    return t - 1 - s if back else s


cdef void _block_forward(const Rec* p, Py_ssize_t r0, Py_ssize_t nb,
                         floating* dummy) noexcept nogil:
    """Rows r0 .. r0+nb-1 through the whole sequence, step by step together: each packed
    panel of the recurrent kernel is loaded once per step for all of them (_gate_mm, the
    microkernel), then each row's cell runs on its own."""
    cdef Py_ssize_t t = p.t, u = p.u, g = p.g, s, tx, j, kk, gate, r, n, k = g // u
    cdef int cell = p.cell, act = p.act, ract = p.ract, live
    # float32 with tanh / sigmoid: the whole-row C cells of _gate_act.h (they vectorize).
    cdef bint fast = floating is float and act == ACT_TANH and ract == ACT_SIGMOID
    cdef int seen[BLOCK]
    cdef floating alpha = p.alpha, ralpha = p.ralpha, a, i_, f_, cc, o_, hh, m
    cdef const floating* xw = <const floating*>p.xw
    cdef const floating* rk = <const floating*>p.rk
    cdef const floating* rkp = <const floating*>p.rkp
    cdef const floating* rb = <const floating*>p.rb
    cdef const floating* mask = <const floating*>p.mask
    cdef const floating* rd = <const floating*>p.rdrop
    cdef floating* hs = <floating*>p.hs
    cdef floating* cs = <floating*>p.cs
    cdef floating* gt = <floating*>p.gates
    cdef floating* aux = <floating*>p.aux
    cdef floating* y = <floating*>p.y
    cdef floating* z
    cdef floating* rh
    cdef floating* hp
    cdef floating* hn
    cdef floating* target
    cdef floating* tmp = <floating*>p.tmp
    cdef const floating* hd
    cdef Py_ssize_t hd_ld
    cdef const floating* row
    for r in range(nb):
        seen[r] = 0
    for s in range(t):
        tx = _tx(s, t, p.back)
        for r in range(nb):
            n = r0 + r
            z = gt + (n * t + s) * g
            for j in range(g):
                z[j] = xw[(n * t + tx) * g + j]
                if rb != NULL and (cell != GRU_AFTER or j < 2 * u):
                    z[j] = z[j] + rb[j]
            if cell == GRU_AFTER:
                rh = aux + (n * t + s) * u
                for j in range(u):
                    rh[j] = rb[2 * u + j] if rb != NULL else 0
        # The recurrent product for the block's rows at once, gate block by gate block:
        # h_{t-1} @ R_g, or (h_{t-1} * rdrop_g) @ R_g with recurrent dropout.
        for gate in range(k):
            if cell == GRU_BEFORE and gate == 2:
                continue  # waits for r (below)
            if p.has_rd:
                for r in range(nb):
                    n = r0 + r
                    for kk in range(u):
                        tmp[n * u + kk] = (hs[(n * (t + 1) + s) * u + kk]
                                           * rd[n * g + gate * u + kk])
                hd, hd_ld = tmp + r0 * u, u
            else:
                hd, hd_ld = hs + (r0 * (t + 1) + s) * u, (t + 1) * u
            if cell == GRU_AFTER and gate == 2:
                _gate_mm(nb, u, hd, hd_ld, rkp + 2 * u * u, aux + (r0 * t + s) * u, t * u, 1)
            else:
                _gate_mm(nb, u, hd, hd_ld, rkp + gate * u * u,
                         gt + (r0 * t + s) * g + gate * u, t * g, 1)
        for r in range(nb):
            n = r0 + r
            z = gt + (n * t + s) * g
            hp = hs + (n * (t + 1) + s) * u
            hn = hp + u
            rh = aux + (n * t + s) * u
            if cell == SIMPLE_RNN:
                if floating is float and act == ACT_TANH:
                    pynn_gate_tanh_row_f(z, u)
                else:
                    for j in range(u):
                        z[j] = act_value(z[j], act, alpha)
                memcpy(hn, z, u * sizeof(floating))
            elif cell == LSTM and fast:
                pynn_gate_lstm_fwd_f(<float*>z, <float*>cs + (n * (t + 1) + s) * u,
                                     <float*>cs + (n * (t + 1) + s + 1) * u, <float*>hn, u)
            elif cell == GRU_AFTER and fast:
                pynn_gate_gru_fwd_f(<float*>z, <float*>rh, <float*>hp, <float*>hn, u)
            elif cell == LSTM:
                for j in range(u):
                    i_ = act_value(z[j], ract, ralpha)
                    f_ = act_value(z[u + j], ract, ralpha)
                    cc = act_value(z[2 * u + j], act, alpha)
                    o_ = act_value(z[3 * u + j], ract, ralpha)
                    z[j], z[u + j], z[2 * u + j], z[3 * u + j] = i_, f_, cc, o_
                    cs[(n * (t + 1) + s + 1) * u + j] = (f_ * cs[(n * (t + 1) + s) * u + j]
                                                         + i_ * cc)
                    hn[j] = o_ * act_value(cs[(n * (t + 1) + s + 1) * u + j], act, alpha)
            else:
                for j in range(2 * u):
                    z[j] = act_value(z[j], ract, ralpha)
                if cell == GRU_BEFORE:
                    for kk in range(u):
                        a = z[u + kk] * hp[kk] * rd[n * g + 2 * u + kk]
                        row = rk + kk * g + 2 * u
                        for j in range(u):
                            z[2 * u + j] = z[2 * u + j] + a * row[j]
                for j in range(u):
                    if cell == GRU_AFTER:
                        hh = act_value(z[2 * u + j] + z[u + j] * rh[j], act, alpha)
                    else:
                        hh = act_value(z[2 * u + j], act, alpha)
                    z[2 * u + j] = hh
                    hn[j] = z[j] * hp[j] + (1 - z[j]) * hh
            m = mask[n * t + tx]
            if m == 0:  # Keras: a masked step keeps every state
                memcpy(hn, hp, u * sizeof(floating))
                if cell == LSTM:
                    memcpy(cs + (n * (t + 1) + s + 1) * u, cs + (n * (t + 1) + s) * u,
                           u * sizeof(floating))
            else:
                seen[r] = 1
            live = (m != 0) if p.zero_out else seen[r]
            if p.ret_seq or s == t - 1:
                target = y + (n * t + s) * u if p.ret_seq else y + n * u
                for j in range(u):
                    target[j] = hn[j] if live else 0


cdef void _block_backward(const Rec* p, Py_ssize_t r0, Py_ssize_t nb,
                          floating* dummy) noexcept nogil:
    """The forward's rows, back through time together: each row's cell gradient, then
    dh_{t-1} += (dZ_g @ R_g^T) * rdrop_g for all of them, each packed panel of the
    transposed gate blocks read once per step."""
    cdef Py_ssize_t t = p.t, u = p.u, g = p.g, s, tx, j, kk, gate, r, n, k = g // u
    cdef int cell = p.cell, act = p.act, ract = p.ract, live
    cdef bint fast = floating is float and act == ACT_TANH and ract == ACT_SIGMOID
    cdef Py_ssize_t first[BLOCK]
    cdef floating alpha = p.alpha, ralpha = p.ralpha, a, yc, dcn, hh, zz, dhh
    cdef const floating* rt = <const floating*>p.rk_t
    cdef const floating* rkp = <const floating*>p.rkp
    cdef const floating* mask = <const floating*>p.mask
    cdef const floating* rd = <const floating*>p.rdrop
    cdef const floating* hs = <const floating*>p.hs
    cdef const floating* cs = <const floating*>p.cs
    cdef const floating* gt = <const floating*>p.gates
    cdef const floating* aux = <const floating*>p.aux
    cdef const floating* dy = <const floating*>p.dy
    cdef floating* dh
    cdef floating* dc
    cdef floating* q
    cdef floating* dzr
    cdef floating* dx
    cdef const floating* z
    cdef const floating* hp
    cdef const floating* row
    for r in range(nb):
        n = r0 + r
        first[r] = t
        for s in range(t):
            if mask[n * t + _tx(s, t, p.back)] != 0:
                first[r] = s
                break
    for s in range(t - 1, -1, -1):
        tx = _tx(s, t, p.back)
        for r in range(nb):
            n = r0 + r
            dh = <floating*>p.dh + n * u
            dc = <floating*>p.dc + n * u
            q = <floating*>p.tmp + n * u
            live = (mask[n * t + tx] != 0) if p.zero_out else s >= first[r]
            if live and (p.ret_seq or s == t - 1):
                for j in range(u):
                    dh[j] = dh[j] + (dy[(n * t + s) * u + j] if p.ret_seq else dy[n * u + j])
            dzr = <floating*>p.dzr + (n * t + s) * g
            dx = <floating*>p.dxw + (n * t + tx) * g
            if mask[n * t + tx] == 0:  # the states passed through: so does their gradient
                memset(dzr, 0, g * sizeof(floating))
                memset(dx, 0, g * sizeof(floating))
                continue
            z = gt + (n * t + s) * g
            hp = hs + (n * (t + 1) + s) * u
            if fast and cell == LSTM:
                pynn_gate_lstm_bwd_f(<float*>z, <float*>cs + (n * (t + 1) + s) * u,
                                     <float*>cs + (n * (t + 1) + s + 1) * u, <float*>dh,
                                     <float*>dc, <float*>dzr, <float*>dx if dx != dzr else NULL,
                                     u)
                continue
            if fast and cell == GRU_AFTER:
                pynn_gate_gru_bwd_f(<float*>z, <float*>aux + (n * t + s) * u, <float*>hp,
                                    <float*>dh, <float*>dzr, <float*>dx, u)
                continue
            if cell == SIMPLE_RNN:
                for j in range(u):
                    dzr[j] = act_grad(dh[j], z[j], z[j], act, alpha)
                    dh[j] = 0
            elif cell == LSTM:
                for j in range(u):
                    if floating is float and act == ACT_TANH:
                        yc = pynn_gate_tanhf(cs[(n * (t + 1) + s + 1) * u + j])
                    else:
                        yc = act_value(cs[(n * (t + 1) + s + 1) * u + j], act, alpha)
                    dcn = dc[j] + act_grad(dh[j] * z[3 * u + j],
                                           cs[(n * (t + 1) + s + 1) * u + j], yc, act, alpha)
                    dzr[3 * u + j] = act_grad(dh[j] * yc, 0, z[3 * u + j], ract, ralpha)
                    dzr[j] = act_grad(dcn * z[2 * u + j], 0, z[j], ract, ralpha)
                    dzr[u + j] = act_grad(dcn * cs[(n * (t + 1) + s) * u + j], 0, z[u + j],
                                          ract, ralpha)
                    dzr[2 * u + j] = act_grad(dcn * z[j], 0, z[2 * u + j], act, alpha)
                    dc[j] = dcn * z[u + j]
                    dh[j] = 0
            else:
                for j in range(u):
                    zz = z[j]
                    hh = z[2 * u + j]
                    dhh = act_grad(dh[j] * (1 - zz), 0, hh, act, alpha)
                    dzr[j] = act_grad(dh[j] * (hp[j] - hh), 0, zz, ract, ralpha)
                    dx[2 * u + j] = dhh
                    if cell == GRU_AFTER:
                        dzr[u + j] = act_grad(dhh * aux[(n * t + s) * u + j], 0, z[u + j], ract,
                                              ralpha)
                        dzr[2 * u + j] = dhh * z[u + j]
                    else:
                        dzr[2 * u + j] = dhh
                    dh[j] = dh[j] * zz
                if cell == GRU_BEFORE:
                    # hh = act(x_h + (r * h_{t-1} * rdrop_h) @ R_h): r's gradient needs
                    # dhh @ R_h^T.
                    for kk in range(u):
                        q[kk] = 0
                    for j in range(u):
                        a = dzr[2 * u + j]
                        row = rt + (2 * u + j) * u
                        for kk in range(u):
                            q[kk] = q[kk] + a * row[kk]
                    for kk in range(u):
                        dzr[u + kk] = act_grad(q[kk] * hp[kk] * rd[n * g + 2 * u + kk], 0,
                                               z[u + kk], ract, ralpha)
                        dh[kk] = dh[kk] + q[kk] * z[u + kk] * rd[n * g + 2 * u + kk]
            for j in range(g):
                if not (cell >= GRU_AFTER and j >= 2 * u):
                    dx[j] = dzr[j]
        # dh_{t-1} += sum over gate blocks of (dZ_g @ R_g^T) * rdrop_g, for the block's rows
        # at once (masked rows have dZ = 0); without dropout the products add up in dh.
        for gate in range(k):
            if cell == GRU_BEFORE and gate == 2:
                continue
            if not p.has_rd:
                _gate_mm(nb, u, <floating*>p.dzr + (r0 * t + s) * g + gate * u, t * g,
                         rkp + gate * u * u, <floating*>p.dh + r0 * u, u, 1)
                continue
            _gate_mm(nb, u, <floating*>p.dzr + (r0 * t + s) * g + gate * u, t * g,
                     rkp + gate * u * u, <floating*>p.tmp + r0 * u, u, 0)
            for r in range(nb):
                n = r0 + r
                q = <floating*>p.tmp + n * u
                dh = <floating*>p.dh + n * u
                for kk in range(u):
                    dh[kk] = dh[kk] + q[kk] * rd[n * g + gate * u + kk]


ctypedef struct _RunJob:
    bint is_double, grad
    const Rec* p
    Py_ssize_t rows, size


cdef inline void _run_blocks(const _RunJob* j, floating* dummy, long begin,
                             long end) noexcept nogil:
    cdef long b
    cdef Py_ssize_t r0
    for b in range(begin, end):
        r0 = b * j.size
        if j.grad:
            _block_backward(j.p, r0, min(j.size, j.rows - r0), dummy)
        else:
            _block_forward(j.p, r0, min(j.size, j.rows - r0), dummy)


cdef void _run_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _RunJob* j = <_RunJob*>ctx
    cdef float f
    cdef double d
    if j.is_double:
        _run_blocks(j, &d, begin, end)
    else:
        _run_blocks(j, &f, begin, end)


cdef void _run(const Rec* p, Py_ssize_t rows, bint grad, floating* dummy) noexcept nogil:
    """Blocks of up to BLOCK rows, no more than the rows per thread, so every thread has
    one (64 rows on 2 threads: 2 blocks of 32), claimed one at a time on pynn's worker
    team."""
    cdef int nth = max(1, omp_get_max_threads())
    cdef _RunJob job
    job.is_double, job.grad, job.p, job.rows = floating is double, grad, p, rows
    job.size = min(<Py_ssize_t>BLOCK, (rows + nth - 1) // nth)
    pynn_team_for((rows + job.size - 1) // job.size, 1, nth, _run_job, &job)


cdef inline void* _ptr(a):
    """The data pointer of a C-contiguous NumPy array (None -> NULL)."""
    if a is None or a.size == 0:
        return NULL
    return <void*><size_t>a.ctypes.data


def _packed_gates(rk, Py_ssize_t k, bint trans):
    """The k gate blocks of rk (U, k*U), each packed by _pack_panels (transposed for
    backward), one after the other."""
    u = rk.shape[0]
    blocks = [_pack_panels(rk, trans, gate * u, (gate + 1) * u) for gate in range(k)]
    return np.concatenate(blocks, out=aligned_empty(sum(b.size for b in blocks), rk.dtype))


cdef Rec _rec(c, flags, t, rk, rb, mask, rdrop):
    cdef Rec r
    memset(&r, 0, sizeof(Rec))
    r.cell, r.act, r.ract = c.code, c.act, c.ract
    r.alpha, r.ralpha = c.alpha, c.ralpha
    r.ret_seq, r.back = flags.return_sequences, flags.go_backwards
    r.zero_out = flags.zero_output_for_mask
    r.t, r.u, r.g = t, c.units, c.gates * c.units
    r.rk, r.rb, r.mask, r.rdrop = _ptr(rk), _ptr(rb), _ptr(mask), _ptr(rdrop)
    r.has_rd = not bool(np.all(rdrop == 1))
    return r


cdef void _dispatch(Rec* r, Py_ssize_t rows, bint grad, bint single):
    cdef float f
    cdef double d
    if rows == 0 or r.u == 0:
        return
    if single:
        with nogil:
            _run(r, rows, grad, &f)
    else:
        with nogil:
            _run(r, rows, grad, &d)


def recurrence_forward(xw, recurrent_kernel, recurrent_bias, h0, c0=None, mask=None,
                       recurrent_dropout=None, cell="lstm", activation="tanh",
                       recurrent_activation="sigmoid", return_sequences=False,
                       go_backwards=False, zero_output_for_mask=False):
    """One cell over the sequence from the state (h0, c0) -> (y, h_last, c_last or None,
    cache); y (N, T, U) in processing order with return_sequences, else the last output
    (N, U). mask (N, T) holds 1 (step taken) or 0 (skipped), None for all ones;
    recurrent_dropout (N, G) the fixed multipliers of h_{t-1}, None for ones."""
    c, xw, rk, rb, h0, c0, mask, rdrop, flags = operands.recurrence_forward(
        HOST, xw, recurrent_kernel, recurrent_bias, h0, c0, mask, recurrent_dropout, cell,
        activation, recurrent_activation, return_sequences, go_backwards,
        zero_output_for_mask)
    n, t, g = xw.shape
    u = c.units
    dt = xw.dtype
    mask = np.ones((n, t), dt) if mask is None else mask
    rdrop = np.ones((n, g), dt) if rdrop is None else rdrop
    hs = np.empty((n, t + 1, u), dt)
    hs[:, 0] = h0
    cs = hs
    if c0 is not None:
        cs = np.empty((n, t + 1, u), dt)
        cs[:, 0] = c0
    gates = np.empty((n, t, g), dt)
    aux = np.empty((n, t, u), dt) if cell == "gru" else gates
    y = np.empty((n, t, u) if flags.return_sequences else (n, u), dt)
    tmp = np.empty((n, u), dt)
    rkp = _packed_gates(rk, c.gates, False)
    cdef Rec r = _rec(c, flags, t, rk, rb, mask, rdrop)
    r.rkp = _ptr(rkp)
    r.tmp = _ptr(tmp)
    r.xw, r.hs, r.cs, r.gates, r.aux, r.y = (_ptr(xw), _ptr(hs), _ptr(cs), _ptr(gates),
                                             _ptr(aux), _ptr(y))
    _dispatch(&r, n, False, dt == np.float32)
    return (y, hs[:, t].copy(), cs[:, t].copy() if c0 is not None else None,
            (hs, cs, gates, aux, mask, rdrop))


def recurrence_backward(dy, dh_last, dc_last, recurrent_kernel, cache, cell="lstm",
                        activation="tanh", recurrent_activation="sigmoid",
                        return_sequences=False, go_backwards=False,
                        zero_output_for_mask=False):
    """-> (dxw (N, T, G) at the input's time index, drecurrent_kernel (U, G),
    drecurrent_bias (G,), dh0 (N, U), dc0 (N, U) or None). dy shaped like y; dh_last,
    dc_last the gradients of the final states (None: zero)."""
    c, dy, dh_last, dc_last, rk, cache, flags = operands.recurrence_backward(
        HOST, dy, dh_last, dc_last, recurrent_kernel, cache, cell, activation,
        recurrent_activation, return_sequences, go_backwards, zero_output_for_mask)
    hs, cs, gates, aux, mask, rdrop = cache
    n, t, g = gates.shape
    u = c.units
    dt = hs.dtype
    dh = np.zeros((n, u), dt) if dh_last is None else np.array(dh_last, dtype=dt)
    dc = np.zeros((n, u), dt) if dc_last is None else np.array(dc_last, dtype=dt)
    # The loop writes dxw row by row, rows of a sample a whole sequence apart: first touches
    # there fault page by page (about 10 ms of a 64 x 100 LSTM(128) backward here), where
    # one sequential fill first costs about 0.5 ms. The recurrent side's gradient dzr is
    # dxw itself where the two agree (LSTM, SimpleRNN; dzr runs in processing order, so not
    # with go_backwards), else scratch kept between calls.
    dxw = np.empty((n, t, g), dt)
    dxw.fill(0)
    if cell in ("lstm", "simple_rnn") and not flags.go_backwards:
        buf, dzr = None, dxw
    else:
        buf, (dzr,) = _take_scratch(dt, (n, t, g))
    tmp = np.empty((n, u), dt)
    rk_t = np.ascontiguousarray(rk.T)
    rkp = _packed_gates(rk, c.gates, True)
    cdef Rec r = _rec(c, flags, t, rk, None, mask, rdrop)
    r.rk_t, r.rkp = _ptr(rk_t), _ptr(rkp)
    r.hs, r.cs, r.gates, r.aux = _ptr(hs), _ptr(cs), _ptr(gates), _ptr(aux)
    r.dy, r.dh, r.dc, r.dxw, r.dzr, r.tmp = (_ptr(dy), _ptr(dh), _ptr(dc), _ptr(dxw),
                                             _ptr(dzr), _ptr(tmp))
    try:
        _dispatch(&r, n, True, dt == np.float32)
        # Weight gradients: sums over every row and step (masked steps have dzr = 0), one
        # product per gate block whose operand h_{t-1} * rdrop_g (* r for GRU's h gate
        # without reset_after) differs; one product in all when the operands agree.
        h_prev = hs[:, :t].reshape(n * t, u)
        dz2 = dzr.reshape(n * t, g)
        plain = bool(np.all(rdrop == 1)) and cell != "gru_reset_before"
        if plain:
            drk = h_prev.T @ dz2
        else:
            drk = np.empty((u, g), dt)
            for gate in range(c.gates):
                operand = hs[:, :t] * rdrop[:, None, gate * u:(gate + 1) * u]
                if cell == "gru_reset_before" and gate == 2:
                    operand = operand * gates[:, :, u:2 * u]
                drk[:, gate * u:(gate + 1) * u] = (operand.reshape(n * t, u).T
                                                  @ dz2[:, gate * u:(gate + 1) * u])
        drb = dz2.sum(axis=0)
    finally:
        if buf is not None:
            _give_scratch(buf)
    return dxw, drk, drb, dh, dc if cell == "lstm" else None


def sequence_scale(x, scale):
    """x (N, T, C) * scale (N, C) at every step -> y: RNN input dropout with its mask fixed
    over time (Keras); also its own backward (dx = sequence_scale(dy, scale))."""
    x, scale = operands.sequence_scale(HOST, x, scale)
    return _scale(x, scale)


ctypedef struct _SeqJob:
    bint is_double, reverse
    const void* x
    const void* scale
    void* y
    Py_ssize_t t, c


cdef inline void _seq_rows(const _SeqJob* k, const floating* x, long begin,
                           long end) noexcept nogil:
    """Samples [begin, end): y = x * scale at every step, or x with its time axis reversed."""
    cdef floating* y = <floating*>k.y
    cdef const floating* sc = <const floating*>k.scale
    cdef Py_ssize_t t = k.t, c = k.c, s, j
    cdef long n
    for n in range(begin, end):
        for s in range(t):
            if k.reverse:
                memcpy(y + (n * t + s) * c, x + (n * t + t - 1 - s) * c, c * sizeof(floating))
            else:
                for j in range(c):
                    y[(n * t + s) * c + j] = x[(n * t + s) * c + j] * sc[n * c + j]


cdef void _seq_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _SeqJob* k = <_SeqJob*>ctx
    if k.is_double:
        _seq_rows(k, <const double*>k.x, begin, end)
    else:
        _seq_rows(k, <const float*>k.x, begin, end)


def _sequence_pass(const floating[:, :, ::1] x, const floating[:, ::1] scale, bint reverse):
    """The samples on pynn's worker team (large inputs) or the calling thread."""
    out = np.empty_like(np.asarray(x))
    cdef floating[:, :, ::1] y = out
    cdef _SeqJob job
    cdef Py_ssize_t n = x.shape[0]
    cdef int threads = (omp_get_max_threads()
                        if n * x.shape[1] * x.shape[2] >= PARALLEL_MIN else 1)
    if n == 0 or x.shape[1] == 0 or x.shape[2] == 0:
        return out
    job.is_double, job.reverse, job.x, job.y = floating is double, reverse, &x[0, 0, 0], \
        &y[0, 0, 0]
    job.scale = NULL
    if not reverse:
        job.scale = &scale[0, 0]
    job.t, job.c = x.shape[1], x.shape[2]
    with nogil:
        pynn_team_for(n, team_grain(n, threads), threads, _seq_job, &job)
    return out


def _scale(const floating[:, :, ::1] x,  # IN  (N, T, C)
           const floating[:, ::1] scale):  # IN  (N, C)
    return _sequence_pass(x, scale, False)


def sequence_reverse(x):
    """x (N, T, F) with its time axis reversed -> y: Bidirectional's backward direction back
    in input order; also its own backward."""
    x = operands.sequence_reverse(HOST, x)
    return _reverse(x)


def _reverse(const floating[:, :, ::1] x):  # IN  (N, T, F)
    return _sequence_pass(x, np.empty((0, 0), np.asarray(x).dtype), True)
