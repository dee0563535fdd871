"""Dense on pynn's register-blocked microkernel (native/dense.pyx, native/_microkernel.h):
the crossover rule between it and BLAS, both sides of it through the layer, the weights a
training step reads after an optimizer update or set_weights, and Keras parity on the
microkernel. The op-level checks (every activation in the epilogue, odd shapes, finite
differences, thread-count invariance) run on the microkernel through test_dense.py's
``gemm_path`` fixture."""

import os

import numpy as np
import pytest

import pynn
from pynn._native import dense
from tests.reference.dense_ref import (
    dense_backward_input_ref,
    dense_backward_weight_ref,
    dense_forward_ref,
)


@pytest.fixture
def path():
    """Sets the gemm path for one test and restores the previous one."""
    old = dense._set_gemm_path("auto")
    yield dense._set_gemm_path
    dense._set_gemm_path(old)


def test_rule_takes_the_microkernel_only_where_it_wins_by_wall_time():
    f32 = np.float32
    for intel in (False, True):
        # a small batch's input gradient through wide layers (OpenBLAS's small-M kernel lags)
        assert dense._micro_rule("backward_input", f32, 32, 1024, 1024, intel=intel)
        assert dense._micro_rule("backward_input", f32, 8, 4096, 4096, intel=intel)
        # measured to lose or tie on both kinds: larger batches' input gradients, every
        # kernel gradient, float64
        assert not dense._micro_rule("backward_weight", f32, 784, 512, 128, intel=intel)
        assert not dense._micro_rule("backward_input", f32, 128, 784, 512, intel=intel)
        assert not dense._micro_rule("backward_input", f32, 128, 1024, 1024, intel=intel)
        assert not dense._micro_rule("backward_input", np.float64, 32, 1024, 1024,
                                     intel=intel)
        assert not dense._micro_rule("forward", np.float64, 128, 512, 784, intel=intel)
        # the largest forwards, and those small enough for one GEMM on the calling thread
        assert not dense._micro_rule("forward", f32, 128, 1024, 2048, intel=intel)
        assert not dense._micro_rule("forward", f32, 128, 10, 256, intel=intel)
    # the MLP's forwards: the microkernel on the Intel kind only
    assert not dense._micro_rule("forward", f32, 128, 512, 784, intel=False)
    assert not dense._micro_rule("forward", f32, 64, 256, 512, intel=False)
    assert dense._micro_rule("forward", f32, 128, 512, 784, intel=True)
    assert dense._micro_rule("forward", f32, 64, 256, 512, intel=True)
    # between the serial threshold and 6M multiply-adds only with 16 rows and more: a few
    # rows pack the whole kernel for little work
    assert dense._micro_rule("forward", f32, 64, 256, 256, intel=True)
    assert dense._micro_rule("forward", f32, 16, 512, 512, intel=True)
    assert not dense._micro_rule("forward", f32, 8, 256, 512, intel=True)
    assert not dense._micro_rule("forward", f32, 1, 256, 4096, intel=True)
    assert dense._micro_rule("forward", f32, 1, 2048, 4096, intel=True)   # 8M: as measured


def test_products_from_a_million_multiply_adds_take_the_bands():
    """A training step's back-to-back ops find the team's worker awake: from 1M multiply-adds
    a product is banded (the 30-layer model's step 26-37% faster on the Intel kind), below
    it one GEMM on the calling thread; either road gives the same bits at 1-3 threads."""
    from pynn._native.info import set_num_threads

    rng = np.random.default_rng(11)
    for rows, road in ((97, 0.0), (37, float("inf"))):   # 1.02M and 0.39M multiply-adds
        x = rng.normal(size=(rows, 131)).astype(np.float32)
        dz = rng.normal(size=(rows, 79)).astype(np.float32)
        kernel = rng.normal(size=(131, 79)).astype(np.float32)
        assert (rows * 131 * 79 >= dense._SERIAL_MACS_DEFAULT) == (road == 0.0)
        ops = (lambda: dense.dense_backward_weight(x, dz),
               lambda: dense.dense_backward_input(dz, kernel))
        old = dense._set_serial_macs(road)
        try:
            forced = [op() for op in ops]
        finally:
            dense._set_serial_macs(old)
        try:
            for threads in (1, 2, 3):
                set_num_threads(threads)
                for op, want in zip(ops, forced):
                    np.testing.assert_array_equal(op(), want)
        finally:
            set_num_threads(os.cpu_count() or 1)
        np.testing.assert_allclose(forced[0], x.astype(np.float64).T @ dz, rtol=1e-4,
                                   atol=1e-4)
