"""The linalg family (native/linalg.pyx, opencl/linalg.cl: keras.ops.linalg) against the
float64 oracles of tests/reference/linalg_ref.py on both backends (OpenCL also against the
CPU), the ops of pynn.ops.linalg against NumPy, their gradients against central
differences, Keras parity (torch) of values and gradients, thread-count invariance and bad
operands."""

import numpy as np
import pytest

import pynn
from pynn import ops
from tests.backend_util import check_op, keras_on_torch, rand
from tests.reference import linalg_ref as ref
from tests.test_ops import check_grad

SQUARE = [(1, 1), (3, 3), (7, 7), (2, 5, 5)]
RECTANGULAR = SQUARE + [(5, 3), (3, 5), (2, 3, 4, 2)]


def _tol(target, scale=1):
    eps = 2e-5 if target.dtype == np.float32 else 1e-11
    return {"rtol": eps * scale, "atol": eps * scale}


def _general(rng, shape, dtype=np.float64):
    """Well-conditioned: a random matrix plus a diagonal that dominates it."""
    n = shape[-1]
    return (rand(rng, shape, np.float64) + 2 * np.sqrt(n) * np.eye(n)).astype(dtype)


def _spd(rng, shape, dtype=np.float64):
    a = rand(rng, shape, np.float64)
    return (a @ np.swapaxes(a, -1, -2) + shape[-1] * np.eye(shape[-1])).astype(dtype)


def _symmetric(rng, shape, dtype=np.float64):
    """Symmetric with well-separated eigenvalues (gaps of about 1)."""
    n = shape[-1]
    q = np.linalg.qr(rand(rng, shape, np.float64))[0]
    w = np.arange(n) + rng.uniform(0.1, 0.4, shape[:-1])
    return ((q * w[..., None, :]) @ np.swapaxes(q, -1, -2)).astype(dtype)


def _distinct(rng, shape, dtype=np.float64):
    """Singular values 1, 2, ... (distinct, away from zero) in random directions."""
    m, n = shape[-2:]
    k = min(m, n)
    u = np.linalg.qr(rand(rng, shape[:-2] + (m, k), np.float64))[0]
    v = np.linalg.qr(rand(rng, shape[:-2] + (n, k), np.float64))[0]
    s = np.arange(1, k + 1) + rng.uniform(0.1, 0.4, shape[:-2] + (k,))
    return ((u * s[..., None, :]) @ np.swapaxes(v, -1, -2)).astype(dtype)


# -- kernels against the float64 references ---------------------------------------------------
@pytest.mark.parametrize("shape", SQUARE, ids=str)
def test_cholesky_forward(target, shape):
    a = _spd(np.random.default_rng(1), shape, target.dtype)
    check_op(target, "cholesky_forward", a, ref=ref.cholesky_forward_ref, rtol=_tol(target, 10))


@pytest.mark.parametrize("shape", SQUARE, ids=str)
def test_lu_factor_forward(target, shape):
    a = _general(np.random.default_rng(2), shape, target.dtype)
    check_op(target, "lu_factor_forward", a, ref=ref.lu_factor_forward_ref,
             rtol=_tol(target, 10))


@pytest.mark.parametrize("shape", SQUARE, ids=str)
@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("transpose", [False, True])
def test_lu_solve_forward(target, shape, k, transpose):
    rng = np.random.default_rng(3)
    a = _general(rng, shape, np.float64)
    lu, piv, _ = ref.lu_factor_forward_ref(a)
    b = rand(rng, shape[:-1] + (k,), target.dtype)
    check_op(target, "lu_solve_forward", lu.astype(target.dtype), piv, b, transpose,
             ref=ref.lu_solve_forward_ref, rtol=_tol(target, 10))


