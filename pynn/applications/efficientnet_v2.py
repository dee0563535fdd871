"""EfficientNetV2 B0-B3, S, M, L (Tan & Le, 2021), as Keras 3 builds them
(keras/src/applications/efficientnet_v2.py): the same layers, names and weight order.

With ``include_preprocessing`` the B variants start with Rescaling(1/255) and a fixed
ImageNet Normalization, S/M/L with Rescaling(1/128, offset=-1). Keras's stochastic depth
here is Dropout(survival_probability, noise_shape=(None, 1, 1, 1)): the rate it passes is
the schedule's value, growing with depth, as written in Keras.
"""

import copy
import math

from pynn.applications import _keras_rules as rules
from pynn.applications.efficientnet import CONV_KERNEL_INITIALIZER, DENSE_KERNEL_INITIALIZER
from pynn.layers import (
    Activation, BatchNormalization, Conv2D, DepthwiseConv2D, Dense, Dropout,
    GlobalAveragePooling2D, GlobalMaxPooling2D, Normalization, Rescaling, Reshape, add,
    multiply,
)

_KEYS = ("kernel_size", "num_repeat", "input_filters", "output_filters", "expand_ratio",
         "se_ratio", "strides", "conv_type")
# conv_type 1 is the fused block (one full conv instead of expand + depthwise)
_B_BLOCKS = ((3, 1, 32, 16, 1, 0, 1, 1), (3, 2, 16, 32, 4, 0, 2, 1), (3, 2, 32, 48, 4, 0, 2, 1),
             (3, 3, 48, 96, 4, 0.25, 2, 0), (3, 5, 96, 112, 6, 0.25, 1, 0),
             (3, 8, 112, 192, 6, 0.25, 2, 0))
_TABLES = {
    "efficientnetv2-s": ((3, 2, 24, 24, 1, 0.0, 1, 1), (3, 4, 24, 48, 4, 0.0, 2, 1),
                         (3, 4, 48, 64, 4, 0, 2, 1), (3, 6, 64, 128, 4, 0.25, 2, 0),
                         (3, 9, 128, 160, 6, 0.25, 1, 0), (3, 15, 160, 256, 6, 0.25, 2, 0)),
    "efficientnetv2-m": ((3, 3, 24, 24, 1, 0, 1, 1), (3, 5, 24, 48, 4, 0, 2, 1),
                         (3, 5, 48, 80, 4, 0, 2, 1), (3, 7, 80, 160, 4, 0.25, 2, 0),
                         (3, 14, 160, 176, 6, 0.25, 1, 0), (3, 18, 176, 304, 6, 0.25, 2, 0),
                         (3, 5, 304, 512, 6, 0.25, 1, 0)),
    "efficientnetv2-l": ((3, 4, 32, 32, 1, 0, 1, 1), (3, 7, 32, 64, 4, 0, 2, 1),
                         (3, 7, 64, 96, 4, 0, 2, 1), (3, 10, 96, 192, 4, 0.25, 2, 0),
                         (3, 19, 192, 224, 6, 0.25, 1, 0), (3, 25, 224, 384, 6, 0.25, 2, 0),
                         (3, 7, 384, 640, 6, 0.25, 1, 0)),
    **{f"efficientnetv2-b{i}": _B_BLOCKS for i in range(4)},
}
DEFAULT_BLOCKS_ARGS = {name: [dict(zip(_KEYS, row)) for row in rows]
                       for name, rows in _TABLES.items()}


