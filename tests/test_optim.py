"""native/optim.pyx and opencl/optim.cl against the float64 oracles in
tests/reference/optim_ref.py.

The checks that hold on both backends take the ``backend`` fixture (tests/conftest.py) and
run one body on each; OpenCL-only checks are marked ``opencl``.
"""

import os

import numpy as np
import pytest

import pynn
from pynn import constraints
from pynn._native import optim
from pynn._native.info import get_max_threads, set_num_threads
from tests.backend_util import assert_close, check_inplace, check_op, rand
from tests.reference import optim_ref as ref

SIZES = [1, 3, 7, 13, 4099]           # 4099 crosses a reduction block
BIG = 70001                           # above the parallel threshold
TOL = {np.float32: dict(rtol=2e-5, atol=1e-7), np.float64: dict(rtol=1e-12, atol=1e-15)}

# Per op: the ordered slot names, how to build the kernel call, how to call the oracle.
KERNELS = {
    "sgd_update": ("momentum_buf",),
    "adam_update": ("m", "v", "vhat"),
    "rmsprop_update": ("velocity", "momentum_buf", "average_grad"),
    "adagrad_update": ("accumulator",),
}

# (op, options) pairs covering every option of every rule, with clipping and weight decay.
CASES = [
    ("sgd_update", dict(momentum=0.0, nesterov=False)),
    ("sgd_update", dict(momentum=0.9, nesterov=False)),
    ("sgd_update", dict(momentum=0.9, nesterov=True)),
    ("sgd_update", dict(momentum=0.5, nesterov=True, grad_scale=0.7, weight_decay=0.01)),
    ("sgd_update", dict(momentum=0.0, nesterov=False, clipvalue=0.5)),
    ("adam_update", dict()),
    ("adam_update", dict(amsgrad=True)),
    ("adam_update", dict(weight_decay=0.004, grad_scale=0.6)),
    ("adam_update", dict(amsgrad=True, clipvalue=0.3, weight_decay=0.1)),
    ("rmsprop_update", dict()),
    ("rmsprop_update", dict(centered=True)),
    ("rmsprop_update", dict(momentum=0.9)),
    ("rmsprop_update", dict(momentum=0.5, centered=True, clipvalue=0.4, weight_decay=0.02)),
    ("rmsprop_update", dict(grad_scale=0.3)),
    ("adagrad_update", dict()),
    ("adagrad_update", dict(clipvalue=0.2, weight_decay=0.05, grad_scale=0.9)),
]


def case_id(case):
    op, opts = case
    return op + ("-" + ",".join(f"{k}={v}" for k, v in opts.items()) if opts else "")


def random_param(rng, shape, dtype):
    """Values in +-[0.1, 1.1]: never zero, so relative errors stay meaningful."""
    mag = rng.uniform(0.1, 1.1, size=shape)
    return (mag * rng.choice([-1.0, 1.0], size=shape)).astype(dtype)


class Problem:
    """One parameter with its slots, driven through the kernel and the oracle side by side."""

    def __init__(self, op, opts, shape, dtype, seed=0):
        self.op, self.dtype = op, dtype
        self.rng = np.random.default_rng(seed)
        self.opts = dict(opts)
        self.w = random_param(self.rng, shape, dtype)
        self.slots = self._initial_slots(shape, dtype)
        self.ref_w = ref.f64(self.w)
        self.ref_slots = {k: ref.f64(v) for k, v in self.slots.items()}
        self.t = 0

    def _initial_slots(self, shape, dtype):
        o = self.opts
        z = lambda: np.zeros(shape, dtype)  # noqa: E731
        if self.op == "sgd_update":
            return {"momentum_buf": z() if o.get("momentum", 0) else None}
        if self.op == "adam_update":
            return {"m": z(), "v": z(), "vhat": z() if o.get("amsgrad") else None}
        if self.op == "rmsprop_update":
            return {"velocity": z(), "momentum_buf": z() if o.get("momentum", 0) else None,
                    "average_grad": z() if o.get("centered") else None}
        return {"accumulator": np.full(shape, 0.1, dtype)}

    def grad(self):
        g = self.rng.standard_normal(self.w.shape) * self.opts.get("grad_size", 0.8)
        return g.astype(self.dtype)

    def args(self, w, g, slots):
        """Positional arguments in pynn.backend.api order."""
        o = self.opts
        common = (o.get("grad_scale", 1.0), o.get("clipvalue", 0.0), o.get("weight_decay", 0.0))
        lr = o.get("lr", {"sgd_update": 0.05}.get(self.op, 0.01))
        s = [slots[name] for name in KERNELS[self.op]]
        if self.op == "sgd_update":
            return (w, g, *s, lr, o.get("momentum", 0.0), o.get("nesterov", False), *common)
        if self.op == "adam_update":
            return (w, g, *s, lr, 0.9, 0.999, 1e-7, self.t, *common)
        if self.op == "rmsprop_update":
            return (w, g, *s, lr, 0.9, o.get("momentum", 0.0), 1e-7, *common)
        return (w, g, *s, lr, 1e-7, *common)

    def step(self, g=None):
        g = self.grad() if g is None else g
        self.t += 1
        g_before = g.copy()
        getattr(optim, self.op)(*self.args(self.w, g, self.slots))
        np.testing.assert_array_equal(g, g_before, err_msg=f"{self.op} modified g")
        out = getattr(ref, self.op + "_ref")(*self.args(self.ref_w, g, self.ref_slots))
        self.ref_w = out[0]
        for name, value in zip(KERNELS[self.op], out[1:]):
            self.ref_slots[name] = value

    def check(self, tol=None):
        tol = tol or TOL[self.dtype]
        assert self.w.dtype == self.dtype
        np.testing.assert_allclose(self.w, self.ref_w, err_msg=f"{self.op}: w", **tol)
        for name, value in self.slots.items():
            if value is None:
                assert self.ref_slots[name] is None
                continue
            np.testing.assert_allclose(value, self.ref_slots[name], err_msg=f"{self.op}: {name}",
                                       **tol)


# -- update rules ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_update_matches_reference_over_steps(case, size, dtype):
    op, opts = case
    p = Problem(op, opts, (size,), dtype, seed=size)
    for _ in range(5):
        p.step()
        p.check()


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_update_tiny_gradients_epsilon_placement(case):
    """With g*g near epsilon, where epsilon sits (inside or outside the square root, on the
    corrected or uncorrected moment) changes the step by far more than the tolerance."""
    op, opts = case
    p = Problem(op, dict(opts, grad_size=3e-4), (13,), np.float64, seed=9)
    for _ in range(4):
        p.step()
        p.check()


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_update_multidimensional_and_readonly_gradient(case):
    op, opts = case
    p = Problem(op, opts, (3, 5, 7), np.float32, seed=1)
    for _ in range(3):
        g = p.grad()
        g.flags.writeable = False
        p.step(g)
    p.check()


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_update_noncontiguous_and_other_dtype_gradient(case):
    """g is only read: a strided or float64 gradient for a float32 parameter is converted."""
    op, opts = case
    p = Problem(op, opts, (6, 5), np.float32, seed=2)
    big = p.rng.standard_normal((6, 10)).astype(np.float32)
    p.step(big[:, ::2])
    p.step(p.grad().astype(np.float64))
    p.check()


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_update_empty_parameter(case):
    op, opts = case
    for shape in [(0,), (0, 4)]:
        p = Problem(op, opts, shape, np.float32)
        p.step()
        assert p.w.shape == shape


def test_update_clipvalue_really_clips():
    """With a huge gradient, plain SGD moves every weight by exactly lr*clipvalue."""
    w = np.zeros(9, np.float64)
    g = np.array([-1e6, -3, -0.5, -0.1, 0.0, 0.1, 0.5, 3, 1e6])
    optim.sgd_update(w, g, None, 1.0, 0.0, False, 1.0, 0.25, 0.0)
    np.testing.assert_array_equal(w, -np.clip(g, -0.25, 0.25))


def test_update_nan_grad_scale_propagates():
    """A non-finite global norm poisons the step (as in Keras) instead of raising."""
    w = np.ones(4, np.float32)
    optim.sgd_update(w, np.ones(4, np.float32), None, 0.1, 0.0, False, float("nan"), 0.0, 0.0)
    assert np.isnan(w).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_update_nan_and_inf_gradients_poison_only_their_element(case, dtype):
    """A NaN gradient makes its weight NaN, through the clip and the subnormal flush (both
    selects in the kernels); +-inf is clipped when clipvalue is set and otherwise poisons
    its weight too (TerminateOnNaN relies on it). Every other element still follows the
    oracle: 77 elements, so the bad ones sit in the vector body and the scalar tail."""
    op, opts = case
    p = Problem(op, opts, (77,), dtype, seed=8)
    p.step()
    g = p.grad()
    bad = {5: np.nan, 40: np.inf, 76: -np.inf}
    for i, value in bad.items():
        g[i] = value
    w_before = p.w.copy()
    getattr(optim, op)(*p.args(p.w, g, p.slots))
    assert np.isnan(p.w[5]), f"{op}: a NaN gradient left w finite"
    for i in (40, 76):
        if opts.get("clipvalue", 0.0) > 0:
            assert np.isfinite(p.w[i]), f"{op}: an infinite gradient was not clipped"
        else:
            assert not np.isfinite(p.w[i]), f"{op}: an infinite gradient left w[{i}] = {p.w[i]}"
    good = np.setdiff1d(np.arange(77), list(bad))
    g_good = g.copy()
    g_good[list(bad)] = 0
    ref_w = getattr(ref, op + "_ref")(*p.args(ref.f64(w_before), g_good, p.ref_slots))[0]
    np.testing.assert_allclose(p.w[good], ref_w[good], err_msg=f"{op}: good elements",
                               **TOL[dtype])


# -- flush-to-zero of the slots ------------------------------------------------------------

# Adagrad's accumulator only grows; plain SGD has no slot.
FTZ_CASES = [c for c in CASES
             if c[0] != "adagrad_update" and not (c[0] == "sgd_update" and not c[1]["momentum"])]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", FTZ_CASES, ids=case_id)
