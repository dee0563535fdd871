"""pynn.onnx.load / pynn.load_model('m.onnx'): ONNX files in as pynn functional models.

(1) pynn -> ONNX -> pynn for the architectures tests/test_onnx_export.py builds (its own
builders, run with a check that also loads the exported file back): the loaded model predicts
what the original and onnxruntime predict; the architectures whose ONNX form uses ops pynn
does not read back are refused by name, never answered wrongly. (2) PyTorch models exported
with torch.onnx.export(dynamo=False): pynn equals torch and onnxruntime (<= 1e-5). (3) A loaded
model trains (the loss falls on a fixed batch) and saves and loads as .pynn and .keras.
(4) Hostile and unsupported files give a ValueError naming the node. (5) OpenCL.

Skipped when onnx or onnxruntime is missing; the PyTorch part when torch is missing.
"""

import io
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import pynn
import pynn.onnx
from onnx import TensorProto, helper, numpy_helper
from pynn import layers as L
from tests import test_onnx_export as E

TOL = 1e-5


def assert_close(got, want, what=""):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, want {want.shape}"
    # NaN where the reference has NaN (Keras's masked mean over padding alone is 0 / 0)
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{what}: NaN elsewhere"
    got, want = got[~np.isnan(want)], want[~np.isnan(want)]
    err = float(np.max(np.abs(got.astype(np.float64) - want), initial=0.0))
    bound = TOL * max(1.0, float(np.max(np.abs(want), initial=0.0)))
    assert err <= bound, f"{what}: max |pynn - reference| = {err:.3g} > {bound:.3g}"


def loaded_predictions(proto, xs):
    model = pynn.onnx.load(proto)
    got = model.predict(xs if len(xs) > 1 else xs[0], verbose=0)
    return model, got if isinstance(got, list) else [got]


# -- (1) round trips of pynn's exporter -------------------------------------------------------
def round_tripping(checked):
    original = E.check_export

    def check(model, xs, opset=None, seed=0):
        proto = original(model, xs, opset=opset, seed=seed)
        xs = xs if isinstance(xs, list) else [xs]
        want = model.predict(xs if len(xs) > 1 else xs[0], verbose=0)
        want = want if isinstance(want, list) else [want]
        runtime = E.run_onnx(proto, xs)
        _, got = loaded_predictions(proto, xs)
        assert len(got) == len(want)
        for k, (g, w, r) in enumerate(zip(got, want, runtime)):
            assert_close(g, w, f"output {k} against pynn's original")
            assert_close(g, r, f"output {k} against onnxruntime")
        checked.append(proto)
        return proto

    return check


def _expanded(test):
    """(id, kwargs) of every case of export test ``test`` (its parametrize marks crossed)."""
    fn = getattr(E, test)
    combos = [{}]
    for mark in getattr(fn, "pytestmark", []):
        if mark.name != "parametrize":
            continue
        names = mark.args[0]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else names
        combos = [{**c, **dict(zip(names, v if len(names) > 1 else (v,)))}
                  for c in combos for v in mark.args[1]]
    return [(f"{test[5:]}[{'-'.join(map(str, c.values()))}]", c) for c in combos]


def _export_tests():
    """The export tests that check their models with check_export and need no fixture
    other than tmp_path."""
    import inspect

    names = []
    for name in sorted(dir(E)):
        fn = getattr(E, name)
        if not name.startswith("test_") or not callable(fn):
            continue
        free = set(inspect.signature(fn).parameters) - {"tmp_path"}
        marked = {a for m in getattr(fn, "pytestmark", []) if m.name == "parametrize"
                  for a in (m.args[0].split(",") if isinstance(m.args[0], str) else m.args[0])}
        if "check_export(" in inspect.getsource(fn) and free <= {a.strip() for a in marked}:
            names.append(name)
    return names


