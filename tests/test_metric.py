"""accuracy_count / top_k_count / confusion_counts (native/metric.pyx, opencl/metric.cl) against
the oracles of tests/reference/metric_ref.py and Keras 3's own metric functions.

The checks that hold on both backends take the ``backend`` fixture (tests/conftest.py) and
run one body on each; OpenCL-only checks are marked ``opencl``.
"""

import json
import os

import numpy as np
import pytest

from pynn import metrics
from pynn._native.info import set_num_threads
from pynn._native.metric import accuracy_count, confusion_counts, top_k_count
from tests.backend_util import check_op, rand
from tests.reference.metric_ref import (
    accuracy_count_ref,
    confusion_counts_ref,
    confusion_matrix_ref,
    fbeta_counts_ref,
    threshold_counts_ref,
    top_k_count_ref,
)

SHAPES_2D = [(1, 1), (7, 3), (13, 5), (33, 10)]


def scores(rng, shape, dtype, ties=True):
    """Scores with many exact ties (small integers) or continuous ones."""
    if ties:
        return rng.integers(0, 3, size=shape).astype(dtype)
    return rng.normal(size=shape).astype(dtype)


# Over both backends (``target``: the CPU in float32 and float64, OpenCL in float32). The CPU
# takes the host data as it is (int64 labels, float64 one-hot rows); OpenCL takes it uploaded
# as its ops want it (int32 labels, float32 targets: the same values). Counts are exact.


@pytest.mark.parametrize("shape", SHAPES_2D)
@pytest.mark.parametrize("ties", [True, False])
def test_argmax_accuracies_match_reference(target, shape, ties):
    rng = np.random.default_rng(shape[0] * 7 + shape[1])
    p = scores(rng, shape, target.dtype, ties)
    labels = rng.integers(0, shape[1], size=shape[0])
    onehot = np.eye(shape[1])[labels]
    check_op(target, "accuracy_count", onehot, p, "categorical", 0.5,
             ref=accuracy_count_ref(onehot, p, "categorical"))
    check_op(target, "accuracy_count", labels, p, "sparse", 0.5,
             ref=accuracy_count_ref(labels, p, "sparse"))
    check_op(target, "accuracy_count", labels[:, None], p, "sparse", 0.5,
             ref=accuracy_count_ref(labels, p, "sparse"))
    # Soft targets: categorical accuracy takes the argmax of y_true too (first on ties).
    soft = scores(rng, shape, target.dtype, ties)
    check_op(target, "accuracy_count", soft, p, "categorical", 0.5,
             ref=accuracy_count_ref(soft, p, "categorical"))


@pytest.mark.parametrize("shape", SHAPES_2D)
@pytest.mark.parametrize("k", [1, 2, 3, 5, 12])
def test_top_k_matches_reference(target, shape, k):
    rng = np.random.default_rng(shape[0] + k)
    for ties in (True, False):
        p = scores(rng, shape, target.dtype, ties)
        labels = rng.integers(0, shape[1], size=shape[0])
        onehot = np.eye(shape[1])[labels]
        check_op(target, "top_k_count", labels, p, k, True, ref=top_k_count_ref)
        check_op(target, "top_k_count", onehot, p, k, False, ref=top_k_count_ref)


@pytest.mark.parametrize("shape", [(1,), (7,), (13, 1), (5, 3), (2, 3, 7)])
@pytest.mark.parametrize("threshold", [0.5, 0.2])
def test_binary_metrics_match_reference(target, shape, threshold):
    dtype = target.dtype.type
    rng = np.random.default_rng(len(shape) * 31 + shape[0])
    p = rng.uniform(size=shape).astype(dtype)
    p.reshape(-1)[:2] = dtype(threshold)  # exactly at the threshold: not positive
    t = rng.integers(0, 2, size=shape)
    if target.is_opencl:
        t = t.astype(np.float32)  # binary targets are float data on OpenCL (labels are int32)
    check_op(target, "accuracy_count", t, p, "binary", threshold, ref=accuracy_count_ref)
    check_op(target, "confusion_counts", t, p, threshold, ref=confusion_counts_ref)
    # Soft targets: only exact 0/1 can match in accuracy; any non-zero label is positive.
    soft = np.where(rng.uniform(size=shape) < 0.3, 0.7, t)
    check_op(target, "accuracy_count", soft, p, "binary", threshold, ref=accuracy_count_ref)
    check_op(target, "confusion_counts", soft, p, threshold, ref=confusion_counts_ref)


