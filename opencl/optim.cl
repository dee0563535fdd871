/* Optimizer updates, regularizers and norms: the twin of native/optim.pyx.
 *
 * Legend: n parameter elements (any shape, flattened: every op here is elementwise).
 * Each *_update is ONE pass over the parameter, in place, one work-item per element:
 * (1) g = clip(g * scale, -clip, clip) (clip <= 0: none; NaN passes through), (2) decoupled
 * weight decay w -= w * decay (decay = weight_decay * lr, formed on the host in double),
 * (3) the rule, with Keras 3's formulas in the CPU kernel's operation order. Coefficients that
 * depend only on hyper-parameters (Adam's alpha, 1 - beta) come from the host, in double
 * rounded once to float, as on the CPU.
 * Slots an option does not use are flagged off; the host then passes w in their place and the
 * kernel never touches them.
 * Pruning masks (issue 18): every *_update takes a uchar mask shaped like w (use_mask 0: none,
 * the host passes w's buffer and it is never read); where it is 0 the new weight and every slot
 * are stored as exact zeros in the same pass (KEPT), so pruned weights stay zero and no
 * optimizer state moves them.
 * Reductions (sum_squares, the penalty of regularizer_inplace) are two-stage: a grid-stride
 * pass writes one partial per work-group, sum_partials_float folds them (wg_reduce.h).
 */
#include "common.h"
#define PYNN_SUM_PARTIALS
#include "wg_reduce.h"

float clipped_grad(float g, float scale, float clip)
{
    g = g * scale;
    if (clip > 0.0f) {
        if (g > clip)
            g = clip;
        else if (g < -clip)
            g = -clip;
    }
    return g;
}

#define MASK_ARGS __global const uchar *mask, const int use_mask
#define KEEP_OF(i) (!use_mask || mask[i])
#define KEPT(x) (keep ? (x) : 0.0f)

float decayed(float w, float decay)
{
    return decay != 0.0f ? w - w * decay : w;
}

__kernel void sgd_update(__global float *w, __global const float *g, __global float *buf,
                         const int n, const int use_buf, const int nesterov, const float lr,
                         const float momentum, const float scale, const float clip,
                         const float decay,
                         MASK_ARGS)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    const int keep = KEEP_OF(i);
    const float gi = clipped_grad(g[i], scale, clip);
    float wi = decayed(w[i], decay);
    if (use_buf) {
        const float mi = buf[i] * momentum - gi * lr;
        buf[i] = KEPT(mi);
        wi = nesterov ? wi + (mi * momentum - gi * lr) : wi + mi;
    } else {
        wi = wi - gi * lr;
    }
    w[i] = KEPT(wi);
}

/* alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t); epsilon on the uncorrected sqrt(v). */
__kernel void adam_update(__global float *w, __global const float *g, __global float *m,
                          __global float *v, __global float *vhat, const int n,
                          const int amsgrad, const float alpha, const float one_b1,
                          const float one_b2, const float eps, const float scale,
                          const float clip, const float decay,
                         MASK_ARGS)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    const int keep = KEEP_OF(i);
    const float gi = clipped_grad(g[i], scale, clip);
    const float wi = decayed(w[i], decay);
    const float mi = m[i] + (gi - m[i]) * one_b1;
    float vi = v[i] + (gi * gi - v[i]) * one_b2;
    m[i] = KEPT(mi);
    v[i] = KEPT(vi);
    if (amsgrad) {
        if (vhat[i] > vi)
            vi = vhat[i];
        vhat[i] = KEPT(vi);
    }
    w[i] = KEPT(wi - (mi * alpha) / (sqrt(vi) + eps));
}

/* epsilon inside the square root (Keras, unlike PyTorch). */
__kernel void rmsprop_update(__global float *w, __global const float *g, __global float *vel,
                             __global float *mom, __global float *avg, const int n,
                             const int use_mom, const int centered, const float lr,
                             const float rho, const float one_rho, const float momentum,
                             const float eps, const float scale, const float clip,
                             const float decay,
                         MASK_ARGS)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    const int keep = KEEP_OF(i);
    const float gi = clipped_grad(g[i], scale, clip);
    const float wi = decayed(w[i], decay);
    const float vi = rho * vel[i] + one_rho * (gi * gi);
    vel[i] = KEPT(vi);
    float den;
    if (centered) {
        const float ai = rho * avg[i] + one_rho * gi;
        avg[i] = KEPT(ai);
        den = vi - ai * ai + eps;
    } else {
        den = vi + eps;
    }
    float inc = (lr * gi) / sqrt(den);
    if (use_mom) {
        inc = momentum * mom[i] + inc;
        mom[i] = KEPT(inc);
    }
    w[i] = KEPT(wi - inc);
}

