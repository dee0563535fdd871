"""Keras files in and out (pynn.interop.keras_files): Keras 3 ``.keras`` and ``.weights.h5``
both ways, Keras 2 ``.h5`` models and weights both ways, and hostile files refused before
anything runs.

Each architecture is built in Keras with random weights, saved by Keras, loaded by pynn and
saved again by pynn for Keras to load: the four predictions must agree (float32, <= 1e-5).
"""

import io
import json
import os
import re
import sys
import zipfile

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
try:
    import h5py
    import keras
except Exception as exc:  # noqa: BLE001 (keras or h5py missing, or its backend fails)
    pytest.skip(f"keras (torch backend) and h5py are not available: {exc}",
                allow_module_level=True)

import pynn

K = keras.layers
TOL = 1e-5


def _randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    weights = []
    for v in model.weights:
        w = rng.standard_normal(v.shape).astype("float32") * 0.4
        if "variance" in v.path:
            w = np.abs(w) + 0.5
        weights.append(w)
    model.set_weights(weights)


def mlp():
    return keras.Sequential([keras.Input((13,)), K.Dense(17, activation="relu"),
                             K.Dropout(0.3), K.Dense(5, activation="softmax")])


def cnn():
    return keras.Sequential([
        keras.Input((11, 11, 3)), K.Conv2D(4, 3, padding="same", activation="relu"),
        K.BatchNormalization(), K.MaxPooling2D(), K.Dropout(0.2),
        K.Conv2D(5, 3, strides=2, use_bias=False), K.AveragePooling2D(1), K.Flatten(),
        K.Dense(3)])


def merge():
    a, b = keras.Input((6,), name="a"), keras.Input((6,), name="b")
    shared = K.Dense(6, activation="tanh", name="shared")
    ha, hb = shared(a), shared(b)  # one layer, two calls: node indices 0 and 1
    merged = [K.Add()([ha, hb]), K.Subtract()([ha, hb]), K.Multiply()([ha, hb]),
              K.Average()([ha, b]), K.Maximum()([a, hb]), K.Minimum()([ha, hb])]
    x = K.Concatenate()(merged)
    d = K.Dot(axes=1)([ha, hb])
    return keras.Model([a, b], [K.Dense(3)(x), d])


def sequence():
    x = keras.Input((9,), dtype="int32")
    h = K.SpatialDropout1D(0.2)(K.Embedding(20, 4)(x))
    h = K.LSTM(5, return_sequences=True)(h)
    h = K.GRU(4, return_sequences=True)(h)
    h2 = K.SimpleRNN(3, return_sequences=True)(h)
    h2 = K.TimeDistributed(K.Dense(2))(h2)
    h2 = K.Conv1D(3, 2, padding="causal")(h2)
    out = K.Concatenate()([K.GlobalMaxPooling1D()(h2), K.GlobalAveragePooling1D()(h)])
    return keras.Model(x, K.Dense(2)(out))


def conv_variants():
    return keras.Sequential([
        keras.Input((9, 8, 4)), K.ZeroPadding2D(1), K.SeparableConv2D(6, 3, activation="relu"),
        K.DepthwiseConv2D(3, depth_multiplier=2), K.GroupNormalization(3),
        K.Conv2DTranspose(3, 3, strides=2), K.Cropping2D(1), K.LayerNormalization(),
        K.UpSampling2D(1), K.PReLU(), K.LeakyReLU(0.1), K.GlobalAveragePooling2D(),
        K.Reshape((3, 1)), K.Permute((2, 1)), K.Flatten(), K.ELU(), K.Softmax()])


def pooling_1d():
    return keras.Sequential([
        keras.Input((12, 3)), K.MaxPooling1D(2), K.AveragePooling1D(2, padding="same"),
        K.GRU(4, reset_after=False, return_sequences=True), K.Flatten(), K.Dense(2)])


def noise_and_shapes():
    inner = keras.Sequential([keras.Input((6,)), K.Dense(4, activation="relu")], name="inner")
    x = keras.Input((7, 5, 2))
    h = K.SpatialDropout2D(0.3)(x)
    h = K.Reshape((7, 5, 2))(K.SpatialDropout3D(0.1)(K.Reshape((7, 5, 1, 2))(h)))
    h = K.GaussianDropout(0.2)(h)
    h = K.GaussianNoise(0.1)(h)
    h = K.MaxPooling2D(2)(K.Identity()(h))
    h = K.GlobalMaxPooling2D()(h)
    h = K.Activation("sigmoid")(K.ReLU()(K.ActivityRegularization(l2=0.01)(h)))
    h = K.Flatten()(K.RepeatVector(3)(h))
    return keras.Model(x, inner(h))  # a nested Sequential: its weights under layers/sequential


def preprocessing():
    # RandomCrop to the input's own size: Keras 3.15 returns its input unchanged at inference
    # where its documentation (and pynn) centre-crop; at full size both are the identity.
    return keras.Sequential([
        keras.Input((10, 12, 3)), K.Rescaling(0.5, offset=0.1), K.Normalization(),
        K.Resizing(9, 8), K.CenterCrop(7, 6), K.RandomFlip(), K.RandomRotation(0.1),
        K.RandomZoom(0.1), K.RandomTranslation(0.1, 0.1), K.RandomContrast(0.2),
        K.RandomBrightness(0.2), K.RandomCrop(7, 6), K.Flatten(), K.Dense(2)])


def tabular():
    # a numeric column binned and a token column counted, then joined
    values, tokens = keras.Input((3,)), keras.Input((4,), dtype="int32")
    binned = K.Discretization(bin_boundaries=[-0.5, 0.0, 1.0], output_mode="one_hot")(values)
    counted = K.CategoryEncoding(num_tokens=20, output_mode="count")(tokens)   # _inputs: ids < 20
    joined = K.Concatenate()([K.Flatten()(binned), counted])
    return keras.Model([values, tokens], K.Dense(2)(joined))


def masked_functional():
    # A functional Keras 3 model records each mask's ops (NotEqual, Any, LogicalOr, ...) as
    # nodes feeding the layers' mask= arguments; pynn drops them and propagates the masks
    # itself, through merges as Keras does.
    ids_a, ids_b = keras.Input((7,), dtype="int32"), keras.Input((7,), dtype="int32")
    embed = K.Embedding(20, 4, mask_zero=True)
    joined = K.Concatenate()([embed(ids_a), embed(ids_b)])
    summed = K.Add()([embed(ids_a), K.Embedding(20, 4, mask_zero=True)(ids_b)])
    x = K.Bidirectional(K.LSTM(3, return_sequences=True))(joined)
    x = K.GlobalAveragePooling1D()(K.Concatenate(axis=1)([x, K.Dense(6)(summed)]))
    return keras.Model([ids_a, ids_b], K.Dense(2)(K.concatenate([x, K.GRU(2)(summed)])))


def recurrent_wrappers():
    return keras.Sequential([
        keras.Input((7, 3)), K.Masking(0.0),
        K.Bidirectional(K.LSTM(4, return_sequences=True), merge_mode="sum"),
        K.Bidirectional(K.GRU(3), backward_layer=K.GRU(3, go_backwards=True)),
        K.Dense(2)])


def sequence_1d():
    return keras.Sequential([
        keras.Input((9, 3)), K.ZeroPadding1D(2), K.Conv1DTranspose(4, 3, strides=2),
        K.Cropping1D((1, 2)), K.UpSampling1D(2), K.SeparableConv1D(3, 3, padding="same"),
        K.GlobalAveragePooling1D(), K.Dense(2)])


def attention():
    # a small transformer block: masked self-attention with a residual and LayerNormalization,
    # then cross-attention onto a second sequence through an explicit key
    ids, memory = keras.Input((7,), dtype="int32"), keras.Input((5, 6))
    x = K.Embedding(20, 8, mask_zero=True)(ids)
    a = K.MultiHeadAttention(2, 4, use_gate=True)(x, x, use_causal_mask=True)
    x = K.LayerNormalization()(K.Add()([x, a]))
    mem = K.EinsumDense("abc,cd->abd", (5, 6), bias_axes="d", activation="gelu")(memory)
    mem = K.Add()([mem, K.GroupQueryAttention(2, 4, 2)(mem, mem)])
    c = K.MultiHeadAttention(2, 3, value_dim=2, output_shape=(6,))(x, mem, key=mem)
    luong = K.Attention(use_scale=True)([c, mem], use_causal_mask=True)
    bahdanau = K.AdditiveAttention()([c, mem])
    pooled = K.GlobalAveragePooling1D()(K.Concatenate()([c, luong, bahdanau]))
    return keras.Model([ids, memory], K.Dense(2)(pooled))


ARCHITECTURES = {"recurrent_wrappers": recurrent_wrappers, "attention": attention,
                 "tabular": tabular,
                 "masked_functional": masked_functional, "sequence_1d": sequence_1d,
                 "preprocessing": preprocessing, "mlp": mlp, "cnn": cnn, "merge": merge, "sequence": sequence,
                 "conv_variants": conv_variants, "pooling_1d": pooling_1d,
                 "noise_and_shapes": noise_and_shapes}


