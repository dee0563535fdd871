"""Time pynn's linalg kernels (native/linalg.pyx) on the CPU beside torch.linalg (what
Keras 3's keras.ops.linalg calls on its torch backend), float32, on batches of small and
medium matrices: cholesky, solve (LU + solve), inv, qr, svd, eigh.

Each pynn result is first checked against NumPy's float64 answer on the first matrix, then
timed: the median of --repeat calls after one warm-up, at each thread count of --threads
(pynn's OpenMP threads and torch's intra-op threads set alike).

    .venv/bin/python bench/bench_linalg.py [--threads 1 2] [--repeat 7] [--json PATH]
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pynn._native import info, linalg  # noqa: E402

SHAPES = ((256, 8), (64, 32), (4, 128))  # (batch, n): batched 256x8x8, 64x32x32, 4x128x128


def median_ms(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def check(name, got, want, rtol=2e-4):
    err = float(np.abs(np.asarray(got, np.float64) - want).max()) / max(
        1.0, float(np.abs(want).max()))
    if err > rtol:
        raise SystemExit(f"{name}: relative error {err:.2e} > {rtol}")


def pynn_ops(a, spd, rhs):
    n = a.shape[-1]
    eye = np.broadcast_to(np.eye(n, dtype=a.dtype), a.shape)

    def solve(b):
        lu, piv, _ = linalg.lu_factor_forward(a)
        return linalg.lu_solve_forward(lu, piv, b, False)

    return {
        "cholesky": lambda: linalg.cholesky_forward(spd)[0],
        "solve": lambda: solve(rhs),
        "inv": lambda: solve(eye),
        "qr": lambda: linalg.qr_forward(a, False),
        "svd": lambda: linalg.svd_forward(a, False, True),
        "eigh": lambda: linalg.eigh_forward(spd),
    }


def torch_ops(torch, a, spd, rhs):
    a, spd, rhs = torch.tensor(a), torch.tensor(spd), torch.tensor(rhs)
    return {
        "cholesky": lambda: torch.linalg.cholesky(spd),
        "solve": lambda: torch.linalg.solve(a, rhs),
        "inv": lambda: torch.linalg.inv(a),
        "qr": lambda: torch.linalg.qr(a),
        "svd": lambda: torch.linalg.svd(a, full_matrices=False),
        "eigh": lambda: torch.linalg.eigh(spd),
    }


def check_first(a, spd, rhs):
    a64, spd64 = a[:1].astype(np.float64), spd[:1].astype(np.float64)
    check("cholesky_forward", linalg.cholesky_forward(spd[:1])[0], np.linalg.cholesky(spd64))
    lu, piv, _ = linalg.lu_factor_forward(a[:1])
    check("lu_solve_forward", linalg.lu_solve_forward(lu, piv, rhs[:1], False),
          np.linalg.solve(a64, rhs[:1].astype(np.float64)))
    q, r = linalg.qr_forward(a[:1], False)
    check("qr_forward", q @ r, a64)
    check("svd_forward", linalg.svd_forward(a[:1], False, False)[1],
          np.linalg.svd(a64, compute_uv=False))
    check("eigh_forward", linalg.eigh_forward(spd[:1])[0], np.linalg.eigvalsh(spd64))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    results = []
    for batch, n in SHAPES:
        a = (rng.standard_normal((batch, n, n)) + 2 * np.sqrt(n) * np.eye(n)).astype(np.float32)
        g = rng.standard_normal((batch, n, n))
        spd = (g @ np.swapaxes(g, -1, -2) + n * np.eye(n)).astype(np.float32)
        rhs = rng.standard_normal((batch, n, 1)).astype(np.float32)
        check_first(a, spd, rhs)
        mine = pynn_ops(a, spd, rhs)
        theirs = torch_ops(torch, a, spd, rhs) if torch is not None else {}
        for threads in args.threads:
            info.set_num_threads(threads)
            if torch is not None:
                torch.set_num_threads(threads)
            for name in mine:
                row = {"op": name, "shape": f"{batch}x{n}x{n}", "threads": threads,
                       "pynn_ms": round(median_ms(mine[name], args.repeat), 3)}
                if name in theirs:
                    row["torch_ms"] = round(median_ms(theirs[name], args.repeat), 3)
                results.append(row)
                torch_ms = f"{row['torch_ms']:9.3f}" if "torch_ms" in row else "        -"
                print(f"{name:9s} {row['shape']:>11s} threads={threads}  pynn "
                      f"{row['pynn_ms']:9.3f} ms   torch {torch_ms} ms", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": results}, indent=1))


if __name__ == "__main__":
    main()
