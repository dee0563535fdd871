"""Keras 3's Masking layer: time steps whose features all equal ``mask_value`` are masked.

The output is the input with those steps zeroed, and the mask (N, T) (every axis but the
last) goes to the layers after it (recurrent layers skip masked steps; see
pynn.layers.functional for how masks travel). The mask is a host bool array: it is read
once per batch by the layers that consume it.
"""

import numpy as np

from pynn import backend
from pynn.layers.base import Layer


class Masking(Layer):
    supports_masking = True

    def __init__(self, mask_value=0.0, **kwargs):
        super().__init__(**kwargs)
        self.mask_value = float(mask_value)

    def _keep(self, x):
        host = np.asarray(backend.current().to_numpy(x))
        return np.any(host != self.mask_value, axis=-1)

    def call(self, x, training=False):
        b = backend.current()
        keep = self._keep(x)
        # y = x * keep broadcast over the features: the merge op's multiply on a tiled
        # multiplier (the same math as Keras's x * cast(any(x != mask_value))).
        factor = b.asarray(np.broadcast_to(keep[..., None], x.shape).astype(self.dtype),
                           self.dtype)
        y = b.merge_forward([x, factor], "multiply")
        if training:
            self._cache = factor
        return y

    def backward(self, dy):
        factor, self._cache = self._cache, None
        if not self.needs_input_grad:
            return None
        return backend.current().merge_forward([dy, factor], "multiply")

    def compute_mask(self, inputs, mask=None):
        return self._keep(inputs)

    def get_config(self):
        config = super().get_config()
        config.update(mask_value=self.mask_value)
        return config
