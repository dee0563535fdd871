"""Normalization layers (Keras 3's): BatchNormalization, LayerNormalization,
GroupNormalization, RMSNormalization, UnitNormalization, and ``fold_batch_norm`` for
inference plans.

The first three run on two backend op pairs: ``batch_norm_*`` and ``group_norm_*``; layer norm
is group norm with one group over the input reshaped to (rows, normalized features).
RMSNormalization and UnitNormalization run on ``rms_norm_*`` and ``unit_norm_*`` over the
input reshaped the same way (UnitNormalization moves other normalized axes to the end first,
with the transpose ops).
"""

import math
import sys
import operator

import numpy as np

from pynn import backend, constraints, initializers, regularizers
from pynn.backend.operands.shape import MAX_DIMS
from pynn.layers.base import Layer, shape_str


def _constraint(value):
    """A constraint as add_weight takes it (pynn.constraints: a name, a config, an instance)."""
    return constraints.get(value)


def _constraint_config(value):
    return constraints.serialize(constraints.get(value))


class _Normalization(Layer):
    """The shared part: epsilon, center/scale with their initializers, regularizers and
    constraints, and gamma/beta creation in Keras's order (gamma first)."""

    def __init__(self, epsilon=1e-3, center=True, scale=True, beta_initializer="zeros",
                 gamma_initializer="ones", beta_regularizer=None, gamma_regularizer=None,
                 beta_constraint=None, gamma_constraint=None, **kwargs):
        super().__init__(**kwargs)
        try:
            self.epsilon = float(epsilon)
        except (TypeError, ValueError):
            raise TypeError(f"{self._label()}: epsilon must be a number, got "
                            f"{epsilon!r}") from None
        if not (math.isfinite(self.epsilon) and self.epsilon >= 0):
            raise ValueError(f"{self._label()}: epsilon must be finite and >= 0, got "
                             f"{epsilon!r}")
        self.center = bool(center)
        self.scale = bool(scale)
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.beta_regularizer = regularizers.get(beta_regularizer)
        self.gamma_regularizer = regularizers.get(gamma_regularizer)
        self.beta_constraint = beta_constraint
        self.gamma_constraint = gamma_constraint
        self.gamma = None
        self.beta = None

    def _label(self):
        return f"{type(self).__name__} '{self.name}'"

    def _add_scale_offset(self, shape, with_beta=True):
        if self.scale:
            self.gamma = self.add_weight("gamma", shape, self.gamma_initializer,
                                         self.gamma_regularizer,
                                         constraint=_constraint(self.gamma_constraint))
        if self.center and with_beta:
            self.beta = self.add_weight("beta", shape, self.beta_initializer,
                                        self.beta_regularizer,
                                        constraint=_constraint(self.beta_constraint))

    def _value(self, var):
        return None if var is None else var.value

    def _set_grads(self, dgamma, dbeta, shape=None):
        b = backend.current()
        if self.gamma is not None:
            self.gamma.grad = dgamma if shape is None else b.reshape(dgamma, shape)
        if self.beta is not None:
            self.beta.grad = dbeta if shape is None else b.reshape(dbeta, shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            epsilon=self.epsilon, center=self.center, scale=self.scale,
            beta_initializer=initializers.serialize(self.beta_initializer),
            gamma_initializer=initializers.serialize(self.gamma_initializer),
            beta_regularizer=regularizers.serialize(self.beta_regularizer),
            gamma_regularizer=regularizers.serialize(self.gamma_regularizer),
            beta_constraint=_constraint_config(self.beta_constraint),
            gamma_constraint=_constraint_config(self.gamma_constraint),
        )
        return config


def _int_axis(label, axis):
    if isinstance(axis, bool):
        raise TypeError(f"{label}: axis must be an int, got {axis!r}")
    try:
        return operator.index(axis)
    except TypeError:
        raise TypeError(f"{label}: axis must be an int, got {axis!r}") from None


