"""DenseNet121, DenseNet169 and DenseNet201 (Huang et al. 2016) as Keras 3 builds them, with
Keras's layer names and weight layouts."""

from pynn.applications import imagenet_utils
from pynn.layers import (
    Activation, AveragePooling2D, BatchNormalization, Concatenate, Conv2D, MaxPooling2D,
    ZeroPadding2D,
)

BN_EPSILON = 1.001e-5
GROWTH_RATE = 32


def conv_block(x, growth_rate, name):
    """BN-relu-1x1 (4*growth_rate), BN-relu-3x3 (growth_rate), concatenated to the input."""
    x1 = BatchNormalization(axis=3, epsilon=BN_EPSILON, name=f"{name}_0_bn")(x)
    x1 = Activation("relu", name=f"{name}_0_relu")(x1)
    x1 = Conv2D(4 * growth_rate, 1, use_bias=False, name=f"{name}_1_conv")(x1)
    x1 = BatchNormalization(axis=3, epsilon=BN_EPSILON, name=f"{name}_1_bn")(x1)
    x1 = Activation("relu", name=f"{name}_1_relu")(x1)
    x1 = Conv2D(growth_rate, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(x1)
    return Concatenate(axis=3, name=f"{name}_concat")([x, x1])


def dense_block(x, blocks, name):
    for i in range(blocks):
        x = conv_block(x, GROWTH_RATE, name=f"{name}_block{i + 1}")
    return x


def transition_block(x, reduction, name):
    """BN-relu, a 1x1 convolution to ``reduction`` of the channels, 2x2 average pooling."""
    x = BatchNormalization(axis=3, epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    x = Activation("relu", name=f"{name}_relu")(x)
    x = Conv2D(int(x.shape[3] * reduction), 1, use_bias=False, name=f"{name}_conv")(x)
    return AveragePooling2D(2, strides=2, name=f"{name}_pool")(x)


def DenseNet(blocks, include_top=True, weights=None, input_tensor=None, input_shape=None,
             pooling=None, classes=1000, classifier_activation="softmax", name="densenet"):
    """The DenseNet skeleton with ``blocks`` conv blocks in each of its four dense blocks."""
    imagenet_utils.check_weights(weights, include_top, classes)
    imagenet_utils.check_pooling(pooling)
    input_shape = imagenet_utils.obtain_input_shape(
        input_shape, default_size=224, min_size=32, data_format="channels_last",
        require_flatten=include_top, weights=weights)
    img_input = imagenet_utils.model_input(input_tensor, input_shape)

    x = ZeroPadding2D(padding=((3, 3), (3, 3)))(img_input)
    x = Conv2D(64, 7, strides=2, use_bias=False, name="conv1_conv")(x)
    x = BatchNormalization(axis=3, epsilon=BN_EPSILON, name="conv1_bn")(x)
    x = Activation("relu", name="conv1_relu")(x)
    x = ZeroPadding2D(padding=((1, 1), (1, 1)))(x)
    x = MaxPooling2D(3, strides=2, name="pool1")(x)
    for stage, count in enumerate(blocks[:3], start=2):
        x = dense_block(x, count, name=f"conv{stage}")
        x = transition_block(x, 0.5, name=f"pool{stage}")
    x = dense_block(x, blocks[3], name="conv5")
    x = BatchNormalization(axis=3, epsilon=BN_EPSILON, name="bn")(x)
    x = Activation("relu", name="relu")(x)
    x = imagenet_utils.pooled_top(x, include_top, pooling, classes, classifier_activation,
                                  weights)
    return imagenet_utils.make_model(img_input, input_tensor, x, name, weights)


def DenseNet121(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
                pooling=None, classes=1000, classifier_activation="softmax",
                name="densenet121"):
    """DenseNet121: Keras 3's arguments; ``weights`` None or a weights file's path."""
    return DenseNet([6, 12, 24, 16], include_top, weights, input_tensor, input_shape, pooling,
                    classes, classifier_activation, name)


def DenseNet169(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
                pooling=None, classes=1000, classifier_activation="softmax",
                name="densenet169"):
    """DenseNet169: Keras 3's arguments; ``weights`` None or a weights file's path."""
    return DenseNet([6, 12, 32, 32], include_top, weights, input_tensor, input_shape, pooling,
                    classes, classifier_activation, name)


def DenseNet201(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
                pooling=None, classes=1000, classifier_activation="softmax",
                name="densenet201"):
    """DenseNet201: Keras 3's arguments; ``weights`` None or a weights file's path."""
    return DenseNet([6, 12, 48, 32], include_top, weights, input_tensor, input_shape, pooling,
                    classes, classifier_activation, name)


def preprocess_input(x, data_format=None):
    """Keras's DenseNet preprocessing: torch (scaled to [0, 1], ImageNet's mean and std)."""
    return imagenet_utils.preprocess_input(x, data_format=data_format, mode="torch")


def decode_predictions(preds, top=5, class_index_path=None):
    """ImageNet's top classes per sample (see imagenet_utils.decode_predictions)."""
    return imagenet_utils.decode_predictions(preds, top=top, class_index_path=class_index_path)