def test_update_flushes_subnormal_slots_to_zero(case, dtype):
    """Dead units (g = 0) whose slots sit at or just above the smallest normal float decay
    into the subnormal range; the kernel stores exactly 0 there (flush-to-zero, as
    TensorFlow/Keras run), everything else still matches the oracle."""
    op, opts = case
    tiny = np.finfo(dtype).tiny
    p = Problem(op, opts, (77,), dtype, seed=4)   # 77: vector body and scalar tail
    p.step()                                      # every slot in use now holds normal values
    dead = np.arange(77) % 2 == 0
    for name, slot in p.slots.items():
        if slot is None:
            continue
        mag = p.rng.uniform(0.01, 1.05, size=int(dead.sum())) * tiny
        if name in ("v", "vhat", "velocity"):
            vals = mag                            # second moments are never negative
        else:
            vals = mag * p.rng.choice([-1.0, 1.0], size=mag.size)
        slot[dead] = vals.astype(dtype)
        p.ref_slots[name] = ref.f64(slot)
    g = p.grad()
    g[dead] = 0
    p.step(g)
    p.check()
    flushed = 0
    for name, slot in p.slots.items():
        if slot is None:
            continue
        below = np.abs(p.ref_slots[name]) < tiny
        np.testing.assert_array_equal(slot[below], 0, err_msg=f"{op}: {name} not flushed")
        subnormal = (slot != 0) & (np.abs(slot) < tiny)
        assert not subnormal.any(), f"{op}: {name} keeps subnormal values {slot[subnormal]}"
        flushed += int(below.sum())
    assert flushed > 0, "the setup must drive some slot below the normal range"


# -- thread invariance ----------------------------------------------------------------------

@pytest.fixture
def restore_threads():
    n = get_max_threads()
    yield
    set_num_threads(n)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_update_thread_invariance(case, restore_threads):
    op, opts = case
    results = []
    for n_threads in (1, 2, 3):
        set_num_threads(n_threads)
        p = Problem(op, opts, (BIG,), np.float32, seed=3)
        p.step()
        p.step()
        results.append([p.w] + [s for s in p.slots.values() if s is not None])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reductions_thread_invariance(dtype, restore_threads):
    rng = np.random.default_rng(4)
    a = rng.standard_normal(3 * BIG + 17).astype(dtype)
    sums, penalties, grads = [], [], []
    for n_threads in (1, 2, 3):
        set_num_threads(n_threads)
        sums.append(optim.sum_squares(a))
        grad = np.ones_like(a)
        penalties.append(optim.regularizer_inplace(a, grad, 0.01, 0.02))
        grads.append(grad)
    assert sums[0] == sums[1] == sums[2]
    assert penalties[0] == penalties[1] == penalties[2]
    for g in grads[1:]:
        np.testing.assert_array_equal(grads[0], g)


# -- sum_squares ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1,), (3,), (7, 13), (4099,), (BIG,), (2, 3, 5)])
def test_sum_squares_matches_reference(shape, dtype):
    a = np.random.default_rng(5).standard_normal(shape).astype(dtype)
    got = optim.sum_squares(a)
    assert isinstance(got, float)
    # Double accumulation: even float32 input sums to ~1e-13 relative.
    assert got == pytest.approx(ref.sum_squares_ref(a), rel=1e-12)


def test_sum_squares_empty_noncontiguous_and_fortran():
    assert optim.sum_squares(np.zeros((0, 3), np.float32)) == 0.0
    a = np.random.default_rng(6).standard_normal((7, 9))
    assert optim.sum_squares(a[:, ::2]) == pytest.approx(ref.sum_squares_ref(a[:, ::2]), rel=1e-12)
    assert optim.sum_squares(np.asfortranarray(a)) == pytest.approx(ref.sum_squares_ref(a),
                                                                    rel=1e-12)


# -- regularizer_inplace --------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1,), (3,), (7, 13), (4099,), (3, 3, 2, 5)])
@pytest.mark.parametrize("l1,l2", [(0.01, 0.0), (0.0, 0.01), (0.03, 0.2)])
def test_regularizer_matches_reference(shape, dtype, l1, l2):
    rng = np.random.default_rng(7)
    w = random_param(rng, shape, dtype)
    w.flat[0] = 0  # sign(0) = 0
    grad = rng.standard_normal(shape).astype(dtype)
    want_grad, want_penalty = ref.regularizer_inplace_ref(w, grad, l1, l2)
    penalty = optim.regularizer_inplace(w, grad, l1, l2)
    assert isinstance(penalty, float)
    assert penalty == pytest.approx(want_penalty, rel=1e-12)
    np.testing.assert_allclose(grad, want_grad, **TOL[dtype])


def test_regularizer_gradient_is_derivative_of_penalty():
    """Central differences (4th order) of the returned penalty in float64; w away from 0."""
    rng = np.random.default_rng(8)
    w = random_param(rng, (4, 3), np.float64)
    l1, l2, h = 0.03, 0.2, 1e-4
    grad = np.zeros_like(w)
    optim.regularizer_inplace(w, grad, l1, l2)

    def penalty(x):
        return optim.regularizer_inplace(x, np.zeros_like(x), l1, l2)

    numeric = np.zeros_like(w)
    for i in range(w.size):
        e = np.zeros_like(w)
        e.flat[i] = h
        numeric.flat[i] = (-penalty(w + 2 * e) + 8 * penalty(w + e) - 8 * penalty(w - e)
                           + penalty(w - 2 * e)) / (12 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-8, atol=1e-10)


def test_regularizer_zero_coefficients_and_empty():
    w = np.ones(5, np.float32)
    grad = np.full(5, 2.0, np.float32)
    assert optim.regularizer_inplace(w, grad, 0.0, 0.0) == 0.0
    np.testing.assert_array_equal(grad, 2.0)
    assert optim.regularizer_inplace(np.zeros(0, np.float32), np.zeros(0, np.float32), 0.1,
                                     0.1) == 0.0
    ro = np.ones(3)
    ro.flags.writeable = False      # w is only read
    grad = np.zeros(3)
    assert optim.regularizer_inplace(ro, grad, 0.5, 0.0) == pytest.approx(1.5)
    np.testing.assert_array_equal(grad, 0.5)


# -- bad inputs -----------------------------------------------------------------------------

def sgd_call(**over):
    args = dict(w=np.ones(4, np.float32), g=np.ones(4, np.float32),
                momentum_buf=np.zeros(4, np.float32), lr=0.1, momentum=0.9, nesterov=False,
                grad_scale=1.0, clipvalue=0.0, weight_decay=0.0)
    args.update(over)
    return optim.sgd_update(**args)


def adam_call(**over):
    args = dict(w=np.ones(4), g=np.ones(4), m=np.zeros(4), v=np.zeros(4), vhat=None, lr=0.1,
                beta_1=0.9, beta_2=0.999, epsilon=1e-7, t=1, grad_scale=1.0, clipvalue=0.0,
                weight_decay=0.0)
    args.update(over)
    return optim.adam_update(**args)


def readonly(a):
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("over,exc,match", [
    (dict(w=None), ValueError, "'w' is required"),
    (dict(w=[1.0, 2.0, 3.0, 4.0]), TypeError, "numpy.ndarray"),
    (dict(w=np.ones(4, np.int32)), TypeError, "float32 or float64"),
    (dict(w=np.ones((4, 2), np.float32)[:, 0]), ValueError, "C-contiguous"),
    (dict(w=np.asfortranarray(np.ones((2, 2), np.float32)), g=np.ones((2, 2), np.float32),
          momentum_buf=np.zeros((2, 2), np.float32)), ValueError, "C-contiguous"),
    (dict(w=readonly(np.ones(4, np.float32))), ValueError, "writable"),
    (dict(g=None), ValueError, "'g' is required"),
    (dict(g=np.ones(5, np.float32)), ValueError, "'g' must have the shape"),
    (dict(g=np.array(["a"] * 4)), TypeError, "numeric"),
    (dict(momentum_buf=np.zeros(5, np.float32)), ValueError, "'momentum_buf' must have the shape"),
    (dict(momentum_buf=np.zeros(4, np.float64)), TypeError, "'momentum_buf' must have the dtype"),
    (dict(momentum_buf=readonly(np.zeros(4, np.float32))), ValueError, "writable"),
    (dict(momentum_buf=None), ValueError, "needs a 'momentum_buf'"),
    (dict(lr=float("nan")), ValueError, "'lr' must not be NaN"),
    (dict(lr="fast"), TypeError, "'lr' must be a real number"),
    (dict(momentum=-0.1), ValueError, "'momentum' must be in"),
    (dict(grad_scale=-1.0), ValueError, "'grad_scale' must be in"),
    (dict(weight_decay=-0.01), ValueError, "'weight_decay' must be in"),
    (dict(clipvalue=float("inf")), ValueError, "'clipvalue' must be finite"),
])
def test_sgd_bad_inputs(over, exc, match):
    with pytest.raises(exc, match=match):
        sgd_call(**over)


def test_slot_aliasing_w_is_rejected():
    w = np.ones(4, np.float32)
    with pytest.raises(ValueError, match="share memory"):
        sgd_call(w=w, momentum_buf=w)
    m = np.zeros(4)
    with pytest.raises(ValueError, match="share memory"):
        adam_call(m=m, v=m)


@pytest.mark.parametrize("over,exc,match", [
    (dict(m=None), ValueError, "'m' and 'v' are required"),
    (dict(v=np.zeros(3)), ValueError, "'v' must have the shape"),
    (dict(vhat=np.zeros(4, np.float32)), TypeError, "'vhat' must have the dtype"),
    (dict(t=0), ValueError, "'t' must be an int >= 1"),
    (dict(t=1.5), ValueError, "'t' must be an int >= 1"),
    (dict(beta_1=1.0), ValueError, "'beta_1' must be in"),
    (dict(beta_2=-0.1), ValueError, "'beta_2' must be in"),
    (dict(epsilon=-1e-7), ValueError, "'epsilon' must be in"),
])
def test_adam_bad_inputs(over, exc, match):
    with pytest.raises(exc, match=match):
        adam_call(**over)


def test_rmsprop_adagrad_bad_inputs():
    w, g = np.ones(3), np.ones(3)
    with pytest.raises(ValueError, match="'velocity' is required"):
        optim.rmsprop_update(w, g, None, None, None, 0.1, 0.9, 0.0, 1e-7, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="needs a 'momentum_buf'"):
        optim.rmsprop_update(w, g, np.zeros(3), None, None, 0.1, 0.9, 0.5, 1e-7, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="'rho' must be in"):
        optim.rmsprop_update(w, g, np.zeros(3), None, None, 0.1, 1.5, 0.0, 1e-7, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="'average_grad' must have the shape"):
        optim.rmsprop_update(w, g, np.zeros(3), None, np.zeros(2), 0.1, 0.9, 0.0, 1e-7, 1.0,
                             0.0, 0.0)
    with pytest.raises(ValueError, match="'accumulator' is required"):
        optim.adagrad_update(w, g, None, 0.1, 1e-7, 1.0, 0.0, 0.0)
    with pytest.raises(TypeError, match="'accumulator' must have the dtype"):
        optim.adagrad_update(w, g, np.zeros(3, np.float32), 0.1, 1e-7, 1.0, 0.0, 0.0)
    # Nothing was touched by the failed calls.
    np.testing.assert_array_equal(w, 1.0)


