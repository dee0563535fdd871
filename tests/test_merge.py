"""Merge ops (native/merge.pyx, opencl/merge.cl) and layers (pynn/layers/merge.py) against
the float64 oracle in tests/reference/merge_ref.py, finite differences of every layer (all
inputs), Keras 3 parity, thread counts, config round trips and bad inputs.

The ops take a list of arrays, which check_op's ``up`` does not upload: ``check_merge`` here
uploads each list item, then compares as check_op does (reference, and CPU on OpenCL).
"""

import json

import numpy as np
import pytest

from pynn._native import info
from pynn.backend.api import MERGE_MODES
from pynn.layers import (
    LAYERS,
    Add,
    Average,
    Concatenate,
    Dot,
    Maximum,
    Minimum,
    Multiply,
    Subtract,
    add,
    average,
    concatenate,
    dot,
    maximum,
    minimum,
    multiply,
    subtract,
)
from tests.backend_util import assert_close, assert_same, keras_on_torch, rand
from tests.reference import gradcheck
from tests.reference import merge_ref as ref

TOL = {np.float32: {"rtol": 2e-5, "atol": 2e-6}, np.float64: {"rtol": 1e-12, "atol": 1e-12}}


@pytest.fixture
def rng():
    return np.random.default_rng(2468)


def tol(target, kind="elementwise"):
    return target.rtol(kind) if target.is_opencl else TOL[target.dtype.type]


def _up(backend, a):
    if isinstance(a, list):
        return [backend.up(x) for x in a]
    return backend.up(a)


def _down(backend, result):
    if isinstance(result, tuple):
        return tuple(_down(backend, r) for r in result)
    if backend.is_opencl:
        assert hasattr(result, "get"), f"expected a device array, got {type(result).__name__}"
    return backend.down(result)


def check_merge(target, name, *args, ref_fn, rtol):
    """Op ``name`` on ``target`` (list arguments uploaded item by item) against ``ref_fn`` of
    the host arguments, and on OpenCL also against the CPU op. Returns the host result."""
    what = f"{name} on {target.name} {target.dtype.name}"
    got = _down(target, target.op(name)(*[_up(target, a) for a in args]))
    assert_same(f"{what} vs reference", got, ref_fn(*args), rtol, target.dtype)
    if target.is_opencl:
        from pynn.backend import cpu

        assert_same(f"{what} vs CPU", got, getattr(cpu, name)(*args), target.rtol())
    return got


# -- elementwise merges -----------------------------------------------------------------------

SHAPES = [(3, 7), (2, 5, 3), (1, 1), (4, 33, 5), (0, 3), (2, 4097)]  # 4097: past one CHUNK


# Subtract takes exactly 2 inputs (other counts are among the bad inputs).
MODE_COUNTS = [(mode, count) for mode in MERGE_MODES for count in (1, 2, 3, 5)
               if mode != "subtract" or count == 2]


@pytest.mark.parametrize("mode,count", MODE_COUNTS, ids=[f"{m}-{c}" for m, c in MODE_COUNTS])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_merge_matches_reference(target, rng, mode, count, shape):
    xs = [rand(rng, shape, target.dtype) for _ in range(count)]
    y = check_merge(target, "merge_forward", xs, mode, ref_fn=ref.merge_forward_ref,
                    rtol=tol(target))
    dy = rand(rng, y.shape, target.dtype)
    check_merge(target, "merge_backward", dy, xs, mode, ref_fn=ref.merge_backward_ref,
                rtol=tol(target))


MERGE_ACTIVATIONS = [("relu", 0.0), ("leaky_relu", 0.2), ("tanh", 0.0)]


@pytest.mark.parametrize("mode,count", [("add", 1), ("add", 2), ("add", 3), ("average", 3),
                                        ("maximum", 2)], ids=str)
@pytest.mark.parametrize("activation,alpha", MERGE_ACTIVATIONS,
                         ids=[a for a, _ in MERGE_ACTIVATIONS])
