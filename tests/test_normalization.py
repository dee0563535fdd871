"""Normalization ops (native/normalization.pyx, opencl/normalization.cl) against the float64
oracle in tests/reference/normalization_ref.py, and the layers of pynn/layers/normalization.py:
finite differences, moving statistics, training vs inference, trainable=False, OpenCL vs
CPU, Keras 3 parity, config round trips, bad input and fold_batch_norm.
"""

import os
import weakref

import numpy as np
import pytest

import pynn
from pynn import layers
from pynn._native import info
from pynn.layers.normalization import fold_batch_norm
from tests.backend_util import assert_close, check_op, rand
from tests.reference import normalization_ref as ref
from tests.reference.gradcheck import assert_close as assert_grad_close
from tests.reference.gradcheck import numerical_grad

os.environ.setdefault("KERAS_BACKEND", "torch")

TOL = {np.float32: {"rtol": 1e-4, "atol": 1e-5}, np.float64: {"rtol": 1e-12, "atol": 1e-12}}

# (x shape, axis): channels last first, then other axes (axis=1 of rank 2 is channels last).
BN_CASES = [((7, 5), -1), ((3, 4, 5, 6), -1), ((2, 5, 3, 33), 3), ((3, 4, 5, 6), 1),
            ((5, 3), 0), ((9, 7), 1), ((1, 1), -1), ((31, 2, 65), -2), ((300, 3), -1)]
# (x shape, groups): images, sequences, layer norm's (rows, features), one group per channel.
GN_CASES = [((2, 3, 4, 6), 3), ((5, 8), 1), ((3, 7, 4), 2), ((2, 5, 5, 9), 9), ((1, 33, 65), 5),
            ((4, 1, 7), 7), ((2, 300), 1), ((7, 2, 3, 6), 1),
            # groups of >= 16 channels (OpenCL reduces those as runs, narrower ones as columns;
            # the CPU only one-row samples' groups)
            ((3, 4, 40), 2), ((2, 3, 3, 64), 4), ((5, 48), 2)]


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


@pytest.fixture
def restore_device():
    previous = pynn.get_device()
    yield
    pynn.set_device(previous)


def tol(target):
    return {"rtol": 1e-4, "atol": 1e-4} if target.is_opencl else TOL[target.dtype.type]


def shifted(rng, shape, dtype, loc=3.0, scale=2.0):
    """Data with a mean far from zero, so a kernel's centering is exercised."""
    return (rand(rng, shape, np.float64) * scale + loc).astype(dtype)


def channel_vectors(rng, c, dtype):
    gamma = rand(rng, (c,), dtype)
    beta = rand(rng, (c,), dtype)
    moving_mean = rand(rng, (c,), dtype)
    moving_variance = (rng.random(c) + 0.5).astype(dtype)
    return gamma, beta, moving_mean, moving_variance


# -- ops against the reference, both backends ---------------------------------------------

