"""Sequential: builds its layers, and runs fit / evaluate / predict.

The loops here go over epochs, batches and layers, never over samples or elements: a batch is
one contiguous slice of arrays shuffled once per epoch, uploaded once, pushed through one backend
op per layer, and only the loss and metric counts come back.
"""

import math
import warnings

import numpy as np

from pynn import _config, backend, callbacks as callbacks_module, losses, metrics as metrics_module
from pynn import optimizers, saving, utils
from pynn.layers import LAYERS, InputLayer
from pynn.layers.base import Layer, _unique_name, is_complex, shape_str


class Sequential:
    def __init__(self, layers=None, name=None, trainable=True):
        _config.get_num_threads()  # applies the thread settings before the first kernel runs
        if name is not None and not isinstance(name, str):
            raise ValueError(f"Sequential: name must be a string, got {name!r}")
        self.name = name or _unique_name("sequential")
        self.trainable = trainable
        self.layers = []
        self._input_layer = None
        self.optimizer = None
        self.loss = None
        self._metric_specs = []
        self.metrics = []
        self.compiled = False
        self.stop_training = False
        self.history = None
        # Drawn from pynn.utils's generator when fit first shuffles, then the model's own:
        # saved with the model so a resumed fit shuffles as the uninterrupted one would.
        self._shuffle_rng = None
        for layer in layers or []:
            self.add(layer)

    # -- building ---------------------------------------------------------------------------
    def add(self, layer):
        if isinstance(layer, InputLayer):
            if self.layers or self._input_layer is not None:
                raise ValueError(f"Sequential '{self.name}': an Input can only be the first layer")
            self._input_layer = layer
            return
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential '{self.name}': expected a pynn layer, got "
                            f"{type(layer).__name__}")
        if any(layer.name == other.name for other in self.layers):
            raise ValueError(f"Sequential '{self.name}': duplicate layer name '{layer.name}'")
        self.layers.append(layer)
        shape = self._known_input_shape()
        if shape is not None:
            self.build(shape)

    def _known_input_shape(self):
        if self._input_layer is not None:
            return self._input_layer.input_shape
        if self.layers and self.layers[0]._declared_input_shape is not None:
            return self.layers[0]._declared_input_shape
        if self.layers and self.layers[0].built:
            return self.layers[0].input_shape
        return None

    @property
    def built(self):
        return bool(self.layers) and all(layer.built for layer in self.layers)

    def build(self, input_shape=None):
        if input_shape is None:
            input_shape = self._known_input_shape()
            if input_shape is None:
                raise ValueError(f"Sequential '{self.name}': cannot build without an input shape; "
                                 f"add pynn.layers.Input(shape=...) or call build(input_shape)")
        shape = tuple(input_shape)
        seen_weights = False
        for layer in self.layers:
            if not layer.built:
                layer.build(shape)
            elif len(layer.input_shape) != len(shape) or any(
                a is not None and b is not None and a != b
                for a, b in zip(layer.input_shape[1:], shape[1:])
            ):
                raise ValueError(f"Layer '{layer.name}' ({type(layer).__name__}) expected input "
                                 f"shape {shape_str(layer.input_shape)}, got {shape_str(shape)}")
            layer.needs_input_grad = seen_weights
            seen_weights = seen_weights or bool(layer.trainable_weights)
            shape = layer.output_shape
        return self

    @property
    def input_shape(self):
        return self.layers[0].input_shape if self.built else self._known_input_shape()

    @property
    def output_shape(self):
        return self.layers[-1].output_shape if self.built else None

    def _ensure_built(self, x_shape):
        if not self.built:
            self.build((None,) + tuple(x_shape[1:]))

    # -- weights --------------------------------------------------------------------------
    @property
    def weights(self):
        return [v for layer in self.layers for v in layer.weights]

    @property
    def trainable_weights(self):
        if not self.trainable:
            return []
        return [v for layer in self.layers for v in layer.trainable_weights]

    @property
    def non_trainable_weights(self):
        trainable = {id(v) for v in self.trainable_weights}
        return [v for v in self.weights if id(v) not in trainable]

    def get_weights(self):
        return [w for layer in self.layers for w in layer.get_weights()]

    def set_weights(self, weights):
        weights = list(weights)
        expected = sum(len(layer.weights) for layer in self.layers)
        if len(weights) != expected:
            raise ValueError(f"Sequential '{self.name}': expected {expected} weight arrays, got "
                             f"{len(weights)}")
        i = 0
        for layer in self.layers:
            k = len(layer.weights)
            layer.set_weights(weights[i:i + k])
            i += k

    def count_params(self):
        if not self.built:
            raise ValueError(f"Sequential '{self.name}' is not built yet; give it an Input or "
                             f"call build(input_shape) first")
        return sum(layer.count_params() for layer in self.layers)

    # -- compile --------------------------------------------------------------------------
    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        unsupported = {k for k, v in kwargs.items() if v not in (None, False, "auto", 1)}
        if unsupported:
            raise ValueError(f"compile: unsupported arguments {sorted(unsupported)}")
        if loss is None:
            raise ValueError("compile: a loss is required, e.g. loss='mse'")
        self.optimizer = optimizers.get(optimizer)
        self.loss = losses.get(loss)
        self._metric_specs = list(metrics or [])
        self.metrics = []
        self.compiled = True

    def _resolve_metrics(self):
        if len(self.metrics) != len(self._metric_specs):
            self.metrics = [metrics_module.get(m, self.loss, self.output_shape)
                            for m in self._metric_specs]
        return self.metrics

    def _check_compiled(self, what):
        if not self.compiled:
            raise RuntimeError(f"You must call compile() before {what}()")

    # -- data -----------------------------------------------------------------------------
    def _prepare_x(self, x, what):
        if x is None:
            raise ValueError(f"{what}: x is required")
        arr = np.asarray(x)
        if not _is_real(arr):
            raise TypeError(f"{what}: x must be numeric (real), got dtype {arr.dtype}")
        if arr.ndim < 2:
            raise ValueError(f"{what}: x must have a batch axis and at least one feature axis, "
                             f"got shape {arr.shape}")
        self._ensure_built(arr.shape)
        expected = self.input_shape
        if len(expected) != arr.ndim or any(
            e is not None and e != s for e, s in zip(expected[1:], arr.shape[1:])
        ):
            raise ValueError(f"{what}: the model expects input shape {shape_str(expected)}, got "
                             f"x with shape {shape_str((None,) + arr.shape[1:])}")
        return np.ascontiguousarray(arr, dtype=self.layers[0].dtype)

    def _prepare_y(self, y, n, what):
        if y is None:
            raise ValueError(f"{what}: y is required")
        y = np.asarray(y)
        if y.shape[:1] != (n,):
            raise ValueError(f"{what}: x has {n} samples but y has shape {y.shape}")
        out_shape = self.output_shape
        if self.loss.sparse_labels:
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
            if y.size and (y.min() < 0 or y.max() >= classes):
                bad = y.min() if y.min() < 0 else y.max()
                raise ValueError(f"{what}: label {int(bad)} is out of range for "
                                 f"{self.loss.name} with {classes} classes (expected 0..."
                                 f"{classes - 1})")
            return np.ascontiguousarray(y, dtype=np.int32)
        if not _is_real(y):
            raise TypeError(f"{what}: y must be numeric (real), got dtype {y.dtype}")
        if y.ndim == len(out_shape) - 1 and out_shape[-1] == 1:
            y = y.reshape(y.shape + (1,))
        if tuple(y.shape[1:]) != tuple(out_shape[1:]):
            hint = ""
            if self.loss.backend_name == "categorical_crossentropy" and y.ndim == 1:
                hint = (" (integer labels need loss='sparse_categorical_crossentropy' or "
                        "pynn.utils.to_categorical)")
            raise ValueError(f"{what}: targets must have shape {shape_str(out_shape)} to match "
                             f"the model output, got {shape_str((None,) + y.shape[1:])}{hint}")
        return np.ascontiguousarray(y, dtype=self.layers[-1].dtype)

    # -- random state ---------------------------------------------------------------------
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

    # -- steps ----------------------------------------------------------------------------
    def _forward(self, x, training):
        for layer in self.layers:
            try:
                x = layer(x, training=training)
            except MemoryError as exc:
                raise MemoryError(f"Layer '{layer.name}' ({type(layer).__name__}): out of memory "
                                  f"for input shape {shape_str(x.shape)} ({exc})") from None
        return x

    def _train_step(self, xb, yb):
        out = self._forward(xb, training=True)
        loss, grad = self.loss.forward_backward(yb, out, need_grad=True)
        for layer in reversed(self.layers):
            try:
                grad = layer.backward(grad)
            except MemoryError as exc:
                raise MemoryError(f"Layer '{layer.name}' ({type(layer).__name__}): out of memory "
                                  f"in backward ({exc})") from None
            if grad is None:
                break
        penalty = sum(layer.regularization_penalty() for layer in self.layers)
        self.optimizer.apply(self.trainable_weights)
        for m in self.metrics:
            m.update_state(yb, out)
        return loss + penalty

    def _test_step(self, xb, yb):
        out = self._forward(xb, training=False)
        loss, _ = self.loss.forward_backward(yb, out, need_grad=False)
        for m in self.metrics:
            m.update_state(yb, out)
        return loss + self._penalty_value()

    def _penalty_value(self):
        total = 0.0
        b = backend.current()
        for v in self.weights:
            if v.regularizer is not None:
                total += v.regularizer(b.to_numpy(v.value))
        return total

    def _logs(self, loss_sum, count, prefix=""):
        logs = {prefix + m.name: float(m.result()) for m in self.metrics}
        logs[prefix + "loss"] = loss_sum / max(count, 1)
        return logs

    # -- public loops ---------------------------------------------------------------------
    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, initial_epoch=0):
        self._check_compiled("fit")
        batch_size = _batch_size_arg(batch_size, "fit")
        verbose = 1 if verbose == "auto" else int(verbose)
        x = self._prepare_x(x, "fit")
        y = self._prepare_y(y, x.shape[0], "fit")
        if not 0.0 <= validation_split < 1.0:
            raise ValueError(f"fit: validation_split must be in [0, 1), got {validation_split}")
        if validation_data is None and validation_split > 0:
            # Keras takes the last fraction, before any shuffling.
            split = int(x.shape[0] * (1.0 - validation_split))
            validation_data = (x[split:], y[split:])
            x, y = x[:split], y[:split]
        elif validation_data is not None:
            if len(validation_data) != 2:
                raise ValueError("fit: validation_data must be a tuple (x_val, y_val)")
            vx = self._prepare_x(validation_data[0], "fit (validation_data)")
            validation_data = (vx, self._prepare_y(validation_data[1], vx.shape[0],
                                                   "fit (validation_data)"))
        n = x.shape[0]
        if n == 0:
            raise ValueError("fit: x holds no samples to train on")
        steps = math.ceil(n / batch_size)
        self._resolve_metrics()
        self.history = callbacks_module.History()
        params = {"verbose": verbose, "epochs": epochs, "steps": steps}
        cbs = callbacks_module.CallbackList(list(callbacks or []) + [self.history], self, params)
        b = backend.current()
        self.stop_training = False
        self._initial_epoch = None  # a callback (BackupAndRestore) may move the start
        with backend.host_memory_loop(trim=True):
            return self._fit_loop(b, x, y, batch_size, epochs, verbose, cbs, steps, n,
                                  shuffle, validation_data, initial_epoch)

    def _fit_loop(self, b, x, y, batch_size, epochs, verbose, cbs, steps, n, shuffle,
                  validation_data, initial_epoch):
        cbs.on_train_begin()
        if self._initial_epoch is not None:
            initial_epoch = self._initial_epoch
        epoch_logs = {}
        for epoch in range(initial_epoch, epochs):
            for m in self.metrics:
                m.reset_state()
            cbs.on_epoch_begin(epoch)
            if verbose:
                print(f"Epoch {epoch + 1}/{epochs}")
            bar = callbacks_module.Progbar(steps, verbose)
            if shuffle:
                order = self._shuffle_generator().permutation(n)
                xe, ye = x[order], y[order]
            else:
                xe, ye = x, y
            loss_sum, seen, warned = 0.0, 0, False
            for step in range(steps):
                cbs.on_train_batch_begin(step)
                lo, hi = step * batch_size, min(n, (step + 1) * batch_size)
                loss = self._train_step(b.asarray(xe[lo:hi], x.dtype),
                                        b.asarray(ye[lo:hi], y.dtype))
                if not math.isfinite(loss) and not warned:
                    warnings.warn(f"fit: the loss became {loss} at epoch {epoch + 1}, batch "
                                  f"{step + 1}/{steps}", RuntimeWarning, stacklevel=2)
                    warned = True
                loss_sum += loss * (hi - lo)
                seen += hi - lo
                logs = self._logs(loss_sum, seen)
                cbs.on_train_batch_end(step, {"loss": loss})
                bar.update(step + 1, logs)
                if self.stop_training:
                    break
            epoch_logs = self._logs(loss_sum, seen)
            if validation_data is not None and validation_data[0].shape[0]:
                val = self._evaluate_arrays(*validation_data, batch_size)
                epoch_logs.update({"val_" + k: v for k, v in val.items()})
            if verbose == 1:
                bar.update(step + 1, epoch_logs, finalize=True)
            elif verbose == 2:
                bar.summary_line(step + 1, epoch_logs)
            cbs.on_epoch_end(epoch, epoch_logs)
            if self.stop_training:
                break
        cbs.on_train_end(epoch_logs)
        return self.history

    def _evaluate_arrays(self, x, y, batch_size, bar=None):
        b = backend.current()
        for m in self.metrics:
            m.reset_state()
        n = x.shape[0]
        loss_sum = 0.0
        steps = math.ceil(n / batch_size)
        for step in range(steps):
            lo, hi = step * batch_size, min(n, (step + 1) * batch_size)
            loss = self._test_step(b.asarray(x[lo:hi], x.dtype), b.asarray(y[lo:hi], y.dtype))
            loss_sum += loss * (hi - lo)
            if bar is not None:
                bar.update(step + 1, self._logs(loss_sum, hi))
        logs = self._logs(loss_sum, n)
        if bar is not None:
            bar.update(steps, logs, finalize=True)
        return logs

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", return_dict=False):
        self._check_compiled("evaluate")
        batch_size = _batch_size_arg(batch_size, "evaluate")
        verbose = 1 if verbose == "auto" else int(verbose)
        x = self._prepare_x(x, "evaluate")
        y = self._prepare_y(y, x.shape[0], "evaluate")
        if x.shape[0] == 0:
            raise ValueError("evaluate: x holds no samples")
        self._resolve_metrics()
        bar = callbacks_module.Progbar(math.ceil(x.shape[0] / batch_size), 1) if verbose else None
        with backend.host_memory_loop(trim=True):
            logs = self._evaluate_arrays(x, y, batch_size, bar)
        if return_dict:
            return logs
        if not self.metrics:
            return logs["loss"]
        return [logs["loss"]] + [logs[m.name] for m in self.metrics]

    def predict(self, x, batch_size=None, verbose="auto"):
        batch_size = _batch_size_arg(batch_size, "predict")
        x = self._prepare_x(x, "predict")
        b = backend.current()
        n = x.shape[0]
        out = np.empty((n,) + tuple(self.output_shape[1:]), dtype=self.layers[-1].dtype)
        with backend.host_memory_loop(trim=True):
            for lo in range(0, n, batch_size):
                hi = min(n, lo + batch_size)
                out[lo:hi] = b.to_numpy(self._forward(b.asarray(x[lo:hi], x.dtype),
                                                      training=False))
        return out

    def __call__(self, x, training=False):
        _config.apply_to_this_thread()
        if is_complex(x):
            raise TypeError(f"call: x must be numeric (real), got dtype {x.dtype}")
        if isinstance(x, np.ndarray) or not hasattr(x, "shape"):
            # Host data: the same checks and conversion as predict (backend arrays pass as is).
            x = backend.current().asarray(self._prepare_x(x, "call"), self.layers[0].dtype)
        return self._forward(x, training)

    def train_on_batch(self, x, y, return_dict=False):
        self._check_compiled("train_on_batch")
        x = self._prepare_x(x, "train_on_batch")
        y = self._prepare_y(y, x.shape[0], "train_on_batch")
        if x.shape[0] == 0:  # a step would count an update that saw no data
            raise ValueError("train_on_batch: x holds no samples")
        self._resolve_metrics()
        for m in self.metrics:
            m.reset_state()
        b = backend.current()
        with backend.host_memory_loop():
            loss = self._train_step(b.asarray(x, x.dtype), b.asarray(y, y.dtype))
        logs = self._logs(loss * x.shape[0], x.shape[0])
        return _result(logs, self.metrics, return_dict)

    def test_on_batch(self, x, y, return_dict=False):
        self._check_compiled("test_on_batch")
        x = self._prepare_x(x, "test_on_batch")
        y = self._prepare_y(y, x.shape[0], "test_on_batch")
        self._resolve_metrics()
        with backend.host_memory_loop():
            logs = self._evaluate_arrays(x, y, max(x.shape[0], 1))
        return _result(logs, self.metrics, return_dict)

    def predict_on_batch(self, x):
        x = self._prepare_x(x, "predict_on_batch")
        b = backend.current()
        with backend.host_memory_loop():
            return np.array(b.to_numpy(self._forward(b.asarray(x, x.dtype), training=False)))

    # -- description ----------------------------------------------------------------------
    def summary(self, print_fn=None):
        print_fn = print_fn or print
        rows = [(f"{layer.name} ({type(layer).__name__})",
                 shape_str(layer.output_shape) if layer.built else "?",
                 f"{layer.count_params():,}" if layer.built else "0 (unbuilt)")
                for layer in self.layers]
        widths = [max(33, *(len(r[0]) + 2 for r in rows)),
                  max(24, *(len(r[1]) + 2 for r in rows)), 15]
        heads = ("Layer (type)", "Output Shape", "Param #")

        def line(left, mid, right, fill="━"):
            return left + mid.join(fill * w for w in widths) + right

        out = [f'Model: "{self.name}"',
               line("┏", "┳", "┓"),
               "┃" + "┃".join(f" {h:<{w - 2}} " if i < 2 else f" {h:>{w - 2}} "
                              for i, (h, w) in enumerate(zip(heads, widths))) + "┃",
               line("┡", "╇", "┩")]
        for i, row in enumerate(rows):
            out.append("│" + "│".join(f" {c:<{w - 2}} " if j < 2 else f" {c:>{w - 2}} "
                                      for j, (c, w) in enumerate(zip(row, widths))) + "│")
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
        layers = []
        if self._input_layer is not None:
            layers.append({"class_name": "InputLayer", "config": self._input_layer.get_config()})
        layers += [{"class_name": type(layer).__name__, "config": layer.get_config()}
                   for layer in self.layers]
        return {"name": self.name, "trainable": self.trainable, "layers": layers}

    @classmethod
    def from_config(cls, config):
        model = cls(name=config.get("name"), trainable=config.get("trainable", True))
        for spec in config.get("layers", []):
            class_name = spec.get("class_name")
            if class_name not in LAYERS:
                raise ValueError(f"Unknown layer class {class_name!r}; pynn knows "
                                 f"{sorted(LAYERS)}")
            model.add(LAYERS[class_name].from_config(dict(spec.get("config", {}))))
        return model

    def save(self, filepath):
        saving.save_model(self, filepath)

    def save_weights(self, filepath):
        saving.save_weights(self, filepath)

    def load_weights(self, filepath, max_compression_ratio=None):
        saving.load_weights(self, filepath, max_compression_ratio)


saving.register_model_class(Sequential)


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


def _result(logs, metrics, return_dict):
    if return_dict:
        return logs
    if not metrics:
        return logs["loss"]
    return [logs["loss"]] + [logs[m.name] for m in metrics]
