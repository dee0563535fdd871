"""No import cycles inside pynn (issue 10).

Every ``import pynn...`` and ``from pynn... import ...`` of every module is read with ``ast``, at
the top level and inside functions alike (a deferred import hides a cycle, it does not remove
it). ``from pkg import name`` depends on ``pkg.name`` when that is a module, else on ``pkg``
itself. A package's ``__init__`` importing its own submodules is how packages work; a
submodule importing its own package's ``__init__`` back is a cycle like any other.

Run as a script to print the graph's cycles: ``python tests/test_imports.py``.
"""

import ast
import pathlib
import sys

import numpy as np

import pynn

# Cycles tolerated for now, each one strongly connected set of module names: none.
KNOWN_CYCLES = []


def modules(root, package):
    """{module name: path} for every .py file of the package at ``root``."""
    found = {}
    for path in sorted(pathlib.Path(root).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join([package] + parts)] = path
    return found


def _is_package(name, known):
    return any(other.startswith(name + ".") for other in known)


def imports(name, path, known, package):
    """The package's modules that module ``name`` imports, anywhere in its body."""
    tree = ast.parse(path.read_text(), filename=str(path))
    own_package = name if _is_package(name, known) or path.name == "__init__.py" \
        else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = own_package.split(".")
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            candidates = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in known
                          else source for alias in node.names]
        else:
            continue
        # Names outside the walked files (pynn.opencl_kernels, data only) are no module.
        targets.update(t for t in candidates if t in known and t != name)
    return targets


def graph(root, package):
    known = modules(root, package)
    return {name: imports(name, path, known, package) for name, path in known.items()}


