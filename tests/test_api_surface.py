"""Keras 3's public API around the layers (pynn.activations, config, random, tree, the metric
functions, LossScaleOptimizer, MultiOptimizer, EMA and SwapEMAWeights, RemoteMonitor,
OrthogonalRegularizer, CosineDecayRestarts, the keras.utils / saving / backend / models
helpers): each against Keras on torch where Keras is deterministic, against statistics where
it draws (keras.random), and every public name of the Keras submodules present in pynn but
for the commented refusals below.
"""

import http.server
import importlib
import json
import threading
import urllib.parse
import warnings
import wave

import numpy as np
import pytest

import pynn
from pynn import ops
from tests.backend_util import keras_on_torch
from tests.test_ops import check_grad

# -- the surface -----------------------------------------------------------------------------
SUBMODULES = ("activations", "losses", "metrics", "optimizers", "optimizers.schedules",
              "callbacks", "initializers", "regularizers", "utils", "saving", "models",
              "backend", "config", "random", "tree")

# Names pynn refuses on purpose, each with its reason.
REFUSED = {
    # Keras 2's optimizers, a stub module in Keras 3 that only raises
    ("optimizers", "legacy"),
    # Orbax is JAX's checkpointing library; pynn's checkpoints are ModelCheckpoint and
    # BackupAndRestore
    ("callbacks", "OrbaxCheckpoint"),
    # a structured-data preprocessing Layer built on tf.data: the layers' work, not this API's
    ("utils", "FeatureSpace"),
    # downloads files from the network: pynn fetches nothing at run time
    ("utils", "get_file"),
    # Keras 2's utils kept for tf.keras, a stub in Keras 3
    ("utils", "legacy"),
    # an interactive editor of .keras weight trees (h5 groups); pynn.load_model / save read and
    # write .keras files whole
    ("saving", "KerasFileEditor"),
}


def _resolve(root, dotted):
    for part in dotted.split("."):
        root = getattr(root, part)
    return root


def test_every_public_keras_name_is_in_pynn_or_refused_with_a_reason():
    keras = keras_on_torch()
    missing = []
    for sub in SUBMODULES:
        kmod = importlib.import_module(f"keras.{sub}")
        pmod = _resolve(pynn, sub)
        for name in sorted(n for n in dir(kmod) if not n.startswith("_")):
            if (sub, name) in REFUSED:
                continue
            if not hasattr(pmod, name):
                missing.append(f"{sub}.{name}")
    assert not missing, f"keras names pynn lacks: {missing}"
    # a refusal of a name pynn has after all is stale
    stale = [f"{s}.{n}" for s, n in REFUSED if hasattr(_resolve(pynn, s), n)]
    assert not stale, f"refused names that pynn has: {stale}"
    assert keras.backend.backend() == "torch"


# -- activations -----------------------------------------------------------------------------
def _x(*shape, seed=0):
    a = np.random.default_rng(seed + sum(shape)).standard_normal(shape) * 2.0
    a.flat[0] = 0.625
    return a


ACTIVATION_CALLS = {
    "relu": {}, "relu_params": dict(negative_slope=0.1, max_value=1.5, threshold=0.3),
    "relu_cap": dict(max_value=6.0), "leaky_relu": dict(negative_slope=0.3), "relu6": {},
    "elu": dict(alpha=0.7), "selu": {}, "softplus": {}, "softsign": {},
    "soft_shrink": dict(threshold=0.4), "sparse_plus": {}, "silu": {}, "swish": {},
    "squareplus": dict(b=3), "gelu": {}, "gelu_tanh": dict(approximate=True),
    "celu": dict(alpha=0.5), "glu": {}, "tanh": {}, "tanh_shrink": {}, "hard_tanh": {},
    "hard_shrink": dict(threshold=0.6), "threshold": dict(threshold=0.2, default_value=-1.0),
    "sigmoid": {}, "exponential": {}, "hard_sigmoid": {}, "log_sigmoid": {},
    "sparse_sigmoid": {}, "hard_silu": {}, "hard_swish": {}, "linear": {}, "mish": {},
    "log_softmax": {}, "softmax": {}, "sparsemax": {},
}


def _activation(module, case):
    name = case.split("_params")[0].split("_cap")[0].replace("gelu_tanh", "gelu")
    return getattr(module, name)


@pytest.mark.parametrize("case", sorted(ACTIVATION_CALLS))
def test_activation_matches_keras_values_and_gradients(case):
    keras = keras_on_torch()
    import torch
    kwargs = ACTIVATION_CALLS[case]
    x = _x(3, 8).astype(np.float32)
    got = np.asarray(_activation(pynn.activations, case)(x, **kwargs))
    xt = torch.tensor(x, requires_grad=True)
    want_t = _activation(keras.activations, case)(xt, **kwargs)
    want = want_t.detach().numpy()
    assert got.shape == want.shape, case
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6, err_msg=case)
    r = np.random.default_rng(3).standard_normal(want.shape).astype(np.float32)
    (want_t * torch.tensor(r)).sum().backward()
    t = ops.convert_to_tensor(x)
    with pynn.GradientTape() as tape:
        tape.watch(t)
        loss = ops.sum(ops.multiply(_activation(pynn.activations, case)(t, **kwargs), r))
    grad = tape.gradient(loss, t)
    if case == "linear":
        return  # the identity: Keras's and pynn's gradient is r itself
    np.testing.assert_allclose(np.asarray(grad), xt.grad.numpy(), rtol=1e-4, atol=2e-5,
                               err_msg=f"{case} gradient")


@pytest.mark.parametrize("case", ["relu_params", "gelu", "elu", "soft_shrink", "softmax"])
def test_activation_gradient_against_central_differences(case):
    kwargs = ACTIVATION_CALLS[case]
    x = _x(2, 5, seed=2)
    x[np.abs(x - 0.3) < 0.05] += 0.2  # keep away from relu's threshold kink
    x[np.abs(np.abs(x) - 0.4) < 0.05] += 0.2
    check_grad(case, lambda a: _activation(pynn.activations, case)(a, **kwargs), [x])


