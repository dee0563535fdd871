"""OpenCL regularizer, norm and optimizer-update ops: the host side of ``opencl/optim.cl``.

Same names, signatures and semantics as ``native/optim.pyx`` (Keras 3's formulas, one fused
pass per parameter); operands are checked by ``pynn.backend.operands.optim``. Norms and
penalties come back as Python floats: the only read-back of an update.
"""

import numpy as np

from pynn.backend.opencl.arrays import DEVICE
from pynn.backend.opencl.launch import PARTIAL, elementwise, reduce
from pynn.backend.operands import optim as operands


def _mask_args(w, mask):
    """The kernels' (mask, use_mask): without a mask w's buffer stands in, never read."""
    return (w, 0) if mask is None else (mask, 1)


def sum_squares(a):
    """sum(a**2) over every element as a Python float (deterministic tree, float32)."""
    a = operands.sum_squares(DEVICE, a)
    if a.size == 0:
        return 0.0
    out = reduce("optim", "sum_squares_partial", a.size, (a, PARTIAL, a.size))
    return float(out.get()[0])


def regularizer_inplace(w, grad, l1, l2):
    """grad += l1*sign(w) + 2*l2*w (IN/OUT grad); returns l1*sum|w| + l2*sum(w**2)."""
    w, grad, l1, l2 = operands.regularizer_inplace(DEVICE, w, grad, l1, l2)
    if (l1 == 0.0 and l2 == 0.0) or w.size == 0:
        return 0.0
    out = reduce("optim", "regularizer_partial", w.size, (w, grad, PARTIAL, w.size, l1, l2))
    return float(out.get()[0])


def sgd_update(w, g, momentum_buf, lr, momentum, nesterov, grad_scale, clipvalue,
               weight_decay, mask=None):
    """SGD step in place (Keras 3): m = momentum*m - lr*g; w += m (nesterov:
    w += momentum*m - lr*g); without momentum_buf w -= lr*g."""
    w, g, buf, lr, momentum, nesterov, clip = operands.sgd_update(
        DEVICE, w, g, momentum_buf, lr, momentum, nesterov, grad_scale, clipvalue,
        weight_decay)
    mask = operands.update_mask(DEVICE, "sgd_update", w, mask)
    elementwise("optim", "sgd_update", w.size, w, g, w if buf is None else buf, w.size,
                buf is not None, nesterov, lr, momentum,
                *clip, *_mask_args(w, mask))


def adam_update(w, g, m, v, vhat, lr, beta_1, beta_2, epsilon, t, grad_scale, clipvalue,
                weight_decay, mask=None):
    """Adam/AdamW step in place; vhat given means amsgrad. t is the 1-based step."""
    w, g, m, v, vhat, alpha, beta_1, beta_2, epsilon, clip = operands.adam_update(
        DEVICE, w, g, m, v, vhat, lr, beta_1, beta_2, epsilon, t, grad_scale, clipvalue,
        weight_decay)
    mask = operands.update_mask(DEVICE, "adam_update", w, mask)
    elementwise("optim", "adam_update", w.size, w, g, m, v, w if vhat is None else vhat,
                w.size, vhat is not None, alpha, 1.0 - beta_1, 1.0 - beta_2, epsilon,
                *clip, *_mask_args(w, mask))


def sgd_update_many(ws, gs, momentum_bufs, lr, momentum, nesterov, grad_scales, clipvalue,
                    weight_decay):
    """sgd_update on every parameter, one queued launch each (as adam_update_many)."""
    ws, gs, bufs, scales, _, _, _, _ = operands.sgd_update_many(
        DEVICE, ws, gs, momentum_bufs, lr, momentum, nesterov, grad_scales, clipvalue,
        weight_decay)
    for j in range(len(ws)):
        sgd_update(ws[j], gs[j], None if bufs is None else bufs[j], lr, momentum, nesterov,
                   float(scales[j]), clipvalue, weight_decay)


def adam_update_many(ws, gs, ms, vs, lr, beta_1, beta_2, epsilon, t, grad_scales, clipvalue,
                     weight_decay):
    """adam_update on every parameter. Each is its own launch, queued without waiting (a
    launch costs the host microseconds and the device keeps every array), so one op buys
    no more here; it exists so the optimizer asks both backends the same thing."""
    ws, gs, ms, vs, scales, _, _, _, _, _ = operands.adam_update_many(
        DEVICE, ws, gs, ms, vs, lr, beta_1, beta_2, epsilon, t, grad_scales, clipvalue,
        weight_decay)
    for j in range(len(ws)):
        adam_update(ws[j], gs[j], ms[j], vs[j], None, lr, beta_1, beta_2, epsilon, t,
                    float(scales[j]), clipvalue, weight_decay)


