"""pynn._native.memory: the recycling allocator NumPy draws on inside the models' loops."""

import threading

import numpy as np
import pytest

import pynn
from pynn import layers
from pynn._native import memory

try:
    from numpy._core.multiarray import get_handler_name
except ImportError:  # NumPy 1.x
    from numpy.core.multiarray import get_handler_name

LARGE = memory.stats()["min_block"] // 8 + 1001   # float64 elements, odd, over the threshold


@pytest.fixture(autouse=True)
def fresh_pool():
    limit = memory.stats()["limit"]
    memory.trim()
    yield
    memory.set_limit(limit)
    memory.trim()


def test_arrays_made_inside_use_the_pool_and_outside_do_not():
    assert get_handler_name(np.empty(LARGE)) != "pynn_recycle"
    with memory.recycling():
        inside = np.empty(LARGE)
        with memory.recycling():   # nesting keeps it
            nested = np.empty(3)
        after_nested = np.empty(LARGE)
    assert get_handler_name(inside) == "pynn_recycle"
    assert get_handler_name(nested) == "pynn_recycle"
    assert get_handler_name(after_nested) == "pynn_recycle"
    assert get_handler_name(np.empty(LARGE)) != "pynn_recycle"


def test_a_freed_block_is_handed_out_again_aligned():
    with memory.recycling():
        a = np.empty(LARGE)
        address = a.ctypes.data
        assert address % 64 == 0
        del a
        assert memory.stats()["idle_blocks"] == 1
        hits = memory.stats()["hits"]
        b = np.empty(LARGE - 5)              # same rounded size
        assert b.ctypes.data == address
        assert memory.stats()["hits"] == hits + 1
        assert memory.stats()["idle_blocks"] == 0


def test_best_fit_takes_a_larger_block_but_not_one_twice_the_size():
    with memory.recycling():
        big = np.empty(2 * LARGE)
        address = big.ctypes.data
        del big
        twice_smaller = np.empty(LARGE - 4096)   # the block is more than twice as large
        assert twice_smaller.ctypes.data != address
        fits = np.empty(2 * LARGE - 9000)
        assert fits.ctypes.data == address


def test_zeros_from_a_dirty_recycled_block_are_zeros():
    with memory.recycling():
        a = np.empty(LARGE)
        a[:] = np.nan
        address = a.ctypes.data
        del a
        z = np.zeros(LARGE)
        assert z.ctypes.data == address
        assert not z.any()


@pytest.mark.parametrize("start,end", [(7, 5), (7, LARGE), (LARGE, 3 * LARGE),
                                       (3 * LARGE, LARGE), (LARGE, 11)])
def test_resize_keeps_the_contents(start, end):
    rng = np.random.default_rng(start + end)
    with memory.recycling():
        a = rng.standard_normal(start)
        kept = a[:min(start, end)].copy()
        a.resize(end, refcheck=False)
        np.testing.assert_array_equal(a[:min(start, end)], kept)
        a[-1] = 1.5                           # the whole new size is writable
    assert a[-1] == 1.5


def test_freed_outside_every_scope_goes_back_to_the_system():
    with memory.recycling():
        a = np.empty(LARGE)
    del a
    assert memory.stats()["idle_blocks"] == 0


def test_limit_evicts_oldest_and_zero_turns_recycling_off():
    nbytes = LARGE * 8
    memory.set_limit(2 * nbytes + 8192)
    with memory.recycling():
        blocks = [np.full(LARGE, float(i)) for i in range(3)]
        del blocks
        assert memory.stats()["idle_blocks"] == 2
        assert memory.stats()["idle_bytes"] <= memory.stats()["limit"]
    assert memory.trim() > 0
    assert memory.stats()["idle_bytes"] == 0
    memory.set_limit(0)
    with memory.recycling():
        assert get_handler_name(np.empty(LARGE)) != "pynn_recycle"
    with pytest.raises(ValueError, match="set_limit"):
        memory.set_limit(-1)


def test_threads_allocating_and_freeing_at_once_never_share_a_block():
    errors = []

    def work(seed):
        rng = np.random.default_rng(seed)
        try:
            with memory.recycling():
                for _ in range(60):
                    n = int(rng.integers(LARGE, 3 * LARGE))
                    a = np.full(n, float(seed))
                    b = np.zeros(n // 2)
                    if not ((a == seed).all() and not b.any()):
                        errors.append(seed)
                    del a, b
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def _cnn(seed):
    pynn.utils.set_random_seed(seed)
    model = pynn.Sequential([layers.Input((12, 12, 3)),
                             layers.Conv2D(48, 3, padding="same", activation="relu"),
                             layers.MaxPooling2D(2),
                             layers.Flatten(),
                             layers.Dense(5, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def test_training_reuses_blocks_and_fit_gives_them_back():
    rng = np.random.default_rng(5)
    x = rng.random((64, 12, 12, 3), dtype=np.float32)
    y = rng.integers(0, 5, 64)
    model = _cnn(1)
    model.train_on_batch(x, y)
    model.train_on_batch(x, y)
    before = memory.stats()
    for _ in range(3):
        model.train_on_batch(x, y)
    after = memory.stats()
    assert after["misses"] == before["misses"]          # steady state: every block reused
    assert after["hits"] > before["hits"]
    assert after["idle_bytes"] > 0                      # kept for the next call
    model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    assert memory.stats()["idle_bytes"] == 0            # the outermost loop gave them back


def test_recycling_does_not_change_the_numbers():
    rng = np.random.default_rng(6)
    x = rng.random((50, 12, 12, 3), dtype=np.float32)
    y = rng.integers(0, 5, 50)
    weights = []
    for limit in (256 << 20, 0):
        memory.set_limit(limit)
        model = _cnn(2)
        model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
        weights.append(model.get_weights() + [model.predict(x, batch_size=7)])
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


def test_a_forked_child_can_still_free_and_allocate():
    import os

    with memory.recycling():
        blocks = [np.ones(LARGE) for _ in range(3)]
        pid = os.fork()
        if pid == 0:   # child: free what the parent allocated, allocate again, leave
            ok = False
            try:
                del blocks[:]
                ok = bool((np.full(LARGE, 2.0) == 2.0).all())
            finally:
                os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    del blocks
