"""Model: one class for every topology; Sequential is a Model whose graph is a chain.

Training, evaluation, prediction, saving and summaries are written once, against the graph's
plan (``pynn.layers.functional.Plan``): a list of steps over integer slots made once per
model. The loops here go over epochs, batches and steps, never over samples or elements: a
batch is one contiguous slice of each input array, shuffled once per epoch, uploaded once,
pushed through one backend op per layer, and only the loss and metric counts come back.
"""

import contextlib
import functools
import math
import sys
import warnings

import numpy as np

from pynn import _config, backend, callbacks as callbacks_module, losses, metrics as metrics_module
from pynn import inference, optimizers, saving, utils
from pynn.data import Batches, is_dataset, split_batch
from pynn.layers import LAYERS, InputLayer
from pynn import autodiff
from pynn.layers.base import (
    KerasTensor, Layer, _base_backward, _base_call, _snake, _unique_name, is_complex,
    shape_str,
)
from pynn.layers.functional import Graph, Plan
from pynn.inference import _State as _LaneState, _weights_version
from pynn.backend.operands.common import labels_out_of_range



# -- issue 14: output masks in the metrics (used by Model._update_metrics only) -------------
def _metric_mask_weight(mask, out):
    """The output's Keras mask as float64 host weights of out.shape[:-1] (1 step taken, 0
    masked), or None: no mask, nothing masked, or a mask of another shape."""
    if mask is None:
        return None
    b = backend.current()
    m = np.asarray(b.to_numpy(mask) if not isinstance(mask, np.ndarray) else mask)
    if m.shape != tuple(out.shape[:-1]) or m.all():
        return None
    return m.astype(np.float64)


def _per_sample(sample_weight, ndim):
    """A sample weight as float64 host values broadcastable against ndim-D mask weights."""
    b = backend.current()
    w = np.asarray(sample_weight if isinstance(sample_weight, np.ndarray)
                   else b.to_numpy(sample_weight), dtype=np.float64)
    return w.reshape(w.shape + (1,) * max(ndim - w.ndim, 0))

