"""Export of pynn models (Sequential and functional) to ONNX: ``pynn.onnx.export``.

    import pynn.onnx
    pynn.onnx.export(model, "m.onnx")            # batch axis dynamic, opset DEFAULT_OPSET
    # onnxruntime.InferenceSession("m.onnx").run(None, {"input_layer": x}) == model.predict(x)

The ``onnx`` package is an optional extra (``pip install pynn[onnx]``), imported only when
``export`` runs. The graph is float32, takes the model's own inputs (NHWC images, (N, T, C)
sequences, int token ids) and gives its outputs, named after the Input layers and the
output layers.

Layout. pynn is channels-last; ONNX's Conv, ConvTranspose, pooling and the RNN ops want the
channels (or the time axis) elsewhere. Every exported tensor therefore carries a
permutation: the ONNX tensor is ``transpose(pynn_tensor, perm)``. Layers that need a layout
ask for it and a Transpose is emitted only when the tensor is not already in it; elementwise
layers, padding, cropping, normalization by a constant, pooling and Permute work in
whatever layout their input has. A chain conv-pool-conv-pool therefore stays NCHW from its
first Transpose to the Flatten, and a transposed tensor is remembered, so a value read in two
layouts is transposed once (never back and forth).

A layer ONNX cannot express (or this exporter does not know) is a ValueError naming it.
"""

import hashlib
import math

import numpy as np

DEFAULT_OPSET = 17
# Opset 13 made Softmax act on one axis and Squeeze/Unsqueeze/ReduceSum take their axes as
# inputs: older opsets would need a second code path for each.
MIN_OPSET = 13
_INT64_MAX = np.iinfo(np.int64).max
_INT64_MIN = np.iinfo(np.int64).min

# torch's (and so Keras 3's torch backend's) SELU constants, as float32 rounds them.
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_GAMMA = 1.0507009873554804934193349852946


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("pynn.onnx.export needs the 'onnx' package: install the optional "
                          "extra with `pip install pynn[onnx]` (or `pip install onnx`)") from None
    return onnx


def _identity(rank):
    return tuple(range(rank))


def _channels_first(rank):
    """NHWC -> NCHW (and (N, T, C) -> (N, C, T)): the layout of ONNX's Conv and pooling."""
    return (0, rank - 1) + tuple(range(1, rank - 1))


class _Tensor:
    """One pynn tensor as it exists in the ONNX graph: ``name`` holds
    ``transpose(pynn_tensor, perm)``; ``shape`` is pynn's (batch None); ``key`` names the
    logical tensor, shared by its copies in other layouts."""

    __slots__ = ("dtype", "key", "name", "perm", "shape")

    def __init__(self, name, shape, perm, key, dtype="float32"):
        self.name, self.shape, self.perm, self.key, self.dtype = name, tuple(shape), perm, key, dtype

    def axis(self, a):
        """Where pynn axis ``a`` (negative counts from the end) sits in the ONNX tensor."""
        return self.perm.index(a % len(self.shape))


class _Builder:
    """The graph being written: nodes, initializers, fresh names, and the layout cache."""

    def __init__(self, onnx, opset):
        self.onnx, self.opset = onnx, opset
        self.helper = onnx.helper
        self.nodes, self.initializers = [], []
        self._names = set()
        self._layouts = {}  # key -> {perm: _Tensor}
        self._keys = 0
        self._constants = {}  # (dtype, shape, digest) -> initializer name

    def fresh(self, hint):
        hint = "".join(c if c.isalnum() or c in "_./-" else "_" for c in str(hint)) or "t"
        name, k = hint, 1
        while name in self._names:
            name, k = f"{hint}_{k}", k + 1
        self._names.add(name)
        return name

    def tensor(self, name, shape, perm=None, dtype="float32"):
        self._keys += 1
        t = _Tensor(name, shape, perm or _identity(len(shape)), self._keys, dtype)
        self._layouts[t.key] = {t.perm: t}
        return t

    def derived(self, t, name, shape=None, perm=None, dtype=None):
        """A new logical tensor computed from ``t`` (default: same shape and layout)."""
        return self.tensor(name, t.shape if shape is None else shape,
                           t.perm if perm is None else perm, dtype or t.dtype)

    def const(self, value, hint, dtype=np.float32):
        """An initializer; equal arrays are stored once (a shared layer's weights, called
        twice, and the many small constants)."""
        value = np.array(value, dtype=dtype, order="C")   # a scalar stays 0-d
        key = (value.dtype.str, value.shape, hashlib.sha1(value.tobytes()).digest())
        if key not in self._constants:
            name = self.fresh(hint)
            self.initializers.append(self.onnx.numpy_helper.from_array(value, name))
            self._constants[key] = name
        return self._constants[key]

    def ints(self, values, hint):
        return self.const(np.asarray(values, dtype=np.int64), hint, np.int64)

    def op(self, op_type, inputs, hint, outputs=1, **attrs):
        names = [self.fresh(f"{hint}_{i}" if outputs > 1 else hint) for i in range(outputs)]
        self.nodes.append(self.helper.make_node(op_type, list(inputs), names,
                                                name=self.fresh(f"{hint}/{op_type}"), **attrs))
        return names if outputs > 1 else names[0]

    def layout(self, t, perm):
        """``t`` in layout ``perm``: the copy made before, or one Transpose."""
        perm = tuple(perm)
        copies = self._layouts[t.key]
        if perm not in copies:
            # out[i] = pynn axis perm[i], which sits at t.perm.index(perm[i]) in t.
            order = [t.perm.index(p) for p in perm]
            name = self.op("Transpose", [t.name], f"{t.name}_T", perm=order)
            copies[perm] = _Tensor(name, t.shape, perm, t.key, t.dtype)
        return copies[perm]

    def nhwc(self, t):
        return self.layout(t, _identity(len(t.shape)))

    def nchw(self, t):
        return self.layout(t, _channels_first(len(t.shape)))

    # -- ops whose form changed between opsets --------------------------------------------
    def reduce(self, op_type, x, axes, hint, keepdims=True):
        """Reduce* over ``axes`` (ONNX positions): axes became an input in opset 13 for
        ReduceSum and in opset 18 for the others."""
        axes = [int(a) for a in axes]
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, [x, self.ints(axes, f"{hint}_axes")], hint,
                           keepdims=int(keepdims))
        return self.op(op_type, [x], hint, axes=axes, keepdims=int(keepdims))

    def squeeze(self, x, axes, hint):
        return self.op("Squeeze", [x, self.ints(axes, f"{hint}_axes")], hint)

    def unsqueeze(self, x, axes, hint):
        return self.op("Unsqueeze", [x, self.ints(axes, f"{hint}_axes")], hint)


def _label(layer):
    return f"{type(layer).__name__} '{layer.name}'"


def _unsupported(layer, why):
    return ValueError(f"pynn.onnx.export: {_label(layer)} cannot be exported: {why}")


def _host(var):
    v = var.value if hasattr(var, "value") else var
    v = v.get() if hasattr(v, "get") else v
    return np.asarray(v, dtype=np.float64)


# -- activations -------------------------------------------------------------------------
def _activation(g, x, name, alpha, hint, axis=-1):
    """ONNX nodes of pynn's activation ``name`` on tensor name ``x`` (softmax along ONNX axis
    ``axis``); the definitions are those of tests/reference/activation_ref.py."""
    if name == "linear":
        return x
    simple = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softplus": "Softplus",
              "softsign": "Softsign", "exponential": "Exp"}
    if name in simple:
        return g.op(simple[name], [x], hint)
    if name == "softmax":
        return g.op("Softmax", [x], hint, axis=axis)
    if name == "leaky_relu":
        return g.op("LeakyRelu", [x], hint, alpha=float(alpha))
    if name == "elu":
        return g.op("Elu", [x], hint, alpha=float(alpha))
    if name == "selu":
        return g.op("Selu", [x], hint, alpha=_SELU_ALPHA, gamma=_SELU_GAMMA)
    if name == "relu6":
        return g.op("Clip", [x, g.const(0.0, f"{hint}_min"), g.const(6.0, f"{hint}_max")], hint)
    if name == "hard_sigmoid":  # Keras 3 / torch: relu6(x + 3) / 6
        return g.op("HardSigmoid", [x], hint, alpha=1.0 / 6.0, beta=0.5)
    if name == "silu":
        return g.op("Mul", [x, g.op("Sigmoid", [x], f"{hint}_sigmoid")], hint)
    if name == "hard_silu":
        gate = g.op("HardSigmoid", [x], f"{hint}_gate", alpha=1.0 / 6.0, beta=0.5)
        return g.op("Mul", [x, gate], hint)
    if name == "mish":
        soft = g.op("Softplus", [x], f"{hint}_softplus")
        return g.op("Mul", [x, g.op("Tanh", [soft], f"{hint}_tanh")], hint)
    if name == "gelu":  # the exact erf form, as pynn's kernels
        scaled = g.op("Div", [x, g.const(math.sqrt(2.0), f"{hint}_sqrt2")], f"{hint}_scaled")
        erf1 = g.op("Add", [g.op("Erf", [scaled], f"{hint}_erf"), g.const(1.0, f"{hint}_one")],
                    f"{hint}_erf1")
        half_x = g.op("Mul", [x, g.const(0.5, f"{hint}_half")], f"{hint}_halfx")
        return g.op("Mul", [half_x, erf1], hint)
    # -- Keras 3's remaining activations (alpha: celu's alpha, the shrinks' threshold,
    # squareplus's b); glu and sparsemax change or sort the last axis: _apply_activation
    if name == "celu":
        return g.op("Celu", [x], hint, alpha=float(alpha))
    if name in ("hard_shrink", "soft_shrink"):
        bias = float(alpha) if name == "soft_shrink" else 0.0
        return g.op("Shrink", [x], hint, lambd=float(alpha), bias=bias)
    if name == "hard_tanh":
        return g.op("Clip", [x, g.const(-1.0, f"{hint}_min"), g.const(1.0, f"{hint}_max")], hint)
    if name == "sparse_sigmoid":  # clip((x + 1) / 2, 0, 1)
        return g.op("HardSigmoid", [x], hint, alpha=0.5, beta=0.5)
    if name == "log_sigmoid":  # min(x, 0) - log(1 + exp(-|x|)): no exp overflows
        tail = g.op("Exp", [g.op("Neg", [g.op("Abs", [x], f"{hint}_abs")], f"{hint}_neg")],
                    f"{hint}_exp")
        log1p = g.op("Log", [g.op("Add", [tail, g.const(1.0, f"{hint}_one")], f"{hint}_1p")],
                     f"{hint}_log1p")
        low = g.op("Min", [x, g.const(0.0, f"{hint}_zero")], f"{hint}_min")
        return g.op("Sub", [low, log1p], hint)
    if name == "log_softmax":
        return g.op("LogSoftmax", [x], hint, axis=axis)
    if name == "sparse_plus":  # (clip(x, -1, 1) + 1)^2 / 4 + relu(x - 1)
        c = g.op("Clip", [x, g.const(-1.0, f"{hint}_min"), g.const(1.0, f"{hint}_max")],
                 f"{hint}_clip")
        c1 = g.op("Add", [c, g.const(1.0, f"{hint}_one")], f"{hint}_c1")
        sq = g.op("Mul", [g.op("Mul", [c1, c1], f"{hint}_sq"), g.const(0.25, f"{hint}_q")],
                  f"{hint}_quarter")
        above = g.op("Relu", [g.op("Sub", [x, g.const(1.0, f"{hint}_one")], f"{hint}_xm1")],
                     f"{hint}_above")
        return g.op("Add", [sq, above], hint)
    if name == "squareplus":  # (x + sqrt(x^2 + b)) / 2
        root = g.op("Sqrt", [g.op("Add", [g.op("Mul", [x, x], f"{hint}_x2"),
                                          g.const(float(alpha), f"{hint}_b")], f"{hint}_x2b")],
                    f"{hint}_sqrt")
        return g.op("Mul", [g.op("Add", [x, root], f"{hint}_sum"), g.const(0.5, f"{hint}_half")],
                    hint)
    if name == "tanh_shrink":
        return g.op("Sub", [x, g.op("Tanh", [x], f"{hint}_tanh")], hint)
    raise ValueError(f"activation {name!r}")