def row_normalization():
    # RMSNormalization (over one and two axes) and UnitNormalization (an inner axis; a mask
    # passed on into the GRU that reads it)
    ids, x = keras.Input((7,), dtype="int32"), keras.Input((5, 6))
    h = K.RMSNormalization(axis=[-2, -1], epsilon=1e-3)(K.UnitNormalization(axis=1)(
        K.RMSNormalization()(K.Dense(6)(x))))
    s = K.GRU(3)(K.UnitNormalization()(K.Embedding(20, 4, mask_zero=True)(ids)))
    return keras.Model([ids, x], K.Dense(2)(K.Concatenate()([K.Flatten()(h), s])))


ARCHITECTURES["row_normalization"] = row_normalization


def keras3_activations():
    # -- Keras 3's remaining activations: the elementwise ones fused into Dense, Conv2D and a
    # SimpleRNN, the row ones as Activation layers (glu last: Keras's symbolic shape keeps
    # the axis glu halves, so a layer after it would be built too wide in Keras)
    x, seq = keras.Input((12,)), keras.Input((4, 3, 3))
    h = x
    for name in ("celu", "hard_shrink", "hard_tanh", "log_sigmoid", "soft_shrink",
                 "sparse_plus", "sparse_sigmoid", "squareplus", "tanh_shrink"):
        h = K.Dense(12, activation=name)(h)
    c = K.Flatten()(K.Conv2D(2, 2, activation="celu")(seq))
    r = K.SimpleRNN(6, activation="hard_tanh")(K.Reshape((4, 9))(seq))
    h = K.Concatenate()([h, c, r])
    scores = K.Activation("log_softmax")(K.Dense(4)(K.Activation("sparsemax")(h)))
    scores = K.Dense(3, activation="log_softmax")(K.Dense(5, activation="sparsemax")(scores))
    return keras.Model([x, seq], [scores, K.Activation("glu")(h)])


ARCHITECTURES["keras3_activations"] = keras3_activations


# -- conv3d: Conv3D (grouped, strided, dilated) and Conv3DTranspose on a small video --
def volumetric_conv():
    return keras.Sequential([
        keras.Input((5, 8, 7, 4)), K.Conv3D(6, 3, padding="same", groups=2, activation="relu"),
        K.Conv3D(4, (2, 3, 3), strides=2, padding="same"),
        K.Conv3DTranspose(3, 3, strides=(2, 2, 1), padding="same", output_padding=(1, 0, 0),
                          activation="tanh"),
        K.Conv3D(2, 2, dilation_rate=2), K.Flatten(), K.Dense(2)])


ARCHITECTURES["volumetric_conv"] = volumetric_conv


# -- 3-D pooling and spatial layers --
def volumetric_pool():
    # every 3-D pooling and spatial layer, Dense acting on the channels between them
    x = keras.Input((6, 5, 7, 2))
    h = K.Dense(3, activation="tanh")(K.ZeroPadding3D(((1, 0), 1, (0, 2)))(x))
    h = K.MaxPooling3D((2, 3, 2), strides=(2, 2, 3), padding="same")(h)
    h = K.Cropping3D(((0, 1), (1, 0), 1))(K.UpSampling3D((1, 2, 2))(h))
    a = K.AveragePooling3D(2, strides=1)(h)
    pooled = [K.GlobalMaxPooling3D()(a), K.Flatten()(K.GlobalAveragePooling3D(keepdims=True)(h))]
    return keras.Model(x, K.Dense(2)(K.Concatenate()(pooled)))


ARCHITECTURES["volumetric_pool"] = volumetric_pool


def adaptive_pooling():
    # Keras 3's adaptive pools over 1-3 spatial axes: overlapping bins, outputs larger than
    # the input, divisible bins, channels_first
    x = keras.Input((9, 7, 3))
    h = K.Conv2D(4, 3, padding="same")(x)
    a = K.AdaptiveMaxPooling2D((4, 3))(h)
    b = K.AdaptiveAveragePooling2D(2, data_format="channels_first")(h)
    s = K.Reshape((21, 9))(x)
    c = K.AdaptiveMaxPooling1D(5)(K.AdaptiveAveragePooling1D(25)(s))
    v = K.Reshape((9, 7, 3, 1))(x)
    d = K.AdaptiveMaxPooling3D((3, 2, 2))(K.AdaptiveAveragePooling3D((3, 7, 1))(v))
    merged = K.Concatenate()([K.Flatten()(t) for t in (a, b, c, d)])
    return keras.Model(x, K.Dense(2)(merged))


ARCHITECTURES["adaptive_pooling"] = adaptive_pooling


def depthwise_conv1d():
    return keras.Sequential([
        keras.Input((9, 3)),
        K.DepthwiseConv1D(3, padding="same", depth_multiplier=2, activation="relu"),
        K.AlphaDropout(0.2, noise_shape=(None, 1, 6), seed=4),
        K.DepthwiseConv1D(2, strides=2, dilation_rate=2, use_bias=False),
        K.GlobalAveragePooling1D(), K.Dense(2)])


ARCHITECTURES["depthwise_conv1d"] = depthwise_conv1d


# -- spectral (branch audio): Keras 3's audio front ends --
def audio():
    # MelSpectrogram (dB, a hamming window shorter than the FFT) on the signal; trainable
    # STFTSpectrogram kernels ('same' log magnitudes, an expand_dims psd on channels_first)
    x = keras.Input((400,))
    mel = K.MelSpectrogram(fft_length=64, sequence_stride=16, sequence_length=48,
                           window="hamming", num_mel_bins=8, sampling_rate=4000, top_db=40.0)(x)
    s = K.Reshape((400, 1))(x)
    log = K.STFTSpectrogram(mode="log", frame_length=32, frame_step=16, padding="same")(s)
    psd = K.STFTSpectrogram(mode="psd", frame_length=16, frame_step=8, expand_dims=True,
                            data_format="channels_first")(K.Reshape((2, 200))(x))
    pooled = [K.Flatten()(mel), K.GlobalAveragePooling1D()(log), K.Flatten()(psd)]
    return keras.Model(x, K.Dense(2)(K.Concatenate()(pooled)))


ARCHITECTURES["audio"] = audio


def augment_keras3():
    # Keras 3's geometric, erasing, mixing and blur augmentations: the identity at inference.
    # RandomShear's number factor is stored as (-f, f), a pair Keras itself cannot load back:
    # pynn takes it and writes the number again.
    return keras.Sequential([
        keras.Input((9, 10, 3)), K.RandomShear((0.1, 0.2), 0.3, fill_mode="constant"),
        K.RandomPerspective(0.5, 0.4), K.RandomElasticTransform(0.5, 0.7),
        K.RandomErasing(fill_value=2.0), K.CutMix(0.5), K.MixUp(0.3),
        K.RandomGaussianBlur(0.5, 5, 0.8), K.Flatten(), K.Dense(2)])


ARCHITECTURES["augment_keras3"] = augment_keras3


# -- Keras 3's colour augmentation layers: at inference AutoContrast alone
# acts (on normal inputs, a value_range that holds them); the others pass their input through.
# Keras 3.15 cannot put Equalization in a model (its compute_output_spec returns the input
# tensor itself: "part of a cycle"), so its files are tested from pynn's side alone.
KERAS_CANNOT_BUILD = {"Equalization"}


def color():
    return keras.Sequential([
        keras.Input((8, 7, 3)), K.AutoContrast(value_range=(-5, 5)),
        K.Solarization(0.1, (0.2, 0.5), seed=1),
        K.RandomInvert(0.7, seed=2), K.RandomPosterization(4, seed=3),
        K.RandomGrayscale(0.3, seed=4), K.RandomHue(0.3, seed=5),
        K.RandomSaturation((0.2, 0.6), seed=6), K.RandomColorDegeneration(0.5, seed=7),
        K.RandomColorJitter(brightness_factor=0.2, contrast_factor=0.3, saturation_factor=0.4,
                            hue_factor=0.2, seed=8),
        K.RandomSharpness(0.3, value_range=(0, 1), seed=9), K.Flatten(), K.Dense(2)])


ARCHITECTURES["color"] = color


# -- convlstm: ConvLSTM2D (sequences, strided, backwards), ConvLSTM1D with its states and
# a dilated ConvLSTM3D --
def nowcasting():
    video = keras.Input((3, 7, 6, 2))
    row = keras.Input((4, 9, 3))
    volume = keras.Input((2, 3, 5, 4, 2))
    v = K.ConvLSTM2D(3, 3, padding="same", return_sequences=True,
                     bias_initializer="random_normal")(video)
    v = K.ConvLSTM2D(2, (2, 3), strides=(1, 2), go_backwards=True,
                     recurrent_activation="hard_sigmoid")(v)
    r, h, c = K.ConvLSTM1D(2, 3, dilation_rate=2, return_state=True)(row)
    w = K.ConvLSTM3D(2, (1, 2, 3), padding="same", dilation_rate=(1, 2, 1),
                     unit_forget_bias=False)(volume)
    flat = K.Concatenate()([K.Flatten()(t) for t in (v, r, c, w)])
    return keras.Model([video, row, volume], K.Dense(2)(flat))


ARCHITECTURES["nowcasting"] = nowcasting



def reversible_embedding():  # (branch misc) the lookup direction; reverse=True is refused
    x = keras.Input((6,), dtype="int32")
    h = K.ReversibleEmbedding(20, 4, tie_weights=False, logit_soft_cap=2.0, mask_zero=True)(x)
    h = K.GRU(3)(h)   # reads the lookup's padding mask, as after Embedding
    return keras.Model(x, K.Dense(2)(h))


