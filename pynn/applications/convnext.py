"""ConvNeXt Tiny, Small, Base, Large, XLarge (Liu et al., 2022), as Keras 3 builds them
(keras/src/applications/convnext.py): the same layers, names and weight order.

Keras's quirks kept: the stem and each downsampling step are nested Sequential models
(their weights live under them); the pointwise convolutions are Dense layers on NHWC; the
residual sum is a bare op (``inputs + branch``), so like Keras's it is no layer of
``model.layers`` order in Keras, and in pynn an op node (pynn.ops.add) named as Keras names
it ("add", "add_1", ...). LayerScale and StochasticDepth are pynn.layers' classes of Keras's
names, so ConvNeXt's Keras files load.
"""

import numpy as np

from pynn.applications import _keras_rules as rules
from pynn.layers import (
    Activation, Conv2D, Dense, GlobalAveragePooling2D, GlobalMaxPooling2D, LayerNormalization,
    LayerScale, Normalization, StochasticDepth,
)
from pynn.layers.base import _unique_name

MODEL_CONFIGS = {
    "tiny": {"depths": [3, 3, 9, 3], "projection_dims": [96, 192, 384, 768],
             "default_size": 224},
    "small": {"depths": [3, 3, 27, 3], "projection_dims": [96, 192, 384, 768],
              "default_size": 224},
    "base": {"depths": [3, 3, 27, 3], "projection_dims": [128, 256, 512, 1024],
             "default_size": 224},
    "large": {"depths": [3, 3, 27, 3], "projection_dims": [192, 384, 768, 1536],
              "default_size": 224},
    "xlarge": {"depths": [3, 3, 27, 3], "projection_dims": [256, 512, 1024, 2048],
               "default_size": 224},
}


def _residual_sum(inputs, branch):
    # Keras writes ``inputs + branch``: an op node named "add", "add_1", ... of the graph
    from pynn.ops._core import OpLayer

    layer = OpLayer("add", [{"tensor": 0}, {"tensor": 1}], {}, name=_unique_name("add"))
    return layer([inputs, branch])


def ConvNeXtBlock(projection_dim, drop_path_rate=0.0, layer_scale_init_value=1e-6,
                  name=None):
    """Depthwise 7x7 (a grouped Conv2D), LayerNorm, Dense 4x, GELU, Dense, layer scale,
    stochastic depth, residual sum."""
    if name is None:
        name = _unique_name("prestem")

    def apply(inputs):
        x = Conv2D(projection_dim, kernel_size=7, padding="same", groups=projection_dim,
                   name=f"{name}_depthwise_conv")(inputs)
        x = LayerNormalization(epsilon=1e-6, name=f"{name}_layernorm")(x)
        x = Dense(4 * projection_dim, name=f"{name}_pointwise_conv_1")(x)
        x = Activation("gelu", name=f"{name}_gelu")(x)
        x = Dense(projection_dim, name=f"{name}_pointwise_conv_2")(x)
        if layer_scale_init_value is not None:
            x = LayerScale(layer_scale_init_value, projection_dim,
                           name=f"{name}_layer_scale")(x)
        if drop_path_rate:
            layer = StochasticDepth(drop_path_rate, name=f"{name}_stochastic_depth")
        else:
            layer = Activation("linear", name=f"{name}_identity")
        return _residual_sum(inputs, layer(x))

    return apply


def PreStem(name=None):
    """ImageNet-1k mean and variance on the 0-255 scale, as a fixed Normalization."""
    if name is None:
        name = _unique_name("prestem")

    def apply(x):
        return Normalization(mean=[0.485 * 255, 0.456 * 255, 0.406 * 255],
                             variance=[(0.229 * 255) ** 2, (0.224 * 255) ** 2,
                                       (0.225 * 255) ** 2],
                             name=f"{name}_prestem_normalization")(x)

    return apply


def Head(num_classes=1000, classifier_activation=None, name=None):
    if name is None:
        name = _unique_name("head")

    def apply(x):
        x = GlobalAveragePooling2D(name=f"{name}_head_gap")(x)
        x = LayerNormalization(epsilon=1e-6, name=f"{name}_head_layernorm")(x)
        return Dense(num_classes, activation=classifier_activation,
                     name=f"{name}_head_dense")(x)

    return apply


