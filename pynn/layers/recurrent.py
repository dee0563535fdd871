"""SimpleRNN, LSTM and GRU with Keras 3's arguments, weight layouts and equations.

Input (N, T, C) -> (N, T, U) with ``return_sequences``, else the last output (N, U). Weights
``kernel (C, k*U)``, ``recurrent_kernel (U, k*U)``, ``bias (k*U,)`` (GRU with reset_after:
``(2, 3U)``); gate order LSTM i, f, c, o and GRU z, r, h, as Keras stores them, so
``set_weights(keras_layer.get_weights())`` reproduces Keras's outputs. The initial state is
zero. ``go_backwards`` reads the sequence from its end and returns the outputs in that
processing order, as Keras does.

The whole sequence is one backend op: the layer never loops over time steps. The plain case
(zero initial state, no mask, no dropout, no returned state) runs the tuned
``<cell>_forward`` / ``<cell>_backward`` ops; everything else (Keras's mask, ``initial_state``,
``stateful``, ``return_state``, ``dropout`` / ``recurrent_dropout``) runs the general
``recurrence_forward`` / ``recurrence_backward`` ops on the input projection that one dense
op makes for all N*T rows. Masks follow Keras: a masked step keeps the states and repeats the
previous output. Dropout masks are fixed over the time steps (Keras): one input mask (Keras's
implementation 2 placement) and one recurrent mask per gate block (implementation 1, which
Keras switches to whenever recurrent_dropout is set). Not supported (a ValueError says so):
constraints, activity regularizers.

``activation=`` / ``recurrent_activation=`` also take a function (issue 13): one pynn knows
(pynn.ops.tanh, Keras's names) selects the fused kernels; any other makes the layer run its
ops cell (``_OpsCell``: the same gate math and weights in pynn.ops, stepped by RNN's
user-cell loop and differentiated by autodiff), with masks, return_sequences, return_state
and go_backwards but not stateful, dropout or initial_state. Saving needs the function
registered (``register_serializable``), as for Dense.
"""

import contextlib
import types

import numpy as np

from pynn import autodiff, backend, initializers, regularizers, utils
from pynn.backend.api import ACTIVATION_ALIASES, RNN_ACTIVATIONS
from pynn.layers.base import Layer, shape_str
from pynn.layers.symbolic import is_symbolic


def _activation_arg(label, what, value):
    """A name of RNN_ACTIVATIONS (a fused kernel), or a callable: one named like such an
    activation (pynn.ops.tanh, keras.activations.sigmoid) becomes that name, as Dense's
    activation_config does; any other stays a callable and the layer runs its ops cell."""
    if callable(value) and not isinstance(value, str):
        named = getattr(value, "__name__", "")
        named = ACTIVATION_ALIASES.get(named, named)
        if named in RNN_ACTIVATIONS:
            return named
        if isinstance(value, (types.BuiltinFunctionType, type)):
            # max, abs, a class: not a function of a tensor built from pynn.ops
            raise ValueError(f"{label}: {what} {value!r} is not an activation: give a name "  # noqa: TRY004
                             f"from {RNN_ACTIVATIONS} or a function written with pynn.ops")
        return value
    if isinstance(value, str) and ">" in value:
        # A saved layer's registered custom activation ("package>name").
        from pynn._registry import lookup_serializable
        return _activation_arg(label, what, lookup_serializable(value, what))
    name = "linear" if value is None else value
    if isinstance(name, str) and name.lower() in OPS_CELL_NAMES:
        return name.lower()
    if not isinstance(name, str) or name.lower() not in RNN_ACTIVATIONS:
        raise ValueError(f"{label}: {what} must be one of {RNN_ACTIVATIONS}, a function "
                         f"written with pynn.ops or None, got {value!r}")
    return name.lower()


# name -> the pynn.ops function of each RNN_ACTIVATIONS name, filled in by pynn.ops (layers
# do not import pynn.ops: it imports them), for the ops cell's named activations.
ACTIVATION_FUNCTIONS = {"linear": lambda t: t}
# -- Keras 3's remaining activations that Keras's recurrent layers take but the fused kernels
# cannot (their derivative needs the input, or a whole row): by name, in the ops cell, saved
# by name. (glu would halve the state.)
OPS_CELL_NAMES = ("tanh_shrink", "log_softmax", "sparsemax")


def _ops_activation(activation):
    """The pynn.ops function of an activation name (the fused kernels' math), or the
    callable itself."""
    return activation if callable(activation) else ACTIVATION_FUNCTIONS[activation]


class _OpsCell:
    """SimpleRNN / LSTM / GRU's step written with pynn.ops, for a layer given an activation
    the fused kernels do not have: the same equations and the layer's own kernel,
    recurrent_kernel and bias (Keras's layout), so weights, saving and get_weights are the
    built-in layer's. RNN's user-cell loop runs it and autodiff differentiates it."""

    def __init__(self, layer):
        self.layer = layer

    def call(self, x, states):
        # Python's operators on Tensors and Variables are pynn.ops (installed by pynn.ops).
        layer = self.layer
        u = layer.units
        act = _ops_activation(layer.activation)
        ract = _ops_activation(getattr(layer, "recurrent_activation", "sigmoid"))
        kernel, recurrent = layer.kernel, layer.recurrent_kernel
        bias = layer.bias if layer.use_bias else None
        states = [v if type(v) is autodiff.Tensor else autodiff.Tensor(v) for v in states]

        def gate(z, k):
            return z[:, k * u:(k + 1) * u]

        h = states[0]
        if layer.CELL == "simple_rnn":
            z = x @ kernel + h @ recurrent
            h = act(z + bias if bias is not None else z)
            return h, [h]
        if layer.CELL == "lstm":
            z = x @ kernel + h @ recurrent
            z = z + bias if bias is not None else z
            i, f = ract(gate(z, 0)), ract(gate(z, 1))
            c = f * states[1] + i * act(gate(z, 2))
            h = ract(gate(z, 3)) * act(c)
            return h, [h, c]
        # GRU, gates z, r, h: reset_after applies r to the recurrent product (with its own
        # bias row), reset-before to the state ahead of it.
        reset_after = layer.reset_after
        xw = x @ kernel
        if bias is not None:
            xw = xw + (bias[0] if reset_after else bias)
        if reset_after:
            hw = h @ recurrent
            if bias is not None:
                hw = hw + bias[1]
            zg = ract(gate(xw, 0) + gate(hw, 0))
            r = ract(gate(xw, 1) + gate(hw, 1))
            hh = act(gate(xw, 2) + r * gate(hw, 2))
        else:
            hw = h @ recurrent[:, :2 * u]
            zg = ract(gate(xw, 0) + gate(hw, 0))
            r = ract(gate(xw, 1) + gate(hw, 1))
            hh = act(gate(xw, 2) + (r * h) @ recurrent[:, 2 * u:])
        h = zg * h + (1.0 - zg) * hh
        return h, [h]


