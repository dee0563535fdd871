"""dense_forward / dense_backward_input / dense_backward_weight / bias_backward (native/dense.pyx,
opencl/dense.cl) against float64 NumPy (tests/reference/dense_ref.py) and finite differences
through the whole layer.

The checks that hold on both backends take the ``backend`` fixture (tests/conftest.py) and
run one body on each; OpenCL-only checks are marked ``opencl``.
"""

import os

import numpy as np
import pytest
from pynn._native.activation import activation_backward
from pynn._native.dense import (
    bias_backward,
    dense_backward_input,
    dense_backward_weight,
    dense_forward,
)
from pynn._native.info import set_num_threads

from pynn._config import set_num_threads as set_pynn_threads
from pynn._native import dense
from pynn.backend.api import ACTIVATIONS, ACTIVATIONS_NEEDING_INPUT, ACTIVATIONS_ON_ROWS
from tests.backend_util import check_op, rand
from tests.reference.activation_ref import numerical_derivative
from tests.reference.dense_ref import (
    bias_backward_ref,
    dense_backward_input_ref,
    dense_backward_weight_ref,
    dense_forward_ref,
)

ALPHA = {"leaky_relu": 0.3, "elu": 0.7,
         # -- Keras 3's remaining activations (celu needs alpha > 0)
         "celu": 0.6, "hard_shrink": 0.4, "soft_shrink": 0.4, "squareplus": 3.0}
# The activations fused into dense_forward (the row ones of Keras 3 are Activation layers').
FUSED = tuple(a for a in ACTIVATIONS if a not in ACTIVATIONS_ON_ROWS)
# (N, C_in, U): awkward sizes, including ones that are not multiples of any BLAS tile; the
# last two cross the microkernel's blocking (tiles of 96 rows, panels of 64 columns
# computed in 6- and 8-row blocks of 16-lane vectors, a zero-padded last panel).
SHAPES = [(1, 1, 1), (7, 3, 5), (13, 31, 7), (3, 33, 65), (37, 19, 70), (70, 19, 37),
          (97, 129, 130), (193, 17, 67)]
TOL = {np.float32: {"rtol": 1e-4, "atol": 1e-5}, np.float64: {"rtol": 1e-11, "atol": 1e-12}}


@pytest.fixture(params=["micro", "one_region", "serial", "blas_threads"])
def gemm_path(request, monkeypatch):
    """Every way an op can run: pynn's register-blocked microkernel (forced on either side of
    the crossover rule), or BLAS as one OpenMP region of per-band single-threaded GEMMs with
    the epilogue fused, or (a small product) one such GEMM on the calling thread, or BLAS's
    own threads followed by a separate epilogue pass."""
    old = dense._set_gemm_path("micro" if request.param == "micro" else "blas")
    request.addfinalizer(lambda: dense._set_gemm_path(old))
    old_serial = dense._set_serial_macs(float("inf") if request.param == "serial" else 0)
    request.addfinalizer(lambda: dense._set_serial_macs(old_serial))
    if request.param == "micro":
        return request.param
    if request.param == "blas_threads":
        monkeypatch.setattr(dense, "_HAVE_BLAS_THREADS", False)
    elif not dense._one_region_mode():
        pytest.skip("no OpenBLAS whose thread count pynn can hold at one")
    return request.param


