"""Channel-grouped convolutions: DepthwiseConv2D (depthwise_conv2d_*) and Conv2D(groups=G)
(grouped_conv2d_*), forward / backward_input / backward_weight, on one set of kernels.

Legend: N batch, H/W input spatial, C input channels, G groups, CG = C/G input channels and
FG = F/G filters per group, F output channels, KH/KW kernel spatial, HO/WO output spatial,
SH/SW strides, DH/DW dilation, PT/PL leading pads (Keras 'same': the odd pixel goes after).
Layout NHWC; the kernel is (KH, KW, CG, F), Keras's Conv2D(groups) layout: output channel o
of group o // FG reads that group's CG input channels. DepthwiseConv2D is the case G = C,
CG = 1, FG = M (the depth multiplier): its (KH, KW, C, M) kernel is that layout as it is, and
output channel c*M + m reads input channel c (Keras's order).

Design: the reduction is short (KH*KW*CG terms per output) and differs per group, so there
is no one GEMM to hand to BLAS; every loop is direct, innermost over contiguous channels of
x, kernel and y (the compiler vectorizes it; depthwise with M == 1, the common case, is a
plain multiply-add of three rows). Large groups are the GEMM conv's job (Conv2D, groups=1).
- forward: output rows (n, ho) on pynn's worker team; the bias is the start value and the
  activation runs on the row while it is in L1 (softmax per pixel over its CM channels).
  Depthwise with M == 1 in float32 sums each pixel's taps in registers, 16 channels at a
  time (pynn_dw_pixel_f), the same expression in the same order as the tap loop (Intel
  Xeon, 2 threads, 8x56x56x64 3x3: 1.19-1.21 -> 0.75-0.83 ms, the same bits).
- backward_input: a gather by input rows (n, hi) on the team: each dx element is written by
  one thread, in a fixed (kh, kw) order (M == 1, float32: in registers alike, 1.16-1.41 ->
  0.88-0.90 ms).
- backward_weight: the output rows are cut into a fixed number of slabs (not threads), each
  with its own (KH, KW, CM) partial, added in slab order: bit-identical for any thread count.
  M == 1, float32: each tap's partial over an output row's pixels in registers, four
  vectors of channels at once, stored once per row (pynn_dw_weight_run_f; 1.21 -> 0.65-0.67
  ms, the same bits).
Outputs are fresh arrays; nothing accumulates into caller memory.
"""

import numpy as np

from libc.string cimport memset
from _activation cimport ACT_SOFTMAX, act_forward_vec, floating, softmax_row

from _openmp cimport omp_get_max_threads

from pynn.backend.api import ACTIVATIONS, ACTIVATIONS_NEEDING_INPUT
from pynn.backend.operands import depthwise as operands
from pynn.backend.operands.common import HOST

include "_team.pxi"

# Below this many input elements a kernel runs on the calling thread: handing rows to the
# worker team costs more than the pass.
cdef enum:
    PARALLEL_MIN = 32768

# Grouped taps with at least this many filters per group loop over each group's filters
# (contiguous, one vector); fewer run one gathered pass over all F outputs instead. 2 threads
# on a shared, loaded machine (noisy), 32x32x32x64 -> 64, 3x3, forward: groups of 8 filters
# 150 ms looped vs 305 gathered; of 2 filters 141 looped vs 51-90 gathered.
cdef enum:
    _GROUP_VECTOR_MIN = 8

# backward_weight's partial sums: a fixed count, so the summation order never depends on
# the thread count; 16 keeps a few per core on the machines this runs on.
_SLABS = 16


cdef struct Geom:
    Py_ssize_t N, H, W, C, G, CG, FG, F, KH, KW, SH, SW, DH, DW, PT, PL, HO, WO