def unmasked_steps(x, mask):
    """The time steps a mask keeps, when x (1, T, C) is one sample on the host and its
    mask (1, T) keeps some but not all: then the recurrence over those steps alone gives
    the masked recurrence's final state (a masked step only carries the states on). None
    otherwise (a batch, whose rows keep different steps; nothing kept; a device array).
    A padded request then costs its real length (its kept steps through the plain op, or
    a plan's packed one-row path), and gives the bits of the same sequence unpadded."""
    if type(x) is not np.ndarray or type(mask) is not np.ndarray or x.ndim != 3 or \
            len(x) != 1 or mask.shape != x.shape[:2]:
        return None
    kept = np.flatnonzero(mask[0])
    if len(kept) == 0 or len(kept) == x.shape[1]:
        return None
    return kept


def expand_unmasked(y, mask, go_backwards, zero_output_for_mask):
    """Sequence outputs y (1, K, U) of the K kept steps as the masked recurrence gives
    all T: in processing order (reversed with go_backwards), a masked step repeats the
    previous output (zeros before the first kept step), or is zeros with
    zero_output_for_mask."""
    keep = mask[0, ::-1] if go_backwards else mask[0]
    keep = keep.astype(bool)
    before = np.cumsum(keep)  # kept steps up to and including each step
    padded = np.zeros((1, y.shape[1] + 1, y.shape[2]), y.dtype)
    padded[:, 1:] = y
    out = padded[:, before]
    if zero_output_for_mask:
        out[:, ~keep] = 0
    return out


