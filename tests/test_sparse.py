"""Sparse inference (native/sparse.pyx, opencl/sparse.cl, pynn.compression.sparse) against the
float64 oracle in tests/reference/sparse_ref.py, OpenCL against the CPU, thread counts, bad
inputs, and the inference plan's switch to the sparse kernel for pruned Dense layers."""

import numpy as np
import pytest

import pynn
from pynn import layers
from pynn.compression.sparse import SPARSE_MIN_SPARSITY, SparseDense, kernel_by_unit
from tests.backend_util import check_op, rand
from tests.reference import sparse_ref as ref


@pytest.fixture
def rng():
    return np.random.default_rng(1819)


def pruned_kernel(rng, shape, sparsity, dtype=np.float32):
    kernel = rand(rng, shape, dtype)
    kernel[rng.random(shape) < sparsity] = 0
    kernel.flat[0] = 0.75  # never all zero
    return kernel


# (N, C, U, sparsity): batch 1-3 take the gather-dot path, 4 and more the batch-column path;
# sizes odd, a unit with no nonzero (sparsity 0.97 on 7 inputs), an empty batch.
CASES = [(1, 7, 5, 0.5), (3, 33, 17, 0.9), (4, 33, 17, 0.9), (7, 65, 31, 0.8),
         (33, 31, 65, 0.95), (2, 7, 9, 0.97), (0, 5, 3, 0.5), (5, 1, 1, 0.0)]


@pytest.mark.parametrize("n,c,u,sp", CASES, ids=[f"{n}x{c}x{u}-{sp}" for n, c, u, sp in CASES])
@pytest.mark.parametrize("activation", ["linear", "relu", "softmax", "gelu"])
def test_sparse_dense_forward_matches_reference(target, rng, n, c, u, sp, activation):
    kernel = pruned_kernel(rng, (c, u), sp, target.dtype)
    indptr, indices, values = kernel_by_unit(kernel)
    x = rand(rng, (n, c), target.dtype)
    bias = rand(rng, (u,), target.dtype)
    check_op(target, "sparse_dense_forward", x, indptr, indices, values, bias, activation, 0.0,
             ref=ref.sparse_dense_forward_ref, kind="gemm")
    check_op(target, "sparse_dense_forward", x, indptr, indices, values, None, activation,
             0.0, ref=ref.sparse_dense_forward_ref, kind="gemm")


def test_sparse_equals_dense_forward(backend, rng):
    kernel = pruned_kernel(rng, (47, 23), 0.9)
    x, bias = rand(rng, (9, 47)), rand(rng, (23,))
    want = backend.down(backend.op("dense_forward")(backend.up(x), backend.up(kernel),
                                                    backend.up(bias), "elu", 1.0)[0])
    check_op(backend, "sparse_dense_forward", x, *kernel_by_unit(kernel), bias, "elu", 1.0,
             ref=want, kind="gemm")


def test_kernel_by_unit_matches_reference(rng):
    kernel = pruned_kernel(rng, (19, 11), 0.8)
    kernel[:, 3] = 0  # a unit without nonzeros
    for got, want in zip(kernel_by_unit(kernel), ref.dense_kernel_by_unit_ref(kernel)):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype


def test_out_of_range_indices_are_skipped_on_both_backends(backend, rng):
    """A corrupt index array costs its terms, never a read past x: both kernels skip an index
    outside [0, C) and clamp offsets to the nonzeros, and agree on the result."""
    x = rand(rng, (5, 6))
    indptr = np.array([0, 2, 5, 9], np.int32)  # the last offset is past nnz = 6
    indices = np.array([0, 6, 1, -1, 5, 2], np.int32)
    values = rand(rng, (6,))
    want = np.stack([x[:, 0] * values[0],
                     x[:, 1] * values[2] + x[:, 5] * values[4],
                     x[:, 2] * values[5]], axis=1)
    check_op(backend, "sparse_dense_forward", x, indptr, indices, values, None, "linear", 0.0,
             ref=want, kind="gemm")


@pytest.mark.parametrize("n", [2, 40])
def test_thread_count_does_not_change_the_result(rng, n, num_threads):
    from pynn.backend import cpu

    kernel = pruned_kernel(rng, (301, 129), 0.9)
    x = rand(rng, (n, 301))
    results = []
    for threads in (1, 2, 3):
        num_threads(threads)
        results.append(cpu.sparse_dense_forward(x, *kernel_by_unit(kernel), None, "relu"))
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])


