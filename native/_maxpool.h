/* Max pooling's running winner update, shared by native/pool.pyx's max pooling and
   native/conv.pyx's conv2d_pool_forward (the pooling in a conv's epilogue): one window pixel
   against the running winners of a row of C channels, taken where it is strictly greater,
   or the first NaN (later equal values never replace the winner). Selects and
   unconditional stores, so gcc vectorizes the channel loop; the same update as an if with
   two conditional stores ran scalar on AVX2 (maxpool forward 2x slower). */
#ifndef PYNN_MAXPOOL_H
#define PYNN_MAXPOOL_H

#include <Python.h>
#include <string.h>

#define PYNN_MAX_UPDATE(NAME, T)                                                   \
static inline void NAME(const T* restrict px, T* restrict best, int* restrict arg, \
                        Py_ssize_t C, int idx) {                                   \
    Py_ssize_t c;                                                                  \
    for (c = 0; c < C; c++) {                                                      \
        const T v = px[c], b = best[c];                                            \
        const int take = (v > b) | ((v != v) & (b == b));                          \
        best[c] = take ? v : b;                                                    \
        arg[c] = take ? idx : arg[c];                                              \
    }                                                                              \
}
PYNN_MAX_UPDATE(pynn_max_update_f, float)
PYNN_MAX_UPDATE(pynn_max_update_d, double)

/* One float32 window's winners and their indices, PYNN_MAX_UPDATE's rule over its pixels in
 * row-major order (pixel (h, w) at x + h*wc + w*C, index idx0 + h*idx_row + w; the first
 * seeds), a block of channels' running winners and indices held in registers for the whole
 * window: y and arg are written once. Updating them in memory pixel by pixel (a load, a
 * store and a masked store of the index per pixel) took 0.4 of the small CNN's first
 * conv-and-pool's 1.6 ms (batch 64, one thread, Intel Xeon). Vector blocks where the build
 * has AVX (GCC vector types: compares give all-ones lanes, selects are bit masks), the rule
 * lane by lane elsewhere and for the last channels. */
#if defined(__AVX512F__)
typedef float pynn_wm_vf __attribute__((vector_size(64)));
typedef int pynn_wm_vi __attribute__((vector_size(64)));
#define PYNN_WM_LANES 16
#elif defined(__AVX__)
typedef float pynn_wm_vf __attribute__((vector_size(32)));
typedef int pynn_wm_vi __attribute__((vector_size(32)));
#define PYNN_WM_LANES 8
#endif

static inline void pynn_window_max_f(const float* restrict x, Py_ssize_t wc, Py_ssize_t hn,
                                     Py_ssize_t wn, Py_ssize_t C, int idx0, int idx_row,
                                     float* restrict y, int* restrict arg) {
    Py_ssize_t c = 0, h, w;
#ifdef PYNN_WM_LANES
#define PYNN_WM_TAKE(OFF, IDX)                                                           \
    {                                                                                  \
        memcpy(&v, x + (OFF) + c, sizeof v);                                           \
        take = (v > b) | ((v != v) & (b == b));                                        \
        b = (pynn_wm_vf)(((pynn_wm_vi)v & take) | ((pynn_wm_vi)b & ~take));            \
        a = (a & ~take) | (take & ((pynn_wm_vi){0} + (int)(IDX)));                     \
    }
    if (hn == 2 && wn == 2) {   /* the usual window, straight-line (no loop counters) */
        for (; c + PYNN_WM_LANES <= C; c += PYNN_WM_LANES) {
            pynn_wm_vf b, v;
            pynn_wm_vi a = (pynn_wm_vi){0} + idx0, take;
            memcpy(&b, x + c, sizeof b);
            PYNN_WM_TAKE(C, idx0 + 1)
            PYNN_WM_TAKE(wc, idx0 + idx_row)
            PYNN_WM_TAKE(wc + C, idx0 + idx_row + 1)
            memcpy(y + c, &b, sizeof b);
            memcpy(arg + c, &a, sizeof a);
        }
    }
    for (; c + PYNN_WM_LANES <= C; c += PYNN_WM_LANES) {
        pynn_wm_vf b, v;
        pynn_wm_vi a = (pynn_wm_vi){0} + idx0, take;
        memcpy(&b, x + c, sizeof b);
        for (h = 0; h < hn; h++)
            for (w = 0; w < wn; w++) PYNN_WM_TAKE(h * wc + w * C, idx0 + h * idx_row + w)
        memcpy(y + c, &b, sizeof b);
        memcpy(arg + c, &a, sizeof a);
    }
#undef PYNN_WM_TAKE
#endif
    for (; c < C; c++) {
        float b = x[c];
        int a = idx0;
        for (h = 0; h < hn; h++)
            for (w = 0; w < wn; w++) {
                const float v = x[h * wc + w * C + c];
                if ((v > b) | ((v != v) & (b == b))) {
                    b = v;
                    a = (int)(idx0 + h * idx_row + w);
                }
            }
        y[c] = b;
        arg[c] = a;
    }
}

