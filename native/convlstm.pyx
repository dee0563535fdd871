"""ConvLSTM recurrence kernels: Keras 3's ConvLSTM1D/2D/3D step loop, forward and backward
through time.

Legend: N batch, T time steps, D/H/W spatial extents (ConvLSTM1D and 2D run as 3-D with unit
extents), S = D*H*W sites, R = N*S state rows, F filters, G = 4F gate pre-activations (i, f,
c, o: Keras's order), KD/KH/KW the recurrent kernel extents, K = KD*KH*KW*F (one vol2col row
of h). Layout channels_last; xw (N, T, D, H, W, G) is the input convolution of all N*T
frames plus the bias (the layer's one conv3d op); the recurrent kernel (KD, KH, KW, F, G) is
a row-major (K, G) matrix as is.

Design:
- Keras's recurrent conv is always 'same' with stride 1 (leading pad (k - 1) // 2), so one
  step is z_t = xw_t + vol2col(h_{t-1}) @ recurrent_kernel: a vol2col of the (R, F) state
  (one prange over rows; a 1x1x1 kernel reads h itself), ONE gemm with beta 1 into the step's
  gate rows (BLAS threads itself, so it runs outside any parallel region), then the gate
  elementwise fused in one prange over rows: gates activated in place, c_t and h_t written.
- The whole step loop runs here without the GIL; the caller never loops over time.
- Forward keeps what backward needs: the activated gates (T, R, G) and the states h, c
  (T + 1, R, F), step 0 the initial state, all in processing order (go_backwards reverses
  the time-major copy of xw once).
- Backward per step, last first: the gate gradients fused in one prange over rows (the cell
  activation's derivative from c, the gates' from their outputs), then drecurrent_kernel +=
  vol2col(h_{t-1})^T @ dz_t (vol2col recomputed: T*R*K values would dwarf the cache), then
  dh_{t-1} = col2vol(dz_t @ recurrent_kernel^T) as a gather over state rows: each dh row is
  written by one thread in a fixed (kd, kh, kw) order, so the result is bit-identical for
  any thread count.
Activations (ACT_* below): the gates' derivatives come from their outputs; the cell
activation's value and derivative from c.
"""

import numpy as np

from cython.parallel cimport prange
from libc.math cimport exp, tanh
from libc.string cimport memcpy, memset
from _blas cimport blas_init, gemm_rowmajor, floating

from cpython.pycapsule cimport PyCapsule_GetPointer

from pynn._native import conv3d as _conv3d
from pynn.backend._scratch import scratch
from pynn.backend.operands import convlstm as operands
from pynn.backend.operands.common import HOST

blas_init()

include "_geom3.pxi"

# native/conv3d.pyx's direct forward (its microkernel over a zero-padded input; it packs the
# kernel into panels wp, then writes z = y = conv + bias), reached through its capsules.
ctypedef void (*_direct_f_t)(const float*, const float*, float*, const float*, float*, float*,
                             const Geom3*, Py_ssize_t*, const Py_ssize_t*, const Py_ssize_t*,
                             const Py_ssize_t*, Py_ssize_t, Py_ssize_t, int,
                             double) noexcept nogil
ctypedef void (*_direct_d_t)(const double*, const double*, double*, const double*, double*,
                             double*, const Geom3*, Py_ssize_t*, const Py_ssize_t*,
                             const Py_ssize_t*, const Py_ssize_t*, Py_ssize_t, Py_ssize_t, int,
                             double) noexcept nogil
cdef _direct_f_t _direct_f = NULL
cdef _direct_d_t _direct_d = NULL


def _load_direct():
    global _direct_f, _direct_d
    capsule_f, capsule_d = _conv3d._direct_forward_capsules()
    _direct_f = <_direct_f_t>PyCapsule_GetPointer(capsule_f, b"pynn.conv3d.forward_direct_f")
    _direct_d = <_direct_d_t>PyCapsule_GetPointer(capsule_d, b"pynn.conv3d.forward_direct_d")


_load_direct()


cdef struct Direct:
    # One direct conv per step: its padded input buffer (zero borders, the source copied to
    # (od, oh, ow) each step), kernel, panel scratch and segment tables.
    bint on
    Geom3 g
    void* xp
    const void* w
    void* wp
    Py_ssize_t* roff
    const Py_ssize_t* aseg
    const Py_ssize_t* bseg
    const Py_ssize_t* bseg_last
    Py_ssize_t nseg, tn, od, oh, ow


