/* A narrow first Conv2D and the max pool that alone reads it, on AMX tiles, for mixed
 * bfloat16 (bf16_conv2d_pool_forward / _backward in native/bf16.pyx).
 *
 * A first layer sees few channels (RGB: 3), so a pixel's whole window is at most 32 values
 * (3 x 3 x 3 = 27): one 64-byte tile row of bf16. The float32 direct conv spends its time on
 * K = 27 multiply-adds per output element; here the multiplication is a handful of
 * TDPBF16PS per band and what costs is feeding the tiles, so each operand is built in the
 * one layout its tiles read without a transposing pass:
 *
 *   forward (im2col by rows): 16 output pixels x the window's K values, each row gathered
 *   from the padded NHWC bf16 image by KH masked loads of KW * C contiguous values; times
 *   the kernel's K x F pairs (B, _bf16amx.h's pairs format), bias as the start value. The
 *   band of PH conv rows under a row of pool windows lands in a per-thread buffer, gets the
 *   layer's activation (block_epilogue, by the caller) and is pooled there (_maxpool.h's
 *   window max, the pool's own winner rule): the conv's output is never whole.
 *
 *   kernel gradient (sum over pixels): A = the window's K values x 32 consecutive output
 *   pixels, each row one contiguous 64-byte load from a planar (row, channel, column) bf16
 *   copy of the padded image; B = dz for those pixels in pairs along the pixels, made from
 *   the pool's arrays (the window's gradient at its argmax, where the pool's output is
 *   positive for relu, zero elsewhere) and rounded to bf16 on the way: dz is never
 *   written. Each fixed slab of bands sums into its own 32 x F block, the slabs then added
 *   in order by the caller: the bits do not depend on the thread count.
 *
 * Conditions (the caller checks them, elsewhere it takes the float32 road on rounded
 * operands): K = KH * KW * C <= 32, F a multiple of 16, column dilation 1; the gradient also
 * needs column stride 1. Tile plumbing: _amx.h; rounding: VCVTNE(2)PS2BF16 as the other AMX
 * conversions (nearest, ties to even). */
#ifndef PYNN_BF16AMX_POOL_H
#define PYNN_BF16AMX_POOL_H

#include "_bf16amx.h"

typedef struct {
    long N, H, W, C, F;            /* input (N, H, W, C), F filters */
    long KH, KW, SH, SW, DH;       /* kernel, strides, row dilation (column dilation 1) */
    long PT, PL, HO, WO;           /* top / left padding, conv output */
    long PH, PW, PSH, PSW, HPo, WPo; /* pool window, strides, pooled output */
    long HPd, WPd;                 /* the padded image's rows and columns that are read */
    long WOP;                      /* WO rounded up to 16: a band row's pixels */
} pynn_amxcp_geom;

/* A max pool's backward arrays over a wide conv's output (N, HO, WO, F): dz of a conv pixel
   made from them (the window's dpool where its argmax names the pixel and, with pooled, the
   pool's output is positive; zero elsewhere), for the kernel and input gradients' bf16
   conversions to read instead of a dz array. The windows tile the map. */
typedef struct {
    const float* dpool;
    const float* pooled; /* NULL: linear */
    const int* argmax;
    long HO, WO, F, HPo, WPo, PH, PW, PSH, PSW;
} pynn_amxcp_pool;

#if PYNN_AMX && PYNN_BF16_X86

/* Padded rows [0, HPd) of one sample as bf16, (HPd, WPd, C) when planar is 0, (HPd, C, WPd)
   when 1; zeros outside the image. */
