"""OpenCL shape ops: the host side of ``opencl/shape.cl``.

Same names, signatures and semantics as ``native/shape.pyx``; operands are checked by
``pynn.backend.operands.shape``.
"""

from pynn.backend.opencl import runtime as rt
from pynn.backend.opencl.arrays import DEVICE
from pynn.backend.opencl.launch import elementwise
from pynn.backend.operands import shape as operands


def _walk(shape, perm):
    """The kernel's (d0..d5, s0..s5): y's shape and x's strides in perm order, with leading
    size-1 axes up to MAX_DIMS."""
    strides = [1] * len(shape)
    for k in range(len(shape) - 2, -1, -1):
        strides[k] = strides[k + 1] * shape[k + 1]
    pad = operands.MAX_DIMS - len(shape)
    dims = [1] * pad + [shape[p] for p in perm]
    steps = [0] * pad + [strides[p] for p in perm]
    return tuple(dims), tuple(steps)


def _transpose(kernel, a, perm, what):
    dims, steps = _walk(a.shape, perm)
    out = rt.empty(tuple(a.shape[p] for p in perm), what=what)
    elementwise("shape", kernel, out.size, a, out, out.size, *dims, *steps)
    return out


def transpose_forward(x, perm):
    """y = x with its axes permuted: y.shape[k] = x.shape[perm[k]]."""
    x, perm = operands.transpose_forward(DEVICE, x, perm)
    return _transpose("transpose_forward", x, perm, "transpose_forward output")


def transpose_backward(dy, perm):
    """dx = dy with perm undone."""
    dy, inverse = operands.transpose_backward(DEVICE, dy, perm)
    return _transpose("transpose_backward", dy, inverse, "transpose_backward output")


def repeat_vector_forward(x, n):
    """(N, F) -> (N, n, F)."""
    x, n = operands.repeat_vector_forward(DEVICE, x, n)
    y = rt.empty((x.shape[0], n, x.shape[1]), what="repeat_vector_forward output")
    elementwise("shape", "repeat_vector_forward", y.size, x, y, x.shape[0], n, x.shape[1])
    return y


def repeat_vector_backward(dy):
    """(N, n, F) -> (N, F), the sum over the repeat axis."""
    dy = operands.repeat_vector_backward(DEVICE, dy)
    n, r, f = dy.shape
    dx = rt.empty((n, f), what="repeat_vector_backward output")
    elementwise("shape", "repeat_vector_backward", dx.size, dy, dx, n, r, f)
    return dx
