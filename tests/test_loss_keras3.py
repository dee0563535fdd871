"""Keras 3's CTC, Circle and CategoricalGeneralizedCrossEntropy losses (the loss family).

ctc_loss_forward_backward and circle_loss_forward_backward against their float64 oracles
(tests/reference/loss_ref.py) on both backends, OpenCL against the CPU, central differences
in float64, Keras 3 (torch backend) and torch.nn.functional.ctc_loss parity of values and
gradients, bad inputs; the Loss classes (arguments, get_config, Keras's names) and training
through compile/fit. CategoricalGeneralizedCrossEntropy is a code of loss_forward_backward:
its kernel cases run with the other codes' in tests/test_loss.py.
"""

import os

import numpy as np
import pytest

import pynn
from pynn import losses
from pynn._native.info import set_num_threads
from pynn._native.loss import circle_loss_forward_backward, ctc_loss_forward_backward
from tests.backend_util import check_op, keras_on_torch
from tests.reference.gradcheck import assert_close, numerical_grad
from tests.reference.loss_ref import (
    circle_loss_forward_backward_ref,
    circle_per_sample_ref,
    ctc_brute_force_ref,
    ctc_loss_forward_backward_ref,
    ctc_per_sample_ref,
)

# Float32 kernels against the float64 oracles (whose gradients are central differences);
# float64 kernels at the oracles' own accuracy.
TOL = {np.dtype(np.float32): dict(rtol=2e-4, atol=2e-5),
       np.dtype(np.float64): dict(rtol=1e-6, atol=1e-8)}


def ctc_labels(rng, batch, width, classes, steps):
    """(batch, width) int32 labels padded with 0 at the end, each row able to fit ``steps``
    (its labels plus a blank between repeats): row b holds width - b labels (cycling back to
    width after an empty row), row 1 starts with a repeat."""
    labels = np.zeros((batch, width), np.int32)
    for b in range(batch):
        row = rng.integers(1, classes, size=width - b % (width + 1))
        if b == 1 and row.size >= 2:
            row[1] = row[0]
        while row.size + np.count_nonzero(row[1:] == row[:-1]) > steps:
            row = row[:-1]
        labels[b, :row.size] = row
    return labels


# (batch, steps T, classes C, label width): odd sizes, one step, two classes, no labels.
CTC_SHAPES = [(1, 1, 2, 1), (3, 7, 5, 4), (5, 13, 11, 6), (2, 33, 4, 9), (4, 6, 3, 0)]


def ctc_data(shape, seed, dtype=np.float32):
    batch, steps, classes, width = shape
    rng = np.random.default_rng(seed)
    labels = ctc_labels(rng, batch, width, classes, steps)
    logits = (rng.standard_normal((batch, steps, classes)) * 2).astype(dtype)
    weights = rng.uniform(0.5, 2.0, batch).astype(dtype)
    return labels, logits, weights


def unit_rows(rng, n, dim, dtype=np.float32, norm=1.0):
    e = rng.standard_normal((n, dim))
    return (norm * e / np.linalg.norm(e, axis=1, keepdims=True)).astype(dtype)


# (N, D, labels drawn from range(classes)): single rows (masked), shared labels, odd sizes.
CIRCLE_SHAPES = [(1, 3, 1), (7, 5, 3), (13, 4, 5), (33, 17, 6), (6, 2, 6)]
CIRCLE_ARGS = [(80.0, 0.4, True), (16.0, 0.25, False), (40.0, -0.1, True)]


def circle_data(shape, seed, dtype=np.float32, norm=1.0):
    n, dim, classes = shape
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n).astype(np.int32)
    return (labels, unit_rows(rng, n, dim, dtype, norm),
            rng.uniform(0.5, 2.0, n).astype(dtype))


# -- CTC ------------------------------------------------------------------------------------

