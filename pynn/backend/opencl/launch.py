"""Work-group sizes and launch shapes shared by the elementwise, row and reduction kernels
of ``opencl/{activation,pool,dropout,loss,metric,optim}.cl``.

Reductions are two-stage and deterministic (opencl/wg_reduce.h): at most ``MAX_GROUPS``
work-groups, a count fixed by the size alone, then one group, no float atomics; the same
inputs give the same bits on every run. They accumulate in float32 (fp64 is optional in
OpenCL), where the CPU accumulates in double: losses and norms agree to ~1e-6 relative.
"""

import numpy as np

from pynn.backend.opencl import runtime as rt

WG = 256  # WG_SIZE of opencl/common.h: elementwise and reduction work-groups
ROW_WG = 64  # SOFTMAX_WG / LOSS_ROW_WG of activation.cl / loss.cl: one group per row
MAX_GROUPS = 256  # stage-1 work-groups of a scalar reduction

PARTIAL = object()  # placeholder for the partial buffer in a stage-1 argument list

_sizes_by_device = {}


def sizes():
    """(wg, row_wg) for the current device: WG and ROW_WG capped by its work-group limit,
    kept powers of two as the tree reductions need."""
    dev = rt.device()
    found = _sizes_by_device.get(dev)
    if found is None:
        limit = int(rt.device_info()["max_work_group_size"])
        cap = 1 << (limit.bit_length() - 1)
        found = _sizes_by_device[dev] = (min(WG, cap), min(ROW_WG, cap))
    return found


def kernel(stem, name):
    """A kernel of this family, built with the group sizes of ``sizes`` (the .cl defaults
    unless the device is smaller)."""
    wg, row = sizes()
    defines = None
    if (wg, row) != (WG, ROW_WG):
        defines = {"WG_SIZE": wg, "SOFTMAX_WG": row, "LOSS_ROW_WG": row}
    return rt.kernel(stem, name, defines)


def elementwise(stem, name, n, *args):
    """One work-item per element; kernels guard the rounded-up tail."""
    rt.launch(kernel(stem, name), (n,), (sizes()[0],), *args)


def groups(n):
    """Stage-1 work-groups of a scalar reduction over n items: fixed by n alone."""
    return max(1, min(MAX_GROUPS, -(-n // sizes()[0])))


def reduce(stem, stage_kernel, n, args, counts=1, dtype=np.float32, out=None):
    """Run a stage-1 kernel over n items (``PARTIAL`` in ``args`` marks its partial buffer)
    and fold its partials: the device array of ``counts`` results (or ``out``, whose first
    ``counts`` entries receive them)."""
    count, wg = groups(n), sizes()[0]
    partial = rt.empty((counts * count,), dtype, what=f"{stage_kernel} partials")
    rt.launch(kernel(stem, stage_kernel), (count * wg,), (wg,),
              *[partial if a is PARTIAL else a for a in args])
    return fold(stem, partial, counts, dtype, out)


def fold(stem, partial, counts=1, dtype=np.float32, out=None):
    """Stage 2: work-group c folds segment c of ``partial`` into out[c]."""
    if out is None:
        out = rt.empty((counts,), dtype, what="reduction result")
    name = "sum_partials_float" if np.dtype(dtype) == np.float32 else "sum_partials_int"
    wg = sizes()[0]
    rt.launch(kernel(stem, name), (counts * wg,), (wg,), partial, out,
              partial.size // counts)
    return out


