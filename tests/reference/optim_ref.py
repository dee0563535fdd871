"""NumPy float64 oracles for native/optim.pyx and pynn/optimizers.py.

Written straight from Keras 3 (keras/src/optimizers/{sgd,adam,rmsprop,adagrad,
base_optimizer}.py): slow, obvious, one formula per line. Each ``*_update_ref`` returns new
arrays and never mutates its inputs.
"""

import math

import numpy as np


def f64(a):
    return None if a is None else np.array(a, dtype=np.float64, copy=True)


def prepare_grad_ref(g, grad_scale, clipvalue):
    """The clip step of every kernel: g * grad_scale, then clip to [-clipvalue, clipvalue]
    when clipvalue > 0."""
    g = f64(g) * grad_scale
    if clipvalue > 0:
        g = np.clip(g, -clipvalue, clipvalue)
    return g


def weight_decay_ref(w, lr, weight_decay):
    return f64(w) - f64(w) * weight_decay * lr


def sum_squares_ref(a):
    return float(np.sum(f64(a) ** 2))


def regularizer_inplace_ref(w, grad, l1, l2):
    """-> (new grad, penalty): grad + l1*sign(w) + 2*l2*w, l1*sum|w| + l2*sum(w^2)."""
    w = f64(w)
    return f64(grad) + l1 * np.sign(w) + 2.0 * l2 * w, float(
        l1 * np.abs(w).sum() + l2 * (w**2).sum()
    )


def sgd_update_ref(w, g, momentum_buf, lr, momentum, nesterov, grad_scale, clipvalue,
                   weight_decay):
    """-> (w, momentum_buf)."""
    g = prepare_grad_ref(g, grad_scale, clipvalue)
    w = weight_decay_ref(w, lr, weight_decay)
    if momentum_buf is None:
        return w - lr * g, None
    m = momentum * f64(momentum_buf) - lr * g
    if nesterov:
        w = w + (momentum * m - lr * g)
    else:
        w = w + m
    return w, m


def adam_update_ref(w, g, m, v, vhat, lr, beta_1, beta_2, epsilon, t, grad_scale, clipvalue,
                    weight_decay):
    """-> (w, m, v, vhat)."""
    g = prepare_grad_ref(g, grad_scale, clipvalue)
    w = weight_decay_ref(w, lr, weight_decay)
    alpha = lr * math.sqrt(1.0 - beta_2**t) / (1.0 - beta_1**t)
    m = f64(m) + (g - f64(m)) * (1.0 - beta_1)
    v = f64(v) + (g * g - f64(v)) * (1.0 - beta_2)
    if vhat is not None:
        vhat = np.maximum(f64(vhat), v)
        denom_v = vhat
    else:
        denom_v = v
    w = w - (m * alpha) / (np.sqrt(denom_v) + epsilon)
    return w, m, v, vhat




def sgd_update_many_ref(ws, gs, momentum_bufs, lr, momentum, nesterov, grad_scales, clipvalue,
                        weight_decay):
    """-> (ws, momentum_bufs or None): sgd_update_ref on each parameter with its grad_scale."""
    bufs = momentum_bufs if momentum_bufs is not None else [None] * len(ws)
    out = [sgd_update_ref(w, g, b, lr, momentum, nesterov, s, clipvalue, weight_decay)
           for w, g, b, s in zip(ws, gs, bufs, grad_scales)]
    return [o[0] for o in out], (None if momentum_bufs is None else [o[1] for o in out])

def adam_update_many_ref(ws, gs, ms, vs, lr, beta_1, beta_2, epsilon, t, grad_scales,
                         clipvalue, weight_decay):
    """-> (ws, ms, vs): adam_update_ref on each parameter with its grad_scale."""
    out = [adam_update_ref(w, g, m, v, None, lr, beta_1, beta_2, epsilon, t, s, clipvalue,
                           weight_decay) for w, g, m, v, s in zip(ws, gs, ms, vs, grad_scales)]
    return [o[0] for o in out], [o[1] for o in out], [o[2] for o in out]

