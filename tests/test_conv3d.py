"""conv3d ops (native/conv3d.pyx, opencl/conv3d.cl) against the float64 oracles in
tests/reference/conv3d_ref.py over both backends, thread counts and bad inputs; the layers
Conv3D and Conv3DTranspose (pynn/layers/conv3d.py) by central finite differences (float64),
against Keras 3 (torch backend) from Keras's own weights, outputs and gradients, OpenCL
against the CPU, config round trips and bad arguments.
"""

import numpy as np
import pytest

import pynn
from pynn import layers
from pynn._native import conv3d, info
from pynn.backend.api import ACTIVATIONS_NEEDING_INPUT
from tests.backend_util import check_op, keras_on_torch, rand
from tests.reference import conv3d_ref as ref
from tests.reference.gradcheck import check_layer

# (x shape (N, D, H, W, C), kernel shape (KD, KH, KW, C/G, F), strides, padding, dilation, G)
CASES = [
    ((2, 5, 6, 7, 3), (3, 2, 3, 3, 5), (1, 1, 1), "valid", (1, 1, 1), 1),
    ((2, 7, 5, 9, 4), (3, 3, 2, 4, 3), (2, 2, 2), "same", (1, 1, 1), 1),     # strides 2
    ((1, 7, 8, 9, 3), (2, 3, 3, 3, 4), (1, 1, 1), "same", (2, 2, 2), 1),     # dilation 2
    ((2, 6, 5, 4, 2), (2, 4, 2, 2, 3), (1, 1, 1), "same", (1, 1, 1), 1),     # odd pads after
    ((2, 5, 6, 5, 6), (2, 2, 2, 2, 9), (2, 1, 3), "same", (1, 1, 1), 3),     # groups
    ((1, 6, 7, 5, 4), (3, 1, 2, 1, 4), (1, 1, 1), "valid", (1, 2, 1), 4),    # depthwise groups
    ((2, 3, 4, 5, 7), (1, 1, 1, 7, 5), (1, 1, 1), "valid", (1, 1, 1), 1),    # kernel 1
    ((2, 5, 4, 7, 3), (1, 1, 1, 3, 2), (2, 3, 2), "same", (1, 1, 1), 1),     # kernel 1, strided
    ((2, 3, 4, 3, 3), (5, 5, 2, 3, 2), (1, 1, 1), "valid", (1, 1, 1), 1),    # empty output
    ((0, 5, 5, 5, 2), (3, 3, 3, 2, 2), (1, 1, 1), "same", (1, 1, 1), 1),     # empty batch
    ((2, 9, 11, 13, 17), (3, 3, 3, 17, 33), (1, 1, 1), "same", (1, 1, 1), 1),  # threaded
]
IDS = [f"{x}*{k}-s{s}-{p}-d{d}-g{g}" for x, k, s, p, d, g in CASES]


def forward_op_ref(x, kernel, bias, strides, padding, dilation_rate, groups, activation, alpha):
    y, z = ref.conv3d_forward_ref(x, kernel, bias, strides, padding, dilation_rate, groups,
                                  activation, alpha)
    return y, (z if activation in ACTIVATIONS_NEEDING_INPUT else None)


@pytest.fixture(params=["direct", "vol2col"])
def algo(request):
    """The CPU kernel's two paths (native/conv3d.pyx), each wherever it applies."""
    old = conv3d._set_algo(request.param)
    yield request.param
    conv3d._set_algo(old)


@pytest.mark.parametrize("xs,ks,s,p,d,groups", CASES, ids=IDS)
def test_conv3d_ops_match_reference(target, algo, xs, ks, s, p, d, groups):
    rng = np.random.default_rng(sum(xs) + sum(ks))
    dtype = target.dtype
    x, k, b = rand(rng, xs, dtype), rand(rng, ks, dtype), rand(rng, (ks[4],), dtype)
    act = {0: "relu", 1: "gelu", 2: "softmax"}[sum(xs) % 3]
    rtol = {"rtol": 1e-12, "atol": 1e-12} if dtype == np.float64 else None
    _, (y, _) = check_op(target, "conv3d_forward", x, k, b, s, p, d, groups, act, 0.0,
                         ref=forward_op_ref, kind="gemm", rtol=rtol)
    dz = rand(rng, y.shape, dtype)
    check_op(target, "conv3d_backward_input", dz, k, xs, s, p, d, groups,
             ref=ref.conv3d_backward_input_ref, kind="gemm", rtol=rtol)
    check_op(target, "conv3d_backward_weight", x, dz, ks, s, p, d, groups,
             ref=ref.conv3d_backward_weight_ref, kind="gemm", rtol=rtol)


