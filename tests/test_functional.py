"""The functional API and the one Model class (issue 12): graphs of any topology, shared
layers, nested models, several inputs and outputs, their gradients, saving, summaries, errors,
and Keras 3 parity of the same topologies."""

import json
import os
import zipfile

import numpy as np
import pytest

import pynn
from pynn import layers
from tests.reference.gradcheck import check_model


def two_tower(lib, out_dict=False):
    """Two inputs, a layer shared by both, a nested Sequential, two outputs."""
    L = lib.layers
    a = lib.Input((5,), name="a")
    b = lib.Input((3,), name="b")
    shared = L.Dense(4, activation="tanh", name="shared")
    h1 = shared(L.Dense(5, name="pa")(a))
    h2 = shared(L.Dense(5, activation="relu", name="pb")(b))
    inner = lib.Sequential([L.Input((4,)), L.Dense(6, activation="relu", name="i1"),
                            L.Dense(2, name="i2")], name="inner")
    o1 = L.Dense(1, activation="sigmoid", name="out1")(h1)
    o2 = inner(h2)
    outputs = {"out1": o1, "inner": o2} if out_dict else [o1, o2]
    return lib.Model([a, b], outputs, name="two_tower")


def randomize(model, rng):
    """Random weights, biases included: zero biases put a relu after a zeroed row exactly on
    its kink, where a finite difference and the derivative legitimately disagree."""
    model.set_weights([rng.standard_normal(w.shape) * 0.5 for w in model.get_weights()])


def data(rng, n=40):
    x = [rng.standard_normal((n, 5)), rng.standard_normal((n, 3))]
    y = [(rng.random((n, 1)) > 0.5).astype(np.float64), rng.standard_normal((n, 2))]
    return x, y


# -- structure ---------------------------------------------------------------------------------
def test_layers_inputs_outputs_and_get_layer():
    model = two_tower(pynn)
    assert [layer.name for layer in model.layers] == ["a", "b", "pa", "pb", "shared", "out1",
                                                      "inner"]
    assert [t.shape for t in model.inputs] == [(None, 5), (None, 3)]
    assert [t.shape for t in model.outputs] == [(None, 1), (None, 2)]
    assert model.output_names == ["out1", "inner"]
    assert model.get_layer("shared") is model.layers[4]
    assert model.get_layer(index=-1).name == "inner"
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        model.get_layer("nope")
    # weights: per layer in model.layers order, a shared layer once
    assert len(model.weights) == 2 * 6
    assert model.count_params() == 30 + 20 + 24 + 5 + (30 + 14)


def test_sequential_is_a_chain_model_and_pop_rebuilds():
    model = pynn.Sequential([layers.Dense(4, input_dim=3), layers.Dense(2), layers.Dense(1)])
    assert isinstance(model, pynn.Model)
    assert model.built and model.output_shape == (None, 1)
    popped = model.pop()
    assert popped.units == 1 and model.output_shape == (None, 2)
    assert [layer.name for layer in model.layers] == [model.layers[0].name, model.layers[1].name]
    x = np.random.default_rng(0).standard_normal((3, 3)).astype(np.float32)
    w0, b0, w1, b1 = model.get_weights()
    np.testing.assert_allclose(model.predict(x), (x @ w0 + b0) @ w1 + b1, rtol=1e-5)


def test_functional_equals_sequential_with_the_same_weights(seeded):
    seq = pynn.Sequential([layers.Input((6,)), layers.Dense(5, activation="relu"),
                           layers.Dense(3, activation="softmax")])
    x_in = pynn.Input((6,))
    h = layers.Dense(5, activation="relu")(x_in)
    func = pynn.Model(x_in, layers.Dense(3, activation="softmax")(h))
    func.set_weights(seq.get_weights())
    x = seeded.standard_normal((7, 6)).astype(np.float32)
    np.testing.assert_array_equal(func.predict(x), seq.predict(x))


def test_dense_on_rank_3_and_feature_extractor(seeded):
    x_in = pynn.Input((4, 6))
    h = layers.Dense(5, name="proj")(x_in)
    out = layers.Dense(2)(layers.Flatten()(h))
    model = pynn.Model(x_in, out)
    feat = pynn.Model(model.input, model.get_layer("proj").output)
    x = seeded.standard_normal((3, 4, 6)).astype(np.float32)
    w, b = model.get_layer("proj").get_weights()
    np.testing.assert_allclose(feat.predict(x), x @ w + b, rtol=1e-5, atol=1e-6)


# -- gradients ---------------------------------------------------------------------------------
def test_shared_layer_and_nested_model_gradients(float64, seeded):
    model = two_tower(pynn)
    model.compile("sgd", ["binary_crossentropy", "mse"], loss_weights=[0.7, 1.3])
    randomize(model, seeded)
    x, y = data(seeded, 6)
    check_model(model, x, y)


def test_output_without_loss_gets_no_gradient(float64, seeded):
    model = two_tower(pynn, out_dict=True)
    model.compile("sgd", {"inner": "mse"})
    randomize(model, seeded)
    x, y = data(seeded, 5)
    check_model(model, x, [None, y[1]])
    model.fit(x, {"inner": y[1]}, epochs=1, verbose=0)
    assert model.get_layer("out1").kernel.grad is None


