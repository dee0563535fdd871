"""Time pynn's MultiHeadAttention (the attention ops and its four projections) against
PyTorch CPU's nn.MultiheadAttention: one training step (forward, backward to every weight
and the input) and one inference forward of self-attention, float32, the same thread count,
in this process.

Each case is first checked: pynn's layer given torch's weights (Keras's layout: in_proj
split into query, key, value kernels (D, H, K); out_proj as (H, V, D)) must give torch's
output (5e-5) and input gradient. pynn and torch alternate in rounds so both see the same
machine load; each round keeps the best of --repeat calls, the table shows the median round.

    .venv/bin/python bench/bench_attention.py [--threads 2] [--repeat 5] [--rounds 5]
"""

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_conv_kernels import best_time

# name -> (batch, steps, model width, heads)
CASES = {
    "b32_t64_d256_h8": (32, 64, 256, 8),
    "b16_t128_d512_h8": (16, 128, 512, 8),
    "b8_t256_d256_h4": (8, 256, 256, 4),
}


def _layers(n, t, d, h, seed=1):
    import numpy as np
    import torch

    from pynn import layers

    torch.manual_seed(seed)
    ref = torch.nn.MultiheadAttention(d, h, batch_first=True)
    for p in ref.parameters():   # torch starts its biases at zero: make them count
        torch.nn.init.uniform_(p, -0.1, 0.1)
    k = d // h
    mine = layers.MultiHeadAttention(h, k)
    x = np.random.default_rng(seed).standard_normal((n, t, d)).astype(np.float32)
    mine(x, x)
    w = ref.in_proj_weight.detach().numpy()
    bias = ref.in_proj_bias.detach().numpy()
    weights = []
    for i in range(3):
        weights += [w[i * d:(i + 1) * d].T.reshape(d, h, k), bias[i * d:(i + 1) * d].reshape(h, k)]
    weights += [ref.out_proj.weight.detach().numpy().T.reshape(h, k, d),
                ref.out_proj.bias.detach().numpy()]
    mine.set_weights(weights)
    return ref, mine, x


def run_case(name, repeat, rounds):
    import numpy as np
    import torch

    n, t, d, h = CASES[name]
    ref, mine, x = _layers(n, t, d, h)
    dy = np.random.default_rng(2).standard_normal((n, t, d)).astype(np.float32)
    tx = torch.tensor(x, requires_grad=True)
    tdy = torch.tensor(dy)
    want, _ = ref(tx, tx, tx, need_weights=False)
    want.backward(tdy)
    got = np.asarray(mine(x, x, training=True))
    dq, dv = mine.backward(dy)
    err = float(np.abs(got - want.detach().numpy()).max())
    gerr = float(np.abs(dq + dv - tx.grad.numpy()).max())
    if err > 5e-5 or gerr > 5e-4:
        raise SystemExit(f"{name}: pynn differs from torch (output {err:.3g}, dx {gerr:.3g})")

    def pynn_step():
        mine(x, x, training=True)
        mine.backward(dy)

    def torch_step():
        tx.grad = None
        ref.zero_grad(set_to_none=True)
        out, _ = ref(tx, tx, tx, need_weights=False)
        out.backward(tdy)

    def pynn_predict():
        mine(x, x)

    def torch_predict():
        with torch.inference_mode():
            ref(tx, tx, tx, need_weights=False)

    times = {k: [] for k in ("pynn_step", "torch_step", "pynn_predict", "torch_predict")}
    for _ in range(rounds):
        for key, fn in (("pynn_step", pynn_step), ("torch_step", torch_step),
                        ("pynn_predict", pynn_predict), ("torch_predict", torch_predict)):
            times[key].append(best_time(fn, repeat))
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return med, err


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--only", default="")
    args = p.parse_args(argv)
    import torch

    import pynn

    pynn.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}; ms, median of {args.rounds} alternated rounds (best of "
          f"{args.repeat} each); ratio = torch ms / pynn ms")
    print("| case | step pynn | step torch | ratio | predict pynn | predict torch | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in CASES:
        if args.only and args.only not in name:
            continue
        m, _ = run_case(name, args.repeat, args.rounds)
        print(f"| {name} | {m['pynn_step']:.2f} | {m['torch_step']:.2f} | "
              f"{m['torch_step'] / m['pynn_step']:.2f}x | {m['pynn_predict']:.2f} | "
              f"{m['torch_predict']:.2f} | {m['torch_predict'] / m['pynn_predict']:.2f}x |")


if __name__ == "__main__":
    main()