__kernel void adagrad_update(__global float *w, __global const float *g, __global float *acc,
                             const int n, const float lr, const float eps, const float scale,
                             const float clip, const float decay,
                         MASK_ARGS)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    const int keep = KEEP_OF(i);
    const float gi = clipped_grad(g[i], scale, clip);
    const float wi = decayed(w[i], decay);
    const float ai = acc[i] + gi * gi;
    acc[i] = KEPT(ai);
    w[i] = KEPT(wi - (lr * gi) / sqrt(ai + eps));
}

/* Stage 1 of sum(a^2): partial[group] over a grid-stride slice. */
__kernel __attribute__((reqd_work_group_size(WG_SIZE, 1, 1)))
void sum_squares_partial(__global const float *a, __global float *partial, const int n)
{
    __local float buf[WG_SIZE];
    const int stride = get_global_size(0);
    float acc = 0.0f;
    for (int i = get_global_id(0); i < n; i += stride)
        acc += a[i] * a[i];
    acc = wg_sum_float(buf, acc);
    if (get_local_id(0) == 0)
        partial[get_group_id(0)] = acc;
}

/* grad += l1*sign(w) + 2*l2*w (sign(0) = 0, Keras's subgradient) and stage 1 of the penalty
 * l1*|w| + l2*w^2. */
__kernel __attribute__((reqd_work_group_size(WG_SIZE, 1, 1)))
void regularizer_partial(__global const float *w, __global float *grad,
                         __global float *partial, const int n, const float l1,
                         const float l2)
{
    __local float buf[WG_SIZE];
    const int stride = get_global_size(0);
    const float two_l2 = 2.0f * l2;
    float acc = 0.0f;
    for (int i = get_global_id(0); i < n; i += stride) {
        const float wi = w[i];
        const float sign = (float)((wi > 0.0f) - (wi < 0.0f));
        grad[i] = grad[i] + (l1 * sign + two_l2 * wi);
        acc += l1 * fabs(wi) + l2 * wi * wi;
    }
    acc = wg_sum_float(buf, acc);
    if (get_local_id(0) == 0)
        partial[get_group_id(0)] = acc;
}

/* -- issue 12: weight constraints, the twin of native/optim.pyx's constraint_inplace ------
 * w viewed as (outer, K, inner), one work-item per (outer, inner) line: its norm over K,
 * then w *= desired / (CONSTRAINT_EPSILON + norm). non_neg is elementwise (maximum(w, 0)).
 * kind codes follow pynn.backend.api.CONSTRAINTS.
 */
#define CON_MAX_NORM 0
#define CON_NON_NEG 1
#define CON_UNIT_NORM 2
#define CON_MIN_MAX_NORM 3
#define CONSTRAINT_EPSILON 1e-7f /* keras.backend.epsilon() */

__kernel void constraint_inplace(__global float *w, const int lines, const int k,
                                 const int inner, const int kind, const float min_value,
                                 const float max_value, const float rate)
{
    const int t = get_global_id(0);
    GUARD(t, lines);
    const size_t base = (size_t)(t / inner) * k * inner + t % inner;
    if (kind == CON_NON_NEG) {
        for (int j = 0; j < k; ++j) {
            const float v = w[base + (size_t)j * inner];
            w[base + (size_t)j * inner] = v >= 0.0f ? v : 0.0f;
        }
        return;
    }
    float ss = 0.0f;
    for (int j = 0; j < k; ++j) {
        const float v = w[base + (size_t)j * inner];
        ss += v * v;
    }
    const float norm = sqrt(ss);
    float desired = 1.0f;
    if (kind == CON_MAX_NORM)
        desired = fmin(norm, max_value);
    else if (kind == CON_MIN_MAX_NORM)
        desired = rate * fmin(fmax(norm, min_value), max_value) + (1.0f - rate) * norm;
    const float factor = desired / (CONSTRAINT_EPSILON + norm);
    for (int j = 0; j < k; ++j)
        w[base + (size_t)j * inner] *= factor;
}