def test_input_used_twice_and_output_also_read_downstream(float64, seeded):
    """A tensor with several readers (and a model output read by a later layer): its
    gradients add up in a buffer the plan owns."""
    x_in = pynn.Input((4,))
    h = layers.Dense(4, activation="tanh")(x_in)
    mid = layers.Dense(4, activation="sigmoid", name="mid")(h)
    d1 = layers.Dense(3)(mid)
    d2 = layers.Dense(2)(h)
    model = pynn.Model(x_in, [mid, d1, d2])
    model.compile("sgd", ["mse", "mse", "mse"])
    x = seeded.standard_normal((5, 4))
    check_model(model, x, [seeded.standard_normal((5, 4)), seeded.standard_normal((5, 3)),
                           seeded.standard_normal((5, 2))])


def test_activity_regularizer_gradient_and_penalty(float64, seeded):
    reg = pynn.regularizers.L1L2(l1=0.01, l2=0.03)
    model = pynn.Sequential([layers.Input((4,)),
                             layers.Dense(5, activation="tanh", activity_regularizer=reg),
                             layers.Dense(2)])
    model.compile("sgd", "mse")
    x, y = seeded.standard_normal((6, 4)), seeded.standard_normal((6, 2))
    model._prepare_train()
    w = model.trainable_weights

    def loss_value():
        outs, _ = model._plan.forward([x], True)
        h = np.tanh(x @ model.layers[0].kernel.value + model.layers[0].bias.value)
        activity = (0.01 * np.abs(h).sum() + 0.03 * (h * h).sum()) / x.shape[0]
        return float(np.mean((outs[0] - y) ** 2)) + activity

    from tests.reference.gradcheck import numerical_grad

    for v in w:
        v.grad = None
    outs, saved = model._plan.forward([x], True)
    _, _, grads = model._losses_and_grads([y], outs, True)
    _, penalty = model._plan.backward(grads, saved)
    h = np.tanh(x @ model.layers[0].kernel.value + model.layers[0].bias.value)
    assert penalty == pytest.approx((0.01 * np.abs(h).sum() + 0.03 * (h * h).sum()) / 6)
    for v in w:
        np.testing.assert_allclose(v.grad, numerical_grad(loss_value, v.value), rtol=1e-5,
                                   atol=1e-7)


# -- training loops -----------------------------------------------------------------------------
def test_fit_evaluate_predict_with_lists_and_dicts(seeded):
    model = two_tower(pynn, out_dict=True)
    model.compile("adam", {"out1": "binary_crossentropy", "inner": "mse"},
                  metrics={"out1": ["accuracy"]}, loss_weights={"out1": 0.5, "inner": 2.0})
    x, y = data(seeded)
    history = model.fit({"a": x[0], "b": x[1]}, {"out1": y[0], "inner": y[1]}, epochs=2,
                        batch_size=16, validation_split=0.25, verbose=0)
    assert list(history.history) == ["out1_accuracy", "out1_loss", "inner_loss", "loss",
                                     "val_out1_accuracy", "val_out1_loss", "val_inner_loss",
                                     "val_loss"]
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    assert logs["loss"] == pytest.approx(0.5 * logs["out1_loss"] + 2.0 * logs["inner_loss"],
                                         rel=1e-5)
    values = model.evaluate(x, y, verbose=0)
    assert model.metrics_names == ["loss", "out1_loss", "inner_loss", "out1_accuracy"]
    assert values == pytest.approx([logs[k] for k in model.metrics_names])
    pred = model.predict(x, batch_size=7)
    assert set(pred) == {"out1", "inner"}
    assert pred["out1"].shape == (40, 1) and pred["inner"].shape == (40, 2)
    one = model.predict_on_batch(x)
    np.testing.assert_allclose(one["inner"], pred["inner"], rtol=1e-5, atol=1e-6)
    # train_on_batch with lists
    logs = model.train_on_batch(x, y, return_dict=True)
    assert set(logs) == {"loss", "out1_loss", "inner_loss", "out1_accuracy"}


def test_single_loss_applies_to_every_output(seeded):
    model = two_tower(pynn)
    model.compile("sgd", "mse")
    x, y = data(seeded)
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    assert logs["loss"] == pytest.approx(logs["out1_loss"] + logs["inner_loss"], rel=1e-5)


# -- saving and config --------------------------------------------------------------------------
def test_save_load_round_trips_shared_layers_and_nested_models(tmp_path, seeded):
    model = two_tower(pynn, out_dict=True)
    model.compile("adam", {"out1": "binary_crossentropy", "inner": "mse"},
                  metrics={"out1": ["accuracy"]}, loss_weights={"out1": 0.5, "inner": 2.0})
    x, y = data(seeded)
    model.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "m.pynn"
    model.save(path)
    with zipfile.ZipFile(path) as zf:
        doc = json.loads(zf.read("pynn.json"))
    assert doc["model_class"] == "Model"
    loaded = pynn.load_model(path)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
    got, want = loaded.predict(x), model.predict(x)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    # training resumes identically (optimizer state, loss weights, metrics restored)
    h1 = model.fit(x, y, epochs=1, shuffle=False, verbose=0).history
    h2 = loaded.fit(x, y, epochs=1, shuffle=False, verbose=0).history
    assert h1.keys() == h2.keys()
    for k in h1:
        assert h1[k] == pytest.approx(h2[k])
    clone = pynn.Model.from_config(model.get_config())
    assert len(clone.get_layer("shared")._inbound_nodes) == 2


def test_config_reading_a_tensor_made_later_is_refused():
    config = two_tower(pynn).get_config()
    nodes = config["nodes"]
    nodes[0], nodes[-1] = nodes[-1], nodes[0]
    with pytest.raises(ValueError, match="that no earlier node made"):
        pynn.Model.from_config(config)


