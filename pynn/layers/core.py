"""Input, Dense, Activation, Dropout, Flatten and Reshape."""

import math

import numpy as np

from pynn import _registry, backend, regularizers
from pynn.backend.api import ACTIVATIONS_NEEDING_INPUT
from pynn.layers.symbolic import Node
from pynn.layers.base import (
    KerasTensor, Layer, _unique_name, activation_config, bias_activation_backward, shape_str,
)
from pynn.layers.noise import SeededLayer, drop_rate


class InputLayer(Layer):
    """The entry of a model: declares the per-sample shape. ``pynn.Input`` returns its
    symbolic tensor (the functional API); a Sequential model also takes the layer itself."""

    def __init__(self, shape=None, batch_size=None, name=None, dtype=None, **kwargs):
        if shape is None:
            raise ValueError("Input: shape is required, e.g. Input(shape=(28, 28, 1))")
        shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
        if any(d is not None and (isinstance(d, bool) or not isinstance(d, (int, np.integer))
                                  or d < 1) for d in shape):
            raise ValueError(f"Input: shape must hold positive ints, got {shape}")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(
                batch_size, (int, np.integer)) or batch_size < 1):
            raise ValueError(f"Input: batch_size must be a positive int or None, got "
                             f"{batch_size!r}")
        # Token ids (Embedding) come in as integers: an Input may be int32 or int64, which the
        # model passes to the first layers as they are (floats are the layers' own dtypes).
        int_dtype = None
        if dtype is not None and np.dtype(dtype).kind in "iu":
            int_dtype = str(np.dtype(dtype))
            if int_dtype not in ("int32", "int64"):
                raise ValueError(f"Input: dtype must be float32, float64, int32 or int64, got "
                                 f"{dtype!r}")
            dtype = None
        super().__init__(name=name or _unique_name("input_layer"), dtype=dtype, **kwargs)
        if int_dtype is not None:
            self.dtype = int_dtype
        self.shape = tuple(None if d is None else int(d) for d in shape)
        self.batch_size = batch_size
        self.build((batch_size,) + self.shape)
        node = Node(self, [], [], False)
        node.outputs = [KerasTensor(self.input_shape, self.dtype, self.name, node, 0)]
        self._inbound_nodes.append(node)

    def call(self, x, training=False):
        return x

    def backward(self, dy):
        return dy

    def get_config(self):
        return {"name": self.name, "shape": list(self.shape), "batch_size": self.batch_size,
                "dtype": self.dtype}


def Input(shape=None, batch_size=None, name=None, dtype=None):
    """A symbolic input of the functional API: ``x = Input((28, 28, 1)); y = Dense(10)(x)``."""
    return InputLayer(shape=shape, batch_size=batch_size, name=name, dtype=dtype).output


class ActGrad:
    """A Dense layer's backward handed to the Dense below it (functional.
    _fuse_dense_activation): that layer's dz (its output gradient taken through its
    activation, rows by units) and bias gradient (None without a bias), made by
    dense_backward_input_activation."""

    __slots__ = ("dz", "db")

    def __init__(self, dz, db):
        self.dz, self.db = dz, db


