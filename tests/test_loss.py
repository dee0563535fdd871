"""loss_forward_backward (native/loss.pyx, opencl/loss.cl) against the float64 oracles of
tests/reference/loss_ref.py, finite differences, and Keras 3 itself (torch backend, with the
gradient from torch autograd through Keras's own loss).

The checks that hold on both backends take the ``backend`` fixture (tests/conftest.py) and
run one body on each; OpenCL-only checks are marked ``opencl``.
"""

import os
import re

import numpy as np
import pytest

from pynn import losses as pynn_losses
from pynn._native.info import set_num_threads
from pynn._native.loss import loss_forward_backward
from pynn.backend.api import LOSSES
from tests.reference.activation_ref import numerical_derivative
from tests.backend_util import check_op, rand
from tests.reference.loss_ref import loss_backward_ref, loss_forward_backward_ref, loss_forward_ref

POINTWISE = ("mean_squared_error", "mean_absolute_error", "huber", "binary_crossentropy")
# (name, from_logits, param): every loss, with and without logits where that matters.
CASES = [
    ("mean_squared_error", False, None),
    ("mean_absolute_error", False, None),
    ("huber", False, None),
    ("huber", False, 0.5),
    ("binary_crossentropy", False, None),
    ("binary_crossentropy", True, None),
    ("categorical_crossentropy", False, None),
    ("categorical_crossentropy", True, None),
    ("sparse_categorical_crossentropy", False, None),
    ("sparse_categorical_crossentropy", True, None),
    # issue 15: label smoothing and the other keras.losses functions
    ("binary_crossentropy", False, 0.2),
    ("binary_crossentropy", True, 0.1),
    ("categorical_crossentropy", False, 0.1),
    ("categorical_crossentropy", True, 0.3),
    ("kl_divergence", False, None),
    ("hinge", False, None),
    ("squared_hinge", False, None),
    ("categorical_hinge", False, None),
    ("log_cosh", False, None),
    ("poisson", False, None),
    ("mean_squared_logarithmic_error", False, None),
    ("mean_absolute_percentage_error", False, None),
    ("cosine_similarity", False, None),
    ("binary_focal_crossentropy", False, None),
    ("binary_focal_crossentropy", True, None),
    ("binary_focal_crossentropy", False,
     {"apply_class_balancing": True, "alpha": 0.3, "gamma": 1.5, "label_smoothing": 0.1}),
    ("binary_focal_crossentropy", True, {"apply_class_balancing": True, "gamma": 0.0}),
    # Keras 3's CategoricalFocalCrossentropy, Dice and Tversky
    ("categorical_focal_crossentropy", False, None),
    ("categorical_focal_crossentropy", True, None),
    ("categorical_focal_crossentropy", False, {"alpha": 0.6, "gamma": 1.5,
                                               "label_smoothing": 0.1}),
    ("categorical_focal_crossentropy", True, {"alpha": 1.0, "gamma": 0.0,
                                              "label_smoothing": 0.2}),
    ("dice", False, None),
    ("tversky", False, None),
    ("tversky", False, {"alpha": 0.3, "beta": 0.8}),
    # Keras 3's CategoricalGeneralizedCrossEntropy (integer labels)
    ("categorical_generalized_cross_entropy", False, None),
    ("categorical_generalized_cross_entropy", False, {"q": 0.8}),
]


def _case_id(name, from_logits, param):
    if isinstance(param, dict):
        param = "-".join(f"{k}={v}" for k, v in param.items())
    return f"{name}-{'logits' if from_logits else 'probs'}-{param}"


CASE_IDS = [_case_id(*case) for case in CASES]
# Keras's per-sample loss averages the last axis (ops.mean, float32-accurate in float64).
MEAN_OVER_LAST_AXIS = POINTWISE + ("hinge", "squared_hinge", "log_cosh", "poisson",
                                   "mean_squared_logarithmic_error",
                                   "mean_absolute_percentage_error",
                                   "binary_focal_crossentropy")
SHAPES = [(1, 1), (7, 3), (13, 5), (3, 4, 6), (5,)]
TOL = {np.float32: dict(rtol=2e-5, atol=1e-7), np.float64: dict(rtol=1e-12, atol=1e-15)}


def make_data(name, from_logits, shape, rng, param=None):
    """Random never-all-zero inputs away from the kinks (|d| = 0, |d| = delta) and clip
    bounds, so finite differences are valid."""
    k = shape[-1]
    if name in NEW_DATA:
        return NEW_DATA[name](rng, shape, from_logits)
    if name == "sparse_categorical_crossentropy":
        y_true = rng.integers(0, k, size=shape[:-1])
    elif name == "categorical_crossentropy":
        soft = rng.uniform(0.1, 1.0, size=shape)
        y_true = np.where(rng.uniform(size=shape[:-1] + (1,)) < 0.5,
                          np.eye(k)[rng.integers(0, k, size=shape[:-1])],
                          soft / soft.sum(axis=-1, keepdims=True))
    elif name == "binary_crossentropy":
        y_true = np.where(rng.uniform(size=shape) < 0.5, rng.integers(0, 2, size=shape),
                          rng.uniform(size=shape))
    else:
        y_true = rng.normal(size=shape)
    if from_logits:
        y_pred = rng.normal(size=shape) * 3
    elif name in ("binary_crossentropy",):
        y_pred = rng.uniform(0.02, 0.98, size=shape)
    elif name.endswith("categorical_crossentropy"):
        y_pred = rng.uniform(0.05, 1.0, size=shape)  # unnormalized: the kernel renormalizes
    else:
        d = rng.normal(size=shape) * 1.5
        delta = 1.0 if param is None else param
        d = np.where(np.abs(d) < 0.05, d + np.copysign(0.1, d), d)
        d = np.where(np.abs(np.abs(d) - delta) < 0.05, d * 1.2, d)
        y_pred = y_true + d
    return y_true, y_pred


def _away_from(x, kink, gap=0.05):
    """x moved off kink by at least gap, so finite differences do not straddle it."""
    return np.where(np.abs(x - kink) < gap, kink + np.copysign(gap * 2, x - kink), x)


def _soft_rows(rng, shape):
    soft = rng.uniform(0.1, 1.0, size=shape)
    return soft / soft.sum(axis=-1, keepdims=True)


def _binary_data(rng, shape, from_logits):
    y_true = np.where(rng.uniform(size=shape) < 0.5, rng.integers(0, 2, size=shape),
                      rng.uniform(size=shape))
    y_pred = rng.normal(size=shape) * 3 if from_logits else rng.uniform(0.02, 0.98, shape)
    return y_true, y_pred


def _hinge_data(rng, shape, from_logits):
    y_true = rng.integers(0, 2, size=shape).astype(np.float64)
    # Margins 1 - t p are off zero: p off +-1.
    return y_true, _away_from(_away_from(rng.normal(size=shape) * 1.5, 1.0), -1.0)


def _categorical_hinge_data(rng, shape, from_logits):
    y_true = np.eye(shape[-1])[rng.integers(0, shape[-1], size=shape[:-1])]
    return y_true, rng.normal(size=shape) * 0.5


def _positive_data(rng, shape, from_logits):
    return rng.uniform(0.0, 3.0, size=shape), rng.uniform(0.1, 3.0, size=shape)


def _mape_data(rng, shape, from_logits):
    y_true = _away_from(rng.normal(size=shape), 0.0)
    return y_true, y_true + _away_from(rng.normal(size=shape), 0.0)


