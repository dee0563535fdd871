"""Float64 references of the attention ops (native/attention.pyx, opencl/attention.cl):
Keras 3's MultiHeadAttention core on the projected heads.

q (N, T, H, K), k (N, S, H, K), v (N, S, H, V); mask (N, T, S) nonzero = attend, or None;
drop (N, H, T, S) the dropout multiplier (0 or 1 / (1 - rate)), or None.
"""

import numpy as np


def attention_forward_ref(q, k, v, mask, scale, drop=None):
    """-> (out (N, T, H, V), probs (N, H, T, S)). Keras's masked softmax: masked scores are
    left out, a row with nothing to attend to is all zeros."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    scores = np.einsum("nthk,nshk->nhts", q * scale, k)
    keep = (np.ones(scores.shape, bool) if mask is None
            else np.broadcast_to(np.asarray(mask, bool)[:, None], scores.shape))
    shifted = np.where(keep, scores, -np.inf)
    top = shifted.max(axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    e = np.where(keep, np.exp(shifted - top), 0.0)
    total = e.sum(axis=-1, keepdims=True)
    # a NaN score makes its row NaN (as a softmax does); only an empty row is zeros
    probs = np.divide(e, total, out=np.zeros_like(e), where=(total > 0) | np.isnan(total))
    pd = probs if drop is None else probs * np.asarray(drop, np.float64)
    return np.einsum("nhts,nshv->nthv", pd, v), probs


def attention_backward_ref(dout, q, k, v, probs, scale, drop=None, dprobs=None):
    """-> (dq, dk, dv) of attention_forward_ref's out (and of probs, through dprobs), given
    its probs."""
    dout, q, k, v, probs = (np.asarray(a, np.float64) for a in (dout, q, k, v, probs))
    d = None if drop is None else np.asarray(drop, np.float64)
    pd = probs if d is None else probs * d
    dv = np.einsum("nhts,nthv->nshv", pd, dout)
    dp = np.einsum("nthv,nshv->nhts", dout, v)
    if d is not None:
        dp = dp * d
    if dprobs is not None:
        dp = dp + np.asarray(dprobs, np.float64)
    ds = probs * (dp - (probs * dp).sum(axis=-1, keepdims=True))
    dq = np.einsum("nhts,nshk->nthk", ds, k) * scale
    dk = np.einsum("nhts,nthk->nshk", ds, q * scale)
    return dq, dk, dv
