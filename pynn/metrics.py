"""Streaming metrics with Keras 3's names. Each batch costs one backend count op; the state is a
few Python integers, so nothing but scalars leaves the device."""

import numpy as np

from pynn import _registry, backend


class Metric:
    """Keras's contract: ``update_state(y_true, y_pred)``, ``result()``, ``reset_state()``.
    A user's subclass overrides those three (pynn passes backend arrays)."""

    def __init__(self, name=None, dtype=None):
        self.name = name or getattr(self, "default_name", None) or _snake(type(self).__name__)
        self.dtype = dtype or "float32"
        self._state_variables = []
        try:
            self.reset_state()
        except AttributeError:
            # A Keras-style subclass creates its state with add_variable after this
            # __init__, and its reset_state reads it: the variables start reset.
            if type(self).__module__ == __name__:
                raise

    def add_variable(self, shape=(), initializer="zeros", dtype=None, name=None):
        """Keras's ``Metric.add_variable``: a host-side state value updated with ``assign`` /
        ``assign_add`` (what a subclass's update_state keeps between batches)."""
        v = MetricVariable(shape, initializer, name)
        self._state_variables.append(v)
        return v

    def reset_state(self):
        if getattr(self, "_state_variables", None):
            for v in self._state_variables:
                v.reset()
            return
        self.correct = 0
        self.total = 0

    def result(self):
        return self.correct / self.total if self.total else 0.0

    def get_config(self):
        return {"name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class MetricVariable:
    """A metric's state (Keras's metric variables): float64 on the host, so nothing but the
    batch's reduced values crosses from the device; reads as an array or a float, and
    pynn.ops take it as its value."""

    _pynn_host_state = True

    def __init__(self, shape=(), initializer="zeros", name=None):
        if initializer not in ("zeros", "ones"):
            raise ValueError(f"Metric.add_variable: initializer must be 'zeros' or 'ones', "
                             f"got {initializer!r}")
        self.name = name
        self._initial = np.full(tuple(shape), 1.0 if initializer == "ones" else 0.0)
        self.reset()

    def reset(self):
        self.value = self._initial.copy()

    def assign(self, v):
        self.value = np.broadcast_to(_host_value(v), self.value.shape).copy()

    def assign_add(self, v):
        self.value = np.asarray(self.value + _host_value(v))

    def assign_sub(self, v):
        self.value = np.asarray(self.value - _host_value(v))

    def numpy(self):
        return self.value

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.value, dtype)

    def __float__(self):
        return float(self.value)

    def __repr__(self):
        return f"MetricVariable({self.name!r}, {self.value!r})"


def _host_value(v):
    if hasattr(v, "numpy"):
        v = v.numpy()
    return np.asarray(_host(v), np.float64)


class BinaryAccuracy(Metric):
    default_name = "binary_accuracy"

    def __init__(self, name=None, threshold=0.5):
        self.threshold = float(threshold)
        super().__init__(name)

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            t, p, w = _weighted_inputs(self, y_true, y_pred, sample_weight)
            match = t.reshape(p.shape) == (p > _in_dtype(p, self.threshold))
            self.correct += float(np.sum(w[..., None] * match))
            self.total += float(np.sum(w)) * p.shape[-1]
            return
        y_true, y_pred = _backend_arrays(y_true, y_pred)
        self.correct += backend.current().accuracy_count(y_true, y_pred, "binary", self.threshold)
        self.total += _size(y_pred)

    def get_config(self):
        return {"name": self.name, "threshold": self.threshold}


def _rows(y_true, y_pred, sparse):
    """Scores (..., K) as rows (M, K) and their targets as (M,) labels or (M, K) one-hots:
    sequence outputs (N, T, K) count N*T predictions, as Keras's accuracies do."""
    if y_pred.ndim <= 2:
        return y_true, y_pred
    b = backend.current()
    k = y_pred.shape[-1]
    rows = _size(y_pred) // k if k else 0
    y_pred = b.reshape(y_pred, (rows, k))
    if _size(y_true) == (rows if sparse else rows * k):
        y_true = b.reshape(y_true, (rows,) if sparse else (rows, k))
    return y_true, y_pred  # any other target shape: the count op names the mismatch


class CategoricalAccuracy(Metric):
    default_name = "categorical_accuracy"
    mode = "categorical"

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            t, p, w = _weighted_inputs(self, y_true, y_pred, sample_weight)
            true = _target_ids(t, p, self.mode == "sparse")
            self.correct += float(np.sum(w * (true == np.argmax(p, axis=-1))))
            self.total += float(np.sum(w))
            return
        y_true, y_pred = _rows(*_backend_arrays(y_true, y_pred, self.mode == "sparse"),
                               self.mode == "sparse")
        self.correct += backend.current().accuracy_count(y_true, y_pred, self.mode, 0.5)
        self.total += y_pred.shape[0]


class SparseCategoricalAccuracy(CategoricalAccuracy):
    default_name = "sparse_categorical_accuracy"
    mode = "sparse"


class TopKCategoricalAccuracy(Metric):
    default_name = "top_k_categorical_accuracy"
    sparse = False

    def __init__(self, k=5, name=None):
        if k < 1:
            raise ValueError(f"{type(self).__name__}: k must be >= 1, got {k}")
        self.k = int(k)
        super().__init__(name)

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            t, p, w = _weighted_inputs(self, y_true, y_pred, sample_weight)
            true = _target_ids(t, p, self.sparse)
            score = np.take_along_axis(p, true[..., None], axis=-1)
            kth = -np.sort(-p, axis=-1)[..., min(self.k, p.shape[-1]) - 1:][..., :1]
            self.correct += float(np.sum(w * (score >= kth)[..., 0]))
            self.total += float(np.sum(w))
            return
        y_true, y_pred = _rows(*_backend_arrays(y_true, y_pred, self.sparse), self.sparse)
        self.correct += backend.current().top_k_count(y_true, y_pred, self.k, self.sparse)
        self.total += y_pred.shape[0]

    def get_config(self):
        return {"name": self.name, "k": self.k}


class SparseTopKCategoricalAccuracy(TopKCategoricalAccuracy):
    default_name = "sparse_top_k_categorical_accuracy"
    sparse = True


class _Confusion(Metric):
    def __init__(self, thresholds=None, name=None):
        self.thresholds = 0.5 if thresholds is None else float(thresholds)
        super().__init__(name)

    def reset_state(self):
        self.tp = self.fp = self.fn = 0

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            t, p, w = _weighted_inputs(self, y_true, y_pred, sample_weight)
            w = np.broadcast_to(w.reshape(w.shape + (1,) * (p.ndim - w.ndim)), p.shape)
            true, pred = t.reshape(p.shape) != 0, p > _in_dtype(p, self.thresholds)
            self.tp += float(np.sum(w * (true & pred)))
            self.fp += float(np.sum(w * (~true & pred)))
            self.fn += float(np.sum(w * (true & ~pred)))
            return
        y_true, y_pred = _backend_arrays(y_true, y_pred)
        tp, fp, fn = backend.current().confusion_counts(y_true, y_pred, self.thresholds)
        self.tp += tp
        self.fp += fp
        self.fn += fn

    def get_config(self):
        return {"name": self.name, "thresholds": self.thresholds}


