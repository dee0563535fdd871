"""Run under mpiexec by tests/test_distributed.py: trains the same small MLP data-parallel and
writes rank 0's weights and every rank's logs as JSON to the path in argv[2]."""

import json
import os
import sys

import numpy as np

import pynn
import pynn.distributed as dist
from pynn import layers


def build(seed, batch_norm=None):
    pynn.utils.set_random_seed(seed)
    middle = []
    if batch_norm is not None:  # normalizing over the global batch, or over each rank's
        middle = [layers.BatchNormalization(momentum=0.8, synchronized=batch_norm)]
    model = pynn.Sequential([layers.Input((5,)), layers.Dense(7, activation="tanh")] + middle
                            + [layers.Dense(3)])
    return model


def data():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((23, 5)).astype(np.float32),
            rng.standard_normal((23, 3)).astype(np.float32))


OPTIMIZERS = {
    "sgd_momentum": lambda: pynn.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
    "adam": lambda: pynn.optimizers.Adam(0.01),
    "adamw": lambda: pynn.optimizers.AdamW(0.01, weight_decay=0.05),
    "rmsprop": lambda: pynn.optimizers.RMSprop(0.01, momentum=0.5),
    "adagrad": lambda: pynn.optimizers.Adagrad(0.05),
    "nadam": lambda: pynn.optimizers.Nadam(0.01),
    "adamax": lambda: pynn.optimizers.Adamax(0.01),
    "adadelta": lambda: pynn.optimizers.Adadelta(1.0),
    "ftrl": lambda: pynn.optimizers.Ftrl(0.05),
    "lion": lambda: pynn.optimizers.Lion(0.003),
}


class _Interrupt(Exception):
    pass


class _StopAtEpoch(pynn.callbacks.Callback):
    """Ends fit as a crash would, after the backup of ``epoch`` was written."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise _Interrupt()


class _KillSelf(pynn.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == 1 and dist.rank() == 1:
            import signal
            os.kill(os.getpid(), signal.SIGKILL)


class _Batches(pynn.utils.PyDataset):
    """``per_item`` samples per batch of data(); records which batches this process read."""

    def __init__(self, per_item):
        super().__init__()
        self.x, self.y = data()
        self.per_item = per_item
        self.read = []

    def __len__(self):
        return len(self.x) // self.per_item

    def __getitem__(self, i):
        self.read.append(i)
        part = slice(i * self.per_item, (i + 1) * self.per_item)
        return self.x[part], self.y[part]


def dataset_run(distributed):
    """23 samples in 7 batches of 3: 2 ranks read batches (0, 2, 4) and (1, 3, 5) as three
    global steps of 6 samples; one process reads the same as 3 batches of 6."""
    if distributed:
        strategy = dist.DataParallel()
        with strategy.scope():
            model = build(1 + dist.rank())
            model.compile(pynn.optimizers.Adam(0.01), "mse")
        source = _Batches(3)
    else:
        model = build(1)
        model.compile(pynn.optimizers.Adam(0.01), "mse")
        source = _Batches(6)
    history = model.fit(source, epochs=2, verbose=0)
    return model, history.history, sorted(set(source.read))


def optimizers_run(distributed):
    """Every optimizer trains the same model; rank 0's final weights per optimizer."""
    x, y = data()
    weights = {}
    for name, make in OPTIMIZERS.items():
        if distributed:
            strategy = dist.DataParallel()
            with strategy.scope():
                model = build(1 + dist.rank())
                model.compile(make(), "mse")
        else:
            model = build(1)
            model.compile(make(), "mse")
        model.fit(x, y, batch_size=5, epochs=2, shuffle=True, verbose=0)
        weights[name] = [w.tolist() for w in model.get_weights()]
    return weights


def resume_run(phase, workdir):
    """phase 'first': 4 epochs interrupted after the backup of epoch 2; 'resume': the same
    fit started again (here, possibly on another number of ranks) finishes epochs 3-4."""
    x, y = data()
    backup = pynn.callbacks.BackupAndRestore(os.path.join(workdir, "backup"))
    callbacks = [backup] + ([_StopAtEpoch(2)] if phase == "first" else [])
    if dist.size() > 1 or phase != "whole":
        strategy = dist.DataParallel()
        scope = strategy.scope()
    else:
        import contextlib
        scope = contextlib.nullcontext()
    with scope:
        model = build(1 + dist.rank())
        model.compile(pynn.optimizers.Adam(0.01), "mse")
    if phase == "whole":
        callbacks = []
    try:
        history = model.fit(x, y, batch_size=5, epochs=4, shuffle=True, verbose=0,
                            callbacks=callbacks)
    except _Interrupt:
        return model, {}
    return model, history.history


def main(mode, out, workdir=None):
    x, y = data()
    if mode in ("optimizers", "optimizers_single"):
        weights = optimizers_run(mode == "optimizers")
        with open(f"{out}.{dist.rank()}", "w") as f:
            json.dump({"weights": weights, "size": dist.size()}, f)
        return
    if mode in ("dataset", "dataset_single"):
        model, history, read = dataset_run(mode == "dataset")
        with open(f"{out}.{dist.rank()}", "w") as f:
            json.dump({"weights": [w.tolist() for w in model.get_weights()],
                       "history": history, "read": read}, f)
        return
    if mode.startswith("resume_"):
        model, history = resume_run(mode[len("resume_"):], workdir)
        result = {"weights": [w.tolist() for w in model.get_weights()], "history": history,
                  "size": dist.size()}
        with open(f"{out}.{dist.rank()}", "w") as f:
            json.dump(result, f)
        return
    kwargs = {"deterministic": mode == "deterministic",
              "compression": "fp16" if mode == "fp16" else None}
    if mode == "buckets":  # a bucket per variable or two: reductions start mid-backward
        kwargs["bucket_bytes"] = 64
    if mode == "nooverlap":
        kwargs["overlap"] = False

    callbacks = []
    if mode == "horovod":
        model = build(1 + dist.rank())
        model.compile(dist.DistributedOptimizer(pynn.optimizers.SGD(0.1)), "mse")
        callbacks = [dist.BroadcastGlobalVariablesCallback(0), dist.MetricAverageCallback()]
        p, r = dist.size(), dist.rank()
        x, y = x[r::p], y[r::p]
        history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0,
                            callbacks=callbacks)
    elif mode in ("single", "single_bn"):  # the reference: one process, no strategy
        model = build(1, False if mode == "single_bn" else None)
        model.compile(pynn.optimizers.Adam(0.01), "mse")
        history = model.fit(x, y, batch_size=5, epochs=3, shuffle=True, verbose=0)
    else:
        if mode == "mismatch" and dist.rank() == 1:
            x, y = x[:-6], y[:-6]
        if mode.startswith("opencl"):
            pynn.set_device("opencl")
        strategy = dist.DataParallel(**kwargs)
        if mode == "raise" and dist.rank() == 1:
            raise RuntimeError("rank 1 fails on purpose")
        with strategy.scope():
            # different initial weights on each rank
            model = build(1 + dist.rank(), True if "syncbn" in mode
                          else False if "localbn" in mode else None)
            model.compile(pynn.optimizers.Adam(0.01), "mse")
        if mode == "kill":
            callbacks = [_KillSelf()]
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