def _call_with_states(layer, n_states, inputs, training, mask, initial_state, kwargs):
    """A recurrent layer's __call__: ``initial_state`` joins the inputs (a list), so the
    functional API records the states as the node's other inputs and backward returns their
    gradients; ``mask`` goes to call."""
    label = f"{type(layer).__name__} '{layer.name}'"
    if initial_state is not None:
        states = (list(initial_state) if isinstance(initial_state, (list, tuple))
                  else [initial_state])
        if len(states) != n_states:
            raise ValueError(f"{label}: initial_state expects {n_states} state tensors "
                             f"(batch, units), got {len(states)}")
        inputs = [inputs] + states
    if is_symbolic(inputs):
        if mask is not None:
            kwargs["mask"] = mask
        return Layer.__call__(layer, inputs, training=training, **kwargs)
    if kwargs:
        raise TypeError(f"{label}: unexpected call arguments {sorted(kwargs)}")
    several = isinstance(inputs, list)
    if not layer.built:
        layer.build([(None,) + tuple(x.shape[1:]) for x in inputs] if several
                    else (None,) + tuple(inputs.shape[1:]))
    layer.check_input(inputs)
    return layer.call(inputs, training=training, mask=mask)


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

    _steps_free = True  # another call may have other steps (pynn.layers.symbolic)

    _mask_from_inputs_only = True  # compute_mask passes an input mask on, makes none

    GATES = 1

    def __init__(self, units, activation="tanh", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", kernel_regularizer=None, recurrent_regularizer=None,
                 bias_regularizer=None, activity_regularizer=None, kernel_constraint=None,
                 recurrent_constraint=None, bias_constraint=None, dropout=0.0,
                 recurrent_dropout=0.0, return_sequences=False, return_state=False,
                 go_backwards=False, stateful=False, unroll=False, seed=None,
                 zero_output_for_mask=False, **kwargs):
        super().__init__(**kwargs)
        label = f"{type(self).__name__} '{self.name}'"
        if isinstance(units, bool) or not isinstance(units, (int, np.integer)) or units < 1:
            raise ValueError(f"{label}: units must be a positive int, got {units!r}")
        unsupported = {
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
        self.return_state = bool(return_state)
        self.go_backwards = bool(go_backwards)
        self.stateful = bool(stateful)
        # Unrolling changes nothing numerically here: one op runs the whole sequence.
        self.unroll = bool(unroll)
        for arg, rate in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout)):
            if isinstance(rate, bool) or not isinstance(rate, (int, float, np.floating)) \
                    or not 0 <= rate < 1:
                raise ValueError(f"{label}: {arg} must be a float in [0, 1), got {rate!r}")
        self.dropout = float(dropout)
        self.recurrent_dropout = float(recurrent_dropout)
        self.seed = seed
        self._seed = int(seed) if seed is not None else utils.new_seed()
        self._offset = 0
        # Keras's RNN argument (Bidirectional sets it when returning sequences): masked steps
        # output zeros instead of repeating the previous output.
        self.zero_output_for_mask = bool(zero_output_for_mask)
        self._states = None  # stateful: the final states of the last batch
        self._n_inputs = 1   # 1 + the initial state tensors the layer was built with

    supports_masking = True
    CELL = None

    @property
    def _n_states(self):
        return 2 if self.GATES == 4 else 1

    # -- weights ------------------------------------------------------------------------
    def _bias_shape(self):
        return (self.GATES * self.units,)

    def _bias_init(self):
        return self.bias_initializer

    def build(self, input_shape):
        if isinstance(input_shape, list):  # [x, *initial states]
            self._n_inputs = len(input_shape)
            input_shape = input_shape[0]
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
        if self._callable_activation():
            self._check_callable_options()
            self.cell = _OpsCell(self)
            self._state_sizes = [self.units] * self._n_states
        Layer.build(self, input_shape)
        if self._n_inputs > 1:
            self.input_shape = [tuple(input_shape)] + [(None, self.units)] * (self._n_inputs - 1)

    def compute_output_shape(self, input_shape):
        if isinstance(input_shape, list):
            input_shape = input_shape[0]
        if self.return_sequences:
            out = (input_shape[0], input_shape[1], self.units)
        else:
            out = (input_shape[0], self.units)
        if self.return_state:
            return [out] + [(input_shape[0], self.units)] * self._n_states
        return out

    def compute_mask(self, inputs, mask=None):
        if isinstance(mask, list):
            mask = mask[0]
        out = mask if self.return_sequences else None
        return [out] + [None] * self._n_states if self.return_state else out

    def __call__(self, inputs, training=False, mask=None, initial_state=None, **kwargs):
        """Keras's call arguments: ``mask`` (N, T) of booleans, ``initial_state`` a list of
        (N, U) states (h, plus c for LSTM); in the functional API they become inputs."""
        return _call_with_states(self, self._n_states, inputs, training, mask, initial_state,
                                 kwargs)

    def reset_states(self, states=None):
        """Stateful layers: back to zero states, or to ``states`` (a list of (N, U) arrays)."""
        if not self.stateful:
            raise AttributeError(f"{type(self).__name__} '{self.name}': reset_states() needs "
                                 f"stateful=True")
        if states is None:
            self._states = None
            return
        b = backend.current()
        self._states = [b.asarray(np.asarray(s, dtype=self.dtype), self.dtype) for s in states]

    @property
    def states(self):
        return self._states

    def runtime_state(self):
        return {"offset": self._offset} if self._offset else {}

    def set_runtime_state(self, state):
        self._offset = int(state.get("offset", 0))

    # -- compute --------------------------------------------------------------------------
    def _options(self):
        """Op arguments between the cache/bias and return_sequences (cell-specific)."""
        return (self.activation,)

    def _ops(self):
        raise NotImplementedError

    # -- a callable activation with no fused kernel: the ops cell (issue 13) --------------
    def _callable_activation(self):
        return any(callable(a) or a in OPS_CELL_NAMES
                   for a in (self.activation, getattr(self, "recurrent_activation", None)))

    def _check_callable_options(self):
        label = f"{type(self).__name__} '{self.name}'"
        for arg, on in (("stateful", self.stateful), ("dropout", self.dropout > 0),
                        ("recurrent_dropout", self.recurrent_dropout > 0)):
            if on:
                raise ValueError(f"{label}: {arg} with an activation function pynn has no "
                                 f"fused kernel for is not supported (it runs step by step "
                                 f"through pynn.ops); use a named activation")

    def _call_ops_cell(self, x, states, training, mask):
        if states is not None:
            raise ValueError(f"{type(self).__name__} '{self.name}': initial_state with an "
                             f"activation function pynn has no fused kernel for is not "
                             f"supported")
        # RNN's user-cell loop, on this layer's cell and state sizes (set by build).
        return RNN._call_user_cell(self, x, training, mask)

    def call(self, x, training=False, mask=None):
        label = f"{type(self).__name__} '{self.name}'"
        states = None
        if isinstance(x, (list, tuple)):
            x, states = x[0], list(x[1:])
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        if self._callable_activation():
            return self._call_ops_cell(x, states, training, mask)
        if x.shape[1] == 0:
            raise ValueError(f"{label}: the input has 0 time steps, got shape {tuple(x.shape)}")
        if states is None and self.stateful and self._states is not None:
            if self._states[0].shape[0] != x.shape[0]:
                raise ValueError(f"{label}: a stateful layer keeps batch size "
                                 f"{self._states[0].shape[0]}, got a batch of {x.shape[0]}; "
                                 f"call reset_states() first")
            states = self._states
        if mask is not None and isinstance(mask, np.ndarray) and mask.all():
            mask = None  # nothing masked: the plain ops compute the same, faster
        dropping = training and (self.dropout > 0 or self.recurrent_dropout > 0)
        if mask is not None and not training and states is None and not self.return_state \
                and not self.stateful:
            kept = unmasked_steps(x, mask)
            if kept is not None:
                return self.call_unmasked(x, mask, kept)
        if (mask is None and states is None and not dropping and not self.return_state
                and not self.stateful):
            forward, _ = self._ops()
            y, cache = forward(x, self.kernel.value, self.recurrent_kernel.value,
                               self.bias.value if self.use_bias else None, *self._options(),
                               self.return_sequences, self.go_backwards)
            self._cache = ("fast", x, cache) if training else None
            return y
        return self._call_general(x, states, mask, training, dropping)

    def call_unmasked(self, x, mask, kept, forward=None):
        """One sample's output (inference) from its kept steps ``kept`` (unmasked_steps)
        alone: ``forward(x_kept)`` (the plain op by default) then each masked step given the
        output the masked recurrence gives it: the previous one (zeros before the first
        kept step), or zeros with zero_output_for_mask (also as the last output)."""
        if forward is None:
            forward = self._plain_forward
        y = forward(np.ascontiguousarray(x[:, kept]))
        if not self.return_sequences:
            last = mask[0, 0] if self.go_backwards else mask[0, -1]
            if self.zero_output_for_mask and not last:
                return np.zeros_like(y)  # the last step's output, masked, is zeros there
            return y
        return expand_unmasked(y, mask, self.go_backwards, self.zero_output_for_mask)

    def _plain_forward(self, x):
        forward, _ = self._ops()
        y, _ = forward(x, self.kernel.value, self.recurrent_kernel.value,
                       self.bias.value if self.use_bias else None, *self._options(),
                       self.return_sequences, self.go_backwards)
        self._cache = None
        return y

    def inference_macs(self, x):
        """Multiply-adds of a call on ``x`` (N, T, C) (or [x, states...]): the input and
        recurrent products of every step. pynn.inference sizes a plan's threads by them: a
        recurrent model's plan counted none for this step and ran its batch of 64 on one
        thread."""
        if isinstance(x, (list, tuple)):
            x = x[0]
        n, t, c = (int(d) for d in x.shape)
        return n * t * (c + self.units) * self.GATES * self.units

    def _input_bias(self):
        if not self.use_bias:
            return None
        if self.CELL == "gru":
            return self.bias.value[0]
        return self.bias.value

    def _call_general(self, x, states, mask, training, dropping):
        b = backend.current()
        n, t, c = x.shape
        g = self.GATES * self.units
        scale = rdrop = None
        if dropping and self.dropout > 0:
            scale = self._dropout_mask(b, (n, c), self.dropout)
            x = b.sequence_scale(x, scale)
        if dropping and self.recurrent_dropout > 0:
            rdrop = self._dropout_mask(b, (n, g), self.recurrent_dropout)
        x2 = b.reshape(x, (n * t, c))
        xw, _ = b.dense_forward(x2, self.kernel.value, self._input_bias(), "linear", 0.0)
        xw = b.reshape(xw, (n, t, g))
        if states is None:
            states = [b.zeros((n, self.units), self.dtype) for _ in range(self._n_states)]
        h0 = states[0]
        c0 = states[1] if self._n_states == 2 else None
        mask_arr = None
        if mask is not None:
            m = np.asarray(b.to_numpy(mask) if not isinstance(mask, np.ndarray) else mask)
            if m.shape != (n, t):
                raise ValueError(f"{type(self).__name__} '{self.name}': mask must have shape "
                                 f"(batch, timesteps) = {(n, t)}, got {m.shape}")
            mask_arr = b.asarray(m.astype(self.dtype), self.dtype)
        rb = self.bias.value[1] if (self.CELL == "gru" and self.use_bias) else None
        y, h_last, c_last, cache = b.recurrence_forward(
            xw, self.recurrent_kernel.value, rb, h0, c0, mask_arr, rdrop, self.CELL,
            *self._general_options(), self.return_sequences, self.go_backwards,
            self.zero_output_for_mask)
        if self.stateful:
            self._states = [h_last] + ([c_last] if c_last is not None else [])
        if training:
            self._cache = ("general", x2, scale, cache, (n, t, c))
        if self.return_state:
            return [y, h_last] + ([c_last] if c_last is not None else [])
        return y

    def _dropout_mask(self, b, shape, rate):
        """Keras's fixed-over-time dropout mask: 0 or 1/(1-rate) per (sample, feature)."""
        ones = b.full(shape, 1.0, self.dtype)
        scale, _ = b.dropout_forward(ones, rate, self._seed, self._offset)
        self._offset += int(np.prod(shape))
        return scale

    def _general_options(self):
        act = self.activation
        ract = getattr(self, "recurrent_activation", "sigmoid")
        return act, ract

    def backward(self, dy):
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__} '{self.name}': backward() needs a "
                               f"preceding call(x, training=True)")
        if self._cache[0] == "user_cell":
            return RNN._backward_user_cell(self, dy)
        cache, self._cache = self._cache, None
        if cache[0] == "fast":
            _, x, op_cache = cache
            _, backward_op = self._ops()
            dx, dkernel, drecurrent, dbias = backward_op(
                dy, x, self.kernel.value, self.recurrent_kernel.value, op_cache,
                *self._options(), self.return_sequences, self.go_backwards,
                self.needs_input_grad)
            self.kernel.grad = dkernel
            self.recurrent_kernel.grad = drecurrent
            if self.use_bias:
                self.bias.grad = dbias
            return dx
        return self._backward_general(dy, *cache[1:])

    def _backward_general(self, dy, x2, scale, op_cache, shape):
        b = backend.current()
        n, t, c = shape
        g = self.GATES * self.units
        dh_last = dc_last = None
        if self.return_state:
            dy, dh_last, *rest = list(dy)
            dc_last = rest[0] if rest else None
            if dy is None:
                dy = b.zeros((n, t, self.units) if self.return_sequences else (n, self.units),
                             self.dtype)
        dxw, drk, drb, dh0, dc0 = b.recurrence_backward(
            dy, dh_last, dc_last, self.recurrent_kernel.value, op_cache, self.CELL,
            *self._general_options(), self.return_sequences, self.go_backwards,
            self.zero_output_for_mask)
        dxw2 = b.reshape(dxw, (n * t, g))
        self.kernel.grad = b.dense_backward_weight(x2, dxw2)
        self.recurrent_kernel.grad = drk
        if self.use_bias:
            dbias = b.bias_backward(dxw2)
            if self.CELL == "gru":
                dbias = b.concatenate_forward([b.reshape(dbias, (1, g)),
                                               b.reshape(drb, (1, g))], 0)
            self.bias.grad = dbias
        dx = None
        if self.needs_input_grad:
            dx = b.reshape(b.dense_backward_input(dxw2, self.kernel.value), (n, t, c))
            if scale is not None:
                dx = b.sequence_scale(dx, scale)
        if self._n_inputs > 1:
            return [dx, dh0] + ([dc0] if self._n_states == 2 else [])
        return dx

    # -- config ---------------------------------------------------------------------------
    _raw_activations = False

    def _config_activation(self, activation):
        """A callable activation is saved by its registered name (the error of an
        unregistered one says how); raw_config keeps the function (copies in memory)."""
        if callable(activation) and not self._raw_activations:
            from pynn._registry import serializable_name
            return serializable_name(activation, "activation")
        return activation

    def raw_config(self):
        """get_config with activation functions kept as they are: to build a copy of the
        layer in memory (Bidirectional, RNN(cell)), which needs no registered names."""
        self._raw_activations = True
        try:
            return self.get_config()
        finally:
            self._raw_activations = False

    def get_config(self):
        config = super().get_config()
        config.update(
            units=self.units, activation=self._config_activation(self.activation),
            use_bias=self.use_bias,
            kernel_initializer=initializers.serialize(self.kernel_initializer),
            recurrent_initializer=initializers.serialize(self.recurrent_initializer),
            bias_initializer=initializers.serialize(self.bias_initializer),
            kernel_regularizer=regularizers.serialize(self.kernel_regularizer),
            recurrent_regularizer=regularizers.serialize(self.recurrent_regularizer),
            bias_regularizer=regularizers.serialize(self.bias_regularizer),
            return_sequences=self.return_sequences, return_state=self.return_state,
            go_backwards=self.go_backwards, stateful=self.stateful, unroll=self.unroll,
            dropout=self.dropout, recurrent_dropout=self.recurrent_dropout, seed=self.seed,
            zero_output_for_mask=self.zero_output_for_mask,
        )
        return config


