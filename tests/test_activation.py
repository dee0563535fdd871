"""activation_forward / activation_backward / activation_bias_backward (native/activation.pyx,
opencl/activation.cl) against the float64 oracles of tests/reference/activation_ref.py, finite
differences and Keras itself.

The checks that hold on both backends take the ``backend`` fixture (tests/conftest.py) and
run one body on each; OpenCL-only checks are marked ``opencl``.
"""

import os

import numpy as np
import pytest

import pynn
from pynn._native.activation import (
    activation_backward,
    activation_bias_backward,
    activation_forward,
)
from pynn._native.dense import bias_backward
from pynn._native.info import set_num_threads
from pynn.backend.api import ACTIVATIONS, ACTIVATIONS_NEEDING_INPUT
import pynn.layers as L
from tests.reference import gradcheck
from tests.reference.activation_ref import (
    activation_backward_ref,
    activation_bias_backward_ref,
    pooled_activation_bias_backward_ref,
    activation_forward_ref,
    numerical_derivative,
    prelu_backward_ref,
    prelu_forward_ref,
    relu_backward_ref,
    relu_forward_ref,
    softmax_backward_ref,
    softmax_forward_ref,
)
from tests.backend_util import assert_close, check_op, rand

# Keras 3's remaining activations (celu ... tanh_shrink: parameters, kinks away from 0, row
# shapes) have their own file, tests/test_activation_keras3.py; the tests here cover the
# names before them.
ACTIVATIONS = ACTIVATIONS[:ACTIVATIONS.index("celu")]

# Non-default alphas, so a kernel that ignores alpha (or swaps its meaning) fails.
ALPHA = {"leaky_relu": 0.3, "elu": 0.7}
SHAPES = [(1,), (7,), (3, 13), (2, 3, 7), (13, 1), (1, 31)]
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-14)}


def away_from_kinks(rng, shape, scale=2.0):
    """Random values with |x| >= 0.05: relu-like kinks at 0 stay outside the FD stencil."""
    x = rng.normal(size=shape) * scale
    return np.where(np.abs(x) < 0.05, np.copysign(0.05, x) + x, x)


def tol(target):
    """The tolerance on ``target``: the CPU's per-dtype TOL, OpenCL's float32 one."""
    return target.rtol() if target.is_opencl else TOL[target.dtype.type]


def check_activation(target, name, x):
    """One helper for every comparison: forward and backward on ``target`` against the
    float64 oracle (check_op: dtype, shape and tolerance in the failure message); the
    backward from (x, y) and from the one of them the activation needs."""
    alpha = ALPHA.get(name, 0.0)
    rng = np.random.default_rng(x.size)
    x = np.asarray(x, dtype=target.dtype)
    dy = rng.normal(size=x.shape).astype(target.dtype)
    _, y = check_op(target, "activation_forward", x, name, alpha,
                    ref=lambda x, *_: activation_forward_ref(x, name, alpha), rtol=tol(target))
    want = activation_backward_ref(dy, x, name, alpha)
    _, dx = check_op(target, "activation_backward", dy, x, y, name, alpha, ref=want,
                     rtol=tol(target))
    if name in ACTIVATIONS_NEEDING_INPUT:
        check_op(target, "activation_backward", dy, x, None, name, alpha, ref=want,
                 rtol=tol(target))
    else:
        check_op(target, "activation_backward", dy, None, y, name, alpha, ref=want,
                 rtol=tol(target))
    return y, dx


# The CPU's shapes, then the OpenCL file's (2-D to 3-D, 131 wide: never a work-group multiple).
@pytest.mark.parametrize("shape", SHAPES + [(3, 7), (2, 3, 13), (5, 131)], ids=str)
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_matches_reference(target, name, shape):
    check_activation(target, name, away_from_kinks(np.random.default_rng(3), shape))


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_backward_finite_differences(name):
    rng = np.random.default_rng(11)
    alpha = ALPHA.get(name, 0.0)
    x = away_from_kinks(rng, (3, 5))
    dy = rng.normal(size=x.shape)
    y = activation_forward(x, name, alpha)
    dx = activation_backward(dy, x, y, name, alpha)
    fd = numerical_derivative(lambda v: float(np.sum(dy * activation_forward(v, name, alpha))),
                              x, 1e-4)
    np.testing.assert_allclose(dx, fd, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", [a for a in ACTIVATIONS if a != "softmax"])
def test_elementwise_scalar_input(name):
    x = np.float64(-0.7)
    y = activation_forward(x, name, ALPHA.get(name, 0.0))
    assert y.shape == ()
    np.testing.assert_allclose(y, activation_forward_ref(x, name, ALPHA.get(name, 0.0)),
                               rtol=1e-12)


def test_derivatives_at_zero_follow_torch():
    x = np.zeros(1)
    dy = np.ones(1)
    for name, want in [("relu", 0.0), ("leaky_relu", 0.3), ("elu", 0.3), ("linear", 1.0)]:
        y = activation_forward(x, name, 0.3)
        assert activation_backward(dy, x, y, name, 0.3)[0] == want, name


def test_extreme_inputs_stay_finite():
    x = np.array([-1000.0, -80.0, 0.0, 80.0, 1000.0])
    for dtype in (np.float32, np.float64):
        xd = x.astype(dtype)
        for name in ACTIVATIONS:
            if name in ("linear", "relu", "leaky_relu", "selu", "elu", "softplus", "gelu",
                        "silu", "hard_silu", "mish", "exponential"):
                continue  # unbounded by design
            y = activation_forward(xd, name, 0.0)
            assert np.all(np.isfinite(y)), (name, dtype, y)
        np.testing.assert_array_equal(activation_forward(xd, "sigmoid")[[0, 4]], [0.0, 1.0])
        np.testing.assert_allclose(activation_forward(xd, "softplus"), [0, 0, np.log(2), 80, 1000],
                                   rtol=1e-6, atol=1e-30)
        sm = activation_forward(xd[None, :], "softmax")
        np.testing.assert_allclose(sm, [[0, 0, 0, 0, 1]], atol=1e-30)


def test_softmax_rows_sum_to_one_on_last_axis():
    x = np.random.default_rng(5).normal(size=(4, 3, 7)) * 10
    y = activation_forward(x, "softmax")
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-14)