def _resolve_axis(label, axis, input_shape):
    ndim = len(input_shape)
    if not -ndim <= axis < ndim:
        raise ValueError(f"{label}: axis {axis} is out of range for input shape "
                         f"{shape_str(input_shape)} (rank {ndim}); expected an axis in "
                         f"[{-ndim}, {ndim})")
    a = axis % ndim
    if a == 0:
        raise ValueError(f"{label}: axis {axis} is the batch axis of input shape "
                         f"{shape_str(input_shape)}; normalize over a feature axis")
    if input_shape[a] is None:
        raise ValueError(f"{label}: axis {axis} of input shape {shape_str(input_shape)} must "
                         f"have a defined size")
    return a


class BatchNormalization(_Normalization):
    """Keras 3's BatchNormalization. Training (and trainable) normalizes with the batch's
    statistics over every axis but ``axis`` (biased variance) and moves the moving statistics
    towards them; otherwise, as Keras 3 does even in training when ``trainable`` is False,
    it normalizes with the moving statistics. Weights: gamma, beta, moving_mean,
    moving_variance (the last two never trainable).

    A mask (a sequence's, from Masking or Embedding(mask_zero=True)) passes on, and in
    training the statistics are Keras's masked moments: the mean and biased variance over
    the unmasked steps, each sum divided by their count + 1e-7."""

    supports_masking = True

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones",
                 moving_mean_initializer="zeros", moving_variance_initializer="ones",
                 beta_regularizer=None, gamma_regularizer=None, beta_constraint=None,
                 gamma_constraint=None, synchronized=False, **kwargs):
        super().__init__(epsilon=epsilon, center=center, scale=scale,
                         beta_initializer=beta_initializer, gamma_initializer=gamma_initializer,
                         beta_regularizer=beta_regularizer, gamma_regularizer=gamma_regularizer,
                         beta_constraint=beta_constraint, gamma_constraint=gamma_constraint,
                         **kwargs)
        self.axis = _int_axis(self._label(), axis)
        if not isinstance(synchronized, bool):
            raise TypeError(f"{self._label()}: synchronized must be a bool, got "
                            f"{synchronized!r}")
        self.synchronized = synchronized
        try:
            self.momentum = float(momentum)
        except (TypeError, ValueError):
            raise TypeError(f"{self._label()}: momentum must be a number, got "
                            f"{momentum!r}") from None
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"{self._label()}: momentum must be in [0, 1], got {momentum!r}")
        self.moving_mean_initializer = initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = initializers.get(moving_variance_initializer)

    def build(self, input_shape):
        self._axis = _resolve_axis(self._label(), self.axis, input_shape)
        shape = (input_shape[self._axis],)
        self._add_scale_offset(shape)
        self.moving_mean = self.add_weight("moving_mean", shape, self.moving_mean_initializer,
                                           trainable=False)
        self.moving_variance = self.add_weight("moving_variance", shape,
                                               self.moving_variance_initializer,
                                               trainable=False)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        _resolve_axis(self._label(), self.axis, input_shape)
        return tuple(input_shape)

    def call(self, x, training=False, mask=None):
        return self.call_activated(x, training, mask=mask)

    def call_activated(self, x, training=False, activation="linear", alpha=0.0, mask=None):
        """call, then ``activation`` on the normalized values in the same pass (a model's
        plan fuses an Activation that alone reads this layer's output; see
        pynn.layers.functional.Plan); backward takes dy through it the same way."""
        if x.dtype != self.dtype:
            # Keras casts the input to the layer's dtype; here it must, as the moving
            # statistics are updated in the kernel's (x's) dtype.
            x = backend.current().asarray(x, self.dtype)
        batch_stats = bool(training) and self.trainable
        world = self._sync_world() if batch_stats else None
        masked = None
        if world is not None:
            if activation != "linear":
                raise ValueError(f"{self._label()}: a synchronized batch norm takes no fused "
                                 "activation")
            if mask is not None:
                raise ValueError(f"{self._label()}: a synchronized batch norm takes no mask")
            y, mean, inv_std, sync = self._synchronized_forward(world, x)
        elif batch_stats and mask is not None:
            sync = None
            y, mean, inv_std, masked = self._masked_forward(x, mask, activation, alpha)
            batch_stats = False  # normalized by the inference form: backward corrects dx
        else:
            sync = None
            y, mean, inv_std = backend.current().batch_norm_forward(
                x, self._value(self.gamma), self._value(self.beta), self.moving_mean.value,
                self.moving_variance.value, self._axis, self.momentum, self.epsilon,
                batch_stats, activation, alpha)
        if training:
            self._cache = (x, mean, inv_std, batch_stats, sync, activation, alpha, masked)
        return y

    # -- masked: Keras's moments over the unmasked steps (keras BatchNormalization._moments) --
    def _masked_forward(self, x, mask, activation, alpha):
        """Per channel: count n of unmasked steps, mean = sum(w x) / (n + 1e-7), variance =
        sum(w (x - mean)^2) / (n + 1e-7), w the mask; x then normalized with them by the
        inference form of the kernel, and the moving statistics moved towards them. On the
        backend's own ops (merge multiply and subtract, column sums), so both backends."""
        b = backend.current()
        keep = np.asarray(b.to_numpy(mask) if not isinstance(mask, np.ndarray) else mask)
        if self._axis != x.ndim - 1 or keep.shape != tuple(x.shape[:-1]):
            raise ValueError(f"{self._label()}: a mask must cover every axis of the input but "
                             f"the normalized last one: input {tuple(x.shape)}, axis "
                             f"{self.axis}, mask {keep.shape}")
        dtype, channels = x.dtype, x.shape[-1]
        weight = b.asarray(keep.astype(dtype)[..., None], dtype)
        denominator = float(np.count_nonzero(keep)) + 1e-7

        def channel_sums(v):
            return np.asarray(b.to_numpy(b.bias_backward(b.reshape(v, (-1, channels)))),
                              np.float64)

        mean = channel_sums(b.merge_forward([x, weight], "multiply")) / denominator
        # (N, 1, .., 1, C): a merge broadcasts over every axis but the batch's, and expands a
        # lower-rank input at its end (Keras's rule), so the mean goes in at full rank
        row = b.asarray(np.ascontiguousarray(np.broadcast_to(
            mean.astype(dtype), (x.shape[0],) + (1,) * (x.ndim - 2) + (channels,))), dtype)
        centered = b.merge_forward([x, row], "subtract")
        kept = b.merge_forward([centered, weight], "multiply")
        var = channel_sums(b.merge_forward([kept, centered], "multiply")) / denominator
        y, mean_d, inv_d = b.batch_norm_forward(
            x, self._value(self.gamma), self._value(self.beta), b.asarray(mean, dtype),
            b.asarray(var, dtype), self._axis, self.momentum, self.epsilon, False, activation,
            alpha)
        self._move_statistics(mean, var)
        return y, mean_d, inv_d, (weight, denominator, mean, 1.0 / np.sqrt(var + self.epsilon))

    def _move_statistics(self, mean, var):
        """The moving statistics one momentum step towards a batch's (host float64 arrays):
        the masked and the synchronized moments, which the kernel does not see."""
        b = backend.current()
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, var)):
            old = np.asarray(b.to_numpy(moving.value), np.float64)
            b.add_inplace(moving.value, b.asarray((batch - old) * (1.0 - self.momentum),
                                                  moving.value.dtype))

    def _masked_correction(self, dx, x, dgamma, dbeta, masked):
        """dx from the inference form's backward (gamma inv dy) plus what reaches an unmasked
        x through the masked mean and variance: dx -= w (slope x + offset) per channel, with
        slope = gamma inv^2 sum(dz xhat) / (n + 1e-7), offset = gamma inv sum(dz) / (n + 1e-7)
        - slope mean (the 1e-7 in the variance's own mean term, 1e-7 of it, left out)."""
        weight, denominator, mean, inv = masked
        b = backend.current()
        gamma = (np.ones(mean.size) if self.gamma is None
                 else np.asarray(b.to_numpy(self.gamma.value), np.float64))
        s1 = np.asarray(b.to_numpy(dbeta), np.float64)
        s2 = np.asarray(b.to_numpy(dgamma), np.float64)
        slope = -gamma * inv * inv * s2 / denominator
        offset = -gamma * inv * s1 / denominator - slope * mean
        dtype, channels = x.dtype, mean.size
        correction, _, _ = b.batch_norm_forward(
            x, b.asarray(slope, dtype), b.asarray(offset, dtype), b.zeros((channels,), dtype),
            b.asarray(np.full(channels, 1.0 - self.epsilon), dtype), self._axis, self.momentum,
            self.epsilon, False)
        b.add_inplace(dx, b.merge_forward([correction, weight], "multiply"))
        return dx

    # -- synchronized: the statistics of the global batch over every data-parallel rank --------
    def _sync_world(self):
        """pynn.distributed when this layer synchronizes and more than one rank trains (found
        through sys.modules: a model never imports MPI itself)."""
        if not self.synchronized:
            return None
        world = sys.modules.get("pynn.distributed")
        return world if world is not None and world.size() > 1 else None

    def _synchronized_forward(self, world, x):
        """Each rank's per-channel count, sum and sum of squares, reduced, give the global
        batch's mean and biased variance; x is then normalized with them by the inference
        form of the same kernel. One allreduce of 2C + 1 numbers."""
        b = backend.current()
        gamma, beta = self._value(self.gamma), self._value(self.beta)
        # The local statistics, without moving the moving ones (scratch copies take it).
        _, local_mean, local_inv = b.batch_norm_forward(
            x, gamma, beta, b.copy(self.moving_mean.value), b.copy(self.moving_variance.value),
            self._axis, self.momentum, self.epsilon, True)
        channels = x.shape[self._axis]
        count = float(np.prod(x.shape)) / channels if channels else 0.0
        mean = np.asarray(b.to_numpy(local_mean), np.float64)
        inv = np.asarray(b.to_numpy(local_inv), np.float64)
        var = 1.0 / (inv * inv) - self.epsilon if count else np.zeros_like(mean)
        total = world.allreduce_sum(np.concatenate([count * mean, count * (var + mean * mean),
                                                    [count]]))
        n = total[-1]
        if n == 0:
            raise ValueError(f"{self._label()}: every rank's batch is empty")
        mean = total[:channels] / n
        var = np.maximum(total[channels:2 * channels] / n - mean * mean, 0.0)
        dtype = x.dtype
        y, mean_d, inv_d = b.batch_norm_forward(x, gamma, beta, b.asarray(mean, dtype),
                                                b.asarray(var, dtype), self._axis,
                                                self.momentum, self.epsilon, False)
        self._move_statistics(mean, var)
        return y, mean_d, inv_d, (world, count, n, mean, 1.0 / np.sqrt(var + self.epsilon))

    def _synchronized_backward(self, dy, x, mean_d, inv_d, sync):
        """The local backward sums (dbeta = sum dy, dgamma = sum dy * xhat) weighted as the
        data-parallel loss weights this rank (count / n), reduced; dx then gets the per-channel
        affine correction from the local sums to the global ones, applied by the inference form
        of the forward kernel (gamma' x + beta')."""
        world, count, n, mean, inv = sync
        b = backend.current()
        gamma = self._value(self.gamma)
        dx, dgamma, dbeta = b.batch_norm_backward(dy, x, gamma, mean_d, inv_d, self._axis,
                                                  True, self.needs_input_grad)
        s1 = np.asarray(b.to_numpy(dbeta), np.float64)
        s2 = np.asarray(b.to_numpy(dgamma), np.float64)
        total = world.allreduce_sum(np.concatenate([s1, s2]) * (count / n))
        if dx is not None and count:
            channels = s1.size
            g = (np.ones(channels) if gamma is None
                 else np.asarray(b.to_numpy(gamma), np.float64))
            slope = g * inv * inv * (s2 - total[channels:]) / count
            offset = g * inv * (s1 - total[:channels]) / count - slope * mean
            dtype = x.dtype
            correction, _, _ = b.batch_norm_forward(
                x, b.asarray(slope, dtype), b.asarray(offset, dtype),
                b.zeros((channels,), dtype), b.asarray(np.full(channels, 1.0 - self.epsilon),
                                                       dtype),
                self._axis, self.momentum, self.epsilon, False)
            b.add_inplace(dx, correction)
        return dx, dgamma, dbeta

    def backward(self, dy):
        if self._cache is None:
            raise RuntimeError(f"{self._label()}: backward() needs a preceding "
                               f"call(x, training=True)")
        (x, mean, inv_std, batch_stats, sync, activation, alpha, masked), self._cache = \
            self._cache, None
        if sync is not None:
            dx, dgamma, dbeta = self._synchronized_backward(dy, x, mean, inv_std, sync)
        else:
            dx, dgamma, dbeta = backend.current().batch_norm_backward(
                dy, x, self._value(self.gamma), mean, inv_std, self._axis, batch_stats,
                self.needs_input_grad, self._value(self.beta), activation, alpha)
            if masked is not None and dx is not None:
                dx = self._masked_correction(dx, x, dgamma, dbeta, masked)
        self._set_grads(dgamma, dbeta)
        return dx

    def get_config(self):
        config = super().get_config()
        config.update(
            axis=self.axis, momentum=self.momentum, synchronized=self.synchronized,
            moving_mean_initializer=initializers.serialize(self.moving_mean_initializer),
            moving_variance_initializer=initializers.serialize(
                self.moving_variance_initializer),
        )
        return config


