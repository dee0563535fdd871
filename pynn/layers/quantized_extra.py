"""More int8 layers (issue 18): Conv1D, DepthwiseConv2D, SeparableConv2D and the recurrent
layers' input projections, on the int8 ops of native/quant.pyx and opencl/quant.cl
(quantize_forward, int8_im2col, int8_dense_forward as QuantizedDense / QuantizedConv2D, and
int8_depthwise_conv2d_forward).

- QuantizedConv1D: Conv1D is a Conv2D of height 1 (as the float layer runs it); causal
  padding pads the float input with zeros, which quantize exactly to the zero point.
- QuantizedDepthwiseConv2D: each output channel c*M + m is an int8 dot product over its own
  input channel's window: the int8_depthwise_conv2d_forward op (native/quant.pyx,
  opencl/quant.cl), exact in int32 with int8_dense_forward's requantization.
- QuantizedSeparableConv2D: its two parts, a QuantizedDepthwiseConv2D without bias then a
  1x1 QuantizedConv2D with the bias and the activation; static quantization calibrates the
  intermediate tensor's range (``mid_scale``) too.
- QuantizedSimpleRNN / QuantizedLSTM / QuantizedGRU: dynamic quantization (PyTorch's
  ``quantize_dynamic``): the input projection x @ kernel runs on the int8 GEMM with the
  input's scale from each batch's range; the recurrent product and the gates stay float (the
  fused recurrence_forward op). Inference only.

Weights keep Keras's layouts: ``kernel`` int8 shaped as the float layer's, ``kernel_scale``
float32 per output channel (``depthwise_kernel`` / ``pointwise_kernel`` and their scales for
the separable conv).
"""

import numpy as np

from pynn import backend
from pynn.layers.base import Layer
from pynn.layers.quantized import (
    QuantizedConv2D,
    _int8_twin,
    _Int8Layer,
    _static_config,
    activation_params,
    int8_dynamic_out,
    weight_params,
)
from pynn.layers.recurrent import GRU, LSTM, SimpleRNN
from pynn.variables import Variable


class QuantizedConv1D(QuantizedConv2D):
    """Conv1D (groups 1, linear or relu) on the int8 GEMM; ``kernel`` int8 (K, C, F) as
    Keras's."""

    def __init__(self, filters, kernel_size, strides=1, padding="valid", dilation_rate=1,
                 activation="linear", use_bias=True, **kwargs):
        if padding not in ("valid", "same", "causal"):
            raise ValueError(f"QuantizedConv1D: padding must be 'valid', 'same' or 'causal', "
                             f"got {padding!r}")
        self.causal = padding == "causal"
        super().__init__(filters, (1, int(kernel_size)), (1, int(strides)),
                         "valid" if self.causal else padding, (1, int(dilation_rate)),
                         activation, use_bias, **kwargs)

    @classmethod
    def from_conv(cls, conv, x_params=None, y_params=None):
        layer = cls(conv.filters, conv.kernel_size, conv.strides, conv.padding,
                    conv.dilation_rate, conv.activation, conv.use_bias, name=conv.name,
                    **_static_config(x_params, y_params))
        layer.build(conv.input_shape)
        b = backend.current()
        layer.set_from_float(b.to_numpy(conv.kernel.value),
                             b.to_numpy(conv.bias.value) if conv.use_bias else None)
        return layer

    @property
    def _causal_left(self):
        return self.dilation_rate[1] * (self.kernel_size[1] - 1) if self.causal else 0

    def build(self, input_shape):
        self._int8_weights((self.kernel_size[1], int(input_shape[-1]), self.filters),
                           self.filters)
        Layer.build(self, input_shape)

    def compute_output_shape(self, input_shape):
        n, t, _ = input_shape
        if t is None:
            return (n, None, self.filters)
        return (n, self._out_hw(1, t + self._causal_left)[1], self.filters)

    def call(self, x, training=False):
        b = backend.current()
        x4 = b.reshape(x, (x.shape[0], 1, x.shape[1], x.shape[2]))
        if self.causal:  # float zeros quantize to the zero point: the real 0, as 'same' pads
            x4 = b.pad2d_forward(x4, ((0, 0), (self._causal_left, 0)))
        y = QuantizedConv2D.call(self, x4)
        return b.reshape(y, (y.shape[0], y.shape[2], y.shape[3]))

    def get_config(self):
        config = _Int8Layer.get_config(self)
        config.update(filters=self.filters, kernel_size=self.kernel_size[1],
                      strides=self.strides[1],
                      padding="causal" if self.causal else self.padding,
                      dilation_rate=self.dilation_rate[1])
        return config