# Exported architectures whose graphs pynn does not read back (sparsemax's TopK, the masked
# recurrent layers' per-sample step counts, Atan, Reshapes that fold the batch into the
# steps): each refused by name.
REFUSED = {
    "keras3_row_activations[sparsemax-13]", "keras3_row_activations[sparsemax-17]",
    "masked_stacks_states_and_dynamic_lengths[]",
    "time_distributed[conv2d]", "merged_masks_follow_pynns_rules[Concatenate-False]",
    "merged_masks_follow_pynns_rules[Concatenate1-False]",
    *(f"spectral_layers[{name}-{opset}]" for opset in (13, None) for name in (
        "mel_db", "mel_hamming_top_db", "stft_imag", "stft_log", "stft_psd_expand",
        "stft_real_first_expand", "stft_stft_first")),
}
REFUSED_TESTS = {"category_encoding_and_discretization", "masked_bidirectional",
                 "masked_recurrent_layers_skip_the_masked_steps", "stft_angle_is_atan_by_quadrant",
                 "time_distributed_recurrent_layers_read_each_steps_mask"}


def _refused(case_id):
    return case_id in REFUSED or case_id.split("[")[0] in REFUSED_TESTS


_ALL = [(t, i, c) for t in _export_tests() for i, c in _expanded(t)]
ROUND_TRIPS = [pytest.param(t, c, id=i) for t, i, c in _ALL if not _refused(i)]
REFUSED_ROUND_TRIPS = [pytest.param(t, c, id=i) for t, i, c in _ALL if _refused(i)]


@pytest.mark.parametrize("test, kwargs", ROUND_TRIPS)
def test_round_trip_of_pynns_export(monkeypatch, tmp_path, test, kwargs):
    checked = []
    monkeypatch.setattr(E, "check_export", round_tripping(checked))
    fn = getattr(E, test)
    fn(**kwargs) if "tmp_path" not in fn.__code__.co_varnames else fn(tmp_path, **kwargs)
    assert checked, f"{test} exported nothing"


@pytest.mark.parametrize("test, kwargs", REFUSED_ROUND_TRIPS)
def test_round_trip_refused_by_name(monkeypatch, tmp_path, test, kwargs):
    monkeypatch.setattr(E, "check_export", round_tripping([]))
    fn = getattr(E, test)
    with pytest.raises(ValueError, match=r"pynn\.onnx\.load: \w+ node '[^']+': "):
        fn(**kwargs) if "tmp_path" not in fn.__code__.co_varnames else fn(tmp_path, **kwargs)


def test_several_inputs_and_outputs_round_trip():
    a, b = pynn.Input((5,), name="left"), pynn.Input((3, 4, 2), name="right")
    h = L.Dense(4, activation="relu")(a)
    c = L.Flatten()(L.MaxPooling2D()(L.Conv2D(3, 2, padding="same")(b)))
    out1 = L.Dense(2, activation="softmax")(L.Concatenate()([h, c]))
    out2 = L.Dense(1)(h)
    model = E.randomize(pynn.Model([a, b], [out1, out2]))
    xs = [E.rand((4, 5)), E.rand((4, 3, 4, 2), seed=2)]
    proto = pynn.onnx.export(model)
    loaded, got = loaded_predictions(proto, xs)
    for g, w in zip(got, model.predict(xs, verbose=0)):
        assert_close(g, w)
    assert len(loaded.inputs) == 2 and len(loaded.outputs) == 2


# -- (2) PyTorch models ------------------------------------------------------------------------
def torch_module():
    return pytest.importorskip("torch")


def torch_onnx(module, x, **kwargs):
    torch = torch_module()
    module.eval()
    f = io.BytesIO()
    torch.onnx.export(module, (torch.from_numpy(x),), f, dynamo=False, opset_version=17,
                      input_names=["x"], **kwargs)
    return f.getvalue()


def check_torch(module, x, **kwargs):
    """pynn's predictions of the exported module equal torch's and onnxruntime's."""
    torch = torch_module()
    data = torch_onnx(module, x, **kwargs)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    runtime = session.run(None, {"x": x})[0]
    model, got = loaded_predictions(data, [x])
    assert_close(got[0], want, "against torch")
    assert_close(got[0], runtime, "against onnxruntime")
    return model, data


