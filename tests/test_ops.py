"""pynn.ops: every op's gradient by central finite differences (float64, CPU), forward values
against NumPy/the activation references, and the errors of ops without an OpenCL kernel.

One helper, ``check_grad``, does the gradient check for every op: the tape's gradient of
``sum(op(*xs) * r)`` (r fixed random, so each output element weighs differently) against
``tests.reference.gradcheck.numerical_grad`` for every float input.
"""

import numpy as np
import pytest

import pynn
from pynn import ops
from tests.reference.activation_ref import activation_forward_ref
from tests.reference.gradcheck import assert_close, numerical_grad


def _data(rng, shape, positive=False, unit=False):
    a = rng.standard_normal(shape)
    if a.size:
        a.flat[0] = 0.5 + abs(a.flat[0])  # never all zero
    if positive:
        a = np.abs(a) + 0.5
    if unit:
        a = np.tanh(a) * 0.9
    return a


def check_grad(name, fn, xs, rtol=1e-5, atol=1e-7):
    """The tape's gradient of sum(fn(*xs) * r) against central differences, for each xs[i]
    that is a float array (the others are passed as they are)."""
    rng = np.random.default_rng(7)
    out = np.asarray(fn(*xs))
    r = rng.standard_normal(out.shape)
    tensors = [ops.convert_to_tensor(x) if isinstance(x, np.ndarray) and x.dtype.kind == "f"
               else x for x in xs]
    with pynn.GradientTape() as tape:
        for t in tensors:
            if isinstance(t, pynn.Tensor):
                tape.watch(t)
        y = fn(*tensors)
        loss = ops.sum(ops.multiply(y, r))
    sources = [t for t in tensors if isinstance(t, pynn.Tensor)]
    grads = tape.gradient(loss, sources)
    k = 0
    for i, x in enumerate(xs):
        if not (isinstance(x, np.ndarray) and x.dtype.kind == "f"):
            continue

        def f():
            return float(np.sum(np.asarray(fn(*xs)) * r))

        numeric = numerical_grad(f, x)
        assert grads[k] is not None, f"{name}: no gradient for input {i}"
        assert_close(f"{name} d/dx{i}", grads[k].numpy(), numeric, rtol, atol)
        k += 1


UNARY = {
    "negative": {}, "abs": {}, "exp": {}, "expm1": {}, "log": {"positive": True},
    "log1p": {"positive": True}, "log2": {"positive": True}, "log10": {"positive": True},
    "sqrt": {"positive": True}, "rsqrt": {"positive": True}, "square": {},
    "reciprocal": {"positive": True}, "sin": {}, "cos": {}, "tan": {"unit": True},
    "arcsin": {"unit": True}, "arccos": {"unit": True}, "arctan": {}, "sinh": {}, "cosh": {},
    "tanh": {}, "arcsinh": {}, "arctanh": {"unit": True},
    # activations (the layers' kernels)
    "relu": {}, "relu6": {}, "sigmoid": {}, "softplus": {}, "softsign": {}, "silu": {},
    "hard_sigmoid": {}, "hard_silu": {}, "mish": {}, "selu": {}, "elu": {}, "leaky_relu": {},
    "gelu": {}, "softmax": {}, "log_softmax": {},
}


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_gradient(name):
    rng = np.random.default_rng(1)
    x = _data(rng, (3, 5), **UNARY[name])
    if name in ("relu", "relu6", "abs", "leaky_relu", "elu", "selu", "hard_sigmoid",
                "hard_silu"):
        x = np.where(np.abs(x) < 0.05, 0.3, x)  # keep away from the kinks
        if name in ("hard_sigmoid", "hard_silu"):
            x = np.where(np.abs(np.abs(x) - 3) < 0.05, 2.0, x)
    check_grad(name, getattr(ops, name), [x])


def test_arccosh_gradient():
    x = _data(np.random.default_rng(2), (2, 3), positive=True) + 1.0
    check_grad("arccosh", ops.arccosh, [x])


@pytest.mark.parametrize("name", ["relu", "sigmoid", "softplus", "silu", "elu", "selu",
                                  "softsign", "mish", "softmax"])
