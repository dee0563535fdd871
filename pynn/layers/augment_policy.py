"""Keras 3's ``keras.layers.Pipeline``: its layers applied in order as one plain layer (not a
Model), usable in models and Keras files, whose config is Keras's (``layers``, ``name``).

As Keras's, a Pipeline called on its own trains its layers (``training`` defaults to True);
inside a model it takes the model's ``training``. Its weights are its layers', in order.

RandAugment and AugMix are Keras 3's policies over the augmentation layers' split
(get_random_transformation / transform_images): every draw comes from the policy's
(seed, call) stream, every image operation from the parts' transform_images.
"""

import numbers
import sys

import numpy as np

from pynn.layers.base import Layer
from pynn.layers.preprocessing import _RandomLayer


class Pipeline(Layer):
    """Applies ``layers`` one after another (Keras's Pipeline)."""

    def __init__(self, layers, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        if not isinstance(layers, (list, tuple)) or not all(
                isinstance(layer, Layer) for layer in layers):
            raise ValueError(f"Pipeline '{self.name}': layers must be a list of pynn Layer "
                             f"instances, got {layers!r}")
        self._pipeline_layers = list(layers)

    @property
    def layers(self):
        return list(self._pipeline_layers)

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self._pipeline_layers:
            if not layer.built:
                layer.build(shape)
            shape = tuple(layer.compute_output_shape(shape))
        # One list, as TimeDistributed's: the layers' Variables are this layer's weights.
        self._variables = [v for layer in self._pipeline_layers for v in layer._variables]
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        for layer in self._pipeline_layers:
            shape = tuple(layer.compute_output_shape(shape))
        return shape

    def __call__(self, inputs, training=True, **kwargs):
        # Keras's Pipeline.call defaults training to True (it is an augmentation pipeline).
        return super().__call__(inputs, training=training, **kwargs)

    def call(self, x, training=False):
        caches = []
        for layer in self._pipeline_layers:
            layer.check_input(x)
            x = layer.call(x, training=training)
            caches.append(layer._cache)
            layer._cache = None
        if training:
            # The executor saves this layer's _cache only: the layers' ride in it.
            self._cache = caches
        return x

    def backward(self, dy):
        caches, self._cache = self._cache, None
        last = len(self._pipeline_layers) - 1
        for k, (layer, cache) in enumerate(zip(reversed(self._pipeline_layers),
                                               reversed(caches))):
            layer._cache = cache
            # Only the first layer's input gradient is the Pipeline's, wanted or not (an
            # augmentation at a model's input offers none).
            layer.needs_input_grad = self.needs_input_grad if k == last else True
            dy = layer.backward(dy)
            layer._cache = None
            if dy is None:
                return None
        return dy

    def get_config(self):
        # Keras's Pipeline takes only (layers, name): anything more breaks its from_config.
        return {"layers": [{"class_name": type(layer).__name__, "config": layer.get_config()}
                           for layer in self._pipeline_layers],
                "name": self.name}

    @classmethod
    def from_config(cls, config):
        # pynn.layers imports this module; its registry is read from sys.modules (no cycle).
        LAYERS = sys.modules["pynn.layers"].LAYERS
        config = dict(config)
        specs = config.pop("layers", None)
        if not isinstance(specs, (list, tuple)):
            raise ValueError(f"Pipeline: config must hold 'layers', a list of layer configs, "
                             f"got {specs!r}")
        layers = []
        for spec in specs:
            name = spec.get("class_name") if isinstance(spec, dict) else None
            if name not in LAYERS:
                raise ValueError(f"Pipeline: unknown layer class {name!r}; expected one of "
                                 f"pynn.layers.LAYERS")
            layers.append(LAYERS[name].from_config(spec.get("config", {})))
        return cls(layers, **config)


# -- randaug: Keras 3's RandAugment, a composition of the augmentation layers' split --------

def _unit_factor(layer, factor):
    """Keras's _set_factor with bounds (0, 1): a number f is (0, f), a pair is sorted."""
    from pynn.layers.preprocessing import _name
    bad = ValueError(f"{_name(layer)}: factor must be a number or a pair of numbers in "
                     f"[0, 1], got {factor!r}")
    if isinstance(factor, (tuple, list)):
        if len(factor) != 2 or not all(isinstance(v, numbers.Real)
                                       and not isinstance(v, bool) for v in factor):
            raise bad
        lower, upper = sorted(float(v) for v in factor)
        if lower > 1.0 or upper < 0.0:
            raise bad
        return lower, upper
    if isinstance(factor, bool) or not isinstance(factor, numbers.Real) \
            or not 0.0 <= factor <= 1.0:
        raise bad
    return 0.0, float(factor)


def _augment_parts(layer, f, vr, interpolation):
    """Keras's RandAugment / AugMix parts, each seeded with the layer's seed (Keras passes
    its seed on); their draws come from the policy's stream, never their own."""
    from pynn.layers import augment_geo, color
    from pynn.layers import preprocessing as pp
    s = layer.seed

    def named(part):
        return f"{layer.name}_{part}"

    return {
        "random_shear": augment_geo.RandomShear(f, f, interpolation, seed=s,
                                                name=named("shear")),
        "random_translation": pp.RandomTranslation(f, f, interpolation=interpolation,
                                                   seed=s, name=named("translation")),
        "random_rotation": pp.RandomRotation(f, interpolation=interpolation, seed=s,
                                             name=named("rotation")),
        "random_brightness": pp.RandomBrightness(f, vr, seed=s, name=named("brightness")),
        "random_color_degeneration": color.RandomColorDegeneration(
            f, vr, seed=s, name=named("color_degeneration")),
        "random_contrast": pp.RandomContrast(f, vr, seed=s, name=named("contrast")),
        "random_sharpness": color.RandomSharpness(f, vr, seed=s, name=named("sharpness")),
        "random_posterization": color.RandomPosterization(
            max(1, int(8 * f[1])), vr, seed=s, name=named("posterization")),
        "solarization": color.Solarization(f, f, vr, seed=s, name=named("solarization")),
        "auto_contrast": color.AutoContrast(vr, name=named("auto_contrast")),
        "equalization": color.Equalization(vr, name=named("equalization")),
    }


class RandAugment(_RandomLayer):
    """Keras 3's RandAugment: ``num_ops`` of its eleven layers picked once per batch (Keras
    3.15 draws the indices per batch, not per image) and applied in turn through their
    transform_images, each with its transformation drawn for the batch. Identity outside
    training; no input gradient (it sits at a model's input, as its colour layers)."""

    AUGMENT_LAYERS = ("random_shear", "random_translation", "random_rotation",
                      "random_brightness", "random_color_degeneration", "random_contrast",
                      "random_sharpness", "random_posterization", "solarization",
                      "auto_contrast", "equalization")

    def __init__(self, value_range=(0, 255), num_ops=2, factor=0.5, interpolation="bilinear",
                 seed=None, data_format=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        from pynn.layers import preprocessing as pp
        pp._data_format(self, data_format)
        self.value_range = pp._value_range(self, value_range)
        if isinstance(num_ops, bool) or not isinstance(num_ops, numbers.Integral) \
                or num_ops < 0:
            raise ValueError(f"{pp._name(self)}: num_ops must be an int >= 0, got "
                             f"{num_ops!r}")
        self.num_ops = int(num_ops)
        self.factor = _unit_factor(self, factor)
        self.interpolation = pp._choice(self, "interpolation", interpolation,
                                        pp.INTERPOLATIONS)
        self.parts = _augment_parts(self, self.factor, self.value_range, self.interpolation)

    def build(self, input_shape):
        super().build(input_shape)
        for part in self.parts.values():
            if not part.built:
                part.build(tuple(input_shape))

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, x, training=False):
        if not training:
            return x
        return self.transform_images(x, self.get_random_transformation(x), training)

    def get_random_transformation(self, images, training=True, seed=None):
        """{"transforms": {layer: its transformation}, "layer_idxes": (num_ops,) ints}:
        the indices first, then every layer's draw in Keras's order, from one stream."""
        if not training:
            return None
        rng = self._transformation_rng(seed)
        layer_idxes = rng.integers(0, len(self.AUGMENT_LAYERS), size=self.num_ops)
        # default_rng(Generator) is that generator: the parts draw on from this stream.
        transforms = {key: self.parts[key].get_random_transformation(images, seed=rng)
                      for key in self.AUGMENT_LAYERS}
        return {"transforms": transforms, "layer_idxes": layer_idxes}

    def transform_images(self, images, transformation, training=True):
        if not training or transformation is None:
            return images
        transforms = transformation["transforms"]
        for index in np.asarray(transformation["layer_idxes"]).reshape(-1):
            key = self.AUGMENT_LAYERS[int(index)]
            images = self.parts[key].transform_images(images, transforms[key])
            self.parts[key]._cache = None
        return images

    def backward(self, dy):
        self._cache = None
        if self.needs_input_grad:
            raise NotImplementedError(f"{type(self).__name__} '{self.name}': no input "
                                      f"gradient (put it at the model's input)")

    def get_config(self):
        return {**super().get_config(), "value_range": list(self.value_range),
                "num_ops": self.num_ops, "factor": list(self.factor),
                "interpolation": self.interpolation, "data_format": "channels_last"}


# -- randaug: Keras 3's AugMix, chains of the same parts mixed with the input ------------------

class AugMix(RandAugment):
    """Keras 3's AugMix: ``num_chains`` chains of up to ``chain_depth`` parts (each step a
    part or nothing, picked once per batch), mixed by Dirichlet(alpha) weights, then
    blended with the input by a Beta(alpha, alpha) weight and clipped to value_range.
    Keras picks the steps with Python's unseeded ``random.choice``; pynn draws them from the
    layer's (seed, call) stream, so a seeded AugMix repeats."""

    ALL_OPS = ("random_shear", "random_translation", "random_rotation",
               "random_posterization", "solarization", "auto_contrast", "equalization",
               "random_brightness", "random_color_degeneration", "random_contrast",
               "random_sharpness")
    GEOMETRIC_OPS = ALL_OPS[:7]

    def __init__(self, value_range=(0, 255), num_chains=3, chain_depth=3, factor=0.3,
                 alpha=1.0, all_ops=True, interpolation="bilinear", seed=None,
                 data_format=None, **kwargs):
        _RandomLayer.__init__(self, seed=seed, **kwargs)
        from pynn.layers import preprocessing as pp
        pp._data_format(self, data_format)
        self.value_range = pp._value_range(self, value_range)
        for what, value in (("num_chains", num_chains), ("chain_depth", chain_depth)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{pp._name(self)}: {what} must be an int >= 1, got "
                                 f"{value!r}")
        self.num_chains, self.chain_depth = int(num_chains), int(chain_depth)
        self.factor = _unit_factor(self, factor)
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not alpha > 0:
            raise ValueError(f"{pp._name(self)}: alpha must be a number > 0, got {alpha!r}")
        self.alpha = float(alpha)
        if not isinstance(all_ops, bool):
            raise ValueError(f"{pp._name(self)}: all_ops must be a bool, got {all_ops!r}")
        self.all_ops = all_ops
        self.interpolation = pp._choice(self, "interpolation", interpolation,
                                        pp.INTERPOLATIONS)
        parts = _augment_parts(self, self.factor, self.value_range, self.interpolation)
        self.ops = self.ALL_OPS if all_ops else self.GEOMETRIC_OPS
        self.parts = {key: parts[key] for key in self.ops}

    def get_random_transformation(self, images, training=True, seed=None):
        """Keras's {"chain_mixing_weights": (num_chains,), "weight_sample": scalar,
        "chain_transforms": [[{"layer_name", "transformation"}, ...], ...]}."""
        if not training:
            return None
        rng = self._transformation_rng(seed)
        gamma = rng.gamma(self.alpha, size=self.num_chains)
        weights = gamma / gamma.sum()
        weight_sample = rng.beta(self.alpha, self.alpha)
        chains = []
        for _ in range(self.num_chains):
            steps = []
            for _ in range(self.chain_depth):
                pick = int(rng.integers(0, len(self.ops) + 1))
                if pick == len(self.ops):   # Keras's None: the step is skipped
                    continue
                key = self.ops[pick]
                steps.append({"layer_name": key, "transformation":
                              self.parts[key].get_random_transformation(images, seed=rng)})
            chains.append(steps)
        return {"chain_mixing_weights": weights, "weight_sample": weight_sample,
                "chain_transforms": chains}

    def transform_images(self, images, transformation, training=True):
        if not training or transformation is None:
            return images
        from pynn import backend
        b = backend.current()
        weights = np.asarray(transformation["chain_mixing_weights"], np.float64).reshape(-1)
        weight_sample = float(np.asarray(transformation["weight_sample"]))
        mixed = None
        for weight, chain in zip(weights, transformation["chain_transforms"]):
            chained = b.copy(images)
            for step in chain:
                part = self.parts[step["layer_name"]]
                chained = part.transform_images(chained, step["transformation"])
                part._cache = None
            if chained is images:
                chained = b.copy(images)
            b.scale_inplace(chained, weight)
            if mixed is None:
                mixed = chained
            else:
                b.add_inplace(mixed, chained)
        out = b.copy(images)
        b.scale_inplace(out, weight_sample)
        b.scale_inplace(mixed, 1.0 - weight_sample)
        b.add_inplace(out, mixed)
        # The value_range clip of RandomContrast's op, with neither contrast nor delta.
        return b.image_adjust_forward(out, None, None, self.value_range)

    def get_config(self):
        config = {**_RandomLayer.get_config(self), "value_range": list(self.value_range),
                  "num_chains": self.num_chains, "chain_depth": self.chain_depth,
                  "factor": list(self.factor), "alpha": self.alpha, "all_ops": self.all_ops,
                  "interpolation": self.interpolation, "data_format": "channels_last"}
        return config
