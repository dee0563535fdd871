"""MobileNetV2 (Sandler et al. 2018) as Keras 3 builds it, with Keras's layer names and
weight layouts: inverted residual blocks, ``alpha`` the width multiplier."""

from pynn.applications import imagenet_utils
from pynn.layers import (
    Add, BatchNormalization, Conv2D, DepthwiseConv2D, Dense, GlobalAveragePooling2D,
    GlobalMaxPooling2D, ReLU, ZeroPadding2D,
)

PRETRAINED_SIZES = (96, 128, 160, 192, 224)
# (filters, stride, expansion) of the seventeen inverted residual blocks
BLOCKS = ((16, 1, 1), (24, 2, 6), (24, 1, 6), (32, 2, 6), (32, 1, 6), (32, 1, 6),
          (64, 2, 6), (64, 1, 6), (64, 1, 6), (64, 1, 6), (96, 1, 6), (96, 1, 6), (96, 1, 6),
          (160, 2, 6), (160, 1, 6), (160, 1, 6), (320, 1, 6))
# MobileNetV2's BatchNormalization (TensorFlow's slim defaults), not Keras's 0.99
BN_ARGS = {"axis": -1, "epsilon": 1e-3, "momentum": 0.999}


def _make_divisible(v, divisor, min_value=None):
    """``v`` rounded to a multiple of ``divisor``, never more than 10% below ``v``."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _inverted_res_block(inputs, expansion, stride, alpha, filters, block_id):
    """1x1 expansion (not in block 0), 3x3 depthwise, 1x1 linear projection; added to the
    input where the shapes allow."""
    in_channels = inputs.shape[-1]
    pointwise_filters = _make_divisible(int(filters * alpha), 8)
    x = inputs
    prefix = f"block_{block_id}_"
    if block_id:
        x = Conv2D(expansion * in_channels, kernel_size=1, padding="same", use_bias=False,
                   activation=None, name=f"{prefix}expand")(x)
        x = BatchNormalization(**BN_ARGS, name=f"{prefix}expand_BN")(x)
        x = ReLU(6.0, name=f"{prefix}expand_relu")(x)
    else:
        prefix = "expanded_conv_"
    if stride == 2:
        x = ZeroPadding2D(padding=imagenet_utils.correct_pad(x, 3), name=f"{prefix}pad")(x)
    x = DepthwiseConv2D(kernel_size=3, strides=stride, activation=None, use_bias=False,
                        padding="same" if stride == 1 else "valid",
                        name=f"{prefix}depthwise")(x)
    x = BatchNormalization(**BN_ARGS, name=f"{prefix}depthwise_BN")(x)
    x = ReLU(6.0, name=f"{prefix}depthwise_relu")(x)
    x = Conv2D(pointwise_filters, kernel_size=1, padding="same", use_bias=False,
               activation=None, name=f"{prefix}project")(x)
    x = BatchNormalization(**BN_ARGS, name=f"{prefix}project_BN")(x)
    if in_channels == pointwise_filters and stride == 1:
        return Add(name=f"{prefix}add")([inputs, x])
    return x


def MobileNetV2(input_shape=None, alpha=1.0, include_top=True, weights="imagenet",
                input_tensor=None, pooling=None, classes=1000,
                classifier_activation="softmax", name=None):
    """MobileNetV2: Keras 3's arguments; ``weights`` None or a weights file's path. The
    default name is Keras's ``mobilenetv2_{alpha:.2f}_{rows}``."""
    imagenet_utils.check_weights(weights, include_top, classes)
    imagenet_utils.check_pooling(pooling)
    if input_shape is not None and input_tensor is not None:
        imagenet_utils.model_input(input_tensor, input_shape)
        if input_tensor.shape[2] != input_shape[1]:
            raise ValueError("input_tensor.shape[2] must equal input_shape[1]; Received "
                             f"`input_tensor.shape={input_tensor.shape}`, "
                             f"`input_shape={input_shape}`")
    size_from = input_shape
    if input_shape is None and input_tensor is not None:
        imagenet_utils.model_input(input_tensor, None)
        size_from = input_tensor.shape[1:3]
    default_size = 224
    if size_from is not None and size_from[0] == size_from[1] and \
            size_from[0] in PRETRAINED_SIZES:
        default_size = size_from[0]
    input_shape = imagenet_utils.obtain_input_shape(
        input_shape, default_size=default_size, min_size=32, data_format="channels_last",
        require_flatten=include_top, weights=weights)
    rows = input_shape[0]
    img_input = imagenet_utils.model_input(input_tensor, input_shape)

    x = Conv2D(_make_divisible(32 * alpha, 8), kernel_size=3, strides=(2, 2), padding="same",
               use_bias=False, name="Conv1")(img_input)
    x = BatchNormalization(**BN_ARGS, name="bn_Conv1")(x)
    x = ReLU(6.0, name="Conv1_relu")(x)
    for block_id, (filters, stride, expansion) in enumerate(BLOCKS):
        x = _inverted_res_block(x, filters=filters, alpha=alpha, stride=stride,
                                expansion=expansion, block_id=block_id)
    last_block_filters = _make_divisible(1280 * alpha, 8) if alpha > 1.0 else 1280
    x = Conv2D(last_block_filters, kernel_size=1, use_bias=False, name="Conv_1")(x)
    x = BatchNormalization(**BN_ARGS, name="Conv_1_bn")(x)
    x = ReLU(6.0, name="out_relu")(x)
    if include_top:
        x = GlobalAveragePooling2D()(x)
        imagenet_utils.validate_activation(classifier_activation, weights)
        x = Dense(classes, activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = GlobalAveragePooling2D()(x)
    elif pooling == "max":
        x = GlobalMaxPooling2D()(x)
    if name is None:
        name = f"mobilenetv2_{alpha:0.2f}_{rows}"
    return imagenet_utils.make_model(img_input, input_tensor, x, name, weights)


def preprocess_input(x, data_format=None):
    """Keras's MobileNetV2 preprocessing: tf (scaled to [-1, 1])."""
    return imagenet_utils.preprocess_input(x, data_format=data_format, mode="tf")


def decode_predictions(preds, top=5, class_index_path=None):
    """ImageNet's top classes per sample (see imagenet_utils.decode_predictions)."""
    return imagenet_utils.decode_predictions(preds, top=top, class_index_path=class_index_path)