@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("shape", CTC_SHAPES, ids=str)
def test_ctc_matches_reference(target, shape, weighted):
    labels, logits, weights = ctc_data(shape, sum(shape), target.dtype)
    sw = weights if weighted else None
    check_op(target, "ctc_loss_forward_backward", labels, logits, True, sw,
             ref=ctc_loss_forward_backward_ref, rtol=TOL[target.dtype])
    _, (loss, grad) = check_op(target, "ctc_loss_forward_backward", labels, logits, False, sw,
                               ref=ctc_loss_forward_backward_ref, rtol=TOL[target.dtype])
    assert grad is None


def test_ctc_oracle_sums_every_alignment():
    """The log-space recursion (and the kernel) against the sum over all C^T paths."""
    rng = np.random.default_rng(3)
    for steps, classes, width in [(1, 2, 1), (4, 3, 2), (5, 4, 3), (6, 3, 3)]:
        labels = ctc_labels(rng, 4, width, classes, steps)
        logits = rng.standard_normal((4, steps, classes)) * 2
        want = ctc_brute_force_ref(labels, logits)
        np.testing.assert_allclose(ctc_per_sample_ref(labels, logits), want, rtol=1e-12)
        np.testing.assert_allclose(ctc_loss_forward_backward(labels, logits, False)[0],
                                   want.mean(), rtol=1e-12)


@pytest.mark.parametrize("shape", [(3, 7, 5, 4), (2, 9, 3, 3), (4, 6, 3, 0)], ids=str)
def test_ctc_gradient_central_differences(shape):
    labels, logits, weights = ctc_data(shape, 11, np.float64)
    for sw in (None, weights):
        _, grad = ctc_loss_forward_backward(labels, logits, True, sw)
        numeric = numerical_grad(lambda: ctc_loss_forward_backward(labels, logits, False,
                                                                   sw)[0], logits)
        assert_close(f"ctc {shape}", grad, numeric, rtol=1e-6, atol=1e-8)


