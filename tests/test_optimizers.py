"""pynn/optimizers.py against the float64 oracle (tests/reference/optim_ref.py) and, as golden
values, against Keras 3 itself (torch backend; skipped when keras cannot be imported)."""

import json
import os
import types

import numpy as np
import pytest

os.environ["KERAS_BACKEND"] = "torch"  # before any `import keras`

from pynn import backend, optimizers, schedules  # noqa: E402
from pynn.variables import Variable  # noqa: E402
from tests.reference import optim_ref as ref  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SHAPES = [(3, 5), (7,), (1,), (2, 3, 1, 2)]


def _optim_only_backend():
    """The CPU backend's array helpers and optimizer ops, for checkouts where some other
    native module is not built yet (pynn.backend.cpu imports them all)."""
    from pynn._native import optim

    ns = types.SimpleNamespace(
        NAME="cpu",
        asarray=lambda x, dtype=np.float32: np.ascontiguousarray(x, dtype=dtype),
        to_numpy=np.asarray,
        zeros=lambda shape, dtype=np.float32: np.zeros(shape, dtype=dtype),
        full=lambda shape, value, dtype=np.float32: np.full(shape, value, dtype=dtype),
    )
    for name in ("sum_squares", "regularizer_inplace", "sgd_update", "adam_update",
                 "rmsprop_update", "adagrad_update", "nadam_update", "adamax_update",
                 "adadelta_update", "ftrl_update", "lion_update"):
        setattr(ns, name, getattr(optim, name))
    return ns


@pytest.fixture(autouse=True)
def cpu_backend(monkeypatch):
    try:
        from pynn.backend import cpu as be
    except ImportError:
        be = _optim_only_backend()
    monkeypatch.setattr(backend, "current", lambda: be)
    return be


# Every option of every optimizer, with each clip mode and weight decay somewhere.
CONFIGS = [
    ("sgd", dict(learning_rate=0.05)),
    ("sgd", dict(learning_rate=0.05, momentum=0.9)),
    ("sgd", dict(learning_rate=0.05, momentum=0.9, nesterov=True)),
    ("sgd", dict(learning_rate=0.05, momentum=0.5, weight_decay=0.01, clipnorm=0.5)),
    ("sgd", dict(learning_rate=0.05, clipvalue=0.1)),
    ("sgd", dict(learning_rate=0.05, momentum=0.8, global_clipnorm=0.7)),
    ("adam", dict(learning_rate=0.01)),
    ("adam", dict(learning_rate=0.01, amsgrad=True)),
    ("adam", dict(learning_rate=0.01, clipnorm=0.3)),
    ("adam", dict(learning_rate=0.01, global_clipnorm=0.5, weight_decay=0.05)),
    ("adam", dict(learning_rate=0.01, beta_1=0.8, beta_2=0.99, epsilon=1e-5, clipvalue=0.2)),
    ("adamw", dict(learning_rate=0.01)),
    ("adamw", dict(learning_rate=0.01, weight_decay=0.1, amsgrad=True)),
    ("rmsprop", dict(learning_rate=0.01)),
    ("rmsprop", dict(learning_rate=0.01, centered=True)),
    ("rmsprop", dict(learning_rate=0.01, momentum=0.9)),
    ("rmsprop", dict(learning_rate=0.01, momentum=0.5, centered=True, clipvalue=0.3,
                     weight_decay=0.02)),
    ("rmsprop", dict(learning_rate=0.01, rho=0.7, global_clipnorm=0.4)),
    ("adagrad", dict(learning_rate=0.05)),
    ("adagrad", dict(learning_rate=0.05, initial_accumulator_value=0.5, clipnorm=0.2)),
    ("adagrad", dict(learning_rate=0.05, epsilon=1e-4, weight_decay=0.03,
                     global_clipnorm=0.6)),
]

PYNN_CLASSES = {"sgd": optimizers.SGD, "adam": optimizers.Adam, "adamw": optimizers.AdamW,
                "rmsprop": optimizers.RMSprop, "adagrad": optimizers.Adagrad}


def config_id(case):
    kind, cfg = case
    return kind + "-" + ",".join(f"{k}={v}" for k, v in cfg.items())