# Depthwise forward with one filter per channel (M = 1, float32): a pixel's sums for 16
# channels at a time stay in a vector register across its taps, stored once. The tap loop
# over the output row wrote and reread each pixel's row once per tap (nine stores where one
# does). Each sum is the same expression in the same tap order (the bias, or 0, then
# out + x * k per tap, contracted alike: an FMA where the build has FMA), so the same bits.
cdef extern from *:
    """
    #include <string.h>
    #define PYNN_DW_MAX_TAPS 64
    typedef float pynn_dw_v16 __attribute__((vector_size(64), aligned(4), may_alias));
    typedef float pynn_dw_r16 __attribute__((vector_size(64)));
    static inline void pynn_dw_pixel_f(const float* x, const float* k, const float* bias,
                                       float* out, Py_ssize_t C, const Py_ssize_t* xoff,
                                       const Py_ssize_t* koff, int taps) {
        Py_ssize_t c = 0;
        int t;
        for (; c + 16 <= C; c += 16) {
            pynn_dw_r16 acc = bias ? (pynn_dw_r16)(*(const pynn_dw_v16*)(bias + c))
                                   : (pynn_dw_r16){0};
            for (t = 0; t < taps; t++)
                acc = acc + (pynn_dw_r16)(*(const pynn_dw_v16*)(x + xoff[t] + c))
                            * (pynn_dw_r16)(*(const pynn_dw_v16*)(k + koff[t] + c));
            *(pynn_dw_v16*)(out + c) = acc;
        }
        for (; c < C; c++) {
            float s = bias ? bias[c] : 0.0f;
    #if defined(__FMA__)
            for (t = 0; t < taps; t++) s = __builtin_fmaf(x[xoff[t] + c], k[koff[t] + c], s);
    #else
            for (t = 0; t < taps; t++) s = s + x[xoff[t] + c] * k[koff[t] + c];
    #endif
            out[c] = s;
        }
    }
    /* Four neighbouring output pixels of one row whose windows lie wholly inside the row
       (their taps the same, x shifted by xstep per pixel): four independent sums per vector
       of channels and each kernel vector loaded once for the four. One pixel at a time, a
       pixel's chain of taps was one FMA after another (latency-bound: 13-27 GFLOP/s at
       batch 1, MobileNetV2's and EfficientNetB0's layers). Each sum is pynn_dw_pixel_f's
       expression in its tap order: the same bits. */
    static inline void pynn_dw_pixel4_f(const float* x, const float* k, const float* bias,
                                        float* out, Py_ssize_t C, const Py_ssize_t* xoff,
                                        const Py_ssize_t* koff, int taps, Py_ssize_t xstep) {
        Py_ssize_t c = 0;
        int t, p;
        for (; c + 16 <= C; c += 16) {
            pynn_dw_r16 a0 = bias ? (pynn_dw_r16)(*(const pynn_dw_v16*)(bias + c))
                                  : (pynn_dw_r16){0};
            pynn_dw_r16 a1 = a0, a2 = a0, a3 = a0;
            for (t = 0; t < taps; t++) {
                const float* xp = x + xoff[t] + c;
                const pynn_dw_r16 kv = (pynn_dw_r16)(*(const pynn_dw_v16*)(k + koff[t] + c));
                a0 = a0 + (pynn_dw_r16)(*(const pynn_dw_v16*)xp) * kv;
                a1 = a1 + (pynn_dw_r16)(*(const pynn_dw_v16*)(xp + xstep)) * kv;
                a2 = a2 + (pynn_dw_r16)(*(const pynn_dw_v16*)(xp + 2 * xstep)) * kv;
                a3 = a3 + (pynn_dw_r16)(*(const pynn_dw_v16*)(xp + 3 * xstep)) * kv;
            }
            *(pynn_dw_v16*)(out + c) = a0;
            *(pynn_dw_v16*)(out + C + c) = a1;
            *(pynn_dw_v16*)(out + 2 * C + c) = a2;
            *(pynn_dw_v16*)(out + 3 * C + c) = a3;
        }
        for (; c < C; c++) {
            for (p = 0; p < 4; p++) {
                float s = bias ? bias[c] : 0.0f;
    #if defined(__FMA__)
                for (t = 0; t < taps; t++)
                    s = __builtin_fmaf(x[xoff[t] + p * xstep + c], k[koff[t] + c], s);
    #else
                for (t = 0; t < taps; t++) s = s + x[xoff[t] + p * xstep + c] * k[koff[t] + c];
    #endif
                out[p * C + c] = s;
            }
        }
    }
    """
    int PYNN_DW_MAX_TAPS