class Precision(_Confusion):
    default_name = "precision"

    def result(self):
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0


class Recall(_Confusion):
    default_name = "recall"

    def result(self):
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0


# -- issue 15: F-beta, AUC and the mean-error metrics ---------------------------------------

class FBetaScore(Metric):
    """Keras 3's FBetaScore: per-class counts over 2-D (N, K) inputs (one ``fbeta_counts`` op
    per batch); a prediction is y_pred > threshold, or without a threshold (the default) the
    row's largest score. ``average``: None (one score per class), "micro" (pooled counts),
    "macro" (mean of the class scores) or "weighted" (weighted by each class's support)."""

    default_name = "fbeta_score"
    AVERAGES = (None, "micro", "macro", "weighted")

    def __init__(self, average=None, beta=1.0, threshold=None, name=None):
        owner = type(self).__name__
        if average not in self.AVERAGES:
            raise ValueError(f"{owner}: invalid `average` argument value, expected one of "
                             f"{self.AVERAGES}, got average={average!r}")
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or beta <= 0:
            raise ValueError(f"{owner}: `beta` must be a float > 0, got beta={beta!r}")
        if threshold is not None and (isinstance(threshold, bool)
                                      or not isinstance(threshold, (int, float))
                                      or not 0.0 < threshold <= 1.0):
            raise ValueError(f"{owner}: `threshold` must be None or a float in (0, 1], got "
                             f"threshold={threshold!r}")
        self.average = average
        self.beta = float(beta)
        self.threshold = None if threshold is None else float(threshold)
        super().__init__(name)

    def reset_state(self):
        self.counts = None  # (tp, fp, fn, support) per class, float64 (4, K)

    def update_state(self, y_true, y_pred, sample_weight=None):
        _unweighted_only(self, sample_weight)
        y_true, y_pred = _backend_arrays(y_true, y_pred)
        counts = backend.current().fbeta_counts(y_true, y_pred, self.threshold)
        if self.counts is not None and self.counts.shape != counts.shape:
            raise ValueError(f"{self.name}: y_pred has {counts.shape[1]} classes, earlier "
                             f"batches had {self.counts.shape[1]}")
        self.counts = counts if self.counts is None else self.counts + counts

    def result(self):
        if self.counts is None:
            return 0.0
        eps = 1e-7  # Keras's backend.epsilon()
        tp, fp, fn, support = self.counts
        if self.average == "micro":
            tp, fp, fn = tp.sum(), fp.sum(), fn.sum()
        precision = tp / (tp + fp + eps)
        recall = tp / (tp + fn + eps)
        b2 = self.beta**2
        score = precision * recall / (b2 * precision + recall + eps) * (1 + b2)
        if self.average == "weighted":
            return float(np.sum(score * support / (support.sum() + eps)))
        if self.average is not None:
            return float(np.mean(score))
        return score

    def get_config(self):
        return {"name": self.name, "average": self.average, "beta": self.beta,
                "threshold": self.threshold}


class F1Score(FBetaScore):
    """FBetaScore with beta = 1 (Keras 3's F1Score: no threshold by default, so each row's
    top score is its positive prediction; average None gives one score per class)."""

    default_name = "f1_score"

    def __init__(self, average=None, threshold=None, name=None):
        super().__init__(average=average, beta=1.0, threshold=threshold, name=name)

    def get_config(self):
        return {"name": self.name, "average": self.average, "threshold": self.threshold}