class Model(Layer):
    """``Model(inputs, outputs, name)``: the layers between ``pynn.Input`` tensors and the
    outputs computed from them. ``inputs``/``outputs`` are a tensor, a list or a dict; data
    for ``fit``/``evaluate``/``predict`` takes the same form (a dict by input/output name)."""

    def __init__(self, inputs=None, outputs=None, name=None, trainable=True, **kwargs):
        if kwargs and not self._traced:
            raise TypeError(f"{type(self).__name__}: unexpected arguments {sorted(kwargs)}")
        _config.get_num_threads()  # applies the thread settings before the first kernel runs
        if name is not None and not isinstance(name, str):
            raise ValueError(f"{type(self).__name__}: name must be a string, got {name!r}")
        default = (_snake(type(self).__name__) if self._traced else self._default_name())
        super().__init__(name=name or _unique_name(default), trainable=trainable)
        self._init_training_state()
        if type(self) is Model or inputs is not None or outputs is not None:
            if inputs is None or outputs is None:
                raise ValueError(f"Model '{self.name}': give both inputs= and outputs= "
                                 f"(tensors from pynn.Input and the layers called on them)")
            self._init_graph(inputs, outputs)

    @staticmethod
    def _default_name():
        return "functional"

    def _init_training_state(self):
        self.optimizer = None
        self.loss = None
        self.compiled = False
        self.stop_training = False
        self.history = None
        self._metric_specs = []
        self._loss_weights = None
        self._output_losses = []
        self._output_metrics = []
        self._plan = None
        self._graph = None
        self._activity_penalty = 0.0
        self._distribution = None
        # Drawn from pynn.utils's generator when fit first shuffles, then the model's own:
        # saved with the model so a resumed fit shuffles as the uninterrupted one would.
        self._shuffle_rng = None
        self._initial_epoch = None

    # -- the graph --------------------------------------------------------------------------
    def _init_graph(self, inputs, outputs):
        self._input_keys, in_list = _flatten_structure(inputs, "inputs", self.name)
        self._output_keys, out_list = _flatten_structure(outputs, "outputs", self.name)
        for where, tensors in (("inputs", in_list), ("outputs", out_list)):
            for t in tensors:
                if type(t) is not KerasTensor:
                    raise TypeError(f"Model '{self.name}': {where} must be symbolic tensors "
                                    f"(from pynn.Input and layers called on it), got "
                                    f"{type(t).__name__}")
        if len({id(t) for t in in_list}) != len(in_list):
            raise ValueError(f"Model '{self.name}': the same input tensor is listed twice")
        self._graph = Graph(in_list, out_list, f"Model '{self.name}'")
        self._plan = Plan(self._graph)
        self._plan.prepare_backward(False)
        self.input_shape = ([t.shape for t in in_list] if self._input_keys is not None
                            else in_list[0].shape)
        self.output_shape = ([t.shape for t in out_list] if self._output_keys is not None
                             else out_list[0].shape)
        self.dtype = in_list[0].dtype
        self.built = True

    @property
    def layers(self):
        if self._graph is None:  # a subclassed model: the layers set as its attributes
            return list(self.__dict__.get("_sublayers", ()))
        return list(self._graph.layers)

    @property
    def inputs(self):
        if self._graph is None:
            return list(self.__dict__.get("_eager_inputs", ()))
        return list(self._graph.inputs)

    @property
    def outputs(self):
        if self._graph is None:
            return list(self.__dict__.get("_eager_outputs", ()))
        return list(self._graph.outputs)

    @property
    def input(self):
        ins = self.inputs
        return ins[0] if self._input_keys is None else _restructure(self._input_keys, ins)

    @property
    def output(self):
        outs = self.outputs
        return outs[0] if self._output_keys is None else _restructure(self._output_keys, outs)

    @property
    def input_names(self):
        return [t.node.layer.name if t.node is not None else t.name for t in self.inputs]

    @property
    def output_names(self):
        return [t.node.layer.name if t.node is not None else t.name for t in self.outputs]

    def get_layer(self, name=None, index=None):
        if (name is None) == (index is None):
            raise ValueError(f"get_layer: give exactly one of name= or index=, got name={name!r}, "
                             f"index={index!r}")
        layers = self.layers
        if index is not None:
            if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not (
                    -len(layers) <= index < len(layers)):
                raise ValueError(f"get_layer: index {index!r} out of range for model "
                                 f"'{self.name}' with {len(layers)} layers")
            return layers[index]
        for layer in layers:
            if layer.name == name:
                return layer
        raise ValueError(f"get_layer: no layer named {name!r} in model '{self.name}'; it has "
                         f"{[layer.name for layer in layers]}")

    def build(self, input_shape=None):
        """A subclassed model builds by calling itself once on a zero sample of
        ``input_shape`` (inference, nothing recorded): its layers make their weights and
        the output shapes become known, as Keras builds on the first call."""
        if not self._traced or self.built:
            return self
        if input_shape is None:
            raise ValueError(f"{type(self).__name__} '{self.name}': build needs an input shape")
        several = isinstance(input_shape, list)
        shapes = input_shape if several else [input_shape]
        self.built = True  # the call below must not build again
        try:
            b = backend.current()
            xs = [b.asarray(np.zeros((1,) + tuple(s[1:]), self.dtype), self.dtype)
                  for s in shapes]
            out = self.call(xs if several else xs[0], training=False)
        except BaseException:
            self.built = False
            raise
        outs = out if isinstance(out, (list, tuple)) else [out]
        outs = [autodiff._unwrap(o) for o in outs]
        self._eager_inputs = [KerasTensor((None,) + tuple(s[1:]), self.dtype,
                                          f"input_{k}" if several else "input")
                              for k, s in enumerate(shapes)]
        self._eager_outputs = [KerasTensor((None,) + tuple(o.shape[1:]), str(o.dtype),
                                           f"output_{k}" if len(outs) > 1 else "output")
                               for k, o in enumerate(outs)]
        self._input_keys = list(range(len(shapes))) if several else None
        self._output_keys = list(range(len(outs))) if isinstance(out, (list, tuple)) else None
        self._plan = _EagerPlan(self)
        self.input_shape = [t.shape for t in self._eager_inputs] if several else \
            self._eager_inputs[0].shape
        self.output_shape = ([t.shape for t in self._eager_outputs] if self._output_keys
                             is not None else self._eager_outputs[0].shape)
        if self.compiled and not self._output_losses:
            self._resolve_compile()
        return self

    def _ensure_built(self, shapes):
        if self._traced and not self.built:
            self.build((None,) + tuple(shapes[1:]))

    def compute_output_shape(self, input_shape):
        shapes = self.output_shape
        if isinstance(shapes, list):
            return [tuple(s) for s in shapes]
        return tuple(shapes)

    # -- weights ------------------------------------------------------------------------------
    @property
    def weights(self):
        seen, out = set(), []
        for v in self._variables:  # a subclassed model's own add_weight
            seen.add(id(v))
            out.append(v)
        for layer in self.layers:
            for v in layer.weights:
                if id(v) not in seen:
                    seen.add(id(v))
                    out.append(v)
        return out

    @property
    def trainable_weights(self):
        if not self.trainable:
            return []
        seen, out = set(), []
        for v in self._variables:
            if v.trainable:
                seen.add(id(v))
                out.append(v)
        for layer in self.layers:
            for v in layer.trainable_weights:
                if id(v) not in seen:
                    seen.add(id(v))
                    out.append(v)
        return out

    @property
    def non_trainable_weights(self):
        trainable = {id(v) for v in self.trainable_weights}
        return [v for v in self.weights if id(v) not in trainable]

    def get_weights(self):
        b = backend.current()
        return [np.array(b.to_numpy(v.value)) for v in self.weights]

    def set_weights(self, weights):
        weights = list(weights)
        owners = self.weights
        if len(weights) != len(owners):
            raise ValueError(f"{type(self).__name__} '{self.name}': expected {len(owners)} weight "
                             f"arrays, got {len(weights)}")
        # Per layer, so each layer's own checks (shape, dtype) name it.
        i = 0
        if self._variables:
            i = len(self._variables)
            Layer.set_weights(self, weights[:i])
        for layer in self.layers:
            k = len(layer.weights)
            layer.set_weights(weights[i:i + k])
            i += k

    def count_params(self):
        if not self.built:
            raise ValueError(f"{type(self).__name__} '{self.name}' is not built yet; give it an "
                             f"Input or call build(input_shape) first")
        return int(sum(math.prod(v.shape) for v in self.weights))

    def regularization_penalty(self):
        total, self._activity_penalty = self._activity_penalty, 0.0
        return total + sum(layer.regularization_penalty() for layer in self.layers)

    # -- as a layer of another model ----------------------------------------------------------
    def __call__(self, inputs, training=None, **kwargs):
        # The batch-1 lane of the inference plan (issue 16): a NumPy array, inference, no tape
        # listening in any thread, a model whose lane is ready (a subclassed model has none):
        # one native call, before the checks below. Written out here, in as few lookups as
        # can be: a request arriving after other work finds them all out of cache (a call
        # and a thread-local read cost ~4 us each there).
        if type(inputs) is np.ndarray and not training and not kwargs and \
                not autodiff._listening[0]:
            state = self.__dict__.get("_inference")
            if type(state) is _LaneState and state.lane_version == _weights_version[0] and \
                    state.graph_plan is self._plan and backend._current is state.cpu:
                y = state.lane(inputs)
                if y is not None:
                    return y
        from pynn.layers.symbolic import is_symbolic, record

        if is_symbolic(inputs):
            return record(self, inputs, kwargs)
        if self._traced or autodiff.recording() or autodiff._has_tensor(inputs):
            # A subclassed model, or any model under a tape: as a layer (one recorded node
            # for a functional model; its own ops for a subclassed one).
            return Layer.__call__(self, inputs, training=training, **kwargs)
        if kwargs:
            raise TypeError(f"call: unexpected arguments {sorted(kwargs)}")
        _config.apply_to_this_thread()
        if not training:  # the prepared inference plan (issue 16), None where it does not apply
            outs = inference.outputs(self, inputs)
            if outs is not None:
                return outs[0] if len(outs) == 1 else outs
        b = backend.current()
        xs = inputs if isinstance(inputs, (list, tuple, dict)) else [inputs]
        values = xs.values() if isinstance(xs, dict) else xs
        for x in values:
            if is_complex(x):
                raise TypeError(f"call: x must be numeric (real), got dtype {x.dtype}")
        if all(hasattr(x, "shape") and not isinstance(x, np.ndarray) for x in values):
            xs = self._order_inputs(inputs, "call")  # backend arrays pass as they are
            self._check_input_shapes(xs, "call")
        else:
            xs = [b.asarray(x, x.dtype) for x in self._prepare_inputs(inputs, "call")]
        outs = self.call(xs if len(xs) > 1 else xs[0], training=bool(training))
        return outs

    @_base_call
    def call(self, inputs, training=False):
        xs = inputs if isinstance(inputs, list) else [inputs]
        if not training:
            outs = self._plan.predict(xs)
            return outs[0] if len(outs) == 1 else outs
        outs, saved = self._plan.forward(xs, training)
        if training:
            self._cache = saved
        return outs[0] if len(outs) == 1 else outs

    @_base_backward
    def backward(self, dy):
        if self._traced:
            return autodiff.replay(self, dy)
        dys = dy if isinstance(dy, list) else [dy]
        self._plan.prepare_backward(self.needs_input_grad)
        saved, self._cache = self._cache, None
        grads, penalty = self._plan.backward(dys, saved)
        self._activity_penalty += penalty
        if not self.needs_input_grad:
            return None
        return grads[0] if len(grads) == 1 else grads

    def runtime_state(self):
        return {layer.name: layer.runtime_state() for layer in self.layers
                if layer.runtime_state()}

    def set_runtime_state(self, state):
        by_name = {layer.name: layer for layer in self.layers}
        for name, inner in state.items():
            if name not in by_name or not isinstance(inner, dict):
                raise ValueError(f"Model '{self.name}' has no layer {name!r} with state")
            by_name[name].set_runtime_state(inner)

    # -- compile ------------------------------------------------------------------------------
    def compile(self, optimizer="rmsprop", loss=None, metrics=None, loss_weights=None,
                weighted_metrics=None, **kwargs):
        unsupported = {k for k, v in kwargs.items() if v not in (None, False, "auto", 1)}
        if unsupported:
            raise ValueError(f"compile: unsupported arguments {sorted(unsupported)}")
        if loss is None:
            raise ValueError("compile: a loss is required, e.g. loss='mse'")
        self.optimizer = optimizers.get(optimizer)
        self._loss_spec = loss
        self._metric_specs = metrics if metrics is not None else []
        # Keras's weighted_metrics: updated with the batch's sample (and class) weights.
        self._weighted_metric_specs = weighted_metrics
        self._loss_weights_spec = loss_weights
        self.loss = losses.get(loss) if not isinstance(loss, (list, tuple, dict)) else None
        self.metrics = []
        self._output_losses = []
        self._output_metrics = []
        self.compiled = True
        self._distribution = _active_distribution()
        if self.built:
            self._resolve_compile()

    def _resolve_compile(self):
        """Per output: its loss (or None), weight and metric objects; checked against the
        output names and count once the model is built."""
        names = self.output_names
        n = len(names)
        self._output_losses = [
            None if spec is None else losses.get(spec)
            for spec in _per_output(self._loss_spec, names, "loss", broadcast=True)]
        if all(loss is None for loss in self._output_losses):
            raise ValueError("compile: every output's loss is None; nothing to train")
        if self.loss is None and n == 1:
            self.loss = self._output_losses[0]
        weights = self._loss_weights_spec
        if weights is None:
            self._loss_weights = [1.0] * n
        else:
            self._loss_weights = [1.0 if w is None else float(w)
                                  for w in _per_output(weights, names, "loss_weights",
                                                       broadcast=False)]
        self._output_metrics = self._metric_objects(self._metric_specs, "metrics")
        weighted = self._metric_objects(getattr(self, "_weighted_metric_specs", None),
                                        "weighted_metrics")
        self._weighted_ids = {id(m) for ms in weighted for m in ms}
        # A weighted metric logs after the plain ones of its output, as Keras orders them.
        self._output_metrics = [plain + extra
                                for plain, extra in zip(self._output_metrics, weighted)]
        self.metrics = [m for ms in self._output_metrics for m in ms]

    def _metric_objects(self, specs, what):
        """Per output, the metric objects of a compile argument (None, a flat list for every
        output, a list per output, or a dict by output name)."""
        names = self.output_names
        n = len(names)
        if specs is None:
            return [[] for _ in names]
        if n == 1 or isinstance(specs, dict) or (
                isinstance(specs, (list, tuple)) and specs and all(
                    isinstance(s, (list, tuple)) or s is None for s in specs)):
            per_output = _per_output(specs, names, what, broadcast=False) if n > 1 or \
                isinstance(specs, dict) else [specs]
        else:
            per_output = [specs] * n  # a flat list applies to every output
        out = []
        for k, spec in enumerate(per_output):
            spec = [] if spec is None else (list(spec) if isinstance(spec, (list, tuple))
                                            else [spec])
            shape = self.outputs[k].shape
            out.append([metrics_module.get(m, self._output_losses[k], shape) for m in spec])
        return out

    def _resolve_metrics(self):
        if not self._output_losses and self.built:
            self._resolve_compile()
        return self.metrics

    def _check_compiled(self, what):
        if not self.compiled:
            raise RuntimeError(f"You must call compile() before {what}()")

    def _compile_config(self):
        """compile()'s arguments, JSON-able (saved with the model)."""
        def loss_spec(spec):
            if isinstance(spec, dict):
                return {k: loss_spec(v) for k, v in spec.items()}
            if isinstance(spec, (list, tuple)):
                return [loss_spec(v) for v in spec]
            return None if spec is None else losses.serialize(losses.get(spec))

        def metric_spec(spec):
            if isinstance(spec, dict):
                return {k: metric_spec(v) for k, v in spec.items()}
            if isinstance(spec, (list, tuple)):
                return [metric_spec(v) for v in spec]
            if spec is None or isinstance(spec, str):
                return spec
            return metrics_module.serialize(spec)

        config = {"optimizer": optimizers.serialize(self.optimizer),
                  "loss": loss_spec(self._loss_spec),
                  "metrics": metric_spec(self._metric_specs)}
        if getattr(self, "_weighted_metric_specs", None) is not None:
            config["weighted_metrics"] = metric_spec(self._weighted_metric_specs)
        if self._loss_weights_spec is not None:
            config["loss_weights"] = self._loss_weights_spec
        return config

    def _compile_from_config(self, config):
        def loss_spec(spec):
            if isinstance(spec, dict) and "class_name" not in spec:
                return {k: loss_spec(v) for k, v in spec.items()}
            if isinstance(spec, list):
                return [loss_spec(v) for v in spec]
            return None if spec is None else losses.get(spec)

        def metric_spec(spec):
            if isinstance(spec, dict) and "class_name" not in spec:
                return {k: metric_spec(v) for k, v in spec.items()}
            if isinstance(spec, list):
                return [metric_spec(v) for v in spec]
            return spec if spec is None or isinstance(spec, str) else metrics_module.get(spec)

        self.compile(optimizer=optimizers.get(config["optimizer"]),
                     loss=loss_spec(config["loss"]),
                     metrics=metric_spec(config.get("metrics", [])),
                     loss_weights=config.get("loss_weights"),
                     weighted_metrics=metric_spec(config.get("weighted_metrics")))

    # -- data -----------------------------------------------------------------------------------
    def _order_inputs(self, x, what):
        """x (an array, list or dict by input name) as a list in the model's input order."""
        names = self.input_names
        if isinstance(x, dict):
            unknown = set(x) - set(names)
            missing = [k for k in names if k not in x]
            if unknown or missing:
                raise ValueError(f"{what}: the model's inputs are {names}; got keys "
                                 f"{sorted(x)}")
            return [x[k] for k in names]
        if isinstance(x, (list, tuple)) and len(names) > 1:
            if len(x) != len(names):
                raise ValueError(f"{what}: the model has {len(names)} inputs {names}, got "
                                 f"{len(x)} arrays")
            return list(x)
        if len(names) > 1:
            raise ValueError(f"{what}: the model has {len(names)} inputs {names}; pass a list "
                             f"or a dict of arrays")
        return [x]

    def _check_input_shapes(self, xs, what):
        for t, x in zip(self.inputs, xs):
            shape = tuple(x.shape)
            if len(shape) != len(t.shape) or any(
                e is not None and e != s for e, s in zip(t.shape[1:], shape[1:])
            ):
                raise ValueError(f"{what}: input '{t.node.layer.name}' expects shape "
                                 f"{shape_str(t.shape)}, got {shape_str((None,) + shape[1:])}")

    def _prepare_inputs(self, x, what):
        if x is None:
            raise ValueError(f"{what}: x is required")
        if not self.built:
            first = x[0] if isinstance(x, (list, tuple)) else x
            arr = np.asarray(first)
            if arr.ndim < 2:
                raise ValueError(f"{what}: x must have a batch axis and at least one feature "
                                 f"axis, got shape {arr.shape}")
            self._ensure_built(arr.shape)
        xs = self._order_inputs(x, what)
        out, n = [], None
        for t, xi in zip(self.inputs, xs):
            arr = xi if type(xi) is np.ndarray else np.asarray(xi)
            if not _is_real(arr):
                raise TypeError(f"{what}: x must be numeric (real), got dtype {arr.dtype}")
            if arr.ndim < 2:
                raise ValueError(f"{what}: x must have a batch axis and at least one feature "
                                 f"axis, got shape {arr.shape}")
            if n is not None and arr.shape[0] != n:
                raise ValueError(f"{what}: the input arrays hold different numbers of samples "
                                 f"({n} and {arr.shape[0]})")
            n = arr.shape[0]
            out.append(arr)
        self._check_input_shapes_host(out, what)
        dtypes = [_np_dtype(t.dtype) for t in self.inputs]
        for t, a, dtype in zip(self.inputs, out, dtypes):
            if dtype.kind == "i" and a.size and (a.dtype.kind == "f" or (
                    a.dtype.kind in "iu" and a.dtype.itemsize > dtype.itemsize)):
                info = np.iinfo(t.dtype)
                if a.dtype.kind == "f" and not np.all(np.isfinite(a) & (a == np.round(a))):
                    raise ValueError(f"{what}: input '{t.node.layer.name}' is {t.dtype}; x "
                                     f"holds values that are not whole numbers")
                if a.min() < info.min or a.max() > info.max:
                    raise ValueError(f"{what}: input '{t.node.layer.name}' is {t.dtype}; x "
                                     f"holds values outside its range")
        # (the arrays already right pass without a NumPy call: a step's checks run cold)
        return [a if a.dtype is dtype and a.flags.c_contiguous
                else np.ascontiguousarray(a, dtype=dtype) for a, dtype in zip(out, dtypes)]

    def _check_input_shapes_host(self, arrays, what):
        for t, arr in zip(self.inputs, arrays):
            expected = t.shape
            if len(expected) != arr.ndim or any(
                e is not None and e != s for e, s in zip(expected[1:], arr.shape[1:])
            ):
                which = "" if len(arrays) == 1 else f" (input '{t.node.layer.name}')"
                raise ValueError(f"{what}: the model expects input shape {shape_str(expected)}"
                                 f"{which}, got x with shape {shape_str((None,) + arr.shape[1:])}")

    def _prepare_targets(self, y, n, what):
        if y is None:
            raise ValueError(f"{what}: y is required")
        self._resolve_metrics()
        names = self.output_names
        if isinstance(y, dict):
            unknown = set(y) - set(names)
            if unknown:
                raise ValueError(f"{what}: the model's outputs are {names}; got keys "
                                 f"{sorted(y)}")
            ys = [y.get(k) for k in names]
        elif isinstance(y, (list, tuple)) and len(names) > 1:
            if len(y) != len(names):
                raise ValueError(f"{what}: the model has {len(names)} outputs {names}, got "
                                 f"{len(y)} target arrays")
            ys = list(y)
        elif len(names) > 1:
            raise ValueError(f"{what}: the model has {len(names)} outputs {names}; pass a list "
                             f"or a dict of target arrays")
        else:
            ys = [y]
        out = []
        for k, (yk, loss) in enumerate(zip(ys, self._output_losses)):
            if loss is None:
                out.append(None)
                continue
            if yk is None:
                raise ValueError(f"{what}: output '{names[k]}' has a loss but no target")
            where = what if len(names) == 1 else f"{what} (output '{names[k]}')"
            out.append(_prepare_target(yk, n, where, self.outputs[k].shape, loss,
                                       self.outputs[k].dtype))
        return out

    # -- random state -----------------------------------------------------------------------
    def _shuffle_generator(self):
        if self._shuffle_rng is None:
            self._shuffle_rng = np.random.default_rng(utils.new_seed())
        return self._shuffle_rng

    def rng_state(self):
        """JSON-able state of the random streams training draws from besides the layers' own
        (the shuffle order); saved with the model."""
        if self._shuffle_rng is None:
            return {}
        return {"shuffle": self._shuffle_rng.bit_generator.state}

    def set_rng_state(self, state):
        shuffle = state.get("shuffle")
        unknown = set(state) - {"shuffle"}
        if unknown:
            raise ValueError(f"unknown random streams {sorted(unknown)}")
        if shuffle is None:
            self._shuffle_rng = None
            return
        if not isinstance(shuffle, dict) or shuffle.get("bit_generator") != "PCG64":
            raise ValueError("the shuffle state must be a PCG64 state object")
        generator = np.random.Generator(np.random.PCG64())
        generator.bit_generator.state = shuffle
        self._shuffle_rng = generator

    # -- steps ----------------------------------------------------------------------------------
    def _prepare_train(self):
        self._resolve_metrics()
        self._trainable = self.trainable_weights
        self._plan.prepare_backward(False)

    def _losses_and_grads(self, ys, outs, need_grad, sws=None):
        b = backend.current()
        total, per_output, grads = 0.0, [], []
        sws = sws or [None] * len(outs)
        for loss, weight, yk, out, sw, mask in zip(self._output_losses, self._loss_weights, ys,
                                                   outs, sws, self._plan.output_masks):
            if loss is None:
                per_output.append(None)
                grads.append(None)
                continue
            if mask is not None:  # issue 14: masked entries do not count (Keras)
                sw = losses.masked_sample_weight(mask, sw, out)
            if sw is None:
                value, grad = loss.forward_backward(yk, out, need_grad=need_grad)
            else:
                value, grad = loss.forward_backward(yk, out, need_grad=need_grad,
                                                    sample_weight=sw)
            if need_grad and weight != 1.0:
                b.scale_inplace(grad, weight)
            total += weight * value
            per_output.append(value)
            grads.append(grad)
        return total, per_output, grads

    # -- Keras's overridable steps ----------------------------------------------------------
    def train_step(self, data):
        """Keras's hook: override it (with a GradientTape, ``self.compute_loss`` and
        ``self.optimizer.apply``) and ``fit`` calls it once per batch with ``(x, y)`` or
        ``(x, y, sample_weight)`` as Tensors; return a dict of logs holding ``loss``."""
        raise NotImplementedError("Model.train_step: fit runs its fused step unless a "
                                  "subclass overrides train_step")

    def test_step(self, data):
        """Keras's hook for ``evaluate``, as ``train_step``."""
        raise NotImplementedError("Model.test_step: evaluate runs its fused step unless a "
                                  "subclass overrides test_step")

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The compiled loss(es) of ``y_pred`` against ``y`` plus the regularization
        penalties, as a Tensor that a GradientTape differentiates."""
        ys = y if isinstance(y, (list, tuple)) and len(self._output_losses) > 1 else [y]
        preds = (y_pred if isinstance(y_pred, (list, tuple)) and len(self._output_losses) > 1
                 else [y_pred])
        total = None
        for loss, weight, yk, pk in zip(self._output_losses, self._loss_weights, ys, preds):
            if loss is None:
                continue
            term = loss(yk, pk, sample_weight=sample_weight)
            term = term if weight == 1.0 else term * weight
            total = term if total is None else total + term
        from pynn import ops
        for v in self.trainable_weights:
            if v.regularizer is not None:
                total = total + v.regularizer.as_op(v) if hasattr(v.regularizer, "as_op") \
                    else total
        return ops.convert_to_tensor(0.0) if total is None else total

    def _custom_step(self, step, xb, yb, swb):
        data = (_tensors(xb), _tensors(yb)) + ((_tensors(swb),) if swb and any(
            w is not None for w in swb) else ())
        logs = step(data) or {}
        loss = logs.get("loss", float("nan"))
        return _log_value(loss), [None] * len(self._output_losses)

    def _train_step(self, xb, yb, swb=None):
        if backend.device() == "cpu":
            _config.keep_warm()
        if type(self).train_step is not Model.train_step:
            return self._custom_step(self.train_step, xb, yb, swb)
        for v in self._trainable:  # a layer no loss reaches this step must not reuse old grads
            v.grad = None
        outs, saved = self._plan.forward(xb, True)
        total, per_output, grads = self._losses_and_grads(yb, outs, True, swb)
        # api: a LossScaleOptimizer's scale multiplies the loss, so every gradient (Keras's
        # scale_loss before the backward pass)
        loss_scale = getattr(self.optimizer, "current_loss_scale", None)
        loss_scale = loss_scale() if loss_scale is not None else None
        if loss_scale is not None:
            with np.errstate(over="ignore", invalid="ignore"):  # overflow: the step is skipped
                for g in grads:
                    if g is not None:
                        backend.current().scale_inplace(g, loss_scale)
        hook = (None if self._distribution is None
                else self._distribution.grads_final_hook(self._trainable))
        _, activity = self._plan.backward(grads, saved, hook)
        if self._distribution is not None:
            self._distribution.reduce_gradients(self._trainable)
        if loss_scale is not None:
            penalty = activity + _scaled_regularization_penalty(self, loss_scale)
        else:
            penalty = activity + self.regularization_penalty()
        self.optimizer.apply(self._trainable)
        self._update_metrics(yb, outs, swb)
        return total + penalty, per_output

    def _test_step(self, xb, yb, swb=None):
        if backend.device() == "cpu":
            _config.keep_warm()
        if type(self).test_step is not Model.test_step:
            return self._custom_step(self.test_step, xb, yb, swb)
        outs, _ = self._plan.forward(xb, False)
        total, per_output, _ = self._losses_and_grads(yb, outs, False, swb)
        self._update_metrics(yb, outs, swb)
        return total + self._penalty_value(), per_output

    def _update_metrics(self, ys, outs, sws=None):
        weighted = getattr(self, "_weighted_ids", ())
        sws = sws or [None] * len(outs)
        masks = list(getattr(self._plan, "output_masks", None) or []) or [None] * len(outs)
        for ms, yk, out, sw, mask in zip(self._output_metrics, ys, outs, sws, masks):
            # issue 14: masked steps do not count in the metrics either. Keras multiplies the
            # mask reaching the output into every metric's sample weight (the weight itself
            # only into weighted_metrics); a weighted mean then runs over the unmasked steps.
            mask_w = _metric_mask_weight(mask, out)
            for m in ms:
                w = sw if (sw is not None and id(m) in weighted) else None
                if mask_w is not None:
                    w = mask_w if w is None else mask_w * _per_sample(w, mask_w.ndim)
                if w is not None:
                    m.update_state(yk, out, sample_weight=w)
                else:
                    m.update_state(yk, out)

    def _penalty_value(self):
        total = 0.0
        b = backend.current()
        for v in self.weights:
            if v.regularizer is not None:
                total += v.regularizer(b.to_numpy(v.value))
        return total

    def _log_keys(self):
        names = self.output_names
        weighted = getattr(self, "_weighted_ids", ())

        def keys(prefix, ms):
            # Keras: a weighted metric whose name a plain one already took logs as weighted_X
            taken, out = set(), []
            for m in ms:
                key = prefix + m.name
                if id(m) in weighted and key in taken:
                    key = prefix + "weighted_" + m.name
                taken.add(key)
                out.append(key)
            return out
        if len(names) == 1:
            return [None], [keys("", self._output_metrics[0])]
        loss_keys = [None if loss is None else f"{name}_loss"
                     for name, loss in zip(names, self._output_losses)]
        metric_keys = [keys(f"{name}_", ms) for name, ms in zip(names, self._output_metrics)]
        return loss_keys, metric_keys

    def _logs(self, loss_sum, output_sums, count, prefix=""):
        count = max(count, 1)
        logs = {}
        loss_keys, metric_keys = self._log_keys()
        for keys, ms in zip(metric_keys, self._output_metrics):
            for key, m in zip(keys, ms):
                logs[prefix + key] = _log_value(m.result())
        for key, s in zip(loss_keys, output_sums):
            if key is not None:
                logs[prefix + key] = s / count
        logs[prefix + "loss"] = loss_sum / count
        return logs

    @property
    def metrics_names(self):
        loss_keys, metric_keys = self._log_keys()
        return ["loss"] + [k for k in loss_keys if k is not None] + \
            [k for keys in metric_keys for k in keys]

    # -- public loops -----------------------------------------------------------------------
    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
            sample_weight=None, initial_epoch=0, steps_per_epoch=None, validation_steps=None,
            validation_batch_size=None, validation_freq=1):
        """Keras 3's fit. ``x`` is arrays (a list or dict for several inputs), a
        ``pynn.utils.PyDataset``, an indexed batch source or a generator yielding ``(x, y)`` /
        ``(x, y, sample_weight)``; ``validation_data`` likewise, or a tuple of arrays."""
        self._check_compiled("fit")
        batch_size = _batch_size_arg(batch_size, "fit")
        # -- api: keras.config's caps (set_max_epochs / set_max_steps_per_epoch), as Keras's fit
        epochs, steps_per_epoch = _config_caps(epochs, steps_per_epoch)
        verbose = 1 if verbose == "auto" else int(verbose)
        if not 0.0 <= validation_split < 1.0:
            raise ValueError(f"fit: validation_split must be in [0, 1), got {validation_split}")
        _check_freq(validation_freq)
        self._resolve_metrics()
        if is_dataset(x):
            _refuse_with_dataset("fit", y=y, sample_weight=sample_weight,
                                 validation_split=validation_split or None)
            self._check_built_for_dataset("fit")
            source = _DatasetSource(self, Batches(self._rank_data(x), steps_per_epoch, "fit"),
                                    "fit", class_weight)
        else:
            xs = self._prepare_inputs(x, "fit")
            self._resolve_metrics()
            n = xs[0].shape[0]
            ys = self._prepare_targets(y, n, "fit")
            sws = self._sample_weights(sample_weight, class_weight, ys, n, "fit")
            if validation_data is None and validation_split > 0:
                # Keras takes the last fraction, before any shuffling, and weighs it by
                # sample_weight alone: class_weight is the training data's.
                split = int(n * (1.0 - validation_split))
                val_sws = (sws if class_weight is None
                           else self._sample_weights(sample_weight, None, ys, n, "fit"))
                validation_data = _ArraySource(
                    [a[split:] for a in xs], [_slice(a, split, None) for a in ys],
                    [_slice(a, split, None) for a in val_sws], validation_batch_size or batch_size)
                xs, ys = [a[:split] for a in xs], [_slice(a, None, split) for a in ys]
                sws = [_slice(a, None, split) for a in sws]
            if xs[0].shape[0] == 0:
                raise ValueError("fit: x holds no samples to train on")
            source = _ArraySource(xs, ys, sws, batch_size, shuffle and self._shuffle_generator,
                                  steps_per_epoch)
        if validation_data is not None and not isinstance(validation_data, _ArraySource):
            validation_data = self._validation_source(
                validation_data, validation_steps, validation_batch_size or batch_size)
        self._prepare_train()
        self.history = callbacks_module.History()
        if self._distribution is not None:
            verbose = verbose if self._distribution.is_primary else 0
            self._distribution.on_fit_begin(self, source)
        params = {"verbose": verbose, "epochs": epochs, "steps": source.steps}
        callbacks = list(callbacks or [])
        if any(isinstance(cb, callbacks_module.ProgbarLogger) for cb in callbacks):
            verbose = 0  # the user's ProgbarLogger draws the bar (params keep the verbosity)
        cbs = callbacks_module.CallbackList(callbacks + [self.history], self, params)
        self.stop_training = False
        self._initial_epoch = None  # a callback (BackupAndRestore) may move the start
        with backend.host_memory_loop(trim=True):
            return self._fit_loop(source, epochs, verbose, cbs, validation_data,
                                  validation_freq, initial_epoch)

    def _check_built_for_dataset(self, what):
        if not self.built:
            raise ValueError(f"{what}: model '{self.name}' is not built; give it an Input (or "
                             f"call build(input_shape)) before passing a dataset or generator")
        self._resolve_metrics()

    def _rank_data(self, data):
        """Under data parallelism each rank reads only its own batches of an indexed dataset."""
        return data if self._distribution is None else self._distribution.shard_dataset(data)

    def _validation_source(self, data, steps, batch_size):
        what = "fit (validation_data)"
        if is_dataset(data):
            return _DatasetSource(self, Batches(self._rank_data(data), steps, what), what,
                                  None)
        if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
            raise ValueError("fit: validation_data must be (x_val, y_val), (x_val, y_val, "
                             "sample_weight) or a dataset")
        vx = self._prepare_inputs(data[0], what)
        n = vx[0].shape[0]
        vy = self._prepare_targets(data[1], n, what)
        vsw = self._sample_weights(data[2] if len(data) == 3 else None, None, vy, n, what)
        return _ArraySource(vx, vy, vsw, batch_size)

    def _fit_loop(self, source, epochs, verbose, cbs, validation, validation_freq,
                  initial_epoch):
        b = backend.current()
        cbs.on_train_begin()
        if self._initial_epoch is not None:
            initial_epoch = self._initial_epoch
        self._prepare_train()  # a callback may have changed what is trainable
        epoch_logs = {}
        nout = len(self._output_losses)
        for epoch in range(initial_epoch, epochs):
            for m in self.metrics:
                m.reset_state()
            cbs.on_epoch_begin(epoch)
            if verbose:
                callbacks_module.output_stream().write(f"Epoch {epoch + 1}/{epochs}\n")
            bar = callbacks_module.Progbar(source.steps, verbose)
            loss_sum, sums, seen, warned, step = 0.0, [0.0] * nout, 0, False, -1
            with source.epoch() as batches:
                for step, (xb, yb, swb) in enumerate(batches):
                    if self._distribution is not None:  # this rank's share of the batch
                        xb, yb, swb = self._distribution.shard(xb, yb, swb, source)
                    cbs.on_train_batch_begin(step)
                    count = xb[0].shape[0]
                    loss, per_output = self._train_step(
                        [b.asarray(a, a.dtype) for a in xb], _upload(b, yb), _upload(b, swb))
                    if not math.isfinite(loss) and not warned:
                        of = f"/{source.steps}" if source.steps else ""
                        warnings.warn(f"fit: the loss became {loss} at epoch {epoch + 1}, "
                                      f"batch {step + 1}{of}", RuntimeWarning, stacklevel=3)
                        warned = True
                    loss_sum += loss * count
                    for k, v in enumerate(per_output):
                        if v is not None:
                            sums[k] += v * count
                    seen += count
                    logs = self._logs(loss_sum, sums, seen)
                    cbs.on_train_batch_end(step, logs)  # running means, as Keras 3's
                    bar.update(step + 1, logs)
                    if self.stop_training:
                        break
            if step < 0:
                raise ValueError(f"fit: the data gave no batch in epoch {epoch + 1} (an "
                                 f"exhausted generator? give steps_per_epoch and a generator "
                                 f"that loops)")
            epoch_logs = self._logs(loss_sum, sums, seen)
            if self._distribution is not None:
                epoch_logs = self._distribution.reduce_logs(epoch_logs, seen)
            if validation is not None and _validate_now(validation_freq, epoch):
                cbs.on_test_begin()  # api: as Keras's fit, whose evaluate gets the callbacks
                val = self._evaluate_source(validation)
                epoch_logs.update({"val_" + k: v for k, v in val.items()})
                cbs.on_test_end({"val_" + k: v for k, v in val.items()})
            if verbose == 1:
                bar.update(step + 1, epoch_logs, finalize=True)
            elif verbose == 2:
                bar.summary_line(step + 1, epoch_logs)
            cbs.on_epoch_end(epoch, epoch_logs)
            if self.stop_training:
                break
        # api: Keras's fit ends with finalize_variable_values (EMA weights into the model)
        finalize = getattr(self.optimizer, "finalize_variable_values", None)
        if finalize is not None and epochs > initial_epoch:
            finalize(self.trainable_weights)
        cbs.on_train_end(epoch_logs)
        return self.history

    def _evaluate_source(self, source, bar=None):
        b = backend.current()
        for m in self.metrics:
            m.reset_state()
        loss_sum, sums, seen = 0.0, [0.0] * len(self._output_losses), 0
        with source.epoch() as batches:
            for step, (xb, yb, swb) in enumerate(batches):
                if self._distribution is not None:
                    xb, yb, swb = self._distribution.shard(xb, yb, swb, source)
                count = xb[0].shape[0]
                loss, per_output = self._test_step([b.asarray(a, a.dtype) for a in xb],
                                                   _upload(b, yb), _upload(b, swb))
                loss_sum += loss * count
                for k, v in enumerate(per_output):
                    if v is not None:
                        sums[k] += v * count
                seen += count
                if bar is not None:
                    bar.update(step + 1, self._logs(loss_sum, sums, seen))
        if seen == 0 and self._distribution is None:
            raise ValueError("evaluate: the data holds no samples")
        logs = self._logs(loss_sum, sums, seen)
        if self._distribution is not None:
            logs = self._distribution.reduce_logs(logs, seen)
        if bar is not None:
            bar.update(bar.target or 1, logs, finalize=True)
        return logs

    def _evaluate_arrays(self, xs, ys, batch_size, bar=None):
        return self._evaluate_source(_ArraySource(xs, ys, [None] * len(ys), batch_size), bar)

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None,
                 steps=None, return_dict=False):
        self._check_compiled("evaluate")
        batch_size = _batch_size_arg(batch_size, "evaluate")
        verbose = 1 if verbose == "auto" else int(verbose)
        self._resolve_metrics()
        if is_dataset(x):
            _refuse_with_dataset("evaluate", y=y, sample_weight=sample_weight)
            self._check_built_for_dataset("evaluate")
            source = _DatasetSource(self, Batches(self._rank_data(x), steps, "evaluate"),
                                    "evaluate", None)
        else:
            xs = self._prepare_inputs(x, "evaluate")
            n = xs[0].shape[0]
            ys = self._prepare_targets(y, n, "evaluate")
            if n == 0:
                raise ValueError("evaluate: x holds no samples")
            sws = self._sample_weights(sample_weight, None, ys, n, "evaluate")
            source = _ArraySource(xs, ys, sws, batch_size, steps=steps)
        bar = callbacks_module.Progbar(source.steps, 1) if verbose else None
        with backend.host_memory_loop(trim=True):
            logs = self._evaluate_source(source, bar)
        return self._result(logs, return_dict)

    def _result(self, logs, return_dict):
        if return_dict:
            return logs
        names = self.metrics_names
        if len(names) == 1:
            return logs["loss"]
        return [logs[k] for k in names]

    def predict(self, x, batch_size=None, verbose="auto", steps=None):
        batch_size = _batch_size_arg(batch_size, "predict")
        b = backend.current()
        cpu = backend.device() == "cpu"
        if is_dataset(x):
            self._check_built_for_dataset("predict")
            parts = [[] for _ in self.outputs]
            batches = Batches(x, steps, "predict")
            with backend.host_memory_loop(trim=True), batches.epoch() as stream:
                for batch in stream:
                    xb, _, _ = split_batch(batch, "predict", need_y=False)
                    xs = self._prepare_inputs(xb, "predict")
                    if cpu:
                        _config.keep_warm()
                    ys = self._plan.predict([b.asarray(a, a.dtype) for a in xs])
                    for part, yk in zip(parts, ys):
                        part.append(np.array(b.to_numpy(yk)))
            if not parts or not parts[0]:
                raise ValueError("predict: the data gave no batch")
            return self._structure_outputs([np.concatenate(p) for p in parts])
        xs = self._prepare_inputs(x, "predict")
        n = xs[0].shape[0]
        if steps is not None:
            n = min(n, int(steps) * batch_size)
        # An output with an unknown axis (Input((None, F)): any number of steps) takes its
        # shape from the first batch's answer
        outs = [np.empty((n,) + tuple(0 if d is None else d for d in t.shape[1:]),
                         dtype=t.dtype) if None not in t.shape[1:] or n == 0 else None
                for t in self.outputs]
        with backend.host_memory_loop(trim=True):
            for lo in range(0, n, batch_size):
                hi = min(n, lo + batch_size)
                part = [a[lo:hi] for a in xs]
                if cpu and hi - lo > 1:   # batch 1 runs on the one-thread inference lane
                    _config.keep_warm()
                ys = (inference.outputs(self, part if len(part) > 1 else part[0])
                      or self._plan.predict([b.asarray(a, a.dtype) for a in part]))
                for k, yk in enumerate(ys):
                    yk = b.to_numpy(yk)
                    if outs[k] is None:
                        outs[k] = np.empty((n,) + tuple(yk.shape[1:]), dtype=self.outputs[k].dtype)
                    outs[k][lo:hi] = yk
        return self._structure_outputs(outs)

    # Keras 2's generator methods, for older code.
    def fit_generator(self, generator, steps_per_epoch=None, epochs=1, verbose=1,
                      callbacks=None, validation_data=None, validation_steps=None,
                      validation_freq=1, class_weight=None, max_queue_size=10, workers=1,
                      use_multiprocessing=False, shuffle=True, initial_epoch=0):
        _warn_alias("fit_generator", "fit")
        return self.fit(generator, epochs=epochs, verbose=verbose, callbacks=callbacks,
                        validation_data=validation_data, validation_steps=validation_steps,
                        validation_freq=validation_freq, class_weight=class_weight,
                        shuffle=shuffle, initial_epoch=initial_epoch,
                        steps_per_epoch=steps_per_epoch)

    def evaluate_generator(self, generator, steps=None, callbacks=None, max_queue_size=10,
                           workers=1, use_multiprocessing=False, verbose=0):
        _warn_alias("evaluate_generator", "evaluate")
        return self.evaluate(generator, steps=steps, verbose=verbose)

    def predict_generator(self, generator, steps=None, callbacks=None, max_queue_size=10,
                          workers=1, use_multiprocessing=False, verbose=0):
        _warn_alias("predict_generator", "predict")
        return self.predict(generator, steps=steps, verbose=verbose)

    def _sample_weights(self, sample_weight, class_weight, ys, n, what):
        """Per output: None or a float (n,) array; from ``sample_weight`` (one array for
        every output, or a list/dict per output) times ``class_weight``'s weight of each
        sample's class (single-output models, as Keras)."""
        names = self.output_names
        if sample_weight is None:
            sws = [None] * len(names)
        elif isinstance(sample_weight, dict):
            unknown = set(sample_weight) - set(names)
            if unknown:
                raise ValueError(f"{what}: sample_weight names outputs {sorted(unknown)}; the "
                                 f"model's outputs are {names}")
            sws = [sample_weight.get(k) for k in names]
        elif isinstance(sample_weight, (list, tuple)) and len(names) > 1:
            if len(sample_weight) != len(names):
                raise ValueError(f"{what}: sample_weight has {len(sample_weight)} arrays for "
                                 f"{len(names)} outputs")
            sws = list(sample_weight)
        else:
            sws = [sample_weight] * len(names)
        out = []
        for k, sw in enumerate(sws):
            if sw is None:
                out.append(None)
                continue
            arr = np.asarray(sw)
            if not _is_real(arr) or arr.shape != (n,):
                raise ValueError(f"{what}: sample_weight must be real numbers of shape ({n},), "
                                 f"one per sample; got {arr.dtype} {arr.shape}")
            if not np.all(np.isfinite(arr)) or np.any(arr < 0):
                raise ValueError(f"{what}: sample_weight must be finite and >= 0")
            out.append(np.ascontiguousarray(arr, dtype=self.outputs[k].dtype))
        if class_weight is not None:
            if len(names) > 1:
                raise ValueError(f"{what}: class_weight is only supported for models with one "
                                 f"output (use sample_weight per output)")
            cw = _class_weights(class_weight, ys[0], self._output_losses[0], what)
            out[0] = cw if out[0] is None else out[0] * cw
        return out

    def _structure_outputs(self, outs):
        if self._output_keys is None:
            return outs[0]
        return _restructure(self._output_keys, outs)

    def train_on_batch(self, x, y, sample_weight=None, class_weight=None, return_dict=False):
        self._check_compiled("train_on_batch")
        xs = self._prepare_inputs(x, "train_on_batch")
        self._resolve_metrics()
        n = xs[0].shape[0]
        ys = self._prepare_targets(y, n, "train_on_batch")
        if n == 0:  # a step would count an update that saw no data
            raise ValueError("train_on_batch: x holds no samples")
        sws = self._sample_weights(sample_weight, class_weight, ys, n, "train_on_batch")
        self._prepare_train()
        for m in self.metrics:
            m.reset_state()
        b = backend.current()
        with backend.host_memory_loop():
            loss, per_output = self._train_step(
                [b.asarray(a, a.dtype) for a in xs], _upload(b, ys), _upload(b, sws))
        logs = self._logs(loss * n, [0.0 if v is None else v * n for v in per_output], n)
        return self._result(logs, return_dict)

    def test_on_batch(self, x, y, sample_weight=None, return_dict=False):
        self._check_compiled("test_on_batch")
        xs = self._prepare_inputs(x, "test_on_batch")
        self._resolve_metrics()
        n = xs[0].shape[0]
        ys = self._prepare_targets(y, n, "test_on_batch")
        sws = self._sample_weights(sample_weight, None, ys, n, "test_on_batch")
        with backend.host_memory_loop():
            logs = self._evaluate_source(_ArraySource(xs, ys, sws, max(n, 1)))
        return self._result(logs, return_dict)

    def predict_on_batch(self, x):
        outs = inference.outputs(self, x)  # the prepared plan (issue 16), None: general path
        if outs is not None:
            return self._structure_outputs(outs)
        xs = self._prepare_inputs(x, "predict_on_batch")
        b = backend.current()
        if b.NAME == "cpu":
            # the general path's many small ops each open a region: as a predict loop does
            _config.keep_warm()
        with backend.host_memory_loop():
            ys = self._plan.predict([b.asarray(a, a.dtype) for a in xs])
            outs = [np.array(b.to_numpy(yk)) for yk in ys]
        return self._structure_outputs(outs)

    # -- description ------------------------------------------------------------------------
    def _summary_rows(self):
        if self._graph is None:  # a subclassed model: its attribute layers, unconnected
            return [(f"{layer.name} ({type(layer).__name__})",
                     shape_str(layer.output_shape) if layer.output_shape else "?",
                     f"{layer.count_params():,}" if layer.built else "0 (unbuilt)", "-")
                    for layer in self.layers]
        graph_nodes = {}
        for node in self._graph.nodes:
            graph_nodes.setdefault(id(node.layer), []).append(node)
        rows = []
        for layer in self.layers:
            nodes = graph_nodes.get(id(layer), [])
            if nodes:
                outs = nodes[0].outputs
                shape = (shape_str(outs[0].shape) if len(outs) == 1
                         else "[" + ", ".join(shape_str(t.shape) for t in outs) + "]")
            else:
                shape = shape_str(layer.output_shape)
            connected = []
            for node in nodes:
                for t in node.inputs:
                    src = t.node.layer
                    connected.append(f"{src.name}[{src._inbound_nodes.index(t.node)}]"
                                     f"[{t.index}]")
            params = f"{layer.count_params():,}" if layer.built else "0 (unbuilt)"
            rows.append((f"{layer.name} ({type(layer).__name__})", shape, params,
                         ", ".join(connected) or "-"))
        return rows

    def quantize(self, mode="int8"):
        """Keras 3's ``model.quantize("int8")``: Dense, convolution and recurrent input
        projections to int8 in place (weights per-channel symmetric, activations per batch);
        see pynn.compression.quantization."""
        from pynn.layers.quantized_extra import quantize_in_place

        return quantize_in_place(self, mode)

    def summary(self, print_fn=None):
        """Keras's table: Layer (type), Output Shape, Param # and, for a functional model,
        Connected to; then the trainable and non-trainable counts."""
        print_fn = print_fn or print
        rows = self._summary_rows()
        connected = not isinstance(self, Sequential)
        heads = ("Layer (type)", "Output Shape", "Param #") + (("Connected to",)
                                                              if connected else ())
        if not connected:
            rows = [r[:3] for r in rows]
        widths = [max(33, *(len(r[0]) + 2 for r in rows), 14),
                  max(24, *(len(r[1]) + 2 for r in rows), 14), 15]
        if connected:
            widths.append(max(20, *(len(r[3]) + 2 for r in rows), 14))
        right = {2}

        def line(left, mid, end, fill="━"):
            return left + mid.join(fill * w for w in widths) + end

        def cells(values, sep):
            return sep + sep.join(f" {c:>{w - 2}} " if i in right else f" {c:<{w - 2}} "
                                  for i, (c, w) in enumerate(zip(values, widths))) + sep

        out = [f'Model: "{self.name}"', line("┏", "┳", "┓"), cells(heads, "┃"),
               line("┡", "╇", "┩")]
        for i, row in enumerate(rows):
            out.append(cells(row, "│"))
            if i < len(rows) - 1:
                out.append(line("├", "┼", "┤", "─"))
        out.append(line("└", "┴", "┘", "─"))
        if self.built:
            total = self.count_params()
            trainable = sum(math.prod(v.shape) for v in self.trainable_weights)
            out += [f" Total params: {total:,}", f" Trainable params: {trainable:,}",
                    f" Non-trainable params: {total - trainable:,}"]
        print_fn("\n".join(out))

    def get_config(self):
        """The layers, and the calls between them in execution order: enough to rebuild any
        topology (shared layers, nested models) with ``from_config``. A subclassed model
        saves its name only (override to add its constructor's arguments, as in Keras)."""
        if self._graph is None:
            return {"name": self.name, "trainable": self.trainable, "layers": []}
        node_index = {}
        counts = {}
        for node in self._graph.nodes:
            node_index[id(node)] = counts.get(id(node.layer), 0)
            counts[id(node.layer)] = node_index[id(node)] + 1

        def ref(t):
            return [t.node.layer.name, node_index.get(id(t.node), 0), t.index]

        layers = [{"class_name": _class_name(layer), "config": layer.get_config()}
                  for layer in self.layers]
        nodes = [{"layer": node.layer.name, "inputs": [ref(t) for t in node.inputs],
                  "several": node.several}
                 for node in self._graph.nodes if not node.is_input]
        return {"name": self.name, "trainable": self.trainable, "layers": layers,
                "nodes": nodes,
                "inputs": [ref(t) for t in self._graph.inputs],
                "outputs": [ref(t) for t in self._graph.outputs],
                "input_keys": self._input_keys, "output_keys": self._output_keys}

    @classmethod
    def from_config(cls, config):
        if cls._traced:  # a subclassed model: its constructor rebuilds the layers
            config = {k: v for k, v in config.items() if k != "layers"}
            return cls(**config)
        return cls._from_config(config, layer_from_config)

    @classmethod
    def _from_config(cls, config, make_layer, input_tensors=None):
        """from_config with each layer but the InputLayers made by ``make_layer(spec)``, and
        ``input_tensors`` (KerasTensors, one per model input) in the inputs' place."""
        layers = {}
        for spec in config.get("layers", []):
            layer = (layer_from_config(spec) if spec.get("class_name") == "InputLayer"
                     else make_layer(spec))
            if layer.name in layers:
                raise ValueError(f"duplicate layer name {layer.name!r} in the model config")
            layers[layer.name] = layer
        produced = {}
        for name, layer in layers.items():
            if isinstance(layer, InputLayer):
                produced[(name, 0)] = [layer.output]
        if input_tensors is not None:
            refs = config.get("inputs", [])
            if len(input_tensors) != len(refs):
                raise ValueError(f"clone_model: model '{config.get('name')}' has {len(refs)} "
                                 f"inputs, got {len(input_tensors)} input_tensors")
            for ref, tensor_ in zip(refs, input_tensors):
                if not isinstance(tensor_, KerasTensor):
                    raise ValueError(f"clone_model: input_tensors must be pynn.Input tensors, "
                                     f"got {type(tensor_).__name__}")
                produced[(ref[0], ref[1])] = [tensor_]

        def tensor(ref):
            if not (isinstance(ref, list) and len(ref) == 3):
                raise ValueError(f"a tensor reference must be [layer, node, index], got {ref!r}")
            name, node, index = ref
            try:
                return produced[(name, node)][index]
            except (KeyError, IndexError, TypeError):
                raise ValueError(f"the model config reads a tensor {ref!r} that no earlier "
                                 f"node made") from None

        counts = {}
        for spec in config.get("nodes", []):
            name = spec.get("layer")
            if name not in layers:
                raise ValueError(f"the model config calls an unknown layer {name!r}")
            ins = [tensor(r) for r in spec.get("inputs", [])]
            if not ins:
                raise ValueError(f"the model config calls layer {name!r} on no inputs")
            out = layers[name](ins if spec.get("several") else ins[0])
            index = counts.get(name, 0)
            counts[name] = index + 1
            produced[(name, index)] = out if isinstance(out, list) else [out]
        inputs = ([tensor(r) for r in config.get("inputs", [])] if input_tensors is None
                  else list(input_tensors))
        outputs = [tensor(r) for r in config.get("outputs", [])]
        return cls(inputs=_restructure(config.get("input_keys"), inputs),
                   outputs=_restructure(config.get("output_keys"), outputs),
                   name=config.get("name"), trainable=config.get("trainable", True))

    def to_json(self, **kwargs):
        """Keras's ``to_json``: the architecture (no weights) as Keras 3's JSON, which
        ``keras.models.model_from_json`` and ``pynn.models.model_from_json`` read;
        ``kwargs`` go to ``json.dumps``."""
        return saving.KERAS_IO["to_json"](self, **kwargs)

    def save(self, filepath, weights_dtype=None):
        """``weights_dtype="float16"``: float weights stored as float16 (loaded as float32)."""
        saving.save_model(self, filepath, weights_dtype=weights_dtype)

    def save_weights(self, filepath):
        saving.save_weights(self, filepath)

    def load_weights(self, filepath, max_compression_ratio=None):
        saving.load_weights(self, filepath, max_compression_ratio)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name}>"


