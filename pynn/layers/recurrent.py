"""SimpleRNN, LSTM and GRU with Keras 3's arguments, weight layouts and equations.

Input (N, T, C) -> (N, T, U) with ``return_sequences``, else the last output (N, U). Weights
``kernel (C, k*U)``, ``recurrent_kernel (U, k*U)``, ``bias (k*U,)`` (GRU with reset_after:
``(2, 3U)``); gate order LSTM i, f, c, o and GRU z, r, h, as Keras stores them, so
``set_weights(keras_layer.get_weights())`` reproduces Keras's outputs. The initial state is
zero. ``go_backwards`` reads the sequence from its end and returns the outputs in that
processing order, as Keras does.

The whole sequence is one backend op (``<cell>_forward`` / ``<cell>_backward``): the layer
never loops over time steps. Not supported (a ValueError says so): dropout,
recurrent_dropout, stateful, return_state, masking, constraints, activity regularizers.
"""

import numpy as np

from pynn import backend, initializers, regularizers
from pynn.backend.api import RNN_ACTIVATIONS
from pynn.layers.base import Layer, shape_str


def _activation_arg(label, what, value):
    name = "linear" if value is None else value
    if not isinstance(name, str) or name.lower() not in RNN_ACTIVATIONS:
        raise ValueError(f"{label}: {what} must be one of {RNN_ACTIVATIONS} or None, got "
                         f"{value!r}")
    return name.lower()


class _ForgetBiasOnes(initializers.Initializer):
    """Keras's ``unit_forget_bias``: the LSTM bias from ``base``, its f slice set to ones."""

    def __init__(self, base, units):
        self.base, self.units = base, units

    def __call__(self, shape, dtype="float32"):
        u = self.units
        return np.concatenate([self.base((u,), dtype), np.ones((u,), dtype=dtype),
                               self.base((2 * u,), dtype)]).astype(dtype)


