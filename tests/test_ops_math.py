"""pynn.ops' remaining keras.ops math (pynn/ops/numpy_math.py): one table of ops, each checked
four ways as in tests/test_ops_keras3.py: forward against the float64 NumPy reference, the
tape's gradient against central differences (float64), forward and gradient against
keras.ops on torch (float32), and OpenCL against the CPU for the ops that run on the device.
Then the host-only ops (integers, value-dependent shapes), their refusals, and bad inputs.
"""

import numpy as np
import pytest

import pynn
from pynn import ops
from tests.backend_util import keras_on_torch
from tests.test_ops import check_grad


def _x(*shape, positive=False, seed=0):
    a = np.random.default_rng(seed + 37 * len(shape) + sum(shape)).standard_normal(shape)
    if a.size:
        a.flat[0] = 0.625
    return np.abs(a) + 0.5 if positive else a


def _with_nan(*shape, seed=0):
    """Random values with NaN in a few places (never a whole row)."""
    a = _x(*shape, seed=seed)
    a.flat[1::4] = np.nan
    return a


def _ints(*values):
    return np.asarray(values, np.int32)


NAN_ROW = _with_nan(3, 7)
NAN_ROW[1] = np.nan  # one all-NaN row
SORTED = np.sort(_x(9))
WEIGHTS = _x(5, positive=True, seed=3)


def _segment_ref(x, ids, n, fold, fill):
    y = np.full((n,) + x.shape[1:], fill)
    fold.at(y, np.asarray(ids), x)
    return y


def _with_zeros(*shape):
    """Random rows with zeros: one in a segment alone and two in another (segment_prod's
    gradient is exact for both)."""
    a = _x(*shape, seed=5)
    a[0, 0] = 0.0  # segment 1 (rows 0, 2, 3): one zero in column 0
    a[1, 1] = a[4, 1] = 0.0  # segment 0 (rows 1, 4): two zeros in column 1
    return a


def _vandermonde_points():
    a = _x(5)
    a[2] = 0.0  # the gradient at 0 must be exact
    return a


def _trapezoid_points():
    return np.cumsum(_x(7, positive=True, seed=2))