__attribute__((target("avx512bf16,avx512f,avx512vl,avx512bw"))) static void
pynn_amxcp_image(const float* x, const pynn_amxcp_geom* g, int planar, uint16_t* out) {
    const long C = g->C, W = g->W, WPd = g->WPd;
    long hh, c, w0;
    for (hh = 0; hh < g->HPd; hh++) {
        const long ih = hh - g->PT;
        uint16_t* row = out + hh * WPd * C;
        if (ih < 0 || ih >= g->H) {
            memset(row, 0, WPd * C * sizeof(uint16_t));
            continue;
        }
        const float* src = x + ih * W * C;
        if (!planar) {
            /* columns PL .. PL + W: the input row's W * C values in order */
            const long left = g->PL * C, run = W * C, cols = WPd * C;
            long i, take = run < cols - left ? run : cols - left;
            memset(row, 0, left * sizeof(uint16_t));
            for (i = 0; i < take; i += 16) {
                __mmask16 m = pynn_amx_mask(take - i);
                __m256i v = (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + i));
                _mm256_mask_storeu_epi16(row + left + i, m, v);
            }
            if (left + take < cols)
                memset(row + left + take, 0, (cols - left - take) * sizeof(uint16_t));
            continue;
        }
        for (c = 0; c < C; c++) {
            uint16_t* dst = row + c * WPd;
            for (w0 = 0; w0 < WPd; w0 += 16) {
                /* columns w0 .. w0 + 16 of channel c: input column iw = w - PL */
                const __m512i lane = _mm512_add_epi32(
                    _mm512_set1_epi32((int)(w0 - g->PL)),
                    _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0));
                __mmask16 in = _mm512_cmpge_epi32_mask(lane, _mm512_setzero_si512()) &
                               _mm512_cmplt_epi32_mask(lane, _mm512_set1_epi32((int)W)) &
                               pynn_amx_mask(WPd - w0);
                __m512 v = _mm512_mask_i32gather_ps(
                    _mm512_setzero_ps(), in,
                    _mm512_add_epi32(_mm512_mullo_epi32(lane, _mm512_set1_epi32((int)C)),
                                     _mm512_set1_epi32((int)c)),
                    src, 4);
                _mm256_mask_storeu_epi16(dst + w0, pynn_amx_mask(WPd - w0),
                                         (__m256i)_mm512_cvtneps_pbh(v));
            }
        }
    }
}

/* Rows of A for the 16 output pixels wo0 + [0, 16) of conv row ho (past WO: zeros) into
   abuf (16 x 32 bf16): the window's KH runs of KW * C values, run kh at lanes kh * L. */
__attribute__((target("avx512bf16,avx512f,avx512vl,avx512bw"))) static inline void
pynn_amxcp_rows(const pynn_amxcp_geom* g, const uint16_t* img, const __mmask32* runs, long ho,
                long wo0, uint16_t* abuf) {
    const long C = g->C, L = g->KW * C, rowstep = g->DH * g->WPd * C;
    const uint16_t* first = img + ho * g->SH * g->WPd * C;
    long r, kh;
    for (r = 0; r < 16; r++) {
        __m512i v = _mm512_setzero_si512();
        if (wo0 + r < g->WO) {
            const uint16_t* base = first + (wo0 + r) * g->SW * C;
            v = _mm512_maskz_loadu_epi16(runs[0], base);
            for (kh = 1; kh < g->KH; kh++)
                v = _mm512_mask_loadu_epi16(v, runs[kh], base + kh * rowstep - kh * L);
        }
        _mm512_store_si512(abuf + r * 32, v);
    }
}

/* The band of conv rows hp * PSH + [0, PH) of one sample (img: its (HPd, WPd, C) image) into
   band (PH, WOP, F), bias_rows (16 x F: the bias in every row; NULL: none) as the start
   value, through relu when `relu` (relu's rule: v < 0 -> 0, so NaN and -0 stay). Bt: the
   kernel's pairs, the 16-column group t at Bt + t * 256 words. abuf: two 16 x 32 bf16
   buffers of this thread's, 64-byte aligned: the next pixels' rows are gathered into one
   while the tiles read the other (a tile load straight after the stores that filled it
   stalled: 0.13 of the forward's time). Inside the caller's pynn_amx_begin / _end (a
   configuration per band cost 0.1 of it). */