def test_activation_get_serialize_deserialize_and_layers_fuse_them():
    act = pynn.activations
    assert act.get(None) is act.linear
    assert act.get("relu") is act.relu
    assert act.serialize(act.swish) == "silu" and act.deserialize("swish") is act.silu
    assert act.deserialize({"class_name": "function", "config": "gelu"}) is act.gelu
    with pytest.raises(ValueError, match="unknown activation"):
        act.deserialize("no_such_activation")
    with pytest.raises(ValueError, match="could not interpret"):
        act.get(3)
    layer = pynn.layers.Dense(3, activation=act.relu)
    assert layer.get_config()["activation"] == "relu"
    inp = pynn.Input((4,))
    model = pynn.Model(inp, act.relu(inp, max_value=0.5))
    y = model.predict(_x(5, 4).astype(np.float32), verbose=0)
    assert y.max() <= 0.5 and y.min() >= 0.0


def test_activation_bad_arguments_name_the_function():
    x = _x(2, 3).astype(np.float32)
    with pytest.raises(ValueError, match="relu: threshold must be >= 0"):
        pynn.activations.relu(x, threshold=-1.0)
    with pytest.raises(ValueError, match="relu: max_value must be a finite number"):
        pynn.activations.relu(x, max_value=float("nan"))
    with pytest.raises(ValueError, match="glu"):
        pynn.activations.glu(x)  # an odd last axis cannot be halved


# -- metric functions -------------------------------------------------------------------------
def _metric_data():
    rng = np.random.default_rng(0)
    b, k = 7, 5
    logits = rng.normal(size=(b, k)).astype("float32")
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    onehot = np.eye(k, dtype="float32")[rng.integers(0, k, b)]
    labels = onehot.argmax(-1)
    reg_t = rng.normal(size=(b, k)).astype("float32")
    reg_p = rng.normal(size=(b, k)).astype("float32")
    bin_t = (rng.random((b, k)) > 0.5).astype("float32")
    bin_p = rng.random((b, k)).astype("float32")
    return dict(logits=logits, probs=probs, onehot=onehot, labels=labels, reg_t=reg_t,
                reg_p=reg_p, bin_t=bin_t, bin_p=bin_p)


METRIC_CASES = [
    ("binary_accuracy", "bin_t", "bin_p", {}), ("binary_accuracy", "bin_t", "bin_p",
                                                dict(threshold=0.7)),
    ("categorical_accuracy", "onehot", "probs", {}),
    ("sparse_categorical_accuracy", "labels", "probs", {}),
    ("top_k_categorical_accuracy", "onehot", "probs", dict(k=2)),
    ("sparse_top_k_categorical_accuracy", "labels", "probs", {}),
    ("sparse_top_k_categorical_accuracy", "labels", "probs", dict(k=2)),
    ("pearson_correlation", "reg_t", "reg_p", {}),
    ("concordance_correlation", "reg_t", "reg_p", {}),
    ("mean_squared_error", "reg_t", "reg_p", {}), ("mean_absolute_error", "reg_t", "reg_p", {}),
    ("mean_absolute_percentage_error", "reg_t", "reg_p", {}),
    ("mean_squared_logarithmic_error", "bin_p", "probs", {}),
    ("hinge", "bin_t", "reg_p", {}), ("squared_hinge", "bin_t", "reg_p", {}),
    ("categorical_hinge", "onehot", "reg_p", {}), ("huber", "reg_t", "reg_p", dict(delta=0.3)),
    ("log_cosh", "reg_t", "reg_p", {}), ("kl_divergence", "bin_p", "probs", {}),
    ("poisson", "bin_p", "probs", {}), ("binary_crossentropy", "bin_t", "bin_p", {}),
    ("binary_crossentropy", "bin_t", "reg_p", dict(from_logits=True, label_smoothing=0.1)),
    ("binary_focal_crossentropy", "bin_t", "reg_p",
     dict(from_logits=True, apply_class_balancing=True)),
    ("categorical_crossentropy", "onehot", "probs", {}),
    ("categorical_crossentropy", "onehot", "logits", dict(from_logits=True,
                                                          label_smoothing=0.2)),
    ("categorical_focal_crossentropy", "onehot", "probs", {}),
    ("sparse_categorical_crossentropy", "labels", "probs", {}),
    ("sparse_categorical_crossentropy", "labels", "logits", dict(from_logits=True,
                                                                 ignore_class=2)),
]


@pytest.mark.parametrize("case", range(len(METRIC_CASES)),
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(METRIC_CASES)])
def test_metric_function_matches_keras(case):
    keras = keras_on_torch()
    name, t, p, kwargs = METRIC_CASES[case]
    data = _metric_data()
    want = np.asarray(getattr(keras.metrics, name)(data[t], data[p], **kwargs))
    got = np.asarray(getattr(pynn.metrics, name)(data[t], data[p], **kwargs))
    assert got.shape == want.shape, f"{name}: {got.shape} != Keras's {want.shape}"
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6, err_msg=name)


def test_metric_functions_in_compile_and_their_bad_inputs():
    data = _metric_data()
    model = pynn.Sequential([pynn.Input((5,)), pynn.layers.Dense(5, activation="softmax")])
    model.compile("sgd", "categorical_crossentropy",
                  metrics=[pynn.metrics.categorical_accuracy, pynn.metrics.pearson_correlation])
    logs = model.evaluate(data["reg_t"], data["onehot"], verbose=0, return_dict=True)
    assert {"categorical_accuracy", "pearson_correlation"} <= set(logs)
    with pytest.raises(ValueError, match="categorical_accuracy: y_true .* must match"):
        pynn.metrics.categorical_accuracy(data["labels"], data["probs"])
    with pytest.raises(ValueError, match="k must be a positive int"):
        pynn.metrics.top_k_categorical_accuracy(data["onehot"], data["probs"], k=0)
    with pytest.raises(ValueError, match="huber: delta must be a positive"):
        pynn.metrics.huber(data["reg_t"], data["reg_p"], delta=-1.0)
    with pytest.raises(ValueError, match="only the last axis"):
        pynn.metrics.categorical_crossentropy(data["onehot"], data["probs"], axis=0)


def test_losses_huber_and_deserialize():
    data = _metric_data()
    got = pynn.losses.huber(data["reg_t"], data["reg_p"], delta=0.5)
    want = float(np.mean(np.asarray(pynn.metrics.huber(data["reg_t"], data["reg_p"], 0.5))))
    assert abs(float(np.asarray(got)) - want) < 1e-5
    loss = pynn.losses.deserialize({"class_name": "Huber", "config": {"delta": 2.0}})
    assert isinstance(loss, pynn.losses.Huber) and loss.delta == 2.0
    assert isinstance(pynn.losses.deserialize("mse"), pynn.losses.MeanSquaredError)
    with pytest.raises(ValueError, match="Unknown loss"):
        pynn.losses.deserialize("nope")
    metric = pynn.metrics.deserialize({"class_name": "BinaryAccuracy",
                                       "config": {"threshold": 0.3}})
    assert metric.threshold == 0.3


