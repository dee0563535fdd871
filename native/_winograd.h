/* Winograd F(2x2, 3x3) and F(4x4, 3x3) (at the end) for a 3x3, stride-1, dilation-1 float32
 * convolution (native/conv.pyx).
 *
 * Legend: C input channels, F filters, HP/WP the zero-padded input the conv reads (an output
 * pixel (h, w) reads rows h..h+2, columns w..w+2 of it), HO = HP - 2, WO = WP - 2, TH/TW
 * tiles down/across (ceil(HO/2), ceil(WO/2)), T tiles per block, t a tile's index in
 * (n, th, tw) order.
 *
 * A tile is 2x2 output pixels, read from the 4x4 input patch at (2*th, 2*tw). With
 *     B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]      (input transform, d -> B^T d B)
 *     G   = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]           (kernel transform, g -> G g G^T)
 *     A^T = [1 1 1 0; 0 1 -1 -1]                          (output transform, m -> A^T m A)
 * the conv of the patch is A^T [(G g G^T) .* (B^T d B)] A, and summed over channels the
 * element-wise product is, for each of the 16 positions k, one GEMM
 *     M[k] (T x F) = V[k] (T x C) @ U[k] (C x F)
 * 16 GEMMs of C multiply-adds per tile and filter instead of 4 pixels x 9 taps = 36: 2.25x
 * fewer. Every constant is 0, +-1 or +-1/2 (the 1/2 lives in U, made in double by
 * pynn_wino_kernel_f and rounded once), so the transforms add at most 4 (input) and 9
 * (output) terms in float32: the rounding stays within a few ulps of the sum of |terms|
 * (see tests/test_conv_winograd.py; measured there below 1.2e-7 of it, direct below 2.4e-7:
 * each GEMM sums C products, not direct's 9*C).
 *
 * One block of T consecutive tiles per call (the caller's prange hands blocks out): V and M
 * are the calling thread's buffers of 16*T*C and 16*T*F floats, sized by the caller to stay
 * in L2 together; element (k, i, c) of V at k*ks + i*rs (M likewise), the caller's layout.
 * The transforms loop over channels innermost (contiguous in NHWC), which GCC vectorizes;
 * the GEMMs run on the register-blocked microkernel (_microkernel.h) with U packed into its
 * column panels. */
#ifndef PYNN_WINOGRAD_H
#define PYNN_WINOGRAD_H

#include "_microkernel.h"

/* Pixel (h, w) of the zero-padded input the conv reads (HP x WP, the source x of H x W at
   (top, left) in it) for image n: a pointer into x, or `zeros` where the padded input holds
   zeros or the patch runs past it. The transforms read x in place, so no padded copy is
   made (a copy of a 32x32x32 batch of 32 was a pass over 8 MiB and a region of its own). */
static inline const float* pynn_wino_pixel(const float* x, Py_ssize_t H, Py_ssize_t W,
                                           Py_ssize_t top, Py_ssize_t left, Py_ssize_t HP,
                                           Py_ssize_t WP, Py_ssize_t C, Py_ssize_t n,
                                           Py_ssize_t h, Py_ssize_t w, const float* zeros) {
    Py_ssize_t hx = h - top, wx = w - left;
    if (h >= HP || w >= WP || hx < 0 || hx >= H || wx < 0 || wx >= W) return zeros;
    return x + ((n * H + hx) * W + wx) * C;
}

/* V[k][i][c] (k = 4*r + s, i < nt) = (B^T d B)[r][s] of channel c of tile t0 + i, d the
   tile's 4x4 patch of the padded input (see pynn_wino_pixel). */
static void pynn_wino_input_f(const float* x, Py_ssize_t H, Py_ssize_t W, Py_ssize_t top,
                              Py_ssize_t left, Py_ssize_t HP, Py_ssize_t WP, Py_ssize_t C,
                              Py_ssize_t TH, Py_ssize_t TW, Py_ssize_t t0, Py_ssize_t nt,
                              Py_ssize_t ks, Py_ssize_t rs, const float* zeros,
                              float* restrict V) {
    Py_ssize_t i, c, r, s, TT = TH * TW;
    for (i = 0; i < nt; i++) {
        const float* p[4][4];
        Py_ssize_t t = t0 + i, n = t / TT, th = (t % TT) / TW, tw = t % TW;
        for (r = 0; r < 4; r++) for (s = 0; s < 4; s++)
            p[r][s] = pynn_wino_pixel(x, H, W, top, left, HP, WP, C, n, 2 * th + r, 2 * tw + s,
                                      zeros);
        float* restrict v = V + i * rs;
#pragma GCC ivdep
        for (c = 0; c < C; c++) {
            float d[4][4], e[4][4];
            for (r = 0; r < 4; r++) for (s = 0; s < 4; s++) d[r][s] = p[r][s][c];
            for (s = 0; s < 4; s++) {   /* B^T d */
                e[0][s] = d[0][s] - d[2][s];
                e[1][s] = d[1][s] + d[2][s];
                e[2][s] = d[2][s] - d[1][s];
                e[3][s] = d[1][s] - d[3][s];
            }
            for (r = 0; r < 4; r++) {   /* (B^T d) B */
                v[(4 * r + 0) * ks + c] = e[r][0] - e[r][2];
                v[(4 * r + 1) * ks + c] = e[r][1] + e[r][2];
                v[(4 * r + 2) * ks + c] = e[r][2] - e[r][1];
                v[(4 * r + 3) * ks + c] = e[r][1] - e[r][3];
            }
        }
    }
}

