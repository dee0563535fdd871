"""native/hashing.pyx and Keras 3's Hashing and HashedCrossing (pynn/layers/lookup.py).

Keras runs these layers through TensorFlow, which this venv lacks: the kernels are checked
against pyfarmhash (FarmHash Fingerprint64), a pure-Python SipHash-2-4 with the published
vectors and TensorFlow's FingerprintCat64 written out (tests/reference/hashing_ref.py), and
the layers against every example of Keras's docstrings, and against TensorFlow itself where
it is installed."""

import importlib.util
import json

import numpy as np
import pytest

from pynn import layers
from pynn._native import hashing
from pynn.layers.lookup import hash64
from tests.reference.hashing_ref import (
    SIPHASH24_KEY, SIPHASH24_VECTORS, cross_hashed_ref, siphash24_ref,
)

HAS_TF = importlib.util.find_spec("tensorflow") is not None
LENGTHS = [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 200,
           1000]


def _buffer(strings):
    data = np.frombuffer(b"".join(strings), np.uint8)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in strings])]).astype(np.int64)
    return data, offsets


def _random_bytes(rng, lengths):
    return [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in lengths]


# -- the kernels -------------------------------------------------------------------------------
def test_fingerprint64_matches_farmhash_at_every_length_branch():
    farmhash = pytest.importorskip("farmhash")
    rng = np.random.default_rng(0)
    strings = _random_bytes(rng, LENGTHS + list(rng.integers(0, 300, 40)))
    got = hashing.fingerprint64(*_buffer(strings))
    want = np.array([farmhash.fingerprint64(s) for s in strings], np.uint64)
    np.testing.assert_array_equal(got, want)


def test_siphash64_matches_the_published_vectors_and_the_reference():
    strings = [bytes(range(n)) for n in SIPHASH24_VECTORS]
    got = hashing.siphash64(*_buffer(strings), *SIPHASH24_KEY)
    assert [int(v) for v in got] == list(SIPHASH24_VECTORS.values())
    rng = np.random.default_rng(1)
    strings = _random_bytes(rng, LENGTHS)
    k0, k1 = 0x1234567890ABCDEF, 0xFEDCBA0987654321
    got = hashing.siphash64(*_buffer(strings), k0, k1)
    assert [int(v) for v in got] == [siphash24_ref(s, k0, k1) for s in strings]


def test_fingerprint_cat64_matches_tensorflows_chain():
    rng = np.random.default_rng(2)
    columns = rng.integers(0, 2**63, (33, 3), dtype=np.int64).astype(np.uint64)
    got = hashing.fingerprint_cat64(columns, 0xDECAFCAFFE)
    want = [cross_hashed_ref([int(v) for v in row], 2**64) for row in columns]
    assert [int(v) for v in got] == want


def test_kernels_give_the_same_hashes_on_a_batch_large_enough_to_go_parallel():
    rng = np.random.default_rng(3)
    strings = _random_bytes(rng, rng.integers(0, 90, 5001))
    data, offsets = _buffer(strings)
    whole = hashing.fingerprint64(data, offsets)
    one_by_one = np.concatenate([hashing.fingerprint64(data[offsets[i]:offsets[i + 1]],
                                                       [0, offsets[i + 1] - offsets[i]])
                                 for i in range(0, 5001, 500)])
    np.testing.assert_array_equal(whole[::500], one_by_one)


def test_unicode_and_bytes_arrays_hash_their_utf8_bytes():
    farmhash = pytest.importorskip("farmhash")
    words = ["", "a", "héllo", "日本語テキスト", "emoji 🙂 x", "trailing  "]
    want = [farmhash.fingerprint64(w.encode("utf-8")) for w in words]
    assert hash64(np.array(words)).tolist() == want
    assert hash64(np.array([w.encode("utf-8") for w in words])).tolist() == want
    assert hash64(np.array(words, dtype=object)).tolist() == want
    # integers hash their decimal form (tf.as_string), floats are truncated first
    assert hash64(np.array([-12, 0, 345])).tolist() == [
        farmhash.fingerprint64(s) for s in ("-12", "0", "345")]
    assert hash64(np.array([2.9, -1.5])).tolist() == [
        farmhash.fingerprint64(s) for s in ("2", "-1")]


