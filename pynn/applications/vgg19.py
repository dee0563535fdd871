"""VGG19 (Simonyan and Zisserman 2014) as Keras 3 builds it, with Keras's layer names and
weight layouts."""

from pynn.applications.vgg16 import VGG, decode_predictions, preprocess_input

__all__ = ["VGG19", "decode_predictions", "preprocess_input"]


def VGG19(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
          pooling=None, classes=1000, classifier_activation="softmax", name="vgg19"):
    """VGG19: Keras 3's arguments; ``weights`` None or a weights file's path."""
    return VGG((2, 2, 4, 4, 4), include_top, weights, input_tensor, input_shape, pooling,
               classes, classifier_activation, name)
