# The Python hook of native/_microkernel.h's run-time dispatch, for every module that
# includes the header: each extension module holds its own static copy of the chosen level,
# so pynn/_config.py set_kernel finds every pynn._native module with _microkernel_select and
# calls it. A module that calls the microkernel includes this file (one line), or it stays on
# the level chosen when it was loaded.

cdef extern from "_microkernel.h":
    int pynn_mk_select(int level) noexcept nogil
    int pynn_mk_level() noexcept nogil


def _microkernel_select(int level):
    """Use the microkernel copy of `level` (0 generic, 1 avx2, 2 avx512) in this module; False
    when this CPU cannot run it (nothing changes then). Not while kernels run."""
    return pynn_mk_select(level) == 0


def _microkernel_level():
    """The level this module's microkernel calls use now."""
    return pynn_mk_level()