# The kernel gradient's partial of one tap over one output row (M = 1, float32): each
# channel's products added in pixel order, four vectors of channels in registers at once
# (four independent chains), the partial stored once per row instead of once per pixel.
cdef extern from *:
    """
    static inline void pynn_dw_weight_run_f(const float* x, Py_ssize_t xs, const float* d,
                                            Py_ssize_t count, float* part, Py_ssize_t C) {
        Py_ssize_t c = 0, i;
        for (; c + 64 <= C; c += 64) {
            pynn_dw_r16 a0 = (pynn_dw_r16)(*(const pynn_dw_v16*)(part + c));
            pynn_dw_r16 a1 = (pynn_dw_r16)(*(const pynn_dw_v16*)(part + c + 16));
            pynn_dw_r16 a2 = (pynn_dw_r16)(*(const pynn_dw_v16*)(part + c + 32));
            pynn_dw_r16 a3 = (pynn_dw_r16)(*(const pynn_dw_v16*)(part + c + 48));
            for (i = 0; i < count; i++) {
                const float* xp = x + i * xs + c;
                const float* dp = d + i * C + c;
                a0 = a0 + (pynn_dw_r16)(*(const pynn_dw_v16*)xp)
                          * (pynn_dw_r16)(*(const pynn_dw_v16*)dp);
                a1 = a1 + (pynn_dw_r16)(*(const pynn_dw_v16*)(xp + 16))
                          * (pynn_dw_r16)(*(const pynn_dw_v16*)(dp + 16));
                a2 = a2 + (pynn_dw_r16)(*(const pynn_dw_v16*)(xp + 32))
                          * (pynn_dw_r16)(*(const pynn_dw_v16*)(dp + 32));
                a3 = a3 + (pynn_dw_r16)(*(const pynn_dw_v16*)(xp + 48))
                          * (pynn_dw_r16)(*(const pynn_dw_v16*)(dp + 48));
            }
            *(pynn_dw_v16*)(part + c) = a0;
            *(pynn_dw_v16*)(part + c + 16) = a1;
            *(pynn_dw_v16*)(part + c + 32) = a2;
            *(pynn_dw_v16*)(part + c + 48) = a3;
        }
        for (; c + 16 <= C; c += 16) {
            pynn_dw_r16 a = (pynn_dw_r16)(*(const pynn_dw_v16*)(part + c));
            for (i = 0; i < count; i++)
                a = a + (pynn_dw_r16)(*(const pynn_dw_v16*)(x + i * xs + c))
                        * (pynn_dw_r16)(*(const pynn_dw_v16*)(d + i * C + c));
            *(pynn_dw_v16*)(part + c) = a;
        }
        for (; c < C; c++) {
            float s = part[c];
            for (i = 0; i < count; i++)
    #if defined(__FMA__)
                s = __builtin_fmaf(x[i * xs + c], d[i * C + c], s);
    #else
                s = s + x[i * xs + c] * d[i * C + c];
    #endif
            part[c] = s;
        }
    }
    """
    void pynn_dw_weight_run_f(const float* x, Py_ssize_t xs, const float* d, Py_ssize_t count,
                              float* part, Py_ssize_t C) noexcept nogil
    void pynn_dw_pixel_f(const float* x, const float* k, const float* bias, float* out,
                         Py_ssize_t C, const Py_ssize_t* xoff, const Py_ssize_t* koff,
                         int taps) noexcept nogil
    void pynn_dw_pixel4_f(const float* x, const float* k, const float* bias, float* out,
                          Py_ssize_t C, const Py_ssize_t* xoff, const Py_ssize_t* koff,
                          int taps, Py_ssize_t xstep) noexcept nogil


def _geom(g):
    return {k: g[k] for k in ("N", "H", "W", "C", "G", "CG", "FG", "F", "KH", "KW", "SH",
                              "SW", "DH", "DW", "PT", "PL", "HO", "WO")}


