"""Float64 NumPy oracles for the activations (native/activation.pyx, native/_activation.pxd);
the dense ops' are in dense_ref.py.

Written from Keras 3's definitions (keras/src/activations/activations.py and the torch
backend): gelu is the exact erf form, selu uses torch's constants, leaky_relu's alpha is the
negative slope. The derivatives here are written from x, independently of the kernels (which
mostly derive from y).
"""

import math

import numpy as np

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946

_erf = np.vectorize(math.erf, otypes=[np.float64])


def activation_forward_ref(x, activation, alpha=0.0):
    x = np.asarray(x, dtype=np.float64)
    if activation == "linear":
        return x.copy()
    if activation == "relu":
        return np.maximum(x, 0.0)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    if activation == "tanh":
        return np.tanh(x)
    if activation == "softmax":
        e = np.exp(x - np.max(x, axis=-1, keepdims=True))
        return e / np.sum(e, axis=-1, keepdims=True)
    if activation == "leaky_relu":
        return np.where(x > 0, x, alpha * x)
    if activation == "elu":
        return np.where(x > 0, x, alpha * (np.exp(x) - 1.0))
    if activation == "selu":
        return SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * (np.exp(x) - 1.0))
    if activation == "gelu":
        return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))
    if activation == "softplus":
        return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0.0)
    # -- issue 12: torch's definitions, which Keras 3's torch backend calls
    if activation == "relu6":
        return np.clip(x, 0.0, 6.0)
    if activation == "hard_sigmoid":
        return np.clip(x + 3.0, 0.0, 6.0) / 6.0
    if activation in ("silu", "swish"):
        return x / (1.0 + np.exp(-x))
    if activation in ("hard_silu", "hard_swish"):
        return x * np.clip(x + 3.0, 0.0, 6.0) / 6.0
    if activation == "mish":
        return x * np.tanh(np.logaddexp(0.0, x))
    if activation == "exponential":
        return np.exp(x)
    if activation == "softsign":
        return x / (1.0 + np.abs(x))
    if activation in KERAS3_REMAINING:
        return _keras3_forward_ref(x, activation, alpha)
    raise ValueError(activation)


def activation_backward_ref(dy, x, activation, alpha=0.0):
    """dL/dx = dy * f'(x) (softmax: the Jacobian-vector product along the last axis)."""
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    if activation == "linear":
        d = np.ones_like(x)
    elif activation == "relu":
        d = (x > 0).astype(np.float64)
    elif activation == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-x))
        d = s * (1 - s)
    elif activation == "tanh":
        d = 1 - np.tanh(x) ** 2
    elif activation == "softmax":
        y = activation_forward_ref(x, "softmax")
        return y * (dy - np.sum(dy * y, axis=-1, keepdims=True))
    elif activation == "leaky_relu":
        d = np.where(x > 0, 1.0, alpha)
    elif activation == "elu":
        d = np.where(x > 0, 1.0, alpha * np.exp(x))
    elif activation == "selu":
        d = SELU_SCALE * np.where(x > 0, 1.0, SELU_ALPHA * np.exp(x))
    elif activation == "gelu":
        d = 0.5 * (1 + _erf(x / math.sqrt(2.0))) + x * np.exp(-0.5 * x * x) / math.sqrt(
            2 * math.pi)
    elif activation == "softplus":
        d = 1.0 / (1.0 + np.exp(-x))
    elif activation == "relu6":
        d = ((x > 0) & (x < 6)).astype(np.float64)
    elif activation == "hard_sigmoid":
        d = np.where((x > -3) & (x < 3), 1.0 / 6.0, 0.0)
    elif activation in ("silu", "swish"):
        s = 1.0 / (1.0 + np.exp(-x))
        d = s + x * s * (1 - s)
    elif activation in ("hard_silu", "hard_swish"):
        d = np.where(x < -3, 0.0, np.where(x <= 3, (2 * x + 3) / 6.0, 1.0))
    elif activation == "mish":
        sp = np.logaddexp(0.0, x)
        d = np.tanh(sp) + x * (1 - np.tanh(sp) ** 2) / (1.0 + np.exp(-x))
    elif activation == "exponential":
        d = np.exp(x)
    elif activation == "softsign":
        d = 1.0 / (1.0 + np.abs(x)) ** 2
    elif activation in KERAS3_REMAINING:
        return _keras3_backward_ref(dy, x, activation, alpha)
    else:
        raise ValueError(activation)
    return dy * d


