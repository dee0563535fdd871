"""The OpenCL backend: ``pyopencl.array.Array`` (float32; int32 / uint8 where stated) in and
out, kernels from ``opencl/*.cl`` underneath.

Every op of ``pynn.backend.api.OPS`` is here with the CPU backend's signature. This module
holds the array ops and the GEMM-shaped ops (dense, conv, bias_backward and
activation_bias_backward, the column sums of opencl/reduce.cl); the other families come from
``_cl_nn``. Read-only inputs may be host arrays (uploaded and converted to
float32); arrays updated in place must be device arrays. Nothing ever falls back to the CPU.

GEMM tiles: every dense / conv kernel is the GEMM core of ``opencl/gemm.cl`` built with tile
defines, plus the vector widths of its two operands' global reads, chosen per call from the
leading dimensions (``_vec_width``: scalar reads for odd ones). The tiles come from
``tune_gemm()``'s result cached on disk for this device and driver, else from per-vendor
defaults below. Results do not depend on the tile sizes or widths except through the split-K
count of the backward-weight ops (summed in a fixed order: still reproducible).
"""

import hashlib
import json
import math
import os
import sys
import time

import numpy as np

from pynn.backend import _cl_runtime as rt
from pynn.backend._cl_rnn import (  # noqa: F401
    gru_backward,
    gru_forward,
    lstm_backward,
    lstm_forward,
    simple_rnn_backward,
    simple_rnn_forward,
)
from pynn.backend._cl_nn import _backward_operands
from pynn.backend._cl_nn import (  # noqa: F401
    accuracy_count,
    activation_backward,
    activation_forward,
    adagrad_update,
    adam_update,
    avgpool2d_backward,
    avgpool2d_forward,
    confusion_counts,
    dropout_backward,
    dropout_forward,
    global_avgpool2d_backward,
    global_avgpool2d_forward,
    global_maxpool2d_backward,
    global_maxpool2d_forward,
    loss_forward_backward,
    maxpool2d_backward,
    maxpool2d_forward,
    regularizer_inplace,
    rmsprop_update,
    sgd_update,
    sum_squares,
    top_k_count,
)
from pynn.backend._cl_runtime import devices, empty_cache  # noqa: F401
from pynn.backend._validate import activation_name, conv_geometry
from pynn.backend.api import ACTIVATIONS, ACTIVATIONS_NEEDING_INPUT, conv2d_backward_composed

NAME = "opencl"

# -- device selection -------------------------------------------------------------------


def select_device(spec="opencl"):
    """'opencl' (discrete GPU, then integrated GPU, then CPU device) or 'opencl:P:D'."""
    return rt.select_device(spec)


def device_info():
    return rt.device_info()


# -- array ops --------------------------------------------------------------------------


def _array_type():
    return rt.cl_array.Array


def _dev(op, name, a, ndim=None, dtype=np.float32):
    """A read-only operand as a C-contiguous device array of ``dtype`` at offset 0 on the
    current context. Host data is uploaded (converted to ``dtype``), as in ``_cl_nn``; a
    device array must already have the dtype."""
    dtype = np.dtype(dtype)
    if a is None:
        raise ValueError(f"{op}: '{name}' is required, got None")
    if isinstance(a, _array_type()):
        if a.dtype != dtype:
            raise TypeError(f"{op}: '{name}' must be a {dtype} device array, got {a.dtype}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{op}: '{name}' must be C-contiguous, got strides {a.strides}")
        if a.context != rt.context():
            raise ValueError(f"{op}: '{name}' lives on another OpenCL context than the "
                             f"current device {rt.device_info()['index']}")
        if a.offset:
            a = copy(a)
    else:
        arr = np.asarray(a)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number)
                                       or arr.dtype == bool):
            raise TypeError(f"{op}: '{name}' must be a numeric array, got dtype {arr.dtype}")
        a = rt.to_device(arr, dtype=dtype)
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{op}: '{name}' must have {ndim} dimensions, got shape {a.shape}")
    return a


