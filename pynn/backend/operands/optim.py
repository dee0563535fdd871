"""Operands of the regularizer, norm and optimizer-update ops (native/optim.pyx,
pynn/backend/opencl/optim.py).

Every update returns ``(w, g, <slots>, <hyper-parameters>, clip)`` where ``clip`` is the
tuple (grad_scale, clipvalue, weight_decay * lr) that each rule applies first.
"""

import functools
import math
import struct

import numpy as np

from pynn.backend.api import CONSTRAINTS
from pynn.backend.operands.common import distinct, number, slot


def _update(arrays, op, w, g, lr, grad_scale, clipvalue, weight_decay):
    w = arrays.inplace(op, "w", w)
    g = arrays.float_input(op, "g", g, like=w)
    if g.shape != w.shape:
        raise ValueError(f"{op}: 'g' must have the shape of 'w' {w.shape}, got {g.shape}")
    lr, clip = _cached(_scalars, op, lr, grad_scale, clipvalue, weight_decay)
    return w, g, lr, clip


def _cached(check, *args):
    """``check(*args)`` through its cache: every variable of a step passes the same
    hyper-parameters, so their checks run once per step instead of once per variable (they
    were most of a small layer's update time). Unhashable values take the uncached path,
    whose errors name them."""
    try:
        return check(*args)
    except TypeError as exc:
        if "unhashable" not in str(exc):
            raise
        return check.__wrapped__(*args)


@functools.lru_cache(maxsize=64)
def _scalars(op, lr, grad_scale, clipvalue, weight_decay):
    lr = number(op, "lr", lr)
    # grad_scale may be NaN: a non-finite global norm poisons the step, as in Keras.
    scale = number(op, "grad_scale", grad_scale, lo=0.0, allow_nan=True)
    clip = number(op, "clipvalue", clipvalue)
    decay = number(op, "weight_decay", weight_decay, lo=0.0)
    return lr, (scale, clip, decay * lr)


@functools.lru_cache(maxsize=64)
def _adam_scalars(op, beta_1, beta_2, epsilon):
    return (number(op, "beta_1", beta_1, lo=0.0, hi=1.0, hi_open=True),
            number(op, "beta_2", beta_2, lo=0.0, hi=1.0, hi_open=True),
            number(op, "epsilon", epsilon, lo=0.0))


def _required(op, **slots):
    if any(a is None for a in slots.values()):
        many = len(slots) > 1
        names = " and ".join(repr(n) for n in slots)
        got = ", ".join(f"{n}={type(a).__name__}" for n, a in slots.items())
        raise ValueError(f"{op}: slot{'s' if many else ''} {names} {'are' if many else 'is'} "
                         f"required, got {got}")


def _momentum(op, momentum, buf):
    momentum = number(op, "momentum", momentum, lo=0.0)
    if momentum != 0.0 and buf is None:
        raise ValueError(f"{op}: momentum={momentum} needs a 'momentum_buf' slot, got None")
    return momentum


def sgd_update(arrays, w, g, momentum_buf, lr, momentum, nesterov, grad_scale, clipvalue,
               weight_decay):
    """-> (w, g, momentum_buf or None, lr, momentum, nesterov, clip)."""
    op = "sgd_update"
    w, g, lr, clip = _update(arrays, op, w, g, lr, grad_scale, clipvalue, weight_decay)
    momentum_buf = slot(arrays, op, "momentum_buf", momentum_buf, w)
    momentum = _momentum(op, momentum, momentum_buf)
    return w, g, momentum_buf, lr, momentum, bool(nesterov), clip


_F32 = struct.Struct("f")


def _f32(x):
    """x rounded to float32, as a Python float."""
    return _F32.unpack(_F32.pack(x))[0]