# -- initializers, regularizers, schedules -----------------------------------------------------
def test_initializer_function_names_are_keras_classes_and_deserialize():
    init = pynn.initializers
    assert init.glorot_uniform is init.GlorotUniform and init.stft is init.STFT
    assert init.he_normal is init.HeNormal and init.constant is init.Constant
    a = init.glorot_uniform(seed=3)((40, 60))
    assert abs(np.abs(a).max() - np.sqrt(6 / 100)) < 0.02 and abs(a.mean()) < 0.01
    c = init.deserialize({"class_name": "Constant", "config": {"value": 2.5}})
    np.testing.assert_array_equal(c((2, 3)), np.full((2, 3), 2.5, np.float32))
    assert isinstance(init.deserialize("he_uniform"), init.HeUniform)
    with pytest.raises(ValueError, match="Unknown initializer"):
        init.deserialize("nope")


@pytest.mark.parametrize("mode", ["rows", "columns"])
def test_orthogonal_regularizer_matches_keras_value_and_gradient(mode):
    keras = keras_on_torch()
    import torch
    w = _x(5, 7, seed=1).astype(np.float32)
    wt = torch.tensor(w, requires_grad=True)
    penalty_t = keras.regularizers.OrthogonalRegularizer(0.03, mode)(wt)
    penalty_t.backward()
    want = penalty_t.detach().numpy()
    reg = pynn.regularizers.OrthogonalRegularizer(0.03, mode)
    assert abs(reg(w) - float(want)) < 1e-6
    grad = np.zeros_like(w)
    penalty = reg.apply_inplace(w, grad)
    assert abs(penalty - float(want)) < 1e-6
    np.testing.assert_allclose(grad, wt.grad.numpy(), rtol=1e-4, atol=1e-7)


def test_orthogonal_regularizer_gradient_against_central_differences_and_errors():
    reg = pynn.regularizers.orthogonal_regularizer(factor=0.2, mode="columns")
    w = _x(6, 4, seed=5)
    check_grad("orthogonal_regularizer", lambda a: reg._penalty(a), [w])
    config = pynn.regularizers.serialize(reg)
    assert pynn.regularizers.deserialize(config).get_config() == {"factor": 0.2,
                                                                  "mode": "columns"}
    with pytest.raises(ValueError, match="mode"):
        pynn.regularizers.OrthogonalRegularizer(mode="diagonal")
    with pytest.raises(ValueError, match="factor"):
        pynn.regularizers.OrthogonalRegularizer(factor=-1.0)
    with pytest.raises(ValueError, match="rank 2"):
        reg(np.ones((2, 3, 4), np.float32))


def test_cosine_decay_restarts_matches_keras():
    keras = keras_on_torch()
    for kwargs in (dict(t_mul=2.0, m_mul=0.5, alpha=0.1), dict(t_mul=1.0, m_mul=0.9), {}):
        k = keras.optimizers.schedules.CosineDecayRestarts(0.1, 7, **kwargs)
        p = pynn.optimizers.schedules.CosineDecayRestarts(0.1, 7, **kwargs)
        np.testing.assert_allclose([p(s) for s in range(80)], [float(k(s)) for s in range(80)],
                                   rtol=1e-5, atol=1e-9, err_msg=str(kwargs))  # Keras: float32
        assert p.get_config() == k.get_config()
    restored = pynn.schedules.deserialize(pynn.schedules.serialize(p))
    assert restored(13) == p(13)
    with pytest.raises(ValueError, match="first_decay_steps"):
        pynn.schedules.CosineDecayRestarts(0.1, 0)


# -- optimizers: EMA, LossScaleOptimizer, MultiOptimizer ----------------------------------------
def _pair_models(keras, layers=1, regularize=False):
    rng = np.random.default_rng(0)
    k_layers, p_layers = [keras.Input((4,))], [pynn.Input((4,))]
    for i in range(layers):
        units = 2 if i == layers - 1 else 3
        k_layers.append(keras.layers.Dense(units, name=f"d{i}", kernel_regularizer=(
            keras.regularizers.L2(0.01) if regularize else None)))
        p_layers.append(pynn.layers.Dense(units, name=f"d{i}", kernel_regularizer=(
            pynn.regularizers.L2(0.01) if regularize else None)))
    km, pm = keras.Sequential(k_layers), pynn.Sequential(p_layers)
    pm.set_weights(km.get_weights())
    x = rng.normal(size=(16, 4)).astype("float32")
    y = rng.normal(size=(16, 2)).astype("float32")
    return km, pm, x, y


def _max_diff(km, pm):
    return max(float(np.abs(a - b).max()) for a, b in zip(km.get_weights(), pm.get_weights()))


@pytest.mark.parametrize("swap_on_epoch", [False, True])
def test_ema_and_swap_ema_weights_match_keras(swap_on_epoch):
    keras = keras_on_torch()
    km, pm, x, y = _pair_models(keras)
    km.compile(keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=0.9), "mse")
    pm.compile(pynn.optimizers.SGD(0.1, use_ema=True, ema_momentum=0.9), "mse")
    fit = dict(batch_size=8, epochs=3, shuffle=False, verbose=0, validation_data=(x, y))
    kh = km.fit(x, y, callbacks=[keras.callbacks.SwapEMAWeights(swap_on_epoch)], **fit)
    ph = pm.fit(x, y, callbacks=[pynn.callbacks.SwapEMAWeights(swap_on_epoch)], **fit)
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(ph.history[key], kh.history[key], rtol=1e-5, err_msg=key)
    assert _max_diff(km, pm) < 1e-6


def test_ema_overwrite_frequency_and_its_errors():
    keras = keras_on_torch()
    km, pm, x, y = _pair_models(keras)
    km.compile(keras.optimizers.Adam(0.05, use_ema=True, ema_overwrite_frequency=3), "mse")
    pm.compile(pynn.optimizers.Adam(0.05, use_ema=True, ema_overwrite_frequency=3), "mse")
    for i in range(7):
        km.train_on_batch(x[i:i + 4], y[i:i + 4])
        pm.train_on_batch(x[i:i + 4], y[i:i + 4])
    assert _max_diff(km, pm) < 1e-6
    assert pm.optimizer.get_config()["ema_overwrite_frequency"] == 3
    with pytest.raises(ValueError, match="ema_overwrite_frequency"):
        pynn.optimizers.SGD(use_ema=True, ema_overwrite_frequency=0)
    with pytest.raises(ValueError, match="ema_momentum"):
        pynn.optimizers.SGD(use_ema=True, ema_momentum=1.5)
    plain = pynn.Sequential([pynn.Input((4,)), pynn.layers.Dense(2)])
    plain.compile("sgd", "mse")
    with pytest.raises(ValueError, match="use_ema=True"):
        plain.fit(x, y, epochs=1, verbose=0, validation_data=(x, y),
                  callbacks=[pynn.callbacks.SwapEMAWeights()])


