"""float64 NumPy references of the sparse inference ops (native/sparse.pyx, opencl/sparse.cl)."""

import numpy as np

from tests.reference.activation_ref import activation_forward_ref
from tests.reference.conv_ref import conv2d_forward_ref


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


def sparse_conv2d_forward_ref(x, indptr, indices, values, bias, kernel_size, strides,
                              padding, dilation_rate, activation="linear", alpha=0.0):
    """The (KH, KW, C, F) kernel rebuilt from its nonzeros by filter (tap indices into the
    kernel reshaped to (KH KW C, F); one outside it adds nothing), then the float64 Conv2D."""
    x = np.asarray(x, np.float64)
    kh, kw = kernel_size
    taps = kh * kw * x.shape[3]
    filters = len(indptr) - 1
    kernel = np.zeros((taps, filters))
    for u in range(filters):
        for k in range(indptr[u], indptr[u + 1]):
            if 0 <= indices[k] < taps:
                kernel[indices[k], u] += values[k]
    kernel = kernel.reshape(kh, kw, x.shape[3], filters)
    return conv2d_forward_ref(x, kernel, bias, strides, padding, dilation_rate, activation,
                              alpha)[0]