def adam_step_size(dtype, lr, beta_1, beta_2, t):
    """lr*sqrt(1-beta_2**t)/(1-beta_1**t) in the parameter's dtype, as Keras forms it.

    In float32 the betas themselves round (0.999 -> 0.99900001), which moves 1-beta_2**t by
    ~1e-5 relative at t=1; matching Keras to 1e-6 needs the same rounding, not exact math.
    float32 arithmetic is done in double, each result rounded to float32: for +, -, *, / and
    sqrt of float32 operands that is the correctly rounded float32 result (double has more
    than twice float32's bits), so the bits of NumPy's float32 scalars, without their calls
    (t changes every step: nothing to cache, and NumPy's scalar calls run from a cold cache
    there, ~7 us apiece)."""
    try:
        if np.dtype(dtype) == np.float64:
            b1_power = float(beta_1) ** t
            b2_power = float(beta_2) ** t
            return float(lr) * math.sqrt(1.0 - b2_power) / (1.0 - b1_power)
        b1_power = _f32(_f32(beta_1) ** t)
        b2_power = _f32(_f32(beta_2) ** t)
        root = _f32(math.sqrt(_f32(1.0 - b2_power)))
        return _f32(_f32(_f32(lr) * root) / _f32(1.0 - b1_power))
    except (ZeroDivisionError, OverflowError):   # NumPy's inf and nan there
        with np.errstate(all="ignore"):
            return _adam_step_size_numpy(dtype, lr, beta_1, beta_2, t)


def _adam_step_size_numpy(dtype, lr, beta_1, beta_2, t):
    """adam_step_size by NumPy scalars of dtype (the reference its tests compare with)."""
    dt = np.dtype(dtype).type
    one = dt(1)
    b1_power = dt(float(dt(beta_1)) ** t)
    b2_power = dt(float(dt(beta_2)) ** t)
    return float(dt(lr) * np.sqrt(one - b2_power) / (one - b1_power))


def adam_update(arrays, w, g, m, v, vhat, lr, beta_1, beta_2, epsilon, t, grad_scale,
                clipvalue, weight_decay):
    """-> (w, g, m, v, vhat or None, alpha (the bias-corrected step size), beta_1, beta_2,
    epsilon, clip)."""
    op = "adam_update"
    w, g, lr, clip = _update(arrays, op, w, g, lr, grad_scale, clipvalue, weight_decay)
    _required(op, m=m, v=v)
    m = slot(arrays, op, "m", m, w)
    v = slot(arrays, op, "v", v, w)
    vhat = slot(arrays, op, "vhat", vhat, w)
    distinct(arrays, op, m=m, v=v, vhat=vhat)
    beta_1, beta_2, epsilon = _cached(_adam_scalars, op, beta_1, beta_2, epsilon)
    if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)) or t < 1:
        raise ValueError(f"{op}: 't' must be an int >= 1 (the 1-based step), got {t!r}")
    alpha = adam_step_size(w.dtype, lr, beta_1, beta_2, int(t))
    return w, g, m, v, vhat, alpha, beta_1, beta_2, epsilon, clip



def _many_lists(op, **named):
    """The named sequences as lists, checked to be lists of one length."""
    lists = []
    for name, seq in named.items():
        if not isinstance(seq, (list, tuple)):
            raise TypeError(f"{op}: '{name}' must be a list of arrays, got {type(seq).__name__}")
        lists.append(list(seq))
    if len({len(x) for x in lists}) > 1:
        names = ", ".join(named)
        raise ValueError(f"{op}: {names} must be as long, got "
                         f"{', '.join(str(len(x)) for x in lists)}")
    return lists


def _many_scales(op, grad_scales, count):
    # The optimizer's own list of Python floats: checked without NumPy, one array made (each
    # NumPy call after a training step's products runs from a cold cache, ~7 us apiece).
    if type(grad_scales) is list and len(grad_scales) == count and all(
            type(s) is float and (s >= 0.0 or s != s) and s != math.inf for s in grad_scales):
        return np.array(grad_scales, dtype=np.float64)
    try:
        scales = np.asarray(grad_scales, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: 'grad_scales' must be numbers, one per parameter, got "
                        f"{grad_scales!r}") from None
    if scales.shape != (count,):
        raise ValueError(f"{op}: 'grad_scales' must hold one number per parameter "
                         f"({count}), got shape {scales.shape}")
    # NaN passes (a non-finite global norm poisons the step, as in Keras); negatives do not.
    if np.any(scales < 0) or np.any(np.isinf(scales)):
        raise ValueError(f"{op}: 'grad_scales' must be finite and >= 0, got {scales}")
    return np.ascontiguousarray(scales)