def test_hand_computed_examples():
    # Keras's BinaryAccuracy docstring: [[1],[1],[0],[0]] vs [[0.98],[1],[0],[0.6]] -> 0.75.
    assert accuracy_count([[1], [1], [0], [0]], [[0.98], [1], [0], [0.6]], "binary", 0.5) == 3
    # Ties go to the first index: row 0 argmax 0 (label 0 hit), row 1 argmax 1 (label 2 miss).
    p = np.array([[0.4, 0.4, 0.2], [0.1, 0.45, 0.45]])
    assert accuracy_count([0, 2], p, "sparse", 0.5) == 1
    # in_top_k counts ties at the boundary as in: label 2 scores 0.45 = the 1st largest.
    assert top_k_count([2, 2], p, 1, True) == 1
    assert top_k_count([1, 2], p, 1, True) == 2
    assert top_k_count([2, 0], p, 2, True) == 0  # both targets have two larger scores
    # k >= K: every row is in.
    assert top_k_count([2, 0], p, 3, True) == 2 and top_k_count([2, 0], p, 99, True) == 2
    assert confusion_counts([1, 1, 0, 0], [0.9, 0.2, 0.7, 0.1], 0.5) == (1, 1, 1)
    # NaN scores: argmax picks the first NaN (torch/NumPy); a NaN target ties nothing.
    nanp = np.array([[0.1, np.nan, 0.9]])
    assert accuracy_count([1], nanp, "sparse", 0.5) == 1
    assert accuracy_count([[0, 1, 0]], nanp, "categorical", 0.5) == 1


def test_return_types_are_python_ints():
    p = np.eye(3, dtype=np.float32)
    assert type(accuracy_count(np.eye(3), p, "categorical", 0.5)) is int
    assert type(top_k_count([0, 1, 2], p, 1, True)) is int
    assert all(type(v) is int for v in confusion_counts(np.eye(3), p, 0.5))


def test_empty_batch():
    p = np.zeros((0, 4), np.float32)
    assert accuracy_count(np.zeros((0, 4)), p, "categorical", 0.5) == 0
    assert accuracy_count(np.zeros(0, np.int32), p, "sparse", 0.5) == 0
    assert accuracy_count(np.zeros((0, 1)), np.zeros((0, 1)), "binary", 0.5) == 0
    assert top_k_count(np.zeros(0, np.int32), p, 5, True) == 0
    assert confusion_counts(np.zeros(0), np.zeros(0), 0.5) == (0, 0, 0)


def test_thread_invariance():
    rng = np.random.default_rng(3)
    p = rng.integers(0, 4, size=(10007, 9)).astype(np.float32)
    labels = rng.integers(0, 9, size=10007)
    t = rng.integers(0, 2, size=p.shape)
    out = []
    try:
        for n in (1, 2, 3):
            set_num_threads(n)
            out.append((accuracy_count(labels, p, "sparse", 0.5),
                        accuracy_count(np.eye(9)[labels], p, "categorical", 0.5),
                        accuracy_count(t, p / 4, "binary", 0.5),
                        top_k_count(labels, p, 3, True),
                        confusion_counts(t, p / 4, 0.5)))
    finally:
        set_num_threads(os.cpu_count() or 1)
    assert out[0] == out[1] == out[2]
    assert out[0][0] == accuracy_count_ref(labels, p, "sparse")


def test_layouts_give_the_same_result():
    rng = np.random.default_rng(4)
    p = rng.normal(size=(6, 10))
    labels = rng.integers(0, 10, size=6)
    want = top_k_count(labels, p, 3, True)
    strided = np.zeros((6, 20))
    strided[:, ::2] = p
    readonly = p.copy()
    readonly.setflags(write=False)
    for q in (np.asfortranarray(p), strided[:, ::2], readonly):
        assert top_k_count(labels, q, 3, True) == want


