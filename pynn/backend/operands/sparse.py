"""Operands of the sparse inference ops (native/sparse.pyx, pynn/backend/opencl/sparse.py)."""

from pynn.backend.operands.activation import activation_pair
from pynn.backend.operands.common import check_count, check_shape, conv_geometry, pair


def _by_unit(arrays, op, x, indptr, indices, values, bias, ndim, units_name):
    """The checks both ops share: x (ndim), a kernel's nonzeros by output unit and the bias
    -> (x, indptr, indices, values, bias, units). The index values are not read: both
    kernels skip an index outside the kernel and clamp offsets to the nonzeros, so a bad one
    costs its term, never a read past an array (and batch-1 inference pays no O(nnz) check
    per call)."""
    x = arrays.float_input(op, "x", x, ndim=ndim)
    indptr = arrays.int_input(op, "indptr", indptr, ndim=1)
    indices = arrays.int_input(op, "indices", indices, ndim=1)
    values = arrays.float_input(op, "values", values, ndim=1, like=x)
    if indptr.shape[0] < 1:
        raise ValueError(f"{op}: 'indptr' must hold {units_name} + 1 >= 1 offsets, got shape "
                         f"{tuple(indptr.shape)}")
    check_shape(op, "values", values, tuple(indices.shape))
    units = indptr.shape[0] - 1
    if bias is not None:
        bias = arrays.float_input(op, "bias", bias, ndim=1, like=x)
        check_shape(op, "bias", bias, (units,))
    return x, indptr, indices, values, bias, units


def sparse_dense_forward(arrays, x, indptr, indices, values, bias, activation, alpha):
    """-> (name, alpha, x (N, C), indptr (U+1,), indices (nnz,), values (nnz,), bias (U,) or
    None)."""
    op = "sparse_dense_forward"
    name, a = activation_pair(op, activation, alpha)
    x, indptr, indices, values, bias, units = _by_unit(arrays, op, x, indptr, indices, values,
                                                       bias, 2, "units")
    check_count(arrays, op, "output", x.shape[0] * units)
    return name, a, x, indptr, indices, values, bias


def sparse_conv2d_forward(arrays, x, indptr, indices, values, bias, kernel_size, strides,
                          padding, dilation_rate, activation, alpha):
    """-> (name, alpha, x (N, H, W, C), indptr (F+1,), indices (nnz,), values (nnz,), bias
    (F,) or None, geometry dict of conv_geometry)."""
    op = "sparse_conv2d_forward"
    name, a = activation_pair(op, activation, alpha)
    x, indptr, indices, values, bias, filters = _by_unit(arrays, op, x, indptr, indices,
                                                         values, bias, 4, "filters")
    kh, kw = pair(op, "kernel_size", kernel_size)
    g = conv_geometry(op, x.shape, (kh, kw, x.shape[3], filters), strides, padding,
                      dilation_rate)
    check_count(arrays, op, "output", g["N"] * g["HO"] * g["WO"] * filters)
    return name, a, x, indptr, indices, values, bias, g
