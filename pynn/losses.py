"""Losses with Keras 3's names and semantics (reduction ``sum_over_batch_size``).

Each loss is one fused backend op that returns the batch mean and its gradient with respect to
the predictions, so a training step makes a single pass over the output for both.
"""

import numpy as np

from pynn import _registry, autodiff, backend


class Loss:
    """A built-in loss is one fused backend op (``backend_name``). A user's subclass instead
    overrides ``call(y_true, y_pred) -> per-sample losses`` written with ``pynn.ops``; its
    gradient comes from recording that call (pynn.autodiff)."""

    backend_name = None
    sparse_labels = False

    def __init__(self, name=None, from_logits=False, reduction="sum_over_batch_size",
                 dtype=None):
        if reduction not in ("sum_over_batch_size", "auto", None):
            raise ValueError(f"{type(self).__name__}: only reduction='sum_over_batch_size' is "
                             f"supported, got {reduction!r}")
        self.name = name or getattr(self, "default_name", None) or _snake(type(self).__name__)
        self.from_logits = bool(from_logits)

    @property
    def param(self):
        return None

    def call(self, y_true, y_pred):
        raise NotImplementedError(f"{type(self).__name__}: a Loss subclass overrides "
                                  f"call(y_true, y_pred) -> per-sample losses")

    def forward_backward(self, y_true, y_pred, need_grad=True, sample_weight=None):
        """(mean loss as a float, d loss / d y_pred or None) on backend arrays.
        ``sample_weight`` (None or per-sample weights, a backend array) multiplies each
        sample's loss; the mean divides by the number of samples (Keras's
        sum_over_batch_size), not by the weights' sum."""
        if self.backend_name is None:
            return _recorded_forward_backward(self.call, y_true, y_pred, need_grad,
                                              sample_weight)
        return backend.current().loss_forward_backward(
            self.backend_name, y_true, y_pred, self.from_logits, self.param, need_grad,
            sample_weight)

    def __call__(self, y_true, y_pred, sample_weight=None):
        """The batch loss: a float on arrays; a Tensor, differentiable, when ``y_pred`` is a
        Tensor or a GradientTape records (Keras's ``loss_fn(y, y_pred)`` in a train step)."""
        if autodiff.recording() or type(y_pred) is autodiff.Tensor:
            return self._recorded_call(y_true, y_pred, sample_weight)
        if self.backend_name is None:
            from pynn import ops
            return float(self._recorded_call(y_true, ops.convert_to_tensor(y_pred),
                                              sample_weight).numpy())
        b = backend.current()
        y_pred = b.asarray(y_pred, np.float32 if np.asarray(y_pred).dtype != np.float64
                           else np.float64)
        y_true = b.asarray(y_true, np.int32 if self.sparse_labels else y_pred.dtype)
        if sample_weight is not None:
            sample_weight = b.asarray(sample_weight, y_pred.dtype)
        return self.forward_backward(y_true, y_pred, need_grad=False,
                                     sample_weight=sample_weight)[0]

    def _recorded_call(self, y_true, y_pred, sample_weight):
        from pynn import ops
        if self.backend_name is None:
            return _weighted_mean(self.call(y_true, y_pred), sample_weight)
        b = backend.current()
        yp = autodiff._unwrap(y_pred)
        yt = autodiff._unwrap(y_true)
        if not hasattr(yp, "dtype"):
            yp = ops.convert_to_tensor(yp).value
        yt = b.asarray(np.asarray(yt) if b.NAME == "cpu" else yt,
                       np.int32 if self.sparse_labels else yp.dtype) \
            if isinstance(yt, (np.ndarray, list)) or b.NAME == "cpu" else yt
        sw = autodiff._unwrap(sample_weight)
        if sw is not None and b.NAME == "cpu":
            sw = np.asarray(sw, yp.dtype)
        value, grad = self.forward_backward(yt, yp, need_grad=True, sample_weight=sw)

        def backward(dy, need):
            # The fused op already gave d(mean)/d(y_pred); the tape scales it by dy.
            g = b.copy(grad)
            b.scale_inplace(g, float(np.asarray(b.to_numpy(dy))))
            return (g,)

        return autodiff.record(b.full((), value, yp.dtype), (y_pred,), backward, self.name)

    def get_config(self):
        return {"name": self.name, "from_logits": self.from_logits}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _snake(name):
    from pynn.layers.base import _snake as snake
    return snake(name)