def test_reduction_bad_inputs():
    with pytest.raises(ValueError, match="'a' is required"):
        optim.sum_squares(None)
    with pytest.raises(TypeError, match="numeric"):
        optim.sum_squares(np.array(["x"]))
    w = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="'grad' must have the shape"):
        optim.regularizer_inplace(w, np.zeros(4, np.float32), 0.1, 0.1)
    with pytest.raises(TypeError, match="'grad' must have the dtype"):
        optim.regularizer_inplace(w, np.zeros(3, np.float64), 0.1, 0.1)
    with pytest.raises(ValueError, match="writable"):
        optim.regularizer_inplace(w, readonly(np.zeros(3, np.float32)), 0.1, 0.1)
    with pytest.raises(ValueError, match="'l1' must be in"):
        optim.regularizer_inplace(w, np.zeros(3, np.float32), -0.1, 0.1)
    with pytest.raises(ValueError, match="share memory"):
        optim.regularizer_inplace(w, w, 0.1, 0.1)


# -- over both backends (the `backend` fixture): float32 against the float64 references -----
# Elementwise updates within 1e-5 (OpenCL) / 2e-5 (CPU), reductions within 1e-4. On OpenCL the
# results are also compared with the CPU op's.

# 70001 elements need several grid-stride passes of the 256 x 256 reduction work-items.
BACKEND_SIZES = [(1,), (7, 13), (70001,)]


@pytest.mark.parametrize("shape", BACKEND_SIZES, ids=str)
def test_sum_squares_and_regularizer_on_backend(backend, shape):
    rng = np.random.default_rng(len(shape))
    w, grad = rand(rng, shape), rand(rng, shape)
    w.flat[len(w.flat) // 2] = 0.0  # sign(0) = 0
    check_op(backend, "sum_squares", w, ref=ref.sum_squares_ref, kind="reduction")
    want_grad, want_penalty = ref.regularizer_inplace_ref(w, grad, 0.01, 0.003)
    g_dev = backend.up(grad.copy())
    penalty = backend.ops.regularizer_inplace(backend.up(w), g_dev, 0.01, 0.003)
    assert isinstance(penalty, float)
    assert abs(penalty - want_penalty) <= backend.rtol("reduction") * abs(want_penalty)
    assert_close(backend.down(g_dev), want_grad, backend.rtol(), "regularizer_inplace grad")
    if backend.is_opencl:
        from pynn.backend import cpu

        g_cpu = grad.copy()
        want = cpu.regularizer_inplace(w, g_cpu, 0.01, 0.003)
        assert abs(penalty - want) <= backend.rtol("reduction") * abs(want)
        assert_close(backend.down(g_dev), g_cpu, backend.rtol(), "regularizer_inplace vs CPU")
    assert backend.ops.regularizer_inplace(backend.up(w), g_dev, 0.0, 0.0) == 0.0


def test_reductions_are_deterministic_and_empty_is_zero_on_backend(backend):
    ops = backend.ops
    a = backend.up(rand(np.random.default_rng(9), (70001,)))
    assert ops.sum_squares(a) == ops.sum_squares(a)
    assert ops.sum_squares(ops.zeros((0, 3))) == 0.0


BACKEND_OPTIM_CASES = [
    # name, slot kinds, hyper-parameters after the slots ("t": the 1-based step)
    ("sgd_update", [None], (0.1, 0.0, False, 1.0, 0.0, 0.0)),
    ("sgd_update", ["zeros"], (0.05, 0.9, False, 0.5, 0.3, 0.0)),
    ("sgd_update", ["zeros"], (0.05, 0.9, True, 1.0, 0.0, 0.004)),
    ("adam_update", ["zeros", "zeros", None], (1e-3, 0.9, 0.999, 1e-7, "t", 1.0, 0.0, 0.0)),
    ("adam_update", ["zeros", "zeros", "zeros"], (0.01, 0.8, 0.99, 1e-4, "t", 0.7, 0.5,
                                                  0.004)),
    ("rmsprop_update", ["zeros", None, None], (1e-3, 0.9, 0.0, 1e-7, 1.0, 0.0, 0.0)),
    ("rmsprop_update", ["zeros", "zeros", "zeros"], (0.01, 0.8, 0.9, 1e-6, 1.0, 0.4, 0.01)),
    ("adagrad_update", ["accum"], (0.01, 1e-7, 1.0, 0.0, 0.0)),
    ("adagrad_update", ["accum"], (0.1, 1e-7, 0.5, 0.2, 0.004)),
]


def _slot(kind, shape):
    if kind is None:
        return None
    return np.full(shape, 0.1 if kind == "accum" else 0.0, np.float32)


@pytest.mark.parametrize("case", range(len(BACKEND_OPTIM_CASES)))
@pytest.mark.parametrize("shape", [(1,), (7, 13), (3, 5, 7)], ids=str)
def test_optimizer_updates_over_steps_on_backend(backend, case, shape):
    """Three steps on the backend against the float64 oracle stepped alongside (and, on
    OpenCL, the CPU op)."""
    name, slot_kinds, hyper = BACKEND_OPTIM_CASES[case]
    ops, up, down = backend.ops, backend.up, backend.down
    rng = np.random.default_rng(case * 10 + len(shape))
    w = rand(rng, shape)
    grads = [rand(rng, shape) for _ in range(3)]
    slots = [_slot(k, shape) for k in slot_kinds]
    w_dev = up(w.copy())
    slots_dev = [None if s is None else up(s.copy()) for s in slots]
    w_ref, slots_ref = ref.f64(w), [ref.f64(s) for s in slots]
    w_cpu, slots_cpu = w.copy(), [None if s is None else s.copy() for s in slots]
    for t, g in enumerate(grads, start=1):
        h = tuple(t if v == "t" else v for v in hyper)
        assert getattr(ops, name)(w_dev, up(g), *slots_dev, *h) is None
        w_ref, *slots_ref = getattr(ref, name + "_ref")(w_ref, g, *slots_ref, *h)
        if backend.is_opencl:
            from pynn.backend import cpu

            assert getattr(cpu, name)(w_cpu, g, *slots_cpu, *h) is None
    assert_close(down(w_dev), w_ref, backend.rtol(), f"{name} w")
    for i, (sd, s) in enumerate(zip(slots_dev, slots_ref)):
        if s is not None:
            assert_close(down(sd), s, backend.rtol(), f"{name} slot {i}")
    if backend.is_opencl:
        assert_close(down(w_dev), w_cpu, backend.rtol(), f"{name} w vs CPU")
        for i, (sd, s) in enumerate(zip(slots_dev, slots_cpu)):
            if s is not None:
                assert_close(down(sd), s, backend.rtol(), f"{name} slot {i} vs CPU")


def test_optimizer_nan_grad_scale_poisons_on_backend(backend):
    w_dev = backend.up(np.ones(5, np.float32))
    backend.ops.sgd_update(w_dev, backend.up(np.ones(5, np.float32)), None, 0.1, 0.0, False,
                           float("nan"), 0.0, 0.0)
    assert np.isnan(backend.down(w_dev)).all()


def test_optimizer_empty_update_on_backend(backend):
    ops = backend.ops
    ops.sgd_update(ops.zeros((0, 4)), ops.zeros((0, 4)), None, 0.1, 0.0, False, 1.0, 0.0, 0.0)


@pytest.mark.opencl
def test_optimizer_bad_inputs_opencl(ocl):
    w = ocl.asarray(np.ones((3, 4), np.float32))
    g = ocl.asarray(np.ones((3, 4), np.float32))
    m, v = ocl.zeros((3, 4)), ocl.zeros((3, 4))
    with pytest.raises(TypeError, match="asarray"):
        ocl.sgd_update(np.ones((3, 4), np.float32), g, None, 0.1, 0.0, False, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="shape"):
        ocl.sgd_update(w, ocl.zeros((4, 3)), None, 0.1, 0.0, False, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="momentum_buf"):
        ocl.sgd_update(w, g, None, 0.1, 0.9, False, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="share memory"):
        ocl.adam_update(w, g, m, m, None, 1e-3, 0.9, 0.999, 1e-7, 1, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="share memory"):
        ocl.adam_update(w, g, w, v, None, 1e-3, 0.9, 0.999, 1e-7, 1, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="'t'"):
        ocl.adam_update(w, g, m, v, None, 1e-3, 0.9, 0.999, 1e-7, 0, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="beta_1"):
        ocl.adam_update(w, g, m, v, None, 1e-3, 1.0, 0.999, 1e-7, 1, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="required"):
        ocl.rmsprop_update(w, g, None, None, None, 1e-3, 0.9, 0.0, 1e-7, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="required"):
        ocl.adagrad_update(w, g, None, 1e-3, 1e-7, 1.0, 0.0, 0.0)
    with pytest.raises(TypeError, match="dtype"):
        ocl.adagrad_update(w, g, ocl.zeros((3, 4), np.int32), 1e-3, 1e-7, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="offset"):
        ocl.sgd_update(w[1:], g[1:], None, 0.1, 0.0, False, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="weight_decay"):
        ocl.sgd_update(w, g, None, 0.1, 0.0, False, 1.0, 0.0, -1.0)
    with pytest.raises(ValueError, match="share memory"):
        ocl.regularizer_inplace(w, w, 0.1, 0.1)


@pytest.mark.opencl
def test_training_step_reuses_pooled_buffers_opencl(ocl):
    """After a warm-up step, a loss + update step takes every buffer from the pool."""
    from pynn.backend.opencl import runtime as rt

    rng = np.random.default_rng(21)
    x = ocl.asarray(rand(rng, (13, 7)))
    labels = ocl.asarray(rng.integers(0, 7, 13).astype(np.int32), np.int32)
    w = ocl.asarray(rand(rng, (13, 7)))
    m, v = ocl.zeros((13, 7)), ocl.zeros((13, 7))

    def step(t):
        loss, grad = ocl.loss_forward_backward("sparse_categorical_crossentropy", labels, x,
                                               True, None, True)
        ocl.adam_update(w, grad, m, v, None, 1e-3, 0.9, 0.999, 1e-7, t, 1.0, 0.0, 0.0)
        return loss

    step(1)
    rt.queue().finish()
    before = rt.pool_stats()["managed_bytes"]
    for t in range(2, 5):
        assert np.isfinite(step(t))
    rt.queue().finish()
    assert rt.pool_stats()["managed_bytes"] == before, "a warm step allocated device memory"


@pytest.mark.opencl
def test_small_work_groups_build_smaller_reduction_kernels(small_work_groups):
    rng = np.random.default_rng(31)
    check_op(small_work_groups, "sum_squares", rand(rng, (4099,)), ref=ref.sum_squares_ref,
             kind="reduction")


# == issue 12: weight constraints (constraint_inplace, pynn/constraints.py) ================
# (kind, min_value, max_value, rate): each kind, max_norm both clipping and not.
CONSTRAINT_CASES = [("max_norm", 0.0, 2.0, 1.0), ("max_norm", 0.0, 0.5, 1.0),
                    ("non_neg", 0.0, 0.0, 1.0), ("unit_norm", 0.0, 1.0, 1.0),
                    ("min_max_norm", 0.5, 1.5, 1.0), ("min_max_norm", 0.8, 1.2, 0.3)]
# (shape, axis): Dense kernels, Conv2D kernels over (kh, kw, in), a 1-d bias, middle axes.
CONSTRAINT_SHAPES = [((7, 5), 0), ((7, 5), 1), ((3, 3, 4, 5), [0, 1, 2]), ((3, 3, 4, 5), 3),
                     ((33,), 0), ((2, 3, 5, 7), (1, 2)), ((5, 3), None), ((5, 3), -1)]


@pytest.mark.parametrize("shape,axis", CONSTRAINT_SHAPES, ids=str)
@pytest.mark.parametrize("case", CONSTRAINT_CASES, ids=str)
def test_constraint_inplace_matches_reference(target, case, shape, axis):
    kind, lo, hi, rate = case
    w = rand(np.random.default_rng(len(shape)), shape, target.dtype)
    check_inplace(target, "constraint_inplace", [w], kind, lo, hi, rate, axis,
                  ref_arrays=[ref.constraint_inplace_ref(w, kind, lo, hi, rate, axis)],
                  rtol=1e-12 if target.dtype == np.float64 else None)


def test_constraints_match_keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    w = rand(np.random.default_rng(9), (3, 3, 4, 5))
    for ours, theirs in [
        (constraints.MaxNorm(1.5, axis=[0, 1, 2]), keras.constraints.MaxNorm(1.5, axis=[0, 1, 2])),
        (constraints.MaxNorm(), keras.constraints.MaxNorm()),
        (constraints.NonNeg(), keras.constraints.NonNeg()),
        (constraints.UnitNorm(axis=3), keras.constraints.UnitNorm(axis=3)),
        (constraints.MinMaxNorm(0.5, 1.0, 0.7, axis=[0, 1, 2]),
         keras.constraints.MinMaxNorm(0.5, 1.0, 0.7, axis=[0, 1, 2])),
    ]:
        got = w.copy()
        ours(got)
        want = keras.ops.convert_to_numpy(theirs(w.copy()))
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7, err_msg=repr(ours))
        assert ours.get_config() == theirs.get_config()