@pytest.mark.parametrize("shape,axis", BN_CASES, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_batch_norm_forward_matches_reference(target, rng, shape, axis, training, affine):
    x = shifted(rng, shape, target.dtype)
    gamma, beta, mm, mv = channel_vectors(rng, shape[axis], target.dtype)
    if not affine:
        gamma = beta = None
    dev_mm, dev_mv = target.up(mm.copy()), target.up(mv.copy())
    y, mean, inv_std = target.ops.batch_norm_forward(
        target.up(x), target.up(gamma), target.up(beta), dev_mm, dev_mv, axis, 0.9, 1e-3,
        training)
    want = ref.batch_norm_forward_ref(x, gamma, beta, mm, mv, axis, 0.9, 1e-3, training)
    got = [target.down(a) for a in (y, mean, inv_std, dev_mm, dev_mv)]
    names = ["y", "mean", "inv_std", "moving_mean", "moving_variance"]
    for name, g, w in zip(names, got, want):
        assert g.dtype == target.dtype, f"batch_norm_forward {name}: dtype {g.dtype}"
        np.testing.assert_allclose(g, w, err_msg=f"batch_norm_forward {name}", **tol(target))
    if target.is_opencl:
        from pynn.backend import cpu

        cpu_mm, cpu_mv = mm.copy(), mv.copy()
        cpu_out = cpu.batch_norm_forward(x, gamma, beta, cpu_mm, cpu_mv, axis, 0.9, 1e-3,
                                         training)
        for name, g, w in zip(names, got, (*cpu_out, cpu_mm, cpu_mv)):
            np.testing.assert_allclose(g, w, err_msg=f"batch_norm_forward {name} vs CPU",
                                       rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape,axis", BN_CASES, ids=str)
@pytest.mark.parametrize("batch_stats", [True, False], ids=["batch", "moving"])
@pytest.mark.parametrize("need_input_grad", [True, False], ids=["dx", "no-dx"])
def test_batch_norm_backward_matches_reference(target, rng, shape, axis, batch_stats,
                                               need_input_grad):
    x = shifted(rng, shape, target.dtype)
    gamma, beta, mm, mv = channel_vectors(rng, shape[axis], target.dtype)
    _, mean, inv_std, _, _ = ref.batch_norm_forward_ref(x, gamma, beta, mm, mv, axis,
                                                        training=batch_stats)
    mean, inv_std = mean.astype(target.dtype), inv_std.astype(target.dtype)
    dy = rand(rng, shape, target.dtype)
    check_op(target, "batch_norm_backward", dy, x, gamma, mean, inv_std, axis, batch_stats,
             need_input_grad, ref=ref.batch_norm_backward_ref, rtol=tol(target))


def test_batch_norm_backward_without_gamma_is_gamma_one(target, rng):
    x = shifted(rng, (6, 5), target.dtype)
    mean = x.mean(axis=0).astype(target.dtype)
    inv_std = (1 / np.sqrt(x.var(axis=0) + 1e-3)).astype(target.dtype)
    dy = rand(rng, x.shape, target.dtype)
    ones = np.ones(5, target.dtype)
    check_op(target, "batch_norm_backward", dy, x, None, mean, inv_std, -1, True, True,
             ref=lambda *a: ref.batch_norm_backward_ref(dy, x, ones, mean, inv_std),
             rtol=tol(target))



# Activations the batch norm ops fuse: relu (what the training plan fuses), one with a
# parameter and one whose derivative reads the pre-activation.
BN_ACTIVATIONS = [("relu", 0.0), ("leaky_relu", 0.3), ("gelu", 0.0), ("sigmoid", 0.0)]


@pytest.mark.parametrize("shape,axis", [((7, 5), -1), ((3, 4, 5, 6), -1), ((3, 4, 5, 6), 1),
                                        ((300, 3), -1), ((1, 1), -1)], ids=str)
@pytest.mark.parametrize("activation,alpha", BN_ACTIVATIONS, ids=[a for a, _ in BN_ACTIVATIONS])
@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
def test_batch_norm_with_activation_matches_reference(target, rng, shape, axis, activation,
                                                      alpha, training):
    """Forward: the activation of the normalized values; backward: dy of the activated
    output taken back through the activation at the rebuilt pre-activation, then through
    the normalization (channels_last fused row by row, channels_first as its own pass)."""
    x = shifted(rng, shape, target.dtype)
    gamma, beta, mm, mv = channel_vectors(rng, shape[axis], target.dtype)
    dev_mm, dev_mv = target.up(mm.copy()), target.up(mv.copy())
    y, mean, inv_std = target.ops.batch_norm_forward(
        target.up(x), target.up(gamma), target.up(beta), dev_mm, dev_mv, axis, 0.9, 1e-3,
        training, activation, alpha)
    want = ref.batch_norm_forward_ref(x, gamma, beta, mm, mv, axis, 0.9, 1e-3, training,
                                      activation, alpha)
    np.testing.assert_allclose(target.down(y), want[0], err_msg="y", **tol(target))
    mean_h, inv_h = target.down(mean), target.down(inv_std)
    dy = rand(rng, shape, target.dtype)
    for need_input_grad in (True, False):
        got = target.ops.batch_norm_backward(target.up(dy), target.up(x), target.up(gamma),
                                             mean, inv_std, axis, training, need_input_grad,
                                             target.up(beta), activation, alpha)
        want = ref.batch_norm_backward_ref(dy, x, gamma, mean_h, inv_h, axis, training,
                                           need_input_grad, beta, activation, alpha)
        for name, g, w in zip(("dx", "dgamma", "dbeta"), got, want):
            if w is None:
                assert g is None
                continue
            np.testing.assert_allclose(target.down(g), w, err_msg=f"{activation} {name}",
                                       **tol(target))
        if target.is_opencl:
            from pynn.backend import cpu

            cpu_got = cpu.batch_norm_backward(dy, x, gamma, mean_h, inv_h, axis, training,
                                              need_input_grad, beta, activation, alpha)
            for g, w in zip(got, cpu_got):
                if w is not None:
                    np.testing.assert_allclose(target.down(g), w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("center", [True, False])
def test_batch_norm_relu_equals_batch_norm_then_relu(rng, center):
    """The fused op gives the bits of batch norm then the relu op, forward and backward
    (the training plan's fusion must not change a number)."""
    from pynn.backend import cpu

    x = shifted(rng, (33, 5, 7, 19), np.float32)
    gamma, beta, mm, mv = channel_vectors(rng, 19, np.float32)
    beta = beta if center else None
    dy = rand(rng, x.shape, np.float32)
    y, mean, inv = cpu.batch_norm_forward(x, gamma, beta, mm.copy(), mv.copy(), -1, 0.9, 1e-3,
                                          True, "relu")
    z, mean2, inv2 = cpu.batch_norm_forward(x, gamma, beta, mm.copy(), mv.copy(), -1, 0.9,
                                            1e-3, True)
    y2 = cpu.activation_forward(z, "relu")
    np.testing.assert_array_equal(y, y2)
    got = cpu.batch_norm_backward(dy, x, gamma, mean, inv, -1, True, True, beta, "relu")
    want = cpu.batch_norm_backward(cpu.activation_backward(dy, z, y2, "relu"), x, gamma, mean,
                                   inv, -1, True, True)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_batch_norm_activation_thread_invariance(rng):
    from pynn.backend import cpu

    x = shifted(rng, (97, 13, 40), np.float32)
    dy = rand(rng, x.shape, np.float32)
    gamma, beta, mm, mv = channel_vectors(rng, 40, np.float32)
    before = info.get_max_threads()
    results = []
    try:
        for n in (1, 2, 3):
            info.set_num_threads(n)
            y, mean, inv = cpu.batch_norm_forward(x, gamma, beta, mm.copy(), mv.copy(), -1, 0.9,
                                                  1e-3, True, "relu")
            grads = cpu.batch_norm_backward(dy, x, gamma, mean, inv, -1, True, True, beta,
                                            "relu")
            results.append((y, *grads))
    finally:
        info.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_batch_norm_activation_bad_operands(backend, rng):
    x = backend.up(rand(rng, (4, 6), np.float32))
    vec = backend.up(np.ones(6, np.float32))
    ops = backend.ops
    with pytest.raises(ValueError, match=r"batch_norm_forward: activation 'softmax' cannot be "
                                         r"fused"):
        ops.batch_norm_forward(x, vec, vec, backend.up(np.zeros(6, np.float32)),
                               backend.up(np.ones(6, np.float32)), -1, 0.9, 1e-3, False,
                               "softmax")
    with pytest.raises(ValueError, match=r"batch_norm_backward: unknown activation 'relu7'"):
        ops.batch_norm_backward(x, x, vec, vec, vec, -1, True, True, vec, "relu7")
    with pytest.raises(ValueError, match=r"batch_norm_backward: 'beta' must have shape \(6,\)"):
        ops.batch_norm_backward(x, x, vec, vec, vec, -1, True, True,
                                backend.up(np.ones(5, np.float32)), "relu")


@pytest.mark.parametrize("shape,axis", BN_CASES, ids=str)
@pytest.mark.parametrize("activation", ["linear", "relu", "elu"])
def test_batch_norm_apply_is_the_forward_pass_with_given_statistics(target, rng, shape, axis,
                                                                   activation):
    """Against the float64 reference, and bit for bit the y batch_norm_forward made with the
    same statistics (a training plan rebuilds a fused output with it)."""
    x = shifted(rng, shape, target.dtype)
    gamma, beta, mm, mv = channel_vectors(rng, shape[axis], target.dtype)
    for g, b in ((gamma, beta), (None, None)):
        y, mean, inv_std = target.ops.batch_norm_forward(
            target.up(x), target.up(g), target.up(b), target.up(mm.copy()),
            target.up(mv.copy()), axis, 0.9, 1e-3, True, activation, 1.0)
        got = target.ops.batch_norm_apply(target.up(x), target.up(g), target.up(b), mean,
                                          inv_std, axis, activation, 1.0)
        np.testing.assert_array_equal(target.down(got), target.down(y))
        np.testing.assert_allclose(
            target.down(got), ref.batch_norm_apply_ref(x, g, b, target.down(mean),
                                                       target.down(inv_std), axis, activation,
                                                       1.0), **tol(target))
        if target.is_opencl:
            from pynn.backend import cpu

            np.testing.assert_allclose(
                target.down(got), cpu.batch_norm_apply(x, g, b, target.down(mean),
                                                       target.down(inv_std), axis,
                                                       activation, 1.0),
                rtol=1e-4, atol=1e-5, err_msg="batch_norm_apply vs CPU")


def test_batch_norm_apply_bad_operands(backend, rng):
    x = backend.up(rand(rng, (4, 6), np.float32))
    vec = backend.up(np.ones(6, np.float32))
    ops = backend.ops
    with pytest.raises(ValueError, match=r"batch_norm_apply: 'mean' must have shape \(6,\)"):
        ops.batch_norm_apply(x, vec, vec, backend.up(np.ones(5, np.float32)), vec)
    with pytest.raises(ValueError, match=r"batch_norm_apply: activation 'softmax' cannot be "
                                         r"fused"):
        ops.batch_norm_apply(x, vec, vec, vec, vec, -1, "softmax")
    with pytest.raises((ValueError, TypeError), match=r"batch_norm_apply: 'x' must "):
        ops.batch_norm_apply(backend.up(np.array(1.0, np.float32)), None, None, vec, vec)


@pytest.mark.parametrize("shape,groups", GN_CASES, ids=str)
@pytest.mark.parametrize("rms_scaling", [False, True], ids=["centered", "rms"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_group_norm_matches_reference(target, rng, shape, groups, rms_scaling, affine):
    x = shifted(rng, shape, target.dtype)
    gamma, beta, _, _ = channel_vectors(rng, shape[-1], target.dtype)
    if not affine:
        gamma = None
    if rms_scaling or not affine:
        beta = None
    _, (_, mean, inv_std) = check_op(target, "group_norm_forward", x, gamma, beta, groups,
                                     1e-3, rms_scaling, ref=ref.group_norm_forward_ref,
                                     rtol=tol(target))
    dy = rand(rng, shape, target.dtype)
    for need_input_grad in (True, False):
        check_op(target, "group_norm_backward", dy, x, gamma, mean, inv_std, groups,
                 rms_scaling, need_input_grad, ref=ref.group_norm_backward_ref,
                 rtol=tol(target))


@pytest.mark.opencl
def test_small_work_groups_give_the_same_results(small_work_groups, rng):
    """A device whose work-group limit is below the default: the per-group reductions build
    with the capped size and still agree with the reference."""
    backend = small_work_groups
    for shape, groups in (((3, 4, 40), 2), ((2, 300), 1), ((2, 5, 4, 9), 3)):
        x = shifted(rng, shape, np.float32)
        gamma, beta, _, _ = channel_vectors(rng, shape[-1], np.float32)
        _, (_, mean, inv_std) = check_op(backend, "group_norm_forward", x, gamma, beta, groups,
                                         1e-3, False, ref=ref.group_norm_forward_ref,
                                         rtol={"rtol": 1e-4, "atol": 1e-4})
        check_op(backend, "group_norm_backward", rand(rng, shape, np.float32), x, gamma, mean,
                 inv_std, groups, False, True, ref=ref.group_norm_backward_ref,
                 rtol={"rtol": 1e-4, "atol": 1e-4})


def test_empty_batch(target, rng):
    """No rows: empty outputs; batch norm leaves the moving statistics alone."""
    x = np.zeros((0, 4), target.dtype)
    gamma, beta, mm, mv = channel_vectors(rng, 4, target.dtype)
    dev_mm, dev_mv = target.up(mm.copy()), target.up(mv.copy())
    y, _, _ = target.ops.batch_norm_forward(target.up(x), target.up(gamma), target.up(beta),
                                            dev_mm, dev_mv, -1, 0.99, 1e-3, True)
    assert target.down(y).shape == (0, 4)
    np.testing.assert_array_equal(target.down(dev_mm), mm)
    np.testing.assert_array_equal(target.down(dev_mv), mv)
    y, mean, _ = target.ops.group_norm_forward(target.up(x), None, None, 2, 1e-3, False)
    assert target.down(y).shape == (0, 4) and target.down(mean).shape == (0, 2)


def test_constant_channel_gives_beta(target, rng):
    """Zero variance: x - mean is exactly 0, so y is beta (no NaN from the shifted sums)."""
    x = np.full((5, 3), 2.5, target.dtype)
    gamma, beta, mm, mv = channel_vectors(rng, 3, target.dtype)
    y, _, _ = target.ops.batch_norm_forward(target.up(x), target.up(gamma), target.up(beta),
                                            target.up(mm), target.up(mv), -1, 0.99, 1e-3, True)
    np.testing.assert_allclose(target.down(y), np.broadcast_to(beta, x.shape), atol=1e-6)
    y, _, _ = target.ops.group_norm_forward(target.up(x), target.up(gamma), target.up(beta),
                                            1, 1e-3, False)
    np.testing.assert_allclose(target.down(y), np.broadcast_to(beta, x.shape), atol=1e-6)


@pytest.mark.parametrize("op,groups", [("batch", None), ("group", 8), ("group", 2),
                                       ("layer", 1)])
def test_thread_count_does_not_change_results(rng, op, groups):
    """Row blocks are fixed by the size alone: 1, 2 and 3 threads give the same bits."""
    from pynn.backend import cpu

    x = shifted(rng, (97, 13, 40), np.float32)
    dy = rand(rng, x.shape, np.float32)
    gamma, beta, mm, mv = channel_vectors(rng, 40, np.float32)
    if op == "layer":  # one row per sample: the CPU reduces it as a contiguous run
        x, dy = x.reshape(-1, 40), dy.reshape(-1, 40)
    before = info.get_max_threads()
    results = []
    try:
        for n in (1, 2, 3):
            info.set_num_threads(n)
            if op == "batch":
                y, mean, inv = cpu.batch_norm_forward(x, gamma, beta, mm.copy(), mv.copy(), -1,
                                                      0.9, 1e-3, True)
                grads = cpu.batch_norm_backward(dy, x, gamma, mean, inv, -1, True, True)
            else:
                y, mean, inv = cpu.group_norm_forward(x, gamma, beta, groups, 1e-3, False)
                grads = cpu.group_norm_backward(dy, x, gamma, mean, inv, groups, False, True)
            results.append((y, mean, inv, *grads))
    finally:
        info.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


# -- layers: finite differences (float64, CPU) --------------------------------------------

def check_gradients(layer, x, rng, training=True):
    """dx and the trainable weights' gradients of sum(layer(x) * r) against central
    differences (the moving statistics are state, not parameters)."""
    x = np.array(x, dtype=np.float64)
    y = np.asarray(layer(x, training=training))
    r = rng.standard_normal(y.shape)

    def loss():
        return float(np.sum(np.asarray(layer(x, training=training)) * r))

    params = [v for v in layer.weights if v.trainable]
    layer(x, training=training)
    dx = layer.backward(r.copy())
    analytic = {v.path: np.array(v.grad) for v in params}
    assert_grad_close(f"{layer.name} d/dx", dx, numerical_grad(loss, x))
    for v in params:
        assert_grad_close(v.path, analytic[v.path], numerical_grad(loss, v.value))
    return params


@pytest.mark.parametrize("shape,axis", [((6, 4), -1), ((3, 4, 3, 5), -1), ((4, 3, 2, 2), 1),
                                        ((5, 3, 4), 1)], ids=str)
@pytest.mark.parametrize("center,scale", [(True, True), (False, True), (True, False),
                                          (False, False)])
def test_batch_norm_gradients(float64, seeded, shape, axis, center, scale):
    layer = layers.BatchNormalization(axis=axis, center=center, scale=scale)
    layer.build((None,) + shape[1:])
    c = shape[axis]
    if scale:
        layer.gamma.value[:] = seeded.standard_normal(c)
    if center:
        layer.beta.value[:] = seeded.standard_normal(c)
    params = check_gradients(layer, shifted(seeded, shape, np.float64), seeded)
    assert len(params) == center + scale


@pytest.mark.parametrize("activation", ["linear", "relu"])
@pytest.mark.parametrize("center,scale", [(True, True), (False, False)])
def test_masked_batch_norm_gradients(float64, seeded, activation, center, scale):
    """With a mask, training normalizes by Keras's moments over the unmasked steps; the
    backward adds what reaches an unmasked x through them (and a fused relu: call_activated,
    as a model's plan runs BatchNormalization -> Activation)."""
    layer = layers.BatchNormalization(center=center, scale=scale)
    layer.build((None, 5, 3))
    if scale:
        layer.gamma.value[:] = seeded.standard_normal(3)
    if center:
        layer.beta.value[:] = seeded.standard_normal(3)
    x = shifted(seeded, (4, 5, 3), np.float64)
    mask = seeded.random((4, 5)) > 0.4
    mask[0, 0] = True

    def forward():
        return np.asarray(layer.call_activated(x, True, activation, 0.0, mask=mask))

    y = forward()
    r = seeded.standard_normal(y.shape)
    keep = mask[..., None]
    want_mean = (x * keep).sum((0, 1)) / (keep.sum() + 1e-7)
    want_var = (((x - want_mean) * keep) ** 2).sum((0, 1)) / (keep.sum() + 1e-7)
    gamma = layer.gamma.value if scale else 1.0
    beta = layer.beta.value if center else 0.0
    want = (x - want_mean) / np.sqrt(want_var + layer.epsilon) * gamma + beta
    assert_grad_close("masked batch norm forward", y,
                      np.maximum(want, 0) if activation == "relu" else want)

    def loss():
        return float(np.sum(forward() * r))

    forward()
    dx = layer.backward(r.copy())
    params = [v for v in layer.weights if v.trainable]
    analytic = {v.path: np.array(v.grad) for v in params}
    assert_grad_close("masked batch norm d/dx", dx, numerical_grad(loss, x))
    for v in params:
        assert_grad_close(v.path, analytic[v.path], numerical_grad(loss, v.value))


def test_masked_batch_norm_refuses_a_mask_it_cannot_spread(float64, seeded):
    layer = layers.BatchNormalization(axis=1)
    layer.build((None, 5, 3))
    with pytest.raises(ValueError, match="a mask must cover every axis of the input but the "
                                         "normalized last one"):
        layer.call(np.ones((2, 5, 3)), training=True, mask=np.ones((2, 5), bool))


def test_batch_norm_gradients_in_inference_mode(float64, seeded):
    """trainable=False: the moving statistics are constants of the backward pass too."""
    layer = layers.BatchNormalization(trainable=False)
    layer.build((None, 3, 5))
    layer.moving_mean.value[:] = seeded.standard_normal(5)
    layer.moving_variance.value[:] = seeded.random(5) + 0.5
    layer.gamma.value[:] = seeded.standard_normal(5)
    x = shifted(seeded, (4, 3, 5), np.float64)
    y = np.asarray(layer(x, training=True))
    r = seeded.standard_normal(y.shape)
    dx = layer.backward(r)
    numeric = numerical_grad(lambda: float(np.sum(layer(x, training=True) * r)), x)
    assert_grad_close("frozen batch norm d/dx", dx, numeric)


@pytest.mark.parametrize("shape,axis", [((4, 7), -1), ((3, 4, 5), [-2, -1]), ((2, 3, 4, 3), -1),
                                        ((2, 3, 2, 3), [1, 2, 3])], ids=str)
@pytest.mark.parametrize("center,scale,rms", [(True, True, False), (False, False, False),
                                              (True, True, True), (True, False, True)])
def test_layer_norm_gradients(float64, seeded, shape, axis, center, scale, rms):
    layer = layers.LayerNormalization(axis=axis, center=center, scale=scale, rms_scaling=rms)
    layer.build((None,) + shape[1:])
    for v in layer.weights:
        v.value[...] = seeded.standard_normal(v.shape)
    params = check_gradients(layer, shifted(seeded, shape, np.float64), seeded)
    assert {v.name for v in params} == ({"gamma"} if rms else
                                        {n for n, on in (("gamma", scale), ("beta", center))
                                         if on})


@pytest.mark.parametrize("shape,groups", [((3, 4, 6), 3), ((2, 3, 3, 4), 2), ((4, 3, 5), -1),
                                          ((2, 5, 6), 1), ((2, 3, 32), 2)], ids=str)
@pytest.mark.parametrize("center,scale", [(True, True), (False, False)])
def test_group_norm_gradients(float64, seeded, shape, groups, center, scale):
    layer = layers.GroupNormalization(groups=groups, center=center, scale=scale)
    layer.build((None,) + shape[1:])
    for v in layer.weights:
        v.value[...] = seeded.standard_normal(v.shape)
    check_gradients(layer, shifted(seeded, shape, np.float64), seeded)


# -- layers: statistics, modes, weights --------------------------------------------------

def test_batch_norm_weights_in_keras_order():
    layer = layers.BatchNormalization()
    layer.build((None, 3, 4))
    assert [v.name for v in layer.weights] == ["gamma", "beta", "moving_mean",
                                               "moving_variance"]
    assert [v.name for v in layer.trainable_weights] == ["gamma", "beta"]
    assert [v.name for v in layer.non_trainable_weights] == ["moving_mean", "moving_variance"]
    plain = layers.BatchNormalization(center=False, scale=False)
    plain.build((None, 4))
    assert [v.name for v in plain.weights] == ["moving_mean", "moving_variance"]


def test_batch_norm_training_updates_moving_statistics(seeded):
    layer = layers.BatchNormalization(momentum=0.8)
    x = shifted(seeded, (9, 2, 5), np.float32)
    layer.build((None, 2, 5))
    gamma, beta, mm, mv = layer.get_weights()
    y = layer(x, training=True)
    want = ref.batch_norm_forward_ref(x, gamma, beta, mm, mv, -1, 0.8, 1e-3, True)
    np.testing.assert_allclose(y, want[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.moving_mean.value, want[3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.value, want[4], rtol=1e-5, atol=1e-6)
    assert not np.allclose(layer.moving_mean.value, mm)


def test_batch_norm_casts_its_input_to_the_layer_dtype(seeded):
    layer = layers.BatchNormalization()
    x = shifted(seeded, (6, 3), np.float64)
    y = layer(x, training=True)
    assert y.dtype == np.float32 and layer.moving_mean.value.dtype == np.float32
    dx = layer.backward(rand(seeded, (6, 3), np.float64))
    assert dx.dtype == np.float32


def test_batch_norm_inference_uses_moving_statistics(seeded):
    layer = layers.BatchNormalization()
    layer.build((None, 5))
    layer.set_weights([seeded.standard_normal(5), seeded.standard_normal(5),
                       seeded.standard_normal(5), seeded.random(5) + 0.5])
    before = layer.get_weights()
    x = shifted(seeded, (8, 5), np.float32)
    y = layer(x, training=False)
    want = ref.batch_norm_forward_ref(x, *before, training=False)[0]
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(layer.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    # Training normalizes with the batch instead: the output differs.
    assert not np.allclose(layer(x, training=True), y, atol=1e-2)


def test_batch_norm_frozen_runs_in_inference_mode_when_training(seeded):
    """Keras 3: trainable=False makes training=True use (and keep) the moving statistics."""
    layer = layers.BatchNormalization(trainable=False)
    layer.build((None, 5))
    layer.set_weights([seeded.standard_normal(5), seeded.standard_normal(5),
                       seeded.standard_normal(5), seeded.random(5) + 0.5])
    before = layer.get_weights()
    x = shifted(seeded, (8, 5), np.float32)
    np.testing.assert_array_equal(layer(x, training=True), layer(x, training=False))
    for a, b in zip(layer.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    assert layer.trainable_weights == []


def test_layer_shared_by_two_calls_backpropagates_each(float64, seeded):
    """Each call's statistics live in its _cache: the executor swaps caches per call."""
    layer = layers.GroupNormalization(groups=2)
    x1, x2 = shifted(seeded, (3, 4), np.float64), shifted(seeded, (3, 4), np.float64, loc=-1)
    layer(x1, training=True)
    cache1 = layer._cache
    layer(x2, training=True)
    dy = seeded.standard_normal((3, 4))
    dx2 = layer.backward(dy)
    layer._cache = cache1
    dx1 = layer.backward(dy)
    want1 = ref.group_norm_backward_ref(dy, x1, layer.gamma.value,
                                        *ref.group_norm_forward_ref(x1, None, None, 2)[1:], 2)
    want2 = ref.group_norm_backward_ref(dy, x2, layer.gamma.value,
                                        *ref.group_norm_forward_ref(x2, None, None, 2)[1:], 2)
    np.testing.assert_allclose(dx1, want1[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx2, want2[0], rtol=1e-10, atol=1e-12)


def test_model_with_batch_norm_trains_and_predicts_with_moving_statistics(seeded):
    model = pynn.Sequential([layers.Input((6,)), layers.Dense(8),
                             layers.BatchNormalization(momentum=0.5),
                             layers.Dense(2, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x = shifted(seeded, (40, 6), np.float32)
    y = seeded.integers(0, 2, 40).astype(np.int32)
    bn = model.layers[1]
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    mean = bn.moving_mean.value
    assert not np.allclose(mean, 0), "fit did not move the moving mean"
    # predict is inference: the moving statistics stay and normalize.
    before = [w.copy() for w in bn.get_weights()]
    model.predict(x, verbose=0)
    for a, b in zip(bn.get_weights(), before):
        np.testing.assert_array_equal(a, b)


# -- layers: OpenCL against the CPU -------------------------------------------------------

LAYER_FACTORIES = [
    ("batch", lambda: layers.BatchNormalization(momentum=0.7), (5, 3, 4, 6)),
    ("batch-axis1", lambda: layers.BatchNormalization(axis=1, center=False), (4, 3, 7)),
    ("layer", lambda: layers.LayerNormalization(axis=[-2, -1]), (3, 5, 7)),
    ("layer-rms", lambda: layers.LayerNormalization(rms_scaling=True), (6, 33)),
    ("group", lambda: layers.GroupNormalization(groups=3, scale=False), (2, 5, 4, 9)),
    ("rms", lambda: layers.RMSNormalization(axis=[-2, -1]), (3, 5, 7)),
    ("rms-wide", lambda: layers.RMSNormalization(), (5, 2, 33)),
    ("unit", lambda: layers.UnitNormalization(), (6, 33)),
    ("unit-inner-axes", lambda: layers.UnitNormalization(axis=[1, 3]), (2, 3, 4, 5)),
]


@pytest.mark.opencl
@pytest.mark.parametrize("name,make,shape", LAYER_FACTORIES, ids=[f[0] for f in LAYER_FACTORIES])
def test_layers_on_opencl_match_cpu(restore_device, seeded, name, make, shape):
    x = shifted(seeded, shape, np.float32)
    dy = rand(seeded, shape, np.float32)
    results = {}
    weights = None
    for device in ("cpu", "opencl"):
        pynn.set_device(device)
        from pynn import backend

        b = backend.current()
        layer = make()
        layer.build((None,) + shape[1:])
        if weights is None:
            weights = [seeded.standard_normal(w.shape).astype(np.float32) for w in layer.weights]
            weights = [np.abs(w) + 0.5 if v.name == "moving_variance" else w
                       for w, v in zip(weights, layer.weights)]
        layer.set_weights(weights)
        out = []
        for training in (False, True):
            y = layer(b.asarray(x), training=training)
            out.append(b.to_numpy(y))
        dx = layer.backward(b.asarray(dy))
        out.append(b.to_numpy(dx))
        out += [b.to_numpy(v.grad) for v in layer.trainable_weights]
        out += layer.get_weights()
        results[device] = out
    for i, (g, w) in enumerate(zip(results["opencl"], results["cpu"])):
        assert_close(g, w, 1e-4, f"{name} output {i} on OpenCL vs CPU")


@pytest.mark.opencl
def test_model_training_on_opencl_matches_cpu(restore_device, seeded):
    """All three layers in a model trained on the device: the same weights (moving
    statistics included, updated on the device) and predictions as on the CPU."""
    def build():
        return pynn.Sequential([
            layers.Input((6, 5, 8)), layers.BatchNormalization(momentum=0.7),
            layers.GroupNormalization(groups=4), layers.Reshape((30, 8)),
            layers.LayerNormalization(), layers.Flatten(),
            layers.Dense(3)])

    x = shifted(seeded, (20, 6, 5, 8), np.float32)
    y = rand(seeded, (20, 3), np.float32)
    pynn.set_device("cpu")
    initial = build().get_weights()
    trained = {}
    for device in ("cpu", "opencl"):
        pynn.set_device(device)
        model = build()
        model.set_weights(initial)
        model.compile(optimizer="adam", loss="mse")
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        trained[device] = (model.get_weights(), model.predict(x, verbose=0))
    (cpu_w, cpu_y), (cl_w, cl_y) = trained["cpu"], trained["opencl"]
    for i, (g, w) in enumerate(zip(cl_w, cpu_w)):
        assert_close(g, w, 1e-3, f"weight {i} after training on OpenCL vs CPU")
    assert_close(cl_y, cpu_y, 1e-3, "predictions on OpenCL vs CPU")



def _bn_relu_model(center=True):
    inputs = pynn.Input((6, 5, 4))
    x = layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    x = layers.BatchNormalization(momentum=0.8, center=center)(x)
    x = layers.Activation("relu")(x)
    y = layers.BatchNormalization()(x)  # read twice below: stays unfused
    x = layers.Add()([layers.Activation("relu")(y), layers.Activation("tanh")(y)])
    x = layers.GlobalAveragePooling2D()(x)
    return pynn.Model(inputs, layers.Dense(3)(x))


def _unfused(model):
    for st in model._plan.steps:
        st.fused, st.passthrough = None, False
    return model


@pytest.mark.parametrize("center", [True, False])
def test_plan_fuses_batch_norm_relu_with_the_same_numbers(seeded, center):
    """The plan fuses the BatchNormalization -> Activation('relu') pair only where the relu
    alone reads the normalization; training and evaluating with the fusion give the bits
    of the unfused plan (weights, moving statistics, losses)."""
    x = shifted(seeded, (10, 6, 5, 4), np.float32)
    y = rand(seeded, (10, 3), np.float32)
    fused = _bn_relu_model(center)
    kinds = [(type(st.layer).__name__, st.fused, st.passthrough) for st in fused._plan.steps]
    assert kinds.count(("BatchNormalization", ("relu", 0.0), False)) == 1
    assert kinds.count(("Activation", None, True)) == 1
    plain = _unfused(_bn_relu_model(center))
    plain.set_weights(fused.get_weights())
    results = []
    for model in (fused, plain):
        model.compile(optimizer="adam", loss="mse")
        history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
        results.append((model.get_weights(), history.history["loss"],
                        model.evaluate(x, y, verbose=0), model.predict(x, verbose=0)))
    (w1, l1, e1, p1), (w2, l2, e2, p2) = results
    for a, b in zip(w1, w2):
        np.testing.assert_array_equal(a, b)
    assert l1 == l2 and e1 == e2
    np.testing.assert_array_equal(p1, p2)


def _chained_bn_relu_model(frozen=False):
    """Conv -> BN -> relu -> Conv -> BN -> relu -> BN -> relu (a normalization whose input
    is itself a rebuilt output) -> Conv: every fused output is read by a step that keeps it."""
    inputs = pynn.Input((7, 6, 3))
    x = layers.Conv2D(5, 3, padding="same", use_bias=False)(inputs)
    x = layers.Activation("relu")(layers.BatchNormalization()(x))
    x = layers.Conv2D(6, 3, padding="same")(x)
    x = layers.Activation("relu")(layers.BatchNormalization(scale=False)(x))
    bn = layers.BatchNormalization(center=False)
    bn.trainable = not frozen
    x = layers.Activation("relu")(bn(x))
    x = layers.Conv2D(4, 2)(x)
    return pynn.Model(inputs, layers.Dense(3)(layers.Flatten()(x)))


@pytest.mark.parametrize("frozen", [False, True], ids=["trainable", "frozen"])
def test_fused_outputs_are_rebuilt_in_backward_with_the_same_bits(seeded, frozen,
                                                                 monkeypatch):
    """Training keeps no fused BatchNormalization -> relu output from forward to backward:
    the steps that read one keep a rebuild of it (batch_norm_apply from the normalization's
    own saved input and statistics), and training gives the bits of keeping the arrays
    (weights, moving statistics, losses), a frozen normalization included."""
    from pynn.layers import functional

    x = shifted(seeded, (9, 7, 6, 3), np.float32)
    y = rand(seeded, (9, 3), np.float32)
    model = _chained_bn_relu_model(frozen)
    initial = model.get_weights()
    made = []
    call = layers.BatchNormalization.call_activated

    def recording(self, *args, **kwargs):
        y = call(self, *args, **kwargs)
        made.append(weakref.ref(y))
        return y

    monkeypatch.setattr(layers.BatchNormalization, "call_activated", recording)
    outs, saved = model._plan.forward([x], True)
    monkeypatch.setattr(layers.BatchNormalization, "call_activated", call)
    rebuilds = [e.j for cache, _ in saved if type(cache) is tuple for e in cache
                if type(e) is functional._Rebuild]
    assert len(rebuilds) == 3  # the second conv, the third normalization and the last conv
    assert len(made) == 3 and all(ref() is None for ref in made)  # none outlives forward
    results = []
    for rebuild in (True, False):
        monkeypatch.setattr(functional, "RECOMPUTE_FUSED", rebuild)
        model = _chained_bn_relu_model(frozen)
        model.set_weights(initial)
        model.compile(optimizer="adam", loss="mse")
        history = model.fit(x, y, batch_size=3, epochs=2, shuffle=False, verbose=0)
        results.append((model.get_weights(), history.history["loss"]))
    (w1, l1), (w2, l2) = results
    for a, b in zip(w1, w2):
        np.testing.assert_array_equal(a, b)
    assert l1 == l2


def test_fused_batch_norm_relu_gradients(float64, seeded):
    """The model's input gradient through the fused pair against finite differences."""
    model = pynn.Sequential([layers.Input((4, 3, 5)), layers.BatchNormalization(),
                             layers.Activation("relu"), layers.Flatten(), layers.Dense(2)])
    assert [st.passthrough for st in model._plan.steps][1]
    x = shifted(seeded, (6, 4, 3, 5), np.float64)
    dy = seeded.standard_normal((6, 2))
    model._plan.prepare_backward(True)

    def loss():
        outs, _ = model._plan.forward([x], True)
        return float(np.sum(outs[0] * dy))

    outs, saved = model._plan.forward([x], True)
    dx = model._plan.backward([dy], saved)[0][0]
    assert_grad_close("fused batch norm + relu dx", dx, numerical_grad(loss, x))


def _residual_model():
    """A residual block closing in Add -> relu (fused), a shortcut read twice, and an Add read
    by two activations (not fused)."""
    inputs = pynn.Input((5, 4, 6))
    y = layers.Conv2D(6, 3, padding="same")(inputs)
    y = layers.Activation("relu")(layers.BatchNormalization()(y))
    x = layers.Activation("relu")(layers.Add()([inputs, y]))
    z = layers.Add()([x, layers.Conv2D(6, 1)(x)])
    x = layers.Concatenate()([layers.Activation("relu")(z), layers.Activation("sigmoid")(z)])
    return pynn.Model(inputs, layers.Dense(2)(layers.GlobalAveragePooling2D()(x)))


def test_plan_fuses_add_relu_with_the_same_numbers(seeded):
    x = shifted(seeded, (9, 5, 4, 6), np.float32)
    y = rand(seeded, (9, 2), np.float32)
    fused = _residual_model()
    kinds = [(type(st.layer).__name__, st.fused) for st in fused._plan.steps]
    assert kinds.count(("Add", ("relu", 0.0))) == 1
    assert kinds.count(("BatchNormalization", ("relu", 0.0))) == 1
    assert sum(st.passthrough for st in fused._plan.steps) == 2
    plain = _unfused(_residual_model())
    plain.set_weights(fused.get_weights())
    results = []
    for model in (fused, plain):
        model.compile(optimizer="adam", loss="mse")
        history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
        results.append((model.get_weights(), history.history["loss"]))
    for a, b in zip(results[0][0], results[1][0]):
        np.testing.assert_array_equal(a, b)
    assert results[0][1] == results[1][1]


def test_fused_add_relu_gradients(float64, seeded):
    """Input gradient through the fused Add -> relu (and batch norm -> relu) of a residual
    block against finite differences."""
    model = _residual_model()
    x = shifted(seeded, (3, 5, 4, 6), np.float64)
    dy = seeded.standard_normal((3, 2))
    model._plan.prepare_backward(True)

    def loss():
        outs, _ = model._plan.forward([x], True)
        return float(np.sum(outs[0] * dy))

    outs, saved = model._plan.forward([x], True)
    dx = model._plan.backward([dy], saved)[0][0]
    assert_grad_close("fused add + relu dx", dx, numerical_grad(loss, x))


@pytest.mark.opencl
@pytest.mark.parametrize("build,shape,outputs", [("bn", (6, 5, 4), 3), ("residual", (5, 4, 6), 2)])
def test_fused_activations_on_opencl_match_cpu(restore_device, seeded, build, shape, outputs):
    build = _bn_relu_model if build == "bn" else _residual_model
    x = shifted(seeded, (10,) + shape, np.float32)
    y = rand(seeded, (10, outputs), np.float32)
    pynn.set_device("cpu")
    initial = build().get_weights()
    trained = {}
    for device in ("cpu", "opencl"):
        pynn.set_device(device)
        model = build()
        assert any(st.passthrough for st in model._plan.steps)
        model.set_weights(initial)
        model.compile(optimizer="adam", loss="mse")
        model.fit(x, y, batch_size=5, epochs=2, shuffle=False, verbose=0)
        trained[device] = model.get_weights()
    for i, (g, w) in enumerate(zip(trained["opencl"], trained["cpu"])):
        assert_close(g, w, 1e-3, f"weight {i} after training on OpenCL vs CPU")

# -- Keras 3 parity -----------------------------------------------------------------------

def _keras():
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras runs on {keras.backend.backend()}, these tests want torch")
    return keras


def rel_diff(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def _to_numpy(t):
    return np.asarray(t.detach().cpu().numpy() if hasattr(t, "detach") else t)


PARITY = [
    ("BatchNormalization", {"momentum": 0.9}, (8, 3, 4, 5)),
    ("BatchNormalization", {"axis": 1, "epsilon": 1e-2}, (6, 4, 3)),
    ("BatchNormalization", {"center": False}, (10, 7)),
    ("LayerNormalization", {}, (4, 6, 9)),
    ("LayerNormalization", {"axis": [-2, -1], "scale": False}, (4, 6, 9)),
    ("GroupNormalization", {"groups": 4}, (3, 5, 5, 8)),
    ("GroupNormalization", {"groups": -1, "epsilon": 1e-5}, (3, 7, 6)),
]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("cls,kwargs,shape", PARITY, ids=[f"{c}-{k}" for c, k, _ in PARITY])
def test_keras_parity(seeded, cls, kwargs, shape):
    """Same outputs from Keras's (randomized) weights, in training and in inference, and the
    same moving statistics after a training call."""
    keras = _keras()
    k_layer = getattr(keras.layers, cls)(**kwargs)
    k_layer.build((None,) + shape[1:])
    weights = [seeded.standard_normal(w.shape).astype(np.float32) for w in k_layer.get_weights()]
    if cls == "BatchNormalization":
        weights[-1] = np.abs(weights[-1]) + 0.5
    k_layer.set_weights(weights)
    p_layer = getattr(layers, cls)(**kwargs)
    p_layer.build((None,) + shape[1:])
    p_layer.set_weights(k_layer.get_weights())
    x = shifted(seeded, shape, np.float32)
    for training in (False, True):
        want = _to_numpy(k_layer(x, training=training))
        got = p_layer(x, training=training)
        assert rel_diff(got, want) < 1e-5, f"{cls} training={training}: {rel_diff(got, want)}"
    for p, k in zip(p_layer.get_weights(), k_layer.get_weights()):
        assert rel_diff(p, k) < 1e-6, f"{cls} weights after a training call"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore:You passed `rms_scaling=True`:UserWarning")
def test_keras_parity_rms_scaling(seeded):
    keras = _keras()
    k_layer = keras.layers.LayerNormalization(rms_scaling=True)
    k_layer.build((None, 11))
    k_layer.set_weights([seeded.standard_normal(11).astype(np.float32)])
    p_layer = layers.LayerNormalization(rms_scaling=True)
    p_layer.build((None, 11))
    p_layer.set_weights(k_layer.get_weights())
    x = shifted(seeded, (5, 11), np.float32)
    assert rel_diff(p_layer(x), _to_numpy(k_layer(x))) < 1e-5


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_keras_parity_fit_with_batch_norm(seeded):
    """One epoch of SGD through Dense -> BatchNormalization -> Dense: the same weights,
    moving statistics included, as Keras."""
    keras = _keras()

    def build(lib):
        L = lib.layers
        return lib.Sequential([L.Input((6,)), L.Dense(8, activation="relu"),
                               L.BatchNormalization(momentum=0.8), L.Dense(3)])

    keras.utils.set_random_seed(3)
    k_model, p_model = build(keras), build(pynn)
    p_model.set_weights(k_model.get_weights())
    x = shifted(seeded, (40, 6), np.float32)
    y = seeded.standard_normal((40, 3)).astype(np.float32)
    k_model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    p_model.compile(optimizer=pynn.optimizers.SGD(0.05), loss="mse")
    k_model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    p_model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for p, k in zip(p_model.get_weights(), k_model.get_weights()):
        assert rel_diff(p, k) < 1e-5
    assert rel_diff(p_model.predict(x, verbose=0), k_model.predict(x, verbose=0)) < 1e-5


# -- config round trip --------------------------------------------------------------------

@pytest.mark.parametrize("layer", [
    lambda: layers.BatchNormalization(axis=1, momentum=0.5, epsilon=1e-4, center=False,
                                      gamma_regularizer="l2"),
    lambda: layers.LayerNormalization(axis=[-2, -1], rms_scaling=True, epsilon=1e-6),
    lambda: layers.GroupNormalization(groups=4, scale=False, beta_initializer="ones"),
    lambda: layers.RMSNormalization(axis=[-2, -1], epsilon=1e-4, name="rms_cfg"),
    lambda: layers.UnitNormalization(axis=(1, 2)),
], ids=["batch", "layer", "group", "rms", "unit"])
def test_config_round_trip(layer):
    original = layer()
    config = original.get_config()
    cls = layers.LAYERS[type(original).__name__]
    assert cls.from_config(config).get_config() == config


def test_model_with_all_three_saves_loads_and_trains_on(seeded, tmp_path):
    """Saved by class name from LAYERS, weights (moving statistics included) restored, and
    the loaded moving statistics are writable buffers that training updates."""
    model = pynn.Sequential([
        layers.Input((5, 4)), layers.LayerNormalization(axis=[-2, -1]), layers.Flatten(),
        layers.Dense(6), layers.BatchNormalization(), layers.Reshape((2, 3)),
        layers.GroupNormalization(groups=3), layers.Flatten(), layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    x = shifted(seeded, (20, 5, 4), np.float32)
    y = rand(seeded, (20, 2), np.float32)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    model.save(tmp_path / "norm.pynn")
    loaded = pynn.load_model(tmp_path / "norm.pynn")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    before = loaded.layers[3].get_weights()
    loaded.fit(x, y, epochs=1, batch_size=8, verbose=0)
    moved = loaded.layers[3].get_weights()
    assert not np.array_equal(moved[2], before[2]), "the loaded moving mean did not move"


def test_constraints_are_passed_to_the_weights():
    def clip(value):
        np.clip(value, -1, 1, out=value)

    layer = layers.BatchNormalization(gamma_constraint=clip, beta_constraint="non_neg")
    layer.build((None, 3))
    assert layer.gamma.constraint is clip
    assert isinstance(layer.beta.constraint, pynn.constraints.NonNeg)  # by name
    named = layers.BatchNormalization(beta_constraint="non_neg")
    assert named.get_config()["beta_constraint"]["class_name"] == "NonNeg"
    with pytest.raises(ValueError, match="plain callable .* cannot be saved"):
        layer.get_config()


# -- bad input ----------------------------------------------------------------------------

def test_axis_out_of_range_names_the_layer():
    with pytest.raises(ValueError, match=r"BatchNormalization 'bn_bad'.*axis 3 is out of "
                                         r"range.*\(None, 4, 5\)"):
        layers.BatchNormalization(axis=3, name="bn_bad").build((None, 4, 5))
    with pytest.raises(ValueError, match=r"LayerNormalization.*axis -4 is out of range"):
        layers.LayerNormalization(axis=-4).build((None, 4, 5))
    with pytest.raises(ValueError, match=r"GroupNormalization.*axis 0 is the batch axis"):
        layers.GroupNormalization(axis=0).build((None, 4, 5))


def test_channel_mismatch_names_the_layer(seeded):
    layer = layers.BatchNormalization(name="bn_ch")
    layer(np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"Layer 'bn_ch'.*expected input shape \(None, 5\), got "
                                         r"\(None, 6\)"):
        layer(np.ones((2, 6), np.float32))


def test_groups_must_divide_channels():
    with pytest.raises(ValueError, match=r"GroupNormalization 'gn_bad': groups=4 must divide "
                                         r"the 6 channels"):
        layers.GroupNormalization(groups=4, name="gn_bad").build((None, 3, 6))
    with pytest.raises(ValueError, match="groups must be a positive int or -1"):
        layers.GroupNormalization(groups=0)


def test_layer_norm_wants_trailing_axes():
    with pytest.raises(ValueError, match=r"must be the trailing axes"):
        layers.LayerNormalization(axis=1).build((None, 4, 5))


def test_unknown_argument_is_a_type_error():
    with pytest.raises(TypeError, match="renorm"):
        layers.BatchNormalization(renorm=True)


def test_bad_operands(backend, rng):
    x = backend.up(rand(rng, (4, 6), np.float32))
    vec = backend.up(np.ones(6, np.float32))
    short = backend.up(np.ones(5, np.float32))
    ops = backend.ops
    with pytest.raises(ValueError, match=r"batch_norm_forward: axis 2 is out of range for x of "
                                         r"rank 2"):
        ops.batch_norm_forward(x, vec, vec, backend.up(np.zeros(6, np.float32)),
                               backend.up(np.ones(6, np.float32)), 2, 0.9, 1e-3, False)
    with pytest.raises(ValueError, match=r"batch_norm_forward: 'gamma' must have shape \(6,\), "
                                         r"got \(5,\)"):
        ops.batch_norm_forward(x, short, vec, vec, vec, -1, 0.9, 1e-3, False)
    with pytest.raises(ValueError, match=r"'moving_mean' and 'moving_variance' must not share"):
        ops.batch_norm_forward(x, None, None, vec, vec, -1, 0.9, 1e-3, True)
    with pytest.raises(ValueError, match=r"'momentum' must be in \[0.0, 1.0\], got 1.5"):
        ops.batch_norm_forward(x, None, None, vec, backend.up(np.ones(6, np.float32)), -1, 1.5,
                               1e-3, True)
    with pytest.raises(ValueError, match=r"group_norm_forward: groups=4 must be a positive "
                                         r"divisor of the 6 channels"):
        ops.group_norm_forward(x, None, None, 4, 1e-3, False)
    with pytest.raises(ValueError, match=r"group_norm_backward: 'mean' must have shape "
                                         r"\(4, 2\)"):
        ops.group_norm_backward(x, x, None, backend.up(np.zeros((4, 3), np.float32)),
                                backend.up(np.ones((4, 2), np.float32)), 2, False, True)
    with pytest.raises(ValueError, match=r"batch_norm_backward: 'dy' must have shape \(4, 6\)"):
        ops.batch_norm_backward(backend.up(rand(rng, (4, 5), np.float32)), x, None, vec, vec,
                                -1, True, True)


# -- fold_batch_norm ----------------------------------------------------------------------

def _trained_bn(seeded, input_shape):
    c = input_shape[-1]
    bn = layers.BatchNormalization(epsilon=1e-3)
    bn.build(input_shape)
    bn.set_weights([seeded.standard_normal(c), seeded.standard_normal(c),
                    seeded.standard_normal(c), seeded.random(c) + 0.2])
    return bn


@pytest.mark.parametrize("use_bias", [True, False])
def test_fold_batch_norm_into_dense(seeded, use_bias):
    dense = layers.Dense(7, use_bias=use_bias)
    dense.build((None, 5))
    bn = _trained_bn(seeded, (None, 7))
    x = shifted(seeded, (9, 5), np.float32)
    want = bn(dense(x), training=False)
    kernel, bias = fold_batch_norm(dense.kernel.value, dense.bias.value if use_bias else None,
                                   *bn.get_weights(), epsilon=bn.epsilon)
    assert kernel.shape == (5, 7) and bias.shape == (7,) and kernel.dtype == np.float32
    folded = layers.Dense(7)
    folded.build((None, 5))
    folded.set_weights([kernel, bias])
    assert_close(folded(x), want, 1e-5, "folded Dense vs Dense + BatchNormalization")


def test_fold_batch_norm_into_conv2d(seeded):
    conv = layers.Conv2D(6, 3, padding="same")
    conv.build((None, 7, 5, 4))
    conv.bias.value[:] = seeded.standard_normal(6)
    bn = _trained_bn(seeded, (None, 7, 5, 6))
    x = shifted(seeded, (2, 7, 5, 4), np.float32)
    want = bn(conv(x), training=False)
    kernel, bias = fold_batch_norm(conv.kernel.value, conv.bias.value, *bn.get_weights(),
                                   epsilon=bn.epsilon)
    folded = layers.Conv2D(6, 3, padding="same")
    folded.build((None, 7, 5, 4))
    folded.set_weights([kernel, bias])
    assert_close(folded(x), want, 1e-5, "folded Conv2D vs Conv2D + BatchNormalization")


@pytest.mark.opencl
def test_fold_batch_norm_takes_device_arrays(restore_device, seeded):
    pynn.set_device("opencl")
    dense = layers.Dense(4)
    dense.build((None, 3))
    bn = _trained_bn(seeded, (None, 4))
    kernel, bias = fold_batch_norm(dense.kernel.value, dense.bias.value, bn.gamma.value,
                                   bn.beta.value, bn.moving_mean.value, bn.moving_variance.value)
    want = fold_batch_norm(*dense.get_weights(), *bn.get_weights())
    np.testing.assert_array_equal(kernel, want[0])
    np.testing.assert_array_equal(bias, want[1])


def test_fold_batch_norm_checks_shapes():
    with pytest.raises(ValueError, match=r"fold_batch_norm: 'gamma' must have shape \(4,\)"):
        fold_batch_norm(np.ones((3, 4)), None, np.ones(3), None, np.zeros(4), np.ones(4))


# -- RMSNormalization and UnitNormalization: the rms_norm and unit_norm ops ----------------

# x shapes: statistics per row of the last axis. Rows of >= 16 values reduce in a work-group
# each on OpenCL, narrower ones in a work-item each; odd sizes, one value, a wide row.
ROW_CASES = [(7, 5), (3, 4, 37), (1, 1), (2, 300), (31, 65), (5, 3, 16), (33, 7)]


@pytest.mark.parametrize("shape", ROW_CASES, ids=str)
@pytest.mark.parametrize("with_scale", [True, False], ids=["scale", "plain"])
def test_rms_norm_matches_reference(target, rng, shape, with_scale):
    x = shifted(rng, shape, target.dtype)  # a mean far from zero: no centering may happen
    scale = rand(rng, (shape[-1],), target.dtype) if with_scale else None
    _, (_, inv_rms) = check_op(target, "rms_norm_forward", x, scale, 1e-6,
                               ref=ref.rms_norm_forward_ref, rtol=tol(target))
    dy = rand(rng, shape, target.dtype)
    for need_input_grad in (True, False):
        check_op(target, "rms_norm_backward", dy, x, scale, inv_rms, need_input_grad,
                 ref=ref.rms_norm_backward_ref, rtol=tol(target))


@pytest.mark.parametrize("shape", ROW_CASES, ids=str)
def test_unit_norm_matches_reference(target, rng, shape):
    x = rand(rng, shape, target.dtype)
    _, (_, inv_norm) = check_op(target, "unit_norm_forward", x, 1e-12,
                                ref=ref.unit_norm_forward_ref, rtol=tol(target))
    check_op(target, "unit_norm_backward", rand(rng, shape, target.dtype), x, inv_norm, 1e-12,
             ref=ref.unit_norm_backward_ref, rtol=tol(target))


def test_unit_norm_caps_the_inverse_norm(target, rng):
    """A zero row and a row whose norm is below epsilon: inv_norm is the cap 1/epsilon,
    y = x * cap (zeros for the zero row), and dx = cap * dy there (the cap a constant, as
    torch's minimum makes it; Keras's own gradient is NaN there: torch's rsqrt backward
    multiplies the zero by an infinite or overflowing rsqrt^3)."""
    x = rand(rng, (4, 9), target.dtype)
    x[1] = 0
    x[2] *= 1e-14
    dy = rand(rng, x.shape, target.dtype)
    _, (y, inv_norm) = check_op(target, "unit_norm_forward", x, 1e-12,
                                ref=ref.unit_norm_forward_ref, rtol=tol(target))
    cap = target.dtype.type(1e12)
    np.testing.assert_array_equal(inv_norm[1:3], [cap, cap])
    np.testing.assert_array_equal(y[1], 0)
    _, dx = check_op(target, "unit_norm_backward", dy, x, inv_norm, 1e-12,
                     ref=ref.unit_norm_backward_ref, rtol=tol(target))
    np.testing.assert_allclose(dx[1:3], dy[1:3].astype(np.float64) * cap, rtol=1e-6)
    assert np.all(np.isfinite(dx))


def test_rms_norm_of_a_zero_row_is_zero_with_epsilon(target):
    """mean(x^2) = 0: inv_rms = 1/sqrt(epsilon), y = 0, as Keras's."""
    x = np.zeros((2, 6), target.dtype)
    x[0, 0] = 2.0
    y, inv = target.ops.rms_norm_forward(target.up(x), None, 1e-6)
    np.testing.assert_array_equal(target.down(y)[1], 0)
    np.testing.assert_allclose(target.down(inv)[1], 1e3, rtol=1e-6)


def test_row_norms_of_an_empty_batch(target):
    x = target.up(np.zeros((0, 4), target.dtype))
    y, inv = target.ops.rms_norm_forward(x, None, 1e-6)
    assert target.down(y).shape == (0, 4) and target.down(inv).shape == (0,)
    dx, dscale = target.ops.rms_norm_backward(x, x, None, inv, True)
    assert target.down(dx).shape == (0, 4)
    np.testing.assert_array_equal(target.down(dscale), np.zeros(4))
    y, inv = target.ops.unit_norm_forward(x, 1e-12)
    assert target.down(target.ops.unit_norm_backward(x, x, inv, 1e-12)).shape == (0, 4)


@pytest.mark.parametrize("op", ["rms", "unit"])
def test_row_norms_thread_count_does_not_change_results(rng, op):
    """Rows run in any split and dscale's row blocks are fixed by the size alone: 1, 2 and 3
    threads give the same bits."""
    from pynn.backend import cpu

    x = shifted(rng, (97, 13, 41), np.float32)
    dy = rand(rng, x.shape, np.float32)
    scale = rand(rng, (41,), np.float32)
    before = info.get_max_threads()
    results = []
    try:
        for n in (1, 2, 3):
            info.set_num_threads(n)
            if op == "rms":
                y, inv = cpu.rms_norm_forward(x, scale, 1e-6)
                grads = cpu.rms_norm_backward(dy, x, scale, inv, True)
            else:
                y, inv = cpu.unit_norm_forward(x, 1e-12)
                grads = (cpu.unit_norm_backward(dy, x, inv, 1e-12),)
            results.append((y, inv, *grads))
    finally:
        info.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.opencl
def test_row_norms_with_small_work_groups(small_work_groups, rng):
    backend = small_work_groups
    x = shifted(rng, (3, 5, 70), np.float32)
    dy = rand(rng, x.shape, np.float32)
    scale = rand(rng, (70,), np.float32)
    loose = {"rtol": 1e-4, "atol": 1e-4}
    _, (_, inv) = check_op(backend, "rms_norm_forward", x, scale, 1e-6,
                           ref=ref.rms_norm_forward_ref, rtol=loose)
    check_op(backend, "rms_norm_backward", dy, x, scale, inv, True,
             ref=ref.rms_norm_backward_ref, rtol=loose)
    _, (_, inv) = check_op(backend, "unit_norm_forward", x, 1e-12,
                           ref=ref.unit_norm_forward_ref, rtol=loose)
    check_op(backend, "unit_norm_backward", dy, x, inv, 1e-12,
             ref=ref.unit_norm_backward_ref, rtol=loose)


def test_row_norm_bad_operands(backend, rng):
    x = backend.up(rand(rng, (4, 6), np.float32))
    ops = backend.ops
    with pytest.raises(ValueError, match=r"rms_norm_forward: 'scale' must have shape \(6,\), "
                                         r"got \(5,\)"):
        ops.rms_norm_forward(x, backend.up(np.ones(5, np.float32)), 1e-6)
    with pytest.raises(ValueError, match=r"rms_norm_forward: 'x' must have at least 2 "
                                         r"dimensions"):
        ops.rms_norm_forward(backend.up(np.ones(6, np.float32)), None, 1e-6)
    with pytest.raises(ValueError, match=r"rms_norm_forward: 'epsilon' must be in \[0.0, "):
        ops.rms_norm_forward(x, None, -1.0)
    with pytest.raises(ValueError, match=r"rms_norm_backward: 'inv_rms' must have shape "
                                         r"\(4,\), got \(3,\)"):
        ops.rms_norm_backward(x, x, None, backend.up(np.ones(3, np.float32)), True)
    with pytest.raises(ValueError, match=r"unit_norm_forward: 'epsilon' must be in "):
        ops.unit_norm_forward(x, 0.0)
    with pytest.raises(ValueError, match=r"unit_norm_backward: 'dy' must have shape \(4, 6\)"):
        ops.unit_norm_backward(backend.up(rand(rng, (4, 5), np.float32)), x,
                               backend.up(np.ones(4, np.float32)), 1e-12)


# -- the layers: finite differences, masks, models, files, bad input ----------------------

@pytest.mark.parametrize("shape,axis", [((4, 7), -1), ((3, 4, 5), [-2, -1]),
                                        ((2, 3, 2, 3), [1, 2, 3]), ((5, 3), 1)], ids=str)
@pytest.mark.parametrize("epsilon", [1e-6, 0.5])
def test_rms_norm_gradients(float64, seeded, shape, axis, epsilon):
    layer = layers.RMSNormalization(axis=axis, epsilon=epsilon)
    layer.build((None,) + shape[1:])
    layer.scale.value[...] = seeded.standard_normal(layer.scale.shape)
    params = check_gradients(layer, shifted(seeded, shape, np.float64, loc=1.0), seeded)
    assert [v.name for v in params] == ["scale"]


@pytest.mark.parametrize("shape,axis", [((4, 7), -1), ((3, 4, 5), [-2, -1]), ((3, 4, 5), 1),
                                        ((2, 3, 4, 3), [1, 3]), ((2, 3, 4, 3), (2, 1))],
                         ids=str)
def test_unit_norm_gradients(float64, seeded, shape, axis):
    layer = layers.UnitNormalization(axis=axis)
    layer.build((None,) + shape[1:])
    assert check_gradients(layer, rand(seeded, shape, np.float64), seeded) == []


def test_unit_norm_normalizes_over_every_named_axis(seeded):
    x = rand(seeded, (2, 3, 4, 5), np.float32)
    y = layers.UnitNormalization(axis=[1, 3])(x)
    np.testing.assert_allclose(np.sum(y.astype(np.float64) ** 2, axis=(1, 3)), 1.0, rtol=1e-6)
    want = x / np.sqrt(np.sum(x.astype(np.float64) ** 2, axis=(1, 3), keepdims=True))
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-7)


def test_rms_and_unit_norm_masks_as_keras():
    """Keras 3: UnitNormalization passes its input's mask on; RMSNormalization does not
    support masking and drops it."""
    mask = np.array([[True, False, True]])
    x = np.ones((1, 3, 4), np.float32)
    assert layers.UnitNormalization().compute_mask(x, mask) is mask
    assert layers.RMSNormalization().compute_mask(x, mask) is None


def _row_norm_model():
    return pynn.Sequential([
        layers.Input((5, 6)), layers.Dense(6), layers.RMSNormalization(),
        layers.UnitNormalization(axis=1), layers.RMSNormalization(axis=[-2, -1], epsilon=1e-3),
        layers.Flatten(), layers.Dense(2)])


def test_model_with_rms_and_unit_norm_trains_saves_and_loads(seeded, tmp_path):
    model = _row_norm_model()
    model.compile(optimizer="adam", loss="mse")
    x = shifted(seeded, (20, 5, 6), np.float32)
    y = rand(seeded, (20, 2), np.float32)
    scale = model.layers[1].get_weights()[0].copy()
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert not np.array_equal(model.layers[1].get_weights()[0], scale), "scale did not train"
    model.save(tmp_path / "rows.pynn")
    loaded = pynn.load_model(tmp_path / "rows.pynn")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert [type(layer).__name__ for layer in loaded.layers][1:4] == [
        "RMSNormalization", "UnitNormalization", "RMSNormalization"]
    loaded.fit(x, y, epochs=1, batch_size=8, verbose=0)


@pytest.mark.opencl
def test_model_with_rms_and_unit_norm_on_opencl_matches_cpu(restore_device, seeded):
    x = shifted(seeded, (20, 5, 6), np.float32)
    y = rand(seeded, (20, 2), np.float32)
    pynn.set_device("cpu")
    initial = _row_norm_model().get_weights()
    trained = {}
    for device in ("cpu", "opencl"):
        pynn.set_device(device)
        model = _row_norm_model()
        model.set_weights(initial)
        model.compile(optimizer="adam", loss="mse")
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        trained[device] = (model.get_weights(), model.predict(x, verbose=0))
    for i, (g, w) in enumerate(zip(trained["opencl"][0], trained["cpu"][0])):
        assert_close(g, w, 1e-3, f"weight {i} after training on OpenCL vs CPU")
    assert_close(trained["opencl"][1], trained["cpu"][1], 1e-3, "predictions, OpenCL vs CPU")


ROW_PARITY = [
    ("RMSNormalization", {}, (4, 9)),
    ("RMSNormalization", {"axis": [-2, -1], "epsilon": 1e-3}, (3, 5, 7)),
    ("RMSNormalization", {"epsilon": 0.1}, (2, 3, 4, 33)),
    ("UnitNormalization", {}, (4, 9)),
    ("UnitNormalization", {"axis": [-2, -1]}, (3, 5, 7)),
    ("UnitNormalization", {"axis": 1}, (3, 5, 7)),
    ("UnitNormalization", {"axis": [1, 3]}, (2, 3, 4, 5)),
]


@pytest.mark.parametrize("cls,kwargs,shape", ROW_PARITY,
                         ids=[f"{c}-{k}-{len(s)}d" for c, k, s in ROW_PARITY])
def test_keras_parity_rms_and_unit_norm(backend, restore_device, seeded, cls, kwargs, shape):
    """Keras's weights in: Keras's outputs (<= 1e-5 relative) and Keras's gradients (torch's
    autodiff of the Keras layer) for the input and the scale, on both backends."""
    keras = _keras()
    import torch

    k_layer = getattr(keras.layers, cls)(**kwargs)
    k_layer.build((None,) + shape[1:])
    if k_layer.weights:
        k_layer.set_weights([seeded.standard_normal(w.shape).astype(np.float32)
                             for w in k_layer.get_weights()])
    x = shifted(seeded, shape, np.float32, loc=0.5)
    r = rand(seeded, shape, np.float32)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = k_layer(xt)
    (yt * torch.from_numpy(r)).sum().backward()
    pynn.set_device(backend.name)
    b = pynn.backend.current()
    p_layer = getattr(layers, cls)(**kwargs)
    p_layer.build((None,) + shape[1:])
    p_layer.set_weights(k_layer.get_weights())
    got = b.to_numpy(p_layer(b.asarray(x), training=True))
    want = _to_numpy(yt)
    assert rel_diff(got, want) < 1e-5, f"{cls}: output {rel_diff(got, want)}"
    dx = b.to_numpy(p_layer.backward(b.asarray(r)))
    assert rel_diff(dx, _to_numpy(xt.grad)) < 1e-5, f"{cls} dx: {rel_diff(dx, _to_numpy(xt.grad))}"
    if k_layer.weights:
        k_grad = _to_numpy(k_layer.scale.value.grad)
        p_grad = b.to_numpy(p_layer.scale.grad)
        assert rel_diff(p_grad, k_grad) < 1e-5, f"{cls} dscale: {rel_diff(p_grad, k_grad)}"


def _keras_row_norm_models(keras):
    K = keras.layers
    x = keras.Input((5, 6))
    h = K.RMSNormalization()(K.Dense(6)(x))
    h = K.UnitNormalization(axis=1)(h)
    h = K.RMSNormalization(axis=[-2, -1], epsilon=1e-3)(h)
    dense = keras.Model(x, K.Dense(3)(K.Flatten()(h)))
    # a mask through UnitNormalization into the GRU that reads it
    ids = keras.Input((7,), dtype="int32")
    h = K.UnitNormalization()(K.Embedding(20, 4, mask_zero=True)(ids))
    masked = keras.Model(ids, K.Dense(2)(K.GRU(3)(h)))
    return [dense, masked]


def _keras_inputs(model, rng):
    t = model.inputs[0]
    shape = (3,) + tuple(t.shape[1:])
    if "int" in str(t.dtype):
        ids = rng.integers(1, 20, shape).astype("int32")
        ids[:, 4:] = 0
        ids[1, 2:] = 0
        return ids
    return rng.standard_normal(shape).astype("float32")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("which", [0, 1], ids=["dense", "masked"])
def test_keras_file_round_trip_rms_and_unit_norm(tmp_path, seeded, which):
    """Keras saves a .keras file, pynn loads it and predicts the same; pynn saves it again
    and keras.saving.load_model predicts the same (<= 1e-5)."""
    keras = _keras()
    pytest.importorskip("h5py")
    k_model = _keras_row_norm_models(keras)[which]
    k_model.set_weights([seeded.standard_normal(w.shape).astype(np.float32) * 0.5
                         for w in k_model.get_weights()])
    x = _keras_inputs(k_model, seeded)
    want = k_model.predict(x, verbose=0)
    k_model.save(tmp_path / "k.keras")
    model = pynn.load_model(tmp_path / "k.keras")
    assert {"RMSNormalization", "UnitNormalization"} & {type(la).__name__
                                                         for la in model.layers}
    np.testing.assert_allclose(model.predict(x, verbose=0), want, rtol=1e-5, atol=1e-5)
    model.save(tmp_path / "p.keras")
    back = keras.saving.load_model(tmp_path / "p.keras")
    np.testing.assert_allclose(back.predict(x, verbose=0), want, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_pynn_model_with_rms_and_unit_norm_opens_in_keras(tmp_path, seeded):
    keras = _keras()
    pytest.importorskip("h5py")
    model = _row_norm_model()
    model.set_weights([seeded.standard_normal(w.shape).astype(np.float32)
                       for w in model.get_weights()])
    x = shifted(seeded, (4, 5, 6), np.float32)
    model.save(tmp_path / "p.keras")
    back = keras.saving.load_model(tmp_path / "p.keras")
    np.testing.assert_allclose(back.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-5)


def test_rms_and_unit_norm_bad_input_names_the_layer():
    with pytest.raises(ValueError, match=r"RMSNormalization 'rms_bad': axis 1 must be the "
                                         r"trailing axes of input shape \(None, 4, 5\)"):
        layers.RMSNormalization(axis=1, name="rms_bad").build((None, 4, 5))
    with pytest.raises(ValueError, match=r"RMSNormalization.*axis 3 is out of range"):
        layers.RMSNormalization(axis=3).build((None, 4, 5))
    with pytest.raises(ValueError, match=r"RMSNormalization.*epsilon must be finite and >= 0"):
        layers.RMSNormalization(epsilon=-1.0)
    with pytest.raises(TypeError, match=r"RMSNormalization.*epsilon must be a number"):
        layers.RMSNormalization(epsilon="small")
    with pytest.raises(TypeError, match=r"RMSNormalization.*unexpected arguments \['center'\]"):
        layers.RMSNormalization(center=True)
    with pytest.raises(ValueError, match=r"UnitNormalization 'unit_bad': axis 0 is the batch "
                                         r"axis"):
        layers.UnitNormalization(axis=0, name="unit_bad").build((None, 4, 5))
    with pytest.raises(TypeError, match=r"UnitNormalization.*axis must be an int"):
        layers.UnitNormalization(axis="last")
    with pytest.raises(ValueError, match=r"UnitNormalization.*axis must name at least one"):
        layers.UnitNormalization(axis=[])
    with pytest.raises(ValueError, match=r"UnitNormalization.*at most 6 axes"):
        layers.UnitNormalization(axis=1).build((None, 2, 2, 2, 2, 2, 2))
    with pytest.raises(ValueError, match=r"UnitNormalization.*must have a defined size"):
        layers.UnitNormalization(axis=1).build((None, None, 4))
    layer = layers.RMSNormalization(name="rms_shape")
    layer(np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"Layer 'rms_shape'.*expected input shape "
                                         r"\(None, 5\), got \(None, 6\)"):
        layer(np.ones((2, 6), np.float32))