def test_merge_with_activation_matches_reference(target, rng, mode, count, activation, alpha):
    """merge_forward's activation: the fold, then the activation, in one pass (OpenCL on its
    last fold), against the float64 oracle and, on OpenCL, the CPU op; broadcast too."""
    for shapes in ([(3, 37, 5)] * count, [(3, 1, 5), (3, 37, 5)][:max(count, 2)]):
        xs = [rand(rng, sh, target.dtype) for sh in shapes]
        y = target.ops.merge_forward([target.up(x) for x in xs], mode, activation, alpha)
        want = ref.merge_forward_ref(xs, mode, activation, alpha)
        rtol = tol(target)
        assert_close(target.down(y), want, rtol["rtol"] if isinstance(rtol, dict) else rtol,
                     f"{mode} {activation}")
        if target.is_opencl:
            from pynn.backend import cpu

            np.testing.assert_allclose(target.down(y),
                                       cpu.merge_forward(xs, mode, activation, alpha),
                                       rtol=1e-5, atol=1e-6)


def test_merge_relu_equals_merge_then_relu(rng):
    """The fused op gives the bits of the merge then the relu op."""
    from pynn.backend import cpu

    xs = [rand(rng, (33, 7, 19), np.float32) for _ in range(2)]
    np.testing.assert_array_equal(cpu.merge_forward(xs, "add", "relu"),
                                  cpu.activation_forward(cpu.merge_forward(xs, "add"), "relu"))


def test_merge_activation_bad_operands(backend, rng):
    xs = [backend.up(rand(rng, (4, 6), np.float32)) for _ in range(2)]
    with pytest.raises(ValueError, match=r"merge_forward: activation 'softmax' cannot be fused"):
        backend.ops.merge_forward(xs, "add", "softmax")
    with pytest.raises(ValueError, match=r"merge_forward: unknown activation 'relu9'"):
        backend.ops.merge_forward(xs, "add", "relu9")


