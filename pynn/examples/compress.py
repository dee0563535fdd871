"""Model compression on the bundled 8x8 digits (issue 18): train the demo CNN, then prune it
(unstructured, magnitude), prune it structurally (whole filters and units), and distill it
into a student with at most 1/8 of its parameters, and quantize its Dense layers to int8;
print one table of test accuracy, saved
file size and batch-1 / batch-64 predict time.

    python -m pynn.examples.compress [--epochs 12] [--fast] [--device opencl]

``--fast`` (the tests' mode) trains a few epochs on part of the data: the table's shape, not
its numbers.
"""

import argparse
import math
import os
import statistics
import tempfile
import time

import numpy as np

import pynn
from pynn import layers, losses, optimizers, saving
from pynn.compression import (
    Distiller,
    PolynomialDecay,
    UpdatePruningStep,
    prune_low_magnitude,
    prune_structured,
    quantize,
    sparsity,
    strip_pruning,
)
from pynn.demo import build_model, load_digits_split


def build_teacher():
    """The demo CNN ending in logits, as distillation needs."""
    return build_model(output_activation=None, name="teacher")


def build_student():
    """About 1/17 of the teacher's parameters."""
    return pynn.Sequential([
        layers.Input(shape=(8, 8, 1)),
        layers.Conv2D(8, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(16, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dense(32, activation="relu"),
        layers.Dense(10),
    ], name="student")


STUDENT_LR = 3e-3


def _loss():
    return losses.SparseCategoricalCrossentropy(from_logits=True)


def _compile(model, lr=1e-3):
    model.compile(optimizers.Adam(lr), _loss(), metrics=["accuracy"])
    return model


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=-1) == y))


def predict_ms(model, x, batch, repeats):
    """Median wall time of one predict call on ``batch`` samples, in ms."""
    xb = x[:batch]
    model.predict(xb, batch_size=batch, verbose=0)  # builds the inference plan
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.predict(xb, batch_size=batch, verbose=0)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def row(name, model, x, y, folder, repeats, save=True):
    path = os.path.join(folder, f"{name.split()[0]}.pynn")
    # Weights and config only: the deployable file, without the optimizer's slots.
    if save:
        saving.save_model(model, path, include_optimizer=False)
    zeros = sparsity(model)
    mean_zeros = sum(zeros.values()) / max(len(zeros), 1)
    params = sum(layer.count_params() for layer in model.layers)  # QuantizedDense counts its own
    return (name, params, mean_zeros, accuracy(model, x, y),
            os.path.getsize(path) if save else float("nan"), predict_ms(model, x, 1, repeats),
            predict_ms(model, x, 64, repeats))


def print_table(rows, print_fn=print):
    head = (f"{'model':<28} {'params':>8} {'zeros':>6} {'accuracy':>9} {'file KiB':>9} "
            f"{'b1 ms':>7} {'b64 ms':>7}")
    print_fn(head)
    print_fn("-" * len(head))
    for name, params, zeros, acc, size, t1, t64 in rows:
        kib = "-" if math.isnan(size) else f"{size / 1024:.1f}"
        print_fn(f"{name:<28} {params:>8,} {zeros:>6.0%} {acc:>9.4f} {kib:>9} "
                 f"{t1:>7.3f} {t64:>7.3f}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pynn.examples.compress")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--fine-tune-epochs", type=int, default=4)
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--sparse-sparsity", type=float, default=0.95)
    parser.add_argument("--structured-fraction", type=float, default=0.5)
    parser.add_argument("--fast", action="store_true", help="a few epochs on part of the data")
    parser.add_argument("--device", default=None, help="cpu (default), opencl or opencl:P:D")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.device:
        pynn.set_device(args.device)
    pynn.utils.set_random_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = load_digits_split(seed=args.seed)
    epochs, tune, repeats = args.epochs, args.fine_tune_epochs, 30
    if args.fast:
        x_train, y_train = x_train[:400], y_train[:400]
        epochs, tune, repeats = 2, 1, 3
    fit = {"batch_size": 32, "verbose": 0}
    steps = -(-len(x_train) // fit["batch_size"])

    teacher = _compile(build_teacher())
    teacher.fit(x_train, y_train, epochs=epochs, **fit)

    # Unstructured: sparsity rises over the first half of fine-tuning, then holds.
    pruned = prune_low_magnitude(teacher, PolynomialDecay(
        0.0, args.sparsity, begin_step=0, end_step=max(1, steps * tune // 2),
        frequency=max(1, steps // 4)))
    _compile(pruned)
    pruned.fit(x_train, y_train, epochs=tune, callbacks=[UpdatePruningStep()], **fit)
    pruned = strip_pruning(pruned)

    # Past the sparse kernel's crossover (pynn.compression.SPARSE_MIN_SPARSITY): the Dense
    # layers predict through sparse_dense_forward.
    sparse = prune_low_magnitude(teacher, PolynomialDecay(
        0.0, args.sparse_sparsity, begin_step=0, end_step=max(1, steps * tune // 2),
        frequency=max(1, steps // 4)))
    _compile(sparse)
    sparse.fit(x_train, y_train, epochs=tune, callbacks=[UpdatePruningStep()], **fit)
    sparse = strip_pruning(sparse)

    structured = _compile(prune_structured(teacher, args.structured_fraction, "l1"))
    structured.fit(x_train, y_train, epochs=tune, **fit)

    # The small student learns faster at 3e-3 (alone and distilled alike); alpha and the
    # temperature are Keras's example's alpha and a temperature that did best of 2, 4, 10.
    alone = _compile(build_student(), STUDENT_LR)
    alone.fit(x_train, y_train, epochs=epochs, **fit)
    student = build_student()
    distiller = Distiller(student, teacher)
    distiller.compile(optimizers.Adam(STUDENT_LR), metrics=["accuracy"],
                      student_loss_fn=_loss(), alpha=0.1, temperature=4)
    distiller.fit(x_train, y_train, epochs=epochs, **fit)

    # Post-training int8 of the Dense layers (the conv layers stay float: their int8 kernels
    # are not done); calibrated min-max on 500 training images. Not saved (not done either).
    int8 = quantize(teacher, x_train[:500], "minmax")

    ratio = student.count_params() / teacher.count_params()
    with tempfile.TemporaryDirectory() as folder:
        rows = [row("float32", teacher, x_test, y_test, folder, repeats),
                row(f"pruned {args.sparsity:.0%} unstructured", pruned, x_test, y_test, folder,
                    repeats),
                row("int8 Dense (post-training)", int8, x_test, y_test, folder, repeats,
                    save=False),
                row(f"pruned {args.sparse_sparsity:.0%} (sparse Dense)", sparse, x_test, y_test,
                    folder, repeats),
                row(f"structured {args.structured_fraction:.0%} filters", structured, x_test,
                    y_test, folder, repeats),
                row("student alone", alone, x_test, y_test, folder, repeats),
                row(f"distilled student (1/{1 / ratio:.0f})", student, x_test, y_test, folder,
                    repeats)]
    print(f"digits: {len(x_train)} training, {len(x_test)} test images; device "
          f"{pynn.backend.current().NAME}; teacher {epochs} epochs, fine-tuning {tune}")
    print_table(rows)
    return rows


if __name__ == "__main__":
    main()
