"""OpenCL GEMM and conv throughput per device, CNN/LSTM training, cold and warm start-up,
each beside PyTorch CUDA fp32 (TF32 off) when PyTorch sees a CUDA GPU.

Each benchmark first checks its result (GEMM against NumPy float64 on sampled rows, conv
against the CPU op ``pynn._native.conv``), then times it: best of ``--repeat`` timings after
one warm-up, each timing a loop of calls long enough (>= 20 ms, at most 200 calls) that
launch latency does not dominate small shapes on a GPU, the queue drained inside the timing.
PyTorch is timed the same way (``torch.cuda.synchronize`` for the drain). GFLOP/s counts
2*M*N*K per GEMM-shaped op; ``ratio_to_torch_cuda`` is pynn / PyTorch (above 1: pynn faster).

Sections (``--sections``, default all; ``tune`` needs ``--tune``):
  programs  dense.cl, conv.cl, reduce.cl built from source into an empty pynn disk cache
            ("cold"), then reloaded from it ("warm"), in this process; counts the builds.
  tune      ``opencl.tune_gemm`` at ``--tune-size``; its tiles are used by what follows.
  gemm      dense_forward / backward_input / backward_weight, 256^3 up to ``--gemm-max``^3
            and the MLP shape 128x256x784; PyTorch: ``torch.mm`` of the same operands.
  train     train_on_batch images/s of the bench CNN (batch 64) and an LSTM(128) over 50 steps.
  start     two fresh processes on one empty disk cache: the first builds every program the
            two models need (cold), the second should build none (warm): ``builds`` == 0.
  conv      conv2d forward / backward_input / backward_weight over CONV_SHAPES.

The JSON is rewritten after every section, so a run cut short keeps what it measured.
Without any OpenCL device (``--device none``) only the PyTorch CUDA references are measured.

    .venv/bin/python bench/bench_opencl.py [--device opencl:0:0] [--repeat 3] [--tune]
        [--quick] [--gemm-max 4096] [--sections gemm,train] [--out bench/results/opencl-X.json]
"""

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pynn.backend.opencl import runtime as rt  # noqa: E402
from pynn.backend import opencl as ocl  # noqa: E402

SQUARE_GEMMS = (256, 512, 1024, 2048, 4096)
MLP_GEMM = (128, 256, 784)
CONV_SHAPES = [
    # (N, H, W, C, KH, KW, F, strides, padding)
    (32, 32, 32, 3, 3, 3, 32, (1, 1), "same"),
    (32, 16, 16, 32, 3, 3, 64, (1, 1), "same"),
    (16, 28, 28, 64, 3, 3, 64, (1, 1), "same"),
]
QUICK_CONV = CONV_SHAPES[:2]
SECTIONS = ("programs", "tune", "gemm", "train", "start", "conv")
# A timing loops over calls until it lasts this long (capped at MAX_CALLS calls).
MIN_TIMED_S = 0.02
MAX_CALLS = 200
# GEMM results are checked on this many sampled rows (the whole product for small shapes).
CHECK_ROWS = 64
TRAIN_BATCH = 64


class CheckFailed(Exception):
    """A benchmark's result disagrees with its reference: the timing is skipped."""


def best_time(fn, repeat, sync):
    """Seconds per call of ``fn``: the best of ``repeat`` timed loops after one warm-up."""
    fn()
    sync()
    t = time.perf_counter()
    fn()
    sync()
    once = time.perf_counter() - t
    calls = max(1, min(MAX_CALLS, int(MIN_TIMED_S / max(once, 1e-7))))
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        best = min(best, (time.perf_counter() - t) / calls)
    return best


def cl_sync():
    rt.queue().finish()


def check(what, got, want, rtol=1e-4):
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got.astype(np.float64) - want).max())
    if err > rtol * scale:
        raise CheckFailed(f"{what}: wrong result, max error {err:.3g} > {rtol} * {scale:.3g}")


def gemm_sizes(max_n):
    return [(n, n, n) for n in SQUARE_GEMMS if n <= max_n] + [MLP_GEMM]


# -- PyTorch CUDA references ------------------------------------------------------------------


