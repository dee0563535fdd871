"""OpenCL activation, pooling, dropout, loss, metric and optimizer ops against the CPU ops
(pynn._native, themselves checked against the float64 oracles of tests/reference).

float32 only; elementwise results within 1e-5 relative, reductions within 1e-4, counts and
masks exact. Sizes are small and awkward (1, 3, 7, 13, 131: never a multiple of a work-group)
so PoCL's CPU device runs the whole file quickly. Determinism replaces the CPU's
thread-count invariance: the same call twice gives the same bits.
"""

import numpy as np
import pytest

from pynn.backend.api import ACTIVATIONS, ACTIVATIONS_NEEDING_INPUT, LOSSES, OPS
from tests.opencl_util import assert_close, ocl, rand  # noqa: F401

pytestmark = pytest.mark.opencl

ELEMENTWISE = 1e-5
REDUCTION = 1e-4


@pytest.fixture(scope="module")
def cpu():
    from pynn.backend import cpu

    return cpu


# -- the one comparison helper --------------------------------------------------------------


def _up(ocl, a):
    """numpy arrays go to the device with their dtype; anything else passes through."""
    return ocl.asarray(a, a.dtype) if isinstance(a, np.ndarray) else a


def _same(what, got, want, rtol):
    if want is None:
        assert got is None, f"{what}: expected None, got {type(got).__name__}"
        return
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want), f"{what}: got {got!r}"
        for i, (g, w) in enumerate(zip(got, want)):
            _same(f"{what}[{i}]", g, w, rtol)
        return
    if isinstance(want, np.ndarray):
        assert hasattr(got, "get"), f"{what}: expected a device array, got {type(got).__name__}"
        g = got.get()
        assert g.dtype == want.dtype, f"{what}: dtype {g.dtype} != CPU's {want.dtype}"
        assert g.shape == want.shape, f"{what}: shape {g.shape} != CPU's {want.shape}"
        if want.dtype.kind == "f":
            nan = np.isnan(want)
            np.testing.assert_array_equal(np.isnan(g), nan, err_msg=f"{what}: NaN positions")
            assert_close(np.where(nan, 0, g), np.where(nan, 0, want), rtol, what)
        else:
            np.testing.assert_array_equal(g, want, err_msg=what)
        return
    if isinstance(want, (bool, int, np.integer)) and not isinstance(want, float):
        assert got == want and type(got) is type(want), f"{what}: {got!r} != CPU's {want!r}"
        return
    assert isinstance(got, float), f"{what}: expected a Python float, got {type(got).__name__}"
    assert abs(got - want) <= rtol * max(1.0, abs(want)), f"{what}: {got!r} != CPU's {want!r}"


def check_op(ocl, cpu, name, *args, rtol=ELEMENTWISE):
    """Run op ``name`` on both backends (numpy args uploaded for OpenCL), compare every
    output, and return the OpenCL result."""
    want = getattr(cpu, name)(*args)
    got = getattr(ocl, name)(*[_up(ocl, a) for a in args])
    _same(name, got, want, rtol)
    return got


FAMILY = ("activation_", "maxpool2d_", "avgpool2d_", "global_", "dropout_", "loss_",
          "accuracy_count", "top_k_count", "confusion_counts", "regularizer_inplace",
          "sum_squares", "sgd_", "adam_", "rmsprop_", "adagrad_")


# -- activations ----------------------------------------------------------------------------

ACT_SHAPES = [(1,), (3, 7), (2, 3, 13), (5, 131)]


def _alpha(act):
    return 0.3 if act in ("leaky_relu", "elu") else 0.0


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("shape", ACT_SHAPES, ids=str)
def test_activation_forward_backward(ocl, cpu, act, shape):
    rng = np.random.default_rng(len(shape) * 100 + ACTIVATIONS.index(act))
    x, dy = rand(rng, shape) * 3, rand(rng, shape)
    y = check_op(ocl, cpu, "activation_forward", x, act, _alpha(act))
    yc = y.get()
    check_op(ocl, cpu, "activation_backward", dy, x, yc, act, _alpha(act))
    if act in ACTIVATIONS_NEEDING_INPUT:
        check_op(ocl, cpu, "activation_backward", dy, x, None, act, _alpha(act))
    else:
        check_op(ocl, cpu, "activation_backward", dy, None, yc, act, _alpha(act))