/* z[pixel] = (A^T M A) + bias for the 2x2 pixels of tiles t0 .. t0+nt-1 that lie inside
   (HO, WO): M[k][i][f] as pynn_wino_gemm_f leaves it. bias is never NULL (the caller
   passes zeros): with `bias ? bias[f] : 0` GCC made a masked load from the NULL address,
   whose fault suppression took a microcode assist on every vector on Zen 4 (a third of
   the whole forward of a 32 -> 32 channel layer). */
static void pynn_wino_output_f(const float* M, Py_ssize_t ks, Py_ssize_t rs, Py_ssize_t F,
                               const float* bias, Py_ssize_t TH, Py_ssize_t TW, Py_ssize_t HO,
                               Py_ssize_t WO, Py_ssize_t t0, Py_ssize_t nt,
                               float* restrict z) {
    Py_ssize_t i, f, TT = TH * TW;
    for (i = 0; i < nt; i++) {
        Py_ssize_t t = t0 + i, n = t / TT, th = (t % TT) / TW, tw = t % TW;
        Py_ssize_t h = 2 * th, w = 2 * tw;
        int down = h + 1 < HO, right = w + 1 < WO;
        const float* m = M + i * rs;
        float* z00 = z + ((n * HO + h) * WO + w) * F;
        float* z01 = z00 + F;
        float* z10 = z00 + WO * F;
        float* z11 = z10 + F;
        float y[2][2][64];   /* one stretch of up to 64 filters at a time */
        Py_ssize_t f0, fn, r;
        for (f0 = 0; f0 < F; f0 += 64) {
            fn = F - f0 < 64 ? F - f0 : 64;
#pragma GCC ivdep
            for (f = 0; f < fn; f++) {
                float a[4][4], q[2][4];
                Py_ssize_t k;
                for (k = 0; k < 16; k++) a[k / 4][k % 4] = m[k * ks + f0 + f];
                for (k = 0; k < 4; k++) {   /* A^T m */
                    q[0][k] = a[0][k] + a[1][k] + a[2][k];
                    q[1][k] = a[1][k] - a[2][k] - a[3][k];
                }
                float b = bias[f0 + f];
                for (r = 0; r < 2; r++) {   /* (A^T m) A */
                    y[r][0][f] = q[r][0] + q[r][1] + q[r][2] + b;
                    y[r][1][f] = q[r][1] - q[r][2] - q[r][3] + b;
                }
            }
            for (f = 0; f < fn; f++) z00[f0 + f] = y[0][0][f];
            if (right) for (f = 0; f < fn; f++) z01[f0 + f] = y[0][1][f];
            if (down) for (f = 0; f < fn; f++) z10[f0 + f] = y[1][0][f];
            if (down && right) for (f = 0; f < fn; f++) z11[f0 + f] = y[1][1][f];
        }
    }
}

/* U[k][c][f] (k = 4*r + s) = (G g G^T)[r][s] of the 3x3 slice g = kernel[:, :, c, f]
   (kernel (3, 3, C, F) row-major), in double and rounded once; G's 1/2 makes no error. */
