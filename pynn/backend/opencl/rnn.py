"""OpenCL recurrent ops: the host side of ``opencl/rnn.cl``.

Same names, signatures and semantics as ``native/rnn.pyx`` (see its design note and
``pynn.backend.api.OPS``); float32 device arrays in and out. Per call:
  forward   one GEMM for every step's input projection (``dense_forward`` of dense.cl), then
            per time step one strided GEMM h_{s-1} @ recurrent_kernel (``rnn_gemm_nn``) and one
            fused step kernel;
  backward  per step (last to first) one fused step kernel and one strided GEMM
            dh_{s-1} (+)= dZ_s @ recurrent_kernel^T (``rnn_gemm_nt``); then dkernel, dx and
            d(recurrent_kernel) as GEMMs over all N*T rows and dbias as a column sum
            (``dense_backward_weight`` / ``dense_backward_input`` / ``bias_backward`` of
            dense.cl and reduce.cl, ``rnn_gemm_tn`` for GRU's column blocks).
Everything stays on the device; nothing is read back. Every output element is written by
one work-item and summed in a fixed order (no atomics), so runs are reproducible.
The GEMMs use the tile sizes of ``gemm.gemm_tiles()`` (tuned or per vendor); operands are
checked by ``pynn.backend.operands.rnn``.
"""

import math

import numpy as np

from pynn.backend.opencl import runtime as rt
from pynn.backend.opencl.arrays import DEVICE
from pynn.backend.opencl.dense import (
    bias_backward, dense_backward_input, dense_backward_weight, dense_forward,
)
from pynn.backend.opencl.gemm import gemm_tiles
from pynn.backend.operands import rnn as operands

STEP_WG = 64  # work-group size of the elementwise step kernels

# dy_mode of the step kernels (opencl/rnn.cl).
_DY_NONE, _DY_FULL, _DY_LAST = 0, 1, 2


def _zero_bias(op, bias, cell, flags):
    """The kernels always add a bias: zeros stand in for None."""
    if bias is not None:
        return bias
    return rt.zeros(operands.bias_shape(cell, flags.reset_after),
                    np.float32, f"{op} zero bias")


# -- launches -------------------------------------------------------------------------------


def _kernel(name):
    # One build of rnn.cl per tile configuration: the step kernels share the GEMMs' program.
    return rt.kernel("rnn", name, gemm_tiles())


def _step(name, rows, units, *args):
    rt.launch(_kernel(name), (rows * units,), (STEP_WG,), *args)


def _gemm(kind, m, n, k, a, a_off, lda, b, b_off, ldb, c, c_off, ldc, accumulate):
    """c[c_off:, ldc] (+)= op(a) @ op(b) with kind 'nn', 'nt' or 'tn' (see rnn.cl)."""
    if m <= 0 or n <= 0:
        return
    cfg = gemm_tiles()
    knl = rt.kernel("rnn", f"rnn_gemm_{kind}", cfg)
    groups = (math.ceil(n / cfg["NWG"]) * cfg["NDIMC"], math.ceil(m / cfg["MWG"]) * cfg["MDIMC"],
              1)
    rt.launch(knl, groups, (cfg["NDIMC"], cfg["MDIMC"], 1), m, n, k, max(k, 1), a, a_off, lda,
              b, b_off, ldb, c, c_off, ldc, int(bool(accumulate)))


def _tx(s, t, backwards):
    return t - 1 - s if backwards else s


def _dy_mode(return_sequences, s, t):
    if return_sequences:
        return _DY_FULL
    return _DY_LAST if s == t - 1 else _DY_NONE


def _project(x, kernel):
    """(N, T, G) = x @ kernel for every step at once (dense.cl's GEMM)."""
    n, t, c = x.shape
    g = kernel.shape[1]
    if c == 0:
        return rt.zeros((n, t, g), np.float32, "rnn input projection")
    y, _ = dense_forward(x.reshape(n * t, c), kernel, None, "linear", 0.0)
    return y.reshape(n, t, g)


