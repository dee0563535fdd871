"""Run-time ISA dispatch of the register-blocked microkernel (native/_isa.h,
native/_microkernel.h): every level this CPU runs (avx512, avx2, generic), forced in-process
with pynn._config.set_kernel, against the float64 references on odd shapes (M, N, K = 1 and
non-multiples of every blocking factor: rows 8/6/4/3/2/1, panels of 2 vectors, one vector,
single columns); bit-identical results however rows are split, per level; the errors for a
level this CPU cannot run and for an unknown name (PYNN_KERNEL as well)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pynn
from pynn import _config
from pynn._native import conv, info, rnn
from tests.reference import conv_ref, rnn_ref

ROOT = Path(__file__).resolve().parent.parent
TOL = {np.float32: 2e-5, np.float64: 1e-12}   # relative to sum |a*b| of each output
F32_TOL = {"rtol": 1e-4, "atol": 1e-5}


@pytest.fixture(params=_config.KERNELS)
def level(request):
    name = request.param
    if name not in _config.available_kernels():
        pytest.skip(f"this CPU cannot run the {name} kernels")
    with _config.kernel(name):
        yield name


def _close(got, want, scale, dtype, what):
    bad = np.abs(got.astype(np.float64) - want) > TOL[dtype] * (scale + 1e-30)
    assert not bad.any(), (f"{what}: {bad.sum()} of {bad.size} off, worst "
                           f"{np.max(np.abs(got - want)):.3g}")


def test_every_microkernel_module_follows_set_kernel(level):
    """Each module that includes the header has its own copy of the choice: all of them
    (found from the sources, so a new one that forgets native/_microkernel.pxi fails here)
    switch together."""
    users = sorted(p.stem for p in (ROOT / "native").glob("*.pyx")
                   if "_microkernel.h" in p.read_text())
    assert {"conv", "info", "rnn", "rnn_mask"} <= set(users)
    wanted = {n: lv for n, lv, _ in info.kernel_levels()[0]}[level]
    for name in users:
        mod = __import__(f"pynn._native.{name}", fromlist=["_"])
        assert hasattr(mod, "_microkernel_select"), f"{name} lacks _microkernel.pxi"
        assert mod._microkernel_level() == wanted, name
    kernel = info.microkernel()
    assert _config.get_kernel() == kernel["kernel"] == level
    assert kernel["vector_bytes"] == {"avx512": 64, "avx2": 32, "generic": 16}[level]
    assert kernel["rows"] == (8 if level == "avx512" else 6)
    assert kernel["panel_columns"] == 2 * kernel["vector_bytes"] // 4


# -- the entry points through info's test hooks ----------------------------------------------
def _seg_case(rng, dtype, m, n, nseg, tn, sat):
    """Random a, b (flat) and offsets for pynn_seg_gemm, and its float64 oracle pieces."""
    ldb = n + int(rng.integers(0, 3))
    a_len = m * 3 + nseg * 5 + tn * sat + 7
    a = rng.standard_normal(a_len).astype(dtype)
    roff = rng.integers(0, m * 3 + 1, m).astype(np.intp)
    aseg = rng.integers(0, nseg * 5 + 1, nseg).astype(np.intp)
    bseg = (np.arange(nseg) * tn * ldb).astype(np.intp)
    b = rng.standard_normal(nseg * tn * ldb + n).astype(dtype)
    t = np.arange(tn)
    A = a.astype(np.float64)[aseg[:, None, None] + roff[None, :, None] + t * sat]  # (s, i, t)
    B = b.astype(np.float64)[bseg[:, None, None] + t[None, :, None] * ldb
                             + np.arange(n)]                                        # (s, t, j)
    return a, roff, aseg, b, bseg, ldb, A, B


SEG_SHAPES = [  # (m, n, nseg, tn, sat)
    (1, 1, 1, 1, 1), (1, 37, 1, 5, 1), (7, 1, 2, 3, 2), (9, 33, 3, 1, 1), (13, 70, 2, 4, 3),
    (17, 65, 1, 7, 1), (23, 129, 2, 2, 5), (5, 16, 1, 1, 1), (6, 8, 2, 3, 1),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("start", ["zero", "init", "accum"])
def test_seg_gemm_matches_float64(level, dtype, start):
    rng = np.random.default_rng(1)
    for m, n, nseg, tn, sat in SEG_SHAPES:
        a, roff, aseg, b, bseg, ldb, A, B = _seg_case(rng, dtype, m, n, nseg, tn, sat)
        init = rng.standard_normal(n).astype(dtype) if start == "init" else None
        c0 = rng.standard_normal((m, n)).astype(dtype)
        base = {"zero": np.zeros((m, n)), "init": np.broadcast_to(
            init.astype(np.float64) if init is not None else 0.0, (m, n)),
            "accum": c0.astype(np.float64)}[start]
        want = base + np.einsum("sit,stj->ij", A, B)
        scale = np.abs(base) + np.einsum("sit,stj->ij", np.abs(A), np.abs(B))
        for wide in (False, True):
            c = c0.copy()
            info._seg_gemm(a, roff, aseg, sat, b, bseg, ldb, tn, c, init=init,
                           accum=start == "accum", wide=wide)
            _close(c, want, scale, dtype, f"{level} {start} wide={wide} {(m, n, nseg, tn)}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_partial_vector_columns_stay_inside_c(level, dtype):
    """The last columns that fill no whole vector go as one masked vector (PYNN_SK_TAIL):
    right values, and nothing read or written past them (sentinels after c)."""
    rng = np.random.default_rng(5)
    for n in (1, 3, 5, 7, 9, 15, 17, 23, 24, 31, 40):
        m, nseg, tn, sat = 7, 2, 9, 1
        a, roff, aseg, b, bseg, ldb, A, B = _seg_case(rng, dtype, m, n, nseg, tn, sat)
        init = rng.standard_normal(n).astype(dtype)
        store = np.full(m * n + 32, 7.5, dtype=dtype)
        c = store[:m * n].reshape(m, n)
        info._seg_gemm(a, roff, aseg, sat, b, bseg, ldb, tn, c, init=init)
        want = init.astype(np.float64) + np.einsum("sit,stj->ij", A, B)
        scale = np.abs(init.astype(np.float64)) + np.einsum("sit,stj->ij", np.abs(A),
                                                            np.abs(B))
        _close(c, want, scale, dtype, f"{level} n={n}")
        np.testing.assert_array_equal(store[m * n:], 7.5, err_msg=f"{level} n={n}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_gemm_matches_float64(level, dtype):
    rng = np.random.default_rng(2)
    # The last two reduce over several blocks of b's rows (PYNN_ROWS_B_BYTES: 256 KiB of b
    # per block, 1985 rows of 33 floats), one ending short.
    for m, k, n in [(1, 1, 1), (1, 9, 33), (7, 1, 17), (9, 5, 1), (19, 13, 70), (64, 3, 9),
                    (67, 2, 31), (8, 16, 32), (5, 3001, 33), (66, 2100, 129)]:
        for transpose_a in (False, True):
            a = rng.standard_normal((k, m) if transpose_a else (m, k)).astype(dtype)
            b = rng.standard_normal((k, n)).astype(dtype)
            a64 = a.astype(np.float64).T if transpose_a else a.astype(np.float64)
            c0 = rng.standard_normal((m, n)).astype(dtype)
            for accum in (False, True):
                c = c0.copy()
                info._rows_gemm(a, b, c, accum=accum, transpose_a=transpose_a)
                base = c0.astype(np.float64) if accum else 0.0
                want = base + a64 @ b.astype(np.float64)
                scale = np.abs(base) + np.abs(a64) @ np.abs(b.astype(np.float64))
                _close(c, want, scale, dtype, f"{level} {(m, k, n)} T={transpose_a}")


def test_pack_panels_uses_the_levels_width(level):
    rng = np.random.default_rng(3)
    nc = info.microkernel()["panel_columns"]
    for dtype, width in ((np.float32, nc), (np.float64, nc // 2)):
        b = rng.standard_normal((5, 2 * width + 3)).astype(dtype)
        out = np.empty(b.size, dtype=dtype)
        info._pack_panels(b, out)
        want = np.concatenate([b[:, p:p + width].ravel() for p in range(0, b.shape[1], width)])
        np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_split_invariance(level, dtype):
    """The same rows in one call, one row per call, and blocks of 3 and 5: the same bits (a
    row's sum never depends on the block it falls in)."""
    rng = np.random.default_rng(4)
    m, n, nseg, tn, sat = 29, 77, 3, 11, 2
    a, roff, aseg, b, bseg, ldb, _, _ = _seg_case(rng, dtype, m, n, nseg, tn, sat)
    init = rng.standard_normal(n).astype(dtype)
    for wide in (False, True):
        whole = np.empty((m, n), dtype=dtype)
        info._seg_gemm(a, roff, aseg, sat, b, bseg, ldb, tn, whole, init=init, wide=wide)
        for step in (1, 3, 5):
            parts = np.empty((m, n), dtype=dtype)
            for i in range(0, m, step):
                info._seg_gemm(a, roff[i:i + step].copy(), aseg, sat, b, bseg, ldb, tn,
                               parts[i:i + step], init=init, wide=wide)
            np.testing.assert_array_equal(parts, whole, err_msg=f"{level} step={step}")


# -- the layers' kernels on each level --------------------------------------------------------
@pytest.fixture
def direct_conv():
    """Every conv op on the microkernel (direct) path, whatever the size rules say."""
    old = conv._set_direct_max_k(10**9)
    yield
    conv._set_direct_max_k(old)


CONV_CASES = [  # x shape, kernel shape, strides, padding
    ((2, 7, 9, 5), (3, 3, 5, 17), (1, 1), "same"),
    ((3, 6, 5, 3), (2, 3, 3, 1), (2, 1), "valid"),
    ((1, 5, 5, 1), (1, 1, 1, 33), (1, 1), "valid"),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_forward_backward_match_float64(level, dtype, direct_conv):
    rng = np.random.default_rng(5)
    for xs, ks, strides, padding in CONV_CASES:
        x = rng.standard_normal(xs).astype(dtype)
        w = (rng.standard_normal(ks) / np.sqrt(np.prod(ks[:3]))).astype(dtype)
        bias = rng.standard_normal(ks[3]).astype(dtype)
        y, z = conv.conv2d_forward(x, w, bias, strides, padding, (1, 1), "relu")
        want, _ = conv_ref.conv2d_forward_ref(x, w, bias, strides, padding, (1, 1), "relu")
        tol = F32_TOL if dtype == np.float32 else {"rtol": 1e-11, "atol": 1e-12}
        np.testing.assert_allclose(y, want, **tol, err_msg=f"{level} forward {xs} {ks}")
        dy = rng.standard_normal(y.shape).astype(dtype)
        grads = conv.conv2d_backward(dy, x, z, y, w, strides, padding, (1, 1), "relu")
        wants = conv_ref.conv2d_backward_ref(dy, x, w, bias, strides, padding, (1, 1), "relu")
        for name, got, exp in zip(("dx", "dkernel", "dbias"), grads, wants):
            np.testing.assert_allclose(got, exp, **tol,
                                       err_msg=f"{level} {name} {xs} {ks} {strides}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lstm_matches_float64(level, dtype):
    """The recurrent step's products (rows_gemm over packed panels): 11 units (44 gate
    columns: not a multiple of any panel width), 7 rows, C = 5, T = 3; backward along a
    random direction against central differences of the float64 oracle."""
    rng = np.random.default_rng(6)
    n, t, c, u = 7, 3, 5, 11
    x = (rng.standard_normal((n, t, c)) * 0.5).astype(dtype)
    w = (rng.standard_normal((c, 4 * u)) * 0.3).astype(dtype)
    r = (rng.standard_normal((u, 4 * u)) * 0.3).astype(dtype)
    b = (rng.standard_normal(4 * u) * 0.1).astype(dtype)
    y, cache = rnn.lstm_forward(x, w, r, b, return_sequences=True)
    want = rnn_ref.lstm_forward_ref(x, w, r, b, return_sequences=True)
    tol = F32_TOL if dtype == np.float32 else {"rtol": 1e-10, "atol": 1e-12}
    np.testing.assert_allclose(y, want, **tol, err_msg=f"{level} lstm forward")
    dy = rng.standard_normal(y.shape).astype(dtype)
    grads = rnn.lstm_backward(dy, x, w, r, cache, return_sequences=True)
    args = [a.astype(np.float64) for a in (x, w, r, b)]

    def loss(*a):
        return float(np.sum(dy * rnn_ref.lstm_forward_ref(*a, return_sequences=True)))

    eps = 1e-6
    for i, (name, got) in enumerate(zip(("dx", "dkernel", "drecurrent_kernel", "dbias"),
                                        grads)):
        v = rng.standard_normal(args[i].shape)
        up = [a + eps * v if j == i else a for j, a in enumerate(args)]
        down = [a - eps * v if j == i else a for j, a in enumerate(args)]
        fd = (loss(*up) - loss(*down)) / (2 * eps)
        terms = got.astype(np.float64) * v
        rtol = 1e-5 if dtype == np.float32 else 1e-8
        assert abs(terms.sum() - fd) <= rtol * np.abs(terms).sum(), (level, name, fd)


def test_conv_thread_count_invariance(level, direct_conv):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 11, 13, 7)).astype(np.float32)
    w = rng.standard_normal((3, 3, 7, 19)).astype(np.float32)
    outs = []
    for n in (1, 2, 3):
        with pynn.threads(n):
            y, _ = conv.conv2d_forward(x, w, None, (1, 1), "same")
            dx, dw, _ = conv.conv2d_backward(y, x, None, y, w, (1, 1), "same",
                                             use_bias=False)
        outs.append((y, dx, dw))
    for other in outs[1:]:
        for got, first in zip(other, outs[0]):
            np.testing.assert_array_equal(got, first, err_msg=level)


def test_levels_differ_only_in_rounding():
    """The same conv on every level this CPU runs: equal to float32 rounding, and the
    setting restored after the block."""
    before = _config.get_kernel()
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 9, 9, 6)).astype(np.float32)
    w = rng.standard_normal((3, 3, 6, 21)).astype(np.float32)
    ys = {}
    for name in _config.available_kernels():
        with _config.kernel(name):
            ys[name] = conv.conv2d_forward(x, w, None, (1, 1), "same")[0]
    assert _config.get_kernel() == before
    for name, y in ys.items():
        np.testing.assert_allclose(y, ys[before], rtol=1e-4, atol=1e-4, err_msg=name)


