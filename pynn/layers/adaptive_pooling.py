"""Keras 3's adaptive pooling layers: AdaptiveAveragePooling1D/2D/3D and
AdaptiveMaxPooling1D/2D/3D, on the adaptive pool ops (native/pool.pyx, opencl/pool.cl).

The output has the spatial size ``output_size`` whatever the input's: output o of an axis of
length L pooled to O averages (or takes the max of) the bin [floor(o*L/O), ceil((o+1)*L/O)),
the rule of torch's adaptive pools, which Keras 3's torch backend calls. Bins overlap where O
does not divide L and repeat pixels where O > L.

data_format 'channels_first' needs no kernel of its own: (N, C, *spatial) is the
channels_last batch (N*C, *spatial, 1) of one-channel maps, a reshape and no copy.
"""

import numpy as np

from pynn import backend
from pynn.layers.base import C_INT_MAX, Layer, shape_str

_AXES = {1: "L", 2: "H, W", 3: "D, H, W"}


def _output_size(label, value, rank):
    """Keras's output_size: an int (repeated over the spatial axes) or ``rank`` ints."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,) * rank
    try:
        sizes = tuple(int(v) for v in value)
        ok = (len(sizes) == rank
              and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                      for v in value))
    except (TypeError, ValueError):
        ok = False
    if not ok or min(sizes) < 1 or max(sizes) > C_INT_MAX:
        raise ValueError(f"{label}: output_size must be a positive int or a tuple of {rank} "
                         f"positive ints, got {value!r}")
    return sizes


class _AdaptivePooling(Layer):
    _rank = 0
    _op = ""

    def __init__(self, output_size, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self._label = f"{type(self).__name__} '{self.name}'"
        self.output_size = _output_size(self._label, output_size, self._rank)
        data_format = "channels_last" if data_format is None else data_format
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(f"{self._label}: data_format must be 'channels_last' or "
                             f"'channels_first', got {data_format!r}")
        self.data_format = data_format

    def _check(self, input_shape):
        if len(input_shape) != self._rank + 2:
            axes = _AXES[self._rank]
            want = f"(None, {axes}, C)" if self.data_format == "channels_last" else \
                f"(None, C, {axes})"
            raise ValueError(f"{self._label}: expected input shape {want}, got "
                             f"{shape_str(input_shape)}")
        spatial = input_shape[1:-1] if self.data_format == "channels_last" else input_shape[2:]
        if any(s is not None and s < 1 for s in spatial):
            raise ValueError(f"{self._label}: every spatial axis must hold at least one "
                             f"element, got input shape {shape_str(input_shape)}")

    def build(self, input_shape):
        self._check(input_shape)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        self._check(input_shape)
        if self.data_format == "channels_last":
            return (input_shape[0], *self.output_size, input_shape[-1])
        return (input_shape[0], input_shape[1], *self.output_size)

    def _to_channels_last(self, x):
        """x as the ops take it: (N*C, *spatial, 1) for channels_first, else x."""
        if self.data_format == "channels_last":
            return x
        shape = tuple(x.shape)
        return backend.current().reshape(x, (shape[0] * shape[1],) + shape[2:] + (1,))

    def _from_channels_last(self, y, shape):
        """The ops' output back in the layer's layout (shape: the layer input's)."""
        if self.data_format == "channels_last":
            return y
        return backend.current().reshape(y, tuple(shape[:2]) + self.output_size)

    def _op_input_shape(self, shape):
        if self.data_format == "channels_last":
            return tuple(shape)
        return (shape[0] * shape[1],) + tuple(shape[2:]) + (1,)

    def call(self, x, training=False):
        b = backend.current()
        shape = tuple(x.shape)
        self._check(shape)
        x_op = self._to_channels_last(x)
        if self._op == "max":
            y, argmax = b.adaptive_maxpool_forward(x_op, self.output_size)
        else:
            y, argmax = b.adaptive_avgpool_forward(x_op, self.output_size), None
        if training:
            self._cache = (argmax, shape)
        return self._from_channels_last(y, shape)

    def backward(self, dy):
        b = backend.current()
        (argmax, shape), self._cache = self._cache, None
        op_shape = self._op_input_shape(shape)
        if self.data_format == "channels_first":
            dy = b.reshape(dy, (op_shape[0],) + self.output_size + (1,))
        if self._op == "max":
            dx = b.adaptive_maxpool_backward(dy, argmax, op_shape)
        else:
            dx = b.adaptive_avgpool_backward(dy, op_shape)
        return b.reshape(dx, shape) if self.data_format == "channels_first" else dx

    def get_config(self):
        config = super().get_config()
        config.update(output_size=list(self.output_size), data_format=self.data_format)
        return config


class AdaptiveAveragePooling1D(_AdaptivePooling):
    """Keras's AdaptiveAveragePooling1D: (N, L, C) -> (N, output_size, C)."""

    _rank, _op = 1, "avg"


class AdaptiveAveragePooling2D(_AdaptivePooling):
    """Keras's AdaptiveAveragePooling2D: (N, H, W, C) -> (N, *output_size, C)."""

    _rank, _op = 2, "avg"


class AdaptiveAveragePooling3D(_AdaptivePooling):
    """Keras's AdaptiveAveragePooling3D: (N, D, H, W, C) -> (N, *output_size, C)."""

    _rank, _op = 3, "avg"


class AdaptiveMaxPooling1D(_AdaptivePooling):
    """Keras's AdaptiveMaxPooling1D: the max of each bin; its gradient goes to the first
    maximum of the bin."""

    _rank, _op = 1, "max"


class AdaptiveMaxPooling2D(_AdaptivePooling):
    _rank, _op = 2, "max"


class AdaptiveMaxPooling3D(_AdaptivePooling):
    _rank, _op = 3, "max"

