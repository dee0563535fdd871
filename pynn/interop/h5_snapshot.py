"""HDF5 files read in a child process: a hostile or damaged file cannot hang or crash the
caller.

libhdf5 parses a file's structures in C. A damaged file makes it raise, but a crafted one
can also make it loop for ever (an attribute whose heap links back into itself, found by
pynn's fuzz of Keras files) or read out of bounds, inside the calling process, where no
Python code can stop it. So pynn's Keras readers (pynn.interop.keras_files) do not open HDF5
files themselves: a child Python process opens the file with h5py, under a memory cap and a
time limit, walks every group, link, attribute and dataset (reading each dataset's data only
within the same inflation limits the readers apply, and all of them within a total budget),
and writes that snapshot back as JSON and a NumPy ``.npz`` (no pickle). The parent then
reads the snapshot through the small part of h5py's interface the readers use (``File``,
``Group``, ``Dataset``, ``ExternalLink``, ``get(..., getlink=True)``, ``attrs``,
``read_direct``, ``id.get_storage_size()``), and every check the readers make runs on it.

A child that crashes, runs out of its memory or time, or fails, gives an error naming the
file; it costs one interpreter start (about 0.15 s) per file read. ``PYNN_H5_SANDBOX=0``
reads in this process instead, for files you trust.
"""

import base64
import io
import json
import os
import signal
import subprocess
import sys

import numpy as np

# The child's limits: seconds (plus one per this many bytes of file), and address space
# beyond what it holds after importing h5py.
TIME_LIMIT_S = 60.0
BYTES_PER_EXTRA_SECOND = 20 << 20
MEMORY_MARGIN = 512 << 20
MAX_OBJECTS = 200_000
MAX_ATTRIBUTE_BYTES = 64 << 20


def enabled():
    """Whether HDF5 is read in a child: unless PYNN_H5_SANDBOX=0, or the process has no
    Python interpreter to start (a frozen application, an embedding host whose
    sys.executable is not Python)."""
    if os.environ.get("PYNN_H5_SANDBOX", "1").strip() in ("0", "false", "no", "off"):
        return False
    exe = sys.executable or ""
    return (not getattr(sys, "frozen", False) and os.path.isfile(exe)
            and os.path.basename(exe).lower().startswith(("python", "pypy")))


