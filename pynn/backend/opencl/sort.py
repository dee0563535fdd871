"""OpenCL sort ops: the host side of ``opencl/sort.cl`` (keras.ops' sort/argsort/top_k).

Same names, signatures and semantics as ``native/sort.pyx``; operands are checked by
``pynn.backend.operands.sort``. float32 values, int32 positions.
"""

import numpy as np

from pynn.backend.opencl import runtime as rt
from pynn.backend.opencl.arrays import DEVICE
from pynn.backend.opencl.launch import elementwise, sizes
from pynn.backend.operands import sort as operands

BITONIC_MAX = 512  # opencl/sort.cl's: rows up to this long sort in local memory


def argsort_rows(x, descending=False, k=None):
    """int32 (R, k): each row's first k positions in stable sorted order (NaN last): a
    bitonic network in local memory for rows up to BITONIC_MAX, else the merge."""
    x, descending, k = operands.argsort_rows(DEVICE, x, descending, k)
    r, n = x.shape
    order = rt.empty((r, k), np.int32, what="argsort_rows output")
    p = 1 << max(n - 1, 0).bit_length()
    if order.size and 2 <= n <= BITONIC_MAX and p // 2 <= sizes()[0]:
        rt.launch(rt.kernel("sort", "argsort_rows_bitonic"), (r * (p // 2),), (p // 2,), x,
                  order, r, n, k, p, descending)
    elif order.size:
        work = rt.empty((r, 2 * n), np.int32, what="argsort_rows work rows")
        elementwise("sort", "argsort_rows", r, x, order, work, r, n, k, descending)
    return order


def take_along_rows(x, index):
    """(R, k): y[r, j] = x[r, index[r, j]]."""
    x, index = operands.take_along_rows(DEVICE, x, index)
    (r, n), k = x.shape, index.shape[1]
    y = rt.empty((r, k), what="take_along_rows output")
    if y.size:
        elementwise("sort", "take_along_rows", r * k, x, index, y, r, n, k)
    return y


def put_along_rows(src, index, n):
    """(R, n) zeros with y[r, index[r, j]] = src[r, j] (a row's positions distinct)."""
    src, index, n = operands.put_along_rows(DEVICE, src, index, n)
    r, k = src.shape
    y = rt.empty((r, n), what="put_along_rows output")
    if y.size:
        y.fill(0)
    if src.size:
        elementwise("sort", "put_along_rows", r * k, src, index, y, r, n, k)
    return y
