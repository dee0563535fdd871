# Row-major GEMM on top of Fortran BLAS: C = alpha * op(A) @ op(B) + beta * C for C-contiguous
# arrays is the column-major product C^T = op(B)^T @ op(A)^T, so A and B swap places and no
# data is transposed. Callable without the GIL.
from scipy.linalg.cython_blas cimport sgemm, dgemm

ctypedef fused floating:
    float
    double


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
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*>b, &ldb, <float*>a, &lda, &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*>b, &ldb, <double*>a, &lda, &beta, c, &ldc)
