"""OpenCL attention ops: the host side of ``opencl/attention.cl``.

Same names, signatures and semantics as ``native/attention.pyx``; operands are checked by
``pynn.backend.operands.attention``.

Forward: scores into probs (one work-item per element), the masked softmax in place (one
work-item per row), then out = (probs * drop) v (one work-item per element). Backward: dv,
dp = (dout v^T) * drop + dprobs into a scratch (N, H, T, S) array, ds in place there (one
work-item per row), then dq and dk. An absent mask, drop or dprobs reaches the kernels as a
flag of 0 and a stand-in buffer they never read. Empty axes give zeros without a launch.
"""

import numpy as np

from pynn.backend.opencl import runtime as rt
from pynn.backend.opencl.arrays import DEVICE
from pynn.backend.opencl.launch import elementwise
from pynn.backend.operands import attention as operands

STEM = "attention"


def _optional(a, stand_in):
    """(buffer, flag) of an optional operand: a kernel never reads the stand-in."""
    return (stand_in, 0) if a is None else (a, 1)


def attention_forward(q, k, v, mask=None, scale=1.0, drop=None):
    """(out (N, T, H, V), probs (N, H, T, S)): softmax(q*scale k^T, masked) v, per head;
    ``drop`` multiplies the probabilities on their way to v (probs are returned before it)."""
    op = "attention_forward"
    q, k, v, mask, scale, drop, dims = operands.attention_forward(DEVICE, q, k, v, mask, scale,
                                                                   drop)
    n, t, s, h, kd, vd = dims
    empty = n * h * t == 0 or s == 0  # nothing to attend over: zeros, no launch
    new = rt.zeros if empty else rt.empty  # else every element is written below
    out = new((n, t, h, vd), what=f"{op} output")
    probs = new((n, h, t, s), what=f"{op} probs")
    if empty:
        return out, probs
    sc = np.float32(scale)
    mask_buf, has_mask = _optional(mask, probs)
    drop_buf, has_drop = _optional(drop, probs)
    elementwise(STEM, "attention_scores", probs.size, q, k, probs, n, t, s, h, kd, sc)
    elementwise(STEM, "attention_softmax", n * h * t, probs, mask_buf, has_mask, n, t, s, h)
    elementwise(STEM, "attention_context", out.size, probs, drop_buf, has_drop, v, out,
                n, t, s, h, vd)
    return out, probs


def attention_backward(dout, q, k, v, probs, scale=1.0, drop=None, dprobs=None):
    """(dq, dk, dv) of attention_forward's out, from its probs; ``dprobs`` (a gradient
    reaching the probabilities themselves) joins dout's on their way back."""
    op = "attention_backward"
    dout, q, k, v, probs, scale, drop, dprobs, dims = operands.attention_backward(
        DEVICE, dout, q, k, v, probs, scale, drop, dprobs)
    n, t, s, h, kd, vd = dims
    empty = n * h * t == 0 or s == 0
    new = rt.zeros if empty else rt.empty
    dq = new(q.shape, what=f"{op} dq")
    dk = new(k.shape, what=f"{op} dk")
    dv = new(v.shape, what=f"{op} dv")
    if empty:
        return dq, dk, dv
    sc = np.float32(scale)
    drop_buf, has_drop = _optional(drop, probs)
    dprobs_buf, has_dprobs = _optional(dprobs, probs)
    elementwise(STEM, "attention_dv", dv.size, probs, drop_buf, has_drop, dout, dv,
                n, t, s, h, vd)
    ds = rt.empty(probs.shape, what=f"{op} scores gradient")
    elementwise(STEM, "attention_dprobs", ds.size, dout, v, drop_buf, has_drop, dprobs_buf,
                has_dprobs, ds, n, t, s, h, vd)
    elementwise(STEM, "attention_dscores", n * h * t, probs, ds, n * h * t, s)
    elementwise(STEM, "attention_dq", dq.size, ds, k, dq, n, t, s, h, kd, sc)
    elementwise(STEM, "attention_dk", dk.size, ds, q, dk, n, t, s, h, kd, sc)
    return dq, dk, dv
