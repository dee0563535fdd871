"""Keras 3's MultiHeadAttention on the ``attention`` ops (native/attention.pyx,
opencl/attention.cl).

Legend: N batch, T query steps, S key/value steps, H heads, K key_dim, V value_dim, E the
output width. The four projections are Keras's EinsumDense sublayers, each one Dense product
here: query (N*T, Dq) @ kernel (Dq, H*K), the kernel kept in Keras's (Dq, H, K) layout
(viewed as a matrix, nothing copied), so ``set_weights(keras_layer.get_weights())`` takes
Keras's arrays in Keras's order (query, key, [gate,] value, attention_output; each kernel
then bias). The projections come out as (N, T, H, K), which is the layout the attention ops
read directly.

Masks follow Keras's ``_compute_attention_mask``: the query's mask (N, T, 1), the value's and
the key's (N, 1, S), ``use_causal_mask``'s lower triangle, ``sliding_window``'s band and an
explicit ``attention_mask`` (nonzero = attend) are and-ed on the host into one (N, T, S)
mask; a query step attending to nothing outputs the output projection's bias (its
probabilities are zeros, as Keras's masked Softmax makes them). The output carries the
query's mask.

Only Keras's default ``attention_axes`` (attention over the steps of (N, T, features)
inputs) is implemented; other axes are refused when the layer is built.
"""

import math

import numpy as np

from pynn import backend, constraints, initializers, regularizers
from pynn.layers.base import Layer, shape_str
from pynn.layers.noise import SeededLayer, drop_rate
from pynn.layers.symbolic import is_symbolic, record


class CallOptions(tuple):
    """How a MultiHeadAttention is called (Keras's per-call arguments, fixed by its first
    call): whether a key and an attention_mask follow query and value, use_causal_mask,
    return_attention_scores."""

    __slots__ = ()
    FIELDS = ("key", "attention_mask", "use_causal_mask", "return_attention_scores")

    def __new__(cls, key=False, attention_mask=False, use_causal_mask=False,
                return_attention_scores=False):
        return super().__new__(cls, (bool(key), bool(attention_mask), bool(use_causal_mask),
                                     bool(return_attention_scores)))

    key = property(lambda self: self[0])
    attention_mask = property(lambda self: self[1])
    use_causal_mask = property(lambda self: self[2])
    return_attention_scores = property(lambda self: self[3])

    def as_dict(self):
        return dict(zip(self.FIELDS, self))

    def __repr__(self):
        return ", ".join(f"{k}={v}" for k, v in self.as_dict().items())


def _positive_int(layer, name, value, optional=False):
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"MultiHeadAttention '{layer}': {name} must be a positive int"
                         f"{' or None' if optional else ''}, got {value!r}")
    return int(value)