def test_bad_offsets_are_refused():
    with pytest.raises(ValueError, match="offsets"):
        hashing.fingerprint64(np.zeros(3, np.uint8), [0, 5])
    with pytest.raises(ValueError, match="offsets"):
        hashing.siphash64(np.zeros(3, np.uint8), [2, 1], 1, 2)
    with pytest.raises(ValueError, match="columns"):
        hashing.fingerprint_cat64(np.zeros(3, np.uint64), 1)


# -- Hashing: Keras's docstring examples -------------------------------------------------------
FIVE = [["A"], ["B"], ["C"], ["D"], ["E"]]


@pytest.mark.parametrize("kwargs, inputs, want", [
    ({}, FIVE, [1, 0, 1, 1, 2]),
    ({"mask_value": ""}, [["A"], ["B"], [""], ["C"], ["D"]], [1, 1, 0, 2, 2]),
    ({"salt": [133, 137]}, FIVE, [1, 2, 1, 0, 2]),
    ({"salt": 133}, FIVE, [0, 0, 2, 1, 0]),
])
def test_hashing_reproduces_kerass_examples(kwargs, inputs, want):
    out = layers.Hashing(num_bins=3, **kwargs)(inputs)
    assert out.dtype == np.int64 and out.shape == (5, 1)
    assert out.ravel().tolist() == want


def test_hashing_integers_and_output_modes():
    farmhash = pytest.importorskip("farmhash")
    x = np.array([[3, 17, 3], [250, -4, 9]])
    ids = layers.Hashing(7)(x)
    want = np.array([[farmhash.fingerprint64(str(v)) % 7 for v in row] for row in x.tolist()])
    np.testing.assert_array_equal(ids, want)
    one_hot = layers.Hashing(7, output_mode="one_hot")(x[:, :1])
    np.testing.assert_array_equal(one_hot, np.eye(7, dtype=np.float32)[want[:, 0]])
    assert one_hot.dtype == np.float32
    multi = layers.Hashing(7, output_mode="multi_hot")(x)
    count = layers.Hashing(7, output_mode="count")(x)
    for r in range(2):
        assert multi[r].tolist() == [float(k in want[r]) for k in range(7)]
        assert count[r].tolist() == [float((want[r] == k).sum()) for k in range(7)]
    # a mask value that is an integer
    masked = layers.Hashing(7, mask_value=3)(x)
    assert masked[0, 0] == 0 and masked[0, 2] == 0
    assert masked[1, 0] == farmhash.fingerprint64("250") % 6 + 1


def test_hashing_config_is_kerass():
    layer = layers.Hashing(num_bins=4, salt=7, mask_value="", name="h")
    config = layer.get_config()
    assert {k: config[k] for k in ("num_bins", "salt", "mask_value", "output_mode", "sparse",
                                   "dtype", "name", "trainable")} == {
        "num_bins": 4, "salt": [7, 7], "mask_value": "", "output_mode": "int", "sparse": False,
        "dtype": "int64", "name": "h", "trainable": True}
    again = layers.Hashing.from_config(json.loads(json.dumps(config)))
    x = [["a"], ["b"], [""]]
    np.testing.assert_array_equal(again(x), layer(x))
    assert layers.Hashing(3, output_mode="count").get_config()["dtype"] == "float32"


@pytest.mark.parametrize("kwargs, message", [
    ({"num_bins": 0}, "num_bins"), ({"num_bins": None}, "num_bins"),
    ({"num_bins": 3, "output_mode": "tf_idf"}, "output_mode"),
    ({"num_bins": 3, "salt": "x"}, "salt"), ({"num_bins": 3, "salt": [1, 2, 3]}, "salt"),
    ({"num_bins": 3, "output_mode": "one_hot", "sparse": True}, "sparse"),
    ({"num_bins": 3, "dtype": "float32"}, "dtype"),
])
def test_hashing_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        layers.Hashing(**kwargs)


def test_hashing_refuses_a_device_tensor_and_rank3_encodings():
    class FakeDeviceArray:
        pass
    FakeDeviceArray.__module__ = "pyopencl.array"
    with pytest.raises(TypeError, match="Hashing 'h'.*host preprocessing"):
        layers.Hashing(3, name="h")(FakeDeviceArray())
    with pytest.raises(ValueError, match="rank at most 2"):
        layers.Hashing(3, output_mode="count")(np.zeros((2, 2, 2), np.int64))


