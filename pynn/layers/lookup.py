"""Keras 3's lookup and hashing preprocessing layers: Hashing, HashedCrossing, StringLookup,
IntegerLookup.

These are host preprocessing, as TextVectorization: strings live on the host (Keras runs
the same layers through TensorFlow's CPU string ops on every backend), so they take NumPy
arrays or lists and return NumPy arrays, never device tensors. An OpenCL device tensor is
refused by name (move the data to the host, or run these layers before the model).

The hashes are TensorFlow's, from native/hashing.pyx, so the bins are Keras's:
  - Hashing: FarmHash Fingerprint64 (tf.strings.to_hash_bucket_fast) of each value, or with
    a salt SipHash-2-4 keyed by (salt[0], salt[1]) (to_hash_bucket_strong); integers hash
    their decimal string (tf.as_string), floats are first truncated to int64;
  - HashedCrossing: tf.sparse.cross_hashed: each feature's 64-bit id (a string's
    Fingerprint64, an integer itself) chained by FingerprintCat64 from the key 0xDECAFCAFFE,
    then modulo num_bins (not the hash of the joined string 'a_X_b', which is tf.sparse.cross
    without hashing);
  - the lookups' extra OOV buckets: FarmHash of the string (or of an integer's decimal form
    with oov_method='farmhash', SipHash with a salt), or the integer floor-modulo.
Vocabulary order after adapt is Keras's: by count, most frequent first, ties by the token
in descending order; the vocabulary (and idf_weights) live in get_config, as Keras's.
"""

import collections
import numbers
import os

import numpy as np

from pynn.layers.base import Layer
from pynn.layers.symbolic import is_symbolic

OUTPUT_MODES = ("int", "one_hot", "multi_hot", "count", "tf_idf")
HASHING_MODES = ("int", "one_hot", "multi_hot", "count")
CROSSING_MODES = ("int", "one_hot")
OOV_METHODS = ("floormod", "farmhash")
# tf.sparse.cross_hashed's default hash_key.
CROSS_HASH_KEY = 0xDECAFCAFFE
INT64_MAX = np.iinfo(np.int64).max


def _name(layer):
    return f"{type(layer).__name__} '{layer.name}'"


def _on_host(layer, inputs):
    """inputs as a NumPy array; device tensors are refused."""
    if type(inputs).__module__.split(".")[0] in ("pyopencl", "pynn"):
        raise TypeError(f"{_name(layer)}: this layer is host preprocessing (strings and their "
                        f"hashes live on the host); expected a NumPy array or a list, got a "
                        f"device tensor {type(inputs).__name__}: move it to the host with "
                        f"to_numpy() or run the layer before the model")
    return np.asarray(inputs)


# -- the hashes -------------------------------------------------------------------------------

def _hashing():
    from pynn._native import hashing

    return hashing


def _string_buffer(values):
    """A NumPy 'U' or 'S' array -> (data uint8, offsets int64 (N + 1,)), UTF-8 encoded."""
    native = _hashing()
    flat = np.ascontiguousarray(values.reshape(-1))
    n = flat.size
    width = flat.dtype.itemsize
    if flat.dtype.kind == "U":
        codes = flat.view(np.uint32).reshape(n, width // 4) if width else np.zeros((n, 0),
                                                                                  np.uint32)
        lengths = np.empty(n, np.int64)
        native.utf8_lengths(codes, lengths)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        data = np.empty(offsets[-1], np.uint8)
        native.utf8_encode(codes, offsets, data)
    else:
        raw = flat.view(np.uint8).reshape(n, width) if width else np.zeros((n, 0), np.uint8)
        lengths = np.empty(n, np.int64)
        native.bytes_lengths(raw, lengths)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        data = np.empty(offsets[-1], np.uint8)
        native.bytes_pack(raw, offsets, data)
    return data, offsets


def as_strings(values):
    """Values as a NumPy string array the hashes read: strings stay, integers become their
    decimal form (tf.as_string), floats are truncated to int64 first (Keras's cast)."""
    values = np.asarray(values)
    if values.dtype.kind == "O":
        flat = values.reshape(-1)
        if flat.size and all(isinstance(v, bytes) for v in flat[:1]):
            return values.astype(bytes)
        values = values.astype(str)
    if values.dtype.kind == "f":
        values = values.astype(np.int64)
    if values.dtype.kind == "b":
        values = values.astype(np.int64)
    if values.dtype.kind in "iu":
        values = values.astype(str)
    return values


def hash64(values, salt=None):
    """Fingerprint64 (salt None) or SipHash-2-4 keyed by salt (k0, k1) of each value's string
    form -> uint64 shaped as values."""
    strings = as_strings(values)
    data, offsets = _string_buffer(strings)
    native = _hashing()
    if salt is None:
        out = native.fingerprint64(data, offsets)
    else:
        out = native.siphash64(data, offsets, int(salt[0]) & (2**64 - 1),
                               int(salt[1]) & (2**64 - 1))
    return out.reshape(strings.shape)


