"""NumPy float64 oracles for the merge ops (slow, obviously correct).

Elementwise merges fold left to right as Keras's layers do; maximum/minimum backward follow
torch.maximum / torch.minimum's derivative at each fold step (a tie splits the gradient in
half). Dot follows keras.src.layers.merging.dot.batch_dot with transposes and einsum.
"""

import numpy as np

from tests.reference.activation_ref import activation_forward_ref

EPSILON = 1e-7  # Keras's backend.epsilon(), the cap of keras.ops.normalize


def _f64(xs):
    return [np.asarray(x, dtype=np.float64) for x in xs]


def _step(mode, a, x):
    return {"add": a + x, "average": a + x, "subtract": a - x, "multiply": a * x,
            "maximum": np.maximum(a, x), "minimum": np.minimum(a, x)}[mode]


def _keras_broadcast(xs):
    """Keras's Merge.call: lower-rank inputs gain axes of size 1 after the batch axis, then
    NumPy broadcasting; every input comes back at the output's shape."""
    rank = max(x.ndim for x in xs)
    padded = [x.reshape(x.shape[:1] + (1,) * (rank - x.ndim) + x.shape[1:]) for x in xs]
    shape = np.broadcast_shapes(*(x.shape for x in padded))
    return [np.broadcast_to(x, shape) for x in padded]


def _sum_back(grad, shape):
    """A gradient of the output's shape summed over the axes an input of ``shape`` was
    broadcast along."""
    rank = grad.ndim
    padded = shape[:1] + (1,) * (rank - len(shape)) + tuple(shape[1:])
    axes = tuple(d for d in range(rank) if padded[d] == 1 and grad.shape[d] != 1)
    return np.sum(grad, axis=axes, keepdims=True).reshape(shape)


def merge_forward_ref(inputs, mode, activation="linear", alpha=0.0):
    xs = _keras_broadcast(_f64(inputs))
    y = xs[0]
    for x in xs[1:]:
        y = _step(mode, y, x)
    return activation_forward_ref(y / len(xs) if mode == "average" else y, activation, alpha)


def _extreme_shares(mode, a, x):
    """torch's (d/da, d/dx) of maximum(a, x) or minimum(a, x)."""
    tie = a == x
    a_loses = a < x if mode == "maximum" else a > x
    x_loses = a > x if mode == "maximum" else a < x
    da = np.where(tie, 0.5, np.where(a_loses, 0.0, 1.0))
    dx = np.where(tie, 0.5, np.where(x_loses, 0.0, 1.0))
    return da, dx


def merge_backward_ref(dy, inputs, mode):
    shapes = [np.shape(x) for x in inputs]
    full = _full_grads_ref(dy, _keras_broadcast(_f64(inputs)), mode)
    return tuple(_sum_back(g, s) for g, s in zip(full, shapes))


def _full_grads_ref(dy, xs, mode):
    """The input gradients at the output's shape (before summing broadcast axes back)."""
    dy = np.asarray(dy, dtype=np.float64)
    n = len(xs)
    if mode == "add":
        return tuple(dy.copy() for _ in xs)
    if mode == "average":
        return tuple(dy / n for _ in xs)
    if mode == "subtract":
        return dy.copy(), -dy
    if mode == "multiply":
        return tuple(dy * np.prod([x for j, x in enumerate(xs) if j != k], axis=0)
                     if n > 1 else dy.copy() for k in range(n))
    running = [xs[0]]
    for x in xs[1:]:
        running.append(_step(mode, running[-1], x))
    grads = [None] * n
    upstream = dy
    for k in range(n - 1, 0, -1):
        da, dx = _extreme_shares(mode, running[k - 1], xs[k])
        grads[k] = upstream * dx
        upstream = upstream * da
    grads[0] = upstream
    return tuple(grads)


def concatenate_forward_ref(inputs, axis):
    return np.concatenate(_f64(inputs), axis=axis)


def concatenate_backward_ref(dy, sizes, axis):
    dy = np.asarray(dy, dtype=np.float64)
    cuts = np.cumsum(sizes)[:-1]
    return tuple(np.split(dy, cuts, axis=axis))


def normalize_ref(x, axis):
    ss = np.sum(x * x, axis=axis, keepdims=True)
    with np.errstate(divide="ignore"):
        inv = np.minimum(1 / np.sqrt(ss), 1 / EPSILON)
    return x * inv


def _axes(axes, ndim1, ndim2):
    pair = (axes, axes) if isinstance(axes, int) else tuple(axes)
    return pair[0] % ndim1, pair[1] % ndim2


def dot_forward_ref(x1, x2, axes, normalize=False):
    x1, x2 = _f64([x1, x2])
    a1, a2 = _axes(axes, x1.ndim, x2.ndim)
    if normalize:
        x1, x2 = normalize_ref(x1, a1), normalize_ref(x2, a2)
    # batch_dot: x1's summed axis last, x2's second; the rest in order.
    left = np.moveaxis(x1, a1, -1)
    right = np.moveaxis(x2, a2, 1)
    n = x1.shape[0]
    rest1, rest2 = left.shape[1:-1], right.shape[2:]
    y = np.einsum("nik,nkj->nij", left.reshape(n, -1, left.shape[-1]),
                  right.reshape(n, right.shape[1], -1))
    shape = (n,) + rest1 + rest2
    return y.reshape(shape if len(shape) > 1 else (n, 1))


def dot_backward_ref(dy, x1, x2, axes, normalize=False):
    """Central differences of dot_forward_ref's sum(y * dy): slow, and independent of the
    kernels' algebra (step 1e-6 in float64 is exact to ~1e-9 for this bilinear map)."""
    x1, x2 = (np.array(x, dtype=np.float64) for x in (x1, x2))
    dy = np.asarray(dy, dtype=np.float64)
    grads = []
    for x in (x1, x2):
        g = np.zeros_like(x)
        flat, gflat = x.reshape(-1), g.reshape(-1)
        for i in range(flat.size):
            orig = flat[i]
            flat[i] = orig + 1e-6
            up = np.sum(dot_forward_ref(x1, x2, axes, normalize) * dy)
            flat[i] = orig - 1e-6
            down = np.sum(dot_forward_ref(x1, x2, axes, normalize) * dy)
            flat[i] = orig
            gflat[i] = (up - down) / 2e-6
        grads.append(g)
    return tuple(grads)
