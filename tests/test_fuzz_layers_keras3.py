"""Hostile-argument fuzz of the Keras 3 layers, losses and optimizers merged after
tests/test_fuzz_layers.py was written (Conv3D, Conv3DTranspose, 3-D pooling and spatial
layers, adaptive pooling, DepthwiseConv1D, AlphaDropout, the colour and geometric
augmentation layers, STFTSpectrogram / MelSpectrogram, CTC / Circle /
CategoricalGeneralizedCrossEntropy, Lamb / Adafactor / Muon).

The same contract as test_fuzz_layers.py: whatever Hypothesis draws (arguments valid and not,
inputs matching and not, odd dtypes, non-finite values, empty batches), pynn gives the
announced output shape, finite for finite inputs, and trains one step, or raises ValueError /
TypeError naming the layer (MemoryError naming the layer for weights beyond the machine):
never another exception, a crash or a hang. Seeded (derandomized) and bounded.
"""

from functools import partial

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import pynn  # noqa: E402
from pynn import layers as L, losses, optimizers  # noqa: E402

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))
# Small values mostly; sometimes values no layer can take.
HOSTILE = st.sampled_from([0, -1, 2**31, 2**63, 1.5, True, None, "x", (2,), (1, 1, 1, 1),
                           float("nan"), float("inf")])


def sometimes(valid, hostile=HOSTILE):
    # one_of over repeated branches does not weight them, so the odds are drawn explicitly.
    return st.integers(0, 15).flatmap(lambda i: hostile if i == 15 else valid)


SIZE = sometimes(st.integers(1, 3))
FACTOR = sometimes(st.one_of(st.floats(0, 0.9), st.tuples(st.floats(0, 0.9), st.floats(0, 0.9))),
                   st.one_of(HOSTILE, st.just(-0.5)))
RATE = sometimes(st.floats(0, 0.9), st.one_of(HOSTILE, st.just(1.0), st.just((0.1, 0.2))))
PADDING = st.sampled_from(["valid", "same", "causal"])
MODEL_LAYER_NAMES = ("Flatten", "Dense")


@st.composite
def volume_layer(draw):
    """A layer on (D, H, W, C) input, with its argument drawn hostile or not."""
    kind = draw(st.sampled_from(["conv", "convt", "maxpool", "avgpool", "upsample", "zeropad",
                                 "crop", "adaptive", "spatialdrop", "gap"]))
    if kind == "conv":
        return partial(L.Conv3D, draw(SIZE), draw(SIZE), strides=draw(SIZE),
                       padding=draw(PADDING), dilation_rate=draw(st.one_of(st.just(1), SIZE)))
    if kind == "convt":
        return partial(L.Conv3DTranspose, draw(SIZE), draw(SIZE), strides=draw(SIZE),
                       padding=draw(PADDING))
    if kind in ("maxpool", "avgpool"):
        cls = L.MaxPooling3D if kind == "maxpool" else L.AveragePooling3D
        return partial(cls, draw(SIZE), strides=draw(st.one_of(st.none(), SIZE)),
                       padding=draw(PADDING))
    if kind == "upsample":
        return partial(L.UpSampling3D, draw(SIZE))
    if kind == "zeropad":
        return partial(L.ZeroPadding3D, draw(SIZE))
    if kind == "crop":
        return partial(L.Cropping3D, draw(st.one_of(st.integers(0, 2), SIZE)))
    if kind == "adaptive":
        cls = draw(st.sampled_from([L.AdaptiveAveragePooling3D, L.AdaptiveMaxPooling3D]))
        return partial(cls, draw(SIZE))
    if kind == "spatialdrop":
        return partial(L.SpatialDropout3D, draw(RATE))
    return draw(st.sampled_from([L.GlobalAveragePooling3D, L.GlobalMaxPooling3D]))


