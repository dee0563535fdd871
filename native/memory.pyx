"""Recycled array memory for training and inference loops (native/_recycle.h).

``recycling()`` makes pynn's recycling allocator NumPy's data allocator for the current
thread (NumPy keeps the handler in a context variable) until the block exits; the models'
loops run under it, so one step's activations and gradients are reused by the next instead
of coming back from the system page by page. Arrays keep the allocator they were made with;
a large one freed while some recycling() block is open (in any thread) waits in the pool,
freed outside every block it goes back to the system. The pool is a cache: ``trim()`` frees
every idle block, and ``set_limit(0)`` turns recycling off.
"""
import os

cimport numpy as cnp

cnp.import_array()

cdef extern from "_recycle.h":
    size_t pynn_recycle_trim() nogil
    void pynn_recycle_set_limit(size_t limit) nogil
    void pynn_recycle_scope(int delta) nogil
    void pynn_recycle_stats(size_t* idle_bytes, int* idle_blocks, size_t* limit,
                            unsigned long long* hits, unsigned long long* misses) nogil
    size_t PYNN_RECYCLE_MIN
    int pynn_recycle_init()

cdef extern from *:
    """
    #include "_recycle.h"
    static PyDataMem_Handler pynn_recycle_handler = {
        "pynn_recycle", 1,
        {NULL, pynn_recycle_malloc, pynn_recycle_calloc, pynn_recycle_realloc,
         pynn_recycle_free}
    };
    static PyObject* pynn_recycle_capsule(void) {
        return PyCapsule_New(&pynn_recycle_handler, "mem_handler", NULL);
    }
    """
    object pynn_recycle_capsule()
    object PyDataMem_SetHandler(object handler)

if pynn_recycle_init() != 0:
    raise RuntimeError("pynn._native.memory: pthread_atfork failed")

# One capsule for the life of the process: arrays hold a reference to it.
_handler = pynn_recycle_capsule()
_enabled = True


def _limit_from_env():
    text = os.environ.get("PYNN_RECYCLE_MIB")
    if text is None:
        return None
    try:
        mib = float(text)
    except ValueError:
        raise ValueError(f"PYNN_RECYCLE_MIB: expected a number of MiB, got {text!r}") from None
    if not mib >= 0:
        raise ValueError(f"PYNN_RECYCLE_MIB: expected >= 0, got {text!r}")
    return int(mib * (1 << 20))


cdef class recycling:
    """``with recycling():`` NumPy arrays made in the block draw on the pool. Nests; a
    no-op once ``set_limit(0)`` turned recycling off."""
    cdef object _previous

    def __enter__(self):
        if _enabled:
            self._previous = PyDataMem_SetHandler(_handler)
            pynn_recycle_scope(1)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            PyDataMem_SetHandler(self._previous)
            self._previous = None
            pynn_recycle_scope(-1)
        return False


def trim():
    """Frees every idle block; returns the number of bytes given back."""
    return pynn_recycle_trim()


def set_limit(nbytes):
    """Most idle bytes the pool keeps (default 256 MiB, or ``PYNN_RECYCLE_MIB``); 0 turns
    recycling off for later ``recycling()`` blocks and frees the idle blocks now."""
    global _enabled
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"set_limit: expected a byte count >= 0, got {nbytes!r}")
    pynn_recycle_set_limit(nbytes)
    _enabled = nbytes > 0


def stats():
    """{'idle_bytes', 'idle_blocks', 'limit', 'hits', 'misses', 'min_block'} of the pool."""
    cdef size_t idle_bytes, limit
    cdef int idle_blocks
    cdef unsigned long long hits, misses
    pynn_recycle_stats(&idle_bytes, &idle_blocks, &limit, &hits, &misses)
    return {"idle_bytes": idle_bytes, "idle_blocks": idle_blocks, "limit": limit,
            "hits": hits, "misses": misses, "min_block": PYNN_RECYCLE_MIN}


_env_limit = _limit_from_env()
if _env_limit is not None:
    set_limit(_env_limit)