def ConvNeXt(depths, projection_dims, drop_path_rate=0.0, layer_scale_init_value=1e-6,
             default_size=224, name="convnext", include_preprocessing=True, include_top=True,
             weights=None, input_tensor=None, input_shape=None, pooling=None, classes=1000,
             classifier_activation="softmax", weights_name=None):
    from pynn.models import Sequential

    rules.check_weights(weights, "ConvNeXt")
    input_shape = rules.obtain_input_shape(input_shape, default_size, 32, include_top)
    img_input = rules.image_input(input_tensor, input_shape)
    inputs = img_input if input_tensor is None else rules.source_inputs(input_tensor)[0]
    x = img_input

    if include_preprocessing and input_shape[2] == 3:
        x = PreStem(name=name)(x)

    stem = Sequential([Conv2D(projection_dims[0], kernel_size=4, strides=4,
                              name=f"{name}_stem_conv"),
                       LayerNormalization(epsilon=1e-6, name=f"{name}_stem_layernorm")],
                      name=f"{name}_stem")
    downsample_layers = [stem]
    for i in range(3):
        downsample_layers.append(Sequential(
            [LayerNormalization(epsilon=1e-6, name=f"{name}_downsampling_layernorm_{i}"),
             Conv2D(projection_dims[i + 1], kernel_size=2, strides=2,
                    name=f"{name}_downsampling_conv_{i}")],
            name=f"{name}_downsampling_block_{i}"))

    depth_drop_rates = [float(r) for r in np.linspace(0.0, drop_path_rate, sum(depths))]
    cur = 0
    for i in range(4):
        x = downsample_layers[i](x)
        for j in range(depths[i]):
            x = ConvNeXtBlock(projection_dim=projection_dims[i],
                              drop_path_rate=depth_drop_rates[cur + j],
                              layer_scale_init_value=layer_scale_init_value,
                              name=name + f"_stage_{i}_block_{j}")(x)
        cur += depths[i]

    if include_top:
        rules.validate_activation(classifier_activation, weights)
        x = Head(num_classes=classes, classifier_activation=classifier_activation,
                 name=name)(x)
    else:
        if pooling == "avg":
            x = GlobalAveragePooling2D()(x)
        elif pooling == "max":
            x = GlobalMaxPooling2D()(x)
        x = LayerNormalization(epsilon=1e-6)(x)
    return rules.finish(inputs, x, name, weights)


def _variant(size_name, public_name):
    config = MODEL_CONFIGS[size_name]

    def build(include_top=True, include_preprocessing=True, weights="imagenet",
              input_tensor=None, input_shape=None, pooling=None, classes=1000,
              classifier_activation="softmax", name=f"convnext_{size_name}"):
        return ConvNeXt(weights_name=f"convnext_{size_name}", depths=config["depths"],
                        projection_dims=config["projection_dims"], drop_path_rate=0.0,
                        layer_scale_init_value=1e-6, default_size=config["default_size"],
                        name=name, include_top=include_top,
                        include_preprocessing=include_preprocessing, weights=weights,
                        input_tensor=input_tensor, input_shape=input_shape, pooling=pooling,
                        classes=classes, classifier_activation=classifier_activation)

    build.__name__ = build.__qualname__ = public_name
    build.__doc__ = (f"Keras 3's {public_name} (depths {config['depths']}, widths "
                     f"{config['projection_dims']}); weights None or a file.")
    return build


ConvNeXtTiny = _variant("tiny", "ConvNeXtTiny")
ConvNeXtSmall = _variant("small", "ConvNeXtSmall")
ConvNeXtBase = _variant("base", "ConvNeXtBase")
ConvNeXtLarge = _variant("large", "ConvNeXtLarge")
ConvNeXtXLarge = _variant("xlarge", "ConvNeXtXLarge")


def preprocess_input(x, data_format=None):
    """The identity, as in Keras 3: ConvNeXt's preprocessing is inside the model."""
    return x


def decode_predictions(preds, top=5):
    from pynn.applications import imagenet_utils

    return imagenet_utils.decode_predictions(preds, top=top)