@pytest.mark.parametrize("shape", SQUARE, ids=str)
def test_lu_slogdet_forward(target, shape):
    rng = np.random.default_rng(4)
    a = _general(rng, shape, np.float64) * rng.choice([-1.0, 1.0], shape[:-1] + (1,))
    lu, piv, _ = ref.lu_factor_forward_ref(a)
    check_op(target, "lu_slogdet_forward", lu.astype(target.dtype), piv,
             ref=ref.lu_slogdet_forward_ref, rtol=_tol(target, 10))


@pytest.mark.parametrize("shape", SQUARE, ids=str)
@pytest.mark.parametrize("lower", [False, True])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("unit", [False, True])
def test_triangular_solve_forward(target, shape, lower, transpose, unit):
    rng = np.random.default_rng(5)
    a = _general(rng, shape, target.dtype)  # the other triangle is read by no one
    b = rand(rng, shape[:-1] + (3,), target.dtype)
    check_op(target, "triangular_solve_forward", a, b, lower, transpose, unit,
             ref=ref.triangular_solve_forward_ref, rtol=_tol(target, 10))


@pytest.mark.parametrize("shape", RECTANGULAR, ids=str)
@pytest.mark.parametrize("complete", [False, True])
def test_qr_forward(target, shape, complete):
    a = rand(np.random.default_rng(6), shape, target.dtype)
    check_op(target, "qr_forward", a, complete, ref=ref.qr_forward_ref, rtol=_tol(target, 20))


@pytest.mark.parametrize("shape", SQUARE, ids=str)
def test_eigh_forward(target, shape):
    a = _symmetric(np.random.default_rng(7), shape, np.float64)
    lower_only = np.tril(a) + np.triu(rand(np.random.default_rng(8), shape), 1)  # upper ignored
    check_op(target, "eigh_forward", lower_only.astype(target.dtype), ref=ref.eigh_forward_ref,
             rtol=_tol(target, 20))


@pytest.mark.parametrize("shape", RECTANGULAR, ids=str)
@pytest.mark.parametrize("full", [False, True])
def test_svd_forward(target, shape, full):
    a = _distinct(np.random.default_rng(9), shape, target.dtype)
    m, n = shape[-2:]
    if not full or m == n:
        check_op(target, "svd_forward", a, full, True, ref=ref.svd_forward_ref,
                 rtol=_tol(target, 20))
    else:
        # the extra columns of U (rows of Vh) are any orthonormal basis of the complement
        k = min(m, n)
        _, (u, s, vh) = check_op(target, "svd_forward", a, full, True, ref=None,
                                 against_cpu=False)
        want_u, want_s, want_vh = ref.svd_forward_ref(a, False, True)
        tol = _tol(target, 20)
        np.testing.assert_allclose(s, want_s, **tol)
        np.testing.assert_allclose(u[..., :, :k], want_u, **tol)
        np.testing.assert_allclose(vh[..., :k, :], want_vh, **tol)
        eye_u, eye_v = np.eye(m), np.eye(n)
        np.testing.assert_allclose(np.swapaxes(u, -1, -2) @ u, np.broadcast_to(eye_u, u.shape),
                                   **tol)
        np.testing.assert_allclose(vh @ np.swapaxes(vh, -1, -2), np.broadcast_to(
            eye_v, vh.shape), **tol)
    check_op(target, "svd_forward", a, full, False, ref=ref.svd_forward_ref,
             rtol=_tol(target, 20))


def test_svd_completes_u_for_rank_deficient_input():
    from pynn.backend import cpu
    a = np.zeros((4, 3))
    a[:, 0] = [1.0, 2.0, 0.0, -1.0]  # rank 1: two zero singular values
    u, s, vh = cpu.svd_forward(a, True, True)
    np.testing.assert_allclose(u.T @ u, np.eye(4), atol=1e-12)
    np.testing.assert_allclose((u[:, :3] * s) @ vh, a, atol=1e-12)
    np.testing.assert_allclose(s, [np.sqrt(6), 0, 0], atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_give_the_same_bits_at_any_thread_count(dtype):
    from pynn._native import info
    from pynn.backend import cpu
    rng = np.random.default_rng(10)
    a = _spd(rng, (40, 9, 9), dtype)
    runs = []
    before = info.get_max_threads()
    try:
        for threads in (1, 2, 3):
            info.set_num_threads(threads)
            runs.append([cpu.cholesky_forward(a)[0], cpu.lu_factor_forward(a)[0],
                         *cpu.qr_forward(a), *cpu.eigh_forward(a), *cpu.svd_forward(a)])
    finally:
        info.set_num_threads(before)
    for run in runs[1:]:
        for got, want in zip(run, runs[0]):
            np.testing.assert_array_equal(got, want)


# -- the ops: values against NumPy --------------------------------------------------------
def _np(t):
    return np.asarray(t)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SQUARE, ids=str)
