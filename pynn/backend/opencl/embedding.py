"""OpenCL embedding ops: the host side of ``opencl/embedding.cl``.

Same names, signatures and semantics as ``native/embedding.pyx``; operands are checked by
``pynn.backend.operands.embedding``.

Forward: the gather kernel reads the indices in their uploaded dtype (int32, int64 or
float32) and range-checks them itself, flagging the first bad position; that 4-byte flag
is the one read-back, and a bad index raises the CPU's ValueError before the output is
returned.
Backward: the grouping of positions by index is computed on the HOST from the downloaded
indices (a stable counting sort: bincount + cumsum and a stable argsort) and uploaded as
(starts, order); the kernel then sums each vocabulary row's occurrences in index order, so
the result is deterministic without float atomics. The indices are small next to dy (one
int per D floats), so the round trip costs little, and it range-checks them on the host.
"""

import numpy as np

from pynn.backend.opencl import runtime as rt
from pynn.backend.opencl.arrays import DEVICE
from pynn.backend.opencl.launch import elementwise, sizes
from pynn.backend.operands import embedding as operands

_INDEX_KIND = {np.dtype(np.int32): 0, np.dtype(np.int64): 1, np.dtype(np.float32): 2}


def _kernel(name, dtype):
    return rt.kernel("embedding", name, {"INDEX_KIND": _INDEX_KIND[np.dtype(dtype)]})


def embedding_forward(indices, table):
    """y[..., :] = table[indices[...], :]: shape indices.shape + (D,)."""
    op = "embedding_forward"
    indices, table = operands.embedding_forward(DEVICE, indices, table)
    v, d = table.shape
    m = indices.size
    y = rt.empty(tuple(indices.shape) + (d,), what=f"{op} output")
    if not y.size:
        return y
    bad = rt.to_device(np.array([m], dtype=np.int32))
    rt.launch(_kernel(op, indices.dtype), (m * d,), (sizes()[0],), indices, table, y, bad, m, v, d)
    first = int(bad.get()[0])
    if first < m:
        raise operands.out_of_range(op, indices.reshape(-1)[first:first + 1].get()[0].item(),
                                    v)
    return y


def embedding_backward(dy, indices, input_dim):
    """dtable (input_dim, D): the rows of dy summed by index, deterministically."""
    op = "embedding_backward"
    dy, indices, input_dim = operands.embedding_backward(DEVICE, dy, indices, input_dim)
    d = dy.shape[-1]
    dtable = rt.empty((input_dim, d), what=f"{op} output")
    if not dtable.size:
        return dtable
    if not indices.size:
        dtable.fill(0)
        return dtable
    flat = operands.host_indices(op, indices.get(), input_dim).reshape(-1)
    starts = np.zeros(input_dim + 1, dtype=np.int32)
    np.cumsum(np.bincount(flat, minlength=input_dim), out=starts[1:])
    order = np.argsort(flat, kind="stable").astype(np.int32)
    elementwise("embedding", op, input_dim * d, dy, rt.to_device(starts),
                rt.to_device(order), dtable, input_dim, d)
    return dtable
