"""The lookup semantics of Keras's IndexLookup (StringLookup, IntegerLookup) written out one
token at a time with a dict, no floats: the slow, obviously correct twin of
pynn/layers/lookup.py's vectorized lookup."""


def index_lookup_ref(tokens, vocabulary, num_oov_indices=1, mask_token=None,
                     output_mode="int", oov_bucket=None):
    """A nested list of tokens -> the nested list of Keras's indices. vocabulary: the tokens
    without the special ones; oov_bucket(token) -> its bucket in [0, num_oov_indices)."""
    oov_start = 1 if mask_token is not None and output_mode == "int" else 0
    start = oov_start + num_oov_indices
    index = {t: start + i for i, t in enumerate(vocabulary)}

    def one(t):
        if isinstance(t, list):
            return [one(u) for u in t]
        if mask_token is not None and t == mask_token:
            return 0 if output_mode == "int" else 2**63 - 1
        if t in index:
            return index[t]
        if num_oov_indices == 0:
            raise ValueError(f"OOV {t!r}")
        return oov_start + (0 if num_oov_indices == 1 else oov_bucket(t))

    return one(tokens)


def adapt_ref(batches, max_tokens=None, specials=()):
    """Keras's adapted vocabulary: counts over every batch, most frequent first, ties by the
    token in descending order, truncated to max_tokens - len(specials)."""
    counts = {}
    for batch in batches:
        for t in _flat(batch):
            counts[t] = counts.get(t, 0) + 1
    for s in specials:
        counts.pop(s, None)
    ordered = sorted(counts, key=lambda t: (counts[t], t), reverse=True)
    return ordered if not max_tokens else ordered[:max_tokens - len(specials)]


def bincount_rows_ref(ids, depth, binary=False):
    """Rows of ids -> rows of counts of each id in [0, depth) (1 at most when binary)."""
    out = []
    for row in ids:
        counts = [0] * depth
        for i in row:
            if 0 <= i < depth:
                counts[i] = 1 if binary else counts[i] + 1
        out.append(counts)
    return out


def _flat(x):
    if isinstance(x, (list, tuple)):
        for v in x:
            yield from _flat(v)
    else:
        yield x
