"""Magnitude pruning (issue 18): TF-MOT's ``PruneLowMagnitude`` wrapper and its schedules.

The wrapper computes the layer's outputs and gradients with the inner layer's own ops; what it
adds is a uint8 ``mask`` on each prunable Variable (``PRUNABLE``). The optimizer passes that
mask into its fused update (``native/optim.pyx``), which stores exact zeros for pruned weights
and their slots in the same pass: there is no masking pass in forward, backward or after the
step. Masks change only when the schedule says so (``UpdatePruningStep`` asks at each batch):
then the smallest-magnitude weights (or blocks of weights) are zeroed once on the host.

The user-facing functions (``prune_low_magnitude``, ``strip_pruning``, ``sparsity``) live in
``pynn.compression.pruning``; this module holds what a saved model names (LAYERS).
"""

import math
import sys

import numpy as np

from pynn import backend
from pynn.layers.base import Layer, takes_mask
from pynn.variables import bump_version

# The weights magnitude pruning may zero, by Variable name: Dense/Conv kernels, the recurrent
# layers' input and recurrent kernels, Embedding's table. Biases and normalization
# statistics are never pruned (TF-MOT's choice too: they are few and not redundant).
PRUNABLE = ("kernel", "recurrent_kernel", "embeddings", "depthwise_kernel",
            "pointwise_kernel")


def prunable_weights(layer):
    """The Variables of ``layer`` that magnitude pruning may zero."""
    return [v for v in layer.weights if v.name in PRUNABLE]