def test_constraints_get_serialize_deserialize():
    for name, cls in [("max_norm", constraints.MaxNorm), ("non_neg", constraints.NonNeg),
                      ("unit_norm", constraints.UnitNorm),
                      ("min_max_norm", constraints.MinMaxNorm), ("MaxNorm", constraints.MaxNorm)]:
        assert type(constraints.get(name)) is cls
    c = constraints.MinMaxNorm(0.1, 2.0, 0.5, axis=[0, 1])
    s = constraints.serialize(c)
    assert s == {"class_name": "MinMaxNorm",
                 "config": {"min_value": 0.1, "max_value": 2.0, "rate": 0.5, "axis": [0, 1]}}
    back = constraints.deserialize(s)
    assert type(back) is constraints.MinMaxNorm and back.get_config() == c.get_config()
    assert constraints.get(s).get_config() == c.get_config()
    assert constraints.get(None) is None and constraints.serialize(None) is None
    assert constraints.max_norm is constraints.MaxNorm
    with pytest.raises(ValueError, match="Could not interpret constraint identifier: 'nope'"):
        constraints.get("nope")


def test_constraint_inplace_bad_inputs(backend):
    b = backend.ops
    w = backend.up(np.ones((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="constraint_inplace: unknown constraint 'l2'"):
        b.constraint_inplace(w, "l2", 0.0, 1.0, 1.0, 0)
    with pytest.raises(ValueError, match=r"constraint_inplace: 'axis' \[0, 2\] must name "
                                         r"adjacent axes"):
        b.constraint_inplace(w, "max_norm", 0.0, 1.0, 1.0, [0, 2])
    with pytest.raises(ValueError, match=r"constraint_inplace: 'axis' 3 is out of range for a "
                                         r"weight of shape \(2, 3, 4\)"):
        b.constraint_inplace(w, "unit_norm", 0.0, 1.0, 1.0, 3)
    with pytest.raises(ValueError, match=r"min_max_norm needs 0 <= min_value <= max_value, "
                                         r"got min_value=2.0, max_value=1.0"):
        b.constraint_inplace(w, "min_max_norm", 2.0, 1.0, 1.0, 0)


@pytest.mark.parametrize("layer", ["Dense", "Conv2D"])
def test_kernel_and_bias_constraints_hold_after_training(layer, seeded):
    L = pynn.layers
    if layer == "Dense":
        first = L.Dense(6, kernel_constraint=constraints.MaxNorm(0.3),
                        bias_constraint="non_neg")
        x = seeded.normal(size=(32, 5)).astype(np.float32)
        head = []
    else:
        first = L.Conv2D(4, 3, kernel_constraint=constraints.MaxNorm(0.3, axis=[0, 1, 2]),
                         bias_constraint="non_neg")
        x = seeded.normal(size=(32, 6, 6, 2)).astype(np.float32)
        head = [L.Flatten()]
    model = pynn.Sequential([L.Input(x.shape[1:]), first, *head, L.Dense(1)])
    model.compile(optimizer=pynn.optimizers.SGD(0.5), loss="mse")
    model.fit(x, seeded.normal(size=(32, 1)).astype(np.float32), epochs=2, verbose=0)
    kernel, bias = first.get_weights()
    norms = np.sqrt(np.sum(kernel.reshape(-1, kernel.shape[-1]) ** 2, axis=0))
    assert np.all(norms <= 0.3 + 1e-6) and np.all(bias >= 0)
    config = first.get_config()
    assert config["bias_constraint"] == {"class_name": "NonNeg", "config": {}}
    clone = type(first).from_config(config)
    assert clone.get_config() == config

# -- Nadam, Adamax, Adadelta, Ftrl, Lion (issue 15) -----------------------------------------
# Hyper-parameters after the slots in pynn.backend.api order; "t" is the 1-based step and
# "u" Nadam's running product of beta_1 (1 - 0.5 * 0.96^s) over s = 1..t.

NEW_OPTIM_CASES = [
    ("nadam_update", ["zeros", "zeros"], (1e-3, 0.9, 0.999, 1e-7, "t", "u", 1.0, 0.0, 0.0)),
    ("nadam_update", ["zeros", "zeros"], (0.01, 0.8, 0.99, 1e-4, "t", "u", 0.7, 0.5, 0.004)),
    ("adamax_update", ["zeros", "zeros"], (1e-3, 0.9, 0.999, 1e-7, "t", 1.0, 0.0, 0.0)),
    ("adamax_update", ["zeros", "zeros"], (0.01, 0.7, 0.9, 1e-4, "t", 0.6, 0.3, 0.01)),
    ("adadelta_update", ["zeros", "zeros"], (1.0, 0.95, 1e-7, 1.0, 0.0, 0.0)),
    ("adadelta_update", ["zeros", "zeros"], (0.5, 0.8, 1e-5, 0.8, 0.2, 0.02)),
    ("ftrl_update", ["accum", "zeros"], (0.05, -0.5, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0)),
    ("ftrl_update", ["accum", "zeros"], (0.05, -0.7, 0.01, 0.02, 0.03, 0.1, 0.9, 0.4, 0.01)),
    ("ftrl_update", ["accum", "zeros"], (0.05, 0.0, 0.2, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0)),
    ("lion_update", ["zeros"], (0.01, 0.9, 0.99, 1.0, 0.0, 0.0)),
    ("lion_update", ["zeros"], (0.01, 0.8, 0.95, 0.5, 0.3, 0.1)),
]


def _new_hyper(name, hyper, t):
    """The call's hyper-parameters at step t (markers filled in)."""
    u = 1.0
    for s in range(1, t + 1):
        u *= hyper[1] * (1 - 0.5 * 0.96**s)
    return tuple(t if v == "t" else (u if v == "u" else v) for v in hyper)


def _new_case_id(i):
    return f"{NEW_OPTIM_CASES[i][0]}-{i}"


def _run_new_case(case, ops, up, down, shape, dtype, seed, steps=3):
    """(w, slots) after ``steps`` steps on ops, and the float64 oracle's."""
    name, slot_kinds, hyper = NEW_OPTIM_CASES[case]
    rng = np.random.default_rng(seed)
    w = random_param(rng, shape, dtype)
    slots = [np.full(shape, 0.1 if k == "accum" else 0.0, dtype) for k in slot_kinds]
    grads = [(rng.standard_normal(shape) * 0.8).astype(dtype) for _ in range(steps)]
    w_dev, slots_dev = up(w.copy()), [up(s.copy()) for s in slots]
    w_ref, slots_ref = ref.f64(w), [ref.f64(s) for s in slots]
    for t, g in enumerate(grads, start=1):
        h = _new_hyper(name, hyper, t)
        g_before = g.copy()
        assert getattr(ops, name)(w_dev, up(g), *slots_dev, *h) is None
        np.testing.assert_array_equal(g, g_before)
        w_ref, *slots_ref = getattr(ref, name + "_ref")(w_ref, g, *slots_ref, *h)
    return (down(w_dev), [down(s) for s in slots_dev]), (w_ref, slots_ref)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("case", range(len(NEW_OPTIM_CASES)), ids=_new_case_id)
def test_new_updates_match_reference_over_steps(case, size, dtype):
    (w, slots), (w_ref, slots_ref) = _run_new_case(case, optim, np.asarray, np.asarray,
                                                   (size,), dtype, seed=case + size)
    name = NEW_OPTIM_CASES[case][0]
    tol = TOL[dtype]
    if name == "ftrl_update" and dtype == np.float32:
        # linear accumulates g minus a term of the accumulator's scale (~10 here): a small
        # linear is that difference, good to float32's epsilon times the terms, not itself.
        tol = dict(rtol=2e-5, atol=1e-5)
    np.testing.assert_allclose(w, w_ref, err_msg=f"{name} w", **tol)
    for i, (s, r) in enumerate(zip(slots, slots_ref)):
        np.testing.assert_allclose(s, r, err_msg=f"{name} slot {i}", **tol)


@pytest.mark.parametrize("case", range(len(NEW_OPTIM_CASES)), ids=_new_case_id)
def test_new_updates_thread_invariance(case, restore_threads):
    results = []
    for n in (1, 2, 3):
        set_num_threads(n)
        results.append(_run_new_case(case, optim, np.asarray, np.asarray, (BIG,), np.float32,
                                     seed=5)[0])
    for w, slots in results[1:]:
        np.testing.assert_array_equal(w, results[0][0])
        for a, b in zip(slots, results[0][1]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("case", range(len(NEW_OPTIM_CASES)), ids=_new_case_id)
@pytest.mark.parametrize("shape", [(1,), (7, 13), (3, 5, 7)], ids=str)
def test_new_updates_over_steps_on_backend(backend, case, shape):
    """Three steps on the backend against the float64 oracle and, on OpenCL, the CPU op."""
    (w, slots), (w_ref, slots_ref) = _run_new_case(case, backend.ops, backend.up,
                                                   backend.down, shape, np.float32,
                                                   seed=case * 10 + len(shape))
    name = NEW_OPTIM_CASES[case][0]
    assert_close(w, w_ref, backend.rtol(), f"{name} w")
    for i, (s, r) in enumerate(zip(slots, slots_ref)):
        assert_close(s, r, backend.rtol(), f"{name} slot {i}")
    if backend.is_opencl:
        from pynn.backend import cpu

        (w_cpu, slots_cpu), _ = _run_new_case(case, cpu, np.asarray, np.asarray, shape,
                                              np.float32, seed=case * 10 + len(shape))
        assert_close(w, w_cpu, backend.rtol(), f"{name} w vs CPU")
        for i, (s, c) in enumerate(zip(slots, slots_cpu)):
            assert_close(s, c, backend.rtol(), f"{name} slot {i} vs CPU")


@pytest.mark.parametrize("case", range(len(NEW_OPTIM_CASES)), ids=_new_case_id)
def test_new_updates_empty_parameter_on_backend(backend, case):
    name, slot_kinds, hyper = NEW_OPTIM_CASES[case]
    ops = backend.ops
    getattr(ops, name)(ops.zeros((0, 3)), ops.zeros((0, 3)),
                       *[ops.zeros((0, 3)) for _ in slot_kinds], *_new_hyper(name, hyper, 1))


def _new_call(name, **over):
    """A valid call of ``name`` on (3,) float32 arrays, with arguments overridden by name."""
    from pynn.backend.api import OPS

    case = next(c for c in NEW_OPTIM_CASES if c[0] == name)
    params = OPS[name]
    values = [np.ones(3, np.float32), np.ones(3, np.float32)]
    values += [np.zeros(3, np.float32) for _ in case[1]]
    values += list(_new_hyper(name, case[2], 1))
    args = dict(zip(params, values), mask=None)  # issue 18: every update takes a mask last
    args.update(over)
    return getattr(optim, name)(*[args[p] for p in params])


@pytest.mark.parametrize("name,over,exc,match", [
    ("nadam_update", dict(m=None), ValueError, r"nadam_update: slots 'm' and 'v' are required"),
    ("nadam_update", dict(t=0), ValueError, r"nadam_update: 't' must be an int >= 1"),
    ("nadam_update", dict(beta_1=1.0), ValueError, r"nadam_update: 'beta_1' must be in"),
    ("nadam_update", dict(v=np.zeros(4, np.float32)), ValueError,
     r"nadam_update: 'v' must have the shape of 'w' \(3,\), got \(4,\)"),
    ("adamax_update", dict(u=np.zeros(3, np.float64)), TypeError,
     r"adamax_update: 'u' must have the dtype of 'w' \(float32\)"),
    ("adamax_update", dict(t=1.5), ValueError, r"adamax_update: 't' must be an int >= 1"),
    ("adadelta_update", dict(rho=1.5), ValueError, r"adadelta_update: 'rho' must be in"),
    ("adadelta_update", dict(accumulated_delta_var=None), ValueError,
     "adadelta_update: slots 'accumulated_grad' and 'accumulated_delta_var' are required"),
    ("ftrl_update", dict(learning_rate_power=0.5), ValueError,
     r"ftrl_update: 'learning_rate_power' must be in \[-inf, 0.0\]"),
    ("ftrl_update", dict(l1=-1.0), ValueError, r"ftrl_update: 'l1' must be in"),
    ("ftrl_update", dict(lr=0.0), ValueError, r"ftrl_update: 'lr' must not be 0"),
    ("lion_update", dict(beta_1=0.0), ValueError, r"lion_update: 'beta_1' must be in \(0.0"),
    ("lion_update", dict(m=None), ValueError, "lion_update: slot 'm' is required"),
    ("lion_update", dict(g=np.ones(4, np.float32)), ValueError,
     r"lion_update: 'g' must have the shape of 'w' \(3,\), got \(4,\)"),
])
def test_new_updates_bad_inputs(name, over, exc, match):
    with pytest.raises(exc, match=match):
        _new_call(name, **over)


def test_new_updates_reject_slot_aliasing():
    m = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="must not"):
        _new_call("adamax_update", m=m, u=m)


@pytest.mark.opencl
def test_new_updates_bad_inputs_opencl(ocl):
    w = ocl.asarray(np.ones((3, 4), np.float32))
    g = ocl.asarray(np.ones((3, 4), np.float32))
    with pytest.raises(TypeError, match="asarray"):
        ocl.lion_update(w, g, np.zeros((3, 4), np.float32), 0.01, 0.9, 0.99, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="slots 'm' and 'v' are required"):
        ocl.nadam_update(w, g, None, None, 1e-3, 0.9, 0.999, 1e-7, 1, 0.5, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="'learning_rate_power' must be in"):
        ocl.ftrl_update(w, g, ocl.zeros((3, 4)), ocl.zeros((3, 4)), 0.05, 1.0, 0.0, 0.0, 0.0,
                        0.0, 1.0, 0.0, 0.0)


# -- adam_update_many: the whole step's Adam in one op ---------------------------------------
# Sizes around the op's span (16384 elements) and below/above the parallel threshold, odd.
MANY_SHAPES = [(1,), (0,), (3, 5, 7), (16383,), (16384,), (16385,), (70001,), (129, 301)]


def _many_problem(dtype, seed=0):
    rng = np.random.default_rng(seed)
    params = []
    for shape in MANY_SHAPES:
        w = random_param(rng, shape, dtype)
        m = (random_param(rng, shape, dtype) * 0.1).astype(dtype)
        v = np.abs(random_param(rng, shape, dtype))
        params.append([w, m, v])
    grads = [[random_param(rng, shape, dtype) for shape in MANY_SHAPES] for _ in range(3)]
    return params, grads


MANY_HYPER = [dict(clipvalue=0.0, weight_decay=0.0),
              dict(clipvalue=0.5, weight_decay=0.004)]


@pytest.mark.parametrize("hyper", MANY_HYPER, ids=["plain", "clip-decay"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_update_many_gives_adam_updates_bits_and_the_reference(dtype, hyper):
    """Three steps of the one op equal adam_update per parameter bit for bit (spans cut
    from each parameter's start, whatever its size) and the float64 oracle."""
    params, grads = _many_problem(dtype)
    single = [[a.copy() for a in p] for p in params]
    oracle = [[ref.f64(a) for a in p] for p in params]
    scales = [0.5, 1.0, 0.7, 1.0, 2.0, 0.25, 1.0, 0.9]
    for t, gs in enumerate(grads, start=1):
        optim.adam_update_many([p[0] for p in params], gs, [p[1] for p in params],
                               [p[2] for p in params], 0.01, 0.9, 0.999, 1e-7, t, scales,
                               hyper["clipvalue"], hyper["weight_decay"])
        for (w, m, v), g, s in zip(single, gs, scales):
            optim.adam_update(w, g, m, v, None, 0.01, 0.9, 0.999, 1e-7, t, s,
                              hyper["clipvalue"], hyper["weight_decay"])
        for o, g, s in zip(oracle, gs, scales):
            o[0], o[1], o[2], _ = ref.adam_update_ref(
                o[0], g, o[1], o[2], None, 0.01, 0.9, 0.999, 1e-7, t, s, hyper["clipvalue"],
                hyper["weight_decay"])
    for p, q, o in zip(params, single, oracle):
        for a, b, c in zip(p, q, o):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_allclose(a, c, **TOL[dtype])


def test_adam_update_many_thread_invariance(restore_threads):
    results = []
    for n_threads in (1, 2, 3):
        set_num_threads(n_threads)
        params, grads = _many_problem(np.float32, seed=5)
        for t, gs in enumerate(grads[:2], start=1):
            optim.adam_update_many([p[0] for p in params], gs, [p[1] for p in params],
                                   [p[2] for p in params], 1e-3, 0.9, 0.999, 1e-7, t,
                                   [1.0] * len(params), 0.0, 0.0)
        results.append([a for p in params for a in p])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_adam_update_many_converts_what_adam_update_converts():
    """A strided or float64 gradient of a float32 parameter leaves the one-region path for
    adam_update's, with its bits; an empty list is a no-op."""
    rng = np.random.default_rng(8)
    w = [random_param(rng, (7, 9), np.float32) for _ in range(2)]
    m = [np.zeros((7, 9), np.float32) for _ in range(2)]
    v = [np.zeros((7, 9), np.float32) for _ in range(2)]
    g = [random_param(rng, (9, 7), np.float32).T, random_param(rng, (7, 9), np.float64)]
    w2, m2, v2 = ([a.copy() for a in x] for x in (w, m, v))
    optim.adam_update_many(w, g, m, v, 1e-2, 0.9, 0.999, 1e-7, 1, [1.0, 1.0], 0.0, 0.0)
    for j in range(2):
        optim.adam_update(w2[j], g[j], m2[j], v2[j], None, 1e-2, 0.9, 0.999, 1e-7, 1, 1.0,
                          0.0, 0.0)
        np.testing.assert_array_equal(w[j], w2[j])
        np.testing.assert_array_equal(v[j], v2[j])
    optim.adam_update_many([], [], [], [], 1e-2, 0.9, 0.999, 1e-7, 1, [], 0.0, 0.0)


def _many_args(**over):
    rng = np.random.default_rng(9)
    w = [random_param(rng, (5,), np.float32), random_param(rng, (3, 4), np.float32)]
    args = dict(ws=w, gs=[np.ones_like(a) for a in w], ms=[np.zeros_like(a) for a in w],
                vs=[np.zeros_like(a) for a in w], lr=1e-3, beta_1=0.9, beta_2=0.999,
                epsilon=1e-7, t=1, grad_scales=[1.0, 1.0], clipvalue=0.0, weight_decay=0.0)
    args.update(over)
    return args


@pytest.mark.parametrize("over,exc,match", [
    (dict(gs=[np.ones(5, np.float32)]), ValueError, "must be as long"),
    (dict(ws=np.zeros(3)), TypeError, "'ws' must be a list"),
    (dict(grad_scales=[1.0]), ValueError, "one number per parameter"),
    (dict(grad_scales=[1.0, -1.0]), ValueError, "finite and >= 0"),
    (dict(grad_scales=["a", 1.0]), TypeError, "'grad_scales' must be numbers"),
    (dict(t=0), ValueError, "'t' must be an int >= 1"),
    (dict(beta_2=1.0), ValueError, "'beta_2' must be in"),
    (dict(ms=[np.zeros(5, np.float32), np.zeros(4, np.float32)]), ValueError,
     "'m' must have the shape"),
    (dict(vs=[np.zeros(5, np.float64), np.zeros((3, 4), np.float32)]), TypeError,
     "'v' must have the dtype"),
])
def test_adam_update_many_bad_inputs_touch_nothing(over, exc, match):
    args = _many_args(**over)
    before = [np.array(a, copy=True) for a in args["ws"]]
    with pytest.raises(exc, match=match):
        optim.adam_update_many(**args)
    for a, b in zip(args["ws"], before):
        np.testing.assert_array_equal(a, b)


def test_adam_update_many_rejects_aliased_slots():
    args = _many_args()
    args["vs"][1] = args["ms"][1]
    with pytest.raises(ValueError, match="share memory"):
        optim.adam_update_many(**args)


@pytest.mark.parametrize("shape", [(1,), (7, 13), (70001,)], ids=str)
def test_adam_update_many_on_backend(backend, shape):
    """Three steps on the backend against the float64 oracle (and, on OpenCL, the CPU op)."""
    ops, up, down = backend.ops, backend.up, backend.down
    rng = np.random.default_rng(len(shape))
    shapes = [shape, (3, 5)]
    ws = [rand(rng, s) for s in shapes]
    dev = [[up(w.copy()), up(np.zeros_like(w)), up(np.zeros_like(w))] for w in ws]
    cpu_state = [[w.copy(), np.zeros_like(w), np.zeros_like(w)] for w in ws]
    oracle = [[ref.f64(w), ref.f64(np.zeros_like(w)), ref.f64(np.zeros_like(w))] for w in ws]
    for t in range(1, 4):
        gs = [rand(rng, s) for s in shapes]
        assert ops.adam_update_many([d[0] for d in dev], [up(g) for g in gs],
                                    [d[1] for d in dev], [d[2] for d in dev], 0.01, 0.8, 0.99,
                                    1e-4, t, [0.7, 1.0], 0.5, 0.004) is None
        new = ref.adam_update_many_ref([o[0] for o in oracle], gs, [o[1] for o in oracle],
                                       [o[2] for o in oracle], 0.01, 0.8, 0.99, 1e-4, t,
                                       [0.7, 1.0], 0.5, 0.004)
        for k, o in enumerate(oracle):
            o[0], o[1], o[2] = new[0][k], new[1][k], new[2][k]
        if backend.is_opencl:
            from pynn.backend import cpu

            cpu.adam_update_many([c[0] for c in cpu_state], gs, [c[1] for c in cpu_state],
                                 [c[2] for c in cpu_state], 0.01, 0.8, 0.99, 1e-4, t,
                                 [0.7, 1.0], 0.5, 0.004)
    for d, o, c in zip(dev, oracle, cpu_state):
        for k in range(3):
            assert_close(down(d[k]), o[k], backend.rtol(), f"adam_update_many array {k}")
            if backend.is_opencl:
                assert_close(down(d[k]), c[k], backend.rtol(), f"array {k} vs CPU")


def test_optimizers_update_together_as_one_at_a_time():
    """Adam's and AdamW's apply (adam_update_many for the unmasked variables of one dtype)
    leaves every variable and slot with the bits of the per-variable path, beside a masked
    variable and a constrained one."""
    from pynn import optimizers
    from pynn.backend import cpu
    from pynn.variables import Variable

    def run(together):
        rng = np.random.default_rng(12)
        vs = [Variable(random_param(rng, s, np.float32), f"v{k}/kernel")
              for k, s in enumerate([(17, 5), (70001,), (5,), (3, 3)])]
        vs[2].mask = np.array([1, 0, 1, 1, 0], np.uint8)
        vs[3].constraint = constraints.NonNeg()
        opt = optimizers.AdamW(learning_rate=0.01, weight_decay=0.01, clipnorm=1.0)
        for _ in range(3):
            for v in vs:
                v.grad = random_param(rng, v.value.shape, np.float32)
            if not together:
                saved = cpu.adam_update_many
                del cpu.adam_update_many
            try:
                opt.apply(vs)
            finally:
                if not together:
                    cpu.adam_update_many = saved
        return [v.value for v in vs] + [opt._slots[path][name] for path in sorted(opt._slots)
                                        for name in ("momentum", "velocity")]

    for a, b in zip(run(True), run(False)):
        np.testing.assert_array_equal(a, b)
    assert run(True)[2][1] == 0.0



# -- sgd_update_many -------------------------------------------------------------------------

@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.5, True)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_update_many_gives_sgd_updates_bits_and_the_reference(dtype, momentum, nesterov):
    params, grads = _many_problem(dtype, seed=3)
    single = [[a.copy() for a in p] for p in params]
    oracle = [[ref.f64(a) for a in p] for p in params]
    scales = [0.5, 1.0, 0.7, 1.0, 2.0, 0.25, 1.0, 0.9]
    use = momentum != 0.0
    for gs in grads:
        optim.sgd_update_many([p[0] for p in params], gs, [p[1] for p in params] if use else None,
                              0.05, momentum, nesterov, scales, 0.6, 0.01)
        for (w, m, _), g, s in zip(single, gs, scales):
            optim.sgd_update(w, g, m if use else None, 0.05, momentum, nesterov, s, 0.6, 0.01)
        new_w, new_m = ref.sgd_update_many_ref(
            [o[0] for o in oracle], gs, [o[1] for o in oracle] if use else None, 0.05,
            momentum, nesterov, scales, 0.6, 0.01)
        for k, o in enumerate(oracle):
            o[0] = new_w[k]
            if use:
                o[1] = new_m[k]
    for p, q, o in zip(params, single, oracle):
        np.testing.assert_array_equal(p[0], q[0])
        np.testing.assert_array_equal(p[1], q[1])
        np.testing.assert_allclose(p[0], o[0], **TOL[dtype])
        if use:
            np.testing.assert_allclose(p[1], o[1], **TOL[dtype])


def test_sgd_update_many_thread_invariance(restore_threads):
    results = []
    for n_threads in (1, 2, 3):
        set_num_threads(n_threads)
        params, grads = _many_problem(np.float32, seed=6)
        for gs in grads[:2]:
            optim.sgd_update_many([p[0] for p in params], gs, [p[1] for p in params], 1e-2,
                                  0.9, True, [1.0] * len(params), 0.0, 0.0)
        results.append([a for p in params for a in p[:2]])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("over,exc,match", [
    (dict(momentum_bufs=None), ValueError, "needs 'momentum_bufs'"),
    (dict(gs=[np.ones(5, np.float32)]), ValueError, "must be as long"),
    (dict(grad_scales=[1.0]), ValueError, "one number per parameter"),
    (dict(momentum=-0.5), ValueError, "'momentum' must be in"),
    (dict(momentum_bufs=[np.zeros(5, np.float32), np.zeros(4, np.float32)]), ValueError,
     "'momentum_buf' must have the shape"),
])
def test_sgd_update_many_bad_inputs_touch_nothing(over, exc, match):
    args = _many_args()
    args = dict(ws=args["ws"], gs=args["gs"], momentum_bufs=args["ms"], lr=0.1, momentum=0.9,
                nesterov=False, grad_scales=[1.0, 1.0], clipvalue=0.0, weight_decay=0.0)
    args.update(over)
    before = [np.array(a, copy=True) for a in args["ws"]]
    with pytest.raises(exc, match=match):
        optim.sgd_update_many(**args)
    for a, b in zip(args["ws"], before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_update_many_on_backend(backend, momentum):
    ops, up, down = backend.ops, backend.up, backend.down
    rng = np.random.default_rng(21)
    shapes = [(70001,), (3, 5)]
    ws = [rand(rng, s) for s in shapes]
    dev = [[up(w.copy()), up(np.zeros_like(w))] for w in ws]
    cpu_state = [[w.copy(), np.zeros_like(w)] for w in ws]
    oracle = [[ref.f64(w), ref.f64(np.zeros_like(w))] for w in ws]
    use = momentum != 0.0
    for _ in range(3):
        gs = [rand(rng, s) for s in shapes]
        assert ops.sgd_update_many([d[0] for d in dev], [up(g) for g in gs],
                                   [d[1] for d in dev] if use else None, 0.05, momentum, True,
                                   [0.7, 1.0], 0.5, 0.004) is None
        new_w, new_m = ref.sgd_update_many_ref([o[0] for o in oracle], gs,
                                               [o[1] for o in oracle] if use else None, 0.05,
                                               momentum, True, [0.7, 1.0], 0.5, 0.004)
        for k, o in enumerate(oracle):
            o[0] = new_w[k]
            if use:
                o[1] = new_m[k]
        if backend.is_opencl:
            from pynn.backend import cpu

            cpu.sgd_update_many([c[0] for c in cpu_state], gs,
                                [c[1] for c in cpu_state] if use else None, 0.05, momentum,
                                True, [0.7, 1.0], 0.5, 0.004)
    for d, o, c in zip(dev, oracle, cpu_state):
        for k in range(2 if use else 1):
            assert_close(down(d[k]), o[k], backend.rtol(), f"sgd_update_many array {k}")
            if backend.is_opencl:
                assert_close(down(d[k]), c[k], backend.rtol(), f"array {k} vs CPU")


@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, True)])
def test_sgd_updates_together_as_one_at_a_time(momentum, nesterov):
    from pynn import optimizers
    from pynn.backend import cpu
    from pynn.variables import Variable

    def run(together):
        rng = np.random.default_rng(13)
        vs = [Variable(random_param(rng, s, np.float32), f"v{k}/kernel")
              for k, s in enumerate([(17, 5), (70001,), (5,), (3, 3)])]
        vs[2].mask = np.array([1, 0, 1, 1, 0], np.uint8)
        opt = optimizers.SGD(learning_rate=0.05, momentum=momentum, nesterov=nesterov,
                             weight_decay=0.01, global_clipnorm=2.0)
        for _ in range(3):
            for v in vs:
                v.grad = random_param(rng, v.value.shape, np.float32)
            if not together:
                saved = cpu.sgd_update_many
                del cpu.sgd_update_many
            try:
                opt.apply(vs)
            finally:
                if not together:
                    cpu.sgd_update_many = saved
        slots = [opt._slots[p]["momentum"] for p in sorted(opt._slots) if opt._slots[p]]
        return [v.value for v in vs] + slots

    for a, b in zip(run(True), run(False)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_step_size_gives_numpy_scalars_bits(dtype):
    # Computed in Python floats rounded to float32 step by step (no NumPy scalar calls on a
    # step's path); the NumPy-scalar form is what Keras parity was measured with.
    from pynn.backend.operands.optim import _adam_step_size_numpy, adam_step_size

    rng = np.random.default_rng(5)
    cases = [(1e-3, 0.9, 0.999, t) for t in (1, 2, 3, 10, 1000, 10**6)]
    cases += [(float(10 ** rng.uniform(-7, 1)), float(rng.uniform(0, 0.9999)),
               float(rng.uniform(0, 0.99999)), int(rng.integers(1, 10**6)))
              for _ in range(3000)]
    # degenerate: beta_1 rounding to 1 in float32 (0 / 0, x / 0), lr past float32's range
    cases += [(1e-3, 1 - 1e-9, 0.999, 1), (0.0, 1 - 1e-9, 0.999, 1), (1e39, 0.9, 0.999, 1),
              (1e-3, 0.0, 0.0, 1)]
    with np.errstate(all="ignore"):
        for lr, b1, b2, t in cases:
            got = adam_step_size(dtype, lr, b1, b2, t)
            want = _adam_step_size_numpy(dtype, lr, b1, b2, t)
            assert got == want or (np.isnan(got) and np.isnan(want)), (lr, b1, b2, t, got,
                                                                      want)


def test_ftrl_default_power_gives_the_pow_roads_bits():
    """learning_rate_power=-0.5 (Keras's default) takes sqrt in float32 instead of two pow
    calls an element: the bits of the pow road (compared with an exponent one double ulp
    away, which takes it; on these inputs pow rounds both to the same float32s)."""
    rng = np.random.default_rng(17)
    n = 40961
    w0 = rng.standard_normal(n).astype(np.float32)
    acc0 = rng.uniform(0.05, 20.0, n).astype(np.float32)
    grads = [(rng.standard_normal(n) * 0.8).astype(np.float32) for _ in range(3)]
    out = []
    for power in (-0.5, float(np.nextafter(-0.5, -1.0))):
        w, acc, lin = w0.copy(), acc0.copy(), np.zeros(n, np.float32)
        for g in grads:
            optim.ftrl_update(w, g, acc, lin, 0.05, power, 0.01, 0.02, 0.03, 0.0, 1.0, 0.0,
                              0.0)
        out.append((w, acc, lin))
    assert not np.array_equal(out[0][0], w0)
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)


# -- opt: Lamb, Adafactor, Muon (lamb_update, adafactor_update, muon_update) -----------------
KERAS3_CASES = [
    ("lamb_update", dict()),
    ("lamb_update", dict(grad_scale=0.6, clipvalue=0.4, weight_decay=0.01)),
    ("adafactor_update", dict()),
    ("adafactor_update", dict(clip_threshold=0.3, epsilon_2=0.5, beta_2_decay=-0.5,
                              grad_scale=0.8, clipvalue=0.9, weight_decay=0.02)),
    ("muon_update", dict()),
    ("muon_update", dict(nesterov=False, rms_rate=None, ns_steps=3, clipvalue=0.5,
                         weight_decay=0.03, grad_scale=0.7)),
]
KERAS3_SHAPES = {"lamb_update": [(1,), (7,), (5, 9), (3, 5, 1, 7), (4099,), (BIG,)],
                 "adafactor_update": [(1,), (7,), (5, 9), (1, 13), (3, 5, 1, 7), (2, 3, 5, 7),
                                      (4099,), (301, 233)],
                 "muon_update": [(1, 1), (5, 9), (9, 5), (1, 13), (33, 65), (301, 233)]}


def _keras3_case_id(case):
    return case_id(KERAS3_CASES[case])


def _keras3_hyper(opts):
    base = dict(lr=0.01, grad_scale=1.0, clipvalue=0.0, weight_decay=0.0)
    base.update({k: opts[k] for k in base if k in opts})
    return base


def _keras3_state(op, shape, dtype, rng):
    from pynn.backend.operands.optim import adafactor_slot_shapes

    w = random_param(rng, shape, dtype)
    if op == "lamb_update":
        return w, [(random_param(rng, shape, dtype) * 0.1).astype(dtype),
                   np.abs(random_param(rng, shape, dtype))]
    if op == "adafactor_update":
        r_shape, c_shape, _ = adafactor_slot_shapes(shape)
        factored = len(shape) >= 2
        return w, [np.abs(random_param(rng, r_shape, dtype)) if factored else None,
                   np.abs(random_param(rng, c_shape, dtype)) if factored else None,
                   np.abs(random_param(rng, shape, dtype))]
    return w, [(random_param(rng, shape, dtype) * 0.1).astype(dtype)]


def _keras3_step(op, ops, w, g, slots, opts, t):
    h = _keras3_hyper(opts)
    clip = (h["grad_scale"], h["clipvalue"], h["weight_decay"])
    if op == "lamb_update":
        ops.lamb_update(w, g, *slots, h["lr"], opts.get("beta_1", 0.9),
                        opts.get("beta_2", 0.999), opts.get("epsilon", 1e-7), t, *clip)
    elif op == "adafactor_update":
        ops.adafactor_update(w, g, *slots, h["lr"], opts.get("beta_2_decay", -0.8),
                             opts.get("epsilon_1", 1e-30), opts.get("epsilon_2", 1e-3),
                             opts.get("clip_threshold", 1.0), t, *clip)
    else:
        ops.muon_update(w, g, *slots, h["lr"], opts.get("momentum", 0.95),
                        opts.get("nesterov", True), opts.get("ns_steps", 5), 3.4445, -4.775,
                        2.0315, opts.get("rms_rate", 0.2), *clip)


def _keras3_ref_step(op, w, g, slots, opts, t):
    h = _keras3_hyper(opts)
    clip = (h["grad_scale"], h["clipvalue"], h["weight_decay"])
    if op == "lamb_update":
        out = ref.lamb_update_ref(w, g, *slots, h["lr"], opts.get("beta_1", 0.9),
                                  opts.get("beta_2", 0.999), opts.get("epsilon", 1e-7), t,
                                  *clip)
    elif op == "adafactor_update":
        out = ref.adafactor_update_ref(w, g, *slots, h["lr"], opts.get("beta_2_decay", -0.8),
                                       opts.get("epsilon_1", 1e-30),
                                       opts.get("epsilon_2", 1e-3),
                                       opts.get("clip_threshold", 1.0), t, *clip)
    else:
        out = ref.muon_update_ref(w, g, *slots, h["lr"], opts.get("momentum", 0.95),
                                  opts.get("nesterov", True), opts.get("ns_steps", 5), 3.4445,
                                  -4.775, 2.0315, opts.get("rms_rate", 0.2), *clip)
    return out[0], list(out[1:])


def _run_keras3(op, opts, ops, up, down, shape, dtype, steps=3, seed=0):
    """(w, slots) after ``steps`` kernel steps and the oracle's (w, slots) from the same
    start; the weights' change is compared (the step is small beside the weights)."""
    rng = np.random.default_rng(seed)
    w0, slots0 = _keras3_state(op, shape, dtype, rng)
    grads = [random_param(rng, shape, dtype) for _ in range(steps)]
    w, slots = up(w0.copy()), [None if s is None else up(s.copy()) for s in slots0]
    w_ref, slots_ref = ref.f64(w0), [ref.f64(s) for s in slots0]
    for t in range(1, steps + 1):
        _keras3_step(op, ops, w, up(grads[t - 1]), slots, opts, t)
        w_ref, new_slots = _keras3_ref_step(op, w_ref, grads[t - 1], slots_ref, opts, t)
        slots_ref = [s if n is None else n for s, n in zip(slots_ref, new_slots)]
    return (down(w) - w0, [down(s) for s in slots]), (w_ref - w0, slots_ref)


# The float32 Newton-Schulz iteration (five quintic steps with coefficients near 5) grows
# rounding by ~100x; Adafactor's float32 rho_t/alpha round lr (0.01) by ~2e-7 relative.
KERAS3_TOL = {"lamb_update": 2e-5, "adafactor_update": 2e-5, "muon_update": 2e-4}


def _assert_change_close(got, want, rtol, what, w_scale=1.1, steps=3):
    """The weights' change within rtol of its size, plus the float32 rounding of the
    weights themselves over the steps (an ulp of w is 1e-5 of a 0.01 step)."""
    err = float(np.abs(np.asarray(got, np.float64) - want).max())
    allowed = rtol * float(np.abs(want).max()) + steps * 1.2e-7 * w_scale
    assert err <= allowed, f"{what}: max abs error {err:.3g} > {allowed:.3g}"


@pytest.mark.parametrize("case", range(len(KERAS3_CASES)), ids=_keras3_case_id)
def test_keras3_updates_match_oracle_float64(case):
    op, opts = KERAS3_CASES[case]
    for shape in KERAS3_SHAPES[op][:-1]:
        (dw, slots), (dw_ref, slots_ref) = _run_keras3(op, opts, optim, np.asarray, np.asarray,
                                                       shape, np.float64, seed=case)
        assert_close(dw, dw_ref, 1e-11, f"{op} {shape} w change")
        for i, (s, r) in enumerate(zip(slots, slots_ref)):
            if r is not None:
                assert_close(s, r, 1e-11, f"{op} {shape} slot {i}")


@pytest.mark.parametrize("case", range(len(KERAS3_CASES)), ids=_keras3_case_id)
def test_keras3_updates_over_steps_on_backend(backend, case):
    """float32 on the backend against the oracle and, on OpenCL, against the CPU op."""
    op, opts = KERAS3_CASES[case]
    for shape in KERAS3_SHAPES[op]:
        (dw, slots), (dw_ref, slots_ref) = _run_keras3(op, opts, backend.ops, backend.up,
                                                       backend.down, shape, np.float32,
                                                       seed=case)
        _assert_change_close(dw, dw_ref, KERAS3_TOL[op], f"{op} {shape} w change")
        for i, (s, r) in enumerate(zip(slots, slots_ref)):
            if r is not None:
                assert_close(s, r, 2e-5, f"{op} {shape} slot {i}")
        if backend.is_opencl:
            from pynn.backend import cpu

            (dw_cpu, slots_cpu), _ = _run_keras3(op, opts, cpu, np.asarray, np.asarray, shape,
                                                 np.float32, seed=case)
            _assert_change_close(dw, dw_cpu, KERAS3_TOL[op], f"{op} {shape} vs CPU")
            for i, (s, c) in enumerate(zip(slots, slots_cpu)):
                if slots_ref[i] is not None:
                    assert_close(s, c, 2e-5, f"{op} {shape} slot {i} vs CPU")


@pytest.mark.parametrize("op", sorted(KERAS3_SHAPES))
def test_keras3_updates_same_bits_for_any_thread_count(op):
    shape = (BIG,) if op == "lamb_update" else (301, 233)
    outs = []
    try:
        for threads in (1, 2, 3):
            set_num_threads(threads)
            (dw, slots), _ = _run_keras3(op, {}, optim, np.asarray, np.asarray, shape,
                                         np.float32, steps=2, seed=5)
            outs.append([dw, *[s for s in slots if s is not None]])
    finally:
        set_num_threads(get_max_threads())
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            np.testing.assert_array_equal(a, b)


def test_keras3_updates_empty_parameter(backend):
    ops = backend.ops
    ops.lamb_update(ops.zeros((0, 3)), ops.zeros((0, 3)), ops.zeros((0, 3)), ops.zeros((0, 3)),
                    0.01, 0.9, 0.999, 1e-7, 1, 1.0, 0.0, 0.0)
    ops.adafactor_update(ops.zeros((0, 3)), ops.zeros((0, 3)), ops.zeros((0,)),
                         ops.zeros((3,)), ops.zeros((0, 3)), 0.01, -0.8, 1e-30, 1e-3, 1.0, 1,
                         1.0, 0.0, 0.0)
    ops.muon_update(ops.zeros((0, 3)), ops.zeros((0, 3)), ops.zeros((0, 3)), 0.01, 0.95, True,
                    5, 3.4445, -4.775, 2.0315, 0.2, 1.0, 0.0, 0.0)


def _keras3_call(op, shape=(3, 4), **over):
    from pynn.backend.api import OPS
    from pynn.backend.operands.optim import adafactor_slot_shapes

    r_shape, c_shape, _ = adafactor_slot_shapes(shape)
    arrays = dict(w=np.ones(shape, np.float32), g=np.ones(shape, np.float32),
                  m=np.zeros(shape, np.float32), v=np.zeros(shape, np.float32),
                  r=np.zeros(r_shape, np.float32), c=np.zeros(c_shape, np.float32))
    hyper = dict(lr=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7, t=1, grad_scale=1.0,
                 clipvalue=0.0, weight_decay=0.0, beta_2_decay=-0.8, epsilon_1=1e-30,
                 epsilon_2=1e-3, clip_threshold=1.0, momentum=0.95, nesterov=True,
                 ns_steps=5, muon_a=3.4445, muon_b=-4.775, muon_c=2.0315, rms_rate=0.2)
    args = {**arrays, **hyper, "mask": None, **over}
    return getattr(optim, op)(*[args[p] for p in OPS[op]])


@pytest.mark.parametrize("op,over,exc,match", [
    ("lamb_update", dict(m=None), ValueError, "lamb_update: slots 'm' and 'v' are required"),
    ("lamb_update", dict(beta_1=1.0), ValueError, r"lamb_update: 'beta_1' must be in"),
    ("lamb_update", dict(t=0), ValueError, r"lamb_update: 't' must be an int >= 1"),
    ("lamb_update", dict(v=np.zeros((3, 5), np.float32)), ValueError,
     r"lamb_update: 'v' must have the shape of 'w' \(3, 4\), got \(3, 5\)"),
    ("adafactor_update", dict(r=np.zeros((4,), np.float32)), ValueError,
     r"adafactor_update: 'r' of a 'w' shaped \(3, 4\) must have shape \(3,\), got \(4,\)"),
    ("adafactor_update", dict(c=np.zeros((4,), np.float64)), TypeError,
     r"adafactor_update: 'c' must have the dtype of 'w' \(float32\), got float64"),
    ("adafactor_update", dict(r=None), ValueError, "adafactor_update: slots 'r' and 'c' are"),
    ("adafactor_update", dict(clip_threshold=0.0), ValueError,
     r"adafactor_update: 'clip_threshold' must be in \(0.0"),
    ("adafactor_update", dict(epsilon_1=-1.0), ValueError, "adafactor_update: 'epsilon_1'"),
    ("adafactor_update", dict(beta_2_decay=float("nan")), ValueError,
     "adafactor_update: 'beta_2_decay' must not be NaN"),
    ("muon_update", dict(w=np.ones((2, 3, 4), np.float32), g=np.ones((2, 3, 4), np.float32),
                         m=np.zeros((2, 3, 4), np.float32)), ValueError,
     r"muon_update: Muon's step takes a matrix: 'w' must have 2 dimensions, got shape"),
    ("muon_update", dict(ns_steps=2.5), TypeError, "muon_update: 'ns_steps' must be an int"),
    ("muon_update", dict(ns_steps=-1), ValueError, r"muon_update: 'ns_steps' must be in"),
    ("muon_update", dict(rms_rate=-0.1), ValueError, "muon_update: 'rms_rate' must be in"),
    ("muon_update", dict(nesterov="yes"), TypeError, "muon_update: 'nesterov' must be a bool"),
    ("muon_update", dict(m=np.zeros((4, 3), np.float32)), ValueError,
     r"muon_update: 'm' must have the shape of 'w' \(3, 4\)"),
    ("muon_update", dict(g=np.ones((3, 5), np.float32)), ValueError,
     r"muon_update: 'g' must have the shape of 'w' \(3, 4\), got \(3, 5\)"),
    ("lamb_update", dict(mask=np.ones((4, 3), np.uint8)), ValueError,
     r"lamb_update: 'mask' must have the shape of 'w' \(3, 4\), got \(4, 3\)"),
    ("adafactor_update", dict(mask=np.ones((3, 4), np.float32)), TypeError,
     r"adafactor_update: 'mask' must be uint8 \(or bool\), got dtype float32"),
])
def test_keras3_updates_bad_inputs(op, over, exc, match):
    with pytest.raises(exc, match=match):
        _keras3_call(op, **over)


def test_keras3_updates_reject_slot_aliasing():
    m = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="must not share memory"):
        _keras3_call("lamb_update", m=m, v=m)
    w = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="must not share memory"):
        _keras3_call("muon_update", w=w, m=w)


