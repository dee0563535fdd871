"""More of keras.ops' neural-network part, each on the layers' backend ops (so on both
backends, the layers' native and OpenCL kernels): dot_product_attention on the attention ops
(native/attention.pyx), layer_normalization and rms_normalization on the normalization ops,
conv_transpose on Conv2DTranspose's ops, separable_conv as depthwise then pointwise conv, the
adaptive pools on the adaptive pool ops.
"""

import math

import numpy as np

from pynn import backend
from pynn.ops import nn as _nn
from pynn.ops import numpy_extra as npx
from pynn.ops import numpy_ops as npo
from pynn.ops import _core
from pynn.ops._core import op, record, shape_of, value


def _norm_axes(name, axis, ndim):
    axes = sorted({int(a) % ndim for a in np.atleast_1d(axis)})
    if not axes or any(not -ndim <= int(a) < ndim for a in np.atleast_1d(axis)):
        raise ValueError(f"pynn.ops.{name}: axis {axis!r} is out of range for a {ndim}-D "
                         f"input")
    return axes


def _rows_of(name, x, axis):
    """x with the normalized axes moved last and merged: (rows, features), and the way back."""
    shape = shape_of(value(x))
    ndim = len(shape)
    axes = _norm_axes(name, axis, ndim)
    kept = [a for a in range(ndim) if a not in axes]
    moved = npo.transpose(x, kept + axes) if kept + axes != list(range(ndim)) else x
    moved_shape = [shape[a] for a in kept + axes]
    features = math.prod(shape[a] for a in axes)
    rows = npo.reshape(moved, (-1, features))
    inverse = [int(i) for i in np.argsort(kept + axes)]

    def back(y):
        y = npo.reshape(y, moved_shape)
        return npo.transpose(y, inverse) if inverse != list(range(ndim)) else y

    return rows, features, back


def _feature_vector(name, what, w, features):
    if w is None:
        return None
    if math.prod(shape_of(value(w))) != features:
        raise ValueError(f"pynn.ops.{name}: {what} must hold {features} values (the "
                         f"normalized axes), got shape {shape_of(value(w))}")
    return npo.reshape(w, (features,))


@op
def layer_normalization(x, gamma=None, beta=None, axis=-1, epsilon=None, rms_scaling=False):
    """keras.ops.layer_normalization: (x - mean) / sqrt(var + epsilon) * gamma + beta over
    ``axis`` (epsilon 1e-7, Keras's backend epsilon), on the group-norm ops (groups=1)."""
    eps = 1e-7 if epsilon is None else float(epsilon)
    rows, features, back = _rows_of("layer_normalization", x, axis)
    gamma = _feature_vector("layer_normalization", "gamma", gamma, features)
    beta = _feature_vector("layer_normalization", "beta", beta, features)
    b = backend.current()
    xv = value(rows)
    gv = None if gamma is None else value(gamma)
    bv = None if beta is None else value(beta)
    if gv is None and bv is not None:
        gv = b.full((features,), 1.0, xv.dtype)
    y, mean, inv_std = b.group_norm_forward(xv, gv, None if rms_scaling else bv, 1, eps,
                                            bool(rms_scaling))

    def backward(dy, need):
        dx, dgamma, dbeta = b.group_norm_backward(dy, xv, gv, mean, inv_std, 1,
                                                  bool(rms_scaling), need[0])
        return dx, dgamma if need[1] else None, dbeta if need[2] else None

    out = record(y, (rows, gamma, beta), backward, "layer_normalization")
    if rms_scaling and beta is not None:
        out = npo.add(out, beta)
    return back(out)


@op
def rms_normalization(x, scale=None, axis=-1, epsilon=None):
    """keras.ops.rms_normalization: x / sqrt(mean(x^2) + epsilon) * scale over ``axis``
    (epsilon 1e-7), on the rms_norm ops."""
    eps = 1e-7 if epsilon is None else float(epsilon)
    rows, features, back = _rows_of("rms_normalization", x, axis)
    scale = _feature_vector("rms_normalization", "scale", scale, features)
    b = backend.current()
    xv = value(rows)
    sv = None if scale is None else value(scale)
    y, inv_rms = b.rms_norm_forward(xv, sv, eps)

    def backward(dy, need):
        dx, dscale = b.rms_norm_backward(dy, xv, sv, inv_rms, need[0])
        return dx, dscale if need[1] else None

    return back(record(y, (rows, scale), backward, "rms_normalization"))