def test_loss_scale_optimizer_skips_overflowing_steps_as_keras():
    """Scaled by 2**126 the gradients of a loss of ~1e5 overflow float32: each such step is
    skipped and halves the scale until they fit; then finite steps double it every
    dynamic_growth_steps (and overflow again), all as Keras's on torch."""
    keras = keras_on_torch()
    km, pm, x, y = _pair_models(keras, regularize=True)
    y = y * 300
    ko = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1), initial_scale=2.0 ** 126,
                                             dynamic_growth_steps=3)
    po = pynn.optimizers.LossScaleOptimizer(pynn.optimizers.SGD(0.1), initial_scale=2.0 ** 126,
                                            dynamic_growth_steps=3)
    km.compile(ko, "mse")
    pm.compile(po, "mse")
    scales, skipped = [], 0
    for step in range(12):
        lo = step % 2 * 8
        km.train_on_batch(x[lo:lo + 8], y[lo:lo + 8])
        before = po.iterations
        pm.train_on_batch(x[lo:lo + 8], y[lo:lo + 8])
        skipped += po.iterations == before
        assert po.dynamic_scale == float(ko.dynamic_scale.numpy()), f"step {step}"
        assert po.iterations == int(ko.iterations.numpy()), f"step {step}"
        scales.append(po.dynamic_scale)
    assert skipped >= 6 and max(scales) > min(scales)
    assert _max_diff(km, pm) < 1e-4
    config = pynn.optimizers.serialize(po)
    again = pynn.optimizers.deserialize(config)
    assert again.initial_scale == 2.0 ** 126 and isinstance(again.inner_optimizer,
                                                             pynn.optimizers.SGD)


def test_loss_scale_optimizer_bad_arguments():
    with pytest.raises(ValueError, match="does not support `clipnorm`"):
        pynn.optimizers.LossScaleOptimizer(pynn.optimizers.SGD(), clipnorm=1.0)
    with pytest.raises(ValueError, match="dynamic=False"):
        pynn.optimizers.LossScaleOptimizer(pynn.optimizers.SGD(), dynamic=False)
    with pytest.raises(ValueError, match="dynamic_growth_steps"):
        pynn.optimizers.LossScaleOptimizer(pynn.optimizers.SGD(), dynamic_growth_steps=0)
    with pytest.raises(ValueError, match="inner_optimizer"):
        pynn.optimizers.LossScaleOptimizer(pynn.optimizers.LossScaleOptimizer(
            pynn.optimizers.SGD()))


def test_multi_optimizer_matches_keras_and_saves(tmp_path):
    keras = keras_on_torch()
    km, pm, x, y = _pair_models(keras, layers=2)
    ko = keras.optimizers.MultiOptimizer(keras.optimizers.OptimizerMap(
        keras.optimizers.SGD(0.1), {".*d0/.*": keras.optimizers.Adam(0.01)}))
    po = pynn.optimizers.MultiOptimizer(pynn.optimizers.OptimizerMap(
        pynn.optimizers.SGD(0.1), {".*d0/.*": pynn.optimizers.Adam(0.01)}))
    km.compile(ko, "mse")
    pm.compile(po, "mse")
    km.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    pm.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    assert _max_diff(km, pm) < 1e-6 and po.iterations == int(ko.iterations.numpy()) == 8
    path = tmp_path / "multi.pynn"
    pm.save(path)
    again = pynn.load_model(path)
    assert type(again.optimizer) is pynn.optimizers.MultiOptimizer
    again.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    pm.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(again.get_weights()[0], pm.get_weights()[0], rtol=1e-6)
    with pytest.raises(AttributeError, match="MultiOptimizer"):
        po.learning_rate  # noqa: B018
    mapping = pynn.optimizers.OptimizerMap(pynn.optimizers.SGD(), {"a/.*": pynn.optimizers.SGD(),
                                                                   ".*": pynn.optimizers.SGD()})
    with pytest.raises(ValueError, match="Multiple optimizers"):
        mapping["a/kernel"]  # noqa: B018
    with pytest.raises(ValueError, match="cannot be LossScaleOptimizer"):
        mapping["b"] = pynn.optimizers.LossScaleOptimizer(pynn.optimizers.SGD())


# -- callbacks: RemoteMonitor -----------------------------------------------------------------
class _Recorder(http.server.BaseHTTPRequestHandler):
    received = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.path, self.headers["Content-Type"], body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("send_as_json", [False, True])
def test_remote_monitor_posts_each_epochs_logs_to_a_local_server(send_as_json):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Recorder.received = []
    try:
        model = pynn.Sequential([pynn.Input((3,)), pynn.layers.Dense(1)])
        model.compile("sgd", "mse")
        root = f"http://127.0.0.1:{server.server_address[1]}"
        monitor = pynn.callbacks.RemoteMonitor(root=root, path="/epoch", field="logs",
                                               headers={"X-Run": "7"},
                                               send_as_json=send_as_json)
        x = np.ones((4, 3), np.float32)
        model.fit(x, np.ones((4, 1), np.float32), epochs=2, verbose=0, callbacks=[monitor])
    finally:
        server.shutdown()
        server.server_close()
    assert len(_Recorder.received) == 2
    path, ctype, body = _Recorder.received[1]
    assert path == "/epoch"
    if send_as_json:
        assert ctype == "application/json"
        sent = json.loads(body)
    else:
        assert ctype == "application/x-www-form-urlencoded"
        sent = json.loads(urllib.parse.parse_qs(body.decode())["logs"][0])
    assert sent["epoch"] == 1 and isinstance(sent["loss"], float)


def test_remote_monitor_unreachable_server_warns_and_bad_root_is_refused():
    monitor = pynn.callbacks.RemoteMonitor(root="http://127.0.0.1:9")
    with pytest.warns(UserWarning, match="Could not reach RemoteMonitor"):
        monitor.on_epoch_end(0, {"loss": np.float32(1.5)})
    with pytest.raises(ValueError, match="http"):
        pynn.callbacks.RemoteMonitor(root="ftp://example")


