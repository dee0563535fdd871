"""A convolutional denoising autoencoder on the bundled 8x8 digits, built with the functional
API: an encoder of Conv2D + MaxPooling2D, a decoder of Conv2DTranspose, trained with
``fit(noisy, clean)``. It reports the reconstruction MSE of clean and noisy test digits against
the mean-image baseline and writes a PNG grid: inputs, noisy inputs, reconstructions.

    python -m pynn.examples.autoencoder [--epochs 30] [--out autoencoder.png] [--device opencl]
"""

import argparse
import sys
import time

import numpy as np

import pynn
from pynn import layers
from pynn.demo import load_digits_split


def build_autoencoder():
    inputs = pynn.Input((8, 8, 1), name="digit")
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    x = layers.MaxPooling2D(2)(x)                                        # 4x4
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    encoded = layers.MaxPooling2D(2, name="code")(x)                     # 2x2x16
    x = layers.Conv2DTranspose(16, 3, strides=2, padding="same", activation="relu")(encoded)
    x = layers.Conv2DTranspose(32, 3, strides=2, padding="same", activation="relu")(x)
    outputs = layers.Conv2D(1, 3, padding="same", activation="sigmoid", name="reconstruction")(x)
    return pynn.Model(inputs, outputs, name="digits_autoencoder")


def add_noise(x, rng, stddev=0.35):
    return np.clip(x + rng.normal(0.0, stddev, x.shape), 0.0, 1.0).astype(np.float32)


def image_grid(rows, scale=4, gap=2):
    """Rows of (8, 8) images in [0, 1] as one uint8 picture, each pixel scale x scale."""
    count = len(rows[0])
    size = 8 * scale
    grid = np.full((len(rows) * (size + gap) + gap, count * (size + gap) + gap), 255, np.uint8)
    for r, images in enumerate(rows):
        for c, image in enumerate(images):
            big = np.kron(np.clip(image, 0, 1), np.ones((scale, scale)))
            top, left = gap + r * (size + gap), gap + c * (size + gap)
            grid[top:top + size, left:left + size] = (255 * (1 - big)).astype(np.uint8)
    return grid


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pynn.examples.autoencoder")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default="autoencoder.png", help="where to write the PNG grid")
    parser.add_argument("--device", default=None, help="cpu (default), opencl or opencl:P:D")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.device:
        pynn.set_device(args.device)
    pynn.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    (x_train, _), (x_test, _) = load_digits_split(seed=args.seed)
    noisy_train, noisy_test = add_noise(x_train, rng), add_noise(x_test, rng)
    model = build_autoencoder()
    model.summary()
    model.compile(optimizer=pynn.optimizers.Adam(learning_rate=3e-3), loss="mse")
    start = time.perf_counter()
    model.fit(noisy_train, x_train, batch_size=args.batch_size, epochs=args.epochs,
              validation_split=0.1, verbose=2)
    seconds = time.perf_counter() - start
    baseline = float(np.mean((x_test - x_train.mean(axis=0)) ** 2))
    clean = float(model.evaluate(x_test, x_test, verbose=0))
    denoised = float(model.evaluate(noisy_test, x_test, verbose=0))
    noise = float(np.mean((noisy_test - x_test) ** 2))
    print(f"reconstruction MSE on {len(x_test)} test digits after {seconds:.1f}s: clean inputs "
          f"{clean:.4f}, noisy inputs {denoised:.4f} (the noise itself {noise:.4f}; the "
          f"mean-image baseline {baseline:.4f})")
    shown = slice(0, 12)
    recon = model.predict(noisy_test[shown], verbose=0)
    grid = image_grid([x_test[shown, ..., 0], noisy_test[shown, ..., 0], recon[..., 0]])
    pynn.utils.write_png(args.out, grid)
    print(f"wrote {args.out}: inputs, noisy inputs and reconstructions, one row each")
    if not denoised < 0.5 * baseline:
        print("autoencoder FAILED: expected the denoised MSE under half the mean-image "
              "baseline", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
