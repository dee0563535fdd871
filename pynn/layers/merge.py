"""Keras 3's merge layers: Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate,
Dot, and their functional helpers (``add(inputs, **kwargs)`` is ``Add(**kwargs)(inputs)``).

Each takes a list of inputs and gives back a list of input gradients (None each when
``needs_input_grad`` is False). Shapes follow Keras's rules: the elementwise merges broadcast
a 1 against n and a lower-rank input against a higher one (its axes aligned from the last),
and a broadcast input's gradient is summed back to its shape.
"""

import operator

import numpy as np

from pynn import backend
from pynn.layers.base import Layer, shape_str


def _shapes_str(shapes):
    return "[" + ", ".join(shape_str(s) for s in shapes) + "]"


class _MergeLayer(Layer):
    """Shape checks shared by the merge layers: a list of shapes, a count, one batch size."""

    _mask_from_inputs_only = True  # compute_mask is None without input masks

    exact_inputs = None  # Subtract and Dot: 2

    def _label(self):
        return f"{type(self).__name__} '{self.name}'"

    def _input_shapes(self, input_shape):
        if (not isinstance(input_shape, (list, tuple)) or not input_shape
                or not all(isinstance(s, (list, tuple)) for s in input_shape)):
            raise ValueError(f"{self._label()}: a merge layer is called on a list of inputs, "
                             f"got input shape {input_shape!r}")
        shapes = [tuple(s) for s in input_shape]
        if self.exact_inputs is not None and len(shapes) != self.exact_inputs:
            raise ValueError(f"{self._label()}: expected exactly {self.exact_inputs} inputs, "
                             f"got {len(shapes)}: {_shapes_str(shapes)}")
        batch = {s[0] for s in shapes if s} - {None}
        if len(batch) > 1:
            raise ValueError(f"{self._label()}: the inputs' batch sizes differ: "
                             f"{_shapes_str(shapes)}")
        return shapes

    def check_input(self, x):
        if not isinstance(x, (list, tuple)):
            message = (f"{self._label()}: a merge layer is called on a list of inputs, got "
                       f"{type(x).__name__}")
            raise ValueError(message)  # noqa: TRY004 (a ValueError, as Keras's Merge.call)
        if len(x) != len(self.input_shape):
            raise ValueError(f"{self._label()}: built for {len(self.input_shape)} inputs, "
                             f"called on {len(x)}")
        super().check_input(x)

    def _no_grads(self, count):
        return [None] * count


def _broadcast_dims(label, shape1, shape2, shapes):
    """Keras's Merge._compute_elemwise_op_output_shape: the shapes (batch axis dropped)
    aligned from the right, a 1 against n gives n, None against anything None."""
    if len(shape1) < len(shape2):
        shape1, shape2 = shape2, shape1
    if not shape2:
        return shape1
    out = list(shape1[:len(shape1) - len(shape2)])
    for i, j in zip(shape1[len(shape1) - len(shape2):], shape2):
        if i is None or j is None:
            out.append(None)
        elif i == 1 or j == 1:
            out.append(j if i == 1 else i)
        elif i != j:
            raise ValueError(f"{label}: the inputs have incompatible shapes "
                             f"{_shapes_str(shapes)}")
        else:
            out.append(i)
    return tuple(out)


class _ElementwiseMerge(_MergeLayer):
    mode = None  # a name of api.MERGE_MODES
    # Keras 3's Merge.compute_mask: the OR of the inputs' masks, None when any input has
    # none. Add, Subtract and Average leave the values alone; Keras's Multiply, Maximum and
    # Minimum also rewrite masked values (1 or the other input in, 0 out), which pynn does
    # not, so those three drop the mask (a Keras file relying on it is refused on load).
    supports_masking = True

    def compute_mask(self, inputs, mask=None):
        if not self.supports_masking or not mask or any(m is None for m in mask):
            return None
        return np.logical_or.reduce([np.asarray(m, dtype=bool) for m in mask])

    def compute_output_shape(self, input_shape):
        shapes = self._input_shapes(input_shape)
        out = shapes[0][1:]
        for s in shapes[1:]:
            out = _broadcast_dims(self._label(), out, s[1:], shapes)
        batch = next((s[0] for s in shapes if s[0] is not None), None)
        return (batch,) + out

    def call(self, inputs, training=False):
        y = backend.current().merge_forward(inputs, self.mode)
        if training:
            self._cache = list(inputs)
        return y

    def backward(self, dy):
        inputs, self._cache = self._cache, None
        if not self.needs_input_grad:
            return self._no_grads(len(inputs))
        return list(backend.current().merge_backward(dy, inputs, self.mode))


