"""OpenCL normalization ops: the host side of ``opencl/normalization.cl``.

Same names, signatures and semantics as ``native/normalization.pyx``; operands are checked by
``pynn.backend.operands.normalization``. Each op is a reduction (two launches: partials by
channel column, then their fold; or one work-group per (sample, group) for wide groups)
and one elementwise launch; the moving statistics of batch norm are updated on the device
by the statistics kernel. rms norm and unit norm reduce each row of x's last axis (one
work-group per wide row, one work-item per narrow one). Statistics accumulate in float32 (the
CPU's in double).
"""

import numpy as np

from pynn.backend.api import ACTIVATIONS
from pynn.backend.opencl import runtime as rt
from pynn.backend.opencl.arrays import DEVICE
from pynn.backend.opencl.launch import elementwise, kernel, sizes
from pynn.backend.operands import normalization as operands

STEM = "normalization"
# Reductions over rows run in P partials per channel, each folding every P-th row: at most
# MAX_PARTIALS, each at least ROWS_PER_PARTIAL rows long, fixed by the size alone.
MAX_PARTIALS = 256
ROWS_PER_PARTIAL = 16
# Groups of at least this many channels reduce as contiguous runs (one work-group per
# (sample, group): layer norm's rows); narrower ones by channel columns (as on the CPU).
GROUP_RUN_MIN = 16


