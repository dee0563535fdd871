"""The Layer contract (Keras's): ``__init__`` stores config, ``build(input_shape)`` creates
weights, ``call(x, training)`` computes, ``get_config()`` round-trips. pynn adds
``backward(dy)``, which fills each variable's ``grad`` and returns the input gradient.

Shapes include the batch axis as None, as in Keras. Layers talk to ``backend.current()`` only.
"""

import contextlib
import itertools
import math
import os
import re
import sys
import types

import numpy as np

from pynn import autodiff, backend, constraints, initializers, mixed_precision, regularizers
from pynn.backend import api
from pynn.layers.symbolic import KerasTensor, is_symbolic, record, shape_str  # noqa: F401
from pynn.variables import Variable, bump_version

_name_counters = {}
# Sizes that reach the native kernels as C ints (strides, pool sizes, dilations, kernel sizes).
C_INT_MAX = 2**31 - 1
# Set while a saved model is rebuilt: its weights are about to be replaced by the file's, so
# add_weight makes shape-only placeholders (a read-only zero broadcast to the shape, no memory)
# instead of drawing random values.
_zero_init = False


@contextlib.contextmanager
def zero_init():
    global _zero_init
    previous, _zero_init = _zero_init, True
    try:
        yield
    finally:
        _zero_init = previous


def _unique_name(base):
    counter = _name_counters.setdefault(base, itertools.count())
    n = next(counter)
    return base if n == 0 else f"{base}_{n}"


def _snake(name):
    """Keras's ``to_snake_case``: Conv2D -> conv2d, MaxPooling2D -> max_pooling2d."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _physical_memory():
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: let the allocator decide
        return sys.maxsize


def _free_memory():
    """Bytes that can still be written without swapping or the container's OOM killer:
    MemAvailable plus free swap, capped by the cgroup's headroom (None where unknown)."""
    free = None
    try:
        with open("/proc/meminfo") as f:
            fields = {k: int(v.split()[0]) * 1024 for k, v in
                      (line.split(":", 1) for line in f if ":" in line)}
        free = fields["MemAvailable"] + fields.get("SwapFree", 0)
    except (OSError, KeyError, ValueError):
        return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit != "max":
            with open("/sys/fs/cgroup/memory.current") as f:
                free = min(free, int(limit) - int(f.read()))
    except (OSError, ValueError):
        pass
    return free


# Below this a weight is drawn without asking the kernel how much memory is left.
_FREE_MEMORY_CHECK_BYTES = 64 << 20


def _base_backward(fn):
    """Marks the base classes' ``backward``: a subclass that inherits only these has no
    backward of its own, so its ``call`` is traced (pynn.autodiff.traced_call)."""
    fn._pynn_base_backward = True
    return fn


def _base_call(fn):
    """Marks a base class's own ``call`` (Model's graph executor), which is never traced."""
    fn._pynn_base_call = True
    return fn


def _has_own_backward(cls):
    for klass in cls.__mro__:
        fn = klass.__dict__.get("backward")
        if fn is not None:
            return not getattr(fn, "_pynn_base_backward", False)
    return False


