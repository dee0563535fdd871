"""The GPU run in one command: ``bench/gpu/run.sh OUT_DIR`` (which runs this file).

Steps, each printed with what it does and how long it took, each under a timeout drawn from
one overall budget (``--budget``, 450 s), each going on when an earlier one failed:

  machine  Python, nvidia-smi, PyTorch and CUDA as this machine has them
  wheels   pip-installs (--no-index --no-deps --target) the wheels of bench/gpu/wheels and
           .whl whose distributions this Python lacks (pyopencl, pytools, ...)
  icd      finds NVIDIA's OpenCL library (libnvidia-opencl.so.1) and, unless a vendor file
           already names it, registers it for the ICD loader in an OCL_ICD_VENDORS folder
           under the work folder (no writes outside OUT_DIR and the work folder)
  build    python setup.py build_ext --inplace (pynn must import to list devices)
  devices  lists the OpenCL devices and picks the NVIDIA GPU (``--pocl``: the PoCL CPU device)
  tests    PYNN_CL_DEVICE=opencl:P:D python -m pytest -m opencl on that device
  bench    bench/bench_opencl.py on that device beside PyTorch CUDA, JSON into OUT_DIR
  suite    the unified suite's OpenCL part (``python -m bench --device opencl:P:D``): every
           kernel family checked and timed against the device's peaks, CNN and LSTM training
           beside PyTorch CUDA, JSON and charts into OUT_DIR
  summary  SGEMM 4096^3 % of cuBLAS, CNN / LSTM training ratio to PyTorch, warm start

OUT_DIR receives ``run.log`` (everything printed), ``opencl-<device>.json`` (the bench
JSON plus a ``gpu_run`` record of the steps and the summary) and ``suite-<device>.json`` with
its charts (the unified suite's results).
``--pocl`` runs the same steps on PoCL's CPU device (the smoke test and a dry run here);
``--skip`` leaves steps out, ``--bench-args`` replaces the bench's size options.
"""

import argparse
import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
STEPS = ("machine", "wheels", "icd", "build", "devices", "tests", "bench", "suite",
         "summary")
# (most seconds, fewest seconds kept for it while earlier steps run; the machine step's
# `import torch` gets its most less 20: a CPU machine's PoCL dry run under a loaded test
# run took 10.7 s for it)
LIMITS = {"machine": (45, 5), "wheels": (60, 10), "icd": (40, 5), "devices": (45, 10),
          "build": (150, 60), "tests": (150, 45), "bench": (300, 150), "suite": (150, 40),
          "summary": (10, 2)}
NVIDIA_OPENCL = "libnvidia-opencl.so.1"
LIBRARY_DIRS = ("/usr/local/nvidia/lib64", "/usr/local/nvidia/lib", "/usr/lib/x86_64-linux-gnu",
                "/usr/lib64", "/usr/lib", "/lib/x86_64-linux-gnu", "/lib64",
                "/usr/local/cuda/compat", "/usr/local/cuda/lib64", "/usr/lib/wsl/lib")
VENDOR_DIRS = ("/etc/OpenCL/vendors", "/usr/local/nvidia/etc/OpenCL/vendors")
FIND_ROOTS = ("/usr", "/opt", "/lib", "/lib64")
# The bench on a GPU: GEMM up to 4096^3, the tuner at 2048^3, 50 timed training steps.
GPU_BENCH_ARGS = "--tune --tune-size 2048 --tune-budget 45 --train-steps 50 --repeat 5"
POCL_BENCH_ARGS = "--quick --tune --tune-budget 20 --train-steps 2 --repeat 2"
# The unified suite on the device: every kernel family, then the CNN and LSTM training.
SUITE_ARGS = "--quick --repeats 3 --only 'kernel|model (cnn|lstm)'"
# The PoCL dry run checks the driver; it runs the suite only when given --suite-args.
POCL_SUITE_ARGS = None
TARGETS = {"sgemm_pct_of_cublas": 70.0, "cnn_ratio": 0.7, "lstm_ratio": 0.7}


