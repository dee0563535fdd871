"""Streaming metrics with Keras 3's names. Each batch costs one backend count op; the state is a
few Python integers, so nothing but scalars leaves the device."""

import numpy as np

from pynn import backend


class Metric:
    def __init__(self, name=None):
        self.name = name or self.default_name
        self.reset_state()

    def reset_state(self):
        self.correct = 0
        self.total = 0

    def result(self):
        return self.correct / self.total if self.total else 0.0

    def get_config(self):
        return {"name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class BinaryAccuracy(Metric):
    default_name = "binary_accuracy"

    def __init__(self, name=None, threshold=0.5):
        self.threshold = float(threshold)
        super().__init__(name)

    def update_state(self, y_true, y_pred):
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

    def update_state(self, y_true, y_pred):
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

    def update_state(self, y_true, y_pred):
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

    def update_state(self, y_true, y_pred):
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


class F1Score(_Confusion):
    """Micro-averaged F1 over thresholded predictions (binary or multi-label)."""

    default_name = "f1_score"

    def __init__(self, threshold=None, name=None):
        super().__init__(threshold, name)

    def result(self):
        denom = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denom if denom else 0.0

    def get_config(self):
        return {"name": self.name, "threshold": self.thresholds}


def _backend_arrays(y_true, y_pred, sparse=False):
    """Targets and predictions as the current backend's arrays (host data uploaded once,
    backend arrays passed through): a metric updated by hand takes NumPy input, as in Keras.
    Sparse labels become int32, range-checked before narrowing."""
    b = backend.current()
    y_pred = b.asarray(y_pred, np.float64 if getattr(y_pred, "dtype", None) == np.float64
                       else np.float32)
    return b.asarray(y_true, np.int32 if sparse else y_pred.dtype), y_pred


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
}
_BY_CLASS = {cls.__name__: cls for cls in ALIASES.values()}


def get(identifier, loss=None, output_shape=None):
    """Resolve a metric; "accuracy"/"acc" picks binary, categorical or sparse accuracy from the
    loss and the output shape, as Keras does."""
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower()
        if key in ("accuracy", "acc"):
            loss_name = getattr(loss, "backend_name", None)
            if loss_name == "sparse_categorical_crossentropy":
                cls = SparseCategoricalAccuracy
            elif loss_name == "binary_crossentropy" or (
                output_shape is not None and output_shape[-1] == 1
            ):
                cls = BinaryAccuracy
            else:
                cls = CategoricalAccuracy
            return cls(name=identifier)
        if key in ALIASES:
            return ALIASES[key]()
        if identifier in _BY_CLASS:
            return _BY_CLASS[identifier]()
    if isinstance(identifier, dict) and identifier.get("class_name") in _BY_CLASS:
        return _BY_CLASS[identifier["class_name"]].from_config(identifier.get("config", {}))
    raise ValueError(f"Unknown metric {identifier!r}; expected 'accuracy' or one of "
                     f"{sorted(ALIASES)}")


def serialize(metric):
    return {"class_name": type(metric).__name__, "config": metric.get_config()}
