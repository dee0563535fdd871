"""Keras 3's Lamb, Adafactor and Muon (pynn/optimizers.py on the lamb_update,
adafactor_update and muon_update ops) against Keras's own optimizers on the same gradients,
the float64 oracles of tests/reference/optim_ref.py, OpenCL against the CPU, compile/fit and
Keras files. The parity tests skip cleanly without Keras (tests.backend_util.keras_on_torch).
"""

import json
import warnings

import numpy as np
import pytest

import pynn
from pynn import backend, optimizers, schedules
from pynn.variables import Variable
from tests.backend_util import keras_on_torch
from tests.reference import optim_ref as ref

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# Odd shapes of rank 1, 2 and 4 under Keras-like paths: Muon sends "embedding" paths, the
# rank-1 and rank-4 variables and exclude_layers' matches to its AdamW branch.
VARIABLES = {"dense/kernel": (5, 7), "dense/bias": (7,), "conv2d/kernel": (3, 3, 2, 5),
             "out/kernel": (9, 3), "embedding/embeddings": (11, 3), "tall/kernel": (13, 5)}
STEPS = 5

CONFIGS = [
    ("Lamb", dict()),
    ("Lamb", dict(learning_rate=0.02, beta_1=0.8, beta_2=0.99, epsilon=1e-4)),
    ("Lamb", dict(weight_decay=0.05, clipnorm=0.5)),
    ("Lamb", dict(global_clipnorm=0.7)),
    ("Lamb", dict(clipvalue=0.3, learning_rate="schedule")),
    ("Adafactor", dict()),
    ("Adafactor", dict(learning_rate=0.005, beta_2_decay=-0.5, epsilon_1=1e-3,
                       epsilon_2=0.5)),
    ("Adafactor", dict(clip_threshold=0.2, relative_step=False, weight_decay=0.01)),
    ("Adafactor", dict(learning_rate="schedule", clipvalue=0.5)),
    ("Adafactor", dict(global_clipnorm=0.6)),
    ("Muon", dict()),
    ("Muon", dict(exclude_layers=["out", "^tall"], learning_rate=0.02)),
    ("Muon", dict(exclude_embeddings=False, nesterov=False, momentum=0.9, ns_steps=3)),
    ("Muon", dict(rms_rate=None, muon_a=3.0, muon_b=-3.2, muon_c=1.2, weight_decay=0.1,
                  adam_weight_decay=0.2)),
    ("Muon", dict(adam_lr_ratio=0.1, adam_beta_1=0.8, adam_beta_2=0.95, epsilon=1e-4,
                  weight_decay=None, adam_weight_decay=None, clipnorm=0.4)),
    ("Muon", dict(learning_rate="schedule", global_clipnorm=0.5)),
    ("Muon", dict(clipvalue=0.2)),
]


def config_id(case):
    name, cfg = case
    return name + ("-" + ",".join(f"{k}={v}" for k, v in cfg.items()) if cfg else "")


@pytest.fixture(autouse=True)
def cpu_backend(monkeypatch):
    from pynn.backend import cpu

    monkeypatch.setattr(backend, "current", lambda: cpu)
    return cpu


def make_problem(seed, dtype=np.float32, steps=STEPS):
    rng = np.random.default_rng(seed)
    weights = {p: rng.uniform(-1.0, 1.0, s).astype(dtype) for p, s in VARIABLES.items()}
    grads = [{p: rng.standard_normal(s).astype(dtype) for p, s in VARIABLES.items()}
             for _ in range(steps)]
    return weights, grads


def build(lib, name, cfg):
    cfg = dict(cfg)
    if cfg.get("learning_rate") == "schedule":
        cfg["learning_rate"] = lib.optimizers.schedules.ExponentialDecay(0.02, 2, 0.5)
    return getattr(lib.optimizers, name)(**cfg)


