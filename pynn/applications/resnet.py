"""ResNet50, ResNet101 and ResNet152 (He et al. 2015) as Keras 3 builds them: the same
layer names, order and weight layouts, so ``model.set_weights(keras_model.get_weights())``
or a Keras weights file gives Keras's predictions. ``residual_block_v2`` and
``stack_residual_blocks_v2`` serve ResNetV2 (``pynn.applications.resnet_v2``)."""

from pynn.applications import imagenet_utils
from pynn.layers import (
    Activation, Add, BatchNormalization, Conv2D, MaxPooling2D, ZeroPadding2D,
)

# Keras's ResNets keep the epsilon of the original Caffe models, not BatchNormalization's 1e-3
BN_EPSILON = 1.001e-5


def ResNet(stack_fn, preact, use_bias, include_top=True, weights=None, input_tensor=None,
           input_shape=None, pooling=None, classes=1000, classifier_activation="softmax",
           name="resnet"):
    """The ResNet skeleton: the 7x7 stem, ``stack_fn``'s residual stacks, then the
    classifier or the optional global pooling. ``preact``: ResNetV2's pre-activation (the
    stem has no BatchNormalization, a final one follows the stacks)."""
    imagenet_utils.check_weights(weights, include_top, classes)
    imagenet_utils.check_pooling(pooling)
    input_shape = imagenet_utils.obtain_input_shape(
        input_shape, default_size=224, min_size=32, data_format="channels_last",
        require_flatten=include_top, weights=weights)
    img_input = imagenet_utils.model_input(input_tensor, input_shape)

    x = ZeroPadding2D(padding=((3, 3), (3, 3)), name="conv1_pad")(img_input)
    x = Conv2D(64, 7, strides=2, use_bias=use_bias, name="conv1_conv")(x)
    if not preact:
        x = BatchNormalization(axis=3, epsilon=BN_EPSILON, name="conv1_bn")(x)
        x = Activation("relu", name="conv1_relu")(x)
    x = ZeroPadding2D(padding=((1, 1), (1, 1)), name="pool1_pad")(x)
    x = MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    x = stack_fn(x)
    if preact:
        x = BatchNormalization(axis=3, epsilon=BN_EPSILON, name="post_bn")(x)
        x = Activation("relu", name="post_relu")(x)
    x = imagenet_utils.pooled_top(x, include_top, pooling, classes, classifier_activation,
                                  weights)
    return imagenet_utils.make_model(img_input, input_tensor, x, name, weights)


def residual_block_v1(x, filters, kernel_size=3, stride=1, conv_shortcut=True, name=None):
    """The bottleneck block of ResNet v1: 1x1, kxk, 1x1 (4*filters) convolutions, each with
    BatchNormalization, added to the shortcut, then relu."""
    if conv_shortcut:
        shortcut = Conv2D(4 * filters, 1, strides=stride, name=f"{name}_0_conv")(x)
        shortcut = BatchNormalization(axis=3, epsilon=BN_EPSILON, name=f"{name}_0_bn")(shortcut)
    else:
        shortcut = x
    x = Conv2D(filters, 1, strides=stride, name=f"{name}_1_conv")(x)
    x = BatchNormalization(axis=3, epsilon=BN_EPSILON, name=f"{name}_1_bn")(x)
    x = Activation("relu", name=f"{name}_1_relu")(x)
    x = Conv2D(filters, kernel_size, padding="same", name=f"{name}_2_conv")(x)
    x = BatchNormalization(axis=3, epsilon=BN_EPSILON, name=f"{name}_2_bn")(x)
    x = Activation("relu", name=f"{name}_2_relu")(x)
    x = Conv2D(4 * filters, 1, name=f"{name}_3_conv")(x)
    x = BatchNormalization(axis=3, epsilon=BN_EPSILON, name=f"{name}_3_bn")(x)
    x = Add(name=f"{name}_add")([shortcut, x])
    return Activation("relu", name=f"{name}_out")(x)


def stack_residual_blocks_v1(x, filters, blocks, stride1=2, name=None):
    """``blocks`` v1 blocks; the first has the convolution shortcut and stride ``stride1``."""
    x = residual_block_v1(x, filters, stride=stride1, name=f"{name}_block1")
    for i in range(2, blocks + 1):
        x = residual_block_v1(x, filters, conv_shortcut=False, name=f"{name}_block{i}")
    return x