def test_square_ops_against_numpy(dtype, shape):
    rng = np.random.default_rng(11)
    a, spd = _general(rng, shape, dtype), _spd(rng, shape, dtype)
    b = rand(rng, shape[:-1] + (2,), dtype)
    tol = 2e-5 if dtype == np.float32 else 1e-10
    a64, spd64 = a.astype(np.float64), spd.astype(np.float64)

    def close(got, want, what):
        assert np.asarray(got).dtype == dtype, what
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(_np(got), want, rtol=0, atol=tol * scale, err_msg=what)

    close(ops.linalg.cholesky(spd), np.linalg.cholesky(spd64), "cholesky")
    close(ops.linalg.cholesky(spd, upper=True), np.swapaxes(np.linalg.cholesky(spd64), -1, -2),
          "cholesky upper")
    close(ops.linalg.cholesky_inverse(np.linalg.cholesky(spd64).astype(dtype)),
          np.linalg.inv(spd64), "cholesky_inverse")
    close(ops.linalg.det(a), np.linalg.det(a64), "det")
    close(ops.linalg.inv(a), np.linalg.inv(a64), "inv")
    close(ops.linalg.solve(a, b), np.linalg.solve(a64, b), "solve")
    close(ops.linalg.solve(a, b[..., 0]), np.linalg.solve(a64, b[..., :1])[..., 0],
          "solve vector")
    close(ops.linalg.solve_triangular(a, b, lower=True), np.linalg.solve(np.tril(a64), b),
          "solve_triangular lower")
    close(ops.linalg.solve_triangular(a, b), np.linalg.solve(np.triu(a64), b),
          "solve_triangular upper")
    sign, logabs = ops.slogdet(a)
    want_sign, want_log = np.linalg.slogdet(a64)
    close(sign, want_sign, "slogdet sign")
    close(logabs, want_log, "slogdet log")
    close(ops.logdet(spd), np.linalg.slogdet(spd64)[1], "logdet")
    close(ops.linalg.pinv(a), np.linalg.pinv(a64), "pinv")
    w, v = ops.linalg.eigh(spd)
    close(w, np.linalg.eigvalsh(spd64), "eigh w")
    close(ops.matmul(v * w[..., None, :], ops.swapaxes(v, -1, -2)), spd64, "eigh v")
    lu, piv = ops.linalg.lu_factor(a)
    want_lu, want_piv, _ = ref.lu_factor_forward_ref(a64)
    close(lu, want_lu, "lu_factor")
    np.testing.assert_array_equal(_np(piv), want_piv)
    assert _np(piv).dtype == np.int32
    np.testing.assert_array_equal(_np(ops.linalg.matrix_rank(a)), np.linalg.matrix_rank(a64))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", RECTANGULAR, ids=str)