def test_gelu_backward_needs_only_x():
    x = away_from_kinks(np.random.default_rng(2), (3, 4))
    dy = np.ones_like(x)
    dx = activation_backward(dy, x, None, "gelu", 0.0)
    np.testing.assert_allclose(dx, activation_backward_ref(dy, x, "gelu"), rtol=1e-12)
    assert ACTIVATIONS_NEEDING_INPUT[:4] == ("gelu", "silu", "hard_silu", "mish")


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_empty(name):
    for shape in [(0,), (0, 5), (4, 0)]:
        x = np.zeros(shape, np.float32)
        y = activation_forward(x, name, ALPHA.get(name, 0.0))
        assert y.shape == shape and y.dtype == np.float32
        dx = activation_backward(x, x, y, name, ALPHA.get(name, 0.0))
        assert dx.shape == shape


@pytest.mark.parametrize("name", ["relu", "softmax", "gelu", "elu"])
def test_thread_invariance(name):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(1001, 37)).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    results = []
    try:
        for n in (1, 2, 3):
            set_num_threads(n)
            y = activation_forward(x, name, 0.5)
            results.append((y, activation_backward(dy, x, y, name, 0.5)))
    finally:
        set_num_threads(os.cpu_count() or 1)
    for y, dx in results[1:]:
        np.testing.assert_array_equal(y, results[0][0])
        np.testing.assert_array_equal(dx, results[0][1])


@pytest.mark.parametrize("name", ["softmax", "gelu", "tanh"])
def test_layouts_give_the_same_result(name):
    base = np.random.default_rng(9).normal(size=(6, 10))
    want_y = activation_forward(base, name)
    want_dx = activation_backward(base, base, want_y, name)
    fortran = np.asfortranarray(base)
    strided = np.zeros((6, 20))
    strided[:, ::2] = base
    readonly = base.copy()
    readonly.setflags(write=False)
    for x in (fortran, strided[:, ::2], readonly):
        y = activation_forward(x, name)
        np.testing.assert_array_equal(y, want_y)
        np.testing.assert_array_equal(activation_backward(x, x, y, name), want_dx)


def test_integer_input_becomes_float32():
    y = activation_forward(np.arange(-3, 4), "relu")
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, [0, 0, 0, 0, 1, 2, 3])


def test_bad_inputs():
    x = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="unknown activation"):
        activation_forward(x, "swishy")
    with pytest.raises(ValueError, match="'x' is required"):
        activation_forward(None, "relu")
    with pytest.raises(TypeError, match="numeric"):
        activation_forward(np.array(["a", "b"]), "relu")
    with pytest.raises(ValueError, match="at least 1 dimension"):
        activation_forward(np.float32(1.0), "softmax")
    with pytest.raises(ValueError, match="alpha >= 0"):
        activation_forward(x, "leaky_relu", -0.1)
    with pytest.raises(ValueError, match="finite"):
        activation_forward(x, "elu", float("nan"))
    with pytest.raises(TypeError, match="alpha"):
        activation_forward(x, "elu", "big")
    with pytest.raises(ValueError, match="pre-activation"):
        activation_backward(x, None, x, "gelu")
    with pytest.raises(ValueError, match="'y'"):
        activation_backward(x, x, None, "relu")
    with pytest.raises(ValueError, match="shape of dy"):
        activation_backward(x, None, np.ones((3, 2), np.float32), "relu")
    with pytest.raises(ValueError, match="shape of dy"):
        activation_backward(x, np.ones((2, 4), np.float32), x, "gelu")
    with pytest.raises(ValueError, match="'dy' is required"):
        activation_backward(None, x, x, "relu")


# -- golden comparison against Keras 3 itself (torch backend) -----------------------------

@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except Exception as exc:  # keras missing or its backend unavailable
        pytest.skip(f"keras unavailable: {exc}")
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras runs on {keras.backend.backend()}, not torch")
    return keras


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_forward_matches_keras(keras, name):
    # float64: in float32 torch's erf-form gelu loses digits to cancellation for x << 0,
    # where this kernel (double inside) is the more accurate one.
    x = np.random.default_rng(21).normal(size=(5, 11)) * 3
    acts = keras.activations
    fn = {
        "leaky_relu": lambda v: acts.leaky_relu(v, negative_slope=ALPHA["leaky_relu"]),
        "elu": lambda v: acts.elu(v, alpha=ALPHA["elu"]),
    }.get(name, getattr(acts, name))
    want = keras.ops.convert_to_numpy(fn(keras.ops.convert_to_tensor(x)))
    got = activation_forward(x, name, ALPHA.get(name, 0.0))
    assert want.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-15, err_msg=name)


# -- activation_bias_backward: the activation gradient and the bias gradient in one pass ----

