"""Float64 NumPy oracles of the scatter family (native/scatter.pyx, opencl/scatter.cl):
row-view segment folds, row gathers and row replacement, written as plain loops."""

import numpy as np


def segment_reduce_forward_ref(data, starts, order, op):
    data = np.asarray(data, np.float64)
    n = len(starts) - 1
    fill = {"sum": 0.0, "max": -np.inf, "prod": 1.0}[op]  # opsm: prod
    y = np.full((n, data.shape[1]), fill)
    for s in range(n):
        for k in range(starts[s], starts[s + 1]):
            row = data[order[k]]
            if op == "prod":
                y[s] = y[s] * row
            else:
                y[s] = y[s] + row if op == "sum" else np.maximum(y[s], row)
    return y


def gather_rows_ref(src, rows):
    src = np.asarray(src, np.float64)
    return np.stack([np.zeros(src.shape[1]) if r < 0 else src[r] for r in rows]) if len(
        rows) else np.zeros((0, src.shape[1]))


def select_rows_ref(base, src, owner):
    base, src = np.asarray(base, np.float64), np.asarray(src, np.float64)
    return np.stack([base[r] if o < 0 else src[o] for r, o in enumerate(owner)])
