"""The sort family (native/sort.pyx, opencl/sort.cl: keras.ops' sort/argsort/top_k) against
the float64 oracles of tests/reference/sort_ref.py on both backends (OpenCL also against the
CPU): rows of awkward lengths with ties and NaN (on OpenCL both the bitonic network, up to
512, and the merge beyond), the first k positions, the gathers and
their transposes, the ops' gradients, thread-count invariance and bad operands."""

import numpy as np
import pytest

from pynn import ops
from tests.backend_util import check_op, rand
from tests.reference import sort_ref as ref
from tests.test_ops import check_grad


def _rows(rng, shape, dtype, ties=False, nan=False):
    x = rand(rng, shape, np.float64)
    if ties:
        x = np.round(x * 2) / 2  # many equal values per row
    if nan and x.size > 2:
        x.flat[1] = np.nan
        x.flat[-1] = np.nan
    return x.astype(dtype)


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (5, 33), (2, 65), (1, 300), (2, 700),
                                   (4, 0)])
@pytest.mark.parametrize("ties,nan", [(False, False), (True, False), (True, True)])
def test_argsort_rows(target, descending, shape, ties, nan):
    x = _rows(np.random.default_rng(sum(shape)), shape, target.dtype, ties, nan)
    _, got = check_op(target, "argsort_rows", x, descending, None,
                      ref=lambda *a: ref.argsort_rows_ref(x, descending), dtype=np.int32,
                      rtol=0)
    assert got.dtype == np.int32


@pytest.mark.parametrize("k", [0, 1, 4, 7])
def test_argsort_rows_keeps_the_first_k(target, k):
    x = _rows(np.random.default_rng(k), (5, 7), target.dtype, ties=True)
    check_op(target, "argsort_rows", x, True, k, ref=ref.argsort_rows_ref(x, True, k),
             dtype=np.int32, rtol=0)


@pytest.mark.parametrize("shape,k", [((3, 7), 7), ((5, 33), 4), ((2, 65), 1)])
def test_take_and_put_along_rows(target, shape, k):
    rng = np.random.default_rng(k)
    x = rand(rng, shape, target.dtype)
    index = np.argsort(rng.random(shape), axis=1)[:, :k].astype(np.int32)
    check_op(target, "take_along_rows", x, index, ref=ref.take_along_rows_ref, rtol=0)
    src = rand(rng, (shape[0], k), target.dtype)
    check_op(target, "put_along_rows", src, index, shape[1],
             ref=lambda s, i, n: ref.put_along_rows_ref(s, i, n), rtol=0)


def _x(*shape, seed=0):
    return np.random.default_rng(seed + sum(shape)).standard_normal(shape)


def test_gradients_of_sort_and_top_k():
    check_grad("sort axis 1 of 3-D", lambda a: ops.sort(a, axis=1), [_x(2, 7, 3)])
    check_grad("top_k 3 of 9", lambda a: ops.top_k(a, 3)[0], [_x(2, 4, 9)])


def test_top_k_ties_go_to_the_lower_index_and_nan_is_last():
    x = np.array([[1.0, 3.0, 3.0, np.nan, 2.0]], np.float32)
    values, indices = ops.top_k(x, 3)
    np.testing.assert_array_equal(np.asarray(indices), [[1, 2, 4]])
    np.testing.assert_array_equal(np.asarray(values), [[3.0, 3.0, 2.0]])
    np.testing.assert_array_equal(np.asarray(ops.argsort(x)), [[0, 4, 1, 2, 3]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_sorts_give_the_same_bits_at_any_thread_count(dtype):
    from pynn._native import info, sort

    x = _rows(np.random.default_rng(3), (300, 129), dtype, ties=True)
    runs = []
    before = info.get_max_threads()
    try:
        for n in (1, 2, 3):
            info.set_num_threads(n)
            runs.append((sort.argsort_rows(x, False), sort.argsort_rows(x, True, 5)))
    finally:
        info.set_num_threads(before)
    for other in runs[1:]:
        for want, got in zip(runs[0], other):
            np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(runs[0][0], ref.argsort_rows_ref(x))


def test_bad_operands_name_the_op():
    from pynn.backend import cpu

    x = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"argsort_rows: 'x' must be 2-D \(rows, n\), got "
                                         r"shape \(4,\)"):
        cpu.argsort_rows(np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"argsort_rows: 'k' must be an int in \[0, 4\], "
                                         r"got 5"):
        cpu.argsort_rows(x, False, 5)
    with pytest.raises(TypeError, match=r"argsort_rows: 'descending' must be a bool"):
        cpu.argsort_rows(x, "down")
    with pytest.raises(ValueError, match=r"take_along_rows: 'index' must lie in \[0, 4\), "
                                         r"got values in \[0, 4\]"):
        cpu.take_along_rows(x, np.array([[0], [4], [1]], np.int32))
    with pytest.raises(ValueError, match=r"take_along_rows: 'index' must have 3 rows"):
        cpu.take_along_rows(x, np.zeros((2, 1), np.int32))
    with pytest.raises(ValueError, match=r"put_along_rows: 'index' must have src's shape"):
        cpu.put_along_rows(x, np.zeros((3, 2), np.int32), 4)
    with pytest.raises(ValueError, match=r"pynn.ops.in_top_k: targets must lie in \[0, 4\)"):
        ops.in_top_k(np.array([0, 4, 1], np.int32), x, 1)