# name -> (call(o, *xs) with o pynn.ops or keras.ops, inputs, float64 reference or None
# where Keras itself is the reference, runs on the device)
CASES = {
    "nansum": (lambda o, x: o.nansum(x, axis=1), [_with_nan(3, 7)],
               lambda x: np.nansum(x, 1), True),
    "nansum_all": (lambda o, x: o.nansum(x), [_with_nan(3, 5)], np.nansum, True),
    "nanmean": (lambda o, x: o.nanmean(x, axis=0, keepdims=True), [_with_nan(5, 3)],
                lambda x: np.nanmean(x, 0, keepdims=True), True),
    "nanvar": (lambda o, x: o.nanvar(x, axis=1), [_with_nan(3, 7)],
               lambda x: np.nanvar(x, 1), True),
    "nanstd": (lambda o, x: o.nanstd(x, axis=(0, 2)), [_with_nan(3, 5, 2)],
               lambda x: np.nanstd(x, (0, 2)), True),
    "nanmax": (lambda o, x: o.nanmax(x, axis=1), [_with_nan(3, 7)],
               lambda x: np.nanmax(x, 1), True),
    "nanmin": (lambda o, x: o.nanmin(x, axis=0), [_with_nan(5, 3)],
               lambda x: np.nanmin(x, 0), True),
    "nanprod": (lambda o, x: o.nanprod(x, axis=1), [_with_nan(3, 5)],
                lambda x: np.nanprod(x, 1), True),
    "nancumsum": (lambda o, x: o.nancumsum(x, axis=1), [_with_nan(3, 7)],
                  lambda x: np.nancumsum(x, 1), True),
    "nancumprod": (lambda o, x: o.nancumprod(x, axis=0), [_with_nan(5, 3)],
                   lambda x: np.nancumprod(x, 0), True),
    "nanmedian": (lambda o, x: o.nanmedian(x, axis=1), [_with_nan(3, 7)],
                  lambda x: np.nanmedian(x, 1), True),
    "nanquantile": (lambda o, x: o.nanquantile(x, [0.2, 0.75], axis=1), [_with_nan(3, 9)],
                    lambda x: np.nanquantile(x, [0.2, 0.75], 1), True),
    "nanpercentile": (lambda o, x: o.nanpercentile(x, 30.0, axis=0), [_with_nan(7, 3)],
                      lambda x: np.nanpercentile(x, 30.0, 0), True),
    "median": (lambda o, x: o.median(x, axis=1), [_x(3, 7)], lambda x: np.median(x, 1), True),
    "median_even": (lambda o, x: o.median(x), [_x(3, 4)], np.median, True),
    "quantile": (lambda o, x: o.quantile(x, [0.1, 0.5, 0.9], axis=0), [_x(9, 3)],
                 lambda x: np.quantile(x, [0.1, 0.5, 0.9], 0), True),
    "quantile_axes_keepdims": (lambda o, x: o.quantile(x, 0.3, axis=(0, 2), keepdims=True),
                               [_x(3, 2, 5)],
                               lambda x: np.quantile(x, 0.3, (0, 2), keepdims=True), True),
    "quantile_lower": (lambda o, x: o.quantile(x, 0.3, axis=1, method="lower"), [_x(3, 7)],
                       lambda x: np.quantile(x, 0.3, 1, method="lower"), True),
    "quantile_higher": (lambda o, x: o.quantile(x, 0.3, axis=1, method="higher"),
                        [_x(3, 7)], lambda x: np.quantile(x, 0.3, 1, method="higher"), True),
    "quantile_midpoint": (lambda o, x: o.quantile(x, 0.3, axis=1, method="midpoint"),
                          [_x(3, 7)], lambda x: np.quantile(x, 0.3, 1, method="midpoint"),
                          True),
    "quantile_nearest": (lambda o, x: o.quantile(x, 0.4, axis=1, method="nearest"),
                         [_x(3, 7)], lambda x: np.quantile(x, 0.4, 1, method="nearest"),
                         True),
    "percentile": (lambda o, x: o.percentile(x, [25.0, 60.0], axis=-1), [_x(2, 3, 5)],
                   lambda x: np.percentile(x, [25.0, 60.0], -1), True),
    "average": (lambda o, x: o.average(x, axis=1), [_x(3, 5)],
                lambda x: np.average(x, 1), True),
    "average_weights": (lambda o, x, w: o.average(x, axis=1, weights=w), [_x(3, 5), WEIGHTS],
                        lambda x, w: np.average(x, 1, w), True),
    "average_full_weights": (lambda o, x, w: o.average(x, weights=w),
                             [_x(3, 5), _x(3, 5, positive=True, seed=4)],
                             lambda x, w: np.average(x, weights=w), True),
    "ptp": (lambda o, x: o.ptp(x, axis=0), [_x(5, 3)], lambda x: np.ptp(x, 0), True),
    "corrcoef": (lambda o, x: o.corrcoef(x), [_x(3, 7)], np.corrcoef, True),
    "cdist": (lambda o, a, b: o.cdist(a, b), [_x(2, 3, 4), _x(2, 5, 4, seed=1)],
              lambda a, b: np.sqrt(((a[:, :, None] - b[:, None]) ** 2).sum(-1)), True),
    "psnr": (lambda o, a, b: o.psnr(a, b, 2.0), [_x(3, 5), _x(3, 5, seed=1)],
             lambda a, b: 20 * np.log10(2.0) - 10 * np.log10(np.mean((a - b) ** 2)), True),
    "diff": (lambda o, x: o.diff(x, axis=0), [_x(5, 3)], lambda x: np.diff(x, axis=0), True),
    "diff_twice": (lambda o, x: o.diff(x, n=2), [_x(3, 7)], lambda x: np.diff(x, 2), True),
    "trapezoid_dx": (lambda o, y: o.trapezoid(y, dx=0.5), [_x(3, 7)],
                     lambda y: np.trapezoid(y, dx=0.5), True),
    "trapezoid_x": (lambda o, y, x: o.trapezoid(y, x, axis=0), [_x(7, 3), _trapezoid_points()],
                    lambda y, x: np.trapezoid(y, x, axis=0), True),
    "vander": (lambda o, x: o.vander(x), [_vandermonde_points()], np.vander, True),
    "vander_increasing": (lambda o, x: o.vander(x, 3, increasing=True), [_x(5)],
                          lambda x: np.vander(x, 3, increasing=True), True),
    "vdot": (lambda o, a, b: o.vdot(a, b), [_x(3, 5), _x(15, seed=1)],
             lambda a, b: np.vdot(a, b), True),
    "kron": (lambda o, a, b: o.kron(a, b), [_x(2, 3), _x(3, 2, seed=1)], np.kron, True),
    "kron_ranks": (lambda o, a, b: o.kron(a, b), [_x(3), _x(2, 3, seed=1)], np.kron, True),
    "cross": (lambda o, a, b: o.cross(a, b), [_x(5, 3), _x(5, 3, seed=1)], np.cross, True),
    "cross_axis": (lambda o, a, b: o.cross(a, b, axis=0), [_x(3, 5), _x(3, 5, seed=1)],
                   lambda a, b: np.cross(a, b, axis=0), True),
    "cross_2_and_3": (lambda o, a, b: o.cross(a, b), [_x(5, 2), _x(5, 3, seed=1)],
                      np.cross, True),
    "correlate_valid": (lambda o, a, b: o.correlate(a, b), [_x(9), _x(4, seed=1)],
                        np.correlate, True),
    "correlate_same": (lambda o, a, b: o.correlate(a, b, mode="same"), [_x(9), _x(4, seed=1)],
                       lambda a, b: np.correlate(a, b, "same"), True),
    "correlate_full": (lambda o, a, b: o.correlate(a, b, mode="full"), [_x(7), _x(3, seed=1)],
                       lambda a, b: np.correlate(a, b, "full"), True),
    "correlate_longer_second": (lambda o, a, b: o.correlate(a, b, mode="full"),
                                [_x(3), _x(7, seed=1)],
                                lambda a, b: np.correlate(a, b, "full"), True),
    "bincount_weights": (lambda o, w: o.bincount(_ints(2, 0, 2, 5, 1), weights=w,
                                                 minlength=7),
                         [WEIGHTS], lambda w: np.bincount([2, 0, 2, 5, 1], w, 7), True),
    "segment_min": (lambda o, x: o.segment_min(x, _ints(2, 0, 1, 3, 0), num_segments=4),
                    [_x(5, 3)], lambda x: _segment_ref(x, [2, 0, 1, 3, 0], 4, np.minimum,
                                                       np.inf), True),
    "segment_prod": (lambda o, x: o.segment_prod(x, _ints(1, 0, 1, 1, 0, 3), num_segments=5),
                     [_with_zeros(6, 3)], lambda x: _segment_ref(x, [1, 0, 1, 1, 0, 3], 5,
                                                                 np.multiply, 1.0), True),
    "append": (lambda o, a, b: o.append(a, b), [_x(3, 2), _x(5)], np.append, True),
    "append_axis": (lambda o, a, b: o.append(a, b, axis=1), [_x(3, 2), _x(3, 5)],
                    lambda a, b: np.append(a, b, 1), True),
    "i0": (lambda o, x: o.i0(x), [_x(3, 7) * 4], lambda x: np.i0(x), True),
    "sinc": (lambda o, x: o.sinc(x), [np.concatenate([[0.0], _x(8)])], np.sinc, True),
    "fabs": (lambda o, x: o.fabs(x), [_x(3, 5)], np.fabs, True),
    "deg2rad": (lambda o, x: o.deg2rad(x), [_x(3, 5) * 90], np.deg2rad, True),
    "rad2deg": (lambda o, x: o.rad2deg(x), [_x(3, 5)], np.rad2deg, True),
    "fmax": (lambda o, a, b: o.fmax(a, b), [_with_nan(3, 5), _with_nan(5, seed=1) * 1.5],
             np.fmax, True),
    "fmin": (lambda o, a, b: o.fmin(a, b), [_with_nan(3, 5), _with_nan(5, seed=1) * 1.5],
             np.fmin, True),
    "ldexp": (lambda o, x: o.ldexp(x, _ints(-2, 0, 3, 1, 5)), [_x(3, 5)],
              lambda x: np.ldexp(x, [-2, 0, 3, 1, 5]), True),
    "logaddexp2": (lambda o, a, b: o.logaddexp2(a, b), [_x(3, 5) * 40, _x(5, seed=1)],
                   np.logaddexp2, True),
    "divide_no_nan": (lambda o, a, b: o.divide_no_nan(a, b),
                      [_x(3, 5), np.array([1.5, 0.0, -2.0, 0.0, 0.5])],
                      lambda a, b: np.where(b == 0, 0.0, a / np.where(b == 0, 1, b)), True),
    "real": (lambda o, x: o.real(x), [_x(3, 5)], np.real, True),
    "conj": (lambda o, x: o.conj(x), [_x(3, 5)], np.conj, True),
    "conjugate": (lambda o, x: o.conjugate(x), [_x(3, 5)], np.conjugate, True),
}
# Ops without a gradient (or whose result is not a float): values only.
VALUE_CASES = {
    "nanargmax": (lambda o, x: o.nanargmax(x, axis=1), [NAN_ROW],
                  lambda x: np.where(np.all(np.isnan(x), 1), -1,
                                     np.argmax(np.where(np.isnan(x), -np.inf, x), 1)), True),
    "nanargmin": (lambda o, x: o.nanargmin(x, axis=0), [_with_nan(5, 3)],
                  lambda x: np.nanargmin(x, 0), True),
    "nanmax_all_nan_row": (lambda o, x: o.nanmax(x, axis=1), [NAN_ROW],
                           lambda x: np.array([np.nan if np.all(np.isnan(r)) else np.nanmax(r)
                                               for r in x]), True),
    "segment_min_empty": (lambda o, x: o.segment_min(x, _ints(2, 0, 2, 3, 0), num_segments=5),
                          [_x(5, 3)], lambda x: _segment_ref(x, [2, 0, 2, 3, 0], 5, np.minimum,
                                                             np.inf), True),
    "count_nonzero": (lambda o, x: o.count_nonzero(x, axis=0),
                      [np.array([[0.0, 1.5, 0.0], [2.0, 0.0, 0.0], [1.0, 1.0, 0.0]])],
                      lambda x: np.count_nonzero(x, 0), True),
    "searchsorted": (lambda o, s, v: o.searchsorted(s, v), [SORTED, _x(2, 3, seed=1)],
                     np.searchsorted, True),
    "searchsorted_right": (lambda o, s, v: o.searchsorted(s, v, side="right"),
                           [np.array([0.0, 1.0, 1.0, 2.0, 3.0]),
                            np.array([1.0, -1.0, 2.5, 3.0, 1.0])],
                           lambda s, v: np.searchsorted(s, v, "right"), True),
    "digitize": (lambda o, x, b: o.digitize(x, b), [_x(3, 5), np.array([-1.0, 0.0, 0.5, 1.5])],
                 np.digitize, True),
    "histogram": (lambda o, x: o.histogram(x, bins=6)[0], [_x(31)],
                  lambda x: np.histogram(x, 6)[0], True),
    "histogram_range": (lambda o, x: o.histogram(x, bins=5, range=(-1.0, 1.0))[0], [_x(31)],
                        lambda x: np.histogram(x, 5, (-1.0, 1.0))[0], True),
    "histogram_edges": (lambda o, x: o.histogram(x, bins=4)[1], [_x(31)],
                        lambda x: np.histogram(x, 4)[1], True),
    "bincount": (lambda o, x: o.bincount(x), [_ints(3, 0, 1, 3, 3, 7)], np.bincount, True),
    "isin": (lambda o, a, b: o.isin(a, b), [np.array([[1.0, 2.5, 3.0], [4.0, 5.0, 2.5]]),
                                            np.array([2.5, 4.0, 9.0])], np.isin, True),
    "isin_invert": (lambda o, a, b: o.isin(a, b, invert=True),
                    [np.array([1.0, 2.5, 3.0]), np.array([[2.5], [3.0]])],
                    lambda a, b: np.isin(a, b, invert=True), True),
    "allclose": (lambda o, a, b: o.allclose(a, b), [np.array([1.0, 2.0]),
                                                    np.array([1.0 + 1e-7, 2.0])],
                 np.allclose, True),
    "heaviside": (lambda o, a, b: o.heaviside(a, b),
                  [np.array([-1.5, 0.0, 2.0, np.nan, 0.0]), np.array([0.5, 0.25, 0.5, 0.5, 1])],
                  np.heaviside, True),
    "signbit": (lambda o, x: o.signbit(x), [np.array([-1.5, -0.0, 0.0, 2.0, -np.inf])],
                np.signbit, True),
    "isneginf": (lambda o, x: o.isneginf(x), [np.array([1.0, np.inf, -np.inf, np.nan])],
                 np.isneginf, True),
    "isposinf": (lambda o, x: o.isposinf(x), [np.array([1.0, np.inf, -np.inf, np.nan])],
                 np.isposinf, True),
    "isreal": (lambda o, x: o.isreal(x), [_x(3, 5)], np.isreal, True),
    "imag": (lambda o, x: o.imag(x), [_x(3, 5)], np.imag, True),
    "angle": (lambda o, x: o.angle(x), [np.array([-1.5, 0.0, 2.0, -3.0])], np.angle, True),
}