static void pynn_wino_kernel_f(const float* kernel, Py_ssize_t C, Py_ssize_t F,
                               float* restrict U) {
    Py_ssize_t cf, CF = C * F;
    int i, j;
#pragma GCC ivdep
    for (cf = 0; cf < CF; cf++) {
        double g[3][3], t[4][3];
        for (i = 0; i < 3; i++)
            for (j = 0; j < 3; j++) g[i][j] = kernel[(3 * i + j) * CF + cf];
        for (j = 0; j < 3; j++) {   /* G g */
            t[0][j] = g[0][j];
            t[1][j] = 0.5 * (g[0][j] + g[1][j] + g[2][j]);
            t[2][j] = 0.5 * (g[0][j] - g[1][j] + g[2][j]);
            t[3][j] = g[2][j];
        }
        for (i = 0; i < 4; i++) {   /* (G g) G^T */
            U[(4 * i + 0) * CF + cf] = (float)t[i][0];
            U[(4 * i + 1) * CF + cf] = (float)(0.5 * (t[i][0] + t[i][1] + t[i][2]));
            U[(4 * i + 2) * CF + cf] = (float)(0.5 * (t[i][0] - t[i][1] + t[i][2]));
            U[(4 * i + 3) * CF + cf] = (float)t[i][2];
        }
    }
}

/* M[k] (nt x F) = V[k] (nt x C) @ U[k] for the nk k (16 for F(2x2, 3x3), 36 for F(4x4,
   3x3)): element (k, i, c) of V at V + k*ksv + i*rsv (roff[i] = i*rsv for i < nt), (k, i, f)
   of M at M + k*ksm + i*rsm; U packed per k into the microkernel's column panels of nc
   (pynn_pack_panels_f on each (C, F) slice, slice k at Up + k*C*F). */
static void pynn_wino_gemm_f(const float* V, Py_ssize_t ksv, const float* Up, float* M,
                             Py_ssize_t ksm, Py_ssize_t rsm, Py_ssize_t nt, Py_ssize_t C,
                             Py_ssize_t F, Py_ssize_t nc, const Py_ssize_t* roff, int nk) {
    Py_ssize_t k, q0, zero = 0;
    for (k = 0; k < nk; k++) {
        for (q0 = 0; q0 < F; q0 += nc) {
            Py_ssize_t wd = F - q0 < nc ? F - q0 : nc;
            pynn_seg_gemm_f(nt, wd, 1, C, V + k * ksv, roff, &zero, 1,
                            Up + k * C * F + q0 * C, &zero, wd, M + k * ksm + q0, rsm,
                            (const float*)0, 0, 0);
        }
    }
}

/* Kernel gradient. With Y = A^T [U .* V] A per tile and U = G g G^T,
 *     dL/dU[k] (C x F) = sum over tiles t of V[t][k]^T (C) x W[t][k] (F),  W = A dY A^T,
 *     dL/dg = G^T dL/dU G,
 * dY being a tile's 2x2 output gradient (zero past HO, WO) and V the forward's input
 * transform (pynn_wino_input_f). The same 16 GEMMs, now reducing over tiles. */

/* W[k][i][f] (k = 4*r + s) = (A dY A^T)[r][s] of filter f of tile t0 + i, where dY pixel
   (n, h, w) sits at dz + n*sn + h*sh + w*F (so dz may live inside a padded buffer); pixels
   past (HO, WO) read `zeros` (F floats of 0). A = [1 0; 1 1; 1 -1; 0 -1]. */
static void pynn_wino_dout_f(const float* dz, Py_ssize_t sn, Py_ssize_t sh, Py_ssize_t HO,
                             Py_ssize_t WO, Py_ssize_t F, Py_ssize_t TH, Py_ssize_t TW,
                             Py_ssize_t t0, Py_ssize_t nt, Py_ssize_t ks, Py_ssize_t rs,
                             const float* zeros, float* restrict W) {
    Py_ssize_t i, f, r, s, TT = TH * TW;
    for (i = 0; i < nt; i++) {
        const float* p[2][2];
        Py_ssize_t t = t0 + i, n = t / TT, th = (t % TT) / TW, tw = t % TW;
        for (r = 0; r < 2; r++) for (s = 0; s < 2; s++) {
            Py_ssize_t h = 2 * th + r, w = 2 * tw + s;
            p[r][s] = (h < HO && w < WO) ? dz + n * sn + h * sh + w * F : zeros;
        }
        float* restrict o = W + i * rs;
#pragma GCC ivdep
        for (f = 0; f < F; f++) {
            float e[4][2];
            for (s = 0; s < 2; s++) {   /* A dY */
                float y0 = p[0][s][f], y1 = p[1][s][f];
                e[0][s] = y0;
                e[1][s] = y0 + y1;
                e[2][s] = y0 - y1;
                e[3][s] = -y1;
            }
            for (r = 0; r < 4; r++) {   /* (A dY) A^T */
                o[(4 * r + 0) * ks + f] = e[r][0];
                o[(4 * r + 1) * ks + f] = e[r][0] + e[r][1];
                o[(4 * r + 2) * ks + f] = e[r][0] - e[r][1];
                o[(4 * r + 3) * ks + f] = -e[r][1];
            }
        }
    }
}