class Add(_ElementwiseMerge):
    mode = "add"

    def call(self, inputs, training=False):
        return self.call_activated(inputs, training)

    def call_activated(self, inputs, training=False, activation="linear", alpha=0.0):
        """call, then ``activation`` on the sum in the same pass (a model's plan fuses an
        Activation that alone reads this layer's output, as a residual block's closing
        relu; pynn.layers.functional.Plan); backward first takes dy back through it."""
        b = backend.current()
        y = b.merge_forward(inputs, self.mode, activation, alpha)
        if training:
            shape = tuple(y.shape)
            # Inputs of the output's shape need nothing but their count for backward: keeping
            # them held a residual block's branch output (4 MiB at batch 32) until then.
            kept = (len(inputs) if all(tuple(x.shape) == shape for x in inputs)
                    else list(inputs))
            self._cache = kept if activation == "linear" else (kept, y, activation, alpha)
        return y

    def backward(self, dy):
        if isinstance(self._cache, tuple):
            kept, y, activation, alpha = self._cache
            if self.needs_input_grad:
                dy = backend.current().activation_backward(dy, None, y, activation, alpha)
            self._cache = kept
        if isinstance(self._cache, int):
            count, self._cache = self._cache, None
            if not self.needs_input_grad:
                return self._no_grads(count)
            # Each input's gradient is dy itself: hand it on instead of copying it once per
            # input (a residual block's shortcut paid a full pass per step for those copies).
            # Safe because the executor copies a gradient it did not create before adding
            # into it, and no layer writes into the dy it is given.
            return [dy] * count
        return super().backward(dy)


class Subtract(_ElementwiseMerge):
    mode = "subtract"
    exact_inputs = 2


class Multiply(_ElementwiseMerge):
    supports_masking = False  # see _ElementwiseMerge
    mode = "multiply"


class Average(_ElementwiseMerge):
    mode = "average"


class Maximum(_ElementwiseMerge):
    """The gradient follows torch.maximum's (Keras 3 on torch): a tie splits it in half."""

    supports_masking = False  # see _ElementwiseMerge
    mode = "maximum"


class Minimum(_ElementwiseMerge):
    supports_masking = False  # see _ElementwiseMerge
    mode = "minimum"


class Concatenate(_MergeLayer):
    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        try:
            self.axis = operator.index(axis)
        except TypeError:
            raise TypeError(f"{self._label()}: axis must be an int, got {axis!r}") from None

    def compute_output_shape(self, input_shape):
        shapes = self._input_shapes(input_shape)
        rank = len(shapes[0])
        if any(len(s) != rank for s in shapes) or not -rank <= self.axis < rank:
            raise ValueError(f"{self._label()}: cannot concatenate along axis {self.axis} "
                             f"inputs of shapes {_shapes_str(shapes)}")
        axis = self.axis % rank
        for d in range(rank):
            known = {s[d] for s in shapes if s[d] is not None}
            if d != axis and len(known) > 1:
                raise ValueError(f"{self._label()}: the inputs must match in every axis but "
                                 f"the concatenation axis {self.axis}, got "
                                 f"{_shapes_str(shapes)}")
        sizes = [s[axis] for s in shapes]
        out = list(shapes[0])
        out[axis] = None if None in sizes else sum(sizes)
        return tuple(out)

    supports_masking = True

    def compute_mask(self, inputs, mask=None):
        """Keras's Concatenate.compute_mask: each input's mask (all-true where it has none)
        spread over the input's shape, concatenated like the values, then reduced by `any`
        over the last axis."""
        if mask is None or all(m is None for m in mask):
            return None
        spread = []
        for x, m in zip(inputs, mask):
            if m is None:
                spread.append(np.ones(x.shape, dtype=bool))
                continue
            m = np.asarray(m, dtype=bool)
            while m.ndim < len(x.shape):
                m = m[..., None]
            spread.append(np.broadcast_to(m, x.shape))
        return np.concatenate(spread, axis=self.axis).any(axis=-1)

    def call(self, inputs, training=False):
        y = backend.current().concatenate_forward(inputs, self.axis)
        if training:
            self._cache = [x.shape[self.axis] for x in inputs]
        return y

    def backward(self, dy):
        sizes, self._cache = self._cache, None
        if not self.needs_input_grad:
            return self._no_grads(len(sizes))
        return list(backend.current().concatenate_backward(dy, sizes, self.axis))

    def get_config(self):
        config = super().get_config()
        config["axis"] = self.axis
        return config


