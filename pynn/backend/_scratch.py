"""Scratch buffers that CPU kernels keep between calls (padded inputs, partial sums, ...).

Fresh multi-MiB NumPy arrays come back from the operating system page by page, zeroed, on
every call: that cost about a third of an LSTM forward + backward step (bench/bench_rnn.py)
and 15% of a Conv2D training step (bench conv2d: 235-250 -> 280-290 GFLOP/s). So an op takes
one buffer per dtype out of a pool, carves its temporaries from it, and gives it back when it
returns. ``dict.pop`` is atomic under the GIL, so concurrent calls (threads releasing the GIL
inside kernels) never share a buffer: the second one simply allocates its own. Nothing handed
back to a caller may live in scratch. The pool keeps at most one buffer per dtype, the largest
seen up to ``KEEP_BYTES``.
"""
import math
from contextlib import contextmanager

import numpy as np

KEEP_BYTES = 64 << 20
_ALIGN_BYTES = 64           # each view starts on its own cache line
_pool = {}                  # dtype char -> (buffer, its lead): one kept buffer per dtype


def _lead(buf):
    """Elements to skip so that a view of buf starts on a cache line. NumPy's large arrays
    come from malloc at 16 bytes past a line; the microkernel's vector loads then straddle
    two lines every other time (Zen 3: -6% on a conv's packed panels alone)."""
    return (-buf.ctypes.data % _ALIGN_BYTES) // buf.itemsize


def aligned_empty(size, dtype):
    """An uninitialized 1-D array of `size` elements that starts on a cache line, for a
    copy a microkernel reads as whole vectors for as long as it lives (packed weights).
    From a plain NumPy allocation a third of those loads straddled two lines (Intel Xeon,
    the MLP's 64 x 784 -> 256 layer on one thread: 148 -> 130 us aligned)."""
    dtype = np.dtype(dtype)
    raw = np.empty(size + _ALIGN_BYTES // dtype.itemsize, dtype=dtype)
    lead = _lead(raw)
    return raw[lead:lead + size]


def take(dtype, *shapes):
    """(handle for give, [one C-contiguous view per shape]); uninitialized contents. Kept
    cheap (every op with temporaries calls it): shape products in Python ints (np.prod cost
    3 us a shape) and the buffer's alignment lead stored with it (ctypes: 1.5 us)."""
    dtype = np.dtype(dtype)
    step = max(_ALIGN_BYTES // dtype.itemsize, 1)
    sizes = [int(math.prod(shape)) for shape in shapes]
    total = sum(-(-size // step) * step for size in sizes)
    entry = _pool.pop(dtype.char, None)
    if entry is None or entry[0].size < total + step:
        buf = np.empty(max(total, 1) + step, dtype=dtype)
        entry = (buf, _lead(buf))
    buf, offset = entry
    views = []
    for shape, size in zip(shapes, sizes):
        views.append(buf[offset:offset + size].reshape(shape))
        offset += -(-size // step) * step
    return entry, views


def give(entry):
    """Returns ``take``'s handle to the pool (kept if its buffer is the largest so far)."""
    buf = entry[0]
    if buf.nbytes <= KEEP_BYTES:
        old = _pool.get(buf.dtype.char)
        if old is None or old[0].size < buf.size:
            _pool[buf.dtype.char] = entry


@contextmanager
def scratch(dtype, *shapes):
    """``with scratch(np.float32, (n, m), (k,)) as (a, b):`` views valid inside the block."""
    buf, views = take(dtype, *shapes)
    try:
        yield views
    finally:
        give(buf)


def clear():
    """Drops every kept buffer (their memory goes back once no view is alive)."""
    _pool.clear()