def cycles(edges):
    """Strongly connected sets of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = 0
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    members = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        members.add(member)
                        if member == node:
                            break
                    if len(members) > 1:
                        found.append(members)
    return found


def _pynn_root():
    return pathlib.Path(pynn.__file__).parent


def test_pynn_has_no_import_cycles():
    edges = graph(_pynn_root(), "pynn")
    assert "pynn.saving" in edges and "pynn.models" in edges  # the walk found the package
    assert "pynn.saving" in edges["pynn.models"]
    unexpected = [c for c in cycles(edges) if c not in KNOWN_CYCLES]
    assert not unexpected, "import cycles: " + "; ".join(
        " <-> ".join(sorted(c)) for c in unexpected)


def test_checker_finds_top_level_and_deferred_cycles(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg import a\n")
    (pkg / "a.py").write_text("import pkg.b\n")
    (pkg / "b.py").write_text("def f():\n    from pkg import a\n")   # deferred: still a cycle
    (pkg / "c.py").write_text("from . import d\n")
    (pkg / "d.py").write_text("def g():\n    from .c import x\n")     # relative, deferred
    (pkg / "sub" / "__init__.py").write_text("from .e import y\n")
    (pkg / "sub" / "e.py").write_text("from pkg.sub import z\n")      # back into its package
    (pkg / "f.py").write_text("import os\nfrom pkg.sub.e import y\n")  # no cycle
    found = sorted(sorted(c) for c in cycles(graph(pkg, "pkg")))
    assert found == [["pkg.a", "pkg.b"], ["pkg.c", "pkg.d"], ["pkg.sub", "pkg.sub.e"]]


if __name__ == "__main__":
    for cycle in cycles(graph(_pynn_root(), "pynn")):
        print(" <-> ".join(sorted(cycle)))
    sys.exit(0)


def test_every_package_ships():
    """pyproject lists packages by name: a new subpackage left out of the list would be
    missing from the wheel while an editable install still finds it."""
    import tomllib

    root = pathlib.Path(pynn.__file__).resolve().parent
    listed = set(tomllib.loads((root.parent / "pyproject.toml").read_text())
                 ["tool"]["setuptools"]["packages"])
    found = {".".join(("pynn",) + p.parent.relative_to(root).parts)
             for p in root.rglob("__init__.py")}
    assert found <= listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"


def test_import_pulls_in_no_optional_or_heavy_package():
    """`import pynn` stays light for applications that embed a model (issue 16): the OpenCL
    runtime, SciPy, the file-format and plotting extras and the reference frameworks load only
    when something uses them. Run in a fresh interpreter, since this one has imported them."""
    import subprocess

    heavy = ["pyopencl", "scipy", "keras", "torch", "h5py", "onnx", "onnxruntime", "PIL",
             "matplotlib", "mpi4py", "sklearn"]
    code = ("import sys, pynn; print(' '.join(m for m in %r if m in sys.modules))" % heavy)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == []


def test_training_and_predicting_import_no_scipy():
    """The kernels reach their BLAS without SciPy's Python modules (native/_blas.h):
    building, training and predicting a Dense + Conv2D model imports no scipy (whose
    scipy.linalg cost 190 ms and 27 MiB), and the BLAS it calls is SciPy's OpenBLAS, loaded
    after pynn set its thread timeout."""
    import subprocess

    code = ("import sys, numpy as np, pynn\n"
            "from pynn import layers\n"
            "m = pynn.Sequential([layers.Input((6, 6, 3)), layers.Conv2D(4, 3),\n"
            "                     layers.Flatten(), layers.Dense(2)])\n"
            "m.compile('adam', 'mse')\n"
            "x = np.random.default_rng(0).standard_normal((8, 6, 6, 3)).astype('float32')\n"
            "m.fit(x, np.ones((8, 2), 'float32'), verbose=0)\n"
            "m.predict(x, verbose=0)\n"
            "from threadpoolctl import threadpool_info\n"
            "blas = [i['filepath'] for i in threadpool_info() if i['user_api'] == 'blas']\n"
            "print('scipy' in sys.modules, any('scipy.libs' in p for p in blas))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"], out.stdout


def test_kernels_on_the_loaded_blas_give_the_same_numbers(tmp_path):
    """PYNN_BLAS=loaded: the kernels call the BLAS NumPy loaded (its wheel's ILP64 OpenBLAS,
    64-bit integer arguments) instead of SciPy's; a Dense + Conv2D model trains and predicts
    to the same numbers within float32 rounding."""
    import os
    import subprocess

    code = ("import sys, numpy as np, pynn\n"
            "from pynn import layers\n"
            "pynn.utils.set_random_seed(3)\n"
            "m = pynn.Sequential([layers.Input((7, 7, 3)), layers.Conv2D(4, 3),\n"
            "                     layers.Flatten(), layers.Dense(300), layers.Dense(2)])\n"
            "m.compile('sgd', 'mse')\n"
            "x = np.random.default_rng(0).standard_normal((9, 7, 7, 3)).astype('float32')\n"
            "m.fit(x, np.ones((9, 2), 'float32'), verbose=0, shuffle=False)\n"
            "from threadpoolctl import threadpool_info\n"
            "libs = ' '.join(i['filepath'] for i in threadpool_info())\n"
            "np.save(sys.argv[1], m.predict(x, verbose=0))\n"
            "from pynn._native import dense\n"
            "print('scipy.libs' in libs, dense._blas_library()[1])")
    outs = {}
    for mode in ("default", "loaded"):
        env = dict(os.environ, PYNN_BLAS=mode)
        path = tmp_path / f"{mode}.npy"
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                             text=True, timeout=120, env=env)
        assert out.returncode == 0, out.stderr
        outs[mode] = (out.stdout.split(), np.load(path))
    assert outs["default"][0] == ["True", "LP64"]    # SciPy's OpenBLAS file, loaded by pynn
    assert outs["loaded"][0] == ["False", "ILP64"]   # NumPy's alone
    np.testing.assert_allclose(outs["loaded"][1], outs["default"][1], rtol=1e-5, atol=1e-6)


# -- what `import pynn` loads (issue 16's footprint) ------------------------------------------
# Loaded on first use only: pynn's rarely used subpackages, the CPU and OpenCL kernel tables (and
# with them every Cython extension but pynn._native.info), and the standard-library and NumPy
# modules pynn itself would otherwise pull in at import.
LAZY_PYNN_MODULES = ["pynn.onnx", "pynn.interop", "pynn.interop.keras_files",
                     "pynn.compression", "pynn.distributed", "pynn.examples", "pynn.bench",
                     "pynn.demo", "pynn.preprocessing.image", "pynn.backend.cpu",
                     "pynn.backend.opencl"]
LAZY_OTHER_MODULES = ["numpy.random", "concurrent.futures", "socket", "secrets", "csv"]


def _fresh_python(code):
    import os
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=str(_pynn_root().parent), env=os.environ.copy(),
                         check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_every_public_name_resolves():
    missing = [name for name in pynn.__all__ if getattr(pynn, name, None) is None]
    assert not missing, f"pynn.__all__ names that do not resolve: {missing}"
    listed = dir(pynn)
    assert set(pynn.__all__) <= set(listed)
    for name in pynn._LAZY_SUBMODULES:
        assert name in listed
        assert getattr(pynn, name) is sys.modules[f"pynn.{name}"]
    assert callable(pynn.onnx.export) and callable(pynn.compression.prune_low_magnitude)
    assert callable(pynn.preprocessing.image.ImageDataGenerator)
    with __import__("pytest").raises(AttributeError, match="no attribute 'not_a_module'"):
        pynn.not_a_module  # noqa: B018


def test_import_leaves_rarely_used_modules_unloaded():
    """Run in a fresh interpreter: this one has imported everything. NumPy is imported first so
    that only what pynn itself adds counts."""
    code = ("import sys, numpy\nbefore = set(sys.modules)\nimport pynn\n"
            "print(' '.join(sorted(set(sys.modules) - before)))")
    added = set(_fresh_python(code).split())
    assert "pynn.models" in added  # the probe saw pynn load
    early = sorted(added & set(LAZY_PYNN_MODULES + LAZY_OTHER_MODULES))
    assert not early, f"`import pynn` loaded {early}"
    natives = sorted(m for m in added if m.startswith("pynn._native.") and m != "pynn._native.info")
    assert not natives, f"`import pynn` loaded Cython kernels {natives}"


def test_deferred_submodules_load_on_first_use():
    code = ("import sys, pynn\n"
            "print(pynn.onnx.__name__, 'pynn.onnx' in sys.modules, 'pynn.distributed' in sys.modules)\n"
            "import pynn.compression\nprint(pynn.compression.Distiller.__name__)\n"
            "print(pynn.interop.keras_files.KerasFileError.__name__)\n"
            "names = set(pynn.__all__)\nfrom pynn import *\n"
            "print(sorted(names - set(globals())) or 'all-star-imported')")
    assert _fresh_python(code).split() == ["pynn.onnx", "True", "False", "Distiller",
                                           "KerasFileError", "all-star-imported"]


def test_keras_files_load_on_first_keras_file(tmp_path):
    """pynn.interop.keras_files is not imported by `import pynn`: saving's Keras entries stand in
    for it and load it on the first .keras file, which then saves and loads as before."""
    __import__("pytest").importorskip("h5py")
    path = tmp_path / "m.keras"
    code = ("import sys, numpy as np, pynn\n"
            "assert 'pynn.interop.keras_files' not in sys.modules\n"
            "m = pynn.Sequential([pynn.layers.Input((5,)), pynn.layers.Dense(3)])\n"
            f"m.save({str(path)!r})\n"
            "assert 'pynn.interop.keras_files' in sys.modules\n"
            f"back = pynn.load_model({str(path)!r})\n"
            "x = np.arange(10, dtype='float32').reshape(2, 5) / 7\n"
            "print(float(abs(m.predict(x, verbose=0) - back.predict(x, verbose=0)).max()))")
    assert float(_fresh_python(code)) == 0.0