# -- summary ------------------------------------------------------------------------------------
def test_summary_has_connected_to_and_counts():
    lines = []
    two_tower(pynn).summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "Connected to" in text
    assert "pa[0][0], pb[0][0]" in text
    assert "shared[1][0]" in text
    assert "Total params: 123" in text and "Non-trainable params: 0" in text


def test_an_input_that_reaches_no_output_is_taken_and_ignored():
    """Keras 3 builds, runs and saves such a model (a Keras file with one once failed to
    load here): the input is fed, checked and ignored, in predict, fit and the plan."""
    rng = np.random.default_rng(5)
    a, spare = pynn.Input((5,), name="a"), pynn.Input((2,), name="spare")
    model = pynn.Model([a, spare], layers.Dense(3)(a))
    alone = pynn.Model(a, model.layers[-1](a))
    xa, xs = rng.standard_normal((4, 5)), rng.standard_normal((4, 2))
    want = alone.predict(xa, verbose=0)
    np.testing.assert_array_equal(model.predict([xa, xs], verbose=0), want)
    np.testing.assert_array_equal(model.predict_on_batch([xa, xs]), want)
    model.compile("sgd", "mse")
    model.fit([xa, xs], rng.standard_normal((4, 3)), verbose=0)


# -- errors ---------------------------------------------------------------------------------------
def test_errors_name_the_layer_and_the_shapes():
    a = pynn.Input((5,), name="ea")
    other = pynn.Input((5,), name="other")
    d = layers.Dense(3, name="d")
    h = d(a)
    with pytest.raises(ValueError, match=r"Input 'other' of shape \(None, 5\), which is not "
                                         r"among the model's inputs"):
        pynn.Model(a, layers.Dense(2)(layers.Dense(3)(other)))
    unused = pynn.Input((2,), name="unused")
    with pytest.raises(ValueError, match=r"expects input shape \(None, 2\) \(input 'unused'\), "
                                         r"got x with shape \(None, 3\)"):
        # an input that reaches no output is taken (Keras 3's rule), its shape still checked
        pynn.Model([a, unused], h).predict([np.ones((4, 5)), np.ones((4, 3))], verbose=0)
    with pytest.raises(TypeError, match=r"Layer 'mix' \(Concatenate\): called on ndarray of "
                                        r"shape \(2, 5\) among symbolic tensors"):
        layers.Concatenate(name="mix")([a, np.zeros((2, 5))])
    with pytest.raises(ValueError, match=r"Add 'plus': the inputs have incompatible shapes "
                                         r"\[\(None, 5\), \(None, 4\)\]"):
        layers.Add(name="plus")([a, pynn.Input((4,))])
    with pytest.raises(ValueError, match=r"Layer 'd' \(Dense\) expected input shape "
                                         r"\(None, 5\), got \(None, 4\)"):
        d(pynn.Input((4,)))
    with pytest.raises(TypeError, match="must be symbolic tensors"):
        pynn.Model(a, np.zeros(3))
    with pytest.raises(ValueError, match="give both inputs= and outputs="):
        pynn.Model(a)


def test_fit_data_errors(seeded):
    model = two_tower(pynn, out_dict=True)
    model.compile("sgd", "mse")
    x, y = data(seeded)
    with pytest.raises(ValueError, match=r"the model has 2 inputs \['a', 'b'\]"):
        model.fit(x[0], y, verbose=0)
    with pytest.raises(ValueError, match=r"got keys \['a', 'c'\]"):
        model.fit({"a": x[0], "c": x[1]}, y, verbose=0)
    with pytest.raises(ValueError, match="different numbers of samples"):
        model.fit([x[0], x[1][:10]], y, verbose=0)
    with pytest.raises(ValueError, match=r"input 'b'"):
        model.fit([x[0], x[0]], y, verbose=0)
    with pytest.raises(ValueError, match=r"compile: loss names outputs \['zzz'\]"):
        model.compile("sgd", {"zzz": "mse"})


# -- OpenCL ---------------------------------------------------------------------------------------
@pytest.mark.opencl
def test_functional_model_trains_the_same_on_opencl(backend_opencl, seeded):
    x, y = data(seeded)
    results = []
    for device in ("cpu", "opencl"):
        pynn.set_device(device)
        try:
            pynn.utils.set_random_seed(7)
            model = two_tower(pynn)
            model.compile("adam", ["binary_crossentropy", "mse"], loss_weights=[0.5, 2.0])
            model.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
            results.append((model.get_weights(), model.predict(x)))
        finally:
            pynn.set_device("cpu")
    for a, b in zip(results[0][0], results[1][0]):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


# -- Keras parity ---------------------------------------------------------------------------------
def _keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except Exception as exc:
        pytest.skip(f"keras (torch backend) is not available: {exc}")
    if keras.backend.backend() != "torch":
        pytest.skip("keras does not run on torch")
    return keras


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_keras_parity_two_inputs_two_outputs_shared_and_nested(seeded):
    keras = _keras()
    k_model = two_tower(keras)
    p_model = two_tower(pynn)
    assert [w.shape for w in p_model.get_weights()] == [w.shape for w in k_model.get_weights()]
    p_model.set_weights(k_model.get_weights())
    x, y = data(seeded)
    x = [a.astype(np.float32) for a in x]
    y = [a.astype(np.float32) for a in y]
    for got, want in zip(p_model.predict(x), k_model.predict(x, verbose=0)):
        assert _rel(got, keras.ops.convert_to_numpy(want)) <= 1e-5
    for m in (k_model, p_model):
        m.compile(optimizer=(keras if m is k_model else pynn).optimizers.Adam(0.01),
                  loss=["binary_crossentropy", "mse"], loss_weights=[0.5, 2.0])
    k_model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    p_model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for got, want in zip(p_model.get_weights(), k_model.get_weights()):
        assert _rel(got, want) <= 1e-3


