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
 * and optionally
 *   A_VLOAD(m, k), B_VLOAD(k, n)  FLOATN(VWA) / FLOATN(VWB) elements starting at (m, k) /
 *                        (k, n) along the operand's contiguous dimension (k for A when
 *                        A_K_CONTIG, else m; n for B when B_N_CONTIG, else k)
 * and then `#include "gemm.cl"`; this file has no include guard and undefines its inputs, so
 * one .cl file may stamp out several kernels.
 *
 * Scheme (CLBlast's xgemm, simplified): a work-group of NDIMC x MDIMC work-items owns an
 * MWG x NWG tile of C; per KWG-wide slice of K it stages A and B tiles in local memory (zero
 * outside the matrix, so edges need no separate kernel) and each work-item accumulates an
 * MWI x NWI register block, rows ty + i*MDIMC and columns tx + j*NDIMC (strided, so a wavefront
 * stores and reads local memory contiguously).
 *
 * Vector loads (CLBlast's VWM/VWN): with VWA (VWB) > 1 each work-item moves VWA (VWB)
 * neighbours along the contiguous dimension per global read. The host picks the width per
 * call so that the vector's first element is a multiple of the width past an aligned
 * buffer start (offset 0 and leading dimension a multiple of it, 1 otherwise); a vector that
 * would cross the matrix edge is read element by element with guards, so any size works.
 * An includer without a vector loader always gets scalar loads.
 *
 * Optional index tables (implicit-GEMM gathers): GEMM_PROLOGUE runs once at kernel scope
 * (declare and fill __local tables over the group's rows), GEMM_SLICE_PREP once per K slice
 * (fill tables over k0 .. k0 + KWG); each is followed by a barrier that every work-item
 * reaches. The loaders A_AT_LOCAL(m, k, lm, lk) / B_AT_LOCAL(k, n, lk, ln) (and _VLOAD_LOCAL)
 * then also receive the tile-local indices to look those tables up; they default to A_AT /
 * B_AT (and A_VLOAD / B_VLOAD).
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

/* Stage the RWG x KWG slice [r0, r0 + RWG) x [k0, k0 + KWG) of an operand in tile[kk][rr],
 * zero outside rows < R and k < k_end. VW neighbours along k (KC = 1) or along r (KC = 0)
 * per work-item and step; VW and KC are compile-time constants, so the dead branches fold
 * and VW = 1 is the plain scalar loop. AT / VLOAD(r, k, local r, local k) read the operand. */
#define GEMM_FILL(tile, RWG, VW, KC, AT, VLOAD, R, r0)                                    \
    for (int idx = tid; idx < (RWG) * KWG / (VW); idx += WG_ITEMS) {                      \
        const int rr = (KC) ? idx / (KWG / (VW)) : (idx % ((RWG) / (VW))) * (VW);         \
        const int kk = (KC) ? (idx % (KWG / (VW))) * (VW) : idx / ((RWG) / (VW));         \
        const int gr = (r0) + rr, gk = k0 + kk;                                           \
        float v_[VW];                                                                     \
        if ((VW) > 1 && gr + ((KC) ? 0 : (VW) - 1) < (R) &&                               \
            gk + ((KC) ? (VW) - 1 : 0) < k_end) {                                         \
            VSPILL(VW, VLOAD(gr, gk, rr, kk), v_);                                        \
        } else {                                                                          \
            for (int e = 0; e < (VW); ++e) {                                              \
                const int er = gr + ((KC) ? 0 : e), ek = gk + ((KC) ? e : 0);             \
                v_[e] = (er < (R) && ek < k_end)                                          \
                            ? (AT(er, ek, rr + ((KC) ? 0 : e), kk + ((KC) ? e : 0)))      \
                            : 0.0f;                                                       \
            }                                                                             \
        }                                                                                 \
        for (int e = 0; e < (VW); ++e)                                                    \
            tile[kk + ((KC) ? e : 0)][rr + ((KC) ? 0 : e)] = v_[e];                       \
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
#ifndef VWA
#define VWA 1 /* vector width of A's global reads (1, 2, 4): the host's per-call choice */
#endif
#ifndef VWB
#define VWB 1 /* vector width of B's global reads */
#endif

/* Widths this instance uses: scalar where the includer has no vector loader. */
#if defined(A_VLOAD) && VWA > 1
#define GEMM_VA VWA
#else
#define GEMM_VA 1
#undef A_VLOAD
#define A_VLOAD(m, k) (A_AT(m, k))
#endif
#if defined(B_VLOAD) && VWB > 1
#define GEMM_VB VWB
#else
#define GEMM_VB 1
#undef B_VLOAD
#define B_VLOAD(k, n) (B_AT(k, n))
#endif
#ifndef A_AT_LOCAL
#define A_AT_LOCAL(m, k, lm, lk) A_AT(m, k)
#endif
#ifndef B_AT_LOCAL
#define B_AT_LOCAL(k, n, lk, ln) B_AT(k, n)
#endif
#if GEMM_VA == 1 || !defined(A_VLOAD_LOCAL)
#undef A_VLOAD_LOCAL
#define A_VLOAD_LOCAL(m, k, lm, lk) A_VLOAD(m, k)
#endif
#if GEMM_VB == 1 || !defined(B_VLOAD_LOCAL)
#undef B_VLOAD_LOCAL
#define B_VLOAD_LOCAL(k, n, lk, ln) B_VLOAD(k, n)
#endif
#define GEMM_A_AT(r, k, lr, lk) A_AT_LOCAL(r, k, lr, lk)
#define GEMM_B_AT(r, k, lr, lk) B_AT_LOCAL(k, r, lk, lr)
#define GEMM_A_VLOAD(r, k, lr, lk) A_VLOAD_LOCAL(r, k, lr, lk)
#define GEMM_B_VLOAD(r, k, lr, lk) B_VLOAD_LOCAL(k, r, lk, lr)

#define MWI (MWG / MDIMC)
#define NWI (NWG / NDIMC)
#define WG_ITEMS (MDIMC * NDIMC)

#if (MWG % MDIMC) != 0 || (NWG % NDIMC) != 0
#error "MWG must be a multiple of MDIMC and NWG a multiple of NDIMC"
#endif
#if (A_K_CONTIG ? KWG : MWG) % GEMM_VA != 0 || (B_N_CONTIG ? NWG : KWG) % GEMM_VB != 0
#error "the vector widths must divide the tile along the operands' contiguous dimensions"
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

#ifdef GEMM_PROLOGUE
    GEMM_PROLOGUE
    barrier(CLK_LOCAL_MEM_FENCE);
#endif

    for (int k0 = k_begin; k0 < k_end; k0 += KWG) {
#ifdef GEMM_SLICE_PREP
        GEMM_SLICE_PREP
        barrier(CLK_LOCAL_MEM_FENCE);
#endif
        GEMM_FILL(a_tile, MWG, GEMM_VA, A_K_CONTIG, GEMM_A_AT, GEMM_A_VLOAD, M, m0)
        GEMM_FILL(b_tile, NWG, GEMM_VB, !(B_N_CONTIG), GEMM_B_AT, GEMM_B_VLOAD, N, n0)
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
#undef A_VLOAD
#undef B_VLOAD
#undef A_AT_LOCAL
#undef B_AT_LOCAL
#undef A_VLOAD_LOCAL
#undef B_VLOAD_LOCAL
#undef GEMM_PROLOGUE
#undef GEMM_SLICE_PREP
#undef GEMM_VA
#undef GEMM_VB
#undef GEMM_A_AT
#undef GEMM_B_AT
#undef GEMM_A_VLOAD
#undef GEMM_B_VLOAD
#undef A_K_CONTIG
#undef B_N_CONTIG
#undef STORE
#undef MWI
#undef NWI
#undef WG_ITEMS
