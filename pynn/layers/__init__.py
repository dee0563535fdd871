"""Keras-3-named layers. Every class here is also what a saved model may name: loading looks
classes up in ``LAYERS`` only, never imports by name."""

from pynn.layers.base import Layer
from pynn.layers.conv import Conv2D
from pynn.layers.conv_variants import Conv2DTranspose, DepthwiseConv2D, SeparableConv2D
from pynn.layers.core import (
    Activation, ActivityRegularization, Dense, Dropout, Flatten, Input, InputLayer, Reshape,
)
from pynn.layers.recurrent import GRU, LSTM, SimpleRNN
# -- masks and recurrent wrappers (issue 14, recurrent half) --
from pynn.layers.masking import Masking
from pynn.layers.recurrent import (
    RNN,
    Bidirectional,
    GRUCell,
    LSTMCell,
    SimpleRNNCell,
    StackedRNNCells,
)
# -- merge (Keras's merge layers and their functional helpers) --
from pynn.layers.merge import (
    Add,
    Average,
    Concatenate,
    Dot,
    Maximum,
    Minimum,
    Multiply,
    Subtract,
    add,
    average,
    concatenate,
    dot,
    maximum,
    minimum,
    multiply,
    subtract,
)

# -- normalization --
from pynn.layers.normalization import (
    BatchNormalization,
    GroupNormalization,
    LayerNormalization,
)
from pynn.layers.pooling import (
    AveragePooling2D,
    GlobalAveragePooling2D,
    GlobalMaxPooling2D,
    MaxPooling2D,
)
# -- spatial and shape families --
from pynn.layers.shape import Identity, Permute, RepeatVector
from pynn.layers.spatial import Cropping2D, UpSampling2D, ZeroPadding2D
# -- issue 12: activation and noise layers
from pynn.layers.activation import ELU, LeakyReLU, PReLU, ReLU, Softmax
from pynn.layers.noise import (
    GaussianDropout, GaussianNoise, SpatialDropout1D, SpatialDropout2D, SpatialDropout3D,
)
# -- sequence layers (issue 14) --
from pynn.layers.embedding import Embedding
from pynn.layers.sequence import (
    AveragePooling1D,
    Conv1D,
    GlobalAveragePooling1D,
    GlobalMaxPooling1D,
    MaxPooling1D,
    TimeDistributed,
)
# -- sequence layers, 1-D twins and text (issue 14, branch seq) --
from pynn.layers.sequence import (
    Conv1DTranspose,
    Cropping1D,
    SeparableConv1D,
    UpSampling1D,
    ZeroPadding1D,
)
from pynn.layers.text import TextVectorization

LAYERS = {cls.__name__: cls for cls in (
    InputLayer, Dense, Activation, ActivityRegularization, Dropout, Flatten, Reshape, Conv2D, MaxPooling2D,
    AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D, SimpleRNN, LSTM, GRU,
    # -- merge --
    Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate, Dot,
    # -- spatial and shape families --
    UpSampling2D, ZeroPadding2D, Cropping2D, Permute, RepeatVector, Identity,
    # -- normalization --
    BatchNormalization, LayerNormalization, GroupNormalization,
    # convolution variants (issue 12)
    Conv2DTranspose, DepthwiseConv2D, SeparableConv2D,
)}
# -- issue 12: activation and noise layers
LAYERS.update({cls.__name__: cls for cls in (
    ReLU, LeakyReLU, PReLU, ELU, Softmax, SpatialDropout2D, GaussianNoise, GaussianDropout,
    SpatialDropout1D, SpatialDropout3D,
)})
# -- sequence layers (issue 14) --
LAYERS.update({cls.__name__: cls for cls in (
    Embedding, Conv1D, MaxPooling1D, AveragePooling1D, GlobalAveragePooling1D,
    GlobalMaxPooling1D, TimeDistributed,
)})
# -- preprocessing layers (issue 15) --
from pynn.layers.preprocessing import (  # noqa: E402
    CenterCrop, Normalization, RandomBrightness, RandomContrast, RandomCrop, RandomFlip,
    RandomRotation, RandomTranslation, RandomZoom, Rescaling, Resizing,
)
LAYERS.update({cls.__name__: cls for cls in (
    Rescaling, Normalization, Resizing, CenterCrop, RandomCrop, RandomFlip, RandomRotation,
    RandomZoom, RandomTranslation, RandomContrast, RandomBrightness,
)})
# -- compression (issue 18): the pruning wrapper (pynn.compression.pruning) --
from pynn.layers.pruning import PruneLowMagnitude  # noqa: E402

