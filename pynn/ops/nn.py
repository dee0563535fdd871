"""keras.ops' neural-network part: activations, softmax, convolution, pooling and
normalization, with their gradients.

These reuse the layers' backend ops (``activation_forward``/``activation_backward``,
``softmax_forward``, ``conv2d_*``, ``depthwise_conv2d_*``, ``maxpool2d_*``, ``avgpool2d_*``):
the same native and OpenCL kernels as the built-in layers, so they run on both backends.
Normalization is composed from the NumPy-like ops (its math is a few reductions).
"""

import math

import numpy as np

from pynn import backend
from pynn.backend import api
from pynn.ops import numpy_ops as npo
from pynn.ops._core import op, record, value


def _activation(name, keras_alpha=None):
    """keras.ops.<name> through the backend's fused activation kernels."""

    def fn(x, *args, **kwargs):
        alpha = api.DEFAULT_ALPHA.get(name, 0.0)
        if keras_alpha is not None:
            alpha = float(kwargs.pop(keras_alpha, args[0] if args else alpha))
        elif args or kwargs:
            raise TypeError(f"pynn.ops.{name}: unexpected arguments {args} {sorted(kwargs)}")
        be = backend.current()
        xv = value(x)
        y = be.activation_forward(xv, name, alpha)
        keep_x = xv if name in api.ACTIVATIONS_NEEDING_INPUT else None
        return record(y, (x,),
                      lambda dy, need: (be.activation_backward(dy, keep_x, y, name, alpha),),
                      name)

    fn.__name__ = name
    fn.__doc__ = f"keras.ops.{name} (the {name} kernels of the Activation layer)."
    return op(fn)


relu = _activation("relu")
relu6 = _activation("relu6")
sigmoid = _activation("sigmoid")
softplus = _activation("softplus")
softsign = _activation("softsign")
silu = _activation("silu")
swish = silu
hard_sigmoid = _activation("hard_sigmoid")
hard_silu = _activation("hard_silu")
hard_swish = hard_silu
mish = _activation("mish")
selu = _activation("selu")
elu = _activation("elu", "alpha")
leaky_relu = _activation("leaky_relu", "negative_slope")
# -- Keras 3's remaining activations (keras.ops' names and parameters)
celu = _activation("celu", "alpha")
hard_shrink = _activation("hard_shrink", "threshold")
hard_tanh = _activation("hard_tanh")
log_sigmoid = _activation("log_sigmoid")
soft_shrink = _activation("soft_shrink", "threshold")
sparse_plus = _activation("sparse_plus")
sparse_sigmoid = _activation("sparse_sigmoid")
squareplus = _activation("squareplus", "b")
tanh_shrink = _activation("tanh_shrink")


def _last_axis_activation(name):
    """keras.ops.<name>(x, axis=-1) on the backend's row kernels (the last axis only)."""

    def fn(x, axis=-1):
        xv = value(x)
        if isinstance(axis, bool) or not isinstance(axis, int) or axis % max(xv.ndim, 1) != (
                xv.ndim - 1):
            raise ValueError(f"pynn.ops.{name}: only the last axis is supported (axis -1), "
                             f"got axis {axis!r} for shape {tuple(xv.shape)}")
        be = backend.current()
        y = be.activation_forward(xv, name, 0.0)
        return record(y, (x,),
                      lambda dy, need: (be.activation_backward(dy, xv, None, name, 0.0),),
                      name)

    fn.__name__ = name
    fn.__doc__ = f"keras.ops.{name} along the last axis (the Activation layer's kernels)."
    return op(fn)


glu = _last_axis_activation("glu")
sparsemax = _last_axis_activation("sparsemax")


@op
def threshold(x, threshold, default_value):
    """keras.ops.threshold: x where x > threshold, else default_value (torch's threshold),
    its gradient dy where x > threshold. Keras gives neither parameter a default, so it is
    this op and not an activation name; composed of the comparison and where ops."""
    return npo.where(npo.greater(x, threshold), x, default_value)


@op
def gelu(x, approximate=True):
    """keras.ops.gelu; ``approximate=True`` (Keras's default) is the tanh form, False the
    erf form of the GELU layer's kernel."""
    if not approximate:
        return _activation_exact_gelu(x)
    c = math.sqrt(2.0 / math.pi)
    inner = npo.multiply(c, npo.add(x, npo.multiply(0.044715, npo.power(x, 3))))
    return npo.multiply(npo.multiply(0.5, x), npo.add(1.0, npo.tanh(inner)))


_activation_exact_gelu = _activation("gelu")


@op
def softmax(x, axis=-1):
    be = backend.current()
    xv = value(x)
    axis = int(axis) % xv.ndim
    y = be.softmax_forward(xv, axis)
    return record(y, (x,), lambda dy, need: (be.softmax_backward(dy, y, axis),), "softmax")


@op
def log_softmax(x, axis=-1):
    """x - logsumexp(x) along ``axis``; its gradient dy - softmax * sum(dy)."""
    if backend.current().NAME != "cpu":
        return npo.subtract(x, npo.logsumexp(x, axis=axis, keepdims=True))
    xv = np.asarray(value(x))
    shifted = xv - np.max(xv, axis=axis, keepdims=True)
    y = shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))

    def backward(dy, need):
        return ((dy - np.exp(y) * np.sum(dy, axis=axis, keepdims=True)).astype(xv.dtype),)

    return record(y, (x,), backward, "log_softmax")


