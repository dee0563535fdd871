"""The OpenCL runtime under ``pynn.backend.opencl``: device choice, one context and in-order
queue, a program cache (memory + disk), a buffer pool and the launch helper.

Kept small on purpose (tinygrad's ``ops_cl.py`` is the model): host code here only picks
devices, builds programs with ``-D`` options, hands out pooled buffers and enqueues. Every
kernel lives in ``opencl/*.cl`` (the package ``pynn.opencl_kernels``).

Finding a driver: pyopencl's Linux wheels bundle an ICD loader that also reads the vendor
files shipped in the wheel, so ``pip install pyopencl pocl-binary-distribution`` gives a PoCL
CPU device with no environment variables. System drivers (/etc/OpenCL/vendors) are found
beside it.

Disk cache: ``$PYNN_CACHE_DIR`` or ``$XDG_CACHE_HOME/pynn`` (``~/.cache/pynn``). A program
binary is keyed by the sha256 of its source, every file it includes (recursively), the build
options, the device name, the driver version and the platform version, so editing a header
or updating a driver rebuilds. ``PYNN_CL_NO_DISK_CACHE=1`` turns the disk cache off.
"""

import hashlib
import os
import re
from pathlib import Path

import numpy as np

try:
    import pyopencl as cl
    import pyopencl.array as cl_array
    import pyopencl.tools as cl_tools
except ImportError as exc:  # pragma: no cover - exercised only without pyopencl
    cl = cl_array = cl_tools = None
    _IMPORT_ERROR = exc
else:
    _IMPORT_ERROR = None

INSTALL_HINT = (
    "install a GPU vendor's OpenCL driver (NVIDIA, AMD ROCm, Intel compute-runtime) or the "
    "portable CPU driver with `pip install pyopencl mako pocl-binary-distribution`"
)

# Device preference for 'opencl': discrete GPU, integrated GPU, CPU, anything else.
_RANK_DISCRETE_GPU, _RANK_INTEGRATED_GPU, _RANK_CPU, _RANK_OTHER = range(4)


class _State:
    device = None
    context = None
    queue = None
    pool = None
    index = None
    info = None
    programs = {}  # (file_stem, defines) -> cl.Program
    kernels = {}  # (file_stem, defines, kernel_name) -> cl.Kernel
    disk_hits = 0
    builds = 0
    # Host arrays of uploads still in flight, with their events: an asynchronous upload reads
    # its source after the call returns, so the source must outlive the transfer.
    uploads = []


_S = _State()


def _require_pyopencl():
    if cl is None:
        raise RuntimeError(f"OpenCL backend: pyopencl is not importable ({_IMPORT_ERROR}); "
                           f"{INSTALL_HINT}")


def _platforms():
    _require_pyopencl()
    try:
        return cl.get_platforms()
    except cl.Error:  # the ICD loader reports "no platforms" as an error
        return []


def _rank(dev):
    if dev.type & cl.device_type.GPU:
        unified = bool(getattr(dev, "host_unified_memory", False))
        return _RANK_INTEGRATED_GPU if unified else _RANK_DISCRETE_GPU
    if dev.type & cl.device_type.CPU:
        return _RANK_CPU
    return _RANK_OTHER


def _type_name(dev):
    for flag, name in ((cl.device_type.GPU, "gpu"), (cl.device_type.CPU, "cpu"),
                       (cl.device_type.ACCELERATOR, "accelerator")):
        if dev.type & flag:
            return name
    return "other"


def _describe(p, d, platform, dev):
    ext = dev.extensions.split()
    return {
        "index": f"opencl:{p}:{d}",
        "platform": platform.name.strip(),
        "name": dev.name.strip(),
        "type": _type_name(dev),
        "global_mem": int(dev.global_mem_size),
        "max_alloc": int(dev.max_mem_alloc_size),
        "local_mem": int(dev.local_mem_size),
        "max_work_group_size": int(dev.max_work_group_size),
        "compute_units": int(dev.max_compute_units),
        "fp16": "cl_khr_fp16" in ext,
        "fp64": "cl_khr_fp64" in ext,
        "driver_version": dev.driver_version.strip(),
        "platform_version": platform.version.strip(),
        "vendor": _vendor(platform, dev),
    }