class _EagerPlan:
    """A subclassed model's stand-in for the functional ``Plan``: its traced call forward,
    the replay of what that call recorded backward (pynn.autodiff)."""

    def __init__(self, model):
        self.model = model
        self.output_masks = []  # a subclassed model's call carries no Keras masks

    def prepare_backward(self, input_grads_needed):
        self.model.needs_input_grad = input_grads_needed

    def forward(self, inputs, training):
        model = self.model
        out = model.call(inputs if len(inputs) > 1 else inputs[0], training=training)
        saved, model._cache = model._cache, None
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        self.output_masks = [None] * len(outs)
        return outs, saved

    def predict(self, inputs):
        return self.forward(inputs, False)[0]

    def backward(self, output_grads, saved, on_grads_final=None):
        # on_grads_final (data-parallel overlap) is not reported: the replay has no per-layer
        # boundary, so the reductions all start after it.
        model = self.model
        model._cache = saved
        dx = model.backward(output_grads if len(output_grads) > 1 else output_grads[0])
        dxs = dx if isinstance(dx, list) else [dx]
        return dxs, 0.0


class Sequential(Model):
    """A linear stack of layers: a Model whose graph is a chain, built once the input shape
    is known (an Input, ``input_shape=`` on the first layer, ``build`` or the first data)."""

    def __init__(self, layers=None, name=None, trainable=True):
        super().__init__(name=name, trainable=trainable)
        self._stack = []
        self._input_layer = None
        for layer in layers or []:
            self.add(layer)

    @staticmethod
    def _default_name():
        return "sequential"

    @property
    def layers(self):
        return list(self._stack)

    def add(self, layer):
        if type(layer) is KerasTensor and layer.node is not None and layer.node.is_input:
            layer = layer.node.layer
        if isinstance(layer, InputLayer):
            if self._stack or self._input_layer is not None:
                raise ValueError(f"Sequential '{self.name}': an Input can only be the first layer")
            self._input_layer = layer
            return
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential '{self.name}': expected a pynn layer, got "
                            f"{type(layer).__name__}")
        if any(layer.name == other.name for other in self._stack):
            raise ValueError(f"Sequential '{self.name}': duplicate layer name '{layer.name}'")
        self._stack.append(layer)
        try:
            shape = self._known_input_shape()
            if shape is not None:
                self._build_chain(shape)
        except Exception:
            self._stack.pop()
            raise

    def pop(self):
        if not self._stack:
            raise ValueError(f"Sequential '{self.name}': there is no layer to pop")
        layer = self._stack.pop()
        self._graph = self._plan = None
        self.built = False
        shape = self._known_input_shape()
        if self._stack and shape is not None:
            self._build_chain(shape)
        return layer

    def _known_input_shape(self):
        if self._input_layer is not None:
            return self._input_layer.input_shape
        if self._stack and self._stack[0]._declared_input_shape is not None:
            return self._stack[0]._declared_input_shape
        if self._stack and self._stack[0].built and not isinstance(
                self._stack[0].input_shape, list):
            return self._stack[0].input_shape
        return None

    def _build_chain(self, input_shape):
        shape = tuple(input_shape)
        if self._input_layer is None or tuple(self._input_layer.input_shape[1:]) != shape[1:]:
            dtype = self._stack[0].dtype if self._stack else None
            self._input_layer = InputLayer(shape=shape[1:], batch_size=shape[0], dtype=dtype)
        x = self._input_layer.output
        for layer in self._stack:
            x = layer(x)
        self._init_graph(self._input_layer.output, x)
        self._input_keys = self._output_keys = None

    def build(self, input_shape=None):
        if input_shape is None:
            input_shape = self._known_input_shape()
            if input_shape is None:
                raise ValueError(f"Sequential '{self.name}': cannot build without an input "
                                 f"shape; add pynn.layers.Input(shape=...) or call "
                                 f"build(input_shape)")
        if not self._stack:
            raise ValueError(f"Sequential '{self.name}' has no layers to build")
        if not self.built or tuple(input_shape) != tuple(self.input_shape):
            self._build_chain(input_shape)
        return self

    def _ensure_built(self, x_shape):
        if not self.built:
            self.build((None,) + tuple(x_shape[1:]))

    @property
    def input_shape(self):
        if self._graph is not None:
            return self._graph.inputs[0].shape
        return self._known_input_shape()

    @input_shape.setter
    def input_shape(self, value):
        pass  # derived from the graph

    @property
    def output_shape(self):
        return self._graph.outputs[0].shape if self._graph is not None else None

    @output_shape.setter
    def output_shape(self, value):
        pass

    def _summary_rows(self):
        rows = super()._summary_rows() if self._graph is not None else [
            (f"{layer.name} ({type(layer).__name__})", "?", "0 (unbuilt)", "")
            for layer in self._stack]
        return rows

    def get_config(self):
        layers = []
        if self._input_layer is not None:
            layers.append({"class_name": "InputLayer", "config": self._input_layer.get_config()})
        layers += [{"class_name": _class_name(layer), "config": layer.get_config()}
                   for layer in self._stack]
        return {"name": self.name, "trainable": self.trainable, "layers": layers}

    @classmethod
    def from_config(cls, config):
        model = cls(name=config.get("name"), trainable=config.get("trainable", True))
        for spec in config.get("layers", []):
            model.add(layer_from_config(spec))
        return model