# -- config and backend -----------------------------------------------------------------------
def test_config_settings_and_refusals():
    cfg = pynn.config
    assert cfg.backend() == "pynn" and pynn.backend.backend() == "pynn"
    assert cfg.epsilon() == pynn.backend.epsilon() == 1e-7
    assert cfg.image_data_format() == "channels_last"
    cfg.set_image_data_format("channels_last")
    with pytest.raises(ValueError, match="channels_first.*not supported"):
        cfg.set_image_data_format("channels_first")
    with pytest.raises(ValueError, match="expected 'channels_last'"):
        pynn.backend.set_image_data_format("nhwc")
    cfg.set_epsilon(1e-7)
    with pytest.raises(ValueError, match="compiled in"):
        cfg.set_epsilon(1e-5)
    with pytest.raises(ValueError, match="cannot switch to 'jax'"):
        cfg.set_backend("jax")
    assert cfg.is_nnx_enabled() is False
    cfg.disable_interactive_logging()
    assert not pynn.utils.is_interactive_logging_enabled()
    cfg.enable_interactive_logging()
    assert cfg.is_interactive_logging_enabled()
    cfg.enable_flash_attention()
    assert cfg.is_flash_attention_enabled() is True
    cfg.disable_flash_attention()
    assert cfg.dtype_policy().name == "float32"


def test_max_epochs_and_max_steps_per_epoch_cap_fit():
    model = pynn.Sequential([pynn.Input((3,)), pynn.layers.Dense(1)])
    model.compile("sgd", "mse")
    x, y = np.ones((40, 3), np.float32), np.ones((40, 1), np.float32)
    pynn.config.set_max_epochs(2)
    pynn.config.set_max_steps_per_epoch(3)
    try:
        history = model.fit(x, y, epochs=10, batch_size=4, verbose=0)
    finally:
        pynn.config.set_max_epochs(None)
        pynn.config.set_max_steps_per_epoch(None)
    assert len(history.history["loss"]) == 2 and model.optimizer.iterations == 6
    with pytest.raises(ValueError, match="positive int"):
        pynn.config.set_max_epochs(0)


def test_backend_dtype_helpers_match_keras():
    keras = keras_on_torch()
    names = ["bool", "uint8", "uint16", "uint32", "int8", "int16", "int32", "int64", "float16",
             "bfloat16", "float32", "float64", int, float]
    for a in names:
        for b in names:
            assert pynn.backend.result_type(a, b) == keras.backend.result_type(a, b), (a, b)
    for d in (None, int, float, bool, "int", np.float32, np.dtype("int8"), "bfloat16"):
        assert pynn.utils.standardize_dtype(d) == keras.utils.standardize_dtype(d), d
    with pytest.raises(ValueError, match="Invalid dtype"):
        pynn.backend.standardize_dtype("float")
    assert pynn.backend.is_float_dtype("bfloat16") and pynn.backend.is_int_dtype("uint8")
    assert pynn.backend.get_uid("api_test") + 1 == pynn.backend.get_uid("api_test")
    assert pynn.backend.is_keras_tensor(pynn.Input((2,)))
    assert not pynn.utils.is_keras_tensor(np.ones(2))


def test_clear_session_restarts_layer_names():
    pynn.utils.clear_session()
    first = pynn.layers.Dense(2).name
    pynn.layers.Dense(2)
    pynn.backend.clear_session()
    assert pynn.layers.Dense(2).name == first == "dense"


# -- random -----------------------------------------------------------------------------------
def test_random_distributions_moments_and_ks():
    from scipy import stats
    r = pynn.random
    n = 20000
    z = np.asarray(r.normal((n,), mean=1.0, stddev=2.0, seed=1), np.float64)
    assert abs(z.mean() - 1.0) < 0.05 and abs(z.std() - 2.0) < 0.05
    assert stats.kstest((z - 1.0) / 2.0, "norm").pvalue > 1e-3
    u = np.asarray(r.uniform((n,), minval=-2.0, maxval=3.0, seed=2), np.float64)
    assert u.min() >= -2.0 and u.max() < 3.0
    assert stats.kstest((u + 2.0) / 5.0, "uniform").pvalue > 1e-3
    t = np.asarray(r.truncated_normal((n,), stddev=0.5, seed=3), np.float64)
    assert np.abs(t).max() <= 1.0
    assert stats.kstest(t / 0.5, stats.truncnorm(-2, 2).cdf).pvalue > 1e-3
    k = np.asarray(r.randint((n,), 3, 9, seed=4))
    assert k.dtype == np.int32 and k.min() == 3 and k.max() == 8
    assert stats.chisquare(np.bincount(k - 3)).pvalue > 1e-3
    g = np.asarray(r.gamma((n,), alpha=2.5, seed=5), np.float64)
    assert stats.kstest(g, stats.gamma(2.5).cdf).pvalue > 1e-3
    bt = np.asarray(r.beta((n,), 2.0, 5.0, seed=6), np.float64)
    assert stats.kstest(bt, stats.beta(2.0, 5.0).cdf).pvalue > 1e-3
    bn = np.asarray(r.binomial((n,), 10, 0.3, seed=7))
    assert bn.dtype == np.float32 and abs(bn.mean() - 3.0) < 0.05
    logits = np.log(np.array([[0.1, 0.6, 0.3], [0.5, 0.25, 0.25]], np.float32))
    c = np.asarray(r.categorical(logits, 6000, seed=8))
    assert c.shape == (2, 6000)
    np.testing.assert_allclose(np.bincount(c[0], minlength=3) / 6000, [0.1, 0.6, 0.3],
                               atol=0.02)


def test_random_seeds_and_seed_generator_streams():
    r = pynn.random
    a = np.asarray(r.normal((5, 7), seed=11))
    np.testing.assert_array_equal(a, np.asarray(r.normal((5, 7), seed=11)))
    assert not np.array_equal(a, np.asarray(r.normal((5, 7), seed=12)))
    gen = r.SeedGenerator(11)
    first = np.asarray(r.normal((5, 7), seed=gen))
    second = np.asarray(r.normal((5, 7), seed=gen))
    np.testing.assert_array_equal(first, a)  # the generator's first draw is its seed's
    assert not np.array_equal(first, second) and int(gen.state[1]) == 70
    again = r.SeedGenerator.from_config(gen.get_config())
    np.testing.assert_array_equal(np.asarray(r.normal((5, 7), seed=again)), a)
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    s = np.asarray(r.shuffle(x, seed=3))
    assert sorted(s[:, 0].tolist()) == x[:, 0].tolist() and (s[:, 1] - s[:, 0] == 1).all()
    d = np.asarray(r.dropout(np.ones((400, 6), np.float32), 0.25, noise_shape=(400, 1),
                             seed=5))
    assert set(np.unique(d).tolist()) <= {0.0, float(np.float32(1) / np.float32(0.75))}
    assert (d == d[:, :1]).all()
    assert abs((d[:, 0] == 0).mean() - 0.25) < 0.07


