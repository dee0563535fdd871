"""Time pynn's conv2d forward + backward (input and weight) against PyTorch CPU.

Checks the result against the float64 reference first, then reports GFLOP/s (2*M*K*F per
op, three ops per step) for pynn and for torch.nn.functional.conv2d forward+backward in its
native NCHW layout, with both libraries on the same thread count.

    .venv/bin/python bench/bench_conv_kernels.py [--threads 2] [--repeat 5] [--workspace-kib N]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pynn._native import conv, info  # noqa: E402
from tests.reference import conv_ref  # noqa: E402

SHAPES = [
    # (N, H, W, C, KH, KW, F, strides, padding)
    (64, 32, 32, 3, 3, 3, 32, (1, 1), "same"),
    (64, 16, 16, 32, 3, 3, 64, (1, 1), "same"),
    (32, 32, 32, 64, 3, 3, 64, (1, 1), "same"),
    (16, 28, 28, 128, 3, 3, 128, (1, 1), "same"),
    (64, 16, 16, 64, 1, 1, 128, (1, 1), "valid"),
]


def best_time(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def check():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 9, 7, 5)).astype(np.float32)
    k = rng.standard_normal((3, 3, 5, 4)).astype(np.float32)
    y, _ = conv.conv2d_forward(x, k, None, (1, 1), "same", (1, 1), "linear", 0.0)
    yr, _ = conv_ref.conv2d_forward(x, k, None, (1, 1), "same", (1, 1))
    np.testing.assert_allclose(y, yr, rtol=1e-4, atol=1e-4)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--workspace-kib", type=int, default=None)
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()
    info.set_num_threads(args.threads)
    if args.workspace_kib:
        conv._set_workspace_bytes(args.workspace_kib * 1024)
    check()
    torch = None
    if not args.no_torch:
        import torch

        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(1)
    print(f"{'shape':44s} {'fwd':>7s} {'bwd_in':>7s} {'bwd_w':>7s} {'pynn':>7s} "
          f"{'torch':>7s} {'ratio':>6s}   (GFLOP/s; ratio = pynn/torch time speed-up)")
    for n, h, w, c, kh, kw, f, s, pad in SHAPES:
        x = rng.standard_normal((n, h, w, c)).astype(np.float32)
        k = rng.standard_normal((kh, kw, c, f)).astype(np.float32)
        b = rng.standard_normal(f).astype(np.float32)
        y, _ = conv.conv2d_forward(x, k, b, s, pad, (1, 1), "relu", 0.0)
        dz = rng.standard_normal(y.shape).astype(np.float32)
        flop = 2.0 * y.shape[0] * y.shape[1] * y.shape[2] * f * kh * kw * c
        t_f = best_time(lambda: conv.conv2d_forward(x, k, b, s, pad, (1, 1), "relu", 0.0),
                        args.repeat)
        t_i = best_time(lambda: conv.conv2d_backward_input(dz, k, x.shape, s, pad, (1, 1)),
                        args.repeat)
        t_w = best_time(lambda: conv.conv2d_backward_weight(x, dz, k.shape, s, pad, (1, 1)),
                        args.repeat)
        total = t_f + t_i + t_w
        line = (f"{str((n, h, w, c)) + f'->{f} {kh}x{kw} {pad}':44s} {flop / t_f / 1e9:7.1f} "
                f"{flop / t_i / 1e9:7.1f} {flop / t_w / 1e9:7.1f} {3 * flop / total / 1e9:7.1f}")
        if torch is not None:
            xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
            kt = torch.from_numpy(k).permute(3, 2, 0, 1).contiguous().requires_grad_(True)
            bt = torch.from_numpy(b).requires_grad_(True)
            gt = torch.from_numpy(dz).permute(0, 3, 1, 2).contiguous()
            tpad = "same" if pad == "same" else 0

            def torch_step():
                yt = torch.relu(torch.nn.functional.conv2d(xt, kt, bt, s, tpad))
                yt.backward(gt)

            t_t = best_time(torch_step, args.repeat)
            line += f" {3 * flop / t_t / 1e9:7.1f} {t_t / total:6.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
