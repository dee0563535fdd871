"""``python -m pynn.bench`` (or ``python -m bench``): pynn's benchmark suite, one entry point
for the CPU and every OpenCL device.

What one run measures, in order (every benchmark checks its result before it is timed, and a
failed check is reported and never timed):

1. machine: the CPU (model, cores, SIMD, threads), versions and build flags; the CPU's
   compute peak (``sgemm_peak_gflops``: NumPy's BLAS, one large float32 matmul) and copy
   bandwidth (a threaded NumPy copy of a buffer the size of the elementwise kernels'
   operands), each the best run, measured at the start and the end; per OpenCL device its name,
   driver and measured peaks (pynn's own GEMM, the fastest GEMM that device has here, and a
   device-to-device buffer copy).
2. kernels (bench/kernels.py): GEMM, Conv2D forward / backward-input / backward-weight over
   the issue's shape table, depthwise, pooling, activations, softmax-cross-entropy,
   normalization, LSTM / GRU sequences, every optimizer update and dropout, on each device,
   in GFLOP/s or GB/s and % of the matching peak (compute-bound ops against the GEMM peak,
   memory-bound ones against the copy bandwidth).
3. layer steps (CPU): a Dense and a Conv2D layer's whole training step, timed alternately with
   the yardstick GEMM so that % of peak compares like with like on a box whose speed drifts.
4. models (bench/bench_cpu.py, bench/models_seq.py): MLP, small CNN, residual CNN, LSTM, GRU
   and a text model: training images|sequences/s, then batch-1 and batch-64 predict latency,
   each framework in its own process, rounds alternated within one run (pynn, PyTorch CPU,
   onnxruntime, pynn, ...) at the same thread count; ``ratio`` = pynn / reference speed (above
   1: pynn faster, below 1: a loss, printed as one); peak memory of each worker beside it.
   On an OpenCL device pynn trains there beside PyTorch CUDA where PyTorch sees a GPU.

Output: a Markdown report on stdout, the JSON (``--json``), PNG charts beside it (matplotlib,
the ``bench`` extra), and with ``--compare OLD.json`` the speed-ups and regressions beyond the
run-to-run spread of either run. ``python -m bench.readme RESULTS.json`` turns a results file
into the README's performance section.
"""

import argparse
import itertools
import json
import os
import re
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench import bench_cpu, kernels

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = 3
# Default timed repeats per size, and each kernel timing's minimum length in seconds.
REPEATS = {"full": 7, "quick": 5, "tiny": 2}
MIN_TIMED_S = {"full": 0.05, "quick": 0.02, "tiny": 0.0}
# The copy that sets the bandwidth peak moves as many bytes as one operand of the elementwise
# kernels (kernels.MAPS): the same level of the memory hierarchy as the kernels it rates.
COPY_BYTES = {size: 4 * int(np.prod(shape)) for size, shape in kernels.MAPS.items()}
OPENCL_PEAK_N = {"full": 2048, "quick": 1024, "tiny": 64}
# A change smaller than this is never called a speed-up or a regression, whatever the spread.
MIN_CHANGE = 0.03


