"""Operands of the merge ops (native/merge.pyx, pynn/backend/opencl/merge.py): the n-ary
elementwise merges, concatenation and the batched dot product of Keras 3's merge layers.

An op of several inputs takes a Python list (or tuple) of arrays of one dtype; counts,
shapes and dtypes are checked here, before any kernel, and every message names all shapes.
"""

import math
import operator

import numpy as np

from pynn.backend.api import MERGE_MODES
from pynn.backend.operands.activation import activation_pair
from pynn.backend.operands.common import FLOAT_DTYPES, check_count, check_shape, same_dtype

# Dot(normalize=True) scales by min(rsqrt(sum x^2), 1 / NORMALIZE_EPSILON): keras.ops.normalize
# with Keras's backend.epsilon().
NORMALIZE_EPSILON = 1e-7


def _shapes(xs):
    return ", ".join(str(tuple(x.shape)) for x in xs)


def _inputs(arrays, op, inputs, least=1, exactly=None):
    if not isinstance(inputs, (list, tuple)):
        raise TypeError(f"{op}: 'inputs' must be a list of arrays, got "
                        f"{type(inputs).__name__}")
    if exactly is not None and len(inputs) != exactly:
        raise ValueError(f"{op}: expected exactly {exactly} inputs, got {len(inputs)}")
    if len(inputs) < least:
        raise ValueError(f"{op}: expected at least {least} input(s), got {len(inputs)}")
    first = arrays.float_input(op, "inputs[0]", inputs[0])
    xs = [first] + [arrays.float_input(op, f"inputs[{i}]", a, like=first)
                    for i, a in enumerate(inputs[1:], start=1)]
    same_dtype(op, *[(f"inputs[{i}]", x) for i, x in enumerate(xs)])
    return xs


def merge_mode(op, mode):
    name = str(mode).lower()
    if name not in MERGE_MODES:
        raise ValueError(f"{op}: unknown mode {mode!r}; expected one of {MERGE_MODES}")
    return name


def broadcast_shape(op, shapes):
    """Keras's merge broadcasting (Merge._compute_elemwise_op_output_shape, then its call):
    one batch size; the other axes aligned from the right (a lower-rank input gains axes of
    size 1 after its batch axis), a 1 against n gives n, anything else must be equal."""
    shapes = [tuple(s) for s in shapes]
    listed = ", ".join(str(s) for s in shapes)
    if any(len(s) == 0 for s in shapes) or len({s[0] for s in shapes}) > 1:
        raise ValueError(f"{op}: the inputs must share one batch size (axis 0), got {listed}")
    rank = max(len(s) for s in shapes)
    out = [shapes[0][0]]
    for d in range(1, rank):
        sizes = {s[d - rank] for s in shapes if d - rank >= -(len(s) - 1)} - {1}
        if len(sizes) > 1:
            raise ValueError(f"{op}: the inputs' shapes do not broadcast (Keras's merge rule: "
                             f"equal, or 1, from the last axis), got {listed}")
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def _c_strides(shape):
    strides, step = [], 1
    for d in reversed(shape):
        strides.append(step)
        step *= d
    return strides[::-1]


def broadcast_plan(shape, out_shape):
    """How an input of ``shape`` maps onto ``out_shape`` (both as broadcast_shape made them),
    for the kernels that expand an input and sum a gradient back to it. Over the R axes of
    out_shape, the input padded to rank R:
    - ``dims``: out_shape; ``in_strides``: the input's element strides, 0 on broadcast axes;
    - ``in_dims``: the padded input shape; ``out_strides``: out_shape's strides;
    - ``bcast_dims`` / ``bcast_strides``: sizes and out_shape strides of the broadcast axes."""
    rank = len(out_shape)
    padded = (shape[0],) + (1,) * (rank - len(shape)) + tuple(shape[1:])
    in_strides = _c_strides(padded)
    out_strides = _c_strides(out_shape)
    spread = [d for d in range(rank) if padded[d] == 1 and out_shape[d] != 1]
    return {"dims": list(out_shape),
            "in_strides": [0 if d in spread else in_strides[d] for d in range(rank)],
            "in_dims": list(padded), "out_strides": out_strides,
            "bcast_dims": [out_shape[d] for d in spread],
            "bcast_strides": [out_strides[d] for d in spread]}


