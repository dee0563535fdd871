"""The GEMM driver of the OpenCL backend: tile configurations, split-K, the tuner.

Every dense / conv / recurrent product is the GEMM core of ``opencl/gemm.cl`` built with tile
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
import time

import numpy as np

from pynn.backend.opencl import runtime as rt

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


def _vec_width(cfg, *extents):
    """cfg's VW when it divides every extent (an operand's leading dimension, plus for conv
    gathers the channel / filter run a vector must not cross), else 1: scalar reads. Device
    arrays reach the kernels at offset 0 (``arrays.DEVICE``), so a vector's start is then aligned.
    Only these two widths per operand: each (VWA, VWB) pair is a program build (about 6 s
    cold on PoCL), and a 2-wide read when VW = 4 would double the builds for little gain."""
    w = cfg["VW"]
    return w if all(e % w == 0 for e in extents) else 1


def run_gemm(file_stem, name, m, n, k, args, splits=1, k_chunk=None, tiles=None, vwa=(),
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


def sum_slots(partial, slots, count, out):
    """out[c] = sum over s of partial[s, c], s ascending (c < count)."""
    knl = rt.kernel("reduce", "bias_backward_final")
    rt.launch(knl, (count,), (REDUCE_WG,), slots, count, partial, out)


def gemm_split_out(op, file_stem, name, m, n, k, in_args, out_shape, geom=(), vwa=(), vwb=()):
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
        run_gemm(file_stem, name, m, n, k, (*in_args, out, *geom), tiles=cfg, vwa=vwa,
                  vwb=vwb)
        return out
    partial = rt.empty((splits, m * n), np.float32, f"{op} split-K partials")
    run_gemm(file_stem, name, m, n, k, (*in_args, partial, *geom), splits, chunk, tiles=cfg,
              vwa=vwa, vwb=vwb)
    sum_slots(partial, splits, m * n, out)
    return out



def column_chunks(rows):
    """(chunk_rows, chunks) of the column sums' first pass: fixed by the row count alone."""
    chunk_rows = max(REDUCE_CHUNK_ROWS, math.ceil(rows / 128))
    return chunk_rows, math.ceil(rows / chunk_rows)



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
            run_gemm("dense", "dense_forward", m, n, k, args, tiles=cfg, vwa=(k,),
                      vwb=(n,))
            rt.queue().finish()
            err = np.abs(y.get() - ref).max() / max(np.abs(ref).max(), 1e-30)
            t0 = time.perf_counter()
            for _ in range(repeats):
                run_gemm("dense", "dense_forward", m, n, k, args, tiles=cfg, vwa=(k,),
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


def column_sums(op, a):
    """Sum of ``a`` over every axis but the last, in a fixed order (two passes, no atomics):
    the bias gradient of dense and conv, and of softmax layers."""
    cols = a.shape[a.ndim - 1]
    rows = a.size // cols if cols else 0
    out = rt.empty((cols,), np.float32, f"{op} output")
    if cols == 0:
        return out
    if rows == 0:
        out.fill(0)
        return out
    chunk_rows, chunks = column_chunks(rows)
    partial = rt.empty((chunks, cols), np.float32, f"{op} partials")
    knl = rt.kernel("reduce", "bias_backward_partial")
    rt.launch(knl, (cols, chunks), (REDUCE_WG, 1), rows, cols, chunk_rows, a, partial)
    sum_slots(partial, chunks, cols, out)
    return out

