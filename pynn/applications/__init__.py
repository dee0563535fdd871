"""``pynn.applications``: Keras 3's ``keras.applications`` architectures, built by pynn.

Each constructor takes Keras's arguments and builds the same functional graph with Keras's
layer names and weight layouts, so ``model.set_weights(keras_model.get_weights())`` and a
``.keras`` file of a Keras application give Keras's numbers. ``weights`` is None or the path
of a weights file; pynn downloads nothing.

The families load on first use (each constructor's module imports only what it builds).
"""

import importlib

# name -> the module of pynn.applications that defines it (Keras's module names)
_FAMILIES = {
    "resnet": ("ResNet50", "ResNet101", "ResNet152"),
    "resnet_v2": ("ResNet50V2", "ResNet101V2", "ResNet152V2"),
    "vgg16": ("VGG16",),
    "vgg19": ("VGG19",),
    "mobilenet": ("MobileNet",),
    "mobilenet_v2": ("MobileNetV2",),
    "mobilenet_v3": ("MobileNetV3Small", "MobileNetV3Large"),
    "densenet": ("DenseNet121", "DenseNet169", "DenseNet201"),
    "efficientnet": tuple(f"EfficientNetB{i}" for i in range(8)),
    "efficientnet_v2": ("EfficientNetV2B0", "EfficientNetV2B1", "EfficientNetV2B2",
                        "EfficientNetV2B3", "EfficientNetV2S", "EfficientNetV2M",
                        "EfficientNetV2L"),
    "convnext": ("ConvNeXtTiny", "ConvNeXtSmall", "ConvNeXtBase", "ConvNeXtLarge",
                 "ConvNeXtXLarge"),
    "inception_v3": ("InceptionV3",),
    "inception_resnet_v2": ("InceptionResNetV2",),
    "xception": ("Xception",),
    "nasnet": ("NASNetMobile", "NASNetLarge"),
}
_MODULE_OF = {name: module for module, names in _FAMILIES.items() for name in names}
_SUBMODULES = (*_FAMILIES, "imagenet_utils")


def __getattr__(name):
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f"pynn.applications.{_MODULE_OF[name]}"), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"pynn.applications.{name}")
    raise AttributeError(f"module 'pynn.applications' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_MODULE_OF) | set(_SUBMODULES))