def test_bad_inputs():
    p = np.full((3, 4), 0.25, np.float32)
    with pytest.raises(ValueError, match="mode"):
        accuracy_count([0, 1, 2], p, "top5", 0.5)
    with pytest.raises(ValueError, match="'y_true' is required"):
        accuracy_count(None, p, "sparse", 0.5)
    with pytest.raises(ValueError, match="'y_true' is required"):
        accuracy_count(None, p, "binary", 0.5)
    with pytest.raises(ValueError, match="'y_pred' is required"):
        accuracy_count([0, 1, 2], None, "sparse", 0.5)
    with pytest.raises(ValueError, match=r"shape \(N, K\) or \(N, ..., K\)"):
        accuracy_count([0, 1, 2], p.reshape(12), "sparse", 0.5)
    with pytest.raises(ValueError, match=r"must have shape \(3, 2\) or \(3, 2, 1\)"):
        accuracy_count([0, 1, 2], p.reshape(3, 2, 2), "sparse", 0.5)
    with pytest.raises(ValueError, match=r"label 4 out of range.*K=4"):
        accuracy_count([0, 4, 1], p, "sparse", 0.5)
    with pytest.raises(ValueError, match=r"label -2 out of range"):
        top_k_count([0, -2, 1], p, 2, True)
    with pytest.raises(ValueError, match="one-hot 'y_true'"):
        accuracy_count(np.ones((3, 3)), p, "categorical", 0.5)
    with pytest.raises(ValueError, match="shape"):
        accuracy_count(np.ones((3, 3)), p, "binary", 0.5)
    with pytest.raises(ValueError, match="shape"):
        confusion_counts(np.ones(5), p, 0.5)
    for k in (0, -1, 2.5, True, None):
        with pytest.raises(ValueError, match="'k'"):
            top_k_count([0, 1, 2], p, k, True)
    with pytest.raises(ValueError, match="NaN"):
        confusion_counts(p, p, float("nan"))
    with pytest.raises(TypeError, match="threshold"):
        accuracy_count(p, p, "binary", "half")
    with pytest.raises(TypeError, match="numeric"):
        accuracy_count(p, np.array([["a"] * 4] * 3), "binary", 0.5)


# -- golden comparison against Keras 3's metric functions (torch backend) -----------------

@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except Exception as exc:  # keras missing or its backend unavailable
        pytest.skip(f"keras unavailable: {exc}")
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras runs on {keras.backend.backend()}, not torch")
    return keras


def keras_count(keras, fn, *args, **kwargs):
    matches = keras.ops.convert_to_numpy(fn(*args, **kwargs))
    return int(round(float(np.sum(matches))))


def test_matches_keras(keras):
    m = keras.metrics
    rng = np.random.default_rng(8)
    for shape in [(13, 5), (40, 7)]:
        p = rng.integers(0, 3, size=shape).astype(np.float32)  # many ties
        labels = rng.integers(0, shape[1], size=shape[0])
        onehot = np.eye(shape[1], dtype=np.float32)[labels]
        assert accuracy_count(onehot, p, "categorical", 0.5) == keras_count(
            keras, m.categorical_accuracy, onehot, p)
        assert accuracy_count(labels, p, "sparse", 0.5) == keras_count(
            keras, m.sparse_categorical_accuracy, labels[:, None].astype(np.float32), p)
        for k in (1, 2, 3):
            assert top_k_count(onehot, p, k, False) == keras_count(
                keras, m.top_k_categorical_accuracy, onehot, p, k=k)
            assert top_k_count(labels, p, k, True) == keras_count(
                keras, m.sparse_top_k_categorical_accuracy, labels, p, k=k)
        t = rng.integers(0, 2, size=shape).astype(np.float32)
        q = rng.uniform(size=shape).astype(np.float32)
        for thr in (0.5, 0.3):
            assert accuracy_count(t, q, "binary", thr) == keras_count(
                keras, m.binary_accuracy, t, q, threshold=thr)
        precision = m.Precision(thresholds=0.3)
        recall = m.Recall(thresholds=0.3)
        precision.update_state(t, q)
        recall.update_state(t, q)
        tp, fp, fn = confusion_counts(t, q, 0.3)
        np.testing.assert_allclose(float(precision.result()), tp / (tp + fp), rtol=1e-6)
        np.testing.assert_allclose(float(recall.result()), tp / (tp + fn), rtol=1e-6)


# -- over both backends (the `backend` fixture): counts exact against the references --------
# On OpenCL check_op also compares with the CPU op; sparse labels are int32 device arrays.