def _vendor(platform, dev):
    """One of 'nvidia', 'amd', 'intel', 'pocl', 'other': picks per-vendor tile defaults."""
    text = f"{platform.name} {platform.vendor} {dev.vendor}".lower()
    if "portable computing language" in text or "pocl" in text:
        return "pocl"
    for key, name in (("nvidia", "nvidia"), ("advanced micro", "amd"), ("amd", "amd"),
                      ("intel", "intel")):
        if key in text:
            return name
    return "other"


def best_device(found):
    """The preferred (p, d, platform, device) tuple: discrete GPU, integrated GPU, CPU, other;
    ties go to the lowest platform, then device index."""
    return min(found, key=lambda t: (_rank(t[3]), t[0], t[1]))


def devices():
    """Every OpenCL device of every platform, as dicts (see ``_describe``)."""
    out = []
    for p, platform in enumerate(_platforms()):
        try:
            devs = platform.get_devices()
        except cl.Error:
            devs = []
        for d, dev in enumerate(devs):
            out.append(_describe(p, d, platform, dev))
    return out


def select_device(spec="opencl"):
    """Make ``spec`` ('opencl' for the best device, or 'opencl:P:D') the current device.

    Re-selecting the current device keeps its context, queue, pool and programs.
    """
    spec = str(spec).strip().lower()
    platforms = _platforms()
    found = []
    for p, platform in enumerate(platforms):
        try:
            devs = platform.get_devices()
        except cl.Error:
            devs = []
        found.extend((p, d, platform, dev) for d, dev in enumerate(devs))
    if not found:
        raise RuntimeError(f"OpenCL backend: no OpenCL device found; {INSTALL_HINT}")
    if spec == "opencl":
        p, d, platform, dev = best_device(found)
    else:
        parts = spec.split(":")
        try:
            if len(parts) != 3 or parts[0] != "opencl":
                raise ValueError
            want = (int(parts[1]), int(parts[2]))
        except ValueError:
            raise ValueError(f"select_device: expected 'opencl' or 'opencl:P:D', got {spec!r}")
        match = [t for t in found if (t[0], t[1]) == want]
        if not match:
            have = ", ".join(f"opencl:{t[0]}:{t[1]} ({t[3].name.strip()})" for t in found)
            raise ValueError(f"select_device: no device {spec!r}; available: {have}")
        p, d, platform, dev = match[0]
    index = f"opencl:{p}:{d}"
    if _S.index == index:
        return device_info()
    _S.device = dev
    _S.context = cl.Context([dev])
    _S.queue = cl.CommandQueue(_S.context)
    _S.pool = cl_tools.MemoryPool(cl_tools.ImmediateAllocator(_S.queue))
    _S.index = index
    _S.info = _describe(p, d, platform, dev)
    _S.programs = {}
    _S.kernels = {}
    return device_info()


def _ensure():
    if _S.queue is None:
        select_device("opencl")


def device_info():
    """The description dict of the current device (selecting the best one if none is)."""
    _ensure()
    return dict(_S.info)


def context():
    _ensure()
    return _S.context


def queue():
    _ensure()
    return _S.queue


def device():
    _ensure()
    return _S.device


# -- programs -------------------------------------------------------------------------------


def kernel_dir():
    """The directory holding the .cl files and headers: a source checkout's opencl/ beside
    pynn/ when there is one (so a worktree or an in-place build reads its own kernels, not
    those of whichever checkout was installed in editable mode), else the installed package
    ``pynn.opencl_kernels``."""
    checkout = Path(__file__).resolve().parents[3] / "opencl"
    if (checkout / "common.h").is_file():
        return checkout
    import pynn.opencl_kernels

    return Path(pynn.opencl_kernels.__file__).resolve().parent


def cache_dir():
    root = os.environ.get("PYNN_CACHE_DIR")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "pynn")
    return Path(root)


