"""Dense's serial threshold in a training step (native/dense.pyx, _SERIAL_MACS).

Products under the threshold run as one GEMM on the calling thread, larger ones in bands on
pynn's worker team. Single calls timed after idle time favour the serial road (a sleeping
worker's wake-up); a training step's ops come back to back. This times whole steps of the
suite's 30-layer functional model (10 blocks of Dense-Dense-Add, logits, Adam) at several
widths and batches, each threshold's steps alternated with the others' in one process,
medians of the rounds.

    python -m bench.bench_serial_macs [--thresholds 6e6,1e6,2.5e5] [--rounds 7]
        [--threads 2] [--json PATH]
"""
import argparse
import json
import time

import numpy as np

CASES = ((256, 64), (256, 32), (256, 16), (128, 64), (128, 32), (512, 16))


def _model(width):
    import pynn
    from bench import bench_cpu

    old, bench_cpu.FUNC30_WIDTH = bench_cpu.FUNC30_WIDTH, width
    try:
        model = bench_cpu.pynn_func30()
    finally:
        bench_cpu.FUNC30_WIDTH = old
    model.compile(optimizer="adam",
                  loss=pynn.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def run_case(width, batch, thresholds, rounds):
    from pynn._native import dense

    model = _model(width)
    rng = np.random.default_rng(0)
    x = rng.random((8, batch, width), dtype=np.float32)
    y = rng.integers(0, 10, (8, batch)).astype(np.int32)
    steps = max(5, int(3000 / (batch * width * width * 6e-6 + 50)))
    times = {t: [] for t in thresholds}
    old = dense._set_serial_macs(None)
    try:
        for i in range(20):
            model.train_on_batch(x[i % 8], y[i % 8])
        for _ in range(rounds):
            for t in thresholds:
                dense._set_serial_macs(t)
                for i in range(3):
                    model.train_on_batch(x[i % 8], y[i % 8])
                start = time.perf_counter()
                for i in range(steps):
                    model.train_on_batch(x[i % 8], y[i % 8])
                times[t].append((time.perf_counter() - start) / steps * 1e3)
    finally:
        dense._set_serial_macs(old)
    return {"width": width, "batch": batch, "macs_per_product": batch * width * width,
            "steps_per_round": steps,
            "ms_per_step": {f"{t:g}": float(np.median(v)) for t, v in times.items()},
            "rounds_ms": {f"{t:g}": v for t, v in times.items()}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--thresholds", default="6e6,1e6,2.5e5")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    import pynn

    if args.threads:
        pynn.set_num_threads(args.threads)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    results = []
    print(f"ms per training step, thresholds {', '.join(f'{t:g}' for t in thresholds)} "
          f"multiply-adds alternated, medians of {args.rounds} rounds")
    for width, batch in CASES:
        r = run_case(width, batch, thresholds, args.rounds)
        results.append(r)
        cells = "  ".join(f"{k}: {v:7.3f}" for k, v in r["ms_per_step"].items())
        print(f"width {width:4d} batch {batch:3d} ({r['macs_per_product'] / 1e6:5.2f}M a "
              f"product)  {cells}")
    if args.json:
        from pynn._native.info import get_max_threads

        from bench.bench_inference import cpu_name

        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_name(), "command": "python -m bench.bench_serial_macs",
                       "threads": get_max_threads(), "thresholds": thresholds,
                       "rounds": args.rounds, "cases": results}, f, indent=1)


if __name__ == "__main__":
    main()
