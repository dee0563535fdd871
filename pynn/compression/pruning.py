"""Pruning (issue 18), with TF Model Optimization's names and semantics.

Unstructured: ``prune_low_magnitude(layer_or_model, pruning_schedule, block_size)`` wraps each
prunable layer (Dense, Conv1D/2D, the recurrent layers, Embedding: the layers with a weight in
``PRUNABLE``) in ``PruneLowMagnitude``; train with the ``UpdatePruningStep`` callback; the
optimizer's fused update keeps pruned weights and their slots at exactly zero (the masks ride
on the Variables into ``native/optim.pyx``). ``strip_pruning`` gives back the plain model (its
kernels full of zeros), ``sparsity(model)`` the fraction of zeros per layer.

Structured: ``prune_structured(model, fraction, norm)`` removes whole Dense units / Conv
filters with the smallest L1 or L2 norm and returns a genuinely smaller model (pynn.compression
.structured).
"""

import math

from pynn import callbacks
from pynn.layers.base import Layer
from pynn.layers.pruning import (  # noqa: F401 -- re-exported, TF-MOT's names
    PRUNABLE,
    ConstantSparsity,
    PolynomialDecay,
    PruneLowMagnitude,
    PruningSchedule,
    kernel_sparsity,
    magnitude_mask,
    prunable_weights,
    serialize_schedule,
)

__all__ = ["ConstantSparsity", "PolynomialDecay", "PruneLowMagnitude", "PruningSchedule",
           "UpdatePruningStep", "prune_low_magnitude", "sparsity", "strip_pruning"]


def _model_types():
    from pynn.models import Model, Sequential  # models imports layers, which import this

    return Model, Sequential


def _has_prunable(spec_layer):
    return bool(prunable_weights(spec_layer))


def prune_low_magnitude(to_prune, pruning_schedule=None, block_size=(1, 1)):
    """A layer wrapped in PruneLowMagnitude, or a copy of a model (same config, same weights)
    whose prunable layers are wrapped; other layers are copied as they are.
    pruning_schedule defaults to TF-MOT's ConstantSparsity(0.5, begin_step=0)."""
    schedule = pruning_schedule if pruning_schedule is not None else ConstantSparsity(0.5, 0)
    model_cls, _ = _model_types()
    if isinstance(to_prune, model_cls):
        return _rewrap(to_prune, lambda layer: (
            {"class_name": "PruneLowMagnitude",
             "config": {"name": layer.name,
                        "layer": {"class_name": type(layer).__name__,
                                  "config": layer.get_config()},
                        "pruning_schedule": serialize_schedule(schedule),
                        "block_size": list(block_size)}}
            if not isinstance(layer, PruneLowMagnitude) and layer.built
            and _has_prunable(layer) else None))
    if isinstance(to_prune, PruneLowMagnitude):
        raise ValueError(  # noqa: TRY004 -- TF-MOT raises ValueError
            f"prune_low_magnitude: layer '{to_prune.name}' is already pruned")
    if isinstance(to_prune, Layer):
        return PruneLowMagnitude(to_prune, schedule, block_size)
    raise ValueError(f"prune_low_magnitude: expected a pynn Layer or Model, got "
                     f"{type(to_prune).__name__}")


def strip_pruning(model):
    """The model with every PruneLowMagnitude replaced by its inner layer, weights (with
    their zeros) copied: what is saved and deployed."""
    model_cls, _ = _model_types()
    if not isinstance(model, model_cls):
        raise ValueError(  # noqa: TRY004 -- TF-MOT raises ValueError
            f"strip_pruning: expected a pynn Model, got {type(model).__name__}")
    return _rewrap(model, lambda layer: (
        {"class_name": type(layer.layer).__name__,
         "config": {**layer.layer.get_config(), "name": layer.name}}
        if isinstance(layer, PruneLowMagnitude) else None))


def _rewrap(model, replace):
    """A new model from ``model``'s config with the layer specs ``replace(layer)`` gives
    (None: unchanged), and ``model``'s weights. Layer names are kept, so the functional
    graph's references and the weight order stay valid."""
    config = model.get_config()
    by_name = {layer.name: layer for layer in model.layers}
    for spec in config["layers"]:
        layer = by_name.get(spec["config"].get("name"))
        new = replace(layer) if layer is not None else None
        if new is not None:
            spec.clear()
            spec.update(new)
    clone = type(model).from_config(config)
    if not clone.built and model.built:
        clone.build(model.input_shape)
    clone.set_weights(model.get_weights())
    return clone


def sparsity(model):
    """{layer name: fraction of exact zeros in its prunable weights}, for the layers that
    have any (pruned or not)."""
    out = {}
    for layer in model.layers:
        value = kernel_sparsity(layer)
        if not math.isnan(value):
            out[layer.name] = value
    return out


class UpdatePruningStep(callbacks.Callback):
    """Before each training batch, tells every PruneLowMagnitude layer the optimizer's step,
    so masks are recomputed when its schedule says so (TF-MOT's callback; required while
    training a pruned model)."""

    def _wrappers(self):
        return [layer for layer in self.model.layers if isinstance(layer, PruneLowMagnitude)]

    def on_train_begin(self, logs=None):
        if not self._wrappers():
            raise ValueError(f"UpdatePruningStep: model '{self.model.name}' has no "
                             f"PruneLowMagnitude layer; wrap it with prune_low_magnitude")

    def on_train_batch_begin(self, batch, logs=None):
        step = self.model.optimizer.iterations
        for layer in self._wrappers():
            layer.update_pruning_step(step)