@pytest.mark.parametrize("act", ["linear", "tanh", "gelu"])
@pytest.mark.parametrize("s,groups", [((2, 1, 2), 2), ((1, 1, 1), 1)])
def test_conv3d_backward_matches_reference(target, algo, act, s, groups):
    rng = np.random.default_rng(5)
    dtype = target.dtype
    xs, ks, p, d = (2, 5, 6, 4, 4), (3, 2, 3, 4 // groups, 6), "same", (1, 1, 1)
    x, k, b = rand(rng, xs, dtype), rand(rng, ks, dtype), rand(rng, (6,), dtype)
    y, z = ref.conv3d_forward_ref(x, k, b, s, p, d, groups, act)
    dy = rand(rng, y.shape, dtype)
    keep_z = z.astype(dtype) if act in ACTIVATIONS_NEEDING_INPUT else None
    rtol = {"rtol": 1e-10, "atol": 1e-10} if dtype == np.float64 else None
    check_op(target, "conv3d_backward", dy, x, keep_z, y.astype(dtype), k, s, p, d, groups,
             act, 0.0, True, True,
             ref=lambda *a: ref.conv3d_backward_ref(dy, x, k, b, s, p, d, groups, act),
             kind="gemm", rtol=rtol)


# (x shape, kernel shape (KD, KH, KW, F, C), strides, padding, output_padding, dilation)
TRANSPOSE_CASES = [
    ((2, 3, 4, 5, 2), (3, 3, 2, 3, 2), (1, 1, 1), "valid", None, (1, 1, 1)),
    ((1, 3, 4, 3, 3), (3, 3, 3, 2, 3), (2, 2, 2), "same", None, (1, 1, 1)),
    ((2, 3, 2, 3, 2), (2, 3, 3, 3, 2), (2, 1, 3), "valid", (1, 0, 2), (1, 1, 1)),
    ((1, 2, 3, 2, 2), (4, 4, 3, 2, 2), (3, 2, 2), "same", (2, 1, 0), (1, 1, 1)),
    ((1, 4, 3, 5, 2), (3, 2, 3, 2, 2), (1, 1, 1), "same", None, (2, 1, 2)),
    ((2, 2, 3, 2, 3), (1, 1, 1, 4, 3), (2, 2, 2), "valid", None, (1, 1, 1)),
]
TRANSPOSE_IDS = [f"{x}*{k}-s{s}-{p}-op{o}-d{d}" for x, k, s, p, o, d in TRANSPOSE_CASES]


@pytest.mark.parametrize("xs,ks,s,p,op,d", TRANSPOSE_CASES, ids=TRANSPOSE_IDS)
def test_conv3d_transpose_ops_match_reference(target, algo, xs, ks, s, p, op, d):
    rng = np.random.default_rng(sum(xs) + sum(ks))
    dtype = target.dtype
    x, k, b = rand(rng, xs, dtype), rand(rng, ks, dtype), rand(rng, (ks[3],), dtype)
    act = {0: "tanh", 1: "gelu", 2: "softmax"}[sum(xs) % 3]
    rtol = {"rtol": 1e-10, "atol": 1e-10} if dtype == np.float64 else None

    def forward_ref(*args):
        y, z = ref.conv3d_transpose_forward_ref(x, k, b, s, p, op, d, act)
        return y, (z if act in ACTIVATIONS_NEEDING_INPUT else None)

    _, (y, z) = check_op(target, "conv3d_transpose_forward", x, k, b, s, p, op, d, act, 0.0,
                         ref=forward_ref, kind="gemm", rtol=rtol)
    dy = rand(rng, y.shape, dtype)
    check_op(target, "conv3d_transpose_backward", dy, x, z, y, k, s, p, op, d, act, 0.0, True,
             True, ref=lambda *a: ref.conv3d_transpose_backward_ref(dy, x, k, b, s, p, op, d,
                                                                    act),
             kind="gemm", rtol=rtol)


@pytest.fixture
def restore_threads():
    n = info.get_max_threads()
    yield
    info.set_num_threads(n)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("strides,groups", [(2, 2), (1, 1)])
def test_thread_count_invariance(restore_threads, algo, dtype, strides, groups):
    """Tiles, voxel blocks and the col2vol gather are fixed by the shape, never by the
    thread count."""
    rng = np.random.default_rng(7)
    xs, ks = (3, 7, 9, 11, 16), (3, 3, 3, 16 // groups, 18)
    x, k, b = rand(rng, xs, dtype), rand(rng, ks, dtype), rand(rng, (18,), dtype)
    old = conv3d._set_workspace_bytes(1 << 14)   # many tiles
    try:
        results = []
        for n in (1, 2, 3):
            info.set_num_threads(n)
            y, _ = conv3d.conv3d_forward(x, k, b, strides, "same", 1, groups, "tanh", 0.0)
            dx = conv3d.conv3d_backward_input(y, k, xs, strides, "same", 1, groups)
            dk = conv3d.conv3d_backward_weight(x, y, ks, strides, "same", 1, groups)
            results.append((y, dx, dk))
    finally:
        conv3d._set_workspace_bytes(old)
    for other in results[1:]:
        for a, b_ in zip(results[0], other):
            assert np.array_equal(a, b_)
    # ... and small tiles give the references' numbers
    want, _ = ref.conv3d_forward_ref(x, k, b, (strides,) * 3, "same", (1, 1, 1), groups,
                                     "tanh")
    np.testing.assert_allclose(results[0][0], want, rtol=1e-4, atol=1e-5)
    want = ref.conv3d_backward_input_ref(results[0][0], k, xs, (strides,) * 3, "same",
                                         (1, 1, 1), groups)
    np.testing.assert_allclose(results[0][1], want, rtol=1e-4, atol=1e-4)


X = np.ones((2, 5, 5, 5, 4))
K = np.ones((3, 3, 3, 4, 2))
DZ = np.ones((2, 5, 5, 5, 2))


@pytest.mark.parametrize("call, match", [
    (lambda ops: ops.conv3d_forward(X, np.ones((3, 3, 3, 3, 2)), None, 1, "same", 1, 1,
                                    "linear", 0.0),
     r"conv3d_forward: kernel \(KD, KH, KW, C/groups, F\) has 3 input channels per group but "
     r"the input has 4 channels in 1 group"),
    (lambda ops: ops.conv3d_forward(X, K, np.ones(3), 1, "same", 1, 1, "linear", 0.0),
     r"'bias' must have shape \(2,\), got \(3,\)"),
    (lambda ops: ops.conv3d_forward(X[0], K, None, 1, "same", 1, 1, "linear", 0.0),
     "'x' must have 5 dimensions"),
    (lambda ops: ops.conv3d_forward(X, K, None, 1, "full", 1, 1, "linear", 0.0),
     "padding must be 'valid' or 'same', got 'full'"),
    (lambda ops: ops.conv3d_forward(X, K, None, (1, 0, 1), "same", 1, 1, "linear", 0.0),
     "'strides' must be positive ints"),
    (lambda ops: ops.conv3d_forward(X, K, None, (1, 1), "same", 1, 1, "linear", 0.0),
     "'strides' must be an int or 3 ints"),
    (lambda ops: ops.conv3d_forward(X, K[..., :2, :], None, 1, "same", 1, 3, "linear", 0.0),
     r"groups=3 must divide the input channels \(4\) and the filters \(2\)"),
    (lambda ops: ops.conv3d_forward(X, K, None, 1, "same", 1, 0, "linear", 0.0),
     "'groups' must be a positive int"),
    (lambda ops: ops.conv3d_forward(X, K, None, 1, "same", 1, 1, "swishy", 0.0),
     "unknown activation"),
    (lambda ops: ops.conv3d_backward_input(DZ, K, (2, 5, 5, 5, 4), 2, "same", 1, 1),
     r"conv3d_backward_input: 'dz' must have shape \(2, 3, 3, 3, 2\)"),
    (lambda ops: ops.conv3d_backward_input(DZ, K, (2, 5, 5, 4), 1, "same", 1, 1),
     "'input_shape' must be 5 non-negative ints"),
    (lambda ops: ops.conv3d_backward_weight(X, DZ[..., :1], (3, 3, 3, 4, 2), 1, "same", 1, 1),
     r"conv3d_backward_weight: 'dz' must have shape \(2, 5, 5, 5, 2\)"),
    (lambda ops: ops.conv3d_transpose_forward(X, np.ones((3, 3, 3, 2, 3)), None, 2, "same",
                                              None, 1, "linear", 0.0),
     r"conv3d_transpose_forward: kernel \(KD, KH, KW, filters, in_channels\) has 3 input "
     r"channels but the input has 4"),
    (lambda ops: ops.conv3d_transpose_forward(X, np.ones((3, 3, 3, 2, 4)), None, 2, "same",
                                              (1, 2, 0), 1, "linear", 0.0),
     r"'output_padding' must lie in \[0, strides\)"),
])
def test_bad_inputs(backend, call, match):
    def up(a):
        return backend.up(np.asarray(a, np.float32)) if isinstance(a, np.ndarray) else a

    class Uploading:
        def __getattr__(self, name):
            op = getattr(backend.ops, name)
            return lambda *args: op(*[up(a) for a in args])

    with pytest.raises(ValueError, match=match):
        call(Uploading())


def test_complex_input_is_refused_by_name():
    from pynn.backend import cpu

    with pytest.raises(TypeError, match="conv3d_forward: 'x' must be real, got dtype complex64"):
        cpu.conv3d_forward(X.astype(np.complex64), K, None, 1, "same", 1, 1, "linear", 0.0)


# -- the layers --------------------------------------------------------------------------------


def _x(rng, *shape):
    # Away from zero so relu-like kinks are never within the finite-difference step.
    x = rng.standard_normal(shape)
    return x + 0.05 * np.sign(x)


LAYER_CASES = [
    ("Conv3D", {"filters": 3, "kernel_size": 2}, (2, 3, 4, 3, 2)),
    ("Conv3D", {"filters": 4, "kernel_size": (3, 2, 2), "strides": 2, "padding": "same",
                "groups": 2, "activation": "tanh"}, (1, 4, 5, 3, 4)),
    ("Conv3D", {"filters": 2, "kernel_size": 2, "padding": "same", "dilation_rate": (2, 1, 2),
                "activation": "gelu"}, (1, 4, 3, 4, 2)),
    ("Conv3D", {"filters": 3, "kernel_size": 1, "use_bias": False, "activation": "softmax"},
     (2, 2, 3, 2, 3)),
    ("Conv3DTranspose", {"filters": 2, "kernel_size": 2}, (2, 2, 3, 2, 2)),
    ("Conv3DTranspose", {"filters": 2, "kernel_size": (3, 2, 2), "strides": 2,
                         "padding": "same", "activation": "sigmoid"}, (1, 2, 2, 3, 2)),
    ("Conv3DTranspose", {"filters": 3, "kernel_size": 2, "strides": (2, 1, 3),
                         "output_padding": (1, 0, 2), "use_bias": False,
                         "activation": "relu"}, (1, 2, 3, 2, 2)),
]
LAYER_IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(LAYER_CASES)]
BIAS_INIT = {"bias_initializer": "random_normal"}


def make(name, kwargs):
    return getattr(layers, name)(**kwargs, **(BIAS_INIT if kwargs.get("use_bias", True)
                                              else {}))


@pytest.mark.parametrize("name,kwargs,shape", LAYER_CASES, ids=LAYER_IDS)
def test_gradients_by_finite_differences(float64, seeded, name, kwargs, shape):
    layer = make(name, kwargs)
    y = check_layer(layer, _x(seeded, *shape), seeded)
    assert y.shape[1:] == layer.output_shape[1:]
    assert [v.name for v in layer.weights] == (
        ["kernel", "bias"] if kwargs.get("use_bias", True) else ["kernel"])


@pytest.mark.parametrize("name,kwargs,shape", LAYER_CASES, ids=LAYER_IDS)
def test_config_round_trip(seeded, name, kwargs, shape):
    layer = make(name, kwargs)
    x = _x(seeded, *shape).astype(np.float32)
    y = layer(x)
    config = layer.get_config()
    assert layers.LAYERS[name] is type(layer)
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    clone.build((None,) + shape[1:])
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(clone(x), y)


def test_keras_aliases_name_the_classes():
    assert layers.Convolution3D is layers.Conv3D
    assert layers.Convolution3DTranspose is layers.Conv3DTranspose


def test_weight_layouts_are_keras():
    conv = layers.Conv3D(6, (3, 2, 1), groups=3)
    conv.build((None, 4, 4, 4, 9))
    assert conv.kernel.value.shape == (3, 2, 1, 3, 6) and conv.bias.value.shape == (6,)
    tconv = layers.Conv3DTranspose(5, 2)
    tconv.build((None, 4, 4, 4, 3))
    assert tconv.kernel.value.shape == (2, 2, 2, 5, 3)


@pytest.mark.parametrize("make_layer, match", [
    (lambda: layers.Conv3D(0, 3, name="c"),
     "Conv3D 'c': filters must be a positive int, got 0"),
    (lambda: layers.Conv3D(4, (3, 3), name="c"),
     "Conv3D 'c': 'kernel_size' must be an int or 3 ints"),
    (lambda: layers.Conv3D(4, 3, strides=2, dilation_rate=2, name="c"),
     "strides > 1 together with dilation_rate > 1"),
    (lambda: layers.Conv3D(4, 3, groups=3, name="c"),
     r"groups must divide filters \(4\), got 3"),
    (lambda: layers.Conv3D(4, 3, padding="causal", name="c"),
     "padding must be 'valid' or 'same'"),
    (lambda: layers.Conv3D(4, 3, data_format="channels_first", name="c"),
     "only data_format='channels_last'"),
    (lambda: layers.Conv3DTranspose(4, 3, strides=2, output_padding=2, name="c"),
     r"'output_padding' must lie in \[0, strides\)"),
    (lambda: layers.Conv3DTranspose(4, 3, output_padding=(0, 0), name="c"),
     "'output_padding' must be None, an int or 3 ints"),
])
def test_bad_arguments_name_the_layer(make_layer, match):
    with pytest.raises(ValueError, match=match):
        make_layer()


@pytest.mark.parametrize("layer, shape, match", [
    (layers.Conv3D(2, 3, name="c3"), (None, 5, 5, 3),
     r"Conv3D 'c3': expected input shape \(None, D, H, W, C\), got \(None, 5, 5, 3\)"),
    (layers.Conv3D(4, 3, groups=2, name="c3"), (None, 5, 5, 5, 3),
     "Conv3D 'c3': groups=2 must divide the input channels"),
    (layers.Conv3D(2, 4, name="c3"), (None, 3, 5, 5, 2),
     "Conv3D 'c3': kernel .* is larger than the input"),
    (layers.Conv3DTranspose(2, 3, name="t3"), (None, 5, 5, 5, 3, 1),
     r"Conv3DTranspose 't3': expected input shape \(None, D, H, W, C\)"),
])
def test_bad_input_shapes_name_the_layer(layer, shape, match):
    with pytest.raises(ValueError, match=match):
        layer.compute_output_shape(shape)
        layer.build(shape)


def test_a_volumetric_model_trains():
    model = pynn.Sequential([
        layers.Input((6, 8, 8, 2)),
        layers.Conv3D(4, 3, padding="same", activation="relu"),
        layers.Conv3DTranspose(2, 2, strides=2, padding="same"),
        layers.Conv3D(3, 3, strides=2, activation="relu"),
        layers.Flatten(), layers.Dense(2),
    ])
    model.compile("adam", "mse")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 6, 8, 8, 2)).astype(np.float32)
    y = rng.standard_normal((8, 2)).astype(np.float32)
    first = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=5, batch_size=4, verbose=0)
    assert model.evaluate(x, y, verbose=0) < first