LAYERS["PruneLowMagnitude"] = PruneLowMagnitude
# -- custom layers and ops (issue 13): Lambda, and the functional graph's op nodes --
from pynn.layers.core import Lambda  # noqa: E402
LAYERS.update({cls.__name__: cls for cls in (Lambda,)})
# -- masks and recurrent wrappers (issue 14, recurrent half) --
LAYERS.update({cls.__name__: cls for cls in (
    Masking, Bidirectional, RNN, SimpleRNNCell, LSTMCell, GRUCell, StackedRNNCells,
)})
MaxPool1D = MaxPooling1D
AvgPool1D = AveragePooling1D
GlobalAvgPool1D = GlobalAveragePooling1D
GlobalMaxPool1D = GlobalMaxPooling1D
Convolution1D = Conv1D
# -- sequence layers, 1-D twins and text (issue 14, branch seq) --
LAYERS.update({cls.__name__: cls for cls in (
    UpSampling1D, ZeroPadding1D, Cropping1D, Conv1DTranspose, SeparableConv1D,
    TextVectorization,
)})
Convolution1DTranspose = Conv1DTranspose
SeparableConvolution1D = SeparableConv1D
# -- int8 quantization (issue 18, branch quant): saved quantized models name these --
from pynn.layers.quantized import FakeQuant, QuantizedConv2D, QuantizedDense  # noqa: E402
LAYERS.update({cls.__name__: cls for cls in (QuantizedDense, QuantizedConv2D, FakeQuant)})
# -- int8 breadth (issue 18, branch qbreadth): Conv1D, depthwise, separable, recurrent --
from pynn.layers.quantized_extra import (  # noqa: E402
    QuantizedConv1D, QuantizedDepthwiseConv2D, QuantizedGRU, QuantizedLSTM,
    QuantizedSeparableConv2D, QuantizedSimpleRNN,
)
LAYERS.update({cls.__name__: cls for cls in (
    QuantizedConv1D, QuantizedDepthwiseConv2D, QuantizedSeparableConv2D, QuantizedSimpleRNN,
    QuantizedLSTM, QuantizedGRU,
)})
# -- int8 chains (issue 18, branch q8): the uint8 max pooling between int8 layers --
from pynn.layers.quantized import QuantizedMaxPooling2D  # noqa: E402
LAYERS["QuantizedMaxPooling2D"] = QuantizedMaxPooling2D

# Keras aliases.
MaxPool2D = MaxPooling2D
AvgPool2D = AveragePooling2D
GlobalAvgPool2D = GlobalAveragePooling2D
GlobalMaxPool2D = GlobalMaxPooling2D
# convolution variants (issue 12)
Convolution2D = Conv2D
Convolution2DTranspose = Conv2DTranspose
SeparableConvolution2D = SeparableConv2D

__all__ = ["Layer", "LAYERS", "Input", *LAYERS, "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D",
           "GlobalMaxPool2D",
           # -- merge: functional helpers --
           "add", "subtract", "multiply", "average", "maximum", "minimum", "concatenate",
           "dot",
           # -- convolution variants: Keras aliases --
           "Convolution2D", "Convolution2DTranspose", "SeparableConvolution2D",
           # -- sequence layers (issue 14): Keras aliases --
           "MaxPool1D", "AvgPool1D", "GlobalAvgPool1D", "GlobalMaxPool1D", "Convolution1D",
           # -- sequence layers, 1-D twins and text (issue 14, branch seq): Keras aliases --
           "Convolution1DTranspose", "SeparableConvolution1D"]
# -- attention: Keras 3's MultiHeadAttention on the attention ops --
from pynn.layers.attention import (  # noqa: E402
    AdditiveAttention, Attention, GroupedQueryAttention, GroupQueryAttention, MultiHeadAttention,
)

LAYERS.update({cls.__name__: cls for cls in (MultiHeadAttention, Attention, AdditiveAttention,
                                             GroupQueryAttention)})
__all__ += ["GroupedQueryAttention"]   # Keras's class name; its files say GroupQueryAttention
# -- normalization: Keras 3's RMSNormalization and UnitNormalization --
from pynn.layers.normalization import RMSNormalization, UnitNormalization  # noqa: E402

