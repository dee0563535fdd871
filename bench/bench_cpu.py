"""``python -m bench`` (from the repository root): pynn's CPU benchmark suite.

What it measures, in order (every benchmark first checks its result, then times):

1. sgemm peak: NumPy's BLAS, float32, one large square matmul, median of several runs. The
   Dense and Conv2D steps below are timed alternately with this same matmul, and their % of
   peak is the median over those pairs (each pair sees the same machine state).
2. Dense and Conv2D forward + backward on large shapes, in GFLOP/s (GEMM FLOPs only: 2 per
   multiply-add, three products per step). Dense is checked against NumPy float64, Conv2D
   against torch float64 autograd.
3. Training throughput (images/s) of a small CNN and an MLP in pynn and in PyTorch CPU with the
   same architecture and thread count. Each framework trains in its own worker process; the
   parent alternates timed rounds between them (pynn, torch, pynn, torch, ...) within one run,
   so both see the same machine state, and reports medians. Separate processes keep each
   framework's OpenMP runtime in its own default state (they would otherwise share one
   libgomp). The check, done first in the parent: with the same initial weights and batches
   both frameworks produce the same losses over a few Adam steps.
4. Peak memory of each training run, from the same workers: each resets its high-water mark
   (``/proc/self/clear_refs``) after imports and data, trains, and reads ``VmHWM``: native
   allocations count, unlike tracemalloc.

It prints a table and writes JSON (machine info, every number, and for each target whether it
is met). ``--profile`` adds per-op milliseconds per training step for both frameworks.

Run it through ``bench/__main__.py``, which imports pynn before this module imports NumPy (see
there); the torch worker loads this file alone, without pynn.

Legend: N batch, H/W spatial, C channels, F filters, U units.
"""

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Targets (the issue's): kernels reach this fraction of the sgemm peak, training this multiple
# of PyTorch's images/s, and peak memory at most PyTorch's.
TARGET_PCT_OF_PEAK = 80.0
TARGET_SPEEDUP = 1.5

SIZES = {
    "full": {
        "peak_n": 2048,
        # (N, C, U)
        "dense": [(1024, 1024, 1024)],
        # (N, H, W, C, KH, KW, F, padding)
        "conv": [(32, 32, 32, 64, 3, 3, 128, "same")],
        "cnn_batch": 64, "cnn_steps": 30, "resnet_steps": 6,
        "mlp_batch": 128, "mlp_steps": 150,
        "check_steps": 3, "memory_steps": 5,
    },
    "quick": {
        "peak_n": 256,
        "dense": [(32, 48, 40)],
        "conv": [(2, 9, 7, 5, 3, 3, 6, "same")],
        "cnn_batch": 8, "cnn_steps": 2, "resnet_steps": 2,
        "mlp_batch": 16, "mlp_steps": 2,
        "check_steps": 2, "memory_steps": 2,
    },
}

CHECK_RTOL = {"dense": 1e-4, "conv": 1e-3, "training": 2e-3}


# -- machine ------------------------------------------------------------------------------
def _cpuinfo():
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    model, cores, flags = None, set(), set()
    phys = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and model is None:
            model = value
        elif key == "physical id":
            phys = value
        elif key == "core id":
            cores.add((phys, value))
        elif key == "flags" and not flags:
            flags = set(value.split())
    simd = [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")
            if f in flags]
    return {"cpu_model": model, "physical_cores": len(cores) or None, "simd": simd}


def _cpu_slug(model):
    name = re.sub(r"\((R|TM|tm|r)\)", "", model or "unknown cpu")
    name = re.sub(r"@.*$|\bCPU\b|\bProcessor\b", "", name)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown-cpu"


def machine_info(threads):
    import pynn

    info = _cpuinfo()
    info.update(
        logical_cpus=os.cpu_count(),
        usable_cpus=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        threads=threads,
        os=f"{platform.system()} {platform.release()}",
        python=platform.python_version(),
        numpy=np.__version__,
        pynn=pynn.__version__,
    )
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    try:
        from pynn import _build_flags as flags

        info["pynn_build"] = {"openmp": flags.OPENMP, "compile_args": flags.COMPILE_ARGS}
    except ImportError:
        info["pynn_build"] = None
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [{k: lib.get(k) for k in ("internal_api", "version", "architecture",
                                                   "threading_layer", "num_threads")}
                        | {"library": Path(lib.get("filepath", "")).name}
                        for lib in threadpool_info() if lib.get("user_api") == "blas"]
    except ImportError:
        info["blas"] = None
    return info


def set_threads(n, with_torch=True):
    """Same thread count for pynn (OpenMP + BLAS, NumPy's included) and torch."""
    if with_torch:
        try:
            import torch

            torch.set_num_threads(n)
        except ImportError:
            pass
    import pynn

    pynn.set_num_threads(n)


# -- timing and checks ---------------------------------------------------------------------
def time_runs(fn, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def rel_error(got, ref):
    """max |got - ref| / max |ref|: one number per array, robust to near-zero entries."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        return math.inf
    if ref.size == 0:
        return 0.0
    scale = max(float(np.max(np.abs(ref))), 1e-30)
    return float(np.max(np.abs(got - ref))) / scale


def make_check(errors, rtol):
    worst = max(errors.values()) if errors else math.inf
    return {"passed": bool(worst <= rtol), "rtol": rtol, "max_rel_error": worst,
            "errors": errors}


# -- 1. sgemm peak -------------------------------------------------------------------------
def peak_gemm(n):
    """(one run of the yardstick GEMM, its FLOPs)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    return (lambda: a @ b), 2.0 * n ** 3


def bench_peak(n, repeats):
    run, flop = peak_gemm(n)
    times = time_runs(run, max(repeats, 5))
    return {"n": n, "dtype": "float32", "runs_s": times,
            "gflops": flop / statistics.median(times) / 1e9,
            "gflops_best": flop / min(times) / 1e9}


def time_paired(step, peak_run, repeats):
    """Alternates one yardstick GEMM and one step, so each pair sees the same machine state
    (turbo, neighbours): the speed of this shared box drifts by 20-30% within minutes, and a
    peak measured once at the start then says more about that drift than about the kernel.
    Returns (step times, peak times)."""
    step()
    peak_run()
    step_times, peak_times = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        peak_run()
        peak_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        step()
        step_times.append(time.perf_counter() - t)
    return step_times, peak_times


def _paired_pct(step_flop, step_times, peak_flop, peak_times):
    """Median over the pairs of (step GFLOP/s) / (that pair's peak GFLOP/s), in %."""
    return 100.0 * statistics.median(
        (step_flop / ts) / (peak_flop / tp) for ts, tp in zip(step_times, peak_times))


def _gflops(flop, times):
    return flop / statistics.median(times) / 1e9


# -- 2a. Dense -----------------------------------------------------------------------------
def bench_dense(shape, repeats, peak):
    """The ops a Dense(U, relu) layer runs in one training step, as pynn.layers.Dense runs
    them in a model's loop (bias and relu gradients in one fused pass, on recycled memory:
    _training_step); the GFLOP/s count only the three GEMMs. peak: (one run of the
    yardstick GEMM, its FLOPs), alternated with the step."""
    from pynn.backend import cpu as be

    n, c, u = shape
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, c), dtype=np.float32)
    k = (rng.standard_normal((c, u), dtype=np.float32) / np.sqrt(c)).astype(np.float32)
    bias = rng.standard_normal(u, dtype=np.float32)
    dy = rng.standard_normal((n, u), dtype=np.float32)

    def forward():
        return be.dense_forward(x, k, bias, "relu", 0.0)

    def backward(y, z):
        dz, db = be.activation_bias_backward(dy, z, y, "relu", 0.0)
        return be.dense_backward_weight(x, dz), db, be.dense_backward_input(dz, k)

    y, z = forward()
    dk, db, dx = backward(y, z)
    from tests.reference import dense_ref

    y_ref, z_ref = dense_ref.dense_forward_ref(x, k, bias, "relu")
    dz_ref = np.where(z_ref > 0, dy.astype(np.float64), 0.0)
    errors = {"forward": rel_error(y, y_ref),
              "backward_weight": rel_error(dk, dense_ref.dense_backward_weight_ref(x, dz_ref)),
              "bias_backward": rel_error(db, dense_ref.bias_backward_ref(dz_ref)),
              "backward_input": rel_error(dx, dense_ref.dense_backward_input_ref(dz_ref, k))}
    result = {"shape": {"N": n, "C": c, "U": u}, "activation": "relu",
              "check": make_check(errors, CHECK_RTOL["dense"])}
    if not result["check"]["passed"]:
        return result
    dz = be.activation_backward(dy, z, y, "relu", 0.0)
    gemm = 2.0 * n * c * u
    ops = {"forward": time_runs(forward, repeats),
           "backward_weight": time_runs(lambda: be.dense_backward_weight(x, dz), repeats),
           "backward_input": time_runs(lambda: be.dense_backward_input(dz, k), repeats)}
    step, peak_times = time_paired(_training_step(forward, backward), peak[0], repeats)
    _step_result(result, ops, gemm, step, peak, peak_times)
    return result