class AUC(Metric):
    """Keras 3's AUC: tp/fp/tn/fn at ``num_thresholds`` thresholds spread over [0, 1] (plus
    -eps and 1 + eps) from one ``threshold_counts`` op per batch (per label with
    ``multi_label``); ROC or PR curve, Riemann sum by interpolation (PR: Davis & Goadrich's),
    minoring or majoring. ``multi_label`` keeps one curve per column of (N, L) inputs and
    averages their areas (Keras's label_weights None); ``from_logits`` applies the sigmoid
    first (a backend activation op, so the scores stay on the device)."""

    default_name = "auc"
    CURVES = ("ROC", "PR")
    SUMMATIONS = ("interpolation", "minoring", "majoring")

    def __init__(self, num_thresholds=200, curve="ROC", summation_method="interpolation",
                 name=None, thresholds=None, multi_label=False, num_labels=None,
                 label_weights=None, from_logits=False):
        curve = str(curve).upper()
        summation_method = str(summation_method).lower()
        if curve not in self.CURVES:
            raise ValueError(f"AUC: invalid `curve` argument value {curve!r}, expected one of "
                             f"{self.CURVES}")
        if summation_method not in self.SUMMATIONS:
            raise ValueError(f"AUC: invalid `summation_method` argument value "
                             f"{summation_method!r}, expected one of {self.SUMMATIONS}")
        if label_weights is not None:
            raise NotImplementedError("AUC: label_weights is not supported (the mean over "
                                      "labels is Keras's label_weights=None)")
        if num_labels is not None and (isinstance(num_labels, bool)
                                       or not isinstance(num_labels, int) or num_labels < 1):
            raise ValueError(f"AUC: `num_labels` must be an int >= 1, got {num_labels!r}")
        if thresholds is not None:
            inner = sorted(float(v) for v in thresholds)
            self.num_thresholds = len(inner) + 2
        else:
            if isinstance(num_thresholds, bool) or not isinstance(num_thresholds, int) \
                    or num_thresholds <= 1:
                raise ValueError(f"AUC: `num_thresholds` must be an integer > 1, got "
                                 f"num_thresholds={num_thresholds!r}")
            self.num_thresholds = num_thresholds
            inner = [(i + 1) * 1.0 / (num_thresholds - 1) for i in range(num_thresholds - 2)]
        self._init_thresholds = None if thresholds is None else inner
        self.thresholds = np.array([0.0 - 1e-7] + inner + [1.0 + 1e-7])
        self.curve = curve
        self.summation_method = summation_method
        self.multi_label = bool(multi_label)
        self.num_labels = num_labels
        self.from_logits = bool(from_logits)
        super().__init__(name)

    def reset_state(self):
        # (4, T) counts, or with multi_label (L, 4, T) once the labels are known.
        t = getattr(self, "num_thresholds", 0)
        labels = getattr(self, "num_labels", None)
        if getattr(self, "multi_label", False):
            self.counts = None if labels is None else np.zeros((labels, 4, t), np.int64)
        else:
            self.counts = np.zeros((4, t), np.int64)

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            self._update_weighted(*_weighted_inputs(self, y_true, y_pred, sample_weight))
            return
        y_true, y_pred = _backend_arrays(y_true, y_pred)
        b = backend.current()
        if self.from_logits:
            y_pred = b.activation_forward(y_pred, "sigmoid", 0.0)
        if not self.multi_label:
            self.counts = self.counts + b.threshold_counts(y_true, y_pred, self.thresholds)
            return
        if len(y_pred.shape) != 2 or tuple(y_true.shape) != tuple(y_pred.shape):
            raise ValueError(f"{self.name}: multi_label wants y_true and y_pred of one shape "
                             f"(N, num_labels), got {tuple(y_true.shape)} and "
                             f"{tuple(y_pred.shape)}")
        labels = y_pred.shape[1]
        if self.counts is None:
            self.counts = np.zeros((labels, 4, self.num_thresholds), np.int64)
        if self.counts.shape[0] != labels:
            raise ValueError(f"{self.name}: y_pred has {labels} labels, expected "
                             f"{self.counts.shape[0]}")
        # Labels as rows: each is then a contiguous (N,) view for the count op.
        true_rows = b.transpose_forward(y_true, (1, 0))
        pred_rows = b.transpose_forward(y_pred, (1, 0))
        self.counts = self.counts + np.stack([
            b.threshold_counts(true_rows[j], pred_rows[j], self.thresholds)
            for j in range(labels)])

    def _update_weighted(self, t, p, w):
        """Weighted tp/fp/tn/fn (floats), as Keras's update_confusion_variables."""
        if self.from_logits:
            p = 1.0 / (1.0 + np.exp(-p))
        w = np.broadcast_to(w.reshape(w.shape + (1,) * (p.ndim - w.ndim)), p.shape)
        t = t.reshape(p.shape) != 0
        if self.multi_label:
            p, t, w = (a.reshape(-1, a.shape[-1]).T for a in (p, t, w))
            if self.counts is None:
                self.counts = np.zeros((p.shape[0], 4, self.num_thresholds))
        else:
            p, t, w = p.reshape(1, -1), t.reshape(1, -1), w.reshape(1, -1)
        above = p[:, None, :] > self.thresholds[None, :, None]  # (labels, T, elements)
        pos, neg = w * t, w * ~t
        tp = np.einsum("lte,le->lt", above, pos)
        fp = np.einsum("lte,le->lt", above, neg)
        counts = np.stack([tp, fp, neg.sum(axis=1)[:, None] - fp,
                           pos.sum(axis=1)[:, None] - tp], axis=1)
        self.counts = self.counts + (counts if self.multi_label else counts[0])

    def result(self):
        if self.counts is None:
            return 0.0
        if self.multi_label:
            return float(np.mean([self._area(c) for c in self.counts]))
        return self._area(self.counts)

    def _area(self, counts):
        tp, fp, tn, fn = (c.astype(np.float64) for c in counts)
        n = self.num_thresholds
        if self.curve == "PR" and self.summation_method == "interpolation":
            dtp = tp[:n - 1] - tp[1:]
            p = tp + fp
            dp = p[:n - 1] - p[1:]
            slope = _divide_no_nan(dtp, np.maximum(dp, 0))
            intercept = tp[1:] - slope * p[1:]
            ratio = np.where((p[:n - 1] > 0) & (p[1:] > 0),
                             _divide_no_nan(p[:n - 1], np.maximum(p[1:], 0)), 1.0)
            return float(np.sum(_divide_no_nan(slope * (dtp + intercept * np.log(ratio)),
                                               np.maximum(tp[1:] + fn[1:], 0))))
        recall = _divide_no_nan(tp, tp + fn)
        if self.curve == "ROC":
            x, y = _divide_no_nan(fp, fp + tn), recall
        else:
            x, y = recall, _divide_no_nan(tp, tp + fp)
        if self.summation_method == "interpolation":
            heights = (y[:n - 1] + y[1:]) / 2
        elif self.summation_method == "minoring":
            heights = np.minimum(y[:n - 1], y[1:])
        else:
            heights = np.maximum(y[:n - 1], y[1:])
        return float(np.sum((x[:n - 1] - x[1:]) * heights))

    def get_config(self):
        return {"name": self.name, "num_thresholds": self.num_thresholds, "curve": self.curve,
                "summation_method": self.summation_method,
                "thresholds": self._init_thresholds, "multi_label": self.multi_label,
                "num_labels": self.num_labels, "from_logits": self.from_logits}


class _AtConstraint(Metric):
    """Keras 3's SensitivitySpecificityBase: tp/fp/tn/fn at ``num_thresholds`` thresholds
    evenly over [0, 1] (0 and 1 themselves, unlike AUC's), one ``threshold_counts`` op per
    unweighted batch (weighted ones, and ``class_id``'s column, counted on the host); the
    result is the best dependent rate among the thresholds where the constrained rate
    reaches ``value`` (0 where none does)."""

    value_name = None

    def __init__(self, value, num_thresholds=200, class_id=None, name=None, dtype=None):
        label = type(self).__name__
        try:
            value = float(value)
        except (TypeError, ValueError):
            value = -1.0
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{label}: `{self.value_name}` must be in the range [0, 1], got "
                             f"{value!r}")
        if isinstance(num_thresholds, bool) or not isinstance(num_thresholds, int) \
                or num_thresholds <= 0:
            raise ValueError(f"{label}: `num_thresholds` must be an integer > 0, got "
                             f"{num_thresholds!r}")
        if class_id is not None and (isinstance(class_id, bool) or not isinstance(class_id, int)
                                     or class_id < 0):
            raise ValueError(f"{label}: class_id must be an int >= 0 or None, got "
                             f"{class_id!r}")
        self.value, self.num_thresholds, self.class_id = value, num_thresholds, class_id
        inner = [(i + 1) * 1.0 / (num_thresholds - 1) for i in range(num_thresholds - 2)]
        self.thresholds = (np.array([0.5]) if num_thresholds == 1
                           else np.array([0.0] + inner + [1.0]))
        super().__init__(name=name, dtype=dtype)

    def reset_state(self):
        self.counts = np.zeros((4, len(self.thresholds)))

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is None and self.class_id is None and len(self.thresholds) > 1:
            y_true, y_pred = _backend_arrays(y_true, y_pred)
            self.counts = self.counts + backend.current().threshold_counts(
                y_true, y_pred, self.thresholds)
            return
        p = _host(y_pred).astype(np.float64)
        t = _host(y_true).astype(np.float64).reshape(p.shape)
        w = (np.ones(p.shape) if sample_weight is None
             else _weighted_inputs(self, t, p, sample_weight)[2])
        w = np.broadcast_to(w.reshape(w.shape + (1,) * (p.ndim - w.ndim)), p.shape)
        if self.class_id is not None:
            if p.ndim < 1 or self.class_id >= p.shape[-1]:
                raise ValueError(f"{self.name}: class_id {self.class_id} is outside y_pred's "
                                 f"last axis of {p.shape[-1] if p.ndim else 0}")
            p, t, w = p[..., self.class_id], t[..., self.class_id], w[..., self.class_id]
        p, t, w = p.reshape(-1), t.reshape(-1) != 0, w.reshape(-1)
        above = p[None, :] > self.thresholds[:, None]
        tp, fp = (above * (w * t)).sum(1), (above * (w * ~t)).sum(1)
        self.counts = self.counts + np.stack([tp, fp, (w * ~t).sum() - fp,
                                              (w * t).sum() - tp])

    def _rates(self):
        tp, fp, tn, fn = self.counts
        return {"sensitivity": _divide_no_nan(tp, tp + fn),
                "specificity": _divide_no_nan(tn, tn + fp),
                "precision": _divide_no_nan(tp, tp + fp),
                "recall": _divide_no_nan(tp, tp + fn)}

    def result(self):
        rates = self._rates()
        feasible = rates[self.value_name] >= self.value
        return float(np.max(np.where(feasible, rates[self.other], 0.0), initial=0.0))

    def get_config(self):
        return {"name": self.name, self.value_name: self.value,
                "num_thresholds": self.num_thresholds, "class_id": self.class_id}


