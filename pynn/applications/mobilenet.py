"""MobileNet v1 (Howard et al. 2017) as Keras 3 builds it, with Keras's layer names and
weight layouts: ``alpha`` scales every layer's filters, ``depth_multiplier`` the depthwise
convolutions' channels."""

from pynn.applications import imagenet_utils
from pynn.layers import (
    Activation, BatchNormalization, Conv2D, DepthwiseConv2D, Dropout, GlobalAveragePooling2D,
    GlobalMaxPooling2D, ReLU, Reshape, ZeroPadding2D,
)

# the input sizes Keras's pretrained MobileNets were trained at
PRETRAINED_SIZES = (128, 160, 192, 224)
# (pointwise filters, strides) of the thirteen depthwise-separable blocks
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
          (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


def _conv_block(inputs, filters, alpha, kernel=(3, 3), strides=(1, 1)):
    filters = int(filters * alpha)
    x = Conv2D(filters, kernel, padding="same", use_bias=False, strides=strides,
               name="conv1")(inputs)
    x = BatchNormalization(axis=-1, name="conv1_bn")(x)
    return ReLU(6.0, name="conv1_relu")(x)


def _depthwise_conv_block(inputs, pointwise_conv_filters, alpha, depth_multiplier=1,
                          strides=(1, 1), block_id=1):
    """3x3 depthwise (strided ones padded bottom/right and 'valid', as TensorFlow's 'same'),
    BN, relu6, 1x1 pointwise, BN, relu6."""
    pointwise_conv_filters = int(pointwise_conv_filters * alpha)
    if strides == (1, 1):
        x = inputs
    else:
        x = ZeroPadding2D(((0, 1), (0, 1)), name=f"conv_pad_{block_id}")(inputs)
    x = DepthwiseConv2D((3, 3), padding="same" if strides == (1, 1) else "valid",
                        depth_multiplier=depth_multiplier, strides=strides, use_bias=False,
                        name=f"conv_dw_{block_id}")(x)
    x = BatchNormalization(axis=-1, name=f"conv_dw_{block_id}_bn")(x)
    x = ReLU(6.0, name=f"conv_dw_{block_id}_relu")(x)
    x = Conv2D(pointwise_conv_filters, (1, 1), padding="same", use_bias=False, strides=(1, 1),
               name=f"conv_pw_{block_id}")(x)
    x = BatchNormalization(axis=-1, name=f"conv_pw_{block_id}_bn")(x)
    return ReLU(6.0, name=f"conv_pw_{block_id}_relu")(x)


def MobileNet(input_shape=None, alpha=1.0, depth_multiplier=1, dropout=0.001,
              include_top=True, weights="imagenet", input_tensor=None, pooling=None,
              classes=1000, classifier_activation="softmax", name=None):
    """MobileNet: Keras 3's arguments; ``weights`` None or a weights file's path. The
    default name is Keras's ``mobilenet_{alpha:.2f}_{rows}``."""
    imagenet_utils.check_weights(weights, include_top, classes)
    imagenet_utils.check_pooling(pooling)
    default_size = 224
    if input_shape is not None and input_shape[0] == input_shape[1] and \
            input_shape[0] in PRETRAINED_SIZES:
        default_size = input_shape[0]
    input_shape = imagenet_utils.obtain_input_shape(
        input_shape, default_size=default_size, min_size=32, data_format="channels_last",
        require_flatten=include_top, weights=weights)
    rows = input_shape[0]
    img_input = imagenet_utils.model_input(input_tensor, input_shape)

    x = _conv_block(img_input, 32, alpha, strides=(2, 2))
    for block_id, (filters, stride) in enumerate(BLOCKS, start=1):
        x = _depthwise_conv_block(x, filters, alpha, depth_multiplier,
                                  strides=(stride, stride), block_id=block_id)
    if include_top:
        x = GlobalAveragePooling2D(keepdims=True)(x)
        x = Dropout(dropout, name="dropout")(x)
        x = Conv2D(classes, (1, 1), padding="same", name="conv_preds")(x)
        x = Reshape((classes,), name="reshape_2")(x)
        imagenet_utils.validate_activation(classifier_activation, weights)
        x = Activation(activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = GlobalAveragePooling2D()(x)
    elif pooling == "max":
        x = GlobalMaxPooling2D()(x)
    if name is None:
        name = f"mobilenet_{alpha:0.2f}_{rows}"
    return imagenet_utils.make_model(img_input, input_tensor, x, name, weights)


def preprocess_input(x, data_format=None):
    """Keras's MobileNet preprocessing: tf (scaled to [-1, 1])."""
    return imagenet_utils.preprocess_input(x, data_format=data_format, mode="tf")


def decode_predictions(preds, top=5, class_index_path=None):
    """ImageNet's top classes per sample (see imagenet_utils.decode_predictions)."""
    return imagenet_utils.decode_predictions(preds, top=top, class_index_path=class_index_path)