def make_problem(seed, dtype=np.float32, n_steps=5):
    """Initial weights (never zero) and a list of per-step gradients, one per shape."""
    rng = np.random.default_rng(seed)
    weights = [(rng.uniform(0.1, 1.1, s) * rng.choice([-1, 1], s)).astype(dtype) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(n_steps)]
    return weights, grads


def make_variables(weights, prefix="layer"):
    return [Variable(w.copy(), f"{prefix}_{i}/kernel") for i, w in enumerate(weights)]


def run_pynn(opt, weights, grads_per_step):
    variables = make_variables(weights)
    for grads in grads_per_step:
        for v, g in zip(variables, grads):
            v.grad = g
        opt.apply(variables)
    return [v.value for v in variables], variables


# -- against the float64 oracle -------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CONFIGS, ids=config_id)
def test_optimizer_matches_reference(case, dtype):
    kind, cfg = case
    weights, grads = make_problem(seed=len(config_id(case)), dtype=dtype)
    opt = PYNN_CLASSES[kind](**cfg)
    oracle = ref.OptimizerRef(kind, **cfg)
    variables = make_variables(weights)
    want = [ref.f64(w) for w in weights]
    tol = dict(rtol=2e-5, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-15)
    for step, step_grads in enumerate(grads):
        for v, g in zip(variables, step_grads):
            v.grad = g
        opt.apply(variables)
        want = oracle.step(want, step_grads)
        assert opt.iterations == step + 1
        for v, w in zip(variables, want):
            assert v.value.dtype == dtype
            np.testing.assert_allclose(v.value, w, err_msg=f"{v.path} step {step}", **tol)


def test_schedule_drives_learning_rate_per_step():
    sched = schedules.ExponentialDecay(0.1, decay_steps=2, decay_rate=0.5)
    opt = optimizers.SGD(learning_rate=sched, momentum=0.9)
    oracle = ref.OptimizerRef("sgd", learning_rate=sched, momentum=0.9)
    weights, grads = make_problem(seed=11, dtype=np.float64)
    got, _ = run_pynn(opt, weights, grads)
    want = [ref.f64(w) for w in weights]
    for step_grads in grads:
        want = oracle.step(want, step_grads)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    assert opt.current_learning_rate() == pytest.approx(0.1 * 0.5 ** (5 / 2))
    assert opt.learning_rate == opt.current_learning_rate()


def test_frozen_and_gradless_variables_are_skipped():
    opt = optimizers.Adam(learning_rate=0.1, weight_decay=0.5)
    a = Variable(np.ones(3, np.float32), "a/kernel")
    b = Variable(np.ones(3, np.float32), "b/kernel", trainable=False)
    c = Variable(np.ones(3, np.float32), "c/kernel")
    a.grad = np.ones(3, np.float32)
    b.grad = np.ones(3, np.float32)
    opt.apply([a, b, c])
    assert opt.iterations == 1
    assert np.all(a.value < 1)
    np.testing.assert_array_equal(b.value, 1.0)
    np.testing.assert_array_equal(c.value, 1.0)
    assert set(opt.get_state()["slots"]) == {"a/kernel/momentum", "a/kernel/velocity"}
    opt.apply([])  # nothing to do: not a step
    assert opt.iterations == 1


def test_gradient_is_not_modified_and_may_be_readonly():
    opt = optimizers.SGD(learning_rate=0.1, clipnorm=0.01, weight_decay=0.1)
    v = Variable(np.ones(4, np.float32), "v")
    g = np.arange(1, 5, dtype=np.float32)
    g.flags.writeable = False
    v.grad = g
    opt.apply([v])
    np.testing.assert_array_equal(g, [1, 2, 3, 4])


def test_gradient_shape_mismatch_and_slot_shape_change_raise():
    opt = optimizers.Adam()
    v = Variable(np.ones(4, np.float32), "v")
    v.grad = np.ones(5, np.float32)
    with pytest.raises(ValueError, match="gradient of 'v'"):
        opt.apply([v])
    v.grad = np.ones(4, np.float32)
    opt.apply([v])
    v.value = np.ones(6, np.float32)
    v.grad = np.ones(6, np.float32)
    with pytest.raises(ValueError, match="slot 'v/momentum'"):
        opt.apply([v])


# -- arguments, config, get -----------------------------------------------------------------