/* dU[k] (C x F, row-major, slice k at dU + k*C*F) (+)= V[k]^T @ W[k] over nt tiles for the
   nk k: V element (k, i, c) at V + k*ksv + i*rsv, W's (k, i, f) at W + k*ksw + i*rsw;
   roff[c] = c (C entries). accum: add to dU, else overwrite it. Each dU element sums its
   tiles in tile order (the microkernel's fixed order), whatever the row blocking. */
static void pynn_wino_wgrad_gemm_f(const float* V, Py_ssize_t ksv, Py_ssize_t rsv,
                                   const float* W, Py_ssize_t ksw, Py_ssize_t rsw,
                                   float* dU, Py_ssize_t nt, Py_ssize_t C, Py_ssize_t F,
                                   Py_ssize_t nc, const Py_ssize_t* roff, int accum,
                                   int nk) {
    Py_ssize_t k, q0, zero = 0;
    for (k = 0; k < nk; k++) {
        for (q0 = 0; q0 < F; q0 += nc) {
            Py_ssize_t wd = F - q0 < nc ? F - q0 : nc;
            pynn_seg_gemm_f(C, wd, 1, nt, V + k * ksv, roff, &zero, rsv, W + k * ksw + q0,
                            &zero, rsw, dU + k * C * F + q0, F, (const float*)0, accum, 0);
        }
    }
}

/* dkernel[:, :, c, f] (kernel layout (3, 3, C, F)) = G^T (sum of the S partials dU_s) G for
   the channels c0 <= c < c1: partial s at part + s*16*C*F, added in slab order and
   transformed in double, rounded once. G^T = [1 .5 .5 0; 0 .5 -.5 0; 0 .5 .5 1]. A stretch
   of up to 64 (c, f) pairs at a time, the slab sums first, then the transform on named
   scalars that GCC vectorizes across the stretch (with loops over the 4x4 sums it ran
   scalar: a sixth of a 128 -> 128 channel kernel gradient at 8x8). */
#define PYNN_W2_GT(o0, o1, o2, i0, i1, i2, i3) \
    o0 = i0 + 0.5 * (i1 + i2);                 \
    o1 = 0.5 * (i1 - i2);                      \
    o2 = 0.5 * (i1 + i2) + i3;

static void pynn_wino_kernel_grad_f(const float* part, Py_ssize_t S, Py_ssize_t C,
                                    Py_ssize_t F, Py_ssize_t c0, Py_ssize_t c1,
                                    float* restrict dkernel) {
    Py_ssize_t cf0, s, j, n, CF = C * F, end = c1 * F;
    int k;
    double acc[16][64];
    for (cf0 = c0 * F; cf0 < end; cf0 += 64) {
        n = end - cf0 < 64 ? end - cf0 : 64;
        for (k = 0; k < 16; k++) {
            const float* p0 = part + k * CF + cf0;
            for (j = 0; j < n; j++) acc[k][j] = p0[j];
            for (s = 1; s < S; s++) {
                const float* ps = part + s * 16 * CF + k * CF + cf0;
                for (j = 0; j < n; j++) acc[k][j] += ps[j];
            }
        }
        float* restrict d = dkernel + cf0;
#pragma GCC ivdep
        for (j = 0; j < n; j++) {
            double t00, t10, t20, t01, t11, t21, t02, t12, t22, t03, t13, t23, o0, o1, o2;
            PYNN_W2_GT(t00, t10, t20, acc[0][j], acc[4][j], acc[8][j], acc[12][j])   /* G^T dU */
            PYNN_W2_GT(t01, t11, t21, acc[1][j], acc[5][j], acc[9][j], acc[13][j])
            PYNN_W2_GT(t02, t12, t22, acc[2][j], acc[6][j], acc[10][j], acc[14][j])
            PYNN_W2_GT(t03, t13, t23, acc[3][j], acc[7][j], acc[11][j], acc[15][j])
            PYNN_W2_GT(o0, o1, o2, t00, t01, t02, t03)                               /* (.) G */
            d[j] = (float)o0;
            d[CF + j] = (float)o1;
            d[2 * CF + j] = (float)o2;
            PYNN_W2_GT(o0, o1, o2, t10, t11, t12, t13)
            d[3 * CF + j] = (float)o0;
            d[4 * CF + j] = (float)o1;
            d[5 * CF + j] = (float)o2;
            PYNN_W2_GT(o0, o1, o2, t20, t21, t22, t23)
            d[6 * CF + j] = (float)o0;
            d[7 * CF + j] = (float)o1;
            d[8 * CF + j] = (float)o2;
        }
    }
}