# -- arguments ------------------------------------------------------------------------------
def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m pynn.bench",
                                 description=__doc__.split("\n")[0].strip("`"))
    ap.add_argument("--quick", action="store_true",
                    help="real layer sizes, smaller batches, fewer steps (a few minutes)")
    ap.add_argument("--size", choices=("tiny", "quick", "full"), default=None,
                    help=argparse.SUPPRESS)  # tiny: the smoke test's toy sizes
    ap.add_argument("--only", metavar="REGEX", default=None,
                    help="run what matches: 'kernel <family> <op ...>' (families: "
                         f"{', '.join(kernels.FAMILIES)}), 'layer dense|conv2d', "
                         "'model <name>' (" + ", ".join(bench_cpu.MODELS) + ")")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for pynn, BLAS, PyTorch, onnxruntime (default: usable cores)")
    ap.add_argument("--device", default="cpu",
                    help="cpu | opencl (the best device) | opencl:P:D | all (default cpu)")
    ap.add_argument("--json", metavar="PATH", default=None,
                    help="results file (default bench/results/<device>-<cpu>-<threads>t"
                         "[-quick].json)")
    ap.add_argument("--compare", metavar="OLD.json", default=None,
                    help="report speed-ups and regressions against an earlier results file")
    ap.add_argument("--profile", action="store_true",
                    help="per-op milliseconds of a training step, pynn and PyTorch (CPU)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed runs per kernel and alternated rounds per model")
    ap.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    ap.add_argument("--torch-omp-wait-policy", default=None, choices=("ACTIVE", "PASSIVE"),
                    help="OMP_WAIT_POLICY of the PyTorch worker (default: PyTorch's own)")
    ap.add_argument("--torch-omp-spincount", type=int, default=None,
                    help="GOMP_SPINCOUNT of the PyTorch worker (default: libgomp's own; pynn "
                         "sets 1000 for itself)")
    args = ap.parse_args(argv)
    args.size = args.size or ("quick" if args.quick else "full")
    args.repeats = args.repeats or REPEATS[args.size]
    if args.threads is not None and args.threads < 1:
        ap.error("--threads must be >= 1")
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    try:
        args.only_re = re.compile(args.only) if args.only else None
    except re.error as exc:
        ap.error(f"--only: not a regular expression ({exc})")
    return args


def device_specs(arg):
    """--device -> ['cpu', 'opencl:P:D', ...]."""
    arg = arg.strip().lower()
    if arg == "cpu":
        return ["cpu"]
    if arg not in ("all", "opencl") and not arg.startswith("opencl:"):
        raise SystemExit(f"--device: expected cpu, opencl, opencl:P:D or all, got {arg!r}")
    from pynn.backend.opencl import runtime as rt

    try:
        found = [d["index"] for d in rt.devices()]
    except Exception as exc:  # no pyopencl, no ICD  # noqa: BLE001
        if arg == "all":
            print(f"OpenCL: none usable ({exc}); CPU only")
            return ["cpu"]
        raise SystemExit(f"--device {arg}: no OpenCL ({exc})")
    if arg == "all":
        return ["cpu"] + found
    if arg == "opencl":
        return [rt.select_device("opencl")["index"]]
    return [arg]


# -- machine --------------------------------------------------------------------------------
def copy_bandwidth(nbytes, repeats, threads):
    """GB/s (bytes read + written) of a copy of an ``nbytes`` buffer, split
    over ``threads`` threads as pynn's kernels split their work (NumPy's copy releases the
    GIL): STREAM's copy, in NumPy."""
    from concurrent.futures import ThreadPoolExecutor

    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    bounds = np.linspace(0, src.size, threads + 1).astype(int)
    parts = [slice(a, b) for a, b in itertools.pairwise(bounds)]
    with ThreadPoolExecutor(threads) as pool:
        def copy():
            list(pool.map(lambda s: np.copyto(dst[s], src[s]), parts))

        runs = bench_cpu.time_runs(copy, max(repeats, 5))
    return {"bytes": nbytes, "threads": threads, "runs_s": runs,
            "gbs": 2 * nbytes / min(runs) / 1e9,
            "gbs_median": 2 * nbytes / statistics.median(runs) / 1e9}


def cpu_peaks(size, repeats, threads):
    """The CPU's peaks, each the best run: a peak is what the machine can do, and on a shared
    box the median mostly measures the neighbours."""
    peak = bench_cpu.bench_peak(bench_cpu.SIZES[size]["peak_n"], repeats)
    return peak, copy_bandwidth(COPY_BYTES[size], repeats, threads)