@pytest.mark.parametrize("shape", [(1, 1), (13, 7), (300, 5)], ids=str)
def test_accuracy_and_top_k_on_backend(backend, shape):
    rng = np.random.default_rng(shape[0])
    n, k = shape
    y_pred = np.round(rand(rng, shape), 1)  # rounding makes ties
    onehot = np.eye(k, dtype=np.float32)[rng.integers(0, k, n)]
    labels = rng.integers(0, k, n).astype(np.int32)
    check_op(backend, "accuracy_count", onehot, y_pred, "categorical", 0.5,
             ref=accuracy_count_ref)
    check_op(backend, "accuracy_count", labels, y_pred, "sparse", 0.5, ref=accuracy_count_ref)
    check_op(backend, "accuracy_count", labels.reshape(n, 1), y_pred, "sparse", 0.5,
             ref=accuracy_count_ref)
    binary = (rng.random(shape) > 0.5).astype(np.float32)
    check_op(backend, "accuracy_count", binary, y_pred, "binary", 0.1, ref=accuracy_count_ref)
    for top in (1, 2, 5, 9):
        check_op(backend, "top_k_count", labels, y_pred, top, True, ref=top_k_count_ref)
        check_op(backend, "top_k_count", onehot, y_pred, top, False, ref=top_k_count_ref)
    check_op(backend, "confusion_counts", binary, y_pred, 0.3, ref=confusion_counts_ref)


def test_metric_ties_and_soft_targets_on_backend(backend):
    y_pred = np.array([[1, 1, 0], [0, 2, 2], [4, 5, 1], [3, 2, 2]], np.float32)
    labels = np.array([1, 2, 0, 1], np.int32)
    check_op(backend, "accuracy_count", labels, y_pred, "sparse", 0.5, ref=accuracy_count_ref)
    check_op(backend, "top_k_count", labels, y_pred, 1, True, ref=top_k_count_ref)
    check_op(backend, "top_k_count", labels, y_pred, 2, True, ref=top_k_count_ref)
    soft = np.array([[0.7], [1.0], [0.0], [1.0]], np.float32)
    check_op(backend, "accuracy_count", soft, y_pred[:, :1], "binary", 0.5,
             ref=accuracy_count_ref)
    check_op(backend, "accuracy_count", soft[:, 0], y_pred[:, :1], "binary", 0.5,
             ref=accuracy_count_ref)
    check_op(backend, "confusion_counts", soft, y_pred[:, :1], 0.5, ref=confusion_counts_ref)


@pytest.mark.opencl
def test_metric_ties_nan_and_soft_targets_follow_the_cpu_opencl(backend_opencl):
    """NaN scores: the OpenCL kernels count as the CPU ones do (the reference's NumPy sort
    orders NaN differently, so the CPU op is the reference here)."""
    y_pred = np.array([[1, 1, 0], [0, 2, 2], [np.nan, 5, 1], [3, np.nan, np.nan]], np.float32)
    labels = np.array([1, 2, 0, 1], np.int32)
    check_op(backend_opencl, "accuracy_count", labels, y_pred, "sparse", 0.5)
    check_op(backend_opencl, "top_k_count", labels, y_pred, 1, True)
    check_op(backend_opencl, "top_k_count", labels, y_pred, 2, True)
    soft = np.array([[0.7], [1.0], [0.0], [1.0]], np.float32)
    check_op(backend_opencl, "accuracy_count", soft, y_pred[:, :1], "binary", 0.5)
    check_op(backend_opencl, "accuracy_count", soft[:, 0], y_pred[:, :1], "binary", 0.5)
    check_op(backend_opencl, "confusion_counts", soft, y_pred[:, :1], 0.5)


def test_metric_empty_batch_on_backend(backend):
    ops = backend.ops
    assert ops.accuracy_count(ops.zeros((0, 4)), ops.zeros((0, 4)), "categorical", 0.5) == 0
    assert ops.confusion_counts(ops.zeros((0,)), ops.zeros((0,)), 0.5) == (0, 0, 0)


@pytest.mark.opencl
def test_metric_bad_inputs_opencl(ocl):
    p = ocl.asarray(np.zeros((3, 4), np.float32))
    labels = ocl.asarray(np.array([0, 1, 4], np.int32), np.int32)
    with pytest.raises(ValueError, match="out of range"):
        ocl.accuracy_count(labels, p, "sparse", 0.5)
    with pytest.raises(ValueError, match="out of range"):
        ocl.top_k_count(labels, p, 2, True)
    with pytest.raises(ValueError, match="mode"):
        ocl.accuracy_count(p, p, "multiclass", 0.5)
    with pytest.raises(ValueError, match="'k'"):
        ocl.top_k_count(p, p, 0, False)
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        ocl.accuracy_count(p, ocl.zeros((12,)), "categorical", 0.5)
    with pytest.raises(ValueError, match="NaN"):
        ocl.confusion_counts(p, p, float("nan"))
    with pytest.raises(ValueError, match="shape"):
        ocl.confusion_counts(ocl.zeros((3, 5)), p, 0.5)


