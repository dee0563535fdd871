"""Direct microkernel vs Winograd F(2x2, 3x3) for the 3x3 stride-1 convs of the quick suite's
residual CNN and small CNN (bench/bench_cpu.py), per layer, 1 and 2 threads.

    python -m bench.bench_winograd [--rounds 15] [--threads 1 2] [--model-rounds 15]
                                   [--layers REGEX] [--ops REGEX] [--json PATH]

Each round times the direct and the Winograd call of one op back to back in one process
(PYNN_CONV_ALGO's knob conv._set_conv_algo), alternating which goes first, so a busy
machine slows both alike; the table quotes medians of wall time and of the process's CPU
time, and the ratio direct / Winograd of the medians. Ops: forward (the layer's
activation fused), backward_input, backward_weight, and conv2d_backward (a layer's whole
backward: the fused activation backward + kernel gradient + input gradient). Every Winograd
result is first checked against the direct one (relative 1e-4 of the output's scale).
Then whole training steps of the two models (train_on_batch, batch 32), the default rules
against PYNN_CONV_ALGO=direct, alternated the same way.
"""

import argparse
import functools
import json
import platform
import re
import statistics
import sys
import time

import numpy as np

from pynn import _config
from pynn._native import conv, info

# (name, N, H, W, C, F, activation): stride 1, 'same', the quick suite's batch 32.
LAYERS = [
    ("resnet b0/b1 conv (x4)", 32, 32, 32, 32, 32, "linear"),
    ("resnet b2 conv2, b3 (x3)", 32, 16, 16, 64, 64, "linear"),
    ("cnn conv2", 32, 16, 16, 32, 64, "relu"),
    ("16 -> 16 at 32x32", 32, 32, 32, 16, 16, "linear"),
    ("8 -> 8 at 32x32", 32, 32, 32, 8, 8, "linear"),
    ("128 -> 128 at 8x8", 32, 8, 8, 128, 128, "linear"),
    ("128 -> 128 at 16x16", 32, 16, 16, 128, 128, "linear"),
    ("32 -> 32 at 8x8", 32, 8, 8, 32, 32, "linear"),
]


def ops(n, h, w, c, f, act, rng):
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    k = (rng.standard_normal((3, 3, c, f)) / np.sqrt(9 * c)).astype(np.float32)
    b = rng.standard_normal(f).astype(np.float32)
    y, z = conv.conv2d_forward(x, k, b, (1, 1), "same", (1, 1), act, 0.0)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    return {
        "forward": lambda: conv.conv2d_forward(x, k, b, (1, 1), "same", (1, 1), act, 0.0)[0],
        "backward_input": lambda: conv.conv2d_backward_input(dy, k, x.shape, (1, 1), "same",
                                                             (1, 1)),
        "backward_weight": lambda: conv.conv2d_backward_weight(x, dy, k.shape, (1, 1), "same",
                                                               (1, 1)),
        "backward": lambda: conv.conv2d_backward(dy, x, z, y, k, (1, 1), "same", (1, 1),
                                                 act, 0.0)[0],
    }


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def measure(rounds, threads_list, layers=".", ops_regex="."):
    rng = np.random.default_rng(0)
    rows = []
    for name, n, h, w, c, f, act in LAYERS:
        if not re.search(layers, name):
            continue
        table = ops(n, h, w, c, f, act, rng)
        for op, fn in table.items():
            if not re.search(ops_regex, op):
                continue
            conv._set_conv_algo("direct")
            want = fn()
            conv._set_conv_algo("winograd")
            got = fn()
            err = float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))
            assert err < 1e-4, f"{name} {op}: Winograd differs from direct by {err:.2g}"
            for threads in threads_list:
                info.set_num_threads(threads)
                t = {"direct": [], "winograd": []}
                for r in range(rounds + 1):
                    order = ("direct", "winograd") if r % 2 else ("winograd", "direct")
                    for algo in order:
                        conv._set_conv_algo(algo)
                        wall, cpu = timed(fn)
                        if r:   # round 0 warms caches and the scratch pool
                            t[algo].append((wall, cpu))
                med = {a: (statistics.median(v[0] for v in t[a]) * 1e3,
                           statistics.median(v[1] for v in t[a]) * 1e3) for a in t}
                rows.append({"layer": name, "shape": [n, h, w, c, f], "op": op,
                             "threads": threads, "direct_ms": round(med["direct"][0], 3),
                             "winograd_ms": round(med["winograd"][0], 3),
                             "direct_cpu_ms": round(med["direct"][1], 3),
                             "winograd_cpu_ms": round(med["winograd"][1], 3),
                             "speedup": round(med["direct"][0] / med["winograd"][0], 2),
                             "rel_diff": float(f"{err:.2g}")})
                print(f"{name:26s} {op:15s} {threads}t  direct {med['direct'][0]:7.2f} ms  "
                      f"winograd {med['winograd'][0]:7.2f} ms  x{rows[-1]['speedup']:.2f}  "
                      f"(cpu {med['direct'][1]:.2f} / {med['winograd'][1]:.2f})", flush=True)
    conv._set_conv_algo(None)
    return rows


