"""pynn.ops' control flow (pynn/ops/control_flow.py): eager cond/switch/loops/scans/maps with
the tape recording through them. One table, checked as tests/test_ops_keras3.py does: the
value against a float64 NumPy reference, the tape's gradient against central differences,
value and gradient against keras.ops on torch (the same lambda run with keras.ops), OpenCL
against the CPU. Then custom_gradient, jvp's refusal, the functional graph's refusal, bad
inputs.
"""

import numpy as np
import pytest

import pynn
from pynn import ops
from tests.backend_util import keras_on_torch
from tests.test_ops import check_grad
from tests.test_ops_keras3 import _keras_run, _pynn_run


def _x(*shape, seed=0):
    a = np.random.default_rng(seed + 41 * len(shape) + sum(shape)).standard_normal(shape)
    a.flat[0] = 0.625
    return a


def _while_ref(x):
    a = x
    for _ in range(3):
        a = np.sin(a) + x
    return a


def _halving_ref(x):
    a = x
    for _ in range(4):
        a = a * 0.5 + x
    return a


def _fori_ref(x):
    a = x
    for i in range(1, 4):
        a = a * 0.9 + np.sin(x) * i
    return a


def _scan_ref(x, reverse=False):
    c = np.zeros_like(x[0])
    ys = []
    for e in (x[::-1] if reverse else x):
        c, y = c * 0.5 + e, np.tanh(c) * e
        ys.append(y)
    ys = np.stack(ys[::-1] if reverse else ys)
    return c, ys


def _linear_recurrence_ref(a, b):
    h = np.zeros_like(b)
    prev = np.zeros_like(b[0])
    for t in range(len(b)):
        prev = a[t] * prev + b[t]
        h[t] = prev
    return h


