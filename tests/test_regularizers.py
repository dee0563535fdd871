"""pynn/regularizers.py against tests/reference/optim_ref.py and Keras 3's regularizers."""

import json
import os

import numpy as np
import pytest

os.environ["KERAS_BACKEND"] = "torch"  # before any `import keras`

from pynn import backend, regularizers  # noqa: E402
from tests.reference import optim_ref as ref  # noqa: E402
from tests.test_optimizers import _optim_only_backend  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(autouse=True)
def cpu_backend(monkeypatch):
    try:
        from pynn.backend import cpu as be
    except ImportError:
        be = _optim_only_backend()
    monkeypatch.setattr(backend, "current", lambda: be)
    return be


REGULARIZERS = [regularizers.L1(), regularizers.L2(), regularizers.L1L2(l1=0.02, l2=0.05),
                regularizers.L1(0.3), regularizers.L2(l2=0.2), regularizers.L1L2(l2=0.1)]


def random_weights(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(0.1, 1.1, shape) * rng.choice([-1, 1], shape)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (3, 3, 2, 4)])
@pytest.mark.parametrize("reg", REGULARIZERS, ids=repr)
def test_apply_inplace_matches_reference(reg, shape, dtype):
    w = random_weights(shape, dtype)
    grad = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    want_grad, want_penalty = ref.regularizer_inplace_ref(w, grad, reg.l1, reg.l2)
    penalty = reg.apply_inplace(w, grad)
    assert penalty == pytest.approx(want_penalty, rel=1e-12)
    assert reg(w) == pytest.approx(want_penalty, rel=1e-12)
    tol = dict(rtol=1e-5, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-13)
    np.testing.assert_allclose(grad, want_grad, **tol)


def test_defaults_match_keras():
    assert regularizers.L1().l1 == 0.01 and regularizers.L1().l2 == 0.0
    assert regularizers.L2().l2 == 0.01 and regularizers.L2().l1 == 0.0
    both = regularizers.L1L2()
    assert (both.l1, both.l2) == (0.0, 0.0)
    assert regularizers.l1 is regularizers.L1
    assert regularizers.l2 is regularizers.L2
    assert regularizers.l1_l2 is regularizers.L1L2
    # Zero coefficients: no penalty, gradient untouched.
    grad = np.ones(3, np.float32)
    assert both.apply_inplace(np.ones(3, np.float32), grad) == 0.0
    np.testing.assert_array_equal(grad, 1.0)


@pytest.mark.parametrize("reg", REGULARIZERS, ids=repr)
def test_config_round_trip(reg):
    config = json.loads(json.dumps(regularizers.serialize(reg)))
    clone = regularizers.get(config)
    assert type(clone) is type(reg) and clone.get_config() == reg.get_config()
    assert type(reg).from_config(reg.get_config()).get_config() == reg.get_config()


def test_get():
    assert type(regularizers.get("l1")) is regularizers.L1
    assert type(regularizers.get("L2")) is regularizers.L2
    assert type(regularizers.get("l1_l2")) is regularizers.L1L2
    r = regularizers.L2(0.5)
    assert regularizers.get(r) is r
    assert regularizers.get(None) is None
    assert regularizers.get({"class_name": "L1L2", "config": {"l1": 0.1, "l2": 0.2}}).l2 == 0.2
    with pytest.raises(ValueError, match="Could not interpret"):
        regularizers.get("l3")
    with pytest.raises(ValueError, match="Could not interpret"):
        regularizers.get(0.1)
    with pytest.raises(ValueError, match="Unknown regularizer"):
        regularizers.get({"class_name": "Orthogonal", "config": {}})


@pytest.mark.parametrize("kwargs", [dict(l1=-0.1), dict(l1=float("nan")), dict(l2=float("inf")),
                                    dict(l1="x"), dict(l2=True)])
def test_bad_coefficients(kwargs):
    with pytest.raises(ValueError, match="non-negative float"):
        regularizers.L1L2(**kwargs)


def test_apply_inplace_bad_arrays():
    reg = regularizers.L2()
    with pytest.raises(ValueError, match="'grad' must have the shape"):
        reg.apply_inplace(np.ones(3, np.float32), np.zeros(4, np.float32))
    with pytest.raises(TypeError, match="'grad' must have the dtype"):
        reg.apply_inplace(np.ones(3, np.float32), np.zeros(3, np.float64))


@pytest.mark.parametrize("reg", REGULARIZERS, ids=repr)
def test_penalty_and_gradient_match_keras(reg):
    keras = pytest.importorskip("keras", reason="keras (torch backend) not importable")
    import torch

    w = random_weights((4, 5), np.float64, seed=3)
    w.flat[0] = 0.0  # sign(0) = 0 in both
    kreg = getattr(keras.regularizers, type(reg).__name__)(**reg.get_config())
    x = torch.tensor(w, requires_grad=True)
    penalty = kreg(x)
    penalty.backward()
    grad = np.zeros_like(w)
    got = reg.apply_inplace(w, grad)
    # Keras's L1 keeps its coefficient as a float32 tensor: 1e-7 relative, not 1e-12.
    assert got == pytest.approx(float(penalty.detach()), rel=1e-7)
    np.testing.assert_allclose(grad, x.grad.numpy(), rtol=1e-7, atol=1e-15)
