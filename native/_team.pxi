# pynn's worker team (native/_team.h): a module that runs parallel loops on it includes
# this file, which binds the one team of the info module at import.
from cpython.pycapsule cimport PyCapsule_GetPointer

cdef extern from "_team.h":
    ctypedef void (*pynn_team_fn)(void* ctx, long begin, long end, int slot) noexcept nogil
    int pynn_team_bind(const void* api)
    void pynn_team_for(long n, long grain, int threads, pynn_team_fn fn,
                       void* ctx) noexcept nogil
    void pynn_team_for_affine(long n, int threads, pynn_team_fn fn, void* ctx) noexcept nogil
    int pynn_team_threads() noexcept nogil
    int pynn_team_lane_threads() noexcept nogil
    void pynn_team_lane_done() noexcept nogil

from pynn._native import info as _team_info

if pynn_team_bind(PyCapsule_GetPointer(_team_info._team_capsule(), b"pynn.team")) != 0:
    raise ImportError(f"{__name__}: pynn._native.info's worker team is another version "
                      "(rebuild the extension)")


cdef inline long team_grain(long items, int threads) noexcept nogil:
    """Items per claim: about four claims per thread, so a late worker still gets a share
    and each claim keeps neighbouring items (a packed panel's tiles) on one thread."""
    cdef long g = items // (4 * threads) if threads > 0 else items
    return g if g > 0 else 1
