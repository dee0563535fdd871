"""float32 activations: pynn's native ops beside PyTorch's, and Dense layers whose epilogue
runs them, at one thread count, alternated in one process.

    python -m bench.bench_activation [--threads 1] [--rounds 9] [--json PATH]
                                     [--baseline-so PATH] [--baseline-loss-so PATH]

Elementwise forward (and, where the derivative calls a transcendental function, backward)
over a (256, 1024) float32 array; softmax over its rows (backward: rows of 10,000); sparse
categorical and binary crossentropy from logits and categorical from probabilities, with
their gradients, at 1,000 and 10,000 classes; a 32 x 1024 -> 10,000 softmax layer's
forward; then predict_on_batch of a one-layer model Dense(256, act) on (64, 784). Each
round times every contender back to back (pynn, PyTorch, and with --baseline-so /
--baseline-loss-so another build's activation / loss module, e.g. the one before
native/_vmath.h, loaded under the same name), alternating who goes first; the table quotes
medians of the rounds' per-call times. Every pynn result is first checked against float64
(relative 1e-5 of the output's scale).
"""

import argparse
import importlib.machinery
import importlib.util
import json
import statistics
import sys
import time

import numpy as np

import pynn
from pynn import layers

ACTS = ("tanh", "sigmoid", "softmax", "gelu", "silu", "elu", "softplus", "mish",
        "exponential", "relu")
BACKWARD = ("gelu", "silu", "softplus", "mish")


def _torch_fns(torch):
    f = torch.nn.functional
    return {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "softmax": lambda t: f.softmax(t, -1),
            "gelu": f.gelu, "silu": f.silu, "elu": f.elu, "softplus": f.softplus,
            "mish": f.mish, "exponential": torch.exp, "relu": torch.relu}


def _load_so(path, module="activation"):
    """Another build's native module, under the name its init function expects."""
    name = f"pynn._native.{module}"
    loader = importlib.machinery.ExtensionFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    saved = sys.modules.get(name)
    loader.exec_module(module)
    if saved is not None:   # keep this build's module the one `import` finds
        sys.modules[name] = saved
    return module


def _per_call(fn, n):
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def _rounds(contenders, rounds, n):
    times = {k: [] for k in contenders}
    order = list(contenders)
    for r in range(rounds):
        for k in (order if r % 2 == 0 else order[::-1]):
            times[k].append(_per_call(contenders[k], n))
    return {k: statistics.median(v) * 1e6 for k, v in times.items()}


