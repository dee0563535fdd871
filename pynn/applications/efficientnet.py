"""EfficientNet B0-B7 (Tan & Le, 2019), as Keras 3 builds them
(keras/src/applications/efficientnet.py): the same layers, names and weight order, so
``model.set_weights(keras_model.get_weights())`` gives Keras's predictions.

The stem holds Keras's preprocessing: Rescaling(1/255) and an unadapted Normalization
(mean 0, variance 1 until weights are loaded). Keras adds a third, unnamed Rescaling
(1/sqrt(ImageNet stddev)) only for its ImageNet weights, which pynn does not download.
Stochastic depth is Dropout with noise_shape (None, 1, 1, 1): whole samples of a residual
branch are dropped in training.
"""

import copy
import math

from pynn.applications import _keras_rules as rules
from pynn.layers import (
    Activation, BatchNormalization, Conv2D, DepthwiseConv2D, Dense, Dropout,
    GlobalAveragePooling2D, GlobalMaxPooling2D, Normalization, Rescaling, Reshape,
    ZeroPadding2D, add, multiply,
)

# (kernel_size, repeats, filters_in, filters_out, expand_ratio, strides, se_ratio); every
# block of B0 has id_skip
_BLOCKS = (
    (3, 1, 32, 16, 1, 1, 0.25),
    (3, 2, 16, 24, 6, 2, 0.25),
    (5, 2, 24, 40, 6, 2, 0.25),
    (3, 3, 40, 80, 6, 2, 0.25),
    (5, 3, 80, 112, 6, 1, 0.25),
    (5, 4, 112, 192, 6, 2, 0.25),
    (3, 1, 192, 320, 6, 1, 0.25),
)
DEFAULT_BLOCKS_ARGS = [
    dict(kernel_size=k, repeats=r, filters_in=fi, filters_out=fo, expand_ratio=e,
         id_skip=True, strides=s, se_ratio=se)
    for k, r, fi, fo, e, s, se in _BLOCKS
]

# Keras's initializers, by config (pynn.initializers reads Keras's dicts)
CONV_KERNEL_INITIALIZER = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal"},
}
DENSE_KERNEL_INITIALIZER = {
    "class_name": "VarianceScaling",
    "config": {"scale": 1.0 / 3.0, "mode": "fan_out", "distribution": "uniform"},
}