def images(shape=(2, 3, 9, 11), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def torch_models():
    torch = torch_module()
    nn = torch.nn
    torch.manual_seed(0)

    class SmallCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 5, 3, padding=1)
            self.c2 = nn.Conv2d(5, 4, 3, stride=2, padding=(1, 0))
            self.fc = nn.Linear(4 * 2 * 2, 6)

        def forward(self, x):
            x = nn.functional.max_pool2d(torch.relu(self.c1(x)), 2)
            x = torch.relu(self.c2(x))
            return self.fc(x.reshape(x.size(0), -1))

    class ResBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(3, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3)
            self.c2, self.b2 = nn.Conv2d(3, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3)
            for b in (self.b1, self.b2):  # statistics a fresh BatchNorm would hide
                b.running_mean.uniform_(-1, 1)
                b.running_var.uniform_(0.5, 2)
                b.weight.data.uniform_(0.5, 1.5)
                b.bias.data.uniform_(-1, 1)

        def forward(self, x):
            y = torch.relu(self.b1(self.c1(x)))
            return torch.relu(x + self.b2(self.c2(y)))

    class PadsAndSplits(nn.Module):
        """Asymmetric pads, 'same'-sized pads that ONNX counts in the average (Keras's 'same'
        would not), ceil_mode, a chunk (Split) and a squeeze-excite style product."""

        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 6, 3)
            self.c2 = nn.Conv2d(3, 4, 3, stride=2, padding=1)

        def forward(self, x):
            x = self.c1(nn.functional.pad(x, (1, 2, 0, 1)))
            a, b = torch.chunk(x, 2, dim=1)
            x = nn.functional.avg_pool2d(a, 3, stride=1, padding=1) * torch.sigmoid(
                b.mean((2, 3), keepdim=True))
            x = nn.functional.max_pool2d(x, 2, ceil_mode=True)
            x = nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
            return torch.cat([self.c2(x), nn.functional.max_pool2d(x, 2)], 1)

    class StemSqueezeExcite(nn.Module):
        """A ResNet stem (7x7/2 conv, BatchNorm, 3x3/2 max pool with ONNX's pads) and a
        MobileNetV3 squeeze-excite gate (hard sigmoid, hard swish)."""

        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 8, 7, 2, 3, bias=False), nn.BatchNorm2d(8)
            self.pool = nn.MaxPool2d(3, 2, 1)
            self.reduce, self.expand = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
            self.fc = nn.Linear(8, 5)

        def forward(self, x):
            x = self.pool(torch.relu(self.bn(self.conv(x))))
            gate = nn.functional.adaptive_avg_pool2d(x, 1)
            gate = nn.functional.hardsigmoid(self.expand(torch.relu(self.reduce(gate))))
            x = nn.functional.hardswish(x * gate)
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    class AttentionBlock(nn.Module):
        """Multi-head self-attention written out: heads by Reshape and Transpose, two
        MatMuls of activations, Softmax, the residual and LayerNorm."""

        def __init__(self, width=8, heads=2):
            super().__init__()
            self.heads = heads
            self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
            self.norm = nn.LayerNorm(width)

        def forward(self, x):
            n, t, d = x.shape
            q, k, v = (z.reshape(n, t, self.heads, d // self.heads).transpose(1, 2)
                       for z in self.qkv(x).chunk(3, dim=-1))
            a = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
            return self.norm(x + self.out((a @ v).transpose(1, 2).reshape(n, t, d)))

    return {
        "stem_squeeze_excite": lambda: (StemSqueezeExcite(), images((2, 3, 32, 30))),
        "attention_block": lambda: (AttentionBlock(), images((2, 5, 8))),
        "pads_and_splits": lambda: (PadsAndSplits(), images((2, 3, 9, 10))),
        "mlp": lambda: (nn.Sequential(nn.Linear(7, 9), nn.ReLU(), nn.Linear(9, 4),
                                      nn.Softmax(-1)), images((3, 7))),
        "small_cnn": lambda: (SmallCNN(), images()),
        "resnet_block": lambda: (ResBlock(), images()),
        "depthwise_separable": lambda: (nn.Sequential(
            nn.Conv2d(3, 6, 3, groups=3, padding=1), nn.Conv2d(6, 4, 1), nn.ReLU6(),
            nn.Conv2d(4, 4, 3, groups=4, stride=2, dilation=1, padding=(0, 1)),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)), images()),
        "conv_transpose_upsample": lambda: (nn.Sequential(
            nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1),
            nn.Upsample(scale_factor=2), nn.Conv2d(4, 2, 1),
            nn.Upsample(scale_factor=2, mode="bilinear"), nn.LeakyReLU(0.1)),
            images((2, 3, 5, 4))),
        "pools_and_activations": lambda: (nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.ELU(0.7), nn.MaxPool2d(3, stride=2, padding=1),
            nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=True), nn.Hardswish(),
            nn.PReLU(4), nn.Sigmoid(), nn.InstanceNorm2d(4, affine=True), nn.Tanh(),
            nn.Softplus(), nn.Hardsigmoid(), nn.SELU(), nn.Softsign(), nn.Flatten(),
            nn.LogSoftmax(-1)), images((2, 3, 10, 9))),
        "layer_norm_gelu": lambda: (nn.Sequential(
            nn.Linear(4, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 3), nn.Dropout(0.3)),
            images((2, 5, 4))),
    }