def test_activation_forward_matches_reference(name):
    x = _data(np.random.default_rng(3), (4, 7))
    got = getattr(ops, name)(x.astype(np.float32)).numpy()
    want = activation_forward_ref(x, name, pynn.backend.api.DEFAULT_ALPHA.get(name, 0.0))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_gelu_forms():
    x = _data(np.random.default_rng(4), (3, 4))
    exact = activation_forward_ref(x, "gelu")
    np.testing.assert_allclose(ops.gelu(x, approximate=False).numpy(), exact, rtol=1e-6)
    tanh_form = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    np.testing.assert_allclose(ops.gelu(x).numpy(), tanh_form, rtol=1e-12)
    check_grad("gelu(approximate)", ops.gelu, [x])


BINARY = ["add", "subtract", "multiply", "divide", "maximum", "minimum", "power", "arctan2"]


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("shapes", [((3, 5), (3, 5)), ((2, 3, 5), (5,)), ((3, 1), (1, 4))])
def test_binary_gradient_broadcasting(name, shapes):
    rng = np.random.default_rng(5)
    positive = name in ("power", "divide")
    a, b = (_data(rng, s, positive=positive) for s in shapes)
    if name in ("maximum", "minimum"):
        b = b + 0.1  # no ties
    check_grad(name, getattr(ops, name), [a, b])
    np.testing.assert_allclose(getattr(ops, name)(a, b).numpy(),
                               getattr(np, {"divide": "true_divide"}.get(name, name))(a, b))


@pytest.mark.parametrize("name", ["sum", "mean", "max", "min", "prod", "var", "std",
                                  "logsumexp"])
@pytest.mark.parametrize("axis,keepdims", [(None, False), (1, False), ((0, 2), True), (-1, True)])
def test_reduction_gradient(name, axis, keepdims):
    x = _data(np.random.default_rng(6), (3, 4, 5))
    fn = getattr(ops, name)
    check_grad(name, lambda t: fn(t, axis=axis, keepdims=keepdims), [x], rtol=1e-4)
    if name == "logsumexp":
        want = np.log(np.sum(np.exp(x), axis=axis, keepdims=keepdims))
    else:
        want = getattr(np, name)(x, axis=axis, keepdims=keepdims)
    np.testing.assert_allclose(fn(x, axis=axis, keepdims=keepdims).numpy(), want, rtol=1e-10)


def test_prod_gradient_with_a_zero():
    x = _data(np.random.default_rng(6), (3, 4))
    x[1, 2] = 0.0
    check_grad("prod", lambda t: ops.prod(t, axis=1), [x])


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((4,), (4, 3)),
                                   ((3, 4), (4,)), ((2, 3, 4), (2, 4, 5)),
                                   # two vectors: a 0-d gradient (its backward once failed)
                                   ((4,), (4,)), ((4,), (2, 4, 3)), ((2, 3, 4), (4,))])
def test_matmul_gradient(sa, sb):
    rng = np.random.default_rng(8)
    a, b = _data(rng, sa), _data(rng, sb)
    np.testing.assert_allclose(ops.matmul(a, b).numpy(), a @ b, rtol=1e-12)
    check_grad("matmul", ops.matmul, [a, b])


@pytest.mark.parametrize("spec,sa,sb", [("ij,jk->ik", (3, 4), (4, 5)),
                                        ("bij,bjk->bik", (2, 3, 4), (2, 4, 5)),
                                        ("ij,kj->ik", (3, 4), (5, 4)),
                                        ("ij,j", (3, 4), (4,)),
                                        ("ijk,k->i", (2, 3, 4), (4,))])
def test_einsum_gradient(spec, sa, sb):
    rng = np.random.default_rng(9)
    a, b = _data(rng, sa), _data(rng, sb)
    np.testing.assert_allclose(ops.einsum(spec, a, b).numpy(), np.einsum(spec, a, b))
    check_grad(spec, lambda x, y: ops.einsum(spec, x, y), [a, b])


def test_dot_and_tensordot():
    rng = np.random.default_rng(10)
    a, b = _data(rng, (3, 4)), _data(rng, (4, 2))
    np.testing.assert_allclose(ops.dot(a, b).numpy(), np.dot(a, b))
    c = _data(rng, (2, 4, 3))
    np.testing.assert_allclose(ops.tensordot(a, c, axes=([1], [1])).numpy(),
                               np.tensordot(a, c, axes=([1], [1])))
    check_grad("tensordot", lambda x, y: ops.tensordot(x, y, axes=([1], [1])), [a, c])


