"""The suite's CPU layer steps and models (``bench/suite.py`` runs them; its model workers
run this file): the yardstick GEMM, Dense and Conv2D training steps, and the models in pynn,
PyTorch and onnxruntime, each framework in its own worker process.

What it measures (every benchmark first checks its result, then times):

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
    # The unified suite's --quick: real layer sizes, smaller batches and fewer steps (a few
    # minutes on 2 cores; the ratios still mean something).
    "quick": {
        "peak_n": 1024,
        "dense": [(256, 512, 512)],
        "conv": [(8, 32, 32, 32, 3, 3, 64, "same")],
        "cnn_batch": 32, "cnn_steps": 4, "resnet_steps": 2,
        "mlp_batch": 64, "mlp_steps": 20,
        "check_steps": 2, "memory_steps": 3,
    },
    # Toy sizes through every code path: the smoke test's (says nothing about speed).
    "tiny": {
        "peak_n": 256,
        "dense": [(32, 48, 40)],
        "conv": [(2, 9, 7, 5, 3, 3, 6, "same")],
        "cnn_batch": 8, "cnn_steps": 2, "resnet_steps": 2,
        "mlp_batch": 16, "mlp_steps": 2,
        "check_steps": 2, "memory_steps": 2,
    },
}
# The sequence models' batch and steps per round (bench/models_seq.py).
SIZES["full"].update(rnn_batch=64, rnn_steps=10, predict_s=0.5)
SIZES["quick"].update(rnn_batch=32, rnn_steps=3, predict_s=0.2)
SIZES["tiny"].update(rnn_batch=4, rnn_steps=2, predict_s=0.01)

CHECK_RTOL = {"dense": 1e-4, "conv": 1e-3, "training": 2e-3}


# -- machine ------------------------------------------------------------------------------
def _cpuinfo():
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    model, cores, flags = None, set(), set()
    phys = family = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and model is None:
            model = value
        elif key == "cpu family" and family is None:
            family = value
        elif key == "physical id":
            phys = value
        elif key == "core id":
            cores.add((phys, value))
        elif key == "flags" and not flags:
            flags = set(value.split())
    simd = [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")
            if f in flags]
    info = {"cpu_model": model, "physical_cores": len(cores) or None, "simd": simd}
    core = _amd_core(model, family, flags)
    if core:
        info["core"] = core
    return info


def _amd_core(model, family, flags):
    """Zen 3 and Zen 4 guests both call themselves "AMD EPYC": family 25 holds both, and only
    Zen 4 has AVX-512. Their results differ enough (AVX-512 and vdpbf16ps or not) to need
    their own files."""
    if not model or "AMD" not in model:
        return None
    if family == "25":
        return "zen4" if "avx512f" in flags else "zen3"
    if family == "26":
        return "zen5"
    return None


def _cpu_slug(model, core=None):
    name = re.sub(r"\((R|TM|tm|r)\)", "", model or "unknown cpu")
    name = re.sub(r"@.*$|\bCPU\b|\bProcessor\b", "", name)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown-cpu"
    return f"{slug}-{core}" if core and core not in slug else slug


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
def _torch_conv_reference(x, k, bias, dy, padding, gate):
    """float64 torch autograd on NCHW copies: (y, dx, dk, db) back in NHWC / (KH,KW,C,F).
    gate: where the float32 layer's relu passed its input (y > 0). The gradient takes the
    layer's own gate: at a pre-activation within rounding of zero the two forwards may fall
    on either side of the kink, and each side's gradient is right for its own forward (one
    such pixel of 524,288 gave a 2.6e-3 relative error in dx against the reference's gate)."""
    import torch

    xt = torch.tensor(x.transpose(0, 3, 1, 2), dtype=torch.float64, requires_grad=True)
    kt = torch.tensor(k.transpose(3, 2, 0, 1), dtype=torch.float64, requires_grad=True)
    bt = torch.tensor(bias, dtype=torch.float64, requires_grad=True)
    zt = torch.nn.functional.conv2d(xt, kt, bt, padding=padding)
    yt = torch.relu(zt)
    dz = np.where(gate, dy, 0).astype(np.float64)
    zt.backward(torch.tensor(dz.transpose(0, 3, 1, 2)))
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
        y_ref, dx_ref, dk_ref, db_ref = _torch_conv_reference(x, k, bias, dy, padding,
                                                              np.asarray(y) > 0)
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


