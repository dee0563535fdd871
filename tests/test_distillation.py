"""Knowledge distillation (pynn.compression.Distiller): the distillation loss and its gradient
against the float64 reference (tests/reference/distillation_ref.py) on both backends, a whole
training step's gradients against finite differences, only the student training, evaluate on
the student, and bad arguments."""

import numpy as np
import pytest

import pynn
from pynn import layers, losses, optimizers
from pynn.compression import Distiller
from tests.backend_util import assert_close, rand
from tests.reference import distillation_ref as ref
from tests.reference.gradcheck import assert_close as assert_grad_close
from tests.reference.gradcheck import numerical_grad


@pytest.fixture
def rng():
    return np.random.default_rng(1820)


def _models(c=6, k=5, hidden=9, dtype=None):
    teacher = pynn.Sequential([layers.Input((c,)), layers.Dense(hidden, activation="tanh"),
                               layers.Dense(k)])
    student = pynn.Sequential([layers.Input((c,)), layers.Dense(3, activation="tanh"),
                               layers.Dense(k)])
    return student, teacher


def _distiller(student, teacher, alpha=0.3, temperature=2.5, lr=0.01):
    d = Distiller(student, teacher)
    d.compile(optimizers.SGD(lr), metrics=["accuracy"],
              student_loss_fn=losses.SparseCategoricalCrossentropy(from_logits=True),
              alpha=alpha, temperature=temperature)
    return d


@pytest.mark.parametrize("n,k,temperature", [(1, 2, 1.0), (7, 5, 3.0), (33, 10, 10.0)])
def test_distillation_loss_and_gradient_match_reference(backend, rng, n, k, temperature):
    t, s = rand(rng, (n, k)) * 3, rand(rng, (n, k)) * 3
    pynn.set_device(backend.name)  # the Distiller runs on the current device's ops
    try:
        d = _distiller(*_models(k=k), temperature=temperature)
        value, grad = d.distillation_loss(backend.up(t), backend.up(s))
        grad = backend.down(grad)
    finally:
        pynn.set_device("cpu")
    want = ref.distillation_loss_ref(t, s, temperature)
    assert isinstance(value, float)
    assert abs(value - want) <= 1e-4 * max(1.0, abs(want))
    s64 = s.astype(np.float64)
    numeric = numerical_grad(lambda: ref.distillation_loss_ref(t, s64, temperature), s64)
    assert_close(grad, numeric, 1e-4, "d distillation / d student logits")


def test_training_step_gradients_match_finite_differences(rng, float64):
    """One SGD step with lr 1 moves every student weight by minus its gradient: compare with
    central differences of the float64 reference loss through the student's forward."""
    student, teacher = _models()
    d = _distiller(student, teacher, alpha=0.4, temperature=2.0, lr=1.0)
    x = rand(rng, (7, 6), np.float64)
    y = rng.integers(0, 5, 7)
    t_logits = teacher.predict(x, verbose=0)
    before = [np.array(w) for w in student.get_weights()]

    def loss():
        return ref.distiller_loss_ref(y, t_logits, student.predict(x, verbose=0), 0.4, 2.0)

    numeric = [numerical_grad(loss, v.value) for v in student.weights]
    first = d.train_on_batch(x, y)[0]  # [loss, accuracy]
    assert first == pytest.approx(loss_at(student, before, x, y, t_logits), rel=1e-10)
    for v, w0, num in zip(student.weights, before, numeric):
        assert_grad_close(v.path, w0 - np.asarray(v.value), num, rtol=1e-5, atol=1e-8)


def loss_at(student, weights, x, y, t_logits):
    now = student.get_weights()
    student.set_weights(weights)
    value = ref.distiller_loss_ref(y, t_logits, student.predict(x, verbose=0), 0.4, 2.0)
    student.set_weights(now)
    return value


def test_fit_trains_only_the_student_and_evaluates_it(rng):
    student, teacher = _models()
    teacher_weights = [np.array(w) for w in teacher.get_weights()]
    student_before = [np.array(w) for w in student.get_weights()]
    d = _distiller(student, teacher, lr=0.05)
    x, y = rand(rng, (40, 6)), rng.integers(0, 5, 40)
    history = d.fit(x, y, batch_size=8, epochs=3, verbose=0)
    assert len(history.history["loss"]) == 3
    for got, want in zip(teacher.get_weights(), teacher_weights):
        np.testing.assert_array_equal(got, want)
    assert any(np.any(a != b) for a, b in zip(student.get_weights(), student_before))
    student.compile("sgd", losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=["accuracy"])
    np.testing.assert_allclose(d.evaluate(x, y, verbose=0), student.evaluate(x, y, verbose=0),
                               rtol=1e-6)
    np.testing.assert_array_equal(d.predict(x, verbose=0), student.predict(x, verbose=0))


def test_distillation_pulls_the_student_towards_the_teacher(rng):
    """alpha = 0: the student learns the teacher's softened outputs alone; its divergence
    from the teacher falls."""
    student, teacher = _models()
    d = _distiller(student, teacher, alpha=0.0, temperature=2.0, lr=0.5)
    x, y = rand(rng, (64, 6)), rng.integers(0, 5, 64)
    t_logits = teacher.predict(x, verbose=0)
    start = ref.distillation_loss_ref(t_logits, student.predict(x, verbose=0), 2.0)
    d.fit(x, y, batch_size=16, epochs=10, verbose=0)
    end = ref.distillation_loss_ref(t_logits, student.predict(x, verbose=0), 2.0)
    assert end < 0.5 * start


@pytest.mark.parametrize("make,message", [
    (lambda s, t: Distiller(s, pynn.Sequential([layers.Input((6,)), layers.Dense(4)])),
     r"student's output shape \(None, 5\) differs from the teacher's \(None, 4\)"),
    (lambda s, t: Distiller(s, "teacher"), (r"the teacher must be a built pynn Model, got "
                                           r"'teacher'")),
    (lambda s, t: Distiller(s, t).compile("sgd"), r"student_loss_fn is required"),
    (lambda s, t: Distiller(s, t).compile("sgd", student_loss_fn="mse", alpha=1.5),
     r"alpha must be a float in \[0, 1\], got 1.5"),
    (lambda s, t: Distiller(s, t).compile("sgd", student_loss_fn="mse", temperature=0),
     r"temperature must be a positive number, got 0"),
    (lambda s, t: Distiller(s, t).compile(
        "sgd", student_loss_fn="mse",
        distillation_loss_fn=losses.CategoricalCrossentropy(from_logits=True)),
     r"distillation_loss_fn compares two probability distributions"),
])
def test_distiller_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make(*_models())


@pytest.mark.opencl
def test_distiller_fit_on_opencl_matches_cpu(rng):
    x, y = rand(rng, (16, 6)), rng.integers(0, 5, 16)
    results = []
    for device in ("cpu", "opencl"):
        pynn.set_device(device)
        try:
            pynn.utils.set_random_seed(5) if hasattr(pynn, "utils") else None
            student, teacher = _models()
            if results:
                student.set_weights(results[0][1])
                teacher.set_weights(results[0][2])
            s0, t0 = student.get_weights(), teacher.get_weights()
            d = _distiller(student, teacher, lr=0.1)
            loss = d.train_on_batch(x, y)
            results.append((loss, s0, t0, student.get_weights()))
        finally:
            pynn.set_device("cpu")
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-5)
    for a, b in zip(results[0][3], results[1][3]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