def rmsprop_update(w, g, velocity, momentum_buf, average_grad, lr, rho, momentum, epsilon,
                   grad_scale, clipvalue, weight_decay, mask=None):
    """RMSprop step in place (Keras 3, epsilon inside the square root); average_grad given
    means centered, momentum_buf given means momentum."""
    w, g, velocity, mom, avg, lr, rho, momentum, epsilon, clip = operands.rmsprop_update(
        DEVICE, w, g, velocity, momentum_buf, average_grad, lr, rho, momentum, epsilon,
        grad_scale, clipvalue, weight_decay)
    mask = operands.update_mask(DEVICE, "rmsprop_update", w, mask)
    elementwise("optim", "rmsprop_update", w.size, w, g, velocity, w if mom is None else mom,
                w if avg is None else avg, w.size, mom is not None, avg is not None, lr, rho,
                1.0 - rho, momentum, epsilon,
                *clip, *_mask_args(w, mask))


def adagrad_update(w, g, accumulator, lr, epsilon, grad_scale, clipvalue, weight_decay, mask=None):
    """Adagrad step in place: acc += g*g; w -= lr*g/sqrt(acc + epsilon)."""
    w, g, accumulator, lr, epsilon, clip = operands.adagrad_update(
        DEVICE, w, g, accumulator, lr, epsilon, grad_scale, clipvalue, weight_decay)
    mask = operands.update_mask(DEVICE, "adagrad_update", w, mask)
    elementwise("optim", "adagrad_update", w.size, w, g, accumulator, w.size, lr, epsilon,
                *clip, *_mask_args(w, mask))


# -- issue 12: weight constraints (opencl/optim.cl) ----------------------------------------
def constraint_inplace(w, kind, min_value=0.0, max_value=1.0, rate=1.0, axis=0):
    """Project w in place by a Keras 3 constraint; norms over ``axis``. Returns None."""
    w, code, lo, hi, r, (outer, k, inner) = operands.constraint_inplace(
        DEVICE, w, kind, min_value, max_value, rate, axis)
    elementwise("optim", "constraint_inplace", outer * inner, w, outer * inner, k, inner,
                code, lo, hi, r)
# -- Nadam, Adamax, Adadelta, Ftrl, Lion (issue 15) ------------------------------------------

def nadam_update(w, g, m, v, lr, beta_1, beta_2, epsilon, t, u_product, grad_scale,
                 clipvalue, weight_decay, mask=None):
    """Nadam step in place; u_product is Keras's running momentum-schedule product."""
    w, g, m, v, coef, clip = operands.nadam_update(
        DEVICE, w, g, m, v, lr, beta_1, beta_2, epsilon, t, u_product, grad_scale, clipvalue,
        weight_decay)
    mask = operands.update_mask(DEVICE, "nadam_update", w, mask)
    elementwise("optim", "nadam_update", w.size, w, g, m, v, w.size, *coef,
                *clip, *_mask_args(w, mask))


def adamax_update(w, g, m, u, lr, beta_1, beta_2, epsilon, t, grad_scale, clipvalue,
                  weight_decay, mask=None):
    """Adamax step in place: u = max(beta_2 u, |g|)."""
    w, g, m, u, coef, clip = operands.adamax_update(
        DEVICE, w, g, m, u, lr, beta_1, beta_2, epsilon, t, grad_scale, clipvalue,
        weight_decay)
    mask = operands.update_mask(DEVICE, "adamax_update", w, mask)
    elementwise("optim", "adamax_update", w.size, w, g, m, u, w.size, *coef,
                *clip, *_mask_args(w, mask))


def adadelta_update(w, g, accumulated_grad, accumulated_delta_var, lr, rho, epsilon,
                    grad_scale, clipvalue, weight_decay, mask=None):
    """Adadelta step in place."""
    w, g, ag, ad, lr, rho, epsilon, clip = operands.adadelta_update(
        DEVICE, w, g, accumulated_grad, accumulated_delta_var, lr, rho, epsilon, grad_scale,
        clipvalue, weight_decay)
    mask = operands.update_mask(DEVICE, "adadelta_update", w, mask)
    elementwise("optim", "adadelta_update", w.size, w, g, ag, ad, w.size, lr, rho, 1.0 - rho,
                epsilon,
                *clip, *_mask_args(w, mask))


