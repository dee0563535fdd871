/* Max pooling's running winner update, shared by native/pool.pyx's max pooling and
   native/conv.pyx's conv2d_pool_forward (the pooling in a conv's epilogue): one window pixel
   against the running winners of a row of C channels, taken where it is strictly greater,
   or the first NaN (later equal values never replace the winner). Selects and
   unconditional stores, so gcc vectorizes the channel loop; the same update as an if with
   two conditional stores ran scalar on AVX2 (maxpool forward 2x slower). */
#ifndef PYNN_MAXPOOL_H
#define PYNN_MAXPOOL_H

#include <Python.h>

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

#endif