@op
def conv_transpose(inputs, kernel, strides=1, padding="valid", output_padding=None,
                   data_format=None, dilation_rate=1):
    """keras.ops.conv_transpose, 2-D: inputs (N,H,W,C), kernel (KH,KW,F,C) -> (N,HO,WO,F),
    Keras 3's output size, on Conv2DTranspose's ops."""
    be = backend.current()
    xv, kv = value(inputs), value(kernel)
    _nn._check_2d("conv_transpose", xv, data_format)
    strides = _nn._pair(strides, "strides")
    dilation = _nn._pair(dilation_rate, "dilation_rate")
    out_pad = None if output_padding is None else _nn._pair(output_padding, "output_padding")
    padding = padding.lower()
    y, z = be.conv2d_transpose_forward(xv, kv, None, strides, padding, out_pad, dilation,
                                       "linear", 0.0)

    def backward(dy, need):
        dx, dk, _ = be.conv2d_transpose_backward(dy, xv, z, y, kv, strides, padding, out_pad,
                                                 dilation, "linear", 0.0, False, need[0])
        return dx, dk if need[1] else None

    return record(y, (inputs, kernel), backward, "conv_transpose")


@op
def separable_conv(inputs, depthwise_kernel, pointwise_kernel, strides=1, padding="valid",
                   data_format=None, dilation_rate=1):
    """keras.ops.separable_conv, 2-D: the depthwise conv, then the 1x1 pointwise conv."""
    depthwise = _nn.depthwise_conv(inputs, depthwise_kernel, strides, padding, data_format,
                                   dilation_rate)
    return _nn.conv(depthwise, pointwise_kernel, 1, "valid", data_format, 1)


def _adaptive_check(name, xv, output_size, data_format):
    if data_format not in (None, "channels_last"):
        raise ValueError(f"pynn.ops.{name}: only data_format='channels_last' is supported, "
                         f"got {data_format!r}")
    spatial = len(xv.shape) - 2
    if not 1 <= spatial <= 3:
        raise ValueError(f"pynn.ops.{name}: expected a 3-D to 5-D input (N, *spatial, C), "
                         f"got shape {tuple(xv.shape)}")
    sizes = (output_size,) * spatial if isinstance(output_size, (int, np.integer)) else \
        tuple(output_size)
    if len(sizes) != spatial or any(not isinstance(s, (int, np.integer)) or s < 1
                                    for s in sizes):
        raise ValueError(f"pynn.ops.{name}: output_size must be a positive int or {spatial} "
                         f"of them, got {output_size!r}")
    return tuple(int(s) for s in sizes)


@op
def adaptive_average_pool(inputs, output_size, data_format=None):
    be = backend.current()
    xv = value(inputs)
    sizes = _adaptive_check("adaptive_average_pool", xv, output_size, data_format)
    y = be.adaptive_avgpool_forward(xv, sizes)
    shape = tuple(xv.shape)
    return record(y, (inputs,), lambda dy, need: (be.adaptive_avgpool_backward(dy, shape),),
                  "adaptive_average_pool")


@op
def adaptive_max_pool(inputs, output_size, data_format=None):
    be = backend.current()
    xv = value(inputs)
    sizes = _adaptive_check("adaptive_max_pool", xv, output_size, data_format)
    y, argmax = be.adaptive_maxpool_forward(xv, sizes)
    shape = tuple(xv.shape)
    return record(y, (inputs,), lambda dy, need: (
        be.adaptive_maxpool_backward(dy, argmax, shape),), "adaptive_max_pool")


LARGE_NEGATIVE = -1e9  # Keras's masked logit (float32): a fully masked row turns uniform