def run_pynn(opt, weights, grads):
    variables = [Variable(w.copy(), p) for p, w in weights.items()]
    for step in grads:
        for v in variables:
            v.grad = step[v.path]
        opt.apply(variables)
    return {v.path: backend.current().to_numpy(v.value) for v in variables}, variables


def run_keras(keras, opt, weights, grads):
    kvars = {}
    for path, w in weights.items():
        layer, name = path.split("/")
        with keras.name_scope(layer):
            kvars[path] = keras.Variable(w.copy(), name=name, dtype="float32")
    for step in grads:
        opt.apply([keras.ops.convert_to_tensor(step[p]) for p in kvars], list(kvars.values()))
    return {p: keras.ops.convert_to_numpy(v.value) for p, v in kvars.items()}


def assert_weights_close(got, want, what, rtol=1e-6):
    """Weights equal to ~1e-6 of their size (they are O(1); each step moves them ~1e-2)."""
    for path in want:
        a, b = np.asarray(got[path], np.float64), np.asarray(want[path], np.float64)
        err = float(np.abs(a - b).max())
        assert err <= rtol * max(1.0, float(np.abs(b).max())), f"{what} {path}: {err:.3g}"


@pytest.mark.parametrize("case", CONFIGS, ids=config_id)
def test_matches_keras_over_steps(case):
    keras = keras_on_torch()
    name, cfg = case
    weights, grads = make_problem(seed=11)
    want = run_keras(keras, build(keras, name, cfg), weights, grads)
    got, _ = run_pynn(build(pynn, name, cfg), weights, grads)
    assert_weights_close(got, want, config_id(case))


@pytest.mark.parametrize("case", CONFIGS[1:5] + CONFIGS[6:10] + CONFIGS[11:], ids=config_id)
def test_each_argument_changes_the_step(case):
    """Each configuration moves the weights differently from its optimizer's defaults (so
    the parity above checks the arguments, not the defaults twice)."""
    name, cfg = case
    weights, grads = make_problem(seed=12)
    default, _ = run_pynn(build(pynn, name, {}), weights, grads)
    got, _ = run_pynn(build(pynn, name, cfg), weights, grads)
    assert any(not np.allclose(got[p], default[p], rtol=1e-5, atol=1e-7) for p in got)


def test_each_muon_argument_reaches_its_branch():
    weights, grads = make_problem(seed=13, steps=2)
    default, _ = run_pynn(optimizers.Muon(), weights, grads)
    muon_paths = {"dense/kernel", "out/kernel", "tall/kernel"}
    for arg, value, moved in [("muon_a", 3.0, muon_paths), ("muon_b", -4.0, muon_paths),
                              ("muon_c", 1.5, muon_paths), ("ns_steps", 2, muon_paths),
                              ("rms_rate", 0.3, muon_paths), ("momentum", 0.5, muon_paths),
                              ("nesterov", False, muon_paths),
                              ("adam_beta_1", 0.5, set(VARIABLES) - muon_paths),
                              ("adam_beta_2", 0.5, set(VARIABLES) - muon_paths),
                              ("adam_lr_ratio", 0.5, set(VARIABLES) - muon_paths),
                              ("epsilon", 0.5, set(VARIABLES) - muon_paths),
                              ("weight_decay", 0.5, muon_paths),
                              ("adam_weight_decay", 0.5, set(VARIABLES) - muon_paths),
                              ("exclude_embeddings", False, {"embedding/embeddings"}),
                              ("exclude_layers", ["^out"], {"out/kernel"})]:
        got, _ = run_pynn(optimizers.Muon(**{arg: value}), weights, grads)
        changed = {p for p in got if not np.array_equal(got[p], default[p])}
        assert changed == moved, (arg, sorted(changed))