__attribute__((target("avx512bf16,avx512f,avx512vl,avx512bw"))) static void
pynn_amxcp_band(const pynn_amxcp_geom* g, const uint16_t* img, const uint32_t* Bt,
                const float* bias_rows, int relu, long hp, float* band, uint16_t* abuf) {
    const long F = g->F, L = g->KW * g->C, groups = (g->WO + 15) / 16;
    const long ldc = F * (long)sizeof(float), units = g->PH * groups;
    const int resident = F <= 32;   /* the kernel's tiles stay loaded for the whole band */
    __mmask32 runs[32];
    long kh, u, f0, i, e;
    for (kh = 0; kh < g->KH; kh++)
        runs[kh] = (__mmask32)((((uint64_t)1 << L) - 1) << (kh * L));
    if (resident) {
        PYNN_AMX_LOAD(6, Bt, 64);
        if (F > 16)
            PYNN_AMX_LOAD(7, Bt + 256, 64);
    }
    pynn_amxcp_rows(g, img, runs, hp * g->PSH, 0, abuf);
    for (u = 0; u < units; u++) {
        const long wo0 = (u % groups) * 16;
        uint16_t* cur = abuf + (u & 1) * 512;
        i = u / groups;
        if (u + 1 < units) {
            const long i1 = (u + 1) / groups;
            pynn_amxcp_rows(g, img, runs, hp * g->PSH + i1, (u + 1 - i1 * groups) * 16,
                            abuf + ((u + 1) & 1) * 512);
        }
        PYNN_AMX_LOAD(4, cur, 64);
        for (f0 = 0; f0 < F; f0 += 32) {
            float* out = band + (i * g->WOP + wo0) * F + f0;
            if (bias_rows)
                PYNN_AMX_LOAD(0, bias_rows + f0, ldc);
            else
                PYNN_AMX_ZERO(0);
            if (!resident)
                PYNN_AMX_LOAD(6, Bt + (f0 / 16) * 256, 64);
            PYNN_AMX_DP(0, 4, 6);
            PYNN_AMX_STORE(0, out, ldc);
            if (f0 + 16 < F) {
                if (bias_rows)
                    PYNN_AMX_LOAD(1, bias_rows + f0 + 16, ldc);
                else
                    PYNN_AMX_ZERO(1);
                if (!resident)
                    PYNN_AMX_LOAD(7, Bt + (f0 / 16 + 1) * 256, 64);
                PYNN_AMX_DP(1, 4, 7);
                PYNN_AMX_STORE(1, out + 16, ldc);
            }
        }
    }
    if (!relu)
        return;
    for (i = 0; i < g->PH; i++) {   /* the real pixels of each row, F a multiple of 16 */
        float* row = band + i * g->WOP * F;
        for (e = 0; e < g->WO * F; e += 16) {
            __m512 v = _mm512_load_ps(row + e);
            _mm512_store_ps(row + e, _mm512_mask_mov_ps(
                                         v, _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ),
                                         _mm512_setzero_ps()));
        }
    }
}

/* A wide conv's band (channels in whole 32-value tile rows, stride 1; the direct conv of
   _bf16amx.h, pynn_amx_conv_units, whose padded image and kernel panels it reads): conv rows
   ho0 + [0, rows) of one sample, every output pixel, all F filters (F a multiple of 32),
   into band (rows, WOP, F), bias_rows (16 x F) as the start value (NULL: zeros), through
   relu when `relu`. Each 16-pixel piece of a conv row is one tile of A: two rows of the band
   at once fill the four C tiles, as the 32-position blocks of pynn_amx_conv_units do, and
   no padding column is computed. Inside the caller's pynn_amx_begin / _end. */
__attribute__((target("avx512bf16,avx512f,avx512vl,avx512bw"))) static void
pynn_amxcp_wide_band(const pynn_amx_conv_plan* pl, const uint32_t* img, const uint32_t* Bt,
                     const float* bias_rows, int relu, long ho0, long rows, long WOP,
                     float* band) {
    const long cw = pl->C / 2, F = pl->F;
    const long ldc = F * (long)sizeof(float);
    long r, wo0, jp, e;
    for (r = 0; r < rows; r += 2) {
        const int two = r + 1 < rows;
        for (wo0 = 0; wo0 < pl->WO; wo0 += 16) {
            const uint32_t* xs = img + ((ho0 + r) * pl->WP + wo0) * cw;
            for (jp = 0; jp < F / 32; jp++) {
                const uint32_t* b = Bt + jp * 32 * pl->kp16;
                float* out = band + (r * WOP + wo0) * F + jp * 32;
                if (bias_rows) {
                    PYNN_AMX_LOAD(0, bias_rows + jp * 32, ldc);
                    PYNN_AMX_LOAD(1, bias_rows + jp * 32 + 16, ldc);
                    PYNN_AMX_LOAD(2, bias_rows + jp * 32, ldc);
                    PYNN_AMX_LOAD(3, bias_rows + jp * 32 + 16, ldc);
                } else {
                    PYNN_AMX_ZERO(0);
                    PYNN_AMX_ZERO(1);
                    PYNN_AMX_ZERO(2);
                    PYNN_AMX_ZERO(3);
                }
                /* the band's next row: WP positions on */
                pynn_amx_direct_taps(pl, xs, b, pl->WP * cw, two);
                PYNN_AMX_STORE(0, out, ldc);
                PYNN_AMX_STORE(1, out + 16, ldc);
                if (two) {
                    PYNN_AMX_STORE(2, out + WOP * F, ldc);
                    PYNN_AMX_STORE(3, out + WOP * F + 16, ldc);
                }
            }
        }
    }
    if (!relu)
        return;
    for (r = 0; r < rows; r++) {
        float* row = band + r * WOP * F;
        for (e = 0; e < pl->WO * F; e += 16) {
            __m512 v = _mm512_load_ps(row + e);
            _mm512_store_ps(row + e, _mm512_mask_mov_ps(
                                         v, _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ),
                                         _mm512_setzero_ps()));
        }
    }
}