def test_ctc_matches_keras_and_torch():
    keras = keras_on_torch()
    import torch

    for shape in [(4, 9, 6, 4), (3, 13, 5, 6)]:
        labels, logits, weights = ctc_data(shape, 5)
        for sw in (None, weights):
            x = torch.tensor(logits, requires_grad=True)
            want = keras.losses.CTC()(torch.tensor(labels), x,
                                      sample_weight=None if sw is None else torch.tensor(sw))
            want.backward()
            loss, grad = ctc_loss_forward_backward(labels, logits, True, sw)
            np.testing.assert_allclose(loss, float(want.detach()), rtol=1e-6)
            np.testing.assert_allclose(grad, x.grad.numpy(), rtol=1e-5, atol=1e-7)
        # torch's own ctc_loss in float64: the float64 kernel to ~1e-12
        x64 = torch.tensor(logits.astype(np.float64), requires_grad=True)
        lengths = torch.tensor(np.count_nonzero(labels, axis=1))
        per_sample = torch.nn.functional.ctc_loss(
            torch.log_softmax(x64, -1).transpose(0, 1), torch.tensor(labels, dtype=torch.long),
            torch.full((shape[0],), shape[1], dtype=torch.long), lengths, blank=0,
            reduction="none")
        per_sample.mean().backward()
        loss, grad = ctc_loss_forward_backward(labels, logits.astype(np.float64), True)
        np.testing.assert_allclose(loss, float(per_sample.mean().detach()), rtol=1e-12)
        np.testing.assert_allclose(grad, x64.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_ctc_thread_count_gives_the_same_bits():
    labels, logits, weights = ctc_data((37, 21, 9, 7), 2)
    results = []
    try:
        for n in (1, 2, 3):
            set_num_threads(n)
            results.append(ctc_loss_forward_backward(labels, logits, True, weights))
    finally:
        set_num_threads(os.cpu_count() or 1)
    for loss, grad in results[1:]:
        assert loss == results[0][0]
        np.testing.assert_array_equal(grad, results[0][1])


def test_ctc_empty_batch_is_zero(backend):
    ops = backend.ops
    labels = backend.up(np.zeros((0, 3), np.int32))
    loss, grad = ops.ctc_loss_forward_backward(labels, ops.zeros((0, 5, 4)), True, None)
    assert loss == 0.0 and tuple(grad.shape) == (0, 5, 4)


CTC_BAD_LABELS = [
    ([[1, 2, 3, 4, 1, 2, 3, 4]], r"the labels of row 0 \(8 labels, 0 repeated\) need at least "
                                 r"8 time steps, but y_pred has T=6"),
    ([[1, 2, 0, 0, 0], [2, 2, 2, 2, 0]], r"the labels of row 1 \(4 labels, 3 repeated\) need "
                                         r"at least 7 time steps"),
    ([[1, -2, 0]], r"label -2 out of range: CTC labels must lie in \[1, 5\) for y_pred with "
                   r"C=5 classes"),
    ([[1, 5, 0]], "label 5 out of range"),
    ([[1, 0, 2, 0]], r"CTC labels must be padded with 0 \(the blank\) at the end only; row 0 "
                     r"is \[1, 0, 2, 0\]"),
]


@pytest.mark.parametrize("bad,match", CTC_BAD_LABELS,
                         ids=["too-long", "repeats", "negative", "too-large", "inner-padding"])
def test_ctc_bad_labels_are_refused(backend, bad, match):
    labels = backend.up(np.array(bad, np.int32))
    logits = backend.up(np.random.default_rng(0).standard_normal(
        (len(bad), 6, 5)).astype(np.float32))
    with pytest.raises(ValueError, match="ctc_loss_forward_backward: " + match):
        backend.ops.ctc_loss_forward_backward(labels, logits, True, None)


def test_ctc_bad_shapes_are_refused(backend):
    ops, up = backend.ops, backend.up
    rng = np.random.default_rng(1)
    logits = up(rng.standard_normal((2, 6, 5)).astype(np.float32))
    labels = up(np.array([[1, 2], [3, 0]], np.int32))
    with pytest.raises(ValueError, match=r"'y_pred' must be \(batch, time, classes\) logits, "
                                         r"got shape \(2, 30\)"):
        ops.ctc_loss_forward_backward(labels, up(np.ones((2, 30), np.float32)), True, None)
    with pytest.raises(ValueError, match=r"'y_true' must be \(2, max_length\) integer labels"
                                         r" for y_pred \(2, 6, 5\), got shape \(3, 2\)"):
        ops.ctc_loss_forward_backward(up(np.ones((3, 2), np.int32)), logits, True, None)
    with pytest.raises(ValueError, match="at least 2 classes"):
        ops.ctc_loss_forward_backward(labels, up(np.ones((2, 6, 1), np.float32)), True, None)
    with pytest.raises(ValueError, match=r"'sample_weight' must have shape \(2,\) or \(2, 1\)"):
        ops.ctc_loss_forward_backward(labels, logits, True, up(np.ones(3, np.float32)))
    with pytest.raises(ValueError, match="required"):
        ops.ctc_loss_forward_backward(None, logits, True, None)


def test_ctc_labels_must_be_integers():
    with pytest.raises(ValueError, match="must hold integer class ids, got 1.5"):
        ctc_loss_forward_backward(np.array([[1.5, 2.0]]), np.zeros((1, 4, 3), np.float32))


@pytest.mark.opencl
def test_ctc_on_small_work_groups_strides_over_states(small_work_groups):
    """A work-group (16 items here) smaller than a row's states (2 * 23 + 1) and steps x
    classes: every item walks several; the generalized CE's rows wider than the group too."""
    rng = np.random.default_rng(12)
    labels = ctc_labels(rng, 3, 23, 7, 40)
    labels[0] = np.arange(23) % 6 + 1   # 23 labels, no repeat: 47 states
    logits = rng.standard_normal((3, 40, 7)).astype(np.float32)
    check_op(small_work_groups, "ctc_loss_forward_backward", labels, logits, True, None,
             ref=ctc_loss_forward_backward_ref, rtol=TOL[np.dtype(np.float32)])
    p = rng.uniform(0.05, 1.0, (5, 131)).astype(np.float32)
    ids = rng.integers(0, 131, 5).astype(np.int32)
    check_op(small_work_groups, "loss_forward_backward", "categorical_generalized_cross_entropy",
             ids, p, False, {"q": 0.4}, True, ref=None, rtol=TOL[np.dtype(np.float32)])


@pytest.mark.parametrize("special", [np.nan, np.inf, -np.inf], ids=["nan", "+inf", "-inf"])
def test_ctc_nonfinite_logits(backend, special):
    """A NaN or +inf logit: the loss NaN and its sample's whole gradient NaN (torch's), the
    other samples' untouched; OpenCL as the CPU. A -inf logit: a finite loss, as Keras's
    (torch's gradient is NaN on that step, from -inf - -inf; pynn's is the finite limit)."""
    labels, logits, _ = ctc_data((3, 6, 4, 2), 7)
    logits[1, 2, 1] = special
    loss, grad = backend.ops.ctc_loss_forward_backward(backend.up(labels), backend.up(logits),
                                                       True, None)
    grad = backend.down(grad)
    want_loss, want_grad = ctc_loss_forward_backward(labels, logits, True)
    if np.isnan(special) or special > 0:
        assert np.isnan(loss) and np.isnan(want_loss)
        assert np.isnan(grad[1]).all() and np.isfinite(grad[[0, 2]]).all()
    else:
        np.testing.assert_allclose(loss, ctc_loss_forward_backward_ref(labels, logits, False)[0],
                                   rtol=1e-5)
        assert np.isfinite(grad).all()
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)