/* -- Nadam, Adamax, Adadelta, Ftrl, Lion (issue 15): the twins of native/optim.pyx's; the
 * host forms the scalar coefficients as the CPU does (pynn.backend.operands.optim). */
__kernel void nadam_update(__global float *w, __global const float *g, __global float *m,
                           __global float *v, const int n, const float lr, const float one_b1,
                           const float one_b2, const float eps, const float c_m,
                           const float c_g, const float bc2, const float scale,
                           const float clip, const float decay,
                         MASK_ARGS)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    const int keep = KEEP_OF(i);
    const float gi = clipped_grad(g[i], scale, clip);
    const float wi = decayed(w[i], decay);
    const float mi = m[i] + (gi - m[i]) * one_b1;
    const float vi = v[i] + (gi * gi - v[i]) * one_b2;
    m[i] = KEPT(mi);
    v[i] = KEPT(vi);
    const float mh = c_m * mi + c_g * gi;
    w[i] = KEPT(wi - (mh * lr) / (sqrt(vi / bc2) + eps));
}

__kernel void adamax_update(__global float *w, __global const float *g, __global float *m,
                            __global float *u, const int n, const float lr,
                            const float one_b1, const float beta_2, const float eps,
                            const float bc1, const float scale, const float clip,
                            const float decay,
                         MASK_ARGS)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    const int keep = KEEP_OF(i);
    const float gi = clipped_grad(g[i], scale, clip);
    const float wi = decayed(w[i], decay);
    const float mi = m[i] + (gi - m[i]) * one_b1;
    const float ui = fmax(beta_2 * u[i], fabs(gi));
    m[i] = KEPT(mi);
    u[i] = KEPT(ui);
    w[i] = KEPT(wi - (lr * mi) / (bc1 * (ui + eps)));
}

__kernel void adadelta_update(__global float *w, __global const float *g, __global float *ag,
                              __global float *ad, const int n, const float lr,
                              const float rho, const float one_rho, const float eps,
                              const float scale, const float clip, const float decay,
                         MASK_ARGS)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    const int keep = KEEP_OF(i);
    const float gi = clipped_grad(g[i], scale, clip);
    const float wi = decayed(w[i], decay);
    const float agi = rho * ag[i] + one_rho * (gi * gi);
    ag[i] = KEPT(agi);
    const float dv = -(sqrt(ad[i] + eps) * gi) / sqrt(agi + eps);
    ad[i] = KEPT(rho * ad[i] + one_rho * (dv * dv));
    w[i] = KEPT(wi + lr * dv);
}

__kernel void ftrl_update(__global float *w, __global const float *g, __global float *acc,
                          __global float *lin, const int n, const float lr, const float power,
                          const float l1, const float l2_reg2, const float shrink2,
                          const float scale, const float clip, const float decay,
                         MASK_ARGS)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    const int keep = KEEP_OF(i);
    const float gi = clipped_grad(g[i], scale, clip);
    const float wi = decayed(w[i], decay);
    const float ai = acc[i];
    const float na = ai + gi * gi;
    /* pow(x, 0) is 1 for every x, as in Keras (power = -learning_rate_power >= 0). */
    const float pna = pow(na, power), pa = pow(ai, power);
    const float li = lin[i] + ((gi + shrink2 * wi) - ((pna - pa) / lr) * wi);
    lin[i] = KEPT(li);
    const float lc = li > l1 ? l1 : (li < -l1 ? -l1 : li);
    w[i] = KEPT((lc - li) / (pna / lr + l2_reg2));
    acc[i] = keep ? na : ai;  /* FTRL's accumulator must stay > 0 */
}

__kernel void lion_update(__global float *w, __global const float *g, __global float *m,
                          const int n, const float lr, const float beta_1,
                          const float one_b1, const float beta_2, const float one_b2,
                          const float scale, const float clip, const float decay,
                         MASK_ARGS)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    const int keep = KEEP_OF(i);
    const float gi = clipped_grad(g[i], scale, clip);
    const float wi = decayed(w[i], decay);
    const float c = m[i] * beta_1 + gi * one_b1;
    w[i] = KEPT(wi - lr * (float)((c > 0.0f) - (c < 0.0f)));
    m[i] = KEPT(m[i] * beta_2 + gi * one_b2);
}

