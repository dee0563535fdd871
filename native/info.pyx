"""Build and runtime facts about the native extension, and the OpenMP thread setting."""
from _openmp cimport PYNN_HAVE_OPENMP, omp_get_max_threads, omp_set_num_threads

cdef extern from "_microkernel.h":
    int PYNN_VBYTES
    int PYNN_MR_MAX

cdef extern from *:
    """
    #if defined(__AVX512F__)
    #define PYNN_ISA "avx512f"
    #elif defined(__AVX2__) && defined(__FMA__)
    #define PYNN_ISA "avx2+fma"
    #elif defined(__AVX__)
    #define PYNN_ISA "avx"
    #else
    #define PYNN_ISA "baseline"
    #endif
    """
    const char* PYNN_ISA


def openmp_enabled():
    return bool(PYNN_HAVE_OPENMP)


def get_max_threads():
    return omp_get_max_threads()


def set_num_threads(int n):
    if n < 1:
        raise ValueError(f"set_num_threads: expected n >= 1, got {n}")
    omp_set_num_threads(n)


def microkernel():
    """The instruction set the kernels were compiled for, the vector width in bytes and the
    most rows of the register-blocked microkernel (native/_microkernel.h)."""
    return {"isa": PYNN_ISA.decode(), "vector_bytes": PYNN_VBYTES, "rows": PYNN_MR_MAX}
