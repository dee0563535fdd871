"""Keras 3's StringLookup and IntegerLookup (pynn/layers/lookup.py).

Keras runs these layers through TensorFlow, which this venv lacks (constructing one raises
"requires TensorFlow"), so they are checked against every example of Keras's docstrings,
against the dict-at-a-time reference of tests/reference/lookup_ref.py on random data, and
their configs against the keys and values Keras's get_config writes (IndexLookup.get_config
read from the installed source)."""

import json

import numpy as np
import pytest

from pynn import data as pynn_data
from pynn import layers
from pynn.layers import IntegerLookup, StringLookup
from tests.reference.lookup_ref import adapt_ref, bincount_rows_ref, index_lookup_ref

VOCAB = ["a", "b", "c", "d"]
DATA = [["a", "c", "d"], ["d", "z", "b"]]
DATA4 = [["a", "c", "d", "d"], ["d", "z", "b", "z"]]
IVOCAB = [12, 36, 1138, 42]
IDATA = np.array([[12, 1138, 42], [42, 1000, 36]])
IDATA4 = np.array([[12, 1138, 42, 42], [42, 7, 36, 7]])


# -- every example of Keras's docstrings ------------------------------------------------------
def test_string_lookup_reproduces_kerass_examples():
    assert StringLookup(vocabulary=VOCAB)(DATA).tolist() == [[1, 3, 4], [4, 0, 2]]
    layer = StringLookup()
    layer.adapt(DATA)
    assert layer.get_vocabulary() == ["[UNK]", "d", "z", "c", "b", "a"]
    assert layer(DATA).tolist() == [[5, 3, 1], [1, 2, 4]]
    assert StringLookup(vocabulary=VOCAB, num_oov_indices=2)(
        [["a", "c", "d"], ["m", "z", "b"]]).tolist() == [[2, 4, 5], [0, 1, 3]]
    one_hot = StringLookup(vocabulary=VOCAB, output_mode="one_hot")(["a", "b", "c", "d", "z"])
    np.testing.assert_array_equal(one_hot, np.eye(5, dtype=np.int64)[[1, 2, 3, 4, 0]])
    assert one_hot.dtype == np.int64  # Keras's IndexLookup encodes in its int64 value dtype
    assert StringLookup(vocabulary=VOCAB, output_mode="multi_hot")(DATA4).tolist() == [
        [0, 1, 0, 1, 1], [1, 0, 1, 0, 1]]
    assert StringLookup(vocabulary=VOCAB, output_mode="count")(DATA4).tolist() == [
        [0, 1, 0, 1, 2], [2, 0, 1, 0, 1]]
    layer = StringLookup(output_mode="tf_idf")
    layer.set_vocabulary(VOCAB, idf_weights=[0.25, 0.75, 0.6, 0.4])
    out = layer(DATA4)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0, 0.25, 0, 0.6, 0.8], [1.0, 0, 0.75, 0, 0.4]],
                               rtol=1e-6)
    layer = StringLookup(output_mode="tf_idf")
    layer.set_vocabulary(["[UNK]"] + VOCAB, idf_weights=[0.9, 0.25, 0.75, 0.6, 0.4])
    np.testing.assert_allclose(layer(DATA4), [[0, 0.25, 0, 0.6, 0.8], [1.8, 0, 0.75, 0, 0.4]],
                               rtol=1e-6)
    inverse = StringLookup(vocabulary=VOCAB, invert=True)
    assert inverse([[1, 3, 4], [4, 0, 2]]).tolist() == [["a", "c", "d"], ["d", "[UNK]", "b"]]
    assert inverse(StringLookup(vocabulary=VOCAB)(DATA)).tolist() == [
        ["a", "c", "d"], ["d", "[UNK]", "b"]]


