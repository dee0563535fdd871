"""Keras 3's metric functions (``keras.metrics.binary_accuracy``, ...,
``keras.metrics.mean_squared_error``, ...): ``(y_true, y_pred) -> per-sample values``, each
composed of ``pynn.ops`` (device ops on both backends) with Keras's formula and epsilon.

Re-exported by ``pynn.metrics``. They return one value per sample (the last axis reduced),
as Keras's do; ``compile(metrics=[pynn.metrics.binary_accuracy])`` averages them over the
samples seen (``MeanMetricWrapper``).
"""

import math

from pynn import ops

EPSILON = 1e-7  # keras.config.epsilon(), the clip of Keras's losses (pynn.config.EPSILON)

__all__ = [
    "binary_accuracy", "binary_crossentropy", "binary_focal_crossentropy",
    "categorical_accuracy", "categorical_crossentropy", "categorical_focal_crossentropy",
    "categorical_hinge", "concordance_correlation", "hinge", "huber", "kl_divergence",
    "log_cosh", "mean_absolute_error", "mean_absolute_percentage_error", "mean_squared_error",
    "mean_squared_logarithmic_error", "pearson_correlation", "poisson",
    "sparse_categorical_accuracy", "sparse_categorical_crossentropy",
    "sparse_top_k_categorical_accuracy", "squared_hinge", "top_k_categorical_accuracy",
]


def _float_pair(fn, y_true, y_pred):
    """(y_true, y_pred) as tensors of y_pred's float dtype, ranks matched as Keras's
    squeeze_or_expand_to_same_rank (a trailing 1 dropped from the longer)."""
    p = ops.convert_to_tensor(y_pred)
    if str(p.dtype) not in ("float32", "float64"):
        p = ops.cast(p, "float32")
    t = ops.cast(ops.convert_to_tensor(y_true), str(p.dtype))
    if t.ndim == p.ndim + 1 and t.shape[-1] == 1:
        t = ops.squeeze(t, axis=-1)
    elif p.ndim == t.ndim + 1 and p.shape[-1] == 1:
        p = ops.squeeze(p, axis=-1)
    if tuple(t.shape) != tuple(p.shape):
        raise ValueError(f"pynn.metrics.{fn}: y_true of shape {tuple(t.shape)} does not match "
                         f"y_pred of shape {tuple(p.shape)}")
    return t, p


def _axis(fn, axis):
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise ValueError(f"pynn.metrics.{fn}: axis must be an int, got {axis!r}")
    return axis