def _last_step(h_seq, return_sequences):
    if return_sequences:
        return h_seq
    n, t, units = h_seq.shape
    y = rt.empty((n, units), np.float32, "rnn last output")
    if n * units == 0:
        return y
    if t == 0:
        y.fill(0)
        return y
    rt.launch(_kernel("rnn_last_step"), (n * units,), (STEP_WG,), h_seq, y, n, t, units)
    return y


def _shift_prev(h_seq, go_backwards):
    n, t, units = h_seq.shape
    hp = rt.empty(h_seq.shape, np.float32, "rnn shifted states")
    rt.launch(_kernel("rnn_shift_prev"), (n * t * units,), (STEP_WG,), h_seq, hp, n, t, units,
              int(go_backwards))
    return hp


def _backward_input(x, kernel, h_seq, dz, dz_rec, go_backwards, need_input_grad):
    """(dx or None, dkernel, dbias of dz, drk = h_prev^T @ dz_rec or None)."""
    n, t, c = x.shape
    g = dz.shape[2]
    units = h_seq.shape[2]
    dz2 = dz.reshape(n * t, g)
    dkernel = dense_backward_weight(x.reshape(n * t, c), dz2)
    dx = dense_backward_input(dz2, kernel).reshape(n, t, c) if need_input_grad else None
    dbias = bias_backward(dz)
    drk = None
    if dz_rec is not None:
        hp = _shift_prev(h_seq, go_backwards)
        drk = dense_backward_weight(hp.reshape(n * t, units), dz_rec.reshape(n * t, g))
    return dx, dkernel, dbias, drk


def _empty_backward(x, kernel, recurrent_kernel, bias_shape, need_input_grad):
    """Gradients of a call with no work (N, T or U zero): zeros of the right shapes."""
    return (rt.zeros(x.shape, np.float32, "rnn dx") if need_input_grad else None,
            rt.zeros(kernel.shape, np.float32, "rnn dkernel"),
            rt.zeros(recurrent_kernel.shape, np.float32, "rnn drecurrent_kernel"),
            rt.zeros(bias_shape, np.float32, "rnn dbias"))


# -- SimpleRNN ------------------------------------------------------------------------------


def simple_rnn_forward(x, kernel, recurrent_kernel, bias, activation="tanh",
                       return_sequences=False, go_backwards=False):
    """h_t = act(x_t @ kernel + h_{t-1} @ recurrent_kernel + bias) -> (y, (h_seq,))."""
    op = "simple_rnn_forward"
    cell, x, kernel, recurrent_kernel, bias, f = operands.simple_rnn_forward(
        DEVICE, x, kernel, recurrent_kernel, bias, activation, return_sequences, go_backwards)
    act, alpha, u = cell.act, cell.alpha, cell.units
    bias = _zero_bias(op, bias, cell, f)
    return_sequences, go_backwards = f.return_sequences, f.go_backwards
    n, t, _ = x.shape
    h_seq = rt.zeros((n, t, u), np.float32, f"{op} h_seq")
    if n * t * u:
        p = _project(x, kernel)
        ld = t * u
        for s in range(t):
            tx = _tx(s, t, go_backwards)
            if s > 0:
                _gemm("nn", n, u, u, h_seq, (s - 1) * u, ld, recurrent_kernel, 0, u, p, tx * u,
                      ld, True)
            _step("simple_rnn_step_forward", n, u, p, bias, h_seq, n, t, u, s, tx, act, alpha)
    return _last_step(h_seq, return_sequences), (h_seq,)