@pytest.mark.opencl
def test_small_work_groups_build_smaller_metric_kernels(small_work_groups):
    rng = np.random.default_rng(31)
    x = rand(rng, (5, 131))
    labels = rng.integers(0, 131, 5).astype(np.int32)
    check_op(small_work_groups, "top_k_count", labels, x, 3, True, ref=top_k_count_ref)


# -- issue 15: fbeta_counts, threshold_counts and the metrics built on them -----------------

FBETA_SHAPES = [(1, 1), (7, 3), (33, 5), (300, 4)]
AUC_THRESHOLDS = [np.array([-1e-7] + [(i + 1) / 199 for i in range(198)] + [1 + 1e-7]),
                  np.array([-1e-7, 0.3, 0.5, 0.9, 1 + 1e-7])]


def _fbeta_data(rng, shape):
    y_true = (rng.uniform(size=shape) < 0.4).astype(np.float32)
    y_pred = rng.uniform(size=shape).astype(np.float32)
    y_pred.reshape(-1)[0] = 0.0  # an all-zero-ish entry: |y_pred| > 1e-9 matters
    return y_true, y_pred


def _check_host_counts(backend, name, want, y_true, y_pred, arg):
    """These ops return small host arrays on every backend (counts, like the int counts of
    the other metric ops): exact against the reference and, on OpenCL, the CPU op."""
    got = getattr(backend.ops, name)(backend.up(y_true), backend.up(y_pred), arg)
    assert isinstance(got, np.ndarray) and got.shape == want.shape
    np.testing.assert_array_equal(got, want, err_msg=f"{name} on {backend.name}")
    if backend.is_opencl:
        from pynn.backend import cpu

        np.testing.assert_array_equal(got, getattr(cpu, name)(y_true, y_pred, arg))


@pytest.mark.parametrize("threshold", [None, 0.5, 0.3])
@pytest.mark.parametrize("shape", FBETA_SHAPES, ids=str)
def test_fbeta_counts_on_backend(backend, shape, threshold):
    rng = np.random.default_rng(shape[0] * 7 + shape[1])
    y_true, y_pred = _fbeta_data(rng, shape)
    _check_host_counts(backend, "fbeta_counts", fbeta_counts_ref(y_true, y_pred, threshold),
                       y_true, y_pred, threshold)


@pytest.mark.parametrize("thresholds", AUC_THRESHOLDS, ids=["200", "5"])
@pytest.mark.parametrize("shape", [(1,), (7, 1), (33, 5), (4099,)], ids=str)
def test_threshold_counts_on_backend(backend, shape, thresholds):
    rng = np.random.default_rng(len(shape) + shape[0])
    y_true = (rng.uniform(size=shape) < 0.5).astype(np.float32)
    y_pred = rng.uniform(size=shape).astype(np.float32)
    _check_host_counts(backend, "threshold_counts",
                       threshold_counts_ref(y_true, y_pred, thresholds), y_true, y_pred,
                       thresholds)


def test_fbeta_and_threshold_counts_bad_inputs():
    from pynn.backend import cpu

    p = np.full((3, 4), 0.25, np.float32)
    with pytest.raises(ValueError, match=r"fbeta_counts: 'y_pred' must have rank 2 \(N, K\), "
                                         r"got shape \(12,\)"):
        cpu.fbeta_counts(p.reshape(-1), p.reshape(-1), None)
    with pytest.raises(ValueError, match=r"fbeta_counts: 'y_true' must have the shape of "
                                         r"'y_pred' \(3, 4\), got \(3, 5\)"):
        cpu.fbeta_counts(np.ones((3, 5)), p, 0.5)
    with pytest.raises(ValueError, match="fbeta_counts: 'threshold' must not be NaN"):
        cpu.fbeta_counts(p, p, float("nan"))
    with pytest.raises(ValueError, match="threshold_counts: 'thresholds' must be finite and "
                                         "strictly increasing"):
        cpu.threshold_counts(p, p, [0.5, 0.2])
    with pytest.raises(ValueError, match="threshold_counts: 'thresholds' must be a 1-D "
                                         "sequence of at least 2"):
        cpu.threshold_counts(p, p, [0.5])
    with pytest.raises(ValueError, match="threshold_counts: 'y_true' is required"):
        cpu.threshold_counts(None, p, [0.1, 0.2])