def ftrl_update(w, g, accumulator, linear, lr, learning_rate_power, l1, l2, l2_shrinkage,
                beta, grad_scale, clipvalue, weight_decay, mask=None):
    """FTRL-proximal step in place (Keras 3's form)."""
    w, g, acc, lin, coef, clip = operands.ftrl_update(
        DEVICE, w, g, accumulator, linear, lr, learning_rate_power, l1, l2, l2_shrinkage,
        beta, grad_scale, clipvalue, weight_decay)
    mask = operands.update_mask(DEVICE, "ftrl_update", w, mask)
    elementwise("optim", "ftrl_update", w.size, w, g, acc, lin, w.size, *coef,
                *clip, *_mask_args(w, mask))


def lion_update(w, g, m, lr, beta_1, beta_2, grad_scale, clipvalue, weight_decay, mask=None):
    """Lion step in place: w -= lr sign(beta_1 m + (1-beta_1) g)."""
    w, g, m, lr, beta_1, beta_2, clip = operands.lion_update(
        DEVICE, w, g, m, lr, beta_1, beta_2, grad_scale, clipvalue, weight_decay)
    b1, b2 = np.float32(beta_1), np.float32(beta_2)
    # 1 - beta in float32 from the float32 beta, as the CPU kernel and Keras form it.
    mask = operands.update_mask(DEVICE, "lion_update", w, mask)
    elementwise("optim", "lion_update", w.size, w, g, m, w.size, lr, b1, np.float32(1) - b1,
                b2, np.float32(1) - b2,
                *clip, *_mask_args(w, mask))
# -- opt: Lamb, Adafactor, Muon (Keras 3.15) ---------------------------------------------------

def _fold_two(stage_kernel, n, args):
    """A stage-1 kernel writing two partial segments, folded into a (2,) device array."""
    from pynn.backend.opencl.launch import fold, groups, kernel, sizes
    from pynn.backend.opencl import runtime as rt

    count, wg = groups(n), sizes()[0]
    partial = rt.empty((2 * count,), np.float32, what=f"{stage_kernel} partials")
    rt.launch(kernel("optim", stage_kernel), (count * wg,), (wg,),
              *[partial if a is PARTIAL else a for a in args])
    return fold("optim", partial, counts=2)


def lamb_update(w, g, m, v, lr, beta_1, beta_2, epsilon, t, grad_scale, clipvalue,
                weight_decay, mask=None):
    """Lamb step in place: the moments and both norms in one pass, the trust-ratio step
    reading the folded norms on the device."""
    w, g, m, v, (lr, one_b1, one_b2, bc1, bc2, eps), clip = operands.lamb_update(
        DEVICE, w, g, m, v, lr, beta_1, beta_2, epsilon, t, grad_scale, clipvalue,
        weight_decay)
    mask = operands.update_mask(DEVICE, "lamb_update", w, mask)
    if w.size == 0:
        return
    sums = _fold_two("lamb_moments_partial", w.size,
                     (w, g, m, v, PARTIAL, w.size, one_b1, one_b2, bc1, bc2, eps, *clip,
                      *_mask_args(w, mask)))
    elementwise("optim", "lamb_apply", w.size, w, m, v, sums, w.size, lr, bc1, bc2, eps,
                *_mask_args(w, mask))