def test_softmax_extreme_logits_and_rows_sum_to_one(ocl, cpu):
    x = np.array([[1000.0, -1000.0, 3.0], [-1e30, -1e30, -1e30], [0.0, 0.0, 0.0]], np.float32)
    y = check_op(ocl, cpu, "activation_forward", x, "softmax", 0.0)
    np.testing.assert_allclose(y.get().sum(axis=1), 1.0, rtol=1e-6)


def test_activation_is_deterministic(ocl):
    rng = np.random.default_rng(3)
    x, dy = ocl.asarray(rand(rng, (7, 131))), ocl.asarray(rand(rng, (7, 131)))
    y1, y2 = ocl.activation_forward(x, "softmax", 0.0), ocl.activation_forward(x, "softmax", 0.0)
    np.testing.assert_array_equal(y1.get(), y2.get())
    d1 = ocl.activation_backward(dy, None, y1, "softmax", 0.0)
    d2 = ocl.activation_backward(dy, None, y1, "softmax", 0.0)
    np.testing.assert_array_equal(d1.get(), d2.get())


def test_activation_empty_and_bad_inputs(ocl):
    e = ocl.activation_forward(ocl.zeros((0, 5)), "relu", 0.0)
    assert e.shape == (0, 5)
    assert ocl.activation_forward(ocl.zeros((4, 0)), "softmax", 0.0).shape == (4, 0)
    x = ocl.asarray(np.ones((3, 4), np.float32))
    with pytest.raises(TypeError, match="activation_forward.*asarray"):
        ocl.activation_forward(np.ones((3, 4), np.float32), "relu", 0.0)
    with pytest.raises(ValueError, match="unknown activation"):
        ocl.activation_forward(x, "swish", 0.0)
    with pytest.raises(ValueError, match="alpha >= 0"):
        ocl.activation_forward(x, "elu", -1.0)
    with pytest.raises(ValueError, match="required"):
        ocl.activation_forward(None, "relu", 0.0)
    with pytest.raises(TypeError, match="dtype"):
        ocl.activation_forward(ocl.asarray(np.ones(3), np.int32), "relu", 0.0)
    with pytest.raises(ValueError, match="needs the pre-activation"):
        ocl.activation_backward(x, None, x, "gelu", 0.0)
    with pytest.raises(ValueError, match="forward output"):
        ocl.activation_backward(x, x, None, "tanh", 0.0)
    with pytest.raises(ValueError, match="shape"):
        ocl.activation_backward(x, None, ocl.zeros((4, 3)), "tanh", 0.0)


# 2-D and 4-D; (131, 3) and (2, 5, 7, 3) span several row chunks of the column sums.
FUSED_SHAPES = [(1, 1), (3, 7), (131, 3), (2, 5, 7, 3)]


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("shape", FUSED_SHAPES, ids=str)
def test_activation_bias_backward(ocl, cpu, act, shape):
    rng = np.random.default_rng(len(shape) * 100 + ACTIVATIONS.index(act) + shape[0])
    x, dy = rand(rng, shape) * 3, rand(rng, shape)
    y = cpu.activation_forward(x, act, _alpha(act))
    dz, db = check_op(ocl, cpu, "activation_bias_backward", dy, x, y, act, _alpha(act),
                      rtol=REDUCTION)
    # The fused first pass sums the rows in bias_backward's order (bit-equal on PoCL; a
    # compiler may still contract the last product of act_grad into the running sum).
    assert_close(db.get(), ocl.bias_backward(dz).get(), 1e-6, "db vs bias_backward(dz)")
    assert_close(dz.get(), ocl.activation_backward(ocl.asarray(dy), ocl.asarray(x),
                                                   ocl.asarray(y), act, _alpha(act)).get(),
                 1e-6, "dz vs activation_backward")
    again = ocl.activation_bias_backward(ocl.asarray(dy), ocl.asarray(x), ocl.asarray(y), act,
                                         _alpha(act))
    np.testing.assert_array_equal(again[1].get(), db.get())