@pytest.mark.opencl
def test_fbeta_and_threshold_counts_need_device_arrays_opencl(ocl):
    p = ocl.asarray(np.full((3, 4), 0.25, np.float32))
    with pytest.raises(TypeError, match="asarray"):
        ocl.fbeta_counts(np.ones((3, 4), np.float32), p, None)
    with pytest.raises(TypeError, match="asarray"):
        ocl.threshold_counts(np.ones((3, 4), np.float32), p, [0.1, 0.2])


def _batches(rng, kind, n_batches=3):
    """Several update_state batches of (y_true, y_pred) for a metric family."""
    out = []
    for b in range(n_batches):
        rows = 5 + 4 * b
        if kind == "regression":
            out.append((rng.normal(size=(rows, 3)).astype(np.float32),
                        rng.normal(size=(rows, 3)).astype(np.float32)))
        elif kind == "iou":
            out.append((rng.integers(0, 4, size=(rows, 3)).astype(np.int32),
                        rng.integers(0, 4, size=(rows, 3)).astype(np.int32)))
        elif kind == "auc":
            p = rng.uniform(size=(rows, 2)).astype(np.float32)
            out.append(((rng.uniform(size=(rows, 2)) < p).astype(np.float32), p))
        else:
            out.append(_fbeta_data(rng, (rows, 4)))
    return out


def _keras_metrics():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("keras runs on another backend")
    return keras


NEW_METRIC_CASES = [
    ("MeanSquaredError", {}, "regression"),
    ("MeanAbsoluteError", {}, "regression"),
    ("RootMeanSquaredError", {}, "regression"),
    ("AUC", {}, "auc"),
    ("AUC", {"curve": "PR"}, "auc"),
    ("AUC", {"curve": "PR", "summation_method": "minoring"}, "auc"),
    ("AUC", {"summation_method": "majoring", "num_thresholds": 17}, "auc"),
    ("AUC", {"thresholds": [0.2, 0.5, 0.7]}, "auc"),
    ("F1Score", {}, "fbeta"),
    ("F1Score", {"average": "micro"}, "fbeta"),
    ("F1Score", {"average": "macro", "threshold": 0.5}, "fbeta"),
    ("F1Score", {"average": "weighted"}, "fbeta"),
    ("FBetaScore", {"beta": 2.0}, "fbeta"),
    ("FBetaScore", {"beta": 0.5, "average": "weighted", "threshold": 0.3}, "fbeta"),
    ("MeanIoU", {"num_classes": 4}, "iou"),
    ("MeanIoU", {"num_classes": 7}, "iou"),
]


@pytest.mark.parametrize("cls,kwargs,kind", NEW_METRIC_CASES,
                         ids=[f"{c}-{k}" for c, k, _ in NEW_METRIC_CASES])
def test_new_metrics_match_keras(backend, monkeypatch, cls, kwargs, kind):
    import pynn.backend

    keras = _keras_metrics()
    monkeypatch.setattr(pynn.backend, "current", lambda: backend.ops)
    rng = np.random.default_rng(len(kwargs) * 13 + len(cls))
    mine = getattr(metrics, cls)(**kwargs)
    theirs = getattr(keras.metrics, cls)(**kwargs)
    for y_true, y_pred in _batches(rng, kind):
        mine.update_state(backend.up(y_true), backend.up(y_pred))
        theirs.update_state(y_true, y_pred)
        np.testing.assert_allclose(mine.result(), keras.ops.convert_to_numpy(theirs.result()),
                                   rtol=2e-6, atol=1e-7, err_msg=f"{cls} {kwargs}")
    mine.reset_state()
    assert np.all(np.asarray(mine.result()) == 0.0)


@pytest.mark.parametrize("cls,kwargs,kind", NEW_METRIC_CASES,
                         ids=[f"{c}-{k}" for c, k, _ in NEW_METRIC_CASES])
