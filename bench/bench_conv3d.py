"""Time pynn's conv3d ops (forward, backward_input, backward_weight) against
torch.nn.functional.conv3d on the CPU.


Each case is first checked on a cut-down batch against the float64 NumPy oracle
(tests/reference/conv3d_ref.py), then each op is timed for pynn and for torch (its conv3d
forward, and aten.convolution_backward for its input and weight gradients; NCDHW, float32,
the same thread count, in this process). pynn and torch alternate in rounds so both see the
same machine load; each round keeps the best of --repeat calls, the table shows the median
round.

    .venv/bin/python bench/bench_conv3d.py [--threads 2] [--repeat 3] [--rounds 3] [--no-torch]
"""

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_conv_kernels import best_time

# name -> (x shape N, D, H, W, C; kernel extents; filters; strides; padding)
CASES = {
    "video_3x3x3": ((8, 16, 32, 32, 16), (3, 3, 3), 32, (1, 1, 1), "same"),
    "video_3x3x3_s2": ((8, 16, 32, 32, 32), (3, 3, 3), 64, (2, 2, 2), "same"),
}


def data(shape, kernel, filters, seed=1):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    w = (rng.standard_normal((*kernel, shape[-1], filters)) * 0.1).astype(np.float32)
    return x, w


def check(cpu, x, w, strides, padding):
    """max relative error of y, dx, dkernel on two samples against the float64 oracle."""
    import numpy as np

    from tests.reference import conv3d_ref as ref

    x = x[:2]
    y, _ = cpu.conv3d_forward(x, w, None, strides, padding, (1, 1, 1), 1, "linear", 0.0)
    dz = np.random.default_rng(2).standard_normal(y.shape).astype(np.float32)
    got = (y, cpu.conv3d_backward_input(dz, w, x.shape, strides, padding),
           cpu.conv3d_backward_weight(x, dz, w.shape, strides, padding))
    want = (ref.conv3d_forward_ref(x, w, None, strides, padding, (1, 1, 1))[0],
            ref.conv3d_backward_input_ref(dz, w, x.shape, strides, padding, (1, 1, 1)),
            ref.conv3d_backward_weight_ref(x, dz, w.shape, strides, padding, (1, 1, 1)))
    err = max(float(np.abs(g - r).max() / max(np.abs(r).max(), 1e-12))
              for g, r in zip(got, want))
    if err > 1e-4:
        raise SystemExit(f"relative error {err:.2e} against the reference")
    return err


def pynn_ops(cpu, x, w, strides, padding):
    y, _ = cpu.conv3d_forward(x, w, None, strides, padding)
    dz = (y * 0.5).astype(x.dtype)
    return {
        "forward": lambda: cpu.conv3d_forward(x, w, None, strides, padding),
        "backward_input": lambda: cpu.conv3d_backward_input(dz, w, x.shape, strides, padding),
        "backward_weight": lambda: cpu.conv3d_backward_weight(x, dz, w.shape, strides,
                                                              padding),
    }


def torch_ops(x, w, strides, padding):
    import torch
    import torch.nn.functional as tf

    tx = torch.from_numpy(x).permute(0, 4, 1, 2, 3).contiguous()
    tw = torch.from_numpy(w).permute(4, 3, 0, 1, 2).contiguous()
    # torch's 'same' takes stride 1 only: Keras's pads written out (the odd one after).
    pads = []
    for n, k, s in zip(x.shape[1:4], w.shape[:3], strides):
        out = -(-n // s) if padding == "same" else (n - k) // s + 1
        total = max((out - 1) * s + k - n, 0) if padding == "same" else 0
        pads += [total // 2, total - total // 2]
    flat = [pads[4], pads[5], pads[2], pads[3], pads[0], pads[1]]

    xp = tf.pad(tx.detach(), flat).contiguous()
    weight = tw.detach()
    with torch.no_grad():
        dz = tf.conv3d(xp, weight, stride=strides) * 0.5
    zeros = [0, 0, 0]

    def backward(mask):
        # aten's own backward kernel on the padded input: no forward inside the timing
        return torch.ops.aten.convolution_backward(dz, xp, weight, None, list(strides), zeros,
                                                   [1, 1, 1], False, zeros, 1, mask)

    return {
        "forward": lambda: tf.conv3d(tf.pad(tx.detach(), flat), weight, stride=strides),
        "backward_input": lambda: backward([True, False, False]),
        "backward_weight": lambda: backward([False, True, False]),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()

    from pynn._native import info
    from pynn.backend import cpu

    info.set_num_threads(args.threads)
    if not args.no_torch:
        import torch

        torch.set_num_threads(args.threads)
    print(f"threads {args.threads}; ms per op, median of {args.rounds} rounds of "
          f"best-of-{args.repeat}; torch: aten's conv3d and convolution_backward")
    print(f"{'case':<16}{'op':<17}{'rel err':>9}{'pynn':>9}{'torch':>9}{'ratio':>7}")
    for name, (shape, kernel, filters, strides, padding) in CASES.items():
        x, w = data(shape, kernel, filters)
        err = check(cpu, x, w, strides, padding)
        ours = pynn_ops(cpu, x, w, strides, padding)
        theirs = None if args.no_torch else torch_ops(x, w, strides, padding)
        for op in ours:
            mine, other = [], []
            for _ in range(args.rounds):
                mine.append(best_time(ours[op], args.repeat))
                if theirs is not None:
                    other.append(best_time(theirs[op], args.repeat))
            ms = statistics.median(mine) * 1e3
            tms = statistics.median(other) * 1e3 if other else float("nan")
            print(f"{name:<16}{op:<17}{err:>9.1e}{ms:>9.1f}{tms:>9.1f}{ms / tms:>7.2f}")


if __name__ == "__main__":
    main()