SHAPE_OPS = {
    "reshape": lambda x: ops.reshape(x, (4, 6)),
    "transpose": lambda x: ops.transpose(x, (2, 0, 1)),
    "expand_dims": lambda x: ops.expand_dims(x, 1),
    "squeeze": lambda x: ops.squeeze(ops.expand_dims(x, 0), 0),
    "broadcast_to": lambda x: ops.broadcast_to(x[:, :1], (2, 3, 4)),
    "flip": lambda x: ops.flip(x, 1),
    "getitem": lambda x: x[1:, ::2, np.array([0, 3, 3])],
    "slice": lambda x: ops.slice(x, (0, 1, 1), (2, 2, 3)),
    "concatenate": lambda x: ops.concatenate([x, x * 2], axis=1),
    "stack": lambda x: ops.stack([x, ops.square(x)], axis=-1),
    "split": lambda x: ops.split(x, 2, axis=2)[1] * 3 + ops.split(x, [1], axis=2)[0],
    "take": lambda x: ops.take(x, np.array([2, 0, 2]), axis=1),
    "take_along_axis": lambda x: ops.take_along_axis(
        x, np.array([[[0], [1], [1]], [[3], [2], [0]]]), axis=2),
    "take_along_axis broadcast": lambda x: ops.take_along_axis(
        x, np.array([[[2], [0], [2]]]), axis=2),
    "getitem reversed": lambda x: x[::-1, None, 1, 3:0:-2],
    "clip": lambda x: ops.clip(x, -0.5, 0.7),
    "where": lambda x: ops.where(x > 0, x, ops.square(x)),
}


@pytest.mark.parametrize("name", sorted(SHAPE_OPS))
def test_shape_and_indexing_gradient(name):
    x = _data(np.random.default_rng(11), (2, 3, 4))
    x = np.where(np.abs(np.abs(x) - 0.6) < 0.11, 0.2, x)  # away from clip's edges
    check_grad(name, SHAPE_OPS[name], [x])


def test_cast_gradient_is_cast_back():
    x = ops.convert_to_tensor(np.array([1.5, -2.0]))
    with pynn.GradientTape() as tape:
        tape.watch(x)
        y = ops.sum(ops.cast(x, "float32") * np.float32(3))
    g = tape.gradient(y, x).numpy()
    assert g.dtype == np.float64
    np.testing.assert_array_equal(g, [3.0, 3.0])


def test_stop_gradient_blocks():
    x = ops.convert_to_tensor(np.array([1.0, 2.0]))
    with pynn.GradientTape() as tape:
        tape.watch(x)
        y = ops.sum(x * ops.stop_gradient(x))
    np.testing.assert_allclose(tape.gradient(y, x).numpy(), [1.0, 2.0])


def test_non_differentiable_ops():
    x = np.array([[1.5, -2.0, 3.0], [0.0, 2.0, -1.0]])
    np.testing.assert_array_equal(ops.argmax(x, axis=1).numpy(), [2, 1])
    np.testing.assert_array_equal(ops.argmin(x, axis=0).numpy(), [1, 0, 1])
    np.testing.assert_array_equal(ops.one_hot(np.array([2, 0]), 3).numpy(),
                                  [[0, 0, 1], [1, 0, 0]])
    np.testing.assert_array_equal(ops.sign(x).numpy(), np.sign(x))
    np.testing.assert_array_equal((ops.convert_to_tensor(x) >= 1.5).numpy(), x >= 1.5)
    np.testing.assert_array_equal(ops.zeros_like(x).numpy(), np.zeros_like(x))
    np.testing.assert_array_equal(ops.ones_like(x).numpy(), np.ones_like(x))
    np.testing.assert_array_equal(ops.equal(x, 2.0).numpy(), x == 2.0)


