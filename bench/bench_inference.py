"""pynn's predict beside PyTorch eager and onnxruntime on the same models (issue 16).

Two models: the MLP 784-256-128-10 and the small CNN conv32-pool-conv64-pool-dense128-dense10
on 32x32x3, random weights. Each is first checked: onnxruntime (running the model exported by
pynn.onnx.export) and PyTorch (the same weights in torch.nn, channels moved for its NCHW
convolutions) give pynn's predictions to 1e-5 of the output scale. Then:

- latency: batch-1 and batch-64 calls, one thread each (pynn.set_num_threads(1),
  torch.set_num_threads(1), onnxruntime intra/inter-op threads 1), the runtimes' calls
  alternating so all see the same machine load: p50 and p99 per call, samples/s at the p50.
  --intra-threads N gives each runtime N threads per call; --burst K alternates the runtimes
  every K calls instead of every call (requests close together: each runtime's worker
  threads stay awake between its calls, as in a busy server).
  pynn's call is ``predict_on_batch`` (its prepared inference plan, pynn/inference.py); the
  general path (``model._plan.predict``, every op checked) is timed beside it as
  ``pynn-general``. PyTorch's call includes torch.from_numpy and .numpy(), as pynn's returns
  a NumPy array.
- --models lstm,gru: the suite's LSTM(128) and GRU(128) classifiers over 32 steps of 32
  features in the latency table (onnxruntime beside pynn; their exported graphs), e.g.
  ``--models lstm,gru --batch 1 --intra-threads 2`` for a batch-1 recurrence on two cores.
- --threads-scaling: N Python threads (--scaling-threads, default 1 and 2) calling one
  shared model at batch 1, each kernel on one OpenMP thread: requests/s of all threads
  together over a fixed time, rounds of N alternating, medians; onnxruntime's shared
  session beside it, and a GIL-free NumPy product as the ceiling the machine allows at the
  time. Also the share of a call spent inside native kernels (GIL released) and the Amdahl
  bound it sets for two threads.
- --footprint: ``import pynn`` time (fresh interpreters, median; with a bytecode cache, as an
  installed package has, and without one) and the resident memory
  after ``import pynn`` and after loading the saved demo model (pynn.demo) and predicting.
- --serial-threshold: the plan forced onto one OpenMP thread against two, per model and
  batch, to place pynn.inference.SERIAL_MAX_MACS.
- --breakdown: where the MLP's batch-1 time goes, from the general path down to BLAS alone.
- --conv-algorithms: the small CNN with its convs planned by the rule before the
  twenty-seventh session (direct below 512 Winograd tiles) against today's (Winograd
  natively from 16 tiles), onnxruntime beside, calls alternated (--intra-threads threads).

    .venv/bin/python bench/bench_inference.py [--repeat 400] [--warmup 20] [--batch 1,64]
        [--intra-threads N] [--burst K] [--threads-scaling] [--footprint]
        [--serial-threshold] [--breakdown] [--conv-algorithms] [--json PATH]
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# pynn before NumPy, so that the BLAS threads' settings pynn makes are read (bench/README.md).
import pynn
import pynn.onnx

# isort: split
import numpy as np

from pynn import inference
from pynn import layers as L


def mlp():
    return pynn.Sequential([L.Input((784,)), L.Dense(256, activation="relu"),
                            L.Dense(128, activation="relu"), L.Dense(10, activation="softmax")])


def cnn():
    return pynn.Sequential([
        L.Input((32, 32, 3)),
        L.Conv2D(32, 3, padding="same", activation="relu"), L.MaxPooling2D(),
        L.Conv2D(64, 3, padding="same", activation="relu"), L.MaxPooling2D(),
        L.Flatten(), L.Dense(128, activation="relu"), L.Dense(10, activation="softmax"),
    ])


def lstm():
    """The suite's sequence classifier (bench/models_seq.py): 32 steps of 32 features."""
    return pynn.Sequential([L.Input((32, 32)), L.LSTM(128), L.Dense(10, activation="softmax")])


def gru():
    return pynn.Sequential([L.Input((32, 32)), L.GRU(128), L.Dense(10, activation="softmax")])