ARCHITECTURES["reversible_embedding"] = reversible_embedding



def spectral_normalization():  # (branch misc)
    return keras.Sequential([
        keras.Input((6, 5, 2)),
        K.SpectralNormalization(K.Conv2D(3, 2), power_iterations=2), K.Flatten(),
        K.SpectralNormalization(K.Dense(4, activation="relu")), K.Dense(2)])


ARCHITECTURES["spectral_normalization"] = spectral_normalization


# -- augmix: Keras 3's Pipeline, its layers' configs nested (AutoContrast acts at inference) --
def pipeline():
    return keras.Sequential([
        keras.Input((6, 5, 3)),
        K.Pipeline([K.AutoContrast(value_range=(-3, 3)), K.RandomInvert(0.5, seed=2),
                    K.RandomFlip(seed=3)]),
        K.Flatten(), K.Dense(2)])


ARCHITECTURES["pipeline"] = pipeline


# -- randaug: Keras 3's RandAugment and AugMix (the identity at inference) --
def rand_augment_and_aug_mix():
    return keras.Sequential([
        keras.Input((6, 5, 3)),
        K.RandAugment(value_range=(-3, 3), num_ops=3, factor=(0.1, 0.4), seed=2),
        K.AugMix(value_range=(-3, 3), num_chains=2, chain_depth=2, alpha=0.5,
                 all_ops=False, seed=3),
        K.Flatten(), K.Dense(2)])


ARCHITECTURES["rand_augment_and_aug_mix"] = rand_augment_and_aug_mix


# -- clahe: Keras 3's ContrastLimitedAdaptiveHistogramEqualization (active at inference) --
def clahe():
    return keras.Sequential([
        keras.Input((11, 9, 3)),
        K.ContrastLimitedAdaptiveHistogramEqualization(value_range=(-3, 3), clip_limit=3.0,
                                                       tile_grid_size=(3, 2)),
        K.Flatten(), K.Dense(2)])


ARCHITECTURES["clahe"] = clahe


# -- lookup: MaxNumBoundingBoxes, the identity on images (its boxes: tests/test_bounding_boxes.py)
def max_num_bounding_boxes():
    return keras.Sequential([
        keras.Input((6, 5, 3)), K.MaxNumBoundingBoxes(4, bounding_box_format="xyxy"),
        K.Flatten(), K.Dense(2)])


ARCHITECTURES["max_num_bounding_boxes"] = max_num_bounding_boxes
# -- lookup: Keras builds Hashing, HashedCrossing, StringLookup and IntegerLookup only with
# TensorFlow, and pynn runs them as host preprocessing; tests/test_lookup.py and
# tests/test_hashing.py check their configs against Keras's --
KERAS_CANNOT_BUILD |= {"Hashing", "HashedCrossing", "StringLookup", "IntegerLookup"}


# -- applications (branch appsB): the custom layers of keras.applications, Keras's binary op
# nodes (ConvNeXt's ``inputs + branch``), Dropout's noise_shape --
def application_layers():
    from keras.src.applications.convnext import LayerScale, StochasticDepth
    from keras.src.applications.inception_resnet_v2 import CustomScaleLayer

    x = keras.Input((5, 4, 3))
    h = K.Conv2D(6, 3, padding="same")(x)
    branch = StochasticDepth(0.2)(LayerScale(0.5, 6)(h))
    h = K.Dropout(0.3, noise_shape=(None, 1, 1, 1))(h + branch)
    h = CustomScaleLayer(0.3)([h, h * branch - h])
    return keras.Model(x, K.Dense(2)(K.Flatten()(h)))


ARCHITECTURES["application_layers"] = application_layers


def binary_op_nodes():  # (branch appsB) op nodes alone, as a legacy .h5 can hold them too
    x = keras.Input((4, 3))
    h = K.Dense(3)(x)
    return keras.Model(x, K.Dense(2)((h + x) * h - x))


ARCHITECTURES["binary_op_nodes"] = binary_op_nodes


def test_architectures_cover_every_pynn_layer():
    seen = set()

    def walk(layer):
        # Keras's GroupedQueryAttention is exported (and serialized) as GroupQueryAttention
        seen.add({"GroupedQueryAttention": "GroupQueryAttention"}.get(type(layer).__name__,
                                                                      type(layer).__name__))
        for child in getattr(layer, "layers", []):
            walk(child)
        if isinstance(layer, K.TimeDistributed):
            walk(layer.layer)
        if isinstance(layer, K.Bidirectional):
            walk(layer.forward_layer)
        for child in [getattr(layer, "cell", None)] + list(getattr(layer, "cells", [])):
            if child is not None:
                walk(child)
    for build in ARCHITECTURES.values():
        walk(build())
    seen.add("InputLayer")
    assert set(pynn.layers.LAYERS) - seen - set(NOT_KERAS) - {"TextVectorization"} \
        - KERAS_CANNOT_BUILD == set()


def _op_model():
    inp = pynn.Input((4,))
    x = pynn.layers.Dense(3)(inp)
    return pynn.Model(inp, x * 2 + pynn.ops.relu(x))


def _pruned_model():
    from pynn.compression import pruning
    return pruning.prune_low_magnitude(
        pynn.Sequential([pynn.Input((4,)), pynn.layers.Dense(3)]),
        pruning.ConstantSparsity(0.5, 0))


def _cell_model():
    cell = pynn.layers.LSTMCell(3)
    return pynn.Sequential([pynn.Input((5, 2)), pynn.layers.RNN(cell)])


def _lambda_model():
    return pynn.Sequential([pynn.Input((4,)), pynn.layers.Lambda(lambda t: t * 2)])


class _Doubler(pynn.layers.Layer):
    def call(self, x):
        return x * 2


class _Subclassed(pynn.Model):
    def __init__(self):
        super().__init__()
        self.dense = pynn.layers.Dense(2)

    def call(self, x):
        return self.dense(x)


def _custom_layer_model():
    return pynn.Sequential([pynn.Input((4,)), _Doubler()])


def _subclassed_model():
    model = _Subclassed()
    model(np.ones((1, 4), np.float32))
    return model


def _int8_model():
    model = pynn.Sequential([pynn.Input((6, 6, 2)), pynn.layers.Conv2D(3, 3),
                             pynn.layers.Flatten(), pynn.layers.Dense(2)])
    return model.quantize("int8")


def _int8_sequence_model():  # (issue 18, branch qbreadth)
    return pynn.Sequential([pynn.Input((6, 2)), pynn.layers.Conv1D(3, 2),
                            pynn.layers.SimpleRNN(3, return_sequences=True),
                            pynn.layers.LSTM(3, return_sequences=True),
                            pynn.layers.GRU(2)]).quantize("int8")


def _int8_depthwise_model():  # (issue 18, branch qbreadth)
    return pynn.Sequential([pynn.Input((6, 6, 2)), pynn.layers.DepthwiseConv2D(3),
                            pynn.layers.SeparableConv2D(3, 2)]).quantize("int8")


def _int8_chain_model():  # (issue 18, branch q8): uint8 codes through a max pooling
    from pynn.compression.quantization import quantize

    model = pynn.Sequential([pynn.Input((4, 4, 1)), pynn.layers.Conv2D(2, 3),
                             pynn.layers.MaxPooling2D(2), pynn.layers.Flatten(),
                             pynn.layers.Dense(2)])
    return quantize(model, np.random.default_rng(0).standard_normal((8, 4, 4, 1))
                    .astype("float32"))


def _qat_model():
    from pynn.compression.qat import quantize_aware

    return quantize_aware(pynn.Sequential([pynn.Input((4,)), pynn.layers.Dense(2)]))


# pynn layers and models a Keras file cannot hold, each refused by name when saved
# (TextVectorization needs TensorFlow in Keras, so no Keras file of it is made here).
NOT_KERAS = {"OpLayer": (_op_model, "no Keras layer form"),
             "PruneLowMagnitude": (_pruned_model, "strip_pruning"),
             "Lambda": (_lambda_model, "Python code|register"),
             "RNN": (_cell_model, "RNN\\(cell\\)"), "SimpleRNNCell": (_cell_model, "RNN\\(cell\\)"),
             "LSTMCell": (_cell_model, "RNN\\(cell\\)"), "GRUCell": (_cell_model, "RNN\\(cell\\)"),
             "StackedRNNCells": (_cell_model, "RNN\\(cell\\)"),
             # -- int8 (issue 18, branch quant) --
             "QuantizedDense": (_int8_model, "int8 layers have no Keras file form"),
             "QuantizedConv2D": (_int8_model, "int8 layers have no Keras file form"),
             "FakeQuant": (_qat_model, "int8 layers have no Keras file form"),
             # -- int8 breadth (issue 18, branch qbreadth) --
             **{name: (build, "int8 layers have no Keras file form") for name, build in (
                 ("QuantizedConv1D", _int8_sequence_model),
                 ("QuantizedSimpleRNN", _int8_sequence_model),
                 ("QuantizedLSTM", _int8_sequence_model),
                 ("QuantizedGRU", _int8_sequence_model),
                 ("QuantizedDepthwiseConv2D", _int8_depthwise_model),
                 ("QuantizedSeparableConv2D", _int8_depthwise_model))},
             # -- int8 chains (issue 18, branch q8) --
             "QuantizedMaxPooling2D": (_int8_chain_model, "int8 layers have no Keras file form")}