/* -- F(4x4, 3x3) ------------------------------------------------------------------------
 * A tile is 4x4 output pixels from the 6x6 input patch at (4*th, 4*tw); 36 GEMMs of C
 * multiply-adds per tile and filter instead of 16 pixels x 9 taps = 144: 4x fewer (F(2x2,
 * 3x3): 2.25x), and 36 transformed values per 16 pixels (F(2x2, 3x3): 16 per 4). Toom-Cook
 * on the points 0, 1, -1, 2, -1/2 and infinity (the set with the smallest float32 error of
 * those tried; -2 in place of -1/2 errs 2.3x more):
 *   B^T = [1 3/2 -2 -3/2 1 0; 0 -1 -5/2 -1/2 1 0; 0 1 1/2 -5/2 1 0;
 *          0 -1/2 -1 1/2 1 0; 0 2 -1 -2 1 0; 0 1 3/2 -2 -3/2 1]
 *   G   = [1 0 0; -1/3 -1/3 -1/3; 1/3 -1/3 1/3; 1/15 2/15 4/15; -16/15 8/15 -4/15; 0 0 1]
 *   A^T = [1 1 1 1 1 0; 0 1 -1 2 -1/2 0; 0 1 1 4 1/4 0; 0 1 -1 8 -1/8 1]
 * B^T's and A^T's entries are exact in float32, G's thirds and fifteenths live in U (made in
 * double, rounded once). Measured against float64 on 32 and 64 channels: max |error| 5.3e-7
 * of max conv(|x|, |k|), 4.5x F(2x2, 3x3)'s (tests/test_conv_winograd.py). */

/* The 1-D transforms as statements on named scalars (GCC unrolls no 6x6 loop nest inside
   the channel loop it vectorizes: with loops and small arrays the transforms ran scalar, 5x
   slower than F(2x2, 3x3)'s). */
#define PYNN_W4_BT(o0, o1, o2, o3, o4, o5, i0, i1, i2, i3, i4, i5) \
    o0 = i0 + 1.5f * i1 - 2.0f * i2 - 1.5f * i3 + i4;                \
    o1 = -i1 - 2.5f * i2 - 0.5f * i3 + i4;                           \
    o2 = i1 + 0.5f * i2 - 2.5f * i3 + i4;                            \
    o3 = -0.5f * i1 - i2 + 0.5f * i3 + i4;                           \
    o4 = 2.0f * i1 - i2 - 2.0f * i3 + i4;                            \
    o5 = i1 + 1.5f * i2 - 2.0f * i3 - 1.5f * i4 + i5;
#define PYNN_W4_AT(o0, o1, o2, o3, i0, i1, i2, i3, i4, i5) \
    o0 = i0 + i1 + i2 + i3 + i4;                          \
    o1 = i1 - i2 + 2.0f * i3 - 0.5f * i4;                 \
    o2 = i1 + i2 + 4.0f * i3 + 0.25f * i4;                \
    o3 = i1 - i2 + 8.0f * i3 - 0.125f * i4 + i5;
#define PYNN_W4_A(o0, o1, o2, o3, o4, o5, i0, i1, i2, i3) \
    o0 = i0;                                             \
    o1 = i0 + i1 + i2 + i3;                              \
    o2 = i0 - i1 + i2 - i3;                              \
    o3 = i0 + 2.0f * i1 + 4.0f * i2 + 8.0f * i3;         \
    o4 = i0 - 0.5f * i1 + 0.25f * i2 - 0.125f * i3;      \
    o5 = i3;
/* Six values into column s of a tile's 6x6 rows (k = 6*r + s, row stride ks), or into one
   row's six consecutive positions, at element i. */
#define PYNN_W4_STORE_COL(o, ks, s, i, x0, x1, x2, x3, x4, x5) \
    o[(s) * ks + i] = x0;                                      \
    o[(6 + (s)) * ks + i] = x1;                                \
    o[(12 + (s)) * ks + i] = x2;                               \
    o[(18 + (s)) * ks + i] = x3;                               \
    o[(24 + (s)) * ks + i] = x4;                               \
    o[(30 + (s)) * ks + i] = x5;
#define PYNN_W4_STORE_ROW(q, ks, i, x0, x1, x2, x3, x4, x5) \
    q[i] = x0;                                              \
    q[ks + i] = x1;                                         \
    q[2 * ks + i] = x2;                                     \
    q[3 * ks + i] = x3;                                     \
    q[4 * ks + i] = x4;                                     \
    q[5 * ks + i] = x5;