class QuantizedDepthwiseConv2D(QuantizedConv2D):
    """DepthwiseConv2D (linear or relu) on int8_depthwise_conv2d_forward; ``kernel`` int8
    (KH, KW, C, M) as Keras's. (A QuantizedConv2D for its config, shapes and weights.)"""

    def __init__(self, kernel_size, strides=(1, 1), padding="valid", depth_multiplier=1,
                 dilation_rate=(1, 1), activation="linear", use_bias=True, **kwargs):
        super().__init__(0, kernel_size, strides, padding, dilation_rate, activation,
                         use_bias, **kwargs)
        self.depth_multiplier = int(depth_multiplier)

    @classmethod
    def from_depthwise(cls, conv, x_params=None, y_params=None):
        layer = cls(conv.kernel_size, conv.strides, conv.padding, conv.depth_multiplier,
                    conv.dilation_rate, conv.activation, conv.use_bias, name=conv.name,
                    **_static_config(x_params, y_params))
        layer.build(conv.input_shape)
        b = backend.current()
        layer.set_from_float(b.to_numpy(conv.kernel.value),
                             b.to_numpy(conv.bias.value) if conv.use_bias else None)
        return layer

    def build(self, input_shape):
        c = int(input_shape[-1])
        self.filters = c * self.depth_multiplier
        self._int8_weights(self.kernel_size + (c, self.depth_multiplier), self.filters)
        Layer.build(self, input_shape)

    def compute_output_shape(self, input_shape):
        ho, wo = self._out_hw(input_shape[1], input_shape[2])
        return (input_shape[0], ho, wo, input_shape[-1] * self.depth_multiplier)

    def set_from_float(self, kernel, bias):
        # per output channel c*M + m: the (kh, kw) window of channel c
        kernel = np.asarray(kernel, np.float64)
        kh, kw, c, m = kernel.shape
        wq, scales = weight_params(kernel.reshape(kh * kw, c * m), self._bias_min_scales(bias))
        weights = [wq.T.reshape(kernel.shape), scales.astype(np.float32)]
        if self.use_bias:
            weights.append(np.asarray(bias, np.float32))
        self.set_weights(weights)

    def _depthwise_operands(self):
        """(w_scale float64, bias float64 or None, static (bias int32, multiplier) or None),
        formed once per weight value."""
        b = backend.current()
        key = (id(self.kernel.value), id(self.kernel_scale.value),
               id(self.bias.value) if self.bias is not None else None)
        if self._packed is None or self._packed[0] != key:
            w_scale = np.asarray(b.to_numpy(self.kernel_scale.value), np.float64)
            bias = (np.asarray(b.to_numpy(self.bias.value), np.float64)
                    if self.bias is not None else None)
            static = None
            if self.input_scale is not None:
                static = (self._bias_q(bias, self.input_scale, w_scale),
                          b.asarray((self.input_scale * w_scale / self.output_scale)
                                    .astype(np.float32), np.float32))
            self._packed = (key, w_scale, bias, static)
        return self._packed[1:]

    def call(self, x, training=False):
        b = backend.current()
        w_scale, bias, static = self._depthwise_operands()
        relu = self.activation == "relu"
        geometry = (self.strides, self.padding, self.dilation_rate)
        if static is not None:
            bias_q, multiplier = static
            xq = b.quantize_forward(x, self.input_scale, self.input_zero_point)
            yq = b.int8_depthwise_conv2d_forward(xq, self.kernel.value, bias_q,
                                                 self.input_zero_point, multiplier,
                                                 self.output_zero_point, relu, *geometry)
            return b.dequantize_forward(yq, self.output_scale, self.output_zero_point)
        lo = float(np.asarray(b.to_numpy(b.reduce_axes(x, None, "min", False))))
        hi = float(np.asarray(b.to_numpy(b.reduce_axes(x, None, "max", False))))
        x_scale, x_zp = activation_params(np.array([lo, hi]))
        multiplier = b.asarray((x_scale * w_scale).astype(np.float32), np.float32)
        xq = b.quantize_forward(x, x_scale, x_zp)
        return int8_dynamic_out(lambda bias_q, act: b.int8_depthwise_conv2d_forward(
            xq, self.kernel.value, bias_q, x_zp, multiplier, None, act, *geometry),
            bias, x_scale, w_scale, relu)

    def get_config(self):
        config = super().get_config()
        del config["filters"]
        config["depth_multiplier"] = self.depth_multiplier
        return config