def _overlap_data(rng, shape, from_logits):
    """Segmentation-like targets (mostly 0/1, some soft) and probabilities."""
    return _binary_data(rng, shape, False)


NEW_DATA = {
    "kl_divergence": lambda rng, shape, fl: (_soft_rows(rng, shape),
                                             rng.uniform(0.05, 0.95, size=shape)),
    "hinge": _hinge_data,
    "squared_hinge": _hinge_data,
    "categorical_hinge": _categorical_hinge_data,
    "log_cosh": lambda rng, shape, fl: (rng.normal(size=shape), rng.normal(size=shape) * 2),
    "poisson": _positive_data,
    "mean_squared_logarithmic_error": _positive_data,
    "mean_absolute_percentage_error": _mape_data,
    "cosine_similarity": lambda rng, shape, fl: (rng.normal(size=shape),
                                                 rng.normal(size=shape)),
    "binary_focal_crossentropy": _binary_data,
    "categorical_focal_crossentropy": lambda rng, shape, fl: (
        np.where(rng.uniform(size=shape[:-1] + (1,)) < 0.5,
                 np.eye(shape[-1])[rng.integers(0, shape[-1], size=shape[:-1])],
                 _soft_rows(rng, shape)),
        rng.normal(size=shape) * 3 if fl else rng.uniform(0.05, 1.0, size=shape)),
    "dice": _overlap_data,
    "tversky": _overlap_data,
    # Keras 3's CategoricalGeneralizedCrossEntropy: class ids, probabilities as given
    "categorical_generalized_cross_entropy": lambda rng, shape, fl: (
        rng.integers(0, shape[-1], size=shape[:-1]).astype(np.int32),
        rng.uniform(0.05, 1.0, size=shape)),
}


def check_loss(target, name, y_true, y_pred, from_logits, param):
    """One helper: value and gradient on ``target`` against the float64 oracle (clipped as
    the target's dtype clips), at the CPU's per-dtype tolerance or OpenCL's reduction one."""
    dtype = target.dtype.type
    yp = np.asarray(y_pred, dtype=dtype)
    integer = name.startswith("sparse") or np.asarray(y_true).dtype.kind == "i"  # class ids
    yt = y_true if integer else np.asarray(y_true, dtype=dtype)
    tol = target.rtol("reduction") if target.is_opencl else TOL[dtype]
    _, (loss, grad) = check_op(
        target, "loss_forward_backward", name, yt, yp, from_logits, param, True,
        ref=(loss_forward_ref(name, yt, yp, from_logits, param, dtype),
             loss_backward_ref(name, yt, yp, from_logits, param, dtype)), rtol=tol)
    return loss, grad


# Over both backends (``target``: the CPU in float32 and float64, OpenCL in float32).
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name,from_logits,param", CASES, ids=CASE_IDS)
def test_matches_reference(target, name, from_logits, param, shape):
    rng = np.random.default_rng(len(shape) * 100 + shape[-1])
    y_true, y_pred = make_data(name, from_logits, shape, rng, param)
    check_loss(target, name, y_true, y_pred, from_logits, param)


@pytest.mark.parametrize("name,from_logits,param", CASES, ids=CASE_IDS)
def test_gradient_finite_differences(name, from_logits, param):
    rng = np.random.default_rng(17)
    y_true, y_pred = make_data(name, from_logits, (3, 4), rng, param)
    _, grad = loss_forward_backward(name, y_true, y_pred, from_logits, param, True)

    def f(p):
        return loss_forward_backward(name, y_true, p, from_logits, param, False)[0]

    np.testing.assert_allclose(grad, numerical_derivative(f, y_pred, 1e-5), rtol=1e-6,
                               atol=1e-9)


def test_clip_gradient_is_zero_outside_the_clip_range():
    # Row 0 holds a zero probability (clipped up to eps); row 1 is one-hot (the 1 is
    # clipped down to 1 - eps); row 2 is ordinary. The renormalization still couples the
    # unclipped entries of each row.
    y_pred = np.array([[0.0, 0.3, 0.5], [1.0, 0.0, 0.0], [0.2, 0.2, 0.4]])
    y_true = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    _, grad = loss_forward_backward("categorical_crossentropy", y_true, y_pred, False, None,
                                    True)
    np.testing.assert_allclose(
        grad, loss_backward_ref("categorical_crossentropy", y_true, y_pred), rtol=1e-12)
    np.testing.assert_array_equal(grad[1], 0.0)

    def f(p):
        return loss_forward_backward("categorical_crossentropy", y_true, p, False, None,
                                     False)[0]

    # eps far below the clip bound, so the stencil stays on one side of it.
    np.testing.assert_allclose(grad, numerical_derivative(f, y_pred, 1e-10), rtol=1e-4,
                               atol=1e-5)
    labels = np.array([1, 0, 2])
    _, g_sparse = loss_forward_backward("sparse_categorical_crossentropy", labels, y_pred,
                                        False, None, True)
    np.testing.assert_allclose(
        g_sparse, loss_backward_ref("sparse_categorical_crossentropy", labels, y_pred),
        rtol=1e-12)
    np.testing.assert_array_equal(g_sparse[1], 0.0)  # label 0 predicted with q = 1 > 1 - eps
    _, g_bce = loss_forward_backward("binary_crossentropy", np.array([0.0, 1.0, 1.0]),
                                     np.array([0.0, 1.0, 0.5]), False, None, True)
    np.testing.assert_array_equal(g_bce[:2], 0.0)
    assert g_bce[2] != 0


def test_clip_bounds_follow_the_dtype():
    """float32 clips to float32(1 - 1e-7) = 1 - 2^-23 + ..., as Keras's float32 tensors do."""
    y_pred = np.array([[1.0, 0.0]])
    y_true = np.array([[1.0, 0.0]])
    loss32, _ = loss_forward_backward("categorical_crossentropy", y_true.astype(np.float32),
                                      y_pred.astype(np.float32), False, None, False)
    loss64, _ = loss_forward_backward("categorical_crossentropy", y_true, y_pred, False, None,
                                      False)
    assert loss32 == pytest.approx(-np.log(float(np.float32(1 - 1e-7))), rel=1e-12)
    assert loss64 == pytest.approx(-np.log(1 - 1e-7), rel=1e-12)


def test_documented_keras_values():
    """Golden values from Keras 3's docstrings (keras/src/losses/losses.py)."""
    cce, _ = loss_forward_backward("categorical_crossentropy", [[0, 1, 0], [0, 0, 1]],
                                   [[0.05, 0.95, 0], [0.1, 0.8, 0.1]], False, None, False)
    assert cce == pytest.approx((0.0513 + 2.303) / 2, abs=1e-3)
    scce, _ = loss_forward_backward("sparse_categorical_crossentropy", [1, 2],
                                    [[0.05, 0.95, 0], [0.1, 0.8, 0.1]], False, None, False)
    assert scce == pytest.approx(cce, rel=1e-6)
    bce, _ = loss_forward_backward("binary_crossentropy", [[0, 1], [0, 0]],
                                   [[0.6, 0.4], [0.4, 0.6]], False, None, False)
    assert bce == pytest.approx((0.916 + 0.714) / 2, abs=1e-3)
    huber, _ = loss_forward_backward("huber", [[0, 1], [0, 0]], [[0.6, 0.4], [0.4, 0.6]],
                                     False, None, False)
    assert huber == pytest.approx(0.155, abs=1e-3)