class Dot(_MergeLayer):
    """batch_dot of two inputs over ``axes`` (an int: that axis of both, a negative one
    counted from each input's end; a pair: one axis each; never the batch axis), each input
    L2-normalized along its axis first when ``normalize`` (cosine proximity)."""

    exact_inputs = 2

    def __init__(self, axes, normalize=False, **kwargs):
        super().__init__(**kwargs)
        if isinstance(axes, bool) or not isinstance(axes, (int, list, tuple)):
            raise TypeError(f"{self._label()}: axes must be an int or a list of 2 ints, got "
                            f"{axes!r}")
        if not isinstance(axes, int):
            if len(axes) != 2 or not all(isinstance(a, int) and not isinstance(a, bool)
                                         for a in axes):
                raise ValueError(f"{self._label()}: axes must be an int or a list of 2 ints, "
                                 f"got {axes!r}")
            axes = list(axes)
        self.axes = axes
        self.normalize = bool(normalize)

    def _resolved_axes(self, shapes):
        ranks = [len(s) for s in shapes]
        pair = [self.axes] * 2 if isinstance(self.axes, int) else self.axes
        if any(r < 2 for r in ranks) or not all(-r <= a < r for a, r in zip(pair, ranks)):
            raise ValueError(f"{self._label()}: axes {self.axes!r} do not fit inputs of shapes "
                             f"{_shapes_str(shapes)} (rank >= 2 each)")
        resolved = [a % r for a, r in zip(pair, ranks)]
        if 0 in resolved:
            raise ValueError(f"{self._label()}: axes {self.axes!r} name the batch axis of "
                             f"inputs {_shapes_str(shapes)}; Dot never sums over it")
        return resolved

    def compute_output_shape(self, input_shape):
        shapes = self._input_shapes(input_shape)
        a1, a2 = self._resolved_axes(shapes)
        s1, s2 = shapes
        if s1[a1] is not None and s2[a2] is not None and s1[a1] != s2[a2]:
            raise ValueError(f"{self._label()}: the summed axes differ in size: {s1[a1]} (axis "
                             f"{a1}) and {s2[a2]} (axis {a2}) of inputs {_shapes_str(shapes)}")
        rest = s1[1:a1] + s1[a1 + 1:] + s2[1:a2] + s2[a2 + 1:]
        batch = s1[0] if s1[0] is not None else s2[0]
        return (batch,) + (rest if rest else (1,))

    def call(self, inputs, training=False):
        x1, x2 = inputs
        y = backend.current().dot_forward(x1, x2, self.axes, self.normalize)
        if training:
            self._cache = (x1, x2)
        return y

    def backward(self, dy):
        (x1, x2), self._cache = self._cache, None
        if not self.needs_input_grad:
            return self._no_grads(2)
        return list(backend.current().dot_backward(dy, x1, x2, self.axes, self.normalize))

    def get_config(self):
        config = super().get_config()
        config.update(axes=self.axes, normalize=self.normalize)
        return config


# -- functional helpers (keras.layers.add, ...) ---------------------------------------------

def add(inputs, **kwargs):
    return Add(**kwargs)(inputs)


def subtract(inputs, **kwargs):
    return Subtract(**kwargs)(inputs)


def multiply(inputs, **kwargs):
    return Multiply(**kwargs)(inputs)


def average(inputs, **kwargs):
    return Average(**kwargs)(inputs)


def maximum(inputs, **kwargs):
    return Maximum(**kwargs)(inputs)


def minimum(inputs, **kwargs):
    return Minimum(**kwargs)(inputs)


def concatenate(inputs, axis=-1, **kwargs):
    return Concatenate(axis=axis, **kwargs)(inputs)


def dot(inputs, axes=-1, **kwargs):
    return Dot(axes=axes, **kwargs)(inputs)
