"""Fuzz of model files (issue 11, "Keep it that way"): mutated valid files never let anything
but a ValueError that names the file out of ``load_model`` / ``load_weights``, and never make
them allocate more than a bounded amount of memory.

Valid files of a few architectures are mutated at random (bytes flipped, cut, inserted; members
dropped, duplicated, swapped, renamed, replaced; JSON values replaced by hostile ones; .npy
headers rewritten; sizes in the zip directory patched). The fuzz runs in a child process whose
address space is capped (RLIMIT_AS) a fixed budget above what it holds after the setup, so an
allocation the file is not backed by fails there instead of exhausting the machine, and any
MemoryError that escapes is a failure. Seeded and bounded in time: PYNN_FUZZ_SECONDS (default
8) and PYNN_FUZZ_SEED (default 0) change the run; a failure prints the case to replay.
"""

import json
import os
import subprocess
import sys

import pytest

import pynn

FUZZ = r'''
import io, json, os, random, resource, struct, sys, time, warnings, zipfile
import numpy as np
import pynn
from pynn import layers

seed, seconds, workdir = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
warnings.simplefilter("ignore")  # zipfile warns about the duplicated members it is asked for
BUDGET = 512 << 20  # address space the fuzz may use beyond the setup's
pynn.utils.set_random_seed(seed)


def architectures():
    yield [layers.Input((6, 6, 2)), layers.Conv2D(3, 3, padding="same", activation="relu"),
           layers.MaxPooling2D(2), layers.Flatten(), layers.Dropout(0.3),
           layers.Dense(4, activation="softmax")], (6, 6, 2), "adam"
    yield [layers.Input((5, 3)), layers.LSTM(4, return_sequences=True), layers.GRU(3),
           layers.Dense(4, activation="softmax")], (5, 3), "rmsprop"
    yield [layers.Input((7,)), layers.Dense(8, activation="tanh"), layers.Reshape((2, 4)),
           layers.SimpleRNN(3), layers.Dense(4, activation="softmax")], (7,), \
        pynn.optimizers.SGD(0.1, momentum=0.9)
    yield [layers.Input((4, 4, 1)), layers.Conv2D(2, 2, dilation_rate=2, padding="same"),
           layers.AveragePooling2D(2), layers.GlobalMaxPooling2D(),
           layers.Dense(4, activation="softmax")], (4, 4, 1), "adagrad"


seeds = []
for i, (stack, shape, optimizer) in enumerate(architectures()):
    model = pynn.Sequential(stack)
    model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
    x = np.random.default_rng(i).standard_normal((8,) + shape).astype(np.float32)
    model.fit(x, np.arange(8) % 4, batch_size=4, epochs=1, verbose=0)
    path = os.path.join(workdir, f"seed{i}.pynn")
    model.save(path)
    with open(path, "rb") as fh:
        seeds.append((path, fh.read()))

HOSTILE = [None, True, False, 0, -1, 1, 2, 3, 2**31, 2**63, 2**64, -2**63, 10**30, 0.5, -0.0,
           1e308, float("nan"), float("inf"), "", "x", "float16", "object", "Sequential",
           "Dense", "LSTM", "same", "softmax", [], {}, [None], [0], [2**64, 1], [10**9, 10**9],
           {"class_name": "Dense"}, {"class_name": "os.system", "config": {}}, "a" * 5000]


def members(data):
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(info.filename, zf.read(info.filename)) for info in zf.infolist()]


def zipped(entries, compression=zipfile.ZIP_STORED):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, payload in entries:
            zf.writestr(name, payload)
    return buf.getvalue()


def paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths(v, prefix + (i,))


def mutate_json(rng, doc):
    target = rng.choice(list(paths(doc))[1:])
    parent = doc
    for key in target[:-1]:
        parent = parent[key]
    kind = rng.random()
    if kind < 0.1 and isinstance(parent, dict):
        del parent[target[-1]]
        return f"json del {target}"
    if kind < 0.15:
        depth = rng.choice([50, 100, 5000, 200000])
        parent[target[-1]] = json.loads("[" * min(depth, 900) + "]" * min(depth, 900)) \
            if depth < 1000 else "DEEP"
        return f"json deep {target} {depth}"
    value = rng.choice(HOSTILE)
    parent[target[-1]] = value
    return f"json {target} = {str(value)[:40]}"


def npy_header(rng):
    shape = rng.choice([(10**12,), (2**62, 2), (0,), (3, 3, 2, 3), (1,), (4,), (-1,), (3, 4),
                        ()])
    descr = rng.choice(["<f4", "<f8", ">f4", "|O", "<c8", "|V8", "<U4", "|b1", "<i8", "<f2"])
    header = {"descr": descr, "fortran_order": rng.random() < 0.2, "shape": shape}
    buf = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buf, header)
    except ValueError:
        buf = io.BytesIO(b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4'}")
    return buf.getvalue() + bytes(rng.choice([0, 8, 64, 400])), f"npy {header}"


def patch_sizes(rng, data):
    data = bytearray(data)
    offsets = [i for i in range(len(data) - 28) if data[i:i + 4] == b"PK\x01\x02"]
    if not offsets:
        return bytes(data), "no directory"
    at = rng.choice(offsets)
    field = rng.choice([20, 24])  # compressed / uncompressed size
    value = rng.choice([0, 1, 0xFFFFFFFF, 0x7FFFFFFF, rng.randrange(1 << 32)])
    struct.pack_into("<I", data, at + field, value)
    return bytes(data), f"directory size @{at}+{field} = {value}"


def mutate(rng, data, bytes_only=False):
    kind = rng.randrange(4 if bytes_only else 9)
    if kind == 0:
        data = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data), "flip bytes"
    if kind == 1:
        cut = rng.randrange(len(data))
        return data[:cut], f"truncate at {cut}"
    if kind == 2:
        at = rng.randrange(len(data))
        return data[:at] + os.urandom(rng.randint(1, 64)) + data[at:], f"insert at {at}"
    if kind == 3:
        return patch_sizes(rng, data)
    entries = members(data)
    names = [n for n, _ in entries]
    if kind == 4:
        a, b = rng.sample(range(len(entries)), 2)
        entries[a], entries[b] = (entries[a][0], entries[b][1]), (entries[b][0], entries[a][1])
        return zipped(entries), f"swap {names[a]} {names[b]}"
    if kind == 5:
        i = rng.randrange(len(entries))
        choice = rng.randrange(4)
        if choice == 0:
            del entries[i]
        elif choice == 1:
            entries.append(entries[i])
        elif choice == 2:
            entries[i] = (entries[i][0] + "x", entries[i][1])
        else:
            entries[i] = (entries[i][0], entries[i][1][:rng.randrange(len(entries[i][1]) + 1)])
        return zipped(entries), f"member op {choice} on {names[i]}"
    if kind == 6:
        i = rng.randrange(1, len(entries))
        payload, what = npy_header(rng)
        entries[i] = (entries[i][0], payload)
        return zipped(entries), f"{what} into {names[i]}"
    if kind == 7:
        # Deflate everything, with one array member made of zeros of a declared huge shape.
        i = rng.randrange(1, len(entries))
        n = rng.choice([1 << 18, 1 << 22, 1 << 24])
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": "<f4", "fortran_order": False, "shape": (n,)})
        entries[i] = (entries[i][0], header.getvalue() + bytes(4 * n))
        return zipped(entries, zipfile.ZIP_DEFLATED), f"deflated zeros {n} in {names[i]}"
    doc = json.loads(entries[0][1])
    what = "; ".join(mutate_json(rng, doc) for _ in range(rng.randint(1, 3)))
    text = json.dumps(doc)
    if "DEEP" in text:
        text = text.replace('"DEEP"', "[" * 200000 + "]" * 200000, 1)
    entries[0] = ("pynn.json", text.encode())
    return zipped(entries), what


def vm_bytes():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return None


vm = vm_bytes()
if vm is not None:
    resource.setrlimit(resource.RLIMIT_AS, (vm + BUDGET, resource.RLIM_INFINITY))
rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rng = random.Random(seed)
target = os.path.join(workdir, "case.pynn")
deadline = time.monotonic() + seconds
cases = outcomes = 0
counts = {}
# at least 24 cases however loaded the machine is; then as many as the time allows
while cases < 24 or time.monotonic() < deadline:
    source, data = seeds[cases % len(seeds)]
    mutated, what = mutate(rng, data)
    if rng.random() < 0.3:
        mutated, more = mutate(rng, mutated, bytes_only=True) if mutated else (mutated, "")
        what += " + " + more
    with open(target, "wb") as fh:
        fh.write(mutated)
    for verb in ("load_model", "load_weights"):
        try:
            if verb == "load_model":
                pynn.load_model(target, compile=rng.random() < 0.8)
            else:
                pynn.load_model(source, compile=False).load_weights(target)
            outcome = "loaded"
        except ValueError as exc:
            outcome = "ValueError"
            if not str(exc).startswith(f"{verb}: {target}"):
                outcome = f"ValueError without the file: {str(exc)[:300]}"
        except Exception as exc:
            outcome = f"{type(exc).__name__}: {str(exc)[:300]}"
        counts[outcome if outcome in ("loaded", "ValueError") else "bad"] = \
            counts.get(outcome if outcome in ("loaded", "ValueError") else "bad", 0) + 1
        if outcome not in ("loaded", "ValueError"):
            print(json.dumps({"case": cases, "verb": verb, "mutation": what,
                              "outcome": outcome}), flush=True)
    cases += 1
rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_start
print(json.dumps({"cases": cases, "counts": counts, "rss_growth_kib": rss_growth,
                  "capped": vm is not None}), flush=True)
'''