def simple_rnn_backward(dy, x, kernel, recurrent_kernel, cache, activation="tanh",
                        return_sequences=False, go_backwards=False, need_input_grad=True):
    """-> (dx or None, dkernel, drecurrent_kernel, dbias)."""
    op = "simple_rnn_backward"
    cell, dy, x, kernel, recurrent_kernel, (h_seq,), f = operands.simple_rnn_backward(
        DEVICE, dy, x, kernel, recurrent_kernel, cache, activation, return_sequences,
        go_backwards, need_input_grad)
    act, alpha, u = cell.act, cell.alpha, cell.units
    return_sequences, go_backwards = f.return_sequences, f.go_backwards
    need_input_grad = f.need_input_grad
    n, t, _ = x.shape
    if n * t * u == 0:
        return _empty_backward(x, kernel, recurrent_kernel, (u,), need_input_grad)
    dz = rt.empty((n, t, u), np.float32, f"{op} dz")
    dh_next = rt.zeros((n, u), np.float32, f"{op} dh")
    ld = t * u
    for s in range(t - 1, -1, -1):
        tx = _tx(s, t, go_backwards)
        _step("simple_rnn_step_backward", n, u, dy, _dy_mode(return_sequences, s, t), h_seq,
              dh_next, dz, n, t, u, s, tx, act, alpha)
        if s > 0:
            _gemm("nt", n, u, u, dz, tx * u, ld, recurrent_kernel, 0, u, dh_next, 0, u, False)
    dx, dkernel, dbias, drk = _backward_input(x, kernel, h_seq, dz, dz, go_backwards,
                                              need_input_grad)
    return dx, dkernel, drk, dbias


# -- LSTM -----------------------------------------------------------------------------------


def lstm_forward(x, kernel, recurrent_kernel, bias, activation="tanh",
                 recurrent_activation="sigmoid", return_sequences=False, go_backwards=False):
    """Keras's LSTM -> (y, (h_seq, gates, c_seq)), as native/rnn.pyx."""
    op = "lstm_forward"
    cell, x, kernel, recurrent_kernel, bias, f = operands.lstm_forward(
        DEVICE, x, kernel, recurrent_kernel, bias, activation, recurrent_activation,
        return_sequences, go_backwards)
    act, a1, ract, a2, u = cell.act, cell.alpha, cell.ract, cell.ralpha, cell.units
    bias = _zero_bias(op, bias, cell, f)
    return_sequences, go_backwards = f.return_sequences, f.go_backwards
    n, t, _ = x.shape
    h_seq = rt.zeros((n, t, u), np.float32, f"{op} h_seq")
    c_seq = rt.zeros((n, t, u), np.float32, f"{op} c_seq")
    if n * t * u == 0:
        return _last_step(h_seq, return_sequences), (
            h_seq, rt.zeros((n, t, 4 * u), np.float32, f"{op} gates"), c_seq)
    gates = _project(x, kernel)
    for s in range(t):
        tx = _tx(s, t, go_backwards)
        if s > 0:
            _gemm("nn", n, 4 * u, u, h_seq, (s - 1) * u, t * u, recurrent_kernel, 0, 4 * u,
                  gates, tx * 4 * u, t * 4 * u, True)
        _step("lstm_step_forward", n, u, gates, bias, c_seq, h_seq, n, t, u, s, tx, act, a1,
              ract, a2)
    return _last_step(h_seq, return_sequences), (h_seq, gates, c_seq)