def _weighted_mean(per_sample, sample_weight):
    """Keras's sum_over_batch_size: the mean of the (weighted) per-sample losses."""
    from pynn import ops
    per_sample = ops.convert_to_tensor(per_sample) if type(per_sample) not in (
        autodiff.Tensor,) else per_sample
    if sample_weight is not None:
        sw = autodiff._unwrap(sample_weight)
        sw = np.asarray(sw, per_sample.dtype)
        sw = sw.reshape(sw.shape + (1,) * (per_sample.ndim - sw.ndim))
        per_sample = ops.multiply(per_sample, sw)
    return ops.mean(per_sample)


def _recorded_forward_backward(fn, y_true, y_pred, need_grad, sample_weight):
    """A loss written with pynn.ops, as the fused losses are called by fit: (mean as a
    float, d mean / d y_pred or None), by recording ``fn`` on a private recorder."""
    b = backend.current()
    yp = autodiff.Tensor(y_pred)
    with autodiff._Recorder(watch_variables=False) as rec:
        if need_grad:
            rec.watch(yp)
        total = _weighted_mean(fn(autodiff.Tensor(y_true), yp), sample_weight)
    value = float(np.asarray(b.to_numpy(total.value)))
    if not need_grad:
        return value, None
    grads = autodiff.backprop([total], [b.full((), 1.0, total.dtype)])
    grad = grads.get(id(yp))
    if grad is None:
        grad = b.zeros(tuple(y_pred.shape), y_pred.dtype)
    return value, grad


class LossFunctionWrapper(Loss):
    """A function ``(y_true, y_pred) -> per-sample losses`` as a Loss (Keras's wrapper)."""

    def __init__(self, fn, name=None, **kwargs):
        super().__init__(name=name or getattr(fn, "__name__", "loss"), **kwargs)
        self.fn = fn
        self.kwargs = {}

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred)

    def get_config(self):
        return {"name": self.name, "fn": _registry.serializable_name(self.fn, "loss function")}

    @classmethod
    def from_config(cls, config):
        return cls(_registry.lookup_serializable(config["fn"], "loss function"),
                   name=config.get("name"))


class MeanSquaredError(Loss):
    backend_name = default_name = "mean_squared_error"

    def __init__(self, name=None):
        super().__init__(name)

    def get_config(self):
        return {"name": self.name}


class MeanAbsoluteError(MeanSquaredError):
    backend_name = default_name = "mean_absolute_error"


class Huber(Loss):
    backend_name = default_name = "huber"

    def __init__(self, delta=1.0, name=None):
        if delta <= 0:
            raise ValueError(f"Huber: delta must be positive, got {delta}")
        super().__init__(name)
        self.delta = float(delta)

    @property
    def param(self):
        return self.delta

    def get_config(self):
        return {"name": self.name, "delta": self.delta}


class _SmoothedCrossentropy(Loss):
    """Keras's label_smoothing: binary targets move towards 1/2, categorical towards 1/K."""

    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1, name=None):
        _last_axis_only(type(self).__name__, axis)
        if not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(f"{type(self).__name__}: label_smoothing must be in [0, 1], got "
                             f"{label_smoothing}")
        super().__init__(name, from_logits)
        self.label_smoothing = float(label_smoothing)

    @property
    def param(self):
        return self.label_smoothing

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


class BinaryCrossentropy(_SmoothedCrossentropy):
    backend_name = default_name = "binary_crossentropy"


class CategoricalCrossentropy(_SmoothedCrossentropy):
    backend_name = default_name = "categorical_crossentropy"


class SparseCategoricalCrossentropy(Loss):
    backend_name = default_name = "sparse_categorical_crossentropy"
    sparse_labels = True


def _last_axis_only(owner, axis):
    # The kernels reduce the last axis (Keras's default); another axis would need a transpose.
    if axis not in (-1, None):
        raise ValueError(f"{owner}: only axis=-1 is supported, got axis={axis}")


# -- the other keras.losses functions (issue 15); each is a code of loss_forward_backward ---

class _PlainLoss(Loss):
    """A loss with no options but its name."""

    def __init__(self, name=None):
        super().__init__(name)

    def get_config(self):
        return {"name": self.name}