LAYERS.update({cls.__name__: cls for cls in (RMSNormalization, UnitNormalization)})
__all__ += ["RMSNormalization", "UnitNormalization"]
# -- Keras 3's EinsumDense: one Dense product between transposes --
from pynn.layers.einsum_dense import EinsumDense  # noqa: E402

LAYERS["EinsumDense"] = EinsumDense
# -- Keras 3's CategoryEncoding and Discretization --
from pynn.layers.preprocessing import CategoryEncoding, Discretization  # noqa: E402

LAYERS.update({cls.__name__: cls for cls in (CategoryEncoding, Discretization)})
# -- conv3d: Keras 3's Conv3D and Conv3DTranspose --
from pynn.layers.conv3d import Conv3D, Conv3DTranspose  # noqa: E402

LAYERS.update({cls.__name__: cls for cls in (Conv3D, Conv3DTranspose)})
Convolution3D = Conv3D
Convolution3DTranspose = Conv3DTranspose
__all__ += ["Conv3D", "Conv3DTranspose", "Convolution3D", "Convolution3DTranspose"]
# -- 3-D pooling and spatial layers (branch vol) --
from pynn.layers.pooling import (  # noqa: E402
    AveragePooling3D, GlobalAveragePooling3D, GlobalMaxPooling3D, MaxPooling3D,
)
from pynn.layers.spatial import Cropping3D, UpSampling3D, ZeroPadding3D  # noqa: E402

LAYERS.update({cls.__name__: cls for cls in (
    MaxPooling3D, AveragePooling3D, GlobalMaxPooling3D, GlobalAveragePooling3D, UpSampling3D,
    ZeroPadding3D, Cropping3D,
)})
MaxPool3D = MaxPooling3D
AvgPool3D = AveragePooling3D
GlobalMaxPool3D = GlobalMaxPooling3D
GlobalAvgPool3D = GlobalAveragePooling3D
__all__ += ["MaxPooling3D", "AveragePooling3D", "GlobalMaxPooling3D", "GlobalAveragePooling3D",
            "UpSampling3D", "ZeroPadding3D", "Cropping3D", "MaxPool3D", "AvgPool3D",
            "GlobalMaxPool3D", "GlobalAvgPool3D"]
# -- Keras 3's adaptive pooling (1D-3D, average and max) --
from pynn.layers.adaptive_pooling import (  # noqa: E402
    AdaptiveAveragePooling1D, AdaptiveAveragePooling2D, AdaptiveAveragePooling3D,
    AdaptiveMaxPooling1D, AdaptiveMaxPooling2D, AdaptiveMaxPooling3D,
)

LAYERS.update({cls.__name__: cls for cls in (
    AdaptiveAveragePooling1D, AdaptiveAveragePooling2D, AdaptiveAveragePooling3D,
    AdaptiveMaxPooling1D, AdaptiveMaxPooling2D, AdaptiveMaxPooling3D,
)})
__all__ += ["AdaptiveAveragePooling1D", "AdaptiveAveragePooling2D", "AdaptiveAveragePooling3D",
            "AdaptiveMaxPooling1D", "AdaptiveMaxPooling2D", "AdaptiveMaxPooling3D"]
# -- Keras 3's DepthwiseConv1D (on the depthwise ops, as Conv1D sits on Conv2D) --
from pynn.layers.sequence import DepthwiseConv1D  # noqa: E402

LAYERS["DepthwiseConv1D"] = DepthwiseConv1D
__all__ += ["DepthwiseConv1D"]
# -- Keras 3's AlphaDropout (the dropout family's alpha_dropout ops) --
from pynn.layers.noise import AlphaDropout  # noqa: E402

LAYERS["AlphaDropout"] = AlphaDropout
__all__ += ["AlphaDropout"]
# -- Keras 3's colour augmentation layers (the color family's color_transform_forward) --
from pynn.layers.color import (  # noqa: E402
    AutoContrast, Equalization, RandomColorDegeneration, RandomColorJitter, RandomGrayscale,
    RandomHue, RandomInvert, RandomPosterization, RandomSaturation, RandomSharpness,
    Solarization,
)

_COLOR_LAYERS = (AutoContrast, Equalization, Solarization, RandomInvert, RandomPosterization,
                 RandomGrayscale, RandomHue, RandomSaturation, RandomColorDegeneration,
                 RandomColorJitter, RandomSharpness)