def test_defaults_match_keras():
    assert optimizers.SGD().get_config()["learning_rate"] == 0.01
    adam = optimizers.Adam()
    assert (adam.current_learning_rate(), adam.beta_1, adam.beta_2, adam.epsilon,
            adam.amsgrad) == (0.001, 0.9, 0.999, 1e-7, False)
    assert optimizers.AdamW().weight_decay == 0.004
    rms = optimizers.RMSprop()
    assert (rms.rho, rms.momentum, rms.epsilon, rms.centered) == (0.9, 0.0, 1e-7, False)
    ada = optimizers.Adagrad()
    assert (ada.initial_accumulator_value, ada.epsilon) == (0.1, 1e-7)
    assert adam.weight_decay is None and adam.clipnorm is None


@pytest.mark.parametrize("kwargs,match", [
    (dict(clipnorm=1.0, clipvalue=1.0), "Only one of"),
    (dict(clipnorm=1.0, global_clipnorm=1.0), "Only one of"),
    (dict(clipvalue=1.0, global_clipnorm=1.0), "Only one of"),
    (dict(learning_rate="fast"), "learning_rate"),
    (dict(learning_rate=float("nan")), "learning_rate"),
    (dict(weight_decay=-1.0), "weight_decay"),
    (dict(bogus=1), "not recognized"),
])
def test_bad_base_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        optimizers.Adam(**kwargs)


def test_bad_rule_arguments():
    with pytest.raises(ValueError, match="momentum"):
        optimizers.SGD(momentum=1.5)
    with pytest.raises(ValueError, match="weight_decay"):
        optimizers.AdamW(weight_decay=None)
    with pytest.raises(ValueError, match="beta_1"):
        optimizers.Adam(beta_1=1.0)
    with pytest.raises(ValueError, match="rho"):
        optimizers.RMSprop(rho=-0.1)
    with pytest.raises(ValueError, match="initial_accumulator_value"):
        optimizers.Adagrad(initial_accumulator_value=-1.0)


@pytest.mark.parametrize("case", CONFIGS, ids=config_id)
def test_config_round_trip_through_json(case):
    kind, cfg = case
    opt = PYNN_CLASSES[kind](name="my_opt", **cfg)
    config = json.loads(json.dumps(opt.get_config()))
    clone = PYNN_CLASSES[kind].from_config(config)
    assert type(clone) is type(opt)
    assert clone.get_config() == opt.get_config()
    assert clone.name == "my_opt"
    via_base = optimizers.Optimizer.from_config(
        json.loads(json.dumps(optimizers.serialize(opt))))
    assert type(via_base) is type(opt) and via_base.get_config() == opt.get_config()


def test_config_round_trip_with_schedule():
    sched = schedules.CosineDecay(0.01, 100, alpha=0.1, warmup_target=0.05, warmup_steps=10)
    opt = optimizers.RMSprop(learning_rate=sched, momentum=0.5)
    config = json.loads(json.dumps(opt.get_config()))
    assert config["learning_rate"]["class_name"] == "CosineDecay"
    clone = optimizers.RMSprop.from_config(config)
    assert isinstance(clone._learning_rate, schedules.CosineDecay)
    for it in (0, 5, 10, 50, 200):
        opt.iterations = clone.iterations = it
        assert clone.current_learning_rate() == opt.current_learning_rate()
    with pytest.raises(TypeError, match="learning rate cannot be set"):
        opt.learning_rate = 0.1


def test_callable_learning_rates():
    opt = optimizers.SGD(learning_rate=lambda: 0.25)
    assert opt.current_learning_rate() == 0.25
    opt = optimizers.SGD(learning_rate=lambda step: 0.1 / (1 + step))
    opt.iterations = 4
    assert opt.current_learning_rate() == pytest.approx(0.02)
    with pytest.raises(TypeError, match="cannot be serialized"):
        opt.get_config()
    opt = optimizers.SGD(learning_rate=0.1)
    opt.learning_rate = 0.3
    assert opt.current_learning_rate() == 0.3


