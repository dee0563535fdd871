"""pynn.ops' keras.ops breadth (pynn/ops/numpy_extra.py, pynn/ops/nn_extra.py): one table of
ops, each checked four ways: forward against the float64 NumPy reference, the tape's gradient
against central differences (float64), forward and gradient against keras.ops on torch
(float32), and OpenCL against the CPU (every op here runs on the device). Then the
functional graph (.pynn round trip) and the bad inputs.
"""

import numpy as np
import pytest

import pynn
from pynn import ops
from tests.backend_util import keras_on_torch
from tests.test_ops import check_grad

def _x(*shape, positive=False, unit=False, seed=0):
    a = np.random.default_rng(seed + 31 * len(shape) + sum(shape)).standard_normal(shape)
    if a.size:
        a.flat[0] = 0.625
    if positive:
        a = np.abs(a) + 0.5
    if unit:
        a = np.tanh(a) * 0.9
    return a


def _ids(*values):
    return np.asarray(values, np.int32)


ATTENTION_MASK = np.random.default_rng(4).random((2, 1, 3, 5)) > 0.4
ATTENTION_MASK[0, 0, 1] = False


# name -> (call(o, *xs) with o either pynn.ops or keras.ops, inputs, NumPy float64 reference
# or None where the reference is keras itself, on_device)
CASES = {
    "cumsum": (lambda o, x: o.cumsum(x, axis=1), [_x(3, 5)], lambda x: np.cumsum(x, 1), True),
    "cumsum_flat": (lambda o, x: o.cumsum(x), [_x(3, 5)], lambda x: np.cumsum(x), True),
    "cumprod": (lambda o, x: o.cumprod(x, axis=0), [_x(5, 3)], lambda x: np.cumprod(x, 0),
                True),
    "tile": (lambda o, x: o.tile(x, (2, 1, 3)), [_x(3, 5)], lambda x: np.tile(x, (2, 1, 3)),
             True),
    "repeat": (lambda o, x: o.repeat(x, 3, axis=1), [_x(3, 5)],
               lambda x: np.repeat(x, 3, 1), True),
    "repeat_counts": (lambda o, x: o.repeat(x, [2, 0, 1], axis=0), [_x(3, 5)],
                      lambda x: np.repeat(x, [2, 0, 1], 0), True),
    "repeat_flat": (lambda o, x: o.repeat(x, 2), [_x(3, 5)], lambda x: np.repeat(x, 2), True),
    "pad_constant": (lambda o, x: o.pad(x, ((1, 2), (0, 3)), constant_values=1.5),
                     [_x(3, 5)], lambda x: np.pad(x, ((1, 2), (0, 3)), constant_values=1.5),
                     True),
    "pad_reflect": (lambda o, x: o.pad(x, ((1, 2), (2, 1)), mode="reflect"), [_x(3, 5)],
                    lambda x: np.pad(x, ((1, 2), (2, 1)), mode="reflect"), True),
    "pad_symmetric": (lambda o, x: o.pad(x, ((2, 3), (1, 0)), mode="symmetric"),
                      [_x(3, 5)], lambda x: np.pad(x, ((2, 3), (1, 0)), mode="symmetric"),
                      True),
    "roll": (lambda o, x: o.roll(x, 2, axis=1), [_x(3, 5)], lambda x: np.roll(x, 2, 1), True),
    "roll_flat": (lambda o, x: o.roll(x, -4), [_x(3, 5)], lambda x: np.roll(x, -4), True),
    "flip": (lambda o, x: o.flip(x, axis=1), [_x(3, 5)], lambda x: np.flip(x, 1), True),
    "fliplr": (lambda o, x: o.fliplr(x), [_x(3, 5)], np.fliplr, True),
    "flipud": (lambda o, x: o.flipud(x), [_x(3, 5)], np.flipud, True),
    "tril": (lambda o, x: o.tril(x, -1), [_x(2, 4, 5)], lambda x: np.tril(x, -1), True),
    "triu": (lambda o, x: o.triu(x, 1), [_x(2, 4, 5)], lambda x: np.triu(x, 1), True),
    "diagonal": (lambda o, x: o.diagonal(x, 1, 0, 2), [_x(4, 3, 5)],
                 lambda x: np.diagonal(x, 1, 0, 2), True),
    "trace": (lambda o, x: o.trace(x, -1), [_x(4, 5)], lambda x: np.trace(x, -1), True),
    "diag_vector": (lambda o, x: o.diag(x, 1), [_x(5)], lambda x: np.diag(x, 1), True),
    "diag_matrix": (lambda o, x: o.diag(x, -1), [_x(4, 5)], lambda x: np.diag(x, -1), True),
    "outer": (lambda o, a, b: o.outer(a, b), [_x(3), _x(5)], np.outer, True),
    "inner": (lambda o, a, b: o.inner(a, b), [_x(3, 5), _x(2, 5)], np.inner, True),
    "moveaxis": (lambda o, x: o.moveaxis(x, 0, -1), [_x(2, 3, 5)],
                 lambda x: np.moveaxis(x, 0, -1), True),
    "swapaxes": (lambda o, x: o.swapaxes(x, 0, 2), [_x(2, 3, 5)],
                 lambda x: np.swapaxes(x, 0, 2), True),
    "ravel": (lambda o, x: o.ravel(x), [_x(3, 5)], np.ravel, True),
    "unstack": (lambda o, x: o.unstack(x, axis=1)[2], [_x(3, 5)], lambda x: x[:, 2], True),
    "hstack": (lambda o, a, b: o.hstack([a, b]), [_x(3, 5), _x(3, 2)],
               lambda a, b: np.hstack([a, b]), True),
    "vstack": (lambda o, a, b: o.vstack([a, b]), [_x(5), _x(2, 5)],
               lambda a, b: np.vstack([a, b]), True),
    "erf": (lambda o, x: o.erf(x), [_x(3, 5)], None, True),
    "erfc": (lambda o, x: o.erfc(x), [_x(3, 5)], None, True),
    "erfinv": (lambda o, x: o.erfinv(x), [_x(3, 5, unit=True)], None, True),
    "logaddexp": (lambda o, a, b: o.logaddexp(a, b), [_x(3, 5), _x(1, 5)], np.logaddexp, True),
    "hypot": (lambda o, a, b: o.hypot(a, b), [_x(3, 5), _x(3, 1)], np.hypot, True),
    "cbrt": (lambda o, x: o.cbrt(x), [_x(3, 5)], np.cbrt, True),
    "exp2": (lambda o, x: o.exp2(x), [_x(3, 5)], np.exp2, True),
    "fmod": (lambda o, a, b: o.fmod(a, b), [_x(3, 5) * 3, _x(5, positive=True)], np.fmod,
             True),
    "norm": (lambda o, x: o.norm(x), [_x(3, 5)], np.linalg.norm, True),
    "norm_axis_ord1": (lambda o, x: o.norm(x, ord=1, axis=1, keepdims=True), [_x(3, 5)],
                       lambda x: np.linalg.norm(x, 1, 1, True), True),
    "norm_ord3": (lambda o, x: o.norm(x, ord=3, axis=0), [_x(3, 5)],
                  lambda x: np.linalg.norm(x, 3, 0), True),
    "norm_matrix_inf": (lambda o, x: o.norm(x, ord=np.inf, axis=(1, 2)), [_x(2, 3, 5)],
                        lambda x: np.linalg.norm(x, np.inf, (1, 2)), True),
    "sort": (lambda o, x: o.sort(x, axis=0), [_x(4, 5)], lambda x: np.sort(x, 0), True),
    "top_k": (lambda o, x: o.top_k(x, 3)[0], [_x(4, 5)],
              lambda x: -np.sort(-x, -1)[..., :3], True),
    "segment_sum": (lambda o, x: o.segment_sum(x, _ids(0, 2, 0, 1), num_segments=3),
                    [_x(4, 5)], None, True),
    "segment_max": (lambda o, x: o.segment_max(x, _ids(1, 1, 0, 1), num_segments=2),
                    [_x(4, 5)], None, True),
    "scatter": (lambda o, v: o.scatter(_ids([0, 1], [2, 3], [0, 1]), v, (3, 5)), [_x(3)],
                None, True),
    "scatter_update": (lambda o, x, v: o.scatter_update(x, _ids([0, 1], [2, 3]), v),
                       [_x(3, 5), _x(2)], None, True),
    "slice_update": (lambda o, x, v: o.slice_update(x, (1, 2), v), [_x(3, 5), _x(2, 2)],
                     None, True),
    "layer_normalization": (lambda o, x, g, b: o.layer_normalization(x, g, b, axis=-1),
                            [_x(3, 7), _x(7), _x(7)], None, True),
    "layer_normalization_axes": (lambda o, x, g: o.layer_normalization(x, g, axis=(1, 2)),
                                 [_x(2, 3, 4), _x(3, 4)], None, True),
    "rms_normalization": (lambda o, x, s: o.rms_normalization(x, s, epsilon=1e-5),
                          [_x(3, 7), _x(7)], None, True),
    "dot_product_attention": (lambda o, q, k, v: o.dot_product_attention(q, k, v),
                              [_x(2, 3, 2, 4), _x(2, 5, 2, 4), _x(2, 5, 2, 3)], None, True),
    "dot_product_attention_causal_gqa": (
        lambda o, q, k, v: o.dot_product_attention(q, k, v, is_causal=True, scale=0.3),
        [_x(2, 4, 4, 3), _x(2, 4, 2, 3), _x(2, 4, 2, 3)], None, True),
    # row 1 of sample 0 attends to nothing: Keras makes it uniform (the composed path)
    "dot_product_attention_mask": (
        lambda o, q, k, v: o.dot_product_attention(q, k, v, mask=ATTENTION_MASK),
        [_x(2, 3, 2, 4), _x(2, 5, 2, 4), _x(2, 5, 2, 3)], None, True),
    "dot_product_attention_bias": (
        lambda o, q, k, v, b: o.dot_product_attention(q, k, v, bias=b),
        [_x(1, 3, 2, 4), _x(1, 5, 2, 4), _x(1, 5, 2, 3), _x(1, 2, 3, 5)], None, True),
    "conv_transpose": (lambda o, x, k: o.conv_transpose(x, k, 2, "same"),
                       [_x(2, 4, 3, 3), _x(3, 3, 2, 3)], None, True),
    "separable_conv": (lambda o, x, d, p: o.separable_conv(x, d, p, 1, "valid"),
                       [_x(2, 5, 4, 3), _x(3, 2, 3, 2), _x(1, 1, 6, 4)], None, True),
    "adaptive_average_pool": (lambda o, x: o.adaptive_average_pool(x, (2, 3)),
                              [_x(2, 5, 7, 3)], None, True),
    "adaptive_max_pool": (lambda o, x: o.adaptive_max_pool(x, 3), [_x(2, 7, 3)], None, True),
}
# Ops without a gradient: values only.
VALUE_CASES = {
    "trunc": (lambda o, x: o.trunc(x), [_x(3, 5) * 3], np.trunc, True),
    "isinf": (lambda o, x: o.isinf(x), [np.array([1.0, np.inf, -np.inf, np.nan])], np.isinf,
              True),
    "isclose": (lambda o, a, b: o.isclose(a, b), [np.array([1.0, 2.0, np.inf, np.nan, 0.0]),
                                                   np.array([1.0 + 1e-6, 2.1, np.inf,
                                                             np.nan, 1e-9])],
                np.isclose, True),
    "nan_to_num": (lambda o, x: o.nan_to_num(x, nan=0.5, posinf=9.0),
                   [np.array([1.0, np.nan, np.inf, -np.inf])],
                   lambda x: np.nan_to_num(x, nan=0.5, posinf=9.0), True),
    "argsort": (lambda o, x: o.argsort(x, axis=0), [_x(4, 5)], lambda x: np.argsort(x, 0),
                True),
    "top_k_indices": (lambda o, x: o.top_k(x, 2)[1], [_x(4, 5)],
                      lambda x: np.argsort(-x, -1)[..., :2], True),
    "in_top_k": (lambda o, p: o.in_top_k(_ids(0, 3, 4, 1), p, 2), [_x(4, 5)], None, True),
    "eye": (lambda o: o.eye(3, 5, k=1), [], lambda: np.eye(3, 5, 1), True),
    "identity": (lambda o: o.identity(4), [], lambda: np.identity(4), True),
    "tri": (lambda o: o.tri(4, 3, -1), [], lambda: np.tri(4, 3, -1), True),
    "full": (lambda o: o.full((2, 3), 7), [], lambda: np.full((2, 3), 7), True),
    "full_like": (lambda o, x: o.full_like(x, 2.5), [_x(2, 3)], lambda x: np.full_like(x, 2.5),
                  True),
    "arange": (lambda o: o.arange(2, 11, 3), [], lambda: np.arange(2, 11, 3), True),
    "arange_float": (lambda o: o.arange(0.5, 3.0, 0.75), [], lambda: np.arange(0.5, 3, 0.75),
                     True),
    "linspace": (lambda o: o.linspace(-1.0, 2.0, 7), [], lambda: np.linspace(-1, 2, 7), True),
}


