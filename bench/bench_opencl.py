"""OpenCL GEMM and conv throughput per device, plus cold/warm program start-up time.

Each benchmark first checks its result (GEMM against NumPy float64, conv against the CPU
op ``pynn._native.conv``), then times it: best of ``--repeat`` runs after one warm-up, the
queue drained inside the timing. GFLOP/s counts 2*M*N*K per GEMM-shaped op.

Start-up: "cold" builds dense.cl, conv.cl and reduce.cl from source into an empty pynn
disk cache (the driver's own cache, e.g. PoCL's kcache, may still be warm); "warm" reloads
the binaries from the disk cache, as a second process would.

    .venv/bin/python bench/bench_opencl.py [--device opencl:0:0] [--repeat 3] [--tune]
                                           [--quick] [--out bench/results/opencl-<device>.json]
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pynn.backend.opencl import runtime as rt  # noqa: E402
from pynn.backend import opencl as ocl  # noqa: E402

GEMM_SIZES = [(256, 256, 256), (512, 512, 512), (1024, 1024, 1024), (128, 256, 784)]
CONV_SHAPES = [
    # (N, H, W, C, KH, KW, F, strides, padding)
    (32, 32, 32, 3, 3, 3, 32, (1, 1), "same"),
    (32, 16, 16, 32, 3, 3, 64, (1, 1), "same"),
    (16, 28, 28, 64, 3, 3, 64, (1, 1), "same"),
]
QUICK_GEMM = GEMM_SIZES[:2]
QUICK_CONV = CONV_SHAPES[:2]


def best_time(fn, repeat):
    fn()
    rt.queue().finish()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        rt.queue().finish()
        times.append(time.perf_counter() - t)
    return min(times)


def check(what, got, want, rtol=1e-4):
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got.astype(np.float64) - want).max())
    if err > rtol * scale:
        raise SystemExit(f"{what}: wrong result, max error {err:.3g} > {rtol} * {scale:.3g}")


def startup_times():
    """Seconds to get the dense, conv and reduce programs: from source, then from disk."""
    kernels = [("dense", "dense_forward"), ("conv", "conv2d_forward"),
               ("reduce", "bias_backward_final")]
    tiles = ocl.gemm_tiles()
    saved = os.environ.get("PYNN_CACHE_DIR")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PYNN_CACHE_DIR"] = tmp
        try:
            out = {}
            for label in ("cold", "warm"):
                rt.clear_program_cache()
                t = time.perf_counter()
                for stem, name in kernels:
                    rt.kernel(stem, name, tiles if stem != "reduce" else None)
                out[f"{label}_build_s"] = time.perf_counter() - t
        finally:
            if saved is None:
                os.environ.pop("PYNN_CACHE_DIR", None)
            else:
                os.environ["PYNN_CACHE_DIR"] = saved
    rt.clear_program_cache()
    return out


def bench_gemm(sizes, repeat, rng):
    from tests.reference import dense_ref

    rows = []
    for m, n, k in sizes:
        a, b = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n))
        b = b.astype(np.float32)
        da, db = ocl.asarray(a), ocl.asarray(b)
        dz = ocl.asarray(rng.standard_normal((m, n)).astype(np.float32))
        y, _ = ocl.dense_forward(da, db, None, "linear", 0.0)
        check(f"dense_forward {m}x{n}x{k}", y.get(), dense_ref.dense_forward_ref(a, b, None)[0])
        check(f"dense_backward_input {m}x{n}x{k}", ocl.dense_backward_input(dz, db).get(),
              dense_ref.dense_backward_input_ref(dz.get(), b))
        check(f"dense_backward_weight {m}x{n}x{k}", ocl.dense_backward_weight(da, dz).get(),
              dense_ref.dense_backward_weight_ref(a, dz.get()))
        flops = 2.0 * m * n * k
        ops = {
            "dense_forward": lambda: ocl.dense_forward(da, db, None, "relu", 0.0),
            "dense_backward_input": lambda: ocl.dense_backward_input(dz, db),
            "dense_backward_weight": lambda: ocl.dense_backward_weight(da, dz),
        }
        row = {"m": m, "n": n, "k": k}
        for name, fn in ops.items():
            row[f"{name}_gflops"] = flops / best_time(fn, repeat) / 1e9
        rows.append(row)
        print(f"  gemm {m:5d}x{n:5d}x{k:5d}: " + "  ".join(
            f"{name.split('_', 1)[1]} {row[name + '_gflops']:7.2f}" for name in ops) + " GFLOP/s")
    return rows


def bench_conv(shapes, repeat, rng):
    from pynn._native import conv as cpu_conv

    rows = []
    for n, h, w, c, kh, kw, f, strides, padding in shapes:
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
            row[f"{name}_gflops"] = flops / best_time(fn, repeat) / 1e9
        rows.append(row)
        print(f"  conv {str((n, h, w, c)):18s} k{kh}x{kw}x{f:<4d}: " + "  ".join(
            f"{name.split('_', 1)[1]} {row[name + '_gflops']:7.2f}" for name in ops)
            + " GFLOP/s")
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


def _torch_cuda_rate(name, batch, steps):
    """The same model in PyTorch CUDA fp32 (TF32 off), images/s; None without CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    nn = torch.nn
    if name == "cnn":
        net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Flatten(), nn.Linear(64 * 8 * 8, 128), nn.ReLU(), nn.Linear(128, 10))
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
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def bench_training(steps, rng):
    """train_on_batch images/s of the bench CNN (batch 64) and an LSTM(128) over 50 steps."""
    import pynn

    previous = pynn.get_device()
    pynn.set_device(rt.device_info()["index"])
    results = {}
    try:
        for name, (model, shape) in _models().items():
            batch = 64
            model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
            x = rng.standard_normal((batch,) + shape).astype(np.float32)
            y = rng.integers(0, 10, batch)
            first = model.train_on_batch(x, y)
            if not np.isfinite(first):
                raise SystemExit(f"{name}: training produced a non-finite loss {first}")
            model.train_on_batch(x, y)
            start = time.perf_counter()
            for _ in range(steps):
                model.train_on_batch(x, y)
            rate = batch * steps / (time.perf_counter() - start)
            entry = {"images_per_s": rate, "batch": batch, "steps": steps}
            torch_rate = _torch_cuda_rate(name, batch, max(steps, 20))
            if torch_rate:
                entry["torch_cuda_fp32_images_per_s"] = torch_rate
                entry["ratio_to_torch_cuda"] = rate / torch_rate
            print(f"  train {name}: {rate:,.0f} img/s"
                  + (f" (torch CUDA fp32 {torch_rate:,.0f}, ratio {rate / torch_rate:.2f})"
                     if torch_rate else ""))
            results[name] = entry
    finally:
        pynn.set_device(previous)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", action="append",
                        help="'opencl:P:D' (repeatable); default: every device")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="the two smallest of each")
    parser.add_argument("--tune", action="store_true", help="run tune_gemm() first")
    parser.add_argument("--train-steps", type=int, default=5,
                        help="timed train_on_batch steps per model (use ~50 on a GPU)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                             "opencl-pocl-cpu.json"),
                        help="where to write the JSON (name it after the device)")
    opts = parser.parse_args()

    specs = opts.device or [d["index"] for d in rt.devices()]
    if not specs:
        raise SystemExit(f"no OpenCL device: {rt.INSTALL_HINT}")
    report = []
    for spec in specs:
        info = ocl.select_device(spec)
        print(f"{spec}: {info['name']} ({info['platform']}, driver {info['driver_version']})")
        entry = {"device": info}
        entry["startup"] = startup_times()
        print(f"  programs: cold {entry['startup']['cold_build_s']:.2f} s, "
              f"warm {entry['startup']['warm_build_s']:.3f} s")
        if opts.tune:
            tuned = ocl.tune_gemm(verbose=True)
            entry["tuning"] = {"tiles": tuned["tiles"], "gflops": tuned["gflops"]}
        entry["tiles"] = ocl.gemm_tiles()
        print(f"  tiles {entry['tiles']}")
        rng = np.random.default_rng(0)
        entry["gemm"] = bench_gemm(QUICK_GEMM if opts.quick else GEMM_SIZES, opts.repeat, rng)
        entry["conv"] = bench_conv(QUICK_CONV if opts.quick else CONV_SHAPES, opts.repeat, rng)
        if info.get("type") == "gpu" and not opts.quick:
            entry["gemm"] += bench_gemm([(4096, 4096, 4096)], opts.repeat, rng)
        entry["training"] = bench_training(2 if opts.quick else opts.train_steps, rng)
        report.append(entry)
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"time": time.strftime("%Y-%m-%d %H:%M:%S"), "devices": report},
                              indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
