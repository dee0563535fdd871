# Lets every kernel compile with or without OpenMP: without it, prange runs serially and
# these stand-ins report a single thread.
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define PYNN_HAVE_OPENMP 1
    #else
    #define PYNN_HAVE_OPENMP 0
    static int omp_get_max_threads(void) { return 1; }
    static int omp_get_thread_num(void) { return 0; }
    static int omp_get_num_threads(void) { return 1; }
    static void omp_set_num_threads(int n) { (void)n; }
    #endif
    """
    int PYNN_HAVE_OPENMP
    int omp_get_max_threads() noexcept nogil
    int omp_get_thread_num() noexcept nogil
    int omp_get_num_threads() noexcept nogil
    void omp_set_num_threads(int n) noexcept nogil