@pytest.mark.parametrize("case", range(len(KERAS3_CASES)), ids=_keras3_case_id)
def test_keras3_updates_with_a_pruning_mask(backend, case):
    """A mask's zeros read the gradient as 0 and store the weight and elementwise slots as
    exact zeros; the kept elements step as the oracle does from the pruned start (pruned
    weights, moments and gradients at 0; Muon's orthogonalised step and Adafactor's factored
    velocity spread onto pruned places, where the mask then zeroes them)."""
    op, opts = KERAS3_CASES[case]
    shape = {"lamb_update": (5, 9), "adafactor_update": (3, 5, 7),
             "muon_update": (9, 5)}[op]
    rng = np.random.default_rng(case)
    w0, slots0 = _keras3_state(op, shape, np.float32, rng)
    mask = (rng.uniform(size=shape) > 0.4).astype(np.uint8)
    elementwise = {"lamb_update": (0, 1), "adafactor_update": (2,), "muon_update": (0,)}[op]
    w0 = w0 * mask
    for i in elementwise:
        slots0[i] = slots0[i] * mask
    grads = [random_param(rng, shape, np.float32) for _ in range(3)]
    w = backend.up(w0.copy())
    slots = [None if s is None else backend.up(s.copy()) for s in slots0]
    w_ref, slots_ref = ref.f64(w0), [ref.f64(s) for s in slots0]
    for t in range(1, 4):
        _keras3_step_masked(op, backend.ops, w, backend.up(grads[t - 1]), slots, opts, t,
                            backend.up(mask))
        w_ref, new_slots = _keras3_ref_step(op, w_ref, grads[t - 1] * mask, slots_ref, opts, t)
        w_ref = w_ref * mask
        slots_ref = [s if n is None else n for s, n in zip(slots_ref, new_slots)]
        for i in elementwise:
            slots_ref[i] = slots_ref[i] * mask
    got = backend.down(w)
    assert not np.any(got[mask == 0]) and not np.any(np.signbit(got[mask == 0]))
    _assert_change_close((got - w0) * mask, (w_ref - w0) * mask, KERAS3_TOL[op],
                         f"{op} masked w change")
    for i in elementwise:
        s = backend.down(slots[i])
        assert not np.any(s[mask == 0]), f"{op} slot {i} pruned"
        assert_close(s, slots_ref[i], 2e-5, f"{op} masked slot {i}")


