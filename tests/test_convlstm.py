"""convlstm ops (native/convlstm.pyx, opencl/convlstm.cl) against the float64 oracle in
tests/reference/convlstm_ref.py over both backends, by central differences and thread counts,
with bad inputs; the layers ConvLSTM1D/2D/3D (pynn/layers/conv_lstm.py) by central finite
differences (float64: input, kernel, recurrent kernel, bias, initial states), against Keras 3
(torch backend) from Keras's own weights (outputs, states, every gradient), OpenCL against the
CPU, config round trips, stateful calls and bad arguments.
"""

import numpy as np
import pytest

import pynn
from pynn import layers
from tests.backend_util import keras_on_torch, rand
from tests.reference import convlstm_ref as ref
from tests.reference.gradcheck import assert_close, check_layer, numerical_grad

# (xw shape (N, T, D, H, W, 4F), recurrent kernel extents (KD, KH, KW))
OP_CASES = [
    ((2, 3, 1, 5, 7, 12), (1, 3, 3)),      # 2-D, odd sizes
    ((3, 4, 3, 4, 5, 8), (3, 2, 1)),       # 3-D, an even extent (the odd pad goes after)
    ((2, 3, 2, 2, 3, 12), (1, 1, 1)),      # 1x1x1: h itself is the vol2col matrix
    ((1, 5, 1, 1, 9, 4), (1, 1, 5)),       # 1-D, kernel wider than half the row
    ((3, 7, 1, 9, 11, 20), (1, 3, 3)),     # big enough for the threaded loops
]
OP_IDS = [f"{xw}-k{k}" for xw, k in OP_CASES]


@pytest.fixture(params=["direct", "vol2col"])
def algo(request):
    """The recurrent conv's two CPU paths: conv3d's direct microkernel through its capsule
    (forward, and the input gradient's 'full' conv) or vol2col + BLAS; conv3d's knob."""
    from pynn._native import conv3d

    old = conv3d._set_algo(request.param)
    yield request.param
    conv3d._set_algo(old)


def _op_inputs(rng, xw_shape, kext, dtype, states=True):
    f = xw_shape[-1] // 4
    state = xw_shape[:1] + xw_shape[2:-1] + (f,)
    xw = rand(rng, xw_shape, dtype)
    rk = (0.5 * rand(rng, kext + (f, 4 * f), dtype)).astype(dtype)
    h0 = rand(rng, state, dtype) if states else None
    c0 = rand(rng, state, dtype) if states else None
    return xw, rk, h0, c0


def _mask(rng, n, t, dtype, zero_output=False):
    """Keras's (N, T) step mask: random, with a masked first step, and (zero_output, several
    samples) an all-masked sample."""
    mask = (rng.random((n, t)) > 0.35).astype(dtype)
    mask[0, 0] = mask[-1, -1] = 0
    if zero_output and n > 1:
        mask[-1] = 0
    return mask