# 2-D and 4-D, odd sizes; (4099, 33) and (9, 17, 11, 37) span several row blocks, (67, 1031)
# several column blocks with a ragged last one, all three above the parallel threshold.
FUSED_SHAPES = [(1, 1), (7,), (3, 13), (5, 3, 7, 9), (4099, 33), (9, 17, 11, 37), (67, 1031)]


def check_activation_bias(name, shape, dtype, seed=5):
    """dz equals activation_backward's bit for bit; db matches the float64 oracle to the
    rounding of the sum (relative to sum |dz|) and bias_backward(dz)."""
    alpha = ALPHA.get(name, 0.0)
    rng = np.random.default_rng(seed)
    x = away_from_kinks(rng, shape).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    y = activation_forward(x, name, alpha)
    dz, db = activation_bias_backward(dy, x, y, name, alpha)
    what = f"{name} {dtype.__name__} {shape}"
    assert dz.dtype == dtype and dz.shape == shape, what
    assert db.dtype == dtype and db.shape == (shape[-1],), what
    np.testing.assert_array_equal(dz, activation_backward(dy, x, y, name, alpha), err_msg=what)
    dz_ref, db_ref = activation_bias_backward_ref(dy, x, name, alpha)
    np.testing.assert_allclose(dz, dz_ref, **TOL[dtype], err_msg=what)
    scale = np.abs(dz_ref).reshape(-1, shape[-1]).sum(axis=0)
    eps = np.finfo(dtype).eps
    err = np.abs(db - db_ref)
    assert np.all(err <= 4 * eps * scale + TOL[dtype]["atol"]), (what, err.max())
    np.testing.assert_allclose(db, bias_backward(dz), rtol=0,
                               atol=4 * eps * scale.max() + TOL[dtype]["atol"], err_msg=what)
    return dz, db


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", FUSED_SHAPES, ids=str)
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_bias_backward_matches_reference(name, shape, dtype):
    check_activation_bias(name, shape, dtype)


def test_activation_bias_backward_gelu_needs_only_x():
    rng = np.random.default_rng(2)
    x, dy = rng.normal(size=(9, 5)), rng.normal(size=(9, 5))
    dz, db = activation_bias_backward(dy, x, None, "gelu")
    want_dz, want_db = activation_bias_backward_ref(dy, x, "gelu")
    np.testing.assert_allclose(dz, want_dz, rtol=1e-12)
    np.testing.assert_allclose(db, want_db, rtol=1e-12)


@pytest.mark.parametrize("name", ["relu", "softmax", "gelu", "tanh"])
@pytest.mark.parametrize("shape", [(4099, 33), (9, 17, 11, 37), (67, 1031)], ids=str)
def test_activation_bias_backward_thread_invariance(name, shape):
    rng = np.random.default_rng(8)
    x = rng.normal(size=shape).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    y = activation_forward(x, name, 0.5)
    before = pynn.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            pynn.set_num_threads(n)
            results.append(activation_bias_backward(dy, x, y, name, 0.5))
    finally:
        pynn.set_num_threads(before)
    for dz, db in results[1:]:
        np.testing.assert_array_equal(dz, results[0][0])
        np.testing.assert_array_equal(db, results[0][1])


def test_activation_bias_backward_empty_and_layouts():
    for shape in [(0, 5), (4, 0), (2, 0, 3)]:
        a = np.ones(shape, np.float32)
        dz, db = activation_bias_backward(a, a, a, "relu")
        assert dz.shape == shape and db.shape == (shape[-1],)
        np.testing.assert_array_equal(db, 0)
    base = np.random.default_rng(9).normal(size=(6, 10))
    y = activation_forward(base, "tanh")
    want = activation_bias_backward(base, base, y, "tanh")
    for dy in (np.asfortranarray(base), np.zeros((6, 20))[:, ::2] + base):
        got = activation_bias_backward(dy, base, y, "tanh")
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_activation_bias_backward_bad_inputs():
    x = np.ones((2, 3), np.float32)
    op = activation_bias_backward
    with pytest.raises(ValueError, match="activation_bias_backward: unknown activation"):
        op(x, x, x, "swishy")
    with pytest.raises(ValueError, match="at least 1 dimension"):
        op(np.float32(1.0), None, np.float32(1.0), "relu")
    with pytest.raises(ValueError, match="'dy' is required"):
        op(None, x, x, "relu")
    with pytest.raises(ValueError, match="pre-activation"):
        op(x, None, x, "gelu")
    with pytest.raises(ValueError, match="'y'"):
        op(x, x, None, "relu")
    with pytest.raises(ValueError, match="shape of dy"):
        op(x, None, np.ones((3, 2), np.float32), "relu")
    with pytest.raises(ValueError, match="alpha >= 0"):
        op(x, x, x, "elu", -1.0)
    with pytest.raises(TypeError, match="numeric"):
        op(np.array(["a", "b"]), None, x, "relu")


# -- over both backends (the `backend` fixture): float32 against the float64 references -----
# Sizes are small and awkward (1, 3, 7, 13, 131: never a multiple of a work-group). On OpenCL
# check_op also compares with the CPU op (ties, NaN and clipping follow the CPU).

# 2-D and 4-D; (131, 3) and (2, 5, 7, 3) span several row chunks of the column sums.
BACKEND_FUSED_SHAPES = [(1, 1), (3, 7), (131, 3), (2, 5, 7, 3)]


def _alpha(act):
    return 0.3 if act in ("leaky_relu", "elu") else 0.0


def test_softmax_extreme_logits_and_rows_sum_to_one_on_backend(backend):
    x = np.array([[1000.0, -1000.0, 3.0], [-1e30, -1e30, -1e30], [0.0, 0.0, 0.0]], np.float32)
    _, y = check_op(backend, "activation_forward", x, "softmax", 0.0,
                    ref=activation_forward_ref(x, "softmax"))
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-6)