def asarray(x, dtype=np.float32):
    """Host data -> device array (upload); a device array of the right dtype passes through."""
    dtype = np.dtype(dtype)
    if rt.cl_array is not None and isinstance(x, rt.cl_array.Array):
        if x.dtype == dtype and x.flags.c_contiguous and not x.offset:
            return x
        if x.dtype == dtype:
            return copy(x)
        return x.astype(dtype)
    return rt.to_device(np.asarray(x), dtype=dtype)


def to_numpy(a):
    if rt.cl_array is not None and isinstance(a, rt.cl_array.Array):
        return a.get()
    return np.asarray(a)


def empty(shape, dtype=np.float32):
    return rt.empty(shape, dtype)


def zeros(shape, dtype=np.float32):
    return rt.zeros(shape, dtype)


def full(shape, value, dtype=np.float32):
    a = rt.empty(shape, dtype)
    if a.size:
        a.fill(np.dtype(dtype).type(value))
    return a


def copy(a):
    if not isinstance(a, _array_type()):
        raise TypeError(f"copy: expected a pyopencl.array.Array, got {type(a).__name__}")
    out = rt.empty(a.shape, a.dtype, "copy")
    if a.size:
        if a.flags.c_contiguous:
            rt.cl.enqueue_copy(rt.queue(), out.data, a.base_data, byte_count=a.nbytes,
                               src_offset=a.offset)
        else:
            out[...] = a
    return out


def reshape(a, shape):
    return a.reshape(shape)


def _inplace(op, a):
    if not isinstance(a, _array_type()):
        raise TypeError(f"{op}: 'a' must be a pyopencl device array (it is updated in place), "
                        f"got {type(a).__name__}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{op}: 'a' must be C-contiguous, got strides {a.strides}")
    return a


def add_inplace(a, b):
    """a += b (same shape, same dtype), on the device."""
    a = _inplace("add_inplace", a)
    b = _dev("add_inplace", "b", b, dtype=a.dtype)
    if a.shape != b.shape:
        raise ValueError(f"add_inplace: shapes differ, a {a.shape} and b {b.shape}")
    if a.size:
        a += b


def scale_inplace(a, factor):
    """a *= factor, on the device."""
    a = _inplace("scale_inplace", a)
    if a.size:
        a *= a.dtype.type(factor)


# -- GEMM configuration -----------------------------------------------------------------

TILE_KEYS = ("MWG", "NWG", "KWG", "MDIMC", "NDIMC", "LPAD", "VW")

# Starting points per vendor (CLBlast's published tunings point the same way: 64x64 tiles of
# 16x16 work-items on discrete GPUs, narrower groups on Intel, small groups on CPUs). VW is
# the widest global read (1, 2, 4 floats); each call narrows it per operand (``_vec_width``)
# and passes the result to gemm.cl as VWA / VWB.
VENDOR_TILES = {
    "nvidia": dict(MWG=64, NWG=64, KWG=16, MDIMC=16, NDIMC=16, LPAD=1, VW=4),
    "amd": dict(MWG=64, NWG=64, KWG=16, MDIMC=16, NDIMC=16, LPAD=1, VW=4),
    "intel": dict(MWG=32, NWG=64, KWG=16, MDIMC=8, NDIMC=16, LPAD=1, VW=4),
    # PoCL: 8x8 outputs per work-item; measured 2x faster than 4x4 on a 2-core AVX2 host.
    "pocl": dict(MWG=64, NWG=64, KWG=16, MDIMC=8, NDIMC=8, LPAD=0, VW=4),
    "other": dict(MWG=32, NWG=32, KWG=16, MDIMC=8, NDIMC=8, LPAD=0, VW=1),
}
FALLBACK_TILES = dict(MWG=16, NWG=16, KWG=8, MDIMC=4, NDIMC=4, LPAD=0, VW=1)