class KLDivergence(_PlainLoss):
    backend_name = default_name = "kl_divergence"


class Hinge(_PlainLoss):
    backend_name = default_name = "hinge"


class SquaredHinge(_PlainLoss):
    backend_name = default_name = "squared_hinge"


class CategoricalHinge(_PlainLoss):
    backend_name = default_name = "categorical_hinge"


class LogCosh(_PlainLoss):
    backend_name = default_name = "log_cosh"


class Poisson(_PlainLoss):
    backend_name = default_name = "poisson"


class MeanSquaredLogarithmicError(_PlainLoss):
    backend_name = default_name = "mean_squared_logarithmic_error"


class MeanAbsolutePercentageError(_PlainLoss):
    backend_name = default_name = "mean_absolute_percentage_error"


class CosineSimilarity(_PlainLoss):
    backend_name = default_name = "cosine_similarity"

    def __init__(self, axis=-1, name=None):
        _last_axis_only("CosineSimilarity", axis)
        super().__init__(name)
        self.axis = -1

    def get_config(self):
        return {"name": self.name, "axis": self.axis}


class BinaryFocalCrossentropy(Loss):
    backend_name = default_name = "binary_focal_crossentropy"

    def __init__(self, apply_class_balancing=False, alpha=0.25, gamma=2.0, from_logits=False,
                 label_smoothing=0.0, axis=-1, name=None):
        _last_axis_only("BinaryFocalCrossentropy", axis)
        if not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(f"BinaryFocalCrossentropy: label_smoothing must be in [0, 1], "
                             f"got {label_smoothing}")
        if float(gamma) < 0:
            raise ValueError(f"BinaryFocalCrossentropy: gamma must be >= 0, got {gamma}")
        super().__init__(name, from_logits)
        self.apply_class_balancing = bool(apply_class_balancing)
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.label_smoothing = float(label_smoothing)

    @property
    def param(self):
        return {"apply_class_balancing": self.apply_class_balancing, "alpha": self.alpha,
                "gamma": self.gamma, "label_smoothing": self.label_smoothing}

    def get_config(self):
        return {**super().get_config(), **self.param}


class CategoricalFocalCrossentropy(Loss):
    """Keras's alpha-balanced focal loss on one-hot targets: per sample
    sum_j alpha (1 - q_j)^gamma (-t_j log q_j), q the renormalized (softmax from logits)
    and clipped predictions, t label-smoothed towards 1/K."""

    backend_name = default_name = "categorical_focal_crossentropy"

    def __init__(self, alpha=0.25, gamma=2.0, from_logits=False, label_smoothing=0.0,
                 axis=-1, reduction="sum_over_batch_size", name=None, dtype=None):
        owner = "CategoricalFocalCrossentropy"
        _last_axis_only(owner, axis)
        if isinstance(alpha, (list, tuple, np.ndarray)):
            raise ValueError(f"{owner}: only a scalar alpha is supported (one weight for "
                             f"every class), got alpha={alpha!r}")
        if not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(f"{owner}: label_smoothing must be in [0, 1], got "
                             f"{label_smoothing}")
        if float(gamma) < 0:
            raise ValueError(f"{owner}: gamma must be >= 0, got {gamma}")
        super().__init__(name, from_logits, reduction, dtype)
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.label_smoothing = float(label_smoothing)
        self.axis = -1

    @property
    def param(self):
        return {"alpha": self.alpha, "gamma": self.gamma,
                "label_smoothing": self.label_smoothing}

    def get_config(self):
        return {**super().get_config(), **self.param, "axis": self.axis}


def _every_axis_only(owner, axis):
    # Keras's axis=None: one loss over the whole batch. Another axis would need per-slice
    # sums and Keras's broadcasting of the weights against them.
    if axis is not None:
        raise ValueError(f"{owner}: only axis=None (one loss over every axis) is supported, "
                         f"got axis={axis!r}")


class Dice(Loss):
    """Keras's dice over every axis (axis=None): 1 - 2 sum(t p) / (sum(t) + sum(p) + eps),
    one loss for the batch (sample_weight scales it by the weights' mean, as Keras)."""

    backend_name = default_name = "dice"

    def __init__(self, reduction="sum_over_batch_size", name=None, axis=None, dtype=None):
        _every_axis_only("Dice", axis)
        super().__init__(name, False, reduction, dtype)
        self.axis = None

    def get_config(self):
        return {"name": self.name, "axis": self.axis}