def _training_step(forward, backward):
    """forward then backward as a model's loop runs them: under backend.host_memory_loop,
    so each step's activations and gradients reuse the blocks the previous one freed."""
    from pynn import backend

    def step():
        with backend.host_memory_loop():
            return backward(*forward())

    return step


def _step_result(result, ops, gemm, step, peak, peak_times):
    """GFLOP/s of each op and of the step; % of peak against the GEMMs run between steps."""
    result["op_gflops"] = {name: _gflops(gemm, t) for name, t in ops.items()}
    result["step_runs_s"] = step
    result["peak_runs_s"] = peak_times
    result["gflops"] = _gflops(3 * gemm, step)
    result["paired_peak_gflops"] = _gflops(peak[1], peak_times)
    result["pct_of_peak"] = _paired_pct(3 * gemm, step, peak[1], peak_times)


# -- 2b. Conv2D ----------------------------------------------------------------------------
def _torch_conv_reference(x, k, bias, dy, padding):
    """float64 torch autograd on NCHW copies: (y, dx, dk, db) back in NHWC / (KH,KW,C,F)."""
    import torch

    xt = torch.tensor(x.transpose(0, 3, 1, 2), dtype=torch.float64, requires_grad=True)
    kt = torch.tensor(k.transpose(3, 2, 0, 1), dtype=torch.float64, requires_grad=True)
    bt = torch.tensor(bias, dtype=torch.float64, requires_grad=True)
    zt = torch.nn.functional.conv2d(xt, kt, bt, padding=padding)
    yt = torch.relu(zt)
    yt.backward(torch.tensor(dy.transpose(0, 3, 1, 2), dtype=torch.float64))
    return (yt.detach().numpy().transpose(0, 2, 3, 1), xt.grad.numpy().transpose(0, 2, 3, 1),
            kt.grad.numpy().transpose(2, 3, 1, 0), bt.grad.numpy())