def clone_model(model, input_tensors=None, clone_function=None):
    """Keras's ``clone_model``: the same topology with new layers, so new weights (drawn by
    the initializers again; ``clone.set_weights(model.get_weights())`` copies them). Each
    layer is made by ``clone_function(layer)`` (default: ``layer.__class__.from_config(
    layer.get_config())``), once per layer, so a shared layer stays shared in the clone;
    ``input_tensors`` (``pynn.Input`` tensors, one per input) take the inputs' place. A
    subclassed model is rebuilt from its ``get_config``."""
    if not isinstance(model, Model):
        raise TypeError(f"clone_model: expected a pynn Model, got {type(model).__name__}")
    if model._graph is None and not isinstance(model, Sequential):
        if input_tensors is not None or clone_function is not None:
            raise ValueError(f"clone_model: model '{model.name}' is a subclassed model, "
                             f"rebuilt from its get_config alone: input_tensors and "
                             f"clone_function apply to Sequential and functional models")
        return type(model).from_config(model.get_config())
    if clone_function is None:
        def clone_function(layer):
            return layer.__class__.from_config(layer.get_config())
    elif not callable(clone_function):
        raise TypeError(f"clone_model: clone_function must be callable, got "
                        f"{clone_function!r}")
    if input_tensors is not None:
        input_tensors = (list(input_tensors) if isinstance(input_tensors, (list, tuple))
                         else [input_tensors])
    originals = {layer.name: layer for layer in model.layers}

    def make(layer):
        clone = clone_function(layer)
        if not isinstance(clone, Layer):
            raise TypeError(f"clone_model: clone_function must return a pynn layer, got "
                            f"{type(clone).__name__} for layer '{layer.name}'")
        return clone
    if isinstance(model, Sequential):
        if input_tensors is not None:
            if len(input_tensors) != 1:
                raise ValueError(f"clone_model: a Sequential model has one input, got "
                                 f"{len(input_tensors)} input_tensors")
            head = [input_tensors[0]]
        elif model._input_layer is not None:
            head = [layer_from_config({"class_name": "InputLayer",
                                       "config": model._input_layer.get_config()})]
        else:
            head = []
        return Sequential(head + [make(layer) for layer in model.layers], name=model.name,
                          trainable=model.trainable)
    return type(model)._from_config(
        model.get_config(), lambda spec: make(originals[spec["config"]["name"]]),
        input_tensors)


