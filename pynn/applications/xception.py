"""Xception (Chollet, 2017), as Keras 3 builds it (keras/src/applications/xception.py): the
same layers, names and weight order. The strided residual projections keep Keras's
automatic names (conv2d_N, batch_normalization_N, add_N)."""

from pynn.applications import _keras_rules as rules
from pynn.layers import (
    Activation, BatchNormalization, Conv2D, Dense, GlobalAveragePooling2D, GlobalMaxPooling2D,
    MaxPooling2D, SeparableConv2D, add,
)


def _projection(x, filters):
    residual = Conv2D(filters, (1, 1), strides=(2, 2), padding="same", use_bias=False)(x)
    return BatchNormalization(axis=-1)(residual)


def _sepconv_bn(x, filters, name):
    x = SeparableConv2D(filters, (3, 3), padding="same", use_bias=False, name=name)(x)
    return BatchNormalization(axis=-1, name=f"{name}_bn")(x)


def _entry_block(x, filters, prefix, first_relu=True, second_filters=None):
    """Two separable convs, a strided max pool, plus the strided 1x1 projection of x."""
    residual = _projection(x, 1024 if second_filters else filters)
    if first_relu:
        x = Activation("relu", name=f"{prefix}_sepconv1_act")(x)
    x = _sepconv_bn(x, filters, f"{prefix}_sepconv1")
    x = Activation("relu", name=f"{prefix}_sepconv2_act")(x)
    x = _sepconv_bn(x, second_filters or filters, f"{prefix}_sepconv2")
    x = MaxPooling2D((3, 3), strides=(2, 2), padding="same", name=f"{prefix}_pool")(x)
    return add([x, residual])


def Xception(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
             pooling=None, classes=1000, classifier_activation="softmax", name="xception"):
    """Keras 3's Xception (default input 299x299, at least 71x71); weights None or a
    file."""
    rules.check_weights(weights, "Xception",
                        rules.WEIGHTS_MESSAGE.replace("`imagenet`", "'imagenet'"))
    input_shape = rules.obtain_input_shape(input_shape, 299, 71, include_top)
    img_input = rules.image_input(input_tensor, input_shape)

    x = Conv2D(32, (3, 3), strides=(2, 2), use_bias=False, name="block1_conv1")(img_input)
    x = BatchNormalization(axis=-1, name="block1_conv1_bn")(x)
    x = Activation("relu", name="block1_conv1_act")(x)
    x = Conv2D(64, (3, 3), use_bias=False, name="block1_conv2")(x)
    x = BatchNormalization(axis=-1, name="block1_conv2_bn")(x)
    x = Activation("relu", name="block1_conv2_act")(x)

    # block 2 has no ReLU before its first separable conv; Keras names the one between its
    # convs block2_sepconv2_act
    x = _entry_block(x, 128, "block2", first_relu=False)
    x = _entry_block(x, 256, "block3")
    x = _entry_block(x, 728, "block4")

    for i in range(8):
        residual = x
        prefix = f"block{i + 5}"
        for k in (1, 2, 3):
            x = Activation("relu", name=f"{prefix}_sepconv{k}_act")(x)
            x = _sepconv_bn(x, 728, f"{prefix}_sepconv{k}")
        x = add([x, residual])

    x = _entry_block(x, 728, "block13", second_filters=1024)

    x = _sepconv_bn(x, 1536, "block14_sepconv1")
    x = Activation("relu", name="block14_sepconv1_act")(x)
    x = _sepconv_bn(x, 2048, "block14_sepconv2")
    x = Activation("relu", name="block14_sepconv2_act")(x)

    if include_top:
        x = GlobalAveragePooling2D(name="avg_pool")(x)
        rules.validate_activation(classifier_activation, weights)
        x = Dense(classes, activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = GlobalAveragePooling2D()(x)
    elif pooling == "max":
        x = GlobalMaxPooling2D()(x)
    return rules.finish(rules.model_inputs(input_tensor, img_input), x, name, weights)


def preprocess_input(x, data_format=None):
    """Keras's 'tf' mode: pixels in [0, 255] to [-1, 1]."""
    from pynn.applications import imagenet_utils

    return imagenet_utils.preprocess_input(x, data_format=data_format, mode="tf")


def decode_predictions(preds, top=5):
    from pynn.applications import imagenet_utils

    return imagenet_utils.decode_predictions(preds, top=top)
