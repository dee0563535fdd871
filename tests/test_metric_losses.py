"""Keras 3's loss-shaped metrics (MSLE, MAPE, Poisson, KLDivergence, LogCoshError,
CosineSimilarity, the hinges, the cross-entropies), Accuracy, the confusion counts,
R2Score, the correlations, Mean and Sum in pynn.metrics: the same results as keras.metrics
on random batches, with and without sample weights, their string names in compile, and
Keras files compiled with them."""


import numpy as np
import pytest

from tests.backend_util import keras_on_torch

import pynn
from pynn import metrics as M


_keras = keras_on_torch


def _batch(rng, kind):
    if kind == "prob":
        return (np.eye(5, dtype=np.float32)[rng.integers(0, 5, 7)],
                rng.dirichlet(np.ones(5), 7).astype(np.float32))
    if kind == "sparse":
        return rng.integers(0, 5, 7).astype(np.int32), rng.dirichlet(np.ones(5), 7).astype(
            np.float32)
    if kind == "binary":
        return ((rng.random((7, 3)) > 0.5).astype(np.float32),
                rng.random((7, 3)).astype(np.float32))
    if kind == "positive":
        return (rng.random((7, 3)).astype(np.float32) + 0.1,
                rng.random((7, 3)).astype(np.float32) + 0.1)
    if kind == "signs":
        return (np.where(rng.random((7, 3)) > 0.5, 1.0, -1.0).astype(np.float32),
                rng.standard_normal((7, 3)).astype(np.float32))
    if kind == "ints":
        return (rng.integers(0, 3, (7, 3)).astype(np.float32),
                rng.integers(0, 3, (7, 3)).astype(np.float32))
    return (rng.standard_normal((7, 3)).astype(np.float32),
            rng.standard_normal((7, 3)).astype(np.float32))


CASES = [
    ("MeanSquaredLogarithmicError", "positive", {}),
    ("MeanAbsolutePercentageError", "positive", {}),
    ("Poisson", "positive", {}), ("KLDivergence", "prob", {}), ("LogCoshError", "real", {}),
    ("CosineSimilarity", "real", {}), ("Hinge", "signs", {}), ("SquaredHinge", "signs", {}),
    ("CategoricalHinge", "prob", {}), ("BinaryCrossentropy", "binary", {}),
    ("BinaryCrossentropy", "binary", dict(label_smoothing=0.1)),
    ("CategoricalCrossentropy", "prob", {}),
    ("CategoricalCrossentropy", "prob", dict(from_logits=True, label_smoothing=0.2)),
    ("SparseCategoricalCrossentropy", "sparse", {}),
    ("SparseCategoricalCrossentropy", "sparse", dict(from_logits=True)),
    ("Accuracy", "ints", {}), ("TruePositives", "binary", {}), ("FalsePositives", "binary", {}),
    ("TrueNegatives", "binary", {}), ("FalseNegatives", "binary", {}),
]


@pytest.mark.parametrize("name, kind, args", CASES)
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_keras(name, kind, args, weighted):
    keras = _keras()
    rng = np.random.default_rng(7)
    theirs, ours = getattr(keras.metrics, name)(**args), getattr(M, name)(**args)
    for _ in range(3):
        y_true, y_pred = _batch(rng, kind)
        weights = rng.uniform(0, 2, 7).astype(np.float32) if weighted else None
        theirs.update_state(y_true, y_pred, sample_weight=weights)
        ours.update_state(y_true, y_pred, sample_weight=weights)
    want = float(keras.ops.convert_to_numpy(theirs.result()))
    assert abs(float(ours.result()) - want) <= 1e-5 * max(1.0, abs(want))
    assert ours.name == theirs.name.rsplit("_1", 1)[0]   # Keras numbers a second instance
    ours.reset_state()
    assert ours.result() == 0.0
    twin = type(ours).from_config(ours.get_config())
    assert twin.get_config() == ours.get_config()


def test_compile_takes_keras_metric_strings_and_logs_keras_numbers():
    keras = _keras()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 4)).astype(np.float32)
    y = rng.random((40, 3)).astype(np.float32) + 0.1
    names = ["mape", "msle", "poisson", "kl_divergence", "log_cosh_error", "cosine_similarity",
             "hinge"]

    def build(lib):
        return lib.Sequential([lib.layers.Input((4,)),
                               lib.layers.Dense(3, activation="softplus")])

    k_model, model = build(keras), build(pynn)
    model.set_weights(k_model.get_weights())
    k_model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", metrics=names)
    model.compile(optimizer=pynn.optimizers.SGD(0.01), loss="mse", metrics=names)
    want = k_model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history
    got = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, err_msg=key)


