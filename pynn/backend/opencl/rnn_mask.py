"""OpenCL general recurrence ops: the host side of ``opencl/rnn_mask.cl``.

Same names, signatures and semantics as ``native/rnn_mask.pyx``; operands are checked by
``pynn.backend.operands.rnn_mask``. One work-group per batch row runs the whole sequence
(one launch per direction); the weight gradients are one more launch.
"""

import numpy as np

from pynn.backend.opencl import runtime as rt
from pynn.backend.opencl.arrays import DEVICE
from pynn.backend.opencl.launch import elementwise, sizes
from pynn.backend.operands import rnn_mask as operands

REC_WG = 64  # opencl/rnn_mask.cl's default work-items per row


def _ones(shape, what):
    a = rt.empty(shape, what=what)
    a.fill(np.float32(1))
    return a


def _common(c, flags):
    return (c.code, c.act, float(c.alpha), c.ract, float(c.ralpha), flags.return_sequences,
            flags.go_backwards, flags.zero_output_for_mask)


def recurrence_forward(xw, recurrent_kernel, recurrent_bias, h0, c0=None, mask=None,
                       recurrent_dropout=None, cell="lstm", activation="tanh",
                       recurrent_activation="sigmoid", return_sequences=False,
                       go_backwards=False, zero_output_for_mask=False):
    """See native/rnn_mask.pyx: -> (y, h_last, c_last or None, cache)."""
    op = "recurrence_forward"
    c, xw, rk, rb, h0, c0, mask, rdrop, flags = operands.recurrence_forward(
        DEVICE, xw, recurrent_kernel, recurrent_bias, h0, c0, mask, recurrent_dropout, cell,
        activation, recurrent_activation, return_sequences, go_backwards,
        zero_output_for_mask)
    n, t, g = xw.shape
    u = c.units
    mask = _ones((n, t), f"{op} mask") if mask is None else mask
    rdrop = _ones((n, g), f"{op} recurrent dropout") if rdrop is None else rdrop
    hs = rt.empty((n, t + 1, u), what=f"{op} states")
    cs = rt.empty((n, t + 1, u), what=f"{op} cell states") if c0 is not None else hs
    h_last = rt.empty((n, u), what=f"{op} h_last")
    c_last = rt.empty((n, u), what=f"{op} c_last") if c0 is not None else None
    gates = rt.empty((n, t, g), what=f"{op} gates")
    aux = rt.empty((n, t, u), what=f"{op} gru term") if cell == "gru" else gates
    y = rt.empty((n, t, u) if flags.return_sequences else (n, u), what=f"{op} output")
    if n * u:
        rt.launch(rt.kernel("rnn_mask", op), (n * REC_WG,), (REC_WG,), xw, rk,
                  rb if rb is not None else rk, rb is not None, hs, cs, gates, aux, mask,
                  rdrop, y, h0, c0 if c0 is not None else h0, h_last,
                  c_last if c0 is not None else h_last, t, u, *_common(c, flags))
    return y, h_last, c_last, (hs, cs, gates, aux, mask, rdrop)


def recurrence_backward(dy, dh_last, dc_last, recurrent_kernel, cache, cell="lstm",
                        activation="tanh", recurrent_activation="sigmoid",
                        return_sequences=False, go_backwards=False,
                        zero_output_for_mask=False):
    """See native/rnn_mask.pyx: -> (dxw, drecurrent_kernel, drecurrent_bias, dh0, dc0)."""
    op = "recurrence_backward"
    c, dy, dh_last, dc_last, rk, cache, flags = operands.recurrence_backward(
        DEVICE, dy, dh_last, dc_last, recurrent_kernel, cache, cell, activation,
        recurrent_activation, return_sequences, go_backwards, zero_output_for_mask)
    hs, cs, gates, aux, mask, rdrop = cache
    n, t, g = gates.shape
    u = c.units
    dh = rt.zeros((n, u), what=f"{op} dh") if dh_last is None else dh_last.copy()
    dc = rt.zeros((n, u), what=f"{op} dc") if dc_last is None else dc_last.copy()
    dxw = rt.empty((n, t, g), what=f"{op} dxw")
    dzr = rt.empty((n, t, g), what=f"{op} dzr")
    drk = rt.empty((u, g), what=f"{op} drecurrent_kernel")
    drb = rt.empty((g,), what=f"{op} drecurrent_bias")
    if n * u:
        rt.launch(rt.kernel("rnn_mask", op), (n * REC_WG,), (REC_WG,), dy, dh, dc, rk, hs,
                  cs, gates, aux, mask, rdrop, dxw, dzr, t, u, *_common(c, flags))
        rt.launch(rt.kernel("rnn_mask", "recurrence_weight_grad"), ((u + 1) * g,),
                  (sizes()[0],), hs, gates, rdrop, dzr, drk, drb, n, t, u, c.code)
    else:
        drk.fill(np.float32(0))
        drb.fill(np.float32(0))
    return dxw, drk, drb, dh, dc if cell == "lstm" else None


def sequence_scale(x, scale):
    """See native/rnn_mask.pyx: x (N, T, C) * scale (N, C) at every step."""
    x, scale = operands.sequence_scale(DEVICE, x, scale)
    y = rt.empty(x.shape, what="sequence_scale output")
    n, t, ch = x.shape
    elementwise("rnn_mask", "sequence_scale", n * t * ch, x, scale, y, n, t, ch)
    return y


def sequence_reverse(x):
    """See native/rnn_mask.pyx: x (N, T, F) reversed along time."""
    x = operands.sequence_reverse(DEVICE, x)
    y = rt.empty(x.shape, what="sequence_reverse output")
    n, t, f = x.shape
    elementwise("rnn_mask", "sequence_reverse", n * t * f, x, y, n, t, f)
    return y