cdef void _direct_run(const Direct* p, const floating* src, floating* out) noexcept nogil:
    """out (rows of the output, g.F wide) = conv of ``src`` (N, D, H, W, C) placed in p.xp."""
    cdef const Geom3* g = &p.g
    cdef Py_ssize_t n, d, h
    cdef Py_ssize_t wc = g.WO * g.C
    cdef floating* xp = <floating*>p.xp
    for n in range(g.N):
        for d in range(g.DO):
            for h in range(g.HO):
                memcpy(xp + (((n * g.DP + d + p.od) * g.HP + h + p.oh) * g.WP + p.ow) * g.C,
                       src + ((n * g.DO + d) * g.HO + h) * wc, wc * sizeof(floating))
    if floating is float:
        _direct_f(xp, <const float*>p.w, <float*>p.wp, NULL, out, out, g, p.roff, p.aseg,
                  p.bseg, p.bseg_last, p.nseg, p.tn, 0, 0.0)
    else:
        _direct_d(xp, <const double*>p.w, <double*>p.wp, NULL, out, out, g, p.roff, p.aseg,
                  p.bseg, p.bseg_last, p.nseg, p.tn, 0, 0.0)

# float32 with Keras's default tanh / sigmoid: the whole-row LSTM cells of native/_gate_act.h
# (rnn_mask.pyx's: branch-free, they vectorize); the generic double-precision rows below
# serve every other activation and float64.
cdef extern from "_gate_act.h":
    void pynn_gate_lstm_fwd_f(float* z, const float* cp, float* cn, float* h,
                              Py_ssize_t u) noexcept nogil
    void pynn_gate_lstm_bwd_f(const float* z, const float* cp, const float* cn, float* dh,
                              float* dc, float* dz, float* dx, Py_ssize_t u) noexcept nogil

cdef enum:
    ACT_LINEAR = 0
    ACT_TANH = 1
    ACT_SIGMOID = 2
    ACT_HARD_SIGMOID = 3
    ACT_RELU = 4
    # below this many state values per step a prange costs more than it saves
    _PARALLEL_MIN = 4096


cdef struct Geom:
    Py_ssize_t N, D, H, W, F, KD, KH, KW, PF, PT, PL, R, K, G


cdef inline double _act(int code, double v) noexcept nogil:
    if code == ACT_TANH:
        return tanh(v)
    if code == ACT_SIGMOID:
        return 1.0 / (1.0 + exp(-v))
    if code == ACT_HARD_SIGMOID:   # Keras 3: relu6(v + 3) / 6
        v = v / 6.0 + 0.5
        return 0.0 if v < 0 else (1.0 if v > 1 else v)
    if code == ACT_RELU:
        return v if v > 0 else 0.0
    return v


cdef inline double _dact_from_output(int code, double y) noexcept nogil:
    if code == ACT_TANH:
        return 1.0 - y * y
    if code == ACT_SIGMOID:
        return y * (1.0 - y)
    if code == ACT_HARD_SIGMOID:
        return 1.0 / 6.0 if 0 < y < 1 else 0.0
    if code == ACT_RELU:
        return 1.0 if y > 0 else 0.0
    return 1.0


# -- 'same' stride-1 vol2col of the state and its gather adjoint ------------------------------

cdef void convlstm_vol2col_row(const floating* h, floating* dst, const Geom* g,
                               Py_ssize_t r) noexcept nogil:
    """Row r of vol2col(h): the (KD, KH, KW, F) window of state row r, zeros off the edge."""
    cdef Py_ssize_t s = g.D * g.H * g.W
    cdef Py_ssize_t n = r // s, rest = r % s
    cdef Py_ssize_t d0 = rest // (g.H * g.W), h0 = (rest // g.W) % g.H, w0 = rest % g.W
    cdef Py_ssize_t kd, kh, kw, d, hh, w
    cdef floating* out = dst
    for kd in range(g.KD):
        d = d0 + kd - g.PF
        for kh in range(g.KH):
            hh = h0 + kh - g.PT
            for kw in range(g.KW):
                w = w0 + kw - g.PL
                if 0 <= d < g.D and 0 <= hh < g.H and 0 <= w < g.W:
                    memcpy(out, h + (((n * g.D + d) * g.H + hh) * g.W + w) * g.F,
                           g.F * sizeof(floating))
                else:
                    memset(out, 0, g.F * sizeof(floating))
                out += g.F


