"""Keras 3's ``keras.layers.Pipeline``: its layers applied in order as one plain layer (not a
Model), usable in models and Keras files, whose config is Keras's (``layers``, ``name``).

As Keras's, a Pipeline called on its own trains its layers (``training`` defaults to True);
inside a model it takes the model's ``training``. Its weights are its layers', in order.
"""

import sys

from pynn.layers.base import Layer


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
