/* bfloat16 GEMM on AMX tiles (Intel AMX-BF16) for mixed precision (native/bf16.pyx): the
 * products of _bf16gemm.h -- bf16 operands, float32 sums -- where the CPU has tiles.
 *
 * One TDPBF16PS multiplies a 16 x 16-pair tile of A by a 16-pair x 16 tile of B into a
 * 16 x 16 float32 tile: 8,192 multiply-adds in 16 cycles, 16x vdpbf16ps's rate. What limits
 * it is feeding the tiles: loaded straight from the row-major "rows" / "pairs" formats (a
 * tile row every lda words) a 128 x 784 x 512 product ran at 530 GFLOP/s on one Sapphire
 * Rapids-class core; from tile-contiguous panels (each tile 1 KiB in a row) 1,000 GFLOP/s.
 * So the operands are converted from float32 straight into these panel formats (rounding
 * as _bf16gemm.h does: the same bf16 values), never into the row-major ones first:
 *
 * A panels ("amx a"), of an (m, kp) pairs matrix, word (r, q) = (A[r, 2q], A[r, 2q + 1]):
 *     panel r / 32 at r/32 * 32 * kp16 words; in it tile (q/16) * 2 + (r/16) % 2 of 256
 *     words, row r % 16, column q % 16. m is padded to 32 rows, kp to kp16 (a multiple of 16)
 *     with zero pairs.
 * B panels ("amx b"), of a (kp, n) pairs matrix, word (q, j) = (B[2q, j], B[2q + 1, j]):
 *     panel j / 32 at j/32 * 32 * kp16; tile (q/16) * 2 + (j/16) % 2, row q % 16, column
 *     j % 16. n padded to 32 columns, kp to kp16.
 *
 * An operand that is the transpose of a row-major array (x.T of a kernel gradient, dz.T of
 * an input gradient) is converted by 16 x 16 word blocks through an AVX-512 transpose. The
 * weight operand is always the untransposed one: a layer's input gradient is computed as
 * dx.T = kernel @ dz.T and the result transposed on the way out, so only batch-sized
 * operands are ever transposed.
 *
 * Work units: 32 rows x up to PYNN_AMX_GROUP column panels of C, summed over K in chunks of
 * PYNN_AMX_KC pairs (the A chunk, 16 KiB, stays in L1 while the group's B panels stream
 * past it) into a float32 block, then written out (optionally transposed, optionally added
 * to C). Each C element is one unit's, summed in K order: the bits do not depend on the
 * thread count. TDPBF16PS adds each pair's two products in its own order and flushes
 * subnormals, so the bits are AMX's own, within the same float32 accumulation error of the
 * float64 product (tests/test_bf16.py) but not equal to vdpbf16ps's.
 *
 * The tile plumbing (the OS permission, the configuration, the instructions) is _amx.h's. */
#ifndef PYNN_BF16AMX_H
#define PYNN_BF16AMX_H

#include "_amx.h"
#include "_bf16gemm.h"

#define PYNN_AMX_PANEL 32 /* rows of an A panel, columns of a B panel: two tiles */
#define PYNN_AMX_GROUP 8  /* column panels per work unit: 256 columns */
#define PYNN_AMX_KC 128   /* pairs per K chunk: 32 x 128 words of A = 16 KiB */

static inline long pynn_amx_kp16(long kp) { return (kp + 15) / 16 * 16; }

static inline long pynn_amx_panels(long n) { return (n + PYNN_AMX_PANEL - 1) / PYNN_AMX_PANEL; }

/* Words of an A (B) panel operand of m rows (n columns) and kp pairs. */
static inline long pynn_amx_words(long rows_or_cols, long kp) {
    return pynn_amx_panels(rows_or_cols) * PYNN_AMX_PANEL * pynn_amx_kp16(kp);
}

/* Work units of an (m, n) product (row panels x column groups). */
static inline long pynn_amx_units(long m, long n) {
    long groups = (pynn_amx_panels(n) + PYNN_AMX_GROUP - 1) / PYNN_AMX_GROUP;
    return pynn_amx_panels(m) * groups;
}