class Layer:
    # True for layers whose call is recorded by pynn.ops and differentiated by replaying
    # that record (custom layers); False for those with a fused backward.
    _traced = False

    def __init_subclass__(cls, **kwargs):
        """A subclass that writes ``call`` with pynn.ops and no ``backward`` gets its
        gradients from the recording: its call is wrapped once, here."""
        super().__init_subclass__(**kwargs)
        call = cls.__dict__.get("call")
        if getattr(call, "_pynn_base_call", False) or _has_own_backward(cls):
            cls._traced = False
            return
        if call is None:  # inherits its parent's call, traced or not
            return
        cls._traced = True
        if not getattr(call, "_pynn_traced", False):
            cls.call = autodiff.traced_call(call)
        if "__setattr__" not in cls.__dict__:
            cls.__setattr__ = _track_sublayers
        build = cls.__dict__.get("build")
        if build is not None and not getattr(build, "_pynn_completes", False):
            cls.build = _completing_build(build)

    def _own_and_sublayer(self, attr):
        """``attr`` (weights, trainable_weights...) of this layer's variables and of the
        layers set as its attributes (a custom layer's or subclassed model's parts)."""
        seen, out = set(), []
        for layer in self.__dict__.get("_sublayers", ()):
            for v in getattr(layer, attr):
                if id(v) not in seen:
                    seen.add(id(v))
                    out.append(v)
        return out

    def __init__(self, name=None, trainable=True, dtype=None, input_shape=None, input_dim=None,
                 activity_regularizer=None, **kwargs):
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unexpected arguments {sorted(kwargs)}")
        if name is not None and not isinstance(name, str):
            raise ValueError(f"{type(self).__name__}: name must be a string, got {name!r}")
        self.name = name or _unique_name(_snake(type(self).__name__))
        self.trainable = trainable
        # -- mixed precision (issue 17): ``dtype`` is a policy, its name or a float dtype, as
        # in Keras 3; the layer's dtype is its variables' (float32 under mixed_bfloat16).
        self.dtype_policy = mixed_precision.get(dtype, f"{type(self).__name__} '{self.name}'")
        self.dtype = self.dtype_policy.variable_dtype
        self.built = False
        self.input_shape = None
        self.output_shape = None
        self._variables = []
        self._cache = None
        # The first layer of a model does not need its input gradient: skipping it saves the
        # most expensive backward op of a CNN's first convolution.
        self.needs_input_grad = True
        if input_shape is None and input_dim is not None:
            input_shape = (input_dim,)
        if input_shape is not None:
            if isinstance(input_shape, (int, np.integer)):
                input_shape = (input_shape,)
            self._declared_input_shape = (None,) + tuple(input_shape)
        else:
            self._declared_input_shape = None
        # Keras's activity regularization: penalty(output) / batch size joins the loss; the
        # model's executor adds its gradient (see pynn.layers.functional).
        self.activity_regularizer = regularizers.get(activity_regularizer)
        # The calls of this layer on symbolic tensors (pynn.layers.functional.Node).
        self._inbound_nodes = []

    # -- weights --------------------------------------------------------------------------
    def add_weight(self, name=None, shape=None, initializer=None, regularizer=None,
                   trainable=True, constraint=None, dtype=None):
        """pynn's ``add_weight(name, shape, initializer)``, or Keras 3's keyword form
        ``add_weight(shape=..., initializer=..., name=...)`` (a shape given first is taken
        as Keras's positional order). The initializer defaults to glorot_uniform (Keras's
        for floats)."""
        if name is not None and not isinstance(name, str):  # Keras: add_weight(shape, init)
            name, shape, initializer = None, name, shape if initializer is None else initializer
        if shape is None:
            raise TypeError(f"Layer '{self.name}': add_weight needs a shape")
        if name is None:
            name = f"variable_{len(self._variables)}" if self._variables else "variable"
        if dtype is not None and str(np.dtype(dtype)) != self.dtype:
            raise ValueError(f"Layer '{self.name}': weight '{name}' dtype {dtype} differs from "
                             f"the layer's {self.dtype}")
        init = initializers.get("glorot_uniform" if initializer is None else initializer)
        shape = tuple(int(d) for d in shape)
        if _zero_init:
            value = np.broadcast_to(np.zeros((), self.dtype), shape)
        else:
            value = backend.current().asarray(self._initial_value(name, shape, init),
                                              self.dtype)
        var = Variable(value, f"{self.name}/{name}", trainable=trainable,
                       regularizer=regularizers.get(regularizer), constraint=constraint)
        self._variables.append(var)
        return var

    def _weight_args(self, weight, initializer, regularizer, constraint):
        """Keras's ``<weight>_initializer``, ``_regularizer`` and ``_constraint`` arguments,
        checked (an error names the layer and the argument) and stored under Keras's names;
        ``_weight_args_config()`` saves all three for every weight declared here."""
        label = f"{type(self).__name__} '{self.name}'"
        for kind, registry, value in (("initializer", initializers, initializer),
                                      ("regularizer", regularizers, regularizer),
                                      ("constraint", constraints, constraint)):
            try:
                setattr(self, f"{weight}_{kind}", registry.get(value))
            except ValueError as exc:
                raise ValueError(f"{label}: {weight}_{kind}: {exc}") from None
        self._weight_kinds = getattr(self, "_weight_kinds", ()) + (weight,)

    def _weight_args_config(self):
        config = {}
        for weight in getattr(self, "_weight_kinds", ()):
            config[f"{weight}_initializer"] = initializers.serialize(
                getattr(self, f"{weight}_initializer"))
            config[f"{weight}_regularizer"] = regularizers.serialize(
                getattr(self, f"{weight}_regularizer"))
            config[f"{weight}_constraint"] = constraints.serialize(
                getattr(self, f"{weight}_constraint"))
        return config

    def _add_kernel_and_bias(self, kernel_shape, units):
        """``kernel`` of ``kernel_shape`` and, with ``use_bias``, ``bias`` of ``(units,)``,
        from the options ``_weight_args`` stored (Keras's order: kernel first)."""
        self.kernel = self.add_weight("kernel", kernel_shape, self.kernel_initializer,
                                      self.kernel_regularizer, constraint=self.kernel_constraint)
        self.bias = (self.add_weight("bias", (units,), self.bias_initializer,
                                     self.bias_regularizer, constraint=self.bias_constraint)
                     if self.use_bias else None)

    def _initial_value(self, name, shape, init):
        nbytes = math.prod(shape) * np.dtype(self.dtype).itemsize
        what = (f"Layer '{self.name}' ({type(self).__name__}): weight '{name}' of shape {shape} "
                f"({self.dtype}, {nbytes / 2**30:.1f} GiB)")
        if nbytes > sys.maxsize:
            raise ValueError(f"{what} is larger than the address space")
        # Beyond the machine's memory the draw would swap for minutes before failing (an
        # initializer writes every page): say so at once.
        if nbytes > _physical_memory():
            raise MemoryError(f"{what}: more than this machine's "
                              f"{_physical_memory() / 2**30:.1f} GiB of memory")
        # Each weight may fit the machine while the model's weights together do not: the
        # earlier ones are written already, so what is left now decides (the alternative is
        # the OOM killer taking the process halfway through building).
        free = _free_memory() if nbytes > _FREE_MEMORY_CHECK_BYTES else None
        if free is not None and nbytes > free:
            raise MemoryError(f"{what}: only {max(free, 0) / 2**30:.1f} GiB of memory is free "
                              f"(with the weights built so far)")
        try:
            return init(shape, dtype=self.dtype)
        except MemoryError:
            raise MemoryError(f"{what}: out of memory") from None

    @property
    def weights(self):
        if "_sublayers" not in self.__dict__:
            return list(self._variables)
        own = list(self._variables)
        return own + [v for v in self._own_and_sublayer("weights") if v not in own]

    @property
    def trainable_weights(self):
        own = [v for v in self._variables if v.trainable and self.trainable]
        if "_sublayers" not in self.__dict__:
            return own
        if not self.trainable:
            return []
        return own + [v for v in self._own_and_sublayer("trainable_weights") if v not in own]

    @property
    def non_trainable_weights(self):
        trainable = {id(v) for v in self.trainable_weights}
        return [v for v in self.weights if id(v) not in trainable]

    def get_weights(self):
        b = backend.current()
        return [np.array(b.to_numpy(v.value)) for v in self.weights]

    def set_weights(self, weights):
        weights = list(weights)
        variables = self.weights
        if len(weights) != len(variables):
            raise ValueError(f"Layer '{self.name}': expected {len(variables)} weight "
                             f"arrays, got {len(weights)}")
        b = backend.current()
        for var, w in zip(variables, weights):
            w = np.asarray(w)
            if tuple(w.shape) != var.shape:
                raise ValueError(f"Layer '{self.name}': weight '{var.name}' expects shape "
                                 f"{var.shape}, got {tuple(w.shape)}")
            if w.dtype.kind not in "biuf":
                raise TypeError(f"Layer '{self.name}': weight '{var.name}' must be numeric "
                                f"(real), got dtype {w.dtype}")
            # Always a copy: the optimizer updates weights in place, and must never write
            # into an array the caller still holds.
            var.value = b.asarray(np.array(w, dtype=self.dtype, copy=True), self.dtype)
        bump_version()

    def count_params(self):
        return int(sum(math.prod(v.shape) for v in self.weights))

    def regularization_penalty(self):
        """Adds each regularizer's gradient into its variable's grad; returns the penalty."""
        total = 0.0
        for v in self._variables:
            if v.regularizer is not None and v.grad is not None:
                total += v.regularizer.apply_inplace(v.value, v.grad)
        return total

    # -- shapes ---------------------------------------------------------------------------
    def build(self, input_shape):
        self.input_shape = tuple(input_shape)
        self.output_shape = self.compute_output_shape(self.input_shape)
        self.built = True

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def check_input(self, x):
        if isinstance(x, (list, tuple)):
            for i, (xi, expected) in enumerate(zip(x, self.input_shape)):
                self._check_one_input(xi, expected, f" input {i}")
            return
        self._check_one_input(x, self.input_shape, "")

    def _check_one_input(self, x, expected, which):
        shape = tuple(x.shape)
        if len(shape) != len(expected) or any(
            e is not None and e != s for e, s in zip(expected[1:], shape[1:])
        ):
            what = f"{which} expected shape" if which else " expected input shape"
            raise ValueError(f"Layer '{self.name}' ({type(self).__name__}){what} "
                             f"{shape_str(expected)}, got {shape_str((None,) + shape[1:])}")

    def _arrays_of(self, inputs):
        """The call's input as arrays: a nested list of numbers is one input (as NumPy reads
        it), a list that holds arrays is several inputs (the merge layers'), and anything
        NumPy cannot read as numbers is refused here rather than deep inside a kernel."""
        if isinstance(inputs, (list, tuple)):
            if not any(hasattr(x, "shape") for x in inputs):
                return self._numeric_array(inputs, "input")
            return [x if hasattr(x, "shape") else self._numeric_array(x, f"input {i}")
                    for i, x in enumerate(inputs)]
        return inputs if hasattr(inputs, "shape") else self._numeric_array(inputs, "input")

    def _numeric_array(self, value, which):
        try:
            array = np.asarray(value)
        except (ValueError, TypeError) as e:  # ragged nesting
            raise TypeError(f"Layer '{self.name}' ({type(self).__name__}): {which} must be an "
                            f"array or a nested list of numbers of one shape ({e})") from None
        if array.dtype.kind in "biufc" and array.ndim == 0:
            raise TypeError(f"Layer '{self.name}' ({type(self).__name__}): {which} must be an "
                            f"array with a batch axis, got the scalar {value!r}")
        return array  # strings go on to the text layers, which check them

    def __call__(self, inputs, training=None, **kwargs):
        """Eager on arrays; on the symbolic tensors of ``pynn.Input`` it records a node of a
        functional graph instead and returns symbolic outputs.

        A layer of several inputs (the merge layers) takes a list: ``build`` then gets a list
        of shapes, ``call`` a list of arrays, and ``backward`` returns a list of input
        gradients (None where ``needs_input_grad`` is False)."""
        if is_symbolic(inputs):
            return record(self, inputs, kwargs)
        if kwargs and not self._traced:
            raise TypeError(f"Layer '{self.name}' ({type(self).__name__}): unexpected call "
                            f"arguments {sorted(kwargs)}")
        inputs = self._arrays_of(inputs)
        several = isinstance(inputs, list)
        for x in inputs if several else (inputs,):
            if is_complex(x):
                raise TypeError(f"Layer '{self.name}' ({type(self).__name__}): input must be "
                                f"real, got dtype {x.dtype} (its imaginary part would be "
                                f"dropped)")
        if not self.built:
            if several:
                self.build([(None,) + tuple(x.shape[1:]) for x in inputs])
            else:
                self.build((None,) + tuple(inputs.shape[1:]))
        self.check_input(inputs)
        inputs = list(inputs) if several else inputs
        if training is None:  # inside a custom layer's call: its flag (Keras's call context)
            training = bool(autodiff.training_context())
        if self._traced:
            return self.call(inputs, training=training, **kwargs)
        if autodiff.recording() or autodiff._has_tensor(inputs):
            # Under a tape, or fed by recorded ops: the fused layer is one recorded node.
            return autodiff.call_builtin(self, inputs, training)
        return self.call(inputs, training=training)

    # -- masks (issue 14): Keras 3's rule. A layer that supports masking passes its input's
    # mask on (or makes its own in compute_mask); any other drops it. A layer whose call
    # takes ``mask=`` is given its input's mask by the model.
    supports_masking = False

    def compute_mask(self, inputs, mask=None):
        return mask if self.supports_masking else None

    def call(self, x, training=False):
        raise NotImplementedError(f"{type(self).__name__}.call")

    @_base_backward
    def backward(self, dy):
        """A layer without its own backward (a custom layer written with pynn.ops) replays
        what its training call recorded."""
        if self._traced:
            return autodiff.replay(self, dy)
        raise NotImplementedError(f"{type(self).__name__}.backward")

    # -- mixed precision (issue 17): Keras 3's layer attributes -----------------------------
    @property
    def compute_dtype(self):
        policy = self.__dict__.get("dtype_policy")
        # An integer InputLayer's dtype is its own, not its policy's.
        if policy is None or policy.variable_dtype != self.dtype:
            return self.dtype
        return policy.compute_dtype

    @property
    def variable_dtype(self):
        return self.dtype

    @property
    def _bf16_compute(self):
        """Whether the layer's GEMMs run on the bf16 ops (its policy is mixed_bfloat16)."""
        policy = self.__dict__.get("dtype_policy")
        return policy is not None and policy.compute_dtype == "bfloat16"

    def _dtype_config(self):
        """Keras 3's serialized policy for a mixed one; a plain float dtype stays its name."""
        policy = self.__dict__.get("dtype_policy")
        if policy is not None and policy.is_mixed:
            return mixed_precision.serialize(policy)
        return self.dtype

    # -- state that is neither config nor weights ---------------------------------------
    def runtime_state(self):
        """JSON-able state a resumed ``fit`` needs besides the weights (Dropout's position in
        its random stream); saved with the model."""
        return {}

    def set_runtime_state(self, state):
        if state:
            raise ValueError(f"Layer '{self.name}' ({type(self).__name__}) has no runtime "
                             f"state, got {sorted(state)}")

    # -- config ---------------------------------------------------------------------------
    def get_config(self):
        config = {"name": self.name, "trainable": self.trainable, "dtype": self._dtype_config()}
        if self._declared_input_shape is not None:
            config["input_shape"] = list(self._declared_input_shape[1:])
        if self.activity_regularizer is not None:
            config["activity_regularizer"] = regularizers.serialize(self.activity_regularizer)
        config.update(self._weight_args_config())
        return config

    # -- the functional API -------------------------------------------------------------
    def _first_node(self, what):
        if not self._inbound_nodes:
            raise AttributeError(f"Layer '{self.name}' ({type(self).__name__}) has no {what}: "
                                 f"it was never called on a symbolic tensor")
        return self._inbound_nodes[0]

    @property
    def output(self):
        """The symbolic output of this layer's first call (``Model(m.input,
        m.get_layer(name).output)`` builds a feature extractor)."""
        outputs = self._first_node("output").outputs
        return outputs[0] if len(outputs) == 1 else list(outputs)

    @property
    def input(self):
        node = self._first_node("input")
        if not node.inputs:  # an InputLayer: its input is its output
            return node.outputs[0]
        return list(node.inputs) if node.several else node.inputs[0]

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name}>"


