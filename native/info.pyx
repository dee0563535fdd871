"""Build and runtime facts about the native extension, the OpenMP thread setting, and what
happens to OpenMP at fork.

Fork: GNU libgomp keeps each thread's worker team for reuse and has no fork handler, so a child
forked after a parallel region inherits a team whose threads do not exist, and its first region
waits for them forever. Importing this module installs a pthread_atfork prepare handler that
releases the forking thread's team first (``omp_pause_resource_all``, OpenMP 5.0, GCC >= 9;
the parent starts new threads at its next region, once per fork): the child starts
without a team and builds its own, with the parent's thread count. Where the runtime lacks
that call, the child handler sets the child to one OpenMP thread instead (PyTorch's answer to
the same libgomp limit), and ``forked_single()`` says so. LLVM's libomp has its own handler;
the pause is harmless there. Results do not change: no kernel splits work by thread count.
"""
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


cdef extern from *:
    """
    #include <dlfcn.h>
    #include <pthread.h>
    /* omp_pause_resource_all of the OpenMP runtime these kernels are linked with, looked up
       at run time: older omp.h headers do not declare it, older runtimes lack it. */
    typedef int (*pynn_omp_pause_fn)(int);
    #define PYNN_OMP_PAUSE_SOFT 1   /* omp_pause_soft: keeps the ICVs (the thread count) */
    static pynn_omp_pause_fn pynn_omp_pause = NULL;
    static int pynn_omp_release = 1;         /* 0: tests of the one-thread fallback */
    static int pynn_omp_paused = 0;          /* the last prepare handler released the team */
    static int pynn_omp_forked_single = 0;   /* this process is a child set to one thread */

    static void pynn_omp_fork_prepare(void) {
        pynn_omp_paused = pynn_omp_release && pynn_omp_pause != NULL
                          && pynn_omp_pause(PYNN_OMP_PAUSE_SOFT) == 0;
    }

    static void pynn_omp_fork_child(void) {
        if (PYNN_HAVE_OPENMP && !pynn_omp_paused) {
            omp_set_num_threads(1);
            pynn_omp_forked_single = 1;
        }
    }

    static int pynn_omp_fork_init(void) {
    #if PYNN_HAVE_OPENMP
        Dl_info info;
        void* lib;
        if (dladdr((void*)&omp_get_max_threads, &info) && info.dli_fname != NULL) {
            lib = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD);
            if (lib != NULL) {
                pynn_omp_pause = (pynn_omp_pause_fn)dlsym(lib, "omp_pause_resource_all");
                dlclose(lib);   /* a NOLOAD handle: this module keeps the runtime loaded */
            }
        }
    #endif
        return pthread_atfork(pynn_omp_fork_prepare, NULL, pynn_omp_fork_child);
    }
    """
    int pynn_omp_fork_init()
    int pynn_omp_forked_single
    void* pynn_omp_pause
    int pynn_omp_release


if pynn_omp_fork_init() != 0:
    raise RuntimeError("pynn._native.info: pthread_atfork failed")


def fork_release():
    """Whether a fork now gives the child a fresh OpenMP team (False: one thread)."""
    return pynn_omp_pause != NULL and pynn_omp_release != 0


def forked_single():
    """True in a child forked while the runtime could not release the team: one thread."""
    return bool(pynn_omp_forked_single)


def _set_fork_release(bint on):
    """Tests only: off makes forks take the one-thread fallback, as without the pause call."""
    global pynn_omp_release
    pynn_omp_release = on


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
