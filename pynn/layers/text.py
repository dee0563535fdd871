"""Keras 3's TextVectorization (output_mode 'int'): strings -> padded int64 token ids.

It works on Python strings before the model, so it has no backend op: standardize, split,
optional n-grams and a dictionary lookup are string work (Keras runs them through
tf.strings on the CPU for every backend). Keras's rules, which decide the ids:
  - standardize 'lower' lowercases ASCII letters only (tf.strings.lower without an
    encoding), 'strip_punctuation' deletes the characters of Keras's regex below;
  - split 'whitespace' splits on runs of whitespace, 'character' into code points;
  - ngrams n (all widths 1..n) or a tuple of widths, joined with one space, widths in
    order, as tf.strings.ngrams;
  - the vocabulary is ['', '[UNK]'] (padding id 0, out-of-vocabulary id 1) followed by the
    adapted tokens by count, most frequent first, ties by the token in *descending* order
    (Keras's np.lexsort((tokens, counts))[::-1]); ``max_tokens`` counts the two specials;
  - output (N, L) int64: L = output_sequence_length (longer texts truncated at the end,
    shorter padded with 0 after), or the longest text of the call.
The vocabulary is part of get_config, so a saved layer (or model config) carries it.
"""

import re
from collections import Counter

import numpy as np

from pynn.layers.base import Layer

# Keras's DEFAULT_STRIP_REGEX.
_PUNCTUATION = re.compile(r'[!"#$%&()\*\+,-\./:;<=>?@\[\\\]^_`{|}~\']')
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
PAD_TOKEN, OOV_TOKEN = "", "[UNK]"
STANDARDIZE = (None, "lower", "strip_punctuation", "lower_and_strip_punctuation")
SPLIT = (None, "whitespace", "character")