class Run:
    """Steps with timeouts from one budget; everything printed also goes to OUT_DIR/run.log."""

    def __init__(self, out_dir, budget_s):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = open(self.out / "run.log", "w", buffering=1)
        self.deadline = time.monotonic() + budget_s
        self.started = time.monotonic()
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.steps = {}  # name -> {"status", "seconds", "note"}

    def say(self, text=""):
        print(text, flush=True)
        self.log.write(text + "\n")

    def timeout(self, name):
        """This step's share: its limit, less what the later steps need at the least."""
        later = STEPS[STEPS.index(name) + 1:]
        left = self.deadline - time.monotonic() - sum(LIMITS[s][1] for s in later)
        return max(LIMITS[name][1], min(LIMITS[name][0], left))

    def step(self, name, what, fn):
        """Run ``fn(timeout_s)`` -> (status, note); status is 'ok', 'failed', 'skipped'."""
        limit = self.timeout(name)
        self.say(f"\n=== [{name}] {what} (limit {limit:.0f} s, "
                 f"{time.monotonic() - self.started:.0f} s into the run)")
        t = time.monotonic()
        try:
            status, note = fn(limit)
        except Exception as exc:  # a step's bug must not stop the run  # noqa: BLE001
            status, note = "failed", f"{type(exc).__name__}: {exc}"
        seconds = time.monotonic() - t
        self.steps[name] = {"status": status, "seconds": round(seconds, 1), "note": note}
        self.say(f"=== [{name}] {status.upper()} in {seconds:.1f} s"
                 + (f": {note}" if note else ""))
        return status == "ok"

    def command(self, argv, timeout_s, env=None, cwd=ROOT, quiet=False):
        """Run ``argv``, echoing its output unless ``quiet``; returns (exit code or 'timeout',
        output text)."""
        self.say("$ " + " ".join(shlex.quote(str(a)) for a in argv))
        lines = []
        try:
            proc = subprocess.Popen([str(a) for a in argv], cwd=cwd, env=env or self.env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    errors="replace", start_new_session=True)
        except OSError as exc:
            self.say(f"cannot start {argv[0]}: {exc}")
            return 127, str(exc)

        def pump():
            for line in proc.stdout:
                lines.append(line)
                if not quiet:
                    self.say(line.rstrip("\n"))

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.say(f"!!! time limit of {timeout_s:.0f} s reached: stopping {argv[0]} "
                     f"(process group {proc.pid})")
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=5)
                    break
                except subprocess.TimeoutExpired:
                    continue
            code = "timeout"
        reader.join(timeout=5)
        return code, "".join(lines)


# -- steps ------------------------------------------------------------------------------------


def step_machine(run, py, state, limit):
    run.say(f"python {sys.version.split()[0]} at {py}; {os.cpu_count()} CPUs; repo {ROOT}")
    if shutil.which("nvidia-smi"):
        run.command(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                     "--format=csv"], min(20, limit))
    else:
        run.say("nvidia-smi: not on the PATH")
    code, out = run.command([py, "-c", "import torch; print('torch', torch.__version__, 'cuda', "
                             "torch.version.cuda, 'available', torch.cuda.is_available()); "
                             "print('GPU', torch.cuda.get_device_name(0) "
                             "if torch.cuda.is_available() else '')"], max(5, limit - 20))
    gpu = [line[4:].strip() for line in out.splitlines() if line.startswith("GPU ")]
    if gpu and gpu[0]:
        state["gpu_name"] = gpu[0]
    return ("ok" if code == 0 else "failed"), ("" if code == 0 else "torch not usable")


def wheel_dist(path):
    """The normalized distribution name of a wheel file."""
    return re.sub(r"[-_.]+", "-", Path(path).name.split("-")[0]).lower()