def test_a_keras_file_compiled_with_them_loads_compiled(tmp_path):
    keras = _keras()
    k_model = keras.Sequential([keras.layers.Input((4,)), keras.layers.Dense(3)])
    k_model.compile(optimizer="adam", loss="categorical_crossentropy",
                    metrics=[keras.metrics.CategoricalCrossentropy(from_logits=True),
                             keras.metrics.TruePositives(), "mape"])
    k_model.save(tmp_path / "m.keras")
    with pytest.warns(UserWarning, match="optimizer starts afresh"):   # never trained
        model = pynn.load_model(tmp_path / "m.keras")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 4)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 8)]
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    assert {"categorical_crossentropy", "mape"} <= set(logs)
    assert any(k.startswith("true_positives") for k in logs)   # Keras numbers its instances
    want = k_model.evaluate(x, y, verbose=0, return_dict=True)
    for key, value in want.items():
        np.testing.assert_allclose(logs[key], value, rtol=1e-5, err_msg=key)


def test_bad_arguments_name_the_metric():
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        M.BinaryCrossentropy(label_smoothing=2)
    with pytest.raises(ValueError, match="only axis=-1"):
        M.CosineSimilarity(axis=0)
    with pytest.raises(ValueError, match="sample_weight of shape"):
        M.Poisson().update_state(np.ones((3, 2)), np.ones((3, 2)), sample_weight=np.ones(4))


@pytest.mark.opencl
def test_on_opencl_the_same_logs_as_on_the_cpu():
    from tests.opencl_util import skip_without_opencl

    skip_without_opencl()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 4)).astype(np.float32)
    y = rng.random((40, 3)).astype(np.float32) + 0.1
    weights = np.linspace(0.1, 2, 40).astype(np.float32)
    names = ["mape", "msle", "poisson", "kl_divergence", "log_cosh_error", "cosine_similarity",
             "hinge", "binary_crossentropy", "true_positives", "true_negatives"]
    logs, start = {}, None
    for device in ("cpu", "opencl"):
        previous = pynn.get_device()
        pynn.set_device(device)
        try:
            model = pynn.Sequential([pynn.layers.Input((4,)),
                                     pynn.layers.Dense(3, activation="sigmoid")])
            start = start or model.get_weights()
            model.set_weights(start)
            model.compile(optimizer=pynn.optimizers.SGD(0.01), loss="mse", metrics=names)
            model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
            logs[device] = model.evaluate(x, y, sample_weight=weights, verbose=0,
                                          return_dict=True)
        finally:
            pynn.set_device(previous)
    for key, value in logs["cpu"].items():
        np.testing.assert_allclose(logs["opencl"][key], value, rtol=1e-5, err_msg=key)


@pytest.mark.parametrize("name, args", [
    ("R2Score", {}), ("R2Score", dict(class_aggregation="variance_weighted_average")),
    ("R2Score", dict(num_regressors=2)), ("R2Score", dict(class_aggregation=None)),
    ("PearsonCorrelation", {}), ("ConcordanceCorrelation", {}), ("Mean", {}), ("Sum", {}),
])
@pytest.mark.parametrize("weighted", [False, True])
def test_regression_and_reduction_metrics_match_keras(name, args, weighted):
    keras = _keras()
    rng = np.random.default_rng(11)
    theirs, ours = getattr(keras.metrics, name)(**args), getattr(M, name)(**args)
    for _ in range(3):
        y_true = rng.standard_normal((9, 4)).astype(np.float32)
        y_pred = (y_true + 0.5 * rng.standard_normal((9, 4))).astype(np.float32)
        weights = rng.uniform(0, 2, 9).astype(np.float32) if weighted else None
        if name in ("Mean", "Sum"):
            theirs.update_state(y_pred, sample_weight=weights)
            ours.update_state(y_pred, sample_weight=weights)
        else:
            theirs.update_state(y_true, y_pred, sample_weight=weights)
            ours.update_state(y_true, y_pred, sample_weight=weights)
    want = np.asarray(keras.ops.convert_to_numpy(theirs.result()), np.float64)
    np.testing.assert_allclose(np.asarray(ours.result(), np.float64), want, rtol=2e-6,
                               atol=1e-6)
    assert ours.name == theirs.name.rsplit("_1", 1)[0]