# -- Circle ---------------------------------------------------------------------------------

@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("args", CIRCLE_ARGS, ids=str)
@pytest.mark.parametrize("shape", CIRCLE_SHAPES, ids=str)
def test_circle_matches_reference(target, shape, args, weighted):
    # Norm 0.95: no similarity sits on the kink of max(1 - s, 0) (the diagonal included).
    labels, e, weights = circle_data(shape, sum(shape), target.dtype, norm=0.95)
    sw = weights if weighted else None

    def ref(*op_args):
        return circle_loss_forward_backward_ref(*op_args, dtype=target.dtype)

    check_op(target, "circle_loss_forward_backward", labels, e, *args, True, sw, ref=ref,
             rtol=TOL[target.dtype])
    _, (_, grad) = check_op(target, "circle_loss_forward_backward", labels, e, *args, False,
                            sw, ref=ref, rtol=TOL[target.dtype])
    assert grad is None


@pytest.mark.parametrize("args", CIRCLE_ARGS, ids=str)
def test_circle_gradient_central_differences(args):
    labels, e, weights = circle_data((9, 4, 3), 4, np.float64, norm=0.95)
    labels[8] = 7  # a sample with no positive pair: masked out of the mean
    for sw in (None, weights):
        _, grad = circle_loss_forward_backward(labels, e, *args, True, sw)
        numeric = numerical_grad(lambda: circle_loss_forward_backward(labels, e, *args, False,
                                                                      sw)[0], e)
        assert_close(f"circle {args}", grad, numeric, rtol=1e-6, atol=1e-8)