def test_operators_on_tensors_and_variables():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    t = ops.convert_to_tensor(a)
    got = (2 - t) * t / 4 + t ** 2 - (-t) @ t
    np.testing.assert_allclose(got.numpy(), (2 - a) * a / 4 + a ** 2 + a @ a)
    np.testing.assert_allclose(np.asarray(t[0, 1:]), a[0, 1:])
    v = pynn.variables.Variable(a.copy(), "v")
    np.testing.assert_allclose((v * 3 + a).numpy(), a * 3 + a)


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("strides", [1, 2])
def test_conv_gradient(padding, strides):
    rng = np.random.default_rng(12)
    x, k = _data(rng, (2, 5, 6, 3)), _data(rng, (3, 2, 3, 4))
    check_grad("conv", lambda a, b: ops.conv(a, b, strides=strides, padding=padding), [x, k])
    kd = _data(rng, (2, 3, 3, 2))
    check_grad("depthwise_conv", lambda a, b: ops.depthwise_conv(a, b, strides, padding),
               [x, kd])


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_pool_gradient(padding):
    x = _data(np.random.default_rng(13), (2, 5, 7, 3))
    check_grad("max_pool", lambda a: ops.max_pool(a, 2, padding=padding), [x])
    check_grad("average_pool", lambda a: ops.average_pool(a, (2, 3), 2, padding), [x])


def test_normalization_gradient():
    rng = np.random.default_rng(14)
    x = _data(rng, (4, 3, 5))
    gamma, beta = _data(rng, (5,)), _data(rng, (5,))

    def bn(a, g, b):
        mean, var = ops.moments(a, axes=(0, 1))
        return ops.batch_normalization(a, mean, var, axis=-1, offset=b, scale=g)

    check_grad("batch_normalization", bn, [x, gamma, beta], rtol=1e-4)
    mean, var = x.mean(axis=(0, 1)), x.var(axis=(0, 1))
    np.testing.assert_allclose(bn(x, gamma, beta).numpy(),
                               (x - mean) / np.sqrt(var + 1e-3) * gamma + beta, rtol=1e-10)
    check_grad("normalize", ops.normalize, [x])


def test_errors_name_the_op():
    with pytest.raises(ValueError, match="einsum.*2 operands"):
        ops.einsum("i,i,i", np.ones(2), np.ones(2), np.ones(2))
    with pytest.raises(ValueError, match="conv: expected a 4-D input"):
        ops.conv(np.ones((2, 3, 3)), np.ones((1, 1, 3, 1)))
    with pytest.raises(ValueError, match="split.*equal parts"):
        ops.split(np.ones((5, 2)), 2)


@pytest.mark.opencl
def test_ops_without_a_device_formula_refuse_opencl_and_kernel_ops_match_cpu():
    """Ops on the layers' kernels run on OpenCL and match the CPU; ones without a device
    formula yet raise, never falling back to the host (tests/test_elementwise.py checks the
    elementwise and reduction ops on OpenCL)."""
    from tests.opencl_util import skip_without_opencl

    skip_without_opencl()
    rng = np.random.default_rng(15)
    x = _data(rng, (2, 6, 5, 3)).astype(np.float32)
    k = _data(rng, (3, 3, 3, 4)).astype(np.float32)
    cpu = {"relu": ops.relu(x).numpy(), "matmul": ops.matmul(x[0, 0], k[0, 0]).numpy()}
    with _device("opencl"):
        b = pynn.backend.current()
        xd = b.asarray(x, np.float32)
        # (conv, pooling and softmax reuse the layers' kernels the same way; their OpenCL
        # builds are tested in their own files.)
        got = {"relu": ops.relu(xd), "matmul": ops.matmul(b.asarray(x[0, 0], np.float32),
                                                          b.asarray(k[0, 0], np.float32))}
        for name, t in got.items():
            np.testing.assert_allclose(t.numpy(), cpu[name], rtol=1e-4, atol=1e-5,
                                       err_msg=name)
        # (einsum, indexing, where, cast, prod, ... run on OpenCL: tests/test_ops_device.py)
        # one-argument where (data-dependent size) stays CPU-only: an error, no fallback
        with pytest.raises(NotImplementedError, match="pynn.ops.where: no opencl kernel"):
            ops.where(xd)


def _device(name):
    import contextlib

    @contextlib.contextmanager
    def scope():
        previous = pynn.get_device()
        pynn.set_device(name)
        try:
            yield
        finally:
            pynn.set_device(previous)

    return scope()
