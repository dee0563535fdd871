"""float64 NumPy references of the sparse inference ops (native/sparse.pyx, opencl/sparse.cl)."""

import numpy as np

from tests.reference.activation_ref import activation_forward_ref


def dense_kernel_by_unit_ref(kernel):
    """(indptr, indices, values) of a (C, U) kernel's nonzeros by output unit, the obvious
    way: a Python loop over units."""
    kernel = np.asarray(kernel)
    indptr, indices, values = [0], [], []
    for u in range(kernel.shape[1]):
        rows = np.flatnonzero(kernel[:, u])
        indices.extend(rows.tolist())
        values.extend(kernel[rows, u].tolist())
        indptr.append(len(indices))
    return (np.array(indptr, np.int32), np.array(indices, np.int32),
            np.array(values, kernel.dtype))


def sparse_dense_forward_ref(x, indptr, indices, values, bias, activation="linear",
                             alpha=0.0):
    """The dense kernel rebuilt from its nonzeros, then act(x @ kernel + bias) in float64."""
    x = np.asarray(x, np.float64)
    units = len(indptr) - 1
    kernel = np.zeros((x.shape[1], units))
    for u in range(units):
        kernel[indices[indptr[u]:indptr[u + 1]], u] = values[indptr[u]:indptr[u + 1]]
    z = x @ kernel
    if bias is not None:
        z = z + np.asarray(bias, np.float64)
    return activation_forward_ref(z, activation, alpha)
