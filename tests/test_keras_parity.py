"""Numeric parity with Keras 3 (torch backend): same architecture, same initial weights, same
data in the same order -> same predictions, same weights after one epoch, same reported loss.

"Relative difference" below is ``max|pynn - keras| / max|keras|`` per array: the float32
rounding of two different kernels is relative to the array's scale, not to each element (a
weight that passes through zero would make an element-wise ratio meaningless).
"""

import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
try:
    import keras
    import torch
except Exception as exc:  # keras missing or its backend cannot load
    pytest.skip(f"keras (torch backend) is not available: {exc}", allow_module_level=True)
if keras.backend.backend() != "torch":
    pytest.skip(f"keras runs on {keras.backend.backend()}, these tests want torch",
                allow_module_level=True)

import pynn  # noqa: E402

torch.set_num_threads(2)

# Keras's torch backend trips NumPy 2's __array__ copy-keyword deprecation on every transfer.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

N, BATCH = 40, 16  # 3 batches: 16, 16 and a partial 8


def rel_diff(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.max(np.abs(b)), 1e-12)
    return float(np.max(np.abs(a - b)) / scale)


def max_weight_diff(pynn_model, keras_model):
    pairs = zip(pynn_model.get_weights(), keras_model.get_weights())
    return max(rel_diff(p, k) for p, k in pairs)


def mlp(lib, outputs=3, activation="softmax", regularizer=None):
    L = lib.layers
    return lib.Sequential([
        L.Input((6,)),
        L.Dense(8, activation="relu", kernel_regularizer=regularizer),
        L.Dense(5, activation="tanh"),
        L.Dense(outputs, activation=activation, kernel_regularizer=regularizer),
    ])


def cnn(lib, regularizer=None):
    L = lib.layers
    return lib.Sequential([
        L.Input((9, 9, 2)),
        L.Conv2D(4, 3, padding="same", activation="relu", kernel_regularizer=regularizer),
        L.MaxPooling2D(2),
        L.Conv2D(5, 2, activation="tanh"),
        L.AveragePooling2D(2, strides=1),
        L.GlobalAveragePooling2D(keepdims=True),
        L.Flatten(),
        L.Dense(3, activation="softmax"),
    ])


def pair(build, **kwargs):
    keras.utils.set_random_seed(3)
    reg_k = kwargs.pop("l2", None)
    k_model = build(keras, regularizer=keras.regularizers.L2(reg_k) if reg_k else None, **kwargs)
    p_model = build(pynn, regularizer=pynn.regularizers.L2(reg_k) if reg_k else None, **kwargs)
    p_model.set_weights(k_model.get_weights())
    return p_model, k_model


def data(shape, kind, outputs=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N,) + shape).astype(np.float32)
    if kind == "sparse":
        y = rng.integers(0, outputs, N).astype(np.int32)
    elif kind == "onehot":
        y = np.eye(outputs, dtype=np.float32)[rng.integers(0, outputs, N)]
    elif kind == "binary":
        y = rng.integers(0, 2, (N, outputs)).astype(np.float32)
    else:
        y = rng.standard_normal((N, outputs)).astype(np.float32)
    return x, y


def fit_both(p_model, k_model, x, y, optimizer, loss, metrics=None):
    name, kwargs = optimizer
    k_model.compile(optimizer=getattr(keras.optimizers, name)(**kwargs), loss=loss,
                    metrics=metrics)
    p_model.compile(optimizer=getattr(pynn.optimizers, name)(**kwargs), loss=loss,
                    metrics=metrics)
    k_hist = k_model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    p_hist = p_model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    return p_hist.history, k_hist.history


@pytest.mark.parametrize("build,shape", [(mlp, (6,)), (cnn, (9, 9, 2))])
def test_predictions_match(build, shape):
    p_model, k_model = pair(build)
    x, _ = data(shape, "sparse")
    expected = keras.ops.convert_to_numpy(k_model.predict(x, verbose=0))
    got = p_model.predict(x, batch_size=BATCH)
    assert got.shape == expected.shape
    assert rel_diff(got, expected) <= 1e-5
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_param_counts_match():
    for build in (mlp, cnn):
        p_model, k_model = pair(build)
        assert p_model.count_params() == k_model.count_params()
        assert [w.shape for w in p_model.get_weights()] == \
               [tuple(w.shape) for w in k_model.get_weights()]