def _partials(rows):
    return max(1, min(MAX_PARTIALS, -(-rows // ROWS_PER_PARTIAL)))


def _column_buffers(count, what):
    return (rt.empty((count,), what=f"{what} partials"),
            rt.empty((count,), what=f"{what} partials"))


def _per_group(name, groups, *args):
    """One work-group of the reduction kernel ``name`` per statistic."""
    wg = sizes()[0]
    rt.launch(kernel(STEM, name), (groups * wg,), (wg,), *args)


def _optional(a, stand_in):
    """(buffer, flag) of an optional per-channel operand: a kernel never reads the stand-in."""
    return (stand_in, 0) if a is None else (a, 1)


def batch_norm_forward(x, gamma, beta, moving_mean, moving_variance, axis=-1, momentum=0.99,
                       epsilon=1e-3, training=False, activation="linear", alpha=0.0):
    """-> (y, mean, inv_std); training updates moving_mean / moving_variance in place;
    ``activation`` applied to the normalized values in the same launch."""
    op = "batch_norm_forward"
    (x, gamma, beta, moving_mean, moving_variance, (a, c, b), momentum, epsilon,
     training, (act_name, act_alpha)) = operands.batch_norm_forward(
        DEVICE, x, gamma, beta, moving_mean, moving_variance, axis, momentum, epsilon,
        training, activation, alpha)
    y = rt.empty(x.shape, what=f"{op} output")
    mean = rt.empty((c,), what=f"{op} mean")
    inv_std = rt.empty((c,), what=f"{op} inv_std")
    if training and a * b > 0:
        p = _partials(a * b)
        part1, part2 = _column_buffers(p * c, op)
        elementwise(STEM, "batch_norm_partials", p * c, x, x, x, part1, part2, a, c, b, p, 0,
                    x, x, x, 0, 0, 0, np.float32(0))
        elementwise(STEM, "batch_norm_statistics", c, part1, part2, x, mean, inv_std,
                    moving_mean, moving_variance, a, c, b, p, np.float32(momentum),
                    np.float32(epsilon))
    else:
        elementwise(STEM, "batch_norm_moving_statistics", c, moving_mean, moving_variance,
                    mean, inv_std, c, np.float32(epsilon))
    gamma_buf, has_gamma = _optional(gamma, x)
    beta_buf, has_beta = _optional(beta, x)
    elementwise(STEM, "batch_norm_normalize", x.size, x, y, mean, inv_std, gamma_buf, beta_buf,
                has_gamma, has_beta, a, c, b, ACTIVATIONS.index(act_name),
                np.float32(act_alpha))
    return y, mean, inv_std


def batch_norm_apply(x, gamma, beta, mean, inv_std, axis=-1, activation="linear", alpha=0.0):
    """y = act((x - mean) * inv_std * gamma + beta): batch_norm_forward's normalize launch
    with the given statistics (the same bits)."""
    op = "batch_norm_apply"
    x, gamma, beta, mean, inv_std, (a, c, b), (act_name, act_alpha) = \
        operands.batch_norm_apply(DEVICE, x, gamma, beta, mean, inv_std, axis, activation,
                                  alpha)
    y = rt.empty(x.shape, what=f"{op} output")
    if x.size:
        gamma_buf, has_gamma = _optional(gamma, x)
        beta_buf, has_beta = _optional(beta, x)
        elementwise(STEM, "batch_norm_normalize", x.size, x, y, mean, inv_std, gamma_buf,
                    beta_buf, has_gamma, has_beta, a, c, b, ACTIVATIONS.index(act_name),
                    np.float32(act_alpha))
    return y


def batch_norm_backward(dy, x, gamma, mean, inv_std, axis=-1, batch_stats=True,
                        need_input_grad=True, beta=None, activation="linear", alpha=0.0):
    """-> (dx or None, dgamma, dbeta); with the forward's activation (and beta), dy is the
    activated output's gradient."""
    op = "batch_norm_backward"
    (dy, x, gamma, mean, inv_std, (a, c, b), batch_stats, need_input_grad, beta,
     (act_name, act_alpha)) = operands.batch_norm_backward(
        DEVICE, dy, x, gamma, mean, inv_std, axis, batch_stats, need_input_grad, beta,
        activation, alpha)
    act = (ACTIVATIONS.index(act_name), np.float32(act_alpha))
    gamma_buf, has_gamma = _optional(gamma, x)
    beta_buf, has_beta = _optional(beta, x)
    dgamma = rt.zeros((c,), what=f"{op} dgamma")
    dbeta = rt.zeros((c,), what=f"{op} dbeta")
    if a * b > 0:
        p = _partials(a * b)
        part1, part2 = _column_buffers(p * c, op)
        elementwise(STEM, "batch_norm_partials", p * c, dy, x, mean, part1, part2, a, c, b, p, 1,
                    inv_std, gamma_buf, beta_buf, has_gamma, has_beta, *act)
        elementwise(STEM, "channel_partials_fold", c, part1, part2, inv_std, 1, dgamma, dbeta,
                    c, p)
    if not need_input_grad:
        return None, dgamma, dbeta
    dx = rt.empty(x.shape, what=f"{op} dx")
    elementwise(STEM, "batch_norm_backward_input", x.size, dy, x, gamma_buf, has_gamma, mean,
                inv_std, dgamma, dbeta, dx, a, c, b, int(batch_stats), beta_buf, has_beta, *act)
    return dx, dgamma, dbeta


def group_norm_forward(x, gamma, beta, groups, epsilon=1e-3, rms_scaling=False):
    """-> (y, mean (N, groups), inv_std (N, groups))."""
    op = "group_norm_forward"
    x, gamma, beta, (n, s, c, g), epsilon, rms_scaling = operands.group_norm_forward(
        DEVICE, x, gamma, beta, groups, epsilon, rms_scaling)
    y = rt.empty(x.shape, what=f"{op} output")
    mean = rt.zeros((n, g), what=f"{op} mean")
    inv_std = rt.zeros((n, g), what=f"{op} inv_std")
    if x.size:
        if c // g >= GROUP_RUN_MIN:
            _per_group("group_norm_statistics", n * g, x, mean, inv_std, n, s, c, g,
                       np.float32(epsilon))
        else:
            p = _partials(s)
            part1, part2 = _column_buffers(n * p * c, op)
            elementwise(STEM, "group_norm_column_partials", n * p * c, x, x, x, 0, x, x, part1,
                        part2, n, s, c, g, p, 0)
            elementwise(STEM, "group_norm_column_fold", n * g, part1, part2, x, mean, inv_std,
                        n, s, c, g, p, 1, np.float32(epsilon))
        gamma_buf, has_gamma = _optional(gamma, x)
        beta_buf, has_beta = _optional(beta, x)
        elementwise(STEM, "group_norm_normalize", x.size, x, y, mean, inv_std, gamma_buf,
                    beta_buf, has_gamma, has_beta, n, s, c, g, int(rms_scaling))
    return y, mean, inv_std


def group_norm_backward(dy, x, gamma, mean, inv_std, groups, rms_scaling=False,
                        need_input_grad=True):
    """-> (dx or None, dgamma, dbeta)."""
    op = "group_norm_backward"
    (dy, x, gamma, mean, inv_std, (n, s, c, g), rms_scaling,
     need_input_grad) = operands.group_norm_backward(DEVICE, dy, x, gamma, mean, inv_std,
                                                     groups, rms_scaling, need_input_grad)
    dgamma = rt.zeros((c,), what=f"{op} dgamma")
    dbeta = rt.zeros((c,), what=f"{op} dbeta")
    if x.size:
        p = _partials(n * s)
        part1, part2 = _column_buffers(p * c, op)
        elementwise(STEM, "group_norm_channel_partials", p * c, dy, x, mean, inv_std, part1,
                    part2, n, s, c, g, p, int(rms_scaling))
        elementwise(STEM, "channel_partials_fold", c, part1, part2, x, 0, dgamma, dbeta, c, p)
    if not need_input_grad:
        return None, dgamma, dbeta
    dx = rt.empty(x.shape, what=f"{op} dx")
    if x.size:
        gamma_buf, has_gamma = _optional(gamma, x)
        sg = rt.empty((n * g,), what=f"{op} group sums")
        sgx = rt.empty((n * g,), what=f"{op} group sums")
        if c // g >= GROUP_RUN_MIN:
            _per_group("group_norm_group_sums", n * g, dy, x, gamma_buf, has_gamma, mean,
                       inv_std, sg, sgx, n, s, c, g)
        else:
            p = _partials(s)
            part1, part2 = _column_buffers(n * p * c, op)
            elementwise(STEM, "group_norm_column_partials", n * p * c, dy, x, gamma_buf,
                        has_gamma, mean, inv_std, part1, part2, n, s, c, g, p, 1)
            elementwise(STEM, "group_norm_column_fold", n * g, part1, part2, x, sg, sgx, n, s,
                        c, g, p, 0, np.float32(0.0))
        elementwise(STEM, "group_norm_backward_input", x.size, dy, x, gamma_buf, has_gamma,
                    mean, inv_std, sg, sgx, dx, n, s, c, g, int(rms_scaling))
    return dx, dgamma, dbeta


# -- rms norm and unit norm: x (R, C) by rows ------------------------------------------------

def _row_sums(u, v, w, out, r, c, statistics, epsilon=0.0, unit=False, cap=0.0):
    """out[r] = the inverse norm of row r (statistics) or sum(u * v * w) over it."""
    w_buf, has_w = _optional(w, u)
    args = (u, v, w_buf, has_w, out, r, c, int(statistics), np.float32(epsilon), int(unit),
            np.float32(cap))
    if c >= GROUP_RUN_MIN:
        _per_group("row_norm_sums", r, *args)
    else:
        elementwise(STEM, "row_norm_sums_narrow", r, *args)


def _row_norm_forward(op, x, scale, r, c, epsilon, unit):
    cap = np.float32(1.0 / epsilon) if unit else np.float32(0.0)
    y = rt.empty(x.shape, what=f"{op} output")
    inv = rt.zeros(x.shape[:-1], what=f"{op} inverse norm")
    if x.size:
        _row_sums(x, x, None, inv, r, c, True, epsilon, unit, cap)
        scale_buf, has_scale = _optional(scale, x)
        elementwise(STEM, "row_norm_normalize", x.size, x, y, inv, scale_buf, has_scale, r, c)
    return y, inv


def _row_norm_dx(op, dy, x, scale, inv, r, c, unit, cap):
    dx = rt.empty(x.shape, what=f"{op} dx")
    if x.size:
        t = rt.empty((r,), what=f"{op} row sums")
        _row_sums(dy, x, scale, t, r, c, False)
        scale_buf, has_scale = _optional(scale, x)
        elementwise(STEM, "row_norm_backward_input", x.size, dy, x, scale_buf, has_scale, inv,
                    t, dx, r, c, int(unit), np.float32(cap))
    return dx


def rms_norm_forward(x, scale, epsilon=1e-6):
    """-> (y, inv_rms of shape x.shape[:-1])."""
    x, scale, (r, c), epsilon = operands.rms_norm_forward(DEVICE, x, scale, epsilon)
    return _row_norm_forward("rms_norm_forward", x, scale, r, c, epsilon, False)


def rms_norm_backward(dy, x, scale, inv_rms, need_input_grad=True):
    """-> (dx or None, dscale)."""
    op = "rms_norm_backward"
    dy, x, scale, inv_rms, (r, c), need_input_grad = operands.rms_norm_backward(
        DEVICE, dy, x, scale, inv_rms, need_input_grad)
    dscale = rt.zeros((c,), what=f"{op} dscale")
    if x.size:
        p = _partials(r)
        part = rt.empty((p * c,), what=f"{op} partials")
        elementwise(STEM, "rms_norm_scale_partials", p * c, dy, x, inv_rms, part, r, c, p)
        elementwise(STEM, "rms_norm_scale_fold", c, part, dscale, c, p)
    if not need_input_grad:
        return None, dscale
    return _row_norm_dx(op, dy, x, scale, inv_rms, r, c, False, 0.0), dscale


def unit_norm_forward(x, epsilon=1e-12):
    """-> (y, inv_norm of shape x.shape[:-1])."""
    x, (r, c), epsilon = operands.unit_norm_forward(DEVICE, x, epsilon)
    return _row_norm_forward("unit_norm_forward", x, None, r, c, epsilon, True)


def unit_norm_backward(dy, x, inv_norm, epsilon=1e-12):
    """-> dx."""
    dy, x, inv_norm, (r, c), epsilon = operands.unit_norm_backward(DEVICE, dy, x, inv_norm,
                                                                   epsilon)
    return _row_norm_dx("unit_norm_backward", dy, x, None, inv_norm, r, c, True,
                        np.float32(1.0 / epsilon))
