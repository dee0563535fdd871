"""The argument rules of Keras 3's applications for the EfficientNet, EfficientNetV2,
ConvNeXt, Inception, Xception and NASNet builders: the shared ones are imagenet_utils'
(Keras's obtain_input_shape, correct_pad, validate_activation, get_source_inputs); here the
families' own wording of the weights check, with pynn's refusal of "imagenet".

channels_last only, as pynn is. ``weights`` is None or a weights file: pynn downloads
nothing, so "imagenet" is refused before anything is built.
"""

import os

from pynn.applications import imagenet_utils
from pynn.applications.imagenet_utils import (  # noqa: F401 (the builders' rules, here)
    correct_pad, source_inputs, validate_activation,
)

# Keras's message for a weights argument that is no file; families word it apart
WEIGHTS_MESSAGE = ("The `weights` argument should be either `None` (random initialization), "
                   "`imagenet` (pre-training on ImageNet), or the path to the weights file to "
                   "be loaded.")


def check_weights(weights, family, message=WEIGHTS_MESSAGE):
    """Keras's first check of ``weights`` (``message`` its words), with pynn's refusal of
    "imagenet" (Keras would download the file)."""
    if weights == "imagenet":
        raise ValueError(f"{family}: pynn downloads nothing, so weights='imagenet' is not "
                         f"available; pass weights=None (random initialization) or the path "
                         f"of a weights file (e.g. one saved by Keras's "
                         f"model.save_weights('{family.lower()}.weights.h5'))")
    if not (weights is None or (isinstance(weights, (str, os.PathLike))
                                and os.path.exists(weights))):
        raise ValueError(message.format(weights=weights))


def obtain_input_shape(input_shape, default_size, min_size, require_flatten):
    """Keras's ``obtain_input_shape`` for channels_last and weights other than imagenet."""
    return imagenet_utils.obtain_input_shape(input_shape, default_size, min_size,
                                             "channels_last", require_flatten)


def image_input(input_tensor, input_shape):
    """The model's image tensor: a new Input, or ``input_tensor`` (a pynn symbolic tensor,
    as Keras takes a Keras tensor)."""
    return imagenet_utils.model_input(input_tensor, input_shape)


def model_inputs(input_tensor, img_input):
    if input_tensor is None:
        return img_input
    sources = source_inputs(input_tensor)
    return sources[0] if len(sources) == 1 else sources


def finish(inputs, outputs, name, weights):
    """The functional model, with ``weights`` (a file) loaded."""
    from pynn.models import Model

    model = Model(inputs, outputs, name=name)
    if weights is not None:
        model.load_weights(os.fspath(weights))
    return model
