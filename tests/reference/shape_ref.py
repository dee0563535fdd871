"""float64 NumPy oracles of the shape ops (native/shape.pyx, opencl/shape.cl)."""

import numpy as np


def transpose_forward_ref(x, perm):
    return np.transpose(np.asarray(x, np.float64), perm)


def transpose_backward_ref(dy, perm):
    return np.transpose(np.asarray(dy, np.float64), np.argsort(perm))


def repeat_vector_forward_ref(x, n):
    x = np.asarray(x, np.float64)
    return np.repeat(x[:, None, :], n, axis=1)


def repeat_vector_backward_ref(dy):
    return np.asarray(dy, np.float64).sum(axis=1)
