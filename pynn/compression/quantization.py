"""int8 quantization (issue 18), for inference.

- ``quantize(model, calibration_x, method="minmax" | "percentile")``: static post-training
  int8, a copy of a Sequential model whose Dense and Conv2D layers (linear or relu) run on the
  int8 GEMM (native/quant.pyx: AVX-512 VNNI / AVX2 chosen at run time, bit-identical on
  OpenCL), activations uint8 per tensor calibrated on ``calibration_x`` (min-max, or the
  [100 - p, p] percentiles to ignore outliers), requantization and relu fused;
- ``model.quantize("int8")`` (Keras 3's API, ``quantize_model``): in place, dynamic: the
  input's scale from each batch's range, float32 out of the int32 accumulators;
- weights: symmetric per output channel, w_scale[u] = max |W[..., u]| / 127, int8 in
  [-127, 127], kept in Keras's layout (``kernel`` int8, ``kernel_scale``) and packed once for
  the GEMM; bias float, rint(b / (x_scale * w_scale[u])) in int32 at run time;
- saving: int8 weights stay int8 in .pynn (about 1/4 of the float file), and a loaded model
  predicts bit-identically;
- quantization-aware training: ``pynn.compression.qat``.

Not done: Conv1D / depthwise / recurrent int8 kernels, float16 weight storage, ONNX QDQ export.
"""

import numpy as np

from pynn import backend
from pynn.layers.quantized import (  # noqa: F401 -- the layers are this module's API too
    METHODS,
    QuantizedConv2D,
    QuantizedDense,
    _int8_twin,
    activation_params,
    quantize_model,
    weight_params,
)


def quantize(model, calibration_x, method="minmax", percentile=99.99):
    """An int8 copy of the Sequential ``model`` for inference (see the module docstring);
    ``calibration_x`` is a sample of inputs (a few hundred are plenty)."""
    from pynn.models import Sequential, layer_from_config

    if not isinstance(model, Sequential):
        raise ValueError(  # noqa: TRY004 -- as prune_structured
            f"quantize: expected a Sequential model, got {type(model).__name__}")
    if method not in METHODS:
        raise ValueError(f"quantize: method must be one of {METHODS}, got {method!r}")
    b = backend.current()
    x = b.asarray(np.asarray(calibration_x, np.float32), np.float32)
    new_layers = []
    for layer in model.layers:
        y = layer(x)
        twin = _int8_twin(layer, activation_params(b.to_numpy(x), method, percentile),
                          activation_params(b.to_numpy(y), method, percentile))
        if twin is not None:
            new_layers.append(twin)
        else:
            copy = layer_from_config({"class_name": type(layer).__name__,
                                      "config": layer.get_config()})
            copy.build(layer.input_shape)
            copy.set_weights(layer.get_weights())
            new_layers.append(copy)
        x = y
    quantized = Sequential([_input_like(model)] + new_layers, name=f"{model.name}_int8")
    return quantized


def _input_like(model):
    from pynn.layers import Input

    return Input(tuple(model.input_shape[1:]))