def test_circle_masks_samples_without_a_pair_as_keras():
    """A sample alone in its class (no positive) or a batch of one class (no negative) has
    loss 0, and Keras's mask leaves it out: the mean divides by the others' count."""
    rng = np.random.default_rng(8)
    e = unit_rows(rng, 6, 4, np.float64)
    labels = np.array([0, 1, 0, 2, 1, 3], np.int32)
    per_sample = circle_per_sample_ref(labels, e)
    assert per_sample[3] == 0 and per_sample[5] == 0 and np.all(per_sample[[0, 1, 2, 4]] > 0)
    loss, grad = circle_loss_forward_backward(labels, e)
    np.testing.assert_allclose(loss, per_sample.sum() / 4, rtol=1e-12)
    loss, grad = circle_loss_forward_backward(np.zeros(6, np.int32), e)
    assert loss == 0.0 and not grad.any()
    loss, grad = circle_loss_forward_backward(np.arange(6, dtype=np.int32), e)
    assert loss == 0.0 and not grad.any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_circle_matches_keras(dtype):
    keras = keras_on_torch()
    import torch

    for shape, args in [((9, 6, 3), (80.0, 0.4, True)), ((12, 5, 4), (16.0, 0.25, False))]:
        labels, e, weights = circle_data(shape, 6, dtype)
        labels[-1] = 99  # masked by Keras
        for sw in (None, weights):
            x = torch.tensor(e, requires_grad=True)
            fn = keras.losses.Circle(*args, dtype=np.dtype(dtype).name)
            want = fn(torch.tensor(labels), x,
                      sample_weight=None if sw is None else torch.tensor(sw))
            want.backward()
            loss, grad = circle_loss_forward_backward(labels, e, *args, True, sw)
            # Keras sums in float32 (its reduction), and 1 - s in float32 loses digits that
            # gamma 80 scales up: float32 agrees to 2e-6 of the largest entry.
            want_grad = x.grad.numpy()
            np.testing.assert_allclose(loss, float(want.detach()), rtol=2e-6)
            np.testing.assert_allclose(grad, want_grad, rtol=1e-5,
                                       atol=2e-6 * np.abs(want_grad).max())


@pytest.mark.parametrize("special", [np.nan, np.inf, -np.inf], ids=["nan", "+inf", "-inf"])
def test_circle_nonfinite_embeddings_give_nan(backend, special):
    """A NaN or infinite embedding entry: the loss and the whole gradient NaN on both
    backends (Keras's mask drops the row but NaN * 0 stays NaN; Keras gives inf for -inf)."""
    labels, e, weights = circle_data((6, 4, 2), 3)
    e[2, 1] = special
    loss, grad = backend.ops.circle_loss_forward_backward(
        backend.up(labels), backend.up(e), 80.0, 0.4, True, True, backend.up(weights))
    assert np.isnan(loss) and np.isnan(backend.down(grad)).all()


@pytest.mark.parametrize("remove_diagonal", [True, False])
def test_circle_ties_split_the_gradient_as_keras(backend, remove_diagonal):
    """Exactly unit rows (s_ii = 1) and duplicated rows (s_ij = 1) sit on the kink of
    max(1 - s, 0): torch's maximum gives each side half the gradient there, and so does
    pynn (Keras's gradients through its float32 matmul are the reference). The kink shows
    in a negative pair (rows 0 and 2: one direction, two labels); a positive pair's logit
    -(m + d)(m - d) is flat in d at d = 0."""
    keras = keras_on_torch()
    import torch

    rng = np.random.default_rng(13)
    e = np.concatenate([np.eye(4, dtype=np.float32)[[0, 1, 0, 2]],
                        unit_rows(rng, 5, 4)]).astype(np.float32)
    labels = np.array([0, 1, 2, 1, 2, 0, 2, 1, 0], np.int32)
    x = torch.tensor(e, requires_grad=True)
    want = keras.losses.Circle(gamma=20.0, remove_diagonal=remove_diagonal)(
        torch.tensor(labels), x)
    want.backward()
    loss, grad = backend.ops.circle_loss_forward_backward(
        backend.up(labels), backend.up(e), 20.0, 0.4, remove_diagonal, True, None)
    want_grad = x.grad.numpy()
    np.testing.assert_allclose(loss, float(want.detach()), rtol=2e-6)
    np.testing.assert_allclose(backend.down(grad), want_grad, rtol=1e-5,
                               atol=2e-6 * np.abs(want_grad).max())


def test_circle_thread_count_gives_the_same_bits():
    labels, e, weights = circle_data((71, 33, 9), 2)
    results = []
    try:
        for n in (1, 2, 3):
            set_num_threads(n)
            results.append(circle_loss_forward_backward(labels, e, 80.0, 0.4, True, True,
                                                        weights))
    finally:
        set_num_threads(os.cpu_count() or 1)
    for loss, grad in results[1:]:
        assert loss == results[0][0]
        np.testing.assert_array_equal(grad, results[0][1])


