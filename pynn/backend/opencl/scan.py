"""OpenCL scan ops: the host side of ``opencl/scan.cl`` (keras.ops' cumsum/cumprod).

Same names, signatures and semantics as ``native/scan.pyx``; operands are checked by
``pynn.backend.operands.scan``. float32 only (the OpenCL backend's dtype).
"""

from pynn.backend.opencl import runtime as rt
from pynn.backend.opencl.arrays import DEVICE
from pynn.backend.opencl.launch import elementwise
from pynn.backend.operands import scan as operands


def scan_forward(x, axis, op, reverse=False):
    """y = cumulative op ('sum' or 'prod') of x along ``axis``, from the end if ``reverse``."""
    x, (O, N, I), code, reverse = operands.scan_forward(DEVICE, x, axis, op, reverse)
    y = rt.empty(tuple(x.shape), what="scan_forward output")
    if y.size:
        elementwise("scan", "scan_forward", O * I, x, y, O, N, I, code, reverse)
    return y


def cumprod_backward(x, dy, axis):
    """dx of y = cumprod(x, axis), exact where x has zeros."""
    x, dy, (O, N, I) = operands.cumprod_backward(DEVICE, x, dy, axis)
    dx = rt.empty(tuple(x.shape), what="cumprod_backward output")
    if dx.size:
        elementwise("scan", "cumprod_backward", O * I, x, dy, dx, O, N, I)
    return dx