def _load_sibling(stem):
    """bench/<stem>.py by path: the torch worker runs this file outside the bench package."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{stem}",
                                                  Path(__file__).with_name(stem + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SEQ = _load_sibling("models_seq")
MODELS.update(SEQ.MODELS)
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

    if name in SEQ.MODELS:
        return SEQ.pynn_model(name)
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

    if name in SEQ.MODELS or name in ("resnet", "func30"):
        net = (SEQ.torch_net(name) if name in SEQ.MODELS else
               _TorchResNet() if name == "resnet" else _TorchFunc30())
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

    if hasattr(net, "copy_from_pynn"):
        return net.copy_from_pynn(model)
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
    if "vocab" in spec:  # token ids
        x = rng.integers(0, spec["vocab"], (n_batches, batch) + spec["input"], dtype=np.int32)
    else:
        x = rng.random((n_batches, batch) + spec["input"], dtype=np.float32)
    y = rng.integers(0, spec["classes"], (n_batches, batch)).astype(np.int32)
    return x, y


def to_torch_batches(x, y):
    import torch

    if x.ndim == 5:  # (B, N, H, W, C) -> (B, N, C, H, W)
        x = x.transpose(0, 1, 4, 2, 3)
    if x.dtype.kind in "iu":  # token ids: torch's Embedding takes int64
        x = x.astype(np.int64)
    return ([torch.from_numpy(np.ascontiguousarray(xb)) for xb in x],
            [torch.from_numpy(yb.astype(np.int64)) for yb in y])


class PynnRunner:
    def __init__(self, name, x, y, device=None):
        self.model = pynn_model(name)
        self.x, self.y = x, y

    def step(self, i):
        i %= len(self.x)
        return float(self.model.train_on_batch(self.x[i], self.y[i]))

    def predictor(self, x):
        return lambda: self.model.predict_on_batch(x)


class TorchRunner:
    """device: None (the CPU) or 'cuda' (PyTorch beside an OpenCL GPU)."""

    def __init__(self, name, x, y, device=None):
        self.net, self.opt, self.loss_fn = torch_model(name)
        self.x, self.y = to_torch_batches(x, y)
        self.device = device
        if device:
            self.net.to(device)
            self.opt = type(self.opt)(self.net.parameters(), **self.opt.defaults)
            self.x = [v.to(device) for v in self.x]
            self.y = [v.to(device) for v in self.y]

    def step(self, i):
        i %= len(self.x)
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.net(self.x[i]), self.y[i])
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def predictor(self, x):
        import torch

        xt = to_torch_batches(x[None], np.zeros((1, len(x)), np.int32))[0][0]
        if self.device:
            xt = xt.to(self.device)

        def predict():
            self.net.eval()
            with torch.inference_mode():
                out = self.net(xt).softmax(-1)
                if str(self.device).startswith("cuda"):
                    torch.cuda.synchronize()
            self.net.train()
            return out

        return predict


class OnnxRunner:
    """onnxruntime inference of the torch twin, exported with torch.onnx (offline, the
    TorchScript exporter), on the CPU execution provider with the suite's thread count."""

    def __init__(self, name, x, y, device=None, threads=1):
        import io
        import warnings

        import onnxruntime as ort
        import torch

        net = torch_model(name)[0].eval()
        example = to_torch_batches(x[:1], y[:1])[0][0]
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (example,), buf, dynamo=False, input_names=["x"],
                              output_names=["logits"], dynamic_axes={"x": {0: "n"}})
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(buf.getvalue(), opts,
                                            providers=["CPUExecutionProvider"])
        self.version = ort.__version__

    def step(self, i):
        raise RuntimeError("onnxruntime is an inference reference: no training rounds")

    def predictor(self, x):
        # The torch twin's layout (NCHW, int64 token ids).
        feed = {"x": to_torch_batches(x[None], np.zeros((1, len(x)), np.int32))[0][0].numpy()}
        return lambda: self.session.run(None, feed)


