"""Tests by op, over both backends: the ``backend`` fixture's object and the one op checker.

A test of op ``<op>`` takes the ``backend`` fixture (tests/conftest.py: params ``cpu`` and
``opencl``, the latter marked ``opencl``), or ``target`` where the CPU also runs float64
(``cpu-float32``, ``cpu-float64``, ``opencl-float32``; ``target.dtype``), and checks the op
against its float64 reference ``<op>_ref`` (tests/reference/) with ``check_op``::

    def test_relu(backend):
        x = rand(rng, (3, 7))
        check_op(backend, "activation_forward", x, "relu", 0.0,
                 ref=lambda x, *_: np.maximum(x, 0))

``check_op`` uploads the host arguments (``backend.up``), runs the op, downloads every
result (``backend.down``) and compares shape, dtype and values with a message naming the op,
at the backend's float32 tolerance for the kind of op (``backend.rtol(kind)``). On OpenCL it
also runs the CPU op on the same host data and compares (``against_cpu``): the OpenCL kernels
follow the CPU's float32 behaviour (ties, NaN, clipping), not just the reference.

This module imports no pyopencl: the OpenCL backend is imported only when an ``opencl``
test asks for it.
"""

import os

import numpy as np

# float32 tolerances, as ``max |got - want| <= rtol * max(1, max |want|)``.
# cpu: the tolerances the CPU kernel tests use against the float64 references;
# opencl: the ones the OpenCL tests used (elementwise 1e-5 relative, reductions and GEMM-shaped
# results 1e-4).
TOLERANCES = {
    "cpu": {"elementwise": 2e-5, "reduction": 1e-4, "gemm": 1e-4},
    "opencl": {"elementwise": 1e-5, "reduction": 1e-4, "gemm": 1e-4},
}


class Backend:
    """One backend under test: ``ops`` is the module (pynn.backend.cpu or .opencl)."""

    def __init__(self, name, ops, dtype=np.float32):
        self.name = name
        self.ops = ops
        self.is_opencl = name == "opencl"
        self.dtype = np.dtype(dtype)  # the float dtype under test (``target``: also float64)

    def __repr__(self):
        return f"Backend({self.name!r}, {self.dtype.name})"

    def up(self, a, dtype=None):
        """Host data to the backend: identity on the CPU (numpy arrays as they are, which
        also takes float64 and any integer labels), ``asarray`` on OpenCL with the dtype its
        ops take: float data as float32, signed integers (labels) as int32, others (the
        uint8 dropout mask) as they are. Anything that is not an array (None, scalars,
        strings, tuples) passes through."""
        if not isinstance(a, np.ndarray):
            return a
        if not self.is_opencl:
            return a if dtype is None else a.astype(dtype)
        if dtype is None:
            dtype = {"f": np.float32, "i": np.int32}.get(a.dtype.kind, a.dtype)
        return self.ops.asarray(a, dtype)

    def down(self, a):
        """A backend array (or anything array-like) to numpy; None stays None."""
        if a is None:
            return None
        if hasattr(a, "get"):
            return a.get()
        return np.asarray(a)

    def rtol(self, kind="elementwise"):
        return TOLERANCES[self.name][kind]

    def op(self, name):
        return getattr(self.ops, name)


def make_backend(name, dtype=np.float32):
    """The Backend for ``name``; on OpenCL the device is selected (PYNN_CL_DEVICE)."""
    if name == "cpu":
        from pynn.backend import cpu

        return Backend("cpu", cpu, dtype)
    from pynn.backend import opencl

    opencl.select_device(os.environ.get("PYNN_CL_DEVICE", "opencl"))
    return Backend("opencl", opencl, dtype)


def rand(rng, shape, dtype=np.float32):
    """Random normal data that is never all zero (a zero input hides indexing bugs)."""
    a = rng.standard_normal(shape)
    if a.size:
        a.flat[0] = 0.5 + abs(a.flat[0])
    return a.astype(dtype)


def assert_close(got, want, rtol, what=""):
    """max |got - want| <= rtol * max(1, max |want|), with a message naming the op."""
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != expected {want.shape}"
    if want.size == 0:
        return
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got.astype(np.float64) - want).max())
    assert err <= rtol * scale, f"{what}: max abs error {err:.3g} > {rtol} * {scale:.3g}"


def assert_same(what, got, want, rtol, dtype=None):
    """Compare an op's downloaded result with the expected one, recursively: None with None,
    tuples item by item, arrays by shape, dtype (``dtype`` for float results when given, else
    the expected array's), NaN positions and values (exactly for integers), Python ints
    exactly (and as ints), floats within ``rtol``: a number (``assert_close``'s rule) or a
    dict ``rtol=, atol=`` (``numpy.testing.assert_allclose``'s, the CPU files' tolerances)."""
    if want is None:
        assert got is None, f"{what}: expected None, got {type(got).__name__}"
        return
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want), f"{what}: got {got!r}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(f"{what}[{i}]", g, w, rtol, dtype)
        return
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray), f"{what}: expected an array, got {type(got)}"
        assert got.shape == want.shape, f"{what}: shape {got.shape} != expected {want.shape}"
        if want.dtype.kind == "f":
            want_dtype = np.dtype(dtype) if dtype is not None else want.dtype
            assert got.dtype == want_dtype, f"{what}: dtype {got.dtype} != {want_dtype}"
            nan = np.isnan(want)
            np.testing.assert_array_equal(np.isnan(got), nan, err_msg=f"{what}: NaN positions")
            if isinstance(rtol, dict):
                np.testing.assert_allclose(got, want, err_msg=what, **rtol)
            else:
                assert_close(np.where(nan, 0, got), np.where(nan, 0, want), rtol, what)
        else:
            assert got.dtype.kind == want.dtype.kind, f"{what}: dtype {got.dtype} != {want.dtype}"
            np.testing.assert_array_equal(got, want, err_msg=what)
        return
    if isinstance(want, (bool, int, np.integer)):
        assert got == want and isinstance(got, int), f"{what}: {got!r} != expected {want!r}"
        return
    assert isinstance(got, float), f"{what}: expected a Python float, got {type(got).__name__}"
    if isinstance(rtol, dict):
        np.testing.assert_allclose(got, want, err_msg=what, **rtol)
    else:
        assert abs(got - want) <= rtol * max(1.0, abs(want)), f"{what}: {got!r} != {want!r}"


