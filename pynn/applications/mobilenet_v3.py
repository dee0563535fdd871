"""MobileNetV3Small and MobileNetV3Large (Howard et al. 2019) as Keras 3 builds them, with
Keras's layer names and weight layouts: ``alpha`` the width multiplier, ``minimalistic``
(3x3 kernels, relu, no squeeze-and-excite), ``include_preprocessing`` (a Rescaling of
[0, 255] to [-1, 1] at the input).

Keras writes the squeeze-and-excite gate's hard sigmoid as ``ReLU(6)(x + 3) * (1/6)``: two
op nodes of the functional graph (not layers, so not in ``model.layers``), built here the
same way from pynn.ops."""

from pynn import ops  # noqa: F401  (the operators of symbolic tensors record op nodes)
from pynn.applications import imagenet_utils
from pynn.layers import (
    Activation, Add, BatchNormalization, Conv2D, DepthwiseConv2D, Dropout, Flatten,
    GlobalAveragePooling2D, GlobalMaxPooling2D, Multiply, ReLU, Rescaling, ZeroPadding2D,
)

BN_ARGS = {"axis": -1, "epsilon": 1e-3, "momentum": 0.999}


def relu(x):
    return ReLU()(x)


def hard_sigmoid(x):
    return ReLU(6.0)(x + 3.0) * (1.0 / 6.0)


def hard_swish(x):
    return Activation("hard_swish")(x)