cdef inline void _tap(const floating* xp, const floating* kp, floating* out, const Geom* g,
                      const int* first) noexcept nogil:
    """out[o] += sum over ci of xp[first[o] + ci] * kp[ci*F + o]: one kernel tap (kp, a
    (CG, F) slice) over all channels of one pixel; first[o] = group(o) * CG."""
    cdef Py_ssize_t c, m, ci, grp, FG = g.FG, CG = g.CG, F = g.F
    cdef floating v
    cdef const floating* kr
    cdef floating* o
    if CG == 1 and FG == 1:
        for c in range(F):
            out[c] += xp[c] * kp[c]
    elif CG == 1:
        for c in range(g.G):
            for m in range(FG):
                out[c * FG + m] += xp[c] * kp[c * FG + m]
    elif FG >= _GROUP_VECTOR_MIN:
        for grp in range(g.G):
            o = out + grp * FG
            for ci in range(CG):
                v = xp[grp * CG + ci]
                kr = kp + ci * F + grp * FG
                for m in range(FG):
                    o[m] += v * kr[m]
    else:
        # Too few filters per group for that loop to vectorize: one pass over all F outputs
        # per input channel of the groups instead, x gathered through first.
        for ci in range(CG):
            kr = kp + ci * F
            for c in range(F):
                out[c] += xp[first[c] + ci] * kr[c]


cdef inline void _tap_weight(const floating* xp, const floating* dp, floating* part,
                             const Geom* g, const int* first) noexcept nogil:
    """part[ci*F + o] += xp[first[o] + ci] * dp[o]: the kernel gradient of one tap at one
    output pixel (_tap with the roles of kernel and output swapped)."""
    cdef Py_ssize_t ci, c, m, grp, FG = g.FG, CG = g.CG, F = g.F
    cdef floating v
    cdef floating* pr
    cdef const floating* d
    if CG == 1:
        _tap(xp, dp, part, g, first)
        return
    if FG >= _GROUP_VECTOR_MIN:
        for grp in range(g.G):
            d = dp + grp * FG
            for ci in range(CG):
                v = xp[grp * CG + ci]
                pr = part + ci * F + grp * FG
                for m in range(FG):
                    pr[m] += v * d[m]
        return
    for ci in range(CG):
        pr = part + ci * F
        for c in range(F):
            pr[c] += xp[first[c] + ci] * dp[c]


cdef inline int _window_taps(const Geom* g, Py_ssize_t n, Py_ssize_t ho, Py_ssize_t wo,
                             Py_ssize_t* xoff, Py_ssize_t* koff) noexcept nogil:
    """The taps of output pixel (n, ho, wo) that land inside x, in (kh, kw) order: each
    one's offset in x and in the kernel; their count."""
    cdef Py_ssize_t kh, kw, hi, wi
    cdef int taps = 0
    for kh in range(g.KH):
        hi = ho * g.SH - g.PT + kh * g.DH
        if hi < 0 or hi >= g.H:
            continue
        for kw in range(g.KW):
            wi = wo * g.SW - g.PL + kw * g.DW
            if wi < 0 or wi >= g.W:
                continue
            xoff[taps] = ((n * g.H + hi) * g.W + wi) * g.C
            koff[taps] = (kh * g.KW + kw) * g.CG * g.F
            taps = taps + 1
    return taps


cdef inline int _input_taps(const Geom* g, Py_ssize_t n, Py_ssize_t hi, Py_ssize_t wi,
                            Py_ssize_t* doff, Py_ssize_t* koff) noexcept nogil:
    """The outputs whose windows cover input pixel (n, hi, wi), in (kh, kw) order: each
    one's offset in dz and its tap's in the kernel; their count."""
    cdef Py_ssize_t kh, kw, num, ho, wo
    cdef int taps = 0
    for kh in range(g.KH):
        num = hi + g.PT - kh * g.DH
        if num < 0 or num % g.SH != 0:
            continue
        ho = num // g.SH
        if ho >= g.HO:
            continue
        for kw in range(g.KW):
            num = wi + g.PL - kw * g.DW
            if num < 0 or num % g.SW != 0:
                continue
            wo = num // g.SW
            if wo >= g.WO:
                continue
            doff[taps] = ((n * g.HO + ho) * g.WO + wo) * g.F
            koff[taps] = (kh * g.KW + kw) * g.CG * g.F
            taps = taps + 1
    return taps


