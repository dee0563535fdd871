"""Dense microkernel vs BLAS crossover (native/dense.pyx, _micro_rule).

Times each float32 dense op (forward with relu, backward_input, backward_weight) on pynn's
microkernel path and on the BLAS path, alternated in one process, over batch M and widths
(C in, U out). Two clocks: wall time, and the CPU time of the process (all threads). On a
machine shared with other work the minimum over the alternated runs is the run that had
the cores, and CPU time leaves out the time other processes held them, so the CPU-time
ratio (micro / BLAS speed) is the one to compare there. Each shape is first checked
against float64 NumPy.

    python -m bench.bench_dense_crossover [--threads 2] [--json PATH] [--rounds 15]
"""
import argparse
import json
import platform
import time

import numpy as np

from pynn._config import set_num_threads
from pynn._native import dense

BATCHES = (1, 8, 32, 64, 128, 256)
WIDTHS = ((784, 512), (512, 256), (256, 10), (64, 64), (10, 1024), (1024, 1024), (4096, 4096))
OPS = ("forward", "backward_input", "backward_weight")


def _ops(x, kernel, bias, dz):
    return {
        "forward": lambda: dense.dense_forward(x, kernel, bias, "relu"),
        "backward_input": lambda: dense.dense_backward_input(dz, kernel),
        "backward_weight": lambda: dense.dense_backward_weight(x, dz),
    }


def _check(fs, x, kernel, bias, dz):
    want = {
        "forward": np.maximum(x.astype(np.float64) @ kernel + bias, 0),
        "backward_input": dz.astype(np.float64) @ kernel.T,
        "backward_weight": x.T.astype(np.float64) @ dz,
    }
    for name, f in fs.items():
        got = f()
        got = got[0] if isinstance(got, tuple) else got
        scale = np.abs(want[name]).max() + 1e-30
        assert np.abs(got - want[name]).max() / scale < 1e-4, name


def measure(m, c, u, rounds, rng):
    x = rng.normal(size=(m, c)).astype(np.float32)
    kernel = (rng.normal(size=(c, u)) / np.sqrt(c)).astype(np.float32)
    bias = rng.normal(size=u).astype(np.float32)
    dz = rng.normal(size=(m, u)).astype(np.float32)
    fs = _ops(x, kernel, bias, dz)
    flop = 2 * m * c * u
    reps = max(1, int(2e7 / flop))
    row = {"M": m, "C": c, "U": u}
    for path in ("micro", "blas"):
        dense._set_gemm_path(path)
        _check(fs, x, kernel, bias, dz)
    for name, f in fs.items():
        wall, cpu = {}, {}
        for _ in range(rounds):
            for path in ("micro", "blas"):
                dense._set_gemm_path(path)
                t, c = time.perf_counter(), time.process_time()
                for _ in range(reps):
                    f()
                wall[path] = min(wall.get(path, np.inf), (time.perf_counter() - t) / reps)
                cpu[path] = min(cpu.get(path, np.inf), (time.process_time() - c) / reps)
        row[name] = {
            "micro_gflops": round(flop / wall["micro"] / 1e9, 1),
            "blas_gflops": round(flop / wall["blas"] / 1e9, 1),
            "micro_over_blas": round(wall["blas"] / wall["micro"], 3),
            "micro_gflop_per_cpu_s": round(flop / cpu["micro"] / 1e9, 1),
            "blas_gflop_per_cpu_s": round(flop / cpu["blas"] / 1e9, 1),
            "micro_over_blas_cpu": round(cpu["blas"] / cpu["micro"], 3),
        }
    dense._set_gemm_path("auto")
    row["rule_takes_micro"] = {
        "forward": bool(dense._micro_rule("forward", np.float32, m, u, c)),
        "backward_input": bool(dense._micro_rule("backward_input", np.float32, m, c, u)),
        "backward_weight": bool(dense._micro_rule("backward_weight", np.float32, c, u, m)),
    }
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rows = []
    for c, u in WIDTHS:
        for m in BATCHES:
            if m * c * u > 256 * 1024 * 1024:
                continue
            rows.append(measure(m, c, u, args.rounds if c * u < 1 << 22 else 3, rng))
            r = rows[-1]
            print(f"M={m:4d} C={c:5d} U={u:5d}  " + "  ".join(
                f"{op} {r[op]['micro_gflops']:5.1f}/{r[op]['blas_gflops']:5.1f} "
                f"cpu x{r[op]['micro_over_blas_cpu']:.2f}" for op in OPS), flush=True)
    result = {
        "what": "dense float32 ops, microkernel vs BLAS: GFLOP/s (wall) and GFLOP per CPU-s "
                "(all threads), min over alternated runs",
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "load_avg_1min": __import__("os").getloadavg()[0],
        "crossover": rows,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