def _completing_build(user_build):
    """Keras lets a custom ``build`` skip ``super().build()``: finish it for the user, so the
    layer is built once (and knows its shapes) either way."""

    def build(self, input_shape):
        user_build(self, input_shape)
        if not self.built:
            Layer.build(self, input_shape)

    build._pynn_completes = True
    build.__wrapped__ = user_build
    build.__doc__ = user_build.__doc__
    return build


def _track_sublayers(self, name, value):
    """__setattr__ of traced layers and subclassed models: layers (or lists of layers) set as
    attributes become parts whose weights are this layer's (Keras's attribute tracking)."""
    object.__setattr__(self, name, value)
    if name.startswith("_"):
        return
    items = value if isinstance(value, (list, tuple)) else [value]
    found = [v for v in items if isinstance(v, Layer) and v is not self]
    if found:
        subs = self.__dict__.get("_sublayers")
        if subs is None:
            subs = []
            object.__setattr__(self, "_sublayers", subs)
        subs.extend(v for v in found if all(v is not s for s in subs))


def is_complex(x):
    """Whether ``x`` has a complex dtype (NumPy's, a device array's, or a tensor's), which a
    cast to float would silently drop the imaginary part of."""
    dtype = getattr(x, "dtype", None)
    kind = getattr(dtype, "kind", None)  # NumPy and device arrays: one attribute read per call
    if kind is not None:
        return kind == "c"
    return dtype is not None and "complex" in str(dtype)