def _glu(g, layer, t, hint):
    """Keras's glu on the last pynn axis: its halves a, b -> a * sigmoid(b)."""
    k = t.shape[-1]
    if k is None:
        raise _unsupported(layer, "glu needs a known last axis")
    a, b = g.op("Split", [t.name, g.ints([k // 2, k // 2], f"{hint}_halves")], hint,
                outputs=2, axis=t.axis(-1))
    y = g.op("Mul", [a, g.op("Sigmoid", [b], f"{hint}_gate")], f"{hint}_glu")
    return g.derived(t, y, shape=tuple(t.shape[:-1]) + (k // 2,))


def _sparsemax(g, layer, t, hint):
    """Keras 3.15's sparsemax formula on the last pynn axis, op for op (TopK sorts, CumSum;
    tau sums the support's cumulative sums, as Keras does)."""
    k, axis = t.shape[-1], t.axis(-1)
    if k is None:
        raise _unsupported(layer, "sparsemax needs a known last axis")
    z, _ = g.op("TopK", [t.name, g.ints([k], f"{hint}_k")], f"{hint}_sorted", outputs=2,
                axis=axis, largest=1, sorted=1)
    cum = g.op("CumSum", [z, g.const(np.int64(axis), f"{hint}_axis", np.int64)], f"{hint}_cum")
    ranks = np.arange(1, k + 1, dtype=np.float32).reshape(
        [k if i == axis else 1 for i in range(len(t.shape))])
    one = g.const(1.0, f"{hint}_one")
    bound = g.op("Div", [g.op("Sub", [cum, one], f"{hint}_cm1"), g.const(ranks, f"{hint}_r")],
                 f"{hint}_bound")
    support = g.op("Greater", [g.op("Sub", [z, bound], f"{hint}_gap"),
                               g.const(0.0, f"{hint}_zero")], f"{hint}_support")
    count = g.reduce("ReduceSum", g.op("Cast", [support], f"{hint}_count1",
                                       to=g.onnx.TensorProto.FLOAT), [axis], f"{hint}_count")
    sums = g.reduce("ReduceSum", g.op("Where", [support, cum, g.const(0.0, f"{hint}_zero")],
                                      f"{hint}_safe"), [axis], f"{hint}_sums")
    tau = g.op("Div", [g.op("Sub", [sums, one], f"{hint}_sm1"), count], f"{hint}_tau")
    y = g.op("Relu", [g.op("Sub", [t.name, tau], f"{hint}_shift")], hint)
    return g.derived(t, y)


def _apply_activation(g, layer, t, name, alpha, hint):
    """``t`` through an activation, in ``t``'s layout (softmax follows the last pynn axis)."""
    if name == "glu":  # Keras 3's row activations that reshape or sort the last axis
        return _glu(g, layer, t, hint)
    if name == "sparsemax":
        return _sparsemax(g, layer, t, hint)
    try:
        out = _activation(g, t.name, name, alpha, hint, axis=t.axis(-1))
    except ValueError:
        raise _unsupported(layer, f"activation {name!r} has no ONNX form here") from None
    return t if out == t.name else g.derived(t, out)


# -- layer converters: (builder, layer, inputs, output shape) -> _Tensor ----------------
_CONVERTERS = {}


def _converts(*class_names):
    def register(fn):
        for n in class_names:
            _CONVERTERS[n] = fn
        return fn
    return register


@_converts("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
           "GaussianNoise", "GaussianDropout", "Identity", "ActivityRegularization", "RandomFlip",
           "RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast",
           "RandomBrightness")
def _identity_layer(g, layer, x, out_shape):
    return x  # inference: the noise and augmentation layers are the identity (Keras)


# -- auggeo: Keras 3's geometric, erasing and mixing augmentations (identity at inference) --
_converts("RandomShear", "RandomPerspective", "RandomErasing", "CutMix", "MixUp",
          "RandomGaussianBlur", "RandomElasticTransform")(_identity_layer)


@_converts("Activation")
def _activation_layer(g, layer, x, out_shape):
    return _apply_activation(g, layer, x, layer.activation, layer.alpha, layer.name)


@_converts("LeakyReLU", "ELU")
def _parametric_activation(g, layer, x, out_shape):
    return _apply_activation(g, layer, x, layer.activation, layer._alpha(), layer.name)


@_converts("ReLU")
def _relu(g, layer, x, out_shape):
    mv, slope, th = layer.max_value, layer.negative_slope, layer.threshold
    hint = layer.name
    if slope == 0.0 and th == 0.0:
        if mv is None:
            return g.derived(x, g.op("Relu", [x.name], hint))
        return g.derived(x, g.op("Clip", [x.name, g.const(0.0, f"{hint}_min"),
                                          g.const(mv, f"{hint}_max")], hint))
    # relu_forward_ref, term by term: where(x > th, x, 0) clipped to max_value, minus the
    # negative part below the threshold.
    zero = g.const(0.0, f"{hint}_zero")
    above = g.op("Greater", [x.name, g.const(th, f"{hint}_th")], f"{hint}_above")
    pos = g.op("Where", [above, x.name, zero], f"{hint}_pos")
    if mv is not None:
        pos = g.op("Clip", [pos, zero, g.const(mv, f"{hint}_max")], f"{hint}_clip")
    if slope != 0.0:
        below = g.op("Relu", [g.op("Sub", [g.const(th, f"{hint}_th2"), x.name], f"{hint}_d")],
                     f"{hint}_below")
        neg = g.op("Mul", [below, g.const(slope, f"{hint}_slope")], f"{hint}_neg")
        pos = g.op("Sub", [pos, neg], hint)
    return g.derived(x, pos)


@_converts("PReLU")
def _prelu(g, layer, x, out_shape):
    alpha = np.transpose(_host(layer.alpha)[None], x.perm)  # alpha in x's layout
    return g.derived(x, g.op("PRelu", [x.name, g.const(alpha, f"{layer.name}_alpha")],
                             layer.name))


@_converts("Softmax")
def _softmax(g, layer, x, out_shape):
    return g.derived(x, g.op("Softmax", [x.name], layer.name, axis=x.axis(layer.axis)))


@_converts("Dense")
def _dense(g, layer, x, out_shape):
    x = g.nhwc(x)
    hint = layer.name
    kernel = g.const(_host(layer.kernel), f"{hint}_kernel")
    if len(x.shape) == 2:
        inputs = [x.name, kernel] + ([g.const(_host(layer.bias), f"{hint}_bias")]
                                     if layer.use_bias else [])
        y = g.op("Gemm", inputs, f"{hint}_gemm")
    else:
        y = g.op("MatMul", [x.name, kernel], f"{hint}_matmul")
        if layer.use_bias:
            y = g.op("Add", [y, g.const(_host(layer.bias), f"{hint}_bias")], f"{hint}_add")
    t = g.tensor(y, out_shape)
    return _apply_activation(g, layer, t, layer.activation, layer.alpha, hint)


@_converts("EinsumDense")
def _einsum_dense(g, layer, x, out_shape):
    """ONNX's Einsum on the equation with the ellipsis spelled out (the layer's own
    letters), then the bias and the activation."""
    x = g.nhwc(x)
    hint = layer.name
    inp, out = layer._full_terms(len(x.shape))
    # ONNX's Einsum spells its axes in lower-case letters
    letters = {c: chr(ord("a") + i) for i, c in enumerate(dict.fromkeys(inp + layer._kernel))}
    spell = "".join
    kernel = g.const(_host(layer.kernel), f"{hint}_kernel")
    y = g.op("Einsum", [x.name, kernel], f"{hint}_einsum",
             equation=f"{spell(letters[c] for c in inp)},"
                      f"{spell(letters[c] for c in layer._kernel)}->"
                      f"{spell(letters[c] for c in out)}")
    if layer.bias is not None:
        y = g.op("Add", [y, g.const(_host(layer.bias), f"{hint}_bias")], f"{hint}_add")
    t = g.tensor(y, out_shape)
    return _apply_activation(g, layer, t, layer.activation, layer.alpha, hint)


def _same_pads(sizes, kernel, strides, dilation):
    """Keras's 'same' pads per axis (begin, end): the odd pixel after."""
    begins, ends = [], []
    for n, k, s, d in zip(sizes, kernel, strides, dilation):
        k_eff = (k - 1) * d + 1
        out = -(-n // s)
        total = max((out - 1) * s + k_eff - n, 0)
        begins.append(total // 2)
        ends.append(total - total // 2)
    return begins + ends


def _window_pads(layer, x, kernel, strides, dilation, padding):
    if padding == "valid":
        return [0] * (2 * len(kernel))
    sizes = x.shape[1:-1]
    if any(s is None for s in sizes):
        raise _unsupported(layer, f"padding='same' needs the spatial size, which is unknown "
                                  f"in input shape {x.shape}")
    return _same_pads(sizes, kernel, strides, dilation)


def _conv(g, layer, x, out_shape, w, bias, kernel, strides, dilation, pads, group, hint,
          activation=None, alpha=0.0):
    """One ONNX Conv on x (channels-first), then bias and activation in that layout."""
    x = g.nchw(x)
    inputs = [x.name, g.const(w, f"{hint}_W")]
    if bias is not None:
        inputs.append(g.const(bias, f"{hint}_B"))
    y = g.op("Conv", inputs, hint, kernel_shape=list(kernel), strides=list(strides),
             dilations=list(dilation), pads=list(pads), group=int(group))
    t = g.tensor(y, out_shape, _channels_first(len(out_shape)))
    if activation is None:
        return t
    return _apply_activation(g, layer, t, activation, alpha, f"{hint}_act")


def _bias(layer):
    return _host(layer.bias) if layer.use_bias else None


@_converts("Conv2D")
def _conv2d(g, layer, x, out_shape):
    # Keras (kh, kw, C/g, F) -> ONNX (F, C/g, kh, kw); grouped convs split F the same way.
    w = _host(layer.kernel).transpose(3, 2, 0, 1)
    pads = _window_pads(layer, x, layer.kernel_size, layer.strides, layer.dilation_rate,
                        layer.padding)
    return _conv(g, layer, x, out_shape, w, _bias(layer), layer.kernel_size, layer.strides,
                 layer.dilation_rate, pads, layer.groups, layer.name, layer.activation,
                 layer.alpha)


@_converts("Conv1D")
def _conv1d(g, layer, x, out_shape):
    w = _host(layer.kernel).transpose(2, 1, 0)  # (k, C/g, F) -> (F, C/g, k)
    k, s, d = (layer.kernel_size,), (layer.strides,), (layer.dilation_rate,)
    if layer.padding == "causal":
        pads = [layer.dilation_rate * (layer.kernel_size - 1), 0]
    else:
        pads = _window_pads(layer, x, k, s, d, layer.padding)
    return _conv(g, layer, x, out_shape, w, _bias(layer), k, s, d, pads, layer.groups,
                 layer.name, layer.activation, layer.alpha)


@_converts("DepthwiseConv2D")
def _depthwise(g, layer, x, out_shape):
    kernel = _host(layer.kernel)  # (kh, kw, C, m): output channel c*m + j, as ONNX's groups
    kh, kw, c, m = kernel.shape
    w = kernel.reshape(kh, kw, c * m).transpose(2, 0, 1)[:, None]
    pads = _window_pads(layer, x, layer.kernel_size, layer.strides, layer.dilation_rate,
                        layer.padding)
    return _conv(g, layer, x, out_shape, w, _bias(layer), layer.kernel_size, layer.strides,
                 layer.dilation_rate, pads, c, layer.name, layer.activation, layer.alpha)


@_converts("SeparableConv2D")
def _separable(g, layer, x, out_shape):
    kernel = _host(layer.depthwise_kernel)
    kh, kw, c, m = kernel.shape
    w = kernel.reshape(kh, kw, c * m).transpose(2, 0, 1)[:, None]
    pads = _window_pads(layer, x, layer.kernel_size, layer.strides, layer.dilation_rate,
                        layer.padding)
    mid_shape = out_shape[:-1] + (c * m,)
    t = _conv(g, layer, x, mid_shape, w, None, layer.kernel_size, layer.strides,
              layer.dilation_rate, pads, c, f"{layer.name}_depthwise")
    pw = _host(layer.pointwise_kernel).transpose(3, 2, 0, 1)
    return _conv(g, layer, t, out_shape, pw, _bias(layer), (1, 1), (1, 1), (1, 1),
                 [0, 0, 0, 0], 1, layer.name, layer.activation, layer.alpha)


def _conv_transpose(g, layer, x, out_shape, w, kernel, strides, dilation, output_padding):
    """One ONNX ConvTranspose (w as ONNX's (C, F, k...)) reproducing pynn's output size
    rule, then bias and activation."""
    from pynn.backend.operands.conv import conv_transpose_output_size

    spatial = x.shape[1:-1]
    if any(s is None for s in spatial):
        raise _unsupported(layer, f"the spatial size is unknown in input shape {x.shape}")
    begins, ends, extra = [], [], []
    for n, k, s, d, p in zip(spatial, kernel, strides, dilation, output_padding):
        crop, full, out = conv_transpose_output_size(n, k, s, d, layer.padding, p)
        # Output row o is the full transposed conv's row o + crop; rows past the full
        # output (an output_padding) hold the bias only: ONNX's output_padding rows.
        kept = full - crop
        begins.append(crop)
        ends.append(max(kept - out, 0))
        extra.append(max(out - kept, 0))
    x = g.nchw(x)
    hint = layer.name
    inputs = [x.name, g.const(w, f"{hint}_W")]
    if layer.use_bias:
        inputs.append(g.const(_host(layer.bias), f"{hint}_B"))
    y = g.op("ConvTranspose", inputs, hint, kernel_shape=list(kernel), strides=list(strides),
             dilations=list(dilation), pads=begins + ends, output_padding=extra)
    t = g.tensor(y, out_shape, _channels_first(len(out_shape)))
    return _apply_activation(g, layer, t, layer.activation, layer.alpha, f"{hint}_act")


@_converts("Conv2DTranspose")
def _conv2d_transpose(g, layer, x, out_shape):
    w = _host(layer.kernel).transpose(3, 2, 0, 1)  # (kh, kw, F, C) -> (C, F, kh, kw)
    return _conv_transpose(g, layer, x, out_shape, w, layer.kernel_size, layer.strides,
                           layer.dilation_rate, layer.output_padding or (None, None))


@_converts("Conv1DTranspose")
def _conv1d_transpose(g, layer, x, out_shape):
    w = _host(layer.kernel).transpose(2, 1, 0)  # (k, F, C) -> (C, F, k)
    return _conv_transpose(g, layer, x, out_shape, w, (layer.kernel_size,), (layer.strides,),
                           (layer.dilation_rate,), (layer.output_padding,))


@_converts("SeparableConv1D")
def _separable1d(g, layer, x, out_shape):
    kernel = _host(layer.depthwise_kernel)  # (k, C, m): output channel c*m + j
    k, c, m = kernel.shape
    w = kernel.reshape(k, c * m).transpose(1, 0)[:, None]
    ks, s, d = (layer.kernel_size,), (layer.strides,), (layer.dilation_rate,)
    if layer.padding == "causal":
        pads = [layer.dilation_rate * (layer.kernel_size - 1), 0]
    else:
        pads = _window_pads(layer, x, ks, s, d, layer.padding)
    t = _conv(g, layer, x, out_shape[:-1] + (c * m,), w, None, ks, s, d, pads, c,
              f"{layer.name}_depthwise")
    pw = _host(layer.pointwise_kernel).transpose(2, 1, 0)  # (1, C*m, F) -> (F, C*m, 1)
    return _conv(g, layer, t, out_shape, pw, _bias(layer), (1,), (1,), (1,), [0, 0], 1,
                 layer.name, layer.activation, layer.alpha)


def _pool(g, layer, x, out_shape, kernel, strides, padding):
    pads = _window_pads(layer, x, kernel, strides, (1,) * len(kernel), padding)
    x = g.nchw(x)
    attrs = {"kernel_shape": list(kernel), "strides": list(strides), "pads": pads}
    if "Max" in type(layer).__name__:
        y = g.op("MaxPool", [x.name], layer.name, **attrs)
    else:  # Keras 'same' averages over the in-bounds pixels only
        y = g.op("AveragePool", [x.name], layer.name, count_include_pad=0, **attrs)
    return g.tensor(y, out_shape, x.perm)


@_converts("MaxPooling2D", "AveragePooling2D")
def _pool2d(g, layer, x, out_shape):
    return _pool(g, layer, x, out_shape, layer.pool_size, layer.strides, layer.padding)


@_converts("MaxPooling1D", "AveragePooling1D")
def _pool1d(g, layer, x, out_shape):
    return _pool(g, layer, x, out_shape, (layer.pool_size,), (layer.strides,), layer.padding)


@_converts("GlobalAveragePooling2D", "GlobalMaxPooling2D", "GlobalAveragePooling1D",
           "GlobalMaxPooling1D")
def _global_pool(g, layer, x, out_shape):
    op_type = "ReduceMax" if "Max" in type(layer).__name__ else "ReduceMean"
    spatial = [x.axis(a) for a in range(1, len(x.shape) - 1)]
    if layer.keepdims:
        return g.derived(x, g.reduce(op_type, x.name, spatial, layer.name), out_shape)
    # (N, C) whatever x's layout was: batch and channels keep their order.
    return g.tensor(g.reduce(op_type, x.name, spatial, layer.name, keepdims=False), out_shape)


def _channel_vector(x, v, axis=-1):
    """A per-channel vector shaped to broadcast along pynn axis ``axis`` of ``x``'s layout."""
    shape = [1] * len(x.shape)
    shape[x.axis(axis)] = -1
    return np.asarray(v, dtype=np.float64).reshape(shape)


@_converts("BatchNormalization")
def _batch_norm(g, layer, x, out_shape):
    # Inference: one scale and one shift per channel, computed here in float64.
    mean, var = _host(layer.moving_mean), _host(layer.moving_variance)
    gamma = _host(layer.gamma) if layer.gamma is not None else np.ones_like(mean)
    beta = _host(layer.beta) if layer.beta is not None else np.zeros_like(mean)
    scale = gamma / np.sqrt(var + layer.epsilon)
    shift = beta - mean * scale
    hint = layer.name
    y = g.op("Mul", [x.name, g.const(_channel_vector(x, scale, layer._axis), f"{hint}_scale")],
             f"{hint}_mul")
    y = g.op("Add", [y, g.const(_channel_vector(x, shift, layer._axis), f"{hint}_shift")],
             hint)
    return g.derived(x, y)


def _normalize(g, x_name, axes, epsilon, rms, hint):
    """(x - mean) / sqrt(var + eps) over ONNX ``axes`` (x / sqrt(var + eps) when ``rms``:
    pynn's rms_scaling keeps the centered variance but scales the raw input)."""
    mean = g.reduce("ReduceMean", x_name, axes, f"{hint}_mean")
    centered = g.op("Sub", [x_name, mean], f"{hint}_centered")
    var = g.reduce("ReduceMean", g.op("Mul", [centered, centered], f"{hint}_sq"), axes,
                   f"{hint}_var")
    std = g.op("Sqrt", [g.op("Add", [var, g.const(epsilon, f"{hint}_eps")], f"{hint}_vareps")],
               f"{hint}_std")
    return g.op("Div", [x_name if rms else centered, std], f"{hint}_normed")


def _scale_offset(g, y, gamma, beta, hint):
    if gamma is not None:
        y = g.op("Mul", [y, g.const(gamma, f"{hint}_gamma")], f"{hint}_scaled")
    if beta is not None:
        y = g.op("Add", [y, g.const(beta, f"{hint}_beta")], f"{hint}_shifted")
    return y


@_converts("LayerNormalization")
def _layer_norm(g, layer, x, out_shape):
    x = g.nhwc(x)
    rank = len(x.shape)
    first = rank - len(layer._shape)
    gamma = _host(layer.gamma) if layer.gamma is not None else None
    beta = _host(layer.beta) if layer.beta is not None else None
    hint = layer.name
    if g.opset >= 17 and not layer.rms_scaling:
        scale = gamma if gamma is not None else np.ones(layer._shape)
        inputs = [x.name, g.const(scale, f"{hint}_gamma")]
        if beta is not None:
            inputs.append(g.const(beta, f"{hint}_beta"))
        y = g.op("LayerNormalization", inputs, hint, axis=first, epsilon=layer.epsilon)
        return g.derived(x, y)
    y = _normalize(g, x.name, range(first, rank), layer.epsilon, layer.rms_scaling, hint)
    return g.derived(x, _scale_offset(g, y, gamma, beta, hint))


@_converts("GroupNormalization")
def _group_norm(g, layer, x, out_shape):
    x = g.nhwc(x)
    c, groups = x.shape[-1], layer._groups
    hint = layer.name
    # (N, ..., C) -> (N, S, G, C/G), as tests/reference/normalization_ref.py groups it.
    grouped = g.op("Reshape", [x.name, g.ints([0, -1, groups, c // groups], f"{hint}_gshape")],
                   f"{hint}_grouped")
    y = _normalize(g, grouped, (1, 3), layer.epsilon, False, hint)
    y = g.op("Reshape", [y, g.op("Shape", [x.name], f"{hint}_shape")], f"{hint}_ungrouped")
    gamma = _host(layer.gamma) if layer.gamma is not None else None
    beta = _host(layer.beta) if layer.beta is not None else None
    return g.derived(x, _scale_offset(g, y, gamma, beta, hint))


@_converts("RMSNormalization")
def _rms_norm(g, layer, x, out_shape):
    # x / sqrt(mean(x^2) + epsilon) * scale over the trailing axes (Keras's ops.rms_normalization)
    x = g.nhwc(x)
    rank = len(x.shape)
    hint = layer.name
    ms = g.reduce("ReduceMean", g.op("Mul", [x.name, x.name], f"{hint}_sq"),
                  range(rank - len(layer._shape), rank), f"{hint}_ms")
    rms = g.op("Sqrt", [g.op("Add", [ms, g.const(layer.epsilon, f"{hint}_eps")],
                             f"{hint}_mseps")], f"{hint}_rms")
    y = g.op("Div", [x.name, rms], f"{hint}_normed")
    return g.derived(x, _scale_offset(g, y, _host(layer.scale), None, hint))


@_converts("UnitNormalization")
def _unit_norm(g, layer, x, out_shape):
    # x * min(1 / sqrt(sum(x^2)), 1 / epsilon) (Keras's ops.normalize, order 2), in x's layout
    hint = layer.name
    ss = g.reduce("ReduceSum", g.op("Mul", [x.name, x.name], f"{hint}_sq"),
                  [x.axis(a) for a in layer._axes], f"{hint}_ss")
    inv = g.op("Reciprocal", [g.op("Sqrt", [ss], f"{hint}_norm")], f"{hint}_inv")
    inv = g.op("Min", [inv, g.const(1.0 / layer.EPSILON, f"{hint}_cap")], f"{hint}_capped")
    return g.derived(x, g.op("Mul", [x.name, inv], hint))


_MERGE_OPS = {"Add": "Sum", "Maximum": "Max", "Minimum": "Min", "Average": "Mean"}


@_converts("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")
def _merge(g, layer, xs, out_shape):
    perms = {x.perm for x in xs}
    ranks = {len(x.shape) for x in xs}
    if len(perms) > 1 or len(ranks) > 1:
        # Mixed layouts or ranks broadcast as pynn's shapes do only in pynn's layout.
        xs = [g.nhwc(x) for x in xs]
    names = [x.name for x in xs]
    kind = type(layer).__name__
    if kind == "Subtract":
        y = g.op("Sub", names, layer.name)
    elif kind == "Multiply":
        y = names[0]
        for k, n in enumerate(names[1:]):
            y = g.op("Mul", [y, n], f"{layer.name}_{k}" if k < len(names) - 2 else layer.name)
    else:
        y = g.op(_MERGE_OPS[kind], names, layer.name)
    return g.tensor(y, out_shape, xs[0].perm)


@_converts("Concatenate")
def _concatenate(g, layer, xs, out_shape):
    if len({x.perm for x in xs}) > 1:
        xs = [g.nhwc(x) for x in xs]
    y = g.op("Concat", [x.name for x in xs], layer.name, axis=xs[0].axis(layer.axis))
    return g.tensor(y, out_shape, xs[0].perm)


@_converts("Dot")
def _dot(g, layer, xs, out_shape):
    x1, x2 = (g.nhwc(x) for x in xs)
    a1, a2 = layer._resolved_axes([x1.shape, x2.shape])
    hint = layer.name
    names = []
    for x, a, tag in ((x1, a1, "l"), (x2, a2, "r")):
        n = x.name
        if layer.normalize:  # x / max(||x||, epsilon), merge_ref.normalize_ref
            ss = g.reduce("ReduceSum", g.op("Mul", [n, n], f"{hint}_{tag}_sq"), [a],
                          f"{hint}_{tag}_ss")
            norm = g.op("Max", [g.op("Sqrt", [ss], f"{hint}_{tag}_norm"),
                                g.const(1e-7, f"{hint}_{tag}_eps")], f"{hint}_{tag}_cap")
            n = g.op("Div", [n, norm], f"{hint}_{tag}_normalized")
        names.append(n)
    # batch_dot as merge_ref writes it: x1's summed axis last, x2's second, one batched
    # MatMul of (N, A, D) by (N, D, B).
    r1, r2 = len(x1.shape), len(x2.shape)
    order1 = [0] + [i for i in range(1, r1) if i != a1] + [a1]
    order2 = [0, a2] + [i for i in range(1, r2) if i not in (a2,)]
    left, right = names
    if order1 != sorted(order1):
        left = g.op("Transpose", [left], f"{hint}_left", perm=order1)
    if order2 != sorted(order2):
        right = g.op("Transpose", [right], f"{hint}_right", perm=order2)
    d = x1.shape[a1]
    left = g.op("Reshape", [left, g.ints([0, -1, d], f"{hint}_lshape")], f"{hint}_l3")
    right = g.op("Reshape", [right, g.ints([0, d, -1], f"{hint}_rshape")], f"{hint}_r3")
    y = g.op("MatMul", [left, right], f"{hint}_matmul")
    if any(s is None for s in out_shape[1:]):
        raise _unsupported(layer, f"its output shape {out_shape} has unknown axes")
    y = g.op("Reshape", [y, g.ints([-1] + list(out_shape[1:]), f"{hint}_shape")], hint)
    return g.tensor(y, out_shape)


@_converts("Flatten")
def _flatten(g, layer, x, out_shape):
    x = g.nhwc(x)  # pynn flattens in channels-last order
    return g.tensor(g.op("Flatten", [x.name], layer.name, axis=1), out_shape)


@_converts("Reshape")
def _reshape(g, layer, x, out_shape):
    x = g.nhwc(x)
    shape = g.ints([0] + list(layer.target_shape), f"{layer.name}_shape")
    return g.tensor(g.op("Reshape", [x.name, shape], layer.name), out_shape)


@_converts("Permute")
def _permute(g, layer, x, out_shape):
    # y = transpose(x, q) needs no node: the ONNX tensor of x is y in layout q^-1 . x.perm.
    q = (0,) + tuple(layer.dims)
    q_inverse = [q.index(i) for i in range(len(q))]
    return g.tensor(x.name, out_shape, tuple(q_inverse[p] for p in x.perm))


@_converts("RepeatVector")
def _repeat_vector(g, layer, x, out_shape):
    x = g.nhwc(x)
    hint = layer.name
    y = g.unsqueeze(x.name, [1], f"{hint}_unsqueeze")
    return g.tensor(g.op("Tile", [y, g.ints([1, layer.n, 1], f"{hint}_repeats")], hint),
                    out_shape)


@_converts("UpSampling2D")
def _upsampling(g, layer, x, out_shape):
    x = g.nchw(x)
    scales = [1.0] * 4
    scales[x.axis(1)], scales[x.axis(2)] = map(float, layer.size)
    hint = layer.name
    inputs = [x.name, "", g.const(scales, f"{hint}_scales")]
    if layer.interpolation == "nearest":  # Keras's repeat
        y = g.op("Resize", inputs, hint, mode="nearest",
                 coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    elif layer.interpolation == "bilinear":  # torch's interpolate, align_corners=False
        y = g.op("Resize", inputs, hint, mode="linear",
                 coordinate_transformation_mode="half_pixel")
    else:
        raise _unsupported(layer, f"interpolation={layer.interpolation!r}")
    return g.tensor(y, out_shape, x.perm)


def _spatial_pads(x, pairs):
    """ONNX (begins..., ends...) of ((top, bottom), (left, right)) in x's layout."""
    begins, ends = [0] * 4, [0] * 4
    for a, (before, after) in zip((1, 2), pairs):
        begins[x.axis(a)], ends[x.axis(a)] = before, after
    return begins + ends


@_converts("ZeroPadding2D")
def _zero_padding(g, layer, x, out_shape):
    pads = g.ints(_spatial_pads(x, layer.padding), f"{layer.name}_pads")
    return g.derived(x, g.op("Pad", [x.name, pads], layer.name), out_shape)


@_converts("Cropping2D")
def _cropping(g, layer, x, out_shape):
    hint = layer.name
    axes = [x.axis(1), x.axis(2)]
    starts = [p[0] for p in layer.cropping]
    ends = [-p[1] if p[1] else _INT64_MAX for p in layer.cropping]
    y = g.op("Slice", [x.name, g.ints(starts, f"{hint}_starts"), g.ints(ends, f"{hint}_ends"),
                       g.ints(axes, f"{hint}_axes")], hint)
    return g.derived(x, y, out_shape)


@_converts("ZeroPadding1D")
def _zero_padding1d(g, layer, x, out_shape):
    begins, ends = [0] * 3, [0] * 3
    begins[x.axis(1)], ends[x.axis(1)] = layer.padding
    pads = g.ints(begins + ends, f"{layer.name}_pads")
    return g.derived(x, g.op("Pad", [x.name, pads], layer.name), out_shape)


@_converts("Cropping1D")
def _cropping1d(g, layer, x, out_shape):
    hint = layer.name
    start, end = layer.cropping
    y = g.op("Slice", [x.name, g.ints([start], f"{hint}_starts"),
                       g.ints([-end if end else _INT64_MAX], f"{hint}_ends"),
                       g.ints([x.axis(1)], f"{hint}_axes")], hint)
    return g.derived(x, y, out_shape)


@_converts("UpSampling1D")
def _upsampling1d(g, layer, x, out_shape):
    x = g.nhwc(x)  # (N, T, C): each step repeated size times, in order
    hint = layer.name
    y = g.unsqueeze(x.name, [2], f"{hint}_unsqueeze")
    y = g.op("Tile", [y, g.ints([1, 1, layer.size, 1], f"{hint}_repeats")], f"{hint}_tile")
    y = g.op("Reshape", [y, g.ints([0, -1, x.shape[2]], f"{hint}_shape")], hint)
    return g.tensor(y, out_shape)


# -- 3-D pooling and spatial layers (branch vol): the 2-D forms with a depth axis --
@_converts("MaxPooling3D", "AveragePooling3D")
def _pool3d(g, layer, x, out_shape):
    return _pool(g, layer, x, out_shape, layer.pool_size, layer.strides, layer.padding)


_converts("GlobalAveragePooling3D", "GlobalMaxPooling3D")(_global_pool)


@_converts("UpSampling3D")
def _upsampling3d(g, layer, x, out_shape):
    # Keras's repeat along D, H, W is nearest Resize with integer scales, in x's layout.
    scales = [1.0] * 5
    for a, factor in zip((1, 2, 3), layer.size):
        scales[x.axis(a)] = float(factor)
    hint = layer.name
    y = g.op("Resize", [x.name, "", g.const(scales, f"{hint}_scales")], hint, mode="nearest",
             coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    return g.derived(x, y, out_shape)


@_converts("ZeroPadding3D")
def _zero_padding3d(g, layer, x, out_shape):
    begins, ends = [0] * 5, [0] * 5
    for a, (before, after) in zip((1, 2, 3), layer.padding):
        begins[x.axis(a)], ends[x.axis(a)] = before, after
    pads = g.ints(begins + ends, f"{layer.name}_pads")
    return g.derived(x, g.op("Pad", [x.name, pads], layer.name), out_shape)


@_converts("Cropping3D")
def _cropping3d(g, layer, x, out_shape):
    hint = layer.name
    axes = [x.axis(a) for a in (1, 2, 3)]
    starts = [p[0] for p in layer.cropping]
    ends = [-p[1] if p[1] else _INT64_MAX for p in layer.cropping]
    y = g.op("Slice", [x.name, g.ints(starts, f"{hint}_starts"), g.ints(ends, f"{hint}_ends"),
                       g.ints(axes, f"{hint}_axes")], hint)
    return g.derived(x, y, out_shape)


def _affine(g, x, scale, offset, hint):
    """x * scale + offset, scale and offset arrays over x's trailing axes (pynn's layout)."""
    x = g.nhwc(x)
    y = g.op("Mul", [x.name, g.const(scale, f"{hint}_scale")], f"{hint}_mul")
    return g.derived(x, g.op("Add", [y, g.const(offset, f"{hint}_offset")], hint))


@_converts("Rescaling")
def _rescaling(g, layer, x, out_shape):
    return _affine(g, x, np.asarray(layer.scale, np.float64),
                   np.asarray(layer.offset, np.float64), layer.name)


@_converts("Normalization")
def _normalization(g, layer, x, out_shape):
    from pynn.layers.preprocessing import EPSILON

    if layer.input_mean is not None:
        mean = np.asarray(layer.input_mean, np.float64)
        variance = np.asarray(layer.input_variance, np.float64)
    else:
        mean, variance = _host(layer.mean), _host(layer.variance)
    shape = layer._kept(layer.input_shape) if layer.axis is not None else ()
    mean = np.broadcast_to(mean, shape) if mean.size == 1 else mean.reshape(shape)
    variance = np.broadcast_to(variance, shape) if variance.size == 1 else \
        variance.reshape(shape)
    std = np.maximum(np.sqrt(variance), EPSILON)  # as the layer's own scale and offset
    if layer.invert:
        return _affine(g, x, std, mean, layer.name)
    return _affine(g, x, 1.0 / std, -mean / std, layer.name)


def _image_stages(g, layer, x, stages, hint):
    """An image layer's inference as Slice (crops) and Resize ops: ``stages`` a list of
    ("crop", top, left, height, width) and ("resize", height, width, interpolation)."""
    x = g.nhwc(x)
    name = x.name
    for k, stage in enumerate(stages):
        if stage[0] == "crop":
            _, top, left, height, width = stage
            name = g.op("Slice", [name, g.ints([top, left], f"{hint}_{k}_starts"),
                                  g.ints([top + height, left + width], f"{hint}_{k}_ends"),
                                  g.ints([1, 2], f"{hint}_{k}_axes")], f"{hint}_{k}_crop")
            continue
        if stage[0] == "pad":  # bbox: Resizing's pad_to_aspect_ratio, fill_value both sides
            _, top, left, fill_value = stage
            name = g.op("Pad", [name, g.ints([0, top, left, 0, 0, top, left, 0],
                                             f"{hint}_{k}_pads"),
                                g.const(fill_value, f"{hint}_{k}_fill")], f"{hint}_{k}_pad",
                        mode="constant")
            continue
        _, height, width, interpolation = stage
        # Keras's torch backend: bilinear with half-pixel centres (align_corners=False,
        # no antialias); nearest as torch's nearest-exact, floor((o + 0.5) * in / out)
        attrs = ({"mode": "linear", "coordinate_transformation_mode": "half_pixel"}
                 if interpolation == "bilinear" else
                 {"mode": "nearest", "coordinate_transformation_mode": "half_pixel",
                  "nearest_mode": "round_prefer_ceil"})
        nchw = g.op("Transpose", [name], f"{hint}_{k}_nchw", perm=[0, 3, 1, 2])
        # (N, C) of the input, then the new size: Shape's start/end wait for opset 15
        batch_channels = g.op("Slice", [g.op("Shape", [nchw], f"{hint}_{k}_shape"),
                                        g.ints([0], f"{hint}_{k}_s0"),
                                        g.ints([2], f"{hint}_{k}_s2")], f"{hint}_{k}_nc")
        sizes = g.op("Concat", [batch_channels, g.ints([height, width], f"{hint}_{k}_hw")],
                     f"{hint}_{k}_sizes", axis=0)
        resized = g.op("Resize", [nchw, "", "", sizes], f"{hint}_{k}_resize", **attrs)
        name = g.op("Transpose", [resized], f"{hint}_{k}_nhwc", perm=[0, 2, 3, 1])
    return name


def _known_image_size(layer, x):
    if len(x.shape) != 4 or any(s is None for s in x.shape[1:3]):
        raise _unsupported(layer, f"the image size must be known, got input shape {x.shape}")
    return x.shape[1], x.shape[2]


def _crop_or_resize_stages(h, w, height, width):
    """CenterCrop's rule (pynn.layers.preprocessing._crop_or_resize) as _image_stages."""
    from pynn.layers.preprocessing import aspect_box

    if h >= height and w >= width:
        return [("crop", (h - height) // 2, (w - width) // 2, height, width)]
    top, left, ch, cw = aspect_box(h, w, height, width)
    return [("crop", top, left, ch, cw), ("resize", height, width, "bilinear")]


@_converts("CenterCrop")
def _center_crop(g, layer, x, out_shape):
    h, w = _known_image_size(layer, x)
    stages = _crop_or_resize_stages(h, w, layer.height, layer.width)
    return g.tensor(_image_stages(g, layer, x, stages, layer.name), out_shape)


@_converts("RandomCrop")
def _random_crop(g, layer, x, out_shape):
    """At inference Keras's RandomCrop is a smart resize: the centred window of the target
    aspect ratio, resized when it is not the target size."""
    from pynn.layers.preprocessing import aspect_box

    h, w = _known_image_size(layer, x)
    top, left, ch, cw = aspect_box(h, w, layer.height, layer.width)
    stages = [("crop", top, left, ch, cw)]
    if (ch, cw) != (layer.height, layer.width):
        stages.append(("resize", layer.height, layer.width, "bilinear"))
    return g.tensor(_image_stages(g, layer, x, stages, layer.name), out_shape)


@_converts("Resizing")
def _resizing(g, layer, x, out_shape):
    from pynn.layers.preprocessing import aspect_box

    h, w = _known_image_size(layer, x)
    stages = []
    if layer.crop_to_aspect_ratio:
        top, left, ch, cw = aspect_box(h, w, layer.height, layer.width)
        stages.append(("crop", top, left, ch, cw))
    if getattr(layer, "pad_to_aspect_ratio", False):  # bbox: the layer's own padding
        shift = layer.stages(1, h, w)[0][0][0]
        stages.append(("pad", int(-shift[5]), int(-shift[2]), float(layer.fill_value)))
    stages.append(("resize", layer.height, layer.width, layer.interpolation))
    return g.tensor(_image_stages(g, layer, x, stages, layer.name), out_shape)


@_converts("Masking")
def _masking(g, layer, x, out_shape):
    """The values: x with the steps whose features all equal mask_value zeroed (a layer
    reading the mask itself is refused: _mask_reader)."""
    x = g.nhwc(x)
    hint = layer.name
    differs = g.op("Not", [g.op("Equal", [x.name, g.const(layer.mask_value, f"{hint}_value")],
                                f"{hint}_equal")], f"{hint}_differs")
    keep = g.reduce("ReduceMax", g.op("Cast", [differs], f"{hint}_cast",
                                      to=g.onnx.TensorProto.FLOAT), [len(x.shape) - 1],
                    f"{hint}_keep")
    return g.derived(x, g.op("Mul", [x.name, keep], hint))


@_converts("FakeQuant")
def _fake_quant(g, layer, x, out_shape):
    """Quantization-aware training's activations at inference: uint8 codes of the tracked
    range and back (QuantizeLinear / DequantizeLinear)."""
    scale, zero_point = layer.quant_params()
    hint = layer.name
    s = g.const(np.float32(scale), f"{hint}_scale")
    z = g.const(np.uint8(zero_point), f"{hint}_zero_point", np.uint8)
    codes = g.op("QuantizeLinear", [x.name, s, z], f"{hint}_codes")
    return g.derived(x, g.op("DequantizeLinear", [codes, s, z], hint))


@_converts("PruneLowMagnitude")
def _pruned(g, layer, x, out_shape):
    return _convert(g, layer.layer, x, out_shape)  # its pruned weights are zeros in place


@_converts("RNN")
def _rnn_layer(g, layer, x, out_shape, mask=None):
    """RNN over SimpleRNN/LSTM/GRU cells (one, or stacked) is those layers in sequence."""
    if layer._user_cell:
        raise _unsupported(layer, "a user-written cell has no ONNX form")
    if layer.return_state:
        raise _unsupported(layer, "return_state has no export here")
    shape = x.shape
    for inner in layer._layers:
        shape = inner.compute_output_shape(shape)
        x = _recurrent(g, inner, x, shape, mask)
    return x


@_converts("Embedding")
def _embedding(g, layer, x, out_shape):
    x = g.nhwc(x)
    ids = x.name
    if x.dtype not in ("int32", "int64"):
        ids = g.op("Cast", [ids], f"{layer.name}_ids", to=g.onnx.TensorProto.INT64)
    table = g.const(_host(layer.embeddings), f"{layer.name}_embeddings")
    return g.tensor(g.op("Gather", [table, ids], layer.name, axis=0), out_shape)


def _encoded(g, layer, ids, rank, num_tokens, mode, hint):
    """CategoryEncoding's rows of int64 ``ids`` (rank 1 or 2): one-hot rows gathered from an
    identity table, then the max (multi_hot) or the sum (count) over the tokens."""
    eye = g.const(np.eye(num_tokens, dtype=np.float32), f"{hint}_identity")
    rows = g.op("Gather", [eye, ids], f"{hint}_one_hot", axis=0)
    if mode == "one_hot":   # (N,) ids give (N, K), (N, T) give (N, T, K), as Keras
        return rows
    op_type = "ReduceMax" if mode == "multi_hot" else "ReduceSum"
    return g.reduce(op_type, rows, [rank - 1] if rank == 2 else [0], f"{hint}_{mode}",
                    keepdims=False)


@_converts("CategoryEncoding")
def _category_encoding(g, layer, x, out_shape):
    x = g.nhwc(x)
    ids = x.name
    if x.dtype not in ("int64",):
        ids = g.op("Cast", [ids], f"{layer.name}_ids", to=g.onnx.TensorProto.INT64)
    rank = len(x.shape)
    if layer.output_mode == "one_hot" and rank == 2 and x.shape[1] == 1:
        ids = g.op("Squeeze", [ids, g.ints([1], f"{layer.name}_squeeze_axes")],
                   f"{layer.name}_squeezed")
        rank = 1
    y = _encoded(g, layer, ids, rank, layer.num_tokens, layer.output_mode, layer.name)
    return g.tensor(y, out_shape)


@_converts("Discretization")
def _discretization(g, layer, x, out_shape):
    """Each value's bin: the number of boundaries at or below it; encoded as
    CategoryEncoding when the output mode asks."""
    x = g.nhwc(x)
    hint = layer.name
    values = x.name
    if x.dtype not in ("float32",):
        values = g.op("Cast", [values], f"{hint}_values", to=g.onnx.TensorProto.FLOAT)
    rank = len(x.shape)
    wide = g.unsqueeze(values, [rank], f"{hint}_wide")
    above = g.op("Not", [g.op("Less", [wide, g.const(np.asarray(layer.bin_boundaries,
                                                                 np.float32), f"{hint}_bounds")],
                              f"{hint}_below")], f"{hint}_at_or_above")
    counts = g.reduce("ReduceSum", g.op("Cast", [above], f"{hint}_counted",
                                        to=g.onnx.TensorProto.FLOAT), [rank], f"{hint}_bins",
                      keepdims=False)
    if layer.output_mode == "int":
        return g.tensor(counts, out_shape)
    ids = g.op("Cast", [counts], f"{hint}_ids", to=g.onnx.TensorProto.INT64)
    if layer.output_mode == "one_hot" and rank == 2 and x.shape[1] == 1:
        ids = g.op("Squeeze", [ids, g.ints([1], f"{hint}_squeeze_axes")], f"{hint}_squeezed")
        rank = 1
    y = _encoded(g, layer, ids, rank, len(layer.bin_boundaries) + 1, layer.output_mode, hint)
    return g.tensor(y, out_shape)


# ONNX's RNN activation names and their (alpha, beta), for pynn's RNN_ACTIVATIONS; selu and
# relu6 have none (onnxruntime implements only these).
_RNN_ACTIVATIONS = {
    "sigmoid": ("Sigmoid", None, None), "tanh": ("Tanh", None, None),
    "relu": ("Relu", None, None), "softplus": ("Softplus", None, None),
    "softsign": ("Softsign", None, None), "linear": ("Affine", 1.0, 0.0),
    "leaky_relu": ("LeakyRelu", 0.2, None), "elu": ("Elu", 1.0, None),
    "hard_sigmoid": ("HardSigmoid", 1.0 / 6.0, 0.5),
}


def _rnn_activations(layer, names):
    attrs = {"activations": [], "activation_alpha": [], "activation_beta": []}
    for n in names:
        if n not in _RNN_ACTIVATIONS:
            raise _unsupported(layer, f"activation {n!r} is not one of ONNX's recurrent "
                                      f"activations {sorted(_RNN_ACTIVATIONS)}")
        onnx_name, alpha, beta = _RNN_ACTIVATIONS[n]
        attrs["activations"].append(onnx_name)
        if alpha is not None:
            attrs["activation_alpha"].append(alpha)
        if beta is not None:
            attrs["activation_beta"].append(beta)
    return {k: v for k, v in attrs.items() if v}


def _gates(a, order, units):
    """Rows of a (gates*units, ...) array regrouped from Keras's gate order to ONNX's."""
    return np.concatenate([a[k * units:(k + 1) * units] for k in order], axis=0)


@_converts("SimpleRNN", "LSTM", "GRU")
def _recurrent(g, layer, x, out_shape, mask=None):
    """The ONNX RNN, LSTM or GRU op of a Keras layer; with ``mask`` (a float (N, T) mask
    tensor) the kept steps only (_kept_steps). return_state: the output and the final
    states (h, and c for an LSTM), as Keras lists them."""
    kind, u = type(layer).__name__.removeprefix("Quantized"), layer.units
    hint = layer.name
    # ONNX's time-major layout (T, N, C) is x in layout (1, 0, 2).
    x = g.layout(x, (1, 0, 2))
    xs = x.name
    if layer.go_backwards:  # Keras: read from the end, outputs in that order
        xs = _reversed(g, xs, 0, hint)
    kept = None if mask is None else _kept_steps(g, xs, mask, layer.go_backwards, hint)
    kernel, recurrent = _dequantized_kernel(layer).T, _host(layer.recurrent_kernel).T
    gates = {"SimpleRNN": 1, "LSTM": 4, "GRU": 3}[kind]
    bias = _host(layer.bias) if layer.use_bias else np.zeros((gates * u,))
    recurrent_bias = np.zeros((gates * u,))
    attrs = {}
    if kind == "LSTM":  # Keras i, f, c, o -> ONNX i, o, f, c
        order = (0, 3, 1, 2)
        kernel, recurrent = _gates(kernel, order, u), _gates(recurrent, order, u)
        bias = _gates(bias, order, u)
        attrs = _rnn_activations(layer, [layer.recurrent_activation, layer.activation,
                                         layer.activation])
    elif kind == "GRU":  # the same z, r, h order
        if layer.reset_after:
            bias, recurrent_bias = (bias[0], bias[1]) if layer.use_bias else (bias, bias)
        attrs = _rnn_activations(layer, [layer.recurrent_activation, layer.activation])
        attrs["linear_before_reset"] = int(layer.reset_after)
    else:
        attrs = _rnn_activations(layer, [layer.activation])
    inputs = [xs if kept is None else kept.steps, g.const(kernel[None], f"{hint}_W"),
              g.const(recurrent[None], f"{hint}_R"),
              g.const(np.concatenate([bias, recurrent_bias])[None], f"{hint}_B")]
    if kept is not None:
        inputs.append(kept.lengths)
    outs = 3 if kind == "LSTM" else 2
    results = g.op({"SimpleRNN": "RNN"}.get(kind, kind), inputs, hint, outputs=outs,
                   hidden_size=u, **attrs)
    states = [g.squeeze(s, [0], f"{hint}_state{k}") for k, s in enumerate(results[1:])]
    if kept is not None:   # a row that keeps no step answers the zero initial state
        states = [g.op("Mul", [s, kept.any_row], f"{hint}_state{k}_kept")
                  for k, s in enumerate(states)]
    state_shape = (out_shape[0][0] if layer.return_state else out_shape[0], u)
    y_shape = out_shape[0] if layer.return_state else out_shape
    # zero_output_for_mask (set by Bidirectional on its layers): a masked step's output is
    # zeros instead of the previous one, and so is the last output if its step is masked
    zeros = kept is not None and getattr(layer, "zero_output_for_mask", False)
    if layer.return_sequences:
        # Y (T, 1, N, U): without the direction axis it is the output in layout (1, 0, 2).
        seq = g.squeeze(results[0], [1], f"{hint}_seq")
        if kept is not None:
            seq = kept.spread(g, seq, zeros, hint)
        y = g.tensor(seq, y_shape, (1, 0, 2))
    elif zeros:
        y = g.tensor(g.op("Mul", [states[0], kept.last_kept(g, hint)], f"{hint}_last"),
                     y_shape)
    else:
        y = g.tensor(states[0], y_shape)
    if not layer.return_state:
        return y
    return [y] + [g.tensor(s, state_shape) for s in states]


def _reversed(g, name, axis, hint):
    return g.op("Slice", [name, g.ints([-1], f"{hint}_rs"), g.ints([_INT64_MIN], f"{hint}_re"),
                          g.ints([axis], f"{hint}_ra_{axis}"), g.ints([-1], f"{hint}_rstep")],
                f"{hint}_reversed")


class _KeptSteps:
    """A masked sequence as an ONNX recurrent op can take it. Keras's recurrent layers
    carry the state over a masked step and repeat the last output there (zeros before the
    first kept step), wherever the masked steps lie; ONNX's ops skip only trailing steps
    (sequence_lens). So each row's kept steps are moved, in order, to its front (a
    permutation: ScatterElements), the op runs over that many steps, and with
    return_sequences each step's output is gathered back from the compacted outputs: the
    output after the kept steps up to it. The same arithmetic on the same steps as pynn's
    (and Keras's) masked recurrence."""

    __slots__ = ("any_row", "before", "lengths", "mask", "steps")

    def spread(self, g, seq, zeros, hint):
        """Outputs (T, N, U) of the compacted steps -> those of the original steps (zeros
        at the masked ones with ``zeros``)."""
        index = g.op("Cast", [g.op("Max", [g.op("Sub", [self.before, g.const(1.0, f"{hint}_1")],
                                                 f"{hint}_last_kept"),
                                          g.const(0.0, f"{hint}_0")], f"{hint}_from")],
                     f"{hint}_from_i", to=g.onnx.TensorProto.INT64)
        index = g.op("Expand", [g.unsqueeze(index, [2], f"{hint}_from_wide"),
                                g.op("Shape", [seq], f"{hint}_seq_shape")], f"{hint}_from_all")
        gathered = g.op("GatherElements", [seq, index], f"{hint}_gathered", axis=0)
        started = (self.mask if zeros else
                   g.op("Min", [self.before, g.const(1.0, f"{hint}_1b")], f"{hint}_started"))
        return g.op("Mul", [gathered, g.unsqueeze(started, [2], f"{hint}_started_wide")],
                    f"{hint}_seq_masked")

    def last_kept(self, g, hint):
        """(N, 1): whether each row's last step, in processing order, is kept."""
        last = g.op("Gather", [self.mask, g.const(-1, f"{hint}_last_t", np.int64)],
                    f"{hint}_last_step", axis=0)
        return g.unsqueeze(last, [1], f"{hint}_last_kept")


def _kept_steps(g, xs, mask, backwards, hint):
    """_KeptSteps of the time-major sequence ``xs`` (T, N, C) under ``mask`` (N, T)."""
    kept = _KeptSteps()
    h = f"{hint}_mask"
    m = g.op("Transpose", [mask], f"{h}_tn", perm=[1, 0])          # (T, N)
    if backwards:
        m = _reversed(g, m, 0, f"{h}_back")
    before = g.op("CumSum", [m, g.const(np.int64(0), f"{h}_axis", np.int64)], f"{h}_before")
    count = g.reduce("ReduceSum", m, [0], f"{h}_count", keepdims=False)   # (N,)
    steps = g.op("Cast", [g.op("Gather", [g.op("Shape", [xs], f"{h}_shape"),
                                          g.const(np.int64(0), f"{h}_t", np.int64)],
                               f"{h}_steps_i")], f"{h}_steps", to=g.onnx.TensorProto.FLOAT)
    t = g.unsqueeze(g.op("Range", [g.const(0.0, f"{h}_start"), steps,
                                   g.const(1.0, f"{h}_delta")], f"{h}_range"), [1], f"{h}_t")
    # a kept step goes to (kept steps before it), a masked one after every kept step
    to_front = g.op("Sub", [before, g.const(1.0, f"{h}_one")], f"{h}_front")
    to_back = g.op("Sub", [g.op("Add", [count, t], f"{h}_count_t"), before], f"{h}_back")
    inverse = g.op("Sub", [g.const(1.0, f"{h}_one_m"), m], f"{h}_masked")
    pos = g.op("Add", [g.op("Mul", [m, to_front], f"{h}_pos_kept"),
                       g.op("Mul", [inverse, to_back], f"{h}_pos_masked")], f"{h}_pos")
    pos = g.op("Cast", [pos], f"{h}_pos_i", to=g.onnx.TensorProto.INT64)
    index = g.op("Expand", [g.unsqueeze(pos, [2], f"{h}_pos_wide"),
                            g.op("Shape", [xs], f"{h}_x_shape")], f"{h}_index")
    kept.steps = g.op("ScatterElements", [xs, index, xs], f"{h}_compacted", axis=0)
    # at least one step per row (a runtime may refuse an empty one): a row that keeps none
    # is answered by the zero initial state instead (any_row)
    kept.lengths = g.op("Cast", [g.op("Max", [count, g.const(1.0, f"{h}_least")],
                                      f"{h}_lengths_f")], f"{h}_lengths",
                        to=g.onnx.TensorProto.INT32)
    kept.any_row = g.unsqueeze(g.op("Min", [count, g.const(1.0, f"{h}_one_row")],
                                    f"{h}_any"), [1], f"{h}_any_row")
    kept.before, kept.mask = before, m
    return kept


@_converts("Bidirectional")
def _bidirectional(g, layer, x, out_shape, mask=None):
    """Keras's Bidirectional as pynn runs it: its two layers' graphs (the backward one reads
    the sequence from its end), the backward outputs reversed back into input order with
    return_sequences, then merged by merge_mode (None: both outputs); return_state adds
    the forward layer's states, then the backward one's."""
    states = []
    ys = []
    for inner in (layer.forward_layer, layer.backward_layer):
        shape = inner.compute_output_shape(x.shape)
        y = _recurrent(g, inner, x, shape, mask)
        if layer.return_state:
            y, states = y[0], states + y[1:]
        ys.append(y)
    yf, yb = ys
    hint = layer.name
    if layer.return_sequences:
        yb = g.derived(yb, _reversed(g, yb.name, yb.axis(1), f"{hint}_backward_in_order"))
    if layer.merge_mode is None:
        return [yf, yb] + states
    if layer.merge_mode == "concat":
        y = g.op("Concat", [yf.name, yb.name], hint, axis=yf.axis(-1))
    else:
        y = g.op({"sum": "Sum", "mul": "Mul", "ave": "Mean"}[layer.merge_mode],
                 [yf.name, yb.name], hint)
    merged = g.tensor(y, out_shape[0] if layer.return_state else out_shape, yf.perm)
    return [merged] + states if layer.return_state else merged


@_converts("TimeDistributed")
def _time_distributed(g, layer, x, out_shape, mask=None):
    """The inner layer over (N*T, ...); with a mask its inner layer reads (a recurrent layer
    over each step's own sequence, pynn's TimeDistributed._inner_mask), the mask as
    (N*T, ...) too."""
    inner = layer.layer
    if type(inner).__name__ == "Dense" and mask is None:  # Dense maps the last axis of any rank
        return _dense(g, inner, x, out_shape)
    x = g.nhwc(x)
    hint = layer.name
    if any(s is None for s in x.shape[2:] + out_shape[1:]):
        raise _unsupported(layer, f"the shapes {x.shape} -> {out_shape} have unknown axes")
    flat = g.op("Reshape", [x.name, g.ints([-1] + list(x.shape[2:]), f"{hint}_in")],
                f"{hint}_flat")
    inner_in = g.tensor(flat, (None,) + x.shape[2:])
    if mask is not None:
        shape = g.op("Shape", [mask], f"{hint}_mask_shape")
        trailing = g.op("Slice", [shape, g.ints([2], f"{hint}_from2"),
                                  g.ints([_INT64_MAX], f"{hint}_end")], f"{hint}_mask_steps")
        to = g.op("Concat", [g.ints([-1], f"{hint}_rows"), trailing], f"{hint}_mask_to", axis=0)
        flat_mask = g.op("Reshape", [mask, to], f"{hint}_mask_flat")
        inner_out = _MASK_READERS[type(inner).__name__](g, inner, inner_in,
                                                        (None,) + out_shape[2:], flat_mask)
    else:
        inner_out = _convert(g, inner, inner_in, (None,) + out_shape[2:])
    y = g.op("Reshape", [g.nhwc(inner_out).name,
                         g.ints([-1] + list(out_shape[1:]), f"{hint}_out")], hint)
    return g.tensor(y, out_shape)


# -- MultiHeadAttention ----------------------------------------------------------------------
def _mha_projection(g, x, kernel, bias, hint):
    """(N, L, D) @ kernel (D, H, W) (+ bias (H, W)) -> (N, L, H*W): Keras's EinsumDense as
    one MatMul, the kernel viewed as (D, H*W) as pynn's layer does."""
    k = _host(kernel)
    y = g.op("MatMul", [x, g.const(k.reshape(k.shape[0], -1), f"{hint}_kernel")],
             f"{hint}_matmul")
    if bias is not None:
        y = g.op("Add", [y, g.const(_host(bias).reshape(-1), f"{hint}_bias")], f"{hint}_add")
    return y


def _mha_heads(g, y, heads, width, perm, hint):
    """(N, L, H*W) -> (N, L, H, W), then transposed by ``perm``."""
    y = g.op("Reshape", [y, g.ints([0, 0, heads, width], f"{hint}_heads_shape")],
             f"{hint}_heads")
    return g.op("Transpose", [y], f"{hint}_{''.join(map(str, perm))}", perm=list(perm))


def _mha_repeat_heads(g, y, repeats, shape, hint):
    """(N, Hkv, A, B) -> (N, Hkv * repeats, A, B), each head ``repeats`` times in a row
    (Keras's ops.repeat on the heads' axis)."""
    y = g.unsqueeze(y, [2], f"{hint}_group")
    y = g.op("Tile", [y, g.ints([1, 1, repeats, 1, 1], f"{hint}_repeats")], f"{hint}_tiled")
    return g.op("Reshape", [y, g.ints(shape, f"{hint}_repeated_shape")], f"{hint}_repeated")


def _mha_steps(g, x, axis, hint):
    """The 1-D int64 range over ``x``'s (dynamic) axis ``axis``."""
    size = g.op("Gather", [g.op("Shape", [x], f"{hint}_shape"),
                           g.const(np.int64(axis), f"{hint}_axis", np.int64)], f"{hint}_size")
    return g.op("Range", [g.const(np.int64(0), f"{hint}_start", np.int64), size,
                          g.const(np.int64(1), f"{hint}_delta", np.int64)], f"{hint}_range")


def _mha_attend(g, layer, query, value, inputs, in_masks, hint):
    """The bool (N or 1, T or 1, S or 1) ONNX tensor of pynn's ``_attention_mask`` (Keras's
    _compute_attention_mask): the and of the inputs' masks, the causal triangle, the
    sliding window and an explicit attention_mask; None where nothing masks."""
    has_key, has_mask, causal, _ = layer._call_options
    to_bool = g.onnx.TensorProto.BOOL
    parts = []

    def mask_of(k, axis, name):
        m = in_masks[k] if k < len(in_masks) else None
        if m is None:
            return
        if m.rank != 2:
            raise _unsupported(layer, f"the {name}'s mask (from {m.label}) has rank {m.rank}; "
                                      f"a (batch, steps) mask is expected")
        wide = g.unsqueeze(m.tensor(g), [axis], f"{hint}_{name}_mask_wide")
        parts.append(g.op("Cast", [wide], f"{hint}_{name}_keep", to=to_bool))

    mask_of(0, 2, "query")                  # (N, T, 1)
    mask_of(1, 1, "value")                  # (N, 1, S)
    if has_key:
        mask_of(2, 1, "key")                # (N, 1, S)
    if causal or layer.sliding_window is not None:
        t, s = query.shape[1], value.shape[1]
        if t is not None and s is not None:
            rows, cols = np.arange(t)[None, :, None], np.arange(s)[None, None, :]
            if causal:
                parts.append(g.const(rows >= cols, f"{hint}_causal", np.bool_))
            if layer.sliding_window is not None:
                parts.append(g.const(np.abs(rows - cols) < layer.sliding_window,
                                     f"{hint}_window", np.bool_))
        else:   # unknown steps: the same triangle and band from Range
            rows = g.unsqueeze(_mha_steps(g, query.name, 1, f"{hint}_t"), [0, 2],
                               f"{hint}_rows")      # (1, T, 1)
            cols = g.unsqueeze(_mha_steps(g, value.name, 1, f"{hint}_s"), [0, 1],
                               f"{hint}_cols")      # (1, 1, S)
            if causal:
                parts.append(g.op("GreaterOrEqual", [rows, cols], f"{hint}_causal"))
            if layer.sliding_window is not None:
                apart = g.op("Abs", [g.op("Sub", [rows, cols], f"{hint}_offset")],
                             f"{hint}_apart")
                parts.append(g.op("Less", [apart, g.const(np.int64(layer.sliding_window),
                                                          f"{hint}_width", np.int64)],
                                  f"{hint}_window"))
    if has_mask:   # nonzero = attend
        explicit = g.nhwc(inputs[-1])
        parts.append(g.op("Cast", [explicit.name], f"{hint}_explicit", to=to_bool))
    if not parts:
        return None
    keep = parts[0]
    for k, p in enumerate(parts[1:]):
        keep = g.op("And", [keep, p], f"{hint}_attend_{k}")
    return keep


@_converts("MultiHeadAttention", "GroupQueryAttention")
def _multi_head_attention(g, layer, xs, out_shape, in_masks=None):
    """Keras 3's MultiHeadAttention at inference (pynn.layers.attention; the core is
    tests/reference/attention_ref.py): the projections as MatMuls, scores (N, H, T, S) of
    the scaled queries and the keys, a softmax over the attended steps only (masked scores
    filled with float32's lowest before it, their probabilities zeroed after it, so a row
    that attends to nothing is zeros, as Keras's masked softmax makes it), the heads'
    outputs (gated with use_gate) through the output projection. ``in_masks``: the inputs'
    _Masks (None where an input has none)."""
    if layer.attention_axes not in (None, (1,), (-2,)):
        raise _unsupported(layer, f"attention_axes {layer.attention_axes}")
    options = layer._call_options
    if options is None:
        raise _unsupported(layer, "it was never called")
    has_key, scores_out = options.key, options.return_attention_scores
    in_masks = list(in_masks or [None] * len(xs))
    hint = layer.name
    query, value = g.nhwc(xs[0]), g.nhwc(xs[1])
    key = g.nhwc(xs[2]) if has_key else value
    h, kd, vd = layer.num_heads, layer.key_dim, layer.value_dim
    q = _mha_projection(g, query.name, layer.query_kernel, layer.query_bias, f"{hint}_query")
    k = _mha_projection(g, key.name, layer.key_kernel, layer.key_bias, f"{hint}_key")
    v = _mha_projection(g, value.name, layer.value_kernel, layer.value_bias, f"{hint}_value")
    q = _mha_heads(g, q, h, kd, (0, 2, 1, 3), f"{hint}_query")     # (N, H, T, K)
    kv = layer._kv_heads
    k = _mha_heads(g, k, kv, kd, (0, 2, 3, 1), f"{hint}_key")      # (N, H, K, S)
    v = _mha_heads(g, v, kv, vd, (0, 2, 1, 3), f"{hint}_value")    # (N, H, S, V)
    if kv != h:   # GroupQueryAttention: each key and value head read by h // kv query heads
        k = _mha_repeat_heads(g, k, h // kv, [0, h, kd, -1], f"{hint}_key")
        v = _mha_repeat_heads(g, v, h // kv, [0, h, -1, vd], f"{hint}_value")
    q = g.op("Mul", [q, g.const(np.float32(layer.scale), f"{hint}_scale")], f"{hint}_scaled")
    scores = g.op("MatMul", [q, k], f"{hint}_scores")              # (N, H, T, S)
    keep = _mha_attend(g, layer, query, value, xs, in_masks, hint)
    if keep is None:
        probs = g.op("Softmax", [scores], f"{hint}_probs", axis=-1)
    else:
        keep = g.unsqueeze(keep, [1], f"{hint}_attend")             # (N or 1, 1, T, S)
        lowest = g.const(np.finfo(np.float32).min, f"{hint}_lowest")
        filled = g.op("Where", [keep, scores, lowest], f"{hint}_masked_scores")
        soft = g.op("Softmax", [filled], f"{hint}_softmax", axis=-1)
        probs = g.op("Where", [keep, soft, g.const(0.0, f"{hint}_zero")], f"{hint}_probs")
    att = g.op("MatMul", [probs, v], f"{hint}_attended")            # (N, H, T, V)
    att = g.op("Transpose", [att], f"{hint}_attended_nthv", perm=[0, 2, 1, 3])
    att = g.op("Reshape", [att, g.ints([0, 0, h * vd], f"{hint}_merged_shape")],
               f"{hint}_merged")                                    # (N, T, H*V)
    if layer.use_gate:
        gate = _mha_projection(g, query.name, layer.gate_kernel, layer.gate_bias,
                               f"{hint}_gate")
        att = g.op("Mul", [att, g.op("Sigmoid", [gate], f"{hint}_gate_sigmoid")],
                   f"{hint}_gated")
    out_dims = tuple(layer.output_kernel.shape[2:])
    wide = int(np.prod(out_dims))
    y = g.op("MatMul", [att, g.const(_host(layer.output_kernel).reshape(h * vd, wide),
                                     f"{hint}_output_kernel")], f"{hint}_output_matmul")
    if layer.output_bias is not None:
        y = g.op("Add", [y, g.const(_host(layer.output_bias).reshape(wide),
                                    f"{hint}_output_bias")], f"{hint}_output_add")
    if len(out_dims) != 1:
        y = g.op("Reshape", [y, g.ints([0, 0] + list(out_dims), f"{hint}_output_shape")],
                 f"{hint}_output")
    y = g.tensor(y, out_shape[0] if scores_out else out_shape)
    if scores_out:
        return [y, g.tensor(probs, out_shape[1])]
    return y

# -- end MultiHeadAttention --


# -- Attention, AdditiveAttention ------------------------------------------------------------
def _attention_scores(g, layer, q, k, additive, hint):
    """The (N, T, S) scores of pynn's Attention._scores (AdditiveAttention's with
    ``additive``), in pynn's order of operations: "dot" q k^T (times the scalar scale);
    "concat" concat_score_weight * sum_d tanh(scale * (q + k)); additive sum_d (scale_vec *
    tanh(q + k))."""
    scale = None if layer.scale is None else _host(layer.scale)
    if layer.score_mode == "dot":
        kt = g.op("Transpose", [k], f"{hint}_key_t", perm=[0, 2, 1])     # (N, D, S)
        scores = g.op("MatMul", [q, kt], f"{hint}_dot")
        if scale is not None:
            scores = g.op("Mul", [scores, g.const(scale, f"{hint}_scale")], f"{hint}_scaled")
        return scores
    inner = g.op("Add", [g.unsqueeze(q, [2], f"{hint}_query_wide"),     # (N, T, 1, D)
                         g.unsqueeze(k, [1], f"{hint}_key_wide")],      # (N, 1, S, D)
                 f"{hint}_qk")
    if scale is not None and not additive:
        inner = g.op("Mul", [inner, g.const(scale, f"{hint}_scale")], f"{hint}_qk_scaled")
    th = g.op("Tanh", [inner], f"{hint}_tanh")
    if scale is not None and additive:
        th = g.op("Mul", [th, g.const(scale, f"{hint}_scale")], f"{hint}_tanh_scaled")
    scores = g.reduce("ReduceSum", th, [3], f"{hint}_summed", keepdims=False)
    if not additive:
        scores = g.op("Mul", [scores, g.const(_host(layer.concat_score_weight),
                                              f"{hint}_concat_weight")], f"{hint}_concat")
    return scores


def _score_attention(g, layer, xs, out_shape, in_masks, additive):
    """Keras 3's Attention / AdditiveAttention at inference (pynn.layers.attention's call):
    the scores, lowered by 1e9 where the value's mask or the causal triangle masks them
    (Keras's rule: a row masked everywhere then softmaxes its lowered scores, attending to
    every value alike), softmax, times value; steps the query's mask drops are zeros.
    ``in_masks``: the inputs' _Masks (None where an input has none; the key's is unread,
    as in Keras)."""
    options = layer._call_options
    if options is None:
        raise _unsupported(layer, "it was never called")
    in_masks = list(in_masks or [None] * len(xs))
    hint = layer.name
    query, value = g.nhwc(xs[0]), g.nhwc(xs[1])
    key = g.nhwc(xs[2]) if len(xs) > 2 else value
    scores = _attention_scores(g, layer, query.name, key.name, additive, hint)

    def mask_of(k, name):
        m = in_masks[k] if k < len(in_masks) else None
        if m is not None and m.rank != 2:
            raise _unsupported(layer, f"the {name}'s mask (from {m.label}) has rank {m.rank}; "
                                      f"a (batch, steps) mask is expected")
        return m

    keep = None     # float32 0/1, broadcasting to (N, T, S)
    value_mask = mask_of(1, "value")
    if value_mask is not None:
        keep = g.unsqueeze(value_mask.tensor(g), [1], f"{hint}_value_keep")   # (N, 1, S)
    if options.use_causal_mask:
        t, s = query.shape[1], key.shape[1]
        if t is not None and s is not None:
            tri = g.const(np.tri(t, s, dtype=np.float32)[None], f"{hint}_causal")
        else:   # unknown steps: the triangle from Range
            rows = g.unsqueeze(_mha_steps(g, query.name, 1, f"{hint}_t"), [0, 2],
                               f"{hint}_rows")      # (1, T, 1)
            cols = g.unsqueeze(_mha_steps(g, key.name, 1, f"{hint}_s"), [0, 1],
                               f"{hint}_cols")      # (1, 1, S)
            tri = g.op("Cast", [g.op("GreaterOrEqual", [rows, cols], f"{hint}_causal_bool")],
                       f"{hint}_causal", to=g.onnx.TensorProto.FLOAT)
        keep = tri if keep is None else g.op("Mul", [keep, tri], f"{hint}_keep")
    if keep is not None:    # scores - 1e9 where masked, exactly the scores where kept
        dropped = g.op("Sub", [g.const(1.0, f"{hint}_one"), keep], f"{hint}_masked")
        penalty = g.op("Mul", [dropped, g.const(1.0e9, f"{hint}_penalty_size")],
                       f"{hint}_penalty")
        scores = g.op("Sub", [scores, penalty], f"{hint}_masked_scores")
    weights = g.op("Softmax", [scores], f"{hint}_weights", axis=-1)
    out = g.op("MatMul", [weights, value.name], f"{hint}_attended")
    query_mask = mask_of(0, "query")
    if query_mask is not None:
        wide = g.unsqueeze(query_mask.tensor(g), [2], f"{hint}_query_keep")   # (N, T, 1)
        out = g.op("Mul", [out, wide], f"{hint}_out")
    if options.return_attention_scores:
        return [g.tensor(out, out_shape[0]), g.tensor(weights, out_shape[1])]
    return g.tensor(out, out_shape)


@_converts("Attention")
def _dot_attention(g, layer, xs, out_shape, in_masks=None):
    return _score_attention(g, layer, xs, out_shape, in_masks, additive=False)


@_converts("AdditiveAttention")
def _additive_attention(g, layer, xs, out_shape, in_masks=None):
    return _score_attention(g, layer, xs, out_shape, in_masks, additive=True)

# -- end Attention, AdditiveAttention --


# -- int8 quantized layers (issue 18, branch qbreadth): QDQ form ---------------------------
# The int8 layers export as ONNX's QDQ form: QuantizeLinear -> DequantizeLinear around the
# float op, whose weights are int8 initializers behind a per-channel DequantizeLinear and
# whose bias (static) is the int32 rint(b / (x_scale * w_scale)) pynn adds, dequantized with
# x_scale * w_scale. A runtime either runs the float op on the dequantized values or fuses
# the pattern into QLinearConv / QLinearMatMul; both give pynn's int8 results up to the float
# rounding of the requantization (one output step at a rounding tie). Dynamic layers
# quantize their input with DynamicQuantizeLinear (the same range, 0 included, and zero
# point as pynn's per-batch quantization) and stay float after the op.
def _dequantized_kernel(layer):
    """The float kernel a layer's matmul uses: an int8 layer's kernel * kernel_scale."""
    if getattr(layer, "kernel_scale", None) is None:
        return _host(layer.kernel)
    return _host(layer.kernel) * _host(layer.kernel_scale)


def _static(layer):
    return getattr(layer, "input_scale", None) is not None


def _qdq(g, x, scale, zero_point, hint):
    """``x`` (a _Tensor) rounded to the uint8 grid (scale, zero_point), as float."""
    s = g.const(np.float32(scale), f"{hint}_scale")
    z = g.const(np.uint8(zero_point), f"{hint}_zp", np.uint8)
    q = g.op("QuantizeLinear", [x.name, s, z], f"{hint}_q")
    return g.derived(x, g.op("DequantizeLinear", [q, s, z], f"{hint}_dq"))


def _qdq_input(g, layer, x, hint):
    if _static(layer):
        return _qdq(g, x, layer.input_scale, layer.input_zero_point, f"{hint}_in")
    q, s, z = g.op("DynamicQuantizeLinear", [x.name], f"{hint}_in_q", outputs=3)
    return g.derived(x, g.op("DequantizeLinear", [q, s, z], f"{hint}_in_dq"))


def _qdq_output(g, layer, t, hint):
    """relu (fused in pynn's requantization), then the output's uint8 grid when static."""
    t = _apply_activation(g, layer, t, layer.activation, 0.0, f"{hint}_act")
    if not _static(layer):
        return t
    return _qdq(g, t, layer.output_scale, layer.output_zero_point, f"{hint}_out")


def _int8_weight(g, wq, scales, axis, hint):
    """The DequantizeLinear of int8 weights ``wq`` with per-channel ``scales`` on ``axis``."""
    scales = np.asarray(scales, np.float32)
    return g.op("DequantizeLinear", [g.const(wq, f"{hint}_wq", np.int8),
                                     g.const(scales, f"{hint}_wscale"),
                                     g.const(np.zeros(scales.shape, np.int8), f"{hint}_wzp",
                                             np.int8)],
                f"{hint}_w", axis=int(axis))


def _int8_bias(g, layer, hint):
    if not layer.use_bias:
        return None
    bias = _host(layer.bias)
    if not _static(layer):
        return g.const(bias, f"{hint}_bias")
    combined = np.float64(layer.input_scale) * _host(layer.kernel_scale)
    bq = np.clip(np.rint(bias / combined), -2**31, 2**31 - 1).astype(np.int32)
    return g.op("DequantizeLinear", [g.const(bq, f"{hint}_bq", np.int32),
                                     g.const(combined.astype(np.float32), f"{hint}_bscale")],
                f"{hint}_b", axis=0)


def _int8_weights_of(layer):
    return np.asarray(_host(layer.kernel), np.int8), _host(layer.kernel_scale)


@_converts("QuantizedDense")
def _quantized_dense(g, layer, x, out_shape):
    hint = layer.name
    x = _qdq_input(g, layer, g.nhwc(x), hint)
    wq, scales = _int8_weights_of(layer)  # (K, U): the channels on axis 1
    y = g.op("MatMul", [x.name, _int8_weight(g, wq, scales, 1, hint)], f"{hint}_matmul")
    bias = _int8_bias(g, layer, hint)
    if bias is not None:
        y = g.op("Add", [y, bias], f"{hint}_add")
    return _qdq_output(g, layer, g.tensor(y, out_shape), hint)


def _quantized_conv(g, layer, x, out_shape, wq, kernel, strides, dilation, pads, group, hint):
    """One QDQ Conv; ``wq`` int8 in ONNX's (F, C/g, k...) layout, the channels on axis 0."""
    x = _qdq_input(g, layer, g.nchw(x), hint)
    inputs = [x.name, _int8_weight(g, wq, _host(layer.kernel_scale), 0, hint)]
    bias = _int8_bias(g, layer, hint)
    if bias is not None:
        inputs.append(bias)
    y = g.op("Conv", inputs, hint, kernel_shape=list(kernel), strides=list(strides),
             dilations=list(dilation), pads=list(pads), group=int(group))
    return _qdq_output(g, layer, g.tensor(y, out_shape, _channels_first(len(out_shape))), hint)


@_converts("QuantizedConv2D")
def _quantized_conv2d(g, layer, x, out_shape):
    wq = np.asarray(_host(layer.kernel), np.int8).transpose(3, 2, 0, 1)
    pads = _window_pads(layer, x, layer.kernel_size, layer.strides, layer.dilation_rate,
                        layer.padding)
    return _quantized_conv(g, layer, x, out_shape, wq, layer.kernel_size, layer.strides,
                           layer.dilation_rate, pads, 1, layer.name)


@_converts("QuantizedConv1D")
def _quantized_conv1d(g, layer, x, out_shape):
    wq = np.asarray(_host(layer.kernel), np.int8).transpose(2, 1, 0)  # (k, C, F) -> (F, C, k)
    k, s, d = (layer.kernel_size[1],), (layer.strides[1],), (layer.dilation_rate[1],)
    if layer.causal:
        pads = [layer._causal_left, 0]
    else:
        pads = _window_pads(layer, x, k, s, d, layer.padding)
    return _quantized_conv(g, layer, x, out_shape, wq, k, s, d, pads, 1, layer.name)


def _quantized_depthwise_conv(g, layer, x, out_shape, hint):
    kernel = np.asarray(_host(layer.kernel), np.int8)  # (kh, kw, C, m) -> (C*m, 1, kh, kw)
    kh, kw, c, m = kernel.shape
    wq = kernel.reshape(kh, kw, c * m).transpose(2, 0, 1)[:, None]
    pads = _window_pads(layer, x, layer.kernel_size, layer.strides, layer.dilation_rate,
                        layer.padding)
    return _quantized_conv(g, layer, x, out_shape, wq, layer.kernel_size, layer.strides,
                           layer.dilation_rate, pads, c, hint)


@_converts("QuantizedDepthwiseConv2D")
def _quantized_depthwise(g, layer, x, out_shape):
    return _quantized_depthwise_conv(g, layer, x, out_shape, layer.name)


@_converts("QuantizedSeparableConv2D")
def _quantized_separable(g, layer, x, out_shape):
    dw, pw = layer._depthwise, layer._pointwise
    mid_shape = tuple(out_shape[:-1]) + (int(x.shape[-1]) * layer.depth_multiplier,)
    t = _quantized_depthwise_conv(g, dw, x, mid_shape, f"{layer.name}_depthwise")
    return _quantized_conv(g, pw, t, out_shape,
                           np.asarray(_host(pw.kernel), np.int8).transpose(3, 2, 0, 1),
                           (1, 1), (1, 1), (1, 1), [0, 0, 0, 0], 1, layer.name)


@_converts("QuantizedSimpleRNN", "QuantizedLSTM", "QuantizedGRU")
def _quantized_recurrent(g, layer, x, out_shape, mask=None):
    # the input quantized per call, then the float recurrent op on the dequantized kernel
    # (pynn's int8 projection, up to its int32 bias rounding); the recurrence stays float
    q, s, z = g.op("DynamicQuantizeLinear", [g.nhwc(x).name], f"{layer.name}_in_q",
                   outputs=3)
    x = g.tensor(g.op("DequantizeLinear", [q, s, z], f"{layer.name}_in_dq"), x.shape)
    return _recurrent(g, layer, x, out_shape, mask)
# -- end int8 quantized layers --


# -- conv3d: Keras 3's Conv3D and Conv3DTranspose (Conv / ConvTranspose, 3 spatial axes) -------
@_converts("Conv3D")
def _conv3d(g, layer, x, out_shape):
    # Keras (kd, kh, kw, C/g, F) -> ONNX (F, C/g, kd, kh, kw); groups split F as ONNX's
    w = _host(layer.kernel).transpose(4, 3, 0, 1, 2)
    pads = _window_pads(layer, x, layer.kernel_size, layer.strides, layer.dilation_rate,
                        layer.padding)
    return _conv(g, layer, x, out_shape, w, _bias(layer), layer.kernel_size, layer.strides,
                 layer.dilation_rate, pads, layer.groups, layer.name, layer.activation,
                 layer.alpha)


@_converts("Conv3DTranspose")
def _conv3d_transpose(g, layer, x, out_shape):
    w = _host(layer.kernel).transpose(4, 3, 0, 1, 2)  # (kd, kh, kw, F, C) -> (C, F, kd, kh, kw)
    return _conv_transpose(g, layer, x, out_shape, w, layer.kernel_size, layer.strides,
                           layer.dilation_rate, layer.output_padding or (None, None, None))
# -- end conv3d --


# -- adaptive pooling (Keras 3's AdaptiveAveragePooling/AdaptiveMaxPooling 1D-3D) -----------
# Where every output size divides its input size the bins are the windows of one AveragePool
# or MaxPool (kernel = stride = L/O). Otherwise a bin is a box [floor(o*L/O), ceil((o+1)*L/O))
# per axis, and the mean (max) over a box is the mean (max) over each axis in turn: per axis,
# one Slice and ReduceMean/ReduceMax per output position, joined by a Concat.
@_converts("AdaptiveAveragePooling1D", "AdaptiveAveragePooling2D", "AdaptiveAveragePooling3D",
           "AdaptiveMaxPooling1D", "AdaptiveMaxPooling2D", "AdaptiveMaxPooling3D")
def _adaptive_pool(g, layer, x, out_shape):
    rank = len(x.shape)
    first = layer.data_format == "channels_first"
    spatial_axes = list(range(2, rank)) if first else list(range(1, rank - 1))
    sizes = [x.shape[a] for a in spatial_axes]
    if any(s is None for s in sizes):
        raise _unsupported(layer, f"adaptive pooling needs the spatial size, which is unknown "
                                  f"in input shape {x.shape}")
    is_max = "Max" in type(layer).__name__
    if all(n % o == 0 for n, o in zip(sizes, layer.output_size)):
        # ONNX pools read (N, C, *spatial): pynn's own layout when channels_first
        x = g.layout(x, _identity(rank)) if first else g.nchw(x)
        kernel = [n // o for n, o in zip(sizes, layer.output_size)]
        attrs = {"kernel_shape": kernel, "strides": kernel}
        y = g.op("MaxPool" if is_max else "AveragePool", [x.name], layer.name, **attrs)
        return g.tensor(y, out_shape, x.perm)
    reduce_type = "ReduceMax" if is_max else "ReduceMean"
    shape = list(x.shape)
    for axis, n, out in zip(spatial_axes, sizes, layer.output_size):
        onnx_axis = x.axis(axis)
        hint = f"{layer.name}_axis{axis}"
        parts = []
        for o in range(out):
            start, end = (o * n) // out, -(-((o + 1) * n) // out)
            part = g.op("Slice", [x.name, g.ints([start], f"{hint}_start"),
                                  g.ints([end], f"{hint}_end"),
                                  g.ints([onnx_axis], f"{hint}_axes")], f"{hint}_bin{o}")
            parts.append(g.reduce(reduce_type, part, [onnx_axis], f"{hint}_reduce{o}"))
        shape[axis] = out
        y = parts[0] if out == 1 else g.op("Concat", parts, hint, axis=onnx_axis)
        x = g.derived(x, y, tuple(shape))
    return x
# -- end adaptive pooling --


# -- Keras 3's DepthwiseConv1D: one grouped Conv (a group per input channel) ----------------
@_converts("DepthwiseConv1D")
def _depthwise1d(g, layer, x, out_shape):
    kernel = _host(layer.kernel)  # (k, C, m): output channel c*m + j, as ONNX's groups
    k, c, m = kernel.shape
    w = kernel.reshape(k, c * m).transpose(1, 0)[:, None]
    ks, s, d = (layer.kernel_size,), (layer.strides,), (layer.dilation_rate,)
    pads = _window_pads(layer, x, ks, s, d, layer.padding)
    return _conv(g, layer, x, out_shape, w, _bias(layer), ks, s, d, pads, c, layer.name,
                 layer.activation, layer.alpha)
# -- end DepthwiseConv1D --


# -- Keras 3's AlphaDropout: the identity at inference, as the other noise layers ----------
_converts("AlphaDropout")(_identity_layer)

# -- Keras 3's colour augmentation layers: the identity at inference as Keras's, except
# AutoContrast, which acts there too --
_converts("Equalization", "Solarization", "RandomInvert", "RandomPosterization",
          "RandomGrayscale", "RandomHue", "RandomSaturation", "RandomColorDegeneration",
          "RandomColorJitter", "RandomSharpness")(_identity_layer)


@_converts("AutoContrast")
def _auto_contrast(g, layer, x, out_shape):
    """Keras's stretch of each image's channels from their [min, max] to 0..255 and back to
    value_range; a flat channel (NaN before the clip) keeps its input, as Keras's where."""
    x, hint = g.nhwc(x), layer.name
    lo, hi = layer.value_range
    v = x.name
    if (lo, hi) != (0.0, 255.0):
        v = g.op("Mul", [g.op("Sub", [v, g.const(lo, f"{hint}_lo")], f"{hint}_shift"),
                         g.const(255.0 / (hi - lo), f"{hint}_to255")], f"{hint}_255")
    low = g.reduce("ReduceMin", v, [1, 2], f"{hint}_low")
    high = g.reduce("ReduceMax", v, [1, 2], f"{hint}_high")
    scale = g.op("Div", [g.const(255.0, f"{hint}_255c"),
                         g.op("Sub", [high, low], f"{hint}_span")], f"{hint}_scale")
    offset = g.op("Neg", [g.op("Mul", [low, scale], f"{hint}_lowscaled")], f"{hint}_offset")
    stretched = g.op("Add", [g.op("Mul", [v, scale], f"{hint}_mul"), offset], f"{hint}_add")
    y = g.op("Clip", [stretched, g.const(0.0, f"{hint}_min"), g.const(255.0, f"{hint}_max")],
             f"{hint}_clip")
    if (lo, hi) != (0.0, 255.0):
        y = g.op("Add", [g.op("Mul", [y, g.const((hi - lo) / 255.0, f"{hint}_back")],
                              f"{hint}_scaled"), g.const(lo, f"{hint}_lo")], f"{hint}_range")
    kept = g.op("IsNaN", [stretched], f"{hint}_flat")
    return g.derived(x, g.op("Where", [kept, x.name, y], hint))


# -- lookup: MaxNumBoundingBoxes is the identity on images --
_converts("MaxNumBoundingBoxes")(_identity_layer)


# -- clahe: CLAHE's per-tile histograms and table blends have no ONNX form here --
@_converts("ContrastLimitedAdaptiveHistogramEqualization")
def _clahe(g, layer, x, out_shape):
    raise _unsupported(layer, "ONNX has no histogram operator, and CLAHE's per-tile "
                              "histograms, clipped cdfs and four-table blends are not "
                              "composed by this exporter; apply the layer before the "
                              "exported model")


# -- spectral (branch audio): Keras 3's audio front ends as Conv and elementwise nodes -----
_KERAS_EPSILON = 1e-7  # keras.backend.epsilon(): STFTSpectrogram's floor


def _stft_convs(g, layer, signal, kernels, step, pads, hint):
    """Conv of the (rows, 1, T) ``signal`` with each (L, 1, F) kernel -> (rows, F, frames)."""
    out = {}
    for side, kernel in kernels.items():
        w = np.asarray(kernel, np.float64).transpose(2, 1, 0)  # (F, 1, L)
        out[side] = g.op("Conv", [signal, g.const(w, f"{hint}_{side}_W")], f"{hint}_{side}",
                         kernel_shape=[w.shape[2]], strides=[int(step)], pads=list(pads))
    return out


def _atan2(g, y, x, hint):
    """atan2(y, x) from Atan (ONNX has no Atan2): atan(y / x), plus pi (y >= 0) or minus pi
    (y < 0) where x < 0; x = 0 divides to an infinity whose atan is +-pi/2, and (0, 0) is
    0 as in C."""
    zero = g.const(0.0, f"{hint}_zero")
    base = g.op("Atan", [g.op("Div", [y, x], f"{hint}_ratio")], f"{hint}_atan")
    half_turn = g.op("Where", [g.op("Less", [y, zero], f"{hint}_yneg"),
                               g.const(-math.pi, f"{hint}_mpi"), g.const(math.pi, f"{hint}_pi")],
                     f"{hint}_turn")
    turned = g.op("Add", [base, half_turn], f"{hint}_turned")
    angle = g.op("Where", [g.op("Less", [x, zero], f"{hint}_xneg"), turned, base],
                 f"{hint}_quadrant")
    origin = g.op("And", [g.op("Equal", [x, zero], f"{hint}_x0"),
                          g.op("Equal", [y, zero], f"{hint}_y0")], f"{hint}_origin")
    return g.op("Where", [origin, zero, angle], hint)


@_converts("STFTSpectrogram")
def _stft_spectrogram(g, layer, x, out_shape):
    hint = layer.name
    x = g.nhwc(x)
    n, t, c = layer._split_input(x.shape)
    if t is None:
        raise _unsupported(layer, f"the signal length must be known, got input shape "
                                  f"{x.shape}")
    signal = x.name
    if layer.data_format == "channels_last" and c > 1:
        signal = g.op("Transpose", [signal], f"{hint}_signals", perm=[0, 2, 1])
    signal = g.op("Reshape", [signal, g.ints([-1, 1, t], f"{hint}_rows")], f"{hint}_rows")
    pads = [0, 0]
    if layer.padding == "same":
        pads = _same_pads((t,), (layer.frame_length,), (layer._frame_step,), (1,))
    kernels = {side: _host(k) for side, k in layer._kernels().items()}
    halves = _stft_convs(g, layer, signal, kernels, layer._frame_step, pads, hint)
    if layer.mode in ("real", "imag"):
        spec = halves[layer.mode]
    elif layer.mode == "stft":
        spec = g.op("Concat", [halves["real"], halves["imag"]], f"{hint}_stft", axis=1)
    elif layer.mode == "angle":
        spec = _atan2(g, halves["imag"], halves["real"], f"{hint}_angle")
    else:
        power = g.op("Add", [g.op("Mul", [halves["real"], halves["real"]], f"{hint}_re2"),
                             g.op("Mul", [halves["imag"], halves["imag"]], f"{hint}_im2")],
                     f"{hint}_power")
        eps = g.const(_KERAS_EPSILON, f"{hint}_eps")
        if layer.mode == "psd":
            weights = np.full((layer._bins, 1), 2.0)
            weights[0] = weights[-1] = 1.0
            spec = g.op("Mul", [power, g.const(weights, f"{hint}_psd_w")], f"{hint}_psd")
        else:
            spec = g.op("Sqrt", [g.op("Max", [power, eps], f"{hint}_floor")], f"{hint}_mag")
            if layer.mode == "log":
                spec = g.op("Log", [g.op("Max", [spec, eps], f"{hint}_magfloor")],
                            f"{hint}_log")
    bins = 2 * layer._bins if layer.mode == "stft" else layer._bins
    # Keras's layout steps: (B, C, F', frames), then _adjust_shapes.
    frames = layer._frames(t)
    spec = g.op("Reshape", [spec, g.ints([-1, c, bins, frames], f"{hint}_bcft")],
                f"{hint}_bcft")
    if layer.expand_dims:
        perm = [0, 3, 2, 1] if layer.data_format == "channels_last" else [0, 1, 3, 2]
        y = g.op("Transpose", [spec], hint, perm=perm)
    else:
        flat = g.op("Reshape", [spec, g.ints([-1, c * bins, frames], f"{hint}_flat")],
                    f"{hint}_flat" if layer.data_format == "channels_last" else hint)
        y = (g.op("Transpose", [flat], hint, perm=[0, 2, 1])
             if layer.data_format == "channels_last" else flat)
    return g.tensor(y, out_shape)


@_converts("MelSpectrogram")
def _mel_spectrogram(g, layer, x, out_shape):
    hint = layer.name
    x = g.nhwc(x)
    if x.shape[1] is None:
        raise _unsupported(layer, f"the signal length must be known, got input shape "
                                  f"{x.shape}")
    pad = layer._pad
    padded = g.op("Pad", [x.name, g.ints([0, pad, 0, pad], f"{hint}_pads")], f"{hint}_reflect",
                  mode="reflect")
    signal = g.unsqueeze(padded, [1], f"{hint}_rows")
    window = _host(layer._window)
    angle = 2.0 * np.pi * np.outer(np.arange(window.size), np.arange(layer._bins)) / window.size
    # torch.stft's sign: X[k] = sum x[n] w[n] exp(-2 pi i n k / N)
    kernels = {"real": (window[:, None] * np.cos(angle))[:, None, :],
               "imag": (-window[:, None] * np.sin(angle))[:, None, :]}
    halves = _stft_convs(g, layer, signal, kernels, layer.sequence_stride, [0, 0], hint)
    power = g.op("Add", [g.op("Mul", [halves["real"], halves["real"]], f"{hint}_re2"),
                         g.op("Mul", [halves["imag"], halves["imag"]], f"{hint}_im2")],
                 f"{hint}_power")
    spec = g.op("Pow", [g.op("Sqrt", [power], f"{hint}_mag"),
                        g.const(layer.mag_exp, f"{hint}_mag_exp")], f"{hint}_spec")
    mel_t = _host(layer._mel).T  # (M, F) @ (N, F, frames) -> (N, M, frames): Keras's layout
    mel = g.op("MatMul", [g.const(mel_t, f"{hint}_mel_W"), spec],
               hint if not layer.power_to_db else f"{hint}_mel")
    if layer.power_to_db:
        floor = g.op("Max", [mel, g.const(layer.min_power, f"{hint}_min_power")],
                     f"{hint}_floored")
        offset = 10.0 * math.log10(max(abs(layer.ref_power), layer.min_power))
        db = g.op("Sub", [g.op("Mul", [g.op("Log", [floor], f"{hint}_ln"),
                                       g.const(10.0 / math.log(10.0), f"{hint}_db_per_ln")],
                               f"{hint}_db0"), g.const(offset, f"{hint}_ref")],
                  hint if layer.top_db is None else f"{hint}_db")
        if layer.top_db is not None:
            # the floor is the maximum over the whole batch, as Keras takes it
            peak = g.reduce("ReduceMax", db, [0, 1, 2], f"{hint}_peak")
            low = g.op("Sub", [peak, g.const(layer.top_db, f"{hint}_top_db")], f"{hint}_low")
            db = g.op("Max", [db, low], hint)
        mel = db
    return g.tensor(mel, out_shape)


# -- convlstm: ONNX has no convolutional recurrence (its LSTM operator is dense) --
@_converts("ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D")
def _conv_lstm(g, layer, x, out_shape):
    raise _unsupported(layer, "ONNX has no ConvLSTM operator (its LSTM is dense: the gates' "
                              "products are MatMuls, not convolutions); export the model "
                              "up to it, or save it as .keras")


# -- ReversibleEmbedding (branch misc): the lookup is Embedding's Gather; a reverse call never
# reaches a graph (pynn refuses reverse=True in functional models).
@_converts("ReversibleEmbedding")
def _reversible_embedding(g, layer, x, out_shape):
    if layer.mask_zero:
        # The export writes Embedding's padding mask for that class only.
        raise _unsupported(layer, "mask_zero=True has no export here; Embedding's has")
    return _embedding(g, layer, x, out_shape)


# -- SpectralNormalization (branch misc): inference reads the kernel as stored (training wrote
# the normalised one into it), so the export is the wrapped layer's.
@_converts("SpectralNormalization")
def _spectral_normalization(g, layer, x, out_shape):
    return _convert(g, layer.layer, x, out_shape)


# -- augmix: Keras 3's Pipeline, its layers' conversions in order (each augmentation the
# identity at inference, AutoContrast its stretch) --
@_converts("Pipeline")
def _pipeline(g, layer, x, out_shape):
    shape = tuple(layer.input_shape)
    for inner in layer.layers:
        shape = tuple(inner.compute_output_shape(shape))
        x = _convert(g, inner, x, shape)
    return x


# -- randaug: RandAugment and AugMix are the identity at inference, as Keras's (their
# AutoContrast acts in training only there)
_converts("RandAugment", "AugMix")(_identity_layer)

# -- applications (branch appsB): the layers of Keras's applications (StochasticDepth is the
# identity at inference) --
_converts("StochasticDepth")(_identity_layer)


@_converts("LayerScale")
def _layer_scale(g, layer, x, out_shape):
    gamma = _host(layer.gamma).reshape((1,) * (len(x.shape) - 1) + (-1,))
    gamma = np.transpose(gamma, x.perm)  # gamma along the channels in x's layout
    return g.derived(x, g.op("Mul", [x.name, g.const(gamma, f"{layer.name}_gamma")],
                             layer.name))


def _same_layout(g, xs):
    return [g.nhwc(x) for x in xs] if len({x.perm for x in xs}) > 1 else list(xs)


@_converts("CustomScaleLayer")
def _custom_scale(g, layer, xs, out_shape):
    x, branch = _same_layout(g, xs)
    scaled = g.op("Mul", [branch.name, g.const(np.float32(layer.scale), f"{layer.name}_scale")],
                  f"{layer.name}_scaled")
    return g.tensor(g.op("Add", [x.name, scaled], layer.name), out_shape, x.perm)


# -- op nodes of pynn.ops (OpLayer), converted by op name: the arithmetic that Keras's
# applications write as ops (MobileNetV3 gates with ReLU6(x + 3) * (1/6)) and det (ONNX's one
# linear-algebra operator, opset 11); every other op node is refused naming its op (ONNX has
# no factorisation, solve or inverse).
_OP_CONVERTERS = {}


@_converts("OpLayer")
def _op_layer(g, layer, x, out_shape):
    convert = _OP_CONVERTERS.get(layer.op)
    if convert is None:
        raise _unsupported(layer, f"pynn.ops.{layer.op} has no ONNX form here (ONNX export "
                                  f"writes the op nodes {sorted(_OP_CONVERTERS)})")
    return convert(g, layer, x, out_shape)


_ONNX_ARITHMETIC = {"add": "Add", "subtract": "Sub", "multiply": "Mul", "divide": "Div",
                    "true_divide": "Div"}


def _arithmetic(g, layer, x, out_shape):
    """One elementwise node on two operands, tensors or numbers."""
    xs = x if isinstance(x, list) else [x]
    args = layer.op_args
    if layer.op_kwargs or len(args) != 2 or not all(
            isinstance(a, dict) or (isinstance(a, (int, float)) and not isinstance(a, bool))
            for a in args):
        raise _unsupported(layer, f"ONNX export writes {layer.op} on two operands (tensors or "
                                  f"numbers), not {args!r}")
    if len({t.perm for t in xs}) > 1 or len({len(t.shape) for t in xs}) > 1:
        xs = [g.nhwc(t) for t in xs]  # broadcasting lines up as pynn's shapes do
    names = [xs[a["tensor"]].name if isinstance(a, dict)
             else g.const(a, f"{layer.name}_const", np.dtype(xs[0].dtype)) for a in args]
    y = g.op(_ONNX_ARITHMETIC[layer.op], names, layer.name)
    return g.tensor(y, out_shape, xs[0].perm, xs[0].dtype)


def _det(g, layer, x, out_shape):
    if layer.op_args != [{"tensor": 0}] or layer.op_kwargs:
        raise _unsupported(layer, "det takes its one input alone")
    x = g.nhwc(x)
    return g.tensor(g.op("Det", [x.name], layer.name), out_shape)


_OP_CONVERTERS.update(dict.fromkeys(_ONNX_ARITHMETIC, _arithmetic), det=_det)


def _convert(g, layer, x, out_shape):
    fn = _CONVERTERS.get(type(layer).__name__)
    if fn is None:
        raise _unsupported(layer, f"ONNX export knows {sorted(_CONVERTERS)}")
    out = fn(g, layer, x, out_shape)
    # -- Keras 3's log_softmax or sparsemax as a layer's activation= (layers.base
    # _attach_row_activation): after the layer's linear part
    row = getattr(layer, "_row_activation", None)
    if row is not None:
        out = _apply_activation(g, layer, out, row, 0.0, f"{layer.name}_{row}")
    return out




# -- the model --------------------------------------------------------------------------
def _built_graph(model, input_signature):
    graph = getattr(model, "_graph", None)
    if graph is None and input_signature is not None:
        shapes = [tuple(s) for s in input_signature]
        model.build(shapes[0] if len(shapes) == 1 else shapes)
        graph = model._graph
    if graph is None:
        raise ValueError(f"pynn.onnx.export: model '{model.name}' is not built; give it an "
                         f"Input, call build(input_shape) or pass input_signature")
    if input_signature is not None:
        given = [tuple(s) for s in input_signature]
        have = [tuple(t.shape) for t in graph.inputs]
        if len(given) != len(have) or any(
                len(a) != len(b) or any(x is not None and y is not None and x != y
                                        for x, y in zip(a[1:], b[1:]))
                for a, b in zip(given, have)):
            raise ValueError(f"pynn.onnx.export: input_signature {given} does not match the "
                             f"model's inputs {have}")
    return graph


def _walk(g, graph, values, masks=None):
    """Convert ``graph``'s nodes; ``values`` maps id(KerasTensor) -> _Tensor, ``masks``
    id(KerasTensor) -> the _Mask it carries."""
    masks = {} if masks is None else masks
    for node in graph.nodes:
        if node.is_input:
            continue
        layer = node.layer
        ins = [values[id(t)] for t in node.inputs]
        in_masks = [masks.get(id(t)) for t in node.inputs]
        sub = getattr(layer, "_graph", None)
        if sub is not None:  # a model used as a layer: inlined
            inner = {id(t): x for t, x in zip(sub.inputs, ins)}
            inner_masks = {id(s): m for s, m in zip(sub.inputs, in_masks) if m is not None}
            _walk(g, sub, inner, inner_masks)
            outs = [inner[id(t)] for t in sub.outputs]
            out_masks = [inner_masks.get(id(t)) for t in sub.outputs]
        else:
            out_shape = ([t.shape for t in node.outputs] if len(node.outputs) > 1
                         else node.outputs[0].shape)
            x = ins if node.several else ins[0]
            reader = _mask_reader(layer, in_masks)
            mask = next((m for m in in_masks if m is not None), None)
            if reader is None:
                y = _convert(g, layer, x, out_shape)
            elif type(layer).__name__ in _READS_EVERY_MASK:
                y = reader(g, layer, x, out_shape, in_masks)
            else:
                y = reader(g, layer, x, out_shape, mask.tensor(g))
            outs = y if isinstance(y, list) else [y]
            out_masks = _masks_after(g, layer, node, ins, in_masks, outs)
        for t, y, m in zip(node.outputs, outs, out_masks):
            values[id(t)] = y
            if m is not None:
                masks[id(t)] = m


class _Mask:
    """A Keras mask carried beside a tensor: ``label`` names the layer that made it, and
    ``build(g)`` writes the nodes of its float32 tensor of 0s and 1s (pynn's layout, rank
    ``rank``: batch and steps, the tensor's features left out), once, when a layer first
    reads it."""

    __slots__ = ("_build", "_name", "label", "rank")

    def __init__(self, label, rank, build):
        self.label, self.rank, self._build, self._name = label, rank, build, None

    def tensor(self, g):
        if self._name is None:
            self._name = self._build(g)
        return self._name


def _takes_mask_at_inference(layer):
    """Whether ``layer``'s inference numbers depend on the mask it is given (the exported
    graph runs inference: BatchNormalization uses only its moving statistics there, and a
    TimeDistributed hands the mask to its inner layer only when that one takes a mask)."""
    from pynn.layers.base import takes_mask

    inner = getattr(layer, "mask_delegate", None)
    if inner is not None:
        return _takes_mask_at_inference(inner)
    kind = type(layer).__name__
    if kind == "BatchNormalization":
        return False
    if kind == "TimeDistributed":
        return _takes_mask_at_inference(layer.layer)
    return takes_mask(layer)


def _mask_reader(layer, in_masks):
    """The converter of ``layer`` reading its input's mask tensor, None where it reads none
    (no mask arrives, or the layer ignores it at inference); a layer whose masked numbers
    ONNX's ops cannot give (a recurrent layer skips masked steps, which its ONNX op cannot)
    is refused, naming the layer that made the mask."""
    mask = next((m for m in in_masks if m is not None), None)
    if mask is None or not _takes_mask_at_inference(layer):
        return None
    reader = _MASK_READERS.get(type(layer).__name__)
    if reader is None:
        raise _unsupported(layer, f"it reads the mask that {mask.label} makes, which ONNX's "
                                  f"ops cannot take (padded inputs would give other numbers); "
                                  f"export a model without it (mask_zero=False, no Masking)")
    return reader


def _masked_global_average_1d(g, layer, x, out_shape, mask):
    """Keras's masked mean over the steps, sum_t(m x) / sum_t(m), as pynn computes it: the
    weights m / sum_t(m) (NaN for a row of padding alone, as in Keras) batch-multiplied with
    x."""
    x = g.nhwc(x)
    hint = layer.name
    count = g.reduce("ReduceSum", mask, [1], f"{hint}_count")
    weights = g.unsqueeze(g.op("Div", [mask, count], f"{hint}_weights"), [1],
                          f"{hint}_weights_row")
    y = g.op("MatMul", [weights, x.name], f"{hint}_sum" if not layer.keepdims else hint)
    if layer.keepdims:
        return g.tensor(y, out_shape)
    return g.tensor(g.squeeze(y, [1], hint), out_shape)


_MASK_READERS = {"GlobalAveragePooling1D": _masked_global_average_1d}
for _kind in ("SimpleRNN", "LSTM", "GRU", "RNN", "Bidirectional", "QuantizedSimpleRNN",
              "QuantizedLSTM", "QuantizedGRU", "TimeDistributed"):
    _MASK_READERS[_kind] = lambda g, layer, x, out_shape, mask: _CONVERTERS[
        type(layer).__name__](g, layer, x, out_shape, mask)
# readers given every input's _Mask (None where an input has none), not the first mask's
# tensor: the attention layers tell the query's mask from the value's and the key's
_MASK_READERS["MultiHeadAttention"] = _multi_head_attention
_MASK_READERS["GroupQueryAttention"] = _multi_head_attention
_MASK_READERS["Attention"] = _dot_attention
_MASK_READERS["AdditiveAttention"] = _additive_attention
_READS_EVERY_MASK = {"MultiHeadAttention", "GroupQueryAttention", "Attention",
                     "AdditiveAttention"}


def _masks_after(g, layer, node, ins, in_masks, outs):
    """The _Mask (or None) of each of ``layer``'s outputs, by pynn's compute_mask rules:
    Embedding and Masking make one, the merges combine theirs, a layer that supports
    masking passes its input's on, any other drops it."""
    from pynn.layers.base import makes_mask

    kind = type(getattr(layer, "mask_delegate", None) or layer).__name__
    n = len(outs)
    if kind == "Embedding" and makes_mask(layer):
        def build(g):   # (nodes and constants only when a layer reads the mask)
            ids = g.nhwc(ins[0]).name
            zero = g.const(0, f"{layer.name}_pad", {"int32": np.int32, "int64": np.int64}.get(
                ins[0].dtype, np.float32))
            differs = g.op("Not", [g.op("Equal", [ids, zero], f"{layer.name}_is_pad")],
                           f"{layer.name}_kept")
            return g.op("Cast", [differs], f"{layer.name}_mask", to=g.onnx.TensorProto.FLOAT)
        return [_Mask(_label(layer), len(ins[0].shape), build)] * n
    if kind == "Masking":
        def build(g):
            x = g.nhwc(ins[0])
            value = g.const(layer.mask_value, f"{layer.name}_mask_value")
            differs = g.op("Not", [g.op("Equal", [x.name, value], f"{layer.name}_m_equal")],
                           f"{layer.name}_m_differs")
            as_float = g.op("Cast", [differs], f"{layer.name}_m_cast",
                            to=g.onnx.TensorProto.FLOAT)
            return g.reduce("ReduceMax", as_float, [len(x.shape) - 1], f"{layer.name}_mask",
                            keepdims=False)
        return [_Mask(_label(layer), len(ins[0].shape) - 1, build)] * n
    present = [m for m in in_masks if m is not None]
    if not present:
        return [None] * n
    if kind in ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"):
        if len(present) < len(in_masks):
            return [None] * n   # pynn's merges drop the mask unless every input has one
        if len(present) == 1:
            return [present[0]] * n

        def build(g):   # the steps any input keeps (logical or)
            return g.op("Max", [m.tensor(g) for m in present], f"{layer.name}_mask")
        return [_Mask(" and ".join(sorted({m.label for m in present})),
                      max(m.rank for m in present), build)] * n
    if kind == "Concatenate":
        return [_Mask(_label(layer), len(ins[0].shape) - 1,
                      _concatenated_mask(layer, ins, in_masks))] * n
    if kind in _READS_EVERY_MASK:   # the query's mask; none on the attention scores
        return [in_masks[0]] + [None] * (n - 1)
    probe = np.ones((1, 1), bool)
    try:
        passed = layer.compute_mask(None, [probe] * len(node.inputs) if node.several else probe)
    except Exception:  # noqa: BLE001  (a rule that needs the values: assume it passes)
        return [present[0]] * n
    passed = passed if isinstance(passed, list) else [passed] * n
    return [present[0] if m is not None else None for m in passed]


def _concatenated_mask(layer, ins, in_masks):
    """pynn's Concatenate.compute_mask in ONNX: each input's mask (all ones where it has
    none) spread over that input's shape, concatenated like the values, then `any` over
    the last axis."""
    def build(g):
        spread = []
        for k, (x, m) in enumerate(zip(ins, in_masks)):
            x = g.nhwc(x)
            hint = f"{layer.name}_mask{k}"
            ones = g.op("ConstantOfShape", [g.op("Shape", [x.name], f"{hint}_shape")], hint,
                        value=g.onnx.helper.make_tensor("one", g.onnx.TensorProto.FLOAT, [1],
                                                        [1.0]))
            if m is None:
                spread.append(ones)
                continue
            # trailing axes up to the input's rank, then broadcast over them
            trailing = list(range(m.rank, len(x.shape)))
            mt = m.tensor(g)
            wide = g.unsqueeze(mt, trailing, f"{hint}_wide") if trailing else mt
            spread.append(g.op("Mul", [wide, ones], f"{hint}_spread"))
        axis = layer.axis % len(ins[0].shape)
        joined = g.op("Concat", spread, f"{layer.name}_mask_joined", axis=axis)
        return g.reduce("ReduceMax", joined, [len(ins[0].shape) - 1], f"{layer.name}_mask",
                        keepdims=False)
    return build


def export(model, path=None, opset=None, input_signature=None, batch_size=None):
    """Write ``model`` (a built pynn Sequential or functional Model) to ONNX file ``path``
    and return the ``onnx.ModelProto`` (``path=None``: only returned).

    ``opset``: the ONNX opset (default DEFAULT_OPSET, at least MIN_OPSET).
    ``input_signature``: the input shapes, batch axis included (e.g. ``[(None, 28, 28, 1)]``),
    to build an unbuilt model; checked against a built one.
    ``batch_size``: None (default) leaves the batch axis dynamic; an int fixes it.

    The graph takes the model's inputs in pynn's layout (channels-last) and runs inference:
    Dropout and the noise layers are the identity, BatchNormalization uses its moving
    statistics. A layer with no ONNX form raises ValueError naming it.
    """
    onnx = _onnx()
    opset = DEFAULT_OPSET if opset is None else opset
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ValueError(f"pynn.onnx.export: opset must be an int in [{MIN_OPSET}, {newest}] "
                         f"(the installed onnx {onnx.__version__} knows up to {newest}), got "
                         f"{opset!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(
            batch_size, int) or batch_size < 1):
        raise ValueError(f"pynn.onnx.export: batch_size must be a positive int or None, got "
                         f"{batch_size!r}")
    graph = _built_graph(model, input_signature)
    g = _Builder(onnx, opset)
    elem = {"float32": onnx.TensorProto.FLOAT, "int32": onnx.TensorProto.INT32,
            "int64": onnx.TensorProto.INT64}

    def value_info(name, shape, dtype):
        dims = ["batch" if batch_size is None else batch_size]
        dims += [d if d is not None else f"{name}_dim{k}" for k, d in enumerate(shape[1:], 1)]
        return onnx.helper.make_tensor_value_info(name, elem[dtype], dims)

    values, graph_inputs = {}, []
    for t in graph.inputs:
        dtype = str(t.dtype) if str(t.dtype) in ("int32", "int64") else "float32"
        name = g.fresh(t.node.layer.name)
        graph_inputs.append(value_info(name, t.shape, dtype))
        values[id(t)] = g.tensor(name, t.shape, dtype=dtype)
    # The outputs are named after their layers: those names are taken before any other.
    out_names = [g.fresh(t.node.layer.name if t.node is not None else t.name)
                 for t in graph.outputs]
    _walk(g, graph, values)

    graph_outputs = []
    for t, out_name in zip(graph.outputs, out_names):
        y = g.nhwc(values[id(t)])
        g.nodes.append(onnx.helper.make_node("Identity", [y.name], [out_name],
                                             name=g.fresh(f"{out_name}/Identity")))
        graph_outputs.append(value_info(out_name, t.shape, y.dtype))
    onnx_graph = onnx.helper.make_graph(g.nodes, model.name, graph_inputs, graph_outputs,
                                        g.initializers)
    proto = onnx.helper.make_model(onnx_graph, producer_name="pynn",
                                   opset_imports=[onnx.helper.make_opsetid("", opset)])
    # The oldest IR version that carries this opset: runtimes refuse IR versions newer than
    # they know even when they know the opset.
    proto.ir_version = onnx.helper.find_min_ir_version_for(proto.opset_import)
    onnx.checker.check_model(proto, full_check=True)
    if path is not None:
        onnx.save(proto, str(path))
    return proto


def load(source, channels_last_inputs=False):
    """An ONNX model (path, bytes or onnx.ModelProto) as a pynn functional Model: see
    pynn.onnx_import.load."""
    from pynn.onnx_import import load as _load

    return _load(source, channels_last_inputs=channels_last_inputs)