@pytest.mark.parametrize("mode", ["add", "multiply"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_same_shape_fast_path_equals_the_general_path(rng, mode, dtype):
    """Same-shaped C-contiguous arrays of one float dtype skip the broadcast checks
    (pynn/backend/operands/merge.py); a Fortran-ordered copy of the same values takes the
    general path: the same bits. Anything else still gets the full checks and conversions."""
    from pynn.backend import cpu

    xs = [rand(rng, (5, 7, 3), dtype) for _ in range(3)]
    fast = cpu.merge_forward(xs, mode, "relu")
    general = cpu.merge_forward([np.asfortranarray(x) for x in xs], mode, "relu")
    np.testing.assert_array_equal(fast, general)
    np.testing.assert_allclose(fast, np.maximum(ref.merge_forward_ref(xs, mode), 0),
                               rtol=1e-6 if dtype == np.float32 else 1e-12)
    # Mixed dtypes go the general way, which converts to the first input's dtype.
    mixed = cpu.merge_forward([xs[0].astype(np.float32), xs[1].astype(np.float64)], mode)
    assert mixed.dtype == np.float32
    np.testing.assert_array_equal(
        mixed, cpu.merge_forward([xs[0].astype(np.float32), xs[1].astype(np.float32)], mode))
    with pytest.raises(ValueError, match=r"merge_forward: .*\(5, 7, 3\), \(5, 6, 3\)"):
        cpu.merge_forward([xs[0], xs[1][:, :6].copy()], mode)
    with pytest.raises(ValueError, match="merge_forward: unknown mode"):
        cpu.merge_forward(xs, "and")


BROADCAST_CASES = [
    [(2, 5), (2, 3, 5)],            # a lower rank gains axes after the batch axis (Keras)
    [(2, 1, 5), (2, 3, 1), (2, 3, 5)],
    [(3, 4, 6), (3, 1, 1)],
    [(3, 1), (3, 33)],
    [(2, 0, 3), (2, 1, 3)],         # broadcast against an empty axis: a zero gradient
    [(4, 7, 1, 3), (4, 2, 3)],
]


@pytest.mark.parametrize("mode", MERGE_MODES)
@pytest.mark.parametrize("shapes", BROADCAST_CASES, ids=str)
def test_merge_broadcasts_as_keras(target, rng, mode, shapes):
    shapes = shapes[:2] if mode == "subtract" else shapes
    xs = [rand(rng, s, target.dtype) for s in shapes]
    y = check_merge(target, "merge_forward", xs, mode, ref_fn=ref.merge_forward_ref,
                    rtol=tol(target))
    dy = rand(rng, y.shape, target.dtype)
    grads = check_merge(target, "merge_backward", dy, xs, mode,
                        ref_fn=ref.merge_backward_ref, rtol=tol(target, "reduction"))
    assert [g.shape for g in grads] == [tuple(s) for s in shapes]


@pytest.mark.parametrize("mode", ["maximum", "minimum"])
def test_extreme_ties_split_the_gradient_as_torch(target, rng, mode):
    """Small integers make ties common, three-way ones too: each fold step halves a tie."""
    xs = [rng.integers(-2, 3, size=(5, 9)).astype(target.dtype) for _ in range(3)]
    xs[0][0, :3] = xs[1][0, :3] = xs[2][0, :3] = 1.0
    dy = np.ones((5, 9), target.dtype)
    grads = check_merge(target, "merge_backward", dy, xs, mode, ref_fn=ref.merge_backward_ref,
                        rtol=tol(target))
    # A three-way tie: 1/4, 1/4, 1/2 (the last step splits first, then the first two).
    np.testing.assert_array_equal([g[0, 0] for g in grads], [0.25, 0.25, 0.5])
    np.testing.assert_allclose(sum(grads), dy)


def test_extreme_ties_match_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    xs = [rng.integers(-1, 2, size=(4, 6)).astype(np.float64) for _ in range(3)]
    for mode, fn in (("maximum", torch.maximum), ("minimum", torch.minimum)):
        ts = [torch.tensor(x, requires_grad=True) for x in xs]
        out = fn(fn(ts[0], ts[1]), ts[2])
        dy = rng.standard_normal(out.shape)
        out.backward(torch.tensor(dy))
        from pynn.backend import cpu

        got = cpu.merge_backward(dy, xs, mode)
        for g, t in zip(got, ts):
            np.testing.assert_allclose(g, t.grad.numpy(), rtol=0, atol=1e-15, err_msg=mode)


def test_nan_propagates_and_passes_the_gradient_to_both(target):
    x0 = np.array([[1.0, np.nan, 2.0]], target.dtype)
    x1 = np.array([[np.nan, 3.0, 1.0]], target.dtype)
    check_merge(target, "merge_forward", [x0, x1], "maximum", ref_fn=ref.merge_forward_ref,
                rtol=tol(target))
    check_merge(target, "merge_backward", np.ones_like(x0), [x0, x1], "maximum",
                ref_fn=ref.merge_backward_ref, rtol=tol(target))


# -- concatenate --------------------------------------------------------------------------

CONCAT_CASES = [  # (shapes, axis)
    ([(3, 4), (3, 5)], -1),
    ([(2, 3, 4), (2, 1, 4), (2, 7, 4)], 1),
    ([(2, 3, 4), (2, 3, 1), (2, 3, 9)], 2),
    ([(2, 3), (5, 3)], 0),
    ([(2, 5, 3), (2, 5, 0), (2, 5, 2)], -1),  # an empty piece
    ([(7, 33)], 1),
    ([(3, 2, 65, 3), (3, 2, 31, 3)], 2),
]


@pytest.mark.parametrize("case", CONCAT_CASES, ids=str)
def test_concatenate_matches_reference(target, rng, case):
    shapes, axis = case
    xs = [rand(rng, s, target.dtype) for s in shapes]
    y = check_merge(target, "concatenate_forward", xs, axis,
                    ref_fn=ref.concatenate_forward_ref, rtol=tol(target))
    dy = rand(rng, y.shape, target.dtype)
    sizes = [s[axis] for s in shapes]
    check_merge(target, "concatenate_backward", dy, sizes, axis,
                ref_fn=ref.concatenate_backward_ref, rtol=tol(target))


# -- dot ----------------------------------------------------------------------------------

DOT_CASES = [  # (shape1, shape2, axes)
    ((4, 5), (4, 5), 1),
    ((4, 5), (4, 5), -1),
    ((3, 4, 5), (3, 6, 5), (2, 2)),
    ((3, 4, 5), (3, 5, 6), (2, 1)),
    ((2, 5, 4), (2, 5, 3), 1),
    ((2, 7), (2, 3, 7), (1, 2)),
    ((2, 3, 7), (2, 7), (2, 1)),
    ((2, 3, 4, 5), (2, 4, 3), (2, 1)),  # summed axis in the middle of x1
    ((1, 1), (1, 1), 1),
    ((3, 33, 2), (3, 2, 31), (2, 1)),
]


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("case", DOT_CASES, ids=str)
def test_dot_matches_reference(target, rng, case, normalize):
    shape1, shape2, axes = case
    x1, x2 = rand(rng, shape1, target.dtype), rand(rng, shape2, target.dtype)
    y = check_merge(target, "dot_forward", x1, x2, axes, normalize,
                    ref_fn=ref.dot_forward_ref, rtol=tol(target, "reduction"))
    dy = rand(rng, y.shape, target.dtype)
    # The reference backward is central differences: float64 exact to ~1e-8.
    rtol = (tol(target, "reduction") if target.dtype == np.float32
            else {"rtol": 1e-6, "atol": 1e-7})
    check_merge(target, "dot_backward", dy, x1, x2, axes, normalize,
                ref_fn=ref.dot_backward_ref, rtol=rtol)


def test_dot_backward_of_large_case_matches_einsum(target, rng):
    """The large DOT_CASES skip the finite-difference oracle; here einsum checks them."""
    x1 = rand(rng, (3, 33, 2), target.dtype)
    x2 = rand(rng, (3, 2, 31), target.dtype)
    dy = rand(rng, (3, 33, 31), target.dtype)
    want = (np.einsum("nij,nkj->nik", dy.astype(np.float64), x2),
            np.einsum("nij,nik->nkj", dy.astype(np.float64), x1))
    check_merge(target, "dot_backward", dy, x1, x2, (2, 1), False,
                ref_fn=lambda *_: want, rtol=tol(target, "reduction"))


def test_dot_normalize_caps_a_zero_vector_as_keras(target):
    """keras.ops.normalize: x * min(rsqrt(sum x^2), 1/eps): a zero row stays zero, and its
    gradient is d/dxhat scaled by 1/eps."""
    x1 = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]], target.dtype)
    x2 = np.array([[1.0, -1.0, 0.5], [2.0, 0.0, 1.0]], target.dtype)
    y = check_merge(target, "dot_forward", x1, x2, 1, True, ref_fn=ref.dot_forward_ref,
                    rtol=tol(target, "reduction"))
    assert y[0, 0] == 0
    dy = np.array([[1e-7], [1.0]], target.dtype)
    # Differences straddle the kink at 0, so the zero row's gradient is written out: the
    # capped scale 1/eps times d/dxhat (torch would give NaN there: rsqrt's inf times 0).
    dx1, dx2 = ref.dot_backward_ref(dy, x1, x2, 1, True)
    dx1[0] = dy[0, 0] * ref.normalize_ref(x2.astype(np.float64), 1)[0] / ref.EPSILON
    check_merge(target, "dot_backward", dy, x1, x2, 1, True, ref_fn=lambda *_: (dx1, dx2),
                rtol={"rtol": 1e-4, "atol": 1e-5})


