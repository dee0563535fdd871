"""Augmentation throughput: pynn's ImageDataGenerator beside Keras's legacy one (and
torchvision.transforms.v2 when installed), images per second.

The workload is the seed programs' augmentation plus zoom and shear: rotation_range=20,
width_shift_range=0.2, height_shift_range=0.2, horizontal_flip=True, zoom_range=0.2,
shear_range=10 (fill_mode 'nearest', bilinear), on float32 128x128x3 images in batches of 32,
read through ``.flow(x, batch_size=32)``. torchvision's twin is
``RandomAffine(degrees=20, translate=(0.2, 0.2), scale=(0.8, 1.2), shear=10)`` plus
``RandomHorizontalFlip`` on a batch of CHW tensors, one call per image (v2 draws one set of
parameters per call); its border is a constant fill (it has no 'nearest' mode), so it is the
same amount of work, not the same pictures.

Checked first: on the same transform parameters pynn's apply_transform equals Keras's (max
relative difference printed; the run fails above 1e-5). Then the frameworks are timed in
alternated rounds (pynn, keras, torchvision, pynn, ...), each round one pass over the images,
and the table shows the median round. Every framework gets --threads threads: pynn through
pynn.set_num_threads (its kernel runs OpenMP over the images of a batch), torch through
torch.set_num_threads; Keras's generator resamples one image at a time through SciPy, which has
no threads to give. The JSON goes to bench/results/augment-<cpu>-<threads>t.json.

Then the cost of augmenting on the fly while training: one small CNN (two strided 3x3
convolutions, global pooling, softmax) fit one epoch on the same images, from pre-made arrays
(``fit(x, y)``) and from ``ImageDataGenerator(**AUGMENT).flow(x, y)`` (its batches prepared
in a background thread while the native step runs), in alternated rounds; the overhead is
1 - (images/s with augmentation) / (images/s from arrays), target <= 10%.

Where torchvision is installed but cannot load (the package index's wheel is built against
CUDA torch; with torch 2.13.0+cpu its operators fail to register), its column times torch's
own affine_grid + grid_sample per image, the kernels torchvision v2's affine runs on tensors;
the JSON's "torchvision" field says which ran.

    .venv/bin/python bench/bench_augment.py [--threads 2] [--rounds 5] [--images 1024]
        [--keras-images 64] [--training-rounds 5] [--json PATH]
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_cpu import _cpu_slug, _cpuinfo  # one naming of the machine

AUGMENT = dict(rotation_range=20, width_shift_range=0.2, height_shift_range=0.2,
               horizontal_flip=True, zoom_range=0.2, shear_range=10)
SHAPE = (128, 128, 3)
BATCH = 32


def check(pynn_gen, keras_gen, x):
    worst = 0.0
    for i, image in enumerate(x[:8]):
        params = pynn_gen.get_random_transform(image.shape, seed=i)
        ours = pynn_gen.apply_transform(image, params)
        theirs = keras_gen.apply_transform(image.copy(), params)
        worst = max(worst, float(np.abs(ours - theirs).max() / np.abs(theirs).max()))
    return worst


def run_flow(gen, x, seed):
    it = gen.flow(x, batch_size=BATCH, shuffle=True, seed=seed)
    t = time.perf_counter()
    for i in range(len(it)):
        it[i]
    return len(x) / (time.perf_counter() - t)


def torch_affine_runner(threads):
    """torchvision v2's RandomAffine + RandomHorizontalFlip path for image tensors, in torch
    itself (one affine_grid + grid_sample per image, bilinear, zero fill): the same kernels,
    for where torchvision cannot load."""
    import math

    import torch
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)

    def one(image):
        angle = math.radians(rng.uniform(-20, 20))
        shear = math.radians(rng.uniform(-10, 10))
        scale = rng.uniform(0.8, 1.2)
        tx, ty = rng.uniform(-0.2, 0.2, 2) * 2
        a, b = math.cos(angle) / scale, -math.sin(angle + shear) / scale
        c, d = math.sin(angle) / scale, math.cos(angle + shear) / scale
        theta = torch.tensor([[[a, b, tx], [c, d, ty]]], dtype=image.dtype)
        grid = F.affine_grid(theta, (1,) + tuple(image.shape), align_corners=False)
        out = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)[0]
        return out.flip(-1) if rng.random() < 0.5 else out

    def run(x):
        tensor = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        t = time.perf_counter()
        for start in range(0, len(tensor), BATCH):
            torch.stack([one(image) for image in tensor[start:start + BATCH]])
        return len(x) / (time.perf_counter() - t)

    return run


def torchvision_runner(threads):
    """(runner, label); runner None where neither torchvision nor torch loads."""
    try:
        import torch
        from torchvision.transforms import v2
    except ImportError:
        return None, "not installed"
    except Exception as exc:  # noqa: BLE001 (a torchvision wheel built for another torch)
        try:
            return torch_affine_runner(threads), f"torch grid_sample (torchvision: {exc})"
        except ImportError:
            return None, f"cannot load ({exc})"
    torch.set_num_threads(threads)
    transform = v2.Compose([
        v2.RandomAffine(degrees=20, translate=(0.2, 0.2), scale=(0.8, 1.2), shear=10),
        v2.RandomHorizontalFlip()])

    def run(x):
        tensor = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        t = time.perf_counter()
        for start in range(0, len(tensor), BATCH):
            torch.stack([transform(image) for image in tensor[start:start + BATCH]])
        return len(x) / (time.perf_counter() - t)

    return run, "torchvision.transforms.v2"


def training_cnn(pynn, seed):
    from pynn import layers

    pynn.utils.set_random_seed(seed)
    model = pynn.Sequential([
        layers.Input(SHAPE),
        layers.Conv2D(16, 3, strides=2, activation="relu"),
        layers.Conv2D(32, 3, strides=2, activation="relu"),
        layers.GlobalAveragePooling2D(),
        layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def training_overhead(pynn, generator_class, x, rounds):
    """Median images/s of one training epoch from arrays and from the augmenting flow."""
    y = np.arange(len(x)) % 10
    speeds = {"arrays": [], "augmented": []}
    for r in range(rounds):
        for kind in speeds:
            model = training_cnn(pynn, r)
            data = (generator_class(**AUGMENT).flow(x, y, batch_size=BATCH, seed=r)
                    if kind == "augmented" else None)
            model.fit(x[:BATCH], y[:BATCH], batch_size=BATCH, epochs=1, verbose=0)  # warm-up
            t = time.perf_counter()
            if data is None:
                model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
            else:
                model.fit(data, epochs=1, verbose=0)
            speeds[kind].append(len(x) / (time.perf_counter() - t))
    median = {k: statistics.median(v) for k, v in speeds.items()}
    return speeds, median, 1.0 - median["augmented"] / median["arrays"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--rounds", type=int, default=5)
    # 1024: a 256-image epoch is 8 batches, where each fit's pipeline start-up shows as
    # augmentation cost (12% measured, against 8% at 1024)
    parser.add_argument("--images", type=int, default=1024, help="images per pynn round")
    parser.add_argument("--keras-images", type=int, default=64,
                        help="images per Keras round (it is far slower)")
    parser.add_argument("--training-rounds", type=int, default=5,
                        help="rounds of the training-overhead measurement (0: skip it)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    os.environ.setdefault("KERAS_BACKEND", "torch")
    import pynn
    from pynn.preprocessing.image import ImageDataGenerator

    pynn.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = (rng.random((args.images,) + SHAPE) * 255).astype(np.float32)
    ours = ImageDataGenerator(**AUGMENT)
    try:
        from keras.src.legacy.preprocessing.image import ImageDataGenerator as KerasGenerator
        theirs = KerasGenerator(**AUGMENT)
    except Exception as exc:  # keras missing or its backend cannot load
        print(f"keras unavailable ({exc}); timing pynn only")
        theirs = None
    result = {"workload": {"augment": AUGMENT, "image_shape": SHAPE, "batch_size": BATCH,
                           "dtype": "float32"},
              "threads": args.threads, "rounds": args.rounds, "machine": _cpuinfo(),
              "loadavg_1min_start": os.getloadavg()[0]}
    if theirs is not None:
        diff = check(ours, theirs, x)
        result["check_max_rel_diff_vs_keras"] = diff
        print(f"check: pynn vs Keras apply_transform, max relative difference {diff:.2e}")
        if diff > 1e-5:
            print("CHECK FAILED")
            sys.exit(1)
    tv, tv_label = torchvision_runner(args.threads)
    result["torchvision"] = tv_label
    if tv is None:
        print(f"torchvision {tv_label}: its column is skipped")
    else:
        print(f"torchvision column: {tv_label}")
    rounds = {"pynn": [], "keras": [], "torchvision": []}
    for r in range(args.rounds):
        rounds["pynn"].append(run_flow(ours, x, seed=r))
        if theirs is not None:
            rounds["keras"].append(run_flow(theirs, x[:args.keras_images], seed=r))
        if tv is not None:
            rounds["torchvision"].append(tv(x))
    result["rounds_images_per_s"] = {k: v for k, v in rounds.items() if v}
    result["images_per_s"] = {k: statistics.median(v) for k, v in rounds.items() if v}
    result["loadavg_1min_end"] = os.getloadavg()[0]
    speed = result["images_per_s"]
    print(f"\naugmentation, {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} float32, batches of {BATCH}, "
          f"{args.threads} threads, median of {args.rounds} alternated rounds")
    for name, value in speed.items():
        ratio = f"  ({value / speed['pynn']:.3f}x pynn)" if name != "pynn" else ""
        print(f"  {name:12s} {value:10.1f} images/s{ratio}")
    if "keras" in speed:
        result["pynn_over_keras"] = speed["pynn"] / speed["keras"]
        print(f"  pynn / keras = {result['pynn_over_keras']:.1f}x (target >= 5x)")
    if "torchvision" in speed:
        result["pynn_over_torchvision"] = speed["pynn"] / speed["torchvision"]
    if args.training_rounds > 0:
        rounds_t, median_t, overhead = training_overhead(pynn, ImageDataGenerator, x,
                                                         args.training_rounds)
        result["training_images_per_s_rounds"] = rounds_t
        result["training_images_per_s"] = median_t
        result["augmentation_training_overhead"] = overhead
        print(f"\ntraining a small CNN, {len(x)} images per epoch, median of "
              f"{args.training_rounds} alternated rounds:")
        print(f"  from arrays        {median_t['arrays']:10.1f} images/s")
        print(f"  augmented on fly   {median_t['augmented']:10.1f} images/s")
        print(f"  overhead {100 * overhead:.1f}% (target <= 10%)")
    machine = result["machine"]
    path = args.json or (Path(__file__).resolve().parent / "results" /
                         f"augment-{_cpu_slug(machine.get('cpu_model'), machine.get('core'))}-"
                         f"{args.threads}t.json")
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
