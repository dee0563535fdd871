"""Float64 NumPy oracles of the sort family (native/sort.pyx, opencl/sort.cl): per-row
stable orders (NumPy's stable argsort; descending as the stable argsort of -x, so NaN stays
last and ties keep position order), gathers and their transposes along rows."""

import numpy as np


def argsort_rows_ref(x, descending=False, k=None):
    x = np.asarray(x, np.float64)
    order = np.argsort(-x if descending else x, axis=1, kind="stable")
    return order[:, :x.shape[1] if k is None else k]


def take_along_rows_ref(x, index):
    return np.take_along_axis(np.asarray(x, np.float64), np.asarray(index, np.int64), 1)


def put_along_rows_ref(src, index, n):
    y = np.zeros((np.shape(src)[0], n))
    for r, (row, pos) in enumerate(zip(np.asarray(src, np.float64), index)):
        y[r, pos] = row
    return y
