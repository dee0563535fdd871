"""OpenCL convlstm ops: the host side of ``opencl/convlstm.cl``. The device has no global
barrier inside a kernel, so the host enqueues one fused step kernel per time step (as the
recurrent ops of pynn/backend/opencl/rnn.py do); nothing is read back between steps.

Same names, signatures and semantics as ``native/convlstm.pyx``; operands are checked by
``pynn.backend.operands.convlstm``.
"""

import numpy as np

from pynn.backend.opencl import runtime as rt
from pynn.backend.opencl.arrays import DEVICE
from pynn.backend.opencl.launch import elementwise
from pynn.backend.operands import convlstm as operands


def _geometry_args(g):
    """The kernel argument order of CL_GEOM in opencl/convlstm.cl."""
    return g["N"], g["D"], g["H"], g["W"], g["F"], g["KD"], g["KH"], g["KW"]


def _put(dst, src):
    """src (device, C-contiguous) into the start of dst's (zeroed) buffer; None leaves the
    zeros."""
    if src is not None and src.size:
        rt.cl.enqueue_copy(rt.queue(), dst.data, src.base_data, byte_count=src.nbytes,
                           src_offset=src.offset)


def _block(src, offset_items, shape, what):
    """A fresh array of ``shape`` from src's flat buffer at ``offset_items``."""
    out = rt.empty(shape, np.float32, what)
    if out.size:
        rt.cl.enqueue_copy(rt.queue(), out.data, src.data, byte_count=out.nbytes,
                           src_offset=offset_items * 4)
    return out


def _output_weights(mask, t, go_backwards, zero_output_for_mask):
    """native/convlstm.pyx's _output_weights on the device: (N, T) at the input's time index,
    1 where the output is the step's h, else 0 (the previous output: the kept state, or zeros
    before the first unmasked step)."""
    if mask is None:
        return None
    weights = rt.empty(mask.shape, np.float32, "convlstm_forward output weights")
    elementwise("convlstm", "convlstm_output_weights", mask.shape[0], mask, weights,
                mask.shape[0], t, bool(go_backwards), bool(zero_output_for_mask))
    return weights


def convlstm_forward(xw, recurrent_kernel, h0, c0, mask=None, recurrent_dropout=None,
                     activation="tanh", recurrent_activation="sigmoid",
                     return_sequences=False, go_backwards=False, zero_output_for_mask=False):
    """The ConvLSTM recurrence -> (y, h_last, c_last, cache)."""
    op = "convlstm_forward"
    xw, rk, h0, c0, mask, rdrop, act, ract, g = operands.convlstm_forward(
        DEVICE, xw, recurrent_kernel, h0, c0, mask, recurrent_dropout, activation,
        recurrent_activation)
    n, t = xw.shape[:2]
    state = (g["N"], g["D"], g["H"], g["W"], g["F"])
    rf = int(np.prod(state))
    hs = rt.zeros((t + 1,) + state, np.float32, f"{op} states h")
    cs = rt.zeros((t + 1,) + state, np.float32, f"{op} states c")
    gs = rt.empty((t,) + state[:-1] + (4 * g["F"],), np.float32, f"{op} gates")
    _put(hs, h0)
    _put(cs, c0)
    y = rt.empty((n, t) + state[1:] if return_sequences else state, np.float32,
                 f"{op} output")
    weights = _output_weights(mask, t, go_backwards, zero_output_for_mask)
    for s in range(t):
        tx = t - 1 - s if go_backwards else s
        elementwise("convlstm", "convlstm_step_forward", rf, xw, rk, gs, hs, cs, mask, rdrop,
                    weights, y, bool(return_sequences) or s == t - 1, bool(return_sequences),
                    t, s, tx, act, ract, *_geometry_args(g))
    h_last = _block(hs, t * rf, state, f"{op} h_last")
    c_last = _block(cs, t * rf, state, f"{op} c_last")
    return y, h_last, c_last, (gs, hs, cs, g, mask, weights, rdrop)


def convlstm_backward(dy, dh_last, dc_last, recurrent_kernel, cache, activation="tanh",
                      recurrent_activation="sigmoid", return_sequences=False,
                      go_backwards=False):
    """-> (dxw at the input's time index, drecurrent_kernel, dh0, dc0)."""
    op = "convlstm_backward"
    gs, hs, cs, g, mask, weights, rdrop = cache
    dy, dh_last, dc_last, rk, act, ract = operands.convlstm_backward(
        DEVICE, dy, dh_last, dc_last, recurrent_kernel, gs, hs, activation,
        recurrent_activation, return_sequences)
    t = gs.shape[0]
    state = tuple(hs.shape[1:])
    rf = int(np.prod(state))
    dh = rt.zeros(state, np.float32, f"{op} dh")
    dc = rt.zeros(state, np.float32, f"{op} dc")
    _put(dh, dh_last)
    _put(dc, dc_last)
    dxw = rt.empty((state[0], t) + state[1:-1] + (4 * g["F"],), np.float32, f"{op} dxw")
    for s in range(t - 1, -1, -1):
        tx = t - 1 - s if go_backwards else s
        dy_mode = 1 if return_sequences else (2 if s == t - 1 else 0)
        elementwise("convlstm", "convlstm_step_gates_backward", rf, gs, cs, dy, mask, weights,
                    dh, dc, dxw, t, s, tx, dy_mode, act, ract, *_geometry_args(g))
        elementwise("convlstm", "convlstm_step_dh", rf, dxw, rk, mask, rdrop, dh, t, tx,
                    *_geometry_args(g))
    drk = rt.empty(rk.shape, np.float32, f"{op} drecurrent_kernel")
    elementwise("convlstm", "convlstm_recurrent_kernel_grad", drk.size, hs, rdrop, dxw, drk, t,
                bool(go_backwards), *_geometry_args(g))
    return dxw, drk, dh, dc
