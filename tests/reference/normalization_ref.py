"""float64 NumPy references of the normalization ops (native/normalization.pyx): the
textbook formulas, written for clarity (two-pass variance, explicit broadcasting)."""

import numpy as np

from tests.reference.activation_ref import activation_backward_ref, activation_forward_ref


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def _channel_shape(ndim, axis):
    shape = [1] * ndim
    shape[axis] = -1
    return shape


def batch_norm_forward_ref(x, gamma, beta, moving_mean, moving_variance, axis=-1,
                           momentum=0.99, epsilon=1e-3, training=False, activation="linear",
                           alpha=0.0):
    """-> (y, mean, inv_std, new_moving_mean, new_moving_variance); y = activation of the
    normalized values."""
    x = _f64(x)
    axis = axis % x.ndim
    others = tuple(a for a in range(x.ndim) if a != axis)
    c = x.shape[axis]
    gamma = np.ones(c) if gamma is None else _f64(gamma)
    beta = np.zeros(c) if beta is None else _f64(beta)
    mm, mv = _f64(moving_mean), _f64(moving_variance)
    if training and x.size:
        mean = x.mean(axis=others)
        var = ((x - mean.reshape(_channel_shape(x.ndim, axis))) ** 2).mean(axis=others)
        mm = mm * momentum + mean * (1 - momentum)
        mv = mv * momentum + var * (1 - momentum)
    else:
        mean, var = _f64(moving_mean), _f64(moving_variance)
    inv_std = 1.0 / np.sqrt(var + epsilon)
    b = _channel_shape(x.ndim, axis)
    y = (x - mean.reshape(b)) * (inv_std * gamma).reshape(b) + beta.reshape(b)
    return activation_forward_ref(y, activation, alpha), mean, inv_std, mm, mv


def batch_norm_backward_ref(dy, x, gamma, mean, inv_std, axis=-1, batch_stats=True,
                            need_input_grad=True, beta=None, activation="linear", alpha=0.0):
    """-> (dx or None, dgamma, dbeta); with an activation, dy is the gradient of its output
    and is first taken back through it at the pre-activation."""
    dy, x = _f64(dy), _f64(x)
    axis = axis % x.ndim
    others = tuple(a for a in range(x.ndim) if a != axis)
    c = x.shape[axis]
    gamma = np.ones(c) if gamma is None else _f64(gamma)
    b = _channel_shape(x.ndim, axis)
    xhat = (x - _f64(mean).reshape(b)) * _f64(inv_std).reshape(b)
    if activation != "linear":
        beta = np.zeros(c) if beta is None else _f64(beta)
        dy = activation_backward_ref(dy, xhat * gamma.reshape(b) + beta.reshape(b), activation,
                                     alpha)
    dbeta = dy.sum(axis=others)
    dgamma = (dy * xhat).sum(axis=others)
    if not need_input_grad:
        return None, dgamma, dbeta
    k = (gamma * _f64(inv_std)).reshape(b)
    if not batch_stats:
        return k * dy, dgamma, dbeta
    m = x.size // c
    dx = k * (dy - dbeta.reshape(b) / m - xhat * dgamma.reshape(b) / m)
    return dx, dgamma, dbeta


