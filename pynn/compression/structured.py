"""Structured pruning (issue 18): whole Dense units / Conv2D (Conv1D) filters removed by the
L1 or L2 norm of their kernel slice, giving a genuinely smaller Sequential model.

Each prunable layer but the last one of that kind (the model's output width stays) loses the
``fraction`` of its units/filters with the smallest norms, measured after its own inputs
shrank (the norms of what is left of each unit's kernel). The removal follows the channel axis
down the chain: a BatchNormalization after it keeps the statistics of the kept channels, layers
that act per channel (activations, dropout, pooling, padding) pass it through, a Flatten maps
the kept channels to the kept flattened features (channels fastest, NHWC), and the next
Dense/Conv loses the matching input rows. The kept units compute exactly what they computed
before; everything downstream differs only by the removed units' contributions.

The weights are edited once on the host (NumPy fancy indexing over whole axes, no loops over
elements); the smaller model is built from the edited config.
"""

import numpy as np

from pynn.layers.pruning import PruneLowMagnitude

# Layers that map channel c of their input to channel c of their output (and hold no weight
# tied to the channel count).
CHANNELWISE = ("Activation", "ReLU", "LeakyReLU", "ELU", "Softmax", "Dropout",
               "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "MaxPooling2D",
               "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D",
               "MaxPooling1D", "AveragePooling1D", "GlobalAveragePooling1D",
               "GlobalMaxPooling1D", "ZeroPadding2D", "Cropping2D", "UpSampling2D",
               "ActivityRegularization", "Identity")
PRODUCERS = {"Dense": "units", "Conv2D": "filters", "Conv1D": "filters"}


def unit_norms(kernel, norm="l1"):
    """Norm of each output unit's kernel slice (the last axis indexes units/filters)."""
    flat = np.asarray(kernel, np.float64).reshape(-1, kernel.shape[-1])
    if norm == "l1":
        return np.abs(flat).sum(axis=0)
    if norm == "l2":
        return np.sqrt((flat * flat).sum(axis=0))
    raise ValueError(f"prune_structured: norm must be 'l1' or 'l2', got {norm!r}")


def kept_units(kernel, fraction, norm="l1"):
    """Sorted indices of the units kept: all but the round(fraction * U) smallest norms
    (ties: lower index removed first), at least one."""
    norms = unit_norms(kernel, norm)
    remove = min(round(fraction * norms.size), norms.size - 1)
    order = np.argsort(norms, kind="stable")
    return np.sort(order[remove:])


def prune_structured(model, fraction=0.5, norm="l1"):
    """A smaller copy of the Sequential ``model`` with ``fraction`` of every hidden Dense's
    units and Conv's filters removed by ``norm`` ('l1' or 'l2'); the model itself is left as
    it is. Returns the new (built, uncompiled) model."""
    from pynn.models import Sequential

    if not isinstance(model, Sequential):
        raise ValueError(  # noqa: TRY004 -- as prune_low_magnitude
                         f"prune_structured: expected a Sequential model (a chain), got "
                         f"{type(model).__name__} '{model.name}'")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or \
            not 0.0 <= fraction < 1.0:
        raise ValueError(f"prune_structured: fraction must be a float in [0, 1), got "
                         f"{fraction!r}")
    if not model.built:
        raise ValueError(f"prune_structured: model '{model.name}' is not built")
    layers = [layer.layer if isinstance(layer, PruneLowMagnitude) else layer
              for layer in model.layers]
    producers = [i for i, layer in enumerate(layers) if type(layer).__name__ in PRODUCERS]
    hidden = set(producers[:-1])
    config = model.get_config()
    specs = config["layers"][1:] if config["layers"][0]["class_name"] == "InputLayer" else \
        config["layers"]
    weights = [layer.get_weights() for layer in layers]
    keep = None          # kept channels of the tensor flowing down the chain, or None: all
    for i, (layer, spec) in enumerate(zip(layers, specs)):
        kind = type(layer).__name__
        spec["class_name"] = kind
        spec["config"] = {**layer.get_config(), "name": layer.name}
        w = weights[i]
        if kind in PRODUCERS:
            if keep is not None:   # its inputs shrank
                w[0] = np.take(w[0], keep, axis=w[0].ndim - 2)
            keep = kept_units(w[0], fraction, norm) if i in hidden else None
            if keep is not None:
                w[0] = w[0][..., keep]
                if len(w) > 1:
                    w[1] = w[1][keep]
                spec["config"][PRODUCERS[kind]] = int(keep.size)
        elif kind == "BatchNormalization":
            if keep is not None:
                if layer._axis != len(layer.input_shape) - 1:
                    raise ValueError(f"prune_structured: BatchNormalization '{layer.name}' "
                                     f"normalizes axis {layer._axis}, not the channels")
                w = [a[keep] for a in w]
        elif kind == "Flatten":
            if keep is not None:
                # Flattened feature f of (H, W, C) is channel f % C (NHWC, channels fastest).
                shape = layer.input_shape[1:]
                flat = np.arange(int(np.prod(shape))).reshape(shape)
                keep = np.sort(flat[..., keep].reshape(-1))
        elif kind in CHANNELWISE or not w:
            if w and keep is not None:
                raise ValueError(f"prune_structured: layer '{layer.name}' ({kind}) holds "
                                 f"per-channel weights structured pruning cannot shrink")
            if kind not in CHANNELWISE and keep is not None:
                raise ValueError(f"prune_structured: cannot carry removed channels through "
                                 f"layer '{layer.name}' ({kind})")
            # -- Keras 3's glu (act): it pairs channel c with c + K/2, a removed one
            # would pair the rest wrongly
            if getattr(layer, "activation", None) == "glu" and keep is not None:
                raise ValueError(f"prune_structured: cannot carry removed channels through "
                                 f"layer '{layer.name}' (Activation('glu') pairs the halves "
                                 f"of its input)")
        else:
            raise ValueError(f"prune_structured: layer '{layer.name}' ({kind}) is not "
                             f"supported; supported: {sorted(PRODUCERS)}, BatchNormalization, "
                             f"Flatten and per-channel layers")
        weights[i] = w
    smaller = Sequential.from_config(config)
    if not smaller.built:
        smaller.build(model.input_shape)
    for layer, w in zip(smaller.layers, weights):
        layer.set_weights(w)
    return smaller