# -- thread counts ------------------------------------------------------------------------

@pytest.fixture
def restore_threads():
    n = info.get_max_threads()
    yield
    info.set_num_threads(n)


def test_thread_count_does_not_change_results(rng, restore_threads):
    from pynn.backend import cpu

    xs = [rand(rng, (64, 1031)) for _ in range(3)]
    a, b = rand(rng, (16, 40, 24)), rand(rng, (16, 24, 36))
    dy = rand(rng, (16, 40, 36))
    spread = [rand(rng, (64, 1, 1031)), rand(rng, (64, 9, 1))]
    dspread = rand(rng, (64, 9, 1031))
    results = []
    for n in (1, 2, 3):
        info.set_num_threads(n)
        results.append([cpu.merge_forward(xs, "maximum"),
                        *cpu.merge_backward(xs[0], xs, "multiply"),
                        *cpu.merge_backward(xs[0], xs, "minimum"),
                        cpu.merge_forward(spread, "add"),
                        *cpu.merge_backward(dspread, spread, "multiply"),
                        cpu.concatenate_forward(xs, 1),
                        cpu.dot_forward(a, b, (2, 1), True),
                        *cpu.dot_backward(dy, a, b, (2, 1), True)])
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            np.testing.assert_array_equal(got, want)


# -- layers: finite differences over every input ------------------------------------------

