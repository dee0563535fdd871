"""Process-wide settings: thread count and the default float type.

OpenMP (pynn's own kernels) and BLAS (the GEMMs) share one thread budget. pynn never calls BLAS
from inside an OpenMP parallel region, so both pools may use all ``n`` threads without
oversubscribing the cores: they take turns.
"""

import os

_num_threads = None
_floatx = "float32"
_blas_limiter = None


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

    from pynn._native import dense, info  # noqa: F401  (loads SciPy's BLAS before limiting it)

    info.set_num_threads(n)
    _blas_limiter = threadpool_limits(limits=n, user_api="blas")
    _num_threads = n


def get_num_threads():
    if _num_threads is None:
        set_num_threads(_default_threads())
    return _num_threads


def floatx():
    return _floatx


def set_floatx(dtype):
    global _floatx
    if str(dtype) not in ("float32", "float64"):
        raise ValueError(f"set_floatx: expected 'float32' or 'float64', got {dtype!r}")
    _floatx = str(dtype)