/* Sample n's dz (HO, WO, F; F a multiple of 16) made from the pool's arrays into dz: each
   window's 16-channel blocks read once and stored to its PH x PW pixels (the gradient where
   the argmax names the pixel, zero elsewhere), pixels outside every window zeroed. Made
   per sample into a buffer that stays in L2 for the conversions that read it (made pixel by
   pixel inside them, the backward ran 1.2x slower than with a dz array). Returns the hits. */
__attribute__((target("avx512f"))) static long
pynn_amxcp_make_dz(const pynn_amxcp_pool* p, long n, float* dz) {
    const long F = p->F, WO = p->WO;
    long hp, wp, cb, i, j, hits = 0;
    if (p->HPo * p->PSH != p->HO || p->WPo * p->PSW != WO || p->PH != p->PSH ||
        p->PW != p->PSW)   /* some pixel lies in no window */
        memset(dz, 0, p->HO * WO * F * sizeof(float));
    for (hp = 0; hp < p->HPo; hp++)
        for (wp = 0; wp < p->WPo; wp++) {
            const long idx = ((n * p->HPo + hp) * p->WPo + wp) * F;
            for (cb = 0; cb < F; cb += 16) {
                const __m512i a = _mm512_loadu_si512(p->argmax + idx + cb);
                __m512 d = _mm512_loadu_ps(p->dpool + idx + cb);
                if (p->pooled)
                    d = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(_mm512_loadu_ps(p->pooled + idx + cb),
                                                               _mm512_setzero_ps(), _CMP_GT_OQ),
                                            d);
                for (i = 0; i < p->PH; i++)
                    for (j = 0; j < p->PW; j++) {
                        const long pix = (hp * p->PSH + i) * WO + wp * p->PSW + j;
                        const __mmask16 eq =
                            _mm512_cmpeq_epi32_mask(a, _mm512_set1_epi32((int)pix));
                        hits += __builtin_popcount((unsigned)eq);
                        _mm512_storeu_ps(dz + pix * F + cb, _mm512_maskz_mov_ps(eq, d));
                    }
            }
        }
    return hits;
}

/* acc (F doubles) += the windows' gradients [w0, w1) where the pool's output is positive
   (every one without pooled), window by window in order: the bias gradient of the pair's
   dz, summed in double as pooled_activation_bias_backward sums it. F a multiple of 16. */
__attribute__((target("avx512f"))) static void
pynn_amxcp_bias_grad(const pynn_amxcp_pool* p, long w0, long w1, double* acc) {
    const long F = p->F;
    long w, c, h;
    for (w = w0; w < w1; w++)
        for (c = 0; c < F; c += 16) {
            const __m512 d = _mm512_loadu_ps(p->dpool + w * F + c);
            __mmask16 m = 0xffff;
            if (p->pooled)
                m = _mm512_cmp_ps_mask(_mm512_loadu_ps(p->pooled + w * F + c),
                                       _mm512_setzero_ps(), _CMP_GT_OQ);
            for (h = 0; h < 2; h++) {
                const __mmask8 mh = (__mmask8)(m >> (8 * h));
                __m512d a = _mm512_loadu_pd(acc + c + 8 * h);
                /* the upper half through a double-lane extract: AVX512F alone (a build
                   for a CPU without AVX512DQ compiles this too) */
                a = _mm512_mask_add_pd(
                    a, mh, a,
                    _mm512_cvtps_pd(h ? _mm256_castpd_ps(
                                            _mm512_extractf64x4_pd(_mm512_castps_pd(d), 1))
                                      : _mm512_castps512_ps256(d)));
                _mm512_storeu_pd(acc + c + 8 * h, a);
            }
        }
}