/* -- opt: Lamb, Adafactor, Muon (Keras 3.15), the twin of native/optim.pyx's -------------
 * Their whole-tensor reductions stay on the device: a stage-1 kernel writes one partial per
 * work-group (two segments where two sums are taken), sum_partials_float folds them, and the
 * next kernel reads the sums from the device buffer: no read-back inside a step.
 * Adafactor views a variable of rank >= 2 as (B, R, C): r (B, R), c (B, C).
 * Pruning masks (MASK_ARGS): a pruned element's gradient reads as 0 and its weight and
 * elementwise slots are stored as exact zeros, as in the other updates.
 */

float lamb_direction(float m, float v, float bc1, float bc2, float eps)
{
    return (m / bc1) / (sqrt(v / bc2) + eps);
}

/* Clip, decay w, move m and v; partial[group] = sum w^2, partial[groups + group] = sum u^2. */
__kernel __attribute__((reqd_work_group_size(WG_SIZE, 1, 1)))
void lamb_moments_partial(__global float *w, __global const float *g, __global float *m,
                          __global float *v, __global float *partial, const int n,
                          const float one_b1, const float one_b2, const float bc1,
                          const float bc2, const float eps, const float scale,
                          const float clip, const float decay, MASK_ARGS)
{
    __local float buf[WG_SIZE];
    const int stride = get_global_size(0);
    float sw = 0.0f, su = 0.0f;
    for (int i = get_global_id(0); i < n; i += stride) {
        const int keep = KEEP_OF(i);
        const float gi = KEPT(clipped_grad(g[i], scale, clip));
        const float wi = KEPT(decayed(w[i], decay));
        w[i] = wi;
        const float mi = KEPT(m[i] + (gi - m[i]) * one_b1);
        const float vi = KEPT(v[i] + (gi * gi - v[i]) * one_b2);
        m[i] = mi;
        v[i] = vi;
        const float ui = KEPT(lamb_direction(mi, vi, bc1, bc2, eps));
        sw += wi * wi;
        su += ui * ui;
    }
    sw = wg_sum_float(buf, sw);
    su = wg_sum_float(buf, su);
    if (get_local_id(0) == 0) {
        partial[get_group_id(0)] = sw;
        partial[get_num_groups(0) + get_group_id(0)] = su;
    }
}

/* w -= ratio lr u, ratio = ||w|| / ||u|| from sums = (sum w^2, sum u^2), 1 where one is 0. */
__kernel void lamb_apply(__global float *w, __global const float *m, __global const float *v,
                         __global const float *sums, const int n, const float lr,
                         const float bc1, const float bc2, const float eps, MASK_ARGS)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    const int keep = KEEP_OF(i);
    const float w_norm = sqrt(sums[0]), u_norm = sqrt(sums[1]);
    const float ratio = (w_norm > 0.0f && u_norm > 0.0f) ? w_norm / u_norm : 1.0f;
    w[i] = KEPT(w[i] - ratio * lr * lamb_direction(m[i], v[i], bc1, bc2, eps));
}

/* One work-group per row of (B*R, C): decay the row of w, move r[row] by the row's mean of
 * g^2 + eps1; wsq[row] = the row's sum of w^2. */
__kernel __attribute__((reqd_work_group_size(WG_SIZE, 1, 1)))
void adafactor_rows(__global float *w, __global const float *g, __global float *r,
                    __global float *wsq, const int cols, const float beta,
                    const float one_beta, const float eps1, const float scale,
                    const float clip, const float decay, MASK_ARGS)
{
    __local float buf[WG_SIZE];
    const size_t row = get_group_id(0);
    __global float *wr = w + row * cols;
    __global const float *gr = g + row * cols;
    float s = 0.0f, sw = 0.0f;
    for (int j = get_local_id(0); j < cols; j += WG_SIZE) {
        const int keep = KEEP_OF(row * cols + j);
        const float gi = KEPT(clipped_grad(gr[j], scale, clip));
        s += gi * gi + eps1;
        const float wi = KEPT(decayed(wr[j], decay));
        wr[j] = wi;
        sw += wi * wi;
    }
    s = wg_sum_float(buf, s);
    sw = wg_sum_float(buf, sw);
    if (get_local_id(0) == 0) {
        r[row] = beta * r[row] + one_beta * (s / cols);
        wsq[row] = sw;
    }
}