def check_merge_layer(layer, xs, rng, rtol=1e-6, atol=1e-8):
    """Central differences of sum(layer(xs) * r) for every element of every input."""
    xs = [np.array(x, dtype=np.float64) for x in xs]
    y = np.asarray(layer(xs, training=True))
    r = rng.standard_normal(y.shape)
    grads = layer.backward(r.copy())
    assert isinstance(grads, list) and len(grads) == len(xs)
    for k, (x, g) in enumerate(zip(xs, grads)):
        def loss():
            return float(np.sum(np.asarray(layer(xs)) * r))

        gradcheck.assert_close(f"{layer.name} d/dx{k}", g, gradcheck.numerical_grad(loss, x),
                               rtol, atol)
    return y


LAYER_CASES = [
    (Add, {}, [(3, 4, 5)] * 3),
    (Subtract, {}, [(3, 7)] * 2),
    (Multiply, {}, [(2, 3, 5)] * 4),
    (Average, {}, [(3, 6)] * 3),
    (Maximum, {}, [(3, 2, 5)] * 3),
    (Minimum, {}, [(3, 7)] * 2),
    (Add, {}, [(3, 5), (3, 2, 5)]),  # broadcast: Keras expands the lower rank
    (Multiply, {}, [(2, 1, 4), (2, 3, 1), (2, 3, 4)]),
    (Maximum, {}, [(3, 4, 1), (3, 4, 3)]),
    (Subtract, {}, [(3, 1, 2), (3, 4, 2)]),
    (Add, {}, [(3, 4)]),  # Keras 3 takes a single input too (its Merge.build: >= 1)
    (Concatenate, {}, [(2, 3, 4), (2, 3, 2), (2, 3, 5)]),
    (Concatenate, {"axis": 1}, [(2, 3, 4), (2, 1, 4)]),
    (Dot, {"axes": 1}, [(3, 5), (3, 5)]),
    (Dot, {"axes": (2, 1)}, [(2, 3, 4), (2, 4, 5)]),
    (Dot, {"axes": (1, 1), "normalize": True}, [(2, 4, 3), (2, 4, 2)]),
    (Dot, {"axes": -1, "normalize": True}, [(3, 6), (3, 6)]),
]
LAYER_IDS = [f"{cls.__name__}-{kw}" for cls, kw, _ in LAYER_CASES]


@pytest.mark.parametrize("case", LAYER_CASES, ids=LAYER_IDS)
def test_layer_gradients(float64, seeded, case):
    cls, kwargs, shapes = case
    xs = [seeded.standard_normal(s) for s in shapes]
    check_merge_layer(cls(**kwargs), xs, seeded)


@pytest.mark.parametrize("case", LAYER_CASES, ids=LAYER_IDS)
def test_layer_without_input_grad_returns_nones(seeded, case):
    cls, kwargs, shapes = case
    layer = cls(**kwargs)
    xs = [rand(seeded, s) for s in shapes]
    y = layer(xs, training=True)
    layer.needs_input_grad = False
    assert layer.backward(np.ones_like(y)) == [None] * len(xs)