@pytest.mark.parametrize("name", sorted(n for n in {**CASES, **VALUE_CASES}
                                        if {**CASES, **VALUE_CASES}[n][2] is not None))
def test_forward_matches_the_float64_reference(name):
    call, xs, ref, _ = {**CASES, **VALUE_CASES}[name]
    got = np.asarray(call(ops, *xs))
    want = np.asarray(ref(*xs))
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=name)


# An emptied attention row adds -1e9 to its logits (Keras's): float64 keeps only ~1e-7 of
# them, too coarse for differences; its gradient is checked against Keras's instead.
@pytest.mark.parametrize("name", sorted(set(CASES) - {"dot_product_attention_mask"}))
def test_gradient_by_central_differences(name):
    call, xs, _, _ = CASES[name]
    xs = [np.array(x, np.float64) for x in xs]
    check_grad(name, lambda *a: call(ops, *a), xs, rtol=1e-5, atol=1e-7)


def _keras_run(keras, call, xs, r):
    import torch
    ts = [torch.tensor(x.astype(np.float32), requires_grad=True) for x in xs]
    y = call(keras.ops, *ts)
    if not isinstance(y, torch.Tensor):
        y = torch.as_tensor(np.asarray(y))
    if not y.dtype.is_floating_point or r is None:
        return y.detach().cpu().numpy(), []
    (y * torch.tensor(r)).sum().backward()
    return y.detach().cpu().numpy(), [None if t.grad is None else t.grad.numpy() for t in ts]


