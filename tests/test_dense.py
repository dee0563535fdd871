"""dense_forward / dense_backward_input / dense_backward_weight / bias_backward
(native/dense.pyx) against float64 NumPy (tests/reference/activation_ref.py) and finite
differences through the whole layer."""

import os

import numpy as np
import pytest

from pynn._native import dense
from pynn._native.activation import activation_backward
from pynn._native.dense import (
    bias_backward,
    dense_backward_input,
    dense_backward_weight,
    dense_forward,
)
from pynn._config import set_num_threads as set_pynn_threads
from pynn._native.info import set_num_threads
from pynn.backend.api import ACTIVATIONS, ACTIVATIONS_NEEDING_INPUT
from tests.reference.activation_ref import numerical_derivative
from tests.reference.dense_ref import (
    bias_backward_ref,
    dense_backward_input_ref,
    dense_backward_weight_ref,
    dense_forward_ref,
)

ALPHA = {"leaky_relu": 0.3, "elu": 0.7}
# (N, C_in, U): awkward sizes, including ones that are not multiples of any BLAS tile.
SHAPES = [(1, 1, 1), (7, 3, 5), (13, 31, 7), (3, 33, 65), (37, 19, 70), (70, 19, 37)]
TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-11, atol=1e-12)}


@pytest.fixture(params=["one_region", "blas_threads"])
def gemm_path(request, monkeypatch):
    """Both ways an op can run: one OpenMP region of per-band single-threaded GEMMs with the
    epilogue fused, or BLAS's own threads followed by a separate epilogue pass."""
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
@pytest.mark.parametrize("name", ACTIVATIONS)
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
def test_layer_gradients_finite_differences(name):
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


def test_thread_invariance():
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


def test_non_contiguous_inputs_give_the_same_result():
    rng = np.random.default_rng(10)
    x, kernel, bias = make(rng, 6, 5, 4, np.float64)
    want = dense_forward(x, kernel, bias, "tanh")[0]
    strided = np.zeros((6, 10))
    strided[:, ::2] = x
    for xv in (np.asfortranarray(x), strided[:, ::2]):
        np.testing.assert_array_equal(dense_forward(xv, np.asfortranarray(kernel), bias,
                                                    "tanh")[0], want)
    np.testing.assert_array_equal(bias_backward(np.asfortranarray(x)), bias_backward(x))


def test_read_only_inputs():
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
        dense_forward(x, kernel, None, "swish")
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