/* PYNN_MAX_UPDATE without the argmax (inference plans: native/infer.pyx's pooling and
 * native/conv.pyx's conv-pool pair):
 * take a pixel where it is strictly greater, or the first NaN, so y has pool.pyx's bits
 * (ties between -0.0 and 0.0 keep the first, as there). */
#if defined(__AVX__)
#include <immintrin.h>
#endif

/* pool.pyx's rule, one channel: v replaces the winner b where strictly greater, or
   where v is the first NaN. */
static inline float pynn_infer_sel(float v, float b) {
    return ((v > b) | ((v != v) & (b == b))) ? v : b;
}

/* The exact rule over one window's channels [c0, c1). */
static void pynn_infer_max_exact(const float* x, Py_ssize_t wc, Py_ssize_t hn,
                                 Py_ssize_t wn, float* y, Py_ssize_t C, Py_ssize_t c0,
                                 Py_ssize_t c1) {
    Py_ssize_t c, h, w;
    for (c = c0; c < c1; c++) {
        float b = x[c];
        for (h = 0; h < hn; h++)
            for (w = 0; w < wn; w++) b = pynn_infer_sel(x[h * wc + w * C + c], b);
        y[c] = b;
    }
}

/* y[c] = the window's max, windows of hn x wn pixels at x (rows wc floats apart),
 * pixels in row-major order. Without NaNs the rule is exactly vmaxps(v, b) (v where
 * v > b, else b: ties keep the earlier pixel, -0.0 and 0.0 included), one instruction
 * against five for the rule's compares and selects; a sum of the window's pixels
 * turns NaN when any is (or, harmlessly, on inf - inf), and that 8-channel block is
 * redone by the exact rule. 16 channels a block where the build has AVX-512, then 8.
 * (The rule's compares per pixel: 7.7 us for the small CNN's first pooling at batch 1.) */
static inline void pynn_infer_max_f(const float* restrict x, Py_ssize_t wc,
                                    Py_ssize_t hn, Py_ssize_t wn, float* restrict y,
                                    Py_ssize_t C) {
    Py_ssize_t c = 0, h, w;
#if defined(__AVX512F__)
    for (; c + 16 <= C; c += 16) {
        __m512 b = _mm512_loadu_ps(x + c), s = _mm512_setzero_ps();
        for (h = 0; h < hn; h++)
            for (w = 0; w < wn; w++) {
                const __m512 v = _mm512_loadu_ps(x + h * wc + w * C + c);
                b = _mm512_max_ps(v, b);
                s = _mm512_add_ps(s, v);
            }
        _mm512_storeu_ps(y + c, b);
        if (_mm512_cmp_ps_mask(s, s, _CMP_UNORD_Q))
            pynn_infer_max_exact(x, wc, hn, wn, y, C, c, c + 16);
    }
#endif
#if defined(__AVX__)
    for (; c + 8 <= C; c += 8) {
        __m256 b = _mm256_loadu_ps(x + c), s = _mm256_setzero_ps();
        for (h = 0; h < hn; h++)
            for (w = 0; w < wn; w++) {
                const __m256 v = _mm256_loadu_ps(x + h * wc + w * C + c);
                b = _mm256_max_ps(v, b);
                s = _mm256_add_ps(s, v);
            }
        _mm256_storeu_ps(y + c, b);
        if (_mm256_movemask_ps(_mm256_cmp_ps(s, s, _CMP_UNORD_Q)))
            pynn_infer_max_exact(x, wc, hn, wn, y, C, c, c + 8);
    }
#endif
    pynn_infer_max_exact(x, wc, hn, wn, y, C, c, C);
}

#endif
