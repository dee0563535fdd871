"""Post-training int8 quantization (issue 18), for inference.

``quantize(model, calibration_x, method="minmax" | "percentile")`` returns a copy of a
Sequential model whose Dense layers (linear or relu) run on the int8 kernel
(``int8_dense_forward``, native/quant.pyx: AVX-512 VNNI / AVX2, bit-identical on OpenCL):

- weights: symmetric per output unit, w_scale[u] = max |W[:, u]| / 127, int8 in [-127, 127];
- activations: per tensor, asymmetric uint8, scale and zero point from the float model's
  values on ``calibration_x`` (min-max, or the [100 - p, p] percentiles to ignore outliers);
- bias: int32, rint(b / (x_scale * w_scale[u])); requantization and relu fused in the kernel.

Each QuantizedDense takes float input and gives float output (quantize -> int8 GEMM ->
dequantize), so it drops into any float model. Not done yet: Conv2D/Conv1D/recurrent int8
kernels, dynamic quantization, quantization-aware training, saving a quantized model (its
``get_config`` refuses).
"""

import numpy as np

from pynn import backend
from pynn.layers.base import Layer

METHODS = ("minmax", "percentile")


def activation_params(values, method="minmax", percentile=99.99):
    """(scale, zero_point) of uint8 activations covering ``values`` (and 0, which must be
    exact: zero padding and relu's zeros)."""
    values = np.asarray(values, np.float64).reshape(-1)
    if method == "minmax":
        lo, hi = values.min(initial=0.0), values.max(initial=0.0)
    elif method == "percentile":
        lo = min(float(np.percentile(values, 100.0 - percentile)), 0.0)
        hi = max(float(np.percentile(values, percentile)), 0.0)
    else:
        raise ValueError(f"quantize: method must be one of {METHODS}, got {method!r}")
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zero_point = int(np.clip(np.rint(-lo / scale), 0, 255))
    return float(np.float32(scale)), zero_point


def weight_params(kernel):
    """(int8 weights by unit (U, K), float64 per-unit scales (U,)) of a (K, U) kernel."""
    kernel = np.asarray(kernel, np.float64)
    scales = np.abs(kernel).max(axis=0) / 127.0
    scales[scales == 0] = 1.0
    q = np.clip(np.rint(kernel / scales), -127, 127).astype(np.int8)
    return np.ascontiguousarray(q.T), scales


class QuantizedDense(Layer):
    """A Dense (linear or relu) on int8: float in, float out, through quantize_forward,
    int8_dense_forward and dequantize_forward. Inference only."""

    def __init__(self, dense, x_params, y_params, **kwargs):
        kwargs.setdefault("name", dense.name)
        super().__init__(**kwargs)
        if dense.activation not in ("linear", "relu"):
            raise ValueError(f"QuantizedDense '{self.name}': the int8 kernel fuses relu or "
                             f"nothing, got activation {dense.activation!r}")
        b = backend.current()
        kernel = np.asarray(b.to_numpy(dense.kernel.value))
        self.units, self.relu = dense.units, dense.activation == "relu"
        self.x_scale, self.x_zero_point = x_params
        self.y_scale, self.y_zero_point = y_params
        wq, w_scales = weight_params(kernel)
        self.in_features = kernel.shape[0]
        # packed once for the GEMM (int8_pack_weights), not on every call
        self.wq = b.int8_pack_weights(b.asarray(wq, np.int8))
        self.bias_q = None
        if dense.use_bias:
            bias = np.asarray(b.to_numpy(dense.bias.value), np.float64)
            bias_q = np.rint(bias / (self.x_scale * w_scales))
            self.bias_q = b.asarray(np.clip(bias_q, -2**31, 2**31 - 1).astype(np.int32),
                                    np.int32)
        self.multiplier = b.asarray(
            (self.x_scale * w_scales / self.y_scale).astype(np.float32), np.float32)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def call(self, x, training=False):
        b = backend.current()
        lead = tuple(x.shape[:-1])
        x2 = x if x.ndim == 2 else b.reshape(x, (-1, x.shape[-1]))
        xq = b.quantize_forward(x2, self.x_scale, self.x_zero_point)
        yq = b.int8_dense_forward(xq, self.wq, self.bias_q, self.x_zero_point,
                                  self.multiplier, self.y_zero_point, self.relu)
        y = b.dequantize_forward(yq, self.y_scale, self.y_zero_point)
        return y if x.ndim == 2 else b.reshape(y, lead + (self.units,))

    def backward(self, dy):
        raise NotImplementedError(f"QuantizedDense '{self.name}' is for inference; train the "
                                  f"float model (quantization-aware training is not done)")

    def count_params(self):
        return self.in_features * self.units + (self.units if self.bias_q is not None else 0)

    def get_config(self):
        raise NotImplementedError("saving a quantized model is not done yet")


def quantize(model, calibration_x, method="minmax", percentile=99.99):
    """An int8 copy of the Sequential ``model`` for inference (see the module docstring);
    ``calibration_x`` is a sample of inputs (a few hundred are plenty)."""
    from pynn.layers.core import Dense
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
        if type(layer) is Dense and layer.activation in ("linear", "relu"):
            new_layers.append(QuantizedDense(
                layer, activation_params(b.to_numpy(x), method, percentile),
                activation_params(b.to_numpy(y), method, percentile)))
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