# -- HashedCrossing ------------------------------------------------------------------------------
FEAT1 = np.array(["A", "B", "A", "B", "A"])
FEAT2 = np.array([101, 101, 101, 102, 102])


def test_hashed_crossing_reproduces_kerass_examples():
    ids = layers.HashedCrossing(num_bins=5)((FEAT1, FEAT2))
    assert ids.tolist() == [1, 4, 1, 1, 3] and ids.dtype == np.int64
    one_hot = layers.HashedCrossing(num_bins=5, output_mode="one_hot")((FEAT1, FEAT2))
    np.testing.assert_array_equal(one_hot, np.eye(5, dtype=np.float32)[[1, 4, 1, 1, 3]])
    assert one_hot.dtype == np.float32


def test_hashed_crossing_against_the_reference_on_three_features_and_shapes():
    farmhash = pytest.importorskip("farmhash")
    rng = np.random.default_rng(4)
    words = np.array(["x", "yy", "zzz", "héllo"])[rng.integers(0, 4, 9)]
    ints = rng.integers(-50, 50, 9)
    more = np.array([str(v) for v in rng.integers(0, 9, 9)])
    got = layers.HashedCrossing(11)([words[:, None], ints[:, None], more[:, None]])
    assert got.shape == (9, 1)
    want = [cross_hashed_ref([farmhash.fingerprint64(w.encode()), int(i),
                              farmhash.fingerprint64(m)], 11)
            for w, i, m in zip(words, ints, more)]
    assert got.ravel().tolist() == want
    scalar = layers.HashedCrossing(11)((np.array("x"), np.array(3)))
    assert scalar.shape == () and int(scalar) == cross_hashed_ref(
        [farmhash.fingerprint64(b"x"), 3], 11)


def test_hashed_crossing_config_and_bad_inputs():
    layer = layers.HashedCrossing(num_bins=5, output_mode="one_hot", name="cross")
    assert layer.get_config() == {"num_bins": 5, "output_mode": "one_hot", "sparse": False,
                                  "name": "cross", "dtype": "float32"}
    again = layers.HashedCrossing.from_config(layer.get_config())
    np.testing.assert_array_equal(again((FEAT1, FEAT2)), layer((FEAT1, FEAT2)))
    with pytest.raises(ValueError, match="list or tuple"):
        layer(FEAT1)
    with pytest.raises(ValueError, match="at least two"):
        layer([FEAT1])
    with pytest.raises(ValueError, match="equal shape"):
        layer([FEAT1, FEAT2[:3]])
    with pytest.raises(ValueError, match=r"`\(\)`, `\(batch_size\)`"):
        layer([np.zeros((5, 2), np.int64), np.zeros((5, 2), np.int64)])
    with pytest.raises(ValueError, match="integer or string dtype"):
        layer([FEAT1, np.zeros(5)])
    with pytest.raises(ValueError, match="output_mode"):
        layers.HashedCrossing(5, output_mode="multi_hot")
    with pytest.raises(ValueError, match="num_bins"):
        layers.HashedCrossing(0)
    with pytest.raises(ValueError, match="sparse"):
        layers.HashedCrossing(5, output_mode="one_hot", sparse=True)


@pytest.mark.skipif(not HAS_TF, reason="TensorFlow is not installed")
def test_hashes_match_tensorflow():
    import tensorflow as tf

    words = np.array(["a", "bb", "héllo", "x" * 100, ""])
    assert layers.Hashing(13)(words).tolist() == \
        tf.strings.to_hash_bucket_fast(words, 13).numpy().tolist()
    assert layers.Hashing(13, salt=[5, 9])(words).tolist() == \
        tf.strings.to_hash_bucket_strong(words, 13, key=[5, 9]).numpy().tolist()


def test_hashes_are_the_same_at_any_thread_count(num_threads):
    rng = np.random.default_rng(5)
    strings = _random_bytes(rng, rng.integers(0, 80, 9001))
    data, offsets = _buffer(strings)
    runs = []
    for threads in (1, 2, 3):
        num_threads(threads)
        runs.append((hashing.fingerprint64(data, offsets),
                     hashing.siphash64(data, offsets, 7, 9),
                     hash64(np.array([s.hex() for s in strings]))))
    for other in runs[1:]:
        for a, b in zip(other, runs[0]):
            np.testing.assert_array_equal(a, b)