def bench_conv(shape, repeats, peak):
    """The ops a Conv2D(F, 3, relu) layer runs in one training step (input gradient
    included), as pynn.layers.Conv2D runs them in a model's loop (forward, then the fused
    conv2d_backward, under _training_step); GFLOP/s count the three GEMM-shaped products."""
    from pynn.backend import cpu as be

    n, h, w, c, kh, kw, f, padding = shape
    s, d = (1, 1), (1, 1)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((n, h, w, c), dtype=np.float32)
    k = (rng.standard_normal((kh, kw, c, f), dtype=np.float32) / np.sqrt(kh * kw * c))
    k = k.astype(np.float32)
    bias = rng.standard_normal(f, dtype=np.float32) * np.float32(0.1)

    def forward():
        return be.conv2d_forward(x, k, bias, s, padding, d, "relu", 0.0)

    y, z = forward()
    dy = rng.standard_normal(y.shape, dtype=np.float32)

    def backward(y, z):
        return be.conv2d_backward(dy, x, z, y, k, s, padding, d, "relu", 0.0, True, True)

    dx, dk, db = backward(y, z)
    result = {"shape": {"N": n, "H": h, "W": w, "C": c, "KH": kh, "KW": kw, "F": f,
                        "padding": padding, "strides": list(s)}, "activation": "relu"}
    try:
        y_ref, dx_ref, dk_ref, db_ref = _torch_conv_reference(x, k, bias, dy, padding)
    except ImportError:
        result["check"] = {"passed": False, "error": "torch is not installed (the reference)"}
        return result
    errors = {"forward": rel_error(y, y_ref), "backward_weight": rel_error(dk, dk_ref),
              "bias_backward": rel_error(db, db_ref), "backward_input": rel_error(dx, dx_ref)}
    result["check"] = make_check(errors, CHECK_RTOL["conv"])
    if not result["check"]["passed"]:
        return result
    dz = be.activation_backward(dy, z, y, "relu", 0.0)
    gemm = 2.0 * n * y.shape[1] * y.shape[2] * f * kh * kw * c
    ops = {"forward": time_runs(forward, repeats),
           "backward_weight": time_runs(
               lambda: be.conv2d_backward_weight(x, dz, k.shape, s, padding, d), repeats),
           "backward_input": time_runs(
               lambda: be.conv2d_backward_input(dz, k, x.shape, s, padding, d), repeats)}
    step, peak_times = time_paired(_training_step(forward, backward), peak[0], repeats)
    _step_result(result, ops, gemm, step, peak, peak_times)
    return result


# -- 3 and 4. training speed and peak memory: the two models in both frameworks -------------
MODELS = {
    "cnn": {"input": (32, 32, 3), "classes": 10, "batch": "cnn_batch", "steps": "cnn_steps",
            "torch_ref_img_s": 1800},
    "mlp": {"input": (784,), "classes": 10, "batch": "mlp_batch", "steps": "mlp_steps",
            "torch_ref_img_s": 25000},
    # issue 12: a residual CNN with BatchNormalization and Add shortcuts (10 conv layers), and
    # a 30-layer functional model (10 blocks of Dense-Dense-Add) whose per-step framework
    # overhead --profile reports.
    "resnet": {"input": (32, 32, 3), "classes": 10, "batch": "cnn_batch",
               "steps": "resnet_steps", "torch_ref_img_s": 300},
    "func30": {"input": (256,), "classes": 10, "batch": "mlp_batch", "steps": "mlp_steps",
               "torch_ref_img_s": 8000},
}
RESNET_BLOCKS = ((32, 1), (32, 1), (64, 2), (64, 1))  # (filters, stride) per residual block
FUNC30_WIDTH, FUNC30_BLOCKS = 256, 10