class TorchCuda:
    """PyTorch on the CUDA GPU in fp32 with TF32 off: cuBLAS SGEMM, cuDNN conv, the same
    models. Each result is measured once per run and shared by every OpenCL device."""

    def __init__(self, repeat):
        self.repeat = repeat
        self.torch = None
        self.info = {"available": False}
        self._gemm, self._conv = {}, {}
        try:
            import torch
        except ImportError as exc:
            self.info["reason"] = f"torch is not importable ({exc})"
            return
        self.info["torch"] = torch.__version__
        if not torch.cuda.is_available():
            self.info["reason"] = "torch.cuda.is_available() is False"
            return
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        torch.backends.cudnn.benchmark = True  # cuDNN picks its fastest algorithm per shape
        self.torch = torch
        self.info.update(
            available=True, cuda=torch.version.cuda, device=torch.cuda.get_device_name(0),
            cudnn=torch.backends.cudnn.version(),
            settings={"matmul.allow_tf32": False, "cudnn.allow_tf32": False,
                      "float32_matmul_precision": "highest", "cudnn.benchmark": True})

    def sync(self):
        self.torch.cuda.synchronize()

    def gemm(self, m, n, k):
        """GFLOP/s of the three products pynn's dense ops compute, or None without CUDA."""
        if self.torch is None:
            return None
        if (m, n, k) not in self._gemm:
            torch = self.torch
            a = torch.randn(m, k, device="cuda")
            b = torch.randn(k, n, device="cuda")
            dz = torch.randn(m, n, device="cuda")
            ops = {"dense_forward": lambda: torch.mm(a, b),
                   "dense_backward_input": lambda: torch.mm(dz, b.t()),
                   "dense_backward_weight": lambda: torch.mm(a.t(), dz)}
            flops = 2.0 * m * n * k
            self._gemm[(m, n, k)] = {name: flops / best_time(fn, self.repeat, self.sync) / 1e9
                                     for name, fn in ops.items()}
        return self._gemm[(m, n, k)]

    def conv(self, shape):
        if self.torch is None:
            return None
        key = tuple(map(str, shape))
        if key not in self._conv:
            torch = self.torch
            tf = torch.nn.functional
            n, h, w, c, kh, kw, f, strides, padding = shape
            pad = (kh // 2, kw // 2) if padding == "same" else (0, 0)
            x = torch.randn(n, c, h, w, device="cuda")
            wt = torch.randn(f, c, kh, kw, device="cuda") * 0.1
            y = tf.conv2d(x, wt, stride=strides, padding=pad)
            dy = torch.randn_like(y)
            ho, wo = y.shape[2:]
            flops = 2.0 * n * ho * wo * f * kh * kw * c
            ops = {
                "conv2d_forward": lambda: tf.conv2d(x, wt, stride=strides, padding=pad),
                "conv2d_backward_input": lambda: torch.nn.grad.conv2d_input(
                    x.shape, wt, dy, stride=strides, padding=pad),
                "conv2d_backward_weight": lambda: torch.nn.grad.conv2d_weight(
                    x, wt.shape, dy, stride=strides, padding=pad),
            }
            self._conv[key] = {name: flops / best_time(fn, self.repeat, self.sync) / 1e9
                               for name, fn in ops.items()}
        return self._conv[key]

    def training(self, name, batch, steps):
        """The same model's training images/s (Adam, one loss read back per step)."""
        if self.torch is None:
            return None
        torch = self.torch
        nn = torch.nn
        if name == "cnn":
            net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                nn.Flatten(), nn.Linear(64 * 8 * 8, 128), nn.ReLU(),
                                nn.Linear(128, 10))
            x = torch.randn(batch, 3, 32, 32, device="cuda")

            def forward(inp):
                return net(inp)
        else:
            rnn, head = nn.LSTM(32, 128, batch_first=True), nn.Linear(128, 10)
            net = nn.ModuleList([rnn, head])
            x = torch.randn(batch, 50, 32, device="cuda")

            def forward(inp):
                return head(rnn(inp)[0][:, -1])
        net.cuda()
        y = torch.randint(0, 10, (batch,), device="cuda")
        opt = torch.optim.Adam(net.parameters(), eps=1e-7)
        loss_fn = nn.CrossEntropyLoss()

        def step():
            opt.zero_grad()
            loss = loss_fn(forward(x), y)
            loss.backward()
            opt.step()
            return loss.item()  # the same one scalar per step that pynn reads back

        for _ in range(3):
            step()
        self.sync()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        self.sync()
        return batch * steps / (time.perf_counter() - start)