def test_activation_bias_backward_gelu_without_y_empty_and_bad_inputs(ocl, cpu):
    rng = np.random.default_rng(4)
    x, dy = rand(rng, (5, 3)), rand(rng, (5, 3))
    check_op(ocl, cpu, "activation_bias_backward", dy, x, None, "gelu", 0.0, rtol=REDUCTION)
    for shape in [(0, 5), (4, 0)]:
        e = ocl.zeros(shape)
        dz, db = ocl.activation_bias_backward(e, e, e, "relu", 0.0)
        assert dz.shape == shape and db.shape == (shape[1],)
        np.testing.assert_array_equal(db.get(), 0)
    a = ocl.asarray(np.ones((3, 4), np.float32))
    with pytest.raises(TypeError, match="activation_bias_backward.*asarray"):
        ocl.activation_bias_backward(np.ones((3, 4), np.float32), a, a, "relu", 0.0)
    with pytest.raises(ValueError, match="at least 1 dimension"):
        ocl.activation_bias_backward(ocl.zeros(()), None, ocl.zeros(()), "relu", 0.0)
    with pytest.raises(ValueError, match="needs the pre-activation"):
        ocl.activation_bias_backward(a, None, a, "gelu", 0.0)
    with pytest.raises(ValueError, match="shape"):
        ocl.activation_bias_backward(a, None, ocl.zeros((4, 3)), "tanh", 0.0)
    with pytest.raises(ValueError, match="unknown activation"):
        ocl.activation_bias_backward(a, a, a, "swish", 0.0)


def test_non_contiguous_device_arrays_are_refused_and_offset_views_read(ocl):
    a = ocl.asarray(np.arange(24, dtype=np.float32).reshape(4, 6))
    with pytest.raises(ValueError, match="C-contiguous"):
        ocl.activation_forward(a[:, 1:], "relu", 0.0)
    # A contiguous view at an offset (a row slice) is read from its own start.
    np.testing.assert_array_equal(
        ocl.activation_forward(a[1:], "relu", 0.0).get(),
        np.maximum(np.arange(6, 24, dtype=np.float32).reshape(3, 6), 0))
    # Updated in place, it would be written through a copy: refused.
    with pytest.raises(ValueError, match="offset"):
        ocl.scale_inplace(a[1:], 2.0)


# -- pooling --------------------------------------------------------------------------------

POOL_CASES = [
    # (N, H, W, C), pool_size, strides, padding
    ((1, 1, 1, 1), (1, 1), (1, 1), "valid"),
    ((2, 7, 9, 3), (2, 2), (2, 2), "valid"),
    ((2, 7, 9, 3), (3, 3), (2, 2), "same"),
    ((1, 13, 5, 7), (3, 2), (1, 1), "same"),
    ((3, 5, 7, 2), (2, 3), (2, 3), "same"),
    ((1, 6, 6, 5), (3, 3), (1, 2), "valid"),
    ((2, 2, 3, 1), (3, 3), (1, 1), "valid"),  # window larger than the input: empty output
]


@pytest.mark.parametrize("shape,pool,strides,padding", POOL_CASES, ids=str)
def test_maxpool2d(ocl, cpu, shape, pool, strides, padding):
    rng = np.random.default_rng(sum(shape))
    x = rand(rng, shape)
    y, arg = check_op(ocl, cpu, "maxpool2d_forward", x, pool, strides, padding)
    dy = rand(rng, y.shape)
    check_op(ocl, cpu, "maxpool2d_backward", dy, arg.get(), shape)


@pytest.mark.parametrize("shape,pool,strides,padding", POOL_CASES, ids=str)
def test_avgpool2d(ocl, cpu, shape, pool, strides, padding):
    rng = np.random.default_rng(sum(shape) + 1)
    x = rand(rng, shape)
    y = check_op(ocl, cpu, "avgpool2d_forward", x, pool, strides, padding)
    dy = rand(rng, y.shape)
    check_op(ocl, cpu, "avgpool2d_backward", dy, shape, pool, strides, padding)


def test_maxpool_ties_and_nan_follow_the_cpu(ocl, cpu):
    x = np.zeros((1, 4, 4, 2), np.float32)  # all ties: the first pixel of each window wins
    x[0, 1, 1, 1] = np.nan  # and a NaN beats numbers
    check_op(ocl, cpu, "maxpool2d_forward", x, (2, 2), (1, 1), "same")
    check_op(ocl, cpu, "global_maxpool2d_forward", x)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 7, 9, 3), (3, 5, 13, 7)], ids=str)
def test_global_pooling(ocl, cpu, shape):
    rng = np.random.default_rng(sum(shape) + 2)
    x = rand(rng, shape)
    check_op(ocl, cpu, "global_avgpool2d_forward", x)
    y, arg = check_op(ocl, cpu, "global_maxpool2d_forward", x)
    dy = rand(rng, y.shape)
    check_op(ocl, cpu, "global_avgpool2d_backward", dy, shape)
    check_op(ocl, cpu, "global_maxpool2d_backward", dy, arg.get(), shape)