def test_rectangular_ops_against_numpy(dtype, shape):
    rng = np.random.default_rng(12)
    a = _distinct(rng, shape, dtype)
    a64 = a.astype(np.float64)
    tol = 5e-5 if dtype == np.float32 else 1e-10
    for mode in ("reduced", "complete"):
        q, r = ops.linalg.qr(a, mode=mode)
        want_q, want_r = np.linalg.qr(a64, mode=mode)
        np.testing.assert_allclose(_np(q), want_q, atol=tol, err_msg=f"qr {mode} q")
        np.testing.assert_allclose(_np(r), want_r, atol=tol * 10, err_msg=f"qr {mode} r")
    for full in (False, True):
        u, s, vh = ops.linalg.svd(a, full_matrices=full)
        k = min(shape[-2:])
        np.testing.assert_allclose(_np(s), np.linalg.svd(a64, compute_uv=False), atol=tol * 10)
        recon = (_np(u)[..., :, :k] * _np(s)[..., None, :]) @ _np(vh)[..., :k, :]
        np.testing.assert_allclose(recon, a64, atol=tol * 10, err_msg="svd u s vh")
    np.testing.assert_allclose(_np(ops.linalg.svd(a, compute_uv=False)),
                               np.linalg.svd(a64, compute_uv=False), atol=tol * 10)
    np.testing.assert_allclose(_np(ops.linalg.pinv(a)), np.linalg.pinv(a64), atol=tol * 10)
    b = rand(rng, shape[:-1] + (2,), dtype)
    want = np.linalg.pinv(a64) @ b
    np.testing.assert_allclose(_np(ops.linalg.lstsq(a, b)), want, atol=tol * 10)
    np.testing.assert_allclose(_np(ops.linalg.lstsq(a, b[..., 0])), want[..., 0], atol=tol * 10)
    if len(shape) == 2:
        for order in (2, -2, "nuc", "fro", 1):
            np.testing.assert_allclose(_np(ops.linalg.norm(a, order)),
                                       np.linalg.norm(a64, order), rtol=tol * 10)


def test_norm_over_two_axes_with_singular_values():
    a = rand(np.random.default_rng(13), (3, 4, 5), np.float64)
    got = ops.norm(a, ord="nuc", axis=(0, 2), keepdims=True)
    want = np.linalg.norm(a, ord="nuc", axis=(0, 2), keepdims=True)
    np.testing.assert_allclose(_np(got), want, rtol=1e-12)


def test_rank_deficient_pinv_and_matrix_rank():
    rng = np.random.default_rng(14)
    a = rand(rng, (5, 2), np.float64) @ rand(rng, (2, 4), np.float64)  # rank 2
    assert int(_np(ops.matrix_rank(a))) == 2
    np.testing.assert_allclose(_np(ops.pinv(a)), np.linalg.pinv(a), atol=1e-10)
    assert int(_np(ops.matrix_rank(a, tol=1e6))) == 0


def test_singular_and_indefinite_inputs_are_reported_as_keras_does():
    singular = np.array([[1.0, 2.0], [2.0, 4.0]])
    assert float(_np(ops.linalg.det(singular))) == 0.0
    sign, logabs = ops.slogdet(singular)
    assert float(_np(sign)) == 0.0 and float(_np(logabs)) == -np.inf
    with pytest.raises(np.linalg.LinAlgError, match="linalg.solve: the input matrix is singular"):
        ops.linalg.solve(singular, np.ones(2))
    with pytest.raises(np.linalg.LinAlgError, match="linalg.inv: the input matrix is singular"):
        ops.linalg.inv(singular)
    indefinite = np.stack([np.eye(3), np.diag([1.0, -1.0, 1.0])])
    with pytest.raises(np.linalg.LinAlgError, match=r"not positive-definite \(the leading "
                       r"minor of order 2 .*\(matrix 1 of the batch\)"):
        ops.linalg.cholesky(indefinite)
    assert np.isnan(float(_np(ops.logdet(np.diag([1.0, -2.0])))))
    with pytest.raises(NotImplementedError, match="linalg.eig: .*complex"):
        ops.linalg.eig(np.eye(2))


# -- gradients ------------------------------------------------------------------------------------
def _sym_input(f):
    """f of the symmetric (x + x^T) / 2: the ops that read one triangle are then
    differentiated along symmetric directions only, as Keras's formulas assume."""
    return lambda o, x, *rest: f(o, o.multiply(o.add(x, o.swapaxes(x, -1, -2)), 0.5), *rest)