class Tversky(Loss):
    """Keras's tversky over every axis (axis=None): 1 - I / (I + alpha FP + beta FN + eps)
    with Keras's I = sum(t p), FP = sum((1 - p) t), FN = sum(p (1 - t))."""

    backend_name = default_name = "tversky"

    def __init__(self, alpha=0.5, beta=0.5, reduction="sum_over_batch_size", name=None,
                 axis=None, dtype=None):
        _every_axis_only("Tversky", axis)
        super().__init__(name, False, reduction, dtype)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.axis = None

    @property
    def param(self):
        return {"alpha": self.alpha, "beta": self.beta}

    def get_config(self):
        return {"name": self.name, **self.param, "axis": self.axis}


# -- Keras 3's CTC, Circle and CategoricalGeneralizedCrossEntropy (loss family) ----------

class CategoricalGeneralizedCrossEntropy(Loss):
    """Keras's generalized cross-entropy on integer labels y: per sample (1 - p_y^q) / q
    with p_y y_pred's entry at the label, as given (no clip, no renormalization)."""

    backend_name = default_name = "categorical_generalized_cross_entropy"
    sparse_labels = True

    def __init__(self, q=0.5, reduction="sum_over_batch_size", name=None, dtype=None):
        if isinstance(q, bool) or not isinstance(q, (int, float, np.floating, np.integer)) \
                or not 0 < q < 1:
            raise ValueError(f"CategoricalGeneralizedCrossEntropy: q must be a number in the "
                             f"interval (0, 1), got q={q!r}")
        super().__init__(name, False, reduction, dtype)
        self.q = float(q)

    @property
    def param(self):
        return {"q": self.q}

    def get_config(self):
        return {"name": self.name, "q": self.q}


def _integer_labels(owner, y, what):
    """y as integers, or a clear refusal (floats must hold whole numbers, as Keras casts)."""
    y = y if type(y) is np.ndarray else np.asarray(y)
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError(f"{what}: {owner}'s labels must be integers")
    elif y.dtype.kind not in "iub":
        raise TypeError(f"{what}: {owner}'s labels must be integers, got dtype {y.dtype}")
    return y


class CTC(Loss):
    """Keras's CTC loss. y_true: (batch, max_length) integer labels, padded at the end with
    0 (the blank, Keras's mask index: a label lies in [1, C)); y_pred: (batch, T, C), which
    Keras log-softmaxes whatever it holds (softmax outputs are read as logits too); every
    sample spans all T steps. A row whose labels cannot fit T steps is refused."""

    backend_name = default_name = "ctc"
    sparse_labels = True

    def __init__(self, reduction="sum_over_batch_size", name="ctc", dtype=None):
        super().__init__(name, False, reduction, dtype)

    def forward_backward(self, y_true, y_pred, need_grad=True, sample_weight=None):
        return backend.current().ctc_loss_forward_backward(y_true, y_pred, need_grad,
                                                           sample_weight)

    def prepare_labels(self, y, what, out_shape):
        """fit's targets: (n, max_length) integers (the op checks their values per batch)."""
        y = _integer_labels("CTC", y, what)
        if y.ndim != 2:
            raise ValueError(f"{what}: CTC's labels must be (samples, max_length) integers "
                             f"padded with 0, got shape {y.shape}")
        return np.ascontiguousarray(y, dtype=np.int32)

    def get_config(self):
        return {"name": self.name}


