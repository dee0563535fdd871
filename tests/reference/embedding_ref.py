"""float64 NumPy references of the embedding ops (native/embedding.pyx, opencl/embedding.cl)."""

import numpy as np


def embedding_forward_ref(indices, table):
    """y[..., :] = table[indices[...], :]."""
    return np.asarray(table, np.float64)[np.asarray(indices).astype(np.int64)]


def embedding_backward_ref(dy, indices, input_dim):
    """dtable[v] = the sum of dy's rows whose index is v (the naive scatter-add)."""
    dy = np.asarray(dy, np.float64)
    flat = np.asarray(indices).astype(np.int64).reshape(-1)
    dtable = np.zeros((input_dim, dy.shape[-1]))
    np.add.at(dtable, flat, dy.reshape(-1, dy.shape[-1]))
    return dtable