def test_need_grad_false_gives_the_same_loss():
    rng = np.random.default_rng(2)
    for name, fl, param in CASES:
        y_true, y_pred = make_data(name, fl, (7, 5), rng, param)
        with_grad = loss_forward_backward(name, y_true, y_pred, fl, param, True)
        without = loss_forward_backward(name, y_true, y_pred, fl, param, False)
        assert without[1] is None
        assert without[0] == with_grad[0]


def test_target_rank_may_differ_by_a_trailing_one():
    """Keras's squeeze_or_expand_to_same_rank: y_true (N,) with y_pred (N, 1) and back."""
    rng = np.random.default_rng(3)
    t = rng.integers(0, 2, size=7).astype(np.float64)
    p = rng.uniform(0.1, 0.9, size=(7, 1))
    for name in POINTWISE:
        a, ga = loss_forward_backward(name, t, p, False, None, True)
        b, gb = loss_forward_backward(name, t[:, None], p, False, None, True)
        c, gc = loss_forward_backward(name, t[:, None], p[:, 0], False, None, True)
        assert a == b == pytest.approx(c, rel=1e-15)
        assert ga.shape == (7, 1) and gc.shape == (7,)
        np.testing.assert_array_equal(ga, gb)
    labels = rng.integers(0, 4, size=(7, 1))
    q = rng.uniform(0.1, 1, size=(7, 4))
    a, _ = loss_forward_backward("sparse_categorical_crossentropy", labels, q, False, None, 0)
    b, _ = loss_forward_backward("sparse_categorical_crossentropy", labels[:, 0], q, False,
                                 None, 0)
    assert a == b


@pytest.mark.parametrize("name,from_logits,param", CASES, ids=CASE_IDS)
def test_empty_batch(name, from_logits, param):
    y_pred = np.zeros((0, 5), np.float32)
    integer = name.startswith("sparse") or name == "categorical_generalized_cross_entropy"
    y_true = np.zeros((0,), np.int32) if integer else y_pred
    loss, grad = loss_forward_backward(name, y_true, y_pred, from_logits, param, True)
    assert loss == 0.0 and grad.shape == (0, 5) and grad.dtype == np.float32
    assert loss_forward_backward(name, y_true, y_pred, from_logits, param, False) == (0.0, None)


@pytest.mark.parametrize("name,from_logits,param", CASES, ids=CASE_IDS)
def test_thread_invariance(name, from_logits, param):
    rng = np.random.default_rng(4)
    # 20011 * 3 elements span many summation blocks of the pointwise losses.
    y_true, y_pred = make_data(name, from_logits, (20011, 3), rng, param)
    y_pred = y_pred.astype(np.float32)
    out = []
    try:
        for n in (1, 2, 3):
            set_num_threads(n)
            out.append(loss_forward_backward(name, y_true, y_pred, from_logits, param, True))
    finally:
        set_num_threads(os.cpu_count() or 1)
    for loss, grad in out[1:]:
        assert loss == out[0][0]
        np.testing.assert_array_equal(grad, out[0][1])


def test_layouts_give_the_same_result():
    rng = np.random.default_rng(5)
    y_true, y_pred = make_data("categorical_crossentropy", False, (6, 10), rng)
    want = loss_forward_backward("categorical_crossentropy", y_true, y_pred, False, None, True)
    strided = np.zeros((6, 20))
    strided[:, ::2] = y_pred
    readonly = y_pred.copy()
    readonly.setflags(write=False)
    for p in (np.asfortranarray(y_pred), strided[:, ::2], readonly):
        got = loss_forward_backward("categorical_crossentropy", np.asfortranarray(y_true), p,
                                    False, None, True)
        assert got[0] == want[0]
        np.testing.assert_array_equal(got[1], want[1])


def test_integer_y_true_is_cast_to_the_prediction_dtype():
    y_pred = np.array([[0.2, 0.8], [0.6, 0.4]], np.float32)
    a = loss_forward_backward("binary_crossentropy", np.array([[0, 1], [1, 0]]), y_pred,
                              False, None, True)
    b = loss_forward_backward("binary_crossentropy", np.array([[0, 1], [1, 0]], np.float32),
                              y_pred, False, None, True)
    assert a[0] == b[0] and a[1].dtype == np.float32


def test_bad_inputs():
    p = np.full((3, 4), 0.25, np.float32)
    with pytest.raises(ValueError, match="unknown loss"):
        loss_forward_backward("mse", p, p, False, None, True)
    with pytest.raises(ValueError, match="'y_true' is required"):
        loss_forward_backward("mean_squared_error", None, p, False, None, True)
    with pytest.raises(ValueError, match="'y_pred' is required"):
        loss_forward_backward("mean_squared_error", p, None, False, None, True)
    with pytest.raises(ValueError, match="shape"):
        loss_forward_backward("mean_squared_error", np.ones((3, 5)), p, False, None, True)
    with pytest.raises(ValueError, match="shape"):
        loss_forward_backward("categorical_crossentropy", np.ones((4, 3)), p, False, None, 1)
    with pytest.raises(ValueError, match="at least 1 dimension"):
        loss_forward_backward("mean_squared_error", 1.0, np.float32(1.0), False, None, True)
    with pytest.raises(TypeError, match="numeric"):
        loss_forward_backward("mean_squared_error", p, np.array([["a"]]), False, None, True)
    sparse = "sparse_categorical_crossentropy"
    with pytest.raises(ValueError, match=r"label 4 out of range.*K=4"):
        loss_forward_backward(sparse, np.array([0, 4, 1]), p, False, None, True)
    with pytest.raises(ValueError, match=r"label -1 out of range.*K=4"):
        loss_forward_backward(sparse, np.array([[0], [-1], [1]]), p, False, None, True)
    with pytest.raises(ValueError, match=r"label 4294967297 out of range"):
        loss_forward_backward(sparse, np.array([0, 2**32 + 1, 1]), p, False, None, True)
    with pytest.raises(ValueError, match="integer class ids, got 1.5"):
        loss_forward_backward(sparse, np.array([0.0, 1.5, 1.0]), p, False, None, True)
    with pytest.raises(TypeError, match="integer class ids"):
        loss_forward_backward(sparse, np.array(["a", "b", "c"]), p, False, None, True)
    with pytest.raises(ValueError, match=r"shape \(3,\) or \(3, 1\)"):
        loss_forward_backward(sparse, np.array([0, 1]), p, False, None, True)
    with pytest.raises(ValueError, match="'y_true' is required"):
        loss_forward_backward(sparse, None, p, False, None, True)
    for bad in (-1.0, 0.0, float("nan")):
        with pytest.raises(ValueError, match="delta"):
            loss_forward_backward("huber", p, p, False, bad, True)
    with pytest.raises(TypeError, match="delta"):
        loss_forward_backward("huber", p, p, False, "one", True)
    # Float labels holding whole numbers are accepted, like Keras's cast.
    a = loss_forward_backward(sparse, np.array([0.0, 3.0, 1.0]), p, False, None, True)
    b = loss_forward_backward(sparse, np.array([0, 3, 1]), p, False, None, True)
    assert a[0] == b[0]


# -- golden comparison against Keras 3 itself (torch backend) -----------------------------

@pytest.fixture(scope="module")
def keras_torch():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
        import torch
    except Exception as exc:  # keras missing or its backend unavailable
        pytest.skip(f"keras/torch unavailable: {exc}")
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras runs on {keras.backend.backend()}, not torch")
    return keras, torch