cdef void convlstm_col2vol_row(const floating* dcol, floating* dh, const Geom* g,
                               Py_ssize_t r) noexcept nogil:
    """dh row r = the sum of the vol2col entries that read it (a gather, fixed order)."""
    cdef Py_ssize_t s = g.D * g.H * g.W
    cdef Py_ssize_t n = r // s, rest = r % s
    cdef Py_ssize_t d0 = rest // (g.H * g.W), h0 = (rest // g.W) % g.H, w0 = rest % g.W
    cdef Py_ssize_t kd, kh, kw, d, hh, w, j, q
    cdef floating* out = dh + r * g.F
    cdef const floating* src
    memset(out, 0, g.F * sizeof(floating))
    for kd in range(g.KD):
        d = d0 - kd + g.PF
        if d < 0 or d >= g.D:
            continue
        for kh in range(g.KH):
            hh = h0 - kh + g.PT
            if hh < 0 or hh >= g.H:
                continue
            for kw in range(g.KW):
                w = w0 - kw + g.PL
                if w < 0 or w >= g.W:
                    continue
                q = ((n * g.D + d) * g.H + hh) * g.W + w
                src = dcol + q * g.K + ((kd * g.KH + kh) * g.KW + kw) * g.F
                for j in range(g.F):
                    out[j] += src[j]


cdef void _vol2col(const floating* h, floating* col, const Geom* g) noexcept nogil:
    cdef Py_ssize_t r
    for r in prange(g.R, schedule="static", use_threads_if=g.R * g.K >= _PARALLEL_MIN):
        convlstm_vol2col_row(h, col + r * g.K, g, r)


cdef void _col2vol(const floating* dcol, floating* dh, const Geom* g) noexcept nogil:
    cdef Py_ssize_t r
    for r in prange(g.R, schedule="static", use_threads_if=g.R * g.K >= _PARALLEL_MIN):
        convlstm_col2vol_row(dcol, dh, g, r)


# -- the fused gate elementwise -----------------------------------------------------------------

cdef inline void convlstm_gates_forward_row(floating* z, const floating* cp, floating* cn,
                                            floating* hn, Py_ssize_t f, int act,
                                            int ract) noexcept nogil:
    """z: the row's pre-activations, left holding the gates i, f, c~, o; cn = f*cp + i*c~,
    hn = o * act(cn)."""
    cdef Py_ssize_t j
    cdef double i, fg, cc, o, c
    for j in range(f):
        i = _act(ract, z[j])
        fg = _act(ract, z[f + j])
        cc = _act(act, z[2 * f + j])
        o = _act(ract, z[3 * f + j])
        c = fg * cp[j] + i * cc
        z[j] = <floating>i
        z[f + j] = <floating>fg
        z[2 * f + j] = <floating>cc
        z[3 * f + j] = <floating>o
        cn[j] = <floating>c
        hn[j] = <floating>(o * _act(act, <floating>c))


cdef inline void convlstm_gates_backward_row(const floating* z, const floating* cp,
                                             const floating* cn, floating* dh,
                                             floating* dc, floating* dz, Py_ssize_t f, int act,
                                             int ract) noexcept nogil:
    """dz: the row's gate pre-activation gradients from dh (this step's h; left zero, as
    _gate_act.h's cell leaves it) and dc (carried, becomes dc_{t-1})."""
    cdef Py_ssize_t j
    cdef double i, fg, cc, o, ac, d, eps
    for j in range(f):
        i = z[j]
        fg = z[f + j]
        cc = z[2 * f + j]
        o = z[3 * f + j]
        ac = _act(act, cn[j])
        d = dc[j] + dh[j] * o * _dact_from_output(act, ac)
        dz[j] = <floating>(d * cc * _dact_from_output(ract, i))
        dz[f + j] = <floating>(d * cp[j] * _dact_from_output(ract, fg))
        dz[2 * f + j] = <floating>(d * i * _dact_from_output(act, cc))
        dz[3 * f + j] = <floating>(dh[j] * ac * _dact_from_output(ract, o))
        dc[j] = <floating>(d * fg)
        dh[j] = 0


# -- the step loops -------------------------------------------------------------------------------

cdef void _scale(const floating* a, const floating* m, floating* out,
                 Py_ssize_t n) noexcept nogil:
    """out = a * m (recurrent dropout: h times one gate's mask)."""
    cdef Py_ssize_t i
    for i in prange(n, schedule="static", use_threads_if=n >= _PARALLEL_MIN):
        out[i] = a[i] * m[i]


