"""pynn's worker team (native/_team.h): the jobs of the hot training ops run on it, every item
exactly once whoever runs it, one master at a time, and the results never depend on which
threads took part."""

import multiprocessing
import sys
import threading
import time

import numpy as np
import pytest

import pynn
from pynn._config import usable_cores
from pynn._native import info

LINUX = sys.platform.startswith("linux")


@pytest.mark.parametrize("n,grain,threads", [(0, 1, 2), (1, 1, 2), (5, 5, 2), (7, 2, 1),
                                              (10, 1, 2), (101, 3, 2), (1000, 7, 3),
                                              (37, 100, 4)])
def test_every_item_runs_once(n, grain, threads):
    owner, tid, slots, workers = info._team_probe(n, grain, threads)
    assert owner.shape == (n,)
    assert (owner == 1).all(), owner
    assert ((slots >= 0) & (slots < threads)).all(), slots
    if threads == 1 or n <= grain:
        assert workers == 0 and len(set(tid.tolist())) <= 1


@pytest.mark.skipif(not LINUX or usable_cores() < 2, reason="needs two cores and futexes")
def test_a_worker_takes_items_of_a_long_job():
    # 64 items of 200 us. With no keep-warm spinner running, the master wakes the sleeping
    # worker itself, which then claims a share even when another process (pytest -n 2) holds
    # the other core part of the time. (With a spinner, the wake-up is left to it, and under
    # such contention the master may rightly run everything.)
    info.warm_release()
    time.sleep(0.02)
    seen = set()
    # Up to 3 s of tries: the other pytest worker may hold the other core for a while.
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        owner, tid, slots, workers = info._team_probe(64, 1, 2, 200.0)
        assert (owner == 1).all() and workers >= 1
        # one slot per thread: the master's 0, the worker's 1
        assert {(a, b) for a, b in zip(tid.tolist(), slots.tolist())} <= {
            (tid[slots == 0][0] if (slots == 0).any() else -1, 0),
            (tid[slots == 1][0] if (slots == 1).any() else -1, 1)}
        seen |= set(tid.tolist())
        if len(seen) >= 2:
            break
    assert len(seen) >= 2, seen


@pytest.mark.skipif(not LINUX, reason="futexes")
def test_concurrent_masters_run_every_item_once():
    # Jobs released from several Python threads at once: one holds the team, the others run
    # serially on their own threads; none loses or repeats an item.
    results, errors = [], []
    ran_before, serial_before = info.team_counts()

    def call():
        try:
            for _ in range(20):
                results.append(info._team_probe(33, 2, 2, 20.0)[0])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 80 and all((o == 1).all() for o in results)
    ran, serial = info.team_counts()
    assert ran + serial >= ran_before + serial_before + 80


def _child_probe(queue):
    owner = info._team_probe(50, 1, 2, 50.0)[0]
    queue.put(bool((owner == 1).all()))


@pytest.mark.skipif(not LINUX, reason="fork")
def test_a_forked_child_runs_team_jobs():
    info._team_probe(50, 1, 2, 50.0)          # the parent's workers exist before the fork
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_probe, args=(queue,))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert queue.get(timeout=5) is True


@pytest.mark.parametrize("n,threads", [(0, 2), (1, 2), (2, 1), (2, 2), (3, 2), (5, 4),
                                       (32, 3), (33, 2), (40, 4)])
def test_every_item_of_an_affine_job_runs_once(n, threads):
    # run_affine: item i offered to slot i first; past 32 items an ordinary job
    owner, tid, slots, workers = info._team_probe(n, 1, threads, 5.0, affine=True)
    assert (owner == 1).all(), owner
    assert ((slots >= 0) & (slots < threads)).all(), slots
    if threads == 1 or n <= 1:
        assert workers == 0 and len(set(tid.tolist())) <= 1


@pytest.mark.skipif(not LINUX or usable_cores() < 2, reason="needs two cores and futexes")
def test_an_affine_jobs_items_go_to_their_own_slots_first():
    # The caller claims its own item before any other, and a worker takes its own (item 1)
    # first: a worker runs item 0 only after item 1 (its caller held up meanwhile, as
    # under pytest -n 2 another process may hold it).
    # (An affine job finding a worker asleep runs on its caller alone: the ordinary job
    # before each wakes it, so most of these are shared.)
    for _ in range(40):
        info._team_probe(4, 1, 2, 20.0)
        owner, tid, slots, workers = info._team_probe(2, 1, 2, 100.0, affine=True)
        assert (owner == 1).all()
        assert slots[0] == 0 or slots[1] == 1, slots


def test_the_lanes_thread_count_follows_pynn_threads():
    before = pynn.get_num_threads()
    with pynn.threads(1):
        assert info.process_threads() == 1
        with pynn.threads(3):
            assert info.process_threads() == 3
        assert info.process_threads() == 1
    assert info.process_threads() == before
    with pytest.raises(ValueError, match="n >= 1"):
        info.set_process_threads(0)


def test_bad_probe_arguments():
    with pytest.raises(ValueError, match="grain >= 1"):
        info._team_probe(4, 0, 2)
    with pytest.raises(ValueError, match="n >= 0"):
        info._team_probe(-1, 1, 2)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_training_bits_do_not_depend_on_the_team(threads):
    # A Dense stack's training step (forward bands or microkernel tiles, fused activation
    # and bias gradients, one Adam job) gives the same weights at every thread count.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((131, 257)).astype(np.float32)
    y = rng.integers(0, 5, 131)

    def train(n):
        with pynn.threads(n):
            pynn.utils.set_random_seed(7)
            model = pynn.Sequential([pynn.layers.Input((257,)),
                                     pynn.layers.Dense(300, activation="relu"),
                                     pynn.layers.Dense(129, activation="tanh"),
                                     pynn.layers.Dense(5, activation="softmax")])
            model.compile("adam", "sparse_categorical_crossentropy")
            for _ in range(3):
                model.train_on_batch(x, y)
            return model.get_weights()

    ran_before = info.team_counts()[0]
    for a, b in zip(train(1), train(threads)):
        np.testing.assert_array_equal(a, b)
    if threads > 1:
        assert info.team_counts()[0] > ran_before