def activation_config(activation, layer=None, rows_ok=False):
    """Normalize an activation argument to (name, alpha) as the backend expects it; errors
    name ``layer`` (a Layer) when given. ``rows_ok``: the caller applies the activation on
    its own (the Activation layer), so ACTIVATIONS_ON_ROWS are taken too."""
    from pynn.backend.api import ACTIVATION_ALIASES, ACTIVATIONS, DEFAULT_ALPHA

    where = f"{type(layer).__name__} '{layer.name}': " if layer is not None else ""
    if activation is None:
        return "linear", 0.0
    if callable(activation) and not isinstance(activation, str):
        # pynn.ops.relu, keras-style functions named like an activation: the fused kernel.
        # Another callable has no fused kernel: apply it after the layer (a Lambda).
        named = getattr(activation, "__name__", "")
        named = ACTIVATION_ALIASES.get(named, named)
        if named in ACTIVATIONS and (rows_ok or named not in api.ACTIVATIONS_ON_ROWS):
            return named, DEFAULT_ALPHA.get(named, 0.0)
        if named in api.ACTIVATIONS_ON_ROWS:  # Keras 3's row activations: the name's rules
            return activation_config(named, layer, rows_ok)
        if layer is None:
            raise ValueError(f"activation {activation!r} is a callable pynn has no fused "
                             f"kernel for; give a name from {ACTIVATIONS}")
        if isinstance(activation, (types.BuiltinFunctionType, type)):
            # max, abs, a class: not a function of a tensor built from pynn.ops
            raise ValueError(f"{where}activation {activation!r} is not an activation: give "  # noqa: TRY004
                             f"a name from {ACTIVATIONS} or a function written with pynn.ops")
        _attach_callable_activation(layer, activation)
        return "linear", 0.0
    if not isinstance(activation, str):  # ValueError as before (callers catch it)
        raise ValueError(f"{where}activation must be one of {ACTIVATIONS} or None, got "  # noqa: TRY004
                         f"{activation!r}")
    if ">" in activation and layer is not None:
        # A saved layer's registered custom activation ("package>name").
        from pynn._registry import lookup_serializable
        return activation_config(lookup_serializable(activation, "activation"), layer)
    name = activation.lower()
    name = ACTIVATION_ALIASES.get(name, name)
    if name == "threshold":
        # Keras 3's threshold(x, threshold, default_value) has no defaults: named as an
        # activation it fails in Keras too when the layer runs
        raise ValueError(f"{where}activation 'threshold' needs its threshold and "
                         f"default_value (keras.activations.threshold has no defaults), so "
                         f"it cannot be named as an activation")
    if name not in ACTIVATIONS:
        raise ValueError(f"{where}unknown activation {activation!r}; expected one of "
                         f"{ACTIVATIONS}")
    if name in api.ACTIVATIONS_ON_ROWS and not rows_ok:
        if name == "glu" or layer is None:
            raise ValueError(f"{where}activation {name!r} acts on whole rows of the last axis "
                             f"(glu halves it) and is not fused into this layer; use a linear "
                             f"layer followed by Activation({name!r})")
        _attach_row_activation(layer, name)
        return "linear", 0.0
    alpha = DEFAULT_ALPHA.get(name, 0.0)
    return name, alpha


