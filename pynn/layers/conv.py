"""Conv2D, channels_last, kernel (kh, kw, in / groups, filters) as in Keras. groups=1 runs the
GEMM conv2d_* ops; groups > 1 the direct grouped_conv2d_* ops (native/depthwise.pyx), whose
per-group reductions are short."""

from pynn import backend
from pynn.backend.operands.common import conv_output_size
from pynn.layers.base import (
    Layer,
    activation_config,
    bias_activation_backward,
    data_format_arg,
    padding_arg,
    pair,
    shape_str,
)
from pynn.layers.pooling import PoolGrad
from pynn.mixed_precision import NARROW_CHANNELS


class Conv2D(Layer):
    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None,
                 dilation_rate=(1, 1), groups=1, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, kernel_constraint=None,
                 bias_constraint=None, **kwargs):
        super().__init__(**kwargs)
        label = f"Conv2D '{self.name}'"
        if not isinstance(filters, int) or isinstance(filters, bool) or filters < 1:
            raise ValueError(f"{label}: filters must be a positive int, got {filters!r}")
        if (isinstance(groups, bool) or not isinstance(groups, int) or groups < 1
                or filters % groups):
            raise ValueError(f"{label}: groups must be a positive int dividing filters "
                             f"({filters}), got {groups!r}")
        self.groups = groups
        data_format_arg(label, data_format)
        self.filters = filters
        self.kernel_size = pair("kernel_size", label, kernel_size)
        self.strides = pair("strides", label, strides)
        self.padding = padding_arg(label, padding)
        self.dilation_rate = pair("dilation_rate", label, dilation_rate)
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(f"{label}: strides > 1 together with dilation_rate > 1 is not "
                             f"supported (as in Keras)")
        self.activation, self.alpha = activation_config(activation, self)
        self.use_bias = bool(use_bias)
        self._weight_args("kernel", kernel_initializer, kernel_regularizer, kernel_constraint)
        self._weight_args("bias", bias_initializer, bias_regularizer, bias_constraint)

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(f"Conv2D '{self.name}': expected input shape (None, H, W, C), got "
                             f"{shape_str(input_shape)}")
        if input_shape[-1] % self.groups:
            raise ValueError(f"Conv2D '{self.name}': groups={self.groups} must divide the input "
                             f"channels, got input shape {shape_str(input_shape)}")
        kh, kw = self.kernel_size
        self._add_kernel_and_bias((kh, kw, input_shape[-1] // self.groups, self.filters),
                                  self.filters)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        out = []
        for size, k, s, d in zip((h, w), self.kernel_size, self.strides, self.dilation_rate):
            if size is None:
                out.append(None)
                continue
            _, o = conv_output_size(size, k, s, d, self.padding)
            if o <= 0:
                raise ValueError(f"Conv2D '{self.name}': kernel {self.kernel_size} with dilation "
                                 f"{self.dilation_rate} is larger than the input "
                                 f"{shape_str(input_shape)} under padding='valid'")
            out.append(o)
        return (n, out[0], out[1], self.filters)

    def call(self, x, training=False):
        b = backend.current()
        bias = self.bias.value if self.use_bias else None
        if self.groups == 1:
            # mixed_bfloat16 (issue 17): the same contract on bf16-rounded operands.
            forward = b.bf16_conv2d_forward if self._bf16_compute else b.conv2d_forward
            y, z = forward(x, self.kernel.value, bias, self.strides, self.padding,
                           self.dilation_rate, self.activation, self.alpha)
        else:
            y, z = b.grouped_conv2d_forward(x, self.kernel.value, bias, self.strides,
                                            self.padding, self.dilation_rate, self.groups,
                                            self.activation, self.alpha)
        if training:
            self._cache = (x, y, z)
        return y

    def call_pooled(self, x, training, pool):
        """pool(self(x)) in one op where it can (backend conv2d_pool_forward; the plan's
        Conv2D -> MaxPooling2D, functional._fuse_conv_pool): each layer's cache is what its
        backward reads, y not kept (the conv's backward takes the pool's arrays)."""
        if self.groups != 1:
            return pool.call(self.call(x, training), training)
        b = backend.current()
        # mixed_bfloat16 (issue 17): the same contract on bf16-rounded operands
        forward = b.bf16_conv2d_pool_forward if self._bf16_compute else b.conv2d_pool_forward
        pooled, argmax = forward(
            x, self.kernel.value, self.bias.value if self.use_bias else None, self.strides,
            self.padding, self.dilation_rate, self.activation, self.alpha, pool.pool_size,
            pool.strides, pool.padding)
        if training:
            self._cache = (x, None, None)
            pool._cache = (argmax, tuple(self.compute_output_shape(tuple(x.shape))))
        return pooled

    def backward(self, dy):
        b = backend.current()
        x, y, z = self._cache
        self._cache = None
        kernel = self.kernel.value
        narrow_bf16 = self._bf16_compute and self.groups == 1 and x.shape[-1] < NARROW_CHANNELS
        if type(dy) is PoolGrad:   # a MaxPooling2D's, the only reader of y (_fuse_conv_pool)
            if self.groups == 1:
                return self._pool_backward(b, dy, x, y, z, kernel)
            if self.activation != "relu":
                dy = dy.dense(b)
            else:   # the grouped products on dz made from the pool's arrays
                pool = dy.pool
                dz, db = b.pooled_activation_bias_backward(
                    dy.dpool, dy.argmax, dy.pooled, y, pool.pool_size, pool.strides,
                    pool.padding, self.activation, self.alpha)
                if self.use_bias:
                    self.bias.grad = db
                return self._products_backward(b, dz, x, kernel)
        if narrow_bf16:
            # bf16's narrow convs run float32 on rounded operands, one fused pass; dz rounded
            # as the wide layers' (and bf16_conv2d_pool_backward's) where rounding dy does it
            # exactly (relu's mask and linear keep dy's values)
            x, kernel = b.bf16_round(x), b.bf16_round(kernel)
            if self.activation in ("relu", "linear"):
                dy = b.bf16_round(dy)
        elif self.groups > 1 or self._bf16_compute:
            return self._grouped_backward(b, dy, x, y, z)
        dx, self.kernel.grad, db = b.conv2d_backward(
            dy, x, z, y, kernel, self.strides, self.padding, self.dilation_rate,
            self.activation, self.alpha, self.use_bias, self.needs_input_grad)
        if self.use_bias:
            self.bias.grad = db
        return dx

    def _pool_backward(self, b, grad, x, y, z, kernel):
        pool = grad.pool
        backward = (b.bf16_conv2d_pool_backward if self._bf16_compute
                    else b.conv2d_pool_backward)
        dx, self.kernel.grad, db = backward(
            grad.dpool, grad.argmax, grad.pooled, x, z, y, kernel, self.strides, self.padding,
            self.dilation_rate, self.activation, self.alpha, self.use_bias,
            self.needs_input_grad, pool.pool_size, pool.strides, pool.padding)
        if self.use_bias:
            self.bias.grad = db
        return dx

    def _grouped_backward(self, b, dy, x, y, z):
        dz = bias_activation_backward(self, dy, z, y)
        return self._products_backward(b, dz, x, self.kernel.value)

    def _products_backward(self, b, dz, x, kernel):
        """The kernel gradient (set) and the input gradient (returned) from dz: the bf16
        twins of conv2d_backward's two GEMMs, or the grouped ops."""
        if self.groups == 1:  # mixed_bfloat16: the bf16 twins of conv2d_backward's two GEMMs
            self.kernel.grad = b.bf16_conv2d_backward_weight(
                x, dz, tuple(kernel.shape), self.strides, self.padding, self.dilation_rate)
            if not self.needs_input_grad:
                return None
            return b.bf16_conv2d_backward_input(dz, kernel, tuple(x.shape), self.strides,
                                                self.padding, self.dilation_rate)
        self.kernel.grad = b.grouped_conv2d_backward_weight(
            x, dz, tuple(kernel.shape), self.strides, self.padding, self.dilation_rate,
            self.groups)
        if not self.needs_input_grad:
            return None
        return b.grouped_conv2d_backward_input(dz, kernel, tuple(x.shape), self.strides,
                                               self.padding, self.dilation_rate, self.groups)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters, kernel_size=list(self.kernel_size), strides=list(self.strides),
            groups=self.groups,
            padding=self.padding, dilation_rate=list(self.dilation_rate),
            activation=self.activation, use_bias=self.use_bias,
        )
        return config