def rmsprop_update_ref(w, g, velocity, momentum_buf, average_grad, lr, rho, momentum, epsilon,
                       grad_scale, clipvalue, weight_decay):
    """-> (w, velocity, momentum_buf, average_grad)."""
    g = prepare_grad_ref(g, grad_scale, clipvalue)
    w = weight_decay_ref(w, lr, weight_decay)
    velocity = rho * f64(velocity) + (1.0 - rho) * g * g
    if average_grad is not None:
        average_grad = rho * f64(average_grad) + (1.0 - rho) * g
        denominator = velocity - average_grad**2 + epsilon
    else:
        denominator = velocity + epsilon
    increment = lr * g / np.sqrt(denominator)
    if momentum_buf is not None:
        momentum_buf = momentum * f64(momentum_buf) + increment
        w = w - momentum_buf
    else:
        w = w - increment
    return w, velocity, momentum_buf, average_grad


def adagrad_update_ref(w, g, accumulator, lr, epsilon, grad_scale, clipvalue, weight_decay):
    """-> (w, accumulator)."""
    g = prepare_grad_ref(g, grad_scale, clipvalue)
    w = weight_decay_ref(w, lr, weight_decay)
    accumulator = f64(accumulator) + g * g
    w = w - lr * g / np.sqrt(accumulator + epsilon)
    return w, accumulator


class OptimizerRef:
    """Keras 3's training-step order in float64 on a list of arrays:
    clip (clipnorm per tensor / global_clipnorm / clipvalue) -> decoupled weight decay ->
    rule -> iterations += 1. ``kind`` is "sgd", "adam", "adamw", "rmsprop" or "adagrad";
    ``config`` uses Keras's argument names; ``learning_rate`` may be a callable f(step)."""

    DEFAULTS = {
        "sgd": {"learning_rate": 0.01, "momentum": 0.0, "nesterov": False},
        "adam": {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7,
                 "amsgrad": False},
        "adamw": {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7,
                  "amsgrad": False, "weight_decay": 0.004},
        "rmsprop": {"learning_rate": 0.001, "rho": 0.9, "momentum": 0.0, "epsilon": 1e-7,
                    "centered": False},
        "adagrad": {"learning_rate": 0.001, "initial_accumulator_value": 0.1,
                    "epsilon": 1e-7},
    }

    def __init__(self, kind, **config):
        self.kind = kind
        self.cfg = dict(self.DEFAULTS[kind])
        self.cfg.update(config)
        self.iterations = 0
        self.slots = None

    def lr(self):
        lr = self.cfg["learning_rate"]
        return float(lr(self.iterations)) if callable(lr) else float(lr)

    def _new_slots(self, w):
        c, z = self.cfg, np.zeros_like(w, dtype=np.float64)
        if self.kind == "sgd":
            return {"momentum": z.copy() if c["momentum"] != 0 else None}
        if self.kind in ("adam", "adamw"):
            return {"momentum": z.copy(), "velocity": z.copy(),
                    "velocity_hat": z.copy() if c["amsgrad"] else None}
        if self.kind == "rmsprop":
            return {"velocity": z.copy(),
                    "momentum": z.copy() if c["momentum"] > 0 else None,
                    "average_gradient": z.copy() if c["centered"] else None}
        return {"accumulator": np.full_like(z, c["initial_accumulator_value"])}

    def grad_scales(self, grads):
        c = self.cfg
        if c.get("clipnorm"):
            return [c["clipnorm"] / max(math.sqrt(sum_squares_ref(g)), c["clipnorm"])
                    for g in grads]
        if c.get("global_clipnorm"):
            norm = math.sqrt(sum(sum_squares_ref(g) for g in grads))
            return [c["global_clipnorm"] / max(norm, c["global_clipnorm"])] * len(grads)
        return [1.0] * len(grads)

    def step(self, weights, grads):
        """-> new list of float64 weights; slots kept in ``self.slots``."""
        c = self.cfg
        if self.slots is None:
            self.slots = [self._new_slots(f64(w)) for w in weights]
        lr = self.lr()
        clipvalue = c.get("clipvalue") or 0.0
        wd = c.get("weight_decay") or 0.0
        out = []
        for w, g, s, scale in zip(weights, grads, self.slots, self.grad_scales(grads)):
            common = (scale, clipvalue, wd)
            if self.kind == "sgd":
                w, s["momentum"] = sgd_update_ref(w, g, s["momentum"], lr, c["momentum"],
                                                  c["nesterov"], *common)
            elif self.kind in ("adam", "adamw"):
                w, s["momentum"], s["velocity"], s["velocity_hat"] = adam_update_ref(
                    w, g, s["momentum"], s["velocity"], s["velocity_hat"], lr, c["beta_1"],
                    c["beta_2"], c["epsilon"], self.iterations + 1, *common)
            elif self.kind == "rmsprop":
                w, s["velocity"], s["momentum"], s["average_gradient"] = rmsprop_update_ref(
                    w, g, s["velocity"], s["momentum"], s["average_gradient"], lr, c["rho"],
                    c["momentum"], c["epsilon"], *common)
            else:
                w, s["accumulator"] = adagrad_update_ref(w, g, s["accumulator"], lr,
                                                         c["epsilon"], *common)
            out.append(w)
        self.iterations += 1
        return out