@pytest.fixture
def restore_device():
    previous = pynn.get_device()
    yield
    pynn.set_device(previous)


@pytest.mark.opencl
@pytest.mark.parametrize("name,kwargs,shape", LAYER_CASES, ids=LAYER_IDS)
def test_opencl_layer_matches_cpu(restore_device, name, kwargs, shape):
    from tests.opencl_util import skip_without_opencl

    skip_without_opencl()
    rng = np.random.default_rng(sum(shape))
    x = _x(rng, *shape).astype(np.float32)
    results, weights = {}, None
    for device in ("cpu", "opencl"):
        pynn.set_device(device)
        ops = pynn.backend.current()
        layer = make(name, kwargs)
        layer.build((None,) + shape[1:])
        if weights is None:
            weights = layer.get_weights()
        layer.set_weights(weights)
        y = layer(ops.asarray(x), training=True)
        dy = np.cos(np.arange(int(np.prod(y.shape)))).reshape(y.shape).astype(np.float32)
        dx = layer.backward(ops.asarray(dy))
        results[device] = [ops.to_numpy(a) for a in (y, dx, *(v.grad for v in layer.weights))]
    for i, (got, want) in enumerate(zip(results["opencl"], results["cpu"])):
        scale = max(1.0, float(np.abs(want).max()))
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-4 * scale, f"{name} result {i}"