/* V[k][i][c] (k = 6*r + s, i < nt) = (B^T d B)[r][s] of channel c of tile t0 + i, d the
   tile's 6x6 patch of the padded input (see pynn_wino_pixel). */
static void pynn_wino4_input_f(const float* x, Py_ssize_t H, Py_ssize_t W, Py_ssize_t top,
                               Py_ssize_t left, Py_ssize_t HP, Py_ssize_t WP, Py_ssize_t C,
                               Py_ssize_t TH, Py_ssize_t TW, Py_ssize_t t0, Py_ssize_t nt,
                               Py_ssize_t ks, Py_ssize_t rs, const float* zeros,
                               float* restrict V) {
    Py_ssize_t i, c, r, s, TT = TH * TW;
    for (i = 0; i < nt; i++) {
        const float* p[36];
        Py_ssize_t t = t0 + i, n = t / TT, th = (t % TT) / TW, tw = t % TW;
        for (r = 0; r < 6; r++) for (s = 0; s < 6; s++)
            p[6 * r + s] = pynn_wino_pixel(x, H, W, top, left, HP, WP, C, n, 4 * th + r,
                                           4 * tw + s, zeros);
        float* restrict v = V + i * rs;
        /* B^T d: column s of the patch into V's rows k = 6*r + s, finished in place by the
           row pass below. */
        for (s = 0; s < 6; s++) {
            const float *a0 = p[s], *a1 = p[6 + s], *a2 = p[12 + s], *a3 = p[18 + s],
                        *a4 = p[24 + s], *a5 = p[30 + s];
#pragma GCC ivdep
            for (c = 0; c < C; c++) {
                float x0, x1, x2, x3, x4, x5;
                PYNN_W4_BT(x0, x1, x2, x3, x4, x5, a0[c], a1[c], a2[c], a3[c], a4[c], a5[c])
                PYNN_W4_STORE_COL(v, ks, s, c, x0, x1, x2, x3, x4, x5)
            }
        }
        /* (B^T d) B: each row r of e in place. */
        for (r = 0; r < 6; r++) {
            float* restrict q = v + 6 * r * ks;
#pragma GCC ivdep
            for (c = 0; c < C; c++) {
                float y0, y1, y2, y3, y4, y5;
                PYNN_W4_BT(y0, y1, y2, y3, y4, y5, q[c], q[ks + c], q[2 * ks + c],
                           q[3 * ks + c], q[4 * ks + c], q[5 * ks + c])
                PYNN_W4_STORE_ROW(q, ks, c, y0, y1, y2, y3, y4, y5)
            }
        }
    }
}

/* z[pixel] = (A^T M A) + bias for the 4x4 pixels of tiles t0 .. t0+nt-1 that lie inside
   (HO, WO), M[k][i][f] as pynn_wino_gemm_f leaves it; bias never NULL (see
   pynn_wino_output_f). M's block is the thread's own scratch: the column pass writes its
   4 x 6 intermediate into M's first 24 rows. */
static void pynn_wino4_output_f(float* M, Py_ssize_t ks, Py_ssize_t rs, Py_ssize_t F,
                                const float* bias, Py_ssize_t TH, Py_ssize_t TW,
                                Py_ssize_t HO, Py_ssize_t WO, Py_ssize_t t0, Py_ssize_t nt,
                                float* restrict z) {
    Py_ssize_t i, f, s, TT = TH * TW;
    for (i = 0; i < nt; i++) {
        Py_ssize_t t = t0 + i, n = t / TT, th = (t % TT) / TW, tw = t % TW;
        Py_ssize_t h = 4 * th, w = 4 * tw, r, q;
        Py_ssize_t rows = HO - h < 4 ? HO - h : 4, cols = WO - w < 4 ? WO - w : 4;
        float* restrict m = M + i * rs;
        float* z0 = z + ((n * HO + h) * WO + w) * F;
        /* A^T m, column by column, into rows 6*r + s of m (r < 4): row k of m is read
           before any row at or above it is written. */
        for (s = 0; s < 6; s++) {
#pragma GCC ivdep
            for (f = 0; f < F; f++) {
                float o0, o1, o2, o3;
                PYNN_W4_AT(o0, o1, o2, o3, m[s * ks + f], m[(6 + s) * ks + f],
                           m[(12 + s) * ks + f], m[(18 + s) * ks + f], m[(24 + s) * ks + f],
                           m[(30 + s) * ks + f])
                m[s * ks + f] = o0;
                m[(6 + s) * ks + f] = o1;
                m[(12 + s) * ks + f] = o2;
                m[(18 + s) * ks + f] = o3;
            }
        }
        /* (A^T m) A + bias, row by row, straight into the pixels inside the output. */
        for (r = 0; r < rows; r++) {
            const float* e = m + 6 * r * ks;
            float* zr = z0 + r * WO * F;
            if (cols == 4) {
#pragma GCC ivdep
                for (f = 0; f < F; f++) {
                    float o0, o1, o2, o3, b = bias[f];
                    PYNN_W4_AT(o0, o1, o2, o3, e[f], e[ks + f], e[2 * ks + f], e[3 * ks + f],
                               e[4 * ks + f], e[5 * ks + f])
                    zr[f] = o0 + b;
                    zr[F + f] = o1 + b;
                    zr[2 * F + f] = o2 + b;
                    zr[3 * F + f] = o3 + b;
                }
            } else {
                for (f = 0; f < F; f++) {
                    float o[4], b = bias[f];
                    PYNN_W4_AT(o[0], o[1], o[2], o[3], e[f], e[ks + f], e[2 * ks + f],
                               e[3 * ks + f], e[4 * ks + f], e[5 * ks + f])
                    for (q = 0; q < cols; q++) zr[q * F + f] = o[q] + b;
                }
            }
        }
    }
}