def hash_buckets(values, num_buckets, salt=None):
    """tf.strings.to_hash_bucket_fast / _strong: hash64 % num_buckets as int64."""
    return (hash64(values, salt) % np.uint64(num_buckets)).astype(np.int64)


# -- Keras's encode_categorical_inputs on the host ---------------------------------------------

def encode(layer, ids, mode, depth, dtype, idf_weights=None):
    """Ids -> Keras's one_hot (the last axis squeezed when 1), multi_hot, count or tf_idf rows
    (rank 1: one sample; rank 2: one row per sample). Ids outside [0, depth) count nowhere,
    as tf.one_hot and bincount leave them."""
    ids = np.asarray(ids, np.int64)
    if ids.ndim == 0:
        ids = ids.reshape(1)
    if mode == "one_hot":
        if ids.ndim > 1 and ids.shape[-1] == 1:
            ids = ids[..., 0]
        rows = ids.reshape(-1, 1)
        shape = ids.shape + (depth,)
    else:
        if ids.ndim > 2:
            raise ValueError(f"{_name(layer)}: output_mode={mode!r} supports inputs of rank "
                             f"at most 2 (Keras's limit), got shape {ids.shape}")
        rows = ids.reshape(-1, ids.shape[-1]) if ids.ndim == 2 else ids.reshape(1, -1)
        shape = (depth,) if ids.ndim == 1 else (ids.shape[0], depth)
    counts = np.zeros((rows.shape[0], depth), np.float64)
    valid = (rows >= 0) & (rows < depth)
    row_of = np.broadcast_to(np.arange(rows.shape[0])[:, None], rows.shape)
    np.add.at(counts, (row_of[valid], rows[valid]), 1.0)
    if mode in ("one_hot", "multi_hot"):
        counts = np.minimum(counts, 1.0)
    if mode == "tf_idf":
        counts = counts * np.asarray(idf_weights, np.float32)
    return counts.reshape(shape).astype(dtype)


# -- Hashing ---------------------------------------------------------------------------------

def _salt(layer, salt):
    if salt is None:
        return None
    if isinstance(salt, (tuple, list)) and len(salt) == 2 and all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in salt):
        return [int(s) for s in salt]
    if isinstance(salt, numbers.Integral) and not isinstance(salt, bool):
        return [int(salt), int(salt)]
    raise ValueError(f"{_name(layer)}: the `salt` argument can only be a tuple of size 2 "
                     f"integers, or a single integer. Received: salt={salt!r}")


class Hashing(Layer):
    """Keras 3's ``Hashing(num_bins, mask_value=None, salt=None, output_mode="int")``: each
    string or integer to a bin, FarmHash Fingerprint64 (or SipHash-2-4 with a salt) modulo
    num_bins; with mask_value, that value reads 0 and the others 1 + hash % (num_bins - 1).
    Host preprocessing (see the module docstring); sparse outputs are not supported."""

    def __init__(self, num_bins, mask_value=None, salt=None, output_mode="int", sparse=False,
                 **kwargs):
        dtype = kwargs.pop("dtype", None)
        super().__init__(**kwargs)
        if isinstance(num_bins, bool) or not isinstance(num_bins, numbers.Integral) \
                or num_bins <= 0:
            raise ValueError(f"{_name(self)}: the `num_bins` for `Hashing` cannot be `None` or "
                             f"non-positive values. Received: num_bins={num_bins!r}")
        if output_mode not in HASHING_MODES:
            raise ValueError(f"{_name(self)}: invalid value for argument `output_mode`. "
                             f"Expected one of {HASHING_MODES}. Received: "
                             f"output_mode={output_mode!r}")
        if sparse:
            raise ValueError(f"{_name(self)}: sparse outputs need TensorFlow's SparseTensor, "
                             f"which pynn does not have; use sparse=False")
        self.output_dtype = _dtype_name(dtype) or ("int64" if output_mode == "int"
                                                  else "float32")
        if output_mode == "int" and self.output_dtype not in ("int32", "int64"):
            raise ValueError(f"{_name(self)}: when `output_mode=\"int\"`, `dtype` should be an "
                             f"integer type, 'int32' or 'int64'. Received: dtype={dtype!r}")
        self.num_bins, self.mask_value, self.output_mode = int(num_bins), mask_value, \
            output_mode
        self.salt = _salt(self, salt)
        self.strong_hash = self.salt is not None
        self.built = True

    def __call__(self, inputs, training=None):
        if is_symbolic(inputs):   # a node of a model: its integer inputs come as arrays
            return super().__call__(inputs, training=training)
        return self.call(inputs)

    def call(self, inputs, training=False):
        values = _on_host(self, inputs)
        if self.output_mode == "one_hot" and values.ndim and values.shape[-1] == 1:
            values = values[..., 0]
        bins = self.num_bins
        mask = None
        if self.mask_value is not None and bins > 1:
            bins -= 1
            mask = values == self.mask_value
        ids = hash_buckets(values, bins, self.salt)
        if mask is not None:
            ids = np.where(mask, 0, ids + 1)
        if self.output_mode == "int":
            return ids.astype(self.output_dtype)
        return encode(self, ids, self.output_mode, self.num_bins, self.output_dtype)

    def compute_output_shape(self, input_shape):
        if self.output_mode == "int":
            return tuple(input_shape)
        if len(input_shape) == 0:
            return (self.num_bins,)
        return tuple(input_shape[:-1]) + (self.num_bins,)

    def backward(self, dy):
        return None

    def get_config(self):
        config = super().get_config()
        config.update(dtype=self.output_dtype, num_bins=self.num_bins, salt=self.salt,
                      mask_value=self.mask_value, output_mode=self.output_mode, sparse=False)
        return config