def test_adafactor_zero_row_and_column_takes_no_step_there(backend):
    """A gradient zero along a whole row and column (a dead or pruned unit's) gives a float32
    v that underflows to 0 where they cross; u is 0 there (Keras's 0 / 0 is NaN), and the
    rest of the step is the oracle's."""
    rng = np.random.default_rng(3)
    w0 = random_param(rng, (6, 5), np.float32)
    g = random_param(rng, (6, 5), np.float32)
    g[2, :] = 0
    g[:, 4] = 0
    w, r, c, v = (backend.up(a) for a in (w0.copy(), np.zeros(6, np.float32),
                                          np.zeros(5, np.float32), np.zeros((6, 5), np.float32)))
    backend.ops.adafactor_update(w, backend.up(g), r, c, v, 0.01, -0.8, 1e-30, 1e-3, 1.0, 1,
                                 1.0, 0.0, 0.0)
    got = backend.down(w)
    assert np.all(np.isfinite(got)) and backend.down(v)[2, 4] == 0
    want, _, _, _ = ref.adafactor_update_ref(w0, g, np.zeros(6), np.zeros(5), np.zeros((6, 5)),
                                             0.01, -0.8, 1e-30, 1e-3, 1.0, 1, 1.0, 0.0, 0.0)
    assert_close(got, want, 2e-6, "adafactor_update with a zero row and column")


