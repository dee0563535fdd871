"""Operands of the scatter ops (native/scatter.pyx, pynn/backend/opencl/scatter.py):
keras.ops' segment_sum/segment_max, scatter, scatter_update and slice_update on row views.

Float data are 2-D (rows, D). Index arrays are integer arrays, read on the host on every backend
(the grouping of rows by id is computed on the host from them, as embedding_backward's): they are
range-checked here, so the kernels trust them.
"""

import numpy as np

SEGMENT_OPS = ("sum", "max")
SEGMENT_OPS += ("prod",)  # -- opsm: keras.ops.segment_prod (empty segment: 1)


def _rows(arrays, op, name, a, like=None):
    a = arrays.float_input(op, name, a, like=like)
    if a.ndim != 2:
        raise ValueError(f"{op}: '{name}' must be 2-D (rows, D), got shape {tuple(a.shape)}")
    return a


def _index(op, name, a, lo, hi):
    # A device index array is downloaded (small next to the rows, as embedding_backward's).
    a = np.asarray(a.get() if hasattr(a, "get") else a)
    if a.dtype.kind not in "iu" or a.ndim != 1:
        raise TypeError(f"{op}: '{name}' must be a 1-D host integer array, got dtype "
                        f"{a.dtype} shape {a.shape}")
    if a.size and (int(a.min()) < lo or int(a.max()) >= hi):
        raise ValueError(f"{op}: '{name}' must lie in [{lo}, {hi}), got values in "
                         f"[{int(a.min())}, {int(a.max())}]")
    return np.ascontiguousarray(a, np.int32)


def segment_reduce_forward(arrays, data, starts, order, op):
    """-> (data, starts, order, code): segment s reduces data[order[starts[s]:starts[s+1]]]."""
    name = "segment_reduce_forward"
    data = _rows(arrays, name, "data", data)
    if not isinstance(op, str) or op not in SEGMENT_OPS:
        raise ValueError(f"{name}: 'op' must be one of {', '.join(SEGMENT_OPS)}, got {op!r}")
    order = _index(name, "order", order, 0, max(data.shape[0], 1))
    starts = _index(name, "starts", starts, 0, order.size + 1)
    if starts.size < 1 or starts[0] != 0 or starts[-1] != order.size or np.any(
            np.diff(starts) < 0):
        raise ValueError(f"{name}: 'starts' must rise from 0 to len(order) = {order.size}")
    return data, starts, order, SEGMENT_OPS.index(op)


def gather_rows(arrays, src, rows):
    """-> (src, rows): y[m] = src[rows[m]], zeros where rows[m] is -1."""
    src = _rows(arrays, "gather_rows", "src", src)
    return src, _index("gather_rows", "rows", rows, -1, src.shape[0])


def select_rows(arrays, base, src, owner):
    """-> (base, src, owner): y[r] = src[owner[r]], or base[r] where owner[r] is -1."""
    base = _rows(arrays, "select_rows", "base", base)
    src = _rows(arrays, "select_rows", "src", src, like=base)
    if src.shape[1] != base.shape[1]:
        raise ValueError(f"select_rows: 'src' rows must have base's width {base.shape[1]}, "
                         f"got {src.shape[1]}")
    owner = _index("select_rows", "owner", owner, -1, src.shape[0])
    if owner.size != base.shape[0]:
        raise ValueError(f"select_rows: 'owner' must have one entry per row of base "
                         f"({base.shape[0]}), got {owner.size}")
    return base, src, owner
