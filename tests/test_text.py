"""Text and time-series utilities of issue 14: pynn.utils.pad_sequences (against Keras's own,
which is NumPy), pynn.utils.timeseries_dataset_from_array and pynn.layers.TextVectorization
(Keras runs both through TensorFlow, which this venv lacks: they are checked against the
examples of Keras's documentation and against Keras's rules written out, and against Keras
itself where TensorFlow is installed)."""

import importlib.util
import json
import os

import numpy as np
import pytest

from pynn import layers, utils

HAS_TF = importlib.util.find_spec("tensorflow") is not None


def _keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    return pytest.importorskip("keras")


def _ragged(rng, n, longest, item_shape=()):
    return [rng.integers(1, 50, size=(int(rng.integers(0, longest + 1)),) + item_shape)
            .tolist() for _ in range(n)]


# -- pad_sequences ---------------------------------------------------------------------------
@pytest.mark.parametrize("maxlen", [None, 1, 4, 9])
@pytest.mark.parametrize("padding", ["pre", "post"])
@pytest.mark.parametrize("truncating", ["pre", "post"])
def test_pad_sequences_matches_keras(maxlen, padding, truncating):
    keras = _keras()
    rng = np.random.default_rng(5)
    for item_shape, dtype, value in [((), "int32", 0.0), ((), "float32", -1.5),
                                     ((2,), "int64", 7)]:
        seqs = _ragged(rng, 7, 6, item_shape)
        seqs[2] = []
        got = utils.pad_sequences(seqs, maxlen=maxlen, dtype=dtype, padding=padding,
                                  truncating=truncating, value=value)
        want = keras.utils.pad_sequences(seqs, maxlen=maxlen, dtype=dtype, padding=padding,
                                         truncating=truncating, value=value)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_pad_sequences_strings_and_defaults():
    keras = _keras()
    seqs = [["a", "bb"], ["c"], []]
    got = utils.pad_sequences(seqs, dtype=object, value="<pad>")
    want = keras.utils.pad_sequences(seqs, dtype=object, value="<pad>")
    assert got.tolist() == want.tolist() == [["a", "bb"], ["<pad>", "c"], ["<pad>", "<pad>"]]
    assert utils.pad_sequences([[1, 2], [3]]).dtype == np.int32


@pytest.mark.parametrize("kwargs, what", [
    ({"sequences": [[1], 2]}, "item 1"),
    ({"sequences": [[1]], "padding": "middle"}, "padding must be 'pre' or 'post'"),
    ({"sequences": [[1]], "truncating": "x"}, "truncating must be 'pre' or 'post'"),
    ({"sequences": [[1]], "maxlen": -1}, "maxlen must be None or a non-negative int"),
    ({"sequences": [["a"]], "value": "pad"}, "dtype=object"),
    ({"sequences": [[[1, 2]], [[1, 2, 3]]]}, "same shape"),
    ({"sequences": "abc"}, "list of sequences"),
])
def test_pad_sequences_bad_input(kwargs, what):
    with pytest.raises(ValueError, match="pad_sequences") as info:
        utils.pad_sequences(**kwargs)
    assert what in str(info.value)


# -- timeseries_dataset_from_array -----------------------------------------------------------
def test_timeseries_keras_documented_examples():
    # Example 1: indices 0..98, sequence_length 10, sampling_rate 2, stride 3.
    ds = utils.timeseries_dataset_from_array(np.arange(99), None, sequence_length=10,
                                             sampling_rate=2, sequence_stride=3,
                                             batch_size=None)
    windows = np.stack(list(ds))
    np.testing.assert_array_equal(windows[0], np.arange(0, 20, 2))
    np.testing.assert_array_equal(windows[1], np.arange(3, 23, 2))
    np.testing.assert_array_equal(windows[-1], np.arange(78, 98, 2))
    assert len(windows) == 27
    # Example 2: the past 10 steps predict the next.
    data = np.random.default_rng(0).standard_normal(57).astype(np.float32)
    ds = utils.timeseries_dataset_from_array(data[:-10], data[10:], sequence_length=10,
                                             batch_size=8)
    x, y = next(iter(ds))
    np.testing.assert_array_equal(x[0], data[:10])
    assert y[0] == data[10] and x.shape == (8, 10) and len(ds) == 5
    xs, ys = zip(*ds)
    x_all, y_all = np.concatenate(xs), np.concatenate(ys)
    assert x_all.shape == (38, 10)
    for i in (0, 17, 37):
        np.testing.assert_array_equal(x_all[i], data[i:i + 10])
        assert y_all[i] == data[i + 10]
    # Example 3: non-overlapping windows of 20.
    xa = np.arange(100)
    ds = utils.timeseries_dataset_from_array(xa * 2, None, sequence_length=20,
                                             sequence_stride=20)
    np.testing.assert_array_equal(ds[0][1], xa[20:40] * 2)


