"""OpenCL sparse inference ops (issue 18): the host side of ``opencl/sparse.cl``.

Same names, signatures and semantics as ``native/sparse.pyx``; operands are checked by
``pynn.backend.operands.sparse``.
"""

import numpy as np

from pynn.backend.api import ACTIVATIONS
from pynn.backend.opencl import runtime as rt
from pynn.backend.opencl.activation import activation_forward
from pynn.backend.opencl.arrays import DEVICE
from pynn.backend.opencl.launch import elementwise
from pynn.backend.operands import sparse as operands


def sparse_dense_forward(x, indptr, indices, values, bias, activation="linear", alpha=0.0):
    """y = act(x @ kernel + bias) (N, U) from the kernel's nonzeros by unit."""
    op = "sparse_dense_forward"
    name, alpha, x, indptr, indices, values, bias = operands.sparse_dense_forward(
        DEVICE, x, indptr, indices, values, bias, activation, alpha)
    n, c, units = x.shape[0], x.shape[1], indptr.shape[0] - 1
    y = rt.empty((n, units), np.float32, f"{op} output")
    # softmax needs the whole row: a linear epilogue, then the row op (as dense_forward).
    code = ACTIVATIONS.index("linear" if name == "softmax" else name)
    if n * units:
        elementwise("sparse", op, n * units, x, indptr, indices, values,
                    y if bias is None else bias, y, n, c, units, indices.shape[0],
                    bias is not None, code, np.float32(alpha))
    if name == "softmax":
        return activation_forward(y, "softmax", alpha)
    return y


def sparse_conv2d_forward(x, indptr, indices, values, bias, kernel_size, strides=(1, 1),
                          padding="valid", dilation_rate=(1, 1), activation="linear",
                          alpha=0.0):
    """y = act(conv2d(x, kernel) + bias) (N, HO, WO, F) from the kernel's nonzeros by
    filter (native/sparse.pyx's contract)."""
    op = "sparse_conv2d_forward"
    name, alpha, x, indptr, indices, values, bias, g = operands.sparse_conv2d_forward(
        DEVICE, x, indptr, indices, values, bias, kernel_size, strides, padding,
        dilation_rate, activation, alpha)
    filters = indptr.shape[0] - 1
    y = rt.empty((g["N"], g["HO"], g["WO"], filters), np.float32, f"{op} output")
    code = ACTIVATIONS.index("linear" if name == "softmax" else name)
    if y.size:
        elementwise("sparse", op, y.size, x, indptr, indices if indices.size else indptr,
                    values if values.size else y, y if bias is None else bias, y, y.size,
                    g["H"], g["W"], g["C"], g["KH"], g["KW"], g["SH"], g["SW"], g["DH"],
                    g["DW"], g["PT"], g["PL"], g["HO"], g["WO"], filters, indices.shape[0],
                    bias is not None, code, np.float32(alpha))
    if name == "softmax":
        return activation_forward(y, "softmax", alpha)
    return y