def EfficientNet(width_coefficient, depth_coefficient, default_size, dropout_rate=0.2,
                 drop_connect_rate=0.2, depth_divisor=8, activation="swish",
                 blocks_args="default", name="efficientnet", include_top=True,
                 weights="imagenet", input_tensor=None, input_shape=None, pooling=None,
                 classes=1000, classifier_activation="softmax", weights_name=None):
    if blocks_args == "default":
        blocks_args = DEFAULT_BLOCKS_ARGS
    rules.check_weights(weights, "EfficientNet")
    input_shape = rules.obtain_input_shape(input_shape, default_size, 32, include_top)
    img_input = rules.image_input(input_tensor, input_shape)

    def round_filters(filters, divisor=depth_divisor):
        filters *= width_coefficient
        new_filters = max(divisor, int(filters + divisor / 2) // divisor * divisor)
        if new_filters < 0.9 * filters:  # never round down by more than 10%
            new_filters += divisor
        return int(new_filters)

    def round_repeats(repeats):
        return int(math.ceil(depth_coefficient * repeats))

    x = Rescaling(1.0 / 255.0)(img_input)
    x = Normalization(axis=3)(x)
    x = ZeroPadding2D(padding=rules.correct_pad(x, 3), name="stem_conv_pad")(x)
    x = Conv2D(round_filters(32), 3, strides=2, padding="valid", use_bias=False,
               kernel_initializer=CONV_KERNEL_INITIALIZER, name="stem_conv")(x)
    x = BatchNormalization(axis=3, name="stem_bn")(x)
    x = Activation(activation, name="stem_activation")(x)

    blocks_args = copy.deepcopy(blocks_args)
    b = 0
    blocks = float(sum(round_repeats(args["repeats"]) for args in blocks_args))
    for i, args in enumerate(blocks_args):
        if args["repeats"] <= 0:
            raise ValueError(f"The number of repeats in `EfficientNet` must be > 0. "
                             f"Received: repeats={args['repeats']}")
        args["filters_in"] = round_filters(args["filters_in"])
        args["filters_out"] = round_filters(args["filters_out"])
        for j in range(round_repeats(args.pop("repeats"))):
            if j > 0:  # only a stage's first block changes stride and width
                args["strides"] = 1
                args["filters_in"] = args["filters_out"]
            x = block(x, activation, drop_connect_rate * b / blocks,
                      name=f"block{i + 1}{chr(j + 97)}_", **args)
            b += 1

    x = Conv2D(round_filters(1280), 1, padding="same", use_bias=False,
               kernel_initializer=CONV_KERNEL_INITIALIZER, name="top_conv")(x)
    x = BatchNormalization(axis=3, name="top_bn")(x)
    x = Activation(activation, name="top_activation")(x)
    if include_top:
        x = GlobalAveragePooling2D(name="avg_pool")(x)
        if dropout_rate > 0:
            x = Dropout(dropout_rate, name="top_dropout")(x)
        rules.validate_activation(classifier_activation, weights)
        x = Dense(classes, activation=classifier_activation,
                  kernel_initializer=DENSE_KERNEL_INITIALIZER, name="predictions")(x)
    elif pooling == "avg":
        x = GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = GlobalMaxPooling2D(name="max_pool")(x)
    return rules.finish(rules.model_inputs(input_tensor, img_input), x, name, weights)


def block(inputs, activation="swish", drop_rate=0.0, name="", filters_in=32, filters_out=16,
          kernel_size=3, strides=1, expand_ratio=1, se_ratio=0.0, id_skip=True):
    """The inverted residual (MBConv) block: expand, depthwise, squeeze-excite, project."""
    filters = filters_in * expand_ratio
    if expand_ratio != 1:
        x = Conv2D(filters, 1, padding="same", use_bias=False,
                   kernel_initializer=CONV_KERNEL_INITIALIZER, name=f"{name}expand_conv")(inputs)
        x = BatchNormalization(axis=3, name=f"{name}expand_bn")(x)
        x = Activation(activation, name=f"{name}expand_activation")(x)
    else:
        x = inputs

    if strides == 2:  # TF's 'same' padding, explicit, before a 'valid' strided conv
        x = ZeroPadding2D(padding=rules.correct_pad(x, kernel_size),
                          name=f"{name}dwconv_pad")(x)
        conv_pad = "valid"
    else:
        conv_pad = "same"
    x = DepthwiseConv2D(kernel_size, strides=strides, padding=conv_pad, use_bias=False,
                        depthwise_initializer=CONV_KERNEL_INITIALIZER, name=f"{name}dwconv")(x)
    x = BatchNormalization(axis=3, name=f"{name}bn")(x)
    x = Activation(activation, name=f"{name}activation")(x)

    if 0 < se_ratio <= 1:
        filters_se = max(1, int(filters_in * se_ratio))
        se = GlobalAveragePooling2D(name=f"{name}se_squeeze")(x)
        se = Reshape((1, 1, filters), name=f"{name}se_reshape")(se)
        se = Conv2D(filters_se, 1, padding="same", activation=activation,
                    kernel_initializer=CONV_KERNEL_INITIALIZER, name=f"{name}se_reduce")(se)
        se = Conv2D(filters, 1, padding="same", activation="sigmoid",
                    kernel_initializer=CONV_KERNEL_INITIALIZER, name=f"{name}se_expand")(se)
        x = multiply([x, se], name=f"{name}se_excite")

    x = Conv2D(filters_out, 1, padding="same", use_bias=False,
               kernel_initializer=CONV_KERNEL_INITIALIZER, name=f"{name}project_conv")(x)
    x = BatchNormalization(axis=3, name=f"{name}project_bn")(x)
    if id_skip and strides == 1 and filters_in == filters_out:
        if drop_rate > 0:
            x = Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{name}drop")(x)
        x = add([x, inputs], name=f"{name}add")
    return x


def _variant(width, depth, size, dropout, default_name, weights_name):
    def build(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
              pooling=None, classes=1000, classifier_activation="softmax", name=default_name):
        return EfficientNet(width, depth, size, dropout, name=name, include_top=include_top,
                            weights=weights, input_tensor=input_tensor,
                            input_shape=input_shape, pooling=pooling, classes=classes,
                            classifier_activation=classifier_activation,
                            weights_name=weights_name)

    build.__name__ = build.__qualname__ = f"EfficientNet{weights_name.upper()}"
    build.__doc__ = (f"Keras 3's EfficientNet{weights_name.upper()} (width {width}, depth "
                     f"{depth}, default input {size}x{size}); weights None or a file.")
    return build


EfficientNetB0 = _variant(1.0, 1.0, 224, 0.2, "efficientnetb0", "b0")
EfficientNetB1 = _variant(1.0, 1.1, 240, 0.2, "efficientnetb1", "b1")
EfficientNetB2 = _variant(1.1, 1.2, 260, 0.3, "efficientnetb2", "b2")
EfficientNetB3 = _variant(1.2, 1.4, 300, 0.3, "efficientnetb3", "b3")
EfficientNetB4 = _variant(1.4, 1.8, 380, 0.4, "efficientnetb4", "b4")
EfficientNetB5 = _variant(1.6, 2.2, 456, 0.4, "efficientnetb5", "b5")
EfficientNetB6 = _variant(1.8, 2.6, 528, 0.5, "efficientnetb6", "b6")
EfficientNetB7 = _variant(2.0, 3.1, 600, 0.5, "efficientnetb7", "b7")


def preprocess_input(x, data_format=None):
    """The identity, as in Keras 3: EfficientNet's preprocessing is inside the model."""
    return x


def decode_predictions(preds, top=5):
    from pynn.applications import imagenet_utils

    return imagenet_utils.decode_predictions(preds, top=top)