TORCH_MODELS = ["mlp", "small_cnn", "resnet_block", "depthwise_separable",
                "conv_transpose_upsample", "pools_and_activations", "layer_norm_gelu",
                "pads_and_splits", "stem_squeeze_excite", "attention_block"]


@pytest.mark.parametrize("name", TORCH_MODELS)
def test_torch_models(name):
    module, x = torch_models()[name]()
    check_torch(module, x)


@pytest.mark.parametrize("name", ["small_cnn", "attention_block"])
def test_torch_dynamic_batch_reshape_keeps_the_batch_axis(name):
    # Shape -> Gather -> Unsqueeze -> Concat -> Reshape, folded with the batch kept dynamic.
    module, x = torch_models()[name]()
    model, data = check_torch(module, x, dynamic_axes={"x": {0: "batch"}})
    assert "Shape" in [n.op_type for n in onnx.load_from_string(data).graph.node]
    torch = torch_module()
    x5 = images((5,) + x.shape[1:], seed=3)
    with torch.no_grad():
        assert_close(model.predict(x5, verbose=0), module(torch.from_numpy(x5)).numpy())


def test_flatten_after_nchw_is_folded_into_the_dense_rows():
    module, x = torch_models()["small_cnn"]()
    model, _ = check_torch(module, x)
    # One Permute (the NCHW input into NHWC); none before the Flatten.
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("Permute") == 1, kinds
    # layers named after their nodes ('/c1/Conv' -> 'c1_Conv')
    assert any(layer.name.startswith("c1_Conv") for layer in model.layers)