@st.composite
def volume_model(draw):
    shape = tuple(draw(st.integers(1, 5)) for _ in range(3)) + (draw(st.integers(1, 3)),)
    return [partial(L.Input, shape=shape), draw(volume_layer())], shape


@st.composite
def sequence_model(draw):
    shape = (draw(st.integers(1, 9)), draw(st.integers(1, 3)))
    kind = draw(st.sampled_from(["depthwise", "adaptive", "alpha"]))
    if kind == "depthwise":
        layer = partial(L.DepthwiseConv1D, draw(SIZE), strides=draw(SIZE),
                        padding=draw(PADDING), depth_multiplier=draw(SIZE),
                        dilation_rate=draw(st.one_of(st.just(1), SIZE)))
    elif kind == "adaptive":
        layer = partial(draw(st.sampled_from([L.AdaptiveAveragePooling1D,
                                              L.AdaptiveMaxPooling1D])), draw(SIZE))
    else:
        layer = partial(L.AlphaDropout, draw(RATE))
    return [partial(L.Input, shape=shape), layer], shape


@st.composite
def spectral_model(draw):
    length = draw(st.integers(1, 90))
    if draw(st.booleans()):
        shape = (length, draw(st.sampled_from([1, 1, 2])))
        layer = partial(L.STFTSpectrogram, mode=draw(sometimes(st.sampled_from(
                            ["log", "magnitude", "psd", "real", "imag", "angle", "stft"]),
                            st.just("x"))),
                        frame_length=draw(sometimes(st.integers(1, 16))),
                        frame_step=draw(sometimes(st.integers(1, 8))),
                        fft_length=draw(sometimes(st.none(), st.one_of(st.integers(1, 32),
                                                                        HOSTILE))),
                        padding=draw(sometimes(st.sampled_from(["valid", "same"]), st.just(3))))
    else:
        shape = (length,)
        layer = partial(L.MelSpectrogram,
                        fft_length=draw(sometimes(st.sampled_from([8, 16, 17]))),
                        sequence_stride=draw(sometimes(st.integers(1, 8))),
                        sequence_length=draw(sometimes(st.one_of(st.none(), st.integers(1, 8)))),
                        num_mel_bins=draw(sometimes(st.integers(1, 16))),
                        sampling_rate=draw(sometimes(st.just(8000))),
                        min_freq=draw(sometimes(st.just(20.0))),
                        power_to_db=draw(st.booleans()),
                        mag_exp=draw(sometimes(st.just(2.0))))
    return [partial(L.Input, shape=shape), layer], shape


def _layer_class_name(build):
    return build[0][1].func.__name__ if isinstance(build[0][1], partial) else build[0][1].__name__


def _input(shape, batch, rng, mismatch):
    if mismatch == "rank":
        shape = shape[:-1]
    elif mismatch == "size":
        shape = shape[:-1] + (shape[-1] + 1,)
    x = rng.standard_normal((batch,) + tuple(shape))
    if mismatch == "complex":
        return x.astype(np.complex64)
    if mismatch == "object":
        return x.astype(object)
    if mismatch == "float16":
        return x.astype(np.float16)
    if mismatch == "int":
        return (x * 3).astype(np.int32)
    return x.astype(np.float32)


# dtypes pynn casts to float32 as Keras does; the others must be refused.
CAST = (None, "float16", "int")


def _run(build, mismatch, batch):
    rng = np.random.default_rng(batch)
    name = _layer_class_name(build)
    try:
        makers, shape = build
        model = pynn.Sequential([make() for make in makers] + [L.Flatten(), L.Dense(1)])
        model.compile(optimizer="adam", loss="mean_squared_error")
    except (ValueError, TypeError, MemoryError) as exc:
        assert name in str(exc) or any(n in str(exc) for n in MODEL_LAYER_NAMES), \
            f"names no layer: {exc}"
        return
    x = _input(shape, batch, rng, mismatch)
    try:
        y = model.predict(x, verbose=0)
    except (ValueError, TypeError) as exc:
        assert mismatch not in CAST or batch == 0, f"a valid input was refused: {exc}"
        return
    assert mismatch in CAST, f"an input ({mismatch}) the model cannot take was accepted"
    assert y.shape == (batch,) + tuple(model.output_shape[1:])
    assert np.all(np.isfinite(y)), "finite inputs gave non-finite outputs"
    if batch:
        loss = model.train_on_batch(x.astype(np.float32), np.zeros(y.shape, np.float32))
        loss = loss[0] if isinstance(loss, (list, tuple)) else loss
        assert np.isfinite(loss)