/* dz for output pixel (ho, wo) of band b (sample n, pooled row hp), channels [fc, fc + 16):
   the window's dpool where its argmax names this pixel (and, with pooled, the pool's output
   is positive), else 0; *hits counts the argmax entries that named it. */
__attribute__((target("avx512f"))) static inline __m512
pynn_amxcp_dz(const pynn_amxcp_geom* g, const float* dpool, const float* pooled,
              const int* argmax, long b, long ho, long wo, long fc, long* hits) {
    const long wp = wo / g->PSW;
    long idx;
    __mmask16 eq;
    if (wo >= g->WO || wp >= g->WPo || wo - wp * g->PSW >= g->PW)
        return _mm512_setzero_ps();
    idx = (b * g->WPo + wp) * g->F + fc;
    eq = _mm512_cmpeq_epi32_mask(_mm512_loadu_si512(argmax + idx),
                                 _mm512_set1_epi32((int)(ho * g->WO + wo)));
    *hits += __builtin_popcount((unsigned)eq);
    if (pooled)
        eq &= _mm512_cmp_ps_mask(_mm512_loadu_ps(pooled + idx), _mm512_setzero_ps(), _CMP_GT_OQ);
    return _mm512_maskz_loadu_ps(eq, dpool + idx);
}

/* dz of the pixel pair (ho, wo), (ho, wo + 1), wo even, into lo and hi: under 2 x 2 windows
   at stride 2 both pixels share one window, whose entries are read once. */
__attribute__((target("avx512f"))) static inline void
pynn_amxcp_dz_pair(const pynn_amxcp_geom* g, const float* dpool, const float* pooled,
                   const int* argmax, long b, long ho, long wo, long fc, __m512* lo, __m512* hi,
                   long* hits) {
    if (g->PW == 2 && g->PSW == 2 && wo + 1 < g->WO && wo / 2 < g->WPo) {
        const long idx = (b * g->WPo + wo / 2) * g->F + fc;
        const __m512i a = _mm512_loadu_si512(argmax + idx);
        const int at = (int)(ho * g->WO + wo);
        __mmask16 e0 = _mm512_cmpeq_epi32_mask(a, _mm512_set1_epi32(at));
        __mmask16 e1 = _mm512_cmpeq_epi32_mask(a, _mm512_set1_epi32(at + 1));
        __m512 d = _mm512_loadu_ps(dpool + idx);
        *hits += __builtin_popcount((unsigned)e0) + __builtin_popcount((unsigned)e1);
        if (pooled) {
            const __mmask16 pos = _mm512_cmp_ps_mask(_mm512_loadu_ps(pooled + idx),
                                                     _mm512_setzero_ps(), _CMP_GT_OQ);
            e0 &= pos;
            e1 &= pos;
        }
        *lo = _mm512_maskz_mov_ps(e0, d);
        *hi = _mm512_maskz_mov_ps(e1, d);
        return;
    }
    *lo = pynn_amxcp_dz(g, dpool, pooled, argmax, b, ho, wo, fc, hits);
    *hi = pynn_amxcp_dz(g, dpool, pooled, argmax, b, ho, wo + 1, fc, hits);
}

/* Bands [b0, b1) into acc (32 x F: rows past K zero, by the zero A rows) and db (F): the
   kernel and bias gradients of those bands' pixels from bf16-rounded x and dz. xq: the
   planar images, sample n at n * HPd * C * WPd; abuf: 32 x 32 bf16, bbuf: 2 x 256 words,
   both this thread's and 64-byte aligned. Needs SW == 1. Returns the argmax hits. */
