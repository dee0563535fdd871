"""Time one step of pynn's Lamb, Adafactor and Muon against Keras 3's own (torch backend, CPU).

The parameters are an MLP's and a conv net's (Dense kernels and biases, a 3x3 Conv2D kernel
of rank 4). Each optimizer's first step is first checked against Keras's on the same
gradients (weights within 1e-5 relative), then ``opt.apply`` is timed for both: pynn's fused
kernels (one op per variable, norms and means inside) and Keras's update_step on torch
tensors, the same thread count, in this process. pynn and Keras alternate in rounds so both
see the same machine load; each round keeps the best of --repeat steps, the table shows the
median round.

    .venv/bin/python bench/bench_optimizers_keras3.py [--threads 2] [--repeat 5] [--rounds 3]
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# name -> shape, under the paths pynn and Keras both give them (Muon reads the paths).
PARAMS = {"dense/kernel": (784, 512), "dense/bias": (512,), "dense_1/kernel": (512, 512),
          "dense_1/bias": (512,), "conv2d/kernel": (3, 3, 64, 128), "conv2d/bias": (128,),
          "head/kernel": (512, 10), "head/bias": (10,)}
OPTIMIZERS = ("Lamb", "Adafactor", "Muon")


def problem(seed=1):
    import numpy as np

    rng = np.random.default_rng(seed)
    weights = {p: rng.uniform(-0.1, 0.1, s).astype(np.float32) for p, s in PARAMS.items()}
    grads = {p: rng.standard_normal(s).astype(np.float32) * 0.01 for p, s in PARAMS.items()}
    return weights, grads


def pynn_step(name, weights, grads):
    from pynn import optimizers
    from pynn.variables import Variable

    opt = getattr(optimizers, name)()
    variables = [Variable(w.copy(), p) for p, w in weights.items()]
    for v in variables:
        v.grad = grads[v.path]
    return (lambda: opt.apply(variables)), variables


def keras_step(keras, name, weights, grads):
    opt = getattr(keras.optimizers, name)()
    kvars = []
    for path, w in weights.items():
        layer, weight = path.split("/")
        with keras.name_scope(layer):
            kvars.append(keras.Variable(w.copy(), name=weight, dtype="float32"))
    tensors = [keras.ops.convert_to_tensor(grads[p]) for p in weights]
    return (lambda: opt.apply(tensors, kvars)), kvars


def check(keras, name):
    import numpy as np

    weights, grads = problem()
    step, variables = pynn_step(name, weights, grads)
    step()
    kstep, kvars = keras_step(keras, name, weights, grads)
    kstep()
    for v, k in zip(variables, kvars):
        want = keras.ops.convert_to_numpy(k.value)
        err = float(np.abs(v.value - want).max()) / float(np.abs(want).max())
        if err > 1e-5:
            raise SystemExit(f"{name} {v.path}: pynn differs from Keras by {err:.3g}")


def best(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras
    import torch

    from pynn._native.info import set_num_threads

    torch.set_num_threads(args.threads)
    set_num_threads(args.threads)
    n = sum(int(__import__("math").prod(s)) for s in PARAMS.values())
    print(f"{len(PARAMS)} variables, {n} parameters, {args.threads} threads; ms per step "
          f"(median of {args.rounds} rounds, best of {args.repeat})")
    print(f"{'optimizer':<10} {'pynn':>8} {'keras/torch':>12} {'ratio':>7}")
    for name in OPTIMIZERS:
        check(keras, name)
        weights, grads = problem()
        ours, theirs = [], []
        for _ in range(args.rounds):
            ours.append(best(pynn_step(name, weights, grads)[0], args.repeat))
            theirs.append(best(keras_step(keras, name, weights, grads)[0], args.repeat))
        a, b = statistics.median(ours) * 1e3, statistics.median(theirs) * 1e3
        print(f"{name:<10} {a:8.2f} {b:12.2f} {b / a:6.1f}x")


if __name__ == "__main__":
    main()
