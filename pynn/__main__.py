"""``python -m pynn info``: what this pynn was built with and what it can run on."""

import argparse
import os
import platform
import sys


_BF16_KERNELS = {"amx_bf16": "AMX tiles, TDPBF16PS", "avx512_bf16": "AVX-512 vdpbf16ps",
                 "portable": "a C kernel of vdpbf16ps's numerics, slower than float32"}

def _cpu():
    """'model name' and the SIMD flags the kernels care about, from /proc/cpuinfo."""
    model, flags = platform.processor(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")
            if f in flags]
    return f"{model or 'unknown cpu'}" + (f" ({', '.join(simd)})" if simd else "")


def info():
    import numpy as np
    from threadpoolctl import threadpool_info

    import pynn
    from pynn._native import info as native_info

    try:
        from pynn import _build_flags as flags
    except ImportError:
        flags = None
    n_threads = pynn.get_num_threads()
    lines = [
        f"pynn {pynn.__version__}",
        f"python {platform.python_version()} ({sys.executable}), numpy {np.__version__}",
        f"machine: {platform.machine()}, {_cpu()}",
    ]
    kernel = native_info.microkernel()
    if flags is not None:
        lines += [
            f"build: compiler {flags.COMPILER}, flags {' '.join(flags.COMPILE_ARGS)}",
            (f"portable build: {flags.PORTABLE}, cython checks: {flags.DEBUG_CYTHON}, "
             f"sanitizers: {getattr(flags, 'SANITIZE', False)}"),
        ]
    levels, best, requested = native_info.kernel_levels()
    runs = [name for name, _, ok in reversed(levels) if ok]
    why = "PYNN_KERNEL" if requested >= 0 and kernel["kernel"] == levels[requested][0] else (
        "the CPU's best" if kernel["kernel"] == levels[best][0] else "set_kernel")
    lines.append(f"microkernel: {kernel['kernel']} ({why}; this CPU runs "
                 f"{', '.join(runs)}), {kernel['vector_bytes']}-byte vectors, up to "
                 f"{kernel['rows']} rows, {kernel['panel_columns']}-column float32 panels")
    lines.append(f"other kernels: compiled for {kernel['build_isa']} (-march of the build)")
    from pynn._native import bf16

    lines.append(f"bf16 (mixed_bfloat16): {bf16.KERNEL} "
                 f"({_BF16_KERNELS.get(bf16.KERNEL, '')}; PYNN_BF16_KERNEL chooses another)")
    from pynn._native import quant

    lines.append(f"int8 (quantized layers): {quant.ISA} (of {', '.join(quant.available_isas())}; "
                 f"exact integer sums, the same bits on each)")
    omp = native_info.openmp_enabled()
    lines.append(f"openmp: {'ON' if omp else 'OFF (single-threaded kernels)'}, "
                 f"threads: {n_threads} (omp max threads {native_info.get_max_threads()}), "
                 f"waiters spin {os.environ.get('GOMP_SPINCOUNT', 'default')} then sleep "
                 f"(OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')})")
    if omp and native_info.get_max_threads() > 1:
        idle, hot = native_info.region_wakeup_us()
        lines.append(f"openmp wake-up: {idle:.1f} us for a region after 50 us alone, {hot:.1f} us "
                     f"back to back (each op of a training step pays the first once its "
                     f"workers stop spinning; GOMP_SPINCOUNT=30000 keeps them awake where "
                     f"pynn has the cores to itself)")
    from pynn import _config

    warm = _config.warm_threads()
    workers = max(n_threads - 1, 0)
    lines.append(f"worker team: the training ops' parallel loops on pynn's own threads "
                 f"(native/_team.h; up to {workers} worker{'' if workers == 1 else 's'} beside "
                 f"the caller, started at the first job; jobs so far "
                 f"{native_info.team_counts()[0]})")
    lines.append("keep-warm: " + (f"idle-priority spinners: {warm}, keeping the workers' cores "
                                  f"awake while a loop's batches run and waking the team's "
                                  f"workers from their own cores (PYNN_KEEP_WARM=0: off)"
                                  if warm else "off (PYNN_KEEP_WARM=0, one thread, or no OpenMP)"))
    if omp:
        lines.append("fork: " + ("the OpenMP team is released first, a child starts its own"
                                 if native_info.fork_release() else
                                 "no omp_pause_resource_all: a forked child runs one thread"))
    for lib in threadpool_info():
        if lib.get("user_api") == "blas":
            lines.append(f"blas: {lib.get('internal_api')} {lib.get('version')} "
                         f"({lib.get('threading_layer')}, {lib.get('num_threads')} threads) "
                         f"{lib.get('filepath')}")
    from pynn._native import dense, memory

    path, ints = dense._blas_library()
    lines.append(f"kernels' blas: {path} ({ints}; PYNN_BLAS=loaded takes NumPy's)")
    lines.append("dense: " + ("one team job per op, OpenBLAS held at 1 thread inside"
                              if dense._one_region_mode() else
                              "BLAS threads the product, a second pass the epilogue"))
    pool = memory.stats()
    lines.append(f"host memory pool: up to {pool['limit'] / 2**20:.0f} MiB idle "
                 f"(PYNN_RECYCLE_MIB; blocks of {pool['min_block'] // 1024} KiB and more)"
                 if pool["limit"] else "host memory pool: off (PYNN_RECYCLE_MIB=0)")
    lines.append(f"device: {pynn.get_device()}")
    devs = pynn.devices()
    if not devs:
        lines.append("opencl: no devices found (pip install pyopencl pocl-binary-distribution "
                     "for a CPU device, or install your GPU vendor's OpenCL driver)")
    for d in devs:
        lines.append(
            f"opencl: {d.get('index')} {d.get('name')} [{d.get('type')}] on "
            f"{d.get('platform')}, {d.get('global_mem', 0) / 2**30:.1f} GiB, max alloc "
            f"{d.get('max_alloc', 0) / 2**30:.1f} GiB, {d.get('compute_units')} CUs, "
            f"fp16 {d.get('fp16')}, fp64 {d.get('fp64')}, driver {d.get('driver_version')}")
    print("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pynn")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("info", help="build flags, threads, BLAS and OpenCL devices")
    sub.add_parser("demo", help="train the digits demo CNN")
    args = parser.parse_args(argv)
    if args.command == "info":
        info()
    elif args.command == "demo":
        from pynn import demo

        sys.exit(demo.main([]))
    else:
        parser.print_help()


if __name__ == "__main__":
    main()
