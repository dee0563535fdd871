"""Time pynn's 3-D pooling and spatial ops (maxpool3d, avgpool3d, pad3d, upsample3d) on the
CPU beside the PyTorch / NumPy call doing the same work.

Each op is first checked against its float64 oracle (tests/reference/pool_ref.py,
spatial_ref.py) on the first sample of the input, then timed: the median of --repeat calls
after one warm-up, pynn and its twin in turn. The twins: torch's max_pool3d and avg_pool3d
(count_include_pad=False, symmetric padding, the calls Keras's torch backend makes) on an
NCDHW view of the NDHWC memory (the channels_last_3d tensor Keras hands them), with
autograd's backward; np.pad, slicing + copy, np.repeat and a sum over the repeats. Every
output is a fresh array on both sides.

    .venv/bin/python bench/bench_volumetric.py [--threads 1] [--repeat 9]
        [--shape 8,16,32,32,16] [--json PATH]
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pynn._native import info, pool, spatial
from tests.reference import pool_ref, spatial_ref

PAD = ((1, 2), (3, 0), (1, 1))
# (pool_size, strides, padding, torch padding): 'same' with pool 3, stride 1 pads 1 and 1
POOLS = [((2, 2, 2), (2, 2, 2), "valid", 0), ((3, 3, 3), (1, 1, 1), "same", 1)]


def median_ms(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def check(name, got, want, rtol):
    got, want = (a if isinstance(a, tuple) else (a,) for a in (got, want))
    for g, w in zip(got, want):
        err = float(np.abs(g - w).max()) / max(1.0, float(np.abs(w).max()))
        if err > rtol:
            raise SystemExit(f"{name}: relative error {err:.2e} > {rtol}")


def pool_cases(x, torch):
    """(name, pynn call, twin call or None, check) of the pooling ops."""
    x1 = x[:1]
    out = []
    for p, s, pad, tp in POOLS:
        y, arg = pool.maxpool3d_forward(x, p, s, pad)
        a = pool.avgpool3d_forward(x, p, s, pad)
        y1, arg1 = pool.maxpool3d_forward(x1, p, s, pad)
        tag = f"{p[0]}^3/{s[0]} {pad}"
        twins = [None] * 4
        if torch is not None:
            xt = torch.from_numpy(x).permute(0, 4, 1, 2, 3)
            xg = xt.clone().requires_grad_(True)
            mt = torch.nn.functional.max_pool3d(xg, p, s, tp)
            at = torch.nn.functional.avg_pool3d(xg, p, s, tp, count_include_pad=False)
            gm = torch.from_numpy(y).permute(0, 4, 1, 2, 3)
            ga = torch.from_numpy(a).permute(0, 4, 1, 2, 3)
            twins = [lambda: torch.nn.functional.max_pool3d(xt, p, s, tp),
                     lambda: torch.autograd.grad(mt, xg, gm, retain_graph=True),
                     lambda: torch.nn.functional.avg_pool3d(xt, p, s, tp,
                                                            count_include_pad=False),
                     lambda: torch.autograd.grad(at, xg, ga, retain_graph=True)]
        out += [
            (f"maxpool3d_forward {tag}", lambda: pool.maxpool3d_forward(x, p, s, pad),
             twins[0], lambda: check("maxpool3d_forward", (y1, arg1),
                                     pool_ref.maxpool3d_forward_ref(x1, p, s, pad), 0)),
            (f"maxpool3d_backward {tag}", lambda: pool.maxpool3d_backward(y, arg, x.shape),
             twins[1], lambda: check("maxpool3d_backward",
                                     pool.maxpool3d_backward(y1, arg1, x1.shape),
                                     pool_ref.maxpool3d_backward_ref(y1, arg1, x1.shape),
                                     1e-5)),
            (f"avgpool3d_forward {tag}", lambda: pool.avgpool3d_forward(x, p, s, pad),
             twins[2], lambda: check("avgpool3d_forward", pool.avgpool3d_forward(x1, p, s, pad),
                                     pool_ref.avgpool3d_forward_ref(x1, p, s, pad), 1e-5)),
            (f"avgpool3d_backward {tag}",
             lambda: pool.avgpool3d_backward(a, x.shape, p, s, pad), twins[3],
             lambda: check("avgpool3d_backward",
                           pool.avgpool3d_backward(a[:1], x1.shape, p, s, pad),
                           pool_ref.avgpool3d_backward_ref(a[:1], x1.shape, p, s, pad), 1e-5)),
        ]
    return out


def spatial_cases(x):
    n, d, h, w, c = x.shape
    x1 = x[:1]
    y2 = spatial.upsample3d_forward(x, 2)
    y21 = y2[:1]
    return [
        ("pad3d_forward", lambda: spatial.pad3d_forward(x, PAD),
         lambda: np.pad(x, ((0, 0),) + PAD + ((0, 0),)),
         lambda: check("pad3d_forward", spatial.pad3d_forward(x1, PAD),
                       spatial_ref.pad3d_forward_ref(x1, PAD), 0)),
        ("pad3d_backward (crop)", lambda: spatial.pad3d_backward(x, PAD),
         lambda: x[:, 1:d - 2, 3:, 1:w - 1, :].copy(),
         lambda: check("pad3d_backward", spatial.pad3d_backward(x1, PAD),
                       spatial_ref.pad3d_backward_ref(x1, PAD), 0)),
        ("upsample3d_forward 2x2x2", lambda: spatial.upsample3d_forward(x, 2),
         lambda: np.repeat(np.repeat(np.repeat(x, 2, 1), 2, 2), 2, 3),
         lambda: check("upsample3d_forward", spatial.upsample3d_forward(x1, 2),
                       spatial_ref.upsample3d_forward_ref(x1, (2, 2, 2)), 0)),
        ("upsample3d_backward 2x2x2", lambda: spatial.upsample3d_backward(y2, x.shape, 2),
         lambda: y2.reshape(n, d, 2, h, 2, w, 2, c).sum(axis=(2, 4, 6)),
         lambda: check("upsample3d_backward", spatial.upsample3d_backward(y21, x1.shape, 2),
                       spatial_ref.upsample3d_backward_ref(y21, x1.shape, (2, 2, 2)), 1e-5)),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--shape", default="8,16,32,32,16")
    parser.add_argument("--json")
    args = parser.parse_args()
    info.set_num_threads(args.threads)
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    x = np.random.default_rng(0).standard_normal(
        tuple(int(d) for d in args.shape.split(","))).astype(np.float32)
    rows = []
    for name, ours, twin, checker in pool_cases(x, torch) + spatial_cases(x):
        checker()
        pynn_ms = median_ms(ours, args.repeat)
        twin_ms = median_ms(twin, args.repeat) if twin is not None else None
        rows.append({"op": name, "pynn_ms": round(pynn_ms, 3),
                     "twin_ms": None if twin_ms is None else round(twin_ms, 3)})
        twin_text = "-" if twin_ms is None else f"{twin_ms:8.2f}"
        print(f"{name:40s} pynn {pynn_ms:8.2f} ms   twin {twin_text} ms")
    if args.json:
        Path(args.json).write_text(json.dumps({"shape": args.shape, "threads": args.threads,
                                               "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
