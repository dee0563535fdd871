"""VGG16 (Simonyan and Zisserman 2014) as Keras 3 builds it, with Keras's layer names and
weight layouts."""

from pynn.applications import imagenet_utils
from pynn.layers import Conv2D, Dense, Flatten, GlobalAveragePooling2D, GlobalMaxPooling2D
from pynn.layers import MaxPooling2D


def vgg_blocks(x, convs_per_block):
    """VGG's five blocks of 3x3 relu convolutions ('block{b}_conv{i}'), each closed by a 2x2
    max pooling ('block{b}_pool')."""
    for block, (filters, convs) in enumerate(zip((64, 128, 256, 512, 512), convs_per_block),
                                             start=1):
        for i in range(1, convs + 1):
            x = Conv2D(filters, (3, 3), activation="relu", padding="same",
                       name=f"block{block}_conv{i}")(x)
        x = MaxPooling2D((2, 2), strides=(2, 2), name=f"block{block}_pool")(x)
    return x


def VGG(convs_per_block, include_top, weights, input_tensor, input_shape, pooling, classes,
        classifier_activation, name):
    """VGG16/VGG19: the blocks, then Flatten and the fc1/fc2/predictions classifier, or the
    optional global pooling (unnamed in Keras)."""
    imagenet_utils.check_weights(weights, include_top, classes)
    imagenet_utils.check_pooling(pooling)
    input_shape = imagenet_utils.obtain_input_shape(
        input_shape, default_size=224, min_size=32, data_format="channels_last",
        require_flatten=include_top, weights=weights)
    img_input = imagenet_utils.model_input(input_tensor, input_shape)
    x = vgg_blocks(img_input, convs_per_block)
    if include_top:
        x = Flatten(name="flatten")(x)
        x = Dense(4096, activation="relu", name="fc1")(x)
        x = Dense(4096, activation="relu", name="fc2")(x)
        imagenet_utils.validate_activation(classifier_activation, weights)
        x = Dense(classes, activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = GlobalAveragePooling2D()(x)
    elif pooling == "max":
        x = GlobalMaxPooling2D()(x)
    return imagenet_utils.make_model(img_input, input_tensor, x, name, weights)


def VGG16(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
          pooling=None, classes=1000, classifier_activation="softmax", name="vgg16"):
    """VGG16: Keras 3's arguments; ``weights`` None or a weights file's path."""
    return VGG((2, 2, 3, 3, 3), include_top, weights, input_tensor, input_shape, pooling,
               classes, classifier_activation, name)


def preprocess_input(x, data_format=None):
    """Keras's VGG preprocessing: caffe (RGB to BGR, ImageNet's mean pixel subtracted)."""
    return imagenet_utils.preprocess_input(x, data_format=data_format, mode="caffe")


def decode_predictions(preds, top=5, class_index_path=None):
    """ImageNet's top classes per sample (see imagenet_utils.decode_predictions)."""
    return imagenet_utils.decode_predictions(preds, top=top, class_index_path=class_index_path)