def _elementwise(arrays, op, inputs, mode):
    mode = merge_mode(op, mode)
    xs = _inputs(arrays, op, inputs, exactly=2 if mode == "subtract" else None)
    first = tuple(xs[0].shape)
    if all(tuple(x.shape) == first for x in xs):
        return xs, mode, first
    out_shape = broadcast_shape(op, [x.shape for x in xs])
    check_count(arrays, op, "output", math.prod(out_shape))
    return xs, mode, out_shape


def _same_float_arrays(inputs):
    """The shape of `inputs` when they are C-contiguous float32 or float64 ndarrays of one
    shape and dtype (what the layers and the training executor pass every step), else None:
    then nothing else needs checking or converting."""
    if type(inputs) is not list and type(inputs) is not tuple or not inputs:
        return None
    first = inputs[0]
    if type(first) is not np.ndarray or first.dtype not in FLOAT_DTYPES \
            or not first.flags.c_contiguous:
        return None
    for x in inputs[1:]:
        if type(x) is not np.ndarray or x.dtype != first.dtype or x.shape != first.shape \
                or not x.flags.c_contiguous:
            return None
    return first.shape


def merge_forward(arrays, inputs, mode, activation="linear", alpha=0.0):
    """-> (inputs, mode, out_shape, (activation, alpha)): one dtype; shapes that broadcast by
    Keras's merge rule (broadcast_shape); subtract takes exactly 2; any elementwise
    activation (softmax mixes the last axis: its own op)."""
    op = "merge_forward"
    act = activation_pair(op, activation, alpha)
    shape = _same_float_arrays(inputs) if arrays.name == "cpu" else None
    if shape is not None and (mode == "add" or mode == "multiply") and act[0] != "softmax":
        return list(inputs), mode, shape, act
    if act[0] == "softmax":
        raise ValueError(f"{op}: activation 'softmax' cannot be fused (it normalizes along "
                         "an axis); apply it as its own op")
    return (*_elementwise(arrays, op, inputs, mode), act)


def merge_backward(arrays, dy, inputs, mode):
    """-> (dy, inputs, mode, out_shape): dy shaped like the forward output."""
    op = "merge_backward"
    xs, mode, out_shape = _elementwise(arrays, op, inputs, mode)
    dy = arrays.float_input(op, "dy", dy, like=xs[0])
    same_dtype(op, ("dy", dy), ("inputs[0]", xs[0]))
    check_shape(op, "dy", dy, out_shape)
    return dy, xs, mode, out_shape


def _axis(op, axis, ndim):
    try:
        a = operator.index(axis)
    except TypeError:
        raise TypeError(f"{op}: 'axis' must be an int, got {axis!r}") from None
    if not -ndim <= a < ndim:
        raise ValueError(f"{op}: axis {axis} is out of range for inputs of rank {ndim}")
    return a % ndim


def concatenate_geometry(op, shapes, axis):
    """(axis, outer, inner, sizes) of concatenating arrays of ``shapes`` along ``axis``:
    each input is ``outer`` rows of ``sizes[k] * inner`` contiguous elements."""
    ndim = len(shapes[0])
    if ndim == 0:
        raise ValueError(f"{op}: cannot concatenate 0-d inputs")
    a = _axis(op, axis, ndim)
    for s in shapes:
        if len(s) != ndim or any(d != e for i, (d, e) in enumerate(zip(s, shapes[0])) if i != a):
            raise ValueError(f"{op}: the inputs must match in every axis but axis {a}, got "
                             f"{', '.join(str(tuple(t)) for t in shapes)}")
    outer = math.prod(shapes[0][:a])
    inner = math.prod(shapes[0][a + 1:])
    return a, outer, inner, [int(s[a]) for s in shapes]


def concatenate_forward(arrays, inputs, axis):
    """-> (inputs, (axis, outer, inner, sizes))."""
    op = "concatenate_forward"
    xs = _inputs(arrays, op, inputs)
    geom = concatenate_geometry(op, [tuple(x.shape) for x in xs], axis)
    check_count(arrays, op, "output", sum(x.size for x in xs))
    return xs, geom


def concatenate_backward(arrays, dy, sizes, axis):
    """-> (dy, (axis, outer, inner, sizes)); ``sizes`` (the inputs' lengths along ``axis``)
    must add up to dy's."""
    op = "concatenate_backward"
    dy = arrays.float_input(op, "dy", dy)
    try:
        sizes = [operator.index(s) for s in sizes]
    except TypeError:
        raise TypeError(f"{op}: 'sizes' must be a list of ints, got {sizes!r}") from None
    if not sizes or min(sizes) < 0:
        raise ValueError(f"{op}: 'sizes' must be one or more non-negative ints, got {sizes}")
    ndim = dy.ndim
    if ndim == 0:
        raise ValueError(f"{op}: 'dy' must have at least one axis, got a 0-d array")
    a = _axis(op, axis, ndim)
    if sum(sizes) != dy.shape[a]:
        raise ValueError(f"{op}: 'sizes' {sizes} add up to {sum(sizes)}, but dy {dy.shape} "
                         f"has {dy.shape[a]} along axis {a}")
    return dy, (a, math.prod(dy.shape[:a]), math.prod(dy.shape[a + 1:]), sizes)