def _at_constraint(class_name, value_name, other, default_name):
    cls = type(class_name, (_AtConstraint,), dict(
        value_name=value_name, other=other, default_name=default_name,
        __doc__=f"Keras's ``{class_name}({value_name}, num_thresholds=200, class_id=None)``: "
                f"the best {other} where the {value_name} is at least ``{value_name}``.",
        __module__=__name__))

    def init(self, value=None, num_thresholds=200, class_id=None, name=None, dtype=None,
             **kwargs):
        given = kwargs.pop(value_name, None)
        if kwargs:
            raise TypeError(f"{class_name}: unexpected arguments {sorted(kwargs)}")
        _AtConstraint.__init__(self, given if value is None else value, num_thresholds,
                               class_id, name, dtype)

    cls.__init__ = init
    return cls


SensitivityAtSpecificity = _at_constraint("SensitivityAtSpecificity", "specificity",
                                          "sensitivity", "sensitivity_at_specificity")
SpecificityAtSensitivity = _at_constraint("SpecificityAtSensitivity", "sensitivity",
                                          "specificity", "specificity_at_sensitivity")
PrecisionAtRecall = _at_constraint("PrecisionAtRecall", "recall", "precision",
                                   "precision_at_recall")
RecallAtPrecision = _at_constraint("RecallAtPrecision", "precision", "recall",
                                   "recall_at_precision")


class IoU(Metric):
    """Keras 3's ``IoU(num_classes, target_class_ids, ignore_class=None, sparse_y_true=True,
    sparse_y_pred=True, axis=-1)``: a (weighted) confusion matrix summed over batches; the
    result averages tp / (tp + fp + fn + eps) over the target classes seen (Keras's epsilon
    1e-7). One-hot or score inputs take their argmax over ``axis``; labels outside
    [0, num_classes) and ``ignore_class`` count with weight 0, as Keras masks them. Batches
    are read back to the host (the matrix is counted there with the weights); MeanIoU's
    plain class-id updates stay one ``confusion_matrix`` op on the device."""

    default_name = "io_u"

    def __init__(self, num_classes, target_class_ids, name=None, dtype=None,
                 ignore_class=None, sparse_y_true=True, sparse_y_pred=True, axis=-1):
        label = type(self).__name__
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"{label}: `num_classes` must be an int >= 1, got {num_classes!r}")
        ids = [int(c) for c in target_class_ids]
        if any(not 0 <= c < num_classes for c in ids) or not ids:
            raise ValueError(f"{label}: target_class_ids must be class ids in [0, "
                             f"{num_classes}), got {list(target_class_ids)!r}")
        if ignore_class is not None and (isinstance(ignore_class, bool)
                                         or not isinstance(ignore_class, int)):
            raise ValueError(f"{label}: ignore_class must be an int or None, got "
                             f"{ignore_class!r}")
        self.num_classes, self.target_class_ids = num_classes, ids
        self.ignore_class, self.axis = ignore_class, int(axis)
        self.sparse_y_true, self.sparse_y_pred = bool(sparse_y_true), bool(sparse_y_pred)
        # Keras counts in int32 unless told otherwise: its weights are then cut to integers
        super().__init__(name=name, dtype=dtype or "int32")

    def reset_state(self):
        self.total_cm = np.zeros((self.num_classes, self.num_classes), np.float64)

    def _class_ids(self, y_true, y_pred):
        t, p = _host(y_true), _host(y_pred)
        if not self.sparse_y_true:
            t = np.argmax(t, axis=self.axis)
        if not self.sparse_y_pred:
            p = np.argmax(p, axis=self.axis)
        return t, p

    def update_state(self, y_true, y_pred, sample_weight=None):
        t, p = self._class_ids(y_true, y_pred)
        t, p = t.reshape(-1), p.reshape(-1)
        if t.size != p.size:
            raise ValueError(f"{self.name}: y_true has {t.size} labels, y_pred {p.size}")
        w = np.ones(t.shape) if sample_weight is None else np.broadcast_to(
            _host(sample_weight).astype(np.float64).reshape(-1), t.shape)
        if np.dtype(self.dtype).kind in "iu":
            w = np.trunc(w)
        keep = (t >= 0) & (t < self.num_classes) & (p >= 0) & (p < self.num_classes)
        if self.ignore_class is not None:
            keep &= t != self.ignore_class
        k = self.num_classes
        cells = np.where(keep, t, 0).astype(np.int64) * k + np.where(keep, p, 0).astype(np.int64)
        self.total_cm = self.total_cm + np.bincount(cells, np.where(keep, w, 0.0),
                                                    k * k).reshape(k, k)

    def result(self):
        cm = self.total_cm.astype(np.float64)
        tp = np.diag(cm)
        denominator = (cm.sum(axis=0) + cm.sum(axis=1) - tp)[self.target_class_ids]
        tp = tp[self.target_class_ids]
        valid = denominator > 1e-9
        iou = np.where(valid, tp / (denominator + 1e-7), 0.0)
        return float(np.sum(iou) / (np.sum(valid) + 1e-7))

    def get_config(self):
        return {"name": self.name, "num_classes": self.num_classes,
                "target_class_ids": list(self.target_class_ids),
                "ignore_class": self.ignore_class, "sparse_y_true": self.sparse_y_true,
                "sparse_y_pred": self.sparse_y_pred, "axis": self.axis}


class MeanIoU(IoU):
    """Keras 3's ``MeanIoU(num_classes)``: IoU over every class. Plain class-id updates
    (no weights, no ignore_class) are one ``confusion_matrix`` op on the backend."""

    default_name = "mean_io_u"

    def __init__(self, num_classes, name=None, dtype=None, ignore_class=None,
                 sparse_y_true=True, sparse_y_pred=True, axis=-1):
        super().__init__(num_classes, range(num_classes) if isinstance(num_classes, int)
                         and not isinstance(num_classes, bool) and num_classes > 0 else [0],
                         name=name, dtype=dtype, ignore_class=ignore_class,
                         sparse_y_true=sparse_y_true, sparse_y_pred=sparse_y_pred, axis=axis)

    def update_state(self, y_true, y_pred, sample_weight=None):
        if (sample_weight is not None or self.ignore_class is not None
                or not self.sparse_y_true or not self.sparse_y_pred):
            return super().update_state(y_true, y_pred, sample_weight)
        b = backend.current()
        y_true, y_pred = b.asarray(y_true, np.int32), b.asarray(y_pred, np.int32)
        self.total_cm = self.total_cm + b.confusion_matrix(y_true, y_pred, self.num_classes)

    def get_config(self):
        config = super().get_config()
        del config["target_class_ids"]
        return config