def test_channels_last_inputs():
    module, x = torch_models()["small_cnn"]()
    data = torch_onnx(module, x)
    model = pynn.onnx.load(data, channels_last_inputs=True)
    assert "Permute" not in [type(layer).__name__ for layer in model.layers]
    want = pynn.onnx.load(data).predict(x, verbose=0)
    assert_close(model.predict(x.transpose(0, 2, 3, 1), verbose=0), want)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_torch_recurrent(kind, bidirectional):
    torch = torch_module()
    torch.manual_seed(1)

    class Recurrent(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = getattr(torch.nn, kind)(4, 6, batch_first=True,
                                                bidirectional=bidirectional)
            self.fc = torch.nn.Linear(12 if bidirectional else 6, 3)

        def forward(self, x):
            y = self.rnn(x)[0]
            return self.fc(y)

    check_torch(Recurrent(), images((2, 5, 4)))


def test_torch_embedding_mean():
    torch = torch_module()
    torch.manual_seed(2)

    class Bag(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(11, 5)
            self.fc = torch.nn.Linear(5, 3)

        def forward(self, ids):
            return self.fc(self.embedding(ids).mean(1))

    ids = np.random.default_rng(0).integers(0, 11, (3, 6)).astype(np.int64)
    model, _ = check_torch(Bag(), ids)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert "Embedding" in kinds and "GlobalAveragePooling1D" in kinds, kinds


# -- (3) training and saving -------------------------------------------------------------------
def test_loaded_model_trains_and_saves(tmp_path):
    module, x = torch_models()["small_cnn"]()
    path = tmp_path / "cnn.onnx"
    path.write_bytes(torch_onnx(module, x))
    model = pynn.load_model(str(path))
    y = np.random.default_rng(4).normal(size=(2, 6)).astype(np.float32)
    model.compile(optimizer=pynn.optimizers.SGD(0.01), loss="mse")
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, batch_size=2, epochs=1, verbose=0, shuffle=False)
    after = model.evaluate(x, y, verbose=0)
    assert after < before
    want = model.predict(x, verbose=0)
    for suffix in (".pynn", ".keras"):
        model.save(str(tmp_path / f"m{suffix}"))
        again = pynn.load_model(str(tmp_path / f"m{suffix}"))
        assert_close(again.predict(x, verbose=0), want, suffix)


def test_loaded_model_opens_in_keras(tmp_path):
    from tests.backend_util import keras_on_torch

    keras = keras_on_torch()
    for name in ("resnet_block", "depthwise_separable"):
        module, x = torch_models()[name]()
        model, _ = check_torch(module, x)
        model.save(str(tmp_path / f"{name}.keras"))
        theirs = keras.saving.load_model(str(tmp_path / f"{name}.keras"))
        assert_close(np.asarray(theirs.predict(x, verbose=0)), model.predict(x, verbose=0),
                     f"{name}: Keras against pynn")


def test_loaded_model_with_op_nodes_saves_as_pynn(tmp_path):
    module, x = torch_models()["layer_norm_gelu"]()
    model, _ = check_torch(module, x)
    model.save(str(tmp_path / "m.pynn"))
    again = pynn.load_model(str(tmp_path / "m.pynn"))
    assert_close(again.predict(x, verbose=0), model.predict(x, verbose=0))


# -- (4) hostile and unsupported files ---------------------------------------------------------
def make_model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    return proto


def float_input(name="x", shape=("N", 4)):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def float_output(name="y", shape=("N", 4)):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def refused(proto, pattern, **kwargs):
    with pytest.raises(ValueError, match=pattern):
        pynn.onnx.load(proto, **kwargs)


def test_unsupported_op_names_type_node_and_supported_ones():
    proto = make_model([helper.make_node("Hardmax", ["x"], ["y"], name="hm")],
                       [float_input()], [float_output()])
    refused(proto, r"Hardmax node 'hm': op type 'Hardmax' is not supported; pynn reads .*Conv")


def test_unsupported_attribute_is_named():
    w = numpy_helper.from_array(np.ones((2, 3, 2, 2), np.float32), "w")
    node = helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[2, 2],
                            dilations=[2, 2])
    proto = make_model([node], [float_input(shape=("N", 3, 6, 6))],
                       [float_output(shape=("N", 3, 4, 4))], [w])
    refused(proto, r"MaxPool node 'pool': dilations")


def test_a_layers_own_refusal_names_the_node():
    w = numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="strided_dilated", strides=[2, 2],
                            dilations=[2, 2])
    proto = make_model([node], [float_input(shape=("N", 3, 9, 9))],
                       [float_output(shape=("N", 2, 3, 3))], [w])
    refused(proto, r"Conv node 'strided_dilated': ValueError: .*dilation_rate")


def test_opset_below_seven_is_refused():
    proto = make_model([helper.make_node("Relu", ["x"], ["y"])], [float_input()],
                       [float_output()], opset=6)
    refused(proto, r"opset is 6; pynn reads opset 7")


def test_dangling_input_is_refused():
    proto = make_model([helper.make_node("Add", ["x", "ghost"], ["y"], name="add")],
                       [float_input()], [float_output()])
    refused(proto, r"Add node 'add': input 'ghost' is made by no node")


def test_missing_initializer_of_a_weighted_op_is_refused():
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc")
    proto = make_model([node], [float_input()], [float_output()])
    refused(proto, r"Gemm node 'fc': input 'w' is made by no node")


def test_cycle_is_refused():
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="first"),
             helper.make_node("Relu", ["a"], ["b"], name="second"),
             helper.make_node("Identity", ["a"], ["y"], name="out")]
    proto = make_model(nodes, [float_input()], [float_output()])
    refused(proto, r"node '(first|second)': the graph has a cycle")


def test_absurd_initializer_is_refused_before_allocating():
    big = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20])
    proto = make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                       [float_input()], [float_output()], [big])
    refused(proto, r"initializer 'w': \d+ elements, more than")
    huge_dim = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 40])
    proto = make_model([helper.make_node("Add", ["x", "w"], ["y"], name="add")],
                       [float_input()], [float_output()], [huge_dim])
    refused(proto, r"initializer 'w': dimension \d+ is out of range")