@pytest.mark.parametrize("case", LAYER_CASES, ids=LAYER_IDS)
def test_layer_config_round_trips(case):
    cls, kwargs, shapes = case
    layer = cls(name="merged", **kwargs)
    config = json.loads(json.dumps(layer.get_config()))
    again = LAYERS[cls.__name__].from_config(config)
    assert type(again) is cls and again.get_config() == config
    assert again.compute_output_shape([(None,) + s[1:] for s in shapes]) == \
        layer.compute_output_shape([(None,) + s[1:] for s in shapes])


HELPERS = [(add, Add, {}), (subtract, Subtract, {}), (multiply, Multiply, {}),
           (average, Average, {}), (maximum, Maximum, {}), (minimum, Minimum, {}),
           (concatenate, Concatenate, {"axis": 1}), (dot, Dot, {"axes": 1})]


@pytest.mark.parametrize("helper,cls,kwargs", HELPERS, ids=[h.__name__ for h, _, _ in HELPERS])
def test_functional_helpers_equal_their_layers(rng, helper, cls, kwargs):
    xs = [rand(rng, (3, 5)) for _ in range(2)]
    np.testing.assert_array_equal(helper(xs, **kwargs), cls(**kwargs)(xs))


def test_dot_helper_defaults_to_the_last_axis(rng):
    xs = [rand(rng, (3, 5)), rand(rng, (3, 5))]
    np.testing.assert_allclose(dot(xs), np.sum(xs[0] * xs[1], axis=1, keepdims=True),
                               rtol=1e-6)


@pytest.mark.opencl
def test_layers_run_on_opencl(rng):
    """Every layer's forward and backward on the OpenCL backend equals the CPU's."""
    from pynn import backend
    from tests.backend_util import make_backend

    ocl = make_backend("opencl")
    previous = backend.device()
    try:
        for cls, kwargs, shapes in LAYER_CASES:
            xs = [rand(rng, s) for s in shapes]
            backend.set_device("cpu")
            cpu_layer = cls(**kwargs)
            y_cpu = cpu_layer(xs, training=True)
            g_cpu = cpu_layer.backward(np.ones_like(y_cpu))
            backend.set_device("opencl")
            layer = cls(**kwargs)
            y = layer([ocl.up(x) for x in xs], training=True)
            grads = layer.backward(ocl.up(np.ones_like(y_cpu)))
            what = f"{cls.__name__}{kwargs} on OpenCL"
            np.testing.assert_allclose(ocl.down(y), y_cpu, rtol=1e-5, atol=1e-5, err_msg=what)
            for g, want in zip(grads, g_cpu):
                np.testing.assert_allclose(ocl.down(g), want, rtol=1e-5, atol=1e-5,
                                           err_msg=what)
    finally:
        backend.set_device(previous)


# -- Keras 3 parity -------------------------------------------------------------------------

_keras = keras_on_torch


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("case", LAYER_CASES, ids=LAYER_IDS)
def test_layer_matches_keras(rng, case):
    keras = _keras()
    cls, kwargs, shapes = case
    xs = [rand(rng, s) for s in shapes]
    want = keras.ops.convert_to_numpy(getattr(keras.layers, cls.__name__)(**kwargs)(xs))
    got = cls(**kwargs)(xs)
    assert got.shape == want.shape, f"{cls.__name__}: shape {got.shape}, Keras {want.shape}"
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=cls.__name__)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("cls", [Maximum, Minimum])
def test_extreme_layer_gradients_match_keras_on_ties(cls):
    keras = _keras()
    import torch

    rng = np.random.default_rng(11)
    xs = [rng.integers(-1, 2, size=(4, 5)).astype(np.float32) for _ in range(3)]
    ts = [torch.tensor(x, requires_grad=True) for x in xs]
    out = getattr(keras.layers, cls.__name__)()(ts)
    out.backward(torch.ones_like(out))
    layer = cls()
    y = layer(xs, training=True)
    for g, t in zip(layer.backward(np.ones_like(y)), ts):
        np.testing.assert_array_equal(g, t.grad.numpy())


# -- bad inputs -----------------------------------------------------------------------------

