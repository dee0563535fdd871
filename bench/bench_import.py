"""What `import pynn` costs (issue 16's footprint), in fresh interpreters.

Each run starts new interpreters, alternated so a shared machine's load falls on all alike:
- ``numpy``: ``import numpy`` alone, the floor;
- ``pynn``: ``import pynn`` alone (it imports NumPy);
- ``pynn after numpy``: NumPy imported first, then the time of ``import pynn`` alone: pynn's
  own share;
- ``import+build+predict``: ``import pynn``, an MLP 784-256-128-10 built and one batch-1
  predict (the first predict loads the CPU kernels and the BLAS they call).
Wall and CPU (process_time) milliseconds, min and median. CPU time is what to compare on a
loaded machine: it does not count waiting for a core. Bytecode is cached under a temporary
PYCACHE prefix (an installed package has its .pyc files); ``--no-bytecode-cache`` measures
compiling every module from source, which is what PYTHONDONTWRITEBYTECODE=1 costs.
``--before DIR`` alternates a second checkout (with its extensions built) for an A/B.

    python bench/bench_import.py [--runs 15] [--before DIR] [--no-bytecode-cache] [--json PATH]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_TIMED = ("import time\nt0 = time.perf_counter(); c0 = time.process_time()\n{body}\n"
          "print((time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3)")
_SPLIT = ("import time\nimport numpy\nt0 = time.perf_counter(); c0 = time.process_time()\n"
          "import pynn\nprint((time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3)")
_PREDICT = ("import numpy as np, pynn\n"
            "m = pynn.Sequential([pynn.layers.Input((784,)), pynn.layers.Dense(256, activation='relu'),"
            " pynn.layers.Dense(128, activation='relu'), pynn.layers.Dense(10, activation='softmax')])\n"
            "m.predict(np.ones((1, 784), 'float32'), verbose=0)")
PROBES = {"numpy": _TIMED.format(body="import numpy"),
          "pynn": _TIMED.format(body="import pynn"),
          "pynn after numpy": _SPLIT,
          "import+build+predict": _TIMED.format(body=_PREDICT)}


def _env(cache_dir):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE",
                                                            "PYTHONPATH")}
    if cache_dir is None:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    else:
        env["PYTHONPYCACHEPREFIX"] = cache_dir
    return env


def _run(code, checkout, env):
    out = subprocess.run([sys.executable, "-c", code], cwd=checkout, env=env,
                         capture_output=True, text=True, check=True)
    wall, cpu = (float(v) for v in out.stdout.split())
    return wall, cpu


def measure(checkouts, runs, bytecode_cache=True):
    with tempfile.TemporaryDirectory() as tmp:
        envs = {tag: _env(os.path.join(tmp, tag) if bytecode_cache else None)
                for tag in checkouts}
        for tag, checkout in checkouts.items():  # fills the bytecode cache, loads the disk cache
            _run(PROBES["import+build+predict"], checkout, envs[tag])
        samples = {}
        for _ in range(runs):
            for probe, code in PROBES.items():
                for tag, checkout in checkouts.items():
                    if probe == "numpy" and tag == "before":
                        continue  # one floor is enough
                    wall, cpu = _run(code, checkout, envs[tag])
                    key = probe if len(checkouts) == 1 or probe == "numpy" else f"{probe} [{tag}]"
                    samples.setdefault(key, {"wall": [], "cpu": []})
                    samples[key]["wall"].append(wall)
                    samples[key]["cpu"].append(cpu)
    return {key: {kind: {"min": round(min(v), 1), "median": round(statistics.median(v), 1)}
                  for kind, v in s.items()} for key, s in samples.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--before", help="another checkout to alternate with this one")
    parser.add_argument("--no-bytecode-cache", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    checkouts = {"pynn": str(ROOT)}
    if args.before:
        checkouts = {"before": str(Path(args.before).resolve()), "after": str(ROOT)}
    result = {"runs": args.runs, "bytecode_cache": not args.no_bytecode_cache,
              "load_average_at_start": [round(x, 1) for x in os.getloadavg()],
              "ms": measure(checkouts, args.runs, not args.no_bytecode_cache)}
    result["load_average_at_end"] = [round(x, 1) for x in os.getloadavg()]
    for key, kinds in result["ms"].items():
        print(f"{key:32s} " + "  ".join(f"{kind} min {v['min']:7.1f} median {v['median']:7.1f}"
                                         for kind, v in kinds.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
