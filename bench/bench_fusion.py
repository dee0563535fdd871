"""What the training step's fusions buy: each one switched off against on, in fresh
interpreters, alternated in rounds (a shared machine's load falls on both alike).

- ``activation``: the plan runs BatchNormalization -> Activation('relu') and Add ->
  Activation('relu') as one op each (pynn/layers/functional.py, _fuse_activations); off:
  every step's ``fused``/``passthrough`` cleared, the unfused plan (same bits). Measured on
  the suite's residual CNN (32x32x3, batch 32), which has both pairs.
- ``adam_many``: Adam updates every parameter in one op (``adam_update_many``: one OpenMP
  region, no per-variable Python); off: the backend's ``adam_update_many`` removed, so the
  optimizer calls ``adam_update`` per variable (same bits). Measured on the suite's 30-layer
  functional model (func30, batch 64: 42 variables) and its MLP 784-512-256-10 (6).
- ``recompute``: a fused BatchNormalization -> relu's output, which the next Conv2D keeps
  for its kernel gradient, is rebuilt in backward from what the normalization keeps
  (pynn/layers/functional.py, RECOMPUTE_FUSED); off: kept from forward to backward (same
  bits). The residual CNN: the memory it saves against the pass it costs.
- ``conv_backward``: each Conv2D's backward as one pass over dy feeding the kernel gradient
  (native/conv.pyx conv2d_backward, forced with _set_backward_mode("fused")); off: the
  separate ops (activation/bias backward, input gradient, kernel gradient; "composed"). The
  default rule picks per shape and CPU kind (_fused_backward_pays). Same bits either way.
- ``conv_pool``: a MaxPooling2D hands the Conv2D under it its output gradient, argmax and
  output (PoolGrad; pynn/layers/functional.py, FUSE_CONV_POOL): the conv's backward makes dz
  from them (native/conv.pyx conv2d_pool_backward, native/activation.pyx
  pooled_activation_bias_backward) without the pool's input gradient, and in forward the
  conv makes the pool's output itself (conv2d_pool_forward); off: the ops in turn (same
  bits). The suite's small CNN (32x32x3, batch 64), float32 (``cnn``) and mixed_bfloat16
  (``cnn_bf16``).

Reported: ``train_on_batch`` milliseconds, each round's median step, the median over
rounds; and the resident-memory peak of the round (ru_maxrss, MiB).

    python bench/bench_fusion.py [--rounds 5] [--steps 20] [--cases adam_many:mlp,...]
        [--json PATH]
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.bench_cpu import _cpuinfo  # noqa: E402

_STEP = """
import resource, sys, time
sys.path.insert(0, {root!r})
import numpy as np
import pynn
from pynn.backend import cpu
from bench.bench_cpu import pynn_model
model_name, fusion, on, steps = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
rng = np.random.default_rng(0)
shape, batch = {{"resnet": ((32, 32, 3), 32), "func30": ((256,), 64), "mlp": ((784,), 64),
                "cnn": ((32, 32, 3), 64), "cnn_bf16": ((32, 32, 3), 64)}}[model_name]
if model_name == "cnn_bf16":
    pynn.mixed_precision.set_global_policy("mixed_bfloat16")
    model_name = "cnn"
if fusion == "conv_pool":   # decided when the model's plan is built
    import pynn.layers.functional as functional
    functional.FUSE_CONV_POOL = on
model = pynn_model(model_name)  # the suite's model, compiled as the suite compiles it
x = rng.standard_normal((batch,) + shape).astype(np.float32)
y = rng.integers(0, 10, batch)
if fusion == "activation" and not on:
    for st in model._plan.steps:
        st.fused, st.passthrough = None, False
if fusion == "adam_many" and not on:
    del cpu.adam_update_many
if fusion == "recompute" and not on:
    import pynn.layers.functional as functional
    functional.RECOMPUTE_FUSED = False
if fusion == "conv_backward":
    from pynn._native import conv
    conv._set_backward_mode("fused" if on else "composed")
for _ in range(3):
    model.train_on_batch(x, y)
times = []
for _ in range(steps):
    t = time.perf_counter()
    model.train_on_batch(x, y)
    times.append((time.perf_counter() - t) * 1e3)
times.sort()
print(times[len(times) // 2], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""

CASES = [("activation", "resnet"), ("recompute", "resnet"), ("adam_many", "func30"),
         ("adam_many", "mlp"), ("conv_backward", "resnet"), ("conv_pool", "cnn"),
         ("conv_pool", "cnn_bf16")]


def run(model, fusion, on, steps):
    out = subprocess.run([sys.executable, "-c", _STEP.format(root=str(ROOT)), model, fusion,
                          "1" if on else "0", str(steps)], capture_output=True, text=True,
                         timeout=900)
    if out.returncode:
        raise RuntimeError(out.stderr)
    ms, mib = out.stdout.split()
    return float(ms), float(mib)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cases", default=",".join(f"{f}:{m}" for f, m in CASES),
                    help="fusion:model pairs, comma-separated (default: all)")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    rows = []
    for fusion, model in (c.split(":") for c in args.cases.split(",")):
        samples = {True: [], False: []}
        for _ in range(args.rounds):
            for on in (True, False):
                samples[on].append(run(model, fusion, on, args.steps))
        on_ms = statistics.median(s[0] for s in samples[True])
        off_ms = statistics.median(s[0] for s in samples[False])
        row = {"fusion": fusion, "model": model, "on_ms": round(on_ms, 3),
               "off_ms": round(off_ms, 3), "speedup": round(off_ms / on_ms, 3),
               "on_samples_ms": [round(s[0], 3) for s in samples[True]],
               "off_samples_ms": [round(s[0], 3) for s in samples[False]],
               "on_peak_mib": round(statistics.median(s[1] for s in samples[True]), 1),
               "off_peak_mib": round(statistics.median(s[1] for s in samples[False]), 1)}
        rows.append(row)
        print(f"{fusion:10s} {model:7s} on {on_ms:8.3f} ms  off {off_ms:8.3f} ms  "
              f"x{off_ms / on_ms:.3f}  peak MiB on {row['on_peak_mib']} off "
              f"{row['off_peak_mib']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "bench": "fusion", **_cpuinfo(), "rounds": args.rounds, "steps": args.steps,
            "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