@pytest.mark.parametrize("build, message", list(NOT_KERAS.values()) + [
    (_custom_layer_model, "custom layer"), (_subclassed_model, "subclass of Model")],
    ids=list(NOT_KERAS) + ["custom_layer", "subclassed_model"])
def test_models_keras_cannot_hold_are_refused_by_name(tmp_path, build, message):
    model = build()
    for name in ("m.keras", "m.h5"):
        with pytest.raises(ValueError, match=message):
            model.save(tmp_path / name)
        assert not (tmp_path / name).exists()


def _inputs(model, rng):
    out = []
    for i, t in enumerate(model.inputs):
        shape = (3,) + tuple(t.shape[1:])
        if "int" in str(t.dtype):
            ids = rng.integers(1, 20, shape).astype("int32")
            ids[:, shape[1] - 2 - i:] = 0  # padded ends, a different length per input
            out.append(ids)
        else:
            out.append(rng.standard_normal(shape).astype("float32"))
    return out if len(out) > 1 else out[0]


def _close(a, b):
    a = a if isinstance(a, list) else [a]
    b = b if isinstance(b, list) else [b]
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=TOL, atol=TOL)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_keras_round_trip_both_ways(arch, tmp_path):
    keras_model = ARCHITECTURES[arch]()
    _randomize(keras_model)
    x = _inputs(keras_model, np.random.default_rng(1))
    expected = keras_model.predict(x, verbose=0)

    keras_model.save(tmp_path / "k.keras")
    model = pynn.load_model(tmp_path / "k.keras")
    assert len(model.get_weights()) == len(keras_model.get_weights())
    _close(model.predict(x), expected)

    model.save(tmp_path / "p.keras")
    back = keras.saving.load_model(tmp_path / "p.keras")
    _close(back.predict(x, verbose=0), expected)

    # Weights files both ways, into models that have other weights.
    keras_model.save_weights(tmp_path / "k.weights.h5")
    fresh = pynn.load_model(tmp_path / "p.keras")
    fresh.set_weights([w + 1 for w in fresh.get_weights()])
    fresh.load_weights(tmp_path / "k.weights.h5")
    _close(fresh.predict(x), expected)
    model.save_weights(tmp_path / "p.weights.h5")
    back.set_weights([w + 1 for w in back.get_weights()])
    back.load_weights(tmp_path / "p.weights.h5")
    _close(back.predict(x, verbose=0), expected)


RESUME_CASES = [("SGD", {"momentum": 0.9}), ("Adam", {}), ("Adam", {"amsgrad": True}),
                ("AdamW", {}), ("RMSprop", {"momentum": 0.5, "centered": True}),
                ("Adagrad", {}), ("Nadam", {}), ("Adamax", {}),
                ("Adadelta", {"learning_rate": 0.5}), ("Ftrl", {}), ("Lion", {}),
                ("Adam", {"learning_rate": "schedule"})]


def _optimizer(lib, name, kw):
    kw = dict(kw)
    if kw.get("learning_rate") == "schedule":
        kw["learning_rate"] = lib.optimizers.schedules.ExponentialDecay(0.1, 3, 0.5)
    return getattr(lib.optimizers, name)(**kw)


@pytest.mark.parametrize("first", ["keras", "pynn"])
@pytest.mark.parametrize("name,kw", RESUME_CASES, ids=[f"{n}{kw}" for n, kw in RESUME_CASES])
def test_training_resumes_across_keras_files(tmp_path, first, name, kw):
    """A compiled model trained three steps and saved as .keras, loaded by the other
    framework and trained three more, ends where six steps of the first end: the file carries
    compile()'s arguments and the optimizer's variables in Keras 3's layout both ways (pynn
    once wrote neither and loaded files uncompiled)."""
    one, other = (keras, pynn) if first == "keras" else (pynn, keras)
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((8, 3)).astype(np.float32), rng.standard_normal((8, 2))

    def build():
        layers = one.layers
        return one.Sequential([one.Input((3,)), layers.Dense(4, activation="tanh"),
                               layers.Dense(2)])
    model, reference = build(), build()
    weights = [rng.uniform(-0.5, 0.5, np.shape(w)).astype(np.float32)
               for w in model.get_weights()]
    for m in (model, reference):
        m.set_weights(weights)
        m.compile(optimizer=_optimizer(one, name, kw), loss="mse")
    for _ in range(3):
        model.train_on_batch(x, y.astype(np.float32))
    model.save(tmp_path / "m.keras")
    load = keras.saving.load_model if other is keras else pynn.load_model
    resumed = load(tmp_path / "m.keras")
    for _ in range(3):
        resumed.train_on_batch(x, y.astype(np.float32))
    for _ in range(6):
        reference.train_on_batch(x, y.astype(np.float32))
    for a, b in zip(resumed.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


@pytest.mark.parametrize("first", ["keras", "pynn"])
def test_losses_metrics_and_loss_weights_cross_keras_files(tmp_path, first):
    """A two-output model compiled with a loss object and a name per output, loss weights and
    metric objects loads compiled in the other framework and logs the same names."""
    one = keras if first == "keras" else pynn
    a = one.Input((3,), name="a")
    h = one.layers.Dense(4, activation="relu", name="h")(a)
    model = (keras.Model if one is keras else pynn.Model)(
        a, {"cls": one.layers.Dense(3, name="cls")(h), "reg": one.layers.Dense(1, name="reg")(h)})
    model.compile(optimizer=one.optimizers.Adam(0.01),
                  loss={"cls": one.losses.SparseCategoricalCrossentropy(from_logits=True),
                        "reg": "mse"},
                  loss_weights={"cls": 1.0, "reg": 0.5},
                  metrics={"cls": ["accuracy"], "reg": [one.metrics.MeanAbsoluteError()]})
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 3)).astype(np.float32)
    y = {"cls": rng.integers(0, 3, 6), "reg": rng.standard_normal((6, 1)).astype(np.float32)}
    model.fit(x, y, epochs=1, batch_size=3, verbose=0)
    model.save(tmp_path / "m.keras")
    other = (pynn.load_model if one is keras else keras.saving.load_model)(tmp_path / "m.keras")
    history = other.fit(x, y, epochs=1, batch_size=3, verbose=0).history
    assert sorted(history) == ["cls_accuracy", "cls_loss", "loss", "reg_loss",
                               "reg_mean_absolute_error"]
    if one is keras:
        assert not pynn.load_model(tmp_path / "m.keras", compile=False).compiled