def _dtype_name(dtype):
    """A dtype argument (a name or Keras's serialized DTypePolicy) as its name, or None."""
    if isinstance(dtype, dict):
        dtype = (dtype.get("config") or {}).get("name")
    return None if dtype is None else str(np.dtype(dtype))


# -- HashedCrossing --------------------------------------------------------------------------

class HashedCrossing(Layer):
    """Keras 3's ``HashedCrossing(num_bins, output_mode="int")``: features of shape (),
    (batch,) or (batch, 1), strings or integers, crossed by tf.sparse.cross_hashed (each
    string's Fingerprint64 or the integer itself, chained by FingerprintCat64 from the key
    0xDECAFCAFFE) modulo num_bins. Host preprocessing; sparse outputs are not supported."""

    def __init__(self, num_bins, output_mode="int", sparse=False, name=None, dtype=None,
                 **kwargs):
        kwargs.pop("trainable", None)   # Keras's config has none; a pynn one may
        super().__init__(name=name, **kwargs)
        if isinstance(num_bins, bool) or not isinstance(num_bins, numbers.Integral) \
                or num_bins <= 0:
            raise ValueError(f"{_name(self)}: num_bins must be a positive int, got "
                             f"{num_bins!r}")
        if output_mode not in CROSSING_MODES:
            raise ValueError(f"{_name(self)}: the `output_mode` argument value must be one of "
                             f"{CROSSING_MODES}. Received: output_mode={output_mode!r}")
        if sparse:
            raise ValueError(f"{_name(self)}: `sparse=True` can only be used with the "
                             f"TensorFlow backend")
        self.num_bins, self.output_mode = int(num_bins), output_mode
        self.output_dtype = _dtype_name(dtype) or ("int64" if output_mode == "int"
                                                  else "float32")
        self.built = True

    def __call__(self, inputs, training=None):
        if is_symbolic(inputs):   # a node of a model: its integer inputs come as arrays
            return super().__call__(inputs, training=training)
        return self.call(inputs)

    def call(self, inputs, training=False):
        if not isinstance(inputs, (list, tuple)):
            raise ValueError(f"{_name(self)}: `HashedCrossing` should be called on a list or "
                             f"tuple of inputs. Received: inputs={inputs!r}")
        if len(inputs) < 2:
            raise ValueError(f"{_name(self)}: `HashedCrossing` should be called on at least "
                             f"two inputs. Received: inputs={inputs!r}")
        features = [_on_host(self, x) for x in inputs]
        shape = features[0].shape
        if len(shape) > 2 or (len(shape) == 2 and shape[-1] != 1):
            raise ValueError(f"{_name(self)}: all `HashedCrossing` inputs should have shape "
                             f"`()`, `(batch_size)` or `(batch_size, 1)`. Received shapes "
                             f"{[f.shape for f in features]}")
        if any(f.shape != shape for f in features[1:]):
            raise ValueError(f"{_name(self)}: all `HashedCrossing` inputs should have equal "
                             f"shape. Received shapes {[f.shape for f in features]}")
        columns = []
        for f in features:
            if f.dtype.kind in "iu":
                columns.append(f.reshape(-1).astype(np.int64).view(np.uint64))
            elif f.dtype.kind in "USO" and (f.dtype.kind != "O" or all(
                    isinstance(v, (str, bytes)) for v in f.reshape(-1))):
                columns.append(hash64(f.reshape(-1)))
            else:
                raise ValueError(f"{_name(self)}: all `HashedCrossing` inputs should have an "
                                 f"integer or string dtype. Received dtypes "
                                 f"{[str(x.dtype) for x in features]}")
        crossed = _hashing().fingerprint_cat64(np.stack(columns, axis=1), CROSS_HASH_KEY)
        ids = (crossed % np.uint64(self.num_bins)).astype(np.int64).reshape(shape)
        if self.output_mode == "int":
            return ids.astype(self.output_dtype)
        return encode(self, ids, "one_hot", self.num_bins, self.output_dtype)

    def compute_output_shape(self, input_shape):
        first = tuple(input_shape[0])
        if self.output_mode == "int":
            return first
        if first and first[-1] == 1:
            return first[:-1] + (self.num_bins,)
        return first + (self.num_bins,)

    def backward(self, dy):
        return None

    def get_config(self):
        # Keras's HashedCrossing.get_config holds exactly these five keys.
        return {"num_bins": self.num_bins, "output_mode": self.output_mode, "sparse": False,
                "name": self.name, "dtype": self.output_dtype}