def _signless(o, v):
    """Products of paired vectors: invariant to each eigenvector's or singular pair's sign."""
    return o.multiply(v, v)


_R = np.random.default_rng(15)
CASES = {
    # name: (call(ops, *xs), xs in float64)
    "cholesky": (_sym_input(lambda o, x: o.linalg.cholesky(x)), [_spd(_R, (2, 4, 4))]),
    "cholesky_upper": (_sym_input(lambda o, x: o.linalg.cholesky(x, upper=True)),
                       [_spd(_R, (3, 3))]),
    # Keras (torch) differentiates the whole factor: tril(x) keeps the differences to L's
    "cholesky_inverse": (lambda o, x: o.linalg.cholesky_inverse(o.tril(x)),
                         [np.linalg.cholesky(_spd(_R, (4, 4)))]),
    "cholesky_inverse_whole": (lambda o, x: o.linalg.cholesky_inverse(x),
                               [np.linalg.cholesky(_spd(_R, (2, 3, 3)))]),
    "cholesky_inverse_upper": (lambda o, x: o.linalg.cholesky_inverse(o.triu(x), upper=True),
                               [np.linalg.cholesky(_spd(_R, (3, 3))).T.copy()]),
    "det": (lambda o, x: o.linalg.det(x), [_general(_R, (2, 3, 3))]),
    "slogdet": (lambda o, x: o.slogdet(x)[1], [_general(_R, (4, 4))]),
    "logdet": (lambda o, x: o.logdet(x), [_spd(_R, (2, 3, 3))]),
    "inv": (lambda o, x: o.linalg.inv(x), [_general(_R, (2, 4, 4))]),
    "lu_factor": (lambda o, x: o.linalg.lu_factor(x)[0], [rand(_R, (2, 4, 4), np.float64)]),
    "solve": (lambda o, a, b: o.linalg.solve(a, b), [_general(_R, (2, 4, 4)),
                                                     rand(_R, (2, 4, 3), np.float64)]),
    "solve_vector": (lambda o, a, b: o.linalg.solve(a, b), [_general(_R, (3, 3)),
                                                           rand(_R, (3,), np.float64)]),
    "solve_broadcast": (lambda o, a, b: o.linalg.solve(a, b), [_general(_R, (3, 3)),
                                                              rand(_R, (2, 3, 3), np.float64)]),
    "solve_triangular": (lambda o, a, b: o.linalg.solve_triangular(a, b, lower=True),
                         [_general(_R, (2, 4, 4)), rand(_R, (2, 4, 2), np.float64)]),
    "solve_triangular_upper": (lambda o, a, b: o.linalg.solve_triangular(a, b),
                               [_general(_R, (3, 3)), rand(_R, (3,), np.float64)]),
    "qr_q": (lambda o, x: o.linalg.qr(x)[0], [rand(_R, (5, 3), np.float64)]),
    "qr_r": (lambda o, x: o.linalg.qr(x)[1], [rand(_R, (2, 4, 4), np.float64)]),
    "qr_wide": (lambda o, x: o.add(o.sum(o.linalg.qr(x)[0]), o.linalg.qr(x)[1]),
                [rand(_R, (3, 5), np.float64)]),
    "eigh_w": (_sym_input(lambda o, x: o.linalg.eigh(x)[0]), [_symmetric(_R, (2, 4, 4))]),
    "eigh_v": (_sym_input(lambda o, x: _signless(o, o.linalg.eigh(x)[1])),
               [_symmetric(_R, (5, 5))]),
    "svd_s": (lambda o, x: o.linalg.svd(x, compute_uv=False), [_distinct(_R, (5, 3))]),
    "svd_u": (lambda o, x: _signless(o, o.linalg.svd(x, full_matrices=False)[0]),
              [_distinct(_R, (5, 3))]),
    "svd_vh": (lambda o, x: _signless(o, o.linalg.svd(x, full_matrices=False)[2]),
               [_distinct(_R, (2, 3, 5))]),
    "svd_square": (lambda o, x: o.multiply(o.linalg.svd(x)[0][..., :, :1],
                                           o.linalg.svd(x)[2][..., :1, :]),
                   [_distinct(_R, (4, 4))]),
    "pinv": (lambda o, x: o.linalg.pinv(x), [_distinct(_R, (4, 3))]),
    "lstsq": (lambda o, a, b: o.linalg.lstsq(a, b), [_distinct(_R, (5, 3)),
                                                     rand(_R, (5, 2), np.float64)]),
    "norm_2": (lambda o, x: o.linalg.norm(x, 2), [_distinct(_R, (4, 3))]),
    "norm_nuc": (lambda o, x: o.linalg.norm(x, "nuc"), [_distinct(_R, (3, 4))]),
}