# -- schedules (Keras 3 keras/src/optimizers/schedules/learning_rate_schedule.py) ----------

def exponential_decay_ref(step, initial_learning_rate, decay_steps, decay_rate,
                          staircase=False):
    p = step / decay_steps
    if staircase:
        p = math.floor(p)
    return initial_learning_rate * decay_rate**p


def inverse_time_decay_ref(step, initial_learning_rate, decay_steps, decay_rate,
                           staircase=False):
    p = step / decay_steps
    if staircase:
        p = math.floor(p)
    return initial_learning_rate / (1 + decay_rate * p)


def piecewise_constant_decay_ref(step, boundaries, values):
    if step <= boundaries[0]:
        return values[0]
    for low, high, value in zip(boundaries[:-1], boundaries[1:], values[1:-1]):
        if low < step <= high:
            return value
    return values[-1]


def cosine_decay_ref(step, initial_learning_rate, decay_steps, alpha=0.0, warmup_target=None,
                     warmup_steps=0):
    def decay(s, start):
        cosine = 0.5 * (1 + math.cos(math.pi * s / decay_steps))
        return start * ((1 - alpha) * cosine + alpha)

    if warmup_target is None:
        return decay(min(step, decay_steps), initial_learning_rate)
    step = min(step, decay_steps + warmup_steps)
    if step < warmup_steps:
        return (warmup_target - initial_learning_rate) * step / warmup_steps + \
            initial_learning_rate
    return decay(step - warmup_steps, warmup_target)


# -- issue 12: weight constraints ------------------------------------------------------------
def constraint_inplace_ref(w, kind, min_value=0.0, max_value=1.0, rate=1.0, axis=0):
    """The projected weight (a new float64 array), Keras 3's formulas with epsilon 1e-7."""
    w = np.asarray(w, dtype=np.float64)
    if kind == "non_neg":
        return np.maximum(w, 0.0)
    ax = tuple(axis) if isinstance(axis, (list, tuple)) else axis
    norms = np.sqrt(np.sum(np.square(w), axis=ax, keepdims=True))
    if kind == "unit_norm":
        return w / (1e-7 + norms)
    if kind == "max_norm":
        desired = np.clip(norms, 0.0, max_value)
    else:
        desired = rate * np.clip(norms, min_value, max_value) + (1 - rate) * norms
    return w * (desired / (1e-7 + norms))
# -- Nadam, Adamax, Adadelta, Ftrl, Lion (issue 15): keras/src/optimizers/{nadam,adamax,
# adadelta,ftrl,lion}.py in float64 ------------------------------------------------------------

