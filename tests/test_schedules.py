"""pynn/schedules.py against the formulas in tests/reference/optim_ref.py and against Keras 3's
own schedules (torch backend; skipped when keras cannot be imported)."""

import json
import os

import pytest

os.environ["KERAS_BACKEND"] = "torch"  # before any `import keras`

from pynn import schedules  # noqa: E402
from tests.reference import optim_ref as ref  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

STEPS = [0, 1, 2, 3, 5, 7, 10, 13, 99, 100, 101, 1000]

# (pynn schedule, its reference formula)
CASES = [
    (schedules.ExponentialDecay(0.1, 10, 0.9),
     lambda s: ref.exponential_decay_ref(s, 0.1, 10, 0.9)),
    (schedules.ExponentialDecay(0.5, 3, 0.5, staircase=True),
     lambda s: ref.exponential_decay_ref(s, 0.5, 3, 0.5, staircase=True)),
    (schedules.InverseTimeDecay(0.1, 7, 0.5),
     lambda s: ref.inverse_time_decay_ref(s, 0.1, 7, 0.5)),
    (schedules.InverseTimeDecay(0.2, 4, 2.0, staircase=True),
     lambda s: ref.inverse_time_decay_ref(s, 0.2, 4, 2.0, staircase=True)),
    (schedules.PiecewiseConstantDecay([3, 10, 100], [1.0, 0.5, 0.1, 0.01]),
     lambda s: ref.piecewise_constant_decay_ref(s, [3, 10, 100], [1.0, 0.5, 0.1, 0.01])),
    (schedules.PiecewiseConstantDecay([5], [0.3, 0.03]),
     lambda s: ref.piecewise_constant_decay_ref(s, [5], [0.3, 0.03])),
    (schedules.CosineDecay(0.1, 100),
     lambda s: ref.cosine_decay_ref(s, 0.1, 100)),
    (schedules.CosineDecay(0.1, 13, alpha=0.2),
     lambda s: ref.cosine_decay_ref(s, 0.1, 13, alpha=0.2)),
    (schedules.CosineDecay(0.0, 50, alpha=0.1, warmup_target=0.2, warmup_steps=10),
     lambda s: ref.cosine_decay_ref(s, 0.0, 50, alpha=0.1, warmup_target=0.2,
                                    warmup_steps=10)),
    (schedules.CosineDecay(0.01, 7, warmup_target=0.05, warmup_steps=3),
     lambda s: ref.cosine_decay_ref(s, 0.01, 7, warmup_target=0.05, warmup_steps=3)),
]


def case_id(case):
    return repr(case[0])


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_schedule_matches_reference(case):
    sched, formula = case
    for step in STEPS:
        got = sched(step)
        assert isinstance(got, float)
        assert got == pytest.approx(formula(step), rel=1e-12, abs=1e-15), step


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_schedule_config_round_trip(case):
    sched, _ = case
    config = json.loads(json.dumps(schedules.serialize(sched)))
    assert config["class_name"] == type(sched).__name__
    clone = schedules.deserialize(config)
    assert type(clone) is type(sched)
    assert clone.get_config() == sched.get_config()
    assert type(sched).from_config(sched.get_config()).get_config() == sched.get_config()
    assert [clone(s) for s in STEPS] == [sched(s) for s in STEPS]
    assert schedules.get(config).get_config() == sched.get_config()
    assert schedules.get(sched) is sched


def test_polynomial_decay():
    s = schedules.PolynomialDecay(0.1, 10, end_learning_rate=0.01, power=2.0)
    assert s(0) == pytest.approx(0.1)
    assert s(5) == pytest.approx(0.09 * 0.25 + 0.01)
    assert s(10) == s(50) == pytest.approx(0.01)
    c = schedules.PolynomialDecay(0.1, 10, end_learning_rate=0.0, cycle=True)
    assert c(15) == pytest.approx(0.1 * (1 - 15 / 20))


def test_bad_arguments():
    for cls in (schedules.ExponentialDecay, schedules.InverseTimeDecay):
        with pytest.raises(ValueError, match="decay_steps"):
            cls(0.1, 0, 0.5)
    with pytest.raises(ValueError, match="decay_steps"):
        schedules.CosineDecay(0.1, -1)
    with pytest.raises(ValueError, match="1 less than"):
        schedules.PiecewiseConstantDecay([1, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="sorted"):
        schedules.PiecewiseConstantDecay([5, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="Unknown learning rate schedule"):
        schedules.deserialize({"class_name": "Nope", "config": {}})
    with pytest.raises(ValueError, match="Could not interpret"):
        schedules.get("exponential")
    with pytest.raises(NotImplementedError):
        schedules.LearningRateSchedule()(0)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_schedule_matches_keras(case):
    keras = pytest.importorskip("keras", reason="keras (torch backend) not importable")
    sched, _ = case
    kcls = getattr(keras.optimizers.schedules, type(sched).__name__)
    ksched = kcls(**sched.get_config())
    for step in STEPS:
        want = float(keras.ops.convert_to_numpy(ksched(step)))
        # Keras computes in float32: near the end of a cosine, 1 + cos(pi * p) cancels, so
        # its error there is float32 epsilon times the learning-rate scale, not relative.
        assert sched(step) == pytest.approx(want, rel=1e-6, abs=1e-8), step