#if PYNN_AMX && PYNN_BF16_X86
/* r[i] (16 words each) <- the transpose of the 16 x 16 block r. */
__attribute__((target("avx512f"))) static inline void pynn_amx_transpose16(__m512i* r) {
    __m512i t[16];
    int i, j;
    for (i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (i = 0; i < 4; i++) {
        r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (i = 0; i < 2; i++)
        for (j = 0; j < 4; j++) {
            t[8 * i + j] = _mm512_shuffle_i32x4(r[8 * i + j], r[8 * i + 4 + j], 0x88);
            t[8 * i + 4 + j] = _mm512_shuffle_i32x4(r[8 * i + j], r[8 * i + 4 + j], 0xdd);
        }
    for (j = 0; j < 8; j++) {
        r[j] = _mm512_shuffle_i32x4(t[j], t[8 + j], 0x88);
        r[8 + j] = _mm512_shuffle_i32x4(t[j], t[8 + j], 0xdd);
    }
}

static inline __mmask16 pynn_amx_mask(long left) {
    return left >= 16 ? (__mmask16)0xffff : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
}

/* Rows [r0, r1) of a float32 (m, k) matrix (row r at src + r * lds; rows >= m are zero pairs)
   into A panels of kp16 pairs: 32 floats -> one 16-word tile row segment per conversion,
   stored in place (through a row buffer and a copy the 784 x 512 weight took ~1.5x longer). */
__attribute__((target("avx512bf16,avx512f,avx512vl,avx512bw"))) static void
pynn_amx_a_rows(const float* src, long lds, long m, long k, long r0, long r1, long kp16,
                uint32_t* At) {
    long r, s;
    for (r = r0; r < r1; r++) {
        uint32_t* dst = At + r / 32 * 32 * kp16 + ((r / 16) % 2) * 256 + (r % 16) * 16;
        const float* x = src + r * lds;
        for (s = 0; s < kp16 / 16; s++) {
            __m512i v = _mm512_setzero_si512();
            if (r < m && 32 * s < k) {
                __m512 lo = _mm512_maskz_loadu_ps(pynn_amx_mask(k - 32 * s), x + 32 * s);
                __m512 hi = _mm512_maskz_loadu_ps(pynn_amx_mask(k - 32 * s - 16),
                                                  x + 32 * s + 16);
                v = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
            }
            _mm512_storeu_si512(dst + s * 512, v);
        }
    }
}

/* Pair rows [q0, q1) (q1 <= kp16), columns [16 t0, 16 t1) (t1 <= 2 * panels(n)) of the pairs
   matrix of a float32 (k, n) matrix (row i at src + i * lds) into B panels; pair rows >=
   ceil(k / 2) and columns >= n are zeros. Each 16 columns of two rows interleave into one
   tile row segment, stored in place. */
__attribute__((target("avx512bf16,avx512f,avx512vl,avx512bw"))) static void
pynn_amx_b_pairs(const float* src, long lds, long k, long n, long q0, long q1, long t0,
                 long t1, long kp16, uint32_t* Bt) {
    const __m512i order = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25,
                                           9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2,
                                           17, 1, 16, 0);
    long q, t;
    for (q = q0; q < q1; q++) {
        const float* r0 = src + 2 * q * lds;
        int has0 = 2 * q < k, has1 = 2 * q + 1 < k;
        for (t = t0; t < t1; t++) {
            __mmask16 mk = pynn_amx_mask(n - 16 * t);
            __m512i v = _mm512_setzero_si512();
            if (has0 && mk) {
                __m512 lo = _mm512_maskz_loadu_ps(mk, r0 + 16 * t);
                __m512 hi = has1 ? _mm512_maskz_loadu_ps(mk, r0 + lds + 16 * t)
                                 : _mm512_setzero_ps();
                v = _mm512_permutexvar_epi16(order, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
            }
            _mm512_storeu_si512(Bt + t / 2 * 32 * kp16 + ((q / 16) * 2 + t % 2) * 256 +
                                    (q % 16) * 16, v);
        }
    }
}

/* 16 words of pairs (y[2q, c], y[2q + 1, c]) for c in [c0, c0 + 16): zeros past `cols` or
   past the R rows of y. */
__attribute__((target("avx512bf16,avx512f,avx512vl,avx512bw"))) static inline __m512i
pynn_amx_pair_words(const float* y, long ldy, long R, long cols, long q, long c0) {
    __mmask16 m = pynn_amx_mask(cols - c0);
    __m512 lo = 2 * q < R ? _mm512_maskz_loadu_ps(m, y + 2 * q * ldy + c0) : _mm512_setzero_ps();
    __m512 hi = 2 * q + 1 < R ? _mm512_maskz_loadu_ps(m, y + (2 * q + 1) * ldy + c0)
                              : _mm512_setzero_ps();
    const __m512i order = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25,
                                           9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2,
                                           17, 1, 16, 0);
    return _mm512_permutexvar_epi16(order, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
}

/* The A panels of y.T (cols rows, ceil(R / 2) pairs along y's rows) for the 16-pair blocks
   [qb0, qb1) and 16-row blocks [cb0, cb1) (cb1 <= 2 * panels(cols)) of a float32 (R, cols)
   matrix y (row i at y + i * ldy). */
__attribute__((target("avx512bf16,avx512f,avx512vl,avx512bw"))) static void
pynn_amx_a_transposed(const float* y, long ldy, long R, long cols, long qb0, long qb1,
                      long cb0, long cb1, long kp16, uint32_t* At) {
    long qb, cb, i;
    __m512i r[16];
    for (qb = qb0; qb < qb1; qb++)
        for (cb = cb0; cb < cb1; cb++) {
            uint32_t* dst = At + cb / 2 * 32 * kp16 + (qb * 2 + cb % 2) * 256;
            for (i = 0; i < 16; i++)
                r[i] = pynn_amx_pair_words(y, ldy, R, cols, qb * 16 + i, cb * 16);
            pynn_amx_transpose16(r);
            for (i = 0; i < 16; i++)
                _mm512_storeu_si512(dst + i * 16, r[i]);
        }
}

/* The B panels of z.T (ceil(K / 2) pairs along z's columns, R columns) for the 16-pair blocks
   [qb0, qb1) and 16-column blocks [jb0, jb1) (jb1 <= 2 * panels(R)) of a float32 (R, K)
   matrix z (row j at z + j * ldz): word (q, j) = (z[j, 2q], z[j, 2q + 1]). */
__attribute__((target("avx512bf16,avx512f,avx512vl,avx512bw"))) static void
pynn_amx_b_transposed(const float* z, long ldz, long R, long K, long qb0, long qb1, long jb0,
                      long jb1, long kp16, uint32_t* Bt) {
    long qb, jb, i;
    __m512i r[16];
    for (qb = qb0; qb < qb1; qb++) {
        __mmask16 m0 = pynn_amx_mask(K - 32 * qb), m1 = pynn_amx_mask(K - 32 * qb - 16);
        for (jb = jb0; jb < jb1; jb++) {
            uint32_t* dst = Bt + jb / 2 * 32 * kp16 + (qb * 2 + jb % 2) * 256;
            for (i = 0; i < 16; i++) {
                long j = jb * 16 + i;
                if (j < R) {
                    const float* zr = z + j * ldz + 32 * qb;
                    r[i] = (__m512i)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(m1, zr + 16),
                                                        _mm512_maskz_loadu_ps(m0, zr));
                } else {
                    r[i] = _mm512_setzero_si512();
                }
            }
            pynn_amx_transpose16(r);
            for (i = 0; i < 16; i++)
                _mm512_storeu_si512(dst + i * 16, r[i]);
        }
    }
}

/* C block rows [i0, i0 + 32) (clipped to m), columns [j0, j1) (clipped to n) <- the float32
   block blk (row stride ldb): c[i, j] (or c[j, i] when transposed) = or += blk. */
__attribute__((target("avx512f"))) static void
pynn_amx_write(const float* blk, long ldb, long m, long n, long i0, long j0, long j1, float* c,
               long ldc, int transposed, int accumulate) {
    long rows = m - i0 < 32 ? m - i0 : 32, cend = j1 < n ? j1 : n, i, j, h;
    if (!transposed) {
        for (i = 0; i < rows; i++) {
            float* d = c + (i0 + i) * ldc;
            const float* s = blk + i * ldb - j0;
            for (j = j0; j < cend; j += 16) {
                __mmask16 m16 = pynn_amx_mask(cend - j);
                __m512 v = _mm512_maskz_loadu_ps(m16, s + j);
                if (accumulate)
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m16, d + j));
                _mm512_mask_storeu_ps(d + j, m16, v);
            }
        }
        return;
    }
    for (h = 0; h < rows; h += 16) {   /* 16 x 16 blocks, transposed through registers */
        __mmask16 mrows = pynn_amx_mask(rows - h);
        for (j = j0; j < cend; j += 16) {
            __m512i r[16];
            long cols = cend - j < 16 ? cend - j : 16;
            for (i = 0; i < 16; i++)
                r[i] = _mm512_loadu_si512(blk + (h + i) * ldb + (j - j0));
            pynn_amx_transpose16(r);
            for (i = 0; i < cols; i++) {
                float* d = c + (j + i) * ldc + i0 + h;
                __m512 v = _mm512_castsi512_ps(r[i]);
                if (accumulate)
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mrows, d));
                _mm512_mask_storeu_ps(d, mrows, v);
            }
        }
    }
}

