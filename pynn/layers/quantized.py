"""int8 layers (issue 18): what saved quantized and quantization-aware models name (LAYERS).

QuantizedDense / QuantizedConv2D run on the int8 GEMM (native/quant.pyx, opencl/quant.cl);
FakeQuant is quantization-aware training's node. The user-facing functions (``quantize``,
``model.quantize("int8")``, ``quantize_aware``, ``convert``) live in
``pynn.compression.quantization`` and ``pynn.compression.qat``.
"""

import numpy as np

from pynn import backend
from pynn.layers.base import Layer
from pynn.layers.pooling import MaxPooling2D
from pynn.variables import Variable

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


# rint(b / (x_scale * w_scale)) sits in the int32 accumulators beside the products (each
# |(x - zero point) * w| <= 255 * 127): a bias of more than 2^30 of those steps (a channel of
# tiny weights, an input of tiny range) saturated there, and the channel answered with
# another bias (0.036 for 0.281). A calibrated layer's scales are raised to hold its bias; a
# dynamic call whose batch range is too small adds it in float after the products.
BIAS_Q_MAX = 2 ** 30


def weight_params(kernel, min_scales=None):
    """(int8 weights by unit (U, K), float64 per-unit scales (U,)) of a (K, U) kernel; each
    scale at least ``min_scales`` (U,) where given."""
    kernel = np.asarray(kernel, np.float64)
    scales = np.abs(kernel).max(axis=0) / 127.0
    if min_scales is not None:
        scales = np.maximum(scales, min_scales)
    scales[scales == 0] = 1.0
    q = np.clip(np.rint(kernel / scales), -127, 127).astype(np.int8)
    return np.ascontiguousarray(q.T), scales


def _static_config(x_params, y_params):
    if x_params is None:
        return {}
    return {"input_scale": x_params[0], "input_zero_point": x_params[1],
            "output_scale": y_params[0], "output_zero_point": y_params[1]}