def step_wheels(run, py, wheel_dirs, site, limit):
    wheels = sorted({str(p) for d in wheel_dirs for p in glob.glob(str(Path(d) / "*.whl"))})
    if not wheels:
        run.say(f"no wheels in {', '.join(map(str, wheel_dirs))}")
    code, out = run.command([py, "-c", "import importlib.metadata as m, re; print(' '.join(sorted("
                             "re.sub(r'[-_.]+', '-', d.metadata['Name']).lower() "
                             "for d in m.distributions() if d.metadata['Name'])))"], 30, quiet=True)
    have = set(out.split()) if code == 0 else set()
    missing = [w for w in wheels if wheel_dist(w) not in have]
    for w in wheels:
        if w not in missing:
            run.say(f"already installed, skipped: {Path(w).name}")
    pip_code = 0
    if missing:
        site.mkdir(parents=True, exist_ok=True)
        pip_code, _ = run.command([py, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                                   "--no-compile", "--no-cache-dir", "--disable-pip-version-check",
                                   "--upgrade", "--target", site, *missing], limit - 10)
    pythonpath = [str(site)] + [p for p in run.env.get("PYTHONPATH", "").split(":") if p]
    run.env["PYTHONPATH"] = ":".join(dict.fromkeys(pythonpath))
    code, out = run.command([py, "-c", "import pyopencl; print('pyopencl', pyopencl.VERSION_TEXT,"
                             " 'from', pyopencl.__file__)"], 30)
    if code != 0:
        return "failed", ("pyopencl is not importable: put its wheel and its dependencies' "
                          "into bench/gpu/wheels (bench/gpu/README.md)"
                          + (f"; pip install exited {pip_code}" if pip_code else ""))
    if pip_code:
        return "failed", f"pip install exited {pip_code} (pyopencl imports all the same)"
    return "ok", f"installed {len(missing)} wheel(s)"


def vendor_files():
    """Existing .icd vendor files: the system folders and OCL_ICD_VENDORS."""
    dirs = list(VENDOR_DIRS)
    if os.environ.get("OCL_ICD_VENDORS"):
        dirs.append(os.environ["OCL_ICD_VENDORS"])
    return [f for d in dirs for f in sorted(glob.glob(os.path.join(d, "*.icd")))]


def find_nvidia_opencl(run, limit):
    """Paths of libnvidia-opencl: LD_LIBRARY_PATH, the usual folders, ldconfig, then find."""
    dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    dirs += list(LIBRARY_DIRS)
    found = [os.path.join(d, NVIDIA_OPENCL) for d in dirs
             if os.path.exists(os.path.join(d, NVIDIA_OPENCL))]
    if not found:
        found = [p for d in dirs
                 for p in sorted(glob.glob(os.path.join(d, "libnvidia-opencl.so*")))]
    if not found and shutil.which("ldconfig"):
        code, out = run.command(["ldconfig", "-p"], 15, quiet=True)
        found = [line.split("=>")[-1].strip() for line in out.splitlines()
                 if "libnvidia-opencl.so" in line and "=>" in line]
    if not found and shutil.which("find"):
        roots = [r for r in FIND_ROOTS if os.path.isdir(r)]
        code, out = run.command(["find", *roots, "-maxdepth", "6", "-name",
                                 "libnvidia-opencl.so*"], max(5, limit - 20))
        found = [line for line in out.splitlines() if line.startswith("/")
                 and "libnvidia-opencl.so" in line and "Permission" not in line]
    return list(dict.fromkeys(found))


def add_library_path(run, lib):
    """The library's own dependencies (libcuda.so.1, ...) live beside it."""
    ld_path = [os.path.dirname(lib)] + run.env.get("LD_LIBRARY_PATH", "").split(":")
    run.env["LD_LIBRARY_PATH"] = ":".join(dict.fromkeys(p for p in ld_path if p))