def test_maxpool_backward_overlapping_windows_is_deterministic(ocl):
    rng = np.random.default_rng(5)
    x = ocl.asarray(rand(rng, (2, 9, 7, 3)))
    y, arg = ocl.maxpool2d_forward(x, (3, 3), (1, 1), "same")
    dy = ocl.asarray(rand(rng, y.shape))
    a = ocl.maxpool2d_backward(dy, arg, (2, 9, 7, 3)).get()
    b = ocl.maxpool2d_backward(dy, arg, (2, 9, 7, 3)).get()
    np.testing.assert_array_equal(a, b)


def test_pool_empty_batch_and_bad_inputs(ocl):
    y, arg = ocl.maxpool2d_forward(ocl.zeros((0, 5, 5, 2)), (2, 2), (2, 2), "valid")
    assert y.shape == arg.shape == (0, 2, 2, 2) and arg.dtype == np.int32
    assert ocl.maxpool2d_backward(y, arg, (0, 5, 5, 2)).shape == (0, 5, 5, 2)
    assert ocl.global_avgpool2d_forward(ocl.zeros((0, 3, 3, 4))).shape == (0, 4)
    x = ocl.asarray(np.ones((1, 4, 4, 2), np.float32))
    with pytest.raises(ValueError, match="4 dimensions"):
        ocl.maxpool2d_forward(ocl.zeros((4, 4, 2)), (2, 2), (2, 2), "valid")
    with pytest.raises(ValueError, match="padding"):
        ocl.avgpool2d_forward(x, (2, 2), (2, 2), "full")
    with pytest.raises(ValueError, match="pool_size"):
        ocl.maxpool2d_forward(x, (0, 2), (2, 2), "valid")
    with pytest.raises(TypeError, match="asarray"):
        ocl.global_maxpool2d_forward(np.ones((1, 2, 2, 1), np.float32))
    with pytest.raises(ValueError, match="H, W >= 1"):
        ocl.global_avgpool2d_forward(ocl.zeros((1, 0, 3, 2)))
    y, arg = ocl.maxpool2d_forward(x, (2, 2), (2, 2), "valid")
    with pytest.raises(TypeError, match="int32"):
        ocl.maxpool2d_backward(y, y, (1, 4, 4, 2))
    with pytest.raises(ValueError, match="input_shape"):
        ocl.maxpool2d_backward(y, arg, (1, 4, 4))
    with pytest.raises(ValueError, match="shape"):
        ocl.avgpool2d_backward(y, (1, 5, 5, 2), (2, 2), (1, 1), "valid")


def test_maxpool_backward_skips_out_of_range_argmax(ocl):
    # The device never follows a bad index (no host round trip to report it, see _cl_nn).
    dy = ocl.asarray(np.ones((1, 1, 1, 1), np.float32))
    bad = ocl.asarray(np.array([7], np.int32).reshape(1, 1, 1, 1), np.int32)
    np.testing.assert_array_equal(ocl.maxpool2d_backward(dy, bad, (1, 2, 2, 1)).get(), 0)


# -- dropout --------------------------------------------------------------------------------


# Random123's kat_vectors for philox4x32 with 10 rounds.
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr,key,want", PHILOX_KAT)
def test_philox_known_answers(ocl, ctr, key, want):
    from pynn.backend.opencl import dropout

    assert dropout.philox4x32_10_block(ctr, key) == want


@pytest.mark.parametrize("shape", [(1,), (3, 7), (13, 5, 3)], ids=str)
@pytest.mark.parametrize("rate", [0.0, 0.37, 0.9])
@pytest.mark.parametrize("seed,offset", [(0, 0), (123456789012345, 5), (2**64 - 1, 2**64 - 3)])
def test_dropout_mask_is_bit_identical_to_the_cpu(ocl, cpu, shape, rate, seed, offset):
    rng = np.random.default_rng(len(shape))
    x, dy = rand(rng, shape), rand(rng, shape)
    y, mask = check_op(ocl, cpu, "dropout_forward", x, rate, seed, offset)
    check_op(ocl, cpu, "dropout_backward", dy, mask.get(), rate)