# -- Keras 3's remaining activations: the torch backend's formulas (keras/src/backend/torch/
# nn.py and torch.nn.functional); alpha is celu's alpha, the shrinks' threshold, squareplus's b.
# glu, log_softmax and sparsemax act on the last axis (glu: x's halves a, b -> a * sigmoid(b)).
KERAS3_REMAINING = ("celu", "glu", "hard_shrink", "hard_tanh", "log_sigmoid", "log_softmax",
                    "soft_shrink", "sparse_plus", "sparse_sigmoid", "sparsemax", "squareplus",
                    "tanh_shrink")


def sparsemax_parts_ref(x):
    """Keras 3.15's sparsemax (every backend's nn.py), step by step: sort descending, the
    cumulative sums C, the support where 1 + k z_(k) > C_k (k = its size), then tau = (the
    sum of C over the support - 1) / k (sparsemax proper takes C_k alone: Keras's rows
    need not sum to 1). -> (tau, order, support in sorted order, k)."""
    order = np.argsort(-x, axis=-1, kind="stable")
    z = np.take_along_axis(x, order, axis=-1)
    cum = np.cumsum(z, axis=-1)
    r = np.arange(1, x.shape[-1] + 1, dtype=np.float64)
    support = z - (cum - 1) / r > 0
    k = support.sum(axis=-1, keepdims=True)
    tau = (np.where(support, cum, 0.0).sum(axis=-1, keepdims=True) - 1) / k
    return tau, order, support, k


def _sparsemax_ref(x):
    tau = sparsemax_parts_ref(x)[0]
    return np.maximum(x - tau, 0.0)


def _sparsemax_backward_ref(dy, x):
    """torch's autograd of that formula: clamp passes dy where x - tau >= 0, and tau takes
    from each sorted z_(j) the number of support members at or after j, over k."""
    tau, order, support, k = sparsemax_parts_ref(x)
    passed = x - tau >= 0
    total = np.sum(np.where(passed, dy, 0.0), axis=-1, keepdims=True)
    w_sorted = np.cumsum(support[..., ::-1], axis=-1)[..., ::-1].astype(np.float64)
    w = np.empty_like(w_sorted)
    np.put_along_axis(w, order, w_sorted, axis=-1)
    return np.where(passed, dy, 0.0) - w / k * total


def _keras3_forward_ref(x, activation, alpha):
    if activation == "celu":
        return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0) / alpha))
    if activation == "glu":
        a, b = np.split(x, 2, axis=-1)
        return a / (1.0 + np.exp(-b))
    if activation == "hard_shrink":
        return np.where(np.abs(x) > alpha, x, 0.0)
    if activation == "hard_tanh":
        return np.clip(x, -1.0, 1.0)
    if activation == "log_sigmoid":
        return -np.logaddexp(0.0, -x)
    if activation == "log_softmax":
        m = np.max(x, axis=-1, keepdims=True)
        return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))
    if activation == "soft_shrink":
        return np.where(x > alpha, x - alpha, np.where(x < -alpha, x + alpha, 0.0))
    if activation == "sparse_plus":
        return np.where(x <= -1, 0.0, np.where(x < 1, 0.25 * (x + 1) ** 2, x))
    if activation == "sparse_sigmoid":
        return np.clip(0.5 * (x + 1), 0.0, 1.0)
    if activation == "sparsemax":
        return _sparsemax_ref(x)
    if activation == "squareplus":
        return (x + np.sqrt(x * x + alpha)) / 2
    if activation == "tanh_shrink":
        return x - np.tanh(x)
    raise ValueError(activation)


def _keras3_backward_ref(dy, x, activation, alpha):
    """dL/dx written from x (glu: dy has x's last axis halved, dx x's shape)."""
    if activation == "glu":
        a, b = np.split(x, 2, axis=-1)
        s = 1.0 / (1.0 + np.exp(-b))
        return np.concatenate([dy * s, dy * a * s * (1 - s)], axis=-1)
    if activation == "log_softmax":
        p = activation_forward_ref(x, "softmax")
        return dy - p * np.sum(dy, axis=-1, keepdims=True)
    if activation == "sparsemax":
        return _sparsemax_backward_ref(dy, x)
    d = {
        "celu": lambda: np.where(x > 0, 1.0, np.exp(np.minimum(x, 0.0) / alpha)),
        "hard_shrink": lambda: (np.abs(x) > alpha).astype(np.float64),
        "hard_tanh": lambda: ((x > -1) & (x < 1)).astype(np.float64),
        "log_sigmoid": lambda: 1.0 / (1.0 + np.exp(x)),
        "soft_shrink": lambda: (np.abs(x) > alpha).astype(np.float64),
        "sparse_plus": lambda: np.where(x <= -1, 0.0, np.where(x < 1, 0.5 * (x + 1), 1.0)),
        "sparse_sigmoid": lambda: np.where((x > -1) & (x < 1), 0.5, 0.0),
        "squareplus": lambda: 0.5 * (1 + x / np.sqrt(x * x + alpha)),
        "tanh_shrink": lambda: np.tanh(x) ** 2,
    }[activation]()
    return dy * d


