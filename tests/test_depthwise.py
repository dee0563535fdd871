"""depthwise_conv2d_forward / _backward_input / _backward_weight and grouped_conv2d_forward /
_backward_input / _backward_weight (native/depthwise.pyx, opencl/depthwise.cl) against the
float64 oracles in tests/reference/depthwise_ref.py, thread counts and bad inputs, over both
backends. The layers built on them (DepthwiseConv2D, SeparableConv2D, Conv2D(groups)) are
checked in tests/test_conv_variants.py.
"""

import numpy as np
import pytest

from pynn._native import depthwise, info
from pynn.backend.api import ACTIVATIONS_NEEDING_INPUT
from tests.backend_util import check_op, rand
from tests.reference import depthwise_ref as ref

# (x shape (N, H, W, C), kernel shape (KH, KW, C, M), strides, padding, dilation)
CASES = [
    ((2, 7, 5, 3), (3, 3, 3, 1), (1, 1), "same", (1, 1)),
    ((3, 13, 9, 2), (3, 5, 2, 2), (2, 3), "same", (1, 1)),
    ((1, 13, 11, 3), (3, 3, 3, 2), (3, 2), "valid", (1, 1)),
    ((2, 9, 8, 5), (3, 3, 5, 1), (1, 1), "same", (2, 2)),
    ((2, 11, 10, 2), (2, 3, 2, 3), (2, 1), "valid", (2, 1)),
    ((2, 8, 9, 1), (3, 2, 1, 5), (3, 3), "same", (1, 2)),      # strides and dilation
    ((3, 4, 6, 33), (1, 1, 33, 1), (1, 1), "valid", (1, 1)),   # 1x1, channels past a vector
    ((2, 3, 4, 3), (5, 5, 3, 2), (1, 1), "valid", (1, 1)),     # kernel larger: empty output
    ((2, 3, 4, 3), (5, 5, 3, 2), (2, 1), "same", (1, 1)),      # kernel larger, padded
    ((4, 1, 1, 3), (3, 3, 3, 2), (1, 1), "same", (1, 1)),      # 1x1 images
    ((0, 5, 5, 3), (3, 3, 3, 2), (1, 1), "same", (1, 1)),      # empty batch
    ((1, 7, 1, 7), (3, 1, 7, 1), (2, 1), "same", (3, 1)),      # one column
    ((2, 31, 33, 17), (3, 3, 17, 2), (1, 1), "same", (1, 1)),  # large enough to thread
]
IDS = [f"{x}*{k}-s{s}-{p}-d{d}" for x, k, s, p, d in CASES]


def forward_op_ref(x, kernel, bias, strides, padding, dilation_rate, activation, alpha):
    """The op's result form: (y, z) with z only where the activation needs it."""
    y, z = ref.depthwise_conv2d_forward_ref(x, kernel, bias, strides, padding, dilation_rate,
                                            activation, alpha)
    return y, (z if activation in ACTIVATIONS_NEEDING_INPUT else None)


@pytest.mark.parametrize("xs,ks,s,p,d", CASES, ids=IDS)
def test_depthwise_ops_match_reference(target, xs, ks, s, p, d):
    rng = np.random.default_rng(sum(xs) + sum(ks))
    dtype = target.dtype
    x, k = rand(rng, xs, dtype), rand(rng, ks, dtype)
    b = rand(rng, (ks[2] * ks[3],), dtype)
    act = {0: "relu", 1: "gelu", 2: "softmax"}[sum(xs) % 3]
    rtol = {"rtol": 1e-12, "atol": 1e-12} if dtype == np.float64 else None
    _, (y, _) = check_op(target, "depthwise_conv2d_forward", x, k, b, s, p, d, act, 0.0,
                         ref=forward_op_ref, kind="gemm", rtol=rtol)
    dz = rand(rng, y.shape, dtype)
    check_op(target, "depthwise_conv2d_backward_input", dz, k, xs, s, p, d,
             ref=ref.depthwise_conv2d_backward_input_ref, kind="gemm", rtol=rtol)
    check_op(target, "depthwise_conv2d_backward_weight", x, dz, ks, s, p, d,
             ref=ref.depthwise_conv2d_backward_weight_ref, kind="gemm", rtol=rtol)


def test_depthwise_no_bias_linear(backend):
    rng = np.random.default_rng(3)
    x, k = rand(rng, (2, 6, 7, 4)), rand(rng, (2, 2, 4, 3))
    check_op(backend, "depthwise_conv2d_forward", x, k, None, (1, 2), "same", (1, 1),
             "linear", 0.0, ref=forward_op_ref, kind="gemm")


def test_output_channels_follow_keras_order():
    """Output channel c*M + m is input channel c times kernel[..., c, m]: a 1x1 kernel makes
    that a plain broadcast."""
    rng = np.random.default_rng(1)
    x, k = rand(rng, (1, 2, 3, 4)), rand(rng, (1, 1, 4, 3))
    y, _ = depthwise.depthwise_conv2d_forward(x, k, None, 1, "valid", 1, "linear", 0.0)
    want = (x[..., :, None] * k[0, 0]).reshape(1, 2, 3, 12)
    np.testing.assert_allclose(y, want, rtol=1e-6)