def test_integer_lookup_reproduces_kerass_examples():
    assert IntegerLookup(vocabulary=IVOCAB)(IDATA).tolist() == [[1, 3, 4], [4, 0, 2]]
    layer = IntegerLookup()
    layer.adapt(IDATA)
    assert layer.get_vocabulary() == [-1, 42, 1138, 1000, 36, 12]
    assert layer(IDATA).tolist() == [[5, 2, 1], [1, 3, 4]]
    assert IntegerLookup(vocabulary=IVOCAB, num_oov_indices=2)(
        np.array([[12, 1138, 42], [37, 1000, 36]])).tolist() == [[2, 4, 5], [1, 0, 3]]
    oov = np.array([100, 300, 700, 1100, 1700, 2000])
    assert IntegerLookup(vocabulary=[10, 20, 30], num_oov_indices=4,
                         oov_method="floormod")(oov).tolist() == [0, 0, 0, 0, 0, 0]
    assert IntegerLookup(vocabulary=[10, 20, 30], num_oov_indices=4,
                         oov_method="farmhash")(oov).tolist() == [3, 3, 2, 2, 0, 1]
    one_hot = IntegerLookup(vocabulary=IVOCAB, output_mode="one_hot")(
        np.array([12, 36, 1138, 42, 7]))
    np.testing.assert_array_equal(one_hot, np.eye(5)[[1, 2, 3, 4, 0]])
    assert IntegerLookup(vocabulary=IVOCAB, output_mode="multi_hot")(IDATA4).tolist() == [
        [0, 1, 0, 1, 1], [1, 0, 1, 0, 1]]
    assert IntegerLookup(vocabulary=IVOCAB, output_mode="count")(IDATA4).tolist() == [
        [0, 1, 0, 1, 2], [2, 0, 1, 0, 1]]
    np.testing.assert_allclose(
        IntegerLookup(output_mode="tf_idf", vocabulary=IVOCAB,
                      idf_weights=[0.25, 0.75, 0.6, 0.4])(IDATA4),
        [[0, 0.25, 0, 0.6, 0.8], [1.0, 0, 0.75, 0, 0.4]], rtol=1e-6)
    np.testing.assert_allclose(
        IntegerLookup(output_mode="tf_idf", vocabulary=[-1] + IVOCAB,
                      idf_weights=[0.9, 0.25, 0.75, 0.6, 0.4])(IDATA4),
        [[0, 0.25, 0, 0.6, 0.8], [1.8, 0, 0.75, 0, 0.4]], rtol=1e-6)
    inverse = IntegerLookup(vocabulary=IVOCAB, invert=True)
    assert inverse(np.array([[1, 3, 4], [4, 0, 2]])).tolist() == [[12, 1138, 42], [42, -1, 36]]
    forward = IntegerLookup(vocabulary=IVOCAB)
    pair = IntegerLookup(vocabulary=forward.get_vocabulary(), invert=True)
    assert pair(forward(IDATA)).tolist() == [[12, 1138, 42], [42, -1, 36]]


# -- against the reference on random data -------------------------------------------------------
@pytest.mark.parametrize("num_oov, mask", [(1, None), (0, None), (3, ""), (2, "m"), (1, "m")])
def test_string_lookup_matches_the_reference(num_oov, mask):
    from pynn.layers.lookup import hash_buckets

    rng = np.random.default_rng(num_oov)
    alphabet = [f"w{i}" for i in range(9)] + ["m", "", "é"]
    vocab = [t for t in alphabet[:7] if t != mask]
    tokens = np.array(alphabet)[rng.integers(0, 12 if num_oov else 7, (7, 5))]
    layer = StringLookup(vocabulary=vocab, num_oov_indices=num_oov, mask_token=mask)
    want = index_lookup_ref(tokens.tolist(), vocab, num_oov, mask,
                            oov_bucket=lambda t: int(hash_buckets(np.array([t]), num_oov)[0]))
    assert layer(tokens).tolist() == want
    assert layer.vocabulary_size() == len(vocab) + num_oov + (mask is not None)