def run_fuzz(tmp_path, seed, seconds):
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(pynn.__file__))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.update(PYNN_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", FUZZ, str(seed), str(seconds), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=seconds + 120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return lines[:-1], lines[-1]


def test_mutated_model_files_raise_only_value_errors(tmp_path):
    seed = int(os.environ.get("PYNN_FUZZ_SEED", "0"))
    seconds = float(os.environ.get("PYNN_FUZZ_SECONDS", "8"))
    failures, summary = run_fuzz(tmp_path, seed, seconds)
    assert summary["cases"] >= 20, summary
    assert summary["counts"].get("ValueError", 0) > summary["cases"] // 2, summary
    assert not failures, (f"PYNN_FUZZ_SEED={seed}: {len(failures)} bad outcomes in "
                          f"{summary['cases']} cases, e.g. " +
                          "\n".join(json.dumps(f) for f in failures[:10]))
    # Everything the files ask for stays within a budget independent of what they declare.
    assert summary["rss_growth_kib"] < 256 * 1024, summary


FUZZ_KERAS = r'''
import copy, io, json, os, random, resource, sys, time, warnings, zipfile
import numpy as np
warnings.simplefilter("ignore")
import h5py
import pynn
from pynn import layers as L
from pynn.interop import h5_snapshot
h5_snapshot.TIME_LIMIT_S = 10  # a file libhdf5 loops on: stopped, and named

seed, seconds, workdir = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
BUDGET = 768 << 20
pynn.utils.set_random_seed(seed)

def architectures():
    yield [L.Input((6, 6, 2)), L.Conv2D(3, 3, padding="same", activation="relu"),
           L.BatchNormalization(), L.MaxPooling2D(2), L.Flatten(), L.Dense(4, activation="softmax")]
    yield [L.Input((5, 3)), L.LSTM(4, return_sequences=True), L.GRU(3), L.Dense(4)]
    yield [L.Input((7,), dtype="int32"), L.Embedding(9, 3, mask_zero=True),
           L.Bidirectional(L.LSTM(2)), L.Dense(2)]

seeds = []
for k, stack in enumerate(architectures()):
    m = pynn.Sequential(stack)
    m.compile(optimizer="adam", loss="mse")
    for suffix in (".keras", ".h5", ".weights.h5"):
        p = os.path.join(workdir, f"seed{k}{suffix}")
        if suffix == ".weights.h5":
            m.save_weights(p)
        else:
            m.save(p)
        seeds.append((m, p, suffix, open(p, "rb").read()))

HOSTILE = [None, True, -1, 0, 2**63, 1e308, float("nan"), "x", "Lambda", "Dense", "LSTM",
           [], {}, [None], [0], [2**40, 2**40], [-3, 4],
           {"class_name": "Lambda", "config": {"function": "os.system"}},
           {"class_name": "os.system", "config": {}}, "a" * 5000, "float64", "complex64", "object"]

{paths}

def mutate_json(rng, doc):
    targets = list(paths(doc))[1:]
    if not targets:
        return "empty"
    target = rng.choice(targets)
    parent = doc
    for key in target[:-1]:
        parent = parent[key]
    if rng.random() < 0.15 and isinstance(parent, dict):
        del parent[target[-1]]
        return f"json del {target}"
    value = copy.deepcopy(rng.choice(HOSTILE))
    parent[target[-1]] = value
    return f"json {target} = {str(value)[:40]}"

def flip(rng, data):
    data = bytearray(data)
    kind = rng.randrange(3)
    if kind == 0:
        for _ in range(rng.randint(1, 16)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data), "flip"
    if kind == 1:
        cut = rng.randrange(len(data))
        return bytes(data[:cut]), f"truncate {cut}"
    at = rng.randrange(len(data))
    return bytes(data[:at]) + os.urandom(rng.randint(1, 64)) + bytes(data[at:]), f"insert {at}"

def h5_struct(rng, path):
    """Structural mutations through h5py: attrs JSON, datasets reshaped / retyped / deleted."""
    with h5py.File(path, "r+") as f:
        items = []
        f.visititems(lambda n, o: items.append((n, o)))
        attrs = [(n, a) for n, o in [("/", f)] + items for a in o.attrs]
        choice = rng.randrange(4)
        if choice == 0 and attrs:
            n, a = rng.choice(attrs)
            obj = f[n]
            v = obj.attrs[a]
            try:
                text = v if isinstance(v, str) else v.decode() if isinstance(v, bytes) else "x"
                doc = json.loads(text)
                what = "; ".join(mutate_json(rng, doc) for _ in range(rng.randint(1, 3)))
                obj.attrs[a] = json.dumps(doc)
                return f"attr {n}:{a} {what}"
            except Exception:
                obj.attrs[a] = rng.choice([b"", "garbage", np.arange(3), np.array([b"x", b"\xff"])])
                return f"attr {n}:{a} replaced"
        dsets = [(n, o) for n, o in items if isinstance(o, h5py.Dataset)]
        if not dsets:
            return "none"
        n, d = rng.choice(dsets)
        data = d[()]
        parent, name = os.path.split("/" + n)
        del f["/" + n]
        if choice == 1:
            shape = rng.choice([(0,), (1,), (3, 3), (2**20,),
                                tuple(reversed(np.shape(data))) or (2,), np.shape(data) + (1,)])
            f[parent].create_dataset(name, data=np.ones(shape, np.float32))
            return f"reshape {n} {shape}"
        if choice == 2:
            dtype = rng.choice([np.float64, np.int8, np.complex64, np.bool_, "S3", np.float16])
            f[parent].create_dataset(name, data=np.asarray(np.ones(np.shape(data))).astype(dtype))
            return f"retype {n} {dtype}"
        return f"delete {n}"

def vm_bytes():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024

resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + BUDGET, resource.RLIM_INFINITY))
rng = random.Random(seed)
deadline = time.monotonic() + seconds
cases = 0; counts = {}
# at least 12 cases however loaded the machine is; then as many as the time allows
while cases < 12 or time.monotonic() < deadline:
    model, src, suffix, data = seeds[cases % len(seeds)]
    target = os.path.join(workdir, f"case{suffix}")
    kind = rng.random()
    if suffix == ".keras" and kind < 0.5:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            entries = [(i.filename, zf.read(i.filename)) for i in zf.infolist()]
        i = rng.randrange(len(entries))
        name, payload = entries[i]
        if name.endswith(".json"):
            doc = json.loads(payload)
            what = name + ": " + "; ".join(mutate_json(rng, doc) for _ in range(rng.randint(1, 3)))
            entries[i] = (name, json.dumps(doc).encode())
        else:
            # structural h5 mutation on the weights member
            tmp = os.path.join(workdir, "member.h5")
            open(tmp, "wb").write(payload)
            what = name + ": " + h5_struct(rng, tmp)
            entries[i] = (name, open(tmp, "rb").read())
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for n, p in entries: zf.writestr(n, p)
        mutated = buf.getvalue()
    elif suffix != ".keras" and kind < 0.6:
        open(target, "wb").write(data)
        what = h5_struct(rng, target)
        mutated = open(target, "rb").read()
    else:
        mutated, what = flip(rng, data)
    open(target, "wb").write(mutated)
    verbs = ["load_weights"] if suffix == ".weights.h5" else ["load_model", "load_weights"]
    for verb in verbs:
        try:
            if verb == "load_model":
                pynn.load_model(target, compile=rng.random() < 0.8)
            else:
                model.load_weights(target)
            outcome = "loaded"
        except ValueError as exc:
            outcome = ("ValueError" if str(exc).find(target) >= 0
                       else f"ValueError without the file: {str(exc)[:300]}")
        except Exception as exc:
            outcome = f"{type(exc).__name__}: {str(exc)[:300]}"
        key = outcome if outcome in ("loaded", "ValueError") else "bad"
        counts[key] = counts.get(key, 0) + 1
        if key == "bad":
            print(json.dumps({"case": cases, "suffix": suffix, "verb": verb, "what": what,
                              "outcome": outcome}), flush=True)
    cases += 1
print(json.dumps({"cases": cases, "counts": counts}), flush=True)
'''
# the JSON walk FUZZ defines, shared rather than written twice
FUZZ_KERAS = FUZZ_KERAS.replace("{paths}", FUZZ[FUZZ.index("def paths("):FUZZ.index(
    "def mutate_json(")].rstrip())


def test_mutated_keras_files_raise_only_value_errors(tmp_path):
    """The same for Keras files (.keras, .h5, .weights.h5 of a CNN, a recurrent model and a
    masked text model): bytes flipped, cut or inserted; zip members' JSON given hostile
    values; HDF5 attributes replaced, datasets reshaped, retyped or deleted. Only loads or
    ValueErrors naming the file; libhdf5 reads in a child process
    (pynn.interop.h5_snapshot), so a file it loops or crashes on is an error too."""
    seed = int(os.environ.get("PYNN_FUZZ_SEED", "0"))
    seconds = float(os.environ.get("PYNN_FUZZ_SECONDS", "8"))
    pytest.importorskip("h5py")
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(pynn.__file__))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.update(PYNN_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", FUZZ_KERAS, str(seed), str(seconds),
                           str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=seconds + 180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    failures, summary = lines[:-1], lines[-1]
    assert summary["cases"] >= 10, summary
    assert summary["counts"].get("ValueError", 0) > summary["cases"] // 3, summary
    assert not failures, (f"PYNN_FUZZ_SEED={seed}: {len(failures)} bad outcomes in "
                          f"{summary['cases']} cases, e.g. " +
                          "\n".join(json.dumps(f) for f in failures[:10]))
