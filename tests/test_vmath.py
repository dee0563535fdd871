"""native/_vmath.h: the branch-free float32 functions behind the float32 activations (and
the recurrent gates), through activation_forward / activation_backward, against float64
NumPy/SciPy in units in the last place, on wide random ranges; their special values; and
the vectorized loops against the same expression on one element at a time (a loop's
scalar tail), which must give the same bits."""

import numpy as np
import pytest
from scipy import special

from pynn._native.activation import activation_backward, activation_forward

SQRT2 = np.sqrt(2.0)

# float64 oracles of the float32 activations that _vmath.h computes
FORWARD = {
    "exponential": np.exp,
    "sigmoid": special.expit,
    "tanh": np.tanh,
    "elu": lambda x: np.where(x > 0, x, 0.7 * np.expm1(x)),
    "selu": lambda x: np.where(x > 0, 1.0507009873554805 * x,
                               1.0507009873554805 * 1.6732632423543772 * np.expm1(x)),
    "gelu": lambda x: 0.5 * x * special.erfc(-x / SQRT2),
    "softplus": lambda x: np.logaddexp(0.0, x),
    "silu": lambda x: x * special.expit(x),
    "mish": lambda x: x * np.tanh(np.logaddexp(0.0, x)),
}
# d act / dx of those whose backward calls a _vmath.h function
GRAD = {
    "gelu": lambda x: 0.5 * special.erfc(-x / SQRT2) + x * np.exp(-0.5 * x * x) / np.sqrt(
        2 * np.pi),
    "softplus": special.expit,
    "silu": lambda x: special.expit(x) * (1 + x * (1 - special.expit(x))),
    "mish": lambda x: (np.tanh(np.logaddexp(0.0, x))
                       + x * (1 - np.tanh(np.logaddexp(0.0, x)) ** 2) * special.expit(x)),
}
# Measured maxima on 150k points (Zen 4): exponential 0.96, sigmoid 2.35, tanh 1.29, elu 1.2,
# softplus 2.5, silu 2.6, mish 3.3 ulp. gelu's erfc carries x^2's rounding into e^-x^2: 17
# ulp (1.3e-6 relative) for |x| <= 5, relative 1e-5 below -5 where |gelu| < 1.5e-6.
ULP = {"exponential": 2, "sigmoid": 3, "tanh": 2, "elu": 2, "selu": 3, "softplus": 3,
       "silu": 3, "mish": 4}
RANGE = {"exponential": (-87, 88), "sigmoid": (-40, 40), "tanh": (-12, 12),
         "elu": (-20, 20), "selu": (-20, 20), "softplus": (-40, 40), "silu": (-40, 40),
         "mish": (-40, 40), "gelu": (-12, 12)}
ALPHA = {"elu": 0.7}