def _normalize_defines(defines):
    if not defines:
        return ()
    items = defines.items() if isinstance(defines, dict) else defines
    return tuple(sorted((str(k), str(int(v) if isinstance(v, (bool, np.bool_)) else v))
                        for k, v in items))


def build_options(defines):
    opts = [f"-I{kernel_dir()}", "-cl-std=CL1.2"]
    opts += [f"-D{k}={v}" for k, v in defines]
    return opts


_INCLUDE_RE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)


def _included_files(source, seen):
    """Every file that ``source`` includes from the kernel directory, recursively."""
    for name in _INCLUDE_RE.findall(source):
        path = kernel_dir() / name
        if name not in seen and path.is_file():
            seen[name] = path.read_bytes()
            _included_files(seen[name].decode(), seen)
    return seen


def _cache_key(source, options):
    h = hashlib.sha256()
    h.update(source.encode())
    for name, text in sorted(_included_files(source, {}).items()):
        h.update(b"\0" + name.encode() + b"\0" + text)
    info = _S.info
    for part in (*options, info["platform"], info["name"], info["driver_version"],
                 info["platform_version"]):
        h.update(b"\0" + part.encode())
    return h.hexdigest()


def _build(source, options, label):
    """Build ``source`` for the current device, through the disk cache when enabled."""
    dev = _S.device
    use_disk = os.environ.get("PYNN_CL_NO_DISK_CACHE", "0") != "1"
    path = cache_dir() / "programs" / f"{_cache_key(source, options)}.bin" if use_disk else None
    if path is not None and path.is_file():
        try:
            prg = cl.Program(_S.context, [dev], [path.read_bytes()]).build(options=options)
            _S.disk_hits += 1
            return prg
        except cl.Error:
            path.unlink(missing_ok=True)  # stale or foreign binary: rebuild from source
    prg = cl.Program(_S.context, source)
    try:
        prg.build(options=options, devices=[dev], cache_dir=False)
    except cl.Error as exc:
        try:
            log = prg.get_build_info(dev, cl.program_build_info.LOG)
        except cl.Error:
            log = str(exc)
        raise RuntimeError(f"OpenCL build of {label} failed with options {options}:\n{log}")
    _S.builds += 1
    if path is not None:
        try:
            binary = prg.get_info(cl.program_info.BINARIES)[0]
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(binary)
            os.replace(tmp, path)
        except (OSError, cl.Error):
            pass  # a read-only cache only costs rebuild time
    return prg


def program(file_stem, defines=None):
    """The built program of ``opencl/<file_stem>.cl`` for these defines (built once)."""
    _ensure()
    key = (file_stem, _normalize_defines(defines))
    prg = _S.programs.get(key)
    if prg is None:
        src_path = kernel_dir() / f"{file_stem}.cl"
        if not src_path.is_file():
            raise FileNotFoundError(f"OpenCL kernel file {src_path} is missing")
        source = src_path.read_text()
        prg = _build(source, build_options(key[1]), f"{file_stem}.cl")
        _S.programs[key] = prg
    return prg


def kernel(file_stem, kernel_name, defines=None):
    """The kernel ``kernel_name`` of ``opencl/<file_stem>.cl`` built with ``defines``."""
    key = (file_stem, _normalize_defines(defines), kernel_name)
    knl = _S.kernels.get(key)
    if knl is None or _S.queue is None:
        knl = cl.Kernel(program(file_stem, defines), kernel_name)
        _S.kernels[key] = knl
    return knl


def cache_stats():
    """Counters for tests and benchmarks: programs built from source and disk-cache hits."""
    return {"builds": _S.builds, "disk_hits": _S.disk_hits, "in_memory": len(_S.programs)}


def clear_program_cache():
    """Forget in-memory programs (the disk cache stays): the next use reloads from disk."""
    _S.programs = {}
    _S.kernels = {}


# -- buffers --------------------------------------------------------------------------------