cdef void _forward_row(const floating* x, const floating* k, const floating* bias, floating* z,
                       floating* y, const Geom* g, const int* first, Py_ssize_t r, int act,
                       floating alpha, Py_ssize_t* lists) noexcept nogil:
    """Output row r = n*HO + ho: z = bias + taps, then y = act(z) (y may alias z). lists:
    room for two lists of a pixel's taps where the kernel has more than PYNN_DW_MAX_TAPS,
    else NULL (they fit on the stack)."""
    cdef Py_ssize_t n = r // g.HO, ho = r % g.HO, CM = g.F
    cdef Py_ssize_t wo, j
    cdef floating* zr = z + r * g.WO * CM
    cdef floating* yr = y + r * g.WO * CM
    cdef floating* out
    cdef Py_ssize_t stack[2 * 64]
    cdef Py_ssize_t* xoff = &stack[0] if lists == NULL else lists
    cdef Py_ssize_t* koff = xoff + g.KH * g.KW
    cdef int taps, t
    # The pixels whose windows lie inside the row along W, [lo, hi]: four at a time there.
    cdef Py_ssize_t lo = (g.PL + g.SW - 1) // g.SW
    cdef Py_ssize_t span = g.W - 1 - (g.KW - 1) * g.DW + g.PL
    cdef Py_ssize_t hi = span // g.SW if span >= 0 else -1
    if floating is float and g.CG == 1 and g.FG == 1:
        wo = 0
        while wo < g.WO:
            taps = _window_taps(g, n, ho, wo, xoff, koff)
            if wo >= lo and wo + 3 <= hi and wo + 3 < g.WO:
                pynn_dw_pixel4_f(x, k, bias, zr + wo * CM, CM, xoff, koff, taps,
                                 g.SW * g.C)
                wo = wo + 4
            else:
                pynn_dw_pixel_f(x, k, bias, zr + wo * CM, CM, xoff, koff, taps)
                wo = wo + 1
        if act == ACT_SOFTMAX:
            for wo in range(g.WO):
                softmax_row(zr + wo * CM, yr + wo * CM, CM)
        else:
            act_forward_vec(zr, yr, g.WO * CM, act, alpha)
        return
    for wo in range(g.WO):
        out = zr + wo * CM
        taps = _window_taps(g, n, ho, wo, xoff, koff)
        if bias != NULL:
            for j in range(CM):
                out[j] = bias[j]
        else:
            memset(out, 0, CM * sizeof(floating))
        for t in range(taps):
            _tap(x + xoff[t], k + koff[t], out, g, first)
    if act == ACT_SOFTMAX:
        for wo in range(g.WO):
            softmax_row(zr + wo * CM, yr + wo * CM, CM)
    else:
        act_forward_vec(zr, yr, g.WO * CM, act, alpha)


cdef void _backward_input_row(const floating* dz, const floating* k, floating* dx,
                              const Geom* g, Py_ssize_t r, Py_ssize_t* lists) noexcept nogil:
    """Input row r = n*H + hi of dx: every dz element whose window covers it, times its tap,
    summed over the outputs of each input channel's group, in (kh, kw) order. lists: see
    _forward_row."""
    cdef Py_ssize_t n = r // g.H, hi = r % g.H, C = g.C, F = g.F, FG = g.FG, CG = g.CG
    cdef Py_ssize_t wi, c, m, grp, ci
    cdef floating* out
    cdef const floating* dp
    cdef const floating* kp
    cdef const floating* kr
    cdef floating s
    cdef Py_ssize_t stack[2 * 64]
    cdef Py_ssize_t* doff = &stack[0] if lists == NULL else lists
    cdef Py_ssize_t* koff = doff + g.KH * g.KW
    cdef int taps, t
    for wi in range(g.W):
        out = dx + (r * g.W + wi) * C
        taps = _input_taps(g, n, hi, wi, doff, koff)
        if floating is float and CG == 1 and FG == 1:
            # the sums in registers from 0 (pynn_dw_pixel_f), as the loop below from zeros
            pynn_dw_pixel_f(dz, k, NULL, out, C, doff, koff, taps)
            continue
        memset(out, 0, C * sizeof(floating))
        for t in range(taps):
            dp = dz + doff[t]
            kp = k + koff[t]
            if CG == 1 and FG == 1:
                for c in range(C):
                    out[c] += dp[c] * kp[c]
            else:
                for grp in range(g.G):
                    for ci in range(CG):
                        kr = kp + ci * F + grp * FG
                        s = 0
                        for m in range(FG):
                            s = s + dp[grp * FG + m] * kr[m]
                        out[grp * CG + ci] += s