/* C rows [32 ip, 32 ip + 32) x column panels [jp0, jp1) (at most PYNN_AMX_GROUP) of
   C (m, n) = A (m, kp16 pairs) @ B (kp16 pairs, n) from A and B panels, inside a
   pynn_amx_begin / pynn_amx_end. blk: 32 x 256 floats of this thread's. */
__attribute__((target("avx512bf16,avx512f,avx512vl,avx512bw"))) static void
pynn_amx_block(long m, long n, long kp16, const uint32_t* At, const uint32_t* Bt, float* c,
               long ldc, int transposed, int accumulate, long ip, long jp0, long jp1,
               float* blk) {
    const long ldb = PYNN_AMX_GROUP * 32;
    const uint32_t* ap = At + ip * 32 * kp16;
    long q0, q, jp;
    /* Blocks of 32 whole rows of an untransposed, overwritten C take the tiles straight
       (4 tile stores): through the block buffer and a copy, a first-layer conv's 8 MB
       output cost 3.5x a plain copy's time. */
    int direct = !transposed && !accumulate && ip * 32 + 32 <= m;
    for (q0 = 0; q0 < kp16; q0 += PYNN_AMX_KC) {
        long q1 = q0 + PYNN_AMX_KC < kp16 ? q0 + PYNN_AMX_KC : kp16;
        for (jp = jp0; jp < jp1; jp++) {
            float* cb = blk + (jp - jp0) * 32;
            const uint32_t* bp = Bt + jp * 32 * kp16;
            if (q0 == 0) {
                PYNN_AMX_ZERO(0);
                PYNN_AMX_ZERO(1);
                PYNN_AMX_ZERO(2);
                PYNN_AMX_ZERO(3);
            } else {
                PYNN_AMX_LOAD(0, cb, ldb * 4);
                PYNN_AMX_LOAD(1, cb + 16, ldb * 4);
                PYNN_AMX_LOAD(2, cb + 16 * ldb, ldb * 4);
                PYNN_AMX_LOAD(3, cb + 16 * ldb + 16, ldb * 4);
            }
            for (q = q0; q < q1; q += 16) {
                const uint32_t* a = ap + q * 32;
                const uint32_t* b = bp + q * 32;
                /* loads interleaved with the products that wait for them */
                PYNN_AMX_LOAD(4, a, 64);
                PYNN_AMX_LOAD(6, b, 64);
                PYNN_AMX_DP(0, 4, 6);
                PYNN_AMX_LOAD(7, b + 256, 64);
                PYNN_AMX_DP(1, 4, 7);
                PYNN_AMX_LOAD(5, a + 256, 64);
                PYNN_AMX_DP(2, 5, 6);
                PYNN_AMX_DP(3, 5, 7);
            }
            if (direct && jp * 32 + 32 <= n && q1 == kp16) {
                /* the whole sum of a block inside C: straight into C */
                float* d = c + ip * 32 * ldc + jp * 32;
                PYNN_AMX_STORE(0, d, ldc * 4);
                PYNN_AMX_STORE(1, d + 16, ldc * 4);
                PYNN_AMX_STORE(2, d + 16 * ldc, ldc * 4);
                PYNN_AMX_STORE(3, d + 16 * ldc + 16, ldc * 4);
                continue;
            }
            PYNN_AMX_STORE(0, cb, ldb * 4);
            PYNN_AMX_STORE(1, cb + 16, ldb * 4);
            PYNN_AMX_STORE(2, cb + 16 * ldb, ldb * 4);
            PYNN_AMX_STORE(3, cb + 16 * ldb + 16, ldb * 4);
        }
    }
    if (!direct) {
        pynn_amx_write(blk, ldb, m, n, ip * 32, jp0 * 32, jp1 * 32, c, ldc, transposed,
                       accumulate);
    } else if (jp1 * 32 > n) {   /* the last panel sticks out of C */
        pynn_amx_write(blk + (jp1 - 1 - jp0) * 32, ldb, m, n, ip * 32, (jp1 - 1) * 32,
                       jp1 * 32, c, ldc, 0, 0);
    }
}

