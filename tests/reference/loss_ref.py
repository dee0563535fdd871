"""Float64 NumPy oracles for the losses (native/loss.pyx, opencl/loss.cl); the metrics' are in
metric_ref.py.

Written straight from Keras 3's definitions (keras/src/losses/losses.py,
keras/src/backend/torch/nn.py): slow and obvious.
Gradients are checked separately by finite differences and by torch autograd through Keras.
"""

import numpy as np

EPSILON = 1e-7


def _clip_bounds(dtype):
    """Keras clips in the input dtype: eps and 1 - eps rounded to it."""
    dt = np.dtype(dtype).type
    return float(dt(EPSILON)), float(dt(1.0 - EPSILON))


def loss_forward_ref(name, y_true, y_pred, from_logits=False, param=None, dtype=np.float64):
    """Mean over the batch of the per-sample loss (Keras 'sum_over_batch_size')."""
    p = np.asarray(y_pred, dtype=np.float64)
    lo, hi = _clip_bounds(dtype)
    if name == "sparse_categorical_crossentropy":
        labels = np.asarray(y_true).reshape(p.shape[:-1]).astype(np.int64)
        t = np.zeros_like(p)
        np.put_along_axis(t, labels[..., None], 1.0, axis=-1)
    else:
        t = np.asarray(y_true, dtype=np.float64).reshape(p.shape)
    if p.size == 0:
        return 0.0
    if name == "mean_squared_error":
        per_sample = np.mean((t - p) ** 2, axis=-1)
    elif name == "mean_absolute_error":
        per_sample = np.mean(np.abs(t - p), axis=-1)
    elif name == "huber":
        delta = 1.0 if param is None else float(param)
        err = np.abs(p - t)
        per_sample = np.mean(np.where(err <= delta, 0.5 * err**2, delta * err - 0.5 * delta**2),
                             axis=-1)
    elif name == "binary_crossentropy":
        if from_logits:
            elem = np.maximum(p, 0) - p * t + np.log1p(np.exp(-np.abs(p)))
        else:
            pc = np.clip(p, lo, hi)
            elem = -(t * np.log(pc) + (1 - t) * np.log(1 - pc))
        per_sample = np.mean(elem, axis=-1)
    else:  # categorical and sparse categorical
        if from_logits:
            m = np.max(p, axis=-1, keepdims=True)
            logp = p - m - np.log(np.sum(np.exp(p - m), axis=-1, keepdims=True))
        else:
            q = p / np.sum(p, axis=-1, keepdims=True)
            logp = np.log(np.clip(q, lo, hi))
        per_sample = -np.sum(t * logp, axis=-1)
    return float(np.mean(per_sample))


def loss_backward_ref(name, y_true, y_pred, from_logits=False, param=None, dtype=np.float64):
    """Analytic d(mean loss)/d(y_pred), including the clip's zero gradient outside
    [lo, hi] (torch's clamp: bounds included) and the row renormalization's Jacobian."""
    p = np.asarray(y_pred, dtype=np.float64)
    lo, hi = _clip_bounds(dtype)
    if name == "sparse_categorical_crossentropy":
        labels = np.asarray(y_true).reshape(p.shape[:-1]).astype(np.int64)
        t = np.zeros_like(p)
        np.put_along_axis(t, labels[..., None], 1.0, axis=-1)
    else:
        t = np.asarray(y_true, dtype=np.float64).reshape(p.shape)
    if p.size == 0:
        return np.zeros_like(p)
    d = p - t
    if name == "mean_squared_error":
        return 2 * d / p.size
    if name == "mean_absolute_error":
        return np.sign(d) / p.size
    if name == "huber":
        delta = 1.0 if param is None else float(param)
        return np.where(np.abs(d) <= delta, d, delta * np.sign(d)) / p.size
    if name == "binary_crossentropy":
        if from_logits:
            return (1 / (1 + np.exp(-p)) - t) / p.size
        inside = (p >= lo) & (p <= hi)
        pc = np.clip(p, lo, hi)
        return np.where(inside, -t / pc + (1 - t) / (1 - pc), 0.0) / p.size
    rows = p.size // p.shape[-1]
    if from_logits:
        e = np.exp(p - np.max(p, axis=-1, keepdims=True))
        sm = e / np.sum(e, axis=-1, keepdims=True)
        return (np.sum(t, axis=-1, keepdims=True) * sm - t) / rows
    s = np.sum(p, axis=-1, keepdims=True)
    q = p / s
    inside = (q >= lo) & (q <= hi)
    dq = np.where(inside, -t / np.where(inside, q, 1.0), 0.0)  # dL/dq through the clip
    # q = p / s: dL/dp_k = (dq_k - sum_j dq_j q_j) / s
    return (dq - np.sum(dq * q, axis=-1, keepdims=True)) / s / rows


# -- metrics ------------------------------------------------------------------------------

def loss_forward_backward_ref(name, y_true, y_pred, from_logits=False, param=None,
                              need_grad=True, dtype=np.float64):
    """(loss, grad or None): the op's two results from the two oracles above (``dtype``: the
    kernel's, which sets the probability clip)."""
    loss = loss_forward_ref(name, y_true, y_pred, from_logits, param, dtype)
    grad = loss_backward_ref(name, y_true, y_pred, from_logits, param, dtype) if need_grad \
        else None
    return loss, grad