class Circle(Loss):
    """Keras's Circle loss on integer labels (N,) and L2-normalized embeddings (N, D): per
    sample softplus(lse_pos + lse_neg) over its pairs (see native/loss.pyx); samples without
    a positive or a negative pair have loss 0 and, as Keras masks them, leave the mean."""

    backend_name = default_name = "circle"
    sparse_labels = True

    def __init__(self, gamma=80.0, margin=0.4, remove_diagonal=True,
                 reduction="sum_over_batch_size", name="circle", dtype=None):
        if not isinstance(remove_diagonal, (bool, np.bool_)):
            raise TypeError(f"Circle: remove_diagonal must be a bool, got {remove_diagonal!r}")
        super().__init__(name, False, reduction, dtype)
        self.gamma = float(gamma)
        self.margin = float(margin)
        self.remove_diagonal = bool(remove_diagonal)

    def forward_backward(self, y_true, y_pred, need_grad=True, sample_weight=None):
        return backend.current().circle_loss_forward_backward(
            y_true, y_pred, self.gamma, self.margin, self.remove_diagonal, need_grad,
            sample_weight)

    def prepare_labels(self, y, what, out_shape):
        """fit's targets: (n,) or (n, 1) integers, any values (only equality counts)."""
        y = _integer_labels("Circle", y, what)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y.reshape(y.shape[0])
        if y.ndim != 1:
            raise ValueError(f"{what}: Circle's labels must be (samples,) integers, got "
                             f"shape {y.shape}")
        return np.ascontiguousarray(y, dtype=np.int32)

    def get_config(self):
        return {"name": self.name, "gamma": self.gamma, "margin": self.margin,
                "remove_diagonal": self.remove_diagonal}


ALIASES = {
    "mean_squared_error": MeanSquaredError, "mse": MeanSquaredError,
    "mean_absolute_error": MeanAbsoluteError, "mae": MeanAbsoluteError,
    "huber": Huber, "huber_loss": Huber,
    "binary_crossentropy": BinaryCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    # issue 15, with keras.losses' legacy aliases
    "kl_divergence": KLDivergence, "kld": KLDivergence,
    "kullback_leibler_divergence": KLDivergence,
    "hinge": Hinge, "squared_hinge": SquaredHinge, "categorical_hinge": CategoricalHinge,
    "log_cosh": LogCosh, "logcosh": LogCosh,
    "poisson": Poisson,
    "mean_squared_logarithmic_error": MeanSquaredLogarithmicError,
    "msle": MeanSquaredLogarithmicError,
    "mean_absolute_percentage_error": MeanAbsolutePercentageError,
    "mape": MeanAbsolutePercentageError,
    "cosine_similarity": CosineSimilarity,
    "binary_focal_crossentropy": BinaryFocalCrossentropy,
    "categorical_focal_crossentropy": CategoricalFocalCrossentropy,
    "dice": Dice, "tversky": Tversky,
    # Keras 3's CTC, Circle and CategoricalGeneralizedCrossEntropy (loss family)
    "ctc": CTC, "circle": Circle,
    "categorical_generalized_cross_entropy": CategoricalGeneralizedCrossEntropy,
}
_BY_CLASS = {cls.__name__: cls for cls in ALIASES.values()}


def get(identifier):
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Loss):
        return identifier()
    if callable(identifier) and not isinstance(identifier, (str, dict)):
        builtin = _FUNCTIONS.get(getattr(identifier, "__name__", None))
        if builtin is identifier:  # pynn.losses.mse and friends: the fused op
            return ALIASES[identifier.__name__]()
        return LossFunctionWrapper(identifier)
    if isinstance(identifier, str):
        if identifier.lower() in ALIASES:
            return ALIASES[identifier.lower()]()
        if identifier in _BY_CLASS:
            return _BY_CLASS[identifier]()
    loss = _registry.from_saved_config(identifier, _BY_CLASS, LossFunctionWrapper, Loss,
                                       "loss class")
    if loss is not None:
        return loss
    raise ValueError(f"Unknown loss {identifier!r}; expected one of {sorted(ALIASES)} or a "
                     f"pynn.losses.Loss")


def serialize(loss):
    return _registry.to_saved_config(loss, _BY_CLASS, LossFunctionWrapper, "loss class")


def mean_squared_error(y_true, y_pred):
    return MeanSquaredError()(y_true, y_pred)


def mean_absolute_error(y_true, y_pred):
    return MeanAbsoluteError()(y_true, y_pred)


def binary_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1):
    return BinaryCrossentropy(from_logits, label_smoothing, axis)(y_true, y_pred)


def categorical_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0,
                             axis=-1):
    return CategoricalCrossentropy(from_logits, label_smoothing, axis)(y_true, y_pred)


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False):
    return SparseCategoricalCrossentropy(from_logits=from_logits)(y_true, y_pred)


def kl_divergence(y_true, y_pred):
    return KLDivergence()(y_true, y_pred)