class Dense(Layer):
    """y = activation(x @ kernel + bias) on the last axis; kernel (in, units) as Keras."""

    def __init__(self, units, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, kernel_constraint=None,
                 bias_constraint=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(units, bool) or not isinstance(units, (int, np.integer)) or units < 1:
            raise ValueError(f"Dense '{self.name}': units must be a positive int, got {units!r}")
        self.units = int(units)
        self.activation, self.alpha = activation_config(activation, self)
        self.use_bias = bool(use_bias)
        self._weight_args("kernel", kernel_initializer, kernel_regularizer, kernel_constraint)
        self._weight_args("bias", bias_initializer, bias_regularizer, bias_constraint)

    def build(self, input_shape):
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ValueError(f"Dense '{self.name}': expected input shape (None, ..., features), "
                             f"got {shape_str(input_shape)}")
        in_features = input_shape[-1]
        self._add_kernel_and_bias((in_features, self.units), self.units)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def call(self, x, training=False):
        b = backend.current()
        lead = tuple(x.shape[:-1])
        x2 = x if x.ndim == 2 else b.reshape(x, (-1, x.shape[-1]))
        # mixed_bfloat16 (issue 17): the same contract on bf16-rounded operands.
        forward = b.bf16_dense_forward if self._bf16_compute else b.dense_forward
        y, z = forward(x2, self.kernel.value, self.bias.value if self.use_bias else None,
                       self.activation, self.alpha)
        if training:
            self._cache = (x2, y, z, lead)
        return y if x.ndim == 2 else b.reshape(y, lead + (self.units,))

    # The Dense layer below, whose relu output only this layer reads: backward hands it an
    # ActGrad (its dz and bias gradient) instead of its output gradient. Set by the plan
    # for each backward call (functional._fuse_dense_activation), None otherwise.
    _act_below = None

    def backward(self, dy):
        b = backend.current()
        x2, y, z, lead = self._cache
        self._cache = None
        if type(dy) is ActGrad:   # the layer above took dy through this layer's activation
            dz = dy.dz
            if self.use_bias:
                self.bias.grad = dy.db
        else:
            dy2 = dy if dy.ndim == 2 else b.reshape(dy, (-1, self.units))
            dz = bias_activation_backward(self, dy2, z, y)
        bf16 = self._bf16_compute
        self.kernel.grad = (b.bf16_dense_backward_weight if bf16 else b.dense_backward_weight)(
            x2, dz)
        if not self.needs_input_grad:
            return None
        below = self._act_below
        if below is not None and not bf16 and not below._bf16_compute:
            # x2 is the layer below's output: one op makes its dz and bias gradient
            return ActGrad(*b.dense_backward_input_activation(
                dz, self.kernel.value, None, x2, below.activation, below.alpha, below.use_bias))
        dx = (b.bf16_dense_backward_input if bf16 else b.dense_backward_input)(
            dz, self.kernel.value)
        return dx if len(lead) == 1 else b.reshape(dx, lead + (x2.shape[1],))

    def get_config(self):
        config = super().get_config()
        config.update(
            units=self.units, activation=self.activation, use_bias=self.use_bias,
        )
        return config


class Activation(Layer):
    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self.activation, self.alpha = activation_config(activation, self, rows_ok=True)

    def build(self, input_shape):
        if self.activation == "glu" and (len(input_shape) < 2 or (
                input_shape[-1] is not None and input_shape[-1] % 2)):
            raise ValueError(f"Activation '{self.name}': glu splits the last axis in two "
                             f"halves and needs it even, got input shape "
                             f"{shape_str(input_shape)}")
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        # glu halves the last axis (Keras 3's symbolic shape keeps it; its outputs do not)
        if self.activation == "glu" and input_shape[-1] is not None:
            return tuple(input_shape[:-1]) + (input_shape[-1] // 2,)
        return tuple(input_shape)

    def call(self, x, training=False):
        b = backend.current()
        y = b.activation_forward(x, self.activation, self.alpha)
        if training:
            # Keep only what the derivative reads: holding x too kept the residual CNN's
            # block sums alive until backward (4 MiB each at batch 32).
            self._cache = ((x, None) if self.activation in ACTIVATIONS_NEEDING_INPUT
                           else (None, y))
        return y

    def backward(self, dy):
        x, y = self._cache
        self._cache = None
        return backend.current().activation_backward(dy, x, y, self.activation, self.alpha)

    def get_config(self):
        config = super().get_config()
        config["activation"] = self.activation
        return config


class Dropout(SeededLayer):
    """Inverted dropout: survivors are scaled by 1/(1-rate); the identity outside training.

    The mask comes from a counter-based generator keyed by ``seed`` and advanced by the number of
    elements drawn, so a run is reproducible and identical on every backend.
    """

    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.rate = drop_rate(self, rate)
        if noise_shape is not None:
            try:
                noise_shape = tuple(None if d is None else int(d) for d in noise_shape)
            except (TypeError, ValueError):
                noise_shape = ()
            if not noise_shape or any(d is not None and d < 1 for d in noise_shape):
                raise ValueError(f"Dropout '{self.name}': noise_shape must be a tuple of "
                                 f"positive ints or None, got {noise_shape!r}")
        self.noise_shape = noise_shape

    def build(self, input_shape):
        if self.noise_shape is not None:
            if len(self.noise_shape) != len(input_shape) or any(
                    d is not None and d != 1 and n is not None and d != n
                    for d, n in zip(self.noise_shape, input_shape)):
                raise ValueError(f"Dropout '{self.name}': noise_shape "
                                 f"{shape_str(self.noise_shape)} must have the input's rank "
                                 f"and each entry None, 1 or the input's size, got input "
                                 f"shape {shape_str(input_shape)}")
        super().build(input_shape)

    def call(self, x, training=False):
        if not training or self.rate == 0.0:
            return x
        b = backend.current()
        if self.noise_shape is not None:
            # Keras's broadcast mask (EfficientNet's stochastic depth drops whole samples):
            # the kept scale drawn at the noise shape, as dropout_forward's y of ones there.
            shape = tuple(n if d is None else d for d, n in zip(self.noise_shape, x.shape))
            scale, _ = b.dropout_forward(b.asarray(np.ones(shape, x.dtype), x.dtype),
                                         self.rate, self.seed, self._offset)
            self._offset += math.prod(shape)
            self._cache = ("scale", scale)
            return b.elementwise_binary(x, scale, "multiply")
        y, mask = b.dropout_forward(x, self.rate, self.seed, self._offset)
        self._offset += math.prod(x.shape)
        self._cache = mask
        return y

    def backward(self, dy):
        if self._cache is None:
            return dy
        mask, self._cache = self._cache, None
        b = backend.current()
        if isinstance(mask, tuple):
            return b.elementwise_binary(dy, mask[1], "multiply")
        return b.dropout_backward(dy, mask, self.rate)

    def get_config(self):
        config = super().get_config()
        config["rate"] = self.rate
        config["noise_shape"] = None if self.noise_shape is None else list(self.noise_shape)
        return config


class Flatten(Layer):
    def __init__(self, data_format=None, **kwargs):
        super().__init__(**kwargs)

    def compute_output_shape(self, input_shape):
        rest = input_shape[1:]
        return (input_shape[0], None if None in rest else math.prod(rest))

    def call(self, x, training=False):
        if training:
            self._cache = tuple(x.shape)
        # An explicit size, not -1: NumPy cannot infer -1 for an empty batch.
        return backend.current().reshape(x, (x.shape[0], math.prod(x.shape[1:])))

    def backward(self, dy):
        shape, self._cache = self._cache, None
        return backend.current().reshape(dy, shape)


class Reshape(Layer):
    def __init__(self, target_shape, **kwargs):
        super().__init__(**kwargs)
        target = tuple(int(d) for d in target_shape)
        if sum(d == -1 for d in target) > 1 or any(d == 0 or d < -1 for d in target):
            raise ValueError(f"Reshape '{self.name}': target_shape may hold positive ints and at "
                             f"most one -1, got {target_shape!r}")
        self.target_shape = target

    def compute_output_shape(self, input_shape):
        size = math.prod(input_shape[1:])
        known = math.prod(d for d in self.target_shape if d != -1)
        if -1 in self.target_shape:
            if size % known:
                raise ValueError(f"Reshape '{self.name}': cannot reshape "
                                 f"{shape_str(input_shape)} to {self.target_shape}")
            target = tuple(size // known if d == -1 else d for d in self.target_shape)
        else:
            target = self.target_shape
        if math.prod(target) != size:
            raise ValueError(f"Reshape '{self.name}': cannot reshape {shape_str(input_shape)} "
                             f"({size} values per sample) to {self.target_shape}")
        return (input_shape[0],) + target

    def call(self, x, training=False):
        if training:
            self._cache = tuple(x.shape)
        return backend.current().reshape(x, (x.shape[0],) + self.output_shape[1:])

    def backward(self, dy):
        shape, self._cache = self._cache, None
        return backend.current().reshape(dy, shape)

    def get_config(self):
        config = super().get_config()
        config["target_shape"] = list(self.target_shape)
        return config


class ActivityRegularization(Layer):
    """Keras's ActivityRegularization: the identity, whose output's l1 * sum|y| + l2 * sum(y^2)
    (divided by the batch size, as every activity_regularizer is) joins the loss."""

    supports_masking = True  # the input's mask passes on, as in Keras 3

    def __init__(self, l1=0.0, l2=0.0, **kwargs):
        if kwargs.get("activity_regularizer") is not None:
            raise TypeError("ActivityRegularization: give l1 and l2, not activity_regularizer")
        kwargs.pop("activity_regularizer", None)
        super().__init__(activity_regularizer=regularizers.L1L2(l1=l1, l2=l2), **kwargs)
        self.l1, self.l2 = self.activity_regularizer.l1, self.activity_regularizer.l2

    def call(self, x, training=False):
        return x

    def backward(self, dy):
        return dy

    def get_config(self):
        config = super().get_config()
        config.pop("activity_regularizer", None)
        config.update(l1=self.l1, l2=self.l2)
        return config


class Lambda(Layer):
    """Keras's Lambda: ``function(x, **arguments)`` written with pynn.ops (its gradient comes
    from the recording). ``output_shape`` (a shape without the batch axis, or a function of the
    input shape) is inferred by a one-sample call when not given. Saved by the name its
    function was registered under (pynn.saving.register_serializable); a file never holds
    the code, so an unregistered function (a lambda) cannot be saved."""

    def __init__(self, function, output_shape=None, mask=None, arguments=None, **kwargs):
        super().__init__(**kwargs)
        if not callable(function):
            raise TypeError(f"Lambda '{self.name}': function must be callable, got "
                            f"{function!r}")
        if mask is not None:
            raise ValueError(f"Lambda '{self.name}': mask is not supported")
        self.function = function
        self._output_shape = output_shape
        self.arguments = dict(arguments or {})

    def compute_output_shape(self, input_shape):
        spec = self._output_shape
        if callable(spec):
            return tuple(spec(input_shape))
        if spec is not None:
            return (input_shape[0],) + tuple(spec)
        several = bool(input_shape) and isinstance(input_shape[0], (tuple, list))
        shapes = list(input_shape) if several else [input_shape]
        b = backend.current()
        probes = [b.asarray(np.ones([1 if d is None else d for d in s], self.dtype), self.dtype)
                  for s in shapes]
        with np.errstate(all="ignore"):
            out = self.function(probes if several else probes[0], **self.arguments)
        return (None,) + tuple(out.shape[1:])

    def call(self, x, training=False):
        return self.function(x, **self.arguments)

    def get_config(self):
        config = super().get_config()
        try:
            name = _registry.serializable_name(self.function, "Lambda function")
        except ValueError as exc:
            raise ValueError(f"Lambda '{self.name}': {exc}") from None
        spec = self._output_shape
        if callable(spec):
            spec = {"function": _registry.serializable_name(spec, "output_shape function")}
        config.update(function=name, output_shape=None if spec is None else (
            spec if isinstance(spec, dict) else list(spec)), arguments=self.arguments)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["function"] = _registry.lookup_serializable(config.get("function"),
                                                           "Lambda function")
        spec = config.get("output_shape")
        if isinstance(spec, dict):
            config["output_shape"] = _registry.lookup_serializable(spec.get("function"),
                                                                   "output_shape function")
        return cls(**config)
# -- masks (issue 14, recurrent half): as in Keras 3, these pass their input's mask on, so
# Embedding(mask_zero=True) -> Dropout -> LSTM and LSTM(return_sequences) -> Dense keep it.
for _cls in (Dense, Activation, Dropout):
    _cls.supports_masking = True
del _cls
