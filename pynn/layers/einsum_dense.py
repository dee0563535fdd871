"""Keras 3's EinsumDense: ``activation(einsum(equation, x, kernel) + bias)``.

An equation ``"<input>,<kernel>-><output>"`` (``...`` on the left of the input and the
output, or on the right of both, as Keras takes it) sorts its letters into four kinds:
free (input and output: batch-like axes), contracted (input and kernel), kernel-out
(kernel and output) and summed (the input's alone, summed away first). The product is then
one Dense GEMM, (free, contracted) @ (contracted, kernel-out), between transposes on the
backend's own ops, so both backends run it and backward is the same GEMMs' gradients. A
letter in all three (a kernel that differs along a batch axis) is refused.

Keras's rules kept: the kernel's and bias's shapes (``_analyze_einsum_string``), the bias
broadcast over the output from its first axis on, and the kernel drawn as its (inputs,
outputs) matrix (Keras gives its VarianceScaling initializers the axes).
"""

import math
import re

import numpy as np

from pynn import backend, initializers
from pynn.backend.api import ACTIVATIONS_NEEDING_INPUT
from pynn.layers.base import Layer, activation_config, shape_str


class EinsumDense(Layer):
    """``EinsumDense(equation, output_shape, activation=None, bias_axes=None, ...)``."""

    def __init__(self, equation, output_shape, activation=None, bias_axes=None,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, kernel_constraint=None,
                 bias_constraint=None, lora_rank=None, lora_alpha=None, **kwargs):
        super().__init__(**kwargs)
        label = f"EinsumDense '{self.name}'"
        if lora_rank:
            raise ValueError(f"{label}: lora_rank is not supported")
        if not isinstance(equation, str):
            raise ValueError(f"{label}: equation must be a string, got {equation!r}")
        self.equation = equation.replace(" ", "")
        self._parse(label)
        if isinstance(output_shape, (int, np.integer)):
            output_shape = (int(output_shape),)
        try:
            self.partial_output_shape = tuple(None if d is None else int(d)
                                              for d in output_shape)
        except (TypeError, ValueError):
            raise ValueError(f"{label}: output_shape must be an int or a tuple of ints, got "
                             f"{output_shape!r}") from None
        if bias_axes is not None and (not isinstance(bias_axes, str)
                                      or set(bias_axes) - set(self._output)):
            raise ValueError(f"{label}: bias_axes must be letters of the output "
                             f"'{self._output}', got {bias_axes!r}")
        self.bias_axes = bias_axes
        self.activation, self.alpha = activation_config(activation, self)
        self._weight_args("kernel", kernel_initializer, kernel_regularizer, kernel_constraint)
        self._weight_args("bias", bias_initializer, bias_regularizer, bias_constraint)

    def _parse(self, label):
        eq = self.equation.replace("...", "0")
        for pattern, elided in (("([a-zA-Z]+),([a-zA-Z]+)->([a-zA-Z]+)$", None),
                                ("0([a-zA-Z]+),([a-zA-Z]+)->0([a-zA-Z]+)$", "left"),
                                ("([a-zA-Z]{2,})0,([a-zA-Z]+)->([a-zA-Z]+)0$", "right")):
            match = re.match(pattern, eq)
            if match:
                self._input, self._kernel, self._output = match.groups()
                self._elided = elided
                break
        else:
            raise ValueError(f"{label}: invalid equation '{self.equation}': it must be "
                             f"[X],[Y]->[Z], ...[X],[Y]->...[Z] or [X]...,[Y]->[Z]...")
        for term in (self._input, self._kernel, self._output):
            if len(set(term)) != len(term):
                raise ValueError(f"{label}: equation '{self.equation}' repeats a letter in "
                                 f"'{term}'")
        for c in self._kernel:
            if c not in self._input and c not in self._output:
                raise ValueError(f"{label}: kernel letter '{c}' is in neither the input nor "
                                 f"the output of '{self.equation}'")
            if c in self._input and c in self._output:
                raise ValueError(f"{label}: letter '{c}' of '{self.equation}' is in the "
                                 f"input, the kernel and the output (a kernel that differs "
                                 f"along a batch axis), which pynn does not support")
        for c in self._output:
            if c not in self._input and c not in self._kernel:
                raise ValueError(f"{label}: output letter '{c}' of '{self.equation}' has no "
                                 f"input or kernel axis")

    # -- shapes (Keras's _analyze_split_string) ------------------------------------------
    def _full_terms(self, rank):
        """(input, output) letters with the ellipsis spelled out for an input of ``rank``."""
        extra = rank - len(self._input)
        if extra < 0 or (extra and self._elided is None):
            raise ValueError(f"EinsumDense '{self.name}': equation '{self.equation}' names "
                             f"{len(self._input)} input axes, got an input of rank {rank}")
        letters = "".join(c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                          if c not in self._input + self._kernel + self._output)[:extra]
        if self._elided == "left":
            return letters + self._input, letters + self._output
        return self._input + letters, self._output + letters

    def _analyze(self, input_shape):
        label = f"EinsumDense '{self.name}'"
        rank = len(input_shape)
        inp, out = self._full_terms(rank)
        extra = rank - len(self._input)
        partial = list(self.partial_output_shape)
        if self._elided == "left":
            full = [input_shape[0]] + list(input_shape[1:extra]) + partial \
                if extra else [input_shape[0]] + partial
        else:
            full = [input_shape[0]] + partial + list(input_shape[rank - extra:])
        if len(full) != len(out):
            raise ValueError(f"{label}: output_shape {self.partial_output_shape} and the "
                             f"equation '{self.equation}' give {len(full)} output axes for "
                             f"'{out}'")
        sizes = dict(zip(inp, input_shape))
        for c, d in zip(out, full):
            if c in sizes and d is not None and sizes[c] is not None and d != sizes[c]:
                raise ValueError(f"{label}: input shape {shape_str(input_shape)} and output "
                                 f"shape {shape_str(tuple(full))} differ at axis '{c}'")
            sizes.setdefault(c, d)
        kernel_shape = tuple(sizes[c] for c in self._kernel)
        if any(d is None for d in kernel_shape):
            raise ValueError(f"{label}: the kernel's axes must be known, got "
                             f"{shape_str(kernel_shape)} for input {shape_str(input_shape)}")
        full = tuple(sizes.get(c) if d is None else d for c, d in zip(out, full))
        bias_shape = None
        if self.bias_axes:
            first = min(self._output.index(c) for c in self.bias_axes)
            bias_shape = tuple(sizes[c] if c in self.bias_axes else 1
                               for c in self._output[first:])
            if self._elided == "right":
                bias_shape += (1,) * extra
        return inp, out, kernel_shape, bias_shape, full

    def build(self, input_shape):
        if len(input_shape) < 2:
            raise ValueError(f"EinsumDense '{self.name}': expected a batched input, got "
                             f"{shape_str(input_shape)}")
        _, _, kernel_shape, bias_shape, _ = self._analyze(tuple(input_shape))
        ins = [i for i, c in enumerate(self._kernel) if c in self._input]
        outs = [i for i, c in enumerate(self._kernel) if c not in self._input]
        self.kernel = self.add_weight("kernel", kernel_shape,
                                      initializers.by_axes(self.kernel_initializer, ins,
                                                           outs),
                                      self.kernel_regularizer,
                                      constraint=self.kernel_constraint)
        self.bias = (self.add_weight("bias", bias_shape, self.bias_initializer,
                                     self.bias_regularizer, constraint=self.bias_constraint)
                     if bias_shape is not None else None)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return self._analyze(tuple(input_shape))[4]

    # -- the computation -----------------------------------------------------------------
    def _plan(self, x_shape):
        inp, out, _, _, _ = self._analyze((None,) + tuple(x_shape[1:]))
        free = [c for c in inp if c in out]
        contract = [c for c in self._kernel if c in inp]
        kout = [c for c in self._kernel if c not in inp]
        summed = [i for i, c in enumerate(inp) if c not in out and c not in self._kernel]
        kept = "".join(c for c in inp if c in out or c in self._kernel)
        return inp, out, free, contract, kout, summed, kept

    def call(self, x, training=False):
        b = backend.current()
        inp, out, free, contract, kout, summed, kept = self._plan(x.shape)
        size = dict(zip(inp, x.shape))
        size.update(zip(self._kernel, self.kernel.shape))
        xs = b.reduce_axes(x, tuple(summed), "sum", False) if summed else x
        order = [kept.index(c) for c in free + contract]
        xp = b.transpose_forward(xs, tuple(order)) if order != sorted(order) else xs
        rows = math.prod(size[c] for c in free)
        depth = math.prod(size[c] for c in contract)
        cols = math.prod(size[c] for c in kout)
        x2 = b.reshape(xp, (rows, depth))
        korder = [self._kernel.index(c) for c in contract + kout]
        kp = (b.transpose_forward(self.kernel.value, tuple(korder))
              if korder != sorted(korder) else self.kernel.value)
        k2 = b.reshape(kp, (depth, cols))
        forward = b.bf16_dense_forward if self._bf16_compute else b.dense_forward
        y2, _ = forward(x2, k2, None, "linear", 0.0)
        got = free + kout
        y = b.reshape(y2, tuple(size[c] for c in got))
        oorder = [got.index(c) for c in out]
        y = b.transpose_forward(y, tuple(oorder)) if oorder != sorted(oorder) else y
        z = y if self.bias is None else b.elementwise_binary(y, self.bias.value, "add")
        result = z
        if self.activation != "linear":
            result = b.activation_forward(z, self.activation, self.alpha)
            if isinstance(result, tuple):
                result = result[0]
        if training:
            self._cache = (x.shape, x2, k2, korder, oorder, got, size, summed, kept,
                           order, z if self.activation in ACTIVATIONS_NEEDING_INPUT else None,
                           result)
        return result

    def backward(self, dy):
        b = backend.current()
        (x_shape, x2, k2, korder, oorder, got, size, summed, kept, order, z,
         result) = self._cache
        self._cache = None
        if self.activation != "linear":
            dy = b.activation_backward(dy, z, result, self.activation, self.alpha)
        if self.bias is not None:
            self.bias.grad = _sum_to(b, dy, self.bias.shape)
        # back to the product's (free, kernel-out) layout
        back = np.argsort(oorder).tolist()
        dyp = b.transpose_forward(dy, tuple(back)) if back != sorted(back) else dy
        dy2 = b.reshape(dyp, (x2.shape[0], k2.shape[1]))
        bf16 = self._bf16_compute
        dk2 = (b.bf16_dense_backward_weight if bf16 else b.dense_backward_weight)(x2, dy2)
        contract_kout = [self._kernel[i] for i in korder]
        dk = b.reshape(dk2, tuple(size[c] for c in contract_kout))
        kback = np.argsort(korder).tolist()
        self.kernel.grad = (b.transpose_forward(dk, tuple(kback)) if kback != sorted(kback)
                            else dk)
        if not self.needs_input_grad:
            return None
        dx2 = (b.bf16_dense_backward_input if bf16 else b.dense_backward_input)(dy2, k2)
        free_contract = [kept[i] for i in order]
        dxp = b.reshape(dx2, tuple(size[c] for c in free_contract))
        xback = np.argsort(order).tolist()
        dxs = b.transpose_forward(dxp, tuple(xback)) if xback != sorted(xback) else dxp
        if not summed:
            return dxs
        # the summed axes: the gradient of a sum is its broadcast back
        expanded = list(x_shape)
        for i in summed:
            expanded[i] = 1
        return b.elementwise_binary(b.zeros(tuple(x_shape), dxs.dtype),
                                    b.reshape(dxs, tuple(expanded)), "add")

    def get_config(self):
        config = super().get_config()
        config.update(equation=self.equation, output_shape=list(self.partial_output_shape),
                      activation=self.activation, bias_axes=self.bias_axes)
        return config


def _sum_to(b, g, shape):
    """g summed down to ``shape`` (a trailing broadcast of it), on the backend."""
    shape = tuple(shape)
    lead = len(g.shape) - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(shape)
                                      if d == 1 and g.shape[lead + i] != 1)
    summed = b.reduce_axes(g, axes, "sum", True) if axes else g
    return b.reshape(summed, shape)
