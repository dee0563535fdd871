"""Fork, spawn and threads around the native kernels (issue 11).

Every scenario runs in its own interpreter (tests/_concurrency_worker.py) under a timeout: a
child stuck in an OpenMP region must fail the test, not hang the run.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 240


def run_scenario(name, kind):
    env = dict(os.environ, PYNN_DEVICE="cpu", PYTHONPATH=str(ROOT))
    env.pop("PYNN_NUM_THREADS", None)
    try:
        proc = subprocess.run([sys.executable, "-m", "tests._concurrency_worker", name, kind],
                              cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{name}({kind}) hung: no result within {TIMEOUT} s\n{e.stderr or ''}")
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), (
        f"{name}({kind}) exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")


KINDS = ["dense", "conv"]


@pytest.mark.parametrize("kind", KINDS)
def test_fork_after_predict(kind):
    run_scenario("fork_after_predict", kind)


@pytest.mark.parametrize("kind", KINDS)
def test_fork_after_fit(kind):
    run_scenario("fork_after_fit", kind)


@pytest.mark.parametrize("kind", KINDS)
def test_fork_single_thread_fallback(kind):
    run_scenario("fork_single_thread_fallback", kind)


@pytest.mark.parametrize("kind", KINDS)
def test_fork_while_another_thread_predicts(kind):
    run_scenario("fork_while_another_thread_predicts", kind)


@pytest.mark.parametrize("kind", KINDS)
def test_fork_pool_after_predict(kind):
    run_scenario("fork_pool_after_predict", kind)


@pytest.mark.parametrize("kind", KINDS)
def test_spawn_after_predict(kind):
    run_scenario("spawn_after_predict", kind)


@pytest.mark.parametrize("kind", KINDS)
def test_predict_racing_fit(kind):
    run_scenario("predict_racing_fit", kind)


@pytest.mark.parametrize("kind", KINDS)
def test_threads_share_model(kind):
    run_scenario("threads_share_model", kind)


def test_thread_count_holds_in_every_python_thread():
    """OpenMP keeps its thread count per calling thread: a model used from another Python
    thread runs its kernels with pynn's count, not the runtime's default team."""
    import threading

    import numpy as np

    import pynn
    from pynn import layers as L
    from pynn._native import info

    previous = pynn.get_num_threads()
    seen = {}
    model = pynn.Sequential([L.Input(shape=(8,)), L.Dense(4)])
    x = np.ones((3, 8), np.float32)

    def worker(name, n):
        if n is not None:
            pynn.set_num_threads(n)
        model.predict(x, verbose=0)
        seen[name] = info.get_max_threads()
        model(x)  # __call__ too
        seen[name + " call"] = info.get_max_threads()

    try:
        pynn.set_num_threads(1)
        t = threading.Thread(target=worker, args=("other", None))
        t.start()
        t.join(60)
        assert seen == {"other": 1, "other call": 1}
        pynn.set_num_threads(2)  # a later change reaches threads that ran before
        t = threading.Thread(target=worker, args=("again", None))
        t.start()
        t.join(60)
        assert seen["again"] == 2 and seen["again call"] == 2
    finally:
        pynn.set_num_threads(previous)


def test_threads_block_bounds_kernels_and_blas_then_restores():
    from threadpoolctl import threadpool_info

    import pynn
    from pynn._native import info

    def blas_threads():
        return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}

    previous = pynn.get_num_threads()
    outer = 2 if previous == 1 else previous
    try:
        pynn.set_num_threads(outer)
        with pynn.threads(1) as n:
            assert n == 1 and pynn.get_num_threads() == 1
            assert info.get_max_threads() == 1 and blas_threads() == {1}
            with pynn.threads(3):  # nested blocks restore their own outer count
                assert pynn.get_num_threads() == 3
            assert pynn.get_num_threads() == 1
        assert pynn.get_num_threads() == outer and blas_threads() == {outer}
        with pytest.raises(RuntimeError, match="inside"):
            with pynn.threads(1):
                raise RuntimeError("inside")
        assert pynn.get_num_threads() == outer  # restored after an exception too
        for bad in (0, -1, 1.5, True, "2"):
            with pytest.raises(ValueError, match="threads: expected a positive int"):
                with pynn.threads(bad):
                    pass
        assert pynn.get_num_threads() == outer
    finally:
        pynn.set_num_threads(previous)