# -- StringLookup and IntegerLookup --------------------------------------------------------------

class _IndexLookup(Layer):
    """Keras's IndexLookup: a vocabulary -> indices [mask][OOV buckets][tokens], its inverse,
    and the encoded output modes. Subclasses fix the token kind."""

    _string = True

    def __init__(self, max_tokens, num_oov_indices, mask_token, oov_token, vocabulary=None,
                 idf_weights=None, invert=False, output_mode="int", sparse=False,
                 pad_to_max_tokens=False, oov_method="floormod", salt=None,
                 vocabulary_size=None, **kwargs):
        # vocabulary_size: Keras's config carries it (the frozen size of the encoded modes).
        kwargs.pop("has_input_vocabulary", None)
        kwargs.pop("dtype", None)   # Keras's config holds the float32 policy; outputs are fixed
        super().__init__(**kwargs)
        label = _name(self)
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(
                max_tokens, numbers.Integral) or max_tokens <= 1):
            raise ValueError(f"{label}: if set, `max_tokens` must be greater than 1. Received: "
                             f"max_tokens={max_tokens!r}")
        if pad_to_max_tokens and max_tokens is None:
            raise ValueError(f"{label}: if pad_to_max_tokens is True, must set `max_tokens`. "
                             f"Received: max_tokens={max_tokens!r}")
        if isinstance(num_oov_indices, bool) or not isinstance(
                num_oov_indices, numbers.Integral) or num_oov_indices < 0:
            raise ValueError(f"{label}: `num_oov_indices` must be greater than or equal to 0. "
                             f"Received: num_oov_indices={num_oov_indices!r}")
        if oov_method not in OOV_METHODS:
            raise ValueError(f"{label}: the `oov_method` argument value must be one of "
                             f"{OOV_METHODS}. Received: oov_method={oov_method!r}")
        if salt is not None and not self._string and oov_method != "farmhash":
            raise ValueError(f"{label}: `salt` can only be used when `oov_method='farmhash'`. "
                             f"Received: oov_method={oov_method!r}")
        if salt is not None:
            if isinstance(salt, (tuple, list)) and len(salt) == 2:
                salt = [int(s) for s in salt]
            elif isinstance(salt, numbers.Integral) and not isinstance(salt, bool):
                salt = [int(salt), int(salt)]
            else:
                raise ValueError(f"{label}: the `salt` argument can only be a tuple of 2 "
                                 f"integers, or a single integer. Received: salt={salt!r}")
        output_mode = {"binary": "multi_hot", "tf-idf": "tf_idf"}.get(output_mode, output_mode)
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"{label}: the `output_mode` argument value must be one of "
                             f"{OUTPUT_MODES}. Received: output_mode={output_mode!r}")
        if invert and output_mode != "int":
            raise ValueError(f"{label}: `output_mode` must be `'int'` when `invert` is true. "
                             f"Received: output_mode={output_mode!r}")
        if sparse:
            raise ValueError(f"{label}: `sparse=True` can only be used with the TensorFlow "
                             f"backend")
        if idf_weights is not None and output_mode != "tf_idf":
            raise ValueError(f"{label}: `idf_weights` should only be set if `output_mode` is "
                             f"`'tf_idf'`. Received: idf_weights={idf_weights!r} and "
                             f"output_mode={output_mode!r}")
        if output_mode == "tf_idf" and vocabulary is not None and idf_weights is None:
            raise ValueError(f"{label}: when specifying the `vocabulary` argument, in TF-IDF "
                             f"output mode, the `idf_weights` argument must also be provided.")
        self.invert, self.max_tokens = bool(invert), max_tokens
        self.num_oov_indices = int(num_oov_indices)
        self.mask_token, self.oov_token = mask_token, oov_token
        self.output_mode, self.pad_to_max_tokens = output_mode, bool(pad_to_max_tokens)
        self.oov_method, self.salt = oov_method, salt
        self._frozen_vocab_size = vocabulary_size
        self.input_vocabulary = vocabulary if not isinstance(vocabulary, str) else None
        self.input_idf_weights = idf_weights
        self._tokens = self._as_tokens([])
        self.idf_weights = None
        self._vocabulary_fixed = vocabulary is not None
        if vocabulary is not None:
            self.set_vocabulary(vocabulary, idf_weights)
        self.built = True

    # -- indices --------------------------------------------------------------------------
    def _oov_start_index(self):
        return 1 if self.mask_token is not None and self.output_mode == "int" else 0

    def _token_start_index(self):
        return self._oov_start_index() + self.num_oov_indices

    def vocabulary_size(self):
        return len(self._tokens) + self._token_start_index()

    def get_vocabulary(self, include_special_tokens=True):
        vocab = ([self.mask_token] * self._oov_start_index()
                 + [self.oov_token] * self.num_oov_indices + self._token_list())
        if not include_special_tokens:
            vocab = vocab[self._token_start_index():]
        return vocab

    def _token_list(self):
        return [str(t) for t in self._tokens] if self._string else \
            [int(t) for t in self._tokens]

    # -- the vocabulary ---------------------------------------------------------------------
    def _as_tokens(self, values, what="vocabulary"):
        """Values -> a 1-D NumPy array of tokens ('U' strings or int64)."""
        array = np.asarray(values)
        if self._string:
            if array.dtype.kind == "S":
                return np.char.decode(array, self.encoding)
            if array.dtype.kind == "O" and array.size and all(
                    isinstance(v, bytes) for v in array.reshape(-1)):
                return np.char.decode(array.astype(bytes), self.encoding)
            if array.size and not (array.dtype.kind == "U" or (array.dtype.kind == "O" and all(
                    isinstance(v, str) for v in array.reshape(-1)))):
                raise TypeError(f"{_name(self)}: {what} must be strings, got {array.dtype} "
                                f"values such as {array.reshape(-1)[:3].tolist()}")
            return array.astype(str)
        if array.size and array.dtype.kind not in "iu":
            if array.dtype.kind == "f" and np.all(array == np.floor(array)):
                return array.astype(np.int64)
            raise TypeError(f"{_name(self)}: {what} must be integers, got {array.dtype} "
                            f"values such as {array.reshape(-1)[:3].tolist()}")
        return array.astype(np.int64)

    def set_vocabulary(self, vocabulary, idf_weights=None):
        """A list or 1-D array of tokens, or the path of a file of one token per line. A
        leading run of the special tokens (as get_vocabulary returns them) is taken as
        such."""
        label = _name(self)
        if self.output_mode == "tf_idf":
            if idf_weights is None:
                raise ValueError(f"{label}: `idf_weights` must be set if output_mode is "
                                 f"'tf_idf'.")
        elif idf_weights is not None:
            raise ValueError(f"{label}: `idf_weights` should only be set if output_mode is "
                             f"`'tf_idf'`. Received: output_mode={self.output_mode!r} and "
                             f"idf_weights={idf_weights!r}")
        if isinstance(vocabulary, (str, os.PathLike)):
            if not os.path.exists(vocabulary):
                raise ValueError(f"{label}: vocabulary file {vocabulary} does not exist.")
            if self.output_mode == "tf_idf":
                raise ValueError(f"{label}: output_mode `'tf_idf'` does not support loading a "
                                 f"vocabulary from file.")
            with open(vocabulary, encoding="utf-8") as f:
                lines = f.read().splitlines()
            while lines and lines[-1] == "":
                lines.pop()
            vocabulary = lines if self._string else [int(line) for line in lines]
        tokens = self._as_tokens(vocabulary).reshape(-1)
        if tokens.size == 0:
            raise ValueError(f"{label}: cannot set an empty vocabulary. Received: "
                             f"vocabulary={vocabulary!r}")
        token_start = self._token_start_index()
        special = [self.mask_token] * self._oov_start_index() + \
            [self.oov_token] * self.num_oov_indices
        found_special = tokens[:token_start].tolist() == special and len(tokens) >= token_start
        if found_special:
            tokens = tokens[token_start:]
        counts = collections.Counter(tokens.tolist())
        repeated = [t for t, c in counts.items() if c > 1]
        if repeated:
            raise ValueError(f"{label}: the passed vocabulary has at least one repeated term. "
                             f"Please uniquify your dataset. The repeated terms are: "
                             f"{repeated}")
        if self.mask_token is not None and self.mask_token in counts:
            raise ValueError(f"{label}: found reserved mask token at unexpected location in "
                             f"`vocabulary`. Note that passed `vocabulary` does not need to "
                             f"include the OOV and mask tokens. Either remove all mask and OOV "
                             f"tokens, or include them only at the start of the vocabulary in "
                             f"precisely this order: {special}. Received: "
                             f"mask_token={self.mask_token!r}")
        if self.oov_token is not None and self.invert and self.oov_token in counts:
            raise ValueError(f"{label}: found reserved OOV token at unexpected location in "
                             f"`vocabulary`. Either remove all mask and OOV tokens, or include "
                             f"them only at the start of the vocabulary in precisely this "
                             f"order: {special}. Received: oov_token={self.oov_token!r}")
        size = token_start + len(tokens)
        if self.max_tokens is not None and size > self.max_tokens:
            raise ValueError(f"{label}: attempted to set a vocabulary larger than the maximum "
                             f"vocab size. Received vocabulary size is {size}; `max_tokens` is "
                             f"{self.max_tokens}.")
        if self.output_mode != "int" and not self.pad_to_max_tokens and \
                self._frozen_vocab_size is not None and size != self._frozen_vocab_size \
                and self.__dict__.get("_called"):
            raise RuntimeError(f"{label}: when using `output_mode={self.output_mode}` and "
                               f"`pad_to_max_tokens=False`, the vocabulary size cannot be "
                               f"changed after the layer is called. Old vocab size is "
                               f"{self._frozen_vocab_size}, new vocab size is {size}")
        self._tokens = tokens
        order = np.argsort(tokens, kind="stable")
        self._sorted, self._sorted_index = tokens[order], order + token_start
        self._frozen_vocab_size = size
        if self.output_mode == "tf_idf":
            self.idf_weights = self._padded_idf(idf_weights, found_special, len(vocabulary)
                                                if not isinstance(vocabulary, np.ndarray)
                                                else vocabulary.size)

    def _padded_idf(self, idf_weights, found_special, vocabulary_length):
        """Keras's padding of idf_weights: the special slots get their mean unless given, and
        pad_to_max_tokens pads zeros up to max_tokens."""
        weights = np.asarray(idf_weights, np.float64).reshape(-1)
        if weights.size != vocabulary_length:
            raise ValueError(f"{_name(self)}: `idf_weights` must be the same length as "
                             f"vocabulary. len(idf_weights) is {weights.size}; "
                             f"len(vocabulary) is {vocabulary_length}")
        front = 0 if found_special else self._token_start_index()
        back = self.max_tokens - front - weights.size if (
            self.pad_to_max_tokens and self.max_tokens is not None) else 0
        front_value = 0.0 if found_special else float(np.average(weights))
        return np.pad(weights, (front, back), constant_values=(front_value, 0.0)).astype(
            np.float32)

    def adapt(self, data, batch_size=None, steps=None):
        """Learns the vocabulary (and, for tf_idf, the document frequencies) from an array or
        list of tokens, or from batches of them: a pynn.data dataset (its x), a generator
        or any iterable (at most ``steps`` batches)."""
        if self._vocabulary_fixed:
            raise ValueError(f"Cannot adapt layer '{self.name}' after setting a static "
                             f"vocabulary via `vocabulary` argument or `set_vocabulary()` "
                             f"method.")
        from pynn import data as pynn_data

        counts, documents, n_documents = collections.Counter(), collections.Counter(), 0
        for batch in self._adapt_batches(data, steps, pynn_data):
            tokens = self._as_tokens(batch, "adapt() data")
            if tokens.ndim == 0:
                tokens = tokens.reshape(1, 1)
            elif tokens.ndim == 1:
                # Keras: a rank-1 array is a column of samples, a rank-1 batch one sample.
                tokens = tokens.reshape(-1, 1) if batch is data else tokens.reshape(1, -1)
            flat = tokens.reshape(-1)
            unique, unique_counts = np.unique(flat, return_counts=True)
            counts.update(dict(zip(unique.tolist(), unique_counts.tolist())))
            if self.output_mode == "tf_idf":
                # Each row is a document: count every token once per row.
                rows = tokens.reshape(tokens.shape[0], -1)
                kinds, inverse = np.unique(rows, return_inverse=True)
                row_of = np.repeat(np.arange(rows.shape[0]), rows.shape[1])
                present = np.unique(row_of * len(kinds) + inverse.reshape(-1)) % len(kinds)
                per_token = np.bincount(present, minlength=len(kinds))
                documents.update(dict(zip(kinds.tolist(), per_token.tolist())))
                n_documents += rows.shape[0]
        for special in (self.mask_token, self.oov_token):
            if special is not None:
                counts.pop(special, None)
        if not counts:
            return
        tokens = self._as_tokens(list(counts))
        frequency = np.asarray([counts[t] for t in tokens.tolist()], np.int64)
        # Keras: np.lexsort((tokens, counts))[::-1]
        order = np.lexsort((tokens, frequency))[::-1]
        if self.max_tokens:
            order = order[:self.max_tokens - self._token_start_index()]
        learned = tokens[order]
        idf = None
        if self.output_mode == "tf_idf":
            df = np.asarray([documents[t] for t in learned.tolist()], np.float64)
            idf = np.log(1 + n_documents / (1 + df))
        self._set_adapted(learned, idf)

    def _set_adapted(self, tokens, idf):
        fixed, self._vocabulary_fixed = self._vocabulary_fixed, False
        if self.output_mode == "tf_idf":
            mean = float(np.mean(idf.astype(np.float32)))
            weights = np.concatenate([np.full(self._token_start_index(), mean), idf])
            special = [self.mask_token] * self._oov_start_index() + \
                [self.oov_token] * self.num_oov_indices
            self.set_vocabulary(np.concatenate([self._as_tokens(special), tokens])
                                if special else tokens, weights)
        else:
            self.set_vocabulary(tokens)
        self._vocabulary_fixed = fixed

    def _adapt_batches(self, data, steps, pynn_data):
        if isinstance(data, (list, tuple, np.ndarray, str, bytes, numbers.Number)):
            yield data
            return
        if pynn_data._is_indexed_dataset(data):
            batches = (data[i] for i in range(len(data)))
        else:
            batches = iter(data)
        for i, batch in enumerate(batches):
            if steps is not None and i >= steps:
                return
            yield pynn_data.split_batch(batch, f"{_name(self)}.adapt", False)[0] \
                if isinstance(batch, tuple) else batch

    # -- lookups ----------------------------------------------------------------------------
    def __call__(self, inputs, training=None):
        if is_symbolic(inputs):   # a node of a model: its integer inputs come as arrays
            return super().__call__(inputs, training=training)
        return self.call(inputs)

    def _require_vocabulary(self):
        if self.output_mode != "int" and not self.pad_to_max_tokens and \
                self._frozen_vocab_size is None:
            raise RuntimeError(f"{_name(self)}: when using `output_mode={self.output_mode}` "
                               f"and `pad_to_max_tokens=False`, you must set the layer's "
                               f"vocabulary before calling it. Either pass a `vocabulary` "
                               f"argument to the layer, or call `adapt` with some sample data.")

    def call(self, inputs, training=False):
        self._require_vocabulary()
        self._called = True
        raw = _on_host(self, inputs)
        if self.invert:
            return self._invert(raw)
        values = self._as_tokens(raw, "inputs")
        ids = self._lookup(values)
        if self.output_mode == "int":
            return ids
        depth = self.max_tokens if self.pad_to_max_tokens else self._frozen_vocab_size
        if self.output_mode == "tf_idf":
            return encode(self, ids, "tf_idf", depth, np.float32, self.idf_weights)
        return encode(self, ids, self.output_mode, depth, np.int64)

    def _lookup(self, values):
        """Tokens -> int64 indices: vocabulary hits, the mask, OOV buckets."""
        ids = np.full(values.shape, -1, np.int64)
        if len(self._sorted):
            at = np.minimum(np.searchsorted(self._sorted, values), len(self._sorted) - 1)
            hit = self._sorted[at] == values
            ids = np.where(hit, self._sorted_index[at], -1)
        oov = ids < 0
        if self.mask_token is not None:
            masked = values == self._as_tokens([self.mask_token])[0]
            oov &= ~masked
            ids = np.where(masked, 0 if self.output_mode == "int" else INT64_MAX, ids)
        if not oov.any():
            return ids
        if self.num_oov_indices == 0:
            raise ValueError(f"{_name(self)}: when `num_oov_indices=0` all inputs should be in "
                             f"vocabulary, found OOV values {values[oov][:10].tolist()}, "
                             f"consider setting `num_oov_indices=1`.")
        start = self._oov_start_index()
        if self.num_oov_indices == 1:
            buckets = np.zeros(values.shape, np.int64)
        elif not self._string and self.oov_method != "farmhash":
            buckets = np.mod(values, self.num_oov_indices)
        else:
            buckets = np.zeros(values.shape, np.int64)
            buckets[oov] = hash_buckets(values[oov], self.num_oov_indices, self.salt)
        return np.where(oov, buckets + start, ids)

    def _invert(self, raw):
        if raw.size and raw.dtype.kind not in "iu":
            raise TypeError(f"{_name(self)}: with invert=True the inputs are integer indices, "
                            f"got {raw.dtype}")
        ids = raw.astype(np.int64)
        table = self.get_vocabulary()
        if self.mask_token is not None and self.output_mode == "int":
            table[0] = self.mask_token
        table = np.asarray(table, dtype=object if self._string else np.int64)
        inside = (ids >= 0) & (ids < len(table))
        out = table[np.where(inside, ids, 0)] if len(table) else np.empty(ids.shape, table.dtype)
        return np.where(inside, out, self.oov_token).astype(table.dtype)

    def compute_output_shape(self, input_shape):
        if self.output_mode == "int":
            return tuple(input_shape)
        depth = self.max_tokens if self.pad_to_max_tokens else self._frozen_vocab_size
        input_shape = tuple(input_shape)
        if self.output_mode == "one_hot":
            if len(input_shape) > 1 and input_shape[-1] == 1:
                return input_shape[:-1] + (depth,)
            return input_shape + (depth,)
        return input_shape[:-1] + (depth,)

    def backward(self, dy):
        return None

    def get_config(self):
        config = super().get_config()
        vocabulary = self.input_vocabulary
        if vocabulary is None and len(self._tokens):
            # An adapted layer: Keras writes its vocabulary as an asset; pynn keeps it in the
            # config, which Keras reads as a given vocabulary.
            vocabulary = self.get_vocabulary()
        if isinstance(vocabulary, np.ndarray):
            vocabulary = vocabulary.tolist()
        idf = self.input_idf_weights
        if idf is None and self.idf_weights is not None and self.input_vocabulary is None:
            idf = self.idf_weights[:self.vocabulary_size()].tolist()
        if isinstance(idf, np.ndarray):
            idf = idf.tolist()
        config.update({
            "invert": self.invert, "max_tokens": self.max_tokens,
            "num_oov_indices": self.num_oov_indices, "oov_token": self.oov_token,
            "mask_token": self.mask_token, "output_mode": self.output_mode, "sparse": False,
            "pad_to_max_tokens": self.pad_to_max_tokens, "idf_weights": idf,
            "vocabulary": vocabulary, "vocabulary_size": self._frozen_vocab_size,
            "oov_method": self.oov_method, "salt": self.salt})
        return config


