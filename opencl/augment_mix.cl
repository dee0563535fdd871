/* Kernels of Keras 3's box and mixing augmentations, NHWC: the twin of
 * native/augment_mix.pyx (CutMix, MixUp, RandomErasing).
 *
 * Legend: N batch, H/W spatial, C channels.
 * A box is Keras's [x0, x1, y0, y1] per image: pixel (r, c) is inside when x0 <= c < x1 and
 * y0 <= r < y1. One work-item per output element, c fastest; each reads the elements it
 * combines (the backward gathers through the inverse permutation), so no two work-items
 * write one address.
 */
#include "common.h"

inline int inside_box(__global const float *box, const int r, const int c)
{
    return box[0] <= (float)c && (float)c < box[1] && box[2] <= (float)r && (float)r < box[3];
}

/* y[n] = w[n] x[n] + (1 - w[n]) x[perm[n]] inside box n, x[n] outside. */
__kernel void image_mix_forward(__global const float *x, __global const int *perm,
                                __global const float *weights, __global const float *boxes,
                                __global float *y, const int N, const int H, const int W,
                                const int C)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * H * W * C);
    const int image = H * W * C;
    const int n = gid / image;
    const int within = gid - n * image;
    const int c = (within / C) % W;
    const int r = within / (C * W);
    if (inside_box(boxes + 4 * n, r, c)) {
        const float w = weights[n];
        y[gid] = w * x[gid] + (1.0f - w) * x[(size_t)perm[n] * image + within];
    } else {
        y[gid] = x[gid];
    }
}

/* dx[m] = dy[m] (w[m] inside box m, else 1) + dy[j] (1 - w[j] inside box j, else 0),
 * j = inverse[m]. */
__kernel void image_mix_backward(__global const float *dy, __global const int *inverse,
                                 __global const float *weights, __global const float *boxes,
                                 __global float *dx, const int N, const int H, const int W,
                                 const int C)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * H * W * C);
    const int image = H * W * C;
    const int n = gid / image;
    const int within = gid - n * image;
    const int c = (within / C) % W;
    const int r = within / (C * W);
    const int j = inverse[n];
    const float own = inside_box(boxes + 4 * n, r, c) ? weights[n] : 1.0f;
    const float share = inside_box(boxes + 4 * j, r, c) ? 1.0f - weights[j] : 0.0f;
    dx[gid] = own * dy[gid] + share * dy[(size_t)j * image + within];
}

/* y = clamp(fill, lo, hi) inside box n, x outside; fill per element or per channel. */
__kernel void image_erase_forward(__global const float *x, __global const float *boxes,
                                  __global const float *fill, __global float *y, const int N,
                                  const int H, const int W, const int C,
                                  const int fill_per_element, const float lo, const float hi)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * H * W * C);
    const int image = H * W * C;
    const int n = gid / image;
    const int within = gid - n * image;
    const int c = (within / C) % W;
    const int r = within / (C * W);
    if (inside_box(boxes + 4 * n, r, c))
        y[gid] = clamp(fill[fill_per_element ? gid : gid % C], lo, hi);
    else
        y[gid] = x[gid];
}

/* RandomGaussianBlur, stage 1 of image_blur_forward: down = the zero-padded pass of the
 * vertical taps down the rows of each image to blur (K odd). The kernel is an outer product,
 * so two passes of K taps replace K*K (K reaches 0.3 * min(H, W) for the elastic field). */
__kernel void image_blur_down(__global const float *x, __global const float *vertical,
                              __global const float *blur, __global float *down, const int N,
                              const int H, const int W, const int C, const int K)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * H * W * C);
    const int image = H * W * C;
    const int n = gid / image;
    if (blur[n] == 0.0f)
        return;
    const int row = W * C;
    const int r = (gid - n * image) / row;
    const int pad = K / 2;
    float v = 0.0f;
    for (int i = 0; i < K; ++i) {
        const int rr = r + i - pad;
        if (rr >= 0 && rr < H)
            v += vertical[i] * x[gid + (rr - r) * row];
    }
    down[gid] = v;
}

/* Stage 2: y = clamp(blur[n] ? the horizontal taps across `down` : x, lo, hi). */
__kernel void image_blur_forward(__global const float *x, __global const float *down,
                                 __global const float *horizontal, __global const float *blur,
                                 __global float *y, const int N, const int H, const int W,
                                 const int C, const int K, const float lo, const float hi)
{
    const int gid = get_global_id(0);
    GUARD(gid, N * H * W * C);
    const int n = gid / (H * W * C);
    float v = x[gid];
    if (blur[n] != 0.0f) {
        const int c = (gid / C) % W;
        const int pad = K / 2;
        v = 0.0f;
        for (int k = 0; k < K; ++k) {
            const int cc = c + k - pad;
            if (cc >= 0 && cc < W)
                v += horizontal[k] * down[gid + (cc - c) * C];
        }
    }
    y[gid] = clamp(v, lo, hi);
}
