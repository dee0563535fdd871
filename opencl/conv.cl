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

/* -- index tables ----------------------------------------------------------------------
 * Decomposing a flat row / column index costs four integer divisions by runtime values,
 * per element in conv_patch / conv_tap. The kernels below decompose each pixel and each tap
 * of a tile once instead, into __local tables (gemm.cl's GEMM_PROLOGUE for the tile's rows,
 * fixed over the K loop, and GEMM_SLICE_PREP for the K slice's columns), and the loaders
 * only add table entries. Entries past the matrix edge are left unset: never read.
 * pix_*: an output pixel m = (n, ho, wo) of a patch row: n * H, ho * sh - ph, wo * sw - pw;
 *        or an input pixel m = (n, h, w) of a tap row: n * HO, h + ph, w + pw.
 * tap_*: a tap k = (kh, kw, c|f): c|f, kh * dh, kw * dw, and (kh * KW + kw) * C * F + f for
 *        the kernel reads of backward_input. */
#define CONV_TABLES(PIX, TAP)                                                        \
    __local int pix_n[PIX], pix_h[PIX], pix_w[PIX];                                  \
    __local int tap_c[TAP], tap_h[TAP], tap_w[TAP], tap_wt[TAP];

#define CONV_FILL_OUT_PIX(count, first, limit)                                       \
    for (int i_ = tid; i_ < (count); i_ += WG_ITEMS) {                               \
        const int p_ = (first) + i_;                                                 \
        if (p_ < (limit)) {                                                          \
            const int wo_ = p_ % WO, r_ = p_ / WO;                                   \
            pix_n[i_] = (r_ / HO) * H;                                               \
            pix_h[i_] = (r_ % HO) * sh - ph;                                         \
            pix_w[i_] = wo_ * sw - pw;                                               \
        }                                                                            \
    }

#define CONV_FILL_IN_PIX(count, first, limit)                                        \
    for (int i_ = tid; i_ < (count); i_ += WG_ITEMS) {                               \
        const int p_ = (first) + i_;                                                 \
        if (p_ < (limit)) {                                                          \
            const int w_ = p_ % W, r_ = p_ / W;                                      \
            pix_n[i_] = (r_ / H) * HO;                                               \
            pix_h[i_] = r_ % H + ph;                                                 \
            pix_w[i_] = w_ + pw;                                                     \
        }                                                                            \
    }

/* CH: the channel count of the tap's innermost index (C for patches, F for taps). */
#define CONV_FILL_TAP(count, first, limit, CH)                                       \
    for (int i_ = tid; i_ < (count); i_ += WG_ITEMS) {                               \
        const int t_ = (first) + i_;                                                 \
        if (t_ < (limit)) {                                                          \
            const int c_ = t_ % (CH), s_ = t_ / (CH);                                \
            tap_c[i_] = c_;                                                          \
            tap_h[i_] = (s_ / KW) * dh;                                              \
            tap_w[i_] = (s_ % KW) * dw;                                              \
            tap_wt[i_] = s_ * C * F + c_;                                            \
        }                                                                            \
    }

/* Patch element from table entries: p = pixel slot, t = tap slot. */
#define CONV_PATCH_OFS(p, t)                                                         \
    ((((size_t)pix_n[p] + pix_h[p] + tap_h[t]) * W + pix_w[p] + tap_w[t]) * C + tap_c[t])
#define CONV_PATCH_IN(p, t)                                                          \
    ((uint)(pix_h[p] + tap_h[t]) < (uint)H && (uint)(pix_w[p] + tap_w[t]) < (uint)W)

/* dz element for an input pixel slot p and a tap slot t (conv_tap from table entries). */
float conv_tap_at(__global const float *restrict dz, const int n_ho, const int hh, const int ww,
                  const int f, const int HO, const int WO, const int F, const int sh,
                  const int sw)
{
    if (hh < 0 || ww < 0)
        return 0.0f;
    /* Stride 1 is the common case: skip its divisions. */
    const int ho = sh == 1 ? hh : hh / sh, wo = sw == 1 ? ww : ww / sw;
    if (ho * sh != hh || wo * sw != ww || ho >= HO || wo >= WO)
        return 0.0f;
    return dz[(((size_t)n_ho + ho) * WO + wo) * F + f];
}

FLOATN(VWA) conv_tap_at_v(__global const float *restrict dz, const int n_ho, const int hh,
                          const int ww, const int f, const int HO, const int WO, const int F,
                          const int sh, const int sw)
{
    if (hh < 0 || ww < 0)
        return (FLOATN(VWA))(0.0f);
    const int ho = sh == 1 ? hh : hh / sh, wo = sw == 1 ? ww : ww / sw;
    if (ho * sh != hh || wo * sw != ww || ho >= HO || wo >= WO)
        return (FLOATN(VWA))(0.0f);
    return VREAD(VWA, dz + (((size_t)n_ho + ho) * WO + wo) * F + f);
}
#define CONV_TAP_AT(p, t)                                                            \
    conv_tap_at(dz, pix_n[p], pix_h[p] - tap_h[t], pix_w[p] - tap_w[t], tap_c[t], HO, WO, F, \
                sh, sw)