def test_get():
    for name, cls in [("sgd", optimizers.SGD), ("Adam", optimizers.Adam),
                      ("ADAMW", optimizers.AdamW), ("rmsprop", optimizers.RMSprop),
                      ("Adagrad", optimizers.Adagrad)]:
        assert type(optimizers.get(name)) is cls
    opt = optimizers.Adam(learning_rate=0.5)
    assert optimizers.get(opt) is opt
    got = optimizers.get({"class_name": "Adam", "config": {"learning_rate": 0.5}})
    assert isinstance(got, optimizers.Adam) and got.current_learning_rate() == 0.5
    assert optimizers.get(None) is None
    with pytest.raises(ValueError, match="Could not interpret"):
        optimizers.get("adabelief")
    with pytest.raises(ValueError, match="Could not interpret"):
        optimizers.get(3)
    with pytest.raises(ValueError, match="Unknown optimizer"):
        optimizers.get({"class_name": "AdaBelief", "config": {}})


def test_module_exposes_schedules():
    assert optimizers.schedules.ExponentialDecay is schedules.ExponentialDecay
    assert optimizers.schedules.CosineDecay is schedules.CosineDecay


# -- state ----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CONFIGS, ids=config_id)
def test_get_state_set_state_resumes_bit_identically(case):
    kind, cfg = case
    weights, grads = make_problem(seed=5, n_steps=6)
    opt = PYNN_CLASSES[kind](**cfg)
    variables = make_variables(weights)

    def step(o, vs, step_grads):
        for v, g in zip(vs, step_grads):
            v.grad = g
        o.apply(vs)

    for step_grads in grads[:3]:
        step(opt, variables, step_grads)
    state = opt.get_state()
    assert state["iterations"] == 3
    assert all(isinstance(a, np.ndarray) for a in state["slots"].values())
    saved_weights = [v.value.copy() for v in variables]

    for step_grads in grads[3:]:
        step(opt, variables, step_grads)

    resumed = PYNN_CLASSES[kind].from_config(opt.get_config())
    resumed_vars = make_variables(saved_weights)
    resumed.set_state(state, resumed_vars)
    assert resumed.iterations == 3
    for step_grads in grads[3:]:
        step(resumed, resumed_vars, step_grads)
    for a, b in zip(variables, resumed_vars):
        np.testing.assert_array_equal(a.value, b.value)
    for key, value in opt.get_state()["slots"].items():
        np.testing.assert_array_equal(value, resumed.get_state()["slots"][key])


def test_get_state_is_a_copy_and_names_keras_slots():
    opt = optimizers.RMSprop(momentum=0.5, centered=True)
    v = Variable(np.ones((2, 3), np.float32), "dense/kernel")
    v.grad = np.ones((2, 3), np.float32)
    opt.apply([v])
    state = opt.get_state()
    assert sorted(state["slots"]) == ["dense/kernel/average_gradient", "dense/kernel/momentum",
                                      "dense/kernel/velocity"]
    state["slots"]["dense/kernel/velocity"][:] = 123.0
    assert not np.any(opt.get_state()["slots"]["dense/kernel/velocity"] == 123.0)


def test_set_state_rejects_bad_state():
    v = Variable(np.ones(3, np.float32), "d/kernel")
    opt = optimizers.Adam()
    good = {"iterations": 2, "slots": {"d/kernel/momentum": np.zeros(3, np.float32),
                                       "d/kernel/velocity": np.zeros(3, np.float32)}}
    with pytest.raises(ValueError, match="match no variable"):
        opt.set_state({"iterations": 1, "slots": dict(good["slots"],
                                                      **{"x/kernel/momentum": np.zeros(3)})},
                      [v])
    with pytest.raises(ValueError, match="lacks slots"):
        opt.set_state({"iterations": 1, "slots": {"d/kernel/momentum": np.zeros(3)}}, [v])
    with pytest.raises(ValueError, match="has shape"):
        opt.set_state({"iterations": 1, "slots": {"d/kernel/momentum": np.zeros(4),
                                                  "d/kernel/velocity": np.zeros(4)}}, [v])
    opt.set_state(good, [v])
    assert opt.iterations == 2
    assert opt.get_state()["slots"]["d/kernel/momentum"].dtype == np.float32


# -- golden values from Keras 3 -------------------------------------------------------------

def keras_module():
    return pytest.importorskip("keras", reason="keras (torch backend) not importable")


def keras_schedule(keras, sched):
    return getattr(keras.optimizers.schedules, type(sched).__name__)(**sched.get_config())


