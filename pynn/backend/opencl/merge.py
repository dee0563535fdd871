"""OpenCL merge ops: the host side of ``opencl/merge.cl``.

Same names, signatures and semantics as ``native/merge.pyx``; operands are checked by
``pynn.backend.operands.merge``. An op of n inputs chains n-1 launches of one fold-step
kernel (OpenCL kernels take a fixed argument list), in the order the CPU kernel folds.
Broadcast geometry (a few ints per input) goes up as a small int32 array.
"""

import numpy as np

from pynn.backend.api import ACTIVATIONS, MERGE_MODES
from pynn.backend.opencl.activation import activation_forward
from pynn.backend.opencl import runtime as rt
from pynn.backend.opencl.arrays import DEVICE, copy
from pynn.backend.opencl.launch import elementwise
from pynn.backend.operands import merge as operands

# merge.cl's MODE_* numbers: the order of api.MERGE_MODES.
_MODE = {name: code for code, name in enumerate(MERGE_MODES)}


def _plan(plan, *keys):
    """broadcast_plan's lists as one int32 device array (never empty: OpenCL has no empty
    buffers)."""
    ints = [v for k in keys for v in plan[k]] or [0]
    return rt.to_device(np.array(ints, dtype=np.int32))


def _expanded(x, out_shape):
    """x as a device array of out_shape (a copy where it broadcasts)."""
    if tuple(x.shape) == tuple(out_shape):
        return x
    full = rt.empty(tuple(out_shape), what="merge broadcast input")
    if full.size:
        plan = operands.broadcast_plan(x.shape, out_shape)
        elementwise("merge", "merge_broadcast_to", full.size, x, full, full.size,
                    len(out_shape), _plan(plan, "dims", "in_strides"))
    return full


def _summed_to(full, shape):
    """A gradient of the output's shape summed back over its input's broadcast axes."""
    if tuple(full.shape) == tuple(shape):
        return full
    small = rt.empty(tuple(shape), what="merge_backward output")
    if small.size:
        plan = operands.broadcast_plan(shape, full.shape)
        elementwise("merge", "merge_sum_to", small.size, full, small, small.size,
                    full.ndim, len(plan["bcast_dims"]),
                    _plan(plan, "in_dims", "out_strides", "bcast_dims", "bcast_strides"))
    return small


def merge_forward(inputs, mode, activation="linear", alpha=0.0):
    """The inputs folded left to right by ``mode`` (Keras's merge layers), broadcast by
    Keras's merge rule where their shapes differ, the last fold applying ``activation``."""
    op = "merge_forward"
    xs, mode, out_shape, (act_name, act_alpha) = operands.merge_forward(
        DEVICE, inputs, mode, activation, alpha)
    xs = [_expanded(x, out_shape) for x in xs]
    n = len(xs)
    act = ACTIVATIONS.index(act_name)
    if n == 1:
        return copy(xs[0]) if act_name == "linear" else activation_forward(xs[0], act_name,
                                                                           act_alpha)
    y = rt.empty(tuple(out_shape), what=f"{op} output")
    acc = xs[0]
    for k in range(1, n):
        last = k == n - 1
        divisor = n if mode == "average" and last else 1
        elementwise("merge", "merge_fold", y.size, acc, xs[k], y, y.size, _MODE[mode],
                    np.float32(divisor), act if last else 0, np.float32(act_alpha))
        acc = y
    return y


def merge_backward(dy, inputs, mode):
    """A tuple of dx_k shaped like each input (torch's tie rule for maximum/minimum; a
    broadcast input's gradient summed over the axes it was broadcast along)."""
    op = "merge_backward"
    dy, inputs, mode, out_shape = operands.merge_backward(DEVICE, dy, inputs, mode)
    xs = [_expanded(x, out_shape) for x in inputs]
    n, size = len(xs), dy.size
    dxs = [rt.empty(dy.shape, what=f"{op} output") for _ in xs]
    if mode in ("add", "subtract", "average"):
        for k, dx in enumerate(dxs):
            sign = -1.0 if mode == "subtract" and k == 1 else 1.0
            divisor = n if mode == "average" else 1
            elementwise("merge", "merge_scaled_copy", size, dy, dx, size, np.float32(sign),
                        np.float32(divisor))
        return tuple(_summed_to(dx, x.shape) for dx, x in zip(dxs, inputs))
    # Forward sweep: dx_k = the running value before step k.
    for k in range(1, n):
        if k == 1:
            elementwise("merge", "merge_scaled_copy", size, xs[0], dxs[1], size,
                        np.float32(1), np.float32(1))
        else:
            elementwise("merge", "merge_fold", size, dxs[k - 1], xs[k - 1], dxs[k], size,
                        _MODE[mode], np.float32(1), 0, np.float32(0))
    # Back sweep from the last input, dx_0 carrying the upstream gradient.
    elementwise("merge", "merge_scaled_copy", size, dy, dxs[0], size, np.float32(1),
                np.float32(1))
    for k in range(n - 1, 0, -1):
        elementwise("merge", "merge_backward_step", size, dxs[0], xs[k], dxs[k], size,
                    _MODE[mode])
    return tuple(_summed_to(dx, x.shape) for dx, x in zip(dxs, inputs))


