"""The attention ops (native/attention.pyx, opencl/attention.cl) against their float64
references over both backends: odd sizes, masks with rows that attend to nothing, dropout
multipliers, thread-count invariance, and bad operands."""

import numpy as np
import pytest

from tests.backend_util import assert_step_matches_on_opencl, check_op, keras_on_torch, rand
from tests.reference import gradcheck
from tests.reference import attention_ref as ref

# Keras's GroupQueryAttention hands a masked input to its own EinsumDense sublayers, which
# warn that they drop the mask (Keras's noise about Keras's layer)
pytestmark = pytest.mark.filterwarnings(
    "ignore:Layer '.*' \\(of type EinsumDense\\) was passed an input with a mask:UserWarning")


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


# -- the MultiHeadAttention layer ----------------------------------------------------------

_keras = keras_on_torch


LAYER_CASES = [  # (constructor arguments, call options)
    (dict(num_heads=2, key_dim=3), {}),
    (dict(num_heads=3, key_dim=2, value_dim=5, output_shape=(4,)), {}),
    (dict(num_heads=1, key_dim=4, use_bias=False), dict(use_causal_mask=True)),
    (dict(num_heads=2, key_dim=3, use_gate=True), dict(key=True)),
    (dict(num_heads=2, key_dim=2, sliding_window=2), dict(use_causal_mask=True)),
    (dict(num_heads=2, key_dim=3, output_shape=(2, 3)), dict(attention_mask=True)),
    # Keras's explicit path (its scores returned): a row attending to nothing gives zeros
    (dict(num_heads=2, key_dim=3), dict(attention_mask=True, return_attention_scores=True)),
]


def _layer_inputs(rng, options, n=3, t=5, s=7, dtype=np.float32):
    query = rand(rng, (n, t, 6), dtype)
    value = rand(rng, (n, s, 4), dtype)
    kwargs = {}
    if options.get("key"):
        kwargs["key"] = rand(rng, (n, s, 5), dtype)
    if options.get("attention_mask"):
        mask = rng.random((n, t, s)) > 0.3
        mask[0, 1] = False   # a query step attending to nothing
        kwargs["attention_mask"] = mask
    if options.get("use_causal_mask"):
        kwargs["use_causal_mask"] = True
    if options.get("return_attention_scores"):
        kwargs["return_attention_scores"] = True
    return query, value, kwargs


def _attends_to_something(kwargs, query):
    """Keras's fused path (no dropout, no scores returned) lets a query step whose mask row
    is all false attend to every key alike; its own explicit path, its masked Softmax and
    pynn give zeros there (see test_a_row_attending_to_nothing_differs_only_on_keras_fused_path).
    The steps compared are those attending to something."""
    mask = kwargs.get("attention_mask")
    if mask is None or kwargs.get("return_attention_scores"):
        return np.ones(query.shape[:2], bool)
    return mask.any(axis=-1)