def _case(name):
    return {**CASES, **VALUE_CASES}[name]


@pytest.mark.parametrize("name", sorted({**CASES, **VALUE_CASES}))
def test_forward_matches_the_float64_reference(name):
    call, xs, ref, _ = _case(name)
    with np.errstate(all="ignore"):
        got = np.asarray(call(ops, *xs))
        want = np.asarray(ref(*xs))
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=1e-12,
                               atol=1e-12, err_msg=name)


# The NaN places get no gradient: differences are taken at the others only (NaN inputs are
# not perturbed: their numeric derivative is NaN, the tape's 0).
@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_by_central_differences(name):
    call, xs, _, _ = CASES[name]
    xs = [np.array(x, np.float64) for x in xs]
    if any(np.isnan(x).any() for x in xs):
        pytest.skip("NaN inputs: checked by test_nan_places_get_no_gradient")
    if name == "divide_no_nan":
        pytest.skip("a step at x2 = 0: checked by test_divide_no_nan_gradient")
    check_grad(name, lambda *a: call(ops, *a), xs, rtol=1e-5, atol=1e-7)


NAN_REDUCTIONS = ["nansum", "nanmean", "nanvar", "nanstd", "nanmax", "nanmin", "nanprod",
                  "nancumsum", "nancumprod", "nanmedian", "nanquantile", "nanpercentile",
                  "fmax", "fmin"]


