"""pynn.ops on OpenCL for the ops of opencl/tensor.cl (indexing, where, cast, one_hot,
argmax/argmin, prod, var/std, einsum/tensordot/batched matmul, host boolean masks) and the
last elementwise ones (log2/log10, floor_divide/mod, logical ops, any/all, max/min with
initial=): forward values and tape gradients against the same ops on the CPU (NumPy,
float32), on odd shapes. Their float64 finite-difference checks on the CPU are in
tests/test_ops.py.
"""

import contextlib

import numpy as np
import pytest

import pynn
from pynn import ops

pytestmark = pytest.mark.opencl


@contextlib.contextmanager
def _on(device):
    previous = pynn.get_device()
    pynn.set_device(device)
    try:
        yield pynn.backend.current()
    finally:
        pynn.set_device(previous)


def _run(fn, xs):
    """(value, gradients of sum(fn(*xs) * r)) on the current backend, for the float xs."""
    b = pynn.backend.current()
    tensors = [ops.convert_to_tensor(b.asarray(x, np.float32)) if isinstance(x, np.ndarray)
               and x.dtype.kind == "f" else x for x in xs]
    with pynn.GradientTape() as tape:
        for t in tensors:
            if isinstance(t, pynn.Tensor):
                tape.watch(t)
        y = fn(*tensors)
        out = y.numpy()
        r = np.random.default_rng(3).standard_normal(out.shape).astype(np.float32)
        loss = ops.sum(ops.multiply(y, b.asarray(r, np.float32) if r.ndim else float(r)))
    sources = [t for t in tensors if isinstance(t, pynn.Tensor)]
    grads = tape.gradient(loss, sources) if sources and out.dtype.kind == "f" else []
    return out, [None if g is None else g.numpy() for g in grads]


def check_device(name, fn, *xs, grad=True, rtol=1e-4):
    with _on("cpu"):
        want, want_g = _run(fn, xs) if grad else (np.asarray(fn(*xs).numpy()), [])
    with _on("opencl"):
        got, got_g = _run(fn, xs) if grad else (np.asarray(fn(*xs).numpy()), [])
    assert got.shape == want.shape, f"{name}: shape {got.shape} != CPU's {want.shape}"
    assert got.dtype.kind == want.dtype.kind, f"{name}: dtype {got.dtype} != CPU's {want.dtype}"
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale, err_msg=f"{name} value")
    for i, (g, w) in enumerate(zip(got_g, want_g)):
        assert (g is None) == (w is None), f"{name}: gradient {i} present on one backend only"
        if w is not None:
            s = max(1.0, float(np.max(np.abs(w))))
            np.testing.assert_allclose(g, w, rtol=0, atol=rtol * s,
                                       err_msg=f"{name} d/dx{i}")


@pytest.fixture
def rng():
    return np.random.default_rng(2026)


def _x(rng, *shape):
    a = rng.standard_normal(shape).astype(np.float32)
    a.flat[0] = 0.75
    return a


@pytest.mark.parametrize("key", [
    (slice(1, 4), 2), (Ellipsis, slice(None, None, -2)), (None, 0, slice(2, None)),
    (slice(None), np.array([2, 0, 2, 4])), (1, np.array([[0, 3], [3, 1]])),
    (np.array([4, 0, 4]),), (-1, slice(None), slice(1, 5, 3)),
])
def test_getitem(rng, key):
    check_device(f"getitem {key}", lambda x: ops.getitem(x, key), _x(rng, 5, 5, 7))


def test_take_and_take_along_axis(rng):
    x = _x(rng, 3, 5, 7)
    idx = np.array([[4, 0], [4, 2], [1, 1]])
    check_device("take axis 1", lambda x: ops.take(x, idx, axis=1), x)
    check_device("take flat", lambda x: ops.take(x, np.array([0, 104, 3, 3])), x)
    along = rng.integers(0, 5, (3, 2, 7))
    check_device("take_along_axis", lambda x: ops.take_along_axis(x, along, axis=1), x)
    last = rng.integers(-7, 7, (3, 5, 4))
    check_device("take_along_axis last", lambda x: ops.take_along_axis(x, last, axis=-1), x)
    shared = rng.integers(0, 5, (1, 3, 1))
    check_device("take_along_axis broadcast", lambda x: ops.take_along_axis(x, shared, axis=1),
                 x)