SGD_CASES = [
    ("SGD", {"learning_rate": 0.1}),
    ("SGD", {"learning_rate": 0.05, "momentum": 0.9}),
    ("SGD", {"learning_rate": 0.05, "momentum": 0.9, "nesterov": True}),
    ("SGD", {"learning_rate": 0.1, "clipnorm": 0.05}),
    ("SGD", {"learning_rate": 0.1, "clipvalue": 0.01}),
    ("SGD", {"learning_rate": 0.1, "global_clipnorm": 0.1}),
]
ADAPTIVE_CASES = [
    ("Adam", {"learning_rate": 0.01}),
    ("Adam", {"learning_rate": 0.01, "amsgrad": True}),
    ("Adam", {"learning_rate": 0.01, "clipnorm": 0.05}),
    ("Adam", {"learning_rate": 0.01, "clipvalue": 0.01}),
    ("AdamW", {"learning_rate": 0.01, "weight_decay": 0.05}),
    ("RMSprop", {"learning_rate": 0.005}),
    ("RMSprop", {"learning_rate": 0.005, "centered": True}),
    ("RMSprop", {"learning_rate": 0.005, "momentum": 0.5}),
    ("RMSprop", {"learning_rate": 0.005, "centered": True, "momentum": 0.5}),
    ("Adagrad", {"learning_rate": 0.05}),
]


def _case_id(case):
    name, kwargs = case
    return name + "".join(f"-{k}={v}" for k, v in kwargs.items())


def _check_training(build, shape, optimizer, tol, kind="sparse",
                    loss="sparse_categorical_crossentropy", metrics=("accuracy",), **kwargs):
    p_model, k_model = pair(build, **kwargs)
    initial = p_model.get_weights()
    x, y = data(shape, kind, outputs=kwargs.get("outputs", 3))
    p_hist, k_hist = fit_both(p_model, k_model, x, y, optimizer, loss, list(metrics))
    moved = min(rel_diff(w, w0) for w, w0 in zip(k_model.get_weights(), initial))
    assert moved > 10 * tol, "training barely moved some weight: the comparison is too weak"
    weights = max_weight_diff(p_model, k_model)
    loss_diff = rel_diff(p_hist["loss"], k_hist["loss"])
    assert weights <= tol, f"weights differ by {weights:.2e} (relative) after one epoch"
    assert loss_diff <= tol, (f"reported loss differs: pynn {p_hist['loss']} vs keras "
                              f"{k_hist['loss']}")
    for m in metrics:
        assert p_hist[m] == pytest.approx(k_hist[m], abs=1e-6), m
    # The trained models still predict alike.
    preds = rel_diff(p_model.predict(x), keras.ops.convert_to_numpy(k_model.predict(x, verbose=0)))
    assert preds <= 10 * tol
    return weights, loss_diff


@pytest.mark.parametrize("optimizer", SGD_CASES, ids=_case_id)
def test_mlp_training_sgd(optimizer):
    _check_training(mlp, (6,), optimizer, 1e-4)


@pytest.mark.parametrize("optimizer", ADAPTIVE_CASES, ids=_case_id)
def test_mlp_training_adaptive(optimizer):
    _check_training(mlp, (6,), optimizer, 1e-3)


@pytest.mark.parametrize("optimizer", [SGD_CASES[1], ADAPTIVE_CASES[0], ADAPTIVE_CASES[5]],
                         ids=_case_id)
def test_cnn_training(optimizer):
    tol = 1e-4 if optimizer[0] == "SGD" else 1e-3
    _check_training(cnn, (9, 9, 2), optimizer, tol)


@pytest.mark.parametrize("optimizer,tol", [(SGD_CASES[1], 1e-4), (ADAPTIVE_CASES[0], 1e-3)],
                         ids=["sgd", "adam"])
def test_training_with_l2_regularizer(optimizer, tol):
    _check_training(mlp, (6,), optimizer, tol, l2=0.05)
    _check_training(cnn, (9, 9, 2), optimizer, tol, l2=0.05)


LOSS_CASES = [
    # loss, kind of targets, output units, output activation, metric
    ("sparse_categorical_crossentropy", "sparse", 3, "softmax", "accuracy"),
    ("categorical_crossentropy", "onehot", 3, "softmax", "accuracy"),
    ("binary_crossentropy", "binary", 1, "sigmoid", "accuracy"),
    ("binary_crossentropy", "binary", 2, "sigmoid", "binary_accuracy"),
    ("mse", "real", 3, "linear", "mae"),
]


@pytest.mark.parametrize("loss,kind,outputs,activation,metric", LOSS_CASES,
                         ids=[f"{c[0]}-{c[2]}" for c in LOSS_CASES])
def test_training_each_loss(loss, kind, outputs, activation, metric):
    metrics = () if metric == "mae" else (metric,)
    for optimizer, tol in ((SGD_CASES[1], 1e-4), (ADAPTIVE_CASES[0], 1e-3)):
        _check_training(mlp, (6,), optimizer, tol, kind=kind, loss=loss, metrics=metrics,
                        outputs=outputs, activation=activation)


def test_evaluate_matches():
    p_model, k_model = pair(mlp)
    x, y = data((6,), "sparse")
    for m in (p_model, k_model):
        m.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    k_loss, k_acc = k_model.evaluate(x, y, batch_size=BATCH, verbose=0)
    p_loss, p_acc = p_model.evaluate(x, y, batch_size=BATCH, verbose=0)
    assert rel_diff(p_loss, k_loss) <= 1e-5
    assert p_acc == pytest.approx(k_acc, abs=1e-6)