def pynn_resnet():
    import pynn
    from pynn import layers

    def block(x, filters, stride, name):
        y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False,
                          name=f"{name}_conv1")(x)
        y = layers.BatchNormalization(name=f"{name}_bn1")(y)
        y = layers.Activation("relu")(y)
        y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
        y = layers.BatchNormalization(name=f"{name}_bn2")(y)
        if stride != 1 or x.shape[-1] != filters:
            x = layers.Conv2D(filters, 1, strides=stride, use_bias=False,
                              name=f"{name}_proj")(x)
            x = layers.BatchNormalization(name=f"{name}_proj_bn")(x)
        return layers.Activation("relu")(layers.Add()([x, y]))

    inputs = pynn.Input((32, 32, 3))
    x = layers.Conv2D(32, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = layers.Activation("relu")(layers.BatchNormalization(name="stem_bn")(x))
    for i, (filters, stride) in enumerate(RESNET_BLOCKS):
        x = block(x, filters, stride, f"b{i}")
    x = layers.GlobalAveragePooling2D()(x)
    return pynn.Model(inputs, layers.Dense(10, activation="softmax", name="head")(x))


def pynn_func30():
    import pynn
    from pynn import layers

    inputs = pynn.Input((FUNC30_WIDTH,))
    x = inputs
    for i in range(FUNC30_BLOCKS):
        h = layers.Dense(FUNC30_WIDTH, activation="relu", name=f"f{i}_a")(x)
        # Each block's last layer starts at zero (the residual-network practice): the sum of
        # ten untrained branches would otherwise swamp the loss both frameworks compare.
        h = layers.Dense(FUNC30_WIDTH, kernel_initializer="zeros", name=f"f{i}_b")(h)
        x = layers.Add()([x, h])
    # Logits, with the loss taking them (as torch's CrossEntropyLoss does): the residual sums
    # grow large, and a softmax output's clipped log would part from torch's exact one.
    return pynn.Model(inputs, layers.Dense(10, name="head")(x))


def pynn_model(name):
    import pynn
    from pynn import layers

    if name in ("resnet", "func30"):
        model = pynn_resnet() if name == "resnet" else pynn_func30()
        loss = ("sparse_categorical_crossentropy" if name == "resnet" else
                pynn.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.compile(optimizer="adam", loss=loss)
        return model
    if name == "cnn":
        stack = [layers.Input((32, 32, 3)),
                 layers.Conv2D(32, (3, 3), padding="same", activation="relu"),
                 layers.MaxPooling2D(2),
                 layers.Conv2D(64, (3, 3), padding="same", activation="relu"),
                 layers.MaxPooling2D(2),
                 layers.Flatten(),
                 layers.Dense(128, activation="relu"),
                 layers.Dense(10, activation="softmax")]
    else:
        stack = [layers.Input((784,)),
                 layers.Dense(512, activation="relu"),
                 layers.Dense(256, activation="relu"),
                 layers.Dense(10, activation="softmax")]
    model = pynn.Sequential(stack)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def torch_model(name):
    """The same architecture in PyTorch's own idiom: NCHW, logits + CrossEntropyLoss (the
    softmax folded into the loss), Adam with Keras's epsilon."""
    import torch
    from torch import nn

    if name in ("resnet", "func30"):
        net = _TorchResNet() if name == "resnet" else _TorchFunc30()
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-7)
        return net, opt, nn.CrossEntropyLoss()
    if name == "cnn":
        net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Flatten(), nn.Linear(64 * 8 * 8, 128), nn.ReLU(),
                            nn.Linear(128, 10))
    else:
        net = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                            nn.Linear(256, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-7)
    return net, opt, nn.CrossEntropyLoss()


def _torch_classes():
    """The torch twins of pynn_resnet and pynn_func30, modules named as pynn's layers (so
    weights copy by name); BatchNorm with Keras's epsilon and momentum."""
    from torch import nn

    def bn(c):
        return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.by_name = nn.ModuleDict()
            self.by_name["stem"] = nn.Conv2d(3, 32, 3, padding=1, bias=False)
            self.by_name["stem_bn"] = bn(32)
            self.blocks = []
            cin = 32
            for i, (f, s) in enumerate(RESNET_BLOCKS):
                n = f"b{i}"
                # Keras's 'same' with stride 2 pads only after (bottom/right): torch's
                # padding=1 would shift the sampling grid by a pixel, so pad by hand there.
                self.by_name[f"{n}_conv1"] = nn.Conv2d(cin, f, 3, stride=s,
                                                       padding=1 if s == 1 else 0, bias=False)
                self.by_name[f"{n}_bn1"] = bn(f)
                self.by_name[f"{n}_conv2"] = nn.Conv2d(f, f, 3, padding=1, bias=False)
                self.by_name[f"{n}_bn2"] = bn(f)
                proj = s != 1 or cin != f
                if proj:
                    self.by_name[f"{n}_proj"] = nn.Conv2d(cin, f, 1, stride=s, bias=False)
                    self.by_name[f"{n}_proj_bn"] = bn(f)
                self.blocks.append((n, proj))
                cin = f
            self.by_name["head"] = nn.Linear(cin, 10)

        def forward(self, x):
            m = self.by_name
            relu = nn.functional.relu
            x = relu(m["stem_bn"](m["stem"](x)))
            for (n, proj), (_, stride) in zip(self.blocks, RESNET_BLOCKS):
                padded = x if stride == 1 else nn.functional.pad(x, (0, 1, 0, 1))
                y = relu(m[f"{n}_bn1"](m[f"{n}_conv1"](padded)))
                y = m[f"{n}_bn2"](m[f"{n}_conv2"](y))
                if proj:
                    x = m[f"{n}_proj_bn"](m[f"{n}_proj"](x))
                x = relu(x + y)
            return m["head"](x.mean(dim=(2, 3)))

    class Func30(nn.Module):
        def __init__(self):
            super().__init__()
            self.by_name = nn.ModuleDict()
            for i in range(FUNC30_BLOCKS):
                self.by_name[f"f{i}_a"] = nn.Linear(FUNC30_WIDTH, FUNC30_WIDTH)
                self.by_name[f"f{i}_b"] = nn.Linear(FUNC30_WIDTH, FUNC30_WIDTH)
            self.by_name["head"] = nn.Linear(FUNC30_WIDTH, 10)

        def forward(self, x):
            m = self.by_name
            for i in range(FUNC30_BLOCKS):
                x = x + m[f"f{i}_b"](nn.functional.relu(m[f"f{i}_a"](x)))
            return m["head"](x)

    return ResNet, Func30