def test_where(rng):
    c = (_x(rng, 3, 1, 5) > 0).astype(np.float32)
    check_device("where", lambda c, a, b: ops.where(c, a, b), c, _x(rng, 4, 5), _x(rng, 3, 4, 1))
    check_device("where scalar", lambda a: ops.where(c, a, 2.5), _x(rng, 3, 4, 5))


def test_cast_one_hot_argmax(rng):
    x = _x(rng, 3, 5, 7) * 4
    check_device("cast", lambda x: ops.cast(x, "int32"), x, grad=False)
    check_device("cast float", lambda x: ops.cast(x, "float32"), x)
    for axis, keep in ((None, False), (1, True), (-1, False), (0, False)):
        check_device(f"argmax {axis}", lambda x, a=axis, k=keep: ops.argmax(x, axis=a, keepdims=k), x,
                     grad=False)
        check_device(f"argmin {axis}", lambda x, a=axis, k=keep: ops.argmin(x, axis=a, keepdims=k), x,
                     grad=False)
    labels = np.array([[0, 4], [2, 3], [4, 1]])
    check_device("one_hot", lambda: ops.one_hot(labels, 5), grad=False)
    check_device("one_hot axis 0", lambda: ops.one_hot(labels, 5, axis=0), grad=False)
    check_device("one_hot of argmax", lambda x: ops.one_hot(ops.argmax(x, axis=-1), 7), x,
                 grad=False)


@pytest.mark.parametrize("axis", [None, 1, (0, 2), -1])
def test_prod_var_std(rng, axis):
    x = 1 + 0.3 * _x(rng, 3, 4, 5)
    x[1, 2, 3] = 0.0  # an exact zero: the gradient of the others' product stays exact
    check_device(f"prod {axis}", lambda x: ops.prod(x, axis=axis), x)
    check_device(f"var {axis}", lambda x: ops.var(x, axis=axis, keepdims=True), x)
    check_device(f"std {axis}", lambda x: ops.std(x, axis=axis), x)


@pytest.mark.parametrize("spec, sa, sb", [
    ("ij,jk->ik", (5, 3), (3, 7)), ("bij,bjk->bik", (3, 5, 4), (3, 4, 6)),
    ("bij,jk->bik", (3, 5, 4), (4, 6)), ("ij,bjk->bki", (5, 4), (3, 4, 6)),
    ("bhqd,bhkd->bhqk", (2, 3, 5, 4), (2, 3, 6, 4)), ("i,i->", (7,), (7,)),
    ("ij,kj->ikj", (3, 5), (4, 5)), ("abc,cd->", (2, 3, 4), (4, 5)),
])
def test_einsum(rng, spec, sa, sb):
    check_device(spec, lambda a, b: ops.einsum(spec, a, b), _x(rng, *sa), _x(rng, *sb))


@pytest.mark.parametrize("sa, sb", [((3, 5, 4), (4, 6)), ((2, 1, 5, 4), (3, 4, 6)),
                                    ((5,), (2, 5, 3)), ((2, 3, 5), (5,)), ((4, 5), (3, 5, 2)),
                                    ((5,), (5,))])
def test_batched_matmul_and_tensordot(rng, sa, sb):
    check_device(f"matmul {sa} {sb}", ops.matmul, _x(rng, *sa), _x(rng, *sb))


def test_tensordot_dot_flip_broadcast(rng):
    check_device("tensordot", lambda a, b: ops.tensordot(a, b, axes=([1, 2], [0, 1])),
                 _x(rng, 3, 4, 5), _x(rng, 4, 5, 2))
    check_device("dot N-D", ops.dot, _x(rng, 2, 3, 4), _x(rng, 5, 4, 3))
    check_device("flip", lambda x: ops.flip(x, axis=(0, 2)), _x(rng, 3, 4, 5))
    check_device("broadcast_to", lambda x: ops.broadcast_to(x, (2, 3, 4)), _x(rng, 3, 1))


def test_unsupported_indexing_raises_on_device(rng):
    with _on("opencl") as b:
        x = ops.convert_to_tensor(b.asarray(_x(rng, 3, 4), np.float32))
        with pytest.raises(NotImplementedError, match="a boolean mask over some of several"):
            ops.convert_to_tensor(b.asarray(_x(rng, 3, 4, 2), np.float32))[
                np.ones((3, 4), bool)]
        with pytest.raises(NotImplementedError, match="getitem with several index arrays"):
            x[np.array([0, 1]), np.array([1, 2])]