class _RNN(Layer):
    """The shared part of the three layers; subclasses set GATES and the op calls."""

    GATES = 1

    def __init__(self, units, activation="tanh", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", kernel_regularizer=None, recurrent_regularizer=None,
                 bias_regularizer=None, activity_regularizer=None, kernel_constraint=None,
                 recurrent_constraint=None, bias_constraint=None, dropout=0.0,
                 recurrent_dropout=0.0, return_sequences=False, return_state=False,
                 go_backwards=False, stateful=False, unroll=False, seed=None, **kwargs):
        super().__init__(**kwargs)
        label = f"{type(self).__name__} '{self.name}'"
        if isinstance(units, bool) or not isinstance(units, (int, np.integer)) or units < 1:
            raise ValueError(f"{label}: units must be a positive int, got {units!r}")
        unsupported = {
            "dropout": (dropout, 0.0), "recurrent_dropout": (recurrent_dropout, 0.0),
            "return_state": (return_state, False), "stateful": (stateful, False),
            "activity_regularizer": (activity_regularizer, None),
            "kernel_constraint": (kernel_constraint, None),
            "recurrent_constraint": (recurrent_constraint, None),
            "bias_constraint": (bias_constraint, None),
        }
        for arg, (value, default) in unsupported.items():
            if value != default:
                raise ValueError(f"{label}: {arg}={value!r} is not supported by pynn's "
                                 f"recurrent layers (only {arg}={default!r})")
        self.units = int(units)
        self.activation = _activation_arg(label, "activation", activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.recurrent_initializer = initializers.get(recurrent_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = regularizers.get(recurrent_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.return_sequences = bool(return_sequences)
        self.go_backwards = bool(go_backwards)
        # Unrolling changes nothing numerically here: one op runs the whole sequence.
        self.unroll = bool(unroll)
        self.seed = seed

    # -- weights ------------------------------------------------------------------------
    def _bias_shape(self):
        return (self.GATES * self.units,)

    def _bias_init(self):
        return self.bias_initializer

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(f"{type(self).__name__} '{self.name}': expected input shape "
                             f"(None, timesteps, features), got {shape_str(input_shape)}")
        g = self.GATES * self.units
        self.kernel = self.add_weight("kernel", (input_shape[-1], g), self.kernel_initializer,
                                      self.kernel_regularizer)
        self.recurrent_kernel = self.add_weight("recurrent_kernel", (self.units, g),
                                                self.recurrent_initializer,
                                                self.recurrent_regularizer)
        self.bias = (self.add_weight("bias", self._bias_shape(), self._bias_init(),
                                     self.bias_regularizer) if self.use_bias else None)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        if self.return_sequences:
            return (input_shape[0], input_shape[1], self.units)
        return (input_shape[0], self.units)

    # -- compute --------------------------------------------------------------------------
    def _options(self):
        """Op arguments between the cache/bias and return_sequences (cell-specific)."""
        return (self.activation,)

    def _ops(self):
        raise NotImplementedError

    def call(self, x, training=False):
        if x.shape[1] == 0:
            raise ValueError(f"{type(self).__name__} '{self.name}': the input has 0 time steps, "
                             f"got shape {tuple(x.shape)}")
        forward, _ = self._ops()
        y, cache = forward(x, self.kernel.value, self.recurrent_kernel.value,
                           self.bias.value if self.use_bias else None, *self._options(),
                           self.return_sequences, self.go_backwards)
        self._cache = (x, cache) if training else None
        return y

    def backward(self, dy):
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__} '{self.name}': backward() needs a "
                               f"preceding call(x, training=True)")
        x, cache = self._cache
        self._cache = None
        _, backward_op = self._ops()
        dx, dkernel, drecurrent, dbias = backward_op(
            dy, x, self.kernel.value, self.recurrent_kernel.value, cache, *self._options(),
            self.return_sequences, self.go_backwards, self.needs_input_grad)
        self.kernel.grad = dkernel
        self.recurrent_kernel.grad = drecurrent
        if self.use_bias:
            self.bias.grad = dbias
        return dx

    # -- config ---------------------------------------------------------------------------
    def get_config(self):
        config = super().get_config()
        config.update(
            units=self.units, activation=self.activation, use_bias=self.use_bias,
            kernel_initializer=initializers.serialize(self.kernel_initializer),
            recurrent_initializer=initializers.serialize(self.recurrent_initializer),
            bias_initializer=initializers.serialize(self.bias_initializer),
            kernel_regularizer=regularizers.serialize(self.kernel_regularizer),
            recurrent_regularizer=regularizers.serialize(self.recurrent_regularizer),
            bias_regularizer=regularizers.serialize(self.bias_regularizer),
            return_sequences=self.return_sequences, go_backwards=self.go_backwards,
            unroll=self.unroll, seed=self.seed,
        )
        return config


class SimpleRNN(_RNN):
    """h_t = activation(x_t @ kernel + h_{t-1} @ recurrent_kernel + bias)."""

    GATES = 1

    def _ops(self):
        b = backend.current()
        return b.simple_rnn_forward, b.simple_rnn_backward


class LSTM(_RNN):
    """Gates i, f, c, o: c_t = f*c_{t-1} + i*act(z_c), h_t = o*act(c_t)."""

    GATES = 4

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid",
                 unit_forget_bias=True, use_cudnn="auto", **kwargs):
        super().__init__(units, activation=activation, **kwargs)
        self.recurrent_activation = _activation_arg(f"LSTM '{self.name}'",
                                                    "recurrent_activation",
                                                    recurrent_activation)
        self.unit_forget_bias = bool(unit_forget_bias)
        self.use_cudnn = use_cudnn  # accepted for Keras compatibility; no effect here

    def _bias_init(self):
        if self.unit_forget_bias:
            return _ForgetBiasOnes(self.bias_initializer, self.units)
        return self.bias_initializer

    def _options(self):
        return (self.activation, self.recurrent_activation)

    def _ops(self):
        b = backend.current()
        return b.lstm_forward, b.lstm_backward

    def get_config(self):
        config = super().get_config()
        config.update(recurrent_activation=self.recurrent_activation,
                      unit_forget_bias=self.unit_forget_bias)
        return config


class GRU(_RNN):
    """Gates z, r, h: h_t = z*h_{t-1} + (1-z)*hh, reset gate after (default) or before the
    recurrent product."""

    GATES = 3

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid",
                 reset_after=True, use_cudnn="auto", **kwargs):
        super().__init__(units, activation=activation, **kwargs)
        self.recurrent_activation = _activation_arg(f"GRU '{self.name}'",
                                                    "recurrent_activation",
                                                    recurrent_activation)
        self.reset_after = bool(reset_after)
        self.use_cudnn = use_cudnn  # accepted for Keras compatibility; no effect here

    def _bias_shape(self):
        return (2, 3 * self.units) if self.reset_after else (3 * self.units,)

    def _options(self):
        return (self.activation, self.recurrent_activation, self.reset_after)

    def _ops(self):
        b = backend.current()
        return b.gru_forward, b.gru_backward

    def get_config(self):
        config = super().get_config()
        config.update(recurrent_activation=self.recurrent_activation,
                      reset_after=self.reset_after)
        return config
