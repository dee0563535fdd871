"""Process-wide settings: thread count and the default float type.

OpenMP (pynn's own kernels) and BLAS (the GEMMs) share one thread budget. pynn never calls BLAS
from inside an OpenMP parallel region, so both pools may use all ``n`` threads without
oversubscribing the cores: they take turns.
"""

import contextlib
import os
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
    global _omp_threads
    _info.set_num_threads(omp_threads)
    _per_thread.omp_threads = _omp_threads = omp_threads
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


def _after_fork_in_child():
    global _num_threads, _omp_threads
    if _info.forked_single():
        _num_threads = _omp_threads = 1   # the native child handler set OpenMP to one thread
        _per_thread.omp_threads = 1


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