def versions():
    """Installed versions, read from the package metadata (importing pyopencl or torch here
    would load an OpenCL ICD or a second OpenMP runtime into the parent)."""
    from importlib import metadata

    out = {}
    for dist in ("torch", "onnxruntime", "onnx", "pyopencl", "matplotlib", "scipy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def build_flags():
    try:
        from pynn import _build_flags as f
    except ImportError:
        return None
    return {k: getattr(f, k) for k in ("OPENMP", "PORTABLE", "DEBUG_CYTHON", "SANITIZE",
                                        "COMPILE_ARGS", "LINK_ARGS", "COMPILER")
            if hasattr(f, k)}


def opencl_device_block(spec, size, repeats):
    """Name, driver and measured peaks of one OpenCL device: pynn's GEMM at n^3 (there is
    no vendor BLAS to ask) and a device-to-device copy."""
    import pyopencl as cl

    from pynn.backend import opencl as ocl
    from pynn.backend.opencl import runtime as rt

    info = ocl.select_device(spec)
    block = {k: info.get(k) for k in ("index", "name", "platform", "vendor", "type",
                                      "driver_version", "compute_units", "global_mem")}
    n = OPENCL_PEAK_N[size]
    gemm = kernels.gemm_cases("tiny", np.random.default_rng(0))[0]
    rng = np.random.default_rng(0)
    gemm.inputs = {"x": rng.standard_normal((n, n), dtype=np.float32),
                   "k": rng.standard_normal((n, n), dtype=np.float32)}
    gemm.work = 2.0 * n ** 3
    sync = rt.queue().finish
    runs = kernels.time_case(gemm, ocl, sync, max(repeats, 3), MIN_TIMED_S[size])
    block["gemm_peak_gflops"] = gemm.work / min(runs) / 1e9
    block["gemm_peak_n"] = n
    nbytes = min(COPY_BYTES[size], info.get("max_alloc") or COPY_BYTES[size])
    src = ocl.asarray(np.ones(nbytes // 4, np.float32), np.float32)
    dst = ocl.empty(src.shape, np.float32)

    def copy():
        cl.enqueue_copy(rt.queue(), dst.data, src.data)

    runs = kernels.time_case(kernels.Case("copy", "", "memory", 0, {}, lambda be, a: copy(),
                                          lambda: ()), ocl, sync, max(repeats, 3), 0.0)
    block["copy_bandwidth_gbs"] = 2 * nbytes / statistics.median(runs) / 1e9
    block["peak_source"] = "pynn GEMM (best run) and enqueue_copy (median)"
    return block


def machine_block(threads, specs, size, repeats):
    m = bench_cpu.machine_info(threads)
    peak, copy = cpu_peaks(size, repeats, threads)
    m["sgemm_peak_gflops"] = peak["gflops_best"]
    m["sgemm_peak"] = peak
    m["copy_bandwidth_gbs"] = copy["gbs"]
    m["copy_bandwidth"] = copy
    m["versions"] = versions()
    m["build_flags"] = build_flags()
    m["opencl_devices"] = []
    for spec in specs:
        if spec != "cpu":
            try:
                m["opencl_devices"].append(opencl_device_block(spec, size, repeats))
            except Exception as exc:  # noqa: BLE001
                m["opencl_devices"].append({"index": spec,
                                            "error": f"{type(exc).__name__}: {exc}"})
    return m


# -- sections -------------------------------------------------------------------------------
def backend_for(spec):
    """(backend module, sync) of 'cpu' or an OpenCL spec."""
    if spec == "cpu":
        from pynn.backend import cpu

        return cpu, (lambda: None)
    from pynn.backend import opencl
    from pynn.backend.opencl import runtime as rt

    opencl.select_device(spec)
    return opencl, (lambda: rt.queue().finish())


def peaks_for(spec, machine):
    if spec == "cpu":
        return {"compute": machine["sgemm_peak_gflops"], "memory": machine["copy_bandwidth_gbs"]}
    dev = next((d for d in machine["opencl_devices"] if d.get("index") == spec), {})
    return {"compute": dev.get("gemm_peak_gflops"), "memory": dev.get("copy_bandwidth_gbs")}


def run_kernels(args, specs, machine, wanted):
    rows = []
    for spec in specs:
        try:
            be, sync = backend_for(spec)
        except Exception as exc:  # noqa: BLE001
            rows.append({"name": "(device)", "device": spec, "family": "-",
                         "check": {"passed": False, "error": f"{type(exc).__name__}: {exc}"}})
            continue
        peaks = peaks_for(spec, machine)
        cuda = None
        if spec != "cpu":
            from bench import bench_opencl

            cuda = bench_opencl.TorchCuda(args.repeats)
            machine.setdefault("torch_cuda", cuda.info)
        for case in kernels.all_cases(args.size, wanted):
            row = kernels.run_case(case, be, sync, args.repeats, MIN_TIMED_S[args.size], peaks)
            row["device"] = spec
            if cuda is not None and cuda.torch is not None and case.cuda_ref and "rate" in row:
                kind, shape, op = case.cuda_ref
                ref = cuda.gemm(*shape) if kind == "gemm" else cuda.conv(shape)
                row["torch_cuda_rate"] = ref[op]
                row["ratio_to_torch_cuda"] = row["rate"] / ref[op]
            rows.append(row)
            print(f"  kernel {spec} {case.name}: {_kernel_cell(row)}", flush=True)
    return rows


def run_layer_steps(args, wanted):
    sizes = bench_cpu.SIZES[args.size]
    yardstick = bench_cpu.peak_gemm(sizes["peak_n"])
    out = {"dense": [], "conv2d": []}
    if wanted("layer dense"):
        out["dense"] = [bench_cpu.bench_dense(s, args.repeats, yardstick)
                        for s in sizes["dense"]]
    if wanted("layer conv2d"):
        out["conv2d"] = [bench_cpu.bench_conv(s, args.repeats, yardstick)
                         for s in sizes["conv"]]
    return out


def run_models(args, specs, threads, wanted):
    sizes = bench_cpu.SIZES[args.size]
    rows, profile = [], {}
    for spec in specs:
        for name in bench_cpu.MODELS:
            if not wanted(f"model {name}"):
                continue
            device = None if spec == "cpu" else spec
            t = time.perf_counter()
            try:
                row, memory, prof = bench_cpu.bench_training(
                    name, sizes, args.repeats, threads, args.size, args.profile,
                    args.torch_omp_wait_policy, device,
                    torch_omp_spincount=args.torch_omp_spincount)
            except Exception as exc:  # a worker that died: report, go on  # noqa: BLE001
                row, memory, prof = ({"model": name, "device": spec, "check": {
                    "passed": False, "error": f"{type(exc).__name__}: {exc}"}}, {}, None)
            row["device"] = spec
            row["memory"] = memory
            row["wall_s"] = time.perf_counter() - t
            rows.append(row)
            if prof:
                profile[name] = prof
            print(f"  model {spec} {name}: {_ratio_cell(row, 'torch', 'training')} "
                  f"({row['wall_s']:.0f} s)", flush=True)
    return rows, profile


# -- compare --------------------------------------------------------------------------------
def _spread(runs):
    return kernels.spread(runs) if runs and len(runs) > 1 else 0.0


def measurements(res):
    """(key, rate, spread): higher is better for every rate."""
    out = {}
    for r in res.get("kernels", []):
        if r.get("rate"):
            out[f"kernel {r['device']} {r['name']}"] = (r["rate"], _spread(r.get("runs_s")))
    for r in res.get("models", []):
        for fw in ("pynn", "torch", "onnxruntime", "torch_cuda"):
            e = r.get(fw) or {}
            key = f"model {r['device']} {r['model']} {fw}"
            if e.get("images_per_s"):
                out[key + " training"] = (e["images_per_s"],
                                          _spread(e.get("rounds_images_per_s")))
            for b in (1, 64):
                ms = e.get(f"predict_batch{b}_ms")
                if ms:
                    out[f"{key} predict batch-{b}"] = (
                        1e3 / ms, _spread(e.get(f"rounds_predict_batch{b}_ms")))
    return out


def compare(old, new):
    """Each measurement in both runs: the change (new / old speed) and a verdict. A change
    counts only beyond the larger run-to-run spread of the two runs (and MIN_CHANGE)."""
    a, b = measurements(old), measurements(new)
    rows = []
    for key in sorted(set(a) & set(b)):
        (ra, sa), (rb, sb) = a[key], b[key]
        change = rb / ra
        noise = max(sa, sb, MIN_CHANGE)
        verdict = ("faster" if change > 1 + noise else
                   "slower" if change < 1 / (1 + noise) else "same")
        rows.append({"what": key, "old": ra, "new": rb, "change": change, "noise": noise,
                     "verdict": verdict})
    return {"old": old.get("date_utc"), "old_command": old.get("command"), "rows": rows,
            "faster": sum(r["verdict"] == "faster" for r in rows),
            "slower": sum(r["verdict"] == "slower" for r in rows),
            "only_old": sorted(set(a) - set(b)), "only_new": sorted(set(b) - set(a))}


# -- report ---------------------------------------------------------------------------------
def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def ratio_text(ratio):
    """A ratio pynn / reference, a loss shown as a loss."""
    if ratio is None:
        return "-"
    return f"{ratio:.2f}x" if ratio >= 1 else f"{ratio:.2f}x (loss)"


def _ratio_cell(row, fw, metric):
    return ratio_text(row.get("ratio", {}).get(fw, {}).get(metric))


def _kernel_cell(row):
    if not row["check"]["passed"]:
        return "CHECK FAILED " + str(row["check"].get("error") or
                                     f"max rel error {row['check'].get('max_rel_error'):.2g}")
    return (f"{row['rate']:.1f} {row['unit']}, {_fmt(row.get('pct_of_peak'), '.0f')}% of "
            f"peak")


def markdown(res, compare_rows=True):
    m = res["machine"]
    head = (f"pynn {m.get('pynn')} on {m.get('cpu_model')}: {m.get('physical_cores')} "
            f"cores / {m.get('logical_cpus')} logical CPUs, {m['threads']} threads; "
            f"sgemm peak {m['sgemm_peak_gflops']:.1f} GFLOP/s (NumPy BLAS), copy "
            f"{m['copy_bandwidth_gbs']:.1f} GB/s; size {res['size']}.")
    lines = [head, ""]
    for d in m.get("opencl_devices", []):
        if "error" in d:
            lines.append(f"- {d['index']}: {d['error']}")
        else:
            lines.append(f"- {d['index']}: {d['name']} ({d['platform']}, driver "
                         f"{d['driver_version']}): GEMM peak {d['gemm_peak_gflops']:.1f} "
                         f"GFLOP/s (pynn, n={d['gemm_peak_n']}), copy "
                         f"{d['copy_bandwidth_gbs']:.1f} GB/s")
    if res.get("kernels"):
        cuda = any("ratio_to_torch_cuda" in r for r in res["kernels"])
        lines += ["", "| kernel | device | check | ms | rate | % of peak |"
                  + (" vs PyTorch CUDA |" if cuda else ""),
                  "|---|---|---|---:|---:|---:|" + ("---:|" if cuda else "")]
        for r in res["kernels"]:
            ok = "ok" if r["check"]["passed"] else "**FAIL**"
            lines.append(f"| {r['name']} | {r['device']} | {ok} | "
                         f"{_fmt(r.get('median_s') and 1e3 * r['median_s'], '.3f')} | "
                         f"{_fmt(r.get('rate'), '.1f')} {r.get('unit', '')} | "
                         f"{_fmt(r.get('pct_of_peak'), '.0f')} |"
                         + (f" {ratio_text(r.get('ratio_to_torch_cuda'))} |" if cuda else ""))
    steps = res.get("layer_steps", {})
    if steps.get("dense") or steps.get("conv2d"):
        lines += ["", "| layer training step (CPU) | check | GFLOP/s | % of peak (paired) |",
                  "|---|---|---:|---:|"]
        for kind in ("dense", "conv2d"):
            for r in steps.get(kind, []):
                shape = ",".join(f"{k}={v}" for k, v in r["shape"].items() if k != "strides")
                lines.append(f"| {kind} {shape} | "
                             f"{'ok' if r['check']['passed'] else '**FAIL**'} | "
                             f"{_fmt(r.get('gflops'), '.1f')} | "
                             f"{_fmt(r.get('pct_of_peak'), '.0f')} |")
    if res.get("models"):
        lines += ["", ("Models: training images (sequences)/s, predict latency in ms; ratio = "
                       "pynn / reference speed (above 1: pynn faster)."), "",
                  ("| model | device | batch | check | pynn /s | ref | ref /s | train ratio "
                   "| b1 ms pynn / ref | b1 ratio | b64 ms pynn / ref | b64 ratio | MiB pynn / "
                   "ref |"), "|---|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in res["models"]:
            ok = "ok" if r["check"]["passed"] else "**FAIL**"
            p = r.get("pynn", {})
            refs = [fw for fw in ("torch", "onnxruntime", "torch_cuda") if fw in r] or [None]
            for fw in refs:
                e = r.get(fw, {}) if fw else {}
                mem = r.get("memory", {})
                lines.append(
                    f"| {r['model']} | {r['device']} | {r.get('batch', '-')} | {ok} | "
                    f"{_fmt(p.get('images_per_s'), '.0f')} | {fw or '-'} | "
                    f"{_fmt(e.get('images_per_s'), '.0f')} | "
                    f"{_ratio_cell(r, fw, 'training')} | "
                    f"{_fmt(p.get('predict_batch1_ms'), '.2f')} / "
                    f"{_fmt(e.get('predict_batch1_ms'), '.2f')} | "
                    f"{_ratio_cell(r, fw, 'predict_batch1')} | "
                    f"{_fmt(p.get('predict_batch64_ms'), '.2f')} / "
                    f"{_fmt(e.get('predict_batch64_ms'), '.2f')} | "
                    f"{_ratio_cell(r, fw, 'predict_batch64')} | "
                    f"{_fmt(mem.get('pynn', {}).get('training_peak_mib'), '.0f')} / "
                    f"{_fmt(mem.get(fw, {}).get('training_peak_mib'), '.0f')} |")
        lines.append("")
        lines.append("(MiB: resident-memory growth of each framework's own process while it "
                     "builds, trains and predicts.)")
    cmp = res.get("comparison")
    if cmp and compare_rows:
        changed = [r for r in cmp["rows"] if r["verdict"] != "same"]
        lines += ["", (f"Compared with {cmp['old']}: {cmp['faster']} faster, {cmp['slower']} "
                       f"slower, {len(cmp['rows']) - len(changed)} within the run-to-run "
                       f"spread.")]
        if changed:
            lines += ["", "| measurement | old | new | change | spread | verdict |",
                      "|---|---:|---:|---:|---:|---|"]
            for r in changed:
                verdict = f"**{r['verdict']}**" if r["verdict"] == "slower" else r["verdict"]
                lines.append(f"| {r['what']} | {r['old']:.4g} | {r['new']:.4g} | "
                             f"{100 * (r['change'] - 1):+.0f}% | {100 * r['noise']:.0f}% | "
                             f"{verdict} |")
    if res.get("busy_warning"):
        lines += ["", f"WARNING: {res['busy_warning']}"]
    return "\n".join(lines)


def default_json_path(machine, size, specs):
    device = "all" if len(specs) > 1 else ("cpu" if specs == ["cpu"] else
                                           "opencl-" + specs[0].replace(":", "-")[7:])
    slug = bench_cpu._cpu_slug(machine.get("cpu_model"), machine.get("core"))
    label = f"{slug}-{machine['threads']}t"
    tail = "" if size == "full" else f"-{size}"
    return ROOT / "bench" / "results" / f"suite-{device}-{label}{tail}.json"


def all_checks(res):
    rows = [r["check"]["passed"] for r in res.get("kernels", [])]
    rows += [r["check"]["passed"] for r in res.get("models", [])]
    steps = res.get("layer_steps", {})
    rows += [r["check"]["passed"] for k in ("dense", "conv2d") for r in steps.get(k, [])]
    return all(rows)


def targets(res):
    """bench_cpu's targets (layer steps at >= 80% of peak, training >= 1.5x PyTorch, memory
    <= PyTorch's, func30's overhead) over the CPU rows."""
    cpu = [r for r in res.get("models", []) if r.get("device") == "cpu"]
    view = dict(res.get("layer_steps", {"dense": [], "conv2d": []}))
    view["training"] = {r["model"]: r for r in cpu}
    view["memory"] = {r["model"]: r["memory"] for r in cpu if r.get("memory")}
    view["profile"] = res.get("profile", {})
    view.setdefault("dense", [])
    view.setdefault("conv2d", [])
    return bench_cpu.targets(view)


def remeasure_cpu_peaks(res, threads, args):
    """Peaks again at the end, the higher of the two kept, and the CPU kernels' % of peak
    against them: a peak caught while a neighbour was busy would flatter every kernel."""
    m = res["machine"]
    peak, copy = cpu_peaks(args.size, args.repeats, threads)
    m["sgemm_peak_end"], m["copy_bandwidth_end"] = peak, copy
    m["sgemm_peak_gflops"] = max(m["sgemm_peak_gflops"], peak["gflops_best"])
    m["copy_bandwidth_gbs"] = max(m["copy_bandwidth_gbs"], copy["gbs"])
    peaks = peaks_for("cpu", m)
    for row in res["kernels"]:
        if row["device"] == "cpu" and row.get("rate"):
            row["pct_of_peak"] = 100.0 * row["rate"] / peaks[row["bound"]]


def reproducing(argv):
    """The command line less --compare (what to compare with is not what was measured)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--compare":
            skip = True
        elif not arg.startswith("--compare="):
            out.append(arg)
    return out


def run(args):
    threads = args.threads or len(os.sched_getaffinity(0))
    specs = device_specs(args.device)
    try:
        import torch  # noqa: F401  (before pynn limits BLAS pools, so the limits reach it too)
    except ImportError:
        pass
    bench_cpu.set_threads(threads)
    t0 = time.perf_counter()
    load_start = bench_cpu._loadavg()

    def wanted(name):
        return args.only_re is None or args.only_re.search(name) is not None

    res = {"schema": SCHEMA, "size": args.size, "quick": args.size != "full",
           "repeats": args.repeats, "devices": specs,
           "command": "python -m pynn.bench " + shlex.join(reproducing(args.argv)),
           "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(f"machine: measuring peaks ({', '.join(specs)})", flush=True)
    res["machine"] = machine_block(threads, specs, args.size, args.repeats)
    print("kernels", flush=True)
    res["kernels"] = run_kernels(args, specs, res["machine"], wanted)
    if "cpu" in specs:
        print("layer steps", flush=True)
        res["layer_steps"] = run_layer_steps(args, wanted)
    print("models", flush=True)
    res["models"], profile = run_models(args, specs, threads, wanted)
    if profile:
        res["profile"] = profile
    if "cpu" in specs:
        remeasure_cpu_peaks(res, threads, args)
    res["targets"] = targets(res)
    res["all_checks_passed"] = all_checks(res)
    res["all_targets_met"] = all(t["met"] for t in res["targets"])
    res["wall_s"] = time.perf_counter() - t0
    res["loadavg_1min"] = {"start": load_start, "end": bench_cpu._loadavg()}
    busy = [v for v in res["loadavg_1min"].values() if v is not None and v > 0.5 + threads]
    if busy:
        res["busy_warning"] = (f"the machine was busy (1-min load average {max(busy):.1f} "
                               f"with {threads} benchmark threads): other processes competed "
                               f"for the cores, so single timings are noisy; the alternated "
                               f"ratios are the numbers to trust.")
    if args.compare:
        res["comparison"] = compare(json.loads(Path(args.compare).read_text()), res)
    return res


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--worker" in argv:  # a model worker process (bench_cpu.Worker)
        return bench_cpu.main(argv)
    args = parse_args(argv)
    args.argv = argv
    res = run(args)
    path = Path(args.json) if args.json else default_json_path(res["machine"], args.size,
                                                               res["devices"])
    path.parent.mkdir(parents=True, exist_ok=True)
    if not args.no_charts:
        from bench import charts

        res["charts"] = charts.write(res, path)
    path.write_text(json.dumps(res, indent=1) + "\n")
    print()
    print(markdown(res))
    print(f"\nwrote {path} ({res['wall_s']:.0f} s)"
          + "".join(f"\nwrote {c}" for c in res.get("charts", [])))
    return 0 if res["all_checks_passed"] else 1
