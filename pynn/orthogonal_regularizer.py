"""Keras 3's ``OrthogonalRegularizer`` (``pynn.regularizers.OrthogonalRegularizer``): its
penalty composed of pynn.ops on the kernel's backend, its gradient from the same ops under a
tape, added to the kernel's gradient on the backend."""

import numpy as np

from pynn import backend, ops, regularizers
from pynn.autodiff import GradientTape, Tensor


class OrthogonalRegularizer(regularizers.Regularizer):
    """``factor * 0.5 * sum|W_n W_n^T - diag| / (size (size - 1) / 2)`` of a 2-D kernel whose
    rows (``mode="rows"``) or columns are first L2-normalized (Keras's formula: the mean
    absolute cosine between distinct rows, halved). Computed with pynn.ops on the kernel's
    backend; its gradient comes from the same ops under a tape."""

    def __init__(self, factor=0.01, mode="rows"):
        self.factor = regularizers._validate_float(factor, "factor")
        if mode not in ("rows", "columns"):
            raise ValueError(f"Invalid value for argument `mode`. Expected one of "
                             f"{{'rows', 'columns'}}. Received: mode={mode!r}")
        self.mode = mode

    def _penalty(self, w):
        if len(w.shape) != 2:
            raise ValueError(f"Inputs to OrthogonalRegularizer must have rank 2. Received: "
                             f"inputs.shape={tuple(w.shape)}")
        axis = 1 if self.mode == "rows" else 0
        size = w.shape[1 - axis]
        if size < 2:
            raise ValueError(f"OrthogonalRegularizer(mode={self.mode!r}): needs at least 2 "
                             f"{self.mode} to compare, got a kernel of shape {tuple(w.shape)}")
        # Keras's ops.normalize: x * min(rsqrt(sum(x^2)), 1 / epsilon)
        norms = ops.maximum(ops.sqrt(ops.sum(ops.square(w), axis=axis, keepdims=True)), 1e-7)
        unit = ops.divide(w, norms)
        product = (ops.matmul(unit, ops.transpose(unit)) if self.mode == "rows"
                   else ops.matmul(ops.transpose(unit), unit))
        off_diagonal = ops.multiply(product, np.float32(1.0) - np.eye(size, dtype=str(w.dtype)))
        pairs = size * (size - 1.0) / 2.0
        return ops.multiply(ops.sum(ops.abs(off_diagonal)), self.factor * 0.5 / pairs)

    def __call__(self, x):
        return float(np.asarray(self._penalty(Tensor(x) if not hasattr(x, "numpy") else x)))

    def apply_inplace(self, w, grad):
        weight = Tensor(w)
        with GradientTape() as tape:
            tape.watch(weight)
            penalty = self._penalty(weight)
        backend.current().add_inplace(grad, tape.gradient(penalty, weight).value)
        return float(np.asarray(penalty))

    def get_config(self):
        return {"factor": self.factor, "mode": self.mode}


# pynn.regularizers cannot import pynn.ops (the layers import the regularizers, pynn.ops the
# layers): the class registers itself there, as Keras's keras.regularizers names it
regularizers.OrthogonalRegularizer = OrthogonalRegularizer
regularizers.orthogonal_regularizer = OrthogonalRegularizer
regularizers._BY_NAME.update(orthogonalregularizer=OrthogonalRegularizer,
                             orthogonal_regularizer=OrthogonalRegularizer)
regularizers.__all__ += ["OrthogonalRegularizer", "orthogonal_regularizer"]