def nadam_update_ref(w, g, m, v, lr, beta_1, beta_2, epsilon, t, u_product, grad_scale,
                     clipvalue, weight_decay):
    """-> (w, m, v). u_product is Keras's _u_product after this step's update."""
    g = prepare_grad_ref(g, grad_scale, clipvalue)
    w = weight_decay_ref(w, lr, weight_decay)
    u_t = beta_1 * (1.0 - 0.5 * 0.96**t)
    u_t_1 = beta_1 * (1.0 - 0.5 * 0.96 ** (t + 1))
    u_product_t_1 = u_product * u_t_1
    m = f64(m) + (g - f64(m)) * (1 - beta_1)
    v = f64(v) + (g * g - f64(v)) * (1 - beta_2)
    m_hat = u_t_1 * m / (1 - u_product_t_1) + (1 - u_t) * g / (1 - u_product)
    v_hat = v / (1 - beta_2**t)
    return w - m_hat * lr / (np.sqrt(v_hat) + epsilon), m, v


def adamax_update_ref(w, g, m, u, lr, beta_1, beta_2, epsilon, t, grad_scale, clipvalue,
                      weight_decay):
    """-> (w, m, u)."""
    g = prepare_grad_ref(g, grad_scale, clipvalue)
    w = weight_decay_ref(w, lr, weight_decay)
    m = f64(m) + (g - f64(m)) * (1 - beta_1)
    u = np.maximum(beta_2 * f64(u), np.abs(g))
    return w - lr * m / ((1 - beta_1**t) * (u + epsilon)), m, u


def adadelta_update_ref(w, g, accumulated_grad, accumulated_delta_var, lr, rho, epsilon,
                        grad_scale, clipvalue, weight_decay):
    """-> (w, accumulated_grad, accumulated_delta_var)."""
    g = prepare_grad_ref(g, grad_scale, clipvalue)
    w = weight_decay_ref(w, lr, weight_decay)
    ag = rho * f64(accumulated_grad) + (1 - rho) * g * g
    ad = f64(accumulated_delta_var)
    delta = -np.sqrt(ad + epsilon) * g / np.sqrt(ag + epsilon)
    ad = rho * ad + (1 - rho) * delta * delta
    return w + lr * delta, ag, ad


def ftrl_update_ref(w, g, accumulator, linear, lr, learning_rate_power, l1, l2, l2_shrinkage,
                    beta, grad_scale, clipvalue, weight_decay):
    """-> (w, accumulator, linear)."""
    g = prepare_grad_ref(g, grad_scale, clipvalue)
    w = weight_decay_ref(w, lr, weight_decay)
    acc = f64(accumulator)
    l2_reg = l2 + beta / (2.0 * lr)
    new_acc = acc + g * g
    linear = f64(linear) + (g + 2 * l2_shrinkage * w) - (
        (new_acc ** -learning_rate_power - acc ** -learning_rate_power) / lr) * w
    quadratic = new_acc ** -learning_rate_power / lr + 2 * l2_reg
    w = (np.clip(linear, -l1, l1) - linear) / quadratic
    return w, new_acc, linear


def lion_update_ref(w, g, m, lr, beta_1, beta_2, grad_scale, clipvalue, weight_decay):
    """-> (w, m)."""
    g = prepare_grad_ref(g, grad_scale, clipvalue)
    w = weight_decay_ref(w, lr, weight_decay)
    m = f64(m)
    w = w - lr * np.sign(m * beta_1 + g * (1 - beta_1))
    return w, m * beta_2 + g * (1 - beta_2)


# -- Lamb, Adafactor, Muon (Keras 3's keras/src/optimizers/{lamb,adafactor,muon}.py) ------------