def _download(backend, result):
    if isinstance(result, tuple):
        return tuple(_download(backend, r) for r in result)
    if result is None or isinstance(result, (bool, int, float)):
        return result
    if backend.is_opencl:
        assert hasattr(result, "get"), f"expected a device array, got {type(result).__name__}"
    return backend.down(result)


def _as_expected(want):
    """Reference results as numpy: arrays stay, lists become arrays, tuples recurse."""
    if isinstance(want, tuple):
        return tuple(_as_expected(w) for w in want)
    if isinstance(want, list):
        return np.asarray(want)
    return want


def check_op(backend, name, *args, ref=None, rtol=None, kind="elementwise", dtype=None,
             against_cpu=True, what=None):
    """Run op ``name`` on ``backend`` with host ``args`` (uploaded with ``backend.up``),
    download its result and compare it with ``ref``: a callable given the same host args
    (a float64 ``<op>_ref``), or the expected value(s) themselves. Float results must have
    ``dtype`` (default ``backend.dtype``); values within ``rtol`` (default
    ``backend.rtol(kind)``; a dict ``rtol=, atol=`` compares as assert_allclose). With
    ``ref=None`` the CPU op is the reference (OpenCL-only checks). On OpenCL the result is
    also compared with the CPU op's (on the same host args) unless ``against_cpu`` is false.

    Returns ``(raw, host)``: the op's result as the backend returned it (device arrays on
    OpenCL, for chaining) and downloaded to numpy."""
    what = what or f"{name} on {backend.name} {backend.dtype.name}"
    rtol = backend.rtol(kind) if rtol is None else rtol
    dtype = backend.dtype if dtype is None else dtype
    raw = backend.op(name)(*[backend.up(a) for a in args])
    host = _download(backend, raw)
    if ref is not None:
        want = ref(*args) if callable(ref) else ref
        assert_same(f"{what} vs reference", host, _as_expected(want), rtol, dtype)
    if backend.is_opencl and (against_cpu or ref is None):
        from pynn.backend import cpu

        want = getattr(cpu, name)(*args)
        assert_same(f"{what} vs CPU", host, want, rtol)
    return raw, host


def check_inplace(backend, name, arrays, *rest, ref_arrays, rtol=None, kind="elementwise"):
    """An ``_update`` / ``_inplace`` op: upload ``arrays`` (None stays None), run it, and
    compare every updated array with ``ref_arrays`` (None: not compared). Returns the
    op's return value and the downloaded arrays."""
    rtol = backend.rtol(kind) if rtol is None else rtol
    dev = [backend.up(a.copy()) if isinstance(a, np.ndarray) else a for a in arrays]
    out = backend.op(name)(*dev, *rest)
    host = [backend.down(a) if a is not None else None for a in dev]
    for i, (g, w) in enumerate(zip(host, ref_arrays)):
        if w is not None:
            assert_close(g, w, rtol, f"{name} on {backend.name}: array {i}")
    return out, host


def hammer_equal(fn, xs, wants, calls):
    """fn(xs[k]) from len(xs) Python threads started together, `calls` times each: every
    call must return wants[k] bit for bit (a thread's exception fails the test)."""
    import threading

    got, errors = [[] for _ in xs], []
    start = threading.Barrier(len(xs))

    def worker(k):
        try:
            start.wait()
            for _ in range(calls):
                got[k].append(fn(xs[k]))
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for k, want in enumerate(wants):
        assert len(got[k]) == calls
        for y in got[k]:
            np.testing.assert_array_equal(y, want)


def assert_step_matches_on_opencl(build, xs, y, loss="mse", atol=1e-5):
    """``build()``'s model on the CPU and on OpenCL with the same weights: predictions, one
    SGD step's loss and every weight after it agree (``atol``; the loss relative to it)."""
    import pynn
    from tests.opencl_util import skip_without_opencl

    skip_without_opencl()
    results, weights = {}, None
    for device in ("cpu", "opencl"):
        previous = pynn.get_device()
        pynn.set_device(device)
        try:
            model = build()
            weights = weights or model.get_weights()
            model.set_weights(weights)
            model.compile(optimizer=pynn.optimizers.SGD(0.1), loss=loss)
            pred = model.predict(xs, verbose=0)
            value = model.train_on_batch(xs, y)
            results[device] = (pred, value, model.get_weights())
        finally:
            pynn.set_device(previous)
    (p1, l1, w1), (p2, l2, w2) = results["cpu"], results["opencl"]
    np.testing.assert_allclose(p2, p1, atol=atol)
    assert abs(l2 - l1) <= atol * max(1, abs(l1)), f"loss on OpenCL {l2}, on the CPU {l1}"
    for a, b in zip(w2, w1):
        np.testing.assert_allclose(a, b, atol=atol)


def keras_on_torch():
    """Keras 3 on its torch backend (the parity reference, a test extra), or the test is
    skipped saying why."""
    import pytest

    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras runs on {keras.backend.backend()}, parity wants torch")
    return keras
