"""How long pynn's OpenMP waiters should spin before sleeping (GOMP_SPINCOUNT), alone and
with other pynn processes on the same cores.

A waiter that spins picks up the next parallel region without a futex wake-up, which pays
when a training step is a string of short regions with Python in between; but when more
threads than cores want to run (gunicorn-style workers, `pytest -n auto`, two jobs on one
machine), a spinning waiter holds a core that the thread it waits for needs, and every
region can cost a spin. libgomp's own throttle only sees its process's threads, not the
other processes'. This bench measures both sides of that trade:

- ``alone``: one process, `train_on_batch` milliseconds (median of rounds);
- ``xN``: N such processes started together, each with pynn's default threads (so N x
  threads on the cores), the median of their step times.

Models: the suite's MLP 784-512-256-10 (batch 64), LSTM(128) over 32x32 (batch 32) and a
small CNN on 32x32x3 (batch 32). Spin counts and the two settings are alternated in rounds,
each in a fresh interpreter (libgomp reads GOMP_SPINCOUNT once, at load).

    python bench/bench_spin.py [--spins 0,1000,30000] [--rounds 5] [--procs 2] [--json PATH]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.bench_cpu import _cpuinfo  # noqa: E402

_STEP = """
import sys, time
import numpy as np
import pynn
from pynn import layers as L
name, steps = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
if name == "mlp":
    stack = [L.Input((784,)), L.Dense(512, activation="relu"), L.Dense(256, activation="relu")]
    x = rng.random((64, 784), dtype=np.float32)
elif name == "lstm":
    stack = [L.Input((32, 32)), L.LSTM(128)]
    x = rng.random((32, 32, 32), dtype=np.float32)
else:
    stack = [L.Input((32, 32, 3)), L.Conv2D(32, 3, activation="relu"), L.MaxPooling2D(),
             L.Conv2D(64, 3, activation="relu"), L.MaxPooling2D(), L.Flatten(),
             L.Dense(128, activation="relu")]
    x = rng.random((32, 32, 32, 3), dtype=np.float32)
model = pynn.Sequential(stack + [L.Dense(10, activation="softmax")])
model.compile("adam", "sparse_categorical_crossentropy")
y = rng.integers(0, 10, len(x))
for _ in range(3):
    model.train_on_batch(x, y)
start = time.perf_counter()
for _ in range(steps):
    model.train_on_batch(x, y)
print((time.perf_counter() - start) / steps * 1e3)
"""
MODELS = {"mlp": 60, "lstm": 30, "cnn": 15}  # steps per measurement


def run(model, spin, procs):
    """Median step milliseconds of `procs` processes started together."""
    env = dict(os.environ, GOMP_SPINCOUNT=str(spin), PYTHONPATH=str(ROOT))
    children = [subprocess.Popen([sys.executable, "-c", _STEP, model, str(MODELS[model])],
                                 env=env, stdout=subprocess.PIPE, text=True)
                for _ in range(procs)]
    times = []
    for child in children:
        out, _ = child.communicate(timeout=600)
        if child.returncode:
            raise SystemExit(f"bench_spin: {model} with GOMP_SPINCOUNT={spin} failed")
        times.append(float(out))
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spins", default="0,1000,30000",
                    help="comma-separated GOMP_SPINCOUNT values (default 0,1000,30000)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--procs", type=int, default=2,
                    help="processes started together for the contended setting (default 2)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    spins = [int(s) for s in args.spins.split(",")]
    models = args.models.split(",")
    settings = ("alone", f"x{args.procs}")
    samples = {(m, s, k): [] for m in models for s in spins for k in settings}
    for _ in range(args.rounds):
        for model in models:
            for spin in spins:
                for setting in settings:
                    procs = 1 if setting == "alone" else args.procs
                    samples[model, spin, setting].append(run(model, spin, procs))
    rows = []
    print(f"{'model':6} {'spin':>7} " + " ".join(f"{k + ' ms':>10}" for k in settings))
    for model in models:
        for spin in spins:
            row = {"model": model, "gomp_spincount": spin}
            for setting in settings:
                row[setting + "_ms"] = round(statistics.median(samples[model, spin, setting]), 3)
                row[setting + "_samples_ms"] = [round(t, 3) for t in samples[model, spin, setting]]
            rows.append(row)
            print(f"{model:6} {spin:7d} " + " ".join(f"{row[k + '_ms']:10.2f}" for k in settings))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "bench": "spin", **_cpuinfo(),
            "cores": len(os.sched_getaffinity(0)), "procs": args.procs, "rounds": args.rounds,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "PASSIVE (pynn's default)"),
            "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