def _rdrop(rng, xw_shape, dtype, rate=0.4):
    """Keras's four recurrent dropout masks (4, N, D, H, W, F): 0 or 1/(1-rate)."""
    shape = (4, xw_shape[0]) + xw_shape[2:-1] + (xw_shape[-1] // 4,)
    return ((rng.random(shape) > rate) / (1 - rate)).astype(dtype)


@pytest.mark.parametrize("xw_shape,kext", OP_CASES, ids=OP_IDS)
@pytest.mark.parametrize("go_backwards", [False, True], ids=["fwd", "bwd"])
@pytest.mark.parametrize("return_sequences", [False, True], ids=["last", "seq"])
@pytest.mark.parametrize("masked", [None, "mask", "zero_output", "rdrop"])
def test_convlstm_ops_match_reference(target, algo, xw_shape, kext, go_backwards,
                                      return_sequences, masked):
    rng = np.random.default_rng(sum(xw_shape) + sum(kext))
    dtype = target.dtype
    xw, rk, h0, c0 = _op_inputs(rng, xw_shape, kext, dtype, states=sum(xw_shape) % 2 == 0)
    acts = ("tanh", "sigmoid") if xw_shape[0] != 3 else ("relu", "hard_sigmoid")
    zero_output = masked == "zero_output"
    mask = _mask(rng, *xw_shape[:2], dtype, zero_output) if masked else None
    rdrop = _rdrop(rng, xw_shape, dtype) if masked == "rdrop" else None
    y, h, c, cache = target.ops.convlstm_forward(
        *[None if a is None else target.up(a) for a in (xw, rk, h0, c0, mask, rdrop)], *acts,
        return_sequences, go_backwards, zero_output)
    want = ref.convlstm_forward_ref(xw, rk, h0, c0, mask, rdrop, *acts, return_sequences,
                                    go_backwards, zero_output)
    # float32: relu states grow over the steps, and their rounding with them.
    tol = 1e-12 if dtype == np.float64 else 1e-4
    for name, got, w in zip(("y", "h_last", "c_last"), (y, h, c), want):
        got = target.down(got)
        assert got.dtype == dtype and got.shape == w.shape, name
        np.testing.assert_allclose(got, w, rtol=tol, atol=tol * max(1.0, np.abs(w).max()),
                                   err_msg=name)
    dy, dh, dc = (rand(rng, w.shape, dtype) for w in want)
    grads = target.ops.convlstm_backward(target.up(dy), target.up(dh), target.up(dc),
                                         target.up(rk), cache, *acts, return_sequences,
                                         go_backwards)
    assert [tuple(g.shape) for g in grads] == [xw.shape, rk.shape, dh.shape, dc.shape]
    if target.is_opencl:
        from pynn.backend import cpu

        _, _, _, host_cache = cpu.convlstm_forward(xw, rk, h0, c0, mask, rdrop, *acts,
                                                   return_sequences, go_backwards, zero_output)
        wants = cpu.convlstm_backward(dy, dh, dc, rk, host_cache, *acts, return_sequences,
                                      go_backwards)
        for name, got, w in zip(("dxw", "drk", "dh0", "dc0"), grads, wants):
            scale = max(1.0, float(np.abs(w).max()))
            np.testing.assert_allclose(target.down(got), w, atol=2e-5 * scale, err_msg=name)


@pytest.mark.parametrize("xw_shape,kext", OP_CASES[:4], ids=OP_IDS[:4])
@pytest.mark.parametrize("go_backwards,return_sequences", [(False, True), (True, False)])
@pytest.mark.parametrize("masked", [None, "mask", "zero_output", "rdrop"])
def test_convlstm_backward_by_central_differences(algo, xw_shape, kext, go_backwards,
                                                  return_sequences, masked):
    """Every input of the op: xw, the recurrent kernel and both initial states, against
    central differences of the float64 oracle (the final states' gradients given too)."""
    from pynn.backend import cpu

    rng = np.random.default_rng(7 + sum(xw_shape))
    xw, rk, h0, c0 = _op_inputs(rng, xw_shape, kext, np.float64)
    acts = ("tanh", "sigmoid") if kext != (1, 1, 1) else ("tanh", "hard_sigmoid")
    zero_output = masked == "zero_output"
    mask = _mask(rng, *xw_shape[:2], np.float64, zero_output) if masked else None
    rdrop = _rdrop(rng, xw_shape, np.float64) if masked == "rdrop" else None
    y, h, c, cache = cpu.convlstm_forward(xw, rk, h0, c0, mask, rdrop, *acts, return_sequences,
                                          go_backwards, zero_output)
    ry, rh, rc = (rng.standard_normal(a.shape) for a in (y, h, c))

    def loss():
        yy, hh, cc = ref.convlstm_forward_ref(xw, rk, h0, c0, mask, rdrop, *acts,
                                              return_sequences, go_backwards, zero_output)
        return float(np.sum(yy * ry) + np.sum(hh * rh) + np.sum(cc * rc))

    grads = cpu.convlstm_backward(ry, rh, rc, rk, cache, *acts, return_sequences,
                                  go_backwards)
    for name, arr, got in zip(("xw", "recurrent_kernel", "h0", "c0"), (xw, rk, h0, c0), grads):
        assert_close(name, got, numerical_grad(loss, arr), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thread_count_invariance(num_threads, algo, dtype):
    """The gather adjoint and row-parallel gates give the same bits on any thread count."""
    from pynn.backend import cpu

    rng = np.random.default_rng(3)
    xw, rk, h0, c0 = _op_inputs(rng, (3, 4, 2, 9, 11, 16), (3, 3, 3), dtype)
    results = []
    for n in (1, 2, 3):
        num_threads(n)
        y, h, c, cache = cpu.convlstm_forward(xw, rk, h0, c0, _mask(np.random.default_rng(1),
                                                                     3, 4, dtype),
                                              _rdrop(np.random.default_rng(2), xw.shape, dtype),
                                              "tanh", "sigmoid", True, False)
        grads = cpu.convlstm_backward(np.cos(y), None, np.sin(c), rk, cache, "tanh",
                                      "sigmoid", True, False)
        results.append([y, h, c, grads[0], grads[2], grads[3]])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


XW = np.ones((2, 3, 1, 4, 5, 8))
RK = np.ones((1, 3, 3, 2, 8))


@pytest.mark.parametrize("call, match", [
    (lambda ops: ops.convlstm_forward(XW[0], RK, None, None, None, None, "tanh", "sigmoid", False,
                                      False),
     "convlstm_forward: 'xw' must have 6 dimensions"),
    (lambda ops: ops.convlstm_forward(XW, RK[..., :6], None, None, None, None, "tanh", "sigmoid",
                                      False, False),
     r"'recurrent_kernel' must have shape \(KD, KH, KW, F, 4F\)"),
    (lambda ops: ops.convlstm_forward(XW[..., :4], RK, None, None, None, None, "tanh", "sigmoid",
                                      False, False),
     r"'xw' must have 4F = 8 gate channels"),
    (lambda ops: ops.convlstm_forward(XW[:, :0], RK, None, None, None, None, "tanh", "sigmoid",
                                      False, False),
     "'xw' must have at least one time step"),
    (lambda ops: ops.convlstm_forward(XW, RK, np.ones((2, 1, 4, 4, 2)), None, None, None,
                                      "tanh", "sigmoid", False, False),
     r"'h0' must have shape \(2, 1, 4, 5, 2\), got \(2, 1, 4, 4, 2\)"),
    (lambda ops: ops.convlstm_forward(XW, RK, None, None, None, None, "gelu", "sigmoid", False,
                                      False),
     "convlstm_forward: 'activation' must be one of"),
    (lambda ops: ops.convlstm_forward(XW, RK, None, None, None, None, "tanh", "softmax", False,
                                      False),
     "'recurrent_activation' must be one of"),
    (lambda ops: ops.convlstm_forward(XW, RK, None, None, np.ones((2, 2)), None, "tanh",
                                      "sigmoid", False, False),
     r"convlstm_forward: 'mask' must have shape \(2, 3\), got \(2, 2\)"),
    (lambda ops: ops.convlstm_forward(XW, RK, None, None, None, np.ones((2, 1, 4, 5, 2)),
                                      "tanh", "sigmoid", False, False),
     "convlstm_forward: 'recurrent_dropout' must have 6 dimensions"),
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


def test_bad_backward_inputs():
    from pynn.backend import cpu

    _, _, _, cache = cpu.convlstm_forward(XW, RK, None, None, None, None, "tanh", "sigmoid",
                                          True, False)
    with pytest.raises(ValueError, match=r"convlstm_backward: 'dy' must have shape "
                                         r"\(2, 3, 1, 4, 5, 2\)"):
        cpu.convlstm_backward(np.ones((2, 1, 4, 5, 2)), None, None, RK, cache, "tanh",
                              "sigmoid", True, False)
    with pytest.raises(ValueError, match=r"'dc_last' must have 5 dimensions, got shape "
                                         r"\(2, 4, 5, 2\)"):
        cpu.convlstm_backward(np.ones((2, 3, 1, 4, 5, 2)), None, np.ones((2, 4, 5, 2)), RK,
                              cache, "tanh", "sigmoid", True, False)


def test_complex_input_is_refused_by_name():
    from pynn.backend import cpu

    with pytest.raises(TypeError, match="convlstm_forward: 'xw' must be real"):
        cpu.convlstm_forward(XW.astype(np.complex64), RK, None, None, None, None, "tanh", "sigmoid",
                             False, False)


# -- the layers --------------------------------------------------------------------------------

def _x(rng, *shape):
    # Away from zero so relu-like kinks are never within the finite-difference step.
    x = rng.standard_normal(shape)
    return x + 0.05 * np.sign(x)


LAYER_CASES = [
    ("ConvLSTM1D", {"filters": 2, "kernel_size": 3}, (2, 3, 7, 2)),
    ("ConvLSTM1D", {"filters": 3, "kernel_size": 2, "strides": 2, "padding": "same",
                    "return_sequences": True, "go_backwards": True}, (1, 4, 7, 3)),
    ("ConvLSTM2D", {"filters": 2, "kernel_size": (3, 2), "padding": "same",
                    "return_sequences": True}, (2, 3, 5, 4, 2)),
    ("ConvLSTM2D", {"filters": 2, "kernel_size": 3, "dilation_rate": (1, 2),
                    "activation": "relu", "recurrent_activation": "hard_sigmoid"},
     (1, 3, 5, 7, 3)),
    ("ConvLSTM3D", {"filters": 2, "kernel_size": (2, 3, 1), "strides": (1, 2, 1),
                    "go_backwards": True}, (1, 3, 3, 5, 2, 2)),
    ("ConvLSTM3D", {"filters": 1, "kernel_size": 1, "use_bias": False,
                    "return_sequences": True}, (2, 2, 2, 3, 2, 3)),
]
LAYER_IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(LAYER_CASES)]
BIAS_INIT = {"bias_initializer": "random_normal"}


def make(name, kwargs):
    return getattr(layers, name)(**kwargs, **(BIAS_INIT if kwargs.get("use_bias", True)
                                              else {}))


@pytest.mark.parametrize("name,kwargs,shape", LAYER_CASES, ids=LAYER_IDS)
def test_gradients_by_finite_differences(float64, seeded, algo, name, kwargs, shape):
    layer = make(name, kwargs)
    y = check_layer(layer, _x(seeded, *shape), seeded)
    assert y.shape[1:] == layer.output_shape[1:]
    assert [v.name for v in layer.weights] == (
        ["kernel", "recurrent_kernel", "bias"] if kwargs.get("use_bias", True)
        else ["kernel", "recurrent_kernel"])


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_initial_and_returned_state_gradients(float64, seeded, rank):
    """initial_state [h0, c0] and return_state: d/dx, d/dh0, d/dc0 and the weights from
    sum(y*ry) + sum(h*rh) + sum(c*rc) by central differences."""
    spatial = (5, 4, 3)[:rank]
    layer = getattr(layers, f"ConvLSTM{rank}D")(2, 3, padding="same", return_state=True,
                                                return_sequences=rank != 2, **BIAS_INIT)
    x = _x(seeded, 2, 3, *spatial, 2)
    h0, c0 = _x(seeded, 2, *spatial, 2), _x(seeded, 2, *spatial, 2)
    outs = layer([x, h0, c0], training=True)
    rs = [seeded.standard_normal(o.shape) for o in outs]

    def loss():
        return float(sum(np.sum(o * r) for o, r in zip(layer([x, h0, c0]), rs)))

    layer([x, h0, c0], training=True)
    dx, dh0, dc0 = layer.backward([r.copy() for r in rs])
    grads = {v.name: np.array(v.grad) for v in layer.weights}
    for name, arr, got in (("x", x, dx), ("h0", h0, dh0), ("c0", c0, dc0)):
        assert_close(name, got, numerical_grad(loss, arr))
    for v in layer.weights:
        assert_close(v.name, grads[v.name], numerical_grad(loss, v.value))


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


def test_weight_layouts_and_forget_bias_are_keras():
    layer = layers.ConvLSTM2D(3, (3, 2))
    layer.build((None, 4, 6, 5, 2))
    assert [tuple(v.value.shape) for v in layer.weights] == [(3, 2, 2, 12), (3, 2, 3, 12),
                                                              (12,)]
    np.testing.assert_array_equal(layer.bias.value, [0] * 3 + [1] * 3 + [0] * 6)
    assert layer.compute_output_shape((None, 4, 6, 5, 2)) == (None, 4, 4, 3)
    plain = layers.ConvLSTM1D(2, 3, unit_forget_bias=False, return_sequences=True,
                              return_state=True)
    plain.build((None, 5, 9, 1))
    assert not plain.bias.value.any()
    assert plain.compute_output_shape((None, 5, 9, 1)) == [(None, 5, 7, 2), (None, 7, 2),
                                                           (None, 7, 2)]


def test_stateful_calls_carry_the_states(seeded):
    x = _x(seeded, 2, 4, 6, 5, 2).astype(np.float32)
    whole = layers.ConvLSTM2D(3, 3, padding="same", return_sequences=True)
    want = whole(x)
    stateful = layers.ConvLSTM2D(3, 3, padding="same", return_sequences=True, stateful=True)
    stateful.build((None, 4, 6, 5, 2))
    stateful.set_weights(whole.get_weights())
    got = np.concatenate([stateful(x[:, :2]), stateful(x[:, 2:])], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    stateful.reset_states()
    np.testing.assert_allclose(stateful(x[:, :2]), want[:, :2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make_layer, match", [
    (lambda: layers.ConvLSTM2D(0, 3, name="c"),
     "ConvLSTM2D 'c': filters must be a positive int, got 0"),
    (lambda: layers.ConvLSTM2D(4, (3, 3, 3), name="c"),
     "ConvLSTM2D 'c': kernel_size must be a positive int or 2 positive ints"),
    (lambda: layers.ConvLSTM1D(4, 3, strides=2, dilation_rate=2, name="c"),
     "strides > 1 together with dilation_rate > 1"),
    (lambda: layers.ConvLSTM3D(4, 3, padding="causal", name="c"),
     "padding must be 'valid' or 'same'"),
    (lambda: layers.ConvLSTM2D(4, 3, data_format="channels_first", name="c"),
     "only data_format='channels_last'"),
    (lambda: layers.ConvLSTM2D(4, 3, activation="gelu", name="c"),
     r"ConvLSTM2D 'c': activation must be one of .* got 'gelu'"),
    (lambda: layers.ConvLSTM2D(4, 3, dropout=1.5, name="c"),
     r"dropout must be a float in \[0, 1\], got 1.5"),
    (lambda: layers.ConvLSTM2D(4, 3, kernel_constraint="non_neg", name="c"),
     "kernel_constraint='non_neg' is not supported"),
])
def test_bad_arguments_name_the_layer(make_layer, match):
    with pytest.raises(ValueError, match=match):
        make_layer()


@pytest.mark.parametrize("layer, shape, match", [
    (layers.ConvLSTM2D(2, 3, name="c2"), (None, 5, 5, 3),
     r"ConvLSTM2D 'c2': expected input shape \(None, timesteps, H, W, channels\)"),
    (layers.ConvLSTM1D(2, 3, name="c1"), (None, 5, None, 3),
     "ConvLSTM1D 'c1': expected input shape .* with known spatial sizes"),
    (layers.ConvLSTM3D(2, 4, name="c3"), (None, 2, 3, 5, 5, 2),
     "ConvLSTM3D 'c3': kernel .* is larger than the input"),
])
def test_bad_input_shapes_name_the_layer(layer, shape, match):
    with pytest.raises(ValueError, match=match):
        layer.compute_output_shape(shape)
        layer.build(shape)


def test_unsupported_calls_name_the_layer(seeded):
    x = _x(seeded, 2, 3, 5, 2).astype(np.float32)
    plain = layers.ConvLSTM1D(2, 3, name="m")
    with pytest.raises(ValueError, match=r"ConvLSTM1D 'm': mask must have shape \(batch, "
                                         r"timesteps\) = \(2, 3\), got \(2, 2\)"):
        plain(x, mask=np.array([[True, False]] * 2))
    with pytest.raises(ValueError, match=r"Layer 'm' \(ConvLSTM1D\) expected input shape "
                                         r"\(None, None, 5, 2\), got \(None, 3, 5, 2, 1\)"):
        plain(x[..., None])
    with pytest.raises(ValueError, match=r"initial_state expects 2 state tensors"):
        plain(x, initial_state=[np.zeros((2, 3, 2), np.float32)])


def test_a_nowcasting_model_trains():
    model = pynn.Sequential([
        layers.Input((4, 8, 8, 1)),
        layers.ConvLSTM2D(4, 3, padding="same", return_sequences=True),
        layers.ConvLSTM2D(2, 3, padding="same"),
        layers.Conv2D(1, 3, padding="same", activation="sigmoid"),
    ])
    model.compile("adam", "mse")
    rng = np.random.default_rng(0)
    x = rng.random((8, 4, 8, 8, 1)).astype(np.float32)
    y = x[:, -1]
    first = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=5, batch_size=4, verbose=0)
    assert model.evaluate(x, y, verbose=0) < first


# -- dropout: Keras's four masks each, one per gate, fixed over the steps ---------------------

DROPOUT_CASES = [
    ("ConvLSTM1D", {"filters": 2, "kernel_size": 3, "dropout": 0.4, "padding": "same",
                    "return_sequences": True}, (2, 3, 6, 2)),
    ("ConvLSTM3D", {"filters": 2, "kernel_size": (1, 2, 2), "strides": (1, 2, 1),
                    "dropout": 0.3, "recurrent_dropout": 0.4, "go_backwards": True},
     (1, 3, 2, 5, 3, 2)),
    ("ConvLSTM2D", {"filters": 3, "kernel_size": 3, "padding": "same",
                    "recurrent_dropout": 0.5, "return_sequences": True}, (2, 3, 4, 5, 2)),
]
DROPOUT_IDS = ["1d", "3d-both", "2d-recurrent"]


@pytest.mark.parametrize("name,kwargs,shape", DROPOUT_CASES, ids=DROPOUT_IDS)
def test_dropout_gradients_by_finite_differences(float64, seeded, name, kwargs, shape):
    layer = make(name, kwargs)

    def same_masks():
        layer._offset = 0

    check_layer(layer, _x(seeded, *shape), seeded, before_call=same_masks)


@pytest.mark.parametrize("name,kwargs,shape", DROPOUT_CASES, ids=DROPOUT_IDS)
def test_dropout_matches_reference(float64, seeded, name, kwargs, shape):
    """Each gate's input conv reads the input times its own mask, each gate's recurrent conv
    h times its own (Keras's ConvLSTMCell.call); the masks are 0 or 1/(1-rate), fixed over
    the steps, kept at about 1-rate, four different ones."""
    from tests.reference.conv3d_ref import conv3d_forward_ref

    layer = make(name, kwargs)
    x = _x(seeded, *shape)
    y = layer(x, training=True)
    inputs, _, op_cache = layer._cache[:3]
    rank, f = layer.RANK, layer.filters
    n, t = shape[:2]
    scales = [None] * 4
    if kwargs.get("dropout"):
        scales = [np.asarray(s) for s in inputs[2]]
    rdrop = np.asarray(op_cache[6]) if kwargs.get("recurrent_dropout") else None
    drawn = [(kwargs.get("dropout"), np.stack(scales) if scales[0] is not None else None),
             (kwargs.get("recurrent_dropout"), rdrop)]
    for rate, masks in drawn:
        if rate:
            assert set(np.unique(masks)) <= {0.0, 1 / (1 - rate)}
            assert abs(np.mean(masks > 0) - (1 - rate)) < 0.25
            assert len({m.tobytes() for m in masks}) == 4
    kernel3 = ref.kernel_to_3d(np.asarray(layer.kernel.value), rank)
    bias = np.asarray(layer.bias.value)
    parts = []
    for g, scale in enumerate(scales):
        xg = x if scale is None else (x.reshape(n, t, -1) * scale[:, None]).reshape(x.shape)
        frames = ref.to_3d(xg, rank).reshape((n * t,) + ref.to_3d(xg, rank).shape[2:])
        z, _ = conv3d_forward_ref(frames, kernel3[..., g * f:(g + 1) * f],
                                  bias[g * f:(g + 1) * f], layer._pad3(layer.strides),
                                  layer.padding, layer._pad3(layer.dilation_rate))
        parts.append(z)
    xw = np.concatenate(parts, -1)
    xw = xw.reshape((n, t) + xw.shape[1:])
    want, _, _ = ref.convlstm_forward_ref(
        xw, ref.kernel_to_3d(np.asarray(layer.recurrent_kernel.value), rank),
        recurrent_dropout=rdrop, return_sequences=layer.return_sequences,
        go_backwards=layer.go_backwards)
    np.testing.assert_allclose(np.asarray(y), want.reshape(np.shape(y)), rtol=1e-10,
                               atol=1e-12)


@pytest.fixture
def restore_device():
    previous = pynn.get_device()
    yield
    pynn.set_device(previous)


@pytest.mark.opencl
@pytest.mark.parametrize("name,kwargs,shape", LAYER_CASES + DROPOUT_CASES,
                         ids=LAYER_IDS + [f"dropout-{i}" for i in DROPOUT_IDS])
def test_opencl_layer_matches_cpu(restore_device, name, kwargs, shape):
    from tests.opencl_util import skip_without_opencl

    skip_without_opencl()
    rng = np.random.default_rng(sum(shape))
    x = _x(rng, *shape).astype(np.float32)
    results, weights = {}, None
    for device in ("cpu", "opencl"):
        pynn.set_device(device)
        ops = pynn.backend.current()
        layer = make(name, dict(kwargs, seed=5))
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


# -- Keras 3 parity: outputs, states and every gradient from Keras's own weights ----------------

PARITY = [
    (1, {"filters": 3, "kernel_size": 3}),
    (1, {"filters": 2, "kernel_size": 4, "strides": 2, "padding": "same",
         "return_sequences": True}),
    (1, {"filters": 2, "kernel_size": 2, "dilation_rate": 2, "go_backwards": True,
         "return_state": True}),
    (2, {"filters": 3, "kernel_size": (3, 2), "padding": "same", "return_sequences": True}),
    (2, {"filters": 2, "kernel_size": 3, "strides": (2, 1), "go_backwards": True,
         "return_sequences": True, "return_state": True}),
    (2, {"filters": 2, "kernel_size": 2, "dilation_rate": (1, 2), "activation": "relu",
         "recurrent_activation": "hard_sigmoid"}),
    (2, {"filters": 4, "kernel_size": 1, "use_bias": False}),
    (3, {"filters": 2, "kernel_size": (2, 3, 2), "padding": "same"}),
    (3, {"filters": 2, "kernel_size": 3, "strides": (1, 2, 2), "return_state": True,
         "return_sequences": True}),
    (3, {"filters": 3, "kernel_size": (1, 2, 3), "dilation_rate": (1, 2, 1),
         "go_backwards": True}),
]
SPATIAL = {1: (9,), 2: (7, 6), 3: (3, 5, 4)}


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("rank,kwargs", PARITY, ids=[f"{r}d-{i}" for i, (r, _) in
                                                     enumerate(PARITY)])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("masked", [False, True], ids=["", "masked"])
def test_outputs_states_and_gradients_match_keras(rank, kwargs, with_state, masked):
    keras = keras_on_torch()
    import torch

    rng = np.random.default_rng(11 + rank)
    x = rng.standard_normal((2, 3, *SPATIAL[rank], 2)).astype(np.float32)
    name = f"ConvLSTM{rank}D"
    extra = {} if kwargs.get("use_bias", True) is False else BIAS_INIT
    klayer = getattr(keras.layers, name)(**kwargs, **extra)
    tx = torch.tensor(x, requires_grad=True)
    state_shape = klayer.compute_output_shape(x.shape)
    state_shape = tuple(state_shape[1] if isinstance(state_shape, (list, tuple))
                        and isinstance(state_shape[0], (list, tuple)) else state_shape)
    if kwargs.get("return_sequences") and not kwargs.get("return_state"):
        state_shape = state_shape[:1] + state_shape[2:]
    states = [rng.standard_normal(state_shape).astype(np.float32) for _ in range(2)]
    tstates = [torch.tensor(s, requires_grad=True) for s in states]
    mask = None
    if masked:
        mask = rng.random(x.shape[:2]) > 0.4
        mask[0, 0] = mask[1, -1] = False
    call = {"mask": torch.tensor(mask)} if masked else {}
    want = (klayer(tx, initial_state=tstates, **call) if with_state
            else klayer(tx, **call))
    want = list(want) if isinstance(want, (list, tuple)) else [want]
    rs = [rng.standard_normal(tuple(w.shape)).astype(np.float32) for w in want]
    sum((w * torch.tensor(r)).sum() for w, r in zip(want, rs)).backward()
    layer = getattr(layers, name)(**kwargs)
    frames = (None,) + x.shape[1:]
    layer.build([frames, (None,) + state_shape[1:], (None,) + state_shape[1:]] if with_state
                else frames)
    layer.set_weights([np.asarray(keras.ops.convert_to_numpy(w)) for w in klayer.weights])
    got = layer([x, *states] if with_state else x, training=True, mask=mask)
    got = got if isinstance(got, list) else [got]
    for g, w in zip(got, want):
        w = w.detach().numpy()
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, atol=1e-5 * max(1.0, float(np.abs(w).max())))
    grads = layer.backward(rs if len(rs) > 1 else rs[0])
    grads = grads if isinstance(grads, list) else [grads]
    np.testing.assert_allclose(grads[0], tx.grad.numpy(), atol=5e-5, rtol=1e-4)
    if with_state:
        for got_state, t in zip(grads[1:], tstates):
            np.testing.assert_allclose(got_state, t.grad.numpy(), atol=5e-5, rtol=1e-4)
    for v, w in zip(layer.weights, klayer.weights):
        np.testing.assert_allclose(v.grad, w.value.grad.numpy(), atol=2e-4, rtol=1e-4,
                                   err_msg=v.path)