@pytest.fixture
def restore_threads():
    n = info.get_max_threads()
    yield
    info.set_num_threads(n)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thread_count_invariance(restore_threads, dtype):
    """Rows and slabs are fixed by the shape, never by the thread count: the same bits."""
    rng = np.random.default_rng(7)
    xs, ks = (3, 29, 31, 13), (3, 3, 13, 2)
    x, k, b = rand(rng, xs, dtype), rand(rng, ks, dtype), rand(rng, (26,), dtype)
    results = []
    for n in (1, 2, 3):
        info.set_num_threads(n)
        y, _ = depthwise.depthwise_conv2d_forward(x, k, b, 2, "same", 1, "tanh", 0.0)
        dx = depthwise.depthwise_conv2d_backward_input(y, k, xs, 2, "same", 1)
        dk = depthwise.depthwise_conv2d_backward_weight(x, y, ks, 2, "same", 1)
        # The same kernels with groups of 13 input channels and 2 filters each.
        kg = k.reshape(3, 3, 13, 2)
        yg, _ = depthwise.grouped_conv2d_forward(x, kg, None, 1, "same", 1, 1, "linear", 0.0)
        dxg = depthwise.grouped_conv2d_backward_input(yg, kg, xs, 1, "same", 1, 1)
        dkg = depthwise.grouped_conv2d_backward_weight(x, yg, kg.shape, 1, "same", 1, 1)
        results.append((y, dx, dk, yg, dxg, dkg))
    for other in results[1:]:
        for a, b_ in zip(results[0], other):
            assert np.array_equal(a, b_)


X = np.ones((2, 5, 5, 3))
K = np.ones((3, 3, 3, 2))
DZ = np.ones((2, 5, 5, 6))


@pytest.mark.parametrize("call, error, match", [
    (lambda ops: ops.depthwise_conv2d_forward(X, np.ones((3, 3, 2, 2)), None, 1, "same", 1,
                                              "linear", 0.0),
     ValueError, r"depthwise_conv2d_forward: kernel has 2 input channels but the input has 3"),
    (lambda ops: ops.depthwise_conv2d_forward(X, K, np.ones(3), 1, "same", 1, "linear", 0.0),
     ValueError, r"'bias' must have shape \(6,\), got \(3,\)"),
    (lambda ops: ops.depthwise_conv2d_forward(X[0], K, None, 1, "same", 1, "linear", 0.0),
     ValueError, "'x' must have 4 dimensions"),
    (lambda ops: ops.depthwise_conv2d_forward(X, K, None, 1, "full", 1, "linear", 0.0),
     ValueError, "padding must be 'valid' or 'same', got 'full'"),
    (lambda ops: ops.depthwise_conv2d_forward(X, K, None, 0, "same", 1, "linear", 0.0),
     ValueError, "'strides' must be positive"),
    (lambda ops: ops.depthwise_conv2d_backward_input(DZ, K, (2, 5, 5, 3), 2, "same", 1),
     ValueError, r"depthwise_conv2d_backward_input: 'dz' must have shape \(2, 3, 3, 6\)"),
    (lambda ops: ops.depthwise_conv2d_backward_input(DZ, K, (2, 5, 5), 1, "same", 1),
     ValueError, "'input_shape' must be 4 non-negative ints"),
    (lambda ops: ops.depthwise_conv2d_backward_weight(X, DZ[..., :5], (3, 3, 3, 2), 1, "same",
                                                      1),
     ValueError, r"depthwise_conv2d_backward_weight: 'dz' must have shape \(2, 5, 5, 6\)"),
    (lambda ops: ops.depthwise_conv2d_backward_weight(X, DZ, (3, 3, 4, 2), 1, "same", 1),
     ValueError, "kernel has 4 input channels but the input has 3"),
])
def test_depthwise_bad_inputs(backend, call, error, match):
    def up(a):
        return backend.up(np.asarray(a, np.float32)) if isinstance(a, np.ndarray) else a

    class Uploading:
        def __getattr__(self, name):
            op = getattr(backend.ops, name)
            return lambda *args: op(*[up(a) for a in args])

    with pytest.raises(error, match=match):
        call(Uploading())



# -- grouped_conv2d: (x shape, kernel shape (KH, KW, C/G, F), strides, padding, dilation, G) --
GROUPED_CASES = [
    ((2, 7, 5, 4), (3, 3, 2, 6), (1, 1), "same", (1, 1), 2),
    ((1, 9, 8, 6), (3, 2, 2, 9), (2, 3), "same", (1, 1), 3),
    ((2, 8, 9, 6), (2, 3, 3, 4), (1, 1), "valid", (2, 1), 2),
    ((2, 5, 6, 4), (3, 3, 1, 4), (2, 2), "same", (1, 1), 4),     # depthwise as groups
    ((1, 6, 5, 3), (3, 3, 3, 5), (1, 2), "same", (1, 1), 1),     # one group: a plain conv
    ((2, 4, 4, 8), (5, 5, 4, 2), (1, 1), "valid", (1, 1), 2),    # kernel larger: empty
    ((0, 5, 5, 4), (3, 3, 2, 2), (1, 1), "same", (1, 1), 2),     # empty batch
    ((2, 17, 19, 12), (3, 3, 3, 8), (1, 1), "same", (1, 1), 4),  # large enough to thread
    ((2, 6, 7, 4), (3, 3, 2, 18), (2, 1), "same", (1, 1), 2),    # 9 filters a group: looped
]
GROUPED_IDS = [f"{x}*{k}-s{s}-{p}-d{d}-g{g}" for x, k, s, p, d, g in GROUPED_CASES]


