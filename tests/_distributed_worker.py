"""Run under mpiexec by tests/test_distributed.py: trains the same small MLP data-parallel and
writes rank 0's weights and every rank's logs as JSON to the path in argv[2]."""

import json
import os
import sys

import numpy as np

import pynn
import pynn.distributed as dist
from pynn import layers


def build(seed):
    pynn.utils.set_random_seed(seed)
    model = pynn.Sequential([layers.Input((5,)), layers.Dense(7, activation="tanh"),
                             layers.Dense(3)])
    return model


def data():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((23, 5)).astype(np.float32),
            rng.standard_normal((23, 3)).astype(np.float32))


def main(mode, out, workdir=None):
    x, y = data()
    kwargs = {"deterministic": mode == "deterministic",
              "compression": "fp16" if mode == "fp16" else None}

    callbacks = []
    if mode == "horovod":
        model = build(1 + dist.rank())
        model.compile(dist.DistributedOptimizer(pynn.optimizers.SGD(0.1)), "mse")
        callbacks = [dist.BroadcastGlobalVariablesCallback(0), dist.MetricAverageCallback()]
        p, r = dist.size(), dist.rank()
        x, y = x[r::p], y[r::p]
        history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0,
                            callbacks=callbacks)
    elif mode == "single":  # the reference: one process, no pynn.distributed strategy
        model = build(1)
        model.compile(pynn.optimizers.Adam(0.01), "mse")
        history = model.fit(x, y, batch_size=5, epochs=3, shuffle=True, verbose=0)
    else:
        strategy = dist.DataParallel(**kwargs)
        if mode == "raise" and dist.rank() == 1:
            raise RuntimeError("rank 1 fails on purpose")
        with strategy.scope():
            model = build(1 + dist.rank())  # different initial weights on each rank
            model.compile(pynn.optimizers.Adam(0.01), "mse")
        if workdir:
            callbacks = [pynn.callbacks.ModelCheckpoint(
                os.path.join(workdir, f"ckpt{dist.rank()}-{{epoch}}.weights.h5"),
                save_weights_only=True)]
        history = model.fit(x, y, batch_size=5, epochs=3, shuffle=True, verbose=0,
                            callbacks=callbacks)
    result = {"weights": [w.tolist() for w in model.get_weights()],
              "history": history.history, "rank": dist.rank(), "size": dist.size()}
    with open(f"{out}.{dist.rank()}", "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
