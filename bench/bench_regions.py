"""OpenMP regions per training step, by model and by op (pynn's worker team, issue 17).

pynn's parallel loops run on its own worker team (native/_team.h); a loop still on an OpenMP
``prange`` wakes libgomp's threads instead, an interrupt to the other core after any pause
(18-38 us measured), and two thread pools then hand the cores back and forth. This counts,
with an LD_PRELOAD wrapper of libgomp's ``GOMP_parallel`` (compiled here with the system C
compiler), the regions of more than one thread that each model's training step opens, and
which backend op opened them, and times the step. Every model listed should show 0.

    .venv/bin/python bench/bench_regions.py [--steps 5] [--json PATH]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_COUNTER = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
static long long multi = 0;
typedef void (*gp_t)(void (*)(void*), void*, unsigned, unsigned);
void GOMP_parallel(void (*fn)(void*), void* data, unsigned num_threads, unsigned flags) {
    static gp_t real = 0;
    if (!real) {
        real = (gp_t)dlsym(RTLD_NEXT, "GOMP_parallel");
        if (!real) real = (gp_t)dlsym(dlopen("libgomp.so.1", RTLD_NOW), "GOMP_parallel");
    }
    if (num_threads != 1) multi++;
    real(fn, data, num_threads, flags);
}
long long pynn_bench_regions(void) { return multi; }
"""

