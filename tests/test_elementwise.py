"""The elementwise family (native/elementwise.pyx, opencl/elementwise.cl) against the float64
oracles of tests/reference/elementwise_ref.py over both backends (OpenCL also against the
CPU), and pynn.ops running on OpenCL through it with gradients matching the CPU's."""

import numpy as np
import pytest

import pynn
from pynn import ops
from pynn.backend.api import ELEMENTWISE_BINARY, ELEMENTWISE_UNARY, REDUCTIONS
from tests.backend_util import check_op, rand
from tests.reference import elementwise_ref as ref

DOMAIN = {"log": "positive", "log1p": "positive", "sqrt": "positive",
          "reciprocal": "positive", "arcsin": "unit", "arccos": "unit", "arctanh": "unit",
          "arccosh": "above_one", "power": "positive",
          "erfinv": "unit"}


def _input(rng, shape, dtype, op):
    x = rand(rng, shape, np.float64)
    kind = DOMAIN.get(op)
    if kind == "positive":
        x = np.abs(x) + 0.5
    elif kind == "unit":
        x = np.tanh(x) * 0.9
    elif kind == "above_one":
        x = np.abs(x) + 1.5
    if op in ("round", "floor", "ceil"):
        x = x * 3 + 0.1  # away from .5 ties
    return np.asarray(x, dtype=dtype)  # 0-d stays an array (np.abs gives a scalar)