@pytest.mark.parametrize("name", NAN_REDUCTIONS)
def test_nan_places_get_no_gradient_and_the_rest_match_differences(name):
    call, xs, _, _ = CASES[name]
    xs = [np.array(x, np.float64) for x in xs]
    x = xs[0]
    rng = np.random.default_rng(7)
    r = rng.standard_normal(np.asarray(call(ops, *xs)).shape)
    t = ops.convert_to_tensor(x)
    with pynn.GradientTape() as tape:
        tape.watch(t)
        y = call(ops, t, *xs[1:])
        loss = ops.sum(ops.multiply(ops.where(ops.isnan(y), 0.0, y), r))
    g = tape.gradient(loss, [t])[0].numpy()
    assert np.all(g[np.isnan(x)] == 0), f"{name}: gradient at NaN places"

    def f(v):
        out = np.asarray(call(ops, v, *xs[1:]))
        return float(np.sum(np.where(np.isnan(out), 0, out) * r))

    eps = 1e-6
    for i in np.flatnonzero(~np.isnan(x))[:12]:
        up, down = x.copy(), x.copy()
        up.flat[i] += eps
        down.flat[i] -= eps
        numeric = (f(up) - f(down)) / (2 * eps)
        assert abs(g.flat[i] - numeric) <= 1e-5 * max(1, abs(numeric)), \
            f"{name}: d/dx[{i}] {g.flat[i]} vs {numeric}"


def _keras_run(keras, call, xs, r):
    import torch
    ts = [torch.tensor(x.astype(np.float32), requires_grad=r is not None) if x.dtype.kind == "f"
          else torch.tensor(x) for x in xs]
    y = call(keras.ops, *ts)
    if not isinstance(y, torch.Tensor):
        y = torch.as_tensor(np.asarray(y))
    if not y.dtype.is_floating_point or r is None:
        return y.detach().cpu().numpy(), []
    (torch.nan_to_num(y) * torch.tensor(r)).sum().backward()
    return y.detach().cpu().numpy(), [None if t.grad is None else t.grad.numpy() for t in ts
                                      if t.dtype.is_floating_point]


def _float32(x):
    return x.astype(np.float32) if x.dtype.kind == "f" else x


def _pynn_run(call, xs, r):
    tensors = [ops.convert_to_tensor(_float32(x)) for x in xs]
    with pynn.GradientTape() as tape:
        for t in tensors:
            tape.watch(t)
        y = call(ops, *tensors)
        out = np.asarray(y)
        if out.dtype.kind != "f":
            return out, []
        loss = ops.sum(ops.multiply(ops.where(ops.isnan(y), 0.0, y), r))
    grads = tape.gradient(loss, tensors) if tensors else []
    return out, [None if g is None else g.numpy() for g in grads]


# Keras 3.15 on torch departs from keras.ops' documented (NumPy's) meaning here; pynn keeps
# NumPy's, checked against the float64 reference above.
KERAS_TORCH_DEPARTS = {
    "average_full_weights": "keras' torch backend divides by the weights' sum over the last "
                            "axis only (NumPy: over the averaged axes)",
    "cross_2_and_3": "torch.cross takes 3-vectors only (NumPy zero-extends 2-vectors)",
    "heaviside": "torch.heaviside gives 0 at NaN (NumPy keeps NaN)",
    "imag": "torch.imag refuses real tensors (NumPy gives zeros)",
    "ldexp": "keras' torch backend computes 2**x2 in integers: 0 for negative x2, so its "
             "gradient is 0 there (NumPy: x1 * 2**x2 exactly)",
    "vdot": "torch.vdot takes 1-D inputs only (NumPy flattens)",
}
# Keras on torch returns another dtype than keras.ops documents (NumPy's) here.
KERAS_TORCH_DTYPES = set()
# Keras's values are compared, not its gradients: torch has none (bincount), or its backward
# fails on Keras's in-place construction (vander).
KERAS_TORCH_HAS_NO_GRADIENT = {"bincount_weights", "vander", "vander_increasing"}


@pytest.mark.parametrize("name", sorted({**CASES, **VALUE_CASES}))
def test_keras_parity_of_values_and_gradients(name):
    keras = keras_on_torch()
    if name in KERAS_TORCH_DEPARTS:
        pytest.skip(KERAS_TORCH_DEPARTS[name])
    call, xs, _, _ = _case(name)
    with np.errstate(all="ignore"):
        probe = np.asarray(call(ops, *[_float32(x) for x in xs]))
    r = np.random.default_rng(5).standard_normal(probe.shape).astype(np.float32)
    with_gradient = name in CASES and name not in KERAS_TORCH_HAS_NO_GRADIENT
    want, want_g = _keras_run(keras, call, xs, r if with_gradient else None)
    with np.errstate(all="ignore"):
        got, got_g = _pynn_run(call, xs, r) if with_gradient else (probe, [])
    assert got.shape == want.shape, f"{name}: shape {got.shape}, Keras {want.shape}"
    assert got.dtype == want.dtype or name in KERAS_TORCH_DTYPES, \
        f"{name}: dtype {got.dtype}, Keras {want.dtype}"
    if want.dtype.kind in "biu":
        np.testing.assert_array_equal(got, want, err_msg=name)
    else:
        scale = max(1.0, float(np.max(np.abs(want[np.isfinite(want)]), initial=0)))
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * scale, err_msg=name)
    for i, (g, w) in enumerate(zip(got_g, want_g)):
        if w is None or g is None:
            continue
        s = max(1.0, float(np.max(np.abs(w))))
        np.testing.assert_allclose(g, w, rtol=0, atol=2e-5 * s, err_msg=f"{name} d/dx{i}")