def lamb_update_ref(w, g, m, v, lr, beta_1, beta_2, epsilon, t, grad_scale, clipvalue,
                    weight_decay):
    """-> (w, m, v). The trust ratio ||w|| / ||update|| is taken after the weight decay."""
    g = prepare_grad_ref(g, grad_scale, clipvalue)
    w = weight_decay_ref(w, lr, weight_decay)
    m = f64(m) + (g - f64(m)) * (1 - beta_1)
    v = f64(v) + (g * g - f64(v)) * (1 - beta_2)
    m_hat = m / (1 - beta_1**t)
    update = m_hat / (np.sqrt(v / (1 - beta_2**t)) + epsilon)
    w_norm = np.sqrt(np.sum(w * w))
    u_norm = np.sqrt(np.sum(update * update))
    ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
    return w - ratio * lr * update, m, v


def adafactor_update_ref(w, g, r, c, v, lr, beta_2_decay, epsilon_1, epsilon_2,
                         clip_threshold, t, grad_scale, clipvalue, weight_decay):
    """-> (w, r, c, v). Variables of rank >= 2 keep the factored second moment: r the means
    over the last axis, c over the second last, v their outer product (r normalised by its
    mean); lower ranks keep v only (r and c are Keras's scalar placeholders, untouched)."""
    g = prepare_grad_ref(g, grad_scale, clipvalue)
    w = weight_decay_ref(w, lr, weight_decay)
    r, c, v = f64(r), f64(c), f64(v)
    rho_t = min(lr, 1.0 / math.sqrt(t))
    alpha_t = max(epsilon_2, math.sqrt(np.mean(w * w))) * rho_t
    g2 = g * g + epsilon_1
    beta_2_t = 1.0 - t**beta_2_decay
    if w.ndim >= 2:
        r = beta_2_t * r + (1 - beta_2_t) * g2.mean(axis=-1)
        c = beta_2_t * c + (1 - beta_2_t) * g2.mean(axis=-2)
        v = (r / r.mean(axis=-1, keepdims=True))[..., None] * c[..., None, :]
    else:
        v = beta_2_t * v + (1 - beta_2_t) * g2
    u = g / np.sqrt(v)
    u = u / max(1.0, math.sqrt(np.mean(u * u)) / clip_threshold)
    return w - alpha_t * u, r, c, v


def newton_schulz5_ref(x, steps, a, b, c):
    """Keras's zeropower_via_newtonschulz5 of a matrix: the quintic iteration on x scaled to
    Frobenius norm 1, on the transpose when x has more rows than columns."""
    x = f64(x)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / (np.linalg.norm(x) + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def muon_update_ref(w, g, m, lr, momentum, nesterov, ns_steps, a, b, c, rms_rate, grad_scale,
                    clipvalue, weight_decay):
    """-> (w, m): Muon's step of a matrix (the AdamW branch is adam_update_ref)."""
    g = prepare_grad_ref(g, grad_scale, clipvalue)
    w = weight_decay_ref(w, lr, weight_decay)
    m = momentum * f64(m) + g
    direction = g + momentum * m if nesterov else m
    update = lr * newton_schulz5_ref(direction, ns_steps, a, b, c)
    if rms_rate is not None:
        update = update * math.sqrt(max(w.shape)) * rms_rate
    return w - update, m


# -- misc: ScheduleFreeAdamW (Keras 3.15) --
def schedule_free_adamw_update_ref(w, g, z, v, lr, beta_1, beta_2, epsilon, t, warmup_steps,
                                   grad_scale, clipvalue, weight_decay):
    """-> (w, z, v): Keras's update_step in float64, x recovered from w and the old z (as
    Keras computes it on JAX and TensorFlow; see tests/test_schedule_free.py for torch)."""
    g = prepare_grad_ref(g, grad_scale, clipvalue)
    y = weight_decay_ref(w, lr, weight_decay)
    step_lr = lr * min(t / warmup_steps, 1.0) if warmup_steps else lr
    z_old = f64(z)
    v = f64(v) + (g * g - f64(v)) * (1 - beta_2)
    z = z_old - step_lr * g / (np.sqrt(v / (1 - beta_2**t)) + epsilon)
    x = (y - (1 - beta_1) * z_old) / beta_1
    x = (1 - 1 / t) * x + z / t
    return (1 - beta_1) * z + beta_1 * x, z, v
