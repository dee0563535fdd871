/* Branch-free float32 gate activations for the recurrence kernels (native/rnn.pyx's
 * fused cells and native/rnn_mask.pyx's whole-row cells): one copy, so both kernels
 * round alike. */
#ifndef PYNN_GATE_ACT_H
#define PYNN_GATE_ACT_H
/* The gates' sigmoid and tanh are native/_vmath.h's gate variants (branch-free float32,
 * within 3 ulp of float64; e^x saturated outside [-87, 88], where sigmoid and tanh have
 * reached their float32 limits): inside that range an LSTM and a Dense(tanh) round alike. */
#include "_vmath.h"

/* Whole-row cells for native/rnn_mask.pyx (float32, Keras's default activations tanh and
 * sigmoid). They live here, in C with restrict, because the same loops written in Cython do
 * not vectorize: GCC cannot rule out overlap between the gate, state and output rows within
 * its alias-check budget, and each element then costs five scalar exp calls (the masked path
 * ran 3x slower than the plain one). */

/* LSTM forward: z holds the gate pre-activations and leaves holding the gates i, f, c~, o;
 * cn = f * cp + i * c~, h = o * tanh(cn). */
static inline void pynn_gate_lstm_fwd_f(float* restrict z, const float* restrict cp,
                                        float* restrict cn, float* restrict h, Py_ssize_t u) {
    Py_ssize_t j;
    for (j = 0; j < u; j++) {
        const float i = pynn_gate_sigmoidf(z[j]);
        const float f = pynn_gate_sigmoidf(z[u + j]);
        const float cc = pynn_gate_tanhf(z[2 * u + j]);
        const float o = pynn_gate_sigmoidf(z[3 * u + j]);
        const float c = f * cp[j] + i * cc;
        z[j] = i; z[u + j] = f; z[2 * u + j] = cc; z[3 * u + j] = o;
        cn[j] = c;
        h[j] = o * pynn_gate_tanhf(c);
    }
}

/* LSTM backward: z the activated gates, cp / cn the cell state before / after the step, dh
 * the output gradient (upstream added; left zero), dc the carried cell gradient (becomes
 * dc_{t-1}); dz gets the gate pre-activation gradients, and dx a copy unless it is NULL (the
 * caller then reads dz for both: one less 4U-wide row stream per step). */
#define PYNN_GATE_LSTM_BWD(STORE_DX)                                                       \
    for (j = 0; j < u; j++) {                                                              \
        const float i = z[j], f = z[u + j], cc = z[2 * u + j], o = z[3 * u + j];           \
        const float tc = pynn_gate_tanhf(cn[j]);                                           \
        const float d = dc[j] + dh[j] * o * (1 - tc * tc);                                 \
        const float zi = d * cc * i * (1 - i), zf = d * cp[j] * f * (1 - f);               \
        const float zc = d * i * (1 - cc * cc), zo = dh[j] * tc * o * (1 - o);             \
        dz[j] = zi; dz[u + j] = zf; dz[2 * u + j] = zc; dz[3 * u + j] = zo;                \
        STORE_DX                                                                           \
        dc[j] = d * f;                                                                     \
        dh[j] = 0;                                                                         \
    }
static inline void pynn_gate_lstm_bwd_f(const float* restrict z, const float* restrict cp,
                                        const float* restrict cn, float* restrict dh,
                                        float* restrict dc, float* restrict dz,
                                        float* restrict dx, Py_ssize_t u) {
    Py_ssize_t j;
    if (dx) { PYNN_GATE_LSTM_BWD(dx[j] = zi; dx[u + j] = zf; dx[2 * u + j] = zc;
                                 dx[3 * u + j] = zo;) }
    else { PYNN_GATE_LSTM_BWD() }
}

/* GRU (reset_after) forward: z holds the pre-activations (z and r complete, the h gate's
 * input side), rh = h_{t-1} @ R_h + b_rh; z leaves holding z, r, hh and
 * h = z * hp + (1 - z) * hh. */
static inline void pynn_gate_gru_fwd_f(float* restrict z, const float* restrict rh,
                                       const float* restrict hp, float* restrict h,
                                       Py_ssize_t u) {
    Py_ssize_t j;
    for (j = 0; j < u; j++) {
        const float zg = pynn_gate_sigmoidf(z[j]);
        const float r = pynn_gate_sigmoidf(z[u + j]);
        const float hh = pynn_gate_tanhf(z[2 * u + j] + r * rh[j]);
        z[j] = zg; z[u + j] = r; z[2 * u + j] = hh;
        h[j] = zg * hp[j] + (1 - zg) * hh;
    }
}

/* GRU (reset_after) backward: dx gets the input side's pre-activation gradients, dz the
 * recurrent side's (the h gate's scaled by r); dh becomes its direct term dh * z. */
static inline void pynn_gate_gru_bwd_f(const float* restrict z, const float* restrict rh,
                                       const float* restrict hp, float* restrict dh,
                                       float* restrict dz, float* restrict dx, Py_ssize_t u) {
    Py_ssize_t j;
    for (j = 0; j < u; j++) {
        const float zg = z[j], r = z[u + j], hh = z[2 * u + j], d = dh[j];
        const float dzg = d * (hp[j] - hh) * zg * (1 - zg);
        const float dhh = d * (1 - zg) * (1 - hh * hh);
        const float dr = dhh * rh[j] * r * (1 - r);
        dx[j] = dzg; dx[u + j] = dr; dx[2 * u + j] = dhh;
        dz[j] = dzg; dz[u + j] = dr; dz[2 * u + j] = dhh * r;
        dh[j] = d * zg;
    }
}

/* SimpleRNN: v = tanh(v) over one row. */
static inline void pynn_gate_tanh_row_f(float* restrict v, Py_ssize_t u) {
    Py_ssize_t j;
    for (j = 0; j < u; j++)
        v[j] = pynn_gate_tanhf(v[j]);
}
#endif