_CHILD = r'''
import base64, io, json, os, sys
sys.path[:] = json.loads(sys.argv[2])
args = json.loads(sys.argv[1])
import numpy as np
import h5py


def vm_bytes():
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:   # no /proc: no cap (the time limit still holds)
        return None


vm = vm_bytes()
if vm is not None:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (vm + args["memory"], resource.RLIM_INFINITY))
arrays, objects = {}, []
state = {"read": 0, "attr_bytes": 0}


class Refused(Exception):
    pass


def value(v):
    """An attribute value as JSON (text, bytes, numbers) or a reference to an array."""
    if isinstance(v, str):
        state["attr_bytes"] += len(v)
        return {"str": v}
    if isinstance(v, bytes):
        state["attr_bytes"] += len(v)
        return {"bytes": base64.b64encode(v).decode()}
    a = np.asarray(v)
    state["attr_bytes"] += a.nbytes
    if state["attr_bytes"] > args["max_attribute_bytes"]:
        raise Refused(f"attributes over {args['max_attribute_bytes']} bytes")
    if a.dtype.kind == "O":
        return {"list": [value(x) for x in a.ravel().tolist()], "shape": list(a.shape)}
    if a.dtype.kind not in "biufcSU" or a.dtype.names is not None:
        return {"unsupported": str(a.dtype)}
    key = f"a{len(arrays)}"
    arrays[key] = a
    return {"array": key}


def attributes(obj):
    out = {}
    for name in obj.attrs:
        out[name] = value(obj.attrs[name])
    return out


def walk(group, path):
    entries = {}
    for name in group:
        if len(objects) >= args["max_objects"]:
            raise Refused(f"more than {args['max_objects']} objects")
        link = group.get(name, getlink=True)
        full = f"{path}/{name}" if path else name
        if isinstance(link, h5py.ExternalLink):
            entries[name] = {"link": "external"}
            continue
        if isinstance(link, h5py.SoftLink):
            entries[name] = {"link": "soft", "path": link.path}
            continue
        obj = group[name]
        index = len(objects)
        objects.append(None)
        if isinstance(obj, h5py.Group):
            objects[index] = {"kind": "group", "attrs": attributes(obj),
                              "entries": walk(obj, full)}
        elif isinstance(obj, h5py.Dataset):
            objects[index] = dataset(obj)
        else:
            objects[index] = {"kind": "other"}
        entries[name] = {"object": index}
    return entries


def dataset(ds):
    dtype = ds.dtype
    out = {"kind": "dataset", "attrs": attributes(ds), "shape": list(ds.shape or ()),
           "dtype": dtype.str if dtype.names is None and dtype.kind != "O" else repr(dtype),
           "plain": dtype.names is None and dtype.kind in "biuf" and dtype.itemsize <= 8,
           "external": bool(ds.external), "virtual": bool(ds.is_virtual),
           "storage": int(ds.id.get_storage_size())}
    nbytes = int(np.prod(out["shape"], dtype=np.float64)) * dtype.itemsize
    if (out["plain"] and not out["external"] and not out["virtual"]
            and nbytes <= max(args["ratio"] * out["storage"], args["free"])
            and state["read"] + nbytes <= args["budget"]):
        data = np.empty(tuple(out["shape"]), dtype)
        if data.size:
            ds.read_direct(data)
        state["read"] += nbytes
        key = f"a{len(arrays)}"
        arrays[key] = data
        out["data"] = key
    return out


try:
    source = args["path"] if args["path"] is not None else io.BytesIO(sys.stdin.buffer.read())
    with h5py.File(source, "r") as f:
        objects.append(None)
        objects[0] = {"kind": "group", "attrs": attributes(f), "entries": walk(f, "")}
    manifest = {"objects": objects}
except Refused as exc:
    manifest = {"refused": str(exc)}
except Exception as exc:  # noqa: BLE001  (the file's damage, as h5py reports it)
    manifest = {"error": f"{type(exc).__name__}: {exc}"}
arrays["manifest"] = np.frombuffer(json.dumps(manifest).encode(), np.uint8)
buf = io.BytesIO()
np.savez(buf, **arrays)
sys.stdout.buffer.write(buf.getvalue())
sys.stdout.buffer.flush()
'''


class SnapshotError(Exception):
    """The child could not give a snapshot (the message says why)."""


