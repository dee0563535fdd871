"""Keep-warm spinners (native/_warm.h): idle-priority threads that keep the cores of pynn's
sleeping OpenMP workers from halting while a loop's batches run, and cost nothing between
loops."""

import os
import resource
import subprocess
import sys
import time

import numpy as np
import pytest

import pynn
from pynn import _config
from pynn._native import info

LINUX = sys.platform.startswith("linux")


def _cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _wait_blocked(started, timeout=2.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if info.warm_state()[1] + info.warm_state()[2] >= started:
            return True
        time.sleep(0.01)
    return False


@pytest.mark.skipif(not LINUX, reason="SCHED_IDLE is Linux's")
def test_touch_spins_then_blocks_and_costs_nothing():
    started = info.warm_touch(1, 0.05)
    assert started >= 1
    assert _wait_blocked(started), info.warm_state()
    if info.warm_state()[2]:
        pytest.skip("the kernel refused SCHED_IDLE: the spinner exited instead of spinning")
    # Blocked spinners use no CPU (the test's own thread sleeps too). The process's time
    # counts every thread: BLAS workers left spinning by an earlier test in this process
    # (OpenBLAS spins ~0.1 s before it sleeps) settle first, and the quieter of two windows
    # is the one checked.
    time.sleep(0.2)
    idle = []
    for _ in range(2):
        before = _cpu_seconds()
        time.sleep(0.3)
        idle.append(_cpu_seconds() - before)
    assert min(idle) < 0.05, idle
    # Held, it leaves the condition variable and spins (an idle-priority thread may get
    # little CPU on a busy machine, so what is checked is that it is not blocked).
    info.warm_touch(1, 5.0)
    end = time.monotonic() + 2.0
    while info.warm_state()[1] and time.monotonic() < end:
        time.sleep(0.01)
    assert info.warm_state()[1] == 0, info.warm_state()
    info.warm_release()
    assert _wait_blocked(info.warm_state()[0])


def test_bad_arguments():
    with pytest.raises(ValueError, match="threads >= 0"):
        info.warm_touch(-1, 0.1)
    with pytest.raises(ValueError, match="hold_s >= 0"):
        info.warm_touch(1, float("nan"))


def _small_model():
    model = pynn.Sequential([pynn.layers.Input((6,)), pynn.layers.Dense(5, activation="relu"),
                             pynn.layers.Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


@pytest.mark.skipif(not LINUX, reason="SCHED_IDLE is Linux's")
def test_training_keeps_the_workers_cores_warm():
    if _config.warm_threads() == 0:
        pytest.skip("one thread or no OpenMP: nothing to keep warm")
    rng = np.random.default_rng(0)
    model = _small_model()
    model.train_on_batch(rng.random((4, 6), dtype=np.float32), np.array([0, 1, 2, 1]))
    assert info.warm_state()[0] >= _config.warm_threads()


def _run(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})


def test_environment_turns_it_off():
    code = ("import numpy as np, pynn\n"
            "from pynn import _config\n"
            "from pynn._native import info\n"
            "m = pynn.Sequential([pynn.layers.Input((3,)), pynn.layers.Dense(2)])\n"
            "m.compile('sgd', 'mse')\n"
            "m.fit(np.ones((8, 3), 'float32'), np.ones((8, 2), 'float32'), epochs=2, verbose=0)\n"
            "print(_config.warm_threads(), info.warm_state()[0])\n")
    result = _run(code, PYNN_KEEP_WARM="0", PYNN_NUM_THREADS="2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "0"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_starts_its_own():
    code = ("import os, numpy as np, pynn\n"
            "from pynn._native import info\n"
            "info.warm_touch(1, 5.0)\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    ok = info.warm_state() == (0, 0, 0) and info.warm_touch(1, 0.01) >= 1\n"
            "    m = pynn.Sequential([pynn.layers.Input((3,)), pynn.layers.Dense(2)])\n"
            "    m.compile('sgd', 'mse')\n"
            "    m.fit(np.ones((8, 3), 'float32'), np.ones((8, 2), 'float32'), verbose=0)\n"
            "    os._exit(0 if ok else 3)\n"
            "_, status = os.waitpid(pid, 0)\n"
            "info.warm_release()\n"
            "print(os.waitstatus_to_exitcode(status))\n")
    result = _run(code, PYNN_NUM_THREADS="2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0", result.stdout