def _axis_arg(label, axis):
    """An int, or a non-empty list of ints (a tuple becomes a list, as Keras keeps it)."""
    if isinstance(axis, (list, tuple)):
        if not axis:
            raise ValueError(f"{label}: axis must name at least one axis, got {axis!r}")
        return [_int_axis(label, a) for a in axis]
    return _int_axis(label, axis)


def _resolve_axes(label, axis, input_shape):
    """The sorted, distinct non-batch axes that ``axis`` (an int or a list) names."""
    axes = axis if isinstance(axis, list) else [axis]
    return sorted({_resolve_axis(label, a, input_shape) for a in axes})


def _trailing_axes(label, axis, input_shape):
    """``axis`` resolved; they must be the input's trailing axes."""
    resolved = _resolve_axes(label, axis, input_shape)
    ndim = len(input_shape)
    if resolved != list(range(ndim - len(resolved), ndim)):
        raise ValueError(f"{label}: axis {axis!r} must be the trailing axes of input "
                         f"shape {shape_str(input_shape)} (pynn normalizes a contiguous "
                         f"tail, e.g. axis=-1 or axis=[-2, -1])")
    return resolved


class LayerNormalization(_Normalization):
    """Keras 3's LayerNormalization over ``axis``: an int or a list of axes, which must be
    the trailing axes of the input (pynn normalizes a contiguous tail). gamma/beta have the
    normalized axes' shape. ``rms_scaling`` (deprecated in Keras) scales by the inverse
    standard deviation without centering, and has no beta."""

    supports_masking = True  # the input's mask passes on, as in Keras 3

    def __init__(self, axis=-1, epsilon=1e-3, center=True, scale=True, rms_scaling=False,
                 beta_initializer="zeros", gamma_initializer="ones", beta_regularizer=None,
                 gamma_regularizer=None, beta_constraint=None, gamma_constraint=None,
                 **kwargs):
        super().__init__(epsilon=epsilon, center=center, scale=scale,
                         beta_initializer=beta_initializer, gamma_initializer=gamma_initializer,
                         beta_regularizer=beta_regularizer, gamma_regularizer=gamma_regularizer,
                         beta_constraint=beta_constraint, gamma_constraint=gamma_constraint,
                         **kwargs)
        self.axis = _axis_arg(self._label(), axis)
        self.rms_scaling = bool(rms_scaling)

    def _axes(self, input_shape):
        return _trailing_axes(self._label(), self.axis, input_shape)

    def build(self, input_shape):
        axes = self._axes(input_shape)
        self._shape = tuple(input_shape[a] for a in axes)
        self._features = math.prod(self._shape)
        if self.rms_scaling:
            # Keras: a gamma even when scale=False, never a beta.
            scale, self.scale = self.scale, True
            self._add_scale_offset(self._shape, with_beta=False)
            self.scale = scale
        else:
            self._add_scale_offset(self._shape)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        self._axes(input_shape)
        return tuple(input_shape)

    def _flat(self, var):
        return None if var is None else backend.current().reshape(var.value, (self._features,))

    def call(self, x, training=False):
        b = backend.current()
        x2 = b.reshape(x, (-1, self._features))
        y, mean, inv_std = b.group_norm_forward(x2, self._flat(self.gamma), self._flat(self.beta),
                                                1, self.epsilon, self.rms_scaling)
        if training:
            self._cache = (x2, mean, inv_std)
        return b.reshape(y, tuple(x.shape))

    def backward(self, dy):
        if self._cache is None:
            raise RuntimeError(f"{self._label()}: backward() needs a preceding "
                               f"call(x, training=True)")
        (x2, mean, inv_std), self._cache = self._cache, None
        b = backend.current()
        shape = tuple(dy.shape)
        dx, dgamma, dbeta = b.group_norm_backward(
            b.reshape(dy, tuple(x2.shape)), x2, self._flat(self.gamma), mean, inv_std, 1,
            self.rms_scaling, self.needs_input_grad)
        self._set_grads(dgamma, dbeta, self._shape)
        return None if dx is None else b.reshape(dx, shape)

    def get_config(self):
        config = super().get_config()
        config.update(axis=self.axis, rms_scaling=self.rms_scaling)
        return config