DEVICE = sorted(n for n, case in {**CASES, **VALUE_CASES}.items() if case[3])


@pytest.mark.opencl
@pytest.mark.parametrize("name", DEVICE)
def test_opencl_matches_the_cpu(name):
    from tests.test_ops_device import _on, _run
    call, xs, _, _ = _case(name)
    xs = [_float32(x) for x in xs]
    results = []
    for device in ("cpu", "opencl"):
        with _on(device), np.errstate(all="ignore"):
            results.append(_run(lambda *a: call(ops, *a), xs) if name in CASES else
                           (np.asarray(call(ops, *xs)), []))
    (want, want_g), (got, got_g) = results
    assert got.shape == want.shape, f"{name}: shape {got.shape} != CPU's {want.shape}"
    # predicates come back as float 0/1 from the device (as its comparisons do)
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=1e-5,
                               atol=1e-5 * max(1.0, float(np.nanmax(np.abs(
                                   want.astype(np.float64)), initial=0))), err_msg=name)
    for i, (g, w) in enumerate(zip(got_g, want_g)):
        assert (g is None) == (w is None), f"{name}: gradient {i} on one backend only"
        if w is not None:
            s = max(1.0, float(np.nanmax(np.abs(w))))
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-4 * s, err_msg=f"{name} d/dx{i}")


def test_divide_no_nan_gradient_is_zero_where_the_divisor_is():
    a, b = _x(3, 5), np.array([1.5, 0.0, -2.0, 0.0, 0.5])
    ta, tb = ops.convert_to_tensor(a), ops.convert_to_tensor(b)
    with pynn.GradientTape() as tape:
        tape.watch(ta)
        tape.watch(tb)
        loss = ops.sum(ops.divide_no_nan(ta, tb))
    ga, gb = (g.numpy() for g in tape.gradient(loss, [ta, tb]))
    safe = np.where(b == 0, 1, b)
    np.testing.assert_allclose(ga, np.broadcast_to(np.where(b == 0, 0, 1 / safe), a.shape))
    np.testing.assert_allclose(gb, np.where(b == 0, 0, -(a / safe ** 2).sum(0)))


def test_argpartition_puts_the_kth_in_its_sorted_place():
    x = _x(3, 7)
    order = np.asarray(ops.argpartition(x, 2, axis=1))
    assert order.dtype == np.int32
    assert np.array_equal(np.sort(order, 1), np.tile(np.arange(7), (3, 1)))
    parted = np.take_along_axis(x, order, 1)
    np.testing.assert_array_equal(parted[:, 2], np.sort(x, 1)[:, 2])
    assert np.all(parted[:, :2].max(1) <= parted[:, 2])
    assert np.all(parted[:, 3:].min(1) >= parted[:, 2])


# -- host-only ops: integers, value-dependent shapes, the float's bits -----------------------
A_INTS = np.array([[12, -7, 0, 255], [3, 18, -64, 5]], np.int32)
B_INTS = np.array([5, 3, 9, 2], np.int32)
SHIFTS = np.array([1, 0, 3, 2], np.int32)

# name -> (call(o, *xs), inputs, NumPy reference)
HOST_CASES = {
    "bitwise_and": (lambda o, a, b: o.bitwise_and(a, b), [A_INTS, B_INTS], np.bitwise_and),
    "bitwise_or": (lambda o, a, b: o.bitwise_or(a, b), [A_INTS, B_INTS], np.bitwise_or),
    "bitwise_xor": (lambda o, a, b: o.bitwise_xor(a, b), [A_INTS, B_INTS], np.bitwise_xor),
    "bitwise_and_bool": (lambda o, a, b: o.bitwise_and(a, b),
                         [np.array([True, False, True]), np.array([True, True, False])],
                         np.bitwise_and),
    "bitwise_not": (lambda o, a: o.bitwise_not(a), [A_INTS], np.invert),
    "bitwise_invert": (lambda o, a: o.bitwise_invert(a), [A_INTS], np.invert),
    "left_shift": (lambda o, a, b: o.left_shift(a, b), [A_INTS, SHIFTS], np.left_shift),
    "right_shift": (lambda o, a, b: o.right_shift(a, b), [A_INTS, SHIFTS], np.right_shift),
    "bitwise_left_shift": (lambda o, a, b: o.bitwise_left_shift(a, b), [A_INTS, SHIFTS],
                           np.left_shift),
    "bitwise_right_shift": (lambda o, a, b: o.bitwise_right_shift(a, b), [A_INTS, SHIFTS],
                            np.right_shift),
    "gcd": (lambda o, a, b: o.gcd(a, b), [A_INTS, B_INTS], np.gcd),
    "lcm": (lambda o, a, b: o.lcm(a, b), [A_INTS, B_INTS], np.lcm),
    "unravel_index": (lambda o, i: np.stack(o.unravel_index(i, (3, 5, 2))),
                      [np.array([0, 7, 29, 13], np.int32)],
                      lambda i: np.stack(np.unravel_index(i, (3, 5, 2)))),
    "nextafter": (lambda o, a, b: o.nextafter(a, b),
                  [np.array([1.0, -2.0, 0.0, 3.5], np.float32),
                   np.array([2.0, -3.0, -1.0, 3.5], np.float32)], np.nextafter),
    "saturate_cast_uint8": (lambda o, x: o.saturate_cast(x, "uint8"),
                            [np.array([-3.5, 0.0, 17.2, 255.9, 300.0], np.float32)],
                            lambda x: np.clip(x, 0, 255).astype(np.uint8)),
    "saturate_cast_int32": (lambda o, x: o.saturate_cast(x, "int32"),
                            [np.array([-3e10, 0.0, 17.2, 3e10], np.float32)],
                            lambda x: np.clip(x.astype(np.float64), -2**31, 2**31 - 128)
                            .astype(np.int32)),
    "saturate_cast_int8_from_int32": (lambda o, x: o.saturate_cast(x, "int8"),
                                      [np.array([-300, -5, 100, 1000], np.int32)],
                                      lambda x: np.clip(x, -128, 127).astype(np.int8)),
    "segment_min_ints": (lambda o, x: o.segment_min(x, _ints(0, 0, 2), num_segments=4),
                         [np.array([[3, -1], [1, 5], [2, 2]], np.int32)],
                         lambda x: np.array([[1, -1], [2**31 - 1] * 2, [2, 2], [2**31 - 1] * 2],
                                            np.int32)),
    "segment_prod_ints": (lambda o, x: o.segment_prod(x, _ints(0, 0, 2), num_segments=4),
                          [np.array([[3, -1], [1, 5], [2, 2]], np.int32)],
                          lambda x: np.array([[3, -5], [1, 1], [2, 2], [1, 1]], np.int32)),
    "nonzero": (lambda o, x: np.stack(o.nonzero(x)),
                [np.array([[0.0, 1.5, 0.0], [2.0, 0.0, -1.0]])],
                lambda x: np.stack(np.nonzero(x))),
    "unique": (lambda o, x: o.unique(x), [np.array([3, 1, 3, 2, 1, 7], np.int32)], np.unique),
    "unique_counts": (lambda o, x: np.stack(o.unique(x, return_index=True,
                                                     return_counts=True)),
                      [np.array([3, 1, 3, 2, 1, 7], np.int32)],
                      lambda x: np.stack(np.unique(x, return_index=True,
                                                   return_counts=True))),
    "unique_inverse": (lambda o, x: o.unique(x, return_inverse=True)[1],
                       [np.array([3.5, 1.0, 3.5, 2.0], np.float32)],
                       lambda x: np.unique(x, return_inverse=True)[1]),
    "unique_size": (lambda o, x: o.unique(x, size=6, fill_value=-1),
                    [np.array([3, 1, 3, 2], np.int32)],
                    lambda x: np.array([1, 2, 3, -1, -1, -1])),
}