# {name: pynn.ops function} of the activations a layer applies as a row op after its linear part
ROW_ACTIVATION_FUNCTIONS = {}


def _attach_row_activation(layer, name):
    """log_softmax or sparsemax as a layer's activation=: the row op after the layer's linear
    part (the fused kernels have no row epilogue but softmax's), through the callable-activation
    path below; the layer's config and ONNX export keep the name (``_row_activation``)."""
    # pynn.ops fills ROW_ACTIVATION_FUNCTIONS when it is imported (pynn imports it; importing
    # it here would be an import cycle)
    _attach_callable_activation(layer, ROW_ACTIVATION_FUNCTIONS[name])

    def named_config():
        config = type(layer).get_config(layer)
        config["activation"] = name
        return config

    object.__setattr__(layer, "get_config", named_config)
    object.__setattr__(layer, "_row_activation", name)


# -- callable activations (issue 13): activation=fn on a built-in layer --------------------
# An activation with no fused kernel runs after the layer's linear part as pynn.ops: the
# layer's call, backward and get_config are wrapped on the instance (no class changes), its
# training call records fn on a private tape, and backward walks that back to dz before the
# layer's fused backward. Under a GradientTape the whole layer is one node (call_builtin).
def _attach_callable_activation(layer, fn):
    from pynn._registry import serializable_name

    cls = type(layer)

    def call(inputs, training=False):
        z = cls.call(layer, inputs, training=training)
        if not training:
            return autodiff._unwrap(fn(autodiff.Tensor(z)))
        inner, zt = layer._cache, autodiff.Tensor(z)
        with autodiff._Recorder() as rec:
            rec.watch(zt)
            y = fn(zt)
        y = y if type(y) is autodiff.Tensor else autodiff.Tensor(autodiff._unwrap(y))
        layer._cache = (inner, zt, y)
        return y.value

    def backward(dy):
        inner, zt, y = layer._cache
        layer._cache = inner
        dz = autodiff.backprop([y], [dy]).get(id(zt))
        if dz is None:  # fn ignores its input: nothing flows back
            dz = backend.current().zeros(tuple(zt.value.shape), zt.value.dtype)
        return cls.backward(layer, dz)

    def get_config():
        config = cls.get_config(layer)
        config["activation"] = serializable_name(fn, "activation")
        return config

    for name, method in (("call", call), ("backward", backward), ("get_config", get_config)):
        object.__setattr__(layer, name, method)
    object.__setattr__(layer, "_activation_fn", fn)