def sgd_update_many(arrays, ws, gs, momentum_bufs, lr, momentum, nesterov, grad_scales,
                    clipvalue, weight_decay):
    """The shared operands of sgd_update_many -> (ws, gs, momentum_bufs as lists or None,
    grad_scales as float64, lr, momentum, nesterov, clip with a unit grad_scale)."""
    op = "sgd_update_many"
    if momentum_bufs is None:
        ws, gs = _many_lists(op, ws=ws, gs=gs)
        bufs = None
    else:
        ws, gs, bufs = _many_lists(op, ws=ws, gs=gs, momentum_bufs=momentum_bufs)
    scales = _many_scales(op, grad_scales, len(ws))
    lr, clip = _cached(_scalars, op, lr, 1.0, clipvalue, weight_decay)
    momentum = number(op, "momentum", momentum, lo=0.0)
    if momentum != 0.0 and bufs is None:
        raise ValueError(f"{op}: momentum={momentum} needs 'momentum_bufs', got None")
    return ws, gs, bufs, scales, lr, momentum, bool(nesterov), clip


def adam_update_many(arrays, ws, gs, ms, vs, lr, beta_1, beta_2, epsilon, t, grad_scales,
                     clipvalue, weight_decay):
    """The shared operands of adam_update_many -> (ws, gs, ms, vs as lists, grad_scales as
    float64, beta_1, beta_2, epsilon, t, clip with a unit grad_scale). Each parameter's
    arrays are the backend's to check (adam_update's checks word its errors)."""
    op = "adam_update_many"
    ws, gs, ms, vs = _many_lists(op, ws=ws, gs=gs, ms=ms, vs=vs)
    scales = _many_scales(op, grad_scales, len(ws))
    _, clip = _cached(_scalars, op, lr, 1.0, clipvalue, weight_decay)
    beta_1, beta_2, epsilon = _cached(_adam_scalars, op, beta_1, beta_2, epsilon)
    if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)) or t < 1:
        raise ValueError(f"{op}: 't' must be an int >= 1 (the 1-based step), got {t!r}")
    return ws, gs, ms, vs, scales, beta_1, beta_2, epsilon, int(t), clip

def rmsprop_update(arrays, w, g, velocity, momentum_buf, average_grad, lr, rho, momentum,
                   epsilon, grad_scale, clipvalue, weight_decay):
    """-> (w, g, velocity, momentum_buf or None, average_grad or None, lr, rho, momentum,
    epsilon, clip)."""
    op = "rmsprop_update"
    w, g, lr, clip = _update(arrays, op, w, g, lr, grad_scale, clipvalue, weight_decay)
    _required(op, velocity=velocity)
    velocity = slot(arrays, op, "velocity", velocity, w)
    momentum_buf = slot(arrays, op, "momentum_buf", momentum_buf, w)
    average_grad = slot(arrays, op, "average_grad", average_grad, w)
    distinct(arrays, op, velocity=velocity, momentum_buf=momentum_buf,
             average_grad=average_grad)
    rho = number(op, "rho", rho, lo=0.0, hi=1.0)
    momentum = _momentum(op, momentum, momentum_buf)
    epsilon = number(op, "epsilon", epsilon, lo=0.0)
    return w, g, velocity, momentum_buf, average_grad, lr, rho, momentum, epsilon, clip


def adagrad_update(arrays, w, g, accumulator, lr, epsilon, grad_scale, clipvalue,
                   weight_decay):
    """-> (w, g, accumulator, lr, epsilon, clip)."""
    op = "adagrad_update"
    w, g, lr, clip = _update(arrays, op, w, g, lr, grad_scale, clipvalue, weight_decay)
    _required(op, accumulator=accumulator)
    accumulator = slot(arrays, op, "accumulator", accumulator, w)
    epsilon = number(op, "epsilon", epsilon, lo=0.0)
    return w, g, accumulator, lr, epsilon, clip


def regularizer_inplace(arrays, w, grad, l1, l2):
    """-> (w, grad, l1, l2); grad is updated in place, so it must not alias w."""
    op = "regularizer_inplace"
    l1 = number(op, "l1", l1, lo=0.0)
    l2 = number(op, "l2", l2, lo=0.0)
    w = arrays.float_input(op, "w", w)
    arrays.inplace(op, "grad", grad)
    if grad.dtype != w.dtype:
        raise TypeError(f"{op}: 'grad' must have the dtype of 'w' ({w.dtype}), got {grad.dtype}")
    if grad.shape != w.shape:
        raise ValueError(f"{op}: 'grad' must have the shape of 'w' {w.shape}, got {grad.shape}")
    if arrays.shares_memory(grad, w):
        raise ValueError(f"{op}: 'grad' must not share memory with 'w'")
    return w, grad, l1, l2


