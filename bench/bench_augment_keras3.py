"""Time the ops of Keras 3's geometric, erasing, mixing and blur augmentations on the CPU
beside the torch calls Keras's torch backend makes for the same work.

Each op is first checked against its float64 oracle (tests/reference/augment_mix_ref.py,
preprocessing_ref.py) on the first two images, then timed: the median of --repeat calls after
one warm-up. The twins: RandomGaussianBlur's depthwise conv2d (keras.ops.image.gaussian_blur's
call) and the separable pass as a direct K x K one for the elastic field's large kernel;
MixUp's and CutMix's where / take expressions; RandomPerspective's and
RandomElasticTransform's resampling through torch's grid_sample (bilinear, the same work,
not Keras's own per-channel map_coordinates loop, which is far slower). Every output is a
fresh array on both sides.

    .venv/bin/python bench/bench_augment_keras3.py [--threads 1] [--repeat 9]
        [--shape 16,128,128,3] [--json PATH]
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

from pynn._native import augment_mix, info, preprocessing
from pynn.layers import augment_geo
from tests.reference import augment_mix_ref, preprocessing_ref


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


def cases(x, rng, torch):
    """(name, pynn call, twin call or None) after each op's check on two images."""
    n, h, w, c = x.shape
    out = []
    perm, weights = rng.permutation(n), rng.uniform(size=n).astype(np.float32)
    boxes = np.tile(np.float32([0, w, 0, h]), (n, 1))
    check("image_mix_forward", augment_mix.image_mix_forward(x[:2], [1, 0], weights[:2],
                                                             boxes[:2]),
          augment_mix_ref.image_mix_forward_ref(x[:2], [1, 0], weights[:2], boxes[:2]), 1e-5)
    tx, tw = torch.from_numpy(x), torch.from_numpy(weights)[:, None, None, None]
    tp = torch.from_numpy(perm)
    out.append(("image_mix_forward (MixUp)",
                lambda: augment_mix.image_mix_forward(x, perm, weights, boxes),
                lambda: tw * tx + (1.0 - tw) * tx[tp]))
    for k in (5, 39):   # RandomGaussianBlur's kernel, the elastic field's at 128 pixels
        taps = augment_geo.gaussian_taps(k, k / 6).astype(np.float32)
        on = np.ones(n, np.float32)
        check(f"image_blur_forward K={k}",
              augment_mix.image_blur_forward(x[:2], taps, taps, on[:2], (-1e30, 1e30)),
              augment_mix_ref.image_blur_forward_ref(x[:2], taps, taps, on[:2], (-1e30, 1e30)),
              1e-5)
        kernel = torch.from_numpy(np.outer(taps, taps)).expand(c, 1, k, k).contiguous()
        nchw = tx.permute(0, 3, 1, 2)
        out.append((f"image_blur_forward K={k}",
                    lambda taps=taps, on=on: augment_mix.image_blur_forward(
                        x, taps, taps, on, (-1e30, 1e30)),
                    lambda kernel=kernel, k=k: torch.nn.functional.conv2d(
                        nchw, kernel, padding=k // 2, groups=c).permute(0, 2, 3, 1)
                    .contiguous()))
    start = np.repeat(np.array([[[0.0, 0.0], [w - 1, 0.0], [0.0, h - 1], [w - 1, h - 1]]]),
                      n, 0)
    m = augment_geo.homography_matrices(start, start + start * rng.uniform(-0.2, 0.2,
                                                                           (n, 4, 2)))
    m = m.astype(np.float32)
    check("image_projective_forward",
          preprocessing.image_projective_forward(x[:2], m[:2], (h, w)),
          preprocessing_ref.image_projective_forward_ref(x[:2], m[:2], (h, w)), 1e-5)
    offsets = rng.normal(size=(n, h, w, 2)).astype(np.float32) * 2
    check("image_remap_forward",
          preprocessing.image_remap_forward(x[:2], offsets[:2], "bilinear", "reflect"),
          preprocessing_ref.image_remap_forward_ref(x[:2], offsets[:2], "bilinear",
                                                    "reflect"), 1e-5)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    grid = np.stack([(cols + offsets[..., 1]) * 2 / (w - 1) - 1,
                     (rows + offsets[..., 0]) * 2 / (h - 1) - 1], -1).astype(np.float32)
    tgrid = torch.from_numpy(grid)
    nchw = tx.permute(0, 3, 1, 2)
    sample = (lambda: torch.nn.functional.grid_sample(
        nchw, tgrid, align_corners=True).permute(0, 2, 3, 1).contiguous())
    out.append(("image_projective_forward",
                lambda: preprocessing.image_projective_forward(x, m, (h, w)), sample))
    out.append(("image_remap_forward (elastic)",
                lambda: preprocessing.image_remap_forward(x, offsets, "bilinear", "reflect"),
                sample))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--shape", default="16,128,128,3")
    parser.add_argument("--json")
    args = parser.parse_args()
    import torch

    if args.threads:
        info.set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    shape = tuple(int(v) for v in args.shape.split(","))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, shape).astype(np.float32)
    rows = []
    for name, ours, twin in cases(x, rng, torch):
        pynn_ms = median_ms(ours, args.repeat)
        twin_ms = median_ms(twin, args.repeat) if twin else float("nan")
        rows.append({"op": name, "pynn_ms": pynn_ms, "torch_ms": twin_ms})
        print(f"{name:32s} pynn {pynn_ms:9.2f} ms   torch {twin_ms:9.2f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps({"shape": shape, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