KERAS_CLASSES = {
    "mean_squared_error": "MeanSquaredError",
    "mean_absolute_error": "MeanAbsoluteError",
    "huber": "Huber",
    "binary_crossentropy": "BinaryCrossentropy",
    "categorical_crossentropy": "CategoricalCrossentropy",
    "sparse_categorical_crossentropy": "SparseCategoricalCrossentropy",
    "kl_divergence": "KLDivergence",
    "hinge": "Hinge",
    "squared_hinge": "SquaredHinge",
    "categorical_hinge": "CategoricalHinge",
    "log_cosh": "LogCosh",
    "poisson": "Poisson",
    "mean_squared_logarithmic_error": "MeanSquaredLogarithmicError",
    "mean_absolute_percentage_error": "MeanAbsolutePercentageError",
    "cosine_similarity": "CosineSimilarity",
    "binary_focal_crossentropy": "BinaryFocalCrossentropy",
    "categorical_focal_crossentropy": "CategoricalFocalCrossentropy",
    "dice": "Dice",
    "tversky": "Tversky",
    "categorical_generalized_cross_entropy": "CategoricalGeneralizedCrossEntropy",
}


KERAS_FLOAT32_INSIDE = ("hinge", "squared_hinge", "categorical_hinge",
                        "mean_squared_logarithmic_error", "cosine_similarity")


def keras_kwargs(name, from_logits, param):
    """pynn's (from_logits, param) as the Keras loss's keyword arguments."""
    kwargs = {}
    if name == "huber":
        kwargs["delta"] = 1.0 if param is None else param
    elif name.endswith("crossentropy"):
        kwargs["from_logits"] = from_logits
        if isinstance(param, dict):
            kwargs.update(param)
        elif param is not None:
            kwargs["label_smoothing"] = param
    elif name == "tversky" and param is not None:
        kwargs.update(param)
    elif name == "categorical_generalized_cross_entropy":  # q is required by the function
        kwargs.update({"q": 0.5, **(param or {})})
    return kwargs


def keras_loss_and_grad(keras_torch, name, y_true, y_pred, from_logits, param, dtype):
    """Keras's loss and torch autograd's gradient of it. float32 goes through the Loss class
    (Keras's whole path); float64 through the loss function and a float64 mean, because
    Keras 3.15's reduction returns float32 even for Loss(dtype="float64")."""
    keras, torch = keras_torch
    kwargs = keras_kwargs(name, from_logits, param)
    p = torch.tensor(np.asarray(y_pred, dtype=dtype), requires_grad=True)
    t = torch.tensor(np.asarray(y_true))
    if dtype == np.float32:
        fn = getattr(keras.losses, KERAS_CLASSES[name])(dtype="float32", **kwargs)
        loss = fn(t, p)
    else:
        per_sample = getattr(keras.losses, name)(t, p, **kwargs)
        # Keras 3.15 computes a few losses in float32 even for float64 inputs (its float32
        # constants win); the caller then compares at float32's accuracy.
        assert per_sample.dtype == torch.float64 or name in KERAS_FLOAT32_INSIDE
        loss = torch.mean(per_sample.double())
    loss.backward()
    return float(loss.detach()), p.grad.numpy()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,from_logits,param", CASES, ids=CASE_IDS)
def test_matches_keras(keras_torch, name, from_logits, param, dtype):
    assert set(KERAS_CLASSES) == set(LOSSES)
    rng = np.random.default_rng(31)
    for shape in [(9, 4), (2, 3, 5)]:
        y_true, y_pred = make_data(name, from_logits, shape, rng, param)
        y_pred = y_pred.astype(dtype)
        want_loss, want_grad = keras_loss_and_grad(keras_torch, name, y_true, y_pred,
                                                   from_logits, param, dtype)
        loss, grad = loss_forward_backward(name, y_true, y_pred, from_logits, param, True)
        if dtype == np.float32 or name in KERAS_FLOAT32_INSIDE:
            tol = dict(rtol=1e-5, atol=1e-7)
        elif name in ("categorical_focal_crossentropy",
                      "categorical_generalized_cross_entropy"):
            # Keras's ops.multiply(factor, alpha) makes alpha a float32 tensor (0.6 is off by
            # 4e-8 relative), as ops.power(p, q) does q; tests/reference holds the tight
            # float64 check.
            tol = dict(rtol=1e-7, atol=1e-12)
        elif name in MEAN_OVER_LAST_AXIS:
            # Keras's torch ops.mean casts float64 through float32 (3.15), so Keras itself
            # is only float32-accurate here; tests/reference holds the tight float64 check.
            tol = dict(rtol=1e-6, atol=1e-9)
        else:
            tol = dict(rtol=1e-11, atol=1e-14)
        np.testing.assert_allclose(loss, want_loss, **tol, err_msg=f"{name} {shape}")
        np.testing.assert_allclose(grad, want_grad, **tol, err_msg=f"{name} grad {shape}")


def test_matches_keras_at_the_clip_bounds(keras_torch):
    y_pred = np.array([[0.0, 0.3, 0.5], [1.0, 0.0, 0.0], [0.2, 0.2, 0.4]], np.float32)
    y_true = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    for name, t in [("categorical_crossentropy", y_true),
                    ("sparse_categorical_crossentropy", np.array([1, 0, 2])),
                    ("binary_crossentropy", y_true)]:
        want_loss, want_grad = keras_loss_and_grad(keras_torch, name, t, y_pred, False, None,
                                                   np.float32)
        loss, grad = loss_forward_backward(name, t, y_pred, False, None, True)
        np.testing.assert_allclose(loss, want_loss, rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6, err_msg=name)


# -- over both backends (the `backend` fixture): float32 against the float64 references -----
# Reductions within 1e-4. On OpenCL check_op also compares with the CPU op.


def loss_ref32(name, y_true, y_pred, from_logits, param, need_grad, sample_weight=None):
    """The float64 oracle with the float32 kernels' probability clip."""
    return loss_forward_backward_ref(name, y_true, y_pred, from_logits, param, need_grad,
                                     sample_weight, dtype=np.float32)


def _backend_loss_data(rng, name, shape, from_logits):
    k = shape[-1]
    if name in NEW_DATA:
        y_true, y_pred = NEW_DATA[name](rng, shape, from_logits)
        if y_true.dtype == np.int32:   # class ids stay integers
            return y_true, y_pred.astype(np.float32)
        return y_true.astype(np.float32), y_pred.astype(np.float32)
    probs = name in ("binary_crossentropy", "categorical_crossentropy",
                     "sparse_categorical_crossentropy") and not from_logits
    y_pred = rng.uniform(0.02, 1.0, shape) if probs else rng.standard_normal(shape) * 2
    if name == "sparse_categorical_crossentropy":
        y_true = rng.integers(0, k, shape[:-1]).astype(np.int32)
    elif name == "categorical_crossentropy":
        y_true = np.eye(k)[rng.integers(0, k, shape[:-1])]
    elif name == "binary_crossentropy":
        y_true = rng.integers(0, 2, shape).astype(np.float64)
    else:
        y_true = rng.standard_normal(shape)
    if probs and shape[-1] > 1:
        y_pred.reshape(-1, k)[:, 0] = 1.0  # one clipped probability per row
    y_true = y_true if y_true.dtype == np.int32 else y_true.astype(np.float32)
    return y_true, y_pred.astype(np.float32)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("shape", [(1, 1), (13, 7), (3, 2, 5), (5, 131)], ids=str)
