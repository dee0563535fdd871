"""Process-wide settings: thread count, the default float type and the microkernel level.

OpenMP (pynn's own kernels) and BLAS (the GEMMs) share one thread budget. pynn never calls BLAS
from inside an OpenMP parallel region, so both pools may use all ``n`` threads without
oversubscribing the cores: they take turns.
"""

import contextlib
import importlib
import os
import pkgutil
import threading
import warnings

from pynn._native import info as _info  # installs the OpenMP fork handler (native/info.pyx)

_num_threads = None
_omp_threads = None  # what set_num_threads gave OpenMP (1 in a child that cannot have more)
_floatx = "float32"
_blas_limiter = None
# OpenMP keeps its thread count per calling thread (an ICV of that thread): the count a Python
# thread last gave it.
_per_thread = threading.local()
# Keep-warm spinners (native/_warm.h): idle-priority threads that keep the cores of pynn's
# sleeping OpenMP workers from halting while a loop's batches run, so each op's wake-up is a
# reschedule rather than a hypervisor's wake of a halted core. PYNN_KEEP_WARM=0 turns them off.
_KEEP_WARM = os.environ.get("PYNN_KEEP_WARM", "1") != "0"
_warm_threads = 0   # spinners to keep: pynn's OpenMP threads within the cores, less the caller's
_WARM_HOLD_S = 0.1  # spin this long after each batch; then block, costing nothing


