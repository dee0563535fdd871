"""Scenarios for tests/test_concurrency.py, each run as ``python -m tests._concurrency_worker
NAME [ARGS]`` in a subprocess with a timeout, so that a hang fails the test instead of CI.

Each scenario prints ``ok`` and exits 0 when every result matches; a mismatch raises
(exit 1), a child that does not finish within CHILD_TIMEOUT is killed and reported.
"""

import multiprocessing
import os
import pickle
import signal
import sys
import threading
import traceback

import numpy as np

import pynn
from pynn import layers as L

CHILD_TIMEOUT = 60
THREADS = 2   # > 1, so the kernels open real OpenMP teams


def dense_model():
    pynn.utils.set_random_seed(7)
    m = pynn.Sequential([L.Input(shape=(64,)), L.Dense(64, activation="relu"), L.Dense(10)])
    m.compile("adam", "mse")
    return m, np.random.default_rng(1).standard_normal((33, 64)).astype("f4")


def conv_model():
    pynn.utils.set_random_seed(7)
    m = pynn.Sequential([L.Input(shape=(12, 12, 3)), L.Conv2D(8, 3, padding="same"),
                         L.Conv2D(4, 3, activation="relu"), L.Flatten(), L.Dense(5)])
    m.compile("adam", "mse")
    return m, np.random.default_rng(1).standard_normal((17, 12, 12, 3)).astype("f4")


MODELS = {"dense": dense_model, "conv": conv_model}
_model = None   # the model a forked Pool's workers inherit


def _fit(m, x, seed=3):
    pynn.utils.set_random_seed(seed)
    y = np.random.default_rng(seed).standard_normal(m.predict(x[:1], verbose=0).shape[1:])
    m.fit(x, np.broadcast_to(y, (len(x),) + y.shape).astype("f4"), batch_size=8, epochs=2,
          verbose=0)