def test_loss_forward_backward_on_backend(backend, name, from_logits, shape):
    rng = np.random.default_rng(LOSSES.index(name) * 10 + len(shape))
    y_true, y_pred = _backend_loss_data(rng, name, shape, from_logits)
    param = 0.7 if name == "huber" else None
    check_op(backend, "loss_forward_backward", name, y_true, y_pred, from_logits, param, True,
             ref=loss_ref32, kind="reduction")
    _, (loss, grad) = check_op(backend, "loss_forward_backward", name, y_true, y_pred,
                               from_logits, param, False, ref=loss_ref32, kind="reduction")
    assert grad is None


def test_loss_target_shapes_follow_keras_on_backend(backend):
    rng = np.random.default_rng(11)
    y_pred = rand(rng, (7, 1))
    check_op(backend, "loss_forward_backward", "mean_squared_error", rand(rng, (7,)), y_pred,
             False, None, True, ref=loss_ref32, kind="reduction")
    labels = rng.integers(0, 5, (7, 1)).astype(np.int32)
    check_op(backend, "loss_forward_backward", "sparse_categorical_crossentropy", labels,
             rand(rng, (7, 5)), True, None, True, ref=loss_ref32, kind="reduction")


def test_loss_many_elements_is_deterministic_on_backend(backend):
    rng = np.random.default_rng(12)
    y_true, y_pred = rand(rng, (301, 333)), rand(rng, (301, 333))  # more than one pass of groups
    _, (loss, _) = check_op(backend, "loss_forward_backward", "huber", y_true, y_pred, False,
                            1.0, True, ref=loss_ref32, kind="reduction")
    again, _ = backend.ops.loss_forward_backward("huber", backend.up(y_true),
                                                 backend.up(y_pred), False, 1.0, True)
    assert again == loss


def test_loss_empty_batch_is_zero_on_backend(backend):
    ops = backend.ops
    assert ops.loss_forward_backward("mean_squared_error", ops.zeros((0, 4)), ops.zeros((0, 4)),
                                     False, None, True)[0] == 0.0


@pytest.mark.opencl
def test_loss_bad_inputs_opencl(ocl):
    p = ocl.asarray(np.full((3, 4), 0.25, np.float32))
    with pytest.raises(ValueError, match="unknown loss"):
        ocl.loss_forward_backward("hinge_loss", p, p, False, None, True)
    with pytest.raises(ValueError, match="out of range"):
        labels = ocl.asarray(np.array([0, 4, 1], np.int32), np.int32)
        ocl.loss_forward_backward("sparse_categorical_crossentropy", labels, p, False, None,
                                  True)
    with pytest.raises(TypeError, match="int32"):
        ocl.loss_forward_backward("sparse_categorical_crossentropy", ocl.zeros((3,)), p, False,
                                  None, True)
    with pytest.raises(ValueError, match="shape"):
        ocl.loss_forward_backward("categorical_crossentropy", ocl.zeros((3, 5)), p, False,
                                  None, True)
    with pytest.raises(ValueError, match="delta"):
        ocl.loss_forward_backward("huber", p, p, False, -1.0, True)
    with pytest.raises(ValueError, match="required"):
        ocl.loss_forward_backward("huber", None, p, False, None, True)
    with pytest.raises(TypeError, match="asarray"):
        ocl.loss_forward_backward("huber", np.zeros((3, 4)), p, False, None, True)


@pytest.mark.opencl
def test_small_work_groups_build_smaller_loss_kernels(small_work_groups):
    rng = np.random.default_rng(31)
    x = rand(rng, (5, 131))
    labels = rng.integers(0, 131, 5).astype(np.int32)
    check_op(small_work_groups, "loss_forward_backward", "sparse_categorical_crossentropy",
             labels, x, True, None, True, ref=loss_ref32, kind="reduction")


# -- sample weights: Keras's sum_over_batch_size divides by the number of losses -----------

# (y_pred shape, sample_weight shape): one weight per sample, per step, per sample of a
# sequence (broadcast over its steps), and Keras's trailing-1 form.
WEIGHT_SHAPES = [((7, 3), (7,)), ((4, 5, 3), (4, 5)), ((4, 5, 3), (4,)), ((6, 4), (6, 1)),
                 ((1, 1), (1,))]


def weights_for(rng, shape):
    """Random positive weights with a zero and a weight above one (both matter)."""
    w = rng.uniform(0.1, 2.5, size=shape)
    w.reshape(-1)[0] = 0.0
    return w


@pytest.mark.parametrize("pred_shape,weight_shape", WEIGHT_SHAPES, ids=str)
@pytest.mark.parametrize("name,from_logits,param", CASES, ids=CASE_IDS)
def test_sample_weight_matches_reference(target, name, from_logits, param, pred_shape,
                                         weight_shape):
    rng = np.random.default_rng(len(pred_shape) * 10 + len(weight_shape))
    y_true, y_pred = make_data(name, from_logits, pred_shape, rng, param)
    w = weights_for(rng, weight_shape)
    dtype = target.dtype.type
    yp = np.asarray(y_pred, dtype=dtype)
    integer = name.startswith("sparse") or np.asarray(y_true).dtype.kind == "i"  # class ids
    yt = y_true if integer else np.asarray(y_true, dtype=dtype)
    tol = target.rtol("reduction") if target.is_opencl else TOL[dtype]
    if target.is_opencl:
        yt = yt.astype(np.int32) if name.startswith("sparse") else yt
    check_op(target, "loss_forward_backward", name, yt, yp, from_logits, param, True,
             w.astype(dtype),
             ref=loss_forward_backward_ref(name, yt, yp, from_logits, param, True,
                                           w.astype(dtype), dtype), rtol=tol)


@pytest.mark.parametrize("name,from_logits,param", CASES, ids=CASE_IDS)
def test_sample_weight_gradient_finite_differences(name, from_logits, param):
    rng = np.random.default_rng(23)
    y_true, y_pred = make_data(name, from_logits, (3, 2, 4), rng, param)
    w = weights_for(rng, (3,))
    _, grad = loss_forward_backward(name, y_true, y_pred, from_logits, param, True, w)

    def f(p):
        return loss_forward_backward(name, y_true, p, from_logits, param, False, w)[0]

    np.testing.assert_allclose(grad, numerical_derivative(f, y_pred, 1e-5), rtol=1e-6,
                               atol=1e-9)


def test_sample_weight_divides_by_the_count_not_the_weight_sum():
    y_true, y_pred = np.zeros((4, 2)), np.ones((4, 2))  # every per-sample MSE is 1
    w = np.array([1.0, 0.0, 0.0, 0.0])
    loss, grad = loss_forward_backward("mean_squared_error", y_true, y_pred, False, None, True,
                                       w)
    assert loss == 0.25
    np.testing.assert_array_equal(grad[1:], 0.0)
    ones = loss_forward_backward("mean_squared_error", y_true, y_pred, False, None, True,
                                 np.ones(4))
    plain = loss_forward_backward("mean_squared_error", y_true, y_pred, False, None, True)
    assert ones[0] == plain[0]
    np.testing.assert_array_equal(ones[1], plain[1])


def test_sample_weight_thread_invariance():
    rng = np.random.default_rng(5)
    y_true, y_pred = rng.normal(size=(301, 217)), rng.normal(size=(301, 217))
    w = weights_for(rng, (301,))
    results = []
    for n in (1, 2, 3):
        set_num_threads(n)
        try:
            results.append(loss_forward_backward("huber", y_true, y_pred, False, None, True, w))
        finally:
            set_num_threads(os.cpu_count() or 1)
    for loss, grad in results[1:]:
        assert loss == results[0][0]
        np.testing.assert_array_equal(grad, results[0][1])


