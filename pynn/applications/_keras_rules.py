"""The argument rules Keras 3's applications share (keras/src/applications/imagenet_utils.py
and each family's checks), for the EfficientNet, EfficientNetV2, ConvNeXt, Inception,
Xception and NASNet builders: the same input shapes, the same padding, the same errors.

channels_last only, as pynn is. ``weights`` is None or a weights file: pynn downloads
nothing, so "imagenet" is refused before anything is built.
"""

import os
import warnings

from pynn.layers.core import Input
from pynn.layers.symbolic import KerasTensor


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
    if input_shape and len(input_shape) == 3:
        if input_shape[-1] not in {1, 3}:
            warnings.warn("This model usually expects 1 or 3 input channels. However, it was "
                          f"passed an input_shape with {input_shape[-1]} input channels.",
                          stacklevel=3)
        default_shape = (default_size, default_size, input_shape[-1])
    else:
        default_shape = (default_size, default_size, 3)
    if input_shape:
        if len(input_shape) != 3:
            raise ValueError("`input_shape` must be a tuple of three integers.")
        if ((input_shape[0] is not None and input_shape[0] < min_size)
                or (input_shape[1] is not None and input_shape[1] < min_size)):
            raise ValueError(f"Input size must be at least {min_size}x{min_size}; Received: "
                             f"input_shape={input_shape}")
    elif require_flatten:
        input_shape = default_shape
    else:
        input_shape = (None, None, 3)
    if require_flatten and None in input_shape:
        raise ValueError("If `include_top` is True, you should specify a static "
                         f"`input_shape`. Received: input_shape={input_shape}")
    return tuple(input_shape)


def image_input(input_tensor, input_shape):
    """The model's image tensor: a new Input, or ``input_tensor`` (a pynn symbolic tensor,
    as Keras takes a Keras tensor)."""
    if input_tensor is None:
        return Input(shape=input_shape)
    if not isinstance(input_tensor, KerasTensor):
        raise ValueError(f"input_tensor must be a symbolic tensor of pynn's functional API "
                         f"(pynn.Input or a layer's output), got {type(input_tensor).__name__}")
    return input_tensor


def source_inputs(tensor):
    """The Input tensors ``tensor`` is computed from (Keras's get_source_inputs), in the
    order a depth-first walk meets them."""
    found, seen, stack = [], set(), [tensor]
    while stack:
        t = stack.pop()
        node = t.node
        if node is None or node.is_input:
            if id(t) not in seen:
                seen.add(id(t))
                found.append(t)
            continue
        stack.extend(reversed(node.inputs))
    return found


def correct_pad(shape, kernel_size):
    """Keras's ``correct_pad``: the ZeroPadding2D padding before a stride-2 'valid' conv of
    ``kernel_size`` on an input of ``shape`` (N, H, W, C), as TF's 'same' pads."""
    if isinstance(kernel_size, int):
        kernel_size = (kernel_size, kernel_size)
    if shape[1] is None:
        adjust = (1, 1)
    else:
        adjust = (1 - shape[1] % 2, 1 - shape[2] % 2)
    correct = (kernel_size[0] // 2, kernel_size[1] // 2)
    return ((correct[0] - adjust[0], correct[0]), (correct[1] - adjust[1], correct[1]))


def validate_activation(classifier_activation, weights):
    """Keras's ``validate_activation``: with loaded weights the classifier is softmax or
    linear."""
    if weights is None:
        return
    if classifier_activation not in (None, "softmax", "linear"):
        raise ValueError("Only `None` and `softmax` activations are allowed for the "
                         "`classifier_activation` argument when using pretrained weights, "
                         "with `include_top=True`; Received: "
                         f"classifier_activation={classifier_activation}")


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
        model.load_weights(weights)
    return model
