"""Build and runtime facts about the native extension, and the OpenMP thread setting."""
from _openmp cimport PYNN_HAVE_OPENMP, omp_get_max_threads, omp_set_num_threads


def openmp_enabled():
    return bool(PYNN_HAVE_OPENMP)


def get_max_threads():
    return omp_get_max_threads()


def set_num_threads(int n):
    if n < 1:
        raise ValueError(f"set_num_threads: expected n >= 1, got {n}")
    omp_set_num_threads(n)