def with_reference(row, names, ref):
    """Adds ``<op>_torch_cuda_gflops`` and ``<op>_ratio_to_torch_cuda`` for each op."""
    if ref:
        for name in names:
            row[f"{name}_torch_cuda_gflops"] = ref[name]
            row[f"{name}_ratio_to_torch_cuda"] = row[f"{name}_gflops"] / ref[name]
    return row


def print_row(label, row, names):
    parts = []
    for name in names:
        part = f"{name.split('_', 1)[1]} {row[name + '_gflops']:9.1f}"
        if f"{name}_torch_cuda_gflops" in row:
            part += (f" (torch {row[name + '_torch_cuda_gflops']:9.1f},"
                     f" {row[name + '_ratio_to_torch_cuda']:.2f}x)")
        parts.append(part)
    print(f"  {label}: " + "  ".join(parts) + " GFLOP/s", flush=True)


# -- sections ---------------------------------------------------------------------------------


def startup_times():
    """Seconds to get the dense, conv and reduce programs: from source, then from disk."""
    kernels = [("dense", "dense_forward"), ("conv", "conv2d_forward"),
               ("reduce", "bias_backward_final")]
    tiles = ocl.gemm_tiles()
    defines = {key: tiles[key] for key in tiles if key != "VW"}
    defines.update(VWA=1, VWB=1)
    saved = os.environ.get("PYNN_CACHE_DIR")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PYNN_CACHE_DIR"] = tmp
        try:
            out = {}
            for label in ("cold", "warm"):
                rt.clear_program_cache()
                before = rt.cache_stats()
                t = time.perf_counter()
                for stem, name in kernels:
                    rt.kernel(stem, name, defines if stem != "reduce" else None)
                out[f"{label}_build_s"] = time.perf_counter() - t
                after = rt.cache_stats()
                out[f"{label}_builds"] = after["builds"] - before["builds"]
                out[f"{label}_disk_hits"] = after["disk_hits"] - before["disk_hits"]
        finally:
            if saved is None:
                os.environ.pop("PYNN_CACHE_DIR", None)
            else:
                os.environ["PYNN_CACHE_DIR"] = saved
    rt.clear_program_cache()
    print(f"  programs: cold {out['cold_build_s']:.2f} s ({out['cold_builds']} builds), "
          f"warm {out['warm_build_s']:.3f} s ({out['warm_builds']} builds)", flush=True)
    return out


def sample_rows(rng, m):
    return np.arange(m) if m <= CHECK_ROWS else np.sort(rng.choice(m, CHECK_ROWS, replace=False))


def bench_gemm(sizes, repeat, rng, ref):
    rows = []
    names = ("dense_forward", "dense_backward_input", "dense_backward_weight")
    for m, n, k in sizes:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        dz = rng.standard_normal((m, n), dtype=np.float32)
        da, db, ddz = ocl.asarray(a), ocl.asarray(b), ocl.asarray(dz)
        label = f"{m}x{n}x{k}"
        r_m, r_k = sample_rows(rng, m), sample_rows(rng, k)
        y, _ = ocl.dense_forward(da, db, None, "linear", 0.0)
        check(f"dense_forward {label}", y.get()[r_m], a[r_m].astype(np.float64) @ b)
        check(f"dense_backward_input {label}", ocl.dense_backward_input(ddz, db).get()[r_m],
              dz[r_m].astype(np.float64) @ b.T)
        check(f"dense_backward_weight {label}", ocl.dense_backward_weight(da, ddz).get()[r_k],
              a[:, r_k].T.astype(np.float64) @ dz)
        del y
        ops = {
            "dense_forward": lambda: ocl.dense_forward(da, db, None, "relu", 0.0),
            "dense_backward_input": lambda: ocl.dense_backward_input(ddz, db),
            "dense_backward_weight": lambda: ocl.dense_backward_weight(da, ddz),
        }
        flops = 2.0 * m * n * k
        row = {"m": m, "n": n, "k": k}
        for name, fn in ops.items():
            row[f"{name}_gflops"] = flops / best_time(fn, repeat, cl_sync) / 1e9
        del da, db, ddz
        ocl.empty_cache()
        rows.append(with_reference(row, names, ref.gemm(m, n, k)))
        print_row(f"gemm {m:5d}x{n:5d}x{k:5d}", rows[-1], names)
    return rows


