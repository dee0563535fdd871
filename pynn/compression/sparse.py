"""Sparse inference of pruned layers (issue 18).

A Dense or Conv2D whose kernel is at least ``SPARSE_MIN_SPARSITY`` zeros predicts through
``sparse_dense_forward`` / ``sparse_conv2d_forward`` (native/sparse.pyx, opencl/sparse.cl)
instead of the dense GEMM or convolution: the model's inference plan
(pynn.layers.functional.Plan.inference_steps) asks ``sparse_inference_layer`` for each step's
layer. The kernel's nonzeros are gathered once and kept until the weights change
(pynn.variables.version), like the plan's folded BatchNorm kernels; below the threshold the
layer runs as it always did.

Crossover (bench: ``python -m pynn.examples.compress`` and tests/test_sparse.py's notes),
AMD EPYC, 2 shared cores, float32, relu, medians of 40 calls:

    kernel 784x512   sparsity 0.8   batch 1: dense 66 us / sparse 93 us    batch 64: 631 / 507
                     sparsity 0.9   batch 1: dense 51 us / sparse 57 us    batch 64: 669 / 459
                     sparsity 0.95  batch 1: dense 52 us / sparse 41 us    batch 64: 635 / 241
    kernel 256x128   sparsity 0.8   batch 1: dense 20 us / sparse 14 us    batch 64:  70 /  79
                     sparsity 0.9   batch 1: dense 17 us / sparse 12 us    batch 64:  70 /  59

so the sparse kernel wins from about 90% zeros at both batch sizes (from 80% on small layers
at batch 1): the threshold is 0.9. Conv2D 3x3 'same' relu, the same machine, 2 threads,
medians of 21 calls, dense conv2d_forward (direct or Winograd) / sparse, in us:

    8x8x32 -> 64     sparsity 0.8   batch 1:  68 /  82    batch 64:   683 /  1084
                     sparsity 0.9             65 /  60                717 /   771
                     sparsity 0.95            64 /  31                615 /   525
    16x16x64 -> 64   sparsity 0.8            241 / 156               4209 /  4469
                     sparsity 0.9            259 / 109               4176 /  2989
    32x32x32 -> 64   sparsity 0.9            257 / 163               9758 /  7687
    32x32x3 -> 32    sparsity 0.9             51 /  42               1375 /  1675
                     sparsity 0.95            51 /  39               1218 /  1425

so the same 0.9, except for kernels of fewer than ``SPARSE_CONV_MIN_TAPS`` taps per filter
(KH KW C: an RGB image's first layer), where copying the input rows costs more than the
few products save at batch 64.
"""

import os

import numpy as np

from pynn import backend, variables

SPARSE_MIN_SPARSITY = 0.9
SPARSE_CONV_MIN_TAPS = 64


def kernel_by_unit(kernel):
    """(indptr int32 (U+1,), indices int32 (nnz,), values (nnz,)) of a (C, U) host kernel's
    nonzeros by output unit, in input order (the sparse ops' layout), without a Python loop."""
    kernel = np.asarray(kernel)
    cols, rows = np.nonzero(kernel.T)  # by unit, then by input row
    counts = np.bincount(cols, minlength=kernel.shape[1])
    indptr = np.zeros(kernel.shape[1] + 1, np.int32)
    np.cumsum(counts, out=indptr[1:])
    return indptr, rows.astype(np.int32), np.ascontiguousarray(kernel.T[cols, rows])


class SparseStandIn:
    """Stands in for a layer in the inference plan: its sparse op while its kernel is sparse
    enough, the layer's own call otherwise."""

    def __init__(self, layer, threshold=SPARSE_MIN_SPARSITY):
        self.layer = layer
        self.name = layer.name
        self.threshold = threshold
        self._key = None
        self._packed = None

    def packed(self):
        """(indptr, indices, values) on the backend, or None while the kernel is too dense;
        recomputed when the weights change."""
        kernel = self.layer.kernel
        key = (variables.version(), backend.current().NAME, id(kernel.value))
        if key != self._key:
            b = backend.current()
            host = np.asarray(b.to_numpy(kernel.value))
            zeros = host.size - np.count_nonzero(host)
            self._packed = None
            if host.size and zeros / host.size >= self.threshold:
                # by output unit of the kernel as (inputs, units): a Conv2D's taps
                # (kh KW + kw) C + c are its rows
                indptr, indices, values = kernel_by_unit(host.reshape(-1, host.shape[-1]))
                self._packed = (b.asarray(indptr, np.int32), b.asarray(indices, np.int32),
                                b.asarray(values, host.dtype))
            self._key = key
        return self._packed

    def compute_mask(self, inputs, mask=None):
        return self.layer.compute_mask(inputs, mask)

    def call(self, x, training=False):
        packed = None if training else self.packed()
        if packed is None:
            return self.layer.call(x, training=training)
        return self._sparse_call(backend.current(), x, packed)


class SparseDense(SparseStandIn):
    """A Dense through sparse_dense_forward (any input rank >= 2)."""

    def _sparse_call(self, b, x, packed):
        layer = self.layer
        lead = tuple(x.shape[:-1])
        x2 = x if x.ndim == 2 else b.reshape(x, (-1, x.shape[-1]))
        y = b.sparse_dense_forward(x2, *packed, layer.bias.value if layer.use_bias else None,
                                   layer.activation, layer.alpha)
        return y if x.ndim == 2 else b.reshape(y, lead + (layer.units,))


class SparseConv2D(SparseStandIn):
    """A Conv2D (groups 1) through sparse_conv2d_forward."""

    def _sparse_call(self, b, x, packed):
        layer = self.layer
        return b.sparse_conv2d_forward(x, *packed,
                                       layer.bias.value if layer.use_bias else None,
                                       layer.kernel_size, layer.strides, layer.padding,
                                       layer.dilation_rate, layer.activation, layer.alpha)


def sparse_inference_layer(layer):
    """What the inference plan runs for ``layer``: a sparse stand-in for a Dense or a Conv2D
    (pruned, or a PruneLowMagnitude around one), the layer itself otherwise."""
    from pynn.layers.conv import Conv2D
    from pynn.layers.core import Dense
    from pynn.layers.pruning import PruneLowMagnitude

    inner = layer.layer if isinstance(layer, PruneLowMagnitude) else layer
    if type(inner) not in (Dense, Conv2D) or not inner.built or \
            getattr(inner, "_activation_fn", None) is not None:
        return layer
    if type(inner) is Dense:
        return _STAND_INS[SparseDense, type(layer).__name__](inner)
    if type(inner) is Conv2D and inner.groups == 1 and \
            int(np.prod(inner.kernel.shape[:-1])) >= SPARSE_CONV_MIN_TAPS:
        return _STAND_INS[SparseConv2D, type(layer).__name__](inner)
    return layer


# The stand-in's class carries the name of the layer it stands in for (Dense, Conv2D or
# PruneLowMagnitude), so the plan's messages ("Layer 'hidden' (Dense): out of memory") name
# the user's layer, not this module's helper.
_STAND_INS = {(base, name): type(name, (base,), {"__module__": __name__})
              for base, names in ((SparseDense, ("Dense", "PruneLowMagnitude")),
                                  (SparseConv2D, ("Conv2D", "PruneLowMagnitude")))
              for name in names}


def compressed_size(model, filepath):
    """Save ``model`` to ``filepath`` and return the file's size in bytes: pruned kernels
    are stored deflated (pynn.saving), so the size follows their nonzeros."""
    model.save(filepath)
    return os.path.getsize(filepath)