/* One work-item per column (b, j): c[b, j] moved by the column's mean of g^2 + eps1. */
__kernel void adafactor_columns(__global const float *g, __global float *c, const int nb,
                                const int rows, const int cols, const float beta,
                                const float one_beta, const float eps1, const float scale,
                                const float clip, MASK_ARGS)
{
    const int k = get_global_id(0);
    GUARD(k, nb * cols);
    const int b = k / cols, j = k % cols;
    __global const float *gb = g + (size_t)b * rows * cols + j;
    float s = 0.0f;
    for (int i = 0; i < rows; i++) {
        const size_t at = (size_t)b * rows * cols + (size_t)i * cols + j;
        const int keep = KEEP_OF(at);
        const float gi = KEPT(clipped_grad(gb[(size_t)i * cols], scale, clip));
        s += gi * gi + eps1;
    }
    c[k] = beta * c[k] + one_beta * (s / rows);
}

/* One work-group per slice b: r_mean[b] = the mean of r[b, :]. */
__kernel __attribute__((reqd_work_group_size(WG_SIZE, 1, 1)))
void adafactor_row_mean(__global const float *r, __global float *r_mean, const int rows)
{
    __local float buf[WG_SIZE];
    __global const float *rb = r + (size_t)get_group_id(0) * rows;
    float s = 0.0f;
    for (int i = get_local_id(0); i < rows; i += WG_SIZE)
        s += rb[i];
    s = wg_sum_float(buf, s);
    if (get_local_id(0) == 0)
        r_mean[get_group_id(0)] = s / rows;
}

/* v = (r[row] / r_mean[b]) c[b, j]; partial[group] = sum (g / sqrt(v))^2. */
__kernel __attribute__((reqd_work_group_size(WG_SIZE, 1, 1)))
void adafactor_velocity_partial(__global const float *g, __global const float *r,
                                __global const float *r_mean, __global const float *c,
                                __global float *v, __global float *partial, const int n,
                                const int rows, const int cols, const float scale,
                                const float clip, MASK_ARGS)
{
    __local float buf[WG_SIZE];
    const int stride = get_global_size(0);
    float su = 0.0f;
    for (int k = get_global_id(0); k < n; k += stride) {
        const int row = k / cols, j = k % cols, b = row / rows;
        const int keep = KEEP_OF(k);
        const float vi = (r[row] / r_mean[b]) * c[b * cols + j];
        v[k] = KEPT(vi);
        /* u is 0 where g is: a zero row and column underflow v to 0 (native/optim.pyx) */
        const float gi = clipped_grad(g[k], scale, clip);
        const float ui = (keep && gi != 0.0f) ? gi / sqrt(vi) : 0.0f;
        su += ui * ui;
    }
    su = wg_sum_float(buf, su);
    if (get_local_id(0) == 0)
        partial[get_group_id(0)] = su;
}

/* Rank < 2: decay w, move v; partial segments (sum w^2, sum (g / sqrt(v))^2). */
__kernel __attribute__((reqd_work_group_size(WG_SIZE, 1, 1)))
void adafactor_flat_partial(__global float *w, __global const float *g, __global float *v,
                            __global float *partial, const int n, const float beta,
                            const float one_beta, const float eps1, const float scale,
                            const float clip, const float decay, MASK_ARGS)
{
    __local float buf[WG_SIZE];
    const int stride = get_global_size(0);
    float sw = 0.0f, su = 0.0f;
    for (int i = get_global_id(0); i < n; i += stride) {
        const int keep = KEEP_OF(i);
        const float gi = KEPT(clipped_grad(g[i], scale, clip));
        const float wi = KEPT(decayed(w[i], decay));
        w[i] = wi;
        const float vi = beta * v[i] + one_beta * (gi * gi + eps1);
        v[i] = KEPT(vi);
        const float ui = gi != 0.0f ? gi / sqrt(vi) : 0.0f;
        sw += wi * wi;
        su += ui * ui;
    }
    sw = wg_sum_float(buf, sw);
    su = wg_sum_float(buf, su);
    if (get_local_id(0) == 0) {
        partial[get_group_id(0)] = sw;
        partial[get_num_groups(0) + get_group_id(0)] = su;
    }
}