def model_from_json(json_string, custom_objects=None):
    """Keras's ``model_from_json``: a model (new weights) from the JSON of ``to_json``, pynn's
    or Keras's (Sequential and functional models; classes from ``pynn.layers.LAYERS`` and
    ``custom_objects``)."""
    text = json_string.encode() if isinstance(json_string, str) else json_string
    if not isinstance(text, (bytes, bytearray)):
        raise TypeError(f"model_from_json: expected a JSON string, got "
                        f"{type(json_string).__name__}")
    with saving.custom_object_scope(custom_objects):
        return saving.KERAS_IO["from_json"](bytes(text))


def _class_name(layer):
    cls = type(layer)
    if LAYERS.get(cls.__name__) is cls or MODEL_CLASSES.get(cls.__name__) is cls:
        return cls.__name__
    # A custom layer or model is saved by the name it was registered under (issue 13).
    return saving.serializable_name(cls, "layer class")


MODEL_CLASSES = {"Model": Model, "Functional": Model, "Sequential": Sequential}


def layer_from_config(spec):
    """A layer (or a nested model) from ``{"class_name", "config"}``; classes come from
    LAYERS and the model classes only, never from an import by name."""
    if not isinstance(spec, dict):
        raise ValueError(f"a layer spec must be an object, got {type(spec).__name__}")
    class_name = spec.get("class_name")
    config = dict(spec.get("config", {}))
    if class_name in LAYERS:
        return LAYERS[class_name].from_config(config)
    if class_name in MODEL_CLASSES:
        return MODEL_CLASSES[class_name].from_config(config)
    try:  # a custom layer registered by name or given in custom_objects (issue 13)
        cls = saving.lookup_serializable(class_name, "layer class")
    except ValueError:
        cls = None
    if isinstance(cls, type) and issubclass(cls, Layer):
        return cls.from_config(config)
    raise ValueError(f"Unknown layer class {class_name!r}; pynn knows "
                     f"{sorted(LAYERS) + sorted(MODEL_CLASSES)} (a custom layer must be "
                     f"registered with @pynn.saving.register_serializable or passed in "
                     f"custom_objects=)")