class BinaryIoU(IoU):
    """Keras 3's ``BinaryIoU(target_class_ids=(0, 1), threshold=0.5)``: predictions become
    class 1 from ``threshold`` on, then IoU over two classes."""

    default_name = "binary_io_u"

    def __init__(self, target_class_ids=(0, 1), threshold=0.5, name=None, dtype=None):
        self.threshold = float(threshold)
        super().__init__(2, target_class_ids, name=name, dtype=dtype)

    def _class_ids(self, y_true, y_pred):
        return _host(y_true), (_host(y_pred).astype(np.float32) >= self.threshold)

    def get_config(self):
        return {"name": self.name, "target_class_ids": list(self.target_class_ids),
                "threshold": self.threshold}


class OneHotIoU(IoU):
    """Keras 3's ``OneHotIoU``: IoU with one-hot targets (their argmax over ``axis``)."""

    default_name = "one_hot_io_u"

    def __init__(self, num_classes, target_class_ids, name=None, dtype=None,
                 ignore_class=None, sparse_y_pred=False, axis=-1):
        super().__init__(num_classes, target_class_ids, name=name, dtype=dtype,
                         ignore_class=ignore_class, sparse_y_true=False,
                         sparse_y_pred=sparse_y_pred, axis=axis)

    def get_config(self):
        config = super().get_config()
        del config["sparse_y_true"]
        return config


class OneHotMeanIoU(MeanIoU):
    """Keras 3's ``OneHotMeanIoU``: MeanIoU with one-hot targets."""

    default_name = "one_hot_mean_io_u"

    def __init__(self, num_classes, name=None, dtype=None, ignore_class=None,
                 sparse_y_pred=False, axis=-1):
        super().__init__(num_classes, name=name, dtype=dtype, ignore_class=ignore_class,
                         sparse_y_true=False, sparse_y_pred=sparse_y_pred, axis=axis)

    def get_config(self):
        config = super().get_config()
        del config["sparse_y_true"]
        return config


def _divide_no_nan(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b == 0, 0.0, a / np.where(b == 0, 1.0, b))


class _MeanOfLoss(Metric):
    """The running mean of a loss over every sample seen (Keras's MeanMetricWrapper): each
    batch reuses the loss op forward only (``loss_forward_backward`` with need_grad False),
    whose batch mean times the number of per-sample values is the batch's sum."""

    loss_name = None

    def reset_state(self):
        self.total = 0.0
        self.count = 0

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            t, p, w = _weighted_inputs(self, y_true, y_pred, sample_weight)
            err = p - t.reshape(p.shape)
            per_sample = np.mean(err * err if self.loss_name == "mean_squared_error"
                                 else np.abs(err), axis=-1)
            self.total += float(np.sum(w * per_sample))
            self.count += float(np.sum(w))
            return
        y_true, y_pred = _backend_arrays(y_true, y_pred)
        k = y_pred.shape[-1] if len(y_pred.shape) else 1
        n = _size(y_pred) // k if k else 0
        mean, _ = backend.current().loss_forward_backward(self.loss_name, y_true, y_pred,
                                                          False, None, False)
        self.total += mean * n
        self.count += n

    def result(self):
        return self.total / self.count if self.count else 0.0


class MeanSquaredError(_MeanOfLoss):
    default_name = loss_name = "mean_squared_error"


class MeanAbsoluteError(_MeanOfLoss):
    default_name = loss_name = "mean_absolute_error"


class RootMeanSquaredError(_MeanOfLoss):
    """sqrt of the mean of every squared error seen (Keras averages the elements, which for
    equal-length rows is the mean of the per-sample MSEs the loss op returns)."""

    default_name = "root_mean_squared_error"
    loss_name = "mean_squared_error"

    def result(self):
        return float(np.sqrt(super().result()))


def _backend_arrays(y_true, y_pred, sparse=False):
    """Targets and predictions as the current backend's arrays (host data uploaded once,
    backend arrays passed through): a metric updated by hand takes NumPy input, as in Keras.
    Sparse labels become int32, range-checked before narrowing."""
    b = backend.current()
    y_pred = b.asarray(y_pred, np.float64 if getattr(y_pred, "dtype", None) == np.float64
                       else np.float32)
    return b.asarray(y_true, np.int32 if sparse else y_pred.dtype), y_pred


# -- sample_weight: Keras's weighted updates, computed on the host --------------------------
# The count ops count; a weighted count needs each sample's own outcome, so a weighted update
# reads the batch back and counts in NumPy (float64). Unweighted updates, what fit runs for
# compile(metrics=...) (Keras weights only weighted_metrics), stay on the device.

def _host(a):
    b = backend.current()
    return np.asarray(b.to_numpy(a) if hasattr(a, "get") else a)


def _weighted_inputs(metric, y_true, y_pred, sample_weight):
    """(y_true, y_pred as float64, weights of y_pred.shape[:-1] as float64): a weight per
    sample broadcasts over the other leading axes (Keras's rule for (N,) weights)."""
    t = _host(y_true).astype(np.float64)
    p = _host(y_pred).astype(np.float64)
    if p.ndim == 1:
        p = p[:, None]
    w = _host(sample_weight).astype(np.float64)
    lead = p.shape[:-1]
    if w.ndim > len(lead) or w.shape != lead[:w.ndim]:
        if w.shape == p.shape and p.shape[-1] == 1:
            w = w[..., 0]
        else:
            raise ValueError(f"{metric.name}: sample_weight of shape {w.shape} does not fit "
                             f"predictions of shape {p.shape}: expected {lead[:1]} or {lead}")
    w = np.broadcast_to(w.reshape(w.shape + (1,) * (len(lead) - w.ndim)), lead)
    if not np.all(np.isfinite(w)):
        raise ValueError(f"{metric.name}: sample_weight must be finite")
    return t, p, w


def _target_ids(t, p, sparse):
    if sparse:
        return t.reshape(p.shape[:-1]).astype(np.int64)
    return np.argmax(t.reshape(p.shape), axis=-1)


def _in_dtype(p, threshold):
    """Keras compares with the threshold in the prediction's dtype (float32 in fit)."""
    return float(np.float32(threshold))


def _unweighted_only(metric, sample_weight):
    if sample_weight is not None:
        raise NotImplementedError(f"{metric.name}: sample_weight is not supported by "
                                  f"{type(metric).__name__}")


# -- Keras's other loss-shaped metrics: the running (weighted) mean of a loss op's values ----