class QuantizedSeparableConv2D(Layer):
    """SeparableConv2D as its two int8 parts (module docstring). Static quantization needs
    the three ranges: input, intermediate (``mid_*``) and output; all None is dynamic."""

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid",
                 depth_multiplier=1, dilation_rate=(1, 1), activation="linear", use_bias=True,
                 input_scale=None, input_zero_point=0, mid_scale=None, mid_zero_point=0,
                 output_scale=None, output_zero_point=0, **kwargs):
        super().__init__(**kwargs)
        if len({input_scale is None, mid_scale is None, output_scale is None}) != 1:
            raise ValueError(f"QuantizedSeparableConv2D '{self.name}': input_scale, mid_scale "
                             f"and output_scale are all set (static) or all None (dynamic), "
                             f"got {input_scale!r}, {mid_scale!r} and {output_scale!r}")
        self.filters = int(filters)
        self.kernel_size = tuple(int(v) for v in kernel_size)
        self.strides = tuple(int(v) for v in strides)
        self.padding = padding
        self.depth_multiplier = int(depth_multiplier)
        self.dilation_rate = tuple(int(v) for v in dilation_rate)
        self.activation = activation or "linear"
        self.use_bias = bool(use_bias)
        self.quant = {"input_scale": input_scale, "input_zero_point": int(input_zero_point),
                      "mid_scale": mid_scale, "mid_zero_point": int(mid_zero_point),
                      "output_scale": output_scale,
                      "output_zero_point": int(output_zero_point)}
        q = self.quant
        static = input_scale is not None
        self._depthwise = QuantizedDepthwiseConv2D(
            self.kernel_size, self.strides, padding, self.depth_multiplier, self.dilation_rate,
            "linear", False, name=f"{self.name}_depthwise",
            **(_static_config((q["input_scale"], q["input_zero_point"]),
                              (q["mid_scale"], q["mid_zero_point"])) if static else {}))
        self._pointwise = QuantizedConv2D(
            self.filters, (1, 1), activation=self.activation, use_bias=self.use_bias,
            name=f"{self.name}_pointwise",
            **(_static_config((q["mid_scale"], q["mid_zero_point"]),
                              (q["output_scale"], q["output_zero_point"])) if static else {}))

    @classmethod
    def from_separable(cls, conv, x_params=None, mid_params=None, y_params=None):
        static = {}
        if x_params is not None:
            static = {"input_scale": x_params[0], "input_zero_point": x_params[1],
                      "mid_scale": mid_params[0], "mid_zero_point": mid_params[1],
                      "output_scale": y_params[0], "output_zero_point": y_params[1]}
        layer = cls(conv.filters, conv.kernel_size, conv.strides, conv.padding,
                    conv.depth_multiplier, conv.dilation_rate, conv.activation, conv.use_bias,
                    name=conv.name, **static)
        layer.build(conv.input_shape)
        b = backend.current()
        layer._depthwise.set_from_float(b.to_numpy(conv.depthwise_kernel.value), None)
        layer._pointwise.set_from_float(b.to_numpy(conv.pointwise_kernel.value),
                                        b.to_numpy(conv.bias.value) if conv.use_bias else None)
        return layer

    def build(self, input_shape):
        self._depthwise.build(input_shape)
        self._pointwise.build(self._depthwise.compute_output_shape(input_shape))
        dw, pw = self._depthwise, self._pointwise
        # the saved names are the float layer's, as Keras's quantized layers keep them
        for var, name in ((dw.kernel, "depthwise_kernel"),
                          (dw.kernel_scale, "depthwise_kernel_scale"),
                          (pw.kernel, "pointwise_kernel"),
                          (pw.kernel_scale, "pointwise_kernel_scale"), (pw.bias, "bias")):
            if var is not None:
                var.path = f"{self.name}/{name}"
        self._variables = dw.weights + pw.weights
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return self._pointwise.compute_output_shape(
            self._depthwise.compute_output_shape(input_shape))

    def set_weights(self, weights):
        weights = list(weights)
        if len(weights) != len(self.weights):
            raise ValueError(f"QuantizedSeparableConv2D '{self.name}': expected "
                             f"{len(self.weights)} weight arrays, got {len(weights)}")
        self._depthwise.set_weights(weights[:2])
        self._pointwise.set_weights(weights[2:])

    def call(self, x, training=False):
        # static: the depthwise part's uint8 output, dequantized, requantizes to the same
        # codes in the pointwise part (same scale and zero point)
        return self._pointwise.call(self._depthwise.call(x))

    def backward(self, dy):
        raise NotImplementedError(f"QuantizedSeparableConv2D '{self.name}' is for inference; "
                                  f"train the float model")

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size,
                      strides=self.strides, padding=self.padding,
                      depth_multiplier=self.depth_multiplier,
                      dilation_rate=self.dilation_rate, activation=self.activation,
                      use_bias=self.use_bias, **self.quant)
        return config