def test_layers_name_themselves_and_every_shape_on_mismatch():
    with pytest.raises(ValueError, match=r"Add 'plus'.*\(None, 3\), \(None, 4\)"):
        Add(name="plus").build([(None, 3), (None, 4)])
    with pytest.raises(ValueError, match=r"Multiply 'times'.*incompatible shapes "
                                         r"\[\(None, 2, 3\), \(None, 4, 3\)\]"):
        Multiply(name="times").build([(None, 2, 3), (None, 4, 3)])
    assert Multiply().compute_output_shape([(None, 1, 3), (None, 3), (None, 2, 1)]) == \
        (None, 2, 3)
    with pytest.raises(ValueError, match=r"Subtract 'minus': expected exactly 2 inputs, got 3"):
        Subtract(name="minus").build([(None, 3)] * 3)
    with pytest.raises(ValueError, match=r"Concatenate 'cat'.*every axis but.*"
                                         r"\(None, 3, 4\), \(None, 2, 5\)"):
        Concatenate(name="cat").build([(None, 3, 4), (None, 2, 5)])
    with pytest.raises(ValueError, match=r"Dot 'd'.*differ in size: 4 \(axis 1\) and 5"):
        Dot(1, name="d").build([(None, 4), (None, 5)])
    with pytest.raises(ValueError, match=r"Dot 'd2'.*batch axis"):
        Dot(0, name="d2").build([(None, 4), (None, 4)])
    with pytest.raises(ValueError, match=r"Maximum 'mx'.*list of inputs"):
        Maximum(name="mx")(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"Average 'avg'.*batch sizes differ"):
        Average(name="avg").build([(2, 3), (4, 3)])


def test_layer_checks_each_call_against_its_build(rng):
    layer = Add(name="sum")
    layer([rand(rng, (2, 3)), rand(rng, (2, 3))])
    with pytest.raises(ValueError, match=r"Add 'sum'.*built for 2 inputs, called on 3"):
        layer([rand(rng, (2, 3))] * 3)
    with pytest.raises(ValueError, match=r"'sum'.*input 1 expected shape \(None, 3\), got "
                                         r"\(None, 4\)"):
        layer([rand(rng, (2, 3)), rand(rng, (2, 4))])


def test_layer_constructor_arguments():
    with pytest.raises(TypeError, match=r"Dot '.*': axes must be an int or a list"):
        Dot("last")
    with pytest.raises(ValueError, match=r"Dot '.*': axes must be an int or a list of 2"):
        Dot((1, 2, 3))
    with pytest.raises(TypeError, match=r"Concatenate '.*': axis must be an int"):
        Concatenate(axis=1.5)
    with pytest.raises(TypeError, match=r"unexpected arguments \['units'\]"):
        Add(units=3)