MISMATCH = st.sampled_from([None, None, None, "rank", "size", "complex", "object", "float16",
                            "int"])


@SETTINGS
@given(volume_model(), MISMATCH, st.integers(0, 2))
def test_volume_layers(cpu_backend, build, mismatch, batch):
    _run(build, mismatch, batch)


@SETTINGS
@given(sequence_model(), MISMATCH, st.integers(0, 2))
def test_sequence_layers(cpu_backend, build, mismatch, batch):
    _run(build, mismatch, batch)


@SETTINGS
@given(spectral_model(), st.sampled_from([None, None, "rank", "complex", "object"]),
       st.integers(0, 2))
def test_spectral_layers(cpu_backend, build, mismatch, batch):
    _run(build, mismatch, batch)


# -- augmentation layers: called directly on an image batch, training=True -------------------
AUGMENT = {
    "RandomColorJitter": lambda f: L.RandomColorJitter(brightness_factor=f, contrast_factor=f),
    "Solarization": lambda f: L.Solarization(addition_factor=f, threshold_factor=f),
    "RandomHue": lambda f: L.RandomHue(f), "RandomSaturation": lambda f: L.RandomSaturation(f),
    "RandomColorDegeneration": lambda f: L.RandomColorDegeneration(f),
    "RandomSharpness": lambda f: L.RandomSharpness(f),
    "RandomGrayscale": lambda f: L.RandomGrayscale(f),
    "RandomInvert": lambda f: L.RandomInvert(f),
    "RandomPosterization": lambda f: L.RandomPosterization(f),
    "RandomShear": lambda f: L.RandomShear(f, f),
    "RandomPerspective": lambda f: L.RandomPerspective(f),
    "RandomErasing": lambda f: L.RandomErasing(f),
    "RandomGaussianBlur": lambda f: L.RandomGaussianBlur(f),
    "RandomElasticTransform": lambda f: L.RandomElasticTransform(f),
    "CutMix": lambda f: L.CutMix(f), "MixUp": lambda f: L.MixUp(f),
    "AutoContrast": lambda f: L.AutoContrast(), "Equalization": lambda f: L.Equalization(),
}
# -- clahe: Keras 3's ContrastLimitedAdaptiveHistogramEqualization --
AUGMENT["ContrastLimitedAdaptiveHistogramEqualization"] = \
    lambda f: L.ContrastLimitedAdaptiveHistogramEqualization(clip_limit=10 * f,
                                                             tile_grid_size=(2, 3))


@SETTINGS
@given(st.sampled_from(sorted(AUGMENT)), FACTOR,
       st.sampled_from([None, None, "complex", "object", "nan", "empty", "rank", "int"]),
       st.integers(0, 3))