@pytest.mark.parametrize("how", ["object", "string_resaved"])
def test_one_outputs_loss_object_loads_compiled(tmp_path, how):
    """A single output's loss that Keras writes as an object (compiled with one, or a string
    loss after Keras loaded and saved the model again) and metric objects: pynn loads the
    model compiled, as one loss (it had read the object's keys as output names and loaded
    it uncompiled) and goes on training as Keras does."""
    import warnings

    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 3)).astype(np.float32)
    y = rng.integers(0, 3, 8)
    model = keras.Sequential([keras.Input((3,)), K.Dense(4, activation="tanh"), K.Dense(3)])
    _randomize(model)
    if how == "object":
        model.compile(optimizer=keras.optimizers.SGD(0.1),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=[keras.metrics.SparseCategoricalAccuracy()])
    else:
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        y = rng.standard_normal((8, 3)).astype(np.float32)
        model.train_on_batch(x, y)
        model.save(tmp_path / "first.keras")
        model = keras.saving.load_model(tmp_path / "first.keras")
    model.train_on_batch(x, y)
    model.save(tmp_path / "m.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = pynn.load_model(tmp_path / "m.keras")
    assert ours.compiled
    for _ in range(2):
        np.testing.assert_allclose(float(np.ravel(ours.train_on_batch(x, y))[0]),
                                   float(np.ravel(model.train_on_batch(x, y))[0]), rtol=1e-5)
    for a, b in zip(ours.get_weights(), model.get_weights()):
        np.testing.assert_allclose(a, np.asarray(b), atol=1e-6)


def test_optimizer_variables_that_do_not_fit_start_the_optimizer_afresh(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(), loss="mse")
    model.train_on_batch(np.ones((2, 3), np.float32), np.ones((2, 2), np.float32))
    model.save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    with h5py.File(io.BytesIO(members["model.weights.h5"]), "r") as h5:
        buf = io.BytesIO()
        with h5py.File(buf, "w") as out:
            for name in ("layers",):
                h5.copy(h5[name], out, name)
            out.create_group("optimizer/vars").create_dataset("0", data=np.int64(1))
    members["model.weights.h5"] = buf.getvalue()
    with zipfile.ZipFile(tmp_path / "cut.keras", "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with pytest.warns(UserWarning, match="the optimizer starts afresh: the file holds 1 "
                                         "optimizer variables, Adam over 2 trainable weights "
                                         "has 6"):
        loaded = pynn.load_model(tmp_path / "cut.keras")
    assert loaded.compiled and loaded.optimizer.iterations == 0


def test_a_compile_config_pynn_cannot_honour_loads_uncompiled_with_a_warning(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    # (api: use_ema is supported now; gradient accumulation is not)
    model.compile(optimizer=keras.optimizers.Adam(gradient_accumulation_steps=2), loss="mse")
    model.save(tmp_path / "m.keras")
    with pytest.warns(UserWarning, match=r"loads uncompiled: its compile config cannot be "
                                         r"honoured \(Adam: gradient_accumulation_steps=2 is "
                                         r"not supported"):
        loaded = pynn.load_model(tmp_path / "m.keras")
    assert not loaded.compiled
    np.testing.assert_allclose(loaded.predict(np.ones((2, 3), np.float32), verbose=0),
                               model.predict(np.ones((2, 3), np.float32), verbose=0),
                               atol=1e-6)


def test_a_loss_that_is_code_saves_the_model_without_its_compile_state(tmp_path):
    model = pynn.Sequential([pynn.Input((3,)), pynn.layers.Dense(2)])
    model.compile("adam", loss=lambda t, p: pynn.ops.mean(pynn.ops.square(
        pynn.ops.subtract(t, p)), axis=-1))
    model.train_on_batch(np.ones((2, 3), np.float32), np.ones((2, 2), np.float32))
    with pytest.warns(UserWarning, match=r"compile\(\)'s arguments and the optimizer's state "
                                         r"are not written .*cannot save the loss function"):
        model.save(tmp_path / "m.keras")
    loaded = pynn.load_model(tmp_path / "m.keras")
    assert not loaded.compiled
    np.testing.assert_array_equal(loaded.predict(np.ones((2, 3), np.float32), verbose=0),
                                  model.predict(np.ones((2, 3), np.float32), verbose=0))


def test_a_keras_model_with_an_unused_input_loads_and_goes_back(tmp_path):
    """Keras 3 saves a functional model one of whose inputs reaches no output; it loads,
    answers as Keras's, and saves back to a file Keras opens (the loader once refused it)."""
    a, spare = keras.Input((3,), name="a"), keras.Input((2,), name="spare")
    keras_model = keras.Model([a, spare], keras.layers.Dense(2)(a))
    _randomize(keras_model)
    rng = np.random.default_rng(2)
    x = [rng.standard_normal((4, 3)).astype(np.float32),
         rng.standard_normal((4, 2)).astype(np.float32)]
    expected = keras_model.predict(x, verbose=0)
    keras_model.save(tmp_path / "k.keras")
    model = pynn.load_model(tmp_path / "k.keras")
    _close(model.predict(x, verbose=0), expected)
    model.save(tmp_path / "p.keras")
    _close(keras.saving.load_model(tmp_path / "p.keras").predict(x, verbose=0), expected)


@pytest.mark.parametrize("arch", ["cnn", "merge"])
def test_legacy_h5_from_keras(arch, tmp_path):
    keras_model = ARCHITECTURES[arch]()
    _randomize(keras_model, seed=3)
    x = _inputs(keras_model, np.random.default_rng(2))
    keras_model.save(tmp_path / "k.h5")  # Keras 3's legacy writer: Keras 2's layout
    model = pynn.load_model(tmp_path / "k.h5")
    _close(model.predict(x), keras_model.predict(x, verbose=0))
    model.set_weights([w * 0 + 1 for w in model.get_weights()])
    model.load_weights(tmp_path / "k.h5")
    expected = keras_model.predict(x, verbose=0)
    _close(model.predict(x), expected)

    model.save(tmp_path / "p.h5")  # and back: Keras 3 reads Keras 2's layout from .h5 names
    _close(keras.saving.load_model(tmp_path / "p.h5").predict(x, verbose=0), expected)
    model.save_weights(tmp_path / "pw.h5")
    keras_model.set_weights([w + 1 for w in keras_model.get_weights()])
    keras_model.load_weights(tmp_path / "pw.h5")
    _close(keras_model.predict(x, verbose=0), expected)


def _keras2_h5(path, config, weights_by_layer):
    """A file as tf.keras 2 writes it: model_config JSON, model_weights/<layer>/<weight>."""
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["keras_version"] = "2.15.0"
        group = f.create_group("model_weights")
        group.attrs["layer_names"] = [name.encode() for name in weights_by_layer]
        for name, weights in weights_by_layer.items():
            layer = group.create_group(name)
            layer.attrs["weight_names"] = [f"{name}/{w}:0".encode() for w, _ in weights]
            for w, value in weights:
                layer.create_dataset(f"{name}/{w}:0", data=value)


def test_keras2_functional_h5(tmp_path):
    rng = np.random.default_rng(4)
    k1, b1 = rng.standard_normal((4, 3)).astype("float32"), rng.standard_normal(3)
    k2, b2 = rng.standard_normal((3, 2)).astype("float32"), rng.standard_normal(2)

    def dense(name, units, activation, inbound):
        return {"class_name": "Dense", "name": name, "inbound_nodes": [[[inbound, 0, 0, {}]]],
                "config": {"name": name, "trainable": True, "dtype": "float32", "units": units,
                           "activation": activation, "use_bias": True,
                           "kernel_initializer": {"class_name": "GlorotUniform",
                                                  "config": {"seed": None}},
                           "bias_initializer": {"class_name": "Zeros", "config": {}},
                           "kernel_regularizer": None, "bias_regularizer": None,
                           "activity_regularizer": None, "kernel_constraint": None,
                           "bias_constraint": None}}
    config = {"class_name": "Functional", "config": {
        "name": "model", "layers": [
            {"class_name": "InputLayer", "name": "input_1", "inbound_nodes": [],
             "config": {"batch_input_shape": [None, 4], "dtype": "float32", "sparse": False,
                        "ragged": False, "name": "input_1"}},
            dense("dense", 3, "relu", "input_1"), dense("dense_1", 2, "linear", "dense")],
        "input_layers": [["input_1", 0, 0]], "output_layers": [["dense_1", 0, 0]]}}
    _keras2_h5(tmp_path / "m.h5", config, {"input_1": [], "dense": [("kernel", k1), ("bias", b1)],
                                           "dense_1": [("kernel", k2), ("bias", b2)]})
    model = pynn.load_model(tmp_path / "m.h5")
    x = rng.standard_normal((5, 4)).astype("float32")
    expected = np.maximum(x @ k1 + b1, 0) @ k2 + b2
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-5, atol=1e-5)

    # A Keras 2 Sequential states its input on the first layer (batch_input_shape).
    first, second = config["config"]["layers"][1:]
    first["config"]["batch_input_shape"] = [None, 4]
    sequential = {"class_name": "Sequential",
                  "config": {"name": "sequential", "layers": [first, second]}}
    _keras2_h5(tmp_path / "s.h5", sequential, {"dense": [("kernel", k1), ("bias", b1)],
                                               "dense_1": [("kernel", k2), ("bias", b2)]})
    model = pynn.load_model(tmp_path / "s.h5")
    assert isinstance(model, pynn.Sequential)
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-5, atol=1e-5)


# -- suffixes ---------------------------------------------------------------------------------
def _small_pynn():
    return pynn.Sequential([pynn.layers.Input((3,)), pynn.layers.Dense(2)])


def test_suffix_decides_the_format(tmp_path):
    model = _small_pynn()
    for bad in ("m.zip", "m", "m.json"):
        with pytest.raises(ValueError, match="suffix decides the format"):
            model.save(tmp_path / bad)
        with pytest.raises(ValueError, match="suffix decides the format"):
            pynn.load_model(tmp_path / bad)
    with pytest.raises(ValueError, match="end in '.weights.h5'"):
        model.save_weights(tmp_path / "m.keras")
    model.save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as zf:
        assert sorted(zf.namelist()) == ["config.json", "metadata.json", "model.weights.h5"]
    model.save(tmp_path / "m.pynn")
    with zipfile.ZipFile(tmp_path / "m.pynn") as zf:
        assert "pynn.json" in zf.namelist()


def test_missing_h5py_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match=r"pynn\[keras\]"):
        pynn.load_model(tmp_path / "m.keras")
    with pytest.raises(ImportError, match=r"pynn\[keras\]"):
        _small_pynn().save(tmp_path / "m.keras")


# -- hostile and unsupported files ------------------------------------------------------------
def _rewrite(src, dst, config=None, h5_edit=None, extra=()):
    """A copy of the .keras file ``src`` with its config replaced and its weights edited."""
    with zipfile.ZipFile(src) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    if config is not None:
        members["config.json"] = json.dumps(config).encode()
    if h5_edit is not None:
        buf = io.BytesIO(members["model.weights.h5"])
        with h5py.File(buf, "a") as h5:
            h5_edit(h5)
        members["model.weights.h5"] = buf.getvalue()
    with zipfile.ZipFile(dst, "w") as zf:
        for name, data in list(members.items()) + list(extra):
            zf.writestr(name, data)
    return dst


@pytest.fixture(scope="module")
def saved_mlp(tmp_path_factory):
    path = tmp_path_factory.mktemp("keras") / "mlp.keras"
    model = keras.Sequential([keras.Input((13,)), K.Dense(17, name="dense"),
                              K.Dense(5, name="dense_1")])
    _randomize(model)
    model.save(path)
    with zipfile.ZipFile(path) as zf:
        config = json.loads(zf.read("config.json"))
    return path, config


def _dense_config(config, index=1):
    return config["config"]["layers"][index]["config"]