def step_icd(run, work, limit):
    existing = vendor_files()
    for f in existing:
        try:
            run.say(f"vendor file {f}: {Path(f).read_text().strip()}")
        except OSError as exc:
            run.say(f"vendor file {f}: unreadable ({exc})")
    named = [f for f in existing
             if os.path.isfile(f) and "nvidia" in Path(f).read_text(errors="replace").lower()]
    libs = find_nvidia_opencl(run, limit)
    if named and libs:
        add_library_path(run, libs[0])
        return "ok", f"{named[0]} already names NVIDIA's library ({libs[0]})"
    if named:
        return "failed", (f"{named[0]} names NVIDIA's library but {NVIDIA_OPENCL} is nowhere "
                          "to be found: the driver's OpenCL part is not installed here")
    if not libs:
        return "failed", (f"{NVIDIA_OPENCL} not found (looked in LD_LIBRARY_PATH, "
                          f"{', '.join(LIBRARY_DIRS)}, ldconfig -p, find under "
                          f"{', '.join(FIND_ROOTS)}): this driver installation has no OpenCL "
                          "part; the OpenCL steps will find no NVIDIA device")
    lib = libs[0]
    run.say(f"found {', '.join(libs)}; using {lib}")
    if shutil.which("ldd"):
        code, out = run.command(["ldd", lib], 15)
        missing = [line.strip() for line in out.splitlines() if "not found" in line]
        if missing:
            run.say("WARNING: the library's own dependencies are missing: " + "; ".join(missing))
    vendors = work / "vendors"
    vendors.mkdir(parents=True, exist_ok=True)
    for f in existing:  # OCL_ICD_VENDORS replaces /etc/OpenCL/vendors: keep what it listed
        if Path(f).resolve().parent != vendors.resolve():
            shutil.copy(f, vendors / Path(f).name)
    (vendors / "nvidia.icd").write_text(lib + "\n")
    run.env["OCL_ICD_VENDORS"] = str(vendors)
    add_library_path(run, lib)
    return "ok", f"registered {lib} in OCL_ICD_VENDORS={vendors}"


PROBE = """
import json
from pynn.backend.opencl import runtime as rt
print("DEVICES " + json.dumps(rt.devices()))
"""


def step_devices(run, py, pocl, state, limit):
    code, out = run.command([py, "-c", PROBE], limit)
    line = next((ln for ln in out.splitlines() if ln.startswith("DEVICES ")), None)
    if code != 0 or line is None:
        return "failed", "could not list OpenCL devices (see the error above)"
    devs = json.loads(line[len("DEVICES "):])
    for d in devs:
        run.say(f"  {d['index']}: {d['name']} [{d['type']}, {d['vendor']}] {d['platform']}, "
                f"driver {d['driver_version']}, {d['compute_units']} CUs, "
                f"{d['global_mem'] / 2**30:.1f} GiB")
    want = (lambda d: d["vendor"] == "pocl") if pocl else (
        lambda d: d["vendor"] == "nvidia" and d["type"] == "gpu")
    chosen = [d for d in devs if want(d)]
    if not chosen:
        return "failed", ("no " + ("PoCL" if pocl else "NVIDIA GPU") + " OpenCL device among "
                          f"{len(devs)} device(s)")
    state["device"] = chosen[0]
    return "ok", f"{chosen[0]['index']} {chosen[0]['name']}"


def step_build(run, py, limit):
    jobs = str(min(16, os.cpu_count() or 1))
    code, out = run.command([py, "-c", "import os, sysconfig; h = os.path.join("
                             "sysconfig.get_paths()['include'], 'Python.h'); "
                             "print('Python.h', h, os.path.isfile(h))"], 30)
    if out.strip().endswith("False"):
        run.say("WARNING: this Python has no Python.h: the C extensions cannot compile")
    for tool in ("gcc", "cc"):
        if shutil.which(tool):
            break
    else:
        run.say("WARNING: no C compiler (gcc or cc) on the PATH")
    code, _ = run.command([py, "setup.py", "-q", "build_ext", "--inplace", "-j", jobs], limit)
    if code != 0:
        return "failed", f"build exited {code}"
    # The kernels' package pynn.opencl_kernels is opencl/ mapped by an install (pyproject's
    # package-dir); an in-place build has no such mapping, so link it into the checkout.
    code, _ = run.command([py, "-c", "import pynn.opencl_kernels"], 30)
    if code == 0:
        return "ok", ""
    link = ROOT / "pynn" / "opencl_kernels"
    try:
        if link.is_symlink():
            link.unlink()
        link.symlink_to(Path("..") / "opencl", target_is_directory=True)
    except OSError:
        shutil.copytree(ROOT / "opencl", link, dirs_exist_ok=True)
    run.say(f"linked {link} -> opencl/ (the package an install would map)")
    code, _ = run.command([py, "-c", "import pynn.opencl_kernels"], 30)
    return ("ok", "linked pynn/opencl_kernels") if code == 0 else (
        "failed", "pynn.opencl_kernels is still not importable")