def hinge(y_true, y_pred):
    return Hinge()(y_true, y_pred)


def squared_hinge(y_true, y_pred):
    return SquaredHinge()(y_true, y_pred)


def categorical_hinge(y_true, y_pred):
    return CategoricalHinge()(y_true, y_pred)


def log_cosh(y_true, y_pred):
    return LogCosh()(y_true, y_pred)


def poisson(y_true, y_pred):
    return Poisson()(y_true, y_pred)


def mean_squared_logarithmic_error(y_true, y_pred):
    return MeanSquaredLogarithmicError()(y_true, y_pred)


def mean_absolute_percentage_error(y_true, y_pred):
    return MeanAbsolutePercentageError()(y_true, y_pred)


def cosine_similarity(y_true, y_pred, axis=-1):
    return CosineSimilarity(axis=axis)(y_true, y_pred)


def binary_focal_crossentropy(y_true, y_pred, apply_class_balancing=False, alpha=0.25,
                              gamma=2.0, from_logits=False, label_smoothing=0.0, axis=-1):
    return BinaryFocalCrossentropy(apply_class_balancing, alpha, gamma, from_logits,
                                   label_smoothing, axis)(y_true, y_pred)


def categorical_focal_crossentropy(y_true, y_pred, alpha=0.25, gamma=2.0, from_logits=False,
                                   label_smoothing=0.0, axis=-1):
    return CategoricalFocalCrossentropy(alpha, gamma, from_logits, label_smoothing,
                                        axis)(y_true, y_pred)


def dice(y_true, y_pred, axis=None):
    return Dice(axis=axis)(y_true, y_pred)


def tversky(y_true, y_pred, alpha=0.5, beta=0.5, axis=None):
    return Tversky(alpha, beta, axis=axis)(y_true, y_pred)


def ctc(y_true, y_pred):
    return CTC()(y_true, y_pred)


def circle(y_true, y_pred, ref_labels=None, ref_embeddings=None, remove_diagonal=True,
           gamma=80, margin=0.4):
    if ref_labels is not None or ref_embeddings is not None:
        raise ValueError("circle: ref_labels and ref_embeddings are not supported (the batch "
                         "is its own reference, as in keras.losses.Circle)")
    return Circle(gamma, margin, remove_diagonal)(y_true, y_pred)


def categorical_generalized_cross_entropy(y_true, y_pred, q):
    return CategoricalGeneralizedCrossEntropy(q)(y_true, y_pred)


# -- api: Keras 3's losses.huber (the Huber op, as the functions above)
def huber(y_true, y_pred, delta=1.0):
    return Huber(delta)(y_true, y_pred)


# The module's own loss functions: passed as callables they resolve to their fused op.
_FUNCTIONS = {name: fn for name, fn in globals().items()
              if callable(fn) and name in ALIASES and not isinstance(fn, type)}
# -- masks (issue 14, recurrent half) -----------------------------------------------------


def masked_sample_weight(mask, sample_weight, y_pred):
    """Keras's ``apply_mask`` for reduction sum_over_batch_size: the per-entry weights
    ``mask * total / valid`` (so the batch mean runs over the unmasked entries only), times
    ``sample_weight`` (per sample) where given. ``mask`` is a host bool array shaped like the
    per-entry losses, ``y_pred.shape[:-1]``; returns a backend array, or ``sample_weight``
    unchanged when the mask does not fit the output (a mask for another shape)."""
    b = backend.current()
    m = np.asarray(b.to_numpy(mask) if not isinstance(mask, np.ndarray) else mask)
    if m.shape != tuple(y_pred.shape[:-1]):
        return sample_weight
    weights = m.astype(np.float64)
    valid = weights.sum()
    if valid:
        weights *= weights.size / valid
    if sample_weight is not None:
        sw = np.asarray(b.to_numpy(sample_weight), dtype=np.float64)
        weights *= sw.reshape(sw.shape + (1,) * (weights.ndim - sw.ndim))
    return b.asarray(weights.astype(y_pred.dtype), y_pred.dtype)


# -- api: Keras 3's losses.deserialize
def deserialize(name, custom_objects=None):
    """A saved ``{"class_name", "config"}`` or a loss name -> the loss."""
    with _registry.custom_object_scope(custom_objects or {}):
        return get(name)