# The tuner's bounded search space (filtered by each device's limits).
TUNE_CANDIDATES = (
    dict(MWG=32, NWG=32, KWG=16, MDIMC=8, NDIMC=8, LPAD=0, VW=4),
    dict(MWG=64, NWG=64, KWG=16, MDIMC=16, NDIMC=16, LPAD=1, VW=4),
    dict(MWG=64, NWG=64, KWG=16, MDIMC=8, NDIMC=8, LPAD=0, VW=4),
    dict(MWG=32, NWG=64, KWG=16, MDIMC=8, NDIMC=16, LPAD=1, VW=4),
    dict(MWG=64, NWG=32, KWG=16, MDIMC=16, NDIMC=8, LPAD=1, VW=4),
    dict(MWG=32, NWG=32, KWG=32, MDIMC=8, NDIMC=8, LPAD=0, VW=4),
    dict(MWG=128, NWG=64, KWG=16, MDIMC=16, NDIMC=16, LPAD=1, VW=4),
    dict(MWG=64, NWG=128, KWG=16, MDIMC=16, NDIMC=16, LPAD=1, VW=4),
    dict(MWG=16, NWG=16, KWG=16, MDIMC=4, NDIMC=4, LPAD=0, VW=4),
    dict(MWG=32, NWG=32, KWG=16, MDIMC=4, NDIMC=8, LPAD=0, VW=4),
    dict(MWG=64, NWG=64, KWG=32, MDIMC=16, NDIMC=16, LPAD=1, VW=4),
    dict(MWG=16, NWG=64, KWG=16, MDIMC=4, NDIMC=16, LPAD=0, VW=4),
    dict(MWG=128, NWG=64, KWG=16, MDIMC=16, NDIMC=8, LPAD=0, VW=4),
    dict(MWG=64, NWG=128, KWG=16, MDIMC=8, NDIMC=16, LPAD=0, VW=4),
    # Narrower reads, for devices whose compilers split or serialise wide loads.
    dict(MWG=64, NWG=64, KWG=16, MDIMC=8, NDIMC=8, LPAD=0, VW=1),
    dict(MWG=64, NWG=64, KWG=16, MDIMC=16, NDIMC=16, LPAD=1, VW=1),
    dict(MWG=32, NWG=64, KWG=16, MDIMC=8, NDIMC=16, LPAD=1, VW=2),
)

# Split-K: each split covers a multiple of this many k (a multiple of every KWG), and a
# GEMM splits only when its output tiles would leave compute units idle.
SPLIT_K_UNIT = 256
MAX_SPLITS = 64
# Row chunk of the column sums' first pass (bias_backward, activation_bias_backward) and
# 1-D work-group size of the reduce kernels.
REDUCE_CHUNK_ROWS = 64
REDUCE_WG = 64

_tiles_by_device = {}


def _fits(cfg, info):
    items = cfg["MDIMC"] * cfg["NDIMC"]
    local_bytes = 4 * cfg["KWG"] * (cfg["MWG"] + cfg["NWG"] + 2 * cfg["LPAD"])
    vw = cfg["VW"]
    return (items <= info["max_work_group_size"] and local_bytes <= info["local_mem"]
            and cfg["MWG"] % cfg["MDIMC"] == 0 and cfg["NWG"] % cfg["NDIMC"] == 0
            and vw in (1, 2, 4) and cfg["MWG"] % vw == 0 and cfg["NWG"] % vw == 0
            and cfg["KWG"] % vw == 0)


def _tuning_path():
    info = rt.device_info()
    ident = "\0".join((info["platform"], info["name"], info["driver_version"],
                       info["platform_version"]))
    digest = hashlib.sha256(ident.encode()).hexdigest()[:20]
    return rt.cache_dir() / "tuning" / f"gemm-{digest}.json"