def test_activation_is_deterministic_on_backend(backend):
    ops, up = backend.ops, backend.up
    rng = np.random.default_rng(3)
    x, dy = up(rand(rng, (7, 131))), up(rand(rng, (7, 131)))
    y1, y2 = ops.activation_forward(x, "softmax", 0.0), ops.activation_forward(x, "softmax", 0.0)
    np.testing.assert_array_equal(backend.down(y1), backend.down(y2))
    d1 = ops.activation_backward(dy, None, y1, "softmax", 0.0)
    d2 = ops.activation_backward(dy, None, y1, "softmax", 0.0)
    np.testing.assert_array_equal(backend.down(d1), backend.down(d2))


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("shape", BACKEND_FUSED_SHAPES, ids=str)
def test_activation_bias_backward_on_backend(backend, act, shape):
    ops, up, down = backend.ops, backend.up, backend.down
    rng = np.random.default_rng(len(shape) * 100 + ACTIVATIONS.index(act) + shape[0])
    x, dy = rand(rng, shape) * 3, rand(rng, shape)
    alpha = _alpha(act)
    y = activation_forward(x, act, alpha)
    (dz, db), _ = check_op(backend, "activation_bias_backward", dy, x, y, act, alpha,
                           ref=lambda dy, x, *_: activation_bias_backward_ref(dy, x, act, alpha),
                           kind="reduction")
    # The fused first pass sums the rows in bias_backward's order (bit-equal on PoCL; a
    # compiler may still contract the last product of act_grad into the running sum).
    assert_close(down(db), down(ops.bias_backward(dz)), 1e-6, "db vs bias_backward(dz)")
    assert_close(down(dz), down(ops.activation_backward(up(dy), up(x), up(y), act, alpha)),
                 1e-6, "dz vs activation_backward")
    again = ops.activation_bias_backward(up(dy), up(x), up(y), act, alpha)
    np.testing.assert_array_equal(down(again[1]), down(db))


def test_activation_bias_backward_gelu_without_y_on_backend(backend):
    rng = np.random.default_rng(4)
    x, dy = rand(rng, (5, 3)), rand(rng, (5, 3))
    check_op(backend, "activation_bias_backward", dy, x, None, "gelu", 0.0,
             ref=activation_bias_backward_ref(dy, x, "gelu"), kind="reduction")


def test_activation_empty_on_backend(backend):
    ops = backend.ops
    e = ops.activation_forward(ops.zeros((0, 5)), "relu", 0.0)
    assert e.shape == (0, 5)
    assert ops.activation_forward(ops.zeros((4, 0)), "softmax", 0.0).shape == (4, 0)
    for shape in [(0, 5), (4, 0)]:
        e = ops.zeros(shape)
        dz, db = ops.activation_bias_backward(e, e, e, "relu", 0.0)
        assert dz.shape == shape and db.shape == (shape[1],)
        np.testing.assert_array_equal(backend.down(db), 0)


# -- OpenCL only: host data refused, device dtypes, views -----------------------------------


@pytest.mark.opencl
def test_activation_bad_inputs_opencl(ocl):
    x = ocl.asarray(np.ones((3, 4), np.float32))
    with pytest.raises(TypeError, match="activation_forward.*asarray"):
        ocl.activation_forward(np.ones((3, 4), np.float32), "relu", 0.0)
    with pytest.raises(ValueError, match="unknown activation"):
        ocl.activation_forward(x, "swishy", 0.0)
    with pytest.raises(ValueError, match="alpha >= 0"):
        ocl.activation_forward(x, "elu", -1.0)
    with pytest.raises(ValueError, match="required"):
        ocl.activation_forward(None, "relu", 0.0)
    with pytest.raises(TypeError, match="dtype"):
        ocl.activation_forward(ocl.asarray(np.ones(3), np.int32), "relu", 0.0)
    with pytest.raises(ValueError, match="needs the pre-activation"):
        ocl.activation_backward(x, None, x, "gelu", 0.0)
    with pytest.raises(ValueError, match="forward output"):
        ocl.activation_backward(x, x, None, "tanh", 0.0)
    with pytest.raises(ValueError, match="shape"):
        ocl.activation_backward(x, None, ocl.zeros((4, 3)), "tanh", 0.0)


@pytest.mark.opencl
def test_activation_bias_backward_bad_inputs_opencl(ocl):
    a = ocl.asarray(np.ones((3, 4), np.float32))
    with pytest.raises(TypeError, match="activation_bias_backward.*asarray"):
        ocl.activation_bias_backward(np.ones((3, 4), np.float32), a, a, "relu", 0.0)
    with pytest.raises(ValueError, match="at least 1 dimension"):
        ocl.activation_bias_backward(ocl.zeros(()), None, ocl.zeros(()), "relu", 0.0)
    with pytest.raises(ValueError, match="needs the pre-activation"):
        ocl.activation_bias_backward(a, None, a, "gelu", 0.0)
    with pytest.raises(ValueError, match="shape"):
        ocl.activation_bias_backward(a, None, ocl.zeros((4, 3)), "tanh", 0.0)
    with pytest.raises(ValueError, match="unknown activation"):
        ocl.activation_bias_backward(a, a, a, "swishy", 0.0)