class _Int8Layer(Layer):
    """What QuantizedDense and QuantizedConv2D share: int8 weights symmetric per output
    channel (Keras 3's ``kernel`` int8 in the float layer's layout plus ``kernel_scale``), a
    float bias, and the activations' quantization: ``input_scale`` / ``output_scale`` from
    calibration (static: uint8 in, uint8 requantized out, dequantized), or None (dynamic, what
    ``model.quantize("int8")`` gives: the input's scale and zero point from each batch's
    min and max, float32 out straight from the int32 accumulators). Inference only."""

    def __init__(self, activation="linear", use_bias=True, input_scale=None,
                 input_zero_point=0, output_scale=None, output_zero_point=0,
                 input_uint8=False, output_uint8=False, **kwargs):
        super().__init__(**kwargs)
        if activation not in ("linear", "relu", None):
            raise ValueError(f"{type(self).__name__} '{self.name}': the int8 kernel fuses relu "
                             f"or nothing, got activation {activation!r}")
        if (input_scale is None) != (output_scale is None):
            raise ValueError(f"{type(self).__name__} '{self.name}': input_scale and "
                             f"output_scale are both set (static) or both None (dynamic), got "
                             f"{input_scale!r} and {output_scale!r}")
        self.activation = activation or "linear"
        self.use_bias = bool(use_bias)
        self.input_scale = None if input_scale is None else float(input_scale)
        self.output_scale = None if output_scale is None else float(output_scale)
        self.input_zero_point = int(input_zero_point)
        self.output_zero_point = int(output_zero_point)
        # (q8) Static layers of a chain (``quantize`` sets these where every consumer is an
        # int8 layer with this output's scale and zero point): the uint8 codes travel
        # between them, with no dequantize / quantize round trip; the float values exist
        # only at the model's float boundary.
        if (input_uint8 or output_uint8) and self.input_scale is None:
            raise ValueError(f"{type(self).__name__} '{self.name}': input_uint8 and "
                             f"output_uint8 need static quantization (input_scale and "
                             f"output_scale), got a dynamic layer")
        self.input_uint8 = bool(input_uint8)
        self.output_uint8 = bool(output_uint8)
        self._packed = None

    def _int8_weights(self, kernel_shape, units):
        b = backend.current()
        # int8 Variables (add_weight makes the layer's float dtype): saved as int8
        self.kernel = Variable(b.asarray(np.zeros(kernel_shape, np.int8), np.int8),
                               f"{self.name}/kernel", trainable=False)
        self.kernel_scale = Variable(b.asarray(np.ones(units, np.float32), np.float32),
                                     f"{self.name}/kernel_scale", trainable=False)
        self._variables += [self.kernel, self.kernel_scale]
        self.bias = None
        if self.use_bias:
            self.bias = Variable(b.asarray(np.zeros(units, np.float32), np.float32),
                                 f"{self.name}/bias", trainable=False)
            self._variables.append(self.bias)

    def set_from_float(self, kernel, bias):
        """Quantize a float layer's kernel (its Keras layout, output channels last) and bias
        into this layer's weights."""
        kernel = np.asarray(kernel, np.float64)
        wq, scales = weight_params(kernel.reshape(-1, kernel.shape[-1]),
                                   self._bias_min_scales(bias))
        weights = [wq.T.reshape(kernel.shape), scales.astype(np.float32)]
        if self.use_bias:
            weights.append(np.asarray(bias, np.float32))
        self.set_weights(weights)

    def _bias_min_scales(self, bias):
        """The per-unit weight scales a calibrated layer's bias needs (see BIAS_Q_MAX)."""
        if bias is None or not self.use_bias or self.input_scale is None:
            return None
        return np.abs(np.asarray(bias, np.float64)) / (self.input_scale * BIAS_Q_MAX)

    def set_weights(self, weights):
        """As Layer.set_weights, keeping each weight's dtype (int8 kernel, float scales)."""
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

    def _gemm_operands(self):
        """(packed int8 weights, w_scale float64 (U,), bias float64 (U,) or None), packed
        once per weight value (a load or set_weights replaces the value)."""
        b = backend.current()
        key = (id(self.kernel.value), id(self.kernel_scale.value),
               id(self.bias.value) if self.bias is not None else None)
        if self._packed is None or self._packed[0] != key:
            kernel = np.asarray(b.to_numpy(self.kernel.value))
            by_unit = np.ascontiguousarray(kernel.reshape(-1, kernel.shape[-1]).T)
            packed = b.int8_pack_weights(b.asarray(by_unit, np.int8))
            w_scale = np.asarray(b.to_numpy(self.kernel_scale.value), np.float64)
            bias = (np.asarray(b.to_numpy(self.bias.value), np.float64)
                    if self.bias is not None else None)
            static = None
            if self.input_scale is not None:
                static = (self._bias_q(bias, self.input_scale, w_scale),
                          b.asarray((self.input_scale * w_scale / self.output_scale)
                                    .astype(np.float32), np.float32))
            self._packed = (key, packed, w_scale, bias, static)
        return self._packed[1:]

    @staticmethod
    def _bias_q(bias, x_scale, w_scale):
        if bias is None:
            return None
        q = np.clip(np.rint(bias / (x_scale * w_scale)), -2**31, 2**31 - 1).astype(np.int32)
        return backend.current().asarray(q, np.int32)

    def _int8_matmul(self, x2, patches=None, conv=None):
        """The layer's output (float32, 2-D; uint8 codes when ``output_uint8``) from its
        input ``x2`` (float, or uint8 codes when ``input_uint8``); ``patches`` turns the uint8
        input into GEMM rows (an im2col), or ``conv`` (int8_conv2d_forward's geometry
        arguments) runs the int8 Conv2D op on it instead."""
        b = backend.current()
        packed, w_scale, bias, static = self._gemm_operands()
        relu = self.activation == "relu"
        if static is not None:
            x_scale, x_zp = self.input_scale, self.input_zero_point
        else:  # dynamic: this batch's range
            lo = float(np.asarray(b.to_numpy(b.reduce_axes(x2, None, "min", False))))
            hi = float(np.asarray(b.to_numpy(b.reduce_axes(x2, None, "max", False))))
            if not (np.isfinite(lo) and np.isfinite(hi)):
                raise ValueError(f"{type(self).__name__} '{self.name}': dynamic int8 "
                                 f"quantization needs finite inputs, got a batch ranging "
                                 f"from {lo} to {hi}")
            x_scale, x_zp = activation_params(np.array([lo, hi]))
        xq = x2 if self.input_uint8 else b.quantize_forward(x2, x_scale, x_zp)
        if conv is not None:
            def gemm(*args):
                return b.int8_conv2d_forward(xq, *args, *conv)
        else:
            rows = patches(xq, x_zp) if patches is not None else xq

            def gemm(*args):
                return b.int8_dense_forward(rows, *args)
        if static is not None:
            bias_q, multiplier = static
            yq = gemm(packed, bias_q, x_zp, multiplier, self.output_zero_point, relu)
            if self.output_uint8:
                return yq
            return b.dequantize_forward(yq, self.output_scale, self.output_zero_point)
        multiplier = b.asarray((x_scale * w_scale).astype(np.float32), np.float32)
        return int8_dynamic_out(lambda bias_q, act: gemm(packed, bias_q, x_zp, multiplier, None,
                                                          act),
                                bias, x_scale, w_scale, relu)

    def backward(self, dy):
        raise NotImplementedError(f"{type(self).__name__} '{self.name}' is for inference; "
                                  f"train the float model, or quantize_aware's")

    def inference_macs(self, x):
        """Multiply-adds of a call on ``x`` (pynn.inference sizes its plans' threads by
        them)."""
        # rows of outputs times the kernel's products per row (Dense: K x U; Conv2D:
        # KH KW C x F; the Conv1D twin likewise)
        rows = int(np.prod(self.compute_output_shape(tuple(x.shape))[:-1]))
        return rows * int(np.prod(self.kernel.shape))

    def get_config(self):
        config = super().get_config()
        config.update(activation=self.activation, use_bias=self.use_bias,
                      input_scale=self.input_scale, input_zero_point=self.input_zero_point,
                      output_scale=self.output_scale,
                      output_zero_point=self.output_zero_point, input_uint8=self.input_uint8,
                      output_uint8=self.output_uint8)
        return config