def test_lambda_is_refused_and_never_run(tmp_path):
    sentinel = str(tmp_path / "ran")
    x = keras.Input((3,))
    y = K.Lambda(lambda t: t * 2 + (open(sentinel, "w").close() or 0))(x)
    os.remove(sentinel)  # Keras ran the function once to infer the shape
    keras.Model(x, y).save(tmp_path / "lambda.keras")
    with pytest.raises(ValueError, match="Lambda layer holds Python code"):
        pynn.load_model(tmp_path / "lambda.keras")
    assert not os.path.exists(sentinel)


def test_serialized_function_is_refused(saved_mlp, tmp_path):
    path, config = saved_mlp
    config = json.loads(json.dumps(config))
    _dense_config(config)["activation"] = {
        "module": "builtins", "class_name": "function", "config": "evil",
        "registered_name": "function"}
    with pytest.raises(ValueError, match="serialized Python function"):
        pynn.load_model(_rewrite(path, tmp_path / "f.keras", config))


def test_unknown_layer_is_named(saved_mlp, tmp_path):
    path, config = saved_mlp
    config = json.loads(json.dumps(config))
    config["config"]["layers"][1]["class_name"] = "TorchModuleWrapper"
    with pytest.raises(ValueError, match=r"layer 'dense' \(TorchModuleWrapper\): pynn has no "
                                         r"layer 'TorchModuleWrapper'"):
        pynn.load_model(_rewrite(path, tmp_path / "u.keras", config))


def test_unsupported_argument_is_named(saved_mlp, tmp_path):
    path, config = saved_mlp
    config = json.loads(json.dumps(config))
    _dense_config(config)["quantization_config"] = {"mode": "int8"}
    with pytest.raises(ValueError, match=r"layer 'dense' \(Dense\) sets quantization_config="):
        pynn.load_model(_rewrite(path, tmp_path / "q.keras", config))


def test_malformed_input_layer(saved_mlp, tmp_path):
    path, config = saved_mlp
    config = json.loads(json.dumps(config))
    config["config"]["layers"][0]["config"]["batch_shape"] = "huge"
    with pytest.raises(ValueError, match=r"layer '.*' \(InputLayer\) needs a batch_shape list, "
                                         r"got 'huge'"):
        pynn.load_model(_rewrite(path, tmp_path / "i.keras", config))


def test_deep_or_wrongly_typed_config(saved_mlp, tmp_path):
    path, config = saved_mlp
    deep = json.loads(json.dumps(config))
    _dense_config(deep)["units"] = json.loads("[" * 100 + "]" * 100)
    with pytest.raises(ValueError, match="'config.json': nested deeper than 64 levels"):
        pynn.load_model(_rewrite(path, tmp_path / "d.keras", deep))
    typed = json.loads(json.dumps(config))
    _dense_config(typed)["units"] = "many"
    with pytest.raises(ValueError, match="'config.json': invalid model config"):
        pynn.load_model(_rewrite(path, tmp_path / "t.keras", typed))


def test_absurd_shape_is_refused_before_allocating(saved_mlp, tmp_path):
    path, config = saved_mlp
    config = json.loads(json.dumps(config))
    _dense_config(config)["units"] = 10**12
    with pytest.raises(ValueError, match="declares .* weight values but the file stores only"):
        pynn.load_model(_rewrite(path, tmp_path / "big.keras", config))


def test_missing_weights(saved_mlp, tmp_path):
    path, _ = saved_mlp

    def drop(h5):
        del h5["layers/dense_1/vars/1"]
    with pytest.raises(ValueError, match=r"'layers/dense_1/vars' holds 1 arrays; layer "
                                         r"'dense_1' \(Dense\) has 2 weights"):
        pynn.load_model(_rewrite(path, tmp_path / "m.keras", h5_edit=drop))

    def drop_layer(h5):
        del h5["layers/dense"]
    with pytest.raises(ValueError, match="missing the weights of layer 'dense'"):
        pynn.load_model(_rewrite(path, tmp_path / "m2.keras", h5_edit=drop_layer))


@pytest.mark.parametrize("bad", ["int64", "string", "shape"])
def test_wrong_arrays(saved_mlp, tmp_path, bad):
    path, _ = saved_mlp

    def edit(h5):
        old = h5["layers/dense/vars/0"]
        shape = old.shape
        del h5["layers/dense/vars/0"]
        if bad == "int64":
            h5["layers/dense/vars/0"] = np.ones(shape, np.int64)
        elif bad == "string":
            h5["layers/dense/vars/0"] = np.full(shape, b"x", dtype="S1")
        else:
            h5["layers/dense/vars/0"] = np.ones((shape[0], shape[1] + 1), np.float32)
    message = "has shape" if bad == "shape" else "must hold floats"
    with pytest.raises(ValueError, match=rf"layers/dense/vars/0' \(layer 'dense' .*{message}"):
        pynn.load_model(_rewrite(path, tmp_path / "w.keras", h5_edit=edit))


def test_external_link_is_refused(saved_mlp, tmp_path):
    path, _ = saved_mlp
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["w"] = np.zeros((13, 17), np.float32)

    def link(h5):
        del h5["layers/dense/vars/0"]
        h5["layers/dense/vars/0"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "w")
    with pytest.raises(ValueError, match="links to another file"):
        pynn.load_model(_rewrite(path, tmp_path / "x.keras", h5_edit=link))


def test_path_traversal_member_is_refused(saved_mlp, tmp_path):
    path, _ = saved_mlp
    bad = _rewrite(path, tmp_path / "t.keras", extra=[("../../evil.py", b"print('x')")])
    with pytest.raises(ValueError, match=r"'../../evil.py': unsafe member name"):
        pynn.load_model(bad)
    assert not (tmp_path.parent / "evil.py").exists()


def test_zip_bomb_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "bomb.keras", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("config.json", "{}")
        zf.writestr("model.weights.h5", bytes(24 << 20))
    with pytest.raises(ValueError, match="zip bomb"):
        pynn.load_model(tmp_path / "bomb.keras")


def test_not_a_zip_and_not_hdf5(tmp_path):
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a valid zip archive"):
        pynn.load_model(tmp_path / "junk.keras")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="not a valid HDF5 file"):
        pynn.load_model(tmp_path / "junk.h5")


def test_weights_of_another_model_change_nothing(tmp_path):
    model = _small_pynn()
    other = pynn.Sequential([pynn.layers.Input((3,)), pynn.layers.Dense(4)])
    other.save_weights(tmp_path / "o.weights.h5")
    before = model.get_weights()
    with pytest.raises(ValueError, match=r"has shape \(3, 4\), the model expects \(3, 2\)"):
        model.load_weights(tmp_path / "o.weights.h5")
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)



@pytest.mark.opencl
@pytest.mark.parametrize("arch", ["cnn", "sequence"])
def test_keras_files_on_opencl(arch, tmp_path):
    """Loading places the weights on the current device; saving reads them back from it."""
    keras_model = ARCHITECTURES[arch]()
    _randomize(keras_model, seed=5)
    x = _inputs(keras_model, np.random.default_rng(6))
    expected = keras_model.predict(x, verbose=0)
    keras_model.save(tmp_path / "k.keras")
    previous = pynn.get_device()
    pynn.set_device("opencl")
    try:
        model = pynn.load_model(tmp_path / "k.keras")
        np.testing.assert_allclose(model.predict(x), expected, rtol=1e-4, atol=1e-4)
        model.save(tmp_path / "p.keras")
    finally:
        pynn.set_device(previous)
    back = keras.saving.load_model(tmp_path / "p.keras")
    _close(back.predict(x, verbose=0), expected)


def test_masking_functional_model_from_keras(tmp_path):
    inputs = keras.Input((7, 3))
    x = K.Bidirectional(K.LSTM(4, return_sequences=True))(K.Masking(0.5)(inputs))
    keras_model = keras.Model(inputs, K.Dense(2)(K.GlobalAveragePooling1D()(x)))
    _randomize(keras_model)
    x = np.random.default_rng(2).random((4, 7, 3)).astype("float32")
    x[:, 5:] = 0.5
    x[0] = 0.5  # fully masked: Keras's masked average is 0/0, and pynn's too
    keras_model.save(tmp_path / "k.keras")
    got, expected = pynn.load_model(tmp_path / "k.keras").predict(x), keras_model.predict(x)
    assert np.isnan(got[0]).all() and np.isnan(expected[0]).all()
    _close(got[1:], expected[1:])


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_masking_functional_model_from_keras_both_formats(tmp_path, suffix):
    """Keras 3 traces the masks (Masking's, merged, concatenated) as op nodes feeding each
    layer's mask=: modules keras.src.ops.* in .keras, no module at all in its legacy .h5
    (whose own loader then fails: "Unknown layer: 'NotEqual'")."""
    inputs = keras.Input((6, 3))
    a, b = K.Masking(0.0)(inputs), K.Masking(0.5)(inputs)
    joined = K.Concatenate()([a, K.Dense(3)(inputs)])
    y = K.Concatenate()([K.LSTM(2)(joined), K.GRU(2)(K.Add()([a, b])),
                         K.LSTM(2)(K.Concatenate(axis=1)([a, b])),
                         K.GlobalAveragePooling1D()(a)])
    keras_model = keras.Model(inputs, y)
    _randomize(keras_model)
    x = np.random.default_rng(2).random((4, 6, 3)).astype("float32")
    x[0, 1], x[1, 2], x[2, :2] = 0.0, 0.5, 0.0
    keras_model.save(tmp_path / f"k{suffix}")
    _close(pynn.load_model(tmp_path / f"k{suffix}").predict(x), keras_model.predict(x))


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_explicit_mask_tensor_is_refused(tmp_path, suffix):
    values, keep = keras.Input((7, 3)), keras.Input((7,), dtype="bool")
    keras.Model([values, keep], K.LSTM(2)(values, mask=keep)).save(tmp_path / f"k{suffix}")
    with pytest.raises(pynn.interop.keras_files.KerasFileError, match="explicit mask tensor"):
        pynn.load_model(tmp_path / f"k{suffix}")