# -- recurrent layers: dynamic int8 input projection ---------------------------------------
def dynamic_int8_matmul(x2, packed, w_scale, bias):
    """float32 (N, U) ~ x2 @ W + bias: x2 (N, K) float32 quantized to uint8 with its own
    range, W int8 per unit (packed) with float64 scales ``w_scale``, bias float64 or None
    (rounded into the int32 accumulators, as QuantizedDense's dynamic mode does)."""
    b = backend.current()
    lo = float(np.asarray(b.to_numpy(b.reduce_axes(x2, None, "min", False))))
    hi = float(np.asarray(b.to_numpy(b.reduce_axes(x2, None, "max", False))))
    x_scale, x_zp = activation_params(np.array([lo, hi]))
    xq = b.quantize_forward(x2, x_scale, x_zp)
    multiplier = b.asarray((x_scale * w_scale).astype(np.float32), np.float32)
    return int8_dynamic_out(lambda bias_q, act: b.int8_dense_forward(
        xq, packed, bias_q, x_zp, multiplier, None, act), bias, x_scale, w_scale, False)


class _Int8InputProjection:
    """Mixin before SimpleRNN / LSTM / GRU: ``kernel`` int8 (C, G) + ``kernel_scale`` (G,);
    recurrent_kernel and bias float. Takes the float layer's general path (masks, initial
    and stateful states, return_state) with the int8 projection; no dropout (inference)."""

    @classmethod
    def from_float(cls, layer):
        config = layer.get_config()
        for key in ("dropout", "recurrent_dropout"):
            config[key] = 0.0
        twin = cls.from_config(config)
        twin.build(layer.input_shape)
        b = backend.current()
        kernel = np.asarray(b.to_numpy(layer.kernel.value), np.float64)
        wq, scales = weight_params(kernel)
        rest = [b.to_numpy(layer.recurrent_kernel.value)]
        if layer.use_bias:
            rest.append(b.to_numpy(layer.bias.value))
        twin.set_weights([wq.T, scales.astype(np.float32)] + rest)
        if layer.stateful and layer.states is not None:
            twin._states = layer.states
        return twin

    def build(self, input_shape):
        super().build(input_shape)
        b = backend.current()
        i = self._variables.index(self.kernel)
        shape = self.kernel.shape
        self.kernel = Variable(b.asarray(np.zeros(shape, np.int8), np.int8),
                               f"{self.name}/kernel", trainable=False)
        self.kernel_scale = Variable(b.asarray(np.ones(shape[1], np.float32), np.float32),
                                     f"{self.name}/kernel_scale", trainable=False)
        self._variables[i:i + 1] = [self.kernel, self.kernel_scale]
        for var in self._variables:
            var.trainable = False
        self._packed = None

    def set_weights(self, weights):
        """As Layer.set_weights, keeping each weight's dtype (int8 kernel, float others)."""
        weights = list(weights)
        if len(weights) != len(self.weights):
            raise ValueError(f"{type(self).__name__} '{self.name}': expected "
                             f"{len(self.weights)} weight arrays, got {len(weights)}")
        b = backend.current()
        for var, w in zip(self.weights, weights):
            w = np.asarray(w)
            if w.shape != var.shape:
                raise ValueError(f"{type(self).__name__} '{self.name}': weight '{var.path}' "
                                 f"must have shape {var.shape}, got {w.shape}")
            var.value = b.asarray(w, var.value.dtype)

    def _projection_operands(self):
        b = backend.current()
        bias = self._input_bias()
        key = (id(self.kernel.value), id(self.kernel_scale.value), id(bias))
        if getattr(self, "_packed", None) is None or self._packed[0] != key:
            by_unit = np.ascontiguousarray(np.asarray(b.to_numpy(self.kernel.value)).T)
            self._packed = (key, b.int8_pack_weights(b.asarray(by_unit, np.int8)),
                            np.asarray(b.to_numpy(self.kernel_scale.value), np.float64),
                            None if bias is None else np.asarray(b.to_numpy(bias), np.float64))
        return self._packed[1:]

    def call(self, x, training=False, mask=None):
        b = backend.current()
        label = f"{type(self).__name__} '{self.name}'"
        states = None
        if isinstance(x, (list, tuple)):
            x, states = x[0], list(x[1:])
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        if x.shape[1] == 0:
            raise ValueError(f"{label}: the input has 0 time steps, got shape {tuple(x.shape)}")
        if states is None and self.stateful and self._states is not None:
            states = self._states
        n, t, c = x.shape
        g = self.GATES * self.units
        xw = dynamic_int8_matmul(b.reshape(x, (n * t, c)), *self._projection_operands())
        xw = b.reshape(xw, (n, t, g))
        if states is None:
            states = [b.zeros((n, self.units), self.dtype) for _ in range(self._n_states)]
        mask_arr = None
        if mask is not None:
            m = np.asarray(b.to_numpy(mask) if not isinstance(mask, np.ndarray) else mask)
            if m.shape != (n, t):
                raise ValueError(f"{label}: mask must have shape (batch, timesteps) = "
                                 f"{(n, t)}, got {m.shape}")
            mask_arr = b.asarray(m.astype(self.dtype), self.dtype)
        rb = self.bias.value[1] if (self.CELL == "gru" and self.use_bias) else None
        y, h_last, c_last, _ = b.recurrence_forward(
            xw, self.recurrent_kernel.value, rb, states[0],
            states[1] if self._n_states == 2 else None, mask_arr, None, self.CELL,
            *self._general_options(), self.return_sequences, self.go_backwards,
            self.zero_output_for_mask)
        if self.stateful:
            self._states = [h_last] + ([c_last] if c_last is not None else [])
        if self.return_state:
            return [y, h_last] + ([c_last] if c_last is not None else [])
        return y

    def backward(self, dy):
        raise NotImplementedError(f"{type(self).__name__} '{self.name}' is for inference; "
                                  f"train the float model")