def test_initializer_shorter_than_its_dims_is_refused():
    short = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4], raw_data=b"\0" * 8)
    proto = make_model([helper.make_node("Add", ["x", "w"], ["y"], name="add")],
                       [float_input()], [float_output()], [short])
    refused(proto, r"tensor 'w' cannot be read")


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "sub/../../x.bin"])
def test_external_data_outside_the_model_directory_is_refused(tmp_path, location):
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value=location)
    proto = make_model([helper.make_node("Add", ["x", "w"], ["y"], name="add")],
                       [float_input()], [float_output()], [w])
    (tmp_path / "models").mkdir()
    path = tmp_path / "models" / "m.onnx"
    path.write_bytes(proto.SerializeToString())
    refused(str(path), r"external data path .* is outside the model's directory")


def test_external_data_beside_the_model_loads(tmp_path):
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="w.bin")
    values = np.arange(4, dtype=np.float32) - 1.5
    (tmp_path / "w.bin").write_bytes(values.tobytes())
    proto = make_model([helper.make_node("Add", ["x", "w"], ["y"], name="add")],
                       [float_input()], [float_output()], [w])
    (tmp_path / "m.onnx").write_bytes(proto.SerializeToString())
    x = E.rand((3, 4))
    assert_close(pynn.load_model(str(tmp_path / "m.onnx")).predict(x, verbose=0), x + values)
    refused(proto.SerializeToString(), r"load the model from its path")


def test_integer_input_into_a_float_layer_is_refused():
    ids = helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 4])
    proto = make_model([helper.make_node("Relu", ["x"], ["y"], name="act")], [ids],
                       [float_output()])
    refused(proto, r"Relu node 'act': input 0 \('x'\) is int64; this op takes float32")


def test_double_input_is_refused():
    x = helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", 4])
    proto = make_model([helper.make_node("Relu", ["x"], ["y"])], [x], [float_output()])
    refused(proto, r"graph input 'x' is float64")


def test_recurrent_sequence_lens_refused():
    w = numpy_helper.from_array(np.ones((1, 8, 3), np.float32), "w")
    r = numpy_helper.from_array(np.ones((1, 8, 2), np.float32), "r")
    lens = helper.make_tensor_value_info("lens", TensorProto.INT32, ["N"])
    node = helper.make_node("GRU", ["x", "w", "r", "", "lens"], ["y", "h"], name="gru",
                            hidden_size=2)
    proto = make_model([node], [float_input(shape=(5, "N", 3)), lens],
                       [float_output("h", (1, "N", 2))], [w, r])
    refused(proto, r"GRU node 'gru': sequence_lens is not supported")


def test_recurrent_batch_major_layout_refused():
    w = numpy_helper.from_array(np.ones((1, 8, 3), np.float32), "w")
    r = numpy_helper.from_array(np.ones((1, 8, 2), np.float32), "r")
    node = helper.make_node("LSTM", ["x", "w", "r"], ["y"], name="lstm", hidden_size=2,
                            layout=1)
    proto = make_model([node], [float_input(shape=("N", 5, 3))],
                       [float_output("y", ("N", 5, 1, 2))], [w, r])
    refused(proto, r"LSTM node 'lstm': layout=1")


def test_reshape_mixing_the_batch_axis_is_refused():
    shape = numpy_helper.from_array(np.array([-1], np.int64), "s")
    proto = make_model([helper.make_node("Reshape", ["x", "s"], ["y"], name="rs")],
                       [float_input()], [float_output(shape=("M",))], [shape])
    refused(proto, r"Reshape node 'rs': target .* does not keep the batch axis")


def test_not_an_onnx_file():
    with pytest.raises(ValueError, match="pynn.onnx.load"):
        pynn.onnx.load(b"\xff\xfe not protobuf at all")
    with pytest.raises(ValueError, match="no file"):
        pynn.onnx.load("/nonexistent/m.onnx")
    with pytest.raises(TypeError, match="takes a path, bytes or an onnx.ModelProto, got int"):
        pynn.onnx.load(3)
    with pytest.raises(ValueError, match="channels_last_inputs must be a bool"):
        pynn.onnx.load(b"", channels_last_inputs="yes")