def step_tests(run, py, spec, pytest_args, limit):
    argv = [py, "-m", "pytest", "-m", "opencl", "-q", "--maxfail=5"]
    if run.command([py, "-c", "import xdist"], 20)[0] == 0:
        argv += ["-n", str(min(8, os.cpu_count() or 1))]
    if run.command([py, "-c", "import pytest_timeout"], 20)[0] == 0:
        argv += ["--timeout", "120"]
    argv += pytest_args
    env = dict(run.env, PYNN_CL_DEVICE=spec)
    code, out = run.command(argv, limit - 2, env=env)
    tail = [ln for ln in out.splitlines() if re.search(r"\d+ (passed|failed|error)", ln)]
    note = tail[-1].strip("= ") if tail else f"pytest exited {code}"
    if code == "timeout":  # no pytest summary: read the progress lines
        progress = [ln for ln in out.splitlines() if re.match(r"^[.FEsxX]+\s*\[\s*\d+%\]", ln)]
        done = re.search(r"(\d+)%", progress[-1]).group(1) if progress else "0"
        failed = sum(ln.split("[")[0].count("F") + ln.split("[")[0].count("E")
                     for ln in progress)
        note = f"time limit reached {done}% into the tests, {failed} failed or errored so far"
    return ("ok" if code == 0 else "failed"), note


def step_bench(run, py, spec, json_path, bench_args, limit):
    argv = [py, "bench/bench_opencl.py", "--device", spec or "none", "--out", json_path,
            "--start-timeout", str(int(max(30, limit / 4))), *shlex.split(bench_args)]
    code, _ = run.command(argv, limit)
    if code == 0:
        return "ok", ""
    if code == 3:
        return "failed", "no OpenCL device: the JSON holds the PyTorch CUDA references alone"
    return "failed", f"bench exited {code} (what it measured is in the JSON)"


def step_suite(run, py, spec, json_path, suite_args, limit):
    if not spec:
        return "skipped", "no OpenCL device"
    if suite_args is None:
        return "skipped", "--pocl: the dry run runs the suite only with --suite-args"
    argv = [py, "-m", "bench", "--device", spec, "--json", str(json_path),
            *shlex.split(suite_args)]
    code, _ = run.command(argv, limit)
    if code == 0:
        return "ok", ""
    return "failed", f"suite exited {code} (what it measured is in the JSON)"


def suite_lines(path):
    """The suite's headline: its checks, GEMM % of the device peak, model ratios."""
    if not Path(path).is_file():
        return ["suite: no results"]
    doc = json.loads(Path(path).read_text())
    kernels = doc.get("kernels", [])
    failed = [k["name"] for k in kernels if not k["check"]["passed"]]
    lines = [f"suite: {len(kernels)} kernels, {len(failed)} failed their check"
             + (f" ({', '.join(failed[:5])})" if failed else "")]
    for r in doc.get("models", []):
        ratio = (r.get("ratio") or {}).get("torch_cuda", {}).get("training")
        lines.append(f"suite {r['model']} on {r['device']}: "
                     f"{(r.get('pynn') or {}).get('images_per_s', 0):.0f} images/s"
                     + (f", {ratio:.2f}x PyTorch CUDA" if ratio else ""))
    return lines