def test_circle_bad_inputs_are_refused(backend):
    ops, up = backend.ops, backend.up
    labels, e, _ = circle_data((5, 3, 2), 1)
    labels, e = up(labels), up(e)
    op = "circle_loss_forward_backward: "
    with pytest.raises(ValueError, match=op + r"'y_pred' must be \(batch, embedding\) "
                                              r"embeddings, got shape \(5, 3, 1\)"):
        ops.circle_loss_forward_backward(labels, up(np.ones((5, 3, 1), np.float32)), 80.0,
                                         0.4, True, True, None)
    with pytest.raises(ValueError, match=op + r"'y_true' must be \(5,\) or \(5, 1\) integer "
                                              r"labels for y_pred \(5, 3\), got shape \(4,\)"):
        ops.circle_loss_forward_backward(up(np.zeros(4, np.int32)), e, 80.0, 0.4, True, True,
                                         None)
    with pytest.raises(ValueError, match=op + "'gamma' must not be NaN"):
        ops.circle_loss_forward_backward(labels, e, float("nan"), 0.4, True, True, None)
    with pytest.raises(TypeError, match=op + "'remove_diagonal' must be a bool, got 1"):
        ops.circle_loss_forward_backward(labels, e, 80.0, 0.4, 1, True, None)
    with pytest.raises(ValueError, match=op + r"'sample_weight' must have shape \(5,\)"):
        ops.circle_loss_forward_backward(labels, e, 80.0, 0.4, True, True,
                                         up(np.ones((5, 2), np.float32)))
    with pytest.raises(ValueError, match=op + "'y_pred' needs embeddings of at least one"):
        ops.circle_loss_forward_backward(labels, up(np.ones((5, 0), np.float32)), 80.0, 0.4,
                                         True, True, None)


# -- the Loss classes -----------------------------------------------------------------------

KERAS_CONFIGS = [
    ("CTC", {}, {"name": "ctc"}),
    ("Circle", {"gamma": 32.0, "margin": 0.3, "remove_diagonal": False},
     {"name": "circle", "gamma": 32.0, "margin": 0.3, "remove_diagonal": False}),
    ("CategoricalGeneralizedCrossEntropy", {"q": 0.7},
     {"name": "categorical_generalized_cross_entropy", "q": 0.7}),
]


@pytest.mark.parametrize("cls,kwargs,config", KERAS_CONFIGS, ids=[c[0] for c in KERAS_CONFIGS])
def test_loss_classes_take_keras_arguments_and_configs(cls, kwargs, config):
    loss = getattr(losses, cls)(**kwargs)
    assert loss.get_config() == config
    again = losses.get({"class_name": cls, "config": loss.get_config()})
    assert type(again) is type(loss) and again.get_config() == config
    assert type(losses.get(losses.serialize(loss))) is type(loss)
    try:
        keras = keras_on_torch()
    except pytest.skip.Exception:
        return
    want = getattr(keras.losses, cls)(**kwargs).get_config()
    assert want.pop("reduction") == "sum_over_batch_size"
    assert want == config


def test_keras_names_resolve():
    # Keras 3.15 registers "ctc", "circle" and the class names; pynn adds the generalized
    # cross-entropy's snake name beside its class name.
    for name, cls in [("ctc", losses.CTC), ("CTC", losses.CTC), ("circle", losses.Circle),
                      ("Circle", losses.Circle),
                      ("CategoricalGeneralizedCrossEntropy",
                       losses.CategoricalGeneralizedCrossEntropy),
                      ("categorical_generalized_cross_entropy",
                       losses.CategoricalGeneralizedCrossEntropy)]:
        assert type(losses.get(name)) is cls, name
    assert type(losses.get(losses.ctc)) is losses.CTC
    assert type(losses.get(losses.circle)) is losses.Circle