def test_dropout_statistics_and_bad_inputs(ocl):
    x = ocl.asarray(np.ones(20001, np.float32))
    y, mask = ocl.dropout_forward(x, 0.25, 42, 0)
    keep = mask.get().astype(bool)
    assert abs(keep.mean() - 0.75) < 0.02
    np.testing.assert_array_equal(y.get(), np.where(keep, np.float32(1 / 0.75), 0))
    _, mask2 = ocl.dropout_forward(x, 0.25, 42, 20001)  # the next offset draws a new mask
    assert (mask2.get() != mask.get()).any()
    with pytest.raises(ValueError, match="rate"):
        ocl.dropout_forward(x, 1.0, 0, 0)
    with pytest.raises(ValueError, match="seed"):
        ocl.dropout_forward(x, 0.5, -1, 0)
    with pytest.raises(TypeError, match="offset"):
        ocl.dropout_forward(x, 0.5, 0, 1.5)
    with pytest.raises(TypeError, match="uint8"):
        ocl.dropout_backward(x, x, 0.5)
    with pytest.raises(ValueError, match="shape"):
        ocl.dropout_backward(ocl.zeros((3,)), mask, 0.5)
    e, m = ocl.dropout_forward(ocl.zeros((0, 3)), 0.5, 1, 0)
    assert e.shape == m.shape == (0, 3)


# -- losses ---------------------------------------------------------------------------------


def _loss_data(rng, name, shape, from_logits):
    k = shape[-1]
    probs = name in ("binary_crossentropy", "categorical_crossentropy",
                     "sparse_categorical_crossentropy") and not from_logits
    y_pred = rng.uniform(0.02, 1.0, shape) if probs else rng.standard_normal(shape) * 2
    if name == "sparse_categorical_crossentropy":
        y_true = rng.integers(0, k, shape[:-1]).astype(np.int32)
    elif name == "categorical_crossentropy":
        y_true = np.eye(k)[rng.integers(0, k, shape[:-1])]
    elif name == "binary_crossentropy":
        y_true = rng.integers(0, 2, shape).astype(np.float64)
    else:
        y_true = rng.standard_normal(shape)
    if probs and shape[-1] > 1:
        y_pred.reshape(-1, k)[:, 0] = 1.0  # one clipped probability per row
    y_true = y_true if y_true.dtype == np.int32 else y_true.astype(np.float32)
    return y_true, y_pred.astype(np.float32)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("shape", [(1, 1), (13, 7), (3, 2, 5), (5, 131)], ids=str)
def test_loss_forward_backward(ocl, cpu, name, from_logits, shape):
    rng = np.random.default_rng(LOSSES.index(name) * 10 + len(shape))
    y_true, y_pred = _loss_data(rng, name, shape, from_logits)
    param = 0.7 if name == "huber" else None
    check_op(ocl, cpu, "loss_forward_backward", name, y_true, y_pred, from_logits, param,
             True, rtol=REDUCTION)
    loss, grad = check_op(ocl, cpu, "loss_forward_backward", name, y_true, y_pred,
                          from_logits, param, False, rtol=REDUCTION)
    assert grad is None


def test_loss_target_shapes_follow_keras(ocl, cpu):
    rng = np.random.default_rng(11)
    y_pred = rand(rng, (7, 1))
    check_op(ocl, cpu, "loss_forward_backward", "mean_squared_error", rand(rng, (7,)), y_pred,
             False, None, True, rtol=REDUCTION)
    labels = rng.integers(0, 5, (7, 1)).astype(np.int32)
    check_op(ocl, cpu, "loss_forward_backward", "sparse_categorical_crossentropy", labels,
             rand(rng, (7, 5)), True, None, True, rtol=REDUCTION)


def test_loss_many_elements_is_deterministic(ocl, cpu):
    rng = np.random.default_rng(12)
    y_true, y_pred = rand(rng, (301, 333)), rand(rng, (301, 333))  # more than one pass of groups
    loss, _ = check_op(ocl, cpu, "loss_forward_backward", "huber", y_true, y_pred, False, 1.0,
                       True, rtol=REDUCTION)
    again, _ = ocl.loss_forward_backward("huber", ocl.asarray(y_true), ocl.asarray(y_pred),
                                         False, 1.0, True)
    assert again == loss