def summarize(doc):
    """The headline numbers of a bench JSON, each None where it was not measured."""
    out = {"sgemm_4096_pct_of_cublas": None, "sgemm_4096_gflops": None,
           "cublas_4096_gflops": None, "cnn_ratio": None, "lstm_ratio": None,
           "warm_start_compiled_nothing": None, "tuned_tiles": None}
    dev = (doc.get("devices") or [{}])[0]
    gemm = dev.get("gemm") if isinstance(dev.get("gemm"), list) else []
    square = [r for r in gemm if r["m"] == r["n"] == r["k"]]
    big = max(square, key=lambda r: r["m"], default=None)
    if big is not None:
        out["sgemm_shape"] = f"{big['m']}x{big['n']}x{big['k']}"
        out["sgemm_4096_gflops"] = big.get("dense_forward_gflops")
        if "dense_forward_torch_cuda_gflops" in big:
            out["cublas_4096_gflops"] = big["dense_forward_torch_cuda_gflops"]
            out["sgemm_4096_pct_of_cublas"] = 100 * big["dense_forward_ratio_to_torch_cuda"]
    refs = [r for r in (doc.get("torch_cuda") or {}).get("gemm") or [] if r["m"] == 4096]
    if out["cublas_4096_gflops"] is None and refs:  # no OpenCL device: PyTorch alone
        out["cublas_4096_gflops"] = refs[0]["dense_forward"]
    training = dev.get("training") or {}
    for name in ("cnn", "lstm"):
        out[f"{name}_images_per_s"] = (training.get(name) or {}).get("images_per_s")
        out[f"{name}_ratio"] = (training.get(name) or {}).get("ratio_to_torch_cuda")
    start = dev.get("start") or {}
    if "warm_compiled_nothing" in start:
        out["warm_start_compiled_nothing"] = start["warm_compiled_nothing"]
        out["warm_start_builds"] = start["warm"]["builds"]
        out["cold_start_builds"] = start["cold"]["builds"]
    tuning = dev.get("tuning") or {}
    if "tiles" in tuning:
        out["tuned_tiles"] = tuning["tiles"]
        out["tuned_gflops"] = tuning["gflops"]
    return out


def fmt(value, spec, target=None):
    if value is None:
        return "not measured"
    text = format(value, spec)
    if target is not None:
        text += f"  (target >= {target:g}: {'met' if value >= target else 'NOT met'})"
    return text


def step_summary(run, json_path, state, limit):
    doc = json.loads(Path(json_path).read_text()) if Path(json_path).is_file() else {}
    s = summarize(doc)
    dev = state.get("device") or {}
    shape = s.get("sgemm_shape", "4096x4096x4096")
    warm = s["warm_start_compiled_nothing"]
    lines = [
        f"device: {dev.get('name', 'no OpenCL device')} {dev.get('index', '')}; "
        f"torch CUDA: {(doc.get('torch_cuda') or {}).get('device', 'none')}",
        f"SGEMM {shape} % of cuBLAS (fp32, TF32 off): "
        + fmt(s["sgemm_4096_pct_of_cublas"], ".1f", TARGETS["sgemm_pct_of_cublas"])
        + (f"  [{s['sgemm_4096_gflops']:.0f} vs {s['cublas_4096_gflops']:.0f} GFLOP/s]"
           if s["cublas_4096_gflops"] and s["sgemm_4096_gflops"] else
           (f"  [pynn {s['sgemm_4096_gflops']:.1f} GFLOP/s]" if s["sgemm_4096_gflops"] else
            f"  [cuBLAS alone {s['cublas_4096_gflops']:.0f} GFLOP/s]"
            if s["cublas_4096_gflops"] else "")),
        "CNN training, ratio to PyTorch CUDA fp32: " + fmt(s["cnn_ratio"], ".2f",
                                                            TARGETS["cnn_ratio"]),
        "LSTM training, ratio to PyTorch CUDA fp32: " + fmt(s["lstm_ratio"], ".2f",
                                                             TARGETS["lstm_ratio"]),
        "warm start compiled nothing: " + ("not measured" if warm is None else
                                           f"{'yes' if warm else 'NO'} "
                                           f"({s['warm_start_builds']} builds warm, "
                                           f"{s['cold_start_builds']} cold)"),
        "GEMM tuner: " + (f"{s['tuned_tiles']} at {s['tuned_gflops']:.0f} GFLOP/s"
                          if s["tuned_tiles"] else "not run"),
        *suite_lines(state.get("suite_json", "")),
        "steps: " + ", ".join(f"{k} {v['status']} {v['seconds']:.0f}s"
                              for k, v in run.steps.items()),
    ]
    run.say("\n".join("  " + line for line in lines))
    if doc:
        doc["gpu_run"] = {"steps": run.steps, "summary": s, "targets": TARGETS,
                          "total_s": round(time.monotonic() - run.started, 1)}
        Path(json_path).write_text(json.dumps(doc, indent=1))
    return "ok", ""