MODELS = {"mlp_784_256_128_10": mlp, "cnn_32x32x3": cnn}
# --models lstm,gru: a batch-1 recurrence runs one GEMV a step (native/rnn.pyx); no PyTorch
# twin here (bench/bench_rnn.py times PyTorch's LSTM and GRU). --models mlpdigits: the MLP
# fed digits (zeros around the strokes) instead of normal noise.
EXTRA_MODELS = {"lstm_32x32_128": lstm, "gru_32x32_128": gru, "mlpdigits_784_256_128_10": mlp}


def digit_images(n, rng):
    """n of scikit-learn's 8x8 digits scaled to [0, 1], each pixel 3x3, on a 28x28 canvas
    (MNIST's layout): ~60% of the 784 inputs zero."""
    from sklearn.datasets import load_digits

    images = load_digits().images
    pick = images[rng.integers(0, len(images), n)]
    canvas = np.zeros((n, 28, 28), np.float32)
    canvas[:, 2:26, 2:26] = np.kron(pick, np.ones((1, 3, 3))) / 16.0
    return canvas.reshape(n, 784)


INPUTS = {"mlpdigits_784_256_128_10": digit_images}  # others: standard normal noise


def randomize(model, rng):
    model.set_weights([rng.uniform(-0.1, 0.1, w.shape).astype(w.dtype)
                       for w in model.get_weights()])


def session(proto, threads=1):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def torch_model(model):
    """The same layers and weights in torch.nn (eager): Dense -> Linear (kernel transposed),
    Conv2D -> Conv2d (kernel HWIO -> OIHW) on NCHW; before Flatten the activations go back
    to NHWC so the Dense after it reads pynn's order. None without torch."""
    try:
        import torch
    except ImportError:
        return None
    mods = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Dense":
            lin = torch.nn.Linear(layer.kernel.shape[0], layer.units)
            lin.weight.data = torch.from_numpy(np.ascontiguousarray(layer.kernel.value.T))
            lin.bias.data = torch.from_numpy(np.array(layer.bias.value))
            mods.append(lin)
        elif kind == "Conv2D":
            k = layer.kernel.value
            conv = torch.nn.Conv2d(k.shape[2], k.shape[3], k.shape[:2], padding="same")
            conv.weight.data = torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1)))
            conv.bias.data = torch.from_numpy(np.array(layer.bias.value))
            mods.append(conv)
        elif kind == "MaxPooling2D":
            mods.append(torch.nn.MaxPool2d(2))
            continue
        elif kind == "Flatten":
            mods += [_NHWC(), torch.nn.Flatten()]
            continue
        else:
            return None  # (recurrent layers: no twin here)
        act = layer.activation
        mods.append(torch.nn.ReLU() if act == "relu" else torch.nn.Softmax(dim=1))
    net = torch.nn.Sequential(*mods).eval()
    nchw = len(model.input_shape) == 4

    def run(x):
        with torch.inference_mode():
            t = torch.from_numpy(x)
            if nchw:
                t = t.permute(0, 3, 1, 2)
            return net(t).numpy()

    return run


def _NHWC():
    import torch

    class NHWC(torch.nn.Module):
        def forward(self, x):
            return x.permute(0, 2, 3, 1)

    return NHWC()


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def percentiles_us(times):
    t = np.asarray(times) * 1e6
    return float(np.percentile(t, 50)), float(np.percentile(t, 99))


def check(name, batch, what, got, want):
    err = float(np.abs(got - want).max()) / max(1.0, float(np.abs(want).max()))
    if err > 1e-5:
        raise SystemExit(f"{name} batch {batch}: {what} differs from pynn by {err:.2e}")