def _reference_run(name, cfg, weights, grads):
    """The float64 oracles stepped as Keras steps (clipping first, the branch rule)."""
    opt = build(pynn, name, cfg)
    ws = {p: w.astype(np.float64) for p, w in weights.items()}
    slots = {}
    for t, step in enumerate(grads, start=1):
        opt.iterations = t - 1
        lr = opt.current_learning_rate()
        gs = {p: g.astype(np.float64) for p, g in step.items()}
        if opt.clipnorm:
            scales = {p: opt.clipnorm / max(np.sqrt(np.sum(g * g)), opt.clipnorm)
                      for p, g in gs.items()}
        elif opt.global_clipnorm:
            norm = np.sqrt(sum(np.sum(g * g) for g in gs.values()))
            scales = dict.fromkeys(gs, opt.global_clipnorm / max(norm, opt.global_clipnorm))
        else:
            scales = dict.fromkeys(gs, 1.0)
        clipvalue = opt.clipvalue or 0.0
        for p, g in gs.items():
            w = ws[p]
            shape = w.shape
            if name == "Lamb":
                m, v = slots.get(p, (np.zeros(shape), np.zeros(shape)))
                ws[p], m, v = ref.lamb_update_ref(w, g, m, v, lr, opt.beta_1, opt.beta_2,
                                                  opt.epsilon, t, scales[p], clipvalue,
                                                  opt.weight_decay or 0.0)
                slots[p] = (m, v)
            elif name == "Adafactor":
                from pynn.backend.operands.optim import adafactor_slot_shapes

                r, c, v = slots.get(p, tuple(np.zeros(s) for s in adafactor_slot_shapes(shape)))
                ws[p], r, c, v = ref.adafactor_update_ref(
                    w, g, r, c, v, lr, opt.beta_2_decay, opt.epsilon_1, opt.epsilon_2,
                    opt.clip_threshold, t, scales[p], clipvalue, opt.weight_decay or 0.0)
                slots[p] = (r, c, v)
            elif opt._should_use_adamw(Variable(w, p)):
                m, v = slots.get(p, (np.zeros(shape), np.zeros(shape)))
                ws[p], m, v, _ = ref.adam_update_ref(
                    w, g, m, v, None, lr * opt.adam_lr_ratio, opt.adam_beta_1,
                    opt.adam_beta_2, opt.epsilon, t, scales[p], clipvalue,
                    (opt.adam_weight_decay or 0.0) / opt.adam_lr_ratio)
                slots[p] = (m, v)
            else:
                m = slots.get(p, np.zeros(shape))
                ws[p], slots[p] = ref.muon_update_ref(
                    w, g, m, lr, opt.momentum, opt.nesterov, opt.ns_steps, opt.muon_a,
                    opt.muon_b, opt.muon_c, opt.rms_rate, scales[p], clipvalue,
                    opt.weight_decay or 0.0)
    return ws


@pytest.mark.parametrize("case", CONFIGS, ids=config_id)
def test_matches_reference_in_float64(case):
    name, cfg = case
    weights, grads = make_problem(seed=14, dtype=np.float64, steps=3)
    want = _reference_run(name, cfg, weights, grads)
    got, _ = run_pynn(build(pynn, name, cfg), weights, grads)
    for p in want:
        np.testing.assert_allclose(got[p], want[p], rtol=1e-10, atol=1e-12, err_msg=p)


@pytest.mark.opencl
@pytest.mark.parametrize("case", CONFIGS[::2], ids=config_id)
def test_opencl_matches_cpu(case, monkeypatch, backend_opencl):
    name, cfg = case
    weights, grads = make_problem(seed=15, steps=3)
    want, _ = run_pynn(build(pynn, name, cfg), weights, grads)
    monkeypatch.setattr(backend, "current", lambda: backend_opencl.ops)
    ocl = backend_opencl.ops
    variables = [Variable(ocl.asarray(w.copy()), p) for p, w in weights.items()]
    opt = build(pynn, name, cfg)
    for step in grads:
        for v in variables:
            v.grad = ocl.asarray(step[v.path])
        opt.apply(variables)
    got = {v.path: ocl.to_numpy(v.value) for v in variables}
    assert_weights_close(got, want, f"OpenCL {config_id(case)}", rtol=2e-6)