def _softmax_rows(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _pair_combine(o):
    return lambda p, q: (o.multiply(p[0], q[0]), o.add(o.multiply(p[1], q[0]), q[1]))


# name -> (call(o, *xs) with o pynn.ops or keras.ops, inputs, float64 reference, on_device)
CASES = {
    "cond_true": (lambda o, x: o.cond(o.sum(x) > -100.0, lambda: o.sin(x) * 2.0,
                                      lambda: x * 3.0), [_x(3, 5)],
                  lambda x: np.sin(x) * 2, True),
    "cond_false": (lambda o, x: o.cond(o.sum(x) > 100.0, lambda: o.sin(x) * 2.0,
                                       lambda: x * 3.0), [_x(3, 5)], lambda x: x * 3, True),
    "switch": (lambda o, x: o.switch(1, [lambda a: a + 1.0, lambda a: o.exp(a)], x),
               [_x(3, 5)], np.exp, True),
    "switch_clipped": (lambda o, x, y: o.switch(7, [lambda a, b: a + b, lambda a, b: a * b],
                                                x, y), [_x(3, 5), _x(3, 5, seed=1)],
                       lambda x, y: x * y, True),
    "while_loop": (lambda o, x: o.while_loop(lambda a, i: i < 3,
                                             lambda a, i: (o.sin(a) + x, i + 1), (x, 0))[0],
                   [_x(3, 5)], _while_ref, True),
    "while_loop_maximum_iterations": (lambda o, x: o.while_loop(
        lambda a: True, lambda a: a * 0.5 + x, x, maximum_iterations=4), [_x(2, 7)],
        _halving_ref, True),
    "fori_loop": (lambda o, x: o.fori_loop(1, 4, lambda i, a: a * 0.9 + o.sin(x) * i, x),
                  [_x(3, 5)], _fori_ref, True),
    "scan_ys": (lambda o, x: o.scan(lambda c, e: (c * 0.5 + e, o.tanh(c) * e),
                                    o.zeros_like(x[0]), x)[1], [_x(5, 3)],
                lambda x: _scan_ref(x)[1], True),
    "scan_carry": (lambda o, x: o.scan(lambda c, e: (c * 0.5 + e, o.tanh(c) * e),
                                       o.zeros_like(x[0]), x)[0], [_x(5, 3)],
                   lambda x: _scan_ref(x)[0], True),
    "scan_reverse": (lambda o, x: o.scan(lambda c, e: (c * 0.5 + e, o.tanh(c) * e),
                                         o.zeros_like(x[0]), x, reverse=True)[1], [_x(5, 3)],
                     lambda x: _scan_ref(x, reverse=True)[1], True),
    "associative_scan_sum": (lambda o, x: o.associative_scan(lambda a, b: a + b, x, axis=1),
                             [_x(3, 7)], lambda x: np.cumsum(x, 1), True),
    "associative_scan_max_reverse": (
        lambda o, x: o.associative_scan(lambda a, b: o.maximum(a, b), x, reverse=True),
        [_x(9, 2)], lambda x: np.maximum.accumulate(x[::-1], 0)[::-1], True),
    "associative_scan_pairs": (
        lambda o, a, b: o.associative_scan(_pair_combine(o), (a, b))[1],
        [np.tanh(_x(6, 3)), _x(6, 3, seed=1)], _linear_recurrence_ref, True),
    "map": (lambda o, x: o.map(lambda r: o.sum(r * r) + r[0], x), [_x(5, 3)],
            lambda x: (x * x).sum(1) + x[:, 0], True),
    "map_pair": (lambda o, x, y: o.map(lambda p: p[0] * o.sin(p[1]), (x, y)),
                 [_x(4, 3), _x(4, 3, seed=1)], lambda x, y: x * np.sin(y), True),
    "vectorized_map": (lambda o, x: o.vectorized_map(lambda r: o.softmax(r), x), [_x(4, 5)],
                       _softmax_rows, True),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_matches_the_float64_reference(name):
    call, xs, ref, _ = CASES[name]
    got = np.asarray(call(ops, *xs))
    want = np.asarray(ref(*xs))
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_through_the_control_flow_by_central_differences(name):
    call, xs, _, _ = CASES[name]
    check_grad(name, lambda *a: call(ops, *a), [np.array(x, np.float64) for x in xs])


@pytest.mark.parametrize("name", sorted(CASES))
def test_keras_parity_of_values_and_gradients(name):
    keras = keras_on_torch()
    call, xs, _, _ = CASES[name]
    probe = np.asarray(call(ops, *[x.astype(np.float32) for x in xs]))
    r = np.random.default_rng(5).standard_normal(probe.shape).astype(np.float32)
    want, want_g = _keras_run(keras, call, xs, r)
    got, got_g = _pynn_run(call, xs, r)
    assert got.shape == want.shape, f"{name}: shape {got.shape}, Keras {want.shape}"
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * max(1.0, np.abs(want).max()),
                               err_msg=name)
    for i, (g, w) in enumerate(zip(got_g, want_g)):
        if w is not None:
            np.testing.assert_allclose(g, w, rtol=0, atol=2e-5 * max(1.0, np.abs(w).max()),
                                       err_msg=f"{name} d/dx{i}")


@pytest.mark.opencl
@pytest.mark.parametrize("name", sorted(n for n, case in CASES.items() if case[3]))
def test_opencl_matches_the_cpu(name):
    from tests.test_ops_device import check_device
    call, xs, _, _ = CASES[name]
    check_device(name, lambda *a: call(ops, *a), *[x.astype(np.float32) for x in xs])


def test_while_loop_returns_a_tuple_for_a_list_and_counts_steps():
    out = ops.while_loop(lambda a, i: i < 5, lambda a, i: [a * 2.0, i + 1],
                         [np.ones(2), 0])
    assert isinstance(out, tuple) and out[1] == 5
    np.testing.assert_array_equal(np.asarray(out[0]), [32.0, 32.0])


def test_scan_without_xs_and_without_ys():
    carry, ys = ops.scan(lambda c, _: (c + 1.0, None), np.zeros(2), length=4)
    assert ys is None
    np.testing.assert_array_equal(np.asarray(carry), [4.0, 4.0])


# -- custom_gradient ----------------------------------------------------------------------------
def test_custom_gradient_uses_grad_fn():
    @ops.custom_gradient
    def log1pexp(x):
        e = ops.exp(x)

        def grad(upstream):
            return ops.multiply(upstream, 1.0 - 1.0 / ops.add(1.0, e))

        return ops.log(1.0 + e), grad

    @ops.custom_gradient
    def scaled_identity(x):
        return ops.copy(x), lambda upstream: upstream * 7.0

    x = ops.convert_to_tensor(np.array([-3.0, 0.5, 100.0]))
    with pynn.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = log1pexp(x)
        z = ops.sum(scaled_identity(x) * np.array([1.0, 2.0, 3.0]))
        total = ops.sum(y)
    np.testing.assert_allclose(tape.gradient(total, x).numpy(),
                               1 / (1 + np.exp(-np.array([-3.0, 0.5, 100.0]))))
    np.testing.assert_array_equal(tape.gradient(z, x).numpy(), [7.0, 14.0, 21.0])
    np.testing.assert_allclose(y.numpy()[:2], np.log1p(np.exp([-3.0, 0.5])))


def test_custom_gradient_of_two_arguments_and_keras_parity():
    keras = keras_on_torch()
    import torch

    def make(o):
        @o.custom_gradient
        def f(a, b):
            y = a * b

            def grad(*args, upstream=None):  # Keras's documented signature
                if upstream is None:
                    (upstream,) = args
                return upstream * 2.0, upstream * 3.0
            return y, grad
        return f

    a, b = _x(3), _x(3, seed=1)
    ta, tb = (torch.tensor(v.astype(np.float32), requires_grad=True) for v in (a, b))
    make(keras.ops)(ta, tb).sum().backward()
    pa, pb = (ops.convert_to_tensor(v.astype(np.float32)) for v in (a, b))
    with pynn.GradientTape() as tape:
        tape.watch([pa, pb])
        loss = ops.sum(make(ops)(pa, pb))
    ga, gb = tape.gradient(loss, [pa, pb])
    np.testing.assert_allclose(ga.numpy(), ta.grad.numpy())
    np.testing.assert_allclose(gb.numpy(), tb.grad.numpy())


def test_custom_gradient_with_the_wrong_number_of_gradients():
    @ops.custom_gradient
    def f(a, b):
        return a * b, lambda up: up

    a, b = ops.convert_to_tensor(np.ones(2)), ops.convert_to_tensor(np.ones(2))
    with pynn.GradientTape() as tape:
        tape.watch([a, b])
        loss = ops.sum(f(a, b))
    with pytest.raises(ValueError, match="custom_gradient: grad_fn returned 1 gradients for 2"):
        tape.gradient(loss, [a, b])


def test_custom_gradient_needs_a_pair():
    with pytest.raises(ValueError, match=r"custom_gradient: <lambda> must return \(y, "):
        ops.custom_gradient(lambda x: x * 2.0)(np.ones(2))


# -- refusals and bad inputs --------------------------------------------------------------------
def test_jvp_is_refused_by_name():
    with pytest.raises(NotImplementedError, match="pynn.ops.jvp: forward-mode"):
        ops.jvp(lambda x: x * 2.0, (np.ones(2),), (np.ones(2),))


@pytest.mark.parametrize("call, name", [
    (lambda t: ops.cond(ops.sum(t) > 0, lambda: t, lambda: -t), "cond"),
    (lambda t: ops.map(lambda r: r * 2.0, t), "map"),
    (lambda t: ops.scan(lambda c, e: (c + e, e), t, t), "scan"),
    (lambda t: ops.while_loop(lambda a: True, lambda a: a, t, 2), "while_loop"),
    (lambda t: ops.associative_scan(lambda a, b: a + b, t), "associative_scan"),
    (lambda t: ops.switch(0, [lambda a: a], t), "switch"),
])
def test_a_functional_graph_refuses_python_callables_by_name(call, name):
    with pytest.raises(NotImplementedError, match=f"pynn.ops.{name}: a functional graph"):
        call(pynn.Input((3,)))


@pytest.mark.parametrize("call, error, match", [
    (lambda: ops.cond(np.ones(2) > 0, lambda: 1, lambda: 2), ValueError,
     "cond: the predicate must be a single boolean"),
    (lambda: ops.cond(True, 3, lambda: 2), TypeError, "cond: true_fn must be callable"),
    (lambda: ops.switch(0, [], np.ones(2)), ValueError, "switch: branches"),
    (lambda: ops.while_loop(lambda a: True, None, np.ones(2)), TypeError,
     "while_loop: body must be callable"),
    (lambda: ops.scan(lambda c, e: (c, e), 0.0, (np.ones(3), np.ones(4))), ValueError,
     "scan: every input must have one leading axis length"),
    (lambda: ops.scan(lambda c, e: (c, e), 0.0), ValueError, "scan: pass xs or length"),
    (lambda: ops.scan(lambda c, e: (c, e), 0.0, np.ones(3), length=4), ValueError,
     "scan: length=4"),
    (lambda: ops.associative_scan(lambda a, b: a, (np.ones(3), np.ones(4))), ValueError,
     "associative_scan: the inputs' axis 0 lengths differ"),
    (lambda: ops.map(lambda r: r, np.ones((0, 2))), ValueError, "map: xs has no elements"),
    (lambda: ops.vectorized_map("f", np.ones(2)), TypeError, "vectorized_map: function"),
])
def test_bad_inputs_name_the_op(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.opencl
def test_device_tensors_as_bounds_index_and_predicate():
    from tests.test_ops_device import _on
    with _on("opencl") as b:
        x = ops.convert_to_tensor(b.asarray(np.ones(3, np.float32), np.float32))
        one, three = (ops.convert_to_tensor(b.asarray(np.array(v), np.int32)) for v in (1, 3))
        np.testing.assert_array_equal(
            ops.fori_loop(one, three, lambda i, a: a * 2.0, x).numpy(), [4.0] * 3)
        np.testing.assert_array_equal(
            ops.switch(one, [lambda a: a, lambda a: a + 1.0], x).numpy(), [2.0] * 3)
        np.testing.assert_array_equal(
            ops.cond(ops.sum(x) > 2.0, lambda: x * 5.0, lambda: x).numpy(), [5.0] * 3)


def test_the_names_outside_the_graph_are_exported():
    namespace = {}
    exec("from pynn.ops import *", namespace)
    for name in ("cond", "scan", "custom_gradient", "jvp", "shape", "dtype", "view_as_real",
                 "ctc_decode", "fft", "istft"):
        assert namespace[name] is getattr(ops, name), name