def int8_dynamic_out(op, bias, x_scale, w_scale, relu):
    """A dynamic int8 op's float output: op(bias_q, relu), the bias rounded into its int32
    accumulators at this batch's x_scale; where it would pass BIAS_Q_MAX steps there, the
    products alone (op(None, False)), then the bias and the relu in float."""
    if bias is None or np.all(np.abs(bias) <= BIAS_Q_MAX * x_scale * w_scale):
        return op(_Int8Layer._bias_q(bias, x_scale, w_scale), relu)
    b = backend.current()
    y = b.elementwise_binary(op(None, False), b.asarray(bias.astype(np.float32), np.float32),
                             "add")
    return b.activation_forward(y, "relu", 0.0) if relu else y


class QuantizedDense(_Int8Layer):
    """Dense (linear or relu) on the int8 GEMM; ``kernel`` int8 (K, U) as Keras's."""

    supports_masking = True  # as the Dense it replaces: a sequence's mask passes on

    def __init__(self, units, activation="linear", use_bias=True, **kwargs):
        super().__init__(activation=activation, use_bias=use_bias, **kwargs)
        self.units = int(units)

    @classmethod
    def from_dense(cls, dense, x_params=None, y_params=None):
        """The int8 twin of a built Dense; (scale, zero_point) of its input and output for
        static quantization, None for dynamic."""
        static = _static_config(x_params, y_params)
        layer = cls(dense.units, dense.activation, dense.use_bias, name=dense.name, **static)
        layer.build(dense.input_shape)
        b = backend.current()
        layer.set_from_float(b.to_numpy(dense.kernel.value),
                             b.to_numpy(dense.bias.value) if dense.use_bias else None)
        return layer

    def build(self, input_shape):
        self._int8_weights((int(input_shape[-1]), self.units), self.units)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def call(self, x, training=False):
        b = backend.current()
        lead = tuple(x.shape[:-1])
        x2 = x if x.ndim == 2 else b.reshape(x, (-1, x.shape[-1]))
        y = self._int8_matmul(x2)
        return y if x.ndim == 2 else b.reshape(y, lead + (self.units,))

    def get_config(self):
        config = super().get_config()
        config["units"] = self.units
        return config


