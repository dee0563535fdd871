"""Operands of the attention ops (native/attention.pyx, pynn/backend/opencl/attention.py):
the scaled dot-product core of Keras 3's MultiHeadAttention on projected heads.

Legend: N batch, T query steps, S key/value steps, H heads, K key width, V value width.
q (N, T, H, K), k (N, S, H, K), v (N, S, H, V) are the projections as Keras lays them out;
probs (N, H, T, S); mask (N, T, S) uint8 or bool, nonzero = attend; drop (N, H, T, S) the
dropout multiplier (0 or 1 / (1 - rate)) or None; dprobs (N, H, T, S) a gradient reaching
probs itself (MultiHeadAttention's return_attention_scores), or None.
"""

from pynn.backend.operands.common import check_count, check_shape, number, same_dtype


def _heads(arrays, op, q, k, v):
    q = arrays.float_input(op, "q", q, ndim=4)
    k = arrays.float_input(op, "k", k, ndim=4, like=q)
    v = arrays.float_input(op, "v", v, ndim=4, like=q)
    same_dtype(op, ("q", q), ("k", k), ("v", v))
    n, t, h, kd = q.shape
    check_shape(op, "k", k, (n, None, h, kd))
    s = k.shape[1]
    check_shape(op, "v", v, (n, s, h, None))
    return q, k, v, (n, t, s, h, kd, v.shape[3])


def _scale(op, scale):
    return number(op, "scale", scale)


def _drop(arrays, op, drop, like, dims):
    if drop is None:
        return None
    n, t, s, h = dims[:4]
    drop = arrays.float_input(op, "drop", drop, ndim=4, like=like)
    check_shape(op, "drop", drop, (n, h, t, s))
    return drop


def attention_forward(arrays, q, k, v, mask, scale, drop):
    """-> (q, k, v, mask or None, scale, drop or None, dims (N, T, S, H, K, V))."""
    op = "attention_forward"
    q, k, v, dims = _heads(arrays, op, q, k, v)
    n, t, s, h = dims[:4]
    if mask is not None:
        mask = arrays.mask_input(op, "mask", mask)
        check_shape(op, "mask", mask, (n, t, s))
    check_count(arrays, op, "probs", n * h * t * s)
    check_count(arrays, op, "out", n * t * h * dims[5])
    return q, k, v, mask, _scale(op, scale), _drop(arrays, op, drop, q, dims), dims


def attention_backward(arrays, dout, q, k, v, probs, scale, drop, dprobs=None):
    """-> (dout, q, k, v, probs, scale, drop or None, dprobs or None, dims)."""
    op = "attention_backward"
    q, k, v, dims = _heads(arrays, op, q, k, v)
    n, t, s, h, _, vd = dims
    dout = arrays.float_input(op, "dout", dout, ndim=4, like=q)
    check_shape(op, "dout", dout, (n, t, h, vd))
    probs = arrays.float_input(op, "probs", probs, ndim=4, like=q)
    check_shape(op, "probs", probs, (n, h, t, s))
    same_dtype(op, ("q", q), ("dout", dout), ("probs", probs))
    if dprobs is not None:
        dprobs = arrays.float_input(op, "dprobs", dprobs, ndim=4, like=q)
        check_shape(op, "dprobs", dprobs, (n, h, t, s))
    return (dout, q, k, v, probs, _scale(op, scale), _drop(arrays, op, drop, q, dims), dprobs,
            dims)