def _tol(target):
    return target.rtol() if target.is_opencl else (2e-6 if target.dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("op", ELEMENTWISE_UNARY)
@pytest.mark.parametrize("shape", [(7,), (3, 33), (2, 0, 5)])
def test_elementwise_unary(target, op, shape):
    x = _input(np.random.default_rng(1), shape, target.dtype, op)
    check_op(target, "elementwise_unary", x, op, ref=ref.elementwise_unary_ref,
             rtol={"rtol": _tol(target), "atol": _tol(target)})


@pytest.mark.parametrize("op", ELEMENTWISE_BINARY)
@pytest.mark.parametrize("shapes", [((5, 7), (5, 7)), ((2, 3, 1, 5), (4, 1)), ((31,), ()),
                                    ((1, 6), (65, 1))])
def test_elementwise_binary_broadcasts(target, op, shapes):
    rng = np.random.default_rng(2)
    a, b = (_input(rng, s, target.dtype, op) for s in shapes)
    check_op(target, "elementwise_binary", a, b, op, ref=ref.elementwise_binary_ref,
             rtol={"rtol": _tol(target), "atol": _tol(target)})


@pytest.mark.parametrize("op", REDUCTIONS)
@pytest.mark.parametrize("axes,keepdims", [(None, False), (1, True), ((0, 2), False),
                                           ((-1,), False)])
def test_reduce_axes(target, op, axes, keepdims):
    x = _input(np.random.default_rng(3), (3, 7, 5), target.dtype, op)
    if op == "prod":
        x = (x * 0.3 + 1).astype(target.dtype)
    check_op(target, "reduce_axes", x, axes, op, keepdims, ref=ref.reduce_axes_ref,
             rtol={"rtol": 10 * _tol(target), "atol": 10 * _tol(target)})


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_operands_give_the_same_bits_at_any_thread_count(dtype):
    """Above the serial threshold the kernels run on pynn's worker team: every element, row
    and reduced output is computed alone, so 1, 2 and 3 threads give the same bits, and the
    float64 references agree."""
    from pynn._native import elementwise, info

    rng = np.random.default_rng(4)
    x = _input(rng, (3, 40001), dtype, "exp") * 0.1
    a, b = _input(rng, (7, 1, 9001), dtype, "add"), _input(rng, (5, 9001), dtype, "add")
    runs = []
    before = info.get_max_threads()
    try:
        for n in (1, 2, 3):
            info.set_num_threads(n)
            runs.append((elementwise.elementwise_unary(x, "exp"),
                         elementwise.elementwise_binary(a, b, "maximum"),
                         elementwise.reduce_axes(x, (1,), "sum"),
                         elementwise.reduce_axes(a[:, 0], None, "max")))
    finally:
        info.set_num_threads(before)
    for other in runs[1:]:
        for want, got in zip(runs[0], other):
            np.testing.assert_array_equal(got, want)
    tol = 2e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(runs[0][0], ref.elementwise_unary_ref(x, "exp"), rtol=tol)
    np.testing.assert_allclose(runs[0][1], ref.elementwise_binary_ref(a, b, "maximum"),
                               rtol=tol)
    np.testing.assert_allclose(runs[0][2], ref.reduce_axes_ref(x, (1,), "sum", False),
                               rtol=10 * tol)
    np.testing.assert_allclose(runs[0][3], ref.reduce_axes_ref(a[:, 0], None, "max", False),
                               rtol=tol)


def test_bad_operands_name_the_op():
    from pynn.backend import cpu

    with pytest.raises(ValueError, match=r"elementwise_binary: shapes \(2, 3\) and \(4,\) do "
                                         r"not broadcast"):
        cpu.elementwise_binary(np.ones((2, 3)), np.ones(4), "add")
    with pytest.raises(ValueError, match="elementwise_unary: unknown unary op 'cube'"):
        cpu.elementwise_unary(np.ones(2), "cube")
    with pytest.raises(ValueError, match=r"reduce_axes: axes \(3,\) out of range"):
        cpu.reduce_axes(np.ones((2, 3)), 3, "sum", False)
    with pytest.raises(ValueError, match="at most 6 dimensions"):
        cpu.elementwise_binary(np.ones((1,) * 7), np.ones(1), "add")


def _tape_grads(fn, xs):
    ts = [ops.convert_to_tensor(x) for x in xs]
    with pynn.GradientTape() as tape:
        for t in ts:
            tape.watch(t)
        y = fn(*ts)
        loss = ops.sum(y * ops.convert_to_tensor(np.linspace(-1, 1, np.prod(y.shape))
                                                 .reshape(y.shape).astype(np.float32)))
    return y.numpy(), [g.numpy() for g in tape.gradient(loss, ts)]


OPENCL_CASES = {
    "arithmetic": (lambda a, b: (a * b - a / (ops.abs(b) + 1.0)) ** 2 + ops.maximum(a, b),
                   [(4, 5), (5,)]),
    "math": (lambda a: ops.exp(ops.tanh(a)) + ops.sqrt(ops.square(a) + 1.0)
             - ops.log1p(ops.abs(a)) * ops.sin(a), [(3, 7)]),
    "reductions": (lambda a: ops.sum(a, axis=1, keepdims=True) * ops.mean(a, axis=0)
                   + ops.max(a, axis=-1, keepdims=True) - ops.min(a), [(4, 6)]),
    "custom_dense": (lambda x, k, b: ops.relu(ops.matmul(x, k) + b), [(5, 4), (4, 3), (3,)]),
    "shapes": (lambda a, b: ops.concatenate([ops.transpose(a, (1, 0)), ops.clip(b, -0.5, 0.5)],
                                            axis=0) * 2.0, [(3, 4), (2, 3)]),
    "log_softmax": (lambda a: ops.log_softmax(a) + ops.logsumexp(a, axis=0), [(3, 5)]),
    "normalization": (lambda a: ops.batch_normalization(a, *ops.moments(a, axes=(0,)),
                                                        axis=-1), [(6, 4)]),
}


@pytest.mark.opencl
@pytest.mark.parametrize("case", sorted(OPENCL_CASES))
def test_ops_and_gradients_on_opencl_match_cpu(case, backend_opencl):
    fn, shapes = OPENCL_CASES[case]
    rng = np.random.default_rng(4)
    xs = [rand(rng, s, np.float32) for s in shapes]
    want_y, want_g = _tape_grads(fn, xs)
    previous = pynn.get_device()
    pynn.set_device("opencl")
    try:
        b = pynn.backend.current()
        got_y, got_g = _tape_grads(fn, [b.asarray(x, np.float32) for x in xs])
    finally:
        pynn.set_device(previous)
    np.testing.assert_allclose(got_y, want_y, rtol=1e-4, atol=1e-5)
    for k, (g, w) in enumerate(zip(got_g, want_g)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=f"d/dx{k}")


# -- opsk: erfinv's edges and tails, on both backends --------------------------------------
def test_erfinv_edges_and_tails(target):
    x = np.array([-1.0, 1.0, 1.5, -2.0, np.nan, 0.0, 1 - 1e-6, -(1 - 1e-6), 0.999, -0.5,
                  1e-30, 0.97], target.dtype)
    got = target.down(target.op("elementwise_unary")(target.up(x), "erfinv"))
    want = ref.elementwise_unary_ref(x, "erfinv")
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=10 * _tol(target), atol=0)