@pytest.mark.opencl
def test_non_contiguous_device_arrays_are_refused_and_offset_views_read(ocl):
    a = ocl.asarray(np.arange(24, dtype=np.float32).reshape(4, 6))
    with pytest.raises(ValueError, match="C-contiguous"):
        ocl.activation_forward(a[:, 1:], "relu", 0.0)
    # A contiguous view at an offset (a row slice) is read from its own start.
    np.testing.assert_array_equal(
        ocl.activation_forward(a[1:], "relu", 0.0).get(),
        np.maximum(np.arange(6, 24, dtype=np.float32).reshape(3, 6), 0))
    # Updated in place, it would be written through a copy: refused.
    with pytest.raises(ValueError, match="offset"):
        ocl.scale_inplace(a[1:], 2.0)


@pytest.mark.opencl
def test_small_work_groups_build_smaller_activation_kernels(backend_opencl, small_work_groups):
    """A device whose work-group limit is below the defaults gets kernels built with capped
    WG_SIZE / row sizes, and the same answers."""
    x = rand(np.random.default_rng(31), (5, 131))
    check_op(backend_opencl, "activation_forward", x, "softmax", 0.0,
             ref=activation_forward_ref(x, "softmax"))


# == issue 12: the activation layers and their ops ========================================

NEW_ACTIVATIONS = ("relu6", "hard_sigmoid", "silu", "hard_silu", "mish", "exponential",
                   "softsign")
# (max_value, negative_slope, threshold): plain relu, a cap, a threshold, all three.
RELU_PARAMS = [(None, 0.0, 0.0), (1.5, 0.0, 0.0), (None, 0.2, 0.0), (None, 0.0, 0.4),
               (2.0, 0.1, 0.5), (6.0, 0.0, 0.0)]
ODD_SHAPES = [(1, 1), (7, 3), (3, 5, 7), (2, 3, 5, 13)]