/* Row panels [ip0, ip1) x column panels [jp0, jp1) of C, PYNN_AMX_GROUP column panels at a
   time. Each element's sum runs over K in the same order whatever the range: the bits do
   not depend on how a product is split. */
__attribute__((target("avx512bf16,avx512f,avx512vl,avx512bw"))) static void
pynn_amx_gemm_range(long m, long n, long kp16, const uint32_t* At, const uint32_t* Bt,
                    float* c, long ldc, int transposed, int accumulate, long ip0, long ip1,
                    long jp0, long jp1, float* blk) {
    long ip, jp;
    pynn_amx_begin();
    for (ip = ip0; ip < ip1; ip++)
        for (jp = jp0; jp < jp1; jp += PYNN_AMX_GROUP)
            pynn_amx_block(m, n, kp16, At, Bt, c, ldc, transposed, accumulate, ip, jp,
                           jp + PYNN_AMX_GROUP < jp1 ? jp + PYNN_AMX_GROUP : jp1, blk);
    pynn_amx_end();
}

/* Work units [u0, u1) of C: unit u is row panel u % row_panels of column group
   u / row_panels (consecutive units share B's panels). */
__attribute__((target("avx512bf16,avx512f,avx512vl,avx512bw"))) static void
pynn_amx_gemm(long m, long n, long kp16, const uint32_t* At, const uint32_t* Bt, float* c,
              long ldc, int transposed, int accumulate, long u0, long u1, float* blk) {
    const long rp = pynn_amx_panels(m), cp = pynn_amx_panels(n);
    long u;
    pynn_amx_begin();
    for (u = u0; u < u1; u++) {
        long ip = u % rp, jp0 = u / rp * PYNN_AMX_GROUP;
        pynn_amx_block(m, n, kp16, At, Bt, c, ldc, transposed, accumulate, ip, jp0,
                       jp0 + PYNN_AMX_GROUP < cp ? jp0 + PYNN_AMX_GROUP : cp, blk);
    }
    pynn_amx_end();
}

/* The input pixel tap (i, j) of output pixel m reads, or NULL past the border. */
static inline const float* pynn_amx_tap(const float* x, const pynn_bf16_conv_geom* g, long m,
                                        int i, int j) {
    long oh = m / g->ow, ow = m % g->ow;
    long ih = oh * g->sh - g->pad_top + i * g->dh, iw = ow * g->sw - g->pad_left + j * g->dw;
    if (ih < 0 || ih >= g->h || iw < 0 || iw >= g->w)
        return (const float*)0;
    return x + (ih * g->w + iw) * g->c;
}

/* Rows [m0, m0 + rows) of one sample's im2col matrix (_bf16gemm.h's rows) into A panels of
   kp16 pairs, padded with zero rows to a whole panel. `row` holds 2 * kp16 bf16 values.
   With C a multiple of 32 each tap is whole tile columns: its channels are converted 32 at a
   time straight into the panel (a 32 -> 64 channel conv's forward at batch 64: 1.43 ms,
   against 1.49 through the row buffer and per-tap conversion calls). */