def test_loss_class_arguments_are_checked():
    for q in (0, 1, 1.5, -0.2, "0.5"):
        with pytest.raises(ValueError, match="CategoricalGeneralizedCrossEntropy: q must be a "
                                             "number in the interval \\(0, 1\\)"):
            losses.CategoricalGeneralizedCrossEntropy(q=q)
    with pytest.raises(TypeError, match="Circle: remove_diagonal must be a bool"):
        losses.Circle(remove_diagonal="yes")
    for cls in (losses.CTC, losses.Circle, losses.CategoricalGeneralizedCrossEntropy):
        with pytest.raises(ValueError, match="only reduction='sum_over_batch_size'"):
            cls(reduction="sum")
    with pytest.raises(ValueError, match="ref_labels and ref_embeddings are not supported"):
        losses.circle(np.zeros(3), np.ones((3, 2)), ref_labels=np.zeros(3))


def test_loss_functions_and_calls_match_the_ops():
    rng = np.random.default_rng(2)
    labels, logits, _ = ctc_data((3, 7, 5, 4), 1)
    assert losses.ctc(labels, logits) == ctc_loss_forward_backward(labels, logits, False)[0]
    assert losses.CTC()(labels.astype(np.float32), logits) == losses.ctc(labels, logits)
    c_labels, e, w = circle_data((7, 5, 3), 1)
    assert losses.Circle(gamma=20.0)(c_labels, e, sample_weight=w) == \
        circle_loss_forward_backward(c_labels, e, 20.0, 0.4, True, False, w)[0]
    assert losses.circle(c_labels, e, gamma=20) == losses.Circle(gamma=20.0)(c_labels, e)
    p = rng.uniform(0.05, 1, (6, 4)).astype(np.float32)
    y = rng.integers(0, 4, 6)
    want = np.mean((1 - p[np.arange(6), y].astype(np.float64) ** 0.3) / 0.3)
    np.testing.assert_allclose(losses.categorical_generalized_cross_entropy(y, p, 0.3), want,
                               rtol=1e-6)


def test_gce_matches_keras_docstring_example():
    y_true = np.array([0, 1, 0, 1])
    y_pred = np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4], [0.4, 0.6]], np.float32)
    want = np.mean((1 - np.array([0.7, 0.8, 0.6, 0.6]) ** 0.5) / 0.5)
    np.testing.assert_allclose(losses.CategoricalGeneralizedCrossEntropy()(y_true, y_pred),
                               want, rtol=1e-6)
    with pytest.raises(ValueError, match="label 2 out of range"):
        losses.CategoricalGeneralizedCrossEntropy()(np.array([0, 2, 0, 1]), y_pred)


# -- training through compile / fit ---------------------------------------------------------

def crnn_data(rng, n, steps, features, classes):
    """Each sample's labels (1 to 3 symbols in [1, C)) written into its steps: symbol k's
    segment carries a bump on feature k, the others noise; labels padded with 0 to 3."""
    labels = np.zeros((n, 3), np.int32)
    x = rng.standard_normal((n, steps, features)).astype(np.float32) * 0.3
    for i in range(n):
        length = rng.integers(1, 4)
        row = rng.choice(np.arange(1, classes), size=length, replace=False)
        labels[i, :length] = row
        seg = steps // length
        for j, k in enumerate(row):
            x[i, j * seg + 1:(j + 1) * seg - 1, k] += 2.0
    return x, labels


def crnn(classes, steps, features):
    L = pynn.layers
    return pynn.Sequential([pynn.Input((steps, features)),
                            L.Conv1D(12, 3, padding="same", activation="relu"),
                            L.LSTM(16, return_sequences=True),
                            L.Dense(classes, activation="softmax")])


def test_crnn_trains_with_ctc_through_fit(seeded):
    """Conv1D -> LSTM -> Dense softmax -> CTC (Keras reads the softmax output as logits and
    log-softmaxes it again, as pynn does): fit lowers the loss, evaluate agrees with the
    loss op on predict's output."""
    rng = np.random.default_rng(0)
    steps, features, classes = 12, 6, 5
    x, labels = crnn_data(rng, 48, steps, features, classes)
    model = crnn(classes, steps, features)
    model.compile(optimizer=pynn.optimizers.Adam(0.02), loss="ctc")
    history = model.fit(x, labels, epochs=15, batch_size=16, verbose=0).history["loss"]
    assert history[-1] < 0.7 * history[0], history
    want = ctc_loss_forward_backward(labels, model.predict(x, verbose=0), False)[0]
    np.testing.assert_allclose(model.evaluate(x, labels, batch_size=48, verbose=0), want,
                               rtol=1e-5)