def _keras3_step_masked(op, ops, w, g, slots, opts, t, mask):
    """_keras3_step with the mask as the op's last argument."""
    from types import SimpleNamespace

    real = getattr(ops, op)
    masked = SimpleNamespace(**{op: lambda *args: real(*args, mask=mask)})
    _keras3_step(op, masked, w, g, slots, opts, t)


@pytest.mark.opencl
def test_keras3_updates_bad_inputs_opencl(ocl):
    w = ocl.asarray(np.ones((3, 4), np.float32))
    g = ocl.asarray(np.ones((3, 4), np.float32))
    with pytest.raises(TypeError, match="asarray"):
        ocl.lamb_update(w, g, np.zeros((3, 4), np.float32), ocl.zeros((3, 4)), 0.01, 0.9,
                        0.999, 1e-7, 1, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="must have 2 dimensions"):
        ocl.muon_update(ocl.zeros((12,)), ocl.zeros((12,)), ocl.zeros((12,)), 0.01, 0.95, True,
                        5, 3.4445, -4.775, 2.0315, 0.2, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="'r' of a 'w' shaped"):
        ocl.adafactor_update(w, g, ocl.zeros((4,)), ocl.zeros((4,)), ocl.zeros((3, 4)), 0.01,
                             -0.8, 1e-30, 1e-3, 1.0, 1, 1.0, 0.0, 0.0)