def dot_axes(op, axes, ndim1, ndim2):
    """Keras's Dot axes as a pair of non-negative axes: an int is used for both inputs (a
    negative one counted from each input's end), a pair one per input; never the batch axis."""
    if isinstance(axes, bool):
        raise TypeError(f"{op}: 'axes' must be an int or a pair of ints, got {axes!r}")
    try:
        pair = (operator.index(axes),) * 2
    except TypeError:
        try:
            pair = tuple(operator.index(a) for a in axes)
        except TypeError:
            raise TypeError(f"{op}: 'axes' must be an int or a pair of ints, got "
                            f"{axes!r}") from None
        if len(pair) != 2:
            raise ValueError(f"{op}: 'axes' must be an int or a pair of ints, got {axes!r}")
    out = []
    for a, ndim in zip(pair, (ndim1, ndim2)):
        if not -ndim <= a < ndim:
            raise ValueError(f"{op}: axes {axes!r} out of range for inputs of rank {ndim1} "
                             f"and {ndim2}")
        out.append(a % ndim)
    if 0 in out:
        raise ValueError(f"{op}: axes {axes!r} name the batch axis 0, which Dot never sums")
    return tuple(out)


def dot_geometry(op, shape1, shape2, axes):
    """Keras's batch_dot as one strided batched product: x1 seen as (N, P, K, Q) and x2 as
    (N, R, K, S) around their summed axes, y (N, P*Q, R*S) shaped as x1's other axes then
    x2's (and (N, 1) when nothing is left)."""
    shape1, shape2 = tuple(shape1), tuple(shape2)
    if len(shape1) < 2 or len(shape2) < 2:
        raise ValueError(f"{op}: both inputs need rank >= 2 (a batch axis and one to sum), "
                         f"got shapes {shape1} and {shape2}")
    if shape1[0] != shape2[0]:
        raise ValueError(f"{op}: the inputs' batch sizes differ: shapes {shape1} and {shape2}")
    a1, a2 = dot_axes(op, axes, len(shape1), len(shape2))
    if shape1[a1] != shape2[a2]:
        raise ValueError(f"{op}: the summed axes differ in size: {shape1[a1]} (axis {a1} of "
                         f"{shape1}) and {shape2[a2]} (axis {a2} of {shape2})")
    rest = shape1[1:a1] + shape1[a1 + 1:] + shape2[1:a2] + shape2[a2 + 1:]
    return {"N": shape1[0], "P": math.prod(shape1[1:a1]), "K": shape1[a1],
            "Q": math.prod(shape1[a1 + 1:]), "R": math.prod(shape2[1:a2]),
            "S": math.prod(shape2[a2 + 1:]), "axes": (a1, a2),
            "out_shape": (shape1[0],) + (rest if rest else (1,))}


def _dot_inputs(arrays, op, x1, x2, axes, normalize):
    if not isinstance(normalize, (bool, int)):
        raise TypeError(f"{op}: 'normalize' must be a bool, got {normalize!r}")
    x1 = arrays.float_input(op, "x1", x1)
    x2 = arrays.float_input(op, "x2", x2, like=x1)
    same_dtype(op, ("x1", x1), ("x2", x2))
    return x1, x2, dot_geometry(op, x1.shape, x2.shape, axes), bool(normalize)


def dot_forward(arrays, x1, x2, axes, normalize):
    """-> (x1, x2, g, normalize); g from dot_geometry."""
    return _dot_inputs(arrays, "dot_forward", x1, x2, axes, normalize)


def dot_backward(arrays, dy, x1, x2, axes, normalize):
    """-> (dy, x1, x2, g, normalize); dy shaped like the forward output."""
    op = "dot_backward"
    x1, x2, g, normalize = _dot_inputs(arrays, op, x1, x2, axes, normalize)
    dy = arrays.float_input(op, "dy", dy, like=x1)
    same_dtype(op, ("dy", dy), ("x1", x1))
    check_shape(op, "dy", dy, g["out_shape"])
    return dy, x1, x2, g, normalize
