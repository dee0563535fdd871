"""Operands of the dense ops (native/dense.pyx, pynn/backend/opencl/dense.py)."""

from pynn.backend.api import ACTIVATIONS_NEEDING_INPUT
from pynn.backend.operands.activation import activation_pair
from pynn.backend.operands.common import check_count, check_shape


def dense_forward(arrays, x, kernel, bias, activation, alpha):
    """-> (name, alpha, x (N, C), kernel (C, U), bias (U,) or None)."""
    op = "dense_forward"
    name, a = activation_pair(op, activation, alpha)
    x = arrays.float_input(op, "x", x, ndim=2)
    kernel = arrays.float_input(op, "kernel", kernel, ndim=2, like=x)
    check_shape(op, "kernel", kernel, (x.shape[1], None))
    if bias is not None:
        bias = arrays.float_input(op, "bias", bias, ndim=1, like=x)
        check_shape(op, "bias", bias, (kernel.shape[1],))
    check_count(arrays, op, "output", x.shape[0] * kernel.shape[1])
    return name, a, x, kernel, bias


def dense_backward_input(arrays, dz, kernel):
    """-> (dz (N, U), kernel (C, U))."""
    op = "dense_backward_input"
    dz = arrays.float_input(op, "dz", dz, ndim=2)
    kernel = arrays.float_input(op, "kernel", kernel, ndim=2, like=dz)
    check_shape(op, "kernel", kernel, (None, dz.shape[1]))
    check_count(arrays, op, "output", dz.shape[0] * kernel.shape[0])
    return dz, kernel


def dense_backward_input_activation(arrays, dz, kernel, z, y, activation, alpha):
    """-> (name, alpha, dz (N, U), kernel (C, U), z, y): z and y, the layer below's
    pre-activation and output, (N, C) in dz's dtype, either None where the activation does
    not read it (activation_backward's rule)."""
    op = "dense_backward_input_activation"
    name, a = activation_pair(op, activation, alpha)
    dz = arrays.float_input(op, "dz", dz, ndim=2)
    kernel = arrays.float_input(op, "kernel", kernel, ndim=2, like=dz)
    check_shape(op, "kernel", kernel, (None, dz.shape[1]))
    check_count(arrays, op, "output", dz.shape[0] * kernel.shape[0])
    needs_z = name in ACTIVATIONS_NEEDING_INPUT
    if z is None and needs_z:
        raise ValueError(f"{op}: '{name}' needs the pre-activation 'z', got None")
    if y is None and not needs_z:
        raise ValueError(f"{op}: 'y' (the layer below's output) is required for '{name}', "
                         f"got None")
    below = (dz.shape[0], kernel.shape[0])
    if z is not None:
        z = arrays.float_input(op, "z", z, ndim=2, like=dz)
        check_shape(op, "z", z, below)
    if y is not None:
        y = arrays.float_input(op, "y", y, ndim=2, like=dz)
        check_shape(op, "y", y, below)
    return name, a, dz, kernel, z, y


def dense_backward_weight(arrays, x, dz):
    """-> (x (N, C), dz (N, U))."""
    op = "dense_backward_weight"
    x = arrays.float_input(op, "x", x, ndim=2)
    dz = arrays.float_input(op, "dz", dz, ndim=2, like=x)
    check_shape(op, "dz", dz, (x.shape[0], None))
    check_count(arrays, op, "output", x.shape[1] * dz.shape[1])
    return x, dz


def bias_backward(arrays, dz):
    """-> dz with at least one axis (the bias axis is the last)."""
    op = "bias_backward"
    dz = arrays.float_input(op, "dz", dz)
    if dz.ndim < 1:
        raise ValueError(f"{op}: 'dz' must have at least 1 dimension, got shape {dz.shape}")
    return dz
