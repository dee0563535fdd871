"""Time pynn's recurrent ops (LSTM, GRU, SimpleRNN) forward + backward against PyTorch CPU.

Checks each op against the float64 NumPy oracle (tests/reference/rnn_ref.py) first, then
times one training step (forward with return_sequences, backward of the full sequence
gradient, input gradient included) for pynn and for torch.nn.{LSTM,GRU,RNN} (batch_first,
float32, the same thread count, torch in a separate process). pynn and torch runs
alternate in rounds so both see the same machine load; each round reports the best of
--repeat calls and the table shows the median over rounds (ms) plus the single best round.

Keras's GRU (reset_after=True) and torch.nn.GRU compute the same cell, so the comparison is
like for like; pynn's GRU with reset_after=False is timed too (no torch twin).

--cpu-time (with --threads 1) times on the thread's CPU clock: on a shared machine it leaves
out the time other processes hold the core, so its ratios hold under load where wall-clock
ones do not.

Where the LSTM stands (AMD EPYC Zen 4, 2 cores shared with other jobs, Dec 2026): pynn's
LSTM training step runs at 80 GFLOP/s (U=128) and 91 GFLOP/s (U=256) on one core, about the
single-core OpenBLAS sgemm rate on the same product shapes (80 and 88 GFLOP/s; 99 on a large
square sgemm), and its GRU at 74 and 88. torch's LSTM reaches 52 and 68 GFLOP/s and its GRU,
with 3/4 of the LSTM's FLOPs, takes as long as its LSTM: that, not pynn's LSTM cell, is why
the GRU ratio is higher. 2x torch's LSTM would need 104 / 136 GFLOP/s, above this core's
sgemm peak; with 2 threads pynn's split (no synchronization per step) scales by ~2x and
torch's by ~1.6x, which is where the wall-clock ratios gain.

Dec 4 2026, one thread on its CPU clock (bench/results/rnn-amd-epyc-1t-cputime.json; the
machine shared by 8 sessions at load ~10): LSTM(128) 1.50x torch, LSTM(256) 1.28x, GRU 1.75x,
Bidirectional(LSTM(128)) 1.50x and 1.04x the cost of two LSTM(128) steps. Phases of the
LSTM(128) step on one thread: forward 13.3 ms (1.05 GFLOP, its fused cell pass 2.2 ms of
it), backward recurrence 13.2 ms (1.05 GFLOP), weight gradients 12.0 ms (1.05 GFLOP, 88
GFLOP/s): every phase is within ~15% of the core's sgemm rate, so the 2x target can only come
from the 2-thread split (pynn's scales ~2x, torch's ~1.6x), not measurable here that night.
The masked layer step (general recurrence ops) costs 1.42x (LSTM(128)), 1.14x (LSTM(256))
and 1.17x (GRU) the plain one, from 2.4x / 2.3x before its cells became vectorized C.

Dec 5 2026, --phases (one thread, CPU time, shared machine;
bench/results/rnn-lstm-bound-amd-epyc-1t-cputime-shared.json): LSTM(128) 39.4 ms vs torch
57.2 (1.45x), LSTM(256) 127.2 vs 157.9 (1.24x); single-core sgemm peak (2048^3, OpenBLAS)
103 GFLOP/s. 2x torch needs 110 GFLOP/s (LSTM(128), 1.07x that peak) and 144 (LSTM(256),
1.39x) on one core; with 2 threads on the quiet numbers, 189 and 260 GFLOP/s against a
166-175 sgemm peak (1.14x, 1.57x). Every phase already runs at 73-104 GFLOP/s; the fused
cell passes take ~5 ms of the LSTM(128) step. Tried and reverted (no measurable change):
one [x | h_{s-1}] @ [W; R] product per forward step instead of two (forward 14.1 ms either
way), and heap reuse for the forward's caches (page faults are ~10 huge pages a step).

pynn's recurrent ops use OpenMP only (no BLAS). pynn runs with OMP_WAIT_POLICY=PASSIVE and
a short OPENBLAS_THREAD_TIMEOUT (as in bench_conv_kernels.py; NumPy's BLAS serves the
checks) unless --default-env is given; torch keeps the caller's environment.

    .venv/bin/python bench/bench_rnn.py [--threads 2] [--repeat 10] [--rounds 5]
        [--shape 64,100,32,128] [--latency-shape 1,50,32,128]
        [--text-shape 64,100,10000,128] [--cells lstm,gru,gru_before,simple_rnn]
        [--dtype float32|float64] [--default-env] [--no-torch] [--cpu-time] [--json PATH]
        [--phases]

Also timed: Bidirectional(LSTM) beside torch's bidirectional LSTM, and the LSTM / GRU layers'
training step with a padding mask (a quarter of the steps masked) beside the same step
unmasked, both pynn (the general recurrence ops against the fast whole-sequence ones).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_conv_kernels import QUIET_ENV, best_time  # noqa: E402  (same timing rules)


def best_cpu_time(fn, repeat):
    """best_time on the calling thread's CPU clock: with one thread every op runs on it, and
    time spent waiting for a core another process holds is not counted (--cpu-time)."""
    import time

    fn()
    times = []
    for _ in range(repeat):
        t = time.thread_time()
        fn()
        times.append(time.thread_time() - t)
    return min(times)

ROOT = Path(__file__).resolve().parents[1]
# name -> (pynn op stem, gate count, extra op options, torch module name)
CELLS = {
    "lstm": ("lstm", 4, ("tanh", "sigmoid"), "LSTM"),
    "gru": ("gru", 3, ("tanh", "sigmoid", True), "GRU"),
    "gru_before": ("gru", 3, ("tanh", "sigmoid", False), None),
    "simple_rnn": ("simple_rnn", 1, ("tanh",), "RNN"),
}


def make_data(cell, shape, dtype, seed=1):
    import numpy as np

    n, t, c, u = shape
    _, k, opts, _ = CELLS[cell]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, t, c)).astype(dtype)
    w = (rng.standard_normal((c, k * u)) / np.sqrt(c)).astype(dtype)
    r = (rng.standard_normal((u, k * u)) / np.sqrt(u)).astype(dtype)
    b_shape = (2, k * u) if cell == "gru" else (k * u,)
    b = (0.1 * rng.standard_normal(b_shape)).astype(dtype)
    dy = rng.standard_normal((n, t, u)).astype(dtype)
    return x, w, r, b, dy


# -- torch (separate process) ----------------------------------------------------------------

def text_data(shape, seed=2):
    """Token ids (N, T) in [1, V) and binary labels (N, 1) for the text-model table."""
    import numpy as np

    n, t, vocab, _ = shape
    rng = np.random.default_rng(seed)
    return (rng.integers(1, vocab, size=(n, t)).astype(np.int32),
            rng.integers(0, 2, size=(n, 1)).astype(np.float32))


def torch_text_step(shape, threads):
    import torch

    torch.set_num_threads(threads)
    _, _, vocab, units = shape
    x, y = (torch.from_numpy(a) for a in text_data(shape))
    x = x.long()
    embed, lstm = torch.nn.Embedding(vocab, 32), torch.nn.LSTM(32, units, batch_first=True)
    head = torch.nn.Linear(units, 1)
    params = [*embed.parameters(), *lstm.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3, eps=1e-7)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        _, (h, _) = lstm(embed(x))
        loss_fn(head(h[-1]), y).backward()
        opt.step()

    return step


def torch_bidir_step(shape, threads):
    """torch's bidirectional LSTM, forward + backward of the concatenated sequence."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    x, _, _, _, dy = make_data("lstm", shape, "float32")
    _, _, c, u = shape
    mod = torch.nn.LSTM(c, u, batch_first=True, bidirectional=True)
    xt = torch.from_numpy(x).requires_grad_(True)
    gt = torch.from_numpy(np.concatenate([dy, dy], axis=-1))

    def step():
        mod.zero_grad(set_to_none=True)
        xt.grad = None
        y, _ = mod(xt)
        y.backward(gt)

    return step


