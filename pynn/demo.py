"""The demo: a small CNN on scikit-learn's bundled 8x8 handwritten digits (1,797 images, shipped
inside the package, no download). ``python -m pynn.demo`` trains it with a progress bar, checks
the held-out accuracy, saves the model and reloads it."""

import argparse
import sys
import time

import numpy as np

import pynn
from pynn import layers


def load_digits_split(test_fraction=0.2, seed=0):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]  # (1797, 8, 8, 1) in [0, 1]
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return (x[train], y[train]), (x[test], y[test])


def build_model(output_activation="softmax", name="digits_cnn"):
    """The demo CNN; ``output_activation=None`` ends it in logits (distillation wants them)."""
    return pynn.Sequential([
        layers.Input(shape=(8, 8, 1)),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(64, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dropout(0.3),
        layers.Dense(10, activation=output_activation),
    ], name=name)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pynn.demo")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default="digits_cnn.pynn", help="where to save the model")
    parser.add_argument("--device", default=None, help="cpu (default), opencl or opencl:P:D")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.device:
        pynn.set_device(args.device)
    pynn.utils.set_random_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = load_digits_split(seed=args.seed)
    print(f"pynn {pynn.__version__} on {pynn.get_device()}, {pynn.get_num_threads()} threads: "
          f"{len(x_train)} training and {len(x_test)} test digits (8x8)")
    model = build_model()
    model.summary()
    model.compile(optimizer=pynn.optimizers.Adam(learning_rate=2e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
              validation_split=0.1, verbose=1,
              callbacks=[pynn.callbacks.EarlyStopping(monitor="val_loss", patience=5,
                                                      restore_best_weights=True)])
    seconds = time.perf_counter() - start
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"test accuracy {accuracy:.4f} (loss {loss:.4f}) after {seconds:.1f}s of training")
    model.save(args.out)
    reloaded = pynn.load_model(args.out)
    same = np.allclose(reloaded.predict(x_test, verbose=0), model.predict(x_test, verbose=0),
                       rtol=1e-6, atol=1e-7)
    print(f"saved to {args.out}; reloaded model predicts identically: {same}")
    if accuracy < 0.97 or not same:
        print("demo FAILED: expected >= 97% test accuracy and an identical reload",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