def _points(name, n=100_003):
    """Uniform over the range, dense near 0 (the polynomial / series branches and their
    switch points), an odd count so the loops end in a scalar tail."""
    rng = np.random.default_rng(len(name))
    lo, hi = RANGE[name]
    x = np.concatenate([rng.uniform(lo, hi, n), rng.normal(size=n // 2),
                        rng.uniform(-1e-3, 1e-3, 1001), [0.625, -0.625, 0.5, -0.5, 1e-30]])
    return x.astype(np.float32)


def _ulps(got, want):
    spacing = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    spacing = np.maximum(spacing, np.spacing(np.float32(np.finfo(np.float32).tiny)))
    return np.abs(got.astype(np.float64) - want) / spacing


@pytest.mark.parametrize("name", sorted(FORWARD))
def test_forward_within_ulps_of_float64(name):
    x = _points(name)
    got = activation_forward(x, name, ALPHA.get(name, 0.0))
    assert got.dtype == np.float32
    want = FORWARD[name](x.astype(np.float64))
    if name == "gelu":
        err = np.abs(got - want) / (2e-6 * np.abs(want) + 1e-10)
        bound = 1.0
    else:
        err, bound = _ulps(got, want), ULP[name]
    worst = int(np.argmax(err))
    assert err.max() <= bound, (name, float(err.max()), float(x[worst]))


@pytest.mark.parametrize("name", sorted(GRAD))
def test_backward_within_bounds_of_float64(name):
    x = _points(name)
    dy = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
    y = activation_forward(x, name, 0.0)
    got = activation_backward(dy, x, y, name, 0.0)
    x64 = x.astype(np.float64)
    if name == "softplus":
        # from y alone: -expm1(-y) = sigmoid(x), y itself rounded
        want = dy * -np.expm1(-y.astype(np.float64))
    else:
        want = dy * GRAD[name](x64)
    # the derivatives cross zero (gelu at -0.75, mish at -1.19, silu at -1.28), their
    # terms cancelling there: the error is against the terms' size (about 0.2)
    err = np.abs(got - want) / (np.abs(want) + 0.1 * np.abs(dy))
    worst = int(np.argmax(err))
    assert err.max() <= 2e-6, (name, float(err.max()), float(x[worst]))


@pytest.mark.parametrize("name", sorted(FORWARD) + ["softmax"])
def test_vector_loop_bits_equal_one_element_at_a_time(name):
    """A loop's vector body and its scalar tail, and act_value's scalar road (a size-1
    call runs no vector code), compute one expression: the same bits."""
    rng = np.random.default_rng(7)
    x = (rng.normal(size=517) * 6).astype(np.float32)
    alpha = ALPHA.get(name, 0.0)
    if name == "softmax":
        rows = x[:510].reshape(10, 51)
        whole = activation_forward(rows, name)
        for r in range(10):
            np.testing.assert_array_equal(activation_forward(rows[r:r + 1], name), whole[r:r + 1])
        return
    whole = activation_forward(x, name, alpha)
    single = np.concatenate([activation_forward(x[i:i + 1], name, alpha) for i in range(x.size)])
    np.testing.assert_array_equal(whole, single)
    # and shifted by one element, so every value meets the other side of the vector width
    np.testing.assert_array_equal(activation_forward(x[1:], name, alpha), whole[1:])
    if name in GRAD:
        dy = rng.normal(size=x.shape).astype(np.float32)
        full = activation_backward(dy, x, whole, name, alpha)
        np.testing.assert_array_equal(activation_backward(dy[1:], x[1:], whole[1:], name, alpha),
                                      full[1:])


SPECIAL = np.array([np.nan, np.inf, -np.inf, -1000, 1000, 88.7, 88.72, 88.73, -87.3, -87.4,
                    -104, 0.0], np.float32)


def test_special_values():
    with np.errstate(all="ignore"):
        x64 = SPECIAL.astype(np.float64)
        for name in ("exponential", "sigmoid", "tanh", "softplus", "elu"):
            got = activation_forward(SPECIAL, name, 1.0 if name == "elu" else 0.0)
            want = (FORWARD[name](x64) if name != "elu"
                    else np.where(x64 > 0, x64, np.expm1(x64))).astype(np.float32)
            # NaN stays NaN, overflow is inf, 0 and +-1 are exact; e^x below FLT_MIN
            # flushes to 0 (a quotient of it may still come out subnormal)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=name)
            ok = ~np.isnan(want)
            tiny = np.abs(want) < np.finfo(np.float32).tiny
            assert np.all(np.abs(got[ok & tiny]) < np.finfo(np.float32).tiny), name
            np.testing.assert_allclose(got[ok & ~tiny], want[ok & ~tiny], rtol=3e-7,
                                       err_msg=name)
    # odd functions keep the sign of zero, as PyTorch's and libm's
    zeros = np.array([-0.0, 0.0], np.float32)
    for name, alpha in (("tanh", 0.0), ("elu", 1.0), ("selu", 0.0)):
        np.testing.assert_array_equal(np.signbit(activation_forward(zeros, name, alpha)),
                                      [True, False], err_msg=name)
    sm = activation_forward(np.array([[np.nan, 1, 2], [-np.inf, 0, 1], [1e30, -1e30, 0]],
                                     np.float32), "softmax")
    assert np.isnan(sm[0]).all()
    np.testing.assert_allclose(sm[1], special.softmax([-np.inf, 0, 1]), rtol=3e-7)
    np.testing.assert_array_equal(sm[2], [1, 0, 0])


@pytest.mark.parametrize("cols", [1, 7, 8, 1031])
def test_softmax_rows_forward_and_backward_against_float64(cols):
    """softmax's float32 row passes (16-lane max, eight double lanes for the exp sum and the
    backward's dot, then a scalar tail): against float64 on rows that end in every lane."""
    rng = np.random.default_rng(cols)
    x = (rng.normal(size=(5, cols)) * 4).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    y = activation_forward(x, "softmax")
    x64 = x.astype(np.float64)
    want = np.exp(x64 - x64.max(axis=1, keepdims=True))
    want /= want.sum(axis=1, keepdims=True)
    # z - max rounds in float32 first: its error (an ulp of |z - max|) goes into e^ as is
    np.testing.assert_allclose(y, want, rtol=2e-6, atol=1e-12)
    dx = activation_backward(dy, None, y, "softmax")
    y64 = y.astype(np.float64)
    want_dx = y64 * (dy - (dy * y64).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(dx, want_dx, rtol=1e-6,
                               atol=1e-7 * float(np.abs(want_dx).max()))