class _LossMetric(Metric):
    """The running mean of a loss's per-sample values (Keras's MeanMetricWrapper over the
    loss function): each batch is one ``loss_forward_backward`` call, forward only, the
    sample weights handed to the op (its mean divides the weighted sum by the number of
    values, so that times the number is the batch's weighted sum; the count adds the
    weights). ``sign`` -1 turns a loss that is a negated score back (cosine similarity)."""

    loss_name = None
    sign = 1.0
    sparse = False

    def __init__(self, name=None, dtype=None, from_logits=False, label_smoothing=0.0,
                 axis=-1):
        label = f"{type(self).__name__} metric"
        if axis not in (-1, None):
            raise ValueError(f"{label}: only axis=-1 is supported, got {axis!r}")
        try:
            smoothing = float(label_smoothing)
        except (TypeError, ValueError):
            smoothing = -1.0
        if not 0.0 <= smoothing <= 1.0:
            raise ValueError(f"{label}: label_smoothing must be in [0, 1], got "
                             f"{label_smoothing!r}")
        self.from_logits, self.label_smoothing = bool(from_logits), smoothing
        super().__init__(name=name, dtype=dtype)

    def reset_state(self):
        self.total = 0.0
        self.count = 0.0

    def update_state(self, y_true, y_pred, sample_weight=None):
        b = backend.current()
        y_true, y_pred = _backend_arrays(y_true, y_pred, sparse=self.sparse)
        per_sample = y_pred.shape[:-1] if len(y_pred.shape) > 1 else y_pred.shape
        n = _size(y_pred) // (y_pred.shape[-1] if len(y_pred.shape) > 1 else 1) \
            if _size(y_pred) else 0
        weights = None
        if sample_weight is not None:
            w = _host(sample_weight).astype(np.float64)
            if w.ndim > len(per_sample) and w.shape[-1] == 1:
                w = w[..., 0]
            try:
                full = np.broadcast_to(w.reshape(w.shape + (1,) * (len(per_sample) - w.ndim)),
                                       per_sample)
            except ValueError:
                raise ValueError(f"{self.name}: sample_weight of shape {w.shape} does not fit "
                                 f"predictions of shape {tuple(y_pred.shape)}") from None
            if not np.all(np.isfinite(full)):
                raise ValueError(f"{self.name}: sample_weight must be finite")
            weights = b.asarray(np.ascontiguousarray(full), y_pred.dtype)
        param = self.label_smoothing if self.label_smoothing else None
        mean, _ = b.loss_forward_backward(self.loss_name, y_true, y_pred, self.from_logits,
                                          param, False, weights)
        self.total += self.sign * mean * n
        self.count += float(np.sum(full)) if weights is not None else n

    def result(self):
        return self.total / self.count if self.count else 0.0

    def get_config(self):
        config = {"name": self.name}
        if self.loss_name in ("binary_crossentropy", "categorical_crossentropy"):
            config.update(from_logits=self.from_logits, label_smoothing=self.label_smoothing)
        elif self.loss_name == "sparse_categorical_crossentropy":
            config["from_logits"] = self.from_logits
        return config


def _loss_metric(class_name, loss_name, default_name=None, **attrs):
    return type(class_name, (_LossMetric,), dict(
        loss_name=loss_name, default_name=default_name or loss_name,
        __doc__=f"Keras's ``{class_name}`` metric: the running mean of ``{loss_name}``.",
        __module__=__name__, **attrs))


MeanSquaredLogarithmicError = _loss_metric("MeanSquaredLogarithmicError",
                                           "mean_squared_logarithmic_error")
MeanAbsolutePercentageError = _loss_metric("MeanAbsolutePercentageError",
                                           "mean_absolute_percentage_error")
Poisson = _loss_metric("Poisson", "poisson")
KLDivergence = _loss_metric("KLDivergence", "kl_divergence")
LogCoshError = _loss_metric("LogCoshError", "log_cosh", "logcosh")
CosineSimilarity = _loss_metric("CosineSimilarity", "cosine_similarity", sign=-1.0)
Hinge = _loss_metric("Hinge", "hinge")
SquaredHinge = _loss_metric("SquaredHinge", "squared_hinge")
CategoricalHinge = _loss_metric("CategoricalHinge", "categorical_hinge")
BinaryCrossentropy = _loss_metric("BinaryCrossentropy", "binary_crossentropy")
CategoricalCrossentropy = _loss_metric("CategoricalCrossentropy", "categorical_crossentropy")
SparseCategoricalCrossentropy = _loss_metric("SparseCategoricalCrossentropy",
                                             "sparse_categorical_crossentropy", sparse=True)


class Accuracy(Metric):
    """Keras's ``Accuracy``: how often predictions equal the targets exactly (the weighted
    share of equal elements)."""

    default_name = "accuracy"

    def reset_state(self):
        self.total = 0.0
        self.count = 0.0

    def update_state(self, y_true, y_pred, sample_weight=None):
        p = _host(y_pred)
        t = _host(y_true).reshape(p.shape) if _host(y_true).size == p.size else _host(y_true)
        equal = (t == p).astype(np.float64)
        if sample_weight is None:
            self.total += float(equal.sum())
            self.count += float(equal.size)
            return
        values, weights = samplewise_weighted(equal, _host(sample_weight).astype(np.float64))
        self.total += float(values.sum())
        self.count += float(weights.sum())

    def result(self):
        return self.total / self.count if self.count else 0.0


class _Count(_Confusion):
    """Keras's TruePositives / FalsePositives / TrueNegatives / FalseNegatives at one
    threshold: the (weighted) number of such elements seen."""

    def reset_state(self):
        self.tp = self.fp = self.fn = 0
        self.elements = 0.0

    def update_state(self, y_true, y_pred, sample_weight=None):
        super().update_state(y_true, y_pred, sample_weight)
        if sample_weight is None:
            self.elements += float(_size(_host(y_pred)))
        else:
            _, p, w = _weighted_inputs(self, y_true, y_pred, sample_weight)
            self.elements += float(np.sum(w)) * p.shape[-1]


class TruePositives(_Count):
    default_name = "true_positives"

    def result(self):
        return float(self.tp)


class FalsePositives(_Count):
    default_name = "false_positives"

    def result(self):
        return float(self.fp)


class FalseNegatives(_Count):
    default_name = "false_negatives"

    def result(self):
        return float(self.fn)


class TrueNegatives(_Count):
    default_name = "true_negatives"

    def result(self):
        return float(self.elements - self.tp - self.fp - self.fn)


# -- R2Score, the correlations, Mean and Sum: small states summed on the host ---------------
# Their per-batch values are reductions NumPy makes in float64 from the batch read back (the
# weighted metrics above do the same); the running state is a few floats per output.