__attribute__((target("avx512bf16,avx512f,avx512vl,avx512bw"))) static void
pynn_amx_im2col_a(const float* x, const pynn_bf16_conv_geom* g, int m0, int rows, long kp16,
                  uint16_t* row, uint32_t* At) {
    long r, s, k = (long)g->kh * g->kw * g->c, padded = pynn_amx_panels(rows) * 32;
    if (g->c % 32 == 0) {
        long blocks = g->c / 32;
        for (r = 0; r < padded; r++) {
            uint32_t* dst = At + r / 32 * 32 * kp16 + ((r / 16) % 2) * 256 + (r % 16) * 16;
            int i, j;
            long b;
            s = 0;
            for (i = 0; i < g->kh; i++)
                for (j = 0; j < g->kw; j++) {
                    const float* p = r < rows ? pynn_amx_tap(x, g, m0 + r, i, j) : 0;
                    for (b = 0; b < blocks; b++, s++) {
                        __m512i v = p ? (__m512i)_mm512_cvtne2ps_pbh(
                                            _mm512_loadu_ps(p + 32 * b + 16),
                                            _mm512_loadu_ps(p + 32 * b))
                                      : _mm512_setzero_si512();
                        _mm512_storeu_si512(dst + s * 512, v);
                    }
                }
        }
        return;
    }
    for (r = 0; r < padded; r++) {
        uint32_t* dst = At + r / 32 * 32 * kp16 + ((r / 16) % 2) * 256 + (r % 16) * 16;
        if (r < rows) {
            pynn_bf16_im2col_row(x, g, m0 + (int)r, row);
            memset(row + k, 0, (2 * kp16 - k) * sizeof(uint16_t));
        } else {
            memset(row, 0, 2 * kp16 * sizeof(uint16_t));
        }
        for (s = 0; s < kp16 / 16; s++)
            memcpy(dst + s * 512, row + 32 * s, 64);
    }
}

/* The same rows as B panels of k columns with the pairs along the pixels (pair q = rows
   m0 + 2q, m0 + 2q + 1; kp16 pair rows, those past the rows zero): the B operand of a kernel
   gradient. `tmp` holds two bf16 rows of k + 1 values, `words` pynn_amx_panels(k) * 32. */
__attribute__((target("avx512bf16,avx512f,avx512vl,avx512bw"))) static void
pynn_amx_im2col_b(const float* x, const pynn_bf16_conv_geom* g, int m0, int rows, long kp16,
                  uint16_t* tmp, uint32_t* words, uint32_t* Bt) {
    long k = (long)g->kh * g->kw * g->c, width = pynn_amx_panels(k) * 32, q, j, t;
    uint16_t* r0 = tmp;
    uint16_t* r1 = tmp + k + 1;
    if (g->c % 16 == 0) {   /* each tap is whole tile columns: interleave straight in */
        const __m512i order = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10,
                                               25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3,
                                               18, 2, 17, 1, 16, 0);
        long blocks = g->c / 16, zero_from = k / 16;
        for (q = 0; q < kp16; q++) {
            uint32_t* row0 = Bt + ((q / 16) * 2) * 256 + (q % 16) * 16;
            int i, jj;
            long b;
            t = 0;
            for (i = 0; i < g->kh; i++)
                for (jj = 0; jj < g->kw; jj++) {
                    const float* p0 = 2 * q < rows ? pynn_amx_tap(x, g, m0 + 2 * q, i, jj) : 0;
                    const float* p1 = 2 * q + 1 < rows ? pynn_amx_tap(x, g, m0 + 2 * q + 1, i, jj)
                                                       : 0;
                    for (b = 0; b < blocks; b++, t++) {
                        __m512 lo = p0 ? _mm512_loadu_ps(p0 + 16 * b) : _mm512_setzero_ps();
                        __m512 hi = p1 ? _mm512_loadu_ps(p1 + 16 * b) : _mm512_setzero_ps();
                        __m512i v = _mm512_permutexvar_epi16(
                            order, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
                        _mm512_storeu_si512(row0 + t / 2 * 32 * kp16 + (t % 2) * 256, v);
                    }
                }
            for (t = zero_from; t < width / 16; t++)   /* columns past k */
                _mm512_storeu_si512(row0 + t / 2 * 32 * kp16 + (t % 2) * 256,
                                    _mm512_setzero_si512());
        }
        return;
    }
    for (q = 0; q < kp16; q++) {
        if (2 * q < rows) {
            pynn_bf16_im2col_row(x, g, m0 + 2 * (int)q, r0);
            if (2 * q + 1 < rows)
                pynn_bf16_im2col_row(x, g, m0 + 2 * (int)q + 1, r1);
            else
                memset(r1, 0, k * sizeof(uint16_t));
            for (j = 0; j < k; j++)
                words[j] = (uint32_t)r0[j] | ((uint32_t)r1[j] << 16);
        } else {
            memset(words, 0, k * sizeof(uint32_t));
        }
        memset(words + k, 0, (width - k) * sizeof(uint32_t));
        for (t = 0; t < width / 16; t++)
            memcpy(Bt + t / 2 * 32 * kp16 + ((q / 16) * 2 + t % 2) * 256 + (q % 16) * 16,
                   words + 16 * t, 64);
    }
}

/* -- stride-1 convolution straight from a padded bf16 image (C a multiple of 32) --------
 * The input is converted once into a zero-padded bf16 image (per sample HP x WP pixels of
 * C / 2 pair words). Output pixel (oh, ow) is "position" p = oh * WP + ow of the padded
 * width, and tap (i, j) reads position p + i * DH * WP + j * DW: 16 consecutive positions are
 * one A tile loaded in place (row stride C / 2 words), one K step is one tap and 32 channels
 * -- the B panels of the (KH * KW * C, F) kernel, whose 16-pair blocks are exactly those. No
 * im2col matrix is written; positions with ow >= WO are computed and dropped
 * ((WP - WO) / WP of the work: 2 of 18 columns for a 3x3 'same' conv on 16x16). */