def round_filters(filters, width_coefficient, min_depth, depth_divisor):
    filters *= width_coefficient
    minimum_depth = min_depth or depth_divisor
    new_filters = max(minimum_depth,
                      int(filters + depth_divisor / 2) // depth_divisor * depth_divisor)
    return int(new_filters)


def round_repeats(repeats, depth_coefficient):
    return int(math.ceil(depth_coefficient * repeats))


def _squeeze_excite(x, name, input_filters, filters, se_ratio, activation):
    filters_se = max(1, int(input_filters * se_ratio))
    se = GlobalAveragePooling2D(name=f"{name}se_squeeze")(x)
    se = Reshape((1, 1, filters), name=f"{name}se_reshape")(se)
    se = Conv2D(filters_se, 1, padding="same", activation=activation,
                kernel_initializer=CONV_KERNEL_INITIALIZER, name=f"{name}se_reduce")(se)
    se = Conv2D(filters, 1, padding="same", activation="sigmoid",
                kernel_initializer=CONV_KERNEL_INITIALIZER, name=f"{name}se_expand")(se)
    return multiply([x, se], name=f"{name}se_excite")


def _residual(x, inputs, name, survival_probability):
    if survival_probability:
        x = Dropout(survival_probability, noise_shape=(None, 1, 1, 1), name=f"{name}drop")(x)
    return add([x, inputs], name=f"{name}add")


def MBConvBlock(input_filters, output_filters, expand_ratio=1, kernel_size=3, strides=1,
                se_ratio=0.0, bn_momentum=0.9, activation="swish", survival_probability=0.8,
                name=None):
    """Expand (1x1), depthwise, squeeze-excite, project (1x1)."""

    def apply(inputs):
        filters = input_filters * expand_ratio
        if expand_ratio != 1:
            x = Conv2D(filters, 1, strides=1, kernel_initializer=CONV_KERNEL_INITIALIZER,
                       padding="same", use_bias=False, name=f"{name}expand_conv")(inputs)
            x = BatchNormalization(axis=3, momentum=bn_momentum, name=f"{name}expand_bn")(x)
            x = Activation(activation, name=f"{name}expand_activation")(x)
        else:
            x = inputs
        x = DepthwiseConv2D(kernel_size, strides=strides,
                            depthwise_initializer=CONV_KERNEL_INITIALIZER, padding="same",
                            use_bias=False, name=f"{name}dwconv2")(x)
        x = BatchNormalization(axis=3, momentum=bn_momentum, name=f"{name}bn")(x)
        x = Activation(activation, name=f"{name}activation")(x)
        if 0 < se_ratio <= 1:
            x = _squeeze_excite(x, name, input_filters, filters, se_ratio, activation)
        x = Conv2D(output_filters, 1, strides=1, kernel_initializer=CONV_KERNEL_INITIALIZER,
                   padding="same", use_bias=False, name=f"{name}project_conv")(x)
        x = BatchNormalization(axis=3, momentum=bn_momentum, name=f"{name}project_bn")(x)
        if strides == 1 and input_filters == output_filters:
            x = _residual(x, inputs, name, survival_probability)
        return x

    return apply


def FusedMBConvBlock(input_filters, output_filters, expand_ratio=1, kernel_size=3, strides=1,
                     se_ratio=0.0, bn_momentum=0.9, activation="swish",
                     survival_probability=0.8, name=None):
    """One full kxk conv in place of expand + depthwise, then the 1x1 projection."""

    def apply(inputs):
        filters = input_filters * expand_ratio
        if expand_ratio != 1:
            x = Conv2D(filters, kernel_size, strides=strides,
                       kernel_initializer=CONV_KERNEL_INITIALIZER, padding="same",
                       use_bias=False, name=f"{name}expand_conv")(inputs)
            x = BatchNormalization(axis=3, momentum=bn_momentum, name=f"{name}expand_bn")(x)
            x = Activation(activation, name=f"{name}expand_activation")(x)
        else:
            x = inputs
        if 0 < se_ratio <= 1:
            x = _squeeze_excite(x, name, input_filters, filters, se_ratio, activation)
        expanded = expand_ratio != 1
        x = Conv2D(output_filters, 1 if expanded else kernel_size,
                   strides=1 if expanded else strides, kernel_initializer=CONV_KERNEL_INITIALIZER,
                   padding="same", use_bias=False, name=f"{name}project_conv")(x)
        x = BatchNormalization(axis=3, momentum=bn_momentum, name=f"{name}project_bn")(x)
        if not expanded:
            x = Activation(activation, name=f"{name}project_activation")(x)
        if strides == 1 and input_filters == output_filters:
            x = _residual(x, inputs, name, survival_probability)
        return x

    return apply


def EfficientNetV2(width_coefficient, depth_coefficient, default_size, dropout_rate=0.2,
                   drop_connect_rate=0.2, depth_divisor=8, min_depth=8, bn_momentum=0.9,
                   activation="swish", blocks_args="default", name="efficientnetv2",
                   include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
                   pooling=None, classes=1000, classifier_activation="softmax",
                   include_preprocessing=True, weights_name=None):
    if blocks_args == "default":
        # Keras looks the table up by the model's name (a custom name has none)
        if name not in DEFAULT_BLOCKS_ARGS:
            raise KeyError(name)
        blocks_args = DEFAULT_BLOCKS_ARGS[name]
    rules.check_weights(weights, "EfficientNetV2",
                        rules.WEIGHTS_MESSAGE + "Received: weights={weights}")
    input_shape = rules.obtain_input_shape(input_shape, default_size, 32, include_top)
    img_input = rules.image_input(input_tensor, input_shape)

    x = img_input
    if include_preprocessing:
        num_channels = input_shape[2]
        if name.split("-")[-1].startswith("b") and num_channels == 3:
            x = Rescaling(scale=1.0 / 255)(x)
            x = Normalization(mean=[0.485, 0.456, 0.406],
                              variance=[0.229**2, 0.224**2, 0.225**2], axis=3)(x)
        else:
            x = Rescaling(scale=1.0 / 128.0, offset=-1)(x)

    def rounded(filters):
        return round_filters(filters, width_coefficient, min_depth, depth_divisor)

    x = Conv2D(rounded(blocks_args[0]["input_filters"]), 3, strides=2,
               kernel_initializer=CONV_KERNEL_INITIALIZER, padding="same", use_bias=False,
               name="stem_conv")(x)
    x = BatchNormalization(axis=3, momentum=bn_momentum, name="stem_bn")(x)
    x = Activation(activation, name="stem_activation")(x)

    blocks_args = copy.deepcopy(blocks_args)
    b = 0
    blocks = float(sum(args["num_repeat"] for args in blocks_args))
    for i, args in enumerate(blocks_args):
        if args["num_repeat"] <= 0:
            raise ValueError(f"The number of repeats in `EfficientNetV2` must be > 0. "
                             f"Received: num_repeat={args['num_repeat']}")
        args["input_filters"] = rounded(args["input_filters"])
        args["output_filters"] = rounded(args["output_filters"])
        block = (MBConvBlock, FusedMBConvBlock)[args.pop("conv_type")]
        for j in range(round_repeats(args.pop("num_repeat"), depth_coefficient)):
            if j > 0:
                args["strides"] = 1
                args["input_filters"] = args["output_filters"]
            x = block(activation=activation, bn_momentum=bn_momentum,
                      survival_probability=drop_connect_rate * b / blocks,
                      name=f"block{i + 1}{chr(j + 97)}_", **args)(x)
            b += 1

    x = Conv2D(rounded(1280), 1, strides=1, kernel_initializer=CONV_KERNEL_INITIALIZER,
               padding="same", use_bias=False, name="top_conv")(x)
    x = BatchNormalization(axis=3, momentum=bn_momentum, name="top_bn")(x)
    x = Activation(activation, name="top_activation")(x)
    if include_top:
        x = GlobalAveragePooling2D(name="avg_pool")(x)
        if dropout_rate > 0:
            x = Dropout(dropout_rate, name="top_dropout")(x)
        rules.validate_activation(classifier_activation, weights)
        x = Dense(classes, activation=classifier_activation,
                  kernel_initializer=DENSE_KERNEL_INITIALIZER, bias_initializer="zeros",
                  name="predictions")(x)
    elif pooling == "avg":
        x = GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = GlobalMaxPooling2D(name="max_pool")(x)
    return rules.finish(rules.model_inputs(input_tensor, img_input), x, name, weights)


def _variant(width, depth, size, default_name, public_name):
    def build(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
              pooling=None, classes=1000, classifier_activation="softmax",
              include_preprocessing=True, name=default_name):
        return EfficientNetV2(width_coefficient=width, depth_coefficient=depth,
                              default_size=size, name=name, include_top=include_top,
                              weights=weights, input_tensor=input_tensor,
                              input_shape=input_shape, pooling=pooling, classes=classes,
                              classifier_activation=classifier_activation,
                              include_preprocessing=include_preprocessing,
                              weights_name=default_name.split("efficientnetv2")[-1])

    build.__name__ = build.__qualname__ = public_name
    build.__doc__ = (f"Keras 3's {public_name} (width {width}, depth {depth}, default input "
                     f"{size}x{size}); weights None or a file.")
    return build


EfficientNetV2B0 = _variant(1.0, 1.0, 224, "efficientnetv2-b0", "EfficientNetV2B0")
EfficientNetV2B1 = _variant(1.0, 1.1, 240, "efficientnetv2-b1", "EfficientNetV2B1")
EfficientNetV2B2 = _variant(1.1, 1.2, 260, "efficientnetv2-b2", "EfficientNetV2B2")
EfficientNetV2B3 = _variant(1.2, 1.4, 300, "efficientnetv2-b3", "EfficientNetV2B3")
EfficientNetV2S = _variant(1.0, 1.0, 384, "efficientnetv2-s", "EfficientNetV2S")
EfficientNetV2M = _variant(1.0, 1.0, 480, "efficientnetv2-m", "EfficientNetV2M")
EfficientNetV2L = _variant(1.0, 1.0, 480, "efficientnetv2-l", "EfficientNetV2L")


def preprocess_input(x, data_format=None):
    """The identity, as in Keras 3: the preprocessing is inside the model."""
    return x


def decode_predictions(preds, top=5):
    from pynn.applications import imagenet_utils

    return imagenet_utils.decode_predictions(preds, top=top)