# Cases for Keras parity alone: their gradient is not the derivative of what the op reads.
NOT_A_DERIVATIVE = {
    "cholesky_inverse_whole": "torch's gradient takes the whole of x as the factor, where the "
                              "op reads one triangle (the tril(x) case checks the rest)",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradients_against_central_differences(name):
    if name in NOT_A_DERIVATIVE:
        pytest.skip(NOT_A_DERIVATIVE[name])
    call, xs = CASES[name]
    check_grad(name, lambda *a: call(ops, *a), [x.copy() for x in xs], rtol=1e-5, atol=1e-7)


def test_svd_refuses_gradients_of_full_non_square_factors():
    x = ops.convert_to_tensor(_distinct(np.random.default_rng(17), (4, 3)))
    with pynn.GradientTape() as tape:
        tape.watch(x)
        loss = ops.sum(ops.linalg.svd(x)[0])
    with pytest.raises(NotImplementedError, match="full_matrices=False"):
        tape.gradient(loss, [x])


# -- Keras parity -------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CASES))
def test_keras_parity_of_values_and_gradients(name):
    keras = keras_on_torch()
    from tests.test_ops_keras3 import _keras_run, _pynn_run
    call, xs = CASES[name]
    probe = np.asarray(call(ops, *[x.astype(np.float32) for x in xs]))
    r = np.random.default_rng(18).standard_normal(probe.shape).astype(np.float32)
    want, want_g = _keras_run(keras, call, xs, r)
    got, got_g = _pynn_run(call, xs, r)
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=0, atol=5e-5 * scale, err_msg=name)
    assert len(got_g) == len(want_g)
    for i, (g, w) in enumerate(zip(got_g, want_g)):
        s = max(1.0, float(np.abs(w).max()))
        np.testing.assert_allclose(g, w, rtol=0, atol=2e-4 * s, err_msg=f"{name} d/dx{i}")


def test_keras_parity_of_factor_conventions():
    keras = keras_on_torch()
    import torch
    rng = np.random.default_rng(19)
    a = _general(rng, (2, 4, 4), np.float32)
    lu, piv = ops.linalg.lu_factor(a)
    want_lu, want_piv = keras.ops.linalg.lu_factor(torch.tensor(a))
    np.testing.assert_allclose(_np(lu), want_lu.numpy(), atol=1e-5)
    np.testing.assert_array_equal(_np(piv), want_piv.numpy())
    for shape in ((5, 3), (3, 5), (4, 4)):
        x = rand(rng, shape, np.float32)
        for mode in ("reduced", "complete"):
            for got, want in zip(ops.linalg.qr(x, mode=mode),
                                 keras.ops.linalg.qr(torch.tensor(x), mode=mode)):
                np.testing.assert_allclose(_np(got), want.numpy(), atol=1e-5)
    sym = _symmetric(rng, (5, 5), np.float32)
    w, v = ops.linalg.eigh(sym)
    want_w, want_v = keras.ops.linalg.eigh(torch.tensor(sym))
    np.testing.assert_allclose(_np(w), want_w.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.abs(_np(v)), np.abs(want_v.numpy()), atol=1e-4)
    assert int(_np(ops.matrix_rank(a[0]))) == int(keras.ops.matrix_rank(torch.tensor(a[0])))