def lstm_backward(dy, x, kernel, recurrent_kernel, cache, activation="tanh",
                  recurrent_activation="sigmoid", return_sequences=False, go_backwards=False,
                  need_input_grad=True):
    """-> (dx or None, dkernel, drecurrent_kernel, dbias (4U,))."""
    op = "lstm_backward"
    cell, dy, x, kernel, recurrent_kernel, (h_seq, gates, c_seq), f = operands.lstm_backward(
        DEVICE, dy, x, kernel, recurrent_kernel, cache, activation, recurrent_activation,
        return_sequences, go_backwards, need_input_grad)
    act, a1, ract, a2, u = cell.act, cell.alpha, cell.ract, cell.ralpha, cell.units
    return_sequences, go_backwards = f.return_sequences, f.go_backwards
    need_input_grad = f.need_input_grad
    n, t, _ = x.shape
    if n * t * u == 0:
        return _empty_backward(x, kernel, recurrent_kernel, (4 * u,), need_input_grad)
    dz = rt.empty((n, t, 4 * u), np.float32, f"{op} dz")
    dh_next = rt.zeros((n, u), np.float32, f"{op} dh")
    dc_next = rt.zeros((n, u), np.float32, f"{op} dc")
    g_ld = t * 4 * u
    for s in range(t - 1, -1, -1):
        tx = _tx(s, t, go_backwards)
        _step("lstm_step_backward", n, u, dy, _dy_mode(return_sequences, s, t), gates, c_seq,
              dh_next, dc_next, dz, n, t, u, s, tx, act, a1, ract, a2)
        if s > 0:
            _gemm("nt", n, u, 4 * u, dz, tx * 4 * u, g_ld, recurrent_kernel, 0, 4 * u, dh_next,
                  0, u, False)
    dx, dkernel, dbias, drk = _backward_input(x, kernel, h_seq, dz, dz, go_backwards,
                                              need_input_grad)
    return dx, dkernel, drk, dbias


# -- GRU ------------------------------------------------------------------------------------


def gru_forward(x, kernel, recurrent_kernel, bias, activation="tanh",
                recurrent_activation="sigmoid", reset_after=True, return_sequences=False,
                go_backwards=False):
    """Keras's GRU -> (y, (h_seq, gates, rh)), as native/rnn.pyx."""
    op = "gru_forward"
    cell, x, kernel, recurrent_kernel, bias, f = operands.gru_forward(
        DEVICE, x, kernel, recurrent_kernel, bias, activation, recurrent_activation,
        reset_after, return_sequences, go_backwards)
    act, a1, ract, a2, u = cell.act, cell.alpha, cell.ract, cell.ralpha, cell.units
    bias = _zero_bias(op, bias, cell, f)
    reset_after, return_sequences, go_backwards = (f.reset_after, f.return_sequences,
                                                   f.go_backwards)
    n, t, _ = x.shape
    h_seq = rt.zeros((n, t, u), np.float32, f"{op} h_seq")
    rh = rt.zeros((n, t, u), np.float32, f"{op} rh")
    if n * t * u == 0:
        return _last_step(h_seq, return_sequences), (
            h_seq, rt.zeros((n, t, 3 * u), np.float32, f"{op} gates"), rh)
    gates = _project(x, kernel)
    srec = rt.zeros((n, 3 * u), np.float32, f"{op} recurrent products")
    g3, ld = 3 * u, t * u
    for s in range(t):
        tx = _tx(s, t, go_backwards)
        if reset_after:
            if s > 0:
                _gemm("nn", n, g3, u, h_seq, (s - 1) * u, ld, recurrent_kernel, 0, g3, srec, 0,
                      g3, False)
            _step("gru_step_forward_after", n, u, gates, srec, bias, g3, rh, h_seq, n, t, u, s,
                  tx, act, a1, ract, a2)
            continue
        if s > 0:
            _gemm("nn", n, 2 * u, u, h_seq, (s - 1) * u, ld, recurrent_kernel, 0, g3, srec, 0,
                  g3, False)
        _step("gru_step_forward_gates", n, u, gates, srec, bias, rh, h_seq, n, t, u, s, tx,
              ract, a2)
        if s > 0:
            _gemm("nn", n, u, u, rh, tx * u, ld, recurrent_kernel, 2 * u, g3, srec, 2 * u, g3,
                  False)
        _step("gru_step_forward_out", n, u, gates, srec, bias, h_seq, n, t, u, s, tx, act, a1)
    return _last_step(h_seq, return_sequences), (h_seq, gates, rh)