def test_r2_score_in_fit_and_its_errors():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((64, 3)).astype(np.float32)
    y = (x @ rng.standard_normal((3, 2))).astype(np.float32)
    model = pynn.Sequential([pynn.layers.Input((3,)), pynn.layers.Dense(2)])
    model.compile(optimizer=pynn.optimizers.Adam(0.05), loss="mse",
                  metrics=["r2_score", "pearson_correlation"])
    history = model.fit(x, y, epochs=30, batch_size=16, verbose=0).history
    assert history["r2_score"][-1] > 0.95 > history["r2_score"][0]
    with pytest.raises(ValueError, match="R2Score expects 2D inputs"):
        M.R2Score().update_state(np.ones((2, 3, 4)), np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="class_aggregation must be"):
        M.R2Score(class_aggregation="max")


IOU_CASES = [
    ("IoU", dict(num_classes=4, target_class_ids=[0, 2])),
    ("IoU", dict(num_classes=4, target_class_ids=[1, 3], ignore_class=0)),
    ("IoU", dict(num_classes=4, target_class_ids=[0, 1, 3], sparse_y_pred=False)),
    ("BinaryIoU", {}), ("BinaryIoU", dict(target_class_ids=[1], threshold=0.3)),
    ("OneHotIoU", dict(num_classes=4, target_class_ids=[0, 3])),
    ("OneHotMeanIoU", dict(num_classes=4)), ("MeanIoU", dict(num_classes=4)),
    ("MeanIoU", dict(num_classes=4, sparse_y_pred=False, ignore_class=2)),
]


@pytest.mark.filterwarnings("ignore:You are passing weight as `float`:UserWarning")  # Keras's
@pytest.mark.parametrize("name, args", IOU_CASES)
@pytest.mark.parametrize("weighted", [False, True])
def test_iou_metrics_match_keras(name, args, weighted):
    """Keras counts its confusion matrix in int32 by default, so float sample weights are
    cut to integers there; pynn does the same (dtype="float32" keeps them)."""
    keras = _keras()
    rng = np.random.default_rng(13)
    theirs, ours = getattr(keras.metrics, name)(**args), getattr(M, name)(**args)
    for _ in range(3):
        ids_true, ids_pred = rng.integers(0, 4, 12), rng.integers(0, 4, 12)
        if name == "BinaryIoU":
            y_true = (rng.random(12) > 0.5).astype(np.float32)
            y_pred = rng.random(12).astype(np.float32)
        elif name.startswith("OneHot"):
            y_true = np.eye(4, dtype=np.float32)[ids_true]
            y_pred = rng.dirichlet(np.ones(4), 12).astype(np.float32)
        else:
            y_true = ids_true.astype(np.float32)
            y_pred = (rng.dirichlet(np.ones(4), 12).astype(np.float32)
                      if args.get("sparse_y_pred") is False else ids_pred.astype(np.float32))
        weights = rng.uniform(0, 3, 12).astype(np.float32) if weighted else None
        theirs.update_state(y_true, y_pred, sample_weight=weights)
        ours.update_state(y_true, y_pred, sample_weight=weights)
    want = float(keras.ops.convert_to_numpy(theirs.result()))
    assert abs(ours.result() - want) <= 1e-6
    assert type(ours).from_config(ours.get_config()).get_config() == ours.get_config()


@pytest.mark.parametrize("name, args", [
    ("SensitivityAtSpecificity", dict(specificity=0.6)),
    ("SpecificityAtSensitivity", dict(sensitivity=0.7)),
    ("PrecisionAtRecall", dict(recall=0.5)), ("RecallAtPrecision", dict(precision=0.6)),
    ("PrecisionAtRecall", dict(recall=0.5, num_thresholds=7)),
    ("RecallAtPrecision", dict(precision=0.6, class_id=1)),
    ("SensitivityAtSpecificity", dict(specificity=0.5, num_thresholds=1)),
])
@pytest.mark.parametrize("weighted", [False, True])
def test_rates_at_a_constraint_match_keras(name, args, weighted):
    keras = _keras()
    rng = np.random.default_rng(17)
    theirs, ours = getattr(keras.metrics, name)(**args), getattr(M, name)(**args)
    for _ in range(3):
        y_true = (rng.random((10, 3)) > 0.5).astype(np.float32)
        y_pred = np.clip(0.3 * y_true + 0.7 * rng.random((10, 3)), 0, 1).astype(np.float32)
        weights = rng.uniform(0, 2, 10).astype(np.float32) if weighted else None
        theirs.update_state(y_true, y_pred, sample_weight=weights)
        ours.update_state(y_true, y_pred, sample_weight=weights)
    want = float(keras.ops.convert_to_numpy(theirs.result()))
    assert abs(ours.result() - want) <= 1e-6
    assert type(ours).from_config(ours.get_config()).get_config() == ours.get_config()
    with pytest.raises(ValueError, match="must be in the range"):
        getattr(M, name)(1.5)