def _pynn_run(call, xs, r):
    tensors = [ops.convert_to_tensor(x.astype(np.float32)) for x in xs]
    with pynn.GradientTape() as tape:
        for t in tensors:
            tape.watch(t)
        y = call(ops, *tensors)
        out = np.asarray(y)
        if out.dtype.kind != "f":
            return out, []
        loss = ops.sum(ops.multiply(y, r))
    grads = tape.gradient(loss, tensors) if tensors else []
    return out, [None if g is None else g.numpy() for g in grads]


# Keras 3.15's torch backend departs from keras.ops' documented (NumPy's) meaning here;
# pynn keeps NumPy's, checked against the float64 reference above.
KERAS_TORCH_DEPARTS = {
    "pad_symmetric": "keras' torch backend pads 'symmetric' as 'replicate' (edge)",
    "repeat_counts": "keras' torch backend fails on a list of repeats (its own all() "
                     "shadows the builtin)",
}


@pytest.mark.parametrize("name", sorted({**CASES, **VALUE_CASES}))
def test_keras_parity_of_values_and_gradients(name):
    keras = keras_on_torch()
    if name in KERAS_TORCH_DEPARTS:
        pytest.skip(KERAS_TORCH_DEPARTS[name])
    call, xs, _, _ = {**CASES, **VALUE_CASES}[name]
    want, want_g = _keras_run(keras, call, xs, None) if name in VALUE_CASES else (None, None)
    if want is None:
        probe = np.asarray(call(ops, *[x.astype(np.float32) for x in xs]))
        r = np.random.default_rng(5).standard_normal(probe.shape).astype(np.float32)
        want, want_g = _keras_run(keras, call, xs, r)
    else:
        r = np.ones(want.shape, np.float32)
    got, got_g = _pynn_run(call, xs, r) if name in CASES else (
        np.asarray(call(ops, *[x.astype(np.float32) for x in xs])), [])
    assert got.shape == want.shape, f"{name}: shape {got.shape}, Keras {want.shape}"
    if want.dtype.kind in "biu":
        np.testing.assert_array_equal(got, want, err_msg=name)
    else:
        scale = max(1.0, float(np.max(np.abs(want[np.isfinite(want)]), initial=0)))
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * scale, err_msg=name)
        assert np.dtype(got.dtype) == np.dtype(want.dtype), \
            f"{name}: dtype {got.dtype}, Keras {want.dtype}"
    for i, (g, w) in enumerate(zip(got_g, want_g)):
        if w is None:
            continue
        s = max(1.0, float(np.max(np.abs(w))))
        np.testing.assert_allclose(g, w, rtol=0, atol=2e-5 * s, err_msg=f"{name} d/dx{i}")