/* Rows [h0, h1) of sample n's padded image (HP x WP pixels, x's pixel (h, w) at (h + PT,
   w + PL)), from a float32 (H, W, C) sample. */
__attribute__((target("avx512bf16,avx512f,avx512vl,avx512bw"))) static void
pynn_amx_pad_image(const float* x, long H, long W, long C, long WP, long PT, long PL, long h0,
                   long h1, uint32_t* xb) {
    long cw = C / 2, h, w, b;
    for (h = h0; h < h1; h++) {
        uint32_t* row = xb + h * WP * cw;
        long ih = h - PT;
        if (ih < 0 || ih >= H) {
            memset(row, 0, WP * cw * sizeof(uint32_t));
            continue;
        }
        memset(row, 0, PL * cw * sizeof(uint32_t));
        for (w = 0; w < W; w++) {
            const float* src = x + (ih * W + w) * C;
            uint32_t* dst = row + (PL + w) * cw;
            for (b = 0; b < C / 32; b++)
                _mm512_storeu_si512(dst + 16 * b, (__m512i)_mm512_cvtne2ps_pbh(
                                                      _mm512_loadu_ps(src + 32 * b + 16),
                                                      _mm512_loadu_ps(src + 32 * b)));
        }
        memset(row + (PL + W) * cw, 0, (WP - PL - W) * cw * sizeof(uint32_t));
    }
}

typedef struct {
    long HO, WO, WP, C, F, KH, KW, DH, DW, kp16, pblocks, fgroups, sample_words;
} pynn_amx_conv_plan;

/* Tiles 0-3 += the direct conv's taps for two A tiles of 16 positions each, the first at xs
   and the second `second` words on (`two` 0: the first alone, tiles 0-1), against the
   kernel's panel b (two B tiles of 16 filters a step): every tap (i, j) of every 32-channel
   block, in that order. */
__attribute__((target("avx512bf16,avx512f,avx512vl,avx512bw"))) static inline void
pynn_amx_direct_taps(const pynn_amx_conv_plan* pl, const uint32_t* xs, const uint32_t* b,
                     long second, int two) {
    const long cw = pl->C / 2, cblocks = pl->C / 32;
    long i, j, cb;
    for (i = 0; i < pl->KH; i++)
        for (j = 0; j < pl->KW; j++) {
            const uint32_t* a = xs + (i * pl->DH * pl->WP + j * pl->DW) * cw;
            for (cb = 0; cb < cblocks; cb++, a += 16, b += 512) {
                PYNN_AMX_LOAD(4, a, cw * 4);
                PYNN_AMX_LOAD(6, b, 64);
                PYNN_AMX_DP(0, 4, 6);
                PYNN_AMX_LOAD(7, b + 256, 64);
                PYNN_AMX_DP(1, 4, 7);
                if (two) {
                    PYNN_AMX_LOAD(5, a + second, cw * 4);
                    PYNN_AMX_DP(2, 5, 6);
                    PYNN_AMX_DP(3, 5, 7);
                }
            }
        }
}

/* Units [u0, u1) of a direct conv: unit u = (sample, block of 32 positions, group of filter
   panels), in that order of nesting. xb: the padded images (sample n at n * sample_words);
   Bt: the kernel's B panels; z (N, HO, WO, F) gets the sums + bias (when not NULL), through
   relu when `relu`: the layer's epilogue while the block is in cache. */
__attribute__((target("avx512bf16,avx512f,avx512vl,avx512bw"))) static void
pynn_amx_conv_units(const pynn_amx_conv_plan* pl, const uint32_t* xb, const uint32_t* Bt,
                    const float* bias, int relu, float* z, long u0, long u1, float* blk) {
    const long ldb = PYNN_AMX_GROUP * 32, cw = pl->C / 2;
    const long fp = pynn_amx_panels(pl->F), positions = pl->HO * pl->WP;
    long u;
    pynn_amx_begin();
    for (u = u0; u < u1; u++) {
        long g = u % pl->fgroups, pb = (u / pl->fgroups) % pl->pblocks;
        long n = u / (pl->fgroups * pl->pblocks), p0 = pb * 32;
        long jp0 = g * PYNN_AMX_GROUP, jp1 = jp0 + PYNN_AMX_GROUP < fp ? jp0 + PYNN_AMX_GROUP : fp;
        const uint32_t* xs = xb + n * pl->sample_words + p0 * cw;
        long jp, r;
        for (jp = jp0; jp < jp1; jp++) {
            const uint32_t* b = Bt + jp * 32 * pl->kp16;
            float* cbk = blk + (jp - jp0) * 32;
            PYNN_AMX_ZERO(0);
            PYNN_AMX_ZERO(1);
            PYNN_AMX_ZERO(2);
            PYNN_AMX_ZERO(3);
            pynn_amx_direct_taps(pl, xs, b, 16 * cw, 1);
            PYNN_AMX_STORE(0, cbk, ldb * 4);
            PYNN_AMX_STORE(1, cbk + 16, ldb * 4);
            PYNN_AMX_STORE(2, cbk + 16 * ldb, ldb * 4);
            PYNN_AMX_STORE(3, cbk + 16 * ldb + 16, ldb * 4);
        }
        /* the block's valid positions into z */
        for (r = 0; r < 32 && p0 + r < positions; r++) {
            long p = p0 + r, oh = p / pl->WP, ow = p % pl->WP, c0, cend;
            float* d;
            const float* src = blk + r * ldb - jp0 * 32;
            if (ow >= pl->WO)
                continue;
            d = z + ((n * pl->HO + oh) * pl->WO + ow) * pl->F;
            cend = jp1 * 32 < pl->F ? jp1 * 32 : pl->F;
            for (c0 = jp0 * 32; c0 < cend; c0 += 16) {
                __mmask16 m16 = pynn_amx_mask(cend - c0);
                __m512 v = _mm512_maskz_loadu_ps(m16, src + c0);
                if (bias)
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m16, bias + c0));
                if (relu)   /* v < 0 ? 0 : v, as the activation kernels write it */
                    v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, _mm512_setzero_ps(),
                                                                _CMP_LT_OQ),
                                             v, _mm512_setzero_ps());
                _mm512_mask_storeu_ps(d + c0, m16, v);
            }
        }
    }
    pynn_amx_end();
}