#define CONV_TAP_AT_V(p, t)                                                          \
    conv_tap_at_v(dz, pix_n[p], pix_h[p] - tap_h[t], pix_w[p] - tap_w[t], tap_c[t], HO, WO, \
                  F, sh, sw)

/* -- conv2d_forward --------------------------------------------------------------------- */
#define GEMM_NAME conv2d_forward
#define GEMM_ARGS __global const float *restrict x, __global const float *restrict wt, \
                  __global const float *restrict bias, __global float *restrict y,      \
                  __global float *restrict z, const int act, const float alpha, CONV_GEOM
#define A_AT(m, k) conv_patch(x, m, k, CONV_GEOM_NAMES)
#define A_VLOAD(m, k) conv_patch_v(x, m, k, CONV_GEOM_NAMES)
#define A_AT_LOCAL(m, k, lm, lk) (CONV_PATCH_IN(lm, lk) ? x[CONV_PATCH_OFS(lm, lk)] : 0.0f)
#define A_VLOAD_LOCAL(m, k, lm, lk) \
    (CONV_PATCH_IN(lm, lk) ? VREAD(VWA, x + CONV_PATCH_OFS(lm, lk)) : (FLOATN(VWA))(0.0f))
#define GEMM_PROLOGUE CONV_TABLES(MWG, KWG) CONV_FILL_OUT_PIX(MWG, m0, M)
#define GEMM_SLICE_PREP CONV_FILL_TAP(KWG, k0, k_end, C)
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
#define A_AT_LOCAL(m, k, lm, lk) CONV_TAP_AT(lm, lk)
#define A_VLOAD_LOCAL(m, k, lm, lk) CONV_TAP_AT_V(lm, lk)
#define B_AT_LOCAL(k, n, lk, ln) wt[(size_t)tap_wt[lk] + (size_t)(n) * F]
#define B_VLOAD_LOCAL(k, n, lk, ln) VREAD(VWB, wt + (size_t)tap_wt[lk] + (size_t)(n) * F)
#define GEMM_PROLOGUE CONV_TABLES(MWG, KWG) CONV_FILL_IN_PIX(MWG, m0, M)
#define GEMM_SLICE_PREP CONV_FILL_TAP(KWG, k0, k_end, F)
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
#define A_AT_LOCAL(m, k, lm, lk) (CONV_PATCH_IN(lk, lm) ? x[CONV_PATCH_OFS(lk, lm)] : 0.0f)
#define A_VLOAD_LOCAL(m, k, lm, lk) \
    (CONV_PATCH_IN(lk, lm) ? VREAD(VWA, x + CONV_PATCH_OFS(lk, lm)) : (FLOATN(VWA))(0.0f))
#define GEMM_PROLOGUE CONV_TABLES(KWG, MWG) CONV_FILL_TAP(MWG, m0, M, C)
#define GEMM_SLICE_PREP CONV_FILL_OUT_PIX(KWG, k0, k_end)
#define A_K_CONTIG 0
#define B_AT(k, n) dz[(size_t)(k) * N + (n)]
#define B_VLOAD(k, n) VREAD(VWB, dz + (size_t)(k) * N + (n))
#define B_N_CONTIG 1
#define STORE(m, n, v) dw_out[((size_t)split * M + (m)) * N + (n)] = (v)
#include "gemm.cl"

/* -- conv2d_transpose (issue 12) ------------------------------------------------------------
 * Conv2DTranspose runs on the kernels above: its output is conv2d_backward_input of a 'valid'
 * conv whose input is the full transposed output (HS, WS), its backward that conv's forward
 * and weight gradient. This kernel moves the window between the two sizes: y[n, o, p, c] =
 * src[n, o + top, p + left, c] where that lies in src, else 0 (Keras's crop, and the rows an
 * output_padding adds past the full output), then bias + activation as STORE_BIAS_ACT. With
 * negative offsets, no bias and ACT_LINEAR it puts a gradient back into the full size. */
__kernel void conv2d_transpose_window(__global const float *restrict src,
                                      __global const float *restrict bias,
                                      __global float *restrict y, __global float *restrict z,
                                      const int act, const float alpha, const int N,
                                      const int HS, const int WS, const int C, const int HO,
                                      const int WO, const int top, const int left)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * HO * WO * C);
    const int c = gid % C;
    int t = gid / C;
    const int wo = t % WO;
    t /= WO;
    const int ho = t % HO;
    const int n = t / HO;
    const int h = ho + top, w = wo + left;
    float v = (h >= 0 && h < HS && w >= 0 && w < WS)
                  ? src[(((size_t)n * HS + h) * WS + w) * C + c]
                  : 0.0f;
    v += bias ? bias[c] : 0.0f;
    if (z)
        z[gid] = v;
    y[gid] = act_value(v, act, alpha);
}