def test_augmentation_layers(cpu_backend, name, factor, mismatch, batch):
    try:
        layer = AUGMENT[name](factor)
    except (ValueError, TypeError) as exc:
        assert name in str(exc), f"names no layer: {exc}"
        return
    images = np.random.default_rng(batch).random((batch, 5, 6, 3)) * 255
    if mismatch == "complex":
        images = images.astype(np.complex64)
    elif mismatch == "object":
        images = images.astype(object)
    elif mismatch == "nan":
        images[..., 0, 0, 0] = np.nan
    elif mismatch == "empty":
        images = images[:, :0]
    elif mismatch == "rank":
        images = images[..., 0]
    elif mismatch == "int":
        images = images.astype(np.int32)
    images = images.astype(np.float32) if mismatch in (None, "nan") else images
    try:
        out = np.asarray(layer(images, training=True))
    except (ValueError, TypeError) as exc:
        assert mismatch not in (None, "int") or batch == 0, f"a valid input was refused: {exc}"
        return
    assert mismatch not in ("complex", "object", "rank"), f"{mismatch} input was accepted"
    assert out.shape == images.shape
    if mismatch in (None, "int"):
        assert np.all(np.isfinite(out)), "finite images gave non-finite output"


# -- losses with hostile labels / predictions ------------------------------------------------
def _hostile_pair(draw, rng):
    kind = draw(st.sampled_from(["ok", "nan", "empty", "shape", "complex", "object",
                                 "labels_out_of_range", "labels_negative", "bool"]))
    y_true = rng.integers(0, 3, (3,)).astype(np.int64)
    y_pred = rng.random((3, 4)).astype(np.float32) + 0.05
    if kind == "nan":
        y_pred[0, 0] = np.nan
    elif kind == "empty":
        y_true, y_pred = y_true[:0], y_pred[:0]
    elif kind == "shape":
        y_true = y_true[:2]
    elif kind == "complex":
        y_pred = y_pred.astype(np.complex64)
    elif kind == "object":
        y_pred = y_pred.astype(object)
    elif kind == "labels_out_of_range":
        y_true[0] = 9
    elif kind == "labels_negative":
        y_true[0] = -2
    elif kind == "bool":
        y_true = y_true > 0
    return kind, y_true, y_pred


@SETTINGS
@given(st.data(), st.sampled_from(["generalized", "circle", "ctc"]), st.integers(0, 9))
def test_losses(cpu_backend, data, which, seed):
    rng = np.random.default_rng(seed)
    kind, y_true, y_pred = _hostile_pair(data.draw, rng)
    if which == "generalized":
        make = partial(losses.CategoricalGeneralizedCrossEntropy, q=data.draw(FACTOR))
        y_true = np.eye(4, dtype=np.float32)[np.clip(y_true, 0, 3)] if kind != "bool" else \
            y_true
    elif which == "circle":
        make = partial(losses.Circle, gamma=data.draw(st.one_of(st.just(80.0), HOSTILE)),
                       margin=data.draw(FACTOR))
    else:
        make = losses.CTC
        y_true = np.tile(y_true[:, None], (1, 2))
        y_pred = np.tile(y_pred[:, None, :], (1, 5, 1))
    try:
        value = np.asarray(make()(y_true, y_pred))
    except (ValueError, TypeError) as exc:
        assert str(exc), "an error without a message"
        return
    # An object array of numbers converts, as it does in Keras; complex and a shape mismatch
    # must not.
    assert kind not in ("shape", "complex"), f"{which} took {kind} input"
    if kind in ("ok", "bool") and which != "ctc":
        assert np.all(np.isfinite(value)), f"{which} gave non-finite loss on {kind}"


# -- optimizers with hostile arguments --------------------------------------------------------
OPTIMIZER_ARGUMENTS = {
    optimizers.Lamb: ["learning_rate", "beta_1", "beta_2", "epsilon", "weight_decay",
                      "clipnorm"],
    optimizers.Adafactor: ["learning_rate", "beta_2_decay", "epsilon_1", "epsilon_2",
                           "clip_threshold", "weight_decay"],
    optimizers.Muon: ["learning_rate", "adam_beta_1", "adam_beta_2", "epsilon", "momentum",
                      "ns_steps", "adam_lr_ratio", "weight_decay"],
}


@SETTINGS
@given(st.sampled_from(sorted(OPTIMIZER_ARGUMENTS, key=lambda c: c.__name__)), st.data(),
       st.one_of(HOSTILE, st.just(-0.1), st.just(1e-3),
                 st.just(pynn.optimizers.schedules.ExponentialDecay(1e-3, 10, 0.9))))
