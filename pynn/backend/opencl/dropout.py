"""OpenCL dropout ops: the host side of ``opencl/dropout.cl``.

Same names, signatures and semantics as ``native/dropout.pyx`` (Philox4x32-10, masks
bit-identical to the CPU's); operands are checked by ``pynn.backend.operands.dropout``.
"""

import numpy as np

from pynn.backend.opencl import runtime as rt
from pynn.backend.opencl.arrays import DEVICE
from pynn.backend.opencl.launch import elementwise, kernel
from pynn.backend.operands import dropout as operands


def dropout_forward(x, rate, seed, offset=0):
    """Inverted dropout -> (y, mask uint8); the mask is bit-identical to the CPU op's."""
    op = "dropout_forward"
    r, seed, offset, x = operands.dropout_forward(DEVICE, x, rate, seed, offset)
    y = rt.empty(x.shape, what=f"{op} output")
    mask = rt.empty(x.shape, np.uint8, what=f"{op} mask")
    elementwise("dropout", "dropout_forward", x.size, x, y, mask, x.size, np.uint64(seed),
                np.uint64(offset), np.uint32(operands.dropout_threshold(r)),
                np.float32(1.0 / (1.0 - r)))
    return y, mask


def dropout_backward(dy, mask, rate):
    """dx = dy * mask / (1 - rate)."""
    op = "dropout_backward"
    r, dy, mask = operands.dropout_backward(DEVICE, dy, mask, rate)
    dx = rt.empty(dy.shape, what=f"{op} output")
    elementwise("dropout", "dropout_backward", dy.size, dy, mask, dx, dy.size,
                np.float32(1.0 / (1.0 - r)))
    return dx


def philox4x32_10_block(counter, key):
    """Random123's philox4x32_R(10, counter, key) run on the device (known-answer tests)."""
    c, k = operands.philox4x32_10_block(counter, key)
    ctr = rt.to_device(np.array(c, dtype=np.uint32))
    out = rt.empty((4,), np.uint32, what="philox block")
    rt.launch(kernel("dropout", "philox4x32_10_block"), (1,), None, ctr, out, 1,
              np.uint32(k[0]), np.uint32(k[1]))
    return tuple(int(v) for v in out.get())