def latency_ms(fn, min_s):
    """Median milliseconds of single calls, after two warm-up calls, over about min_s."""
    fn()
    fn()
    times, start = [], time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < min_s:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if len(times) >= 2000:
            break
    return 1e3 * statistics.median(times)


def check_training(name, sizes, device=None):
    """Same weights, same batches: pynn's (on ``device``, an OpenCL spec, or the CPU) and
    torch CPU's losses agree step after step."""
    import pynn
    from pynn import backend

    pynn.utils.set_random_seed(0)
    batch = sizes[MODELS[name]["batch"]]
    steps = sizes["check_steps"]
    x, y = make_data(name, batch, steps, seed=4)
    before = backend.device()
    try:
        if device:
            pynn.set_device(device)
        p = PynnRunner(name, x, y)
        t = TorchRunner(name, x, y)
        copy_weights_to_torch(p.model, t.net)
        lp = [p.step(i) for i in range(steps)]
    finally:
        pynn.set_device(before)
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


RUNNERS = {"pynn": "PynnRunner", "torch": "TorchRunner", "torch_cuda": "TorchRunner",
           "onnxruntime": "OnnxRunner"}


def worker(name, framework, threads, size, device=None):
    """One framework, one model, in its own process (``--worker``): the parent alternates
    rounds between the workers through stdin/stdout, one JSON line each.

    Own processes keep each framework's OpenMP runtime in its default state (pynn sets
    OMP_WAIT_POLICY=PASSIVE when imported, which would slow torch by ~20% if they shared a
    process), and give each a clean memory high-water mark: the baseline is taken after imports
    and data, so the peak counts the model, optimizer state, activations and workspaces.
    framework: pynn (on ``device``, an OpenCL spec, or the CPU), torch, torch_cuda or
    onnxruntime (inference only). Commands: ``round`` -> images/s, ``predict`` -> batch-1 and
    batch-64 latency, ``memory`` -> RSS numbers, ``profile``, ``quit``.
    """
    sizes = SIZES[size]
    if framework.startswith("torch") or framework == "onnxruntime":
        import torch

        torch.set_num_threads(threads)
    else:
        import pynn

        pynn.set_num_threads(threads)
        if device:
            pynn.set_device(device)
    runner_cls = globals()[RUNNERS[framework]]
    extra = {"threads": threads} if framework == "onnxruntime" else {}
    torch_device = "cuda" if framework == "torch_cuda" else None
    batch, steps = sizes[MODELS[name]["batch"]], sizes[MODELS[name]["steps"]]
    x, y = make_data(name, batch, 4)
    px, _ = make_data(name, 64, 1, seed=5)
    import gc

    gc.collect()
    base = _proc_status_kib("VmRSS")
    reset = _reset_peak_rss()
    runner = runner_cls(name, x, y, torch_device, **extra)
    trains = framework != "onnxruntime"
    if trains:
        for i in range(3):  # the first steps allocate optimizer slots and workspaces
            runner.step(i)

    def reply(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    reply({"ready": True, "pid": os.getpid(),
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
           "gomp_spincount": os.environ.get("GOMP_SPINCOUNT")})
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "round":
            t = time.perf_counter()
            for i in range(steps):
                runner.step(i)
            reply({"images_per_s": steps * batch / (time.perf_counter() - t)})
        elif cmd == "predict":
            reply({f"batch{b}_ms": latency_ms(runner.predictor(px[0][:b]), sizes["predict_s"])
                   for b in (1, 64)})
        elif cmd == "memory":
            hwm = _proc_status_kib("VmHWM")
            reply({"baseline_rss_mib": base / 1024, "peak_rss_mib": hwm / 1024,
                   "training_peak_mib": (hwm - base) / 1024, "hwm_reset": reset})
        elif cmd == "profile":
            # A fresh model: the per-op times should not depend on how long the rounds ran
            # (Adam's moments of dead units decay into denormals after ~700 steps).
            runner = runner_cls(name, x, y, torch_device, **extra)
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

    def __init__(self, name, framework, threads, size, torch_omp_wait_policy=None,
                 device=None, torch_omp_spincount=None):
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
            # pynn's import (in this parent) set its own spin count; PyTorch keeps libgomp's
            # default unless asked for another.
            if torch_omp_spincount is None:
                env.pop("GOMP_SPINCOUNT", None)
            else:
                env["GOMP_SPINCOUNT"] = str(torch_omp_spincount)
        cmd += ["--worker", name, framework, "--threads", str(threads), "--size", size]
        cmd += ["--device", device] if device else []
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


def _available(module):
    import importlib.util

    return importlib.util.find_spec(module) is not None


def reference_frameworks(device=None):
    """The references beside pynn: PyTorch CPU and onnxruntime beside the CPU; PyTorch CUDA
    beside an OpenCL device when PyTorch sees a GPU (checked in a subprocess: importing torch
    here would fix the parent's OpenMP runtime)."""
    if not _available("torch"):
        return []
    if device is None:
        return ["torch"] + (["onnxruntime"] if _available("onnxruntime") else [])
    probe = subprocess.run([sys.executable, "-c",
                            "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True, timeout=300, check=False)
    return ["torch_cuda"] if probe.stdout.strip() == "True" else []


def bench_training(name, sizes, repeats, threads, size, profile=False,
                   torch_omp_wait_policy=None, device=None, predict=True,
                   torch_omp_spincount=None):
    """Training images/s of pynn (on the CPU or the OpenCL ``device``) beside its references,
    alternated round by round in one run, then batch-1 / batch-64 predict latency the same
    way, then each worker's memory. ``ratio`` is pynn / reference: images/s for training
    (above 1: pynn faster), and reference / pynn for latency (above 1: pynn faster too)."""
    batch = sizes[MODELS[name]["batch"]]
    steps = sizes[MODELS[name]["steps"]]
    result = {"model": name, "batch": batch, "steps_per_round": steps, "rounds": repeats,
              "device": device or "cpu",
              "torch_reference_images_per_s": MODELS[name]["torch_ref_img_s"]}
    refs = reference_frameworks(device)
    if "torch" not in refs and device is None:
        result["check"] = {"passed": False, "error": "torch is not installed"}
        return result, {}, None
    result["check"] = check_training(name, sizes, device)
    if not result["check"]["passed"]:
        return result, {}, None
    frameworks = ["pynn"] + refs
    trainers = [fw for fw in frameworks if fw != "onnxruntime"]
    workers = {}
    try:
        for fw in frameworks:
            workers[fw] = Worker(name, fw, threads, size, torch_omp_wait_policy,
                                 device if fw == "pynn" else None, torch_omp_spincount)
        for w in workers.values():  # all start (import, warm up) at once, then take turns
            w.wait_ready()
        rates = {fw: [] for fw in trainers}
        for _ in range(repeats):
            for fw in trainers:  # alternated: pynn, torch, pynn, torch, ...
                rates[fw].append(workers[fw].ask("round")["images_per_s"])
        latency = {fw: [] for fw in frameworks}
        for _ in range(repeats if predict else 0):
            for fw in frameworks:
                latency[fw].append(workers[fw].ask("predict"))
        memory = {fw: w.ask("memory") for fw, w in workers.items()}
        prof = ({fw: workers[fw].ask("profile") for fw in ("pynn", "torch") if fw in workers}
                if profile and device is None else None)
    finally:
        for w in workers.values():
            w.close()
    for fw in frameworks:
        entry = {"omp_wait_policy": workers[fw].info.get("omp_wait_policy"),
                 "gomp_spincount": workers[fw].info.get("gomp_spincount")}
        if fw in rates:
            rs = rates[fw]
            entry.update(images_per_s=statistics.median(rs), rounds_images_per_s=rs,
                         ms_per_step=1e3 * batch / statistics.median(rs))
        for b in (1, 64):
            runs = [r[f"batch{b}_ms"] for r in latency[fw]]
            if runs:
                entry[f"predict_batch{b}_ms"] = statistics.median(runs)
                entry[f"rounds_predict_batch{b}_ms"] = runs
        result[fw] = entry
    for fw in refs:
        ratio = {}
        if fw in rates:
            ratio["training"] = result["pynn"]["images_per_s"] / result[fw]["images_per_s"]
        for b in (1, 64):
            if f"predict_batch{b}_ms" in result[fw]:
                ratio[f"predict_batch{b}"] = (result[fw][f"predict_batch{b}_ms"]
                                              / result["pynn"][f"predict_batch{b}_ms"])
        result.setdefault("ratio", {})[fw] = ratio
    if "torch" in result:
        result["speedup_vs_torch"] = result["ratio"]["torch"]["training"]
    return result, memory, prof


# -- profile: per-op time per training step (run inside the workers) ---------------------------
def profile_pynn(runner, steps):
    """Wraps every op of pynn.backend.cpu (layers look them up at call time) and sums the
    wall time per (op, first array shape). The wrapper's own cost outside its timer (the
    call, the shape and key, the dict) is no part of a plain step: it is measured on a
    no-op with an array argument and taken off the time outside ops ("outside_ops_ms";
    "outside_ops_raw_ms" keeps it, "profiler_overhead_ms" says how much it was)."""
    import numpy as np

    import pynn.backend.cpu as be
    from pynn.backend import api

    totals = {}
    calls = [0]
    originals = {op: getattr(be, op) for op in api.OPS if hasattr(be, op)}

    def wrap(op, fn, into):
        def timed(*args, **kwargs):
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            dt = time.perf_counter() - t
            shape = next((tuple(a.shape) for a in args if hasattr(a, "shape")), ())
            key = f"{op} {shape}"
            into[key] = into.get(key, 0.0) + dt
            calls[0] += 1
            return out
        return timed

    # The wrapper's cost per call outside its timer: a wrapped no-op's wall time less the
    # time the wrapper itself records for it (medians of several runs).
    probe, arg, n = {}, np.zeros((2, 2), np.float32), 20000
    noop = wrap("noop", lambda a: a, probe)
    per_call = []
    for _ in range(5):
        probe.clear()
        t = time.perf_counter()
        for _ in range(n):
            noop(arg)
        per_call.append((time.perf_counter() - t - sum(probe.values())) / n)
    overhead_s = sorted(per_call)[len(per_call) // 2]
    calls[0] = 0

    t = time.perf_counter()
    for i in range(steps):
        runner.step(i)
    plain_s = (time.perf_counter() - t) / steps
    for op, fn in originals.items():
        setattr(be, op, wrap(op, fn, totals))
    try:
        t = time.perf_counter()
        for i in range(steps):
            runner.step(i)
        step_s = (time.perf_counter() - t) / steps
    finally:
        for op, fn in originals.items():
            setattr(be, op, fn)
    ops = {k: 1e3 * v / steps for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}
    raw = 1e3 * step_s - sum(ops.values())
    profiler = 1e3 * overhead_s * calls[0] / steps
    return {"ms_per_step": 1e3 * plain_s, "ms_per_step_profiled": 1e3 * step_s,
            "ops_ms": ops, "ops_per_step": calls[0] / steps,
            "outside_ops_ms": raw - profiler, "outside_ops_raw_ms": raw,
            "profiler_overhead_ms": profiler}


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
        # Of the step without the profiler's own cost.
        share = func30["outside_ops_ms"] / (func30["ms_per_step_profiled"]
                                            - func30.get("profiler_overhead_ms", 0.0))
        out.append({"name": "func30 (30-layer functional) framework overhead, share of a step",
                    "value": share, "target": "< 0.1", "met": share < 0.1})
    for name, r in results["memory"].items():
        p = r.get("pynn", {}).get("training_peak_mib")
        t = r.get("torch", {}).get("training_peak_mib")
        out.append({"name": f"{name} training peak memory vs torch",
                    "value": None if p is None or t is None else p / max(t, 1e-9),
                    "target": "<= 1x", "met": p is not None and t is not None and p <= t})
    return out


def _loadavg():
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def main(argv=None):
    """A model worker (``--worker MODEL FRAMEWORK``); anything else is the unified suite,
    ``bench/suite.py`` (this file's old entry point)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--worker" not in argv:
        from bench import suite

        return suite.main(argv)
    ap = argparse.ArgumentParser(prog="bench_cpu worker")
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "FRAMEWORK"), required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", choices=tuple(SIZES), default="full")
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    worker(*args.worker, args.threads, args.size, args.device)
    return 0


if __name__ == "__main__":
    sys.exit("run the suite as `python -m pynn.bench` (or `python -m bench`) from the "
             "repository root (it imports pynn before NumPy)")