def gru_backward(dy, x, kernel, recurrent_kernel, cache, activation="tanh",
                 recurrent_activation="sigmoid", reset_after=True, return_sequences=False,
                 go_backwards=False, need_input_grad=True):
    """-> (dx or None, dkernel, drecurrent_kernel, dbias shaped like the bias)."""
    op = "gru_backward"
    cell, dy, x, kernel, recurrent_kernel, (h_seq, gates, rh), f = operands.gru_backward(
        DEVICE, dy, x, kernel, recurrent_kernel, cache, activation, recurrent_activation,
        reset_after, return_sequences, go_backwards, need_input_grad)
    act, a1, ract, a2, u = cell.act, cell.alpha, cell.ract, cell.ralpha, cell.units
    reset_after, return_sequences, go_backwards = (f.reset_after, f.return_sequences,
                                                   f.go_backwards)
    need_input_grad = f.need_input_grad
    n, t, _ = x.shape
    bias_shape = operands.bias_shape(cell, reset_after)
    if n * t * u == 0:
        return _empty_backward(x, kernel, recurrent_kernel, bias_shape, need_input_grad)
    g3, g_ld = 3 * u, t * 3 * u
    dzi = rt.empty((n, t, g3), np.float32, f"{op} dz")
    dh_next = rt.zeros((n, u), np.float32, f"{op} dh")
    if reset_after:
        dzr = rt.empty((n, t, g3), np.float32, f"{op} recurrent dz")
        for s in range(t - 1, -1, -1):
            tx = _tx(s, t, go_backwards)
            _step("gru_step_backward_after", n, u, dy, _dy_mode(return_sequences, s, t), gates,
                  rh, h_seq, dh_next, dzi, dzr, n, t, u, s, tx, act, a1, ract, a2)
            if s > 0:
                _gemm("nt", n, u, g3, dzr, tx * g3, g_ld, recurrent_kernel, 0, g3, dh_next, 0, u,
                      True)
        dx, dkernel, db_in, drk = _backward_input(x, kernel, h_seq, dzi, dzr, go_backwards,
                                                  need_input_grad)
        dbias = rt.empty((2, g3), np.float32, f"{op} dbias")
        db_rec = bias_backward(dzr)
        rt.cl.enqueue_copy(rt.queue(), dbias.data, db_in.data, byte_count=db_in.nbytes)
        rt.cl.enqueue_copy(rt.queue(), dbias.data, db_rec.data, byte_count=db_rec.nbytes,
                           dst_offset=db_in.nbytes)
        return dx, dkernel, drk, dbias
    drh = rt.zeros((n, u), np.float32, f"{op} d(r*h)")
    for s in range(t - 1, -1, -1):
        tx = _tx(s, t, go_backwards)
        _step("gru_step_backward_out", n, u, dy, _dy_mode(return_sequences, s, t), gates, h_seq,
              dh_next, dzi, n, t, u, s, tx, act, a1, ract, a2)
        if s > 0:
            _gemm("nt", n, u, u, dzi, tx * g3 + 2 * u, g_ld, recurrent_kernel, 2 * u, g3, drh, 0,
                  u, False)
        _step("gru_step_backward_gates", n, u, gates, drh, h_seq, dh_next, dzi, n, t, u, s, tx,
              ract, a2)
        if s > 0:
            _gemm("nt", n, u, 2 * u, dzi, tx * g3, g_ld, recurrent_kernel, 0, g3, dh_next, 0, u,
                  True)
    dx, dkernel, dbias, _ = _backward_input(x, kernel, h_seq, dzi, None, go_backwards,
                                            need_input_grad)
    # The z, r columns of d(R) pair with h_{t-1}, the h columns with r * h_{t-1}.
    drk = rt.empty((u, g3), np.float32, f"{op} drecurrent_kernel")
    hp = _shift_prev(h_seq, go_backwards)
    _gemm("tn", u, 2 * u, n * t, hp, 0, u, dzi, 0, g3, drk, 0, g3, False)
    _gemm("tn", u, u, n * t, rh, 0, u, dzi, 2 * u, g3, drk, 2 * u, g3, False)
    return dx, dkernel, drk, dbias
