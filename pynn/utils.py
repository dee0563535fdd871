"""Random seeding and small helpers shared by the API."""

import numpy as np

_rng = np.random.default_rng()


def set_random_seed(seed):
    """Seed every source of randomness pynn uses (initializers, shuffling, dropout seeds).

    With a fixed seed and thread count a CPU run is bit-reproducible. A model draws its own
    shuffle generator from this one when ``fit`` first shuffles, and keeps it (it is saved with
    the model, so a resumed ``fit`` continues its stream); a Dropout layer draws its seed when
    it is created.
    """
    global _rng
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"set_random_seed: expected a non-negative int, got {seed!r}")
    _rng = np.random.default_rng(int(seed))
    np.random.seed(int(seed) % (2**32))


def rng():
    """The generator all of pynn draws from."""
    return _rng


def new_seed():
    return int(_rng.integers(0, 2**63 - 1))


def to_categorical(y, num_classes=None):
    y = np.asarray(y, dtype=np.int64).reshape(-1)
    if num_classes is None:
        num_classes = int(y.max()) + 1 if y.size else 0
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"to_categorical: labels must lie in [0, {num_classes}), got "
                         f"[{y.min()}, {y.max()}]")
    out = np.zeros((y.size, num_classes), dtype=np.float32)
    out[np.arange(y.size), y] = 1
    return out
