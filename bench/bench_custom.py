"""Custom code against the built-in fused path (issue 13): what recording ops costs.

1. MLP (784-512-256-10, batch 128): a Dense written as a custom layer (``pynn.ops.matmul`` +
   bias + ``relu``, gradients from the recording) against the built-in Dense, trained by the
   same ``fit``. Target: >= 0.7x the built-in's images/s.
2. Small CNN (32x32x3, Conv-Pool-Conv-Pool-Dense-Dense, batch 64): a custom training loop with
   ``pynn.GradientTape`` + ``optimizer.apply`` against ``fit``. Target: >= 0.9x fit's
   images/s.
3. The MLP's Dense layers with ``activation=`` a pynn.ops callable that is not a known
   activation (``hard_relu``: max(x, 0) written with ops, so it cannot take the fused kernel)
   against ``activation="relu"``: the price of the extra recorded node. No target; reported.

Each pair first checks that both paths give the same weights after a few steps from the same
start (<= 1e-5), then times them in alternating rounds (a, b, a, b, ...) so both see the
same machine state, and reports medians. Run from the repository root:
``python -m bench.bench_custom [--quick] [--json PATH]``.
"""

import argparse
import json
import statistics
import time

import numpy as np

import pynn
from pynn import layers, ops


class OpsDense(layers.Layer):
    """Dense as a user writes it with pynn.ops."""

    def __init__(self, units, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.activation = activation

    def build(self, input_shape):
        self.kernel = self.add_weight("kernel", (input_shape[-1], self.units), "glorot_uniform")
        self.bias = self.add_weight("bias", (self.units,), "zeros")
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def call(self, x, training=False):
        z = ops.matmul(x, self.kernel) + self.bias
        return ops.relu(z) if self.activation == "relu" else z


def hard_relu(t):
    """relu as a user writes it with ops: a callable pynn has no fused kernel for."""
    return ops.maximum(t, 0.0)


def mlp(custom, activation="relu"):
    dense = OpsDense if custom else layers.Dense
    model = pynn.Sequential([layers.Input((784,)), dense(512, activation=activation),
                             dense(256, activation=activation), dense(10)])
    model.compile(pynn.optimizers.Adam(1e-3),
                  pynn.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def cnn():
    model = pynn.Sequential([
        layers.Input((32, 32, 3)),
        layers.Conv2D(32, 3, padding="same", activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(64, 3, padding="same", activation="relu"), layers.MaxPooling2D(2),
        layers.Flatten(), layers.Dense(128, activation="relu"), layers.Dense(10)])
    model.compile(pynn.optimizers.Adam(1e-3),
                  pynn.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def tape_epoch(model, x, y, batch):
    loss_fn, opt = model.loss, model.optimizer
    weights = model.trainable_weights
    for lo in range(0, len(x), batch):
        xb, yb = x[lo:lo + batch], y[lo:lo + batch]
        with pynn.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        opt.apply(tape.gradient(loss, weights), weights)


def fit_epoch(model, x, y, batch):
    model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)


def max_diff(a, b):
    return max(float(np.abs(u - v).max()) for u, v in zip(a.get_weights(), b.get_weights()))


def alternate(a, b, rounds):
    """Median seconds of a() and b(), timed in alternating rounds."""
    ta, tb = [], []
    a(), b()  # warm up (allocations, BLAS threads)
    for _ in range(rounds):
        t0 = time.perf_counter()
        a()
        ta.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b()
        tb.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def bench_mlp(steps, rounds, batch=128):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((steps * batch, 784)).astype(np.float32)
    y = rng.integers(0, 10, steps * batch).astype(np.int32)
    builtin, custom = mlp(False), mlp(True)
    custom.set_weights(builtin.get_weights())
    fit_epoch(builtin, x[:3 * batch], y[:3 * batch], batch)
    fit_epoch(custom, x[:3 * batch], y[:3 * batch], batch)
    diff = max_diff(builtin, custom)
    assert diff <= 1e-5, f"custom Dense diverged from Dense: {diff}"
    t_builtin, t_custom = alternate(lambda: fit_epoch(builtin, x, y, batch),
                                    lambda: fit_epoch(custom, x, y, batch), rounds)
    n = len(x)
    return {"check_max_weight_diff": diff, "builtin_images_per_s": n / t_builtin,
            "custom_images_per_s": n / t_custom, "ratio": t_builtin / t_custom,
            "target": 0.7, "met": t_builtin / t_custom >= 0.7}


def bench_callable_activation(steps, rounds, batch=128):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((steps * batch, 784)).astype(np.float32)
    y = rng.integers(0, 10, steps * batch).astype(np.int32)
    fused, callable_act = mlp(False), mlp(False, activation=hard_relu)
    callable_act.set_weights(fused.get_weights())
    fit_epoch(fused, x[:3 * batch], y[:3 * batch], batch)
    fit_epoch(callable_act, x[:3 * batch], y[:3 * batch], batch)
    diff = max_diff(fused, callable_act)
    assert diff <= 1e-5, f"Dense(activation=fn) diverged from Dense('relu'): {diff}"
    t_fused, t_callable = alternate(lambda: fit_epoch(fused, x, y, batch),
                                    lambda: fit_epoch(callable_act, x, y, batch), rounds)
    n = len(x)
    return {"check_max_weight_diff": diff, "fused_images_per_s": n / t_fused,
            "callable_images_per_s": n / t_callable, "ratio": t_fused / t_callable}


def bench_cnn(steps, rounds, batch=64):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((steps * batch, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, steps * batch).astype(np.int32)
    by_fit, by_tape = cnn(), cnn()
    by_tape.set_weights(by_fit.get_weights())
    fit_epoch(by_fit, x[:2 * batch], y[:2 * batch], batch)
    tape_epoch(by_tape, x[:2 * batch], y[:2 * batch], batch)
    diff = max_diff(by_fit, by_tape)
    assert diff <= 1e-5, f"tape loop diverged from fit: {diff}"
    t_fit, t_tape = alternate(lambda: fit_epoch(by_fit, x, y, batch),
                              lambda: tape_epoch(by_tape, x, y, batch), rounds)
    n = len(x)
    return {"check_max_weight_diff": diff, "fit_images_per_s": n / t_fit,
            "tape_images_per_s": n / t_tape, "ratio": t_fit / t_tape, "target": 0.9,
            "met": t_fit / t_tape >= 0.9}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and rounds")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    steps, rounds = (5, 3) if args.quick else (20, 7)
    results = {"threads": pynn.get_num_threads(), "mlp_custom_dense": bench_mlp(steps, rounds),
               "cnn_tape_loop": bench_cnn(max(steps // 2, 3), rounds),
               "mlp_callable_activation": bench_callable_activation(steps, rounds)}
    for name, r in results.items():
        if isinstance(r, dict):
            speeds = {k: round(v) for k, v in r.items() if k.endswith("images_per_s")}
            target = (f" (target >= {r['target']}, {'met' if r['met'] else 'NOT met'})"
                      if "target" in r else "")
            print(f"{name}: {speeds} ratio {r['ratio']:.3f}{target}; check diff "
                  f"{r['check_max_weight_diff']:.1e}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