def test_sample_weight_bad_inputs():
    p = np.full((3, 4), 0.25)
    op = "loss_forward_backward"
    for bad in [np.ones(4), np.ones((3, 2)), np.ones((1, 3))]:
        with pytest.raises(ValueError, match=f"{op}: 'sample_weight' must have shape .*"
                                             rf"got {re.escape(str(bad.shape))}"):
            loss_forward_backward("mean_squared_error", p, p, False, None, True, bad)
    with pytest.raises(ValueError, match="'sample_weight' needs y_pred of rank >= 2"):
        loss_forward_backward("mean_squared_error", p[0], p[0], False, None, True, np.ones(4))
    with pytest.raises((TypeError, ValueError), match="sample_weight"):
        loss_forward_backward("mean_squared_error", p, p, False, None, True,
                              np.array(["a", "b", "c"]))


@pytest.mark.opencl
def test_sample_weight_must_be_on_the_device_opencl(ocl):
    p = ocl.asarray(np.full((3, 4), 0.25, np.float32))
    with pytest.raises(TypeError, match="asarray"):
        ocl.loss_forward_backward("mean_squared_error", p, p, False, None, True, np.ones(3))
    with pytest.raises(ValueError, match="'sample_weight' must have shape"):
        ocl.loss_forward_backward("mean_squared_error", p, p, False, None, True,
                                  ocl.asarray(np.ones(4, np.float32)))


@pytest.mark.parametrize("name,from_logits,param", CASES, ids=CASE_IDS)
def test_sample_weight_matches_keras(keras_torch, name, from_logits, param):
    """Keras's Loss(y_true, y_pred, sample_weight=w) and torch autograd's gradient of it."""
    keras, torch = keras_torch
    kwargs = keras_kwargs(name, from_logits, param)
    rng = np.random.default_rng(41)
    for shape, wshape in [((9, 4), (9,)), ((2, 3, 5), (2, 3)), ((6, 3), (6, 1))]:
        y_true, y_pred = make_data(name, from_logits, shape, rng, param)
        y_pred = y_pred.astype(np.float32)
        w = weights_for(rng, wshape).astype(np.float32)
        p = torch.tensor(y_pred, requires_grad=True)
        fn = getattr(keras.losses, KERAS_CLASSES[name])(dtype="float32", **kwargs)
        want = fn(torch.tensor(np.asarray(y_true)), p, sample_weight=torch.tensor(w))
        want.backward()
        loss, grad = loss_forward_backward(name, y_true, y_pred, from_logits, param, True, w)
        np.testing.assert_allclose(loss, float(want.detach()), rtol=1e-5, atol=1e-7,
                                   err_msg=f"{name} {shape}")
        np.testing.assert_allclose(grad, p.grad.numpy(), rtol=1e-5, atol=1e-7,
                                   err_msg=f"{name} grad {shape}")
        # The Loss class passes the weights through.
        mine = getattr(pynn_losses, KERAS_CLASSES[name])(**kwargs)
        np.testing.assert_allclose(mine(y_true, y_pred, sample_weight=w), float(want.detach()),
                                   rtol=1e-5, atol=1e-7)


# -- pynn.losses: names, aliases, configs --------------------------------------------------

@pytest.mark.parametrize("alias,cls", [
    ("kld", "KLDivergence"), ("kullback_leibler_divergence", "KLDivergence"),
    ("KLD", "KLDivergence"), ("mape", "MeanAbsolutePercentageError"),
    ("msle", "MeanSquaredLogarithmicError"), ("logcosh", "LogCosh"), ("log_cosh", "LogCosh"),
    ("hinge", "Hinge"), ("squared_hinge", "SquaredHinge"),
    ("categorical_hinge", "CategoricalHinge"), ("poisson", "Poisson"),
    ("cosine_similarity", "CosineSimilarity"),
    ("binary_focal_crossentropy", "BinaryFocalCrossentropy"),
    ("BinaryFocalCrossentropy", "BinaryFocalCrossentropy"),
])
def test_new_losses_by_name(alias, cls):
    loss = pynn_losses.get(alias)
    assert type(loss).__name__ == cls
    assert loss.name == loss.backend_name


@pytest.mark.parametrize("loss", [
    pynn_losses.BinaryCrossentropy(from_logits=True, label_smoothing=0.2),
    pynn_losses.CategoricalCrossentropy(label_smoothing=0.1, name="smooth"),
    pynn_losses.BinaryFocalCrossentropy(apply_class_balancing=True, alpha=0.4, gamma=1.0,
                                        from_logits=True, label_smoothing=0.05),
    pynn_losses.CosineSimilarity(), pynn_losses.KLDivergence(name="kl"),
], ids=lambda loss: type(loss).__name__)
def test_new_loss_configs_round_trip(loss):
    again = pynn_losses.get(pynn_losses.serialize(loss))
    assert type(again) is type(loss) and again.get_config() == loss.get_config()
    rng = np.random.default_rng(3)
    y_true = rng.uniform(0, 1, (4, 3)).astype(np.float32)
    y_pred = rng.uniform(0.1, 0.9, (4, 3)).astype(np.float32)
    assert again(y_true, y_pred) == loss(y_true, y_pred)


def test_new_loss_bad_arguments():
    with pytest.raises(ValueError, match=r"BinaryCrossentropy: label_smoothing must be in "
                                         r"\[0, 1\], got 1.5"):
        pynn_losses.BinaryCrossentropy(label_smoothing=1.5)
    with pytest.raises(ValueError, match="CosineSimilarity: only axis=-1 is supported, got "
                                         "axis=0"):
        pynn_losses.CosineSimilarity(axis=0)
    with pytest.raises(ValueError, match="BinaryFocalCrossentropy: gamma must be >= 0"):
        pynn_losses.BinaryFocalCrossentropy(gamma=-1)
    p = np.full((3, 4), 0.25)
    with pytest.raises(ValueError, match=r"loss_forward_backward: 'label_smoothing' must be "
                                         r"in \[0.0, 1.0\], got 2.0"):
        loss_forward_backward("categorical_crossentropy", p, p, False, 2.0, True)
    with pytest.raises(ValueError, match="binary_focal_crossentropy's param must be None or a "
                                         "dict"):
        loss_forward_backward("binary_focal_crossentropy", p, p, False, {"beta": 1}, True)
    with pytest.raises(ValueError, match="'gamma' must be in"):
        loss_forward_backward("binary_focal_crossentropy", p, p, False, {"gamma": -2}, True)


def test_hinge_converts_labels_only_when_all_are_binary():
    """Keras: {0, 1} targets become {-1, 1}; one other value anywhere keeps them all."""
    y_pred = np.array([[0.3, -0.4], [0.8, 0.1]])
    binary = np.array([[0.0, 1.0], [1.0, 0.0]])
    mixed = np.array([[0.0, 1.0], [1.0, -1.0]])
    for name in ("hinge", "squared_hinge"):
        for t in (binary, mixed):
            want = loss_forward_ref(name, t, y_pred)
            assert loss_forward_backward(name, t, y_pred, False, None, False)[0] == \
                pytest.approx(want, rel=1e-14)
        # {0, 1} labels are read as the {-1, 1} labels they stand for.
        assert loss_forward_backward(name, binary, y_pred, False, None, False)[0] == \
            loss_forward_backward(name, 2 * binary - 1, y_pred, False, None, False)[0]


@pytest.mark.parametrize("name,param", [("sparse_categorical_crossentropy", None),
                                        ("categorical_crossentropy", 0.2)])