def test_missing_onnx_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"pynn\[onnx\]"):
        pynn.onnx.load(b"")


# -- (5) OpenCL --------------------------------------------------------------------------------
@pytest.mark.opencl
@pytest.mark.parametrize("name", ["resnet_block", "stem_squeeze_excite", "pads_and_splits",
                                  "attention_block"])
def test_loaded_models_on_opencl(name):
    module, x = torch_models()[name]()
    data = torch_onnx(module, x)
    want = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    previous = pynn.get_device()
    pynn.set_device("opencl")
    try:
        got = pynn.onnx.load(data).predict(x, verbose=0)
    finally:
        pynn.set_device(previous)
    assert_close(got, want, "OpenCL against onnxruntime")


def test_torch_erf_gelu_is_one_gelu_activation():
    module, x = torch_models()["layer_norm_gelu"]()
    model, data = check_torch(module, x)
    assert "Erf" in [n.op_type for n in onnx.load_from_string(data).graph.node]
    configs = [layer.get_config() for layer in model.layers]
    assert any(c.get("activation") == "gelu" for c in configs)
    assert not any(c.get("op") == "erf" for c in configs)
    assert "LayerNormalization" in [type(layer).__name__ for layer in model.layers]


# -- hand-built graphs of single ops, against onnxruntime ------------------------------------------
def _init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def _weights(shape, seed=5):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def _single_op_cases():
    """name -> (nodes, input shape, output rank, initializers, opset)."""
    node = helper.make_node
    return {
        "gemm_transB_alpha_beta": ([node("Gemm", ["x", "w", "c"], ["y"], transB=1, alpha=0.5,
                                         beta=2.0)], (3, 4), 2,
                                   [_init("w", _weights((5, 4))), _init("c", _weights((1, 5)))],
                                   13),
        "upsample_opset9": ([node("Upsample", ["x", "s"], ["y"], mode="nearest")], (2, 3, 4, 5),
                            4, [_init("s", np.array([1, 1, 2, 3], np.float32))], 9),
        "resize_asymmetric_floor": ([node("Resize", ["x", "", "s"], ["y"], mode="nearest",
                                          coordinate_transformation_mode="asymmetric",
                                          nearest_mode="floor")], (2, 3, 4, 5), 4,
                                    [_init("s", np.array([1, 1, 3, 2], np.float32))], 13),
        "conv_same_lower_stride": ([node("Conv", ["x", "w"], ["y"], auto_pad="SAME_LOWER",
                                         strides=[2, 2])], (2, 3, 8, 7), 4,
                                   [_init("w", _weights((4, 3, 3, 2)))], 13),
        "avgpool_same_upper_excluded": ([node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3],
                                              strides=[2, 2], auto_pad="SAME_UPPER")],
                                        (2, 3, 8, 7), 4, [], 13),
        "maxpool_ceil": ([node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2],
                               ceil_mode=1)], (2, 3, 7, 5), 4, [], 13),
        "squeeze_unsqueeze_opset11": ([node("Unsqueeze", ["x"], ["u"], axes=[1, 3]),
                                       node("Relu", ["u"], ["r"]),
                                       node("Squeeze", ["r"], ["y"], axes=[1, 3])], (3, 4, 5),
                                      3, [], 11),
        "softmax_opset11_last_axis": ([node("Softmax", ["x"], ["y"], axis=2)], (2, 3, 4), 3, [],
                                      11),
        "pad_reflect": ([node("Pad", ["x", "p"], ["y"], mode="reflect")], (2, 3, 5, 6), 4,
                        [_init("p", np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64))], 13),
        "hard_sigmoid_default": ([node("HardSigmoid", ["x"], ["y"])], (3, 7), 2, [], 13),
        "clip_min_only": ([node("Clip", ["x", "lo"], ["y"])], (3, 7), 2,
                          [_init("lo", np.array(-0.3, np.float32))], 13),
        "reduce_sum_no_keepdims": ([node("ReduceSum", ["x", "a"], ["y"], keepdims=0)],
                                   (2, 3, 4, 5), 3, [_init("a", np.array([2], np.int64))], 13),
        "transpose_reshape": ([node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
                               node("Reshape", ["t", "s"], ["y"])], (2, 3, 4, 5), 3,
                              [_init("s", np.array([0, 20, 3], np.int64))], 13),
        "matmul_of_two_activations": ([node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
                                       node("MatMul", ["x", "t"], ["y"])], (2, 3, 4), 3, [], 13),
        "prelu_per_channel": ([node("PRelu", ["x", "a"], ["y"])], (2, 3, 4, 5), 4,
                              [_init("a", _weights((3, 1, 1)))], 13),
        "global_max_pool": ([node("GlobalMaxPool", ["x"], ["y"])], (2, 3, 4, 5), 4, [], 13),
        "slice_channels_step": ([node("Slice", ["x", "b", "e", "a", "s"], ["y"])],
                                (2, 6, 4, 5), 4,
                                [_init("b", np.array([1], np.int64)),
                                 _init("e", np.array([6], np.int64)),
                                 _init("a", np.array([1], np.int64)),
                                 _init("s", np.array([2], np.int64))], 13),
        "layer_norm_two_axes": ([node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-2)],
                                (2, 3, 4, 5), 4,
                                [_init("g", _weights((4, 5))), _init("b", _weights((4, 5), 6))],
                                17),
        "matmul_add_is_dense_with_bias": ([node("MatMul", ["x", "w"], ["m"]),
                                           node("Add", ["m", "b"], ["y"])], (2, 3, 4), 3,
                                          [_init("w", _weights((4, 6))),
                                           _init("b", _weights((6,)))], 13),
        "sub_div_broadcast_constants": ([node("Sub", ["x", "m"], ["s"]),
                                         node("Div", ["s", "d"], ["y"])], (2, 3, 4, 5), 4,
                                        [_init("m", _weights((3, 1, 1))),
                                         _init("d", np.abs(_weights((1, 5), 7)) + 0.5)], 13),
    }