class QuantizedConv2D(_Int8Layer):
    """Conv2D (groups 1, linear or relu) on int8_im2col + the int8 GEMM; ``kernel`` int8
    (KH, KW, C, F) as Keras's."""

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid",
                 dilation_rate=(1, 1), activation="linear", use_bias=True, **kwargs):
        super().__init__(activation=activation, use_bias=use_bias, **kwargs)
        self.filters = int(filters)
        self.kernel_size = tuple(int(v) for v in kernel_size)
        self.strides = tuple(int(v) for v in strides)
        self.padding = padding
        self.dilation_rate = tuple(int(v) for v in dilation_rate)

    @classmethod
    def from_conv(cls, conv, x_params=None, y_params=None):
        static = _static_config(x_params, y_params)
        layer = cls(conv.filters, conv.kernel_size, conv.strides, conv.padding,
                    conv.dilation_rate, conv.activation, conv.use_bias, name=conv.name,
                    **static)
        layer.build(conv.input_shape)
        b = backend.current()
        layer.set_from_float(b.to_numpy(conv.kernel.value),
                             b.to_numpy(conv.bias.value) if conv.use_bias else None)
        return layer

    def build(self, input_shape):
        self._int8_weights(self.kernel_size + (int(input_shape[-1]), self.filters),
                           self.filters)
        super().build(input_shape)

    def _out_hw(self, h, w):
        out = []
        for size, k, s, d in zip((h, w), self.kernel_size, self.strides, self.dilation_rate):
            span = (k - 1) * d + 1
            out.append(-(-size // s) if self.padding == "same" else (size - span) // s + 1)
        return out

    def compute_output_shape(self, input_shape):
        ho, wo = self._out_hw(input_shape[1], input_shape[2])
        return (input_shape[0], ho, wo, self.filters)

    def call(self, x, training=False):
        b = backend.current()
        n, h, w, _ = x.shape
        ho, wo = self._out_hw(h, w)
        # (q8) the conv op, not int8_im2col + int8_dense_forward: the same bits without the
        # patch matrix (19 MB at batch 64 of 32x32x32 inputs, most of the layer's time)
        y = self._int8_matmul(x, conv=(self.kernel_size, self.strides, self.padding,
                                       self.dilation_rate))
        return b.reshape(y, (n, ho, wo, self.filters))

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size,
                      strides=self.strides, padding=self.padding,
                      dilation_rate=self.dilation_rate)
        return config


class QuantizedMaxPooling2D(MaxPooling2D):
    """MaxPooling2D between two int8 layers of a static chain: uint8 codes in and out
    (``int8_max_pool2d``; max commutes with the monotone requantization, so the codes of the
    pooled values are the pooled codes). ``quantize`` makes it; inference only."""

    def call(self, x, training=False):
        return backend.current().int8_max_pool2d(x, self.pool_size, self.strides,
                                                 self.padding)

    def backward(self, dy):
        raise NotImplementedError(f"QuantizedMaxPooling2D '{self.name}' is for inference; "
                                  f"train the float model, or quantize_aware's")


class FakeQuant(Layer):
    """uint8 fake quantization of activations with a tracked range; STE gradient."""

    supports_masking = True  # it stands between two layers: their mask passes on

    def __init__(self, momentum=0.99, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"FakeQuant '{self.name}': momentum must be in [0, 1), got "
                             f"{momentum!r}")
        self.momentum = float(momentum)

    def build(self, input_shape):
        # [min, max, batches seen]: state, not trained (as BatchNormalization's moving stats)
        self.range = self.add_weight("range", (3,), "zeros", trainable=False)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def quant_params(self):
        """(scale, zero_point) of the tracked range."""
        lo, hi, _ = np.asarray(backend.current().to_numpy(self.range.value), np.float64)
        return activation_params(np.array([lo, hi]))

    def call(self, x, training=False):
        b = backend.current()
        if training:
            lo = float(np.asarray(b.to_numpy(b.reduce_axes(x, None, "min", False))))
            hi = float(np.asarray(b.to_numpy(b.reduce_axes(x, None, "max", False))))
            old_lo, old_hi, seen = np.asarray(b.to_numpy(self.range.value), np.float64)
            if seen:
                m = self.momentum
                lo, hi = m * old_lo + (1 - m) * lo, m * old_hi + (1 - m) * hi
            self.range.value = b.asarray(np.array([lo, hi, seen + 1], np.float64), self.dtype)
        scale, zero_point = self.quant_params()
        y = b.dequantize_forward(b.quantize_forward(x, scale, zero_point), scale, zero_point)
        if training:
            # the STE's pass-through region: the grid's ends, (0 - zp) s and (255 - zp) s
            ends = [b.asarray(np.array([v], np.float32), np.float32)
                    for v in ((0 - zero_point) * scale, (255 - zero_point) * scale)]
            self._cache = b.elementwise_binary(b.elementwise_binary(x, ends[0], "greater_equal"),
                                               b.elementwise_binary(x, ends[1], "less_equal"),
                                               "multiply")
        return y

    def backward(self, dy):
        if not self.needs_input_grad:
            return None
        return backend.current().elementwise_binary(dy, self._cache, "multiply")

    def get_config(self):
        config = super().get_config()
        config["momentum"] = self.momentum
        return config


def _int8_twin(layer, x_params=None, y_params=None):
    """The int8 layer replacing ``layer``, or None when it has no int8 kernel."""
    from pynn.layers.conv import Conv2D
    from pynn.layers.core import Dense

    if getattr(layer, "activation", None) not in ("linear", "relu"):
        return None
    if type(layer) is Dense:
        return QuantizedDense.from_dense(layer, x_params, y_params)
    if type(layer) is Conv2D and getattr(layer, "groups", 1) == 1:
        return QuantizedConv2D.from_conv(layer, x_params, y_params)
    return None



# -- int8 chains (issue 18, branch q8) -----------------------------------------------------
def _passes_uint8(layer):
    """Layers the uint8 codes may cross between two int8 layers: reshapes and inference's
    identity (their values are the input's), and max pooling (its int8 twin)."""
    from pynn.layers.core import Dropout, Flatten

    return type(layer) in (Flatten, Dropout, MaxPooling2D)


def chain_uint8(graph, twins):
    """Mark, in ``twins`` ({id(float layer): its int8 twin}, ``quantize``'s), the static
    QuantizedDense / QuantizedConv2D whose output reaches only such layers (through Flatten,
    Dropout and MaxPooling2D, the last made QuantizedMaxPooling2D and added to ``twins``):
    the producer emits uint8 and each consumer takes it with the producer's output scale and
    zero point (after a pool calibration saw a narrower range; the producer's covers it)."""
    consumers, calls = {}, {}
    for node in graph.nodes:
        if node.is_input:
            continue
        calls[id(node.layer)] = calls.get(id(node.layer), 0) + 1
        for t in node.inputs:
            consumers.setdefault(id(t), []).append(node)
    outputs = {id(t) for t in graph.outputs}

    def static(layer):
        twin = twins.get(id(layer))
        return (type(twin) in (QuantizedDense, QuantizedConv2D) and
                twin.input_scale is not None and calls[id(layer)] == 1)

    for node in graph.nodes:
        if node.is_input or not static(node.layer) or node.several:
            continue
        sinks, pools, frontier, ok = [], [], [node.outputs[0]], True
        while frontier and ok:
            t = frontier.pop()
            users = consumers.get(id(t), [])
            if id(t) in outputs or not users:
                ok = False
                break
            for user in users:
                layer = user.layer
                if user.several or calls[id(layer)] != 1:
                    ok = False
                elif static(layer):
                    sinks.append(layer)
                elif _passes_uint8(layer) and id(layer) not in twins:
                    if type(layer) is MaxPooling2D:
                        pools.append(layer)
                    frontier.append(user.outputs[0])
                else:
                    ok = False
        if not ok or not sinks:
            continue
        producer = twins[id(node.layer)]
        producer.output_uint8 = True
        for layer in sinks:
            consumer = twins[id(layer)]
            consumer.input_uint8 = True
            consumer.input_scale = producer.output_scale
            consumer.input_zero_point = producer.output_zero_point
            consumer._packed = None  # its multiplier follows the input scale
        for pool in pools:
            twin = QuantizedMaxPooling2D.from_config(pool.get_config())
            twin.build(pool.input_shape)
            twins[id(pool)] = twin
# -- end int8 chains --
