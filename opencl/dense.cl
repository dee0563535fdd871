/* Dense (fully connected) layer kernels: three instances of the GEMM core in gemm.cl.
 *
 * Legend: N batch, C input features, U units. x (N, C), kernel (C, U), bias (U), all
 * row-major float32 as in Keras. In GEMM terms (M, N, K) of each kernel:
 *   dense_forward          y = act(x @ kernel + bias)   (N, U, C)
 *   dense_backward_input   dx = dz @ kernel^T           (N, C, U)
 *   dense_backward_weight  dkernel = x^T @ dz           (C, U, N), split-K slot per group z
 * The forward epilogue (gemm.cl's STORE_BIAS_ACT) fuses bias and activation. Softmax is a
 * row operation: the host runs dense_forward with act linear, then activation.cl's softmax.
 * Every operand is a plain matrix, so each has a vector loader; the host sets VWA / VWB from
 * its leading dimension (K, N, K, K, M, N below).
 */
#include "common.h"

/* -- dense_forward ---------------------------------------------------------------------- */
#define GEMM_NAME dense_forward
#define GEMM_ARGS __global const float *restrict x, __global const float *restrict w, \
                  __global const float *restrict bias, __global float *restrict y,     \
                  __global float *restrict z, const int act, const float alpha
#define A_AT(m, k) x[(size_t)(m) * K + (k)]
#define A_VLOAD(m, k) VREAD(VWA, x + (size_t)(m) * K + (k))
#define A_K_CONTIG 1
#define B_AT(k, n) w[(size_t)(k) * N + (n)]
#define B_VLOAD(k, n) VREAD(VWB, w + (size_t)(k) * N + (n))
#define B_N_CONTIG 1
#define STORE(m, n, v) STORE_BIAS_ACT(m, n, v)
#include "gemm.cl"

/* -- dense_backward_input --------------------------------------------------------------- */
#define GEMM_NAME dense_backward_input
#define GEMM_ARGS __global const float *restrict dz, __global const float *restrict w, \
                  __global float *restrict dx
#define A_AT(m, k) dz[(size_t)(m) * K + (k)]
#define A_VLOAD(m, k) VREAD(VWA, dz + (size_t)(m) * K + (k))
#define A_K_CONTIG 1
#define B_AT(k, n) w[(size_t)(n) * K + (k)]
#define B_VLOAD(k, n) VREAD(VWB, w + (size_t)(n) * K + (k))
#define B_N_CONTIG 0
#define STORE(m, n, v) dx[(size_t)(m) * N + (n)] = (v)
#include "gemm.cl"

/* -- dense_backward_weight -------------------------------------------------------------- */
#define GEMM_NAME dense_backward_weight
#define GEMM_ARGS __global const float *restrict x, __global const float *restrict dz, \
                  __global float *restrict dw
#define A_AT(m, k) x[(size_t)(k) * M + (m)]
#define A_VLOAD(m, k) VREAD(VWA, x + (size_t)(k) * M + (m))
#define A_K_CONTIG 0
#define B_AT(k, n) dz[(size_t)(k) * N + (n)]
#define B_VLOAD(k, n) VREAD(VWB, dz + (size_t)(k) * N + (n))
#define B_N_CONTIG 1
#define STORE(m, n, v) dw[((size_t)split * M + (m)) * N + (n)] = (v)
#include "gemm.cl"