def _pair(v, name):
    if isinstance(v, (int, np.integer)):
        return (int(v), int(v))
    v = tuple(int(i) for i in v)
    if len(v) != 2:
        raise ValueError(f"pynn.ops: {name} must be an int or 2 ints (2-D only), got {v}")
    return v


def _check_2d(name, xv, data_format):
    if data_format not in (None, "channels_last"):
        raise ValueError(f"pynn.ops.{name}: only data_format='channels_last' is supported, got "
                         f"{data_format!r}")
    if xv.ndim != 4:
        raise ValueError(f"pynn.ops.{name}: expected a 4-D input (N, H, W, C), got shape "
                         f"{tuple(xv.shape)} (only 2-D operations are supported)")


@op
def conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
    """keras.ops.conv, 2-D: inputs (N,H,W,C), kernel (KH,KW,C,F) -> (N,HO,WO,F)."""
    be = backend.current()
    xv, kv = value(inputs), value(kernel)
    _check_2d("conv", xv, data_format)
    strides, dilation = _pair(strides, "strides"), _pair(dilation_rate, "dilation_rate")
    padding = padding.lower()
    y, _ = be.conv2d_forward(xv, kv, None, strides, padding, dilation, "linear", 0.0)

    def backward(dy, need):
        dx = be.conv2d_backward_input(dy, kv, tuple(xv.shape), strides, padding, dilation) \
            if need[0] else None
        dk = be.conv2d_backward_weight(xv, dy, tuple(kv.shape), strides, padding, dilation) \
            if need[1] else None
        return dx, dk

    return record(y, (inputs, kernel), backward, "conv")


@op
def depthwise_conv(inputs, kernel, strides=1, padding="valid", data_format=None,
                   dilation_rate=1):
    """keras.ops.depthwise_conv, 2-D: kernel (KH,KW,C,M) -> (N,HO,WO,C*M)."""
    be = backend.current()
    xv, kv = value(inputs), value(kernel)
    _check_2d("depthwise_conv", xv, data_format)
    strides, dilation = _pair(strides, "strides"), _pair(dilation_rate, "dilation_rate")
    padding = padding.lower()
    y, _ = be.depthwise_conv2d_forward(xv, kv, None, strides, padding, dilation, "linear", 0.0)

    def backward(dy, need):
        dx = be.depthwise_conv2d_backward_input(dy, kv, tuple(xv.shape), strides, padding,
                                                dilation) if need[0] else None
        dk = be.depthwise_conv2d_backward_weight(xv, dy, tuple(kv.shape), strides, padding,
                                                 dilation) if need[1] else None
        return dx, dk

    return record(y, (inputs, kernel), backward, "depthwise_conv")


@op
def max_pool(inputs, pool_size, strides=None, padding="valid", data_format=None):
    be = backend.current()
    xv = value(inputs)
    _check_2d("max_pool", xv, data_format)
    pool = _pair(pool_size, "pool_size")
    strides = pool if strides is None else _pair(strides, "strides")
    y, argmax = be.maxpool2d_forward(xv, pool, strides, padding.lower())
    shape = tuple(xv.shape)
    return record(y, (inputs,), lambda dy, need: (be.maxpool2d_backward(dy, argmax, shape),),
                  "max_pool")


@op
def average_pool(inputs, pool_size, strides=None, padding="valid", data_format=None):
    be = backend.current()
    xv = value(inputs)
    _check_2d("average_pool", xv, data_format)
    pool = _pair(pool_size, "pool_size")
    strides = pool if strides is None else _pair(strides, "strides")
    padding = padding.lower()
    y = be.avgpool2d_forward(xv, pool, strides, padding)
    shape = tuple(xv.shape)
    return record(y, (inputs,), lambda dy, need: (
        be.avgpool2d_backward(dy, shape, pool, strides, padding),), "average_pool")


@op
def moments(x, axes, keepdims=False):
    """(mean, variance) over ``axes``, the variance biased (Keras's)."""
    m = npo.mean(x, axis=axes, keepdims=True)
    v = npo.mean(npo.square(npo.subtract(x, m)), axis=axes, keepdims=keepdims)
    return (m if keepdims else npo.squeeze(m, axis=tuple(axes) if not isinstance(
        axes, int) else axes)), v


@op
def batch_normalization(x, mean, variance, axis, offset=None, scale=None, epsilon=1e-3):
    """keras.ops.batch_normalization: (x - mean) / sqrt(variance + epsilon) * scale + offset,
    the statistics of shape (C,) broadcast along ``axis``."""
    xv = value(x)
    axis = int(axis) % xv.ndim
    shape = [1] * xv.ndim
    shape[axis] = xv.shape[axis]

    def bcast(t):
        return t if t is None else npo.reshape(t, shape)

    y = npo.multiply(npo.subtract(x, bcast(mean)),
                     npo.rsqrt(npo.add(bcast(variance), epsilon)))
    if scale is not None:
        y = npo.multiply(y, bcast(scale))
    if offset is not None:
        y = npo.add(y, bcast(offset))
    return y


@op
def normalize(x, axis=-1, order=2, epsilon=None):
    """keras.ops.normalize: x / max(||x||_order, epsilon) along ``axis``."""
    eps = 1e-12 if epsilon is None else epsilon
    if order != 2:
        raise ValueError(f"pynn.ops.normalize: only order=2 is supported, got {order}")
    norm = npo.sqrt(npo.sum(npo.square(x), axis=axis, keepdims=True))
    return npo.divide(x, npo.maximum(norm, eps))