# -- opsm: the integer family, int32 on both backends and int64 on the CPU -----------------
from pynn.backend.api import INTEGER_BINARY  # noqa: E402

def _integer_operands(rng, dtype, shapes):
    """Random integers of both signs with the edges a kernel can get wrong: 0, the dtype's
    minimum, shift counts past the width and negative."""
    info = np.iinfo(dtype)
    a = rng.integers(-1000, 1000, shapes[0]).astype(dtype)
    b = rng.integers(-3, 2 * info.bits, shapes[1]).astype(dtype)
    a.flat[:3] = [0, info.min, -7][:a.size]
    b.flat[:3] = [0, 5, info.bits][:b.size]
    return a, b


@pytest.mark.parametrize("op", INTEGER_BINARY)
@pytest.mark.parametrize("shapes", [((5, 7), (5, 7)), ((2, 3, 1, 5), (4, 1)), ((31,), ())])
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_integer_binary_matches_numpy(backend, op, shapes, dtype):
    if backend.is_opencl and dtype == np.int64:
        pytest.skip("the device's integers are int32")
    rng = np.random.default_rng(abs(hash((op, shapes))) % 2**32)
    a, b = _integer_operands(rng, dtype, shapes)
    got = backend.down(backend.op("integer_binary")(backend.up(a), backend.up(b), op))
    want = ref.integer_binary_ref(a, b, op)
    assert got.dtype == want.dtype, f"integer_binary {op}: dtype {got.dtype} != {want.dtype}"
    np.testing.assert_array_equal(got, want, err_msg=f"integer_binary {op}")


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_integer_unary_invert_matches_numpy(backend, dtype):
    if backend.is_opencl and dtype == np.int64:
        pytest.skip("the device's integers are int32")
    a, _ = _integer_operands(np.random.default_rng(3), dtype, [(3, 33), ()])
    got = backend.down(backend.op("integer_unary")(backend.up(a), "invert"))
    np.testing.assert_array_equal(got, ref.integer_unary_ref(a, "invert"))


def test_integer_ops_refuse_floats_mixed_dtypes_and_unknown_ops(backend):
    ints = backend.up(np.arange(4, dtype=np.int32))
    floats = backend.up(np.arange(4, dtype=np.float32))
    with pytest.raises(TypeError, match="integer_binary: 'a' must be int32 or int64, got dtype "
                                        "float32"):
        backend.op("integer_binary")(floats, ints, "gcd")
    with pytest.raises(ValueError, match="integer_binary: unknown integer op 'nand'"):
        backend.op("integer_binary")(ints, ints, "nand")
    with pytest.raises(ValueError, match="integer_unary: unknown integer op 'negate'"):
        backend.op("integer_unary")(ints, "negate")
    if not backend.is_opencl:
        with pytest.raises(TypeError, match="'b' must have a's dtype int32, got int64"):
            backend.op("integer_binary")(ints, np.arange(4), "bitwise_or")


# -- opsm: i0 and i1 across their series' switch-overs (30 on OpenCL, 50 on the CPU) --------
@pytest.mark.parametrize("op", ["i0", "i1"])
def test_bessel_i_across_both_series(target, op):
    x = np.array([0.0, -0.0, 1e-20, 0.3, -2.5, 7.0, -15.5, 29.9, 30.1, -49.9, 50.1, 64.0,
                  80.0, -85.0, np.nan], target.dtype)
    got = target.down(target.op("elementwise_unary")(target.up(x), op))
    want = ref.elementwise_unary_ref(x, op)
    assert np.array_equal(np.isnan(got), np.isnan(want)), op
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=10 * _tol(target), atol=0,
                               err_msg=op)
