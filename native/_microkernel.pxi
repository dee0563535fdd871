# The Python hook of native/_microkernel.h's run-time dispatch, for every module that
# includes the header: each extension module holds its own static copy of the chosen level,
# so pynn/_config.py set_kernel finds every pynn._native module with _microkernel_select and
# calls it. A module that calls the microkernel includes this file (one line), or it stays on
# the level chosen when it was loaded.

cdef extern from "_microkernel.h":
    int pynn_mk_select(int level) noexcept nogil
    int pynn_mk_level() noexcept nogil

# Every entry point of the header, declared once here for the modules that include this file
# (declaring one a module does not call costs nothing).
cdef extern from "_microkernel.h":
    int PYNN_VBYTES
    int PYNN_MR_MAX
    int PYNN_NC_F
    int PYNN_NC_D
    void pynn_seg_gemm_f(Py_ssize_t m, Py_ssize_t n, Py_ssize_t nseg, Py_ssize_t tn,
                         const float* a, const Py_ssize_t* roff, const Py_ssize_t* aseg,
                         Py_ssize_t sat, const float* b, const Py_ssize_t* bseg,
                         Py_ssize_t ldb, float* c, Py_ssize_t ldc, const float* init,
                         int accum, int wide) noexcept nogil
    void pynn_seg_gemm_d(Py_ssize_t m, Py_ssize_t n, Py_ssize_t nseg, Py_ssize_t tn,
                         const double* a, const Py_ssize_t* roff, const Py_ssize_t* aseg,
                         Py_ssize_t sat, const double* b, const Py_ssize_t* bseg,
                         Py_ssize_t ldb, double* c, Py_ssize_t ldc, const double* init,
                         int accum, int wide) noexcept nogil
    void pynn_rows_gemm_f(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float* a,
                          Py_ssize_t sai, Py_ssize_t sak, const float* b, Py_ssize_t ldb,
                          float* c, Py_ssize_t ldc, int accum) noexcept nogil
    void pynn_rows_gemm_d(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const double* a,
                          Py_ssize_t sai, Py_ssize_t sak, const double* b, Py_ssize_t ldb,
                          double* c, Py_ssize_t ldc, int accum) noexcept nogil
    void pynn_pack_panels_f(const float* b, Py_ssize_t ldb, Py_ssize_t k, Py_ssize_t n,
                            Py_ssize_t nc, float* out) noexcept nogil
    void pynn_pack_panels_d(const double* b, Py_ssize_t ldb, Py_ssize_t k, Py_ssize_t n,
                            Py_ssize_t nc, double* out) noexcept nogil


def _microkernel_select(int level):
    """Use the microkernel copy of `level` (0 generic, 1 avx2, 2 avx512) in this module; False
    when this CPU cannot run it (nothing changes then). Not while kernels run."""
    return pynn_mk_select(level) == 0


def _microkernel_level():
    """The level this module's microkernel calls use now."""
    return pynn_mk_level()