class GroupNormalization(_Normalization):
    """Keras 3's GroupNormalization: the channels of the last axis split into ``groups``
    consecutive groups (-1: one per channel), each normalized per sample over its channels
    and every other non-batch axis. pynn supports the channels_last axis (-1) only."""

    supports_masking = True  # the input's mask passes on, as in Keras 3

    def __init__(self, groups=32, axis=-1, epsilon=1e-3, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones", beta_regularizer=None,
                 gamma_regularizer=None, beta_constraint=None, gamma_constraint=None,
                 **kwargs):
        super().__init__(epsilon=epsilon, center=center, scale=scale,
                         beta_initializer=beta_initializer, gamma_initializer=gamma_initializer,
                         beta_regularizer=beta_regularizer, gamma_regularizer=gamma_regularizer,
                         beta_constraint=beta_constraint, gamma_constraint=gamma_constraint,
                         **kwargs)
        label = self._label()
        if (isinstance(groups, bool) or not isinstance(groups, (int, np.integer))
                or not (groups == -1 or groups >= 1)):
            raise ValueError(f"{label}: groups must be a positive int or -1, got {groups!r}")
        self.groups = int(groups)
        self.axis = _int_axis(label, axis)

    def _channels(self, input_shape):
        label = self._label()
        a = _resolve_axis(label, self.axis, input_shape)
        if a != len(input_shape) - 1:
            raise ValueError(f"{label}: only the channels_last axis (-1) is supported, got "
                             f"axis={self.axis} for input shape {shape_str(input_shape)}")
        c = input_shape[a]
        groups = c if self.groups == -1 else self.groups
        if groups > c or c % groups:
            raise ValueError(f"{label}: groups={groups} must divide the {c} channels of input "
                             f"shape {shape_str(input_shape)}")
        return c, groups

    def build(self, input_shape):
        c, self._groups = self._channels(input_shape)
        self._add_scale_offset((c,))
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        self._channels(input_shape)
        return tuple(input_shape)

    def call(self, x, training=False):
        y, mean, inv_std = backend.current().group_norm_forward(
            x, self._value(self.gamma), self._value(self.beta), self._groups, self.epsilon,
            False)
        if training:
            self._cache = (x, mean, inv_std)
        return y

    def backward(self, dy):
        if self._cache is None:
            raise RuntimeError(f"{self._label()}: backward() needs a preceding "
                               f"call(x, training=True)")
        (x, mean, inv_std), self._cache = self._cache, None
        dx, dgamma, dbeta = backend.current().group_norm_backward(
            dy, x, self._value(self.gamma), mean, inv_std, self._groups, False,
            self.needs_input_grad)
        self._set_grads(dgamma, dbeta)
        return dx

    def get_config(self):
        config = super().get_config()
        config.update(groups=self.groups, axis=self.axis)
        return config


