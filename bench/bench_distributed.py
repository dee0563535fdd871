"""Data-parallel throughput: run as ``mpiexec -n P python -m bench.bench_distributed`` for
P = 1, 2. Trains the MLP (784-256-128-10, global batch 256) under DataParallel and reports
samples/s and the share of step time spent reducing gradients; rank 0 appends a JSON record
to bench/results/distributed.json. On a 2-core machine 2 ranks x 1 thread compete with
1 rank x 2 threads, so expect little gain: the numbers say how much allreduce costs."""

import json
import os
import sys
import time

import numpy as np

import pynn
import pynn.distributed as dist
from pynn import layers


def main(epochs=3, n=4096, batch_size=256, compression=None):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 784)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, n)]
    strategy = dist.DataParallel(compression=compression)
    with strategy.scope():
        pynn.utils.set_random_seed(0)
        model = pynn.Sequential([layers.Input((784,)), layers.Dense(256, activation="relu"),
                                 layers.Dense(128, activation="relu"), layers.Dense(10)])
        model.compile(pynn.optimizers.SGD(0.01), "mse")
    model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)  # warm-up
    strategy._reducer.seconds = 0.0
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0)
    seconds = time.perf_counter() - start
    record = {"ranks": dist.size(), "threads_per_rank": pynn._config.get_num_threads(),
              "compression": compression, "global_batch": batch_size,
              "samples_per_s": epochs * n / seconds,
              "allreduce_share": strategy.allreduce_seconds / seconds}
    if dist.is_primary():
        print(json.dumps(record))
        path = os.path.join(os.path.dirname(__file__), "results", "distributed.json")
        old = []
        if os.path.exists(path):
            with open(path) as f:
                old = json.load(f)
        with open(path, "w") as f:
            json.dump(old + [record], f, indent=1)


if __name__ == "__main__":
    main(compression=sys.argv[1] if len(sys.argv) > 1 else None)