def _TorchResNet():
    return _torch_classes()[0]()


def _TorchFunc30():
    return _torch_classes()[1]()


def _copy_by_name(model, net):
    """Conv (KH,KW,C,F) -> (F,C,KH,KW), Dense (C,U) -> (U,C), BatchNormalization's gamma,
    beta, moving mean and variance -> weight, bias, running_mean, running_var."""
    import torch

    with torch.no_grad():
        for layer in model.layers:
            if not layer.weights or layer.name not in net.by_name:
                continue
            module = net.by_name[layer.name]
            weights = layer.get_weights()
            if type(layer).__name__ == "BatchNormalization":
                targets = [module.weight, module.bias, module.running_mean, module.running_var]
            else:
                kernel = weights[0]
                weights[0] = (kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4
                              else kernel.T)
                targets = [module.weight] + ([module.bias] if len(weights) > 1 else [])
            for t, w in zip(targets, weights):
                t.copy_(torch.from_numpy(np.ascontiguousarray(w)))


def copy_weights_to_torch(model, net):
    """pynn (Keras layouts, NHWC flatten order) -> torch (NCHW): conv (KH,KW,C,F) ->
    (F,C,KH,KW); dense (C,U) -> (U,C), the first dense after a Flatten of (H,W,C) permuted to
    torch's (C,H,W) flatten order."""
    import torch

    if hasattr(net, "by_name"):
        return _copy_by_name(model, net)
    torch_layers = [m for m in net if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    pynn_layers = [layer for layer in model.layers if layer.weights]
    flat_from = None
    with torch.no_grad():
        for layer in model.layers:
            if type(layer).__name__ == "Flatten" and len(layer.input_shape) == 4:
                flat_from = tuple(layer.input_shape[1:])
            if not layer.weights:
                continue
            tl = torch_layers[pynn_layers.index(layer)]
            kernel, bias = layer.get_weights()
            if kernel.ndim == 4:
                kernel = kernel.transpose(3, 2, 0, 1)
            elif flat_from is not None:
                kernel = kernel.reshape(flat_from + (-1,)).transpose(3, 2, 0, 1)
                kernel = kernel.reshape(kernel.shape[0], -1)
                flat_from = None
            else:
                kernel = kernel.T
            tl.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel)))
            tl.bias.copy_(torch.from_numpy(bias))


def make_data(name, batch, n_batches, seed=3):
    rng = np.random.default_rng(seed)
    spec = MODELS[name]
    x = rng.random((n_batches, batch) + spec["input"], dtype=np.float32)
    y = rng.integers(0, spec["classes"], (n_batches, batch)).astype(np.int32)
    return x, y


def to_torch_batches(x, y):
    import torch

    if x.ndim == 5:  # (B, N, H, W, C) -> (B, N, C, H, W)
        x = x.transpose(0, 1, 4, 2, 3)
    return ([torch.from_numpy(np.ascontiguousarray(xb)) for xb in x],
            [torch.from_numpy(yb.astype(np.int64)) for yb in y])


class PynnRunner:
    def __init__(self, name, x, y):
        self.model = pynn_model(name)
        self.x, self.y = x, y

    def step(self, i):
        i %= len(self.x)
        return float(self.model.train_on_batch(self.x[i], self.y[i]))


class TorchRunner:
    def __init__(self, name, x, y):
        self.net, self.opt, self.loss_fn = torch_model(name)
        self.x, self.y = to_torch_batches(x, y)

    def step(self, i):
        i %= len(self.x)
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.net(self.x[i]), self.y[i])
        loss.backward()
        self.opt.step()
        return float(loss.detach())


def check_training(name, sizes):
    """Same weights, same batches: pynn's and torch's losses agree step after step."""
    import pynn

    pynn.utils.set_random_seed(0)
    batch = sizes[MODELS[name]["batch"]]
    steps = sizes["check_steps"]
    x, y = make_data(name, batch, steps, seed=4)
    p, t = PynnRunner(name, x, y), TorchRunner(name, x, y)
    copy_weights_to_torch(p.model, t.net)
    lp = [p.step(i) for i in range(steps)]
    lt = [t.step(i) for i in range(steps)]
    errors = {f"loss_step_{i + 1}": abs(a - b) / max(abs(b), 1e-30)
              for i, (a, b) in enumerate(zip(lp, lt))}
    check = make_check(errors, CHECK_RTOL["training"])
    check.update(pynn_losses=lp, torch_losses=lt)
    return check