@pytest.mark.parametrize("name", ["tan", "arcsin", "arccos", "arcsinh", "arccosh", "arctanh"])
def test_inverse_trig_gradients(rng, name):
    x = np.tanh(_x(rng, 3, 5)) * 0.8
    if name == "arccosh":
        x = np.abs(x) + 1.2
    check_device(name, getattr(ops, name), x)


def test_arctan2_gradient(rng):
    check_device("arctan2", ops.arctan2, _x(rng, 3, 5), _x(rng, 5))


# -- issue 13's last device ops: log2/log10, floor_divide/mod, logical ops, any/all,
# max/min with initial= (booleans are float 0/1 on the device, bool arrays on the CPU) ------
def _values(fn, *xs):
    """fn(*xs) on the CPU and on OpenCL, both as float64 host arrays."""
    out = []
    for device in ("cpu", "opencl"):
        with _on(device) as b:
            args = [b.asarray(x, np.float32) if isinstance(x, np.ndarray) else x for x in xs]
            out.append(np.asarray(fn(*args).numpy(), np.float64))
    return out


@pytest.mark.parametrize("name", ["log2", "log10"])
def test_log_bases(rng, name):
    check_device(name, getattr(ops, name), np.abs(_x(rng, 3, 7)) + 0.1)


@pytest.mark.parametrize("name", ["floor_divide", "mod"])
def test_floor_divide_and_mod_match_numpy(rng, name):
    a = _x(rng, 3, 7) * 5
    c = _x(rng, 7) * 2
    c[1], c[2], a[0, 3] = -1.5, 3.0, -4.5  # negative divisors, an exact multiple
    want, got = _values(getattr(ops, name), a, c)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * max(1.0, np.abs(want).max()))
    np.testing.assert_array_equal(want, getattr(np, name)(a, c))


@pytest.mark.parametrize("name", ["logical_and", "logical_or", "logical_xor", "not_equal"])
def test_logical_binary(rng, name):
    a = (rng.integers(0, 3, (4, 1, 5)) - 1).astype(np.float32)
    c = (rng.integers(0, 2, (3, 5)) * 2.5).astype(np.float32)
    want, got = _values(getattr(ops, name), a, c)
    assert got.shape == (4, 3, 5)
    assert 0 < want.sum() < want.size
    np.testing.assert_array_equal(got, want)


def test_logical_not_isnan_isfinite(rng):
    x = _x(rng, 5, 3)
    x[0, 0], x[1, 1], x[2, 2], x[3, 0] = 0.0, np.nan, np.inf, -np.inf
    for fn in (ops.logical_not, ops.isnan, ops.isfinite):
        want, got = _values(fn, x)
        np.testing.assert_array_equal(got, want, err_msg=fn.__name__)


@pytest.mark.parametrize("axis, keepdims", [(None, False), (1, True), ((0, 2), False)])
def test_any_all(rng, axis, keepdims):
    x = (rng.integers(0, 4, (3, 5, 4)) > 0).astype(np.float32) * _x(rng, 3, 5, 4)
    x[1] = 1.0  # one all-true slice, so all() is not all False
    for fn in (ops.any, ops.all):
        want, got = _values(lambda v, f=fn: f(v, axis=axis, keepdims=keepdims), x)
        np.testing.assert_array_equal(got, want, err_msg=fn.__name__)


@pytest.mark.parametrize("name, initial", [("max", 0.3), ("min", -0.2), ("max", 50.0)])
def test_max_min_initial(rng, name, initial):
    fn = getattr(ops, name)
    x = _x(rng, 4, 6)
    check_device(f"{name} initial={initial}",
                 lambda v: fn(v, axis=1, keepdims=False, initial=initial), x)
    # where initial wins no element receives a gradient, never a NaN
    with _on("opencl"):
        _, (g,) = _run(lambda v: fn(v, axis=1, initial=initial), [x])
    assert np.isfinite(g).all()


@pytest.mark.parametrize("key", [
    (np.array([True, False, True, True]),),
    (slice(None), np.array([False, True, True, False, True])),
    (1, np.array([True, False, False, True, True])),
], ids=["rows", "columns", "int_then_mask"])
def test_getitem_with_a_host_boolean_mask(rng, key):
    check_device("getitem mask", lambda v: v[key], _x(rng, 4, 5))


def test_getitem_with_a_whole_shape_host_mask(rng):
    x = _x(rng, 3, 4, 2)
    check_device("getitem whole mask", lambda v: v[x > 0.2], x)
    with _on("opencl") as b, pytest.raises(IndexError, match="boolean index did not match"):
        ops.convert_to_tensor(b.asarray(x, np.float32))[np.array([True, False])]