def torch_step(cell, shape, threads, mode="train"):
    """A torch fwd+bwd closure on the same data (mode "infer": forward alone, no_grad);
    torch's gate order and bias split differ from Keras's but the arithmetic per step is
    the same."""
    import torch

    torch.set_num_threads(threads)
    x, w, r, b, dy = make_data(cell, shape, "float32")
    n, t, c, u = shape
    mod = getattr(torch.nn, CELLS[cell][3])(c, u, batch_first=True)
    xt = torch.from_numpy(x).requires_grad_(mode == "train")
    gt = torch.from_numpy(dy)

    def infer():
        with torch.no_grad():
            mod(xt)

    if mode == "infer":
        return infer

    def step():
        mod.zero_grad(set_to_none=True)
        xt.grad = None
        y, _ = mod(xt)
        y.backward(gt)

    return step


def torch_server(threads, repeat, timer=best_time):
    """Answer one line per request 'cell shape mode repeat' with the best time, so rounds
    can alternate with pynn while torch stays loaded (and warm) in its own process."""
    steps = {}
    for line in sys.stdin:
        cell, shape, mode, calls = line.split()
        shape = tuple(int(v) for v in shape.split(","))
        if (cell, shape, mode) not in steps:
            if mode == "text":
                steps[cell, shape, mode] = torch_text_step(shape, threads)
            elif mode == "bidir":
                steps[cell, shape, mode] = torch_bidir_step(shape, threads)
            else:
                steps[cell, shape, mode] = torch_step(cell, shape, threads, mode)
        print(json.dumps(timer(steps[cell, shape, mode], int(calls))), flush=True)