def _depth(v, divisor=8, min_value=None):
    """``v`` rounded to a multiple of ``divisor``, never more than 10% below ``v``."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _se_block(inputs, filters, se_ratio, prefix):
    x = GlobalAveragePooling2D(keepdims=True, name=f"{prefix}squeeze_excite_avg_pool")(inputs)
    x = Conv2D(_depth(filters * se_ratio), kernel_size=1, padding="same",
               name=f"{prefix}squeeze_excite_conv")(x)
    x = ReLU(name=f"{prefix}squeeze_excite_relu")(x)
    x = Conv2D(filters, kernel_size=1, padding="same", name=f"{prefix}squeeze_excite_conv_1")(x)
    x = hard_sigmoid(x)
    return Multiply(name=f"{prefix}squeeze_excite_mul")([inputs, x])


def _inverted_res_block(x, expansion, filters, kernel_size, stride, se_ratio, activation,
                        block_id):
    """1x1 expansion (not in block 0), kxk depthwise, optional squeeze-and-excite, 1x1
    projection; added to the input where the shapes allow."""
    shortcut = x
    prefix = "expanded_conv_"
    infilters = x.shape[-1]
    if block_id:
        prefix = f"expanded_conv_{block_id}_"
        x = Conv2D(_depth(infilters * expansion), kernel_size=1, padding="same",
                   use_bias=False, name=f"{prefix}expand")(x)
        x = BatchNormalization(**BN_ARGS, name=f"{prefix}expand_bn")(x)
        x = activation(x)
    if stride == 2:
        x = ZeroPadding2D(padding=imagenet_utils.correct_pad(x, kernel_size),
                          name=f"{prefix}depthwise_pad")(x)
    x = DepthwiseConv2D(kernel_size, strides=stride, padding="same" if stride == 1 else "valid",
                        use_bias=False, name=f"{prefix}depthwise")(x)
    x = BatchNormalization(**BN_ARGS, name=f"{prefix}depthwise_bn")(x)
    x = activation(x)
    if se_ratio:
        x = _se_block(x, _depth(infilters * expansion), se_ratio, prefix)
    x = Conv2D(filters, kernel_size=1, padding="same", use_bias=False,
               name=f"{prefix}project")(x)
    x = BatchNormalization(**BN_ARGS, name=f"{prefix}project_bn")(x)
    if stride == 1 and infilters == filters:
        x = Add(name=f"{prefix}add")([shortcut, x])
    return x


def MobileNetV3(stack_fn, last_point_ch, input_shape=None, alpha=1.0, model_type="large",
                minimalistic=False, include_top=True, weights=None, input_tensor=None,
                classes=1000, pooling=None, dropout_rate=0.2,
                classifier_activation="softmax", include_preprocessing=True, name=None):
    """The MobileNetV3 skeleton around ``stack_fn``'s inverted residual blocks."""
    imagenet_utils.check_weights(weights, include_top, classes)
    imagenet_utils.check_pooling(pooling)
    if input_shape is not None and input_tensor is not None:
        imagenet_utils.model_input(input_tensor, input_shape)
        if input_tensor.shape[2] != input_shape[1]:
            raise ValueError("input_shape[1] must equal input_tensor.shape[2].  Received "
                             f"input_shape={input_shape}, "
                             f"input_tensor.shape={input_tensor.shape}")
    if input_shape is None and input_tensor is not None:
        imagenet_utils.model_input(input_tensor, None)
        # Keras's (cols, rows): only a square input is what it says
        input_shape = (input_tensor.shape[2], input_tensor.shape[1], 3)
    if input_shape is None:
        input_shape = (None, None, 3)
    if len(input_shape) != 3:
        raise ValueError("`input_shape` must be a tuple of three integers.")
    rows, cols = input_shape[0], input_shape[1]
    if rows and cols and (rows < 32 or cols < 32):
        raise ValueError(f"Input size must be at least 32x32; Received "
                         f"`input_shape={input_shape}`")
    img_input = imagenet_utils.model_input(input_tensor, input_shape)

    if minimalistic:
        kernel, activation, se_ratio = 3, relu, None
    else:
        kernel, activation, se_ratio = 5, hard_swish, 0.25
    x = img_input
    if include_preprocessing:
        x = Rescaling(scale=1.0 / 127.5, offset=-1.0)(x)
    x = Conv2D(16, kernel_size=3, strides=(2, 2), padding="same", use_bias=False,
               name="conv")(x)
    x = BatchNormalization(**BN_ARGS, name="conv_bn")(x)
    x = activation(x)
    x = stack_fn(x, kernel, activation, se_ratio)
    last_conv_ch = _depth(x.shape[-1] * 6)
    if alpha > 1.0:
        last_point_ch = _depth(last_point_ch * alpha)
    x = Conv2D(last_conv_ch, kernel_size=1, padding="same", use_bias=False, name="conv_1")(x)
    x = BatchNormalization(**BN_ARGS, name="conv_1_bn")(x)
    x = activation(x)
    if include_top:
        x = GlobalAveragePooling2D(keepdims=True)(x)
        x = Conv2D(last_point_ch, kernel_size=1, padding="same", use_bias=True,
                   name="conv_2")(x)
        x = activation(x)
        if dropout_rate > 0:
            x = Dropout(dropout_rate)(x)
        x = Conv2D(classes, kernel_size=1, padding="same", name="logits")(x)
        x = Flatten()(x)
        imagenet_utils.validate_activation(classifier_activation, weights)
        x = Activation(activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = GlobalMaxPooling2D(name="max_pool")(x)
    return imagenet_utils.make_model(img_input, input_tensor, x, name, weights)


# (expansion, filters, kernel ('k': the family's), stride, squeeze-excite, activation ('a':
# the family's)) of each inverted residual block
SMALL_BLOCKS = ((1, 16, 3, 2, True, "relu"), (72.0 / 16, 24, 3, 2, False, "relu"),
                (88.0 / 24, 24, 3, 1, False, "relu"), (4, 40, "k", 2, True, "a"),
                (6, 40, "k", 1, True, "a"), (6, 40, "k", 1, True, "a"),
                (3, 48, "k", 1, True, "a"), (3, 48, "k", 1, True, "a"),
                (6, 96, "k", 2, True, "a"), (6, 96, "k", 1, True, "a"),
                (6, 96, "k", 1, True, "a"))
LARGE_BLOCKS = ((1, 16, 3, 1, False, "relu"), (4, 24, 3, 2, False, "relu"),
                (3, 24, 3, 1, False, "relu"), (3, 40, "k", 2, True, "relu"),
                (3, 40, "k", 1, True, "relu"), (3, 40, "k", 1, True, "relu"),
                (6, 80, 3, 2, False, "a"), (2.5, 80, 3, 1, False, "a"),
                (2.3, 80, 3, 1, False, "a"), (2.3, 80, 3, 1, False, "a"),
                (6, 112, 3, 1, True, "a"), (6, 112, 3, 1, True, "a"),
                (6, 160, "k", 2, True, "a"), (6, 160, "k", 1, True, "a"),
                (6, 160, "k", 1, True, "a"))


def _stack_fn(blocks, alpha):
    def stack_fn(x, kernel, activation, se_ratio):
        for block_id, (expansion, filters, k, stride, se, act) in enumerate(blocks):
            x = _inverted_res_block(x, expansion, _depth(filters * alpha),
                                    kernel if k == "k" else k, stride,
                                    se_ratio if se else None,
                                    relu if act == "relu" else activation, block_id)
        return x

    return stack_fn


def MobileNetV3Small(input_shape=None, alpha=1.0, minimalistic=False, include_top=True,
                     weights="imagenet", input_tensor=None, classes=1000, pooling=None,
                     dropout_rate=0.2, classifier_activation="softmax",
                     include_preprocessing=True, name="MobileNetV3Small"):
    """MobileNetV3Small: Keras 3's arguments; ``weights`` None or a weights file's path."""
    return MobileNetV3(_stack_fn(SMALL_BLOCKS, alpha), 1024, input_shape, alpha, "small",
                       minimalistic, include_top, weights, input_tensor, classes, pooling,
                       dropout_rate, classifier_activation, include_preprocessing, name=name)


def MobileNetV3Large(input_shape=None, alpha=1.0, minimalistic=False, include_top=True,
                     weights="imagenet", input_tensor=None, classes=1000, pooling=None,
                     dropout_rate=0.2, classifier_activation="softmax",
                     include_preprocessing=True, name="MobileNetV3Large"):
    """MobileNetV3Large: Keras 3's arguments; ``weights`` None or a weights file's path."""
    return MobileNetV3(_stack_fn(LARGE_BLOCKS, alpha), 1280, input_shape, alpha, "large",
                       minimalistic, include_top, weights, input_tensor, classes, pooling,
                       dropout_rate, classifier_activation, include_preprocessing, name=name)


def preprocess_input(x, data_format=None):
    """A pass-through, as Keras's: MobileNetV3 rescales inside the model
    (``include_preprocessing``)."""
    return x


def decode_predictions(preds, top=5, class_index_path=None):
    """ImageNet's top classes per sample (see imagenet_utils.decode_predictions)."""
    return imagenet_utils.decode_predictions(preds, top=top, class_index_path=class_index_path)