# -- OpenCL against the CPU -------------------------------------------------------------------
@pytest.mark.opencl
@pytest.mark.parametrize("name", sorted(CASES))
def test_opencl_matches_the_cpu(name):
    from tests.test_ops_device import check_device
    call, xs = CASES[name]
    check_device(name, lambda *a: call(ops, *a), *[x.astype(np.float32) for x in xs], rtol=2e-4)


# -- bad operands ---------------------------------------------------------------------------
@pytest.mark.parametrize("fn,args,error,match", [
    (lambda a: ops.linalg.inv(a), (np.ones((3, 4), np.float32),), ValueError,
     r"linalg.inv: 'x' must be square \(\.\.\., n, n\), got shape \(3, 4\)"),
    (lambda a: ops.linalg.cholesky(a), (np.ones(3, np.float32),), ValueError,
     r"linalg.cholesky: 'x' must have at least 2 dimensions .*got shape \(3,\)"),
    (lambda a: ops.linalg.det(a), (np.eye(3, dtype=np.int64),), TypeError,
     r"linalg.det: 'x' must be a float32 or float64 array, got dtype int64"),
    (lambda a: ops.linalg.solve(a, np.ones((4, 2), np.float32)), (np.eye(3, dtype=np.float32),),
     ValueError, r"linalg.solve: 'b' must be \(\.\.\., 3\) or \(\.\.\., 3, k\)"),
    (lambda a: ops.linalg.solve(a, np.ones((3, 2), np.float64)), (np.eye(3, dtype=np.float32),),
     TypeError, r"linalg.solve: a and b must share one float dtype"),
    (lambda a: ops.linalg.solve(a, np.ones((4, 3, 2), np.float32)),
     (np.ones((2, 3, 3), np.float32),), ValueError, r"linalg.solve: the batch axes"),
    (lambda a: ops.linalg.qr(a, mode="r"), (np.eye(3, dtype=np.float32),), ValueError,
     r"linalg.qr: mode must be 'reduced' or 'complete'"),
    (lambda a: ops.linalg.svd(a), (np.ones((2, 0), np.float32),), ValueError,
     r"linalg.svd: 'x' must have non-empty matrices"),
    (lambda a: ops.linalg.solve_triangular(a, np.ones(4, np.float32)),
     (np.eye(3, dtype=np.float32),), ValueError, r"linalg.solve_triangular: 'b' must be"),
    (lambda a: ops.linalg.lstsq(a, np.ones(4, np.float32)), (np.ones((3, 2), np.float32),),
     ValueError, r"linalg.lstsq: 'b' must be"),
])
def test_bad_operands_of_the_ops(fn, args, error, match):
    with pytest.raises(error, match=match):
        fn(*args)


@pytest.mark.parametrize("name,args,error,match", [
    ("cholesky_forward", (np.ones((2, 3)),), ValueError, "cholesky_forward: 'a' must be square"),
    ("eigh_forward", (np.ones(3),), ValueError, "eigh_forward: 'a' must have at least 2"),
    ("qr_forward", (np.ones((3, 3), np.int32), False), TypeError,
     "qr_forward: 'a' must be a float32 or float64 array, got dtype int32"),
    ("lu_solve_forward", (np.eye(3), np.arange(3, dtype=np.int32), np.ones((3, 1)), 2), TypeError,
     "lu_solve_forward: 'transpose' must be a bool"),
    ("lu_solve_forward", (np.eye(3), np.array([0, 5, 2], np.int32), np.ones((3, 1)), False),
     ValueError, r"lu_solve_forward: 'pivots' must be lu_factor's row swaps"),
    ("lu_solve_forward", (np.eye(3), np.zeros(2, np.int32), np.ones((3, 1)), False),
     ValueError, r"lu_solve_forward: 'pivots' must have shape \(3,\)"),
    ("triangular_solve_forward", (np.eye(3), np.ones((2, 3, 1)), True, False, False),
     ValueError, r"triangular_solve_forward: 'b' must be \(\.\.\., 3, k\) with a's batch"),
    ("svd_forward", (np.eye(3), True, "yes"), TypeError,
     "svd_forward: 'compute_uv' must be a bool"),
])
def test_bad_operands_of_the_kernels(backend, name, args, error, match):
    if "row swaps" in match and backend.is_opencl:
        pytest.skip("device pivots are not read back (the kernel skips a swap out of range)")
    if "float32 or float64" in match:  # the dtype under test: not converted on the way
        args = (backend.ops.asarray(args[0], np.int32) if backend.is_opencl else args[0],
                *args[1:])
    else:
        args = tuple(backend.up(a) for a in args)
    with pytest.raises(error, match=match):
        backend.op(name)(*args)