def bench_model(name, make, batches, repeat, warmup, rng, threads=1, burst=1):
    """threads: each runtime's own threads per call (pynn.set_num_threads, torch's,
    onnxruntime's intra-op pool). burst: calls of one runtime back to back before the next
    runtime's turn (1: every call alternates; more: requests close together, which keep
    a runtime's worker threads awake between its calls)."""
    import torch

    torch.set_num_threads(threads)
    pynn.set_num_threads(threads)
    model = make()
    randomize(model, rng)
    sess = session(pynn.onnx.export(model), threads)
    feed = sess.get_inputs()[0].name
    torch_run = torch_model(model)
    rows = []
    for batch in batches:
        x = (INPUTS[name](batch, rng) if name in INPUTS else
             rng.standard_normal((batch,) + tuple(model.input_shape[1:])).astype(np.float32))
        want = model._plan.predict([x])[0]
        check(name, batch, "the inference plan", model.predict_on_batch(x), want)
        check(name, batch, "onnxruntime", sess.run(None, {feed: x})[0], want)
        calls = {"pynn": lambda x=x: model.predict_on_batch(x),
                 "pynn-general": lambda x=x: model._plan.predict([x]),
                 "onnxruntime": lambda x=x: sess.run(None, {feed: x})}
        if torch_run is not None:
            check(name, batch, "PyTorch", torch_run(x), want)
            calls["pytorch-eager"] = lambda x=x: torch_run(x)
        for fn in calls.values():  # warm-up: plans, buffers, caches
            for _ in range(warmup):
                fn()
        times = {k: [] for k in calls}
        n = repeat if batch < 16 else max(repeat // 8, 20)
        for _ in range(max(n // burst, 1)):
            for k, fn in calls.items():
                for _ in range(burst):
                    start = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - start)
        for k, ts in times.items():
            p50, p99 = percentiles_us(ts)
            rows.append({"model": name, "batch": batch, "runtime": k, "threads": threads,
                         "burst": burst,
                         "p50_us": round(p50, 1), "p99_us": round(p99, 1),
                         "samples_per_s": round(batch / (p50 * 1e-6), 1)})
    return rows


def text_rnn(bidirectional, mask_zero=True, steps=40):
    """A padded-text classifier: ids -> Embedding(8000, 64, mask_zero) -> LSTM(128) (or
    Bidirectional) -> Dense(1, sigmoid)."""
    rnn = L.LSTM(128)
    return pynn.Sequential([
        L.Input((steps,), dtype="int32"), L.Embedding(8000, 64, mask_zero=mask_zero),
        L.Bidirectional(rnn) if bidirectional else rnn, L.Dense(1, activation="sigmoid")])


def bench_masked_text(repeat, warmup, rng):
    """Batch-1 requests of 40 token slots through a masked text model, every slot a token
    or half of them padding (before the tokens, Keras's pad_sequences default), one
    thread: pynn's plan, its general path, and onnxruntime on the same weights without the
    mask fed only the real tokens (ONNX's LSTM takes no Keras mask: what an onnxruntime
    user sends). Calls alternated; p50 / p99 us."""
    pynn.set_num_threads(1)
    rows = []
    for name, bidirectional in (("text_lstm_128", False), ("text_bilstm_128", True)):
        model = text_rnn(bidirectional)
        randomize(model, rng)
        twin = text_rnn(bidirectional, mask_zero=False, steps=None)
        twin.set_weights(model.get_weights())
        sess = session(pynn.onnx.export(twin))
        feed = sess.get_inputs()[0].name
        tokens = rng.integers(1, 8000, (1, 40)).astype(np.int32)
        for kept in (40, 20):
            x = tokens.copy()
            x[:, :40 - kept] = 0
            real = np.ascontiguousarray(tokens[:, 40 - kept:])
            want = model._plan.predict([x])[0]
            check(name, 1, "the inference plan", model.predict_on_batch(x), want)
            check(name, 1, "onnxruntime on the real tokens", sess.run(None, {feed: real})[0],
                  want)
            calls = {"pynn": lambda x=x: model.predict_on_batch(x),
                     "pynn-general": lambda x=x: model._plan.predict([x]),
                     "onnxruntime": lambda r=real: sess.run(None, {feed: r})}
            for fn in calls.values():
                for _ in range(warmup):
                    fn()
            times = {k: [] for k in calls}
            for _ in range(repeat):
                for k, fn in calls.items():
                    start = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - start)
            for k, ts in times.items():
                p50, p99 = percentiles_us(ts)
                rows.append({"model": name, "tokens_of_40": kept, "runtime": k,
                             "p50_us": round(p50, 1), "p99_us": round(p99, 1)})
    return rows


# -- thread scaling ------------------------------------------------------------------------
def _requests_per_s(fn, n_threads, seconds):
    """Calls of fn per second from n_threads Python threads together, over `seconds`."""
    counts = [0] * n_threads
    stop = threading.Event()
    start = threading.Barrier(n_threads + 1)

    def worker(k):
        start.wait()
        c = 0
        while not stop.is_set():
            fn()
            c += 1
        counts[k] = c

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def bench_threads(rounds, seconds, counts, rng):
    rows = []
    # What N threads can reach on the machine at the time: GIL-free NumPy work from N
    # threads, each into its own output, timed in the same rounds as the runtimes. A
    # product (BLAS at one thread) and a ufunc pass (no BLAS: some BLAS builds serialize
    # concurrent calls behind a lock). On a machine shared with other work this is the
    # ceiling the scaling of the runtimes beside it must be read against.
    a = rng.standard_normal((192, 192)).astype(np.float32)
    v = rng.uniform(1.0, 2.0, 1 << 15).astype(np.float32)
    local = threading.local()

    def ufunc():
        out = getattr(local, "out", None)
        if out is None:
            out = local.out = np.empty_like(v)
        np.sqrt(v, out=out)

    controls = {"numpy-matmul-192 (ceiling)": lambda: a @ a,
                "numpy-sqrt-32k (ceiling)": ufunc}
    for name, make in MODELS.items():
        model = make()
        randomize(model, rng)
        sess = session(pynn.onnx.export(model))
        feed = sess.get_inputs()[0].name
        x = rng.standard_normal((1,) + tuple(model.input_shape[1:])).astype(np.float32)
        want = model.predict_on_batch(x)
        # Every thread's answers equal the one-thread answer (checked once, untimed).
        seen = []
        _requests_per_s(lambda m=model, x=x, s=seen: s.append(m.predict_on_batch(x)),
                        max(counts), 0.2)
        if not all(np.array_equal(y, want) for y in seen):
            raise SystemExit(f"{name}: a thread's prediction differs from one thread's")
        f = native_fraction(model, x, 2000 if name.startswith("mlp") else 300)
        rows.append({"model": name, "runtime": "pynn", "native_share_of_call": round(f, 3),
                     "amdahl_bound_2_threads": round(1 / ((1 - f) + f / 2), 2)})
        calls = {"pynn": lambda m=model, x=x: m.predict_on_batch(x),
                 "onnxruntime": lambda s=sess, f=feed, x=x: s.run(None, {f: x}), **controls}
        rates = {(k, n): [] for k in calls for n in counts}
        for _ in range(rounds):
            for n in counts:
                for k, fn in calls.items():
                    rates[(k, n)].append(_requests_per_s(fn, n, seconds))
        for (k, n), rs in rates.items():
            # Each round's N-thread rate over the same round's one-thread rate: the load
            # others put on a shared machine changes between rounds more than within one.
            gain = np.median(np.asarray(rs) / np.asarray(rates[(k, counts[0])]))
            rows.append({"model": name, "runtime": k, "python_threads": n,
                         "requests_per_s": round(float(np.median(rs)), 1),
                         "vs_one_thread": round(float(gain), 2)})
    return rows


def native_fraction(model, x, calls):
    """The share of a plan call's time spent inside its native kernel calls (which release
    the GIL for their arithmetic; the Python around them holds it), by timing those calls
    from wrappers. An upper bound on the GIL-free share (the wrapped calls also convert
    their arguments with the GIL held), so 1 / ((1 - f) + f / 2) bounds what two threads
    can gain on two idle cores (Amdahl)."""
    model.predict_on_batch(x)
    plan = model._inference.plans[x.shape]
    inside = [0.0]

    def timed(fn):
        def call(*args):
            start = time.perf_counter()
            out = fn(*args)
            inside[0] += time.perf_counter() - start
            return out
        return call

    class Chain:
        def __init__(self, chain):
            self.chain, self.run = chain, timed(chain.run)

        def scratch(self):
            return self.chain.scratch()

    class Runs:  # a native object whose run method is the kernel call
        def __init__(self, kernel):
            self.run = timed(kernel.run)

    state = model._inference
    saved = []
    if state.lane is not None and x.shape == (1,) + tuple(model.input_shape[1:]):
        # The batch-1 lane: the whole call is one native entry point (its argument checks
        # and output allocation hold the GIL, so this share too is an upper bound).
        saved.append((state, "lane", state.lane))
        state.lane = timed(state.lane)
    for r in plan.steps:
        # The one-thread twins' native objects (pynn/inference.py _serial_twin).
        for attr in ("values_only", "direct"):
            if r.__dict__.get(attr) is not None:
                saved.append((r, attr, r.__dict__[attr]))
                setattr(r, attr, Runs(r.__dict__[attr]))
        for attr in ("_forward", "_padded", "_one_region"):
            if attr in r.__dict__:
                saved.append((r, attr, r.__dict__[attr]))
                setattr(r, attr, timed(r.__dict__[attr]))
        if "chain" in r.__dict__:
            saved.append((r, "chain", r.chain))
            r.chain = Chain(r.chain)
    try:
        for _ in range(20):
            model.predict_on_batch(x)
        inside[0] = 0.0
        start = time.perf_counter()
        for _ in range(calls):
            model.predict_on_batch(x)
        total = time.perf_counter() - start
    finally:
        for r, attr, value in saved:
            setattr(r, attr, value)
    return inside[0] / total


# -- footprint -------------------------------------------------------------------------------
def _fresh(code, pycache=None):
    """Runs code in a new interpreter; pycache: a bytecode cache folder (an installed
    package has its .pyc files), None: every module compiled from source, as with
    PYTHONDONTWRITEBYTECODE=1 (which some environments set)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(ROOT)
    if pycache is None:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    else:
        env["PYTHONPYCACHEPREFIX"] = pycache
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=str(ROOT), check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


_RSS = ("def rss():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmRSS:'):\n"
        "            return int(line.split()[1]) / 1024\n")


def bench_footprint(runs):
    timed = ("import time, json\nt = time.perf_counter()\nimport pynn\n"
             "print(json.dumps(time.perf_counter() - t))")
    with tempfile.TemporaryDirectory() as pycache:
        _fresh(timed, pycache)  # fills the bytecode cache
        times = [_fresh(timed, pycache) for _ in range(runs)]
    uncached = [_fresh(timed) for _ in range(runs)]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "demo.pynn")
        _fresh(f"import json, pynn.demo\npynn.demo.build_model().save({path!r})\n"
               f"print(json.dumps(0))")
        mem = _fresh(_RSS + "import json, sys\nbase = rss()\nimport pynn\nafter = rss()\n"
                     "import numpy as np\n"
                     f"m = pynn.load_model({path!r})\n"
                     "m.predict_on_batch(np.zeros((1, 8, 8, 1), np.float32))\n"
                     "mods = [k for k in ('pyopencl', 'scipy', 'keras', 'torch') "
                     "if k in sys.modules]\n"
                     "print(json.dumps([base, after, rss(), mods]))")
    return {"import_ms_median": round(float(np.median(times)) * 1e3, 1),
            "import_ms_median_no_bytecode_cache": round(float(np.median(uncached)) * 1e3, 1),
            "rss_mb_python": round(mem[0], 1), "rss_mb_after_import_pynn": round(mem[1], 1),
            "rss_mb_after_demo_model_predict": round(mem[2], 1),
            "heavy_modules_after_predict": mem[3]}


# -- where one thread stops paying --------------------------------------------------------------
def bench_serial(repeat, rng):
    rows = []
    saved = inference.SERIAL_MAX_MACS
    try:
        for name, make in MODELS.items():
            model = make()
            randomize(model, rng)
            for batch in (1, 8, 64):
                x = rng.standard_normal((batch,) + tuple(model.input_shape[1:])).astype(
                    np.float32)
                times = {"serial": [], "parallel": []}
                n = repeat if batch == 1 else max(repeat // 8, 20)
                inference.SERIAL_MAX_MACS = 0
                model.__dict__.pop("_inference", None)
                model.predict_on_batch(x)
                plan = model._inference.plans[x.shape]
                for _ in range(n):
                    for label in ("serial", "parallel"):
                        plan.serial = label == "serial"
                        start = time.perf_counter()
                        model.predict_on_batch(x)
                        times[label].append(time.perf_counter() - start)
                s, p = (float(np.median(times[k])) * 1e6 for k in ("serial", "parallel"))
                rows.append({"model": name, "batch": batch, "macs": plan.macs,
                             "one_thread_us": round(s, 1), "two_threads_us": round(p, 1),
                             "two_over_one": round(p / s, 2)})
    finally:
        inference.SERIAL_MAX_MACS = saved
    return rows


# -- where batch-1 time goes ----------------------------------------------------------------
def bench_breakdown(repeat, rng):
    """The MLP at batch 1, layer by layer stripped down, alternated: the old predict_on_batch
    (the general path behind its input checks), the graph plan alone, the public dense op
    per layer, its one-region kernel into preallocated arrays, BLAS's GEMMs alone, the
    chain call (native/_gemv.h's GEMV per layer), the chain's whole batch-1 entry point
    (the lane), and model(x) and predict_on_batch through the plan."""
    from unittest import mock

    from pynn._native.infer import DenseChain

    from pynn._native import dense
    from pynn.backend import cpu
    from pynn.backend.api import ACTIVATIONS

    model = mlp()
    randomize(model, rng)
    x = rng.standard_normal((1, 784)).astype(np.float32)
    layers = model.layers
    ks = [layer.kernel.value for layer in layers]
    bs = [layer.bias.value for layer in layers]
    acts = [ACTIVATIONS.index(layer.activation) for layer in layers]
    outs = [np.empty((1, k.shape[1]), np.float32) for k in ks]
    chain = DenseChain(1, ks, bs, acts, [0.0] * 3)
    scratch = chain.scratch()

    def general():
        with mock.patch.object(inference, "outputs", lambda m, x: None):
            return model.predict_on_batch(x)

    def public_ops():
        h = x
        for k, b, layer in zip(ks, bs, layers):
            h, _ = cpu.dense_forward(h, k, b, layer.activation)
        return h

    def one_region():
        h = x
        for k, b, a, o in zip(ks, bs, acts, outs):
            dense._gemm_one_region(False, False, h, k, o, h.shape[1], b, o, a, 0.0)
            h = o

    def gemms():
        h = x
        for k, o in zip(ks, outs):
            dense._gemm(False, False, h, k, o, h.shape[1])
            h = o

    calls = {"predict_on_batch, general path (before)": general,
             "graph plan alone (Plan.predict)": lambda: model._plan.predict([x]),
             "public dense_forward x3": public_ops,
             "one-region kernel x3, preallocated": one_region,
             "BLAS GEMMs alone x3": gemms,
             "DenseChain.run (one native call)": lambda: chain.run(x, scratch, outs[-1]),
             "DenseChain.predict_one (the batch-1 lane)": lambda: chain.predict_one(x),
             "model(x), inference plan": lambda: model(x),
             "predict_on_batch, inference plan": lambda: model.predict_on_batch(x)}
    times = {k: [] for k in calls}
    for fn in calls.values():
        for _ in range(50):
            fn()
    for _ in range(repeat):
        for k, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return [{"what": k, "p50_us": round(float(np.median(ts)) * 1e6, 1)}
            for k, ts in times.items()]


def bench_conv_algorithms(repeat, batches, rng, threads=1):
    """The small CNN's prediction with its 3x3 convs planned as the session before this
    rule had them (direct below 512 Winograd tiles of the forward op) against today's
    (Winograd from 16 tiles, F(4x4) for 16-64, natively in the plans), and onnxruntime,
    calls alternated in one process. The old rule is conv.pyx's module knobs set while
    that model's plans are made; each plan then keeps the runners it made."""
    from pynn._native import conv

    x_by_batch = {b: rng.standard_normal((b, 32, 32, 3)).astype(np.float32) for b in batches}
    new, old = cnn(), cnn()
    randomize(new, rng)
    old.set_weights(new.get_weights())
    sess = session(pynn.onnx.export(new), threads)
    feed = sess.get_inputs()[0].name
    knobs = (conv._WINOGRAD_MIN_TILES_FORWARD, conv._WINO4_FEW_TILES)
    rows = []
    pynn.set_num_threads(threads)
    try:
        for b, x in x_by_batch.items():
            conv._WINOGRAD_MIN_TILES_FORWARD, conv._WINO4_FEW_TILES = 512, (0, -1)
            try:
                want = old.predict_on_batch(x)
                old.predict_on_batch(x)
            finally:
                conv._WINOGRAD_MIN_TILES_FORWARD, conv._WINO4_FEW_TILES = knobs
            got = new.predict_on_batch(x)
            new.predict_on_batch(x)
            scale = float(np.abs(want).max())
            assert float(np.abs(got - want).max()) <= 1e-5 * scale, "rules disagree"
            calls = {"direct (old rule)": lambda x=x: old.predict_on_batch(x),
                     "winograd (new rule)": lambda x=x: new.predict_on_batch(x),
                     "onnxruntime": lambda x=x: sess.run(None, {feed: x})}
            times = {k: [] for k in calls}
            for i in range(repeat):
                order = list(calls.items())
                for k, f in order[i % 3:] + order[:i % 3]:
                    t = time.perf_counter()
                    f()
                    times[k].append(time.perf_counter() - t)
            for k, v in times.items():
                rows.append({"model": "cnn_32x32x3", "batch": b, "threads": threads,
                             "runtime": k, "p50_us": round(1e6 * float(np.median(v)), 1),
                             "p99_us": round(1e6 * float(np.percentile(v, 99)), 1)})
    finally:
        pynn.set_num_threads(1)
    return rows


def _load_average():
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls first")
    parser.add_argument("--batch", default="1,64", help="comma-separated batch sizes")
    parser.add_argument("--threads-scaling", action="store_true")
    parser.add_argument("--scaling-rounds", type=int, default=5)
    parser.add_argument("--scaling-seconds", type=float, default=1.0)
    parser.add_argument("--scaling-threads", default="1,2",
                        help="comma-separated Python thread counts for --threads-scaling")
    parser.add_argument("--footprint", action="store_true")
    parser.add_argument("--serial-threshold", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--breakdown", action="store_true",
                        help="where the MLP's batch-1 predict time goes")
    parser.add_argument("--intra-threads", type=int, default=1,
                        help="threads per call of each runtime in the latency table")
    parser.add_argument("--burst", type=int, default=1,
                        help="calls of one runtime back to back before the next runtime's "
                             "(1: alternate every call)")
    parser.add_argument("--conv-algorithms", action="store_true",
                        help="the small CNN with its convs planned by the old rule (direct "
                             "at few tiles) against today's (Winograd), alternated")
    parser.add_argument("--models", default="mlp,cnn",
                        help="comma-separated models of the latency table: mlp, cnn, lstm, "
                             "gru, mlpdigits")
    parser.add_argument("--masked-text", action="store_true",
                        help="batch-1 requests through a masked (padded) text LSTM and a "
                             "Bidirectional one, beside onnxruntime fed the real tokens")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    every = {**MODELS, **EXTRA_MODELS}
    wanted = {name: make for name, make in every.items()
              if name.split("_")[0] in args.models.split(",")}
    if len(wanted) != len(args.models.split(",")):
        parser.error(f"--models: expected names among mlp, cnn, lstm, gru, mlpdigits, got "
                     f"{args.models}")
    if args.intra_threads < 1 or args.burst < 1:
        parser.error("--intra-threads and --burst take positive integers")
    batches = [int(b) for b in args.batch.split(",")]
    rng = np.random.default_rng(0)
    result = {"cpu": cpu_name(), "cores": os.cpu_count(),
              "note": "machine shared with other work; calls alternated, medians",
              "load_average_at_start": _load_average()}
    if args.serial_threshold:
        pynn.set_num_threads(2)
        result["serial_threshold"] = rows = bench_serial(args.repeat, rng)
        print("# one OpenMP thread vs two for the inference plan (median us per call)")
        for r in rows:
            print(f"{r['model']:<20} batch {r['batch']:>3} {r['macs'] / 1e6:8.2f} M MACs  "
                  f"1 thread {r['one_thread_us']:9.1f}  2 threads {r['two_threads_us']:9.1f}"
                  f"  2/1 {r['two_over_one']:.2f}")
    pynn.set_num_threads(1)
    if args.breakdown:
        result["breakdown_mlp_batch1"] = rows = bench_breakdown(args.repeat * 5, rng)
        print("# MLP 784-256-128-10 at batch 1, one thread: median us per call")
        for r in rows:
            print(f"{r['what']:<46} {r['p50_us']:8.1f}")
    if args.conv_algorithms:
        result["conv_algorithms"] = rows = bench_conv_algorithms(args.repeat, batches, rng,
                                                                 args.intra_threads)
        print(f"# small CNN, {args.intra_threads} thread(s), calls alternated: p50 / p99 us")
        for r in rows:
            print(f"batch {r['batch']:>3} {r['runtime']:<20} {r['p50_us']:9.1f} "
                  f"{r['p99_us']:9.1f}")
    if args.masked_text:
        result["masked_text"] = rows = bench_masked_text(args.repeat, args.warmup, rng)
        print("# masked text models, batch 1, one thread, calls alternated: p50 / p99 us")
        for r in rows:
            print(f"{r['model']:<16} {r['tokens_of_40']:>2} of 40 tokens {r['runtime']:<13} "
                  f"{r['p50_us']:9.1f} {r['p99_us']:9.1f}")
    if not args.skip_latency:
        rows = []
        for name, make in wanted.items():
            rows += bench_model(name, make, batches, args.repeat, args.warmup, rng,
                                args.intra_threads, args.burst)
        pynn.set_num_threads(1)
        result["latency"] = rows
        print(f"# {cpu_name()}, {args.intra_threads} thread(s) each, {args.repeat} calls, "
              f"the runtimes alternating every {args.burst} call(s)")
        print(f"{'model':<20} {'batch':>5} {'runtime':<14} {'p50 us':>9} {'p99 us':>9} "
              f"{'samples/s':>10}")
        for r in rows:
            print(f"{r['model']:<20} {r['batch']:>5} {r['runtime']:<14} {r['p50_us']:>9.1f} "
                  f"{r['p99_us']:>9.1f} {r['samples_per_s']:>10.1f}")
        for name in wanted:
            for batch in batches:
                p = {r["runtime"]: r["p50_us"] for r in rows
                     if r["model"] == name and r["batch"] == batch}
                print(f"{name} batch {batch}: pynn / onnxruntime p50 = "
                      f"{p['pynn'] / p['onnxruntime']:.2f}" + (
                          f", pynn / PyTorch = {p['pynn'] / p['pytorch-eager']:.2f}"
                          if "pytorch-eager" in p else ""))
    if args.threads_scaling:
        result["threads_scaling"] = rows = bench_threads(
            args.scaling_rounds, args.scaling_seconds,
            [int(n) for n in args.scaling_threads.split(",")], rng)
        print("# N Python threads on one shared model, batch 1, one OpenMP thread per call")
        for r in rows:
            if "native_share_of_call" in r:
                print(f"{r['model']:<20} {r['runtime']:<16} share of a call inside native "
                      f"kernels {r['native_share_of_call']:.0%}: two threads gain at most "
                      f"x{r['amdahl_bound_2_threads']:.2f}")
                continue
            print(f"{r['model']:<20} {r['runtime']:<16} {r['python_threads']} threads "
                  f"{r['requests_per_s']:>10.1f} req/s  x{r['vs_one_thread']:.2f}")
    if args.footprint:
        result["footprint"] = fp = bench_footprint(5)
        print("# footprint: " + ", ".join(f"{k} {v}" for k, v in fp.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
