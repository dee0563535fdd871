"""Layers that rearrange values without arithmetic: Permute, RepeatVector (Keras 3's
reshaping layers, on the ``shape`` ops) and Identity."""

import operator

from pynn import backend
from pynn.backend.operands.shape import MAX_DIMS
from pynn.layers.base import C_INT_MAX, Layer, shape_str


class Permute(Layer):
    """Permutes the non-batch axes: ``dims`` are 1-based, output axis k+1 is input axis
    dims[k]."""

    def __init__(self, dims, **kwargs):
        super().__init__(**kwargs)
        label = f"Permute '{self.name}'"
        try:
            self.dims = tuple(operator.index(d) for d in dims)
        except TypeError:
            raise ValueError(f"{label}: dims must be a tuple of ints, got {dims!r}") from None
        if sorted(self.dims) != list(range(1, len(self.dims) + 1)):
            raise ValueError(f"{label}: dims must be a permutation of 1..{len(self.dims)} "
                             f"(consecutive, starting from 1), got {dims!r}")
        if len(self.dims) + 1 > MAX_DIMS:
            raise ValueError(f"{label}: at most {MAX_DIMS - 1} axes can be permuted, got "
                             f"dims={dims!r}")

    def compute_output_shape(self, input_shape):
        if len(input_shape) != len(self.dims) + 1:
            raise ValueError(f"Permute '{self.name}': dims={self.dims} permutes "
                             f"{len(self.dims)} axes, so it expects inputs of rank "
                             f"{len(self.dims) + 1} (batch included), got shape "
                             f"{shape_str(input_shape)}")
        return (input_shape[0],) + tuple(input_shape[d] for d in self.dims)

    def call(self, x, training=False):
        return backend.current().transpose_forward(x, (0,) + self.dims)

    def backward(self, dy):
        if not self.needs_input_grad:
            return None
        return backend.current().transpose_backward(dy, (0,) + self.dims)

    def get_config(self):
        config = super().get_config()
        config["dims"] = list(self.dims)
        return config


class RepeatVector(Layer):
    """(N, F) -> (N, n, F): each sample's vector repeated n times."""

    def __init__(self, n, **kwargs):
        super().__init__(**kwargs)
        label = f"RepeatVector '{self.name}'"
        if isinstance(n, bool):
            raise TypeError(f"{label}: n must be an int, got {n!r}")
        try:
            n = operator.index(n)
        except TypeError:
            raise TypeError(f"{label}: n must be an int, got {type(n).__name__} {n!r}") from None
        if not 1 <= n <= C_INT_MAX:
            raise ValueError(f"{label}: n must be a positive int (at most {C_INT_MAX}), got {n}")
        self.n = n

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"RepeatVector '{self.name}': expected input shape (None, F), got "
                             f"{shape_str(input_shape)}")
        return (input_shape[0], self.n, input_shape[1])

    def call(self, x, training=False):
        return backend.current().repeat_vector_forward(x, self.n)

    def backward(self, dy):
        if not self.needs_input_grad:
            return None
        return backend.current().repeat_vector_backward(dy)

    def get_config(self):
        config = super().get_config()
        config["n"] = self.n
        return config


class Identity(Layer):
    """Returns its input unchanged (a placeholder, as in Keras)."""

    supports_masking = True  # the input's mask passes on, as in Keras 3

    def call(self, x, training=False):
        return x

    def backward(self, dy):
        return dy if self.needs_input_grad else None
