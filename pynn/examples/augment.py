"""Data augmentation end to end: the bundled 8x8 digits written as a folder of PNGs by class,
read back through ``ImageDataGenerator.flow_from_directory``, and the same CNN trained twice,
with and without on-the-fly augmentation (rotations, shifts, zoom). Both are scored on the
plain test digits and on shifted / rotated copies of them: augmentation is what keeps the
second score up. A PNG grid shows augmented training samples.

    python -m pynn.examples.augment [--epochs 12] [--out augment.png] [--data DIR] [--fast]
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

import pynn
from pynn import layers
from pynn.demo import load_digits_split
from pynn.examples.autoencoder import image_grid
from pynn.preprocessing.image import ImageDataGenerator

AUGMENT = {"rotation_range": 15, "width_shift_range": 0.15, "height_shift_range": 0.15,
           "zoom_range": 0.1, "fill_mode": "constant", "cval": 0.0}
# How the test digits are disturbed: the same kinds of change, drawn once with a fixed seed.
DISTURB = {"rotation_range": 15, "width_shift_range": 0.15, "height_shift_range": 0.15,
           "fill_mode": "constant", "cval": 0.0}


def write_digit_folder(directory, x, y):
    """One PNG per image under directory/<class>/, grey levels 0..255."""
    for k in range(10):
        os.makedirs(os.path.join(directory, str(k)), exist_ok=True)
    for i, (image, label) in enumerate(zip(x, y)):
        pixels = np.round(np.clip(image[..., 0], 0, 1) * 255).astype(np.uint8)
        pynn.utils.write_png(os.path.join(directory, str(int(label)), f"{i:05d}.png"), pixels)


def build_cnn():
    return pynn.Sequential([
        layers.Input((8, 8, 1)),
        layers.Conv2D(16, 3, padding="same", activation="relu"),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dense(64, activation="relu"),
        layers.Dense(10, activation="softmax"),
    ], name="digits_cnn")


def train(directory, augment, epochs, seed):
    pynn.utils.set_random_seed(seed)
    generator = ImageDataGenerator(rescale=1 / 255.0, **(AUGMENT if augment else {}))
    flow = generator.flow_from_directory(directory, target_size=(8, 8), color_mode="grayscale",
                                         class_mode="sparse", batch_size=32, seed=seed)
    model = build_cnn()
    model.compile(optimizer=pynn.optimizers.Adam(learning_rate=3e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(flow, epochs=epochs, verbose=0)
    return model, flow


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pynn.examples.augment")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--out", default="augment.png", help="where to write the PNG grid")
    parser.add_argument("--data", default=None, help="folder for the PNGs (default: temp)")
    parser.add_argument("--fast", action="store_true", help="few epochs (for tests)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    epochs = 4 if args.fast else args.epochs
    (x_train, y_train), (x_test, y_test) = load_digits_split(seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.data or os.path.join(tmp, "digits")
        write_digit_folder(directory, x_train, y_train)
        disturbed = ImageDataGenerator(**DISTURB).flow(x_test, batch_size=len(x_test),
                                                        shuffle=False, seed=123)[0]
        scores = {}
        for augment in (False, True):
            start = time.perf_counter()
            model, flow = train(directory, augment, epochs, args.seed)
            plain = model.evaluate(x_test, y_test, verbose=0)[1]
            moved = model.evaluate(disturbed, y_test, verbose=0)[1]
            scores[augment] = (plain, moved)
            print(f"{'with' if augment else 'without'} augmentation: test accuracy "
                  f"{plain:.4f}, on shifted/rotated digits {moved:.4f} "
                  f"({time.perf_counter() - start:.1f}s, {flow.samples} images from "
                  f"{directory})")
        samples = flow[0][0][:10]
    grid = image_grid([x_train[:10, ..., 0], samples[..., 0], disturbed[:10, ..., 0]])
    pynn.utils.write_png(args.out, grid)
    print(f"wrote {args.out}: training digits, augmented samples, disturbed test digits")
    gain = scores[True][1] - scores[False][1]
    print(f"augmentation gain on shifted/rotated digits: {gain:+.4f}")
    return 0 if gain > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
