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


def dense_backward_input_activation_ref(dz, kernel, z, y, activation="linear", alpha=0.0,
                                        use_bias=True):
    """(dz_below, dbias_below or None): dz @ kernel.T taken back through the layer below's
    activation at its pre-activation z (y, its output, is not read), and that layer's bias
    gradient."""
    from tests.reference.activation_ref import activation_backward_ref

    g = dense_backward_input_ref(dz, kernel)
    below = activation_backward_ref(g, np.asarray(z, np.float64), activation, alpha)
    return below, (below.sum(axis=0) if use_bias else None)