@pytest.mark.parametrize("name", sorted(HOST_CASES))
def test_host_ops_match_numpy(name):
    call, xs, ref = HOST_CASES[name]
    got = np.asarray(call(ops, *xs))
    want = np.asarray(ref(*xs))
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    np.testing.assert_array_equal(got, want, err_msg=name)
    if want.dtype.kind == "f" or name.startswith(("bitwise", "gcd", "lcm", "left", "right",
                                                    "saturate")):
        assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"


KERAS_HOST_DEPARTS = {
    "unique_size": "keras' torch backend ignores size and fill_value",
    "segment_min_ints": "keras' torch backend fills an empty segment with int64's minimum "
                        "(its -inf cast) and returns int64; pynn: the dtype's largest value",
    "saturate_cast_int32": "keras clips float32 at int32's max rounded to float32 (2**31), "
                           "whose cast wraps to int32's min; pynn clips at the largest "
                           "float32 below 2**31",
    "nextafter": "keras' torch backend steps in float64 and rounds back to float32 (the "
                 "input itself); NumPy steps in the input's float32",
}


@pytest.mark.parametrize("name", sorted(HOST_CASES))
def test_host_ops_keras_parity(name):
    keras = keras_on_torch()
    if name in KERAS_HOST_DEPARTS:
        pytest.skip(KERAS_HOST_DEPARTS[name])
    import torch
    call, xs, _ = HOST_CASES[name]
    got = np.asarray(call(ops, *xs))
    want = call(keras.ops, *[torch.tensor(x) for x in xs])
    want = np.asarray(want.cpu() if hasattr(want, "cpu") else want)
    assert got.shape == want.shape, f"{name}: shape {got.shape}, Keras {want.shape}"
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype}, Keras {want.dtype}"
    np.testing.assert_array_equal(got, want, err_msg=name)


def test_window_functions_and_spaced_sequences_match_numpy_and_keras():
    cases = {
        "bartlett": (lambda o: o.bartlett(7), np.bartlett(7)),
        "blackman": (lambda o: o.blackman(8), np.blackman(8)),
        "hamming": (lambda o: o.hamming(7), np.hamming(7)),
        "hanning": (lambda o: o.hanning(9), np.hanning(9)),
        "kaiser": (lambda o: o.kaiser(7, 4.5), np.kaiser(7, 4.5)),
        "logspace": (lambda o: o.logspace(-1.0, 2.0, 7), np.logspace(-1.0, 2.0, 7)),
        "logspace_base": (lambda o: o.logspace(0.0, 3.0, 5, base=2.0, endpoint=False),
                          np.logspace(0.0, 3.0, 5, base=2.0, endpoint=False)),
        "geomspace": (lambda o: o.geomspace(1.0, 1000.0, 7), np.geomspace(1.0, 1000.0, 7)),
    }
    try:
        keras = keras_on_torch()
    except pytest.skip.Exception:
        keras = None
    for name, (call, want) in cases.items():
        got = np.asarray(call(ops))
        assert got.dtype == np.float32, f"{name}: dtype {got.dtype}"
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=name)
        if keras is not None:
            k = np.asarray(call(keras.ops).cpu())
            np.testing.assert_allclose(got, k, rtol=2e-6, atol=1e-6, err_msg=f"{name} Keras")


def test_bincount_without_weights_is_int32_and_with_weights_has_a_gradient():
    counts = np.asarray(ops.bincount(_ints(3, 0, 1, 3), minlength=6))
    assert counts.dtype == np.int32
    np.testing.assert_array_equal(counts, [1, 1, 0, 2, 0, 0])
    check_grad("bincount weights", lambda w: ops.bincount(_ints(2, 0, 2, 5, 1), weights=w),
               [np.array(WEIGHTS, np.float64)])


def test_real_input_views_and_complex_refusals():
    x = _x(3, 4)
    np.testing.assert_array_equal(np.asarray(ops.isreal(x)), np.ones((3, 4), bool))
    z = np.array([1 + 2j, 3 - 1j])
    for name in ("real", "imag", "conj", "conjugate", "angle", "isreal"):
        with pytest.raises(TypeError, match=f"pynn.ops.{name}: pynn has no complex dtype"):
            getattr(ops, name)(z)
    with pytest.raises(NotImplementedError, match="polar: the result is complex"):
        ops.polar(x, x)


def test_value_dependent_shapes_are_refused_in_a_functional_graph():
    inp = pynn.Input((5,))
    for name in ("unique", "nonzero"):
        with pytest.raises(ValueError, match=f"pynn.ops.{name}: the output's shape depends"):
            getattr(ops, name)(inp)


