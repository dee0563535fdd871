/* int8 dot products for native/quant.pyx (issue 18): uint8 activations x int8 weights ->
 * int32, exact (no int16 saturation: AVX2's vpmaddubsw would saturate pairs of products, so the
 * AVX2 path widens to int16 and uses vpmaddwd instead). The instruction set is chosen at build
 * time from the compiler's target (setup.py builds with -march=native):
 *   AVX-512 VNNI: vpdpbusd, 64 products per instruction;
 *   AVX2:         vpmovzxbw / vpmovsxbw + vpmaddwd, 16 per instruction;
 *   otherwise:    the scalar loop (also every path's tail).
 * Lane sums stay exact while k * 255 * 128 < 2^31 (k <= QGEMM_MAX_K, checked by the caller). */
#ifndef PYNN_QGEMM_H
#define PYNN_QGEMM_H
#include <stdint.h>
#include <stddef.h>
#if defined(__AVX512VNNI__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#define QGEMM_MAX_K 65536

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define PYNN_QGEMM_ISA "avx512_vnni"
#elif defined(__AVX2__)
#define PYNN_QGEMM_ISA "avx2"
#else
#define PYNN_QGEMM_ISA "scalar"
#endif

static inline int32_t pynn_dot_u8s8(const uint8_t *x, const int8_t *w, ptrdiff_t k)
{
    int32_t total = 0;
    ptrdiff_t j = 0;
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
    __m512i acc = _mm512_setzero_si512();
    for (; j + 64 <= k; j += 64)
        acc = _mm512_dpbusd_epi32(acc, _mm512_loadu_si512((const void *)(x + j)),
                                  _mm512_loadu_si512((const void *)(w + j)));
    total = _mm512_reduce_add_epi32(acc);
#elif defined(__AVX2__)
    __m256i acc = _mm256_setzero_si256();
    for (; j + 16 <= k; j += 16) {
        __m256i xv = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(x + j)));
        __m256i wv = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + j)));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(xv, wv));
    }
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    total = _mm_cvtsi128_si32(s);
#endif
    for (; j < k; ++j)
        total += (int32_t)x[j] * (int32_t)w[j];
    return total;
}

#endif
