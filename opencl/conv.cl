/* 2-D convolution kernels as implicit GEMM: three instances of the GEMM core in gemm.cl whose
 * A loaders gather straight from the NHWC tensors, so no im2col buffer is ever written.
 *
 * Legend: N batch, H/W input spatial, C channels, HO/WO output spatial, KH/KW kernel spatial,
 * F filters; sh/sw strides, dh/dw dilations, ph/pw leading pads (Keras 'same': the odd pixel
 * goes after). x (N,H,W,C), kernel (KH,KW,C,F), y/dz (N,HO,WO,F), all row-major float32.
 * In GEMM terms (M, N, K) of each kernel:
 *   conv2d_forward          y = act(patches(x) @ kernel + bias)  (N*HO*WO, F, KH*KW*C)
 *   conv2d_backward_input   dx = taps(dz) @ kernel^T-per-tap     (N*H*W, C, KH*KW*F)
 *   conv2d_backward_weight  dkernel = patches(x)^T @ dz          (KH*KW*C, F, N*HO*WO)
 * backward_input is a gather: each dx element sums, in a fixed order, the dz elements whose
 * window covers it (taps that miss the stride grid read 0), so no float atomics are needed and
 * results are reproducible. backward_weight writes split-K slots summed by reduce.cl.
 * Vector loads: VWA consecutive channels c (patches) or filters f (taps) share one (kh, kw)
 * when the host picked VWA | C (resp. F), so a whole vector is in the padding or not, and
 * one index decomposition serves VWA elements.
 */
#include "common.h"

#ifndef VWA
#define VWA 1 /* as in gemm.cl: the A operand's vector width, picked per call by the host */
#endif

/* The geometry every conv kernel receives after its buffers. */
#define CONV_GEOM                                                                   \
    const int H, const int W, const int C, const int HO, const int WO, const int KW, \
        const int F, const int sh, const int sw, const int dh, const int dw,         \
        const int ph, const int pw
#define CONV_GEOM_NAMES H, W, C, HO, WO, KW, F, sh, sw, dh, dw, ph, pw

/* Row m = (n, ho, wo), column k = (kh, kw, c) of the virtual patch matrix; 0 in the padding. */
float conv_patch(__global const float *restrict x, const int m, const int k, CONV_GEOM)
{
    const int c = k % C, t = k / C;
    const int kw = t % KW, kh = t / KW;
    const int wo = m % WO, r = m / WO;
    const int ho = r % HO, n = r / HO;
    const int h = ho * sh - ph + kh * dh;
    const int w = wo * sw - pw + kw * dw;
    if (h < 0 || h >= H || w < 0 || w >= W)
        return 0.0f;
    return x[(((size_t)n * H + h) * W + w) * C + c];
}

/* conv_patch for VWA consecutive k, k a multiple of VWA and VWA | C. */
FLOATN(VWA) conv_patch_v(__global const float *restrict x, const int m, const int k, CONV_GEOM)
{
    const int c = k % C, t = k / C;
    const int kw = t % KW, kh = t / KW;
    const int wo = m % WO, r = m / WO;
    const int ho = r % HO, n = r / HO;
    const int h = ho * sh - ph + kh * dh;
    const int w = wo * sw - pw + kw * dw;
    if (h < 0 || h >= H || w < 0 || w >= W)
        return (FLOATN(VWA))(0.0f);
    return VREAD(VWA, x + (((size_t)n * H + h) * W + w) * C + c);
}

/* dz element reaching input pixel m = (n, h, w) through tap k = (kh, kw, f); 0 when no output
 * window places that tap on the pixel. */
float conv_tap(__global const float *restrict dz, const int m, const int k, CONV_GEOM)
{
    const int f = k % F, t = k / F;
    const int kw = t % KW, kh = t / KW;
    const int w = m % W, r = m / W;
    const int h = r % H, n = r / H;
    const int hh = h + ph - kh * dh;
    const int ww = w + pw - kw * dw;
    if (hh < 0 || ww < 0 || hh % sh != 0 || ww % sw != 0)
        return 0.0f;
    const int ho = hh / sh, wo = ww / sw;
    if (ho >= HO || wo >= WO)
        return 0.0f;
    return dz[(((size_t)n * HO + ho) * WO + wo) * F + f];
}

