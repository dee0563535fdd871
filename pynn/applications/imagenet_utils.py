"""Keras 3's ``keras.applications.imagenet_utils`` for pynn, and what every application
constructor shares: the argument checks, the input, and loading a weights file.

``preprocess_input`` has Keras's modes: ``caffe`` (RGB to BGR, ImageNet's mean pixel
subtracted, no scaling), ``tf`` (scaled to [-1, 1]) and ``torch`` (scaled to [0, 1], then
ImageNet's per-channel mean and std). A float NumPy array is written over, as Keras does.

``decode_predictions`` needs ImageNet's class index (``imagenet_class_index.json``, Keras's
file: ``{"0": ["n01440764", "tench"], ...}``). pynn downloads nothing: pass the file's path
as ``class_index_path`` once, or set the environment variable ``PYNN_IMAGENET_CLASS_INDEX``.
"""

import json
import os
import warnings

import numpy as np

from pynn._config import floatx
from pynn.layers.symbolic import KerasTensor

CLASS_INDEX = None
CLASS_INDEX_ENV = "PYNN_IMAGENET_CLASS_INDEX"

# ImageNet's channel statistics, as Keras's _preprocess_numpy_input states them
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)

PREPROCESS_MODES = ("caffe", "tf", "torch")
DATA_FORMATS = ("channels_first", "channels_last")


def preprocess_input(x, data_format=None, mode="caffe"):
    """Preprocesses a batch of images (3-D or 4-D, values in [0, 255]) for an ImageNet model;
    returns a float array. ``mode``: "caffe" (default), "tf" or "torch" (see the module's
    docstring). ``data_format``: None (channels_last), "channels_last" or
    "channels_first"."""
    if mode not in PREPROCESS_MODES:
        raise ValueError("Expected mode to be one of `caffe`, `tf` or `torch`. "
                         f"Received: mode={mode}")
    if data_format is None:
        data_format = "channels_last"
    elif data_format not in DATA_FORMATS:
        raise ValueError("Expected data_format to be one of `channels_first` or "
                         f"`channels_last`. Received: data_format={data_format}")
    if isinstance(x, KerasTensor):
        raise TypeError("preprocess_input: pynn preprocesses arrays, not symbolic tensors; "
                        "inside a model use a Rescaling or Normalization layer")
    if not isinstance(x, np.ndarray):
        x = np.array(x)
    if not issubclass(x.dtype.type, np.floating):
        x = x.astype(floatx(), copy=False)
    if x.ndim not in (3, 4):
        raise ValueError(f"preprocess_input: expected a 3-D image or a 4-D batch of images, "
                         f"got an array of shape {x.shape}")
    channel_axis = -1 if data_format == "channels_last" else x.ndim - 3
    if x.shape[channel_axis] != 3:
        raise ValueError(f"preprocess_input: expected 3 color channels on axis "
                         f"{channel_axis} ({data_format}), got shape {x.shape}")
    if mode == "tf":
        x /= 127.5
        x -= 1.0
        return x
    if mode == "torch":
        x /= 255.0
        mean, std = TORCH_MEAN, TORCH_STD
    else:
        x = np.flip(x, axis=channel_axis)  # RGB -> BGR: a view, written over as Keras's
        mean, std = CAFFE_MEAN_BGR, None
    stat_shape = [1] * x.ndim
    stat_shape[channel_axis] = 3
    x -= np.asarray(mean, dtype=x.dtype).reshape(stat_shape)
    if std is not None:
        x /= np.asarray(std, dtype=x.dtype).reshape(stat_shape)
    return x


def _class_index(class_index_path):
    global CLASS_INDEX
    path = class_index_path or os.environ.get(CLASS_INDEX_ENV)
    if path is None:
        if CLASS_INDEX is not None:
            return CLASS_INDEX
        raise ValueError(
            "decode_predictions needs ImageNet's class index (imagenet_class_index.json) and "
            "pynn downloads nothing: pass its local path as class_index_path=..., or set "
            f"the environment variable {CLASS_INDEX_ENV}")
    try:
        with open(path, encoding="utf-8") as fh:
            index = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ValueError(f"decode_predictions: cannot read the class index {path!r} "
                         f"({exc})") from None
    if not isinstance(index, dict) or any(str(i) not in index for i in range(1000)):
        raise ValueError(f"decode_predictions: {path!r} is not ImageNet's class index "
                         "(a JSON object from '0'..'999' to [wnid, name])")
    CLASS_INDEX = index
    return index