class QuantizedSimpleRNN(_Int8InputProjection, SimpleRNN):
    """SimpleRNN with a dynamic int8 input projection (module docstring)."""


class QuantizedLSTM(_Int8InputProjection, LSTM):
    """LSTM with a dynamic int8 input projection (module docstring)."""


class QuantizedGRU(_Int8InputProjection, GRU):
    """GRU with a dynamic int8 input projection (module docstring)."""


RECURRENT_TWINS = {SimpleRNN: QuantizedSimpleRNN, LSTM: QuantizedLSTM, GRU: QuantizedGRU}


# -- which layers turn int8, and the rewiring of a model's graph (pynn.compression.quantization
# and Model.quantize) ------------------------------------------------------------------------
def _fused(layer):
    """Whether the int8 kernels can fuse ``layer``'s activation (relu or nothing)."""
    return (getattr(layer, "activation", None) in ("linear", "relu")
            and getattr(layer, "alpha", 0.0) == 0.0
            and getattr(layer, "_activation_fn", None) is None)


def _recurrent_twin_class(layer):
    cls = RECURRENT_TWINS.get(type(layer))
    if cls is None or layer._callable_activation():
        return None
    return cls


def int8_twin(layer, x_params=None, y_params=None, mid_params=None, dynamic_only=False):
    """The int8 layer replacing ``layer`` (static with the (scale, zero_point) of its input,
    output and, for SeparableConv2D, intermediate tensor; dynamic without), or None when
    there is none. ``dynamic_only``: only what ``quantize_dynamic`` converts."""
    from pynn.layers.conv_variants import DepthwiseConv2D, SeparableConv2D
    from pynn.layers.sequence import Conv1D

    recurrent = _recurrent_twin_class(layer)
    if recurrent is not None:
        return recurrent.from_float(layer)
    if dynamic_only:
        return _int8_twin(layer) if type(layer).__name__ == "Dense" and _fused(layer) else None
    if not _fused(layer):
        return None
    if type(layer) is Conv1D and layer.groups == 1:
        return QuantizedConv1D.from_conv(layer, x_params, y_params)
    if type(layer) is DepthwiseConv2D:
        return QuantizedDepthwiseConv2D.from_depthwise(layer, x_params, y_params)
    if type(layer) is SeparableConv2D:
        return QuantizedSeparableConv2D.from_separable(
            layer, x_params, mid_params if x_params is not None else None, y_params)
    return _int8_twin(layer, x_params, y_params)