class R2Score(Metric):
    """Keras's ``R2Score(class_aggregation="uniform_average", num_regressors=0)`` over
    (batch, outputs) targets: per output 1 - SS_res / SS_tot from running weighted sums;
    an infinite score (a constant target) reads 0; averaged uniformly, by variance, or
    returned per output (None); adjusted by the number of regressors when given."""

    default_name = "r2_score"

    def __init__(self, class_aggregation="uniform_average", num_regressors=0, name=None,
                 dtype=None):
        if class_aggregation not in (None, "uniform_average", "variance_weighted_average"):
            raise ValueError(f"R2Score: class_aggregation must be None, 'uniform_average' or "
                             f"'variance_weighted_average', got {class_aggregation!r}")
        if isinstance(num_regressors, bool) or not isinstance(num_regressors, int) \
                or num_regressors < 0:
            raise ValueError(f"R2Score: num_regressors must be an int >= 0, got "
                             f"{num_regressors!r}")
        self.class_aggregation, self.num_regressors = class_aggregation, num_regressors
        super().__init__(name=name, dtype=dtype)

    def reset_state(self):
        self.sums = None
        self.samples = 0

    def update_state(self, y_true, y_pred, sample_weight=None):
        p = _host(y_pred).astype(np.float64)
        t = _host(y_true).astype(np.float64)
        if t.ndim == p.ndim + 1 and t.shape[-1] == 1:
            t = t[..., 0]
        elif p.ndim == t.ndim + 1 and p.shape[-1] == 1:
            p = p[..., 0]
        if p.ndim != 2 or t.shape != p.shape:
            raise ValueError(f"R2Score expects 2D inputs (batch_size, output_dim) of one shape, "
                             f"got y_true {t.shape} and y_pred {p.shape}")
        w = np.ones(()) if sample_weight is None else _host(sample_weight).astype(np.float64)
        if w.ndim == 1:
            w = w[:, None]
        try:
            w = np.broadcast_to(w, t.shape)
        except ValueError:
            raise ValueError(f"R2Score: sample_weight of shape {w.shape} does not fit targets "
                             f"of shape {t.shape}") from None
        batch = np.stack([(t * w).sum(0), (t * t * w).sum(0), ((t - p) ** 2 * w).sum(0),
                          w.sum(0)])
        if self.sums is not None and self.sums.shape != batch.shape:
            raise ValueError(f"R2Score: {t.shape[-1]} outputs, the earlier batches had "
                             f"{self.sums.shape[-1]}")
        self.sums = batch if self.sums is None else self.sums + batch
        self.samples += t.size

    def result(self):
        if self.sums is None:
            return 0.0
        total_sum, squared_sum, residual, count = self.sums
        with np.errstate(divide="ignore", invalid="ignore"):
            total = squared_sum - total_sum * (total_sum / count)
            raw = 1 - residual / total
        raw = np.where(np.isinf(raw), 0.0, raw)
        if self.class_aggregation == "uniform_average":
            score = float(np.mean(raw))
        elif self.class_aggregation == "variance_weighted_average":
            score = float(np.sum(total * raw) / np.sum(total))
        else:
            return raw
        n, k = self.samples, self.num_regressors
        if k and k < n - 1:
            score = 1 - (1 - score) * (n - 1) / (n - k - 1)
        return score

    def get_config(self):
        return {"name": self.name, "class_aggregation": self.class_aggregation,
                "num_regressors": self.num_regressors}


class _Correlation(Metric):
    """The running (weighted) mean of a per-sample correlation over the last axis
    (Keras's MeanMetricWrapper over pearson_correlation / concordance_correlation)."""

    def __init__(self, name=None, dtype=None, axis=-1):
        if axis not in (-1,):
            raise ValueError(f"{type(self).__name__}: only axis=-1 is supported, got {axis!r}")
        super().__init__(name=name, dtype=dtype)

    def reset_state(self):
        self.total = 0.0
        self.count = 0.0

    def update_state(self, y_true, y_pred, sample_weight=None):
        p = _host(y_pred).astype(np.float64)
        t = _host(y_true).astype(np.float64).reshape(p.shape)
        values = self._per_sample(t, p)
        if sample_weight is None:
            self.total += float(values.sum())
            self.count += float(values.size)
            return
        values, weights = samplewise_weighted(values, _host(sample_weight).astype(np.float64))
        self.total += float(values.sum())
        self.count += float(weights.sum())

    def result(self):
        return self.total / self.count if self.count else 0.0