def test_loss_bad_inputs(ocl):
    p = ocl.asarray(np.full((3, 4), 0.25, np.float32))
    assert ocl.loss_forward_backward("mean_squared_error", ocl.zeros((0, 4)), ocl.zeros((0, 4)),
                                     False, None, True)[0] == 0.0
    with pytest.raises(ValueError, match="unknown loss"):
        ocl.loss_forward_backward("hinge", p, p, False, None, True)
    with pytest.raises(ValueError, match="out of range"):
        labels = ocl.asarray(np.array([0, 4, 1], np.int32), np.int32)
        ocl.loss_forward_backward("sparse_categorical_crossentropy", labels, p, False, None,
                                  True)
    with pytest.raises(TypeError, match="int32"):
        ocl.loss_forward_backward("sparse_categorical_crossentropy", ocl.zeros((3,)), p, False,
                                  None, True)
    with pytest.raises(ValueError, match="shape"):
        ocl.loss_forward_backward("categorical_crossentropy", ocl.zeros((3, 5)), p, False,
                                  None, True)
    with pytest.raises(ValueError, match="delta"):
        ocl.loss_forward_backward("huber", p, p, False, -1.0, True)
    with pytest.raises(ValueError, match="required"):
        ocl.loss_forward_backward("huber", None, p, False, None, True)
    with pytest.raises(TypeError, match="asarray"):
        ocl.loss_forward_backward("huber", np.zeros((3, 4)), p, False, None, True)


# -- metrics --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (13, 7), (300, 5)], ids=str)
def test_accuracy_and_top_k(ocl, cpu, shape):
    rng = np.random.default_rng(shape[0])
    n, k = shape
    y_pred = np.round(rand(rng, shape), 1)  # rounding makes ties
    onehot = np.eye(k, dtype=np.float32)[rng.integers(0, k, n)]
    labels = rng.integers(0, k, n).astype(np.int32)
    check_op(ocl, cpu, "accuracy_count", onehot, y_pred, "categorical", 0.5)
    check_op(ocl, cpu, "accuracy_count", labels, y_pred, "sparse", 0.5)
    check_op(ocl, cpu, "accuracy_count", labels.reshape(n, 1), y_pred, "sparse", 0.5)
    binary = (rng.random(shape) > 0.5).astype(np.float32)
    check_op(ocl, cpu, "accuracy_count", binary, y_pred, "binary", 0.1)
    for top in (1, 2, 5, 9):
        check_op(ocl, cpu, "top_k_count", labels, y_pred, top, True)
        check_op(ocl, cpu, "top_k_count", onehot, y_pred, top, False)
    check_op(ocl, cpu, "confusion_counts", binary, y_pred, 0.3)


def test_metric_ties_nan_and_soft_targets(ocl, cpu):
    y_pred = np.array([[1, 1, 0], [0, 2, 2], [np.nan, 5, 1], [3, np.nan, np.nan]], np.float32)
    labels = np.array([1, 2, 0, 1], np.int32)
    check_op(ocl, cpu, "accuracy_count", labels, y_pred, "sparse", 0.5)
    check_op(ocl, cpu, "top_k_count", labels, y_pred, 1, True)
    check_op(ocl, cpu, "top_k_count", labels, y_pred, 2, True)
    soft = np.array([[0.7], [1.0], [0.0], [1.0]], np.float32)
    check_op(ocl, cpu, "accuracy_count", soft, y_pred[:, :1], "binary", 0.5)
    check_op(ocl, cpu, "accuracy_count", soft[:, 0], y_pred[:, :1], "binary", 0.5)
    check_op(ocl, cpu, "confusion_counts", soft, y_pred[:, :1], 0.5)


def test_metric_bad_inputs(ocl):
    p = ocl.asarray(np.zeros((3, 4), np.float32))
    assert ocl.accuracy_count(ocl.zeros((0, 4)), ocl.zeros((0, 4)), "categorical", 0.5) == 0
    assert ocl.confusion_counts(ocl.zeros((0,)), ocl.zeros((0,)), 0.5) == (0, 0, 0)
    labels = ocl.asarray(np.array([0, 1, 4], np.int32), np.int32)
    with pytest.raises(ValueError, match="out of range"):
        ocl.accuracy_count(labels, p, "sparse", 0.5)
    with pytest.raises(ValueError, match="out of range"):
        ocl.top_k_count(labels, p, 2, True)
    with pytest.raises(ValueError, match="mode"):
        ocl.accuracy_count(p, p, "multiclass", 0.5)
    with pytest.raises(ValueError, match="'k'"):
        ocl.top_k_count(p, p, 0, False)
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        ocl.accuracy_count(p, ocl.zeros((12,)), "categorical", 0.5)
    with pytest.raises(ValueError, match="NaN"):
        ocl.confusion_counts(p, p, float("nan"))
    with pytest.raises(ValueError, match="shape"):
        ocl.confusion_counts(ocl.zeros((3, 5)), p, 0.5)


# -- regularizers, norms, optimizers --------------------------------------------------------

# 70001 elements need several grid-stride passes of the 256 x 256 reduction work-items.
SIZES = [(1,), (7, 13), (70001,)]