def sum_squares(arrays, a):
    return arrays.float_input("sum_squares", "a", a)


# -- issue 12: weight constraints ----------------------------------------------------------
def constraint_axes(op, shape, axis):
    """(outer, K, inner) of the norm lines: ``axis`` (an int, a list of adjacent ints, or None
    for every axis) folded into one middle axis of K elements."""
    ndim = len(shape)
    if axis is None:
        axes = list(range(ndim))
    else:
        items = list(axis) if isinstance(axis, (list, tuple)) else [axis]
        if not items or any(isinstance(a, bool) or not isinstance(a, (int, np.integer))
                            for a in items):
            raise TypeError(f"{op}: 'axis' must be an int, a list of ints or None, got "
                            f"{axis!r}")
        if any(not -ndim <= a < ndim for a in items):
            raise ValueError(f"{op}: 'axis' {axis!r} is out of range for a weight of shape "
                             f"{tuple(shape)}")
        axes = sorted({int(a) % ndim for a in items})
    if axes and axes != list(range(axes[0], axes[-1] + 1)):
        raise ValueError(f"{op}: 'axis' {axis!r} must name adjacent axes (a norm over one "
                         f"block of the weight of shape {tuple(shape)})")
    if not axes:  # a 0-d weight: its norm is its magnitude
        return 1, 1, 1
    a0, a1 = axes[0], axes[-1] + 1
    return (math.prod(shape[:a0]), math.prod(shape[a0:a1]), math.prod(shape[a1:]))


def constraint_inplace(arrays, w, kind, min_value, max_value, rate, axis):
    """-> (w, kind code, min_value, max_value, rate, (outer, K, inner))."""
    op = "constraint_inplace"
    if kind not in CONSTRAINTS:
        raise ValueError(f"{op}: unknown constraint {kind!r}; expected one of {CONSTRAINTS}")
    min_value = number(op, "min_value", min_value)
    max_value = number(op, "max_value", max_value)
    rate = number(op, "rate", rate)
    if kind == "min_max_norm" and not 0.0 <= min_value <= max_value:
        raise ValueError(f"{op}: min_max_norm needs 0 <= min_value <= max_value, got "
                         f"min_value={min_value}, max_value={max_value}")
    w = arrays.inplace(op, "w", w)
    return (w, CONSTRAINTS.index(kind), min_value, max_value, rate,
            constraint_axes(op, w.shape, axis))
# -- Nadam, Adamax, Adadelta, Ftrl, Lion (issue 15) ------------------------------------------

def _step(op, t):
    if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)) or t < 1:
        raise ValueError(f"{op}: 't' must be an int >= 1 (the 1-based step), got {t!r}")
    return int(t)


def _two_slots(arrays, op, w, **slots):
    _required(op, **slots)
    checked = [slot(arrays, op, name, a, w) for name, a in slots.items()]
    distinct(arrays, op, **dict(zip(slots, checked)))
    return checked


def _beta(op, name, value):
    return number(op, name, value, lo=0.0, hi=1.0, hi_open=True)


def nadam_momentum_schedule(dtype, beta_1, step):
    """Keras's u_step = beta_1 (1 - 0.5 * 0.96^step), in the parameter's dtype."""
    dt = np.dtype(dtype).type
    return dt(dt(beta_1) * (dt(1) - dt(0.5) * dt(float(dt(0.96)) ** step)))


def nadam_update(arrays, w, g, m, v, lr, beta_1, beta_2, epsilon, t, u_product, grad_scale,
                 clipvalue, weight_decay):
    """-> (w, g, m, v, (lr, 1-beta_1, 1-beta_2, epsilon, c_m, c_g, 1-beta_2^t), clip):
    m_hat = c_m m + c_g g with Keras's u terms folded into c_m, c_g in the dtype of w."""
    op = "nadam_update"
    w, g, lr, clip = _update(arrays, op, w, g, lr, grad_scale, clipvalue, weight_decay)
    m, v = _two_slots(arrays, op, w, m=m, v=v)
    beta_1, beta_2 = _beta(op, "beta_1", beta_1), _beta(op, "beta_2", beta_2)
    epsilon = number(op, "epsilon", epsilon, lo=0.0)
    t = _step(op, t)
    u_product = number(op, "u_product", u_product)
    dt = np.dtype(w.dtype).type
    one = dt(1)
    u_t = nadam_momentum_schedule(w.dtype, beta_1, t)
    u_next = nadam_momentum_schedule(w.dtype, beta_1, t + 1)
    u_prod = dt(u_product)
    c_m = dt(u_next / (one - u_prod * u_next))
    c_g = dt((one - u_t) / (one - u_prod))
    bc2 = dt(one - dt(float(dt(beta_2)) ** t))
    return w, g, m, v, (lr, 1.0 - beta_1, 1.0 - beta_2, epsilon, float(c_m), float(c_g),
                        float(bc2)), clip