def decode_predictions(preds, top=5, class_index_path=None):
    """Decodes a batch of ImageNet predictions (samples, 1000) into, per sample, a list of
    ``(class_name, class_description, score)`` tuples, the ``top`` best first."""
    preds = np.asarray(preds)
    if len(preds.shape) != 2 or preds.shape[1] != 1000:
        raise ValueError("`decode_predictions` expects a batch of predictions (i.e. a 2D "
                         "array of shape (samples, 1000)). "
                         f"Received array with shape: {preds.shape}")
    index = _class_index(class_index_path)
    results = []
    for pred in preds:  # per sample: the answer is a list of lists of tuples
        top_indices = pred.argsort()[-top:][::-1]
        result = [(*index[str(i)], pred[i]) for i in top_indices]
        result.sort(key=lambda r: r[2], reverse=True)
        results.append(result)
    return results


def obtain_input_shape(input_shape, default_size, min_size, data_format, require_flatten,
                       weights=None):
    """Keras's rules for an application's input shape: the default when None, checked
    against ``min_size`` otherwise; with a classifier on top the shape must be static."""
    data_format = data_format or "channels_last"
    channels_first = data_format == "channels_first"
    if weights != "imagenet" and input_shape and len(input_shape) == 3:
        channels = input_shape[0] if channels_first else input_shape[-1]
        if channels not in {1, 3}:
            warnings.warn("This model usually expects 1 or 3 input channels. However, it was "
                          f"passed an input_shape with {channels} input channels.",
                          stacklevel=3)
        default_shape = ((input_shape[0], default_size, default_size) if channels_first
                         else (default_size, default_size, input_shape[-1]))
    else:
        default_shape = ((3, default_size, default_size) if channels_first
                         else (default_size, default_size, 3))
    if weights == "imagenet" and require_flatten:
        if input_shape is not None and tuple(input_shape) != default_shape:
            raise ValueError("When setting `include_top=True` and loading `imagenet` weights, "
                             f"`input_shape` should be {default_shape}.  "
                             f"Received: input_shape={input_shape}")
        return default_shape
    if input_shape:
        if len(input_shape) != 3:
            raise ValueError("`input_shape` must be a tuple of three integers.")
        channels = input_shape[0] if channels_first else input_shape[-1]
        spatial = input_shape[1:] if channels_first else input_shape[:2]
        if channels != 3 and weights == "imagenet":
            raise ValueError(f"The input must have 3 channels; Received "
                             f"`input_shape={input_shape}`")
        if any(d is not None and d < min_size for d in spatial):
            raise ValueError(f"Input size must be at least {min_size}x{min_size}; Received: "
                             f"input_shape={input_shape}")
    elif require_flatten:
        input_shape = default_shape
    else:
        input_shape = (3, None, None) if channels_first else (None, None, 3)
    if require_flatten and None in input_shape:
        raise ValueError("If `include_top` is True, you should specify a static "
                         f"`input_shape`. Received: input_shape={input_shape}")
    return tuple(input_shape)