def run_keras(kind, cfg, weights, grads_per_step):
    keras = keras_module()
    classes = {"sgd": keras.optimizers.SGD, "adam": keras.optimizers.Adam,
               "adamw": keras.optimizers.AdamW, "rmsprop": keras.optimizers.RMSprop,
               "adagrad": keras.optimizers.Adagrad}
    kcfg = dict(cfg)
    if isinstance(kcfg.get("learning_rate"), schedules.LearningRateSchedule):
        kcfg["learning_rate"] = keras_schedule(keras, kcfg["learning_rate"])
    opt = classes[kind](**kcfg)
    kvars = [keras.Variable(w.copy(), dtype="float32") for w in weights]
    for grads in grads_per_step:
        opt.apply_gradients([(keras.ops.convert_to_tensor(g), v) for g, v in zip(grads, kvars)])
    return [keras.ops.convert_to_numpy(v.value) for v in kvars]


def assert_close_to_keras(got, want, what):
    # atol is two float32 ulps at the weights' scale (|w| ~ 1): near-zero weights are the
    # difference of O(1) values, and pynn's fused multiply-adds round the intermediate terms
    # (centered RMSprop's v - a*a above all) differently from the separate torch ops Keras runs.
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1.2e-7, err_msg=what)


@pytest.mark.parametrize("case", CONFIGS, ids=config_id)
def test_golden_single_step_vs_keras(case):
    kind, cfg = case
    weights, grads = make_problem(seed=21, n_steps=1)
    want = run_keras(kind, cfg, weights, grads)
    got, _ = run_pynn(PYNN_CLASSES[kind](**cfg), weights, grads)
    assert_close_to_keras(got, want, f"{kind} {cfg} single step")


@pytest.mark.parametrize("case", CONFIGS, ids=config_id)
def test_golden_multi_step_vs_keras(case):
    kind, cfg = case
    weights, grads = make_problem(seed=22, n_steps=6)
    want = run_keras(kind, cfg, weights, grads)
    got, _ = run_pynn(PYNN_CLASSES[kind](**cfg), weights, grads)
    assert_close_to_keras(got, want, f"{kind} {cfg} 6 steps")


@pytest.mark.parametrize("kind,cfg", [
    ("adam", dict(learning_rate=schedules.ExponentialDecay(0.05, 2, 0.6, staircase=True))),
    ("sgd", dict(momentum=0.9, learning_rate=schedules.CosineDecay(
        0.01, 4, alpha=0.1, warmup_target=0.1, warmup_steps=2))),
    ("rmsprop", dict(learning_rate=schedules.PiecewiseConstantDecay([1, 3], [0.05, 0.02, 0.01]))),
    ("adamw", dict(learning_rate=schedules.InverseTimeDecay(0.02, 1, 0.5))),
], ids=["adam-exp", "sgd-cosine-warmup", "rmsprop-piecewise", "adamw-inverse"])
def test_golden_schedules_vs_keras(kind, cfg):
    weights, grads = make_problem(seed=23, n_steps=6)
    want = run_keras(kind, cfg, weights, grads)
    got, _ = run_pynn(PYNN_CLASSES[kind](**cfg), weights, grads)
    assert_close_to_keras(got, want, f"{kind} with schedule")


# -- Nadam, Adamax, Adadelta, Ftrl, Lion (issue 15) -----------------------------------------

NEW_CONFIGS = [
    ("nadam", dict(learning_rate=0.01)),
    ("nadam", dict(learning_rate=0.01, beta_1=0.8, beta_2=0.99, epsilon=1e-5, clipnorm=0.4)),
    ("nadam", dict(learning_rate=0.01, weight_decay=0.05, global_clipnorm=0.5)),
    ("adamax", dict(learning_rate=0.01)),
    ("adamax", dict(learning_rate=0.01, beta_1=0.7, beta_2=0.9, epsilon=1e-4, clipvalue=0.3)),
    ("adamax", dict(learning_rate=0.01, weight_decay=0.02, global_clipnorm=0.6)),
    ("adadelta", dict(learning_rate=1.0)),
    ("adadelta", dict(learning_rate=0.5, rho=0.8, epsilon=1e-5, clipnorm=0.5)),
    ("adadelta", dict(learning_rate=1.0, weight_decay=0.01, clipvalue=0.2)),
    ("ftrl", dict(learning_rate=0.05)),
    ("ftrl", dict(learning_rate=0.05, learning_rate_power=-0.7, initial_accumulator_value=0.3,
                  l1_regularization_strength=0.01, l2_regularization_strength=0.02,
                  l2_shrinkage_regularization_strength=0.03, beta=0.1)),
    ("ftrl", dict(learning_rate=0.05, learning_rate_power=0.0, l1_regularization_strength=0.2,
                  global_clipnorm=0.8)),
    ("lion", dict(learning_rate=0.01)),
    ("lion", dict(learning_rate=0.01, beta_1=0.8, beta_2=0.95, weight_decay=0.1)),
    ("lion", dict(learning_rate=0.01, beta_1=1.0, clipvalue=0.1)),
]
NEW_CLASSES = {"nadam": optimizers.Nadam, "adamax": optimizers.Adamax,
               "adadelta": optimizers.Adadelta, "ftrl": optimizers.Ftrl,
               "lion": optimizers.Lion}