saving.register_model_class(Model)
saving.register_model_class(Sequential)


# -- helpers ------------------------------------------------------------------------------------
def _flatten_structure(value, what, name):
    """(keys, list): keys is None for a single tensor, a list of ints for a list, a list of
    names for a dict."""
    if isinstance(value, dict):
        if not value:
            raise ValueError(f"Model '{name}': {what} is an empty dict")
        return [str(k) for k in value], list(value.values())
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"Model '{name}': {what} is an empty list")
        if len(value) == 1:
            return [0], [value[0]]
        return list(range(len(value))), list(value)
    return None, [value]


def _restructure(keys, values):
    if keys is None:
        return values[0]
    if all(isinstance(k, int) for k in keys):
        return list(values)
    return dict(zip(keys, values))


def _per_output(spec, names, what, broadcast):
    n = len(names)
    if isinstance(spec, dict):
        unknown = set(spec) - set(names)
        if unknown:
            raise ValueError(f"compile: {what} names outputs {sorted(unknown)} that the model "
                             f"does not have; its outputs are {names}")
        return [spec.get(k) for k in names]
    if isinstance(spec, (list, tuple)) and (n > 1 or not broadcast):
        if n == 1 and what == "metrics":
            return [spec]
        if len(spec) != n:
            raise ValueError(f"compile: {what} has {len(spec)} entries for the model's {n} "
                             f"outputs {names}")
        return list(spec)
    if broadcast or n == 1:
        return [spec] * n
    raise ValueError(f"compile: {what} must be a list or a dict for a model with {n} outputs "
                     f"{names}, got {spec!r}")


