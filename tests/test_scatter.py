"""The scatter family (native/scatter.pyx, opencl/scatter.cl: keras.ops' segment_sum/
segment_max, scatter, scatter_update, slice_update) against the float64 loops of
tests/reference/scatter_ref.py on both backends (OpenCL also against the CPU), the ops'
gradients where rows are dropped or repeated, thread-count invariance and bad operands."""

import numpy as np
import pytest

from pynn import ops
from tests.backend_util import check_op, rand
from tests.reference import scatter_ref as ref
from tests.test_ops import check_grad


def _tol(target):
    t = 1e-5 if target.dtype == np.float32 else 1e-12
    return {"rtol": t, "atol": t}


def _grouping(rng, m, n):
    ids = rng.integers(0, n, m)
    starts = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(ids, minlength=n), out=starts[1:])
    return starts, np.argsort(ids, kind="stable")


@pytest.mark.parametrize("op", ["sum", "max", "prod"])  # opsm: prod
@pytest.mark.parametrize("m,n,d", [(7, 3, 5), (33, 31, 1), (65, 4, 7), (1, 5, 3), (0, 2, 3)])
def test_segment_reduce_forward(target, op, m, n, d):
    rng = np.random.default_rng(m + n + d)
    starts, order = _grouping(rng, m, n)
    data = rand(rng, (m, d), target.dtype)
    check_op(target, "segment_reduce_forward", data, starts, order, op,
             ref=ref.segment_reduce_forward_ref, rtol=_tol(target))


def test_segment_max_propagates_nan_and_fills_empty_segments(target):
    data = np.array([[1.0, np.nan], [2.0, 0.5], [-3.0, 4.0]], target.dtype)
    starts, order = np.array([0, 2, 2, 3]), np.array([0, 1, 2])
    got = target.down(target.op("segment_reduce_forward")(target.up(data), starts, order,
                                                          "max"))
    want = np.array([[2.0, np.nan], [-np.inf, -np.inf], [-3.0, 4.0]])
    np.testing.assert_array_equal(got, want.astype(target.dtype))


@pytest.mark.parametrize("m,n,d", [(7, 3, 5), (31, 33, 1), (4, 65, 7)])
def test_gather_and_select_rows(target, m, n, d):
    rng = np.random.default_rng(m * n)
    src = rand(rng, (n, d), target.dtype)
    rows = rng.integers(-1, n, m)
    check_op(target, "gather_rows", src, rows, ref=ref.gather_rows_ref, rtol=_tol(target))
    base, upd = rand(rng, (n, d), target.dtype), rand(rng, (m, d), target.dtype)
    owner = rng.integers(-1, m, n)
    check_op(target, "select_rows", base, upd, owner, ref=ref.select_rows_ref,
             rtol=_tol(target))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_scatters_give_the_same_bits_at_any_thread_count(dtype):
    from pynn._native import info, scatter

    rng = np.random.default_rng(4)
    starts, order = _grouping(rng, 20001, 37)
    data = rand(rng, (20001, 3), dtype)
    rows = rng.integers(-1, 20001, 15000)
    runs = []
    before = info.get_max_threads()
    try:
        for n in (1, 2, 3):
            info.set_num_threads(n)
            runs.append((scatter.segment_reduce_forward(data, starts, order, "sum"),
                         scatter.segment_reduce_forward(data, starts, order, "max"),
                         scatter.gather_rows(data, rows)))
    finally:
        info.set_num_threads(before)
    for other in runs[1:]:
        for want, got in zip(runs[0], other):
            np.testing.assert_array_equal(got, want)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(runs[0][0], ref.segment_reduce_forward_ref(
        data, starts, order, "sum"), rtol=tol, atol=tol)


def _x(*shape, seed=0):
    return np.random.default_rng(seed + sum(shape)).standard_normal(shape)


def test_gradients_with_dropped_and_repeated_indices():
    ids = np.array([0, 3, -1, 1, 0, 2], np.int32)  # 3 and -1 lie outside 3 segments: dropped
    check_grad("segment_sum dropped", lambda d: ops.segment_sum(d, ids, num_segments=3),
               [_x(6, 2, 3)])
    check_grad("segment_max dropped", lambda d: ops.segment_max(d, ids, num_segments=3),
               [_x(6, 2, 3)])
    idx = np.array([[0, 1], [2, -1], [0, 1]], np.int32)  # a repeat adds up
    check_grad("scatter repeats", lambda v: ops.scatter(idx, v, (3, 4, 2)), [_x(3, 2)])
    check_grad("scatter_update rows", lambda x, u: ops.scatter_update(
        x, np.array([[2], [0]], np.int32), u), [_x(3, 4), _x(2, 4)])
    check_grad("slice_update 3-D", lambda x, u: ops.slice_update(x, (1, 0, 2), u),
               [_x(3, 4, 5), _x(2, 3, 2)])


def test_scatter_update_last_update_wins_as_numpy():
    x = _x(4, 3).astype(np.float32)
    u = _x(3, 3, seed=1).astype(np.float32)
    idx = np.array([[1], [3], [1]], np.int32)
    want = x.copy()
    want[idx[:, 0]] = u
    np.testing.assert_array_equal(np.asarray(ops.scatter_update(x, idx, u)), want)


def test_bad_operands_name_the_op():
    from pynn.backend import cpu

    data = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"segment_reduce_forward: 'order' must lie in "
                                         r"\[0, 4\), got values in \[0, 4\]"):
        cpu.segment_reduce_forward(data, np.array([0, 2]), np.array([0, 4]), "sum")
    with pytest.raises(ValueError, match=r"segment_reduce_forward: 'starts' must rise"):
        cpu.segment_reduce_forward(data, np.array([0, 2, 1, 2]), np.array([0, 1]), "sum")
    with pytest.raises(ValueError, match=r"segment_reduce_forward: 'op' must be one of sum, "
                                         r"max, prod, got 'min'"):
        cpu.segment_reduce_forward(data, np.array([0, 1]), np.array([0]), "min")
    with pytest.raises(ValueError, match=r"gather_rows: 'src' must be 2-D \(rows, D\), got "
                                         r"shape \(4,\)"):
        cpu.gather_rows(np.ones(4, np.float32), np.array([0]))
    with pytest.raises(TypeError, match=r"gather_rows: 'rows' must be a 1-D host integer "
                                        r"array, got dtype float64"):
        cpu.gather_rows(data, np.array([0.5]))
    with pytest.raises(ValueError, match=r"select_rows: 'owner' must have one entry per row "
                                         r"of base \(4\), got 2"):
        cpu.select_rows(data, data, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"pynn.ops.scatter: indices out of range"):
        ops.scatter(np.array([[5]], np.int32), np.ones(1, np.float32), (3,))