def adamax_update(arrays, w, g, m, u, lr, beta_1, beta_2, epsilon, t, grad_scale, clipvalue,
                  weight_decay):
    """-> (w, g, m, u, (lr, 1-beta_1, beta_2, epsilon, 1-beta_1^t), clip)."""
    op = "adamax_update"
    w, g, lr, clip = _update(arrays, op, w, g, lr, grad_scale, clipvalue, weight_decay)
    m, u = _two_slots(arrays, op, w, m=m, u=u)
    beta_1, beta_2 = _beta(op, "beta_1", beta_1), _beta(op, "beta_2", beta_2)
    epsilon = number(op, "epsilon", epsilon, lo=0.0)
    dt = np.dtype(w.dtype).type
    bc1 = dt(dt(1) - dt(float(dt(beta_1)) ** _step(op, t)))
    return w, g, m, u, (lr, 1.0 - beta_1, beta_2, epsilon, float(bc1)), clip


def adadelta_update(arrays, w, g, accumulated_grad, accumulated_delta_var, lr, rho, epsilon,
                    grad_scale, clipvalue, weight_decay):
    """-> (w, g, accumulated_grad, accumulated_delta_var, lr, rho, epsilon, clip)."""
    op = "adadelta_update"
    w, g, lr, clip = _update(arrays, op, w, g, lr, grad_scale, clipvalue, weight_decay)
    ag, ad = _two_slots(arrays, op, w, accumulated_grad=accumulated_grad,
                        accumulated_delta_var=accumulated_delta_var)
    rho = number(op, "rho", rho, lo=0.0, hi=1.0)
    epsilon = number(op, "epsilon", epsilon, lo=0.0)
    return w, g, ag, ad, lr, rho, epsilon, clip


def ftrl_update(arrays, w, g, accumulator, linear, lr, learning_rate_power, l1, l2,
                l2_shrinkage, beta, grad_scale, clipvalue, weight_decay):
    """-> (w, g, accumulator, linear, (lr, -learning_rate_power, l1,
    2 (l2 + beta / (2 lr)), 2 l2_shrinkage), clip)."""
    op = "ftrl_update"
    w, g, lr, clip = _update(arrays, op, w, g, lr, grad_scale, clipvalue, weight_decay)
    acc, lin = _two_slots(arrays, op, w, accumulator=accumulator, linear=linear)
    power = number(op, "learning_rate_power", learning_rate_power, hi=0.0)
    l1 = number(op, "l1", l1, lo=0.0)
    l2 = number(op, "l2", l2, lo=0.0)
    shrink = number(op, "l2_shrinkage", l2_shrinkage, lo=0.0)
    beta = number(op, "beta", beta)
    if lr == 0.0:
        raise ValueError(f"{op}: 'lr' must not be 0 (FTRL divides by it)")
    return w, g, acc, lin, (lr, -power, l1, 2.0 * (l2 + beta / (2.0 * lr)), 2.0 * shrink), clip


def lion_update(arrays, w, g, m, lr, beta_1, beta_2, grad_scale, clipvalue, weight_decay):
    """-> (w, g, m, lr, beta_1, beta_2, clip)."""
    op = "lion_update"
    w, g, lr, clip = _update(arrays, op, w, g, lr, grad_scale, clipvalue, weight_decay)
    _required(op, m=m)
    m = slot(arrays, op, "m", m, w)
    beta_1 = number(op, "beta_1", beta_1, lo=0.0, hi=1.0, lo_open=True)
    beta_2 = number(op, "beta_2", beta_2, lo=0.0, hi=1.0)
    return w, g, m, lr, beta_1, beta_2, clip