/* w -= alpha (u / max(1, rms(u) / threshold)), alpha = max(eps2, rms(w)) rho_t; the sums of
 * w^2 and u^2 are wsum[0] and usum[usum_at]. */
__kernel void adafactor_apply(__global float *w, __global const float *g,
                              __global const float *v, __global const float *wsum,
                              __global const float *usum, const int usum_at, const int n,
                              const float rho_t, const float eps2, const float threshold,
                              const float scale, const float clip, MASK_ARGS)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    const int keep = KEEP_OF(i);
    const float alpha = fmax(eps2, sqrt(wsum[0] / n)) * rho_t;
    const float d = fmax(1.0f, sqrt(usum[usum_at] / n) / threshold);
    const float gi = clipped_grad(g[i], scale, clip);
    const float ui = gi != 0.0f ? (gi / sqrt(v[i])) / d : 0.0f;
    w[i] = KEPT(w[i] - alpha * ui);
}

/* Muon: m += g + m (momentum - 1); x = g + momentum m (nesterov) or m; partial sum x^2. */
__kernel __attribute__((reqd_work_group_size(WG_SIZE, 1, 1)))
void muon_momentum_partial(__global const float *g, __global float *m, __global float *x,
                           __global float *partial, const int n, const float momentum,
                           const float momentum_1, const int nesterov, const float scale,
                           const float clip, MASK_ARGS)
{
    __local float buf[WG_SIZE];
    const int stride = get_global_size(0);
    float s = 0.0f;
    for (int i = get_global_id(0); i < n; i += stride) {
        const int keep = KEEP_OF(i);
        const float gi = KEPT(clipped_grad(g[i], scale, clip));
        const float mi = KEPT(m[i] + (gi + m[i] * momentum_1));
        m[i] = mi;
        const float xi = nesterov ? gi + momentum * mi : mi;
        x[i] = xi;
        s += xi * xi;
    }
    s = wg_sum_float(buf, s);
    if (get_local_id(0) == 0)
        partial[get_group_id(0)] = s;
}

/* Keras's x / (||x||_F + 1e-7), the squared norm in sumsq[0]. */
__kernel void muon_normalize(__global float *x, __global const float *sumsq, const int n)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    x[i] = x[i] / (sqrt(sumsq[0]) + 1e-7f);
}

/* x = alpha x + beta p: a Newton-Schulz step's polynomial (b A + c A A) and its update
 * (a X + B X) around the GEMMs. */
__kernel void muon_combine(__global float *x, __global const float *p, const int n,
                           const float alpha, const float beta)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    x[i] = alpha * x[i] + beta * p[i];
}

/* w = decayed w - (lr x) adjust (use_adjust 0: - lr x). */
__kernel void muon_apply(__global float *w, __global const float *x, const int n,
                         const float lr, const float adjust, const int use_adjust,
                         const float decay, MASK_ARGS)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    const int keep = KEEP_OF(i);
    const float step = lr * x[i];
    w[i] = KEPT(decayed(w[i], decay) - (use_adjust ? step * adjust : step));
}

/* -- misc: ScheduleFreeAdamW (Keras 3.15), the twin of native/optim.pyx's -----------------
 * z is Keras's "momentum" slot, v its "velocity"; w holds y, from which the average x is
 * recovered with the old z. c is 1/t, lr already warmed up.
 */
__kernel void schedule_free_adamw_update(__global float *w, __global const float *g,
                                         __global float *z, __global float *v, const int n,
                                         const float lr, const float beta_1,
                                         const float one_b1, const float one_b2,
                                         const float bc2, const float c, const float eps,
                                         const float scale, const float clip,
                                         const float decay, MASK_ARGS)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    const int keep = KEEP_OF(i);
    const float gi = keep ? clipped_grad(g[i], scale, clip) : 0.0f;
    const float yi = decayed(w[i], decay);
    const float z_old = z[i];
    const float vi = v[i] + (gi * gi - v[i]) * one_b2;
    const float zi = z_old - (lr * gi) / (sqrt(vi / bc2) + eps);
    const float x_old = (yi - one_b1 * z_old) / beta_1;
    const float x_new = (1.0f - c) * x_old + c * zi;
    v[i] = KEPT(vi);
    z[i] = KEPT(zi);
    w[i] = KEPT(one_b1 * zi + beta_1 * x_new);
}