DEVICE = sorted(n for n, case in {**CASES, **VALUE_CASES}.items() if case[3])


@pytest.mark.opencl
@pytest.mark.parametrize("name", DEVICE)
def test_opencl_matches_the_cpu(name):
    from tests.test_ops_device import _on, check_device
    call, xs, _, _ = {**CASES, **VALUE_CASES}[name]
    xs = [x.astype(np.float32) for x in xs]
    if name in CASES:
        check_device(name, lambda *a: call(ops, *a), *xs)
        return
    # Predicates come back as float 0/1 on the device (as its comparisons do): values only.
    results = []
    for device in ("cpu", "opencl"):
        with _on(device) as b:
            results.append(np.asarray(call(ops, *[b.asarray(x, np.float32) for x in xs])))
    want, got = results
    assert got.shape == want.shape, f"{name}: shape {got.shape} != CPU's {want.shape}"
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=1e-6,
                               err_msg=name)


def test_cumprod_gradient_is_exact_with_zeros():
    x = _x(3, 6)
    x[0, 2] = 0.0
    x[1, 1] = x[1, 4] = 0.0
    check_grad("cumprod with zeros", lambda a: ops.cumprod(a, axis=1), [x])


def test_op_nodes_of_a_functional_model_save_and_load(tmp_path):
    inp = pynn.Input((4, 5))
    h = ops.tril(inp) + ops.roll(inp, 1, axis=2)
    h = ops.pad(h, ((0, 0), (1, 1), (0, 0)), mode="reflect")
    h = ops.layer_normalization(ops.cumsum(h, axis=1), axis=-1)
    out = ops.norm(ops.moveaxis(h, 1, 2), axis=-1)
    model = pynn.Model(inp, out)
    x = _x(3, 4, 5).astype(np.float32)
    want = model.predict(x, verbose=0)
    path = tmp_path / "ops.pynn"
    model.save(path)
    got = pynn.load_model(path).predict(x, verbose=0)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    ref = np.tril(x) + np.roll(x, 1, 2)
    ref = np.cumsum(np.pad(ref, ((0, 0), (1, 1), (0, 0)), mode="reflect"), axis=1)
    ref = (ref - ref.mean(-1, keepdims=True)) / np.sqrt(ref.var(-1, keepdims=True) + 1e-7)
    np.testing.assert_allclose(want, np.linalg.norm(np.moveaxis(ref, 1, 2), axis=-1),
                               rtol=1e-4, atol=1e-5)