def bench_conv(shapes, repeat, rng, ref):
    from pynn._native import conv as cpu_conv

    rows = []
    names = ("conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight")
    for shape in shapes:
        n, h, w, c, kh, kw, f, strides, padding = shape
        x = rng.standard_normal((n, h, w, c)).astype(np.float32)
        wt = (rng.standard_normal((kh, kw, c, f)) * 0.1).astype(np.float32)
        y_cpu, _ = cpu_conv.conv2d_forward(x, wt, None, strides, padding, (1, 1), "linear", 0.0)
        dz = rng.standard_normal(y_cpu.shape).astype(np.float32)
        dx_, dw_ = ocl.asarray(x), ocl.asarray(wt)
        ddz = ocl.asarray(dz)
        args = (strides, padding, (1, 1))
        y, _ = ocl.conv2d_forward(dx_, dw_, None, *args, "linear", 0.0)
        check("conv2d_forward", y.get(), y_cpu)
        check("conv2d_backward_input", ocl.conv2d_backward_input(ddz, dw_, x.shape, *args).get(),
              cpu_conv.conv2d_backward_input(dz, wt, x.shape, *args))
        check("conv2d_backward_weight",
              ocl.conv2d_backward_weight(dx_, ddz, wt.shape, *args).get(),
              cpu_conv.conv2d_backward_weight(x, dz, wt.shape, *args))
        ho, wo = y_cpu.shape[1:3]
        flops = 2.0 * n * ho * wo * f * kh * kw * c
        ops = {
            "conv2d_forward": lambda: ocl.conv2d_forward(dx_, dw_, None, *args, "relu", 0.0),
            "conv2d_backward_input": lambda: ocl.conv2d_backward_input(ddz, dw_, x.shape, *args),
            "conv2d_backward_weight":
                lambda: ocl.conv2d_backward_weight(dx_, ddz, wt.shape, *args),
        }
        row = {"shape": [n, h, w, c, kh, kw, f], "strides": list(strides), "padding": padding}
        for name, fn in ops.items():
            row[f"{name}_gflops"] = flops / best_time(fn, repeat, cl_sync) / 1e9
        rows.append(with_reference(row, names, ref.conv(shape)))
        print_row(f"conv {str((n, h, w, c)):18s} k{kh}x{kw}x{f:<4d}", rows[-1], names)
    return rows


