"""A small residual CNN on the bundled 8x8 digits, built with the functional API:
Conv2D + BatchNormalization blocks with ``Add`` shortcuts, global average pooling, softmax.

    python -m pynn.examples.residual_cnn [--epochs 15] [--device opencl]
"""

import argparse
import sys
import time

import pynn
from pynn import layers
from pynn.demo import load_digits_split


# Keras's default momentum (0.99) moves the moving statistics 1% per step: a run of a few
# hundred steps on small 8x8 digits would still evaluate with statistics far from the data's.
BN_MOMENTUM = 0.9


def residual_block(x, filters, name):
    shortcut = x
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn1")(y)
    y = layers.Activation("relu", name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn2")(y)
    if shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_proj")(shortcut)
        shortcut = layers.BatchNormalization(momentum=BN_MOMENTUM,
                                                 name=f"{name}_proj_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def build_residual_cnn(input_shape=(8, 8, 1), classes=10, widths=(32, 32, 64)):
    inputs = pynn.Input(input_shape, name="image")
    x = layers.Conv2D(widths[0], 3, padding="same", use_bias=False, name="stem")(inputs)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    for i, filters in enumerate(widths):
        x = residual_block(x, filters, f"block{i + 1}")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(classes, activation="softmax", name="classes")(x)
    return pynn.Model(inputs, outputs, name="residual_cnn")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pynn.examples.residual_cnn")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default=None, help="cpu (default), opencl or opencl:P:D")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.device:
        pynn.set_device(args.device)
    pynn.utils.set_random_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = load_digits_split(seed=args.seed)
    model = build_residual_cnn()
    model.summary()
    model.compile(optimizer=pynn.optimizers.Adam(learning_rate=2e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
              validation_split=0.1, verbose=2)
    seconds = time.perf_counter() - start
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"test accuracy {accuracy:.4f} (loss {loss:.4f}) after {seconds:.1f}s of training")
    if accuracy < 0.95:
        print("residual_cnn FAILED: expected >= 95% test accuracy", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