def bias_activation_backward(layer, dy, z, y):
    """dL/dz of a layer whose output is y = activation(z), z = (its product) + bias: the
    backward of the bias + activation epilogue. Sets ``layer.bias.grad`` when the layer has
    a bias, in the same pass over dy as the activation gradient when there is one."""
    dz, db = api.bias_activation_backward(backend.current(), dy, z, y, layer.activation,
                                          layer.alpha, layer.use_bias)
    if layer.use_bias:
        layer.bias.grad = db
    return dz


def pair(name, layer, value):
    if isinstance(value, (int, np.integer)):
        value = (int(value), int(value))
    try:
        value = tuple(int(v) for v in value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{layer}: {name} must be an int or a tuple of 2 ints, got {value!r}")
    if len(value) != 2 or min(value) < 1:
        raise ValueError(f"{layer}: {name} must be positive ints, got {value!r}")
    if max(value) > C_INT_MAX:
        raise ValueError(f"{layer}: {name} must be at most {C_INT_MAX} (a C int), got "
                         f"{value!r}")
    return value


def padding_arg(layer, padding):
    p = str(padding).lower()
    if p not in ("valid", "same"):
        raise ValueError(f"{layer}: padding must be 'valid' or 'same', got {padding!r}")
    return p


def data_format_arg(layer, data_format):
    if data_format not in (None, "channels_last"):
        raise ValueError(f"{layer}: only data_format='channels_last' (NHWC) is supported, got "
                         f"{data_format!r}")


# -- Keras 3's mask rules (pynn.layers.functional's plan applies them) ----------------------
_TAKES_MASK = {}


def takes_mask(layer):
    """Whether ``layer``'s call takes ``mask=`` (a wrapper with a ``mask_delegate``, as
    PruneLowMagnitude, answers for its inner layer)."""
    inner = getattr(layer, "mask_delegate", None)
    if inner is not None:
        return takes_mask(inner)
    kind = type(layer)
    found = _TAKES_MASK.get(kind)
    if found is None:
        import inspect

        found = _TAKES_MASK[kind] = "mask" in inspect.signature(layer.call).parameters
    return found


def makes_mask(layer):
    """Whether ``layer`` may produce a mask from unmasked inputs (Embedding, Masking, ...);
    layers that only pass masks on (the merges) say so with ``_mask_from_inputs_only``."""
    inner = getattr(layer, "mask_delegate", None)
    if inner is not None:
        return makes_mask(inner)
    own = getattr(type(layer), "compute_mask", None)
    return (own is not None and own is not Layer.compute_mask
            and not getattr(layer, "_mask_from_inputs_only", False)
            # an Embedding without mask_zero makes none
            and getattr(layer, "mask_zero", None) is not False)
