# Row-major GEMM on top of Fortran BLAS: C = alpha * op(A) @ op(B) + beta * C for C-contiguous
# arrays is the column-major product C^T = op(B)^T @ op(A)^T, so A and B swap places and no
# data is transposed. Callable without the GIL. The BLAS is found among the libraries already
# loaded (native/_blas.h): a module cimporting this calls blas_init() once at import.

cdef extern from "_blas.h":
    int pynn_blas_find() noexcept nogil
    int pynn_blas_load(const char* path) noexcept nogil
    void* pynn_blas_sgemm_address() noexcept nogil
    int pynn_blas_ilp64
    void pynn_sgemm(const char* ta, const char* tb, int m, int n, int k, float alpha,
                    const float* a, int lda, const float* b, int ldb, float beta, float* c,
                    int ldc) noexcept nogil
    void pynn_dgemm(const char* ta, const char* tb, int m, int n, int k, double alpha,
                    const double* a, int lda, const double* b, int ldb, double beta,
                    double* c, int ldc) noexcept nogil

ctypedef fused floating:
    float
    double


cdef inline int blas_init() except -1:
    """Point this module's GEMM at a BLAS (the order and why: native/_blas.h): SciPy's wheel
    OpenBLAS loaded from its file, without importing SciPy; else one already loaded (NumPy's);
    else through an import of scipy.linalg."""
    import glob
    import importlib.util
    import os

    # PYNN_BLAS=loaded skips SciPy's file for whatever BLAS the process has loaded (NumPy's
    # ILP64 OpenBLAS in its wheel): tests reach that path, and a SciPy-less install takes it.
    spec = (None if os.environ.get("PYNN_BLAS", "") == "loaded"
            else importlib.util.find_spec("scipy"))
    if spec is not None and spec.submodule_search_locations:
        here = os.path.dirname(list(spec.submodule_search_locations)[0])
        for path in sorted(glob.glob(os.path.join(here, "scipy.libs", "libscipy_openblas*.so*"))):
            if pynn_blas_load(os.fsencode(path)):
                return 0
    if pynn_blas_find():
        return 0
    import scipy.linalg.cython_blas  # noqa: F401  (loads SciPy's OpenBLAS)
    if pynn_blas_find():
        return 0
    raise ImportError("pynn: no BLAS (sgemm/dgemm) found among the loaded libraries, nor "
                      "through SciPy")


cdef inline void gemm_rowmajor(bint trans_a, bint trans_b, int m, int n, int k,
                               floating alpha, const floating* a, int lda,
                               const floating* b, int ldb, floating beta,
                               floating* c, int ldc) noexcept nogil:
    """C[m, n] = alpha * op(A)[m, k] @ op(B)[k, n] + beta * C, all row-major."""
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if m <= 0 or n <= 0:
        return
    if floating is float:
        pynn_sgemm(&tb, &ta, n, m, k, alpha, <float*>b, ldb, <float*>a, lda, beta, c, ldc)
    else:
        pynn_dgemm(&tb, &ta, n, m, k, alpha, <double*>b, ldb, <double*>a, lda, beta, c, ldc)
