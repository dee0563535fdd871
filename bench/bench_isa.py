"""Alternated A/B of microkernel levels (native/_isa.h) and builds, for
bench/results/isa-*.json: one worker process per build tree (it imports that tree's pynn);
the controller asks each worker in turn to time every case on one level, round after round
(order reversed every other round), so load drift on a shared machine hits every
configuration alike.

    python bench/bench_isa.py ROUNDS OUT.json native=. portable=/tmp/portable-copy
    AB_THREADS=1 python bench/bench_isa.py ...

A portable tree is a copy of this one built with PYNN_PORTABLE=1 (a full build).
"""
import json
import os
import statistics as st
import subprocess
import sys
import time

CASES = [  # label, N, H, W, C, KH, KW, F, strides
    ("3x3 32->64 @32", 8, 32, 32, 32, 3, 3, 64, (1, 1)),
    ("3x3 64->64 @56", 8, 56, 56, 64, 3, 3, 64, (1, 1)),
    ("1x1 64->128 @56", 8, 56, 56, 64, 1, 1, 128, (1, 1)),
    ("first 3->32 3x3 @32", 8, 32, 32, 3, 3, 3, 32, (1, 1)),
]


def worker():
    sys.path.insert(0, os.getcwd())
    import numpy as np

    import pynn
    from pynn import _config, layers
    from pynn._native import conv
    pynn.set_num_threads(int(os.environ.get("AB_THREADS", "2")))
    assert pynn.__file__.startswith(os.getcwd()), pynn.__file__
    rng = np.random.default_rng(0)
    fns = {}
    for label, n, h, w, c, kh, kw, f, s in CASES:
        x = rng.standard_normal((n, h, w, c)).astype(np.float32)
        k = rng.standard_normal((kh, kw, c, f)).astype(np.float32) * 0.1
        b = np.zeros(f, np.float32)
        y, _ = conv.conv2d_forward(x, k, b, s, "same", (1, 1), "relu")
        dy = rng.standard_normal(y.shape).astype(np.float32)
        fns[f"conv2d_forward {label}"] = lambda x=x, k=k, b=b, s=s: conv.conv2d_forward(
            x, k, b, s, "same", (1, 1), "relu")
        fns[f"conv2d_backward {label}"] = lambda dy=dy, x=x, y=y, k=k, s=s: conv.conv2d_backward(
            dy, x, None, y, k, s, "same", (1, 1), "relu")
    model = pynn.Sequential([layers.Input((32, 32, 3)),
                             layers.Conv2D(32, (3, 3), padding="same", activation="relu"),
                             layers.MaxPooling2D(2),
                             layers.Conv2D(64, (3, 3), padding="same", activation="relu"),
                             layers.MaxPooling2D(2), layers.Flatten(),
                             layers.Dense(128, activation="relu"),
                             layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    xb = rng.standard_normal((32, 32, 32, 3)).astype(np.float32)
    yb = rng.integers(0, 10, 32)
    fns["cnn train step (batch 32)"] = lambda: model.train_on_batch(xb, yb)
    for fn in fns.values():
        fn()
    print("ready", flush=True)
    for line in sys.stdin:
        level = line.strip()
        if level not in _config.available_kernels():
            print(json.dumps({"_unavailable": level}), flush=True)
            continue
        _config.set_kernel(level)
        out = {}
        for name, fn in fns.items():
            fn()
            ts = []
            for _ in range(5):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            out[name] = st.median(ts)
        out["_load"] = os.getloadavg()[0]
        print(json.dumps(out), flush=True)


def main():
    builds = dict(arg.split("=", 1) for arg in sys.argv[3:]) or {"native": "."}
    builds = {name: os.path.abspath(path) for name, path in builds.items()}
    first = next(iter(builds))
    levels = ("avx512", "avx2", "generic")
    # Every level on the first tree, the fastest and the generic one on the others.
    configs = [(first, lv) for lv in levels] + [(b, lv) for b in builds if b != first
                                                 for lv in (levels[0], levels[2])]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    procs = {}
    for b, d in builds.items():
        procs[b] = subprocess.Popen([sys.executable, __file__, "worker"], cwd=d, text=True,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        assert procs[b].stdout.readline().strip() == "ready"
    rounds = int(sys.argv[1])
    res = {f"{b} {lv}": [] for b, lv in configs}
    for r in range(rounds):
        order = configs if r % 2 == 0 else configs[::-1]
        for b, lv in order:
            procs[b].stdin.write(lv + "\n")
            procs[b].stdin.flush()
            reply = json.loads(procs[b].stdout.readline())
            if "_unavailable" not in reply:
                res[f"{b} {lv}"].append(reply)
        print("round", r, time.strftime("%H:%M:%S"), flush=True)
    for p in procs.values():
        p.stdin.close()
        p.wait()
    with open(sys.argv[2], "w") as f:
        json.dump({c: r for c, r in res.items() if r}, f)


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        worker()
    else:
        main()