/* -- stride-1 kernel gradient from the padded image (C a multiple of 32) -------------------
 * In positions (as above), dW[tap] (C x F) = sum over positions p of x[p + shift]^T dz[p]
 * with shift = i * DH * WP + j * DW. It is computed transposed, dW^T[tap] (F x C) += A @ B:
 * A = dz^T (F rows, pairs of consecutive positions, zero where ow >= WO), converted once per
 * sample; B = the image's pairs of consecutive positions starting at the shift, one of two
 * interleaved copies of the padded image (pairs starting at even positions, and at odd
 * ones), so every tap's B tiles load in place (row stride C words). The reduction runs over
 * all of a sample's positions with the accumulators in tiles, no im2col and no drain per 16
 * pairs. */

/* Pair rows [0, npairs) of the two interleaved copies of sample x's padded image (HP x WP
   positions, x's pixel (h, w) at (h + PT, w + PL), zero past the image): even[q][c] =
   (v(2q, c), v(2q + 1, c)), odd[q][c] = (v(2q + 1, c), v(2q + 2, c)), C words per row. */
__attribute__((target("avx512bf16,avx512f,avx512vl,avx512bw"))) static void
pynn_amx_pair_image(const float* x, long H, long W, long C, long HP, long WP, long PT, long PL,
                    long npairs, uint32_t* even, uint32_t* odd) {
    const __m512i order = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25,
                                           9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2,
                                           17, 1, 16, 0);
    long q, b, t;
    for (q = 0; q < npairs; q++) {
        const float* v[3];
        for (t = 0; t < 3; t++) {
            long p = 2 * q + t, h = p / WP - PT, w = p % WP - PL;
            v[t] = p < HP * WP && h >= 0 && h < H && w >= 0 && w < W ? x + (h * W + w) * C
                                                                     : (const float*)0;
        }
        for (b = 0; b < C / 16; b++) {
            __m512 a0 = v[0] ? _mm512_loadu_ps(v[0] + 16 * b) : _mm512_setzero_ps();
            __m512 a1 = v[1] ? _mm512_loadu_ps(v[1] + 16 * b) : _mm512_setzero_ps();
            __m512 a2 = v[2] ? _mm512_loadu_ps(v[2] + 16 * b) : _mm512_setzero_ps();
            _mm512_storeu_si512(even + q * C + 16 * b, _mm512_permutexvar_epi16(
                                    order, (__m512i)_mm512_cvtne2ps_pbh(a1, a0)));
            _mm512_storeu_si512(odd + q * C + 16 * b, _mm512_permutexvar_epi16(
                                    order, (__m512i)_mm512_cvtne2ps_pbh(a2, a1)));
        }
    }
}

/* A panels of dz^T over positions (F rows, kp16 pairs of positions p = oh * WP + ow; zero
   where ow >= WO or oh >= HO) for one sample's dz (HO, WO, F). */
__attribute__((target("avx512bf16,avx512f,avx512vl,avx512bw"))) static void
pynn_amx_dz_positions(const float* dz, long HO, long WO, long WP, long F, long kp16,
                      uint32_t* At) {
    const __m512i order = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25,
                                           9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2,
                                           17, 1, 16, 0);
    long qb, cb, i, t, cblocks = pynn_amx_panels(F) * 2;
    __m512i r[16];
    for (qb = 0; qb < kp16 / 16; qb++)
        for (cb = 0; cb < cblocks; cb++) {
            __mmask16 m = pynn_amx_mask(F - 16 * cb);
            uint32_t* dst = At + cb / 2 * 32 * kp16 + (qb * 2 + cb % 2) * 256;
            for (i = 0; i < 16; i++) {
                __m512 v[2];
                for (t = 0; t < 2; t++) {
                    long p = 2 * (qb * 16 + i) + t, oh = p / WP, ow = p % WP;
                    v[t] = oh < HO && ow < WO
                               ? _mm512_maskz_loadu_ps(m, dz + (oh * WO + ow) * F + 16 * cb)
                               : _mm512_setzero_ps();
                }
                r[i] = _mm512_permutexvar_epi16(order, (__m512i)_mm512_cvtne2ps_pbh(v[1], v[0]));
            }
            pynn_amx_transpose16(r);
            for (i = 0; i < 16; i++)
                _mm512_storeu_si512(dst + i * 16, r[i]);
        }
}

