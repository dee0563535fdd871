"""ResNet50V2, ResNet101V2 and ResNet152V2 (He et al. 2016, pre-activation) as Keras 3
builds them, with Keras's layer names and weight layouts."""

from pynn.applications import imagenet_utils
from pynn.applications.resnet import ResNet, stack_residual_blocks_v2


def _resnet_v2(depths, include_top, weights, input_tensor, input_shape, pooling, classes,
               classifier_activation, name):
    def stack_fn(x):
        x = stack_residual_blocks_v2(x, 64, depths[0], name="conv2")
        x = stack_residual_blocks_v2(x, 128, depths[1], name="conv3")
        x = stack_residual_blocks_v2(x, 256, depths[2], name="conv4")
        return stack_residual_blocks_v2(x, 512, depths[3], stride1=1, name="conv5")

    return ResNet(stack_fn, True, True, include_top, weights, input_tensor, input_shape,
                  pooling, classes, classifier_activation, name)


def ResNet50V2(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
               pooling=None, classes=1000, classifier_activation="softmax",
               name="resnet50v2"):
    """ResNet50V2: Keras 3's arguments; ``weights`` None or a weights file's path."""
    return _resnet_v2((3, 4, 6, 3), include_top, weights, input_tensor, input_shape, pooling,
                      classes, classifier_activation, name)


def ResNet101V2(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
                pooling=None, classes=1000, classifier_activation="softmax",
                name="resnet101v2"):
    """ResNet101V2: Keras 3's arguments; ``weights`` None or a weights file's path."""
    return _resnet_v2((3, 4, 23, 3), include_top, weights, input_tensor, input_shape,
                      pooling, classes, classifier_activation, name)


def ResNet152V2(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
                pooling=None, classes=1000, classifier_activation="softmax",
                name="resnet152v2"):
    """ResNet152V2: Keras 3's arguments; ``weights`` None or a weights file's path."""
    return _resnet_v2((3, 8, 36, 3), include_top, weights, input_tensor, input_shape,
                      pooling, classes, classifier_activation, name)


def preprocess_input(x, data_format=None):
    """Keras's ResNetV2 preprocessing: tf (scaled to [-1, 1])."""
    return imagenet_utils.preprocess_input(x, data_format=data_format, mode="tf")


def decode_predictions(preds, top=5, class_index_path=None):
    """ImageNet's top classes per sample (see imagenet_utils.decode_predictions)."""
    return imagenet_utils.decode_predictions(preds, top=top, class_index_path=class_index_path)