def measure_models(rounds, threads, batch=32):
    """Training steps of the quick suite's residual CNN and small CNN (bench/bench_cpu.py,
    batch 32), direct and Winograd alternated in one process: milliseconds per step."""
    from bench import bench_cpu

    rng = np.random.default_rng(1)
    # pynn's setting, not only OpenMP's: every model entry point re-applies it
    # (_config.apply_to_this_thread), so info.set_num_threads alone ran the models' steps on
    # the default thread count whatever --threads said.
    _config.set_num_threads(threads)
    rows = []
    for name in ("resnet", "cnn"):
        model = bench_cpu.pynn_model(name)
        x = rng.random((batch, 32, 32, 3), dtype=np.float32)
        y = rng.integers(0, 10, batch).astype(np.int32)
        step = functools.partial(model.train_on_batch, x, y)
        t = {"direct": [], "winograd": []}
        for r in range(rounds + 1):
            order = ("direct", "winograd") if r % 2 else ("winograd", "direct")
            for algo in order:
                conv._set_conv_algo("auto" if algo == "winograd" else "direct")
                wall, cpu = timed(step)
                if r:
                    t[algo].append((wall, cpu))
        med = {a: (statistics.median(v[0] for v in t[a]) * 1e3,
                   statistics.median(v[1] for v in t[a]) * 1e3) for a in t}
        rows.append({"model": name, "batch": batch, "threads": threads,
                     "direct_step_ms": round(med["direct"][0], 2),
                     "winograd_step_ms": round(med["winograd"][0], 2),
                     "direct_cpu_ms": round(med["direct"][1], 2),
                     "winograd_cpu_ms": round(med["winograd"][1], 2),
                     "speedup": round(med["direct"][0] / med["winograd"][0], 3)})
        print(f"{name:8s} train step {threads}t  direct {med['direct'][0]:7.2f} ms  "
              f"winograd (auto) {med['winograd'][0]:7.2f} ms  x{rows[-1]['speedup']:.3f}",
              flush=True)
    conv._set_conv_algo(None)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--model-rounds", type=int, default=15,
                        help="alternated training steps of each model (0: skip the models)")
    parser.add_argument("--layers", default=".", help="only the layers whose name matches")
    parser.add_argument("--ops", default=".", help="only the ops whose name matches")
    parser.add_argument("--json", help="write the table here")
    args = parser.parse_args(argv)
    threads0 = info.get_max_threads()
    config_threads0 = _config.get_num_threads()
    try:
        rows = measure(args.rounds, args.threads, args.layers, args.ops)
        models = [] if args.model_rounds < 1 else [
            row for threads in args.threads
            for row in measure_models(args.model_rounds, threads)]
    finally:
        _config.set_num_threads(config_threads0)
        info.set_num_threads(threads0)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": platform.processor() or platform.machine(),
                       "command": "python -m bench.bench_winograd "
                       + " ".join(sys.argv[1:] if argv is None else argv),
                       "rounds": args.rounds, "layers": rows,
                       "model_rounds": args.model_rounds, "models": models}, fh, indent=1)
    return rows


if __name__ == "__main__":
    main()