# The probe: runs in a child with the counter preloaded, prints one JSON line per model.
_PROBE = r"""
import ctypes, json, sys, time
sys.path.insert(0, ROOT)
import numpy as np
import pynn
import pynn.backend.cpu as be
from pynn import layers as L
from pynn.backend import api

lib = ctypes.CDLL(LIB)
pynn.set_num_threads(2)
per_op = {}

def wrap(op, fn):
    def counted(*args, **kwargs):
        before = lib.pynn_bench_regions()
        out = fn(*args, **kwargs)
        opened = lib.pynn_bench_regions() - before
        if opened:
            per_op[op] = per_op.get(op, 0) + opened
        return out
    return counted

for op in api.OPS:
    if hasattr(be, op):
        setattr(be, op, wrap(op, getattr(be, op)))

rng = np.random.default_rng(0)
y64 = rng.integers(0, 10, 64).astype(np.int32)
y128 = rng.integers(0, 10, 128).astype(np.int32)
img = rng.random((64, 32, 32, 3)).astype(np.float32)
flat = rng.random((128, 784)).astype(np.float32)
seq = rng.random((64, 40, 32)).astype(np.float32)
seq[:, 30:] = 0
ids = rng.integers(1, 1000, (64, 50)).astype(np.int32)

def mlp(head=None):
    return pynn.Sequential([L.Input((784,)), L.Dense(512, activation="relu"),
                            L.Dense(256, activation="relu"),
                            head or L.Dense(10, activation="softmax")])

def concat_net():
    inp = pynn.Input((32, 32, 3))
    a = L.Conv2D(16, 3, padding="same", activation="relu")(inp)
    b = L.Conv2D(16, 1, activation="relu")(inp)
    c = L.Concatenate()([a, b])
    d = L.Cropping2D(1)(L.ZeroPadding2D(1)(L.UpSampling2D()(L.MaxPooling2D()(c))))
    return pynn.Model(inp, L.Dense(10, activation="softmax")(L.GlobalAveragePooling2D()(d)))

def attention_net():
    inp = pynn.Input((40, 32))
    a = L.Dense(32)(inp)
    d = L.Dot(axes=(2, 1))([a, L.Permute((2, 1))(a)])
    s = L.Softmax()(d)
    return pynn.Model(inp, L.Dense(10, activation="softmax")(L.Flatten()(s)))

CASES = [
    ("mlp adam", mlp, "adam", None, flat, y128),
    ("mlp sgd momentum, accuracy", mlp, "sgd", ["accuracy"], flat, y128),
    ("mlp rmsprop", mlp, "rmsprop", None, flat, y128),
    ("mlp nadam", mlp, "nadam", None, flat, y128),
    ("mlp lion", mlp, "lion", None, flat, y128),
    ("mlp adamw clipnorm", mlp, "adamw", None, flat, y128),
    ("cnn bn dropout", lambda: pynn.Sequential([
        L.Input((32, 32, 3)), L.Conv2D(32, 3, padding="same"), L.BatchNormalization(),
        L.Activation("relu"), L.MaxPooling2D(), L.Dropout(0.25), L.Flatten(),
        L.Dense(128, activation="relu"), L.Dropout(0.5), L.Dense(10, activation="softmax")]),
     "adam", None, img, y64),
    ("cnn prelu spatial dropout noise", lambda: pynn.Sequential([
        L.Input((32, 32, 3)), L.Conv2D(32, 3, padding="same"), L.PReLU(),
        L.AveragePooling2D(), L.SpatialDropout2D(0.2), L.Conv2D(32, 3, padding="same"),
        L.LeakyReLU(0.1), L.GaussianNoise(0.1), L.Flatten(), L.Dense(10), L.Softmax()]),
     "adam", None, img, y64),
    ("depthwise separable", lambda: pynn.Sequential([
        L.Input((32, 32, 3)), L.Conv2D(32, 3, padding="same", activation="relu"),
        L.DepthwiseConv2D(3, padding="same", activation="relu"),
        L.SeparableConv2D(64, 3, padding="same", activation="relu"),
        L.GlobalAveragePooling2D(), L.Dense(10, activation="softmax")]), "adam", None, img, y64),
    ("concat upsample pad crop", concat_net, "adam", None, img, y64),
    ("layer norm", lambda: pynn.Sequential([
        L.Input((40, 32)), L.Dense(128, activation="relu"), L.LayerNormalization(),
        L.Dense(128), L.LayerNormalization(), L.GlobalAveragePooling1D(),
        L.Dense(10, activation="softmax")]), "adam", None, seq, y64),
    ("masked lstm gru", lambda: pynn.Sequential([
        L.Input((40, 32)), L.Masking(0.0), L.LSTM(64, return_sequences=True), L.GRU(64),
        L.Dense(10, activation="softmax")]), "adam", None, seq, y64),
    ("embedding conv1d bidirectional", lambda: pynn.Sequential([
        L.Input((50,), dtype="int32"), L.Embedding(1000, 64, mask_zero=True),
        L.Conv1D(64, 5, activation="relu"), L.MaxPooling1D(2), L.GlobalMaxPooling1D(),
        L.Dense(10, activation="softmax")]), "adam", None, ids, y64),
    ("attention-like dot softmax", attention_net, "adam", None, seq, y64),
    ("mlp 1000 classes", lambda: mlp(L.Dense(1000, activation="softmax")), "adam", None,
     flat, rng.integers(0, 1000, 128).astype(np.int32)),
    ("augmentation layers", lambda: pynn.Sequential([
        L.Input((32, 32, 3)), L.Rescaling(1 / 255.0), L.RandomFlip("horizontal"),
        L.RandomRotation(0.1), L.RandomZoom(0.1), L.RandomContrast(0.2),
        L.Conv2D(16, 3, activation="relu"), L.GlobalAveragePooling2D(),
        L.Dense(10, activation="softmax")]), "adam", None, img, y64),
    ("autoencoder mse", lambda: pynn.Sequential([
        L.Input((784,)), L.Dense(512, activation="relu"), L.Dense(784, activation="sigmoid")]),
     "adam", None, flat, flat),
]

for name, make, opt, metrics, x, y in CASES:
    model = make()
    loss = "mse" if y.dtype != np.int32 else "sparse_categorical_crossentropy"
    model.compile(opt, loss, metrics=metrics)
    for _ in range(3):
        model.train_on_batch(x, y)
    per_op.clear()
    before = lib.pynn_bench_regions()
    start = time.perf_counter()
    for _ in range(STEPS):
        model.train_on_batch(x, y)
    ms = (time.perf_counter() - start) / STEPS * 1e3
    regions = (lib.pynn_bench_regions() - before) / STEPS
    print(json.dumps({"model": name, "regions_per_step": regions, "ms_per_step": round(ms, 3),
                      "ops": {k: v / STEPS for k, v in sorted(per_op.items())}}), flush=True)
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        src, lib = os.path.join(tmp, "counter.c"), os.path.join(tmp, "libcounter.so")
        with open(src, "w") as f:
            f.write(_COUNTER)
        cc = os.environ.get("CC", "cc")
        subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", lib, src, "-ldl"], check=True)
        code = f"ROOT = {str(ROOT)!r}\nLIB = {lib!r}\nSTEPS = {args.steps}\n" + _PROBE
        env = dict(os.environ, LD_PRELOAD=lib)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True)
    if out.returncode:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"bench_regions: the probe failed (exit {out.returncode})")
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    for r in rows:
        ops = ", ".join(f"{k} {v:g}" for k, v in r["ops"].items())
        print(f"{r['model']:34s} regions/step {r['regions_per_step']:5.1f}  "
              f"{r['ms_per_step']:8.2f} ms  {ops}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": 2, "steps": args.steps, "rows": rows}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