KERAS_SLOTS = {"nadam": ["momentum", "velocity"], "adamax": ["momentum", "norm"],
               "adadelta": ["accumulated_grad", "accumulated_delta_var"],
               "ftrl": ["accumulator", "linear"], "lion": ["momentum"]}


def run_keras_new(kind, cfg, weights, grads_per_step):
    keras = keras_module()
    opt = getattr(keras.optimizers, NEW_CLASSES[kind].__name__)(**cfg)
    kvars = [keras.Variable(w.copy(), dtype="float32") for w in weights]
    for grads in grads_per_step:
        opt.apply_gradients([(keras.ops.convert_to_tensor(g), v) for g, v in zip(grads, kvars)])
    return [keras.ops.convert_to_numpy(v.value) for v in kvars]


@pytest.mark.parametrize("n_steps", [1, 6])
@pytest.mark.parametrize("case", NEW_CONFIGS, ids=config_id)
def test_new_optimizers_match_keras(case, n_steps):
    kind, cfg = case
    weights, grads = make_problem(seed=31 + n_steps, n_steps=n_steps)
    want = run_keras_new(kind, cfg, weights, grads)
    got, _ = run_pynn(NEW_CLASSES[kind](**cfg), weights, grads)
    assert_close_to_keras(got, want, f"{kind} {cfg} {n_steps} steps")


def run_new_reference(kind, cfg, weights, grads_per_step):
    """The float64 oracles of tests/reference/optim_ref.py stepped as Keras steps (per-tensor
    clipnorm, global_clipnorm or clipvalue; weight decay inside each *_update_ref)."""
    opt = NEW_CLASSES[kind](**cfg)
    lr = opt.learning_rate
    ws = [w.astype(np.float64) for w in weights]
    init = 0.0 if kind != "ftrl" else opt.initial_accumulator_value
    slots = [[np.full(w.shape, init if i == 0 else 0.0) for i in range(len(KERAS_SLOTS[kind]))]
             for w in ws]
    u_product = 1.0
    for t, grads in enumerate(grads_per_step, start=1):
        grads = [g.astype(np.float64) for g in grads]
        if opt.clipnorm:
            scales = [min(1.0, opt.clipnorm / max(np.sqrt(np.sum(g * g)), 1e-300)) for g in grads]
        elif opt.global_clipnorm:
            norm = np.sqrt(sum(np.sum(g * g) for g in grads))
            scales = [opt.global_clipnorm / max(norm, opt.global_clipnorm)] * len(grads)
        else:
            scales = [1.0] * len(grads)
        clip = (opt.clipvalue or 0.0, opt.weight_decay or 0.0)
        if kind == "nadam":
            u_product *= opt.beta_1 * (1 - 0.5 * 0.96**t)
        for i, g in enumerate(grads):
            if kind == "nadam":
                out = ref.nadam_update_ref(ws[i], g, *slots[i], lr, opt.beta_1, opt.beta_2,
                                           opt.epsilon, t, u_product, scales[i], *clip)
            elif kind == "adamax":
                out = ref.adamax_update_ref(ws[i], g, *slots[i], lr, opt.beta_1, opt.beta_2,
                                            opt.epsilon, t, scales[i], *clip)
            elif kind == "adadelta":
                out = ref.adadelta_update_ref(ws[i], g, *slots[i], lr, opt.rho, opt.epsilon,
                                              scales[i], *clip)
            elif kind == "ftrl":
                out = ref.ftrl_update_ref(ws[i], g, *slots[i], lr, opt.learning_rate_power,
                                          opt.l1_regularization_strength,
                                          opt.l2_regularization_strength,
                                          opt.l2_shrinkage_regularization_strength, opt.beta,
                                          scales[i], *clip)
            else:
                out = ref.lion_update_ref(ws[i], g, *slots[i], lr, opt.beta_1, opt.beta_2,
                                          scales[i], *clip)
            ws[i], slots[i] = out[0], list(out[1:])
    return ws