def _check_size(nbytes, what):
    info = _S.info
    label = f" for {what}" if what else ""
    if nbytes > info["max_alloc"]:
        raise MemoryError(f"OpenCL: {nbytes} bytes requested{label} exceed the device's "
                          f"max allocation of {info['max_alloc']} bytes ({info['name']})")
    if nbytes > info["global_mem"]:
        raise MemoryError(f"OpenCL: {nbytes} bytes requested{label} exceed the device's "
                          f"global memory of {info['global_mem']} bytes ({info['name']})")


def empty(shape, dtype=np.float32, what=""):
    """An uninitialized device array from the pool (no driver allocation once warm)."""
    _ensure()
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"OpenCL empty: negative dimension in shape {shape}")
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    _check_size(nbytes, what)
    try:
        return cl_array.empty(_S.queue, shape, dtype, allocator=_S.pool)
    except cl.MemoryError:
        _S.pool.free_held()
        try:
            return cl_array.empty(_S.queue, shape, dtype, allocator=_S.pool)
        except cl.MemoryError:
            raise MemoryError(f"OpenCL: could not allocate {nbytes} bytes"
                              f"{' for ' + what if what else ''} on {_S.info['name']}")


def zeros(shape, dtype=np.float32, what=""):
    a = empty(shape, dtype, what)
    if a.size:
        a.fill(0)
    return a


def to_device(a, dtype=None):
    """Upload a host array (C-contiguous copy, optional dtype) into a pooled device array."""
    # A private snapshot: the copy below runs after this call returns, so it must not read an
    # array the caller may change next (a weight updated in place, a reused batch buffer). A host
    # memcpy costs far less than the transfer. (ascontiguousarray would make 0-d arrays 1-d.)
    a = np.array(a, dtype=dtype, order="C", copy=True)
    out = empty(a.shape, a.dtype, "upload")
    if a.size:
        # Non-blocking: the host goes on enqueuing the step (and slicing the next batch) while
        # the transfer and the previous step's kernels run; the in-order queue keeps every
        # kernel that reads `out` after the copy. Together with the pool, which hands the next
        # batch a different buffer while this one is alive, batches are double-buffered.
        _S.uploads = [(e, h) for e, h in _S.uploads
                      if e.command_execution_status != cl.command_execution_status.COMPLETE]
        event = cl.enqueue_copy(_S.queue, out.data, a, is_blocking=False)
        _S.uploads.append((event, a))
    return out


def empty_cache():
    """Give every pooled buffer that no array holds back to the driver."""
    if _S.pool is not None:
        _S.queue.finish()
        _S.pool.free_held()


def pool_stats():
    """Counters of the buffer pool (tests check that a warm step allocates nothing new)."""
    if _S.pool is None:
        return {"held_blocks": 0, "active_blocks": 0, "managed_bytes": 0, "active_bytes": 0}
    return {"held_blocks": _S.pool.held_blocks, "active_blocks": _S.pool.active_blocks,
            "managed_bytes": _S.pool.managed_bytes, "active_bytes": _S.pool.active_bytes}


# -- launching ------------------------------------------------------------------------------


def _round_up(n, m):
    return ((n + m - 1) // m) * m


def _arg(a):
    if cl_array is not None and isinstance(a, cl_array.Array):
        return a.base_data if a.offset == 0 else a.data
    if isinstance(a, bool):
        return np.int32(a)
    if isinstance(a, int):
        return np.int32(a)
    if isinstance(a, float):
        return np.float32(a)
    return a


def launch(kern, global_size, local_size, *args):
    """Enqueue ``kern`` over ``global_size`` rounded up to a multiple of ``local_size``.

    Python ints become int32 and floats float32; device arrays pass their buffer. Kernels
    guard ids past the true size. A zero-sized launch is skipped.
    """
    global_size = tuple(int(g) for g in global_size)
    if any(g <= 0 for g in global_size):
        return None
    if local_size is not None:
        local_size = tuple(int(v) for v in local_size)
        global_size = tuple(_round_up(g, v) for g, v in zip(global_size, local_size))
    return kern(queue(), global_size, local_size, *(_arg(a) for a in args))
