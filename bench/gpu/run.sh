#!/usr/bin/env bash
# The GPU run of pynn in one command: bench/gpu/run.sh OUT_DIR [--pocl] [gpu_run.py options]
#
# Installs pyopencl and what it needs from bench/gpu/wheels (or .whl), registers NVIDIA's
# OpenCL library for the ICD loader, builds pynn in place, runs the OpenCL tests,
# bench/bench_opencl.py and the unified suite's OpenCL part (python -m bench --device
# opencl:P:D) on the GPU beside PyTorch CUDA, and writes run.log, opencl-<device>.json and
# suite-<device>.json (with its charts) into OUT_DIR. Each step prints what it does and how long it took, and a
# failed step does not stop the later ones. PYTHON picks the interpreter (default python3).
# bench/gpu/README.md has the details; bench/gpu/gpu_run.py does the work.
set -u
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: $0 OUT_DIR [--pocl] [--budget S] [--skip STEPS] [--bench-args ARGS]" >&2
    exit 2
fi
cd "$(dirname "$0")/../.." || exit 2
PY="${PYTHON:-python3}"
if ! command -v "$PY" >/dev/null 2>&1; then
    echo "run.sh: no Python interpreter '$PY' (set PYTHON)" >&2
    exit 2
fi
exec "$PY" -u bench/gpu/gpu_run.py "$@"