# -- pictures -------------------------------------------------------------------------------------
def test_model_to_dot_and_plot_model(tmp_path):
    model = two_tower(pynn)
    dot = pynn.utils.model_to_dot(model, show_shapes=True)
    assert dot.count("->") == 6  # a->pa, b->pb, pa->shared, pb->shared, shared->out1/inner
    assert "output: (None, 4)" in dot and "shared (Dense)" in dot
    path = pynn.utils.plot_model(model, tmp_path / "m.dot")
    assert open(path).read().startswith('digraph "two_tower"')
    pytest.importorskip("matplotlib")
    png = pynn.utils.plot_model(model, tmp_path / "m.png", show_shapes=True, dpi=60)
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    seq = pynn.Sequential([layers.Input((3,)), layers.Dense(2)])
    assert pynn.utils.model_to_dot(seq).count("->") == 1
    with pytest.raises(ValueError, match="rankdir"):
        pynn.utils.plot_model(model, tmp_path / "x.png", rankdir="XY")


def test_write_png_round_trips(tmp_path):
    import struct
    import zlib

    image = np.random.default_rng(3).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    path = tmp_path / "a.png"
    pynn.utils.write_png(path, image)
    data = open(path, "rb").read()
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (5, 7)
    idat = data.index(b"IDAT")
    length = struct.unpack(">I", data[idat - 4:idat])[0]
    raw = np.frombuffer(zlib.decompress(data[idat + 4:idat + 4 + length]), np.uint8)
    np.testing.assert_array_equal(raw.reshape(7, 16)[:, 1:].reshape(7, 5, 3), image)
    with pytest.raises(ValueError, match="uint8"):
        pynn.utils.write_png(path, image.astype(np.float32))


def test_freezing_a_nested_model_keeps_its_weights(seeded):
    inner = pynn.Sequential([layers.Input((4,)), layers.Dense(3, activation="tanh")],
                            name="frozen_inner")
    x_in = pynn.Input((4,))
    model = pynn.Model(x_in, layers.Dense(2)(inner(x_in)))
    inner.trainable = False
    model.compile("adam", "mse")
    before = inner.get_weights()
    assert len(model.trainable_weights) == 2 and len(model.non_trainable_weights) == 2
    model.fit(seeded.standard_normal((16, 4)), seeded.standard_normal((16, 2)), epochs=2,
              verbose=0)
    for a, b in zip(before, inner.get_weights()):
        np.testing.assert_array_equal(a, b)
    lines = []
    model.summary(print_fn=lines.append)
    assert "Non-trainable params: 15" in "\n".join(lines)