def test_timeseries_start_end_shuffle_and_features():
    data = np.arange(60, dtype=np.float64).reshape(30, 2)
    targets = np.arange(30) * 10
    ds = utils.timeseries_dataset_from_array(data, targets, sequence_length=3,
                                             sampling_rate=2, start_index=4, end_index=20,
                                             batch_size=4)
    x, y = ds[0]
    assert x.shape == (4, 3, 2)
    np.testing.assert_array_equal(x[1], data[[5, 7, 9]])
    np.testing.assert_array_equal(y, targets[4:8])
    last = np.concatenate([b[0] for b in ds])
    assert last[-1, -1, 0] == data[19, 0] and len(last) == 20 - 4 - 4
    shuffled = utils.timeseries_dataset_from_array(data, targets, 3, batch_size=None,
                                                   shuffle=True, seed=3)
    starts = np.arange(28)
    np.random.RandomState(3).shuffle(starts)
    got = np.array([w[1] for w in shuffled])
    np.testing.assert_array_equal(got, targets[starts])


@pytest.mark.skipif(not HAS_TF, reason="Keras's timeseries_dataset_from_array needs "
                    "TensorFlow")
def test_timeseries_matches_keras():
    keras = _keras()
    data = np.random.default_rng(1).standard_normal((41, 3))
    targets = np.arange(41)
    kw = {"sequence_length": 5, "sequence_stride": 2, "sampling_rate": 3, "batch_size": 4,
          "start_index": 2, "end_index": 39}
    got = list(utils.timeseries_dataset_from_array(data, targets, **kw))
    want = list(keras.utils.timeseries_dataset_from_array(data, targets, **kw))
    assert len(got) == len(want)
    for (gx, gy), (wx, wy) in zip(got, want):
        np.testing.assert_array_equal(gx, np.asarray(wx))
        np.testing.assert_array_equal(gy, np.asarray(wy))


@pytest.mark.parametrize("kwargs, what", [
    ({"sequence_length": 0}, "sequence_length"),
    ({"sequence_length": 3, "sampling_rate": 0}, "sampling_rate"),
    ({"sequence_length": 3, "sequence_stride": 20}, "sequence_stride"),
    ({"sequence_length": 3, "start_index": 8, "end_index": 5}, "end_index (5)"),
    ({"sequence_length": 3, "batch_size": 0}, "batch_size"),
])
def test_timeseries_bad_input(kwargs, what):
    with pytest.raises(ValueError, match="timeseries_dataset_from_array") as info:
        utils.timeseries_dataset_from_array(np.arange(20), None, **kwargs)
    assert what in str(info.value)


# -- TextVectorization -----------------------------------------------------------------------
def test_text_vectorization_keras_documented_examples():
    layer = layers.TextVectorization(max_tokens=5000, output_mode="int",
                                     output_sequence_length=4)
    layer.adapt(["foo bar", "bar baz", "baz bada boom"])
    np.testing.assert_array_equal(layer([["foo qux bar"], ["qux baz"]]),
                                  [[4, 1, 3, 0], [1, 2, 0, 0]])
    layer = layers.TextVectorization(max_tokens=5000, output_sequence_length=4,
                                     vocabulary=["earth", "wind", "and", "fire"])
    assert layer.get_vocabulary() == ["", "[UNK]", "earth", "wind", "and", "fire"]