/* conv_tap for VWA consecutive k, k a multiple of VWA and VWA | F. */
FLOATN(VWA) conv_tap_v(__global const float *restrict dz, const int m, const int k, CONV_GEOM)
{
    const int f = k % F, t = k / F;
    const int kw = t % KW, kh = t / KW;
    const int w = m % W, r = m / W;
    const int h = r % H, n = r / H;
    const int hh = h + ph - kh * dh;
    const int ww = w + pw - kw * dw;
    if (hh < 0 || ww < 0 || hh % sh != 0 || ww % sw != 0)
        return (FLOATN(VWA))(0.0f);
    const int ho = hh / sh, wo = ww / sw;
    if (ho >= HO || wo >= WO)
        return (FLOATN(VWA))(0.0f);
    return VREAD(VWA, dz + (((size_t)n * HO + ho) * WO + wo) * F + f);
}

/* -- conv2d_forward --------------------------------------------------------------------- */
#define GEMM_NAME conv2d_forward
#define GEMM_ARGS __global const float *restrict x, __global const float *restrict wt, \
                  __global const float *restrict bias, __global float *restrict y,      \
                  __global float *restrict z, const int act, const float alpha, CONV_GEOM
#define A_AT(m, k) conv_patch(x, m, k, CONV_GEOM_NAMES)
#define A_VLOAD(m, k) conv_patch_v(x, m, k, CONV_GEOM_NAMES)
#define A_K_CONTIG 1
#define B_AT(k, n) wt[(size_t)(k) * N + (n)]
#define B_VLOAD(k, n) VREAD(VWB, wt + (size_t)(k) * N + (n))
#define B_N_CONTIG 1
#define STORE(m, n, v) STORE_BIAS_ACT(m, n, v)
#include "gemm.cl"

/* -- conv2d_backward_input -------------------------------------------------------------- */
/* B(k = (kh, kw, f), n = c) = kernel[kh, kw, c, f]. */
#define GEMM_NAME conv2d_backward_input
#define GEMM_ARGS __global const float *restrict dz, __global const float *restrict wt, \
                  __global float *restrict dx, CONV_GEOM
#define A_AT(m, k) conv_tap(dz, m, k, CONV_GEOM_NAMES)
#define A_VLOAD(m, k) conv_tap_v(dz, m, k, CONV_GEOM_NAMES)
#define A_K_CONTIG 1
#define B_AT(k, n) wt[((size_t)((k) / F) * C + (n)) * F + (k) % F]
#define B_VLOAD(k, n) VREAD(VWB, wt + ((size_t)((k) / F) * C + (n)) * F + (k) % F)
#define B_N_CONTIG 0
#define STORE(m, n, v) dx[(size_t)(m) * N + (n)] = (v)
#include "gemm.cl"

/* -- conv2d_backward_weight ------------------------------------------------------------- */
#define GEMM_NAME conv2d_backward_weight
#define GEMM_ARGS __global const float *restrict x, __global const float *restrict dz, \
                  __global float *restrict dw_out, CONV_GEOM
#define A_AT(m, k) conv_patch(x, k, m, CONV_GEOM_NAMES)
#define A_VLOAD(m, k) conv_patch_v(x, k, m, CONV_GEOM_NAMES)
#define A_K_CONTIG 0
#define B_AT(k, n) dz[(size_t)(k) * N + (n)]
#define B_VLOAD(k, n) VREAD(VWB, dz + (size_t)(k) * N + (n))
#define B_N_CONTIG 1
#define STORE(m, n, v) dw_out[((size_t)split * M + (m)) * N + (n)] = (v)
#include "gemm.cl"