def test_new_metric_configs_round_trip(cls, kwargs, kind):
    metric = getattr(metrics, cls)(**kwargs)
    again = metrics.get(json.loads(json.dumps(metrics.serialize(metric))))
    assert type(again) is type(metric) and again.get_config() == metric.get_config()


@pytest.mark.parametrize("identifier,cls", [
    ("mae", "MeanAbsoluteError"), ("mse", "MeanSquaredError"),
    ("mean_squared_error", "MeanSquaredError"),
    ("root_mean_squared_error", "RootMeanSquaredError"), ("auc", "AUC"),
    ("f1_score", "F1Score"), ("fbeta_score", "FBetaScore"),
])
def test_new_metrics_by_name_log_as_keras(identifier, cls):
    metric = metrics.get(identifier)
    assert type(metric).__name__ == cls
    assert metric.name == identifier


def test_f1_defaults_follow_keras():
    """Keras 3's F1Score: no threshold (each row's top score is its prediction), average
    None (one score per class)."""
    f1 = metrics.F1Score()
    assert f1.threshold is None and f1.average is None
    f1.update_state(np.array([[1, 0, 0], [0, 1, 0]], np.float32),
                    np.array([[0.6, 0.7, 0.1], [0.2, 0.9, 0.3]], np.float32))
    np.testing.assert_allclose(f1.result(), [0.0, 2 / 3, 0.0], atol=1e-6)


@pytest.mark.parametrize("make,match", [
    (lambda: metrics.F1Score(average="sum"), "F1Score: invalid `average`"),
    (lambda: metrics.FBetaScore(beta=0), "FBetaScore: `beta` must be a float > 0"),
    (lambda: metrics.F1Score(threshold=1.5),
     r"F1Score: `threshold` must be None or a float in \(0, 1\]"),
    (lambda: metrics.AUC(curve="XY"), "AUC: invalid `curve`"),
    (lambda: metrics.AUC(summation_method="mean"), "AUC: invalid `summation_method`"),
    (lambda: metrics.AUC(num_thresholds=1), "AUC: `num_thresholds` must be an integer > 1"),
    (lambda: metrics.AUC(label_weights=[1, 2]), "AUC: label_weights is not supported"),
])
def test_new_metric_bad_arguments(make, match):
    with pytest.raises((ValueError, NotImplementedError), match=match):
        make()


@pytest.mark.parametrize("k", [1, 3, 11])
@pytest.mark.parametrize("shape", [(1,), (7, 3), (4099,)], ids=str)
def test_confusion_matrix_on_backend(backend, shape, k):
    rng = np.random.default_rng(k + len(shape))
    y_true = rng.integers(0, k, size=shape).astype(np.int32)
    y_pred = rng.integers(0, k, size=shape).astype(np.int32)
    got = backend.ops.confusion_matrix(backend.ops.asarray(y_true, np.int32),
                                       backend.ops.asarray(y_pred, np.int32), k)
    want = confusion_matrix_ref(y_true, y_pred, k)
    assert isinstance(got, np.ndarray) and got.dtype == np.int64
    np.testing.assert_array_equal(got, want)


def test_confusion_matrix_bad_inputs():
    from pynn.backend import cpu

    labels = np.array([0, 1, 2])
    with pytest.raises(ValueError, match=r"confusion_matrix: label 3 out of range: class ids "
                                         r"must lie in \[0, 3\)"):
        cpu.confusion_matrix(labels, np.array([0, 3, 1]), 3)
    with pytest.raises(ValueError, match="confusion_matrix: 'num_classes' must be an int >= 1"):
        cpu.confusion_matrix(labels, labels, 0)
    with pytest.raises(ValueError, match="must hold as many labels"):
        cpu.confusion_matrix(labels, labels[:2], 3)
    with pytest.raises(ValueError, match="integer class ids, got 0.5"):
        cpu.confusion_matrix(labels, np.array([0.5, 1.0, 2.0]), 3)
    with pytest.raises(ValueError, match="MeanIoU: `num_classes` must be an int >= 1"):
        metrics.MeanIoU(0)


@pytest.mark.opencl
def test_confusion_matrix_bad_labels_opencl(ocl):
    labels = ocl.asarray(np.array([0, 1, 2], np.int32), np.int32)
    with pytest.raises(ValueError, match=r"confusion_matrix: 1 label\(s\) out of range"):
        ocl.confusion_matrix(labels, ocl.asarray(np.array([0, 5, 1], np.int32), np.int32), 3)