@pytest.mark.parametrize("layer", ["Add", "Concatenate"])
def test_merge_masks_match_keras(layer):
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((3, 5, 4)).astype("float32") for _ in range(3)]
    masks = [rng.random((3, 5)) > 0.3, None, rng.random((3, 5)) > 0.5]
    expected = getattr(K, layer)().compute_mask(xs, masks)
    got = getattr(pynn.layers, layer)().compute_mask(xs, masks)
    np.testing.assert_array_equal(got, keras.ops.convert_to_numpy(expected))
    assert getattr(pynn.layers, layer)().compute_mask(xs, [None] * 3) is None


# -- HDF5 read in a child process (pynn.interop.h5_snapshot) ------------------------------
FILES = os.path.join(os.path.dirname(__file__), "files")


def test_a_file_that_hangs_libhdf5_is_refused_in_time(monkeypatch):
    """attribute_loop.h5 (a pynn .h5 with bytes flipped, found by fuzzing) makes libhdf5
    loop for ever reading its root attributes: read in a child process, it is stopped at
    the time limit and the file is named, instead of hanging the caller."""
    from pynn.interop import h5_snapshot

    monkeypatch.setattr(h5_snapshot, "TIME_LIMIT_S", 3.0)
    path = os.path.join(FILES, "attribute_loop.h5")
    for load in (pynn.load_model, _small_pynn().load_weights):
        with pytest.raises(pynn.interop.keras_files.KerasFileError,
                           match=rf"{re.escape(path)}: not a valid HDF5 file"):
            load(path)


def test_a_reader_that_crashes_is_an_error_naming_the_file(monkeypatch, tmp_path):
    from pynn.interop import h5_snapshot

    model = _small_pynn()
    model.save(tmp_path / "m.h5")
    monkeypatch.setattr(h5_snapshot, "_CHILD",
                        "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    with pytest.raises(pynn.interop.keras_files.KerasFileError,
                       match=r"m\.h5: not a valid HDF5 file: the HDF5 reader stopped "
                             r"\(signal SIGSEGV\)"):
        pynn.load_model(tmp_path / "m.h5")


def _tree(group, read):
    """Every name, link kind, attribute, shape, dtype and array of an h5py-like file."""
    out = {}
    for name in group:
        link = group.get(name, getlink=True)
        kind = type(link).__name__
        node = group[name] if kind == "HardLink" else None
        attrs = {k: np.asarray(v).tolist() for k, v in (node.attrs.items() if node is not None
                                                         else [])}
        if node is not None and hasattr(node, "shape"):
            out[name] = (kind, attrs, tuple(node.shape), str(node.dtype),
                         read(node).tolist())
        else:
            out[name] = (kind, attrs, _tree(node, read) if node is not None else None)
    return out


def test_the_snapshot_reads_as_h5py(tmp_path):
    """Every group, link, attribute and array of Keras's files (.keras's weights, legacy
    .h5, .weights.h5) as the child's snapshot gives them and as h5py does."""
    from pynn.interop import h5_snapshot

    model = keras.Sequential([keras.Input((5, 3)), K.LSTM(4, return_sequences=True),
                              K.BatchNormalization(), K.GRU(2), K.Dense(3)])
    _randomize(model)
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((4, 5, 3), "float32"), np.ones((4, 3), "float32"), verbose=0)
    model.save(tmp_path / "k.keras")
    model.save(tmp_path / "k.h5")
    model.save_weights(tmp_path / "k.weights.h5")
    with zipfile.ZipFile(tmp_path / "k.keras") as zf:
        member = zf.read("model.weights.h5")
    sources = [member, str(tmp_path / "k.h5"), str(tmp_path / "k.weights.h5")]
    for source in sources:
        snapshot = h5_snapshot.read(source, 100.0, 16 << 20, 1 << 20)
        with h5py.File(io.BytesIO(source) if isinstance(source, bytes) else source) as f:
            want = _tree(f, lambda d: d[()])
        got = _tree(snapshot, np.asarray)
        assert got == want
        assert len(want) >= 2


def test_the_snapshot_reads_no_array_over_its_budget(tmp_path):
    """A dataset that would inflate past the ratio (a compression bomb), or past the
    file's whole budget, is described (shape, dtype, storage) but not read: the readers'
    checks then refuse it by name."""
    from pynn.interop import h5_snapshot

    with h5py.File(tmp_path / "b.h5", "w") as f:
        f.create_dataset("bomb", data=np.zeros((4096, 4096), np.float32), compression="gzip")
        f.create_dataset("small", data=np.arange(6.0).reshape(2, 3))
    snapshot = h5_snapshot.read(str(tmp_path / "b.h5"), 10.0, 1 << 10,
                                os.path.getsize(tmp_path / "b.h5"))
    bomb, small = snapshot["bomb"], snapshot["small"]
    assert bomb.shape == (4096, 4096) and bomb.dtype == np.float32
    assert bomb.id.get_storage_size() < 1 << 20
    with pytest.raises(OSError, match="not read"):
        bomb.read_direct(np.empty(bomb.shape, bomb.dtype))
    np.testing.assert_array_equal(np.asarray(small), np.arange(6.0).reshape(2, 3))


def test_a_process_without_an_interpreter_to_start_reads_in_process(monkeypatch):
    from pynn.interop import h5_snapshot

    assert h5_snapshot.enabled()
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert not h5_snapshot.enabled()
    monkeypatch.delattr(sys, "frozen")
    monkeypatch.setattr(sys, "executable", "/usr/sbin/uwsgi")
    assert not h5_snapshot.enabled()


def test_trusted_files_may_be_read_in_this_process(monkeypatch, tmp_path):
    model = _small_pynn()
    model.save(tmp_path / "m.keras")
    x = np.random.default_rng(0).random((2,) + tuple(model.input_shape[1:])).astype("float32")
    monkeypatch.setenv("PYNN_H5_SANDBOX", "0")
    np.testing.assert_array_equal(pynn.load_model(tmp_path / "m.keras").predict(x),
                                  model.predict(x))


# -- 3-D pooling and spatial layers: Keras 2's .h5 layout and OpenCL --
def test_volumetric_legacy_h5_from_keras(tmp_path):
    test_legacy_h5_from_keras("volumetric_pool", tmp_path)


@pytest.mark.opencl
def test_volumetric_keras_files_on_opencl(tmp_path):
    test_keras_files_on_opencl("volumetric_pool", tmp_path)


# -- Keras 3's CTC, Circle and CategoricalGeneralizedCrossEntropy (loss family) -------------

def _keras3_loss_case(lib, which, rng):
    """(model, loss, x, y) of one of the losses, built with ``lib`` (keras or pynn)."""
    L = lib.layers
    if which == "ctc":
        model = lib.Sequential([lib.Input((7, 4)), L.Dense(5)])
        y = np.array([[1, 2, 0], [3, 0, 0], [1, 1, 2], [2, 3, 1], [0, 0, 0], [4, 4, 0]])
        return model, "ctc", rng.standard_normal((6, 7, 4)).astype(np.float32), y
    x = rng.standard_normal((8, 4)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 3])
    if which == "circle":
        model = lib.Sequential([lib.Input((4,)), L.Dense(6), L.UnitNormalization()])
        return model, lib.losses.Circle(gamma=24.0, margin=0.3), x, y
    model = lib.Sequential([lib.Input((4,)), L.Dense(4, activation="softmax")])
    return model, lib.losses.CategoricalGeneralizedCrossEntropy(q=0.7), x, y


@pytest.mark.parametrize("first", ["keras", "pynn"])
@pytest.mark.parametrize("which", ["ctc", "circle", "generalized_ce"])
def test_keras3_losses_cross_keras_files_and_train_alike(tmp_path, first, which):
    """A model compiled with CTC (by its string name), Circle or the generalized CE and
    saved by one framework loads compiled in the other, with the loss's arguments; two SGD
    steps then give both the same losses and weights."""
    one, other = (keras, pynn) if first == "keras" else (pynn, keras)
    rng = np.random.default_rng(9)
    model, loss, x, y = _keras3_loss_case(one, which, rng)
    model.set_weights([rng.uniform(-0.5, 0.5, np.shape(w)).astype(np.float32)
                       for w in model.get_weights()])
    model.compile(optimizer=one.optimizers.SGD(0.1), loss=loss)
    model.save(tmp_path / "m.keras")
    loaded = (keras.saving.load_model if other is keras else pynn.load_model)(
        tmp_path / "m.keras")
    if other is pynn:
        assert loaded.compiled
        want = {"ctc": {"name": "ctc"},
                "circle": {"name": "circle", "gamma": 24.0, "margin": 0.3,
                           "remove_diagonal": True},
                "generalized_ce": {"name": "categorical_generalized_cross_entropy",
                                   "q": 0.7}}[which]
        assert loaded.loss.get_config() == want
    for _ in range(2):
        np.testing.assert_allclose(float(np.ravel(loaded.train_on_batch(x, y))[0]),
                                   float(np.ravel(model.train_on_batch(x, y))[0]), rtol=1e-5)
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