def test_random_bad_arguments():
    r = pynn.random
    with pytest.raises(ValueError, match="normal: shape"):
        r.normal((2, -1))
    with pytest.raises(ValueError, match="uniform: maxval must be > minval"):
        r.uniform((2,), 1.0, 1.0)
    with pytest.raises(ValueError, match="randint: dtype must be an integer"):
        r.randint((2,), 0, 3, dtype="float32")
    with pytest.raises(ValueError, match="dropout: rate"):
        r.dropout(np.ones(3, np.float32), 1.0)
    with pytest.raises(ValueError, match="categorical: logits must be 2-D"):
        r.categorical(np.ones(3, np.float32), 2)
    with pytest.raises(ValueError, match="gamma: alpha must be positive"):
        r.gamma((2,), -1.0)
    with pytest.raises(ValueError, match="binomial: probabilities"):
        r.binomial((2,), 3, 1.5)
    with pytest.raises(ValueError, match="seed must be an int"):
        r.normal((2,), seed="x")
    with pytest.raises(ValueError, match="dtype must be a float"):
        r.normal((2,), dtype="int32")


@pytest.mark.opencl
def test_random_and_activations_on_opencl_match_the_cpu():
    from tests.test_ops_device import _on
    results = {}
    x = _x(4, 9).astype(np.float32)
    for device in ("cpu", "opencl"):
        with _on(device) as b:
            results[device] = [
                np.asarray(pynn.random.normal((6, 5), seed=21)),
                np.asarray(pynn.random.uniform((6, 5), seed=22)),
                np.asarray(pynn.random.truncated_normal((6, 5), seed=23)),
                np.asarray(pynn.random.dropout(b.asarray(np.ones((6, 5)), np.float32), 0.5,
                                               seed=24)),
                np.asarray(pynn.activations.relu(b.asarray(x, np.float32), negative_slope=0.1,
                                                 max_value=1.0, threshold=0.2)),
                np.asarray(pynn.metrics.concordance_correlation(b.asarray(x, np.float32),
                                                                b.asarray(x[::-1],
                                                                          np.float32))),
            ]
    for i, (want, got) in enumerate(zip(results["cpu"], results["opencl"])):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6, err_msg=f"draw {i}")


# -- tree -------------------------------------------------------------------------------------
def _structures():
    import collections
    point = collections.namedtuple("Point", ["x", "y"])
    # Keras on torch sorts the keys of the outermost dicts only (below a sorted dict its torch
    # tree keeps insertion order; optree, and pynn, sort every dict): dicts in dicts are not
    # compared
    return [
        {"b": [1, None, (2, 3)], "a": 4},
        [{"z": 4, "c": 5}, (6,)],
        [1, (2, [3, 4]), point(5, [6])],
        collections.OrderedDict([("z", 1), ("a", [2, 3])]),
        7, None, [], (8,),
    ]


def test_tree_matches_keras_tree():
    keras = keras_on_torch()
    kt, pt = keras.tree, pynn.tree
    for s in _structures():
        assert pt.flatten(s) == kt.flatten(s), s
        assert pt.is_nested(s) == kt.is_nested(s), s
        assert pt.flatten_with_path(s) == kt.flatten_with_path(s), s
        flat = list(range(len(kt.flatten(s))))
        assert pt.pack_sequence_as(s, flat) == kt.pack_sequence_as(s, flat), s
        double = (lambda v: None if v is None else v * 2)
        assert pt.map_structure(double, s) == kt.map_structure(double, s), s
        assert pt.lists_to_tuples(s) == kt.lists_to_tuples(s), s
    a, b = {"x": [1, 2], "y": 3}, {"y": 10, "x": [20, 30]}
    assert pt.map_structure(lambda u, v: u + v, a, b) == kt.map_structure(lambda u, v: u + v,
                                                                           a, b)
    shallow = [None, None]
    deep = [[1, 1], [2, 2, 2]]
    assert pt.map_structure_up_to(shallow, len, deep) == kt.map_structure_up_to(shallow, len,
                                                                                 deep)
    shapes = {"a": (None, 3), "b": [(2, 4)]}
    assert pt.map_shape_structure(lambda sh: sh[-1], shapes) == \
        kt.map_shape_structure(lambda sh: sh[-1], shapes)
    trimmed = pt.traverse(lambda v: pt.MAP_TO_NONE if v == 2 else None, [1, [2, 3]])
    assert trimmed == kt.traverse(lambda v: kt.MAP_TO_NONE if v == 2 else None, [1, [2, 3]])
    with pytest.raises(ValueError):
        pt.assert_same_structure([1, [2]], [1, 2])
    with pytest.raises(ValueError):
        pt.assert_same_paths({"a": 1}, {"b": 1})
    pt.assert_same_structure({"a": [1]}, {"a": [5]})
    with pytest.raises(ValueError, match="flat_sequence has 1 items"):
        pt.pack_sequence_as([1, 2], [1])