# -- accuracies ------------------------------------------------------------------------------
def binary_accuracy(y_true, y_pred, threshold=0.5):
    """1 where (y_pred > threshold) == y_true, else 0, per entry (Keras 3 does not average
    the last axis here; BinaryAccuracy's running mean does)."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or \
            not math.isfinite(threshold):
        raise ValueError(f"pynn.metrics.binary_accuracy: threshold must be a finite number, "
                         f"got {threshold!r}")
    t, p = _float_pair("binary_accuracy", y_true, y_pred)
    predicted = ops.cast(ops.greater(p, float(threshold)), str(p.dtype))
    return ops.cast(ops.equal(t, predicted), "float32")


def categorical_accuracy(y_true, y_pred):
    """1 where argmax(y_true) == argmax(y_pred) along the last axis, else 0."""
    p = ops.convert_to_tensor(y_pred)
    t = ops.convert_to_tensor(y_true)
    if tuple(t.shape) != tuple(p.shape):
        raise ValueError(f"pynn.metrics.categorical_accuracy: y_true (one-hot) of shape "
                         f"{tuple(t.shape)} must match y_pred of shape {tuple(p.shape)}")
    return ops.cast(ops.equal(ops.argmax(t, axis=-1), ops.argmax(p, axis=-1)), "float32")


def _sparse_labels(fn, y_true, p):
    t = ops.convert_to_tensor(y_true)
    if t.ndim == p.ndim and t.shape[-1] == 1:
        t = ops.squeeze(t, axis=-1)
    if tuple(t.shape) != tuple(p.shape[:-1]):
        raise ValueError(f"pynn.metrics.{fn}: y_true (class ids) of shape {tuple(t.shape)} "
                         f"must be y_pred's shape {tuple(p.shape)} without its last axis")
    return t


def sparse_categorical_accuracy(y_true, y_pred):
    """1 where the class id y_true == argmax(y_pred) along the last axis, else 0."""
    p = ops.convert_to_tensor(y_pred)
    t = _sparse_labels("sparse_categorical_accuracy", y_true, p)
    predicted = ops.cast(ops.argmax(p, axis=-1), "float32")
    return ops.cast(ops.equal(ops.cast(t, "float32"), predicted), "float32")


def _check_k(fn, k):
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"pynn.metrics.{fn}: k must be a positive int, got {k!r}")


def _in_top_k_rows(fn, labels, p, k):
    """in_top_k over rows of 2-D scores, any leading axes folded into the batch."""
    classes = p.shape[-1]
    lead = tuple(p.shape[:-1])
    rows = ops.reshape(p, (-1, classes))
    hit = ops.in_top_k(ops.reshape(ops.cast(labels, "int32"), (-1,)), rows, min(k, classes))
    return ops.reshape(ops.cast(hit, "float32"), lead)


def top_k_categorical_accuracy(y_true, y_pred, k=5):
    """1 where y_true's class is among y_pred's k largest scores."""
    _check_k("top_k_categorical_accuracy", k)
    p = ops.convert_to_tensor(y_pred)
    t = ops.convert_to_tensor(y_true)
    if tuple(t.shape) != tuple(p.shape):
        raise ValueError(f"pynn.metrics.top_k_categorical_accuracy: y_true (one-hot) of shape "
                         f"{tuple(t.shape)} must match y_pred of shape {tuple(p.shape)}")
    return _in_top_k_rows("top_k_categorical_accuracy", ops.argmax(t, axis=-1), p, k)


def sparse_top_k_categorical_accuracy(y_true, y_pred, k=5, from_sorted_ids=False):
    """1 where the class id y_true is among y_pred's k largest scores; with
    ``from_sorted_ids`` y_pred holds class ids already sorted by score (the first k count)."""
    fn = "sparse_top_k_categorical_accuracy"
    _check_k(fn, k)
    p = ops.convert_to_tensor(y_pred)
    given_shape = tuple(ops.convert_to_tensor(y_true).shape)
    t = _sparse_labels(fn, y_true, p)
    if from_sorted_ids:
        top = p[..., :k]
        hits = ops.equal(ops.cast(top, "int64"), ops.expand_dims(ops.cast(t, "int64"), -1))
        matches = ops.cast(ops.any(hits, axis=-1), "float32")
    else:
        matches = _in_top_k_rows(fn, t, p, k)
    return ops.reshape(matches, given_shape)  # Keras keeps the labels' (N, 1) shape


# -- correlations ----------------------------------------------------------------------------
def pearson_correlation(y_true, y_pred, axis=-1):
    """Keras's per-sample Pearson correlation along ``axis``: the mean product of the
    standardized y_true and y_pred."""
    axis = _axis("pearson_correlation", axis)
    t, p = _float_pair("pearson_correlation", y_true, y_pred)
    t = ops.subtract(t, ops.mean(t, axis=axis, keepdims=True))
    p = ops.subtract(p, ops.mean(p, axis=axis, keepdims=True))
    t = ops.divide(t, ops.std(t, axis=axis, keepdims=True))
    p = ops.divide(p, ops.std(p, axis=axis, keepdims=True))
    return ops.mean(ops.multiply(t, p), axis=axis)


def concordance_correlation(y_true, y_pred, axis=-1):
    """Keras's per-sample concordance correlation along ``axis`` (its covariance term is
    (y_true - mean(y_pred)) * (y_pred - mean(y_pred)), as Keras writes it)."""
    axis = _axis("concordance_correlation", axis)
    t, p = _float_pair("concordance_correlation", y_true, y_pred)
    t_mean = ops.mean(t, axis=axis, keepdims=True)
    p_mean = ops.mean(p, axis=axis, keepdims=True)
    t_var = ops.var(ops.subtract(t, t_mean), axis=axis, keepdims=True)
    p_var = ops.var(ops.subtract(p, p_mean), axis=axis, keepdims=True)
    covar = ops.multiply(ops.subtract(t, p_mean), ops.subtract(p, p_mean))
    norm = ops.add(ops.add(t_var, p_var), ops.square(ops.subtract(t_mean, p_mean)))
    return ops.mean(ops.divide(ops.multiply(covar, 2.0), ops.add(norm, EPSILON)), axis=axis)


# -- the loss-named functions (per sample, as keras.losses' functions) ------------------------
def mean_squared_error(y_true, y_pred):
    t, p = _float_pair("mean_squared_error", y_true, y_pred)
    return ops.mean(ops.square(ops.subtract(t, p)), axis=-1)


def mean_absolute_error(y_true, y_pred):
    t, p = _float_pair("mean_absolute_error", y_true, y_pred)
    return ops.mean(ops.abs(ops.subtract(t, p)), axis=-1)


def mean_absolute_percentage_error(y_true, y_pred):
    t, p = _float_pair("mean_absolute_percentage_error", y_true, y_pred)
    diff = ops.abs(ops.divide(ops.subtract(t, p), ops.maximum(ops.abs(t), EPSILON)))
    return ops.multiply(ops.mean(diff, axis=-1), 100.0)


def mean_squared_logarithmic_error(y_true, y_pred):
    t, p = _float_pair("mean_squared_logarithmic_error", y_true, y_pred)
    first = ops.log(ops.add(ops.maximum(p, EPSILON), 1.0))
    second = ops.log(ops.add(ops.maximum(t, EPSILON), 1.0))
    return ops.mean(ops.square(ops.subtract(first, second)), axis=-1)


def _hinge_labels(t):
    """Keras's convert_binary_labels_to_hinge: labels in {0, 1} become {-1, 1}; labels
    already in {-1, 1} stay."""
    is_binary = ops.all(ops.logical_or(ops.equal(t, 0.0), ops.equal(t, 1.0)))
    return ops.where(is_binary, ops.subtract(ops.multiply(t, 2.0), 1.0), t)


def _hinge_pair(fn, y_true, y_pred):
    p = ops.convert_to_tensor(y_pred)
    t = ops.cast(ops.convert_to_tensor(y_true), str(p.dtype))
    if tuple(t.shape) != tuple(p.shape):
        t, p = _float_pair(fn, t, p)
    return _hinge_labels(t), p


def hinge(y_true, y_pred):
    t, p = _hinge_pair("hinge", y_true, y_pred)
    return ops.mean(ops.maximum(ops.subtract(1.0, ops.multiply(t, p)), 0.0), axis=-1)


def squared_hinge(y_true, y_pred):
    t, p = _hinge_pair("squared_hinge", y_true, y_pred)
    margin = ops.maximum(ops.subtract(1.0, ops.multiply(t, p)), 0.0)
    return ops.mean(ops.square(margin), axis=-1)


def categorical_hinge(y_true, y_pred):
    p = ops.convert_to_tensor(y_pred)
    t = ops.cast(ops.convert_to_tensor(y_true), str(p.dtype))
    pos = ops.sum(ops.multiply(t, p), axis=-1)
    neg = ops.max(ops.multiply(ops.subtract(1.0, t), p), axis=-1)
    return ops.maximum(ops.add(ops.subtract(neg, pos), 1.0), 0.0)


def huber(y_true, y_pred, delta=1.0):
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not delta > 0 or \
            not math.isfinite(delta):
        raise ValueError(f"pynn.metrics.huber: delta must be a positive finite number, got "
                         f"{delta!r}")
    t, p = _float_pair("huber", y_true, y_pred)
    error = ops.subtract(p, t)
    abs_error = ops.abs(error)
    quadratic = ops.multiply(ops.square(error), 0.5)
    linear = ops.subtract(ops.multiply(abs_error, float(delta)), 0.5 * float(delta) ** 2)
    return ops.mean(ops.where(ops.less_equal(abs_error, float(delta)), quadratic, linear),
                    axis=-1)


def log_cosh(y_true, y_pred):
    t, p = _float_pair("log_cosh", y_true, y_pred)
    x = ops.subtract(p, t)
    return ops.mean(ops.subtract(ops.add(x, ops.softplus(ops.multiply(x, -2.0))),
                                 math.log(2.0)), axis=-1)


def kl_divergence(y_true, y_pred):
    p = ops.convert_to_tensor(y_pred)
    t = ops.cast(ops.convert_to_tensor(y_true), str(p.dtype))
    t, p = ops.clip(t, EPSILON, 1.0), ops.clip(p, EPSILON, 1.0)
    return ops.sum(ops.multiply(t, ops.log(ops.divide(t, p))), axis=-1)


def poisson(y_true, y_pred):
    p = ops.convert_to_tensor(y_pred)
    t = ops.cast(ops.convert_to_tensor(y_true), str(p.dtype))
    return ops.mean(ops.subtract(p, ops.multiply(t, ops.log(ops.add(p, EPSILON)))), axis=-1)


def _binary_ce(t, p, from_logits):
    """Elementwise binary cross-entropy: exact from logits (max(x,0) - x t + log1p(e^-|x|)),
    else on the output clipped to [eps, 1 - eps]."""
    if from_logits:
        return ops.add(ops.subtract(ops.maximum(p, 0.0), ops.multiply(p, t)),
                       ops.log1p(ops.exp(ops.negative(ops.abs(p)))))
    o = ops.clip(p, EPSILON, 1.0 - EPSILON)
    return ops.negative(ops.add(ops.multiply(t, ops.log(o)),
                                ops.multiply(ops.subtract(1.0, t),
                                             ops.log(ops.subtract(1.0, o)))))


def _smoothing(fn, label_smoothing):
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) or \
            not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"pynn.metrics.{fn}: label_smoothing must be in [0, 1], got "
                         f"{label_smoothing!r}")
    return float(label_smoothing)


def binary_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1):
    axis = _axis("binary_crossentropy", axis)
    smoothing = _smoothing("binary_crossentropy", label_smoothing)
    t, p = _float_pair("binary_crossentropy", y_true, y_pred)
    if smoothing:
        t = ops.add(ops.multiply(t, 1.0 - smoothing), 0.5 * smoothing)
    return ops.mean(_binary_ce(t, p, from_logits), axis=axis)


def binary_focal_crossentropy(y_true, y_pred, apply_class_balancing=False, alpha=0.25,
                              gamma=2.0, from_logits=False, label_smoothing=0.0, axis=-1):
    axis = _axis("binary_focal_crossentropy", axis)
    smoothing = _smoothing("binary_focal_crossentropy", label_smoothing)
    t, p = _float_pair("binary_focal_crossentropy", y_true, y_pred)
    if smoothing:
        t = ops.add(ops.multiply(t, 1.0 - smoothing), 0.5 * smoothing)
    if from_logits:
        p = ops.sigmoid(p)
    bce = _binary_ce(t, p, False)
    p_t = ops.add(ops.multiply(t, p), ops.multiply(ops.subtract(1.0, t), ops.subtract(1.0, p)))
    focal = ops.multiply(ops.power(ops.subtract(1.0, p_t), float(gamma)), bce)
    if apply_class_balancing:
        weight = ops.add(ops.multiply(t, float(alpha)),
                         ops.multiply(ops.subtract(1.0, t), 1.0 - float(alpha)))
        focal = ops.multiply(weight, focal)
    return ops.mean(focal, axis=axis)


def _class_probabilities(p, from_logits, axis):
    """log of the class probabilities: log_softmax of logits, else log of the output
    renormalized along ``axis`` and clipped to [eps, 1 - eps] (Keras's torch backend)."""
    if from_logits:
        return ops.log_softmax(p, axis=axis)
    o = ops.divide(p, ops.sum(p, axis=axis, keepdims=True))
    return ops.log(ops.clip(o, EPSILON, 1.0 - EPSILON))


def _last_axis_only(fn, axis, ndim):
    axis = _axis(fn, axis)
    if axis % max(ndim, 1) != ndim - 1:
        raise ValueError(f"pynn.metrics.{fn}: only the last axis (-1) is supported, got axis "
                         f"{axis}")
    return -1


def categorical_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0,
                             axis=-1):
    fn = "categorical_crossentropy"
    smoothing = _smoothing(fn, label_smoothing)
    p = ops.convert_to_tensor(y_pred)
    axis = _last_axis_only(fn, axis, p.ndim)
    t = ops.cast(ops.convert_to_tensor(y_true), str(p.dtype))
    if tuple(t.shape) != tuple(p.shape):
        raise ValueError(f"pynn.metrics.{fn}: y_true (one-hot) of shape {tuple(t.shape)} must "
                         f"match y_pred of shape {tuple(p.shape)}")
    if smoothing:
        t = ops.add(ops.multiply(t, 1.0 - smoothing), smoothing / p.shape[-1])
    return ops.negative(ops.sum(ops.multiply(t, _class_probabilities(p, from_logits, axis)),
                                axis=axis))