def test_a_custom_layer_trains_through_the_new_ops():
    class Mixer(pynn.layers.Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones")

        def call(self, x):
            y = ops.rms_normalization(x, self.w)
            return ops.cumsum(ops.flip(y, axis=-1), axis=-1) + ops.tile(self.w, (1,))

    model = pynn.Sequential([pynn.Input((6,)), Mixer(), pynn.layers.Dense(1)])
    model.compile("adam", "mse")
    x = _x(32, 6).astype(np.float32)
    y = x.sum(axis=1, keepdims=True).astype(np.float32)
    hist = model.fit(x, y, epochs=5, batch_size=8, verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0]


@pytest.mark.parametrize("call, message", [
    (lambda: ops.pad(_x(3, 4), ((1, 1), (4, 0)), mode="reflect"), "'reflect' pads axis 1"),
    (lambda: ops.pad(_x(3, 4), 1, mode="mean"), "mode must be one of"),
    (lambda: ops.pad(_x(3, 4), ((1, 2, 3),)), "pad_width must be"),
    (lambda: ops.repeat(_x(3, 4), [1, 2], axis=0), "repeats must be an int or 3 ints"),
    (lambda: ops.repeat(_x(3, 4), -1), "non-negative integers"),
    (lambda: ops.tile(_x(3), (-2,)), "repeats must be >= 0"),
    (lambda: ops.moveaxis(_x(2, 3), 0, 5), "axis 5 is out of range for a 2-D input"),
    (lambda: ops.swapaxes(_x(2, 3), 0, 1.5), "axis must be an int"),
    (lambda: ops.diagonal(_x(2, 3), 0, 1, 1), "axis1 and axis2 must differ"),
    (lambda: ops.tril(_x(4)), "tril: expected an input of at least 2 dimensions"),
    (lambda: ops.diag(_x(2, 3, 4)), "diag: expected a 1-D or 2-D input"),
    (lambda: ops.inner(_x(3, 4), _x(3, 5)), "inner: the last axes must match"),
    (lambda: ops.unstack(_x(3, 4), num=2), "num=2 but axis 0 has length 3"),
    (lambda: ops.top_k(_x(3, 4), 5), r"k must be an int in \[0, 4\]"),
    (lambda: ops.in_top_k(_ids(0, 1), _x(3, 4), 1), r"expected targets \(N,\)"),
    # -- linalg (branch linalg): 'nuc', 2 and -2 are the SVD's now
    (lambda: ops.norm(_x(3, 4), ord=3), "matrix ord 3 is not supported"),
    (lambda: ops.norm(_x(3, 4, 5), ord=1), "needs a 1-D or 2-D input"),
    (lambda: ops.segment_sum(_x(4, 2), np.array([0.0, 1, 1, 0])), "must be integers"),
    (lambda: ops.segment_sum(_x(4, 2), _ids(0, 1)), "one per row of data"),
    (lambda: ops.scatter(np.array([[0.5]]), _x(1), (3,)), "indices must be integers"),
    (lambda: ops.scatter_update(_x(3), _ids([0]), _x(1), reduction="add"),
     "reduction='add' is not supported"),
    (lambda: ops.slice_update(_x(3, 4), (2, 3), _x(2, 2)), "do not fit inputs of shape"),
    (lambda: ops.layer_normalization(_x(3, 4), _x(5)), "gamma must hold 4 values"),
    (lambda: ops.rms_normalization(_x(3, 4), axis=2), "axis 2 is out of range"),
    (lambda: ops.dot_product_attention(_x(2, 3, 4), _x(2, 3, 4), _x(2, 3, 4)),
     "expected 4-D query"),
    (lambda: ops.dot_product_attention(_x(1, 3, 2, 4), _x(1, 5, 2, 4), _x(1, 5, 2, 3),
                                       bias=_x(1, 2, 3, 5), mask=np.ones((3, 5), bool)),
     "give bias or mask, not both"),
    (lambda: ops.dot_product_attention(_x(1, 3, 3, 4), _x(1, 5, 2, 4), _x(1, 5, 2, 3)),
     "heads dividing the query's"),
    (lambda: ops.dot_product_attention(_x(1, 3, 2, 4), _x(1, 5, 2, 4), _x(1, 5, 2, 3),
                                       mask=np.ones((1, 2, 3, 5), bool)),
     "a mask per head"),
    (lambda: ops.adaptive_average_pool(_x(2, 3), 2), "expected a 3-D to 5-D input"),
    (lambda: ops.adaptive_max_pool(_x(2, 5, 3), (2, 2)), "output_size must be a positive int"),
    (lambda: ops.conv_transpose(_x(2, 4, 3), _x(3, 2, 3)), "expected a 4-D input"),
])
def test_bad_inputs_are_refused_by_name(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()