@pytest.mark.parametrize("case", CONFIGS, ids=config_id)
def test_configs_round_trip_and_match_keras_keys(case):
    name, cfg = case
    opt = build(pynn, name, cfg)
    again = optimizers.get(json.loads(json.dumps(optimizers.serialize(opt))))
    assert type(again) is type(opt) and again.get_config() == opt.get_config()
    assert type(optimizers.get(name.lower())) is type(opt)


def test_defaults_and_config_keys_match_keras():
    keras = keras_on_torch()
    ignored = {"use_ema", "ema_momentum", "ema_overwrite_frequency", "loss_scale_factor",
               "gradient_accumulation_steps"}
    for cls in (optimizers.Lamb, optimizers.Adafactor, optimizers.Muon):
        mine = cls().get_config()
        theirs = getattr(keras.optimizers, cls.__name__)().get_config()
        assert set(mine) == set(theirs) - ignored, cls.__name__
        for key, value in mine.items():
            if key == "name":   # Keras numbers its second and later instances
                assert theirs[key].startswith(value)
            elif isinstance(value, float):
                assert theirs[key] == pytest.approx(value), (cls.__name__, key)
            else:
                assert theirs[key] == value, (cls.__name__, key)


@pytest.mark.parametrize("name", ["Lamb", "Adafactor", "Muon"])
def test_state_resumes_bit_identically(name):
    weights, grads = make_problem(seed=16, steps=6)
    straight, _ = run_pynn(build(pynn, name, {}), weights, grads)
    first = build(pynn, name, {})
    _, variables = run_pynn(first, weights, grads[:3])
    state = first.get_state()
    second = optimizers.deserialize(json.loads(json.dumps(optimizers.serialize(first))))
    second.set_state(state, variables)
    for step in grads[3:]:
        for v in variables:
            v.grad = step[v.path]
        second.apply(variables)
    for v in variables:
        np.testing.assert_array_equal(v.value, straight[v.path], err_msg=v.path)


def test_slot_names_and_shapes_are_keras():
    weights, grads = make_problem(seed=17, steps=1)
    opt = optimizers.Adafactor()
    run_pynn(opt, weights, grads)
    shapes = {k: v.shape for k, v in opt.get_state()["slots"].items()}
    assert shapes["conv2d/kernel/r"] == (3, 3, 2) and shapes["conv2d/kernel/c"] == (3, 3, 5)
    assert shapes["dense/bias/r"] == () and shapes["dense/bias/velocity"] == (7,)
    opt = optimizers.Muon(exclude_layers=["out"])
    run_pynn(opt, weights, grads)
    names = set(opt.get_state()["slots"])
    assert "dense/kernel/velocity" not in names and "out/kernel/velocity" in names
    assert "embedding/embeddings/velocity" in names and "conv2d/kernel/velocity" in names
    with pytest.raises(ValueError, match=r"slot 'dense/kernel/r' has shape \(7,\), expected"):
        optimizers.Adafactor().set_state(
            {"iterations": 1, "slots": {"dense/kernel/r": np.zeros(7), "dense/kernel/c":
                                        np.zeros(7), "dense/kernel/velocity": np.zeros((5, 7))}},
            [Variable(np.zeros((5, 7), np.float32), "dense/kernel")])


def _models(lib):
    layers = lib.layers
    return lib.Sequential([lib.Input((6, 6, 2)),
                           layers.Conv2D(3, 3, activation="tanh", name="conv"),
                           layers.Flatten(name="flatten"),
                           layers.Dense(5, activation="tanh", name="hidden"),
                           layers.Dense(2, name="head")])


@pytest.mark.parametrize("name,cfg", [("Lamb", dict(learning_rate=0.01)),
                                      ("Adafactor", dict(learning_rate=0.01)),
                                      ("Muon", dict(learning_rate=0.01))])