cdef inline Py_ssize_t _ceil_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """ceil(a / b) for b > 0, any sign of a."""
    return -((-a) // b) if a < 0 else (a + b - 1) // b


cdef void _backward_weight_slab(const floating* x, const floating* dz, floating* part,
                                const Geom* g, const int* first, Py_ssize_t r0,
                                Py_ssize_t r1) noexcept nogil:
    """part (KH, KW, CG, F) = the kernel gradient over output rows [r0, r1)."""
    cdef Py_ssize_t CM = g.F, KT = g.CG * g.F
    cdef Py_ssize_t r, n, ho, wo, kh, kw, hi, wi, lo, hi_end
    memset(part, 0, g.KH * g.KW * KT * sizeof(floating))
    for r in range(r0, r1):
        n = r // g.HO
        ho = r % g.HO
        for kh in range(g.KH):
            hi = ho * g.SH - g.PT + kh * g.DH
            if hi < 0 or hi >= g.H:
                continue
            if floating is float and g.CG == 1 and g.FG == 1:
                # each tap's partial over the row's pixels whose window puts it inside x (a
                # run of wo), in the loop below's pixel order per channel: the same bits
                for kw in range(g.KW):
                    # wo with 0 <= wo*SW - PL + kw*DW < W
                    lo = _ceil_div(g.PL - kw * g.DW, g.SW)
                    if lo < 0:
                        lo = 0
                    hi_end = _ceil_div(g.W + g.PL - kw * g.DW, g.SW)
                    if hi_end > g.WO:
                        hi_end = g.WO
                    if hi_end <= lo:
                        continue
                    wi = lo * g.SW - g.PL + kw * g.DW
                    pynn_dw_weight_run_f(x + ((n * g.H + hi) * g.W + wi) * g.C, g.SW * g.C,
                                         dz + (r * g.WO + lo) * CM, hi_end - lo,
                                         part + (kh * g.KW + kw) * KT, CM)
                continue
            for wo in range(g.WO):
                for kw in range(g.KW):
                    wi = wo * g.SW - g.PL + kw * g.DW
                    if wi < 0 or wi >= g.W:
                        continue
                    _tap_weight(x + ((n * g.H + hi) * g.W + wi) * g.C,
                                dz + (r * g.WO + wo) * CM, part + (kh * g.KW + kw) * KT, g,
                                first)


ctypedef struct _DepthwiseJob:
    bint is_double
    const void* x        # forward, weight gradient: x; input gradient: dz
    const void* k
    const void* bias
    const void* dz       # weight gradient
    void* z              # forward: z; weight gradient: the slabs' partials
    void* y              # forward: y; input gradient: dx
    const Geom* g
    const int* first
    int act
    double alpha
    long slabs
    Py_ssize_t width
    Py_ssize_t* lists    # per team slot, two tap lists of KH*KW (kernels over 64 taps)


cdef inline int _threads(Geom g) noexcept nogil:
    return omp_get_max_threads() if g.N * g.H * g.W * g.F >= PARALLEL_MIN else 1


cdef inline Py_ssize_t* _slot_lists(const _DepthwiseJob* j, int slot) noexcept nogil:
    return NULL if j.lists == NULL else j.lists + slot * 2 * j.g.KH * j.g.KW


cdef void _forward_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    """Output rows; each on one thread, as the serial loop writes it."""
    cdef _DepthwiseJob* j = <_DepthwiseJob*>ctx
    cdef Py_ssize_t* lists = _slot_lists(j, slot)
    cdef long r
    for r in range(begin, end):
        if j.is_double:
            _forward_row(<const double*>j.x, <const double*>j.k, <const double*>j.bias,
                         <double*>j.z, <double*>j.y, j.g, j.first, r, j.act, <double>j.alpha,
                         lists)
        else:
            _forward_row(<const float*>j.x, <const float*>j.k, <const float*>j.bias,
                         <float*>j.z, <float*>j.y, j.g, j.first, r, j.act, <float>j.alpha,
                         lists)


cdef void _backward_input_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _DepthwiseJob* j = <_DepthwiseJob*>ctx
    cdef Py_ssize_t* lists = _slot_lists(j, slot)
    cdef long r
    for r in range(begin, end):
        if j.is_double:
            _backward_input_row(<const double*>j.x, <const double*>j.k, <double*>j.y, j.g, r,
                                lists)
        else:
            _backward_input_row(<const float*>j.x, <const float*>j.k, <float*>j.y, j.g, r,
                                lists)


cdef void _backward_weight_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    """Slabs of output rows, fixed by the shape: each its own partial."""
    cdef _DepthwiseJob* j = <_DepthwiseJob*>ctx
    cdef Py_ssize_t rows = j.g.N * j.g.HO
    cdef long s
    for s in range(begin, end):
        if j.is_double:
            _backward_weight_slab(<const double*>j.x, <const double*>j.dz,
                                  <double*>j.z + s * j.width, j.g, j.first,
                                  s * rows // j.slabs, (s + 1) * rows // j.slabs)
        else:
            _backward_weight_slab(<const float*>j.x, <const float*>j.dz,
                                  <float*>j.z + s * j.width, j.g, j.first,
                                  s * rows // j.slabs, (s + 1) * rows // j.slabs)


cdef object _lists(Geom g, int threads, _DepthwiseJob* job):
    """job.lists for a kernel of more taps than the rows' stack lists hold (NULL otherwise);
    the array that holds them, kept alive by the caller for the job."""
    cdef Py_ssize_t[::1] view
    job.lists = NULL
    if g.KH * g.KW <= PYNN_DW_MAX_TAPS:
        return None
    lists = np.empty(max(threads, 1) * 2 * g.KH * g.KW, dtype=np.intp)
    view = lists
    job.lists = &view[0]
    return lists


def _run_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] kernel, bias,
                 floating[:, :, :, ::1] z, floating[:, :, :, ::1] y, Geom g,
                 const int[::1] first, int act, double alpha):
    cdef const floating[::1] b
    cdef const floating* bp = NULL
    if bias is not None:
        b = bias
        bp = &b[0]
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef const floating* kp = &kernel[0, 0, 0, 0]
    cdef floating* zp = &z[0, 0, 0, 0]
    cdef floating* yp = &y[0, 0, 0, 0]
    cdef _DepthwiseJob job
    cdef int threads = _threads(g)
    job.is_double, job.x, job.k, job.bias, job.z, job.y = floating is double, xp, kp, bp, \
        zp, yp
    job.g, job.first, job.act, job.alpha = &g, &first[0], act, alpha
    lists = _lists(g, threads, &job)
    with nogil:
        pynn_team_for(g.N * g.HO, team_grain(g.N * g.HO, threads), threads,
                      _forward_job, &job)


def _run_backward_input(const floating[:, :, :, ::1] dz, const floating[:, :, :, ::1] kernel,
                        floating[:, :, :, ::1] dx, Geom g):
    cdef _DepthwiseJob job
    cdef int threads = _threads(g)
    job.is_double, job.x, job.k, job.y = floating is double, &dz[0, 0, 0, 0], \
        &kernel[0, 0, 0, 0], &dx[0, 0, 0, 0]
    job.g = &g
    lists = _lists(g, threads, &job)
    with nogil:
        pynn_team_for(g.N * g.H, team_grain(g.N * g.H, threads), threads,
                      _backward_input_job, &job)


def _run_backward_weight(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] dz,
                         floating[:, ::1] part, Geom g, const int[::1] first):
    cdef _DepthwiseJob job
    cdef int threads = _threads(g)
    cdef long slabs = part.shape[0]
    job.is_double, job.x, job.dz, job.z = floating is double, &x[0, 0, 0, 0], \
        &dz[0, 0, 0, 0], &part[0, 0]
    job.g, job.first, job.slabs, job.width = &g, &first[0], slabs, part.shape[1]
    with nogil:
        pynn_team_for(slabs, 1, threads, _backward_weight_job, &job)