# -- pynn ------------------------------------------------------------------------------------

def pynn_step(rnn, cell, shape, dtype):
    stem, _, opts, _ = CELLS[cell]
    x, w, r, b, dy = make_data(cell, shape, dtype)
    fwd = getattr(rnn, stem + "_forward")
    bwd = getattr(rnn, stem + "_backward")

    def step():
        y, cache = fwd(x, w, r, b, *opts, True, False)
        bwd(dy, x, w, r, cache, *opts, True, False, True)

    return step


def pynn_infer(rnn, cell, shape, dtype):
    """One inference call: forward alone, the last output only."""
    stem, _, opts, _ = CELLS[cell]
    x, w, r, b, _ = make_data(cell, shape, dtype)
    fwd = getattr(rnn, stem + "_forward")
    return lambda: fwd(x, w, r, b, *opts, False, False)


def _layer_step(layer, shape, dtype, mask=None, dy_width=1):
    """One training call + backward of a built recurrent layer on make_data's inputs."""
    import numpy as np

    x, _, _, _, dy = make_data("lstm", shape, dtype)
    layer.build(x.shape)
    dy = np.concatenate([dy] * dy_width, axis=-1)

    def step():
        layer.call(x, training=True, mask=mask)
        layer.backward(dy)

    return step


def step_mask(shape, seed=4):
    """A padding mask (N, T): each row keeps a random length in [T/2, T] (about a quarter
    of the steps masked)."""
    import numpy as np

    n, t = shape[0], shape[1]
    rng = np.random.default_rng(seed)
    return np.arange(t)[None, :] < rng.integers(t // 2, t + 1, size=n)[:, None]


def pynn_layer_plain(rnn, cell, shape, dtype):
    """The layer's training step without a mask (the fast whole-sequence ops)."""
    from pynn import layers

    return _layer_step(getattr(layers, CELLS[cell][3])(shape[3], return_sequences=True,
                                                       dtype=dtype), shape, dtype)


def pynn_layer_masked(rnn, cell, shape, dtype):
    """The same step with step_mask's padding mask (the general recurrence ops)."""
    from pynn import layers

    return _layer_step(getattr(layers, CELLS[cell][3])(shape[3], return_sequences=True,
                                                       dtype=dtype), shape, dtype,
                       mask=step_mask(shape))


def pynn_bidir(rnn, cell, shape, dtype):
    """Bidirectional(LSTM) with return_sequences, merge 'concat'."""
    from pynn import layers

    layer = layers.Bidirectional(layers.LSTM(shape[3], return_sequences=True, dtype=dtype),
                                 dtype=dtype)
    return _layer_step(layer, shape, dtype, dy_width=2)


def pynn_text(rnn, cell, shape, dtype):
    """One train_on_batch of the text model (the op module and cell are unused)."""
    import pynn
    from pynn import layers

    _, t, vocab, units = shape
    x, y = text_data(shape)
    model = pynn.Sequential([layers.Input((t,), dtype="int32"), layers.Embedding(vocab, 32),
                             layers.LSTM(units), layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=pynn.optimizers.Adam(1e-3), loss="binary_crossentropy")
    return lambda: model.train_on_batch(x, y)


def check(rnn):
    """Forward against the float64 oracle in float32 and float64 on a shape past one
    register tile (37 units: 148 LSTM gate columns, a panel tail; N = 19: every row-group
    size), and the float64 backward against central differences of the oracle on a small
    one (every coordinate; tests/test_rnn.py checks the large shapes' gradients)."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from tests.reference import rnn_ref

    refs = {"lstm": rnn_ref.lstm_forward_ref, "gru": rnn_ref.gru_forward_ref,
            "gru_before": rnn_ref.gru_forward_ref, "simple_rnn": rnn_ref.simple_rnn_forward_ref}
    shape = (19, 6, 5, 37)
    for cell, (stem, _, opts, _) in CELLS.items():
        for dtype, tol in (("float32", 2e-5), ("float64", 1e-12)):
            x, w, r, b, dy = make_data(cell, shape, dtype)
            y, _ = getattr(rnn, stem + "_forward")(x, w, r, b, *opts, True, False)
            want = refs[cell](*(a.astype(np.float64) for a in (x, w, r, b)), *opts, True,
                              False)
            np.testing.assert_allclose(y, want, rtol=tol, atol=tol / 10,
                                       err_msg=f"{cell} {dtype} forward")
        small = (3, 4, 2, 5)
        x, w, r, b, dy = make_data(cell, small, "float64")
        _, cache = getattr(rnn, stem + "_forward")(x, w, r, b, *opts, True, False)
        grads = getattr(rnn, stem + "_backward")(dy, x, w, r, cache, *opts, True, False, True)
        fd = rnn_ref.numerical_grads(lambda *a: refs[cell](*a, *opts, True, False),
                                     [x, w, r, b], dy)
        for name, got, exp in zip(("dx", "dkernel", "drecurrent_kernel", "dbias"), grads, fd):
            np.testing.assert_allclose(got, exp, rtol=1e-6, atol=1e-8,
                                       err_msg=f"{cell} {name}")


def lstm_phases(rnn, shape, timer, repeat):
    """The LSTM training step cut into its phases, each timed alone with its FLOPs (2 per
    multiply-add of the products; the cell passes are not counted): forward (x and h
    products + the fused cell), backward without dx (the recurrence + the weight
    gradients), the weight gradients alone (one [x | 1 | h_prev]^T @ dZ product over all
    N*T rows) and the input gradient's extra cost. What is left for the backward recurrence
    is the difference. --phases prints it; the bound in the report comes from these."""
    import numpy as np

    n, t, c, u = shape
    x, w, r, b, dy = make_data("lstm", shape, "float32")
    opts = CELLS["lstm"][2]
    _, cache = rnn.lstm_forward(x, w, r, b, *opts, True, False)
    dz = np.random.default_rng(3).standard_normal((n, t, 4 * u)).astype(np.float32)
    stacked = np.empty((c + 1 + u, n * t), np.float32)
    runs = {
        "forward": lambda: rnn.lstm_forward(x, w, r, b, *opts, True, False),
        "backward, no dx": lambda: rnn.lstm_backward(dy, x, w, r, cache, *opts, True, False,
                                                     False),
        "backward, with dx": lambda: rnn.lstm_backward(dy, x, w, r, cache, *opts, True,
                                                       False, True),
        "weight gradients": lambda: rnn._weight_grads(x, cache[0], dz, stacked, False),
    }
    ms = {name: 1e3 * statistics.median(timer(fn, repeat) for _ in range(5))
          for name, fn in runs.items()}
    mac = n * t * 4 * u      # multiply-adds per unit of K, over all rows and steps
    gflop = {"forward": 2 * mac * (c + u) / 1e9,
             "weight gradients": 2 * mac * (c + 1 + u) / 1e9,
             "backward recurrence": 2 * mac * u / 1e9,
             "input gradient": 2 * mac * c / 1e9}
    ms["backward recurrence"] = ms["backward, no dx"] - ms["weight gradients"]
    ms["input gradient"] = ms["backward, with dx"] - ms["backward, no dx"]
    out = {}
    for name in ("forward", "backward recurrence", "weight gradients", "input gradient"):
        out[name] = {"ms": ms[name], "gflop": gflop[name],
                     "gflops": gflop[name] / ms[name] * 1e3 if ms[name] > 0 else None}
    total_ms = ms["forward"] + ms["backward, with dx"]
    total = sum(gflop.values())
    out["step"] = {"ms": total_ms, "gflop": total, "gflops": total / total_ms * 1e3}
    return out


def platform_line():
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores visible"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=10, help="calls per round (best kept)")
    ap.add_argument("--rounds", type=int, default=5, help="alternated pynn/torch rounds")
    ap.add_argument("--shape", default="64,100,32,128", help="N,T,C,units")
    ap.add_argument("--latency-shape", default="1,50,32,128",
                    help="N,T,C,units of the inference latency table")
    ap.add_argument("--latency-repeat", type=int, default=50,
                    help="calls per round of the latency table (best kept)")
    ap.add_argument("--text-shape", default="64,100,10000,128",
                    help="N,T,vocabulary,units of the text-model table")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--cells", default=",".join(CELLS))
    ap.add_argument("--default-env", action="store_true",
                    help="keep libgomp/OpenBLAS spin-waiting defaults for pynn")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time on the thread's CPU clock (needs --threads 1): on a shared "
                         "machine it leaves out the time other processes hold the core")
    ap.add_argument("--json", help="also write the tables' medians to this JSON file")
    ap.add_argument("--phases", action="store_true",
                    help="first time the LSTM step's phases alone (forward, backward "
                         "recurrence, weight gradients, input gradient) with their GFLOP/s")
    ap.add_argument("--torch-server", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cpu_time and args.threads != 1:
        ap.error("--cpu-time measures one thread: use it with --threads 1")
    timer = best_cpu_time if args.cpu_time else best_time
    if args.torch_server:
        torch_server(args.threads, args.repeat, timer)
        return
    shape = tuple(int(v) for v in args.shape.split(","))
    latency_shape = tuple(int(v) for v in args.latency_shape.split(","))
    text_shape = tuple(int(v) for v in args.text_shape.split(","))
    cells = args.cells.split(",")
    server = None
    if not args.no_torch:
        try:
            import importlib.util

            if importlib.util.find_spec("torch") is not None:
                server = subprocess.Popen(
                    [sys.executable, __file__, "--torch-server", "--threads",
                     str(args.threads), "--repeat", str(args.repeat)]
                    + (["--cpu-time"] if args.cpu_time else []),
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        except OSError:
            server = None
    if not args.default_env:
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)   # before libgomp / OpenBLAS load
    sys.path.insert(0, str(ROOT))
    import pynn
    from pynn._native import rnn

    # pynn's own setting: the OpenMP count alone would be reset to the default the first time
    # a layer reads pynn's (the text model).
    pynn.set_num_threads(args.threads)
    check(rnn)

    def torch_time(cell, shape, mode, calls):
        if server is None or CELLS[cell][3] is None or args.dtype != "float32":
            return None
        server.stdin.write(f"{cell} {','.join(map(str, shape))} {mode} {calls}\n")
        server.stdin.flush()
        return json.loads(server.stdout.readline())

    results = {"machine": platform_line(), "threads": args.threads, "dtype": args.dtype,
               "clock": "thread CPU time" if args.cpu_time else "wall",
               "rounds": args.rounds, "tables": {}}

    def table(title, make_step, shape, mode, calls, unit, scale, cells=cells,
              axes="N, T, C, units", reference=None):
        clock = "CPU time" if args.cpu_time else "wall"
        print(f"{title}: shape ({axes}) = {shape}, {args.dtype}, {args.threads} "
              f"threads; {unit} ({clock}), median (best) of {args.rounds} rounds x best of "
              f"{calls}")
        other = "torch" if reference is None else reference[0]
        print(f"{'cell':12s} {'pynn':>16s} {other:>16s} {other + '/pynn':>10s}")
        rows = results["tables"].setdefault(title, {"shape": list(shape), "unit": unit})
        for cell in cells:
            step = make_step(rnn, cell, shape, args.dtype)
            ref_step = None if reference is None else reference[1](rnn, cell, shape, args.dtype)
            mine, theirs = [], []
            for _ in range(args.rounds):
                mine.append(timer(step, calls))
                tt = (torch_time(cell, shape, mode, calls) if ref_step is None
                      else timer(ref_step, calls))
                if tt is not None:
                    theirs.append(tt)
            line = (f"{cell:12s} {scale * statistics.median(mine):8.2f} "
                    f"({scale * min(mine):5.2f})")
            row = {"pynn": scale * statistics.median(mine), "pynn_best": scale * min(mine)}
            if theirs:
                ratio = statistics.median(theirs) / statistics.median(mine)
                line += (f" {scale * statistics.median(theirs):8.2f} "
                         f"({scale * min(theirs):5.2f}) {ratio:10.2f}")
                row.update({other: scale * statistics.median(theirs),
                            other + "_best": scale * min(theirs), other + "/pynn": ratio})
            rows[cell] = row
            print(line, flush=True)

    if args.phases and args.dtype == "float32":
        phases = lstm_phases(rnn, shape, timer, args.repeat)
        results["lstm phases"] = {"shape": list(shape), **phases}
        clock = "CPU time" if args.cpu_time else "wall"
        print(f"LSTM step phases: shape (N, T, C, units) = {shape}, {args.threads} threads, "
              f"{clock}, median of 5 x best of {args.repeat}")
        for name, row in phases.items():
            rate = f"{row['gflops']:7.1f} GFLOP/s" if row["gflops"] else ""
            print(f"  {name:22s} {row['ms']:8.2f} ms {row['gflop']:7.3f} GFLOP {rate}")
    try:
        table("training (forward + backward)", pynn_step, shape, "train", args.repeat,
              "ms", 1e3)
        table("inference latency (forward)", pynn_infer, latency_shape, "infer",
              args.latency_repeat, "us", 1e6)
        if "lstm" in cells and args.dtype == "float32":
            table("text model train_on_batch", pynn_text, text_shape, "text", args.repeat,
                  "ms", 1e3, cells=["lstm"], axes="N, T, vocabulary, units")
            table("Bidirectional(LSTM) training, concat", pynn_bidir, shape, "bidir",
                  args.repeat, "ms", 1e3, cells=["lstm"])
        layer_cells = [c for c in cells if c in ("lstm", "gru")]
        if layer_cells:
            # Both columns are pynn: the masked layer step over the plain one (the issue's
            # masked path within ~1.3x; a quarter of the steps masked).
            table("layer training, plain vs a padding mask (masked/pynn: the mask's cost)",
                  pynn_layer_plain, shape, "train", args.repeat, "ms", 1e3,
                  cells=layer_cells, reference=("masked", pynn_layer_masked))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    finally:
        if server is not None:
            server.stdin.close()
            server.wait()


if __name__ == "__main__":
    main()