def _slice(a, lo, hi):
    return None if a is None else a[lo:hi]


@functools.lru_cache(maxsize=None)
def _np_dtype(dtype):
    return np.dtype(dtype)


_INT32 = np.dtype(np.int32)


def _prepare_target(y, n, what, out_shape, loss, dtype):
    y = y if type(y) is np.ndarray else np.asarray(y)
    if y.shape[:1] != (n,):
        raise ValueError(f"{what}: x has {n} samples but y has shape {y.shape}")
    if loss.sparse_labels:
        # Keras 3's CTC and Circle: integer labels shaped by the loss, not by the output
        own_labels = getattr(loss, "prepare_labels", None)
        if own_labels is not None:
            return own_labels(y, what, out_shape)
        if y.ndim == len(out_shape) and y.shape[-1] == 1:
            y = y.reshape(y.shape[:-1])
        if tuple(y.shape[1:]) != tuple(out_shape[1:-1]):
            raise ValueError(f"{what}: sparse labels must have shape "
                             f"{shape_str((None,) + tuple(out_shape[1:-1]))}, got "
                             f"{shape_str((None,) + y.shape[1:])}")
        if y.dtype.kind == "f":
            if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
                raise ValueError(f"{what}: sparse labels must be integers")
        elif y.dtype.kind not in "iub":
            raise TypeError(f"{what}: sparse labels must be integers, got dtype {y.dtype}")
        classes = out_shape[-1]
        if y.size and labels_out_of_range(y, classes):
            bad = y.min() if y.min() < 0 else y.max()
            raise ValueError(f"{what}: label {int(bad)} is out of range for "
                             f"{loss.name} with {classes} classes (expected 0..."
                             f"{classes - 1})")
        if y.dtype is _INT32 and y.flags.c_contiguous:
            return y
        return np.ascontiguousarray(y, dtype=np.int32)
    if not _is_real(y):
        raise TypeError(f"{what}: y must be numeric (real), got dtype {y.dtype}")
    if y.ndim == len(out_shape) - 1 and out_shape[-1] == 1:
        y = y.reshape(y.shape + (1,))
    if len(y.shape) != len(out_shape) or any(
            o is not None and o != s for o, s in zip(out_shape[1:], y.shape[1:])):
        hint = ""
        if loss.backend_name == "categorical_crossentropy" and y.ndim == 1:
            hint = (" (integer labels need loss='sparse_categorical_crossentropy' or "
                    "pynn.utils.to_categorical)")
        raise ValueError(f"{what}: targets must have shape {shape_str(out_shape)} to match "
                         f"the model output, got {shape_str((None,) + y.shape[1:])}{hint}")
    return np.ascontiguousarray(y, dtype=dtype)


