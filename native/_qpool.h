/* uint8 max pooling rows for native/quant.pyx's int8_max_pool2d (issue 18). In C with
 * restrict so the channel loop becomes byte maxima (vpmaxub): Cython's loop over
 * memoryview items reloaded both rows on every store (a uint8 store may alias them) and
 * stayed scalar. */
#ifndef PYNN_QPOOL_H
#define PYNN_QPOOL_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Output row oy of sample b: y (WO, C) from x (N, H, W, C). Every window holds at least
 * one tap inside the input (MaxPooling2D's geometry), and uint8 0 is the floor. */
static inline void pynn_qmaxpool_row(const uint8_t *restrict x, uint8_t *restrict y,
                                     ptrdiff_t b, ptrdiff_t oy, ptrdiff_t h, ptrdiff_t w,
                                     ptrdiff_t c, ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t sh,
                                     ptrdiff_t sw, ptrdiff_t pt, ptrdiff_t pl, ptrdiff_t wo)
{
    for (ptrdiff_t ox = 0; ox < wo; ++ox) {
        uint8_t *restrict dst = y + ox * c;
        memset(dst, 0, (size_t)c);
        for (ptrdiff_t i = 0; i < ph; ++i) {
            const ptrdiff_t iy = oy * sh - pt + i;
            if (iy < 0 || iy >= h)
                continue;
            for (ptrdiff_t j = 0; j < pw; ++j) {
                const ptrdiff_t ix = ox * sw - pl + j;
                if (ix < 0 || ix >= w)
                    continue;
                const uint8_t *restrict src = x + ((b * h + iy) * w + ix) * c;
                for (ptrdiff_t ch = 0; ch < c; ++ch)
                    dst[ch] = src[ch] > dst[ch] ? src[ch] : dst[ch];
            }
        }
    }
}
#endif