# -- Keras 3 parity: outputs and every gradient from Keras's own weights ------------------------

PARITY = [
    ("Conv3D", {"filters": 3, "kernel_size": 3}),
    ("Conv3D", {"filters": 4, "kernel_size": 3, "padding": "same", "activation": "relu"}),
    ("Conv3D", {"filters": 2, "kernel_size": (2, 3, 2), "strides": 2, "padding": "same"}),
    ("Conv3D", {"filters": 3, "kernel_size": (3, 2, 3), "strides": (1, 2, 3)}),
    ("Conv3D", {"filters": 2, "kernel_size": 2, "dilation_rate": 2, "padding": "same",
                "activation": "tanh"}),
    ("Conv3D", {"filters": 6, "kernel_size": 3, "groups": 3, "padding": "same"}),
    ("Conv3D", {"filters": 5, "kernel_size": 1}),
    ("Conv3DTranspose", {"filters": 3, "kernel_size": 3}),
    ("Conv3DTranspose", {"filters": 2, "kernel_size": 3, "strides": 2, "padding": "same"}),
    ("Conv3DTranspose", {"filters": 2, "kernel_size": (2, 3, 4), "strides": (2, 1, 3),
                         "padding": "same"}),
    ("Conv3DTranspose", {"filters": 2, "kernel_size": 3, "strides": 2, "output_padding": 1}),
    ("Conv3DTranspose", {"filters": 2, "kernel_size": 3, "strides": (2, 2, 3),
                         "padding": "same", "output_padding": (1, 0, 2),
                         "activation": "sigmoid"}),
    ("Conv3DTranspose", {"filters": 2, "kernel_size": 2, "strides": 3}),
    ("Conv3DTranspose", {"filters": 2, "kernel_size": 3, "dilation_rate": (2, 1, 2),
                         "padding": "same"}),
]


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("name,kwargs", PARITY, ids=[f"{n}-{i}" for i, (n, _) in
                                                     enumerate(PARITY)])