@pytest.mark.parametrize("k", [1, 7, 33, 1031])
def test_float32_logits_rows_through_vector_exp(name, param, k):
    """float32 logits take native/_vmath.h's exp (eight double lanes for the sums, the
    exponentials kept in the gradient): wide rows (1,031 classes, not a multiple of any
    vector or lane count) and narrow ones, against float64, loss with and without the
    gradient alike."""
    rng = np.random.default_rng(k)
    y_true, y_pred = make_data(name, True, (5, k), rng, param)
    y_pred = (y_pred * 4).astype(np.float32)
    yt = y_true if name.startswith("sparse") else np.asarray(y_true, np.float32)
    loss, grad = loss_forward_backward(name, yt, y_pred, True, param)
    want_loss, want_grad = loss_forward_backward_ref(name, yt, y_pred, True, param,
                                                     dtype=np.float32)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=2e-5, atol=1e-7)
    alone, none = loss_forward_backward(name, yt, y_pred, True, param, need_grad=False)
    assert none is None and alone == loss


@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("smoothing", [None, 0.15])
@pytest.mark.parametrize("shape", [(3,), (7, 1031), (2, 5, 13)])
def test_float32_binary_crossentropy_through_vector_math(from_logits, smoothing, shape):
    """Unweighted float32 binary crossentropy runs native/_vmath.h's functions in eight
    lanes (a vector body and a scalar tail: 7 x 1,031 ends in both): against float64, and
    the loss without the gradient the same bits."""
    rng = np.random.default_rng(shape[-1])
    y_true, y_pred = make_data("binary_crossentropy", from_logits, shape, rng, smoothing)
    y_true, y_pred = np.asarray(y_true, np.float32), np.asarray(y_pred, np.float32)
    loss, grad = loss_forward_backward("binary_crossentropy", y_true, y_pred, from_logits,
                                       smoothing)
    want_loss, want_grad = loss_forward_backward_ref("binary_crossentropy", y_true, y_pred,
                                                     from_logits, smoothing, dtype=np.float32)
    np.testing.assert_allclose(loss, want_loss, rtol=2e-6)
    # where the smoothed target meets the prediction, p - t cancels in float32: the bound
    # there is against the gradient's scale
    np.testing.assert_allclose(grad, want_grad, rtol=2e-5,
                               atol=2e-5 * float(np.abs(want_grad).max()))
    alone, _ = loss_forward_backward("binary_crossentropy", y_true, y_pred, from_logits,
                                     smoothing, need_grad=False)
    assert alone == loss


@pytest.mark.parametrize("smoothing", [None, 0.2])
@pytest.mark.parametrize("k", [1, 7, 1031])
def test_float32_categorical_probabilities_through_vector_math(smoothing, k):
    """float32 categorical crossentropy from probabilities: the row's logs and quotients in
    branch-free loops (eight double lanes): against float64 with clipped entries in the
    row, and need_grad=False the same loss bits."""
    rng = np.random.default_rng(k + 1)
    y_true, y_pred = make_data("categorical_crossentropy", False, (5, k), rng, smoothing)
    y_pred = np.asarray(y_pred, np.float32)
    if k > 1:
        y_pred[0, 0] = 0.0   # clipped to eps: its gradient term is 0
    y_true = np.asarray(y_true, np.float32)
    loss, grad = loss_forward_backward("categorical_crossentropy", y_true, y_pred, False,
                                       smoothing)
    want_loss, want_grad = loss_forward_backward_ref("categorical_crossentropy", y_true,
                                                     y_pred, False, smoothing,
                                                     dtype=np.float32)
    np.testing.assert_allclose(loss, want_loss, rtol=2e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=2e-5,
                               atol=2e-6 * float(np.abs(want_grad).max()))
    alone, _ = loss_forward_backward("categorical_crossentropy", y_true, y_pred, False,
                                     smoothing, need_grad=False)
    assert alone == loss


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                                   np.uint32, np.uint64, np.bool_, np.float32])
def test_labels_out_of_range_by_one_reduction(dtype):
    # Negative ids seen as unsigned lie above every class count; each dtype's extremes too.
    from pynn.backend.operands.common import labels_out_of_range

    rng = np.random.default_rng(3)
    k = 2 if dtype == np.bool_ else 7
    good = rng.integers(0, k, 37).astype(dtype)
    assert not labels_out_of_range(good, k)
    assert not labels_out_of_range(good[::3], k)   # strided
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    if dtype == np.bool_:   # True is class 1: out of range for one class
        assert labels_out_of_range(good, 1) == bool(good.any())
        return
    bads = [k] + ([-1, info.min, info.max] if info is not None and info.min < 0 else
                  [info.max] if info is not None else [-1.0])
    for bad in bads:
        labels = good.copy()
        labels[17] = bad
        assert labels_out_of_range(labels, k), (dtype, bad)
        assert labels_out_of_range(labels[1::2], k), (dtype, bad)


# -- Keras 3's CategoricalFocalCrossentropy, Dice and Tversky --------------------------------

@pytest.mark.parametrize("alias,cls", [
    ("categorical_focal_crossentropy", "CategoricalFocalCrossentropy"),
    ("CategoricalFocalCrossentropy", "CategoricalFocalCrossentropy"),
    ("dice", "Dice"), ("Dice", "Dice"), ("tversky", "Tversky"), ("Tversky", "Tversky"),
])
def test_focal_dice_tversky_by_name(alias, cls):
    loss = pynn_losses.get(alias)
    assert type(loss).__name__ == cls
    assert loss.name == loss.backend_name


def test_focal_dice_tversky_defaults_and_configs_like_keras(keras_torch):
    keras, _ = keras_torch
    for cls, kwargs in [("CategoricalFocalCrossentropy", {}),
                        ("CategoricalFocalCrossentropy",
                         dict(alpha=0.4, gamma=1.0, from_logits=True, label_smoothing=0.05)),
                        ("Dice", {}), ("Tversky", {}), ("Tversky", dict(alpha=0.2, beta=0.7))]:
        mine = getattr(pynn_losses, cls)(**kwargs)
        theirs = getattr(keras.losses, cls)(**kwargs).get_config()
        got = mine.get_config()
        assert {k: theirs[k] for k in got} == got, cls
        again = pynn_losses.get(pynn_losses.serialize(mine))
        assert type(again) is type(mine) and again.get_config() == got
        # Keras's own serialized loss (a .keras file's compile config) loads as pynn's.
        loaded = pynn_losses.get(keras.losses.serialize(getattr(keras.losses, cls)(**kwargs)))
        assert type(loaded) is type(mine) and loaded.get_config() == got