def activation_bias_backward_ref(dy, x, activation, alpha=0.0):
    """(dz, db): dz = activation_backward_ref, db = its sum over every axis but the last."""
    dz = activation_backward_ref(dy, x, activation, alpha)
    return dz, dz.reshape(-1, dz.shape[-1]).sum(axis=0)


def pooled_activation_bias_backward_ref(dpool, argmax, pooled, y, pool_size, strides,
                                        padding="valid", activation="relu", alpha=0.0):
    """(dz, db) of a layer whose output y only a max pool reads: dpool routed to the pixels
    argmax names (maxpool2d_backward_ref), times the activation's derivative written in
    terms of y (the op is given y, not the pre-activation). pooled is not read."""
    from tests.reference.pool_ref import maxpool2d_backward_ref

    y = np.asarray(y, dtype=np.float64)
    dy = maxpool2d_backward_ref(dpool, np.asarray(argmax), y.shape)
    slope = {"linear": lambda: np.ones_like(y), "relu": lambda: (y > 0).astype(np.float64),
             "sigmoid": lambda: y * (1 - y), "tanh": lambda: 1 - y * y}[activation]()
    dz = dy * slope
    return dz, dz.reshape(-1, dz.shape[-1]).sum(axis=0)


def numerical_derivative(f, x, eps):
    """4th-order central difference of a scalar function f at every element of x
    (scikit-learn's sklearn/_loss/tests/test_loss.py::numerical_derivative, elementwise)."""
    x = np.array(x, dtype=np.float64)
    grad = np.empty_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        orig = flat[i]
        vals = []
        for step in (2 * eps, eps, -eps, -2 * eps):
            flat[i] = orig + step
            vals.append(f(x))
        flat[i] = orig
        gflat[i] = (-vals[0] + 8 * vals[1] - 8 * vals[2] + vals[3]) / (12 * eps)
    return grad


# -- issue 12: the activation layers' ops ---------------------------------------------------
def relu_forward_ref(x, max_value=None, negative_slope=0.0, threshold=0.0):
    """Keras 3's ReLU.static_call, step by step (relu, clip, minus the negative part)."""
    x = np.asarray(x, dtype=np.float64)
    pos = np.where(x > threshold, x, 0.0) if threshold != 0 else np.maximum(x, 0.0)
    if max_value is not None:
        pos = np.clip(pos, 0.0, max_value)
    return pos - negative_slope * np.maximum(threshold - x, 0.0)


def relu_backward_ref(dy, x, max_value=None, negative_slope=0.0, threshold=0.0):
    x = np.asarray(x, dtype=np.float64)
    cap = np.inf if max_value is None else max_value
    d = np.where(x > threshold, (x < cap).astype(np.float64),
                 np.where(x < threshold, negative_slope, 0.0))
    return np.asarray(dy, dtype=np.float64) * d


def prelu_forward_ref(x, alpha):
    """Keras 3's PReLU.call: relu(x) - alpha * relu(-x), alpha broadcast over the batch."""
    x = np.asarray(x, dtype=np.float64)
    alpha = np.asarray(alpha, dtype=np.float64)[None]
    return np.maximum(x, 0.0) - alpha * np.maximum(-x, 0.0)


def prelu_backward_ref(dy, x, alpha, need_input_grad=True):
    """(dx or None, dalpha): dalpha sums x * dy where x < 0 over the batch and the axes
    where alpha has size 1."""
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    alpha = np.asarray(alpha, dtype=np.float64)
    dx = np.where(x > 0, dy, alpha[None] * dy) if need_input_grad else None
    contrib = np.where(x < 0, x * dy, 0.0).sum(axis=0)
    shared = tuple(i for i, a in enumerate(alpha.shape) if a == 1)
    return dx, contrib.sum(axis=shared, keepdims=True).reshape(alpha.shape)


def softmax_forward_ref(x, axis=-1):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def softmax_backward_ref(dy, y, axis=-1):
    dy = np.asarray(dy, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return y * (dy - np.sum(dy * y, axis=axis, keepdims=True))