# -- graphs: calibrate, then rewire ------------------------------------------------------
def _graph(model, what):
    # (by duck type: pynn.models imports this module)
    if getattr(model, "_graph", False) is False or getattr(model, "_traced", False):
        raise ValueError(f"{what}: expected a Sequential or functional pynn Model, got "
                         f"{type(model).__name__}")
    if not model.built or model._graph is None:
        raise ValueError(f"{what}: model '{model.name}' must be built first")
    return model._graph


def _clone(model):
    """A copy of ``model`` with its own layers and the same weights."""
    copy = type(model).from_config(model.get_config())
    if not copy.built:
        copy.build(model.input_shape)
    copy.set_weights(model.get_weights())
    return copy


def _rewire(model, twins):
    """Replace, in place, each layer ``twins`` maps (by id) in ``model``'s graph."""
    from pynn.layers.functional import Graph, Plan

    if not twins:
        return model
    if type(model).__name__ == "Sequential":
        model._stack = [twins.get(id(layer), layer) for layer in model._stack]
        model._graph = model._plan = None
        model._build_chain(model._input_layer.input_shape)
        return model
    graph = model._graph
    for node in graph.nodes:
        twin = twins.get(id(node.layer))
        if twin is not None:
            node.layer = twin
            twin._inbound_nodes.append(node)
    model._graph = Graph(graph.inputs, graph.outputs, f"Model '{model.name}'")
    model._plan = Plan(model._graph)
    model._plan.prepare_backward(False)
    return model


def quantize_in_place(model, mode="int8"):
    """Keras 3's ``model.quantize("int8")``: in place, dynamic, every layer ``int8_twin``
    converts, in Sequential and functional models. Returns the model."""
    if mode != "int8":
        raise ValueError(f"quantize: mode must be 'int8', got {mode!r}")
    _graph(model, "quantize")
    twins = {}
    for layer in model.layers:
        twin = int8_twin(layer)
        if twin is not None:
            twins[id(layer)] = twin
    return _rewire(model, twins)