# -- pruning masks of the updates (issue 18) -------------------------------------------------
def update_mask(arrays, op, w, mask):
    """None, or the uint8 mask (bool accepted) shaped like ``w``: 0 pins an element of ``w``
    and of every slot at exactly zero through the update."""
    if mask is None:
        return None
    mask = arrays.mask_input(op, "mask", mask)
    if tuple(mask.shape) != tuple(w.shape):
        raise ValueError(f"{op}: 'mask' must have the shape of 'w' {tuple(w.shape)}, got "
                         f"{tuple(mask.shape)}")
    return mask


# -- Lamb, Adafactor, Muon (Keras 3.15's lamb.py, adafactor.py, muon.py) ----------------------
from pynn.backend.operands.common import flag  # noqa: E402


def _power_f32(base, t):
    """base**t as Keras forms ops.power(cast(base, float32), float32 t)."""
    return _f32(_f32(base) ** t)


def lamb_update(arrays, w, g, m, v, lr, beta_1, beta_2, epsilon, t, grad_scale, clipvalue,
                weight_decay):
    """-> (w, g, m, v, (lr, 1-beta_1, 1-beta_2, 1-beta_1^t, 1-beta_2^t, epsilon), clip); the
    bias corrections rounded as Keras rounds them in float32."""
    op = "lamb_update"
    w, g, lr, clip = _update(arrays, op, w, g, lr, grad_scale, clipvalue, weight_decay)
    _required(op, m=m, v=v)
    m, v = _two_slots(arrays, op, w, m=m, v=v)
    beta_1, beta_2, epsilon = _cached(_adam_scalars, op, beta_1, beta_2, epsilon)
    t = _step(op, t)
    if w.dtype == np.float64:
        bc1, bc2 = 1.0 - beta_1**t, 1.0 - beta_2**t
    else:
        bc1, bc2 = _f32(1.0 - _power_f32(beta_1, t)), _f32(1.0 - _power_f32(beta_2, t))
    return w, g, m, v, (lr, 1.0 - beta_1, 1.0 - beta_2, bc1, bc2, epsilon), clip


def adafactor_slot_shapes(shape):
    """(r, c, v) shapes of a variable (Keras's build): rank >= 2 factors the last two axes,
    r over the last (shape[:-1]), c over the second last (shape[:-2] + shape[-1:]); lower
    ranks keep v only, with r and c Keras's scalar placeholders."""
    shape = tuple(shape)
    if len(shape) < 2:
        return (), (), shape
    return shape[:-1], shape[:-2] + shape[-1:], shape


def adafactor_update(arrays, w, g, r, c, v, lr, beta_2_decay, epsilon_1, epsilon_2,
                     clip_threshold, t, grad_scale, clipvalue, weight_decay):
    """-> (w, g, r, c, v, (rho_t, beta_2_t, epsilon_1, epsilon_2, clip_threshold), clip);
    r and c are None for rank < 2."""
    op = "adafactor_update"
    w, g, lr, clip = _update(arrays, op, w, g, lr, grad_scale, clipvalue, weight_decay)
    r_shape, c_shape, _ = adafactor_slot_shapes(w.shape)
    _required(op, v=v)
    v = slot(arrays, op, "v", v, w)
    if w.ndim >= 2:
        _required(op, r=r, c=c)
        r = arrays.inplace(op, "r", r, like=w)
        c = arrays.inplace(op, "c", c, like=w)
        for name, a, want in (("r", r, r_shape), ("c", c, c_shape)):
            if a.dtype != w.dtype:
                raise TypeError(f"{op}: '{name}' must have the dtype of 'w' ({w.dtype}), got "
                                f"{a.dtype}")
            if tuple(a.shape) != want:
                raise ValueError(f"{op}: '{name}' of a 'w' shaped {tuple(w.shape)} must have "
                                 f"shape {want}, got {tuple(a.shape)}")
        distinct(arrays, op, w=w, r=r, c=c, v=v)
    else:
        r = c = None
        distinct(arrays, op, w=w, v=v)
    beta_2_decay = number(op, "beta_2_decay", beta_2_decay)
    epsilon_1 = number(op, "epsilon_1", epsilon_1, lo=0.0)
    epsilon_2 = number(op, "epsilon_2", epsilon_2, lo=0.0)
    clip_threshold = number(op, "clip_threshold", clip_threshold, lo=0.0, lo_open=True)
    t = _step(op, t)
    if w.dtype == np.float64:
        rho_t = min(lr, 1.0 / math.sqrt(t))
        beta_2_t = 1.0 - float(t) ** beta_2_decay
    else:
        rho_t = min(_f32(lr), _f32(1.0 / _f32(math.sqrt(t))))
        beta_2_t = _f32(1.0 - _power_f32(t, beta_2_decay))
    return w, g, r, c, v, (rho_t, beta_2_t, epsilon_1, epsilon_2, clip_threshold), clip