# -- Keras 3's colour augmentation layers --
def test_equalization_keras_file_from_pynn(tmp_path):
    """Equalization (which Keras 3.15 cannot build into a model) in a .keras file pynn writes:
    Keras's config layout, read back by pynn to the same model; Keras's own layer from that
    config matches pynn's in training."""
    model = pynn.Sequential([pynn.Input((6, 5, 3)), pynn.layers.Equalization((-2, 2), bins=32),
                             pynn.layers.AutoContrast((-2, 2)), pynn.layers.Flatten(),
                             pynn.layers.Dense(2)])
    x = np.random.default_rng(4).standard_normal((3, 6, 5, 3)).astype(np.float32)
    model.save(tmp_path / "p.keras")
    back = pynn.load_model(tmp_path / "p.keras")
    np.testing.assert_allclose(back.predict(x), model.predict(x), rtol=1e-6)
    with zipfile.ZipFile(tmp_path / "p.keras") as z:
        config = json.loads(z.read("config.json"))
    entry = next(e for e in config["config"]["layers"] if e["class_name"] == "Equalization")
    theirs = keras.layers.deserialize(entry)
    ours = back.layers[0]
    assert (theirs.bins, list(theirs.value_range)) == (32, [-2.0, 2.0])
    want = keras.ops.convert_to_numpy(theirs(x, training=True))
    np.testing.assert_allclose(ours(x, training=True), want, rtol=1e-5, atol=1e-5)


def test_color_legacy_h5_from_pynn(tmp_path):
    """Keras 3.15's legacy .h5 writer cannot copy these layers (they hold a module), so the
    Keras 2 layout is written by pynn and read by both."""
    keras_model = ARCHITECTURES["color"]()
    _randomize(keras_model, seed=3)
    x = _inputs(keras_model, np.random.default_rng(2))
    expected = keras_model.predict(x, verbose=0)
    keras_model.save(tmp_path / "k.keras")
    pynn.load_model(tmp_path / "k.keras").save(tmp_path / "p.h5")
    _close(pynn.load_model(tmp_path / "p.h5").predict(x), expected)
    _close(keras.saving.load_model(tmp_path / "p.h5").predict(x, verbose=0), expected)


@pytest.mark.opencl
def test_color_keras_files_on_opencl(tmp_path):
    test_keras_files_on_opencl("color", tmp_path)


# -- ReversibleEmbedding (branch misc) --
def test_reversible_embedding_reverse_call_refused(tmp_path):
    """A functional node keeps no per-call arguments in pynn: a saved reverse=True call is
    refused by name, not run as a lookup."""
    ids = keras.Input((5,), dtype="int32")
    tokens = K.ReversibleEmbedding(11, 4, name="tokens")
    logits = tokens(K.Dense(4)(tokens(ids)), reverse=True)
    keras.Model(ids, logits).save(tmp_path / "lm.keras")
    with pytest.raises(pynn.interop.keras_files.KerasFileError,
                       match=r"layer 'tokens' is called with arguments pynn does not take "
                             r"\(1 positional, keyword \['reverse'\]\)"):
        pynn.load_model(tmp_path / "lm.keras")


# -- applications (branch appsA): keras.ops' arithmetic op nodes (MobileNetV3's hard sigmoid)
def _arithmetic_ops_model():
    inputs = keras.Input((5,))
    x = K.Dense(4, name="dense")(inputs)
    gate = K.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)
    y = (2.0 - gate) / 4.0
    return keras.Model(inputs, K.Dense(3, name="out")(y + x))


def test_arithmetic_op_nodes_both_ways(tmp_path):
    keras_model = _arithmetic_ops_model()
    _randomize(keras_model, seed=3)
    x = np.random.default_rng(4).standard_normal((6, 5)).astype("float32")
    expected = keras_model.predict(x, verbose=0)
    keras_model.save(tmp_path / "k.keras")
    model = pynn.load_model(tmp_path / "k.keras")
    assert [type(layer).__name__ for layer in model.layers].count("OpLayer") == 5
    _close(model.predict(x), expected)
    model.save(tmp_path / "p.keras")
    back = keras.saving.load_model(tmp_path / "p.keras")
    _close(back.predict(x, verbose=0), expected)
    assert [type(op).__name__ for op in back._operations].count("Add") == 2


def test_op_node_as_the_model_output(tmp_path):
    inputs = keras.Input((5,))
    x = K.Dense(4, name="hidden")(inputs)
    keras_model = keras.Model(inputs, [(x + 3.0) * 0.5, K.Dense(2, name="head")(x)])
    _randomize(keras_model, seed=5)
    x = np.random.default_rng(6).standard_normal((3, 5)).astype("float32")
    expected = keras_model.predict(x, verbose=0)
    keras_model.save(tmp_path / "k.keras")
    model = pynn.load_model(tmp_path / "k.keras")
    _close(model.predict(x), expected)
    model.save(tmp_path / "p.keras")
    _close(keras.saving.load_model(tmp_path / "p.keras").predict(x, verbose=0), expected)


def test_op_node_pynn_cannot_read_is_refused(tmp_path):
    inputs = keras.Input((5,))
    outputs = K.Dense(3)(keras.ops.exp(K.Dense(2)(inputs)))
    keras.Model(inputs, outputs).save(tmp_path / "k.keras")
    with pytest.raises(ValueError, match="pynn has no layer 'Exp'"):
        pynn.load_model(tmp_path / "k.keras")


# -- applications (branch appsB): Keras 3's legacy .h5 writes its op nodes without a module --
def test_binary_op_nodes_in_legacy_h5(tmp_path):
    test_legacy_h5_from_keras("binary_op_nodes", tmp_path)


# -- Keras 3's API surface (branch api): EMA variables, LossScaleOptimizer, MultiOptimizer,
# OrthogonalRegularizer and CosineDecayRestarts in .keras files both ways --
def _api_data():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(8, 4)).astype("float32"),
            rng.normal(size=(8, 3)).astype("float32"))


@pytest.mark.parametrize("kind", ["ema", "loss_scale", "multi", "sgdr"])
def test_api_optimizers_and_regularizer_round_trip(kind, tmp_path):
    x, y = _api_data()
    optimizer = {
        "ema": lambda: pynn.optimizers.Adam(0.01, use_ema=True, ema_momentum=0.8),
        "loss_scale": lambda: pynn.optimizers.LossScaleOptimizer(
            pynn.optimizers.SGD(0.1, momentum=0.9), dynamic_growth_steps=3),
        "multi": lambda: pynn.optimizers.MultiOptimizer(pynn.optimizers.OptimizerMap(
            pynn.optimizers.SGD(0.1), {".*kernel": pynn.optimizers.Adam(0.01)})),
        "sgdr": lambda: pynn.optimizers.SGD(pynn.schedules.CosineDecayRestarts(0.1, 3)),
    }[kind]()
    model = pynn.Sequential([pynn.Input((4,)), pynn.layers.Dense(
        3, kernel_regularizer=pynn.regularizers.OrthogonalRegularizer(0.1, "columns"))])
    model.compile(optimizer, "mse")
    model.fit(x, y, epochs=2, batch_size=2, verbose=0)
    model.save(tmp_path / "p.keras")
    k = keras.saving.load_model(tmp_path / "p.keras")
    assert type(k.optimizer).__name__ == type(optimizer).__name__
    reg = k.layers[0].kernel_regularizer
    assert type(reg).__name__ == "OrthogonalRegularizer" and reg.mode == "columns"
    _close(k.predict(x, verbose=0), model.predict(x))
    if kind == "ema":
        assert k.optimizer.use_ema and k.optimizer.ema_momentum == 0.8
        # iteration, learning_rate, then the averages (the kernel's first)
        assert k.optimizer.variables[2].path.endswith("kernel_average")
        _close(k.optimizer.variables[2].numpy(),
               pynn.backend.current().to_numpy(optimizer._ema[model.trainable_weights[0].path]))
    if kind == "loss_scale":
        assert float(k.optimizer.dynamic_scale.numpy()) == optimizer.dynamic_scale
        assert int(k.optimizer.step_counter.numpy()) == optimizer.step_counter
    k.fit(x, y, epochs=1, batch_size=2, verbose=0)
    k.save(tmp_path / "k.keras")
    again = pynn.load_model(tmp_path / "k.keras")
    assert type(again.optimizer) is type(optimizer)
    _close(again.predict(x), k.predict(x, verbose=0))
    if kind == "ema":
        assert again.optimizer.use_ema and again.optimizer.iterations == 12
        _close(pynn.backend.current().to_numpy(
            again.optimizer._ema[again.trainable_weights[0].path]),
            k.optimizer.variables[2].numpy())
    if kind == "loss_scale":
        assert again.optimizer.dynamic_scale == float(k.optimizer.dynamic_scale.numpy())
        assert again.optimizer.iterations == int(k.optimizer.iterations.numpy())
