"""pynn/backend/_scratch.py: the pool CPU kernels carve their temporaries from."""

import numpy as np
import pytest

from pynn.backend import _scratch


@pytest.fixture(autouse=True)
def empty_pool():
    _scratch.clear()
    yield
    _scratch.clear()


def test_views_have_the_shapes_do_not_overlap_and_start_on_cache_lines():
    buf, (a, b, c) = _scratch.take(np.float32, (3, 5), (7,), (2, 3, 1))
    assert (a.shape, b.shape, c.shape) == ((3, 5), (7,), (2, 3, 1))
    assert all(v.flags.c_contiguous and v.dtype == np.float32 for v in (a, b, c))
    a[...], b[...], c[...] = 1, 2, 3
    assert (a == 1).all() and (b == 2).all() and (c == 3).all()
    # Absolute addresses: NumPy's own large arrays start 16 bytes past a cache line.
    assert all(v.ctypes.data % 64 == 0 for v in (a, b, c))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_views_start_on_cache_lines(dtype):
    buf, views = _scratch.take(dtype, (100_001,), (3,), (1 << 20,))
    assert all(v.ctypes.data % 64 == 0 for v in views)
    assert not any(np.shares_memory(views[i], views[j])
                   for i in range(3) for j in range(i + 1, 3))


def test_a_given_back_buffer_is_reused_and_the_largest_is_kept():
    buf, _ = _scratch.take(np.float64, (100,))
    _scratch.give(buf)
    again, (v,) = _scratch.take(np.float64, (50,))
    assert again is buf and np.shares_memory(v, buf[0])
    small, _ = _scratch.take(np.float64, (10,))     # the pool is empty: a fresh one
    assert small is not buf
    _scratch.give(again)
    _scratch.give(small)                            # smaller: not kept
    assert _scratch.take(np.float64, (1,))[0] is buf


def test_concurrent_takes_never_share_and_dtypes_have_their_own_buffers():
    first, _ = _scratch.take(np.float32, (64,))
    second, _ = _scratch.take(np.float32, (64,))
    assert not np.shares_memory(first[0], second[0])
    _scratch.give(first)
    assert _scratch.take(np.float64, (8,))[0] is not first


def test_buffers_over_the_cap_are_dropped(monkeypatch):
    monkeypatch.setattr(_scratch, "KEEP_BYTES", 1024)
    buf, _ = _scratch.take(np.float32, (1024,))
    _scratch.give(buf)
    assert _scratch.take(np.float32, (1,))[0] is not buf


def test_the_context_manager_gives_back_even_on_error():
    with pytest.raises(RuntimeError):
        with _scratch.scratch(np.float32, (4, 4)) as (view,):
            kept = view.base
            raise RuntimeError("kernel failed")
    assert _scratch.take(np.float32, (16,))[0][0] is kept


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int8])
@pytest.mark.parametrize("size", [0, 1, 7, 4097])
def test_aligned_empty_starts_on_a_cache_line(dtype, size):
    for _ in range(5):   # NumPy's own allocations land 16 bytes past a line often
        a = _scratch.aligned_empty(size, dtype)
        assert a.shape == (size,) and a.dtype == dtype and a.flags.c_contiguous
        assert size == 0 or a.ctypes.data % 64 == 0   # (an empty slice keeps no pointer)
        a[:] = 3    # writable, all of it