def categorical_focal_crossentropy(y_true, y_pred, alpha=0.25, gamma=2.0, from_logits=False,
                                   label_smoothing=0.0, axis=-1):
    fn = "categorical_focal_crossentropy"
    smoothing = _smoothing(fn, label_smoothing)
    p = ops.convert_to_tensor(y_pred)
    axis = _last_axis_only(fn, axis, p.ndim)
    t = ops.cast(ops.convert_to_tensor(y_true), str(p.dtype))
    if tuple(t.shape) != tuple(p.shape):
        raise ValueError(f"pynn.metrics.{fn}: y_true (one-hot) of shape {tuple(t.shape)} must "
                         f"match y_pred of shape {tuple(p.shape)}")
    if smoothing:
        t = ops.add(ops.multiply(t, 1.0 - smoothing), smoothing / p.shape[-1])
    if from_logits:
        p = ops.softmax(p, axis=axis)
    o = ops.clip(ops.divide(p, ops.sum(p, axis=axis, keepdims=True)), EPSILON, 1.0 - EPSILON)
    cce = ops.negative(ops.multiply(t, ops.log(o)))
    weight = ops.multiply(ops.power(ops.subtract(1.0, o), float(gamma)), float(alpha))
    return ops.sum(ops.multiply(weight, cce), axis=axis)


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False, ignore_class=None,
                                    axis=-1):
    fn = "sparse_categorical_crossentropy"
    p = ops.convert_to_tensor(y_pred)
    axis = _last_axis_only(fn, axis, p.ndim)
    t = _sparse_labels(fn, y_true, p)
    labels = ops.cast(t, "int32")
    if ignore_class is not None:
        valid = ops.not_equal(labels, int(ignore_class))
        labels = ops.where(valid, labels, 0)
        p = ops.where(ops.expand_dims(valid, -1), p, 0.0)
    one_hot = ops.one_hot(labels, p.shape[-1], dtype=str(p.dtype))
    res = ops.negative(ops.sum(ops.multiply(one_hot, _class_probabilities(p, from_logits, axis)),
                               axis=axis))
    if ignore_class is not None:
        res = ops.where(valid, res, 0.0)
    return res