def _default_threads():
    env = os.environ.get("PYNN_NUM_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"PYNN_NUM_THREADS must be a positive integer, got {env!r}")
        if n < 1:
            raise ValueError(f"PYNN_NUM_THREADS must be a positive integer, got {env!r}")
        return n
    return usable_cores()


def usable_cores():
    """Cores this process may run on (its CPU affinity), not the pynn thread setting."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def set_num_threads(n):
    """Use ``n`` threads for pynn's OpenMP kernels and for BLAS (NumPy's and SciPy's)."""
    global _num_threads, _blas_limiter
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: expected a positive int, got {n!r}")
    from threadpoolctl import threadpool_limits

    from pynn._native import dense  # noqa: F401  (loads SciPy's BLAS before limiting it)

    omp_threads = n
    if n > 1 and _info.forked_single():
        warnings.warn("set_num_threads: this process was forked after an OpenMP region and its "
                      "OpenMP runtime cannot release the parent's thread team (no "
                      "omp_pause_resource_all), so pynn's kernels stay on one thread here; "
                      "start workers with the 'spawn' or 'forkserver' method to use threads",
                      RuntimeWarning, stacklevel=2)
        omp_threads = 1
    global _omp_threads, _warm_threads
    _info.set_num_threads(omp_threads)
    _per_thread.omp_threads = _omp_threads = omp_threads
    _warm_threads = (max(min(omp_threads, usable_cores()) - 1, 0)
                     if _KEEP_WARM and _info.openmp_enabled() else 0)
    _info.set_process_threads(omp_threads)
    _blas_limiter = threadpool_limits(limits=n, user_api="blas")
    _num_threads = n


def apply_to_this_thread():
    """Give OpenMP pynn's thread count in the calling Python thread. OpenMP keeps the count
    per thread, so without this a model used from a thread other than the one that called
    set_num_threads would run its kernels on the runtime's default team (every core, times
    the number of such threads). Called by every model entry point: one thread-local read
    when nothing changed."""
    if _omp_threads is None:
        get_num_threads()
    if getattr(_per_thread, "omp_threads", None) != _omp_threads:
        _info.set_num_threads(_omp_threads)
        _per_thread.omp_threads = _omp_threads


def keep_warm():
    """Once per batch of a training, evaluation or prediction loop on the CPU: the idle cores
    of pynn's OpenMP workers stay awake for the next 0.1 s (see _KEEP_WARM)."""
    if _warm_threads:
        _info.warm_touch(_warm_threads, _WARM_HOLD_S)


def warm_threads():
    """How many keep-warm spinners a loop keeps (0: off, one thread, or no OpenMP)."""
    if _num_threads is None:
        get_num_threads()
    return _warm_threads


def _after_fork_in_child():
    global _num_threads, _omp_threads, _warm_threads
    if _info.forked_single():
        _num_threads = _omp_threads = 1   # the native child handler set OpenMP to one thread
        _info.set_process_threads(1)      # and the lanes' count with it
        _per_thread.omp_threads = 1
        _warm_threads = 0


os.register_at_fork(after_in_child=_after_fork_in_child)


def get_num_threads():
    if _num_threads is None:
        set_num_threads(_default_threads())
    return _num_threads


@contextlib.contextmanager
def threads(n):
    """Run a block with ``n`` threads for pynn's kernels and its BLAS together, then restore
    the previous count (also when the block raises). Like ``set_num_threads`` the setting is
    process-wide: BLAS libraries keep one thread count per process, so a block cannot bound
    them for its own Python thread alone. Blocks nest.

        with pynn.threads(1):
            y = model.predict(x)   # one core, e.g. beside other work
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads: expected a positive int, got {n!r}")
    previous = get_num_threads()
    set_num_threads(n)
    try:
        yield n
    finally:
        set_num_threads(previous)


def floatx():
    return _floatx


def set_floatx(dtype):
    global _floatx
    if str(dtype) not in ("float32", "float64"):
        raise ValueError(f"set_floatx: expected 'float32' or 'float64', got {dtype!r}")
    _floatx = str(dtype)


# -- microkernel level (native/_isa.h, native/_microkernel.h) -------------------------------
# Every build holds the AVX-512, AVX2+FMA and generic copies of the register-blocked
# microkernel; each extension module that includes the header keeps its own copy of the
# choice, made when it loads (PYNN_KERNEL, else the best level of the CPU). set_kernel
# changes it in every such module (they expose _microkernel_select, native/_microkernel.pxi).
KERNELS = ("avx512", "avx2", "generic")


def _kernel_levels():
    levels, best, requested = _info.kernel_levels()
    return {name: (level, runs) for name, level, runs in levels}, best, requested


def available_kernels():
    """The microkernel levels this CPU (and its OS) can run, fastest first."""
    levels, _, _ = _kernel_levels()
    return [name for name in KERNELS if levels[name][1]]


def get_kernel():
    """The microkernel level in use: 'avx512', 'avx2' or 'generic'."""
    return _info.microkernel()["kernel"]


def _check_kernel(name, where):
    levels, _, _ = _kernel_levels()
    if name not in levels:
        raise ValueError(f"{where}: expected one of {', '.join(KERNELS)}, got {name!r}")
    level, runs = levels[name]
    if not runs:
        have = [f for f, on in _info.cpu_features().items() if on]
        need = ("AVX-512 F, VL, BW and DQ" if name == "avx512" else "AVX2 and FMA")
        raise RuntimeError(f"{where}: the {name!r} kernels need {need} enabled by the OS; "
                           f"this CPU has {', '.join(have) or 'neither AVX2 nor AVX-512'} "
                           f"(it can run: {', '.join(available_kernels())})")
    return level


def _microkernel_modules():
    """Every pynn._native module with a microkernel table (importing them all: a module
    loaded later would otherwise start from PYNN_KERNEL or the CPU's best level)."""
    import pynn._native as native

    mods = []
    for entry in pkgutil.iter_modules(native.__path__):
        mod = importlib.import_module(f"pynn._native.{entry.name}")
        if hasattr(mod, "_microkernel_select"):
            mods.append(mod)
    return mods


def set_kernel(name):
    """Use the microkernel level ``name`` ('avx512', 'avx2', 'generic') in every native
    module, e.g. to compare levels or test one; raises RuntimeError when this CPU cannot run
    it. Process-wide and not thread-safe: do not call it while kernels run. Child processes
    follow PYNN_KERNEL, not this setting."""
    level = _check_kernel(name, "set_kernel")
    for mod in _microkernel_modules():
        if not mod._microkernel_select(level):
            raise RuntimeError(f"set_kernel: {mod.__name__} refused level {name!r}")


@contextlib.contextmanager
def kernel(name):
    """Run a block on the microkernel level ``name``, then restore the previous one."""
    previous = get_kernel()
    set_kernel(name)
    try:
        yield name
    finally:
        set_kernel(previous)


def _check_kernel_env():
    value = os.environ.get("PYNN_KERNEL", "")
    if value:
        _check_kernel(value, "PYNN_KERNEL")


_check_kernel_env()