def _proc_status_kib(field):
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss():
    """Linux: writing 5 to clear_refs resets VmHWM to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def worker(name, framework, threads, quick):
    """One framework, one model, in its own process (``--worker``): the parent alternates
    rounds between the pynn and the torch worker through stdin/stdout, one JSON line each.

    Own processes keep each framework's OpenMP runtime in its default state (pynn sets
    OMP_WAIT_POLICY=PASSIVE when imported, which would slow torch by ~20% if they shared a
    process), and give each a clean memory high-water mark: the baseline is taken after imports
    and data, so the peak counts the model, optimizer state, activations and workspaces.
    Commands: ``round`` -> images/s, ``memory`` -> RSS numbers, ``profile``, ``quit``.
    """
    sizes = SIZES["quick" if quick else "full"]
    if framework == "torch":
        import torch

        torch.set_num_threads(threads)
        runner_cls = TorchRunner
    else:
        import pynn

        pynn.set_num_threads(threads)
        runner_cls = PynnRunner
    batch, steps = sizes[MODELS[name]["batch"]], sizes[MODELS[name]["steps"]]
    x, y = make_data(name, batch, 4)
    import gc

    gc.collect()
    base = _proc_status_kib("VmRSS")
    reset = _reset_peak_rss()
    runner = runner_cls(name, x, y)
    for i in range(3):  # the first steps allocate optimizer slots and workspaces
        runner.step(i)

    def reply(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    reply({"ready": True, "pid": os.getpid(),
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")})
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "round":
            t = time.perf_counter()
            for i in range(steps):
                runner.step(i)
            reply({"images_per_s": steps * batch / (time.perf_counter() - t)})
        elif cmd == "memory":
            hwm = _proc_status_kib("VmHWM")
            reply({"baseline_rss_mib": base / 1024, "peak_rss_mib": hwm / 1024,
                   "training_peak_mib": (hwm - base) / 1024, "hwm_reset": reset})
        elif cmd == "profile":
            # A fresh model: the per-op times should not depend on how long the rounds ran
            # (Adam's moments of dead units decay into denormals after ~700 steps).
            runner = runner_cls(name, x, y)
            for i in range(3):
                runner.step(i)
            prof = profile_pynn if framework == "pynn" else profile_torch
            reply(prof(runner, max(2, steps // 2)))
        elif cmd == "quit":
            return
        else:
            reply({"error": f"unknown command {cmd!r}"})


class Worker:
    """The parent's handle on a ``worker`` subprocess."""

    def __init__(self, name, framework, threads, quick, torch_omp_wait_policy=None):
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])
        if framework == "pynn":
            cmd = [sys.executable, "-m", "bench"]
            env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        else:
            # Loads this file alone: ``python -m bench`` imports pynn, which would change
            # torch's OpenMP wait policy.
            cmd = [sys.executable, "-c", _STANDALONE, str(Path(__file__).resolve())]
            if torch_omp_wait_policy is None:
                env.pop("OMP_WAIT_POLICY", None)
            else:
                env["OMP_WAIT_POLICY"] = torch_omp_wait_policy
        cmd += ["--worker", name, framework, "--threads", str(threads)]
        cmd += ["--quick"] if quick else []
        # stderr to a file: a chatty worker (torch's profiler) must not fill a pipe and block.
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True, env=env, cwd=root)
        self.info = None

    def wait_ready(self):
        self.info = self._read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.stderr.seek(0)
            err = self.stderr.read().strip().splitlines()
            raise RuntimeError(f"benchmark worker failed: {err[-1] if err else 'no output'}")
        return json.loads(line)

    def ask(self, cmd):
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


_STANDALONE = ("import importlib.util, sys; "
               "spec = importlib.util.spec_from_file_location('bench_cpu', sys.argv[1]); "
               "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
               "sys.exit(m.main(sys.argv[2:]))")


def bench_training(name, sizes, repeats, threads, quick, profile=False,
                   torch_omp_wait_policy=None):
    batch = sizes[MODELS[name]["batch"]]
    steps = sizes[MODELS[name]["steps"]]
    result = {"model": name, "batch": batch, "steps_per_round": steps, "rounds": repeats,
              "torch_reference_images_per_s": MODELS[name]["torch_ref_img_s"]}
    try:
        import torch  # noqa: F401
    except ImportError:
        result["check"] = {"passed": False, "error": "torch is not installed"}
        return result, {}, None
    result["check"] = check_training(name, sizes)
    if not result["check"]["passed"]:
        return result, {}, None
    workers = {}
    try:
        for fw in ("pynn", "torch"):
            workers[fw] = Worker(name, fw, threads, quick, torch_omp_wait_policy)
        for w in workers.values():  # both start (import, warm up) at once, then take turns
            w.wait_ready()
        rates = {fw: [] for fw in workers}
        for _ in range(repeats):
            for fw, w in workers.items():  # alternated: pynn, torch, pynn, torch, ...
                rates[fw].append(w.ask("round")["images_per_s"])
        memory = {fw: w.ask("memory") for fw, w in workers.items()}
        prof = {fw: w.ask("profile") for fw, w in workers.items()} if profile else None
    finally:
        for w in workers.values():
            w.close()
    for fw, rs in rates.items():
        result[fw] = {"images_per_s": statistics.median(rs), "rounds_images_per_s": rs,
                      "ms_per_step": 1e3 * batch / statistics.median(rs),
                      "omp_wait_policy": workers[fw].info.get("omp_wait_policy")}
    result["speedup_vs_torch"] = result["pynn"]["images_per_s"] / result["torch"]["images_per_s"]
    return result, memory, prof


