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