def adafactor_update(w, g, r, c, v, lr, beta_2_decay, epsilon_1, epsilon_2, clip_threshold,
                     t, grad_scale, clipvalue, weight_decay, mask=None):
    """Adafactor step in place: row means by work-group, column means by work-item, the
    velocity and the update's rms, then the step; every sum stays on the device."""
    from pynn.backend.opencl import runtime as rt
    from pynn.backend.opencl.launch import fold, kernel, sizes

    w, g, r, c, v, (rho_t, beta, eps1, eps2, threshold), clip = operands.adafactor_update(
        DEVICE, w, g, r, c, v, lr, beta_2_decay, epsilon_1, epsilon_2, clip_threshold, t,
        grad_scale, clipvalue, weight_decay)
    masked = _mask_args(w, operands.update_mask(DEVICE, "adafactor_update", w, mask))
    n = w.size
    if n == 0:
        return
    one_beta = float(np.float32(1) - np.float32(beta))
    scale, clipv, decay = clip
    if w.ndim < 2:
        sums = _fold_two("adafactor_flat_partial", n,
                         (w, g, v, PARTIAL, n, beta, one_beta, eps1, scale, clipv, decay,
                          *masked))
        wsum, usum, usum_at = sums, sums, 1
    else:
        rows, cols = int(w.shape[-2]), int(w.shape[-1])
        nb = n // (rows * cols)
        wg = sizes()[0]
        wsq = rt.empty((nb * rows,), np.float32, what="adafactor_update row sums")
        rt.launch(kernel("optim", "adafactor_rows"), (nb * rows * wg,), (wg,), w, g, r, wsq,
                  cols, beta, one_beta, eps1, scale, clipv, decay, *masked)
        elementwise("optim", "adafactor_columns", nb * cols, g, c, nb, rows, cols, beta,
                    one_beta, eps1, scale, clipv, *masked)
        r_mean = rt.empty((nb,), np.float32, what="adafactor_update row means")
        rt.launch(kernel("optim", "adafactor_row_mean"), (nb * wg,), (wg,), r, r_mean, rows)
        wsum = fold("optim", wsq)
        usum = reduce("optim", "adafactor_velocity_partial", n,
                      (g, r, r_mean, c, v, PARTIAL, n, rows, cols, scale, clipv, *masked))
        usum_at = 0
    elementwise("optim", "adafactor_apply", n, w, g, v, wsum, usum, usum_at, n, rho_t, eps2,
                threshold, scale, clipv, *masked)


def muon_update(w, g, m, lr, momentum, nesterov, ns_steps, muon_a, muon_b, muon_c, rms_rate,
                grad_scale, clipvalue, weight_decay, mask=None):
    """Muon step of a matrix in place: momentum and the norm in one pass, the Newton-Schulz
    products on the dense ops' GEMMs (the Gram matrix of the shorter side), the small
    combinations and the step fused around them."""
    from pynn.backend.opencl import runtime as rt
    from pynn.backend.opencl.dense import (dense_backward_input, dense_backward_weight,
                                           dense_forward)

    w, g, m, coef, clip = operands.muon_update(
        DEVICE, w, g, m, lr, momentum, nesterov, ns_steps, muon_a, muon_b, muon_c, rms_rate,
        grad_scale, clipvalue, weight_decay)
    masked = _mask_args(w, operands.update_mask(DEVICE, "muon_update", w, mask))
    lr, momentum, nesterov, ns_steps, a, b, c, adjust = coef
    scale, clipv, decay = clip
    n = w.size
    if n == 0:
        return
    rows, cols = int(w.shape[0]), int(w.shape[1])
    x = rt.empty((rows, cols), np.float32, what="muon_update direction")
    sumsq = reduce("optim", "muon_momentum_partial", n,
                   (g, m, x, PARTIAL, n, momentum, float(np.float32(momentum) - 1),
                    int(nesterov), scale, clipv, *masked))
    elementwise("optim", "muon_normalize", n, x, sumsq, n)
    tall = rows > cols
    for _ in range(ns_steps):
        gram = dense_backward_weight(x, x) if tall else dense_backward_input(x, x)
        gram_sq, _ = dense_forward(gram, gram, None, "linear", 0.0)
        elementwise("optim", "muon_combine", gram.size, gram, gram_sq, gram.size, b, c)
        if tall:
            poly_x = dense_backward_input(x, gram)
        else:
            poly_x, _ = dense_forward(gram, x, None, "linear", 0.0)
        elementwise("optim", "muon_combine", n, x, poly_x, n, a, 1.0)
    elementwise("optim", "muon_apply", n, w, x, n, lr, max(adjust, 0.0), int(adjust >= 0),
                decay, *masked)


# -- misc: ScheduleFreeAdamW (Keras 3.15) ------------------------------------------------------
def schedule_free_adamw_update(w, g, z, v, lr, beta_1, beta_2, epsilon, t, warmup_steps,
                               grad_scale, clipvalue, weight_decay, mask=None):
    """Schedule-free AdamW step in place, one elementwise kernel (native/optim.pyx's rule)."""
    w, g, z, v, coef, clip = operands.schedule_free_adamw_update(
        DEVICE, w, g, z, v, lr, beta_1, beta_2, epsilon, t, warmup_steps, grad_scale,
        clipvalue, weight_decay)
    mask = operands.update_mask(DEVICE, "schedule_free_adamw_update", w, mask)
    if w.size == 0:
        return
    elementwise("optim", "schedule_free_adamw_update", w.size, w, g, z, v, w.size,
                *(np.float32(c) for c in coef), *clip, *_mask_args(w, mask))
