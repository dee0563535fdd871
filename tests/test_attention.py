"""The attention ops (native/attention.pyx, opencl/attention.cl) against their float64
references over both backends: odd sizes, masks with rows that attend to nothing, dropout
multipliers, thread-count invariance, and bad operands."""

import numpy as np
import pytest

from tests.backend_util import check_op, rand
from tests.reference import attention_ref as ref

@pytest.fixture
def rng():
    return np.random.default_rng(2031)


SHAPES = [  # N, T, S, H, K, V
    (1, 1, 1, 1, 1, 1), (2, 3, 5, 2, 4, 3), (3, 7, 9, 3, 5, 6), (2, 33, 17, 4, 8, 16),
    (1, 65, 31, 1, 7, 1),
]


def _case(rng, shape, masked, dropped, dtype=np.float32):
    n, t, s, h, k, v = shape
    q, kk, vv = rand(rng, (n, t, h, k), dtype), rand(rng, (n, s, h, k), dtype), \
        rand(rng, (n, s, h, v), dtype)
    mask = None
    if masked:
        mask = (rng.random((n, t, s)) > 0.4).astype(np.uint8)
        mask[0, 0, :] = 0             # a row attending to nothing
        mask[-1, -1, :] = 1
    drop = None
    if dropped:
        drop = ((rng.random((n, h, t, s)) > 0.3) / 0.7).astype(dtype)
    return q, kk, vv, mask, 1.0 / np.sqrt(k), drop


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dropped", [False, True])
def test_attention_forward(target, rng, shape, masked, dropped):
    q, k, v, mask, scale, drop = _case(rng, shape, masked, dropped, target.dtype)
    check_op(target, "attention_forward", q, k, v, mask, scale, drop,
             ref=ref.attention_forward_ref, kind="gemm",
             rtol=1e-12 if target.dtype == np.float64 else None)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dropped", [False, True])
@pytest.mark.parametrize("scores_grad", [False, True])
def test_attention_backward(target, rng, shape, masked, dropped, scores_grad):
    q, k, v, mask, scale, drop = _case(rng, shape, masked, dropped, target.dtype)
    _, probs = ref.attention_forward_ref(q, k, v, mask, scale, drop)
    probs = probs.astype(target.dtype)
    dout = rand(rng, shape[:2] + (shape[3], shape[5]), target.dtype)
    dprobs = rand(rng, probs.shape, target.dtype) if scores_grad else None
    check_op(target, "attention_backward", dout, q, k, v, probs, scale, drop, dprobs,
             ref=ref.attention_backward_ref, kind="gemm",
             rtol=1e-12 if target.dtype == np.float64 else None)


def test_attention_gradients_match_central_differences(rng):
    """The backward op is the forward op's derivative (float64, masks and dropout on, a
    gradient reaching the probabilities too)."""
    from pynn.backend import cpu

    q, k, v, mask, scale, drop = _case(rng, (2, 4, 5, 2, 3, 2), True, True, np.float64)
    dout = rng.standard_normal((2, 4, 2, 2))

    dprobs = rng.standard_normal((2, 2, 4, 5))

    def loss(q, k, v):
        out, probs = cpu.attention_forward(q, k, v, mask, scale, drop)
        return float(np.sum(out * dout) + np.sum(probs * dprobs))

    _, probs = cpu.attention_forward(q, k, v, mask, scale, drop)
    grads = cpu.attention_backward(dout, q, k, v, probs, scale, drop, dprobs)
    args = [q, k, v]
    for which, g in enumerate(grads):
        for i in rng.choice(args[which].size, 6, replace=False):
            flat = args[which].reshape(-1)
            old = flat[i]
            flat[i] = old + 1e-6
            plus = loss(*args)
            flat[i] = old - 1e-6
            minus = loss(*args)
            flat[i] = old
            assert abs((plus - minus) / 2e-6 - g.reshape(-1)[i]) < 1e-7, (which, i)


def test_a_row_attending_to_nothing_is_zeros_in_and_out(backend, rng):
    q, k, v, _, scale, _ = _case(rng, (2, 3, 4, 2, 3, 5), False, False)
    mask = np.ones((2, 3, 4), np.uint8)
    mask[1, 2] = 0
    _, (out, probs) = check_op(backend, "attention_forward", q, k, v, mask, scale, None,
                               ref=ref.attention_forward_ref, kind="gemm")
    assert not probs[1, :, 2].any() and not out[1, 2].any()
    dout = rand(rng, out.shape)
    _, (dq, _, _) = check_op(backend, "attention_backward", dout, q, k, v, probs, scale, None,
                             ref=ref.attention_backward_ref, kind="gemm")
    assert not dq[1, 2].any()