# -- profile: per-op time per training step (run inside the workers) ---------------------------
def profile_pynn(runner, steps):
    """Wraps every op of pynn.backend.cpu (layers look them up at call time) and sums the
    wall time per (op, first array shape)."""
    import pynn.backend.cpu as be
    from pynn.backend import api

    totals = {}
    originals = {op: getattr(be, op) for op in api.OPS if hasattr(be, op)}

    def wrap(op, fn):
        def timed(*args, **kwargs):
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            dt = time.perf_counter() - t
            shape = next((tuple(a.shape) for a in args if hasattr(a, "shape")), ())
            key = f"{op} {shape}"
            totals[key] = totals.get(key, 0.0) + dt
            return out
        return timed

    t = time.perf_counter()
    for i in range(steps):
        runner.step(i)
    plain_s = (time.perf_counter() - t) / steps
    for op, fn in originals.items():
        setattr(be, op, wrap(op, fn))
    try:
        t = time.perf_counter()
        for i in range(steps):
            runner.step(i)
        step_s = (time.perf_counter() - t) / steps
    finally:
        for op, fn in originals.items():
            setattr(be, op, fn)
    ops = {k: 1e3 * v / steps for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}
    return {"ms_per_step": 1e3 * plain_s, "ms_per_step_profiled": 1e3 * step_s,
            "ops_ms": ops, "outside_ops_ms": 1e3 * step_s - sum(ops.values())}


def profile_torch(runner, steps):
    from torch.profiler import ProfilerActivity, profile

    t = time.perf_counter()
    for i in range(steps):
        runner.step(i)
    plain_s = (time.perf_counter() - t) / steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            runner.step(i)
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    ops = {e.key: e.self_cpu_time_total / 1e3 / steps for e in rows[:25]}
    return {"ms_per_step": 1e3 * plain_s, "ops_self_ms": ops}


# -- report ------------------------------------------------------------------------------------
def targets(results):
    out = []
    for kind in ("dense", "conv2d"):
        for r in results[kind]:
            shape = "x".join(str(v) for v in r["shape"].values() if isinstance(v, int))
            out.append({"name": f"{kind} {shape} fwd+bwd % of sgemm peak",
                        "value": r.get("pct_of_peak"), "target": f">= {TARGET_PCT_OF_PEAK:g}",
                        "met": r.get("pct_of_peak") is not None
                        and r["pct_of_peak"] >= TARGET_PCT_OF_PEAK})
    for name, r in results["training"].items():
        s = r.get("speedup_vs_torch")
        out.append({"name": f"{name} training images/s vs torch", "value": s,
                    "target": f">= {TARGET_SPEEDUP:g}x",
                    "met": s is not None and s >= TARGET_SPEEDUP})
    func30 = results.get("profile", {}).get("func30", {}).get("pynn")
    if func30 and func30.get("ms_per_step_profiled"):
        share = func30["outside_ops_ms"] / func30["ms_per_step_profiled"]
        out.append({"name": "func30 (30-layer functional) framework overhead, share of a step",
                    "value": share, "target": "< 0.1", "met": share < 0.1})
    for name, r in results["memory"].items():
        p = r.get("pynn", {}).get("training_peak_mib")
        t = r.get("torch", {}).get("training_peak_mib")
        out.append({"name": f"{name} training peak memory vs torch",
                    "value": None if p is None or t is None else p / max(t, 1e-9),
                    "target": "<= 1x", "met": p is not None and t is not None and p <= t})
    return out


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def print_report(results):
    peak = results["sgemm_peak"]
    m = results["machine"]
    print(f"\npynn {m['pynn']} CPU benchmark: {m.get('cpu_model')}, {m['threads']} threads, "
          f"numpy {m['numpy']}, torch {m.get('torch')}")
    print(f"sgemm peak (NumPy BLAS, n={peak['n']}): {peak['gflops']:.1f} GFLOP/s median "
          f"({peak['gflops_best']:.1f} best)\n")
    print(f"{'kernel (fwd+bwd)':44s} {'check':>6s} {'fwd':>7s} {'bwd_w':>7s} {'bwd_in':>7s} "
          f"{'step':>7s} {'peak':>7s} {'%peak':>6s}   (GFLOP/s; peak: the GEMMs run "
          f"between steps)")
    for kind in ("dense", "conv2d"):
        for r in results[kind]:
            shape = ",".join(f"{k}={v}" for k, v in r["shape"].items()
                             if k not in ("strides",))
            og = r.get("op_gflops", {})
            print(f"{kind + ' ' + shape:44s} {'ok' if r['check']['passed'] else 'FAIL':>6s} "
                  f"{_fmt(og.get('forward'), '7.1f')} {_fmt(og.get('backward_weight'), '7.1f')} "
                  f"{_fmt(og.get('backward_input'), '7.1f')} {_fmt(r.get('gflops'), '7.1f')} "
                  f"{_fmt(r.get('paired_peak_gflops'), '7.1f')} "
                  f"{_fmt(r.get('pct_of_peak'), '6.1f')}")
    print(f"\n{'training':24s} {'check':>6s} {'pynn img/s':>11s} {'torch img/s':>12s} "
          f"{'speedup':>8s} {'pynn MiB':>9s} {'torch MiB':>10s}")
    for name, r in results["training"].items():
        mem = results["memory"].get(name, {})
        print(f"{name + ' (batch ' + str(r['batch']) + ')':24s} "
              f"{'ok' if r['check']['passed'] else 'FAIL':>6s} "
              f"{_fmt(r.get('pynn', {}).get('images_per_s'), '11.0f')} "
              f"{_fmt(r.get('torch', {}).get('images_per_s'), '12.0f')} "
              f"{_fmt(r.get('speedup_vs_torch'), '7.2f')}x "
              f"{_fmt(mem.get('pynn', {}).get('training_peak_mib'), '9.1f')} "
              f"{_fmt(mem.get('torch', {}).get('training_peak_mib'), '10.1f')}")
    print("(MiB: resident-memory growth while building and training the model, fresh process)")
    load = results.get("loadavg_1min", {})
    busy = [v for v in load.values() if v is not None and v > 0.5 + m["threads"]]
    if busy:
        print(f"\nWARNING: the machine was busy (1-min load average {max(busy):.1f} with "
              f"{m['threads']} benchmark threads): other processes competed for the cores, "
              f"the timings are not trustworthy.")
    print("\ntargets:")
    for t in results["targets"]:
        v = t["value"]
        print(f"  [{'met' if t['met'] else 'NOT MET':>7s}] {t['name']}: "
              f"{_fmt(v, '.2f')} (target {t['target']})")
    if "profile" in results:
        for name, prof in results["profile"].items():
            p, t = prof["pynn"], prof["torch"]
            print(f"\nprofile {name}: pynn {p['ms_per_step']:.2f} ms/step "
                  f"({p['outside_ops_ms']:.2f} outside ops), torch {t['ms_per_step']:.2f} "
                  f"ms/step")
            print("  pynn op (first array shape)                                  ms/step")
            for k, v in p["ops_ms"].items():
                print(f"    {k:58s} {v:7.3f}")
            print("  torch op (self time, under the profiler)                    ms/step")
            for k, v in list(t["ops_self_ms"].items())[:15]:
                print(f"    {k:58s} {v:7.3f}")


