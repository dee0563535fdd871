"""Predict latency and throughput of Keras 3's application architectures built by pynn
(``pynn.applications``) beside onnxruntime running pynn's own ONNX export of the same model
and Keras 3 on torch running the Keras original with the same weights.

The three run the same weights: the Keras model is built with ``weights=None``, pynn's copy
takes ``keras_model.get_weights()``, and onnxruntime gets ``pynn.onnx.export`` of pynn's copy;
each model's predictions are checked against Keras's before anything is timed. Rounds
alternate the frameworks so all see the same machine load; a round keeps the best of
--repeat calls; the table shows the median round. Batch-1 is the latency of one call,
batch-N the images per second of calls of N. Every framework gets --threads threads
(pynn.threads, torch.set_num_threads, intra_op_num_threads).

    .venv/bin/python bench/bench_applications.py [--threads 1] [--batch 16] [--rounds 5]
        [--repeat 3] [--models MobileNetV2,ResNet50,EfficientNetB0] [--size 224]
        [--json bench/results/applications-<cpu>-<threads>t.json] [--profile]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_conv_kernels import best_time  # noqa: E402


def build(name, size, threads):
    import keras
    import numpy as np
    import onnxruntime as ort
    import torch

    import pynn

    shape = (size, size, 3)
    # Logits, not softmax: near-uniform probabilities of random weights would hide errors.
    km = getattr(keras.applications, name)(weights=None, input_shape=shape,
                                           classifier_activation=None)
    pm = getattr(pynn.applications, name)(weights=None, input_shape=shape,
                                          classifier_activation=None)
    pm.set_weights(km.get_weights())
    path = os.path.join(tempfile.mkdtemp(), f"{name}.onnx")
    pynn.onnx.export(pm, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    x = np.random.default_rng(0).uniform(0, 255, (2, *shape)).astype(np.float32)
    with torch.no_grad():
        want = km(x, training=False).detach().cpu().numpy()
    errors = {"pynn": pm.predict_on_batch(x), "onnxruntime": session.run(None, {feed: x})[0]}
    errors = {k: float(np.abs(v - want).max() / np.abs(want).max()) for k, v in errors.items()}
    for k, err in errors.items():
        if err > 1e-3:
            raise SystemExit(f"{name}: {k} differs from Keras by {err:.1e} (relative)")

    def keras_call(batch):
        with torch.no_grad():
            km(batch, training=False)

    runners = {
        "pynn": lambda batch: pm.predict_on_batch(batch),
        "onnxruntime": lambda batch: session.run(None, {feed: batch}),
        "keras-torch": keras_call,
    }
    return runners, errors


def profile(name, size, rounds):
    """pynn's batch-1 predict of ``name`` step by step: milliseconds per (plan runner, layer)
    kind, summed over the plan's steps of that kind, the mean of ``rounds`` calls."""
    import collections
    import inspect

    import numpy as np

    import pynn
    from pynn import inference

    model = getattr(pynn.applications, name)(weights=None, input_shape=(size, size, 3))
    x = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype(np.float32)
    for _ in range(3):
        model.predict_on_batch(x)
    spent, count = collections.defaultdict(float), collections.Counter()
    originals = {}
    for cls in vars(inference).values():
        run = vars(cls).get("run") if isinstance(cls, type) else None
        if run is None or list(inspect.signature(run).parameters) != ["self", "x", "buf"]:
            continue

        def timed(self, x, buf, _run=run):
            t = time.perf_counter()
            out = _run(self, x, buf)
            layer = self.layer
            folded = type(layer).__name__ == "_FoldedLayer"
            kind = (type(self).__name__, type(layer).__name__ + (
                f"({type(layer.layer).__name__})" if folded else ""))
            spent[kind] += time.perf_counter() - t
            count[kind] += 1
            return out

        originals[cls] = run
        cls.run = timed
    try:
        t = time.perf_counter()
        for _ in range(rounds):
            model.predict_on_batch(x)
        total = (time.perf_counter() - t) / rounds
    finally:
        for cls, run in originals.items():
            cls.run = run
    print(f"{name}: {total * 1e3:.2f} ms per batch-1 predict; by step kind:")
    for kind, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {kind[0]:<18}{kind[1]:<44}{count[kind] // rounds:>4} steps "
              f"{seconds / rounds * 1e3:8.2f} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--models", default="MobileNetV2,ResNet50,EfficientNetB0")
    parser.add_argument("--json", default=None, help="default: bench/results/"
                        "applications-<cpu>-<threads>t.json")
    parser.add_argument("--profile", action="store_true",
                        help="pynn only: where a batch-1 predict's time goes, step by step")
    args = parser.parse_args()
    if args.profile:
        import pynn

        pynn.set_num_threads(args.threads)
        for name in args.models.split(","):
            profile(name, args.size, max(args.rounds, 10))
        return

    import numpy as np
    import torch

    import pynn
    from bench_cpu import _cpu_slug, machine_info

    pynn.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    machine = machine_info(args.threads)
    rows = []
    print(f"threads {args.threads}; input {args.size}x{args.size}x3; median of {args.rounds} "
          f"rounds of best-of-{args.repeat}")
    print(f"{'model':<16}{'framework':<13}{'rel err':>9}{'batch-1 ms':>12}"
          f"{f'batch-{args.batch} img/s':>17}")
    rng = np.random.default_rng(1)
    one = rng.uniform(0, 255, (1, args.size, args.size, 3)).astype(np.float32)
    many = rng.uniform(0, 255, (args.batch, args.size, args.size, 3)).astype(np.float32)
    for name in args.models.split(","):
        runners, errors = build(name, args.size, args.threads)
        lat = {k: [] for k in runners}
        thr = {k: [] for k in runners}
        for _ in range(args.rounds):
            for k, run in runners.items():
                lat[k].append(best_time(lambda: run(one), args.repeat))
                thr[k].append(args.batch / best_time(lambda: run(many), args.repeat))
        for k in runners:
            row = {"model": name, "framework": k, "threads": args.threads,
                   "size": args.size, "batch": args.batch,
                   "rel_err_vs_keras": errors.get(k, 0.0),
                   "batch1_ms": [t * 1e3 for t in lat[k]], "batchN_img_s": thr[k],
                   "batch1_ms_median": statistics.median(lat[k]) * 1e3,
                   "batchN_img_s_median": statistics.median(thr[k])}
            rows.append(row)
            print(f"{name:<16}{k:<13}{row['rel_err_vs_keras']:>9.1e}"
                  f"{row['batch1_ms_median']:>12.2f}{row['batchN_img_s_median']:>17.1f}")
    path = args.json or (Path(__file__).parent / "results" / (
        f"applications-{_cpu_slug(machine.get('cpu_model'), machine.get('core'))}-"
        f"{args.threads}t.json"))
    Path(path).write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