def merge_net(lib):
    """Concatenate, Add, Multiply and Dot in one graph, with a layer shared by two branches."""
    L = lib.layers
    x = lib.Input((6,), name="x")
    shared = L.Dense(6, activation="tanh", name="shared2")
    a = shared(L.Dense(6, name="left")(x))
    # tanh, not relu: a row of zeros would make Dot(normalize=True)'s gradient NaN in torch
    b = shared(L.Dense(6, activation="tanh", name="right")(x))
    s = L.Add(name="sum")([a, b, x])
    c = L.Concatenate(name="cat")([s, L.Multiply(name="prod")([a, b])])
    d = L.Dot(axes=1, normalize=True, name="cos")([a, b])
    out = L.Dense(3, activation="softmax", name="cls")(L.Concatenate(name="cat2")([c, d]))
    return lib.Model(x, out)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_keras_parity_merge_layers_in_a_graph(seeded):
    keras = _keras()
    keras.utils.set_random_seed(5)
    k_model, p_model = merge_net(keras), merge_net(pynn)
    p_model.set_weights(k_model.get_weights())
    x = seeded.standard_normal((40, 6)).astype(np.float32)
    y = seeded.integers(0, 3, 40)
    want = keras.ops.convert_to_numpy(k_model.predict(x, verbose=0))
    assert _rel(p_model.predict(x), want) <= 1e-5
    for m, lib in ((k_model, keras), (p_model, pynn)):
        m.compile(optimizer=lib.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
        m.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for got, want in zip(p_model.get_weights(), k_model.get_weights()):
        assert _rel(got, want) <= 1e-3


def test_merge_graph_gradients(float64, seeded):
    model = merge_net(pynn)
    model.compile("sgd", "sparse_categorical_crossentropy")
    randomize(model, seeded)
    check_model(model, seeded.standard_normal((5, 6)), seeded.integers(0, 3, 5))


def test_integer_inputs_pass_as_integers():
    x = pynn.Input((4,), dtype="int32", name="ids")
    model = pynn.Model(x, layers.Dense(2)(x))
    assert model.inputs[0].dtype == "int32"
    got = model._prepare_inputs(np.array([[1.0, 2, 3, 4]]), "predict")[0]
    assert got.dtype == np.int32
    with pytest.raises(ValueError, match="not whole numbers"):
        model.predict(np.array([[1.5, 2, 3, 4]]))
    with pytest.raises(ValueError, match="outside its range"):
        model.predict(np.array([[2**40, 2, 3, 4]]))
    with pytest.raises(ValueError, match="int32 or int64"):
        pynn.Input((4,), dtype="uint8")


# -- the inference plan --------------------------------------------------------------------------
def bn_net(lib=pynn):
    L = lib.layers
    x = lib.Input((6, 6, 3))
    h = L.Conv2D(5, 3, padding="same", use_bias=False, name="c1")(x)
    h = L.Activation("relu", name="r1")(L.BatchNormalization(name="bn1")(h))
    h = L.Conv2D(4, 3, strides=2, name="c2")(h)               # bias, no activation after BN
    h = L.BatchNormalization(center=False, name="bn2")(h)
    h = L.Flatten()(h)
    h = L.Dense(7, name="d1")(h)
    d = L.BatchNormalization(scale=False, name="bn3")(h)
    return lib.Model(x, [L.Dense(2, activation="softmax", name="out")(d), h])


@pytest.mark.parametrize("device", ["cpu", pytest.param("opencl", marks=pytest.mark.opencl)])
def test_batch_norm_folds_into_the_layer_before_it(device, seeded, request):
    if device == "opencl":
        request.getfixturevalue("backend_opencl")
    pynn.set_device(device)
    try:
        model = bn_net()
        randomize(model, seeded)  # moving statistics and gamma/beta far from 1 and 0
        model.set_weights([np.abs(w) + 0.5 if "moving_variance" in v.path else w
                           for v, w in zip(model.weights, model.get_weights())])
        steps = model._plan.inference_steps()
        kinds = [type(st.layer).__name__ for st in steps]
        # c1+bn1+r1 and c2+bn2 fold; d1 is read twice (an output too), so bn3 stays
        assert kinds.count("_FoldedLayer") == 2 and kinds.count("BatchNormalization") == 1
        x = seeded.standard_normal((5, 6, 6, 3)).astype(np.float32)
        b = pynn.backend.current()
        unfolded, _ = model._plan.forward([b.asarray(x)], False)
        for got, want in zip(model.predict(x), unfolded):
            np.testing.assert_allclose(got, b.to_numpy(want), rtol=2e-5, atol=2e-6)
        # training moves the weights and statistics: the folded kernels follow
        model.compile("adam", ["sparse_categorical_crossentropy", "mse"])
        model.fit(x, [seeded.integers(0, 2, 5), seeded.standard_normal((5, 7))], epochs=2,
                  verbose=0)
        unfolded, _ = model._plan.forward([b.asarray(x)], False)
        for got, want in zip(model.predict_on_batch(x), unfolded):
            np.testing.assert_allclose(got, b.to_numpy(want), rtol=2e-5, atol=2e-6)
    finally:
        pynn.set_device("cpu")


def mobile_net_block(lib=pynn):
    """MobileNetV2's pattern: depthwise and 1x1 convs, each with BatchNormalization and a
    ReLU layer (capped at 6, leaky, or with a threshold that no epilogue has)."""
    L = lib.layers
    x = lib.Input((9, 7, 5))
    h = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    h = L.ReLU(6.0, name="r6")(L.BatchNormalization(name="bn1")(h))
    h = L.Conv2D(11, 1, name="pw")(h)
    h = L.ReLU(negative_slope=0.2, name="leaky")(L.BatchNormalization(name="bn2")(h))
    h = L.DepthwiseConv2D(3, strides=2, depth_multiplier=2, name="dw2")(h)
    h = L.ReLU(threshold=0.1, name="thr")(L.BatchNormalization(name="bn3")(h))
    return lib.Model(x, L.GlobalAveragePooling2D()(h))


@pytest.mark.parametrize("device", ["cpu", pytest.param("opencl", marks=pytest.mark.opencl)])
def test_depthwise_batch_norm_and_relu_layers_fold(device, seeded, request):
    """DepthwiseConv2D folds its BatchNormalization as Conv2D does (the scale along its
    (C, depth_multiplier) output channels), and a ReLU layer that is relu, relu6 or
    leaky_relu joins the epilogue; a thresholded ReLU stays its own step."""
    if device == "opencl":
        request.getfixturevalue("backend_opencl")
    pynn.set_device(device)
    try:
        model = mobile_net_block()
        randomize(model, seeded)
        model.set_weights([np.abs(w) + 0.5 if "moving_variance" in v.path else w
                           for v, w in zip(model.weights, model.get_weights())])
        steps = model._plan.inference_steps()
        folded = [(st.layer.layer.name, st.layer.activation, st.layer.alpha) for st in steps
                  if type(st.layer).__name__ == "_FoldedLayer"]
        assert folded == [("dw", "relu6", 0.0), ("pw", "leaky_relu", 0.2),
                          ("dw2", "linear", 0.0)]
        assert [type(st.layer).__name__ for st in steps].count("ReLU") == 1
        x = (seeded.standard_normal((4, 9, 7, 5)) * 3).astype(np.float32)
        b = pynn.backend.current()
        unfolded, _ = model._plan.forward([b.asarray(x)], False)
        np.testing.assert_allclose(model.predict(x), b.to_numpy(unfolded[0]), rtol=2e-5,
                                   atol=2e-6)
    finally:
        pynn.set_device("cpu")


def test_activity_regularization_layer_adds_its_penalty(float64, seeded):
    x_in = pynn.Input((4,))
    h = layers.Dense(3, activation="tanh")(x_in)
    model = pynn.Model(x_in, layers.Dense(2)(layers.ActivityRegularization(l1=0.1, l2=0.2)(h)))
    model.compile("sgd", "mse")
    x, y = seeded.standard_normal((6, 4)), seeded.standard_normal((6, 2))
    model._prepare_train()
    outs, saved = model._plan.forward([x], True)
    _, _, grads = model._losses_and_grads([y], outs, True)
    _, penalty = model._plan.backward(grads, saved)
    hv = np.tanh(x @ model.layers[1].kernel.value + model.layers[1].bias.value)
    assert penalty == pytest.approx((0.1 * np.abs(hv).sum() + 0.2 * (hv * hv).sum()) / 6)
    config = model.get_layer(index=2).get_config()
    assert config["l1"] == 0.1 and config["l2"] == 0.2
    clone = pynn.Model.from_config(model.get_config())
    assert clone.get_layer(index=2).activity_regularizer.l2 == 0.2


# -- sample and class weights ---------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_sample_weight_and_class_weight_match_keras(seeded):
    keras = _keras()
    x = seeded.standard_normal((40, 5)).astype(np.float32)
    y = seeded.integers(0, 3, 40)
    sw = seeded.random(40).astype(np.float32)

    def build(lib):
        return lib.Sequential([lib.layers.Input((5,)), lib.layers.Dense(4, activation="tanh"),
                               lib.layers.Dense(3, activation="softmax")])

    k_model, p_model = build(keras), build(pynn)
    p_model.set_weights(k_model.get_weights())
    for m, lib in ((k_model, keras), (p_model, pynn)):
        m.compile(lib.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
        m.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0, sample_weight=sw)
        m.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0,
              class_weight={0: 1.0, 1: 2.0, 2: 0.5})
    for got, want in zip(p_model.get_weights(), k_model.get_weights()):
        assert _rel(got, want) <= 1e-4
    assert p_model.evaluate(x, y, sample_weight=sw, verbose=0) == pytest.approx(
        k_model.evaluate(x, y, sample_weight=sw, verbose=0), rel=1e-5)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_weighted_metrics_match_keras(seeded):
    """compile(weighted_metrics=...): sample and class weights reach those metrics only; a
    name a plain metric already took logs as weighted_<name>, as Keras names it."""
    keras = _keras()
    x = seeded.standard_normal((40, 5)).astype(np.float32)
    y = seeded.integers(0, 3, 40)
    sw = seeded.random(40).astype(np.float32)

    def build(lib):
        return lib.Sequential([lib.layers.Input((5,)), lib.layers.Dense(4, activation="tanh"),
                               lib.layers.Dense(3, activation="softmax")])

    k_model, p_model = build(keras), build(pynn)
    p_model.set_weights(k_model.get_weights())
    histories = []
    for m, lib in ((k_model, keras), (p_model, pynn)):
        m.compile(lib.optimizers.Adam(0.01), "sparse_categorical_crossentropy",
                  metrics=["accuracy"], weighted_metrics=["accuracy"])
        first = m.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
                      sample_weight=sw).history
        second = m.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0,
                       class_weight={0: 1.0, 1: 2.0, 2: 0.5}).history
        histories.append((first, second))
    for (k_hist, p_hist) in zip(histories[0], histories[1]):
        assert sorted(p_hist) == sorted(k_hist) == ["accuracy", "loss", "weighted_accuracy"]
        for key in k_hist:
            np.testing.assert_allclose(p_hist[key], k_hist[key], rtol=1e-4, atol=1e-6)
    assert histories[1][0]["weighted_accuracy"] != histories[1][0]["accuracy"]
    restored = pynn.Sequential.from_config(p_model.get_config())
    restored._compile_from_config(p_model._compile_config())
    assert restored._compile_config()["weighted_metrics"] == ["accuracy"]