def test_focal_dice_tversky_documented_keras_values():
    """Golden values from Keras 3's docstrings (keras/src/losses/losses.py)."""
    y_true = [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    y_pred = [[0.05, 0.95, 0], [0.1, 0.8, 0.1]]
    cfce = pynn_losses.CategoricalFocalCrossentropy()
    assert cfce(y_true, y_pred) == pytest.approx(0.23315276, rel=1e-6)
    assert cfce(y_true, y_pred, sample_weight=np.array([0.3, 0.7])) == pytest.approx(
        0.1632, abs=1e-4)
    t = np.array([[[[1.0], [1.0]], [[0.0], [0.0]]], [[[1.0], [1.0]], [[0.0], [0.0]]]])
    p = np.array([[[[0.0], [1.0]], [[0.0], [1.0]]], [[[0.4], [0.0]], [[0.0], [0.9]]]])
    assert pynn_losses.Dice()(t, p) == pytest.approx(0.6164384, rel=1e-6)
    # alpha = beta = 0.5 is dice up to where eps enters
    assert pynn_losses.Tversky()(t, p) == pytest.approx(0.6164384, rel=1e-6)


def test_focal_dice_tversky_bad_arguments():
    with pytest.raises(ValueError, match=r"Dice: only axis=None .* got axis=\(1, 2, 3\)"):
        pynn_losses.Dice(axis=(1, 2, 3))
    with pytest.raises(ValueError, match="Tversky: only axis=None .* got axis=-1"):
        pynn_losses.Tversky(axis=-1)
    with pytest.raises(ValueError, match="CategoricalFocalCrossentropy: only axis=-1"):
        pynn_losses.CategoricalFocalCrossentropy(axis=0)
    with pytest.raises(ValueError, match="only a scalar alpha"):
        pynn_losses.CategoricalFocalCrossentropy(alpha=[0.2, 0.8])
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        pynn_losses.CategoricalFocalCrossentropy(gamma=-1)
    p = np.full((3, 4), 0.25)
    with pytest.raises(ValueError, match="tversky's param must be None or a dict"):
        loss_forward_backward("tversky", p, p, False, {"gamma": 1}, True)
    with pytest.raises(ValueError, match="categorical_focal_crossentropy's param must be"):
        loss_forward_backward("categorical_focal_crossentropy", p, p, False, 0.1, True)


def test_dice_sample_weight_scales_by_the_weights_mean():
    """One loss for the whole batch: Keras multiplies it by the weights and averages."""
    rng = np.random.default_rng(8)
    t, p = _overlap_data(rng, (6, 5), False)
    w = rng.uniform(0.1, 2.0, 6)
    for name in ("dice", "tversky"):
        plain, g = loss_forward_backward(name, t, p, False, None, True)
        weighted, gw = loss_forward_backward(name, t, p, False, None, True, w)
        assert weighted == pytest.approx(plain * w.mean(), rel=1e-14)
        np.testing.assert_allclose(gw, g * w.mean(), rtol=1e-14)


@pytest.mark.parametrize("loss,activation", [
    ("categorical_focal_crossentropy", "softmax"),
    (pynn_losses.CategoricalFocalCrossentropy(from_logits=True, gamma=1.0), "linear"),
    ("dice", "sigmoid"), ("tversky", "sigmoid"),
    (pynn_losses.Tversky(alpha=0.3, beta=0.7), "sigmoid"),
], ids=lambda v: v if isinstance(v, str) else type(v).__name__)
def test_focal_dice_tversky_train_a_model(seeded, loss, activation):
    import pynn
    from pynn import layers

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 6)).astype(np.float32)
    labels = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0)
    y = np.eye(3, dtype=np.float32)[labels]
    model = pynn.Sequential([layers.Input((6,)), layers.Dense(3, activation=activation)])
    model.compile(pynn.optimizers.Adam(0.05), loss=loss)
    before = model.evaluate(x, y, batch_size=16, verbose=0)
    history = model.fit(x, y, batch_size=16, epochs=5, verbose=0, shuffle=False)
    after = model.evaluate(x, y, batch_size=16, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert after < before


# -- Keras 3's CTC and Circle: the loss family's own ops (tests/test_loss_keras3.py holds
# their full tests: oracles over odd sizes, central differences, Keras parity, bad inputs) --

def test_ctc_and_circle_loss_ops_on_backend(backend):
    from tests.reference.loss_ref import (
        circle_loss_forward_backward_ref,
        ctc_loss_forward_backward_ref,
    )

    rng = np.random.default_rng(41)
    labels = np.array([[1, 2, 2], [3, 0, 0], [0, 0, 0]], np.int32)
    tol = dict(rtol=2e-4, atol=2e-5)
    check_op(backend, "ctc_loss_forward_backward", labels, rand(rng, (3, 7, 4)), True, None,
             ref=ctc_loss_forward_backward_ref, rtol=tol)
    e = rand(rng, (7, 5))
    e *= 0.95 / np.linalg.norm(e, axis=1, keepdims=True)
    ids = np.array([0, 1, 0, 2, 1, 0, 3], np.int32)
    check_op(backend, "circle_loss_forward_backward", ids, e, 80.0, 0.4, True, True, None,
             ref=lambda *a: circle_loss_forward_backward_ref(*a, dtype=np.float32), rtol=tol)


# -- opss: keras.ops' categorical cross-entropies, one loss per row (the op's tests:
# tests/test_ops_structural.py) --
@pytest.mark.parametrize("from_logits", [False, True])
def test_crossentropy_rows_on_backend(backend, from_logits):
    from tests.reference.loss_ref import crossentropy_rows_ref

    rng = np.random.default_rng(44)
    y_pred = rand(rng, (3, 5, 7))
    if not from_logits:
        y_pred = np.abs(y_pred) + 0.05
        y_pred[0, 0, 2] = 1e-9  # a clipped probability
    targets = rng.random((3, 5, 7)).astype(y_pred.dtype)
    ids = rng.integers(0, 7, (3, 5)).astype(np.int32)
    tol = dict(rtol=2e-4, atol=2e-5) if backend.dtype == np.float32 else 1e-10

    def ref(*a):
        return crossentropy_rows_ref(*a, dtype=backend.dtype)

    check_op(backend, "crossentropy_rows", "categorical_crossentropy", targets, y_pred,
             from_logits, True, ref=ref, rtol=tol)
    check_op(backend, "crossentropy_rows", "sparse_categorical_crossentropy", ids, y_pred,
             from_logits, True, ref=ref, rtol=tol)
    _, (losses, grad) = check_op(backend, "crossentropy_rows", "categorical_crossentropy",
                                 targets, y_pred, from_logits, False, ref=ref, rtol=tol)
    assert grad is None and losses.shape == (3, 5)
    with pytest.raises(ValueError, match="crossentropy_rows"):
        backend.op("crossentropy_rows")("sparse_categorical_crossentropy",
                                        backend.up(ids + 7), backend.up(y_pred), True, True)
    with pytest.raises(ValueError, match="crossentropy_rows: 'name'"):
        backend.op("crossentropy_rows")("huber", backend.up(targets), backend.up(y_pred),
                                        True, True)


# -- opss: keras.ops.ctc_loss's per-sample op (tests/test_ops_structural.py tests the op) --
def test_ctc_loss_samples_on_backend(backend):
    from tests.reference.loss_ref import ctc_loss_samples_ref

    rng = np.random.default_rng(43)
    labels = np.array([[1, 2, 2, 0], [3, 0, 0, 0], [0, 0, 0, 0], [2, 1, 3, 1]], np.int32)
    y_pred = rand(rng, (4, 9, 5))
    weights = np.array([0.5, 2.0, 1.0, -1.5], y_pred.dtype)
    tol = dict(rtol=2e-4, atol=2e-5)
    check_op(backend, "ctc_loss_samples", labels, y_pred, True, None,
             ref=ctc_loss_samples_ref, rtol=tol)
    check_op(backend, "ctc_loss_samples", labels, y_pred, True, weights,
             ref=ctc_loss_samples_ref, rtol=tol)
    _, (losses, grad) = check_op(backend, "ctc_loss_samples", labels, y_pred, False, None,
                                 ref=ctc_loss_samples_ref, rtol=tol)
    assert grad is None and losses.shape == (4,)
    with pytest.raises(ValueError, match="ctc_loss_samples"):
        backend.op("ctc_loss_samples")(backend.up(labels[:, :1] + 7), backend.up(y_pred),
                                       True, None)
