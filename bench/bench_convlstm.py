"""Time a ConvLSTM2D training step (forward + backward: input, kernel, recurrent kernel and
bias gradients) in pynn against torch on the CPU.

torch runs it twice: a hand-written ConvLSTM cell (the usual reference: the input conv of all
frames at once as one conv2d over N*T, then per step a 'same' conv2d of h and the gates,
autograd for backward) and Keras 3's ConvLSTM2D on the torch backend. Each case is first
checked on a cut-down batch against the float64 NumPy oracle (tests/reference/convlstm_ref.py)
and against the hand-written torch cell; then pynn and torch alternate in rounds so both see
the same machine load; each round keeps the best of --repeat steps, the table shows the
median round (ms per step; ratio = pynn / torch).

    .venv/bin/python bench/bench_convlstm.py [--threads 2] [--repeat 3] [--rounds 3]
                                             [--no-torch] [--no-keras]
"""

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_conv_kernels import best_time

# name -> (x shape N, T, H, W, C; filters; kernel size)
CASES = {
    "radar_3x3": ((8, 8, 32, 32, 8), 16, 3),
    "mnist_5x5": ((16, 10, 16, 16, 1), 32, 5),
}


def data(shape, filters, k, seed=1):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    c = shape[-1]
    weights = [(rng.standard_normal((k, k, c, 4 * filters)) * 0.1).astype(np.float32),
               (rng.standard_normal((k, k, filters, 4 * filters)) * 0.1).astype(np.float32),
               (rng.standard_normal(4 * filters) * 0.1).astype(np.float32)]
    return x, weights


def pynn_layer(x, weights, filters, k):
    import pynn

    layer = pynn.layers.ConvLSTM2D(filters, k, padding="same", return_sequences=True)
    layer.build((None,) + x.shape[1:])
    layer.set_weights(weights)
    return layer


def pynn_step(layer, x, dy):
    def step():
        layer(x, training=True)
        return layer.backward(dy)
    return step


def torch_cell(x, weights, filters, k):
    """The hand-written cell: -> step() running forward + backward, and forward() alone."""
    import torch
    import torch.nn.functional as tf

    n, t, h, w, c = x.shape
    tx = torch.from_numpy(x).permute(0, 1, 4, 2, 3).reshape(n * t, c, h, w).contiguous()
    tx.requires_grad_(True)
    kernel = torch.from_numpy(weights[0]).permute(3, 2, 0, 1).contiguous().requires_grad_(True)
    rkernel = torch.from_numpy(weights[1]).permute(3, 2, 0, 1).contiguous().requires_grad_(True)
    bias = torch.from_numpy(weights[2]).clone().requires_grad_(True)
    pad = (k - 1) // 2   # odd k: Keras's 'same'

    def forward():
        xw = tf.conv2d(tx, kernel, bias, padding=pad).reshape(n, t, 4 * filters, h, w)
        hs = torch.zeros(n, filters, h, w)
        cs = torch.zeros(n, filters, h, w)
        out = []
        for s in range(t):
            z = xw[:, s] + tf.conv2d(hs, rkernel, padding=pad)
            i, f, g, o = z.chunk(4, dim=1)
            cs = torch.sigmoid(f) * cs + torch.sigmoid(i) * torch.tanh(g)
            hs = torch.sigmoid(o) * torch.tanh(cs)
            out.append(hs)
        return torch.stack(out, 1).permute(0, 1, 3, 4, 2)   # (N, T, H, W, F)

    def step(dy):
        for p in (tx, kernel, rkernel, bias):
            p.grad = None
        forward().backward(dy)
        return tx.grad

    return step, forward


def keras_step(x, weights, filters, k):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras
    import torch

    layer = keras.layers.ConvLSTM2D(filters, k, padding="same", return_sequences=True)
    layer.build((None,) + x.shape[1:])
    layer.set_weights(weights)
    tx = torch.from_numpy(x).requires_grad_(True)

    def step(dy):
        for v in layer.trainable_weights:
            v.value.grad = None
        tx.grad = None
        layer(tx, training=True).backward(dy)
        return tx.grad

    return step


def check(x, weights, filters, k):
    """max relative error of the output (against the float64 oracle) and of the input
    gradient (against the torch cell) on two samples."""
    import numpy as np
    import torch

    from tests.reference import convlstm_ref as ref

    x = x[:2]
    layer = pynn_layer(x, weights, filters, k)
    y = layer(x, training=True)
    want, _, _ = ref.convlstm_layer_ref(x, *weights, 2, 1, "same", 1, return_sequences=True)
    err = float(np.abs(y - want).max() / np.abs(want).max())
    dy = np.cos(np.arange(y.size)).reshape(y.shape).astype(np.float32)
    dx = layer.backward(dy)
    step, _ = torch_cell(x, weights, filters, k)
    tdx = step(torch.from_numpy(dy)).reshape(x.shape[0], x.shape[1], x.shape[4], *x.shape[2:4])
    tdx = tdx.permute(0, 1, 3, 4, 2).numpy()
    err = max(err, float(np.abs(dx - tdx).max() / np.abs(tdx).max()))
    if err > 1e-4:
        raise SystemExit(f"relative error {err:.2e} against the reference")
    return err


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--no-keras", action="store_true")
    args = parser.parse_args()

    import numpy as np

    from pynn._native import info

    info.set_num_threads(args.threads)
    if not args.no_torch:
        import torch

        torch.set_num_threads(args.threads)
    print(f"threads {args.threads}; ms per training step (forward + backward), median of "
          f"{args.rounds} rounds of best-of-{args.repeat}; ConvLSTM2D 'same', "
          f"return_sequences")
    print(f"{'case':<12}{'rel err':>9}{'pynn':>9}{'torch cell':>12}{'ratio':>7}"
          f"{'keras/torch':>13}{'ratio':>7}")
    for name, (shape, filters, k) in CASES.items():
        x, weights = data(shape, filters, k)
        err = check(x, weights, filters, k) if not args.no_torch else float("nan")
        layer = pynn_layer(x, weights, filters, k)
        y = layer(x)
        dy = np.cos(np.arange(y.size)).reshape(y.shape).astype(np.float32)
        runners = {"pynn": pynn_step(layer, x, dy)}
        if not args.no_torch:
            tdy = torch.from_numpy(dy)
            cell, _ = torch_cell(x, weights, filters, k)
            runners["cell"] = lambda: cell(tdy)
            if not args.no_keras:
                kstep = keras_step(x, weights, filters, k)
                runners["keras"] = lambda: kstep(tdy)
        times = {key: [] for key in runners}
        for _ in range(args.rounds):
            for key, run in runners.items():
                times[key].append(best_time(run, args.repeat))
        ms = {key: statistics.median(v) * 1e3 for key, v in times.items()}
        nan = float("nan")
        cell_ms, keras_ms = ms.get("cell", nan), ms.get("keras", nan)
        print(f"{name:<12}{err:>9.1e}{ms['pynn']:>9.1f}{cell_ms:>12.1f}"
              f"{ms['pynn'] / cell_ms:>7.2f}{keras_ms:>13.1f}{ms['pynn'] / keras_ms:>7.2f}")


if __name__ == "__main__":
    main()