def keras_or_skip():
    """Keras 3 on torch, or a skip (parity tests)."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras runs on {keras.backend.backend()}, these tests want torch")
    return keras


def away_from(x, points, gap=0.02):
    """x with every element at least ``gap`` from each kink in ``points`` (FD stencils)."""
    for p in points:
        near = np.abs(x - p) < gap
        x = np.where(near, p + np.copysign(gap, x - p) + (x - p), x)
    return x


@pytest.mark.parametrize("name", ["swish", "hard_swish"])
def test_keras_aliases_are_the_canonical_activation(target, name):
    x = rand(np.random.default_rng(1), (5, 7), target.dtype)
    canonical = {"swish": "silu", "hard_swish": "hard_silu"}[name]
    check_op(target, "activation_forward", x, name, 0.0,
             ref=lambda x, *_: activation_forward_ref(x, canonical), rtol=tol(target))


@pytest.mark.parametrize("name", NEW_ACTIVATIONS)
def test_new_activations_match_keras(name):
    keras = keras_or_skip()
    x = np.linspace(-7, 7, 281).astype(np.float32)  # every kink and both saturations
    want = np.asarray(keras.ops.convert_to_numpy(keras.activations.get(name)(x)))
    np.testing.assert_allclose(activation_forward(x, name), want, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("params", RELU_PARAMS, ids=str)
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=str)
def test_relu_matches_reference(target, shape, params):
    x = away_from(rand(np.random.default_rng(2), shape) * 3, [0.0, 0.4, 0.5, 1.5, 2.0, 6.0])
    x = x.astype(target.dtype)
    dy = rand(np.random.default_rng(3), shape, target.dtype)
    check_op(target, "relu_forward", x, *params, ref=relu_forward_ref, rtol=tol(target))
    check_op(target, "relu_backward", dy, x, *params, ref=relu_backward_ref, rtol=tol(target))


@pytest.mark.parametrize("params", RELU_PARAMS, ids=str)
def test_relu_backward_finite_differences(params):
    rng = np.random.default_rng(4)
    x = away_from(rng.normal(size=(3, 7)) * 3, [0.0, 0.4, 0.5, 1.5, 2.0, 6.0])
    dy = rng.normal(size=x.shape)
    fd = numerical_derivative(lambda v: float(np.sum(dy * relu_forward_ref(v, *params))), x,
                              1e-4)
    np.testing.assert_allclose(activation_relu_backward(dy, x, params), fd, rtol=1e-7,
                               atol=1e-9)


def activation_relu_backward(dy, x, params):
    from pynn.backend import cpu

    return cpu.relu_backward(dy, x, *params)


def test_relu_matches_keras():
    keras = keras_or_skip()
    x = np.linspace(-4, 8, 97).astype(np.float32)
    for max_value, slope, threshold in RELU_PARAMS:
        want = keras.ops.convert_to_numpy(keras.activations.relu(
            x, negative_slope=slope, max_value=max_value, threshold=threshold))
        got = L.ReLU(max_value, slope, threshold)(x[None])[0]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# alpha shapes for x (N, 4, 5, 3): none shared, spatial shared (Keras's CNN use), channel
# shared, the middle one shared (three groups), all shared.
PRELU_ALPHAS = [(4, 5, 3), (1, 1, 3), (4, 5, 1), (4, 1, 3), (1, 1, 1)]


@pytest.mark.parametrize("alpha_shape", PRELU_ALPHAS, ids=str)
def test_prelu_matches_reference(target, alpha_shape):
    rng = np.random.default_rng(5)
    x = rand(rng, (7, 4, 5, 3), target.dtype)
    alpha = rand(rng, alpha_shape, target.dtype)
    dy = rand(rng, x.shape, target.dtype)
    check_op(target, "prelu_forward", x, alpha, ref=prelu_forward_ref, rtol=tol(target))
    check_op(target, "prelu_backward", dy, x, alpha, True, ref=prelu_backward_ref,
             rtol=target.rtol("reduction") if target.is_opencl else tol(target))
    check_op(target, "prelu_backward", dy, x, alpha, False, ref=prelu_backward_ref,
             rtol=target.rtol("reduction") if target.is_opencl else tol(target))


def test_prelu_alpha_gradient_is_deterministic(backend, num_threads):
    rng = np.random.default_rng(6)
    x, dy = rand(rng, (33, 9, 3)), rand(rng, (33, 9, 3))
    alpha = rand(rng, (1, 3))
    results = []
    for n in (1, 2, 3):
        num_threads(n)
        _, da = backend.op("prelu_backward")(backend.up(dy), backend.up(x), backend.up(alpha),
                                             True)
        results.append(backend.down(da))
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2])
def test_softmax_axis_matches_reference(target, axis):
    rng = np.random.default_rng(7)
    x = rand(rng, (3, 5, 7), target.dtype) * 3
    dy = rand(rng, x.shape, target.dtype)
    _, y = check_op(target, "softmax_forward", x, axis, ref=softmax_forward_ref,
                    rtol=tol(target))
    check_op(target, "softmax_backward", dy, y, axis,
             ref=lambda dy, y, axis: softmax_backward_ref(dy, softmax_forward_ref(x, axis),
                                                          axis),
             rtol=tol(target))


def test_activation_ops_bad_inputs(backend):
    b, x = backend.ops, backend.up(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"relu_forward: 'max_value' must be >= 0.0, got -1"):
        b.relu_forward(x, -1.0, 0.0, 0.0)
    with pytest.raises(TypeError, match="relu_backward: 'threshold' must be a number"):
        b.relu_backward(x, x, None, 0.0, "a")
    with pytest.raises(ValueError, match=r"prelu_forward: 'alpha' must have x's feature "
                                         r"shape \(3,\).*got \(2,\)"):
        b.prelu_forward(x, backend.up(np.ones(2, np.float32)))
    with pytest.raises(ValueError, match="softmax_forward: 'axis' 2 is out of range"):
        b.softmax_forward(x, 2)
    with pytest.raises(ValueError, match=r"softmax_backward: 'y' must have the shape of dy"):
        b.softmax_backward(x, backend.up(np.ones((3, 2), np.float32)), 0)
    with pytest.raises(ValueError, match="at most 4 runs"):
        b.prelu_forward(backend.up(np.ones((1, 2, 2, 2, 2, 2), np.float32)),
                        backend.up(np.ones((2, 1, 2, 1, 2), np.float32)))


# -- the layers ------------------------------------------------------------------------------
def layer_cases():
    return [
        (lambda: L.ReLU(), (3, 5)),
        (lambda: L.ReLU(max_value=1.0, negative_slope=0.1, threshold=0.3), (3, 2, 5)),
        (lambda: L.LeakyReLU(), (3, 5)),
        (lambda: L.LeakyReLU(negative_slope=0.05), (2, 3, 4)),
        (lambda: L.ELU(), (3, 5)),
        (lambda: L.ELU(alpha=0.5), (3, 5)),
        (lambda: L.PReLU(alpha_initializer="random_normal"), (3, 5)),
        (lambda: L.PReLU(alpha_initializer="random_normal", shared_axes=[1, 2]), (2, 3, 4, 5)),
        (lambda: L.Softmax(), (3, 5)),
        (lambda: L.Softmax(axis=1), (2, 3, 4)),
    ]


@pytest.mark.parametrize("case", range(len(layer_cases())))
def test_layer_backward_finite_differences(case, float64, seeded):
    make, shape = layer_cases()[case]
    layer = make()
    x = away_from(seeded.normal(size=shape) * 2, [0.0, 0.3, 1.0])
    gradcheck.check_layer(layer, x, seeded)


@pytest.mark.parametrize("case", range(len(layer_cases())))
def test_layer_config_round_trip(case, seeded):
    make, shape = layer_cases()[case]
    layer = make()
    x = seeded.normal(size=shape).astype(np.float32)
    y = layer(x)
    config = layer.get_config()
    clone = L.LAYERS[type(layer).__name__].from_config(config)
    assert clone.get_config() == config
    clone(x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(clone(x), y)


@pytest.mark.parametrize("case", range(len(layer_cases())))
def test_layer_matches_keras(case, seeded):
    keras = keras_or_skip()
    make, shape = layer_cases()[case]
    layer = make()
    config = {k: v for k, v in layer.get_config().items()
              if k not in ("name", "trainable", "dtype", "alpha_initializer")}
    if type(layer).__name__ == "ELU":
        config = {"alpha": layer.alpha}
    k_layer = getattr(keras.layers, type(layer).__name__)(**config)
    x = seeded.normal(size=shape).astype(np.float32) * 3
    layer(x)
    k_layer(x)
    if layer.weights:  # PReLU: random alphas (the default zeros would hide a swapped axis)
        layer.set_weights([seeded.normal(size=w.shape) for w in k_layer.get_weights()])
        k_layer.set_weights(layer.get_weights())
    want = keras.ops.convert_to_numpy(k_layer(x))
    np.testing.assert_allclose(layer(x), want, rtol=1e-5, atol=1e-6)


def test_prelu_weight_has_keras_shape():
    keras = keras_or_skip()
    for shared in (None, [1, 2], [3], 2):
        layer = L.PReLU(shared_axes=shared)
        layer.build((None, 4, 5, 3))
        k_layer = keras.layers.PReLU(shared_axes=shared)
        k_layer.build((None, 4, 5, 3))
        assert layer.alpha.shape == tuple(k_layer.alpha.shape), shared


def test_layer_bad_arguments_name_the_layer():
    with pytest.raises(ValueError, match=r"ReLU 'r': max_value must be a finite number >= 0, "
                                         r"got -1"):
        L.ReLU(max_value=-1, name="r")
    with pytest.raises(ValueError, match=r"LeakyReLU 'k': negative_slope must be a number "
                                         r">= 0, got 'a'"):
        L.LeakyReLU(negative_slope="a", name="k")
    with pytest.raises(ValueError, match=r"PReLU 'p': shared axis 4 is out of range for "
                                         r"input shape \(None, 2, 3\)"):
        L.PReLU(shared_axes=4, name="p").build((None, 2, 3))
    with pytest.raises(ValueError, match=r"Softmax 's': axis 0 must be a feature axis"):
        L.Softmax(axis=0, name="s").build((None, 3))
    with pytest.raises(TypeError, match="unexpected arguments"):
        L.ELU(beta=1)


@pytest.mark.parametrize("name", NEW_ACTIVATIONS)
def test_dense_and_conv2d_take_the_new_activations(name, float64, seeded):
    """The activation= path: the fused epilogue forward, then the layer's backward checked
    by central differences (silu, hard_silu, mish keep z)."""
    dense = L.Dense(4, activation=name)
    x = away_from(seeded.normal(size=(3, 5)), [-3.0, 0.0, 3.0, 6.0], gap=0.05)
    y = dense(x)
    z = x @ dense.kernel.value + dense.bias.value
    np.testing.assert_allclose(y, activation_forward_ref(z, name), rtol=1e-12, atol=1e-12)
    gradcheck.check_layer(dense, x, seeded, rtol=1e-4, atol=1e-6)
    conv = L.Conv2D(2, 3, padding="same", activation=name)
    x4 = seeded.normal(size=(2, 4, 5, 3)) * 0.5
    gradcheck.check_layer(conv, x4, seeded, rtol=1e-4, atol=1e-6)


@pytest.mark.opencl
@pytest.mark.parametrize("name", NEW_ACTIVATIONS)
def test_dense_new_activations_on_opencl(ocl, name):
    rng = np.random.default_rng(8)
    x, w, b = rand(rng, (5, 7)), rand(rng, (7, 3)), rand(rng, (3,))
    y, z = ocl.dense_forward(ocl.asarray(x), ocl.asarray(w), ocl.asarray(b), name, 0.0)
    assert_close(y.get(), activation_forward_ref(x.astype(np.float64) @ w + b, name), 1e-4,
                 f"dense_forward {name} on opencl")
    assert (z is not None) == (name in ACTIVATIONS_NEEDING_INPUT)


def test_lstm_with_hard_sigmoid_matches_keras(seeded):
    """The recurrent kernels take relu6, hard_sigmoid and softsign (derivatives from the
    output): an LSTM with Keras 2's default recurrent_activation gives Keras's numbers."""
    keras = keras_or_skip()
    x = seeded.normal(size=(3, 5, 4)).astype(np.float32)
    k_lstm = keras.layers.LSTM(6, activation="softsign", recurrent_activation="hard_sigmoid",
                               return_sequences=True)
    want = keras.ops.convert_to_numpy(k_lstm(x))
    lstm = L.LSTM(6, activation="softsign", recurrent_activation="hard_sigmoid",
                  return_sequences=True)
    lstm(x)
    lstm.set_weights(k_lstm.get_weights())
    np.testing.assert_allclose(lstm(x), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", ["cpu", pytest.param("opencl", marks=pytest.mark.opencl)])
def test_model_of_the_new_layers_trains_saves_and_loads(device, seeded, tmp_path):
    """Every layer of this issue in one model: fit runs (backward of each, constraint after
    each update), and a saved model predicts the same after loading."""
    previous = pynn.backend.current().NAME
    pynn.set_device(device)
    try:
        model = pynn.Sequential([
            L.Input((6, 6, 2)), L.Conv2D(3, 3, kernel_constraint="max_norm"),
            L.PReLU(shared_axes=[1, 2], alpha_initializer="random_normal"),
            L.SpatialDropout2D(0.2, seed=1), L.GaussianNoise(0.1, seed=2), L.Flatten(),
            L.Dense(4, activation="silu"), L.GaussianDropout(0.1, seed=3),
            L.ReLU(max_value=2.0), L.LeakyReLU(), L.ELU(), L.Dense(3), L.Softmax()])
        model.compile(optimizer="adam", loss="categorical_crossentropy")
        x = seeded.normal(size=(20, 6, 6, 2)).astype(np.float32)
        y = np.eye(3, dtype=np.float32)[np.arange(20) % 3]
        history = model.fit(x, y, epochs=2, verbose=0)
        assert np.all(np.isfinite(history.history["loss"]))
        path = tmp_path / "model.pynn"
        model.save(str(path))
        loaded = pynn.load_model(str(path))
        np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    finally:
        pynn.set_device(previous)


@pytest.mark.parametrize("name", NEW_ACTIVATIONS + ("swish", "hard_swish"))
def test_dense_with_new_activation_matches_keras(name, seeded):
    """Keras's weights in a pynn Dense give Keras's outputs. (The aliases need
    layers.base.activation_config to resolve api.ACTIVATION_ALIASES; until then they go
    through the canonical name.)"""
    keras = keras_or_skip()
    from pynn.backend.api import ACTIVATION_ALIASES

    x = seeded.normal(size=(5, 7)).astype(np.float32) * 2
    k_dense = keras.layers.Dense(4, activation=name)
    want = keras.ops.convert_to_numpy(k_dense(x))
    dense = L.Dense(4, activation=ACTIVATION_ALIASES.get(name, name))
    dense(x)
    dense.set_weights(k_dense.get_weights())
    np.testing.assert_allclose(dense(x), want, rtol=1e-5, atol=1e-5)


def test_large_arrays_take_the_threaded_path(num_threads):
    """Above ACT_PARALLEL_MIN (1 Mi elements) the passes run on the OpenMP team: the same
    numbers as one thread, and as the reference."""
    x = np.random.default_rng(8).standard_normal(1_300_003).astype(np.float32)
    dy = np.random.default_rng(9).standard_normal(x.shape).astype(np.float32)
    results = []
    for threads in (1, 2):
        num_threads(threads)
        y = activation_forward(x, "elu", 1.0)
        results.append((y, activation_backward(dy, x, y, "elu", 1.0)))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    np.testing.assert_allclose(results[1][0], activation_forward_ref(x, "elu", 1.0), rtol=1e-6,
                               atol=1e-7)


# -- pooled_activation_bias_backward: dz of a layer under a max pool, from the pool's arrays --
# (map shape, pool size, strides, padding, activation): windows that tile the map (the CPU
# op's own pass) and that do not (overlapping, 'same', strides past the window: the two ops)
POOLED_CASES = [
    ((3, 13, 11, 7), (2, 2), (2, 2), "valid", "relu"),
    ((2, 9, 10, 600), (3, 2), (3, 2), "valid", "linear"),   # two column tiles
    ((2, 11, 12, 5), (2, 2), (3, 3), "valid", "relu"),
    ((1, 6, 7, 1), (2, 3), (2, 3), "valid", "tanh"),
    ((2, 8, 8, 3), (3, 3), (2, 2), "valid", "relu"),
    ((2, 7, 9, 3), (2, 2), (2, 2), "same", "sigmoid"),
]


def pooled_case(rng, shape, ps, st, pad, name, dtype):
    from pynn._native import pool

    z = rng.standard_normal(shape)
    y = {"relu": np.maximum(z, 0), "linear": z, "tanh": np.tanh(z),
         "sigmoid": 1 / (1 + np.exp(-z))}[name].astype(dtype)
    pooled, argmax = pool.maxpool2d_forward(y, ps, st, pad)
    return rng.standard_normal(pooled.shape).astype(dtype), argmax, pooled, y


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", POOLED_CASES, ids=[str(c) for c in POOLED_CASES])
def test_pooled_activation_bias_backward_is_the_two_ops(case, dtype):
    """The same bits as maxpool2d_backward then activation_bias_backward, at any thread
    count; close to the float64 oracle."""
    from pynn._native import pool
    from pynn._native.activation import pooled_activation_bias_backward

    rng = np.random.default_rng(11)
    shape, ps, st, pad, name = case
    dpool, argmax, pooled, y = pooled_case(rng, shape, ps, st, pad, name, dtype)
    want = activation_bias_backward(pool.maxpool2d_backward(dpool, argmax, y.shape), None, y,
                                    name, 0.0)
    try:
        for threads in (1, 2, 3):
            set_num_threads(threads)
            got = pooled_activation_bias_backward(dpool, argmax, pooled, y, ps, st, pad, name)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
    finally:
        set_num_threads(os.cpu_count() or 1)
    oracle = pooled_activation_bias_backward_ref(dpool, argmax, pooled, y, ps, st, pad, name)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got[0], oracle[0], **tol)
    np.testing.assert_allclose(got[1], oracle[1], **tol)


def test_pooled_activation_bias_backward_bad_inputs():
    from pynn._native.activation import pooled_activation_bias_backward as op

    rng = np.random.default_rng(13)
    dpool, argmax, pooled, y = pooled_case(rng, (2, 8, 6, 3), (2, 2), (2, 2), "valid",
                                           "relu", np.float32)
    with pytest.raises(ValueError, match="pooled_activation_bias_backward.*dpool"):
        op(dpool[:, 1:], argmax, pooled, y, (2, 2), (2, 2))
    with pytest.raises(ValueError, match="pooled_activation_bias_backward.*argmax"):
        op(dpool, argmax[..., 1:], pooled, y, (2, 2), (2, 2))
    with pytest.raises(ValueError, match="pooled_activation_bias_backward.*pooled"):
        op(dpool, argmax, pooled[:1], y, (2, 2), (2, 2))
    with pytest.raises(ValueError, match="pooled_activation_bias_backward.*y"):
        op(dpool, argmax, pooled, None, (2, 2), (2, 2))
    with pytest.raises(ValueError, match="pooled_activation_bias_backward.*gelu"):
        op(dpool, argmax, pooled, y, (2, 2), (2, 2), "valid", "gelu")
    moved = argmax.copy()
    moved[1, 2, 1, 2] = moved[1, 0, 1, 2]     # a pixel of the map, not of its window
    with pytest.raises(ValueError, match="1 argmax entries lie outside their pool window"):
        op(dpool, moved, pooled, y, (2, 2), (2, 2))


def test_pooled_activation_bias_backward_on_backend(backend):
    rng = np.random.default_rng(17)
    dpool, argmax, pooled, y = pooled_case(rng, (3, 10, 9, 6), (2, 2), (2, 2), "valid",
                                           "relu", np.float32)
    check_op(backend, "pooled_activation_bias_backward", dpool, argmax, pooled, y, (2, 2),
             (2, 2), "valid", "relu", 0.0, ref=pooled_activation_bias_backward_ref)