def test_weight_arguments_are_checked(seeded):
    model = pynn.Sequential([layers.Input((3,)), layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    x, y = seeded.standard_normal((6, 3)), seeded.integers(0, 2, 6)
    with pytest.raises(ValueError, match=r"sample_weight must be real numbers of shape \(6,\)"):
        model.fit(x, y, sample_weight=np.ones(5), verbose=0)
    with pytest.raises(ValueError, match="finite and >= 0"):
        model.fit(x, y, sample_weight=-np.ones(6), verbose=0)
    with pytest.raises(ValueError, match="class_weight must be a non-empty dict"):
        model.fit(x, y, class_weight=[1, 2], verbose=0)


def test_per_class_metrics_log_arrays(seeded):
    x = seeded.standard_normal((20, 5)).astype(np.float32)
    y = pynn.utils.to_categorical(seeded.integers(0, 3, 20), 3)
    model = pynn.Sequential([layers.Input((5,)), layers.Dense(3, activation="softmax")])
    model.compile("adam", "categorical_crossentropy", metrics=[pynn.metrics.F1Score()])
    h = model.fit(x, y, epochs=1, verbose=0)
    assert h.history["f1_score"][0].shape == (3,)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_keras_parity_activity_regularization(seeded):
    keras = _keras()

    def build(lib):
        L = lib.layers
        return lib.Sequential([L.Input((5,)), L.Dense(4, activation="tanh"),
                               L.ActivityRegularization(l1=0.05, l2=0.1),
                               L.Dense(3, activity_regularizer=lib.regularizers.L2(0.02))])

    k_model, p_model = build(keras), build(pynn)
    p_model.set_weights(k_model.get_weights())
    x = seeded.standard_normal((32, 5)).astype(np.float32)
    y = seeded.standard_normal((32, 3)).astype(np.float32)
    for m, lib in ((k_model, keras), (p_model, pynn)):
        m.compile(optimizer=lib.optimizers.SGD(0.1), loss="mse")
    k_hist = k_model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0).history
    p_hist = p_model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0).history
    for got, want in zip(p_model.get_weights(), k_model.get_weights()):
        assert _rel(got, want) <= 1e-4
    assert p_hist["loss"] == pytest.approx(k_hist["loss"], rel=1e-4)