def _models():
    import pynn
    from pynn import layers

    cnn = pynn.Sequential([
        layers.Input(shape=(32, 32, 3)),
        layers.Conv2D(32, 3, padding="same", activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(64, 3, padding="same", activation="relu"), layers.MaxPooling2D(2),
        layers.Flatten(), layers.Dense(128, activation="relu"),
        layers.Dense(10, activation="softmax"),
    ])
    lstm = pynn.Sequential([
        layers.Input(shape=(50, 32)), layers.LSTM(128), layers.Dense(10, activation="softmax"),
    ])
    return {"cnn": (cnn, (32, 32, 3)), "lstm": (lstm, (50, 32))}


def _first_steps(rng):
    """Compile both models and run one train_on_batch each: what a fresh process pays."""
    losses = {}
    for name, (model, shape) in _models().items():
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        x = rng.standard_normal((TRAIN_BATCH,) + shape).astype(np.float32)
        losses[name] = float(model.train_on_batch(x, rng.integers(0, 10, TRAIN_BATCH)))
    return losses


def bench_training(steps, rng, ref):
    """train_on_batch images/s of the bench CNN (batch 64) and an LSTM(128) over 50 steps."""
    import pynn

    previous = pynn.get_device()
    pynn.set_device(rt.device_info()["index"])
    results = {}
    try:
        for name, (model, shape) in _models().items():
            model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
            x = rng.standard_normal((TRAIN_BATCH,) + shape).astype(np.float32)
            y = rng.integers(0, 10, TRAIN_BATCH)
            first = model.train_on_batch(x, y)
            if not np.isfinite(first):
                raise CheckFailed(f"{name}: training produced a non-finite loss {first}")
            model.train_on_batch(x, y)
            start = time.perf_counter()
            for _ in range(steps):
                model.train_on_batch(x, y)
            rate = TRAIN_BATCH * steps / (time.perf_counter() - start)
            entry = {"images_per_s": rate, "batch": TRAIN_BATCH, "steps": steps}
            torch_rate = ref.training(name, TRAIN_BATCH, max(steps, 20))
            if torch_rate:
                entry["torch_cuda_fp32_images_per_s"] = torch_rate
                entry["ratio_to_torch_cuda"] = rate / torch_rate
            print(f"  train {name}: {rate:,.0f} img/s"
                  + (f" (torch CUDA fp32 {torch_rate:,.0f}, ratio {rate / torch_rate:.2f})"
                     if torch_rate else ""), flush=True)
            results[name] = entry
    finally:
        pynn.set_device(previous)
    return results


def start_probe(spec):
    """Child process of ``process_starts``: first steps of both models, then the counters."""
    t0 = time.perf_counter()
    import pynn

    pynn.set_device(spec)
    losses = _first_steps(np.random.default_rng(0))
    rt.queue().finish()
    print(json.dumps({"first_steps_s": time.perf_counter() - t0, "losses": losses,
                      **rt.cache_stats()}))


def process_starts(spec, timeout_s):
    """A cold process then a warm one on one fresh disk cache: seconds and programs built."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PYNN_CACHE_DIR=tmp)
        env.pop("PYNN_CL_NO_DISK_CACHE", None)
        for label in ("cold", "warm"):
            t = time.perf_counter()
            proc = subprocess.run([sys.executable, __file__, "--start-probe", spec], env=env,
                                  capture_output=True, text=True, timeout=timeout_s)
            if proc.returncode != 0:
                raise RuntimeError(f"{label} start probe failed:\n{proc.stderr[-2000:]}")
            entry = json.loads(proc.stdout.strip().splitlines()[-1])
            entry["process_s"] = time.perf_counter() - t
            out[label] = entry
            print(f"  start {label}: process {entry['process_s']:.2f} s, first steps "
                  f"{entry['first_steps_s']:.2f} s, {entry['builds']} programs built, "
                  f"{entry['disk_hits']} from disk", flush=True)
    out["warm_compiled_nothing"] = out["warm"]["builds"] == 0
    return out


# -- driver -----------------------------------------------------------------------------------


def machine_info():
    info = {"python": platform.python_version(), "numpy": np.__version__,
            "cpu_count": os.cpu_count(), "platform": platform.platform()}
    try:
        import pyopencl

        info["pyopencl"] = pyopencl.VERSION_TEXT
    except ImportError as exc:
        info["pyopencl"] = f"not importable ({exc})"
    return info


class Report:
    """The JSON document, rewritten atomically after every section."""

    def __init__(self, path):
        self.path = Path(path)
        self.doc = {"schema": 2, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "machine": machine_info(), "devices": []}

    def save(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.doc, indent=1))
        os.replace(tmp, self.path)


def run_section(entry, name, fn, report, failures):
    t = time.perf_counter()
    try:
        entry[name] = fn()
    except Exception as exc:  # one broken section must not lose the others  # noqa: BLE001
        failures.append(f"{name}: {exc}")
        entry[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"  {name}: FAILED: {type(exc).__name__}: {exc}", flush=True)
        if not isinstance(exc, CheckFailed):
            traceback.print_exc()
    entry.setdefault("section_s", {})[name] = round(time.perf_counter() - t, 3)
    report.save()


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", action="append",
                        help="'opencl:P:D' (repeatable), or 'none' for the PyTorch references "
                             "alone; default: every device")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="GEMMs up to 512^3, two conv shapes, 2 training steps")
    parser.add_argument("--gemm-max", type=int, default=None,
                        help="largest square GEMM (default 4096 on a GPU, else 1024)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--tune", action="store_true", help="run tune_gemm() first")
    parser.add_argument("--tune-size", type=int, default=512, help="tune_gemm's m = n = k")
    parser.add_argument("--tune-budget", type=float, default=120.0, help="seconds")
    parser.add_argument("--train-steps", type=int, default=5,
                        help="timed train_on_batch steps per model (use ~50 on a GPU)")
    parser.add_argument("--start-timeout", type=float, default=300.0,
                        help="seconds per start-up process")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                             "opencl-pocl-cpu.json"),
                        help="where to write the JSON (name it after the device)")
    parser.add_argument("--start-probe", metavar="SPEC", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    opts.sections = [s.strip() for s in opts.sections.split(",") if s.strip()]
    unknown = set(opts.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    return opts


def main(argv=None):
    opts = parse_args(argv)
    if opts.start_probe:
        start_probe(opts.start_probe)
        return 0
    report = Report(opts.out)
    ref = TorchCuda(opts.repeat)
    report.doc["torch_cuda"] = ref.info
    print(f"PyTorch CUDA reference: "
          f"{ref.info.get('device') or 'none (' + ref.info.get('reason', '?') + ')'}",
          flush=True)
    failures = []

    if opts.device == ["none"]:
        specs = []
    elif opts.device:
        specs = opts.device
    else:
        try:
            specs = [d["index"] for d in rt.devices()]
        except Exception as exc:  # no pyopencl, a broken ICD  # noqa: BLE001
            print(f"OpenCL: {exc}")
            specs = []
    if not specs:
        print(f"no OpenCL device: measuring the PyTorch CUDA references alone. {rt.INSTALL_HINT}")
        report.doc["no_opencl_device"] = True
        refs = report.doc["torch_cuda"]
        if ref.torch is not None:
            max_n = opts.gemm_max or (512 if opts.quick else 4096)
            refs["gemm"] = [{"m": m, "n": n, "k": k, **ref.gemm(m, n, k)}
                            for m, n, k in gemm_sizes(max_n)]
            refs["training"] = {name: ref.training(name, TRAIN_BATCH, 20)
                                for name in ("cnn", "lstm")}
            refs["conv"] = [{"shape": list(s[:7]), **ref.conv(s)} for s in CONV_SHAPES]
            print(json.dumps(refs, indent=1))
        report.save()
        print(f"wrote {report.path}")
        return 3

    for spec in specs:
        info = ocl.select_device(spec)
        print(f"{spec}: {info['name']} ({info['platform']}, driver {info['driver_version']})",
              flush=True)
        entry = {"device": info}
        report.doc["devices"].append(entry)
        is_gpu = info.get("type") == "gpu"
        max_n = opts.gemm_max or (512 if opts.quick else 4096 if is_gpu else 1024)
        rng = np.random.default_rng(0)
        if "programs" in opts.sections:
            run_section(entry, "startup", startup_times, report, failures)
        if opts.tune and "tune" in opts.sections:
            def tune():
                s = opts.tune_size
                t = ocl.tune_gemm(s, s, s, budget_s=opts.tune_budget, verbose=True)
                return {"shape": t["shape"], "tiles": t["tiles"], "gflops": t["gflops"],
                        "results": t["results"]}
            run_section(entry, "tuning", tune, report, failures)
        entry["tiles"] = ocl.gemm_tiles()
        print(f"  tiles {entry['tiles']}", flush=True)
        if "gemm" in opts.sections:
            run_section(entry, "gemm",
                        lambda: bench_gemm(gemm_sizes(max_n), opts.repeat, rng, ref),
                        report, failures)
        if "train" in opts.sections:
            steps = 2 if opts.quick else opts.train_steps
            run_section(entry, "training", lambda: bench_training(steps, rng, ref), report,
                        failures)
        if "start" in opts.sections:
            run_section(entry, "start", lambda: process_starts(spec, opts.start_timeout),
                        report, failures)
        if "conv" in opts.sections:
            shapes = QUICK_CONV if opts.quick else CONV_SHAPES
            run_section(entry, "conv", lambda: bench_conv(shapes, opts.repeat, rng, ref),
                        report, failures)
    report.doc["failures"] = failures
    report.save()
    print(f"wrote {report.path}")
    if failures:
        print("FAILED sections:\n  " + "\n  ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