__attribute__((target("avx512bf16,avx512f,avx512vl,avx512bw"))) static long
pynn_amxcp_wgrad(const pynn_amxcp_geom* g, const uint16_t* xq, const float* dpool,
                 const float* pooled, const int* argmax, long b0, long b1, uint16_t* abuf,
                 uint32_t* bbuf, float* acc, float* db) {
    const __m512i order = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25,
                                           9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2,
                                           17, 1, 16, 0);
    const __m512i high = _mm512_set1_epi32((int)0xffff0000u);
    const long C = g->C, F = g->F, WPd = g->WPd, K = g->KH * g->KW * C;
    const long sample = g->HPd * C * WPd, ldc = F * (long)sizeof(float);
    long hits = 0, f0, b, i, wo0, q, t, kh, kw, c, m;
    for (m = K; m < 32; m++)
        _mm512_store_si512(abuf + m * 32, _mm512_setzero_si512());
    pynn_amx_begin();
    for (f0 = 0; f0 < F; f0 += 32) {
        const int two = f0 + 16 < F;
        __m512 dsum[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
        PYNN_AMX_ZERO(0);
        PYNN_AMX_ZERO(1);
        PYNN_AMX_ZERO(2);
        PYNN_AMX_ZERO(3);
        for (b = b0; b < b1; b++) {
            const long n = b / g->HPo, hp = b - n * g->HPo;
            const uint16_t* img = xq + n * sample;
            for (i = 0; i < g->PH; i++) {
                const long ho = hp * g->PSH + i;
                for (wo0 = 0; wo0 < g->WO; wo0 += 32) {
                    const __mmask32 valid = (__mmask32)(g->WO - wo0 >= 32
                                                            ? 0xffffffffu
                                                            : ((1u << (g->WO - wo0)) - 1));
                    m = 0;
                    for (kh = 0; kh < g->KH; kh++)
                        for (kw = 0; kw < g->KW; kw++)
                            for (c = 0; c < C; c++, m++)
                                _mm512_store_si512(
                                    abuf + m * 32,
                                    _mm512_maskz_loadu_epi16(
                                        valid, img + ((ho * g->SH + kh * g->DH) * C + c) * WPd +
                                                   wo0 + kw));
                    for (q = 0; q < 16; q++)
                        for (t = 0; t < 1 + two; t++) {
                            __m512 lo, hi;
                            __m512i w;
                            pynn_amxcp_dz_pair(g, dpool, pooled, argmax, b, ho, wo0 + 2 * q,
                                               f0 + 16 * t, &lo, &hi, &hits);
                            w = _mm512_permutexvar_epi16(
                                order, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
                            _mm512_store_si512(bbuf + t * 256 + q * 16, w);
                            /* the bias gradient of the same rounded values */
                            dsum[t] = _mm512_add_ps(
                                dsum[t], _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
                            dsum[t] = _mm512_add_ps(
                                dsum[t], _mm512_castsi512_ps(_mm512_and_si512(w, high)));
                        }
                    PYNN_AMX_LOAD(4, abuf, 64);
                    PYNN_AMX_LOAD(5, abuf + 16 * 32, 64);
                    PYNN_AMX_LOAD(6, bbuf, 64);
                    PYNN_AMX_DP(0, 4, 6);
                    PYNN_AMX_DP(2, 5, 6);
                    if (two) {
                        PYNN_AMX_LOAD(7, bbuf + 256, 64);
                        PYNN_AMX_DP(1, 4, 7);
                        PYNN_AMX_DP(3, 5, 7);
                    }
                }
            }
        }
        PYNN_AMX_STORE(0, acc + f0, ldc);
        PYNN_AMX_STORE(2, acc + 16 * F + f0, ldc);
        _mm512_storeu_ps(db + f0, dsum[0]);
        if (two) {
            PYNN_AMX_STORE(1, acc + f0 + 16, ldc);
            PYNN_AMX_STORE(3, acc + 16 * F + f0 + 16, ldc);
            _mm512_storeu_ps(db + f0 + 16, dsum[1]);
        }
    }
    pynn_amx_end();
    return hits;
}

#else /* no AMX: the entry points exist and are never chosen */

static long pynn_amxcp_make_dz(const pynn_amxcp_pool* p, long n, float* dz) { return 0; }
static void pynn_amxcp_bias_grad(const pynn_amxcp_pool* p, long w0, long w1, double* acc) {}

static void pynn_amxcp_image(const float* x, const pynn_amxcp_geom* g, int planar,
                             uint16_t* out) {}
static void pynn_amxcp_band(const pynn_amxcp_geom* g, const uint16_t* img, const uint32_t* Bt,
                            const float* bias_rows, int relu, long hp, float* band,
                            uint16_t* abuf) {}
static long pynn_amxcp_wgrad(const pynn_amxcp_geom* g, const uint16_t* xq, const float* dpool,
                             const float* pooled, const int* argmax, long b0, long b1,
                             uint16_t* abuf, uint32_t* bbuf, float* acc, float* db) {
    return 0;
}
static void pynn_amxcp_wide_band(const pynn_amx_conv_plan* pl, const uint32_t* img,
                                 const uint32_t* Bt, const float* bias_rows, int relu, long ho0,
                                 long rows, long WOP, float* band) {}
#endif

#endif