def _grouped(x, groups):
    """x (N, ..., C) as (N, S, G, CG)."""
    n, c = x.shape[0], x.shape[-1]
    return x.reshape(n, -1, groups, c // groups)


def group_norm_forward_ref(x, gamma, beta, groups, epsilon=1e-3, rms_scaling=False):
    """-> (y, mean (N, G), inv_std (N, G))."""
    x = _f64(x)
    c = x.shape[-1]
    gamma = np.ones(c) if gamma is None else _f64(gamma)
    beta = np.zeros(c) if beta is None else _f64(beta)
    xg = _grouped(x, groups)
    mean = xg.mean(axis=(1, 3))
    var = ((xg - mean[:, None, :, None]) ** 2).mean(axis=(1, 3))
    inv_std = 1.0 / np.sqrt(var + epsilon)
    centered = xg if rms_scaling else xg - mean[:, None, :, None]
    yhat = (centered * inv_std[:, None, :, None]).reshape(x.shape)
    return yhat * gamma + beta, mean, inv_std


def group_norm_backward_ref(dy, x, gamma, mean, inv_std, groups, rms_scaling=False,
                            need_input_grad=True):
    """-> (dx or None, dgamma, dbeta), dx by the chain rule through mean and variance
    written out term by term."""
    dy, x = _f64(dy), _f64(x)
    c = x.shape[-1]
    gamma = np.ones(c) if gamma is None else _f64(gamma)
    mean, inv = _f64(mean)[:, None, :, None], _f64(inv_std)[:, None, :, None]
    xg, dyg = _grouped(x, groups), _grouped(dy, groups)
    xhat = (xg - mean) * inv
    yhat = xg * inv if rms_scaling else xhat
    lead = tuple(range(x.ndim - 1))
    dgamma = (dy * yhat.reshape(x.shape)).sum(axis=lead)
    dbeta = dy.sum(axis=lead)
    if not need_input_grad:
        return None, dgamma, dbeta
    g = dyg * _grouped(np.broadcast_to(gamma, x.shape), groups)
    m = xg.shape[1] * xg.shape[3]
    centered = xg if rms_scaling else xg - mean
    # y = centered * inv: d/dx through centered (when centering) and through inv (always),
    # where d inv / d x_j = -inv^3 (x_j - mean) / m.
    d_inv = (g * centered).sum(axis=(1, 3), keepdims=True)
    dx = g * inv - inv ** 3 * (xg - mean) / m * d_inv
    if not rms_scaling:
        dx = dx - (g * inv).sum(axis=(1, 3), keepdims=True) / m
    return dx.reshape(x.shape), dgamma, dbeta


def batch_norm_apply_ref(x, gamma, beta, mean, inv_std, axis=-1, activation="linear",
                         alpha=0.0):
    """act((x - mean) * inv_std * gamma + beta) per channel of ``axis``, in float64."""
    x = _f64(x)
    c = x.shape[axis]
    gamma = np.ones(c) if gamma is None else _f64(gamma)
    beta = np.zeros(c) if beta is None else _f64(beta)
    b = _channel_shape(x.ndim, axis % x.ndim)
    y = (x - _f64(mean).reshape(b)) * (_f64(inv_std) * gamma).reshape(b) + beta.reshape(b)
    return activation_forward_ref(y, activation, alpha)


def _rows(x):
    """x (..., C) as (rows, C)."""
    return x.reshape(-1, x.shape[-1])


def rms_norm_forward_ref(x, scale, epsilon=1e-6):
    """-> (y, inv_rms (x.shape[:-1])): y = x / sqrt(mean(x^2) + epsilon) * scale over the
    last axis (Keras 3's ops.rms_normalization)."""
    x = _f64(x)
    c = x.shape[-1]
    scale = np.ones(c) if scale is None else _f64(scale)
    inv = 1.0 / np.sqrt(np.mean(x * x, axis=-1) + epsilon)
    return x * inv[..., None] * scale, inv


def rms_norm_backward_ref(dy, x, scale, inv_rms, need_input_grad=True):
    """-> (dx or None, dscale), the chain rule through inv_rms written out:
    d inv / d x_j = -inv^3 x_j / C."""
    dy, x = _f64(dy), _f64(x)
    c = x.shape[-1]
    scale = np.ones(c) if scale is None else _f64(scale)
    inv = _f64(inv_rms)[..., None]
    dscale = _rows(dy * x * inv).sum(axis=0)
    if not need_input_grad:
        return None, dscale
    g = dy * scale
    dx = g * inv - inv ** 3 * x / c * (g * x).sum(axis=-1, keepdims=True)
    return dx, dscale


def unit_norm_forward_ref(x, epsilon=1e-12):
    """-> (y, inv_norm (x.shape[:-1])): Keras 3's ops.normalize(x, order=2) over the last
    axis, y = x * min(1 / sqrt(sum(x^2)), 1 / epsilon)."""
    x = _f64(x)
    with np.errstate(divide="ignore"):
        inv = np.minimum(1.0 / np.sqrt(np.sum(x * x, axis=-1)), 1.0 / epsilon)
    return x * inv[..., None], inv


def unit_norm_backward_ref(dy, x, inv_norm, epsilon=1e-12):
    """-> dx: inv*dy - inv^3 x sum(dy x) per row, or inv*dy where the cap 1/epsilon holds (a
    constant there, as torch's minimum makes it)."""
    dy, x = _f64(dy), _f64(x)
    inv = _f64(inv_norm)[..., None]
    capped = inv >= np.float64(np.asarray(1.0 / epsilon, dtype=np.asarray(inv_norm).dtype))
    k = np.where(capped, 0.0, inv ** 3)
    return dy * inv - k * x * (dy * x).sum(axis=-1, keepdims=True)


# -- SpectralNormalization (branch misc) --
def spectral_normalize_ref(kernel, vector_u, power_iterations, epsilon=1e-7):
    """-> (vector_u, kernel / sigma) in float64, Keras's power iteration on kernel viewed as
    (-1, O); l2 normalisation as Keras's, x * min(1 / ||x||, 1 / epsilon). An all-zero
    kernel returns both unchanged."""
    kernel = np.asarray(kernel, np.float64)
    u = np.asarray(vector_u, np.float64)
    if not np.any(kernel):
        return u, kernel

    def normalize(x):
        return x * min(1.0 / np.sqrt(np.sum(x * x)), 1.0 / epsilon)
    w = kernel.reshape(-1, kernel.shape[-1])
    for _ in range(power_iterations):
        v = normalize(u @ w.T)
        u = normalize(v @ w)
    sigma = float((v @ w @ u.T).item())
    return u, kernel / sigma
