/* Tiled GEMM core shared by dense.cl and conv.cl: C[m, n] = sum_k A(m, k) * B(k, n).
 *
 * Not a standalone program: an including file first defines
 *   GEMM_NAME            the kernel's name (the op name, e.g. dense_forward)
 *   GEMM_ARGS            the kernel's arguments after (M, N, K, k_chunk)
 *   A_AT(m, k), B_AT(k, n)  loaders for in-range indices (plain matrices or implicit-GEMM gathers)
 *   A_K_CONTIG, B_N_CONTIG  1 when consecutive k (resp. n) are adjacent in memory: picks the
 *                        cooperative load order so neighbouring work-items read neighbouring words
 *   STORE(m, n, v)       the epilogue for one in-range output: STORE_BIAS_ACT below for the
 *                        forward ops, a plain or split-K slot write for the backward ones
 * and then `#include "gemm.cl"`; this file has no include guard and undefines its inputs, so
 * one .cl file may stamp out several kernels.
 *
 * Scheme (CLBlast's xgemm, simplified): a work-group of NDIMC x MDIMC work-items owns an
 * MWG x NWG tile of C; per KWG-wide slice of K it stages A and B tiles in local memory (zero
 * outside the matrix, so edges need no separate kernel) and each work-item accumulates an
 * MWI x NWI register block, rows ty + i*MDIMC and columns tx + j*NDIMC (strided, so a wavefront
 * stores and reads local memory contiguously).
 *
 * Split-K: group id 2 selects the K range [s*k_chunk, (s+1)*k_chunk); STORE sees `split`.
 * Every output sums its k in ascending order inside one work-item, so the result does not
 * depend on the tile sizes, only on k_chunk (which the host derives from the shape).
 */

/* -- fused epilogue of the forward kernels (defined once per program) ------------------ */
#ifndef PYNN_GEMM_EPILOGUE
#define PYNN_GEMM_EPILOGUE
#include "activation.h"

/* y[m, n] = act(v + bias[n]) and z[m, n] = v + bias[n] when z is kept. Expects kernel
 * arguments `bias` (NULL for none), `y`, `z` (NULL unless kept), `act`, `alpha`. The
 * activation is an argument, not a define: one build serves every layer, and the branch is
 * uniform across the work-group. */
#define STORE_BIAS_ACT(m, n, v)                                            \
    {                                                                      \
        const float zv = (v) + (bias ? bias[n] : 0.0f);                    \
        if (z)                                                             \
            z[(size_t)(m) * N + (n)] = zv;                                 \
        y[(size_t)(m) * N + (n)] = act_value(zv, act, alpha);              \
    }
#endif /* PYNN_GEMM_EPILOGUE */

/* -- tunables (per-vendor defaults come from the host as -D options) ------------------- */
#ifndef MWG
#define MWG 32 /* rows of C per work-group */
#endif
#ifndef NWG
#define NWG 32 /* columns of C per work-group */
#endif
#ifndef KWG
#define KWG 16 /* K slice staged in local memory per iteration */
#endif
#ifndef MDIMC
#define MDIMC 8 /* work-items along M (local size dimension 1) */
#endif
#ifndef NDIMC
#define NDIMC 8 /* work-items along N (local size dimension 0) */
#endif
#ifndef LPAD
#define LPAD 0 /* extra local-memory columns against bank conflicts on GPUs */
#endif

#define MWI (MWG / MDIMC)
#define NWI (NWG / NDIMC)
#define WG_ITEMS (MDIMC * NDIMC)

#if (MWG % MDIMC) != 0 || (NWG % NDIMC) != 0
#error "MWG must be a multiple of MDIMC and NWG a multiple of NDIMC"
#endif

__kernel __attribute__((reqd_work_group_size(NDIMC, MDIMC, 1)))
void GEMM_NAME(const int M, const int N, const int K, const int k_chunk, GEMM_ARGS)
{
    __local float a_tile[KWG][MWG + LPAD];
    __local float b_tile[KWG][NWG + LPAD];

    const int tx = get_local_id(0);
    const int ty = get_local_id(1);
    const int tid = ty * NDIMC + tx;
    const int n0 = get_group_id(0) * NWG;
    const int m0 = get_group_id(1) * MWG;
    const int split = get_group_id(2);
    const int k_begin = split * k_chunk;
    const int k_end = min(K, k_begin + k_chunk);

    float acc[MWI][NWI];
#pragma unroll
    for (int i = 0; i < MWI; ++i)
#pragma unroll
        for (int j = 0; j < NWI; ++j)
            acc[i][j] = 0.0f;

    for (int k0 = k_begin; k0 < k_end; k0 += KWG) {
        for (int idx = tid; idx < MWG * KWG; idx += WG_ITEMS) {
#if A_K_CONTIG
            const int mm = idx / KWG, kk = idx % KWG;
#else
            const int mm = idx % MWG, kk = idx / MWG;
#endif
            const int gm = m0 + mm, gk = k0 + kk;
            a_tile[kk][mm] = (gm < M && gk < k_end) ? (A_AT(gm, gk)) : 0.0f;
        }
        for (int idx = tid; idx < NWG * KWG; idx += WG_ITEMS) {
#if B_N_CONTIG
            const int nn = idx % NWG, kk = idx / NWG;
#else
            const int nn = idx / KWG, kk = idx % KWG;
#endif
            const int gn = n0 + nn, gk = k0 + kk;
            b_tile[kk][nn] = (gn < N && gk < k_end) ? (B_AT(gk, gn)) : 0.0f;
        }
        barrier(CLK_LOCAL_MEM_FENCE);

#pragma unroll
        for (int kk = 0; kk < KWG; ++kk) {
            float a_reg[MWI], b_reg[NWI];
#pragma unroll
            for (int i = 0; i < MWI; ++i)
                a_reg[i] = a_tile[kk][ty + i * MDIMC];
#pragma unroll
            for (int j = 0; j < NWI; ++j)
                b_reg[j] = b_tile[kk][tx + j * NDIMC];
#pragma unroll
            for (int i = 0; i < MWI; ++i)
#pragma unroll
                for (int j = 0; j < NWI; ++j)
                    acc[i][j] += a_reg[i] * b_reg[j];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }

#pragma unroll
    for (int i = 0; i < MWI; ++i) {
        const int m = m0 + ty + i * MDIMC;
#pragma unroll
        for (int j = 0; j < NWI; ++j) {
            const int n = n0 + tx + j * NDIMC;
            if (m < M && n < N) {
                STORE(m, n, acc[i][j]);
            }
        }
    }
}

#undef GEMM_NAME
#undef GEMM_ARGS
#undef A_AT
#undef B_AT
#undef A_K_CONTIG
#undef B_N_CONTIG
#undef STORE
#undef MWI
#undef NWI
#undef WG_ITEMS