# -- utils / saving / models --------------------------------------------------------------------
def test_pack_unpack_normalize_and_split_dataset_match_keras():
    keras = keras_on_torch()
    ku, pu = keras.utils, pynn.utils
    x, y, w = np.ones(2), np.zeros(2), np.full(2, 0.5)
    for args in ((x,), ((x, y),), (x, y), (x, y, w)):
        kp, pp = ku.pack_x_y_sample_weight(*args), pu.pack_x_y_sample_weight(*args)
        assert type(kp) is type(pp) and len(ku.unpack_x_y_sample_weight(kp)) == 3
        assert all(a is b for a, b in zip(pu.unpack_x_y_sample_weight(pp),
                                          ku.unpack_x_y_sample_weight(kp)))
    with pytest.raises(ValueError, match="Data is expected"):
        pu.unpack_x_y_sample_weight((1, 2, 3, 4))
    a = _x(4, 6)
    for axis in (-1, 1):
        np.testing.assert_allclose(pu.normalize(a, axis=axis), ku.normalize(a, axis=axis))
    for fn in (pu.normalize, ku.normalize):  # Keras 3.15 reads axis=0 as -1 and fails here
        with pytest.raises(ValueError):
            fn(a, axis=0)
    np.testing.assert_allclose(np.asarray(pu.normalize(ops.convert_to_tensor(a))),
                               a / np.linalg.norm(a, axis=-1, keepdims=True), rtol=1e-6)
    data = (np.arange(10), np.arange(10) * 2)
    left, right = pu.split_dataset(data, left_size=0.8)
    np.testing.assert_array_equal(left[0], np.arange(8))
    np.testing.assert_array_equal(right[1], [16, 18])
    left, right = pu.split_dataset({"a": np.arange(10)}, right_size=3, shuffle=True, seed=1)
    assert len(left["a"]) == 7 and sorted(np.r_[left["a"], right["a"]]) == list(range(10))
    kl, _ = ku.split_dataset(np.arange(10), left_size=0.8, shuffle=True, seed=4)
    pl, _ = pu.split_dataset(np.arange(10), left_size=0.8, shuffle=True, seed=4)
    assert len(kl) == len(pl) == 8
    with pytest.raises(ValueError, match="left_size"):
        pu.split_dataset(np.arange(10), left_size=1.5)
    with pytest.raises(ValueError, match="one length"):
        pu.split_dataset((np.arange(3), np.arange(4)), left_size=1)


def test_custom_objects_go_through_pynns_one_registry(tmp_path):
    @pynn.utils.register_keras_serializable(package="ApiTest")
    class Doubling(pynn.layers.Layer):
        def call(self, x, training=False):
            return x * 2

    assert pynn.utils.get_registered_name(Doubling) == "ApiTest>Doubling"
    assert pynn.saving.get_registered_object("ApiTest>Doubling") is Doubling
    assert pynn.utils.get_custom_objects()["ApiTest>Doubling"] is Doubling
    assert pynn.utils.get_registered_object("nothing") is None
    assert pynn.utils.get_registered_object("x", custom_objects={"x": Doubling}) is Doubling
    with pynn.utils.CustomObjectScope({"Alias": Doubling}):
        assert pynn.utils.get_registered_object("Alias") is Doubling
    assert pynn.utils.custom_object_scope is pynn.saving.CustomObjectScope
    saved = pynn.utils.serialize_keras_object(Doubling(name="dbl"))
    assert saved["registered_name"] == "ApiTest>Doubling" and saved["class_name"] == "Doubling"
    layer = pynn.saving.deserialize_keras_object(json.loads(json.dumps(saved)))
    assert type(layer) is Doubling and layer.name == "dbl"
    inp = pynn.Input((3,))
    model = pynn.Model(inp, Doubling()(pynn.layers.Dense(3)(inp)))
    path = tmp_path / "custom.pynn"  # pynn refuses custom layers in .keras files
    pynn.models.save_model(model, path)
    again = pynn.models.load_model(path)
    x = _x(2, 3).astype(np.float32)
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6)
    with pytest.raises(FileExistsError, match="overwrite=False"):
        pynn.models.save_model(model, path, overwrite=False)
    with pytest.raises(ValueError, match="zipped=False"):
        pynn.models.save_model(model, tmp_path / "m.pynn", zipped=False)


def test_serialize_and_deserialize_keras_objects():
    keras = keras_on_torch()
    su, du = pynn.utils.serialize_keras_object, pynn.utils.deserialize_keras_object
    assert su((1, [2, 3])) == (1, [2, 3]) and su(np.float32(2.5)) == 2.5
    arr = su(np.arange(3))
    assert arr == keras.utils.serialize_keras_object(np.arange(3))
    np.testing.assert_array_equal(du(arr), np.arange(3))
    assert su(pynn.activations.relu) == keras.utils.serialize_keras_object(
        keras.activations.relu)
    assert du(keras.utils.serialize_keras_object(keras.activations.relu)) is \
        pynn.activations.relu
    init = du(keras.utils.serialize_keras_object(keras.initializers.GlorotUniform(seed=4)))
    assert isinstance(init, pynn.initializers.GlorotUniform) and init.seed == 4
    opt = du(su(pynn.optimizers.Adam(0.01)))
    assert isinstance(opt, pynn.optimizers.Adam) and opt.learning_rate == 0.01
    reg = du(keras.utils.serialize_keras_object(keras.regularizers.L2(0.3)))
    assert isinstance(reg, pynn.regularizers.L2) and reg.l2 == 0.3
    assert du("relu") == "relu"
    with pytest.raises(ValueError, match="unknown class 'Nope'"):
        du({"module": "keras.layers", "class_name": "Nope", "config": {},
            "registered_name": None})


def test_progbar_and_config_object(capsys):
    bar = pynn.utils.Progbar(4, verbose=1, interval=0.0, stateful_metrics=["acc"])
    bar.update(1, [("loss", 4.0), ("acc", 0.5)])
    bar.add(3, [("loss", 0.0), ("acc", 0.75)])
    out = capsys.readouterr().out.strip().splitlines()[-1]
    # loss: the mean over the 4 steps (4*1 + 0*3)/4 = 1; acc is stateful: the last value
    assert out.startswith("4/4") and "loss: 1.0000" in out and "acc: 0.7500" in out
    quiet = pynn.utils.Progbar(None, verbose=2)
    quiet.update(3, [("loss", 2.0)], finalize=True)
    assert "loss: 2.0000" in capsys.readouterr().out
    with pytest.raises(ValueError, match="verbose"):
        pynn.utils.Progbar(3, verbose=5)
    cfg = pynn.utils.Config(lr=0.1)
    cfg.units = 4
    cfg["depth"] = 2
    assert cfg.as_dict() == {"lr": 0.1, "units": 4, "depth": 2} and "units" in cfg
    assert json.loads(cfg.to_json())["units"] == 4
    cfg.freeze()
    with pytest.raises(AttributeError, match="frozen"):
        cfg.lr = 1.0
    cfg.unfreeze()
    cfg.lr = 1.0
    assert cfg.lr == 1.0
    assert pynn.utils.Sequence is pynn.utils.PyDataset


def test_get_source_inputs():
    a, b = pynn.Input((3,)), pynn.Input((3,))
    h = pynn.layers.Add()([pynn.layers.Dense(3)(a), b])
    out = pynn.layers.Dense(1)(pynn.layers.Dense(3)(h))
    sources = pynn.utils.get_source_inputs(out)
    assert len(sources) == 2 and sources[0] is a and sources[1] is b
    assert pynn.utils.get_source_inputs(a) == [a]
    x = np.ones(2)
    assert pynn.utils.get_source_inputs(x) is x