def read(source, ratio, free_bytes, size):
    """The snapshot (a File) of ``source`` (a path, or the bytes of a file); ``ratio`` and
    ``free_bytes`` bound each dataset's inflation as the readers do, ``size`` is the file's
    size in bytes (the data read in all may be ``ratio`` times that)."""
    budget = int(min(ratio * size + free_bytes, 1 << 40))
    args = {"path": source if isinstance(source, str) else None, "ratio": float(ratio),
            "free": int(free_bytes), "budget": budget, "max_objects": MAX_OBJECTS,
            "max_attribute_bytes": MAX_ATTRIBUTE_BYTES,
            "memory": int(MEMORY_MARGIN + 3 * budget + 2 * size)}
    timeout = TIME_LIMIT_S + size / BYTES_PER_EXTRA_SECOND
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               HDF5_USE_FILE_LOCKING="FALSE")
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _CHILD, json.dumps(args), json.dumps(sys.path)],
            input=None if isinstance(source, str) else bytes(source),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise SnapshotError(f"the HDF5 library did not finish reading it within {timeout:.0f} "
                            f"s (a damaged or hostile file?)") from None
    if proc.returncode != 0:
        why = (f"signal {signal.Signals(-proc.returncode).name}" if proc.returncode < 0
               else f"exit status {proc.returncode}")
        last = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise SnapshotError(f"the HDF5 reader stopped ({why}) on it: {last[0][:300]}")
    try:
        with np.load(io.BytesIO(proc.stdout), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        manifest = json.loads(arrays.pop("manifest").tobytes())
    except Exception as exc:  # noqa: BLE001  (a child that wrote something else)
        raise SnapshotError(f"the HDF5 reader's answer is unreadable ({exc})") from None
    if "refused" in manifest:
        raise SnapshotError(f"refused: {manifest['refused']}")
    if "error" in manifest:
        raise SnapshotError(f"damaged HDF5 data ({manifest['error']})")
    return File(manifest["objects"], arrays)


# -- h5py's interface, as the readers use it, over a snapshot ------------------------------
class ExternalLink:
    pass


class SoftLink:
    def __init__(self, path):
        self.path = path


class HardLink:
    pass


def _attribute(spec, arrays):
    if "str" in spec:
        return spec["str"]
    if "bytes" in spec:
        return base64.b64decode(spec["bytes"])
    if "array" in spec:
        a = arrays[spec["array"]]
        return a[()] if a.ndim == 0 else a
    if "list" in spec:
        items = [_attribute(x, arrays) for x in spec["list"]]
        out = np.empty(len(items), object)
        out[:] = items
        return out.reshape(spec["shape"])
    return None


class _Attrs(dict):
    pass


class _Id:
    def __init__(self, storage):
        self._storage = storage

    def get_storage_size(self):
        return self._storage


class _Node:
    def __init__(self, snapshot, index):
        self._snapshot = snapshot
        spec = snapshot.objects[index]
        self.attrs = _Attrs((k, _attribute(v, snapshot.arrays))
                            for k, v in spec.get("attrs", {}).items())


class Dataset(_Node):
    def __init__(self, snapshot, index):
        super().__init__(snapshot, index)
        spec = snapshot.objects[index]
        self.shape = tuple(spec["shape"])
        try:
            self.dtype = np.dtype(spec["dtype"])
        except TypeError:
            self.dtype = np.dtype("V1")   # compound or variable-length: no float array
        self.external = [("external", 0, 0)] if spec["external"] else None
        self.is_virtual = spec["virtual"]
        self.id = _Id(spec["storage"])
        self._data = snapshot.arrays.get(spec.get("data"))

    @property
    def size(self):
        return int(np.prod(self.shape, dtype=np.int64))

    def read_direct(self, out):
        if self._data is None:
            raise OSError("its data was not read (over the reading budget or of another type)")
        np.copyto(out, self._data.reshape(out.shape), casting="no")

    def __array__(self, dtype=None, copy=None):
        if self._data is None:
            raise OSError("its data was not read (over the reading budget or of another type)")
        return self._data if dtype is None else self._data.astype(dtype)

    def __getitem__(self, key):
        return np.asarray(self)[key]


class Group(_Node):
    def __init__(self, snapshot, index):
        super().__init__(snapshot, index)
        self._own = index
        self._entries = snapshot.objects[index]["entries"]

    def _entry(self, path):
        group, parts = self, [p for p in str(path).split("/") if p]
        if not parts:
            return {"object": self._index()}, self
        for i, part in enumerate(parts):
            if not isinstance(group, Group):
                return None, None
            entry = group._entries.get(part)
            if entry is None:
                return None, None
            if i == len(parts) - 1:
                return entry, group
            if "object" not in entry:
                return None, None   # a soft or external link is never followed
            group = self._snapshot.node(entry["object"])
        return None, None

    def _index(self):
        return self._own

    def get(self, path, default=None, getlink=False):
        entry, _ = self._entry(path)
        if entry is None:
            return default
        if getlink:
            if entry.get("link") == "external":
                return ExternalLink()
            if entry.get("link") == "soft":
                return SoftLink(entry["path"])
            return HardLink()
        if "object" not in entry:
            return default
        return self._snapshot.node(entry["object"])

    def __getitem__(self, path):
        node = self.get(path)
        if node is None:
            raise KeyError(f"no object '{path}' (soft and external links are not followed)")
        return node

    def __contains__(self, path):
        return self.get(path, getlink=True) is not None

    def __len__(self):
        return len(self._entries)

    def __iter__(self):
        return iter(self._entries)

    def keys(self):
        return self._entries.keys()


class File(Group):
    def __init__(self, objects, arrays):
        self.objects, self.arrays = objects, arrays
        self._nodes = {}
        super().__init__(self, 0)

    def node(self, index):
        if not isinstance(index, int) or not 0 <= index < len(self.objects):
            raise KeyError(f"object {index!r}")
        node = self._nodes.get(index)
        if node is None:
            kind = self.objects[index]["kind"]
            node = (self if index == 0 else Group(self, index) if kind == "group"
                    else Dataset(self, index) if kind == "dataset" else _Node(self, index))
            self._nodes[index] = node
        return node

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
