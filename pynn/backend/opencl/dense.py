"""OpenCL dense ops: the host side of ``opencl/dense.cl`` (GEMMs with a fused bias and
activation epilogue) and of the bias gradient's column sums in ``opencl/reduce.cl``.

Same names, signatures and semantics as ``native/dense.pyx``; operands are checked by
``pynn.backend.operands.dense``.
"""

from types import SimpleNamespace

import numpy as np

from pynn.backend.api import dense_backward_input_activation_composed
from pynn.backend.opencl import runtime as rt
from pynn.backend.opencl.activation import activation_forward, fused_epilogue
from pynn.backend.opencl.arrays import DEVICE
from pynn.backend.opencl.gemm import column_sums, gemm_split_out, run_gemm
from pynn.backend.operands import dense as operands


def dense_forward(x, kernel, bias, activation="linear", alpha=0.0):
    """y = act(x @ kernel + bias) -> (y, z); z is the pre-activation for gelu, else None."""
    op = "dense_forward"
    name, alpha, x, kernel, bias = operands.dense_forward(DEVICE, x, kernel, bias, activation,
                                                          alpha)
    m, k, n = x.shape[0], x.shape[1], kernel.shape[1]
    y, z, code, softmax_after = fused_epilogue(op, name, (m, n))
    if m * n:
        run_gemm("dense", "dense_forward", m, n, k, (x, kernel, bias, y, z, code, alpha),
                 vwa=(k,), vwb=(n,))
    if softmax_after:
        return activation_forward(y, "softmax", alpha), None
    return y, z


def dense_backward_input(dz, kernel):
    """dx = dz @ kernel.T, shape (N, C)."""
    op = "dense_backward_input"
    dz, kernel = operands.dense_backward_input(DEVICE, dz, kernel)
    m, k, n = dz.shape[0], dz.shape[1], kernel.shape[0]
    dx = rt.empty((m, n), np.float32, f"{op} output")
    if m * n:
        run_gemm("dense", "dense_backward_input", m, n, k, (dz, kernel, dx), vwa=(k,),
                 vwb=(k,))
    return dx


def dense_backward_input_activation(dz, kernel, z, y, activation, alpha=0.0, use_bias=True):
    """(dz_below, dbias_below or None): the input gradient, then the layer below's
    bias_activation_backward, on the device (api's composition; the CPU fuses the two)."""
    from pynn.backend.opencl.activation import activation_backward, activation_bias_backward

    name, a, dz, kernel, z, y = operands.dense_backward_input_activation(
        DEVICE, dz, kernel, z, y, activation, alpha)
    ops = SimpleNamespace(dense_backward_input=dense_backward_input,
                          bias_backward=bias_backward,
                          activation_backward=activation_backward,
                          activation_bias_backward=activation_bias_backward)
    return dense_backward_input_activation_composed(ops, dz, kernel, z, y, name, a, use_bias)


def dense_backward_weight(x, dz):
    """dkernel = x.T @ dz, shape (C, U); split-K over the batch when the output is small."""
    op = "dense_backward_weight"
    x, dz = operands.dense_backward_weight(DEVICE, x, dz)
    batch, m, n = x.shape[0], x.shape[1], dz.shape[1]
    return gemm_split_out(op, "dense", "dense_backward_weight", m, n, batch, (x, dz), (m, n),
                          vwa=(m,), vwb=(n,))


def bias_backward(dz):
    """Sum of dz over every axis but the last, in a fixed order (two passes, no atomics)."""
    return column_sums("bias_backward", operands.bias_backward(DEVICE, dz))