def grouped_forward_op_ref(x, kernel, bias, strides, padding, dilation_rate, groups,
                           activation, alpha):
    y, z = ref.grouped_conv2d_forward_ref(x, kernel, bias, strides, padding, dilation_rate,
                                          groups, activation, alpha)
    return y, (z if activation in ACTIVATIONS_NEEDING_INPUT else None)


@pytest.mark.parametrize("xs,ks,s,p,d,groups", GROUPED_CASES, ids=GROUPED_IDS)
def test_grouped_ops_match_reference(target, xs, ks, s, p, d, groups):
    rng = np.random.default_rng(sum(xs) + sum(ks))
    dtype = target.dtype
    x, k, b = rand(rng, xs, dtype), rand(rng, ks, dtype), rand(rng, (ks[3],), dtype)
    act = {0: "relu", 1: "gelu", 2: "softmax"}[sum(xs) % 3]
    rtol = {"rtol": 1e-12, "atol": 1e-12} if dtype == np.float64 else None
    _, (y, _) = check_op(target, "grouped_conv2d_forward", x, k, b, s, p, d, groups, act, 0.0,
                         ref=grouped_forward_op_ref, kind="gemm", rtol=rtol)
    dz = rand(rng, y.shape, dtype)
    check_op(target, "grouped_conv2d_backward_input", dz, k, xs, s, p, d, groups,
             ref=ref.grouped_conv2d_backward_input_ref, kind="gemm", rtol=rtol)
    check_op(target, "grouped_conv2d_backward_weight", x, dz, ks, s, p, d, groups,
             ref=ref.grouped_conv2d_backward_weight_ref, kind="gemm", rtol=rtol)


def test_grouped_with_one_input_channel_per_group_is_depthwise():
    """The two layouts meet where G = C: the same kernel array, the same numbers."""
    rng = np.random.default_rng(2)
    x, k = rand(rng, (2, 6, 5, 3)), rand(rng, (3, 3, 3, 2))
    y_dw, _ = depthwise.depthwise_conv2d_forward(x, k, None, 2, "same", 1, "linear", 0.0)
    y_g, _ = depthwise.grouped_conv2d_forward(x, k.reshape(3, 3, 1, 6), None, 2, "same", 1, 3,
                                              "linear", 0.0)
    np.testing.assert_array_equal(y_dw, y_g)


XG = np.ones((2, 5, 5, 4))
KG = np.ones((3, 3, 2, 6))


@pytest.mark.parametrize("call, match", [
    (lambda ops: ops.grouped_conv2d_forward(XG, KG, None, 1, "same", 1, 3, "linear", 0.0),
     (r"grouped_conv2d_forward: groups=3 must divide the input channels \(4\) and the "
      r"filters \(6\)")),
    (lambda ops: ops.grouped_conv2d_forward(XG, np.ones((3, 3, 4, 6)), None, 1, "same", 1, 2,
                                            "linear", 0.0),
     ("kernel \\(KH, KW, C/groups, F\\) has 4 input channels per group but the input has 4 "
      "channels in 2 groups, 2 each")),
    (lambda ops: ops.grouped_conv2d_forward(XG, KG, None, 1, "same", 1, 0, "linear", 0.0),
     "'groups' must be a positive int, got 0"),
    (lambda ops: ops.grouped_conv2d_forward(XG, KG, np.ones(4), 1, "same", 1, 2, "linear",
                                            0.0),
     r"'bias' must have shape \(6,\), got \(4,\)"),
    (lambda ops: ops.grouped_conv2d_backward_input(np.ones((2, 5, 5, 4)), KG, XG.shape, 1,
                                                   "same", 1, 2),
     r"grouped_conv2d_backward_input: 'dz' must have shape \(2, 5, 5, 6\)"),
    (lambda ops: ops.grouped_conv2d_backward_weight(XG, np.ones((2, 3, 3, 6)), KG.shape, 1,
                                                    "same", 1, 2),
     r"grouped_conv2d_backward_weight: 'dz' must have shape \(2, 5, 5, 6\)"),
])
def test_grouped_bad_inputs(backend, call, match):
    def up(a):
        return backend.up(np.asarray(a, np.float32)) if isinstance(a, np.ndarray) else a

    class Uploading:
        def __getattr__(self, name):
            op = getattr(backend.ops, name)
            return lambda *args: op(*[up(a) for a in args])

    with pytest.raises(ValueError, match=match):
        call(Uploading())