def _attention_mask(mask, is_causal, n, h, t, s):
    """Keras's mask (broadcastable to (N, H, T, S)) and causal flag as one host bool array
    (N, T, S), or None; masks that differ between heads are refused (pynn's kernel takes one
    per sample)."""
    if mask is None and not is_causal:
        return None
    m = np.ones((n, 1, t, s), bool)
    if mask is not None:
        mv = value(mask)
        mv = mv if isinstance(mv, (np.ndarray, bool)) else backend.current().to_numpy(mv)
        mv = np.asarray(mv).astype(bool)
        try:
            full = np.broadcast_to(mv, (n, h, t, s))
        except ValueError:
            raise ValueError(f"pynn.ops.dot_product_attention: mask of shape {mv.shape} does "
                             f"not broadcast to (batch, heads, T, S) = {(n, h, t, s)}") from None
        if mv.ndim >= 3 and mv.shape[-3] != 1 and h != 1:
            raise ValueError(f"pynn.ops.dot_product_attention: a mask per head "
                             f"({mv.shape}) is not supported; give one per sample "
                             f"(batch, 1, T, S)")
        m = m & full[:, :1]
    if is_causal:
        m = m & np.tril(np.ones((t, s), bool))
    return m[:, 0]


@op
def dot_product_attention(query, key, value, bias=None, mask=None, scale=None,
                          is_causal=False, flash_attention=None, attn_logits_soft_cap=None):
    """keras.ops.dot_product_attention: query (B,T,H,D), key (B,S,Hk,D), value (B,S,Hk,V);
    softmax(q k^T * scale + bias, masked) v with scale 1/sqrt(D), on MultiHeadAttention's
    attention ops. Grouped heads (H a multiple of Hk) repeat key and value; a bias, or a
    mask that empties a row (Keras: that row attends uniformly), takes the composed path
    (einsum, softmax)."""
    name = "dot_product_attention"
    qs, ks, vs = (shape_of(_core.value(t)) for t in (query, key, value))
    if len(qs) != 4 or len(ks) != 4 or len(vs) != 4:
        raise ValueError(f"pynn.ops.{name}: expected 4-D query, key and value (batch, "
                         f"length, heads, depth), got {qs}, {ks}, {vs}")
    if bias is not None and mask is not None:
        raise ValueError(f"pynn.ops.{name}: give bias or mask, not both (Keras's rule)")
    if attn_logits_soft_cap is not None or flash_attention:
        raise ValueError(f"pynn.ops.{name}: attn_logits_soft_cap and flash_attention are not "
                         f"supported")
    n, t, h, d = qs
    s, hk = ks[1], ks[2]
    if ks[0] != n or vs[:3] != ks[:3] or ks[3] != d or h % hk:
        raise ValueError(f"pynn.ops.{name}: key {ks} and value {vs} do not match query {qs} "
                         f"(same batch and depth, heads dividing the query's)")
    if hk != h:
        key = npx.repeat(key, h // hk, axis=2)
        value = npx.repeat(value, h // hk, axis=2)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    keep = _attention_mask(mask, is_causal, n, h, t, s)
    if bias is None and (keep is None or np.all(np.any(keep, axis=-1))):
        b = backend.current()
        qv, kv, vv = _core.value(query), _core.value(key), _core.value(value)
        mv = None if keep is None else b.asarray(keep.astype(np.uint8), np.uint8)
        out, probs = b.attention_forward(qv, kv, vv, mv, scale, None)
        return record(out, (query, key, value), lambda dy, need: tuple(
            b.attention_backward(dy, qv, kv, vv, probs, scale, None, None)), name)
    scores = npo.multiply(npo.einsum("bthd,bshd->bhts", query, key), scale)
    if bias is not None:
        scores = npo.add(scores, bias)
    if keep is not None:
        scores = npo.add(scores, np.where(keep[:, None], 0.0, LARGE_NEGATIVE).astype(
            np.float32))
    probs = _nn.softmax(scores, axis=-1)
    return npo.einsum("bhts,bshv->bthv", probs, value)


__all__ = sorted(name for name, fn in dict(globals()).items()
                 if hasattr(fn, "raw") and not name.startswith("_"))
