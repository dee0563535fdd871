"""Time pynn's color_transform_forward (native/color.pyx) for each of Keras 3's colour
transforms beside Keras 3's own transform_images on its torch backend (the same
transformation handed to both).

Each transform is first checked against its float64 oracle (tests/reference/color_ref.py)
on the whole batch, then timed: the median of --repeat calls after one warm-up, pynn and
Keras in turn. Keras is optional: without it (or torch) only pynn's times are printed.

    .venv/bin/python bench/bench_color.py [--threads 2] [--repeat 5] [--shape 32,224,224,3]
        [--json PATH]
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pynn  # noqa: E402
from pynn import layers  # noqa: E402
from pynn._native.color import color_transform_forward  # noqa: E402
from tests.reference.color_ref import color_transform_forward_ref  # noqa: E402

# (pynn layer, Keras layer name, arguments) per transform.
CASES = {
    "auto_contrast": ("AutoContrast", {}),
    "equalize": ("Equalization", {}),
    "solarize": ("Solarization", {"addition_factor": 0.2, "threshold_factor": 0.5}),
    "invert": ("RandomInvert", {}),
    "posterize": ("RandomPosterization", {"factor": (2, 7)}),
    "grayscale": ("RandomGrayscale", {}),
    "degenerate": ("RandomColorDegeneration", {"factor": 0.5}),
    "sharpen": ("RandomSharpness", {"factor": 0.5}),
    "hue": ("RandomHue", {"factor": 0.5}),
    "saturation": ("RandomSaturation", {"factor": (0.2, 0.8)}),
}


def median_ms(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def keras_twin():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
        import torch
    except ImportError:
        return None, None
    return (keras, torch) if keras.backend.backend() == "torch" else (None, None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--shape", default="32,224,224,3")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        pynn.set_num_threads(args.threads)
    shape = tuple(int(v) for v in args.shape.split(","))
    x = (np.random.default_rng(0).integers(0, 255, shape) + 0.4).astype(np.float32)
    keras, torch = keras_twin()
    if torch is not None and args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for transform, (name, kwargs) in CASES.items():
        layer = getattr(layers, name)(**kwargs)
        t = layer.get_random_transformation(x)
        params = layer.params(t, shape[0])
        params = None if params is None else params.astype(np.float32)
        y = color_transform_forward(x, transform, params)
        small = slice(0, 2) if transform != "equalize" else slice(None)
        want = color_transform_forward_ref(x[small], transform,
                                           None if params is None else params[small])
        err = float(np.abs(y[small] - want).max()) / max(1.0, float(np.abs(want).max()))
        if err > 1e-5:
            raise SystemExit(f"{transform}: relative error {err:.2e} > 1e-5")
        row = {"transform": transform,
               "pynn_ms": median_ms(lambda: color_transform_forward(x, transform, params),
                                    args.repeat)}
        if keras is not None:
            theirs = getattr(keras.layers, name)(**kwargs)
            kt = t
            if isinstance(t, dict):
                kt = {k: torch.as_tensor(np.asarray(v)) for k, v in t.items()}
            elif t is not None:
                kt = torch.as_tensor(np.asarray(t))
            xt = torch.as_tensor(x)
            row["keras_torch_ms"] = median_ms(
                lambda: theirs.transform_images(xt, kt, training=True), args.repeat)
        rows.append(row)
        extra = f"  keras/torch {row['keras_torch_ms']:8.1f} ms" if "keras_torch_ms" in row \
            else ""
        print(f"{transform:14s} pynn {row['pynn_ms']:8.1f} ms{extra}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"shape": shape, "threads": args.threads,
                                               "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