# -- errors -----------------------------------------------------------------------------------
def test_unknown_kernel_name():
    with pytest.raises(ValueError, match=re.escape("set_kernel: expected one of avx512, avx2, "
                                                   "generic, got 'sse9'")):
        _config.set_kernel("sse9")


def test_unavailable_kernel_names_what_the_cpu_has(monkeypatch):
    """A CPU without AVX-512 (simulated where this one has it): a RuntimeError that names the
    level, what it needs and what the CPU can run; nothing switches."""
    before = _config.get_kernel()
    levels, best, requested = info.kernel_levels()
    fake = [(n, lv, ok and n != "avx512") for n, lv, ok in levels]
    monkeypatch.setattr(info, "kernel_levels", lambda: (fake, best, requested))
    with pytest.raises(RuntimeError, match=r"set_kernel: the 'avx512' kernels need AVX-512 F, "
                                           r"VL, BW and DQ enabled by the OS; this CPU has .*"
                                           r"\(it can run: .*generic\)"):
        _config.set_kernel("avx512")
    assert _config.get_kernel() == before


def test_native_select_refuses_what_the_cpu_lacks():
    for name, lv, runs in info.kernel_levels()[0]:
        if not runs:
            assert not conv._microkernel_select(lv)
            with pytest.raises(RuntimeError, match=f"the '{name}' kernels need"):
                _config.set_kernel(name)
    assert not conv._microkernel_select(7)


def _run_with_kernel(value, code):
    env = dict(os.environ, PYNN_KERNEL=value)
    return subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_env_variable_forces_a_level_and_rejects_bad_names():
    code = ("import pynn, pynn._config as c; from pynn._native import conv, rnn, info; "
            "print(c.get_kernel(), conv._microkernel_level(), rnn._microkernel_level())")
    out = _run_with_kernel("generic", code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["generic", "0", "0"]
    bad = _run_with_kernel("avx1024", "import pynn")
    assert bad.returncode != 0
    assert "PYNN_KERNEL: expected one of avx512, avx2, generic, got 'avx1024'" in bad.stderr
