"""Time pynn's normalization ops (batch, layer and group norm) forward + backward against
PyTorch CPU.

Each case is first checked against the float64 NumPy oracle
(tests/reference/normalization_ref.py), then one training step (forward with batch
statistics, backward with the input gradient) is timed for pynn and for torch's
BatchNorm2d / LayerNorm / GroupNorm (channels_last where torch has it, float32, the same
thread count, in this process). pynn and torch alternate in rounds so both see the same
machine load; each round keeps the best of --repeat calls, the table shows the median round.

    .venv/bin/python bench/bench_normalization.py [--threads 2] [--repeat 5] [--rounds 3]
        [--no-torch]
"""

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_conv_kernels import best_time

# name -> (x shape, groups: None for batch norm, 1 for layer norm over the last axis)
CASES = {
    "batch_norm": ((64, 32, 32, 64), None),
    "layer_norm": ((4096, 512), 1),
    "group_norm_32": ((64, 32, 32, 64), 32),
    "group_norm_4": ((64, 32, 32, 64), 4),
}


def data(shape, seed=1):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    c = shape[-1]
    return x, dy, rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(
        np.float32)


def pynn_step(cpu, groups, x, dy, gamma, beta):
    import numpy as np

    c = x.shape[-1]
    if groups is None:
        mm, mv = np.zeros(c, np.float32), np.ones(c, np.float32)

        def step():
            y, mean, inv = cpu.batch_norm_forward(x, gamma, beta, mm, mv, -1, 0.99, 1e-3, True)
            return y, cpu.batch_norm_backward(dy, x, gamma, mean, inv, -1, True, True)
    else:
        def step():
            y, mean, inv = cpu.group_norm_forward(x, gamma, beta, groups, 1e-3, False)
            return y, cpu.group_norm_backward(dy, x, gamma, mean, inv, groups, False, True)
    return step


def check(cpu, name, groups, x, dy, gamma, beta):
    """max relative error of y, dx, dgamma, dbeta against the float64 reference."""
    import numpy as np

    from tests.reference import normalization_ref as ref

    y, (dx, dg, db) = pynn_step(cpu, groups, x, dy, gamma, beta)()
    c = x.shape[-1]
    if groups is None:
        want_y, mean, inv, _, _ = ref.batch_norm_forward_ref(
            x, gamma, beta, np.zeros(c), np.ones(c), training=True)
        want = (want_y, *ref.batch_norm_backward_ref(dy, x, gamma, mean, inv))
    else:
        want_y, mean, inv = ref.group_norm_forward_ref(x, gamma, beta, groups)
        want = (want_y, *ref.group_norm_backward_ref(dy, x, gamma, mean, inv, groups))
    err = max(float(np.abs(g - w).max() / max(np.abs(w).max(), 1e-12))
              for g, w in zip((y, dx, dg, db), want))
    if err > 1e-4:
        raise SystemExit(f"{name}: relative error {err:.2e} against the reference")
    return err


def torch_step(name, groups, x, dy, gamma, beta):
    import torch

    c = x.shape[-1]
    if groups is None:
        module = torch.nn.BatchNorm2d(c, eps=1e-3).to(memory_format=torch.channels_last)
    elif x.ndim == 2:
        module = torch.nn.LayerNorm(c, eps=1e-3)
    else:
        module = torch.nn.GroupNorm(groups, c, eps=1e-3)
    if x.ndim == 4:
        tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        tdy = torch.from_numpy(dy).permute(0, 3, 1, 2).contiguous(
            memory_format=torch.channels_last)
    else:
        tx, tdy = torch.from_numpy(x), torch.from_numpy(dy)
    tx.requires_grad_(True)
    params = [tx, *module.parameters()]

    def step():
        return torch.autograd.grad(module(tx), params, tdy)
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()

    from pynn._native import info
    from pynn.backend import cpu

    info.set_num_threads(args.threads)
    torch = None
    if not args.no_torch:
        import torch

        torch.set_num_threads(args.threads)
    print(f"threads {args.threads}; ms per training step (forward + backward), median of "
          f"{args.rounds} rounds of best-of-{args.repeat}")
    print(f"{'case':<16}{'shape':<20}{'rel err':>9}{'pynn':>9}{'torch':>9}")
    for name, (shape, groups) in CASES.items():
        x, dy, gamma, beta = data(shape)
        err = check(cpu, name, groups, x, dy, gamma, beta)
        ours = pynn_step(cpu, groups, x, dy, gamma, beta)
        theirs = torch_step(name, groups, x, dy, gamma, beta) if torch else None
        p_times, t_times = [], []
        for _ in range(args.rounds):
            p_times.append(best_time(ours, args.repeat) * 1e3)
            if theirs:
                t_times.append(best_time(theirs, args.repeat) * 1e3)
        t_med = f"{statistics.median(t_times):9.2f}" if t_times else f"{'-':>9}"
        print(f"{name:<16}{shape!s:<20}{err:9.1e}{statistics.median(p_times):9.2f}{t_med}")


if __name__ == "__main__":
    main()