def test_circle_and_gce_train_through_fit(seeded):
    L = pynn.layers
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((4, 6)) * 2
    y = rng.integers(0, 4, 64)
    x = (centres[y] + rng.standard_normal((64, 6))).astype(np.float32)
    embed = pynn.Sequential([pynn.Input((6,)), L.Dense(8), L.UnitNormalization()])
    embed.compile(optimizer=pynn.optimizers.Adam(0.01),
                  loss=pynn.losses.Circle(gamma=16.0))
    history = embed.fit(x, y, epochs=8, batch_size=16, verbose=0).history["loss"]
    assert history[-1] < 0.7 * history[0], history
    clf = pynn.Sequential([pynn.Input((6,)), L.Dense(4, activation="softmax")])
    clf.compile(optimizer=pynn.optimizers.Adam(0.05),
                loss="categorical_generalized_cross_entropy", metrics=["accuracy"])
    history = clf.fit(x, y[:, None], epochs=8, batch_size=16, verbose=0).history
    assert history["loss"][-1] < 0.7 * history["loss"][0], history
    assert history["accuracy"][-1] > 0.8


def test_fit_refuses_bad_ctc_targets(seeded):
    model = crnn(5, 6, 3)
    model.compile(optimizer="sgd", loss=losses.CTC())
    x = np.zeros((4, 6, 3), np.float32)
    with pytest.raises(ValueError, match=r"fit: CTC's labels must be \(samples, max_length\)"):
        model.fit(x, np.ones((4,), np.int32), verbose=0)
    with pytest.raises(ValueError, match="fit: CTC's labels must be integers"):
        model.fit(x, np.full((4, 2), 1.5), verbose=0)
    with pytest.raises(ValueError, match="need at least 7 time steps, but y_pred has T=6"):
        model.fit(x, np.ones((4, 7), np.int32) * np.array([1, 2] * 3 + [1]), verbose=0)


@pytest.mark.opencl
def test_training_steps_match_on_opencl(backend_opencl, seeded):
    """One train_on_batch of the CTC, Circle and generalized CE models on OpenCL gives the
    CPU's loss and weights."""
    rng = np.random.default_rng(4)
    x, labels = crnn_data(rng, 8, 12, 6, 5)
    e_x = rng.standard_normal((10, 6)).astype(np.float32)
    e_y = rng.integers(0, 3, 10)
    L = pynn.layers
    cases = [(lambda: crnn(5, 12, 6), "ctc", x, labels),
             (lambda: pynn.Sequential([pynn.Input((6,)), L.Dense(8), L.UnitNormalization()]),
              losses.Circle(gamma=16.0), e_x, e_y),
             (lambda: pynn.Sequential([pynn.Input((6,)), L.Dense(3, activation="softmax")]),
              losses.CategoricalGeneralizedCrossEntropy(0.6), e_x, e_y)]
    for build, loss, xs, ys in cases:
        results = []
        previous = pynn.get_device()
        try:
            for device in ("cpu", "opencl"):
                pynn.set_device(device)
                pynn.utils.set_random_seed(3)
                model = build()
                model.compile(optimizer=pynn.optimizers.SGD(0.1), loss=loss)
                value = model.train_on_batch(xs, ys)
                results.append((float(np.ravel(value)[0]),
                                [np.asarray(w) for w in model.get_weights()]))
        finally:
            pynn.set_device(previous)
        (cpu_loss, cpu_w), (cl_loss, cl_w) = results
        np.testing.assert_allclose(cl_loss, cpu_loss, rtol=1e-4)
        for a, b in zip(cl_w, cpu_w):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