class MultiHeadAttention(SeededLayer):
    """``MultiHeadAttention(num_heads, key_dim)(query, value, key=None, attention_mask=None,
    return_attention_scores=False, use_causal_mask=False)``, Keras 3's arguments and
    weights. Dropout on the attention probabilities draws from the ``dropout`` ops' counter
    stream (``seed``), as pynn's Dropout does."""

    _steps_free = True  # another call may have other steps (pynn.layers.symbolic)

    supports_masking = True

    def __init__(self, num_heads, key_dim, value_dim=None, dropout=0.0, use_bias=True,
                 output_shape=None, attention_axes=None, sliding_window=None,
                 flash_attention=None, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
                 kernel_constraint=None, bias_constraint=None, use_gate=False, seed=None,
                 call_options=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.num_heads = _positive_int(self.name, "num_heads", num_heads)
        self.key_dim = _positive_int(self.name, "key_dim", key_dim)
        self.value_dim = _positive_int(self.name, "value_dim", value_dim, optional=True) \
            or self.key_dim
        self.dropout = drop_rate(self, dropout)
        self.use_bias = bool(use_bias)
        self.use_gate = bool(use_gate)
        if output_shape is not None and not (isinstance(output_shape, (list, tuple))
                                             and not output_shape):
            shape = (output_shape,) if isinstance(output_shape, (int, np.integer)) \
                else output_shape
            try:
                shape = tuple(_positive_int(self.name, "output_shape", d) for d in shape)
            except TypeError:
                raise ValueError(f"MultiHeadAttention '{self.name}': output_shape must be an "
                                 f"int or a tuple of ints, got {output_shape!r}") from None
            self.output_shape_arg = shape
        else:
            self.output_shape_arg = None
        if isinstance(attention_axes, (int, np.integer)):
            attention_axes = (int(attention_axes),)
        if attention_axes is not None and not isinstance(attention_axes, (list, tuple)):
            raise ValueError(f"MultiHeadAttention '{self.name}': attention_axes must be an "
                             f"int, list or tuple, got {attention_axes!r}")
        self.attention_axes = None if attention_axes is None else tuple(attention_axes)
        self.sliding_window = _positive_int(self.name, "sliding_window", sliding_window,
                                            optional=True)
        self.flash_attention = flash_attention
        if flash_attention and self.dropout > 0:
            raise ValueError(f"MultiHeadAttention '{self.name}': dropout is not supported "
                             f"with flash_attention (Keras's rule); set dropout=0.0")
        self._weight_args("kernel", kernel_initializer, kernel_regularizer, kernel_constraint)
        self._weight_args("bias", bias_initializer, bias_regularizer, bias_constraint)
        self.scale = 1.0 / math.sqrt(float(self.key_dim))
        # How the layer is called (fixed by its first call; see __call__): which inputs
        # follow query and value, and the call options Keras takes per call.
        if call_options is not None:
            if not isinstance(call_options, dict) or set(call_options) - set(CallOptions.FIELDS):
                raise ValueError(f"MultiHeadAttention '{self.name}': call_options must be a "
                                 f"dict of {CallOptions.FIELDS}, got {call_options!r}")
            call_options = CallOptions(**call_options)
        self._call_options = call_options

    # -- calling -----------------------------------------------------------------------
    def __call__(self, query, value=None, key=None, query_mask=None, value_mask=None,
                 key_mask=None, attention_mask=None, return_attention_scores=False,
                 training=None, use_causal_mask=False, **kwargs):
        """Keras's call, or pynn's list form ``layer([query, value, key?, attention_mask?])``
        (how saved configs call it: the layer's ``call_options`` say which tensors follow)."""
        label = f"MultiHeadAttention '{self.name}'"
        if kwargs:
            raise TypeError(f"{label}: unexpected call arguments {sorted(kwargs)}")
        if value is None and isinstance(query, (list, tuple)):
            inputs = list(query)
            options = self._call_options or CallOptions(key=len(inputs) > 2)
            if len(inputs) != 2 + options.key + options.attention_mask:
                raise ValueError(f"{label}: called with {len(inputs)} tensors; its options "
                                 f"{options} take {2 + options.key + options.attention_mask}")
            masks = [None] * len(inputs)
        else:
            if value is None:
                raise TypeError(f"{label}: takes query and value tensors: layer(query, value, "
                                f"key=None, ...)")
            options = CallOptions(key is not None, attention_mask is not None,
                                  bool(use_causal_mask), bool(return_attention_scores))
            inputs = [query, value] + ([key] if key is not None else []) \
                + ([attention_mask] if attention_mask is not None else [])
            masks = [query_mask, value_mask] + ([key_mask] if key is not None else []) \
                + ([None] if attention_mask is not None else [])
        if self._call_options is None:
            self._call_options = options
        elif self._call_options != options:
            raise ValueError(f"{label}: every call of one layer must pass the same tensors and "
                             f"options ({self._call_options}); this one has {options}")
        if is_symbolic(inputs):
            if any(m is not None for m in masks):
                raise TypeError(f"{label}: in a functional model the inputs' masks come from "
                                f"the layers that make them (Embedding(mask_zero=True), "
                                f"Masking), not from query_mask / value_mask / key_mask")
            return record(self, inputs, {} if training is None else {"training": training})
        if any(m is not None for m in masks):
            return self._eager(inputs, training, masks)
        return Layer.__call__(self, inputs, training=training)

    def _eager(self, inputs, training, masks):
        if not self.built:
            self.build([(None,) + tuple(x.shape[1:]) for x in inputs])
        self.check_input(inputs)
        return self.call(inputs, training=bool(training), mask=masks)

    # -- shapes and weights --------------------------------------------------------------
    def _shapes(self, input_shape):
        label = f"MultiHeadAttention '{self.name}'"
        if (not isinstance(input_shape, (list, tuple)) or len(input_shape) < 2
                or not all(isinstance(d, (list, tuple)) for d in input_shape)):
            raise ValueError(f"{label}: expected the shapes of query and value, got "
                             f"{input_shape!r}")
        has_key, has_mask = (self._call_options or CallOptions(len(input_shape) > 2))[:2]
        want = 2 + has_key + has_mask
        if len(input_shape) != want:
            raise ValueError(f"{label}: expected {want} inputs, got {len(input_shape)}")
        query, value = tuple(input_shape[0]), tuple(input_shape[1])
        key = tuple(input_shape[2]) if has_key else value
        for name, shape in (("query", query), ("value", value), ("key", key)):
            if len(shape) != 3 or shape[-1] is None:
                raise ValueError(f"{label}: {name} must have shape (batch, steps, features) "
                                 f"(only the default attention_axes is supported), got "
                                 f"{shape_str(shape)}")
        if value[1] is not None and key[1] is not None and value[1] != key[1]:
            raise ValueError(f"{label}: value and key must have the same steps, got value "
                             f"{shape_str(value)} and key {shape_str(key)}")
        if has_mask:
            mask = tuple(input_shape[-1])
            if len(mask) != 3:
                raise ValueError(f"{label}: attention_mask must have shape (batch, "
                                 f"query steps, value steps), got {shape_str(mask)}")
        return query, value, key

    def build(self, input_shape):
        query, value, key = self._shapes(input_shape)
        if self.attention_axes not in (None, (1,), (-2,)):
            raise ValueError(f"MultiHeadAttention '{self.name}': attention_axes "
                             f"{self.attention_axes} is not supported; pynn attends over the "
                             f"steps of (batch, steps, features) inputs (the default)")
        h, kd, vd = self.num_heads, self.key_dim, self.value_dim
        out = self.output_shape_arg or (query[-1],)

        def projection(name, rows, width, heads=h):
            kernel = self.add_weight(f"{name}/kernel", (rows, heads, width),
                                     initializers.by_axes(self.kernel_initializer, [0], [1, 2]),
                                     self.kernel_regularizer, constraint=self.kernel_constraint)
            bias = (self.add_weight(f"{name}/bias", (heads, width), self.bias_initializer,
                                    self.bias_regularizer, constraint=self.bias_constraint)
                    if self.use_bias else None)
            return kernel, bias

        self.query_kernel, self.query_bias = projection("query", query[-1], kd)
        self.key_kernel, self.key_bias = projection("key", key[-1], kd, self._kv_heads)
        self.gate_kernel = self.gate_bias = None
        if self.use_gate:
            self.gate_kernel, self.gate_bias = projection("gate", query[-1], vd)
        self.value_kernel, self.value_bias = projection("value", value[-1], vd, self._kv_heads)
        self.output_kernel = self.add_weight(
            "attention_output/kernel", (h, vd) + tuple(out),
            initializers.by_axes(self.kernel_initializer, [0, 1],
                                 range(2, 2 + len(out))),
            self.kernel_regularizer, constraint=self.kernel_constraint)
        self.output_bias = (self.add_weight(
            "attention_output/bias", tuple(out), self.bias_initializer, self.bias_regularizer,
            constraint=self.bias_constraint) if self.use_bias else None)
        super().build([tuple(shape) for shape in input_shape])

    # GroupQueryAttention's key and value heads, each read by several query heads
    @property
    def _kv_heads(self):
        return self.num_heads

    def _repeat_heads(self, a):
        return a

    def _sum_heads(self, g):
        return g

    def compute_output_shape(self, input_shape):
        query, value, _ = self._shapes(input_shape)
        out = (query[0], query[1]) + tuple(self.output_shape_arg or (query[-1],))
        if self._call_options is not None and self._call_options[3]:
            return [out, (query[0], self.num_heads, query[1], value[1])]
        return out

    def compute_mask(self, inputs, mask=None):
        query_mask = mask[0] if isinstance(mask, (list, tuple)) else mask
        if self._call_options is not None and self._call_options[3]:
            return [query_mask, None]
        return query_mask

    # -- the computation -----------------------------------------------------------------
    def _attention_mask(self, inputs, mask, n, t, s):
        """The (N, T, S) uint8 mask of Keras's _compute_attention_mask, or None."""
        has_key, has_mask, causal, _ = self._call_options or CallOptions()
        masks = list(mask) if isinstance(mask, (list, tuple)) else [mask, None]
        label = f"MultiHeadAttention '{self.name}'"
        keep = None

        def meet(m, shape, name):
            nonlocal keep
            m = np.asarray(backend.current().to_numpy(m) if not isinstance(m, np.ndarray)
                           else m)
            try:
                m = np.broadcast_to(m.astype(bool).reshape(shape), (n, t, s))
            except ValueError:
                raise ValueError(f"{label}: {name} of shape {m.shape} does not fit query "
                                 f"steps {t} and value steps {s}") from None
            keep = m if keep is None else keep & m

        if masks[0] is not None:
            meet(masks[0], (n, t, 1), "the query's mask")
        if len(masks) > 1 and masks[1] is not None:
            meet(masks[1], (n, 1, s), "the value's mask")
        if has_key and len(masks) > 2 and masks[2] is not None:
            meet(masks[2], (n, 1, s), "the key's mask")
        if causal:
            meet(np.tri(t, s, dtype=bool), (1, t, s), "the causal mask")
        if self.sliding_window is not None:
            rows, cols = np.arange(t)[:, None], np.arange(s)[None, :]
            meet(np.abs(rows - cols) < self.sliding_window, (1, t, s), "the sliding window")
        if has_mask:
            explicit = np.asarray(backend.current().to_numpy(inputs[-1]))
            if explicit.ndim == 2:
                explicit = explicit[None]
            meet(explicit != 0, explicit.shape, "attention_mask")
        return None if keep is None else np.ascontiguousarray(keep, dtype=np.uint8)

    def _project(self, x, kernel, bias, width, activation="linear"):
        """(N, L, D) -> (N, L, H, width) through kernel (D, H, width): one Dense product."""
        b = backend.current()
        n, steps, d = x.shape
        x2 = b.reshape(x, (n * steps, d))
        heads = kernel.shape[1]
        k2 = b.reshape(kernel.value, (d, heads * width))
        bias2 = None if bias is None else b.reshape(bias.value, (heads * width,))
        forward = b.bf16_dense_forward if self._bf16_compute else b.dense_forward
        y, z = forward(x2, k2, bias2, activation, 0.0)
        return b.reshape(y, (n, steps, heads, width)), (x2, k2, y, z, (n, steps))

    def call(self, inputs, training=False, mask=None):
        b = backend.current()
        has_key, _, _, scores_out = self._call_options or CallOptions()
        query, value = inputs[0], inputs[1]
        key = inputs[2] if has_key else value
        n, t, s = query.shape[0], query.shape[1], value.shape[1]
        h, vd = self.num_heads, self.value_dim
        attend = self._attention_mask(inputs, mask, n, t, s)
        q, q_saved = self._project(query, self.query_kernel, self.query_bias, self.key_dim)
        k, k_saved = self._project(key, self.key_kernel, self.key_bias, self.key_dim)
        v, v_saved = self._project(value, self.value_kernel, self.value_bias, vd)
        k, v = self._repeat_heads(k), self._repeat_heads(v)
        if attend is not None and b.NAME != "cpu":
            attend = b.asarray(attend, np.uint8)
        drop = None
        if training and self.dropout > 0:
            ones = b.full((n, h, t, s), 1.0, q.dtype)
            drop, _ = b.dropout_forward(ones, self.dropout, self.seed, self._offset)
            self._offset += n * h * t * s
        att, probs = b.attention_forward(q, k, v, attend, self.scale, drop)
        att2 = b.reshape(att, (n * t, h * vd))
        gate_saved = None
        if self.use_gate:
            gate, gate_saved = self._project(query, self.gate_kernel, self.gate_bias, vd,
                                             "sigmoid")
            gate_saved = gate_saved + (att2,)
            att2 = b.merge_forward([att2, gate_saved[2]], "multiply")
        out_width = int(np.prod(self.output_kernel.shape[2:]))
        ok2 = b.reshape(self.output_kernel.value, (h * vd, out_width))
        ob2 = None if self.output_bias is None else b.reshape(self.output_bias.value,
                                                             (out_width,))
        forward = b.bf16_dense_forward if self._bf16_compute else b.dense_forward
        y, _ = forward(att2, ok2, ob2, "linear", 0.0)
        y = b.reshape(y, (n, t) + tuple(self.output_kernel.shape[2:]))
        if training:
            self._cache = (q, k, v, probs, drop, att2, ok2, q_saved, k_saved, v_saved,
                           gate_saved, has_key)
        return [y, probs] if scores_out else y

    def backward(self, dy):
        b = backend.current()
        (q, k, v, probs, drop, att2, ok2, q_saved, k_saved, v_saved, gate_saved,
         has_key) = self._cache
        self._cache = None
        dscores = None
        if isinstance(dy, (list, tuple)):
            dy, dscores = dy[0], dy[1]
        if dy is None:
            dy = b.zeros(tuple(q.shape[:2]) + tuple(self.output_kernel.shape[2:]), q.dtype)
        n, t, h, vd = q.shape[0], q.shape[1], self.num_heads, self.value_dim
        bf16 = self._bf16_compute
        weight_grad = b.bf16_dense_backward_weight if bf16 else b.dense_backward_weight
        input_grad = b.bf16_dense_backward_input if bf16 else b.dense_backward_input
        dz = b.reshape(dy, (n * t, ok2.shape[1]))
        self.output_kernel.grad = b.reshape(weight_grad(att2, dz), self.output_kernel.shape)
        if self.output_bias is not None:
            self.output_bias.grad = b.reshape(b.bias_backward(dz), self.output_bias.shape)
        datt2 = input_grad(dz, ok2)
        dquery_gate = None
        if gate_saved is not None:
            gate, att_plain = gate_saved[2], gate_saved[5]
            datt2, dgate = b.merge_backward(datt2, [att_plain, gate], "multiply")
            dquery_gate = self._project_backward(dgate, gate_saved[:5], self.gate_kernel,
                                                 self.gate_bias, "sigmoid")
        datt = b.reshape(datt2, (n, t, h, vd))
        dq, dk, dv = b.attention_backward(datt, q, k, v, probs, self.scale, drop, dscores)
        dk, dv = self._sum_heads(dk), self._sum_heads(dv)
        dquery = self._project_backward(dq, q_saved, self.query_kernel, self.query_bias)
        dkey = self._project_backward(dk, k_saved, self.key_kernel, self.key_bias)
        dvalue = self._project_backward(dv, v_saved, self.value_kernel, self.value_bias)
        if dquery_gate is not None and dquery is not None:
            b.add_inplace(dquery, dquery_gate)
        if not self.needs_input_grad:
            dquery = dvalue = dkey = None
        elif not has_key:  # the key projection read value too
            b.add_inplace(dvalue, dkey)
        grads = [dquery, dvalue] + ([dkey] if has_key else [])
        if self._call_options is not None and self._call_options[1]:
            grads.append(None)   # attention_mask: no gradient
        return grads

    def _project_backward(self, dp, saved, kernel, bias, activation="linear"):
        """The projection's weight gradients; returns its input gradient (N, L, D)."""
        b = backend.current()
        x2, k2, y, z, lead = saved
        dz = b.reshape(dp, (x2.shape[0], k2.shape[1]))
        if activation != "linear":
            if bias is not None:
                dz, db = b.activation_bias_backward(dz, z, y, activation, 0.0)
                bias.grad = b.reshape(db, bias.shape)
            else:
                dz = b.activation_backward(dz, z, y, activation, 0.0)
        elif bias is not None:
            bias.grad = b.reshape(b.bias_backward(dz), bias.shape)
        bf16 = self._bf16_compute
        kernel.grad = b.reshape((b.bf16_dense_backward_weight if bf16
                                 else b.dense_backward_weight)(x2, dz), kernel.shape)
        if not self.needs_input_grad:
            return None
        dx = (b.bf16_dense_backward_input if bf16 else b.dense_backward_input)(dz, k2)
        return b.reshape(dx, lead + (x2.shape[1],))

    def get_config(self):
        config = super().get_config()
        for kind in ("initializer", "regularizer", "constraint"):
            registry = {"initializer": initializers, "regularizer": regularizers,
                        "constraint": constraints}[kind]
            for weight in ("kernel", "bias"):
                config[f"{weight}_{kind}"] = registry.serialize(getattr(self,
                                                                        f"{weight}_{kind}"))
        config.update(num_heads=self.num_heads, key_dim=self.key_dim,
                      value_dim=self.value_dim, dropout=self.dropout, use_bias=self.use_bias,
                      use_gate=self.use_gate,
                      output_shape=None if self.output_shape_arg is None
                      else list(self.output_shape_arg),
                      attention_axes=None if self.attention_axes is None
                      else list(self.attention_axes),
                      sliding_window=self.sliding_window)
        if self._call_options is not None:   # pynn's own; Keras keeps them in its nodes
            config["call_options"] = self._call_options.as_dict()
        return config


class GroupQueryAttention(MultiHeadAttention):
    """Keras 3's ``GroupQueryAttention(head_dim, num_query_heads, num_key_value_heads)``:
    MultiHeadAttention whose key and value projections have fewer heads, each read by
    ``num_query_heads // num_key_value_heads`` consecutive query heads (Keras's
    ``ops.repeat`` along the heads); the output projection maps back to the query's
    features. The repeats are a broadcast on the backend, their gradients its sum."""

    def __init__(self, head_dim, num_query_heads, num_key_value_heads, dropout=0.0,
                 use_bias=True, sliding_window=None, flash_attention=None,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, kernel_constraint=None,
                 bias_constraint=None, use_gate=False, seed=None, call_options=None, **kwargs):
        super().__init__(num_query_heads, head_dim, value_dim=head_dim, dropout=dropout,
                         use_bias=use_bias, sliding_window=sliding_window,
                         flash_attention=flash_attention,
                         kernel_initializer=kernel_initializer,
                         bias_initializer=bias_initializer,
                         kernel_regularizer=kernel_regularizer,
                         bias_regularizer=bias_regularizer,
                         kernel_constraint=kernel_constraint, bias_constraint=bias_constraint,
                         use_gate=use_gate, seed=seed, call_options=call_options, **kwargs)
        self.num_key_value_heads = _positive_int(self.name, "num_key_value_heads",
                                                 num_key_value_heads)
        if self.num_heads % self.num_key_value_heads:
            raise ValueError(f"GroupQueryAttention '{self.name}': num_query_heads "
                             f"({self.num_heads}) must be divisible by num_key_value_heads "
                             f"({self.num_key_value_heads})")
        self.repeats = self.num_heads // self.num_key_value_heads

    def _shapes(self, input_shape):
        query, value, key = super()._shapes(input_shape)
        if query[-1] != value[-1]:
            raise ValueError(f"GroupQueryAttention '{self.name}': the last dimension of query "
                             f"and value must be equal (Keras's rule), got query "
                             f"{shape_str(query)} and value {shape_str(value)}")
        return query, value, key

    @property
    def _kv_heads(self):
        return self.num_key_value_heads

    def _repeat_heads(self, a):
        if self.repeats == 1:
            return a
        b = backend.current()
        n, s, heads, width = a.shape
        spread = b.elementwise_binary(b.zeros((n, s, heads, self.repeats, width), a.dtype),
                                      b.reshape(a, (n, s, heads, 1, width)), "add")
        return b.reshape(spread, (n, s, heads * self.repeats, width))

    def _sum_heads(self, g):
        if self.repeats == 1:
            return g
        b = backend.current()
        n, s, _, width = g.shape
        grouped = b.reshape(g, (n, s, self.num_key_value_heads, self.repeats, width))
        return b.reduce_axes(grouped, (3,), "sum", False)

    def get_config(self):
        config = super().get_config()
        for key in ("num_heads", "key_dim", "value_dim", "output_shape", "attention_axes"):
            config.pop(key, None)
        config.update(head_dim=self.key_dim, num_query_heads=self.num_heads,
                      num_key_value_heads=self.num_key_value_heads)
        return config


GroupedQueryAttention = GroupQueryAttention


# -- Keras 3's Attention (Luong) and AdditiveAttention (Bahdanau) ----------------------------
class _ScoreOptions(tuple):
    """How an Attention layer is called (Keras's per-call flags, fixed by its first call)."""

    __slots__ = ()
    FIELDS = ("use_causal_mask", "return_attention_scores")

    def __new__(cls, use_causal_mask=False, return_attention_scores=False):
        return super().__new__(cls, (bool(use_causal_mask), bool(return_attention_scores)))

    use_causal_mask = property(lambda self: self[0])
    return_attention_scores = property(lambda self: self[1])

    def as_dict(self):
        return dict(zip(self.FIELDS, self))


class Attention(SeededLayer):
    """Keras 3's ``Attention(use_scale=False, score_mode="dot", dropout=0.0)``, called on
    ``[query, value]`` or ``[query, value, key]``: scores = query key^T ("dot", times the
    trainable ``scale``) or ``concat_score_weight * sum(tanh(scale * (query + key)))``
    ("concat"); masked scores lowered by 1e9 (Keras's rule: a row whose values are all
    masked then attends to every value alike), softmax, dropout, times value; steps the
    query's mask drops output zeros. Each step is one of the backend's ops (dot_forward,
    elementwise, softmax, dropout), so both backends run it; its backward is theirs."""

    _steps_free = True  # another call may have other steps (pynn.layers.symbolic)

    supports_masking = True

    def __init__(self, use_scale=False, score_mode="dot", dropout=0.0, seed=None,
                 call_options=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        label = f"{type(self).__name__} '{self.name}'"
        if score_mode not in ("dot", "concat"):
            raise ValueError(f"{label}: score_mode must be 'dot' or 'concat', got "
                             f"{score_mode!r}")
        self.use_scale = bool(use_scale)
        self.score_mode = score_mode
        self.dropout = drop_rate(self, dropout)
        if call_options is not None:
            if not isinstance(call_options, dict) or set(call_options) - set(
                    _ScoreOptions.FIELDS):
                raise ValueError(f"{label}: call_options must be a dict of "
                                 f"{_ScoreOptions.FIELDS}, got {call_options!r}")
            call_options = _ScoreOptions(**call_options)
        self._call_options = call_options
        # A saved config's options: its rebuild calls the layer on the list alone
        self._options_from_config = call_options is not None

    def __call__(self, inputs, training=None, mask=None, return_attention_scores=False,
                 use_causal_mask=False, **kwargs):
        label = f"{type(self).__name__} '{self.name}'"
        if kwargs:
            raise TypeError(f"{label}: unexpected call arguments {sorted(kwargs)}")
        if not isinstance(inputs, (list, tuple)) or not 2 <= len(inputs) <= 3:
            raise ValueError(f"{label}: must be called on a list [query, value] or [query, "
                             f"value, key], got {type(inputs).__name__}"
                             + (f" of {len(inputs)}" if isinstance(inputs, (list, tuple))
                                else ""))
        options = _ScoreOptions(use_causal_mask, return_attention_scores)
        if self._options_from_config and options == _ScoreOptions():
            options = self._call_options
        self._options_from_config = False
        if self._call_options is None:
            self._call_options = options
        elif self._call_options != options:
            raise ValueError(f"{label}: every call of one layer must pass the same options "
                             f"({self._call_options.as_dict()}); this one has "
                             f"{options.as_dict()}")
        inputs = list(inputs)
        if is_symbolic(inputs):
            if mask is not None:
                raise TypeError(f"{label}: in a functional model the inputs' masks come from "
                                f"the layers that make them, not from mask=")
            return record(self, inputs, {} if training is None else {"training": training})
        if mask is not None:
            if not self.built:
                self.build([(None,) + tuple(x.shape[1:]) for x in inputs])
            self.check_input(inputs)
            return self.call(inputs, training=bool(training), mask=list(mask))
        return Layer.__call__(self, inputs, training=training)

    def _shapes(self, input_shape):
        label = f"{type(self).__name__} '{self.name}'"
        if (not isinstance(input_shape, (list, tuple)) or not 2 <= len(input_shape) <= 3
                or not all(isinstance(s, (list, tuple)) for s in input_shape)):
            raise ValueError(f"{label}: expected the shapes of [query, value] or [query, "
                             f"value, key], got {input_shape!r}")
        query, value = tuple(input_shape[0]), tuple(input_shape[1])
        key = tuple(input_shape[2]) if len(input_shape) > 2 else value
        for name, shape in (("query", query), ("value", value), ("key", key)):
            if len(shape) != 3:
                raise ValueError(f"{label}: {name} must have shape (batch, steps, dim), got "
                                 f"{shape_str(shape)}")
        if query[-1] is not None and key[-1] is not None and query[-1] != key[-1]:
            raise ValueError(f"{label}: query and key must have the same dim, got query "
                             f"{shape_str(query)} and key {shape_str(key)}")
        if value[1] is not None and key[1] is not None and value[1] != key[1]:
            raise ValueError(f"{label}: value and key must have the same steps, got value "
                             f"{shape_str(value)} and key {shape_str(key)}")
        return query, value, key

    def build(self, input_shape):
        query, _, _ = self._shapes(input_shape)
        self._add_score_weights(query[-1])
        super().build([tuple(s) for s in input_shape])

    def _add_score_weights(self, dim):
        self.scale = (self.add_weight("scale", (), "ones") if self.use_scale else None)
        self.concat_score_weight = (self.add_weight("concat_score_weight", (), "ones")
                                    if self.score_mode == "concat" else None)

    def compute_output_shape(self, input_shape):
        query, value, key = self._shapes(input_shape)
        out = query[:-1] + (value[-1],)
        if self._call_options is not None and self._call_options.return_attention_scores:
            return [out, query[:-1] + (key[1],)]
        return out

    def compute_mask(self, inputs, mask=None):
        query_mask = mask[0] if isinstance(mask, (list, tuple)) else None
        if self._call_options is not None and self._call_options.return_attention_scores:
            return [query_mask, None]
        return query_mask

    # -- scores ----------------------------------------------------------------------------
    def _tanh_sums(self, b, query, key, scale):
        """tanh(scale * (q + k)) (N, T, S, D) and the (q + k) it was taken of."""
        n, t, d = query.shape
        s = key.shape[1]
        qk = b.elementwise_binary(b.reshape(query, (n, t, 1, d)), b.reshape(key, (n, 1, s, d)),
                                  "add")
        inner = qk if scale is None else b.elementwise_binary(qk, scale, "multiply")
        return b.elementwise_unary(inner, "tanh"), qk

    def _scores(self, b, query, key, training):
        if self.score_mode == "dot":
            raw = b.dot_forward(query, key, (2, 2), False)
            if self.scale is None:
                return raw, (raw,)
            return b.elementwise_binary(raw, self.scale.value, "multiply"), (raw,)
        th, qk = self._tanh_sums(b, query, key, None if self.scale is None
                                 else self.scale.value)
        summed = b.reduce_axes(th, (3,), "sum", False)
        scores = b.elementwise_binary(summed, self.concat_score_weight.value, "multiply")
        return scores, (th, qk, summed)

    def _scores_backward(self, b, dscores, query, key, saved):
        """(dquery, dkey) of the scores, filling the score weights' gradients."""
        if self.score_mode == "dot":
            (raw,) = saved
            if self.scale is not None:
                self.scale.grad = b.reduce_axes(b.elementwise_binary(dscores, raw, "multiply"),
                                                None, "sum", False)
                dscores = b.elementwise_binary(dscores, self.scale.value, "multiply")
            return b.dot_backward(dscores, query, key, (2, 2), False)
        th, qk, summed = saved
        self.concat_score_weight.grad = b.reduce_axes(
            b.elementwise_binary(dscores, summed, "multiply"), None, "sum", False)
        dsum = b.elementwise_binary(dscores, self.concat_score_weight.value, "multiply")
        return self._tanh_backward(b, dsum, th, qk, query.shape, key.shape, None)

    def _tanh_backward(self, b, dsum, th, qk, qshape, kshape, vector):
        """Back through sum_d (vector *) tanh(scale (q + k)): (dquery, dkey); the scale's
        gradient (a scalar here, ``vector`` in AdditiveAttention) is filled."""
        n, t, s = dsum.shape
        d = qshape[-1]
        dth = b.reshape(dsum, (n, t, s, 1))
        if vector is not None:
            # scores = sum(vector * th): d(vector) = sum over n, t, s of dsum * th
            self.scale.grad = b.reduce_axes(b.elementwise_binary(dth, th, "multiply"),
                                            (0, 1, 2), "sum", False)
            dth = b.elementwise_binary(dth, vector.value, "multiply")
        one_minus = b.elementwise_binary(b.full((), 1.0, th.dtype),
                                         b.elementwise_binary(th, th, "multiply"), "subtract")
        dinner = b.elementwise_binary(dth, one_minus, "multiply")    # (N, T, S, D)
        if vector is None and self.scale is not None:   # inner = scale * (q + k)
            self.scale.grad = b.reduce_axes(b.elementwise_binary(dinner, qk, "multiply"),
                                            None, "sum", False)
            dinner = b.elementwise_binary(dinner, self.scale.value, "multiply")
        dquery = b.reduce_axes(dinner, (2,), "sum", False)
        dkey = b.reduce_axes(dinner, (1,), "sum", False)
        return b.reshape(dquery, (n, t, d)), b.reshape(dkey, (n, s, d))

    # -- the layer -------------------------------------------------------------------------
    def call(self, inputs, training=False, mask=None):
        b = backend.current()
        options = self._call_options or _ScoreOptions()
        query, value = inputs[0], inputs[1]
        key = inputs[2] if len(inputs) > 2 else value
        masks = list(mask) if isinstance(mask, (list, tuple)) else [None, None]
        n, t, s = query.shape[0], query.shape[1], key.shape[1]
        scores, saved = self._scores(b, query, key, training)
        keep = None
        if len(masks) > 1 and masks[1] is not None:
            keep = np.broadcast_to(_host_bool(masks[1]).reshape(n, 1, s), (n, t, s))
        if options.use_causal_mask:
            tri = np.tri(t, s, dtype=bool)[None]
            keep = tri if keep is None else keep & tri
        if keep is not None:   # Keras: scores - 1e9 where masked (exactly s where kept)
            penalty = np.where(np.broadcast_to(keep, (n, t, s)), 0.0, 1.0e9)
            scores = b.elementwise_binary(scores, b.asarray(penalty.astype(scores.dtype),
                                                            scores.dtype), "subtract")
        weights = b.softmax_forward(scores, -1)
        dropped, drop_mask = weights, None
        if training and self.dropout > 0:
            dropped, drop_mask = b.dropout_forward(weights, self.dropout, self.seed,
                                                   self._offset)
            self._offset += n * t * s
        out = b.dot_forward(dropped, value, (2, 1), False)
        query_keep = None
        if masks[0] is not None:
            query_keep = b.asarray(_host_bool(masks[0]).reshape(n, t, 1).astype(out.dtype),
                                   out.dtype)
            out = b.elementwise_binary(out, query_keep, "multiply")
        if training:
            self._cache = (query, value, key, len(inputs) > 2, saved, weights, dropped,
                           drop_mask, query_keep)
        return [out, dropped] if options.return_attention_scores else out

    def backward(self, dy):
        b = backend.current()
        (query, value, key, has_key, saved, weights, dropped, drop_mask,
         query_keep) = self._cache
        self._cache = None
        dscores_out = None
        if isinstance(dy, (list, tuple)):
            dy, dscores_out = dy[0], dy[1]
        if dy is None:
            dy = b.zeros((query.shape[0], query.shape[1], value.shape[-1]), query.dtype)
        if query_keep is not None:
            dy = b.elementwise_binary(dy, query_keep, "multiply")
        ddropped, dvalue = b.dot_backward(dy, dropped, value, (2, 1), False)
        if dscores_out is not None:   # the returned scores are the dropped weights
            b.add_inplace(ddropped, dscores_out)
        dweights = (ddropped if drop_mask is None
                    else b.dropout_backward(ddropped, drop_mask, self.dropout))
        dscores = b.softmax_backward(dweights, weights, -1)
        dquery, dkey = self._scores_backward(b, dscores, query, key, saved)
        if not self.needs_input_grad:
            return [None] * (3 if has_key else 2)
        if not has_key:
            b.add_inplace(dvalue, dkey)
            return [dquery, dvalue]
        return [dquery, dvalue, dkey]

    def get_config(self):
        config = super().get_config()
        config.update(use_scale=self.use_scale, score_mode=self.score_mode,
                      dropout=self.dropout)
        if self._call_options is not None:   # pynn's own; Keras keeps them in its nodes
            config["call_options"] = self._call_options.as_dict()
        return config


class AdditiveAttention(Attention):
    """Keras 3's ``AdditiveAttention(use_scale=True, dropout=0.0)``: scores =
    sum(scale * tanh(query + key)) with a trainable ``scale`` of the query's dim
    (glorot_uniform), then Attention's masking, softmax, dropout and product."""

    def __init__(self, use_scale=True, dropout=0.0, seed=None, **kwargs):
        kwargs.pop("score_mode", None)
        super().__init__(use_scale=use_scale, score_mode="concat", dropout=dropout, seed=seed,
                         **kwargs)

    def _add_score_weights(self, dim):
        self.scale = (self.add_weight("scale", (dim,), "glorot_uniform") if self.use_scale
                      else None)
        self.concat_score_weight = None

    def _scores(self, b, query, key, training):
        th, qk = self._tanh_sums(b, query, key, None)
        weighted = th if self.scale is None else b.elementwise_binary(th, self.scale.value,
                                                                      "multiply")
        return b.reduce_axes(weighted, (3,), "sum", False), (th, qk)

    def _scores_backward(self, b, dscores, query, key, saved):
        th, qk = saved
        return self._tanh_backward(b, dscores, th, qk, query.shape, key.shape, self.scale)

    def get_config(self):
        config = super().get_config()
        config.pop("score_mode")
        return config


def _host_bool(mask):
    return np.asarray(mask if isinstance(mask, np.ndarray)
                      else backend.current().to_numpy(mask)).astype(bool)