@pytest.mark.parametrize("args,message", [
    (lambda x, p, i, v, b: (x[0], p, i, v, b),
     r"sparse_dense_forward: 'x' must have 2 dimensions"),
    (lambda x, p, i, v, b: (x, p, i, v[:-1], b),
     r"sparse_dense_forward: 'values' .*shape"),
    (lambda x, p, i, v, b: (x, p, i, v, b[:-1], ),
     r"sparse_dense_forward: 'bias' .*shape"),
    (lambda x, p, i, v, b: (x, p[:0], i, v, b),
     r"sparse_dense_forward: 'indptr' must hold units \+ 1 >= 1 offsets, got shape \(0,\)"),
])
def test_sparse_bad_input_names_op_expected_and_got(backend, rng, args, message):
    kernel = pruned_kernel(rng, (6, 4), 0.5)
    x, bias = rand(rng, (3, 6)), rand(rng, (4,))
    call = [backend.up(a) for a in args(x, *kernel_by_unit(kernel), bias)]
    with pytest.raises((ValueError, TypeError), match=message):
        backend.op("sparse_dense_forward")(*call, "relu", 0.0)


# Sparse Conv2D: (N, H, W, C, KH, KW, F, strides, padding, dilation, sparsity); odd sizes,
# strides and dilation on either axis, a window larger than the input, an empty batch, a
# filter without nonzeros (0.97 on 2x2x2 taps).
CONV_CASES = [(2, 9, 7, 3, 3, 3, 5, (1, 1), "same", (1, 1), 0.8),
              (3, 11, 13, 4, 2, 3, 6, (2, 1), "valid", (1, 2), 0.9),
              (1, 8, 8, 5, 3, 3, 7, (2, 2), "same", (2, 1), 0.5),
              (2, 3, 4, 2, 5, 5, 3, (1, 1), "same", (1, 1), 0.8),
              (4, 6, 5, 2, 2, 2, 9, (1, 3), "valid", (1, 1), 0.97),
              (0, 5, 5, 2, 3, 3, 4, (1, 1), "same", (1, 1), 0.5)]


@pytest.mark.parametrize("case", CONV_CASES, ids=[f"case{i}" for i in range(len(CONV_CASES))])
@pytest.mark.parametrize("activation", ["linear", "relu", "softmax"])
def test_sparse_conv2d_forward_matches_reference(target, rng, case, activation):
    n, h, w, c, kh, kw, f, strides, padding, dilation, sp = case
    kernel = pruned_kernel(rng, (kh, kw, c, f), sp, target.dtype)
    indptr, indices, values = kernel_by_unit(kernel.reshape(-1, f))
    x = rand(rng, (n, h, w, c), target.dtype)
    for bias in (rand(rng, (f,), target.dtype), None):
        check_op(target, "sparse_conv2d_forward", x, indptr, indices, values, bias, (kh, kw),
                 strides, padding, dilation, activation, 0.0,
                 ref=ref.sparse_conv2d_forward_ref, kind="gemm")


def test_sparse_conv2d_equals_conv2d_forward(backend, rng):
    kernel = pruned_kernel(rng, (3, 2, 5, 11), 0.9)
    x, bias = rand(rng, (3, 10, 9, 5)), rand(rng, (11,))
    want = backend.down(backend.op("conv2d_forward")(
        backend.up(x), backend.up(kernel), backend.up(bias), (2, 1), "same", (1, 2), "elu",
        1.0)[0])
    check_op(backend, "sparse_conv2d_forward", x, *kernel_by_unit(kernel.reshape(-1, 11)),
             bias, (3, 2), (2, 1), "same", (1, 2), "elu", 1.0, ref=want, kind="gemm")


def test_sparse_conv2d_out_of_range_indices_are_skipped_on_both_backends(backend, rng):
    x = rand(rng, (2, 4, 5, 3))
    kernel = pruned_kernel(rng, (2, 2, 3, 3), 0.5)
    indptr, indices, values = kernel_by_unit(kernel.reshape(-1, 3))
    bad = indices.copy()
    bad[::3] = np.where(np.arange(len(bad[::3])) % 2, 12, -1)  # outside the 12 taps
    keep = np.ones(len(bad), bool)
    keep[::3] = False
    clean = kernel.reshape(-1, 3).copy()
    for u in range(3):  # the kernel without the skipped nonzeros
        for k in range(indptr[u], indptr[u + 1]):
            if not keep[k]:
                clean[indices[k], u] = 0
    long_indptr = indptr.copy()
    long_indptr[-1] += 7  # past nnz: clamped
    check_op(backend, "sparse_conv2d_forward", x, long_indptr, bad, values, None, (2, 2),
             (1, 1), "valid", (1, 1), "linear", 0.0,
             ref=ref.sparse_conv2d_forward_ref(x, indptr, np.where(keep, indices, -1), values,
                                               None, (2, 2), (1, 1), "valid", (1, 1)),
             kind="gemm")


