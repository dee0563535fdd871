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