def test_compile_fit_matches_keras(name, cfg):
    keras = keras_on_torch()
    rng = np.random.default_rng(4)
    x = rng.standard_normal((24, 6, 6, 2)).astype(np.float32)
    y = rng.standard_normal((24, 2)).astype(np.float32)
    ours, theirs = _models(pynn), _models(keras)
    weights = [rng.uniform(-0.4, 0.4, np.shape(w)).astype(np.float32)
               for w in theirs.get_weights()]
    ours.set_weights(weights)
    theirs.set_weights(weights)
    ours.compile(optimizer=name.lower() if not cfg else build(pynn, name, cfg), loss="mse")
    theirs.compile(optimizer=build(keras, name, cfg), loss="mse")
    h_ours = ours.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0).history["loss"]
    h_theirs = theirs.fit(x, y, batch_size=8, epochs=3, shuffle=False,
                          verbose=0).history["loss"]
    assert h_ours[-1] < h_ours[0]
    np.testing.assert_allclose(h_ours, h_theirs, rtol=1e-4)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, np.asarray(b), atol=2e-5)


@pytest.mark.parametrize("first", ["keras", "pynn"])
@pytest.mark.parametrize("name,cfg", [
    ("Lamb", dict(learning_rate=0.02, beta_1=0.8, weight_decay=0.01)),
    ("Adafactor", dict(learning_rate=0.02, clip_threshold=0.5, epsilon_2=0.01)),
    ("Muon", dict(learning_rate=0.02, exclude_layers=["head"], rms_rate=0.3)),
    ("Lamb", dict(learning_rate="schedule")),
])
def test_training_resumes_across_keras_files(tmp_path, first, name, cfg):
    """A model compiled with the optimizer, trained three steps and saved as .keras, loads
    in the other framework with the optimizer's config and variables and trains on to where
    six steps of the first end."""
    keras = keras_on_torch()
    one, other = (keras, pynn) if first == "keras" else (pynn, keras)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((8, 6, 6, 2)).astype(np.float32)
    y = rng.standard_normal((8, 2)).astype(np.float32)
    model, reference = _models(one), _models(one)
    weights = [rng.uniform(-0.5, 0.5, np.shape(w)).astype(np.float32)
               for w in model.get_weights()]
    for m in (model, reference):
        m.set_weights(weights)
        m.compile(optimizer=build(one, name, cfg), loss="mse")
    for _ in range(3):
        model.train_on_batch(x, y)
    model.save(tmp_path / "m.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        resumed = (keras.saving.load_model if other is keras else pynn.load_model)(
            tmp_path / "m.keras")
    assert type(resumed.optimizer).__name__ == name
    if other is pynn:
        expected = build(pynn, name, cfg).get_config()
        loaded = resumed.optimizer.get_config()
        assert {k: v for k, v in loaded.items() if k not in ("name", "learning_rate")} == \
            {k: v for k, v in expected.items() if k not in ("name", "learning_rate")}
        assert int(resumed.optimizer.iterations) == 3
    for _ in range(3):
        resumed.train_on_batch(x, y)
    for _ in range(6):
        reference.train_on_batch(x, y)
    for a, b in zip(resumed.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)