# The ops: both layouts run the kernels above; operands.depthwise gives each its geometry.


def _first_channels(g):
    """first[o]: the first input channel of output channel o's group (int32, gathered)."""
    return (np.arange(g["F"], dtype=np.int32) // g["FG"]) * np.int32(g["CG"])


def _forward(checked):
    name, a, x, kernel, bias, g = checked
    keep_z = name in ACTIVATIONS_NEEDING_INPUT
    z = np.empty((g["N"], g["HO"], g["WO"], g["F"]), dtype=x.dtype)
    y = np.empty_like(z) if keep_z else z
    if z.size:  # then x and the kernel hold data too: HO, WO > 0 need H, W > 0
        _run_forward(x, kernel, bias, z, y, _geom(g), _first_channels(g),
                     ACTIVATIONS.index(name), a)
    return y, (z if keep_z else None)


def _backward_input(checked):
    dz, kernel, input_shape, g = checked
    if dz.size == 0 or 0 in input_shape or kernel.size == 0:
        return np.zeros(input_shape, dtype=dz.dtype)
    dx = np.empty(input_shape, dtype=dz.dtype)
    _run_backward_input(dz, kernel, dx, _geom(g))
    return dx


def _backward_weight(checked):
    """Partial sums per slab of output rows, added in slab order."""
    x, dz, kernel_shape, g = checked
    if dz.size == 0 or x.size == 0 or 0 in kernel_shape:
        return np.zeros(kernel_shape, dtype=x.dtype)
    slabs = min(_SLABS, g["N"] * g["HO"])
    part = np.empty((slabs, int(np.prod(kernel_shape))), dtype=x.dtype)
    _run_backward_weight(x, dz, part, _geom(g), _first_channels(g))
    return np.add.reduce(part, axis=0).reshape(kernel_shape)


def depthwise_conv2d_forward(x, kernel, bias, strides=(1, 1), padding="valid",
                             dilation_rate=(1, 1), activation="linear", alpha=0.0):
    """y = act(depthwise(x, kernel) + bias) -> (y, z).

    x (N, H, W, C), kernel (KH, KW, C, M), bias (C*M,) or None; y (N, HO, WO, C*M). z is
    the pre-activation when the activation needs it for backward (gelu), else None."""
    return _forward(operands.depthwise_conv2d_forward(
        HOST, x, kernel, bias, strides, padding, dilation_rate, activation, alpha))


def depthwise_conv2d_backward_input(dz, kernel, input_shape, strides=(1, 1), padding="valid",
                                    dilation_rate=(1, 1)):
    """dx (N, H, W, C) from dz (N, HO, WO, C*M)."""
    return _backward_input(operands.depthwise_conv2d_backward_input(
        HOST, dz, kernel, input_shape, strides, padding, dilation_rate))


def depthwise_conv2d_backward_weight(x, dz, kernel_shape, strides=(1, 1), padding="valid",
                                     dilation_rate=(1, 1)):
    """dkernel (KH, KW, C, M)."""
    return _backward_weight(operands.depthwise_conv2d_backward_weight(
        HOST, x, dz, kernel_shape, strides, padding, dilation_rate))


def grouped_conv2d_forward(x, kernel, bias, strides=(1, 1), padding="valid",
                           dilation_rate=(1, 1), groups=1, activation="linear", alpha=0.0):
    """Conv2D(groups=G): y = act(grouped_conv(x, kernel) + bias) -> (y, z).

    x (N, H, W, C), kernel (KH, KW, C/G, F), bias (F,) or None; y (N, HO, WO, F)."""
    return _forward(operands.grouped_conv2d_forward(
        HOST, x, kernel, bias, strides, padding, dilation_rate, groups, activation, alpha))


def grouped_conv2d_backward_input(dz, kernel, input_shape, strides=(1, 1), padding="valid",
                                  dilation_rate=(1, 1), groups=1):
    """dx (N, H, W, C) from dz (N, HO, WO, F)."""
    return _backward_input(operands.grouped_conv2d_backward_input(
        HOST, dz, kernel, input_shape, strides, padding, dilation_rate, groups))


def grouped_conv2d_backward_weight(x, dz, kernel_shape, strides=(1, 1), padding="valid",
                                   dilation_rate=(1, 1), groups=1):
    """dkernel (KH, KW, C/G, F)."""
    return _backward_weight(operands.grouped_conv2d_backward_weight(
        HOST, x, dz, kernel_shape, strides, padding, dilation_rate, groups))
