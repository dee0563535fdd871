"""Keras 3's convolutional LSTMs: ConvLSTM1D, ConvLSTM2D and ConvLSTM3D on (N, T, *spatial,
C), channels_last.

Weights as Keras stores them (its ``conv_lstm_cell``): ``kernel (*k, C, 4F)``,
``recurrent_kernel (*k, F, 4F)``, ``bias (4F,)``, gates i, f, c, o; ``unit_forget_bias``
starts the f slice of the bias at 1. One step is Keras's ConvLSTMCell:
z = conv(x_t, kernel, strides, padding, dilation) + bias + conv(h, recurrent_kernel, 'same',
stride 1); i, f, o = recurrent_activation(z_i, z_f, z_o); c = f*c + i*activation(z_c);
h = o*activation(c).

Speed: the input convolution of all time steps is ONE conv3d_forward over the N*T frames
(time folded into the batch; 1-D and 2-D as 3-D with unit axes), then the convlstm ops run
the whole recurrence natively (native/convlstm.pyx, opencl/convlstm.cl): the layer never
loops over time steps. Backward: convlstm_backward, then the input conv's kernel, bias and
input gradients over all frames at once.

``return_sequences``, ``return_state``, ``go_backwards`` (outputs in processing order, as
Keras), ``stateful``, ``initial_state`` and masks are Keras's: a masked step keeps the states
and repeats the previous output (zeros before the first unmasked step), or outputs zeros
with ``zero_output_for_mask``. ``dropout`` and ``recurrent_dropout`` draw Keras's four masks
each (one per gate, fixed over the steps; the input conv then runs once per gate, the
recurrent conv four times a step). Refused with a ValueError that says so: activations
outside the fused kernels' list, constraints and activity regularizers,
data_format='channels_first'.
"""

import operator

import numpy as np

from pynn import backend, initializers, regularizers, utils
from pynn.backend.operands.common import conv_output_size
from pynn.backend.operands.convlstm import CONVLSTM_ACTIVATIONS
from pynn.layers.base import Layer, data_format_arg, padding_arg, shape_str
from pynn.layers.recurrent import _call_with_states, _ForgetBiasOnes