def test_op_nodes_of_a_functional_model_save_and_load(tmp_path):
    inp = pynn.Input((4, 5))
    h = ops.nanmean(inp, axis=-1, keepdims=True) + ops.quantile(inp, 0.25, axis=-1,
                                                                 keepdims=True)
    h = ops.sinc(h) + ops.i0(inp)
    out = ops.ptp(ops.cumsum(h, axis=1), axis=-1)
    model = pynn.Model(inp, out)
    x = _x(3, 4, 5).astype(np.float32)
    want = model.predict(x, verbose=0)
    path = tmp_path / "math.pynn"
    model.save(path)
    got = pynn.load_model(path).predict(x, verbose=0)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    ref = np.sinc(x.mean(-1, keepdims=True) + np.quantile(x, 0.25, -1, keepdims=True)) + np.i0(x)
    ref = np.ptp(np.cumsum(ref, 1), -1)
    np.testing.assert_allclose(want, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.opencl
@pytest.mark.parametrize("name", ["unique", "nonzero", "unravel_index"])
def test_host_ops_are_refused_by_name_on_opencl(name):
    from tests.test_ops_device import _on
    call, xs, _ = HOST_CASES[name]
    with _on("opencl"):
        with pytest.raises(NotImplementedError, match=f"pynn.ops.{name}: no opencl kernel"):
            call(ops, *xs)


def test_nextafter_takes_float32s_own_step_on_both_backends():
    a = np.array([1.0, -2.0, 0.0, 3.5, 1e-40, np.inf], np.float32)
    toward = np.array([2.0, -3.0, -1.0, 3.5, 0.0, 0.0], np.float32)
    want = np.nextafter(a, toward)
    got = np.asarray(ops.nextafter(a, toward))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))
    np.testing.assert_array_equal(np.asarray(ops.nextafter(a.astype(np.float64), 5.0)),
                                  np.nextafter(a.astype(np.float64), 5.0))


@pytest.mark.opencl
def test_nextafter_on_opencl_matches_the_cpu_bit_for_bit():
    from tests.test_ops_device import _on
    a = np.array([1.0, -2.0, 0.0, 3.5, 7.25, np.inf], np.float32)
    toward = np.array([2.0, -3.0, -1.0, 3.5, 0.0, 0.0], np.float32)
    with _on("opencl") as b:
        got = np.asarray(ops.nextafter(b.asarray(a, np.float32), b.asarray(toward, np.float32)))
    np.testing.assert_array_equal(got.view(np.int32), np.nextafter(a, toward).view(np.int32))


@pytest.mark.opencl
def test_saturate_cast_and_bincount_on_opencl_match_the_cpu():
    from tests.test_ops_device import _on
    call, xs, _ = HOST_CASES["saturate_cast_int32"]
    results = []
    for device in ("cpu", "opencl"):
        with _on(device) as b:
            results.append((np.asarray(call(ops, b.asarray(xs[0], np.float32))),
                            np.asarray(ops.bincount(_ints(3, 0, 1, 3), minlength=6))))
            if device == "opencl":
                with pytest.raises(TypeError, match="saturate_cast: the opencl backend holds"):
                    ops.saturate_cast(b.asarray(xs[0], np.float32), "uint8")
    for got, want in zip(results[1], results[0]):
        assert got.dtype == want.dtype == np.int32
        np.testing.assert_array_equal(got, want)


INTEGER_OPS = ["bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not", "bitwise_invert",
               "left_shift", "right_shift", "bitwise_left_shift", "bitwise_right_shift", "gcd",
               "lcm"]


@pytest.mark.opencl
@pytest.mark.parametrize("name", INTEGER_OPS)
def test_integer_ops_on_opencl_match_the_cpu(name):
    from tests.test_ops_device import _on
    call, xs, _ = HOST_CASES[name]
    results = []
    for device in ("cpu", "opencl"):
        with _on(device):
            results.append(np.asarray(call(ops, *xs)))
    assert results[1].dtype == np.int32
    np.testing.assert_array_equal(results[1], results[0], err_msg=name)


def test_integer_ops_take_int64_python_scalars_and_refuse_bools_for_shifts():
    a = A_INTS.astype(np.int64) * 3_000_000_000
    np.testing.assert_array_equal(np.asarray(ops.right_shift(a, 3)), a >> 3)
    got = np.asarray(ops.left_shift(A_INTS, 2))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, A_INTS << 2)
    np.testing.assert_array_equal(np.asarray(ops.bitwise_xor(7, B_INTS)), 7 ^ B_INTS)
    np.testing.assert_array_equal(np.asarray(ops.bitwise_and(A_INTS.astype(np.uint8),
                                                             np.uint8(6))),
                                  A_INTS.astype(np.uint8) & 6)
    with pytest.raises(TypeError, match="right_shift: expected integer inputs, got bool"):
        ops.right_shift(np.array([True]), 1)