@pytest.mark.parametrize("n", [1, 9])
def test_sparse_conv2d_thread_count_does_not_change_the_result(rng, n, num_threads):
    from pynn.backend import cpu

    kernel = pruned_kernel(rng, (3, 3, 16, 24), 0.9)
    x = rand(rng, (n, 17, 15, 16))
    results = []
    for threads in (1, 2, 3):
        num_threads(threads)
        results.append(cpu.sparse_conv2d_forward(x, *kernel_by_unit(kernel.reshape(-1, 24)),
                                                 None, (3, 3), (1, 1), "same", (1, 1),
                                                 "relu"))
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])


@pytest.mark.parametrize("args,message", [
    (lambda x, p, i, v, b, k: (x[0], p, i, v, b, k),
     r"sparse_conv2d_forward: 'x' must have 4 dimensions"),
    (lambda x, p, i, v, b, k: (x, p, i, v[:-1], b, k),
     r"sparse_conv2d_forward: 'values' .*shape"),
    (lambda x, p, i, v, b, k: (x, p, i, v, b[:-1], k),
     r"sparse_conv2d_forward: 'bias' .*shape"),
    (lambda x, p, i, v, b, k: (x, p[:0], i, v, b, k),
     r"sparse_conv2d_forward: 'indptr' must hold filters \+ 1 >= 1 offsets, got shape "
     r"\(0,\)"),
    (lambda x, p, i, v, b, k: (x, p, i, v, b, (0, 2)),
     r"sparse_conv2d_forward: 'kernel_size' must be positive, got \(0, 2\)"),
    (lambda x, p, i, v, b, k: (x, p, i, v, b, (2, 2, 2)),
     r"sparse_conv2d_forward: 'kernel_size' must be an int or a pair of ints, got "
     r"\(2, 2, 2\)"),
])
def test_sparse_conv2d_bad_input_names_op_expected_and_got(backend, rng, args, message):
    kernel = pruned_kernel(rng, (2, 2, 3, 4), 0.5)
    x, bias = rand(rng, (2, 5, 5, 3)), rand(rng, (4,))
    call = [backend.up(a) for a in args(x, *kernel_by_unit(kernel.reshape(-1, 4)), bias,
                                        (2, 2))]
    with pytest.raises((ValueError, TypeError), match=message):
        backend.op("sparse_conv2d_forward")(*call[:5], call[5], (1, 1), "valid", (1, 1),
                                            "relu", 0.0)


def _model(rng):
    model = pynn.Sequential([layers.Input((40,)), layers.Dense(30, activation="relu"),
                             layers.Dense(6, activation="softmax")])
    weights = model.get_weights()
    weights[0] = pruned_kernel(rng, (40, 30), 0.95)
    model.set_weights(weights)
    return model


def test_predict_runs_the_sparse_kernel_above_the_crossover(rng, monkeypatch):
    model = _model(rng)
    x = rand(rng, (13, 40))
    want = np.asarray(model._plan.forward([x], False)[0][0])  # the dense training-plan path
    steps = model._plan.inference_steps()
    sparse_steps = [st.layer for st in steps if isinstance(st.layer, SparseDense)]
    assert len(sparse_steps) == 2
    first, second = sparse_steps
    calls = []
    from pynn.backend import cpu

    real = cpu.sparse_dense_forward
    monkeypatch.setattr(cpu, "sparse_dense_forward",
                        lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))
    np.testing.assert_allclose(model.predict(x, verbose=0), want, rtol=1e-5, atol=1e-6)
    assert first.packed() is not None and second.packed() is None  # 95% vs ~0% zeros
    assert calls == [(31,)]
    # Weights change: the gathered nonzeros follow, and a dense kernel goes back to the GEMM.
    weights = model.get_weights()
    weights[0] = rand(rng, (40, 30))
    model.set_weights(weights)
    assert first.packed() is None
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               np.asarray(model._plan.forward([x], False)[0][0]), rtol=1e-5,
                               atol=1e-6)
    assert SPARSE_MIN_SPARSITY == 0.9