@pytest.mark.parametrize("mode", ["one_hot", "multi_hot", "count"])
def test_encoded_modes_match_the_reference(mode):
    rng = np.random.default_rng(7)
    vocab = list(range(100, 109))
    x = rng.integers(98, 111, (6, 5))
    layer = IntegerLookup(vocabulary=vocab, output_mode=mode, mask_token=98,
                          pad_to_max_tokens=True, max_tokens=13)
    ids = index_lookup_ref(x.tolist(), vocab, 1, 98, output_mode=mode)
    if mode == "one_hot":
        want = [[bincount_rows_ref([[i]], 13)[0] for i in row] for row in ids]
    else:
        want = bincount_rows_ref(ids, 13, binary=mode == "multi_hot")
    assert layer(x).tolist() == want


@pytest.mark.parametrize("max_tokens", [None, 5])
def test_adapt_on_arrays_lists_generators_and_datasets(max_tokens):
    rng = np.random.default_rng(11)
    batches = [np.array([f"t{v}" for v in rng.integers(0, 9, 6)]).reshape(2, 3)
               for _ in range(4)]
    want = ["[UNK]"] + adapt_ref([b.tolist() for b in batches], max_tokens, ["[UNK]"])

    class Batches(pynn_data.PyDataset):
        def __len__(self):
            return len(batches)

        def __getitem__(self, i):
            return batches[i], np.zeros(2)

    for source in (np.concatenate(batches), np.concatenate(batches).tolist(), iter(batches),
                   Batches()):
        layer = StringLookup(max_tokens=max_tokens)
        layer.adapt(source)
        assert layer.get_vocabulary() == want
    layer = StringLookup()
    layer.adapt(iter(batches), steps=1)
    assert layer.get_vocabulary() == ["[UNK]"] + adapt_ref([batches[0].tolist()], None,
                                                           ["[UNK]"])


def test_adapted_tf_idf_weights_are_kerass_formula():
    layer = StringLookup(output_mode="tf_idf")
    layer.adapt(DATA4)
    vocab = layer.get_vocabulary()
    assert vocab == ["[UNK]", "d", "z", "c", "b", "a"]
    documents = {"d": 2, "z": 1, "c": 1, "b": 1, "a": 1}
    idf = np.log(1 + 2 / (1 + np.array([documents[t] for t in vocab[1:]], np.float64)))
    want = np.concatenate([[np.float32(idf).mean()], idf])
    np.testing.assert_allclose(layer.idf_weights, want, rtol=1e-6)
    counts = np.array([[0, 2, 0, 1, 0, 1], [0, 1, 2, 0, 1, 0]])
    np.testing.assert_allclose(layer(DATA4), counts * want, rtol=1e-6)