@pytest.mark.parametrize("case", NEW_CONFIGS, ids=config_id)
def test_new_optimizers_match_reference_in_float64(case):
    kind, cfg = case
    weights, grads = make_problem(seed=41, dtype=np.float64, n_steps=4)
    want = run_new_reference(kind, cfg, weights, grads)
    got, _ = run_pynn(NEW_CLASSES[kind](**cfg), weights, grads)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=f"{kind} {cfg}")


@pytest.mark.parametrize("case", NEW_CONFIGS, ids=config_id)
def test_new_optimizers_resume_bit_identically(case):
    kind, cfg = case
    weights, grads = make_problem(seed=43, n_steps=6)
    straight, _ = run_pynn(NEW_CLASSES[kind](**cfg), weights, grads)
    first = NEW_CLASSES[kind](**cfg)
    _, variables = run_pynn(first, weights, grads[:3])
    state = json.loads(json.dumps({"iterations": first.get_state()["iterations"]}))
    state["slots"] = first.get_state()["slots"]
    assert sorted(state["slots"]) == sorted(f"layer_{i}/kernel/{s}" for i in range(len(SHAPES))
                                            for s in KERAS_SLOTS[kind])
    second = optimizers.deserialize(json.loads(json.dumps(optimizers.serialize(first))))
    second.set_state(state, variables)
    for step in grads[3:]:
        for v, g in zip(variables, step):
            v.grad = g
        second.apply(variables)
    for a, b in zip([v.value for v in variables], straight):
        np.testing.assert_array_equal(a, b, err_msg=kind)


@pytest.mark.parametrize("case", NEW_CONFIGS, ids=config_id)
def test_new_optimizer_configs_round_trip(case):
    kind, cfg = case
    opt = NEW_CLASSES[kind](**cfg)
    again = optimizers.get(json.loads(json.dumps(optimizers.serialize(opt))))
    assert type(again) is type(opt) and again.get_config() == opt.get_config()
    assert type(optimizers.get(kind)) is type(opt)
    assert type(optimizers.get(type(opt).__name__)) is type(opt)


def test_new_optimizer_defaults_match_keras():
    keras = keras_module()
    for cls in NEW_CLASSES.values():
        mine = cls().get_config()
        theirs = getattr(keras.optimizers, cls.__name__)().get_config()
        for key, value in mine.items():
            if key != "name" and key in theirs:
                assert theirs[key] == pytest.approx(value) if isinstance(value, float) \
                    else theirs[key] == value, (cls.__name__, key)


@pytest.mark.parametrize("make,match", [
    (lambda: optimizers.Nadam(beta_1=1.0), r"Nadam: `beta_1` must be in \[0.0, 1.0\)"),
    (lambda: optimizers.Adamax(epsilon=-1), "Adamax: `epsilon` must be in"),
    (lambda: optimizers.Adadelta(rho=1.5), "Adadelta: `rho` must be in"),
    (lambda: optimizers.Ftrl(learning_rate_power=0.5), "Ftrl: `learning_rate_power` must be"),
    (lambda: optimizers.Ftrl(initial_accumulator_value=-0.1),
     "Ftrl: `initial_accumulator_value` must be in"),
    (lambda: optimizers.Ftrl(l1_regularization_strength=-1),
     "Ftrl: `l1_regularization_strength` must be in"),
    (lambda: optimizers.Lion(beta_1=0.0), "Lion: `beta_1` must be in the \\(0, 1\\] range"),
    (lambda: optimizers.Lion(beta_1=1.5), "Lion: `beta_1` must be in the \\(0, 1\\] range"),
    (lambda: optimizers.Nadam(unknown=1), "unknown"),
])
def test_new_optimizer_bad_arguments(make, match):
    with pytest.raises((TypeError, ValueError), match=match):
        make()