def device_slug(state):
    dev = state.get("device") or {}
    name = dev.get("name") or state.get("gpu_name") or "no-device"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if dev.get("vendor") == "pocl" and "pocl" not in slug:
        slug = "pocl-" + slug
    return slug or "unknown"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--pocl", action="store_true",
                        help="run on PoCL's CPU device instead of an NVIDIA GPU (dry run)")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for every step")
    parser.add_argument("--skip", default="", help=f"comma-separated steps of {STEPS}")
    parser.add_argument("--wheels", action="append",
                        help="wheel folder (repeatable); default bench/gpu/wheels and .whl")
    parser.add_argument("--work", default="/tmp/pynn-gpu",
                        help="scratch folder: installed wheels, vendor files, program cache")
    parser.add_argument("--bench-args", default=None, help="the bench's size options")
    parser.add_argument("--pytest-args", default="", help="extra pytest arguments")
    parser.add_argument("--suite-args", default=None, help="the unified suite's options")
    opts = parser.parse_args(argv)
    skip = {s for s in opts.skip.split(",") if s}
    py = sys.executable
    work = Path(opts.work)
    work.mkdir(parents=True, exist_ok=True)
    run = Run(opts.out_dir, opts.budget)
    # pynn's program cache: the caller's PYNN_CACHE_DIR if set, else one in the work folder.
    run.env.setdefault("PYNN_CACHE_DIR", str(work / "cache"))
    run.say(f"pynn GPU run, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}: "
            f"{'PoCL dry run' if opts.pocl else 'NVIDIA'}, "
            f"budget {opts.budget:.0f} s, out {run.out}")
    state = {}

    def do(name, what, fn):
        if name in skip:
            run.steps[name] = {"status": "skipped", "seconds": 0.0, "note": "--skip"}
            run.say(f"\n=== [{name}] skipped (--skip)")
            return False
        return run.step(name, what, fn)

    do("machine", "Python, GPU and PyTorch", lambda t: step_machine(run, py, state, t))
    wheel_dirs = opts.wheels or [HERE / "wheels", ROOT / ".whl"]
    do("wheels", "install missing packages from local wheels",
       lambda t: step_wheels(run, py, wheel_dirs, work / "site", t))
    if opts.pocl:
        run.steps["icd"] = {"status": "skipped", "seconds": 0.0, "note": "--pocl"}
        run.say("\n=== [icd] skipped: --pocl uses the PoCL ICD shipped with the wheels")
    else:
        do("icd", f"find {NVIDIA_OPENCL} and register it for the ICD loader",
           lambda t: step_icd(run, work, t))
    # pynn must import for the device probe: build first when it was never built.
    do("build", "python setup.py build_ext --inplace", lambda t: step_build(run, py, t))
    do("devices", "list OpenCL devices", lambda t: step_devices(run, py, opts.pocl, state, t))
    spec = (state.get("device") or {}).get("index")
    if spec:
        do("tests", f"OpenCL tests on {spec}",
           lambda t: step_tests(run, py, spec, shlex.split(opts.pytest_args), t))
    else:
        run.steps["tests"] = {"status": "skipped", "seconds": 0.0, "note": "no device"}
        run.say("\n=== [tests] skipped: no OpenCL device to test on")
    json_path = run.out / f"opencl-{device_slug(state)}.json"
    bench_args = opts.bench_args if opts.bench_args is not None else (
        POCL_BENCH_ARGS if opts.pocl else GPU_BENCH_ARGS)
    do("bench", f"bench/bench_opencl.py {bench_args} -> {json_path.name}",
       lambda t: step_bench(run, py, spec, json_path, bench_args, t))
    suite_json = run.out / f"suite-{device_slug(state)}.json"
    state["suite_json"] = str(suite_json)
    suite_args = opts.suite_args if opts.suite_args is not None else (
        POCL_SUITE_ARGS if opts.pocl else SUITE_ARGS)
    do("suite", f"python -m bench --device {spec} {suite_args or ''} -> {suite_json.name}",
       lambda t: step_suite(run, py, spec, suite_json, suite_args, t))
    run.step("summary", "headline numbers", lambda t: step_summary(run, json_path, state, t))
    total = time.monotonic() - run.started
    failed = [k for k, v in run.steps.items() if v["status"] == "failed"]
    run.say(f"\nGPU run done in {total:.0f} s; " + (f"FAILED steps: {', '.join(failed)}"
                                                      if failed else "every step ok")
            + f"; results in {run.out}")
    run.log.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