def make(rng, n, c, u, dtype):
    x = rng.normal(size=(n, c)).astype(dtype)
    kernel = (rng.normal(size=(c, u)) / np.sqrt(max(c, 1))).astype(dtype)
    bias = rng.normal(size=u).astype(dtype)
    return x, kernel, bias


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", FUSED)
def test_forward_matches_reference(name, shape, use_bias, dtype, gemm_path):
    rng = np.random.default_rng(sum(shape))
    x, kernel, bias = make(rng, *shape, dtype)
    bias = bias if use_bias else None
    alpha = ALPHA.get(name, 0.0)
    y, z = dense_forward(x, kernel, bias, name, alpha)
    want_y, want_z = dense_forward_ref(x, kernel, bias, name, alpha)
    assert y.dtype == dtype and y.shape == (shape[0], shape[2])
    np.testing.assert_allclose(y, want_y, **TOL[dtype], err_msg=f"{name} y")
    if name in ACTIVATIONS_NEEDING_INPUT:
        np.testing.assert_allclose(z, want_z, **TOL[dtype], err_msg=f"{name} z")
    else:
        assert z is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_ops_match_reference(shape, dtype, gemm_path):
    rng = np.random.default_rng(sum(shape) + 1)
    x, kernel, _ = make(rng, *shape, dtype)
    dz = rng.normal(size=(shape[0], shape[2])).astype(dtype)
    dx = dense_backward_input(dz, kernel)
    dw = dense_backward_weight(x, dz)
    db = bias_backward(dz)
    assert dx.dtype == dw.dtype == db.dtype == dtype
    np.testing.assert_allclose(dx, dense_backward_input_ref(dz, kernel), **TOL[dtype])
    np.testing.assert_allclose(dw, dense_backward_weight_ref(x, dz), **TOL[dtype])
    np.testing.assert_allclose(db, bias_backward_ref(dz), **TOL[dtype])