/* U[k][c][f] (k = 6*r + s) = (G g G^T)[r][s] of the 3x3 slice g = kernel[:, :, c, f], in
   double and rounded once. */
static void pynn_wino4_kernel_f(const float* kernel, Py_ssize_t C, Py_ssize_t F,
                                float* restrict U) {
    Py_ssize_t cf, CF = C * F;
    int i, j;
#pragma GCC ivdep
    for (cf = 0; cf < CF; cf++) {
        double g[3][3], t[6][3];
        for (i = 0; i < 3; i++)
            for (j = 0; j < 3; j++) g[i][j] = kernel[(3 * i + j) * CF + cf];
        for (j = 0; j < 3; j++) {   /* G g */
            t[0][j] = g[0][j];
            t[1][j] = -(g[0][j] + g[1][j] + g[2][j]) / 3.0;
            t[2][j] = (g[0][j] - g[1][j] + g[2][j]) / 3.0;
            t[3][j] = (g[0][j] + 2.0 * g[1][j] + 4.0 * g[2][j]) / 15.0;
            t[4][j] = (-16.0 * g[0][j] + 8.0 * g[1][j] - 4.0 * g[2][j]) / 15.0;
            t[5][j] = g[2][j];
        }
        for (i = 0; i < 6; i++) {   /* (G g) G^T */
            U[(6 * i + 0) * CF + cf] = (float)t[i][0];
            U[(6 * i + 1) * CF + cf] = (float)(-(t[i][0] + t[i][1] + t[i][2]) / 3.0);
            U[(6 * i + 2) * CF + cf] = (float)((t[i][0] - t[i][1] + t[i][2]) / 3.0);
            U[(6 * i + 3) * CF + cf] = (float)((t[i][0] + 2.0 * t[i][1] + 4.0 * t[i][2]) / 15.0);
            U[(6 * i + 4) * CF + cf] = (float)((-16.0 * t[i][0] + 8.0 * t[i][1]
                                                - 4.0 * t[i][2]) / 15.0);
            U[(6 * i + 5) * CF + cf] = (float)t[i][2];
        }
    }
}

/* W[k][i][f] (k = 6*r + s) = (A dY A^T)[r][s] of filter f of tile t0 + i (A = (A^T)^T),
   dY pixel (n, h, w) at dz + n*sn + h*sh + w*F; pixels past (HO, WO) read `zeros`. */
static void pynn_wino4_dout_f(const float* dz, Py_ssize_t sn, Py_ssize_t sh, Py_ssize_t HO,
                              Py_ssize_t WO, Py_ssize_t F, Py_ssize_t TH, Py_ssize_t TW,
                              Py_ssize_t t0, Py_ssize_t nt, Py_ssize_t ks, Py_ssize_t rs,
                              const float* zeros, float* restrict W) {
    Py_ssize_t i, f, r, s, TT = TH * TW;
    for (i = 0; i < nt; i++) {
        const float* p[16];
        Py_ssize_t t = t0 + i, n = t / TT, th = (t % TT) / TW, tw = t % TW;
        for (r = 0; r < 4; r++) for (s = 0; s < 4; s++) {
            Py_ssize_t h = 4 * th + r, w = 4 * tw + s;
            p[4 * r + s] = (h < HO && w < WO) ? dz + n * sn + h * sh + w * F : zeros;
        }
        float* restrict o = W + i * rs;
        /* A dY, column s of the 4x4 gradient into rows 6*r + s of o. */
        for (s = 0; s < 4; s++) {
            const float *y0 = p[s], *y1 = p[4 + s], *y2 = p[8 + s], *y3 = p[12 + s];
#pragma GCC ivdep
            for (f = 0; f < F; f++) {
                float e0, e1, e2, e3, e4, e5;
                PYNN_W4_A(e0, e1, e2, e3, e4, e5, y0[f], y1[f], y2[f], y3[f])
                PYNN_W4_STORE_COL(o, ks, s, f, e0, e1, e2, e3, e4, e5)
            }
        }
        /* (A dY) A^T, each row r in place (its columns 4 and 5 are written last). */
        for (r = 0; r < 6; r++) {
            float* restrict q = o + 6 * r * ks;
#pragma GCC ivdep
            for (f = 0; f < F; f++) {
                float w0, w1, w2, w3, w4, w5;
                PYNN_W4_A(w0, w1, w2, w3, w4, w5, q[f], q[ks + f], q[2 * ks + f],
                          q[3 * ks + f])
                PYNN_W4_STORE_ROW(q, ks, f, w0, w1, w2, w3, w4, w5)
            }
        }
    }
}