def residual_block_v2(x, filters, kernel_size=3, stride=1, conv_shortcut=False, name=None):
    """The pre-activation bottleneck block of ResNet v2 (the stride on the 3x3 convolution;
    an identity shortcut with a stride is a 1x1 max pooling, unnamed as in Keras)."""
    preact = BatchNormalization(axis=3, epsilon=BN_EPSILON, name=f"{name}_preact_bn")(x)
    preact = Activation("relu", name=f"{name}_preact_relu")(preact)
    if conv_shortcut:
        shortcut = Conv2D(4 * filters, 1, strides=stride, name=f"{name}_0_conv")(preact)
    else:
        shortcut = MaxPooling2D(1, strides=stride)(x) if stride > 1 else x
    x = Conv2D(filters, 1, strides=1, use_bias=False, name=f"{name}_1_conv")(preact)
    x = BatchNormalization(axis=3, epsilon=BN_EPSILON, name=f"{name}_1_bn")(x)
    x = Activation("relu", name=f"{name}_1_relu")(x)
    x = ZeroPadding2D(padding=((1, 1), (1, 1)), name=f"{name}_2_pad")(x)
    x = Conv2D(filters, kernel_size, strides=stride, use_bias=False, name=f"{name}_2_conv")(x)
    x = BatchNormalization(axis=3, epsilon=BN_EPSILON, name=f"{name}_2_bn")(x)
    x = Activation("relu", name=f"{name}_2_relu")(x)
    x = Conv2D(4 * filters, 1, name=f"{name}_3_conv")(x)
    return Add(name=f"{name}_out")([shortcut, x])


def stack_residual_blocks_v2(x, filters, blocks, stride1=2, name=None):
    """``blocks`` v2 blocks: the first with the convolution shortcut, the last strided."""
    x = residual_block_v2(x, filters, conv_shortcut=True, name=f"{name}_block1")
    for i in range(2, blocks):
        x = residual_block_v2(x, filters, name=f"{name}_block{i}")
    return residual_block_v2(x, filters, stride=stride1, name=f"{name}_block{blocks}")


def _resnet_v1(depths, include_top, weights, input_tensor, input_shape, pooling, classes,
               classifier_activation, name):
    def stack_fn(x):
        x = stack_residual_blocks_v1(x, 64, depths[0], stride1=1, name="conv2")
        x = stack_residual_blocks_v1(x, 128, depths[1], name="conv3")
        x = stack_residual_blocks_v1(x, 256, depths[2], name="conv4")
        return stack_residual_blocks_v1(x, 512, depths[3], name="conv5")

    return ResNet(stack_fn, False, True, include_top, weights, input_tensor, input_shape,
                  pooling, classes, classifier_activation, name)


def ResNet50(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
             pooling=None, classes=1000, classifier_activation="softmax", name="resnet50"):
    """ResNet50: Keras 3's arguments; ``weights`` None or a weights file's path."""
    return _resnet_v1((3, 4, 6, 3), include_top, weights, input_tensor, input_shape, pooling,
                      classes, classifier_activation, name)


def ResNet101(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
              pooling=None, classes=1000, classifier_activation="softmax", name="resnet101"):
    """ResNet101: Keras 3's arguments; ``weights`` None or a weights file's path."""
    return _resnet_v1((3, 4, 23, 3), include_top, weights, input_tensor, input_shape, pooling,
                      classes, classifier_activation, name)


def ResNet152(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
              pooling=None, classes=1000, classifier_activation="softmax", name="resnet152"):
    """ResNet152: Keras 3's arguments; ``weights`` None or a weights file's path."""
    return _resnet_v1((3, 8, 36, 3), include_top, weights, input_tensor, input_shape, pooling,
                      classes, classifier_activation, name)


def preprocess_input(x, data_format=None):
    """Keras's ResNet preprocessing: caffe (RGB to BGR, ImageNet's mean pixel subtracted)."""
    return imagenet_utils.preprocess_input(x, data_format=data_format, mode="caffe")


def decode_predictions(preds, top=5, class_index_path=None):
    """ImageNet's top classes per sample (see imagenet_utils.decode_predictions)."""
    return imagenet_utils.decode_predictions(preds, top=top, class_index_path=class_index_path)