def muon_update(arrays, w, g, m, lr, momentum, nesterov, ns_steps, muon_a, muon_b, muon_c,
                rms_rate, grad_scale, clipvalue, weight_decay):
    """-> (w, g, m, (lr, momentum, nesterov, ns_steps, a, b, c, adjust), clip): adjust is
    sqrt(max(R, C)) * rms_rate, or -1 when rms_rate is None (no scaling)."""
    op = "muon_update"
    w, g, lr, clip = _update(arrays, op, w, g, lr, grad_scale, clipvalue, weight_decay)
    if w.ndim != 2:
        raise ValueError(f"{op}: Muon's step takes a matrix: 'w' must have 2 dimensions, got "
                         f"shape {tuple(w.shape)} (other variables take its AdamW branch)")
    _required(op, m=m)
    m = slot(arrays, op, "m", m, w)
    momentum = number(op, "momentum", momentum, lo=0.0)
    nesterov = flag(op, "nesterov", nesterov)
    if isinstance(ns_steps, (bool, np.bool_)) or not isinstance(ns_steps, (int, np.integer)):
        raise TypeError(f"{op}: 'ns_steps' must be an int, got {ns_steps!r}")
    if not 0 <= ns_steps <= 1000:
        raise ValueError(f"{op}: 'ns_steps' must be in [0, 1000], got {ns_steps}")
    a = number(op, "muon_a", muon_a)
    b = number(op, "muon_b", muon_b)
    c = number(op, "muon_c", muon_c)
    if rms_rate is None:
        adjust = -1.0
    else:
        rms_rate = number(op, "rms_rate", rms_rate, lo=0.0)
        root = math.sqrt(max(w.shape))
        adjust = root * rms_rate if w.dtype == np.float64 else _f32(_f32(root) * _f32(rms_rate))
    return w, g, m, (lr, momentum, nesterov, int(ns_steps), a, b, c, adjust), clip


# -- misc: ScheduleFreeAdamW (Keras 3.15) ------------------------------------------------------
def schedule_free_adamw_update(arrays, w, g, z, v, lr, beta_1, beta_2, epsilon, t,
                               warmup_steps, grad_scale, clipvalue, weight_decay):
    """-> (w, g, z, v, (step_lr, beta_1, 1-beta_1, 1-beta_2, 1-beta_2^t, 1/t, epsilon), clip):
    step_lr is lr times the warmup factor min(t / warmup_steps, 1); the constants rounded as
    Keras rounds them in float32."""
    op = "schedule_free_adamw_update"
    w, g, lr, clip = _update(arrays, op, w, g, lr, grad_scale, clipvalue, weight_decay)
    z, v = _two_slots(arrays, op, w, z=z, v=v)
    beta_1, beta_2, epsilon = _cached(_adam_scalars, op, beta_1, beta_2, epsilon)
    if beta_1 == 0.0:
        raise ValueError(f"{op}: 'beta_1' must be > 0 (x is recovered as (y - (1-beta_1) z) "
                         f"/ beta_1), got 0.0")
    t = _step(op, t)
    if isinstance(warmup_steps, (bool, np.bool_)) or not isinstance(
            warmup_steps, (int, np.integer)) or warmup_steps < 0:
        raise ValueError(f"{op}: 'warmup_steps' must be an int >= 0, got {warmup_steps!r}")
    if w.dtype == np.float64:
        step_lr = lr * min(t / warmup_steps, 1.0) if warmup_steps else lr
        return w, g, z, v, (step_lr, beta_1, 1.0 - beta_1, 1.0 - beta_2, 1.0 - beta_2**t,
                            1.0 / t, epsilon), clip
    step_lr = _f32(lr)
    if warmup_steps:
        step_lr = _f32(step_lr * min(_f32(_f32(t) / _f32(warmup_steps)), 1.0))
    return w, g, z, v, (step_lr, _f32(beta_1), _f32(1.0 - _f32(beta_1)),
                        _f32(1.0 - _f32(beta_2)), _f32(1.0 - _power_f32(beta_2, t)),
                        _f32(1.0 / _f32(t)), _f32(epsilon)), clip