def _ints(label, name, value, rank):
    """``rank`` positive ints (an int stands for all axes), Keras's standardize_tuple."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value),) * rank
    try:
        dims = tuple(operator.index(v) for v in value)
    except TypeError:
        dims = ()
    if len(dims) != rank or min(dims, default=0) < 1:
        raise ValueError(f"{label}: {name} must be a positive int or {rank} positive ints, "
                         f"got {value!r}")
    return dims


def _activation_name(label, name, value):
    found = value if isinstance(value, str) else getattr(value, "__name__", None)
    if value is None:
        found = "linear"
    if not isinstance(found, str) or found.lower() not in CONVLSTM_ACTIVATIONS:
        raise ValueError(f"{label}: {name} must be one of {CONVLSTM_ACTIVATIONS} (the fused "
                         f"ConvLSTM kernels'), got {value!r}")
    return found.lower()


class _ConvLSTM(Layer):
    """The shared ConvLSTM of rank RANK (Keras's keras.src.layers.rnn.conv_lstm.ConvLSTM)."""

    RANK = None
    supports_masking = True
    _mask_from_inputs_only = True

    def __init__(self, filters, kernel_size, strides=1, padding="valid", data_format=None,
                 dilation_rate=1, activation="tanh", recurrent_activation="sigmoid",
                 use_bias=True, kernel_initializer="glorot_uniform",
                 recurrent_initializer="orthogonal", bias_initializer="zeros",
                 unit_forget_bias=True, kernel_regularizer=None, recurrent_regularizer=None,
                 bias_regularizer=None, activity_regularizer=None, kernel_constraint=None,
                 recurrent_constraint=None, bias_constraint=None, dropout=0.0,
                 recurrent_dropout=0.0, seed=None, return_sequences=False, return_state=False,
                 go_backwards=False, stateful=False, unroll=False, zero_output_for_mask=False,
                 **kwargs):
        super().__init__(**kwargs)
        rank = self.RANK
        label = self._label = f"{type(self).__name__} '{self.name}'"
        data_format_arg(label, data_format)
        if isinstance(filters, bool) or not isinstance(filters, (int, np.integer)) \
                or filters < 1:
            raise ValueError(f"{label}: filters must be a positive int, got {filters!r}")
        for arg, value in (("activity_regularizer", activity_regularizer),
                           ("kernel_constraint", kernel_constraint),
                           ("recurrent_constraint", recurrent_constraint),
                           ("bias_constraint", bias_constraint)):
            if value is not None:
                raise ValueError(f"{label}: {arg}={value!r} is not supported by pynn's "
                                 f"ConvLSTM layers (only {arg}=None)")
        self.filters = int(filters)
        self.kernel_size = _ints(label, "kernel_size", kernel_size, rank)
        self.strides = _ints(label, "strides", strides, rank)
        self.padding = padding_arg(label, padding)
        self.dilation_rate = _ints(label, "dilation_rate", dilation_rate, rank)
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(f"{label}: strides > 1 together with dilation_rate > 1 is not "
                             f"supported (as in Keras), got strides={self.strides}, "
                             f"dilation_rate={self.dilation_rate}")
        self.activation = _activation_name(label, "activation", activation)
        self.recurrent_activation = _activation_name(label, "recurrent_activation",
                                                     recurrent_activation)
        self.use_bias = bool(use_bias)
        self.unit_forget_bias = bool(unit_forget_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.recurrent_initializer = initializers.get(recurrent_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = regularizers.get(recurrent_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        for arg, rate in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout)):
            if isinstance(rate, bool) or not isinstance(rate, (int, float, np.floating)) \
                    or not 0 <= rate <= 1:
                raise ValueError(f"{label}: {arg} must be a float in [0, 1], got {rate!r}")
        self.dropout = float(dropout)
        self.recurrent_dropout = float(recurrent_dropout)
        self.seed = seed
        self._seed = int(seed) if seed is not None else utils.new_seed()
        self._offset = 0
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.go_backwards = bool(go_backwards)
        self.stateful = bool(stateful)
        self.unroll = bool(unroll)   # one op runs the whole sequence either way
        self.zero_output_for_mask = bool(zero_output_for_mask)
        self._states = None
        self._n_inputs = 1

    # -- shapes -------------------------------------------------------------------------
    def _check_shape(self, input_shape):
        rank = self.RANK
        if len(input_shape) != rank + 3 or input_shape[-1] is None \
                or any(d is None for d in input_shape[2:-1]):
            spatial = ", ".join("D H W".split()[3 - rank:])
            raise ValueError(f"{self._label}: expected input shape (None, timesteps, "
                             f"{spatial}, channels) with known spatial sizes and channels, got "
                             f"{shape_str(input_shape)}")

    def _state_shape(self, input_shape):
        """(N, *output spatial, F): Keras's conv output size of one frame."""
        out = []
        for size, k, s, d in zip(input_shape[2:-1], self.kernel_size, self.strides,
                                 self.dilation_rate):
            _, o = conv_output_size(size, k, s, d, self.padding)
            if o <= 0:
                raise ValueError(f"{self._label}: kernel {self.kernel_size} with dilation "
                                 f"{self.dilation_rate} is larger than the input "
                                 f"{shape_str(input_shape)} under padding='valid'")
            out.append(o)
        return (input_shape[0], *out, self.filters)

    def build(self, input_shape):
        if isinstance(input_shape, list):   # [x, h0, c0]
            self._n_inputs = len(input_shape)
            input_shape = input_shape[0]
        self._check_shape(input_shape)
        g = 4 * self.filters
        self.kernel = self.add_weight("kernel", (*self.kernel_size, input_shape[-1], g),
                                      self.kernel_initializer, self.kernel_regularizer)
        self.recurrent_kernel = self.add_weight(
            "recurrent_kernel", (*self.kernel_size, self.filters, g),
            self.recurrent_initializer, self.recurrent_regularizer)
        bias_init = (_ForgetBiasOnes(self.bias_initializer, self.filters)
                     if self.unit_forget_bias else self.bias_initializer)
        self.bias = (self.add_weight("bias", (g,), bias_init, self.bias_regularizer)
                     if self.use_bias else None)
        Layer.build(self, input_shape)
        # Keras checks each step's frame, not the step count: another call may have others.
        self.input_shape = (None, None) + tuple(input_shape[2:])
        if self._n_inputs > 1:
            state = (None,) + self._state_shape(input_shape)[1:]
            self.input_shape = [self.input_shape] + [state] * (self._n_inputs - 1)

    def compute_output_shape(self, input_shape):
        if isinstance(input_shape, list):
            input_shape = input_shape[0]
        self._check_shape(input_shape)
        state = self._state_shape(input_shape)
        out = (state[0], input_shape[1]) + state[1:] if self.return_sequences else state
        return [out, state, state] if self.return_state else out

    def compute_mask(self, inputs, mask=None):
        if isinstance(mask, list):
            mask = mask[0]
        out = mask if self.return_sequences else None
        return [out, None, None] if self.return_state else out

    def __call__(self, inputs, training=False, mask=None, initial_state=None, **kwargs):
        """Keras's call arguments: ``initial_state`` [h0, c0], each (N, *output spatial, F);
        in the functional API they become inputs."""
        return _call_with_states(self, 2, inputs, training, mask, initial_state, kwargs)

    def reset_states(self, states=None):
        """Stateful layers: back to zero states, or to ``states`` ([h, c])."""
        if not self.stateful:
            raise AttributeError(f"{self._label}: reset_states() needs stateful=True")
        if states is None:
            self._states = None
            return
        b = backend.current()
        self._states = [b.asarray(np.asarray(s, dtype=self.dtype), self.dtype) for s in states]

    @property
    def states(self):
        return self._states

    # -- compute ------------------------------------------------------------------------
    def _pad3(self, dims, fill=1):
        return (fill,) * (3 - self.RANK) + tuple(dims)

    def _to3(self, a, lead):
        """(*lead, *spatial(RANK), C) -> (*lead, D, H, W, C) for the 3-D ops."""
        b = backend.current()
        return b.reshape(a, tuple(a.shape[:lead]) + self._pad3(a.shape[lead:-1])
                         + (a.shape[-1],))

    def _from3(self, a, lead):
        b = backend.current()
        shape = tuple(a.shape)
        return b.reshape(a, shape[:lead] + shape[lead + 3 - self.RANK:])

    def _mask(self, mask, n, t):
        """Keras's (N, T) step mask as the op's 1/0 floats, or None when nothing is hidden."""
        if mask is None:
            return None
        b = backend.current()
        m = np.asarray(b.to_numpy(mask) if not isinstance(mask, np.ndarray) else mask)
        if m.shape != (n, t):
            raise ValueError(f"{self._label}: mask must have shape (batch, timesteps) = "
                             f"{(n, t)}, got {m.shape}")
        if m.all():
            return None
        return b.asarray(m.astype(self.dtype), self.dtype)

    def runtime_state(self):
        return {"offset": self._offset} if self._offset else {}

    def set_runtime_state(self, state):
        self._offset = int(state.get("offset", 0))

    def _dropout_scale(self, b, shape, rate=None):
        """Keras's dropout masks: 0 or 1/(1-rate) per value (input dropout's rate unless
        ``rate``)."""
        ones = b.full(shape, 1.0, self.dtype)
        scale, _ = b.dropout_forward(ones, self.dropout if rate is None else rate, self._seed,
                                     self._offset)
        self._offset += int(np.prod(shape))
        return scale

    def _conv(self, b, frames, kernel, bias):
        xw, _ = b.conv3d_forward(frames, kernel, bias, self._pad3(self.strides), self.padding,
                                 self._pad3(self.dilation_rate), 1, "linear", 0.0)
        return xw

    def _input_projection(self, b, x, training):
        """-> (xw (N*T, *out, 4F), saved for backward): ONE conv over the N*T frames; with
        input dropout while training, Keras's four masks (one per gate, fixed over the
        steps) give four convs of the masked frames, each with its gate's kernel slice."""
        n, t = int(x.shape[0]), int(x.shape[1])
        frames = self._to3(b.reshape(x, (n * t,) + tuple(x.shape[2:])), 1)
        kernel3 = b.reshape(self.kernel.value, self._pad3(self.kernel.shape[:-2])
                            + tuple(self.kernel.shape[-2:]))
        bias = self.bias.value if self.use_bias else None
        if not (training and 0 < self.dropout < 1):
            return self._conv(b, frames, kernel3, bias), (frames, kernel3, None)
        f = self.filters
        kernels = b.concatenate_backward(kernel3, [f] * 4, -1)
        biases = b.concatenate_backward(bias, [f] * 4, -1) if bias is not None else [None] * 4
        per_frame = int(np.prod(x.shape[2:]))
        sequence = b.reshape(x, (n, t, per_frame))
        masked, parts, scales = [], [], []
        for gate in range(4):   # Keras's four gate masks (never a loop over steps)
            scale = self._dropout_scale(b, (n, per_frame))
            xg = self._to3(b.reshape(b.sequence_scale(sequence, scale),
                                     (n * t,) + tuple(x.shape[2:])), 1)
            parts.append(self._conv(b, xg, kernels[gate], biases[gate]))
            masked.append(xg)
            scales.append(scale)
        return b.concatenate_forward(parts, -1), (masked, kernels, scales)

    def call(self, x, training=False, mask=None):
        b = backend.current()
        states = None
        if isinstance(x, (list, tuple)):
            x, states = x[0], list(x[1:])
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        n, t = int(x.shape[0]), int(x.shape[1])
        mask = self._mask(mask, n, t)
        if t == 0:
            raise ValueError(f"{self._label}: the input has 0 time steps, got shape "
                             f"{tuple(x.shape)}")
        if states is None and self.stateful and self._states is not None:
            if self._states[0].shape[0] != n:
                raise ValueError(f"{self._label}: a stateful layer keeps batch size "
                                 f"{self._states[0].shape[0]}, got a batch of {n}; call "
                                 f"reset_states() first")
            states = self._states
        xw, inputs = self._input_projection(b, x, training)
        xw = b.reshape(xw, (n, t) + tuple(xw.shape[1:]))
        h0 = c0 = None
        if states is not None:
            state_shape = (n,) + tuple(xw.shape[2:-1]) + (self.filters,)
            h0, c0 = (b.reshape(s, state_shape) for s in states)
        rk3 = b.reshape(self.recurrent_kernel.value,
                        self._pad3(self.kernel_size) + (self.filters, 4 * self.filters))
        rdrop = None
        if training and 0 < self.recurrent_dropout < 1:
            # Keras's four recurrent masks, one per gate, fixed over the steps
            rdrop = self._dropout_scale(b, (4, n) + tuple(xw.shape[2:-1]) + (self.filters,),
                                        self.recurrent_dropout)
        y, h_last, c_last, cache = b.convlstm_forward(
            xw, rk3, h0, c0, mask, rdrop, self.activation, self.recurrent_activation,
            self.return_sequences, self.go_backwards, self.zero_output_for_mask)
        if self.stateful:
            self._states = [h_last, c_last]
        if training:
            self._cache = (inputs, rk3, cache, tuple(x.shape), tuple(xw.shape))
        y = self._from3(y, 2 if self.return_sequences else 1)
        if self.return_state:
            return [y, self._from3(h_last, 1), self._from3(c_last, 1)]
        return y

    def backward(self, dy):
        if self._cache is None:
            raise RuntimeError(f"{self._label}: backward() needs a preceding "
                               f"call(x, training=True)")
        b = backend.current()
        inputs, rk3, op_cache, x_shape, xw_shape = self._cache
        self._cache = None
        n, t = x_shape[:2]
        state3 = (n,) + tuple(xw_shape[2:-1]) + (self.filters,)
        dh_last = dc_last = None
        if self.return_state:
            dy, dh_last, dc_last = list(dy)
            dh_last = None if dh_last is None else b.reshape(dh_last, state3)
            dc_last = None if dc_last is None else b.reshape(dc_last, state3)
            if dy is None:
                dy = b.zeros(((n, t) if self.return_sequences else (n,))
                             + tuple(xw_shape[2:-1]) + (self.filters,), self.dtype)
        dy = b.reshape(dy, ((n, t) if self.return_sequences else (n,)) + state3[1:])
        dxw, drk, dh0, dc0 = b.convlstm_backward(
            dy, dh_last, dc_last, rk3, op_cache, self.activation, self.recurrent_activation,
            self.return_sequences, self.go_backwards)
        dxw = b.reshape(dxw, (n * t,) + tuple(xw_shape[2:]))
        self.recurrent_kernel.grad = b.reshape(drk, tuple(self.recurrent_kernel.shape))
        if self.use_bias:
            self.bias.grad = b.bias_backward(b.reshape(dxw, (-1, 4 * self.filters)))
        dk, dx = self._input_projection_backward(b, dxw, inputs, x_shape)
        self.kernel.grad = b.reshape(dk, tuple(self.kernel.shape))
        if self._n_inputs > 1:
            return [dx, self._from3(dh0, 1), self._from3(dc0, 1)]
        return dx

    def _input_projection_backward(self, b, dxw, inputs, x_shape):
        """-> (dkernel as (*k3, C, 4F), dx or None) of _input_projection."""
        geometry = (self._pad3(self.strides), self.padding, self._pad3(self.dilation_rate), 1)
        frames, kernels, scales = inputs
        if scales is None:
            dk = b.conv3d_backward_weight(frames, dxw, tuple(kernels.shape), *geometry)
            dx = None
            if self.needs_input_grad:
                dx = b.reshape(b.conv3d_backward_input(dxw, kernels, tuple(frames.shape),
                                                       *geometry), x_shape)
            return dk, dx
        dparts = b.concatenate_backward(dxw, [self.filters] * 4, -1)
        dks, dx = [], None
        n, t = x_shape[:2]
        for xg, kernel, scale, dpart in zip(frames, kernels, scales, dparts):
            dks.append(b.conv3d_backward_weight(xg, dpart, tuple(kernel.shape), *geometry))
            if self.needs_input_grad:
                dxg = b.conv3d_backward_input(dpart, kernel, tuple(xg.shape), *geometry)
                dxg = b.sequence_scale(b.reshape(dxg, (n, t, -1)), scale)
                if dx is None:
                    dx = dxg
                else:
                    b.add_inplace(dx, dxg)
        return b.concatenate_forward(dks, -1), (None if dx is None else b.reshape(dx, x_shape))

    def inference_macs(self, x):
        """Multiply-adds of a call: the input conv of every frame and the recurrent conv of
        every step (pynn.inference sizes a plan's threads by them)."""
        if isinstance(x, (list, tuple)):
            x = x[0]
        state = self._state_shape((None,) + tuple(int(d) for d in x.shape[1:]))
        sites = int(np.prod(state[1:-1]))
        taps = int(np.prod(self.kernel_size))
        n, t = int(x.shape[0]), int(x.shape[1])
        return n * t * sites * taps * (int(x.shape[-1]) + self.filters) * 4 * self.filters

    # -- config ---------------------------------------------------------------------------
    def get_config(self):
        config = super().get_config()
        config.update(
            return_sequences=self.return_sequences, return_state=self.return_state,
            go_backwards=self.go_backwards, stateful=self.stateful, unroll=self.unroll,
            zero_output_for_mask=self.zero_output_for_mask, filters=self.filters,
            kernel_size=list(self.kernel_size), strides=list(self.strides),
            padding=self.padding, data_format="channels_last",
            dilation_rate=list(self.dilation_rate), activation=self.activation,
            recurrent_activation=self.recurrent_activation, use_bias=self.use_bias,
            kernel_initializer=initializers.serialize(self.kernel_initializer),
            recurrent_initializer=initializers.serialize(self.recurrent_initializer),
            bias_initializer=initializers.serialize(self.bias_initializer),
            unit_forget_bias=self.unit_forget_bias,
            kernel_regularizer=regularizers.serialize(self.kernel_regularizer),
            recurrent_regularizer=regularizers.serialize(self.recurrent_regularizer),
            bias_regularizer=regularizers.serialize(self.bias_regularizer),
            activity_regularizer=None, kernel_constraint=None, recurrent_constraint=None,
            bias_constraint=None, dropout=self.dropout,
            recurrent_dropout=self.recurrent_dropout, seed=self.seed,
        )
        return config


class ConvLSTM1D(_ConvLSTM):
    """Keras's ConvLSTM1D: (N, T, W, C) -> (N, [T,] WO, F)."""

    RANK = 1


class ConvLSTM2D(_ConvLSTM):
    """Keras's ConvLSTM2D: (N, T, H, W, C) -> (N, [T,] HO, WO, F)."""

    RANK = 2


class ConvLSTM3D(_ConvLSTM):
    """Keras's ConvLSTM3D: (N, T, D, H, W, C) -> (N, [T,] DO, HO, WO, F)."""

    RANK = 3