@pytest.mark.parametrize("dhw", [(5, 7, 6), (4, 3, 5)], ids=["5x7x6", "4x3x5"])
def test_outputs_and_gradients_match_keras(name, kwargs, dhw):
    keras = keras_on_torch()
    import torch

    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, *dhw, 3)).astype(np.float32)
    klayer = getattr(keras.layers, name)(**kwargs, bias_initializer="random_normal")
    tx = torch.tensor(x, requires_grad=True)
    want = klayer(tx)
    r = rng.standard_normal(tuple(want.shape)).astype(np.float32)
    (want * torch.tensor(r)).sum().backward()
    layer = getattr(layers, name)(**kwargs)
    layer.build((None, *dhw, 3))
    layer.set_weights([np.asarray(keras.ops.convert_to_numpy(w)) for w in klayer.weights])
    got = layer(x, training=True)
    want = want.detach().numpy()
    assert got.shape == want.shape == tuple(klayer.compute_output_shape(x.shape))
    assert layer.output_shape[1:] == want.shape[1:]
    scale = max(1.0, float(np.abs(want).max()))
    assert np.abs(got - want).max() <= 1e-5 * scale
    dx = layer.backward(r)
    np.testing.assert_allclose(dx, tx.grad.numpy(), atol=2e-5, rtol=1e-5)
    for v, w in zip(layer.weights, klayer.weights):
        np.testing.assert_allclose(v.grad, w.value.grad.numpy(), atol=5e-5, rtol=1e-5,
                                   err_msg=v.path)