@pytest.mark.parametrize("call, message", [
    (lambda: ops.nansum(_x(3, 4), axis=2), "nansum: axis 2 is out of range for a 2-D"),
    (lambda: ops.nanmean(_x(3, 4), axis=(0, 0)), "nanmean: repeated axis"),
    (lambda: ops.quantile(_x(3, 4), 1.5), r"quantile: quantiles must lie in \[0, 1\]"),
    (lambda: ops.quantile(_x(3, 4), 0.5, method="cubic"), "quantile: method must be one of"),
    (lambda: ops.quantile(_x(3, 4), [[0.5]]), "quantile: q must be a scalar or 1-D"),
    (lambda: ops.percentile(_x(3, 4), 120), r"percentile: percentiles must lie in \[0, 100\]"),
    (lambda: ops.median(_x(3, 0), axis=1), "median: cannot take quantiles of an empty"),
    (lambda: ops.average(_x(3, 4), axis=1, weights=_x(3)), "average: weights must have"),
    (lambda: ops.corrcoef(_x(2, 3, 4)), "corrcoef: expected a 1-D or 2-D input"),
    (lambda: ops.cdist(_x(3), _x(3, 2)), "cdist: expected x"),
    (lambda: ops.psnr(_x(3, 4), _x(4, 3), 1.0), "psnr: x1 and x2 must have the same shape"),
    (lambda: ops.bincount(_x(4)), "bincount: expected a 1-D integer x"),
    (lambda: ops.bincount(_ints(1, -2)), "bincount: x must be non-negative"),
    (lambda: ops.bincount(_ints(1, 2), weights=_x(3)), "bincount: weights must have"),
    (lambda: ops.bincount(_ints(1, 2), sparse=True), "bincount: sparse=True is not"),
    (lambda: ops.searchsorted(_x(2, 3), _x(2)), "searchsorted: sorted_sequence must be 1-D"),
    (lambda: ops.searchsorted(SORTED, _x(2), side="middle"), "searchsorted: side must be"),
    (lambda: ops.digitize(_x(3), np.array([0.0, 2.0, 1.0])), "digitize: bins must be mono"),
    (lambda: ops.histogram(_x(3, 4)), "histogram: expected a 1-D input"),
    (lambda: ops.histogram(_x(5), bins=0), "histogram: bins must be a positive int"),
    (lambda: ops.histogram(_x(5), range=(1.0, -1.0)), "histogram: range must be"),
    (lambda: ops.argpartition(_x(3, 4), 4), "argpartition: kth 4 is out of range"),
    (lambda: ops.unravel_index(_ints(3, 40), (3, 5)), r"unravel_index: indices must lie in"),
    (lambda: ops.unravel_index(_x(3), (3, 5)), "unravel_index: expected an integer input"),
    (lambda: ops.diff(_x(3), n=-1), "diff: n must be >= 0"),
    (lambda: ops.diff(_x(3), axis=1), "diff: axis 1 is out of range"),
    (lambda: ops.trapezoid(_x(3, 4), _x(5)), "trapezoid: x must hold 4 points"),
    (lambda: ops.vander(_x(3, 4)), "vander: expected a 1-D input"),
    (lambda: ops.vdot(_x(3), _x(4)), "vdot: the inputs must have as many elements"),
    (lambda: ops.cross(_x(3, 4), _x(3, 4)), "cross: the vector axes must have 2 or 3"),
    (lambda: ops.correlate(_x(3, 2), _x(2)), "correlate: expected 1-D inputs"),
    (lambda: ops.correlate(_x(3), _x(2), mode="circular"), "correlate: mode must be one of"),
    (lambda: ops.append(_x(3, 2), _x(3), axis=0), "append: x1 and x2 must have as many"),
    (lambda: ops.bitwise_and(_x(3), _ints(1, 2, 3)), "bitwise_and: expected an integer"),
    (lambda: ops.left_shift(_x(3), 1), "left_shift: expected an integer input"),
    (lambda: ops.bitwise_not(_x(3)), "bitwise_not: expected an integer input"),
    (lambda: ops.gcd(np.array([True]), np.array([False])), "gcd: expected integer inputs"),
    (lambda: ops.ldexp(_x(3), _x(3)), "ldexp: x2 must be integers"),
    (lambda: ops.geomspace(0.0, 1.0, 5), "geomspace: start and stop must not be 0"),
    (lambda: ops.logspace(0.0, 1.0, -1), "logspace: num must be >= 0"),
    (lambda: ops.hamming(2.5), "hamming: expected the window length as an int"),
    (lambda: ops.unique(_x(3), axis=1), "unique: axis 1 is out of range"),
])
def test_bad_inputs_are_refused_by_name(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


# -- seeded random chains of these ops (as tests/test_fuzz_ops.py does for the older ones) ---
def _fuzz_step(rng, v):
    rows, cols = (tuple(v.shape) + (1, 1))[:2]
    steps = [
        lambda v: ops.nansum(v, axis=-1, keepdims=True),
        lambda v: ops.nanmean(v, axis=0, keepdims=True),
        lambda v: ops.ptp(v, axis=-1, keepdims=True) if cols > 1 else ops.sinc(v),
        lambda v: ops.quantile(v, 0.3, axis=-1, keepdims=True),
        lambda v: ops.median(v, axis=0, keepdims=True),
        ops.sinc,
        lambda v: ops.i0(ops.tanh(v)),
        lambda v: ops.logaddexp2(v, ops.multiply(v, 0.5)),
        lambda v: ops.divide_no_nan(v, ops.add(ops.square(v), 0.5)),
        lambda v: ops.nancumsum(v, axis=-1),
        lambda v: ops.diff(v, axis=-1) if cols > 1 else ops.deg2rad(v),
        lambda v: ops.kron(v, np.array([[1.0, -0.5]], v.dtype)),
        lambda v: ops.expand_dims(ops.average(v, axis=-1, weights=np.linspace(
            0.5, 1.5, cols).astype(v.dtype)), -1),
        lambda v: ops.cdist(v, ops.add(ops.multiply(v, 0.5), 0.1)),
        lambda v: ops.expand_dims(ops.trapezoid(v, dx=0.5, axis=0), 0) if rows > 1 else
        ops.fabs(ops.add(v, 2.0)),
        lambda v: ops.nanvar(v, axis=-1, keepdims=True) if cols > 1 else ops.rad2deg(v),
    ]
    return steps[int(rng.integers(len(steps)))](v)


def _fuzz_chain(seed):
    def fn(x):
        rng = np.random.default_rng([seed, 1])
        v = x
        for _ in range(int(rng.integers(2, 5))):
            v = _fuzz_step(rng, v)
        return v
    return fn


def _fuzz_input(seed):
    rng = np.random.default_rng([seed, 0])
    return rng.uniform(-1, 1, (int(rng.integers(2, 5)), int(rng.integers(2, 6))))


@pytest.mark.parametrize("seed", range(24))
def test_random_chains_have_the_gradients_of_central_differences(seed):
    check_grad(f"chain {seed}", _fuzz_chain(seed), [_fuzz_input(seed)], rtol=1e-5, atol=1e-7)


@pytest.mark.opencl
@pytest.mark.parametrize("seed", range(24))
def test_random_chains_on_opencl_match_the_cpu(seed):
    from tests.test_ops_device import check_device
    check_device(f"chain {seed}", _fuzz_chain(seed), _fuzz_input(seed).astype(np.float32))