class RMSNormalization(Layer):
    """Keras 3's RMSNormalization: y = x * rsqrt(mean(x^2) + epsilon) * scale over ``axis``
    (an int or a list: the input's trailing axes, which Keras's torch path also needs), no
    centering. One weight, ``scale``, shaped as the normalized axes and initialized to ones.
    Keras drops an input's mask here (supports_masking False), and so does pynn."""

    def __init__(self, axis=-1, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        label = self._label()
        self.axis = _axis_arg(label, axis)
        if isinstance(epsilon, bool):
            raise TypeError(f"{label}: epsilon must be a number, got {epsilon!r}")
        try:
            self.epsilon = float(epsilon)
        except (TypeError, ValueError):
            raise TypeError(f"{label}: epsilon must be a number, got {epsilon!r}") from None
        if not (math.isfinite(self.epsilon) and self.epsilon >= 0):
            raise ValueError(f"{label}: epsilon must be finite and >= 0, got {epsilon!r}")
        self.scale = None

    def _label(self):
        return f"{type(self).__name__} '{self.name}'"

    def build(self, input_shape):
        axes = _trailing_axes(self._label(), self.axis, input_shape)
        self._shape = tuple(input_shape[a] for a in axes)
        self._features = math.prod(self._shape)
        self.scale = self.add_weight("scale", self._shape, "ones")
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        _trailing_axes(self._label(), self.axis, input_shape)
        return tuple(input_shape)

    def _flat_scale(self):
        return backend.current().reshape(self.scale.value, (self._features,))

    def call(self, x, training=False):
        b = backend.current()
        x2 = b.reshape(x, (-1, self._features))
        y, inv_rms = b.rms_norm_forward(x2, self._flat_scale(), self.epsilon)
        if training:
            self._cache = (x2, inv_rms)
        return b.reshape(y, tuple(x.shape))

    def backward(self, dy):
        if self._cache is None:
            raise RuntimeError(f"{self._label()}: backward() needs a preceding "
                               f"call(x, training=True)")
        (x2, inv_rms), self._cache = self._cache, None
        b = backend.current()
        dx, dscale = b.rms_norm_backward(b.reshape(dy, tuple(x2.shape)), x2, self._flat_scale(),
                                         inv_rms, self.needs_input_grad)
        self.scale.grad = b.reshape(dscale, self._shape)
        return None if dx is None else b.reshape(dx, tuple(dy.shape))

    def get_config(self):
        config = super().get_config()
        config.update(axis=self.axis, epsilon=self.epsilon)
        return config


class UnitNormalization(Layer):
    """Keras 3's UnitNormalization: each sample scaled to unit L2 norm over ``axis`` (an int
    or a list of non-batch axes), Keras's ops.normalize(x, order=2, epsilon=1e-12):
    y = x * min(rsqrt(sum(x^2)), 1e12). No weights; the input's mask passes on. Axes that are
    not the trailing ones are moved to the end and back with the transpose ops (inputs of at
    most 6 axes then)."""

    supports_masking = True  # the input's mask passes on, as in Keras 3
    EPSILON = 1e-12  # Keras's, fixed in its call

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        self.axis = _axis_arg(self._label(), axis)

    def _label(self):
        return f"{type(self).__name__} '{self.name}'"

    def _layout(self, input_shape):
        """(perm or None, features): perm moves the normalized axes to the end, in order."""
        axes = _resolve_axes(self._label(), self.axis, input_shape)
        ndim = len(input_shape)
        features = math.prod(input_shape[a] for a in axes)
        if axes == list(range(ndim - len(axes), ndim)):
            return None, features
        if ndim > MAX_DIMS:
            raise ValueError(f"{self._label()}: axis {self.axis!r} are not the trailing axes "
                             f"of input shape {shape_str(input_shape)}, and pynn moves them "
                             f"there only for inputs of at most {MAX_DIMS} axes")
        perm = tuple(a for a in range(ndim) if a not in axes) + tuple(axes)
        return perm, features

    def build(self, input_shape):
        self._perm, self._features = self._layout(input_shape)
        self._axes = _resolve_axes(self._label(), self.axis, input_shape)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        self._layout(input_shape)
        return tuple(input_shape)

    def call(self, x, training=False):
        b = backend.current()
        xt = x if self._perm is None else b.transpose_forward(x, self._perm)
        x2 = b.reshape(xt, (-1, self._features))
        y, inv_norm = b.unit_norm_forward(x2, self.EPSILON)
        if training:
            self._cache = (x2, inv_norm, tuple(xt.shape))
        y = b.reshape(y, tuple(xt.shape))
        return y if self._perm is None else b.transpose_backward(y, self._perm)

    def backward(self, dy):
        if self._cache is None:
            raise RuntimeError(f"{self._label()}: backward() needs a preceding "
                               f"call(x, training=True)")
        (x2, inv_norm, moved_shape), self._cache = self._cache, None
        if not self.needs_input_grad:
            return None
        b = backend.current()
        dyt = dy if self._perm is None else b.transpose_forward(dy, self._perm)
        dx = b.unit_norm_backward(b.reshape(dyt, tuple(x2.shape)), x2, inv_norm, self.EPSILON)
        dx = b.reshape(dx, moved_shape)
        return dx if self._perm is None else b.transpose_backward(dx, self._perm)

    def get_config(self):
        config = super().get_config()
        config.update(axis=self.axis)
        return config


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def fold_batch_norm(kernel, bias, gamma, beta, moving_mean, moving_variance, epsilon=1e-3):
    """(kernel, bias) of a Dense (in, units) or Conv2D (kh, kw, c, f) layer followed by an
    inference-mode BatchNormalization on its last axis, folded into one layer, as NumPy
    arrays of the kernel's dtype: scale = gamma / sqrt(moving_variance + epsilon),
    kernel * scale, (bias - moving_mean) * scale + beta. bias, gamma, beta may be None (no
    bias, scale=False, center=False). Device arrays (a Variable's value on OpenCL) are
    downloaded."""
    kernel = _host(kernel)
    dtype = kernel.dtype if kernel.dtype.kind == "f" else np.dtype(np.float32)
    units = kernel.shape[-1]

    def vector(name, v, fill):
        v = np.full(units, fill, dtype=np.float64) if v is None else _host(v).astype(np.float64)
        if v.shape != (units,):
            raise ValueError(f"fold_batch_norm: '{name}' must have shape ({units},) to match "
                             f"the kernel's last axis (kernel shape {kernel.shape}), got "
                             f"{v.shape}")
        return v

    scale = vector("gamma", gamma, 1.0) / np.sqrt(
        vector("moving_variance", moving_variance, 1.0) + float(epsilon))
    folded_bias = ((vector("bias", bias, 0.0) - vector("moving_mean", moving_mean, 0.0)) * scale
                   + vector("beta", beta, 0.0))
    folded_kernel = kernel.astype(np.float64) * scale
    return folded_kernel.astype(dtype), folded_bias.astype(dtype)