# -- a MaxPooling2D hands the Conv2D below it a PoolGrad (functional._fuse_conv_pool) ----------
def conv_pool_net(policy=None):
    """Three Conv2D -> MaxPooling2D pairs: a first layer (2 channels: float32 under
    mixed_bfloat16 too), a relu conv of 8 channels (bf16 products under mixed_bfloat16) and
    a linear one."""
    x_in = pynn.Input((12, 10, 2))
    h = layers.Conv2D(8, 3, padding="same", activation="relu", dtype=policy)(x_in)
    h = layers.MaxPooling2D(dtype=policy)(h)
    h = layers.Conv2D(8, 3, padding="same", activation="relu", dtype=policy)(h)
    h = layers.MaxPooling2D(dtype=policy)(h)
    h = layers.Conv2D(4, 2, activation="linear", dtype=policy)(h)
    h = layers.MaxPooling2D((2, 1), dtype=policy)(h)
    out = layers.Dense(2, dtype=policy)(layers.Flatten()(h))
    return pynn.Model(x_in, out)


def pool_grad_flags(model):
    return [type(st.layer).__name__ for st in model._plan.steps if st.pool_grad]


def test_conv_pool_fusion_gradients(float64, seeded, monkeypatch):
    """Finite differences through the PoolGrads: the first conv's (no input gradient)
    takes the CPU op's fused pass, the others the pool's arrays or its backward."""
    from pynn._native import pool

    model = conv_pool_net()
    assert pool_grad_flags(model) == ["MaxPooling2D"] * 3
    model.compile("sgd", "mse")
    randomize(model, seeded)
    calls, real = [], pool.maxpool2d_backward
    monkeypatch.setattr(pool, "maxpool2d_backward", lambda *a: calls.append(1) or real(*a))
    check_model(model, seeded.standard_normal((3, 12, 10, 2)), seeded.standard_normal((3, 2)))
    assert len(calls) <= 2   # the one backward check_model runs: not the first pool's

@pytest.mark.parametrize("policy", [None, "mixed_bfloat16"])
def test_conv_pool_fusion_same_bits_as_the_pool_backward(seeded, monkeypatch, policy):
    from pynn.layers import functional

    models = []
    for fuse in (True, False):
        monkeypatch.setattr(functional, "FUSE_CONV_POOL", fuse)
        pynn.utils.set_random_seed(7)
        model = conv_pool_net(policy)
        model.compile("adam", "mse")
        models.append(model)
    assert pool_grad_flags(models[0]) and not pool_grad_flags(models[1])
    x = seeded.standard_normal((5, 12, 10, 2)).astype(np.float32)
    y = seeded.standard_normal((5, 2)).astype(np.float32)
    for _ in range(3):
        losses = [m.train_on_batch(x, y) for m in models]
        assert losses[0] == losses[1]
        for a, b in zip(models[0].get_weights(), models[1].get_weights()):
            np.testing.assert_array_equal(a, b)


def test_conv_pool_fusion_only_where_the_pool_alone_reads_the_conv():
    def flags(build):
        x_in = pynn.Input((8, 8, 3))
        return pool_grad_flags(pynn.Model(x_in, build(x_in)))

    conv = lambda **kw: layers.Conv2D(4, 3, padding="same", activation="relu", **kw)  # noqa
    pool = layers.MaxPooling2D
    flat = layers.Flatten()
    # the conv's output read twice, or a model output too
    assert flags(lambda x: layers.Concatenate()([flat(pool()(h := conv()(x))), flat(h)])) == []
    assert flags(lambda x: [pool()(h := conv()(x)), h]) == []
    # an activity regularizer on the conv; a pool over something else; a shared conv
    assert flags(lambda x: pool()(conv(activity_regularizer="l2")(x))) == []
    assert flags(lambda x: pool()(layers.Activation("relu")(x))) == []
    shared = layers.Conv2D(3, 3, padding="same")
    assert flags(lambda x: layers.Add()([pool()(shared(x)), pool()(shared(x))])) == []
    assert flags(lambda x: pool()(conv()(x))) == ["MaxPooling2D"]


def test_conv_pool_fusion_in_forward_only_where_no_y_is_needed():
    """The conv's step makes the pool's output itself (conv2d_pool_forward, no y kept) for
    relu or linear under windows that tile its output; otherwise only the PoolGrad."""
    def fused(act, **pool_kw):
        x_in = pynn.Input((8, 8, 3))
        h = layers.MaxPooling2D(**pool_kw)(layers.Conv2D(4, 3, activation=act)(x_in))
        steps = pynn.Model(x_in, h)._plan.steps
        return [st.pools is not None for st in steps], [st.pooled for st in steps]

    assert fused("relu") == ([True, False], [False, True])
    assert fused("linear", pool_size=(2, 3), strides=(3, 3)) == ([True, False], [False, True])
    for act, kw in [("tanh", {}), ("relu", {"strides": 1}), ("relu", {"padding": "same"})]:
        assert fused(act, **kw) == ([False, False], [False, False]), (act, kw)