# -- schedules (TF-MOT's semantics) -------------------------------------------------------
class PruningSchedule:
    """``schedule(step) -> (should_prune, sparsity)``: whether masks are recomputed at this
    training step (0-based optimizer iterations), and to what fraction of zeros."""

    def __init__(self, begin_step=0, end_step=-1, frequency=100):
        for name, value in (("begin_step", begin_step), ("end_step", end_step),
                            ("frequency", frequency)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(  # noqa: TRY004 -- TF-MOT raises ValueError
                    f"{type(self).__name__}: `{name}` must be an int, got "
                                 f"{value!r}")
        if begin_step < 0:
            raise ValueError(f"{type(self).__name__}: `begin_step` must be >= 0, got "
                             f"{begin_step}")
        if end_step != -1 and end_step < begin_step:
            raise ValueError(f"{type(self).__name__}: `end_step` must be -1 or >= begin_step "
                             f"{begin_step}, got {end_step}")
        if frequency < 1:
            raise ValueError(f"{type(self).__name__}: `frequency` must be >= 1, got "
                             f"{frequency}")
        self.begin_step, self.end_step, self.frequency = int(begin_step), int(end_step), \
            int(frequency)

    @staticmethod
    def _sparsity_arg(cls_name, name, value):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or \
                not 0.0 <= float(value) < 1.0:
            raise ValueError(f"{cls_name}: `{name}` must be a float in [0, 1), got {value!r}")
        return float(value)

    def should_prune(self, step):
        """TF-MOT's _should_prune_in_step: inside [begin_step, end_step] (end_step -1: no
        end) and on a multiple of frequency from begin_step."""
        in_range = step >= self.begin_step and (self.end_step == -1 or step <= self.end_step)
        return in_range and (step - self.begin_step) % self.frequency == 0

    def __call__(self, step):
        return self.should_prune(int(step)), self.sparsity_at(int(step))

    def get_config(self):
        return {"begin_step": self.begin_step, "end_step": self.end_step,
                "frequency": self.frequency}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class ConstantSparsity(PruningSchedule):
    """Prune to ``target_sparsity`` at begin_step and every ``frequency`` steps after."""

    def __init__(self, target_sparsity, begin_step, end_step=-1, frequency=100):
        super().__init__(begin_step, end_step, frequency)
        self.target_sparsity = self._sparsity_arg("ConstantSparsity", "target_sparsity",
                                                  target_sparsity)

    def sparsity_at(self, step):
        return self.target_sparsity

    def get_config(self):
        return {"target_sparsity": self.target_sparsity, **super().get_config()}


class PolynomialDecay(PruningSchedule):
    """Sparsity rising from ``initial_sparsity`` at begin_step to ``final_sparsity`` at
    end_step: final + (initial - final) * (1 - p)^power, p the clipped progress (TF-MOT)."""

    def __init__(self, initial_sparsity, final_sparsity, begin_step, end_step, power=3,
                 frequency=100):
        super().__init__(begin_step, end_step, frequency)
        if end_step == -1:
            raise ValueError("PolynomialDecay: `end_step` must be set (>= begin_step), got -1")
        self.initial_sparsity = self._sparsity_arg("PolynomialDecay", "initial_sparsity",
                                                   initial_sparsity)
        self.final_sparsity = self._sparsity_arg("PolynomialDecay", "final_sparsity",
                                                 final_sparsity)
        if isinstance(power, bool) or not isinstance(power, (int, float)) or power <= 0:
            raise ValueError(f"PolynomialDecay: `power` must be a positive number, got {power!r}")
        self.power = power

    def sparsity_at(self, step):
        span = max(self.end_step - self.begin_step, 1)
        progress = min(1.0, max(0.0, (step - self.begin_step) / span))
        return (self.final_sparsity + (self.initial_sparsity - self.final_sparsity)
                * (1.0 - progress) ** self.power)

    def get_config(self):
        return {"initial_sparsity": self.initial_sparsity,
                "final_sparsity": self.final_sparsity, "power": self.power,
                **super().get_config()}


SCHEDULES = {cls.__name__: cls for cls in (ConstantSparsity, PolynomialDecay)}


def serialize_schedule(schedule):
    return {"class_name": type(schedule).__name__, "config": schedule.get_config()}


def deserialize_schedule(spec):
    if isinstance(spec, PruningSchedule):
        return spec
    if not isinstance(spec, dict) or spec.get("class_name") not in SCHEDULES:
        raise ValueError(f"pruning_schedule must be one of {sorted(SCHEDULES)} (or its "
                         f"serialized dict), got {spec!r}")
    return SCHEDULES[spec["class_name"]].from_config(dict(spec.get("config", {})))


# -- masks ---------------------------------------------------------------------------------
def magnitude_mask(weights, sparsity, block_size=(1, 1)):
    """uint8 mask of ``weights`` keeping all but the ``round(sparsity * count)``
    smallest-magnitude entries (ties: lower flat index pruned first). With a block size
    other than (1, 1) the weights are viewed as 2-D (every axis but the last, the last) and
    scored by the mean magnitude of each (bh, bw) block, as TF-MOT pools them; whole blocks
    are kept or pruned. Host NumPy: it runs once per schedule update, not per step."""
    w = np.abs(np.asarray(weights, np.float64))
    bh, bw = block_size
    if (bh, bw) != (1, 1):
        w2 = w.reshape(-1, w.shape[-1]) if w.ndim > 1 else w.reshape(1, -1)
        rows, cols = w2.shape
        ph, pw = -rows % bh, -cols % bw
        padded = np.pad(w2, ((0, ph), (0, pw)))
        counts = np.pad(np.ones_like(w2), ((0, ph), (0, pw)))
        shape4 = (padded.shape[0] // bh, bh, padded.shape[1] // bw, bw)
        scores = padded.reshape(shape4).sum(axis=(1, 3)) / counts.reshape(shape4).sum(
            axis=(1, 3))
        block_mask = magnitude_mask(scores, sparsity)
        full = np.repeat(np.repeat(block_mask, bh, axis=0), bw, axis=1)
        return np.ascontiguousarray(full[:rows, :cols]).reshape(w.shape)
    flat = w.reshape(-1)
    prune = round(sparsity * flat.size)
    mask = np.ones(flat.size, np.uint8)
    if prune:
        mask[np.argsort(flat, kind="stable")[:prune]] = 0
    return mask.reshape(w.shape)


class PruneLowMagnitude(Layer):
    """TF-MOT's wrapper: ``layer`` computes as before; its prunable weights carry masks that
    the schedule updates and the optimizer honours. Its weights are the inner layer's, in the
    inner layer's order (so ``get_weights`` of a pruned model is the plain model's)."""

    def __init__(self, layer, pruning_schedule=None, block_size=(1, 1), **kwargs):
        if not isinstance(layer, Layer):
            raise ValueError(  # noqa: TRY004 -- TF-MOT raises ValueError here
                f"PruneLowMagnitude: layer must be a pynn Layer instance, got {layer!r}")
        kwargs.setdefault("name", layer.name)
        super().__init__(**kwargs)
        self.layer = layer
        self.pruning_schedule = deserialize_schedule(
            pruning_schedule if pruning_schedule is not None else ConstantSparsity(0.5, 0))
        if (not isinstance(block_size, (tuple, list)) or len(block_size) != 2
                or any(isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1
                       for b in block_size)):
            raise ValueError(f"PruneLowMagnitude '{self.name}': block_size must be two ints "
                             f">= 1, got {block_size!r}")
        self.block_size = (int(block_size[0]), int(block_size[1]))
        self.pruning_step = -1
        if layer.built:
            self._adopt_weights()

    def _adopt_weights(self):
        self._variables = self.layer._variables
        if not prunable_weights(self.layer):
            raise ValueError(f"PruneLowMagnitude '{self.name}': {type(self.layer).__name__} "
                             f"has no weight magnitude pruning applies to (one of {PRUNABLE})")

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        self._adopt_weights()
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    # Masks are the inner layer's business, as its weights are: an Embedding(mask_zero=True)
    # still makes one, a recurrent layer still skips masked steps (the wrapper dropped both,
    # so a pruned text model trained on its padding and its stripped twin did not).
    @property
    def mask_delegate(self):
        """The layer whose mask rules are this one's (pynn.layers.base.takes_mask)."""
        return self.layer

    @property
    def supports_masking(self):
        return self.layer.supports_masking

    def compute_mask(self, inputs, mask=None):
        return self.layer.compute_mask(inputs, mask)

    def call(self, x, training=False, mask=None):
        if mask is not None and takes_mask(self.layer):
            y = self.layer.call(x, training=training, mask=mask)
        else:
            y = self.layer.call(x, training=training)
        if training:
            # The executor saves this layer's _cache only: the inner layer's rides in it.
            self._cache, self.layer._cache = self.layer._cache, None
        return y

    def backward(self, dy):
        self.layer._cache, self._cache = self._cache, None
        self.layer.needs_input_grad = self.needs_input_grad
        dx = self.layer.backward(dy)
        self.layer._cache = None
        return dx

    # -- masks -----------------------------------------------------------------------------
    def update_pruning_step(self, step):
        """Called by UpdatePruningStep before each training batch with the optimizer's
        iterations: recompute the masks when the schedule says so. Returns whether it did."""
        self.pruning_step = int(step)
        should, target = self.pruning_schedule(self.pruning_step)
        if should:
            self.prune_to(target)
        return should

    def prune_to(self, target_sparsity):
        """Zero the smallest weights of every prunable Variable down to ``target_sparsity``
        and set their masks (the optimizer keeps them zero from here on)."""
        b = backend.current()
        for v in prunable_weights(self.layer):
            host = np.asarray(b.to_numpy(v.value))
            mask = magnitude_mask(host, target_sparsity, self.block_size)
            v.value = b.asarray(np.where(mask != 0, host, 0).astype(host.dtype), host.dtype)
            v.mask = b.asarray(mask, np.uint8)
        bump_version()

    def masks(self):
        """{variable path: host uint8 mask or None}."""
        b = backend.current()
        return {v.path: None if v.mask is None else np.asarray(b.to_numpy(v.mask))
                for v in prunable_weights(self.layer)}

    # -- config ------------------------------------------------------------------------------
    def runtime_state(self):
        return {"pruning_step": self.pruning_step} if self.pruning_step >= 0 else {}

    def set_runtime_state(self, state):
        self.pruning_step = int(state.get("pruning_step", -1))
        if self.pruning_step >= 0:
            # A resumed model's pruned weights are its zeros: masks follow from them.
            b = backend.current()
            for v in prunable_weights(self.layer):
                host = np.asarray(b.to_numpy(v.value))
                v.mask = b.asarray((host != 0).astype(np.uint8), np.uint8)

    def get_config(self):
        config = super().get_config()
        config["layer"] = {"class_name": type(self.layer).__name__,
                           "config": self.layer.get_config()}
        config["pruning_schedule"] = serialize_schedule(self.pruning_schedule)
        config["block_size"] = list(self.block_size)
        return config

    @classmethod
    def from_config(cls, config):
        # pynn.layers imports this module first; read its registry rather than import it.
        layers = sys.modules["pynn.layers"].LAYERS
        config = dict(config)
        inner = config.pop("layer")
        name = inner.get("class_name") if isinstance(inner, dict) else None
        if name not in layers:
            raise ValueError(f"PruneLowMagnitude: unknown inner layer class {name!r}; expected "
                             f"one of pynn.layers.LAYERS")
        config["block_size"] = tuple(config.get("block_size", (1, 1)))
        return cls(layers[name].from_config(inner.get("config", {})), **config)


def kernel_sparsity(layer):
    """Fraction of exact zeros over ``layer``'s prunable weights (nan when it has none)."""
    b = backend.current()
    weights = prunable_weights(layer.layer if isinstance(layer, PruneLowMagnitude) else layer)
    total = sum(math.prod(v.shape) for v in weights)
    if not total:
        return math.nan
    zeros = sum(int(np.count_nonzero(np.asarray(b.to_numpy(v.value)) == 0)) for v in weights)
    return zeros / total