def test_rule_follows_the_microkernel_level():
    """The Intel forward crossover was measured on the avx512 kernels: another level keeps
    BLAS."""
    if not dense._INTEL or "avx2" not in pynn._config.available_kernels():
        pytest.skip("needs an Intel CPU with an avx2 level")
    with pynn._config.kernel("avx2"):
        assert not dense._micro_rule("forward", np.float32, 128, 512, 784)
    with pynn._config.kernel("avx512"):
        assert dense._micro_rule("forward", np.float32, 128, 512, 784)


def test_set_gemm_path_rejects_unknown_names(path):
    with pytest.raises(ValueError, match="'auto', 'micro' or 'blas', got 'fast'"):
        path("fast")


@pytest.mark.parametrize("n,c,u", [(32, 1030, 1025), (5, 7, 3)])  # either side of the rule
def test_auto_path_matches_reference_on_both_sides_of_the_crossover(path, n, c, u):
    rng = np.random.default_rng(n + c + u)
    x = rng.normal(size=(n, c)).astype(np.float32)
    kernel = (rng.normal(size=(c, u)) / np.sqrt(c)).astype(np.float32)
    bias = rng.normal(size=u).astype(np.float32)
    dz = rng.normal(size=(n, u)).astype(np.float32)
    assert dense._micro_wins("backward_input", np.float32, n, c, u) == (n == 32)
    results = {}
    for p in ("auto", "micro", "blas"):
        path(p)
        results[p] = (dense.dense_forward(x, kernel, bias, "relu")[0],
                      dense.dense_backward_input(dz, kernel), dense.dense_backward_weight(x, dz))
    want = (dense_forward_ref(x, kernel, bias, "relu", 0.0)[0],
            dense_backward_input_ref(dz, kernel), dense_backward_weight_ref(x, dz))
    for p, got in results.items():
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=p)


def _mlp(units=(130, 67)):
    L = pynn.layers
    model = pynn.Sequential([L.Input((97,)), L.Dense(units[0], activation="relu"),
                             L.Dense(units[1], activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def _forward_ref(model, x):
    w1, b1, w2, b2 = model.get_weights()
    h = dense_forward_ref(x, w1, b1, "relu", 0.0)[0]
    return dense_forward_ref(h, w2, b2, "softmax", 0.0)[0]


@pytest.mark.parametrize("gemm", ["micro", "blas"])
def test_training_step_reads_the_weights_after_each_update_and_set_weights(path, gemm):
    """No packed copy of the weights outlives an op: the forward after an optimizer step
    and after set_weights computes with the new values."""
    path(gemm)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(101, 97)).astype(np.float32)
    y = rng.integers(0, 67, 101)
    model = _mlp()
    before = model.get_weights()
    for _ in range(2):
        model.train_on_batch(x, y)
        np.testing.assert_allclose(model.predict(x, verbose=0), _forward_ref(model, x),
                                   rtol=1e-4, atol=1e-6)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    fresh = [rng.normal(size=w.shape).astype(np.float32) * 0.1 for w in before]
    model.set_weights(fresh)
    np.testing.assert_allclose(model.predict(x, verbose=0), _forward_ref(model, x),
                               rtol=1e-4, atol=1e-6)
    # the loss of the first step after set_weights is that of the new weights
    probs = _forward_ref(model, x)
    want = float(np.mean(-np.log(probs[np.arange(101), y])))
    assert np.isclose(float(np.ravel(model.train_on_batch(x, y))[0]), want, rtol=1e-4)


def test_microkernel_and_blas_train_alike(path):
    """Three Adam steps of the same model on each path give the same weights to float32
    rounding of the two summation orders."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(128, 97)).astype(np.float32)
    y = rng.integers(0, 67, 128)
    start = _mlp().get_weights()
    weights = {}
    for gemm in ("micro", "blas"):
        path(gemm)
        model = _mlp()
        model.set_weights(start)
        for _ in range(3):
            model.train_on_batch(x, y)
        weights[gemm] = model.get_weights()
    for a, b in zip(weights["micro"], weights["blas"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_keras_parity_on_the_microkernel(path):
    """Dense on the microkernel gives Keras's outputs from Keras's weights (torch backend)."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("keras runs on another backend")
    path("micro")
    rng = np.random.default_rng(6)
    x = rng.normal(size=(33, 97)).astype(np.float32)
    k_model = keras.Sequential([keras.layers.Input((97,)),
                                keras.layers.Dense(130, activation="gelu"),
                                keras.layers.Dense(67, activation="softmax")])
    p_model = pynn.Sequential([pynn.layers.Input((97,)),
                               pynn.layers.Dense(130, activation="gelu"),
                               pynn.layers.Dense(67, activation="softmax")])
    p_model.set_weights(k_model.get_weights())
    want = np.asarray(k_model.predict(x, verbose=0))
    np.testing.assert_allclose(p_model.predict(x, verbose=0), want, rtol=1e-4, atol=1e-6)