def test_text_and_audio_datasets_from_directories(tmp_path):
    for name, texts in (("neg", ["bad", "awful film", "meh"]), ("pos", ["great", "fine"])):
        (tmp_path / "text" / name).mkdir(parents=True)
        for i, t in enumerate(texts):
            (tmp_path / "text" / name / f"{i}.txt").write_text(t)
    ds = pynn.utils.text_dataset_from_directory(tmp_path / "text", batch_size=2, shuffle=False,
                                                max_length=4, verbose=False)
    assert ds.class_names == ["neg", "pos"] and len(ds) == 3
    x, y = ds[0]
    assert list(x) == ["bad", "awfu"] and y.tolist() == [0, 0]
    train, val = pynn.utils.text_dataset_from_directory(
        tmp_path / "text", label_mode="categorical", validation_split=0.4, subset="both",
        seed=3, verbose=False)
    assert len(train.file_paths) == 3 and len(val.file_paths) == 2
    assert not set(train.file_paths) & set(val.file_paths)
    assert train[0][1].shape == (3, 2)
    rng = np.random.default_rng(0)
    clips = {}
    for c in ("dog", "cat"):
        (tmp_path / "audio" / c).mkdir(parents=True)
        for i, n in enumerate((50, 81)):
            samples = (rng.uniform(-0.9, 0.9, size=(n, 2)) * 32767).astype("<i2")
            path = tmp_path / "audio" / c / f"{i}.wav"
            with wave.open(str(path), "wb") as w:
                w.setnchannels(2)
                w.setsampwidth(2)
                w.setframerate(16000)
                w.writeframes(samples.tobytes())
            clips[str(path)] = samples.astype(np.float32) / 32768
    audio = pynn.utils.audio_dataset_from_directory(tmp_path / "audio", batch_size=4,
                                                    shuffle=False, verbose=False)
    x, y = audio[0]
    assert x.shape == (4, 81, 2) and y.tolist() == [0, 0, 1, 1]  # cat, dog: sorted folders
    first = clips[audio.file_paths[0]]
    np.testing.assert_allclose(x[0, :50], first, atol=1e-6)
    assert (x[0, 50:] == 0).all()
    cut = pynn.utils.audio_dataset_from_directory(tmp_path / "audio", output_sequence_length=30,
                                                  sampling_rate=16000, shuffle=False,
                                                  verbose=False)
    assert cut[0][0].shape == (4, 30, 2)
    bad = pynn.utils.audio_dataset_from_directory(tmp_path / "audio", sampling_rate=8000,
                                                  shuffle=False, verbose=False)
    with pytest.raises(ValueError, match="does not resample"):
        bad[0]  # noqa: B018
    with pytest.raises(ValueError, match="ragged"):
        pynn.utils.audio_dataset_from_directory(tmp_path / "audio", ragged=True)
    with pytest.raises(ValueError, match="give a seed"):
        pynn.utils.text_dataset_from_directory(tmp_path / "text", validation_split=0.2,
                                               subset="training")
    with pytest.raises(FileNotFoundError):
        pynn.utils.text_dataset_from_directory(tmp_path / "missing")
    model = pynn.Sequential([pynn.Input((None, 2)), pynn.layers.GlobalAveragePooling1D(),
                             pynn.layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(cut, epochs=1, verbose=0)


def test_warnings_stay_quiet_for_silent_paths():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pynn.utils.Progbar(2, verbose=0).update(2, [("loss", 1.0)])


def test_disabled_interactive_logging_sends_fit_progress_to_the_logger(capsys, caplog):
    import logging
    model = pynn.Sequential([pynn.Input((3,)), pynn.layers.Dense(1)])
    model.compile("sgd", "mse")
    x, y = np.ones((8, 3), np.float32), np.ones((8, 1), np.float32)
    pynn.config.disable_interactive_logging()
    try:
        with caplog.at_level(logging.INFO, logger="pynn"):
            model.fit(x, y, epochs=2, verbose=1)
    finally:
        pynn.config.enable_interactive_logging()
    assert capsys.readouterr().out == ""
    lines = [r.getMessage() for r in caplog.records]
    assert "Epoch 2/2" in lines and any("loss:" in line for line in lines)
    model.fit(x, y, epochs=1, verbose=1)
    assert "Epoch 1/1" in capsys.readouterr().out


@pytest.mark.opencl
def test_ema_loss_scaling_multi_optimizer_and_orthogonal_penalty_on_opencl_match_the_cpu():
    from tests.test_ops_device import _on
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype("float32")
    y = (300 * rng.normal(size=(16, 2))).astype("float32")
    weights, results = None, {}
    for device in ("cpu", "opencl"):
        with _on(device):
            runs = []
            for make in (lambda: pynn.optimizers.SGD(0.05, use_ema=True, ema_momentum=0.9),
                         lambda: pynn.optimizers.LossScaleOptimizer(
                             pynn.optimizers.SGD(0.01), initial_scale=2.0 ** 126,
                             dynamic_growth_steps=2),
                         lambda: pynn.optimizers.MultiOptimizer(pynn.optimizers.OptimizerMap(
                             pynn.optimizers.SGD(0.01), {".*bias": pynn.optimizers.Adam(0.1)}))):
                model = pynn.Sequential([pynn.Input((4,)), pynn.layers.Dense(
                    2, kernel_regularizer=pynn.regularizers.OrthogonalRegularizer(0.5))])
                if weights is None:
                    weights = model.get_weights()
                model.set_weights(weights)
                model.compile(make(), "mse")
                history = model.fit(x, y, epochs=2, batch_size=4, shuffle=False, verbose=0,
                                    validation_data=(x, y),
                                    callbacks=[pynn.callbacks.SwapEMAWeights()]
                                    if model.optimizer.use_ema else [])
                runs.append((model.get_weights(), history.history["loss"],
                             getattr(model.optimizer, "dynamic_scale", None)))
            results[device] = runs
    for i, (want, got) in enumerate(zip(results["cpu"], results["opencl"])):
        for a, b in zip(want[0], got[0]):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=f"run {i}")
        np.testing.assert_allclose(got[1], want[1], rtol=1e-4, err_msg=f"run {i} loss")
        assert got[2] == want[2], f"run {i}: loss scale {got[2]} != CPU's {want[2]}"
