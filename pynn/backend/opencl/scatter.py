"""OpenCL scatter ops: the host side of ``opencl/scatter.cl``.

Same names, signatures and semantics as ``native/scatter.pyx``; operands are checked by
``pynn.backend.operands.scatter`` (index arrays are host arrays, uploaded here). float32 only
(the OpenCL backend's dtype).
"""

from pynn.backend.opencl import runtime as rt
from pynn.backend.opencl.arrays import DEVICE
from pynn.backend.opencl.launch import elementwise
from pynn.backend.operands import scatter as operands


def segment_reduce_forward(data, starts, order, op):
    """y (len(starts) - 1, D): segment s is the sum or max of data[order[starts[s]:
    starts[s + 1]]], folded in order; an empty segment is 0 (sum) or -inf (max)."""
    data, starts, order, code = operands.segment_reduce_forward(DEVICE, data, starts, order,
                                                                op)
    n, d = starts.size - 1, data.shape[1]
    y = rt.empty((n, d), what="segment_reduce_forward output")
    if y.size:
        order_dev = rt.to_device(order if order.size else starts[:1])
        elementwise("scatter", "segment_reduce_forward", n * d, data, rt.to_device(starts),
                    order_dev, y, n, d, code)
    return y


def gather_rows(src, rows):
    """y (len(rows), D): y[m] = src[rows[m]], zeros where rows[m] is -1."""
    src, rows = operands.gather_rows(DEVICE, src, rows)
    m, d = rows.size, src.shape[1]
    y = rt.empty((m, d), what="gather_rows output")
    if y.size:
        elementwise("scatter", "gather_rows", m * d, src, rt.to_device(rows), y, m, d)
    return y


def select_rows(base, src, owner):
    """y (base's shape): y[r] = src[owner[r]], or base[r] where owner[r] is -1."""
    base, src, owner = operands.select_rows(DEVICE, base, src, owner)
    n, d = base.shape
    y = rt.empty((n, d), what="select_rows output")
    if y.size:
        src_dev = src if src.size else base
        elementwise("scatter", "select_rows", n * d, base, src_dev, rt.to_device(owner), y,
                    n, d)
    return y