def test_attention_takes_bool_masks_and_nan_stays_in_its_row(backend, rng):
    q, k, v, _, scale, _ = _case(rng, (1, 3, 4, 1, 2, 2), False, False)
    q[0, 1, 0, 0] = np.nan
    mask = np.ones((1, 3, 4), bool)
    _, (out, probs) = check_op(backend, "attention_forward", q, k, v, mask, scale, None,
                               ref=ref.attention_forward_ref, kind="gemm")
    assert np.isnan(probs[0, 0, 1]).all() and np.isfinite(probs[0, 0, [0, 2]]).all()


def test_attention_results_do_not_depend_on_the_thread_count(rng, num_threads):
    from pynn.backend import cpu

    q, k, v, mask, scale, drop = _case(rng, (4, 48, 40, 4, 16, 16), True, True)
    num_threads(1)
    out1, p1 = cpu.attention_forward(q, k, v, mask, scale, drop)
    g1 = cpu.attention_backward(out1, q, k, v, p1, scale, drop)
    for threads in (2, 3):
        num_threads(threads)
        out, p = cpu.attention_forward(q, k, v, mask, scale, drop)
        np.testing.assert_array_equal(out, out1)
        np.testing.assert_array_equal(p, p1)
        for a, b in zip(cpu.attention_backward(out1, q, k, v, p1, scale, drop), g1):
            np.testing.assert_array_equal(a, b)


def test_attention_empty_axes(backend, rng):
    q, k, v = rand(rng, (2, 3, 2, 4)), np.zeros((2, 0, 2, 4), np.float32), \
        np.zeros((2, 0, 2, 5), np.float32)
    out, probs = (backend.down(a) for a in backend.op("attention_forward")(
        backend.up(q), backend.up(k), backend.up(v), None, 0.5, None))
    assert out.shape == (2, 3, 2, 5) and not out.any() and probs.shape == (2, 2, 3, 0)


@pytest.mark.parametrize("change, message", [
    (lambda a: dict(a, k=a["k"][:, :, :1]), "'k' must have shape"),
    (lambda a: dict(a, v=a["v"][:, :2]), "'v' must have shape"),
    (lambda a: dict(a, q=a["q"][0]), "'q' must have 4 dimensions"),
    (lambda a: dict(a, mask=np.ones((2, 3, 4), np.uint8)), "'mask' must have shape"),
    (lambda a: dict(a, mask=np.ones((2, 3, 5), np.float32)),
     r"'mask' must (be uint8|have dtype uint8)"),
    (lambda a: dict(a, drop=np.ones((2, 3, 3, 5), np.float32)), "'drop' must have shape"),
    (lambda a: dict(a, scale=float("nan")), "'scale' must not be NaN"),
    (lambda a: dict(a, scale="x"), "'scale' must be a real number"),
])
def test_bad_operands_name_the_op(backend, rng, change, message):
    args = dict(q=rand(rng, (2, 3, 2, 4)), k=rand(rng, (2, 5, 2, 4)), v=rand(rng, (2, 5, 2, 3)),
                mask=None, scale=0.5, drop=None)
    args = change(args)
    with pytest.raises((ValueError, TypeError), match=message):
        backend.op("attention_forward")(*[backend.up(a) for a in args.values()])


def test_backward_bad_operands_name_the_op(backend, rng):
    q, k, v = rand(rng, (2, 3, 2, 4)), rand(rng, (2, 5, 2, 4)), rand(rng, (2, 5, 2, 3))
    with pytest.raises(ValueError, match="attention_backward: 'probs' must have shape"):
        backend.op("attention_backward")(backend.up(rand(rng, (2, 3, 2, 3))), backend.up(q),
                                         backend.up(k), backend.up(v),
                                         backend.up(rand(rng, (2, 2, 3, 4))), 0.5, None)
    with pytest.raises(ValueError, match="attention_backward: 'dprobs' must have shape"):
        backend.op("attention_backward")(backend.up(rand(rng, (2, 3, 2, 3))), backend.up(q),
                                         backend.up(k), backend.up(v),
                                         backend.up(rand(rng, (2, 2, 3, 5))), 0.5, None,
                                         backend.up(rand(rng, (2, 2, 3, 4))))
    with pytest.raises(ValueError, match="attention_backward: 'dout' must have shape"):
        backend.op("attention_backward")(backend.up(rand(rng, (2, 3, 2, 4))), backend.up(q),
                                         backend.up(k), backend.up(v),
                                         backend.up(rand(rng, (2, 2, 3, 5))), 0.5, None)