def correct_pad(inputs, kernel_size):
    """The ZeroPadding2D padding before a strided 'valid' convolution that centres it as
    TensorFlow's 'same' would on an even size (channels_last)."""
    input_size = inputs.shape[1:3]
    if isinstance(kernel_size, int):
        kernel_size = (kernel_size, kernel_size)
    if input_size[0] is None:
        adjust = (1, 1)
    else:
        adjust = (1 - input_size[0] % 2, 1 - input_size[1] % 2)
    correct = (kernel_size[0] // 2, kernel_size[1] // 2)
    return ((correct[0] - adjust[0], correct[0]), (correct[1] - adjust[1], correct[1]))


def validate_activation(classifier_activation, weights):
    """With pretrained weights the classifier's activation may only be None or softmax."""
    if weights is None:
        return
    named = getattr(classifier_activation, "__name__", classifier_activation)
    if named not in (None, "softmax", "linear"):
        raise ValueError("Only `None` and `softmax` activations are allowed for the "
                         "`classifier_activation` argument when using pretrained weights, "
                         "with `include_top=True`; Received: "
                         f"classifier_activation={classifier_activation}")


def check_weights(weights, include_top, classes):
    """Keras's checks of ``weights`` and ``classes``. 'imagenet' is refused: pynn downloads
    nothing, so a pretrained model is built from a local weights file."""
    if weights == "imagenet":
        raise ValueError(
            "weights='imagenet': pynn downloads nothing. Pass the path of a local weights "
            "file instead (Keras 3 '.weights.h5' or Keras 2 '.h5' with the same "
            "architecture), e.g. weights='resnet50_weights_tf_dim_ordering_tf_kernels.h5'")
    if not (weights is None or (isinstance(weights, (str, os.PathLike))
                                and os.path.exists(weights))):
        raise ValueError("The `weights` argument should be either `None` (random "
                         "initialization), 'imagenet' (pre-training on ImageNet), or the "
                         "path to the weights file to be loaded.  Received: "
                         f"weights={weights}")
    if isinstance(classes, bool) or not isinstance(classes, (int, np.integer)) or (
            include_top and classes < 1):
        raise ValueError(f"`classes` must be a positive int. Received: classes={classes!r}")


def check_pooling(pooling):
    """Keras ignores an unknown ``pooling``; pynn names it (a typo is never silently a 4-D
    output)."""
    if pooling not in (None, "avg", "max"):
        raise ValueError("The `pooling` argument should be one of None, 'avg' or 'max'. "
                         f"Received: pooling={pooling!r}")


def model_input(input_tensor, input_shape):
    """The image input of an application: a new Input of ``input_shape``, or
    ``input_tensor`` (a symbolic tensor of pynn's functional API)."""
    from pynn.layers.core import Input

    if input_tensor is None:
        return Input(shape=input_shape)
    if not isinstance(input_tensor, KerasTensor):
        raise ValueError("input_tensor must be a symbolic tensor of pynn's functional API "
                         "(the output of pynn.Input or of a layer called on one); "
                         f"Received: input_tensor={type(input_tensor).__name__}")
    return input_tensor


def source_inputs(tensor):
    """The Input tensors that ``tensor`` is computed from (Keras's get_source_inputs), in the
    order a depth-first walk meets them."""
    found, seen, stack = [], set(), [tensor]
    while stack:
        t = stack.pop()
        node = t.node
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.is_input:
            found.append(node.outputs[0])
        else:
            stack.extend(reversed(node.inputs))
    return found


def make_model(img_input, input_tensor, outputs, name, weights):
    """The functional Model from the application's input (or ``input_tensor``'s sources) to
    ``outputs``, with ``weights`` (a file path) loaded."""
    from pynn.models import Model

    inputs = img_input if input_tensor is None else source_inputs(input_tensor)
    if isinstance(inputs, list) and len(inputs) == 1:
        inputs = inputs[0]
    model = Model(inputs, outputs, name=name)
    if weights is not None:
        model.load_weights(os.fspath(weights))
    return model


def pooled_top(x, include_top, pooling, classes, classifier_activation, weights):
    """The common head: GlobalAveragePooling2D 'avg_pool' and Dense 'predictions' with a
    classifier, else the optional 'avg_pool' / 'max_pool' global pooling."""
    from pynn.layers.core import Dense
    from pynn.layers.pooling import GlobalAveragePooling2D, GlobalMaxPooling2D

    if include_top:
        x = GlobalAveragePooling2D(name="avg_pool")(x)
        validate_activation(classifier_activation, weights)
        return Dense(classes, activation=classifier_activation, name="predictions")(x)
    if pooling == "avg":
        return GlobalAveragePooling2D(name="avg_pool")(x)
    if pooling == "max":
        return GlobalMaxPooling2D(name="max_pool")(x)
    return x