def test_conv_pool_pair_trains_where_the_conv_subsamples(seeded, monkeypatch):
    """A strided 1x1 conv under a pool: the pair (no y kept) trains as the ops in turn."""
    from pynn.layers import functional

    models = []
    for fuse in (True, False):
        monkeypatch.setattr(functional, "FUSE_CONV_POOL", fuse)
        pynn.utils.set_random_seed(3)
        x_in = pynn.Input((12, 10, 3))
        h = layers.Conv2D(8, 3, padding="same", activation="relu")(x_in)
        h = layers.Conv2D(6, 1, strides=2, activation="relu")(h)
        h = layers.MaxPooling2D()(h)
        model = pynn.Model(x_in, layers.Dense(2)(layers.Flatten()(h)))
        model.compile("adam", "mse")
        models.append(model)
    x = seeded.standard_normal((4, 12, 10, 3)).astype(np.float32)
    y = seeded.standard_normal((4, 2)).astype(np.float32)
    for _ in range(3):
        losses = [m.train_on_batch(x, y) for m in models]
        np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    for a, b in zip(models[0].get_weights(), models[1].get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def act_below_flags(model):
    return [st.act_below.name if st.act_below is not None else None
            for st in model._plan.steps]


def dense_relu_net(policy=None, sequence=False, wide=520):
    x_in = pynn.Input((5, 17) if sequence else (17,))
    h = layers.Dense(33, activation="relu", name="d1", dtype=policy)(x_in)
    h = layers.Dense(wide, activation="relu", name="d2", dtype=policy)(h)
    h = layers.Dense(21, activation="relu", name="d3", dtype=policy)(h)
    return pynn.Model(x_in, layers.Dense(3, name="head", dtype=policy)(h))


@pytest.mark.parametrize("policy,sequence", [(None, False), (None, True),
                                             ("mixed_bfloat16", False)])
def test_dense_activation_fusion_same_bits_as_the_two_ops(seeded, monkeypatch, policy,
                                                          sequence):
    """Each Dense takes its input gradient through the relu and bias below it (an
    ActGrad): the same losses and weights as the separate ops, step after step."""
    from pynn.layers import functional

    models = []
    for fuse in (True, False):
        monkeypatch.setattr(functional, "FUSE_DENSE_ACTIVATION", fuse)
        pynn.utils.set_random_seed(5)
        model = dense_relu_net(policy, sequence)
        model.compile("adam", "mse")
        models.append(model)
    assert act_below_flags(models[0]) == [None, "d1", "d2", "d3"]
    assert act_below_flags(models[1]) == [None] * 4
    models[1].set_weights(models[0].get_weights())
    x = seeded.standard_normal((67, 5, 17) if sequence else (67, 17)).astype(np.float32)
    y = seeded.standard_normal((67, 5, 3) if sequence else (67, 3)).astype(np.float32)
    for _ in range(3):
        losses = [m.train_on_batch(x, y) for m in models]
        assert losses[0] == losses[1]
        for a, b in zip(models[0].get_weights(), models[1].get_weights()):
            np.testing.assert_array_equal(a, b)


def test_dense_activation_fusion_gradients(float64, seeded):
    """Finite differences through the ActGrads (float64; few units, so that no relu sits
    within the difference step of its kink)."""
    model = dense_relu_net(wide=40)
    assert act_below_flags(model) == [None, "d1", "d2", "d3"]
    model.compile("sgd", "mse")
    randomize(model, seeded)
    check_model(model, seeded.standard_normal((4, 17)), seeded.standard_normal((4, 3)))


def test_dense_activation_fusion_only_where_the_dense_alone_reads_a_relu_with_bias():
    def flags(build):
        x_in = pynn.Input((6,))
        return act_below_flags(pynn.Model(x_in, build(x_in)))

    relu = lambda **kw: layers.Dense(4, activation="relu", **kw)  # noqa: E731
    dense = lambda: layers.Dense(3)  # noqa: E731
    assert flags(lambda x: dense()(relu(name="below")(x))) == [None, "below"]
    # read twice, a model output too, no bias, another activation, an activity regularizer,
    # a shared layer below
    assert flags(lambda x: layers.Add()([dense()(h := relu()(x)), dense()(h)]))[1:3] == \
        [None, None]
    assert flags(lambda x: [dense()(h := relu()(x)), h])[1] is None
    assert flags(lambda x: dense()(relu(use_bias=False)(x)))[1] is None
    assert flags(lambda x: dense()(layers.Dense(4, activation="tanh")(x)))[1] is None
    assert flags(lambda x: dense()(relu(activity_regularizer="l2")(x)))[1] is None
    shared = layers.Dense(6, activation="relu")
    assert all(f is None for f in flags(lambda x: dense()(shared(shared(x)))))


def test_predict_a_model_whose_steps_are_unknown():
    """Input((None, F)): predict takes each call's step count from the answers (it allocated
    its outputs from the model's shapes, and None failed), batch by batch, empty inputs too."""
    x = pynn.Input((None, 4))
    y = layers.Dense(3)(x)
    model = pynn.Model(x, [y, layers.GlobalAveragePooling1D()(y)])
    for steps in (5, 9):
        data = np.random.default_rng(steps).standard_normal((5, steps, 4)).astype(np.float32)
        got = model.predict(data, batch_size=2, verbose=0)
        assert [g.shape for g in got] == [(5, steps, 3), (5, 3)]
        for g, w in zip(got, model(data)):
            np.testing.assert_allclose(g, np.asarray(w), rtol=1e-6, atol=1e-6)
    assert model.predict(np.zeros((0, 5, 4), np.float32), verbose=0)[0].shape[0] == 0