def test_ops_reject_bad_operands(backend, rng):
    x = backend.up(rand(rng, (2, 3)))
    x4 = backend.up(rand(rng, (2, 4)))
    ops = backend.ops
    with pytest.raises(ValueError, match=r"merge_forward: .*do not broadcast.*\(2, 3\), "
                                         r"\(2, 4\)"):
        ops.merge_forward([x, x4], "add")
    with pytest.raises(ValueError, match=r"merge_forward: .*one batch size.*\(2, 3\), "
                                         r"\(3, 3\)"):
        ops.merge_forward([x, backend.up(rand(rng, (3, 3)))], "maximum")
    with pytest.raises(ValueError, match=r"merge_forward: expected exactly 2 inputs, got 3"):
        ops.merge_forward([x, x, x], "subtract")
    with pytest.raises(ValueError, match=r"merge_forward: unknown mode 'mean'"):
        ops.merge_forward([x, x], "mean")
    with pytest.raises(TypeError, match=r"merge_forward: 'inputs' must be a list"):
        ops.merge_forward(x, "add")
    with pytest.raises(ValueError, match=r"merge_forward: expected at least 1"):
        ops.merge_forward([], "add")
    with pytest.raises(ValueError, match=r"merge_backward: 'dy' must have shape \(2, 3\)"):
        ops.merge_backward(x4, [x, x], "add")
    with pytest.raises(ValueError, match=r"concatenate_forward: .*every axis but axis 1"):
        ops.concatenate_forward([x, backend.up(rand(rng, (3, 3)))], -1)
    with pytest.raises(ValueError, match=r"concatenate_forward: axis 2 is out of range"):
        ops.concatenate_forward([x, x], 2)
    with pytest.raises(ValueError, match=r"concatenate_backward: 'sizes' \[1, 1\] add up to 2"):
        ops.concatenate_backward(x, [1, 1], 1)
    with pytest.raises(ValueError, match=r"dot_forward: .*differ in size: 3 .* and 4"):
        ops.dot_forward(x, x4, 1, False)
    with pytest.raises(ValueError, match=r"dot_forward: axes 0 name the batch axis"):
        ops.dot_forward(x, x, 0, False)
    with pytest.raises(ValueError, match=r"dot_forward: both inputs need rank >= 2"):
        ops.dot_forward(backend.up(rand(rng, (3,))), x, 0, False)
    with pytest.raises(ValueError, match=r"dot_backward: 'dy' must have shape \(2, 1\)"):
        ops.dot_backward(x, x, x, 1, False)


@pytest.mark.opencl
def test_opencl_ops_refuse_host_arrays(rng):
    from tests.backend_util import make_backend

    ocl = make_backend("opencl")
    x = rand(rng, (2, 3))
    with pytest.raises(TypeError, match=r"merge_forward: 'inputs\[1\]' must be a "
                                        r"pyopencl.array.Array.*asarray"):
        ocl.ops.merge_forward([ocl.up(x), x], "add")
    with pytest.raises(TypeError, match=r"dot_forward: 'x2' must be a pyopencl"):
        ocl.ops.dot_forward(ocl.up(x), x, 1, False)


def test_large_inputs_take_the_threaded_path(num_threads):
    """Above the merge kernels' 1 Mi-element threshold the fold runs on the OpenMP team."""
    from pynn.backend import cpu

    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((3, 450_001)).astype(np.float32) for _ in range(3)]
    dy = rng.standard_normal(xs[0].shape).astype(np.float32)
    out = []
    for threads in (1, 2):
        num_threads(threads)
        out.append((cpu.merge_forward(xs, "maximum"), cpu.merge_backward(dy, xs, "maximum")))
    np.testing.assert_array_equal(out[0][0], out[1][0])
    for a, b in zip(out[0][1], out[1][1]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(out[1][0], np.maximum(np.maximum(xs[0], xs[1]), xs[2]))


# -- resnet branch: Add hands dy on uncopied ---------------------------------------------------

def test_add_hands_dy_on_and_the_graph_never_writes_into_it(float64, seeded):
    """Add's input gradients are dy itself (no copy per input); the executor must then sum a
    shortcut's gradients into a fresh array, leaving the dy it was given as it was."""
    import pynn

    layer = Add()
    xs = [seeded.standard_normal((3, 4)) for _ in range(2)]
    layer(xs, training=True)
    dy = seeded.standard_normal((3, 4))
    assert all(g is dy for g in layer.backward(dy))

    inp = pynn.Input((4,))
    h = pynn.layers.Dense(4, name="h")(inp)
    # h reaches the output twice through the Add and once through a Dense: its gradient is
    # dy + dy + (dy @ kernel^T), summed by the executor.
    out = Add()([h, h, pynn.layers.Dense(4, name="g")(h)])
    model = pynn.Model(inp, out)
    x = seeded.standard_normal((5, 4))
    outs, saved = model._plan.forward([x], True)
    dy = seeded.standard_normal(outs[0].shape)
    before = dy.copy()
    model._plan.backward([dy], saved)
    g = model.get_layer("g").kernel.value
    np.testing.assert_allclose(model.get_layer("h").kernel.grad, x.T @ (2 * dy + dy @ g.T),
                               rtol=1e-10)
    np.testing.assert_array_equal(dy, before)