def _same(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or not np.array_equal(a, b):
        raise AssertionError(f"{what}: results differ (max |diff| "
                             f"{np.max(np.abs(a - b)) if a.shape == b.shape else a.shape})")


def _forked(work):
    """Runs work() in an os.fork child; returns its result (an array) or raises."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: never returns into the caller
        code = 1
        try:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)   # a hung child dies on its own
            signal.alarm(CHILD_TIMEOUT)
            os.close(r)
            out = np.ascontiguousarray(work())
            with os.fdopen(w, "wb") as f:
                f.write(pickle.dumps(out))
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:   # read to EOF: the child may write more than a pipe holds
        data = f.read()
    got = pickle.loads(data) if data else None
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == -signal.SIGALRM:
        raise AssertionError(f"forked child hung: killed after {CHILD_TIMEOUT} s")
    if got is None or code != 0:
        raise AssertionError(f"forked child failed (exit {code})")
    return got


def fork_after_predict(kind):
    m, x = MODELS[kind]()
    want = m.predict(x, verbose=0)
    threads = _forked(lambda: np.array([pynn.get_num_threads(),
                                        pynn._native.info.get_max_threads()]))
    got = _forked(lambda: m.predict(x, verbose=0))
    _same(got, want, f"{kind}: predict in a forked child")
    _same(threads, [THREADS, THREADS], f"{kind}: the child's threads")
    _same(m.predict(x, verbose=0), want, f"{kind}: predict in the parent after fork")


def fork_after_fit(kind):
    m, x = MODELS[kind]()
    _fit(m, x)

    def more():
        _fit(m, x, seed=4)
        return m.predict(x, verbose=0)

    got = _forked(more)
    _same(got, more(), f"{kind}: fit + predict in a forked child vs the parent")


def fork_single_thread_fallback(kind):
    """Without omp_pause_resource_all a forked child runs one thread; it must not hang."""
    m, x = MODELS[kind]()
    want = m.predict(x, verbose=0)
    pynn._native.info._set_fork_release(False)
    threads = _forked(lambda: np.array([pynn.get_num_threads(),
                                        pynn._native.info.forked_single()]))
    got = _forked(lambda: m.predict(x, verbose=0))
    pynn._native.info._set_fork_release(True)
    _same(got, want, f"{kind}: predict in a one-thread forked child")
    _same(threads, [1, 1], f"{kind}: the one-thread child's threads")


def fork_while_another_thread_predicts(kind):
    """A fork while another Python thread is inside the kernels (its team busy, maybe BLAS
    held at one thread by a Dense op): the child still finishes, with the same numbers."""
    m, x = MODELS[kind]()
    want = m.predict(x, verbose=0)
    stop = threading.Event()

    def busy():
        while not stop.is_set():
            m.predict(x, verbose=0)

    t = threading.Thread(target=busy)
    t.start()
    try:
        for _ in range(5):
            _same(_forked(lambda: m.predict(x, verbose=0)), want,
                  f"{kind}: predict in a child forked during another thread's predict")
    finally:
        stop.set()
        t.join()


def _pool_predict(i):
    m, x = _model
    return m.predict(x[i:], verbose=0)


def fork_pool_after_predict(kind):
    global _model
    m, x = _model = MODELS[kind]()
    # Per batch: a batch's rows are not bitwise those of a larger batch's prediction (the
    # kernels' blocks fall elsewhere), so each worker's batch is compared with the same batch.
    want = [m.predict(x[i:], verbose=0) for i in range(4)]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        res = pool.map_async(_pool_predict, range(4))
        outs = res.get(CHILD_TIMEOUT)
    for i, out in enumerate(outs):
        _same(out, want[i], f"{kind}: predict in a fork Pool worker")


def _spawn_predict(kind, weights, x, queue):
    pynn.set_num_threads(THREADS)
    m, _ = MODELS[kind]()
    m.set_weights(weights)
    queue.put(m.predict(x, verbose=0))


def spawn_after_predict(kind):
    m, x = MODELS[kind]()
    want = m.predict(x, verbose=0)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=_spawn_predict, args=(kind, m.get_weights(), x, queue))
    p.start()
    got = queue.get(timeout=CHILD_TIMEOUT)
    p.join(CHILD_TIMEOUT)
    _same(got, want, f"{kind}: predict in a spawned child")


def predict_racing_fit(kind):
    """predict on one model in this thread while another thread fits a second model."""
    m, x = MODELS[kind]()
    want = m.predict(x, verbose=0)
    alone, _ = MODELS[kind]()
    _fit(alone, x)
    trained, _ = MODELS[kind]()
    errors = []

    def fit():
        try:
            _fit(trained, x)
        except BaseException as e:   # reported by the main thread
            errors.append(e)

    t = threading.Thread(target=fit)
    t.start()
    n = 0
    while t.is_alive() or n < 3:
        _same(m.predict(x, verbose=0), want, f"{kind}: predict while another model fits")
        n += 1
    t.join()
    if errors:
        raise errors[0]
    for a, b in zip(trained.get_weights(), alone.get_weights()):
        _same(a, b, f"{kind}: fit beside predict vs fit alone")


def threads_share_model(kind):
    """8 Python threads calling predict on one model get what one thread gets."""
    m, x = MODELS[kind]()
    want = [m.predict(x[i:], verbose=0) for i in range(8)]
    got = [None] * 8
    barrier = threading.Barrier(8)

    def run(i):
        barrier.wait()
        for _ in range(5):
            got[i] = m.predict(x[i:], verbose=0)
            _same(got[i], want[i], f"{kind}: predict from thread {i}")

    ts = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for i in range(8):
        _same(got[i], want[i], f"{kind}: predict from thread {i}")


SCENARIOS = {f.__name__: f for f in (fork_after_predict, fork_after_fit,
                                     fork_single_thread_fallback, fork_pool_after_predict,
                                     fork_while_another_thread_predicts,
                                     spawn_after_predict, predict_racing_fit,
                                     threads_share_model)}

if __name__ == "__main__":
    pynn.set_device("cpu")
    pynn.set_num_threads(THREADS)
    SCENARIOS[sys.argv[1]](*sys.argv[2:])
    print("ok")
