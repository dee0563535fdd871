"""bfloat16 mixed precision (issue 17): training throughput of the small CNN and the MLP of
bench_cpu.py under pynn float32, pynn mixed_bfloat16, PyTorch CPU float32 and PyTorch CPU
autocast bf16 (``torch.autocast("cpu", dtype=torch.bfloat16)``), same threads, one process.

Check first: one step of each pynn policy from the same weights and batch; the bf16 loss must
be within 1e-2 (relative) of the float32 one, and the float32 loss within 1e-4 of torch's
(same weights copied in), else the bench stops. Then rounds alternate the four variants, each
round timing ``--steps`` training steps per variant (images/s); the table shows the median
over rounds and the ratios of the medians.

    .venv/bin/python bench/bench_mixed_precision.py [--threads 2] [--rounds 7] [--json PATH]

``--profile`` instead times each backend op of both pynn policies (bench_cpu.profile_pynn's
wrapping), side by side per op, to show where bf16 gains or loses. ``--pynn-only`` times the
two pynn policies alone in the process under pynn's own OpenMP defaults (the default run sets
``OMP_WAIT_POLICY=PASSIVE`` for both frameworks), alternated, e.g. ``--rounds 9 --steps 20``.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = {"cnn": {"input": (32, 32, 3), "batch": 64}, "mlp": {"input": (784,), "batch": 128}}


def pynn_model(name, policy):
    import pynn
    from pynn import layers

    pynn.mixed_precision.set_global_policy(policy)
    try:
        if name == "cnn":
            stack = [layers.Input((32, 32, 3)),
                     layers.Conv2D(32, (3, 3), padding="same", activation="relu"),
                     layers.MaxPooling2D(2),
                     layers.Conv2D(64, (3, 3), padding="same", activation="relu"),
                     layers.MaxPooling2D(2), layers.Flatten(),
                     layers.Dense(128, activation="relu"), layers.Dense(10, activation="softmax")]
        else:
            stack = [layers.Input((784,)), layers.Dense(512, activation="relu"),
                     layers.Dense(256, activation="relu"), layers.Dense(10, activation="softmax")]
        model = pynn.Sequential(stack)
    finally:
        pynn.mixed_precision.set_global_policy("float32")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def torch_model(name):
    import torch
    from torch import nn

    if name == "cnn":
        net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Flatten(), nn.Linear(64 * 8 * 8, 128), nn.ReLU(),
                            nn.Linear(128, 10))
    else:
        net = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                            nn.Linear(256, 10))
    return net, torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-7), nn.CrossEntropyLoss()


def copy_to_torch(model, net, name):
    """pynn's (Keras's) weights into the torch net: Conv2D (kh, kw, c, f) -> (f, c, kh, kw),
    Dense (in, out) -> (out, in); the first Dense after Flatten reorders NHWC to NCHW."""
    import torch

    weights = model.get_weights()
    params = [p for p in net.parameters()]
    for i, (w, p) in enumerate(zip(weights, params)):
        if w.ndim == 4:
            w = w.transpose(3, 2, 0, 1)
        elif w.ndim == 2:
            if name == "cnn" and w.shape[0] == 64 * 8 * 8:
                w = w.reshape(8, 8, 64, -1).transpose(2, 0, 1, 3).reshape(64 * 8 * 8, -1)
            w = w.T
        with torch.no_grad():
            p.copy_(torch.from_numpy(np.ascontiguousarray(w)))
        assert i < len(params)


def torch_step(net, opt, loss_fn, x, y, autocast):
    import torch

    opt.zero_grad(set_to_none=True)
    if autocast:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn(net(x).float(), y)
    else:
        loss = loss_fn(net(x), y)
    loss.backward()
    opt.step()
    return float(loss.detach())


def check(name, data):
    """One step from the same start: bf16 near float32, float32 near torch."""
    import torch

    x, y = data
    f32, bf16 = pynn_model(name, "float32"), pynn_model(name, "mixed_bfloat16")
    bf16.set_weights(f32.get_weights())
    net, opt, loss_fn = torch_model(name)
    copy_to_torch(f32, net, name)
    xt = torch.from_numpy(x if x.ndim == 2 else x.transpose(0, 3, 1, 2).copy())
    torch_loss = torch_step(net, opt, loss_fn, xt, torch.from_numpy(y.astype(np.int64)), False)
    loss32 = float(np.asarray(f32.train_on_batch(x, y)).reshape(-1)[0])
    loss16 = float(np.asarray(bf16.train_on_batch(x, y)).reshape(-1)[0])
    ok = abs(loss16 - loss32) <= 1e-2 * abs(loss32) and abs(loss32 - torch_loss) <= \
        1e-4 * abs(torch_loss)
    return {"loss_float32": loss32, "loss_mixed_bfloat16": loss16, "loss_torch": torch_loss,
            "passed": bool(ok)}


def run(args):
    import torch

    import pynn

    torch.set_num_threads(args.threads)
    pynn.set_num_threads(args.threads)
    results = {"machine": {"cpu": platform.processor() or platform.machine(),
                           "threads": args.threads, "bf16_kernel":
                           pynn.mixed_precision.bf16_kernel(),
                           "note": "2 cores shared with other sessions: wall-clock medians of "
                                   "alternated rounds"},
               "versions": {"pynn": pynn.__version__, "torch": torch.__version__},
               "models": {}}
    rng = np.random.default_rng(0)
    for name in args.models:
        spec = MODELS[name]
        batch = spec["batch"]
        x = rng.random((batch,) + spec["input"], dtype=np.float32)
        y = rng.integers(0, 10, batch).astype(np.int32)
        checked = check(name, (x, y))
        print(f"{name}: check {checked}", flush=True)
        if not checked["passed"]:
            raise SystemExit(f"{name}: the check failed, not timing")
        models = {"pynn float32": pynn_model(name, "float32"),
                  "pynn mixed_bfloat16": pynn_model(name, "mixed_bfloat16")}
        nets = {"torch float32": torch_model(name), "torch autocast bf16": torch_model(name)}
        xt = torch.from_numpy(x if x.ndim == 2 else x.transpose(0, 3, 1, 2).copy())
        yt = torch.from_numpy(y.astype(np.int64))

        def step(variant, models=models, nets=nets, x=x, y=y, xt=xt, yt=yt):
            if variant.startswith("pynn"):
                models[variant].train_on_batch(x, y)
            else:
                torch_step(*nets[variant], xt, yt, autocast="autocast" in variant)

        variants = list(models) + list(nets)
        for v in variants:  # warm up: packing buffers, torch's first-call dispatch
            for _ in range(3):
                step(v)
        rates = {v: [] for v in variants}
        for _ in range(args.rounds):
            for v in variants:
                t = time.perf_counter()
                for _ in range(args.steps):
                    step(v)
                rates[v].append(args.steps * batch / (time.perf_counter() - t))
        med = {v: statistics.median(r) for v, r in rates.items()}
        row = {"batch": batch, "check": checked,
               "images_per_s": {v: round(m, 1) for v, m in med.items()},
               "rounds": {v: [round(r, 1) for r in rs] for v, rs in rates.items()},
               "bf16_vs_pynn_float32": round(med["pynn mixed_bfloat16"] / med["pynn float32"],
                                             3),
               "bf16_vs_torch_autocast": round(med["pynn mixed_bfloat16"]
                                               / med["torch autocast bf16"], 3),
               "pynn_float32_vs_torch_float32": round(med["pynn float32"]
                                                      / med["torch float32"], 3)}
        results["models"][name] = row
        print(f"{name}: " + ", ".join(f"{v} {m:,.0f} img/s" for v, m in med.items()), flush=True)
        print(f"  mixed_bfloat16 / pynn float32 = {row['bf16_vs_pynn_float32']:.2f}x, "
              f"/ torch autocast bf16 = {row['bf16_vs_torch_autocast']:.2f}x", flush=True)
    return results


def pynn_only(args):
    """Both pynn policies alone in the process, under pynn's own OpenMP defaults (no torch
    imported, no OMP_WAIT_POLICY set here): ms per train_on_batch step, the policies
    alternated every round (warm-up steps first), medians and their ratio."""
    import pynn

    pynn.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    out = {"mode": "pynn only, pynn's OpenMP defaults", "threads": args.threads,
           "bf16_kernel": pynn.mixed_precision.bf16_kernel(), "models": {}}
    for name in args.models:
        spec = MODELS[name]
        x = rng.random((spec["batch"],) + spec["input"], dtype=np.float32)
        y = rng.integers(0, 10, spec["batch"]).astype(np.int32)
        models = {p: pynn_model(name, p) for p in ("float32", "mixed_bfloat16")}
        ms = {p: [] for p in models}
        for _ in range(args.rounds):
            for p, model in models.items():
                for _ in range(3):
                    model.train_on_batch(x, y)
                t = time.perf_counter()
                for _ in range(args.steps):
                    model.train_on_batch(x, y)
                ms[p].append(1e3 * (time.perf_counter() - t) / args.steps)
        med = {p: statistics.median(v) for p, v in ms.items()}
        out["models"][name] = {"ms_per_step": {p: round(v, 3) for p, v in med.items()},
                               "rounds_ms": {p: [round(t, 3) for t in v] for p, v in ms.items()},
                               "bf16_vs_pynn_float32": round(med["float32"]
                                                             / med["mixed_bfloat16"], 3)}
        print(f"{name}: float32 {med['float32']:.3f} ms, mixed_bfloat16 "
              f"{med['mixed_bfloat16']:.3f} ms per step: "
              f"{med['float32'] / med['mixed_bfloat16']:.2f}x", flush=True)
    return out


def profile(args):
    """ms per step of each op (summed over its shapes) under float32 and mixed_bfloat16; the
    bf16_ prefix is dropped so an op's two lanes share a row."""
    from bench_cpu import profile_pynn

    import pynn

    pynn.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    out = {}
    for name in args.models:
        spec = MODELS[name]
        x = rng.random((spec["batch"],) + spec["input"], dtype=np.float32)
        y = rng.integers(0, 10, spec["batch"]).astype(np.int32)
        rows = {}
        for policy in ("float32", "mixed_bfloat16"):
            model = pynn_model(name, policy)

            class Runner:
                def step(self, i, model=model, x=x, y=y):
                    model.train_on_batch(x, y)

            for _ in range(3):
                Runner().step(0)
            prof = profile_pynn(Runner(), args.steps * args.rounds)
            for key, ms in prof["ops_ms"].items():
                op = key.split(" ")[0].removeprefix("bf16_")
                rows.setdefault(op, {}).setdefault(policy, 0.0)
                rows[op][policy] += ms
            rows.setdefault("(outside ops)", {})[policy] = prof["outside_ops_ms"]
            rows.setdefault("(step, unprofiled)", {})[policy] = prof["ms_per_step"]
        out[name] = rows
        print(f"{name}: ms per step   float32   mixed_bfloat16", flush=True)
        for op, r in sorted(rows.items(), key=lambda kv: -kv[1].get("float32", 0.0)):
            print(f"  {op:32s} {r.get('float32', 0.0):8.3f} {r.get('mixed_bfloat16', 0.0):8.3f}",
                  flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--profile", action="store_true", help="per-op times of both pynn policies")
    ap.add_argument("--pynn-only", action="store_true",
                    help="both pynn policies alone, under pynn's own OpenMP defaults")
    args = ap.parse_args(argv)
    if args.pynn_only:
        results = pynn_only(args)
    else:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        results = profile(args) if args.profile else run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