LAYERS.update({cls.__name__: cls for cls in _COLOR_LAYERS})
__all__ += [cls.__name__ for cls in _COLOR_LAYERS]
# -- auggeo: Keras 3's geometric, erasing and mixing augmentations --
from pynn.layers.augment_geo import (  # noqa: E402
    CutMix, MixUp, RandomElasticTransform, RandomErasing, RandomGaussianBlur,
    RandomPerspective, RandomShear,
)

LAYERS.update({cls.__name__: cls for cls in (
    RandomShear, RandomPerspective, RandomErasing, CutMix, MixUp, RandomGaussianBlur,
    RandomElasticTransform,
)})
__all__ += ["RandomShear", "RandomPerspective", "RandomErasing", "CutMix", "MixUp",
            "RandomGaussianBlur", "RandomElasticTransform"]
# -- spectral (branch audio): Keras 3's audio front ends --
from pynn.layers.spectral import MelSpectrogram, STFTSpectrogram  # noqa: E402

LAYERS.update(MelSpectrogram=MelSpectrogram, STFTSpectrogram=STFTSpectrogram)
__all__ += ["MelSpectrogram", "STFTSpectrogram"]
# -- convlstm: Keras 3's ConvLSTM1D, ConvLSTM2D and ConvLSTM3D --
from pynn.layers.conv_lstm import ConvLSTM1D, ConvLSTM2D, ConvLSTM3D  # noqa: E402

LAYERS.update({cls.__name__: cls for cls in (ConvLSTM1D, ConvLSTM2D, ConvLSTM3D)})
__all__ += ["ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D"]
# -- Keras 3's ReversibleEmbedding (branch misc) --
from pynn.layers.embedding import ReversibleEmbedding  # noqa: E402
LAYERS.update({cls.__name__: cls for cls in (ReversibleEmbedding,)})
__all__ += ["ReversibleEmbedding"]
# -- Keras 3's SpectralNormalization (branch misc) --
from pynn.layers.spectral_norm import SpectralNormalization  # noqa: E402
LAYERS.update({cls.__name__: cls for cls in (SpectralNormalization,)})
__all__ += ["SpectralNormalization"]
# -- augmix: Keras 3's Pipeline --
from pynn.layers.augment_policy import Pipeline  # noqa: E402

LAYERS["Pipeline"] = Pipeline
__all__ += ["Pipeline"]
# -- randaug: Keras 3's RandAugment --
from pynn.layers.augment_policy import RandAugment  # noqa: E402

LAYERS["RandAugment"] = RandAugment
__all__ += ["RandAugment"]
# -- randaug: Keras 3's AugMix --
from pynn.layers.augment_policy import AugMix  # noqa: E402

LAYERS["AugMix"] = AugMix
__all__ += ["AugMix"]
# -- lookup: Keras 3's Hashing, HashedCrossing, StringLookup, IntegerLookup (host preprocessing) --
from pynn.layers.lookup import (  # noqa: E402
    HashedCrossing, Hashing, IntegerLookup, StringLookup,
)

LAYERS.update({cls.__name__: cls for cls in (Hashing, HashedCrossing, StringLookup,
                                              IntegerLookup)})
__all__ += ["Hashing", "HashedCrossing", "StringLookup", "IntegerLookup"]
# -- clahe: Keras 3's ContrastLimitedAdaptiveHistogramEqualization (color family) --
from pynn.layers.color import ContrastLimitedAdaptiveHistogramEqualization  # noqa: E402

LAYERS["ContrastLimitedAdaptiveHistogramEqualization"] = \
    ContrastLimitedAdaptiveHistogramEqualization
__all__ += ["ContrastLimitedAdaptiveHistogramEqualization"]
# -- lookup: Keras 3's MaxNumBoundingBoxes (bounding-box dict inputs; the identity on images) --
from pynn.layers.bounding_boxes import MaxNumBoundingBoxes  # noqa: E402

LAYERS["MaxNumBoundingBoxes"] = MaxNumBoundingBoxes
__all__ += ["MaxNumBoundingBoxes"]
# -- applications (branch appsB): the layers Keras's applications define, by Keras's names --
from pynn.layers.applications import CustomScaleLayer, LayerScale, StochasticDepth  # noqa: E402
LAYERS.update({cls.__name__: cls for cls in (LayerScale, StochasticDepth, CustomScaleLayer)})
__all__ += ["LayerScale", "StochasticDepth", "CustomScaleLayer"]