def gemm_tiles():
    """The tile defines used on the current device (tuned if ``tune_gemm`` ran, else the
    vendor default)."""
    info = rt.device_info()
    cfg = _tiles_by_device.get(info["index"])
    if cfg is None:
        cfg = None
        path = _tuning_path()
        if path.is_file():
            try:
                saved = json.loads(path.read_text())["tiles"]
                saved.setdefault("VW", 1)  # tuned before vector loads existed
                cfg = {k: int(saved[k]) for k in TILE_KEYS}
            except (OSError, ValueError, KeyError, TypeError):
                cfg = None
        if cfg is None or not _fits(cfg, info):
            cfg = dict(VENDOR_TILES.get(info["vendor"], VENDOR_TILES["other"]))
        if not _fits(cfg, info):
            cfg = dict(FALLBACK_TILES)
        _tiles_by_device[info["index"]] = cfg
    return dict(cfg)


def _split_plan(m, n, k, cfg):
    """(splits, k_chunk) for an (m, n, k) GEMM: derived from the shape, the tiles and the
    device's compute units only, so a given call always sums in the same order."""
    tiles = math.ceil(m / cfg["MWG"]) * math.ceil(n / cfg["NWG"])
    want = 4 * rt.device_info()["compute_units"]
    if tiles >= want or k < 2 * SPLIT_K_UNIT:
        return 1, max(k, 1)
    splits = min(math.ceil(want / tiles), k // SPLIT_K_UNIT, MAX_SPLITS)
    chunk = math.ceil(math.ceil(k / splits) / SPLIT_K_UNIT) * SPLIT_K_UNIT
    return math.ceil(k / chunk), chunk


def _check_int32(op, **dims):
    for name, v in dims.items():
        if v >= 2**31:
            raise ValueError(f"{op}: {name} = {v} exceeds the int32 indexing of the OpenCL "
                             f"kernels")


def _vec_width(cfg, *extents):
    """cfg's VW when it divides every extent (an operand's leading dimension, plus for conv
    gathers the channel / filter run a vector must not cross), else 1: scalar reads. Device
    arrays reach the kernels at offset 0 (``_dev``), so a vector's start is then aligned.
    Only these two widths per operand: each (VWA, VWB) pair is a program build (about 6 s
    cold on PoCL), and a 2-wide read when VW = 4 would double the builds for little gain."""
    w = cfg["VW"]
    return w if all(e % w == 0 for e in extents) else 1


def _run_gemm(file_stem, name, m, n, k, args, splits=1, k_chunk=None, tiles=None, vwa=(),
              vwb=()):
    """Launch one GEMM-core kernel. ``vwa`` / ``vwb``: the extents that A's / B's vector
    width must divide (see ``_vec_width``); empty means scalar reads."""
    cfg = tiles or gemm_tiles()
    defines = {key: cfg[key] for key in TILE_KEYS if key != "VW"}
    defines["VWA"] = _vec_width(cfg, *vwa) if vwa else 1
    defines["VWB"] = _vec_width(cfg, *vwb) if vwb else 1
    knl = rt.kernel(file_stem, name, defines)
    groups_n = math.ceil(n / cfg["NWG"])
    groups_m = math.ceil(m / cfg["MWG"])
    chunk = k_chunk if splits > 1 else max(k, 1)
    rt.launch(knl, (groups_n * cfg["NDIMC"], groups_m * cfg["MDIMC"], splits),
              (cfg["NDIMC"], cfg["MDIMC"], 1), m, n, k, chunk, *args)


def _sum_slots(partial, slots, count, out):
    """out[c] = sum over s of partial[s, c], s ascending (c < count)."""
    knl = rt.kernel("reduce", "bias_backward_final")
    rt.launch(knl, (count,), (REDUCE_WG,), slots, count, partial, out)


def _gemm_split_out(op, file_stem, name, m, n, k, in_args, out_shape, geom=(), vwa=(), vwb=()):
    """Run a backward-weight GEMM (output m x n summed over k) with split-K when it helps."""
    out = rt.empty(out_shape, np.float32, f"{op} output")
    if m * n == 0:
        return out
    if k == 0:
        out.fill(0)
        return out
    cfg = gemm_tiles()
    splits, chunk = _split_plan(m, n, k, cfg)
    if splits == 1:
        _run_gemm(file_stem, name, m, n, k, (*in_args, out, *geom), tiles=cfg, vwa=vwa,
                  vwb=vwb)
        return out
    partial = rt.empty((splits, m * n), np.float32, f"{op} split-K partials")
    _run_gemm(file_stem, name, m, n, k, (*in_args, partial, *geom), splits, chunk, tiles=cfg,
              vwa=vwa, vwb=vwb)
    _sum_slots(partial, splits, m * n, out)
    return out


def _activation_code(op, activation, alpha):
    name = activation_name(op, activation)
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: alpha must be a number, got {alpha!r}")
    return name, ACTIVATIONS.index(name), alpha


def _forward_epilogue(op, name, code, alpha, z_shape):
    """(y, z, code for the kernel, softmax-after): softmax runs as its own row op after a
    linear epilogue; gelu keeps z."""
    if name == "softmax":
        z = rt.empty(z_shape, np.float32, f"{op} pre-activation")
        return z, None, ACTIVATIONS.index("linear"), True
    y = rt.empty(z_shape, np.float32, f"{op} output")
    z = rt.empty(z_shape, np.float32, f"{op} pre-activation") if (
        name in ACTIVATIONS_NEEDING_INPUT) else None
    return y, z, code, False


# -- dense ------------------------------------------------------------------------------


def dense_forward(x, kernel, bias, activation="linear", alpha=0.0):
    """y = act(x @ kernel + bias) -> (y, z); z is the pre-activation for gelu, else None."""
    op = "dense_forward"
    name, code, alpha = _activation_code(op, activation, alpha)
    x = _dev(op, "x", x, ndim=2)
    kernel = _dev(op, "kernel", kernel, ndim=2)
    if kernel.shape[0] != x.shape[1]:
        raise ValueError(f"{op}: 'kernel' must have shape ({x.shape[1]}, ?), "
                         f"got {kernel.shape}")
    m, k, n = x.shape[0], x.shape[1], kernel.shape[1]
    if bias is not None:
        bias = _dev(op, "bias", bias, ndim=1)
        if bias.shape != (n,):
            raise ValueError(f"{op}: 'bias' must have shape ({n},), got {bias.shape}")
    _check_int32(op, rows_x_units=m * n, rows_x_inputs=m * k, weights=k * n)
    y, z, kcode, softmax_after = _forward_epilogue(op, name, code, alpha, (m, n))
    if m * n:
        _run_gemm("dense", "dense_forward", m, n, k, (x, kernel, bias, y, z, kcode, alpha),
                  vwa=(k,), vwb=(n,))
    if softmax_after:
        return activation_forward(y, "softmax", alpha), None
    return y, z


def dense_backward_input(dz, kernel):
    """dx = dz @ kernel.T, shape (N, C)."""
    op = "dense_backward_input"
    dz = _dev(op, "dz", dz, ndim=2)
    kernel = _dev(op, "kernel", kernel, ndim=2)
    if kernel.shape[1] != dz.shape[1]:
        raise ValueError(f"{op}: 'kernel' must have shape (?, {dz.shape[1]}), "
                         f"got {kernel.shape}")
    m, k, n = dz.shape[0], dz.shape[1], kernel.shape[0]
    _check_int32(op, rows_x_inputs=m * n, rows_x_units=m * k, weights=k * n)
    dx = rt.empty((m, n), np.float32, f"{op} output")
    if m * n:
        _run_gemm("dense", "dense_backward_input", m, n, k, (dz, kernel, dx), vwa=(k,),
                  vwb=(k,))
    return dx


def dense_backward_weight(x, dz):
    """dkernel = x.T @ dz, shape (C, U); split-K over the batch when the output is small."""
    op = "dense_backward_weight"
    x = _dev(op, "x", x, ndim=2)
    dz = _dev(op, "dz", dz, ndim=2)
    if dz.shape[0] != x.shape[0]:
        raise ValueError(f"{op}: 'dz' must have shape ({x.shape[0]}, ?), got {dz.shape}")
    batch, m, n = x.shape[0], x.shape[1], dz.shape[1]
    _check_int32(op, weights=m * n, batch_x_inputs=batch * m, batch_x_units=batch * n)
    return _gemm_split_out(op, "dense", "dense_backward_weight", m, n, batch, (x, dz), (m, n),
                           vwa=(m,), vwb=(n,))


def _column_chunks(rows):
    """(chunk_rows, chunks) of the column sums' first pass: fixed by the row count alone."""
    chunk_rows = max(REDUCE_CHUNK_ROWS, math.ceil(rows / 128))
    return chunk_rows, math.ceil(rows / chunk_rows)


def bias_backward(dz):
    """Sum of dz over every axis but the last, in a fixed order (two passes, no atomics)."""
    op = "bias_backward"
    dz = _dev(op, "dz", dz)
    if dz.ndim < 1:
        raise ValueError(f"{op}: 'dz' must have at least 1 dimension, got shape {dz.shape}")
    cols = dz.shape[dz.ndim - 1]
    rows = dz.size // cols if cols else 0
    out = rt.empty((cols,), np.float32, f"{op} output")
    if cols == 0:
        return out
    if rows == 0:
        out.fill(0)
        return out
    chunk_rows, chunks = _column_chunks(rows)
    partial = rt.empty((chunks, cols), np.float32, f"{op} partials")
    knl = rt.kernel("reduce", "bias_backward_partial")
    rt.launch(knl, (cols, chunks), (REDUCE_WG, 1), rows, cols, chunk_rows, dz, partial)
    _sum_slots(partial, chunks, cols, out)
    return out


def activation_bias_backward(dy, x, y, activation, alpha=0.0):
    """(dz, db): dz = activation_backward(dy, x, y, activation, alpha) and db =
    bias_backward(dz), the activation gradient computed inside the first pass of the column
    sums (softmax, a row op, runs the two ops in turn). Operands as activation_backward."""
    op = "activation_bias_backward"
    name, a, dy, x, y = _backward_operands(op, dy, x, y, activation, alpha)
    if dy.ndim < 1:
        raise ValueError(f"{op}: 'dy' must have at least 1 dimension (the bias axis is the "
                         f"last), got shape {dy.shape}")
    if name == "softmax":
        dz = activation_backward(dy, x, y, name, a)
        return dz, bias_backward(dz)
    cols = dy.shape[dy.ndim - 1]
    rows = dy.size // cols if cols else 0
    dz = rt.empty(dy.shape, np.float32, f"{op} output")
    db = rt.empty((cols,), np.float32, f"{op} bias gradient")
    if cols == 0:
        return dz, db
    if rows == 0:
        db.fill(0)
        return dz, db
    chunk_rows, chunks = _column_chunks(rows)
    partial = rt.empty((chunks, cols), np.float32, f"{op} partials")
    knl = rt.kernel("reduce", "activation_bias_backward_partial")
    # The kernel reads x only for gelu and y only for the others: the unused one may alias.
    rt.launch(knl, (cols, chunks), (REDUCE_WG, 1), rows, cols, chunk_rows, dy,
              x if x is not None else y, y if y is not None else x, dz, partial,
              ACTIVATIONS.index(name), a)
    _sum_slots(partial, chunks, cols, out=db)
    return dz, db


# -- conv -------------------------------------------------------------------------------


def _shape4(op, name, shape):
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise ValueError(f"{op}: '{name}' must be a tuple of 4 ints, got {shape!r}")
    if len(dims) != 4 or min(dims) < 0:
        raise ValueError(f"{op}: '{name}' must be 4 non-negative ints, got {shape!r}")
    return dims


def _conv_geometry(op, input_shape, kernel_shape, strides, padding, dilation_rate):
    geo = conv_geometry(op, input_shape, kernel_shape, strides, padding, dilation_rate)
    n, h, w, c, f = geo["N"], geo["H"], geo["W"], geo["C"], geo["F"]
    kh, kw, ho, wo = geo["KH"], geo["KW"], geo["HO"], geo["WO"]
    sh, sw, dh, dw, ph, pw = geo["SH"], geo["SW"], geo["DH"], geo["DW"], geo["PT"], geo["PL"]
    _check_int32(op, input_size=n * h * w * c, output_size=n * ho * wo * f,
                 patch_matrix_rows=n * max(ho * wo, h * w), reduction=kh * kw * max(c, f))
    g = dict(N=n, H=h, W=w, C=c, KH=kh, KW=kw, F=f, HO=ho, WO=wo)
    # Kernel argument order of CONV_GEOM in opencl/conv.cl.
    g["args"] = (h, w, c, ho, wo, kw, f, sh, sw, dh, dw, ph, pw)
    return g


def conv2d_forward(x, kernel, bias, strides=(1, 1), padding="valid", dilation_rate=(1, 1),
                   activation="linear", alpha=0.0):
    """y = act(conv(x, kernel) + bias) -> (y, z), as an implicit GEMM (no im2col buffer)."""
    op = "conv2d_forward"
    name, code, alpha = _activation_code(op, activation, alpha)
    x = _dev(op, "x", x, ndim=4)
    kernel = _dev(op, "kernel", kernel, ndim=4)
    g = _conv_geometry(op, x.shape, kernel.shape, strides, padding, dilation_rate)
    if bias is not None:
        bias = _dev(op, "bias", bias, ndim=1)
        if bias.shape != (g["F"],):
            raise ValueError(f"{op}: 'bias' must have shape ({g['F']},), got {bias.shape}")
    m, n, k = g["N"] * g["HO"] * g["WO"], g["F"], g["KH"] * g["KW"] * g["C"]
    y, z, kcode, softmax_after = _forward_epilogue(op, name, code, alpha,
                                                    (g["N"], g["HO"], g["WO"], g["F"]))
    if m * n:
        _run_gemm("conv", "conv2d_forward", m, n, k,
                  (x, kernel, bias, y, z, kcode, alpha, *g["args"]), vwa=(g["C"],),
                  vwb=(g["F"],))
    if softmax_after:
        return activation_forward(y, "softmax", alpha), None
    return y, z


def conv2d_backward_input(dz, kernel, input_shape, strides=(1, 1), padding="valid",
                          dilation_rate=(1, 1)):
    """dx (N, H, W, C) from dz (N, HO, WO, F): a gather over taps, deterministic."""
    op = "conv2d_backward_input"
    dz = _dev(op, "dz", dz, ndim=4)
    kernel = _dev(op, "kernel", kernel, ndim=4)
    input_shape = _shape4(op, "input_shape", input_shape)
    g = _conv_geometry(op, input_shape, kernel.shape, strides, padding, dilation_rate)
    want = (g["N"], g["HO"], g["WO"], g["F"])
    if dz.shape != want:
        raise ValueError(f"{op}: 'dz' must have shape {want}, got {dz.shape}")
    dx = rt.empty(input_shape, np.float32, f"{op} output")
    m, n, k = g["N"] * g["H"] * g["W"], g["C"], g["KH"] * g["KW"] * g["F"]
    if m * n:
        _run_gemm("conv", "conv2d_backward_input", m, n, k, (dz, kernel, dx, *g["args"]),
                  vwa=(g["F"],), vwb=(g["F"],))
    return dx


def conv2d_backward_weight(x, dz, kernel_shape, strides=(1, 1), padding="valid",
                           dilation_rate=(1, 1)):
    """dkernel (KH, KW, C, F); split-K over the N*HO*WO output pixels when it helps."""
    op = "conv2d_backward_weight"
    x = _dev(op, "x", x, ndim=4)
    dz = _dev(op, "dz", dz, ndim=4)
    kernel_shape = _shape4(op, "kernel_shape", kernel_shape)
    g = _conv_geometry(op, x.shape, kernel_shape, strides, padding, dilation_rate)
    want = (g["N"], g["HO"], g["WO"], g["F"])
    if dz.shape != want:
        raise ValueError(f"{op}: 'dz' must have shape {want}, got {dz.shape}")
    m, n, k = g["KH"] * g["KW"] * g["C"], g["F"], g["N"] * g["HO"] * g["WO"]
    return _gemm_split_out(op, "conv", "conv2d_backward_weight", m, n, k, (x, dz),
                           kernel_shape, g["args"], vwa=(g["C"],), vwb=(g["F"],))


def conv2d_backward(dy, x, z, y, kernel, strides=(1, 1), padding="valid", dilation_rate=(1, 1),
                    activation="linear", alpha=0.0, use_bias=True, need_input_grad=True):
    """(dx or None, dkernel, dbias or None): the separate kernels in turn (no fused one)."""
    return conv2d_backward_composed(sys.modules[__name__], dy, x, z, y, kernel, strides,
                                    padding, dilation_rate, activation, alpha, use_bias,
                                    need_input_grad)


# -- tuner ------------------------------------------------------------------------------


def tune_gemm(m=512, n=512, k=512, candidates=None, budget_s=120.0, repeats=3, save=True,
              verbose=False):
    """Time a bounded set of tile configurations of ``dense_forward`` on the current device
    and keep the fastest correct one (cached on disk per device + driver).

    At most ``len(candidates)`` builds, stopping once ``budget_s`` seconds are spent (the
    default configuration is always timed first). Returns ``{"tiles", "gflops", "results"}``.
    """
    info = rt.device_info()
    cands = [dict(c) for c in (candidates or TUNE_CANDIDATES)]
    default = gemm_tiles()
    cands = [default] + [c for c in cands if c != default]
    cands = [c for c in cands if _fits(c, info)]
    rng = np.random.default_rng(0)
    a_host = rng.standard_normal((m, k)).astype(np.float32)
    b_host = rng.standard_normal((k, n)).astype(np.float32)
    ref = a_host.astype(np.float64) @ b_host.astype(np.float64)
    a_dev, b_dev = rt.to_device(a_host), rt.to_device(b_host)
    y = rt.empty((m, n), np.float32, "tune_gemm output")
    args = (a_dev, b_dev, None, y, None, 0, 0.0)
    start = time.perf_counter()
    results = []
    for cfg in cands:
        if results and time.perf_counter() - start > budget_s:
            break
        try:
            _run_gemm("dense", "dense_forward", m, n, k, args, tiles=cfg, vwa=(k,),
                      vwb=(n,))
            rt.queue().finish()
            err = np.abs(y.get() - ref).max() / max(np.abs(ref).max(), 1e-30)
            t0 = time.perf_counter()
            for _ in range(repeats):
                _run_gemm("dense", "dense_forward", m, n, k, args, tiles=cfg, vwa=(k,),
                      vwb=(n,))
            rt.queue().finish()
            dt = (time.perf_counter() - t0) / repeats
        except (RuntimeError, rt.cl.Error) as exc:
            results.append({"tiles": cfg, "error": str(exc).splitlines()[0]})
            continue
        ok = bool(err < 1e-4)
        gflops = 2.0 * m * n * k / dt / 1e9
        results.append({"tiles": cfg, "gflops": gflops, "seconds": dt, "correct": ok})
        if verbose:
            print(f"tune_gemm {cfg}: {gflops:.2f} GFLOP/s{'' if ok else ' (WRONG)'}")
    good = [r for r in results if r.get("correct")]
    if not good:
        raise RuntimeError(f"tune_gemm: no configuration ran correctly on {info['name']}: "
                           f"{results}")
    best = max(good, key=lambda r: r["gflops"])
    _tiles_by_device[info["index"]] = dict(best["tiles"])
    out = {"device": info["name"], "driver_version": info["driver_version"],
           "shape": [m, n, k], "tiles": best["tiles"], "gflops": best["gflops"],
           "results": results}
    if save:
        path = _tuning_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(out, indent=1))
            os.replace(tmp, path)
        except OSError:
            pass
    return out