def _check(name, got, x):
    import torch

    want = _torch_fns(torch)[name](torch.from_numpy(x.astype(np.float64))).numpy()
    scale = float(np.abs(want).max()) or 1.0
    err = float(np.abs(got - want).max()) / scale
    assert err < 1e-5, (name, err)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--json")
    p.add_argument("--baseline-so", help="another build's activation .so to time beside")
    p.add_argument("--baseline-loss-so", help="another build's loss .so to time beside")
    args = p.parse_args(argv)

    import torch

    # this build's modules first: loading another build's under the same name rebinds it
    from pynn._native import activation as act_mod
    from pynn._native import dense
    from pynn._native import loss as loss_mod
    pynn.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    base = _load_so(args.baseline_so) if args.baseline_so else None
    base_loss = _load_so(args.baseline_loss_so, "loss") if args.baseline_loss_so else None
    tf = _torch_fns(torch)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((256, 1024)) * 3).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    tx = torch.from_numpy(x)
    rows = []
    for name in ACTS:
        _check(name, act_mod.activation_forward(x, name, 0.0 if name != "elu" else 1.0), x)
        c = {"pynn": lambda n=name: act_mod.activation_forward(x, n, 1.0 if n == "elu" else 0.0),
             "torch": lambda n=name: tf[n](tx)}
        if base is not None:
            c["baseline"] = lambda n=name: base.activation_forward(
                x, n, 1.0 if n == "elu" else 0.0)
        rows.append({"op": f"{name} forward", **_rounds(c, args.rounds, 10)})
        if name in BACKWARD:
            y = act_mod.activation_forward(x, name, 0.0)
            txg = tx.clone().requires_grad_(True)
            ty = tf[name](txg)
            tdy = torch.from_numpy(dy)
            c = {"pynn": lambda n=name: act_mod.activation_backward(dy, x, y, n, 0.0),
                 "torch": lambda: torch.autograd.grad(ty, txg, tdy, retain_graph=True)}
            if base is not None:
                c["baseline"] = lambda n=name: base.activation_backward(dy, x, y, n, 0.0)
            rows.append({"op": f"{name} backward", **_rounds(c, args.rounds, 10)})
    # softmax backward over wide rows (a vocabulary head's), from the output
    xs = (rng.standard_normal((128, 10000)) * 3).astype(np.float32)
    ys = act_mod.activation_forward(xs, "softmax")
    dys = rng.standard_normal(xs.shape).astype(np.float32)
    tys, tdys = torch.from_numpy(ys), torch.from_numpy(dys)
    c = {"pynn": lambda: act_mod.activation_backward(dys, None, ys, "softmax"),
         "torch": lambda: torch._softmax_backward_data(tdys, tys, -1, torch.float32)}
    if base is not None:
        c["baseline"] = lambda: base.activation_backward(dys, None, ys, "softmax")
    rows.append({"op": "softmax backward (128, 10000)", **_rounds(c, args.rounds, 10)})
    # The softmax inside a loss from logits: sparse categorical crossentropy and its
    # gradient over 128 rows (torch: cross_entropy and autograd).
    for k in (1000, 10000):
        logits = (rng.standard_normal((128, k)) * 3).astype(np.float32)
        labels = rng.integers(0, k, 128).astype(np.int32)
        tl = torch.from_numpy(logits).requires_grad_(True)
        tlab = torch.from_numpy(labels.astype(np.int64))

        def torch_loss(tl=tl, tlab=tlab):
            return torch.autograd.grad(torch.nn.functional.cross_entropy(tl, tlab), tl)

        value, grad = loss_mod.loss_forward_backward("sparse_categorical_crossentropy", labels,
                                                     logits, True)
        want = torch.nn.functional.cross_entropy(tl.double(), tlab).item()
        assert abs(value - want) <= 1e-5 * abs(want), (k, value, want)
        c = {"pynn": lambda lg=logits, lb=labels: loss_mod.loss_forward_backward(
                 "sparse_categorical_crossentropy", lb, lg, True),
             "torch": torch_loss}
        if base_loss is not None:
            c["baseline"] = lambda lg=logits, lb=labels: base_loss.loss_forward_backward(
                "sparse_categorical_crossentropy", lb, lg, True)
        rows.append({"op": f"sparse CE from logits (128, {k}) + grad",
                     **_rounds(c, args.rounds, 10)})
        # multi-label: binary crossentropy from logits, 1% positives
        targets = (rng.random((128, k)) < 0.01).astype(np.float32)
        tt = torch.from_numpy(targets)

        def torch_bce(tl=tl, tt=tt):
            return torch.autograd.grad(
                torch.nn.functional.binary_cross_entropy_with_logits(tl, tt), tl)

        value, _ = loss_mod.loss_forward_backward("binary_crossentropy", targets, logits, True)
        want = torch.nn.functional.binary_cross_entropy_with_logits(tl.double(),
                                                                    tt.double()).item()
        assert abs(value - want) <= 1e-5 * abs(want), (k, value, want)
        c = {"pynn": lambda lg=logits, tg=targets: loss_mod.loss_forward_backward(
                 "binary_crossentropy", tg, lg, True),
             "torch": torch_bce}
        if base_loss is not None:
            c["baseline"] = lambda lg=logits, tg=targets: base_loss.loss_forward_backward(
                "binary_crossentropy", tg, lg, True)
        rows.append({"op": f"binary CE from logits (128, {k}) + grad",
                     **_rounds(c, args.rounds, 10)})
        # categorical crossentropy from softmax probabilities and one-hot targets, torch
        # taking Keras's own formula (normalize, clip, -sum t log p, mean)
        probs = torch.softmax(torch.from_numpy(logits), -1).numpy()
        onehot = np.eye(k, dtype=np.float32)[labels]
        tp = torch.from_numpy(probs).requires_grad_(True)
        toh = torch.from_numpy(onehot)

        def torch_cce(tp=tp, toh=toh):
            q = torch.clamp(tp / tp.sum(-1, keepdim=True), 1e-7, 1 - 1e-7)
            return torch.autograd.grad(-(toh * torch.log(q)).sum(-1).mean(), tp)

        c = {"pynn": lambda pr=probs, oh=onehot: loss_mod.loss_forward_backward(
                 "categorical_crossentropy", oh, pr, False),
             "torch": torch_cce}
        if base_loss is not None:
            c["baseline"] = lambda pr=probs, oh=onehot: base_loss.loss_forward_backward(
                "categorical_crossentropy", oh, pr, False)
        rows.append({"op": f"categorical CE from probabilities (128, {k}) + grad",
                     **_rounds(c, args.rounds, 10)})
    # A wide softmax layer (a vocabulary head): dense_forward with its softmax epilogue.
    xw = rng.random((32, 1024), dtype=np.float32)
    kw = ((rng.random((1024, 10000), dtype=np.float32) - 0.5) / 30).astype(np.float32)
    bw = np.zeros(10000, np.float32)
    lin = torch.nn.Linear(1024, 10000)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(kw.T.copy()))
        lin.bias.zero_()
    txw = torch.from_numpy(xw)

    def torch_head():
        with torch.no_grad():
            return torch.softmax(lin(txw), -1)
    assert np.abs(dense.dense_forward(xw, kw, bw, "softmax")[0] - torch_head().numpy()).max() \
        <= 1e-6
    c = {"pynn": lambda: dense.dense_forward(xw, kw, bw, "softmax"), "torch": torch_head}
    rows.append({"op": "dense_forward softmax 32x1024->10000", **_rounds(c, args.rounds, 3)})
    # A Dense layer's epilogue: one-layer models, predict_on_batch at batch 64.
    xb = rng.random((64, 784), dtype=np.float32)
    for name in ("softmax", "tanh", "sigmoid", "gelu", "relu"):
        model = pynn.Sequential([layers.Input((784,)), layers.Dense(256, activation=name)])
        lin = torch.nn.Linear(784, 256)
        kernel, bias = model.get_weights()
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(kernel.T.copy()))
            lin.bias.copy_(torch.from_numpy(bias))
        txb = torch.from_numpy(xb)

        def torch_predict(n=name):
            with torch.no_grad():
                return tf[n](lin(txb))
        got = model.predict_on_batch(xb)
        want = torch_predict().numpy()
        assert np.abs(got - want).max() <= 1e-5 * max(1.0, float(np.abs(want).max())), name
        c = {"pynn": lambda m=model: m.predict_on_batch(xb), "torch": torch_predict}
        rows.append({"op": f"Dense(256, {name}) predict b64", **_rounds(c, args.rounds, 50)})

    print(f"pynn activations, {args.threads} thread(s), medians of {args.rounds} alternated "
          f"rounds, microseconds per call")
    has_base = base is not None or base_loss is not None
    cols = ["pynn", "torch"] + (["baseline"] if has_base else [])
    print("| op | " + " | ".join(cols) + " | torch / pynn |" + (
        " baseline / pynn |" if has_base else ""))
    print("|---|" + "---:|" * (len(cols) + 1 + has_base))
    for r in rows:
        line = f"| {r['op']} | " + " | ".join(f"{r[k]:.1f}" if k in r else "-" for k in cols)
        line += f" | {r['torch'] / r['pynn']:.2f}x |"
        if has_base:
            line += f" {r['baseline'] / r['pynn']:.2f}x |" if "baseline" in r else " - |"
        print(line)
    if args.json:
        from bench.bench_cpu import machine_info
        with open(args.json, "w") as f:
            json.dump({"command": "python -m bench.bench_activation " + " ".join(
                          sys.argv[1:] if argv is None else argv),
                       "machine": machine_info(args.threads), "rounds": args.rounds,
                       "microseconds_per_call": rows}, f, indent=1)
            f.write("\n")
        print("wrote", args.json)


if __name__ == "__main__":
    main()