cdef void _add_scaled(floating* acc, const floating* a, const floating* m,
                      Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in prange(n, schedule="static", use_threads_if=n >= _PARALLEL_MIN):
        acc[i] += a[i] * m[i]


cdef const floating* _state_columns(const floating* h, floating* col,
                                    const Geom* g) noexcept nogil:
    """The (R, K) matrix the recurrent conv multiplies: h itself for a 1x1x1 kernel."""
    if g.K == g.F:
        return h
    _vol2col(h, col, g)
    return col


cdef void convlstm_forward_steps(floating* zs, const floating* rk, floating* hs, floating* cs,
                                 floating* col, const floating* mask, const floating* rdrop,
                                 floating* hm, const Direct* direct, const Geom* g,
                                 Py_ssize_t t, int act, int ract) noexcept nogil:
    """zs (T, R, G) IN the input pre-activations, OUT the gates; hs, cs (T + 1, R, F) IN
    step 0, OUT the rest; col scratch: (R, K) for vol2col (unused for a 1x1x1 kernel), or
    (R, G) for the recurrent conv's output when ``direct.on``. mask (T, N) in processing order
    or NULL: a masked sample keeps its states (Keras). rdrop (4, R, F) or NULL: Keras's
    recurrent dropout, gate block k reads h * rdrop[k] (four convs a step, hm (R, F)
    scratch)."""
    cdef Py_ssize_t s, r, j, k
    cdef Py_ssize_t sites = g.D * g.H * g.W
    cdef Py_ssize_t rf = g.R * g.F, rg = g.R * g.G
    cdef const floating* src
    cdef floating* z
    for s in range(t):
        if rdrop != NULL:
            for k in range(4):
                _scale(hs + s * rf, rdrop + k * rf, hm, rf)
                gemm_rowmajor(False, False, <int>g.R, <int>g.F, <int>g.K, <floating>1,
                              _state_columns(hm, col, g), <int>g.K, rk + k * g.F, <int>g.G,
                              <floating>1, zs + s * rg + k * g.F, <int>g.G)
        elif direct.on:
            _direct_run(direct, hs + s * rf, col)
        elif g.K == g.F:
            src = hs + s * rf
        else:
            _vol2col(hs + s * rf, col, g)
            src = col
        if not direct.on and rdrop == NULL:
            gemm_rowmajor(False, False, <int>g.R, <int>g.G, <int>g.K, <floating>1, src,
                          <int>g.K, rk, <int>g.G, <floating>1, zs + s * rg, <int>g.G)
        for r in prange(g.R, schedule="static", use_threads_if=rg >= _PARALLEL_MIN):
            if mask != NULL and mask[s * g.N + r // sites] == 0:
                memcpy(cs + (s + 1) * rf + r * g.F, cs + s * rf + r * g.F,
                       g.F * sizeof(floating))
                memcpy(hs + (s + 1) * rf + r * g.F, hs + s * rf + r * g.F,
                       g.F * sizeof(floating))
                continue
            if direct.on:
                z = zs + s * rg + r * g.G
                for j in range(g.G):
                    z[j] = z[j] + col[r * g.G + j]
            if floating is float and act == ACT_TANH and ract == ACT_SIGMOID:
                pynn_gate_lstm_fwd_f(zs + s * rg + r * g.G, cs + s * rf + r * g.F,
                                     cs + (s + 1) * rf + r * g.F,
                                     hs + (s + 1) * rf + r * g.F, g.F)
            else:
                convlstm_gates_forward_row(zs + s * rg + r * g.G, cs + s * rf + r * g.F,
                                           cs + (s + 1) * rf + r * g.F,
                                           hs + (s + 1) * rf + r * g.F, g.F, act, ract)


cdef void convlstm_backward_steps(const floating* zs, const floating* rk, const floating* hs,
                                  const floating* cs, const floating* dys, floating* dzs,
                                  floating* drk, floating* dh, floating* dc, floating* col,
                                  floating* dcol, floating* dhn, const floating* mask,
                                  const floating* rdrop, floating* hm, const Direct* direct,
                                  const Geom* g, Py_ssize_t t, bint sequences, int act,
                                  int ract) noexcept nogil:
    """dys IN: (T, R, F) per-step output gradients when ``sequences``, else (R, F) the last
    step's; dzs OUT (T, R, G); drk OUT (K, G) (overwritten); dh, dc IN the final states'
    gradients, OUT the initial states'; col, dcol (R, K) scratch. ``direct.on``: dh_{t-1} is
    conv3d's direct forward over dz_t padded to a 'full' conv with the kernel flipped in
    space, its channel axes swapped (conv3d_backward_input's stride-1 path). mask (T, N) or
    NULL: a masked sample's gate gradients are zero and dh, dc pass the step unchanged (the
    conv adjoint of its zero dz adds nothing to it); dhn (R, F) scratch, with a mask or rdrop.
    rdrop (4, R, F) or NULL: the forward's recurrent dropout masks (hm (R, F) scratch)."""
    cdef Py_ssize_t k
    cdef Py_ssize_t sites = g.D * g.H * g.W
    cdef floating* adj
    cdef Py_ssize_t s, r, j
    cdef Py_ssize_t rf = g.R * g.F, rg = g.R * g.G
    cdef const floating* src
    cdef floating beta = 0
    if g.K == 0 or g.G == 0:
        return
    if not sequences:
        for j in range(rf):
            dh[j] += dys[j]
    for s in range(t - 1, -1, -1):
        if sequences:
            for r in prange(rf, schedule="static", use_threads_if=rf >= _PARALLEL_MIN):
                dh[r] += dys[s * rf + r]
        for r in prange(g.R, schedule="static", use_threads_if=rg >= _PARALLEL_MIN):
            if mask != NULL and mask[s * g.N + r // sites] == 0:
                memset(dzs + s * rg + r * g.G, 0, g.G * sizeof(floating))
            elif floating is float and act == ACT_TANH and ract == ACT_SIGMOID:
                # (it leaves dh's row zero, as the generic row does: the adjoint adds to it)
                pynn_gate_lstm_bwd_f(zs + s * rg + r * g.G, cs + s * rf + r * g.F,
                                     cs + (s + 1) * rf + r * g.F, dh + r * g.F,
                                     dc + r * g.F, dzs + s * rg + r * g.G, NULL, g.F)
            else:
                convlstm_gates_backward_row(zs + s * rg + r * g.G, cs + s * rf + r * g.F,
                                            cs + (s + 1) * rf + r * g.F, dh + r * g.F,
                                            dc + r * g.F, dzs + s * rg + r * g.G, g.F, act,
                                            ract)
        if rdrop != NULL:
            # gate block k saw h * rdrop[k]: its kernel gradient reads that, and its adjoint
            # reaches h through the same mask
            for k in range(4):
                _scale(hs + s * rf, rdrop + k * rf, hm, rf)
                gemm_rowmajor(True, False, <int>g.K, <int>g.F, <int>g.R, <floating>1,
                              _state_columns(hm, col, g), <int>g.K, dzs + s * rg + k * g.F,
                              <int>g.G, beta, drk + k * g.F, <int>g.G)
                gemm_rowmajor(False, True, <int>g.R, <int>g.K, <int>g.F, <floating>1,
                              dzs + s * rg + k * g.F, <int>g.G, rk + k * g.F, <int>g.G,
                              <floating>0, dhn if g.K == g.F else dcol, <int>g.K)
                if g.K != g.F:
                    _col2vol(dcol, dhn, g)
                _add_scaled(dh, dhn, rdrop + k * rf, rf)
            beta = 1
            continue
        if g.K == g.F:
            src = hs + s * rf
        else:
            _vol2col(hs + s * rf, col, g)
            src = col
        gemm_rowmajor(True, False, <int>g.K, <int>g.G, <int>g.R, <floating>1, src, <int>g.K,
                      dzs + s * rg, <int>g.G, beta, drk, <int>g.G)
        beta = 1
        # dh_{t-1} = (masked rows' carried dh) + the conv adjoint of dz; without a mask every
        # row of dh is zero here and the adjoint is written over it
        adj = dh if mask == NULL else dhn
        if direct.on:
            _direct_run(direct, dzs + s * rg, adj)
        elif g.K == g.F:
            gemm_rowmajor(False, True, <int>g.R, <int>g.K, <int>g.G, <floating>1,
                          dzs + s * rg, <int>g.G, rk, <int>g.G, <floating>0, adj, <int>g.K)
        else:
            gemm_rowmajor(False, True, <int>g.R, <int>g.K, <int>g.G, <floating>1,
                          dzs + s * rg, <int>g.G, rk, <int>g.G, <floating>0, dcol, <int>g.K)
            _col2vol(dcol, adj, g)
        if mask != NULL:
            for r in prange(rf, schedule="static", use_threads_if=rf >= _PARALLEL_MIN):
                dh[r] += dhn[r]


cdef Geom _geom(dict d):
    cdef Geom g
    g.N, g.D, g.H, g.W, g.F = d["N"], d["D"], d["H"], d["W"], d["F"]
    g.KD, g.KH, g.KW = d["KD"], d["KH"], d["KW"]
    g.PF, g.PT, g.PL = (g.KD - 1) // 2, (g.KH - 1) // 2, (g.KW - 1) // 2
    g.R = g.N * g.D * g.H * g.W
    g.K = g.KD * g.KH * g.KW * g.F
    g.G = 4 * g.F
    return g


cdef Geom3 _geom3(dict d):
    cdef Geom3 s
    s.N, s.D, s.H, s.W, s.C = d["N"], d["D"], d["H"], d["W"], d["C"]
    s.KD, s.KH, s.KW, s.F, s.G = d["KD"], d["KH"], d["KW"], d["F"], 1
    s.CG, s.FG = s.C, s.F
    s.SD = s.SH = s.SW = s.DD = s.DH = s.DW = 1
    s.PF = s.PT = s.PL = 0
    s.DO, s.HO, s.WO = d["DO"], d["HO"], d["WO"]
    s.K = s.KD * s.KH * s.KW * s.C
    s.DP, s.HP, s.WP = d["DP"], d["HP"], d["WP"]
    return s


cdef Direct _direct(tuple plan, const floating[::1] xp, const floating[::1] w,
                    floating[::1] wp, const Py_ssize_t[::1] aseg, const Py_ssize_t[::1] bseg,
                    const Py_ssize_t[::1] bseg_last, Py_ssize_t[::1] roff):
    """The Direct of _direct_plan's ``plan`` (geometry dict, tn, offsets) on these buffers."""
    cdef Direct p
    geometry, tn, (od, oh, ow) = plan
    p.on = True
    p.g = _geom3(geometry)
    if (xp.shape[0] < p.g.N * p.g.DP * p.g.HP * p.g.WP * p.g.C or wp.shape[0] < w.shape[0]
            or w.shape[0] != p.g.K * p.g.F):
        raise ValueError("convlstm: direct conv buffers do not fit the geometry")
    p.xp, p.w, p.wp, p.roff = <void*>&xp[0], <const void*>&w[0], <void*>&wp[0], &roff[0]
    p.aseg, p.bseg, p.bseg_last = &aseg[0], &bseg[0], &bseg_last[0]
    p.nseg, p.tn, p.od, p.oh, p.ow = aseg.shape[0], tn, od, oh, ow
    return p


def _run_forward(floating[::1] zs, const floating[::1] rk, floating[::1] hs,
                 floating[::1] cs, floating[::1] col, const floating[::1] mask,
                 const floating[::1] rdrop, floating[::1] hm, dict geometry, Py_ssize_t t,
                 int act, int ract, tuple direct=None):
    cdef Geom g = _geom(geometry)
    cdef Direct p
    p.on = False
    if direct is not None:
        p = _direct[floating](direct[0], direct[1], direct[2], direct[3], direct[4],
                              direct[5], direct[6], direct[7])
    with nogil:
        convlstm_forward_steps(&zs[0], &rk[0], &hs[0], &cs[0], &col[0],
                               &mask[0] if mask is not None else NULL,
                               &rdrop[0] if rdrop is not None else NULL, &hm[0], &p, &g, t,
                               act, ract)


def _run_backward(const floating[::1] zs, const floating[::1] rk, const floating[::1] hs,
                  const floating[::1] cs, const floating[::1] dys, floating[::1] dzs,
                  floating[::1] drk, floating[::1] dh, floating[::1] dc, floating[::1] col,
                  floating[::1] dcol, floating[::1] dhn, const floating[::1] mask,
                  const floating[::1] rdrop, floating[::1] hm, dict geometry, Py_ssize_t t,
                  bint sequences, int act, int ract, tuple direct=None):
    cdef Geom g = _geom(geometry)
    cdef Direct p
    p.on = False
    if direct is not None:
        p = _direct[floating](direct[0], direct[1], direct[2], direct[3], direct[4],
                              direct[5], direct[6], direct[7])
    with nogil:
        convlstm_backward_steps(&zs[0], &rk[0], &hs[0], &cs[0], &dys[0], &dzs[0], &drk[0],
                                &dh[0], &dc[0], &col[0], &dcol[0], &dhn[0],
                                &mask[0] if mask is not None else NULL,
                                &rdrop[0] if rdrop is not None else NULL, &hm[0], &p, &g, t,
                                sequences, act, ract)


def _direct_plan(g, dtype, backward):
    """conv3d's direct path for the step's recurrent conv (forward) or its input gradient
    (backward), where conv3d's own rules (_use_direct) take it: -> (plan, xp, kernel scratch
    size, segment tables) or None. Forward: h padded by Keras's 'same' pads; backward: dz
    padded to a 'full' conv (the kernel flipped and transposed by the caller)."""
    f, gates = g["F"], 4 * g["F"]
    ext = (g["KD"], g["KH"], g["KW"])
    pads = [(k - 1) // 2 for k in ext]
    c_in, c_out = (gates, f) if backward else (f, gates)
    offsets = tuple(k - 1 - p for k, p in zip(ext, pads)) if backward else tuple(pads)
    padded = (g["N"], g["D"] + ext[0] - 1, g["H"] + ext[1] - 1, g["W"] + ext[2] - 1, c_in)
    geometry = dict(N=g["N"], D=g["D"], H=g["H"], W=g["W"], C=c_in, KD=ext[0], KH=ext[1],
                    KW=ext[2], F=c_out, G=1, SD=1, SH=1, SW=1, DD=1, DH=1, DW=1, PF=0, PT=0,
                    PL=0, DO=g["D"], HO=g["H"], WO=g["W"], DP=padded[1], HP=padded[2],
                    WP=padded[3])
    size = g["N"] * g["D"] * g["H"] * g["W"] * c_in
    if ext == (1, 1, 1) or not _conv3d._use_direct(geometry, c_out, int(np.prod(padded)),
                                                    size, backward_input=backward):
        return None
    aseg, bseg, bseg_last, tn, roff = _conv3d._direct_forward_plan(geometry, dtype)
    return (geometry, tn, offsets), np.zeros(padded, dtype=dtype), aseg, bseg, bseg_last, roff


def _time_major(a, go_backwards):
    """(N, T, ...) -> a fresh (T, N, ...) in processing order (always a copy: the forward
    kernel turns it into the gates in place)."""
    a = np.moveaxis(a, 1, 0)
    return np.array(a[::-1] if go_backwards else a, order="C", copy=True)


def _batch_major(a, go_backwards):
    """(T, N, ...) in processing order -> (N, T, ...) at the input's time index."""
    return np.ascontiguousarray(np.moveaxis(a[::-1] if go_backwards else a, 0, 1))


def _output_weights(mask, go_backwards, zero_output_for_mask, dtype):
    """Keras's masked outputs as weights of the states: (T, N) in processing order, 1 where
    the output is the step's h; else 0: the previous output, which is the last unmasked
    step's h (the state kept since) or zeros before the first one; zero_output_for_mask
    zeros every masked step's output. -> (mask, weights) in processing order, or Nones."""
    if mask is None:
        return None, None
    m = np.ascontiguousarray((mask[:, ::-1] if go_backwards else mask).T, dtype=dtype)
    weights = m if zero_output_for_mask else np.maximum.accumulate(m, axis=0)
    return m, weights


def _weighted(a, weights, s=None):
    """a (T, N, ...) (or step s's (N, ...)) times the output weights, broadcast."""
    w = weights if s is None else weights[s]
    return a * w.reshape(w.shape + (1,) * (a.ndim - w.ndim))


def convlstm_forward(xw, recurrent_kernel, h0, c0, mask=None, recurrent_dropout=None,
                     activation="tanh", recurrent_activation="sigmoid",
                     return_sequences=False, go_backwards=False, zero_output_for_mask=False):
    """The ConvLSTM recurrence -> (y, h_last, c_last, cache).

    xw (N, T, D, H, W, 4F), recurrent_kernel (KD, KH, KW, F, 4F), h0 / c0 (N, D, H, W, F) or
    None (zeros); mask (N, T) of 1/0 at the input's time index, or None; recurrent_dropout
    (4, N, D, H, W, F) Keras's four recurrent masks (gate block k reads h * mask k at every
    step) or None. y (N, T, D, H, W, F)
    in processing order when return_sequences, else the last output; cache is what
    convlstm_backward reads.
    """
    xw, rk, h0, c0, mask, rdrop, act, ract, g = operands.convlstm_forward(
        HOST, xw, recurrent_kernel, h0, c0, mask, recurrent_dropout, activation,
        recurrent_activation)
    n, t = xw.shape[:2]
    state_shape = (g["N"], g["D"], g["H"], g["W"], g["F"])
    zs = _time_major(xw, go_backwards)
    steps_mask, weights = _output_weights(mask, go_backwards, zero_output_for_mask, xw.dtype)
    hs = np.empty((t + 1,) + state_shape, dtype=xw.dtype)
    cs = np.empty_like(hs)
    hs[0] = 0 if h0 is None else h0
    cs[0] = 0 if c0 is None else c0
    k = g["KD"] * g["KH"] * g["KW"] * g["F"]
    rows = hs[0].size // g["F"]
    plan = _direct_plan(g, xw.dtype, False) if zs.size and rdrop is None else None
    col_size = rows * 4 * g["F"] if plan else (1 if k == g["F"] else max(rows * k, 1))
    if zs.size:
        with scratch(xw.dtype, (col_size,), (rk.size,),
                     (1 if rdrop is None else rows * g["F"],)) as (col, panels, hm):
            direct = None
            if plan:
                layout, xp, aseg, bseg, bseg_last, roff = plan
                direct = (layout, xp.reshape(-1), rk.reshape(-1), panels, aseg, bseg,
                          bseg_last, roff)
            _run_forward(zs.reshape(-1), rk.reshape(-1), hs.reshape(-1), cs.reshape(-1),
                         col.reshape(-1), None if steps_mask is None else steps_mask.reshape(-1),
                         None if rdrop is None else rdrop.reshape(-1), hm, g, t, act, ract,
                         direct)
    else:
        hs[1:] = hs[0]
        cs[1:] = cs[0]
    if weights is None:
        y = _batch_major(hs[1:], False) if return_sequences else hs[t].copy()
    else:
        y = (_batch_major(_weighted(hs[1:], weights), False) if return_sequences
             else _weighted(hs[t], weights, t - 1))
    return y, hs[t].copy(), cs[t].copy(), (zs, hs, cs, g, steps_mask, weights, rdrop)


def convlstm_backward(dy, dh_last, dc_last, recurrent_kernel, cache, activation="tanh",
                      recurrent_activation="sigmoid", return_sequences=False,
                      go_backwards=False):
    """-> (dxw (N, T, D, H, W, 4F) at the input's time index, drecurrent_kernel, dh0, dc0).

    dy shaped like convlstm_forward's y; dh_last / dc_last the final states' gradients or
    None."""
    zs, hs, cs, g, steps_mask, weights, rdrop = cache
    dy, dh_last, dc_last, rk, act, ract = operands.convlstm_backward(
        HOST, dy, dh_last, dc_last, recurrent_kernel, zs, hs, activation,
        recurrent_activation, return_sequences)
    t = zs.shape[0]
    dys = _time_major(dy, False) if return_sequences else dy
    if weights is not None:
        dys = np.ascontiguousarray(_weighted(dys, weights, None if return_sequences else t - 1))
    dzs = np.empty_like(zs)
    drk = np.zeros(rk.shape, dtype=zs.dtype)
    dh = np.zeros(hs.shape[1:], dtype=zs.dtype) if dh_last is None else dh_last.copy()
    dc = np.zeros(hs.shape[1:], dtype=zs.dtype) if dc_last is None else dc_last.copy()
    k = g["KD"] * g["KH"] * g["KW"] * g["F"]
    col_size = max(hs[0].size // max(g["F"], 1) * k, 1)
    plan = _direct_plan(g, zs.dtype, True) if zs.size and rdrop is None else None
    if zs.size and k:
        plain = steps_mask is None and rdrop is None
        with scratch(zs.dtype, (col_size,), (1 if plan else col_size,), (rk.size,),
                     (1 if plain else dh.size,),
                     (1 if rdrop is None else dh.size,)) as (col, dcol, panels, dhn, hm):
            direct = None
            if plan:
                # dh = the forward conv of dz padded to 'full', the kernel flipped in space
                # with its channel axes swapped
                layout, xp, aseg, bseg, bseg_last, roff = plan
                flipped = np.ascontiguousarray(rk[::-1, ::-1, ::-1].transpose(0, 1, 2, 4, 3))
                direct = (layout, xp.reshape(-1), flipped.reshape(-1), panels, aseg, bseg,
                          bseg_last, roff)
            _run_backward(zs.reshape(-1), rk.reshape(-1), hs.reshape(-1), cs.reshape(-1),
                          dys.reshape(-1), dzs.reshape(-1), drk.reshape(-1), dh.reshape(-1),
                          dc.reshape(-1), col.reshape(-1), dcol.reshape(-1), dhn.reshape(-1),
                          None if steps_mask is None else steps_mask.reshape(-1),
                          None if rdrop is None else rdrop.reshape(-1), hm, g, t,
                          bool(return_sequences), act, ract, direct)
    else:
        dzs[...] = 0
    return _batch_major(dzs, go_backwards), drk, dh, dc