def _opencl_matches_cpu(model, x, stand_in):
    """model's predictions on OpenCL (a fresh twin from its config and weights) against the
    CPU's, with a ``stand_in`` step running its sparse op there."""
    want = model.predict(x, verbose=0)
    config, weights = model.get_config(), model.get_weights()
    pynn.set_device("opencl")
    try:
        ocl_model = pynn.Sequential.from_config(config)
        ocl_model.set_weights(weights)
        got = ocl_model.predict(x, verbose=0)
        assert any(isinstance(st.layer, stand_in) and st.layer.packed() is not None
                   for st in ocl_model._plan.inference_steps())
    finally:
        pynn.set_device("cpu")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.opencl
def test_predict_sparse_on_opencl_matches_cpu(rng):
    _opencl_matches_cpu(_model(rng), rand(rng, (5, 40)), SparseDense)


def _conv_model(rng):
    """A CNN whose middle Conv2D is 95% zeros; its first (27 taps per filter, under
    SPARSE_CONV_MIN_TAPS) and last stay dense."""
    model = pynn.Sequential([
        layers.Input((9, 8, 3)), layers.Conv2D(8, 3, padding="same", activation="relu"),
        layers.Conv2D(12, 3, strides=(2, 1), padding="same", activation="relu"),
        layers.Conv2D(5, 3), layers.Flatten(), layers.Dense(4, activation="softmax")])
    weights = model.get_weights()
    weights[0] = pruned_kernel(rng, weights[0].shape, 0.95)
    weights[2] = pruned_kernel(rng, weights[2].shape, 0.95)
    model.set_weights(weights)
    return model


def test_predict_runs_the_sparse_conv_kernel_above_the_crossover(rng, monkeypatch):
    from pynn.backend import cpu
    from pynn.compression.sparse import SPARSE_CONV_MIN_TAPS, SparseConv2D

    model = _conv_model(rng)
    x = rand(rng, (6, 9, 8, 3))
    want = np.asarray(model._plan.forward([x], False)[0][0])  # the dense training-plan path
    stand_ins = [st.layer for st in model._plan.inference_steps()
                 if isinstance(st.layer, SparseConv2D)]
    assert [s.name for s in stand_ins] == [model.layers[1].name, model.layers[2].name]
    assert 3 * 3 * 3 < SPARSE_CONV_MIN_TAPS  # the first layer's taps: it keeps conv2d_forward
    calls = []
    real = cpu.sparse_conv2d_forward
    monkeypatch.setattr(cpu, "sparse_conv2d_forward",
                        lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    for got in (model.predict(x, verbose=0), model.predict_on_batch(x)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert calls == [(6, 9, 8, 8)] * 2  # the 95% layer only (the last one is dense)
    assert stand_ins[1].packed() is None
    # dense weights again: back to the convolution
    weights = model.get_weights()
    weights[2] = rand(rng, weights[2].shape)
    model.set_weights(weights)
    calls.clear()
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               np.asarray(model._plan.forward([x], False)[0][0]), rtol=1e-5,
                               atol=1e-6)
    assert calls == []


def test_pruned_conv_wrapper_predicts_through_the_sparse_kernel(rng, monkeypatch):
    from pynn.backend import cpu
    from pynn.compression import ConstantSparsity, prune_low_magnitude

    conv = layers.Conv2D(9, 3, padding="same")
    model = pynn.Sequential([layers.Input((7, 6, 8)),
                             prune_low_magnitude(conv, ConstantSparsity(0.95, 0)),
                             layers.Flatten(), layers.Dense(3)])
    weights = model.get_weights()
    weights[0] = pruned_kernel(rng, weights[0].shape, 0.95)
    model.set_weights(weights)
    x = rand(rng, (2, 7, 6, 8))
    calls = []
    real = cpu.sparse_conv2d_forward
    monkeypatch.setattr(cpu, "sparse_conv2d_forward",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               np.asarray(model._plan.forward([x], False)[0][0]), rtol=1e-5,
                               atol=1e-6)
    assert calls == [1]


@pytest.mark.opencl
def test_predict_sparse_conv_on_opencl_matches_cpu(rng):
    from pynn.compression.sparse import SparseConv2D

    _opencl_matches_cpu(_conv_model(rng), rand(rng, (3, 9, 8, 3)), SparseConv2D)
