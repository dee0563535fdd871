"""Time pynn's conv2d forward + backward (input and weight) against PyTorch CPU.

Checks the result against the float64 reference first, then reports GFLOP/s (2*M*K*F per
op, three ops per step) for pynn, and for torch.nn.functional.conv2d forward + backward in
its native NCHW layout on the same thread count, measured in a separate process with the
caller's environment.

Two thread pools share the cores here: libgomp (pynn's prange) and OpenBLAS's pthreads
(the GEMMs). By default both spin after their parallel work, each stealing the cores the
other needs next; pynn runs with OMP_WAIT_POLICY=PASSIVE and a short OPENBLAS_THREAD_TIMEOUT
unless --default-env is given (see the numbers in the report).

    .venv/bin/python bench/bench_conv_kernels.py [--threads 2] [--repeat 10]
        [--workspace-kib N] [--default-env] [--no-torch]
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [
    # (N, H, W, C, KH, KW, F, strides, padding)
    (64, 32, 32, 3, 3, 3, 32, (1, 1), "same"),
    (64, 16, 16, 32, 3, 3, 64, (1, 1), "same"),
    (32, 32, 32, 64, 3, 3, 64, (1, 1), "same"),
    (16, 28, 28, 128, 3, 3, 128, (1, 1), "same"),
    (8, 14, 14, 256, 3, 3, 256, (1, 1), "same"),
    (64, 16, 16, 64, 1, 1, 128, (1, 1), "valid"),
]
QUIET_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "16"}


def best_time(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def make_data(shape, seed=1):
    import numpy as np

    n, h, w, c, kh, kw, f, s, pad = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    k = rng.standard_normal((kh, kw, c, f)).astype(np.float32)
    b = rng.standard_normal(f).astype(np.float32)
    ho = -(-h // s[0]) if pad == "same" else (h - kh) // s[0] + 1
    wo = -(-w // s[1]) if pad == "same" else (w - kw) // s[1] + 1
    dz = rng.standard_normal((n, ho, wo, f)).astype(np.float32)
    flop = 2.0 * n * ho * wo * f * kh * kw * c
    return x, k, b, dz, flop


def time_torch(threads, repeat):
    import torch

    torch.set_num_threads(threads)
    out = []
    for shape in SHAPES:
        x, k, b, dz, flop = make_data(shape)
        s, pad = shape[7], shape[8]
        xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
        kt = torch.from_numpy(k).permute(3, 2, 0, 1).contiguous().requires_grad_(True)
        bt = torch.from_numpy(b).requires_grad_(True)
        gt = torch.from_numpy(dz).permute(0, 3, 1, 2).contiguous()
        tpad = "same" if pad == "same" else 0

        def step():
            torch.relu(torch.nn.functional.conv2d(xt, kt, bt, s, tpad)).backward(gt)

        out.append(best_time(step, repeat))
    return out


def check(conv):
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from tests.reference import conv_ref

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 9, 7, 5)).astype(np.float32)
    k = rng.standard_normal((3, 3, 5, 4)).astype(np.float32)
    dz = rng.standard_normal((3, 9, 7, 4)).astype(np.float32)
    args = ((1, 1), "same", (1, 1))
    y, _ = conv.conv2d_forward(x, k, None, *args, "linear", 0.0)
    np.testing.assert_allclose(y, conv_ref.conv2d_forward_ref(x, k, None, *args)[0], rtol=1e-4,
                               atol=1e-4)
    np.testing.assert_allclose(conv.conv2d_backward_input(dz, k, x.shape, *args),
                               conv_ref.conv2d_backward_input_ref(dz, k, x.shape, *args),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(conv.conv2d_backward_weight(x, dz, k.shape, *args),
                               conv_ref.conv2d_backward_weight_ref(x, dz, k.shape, *args),
                               rtol=1e-4, atol=1e-4)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--workspace-kib", type=int, default=None)
    ap.add_argument("--default-env", action="store_true",
                    help="keep libgomp/OpenBLAS spin-waiting defaults for pynn")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--torch-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_only:
        print(json.dumps(time_torch(args.threads, args.repeat)))
        return
    torch_times = None
    if not args.no_torch:
        cmd = [sys.executable, __file__, "--torch-only", "--threads", str(args.threads),
               "--repeat", str(args.repeat)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        torch_times = json.loads(res.stdout.strip().splitlines()[-1])
    if not args.default_env:
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)   # before libgomp / OpenBLAS load
    sys.path.insert(0, str(ROOT))
    from pynn._native import conv, info

    info.set_num_threads(args.threads)
    if args.workspace_kib:
        conv._set_workspace_bytes(args.workspace_kib * 1024)
    check(conv)
    print(f"{'shape':38s} {'fwd':>6s} {'bwd_in':>6s} {'bwd_w':>6s} {'pynn':>6s} "
          f"{'torch':>6s} {'speedup':>7s}   (GFLOP/s, fwd = conv + bias + relu)")
    for i, shape in enumerate(SHAPES):
        x, k, b, dz, flop = make_data(shape)
        kh, kw, f, s, pad = shape[4:]
        t_f = best_time(lambda: conv.conv2d_forward(x, k, b, s, pad, (1, 1), "relu", 0.0),
                        args.repeat)
        t_i = best_time(lambda: conv.conv2d_backward_input(dz, k, x.shape, s, pad, (1, 1)),
                        args.repeat)
        t_w = best_time(lambda: conv.conv2d_backward_weight(x, dz, k.shape, s, pad, (1, 1)),
                        args.repeat)
        total = t_f + t_i + t_w
        name = f"{x.shape}->{f} {kh}x{kw} {pad}"
        line = (f"{name:38s} {flop / t_f / 1e9:6.1f} {flop / t_i / 1e9:6.1f} "
                f"{flop / t_w / 1e9:6.1f} {3 * flop / total / 1e9:6.1f}")
        if torch_times:
            t_t = torch_times[i]
            line += f" {3 * flop / t_t / 1e9:6.1f} {t_t / total:7.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