def _is_real(arr):
    """Integer, boolean or real floating dtype (complex would silently lose its imaginary
    part when cast to float)."""
    return arr.dtype.kind in "biuf"


def _batch_size_arg(batch_size, what):
    if batch_size is None:
        return 32
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"{what}: batch_size must be a positive int, got {batch_size!r}")
    return int(batch_size)


# -- batch sources --------------------------------------------------------------------------
class _ArraySource:
    """Prepared host arrays cut into batches; shuffled once per epoch when ``shuffle`` is the
    model's generator getter (one permutation per epoch: a resumed fit replays it)."""

    def __init__(self, xs, ys, sws, batch_size, shuffle=None, steps=None):
        self.xs, self.ys, self.sws = xs, ys, sws
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.n = xs[0].shape[0]
        full = math.ceil(self.n / batch_size)
        if steps is not None:
            if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
                raise ValueError(f"steps must be a positive int, got {steps!r}")
            full = min(full, int(steps))
        self.steps = full

    @contextlib.contextmanager
    def epoch(self):
        xs, ys, sws = self.xs, self.ys, self.sws
        if self.shuffle:
            order = self.shuffle().permutation(self.n)
            xs = [a[order] for a in xs]
            ys = [None if a is None else a[order] for a in ys]
            sws = [None if a is None else a[order] for a in sws]
        yield self._batches(xs, ys, sws)

    def _batches(self, xs, ys, sws):
        n, size = self.n, self.batch_size
        for step in range(self.steps):
            lo, hi = step * size, min(n, (step + 1) * size)
            yield ([a[lo:hi] for a in xs], [None if a is None else a[lo:hi] for a in ys],
                   [None if a is None else a[lo:hi] for a in sws])


class _DatasetSource:
    """Batches from a dataset or generator, each checked and converted as array data is."""

    def __init__(self, model, batches, what, class_weight):
        self.model, self.batches, self.what = model, batches, what
        self.class_weight = class_weight
        self.steps = batches.steps
        # batches of this rank alone (pynn.distributed's per-rank view of a dataset)
        self.rank_local = getattr(batches.data, "rank_local", False)

    @contextlib.contextmanager
    def epoch(self):
        with self.batches.epoch() as stream:
            yield (self._prepare(batch) for batch in stream)

    def _prepare(self, batch):
        model, what = self.model, self.what
        x, y, sw = split_batch(batch, what, need_y=True)
        xs = model._prepare_inputs(x, what)
        n = xs[0].shape[0]
        ys = model._prepare_targets(y, n, what)
        return xs, ys, model._sample_weights(sw, self.class_weight, ys, n, what)


def _active_distribution():
    """The data-parallel strategy whose scope() is active (pynn.distributed), or None. Looked
    up without importing pynn.distributed: a model that never uses it never loads MPI."""
    module = sys.modules.get("pynn.distributed")
    return None if module is None else module.current()


def _log_value(result):
    """A metric's result for the logs: a float, or (per-class metrics such as F1Score with
    average=None, as Keras logs them) a NumPy array."""
    arr = np.asarray(result, dtype=np.float64)
    return float(arr) if arr.ndim == 0 else arr


def _tensors(arrays):
    """A batch's arrays as Tensors, one or a list as the model takes them."""
    ts = [None if a is None else autodiff.Tensor(a) for a in arrays]
    return ts[0] if len(ts) == 1 else ts


def _upload(b, arrays):
    return [None if a is None else b.asarray(a, a.dtype) for a in arrays]


def _check_freq(freq):
    if isinstance(freq, (list, tuple, set)):
        if not all(isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in freq):
            raise ValueError(f"fit: validation_freq as a list must hold epoch numbers >= 1, got "
                             f"{freq!r}")
        return
    if isinstance(freq, bool) or not isinstance(freq, (int, np.integer)) or freq < 1:
        raise ValueError(f"fit: validation_freq must be a positive int or a list of epochs, got "
                         f"{freq!r}")


def _validate_now(freq, epoch):
    if isinstance(freq, (list, tuple, set)):
        return epoch + 1 in freq
    return (epoch + 1) % int(freq) == 0


def _refuse_with_dataset(what, **given):
    for name, value in given.items():
        if value is not None:
            raise ValueError(f"{what}: {name} must not be given when x is a dataset or a "
                             f"generator (it yields (x, y) or (x, y, sample_weight) itself)")


_warned_aliases = set()


def _warn_alias(old, new):
    if old not in _warned_aliases:
        _warned_aliases.add(old)
        warnings.warn(f"Model.{old} is deprecated; Model.{new} takes generators and datasets "
                      f"itself", DeprecationWarning, stacklevel=3)


def _class_weights(class_weight, y, loss, what):
    """Each sample's weight from its class: sparse labels, one-hot rows (their argmax) or a
    single probability column (rounded), as Keras reads them."""
    if not isinstance(class_weight, dict) or not class_weight:
        raise ValueError(f"{what}: class_weight must be a non-empty dict {{class: weight}}, got "
                         f"{class_weight!r}")
    try:
        keys = np.array([int(k) for k in class_weight])
        values = np.array([float(v) for v in class_weight.values()])
    except (TypeError, ValueError):
        raise ValueError(f"{what}: class_weight must map int classes to numbers, got "
                         f"{class_weight!r}") from None
    if np.any(keys < 0) or not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError(f"{what}: class_weight needs classes >= 0 and finite weights >= 0")
    if loss is not None and loss.sparse_labels:
        classes = y.reshape(y.shape[0], -1)[:, 0] if y.ndim > 1 else y
    elif y.ndim >= 2 and y.shape[-1] > 1:
        classes = np.argmax(y.reshape(y.shape[0], -1, y.shape[-1])[:, 0], axis=-1)
    else:
        classes = np.rint(y.reshape(y.shape[0], -1)[:, 0]).astype(np.int64)
    table = np.ones(int(max(keys.max(), classes.max(initial=0))) + 1)
    table[keys] = values
    return table[classes.astype(np.int64)].astype(y.dtype if y.dtype.kind == "f" else
                                                  np.float32)


# -- api: keras.config's max_epochs / max_steps_per_epoch applied to fit
def _config_caps(epochs, steps_per_epoch):
    from pynn import config
    if config.max_epochs() is not None:
        epochs = min(epochs, config.max_epochs())
    cap = config.max_steps_per_epoch()
    if cap is not None:
        steps_per_epoch = cap if steps_per_epoch is None else min(steps_per_epoch, cap)
    return epochs, steps_per_epoch


# -- api: the weight penalties' gradients under a LossScaleOptimizer's loss scale
def _scaled_regularization_penalty(model, loss_scale):
    """regularization_penalty with each penalty gradient scaled as the loss is: the scaled
    gradients are brought back to the loss's scale around it (exact for Keras's powers of 2)."""
    b = backend.current()
    regularized = [v for v in model._trainable if v.regularizer is not None and
                   v.grad is not None]
    for v in regularized:
        b.scale_inplace(v.grad, 1.0 / loss_scale)
    penalty = model.regularization_penalty()
    for v in regularized:
        b.scale_inplace(v.grad, loss_scale)
    return penalty


# -- api: Keras 3's keras.models.load_model / save_model
def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """keras.models.load_model: a .pynn, .keras or .h5 file (``safe_mode`` is always on:
    pynn never runs code from a file)."""
    return saving.load_model(filepath, custom_objects=custom_objects, compile=compile)


def save_model(model, filepath, overwrite=True, zipped=None, **kwargs):
    """keras.models.save_model: the suffix picks the format; ``overwrite=False`` refuses an
    existing file (Keras asks on the terminal; a library cannot). ``include_optimizer`` and
    ``weights_dtype`` pass on to pynn's writer."""
    import os
    if zipped not in (None, True):
        raise ValueError("save_model: zipped=False (an unzipped Keras folder) is not supported; "
                         "pynn writes zip archives")
    unknown = set(kwargs) - {"include_optimizer", "weights_dtype"}
    if unknown:
        raise ValueError(f"save_model: unexpected arguments {sorted(unknown)}")
    if not overwrite and os.path.exists(filepath):
        raise FileExistsError(f"save_model: {os.fspath(filepath)!r} exists and overwrite=False")
    return saving.save_model(model, filepath, **kwargs)