class PearsonCorrelation(_Correlation):
    default_name = "pearson_correlation"

    @staticmethod
    def _per_sample(t, p):
        t = t - t.mean(-1, keepdims=True)
        p = p - p.mean(-1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.mean((t / t.std(-1, keepdims=True)) * (p / p.std(-1, keepdims=True)),
                           axis=-1)


class ConcordanceCorrelation(_Correlation):
    default_name = "concordance_correlation"

    @staticmethod
    def _per_sample(t, p):
        tm, pm = t.mean(-1, keepdims=True), p.mean(-1, keepdims=True)
        tv, pv = (t - tm).var(-1, keepdims=True), (p - pm).var(-1, keepdims=True)
        covar = (t - pm) * (p - pm)   # Keras's formula: y_true less the predictions' mean
        return np.mean(2 * covar / (tv + pv + (tm - pm) ** 2 + 1e-7), axis=-1)


class Mean(Metric):
    """Keras's ``Mean``: the (weighted) mean of every value given to update_state."""

    default_name = "mean"

    def reset_state(self):
        self.total = 0.0
        self.count = 0.0

    def update_state(self, values, sample_weight=None):
        v = _host(values).astype(np.float64)
        if sample_weight is None:
            self.total += float(v.sum())
            self.count += float(v.size)
            return
        v, w = samplewise_weighted(v.reshape(v.shape or (1,)),
                                   _host(sample_weight).astype(np.float64))
        self.total += float(v.sum())
        self.count += float(w.sum())

    def result(self):
        return self.total / self.count if self.count else 0.0


class Sum(Mean):
    """Keras's ``Sum``: the (weighted) sum of every value given to update_state."""

    default_name = "sum"

    def update_state(self, values, sample_weight=None):
        v = _host(values).astype(np.float64)
        if sample_weight is None:
            self.total += float(v.sum())
            return
        v, _ = samplewise_weighted(v.reshape(v.shape or (1,)),
                                   _host(sample_weight).astype(np.float64), np.sum)
        self.total += float(v.sum())

    def result(self):
        return self.total


def _size(a):
    n = 1
    for d in a.shape:
        n *= d
    return n


ALIASES = {
    "binary_accuracy": BinaryAccuracy,
    "categorical_accuracy": CategoricalAccuracy,
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "top_k_categorical_accuracy": TopKCategoricalAccuracy,
    "sparse_top_k_categorical_accuracy": SparseTopKCategoricalAccuracy,
    "precision": Precision,
    "recall": Recall,
    "f1_score": F1Score,
    # issue 15 (a metric asked for by one of these strings is named by it, as Keras logs it)
    "fbeta_score": FBetaScore,
    "auc": AUC,
    "mean_squared_error": MeanSquaredError, "mse": MeanSquaredError,
    "mean_absolute_error": MeanAbsoluteError, "mae": MeanAbsoluteError,
    "root_mean_squared_error": RootMeanSquaredError,
    "mean_io_u": MeanIoU,
    # Keras's other metrics (their strings as keras.metrics.get takes them)
    "mean_squared_logarithmic_error": MeanSquaredLogarithmicError,
    "msle": MeanSquaredLogarithmicError,
    "mean_absolute_percentage_error": MeanAbsolutePercentageError,
    "mape": MeanAbsolutePercentageError,
    "poisson": Poisson, "kl_divergence": KLDivergence, "log_cosh_error": LogCoshError,
    "cosine_similarity": CosineSimilarity, "hinge": Hinge, "squared_hinge": SquaredHinge,
    "categorical_hinge": CategoricalHinge, "binary_crossentropy": BinaryCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "true_positives": TruePositives, "false_positives": FalsePositives,
    "true_negatives": TrueNegatives, "false_negatives": FalseNegatives,
    "r2_score": R2Score, "pearson_correlation": PearsonCorrelation,
    "concordance_correlation": ConcordanceCorrelation,
}
_NAMED_BY_STRING = {"fbeta_score", "auc", "mean_squared_error", "mse", "mean_absolute_error",
                    "mae", "root_mean_squared_error", "msle", "mape",
                    "mean_squared_logarithmic_error", "mean_absolute_percentage_error",
                    "poisson", "kl_divergence", "log_cosh_error", "cosine_similarity", "hinge",
                    "squared_hinge", "categorical_hinge", "binary_crossentropy",
                    "categorical_crossentropy", "sparse_categorical_crossentropy"}
_BY_CLASS = {cls.__name__: cls for cls in ALIASES.values()}
_BY_CLASS.update({cls.__name__: cls for cls in (Accuracy, R2Score, PearsonCorrelation,
                                                 ConcordanceCorrelation, Mean, Sum, IoU,
                                                 BinaryIoU, OneHotIoU, OneHotMeanIoU,
                                                 SensitivityAtSpecificity,
                                                 SpecificityAtSensitivity, PrecisionAtRecall,
                                                 RecallAtPrecision)})


def _snake(name):
    from pynn.layers.base import _snake as snake
    return snake(name)


class MeanMetricWrapper(Metric):
    """A function ``(y_true, y_pred) -> per-sample values`` (written with pynn.ops) as a
    metric: the running mean of its values over every sample seen."""

    def __init__(self, fn, name=None, dtype=None):
        self.fn = fn
        super().__init__(name=name or getattr(fn, "__name__", "metric"))

    def reset_state(self):
        self.total = 0.0
        self.count = 0

    def update_state(self, y_true, y_pred, sample_weight=None):
        values = _host_value(self.fn(y_true, y_pred))
        if sample_weight is None:
            self.total += float(values.sum())
            self.count += int(values.size)
            return
        values, weights = samplewise_weighted(values, _host_value(sample_weight))
        self.total += float(values.sum())
        self.count += float(weights.sum())

    def result(self):
        return self.total / self.count if self.count else 0.0

    def get_config(self):
        return {"name": self.name, "fn": _registry.serializable_name(self.fn, "metric function")}

    @classmethod
    def from_config(cls, config):
        return cls(_registry.lookup_serializable(config["fn"], "metric function"),
                   name=config.get("name"))


def samplewise_weighted(values, weights, reduce=np.mean):
    """Keras 3's weighted mean of a metric function's values (reduce_to_samplewise_values):
    ranks matched by squeezing a trailing 1, values averaged down to the weights' rank, then
    (values * weights, weights) per sample. Their sums are the running total and count.
    ``reduce`` folds the extra axes (Keras's reduce_fn: the mean, or the sum for Sum)."""
    if weights.ndim == values.ndim + 1 and weights.shape[-1] == 1:
        weights = weights[..., 0]
    elif values.ndim == weights.ndim + 1 and values.shape[-1] == 1:
        values = values[..., 0]
    values_ndim, weight_ndim = values.ndim, weights.ndim
    if values_ndim > weight_ndim:
        values = reduce(values, axis=tuple(range(weight_ndim, values_ndim)))
    try:
        weights = np.broadcast_to(weights, values.shape)
    except ValueError:
        raise ValueError(f"sample_weight of shape {weights.shape} does not fit metric values "
                         f"of shape {values.shape}") from None
    values = values * weights
    if values_ndim > 1 and weight_ndim > 1:
        weights = reduce(weights, axis=tuple(range(1, weight_ndim)))
    if values.ndim > 1:
        values = reduce(values, axis=tuple(range(1, values.ndim)))
    return values, weights


def get(identifier, loss=None, output_shape=None):
    """Resolve a metric; "accuracy"/"acc" picks binary, categorical or sparse accuracy from the
    loss and the output shape, as Keras does. A function ``(y_true, y_pred) -> per-sample
    values`` becomes a MeanMetricWrapper; a Metric subclass is instantiated."""
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Metric):
        return identifier()
    if callable(identifier) and not isinstance(identifier, (str, dict, type)):
        builtin = _builtin_function_metric(identifier)  # api: Keras's metric functions
        return builtin if builtin is not None else MeanMetricWrapper(identifier)
    if isinstance(identifier, str):
        key = identifier.lower()
        if key in ("accuracy", "acc"):
            loss_name = getattr(loss, "backend_name", None)
            if loss_name in ("sparse_categorical_crossentropy",
                             # Keras 3's generalized CE: integer labels too (loss family)
                             "categorical_generalized_cross_entropy"):
                cls = SparseCategoricalAccuracy
            elif loss_name == "binary_crossentropy" or (
                output_shape is not None and output_shape[-1] == 1
            ):
                cls = BinaryAccuracy
            else:
                cls = CategoricalAccuracy
            return cls(name=identifier)
        if key in _NAMED_BY_STRING:
            return ALIASES[key](name=identifier)
        if key in ALIASES:
            return ALIASES[key]()
        if identifier in _BY_CLASS:
            return _BY_CLASS[identifier]()
    metric = _registry.from_saved_config(identifier, _BY_CLASS, MeanMetricWrapper, Metric,
                                         "metric class")
    if metric is not None:
        return metric
    raise ValueError(f"Unknown metric {identifier!r}; expected 'accuracy' or one of "
                     f"{sorted(ALIASES)}")


def serialize(metric):
    return _registry.to_saved_config(metric, _BY_CLASS, MeanMetricWrapper, "metric class")


# -- api: Keras 3's metric functions (per-sample values, pynn.metric_functions) -------------
from pynn.metric_functions import *  # noqa: E402,F403
from pynn import metric_functions as _metric_functions  # noqa: E402


def _builtin_function_metric(fn):
    """A metric function of this module handed to compile: its metric class with Keras's
    defaults where one has the function's name (so the model saves it by name), else None."""
    name = getattr(fn, "__name__", None)
    if getattr(_metric_functions, name or "", None) is not fn:
        return None
    cls = ALIASES.get(name) or _BY_CLASS.get("".join(w.title() for w in name.split("_")))
    return cls(name=name) if cls is not None else None


def deserialize(config, custom_objects=None):
    """Keras's metrics.deserialize: a saved ``{"class_name", "config"}`` or a name."""
    with _registry.custom_object_scope(custom_objects or {}):
        return get(config)
