"""Float64 NumPy oracles for the dense ops (native/dense.pyx, opencl/dense.cl).

Legend: N batch (any leading axes for bias_backward), C_in input features, U units.
Each is the textbook product in float64; the activation comes from activation_ref.
"""

import numpy as np

from tests.reference.activation_ref import activation_forward_ref


def dense_forward_ref(x, kernel, bias, activation="linear", alpha=0.0):
    """(y, z): z = x @ kernel + bias in float64, y = activation(z)."""
    z = np.asarray(x, np.float64) @ np.asarray(kernel, np.float64)
    if bias is not None:
        z = z + np.asarray(bias, np.float64)
    return activation_forward_ref(z, activation, alpha), z


def dense_backward_input_ref(dz, kernel):
    """dz @ kernel.T -> (N, C_in)."""
    return np.asarray(dz, np.float64) @ np.asarray(kernel, np.float64).T


def dense_backward_weight_ref(x, dz):
    """x.T @ dz -> (C_in, U)."""
    return np.asarray(x, np.float64).T @ np.asarray(dz, np.float64)


def bias_backward_ref(dz):
    """The sum of dz over every axis but the last."""
    dz = np.asarray(dz, np.float64)
    if dz.shape[-1] == 0:
        return np.zeros(0)
    return dz.reshape(-1, dz.shape[-1]).sum(axis=0)