/* acc (taps, Fp, C) floats (Fp = F padded to 32) += one sample's dW^T per tap, from its A
   panels (pynn_amx_dz_positions) and pair images. */
__attribute__((target("avx512bf16,avx512f,avx512vl,avx512bw"))) static void
pynn_amx_conv_wgrad(const uint32_t* At, const uint32_t* even, const uint32_t* odd, long C,
                    long F, long KH, long KW, long DH, long DW, long WP, long kp16, float* acc) {
    const long fp = pynn_amx_panels(F), Fp = fp * 32, ld = C * 4;
    long i, j, fb, cb, qb;
    pynn_amx_begin();
    for (i = 0; i < KH; i++)
        for (j = 0; j < KW; j++) {
            long shift = i * DH * WP + j * DW;
            const uint32_t* base = (shift % 2 ? odd : even) + shift / 2 * C;
            float* tap = acc + (i * KW + j) * Fp * C;
            for (fb = 0; fb < fp; fb++)
                for (cb = 0; cb < C / 32; cb++) {
                    float* c = tap + fb * 32 * C + cb * 32;
                    const uint32_t* a = At + fb * 32 * kp16;
                    const uint32_t* b = base + cb * 32;
                    PYNN_AMX_LOAD(0, c, ld);
                    PYNN_AMX_LOAD(1, c + 16, ld);
                    PYNN_AMX_LOAD(2, c + 16 * C, ld);
                    PYNN_AMX_LOAD(3, c + 16 * C + 16, ld);
                    for (qb = 0; qb < kp16 / 16; qb++, a += 512, b += 16 * C) {
                        PYNN_AMX_LOAD(4, a, 64);
                        PYNN_AMX_LOAD(6, b, ld);
                        PYNN_AMX_DP(0, 4, 6);
                        PYNN_AMX_LOAD(7, b + 16, ld);
                        PYNN_AMX_DP(1, 4, 7);
                        PYNN_AMX_LOAD(5, a + 256, 64);
                        PYNN_AMX_DP(2, 5, 6);
                        PYNN_AMX_DP(3, 5, 7);
                    }
                    PYNN_AMX_STORE(0, c, ld);
                    PYNN_AMX_STORE(1, c + 16, ld);
                    PYNN_AMX_STORE(2, c + 16 * C, ld);
                    PYNN_AMX_STORE(3, c + 16 * C + 16, ld);
                }
        }
    pynn_amx_end();
}

#else /* no AMX: the entry points exist and are never chosen */

static void pynn_amx_a_rows(const float* src, long lds, long m, long k, long r0, long r1,
                            long kp16, uint32_t* At) {}
static void pynn_amx_b_pairs(const float* src, long lds, long k, long n, long q0, long q1,
                             long t0, long t1, long kp16, uint32_t* Bt) {}
static void pynn_amx_a_transposed(const float* y, long ldy, long R, long cols, long qb0,
                                  long qb1, long cb0, long cb1, long kp16, uint32_t* At) {}
static void pynn_amx_b_transposed(const float* z, long ldz, long R, long K, long qb0, long qb1,
                                  long jb0, long jb1, long kp16, uint32_t* Bt) {}
static void pynn_amx_gemm(long m, long n, long kp16, const uint32_t* At, const uint32_t* Bt,
                          float* c, long ldc, int transposed, int accumulate, long u0, long u1,
                          float* blk) {}
static void pynn_amx_gemm_range(long m, long n, long kp16, const uint32_t* At,
                                const uint32_t* Bt, float* c, long ldc, int transposed,
                                int accumulate, long ip0, long ip1, long jp0, long jp1,
                                float* blk) {}
static void pynn_amx_im2col_a(const float* x, const pynn_bf16_conv_geom* g, int m0, int rows,
                              long kp16, uint16_t* row, uint32_t* At) {}
static void pynn_amx_im2col_b(const float* x, const pynn_bf16_conv_geom* g, int m0, int rows,
                              long kp16, uint16_t* tmp, uint32_t* words, uint32_t* Bt) {}
typedef struct {
    long HO, WO, WP, C, F, KH, KW, DH, DW, kp16, pblocks, fgroups, sample_words;
} pynn_amx_conv_plan;
static void pynn_amx_pad_image(const float* x, long H, long W, long C, long WP, long PT,
                               long PL, long h0, long h1, uint32_t* xb) {}
static void pynn_amx_conv_units(const pynn_amx_conv_plan* pl, const uint32_t* xb,
                                const uint32_t* Bt, const float* bias, int relu, float* z,
                                long u0, long u1, float* blk) {}
static void pynn_amx_pair_image(const float* x, long H, long W, long C, long HP, long WP,
                                long PT, long PL, long npairs, uint32_t* even, uint32_t* odd) {}
static void pynn_amx_dz_positions(const float* dz, long HO, long WO, long WP, long F,
                                  long kp16, uint32_t* At) {}
static void pynn_amx_conv_wgrad(const uint32_t* At, const uint32_t* even, const uint32_t* odd,
                                long C, long F, long KH, long KW, long DH, long DW, long WP,
                                long kp16, float* acc) {}
#endif

#endif