@pytest.mark.parametrize("name", sorted(_single_op_cases()))
def test_single_ops_against_onnxruntime(name):
    nodes, shape, out_rank, inits, opset = _single_op_cases()[name]
    proto = make_model(nodes, [float_input(shape=("N",) + shape[1:])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                       inits, opset=opset)
    proto.ir_version = 7
    x = E.rand(shape)
    want = ort.InferenceSession(proto.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    model = pynn.onnx.load(proto)
    assert_close(model.predict(x, verbose=0), want, name)
    assert want.ndim == out_rank
    if name == "matmul_add_is_dense_with_bias":
        assert [type(layer).__name__ for layer in model.layers] == ["InputLayer", "Dense"]


def test_loaded_model_exports_again():
    module, x = torch_models()["resnet_block"]()
    model, data = check_torch(module, x)
    again = pynn.onnx.export(model)
    want = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert_close(E.run_onnx(again, [x])[0], want, "re-exported")
    # op nodes (here the attention's MatMuls) have no exporter yet: refused by name
    module, x = torch_models()["attention_block"]()
    model, _ = check_torch(module, x)
    with pytest.raises(ValueError, match="OpLayer .* cannot be exported"):
        pynn.onnx.export(model)


def test_cumsum_of_the_data_and_its_refused_options():
    axis = _init("a", np.array(1, np.int64))
    proto = make_model([helper.make_node("CumSum", ["x", "a"], ["y"], name="cs")],
                       [float_input(shape=("N", 5, 3))], [float_output(shape=("N", 5, 3))],
                       [axis], opset=14)
    x = E.rand((2, 5, 3))
    assert_close(pynn.onnx.load(proto).predict(x, verbose=0), np.cumsum(x, axis=1))
    proto.graph.node[0].attribute.append(helper.make_attribute("reverse", 1))
    refused(proto, r"CumSum node 'cs': attribute reverse=1 is not supported")


def test_torch_interpolate_to_a_size_is_keras_resizing():
    torch = torch_module()

    class Interpolate(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.interpolate(x, size=(5, 13), mode="bilinear",
                                                   align_corners=False)

    model, _ = check_torch(Interpolate(), images((2, 3, 7, 6)))
    assert "Resizing" in [type(layer).__name__ for layer in model.layers]