@pytest.mark.parametrize("name", ["linear", "tanh", "softmax", "gelu", "elu"])
def test_layer_gradients_finite_differences(name, gemm_path):
    """d/d(x, kernel, bias) of sum(dy * dense(x)) through activation_backward and the three
    backward ops, against 4th-order central differences in float64."""
    rng = np.random.default_rng(5)
    x, kernel, bias = make(rng, 3, 4, 5, np.float64)
    dy = rng.normal(size=(3, 5))
    alpha = ALPHA.get(name, 0.0)
    y, z = dense_forward(x, kernel, bias, name, alpha)
    dz = activation_backward(dy, z, y, name, alpha)

    def loss(xv, kv, bv):
        return float(np.sum(dy * dense_forward(xv, kv, bv, name, alpha)[0]))

    np.testing.assert_allclose(dense_backward_input(dz, kernel),
                               numerical_derivative(lambda v: loss(v, kernel, bias), x, 1e-4),
                               rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(dense_backward_weight(x, dz),
                               numerical_derivative(lambda v: loss(x, v, bias), kernel, 1e-4),
                               rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(bias_backward(dz),
                               numerical_derivative(lambda v: loss(x, kernel, v), bias, 1e-4),
                               rtol=1e-7, atol=1e-9)


def test_bias_backward_sums_every_axis_but_the_last():
    dz = np.random.default_rng(6).normal(size=(2, 3, 5, 7))
    np.testing.assert_allclose(bias_backward(dz), bias_backward_ref(dz), rtol=1e-12)
    np.testing.assert_allclose(bias_backward(dz[0, 0, 0]), dz[0, 0, 0], rtol=0)
    # Columns beyond one 64-wide block, so several threads own column blocks.
    wide = np.random.default_rng(7).normal(size=(9, 200))
    np.testing.assert_allclose(bias_backward(wide), wide.sum(axis=0), rtol=1e-12)


def test_empty_batch():
    x = np.zeros((0, 3), np.float32)
    kernel = np.ones((3, 4), np.float32)
    y, z = dense_forward(x, kernel, np.ones(4, np.float32), "relu")
    assert y.shape == (0, 4) and z is None
    assert dense_forward(x, kernel, None, "gelu")[1].shape == (0, 4)
    assert dense_backward_input(np.zeros((0, 4), np.float32), kernel).shape == (0, 3)
    dw = dense_backward_weight(x, np.zeros((0, 4), np.float32))
    assert dw.shape == (3, 4) and not dw.any()
    db = bias_backward(np.zeros((0, 4), np.float32))
    assert db.shape == (4,) and not db.any()


def test_zero_input_features_give_act_of_bias():
    bias = np.array([-1.0, 0.5, 2.0])
    y, _ = dense_forward(np.zeros((2, 0)), np.zeros((0, 3)), bias, "relu")
    np.testing.assert_array_equal(y, [[0.0, 0.5, 2.0]] * 2)


def test_mixed_dtypes_follow_x():
    rng = np.random.default_rng(8)
    x, kernel, bias = make(rng, 4, 3, 2, np.float64)
    y, _ = dense_forward(x, kernel.astype(np.float32), bias.astype(np.float32), "tanh")
    assert y.dtype == np.float64
    y32, _ = dense_forward(x.astype(np.float32), kernel, bias, "tanh")
    assert y32.dtype == np.float32


def test_thread_invariance(gemm_path):
    rng = np.random.default_rng(9)
    x, kernel, bias = make(rng, 257, 33, 130, np.float32)
    dz = rng.normal(size=(257, 130)).astype(np.float32)
    out = []
    try:
        for n in (1, 2, 3):
            set_num_threads(n)
            out.append((dense_forward(x, kernel, bias, "softmax")[0],
                        dense_forward(x, kernel, bias, "gelu")[0],
                        bias_backward(dz), dense_backward_input(dz, kernel),
                        dense_backward_weight(x, dz)))
    finally:
        set_num_threads(os.cpu_count() or 1)
    for got in out[1:]:
        for a, b in zip(got, out[0]):
            np.testing.assert_array_equal(a, b)


def test_blas_thread_count_is_restored_after_each_op():
    from threadpoolctl import threadpool_info

    def blas_threads():
        return sorted(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")

    rng = np.random.default_rng(10)
    x, kernel, bias = make(rng, 50, 40, 90, np.float32)
    try:
        set_pynn_threads(2)
        before = blas_threads()
        dense_forward(x, kernel, bias, "relu")
        dense_backward_input(rng.normal(size=(50, 90)).astype(np.float32), kernel)
        dense_backward_weight(x, rng.normal(size=(50, 90)).astype(np.float32))
        assert blas_threads() == before
    finally:
        set_pynn_threads(os.cpu_count() or 1)


def test_non_contiguous_inputs_give_the_same_result(gemm_path):
    rng = np.random.default_rng(10)
    x, kernel, bias = make(rng, 6, 5, 4, np.float64)
    want = dense_forward(x, kernel, bias, "tanh")[0]
    strided = np.zeros((6, 10))
    strided[:, ::2] = x
    for xv in (np.asfortranarray(x), strided[:, ::2]):
        np.testing.assert_array_equal(dense_forward(xv, np.asfortranarray(kernel), bias,
                                                    "tanh")[0], want)
    np.testing.assert_array_equal(bias_backward(np.asfortranarray(x)), bias_backward(x))


def test_read_only_inputs(gemm_path):
    rng = np.random.default_rng(11)
    x, kernel, bias = make(rng, 4, 3, 2, np.float64)
    for a in (x, kernel, bias):
        a.setflags(write=False)
    y, _ = dense_forward(x, kernel, bias, "relu")
    np.testing.assert_allclose(y, dense_forward_ref(x, kernel, bias, "relu")[0], rtol=1e-12)
    dense_backward_input(y, kernel)
    dense_backward_weight(x, y)


def test_read_only_bias_backward():
    dz = np.random.default_rng(12).normal(size=(4, 3))
    dz.setflags(write=False)
    np.testing.assert_allclose(bias_backward(dz), dz.sum(axis=0), rtol=1e-12)


def test_bad_inputs():
    x = np.ones((2, 3), np.float32)
    kernel = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="2 dimensions"):
        dense_forward(np.ones(3), kernel, None)
    with pytest.raises(ValueError, match=r"'kernel' must have shape \(3, \?\)"):
        dense_forward(x, np.ones((4, 4)), None)
    with pytest.raises(ValueError, match=r"'bias' must have shape \(4,?\)"):
        dense_forward(x, kernel, np.ones(3))
    with pytest.raises(ValueError, match="1 dimensions"):
        dense_forward(x, kernel, np.ones((1, 4)))
    with pytest.raises(ValueError, match="unknown activation"):
        dense_forward(x, kernel, None, "swishy")
    with pytest.raises(ValueError, match="'x' is required"):
        dense_forward(None, kernel, None)
    with pytest.raises(ValueError, match="'kernel' is required"):
        dense_forward(x, None, None)
    with pytest.raises(TypeError, match="numeric"):
        dense_forward(np.array([["a", "b", "c"]]), kernel, None)
    with pytest.raises(ValueError, match=r"'kernel' must have shape \(\?, 4\)"):
        dense_backward_input(np.ones((2, 4)), np.ones((3, 5)))
    with pytest.raises(ValueError, match=r"'dz' must have shape \(2, \?\)"):
        dense_backward_weight(x, np.ones((3, 4)))
    with pytest.raises(ValueError, match="'dz' is required"):
        bias_backward(None)


def test_environment_switches_the_one_region_mode_off():
    import subprocess
    import sys

    code = "from pynn._native import dense; print(dense._one_region_mode())"
    env = dict(os.environ, PYNN_DENSE_ONE_REGION="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


# -- over both backends (the `backend` fixture): float32 against the float64 references -----
# Awkward sizes that are not multiples of any tile; GEMM-shaped results within 1e-4. On
# OpenCL check_op also compares with the CPU op.

BACKEND_SHAPES = [(1, 1, 1), (7, 13, 3), (33, 31, 65), (3, 70, 5), (65, 7, 33)]


@pytest.mark.parametrize("n,c,u", BACKEND_SHAPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_dense_forward_linear_on_backend(backend, n, c, u, with_bias):
    rng = np.random.default_rng(n * 1000 + c * 10 + u)
    x, w, b = rand(rng, (n, c)), rand(rng, (c, u)), rand(rng, (u,))
    check_op(backend, "dense_forward", x, w, b if with_bias else None, "linear", 0.0,
             ref=lambda *a: (dense_forward_ref(*a)[0], None), kind="gemm")


@pytest.mark.parametrize("act", FUSED)
def test_dense_forward_every_activation_on_backend(backend, act):
    rng = np.random.default_rng(ACTIVATIONS.index(act))
    x, w, b = rand(rng, (13, 7)), rand(rng, (7, 11)) * 0.5, rand(rng, (11,))
    alpha = 0.3 if act in ("leaky_relu", "elu") else ALPHA.get(act, 0.0)

    def ref(*args):
        y, z = dense_forward_ref(*args)
        return y, (z if act in ACTIVATIONS_NEEDING_INPUT else None)

    check_op(backend, "dense_forward", x, w, b, act, alpha, ref=ref, kind="gemm")


@pytest.mark.parametrize("n,c,u", BACKEND_SHAPES)
def test_dense_backward_on_backend(backend, n, c, u):
    rng = np.random.default_rng(7 + n + c + u)
    x, w, dz = rand(rng, (n, c)), rand(rng, (c, u)), rand(rng, (n, u))
    check_op(backend, "dense_backward_input", dz, w, ref=dense_backward_input_ref, kind="gemm")
    check_op(backend, "dense_backward_weight", x, dz, ref=dense_backward_weight_ref,
             kind="gemm")


@pytest.mark.parametrize("shape", [(1,), (7,), (13, 5), (3, 7, 5, 9), (1100, 3), (4, 0)])
def test_bias_backward_on_backend(backend, shape):
    rng = np.random.default_rng(len(shape))
    dz = rand(rng, shape)
    got, _ = check_op(backend, "bias_backward", dz, ref=bias_backward_ref, kind="gemm")
    again = backend.ops.bias_backward(backend.up(dz))
    assert np.array_equal(backend.down(got), backend.down(again))


def test_dense_empty_batch_and_empty_reduction_on_backend(backend):
    ops, up, down = backend.ops, backend.up, backend.down
    f32 = np.float32
    x, w, b = up(np.zeros((0, 4), f32)), up(np.ones((4, 3), f32)), up(np.ones(3, f32))
    y, _ = ops.dense_forward(x, w, b, "relu", 0.0)
    assert y.shape == (0, 3)
    assert ops.dense_backward_input(up(np.zeros((0, 3), f32)), w).shape == (0, 4)
    dw = ops.dense_backward_weight(x, up(np.zeros((0, 3), f32)))
    assert dw.shape == (4, 3) and np.array_equal(down(dw), np.zeros((4, 3)))
    # No input features: y = act(bias).
    y, _ = ops.dense_forward(up(np.zeros((2, 0), f32)), up(np.zeros((0, 3), f32)),
                             up(np.array([-1.0, 0.5, 2.0], f32)), "relu", 0.0)
    assert np.array_equal(down(y), [[0, 0.5, 2.0]] * 2)
    assert np.array_equal(down(ops.bias_backward(ops.zeros((0, 5)))), np.zeros(5, f32))


# -- OpenCL only: split-K, tile independence, vector widths, the host-array policy -----------


def _gemm():
    from pynn.backend.opencl import gemm

    return gemm


@pytest.mark.opencl
def test_dense_backward_weight_split_k_is_exact_and_reproducible_opencl(backend_opencl):
    ocl = backend_opencl.ops
    rng = np.random.default_rng(3)
    n, c, u = 1537, 5, 3  # a long reduction onto a tiny output: several split-K slots
    splits, _ = _gemm()._split_plan(c, u, n, ocl.gemm_tiles())
    if ocl.device_info()["compute_units"] * 4 > 1:
        assert splits > 1, "this shape should take the split-K path"
    x, dz = rand(rng, (n, c)), rand(rng, (n, u))
    dw, _ = check_op(backend_opencl, "dense_backward_weight", x, dz,
                     ref=dense_backward_weight_ref, kind="gemm", what="split-K")
    again = ocl.dense_backward_weight(ocl.asarray(x), ocl.asarray(dz))
    assert np.array_equal(dw.get(), again.get())


@pytest.mark.opencl
def test_dense_results_do_not_depend_on_tiles_opencl(ocl, monkeypatch):
    rng = np.random.default_rng(11)
    x, w = ocl.asarray(rand(rng, (37, 29))), ocl.asarray(rand(rng, (29, 19)))
    dz = ocl.asarray(rand(rng, (37, 19)))
    first = [ocl.dense_forward(x, w, None, "tanh", 0.0)[0].get(),
             ocl.dense_backward_input(dz, w).get()]
    index = ocl.device_info()["index"]
    monkeypatch.setitem(_gemm()._tiles_by_device, index, dict(_gemm().FALLBACK_TILES))
    second = [ocl.dense_forward(x, w, None, "tanh", 0.0)[0].get(),
              ocl.dense_backward_input(dz, w).get()]
    for a, b in zip(first, second):
        assert np.array_equal(a, b), "summation order changed with the tile sizes"


@pytest.mark.opencl
def test_vector_width_choice_opencl(ocl):
    cfg = dict(ocl.gemm_tiles(), VW=4)
    assert _gemm()._vec_width(cfg, 64) == 4 and _gemm()._vec_width(cfg, 66) == 1
    assert _gemm()._vec_width(cfg, 33) == 1 and _gemm()._vec_width(cfg, 1) == 1
    assert _gemm()._vec_width(cfg, 12, 6) == 1 and _gemm()._vec_width(cfg, 12, 8) == 4
    assert _gemm()._vec_width(dict(cfg, VW=2), 66) == 2
    assert _gemm()._vec_width(dict(cfg, VW=1), 64) == 1


# Vector reads: the device's width where it divides the leading dimensions (4 | 36), scalar
# otherwise (66, odd); every width sums in the same order, so vector and scalar builds agree
# bit for bit.
VECTOR_DENSE_SHAPES = [(36, 64, 66), (33, 8, 4), (4, 66, 129), (65, 3, 36), (7, 130, 12)]


@pytest.mark.parametrize("n,c,u", VECTOR_DENSE_SHAPES)
@pytest.mark.opencl
def test_dense_vector_reads_match_scalar_opencl(backend_opencl, monkeypatch, n, c, u):
    ocl = backend_opencl.ops
    rng = np.random.default_rng(n * 1000 + c * 10 + u)
    x, w, b, dz = rand(rng, (n, c)), rand(rng, (c, u)), rand(rng, (u,)), rand(rng, (n, u))
    index = ocl.device_info()["index"]
    results = {}
    for vw in (4, 1):
        monkeypatch.setitem(_gemm()._tiles_by_device, index, dict(ocl.gemm_tiles(), VW=vw))
        results[vw] = [
            check_op(backend_opencl, "dense_forward", x, w, b, "relu", 0.0,
                     ref=lambda *a: (dense_forward_ref(*a)[0], None), kind="gemm",
                     what=f"dense_forward {n}x{c}x{u} VW={vw}")[1][0],
            check_op(backend_opencl, "dense_backward_input", dz, w,
                     ref=dense_backward_input_ref, kind="gemm",
                     what=f"dense_backward_input {n}x{c}x{u} VW={vw}")[1],
            check_op(backend_opencl, "dense_backward_weight", x, dz,
                     ref=dense_backward_weight_ref, kind="gemm",
                     what=f"dense_backward_weight {n}x{c}x{u} VW={vw}")[1]]
    for name, got4, got1 in zip(("forward", "backward_input", "backward_weight"), results[4],
                                results[1]):
        assert np.array_equal(got4, got1), f"dense_{name}: vector and scalar reads differ"


@pytest.mark.opencl
def test_dense_two_wide_reads_opencl(backend_opencl, monkeypatch):
    # A device tuned to VW = 2 reads pairs; 6, 10, 14 are even but not multiples of 4.
    ocl = backend_opencl.ops
    rng = np.random.default_rng(3)
    x, w, dz = rand(rng, (6, 10)), rand(rng, (10, 14)), rand(rng, (6, 14))
    index = ocl.device_info()["index"]
    monkeypatch.setitem(_gemm()._tiles_by_device, index, dict(ocl.gemm_tiles(), VW=2))
    assert _gemm()._vec_width(ocl.gemm_tiles(), 6, 10, 14) == 2
    check_op(backend_opencl, "dense_forward", x, w, None, "linear", 0.0,
             ref=lambda *a: (dense_forward_ref(*a)[0], None), kind="gemm", what="VW=2")
    check_op(backend_opencl, "dense_backward_input", dz, w, ref=dense_backward_input_ref,
             kind="gemm", what="VW=2")
    check_op(backend_opencl, "dense_backward_weight", x, dz, ref=dense_backward_weight_ref,
             kind="gemm", what="VW=2")


@pytest.mark.opencl
def test_host_arrays_go_up_through_asarray_only_opencl(ocl):
    """One policy for every OpenCL op (api.py): host data is a TypeError naming asarray, and
    asarray takes any host layout to the same device array."""
    rng = np.random.default_rng(9)
    x, w = rand(rng, (5, 4)), rand(rng, (4, 3))
    wd = ocl.asarray(w)
    for op, args in (("dense_forward", (x, wd, None, "linear", 0.0)),
                     ("dense_forward", (ocl.asarray(x), w, None, "linear", 0.0)),
                     ("dense_backward_weight", (x, ocl.asarray(x))),
                     ("bias_backward", (x,)),
                     ("conv2d_forward", (x[None, None], wd[None], None, 1, "same", 1,
                                         "linear", 0.0))):
        with pytest.raises(TypeError, match=f"{op}: .* \\(upload with backend.asarray\\)"):
            getattr(ocl, op)(*args)
    want = ocl.dense_forward(ocl.asarray(x), wd, None, "linear", 0.0)[0].get()
    fortran = np.asfortranarray(x)
    readonly = x.copy()
    readonly.flags.writeable = False
    strided = np.repeat(x, 2, axis=1)[:, ::2]
    for variant in (fortran, readonly, strided, x.astype(np.float64)):
        got = ocl.dense_forward(ocl.asarray(variant), wd, None, "linear", 0.0)[0].get()
        assert np.array_equal(got, want)


@pytest.mark.opencl
def test_dense_bad_inputs_opencl(ocl):
    up = ocl.asarray
    x, w = up(np.ones((5, 4))), up(np.ones((4, 3)))
    with pytest.raises(ValueError, match="dense_forward: 'x' is required"):
        ocl.dense_forward(None, w, None, "linear", 0.0)
    with pytest.raises(ValueError, match=r"'kernel' must have shape \(4, \?\)"):
        ocl.dense_forward(x, up(np.ones((3, 3), np.float32)), None, "linear", 0.0)
    with pytest.raises(ValueError, match=r"'bias' must have shape \(3,\)"):
        ocl.dense_forward(x, w, up(np.ones(4, np.float32)), "linear", 0.0)
    with pytest.raises(ValueError, match="2 dimensions"):
        ocl.dense_forward(up(np.ones(5, np.float32)), w, None, "linear", 0.0)
    with pytest.raises(ValueError, match="unknown activation"):
        ocl.dense_forward(x, w, None, "swishy", 0.0)
    with pytest.raises(TypeError, match="float32 only"):
        ocl.asarray(np.ones((5, 4)), np.float64)
    with pytest.raises(TypeError, match="asarray"):
        ocl.dense_backward_input(np.array([["a"]]), w)
    with pytest.raises(ValueError, match=r"'dz' must have shape \(5, \?\)"):
        ocl.dense_backward_weight(x, up(np.ones((4, 3), np.float32)))
    with pytest.raises(ValueError, match="C-contiguous"):
        ocl.dense_backward_input(up(np.ones((5, 6), np.float32))[:, ::2], w)
    with pytest.raises(ValueError, match="at least 1 dimension"):
        ocl.bias_backward(up(np.float32(3.0)))


@pytest.mark.parametrize("n,c,u", [(9, 515, 1301), (40, 300, 771)])
def test_wide_softmax_takes_column_bands_then_whole_rows(n, c, u):
    """A softmax layer wider than its batch: column bands (bias each), then softmax over
    whole rows; against float64, and the same bits for 1, 2 and 3 threads."""
    rng = np.random.default_rng(n)
    x, kernel, bias = make(rng, n, c, u, np.float32)
    assert n * c * u >= 6e6   # above the serial threshold: the banded road
    out = []
    try:
        for threads in (1, 2, 3):
            set_num_threads(threads)
            out.append(dense_forward(x, kernel, bias, "softmax")[0])
    finally:
        set_num_threads(os.cpu_count() or 1)
    want = dense_forward_ref(x.astype(np.float64), kernel.astype(np.float64),
                             bias.astype(np.float64), "softmax")
    want = want[0] if isinstance(want, tuple) else want
    np.testing.assert_allclose(out[0], want, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(out[0].sum(axis=1), 1.0, rtol=1e-5)
    for got in out[1:]:
        np.testing.assert_array_equal(got, out[0])


def test_bias_backward_sums_in_double():
    """A linear layer's bias gradient (a conv's N*H*W rows) is summed in double like every
    other layer's: within one rounding of the float64 sum (float32 sums drifted 75 ulp at
    32 Ki rows)."""
    rng = np.random.default_rng(3)
    dz = (rng.normal(size=(32771, 67)) + 0.1).astype(np.float32)
    want = dz.astype(np.float64).sum(axis=0)
    got = bias_backward(dz)
    assert got.dtype == np.float32
    ulps = np.abs(got - want) / np.spacing(np.abs(want).astype(np.float32))
    assert ulps.max() <= 0.5 + 1e-9, ulps.max()


# -- dense_backward_input_activation: the input gradient through the layer below's activation
# (N, U, C_below): wider than tall (column bands), taller than wide (the two ops), a product
# under the serial threshold, one row; 520 columns span two of activation_bias_backward's
# 512-column tiles, so a band's sums cross a tile edge.
BELOW_SHAPES = [(128, 256, 520), (37, 19, 301), (300, 64, 40), (64, 256, 256), (9, 7, 5),
                (1, 33, 70), (61, 130, 1100)]


def _below_operands(rng, n, u, c, dtype, act="relu"):
    from tests.reference.activation_ref import activation_forward_ref

    dz = rng.normal(size=(n, u)).astype(dtype)
    kernel = rng.normal(size=(c, u)).astype(dtype)
    z = rng.normal(size=(n, c)).astype(dtype)
    y = activation_forward_ref(z, act, ALPHA.get(act, 0.0)).astype(dtype)
    return dz, kernel, z, y


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", BELOW_SHAPES, ids=str)
@pytest.mark.parametrize("act", ["relu", "sigmoid", "gelu", "linear", "softmax"])
def test_backward_input_activation_is_the_two_ops(act, shape, dtype):
    """The same bits as dense_backward_input then activation_bias_backward (bias_backward
    for linear): relu with a bias makes them band by band, the rest runs the two ops; and
    within float64 of the reference."""
    from pynn._native.activation import activation_bias_backward
    from pynn._native.dense import dense_backward_input_activation
    from tests.reference.dense_ref import dense_backward_input_activation_ref

    rng = np.random.default_rng(sum(shape))
    dz, kernel, z, y = _below_operands(rng, *shape, dtype, act)
    alpha = ALPHA.get(act, 0.0)
    for use_bias in (True, False):
        got, db = dense_backward_input_activation(dz, kernel, z, y, act, alpha, use_bias)
        g = dense_backward_input(dz, kernel)
        if act == "linear":
            want, want_db = g, bias_backward(g)
        else:
            want, want_db = activation_bias_backward(g, z, y, act, alpha)
            if not use_bias:
                want = activation_backward(g, z, y, act, alpha)
        np.testing.assert_array_equal(got, want)
        if use_bias:
            np.testing.assert_array_equal(db, want_db)
        else:
            assert db is None
        ref, ref_db = dense_backward_input_activation_ref(dz, kernel, z, y, act, alpha,
                                                          use_bias)
        np.testing.assert_allclose(got, ref, **TOL[dtype])
        if use_bias:
            np.testing.assert_allclose(db, ref_db, rtol=TOL[dtype]["rtol"],
                                       atol=TOL[dtype]["atol"] * shape[0])


def test_backward_input_activation_thread_and_threshold_invariance():
    """The fused road's bits for 1-3 threads, banded or on the calling thread."""
    from pynn._native.dense import dense_backward_input_activation

    rng = np.random.default_rng(4)
    dz, kernel, z, y = _below_operands(rng, 61, 130, 1100, np.float32)
    want = dense_backward_input_activation(dz, kernel, None, y, "relu")
    try:
        for threads in (1, 2, 3):
            set_num_threads(threads)
            for macs in (0.0, float("inf")):
                old = dense._set_serial_macs(macs)
                try:
                    got = dense_backward_input_activation(dz, kernel, None, y, "relu")
                finally:
                    dense._set_serial_macs(old)
                np.testing.assert_array_equal(got[0], want[0])
                np.testing.assert_array_equal(got[1], want[1])
    finally:
        set_num_threads(os.cpu_count() or 1)


def test_backward_input_activation_bad_inputs():
    from pynn._native.dense import dense_backward_input_activation

    rng = np.random.default_rng(5)
    dz, kernel, z, y = _below_operands(rng, 7, 5, 9, np.float32)
    op = dense_backward_input_activation
    with pytest.raises(ValueError, match=r"'y' \(the layer below's output\) is required"):
        op(dz, kernel, z, None, "relu")
    with pytest.raises(ValueError, match="'gelu' needs the pre-activation 'z'"):
        op(dz, kernel, None, y, "gelu")
    with pytest.raises(ValueError, match=r"'y' must have shape \(7, 9\)"):
        op(dz, kernel, None, y[:, :8], "relu")
    with pytest.raises(ValueError, match=r"'z' must have shape \(7, 9\)"):
        op(dz, kernel, z[:6], y, "gelu")
    with pytest.raises(ValueError, match=r"'kernel' must have shape \(\?, 5\)"):
        op(dz, kernel[:, :4], None, y, "relu")
    with pytest.raises(ValueError, match="unknown activation"):
        op(dz, kernel, None, y, "nope")
    with pytest.raises(ValueError, match="2 dimensions"):
        op(dz.reshape(-1), kernel, None, y, "relu")


@pytest.mark.parametrize("n,u,c", [(37, 19, 301), (9, 7, 5), (64, 130, 70)])
def test_dense_backward_input_activation_on_backend(backend, n, u, c):
    from tests.reference.dense_ref import dense_backward_input_activation_ref

    rng = np.random.default_rng(n + u + c)
    dz, kernel, z, y = (a.astype(backend.dtype) for a in
                        _below_operands(rng, n, u, c, np.float64))
    check_op(backend, "dense_backward_input_activation", dz, kernel, None, y, "relu", 0.0,
             True, ref=lambda *a: dense_backward_input_activation_ref(dz, kernel, z, y,
                                                                     "relu"),
             kind="gemm")