@pytest.mark.parametrize("args, options", LAYER_CASES)
def test_layer_matches_keras_forward_and_gradients(rng, args, options):
    """Keras's weights give Keras's outputs, and the gradients of every weight and input
    are torch autograd's through Keras's layer."""
    keras = _keras()
    import torch

    from pynn import layers

    query, value, kwargs = _layer_inputs(rng, options)
    k_layer = keras.layers.MultiHeadAttention(**args)
    k_args = {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    tq, tv = torch.tensor(query, requires_grad=True), torch.tensor(value, requires_grad=True)
    if "key" in k_args:
        k_args["key"].requires_grad_(True)
    want = k_layer(tq, tv, **k_args)
    wants = list(want) if isinstance(want, tuple) else [want]
    keep = _attends_to_something(kwargs, query)
    rs = [rng.standard_normal(tuple(w.shape)).astype(np.float32) for w in wants]
    rs[0][~keep] = 0
    sum((w * torch.tensor(r)).sum() for w, r in zip(wants, rs)).backward()
    layer = layers.MultiHeadAttention(**args)
    layer(query, value, **kwargs)
    layer.set_weights([np.asarray(keras.ops.convert_to_numpy(w)) for w in k_layer.weights])
    assert [v.path.split("/", 1)[1] for v in layer.weights] == \
        [w.path.split("/", 1)[1] for w in k_layer.weights]
    got = layer(query, value, training=True, **kwargs)
    gots = got if isinstance(got, list) else [got]
    np.testing.assert_allclose(np.asarray(gots[0])[keep], wants[0].detach().numpy()[keep],
                               atol=2e-6)
    for g, w in zip(gots[1:], wants[1:]):
        np.testing.assert_allclose(g, w.detach().numpy(), atol=2e-6)
    grads = layer.backward(rs if len(rs) > 1 else rs[0])
    torch_inputs = [tq, tv] + ([k_args["key"]] if "key" in k_args else [])
    for g, t in zip(grads, torch_inputs):
        np.testing.assert_allclose(g, t.grad.numpy(), atol=2e-5)
    for v, w in zip(layer.weights, k_layer.weights):
        np.testing.assert_allclose(v.grad, w.value.grad.numpy(), atol=2e-5, err_msg=v.path)


def test_a_row_attending_to_nothing_differs_only_on_keras_fused_path(rng):
    """Keras 3 answers a query step that may attend to nothing in two ways: its fused
    dot_product_attention (no dropout, no scores returned) adds a large negative bias and
    attends to every key alike; its explicit path (dropout, or scores returned) zeroes the
    probabilities, as its masked Softmax documents. pynn keeps the masked Softmax's zeros on
    every path; this test pins both of Keras's answers, so a change in Keras shows here."""
    keras = _keras()
    from pynn import layers

    query, value = rand(rng, (2, 3, 4)), rand(rng, (2, 5, 4))
    mask = np.ones((2, 3, 5), bool)
    mask[1, 2] = False
    k_layer = keras.layers.MultiHeadAttention(2, 3, bias_initializer="ones")
    fused = keras.ops.convert_to_numpy(k_layer(query, value, attention_mask=mask))
    explicit, _ = k_layer(query, value, attention_mask=mask, return_attention_scores=True)
    explicit = keras.ops.convert_to_numpy(explicit)
    layer = layers.MultiHeadAttention(2, 3)
    layer(query, value, attention_mask=mask)
    layer.set_weights([keras.ops.convert_to_numpy(w) for w in k_layer.weights])
    got = np.asarray(layer(query, value, attention_mask=mask))
    np.testing.assert_allclose(got, explicit, atol=2e-6)
    np.testing.assert_allclose(got[0], fused[0], atol=2e-6)
    np.testing.assert_allclose(got[1, :2], fused[1, :2], atol=2e-6)
    # the row attending to nothing: the output bias alone, where Keras's fused path reads
    # the mean of the values' projections
    np.testing.assert_allclose(got[1, 2], keras.ops.convert_to_numpy(k_layer.weights[-1]))
    assert np.abs(fused[1, 2] - got[1, 2]).max() > 1e-3


def _numerical(loss, x):
    return gradcheck.numerical_grad(loss, x)


@pytest.mark.parametrize("args, options", LAYER_CASES + [
    (dict(num_heads=2, key_dim=2, dropout=0.4, seed=3), dict(return_attention_scores=True)),
])
def test_layer_gradients_match_central_differences(float64, rng, args, options):
    """float64: every weight's and input's gradient, dropout on (its stream rewound before
    each call) and a loss reaching the returned attention scores."""
    from pynn import layers

    query, value, kwargs = _layer_inputs(rng, options, n=2, t=3, s=4, dtype=np.float64)
    scores = kwargs.pop("return_attention_scores", False)
    layer = layers.MultiHeadAttention(**args)
    layer(query, value, return_attention_scores=scores, **kwargs)
    layer.set_weights([rng.uniform(-0.8, 0.8, w.shape) for w in layer.get_weights()])

    def forward(training=True):
        layer._offset = 0
        out = layer(query, value, training=training, return_attention_scores=scores, **kwargs)
        return out if scores else [out]

    rs = [rng.standard_normal(np.shape(o)) for o in forward()]

    def loss():
        return float(sum(np.sum(np.asarray(o) * r) for o, r in zip(forward(), rs)))

    forward()
    grads = layer.backward(rs if scores else rs[0])
    inputs = [query, value] + ([kwargs["key"]] if "key" in kwargs else [])
    for g, x in zip(grads, inputs):
        np.testing.assert_allclose(g, _numerical(loss, x), rtol=1e-5, atol=1e-8)
    for v in layer.weights:
        np.testing.assert_allclose(v.grad, _numerical(loss, v.value), rtol=1e-5, atol=1e-8,
                                   err_msg=v.path)


def _text_model(pynn_or_keras, vocab=13, steps=7, causal=False):
    L = pynn_or_keras.layers
    ids = L.Input((steps,), dtype="int32")
    x = L.Embedding(vocab, 8, mask_zero=True)(ids)
    a = L.MultiHeadAttention(2, 4)(x, x, use_causal_mask=causal)
    x = L.LayerNormalization()(L.Add()([x, a]))
    y = L.Dense(3, activation="softmax")(L.GlobalAveragePooling1D()(x))
    model = (pynn_or_keras.Model if hasattr(pynn_or_keras, "Model")
             else pynn_or_keras.models.Model)(ids, y)
    return model


def _ids(rng, n=6, steps=7, vocab=13):
    ids = rng.integers(1, vocab, (n, steps)).astype(np.int32)
    for i in range(n):
        ids[i, rng.integers(2, steps + 1):] = 0   # padding at the end, every length
    ids[0, 1:] = 0
    return ids


@pytest.mark.parametrize("causal", [False, True])
def test_masked_self_attention_model_matches_keras(rng, causal):
    """Embedding(mask_zero=True) -> MultiHeadAttention(x, x): the padding's mask reaches the
    attention as Keras's query and value masks, and the output carries the query's mask to
    the masked mean; predictions and one SGD step's weights equal Keras's."""
    keras = _keras()
    import pynn

    k_model = _text_model(keras, causal=causal)
    model = _text_model(pynn, causal=causal)
    model.set_weights(k_model.get_weights())
    ids = _ids(rng)
    labels = rng.integers(0, 3, len(ids)).astype(np.int32)
    np.testing.assert_allclose(model.predict(ids, verbose=0), k_model.predict(ids, verbose=0),
                               atol=2e-6)
    for m in (model, k_model):
        m.compile(optimizer=(pynn if m is model else keras).optimizers.SGD(0.5),
                  loss="sparse_categorical_crossentropy")
        m.train_on_batch(ids, labels)
    for got, want in zip(model.get_weights(), k_model.get_weights()):
        np.testing.assert_allclose(got, want, atol=2e-5)


def test_layer_trains_saves_and_predicts_alike_on_every_path(rng, tmp_path):
    """fit lowers the loss; predict, predict_on_batch, model(x) and a reloaded .pynn model
    answer alike; the config round-trips with the call options."""
    import pynn

    model = _text_model(pynn)
    model.compile("adam", "sparse_categorical_crossentropy")
    ids = _ids(rng, n=64)
    labels = (ids[:, 0] % 3).astype(np.int32)
    history = model.fit(ids, labels, epochs=15, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < 0.8 * history.history["loss"][0]
    want = model.predict(ids[:9], verbose=0)
    np.testing.assert_allclose(model.predict_on_batch(ids[:1]), want[:1], atol=1e-6)
    np.testing.assert_allclose(np.asarray(model(ids[:9])), want, atol=1e-6)
    model.save(tmp_path / "m.pynn")
    again = pynn.load_model(tmp_path / "m.pynn")
    np.testing.assert_array_equal(again.predict(ids[:9], verbose=0), want)
    layer = next(la for la in model.layers if type(la).__name__ == "MultiHeadAttention")
    config = layer.get_config()
    assert config["num_heads"] == 2 and config["call_options"]["key"] is False
    twin = type(layer).from_config(config)
    assert twin.get_config() == config


@pytest.mark.opencl
def test_layer_on_opencl_matches_the_cpu(rng):
    """One training step of a cross-attention model (key, causal mask, gate) on OpenCL:
    predictions, loss and every weight after the step as on the CPU."""
    import pynn
    from pynn import layers as L

    def build():
        q, v = L.Input((5, 6)), L.Input((7, 4))
        k = L.Input((7, 3))
        a = L.MultiHeadAttention(2, 3, use_gate=True)(q, v, key=k, use_causal_mask=True)
        return pynn.Model([q, v, k], L.Dense(2)(L.GlobalAveragePooling1D()(a)))

    xs = [rand(rng, (4, 5, 6)), rand(rng, (4, 7, 4)), rand(rng, (4, 7, 3))]
    assert_step_matches_on_opencl(build, xs, rand(rng, (4, 2)))


@pytest.mark.parametrize("make, call, message", [
    (lambda L: L.MultiHeadAttention(0, 3), None, "num_heads must be a positive int"),
    (lambda L: L.MultiHeadAttention(2, 3.5), None, "key_dim must be a positive int"),
    (lambda L: L.MultiHeadAttention(2, 3, dropout=1.0), None, r"rate must be a number in \[0, 1\)"),
    (lambda L: L.MultiHeadAttention(2, 3, attention_axes=(1, 2)),
     lambda layer, q, v: layer(q, v), "attention_axes"),
    (lambda L: L.MultiHeadAttention(2, 3), lambda layer, q, v: layer(q[:, 0], v),
     r"query must have shape \(batch, steps, features\)"),
    (lambda L: L.MultiHeadAttention(2, 3), lambda layer, q, v: layer(q, v, key=v[:, :2]),
     "value and key must have the same steps"),
    (lambda L: L.MultiHeadAttention(2, 3), lambda layer, q, v: layer(q),
     "takes query and value tensors"),
    (lambda L: L.MultiHeadAttention(2, 3),
     lambda layer, q, v: layer(q, v, attention_mask=np.ones((3, 5, 6))),
     "attention_mask of shape"),
])
def test_layer_bad_arguments_name_the_layer(rng, make, call, message):
    from pynn import layers as L

    q, v = rand(rng, (3, 5, 6)), rand(rng, (3, 7, 4))
    with pytest.raises((ValueError, TypeError), match=message):
        layer = make(L)
        call(layer, q, v)


def test_one_layer_keeps_its_call_options(rng):
    from pynn import layers as L

    q, v = rand(rng, (3, 5, 6)), rand(rng, (3, 7, 4))
    layer = L.MultiHeadAttention(2, 3)
    layer(q, v)
    with pytest.raises(ValueError, match="same tensors and options"):
        layer(q, v, use_causal_mask=True)


def _cross_model(lib, scores):
    L = lib.layers
    q, v, k, am = L.Input((5, 6)), L.Input((7, 4)), L.Input((7, 3)), L.Input((5, 7))
    a = L.MultiHeadAttention(2, 3, use_gate=True, output_shape=(2, 2))(
        q, v, key=k, attention_mask=am, return_attention_scores=scores, use_causal_mask=True)
    return (lib.Model if hasattr(lib, "Model") else lib.models.Model)([q, v, k, am], a)


def _outputs(values):
    return list(values) if isinstance(values, (list, tuple)) else [values]


@pytest.mark.parametrize("ext", [".keras", ".h5", ".weights.h5"])
@pytest.mark.parametrize("scores", [False, True])
def test_keras_files_both_ways(rng, tmp_path, ext, scores):
    """A cross-attention model (key, attention_mask input, causal mask, gate, output_shape,
    the scores as a second output) through Keras's files both ways: Keras's call arguments
    become pynn's call options and back, and the sublayers' weight groups line up."""
    keras = _keras()
    import pynn

    xs = [rand(rng, (3, 5, 6)), rand(rng, (3, 7, 4)), rand(rng, (3, 7, 3)),
          (rng.random((3, 5, 7)) > 0.2).astype(np.float32)]
    xs[3][:, :, 0] = 1
    path = str(tmp_path / f"m{ext}")
    k_model = _cross_model(keras, scores)
    if ext == ".weights.h5":
        k_model.save_weights(path)
        model = _cross_model(pynn, scores)
        model.load_weights(path)
    else:
        k_model.save(path)
        model = pynn.load_model(path)
    want = _outputs(k_model.predict(xs, verbose=0))
    for got, w in zip(_outputs(model.predict(xs, verbose=0)), want):
        np.testing.assert_allclose(got, w, atol=2e-6)
    # and back: pynn's file into Keras, with other weights
    model.set_weights([w + 0.1 for w in model.get_weights()])
    path = str(tmp_path / f"back{ext}")
    if ext == ".weights.h5":
        model.save_weights(path)
        back = _cross_model(keras, scores)
        back.load_weights(path)
    else:
        model.save(path)
        back = keras.saving.load_model(path)
    for got, w in zip(_outputs(model.predict(xs, verbose=0)),
                      _outputs(back.predict(xs, verbose=0))):
        np.testing.assert_allclose(got, w, atol=2e-6)


def test_keras_masked_text_model_loads(rng, tmp_path):
    keras = _keras()
    import pynn

    k_model = _text_model(keras, causal=True)
    k_model.save(tmp_path / "t.keras")
    model = pynn.load_model(tmp_path / "t.keras")
    ids = _ids(rng)
    np.testing.assert_allclose(model.predict(ids, verbose=0), k_model.predict(ids, verbose=0),
                               atol=2e-6)


def test_keras_file_attention_calls_pynn_cannot_take_are_refused(tmp_path):
    """A node passing query_mask by hand, or two calls of one layer with other options, is a
    clear error naming the layer."""
    from pynn.interop.keras_files import KerasFileError, _calls

    class Where:
        def fail(self, what, member=None):
            return KerasFileError(what)

    def tensor(name):
        return {"class_name": "__keras_tensor__",
                "config": {"keras_history": [name, 0, 0]}}

    entry = {"class_name": "MultiHeadAttention", "name": "mha", "config": {},
             "inbound_nodes": [{"args": [tensor("a"), tensor("b")],
                                "kwargs": {"query_mask": tensor("c")}}]}
    with pytest.raises(KerasFileError, match=r"'mha'.*query_mask"):
        _calls(entry, Where())
    entry = {"class_name": "MultiHeadAttention", "name": "mha", "config": {},
             "inbound_nodes": [{"args": [tensor("a"), tensor("b")], "kwargs": {}},
                               {"args": [tensor("a"), tensor("b")],
                                "kwargs": {"use_causal_mask": True}}]}
    with pytest.raises(KerasFileError, match="other options"):
        _calls(entry, Where())
    entry["inbound_nodes"] = [{"args": [tensor("a")], "kwargs": {}}]
    with pytest.raises(KerasFileError, match="1 positional"):
        _calls(entry, Where())


# -- Attention (Luong) and AdditiveAttention (Bahdanau) ------------------------------------

SCORE_LAYERS = [("Attention", {}), ("Attention", dict(use_scale=True)),
                ("Attention", dict(score_mode="concat")),
                ("Attention", dict(score_mode="concat", use_scale=True)),
                ("AdditiveAttention", {}), ("AdditiveAttention", dict(use_scale=False))]


def _score_inputs(rng, with_key, dtype=np.float32, n=3, t=4, s=6, d=5):
    query = rand(rng, (n, t, d), dtype)
    value = rand(rng, (n, s, 7 if with_key else d), dtype)
    return [query, value] + ([rand(rng, (n, s, d), dtype)] if with_key else [])


@pytest.mark.parametrize("cls, args", SCORE_LAYERS)
@pytest.mark.parametrize("with_key", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_score_attention_matches_keras(rng, cls, args, with_key, masked, causal):
    """Outputs, returned scores and every gradient (inputs and weights) against torch
    autograd through Keras's layer, masks and the causal mask included."""
    keras = _keras()
    import torch

    from pynn import layers

    inputs = _score_inputs(rng, with_key)
    n, t, s = inputs[0].shape[0], inputs[0].shape[1], inputs[1].shape[1]
    mask = [rng.random((n, t)) > 0.3, rng.random((n, s)) > 0.3] if masked else None
    if mask is not None:
        mask[1][:, 0] = True
    k_layer = getattr(keras.layers, cls)(**args)
    tensors = [torch.tensor(x, requires_grad=True) for x in inputs]
    want = k_layer(tensors, mask=None if mask is None else [torch.tensor(m) for m in mask],
                   use_causal_mask=causal, return_attention_scores=True)
    rs = [rng.standard_normal(tuple(w.shape)).astype(np.float32) for w in want]
    sum((w * torch.tensor(r)).sum() for w, r in zip(want, rs)).backward()
    layer = getattr(layers, cls)(**args)
    layer(inputs, mask=mask, use_causal_mask=causal, return_attention_scores=True)
    layer.set_weights([keras.ops.convert_to_numpy(w) for w in k_layer.weights])
    got = layer(inputs, training=True, mask=mask, use_causal_mask=causal,
                return_attention_scores=True)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), w.detach().numpy(), atol=2e-6)
    for g, x in zip(layer.backward(rs), tensors):
        np.testing.assert_allclose(g, x.grad.numpy(), atol=1e-5)
    for v, w in zip(layer.weights, k_layer.weights):
        np.testing.assert_allclose(v.grad, w.value.grad.numpy(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cls, args", SCORE_LAYERS)
def test_score_attention_gradients_match_central_differences(float64, rng, cls, args):
    """float64, a key, masks, the causal mask, dropout (its stream rewound before each call)
    and a loss reaching the returned scores."""
    from pynn import layers

    inputs = _score_inputs(rng, True, np.float64, n=2, t=3, s=4, d=3)
    mask = [np.array([[1, 1, 0], [1, 1, 1]], bool), np.array([[1, 0, 1, 1], [1, 1, 1, 0]], bool)]
    layer = getattr(layers, cls)(dropout=0.3, seed=5, **args)
    kwargs = dict(mask=mask, use_causal_mask=True, return_attention_scores=True)
    layer(inputs, **kwargs)
    layer.set_weights([rng.uniform(0.5, 1.5, w.shape) for w in layer.get_weights()])

    def forward():
        layer._offset = 0
        return layer(inputs, training=True, **kwargs)

    rs = [rng.standard_normal(np.shape(o)) for o in forward()]

    def loss():
        return float(sum(np.sum(np.asarray(o) * r) for o, r in zip(forward(), rs)))

    forward()
    grads = layer.backward(rs)
    for g, x in zip(grads, inputs):
        np.testing.assert_allclose(g, _numerical(loss, x), rtol=1e-5, atol=1e-8)
    for v in layer.weights:
        np.testing.assert_allclose(v.grad, _numerical(loss, v.value), rtol=1e-5, atol=1e-8,
                                   err_msg=v.path)


def _seq2seq(lib, cls, args, scores=False):
    """A shared Embedding over an encoder's and a decoder's ids of other lengths, the
    decoder attending to the encoder (Keras's classic seq2seq-with-attention shape)."""
    L = lib.layers
    enc, dec = L.Input((7,), dtype="int32"), L.Input((5,), dtype="int32")
    embed = L.Embedding(13, 6, mask_zero=True)
    out = getattr(L, cls)(**args)([embed(dec), embed(enc)], use_causal_mask=True,
                                  return_attention_scores=scores)
    head = L.Dense(2)(L.GlobalAveragePooling1D()(out[0] if scores else out))
    return (lib.Model if hasattr(lib, "Model") else lib.models.Model)(
        [enc, dec], [head, out[1]] if scores else head)


def _seq_ids(rng):
    ids = [rng.integers(1, 13, (4, 7)).astype(np.int32),
           rng.integers(1, 13, (4, 5)).astype(np.int32)]
    ids[0][:, 5:] = 0
    ids[1][:, 3:] = 0
    ids[1][0, 1:] = 0
    return ids


@pytest.mark.parametrize("cls, args", SCORE_LAYERS[1:5])
@pytest.mark.parametrize("scores", [False, True])
def test_score_attention_keras_files_both_ways(rng, tmp_path, cls, args, scores):
    keras = _keras()
    import pynn

    ids = _seq_ids(rng)
    k_model = _seq2seq(keras, cls, args, scores)
    k_model.save(tmp_path / "k.keras")
    model = pynn.load_model(tmp_path / "k.keras")
    want = _outputs(k_model.predict(ids, verbose=0))
    for got, w in zip(_outputs(model.predict(ids, verbose=0)), want):
        np.testing.assert_allclose(got, w, atol=2e-6)
    model.set_weights([w * 0.5 for w in model.get_weights()])
    model.save(tmp_path / "p.keras")
    back = keras.saving.load_model(tmp_path / "p.keras")
    for got, w in zip(_outputs(model.predict(ids, verbose=0)),
                      _outputs(back.predict(ids, verbose=0))):
        np.testing.assert_allclose(got, w, atol=2e-6)
    model.save(tmp_path / "p.pynn")
    again = pynn.load_model(tmp_path / "p.pynn")
    for got, w in zip(_outputs(again.predict(ids, verbose=0)),
                      _outputs(model.predict(ids, verbose=0))):
        np.testing.assert_array_equal(got, w)


@pytest.mark.opencl
@pytest.mark.parametrize("cls, args", [SCORE_LAYERS[3], SCORE_LAYERS[4]])
def test_score_attention_on_opencl_matches_the_cpu(rng, cls, args):
    import pynn

    ids = _seq_ids(rng)
    assert_step_matches_on_opencl(lambda: _seq2seq(pynn, cls, dict(args, dropout=0.2, seed=1)),
                                  ids, rand(rng, (4, 2)))


@pytest.mark.parametrize("call, message", [
    (lambda L, x: L.Attention()(x[0]), r"list \[query, value\]"),
    (lambda L, x: L.Attention()([x[0]] * 4), "list"),
    (lambda L, x: L.Attention()([x[0], x[1][:, :, :3]]), "query and key must have the same dim"),
    (lambda L, x: L.Attention()([x[0], x[1], x[1][:, :2]]), "same steps"),
    (lambda L, x: L.Attention(score_mode="add"), "score_mode must be 'dot' or 'concat'"),
    (lambda L, x: L.AdditiveAttention(dropout=-0.1), r"rate must be a number in \[0, 1\)"),
    (lambda L, x: L.Attention()([x[0][:, 0], x[1][:, 0]]), r"query must have shape"),
])
def test_score_attention_bad_arguments_name_the_layer(rng, call, message):
    from pynn import layers as L

    x = [rand(rng, (2, 3, 4)), rand(rng, (2, 5, 4))]
    with pytest.raises((ValueError, TypeError), match=message):
        call(L, x)


def test_score_attention_keeps_its_call_options(rng):
    from pynn import layers as L

    x = [rand(rng, (2, 3, 4)), rand(rng, (2, 5, 4))]
    layer = L.Attention()
    layer(x, use_causal_mask=True)
    with pytest.raises(ValueError, match="same options"):
        layer(x)


def test_projection_kernels_start_with_keras_spread():
    """Keras's EinsumDense hands its VarianceScaling initializer the kernel's input and
    output axes: a (D, H, K) kernel draws with fans D and H*K, not the 3-D default (D*H,
    D*K), which started pynn's kernels six times narrower at D=512, H=8."""
    keras = _keras()
    from pynn import layers

    x = np.zeros((1, 3, 256), np.float32)
    k_layer = keras.layers.MultiHeadAttention(8, 32, value_dim=16, output_shape=(64,))
    k_layer(x, x)
    layer = layers.MultiHeadAttention(8, 32, value_dim=16, output_shape=(64,))
    layer(x, x)
    want = [float(np.std(keras.ops.convert_to_numpy(w))) for w in k_layer.weights if w.ndim == 3]
    got = [float(np.std(w)) for w in layer.get_weights() if w.ndim == 3]
    np.testing.assert_allclose(got, want, rtol=0.1)


# -- GroupQueryAttention --------------------------------------------------------------------

GQA_CASES = [dict(head_dim=3, num_query_heads=4, num_key_value_heads=2),
             dict(head_dim=2, num_query_heads=3, num_key_value_heads=1, use_gate=True),
             dict(head_dim=4, num_query_heads=2, num_key_value_heads=2, use_bias=False)]


@pytest.mark.parametrize("args", GQA_CASES)
@pytest.mark.parametrize("causal", [False, True])
def test_group_query_attention_matches_keras(rng, args, causal):
    keras = _keras()
    import torch

    from pynn import layers

    query, value = rand(rng, (3, 5, 6)), rand(rng, (3, 7, 6))
    tq, tv = torch.tensor(query, requires_grad=True), torch.tensor(value, requires_grad=True)
    k_layer = keras.layers.GroupQueryAttention(**args)
    want = k_layer(tq, tv, use_causal_mask=causal)
    r = rng.standard_normal(tuple(want.shape)).astype(np.float32)
    (want * torch.tensor(r)).sum().backward()
    layer = layers.GroupQueryAttention(**args)
    layer(query, value, use_causal_mask=causal)
    layer.set_weights([keras.ops.convert_to_numpy(w) for w in k_layer.weights])
    got = layer(query, value, training=True, use_causal_mask=causal)
    np.testing.assert_allclose(np.asarray(got), want.detach().numpy(), atol=2e-6)
    dq, dv = layer.backward(r)
    np.testing.assert_allclose(dq, tq.grad.numpy(), atol=2e-5)
    np.testing.assert_allclose(dv, tv.grad.numpy(), atol=2e-5)
    for v, w in zip(layer.weights, k_layer.weights):
        np.testing.assert_allclose(v.grad, w.value.grad.numpy(), atol=2e-5, err_msg=v.path)
    assert layer.get_config()["num_key_value_heads"] == args["num_key_value_heads"]


def test_group_query_attention_gradients_match_central_differences(float64, rng):
    from pynn import layers

    query, value, key = (rng.standard_normal(s) for s in ((2, 3, 4), (2, 4, 4), (2, 4, 5)))
    layer = layers.GroupQueryAttention(2, 4, 2, dropout=0.3, seed=2, use_gate=True)
    kwargs = dict(key=key, use_causal_mask=True)
    layer(query, value, **kwargs)
    layer.set_weights([rng.uniform(-0.8, 0.8, w.shape) for w in layer.get_weights()])

    def forward():
        layer._offset = 0
        return layer(query, value, training=True, **kwargs)

    r = rng.standard_normal(np.shape(forward()))

    def loss():
        return float(np.sum(np.asarray(forward()) * r))

    forward()
    grads = layer.backward(r)
    for g, x in zip(grads, (query, value, key)):
        np.testing.assert_allclose(g, _numerical(loss, x), rtol=1e-5, atol=1e-8)
    for v in layer.weights:
        np.testing.assert_allclose(v.grad, _numerical(loss, v.value), rtol=1e-5, atol=1e-8,
                                   err_msg=v.path)


def _gqa_model(lib):
    L = lib.layers
    ids = L.Input((7,), dtype="int32")
    x = L.Embedding(13, 6, mask_zero=True)(ids)
    a = L.GroupQueryAttention(3, 4, 2, use_gate=True)(x, x, use_causal_mask=True)
    return (lib.Model if hasattr(lib, "Model") else lib.models.Model)(
        ids, L.Dense(2)(L.GlobalAveragePooling1D()(a)))


def test_group_query_attention_keras_files_both_ways(rng, tmp_path):
    """Keras names the class GroupQueryAttention in its config and GroupedQueryAttention in
    its weights file, and its projections by their attributes (_query_dense, ...)."""
    keras = _keras()
    import pynn

    ids = _ids(rng)
    k_model = _gqa_model(keras)
    k_model.save(tmp_path / "k.keras")
    model = pynn.load_model(tmp_path / "k.keras")
    np.testing.assert_allclose(model.predict(ids, verbose=0), k_model.predict(ids, verbose=0),
                               atol=2e-6)
    model.set_weights([w * 0.5 for w in model.get_weights()])
    model.save(tmp_path / "p.keras")
    back = keras.saving.load_model(tmp_path / "p.keras")
    np.testing.assert_allclose(back.predict(ids, verbose=0), model.predict(ids, verbose=0),
                               atol=2e-6)


@pytest.mark.opencl
def test_group_query_attention_on_opencl_matches_the_cpu(rng):
    import pynn

    ids = _ids(rng)
    assert_step_matches_on_opencl(lambda: _gqa_model(pynn), ids, rand(rng, (len(ids), 2)))


def test_group_query_attention_bad_arguments(rng):
    from pynn import layers as L

    with pytest.raises(ValueError, match="must be divisible by num_key_value_heads"):
        L.GroupQueryAttention(2, 3, 2)
    with pytest.raises(ValueError, match="last dimension of query and value must be equal"):
        L.GroupQueryAttention(2, 2, 1)(rand(rng, (2, 3, 4)), rand(rng, (2, 5, 6)))


def test_keras_erases_the_masks_an_attention_layer_read(rng):
    """Keras 3's MultiHeadAttention deletes its inputs' masks at run time
    (set_keras_mask(query, None), ...), so a residual Add([x, attention(x, x)]) after it
    carries no mask in Keras's execution although Keras's graph declares one, and a second
    attention layer on that sum attends to the padding. pynn keeps the masks its graph
    declares: the first layer's answers agree, the second's differ where Keras attended to
    padding. Pinned here so a Keras that stops erasing them shows."""
    keras = _keras()
    import pynn

    def build(lib):
        L = lib.layers
        ids = L.Input((5,), dtype="int32")
        x = L.Embedding(13, 8, mask_zero=True)(ids)
        first = L.MultiHeadAttention(2, 4)(x, x)
        second = L.MultiHeadAttention(2, 4)(L.Add()([x, first]), L.Add()([x, first]))
        return (lib.Model if hasattr(lib, "Model") else lib.models.Model)(ids, [first, second])

    ids = np.array([[1, 2, 3, 0, 0], [4, 5, 6, 7, 0]], np.int32)
    k_model = build(keras)
    model = build(pynn)
    model.set_weights(k_model.get_weights())
    (k_first, k_second), (first, second) = (k_model.predict(ids, verbose=0),
                                            model.predict(ids, verbose=0))
    valid = ids != 0
    np.testing.assert_allclose(first[valid], k_first[valid], atol=2e-6)
    if np.abs(second[valid] - k_second[valid]).max() < 1e-5:
        pytest.skip("this Keras keeps the masks after MultiHeadAttention: pynn agrees now")
    # pynn's second layer ignores the padding's values; Keras's reads them
    weights = k_model.get_weights()
    weights[0][0] += 3.0   # the padding id's embedding
    model.set_weights(weights)
    np.testing.assert_allclose(model.predict(ids, verbose=0)[1][valid], second[valid],
                               atol=2e-6)