@pytest.mark.parametrize("shape", SIZES, ids=str)
def test_sum_squares_and_regularizer(ocl, cpu, shape):
    rng = np.random.default_rng(len(shape))
    w, grad = rand(rng, shape), rand(rng, shape)
    w.flat[len(w.flat) // 2] = 0.0  # sign(0) = 0
    check_op(ocl, cpu, "sum_squares", w, rtol=REDUCTION)
    g_dev = ocl.asarray(grad)
    penalty = ocl.regularizer_inplace(ocl.asarray(w), g_dev, 0.01, 0.003)
    want = cpu.regularizer_inplace(w, grad, 0.01, 0.003)
    assert isinstance(penalty, float) and abs(penalty - want) <= REDUCTION * abs(want)
    assert_close(g_dev.get(), grad, ELEMENTWISE, "regularizer_inplace grad")
    assert ocl.regularizer_inplace(ocl.asarray(w), g_dev, 0.0, 0.0) == 0.0


def test_reductions_are_deterministic_and_empty_is_zero(ocl):
    a = ocl.asarray(rand(np.random.default_rng(9), (70001,)))
    assert ocl.sum_squares(a) == ocl.sum_squares(a)
    assert ocl.sum_squares(ocl.zeros((0, 3))) == 0.0


OPTIM_CASES = [
    # name, slot factory (shape -> list of arrays/None), hyper-parameters after the slots
    ("sgd_update", lambda s: [None], (0.1, 0.0, False, 1.0, 0.0, 0.0)),
    ("sgd_update", lambda s: ["zeros"], (0.05, 0.9, False, 0.5, 0.3, 0.0)),
    ("sgd_update", lambda s: ["zeros"], (0.05, 0.9, True, 1.0, 0.0, 0.004)),
    ("adam_update", lambda s: ["zeros", "zeros", None], (1e-3, 0.9, 0.999, 1e-7, "t", 1.0,
                                                           0.0, 0.0)),
    ("adam_update", lambda s: ["zeros", "zeros", "zeros"], (0.01, 0.8, 0.99, 1e-4, "t", 0.7,
                                                              0.5, 0.004)),
    ("rmsprop_update", lambda s: ["zeros", None, None], (1e-3, 0.9, 0.0, 1e-7, 1.0, 0.0,
                                                          0.0)),
    ("rmsprop_update", lambda s: ["zeros", "zeros", "zeros"], (0.01, 0.8, 0.9, 1e-6, 1.0,
                                                                0.4, 0.01)),
    ("adagrad_update", lambda s: ["accum"], (0.01, 1e-7, 1.0, 0.0, 0.0)),
    ("adagrad_update", lambda s: ["accum"], (0.1, 1e-7, 0.5, 0.2, 0.004)),
]


def _slot(kind, shape):
    if kind is None:
        return None
    return np.full(shape, 0.1 if kind == "accum" else 0.0, np.float32)


@pytest.mark.parametrize("case", range(len(OPTIM_CASES)))
@pytest.mark.parametrize("shape", [(1,), (7, 13), (3, 5, 7)], ids=str)
def test_optimizer_updates_match_the_cpu_over_steps(ocl, cpu, case, shape):
    name, slot_kinds, hyper = OPTIM_CASES[case]
    rng = np.random.default_rng(case * 10 + len(shape))
    w = rand(rng, shape)
    grads = [rand(rng, shape) for _ in range(3)]
    slots = [_slot(k, shape) for k in slot_kinds(shape)]
    w_dev = ocl.asarray(w)
    slots_dev = [None if s is None else ocl.asarray(s) for s in slots]
    for t, g in enumerate(grads, start=1):
        h = tuple(t if v == "t" else v for v in hyper)
        assert getattr(cpu, name)(w, g, *slots, *h) is None
        assert getattr(ocl, name)(w_dev, ocl.asarray(g), *slots_dev, *h) is None
    assert_close(w_dev.get(), w, ELEMENTWISE, f"{name} w")
    for i, (sd, s) in enumerate(zip(slots_dev, slots)):
        if s is not None:
            assert_close(sd.get(), s, ELEMENTWISE, f"{name} slot {i}")


def test_optimizer_nan_grad_scale_poisons_like_the_cpu(ocl, cpu):
    w = np.ones(5, np.float32)
    w_dev = ocl.asarray(w)
    cpu.sgd_update(w, np.ones(5, np.float32), None, 0.1, 0.0, False, float("nan"), 0.0, 0.0)
    ocl.sgd_update(w_dev, ocl.asarray(np.ones(5, np.float32)), None, 0.1, 0.0, False,
                   float("nan"), 0.0, 0.0)
    assert np.isnan(w).all() and np.isnan(w_dev.get()).all()


def test_optimizer_bad_inputs(ocl):
    w = ocl.asarray(np.ones((3, 4), np.float32))
    g = ocl.asarray(np.ones((3, 4), np.float32))
    m, v = ocl.zeros((3, 4)), ocl.zeros((3, 4))
    with pytest.raises(TypeError, match="asarray"):
        ocl.sgd_update(np.ones((3, 4), np.float32), g, None, 0.1, 0.0, False, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="shape"):
        ocl.sgd_update(w, ocl.zeros((4, 3)), None, 0.1, 0.0, False, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="momentum_buf"):
        ocl.sgd_update(w, g, None, 0.1, 0.9, False, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="share memory"):
        ocl.adam_update(w, g, m, m, None, 1e-3, 0.9, 0.999, 1e-7, 1, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="share memory"):
        ocl.adam_update(w, g, w, v, None, 1e-3, 0.9, 0.999, 1e-7, 1, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="'t'"):
        ocl.adam_update(w, g, m, v, None, 1e-3, 0.9, 0.999, 1e-7, 0, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="beta_1"):
        ocl.adam_update(w, g, m, v, None, 1e-3, 1.0, 0.999, 1e-7, 1, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="required"):
        ocl.rmsprop_update(w, g, None, None, None, 1e-3, 0.9, 0.0, 1e-7, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="required"):
        ocl.adagrad_update(w, g, None, 1e-3, 1e-7, 1.0, 0.0, 0.0)
    with pytest.raises(TypeError, match="dtype"):
        ocl.adagrad_update(w, g, ocl.zeros((3, 4), np.int32), 1e-3, 1e-7, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="offset"):
        ocl.sgd_update(w[1:], g[1:], None, 0.1, 0.0, False, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="weight_decay"):
        ocl.sgd_update(w, g, None, 0.1, 0.0, False, 1.0, 0.0, -1.0)
    with pytest.raises(ValueError, match="share memory"):
        ocl.regularizer_inplace(w, w, 0.1, 0.1)
    ocl.sgd_update(ocl.zeros((0, 4)), ocl.zeros((0, 4)), None, 0.1, 0.0, False, 1.0, 0.0, 0.0)


def test_training_step_reuses_pooled_buffers(ocl):
    """After a warm-up step, a loss + update step takes every buffer from the pool."""
    from pynn.backend.opencl import runtime as rt

    rng = np.random.default_rng(21)
    x = ocl.asarray(rand(rng, (13, 7)))
    labels = ocl.asarray(rng.integers(0, 7, 13).astype(np.int32), np.int32)
    w = ocl.asarray(rand(rng, (13, 7)))
    m, v = ocl.zeros((13, 7)), ocl.zeros((13, 7))

    def step(t):
        loss, grad = ocl.loss_forward_backward("sparse_categorical_crossentropy", labels, x,
                                               True, None, True)
        ocl.adam_update(w, grad, m, v, None, 1e-3, 0.9, 0.999, 1e-7, t, 1.0, 0.0, 0.0)
        return loss

    step(1)
    rt.queue().finish()
    before = rt.pool_stats()["managed_bytes"]
    for t in range(2, 5):
        assert np.isfinite(step(t))
    rt.queue().finish()
    assert rt.pool_stats()["managed_bytes"] == before, "a warm step allocated device memory"


def test_devices_with_small_work_groups_build_smaller_kernels(ocl, cpu, monkeypatch):
    """A device whose work-group limit is below the defaults gets kernels built with
    capped WG_SIZE / row sizes, and the same answers."""
    from pynn.backend.opencl import launch, runtime as rt

    monkeypatch.setitem(launch._sizes_by_device, rt.device(), (32, 16))
    rng = np.random.default_rng(31)
    x = rand(rng, (5, 131))
    check_op(ocl, cpu, "activation_forward", x, "softmax", 0.0)
    labels = rng.integers(0, 131, 5).astype(np.int32)
    check_op(ocl, cpu, "loss_forward_backward", "sparse_categorical_crossentropy", labels, x,
             True, None, True, rtol=REDUCTION)
    check_op(ocl, cpu, "top_k_count", labels, x, 3, True)
    check_op(ocl, cpu, "sum_squares", rand(rng, (4099,)), rtol=REDUCTION)