@pytest.mark.parametrize("make,match", [
    (lambda: optimizers.Lamb(beta_1=1.0), r"Lamb: `beta_1` must be in \[0.0, 1.0\)"),
    (lambda: optimizers.Lamb(epsilon=-1e-7), "Lamb: `epsilon` must be in"),
    (lambda: optimizers.Lamb(learning_rate="fast"), "Lamb: `learning_rate` must be a float"),
    (lambda: optimizers.Adafactor(clip_threshold=0.0), "Adafactor: `clip_threshold` must be"),
    (lambda: optimizers.Adafactor(epsilon_1=-1.0), "Adafactor: `epsilon_1` must be in"),
    (lambda: optimizers.Adafactor(beta_2_decay=float("nan")),
     "Adafactor: `beta_2_decay` must be finite"),
    (lambda: optimizers.Adafactor(relative_step="yes"), "Adafactor: `relative_step` must be"),
    (lambda: optimizers.Muon(exclude_layers="dense"), "Muon: `exclude_layers` must be a list"),
    (lambda: optimizers.Muon(exclude_layers=["("]), r"Muon: `exclude_layers` entry '\('"),
    (lambda: optimizers.Muon(ns_steps=2.5), r"Muon: `ns_steps` must be an int"),
    (lambda: optimizers.Muon(momentum=-0.1), "Muon: `momentum` must be in"),
    (lambda: optimizers.Muon(adam_beta_1=1.0), "Muon: `adam_beta_1` must be in"),
    (lambda: optimizers.Muon(rms_rate="big"), "Muon: `rms_rate` must be a float"),
    (lambda: optimizers.Muon(clipnorm=1.0, clipvalue=1.0), "Only one of `clipnorm`"),
    (lambda: optimizers.Lamb(unknown=1), "unknown"),
])
def test_bad_arguments(make, match):
    with pytest.raises((TypeError, ValueError), match=match):
        make()


@pytest.mark.parametrize("name", ["Lamb", "Adafactor", "Muon"])
def test_pruned_weights_stay_zero_through_training(name):
    """prune_low_magnitude's masks ride into the update ops: every step leaves the pruned
    weights exactly zero (Conv2D's rank-4 kernel on Muon's AdamW branch, the Dense kernels
    on its own) and the kept ones train."""
    from pynn.compression import (ConstantSparsity, PruneLowMagnitude, UpdatePruningStep,
                                  prune_low_magnitude)

    rng = np.random.default_rng(8)
    x = rng.standard_normal((24, 6, 6, 2)).astype(np.float32)
    y = rng.standard_normal((24, 2)).astype(np.float32)
    pruned = prune_low_magnitude(_models(pynn), ConstantSparsity(0.6, 0, frequency=1000))
    pruned.compile(build(pynn, name, dict(learning_rate=0.01)), "mse")
    pruned.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[UpdatePruningStep()])
    first = {v.path: np.array(v.value) for v in pruned.weights}
    pruned.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[UpdatePruningStep()])
    for layer in pruned.layers:
        if not isinstance(layer, PruneLowMagnitude):
            continue
        for path, mask in layer.masks().items():
            value = next(np.array(v.value) for v in layer.layer.weights if v.path == path)
            assert np.count_nonzero(mask == 0) > 0
            assert not np.any(value[mask == 0]), f"{name}: pruned weights of {path} moved"
            assert np.any(value[mask == 1] != first[path][mask == 1]), f"{path} froze"
    assert all(np.all(np.isfinite(np.asarray(v.value))) for v in pruned.weights), name
    slots = pruned.optimizer.get_state()["slots"]
    for layer in pruned.layers:
        if isinstance(layer, PruneLowMagnitude):
            for path, mask in layer.masks().items():
                for slot in ("momentum", "velocity"):
                    if f"{path}/{slot}" in slots:
                        assert not np.any(slots[f"{path}/{slot}"][mask == 0]), (path, slot)


def test_schedule_reaches_every_branch():
    """A LearningRateSchedule is read at each step, by Adafactor's relative step too."""
    weights, grads = make_problem(seed=18, steps=3)
    for name in ("Lamb", "Adafactor", "Muon"):
        fixed, _ = run_pynn(build(pynn, name, dict(learning_rate=0.02)), weights, grads)
        decayed, _ = run_pynn(build(pynn, name, dict(learning_rate=schedules.ExponentialDecay(
            0.02, 1, 0.5))), weights, grads)
        assert all(not np.array_equal(fixed[p], decayed[p]) for p in fixed), name