class SimpleRNN(_RNN):
    """h_t = activation(x_t @ kernel + h_{t-1} @ recurrent_kernel + bias)."""

    GATES = 1
    CELL = "simple_rnn"

    def _ops(self):
        b = backend.current()
        return b.simple_rnn_forward, b.simple_rnn_backward


class LSTM(_RNN):
    """Gates i, f, c, o: c_t = f*c_{t-1} + i*act(z_c), h_t = o*act(c_t)."""

    GATES = 4
    CELL = "lstm"

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
        config.update(recurrent_activation=self._config_activation(self.recurrent_activation),
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
        self.CELL = "gru" if self.reset_after else "gru_reset_before"

    def _bias_shape(self):
        return (2, 3 * self.units) if self.reset_after else (3 * self.units,)

    def _options(self):
        return (self.activation, self.recurrent_activation, self.reset_after)

    def _ops(self):
        b = backend.current()
        return b.gru_forward, b.gru_backward

    def get_config(self):
        config = super().get_config()
        config.update(recurrent_activation=self._config_activation(self.recurrent_activation),
                      reset_after=self.reset_after)
        return config


MERGE_MODES = ("concat", "sum", "mul", "ave", None)


class Bidirectional(Layer):
    """Keras 3's Bidirectional: ``layer`` over the sequence and a copy with go_backwards
    flipped (or ``backward_layer``) over it from the end; the backward direction's sequence
    is reversed back into input order and the two merged by ``merge_mode``. Weights: the
    forward layer's, then the backward layer's (Keras's get_weights order). With
    return_sequences both directions output zeros at masked steps (Keras forces
    zero_output_for_mask)."""

    _mask_from_inputs_only = True  # compute_mask passes an input mask on, makes none

    supports_masking = True

    def __init__(self, layer, merge_mode="concat", weights=None, backward_layer=None,
                 **kwargs):
        super().__init__(**kwargs)
        label = f"Bidirectional '{self.name}'"
        if not isinstance(layer, _RNN):
            raise TypeError(f"{label}: layer must be a SimpleRNN, LSTM or GRU layer, got "
                             f"{type(layer).__name__}")
        if merge_mode not in MERGE_MODES:
            raise ValueError(f"{label}: merge_mode must be one of {MERGE_MODES}, got "
                             f"{merge_mode!r}")
        if weights is not None:
            raise ValueError(f"{label}: weights= is not supported; call set_weights()")
        config = layer.raw_config()
        self.forward_layer = type(layer).from_config(
            {**config, "name": f"forward_{layer.name}"})
        if backward_layer is None:
            self.backward_layer = type(layer).from_config(
                {**config, "name": f"backward_{layer.name}",
                 "go_backwards": not layer.go_backwards})
        else:
            if not isinstance(backward_layer, _RNN):
                raise TypeError(f"{label}: backward_layer must be a SimpleRNN, LSTM or GRU "
                                 f"layer, got {type(backward_layer).__name__}")
            if backward_layer.go_backwards == layer.go_backwards:
                raise ValueError(f"{label}: backward_layer must have go_backwards="
                                 f"{not layer.go_backwards}, got {backward_layer.go_backwards}")
            for attr in ("return_sequences", "return_state", "stateful"):
                if getattr(backward_layer, attr) != getattr(layer, attr):
                    raise ValueError(f"{label}: backward_layer's {attr} must equal layer's "
                                     f"({getattr(layer, attr)})")
            self.backward_layer = backward_layer
        self.merge_mode = merge_mode
        self.return_sequences = layer.return_sequences
        self.return_state = layer.return_state
        self.stateful = layer.stateful
        for inner in (self.forward_layer, self.backward_layer):
            inner.zero_output_for_mask = inner.return_sequences

    def build(self, input_shape):
        for inner in (self.forward_layer, self.backward_layer):
            if not inner.built:
                inner.build(input_shape)
        self._variables = self.forward_layer._variables + self.backward_layer._variables
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        fwd = self.forward_layer.compute_output_shape(input_shape)
        bwd = self.backward_layer.compute_output_shape(input_shape)
        states = []
        if self.return_state:
            fwd, states = fwd[0], fwd[1:] + bwd[1:]
            bwd = bwd[0]
        if self.merge_mode is None:
            return [fwd, bwd] + states
        out = fwd[:-1] + (fwd[-1] + bwd[-1],) if self.merge_mode == "concat" else fwd
        return [out] + states if self.return_state else out

    def inference_macs(self, x):
        """Both directions' multiply-adds (see _RNN.inference_macs)."""
        return sum(inner.inference_macs(x) for inner in (self.forward_layer,
                                                          self.backward_layer))

    def compute_mask(self, inputs, mask=None):
        if isinstance(mask, list):
            mask = mask[0]
        out = mask if self.return_sequences else None
        n_out = 2 if self.merge_mode is None else 1
        if self.return_state:
            return [out] * n_out + [None] * (2 * self.forward_layer._n_states)
        return [out] * 2 if n_out == 2 else out

    def call(self, x, training=False, mask=None, directions=None):
        """directions: (forward, backward) callables (x, mask) -> output, standing in for
        the two layers' inference calls (an inference plan's runners)."""
        b = backend.current()
        outs, caches = [], []
        for j, inner in enumerate((self.forward_layer, self.backward_layer)):
            if directions is None:
                outs.append(inner.call(x, training=training, mask=mask))
            else:
                outs.append(directions[j](x, mask))
            caches.append(inner._cache)
            inner._cache = None
        if self.return_state:
            (yf, *sf), (yb, *sb) = outs
            states = sf + sb
        else:
            (yf, yb), states = outs, []
        if self.return_sequences:
            yb = b.sequence_reverse(yb)
        if training:
            self._cache = caches
        if self.merge_mode is None:
            return [yf, yb] + states
        if self.merge_mode == "concat":
            y = b.concatenate_forward([yf, yb], -1)
        else:
            mode = {"sum": "add", "mul": "multiply", "ave": "average"}[self.merge_mode]
            y = b.merge_forward([yf, yb], mode)
            if training and self.merge_mode == "mul":
                self._cache = caches + [(yf, yb)]
        return [y] + states if self.return_state else y

    def backward(self, dy):
        b = backend.current()
        cache, self._cache = self._cache, None
        ns = self.forward_layer._n_states if self.return_state else 0
        dy = list(dy) if isinstance(dy, (list, tuple)) else [dy]
        if self.merge_mode is None:
            dyf, dyb, dstates = dy[0], dy[1], dy[2:]
        else:
            d, dstates = dy[0], dy[1:]
            if self.merge_mode == "concat":
                u = self.forward_layer.units
                dyf, dyb = b.concatenate_backward(d, (u, self.backward_layer.units), -1)
            elif self.merge_mode == "mul":
                dyf, dyb = b.merge_backward(d, list(cache[2]), "multiply")
            else:
                # a sum's or mean's gradient reads no input value: d stands in for both
                # outputs, whose shape it has (fresh arrays come back either way)
                dyf, dyb = b.merge_backward(d, [d, d], "add" if self.merge_mode == "sum"
                                            else "average")
        if self.return_sequences and dyb is not None:
            dyb = b.sequence_reverse(dyb)
        dx = None
        for inner, c, d, ds in ((self.forward_layer, cache[0], dyf, dstates[:ns]),
                                (self.backward_layer, cache[1], dyb, dstates[ns:])):
            inner._cache = c
            inner.needs_input_grad = self.needs_input_grad
            g = inner.backward([d] + list(ds) if self.return_state else d)
            inner._cache = None
            if g is not None:
                dx = g if dx is None else b.merge_forward([dx, g], "add")
        return dx

    def reset_states(self, states=None):
        ns = self.forward_layer._n_states
        self.forward_layer.reset_states(None if states is None else states[:ns])
        self.backward_layer.reset_states(None if states is None else states[ns:])

    def get_config(self):
        config = super().get_config()
        config["layer"] = {"class_name": type(self.forward_layer).__name__,
                           "config": {**self.forward_layer.get_config(),
                                      "name": self.forward_layer.name[len("forward_"):]}}
        config["backward_layer"] = {"class_name": type(self.backward_layer).__name__,
                                    "config": self.backward_layer.get_config()}
        config["merge_mode"] = self.merge_mode
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        classes = {"SimpleRNN": SimpleRNN, "LSTM": LSTM, "GRU": GRU}

        def make(spec):
            name = spec.get("class_name") if isinstance(spec, dict) else None
            if name not in classes:
                raise ValueError(f"Bidirectional: unknown recurrent layer class {name!r}; "
                                 f"expected one of {sorted(classes)}")
            return classes[name].from_config(spec.get("config", {}))

        layer = make(config.pop("layer"))
        backward = config.pop("backward_layer", None)
        return cls(layer, backward_layer=make(backward) if backward else None, **config)


# -- generic RNN(cell) -----------------------------------------------------------------------
# Keras's cells hold a step's weights and options; RNN runs them over the sequence. Here a
# built-in cell is the configuration of the matching layer (SimpleRNN, LSTM, GRU), so
# RNN(cell) runs the same native sequence ops as that layer and has its weight layout.
# StackedRNNCells is the layers chained: cell i+1 at step t reads cell i's output at t, and a
# masked step keeps every cell's state, so running whole sequences layer after layer gives
# Keras's numbers.

_SEQUENCE_OPTIONS = ("return_sequences", "return_state", "go_backwards", "stateful", "unroll")


class _Cell(Layer):
    LAYER = None

    def __init__(self, units, **kwargs):
        base = {k: kwargs.pop(k) for k in ("name", "trainable", "dtype") if k in kwargs}
        super().__init__(**base)
        for key in _SEQUENCE_OPTIONS:
            if key in kwargs:
                raise TypeError(f"{type(self).__name__}: unexpected argument {key!r} (an RNN "
                                f"layer's option, not a cell's)")
        # Validates every option with the layer's own checks and messages.
        self._probe = self.LAYER(units, dtype=self.dtype, **kwargs)
        self.units = self._probe.units

    @property
    def state_size(self):
        return [self.units] * self._probe._n_states if self._probe._n_states > 1 else self.units

    def layer_options(self, raw=False):
        config = self._probe.raw_config() if raw else self._probe.get_config()
        for key in _SEQUENCE_OPTIONS + ("name", "trainable", "dtype"):
            config.pop(key, None)
        return config

    def get_config(self):
        config = super().get_config()
        config.update(self.layer_options())
        return config


class SimpleRNNCell(_Cell):
    LAYER = SimpleRNN


class LSTMCell(_Cell):
    LAYER = LSTM


class GRUCell(_Cell):
    LAYER = GRU


_CELLS = {"SimpleRNNCell": SimpleRNNCell, "LSTMCell": LSTMCell, "GRUCell": GRUCell}


def _cell_from_spec(spec):
    name = spec.get("class_name") if isinstance(spec, dict) else None
    if name not in _CELLS:
        raise ValueError(f"RNN: unknown cell class {name!r}; expected one of {sorted(_CELLS)}")
    return _CELLS[name].from_config(spec.get("config", {}))


class StackedRNNCells(Layer):
    """Cells run one after the other at each step (Keras's StackedRNNCells)."""

    def __init__(self, cells, **kwargs):
        super().__init__(**kwargs)
        cells = list(cells)
        if not cells or not all(isinstance(c, _Cell) for c in cells):
            raise TypeError(f"StackedRNNCells '{self.name}': cells must be a non-empty list of "
                            f"SimpleRNNCell, LSTMCell or GRUCell, got {cells!r}")
        self.cells = cells

    def get_config(self):
        config = super().get_config()
        config["cells"] = [{"class_name": type(c).__name__, "config": c.get_config()}
                           for c in self.cells]
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls([_cell_from_spec(c) for c in config.pop("cells")], **config)


def _is_user_cell(cell):
    """A cell the user wrote (Keras's custom cell): a Layer with ``state_size`` whose
    ``call(inputs, states)`` returns ``(output, new_states)`` with pynn.ops."""
    return (isinstance(cell, Layer) and not isinstance(cell, (_Cell, StackedRNNCells))
            and hasattr(cell, "state_size"))


class RNN(Layer):
    """Keras's RNN(cell): a SimpleRNNCell, LSTMCell, GRUCell, a list of them or a
    StackedRNNCells, over the sequence. Weights: each cell's, in order. initial_state and
    return_state take one cell's states (a stack of several cells refuses them).

    A cell written by the user (a Layer with ``state_size`` and ``call(inputs, states)``
    returning ``(output, new_states)`` with pynn.ops, as in Keras) runs step by step: a
    Python loop over the time steps, the one place pynn has one, since such a cell has no
    fused kernel. Its ops are recorded in training and the backward replays them (the
    autodiff of custom layers). Built-in cells keep their whole-sequence kernels. A user cell
    takes masks, go_backwards, return_sequences and return_state; not stateful or
    initial_state.
    """

    _mask_from_inputs_only = True  # compute_mask passes an input mask on, makes none

    supports_masking = True

    def __init__(self, cell, return_sequences=False, return_state=False, go_backwards=False,
                 stateful=False, unroll=False, zero_output_for_mask=False, **kwargs):
        super().__init__(**kwargs)
        label = f"RNN '{self.name}'"
        if isinstance(cell, (list, tuple)):
            cell = StackedRNNCells(cell)
        self._user_cell = _is_user_cell(cell)
        if self._user_cell:
            self._init_user_cell(cell, return_sequences, return_state, go_backwards, stateful,
                                 unroll, zero_output_for_mask)
            return
        if not isinstance(cell, (_Cell, StackedRNNCells)):
            raise TypeError(f"{label}: cell must be a SimpleRNNCell, LSTMCell, GRUCell, a list "
                            f"of them, a StackedRNNCells or a Layer with state_size and "
                            f"call(inputs, states), got {type(cell).__name__}")
        self.cell = cell
        cells = cell.cells if isinstance(cell, StackedRNNCells) else [cell]
        if len(cells) > 1 and return_state:
            raise ValueError(f"{label}: return_state with stacked cells is not supported")
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.go_backwards = bool(go_backwards)
        self.stateful = bool(stateful)
        self.unroll = bool(unroll)
        self.zero_output_for_mask = bool(zero_output_for_mask)
        last = len(cells) - 1
        self._layers = []
        for i, c in enumerate(cells):
            inner = c.LAYER(**c.layer_options(raw=True), name=f"{self.name}_{c.name}",
                            dtype=self.dtype,
                            return_sequences=self.return_sequences if i == last else True,
                            return_state=self.return_state,
                            go_backwards=self.go_backwards and i == 0, stateful=self.stateful)
            inner.zero_output_for_mask = self.zero_output_for_mask and i == last
            self._layers.append(inner)

    @property
    def _n_states(self):
        if self._user_cell:
            return len(self._state_sizes)
        return self._layers[0]._n_states

    def __call__(self, inputs, training=False, mask=None, initial_state=None, **kwargs):
        if self._user_cell and initial_state is not None:
            raise ValueError(f"RNN '{self.name}': initial_state with a user cell is not "
                             f"supported")
        if initial_state is not None and len(self._layers) > 1:
            raise ValueError(f"RNN '{self.name}': initial_state with stacked cells is not "
                             f"supported")
        return _call_with_states(self, self._n_states, inputs, training, mask, initial_state,
                                 kwargs)

    def build(self, input_shape):
        if self._user_cell:
            if not self.cell.built:
                self.cell.build((input_shape[0],) + tuple(input_shape[2:]))
            self._variables = list(self.cell.weights)
            super().build(input_shape)
            return
        shape = input_shape
        for inner in self._layers:
            inner.build(shape)
            shape = inner.compute_output_shape(shape)
            if isinstance(shape, list):
                shape = shape[0]
        self._variables = [v for inner in self._layers for v in inner._variables]
        super().build(input_shape)
        self.input_shape = self._layers[0].input_shape

    def compute_output_shape(self, input_shape):
        if self._user_cell:
            n, t = input_shape[0], input_shape[1]
            units = getattr(self.cell, "output_size", None) or self._state_sizes[0]
            out = (n, t, units) if self.return_sequences else (n, units)
            if self.return_state:
                return [out] + [(n, size) for size in self._state_sizes]
            return out
        shape = input_shape
        for inner in self._layers:
            shape = inner.compute_output_shape(shape)
            if isinstance(shape, list) and inner is not self._layers[-1]:
                shape = shape[0]
        return shape

    def compute_mask(self, inputs, mask=None):
        if self._user_cell:
            if isinstance(mask, list):
                mask = mask[0]
            out = mask if self.return_sequences else None
            return [out] + [None] * self._n_states if self.return_state else out
        return self._layers[-1].compute_mask(inputs, mask)

    # -- a user cell (issue 14): a Python loop over the steps, differentiated by autodiff ---
    def _init_user_cell(self, cell, return_sequences, return_state, go_backwards, stateful,
                        unroll, zero_output_for_mask):
        label = f"RNN '{self.name}'"
        if stateful:
            raise ValueError(f"{label}: stateful=True with a user cell is not supported")
        sizes = cell.state_size
        sizes = list(sizes) if isinstance(sizes, (list, tuple)) else [sizes]
        if not sizes or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                and v > 0 for v in sizes):
            raise ValueError(f"{label}: the cell's state_size must be a positive int or a "
                             f"list of them, got {cell.state_size!r}")
        self.cell = cell
        self._state_sizes = [int(v) for v in sizes]
        self._layers = []
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.go_backwards = bool(go_backwards)
        self.stateful = False
        self.unroll = bool(unroll)
        self.zero_output_for_mask = bool(zero_output_for_mask)

    def _call_user_cell(self, x, training, mask):
        """Keras's rnn loop over the user cell's call: a masked step keeps the states and
        repeats the previous output (zeros with zero_output_for_mask). Each step's input is
        a leaf Tensor of its own and each step's output a target of its own, so the loop
        needs only the cell's ops and Tensor arithmetic (layers do not import pynn.ops)."""
        b = backend.current()
        n, t = x.shape[0], x.shape[1]
        host = np.asarray(b.to_numpy(x))
        m = None
        if mask is not None:
            m = np.asarray(mask if isinstance(mask, np.ndarray) else b.to_numpy(mask), bool)
            if m.shape != (n, t):
                raise ValueError(f"RNN '{self.name}': mask must have shape (batch, timesteps) "
                                 f"= {(n, t)}, got {m.shape}")
            if m.all():
                m = None
        user_call = getattr(type(self.cell).call, "__wrapped__", type(self.cell).call)
        takes_training = getattr(user_call, "_pynn_takes_training", False)
        kwargs = {"training": training} if takes_training else {}
        recorder = autodiff._Recorder() if training else contextlib.nullcontext()
        steps, outputs = [], []
        with recorder:
            states = [b.zeros((n, size), self.dtype) for size in self._state_sizes]
            last = None
            for s in range(t):
                tx = t - 1 - s if self.go_backwards else s
                xs = autodiff.Tensor(b.asarray(np.ascontiguousarray(host[:, tx]), self.dtype))
                if training and self.needs_input_grad:
                    recorder.watch(xs)
                steps.append((tx, xs))
                out, new = user_call(self.cell, xs, states, **kwargs)
                new = list(new) if isinstance(new, (list, tuple)) else [new]
                if m is not None:
                    keep = m[:, tx:tx + 1].astype(self.dtype)
                    new = [a * keep + old * (1 - keep) for a, old in zip(new, states)]
                    if self.zero_output_for_mask or last is None:
                        out = out * keep
                    else:
                        out = out * keep + last * (1 - keep)
                states, last = new, out
                outputs.append(out)
        if not self.return_sequences:
            outputs = outputs[-1:]
        values = [np.asarray(b.to_numpy(autodiff._unwrap(o))) for o in outputs]
        y = np.stack(values, axis=1) if self.return_sequences else values[0]
        y = b.asarray(np.ascontiguousarray(y), self.dtype)
        if training:
            self._cache = ("user_cell", steps, outputs, states, tuple(x.shape))
        if self.return_state:
            return [y] + [autodiff._unwrap(v) for v in states]
        return y

    def _backward_user_cell(self, dy):
        _, steps, outputs, states, x_shape = self._cache
        self._cache = None
        b = backend.current()
        dys = list(dy) if self.return_state else [dy]
        dy_host = np.asarray(b.to_numpy(dys[0]))
        if self.return_sequences:
            seeds = [b.asarray(np.ascontiguousarray(dy_host[:, s]), self.dtype)
                     for s in range(len(outputs))]
        else:
            seeds = [dys[0]]
        state_seeds = (dys[1:] + [None] * len(states))[:len(states)]
        grads = autodiff.backprop(list(outputs) + list(states), seeds + state_seeds)
        for v in self._variables:
            g = grads.get(id(v))
            v.grad = g if g is not None else b.zeros(tuple(v.shape), v.dtype)
        if not self.needs_input_grad:
            return None
        dx = np.zeros(x_shape, self.dtype)
        for tx, xs in steps:
            g = grads.get(id(xs))
            if g is not None:
                dx[:, tx] = np.asarray(b.to_numpy(g))
        return b.asarray(dx, self.dtype)

    def call(self, x, training=False, mask=None):
        if self._user_cell:
            if isinstance(mask, (list, tuple)):
                mask = mask[0]
            return self._call_user_cell(x, training, mask)
        caches = []
        for i, inner in enumerate(self._layers):
            if i > 0 and self.go_backwards and mask is not None:
                # The first cell's outputs come in processing order: so must the mask.
                m = mask[0] if isinstance(mask, (list, tuple)) else mask
                mask = np.ascontiguousarray(np.asarray(backend.current().to_numpy(m))[:, ::-1])
            x = inner.call(x, training=training, mask=mask)
            caches.append(inner._cache)
            inner._cache = None
        if training:
            self._cache = caches
        return x

    def backward(self, dy):
        if self._user_cell:
            return self._backward_user_cell(dy)
        caches, self._cache = self._cache, None
        for i in range(len(self._layers) - 1, -1, -1):
            inner = self._layers[i]
            inner._cache = caches[i]
            inner.needs_input_grad = self.needs_input_grad or i > 0
            dy = inner.backward(dy)
            inner._cache = None
        return dy

    def reset_states(self, states=None):
        if self._user_cell:
            raise AttributeError(f"RNN '{self.name}': reset_states() needs stateful=True")
        for inner in self._layers:
            inner.reset_states(states if len(self._layers) == 1 else None)

    def get_config(self):
        config = super().get_config()
        config.update(cell={"class_name": type(self.cell).__name__,
                            "config": self.cell.get_config()},
                      return_sequences=self.return_sequences, return_state=self.return_state,
                      go_backwards=self.go_backwards, stateful=self.stateful,
                      unroll=self.unroll, zero_output_for_mask=self.zero_output_for_mask)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        spec = config.pop("cell")
        if isinstance(spec, dict) and spec.get("class_name") == "StackedRNNCells":
            cell = StackedRNNCells.from_config(spec.get("config", {}))
        else:
            cell = _cell_from_spec(spec)
        return cls(cell, **config)
