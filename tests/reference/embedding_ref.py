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


# -- ReversibleEmbedding (branch misc) --
def reversible_embedding_reverse_ref(hidden, embeddings, reverse_embeddings=None,
                                     logit_soft_cap=None):
    """Logits ``hidden @ embeddings.T`` (tied) or ``hidden @ reverse_embeddings``, soft-capped
    as ``cap * tanh(logits / cap)``, in float64."""
    hidden = np.asarray(hidden, np.float64)
    kernel = (np.asarray(embeddings, np.float64).T if reverse_embeddings is None
              else np.asarray(reverse_embeddings, np.float64))
    logits = hidden @ kernel
    if logit_soft_cap is not None:
        logits = logit_soft_cap * np.tanh(logits / logit_soft_cap)
    return logits