def test_optimizers(cpu_backend, cls, data, value):
    argument = data.draw(st.sampled_from(OPTIMIZER_ARGUMENTS[cls]))
    model = pynn.Sequential([L.Input((3,)), L.Dense(4), L.Dense(2)])
    try:
        model.compile(cls(**{argument: value}), "mean_squared_error")
        loss = model.train_on_batch(np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32))
    except (ValueError, TypeError) as exc:
        assert str(exc), "an error without a message"
        return
    loss = loss[0] if isinstance(loss, (list, tuple)) else loss
    assert np.isfinite(loss)
    assert all(np.all(np.isfinite(w)) for w in model.get_weights()), \
        f"{cls.__name__}({argument}={value!r}) was accepted and made weights non-finite"


# -- regressions: the defects this fuzz found -------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: L.RandomColorJitter(brightness_factor=float("nan")),
    lambda: L.RandomColorJitter(contrast_factor=float("nan")),
    lambda: L.Solarization(addition_factor=float("nan")),
    lambda: L.Solarization(threshold_factor=float("nan")),
    lambda: L.Solarization(threshold_factor=(0.1, float("nan"))),
])
def test_nan_factor_refused_at_construction(make):
    # Was accepted and failed at the first call with NumPy's OverflowError
    # ("high - low range exceeds valid bounds").
    with pytest.raises(ValueError, match=r"factor must lie in \[.*got .*nan"):
        make()


def test_depthwise_conv1d_output_channels_beyond_c_int_refused_before_allocating(monkeypatch):
    # input channels x depth_multiplier indexes the op's output channels with a C int; it was
    # only caught (if at all) by the memory check after the product passed 2**31.
    layer = L.DepthwiseConv1D(1, depth_multiplier=2**15 + 1)

    def allocated(*args, **kwargs):
        raise AssertionError("the kernel was allocated")

    monkeypatch.setattr(layer, "add_weight", allocated)
    with pytest.raises(ValueError, match=r"DepthwiseConv1D '\w+': input channels x "
                                         r"depth_multiplier must be at most 2147483647"):
        layer.build((None, 4, 2**16))


@pytest.mark.parametrize("make", [
    lambda: L.RandomInvert(value_range=(0, float("nan"))),
    lambda: L.AutoContrast(value_range=(0, float("inf"))),
    lambda: L.Equalization(value_range=("0", 255)),
    lambda: L.RandomErasing(value_range=(0, float("nan"))),
    lambda: L.RandomGaussianBlur(value_range=(float("nan"), 1)),
    lambda: L.RandomElasticTransform(value_range=(0, float("nan"))),
])
def test_non_finite_value_range_refused_at_construction(make):
    # Was accepted and refused only by the op at the first call, some messages naming no layer.
    with pytest.raises(ValueError, match=r"^\w+ '\w+': value_range must be two finite numbers"):
        make()


@pytest.mark.parametrize("sigma", [(0.0, float("nan")), (0.5, float("inf"))])
def test_gaussian_blur_non_finite_sigma_refused_at_construction(sigma):
    # Was accepted and failed at the first call with NumPy's OverflowError.
    with pytest.raises(ValueError, match=r"RandomGaussianBlur '\w+': sigma's lower end must lie "
                                         r"in \[0.0, 1.0\] and its upper end be finite"):
        L.RandomGaussianBlur(sigma=sigma)


@pytest.mark.parametrize("bins", [2**20 + 1, 2**31, 2**63])
def test_equalization_bins_beyond_the_op_refused_at_construction(bins):
    # Was accepted and refused only by color_transform_forward at the first call.
    with pytest.raises(ValueError, match=r"Equalization '\w+': bins must be a positive int at "
                                         r"most 1048576"):
        L.Equalization(bins=bins)