def _concatenate(whole, parts, outer, inner, sizes, to_parts):
    row_len = sum(sizes) * inner
    offset = 0
    for part, s in zip(parts, sizes):
        width = s * inner
        elementwise("merge", "concatenate_part", outer * width, whole, part, outer, width,
                    row_len, offset, int(to_parts))
        offset += width


def concatenate_forward(inputs, axis):
    """The inputs joined along ``axis``; every other axis must match."""
    op = "concatenate_forward"
    xs, (a, outer, inner, sizes) = operands.concatenate_forward(DEVICE, inputs, axis)
    shape = list(xs[0].shape)
    shape[a] = sum(sizes)
    y = rt.empty(tuple(shape), what=f"{op} output")
    _concatenate(y, xs, outer, inner, sizes, False)
    return y


def concatenate_backward(dy, sizes, axis):
    """A tuple of dy's slices along ``axis``, sizes[k] long, as fresh arrays."""
    op = "concatenate_backward"
    dy, (a, outer, inner, sizes) = operands.concatenate_backward(DEVICE, dy, sizes, axis)
    dxs = []
    for s in sizes:
        shape = list(dy.shape)
        shape[a] = s
        dxs.append(rt.empty(tuple(shape), what=f"{op} output"))
    _concatenate(dy, dxs, outer, inner, sizes, True)
    return tuple(dxs)


def _geom(g):
    return g["N"], g["P"], g["K"], g["Q"], g["R"], g["S"]


def _normalized(x, m, k, q):
    out = rt.empty(x.shape, what="dot normalized input")
    elementwise("merge", "l2_normalize", m * q, x, out, m, k, q,
                np.float32(operands.NORMALIZE_EPSILON))
    return out


def dot_forward(x1, x2, axes, normalize=False):
    """Keras's Dot: batch_dot(x1, x2, axes), each input L2-normalized along its axis first
    when ``normalize``."""
    op = "dot_forward"
    x1, x2, g, normalize = operands.dot_forward(DEVICE, x1, x2, axes, normalize)
    n, p, k, q, r, s = _geom(g)
    if normalize:
        x1 = _normalized(x1, n * p, k, q)
        x2 = _normalized(x2, n * r, k, s)
    y = rt.empty(g["out_shape"], what=f"{op} output")
    elementwise("merge", "dot_forward", y.size, x1, x2, y, *_geom(g))
    return y


def dot_backward(dy, x1, x2, axes, normalize=False):
    """(dx1, dx2) of dot_forward, the normalization's gradient included."""
    op = "dot_backward"
    dy, x1, x2, g, normalize = operands.dot_backward(DEVICE, dy, x1, x2, axes, normalize)
    n, p, k, q, r, s = _geom(g)
    a, b = x1, x2
    if normalize:
        a = _normalized(x1, n * p, k, q)
        b = _normalized(x2, n * r, k, s)
    da = rt.empty(x1.shape, what=f"{op} dx1")
    db = rt.empty(x2.shape, what=f"{op} dx2")
    elementwise("merge", "dot_backward_x1", da.size, dy, b, da, *_geom(g))
    elementwise("merge", "dot_backward_x2", db.size, dy, a, db, *_geom(g))
    if not normalize:
        return da, db
    eps = np.float32(operands.NORMALIZE_EPSILON)
    dx1 = rt.empty(x1.shape, what=f"{op} dx1")
    dx2 = rt.empty(x2.shape, what=f"{op} dx2")
    elementwise("merge", "l2_normalize_backward", n * p * q, x1, da, dx1, n * p, k, q, eps)
    elementwise("merge", "l2_normalize_backward", n * r * s, x2, db, dx2, n * r, k, s, eps)
    return dx1, dx2