class StringLookup(_IndexLookup):
    """Keras 3's ``StringLookup``: strings to vocabulary indices ([mask][OOV][tokens]), or
    back with ``invert=True``, or encoded (one_hot, multi_hot, count, tf_idf). Host
    preprocessing (see the module docstring); outputs are Keras's dtypes (int64 ids and
    counts, float32 tf_idf)."""

    _string = True

    def __init__(self, max_tokens=None, num_oov_indices=1, mask_token=None, oov_token="[UNK]",
                 vocabulary=None, idf_weights=None, invert=False, output_mode="int",
                 pad_to_max_tokens=False, sparse=False, encoding="utf-8", name=None,
                 salt=None, **kwargs):
        kwargs.pop("vocabulary_dtype", None)
        self.encoding = encoding
        super().__init__(max_tokens, num_oov_indices, mask_token, oov_token,
                         vocabulary=vocabulary, idf_weights=idf_weights, invert=invert,
                         output_mode=output_mode, pad_to_max_tokens=pad_to_max_tokens,
                         sparse=sparse, salt=salt, name=name, **kwargs)

    def get_config(self):
        config = super().get_config()
        config["encoding"] = self.encoding
        return config


class IntegerLookup(_IndexLookup):
    """Keras 3's ``IntegerLookup``: int64 tokens to vocabulary indices, or back with
    ``invert=True``, or encoded; extra OOV buckets by floor-modulo or FarmHash
    (``oov_method``). Host preprocessing (see the module docstring)."""

    _string = False

    def __init__(self, max_tokens=None, num_oov_indices=1, mask_token=None, oov_token=-1,
                 vocabulary=None, vocabulary_dtype="int64", idf_weights=None, invert=False,
                 output_mode="int", sparse=False, pad_to_max_tokens=False,
                 oov_method="floormod", salt=None, name=None, **kwargs):
        if max_tokens is not None and not isinstance(max_tokens, bool) and isinstance(
                max_tokens, numbers.Integral) and max_tokens <= 1:
            raise ValueError(f"IntegerLookup: if `max_tokens` is set for `IntegerLookup`, it "
                             f"must be greater than 1. Received: max_tokens={max_tokens}")
        if vocabulary_dtype != "int64":
            raise ValueError(f"IntegerLookup: only `vocabulary_dtype='int64'` is supported at "
                             f"this time. Received: vocabulary_dtype={vocabulary_dtype!r}")
        self.vocabulary_dtype = vocabulary_dtype
        super().__init__(max_tokens, num_oov_indices, mask_token, oov_token,
                         vocabulary=vocabulary, idf_weights=idf_weights, invert=invert,
                         output_mode=output_mode, pad_to_max_tokens=pad_to_max_tokens,
                         sparse=sparse, oov_method=oov_method, salt=salt, name=name, **kwargs)

    def get_config(self):
        config = super().get_config()
        config["vocabulary_dtype"] = self.vocabulary_dtype
        for key in ("oov_token", "mask_token"):
            if config[key] is not None:
                config[key] = int(config[key])
        if config["vocabulary"] is not None:
            config["vocabulary"] = [int(v) for v in config["vocabulary"]]
        return config