def _loadavg():
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def default_json_path(machine, quick):
    label = f"{_cpu_slug(machine.get('cpu_model'))}-{machine['threads']}t"
    root = Path(__file__).resolve().parents[1]
    return root / "bench" / "results" / f"cpu-{label}{'-quick' if quick else ''}.json"


def run(args):
    sizes = SIZES["quick" if args.quick else "full"]
    threads = args.threads or len(os.sched_getaffinity(0))
    try:
        import torch  # noqa: F401  (before pynn limits BLAS pools, so the limits reach it too)
    except ImportError:
        pass
    set_threads(threads)
    t0 = time.perf_counter()
    load_start = _loadavg()
    results = {"schema": 1, "quick": bool(args.quick), "repeats": args.repeats,
               "command": "python -m bench " + " ".join(sys.argv[1:]),
               "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "machine": machine_info(threads)}
    peak = bench_peak(sizes["peak_n"], args.repeats)
    results["sgemm_peak"] = peak
    yardstick = peak_gemm(sizes["peak_n"])
    only = re.compile(args.only) if args.only else None

    def wanted(name):
        return only is None or only.search(name) is not None

    results["dense"] = [bench_dense(s, args.repeats, yardstick) for s in sizes["dense"]
                        if wanted("dense")]
    results["conv2d"] = [bench_conv(s, args.repeats, yardstick) for s in sizes["conv"]
                         if wanted("conv2d")]
    results["training"], results["memory"] = {}, {}
    for name in filter(wanted, MODELS):
        train, memory, prof = bench_training(name, sizes, args.repeats, threads, args.quick,
                                             args.profile, args.torch_omp_wait_policy)
        results["training"][name] = train
        if memory:
            results["memory"][name] = memory
        if prof:
            results.setdefault("profile", {})[name] = prof
    results["targets"] = targets(results)
    checks = [r["check"]["passed"] for r in results["dense"] + results["conv2d"]]
    checks += [r["check"]["passed"] for r in results["training"].values()]
    results["all_checks_passed"] = all(checks)
    results["all_targets_met"] = all(t["met"] for t in results["targets"])
    results["wall_s"] = time.perf_counter() - t0
    results["loadavg_1min"] = {"start": load_start, "end": _loadavg()}
    print_report(results)
    path = Path(args.json) if args.json else default_json_path(results["machine"], args.quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {path} ({results['wall_s']:.0f} s)")
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for pynn, BLAS and torch (default: all usable cores)")
    ap.add_argument("--quick", action="store_true", help="toy sizes (a smoke test, not numbers)")
    ap.add_argument("--repeats", type=int, default=7,
                    help="timed runs per kernel and alternated rounds per model (default 7)")
    ap.add_argument("--json", default=None, help="where to write the results (default "
                    "bench/results/cpu-<cpu>-<threads>t.json)")
    ap.add_argument("--only", default=None, metavar="REGEX",
                    help="run only the sections (dense, conv2d) and models (cnn, mlp, resnet, "
                         "func30) whose name matches")
    ap.add_argument("--profile", action="store_true",
                    help="also time every op of a training step in both frameworks")
    ap.add_argument("--torch-omp-wait-policy", default=None, choices=("ACTIVE", "PASSIVE"),
                    help="OMP_WAIT_POLICY for the torch worker (default: unset, torch's own "
                    "default; pynn's worker uses pynn's, PASSIVE unless set in the environment)")
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "FRAMEWORK"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        ap.error("--threads must be >= 1")
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.worker:
        worker(*args.worker, args.threads or 1, args.quick)
        return 0
    results = run(args)
    return 0 if results["all_checks_passed"] else 1


if __name__ == "__main__":
    sys.exit("run the suite as `python -m bench` from the repository root (it imports pynn "
             "before NumPy)")
