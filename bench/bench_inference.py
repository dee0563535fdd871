"""pynn's predict beside onnxruntime running the same model exported by pynn.onnx.export.

Two models (issue 16): the MLP 784-256-128-10 and the small CNN conv32-pool-conv64-pool-
dense128-dense10 on 32x32x3, random weights. Each is first exported and checked (onnxruntime's
output equals pynn's predict to 1e-5 of the output scale), then timed at batch 1 and batch 64:
pynn's ``predict_on_batch`` and onnxruntime's ``InferenceSession.run``, one thread each
(pynn.set_num_threads(1); intra_op and inter_op threads 1), calls alternating so both see the
same machine load. Reported: p50 and p99 latency per call, and samples/s at the p50.

    .venv/bin/python bench/bench_inference.py [--repeat 400] [--warmup 20] [--batch 1,64]
        [--json PATH]
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# pynn before NumPy, so that the BLAS threads' settings pynn makes are read (bench/README.md).
import pynn
import pynn.onnx

# isort: split
import numpy as np

from pynn import layers as L


def mlp():
    return pynn.Sequential([L.Input((784,)), L.Dense(256, activation="relu"),
                            L.Dense(128, activation="relu"), L.Dense(10, activation="softmax")])


def cnn():
    return pynn.Sequential([
        L.Input((32, 32, 3)),
        L.Conv2D(32, 3, padding="same", activation="relu"), L.MaxPooling2D(),
        L.Conv2D(64, 3, padding="same", activation="relu"), L.MaxPooling2D(),
        L.Flatten(), L.Dense(128, activation="relu"), L.Dense(10, activation="softmax"),
    ])


MODELS = {"mlp_784_256_128_10": mlp, "cnn_32x32x3": cnn}


def randomize(model, rng):
    model.set_weights([rng.uniform(-0.1, 0.1, w.shape).astype(w.dtype)
                       for w in model.get_weights()])


def session(proto):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def percentiles_us(times):
    t = np.asarray(times) * 1e6
    return float(np.percentile(t, 50)), float(np.percentile(t, 99))


def bench_model(name, make, batches, repeat, warmup, rng):
    model = make()
    randomize(model, rng)
    sess = session(pynn.onnx.export(model))
    feed = sess.get_inputs()[0].name
    rows = []
    for batch in batches:
        x = rng.standard_normal((batch,) + tuple(model.input_shape[1:])).astype(np.float32)
        want = model.predict_on_batch(x)
        got = sess.run(None, {feed: x})[0]
        err = float(np.abs(got - want).max()) / max(1.0, float(np.abs(want).max()))
        if err > 1e-5:
            raise SystemExit(f"{name} batch {batch}: onnxruntime differs from pynn by {err:.2e}")
        calls = {"pynn": lambda x=x: model.predict_on_batch(x),
                 "onnxruntime": lambda x=x: sess.run(None, {feed: x})}
        for fn in calls.values():  # warm-up: plans, buffers, caches
            for _ in range(warmup):
                fn()
        times = {k: [] for k in calls}
        for _ in range(repeat):
            for k, fn in calls.items():
                start = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - start)
        for k, ts in times.items():
            p50, p99 = percentiles_us(ts)
            rows.append({"model": name, "batch": batch, "runtime": k, "p50_us": round(p50, 1),
                         "p99_us": round(p99, 1),
                         "samples_per_s": round(batch / (p50 * 1e-6), 1)})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls first")
    parser.add_argument("--batch", default="1,64", help="comma-separated batch sizes")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batch.split(",")]
    pynn.set_num_threads(1)
    rng = np.random.default_rng(0)
    rows = []
    for name, make in MODELS.items():
        rows += bench_model(name, make, batches, args.repeat, args.warmup, rng)
    print(f"# {cpu_name()}, 1 thread each, "
          f"{args.repeat} alternating calls")
    print(f"{'model':<20} {'batch':>5} {'runtime':<12} {'p50 us':>9} {'p99 us':>9} "
          f"{'samples/s':>10}")
    for r in rows:
        print(f"{r['model']:<20} {r['batch']:>5} {r['runtime']:<12} {r['p50_us']:>9.1f} "
              f"{r['p99_us']:>9.1f} {r['samples_per_s']:>10.1f}")
    for name in MODELS:
        for batch in batches:
            p = {r["runtime"]: r["p50_us"] for r in rows
                 if r["model"] == name and r["batch"] == batch}
            print(f"{name} batch {batch}: pynn / onnxruntime p50 = "
                  f"{p['pynn'] / p['onnxruntime']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
