"""NASNet-A Mobile and Large (Zoph et al., 2018), as Keras 3 builds them
(keras/src/applications/nasnet.py): the same layers, names and weight order, including the
adjust block's shifted path (ZeroPadding2D ((0, 1), (0, 1)) then Cropping2D ((1, 0), (1, 0))
before a stride-2 1x1 average pool) and the explicit TF 'same' padding before each strided
separable conv. Keras refuses NASNetMobile on its torch backend (a bug of that backend);
pynn builds it."""

from pynn.applications import _keras_rules as rules
from pynn.layers import (
    Activation, AveragePooling2D, BatchNormalization, Conv2D, Cropping2D, Dense,
    GlobalAveragePooling2D, GlobalMaxPooling2D, MaxPooling2D, SeparableConv2D, ZeroPadding2D,
    add, concatenate,
)

_BN = dict(axis=-1, momentum=0.9997, epsilon=0.001)


def NASNet(input_shape=None, penultimate_filters=4032, num_blocks=6, stem_block_filters=96,
           skip_reduction=True, filter_multiplier=2, include_top=True, weights="imagenet",
           input_tensor=None, pooling=None, classes=1000, default_size=None,
           classifier_activation="softmax", name="NASNet"):
    rules.check_weights(weights, "NASNet")
    if default_size is None:
        default_size = 331
    input_shape = rules.obtain_input_shape(input_shape, default_size, 32, include_top)
    img_input = rules.image_input(input_tensor, input_shape)
    if penultimate_filters % (24 * (filter_multiplier**2)) != 0:
        raise ValueError("For NASNet-A models, the `penultimate_filters` must be a multiple "
                         "of 24 * (`filter_multiplier` ** 2). "
                         f"Current value: {penultimate_filters}")
    filters = penultimate_filters // 24

    x = Conv2D(stem_block_filters, (3, 3), strides=(2, 2), padding="valid", use_bias=False,
               name="stem_conv1", kernel_initializer="he_normal")(img_input)
    x = BatchNormalization(name="stem_bn1", **_BN)(x)

    p = None
    x, p = _reduction_a_cell(x, p, filters // (filter_multiplier**2), block_id="stem_1")
    x, p = _reduction_a_cell(x, p, filters // filter_multiplier, block_id="stem_2")
    for i in range(num_blocks):
        x, p = _normal_a_cell(x, p, filters, block_id=f"{i}")
    x, p0 = _reduction_a_cell(x, p, filters * filter_multiplier,
                              block_id=f"reduce_{num_blocks}")
    p = p0 if not skip_reduction else p
    for i in range(num_blocks):
        x, p = _normal_a_cell(x, p, filters * filter_multiplier,
                              block_id=f"{num_blocks + i + 1}")
    x, p0 = _reduction_a_cell(x, p, filters * filter_multiplier**2,
                              block_id=f"reduce_{2 * num_blocks}")
    p = p0 if not skip_reduction else p
    for i in range(num_blocks):
        x, p = _normal_a_cell(x, p, filters * filter_multiplier**2,
                              block_id=f"{2 * num_blocks + i + 1}")

    x = Activation("relu")(x)
    if include_top:
        x = GlobalAveragePooling2D()(x)
        rules.validate_activation(classifier_activation, weights)
        x = Dense(classes, activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = GlobalAveragePooling2D()(x)
    elif pooling == "max":
        x = GlobalMaxPooling2D()(x)
    return rules.finish(rules.model_inputs(input_tensor, img_input), x, name, weights)


def NASNetMobile(input_shape=None, include_top=True, weights="imagenet", input_tensor=None,
                 pooling=None, classes=1000, classifier_activation="softmax",
                 name="nasnet_mobile"):
    """Keras 3's NASNetMobile (default input 224x224, at least 32x32); weights None or a
    file."""
    if not include_top and input_shape is None:
        input_shape = (224, 224, 3)
    return NASNet(input_shape, penultimate_filters=1056, num_blocks=4, stem_block_filters=32,
                  skip_reduction=False, filter_multiplier=2, include_top=include_top,
                  weights=weights, input_tensor=input_tensor, pooling=pooling,
                  classes=classes, default_size=224,
                  classifier_activation=classifier_activation, name=name)


def NASNetLarge(input_shape=None, include_top=True, weights="imagenet", input_tensor=None,
                pooling=None, classes=1000, classifier_activation="softmax",
                name="nasnet_large"):
    """Keras 3's NASNetLarge (default input 331x331, at least 32x32); weights None or a
    file."""
    return NASNet(input_shape, penultimate_filters=4032, num_blocks=6, stem_block_filters=96,
                  skip_reduction=True, filter_multiplier=2, include_top=include_top,
                  weights=weights, input_tensor=input_tensor, pooling=pooling,
                  classes=classes, default_size=331,
                  classifier_activation=classifier_activation, name=name)


def _separable_conv_block(ip, filters, kernel_size=(3, 3), strides=(1, 1), block_id=None):
    """ReLU, separable conv (strided: after TF 'same' padding), BN, ReLU, separable conv,
    BN."""
    x = Activation("relu")(ip)
    if strides == (2, 2):
        x = ZeroPadding2D(padding=rules.correct_pad(x, kernel_size),
                          name=f"separable_conv_1_pad_{block_id}")(x)
        conv_pad = "valid"
    else:
        conv_pad = "same"
    x = SeparableConv2D(filters, kernel_size, strides=strides,
                        name=f"separable_conv_1_{block_id}", padding=conv_pad,
                        use_bias=False)(x)
    x = BatchNormalization(name=f"separable_conv_1_bn_{block_id}", **_BN)(x)
    x = Activation("relu")(x)
    x = SeparableConv2D(filters, kernel_size, name=f"separable_conv_2_{block_id}",
                        padding="same", use_bias=False)(x)
    return BatchNormalization(name=f"separable_conv_2_bn_{block_id}", **_BN)(x)


def _adjust_block(p, ip, filters, block_id=None):
    """Brings the previous cell's output ``p`` to ``ip``'s size and ``filters``."""
    if p is None:
        return ip
    if p.shape[-2] != ip.shape[-2]:
        p = Activation("relu", name=f"adjust_relu_1_{block_id}")(p)
        p1 = AveragePooling2D((1, 1), strides=(2, 2), padding="valid",
                              name=f"adjust_avg_pool_1_{block_id}")(p)
        p1 = Conv2D(filters // 2, (1, 1), padding="same", use_bias=False,
                    name=f"adjust_conv_1_{block_id}", kernel_initializer="he_normal")(p1)
        # the other half samples the odd pixels: shift by one, then pool with stride 2
        p2 = ZeroPadding2D(padding=((0, 1), (0, 1)))(p)
        p2 = Cropping2D(cropping=((1, 0), (1, 0)))(p2)
        p2 = AveragePooling2D((1, 1), strides=(2, 2), padding="valid",
                              name=f"adjust_avg_pool_2_{block_id}")(p2)
        p2 = Conv2D(filters // 2, (1, 1), padding="same", use_bias=False,
                    name=f"adjust_conv_2_{block_id}", kernel_initializer="he_normal")(p2)
        p = concatenate([p1, p2], axis=-1)
        return BatchNormalization(name=f"adjust_bn_{block_id}", **_BN)(p)
    if p.shape[-1] != filters:
        p = Activation("relu")(p)
        p = Conv2D(filters, (1, 1), strides=(1, 1), padding="same",
                   name=f"adjust_conv_projection_{block_id}", use_bias=False,
                   kernel_initializer="he_normal")(p)
        return BatchNormalization(name=f"adjust_bn_{block_id}", **_BN)(p)
    return p


def _normal_a_cell(ip, p, filters, block_id=None):
    p = _adjust_block(p, ip, filters, block_id)
    h = Activation("relu")(ip)
    h = Conv2D(filters, (1, 1), strides=(1, 1), padding="same", name=f"normal_conv_1_{block_id}",
               use_bias=False, kernel_initializer="he_normal")(h)
    h = BatchNormalization(name=f"normal_bn_1_{block_id}", **_BN)(h)

    x1_1 = _separable_conv_block(h, filters, kernel_size=(5, 5),
                                 block_id=f"normal_left1_{block_id}")
    x1_2 = _separable_conv_block(p, filters, block_id=f"normal_right1_{block_id}")
    x1 = add([x1_1, x1_2], name=f"normal_add_1_{block_id}")

    x2_1 = _separable_conv_block(p, filters, (5, 5), block_id=f"normal_left2_{block_id}")
    x2_2 = _separable_conv_block(p, filters, (3, 3), block_id=f"normal_right2_{block_id}")
    x2 = add([x2_1, x2_2], name=f"normal_add_2_{block_id}")

    x3 = AveragePooling2D((3, 3), strides=(1, 1), padding="same",
                          name=f"normal_left3_{block_id}")(h)
    x3 = add([x3, p], name=f"normal_add_3_{block_id}")

    x4_1 = AveragePooling2D((3, 3), strides=(1, 1), padding="same",
                            name=f"normal_left4_{block_id}")(p)
    x4_2 = AveragePooling2D((3, 3), strides=(1, 1), padding="same",
                            name=f"normal_right4_{block_id}")(p)
    x4 = add([x4_1, x4_2], name=f"normal_add_4_{block_id}")

    x5 = _separable_conv_block(h, filters, block_id=f"normal_left5_{block_id}")
    x5 = add([x5, h], name=f"normal_add_5_{block_id}")

    x = concatenate([p, x1, x2, x3, x4, x5], axis=-1, name=f"normal_concat_{block_id}")
    return x, ip


def _reduction_a_cell(ip, p, filters, block_id=None):
    p = _adjust_block(p, ip, filters, block_id)
    h = Activation("relu")(ip)
    h = Conv2D(filters, (1, 1), strides=(1, 1), padding="same",
               name=f"reduction_conv_1_{block_id}", use_bias=False,
               kernel_initializer="he_normal")(h)
    h = BatchNormalization(name=f"reduction_bn_1_{block_id}", **_BN)(h)
    h3 = ZeroPadding2D(padding=rules.correct_pad(h, 3),
                       name=f"reduction_pad_1_{block_id}")(h)

    x1_1 = _separable_conv_block(h, filters, (5, 5), strides=(2, 2),
                                 block_id=f"reduction_left1_{block_id}")
    x1_2 = _separable_conv_block(p, filters, (7, 7), strides=(2, 2),
                                 block_id=f"reduction_right1_{block_id}")
    x1 = add([x1_1, x1_2], name=f"reduction_add_1_{block_id}")

    x2_1 = MaxPooling2D((3, 3), strides=(2, 2), padding="valid",
                        name=f"reduction_left2_{block_id}")(h3)
    x2_2 = _separable_conv_block(p, filters, (7, 7), strides=(2, 2),
                                 block_id=f"reduction_right2_{block_id}")
    x2 = add([x2_1, x2_2], name=f"reduction_add_2_{block_id}")

    x3_1 = AveragePooling2D((3, 3), strides=(2, 2), padding="valid",
                            name=f"reduction_left3_{block_id}")(h3)
    x3_2 = _separable_conv_block(p, filters, (5, 5), strides=(2, 2),
                                 block_id=f"reduction_right3_{block_id}")
    x3 = add([x3_1, x3_2], name=f"reduction_add3_{block_id}")

    x4 = AveragePooling2D((3, 3), strides=(1, 1), padding="same",
                          name=f"reduction_left4_{block_id}")(x1)
    x4 = add([x2, x4])

    x5_1 = _separable_conv_block(x1, filters, (3, 3), block_id=f"reduction_left4_{block_id}")
    x5_2 = MaxPooling2D((3, 3), strides=(2, 2), padding="valid",
                        name=f"reduction_right5_{block_id}")(h3)
    x5 = add([x5_1, x5_2], name=f"reduction_add4_{block_id}")

    x = concatenate([x2, x3, x4, x5], axis=-1, name=f"reduction_concat_{block_id}")
    return x, ip


def preprocess_input(x, data_format=None):
    """Keras's 'tf' mode: pixels in [0, 255] to [-1, 1]."""
    from pynn.applications import imagenet_utils

    return imagenet_utils.preprocess_input(x, data_format=data_format, mode="tf")


def decode_predictions(preds, top=5):
    from pynn.applications import imagenet_utils

    return imagenet_utils.decode_predictions(preds, top=top)