/* dkernel[:, :, c, f] = G^T (sum of the S partials dU_s) G for channels c0 <= c < c1:
   partial s at part + s*36*C*F, added in slab order, transformed in double, rounded once.
   A stretch of up to 64 (c, f) pairs at a time: the slab sums into acc, then the transform
   on named scalars, which GCC vectorizes across the stretch (with loops over the 6x6 sums
   it ran scalar: a fifth of a 64 -> 64 channel kernel gradient). */
#define PYNN_W4_GT(o0, o1, o2, i0, i1, i2, i3, i4, i5)                         \
    o0 = i0 - third * i1 + third * i2 + fifteenth * i3 - 16.0 * fifteenth * i4; \
    o1 = -third * i1 - third * i2 + 2.0 * fifteenth * i3 + 8.0 * fifteenth * i4; \
    o2 = -third * i1 + third * i2 + 4.0 * fifteenth * i3 - 4.0 * fifteenth * i4 + i5;
#define PYNN_W4_GT_COL(b)                                                              \
    PYNN_W4_GT(t0##b, t1##b, t2##b, acc[b][j], acc[6 + b][j], acc[12 + b][j],          \
               acc[18 + b][j], acc[24 + b][j], acc[30 + b][j])

static void pynn_wino4_kernel_grad_f(const float* part, Py_ssize_t S, Py_ssize_t C,
                                     Py_ssize_t F, Py_ssize_t c0, Py_ssize_t c1,
                                     float* restrict dkernel) {
    const double third = 1.0 / 3.0, fifteenth = 1.0 / 15.0;
    Py_ssize_t cf0, s, j, n, CF = C * F, end = c1 * F;
    int k;
    double acc[36][64];
    for (cf0 = c0 * F; cf0 < end; cf0 += 64) {
        n = end - cf0 < 64 ? end - cf0 : 64;
        for (k = 0; k < 36; k++) {
            const float* p0 = part + k * CF + cf0;
            for (j = 0; j < n; j++) acc[k][j] = p0[j];
            for (s = 1; s < S; s++) {
                const float* ps = part + s * 36 * CF + k * CF + cf0;
                for (j = 0; j < n; j++) acc[k][j] += ps[j];
            }
        }
        float* restrict d = dkernel + cf0;
#pragma GCC ivdep
        for (j = 0; j < n; j++) {
            double t00, t10, t20, t01, t11, t21, t02, t12, t22, t03, t13, t23, t04, t14, t24,
                   t05, t15, t25, o0, o1, o2;
            PYNN_W4_GT_COL(0) PYNN_W4_GT_COL(1) PYNN_W4_GT_COL(2)    /* G^T dU */
            PYNN_W4_GT_COL(3) PYNN_W4_GT_COL(4) PYNN_W4_GT_COL(5)
            PYNN_W4_GT(o0, o1, o2, t00, t01, t02, t03, t04, t05)     /* (G^T dU) G */
            d[j] = (float)o0;
            d[CF + j] = (float)o1;
            d[2 * CF + j] = (float)o2;
            PYNN_W4_GT(o0, o1, o2, t10, t11, t12, t13, t14, t15)
            d[3 * CF + j] = (float)o0;
            d[4 * CF + j] = (float)o1;
            d[5 * CF + j] = (float)o2;
            PYNN_W4_GT(o0, o1, o2, t20, t21, t22, t23, t24, t25)
            d[6 * CF + j] = (float)o0;
            d[7 * CF + j] = (float)o1;
            d[8 * CF + j] = (float)o2;
        }
    }
}

#endif