# -- functional models ------------------------------------------------------------------------
def test_op_nodes_in_a_functional_model_build_predict_and_round_trip(tmp_path):
    """OpLayer infers shapes on all-ones stand-ins: singular and not positive-definite, which
    must not stop inv, solve or cholesky from building."""
    x = pynn.Input((4, 4))
    spd = ops.add(ops.matmul(x, ops.swapaxes(x, -1, -2)), np.eye(4, dtype=np.float32))
    q, r = ops.linalg.qr(x)
    out = ops.concatenate([ops.linalg.inv(spd), ops.linalg.cholesky(spd), q, r,
                           ops.linalg.solve(spd, x)], axis=-1)
    model = pynn.Model(x, out)
    a = rand(np.random.default_rng(20), (3, 4, 4), np.float32)
    s = a.astype(np.float64) @ np.swapaxes(a, -1, -2) + np.eye(4)
    q_want, r_want = np.linalg.qr(a.astype(np.float64))
    want = np.concatenate([np.linalg.inv(s), np.linalg.cholesky(s), q_want, r_want,
                           np.linalg.solve(s, a)], axis=-1)
    got = model.predict(a, verbose=0)
    np.testing.assert_allclose(got, want, atol=2e-4 * np.abs(want).max())
    model.save(tmp_path / "linalg.pynn")
    again = pynn.load_model(tmp_path / "linalg.pynn")
    np.testing.assert_array_equal(again.predict(a, verbose=0), got)


@pytest.mark.opencl
def test_opencl_ops_take_host_operands_as_keras_ops_convert_them():
    from tests.test_ops_device import _on
    rng = np.random.default_rng(21)
    a = _general(rng, (2, 4, 4), np.float32)
    calls = {
        "solve": lambda: ops.linalg.solve(a, np.ones((2, 4, 3), np.float32)),
        "solve_list": lambda: ops.linalg.solve(a[0], [1.0, 2.0, 3.0, 4.0]),
        "solve_triangular": lambda: ops.linalg.solve_triangular(a, a[..., 0], lower=True),
        "lstsq": lambda: ops.linalg.lstsq(a[:, :, :3], a[..., 0]),
        "norm_nuc_axes": lambda: ops.norm(a, "nuc", axis=(0, 2)),
        "det": lambda: ops.linalg.det(a),
        "pinv": lambda: ops.linalg.pinv(a[:, :3, :]),
    }
    for name, call in calls.items():
        with _on("cpu"):
            want = np.asarray(call())
        with _on("opencl"):
            got = np.asarray(call())
        np.testing.assert_allclose(got, want, atol=1e-4 * max(1.0, np.abs(want).max()),
                                   err_msg=name)


@pytest.mark.opencl
def test_opencl_lu_solve_skips_a_device_pivot_out_of_range(backend_opencl):
    dev = backend_opencl.ops
    lu = dev.asarray(np.eye(3, dtype=np.float32))
    bad = dev.asarray(np.array([0, 7, -3], np.int32), np.int32)  # not read back on a device
    b = np.arange(6, dtype=np.float32).reshape(3, 2)
    x = dev.lu_solve_forward(lu, bad, dev.asarray(b), False)
    np.testing.assert_array_equal(dev.to_numpy(x), b)
