"""Time pynn's spatial and shape ops (pad2d, upsample2d, transpose, repeat_vector) on the CPU
beside the NumPy / PyTorch call doing the same work.

Each op is first checked against its float64 oracle (tests/reference/spatial_ref.py,
shape_ref.py), then timed: the median of --repeat calls after one warm-up, pynn and its twin
alternating so both see the same machine load. The twins: np.pad, slicing + copy,
np.repeat, np.transpose + copy, sum over an axis, and torch's interpolate (bilinear, NCHW
view of NHWC memory: the channels_last tensor Keras's torch backend hands it) with its
autograd backward. Every output is a fresh array on both sides.

    .venv/bin/python bench/bench_spatial.py [--threads 1] [--repeat 9] [--shape 32,32,32,64]
        [--json PATH]
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

from pynn._native import info, shape, spatial
from tests.reference import shape_ref, spatial_ref

PAD = ((1, 2), (3, 0))


def median_ms(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def check(name, got, want, rtol):
    err = float(np.abs(got - want).max()) / max(1.0, float(np.abs(want).max()))
    if err > rtol:
        raise SystemExit(f"{name}: relative error {err:.2e} > {rtol}")


def cases(x, torch):
    """(name, pynn call, twin call or None, check) for the input x (N, H, W, C)."""
    n, h, w, c = x.shape
    y2 = np.ascontiguousarray(np.repeat(np.repeat(x, 2, 1), 2, 2))
    vec = np.ascontiguousarray(x.reshape(n * h, w * c)[:, :512])
    rep = np.repeat(vec[:, None], 16, axis=1)
    out = [
        ("pad2d_forward", lambda: spatial.pad2d_forward(x, PAD),
         lambda: np.pad(x, ((0, 0),) + PAD + ((0, 0),)),
         lambda: check("pad2d_forward", spatial.pad2d_forward(x, PAD),
                       spatial_ref.pad2d_forward_ref(x, PAD), 0)),
        ("pad2d_backward (crop)", lambda: spatial.pad2d_backward(x, PAD),
         lambda: x[:, 1:h - 2, 3:, :].copy(),
         lambda: check("pad2d_backward", spatial.pad2d_backward(x, PAD),
                       spatial_ref.pad2d_backward_ref(x, PAD), 0)),
        ("upsample2d_forward nearest 2x2", lambda: spatial.upsample2d_forward(x, 2, "nearest"),
         lambda: np.repeat(np.repeat(x, 2, 1), 2, 2),
         lambda: check("upsample nearest", spatial.upsample2d_forward(x, 2, "nearest"),
                       spatial_ref.upsample2d_forward_ref(x, (2, 2), "nearest"), 0)),
        ("upsample2d_backward nearest 2x2",
         lambda: spatial.upsample2d_backward(y2, x.shape, 2, "nearest"),
         lambda: y2.reshape(n, h, 2, w, 2, c).sum(axis=(2, 4)),
         lambda: check("upsample nearest bwd", spatial.upsample2d_backward(y2, x.shape, 2,
                                                                           "nearest"),
                       spatial_ref.upsample2d_backward_ref(y2, x.shape, (2, 2), "nearest"),
                       1e-5)),
        ("transpose_forward (0,3,1,2)", lambda: shape.transpose_forward(x, (0, 3, 1, 2)),
         lambda: np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))),
         lambda: check("transpose", shape.transpose_forward(x, (0, 3, 1, 2)),
                       shape_ref.transpose_forward_ref(x, (0, 3, 1, 2)), 0)),
        ("transpose_forward (0,2,1,3)", lambda: shape.transpose_forward(x, (0, 2, 1, 3)),
         lambda: np.ascontiguousarray(np.transpose(x, (0, 2, 1, 3))), None),
        ("repeat_vector_forward x16", lambda: shape.repeat_vector_forward(vec, 16),
         lambda: np.repeat(vec[:, None], 16, axis=1),
         lambda: check("repeat", shape.repeat_vector_forward(vec, 16),
                       shape_ref.repeat_vector_forward_ref(vec, 16), 0)),
        ("repeat_vector_backward x16", lambda: shape.repeat_vector_backward(rep),
         lambda: rep.sum(axis=1),
         lambda: check("repeat bwd", shape.repeat_vector_backward(rep),
                       shape_ref.repeat_vector_backward_ref(rep), 1e-5)),
    ]
    twin_fwd = twin_bwd = None
    if torch is not None:
        xt = torch.from_numpy(x).permute(0, 3, 1, 2)
        xg = xt.clone().requires_grad_(True)
        yg = torch.nn.functional.interpolate(xg, size=(2 * h, 2 * w), mode="bilinear",
                                             align_corners=False)
        gt = torch.from_numpy(y2).permute(0, 3, 1, 2)

        def twin_fwd():
            return torch.nn.functional.interpolate(xt, size=(2 * h, 2 * w), mode="bilinear",
                                                   align_corners=False)

        def twin_bwd():
            return torch.autograd.grad(yg, xg, gt, retain_graph=True)

    out += [
        ("upsample2d_forward bilinear 2x2", lambda: spatial.upsample2d_forward(x, 2, "bilinear"),
         twin_fwd,
         lambda: check("upsample bilinear", spatial.upsample2d_forward(x, 2, "bilinear"),
                       spatial_ref.upsample2d_forward_ref(x, (2, 2), "bilinear"), 1e-5)),
        ("upsample2d_backward bilinear 2x2",
         lambda: spatial.upsample2d_backward(y2, x.shape, 2, "bilinear"), twin_bwd,
         lambda: check("upsample bilinear bwd",
                       spatial.upsample2d_backward(y2, x.shape, 2, "bilinear"),
                       spatial_ref.upsample2d_backward_ref(y2, x.shape, (2, 2), "bilinear"),
                       1e-5)),
    ]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--shape", default="32,32,32,64")
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
    for name, ours, twin, checker in cases(x, torch):
        if checker is not None:
            checker()
        pynn_ms = median_ms(ours, args.repeat)
        twin_ms = median_ms(twin, args.repeat) if twin is not None else None
        rows.append({"op": name, "pynn_ms": round(pynn_ms, 3),
                     "twin_ms": None if twin_ms is None else round(twin_ms, 3)})
        twin_text = "-" if twin_ms is None else f"{twin_ms:8.2f}"
        print(f"{name:36s} pynn {pynn_ms:8.2f} ms   twin {twin_text} ms")
    if args.json:
        Path(args.json).write_text(json.dumps({"shape": args.shape, "threads": args.threads,
                                               "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