class TextVectorization(Layer):
    def __init__(self, max_tokens=None, standardize="lower_and_strip_punctuation",
                 split="whitespace", ngrams=None, output_mode="int",
                 output_sequence_length=None, pad_to_max_tokens=False, vocabulary=None,
                 idf_weights=None, sparse=False, ragged=False, encoding="utf-8", **kwargs):
        kwargs.pop("vocabulary_size", None)   # Keras's config carries it; derived here
        super().__init__(**kwargs)
        label = self._label = f"TextVectorization '{self.name}'"
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(
                max_tokens, (int, np.integer)) or max_tokens < 2):
            raise ValueError(f"{label}: max_tokens must be None or an int of at least 2 (the "
                             f"padding and OOV tokens count), got {max_tokens!r}")
        if not (callable(standardize) or standardize in STANDARDIZE):
            raise ValueError(f"{label}: standardize must be one of {STANDARDIZE} or a "
                             f"callable, got {standardize!r}")
        if not (callable(split) or split in SPLIT):
            raise ValueError(f"{label}: split must be one of {SPLIT} or a callable, got "
                             f"{split!r}")
        if output_mode != "int":
            raise ValueError(f"{label}: only output_mode='int' is implemented, got "
                             f"{output_mode!r}")
        if output_sequence_length is not None and (
                isinstance(output_sequence_length, bool)
                or not isinstance(output_sequence_length, (int, np.integer))
                or output_sequence_length < 1):
            raise ValueError(f"{label}: output_sequence_length must be None or a positive "
                             f"int, got {output_sequence_length!r}")
        for flag, name in ((pad_to_max_tokens, "pad_to_max_tokens"), (sparse, "sparse"),
                           (ragged, "ragged"), (idf_weights is not None, "idf_weights")):
            if flag:
                raise ValueError(f"{label}: {name} applies to output modes other than 'int' "
                                 f"(or ragged tensors), which pynn does not implement")
        if encoding.lower().replace("-", "") != "utf8":
            raise ValueError(f"{label}: only encoding='utf-8' is supported, got {encoding!r}")
        self.max_tokens = None if max_tokens is None else int(max_tokens)
        self.standardize = standardize
        self.split = split
        self.ngrams = self._ngram_widths(ngrams)
        self._ngrams_arg = ngrams
        self.output_mode = output_mode
        self.output_sequence_length = (None if output_sequence_length is None
                                       else int(output_sequence_length))
        self.set_vocabulary([] if vocabulary is None else vocabulary)
        self.built = True

    def _ngram_widths(self, ngrams):
        if ngrams is None:
            return None
        if isinstance(ngrams, (int, np.integer)) and not isinstance(ngrams, bool) \
                and ngrams >= 1:
            return tuple(range(1, int(ngrams) + 1))
        if isinstance(ngrams, (tuple, list)) and ngrams and all(
                isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1
                for n in ngrams):
            return tuple(int(n) for n in ngrams)
        raise ValueError(f"{self._label}: ngrams must be None, a positive int or a tuple of "
                         f"positive ints, got {ngrams!r}")

    # -- vocabulary ---------------------------------------------------------------------
    def set_vocabulary(self, vocabulary, idf_weights=None):
        """A list of tokens or a path to a file of one token per line; a leading
        ['', '[UNK]'] is taken as the special tokens (as get_vocabulary returns them)."""
        if idf_weights is not None:
            raise ValueError(f"{self._label}: idf_weights applies to output_mode 'tf_idf', "
                             f"which pynn does not implement")
        if isinstance(vocabulary, str):
            with open(vocabulary, encoding="utf-8") as f:
                vocabulary = f.read().splitlines()
        tokens = [str(t) for t in np.asarray(vocabulary, dtype=object).reshape(-1)]
        if tokens[:2] == [PAD_TOKEN, OOV_TOKEN]:
            tokens = tokens[2:]
        if PAD_TOKEN in tokens or OOV_TOKEN in tokens:
            raise ValueError(f"{self._label}: the vocabulary may hold the special tokens "
                             f"{PAD_TOKEN!r} and {OOV_TOKEN!r} only as its first two entries")
        if len(set(tokens)) != len(tokens):
            repeated = sorted(t for t, c in Counter(tokens).items() if c > 1)
            raise ValueError(f"{self._label}: the vocabulary repeats tokens {repeated[:5]}")
        if self.max_tokens is not None and len(tokens) + 2 > self.max_tokens:
            raise ValueError(f"{self._label}: a vocabulary of {len(tokens)} tokens plus the 2 "
                             f"special ones exceeds max_tokens={self.max_tokens}")
        self._tokens = tokens
        self._index = {t: i + 2 for i, t in enumerate(tokens)}

    def get_vocabulary(self, include_special_tokens=True):
        return ([PAD_TOKEN, OOV_TOKEN] if include_special_tokens else []) + list(self._tokens)

    def vocabulary_size(self):
        return len(self._tokens) + 2

    def adapt(self, data, batch_size=None, steps=None):
        """Learns the vocabulary from ``data``: strings (N,) or (N, 1), or an iterable of
        such batches (at most ``steps`` of them)."""
        counts = Counter()
        for batch in self._batches(data, steps):
            for tokens in self._tokenize(batch):
                counts.update(tokens)
        counts.pop(PAD_TOKEN, None)
        counts.pop(OOV_TOKEN, None)
        # Keras: most frequent first, ties by the token in descending order.
        ordered = sorted(counts.items(), key=lambda tc: (tc[1], tc[0]), reverse=True)
        if self.max_tokens is not None:
            ordered = ordered[:self.max_tokens - 2]
        self.set_vocabulary([t for t, _ in ordered])

    def _batches(self, data, steps):
        if isinstance(data, (str, bytes)):
            raise TypeError(f"{self._label}: adapt() expects a batch of strings, got one "
                            f"string")
        if isinstance(data, (list, tuple, np.ndarray)):
            array = np.asarray(data, dtype=object)
            if array.size == 0 or isinstance(array.reshape(-1)[0], (str, bytes)):
                yield data
                return
        for i, batch in enumerate(data):
            if steps is not None and i >= steps:
                return
            yield batch

    # -- text -> ids ----------------------------------------------------------------------
    def _texts(self, inputs):
        """(N,) or (N, 1) strings -> a list of N Python strings."""
        array = np.asarray(inputs, dtype=object)
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim != 1:
            raise ValueError(f"{self._label}: expected strings of shape (N,) or (N, 1), got "
                             f"shape {array.shape}")
        texts = []
        for t in array:
            if isinstance(t, bytes):
                t = t.decode("utf-8")
            if not isinstance(t, str):
                raise TypeError(f"{self._label}: expected strings, got {type(t).__name__} "
                                f"{t!r}")
            texts.append(t)
        return texts

    def _standardized(self, texts):
        if callable(self.standardize):
            # Keras's non-TensorFlow backends hand a callable a NumPy array of str.
            return [str(t) for t in self.standardize(np.asarray(texts, dtype=str))]
        if self.standardize in ("lower", "lower_and_strip_punctuation"):
            texts = [t.translate(_ASCII_LOWER) for t in texts]
        if self.standardize in ("strip_punctuation", "lower_and_strip_punctuation"):
            texts = [_PUNCTUATION.sub("", t) for t in texts]
        return texts

    def _tokenize(self, inputs):
        texts = self._standardized(self._texts(inputs))
        if self.split is None:
            tokens = [[t] for t in texts]
        elif self.split == "whitespace":
            tokens = [t.split() for t in texts]
        elif self.split == "character":
            tokens = [list(t) for t in texts]
        else:
            tokens = [list(self.split(t)) for t in texts]
        if self.ngrams is not None:
            tokens = [[" ".join(ts[i:i + n]) for n in self.ngrams
                       for i in range(len(ts) - n + 1)] for ts in tokens]
        return tokens

    def __call__(self, inputs, training=False):
        tokens = self._tokenize(inputs)
        width = (self.output_sequence_length if self.output_sequence_length is not None
                 else max((len(ts) for ts in tokens), default=0))
        ids = [[self._index.get(t, 1) for t in ts[:width]] for ts in tokens]
        return pad_ids(ids, width)

    call = __call__

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_sequence_length)

    def get_config(self):
        config = super().get_config()
        config.update(
            max_tokens=self.max_tokens, standardize=self.standardize, split=self.split,
            ngrams=self._ngrams_arg, output_mode=self.output_mode,
            output_sequence_length=self.output_sequence_length, pad_to_max_tokens=False,
            sparse=False, ragged=False, vocabulary=list(self._tokens), idf_weights=None,
            encoding="utf-8", vocabulary_size=self.vocabulary_size())
        return config


def pad_ids(ids, width):
    """Lists of ids (each at most ``width`` long) -> (N, width) int64, zeros after."""
    from pynn.utils import pad_sequences

    return pad_sequences(ids, maxlen=width, dtype="int64", padding="post", truncating="post")