def test_text_vectorization_rules():
    corpus = np.array(["The cat sat.", "the DOG, the cat!", "Ünïcode stays CASED", "a b b"])
    layer = layers.TextVectorization(max_tokens=6)
    layer.adapt(corpus)
    # the: 3, cat: 2, b: 2 (ties: descending token), then the 1s descending: 'Ünïcode'
    # (lowercasing is ASCII-only, as tf.strings.lower) > 'stays' > ...; max_tokens=6 keeps 4
    # learned tokens.
    assert layer.get_vocabulary() == ["", "[UNK]", "the", "cat", "b", "Ünïcode"]
    ids = layer(corpus)
    assert ids.dtype == np.int64 and ids.shape == (4, 4)
    np.testing.assert_array_equal(ids, [[2, 3, 1, 0], [2, 1, 2, 3], [5, 1, 1, 0],
                                        [1, 4, 4, 0]])
    chars = layers.TextVectorization(standardize=None, split="character",
                                     output_sequence_length=5)
    chars.adapt(["abba", "cab"])
    assert chars.get_vocabulary() == ["", "[UNK]", "b", "a", "c"]
    np.testing.assert_array_equal(chars(["bad", "c"]), [[2, 3, 1, 0, 0], [4, 0, 0, 0, 0]])
    grams = layers.TextVectorization(ngrams=2, vocabulary=["a b", "b", "a"])
    np.testing.assert_array_equal(grams(["a b c"]), [[4, 3, 1, 2, 1]])
    custom = layers.TextVectorization(standardize=lambda a: np.char.upper(a), split=None,
                                      vocabulary=["HI THERE"])
    np.testing.assert_array_equal(custom(["hi there", "x"]), [[2], [1]])


def test_text_vectorization_config_round_trip_keeps_vocabulary():
    layer = layers.TextVectorization(max_tokens=20, output_sequence_length=6)
    layer.adapt([["one two three two"], ["three three four"]])
    config = json.loads(json.dumps(layer.get_config()))
    assert config["vocabulary"] == ["three", "two", "one", "four"]
    twin = layers.LAYERS["TextVectorization"].from_config(config)
    texts = ["two four five", "one"]
    np.testing.assert_array_equal(twin(texts), layer(texts))
    assert twin.get_config() == layer.get_config()


@pytest.mark.skipif(not HAS_TF, reason="Keras's TextVectorization needs TensorFlow")
def test_text_vectorization_matches_keras():
    keras = _keras()
    corpus = ["The cat sat.", "the DOG, the cat!", "a b b", "zz top zz"]
    for kwargs in ({"max_tokens": 6, "output_sequence_length": 4}, {"ngrams": 2},
                   {"split": "character", "standardize": "lower"}):
        ours, theirs = layers.TextVectorization(**kwargs), keras.layers.TextVectorization(
            **kwargs)
        ours.adapt(corpus)
        theirs.adapt(corpus)
        assert ours.get_vocabulary() == theirs.get_vocabulary()
        np.testing.assert_array_equal(ours(corpus), np.asarray(theirs(corpus)))


@pytest.mark.parametrize("kwargs, what", [
    ({"max_tokens": 1}, "max_tokens"),
    ({"standardize": "upper"}, "standardize"),
    ({"split": "comma"}, "split"),
    ({"output_mode": "multi_hot"}, "output_mode='int'"),
    ({"output_sequence_length": 0}, "output_sequence_length"),
    ({"ngrams": 0}, "ngrams"),
    ({"vocabulary": ["a", "a"]}, "repeats"),
    ({"vocabulary": ["a", "[UNK]"]}, "special tokens"),
    ({"vocabulary": ["a", "b", "c"], "max_tokens": 4}, "exceeds max_tokens=4"),
])
def test_text_vectorization_bad_arguments(kwargs, what):
    with pytest.raises(ValueError, match="TextVectorization") as info:
        layers.TextVectorization(**kwargs)
    assert what in str(info.value)


def test_text_vectorization_bad_input():
    layer = layers.TextVectorization(vocabulary=["a"])
    with pytest.raises(ValueError, match=r"TextVectorization .*shape \(N,\) or \(N, 1\), got "
                                         r"shape \(1, 2\)"):
        layer([["a", "b"]])
    with pytest.raises(TypeError, match="TextVectorization .*expected strings, got int"):
        layer([1, 2])
    with pytest.raises(TypeError, match="TextVectorization .*one string"):
        layer.adapt("just one text")