def test_vocabulary_file_set_vocabulary_and_special_tokens(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    layer = StringLookup(vocabulary=str(path))
    assert layer.get_vocabulary() == ["[UNK]"] + VOCAB
    assert layer(DATA).tolist() == [[1, 3, 4], [4, 0, 2]]
    layer = StringLookup(mask_token="", num_oov_indices=2)
    layer.set_vocabulary(["", "[UNK]", "[UNK]", "x", "y"])   # a leading run of the specials
    assert layer.get_vocabulary() == ["", "[UNK]", "[UNK]", "x", "y"]
    assert layer.get_vocabulary(include_special_tokens=False) == ["x", "y"]
    assert layer(["", "y", "x"]).tolist() == [0, 4, 3]
    ints = IntegerLookup(mask_token=0, vocabulary=[5, 6])
    assert ints(np.array([0, 6, 9])).tolist() == [0, 3, 1]
    assert IntegerLookup(mask_token=0, vocabulary=[5, 6], invert=True)(
        np.array([0, 1, 2, 3, 7])).tolist() == [0, -1, 5, 6, -1]


def test_bytes_inputs_and_encoding():
    layer = StringLookup(vocabulary=["é", "b"])
    assert layer(np.array(["é".encode(), b"b", b"q"])).tolist() == [1, 2, 0]


# -- configs: Keras's keys and values ------------------------------------------------------------
KERAS_INDEX_LOOKUP_KEYS = {"name", "trainable", "dtype", "invert", "max_tokens",
                           "num_oov_indices", "oov_token", "mask_token", "output_mode",
                           "sparse", "pad_to_max_tokens", "idf_weights", "vocabulary",
                           "vocabulary_size", "oov_method", "salt"}


def test_configs_hold_kerass_keys_and_round_trip():
    layer = StringLookup(vocabulary=VOCAB, mask_token="", num_oov_indices=2, name="s")
    config = layer.get_config()
    # StringLookup drops vocabulary_dtype and adds encoding; IntegerLookup keeps it.
    assert set(config) == KERAS_INDEX_LOOKUP_KEYS | {"encoding"}
    assert {k: config[k] for k in ("invert", "max_tokens", "num_oov_indices", "oov_token",
                                   "mask_token", "output_mode", "sparse", "vocabulary",
                                   "vocabulary_size", "oov_method", "salt", "encoding")} == {
        "invert": False, "max_tokens": None, "num_oov_indices": 2, "oov_token": "[UNK]",
        "mask_token": "", "output_mode": "int", "sparse": False, "vocabulary": VOCAB,
        "vocabulary_size": 7, "oov_method": "floormod", "salt": None, "encoding": "utf-8"}
    again = StringLookup.from_config(json.loads(json.dumps(config)))
    assert again(DATA).tolist() == layer(DATA).tolist()
    ints = IntegerLookup(vocabulary=np.array(IVOCAB), mask_token=0, salt=3,
                         oov_method="farmhash", num_oov_indices=3, name="i")
    config = ints.get_config()
    assert set(config) == KERAS_INDEX_LOOKUP_KEYS | {"vocabulary_dtype"}
    assert config["vocabulary"] == IVOCAB and config["salt"] == [3, 3]
    assert config["vocabulary_dtype"] == "int64" and config["mask_token"] == 0
    again = IntegerLookup.from_config(json.loads(json.dumps(config)))
    x = np.array([[0, 12, 99, 1000], [42, 5, 6, 7]])
    assert again(x).tolist() == ints(x).tolist()
    # An adapted layer writes its vocabulary (Keras: an asset file) into the config.
    adapted = StringLookup(output_mode="tf_idf")
    adapted.adapt(DATA4)
    again = StringLookup.from_config(json.loads(json.dumps(adapted.get_config())))
    np.testing.assert_allclose(again(DATA4), adapted(DATA4), rtol=1e-6)


# -- bad arguments and inputs: Keras's errors --------------------------------------------------
@pytest.mark.parametrize("cls, kwargs, error, message", [
    (StringLookup, {"output_mode": "bogus"}, ValueError, "output_mode"),
    (StringLookup, {"vocabulary": ["a", "b", "a"]}, ValueError, "repeated term"),
    (StringLookup, {"vocabulary": ["a", "", "b"], "mask_token": ""}, ValueError,
     "reserved mask token"),
    (StringLookup, {"vocabulary": ["a", "[UNK]"], "invert": True}, ValueError,
     "reserved OOV token"),
    (StringLookup, {"max_tokens": 1}, ValueError, "max_tokens"),
    (StringLookup, {"num_oov_indices": -1}, ValueError, "num_oov_indices"),
    (StringLookup, {"pad_to_max_tokens": True}, ValueError, "pad_to_max_tokens"),
    (StringLookup, {"invert": True, "output_mode": "count"}, ValueError, "invert"),
    (StringLookup, {"sparse": True, "output_mode": "count"}, ValueError, "sparse"),
    (StringLookup, {"idf_weights": [1.0]}, ValueError, "idf_weights"),
    (StringLookup, {"vocabulary": VOCAB, "output_mode": "tf_idf"}, ValueError, "idf_weights"),
    (StringLookup, {"vocabulary": ["a", "b"], "max_tokens": 2}, ValueError, "larger than"),
    (StringLookup, {"vocabulary": []}, ValueError, "empty vocabulary"),
    (StringLookup, {"vocabulary": [1, 2]}, TypeError, "must be strings"),
    (StringLookup, {"vocabulary": "/no/such/vocab.txt"}, ValueError, "does not exist"),
    (IntegerLookup, {"vocabulary_dtype": "int32"}, ValueError, "vocabulary_dtype"),
    (IntegerLookup, {"salt": 3}, ValueError, "oov_method='farmhash'"),
    (IntegerLookup, {"oov_method": "md5"}, ValueError, "oov_method"),
    (IntegerLookup, {"vocabulary": ["a"]}, TypeError, "must be integers"),
    (IntegerLookup, {"max_tokens": 0}, ValueError, "max_tokens"),
])
def test_bad_arguments_raise_kerass_errors(cls, kwargs, error, message):
    with pytest.raises(error, match=message):
        cls(**kwargs)


def test_bad_inputs_name_the_layer():
    with pytest.raises(TypeError, match="StringLookup 'sl'.*must be strings"):
        StringLookup(vocabulary=VOCAB, name="sl")(np.array([1, 2]))
    with pytest.raises(ValueError, match="num_oov_indices=0.*'z'"):
        StringLookup(vocabulary=VOCAB, num_oov_indices=0)(DATA)
    with pytest.raises(RuntimeError, match="vocabulary before calling"):
        StringLookup(output_mode="count")(DATA)
    with pytest.raises(ValueError, match="Cannot adapt"):
        StringLookup(vocabulary=VOCAB).adapt(DATA)
    with pytest.raises(TypeError, match="integer indices"):
        StringLookup(vocabulary=VOCAB, invert=True)(DATA)
    with pytest.raises(TypeError, match="must be integers"):
        IntegerLookup(vocabulary=IVOCAB)(np.array(["a"]))
    with pytest.raises(ValueError, match="rank at most 2"):
        IntegerLookup(vocabulary=IVOCAB, output_mode="count")(np.zeros((2, 2, 2), np.int64))


def test_layers_are_registered():
    for name in ("StringLookup", "IntegerLookup", "Hashing", "HashedCrossing"):
        assert layers.LAYERS[name].__name__ == name


# -- Keras files: integer lookups and hashing as nodes of a model ------------------------------
def test_integer_layers_in_a_model_save_keras_configs_and_load_back(tmp_path):
    import zipfile

    import pynn

    inp = layers.Input((3,), dtype="int32")
    ids = IntegerLookup(vocabulary=IVOCAB, mask_token=0, name="ilookup")(inp)
    hashed = layers.Hashing(6, salt=[3, 4], name="hash")(inp)
    merged = layers.Concatenate()([layers.Flatten()(layers.Embedding(6, 2)(ids)),
                                   layers.Flatten()(layers.Embedding(6, 2)(hashed))])
    model = pynn.Model(inp, layers.Dense(1)(merged))
    x = np.array([[12, 0, 7], [42, 1138, 36]], np.int32)
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, np.ones((2, 1)), epochs=2, verbose=0)
    model.save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as z:
        entries = {e["config"]["name"]: e for e in json.loads(z.read("config.json"))
                   ["config"]["layers"]}
    policy = {"module": "keras", "class_name": "DTypePolicy", "registered_name": None}
    # What Keras's IndexLookup/IntegerLookup.get_config and Hashing.get_config write.
    assert entries["ilookup"]["class_name"] == "IntegerLookup"
    assert entries["ilookup"]["config"] == {
        "name": "ilookup", "trainable": True, "dtype": {**policy, "config": {"name": "float32"}},
        "invert": False, "max_tokens": None, "num_oov_indices": 1, "oov_token": -1,
        "mask_token": 0, "output_mode": "int", "sparse": False, "pad_to_max_tokens": False,
        "idf_weights": None, "vocabulary": IVOCAB, "vocabulary_size": 6,
        "oov_method": "floormod", "salt": None, "vocabulary_dtype": "int64"}
    assert entries["hash"]["config"] == {
        "name": "hash", "trainable": True, "dtype": {**policy, "config": {"name": "int64"}},
        "num_bins": 6, "salt": [3, 4], "mask_value": None, "output_mode": "int",
        "sparse": False}
    loaded = pynn.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_a_device_tensor_is_refused_by_name():
    class FakeDeviceArray:
        pass
    FakeDeviceArray.__module__ = "pyopencl.array"
    with pytest.raises(TypeError, match="IntegerLookup 'il'.*host preprocessing"):
        IntegerLookup(vocabulary=IVOCAB, name="il")(FakeDeviceArray())
