"""Quantization-aware training (issue 18): fake-quant nodes with straight-through gradients,
then conversion to the int8 model.

    qat = quantize_aware(model)          # a copy with FakeQuant around each Dense / Conv1D /
                                         # Conv2D / DepthwiseConv2D
    qat.compile(...); qat.fit(...)       # trains through uint8 rounding of the activations
    int8 = convert(qat)                  # their static int8 twins

``FakeQuant`` rounds its input to the uint8 grid of a range it tracks (the batch's min and
max while training, smoothed by ``momentum`` as TF-MOT's moving-average quantizer does; the
saved range at inference) and back to float, through the same kernels as the int8 model
(quantize_forward, dequantize_forward), so training sees the very rounding the converted
model does. Its gradient is the straight-through estimator: dy where the input lies inside
the representable range, 0 outside (where the clip flattens the function). The weights are
not fake-quantized here: per-channel symmetric int8 weights round by at most 1/254 of each
channel's largest weight, well below the activations' per-tensor step.
"""

from pynn.compression.quantization import int8_twin
from pynn.layers.quantized import FakeQuant

# The layers whose static int8 twin needs only their input's and output's ranges (what two
# FakeQuant track): SeparableConv2D would need its intermediate's too, the recurrent layers
# quantize dynamically.
_QAT_CLASSES = ("Dense", "Conv1D", "Conv2D", "DepthwiseConv2D")


def _int8_twin(layer, x_params=None, y_params=None):
    if type(layer).__name__ not in _QAT_CLASSES:
        return None
    return int8_twin(layer, x_params, y_params)


def quantize_aware(model, momentum=0.99):
    """A trainable copy of the Sequential ``model`` with a FakeQuant before and after each
    Dense / Conv1D / Conv2D / DepthwiseConv2D (linear or relu) that ``quantize`` would turn
    to int8."""
    from pynn.layers import Input
    from pynn.models import Sequential, layer_from_config

    if not isinstance(model, Sequential):
        raise ValueError(  # noqa: TRY004 -- as quantize
            f"quantize_aware: expected a Sequential model, got {type(model).__name__}")
    new_layers = []
    for layer in model.layers:
        copy = layer_from_config({"class_name": type(layer).__name__,
                                  "config": layer.get_config()})
        copy.build(layer.input_shape)
        copy.set_weights(layer.get_weights())
        quantizable = _int8_twin(layer) is not None
        if quantizable and not (new_layers and isinstance(new_layers[-1], FakeQuant)):
            new_layers.append(FakeQuant(momentum, name=f"{layer.name}_fq_in"))
        new_layers.append(copy)
        if quantizable:
            new_layers.append(FakeQuant(momentum, name=f"{layer.name}_fq_out"))
    return Sequential([Input(tuple(model.input_shape[1:]))] + new_layers,
                      name=f"{model.name}_qat")


def convert(qat_model, chain=True):
    """The int8 model of a trained ``quantize_aware`` copy: each layer between two FakeQuant
    becomes its static int8 twin with their ranges; the FakeQuant go. ``chain``: as in
    ``quantize``, consecutive int8 layers (through Flatten, Dropout and MaxPooling2D) pass
    uint8 codes, each consumer taking its producer's output range (``chain_uint8``)."""
    from pynn.layers import Input
    from pynn.layers.quantized import chain_uint8
    from pynn.models import Sequential, layer_from_config

    stack = qat_model.layers
    new_layers = []
    for i, layer in enumerate(stack):
        if isinstance(layer, FakeQuant):
            continue
        before = stack[i - 1] if i and isinstance(stack[i - 1], FakeQuant) else None
        after = stack[i + 1] if i + 1 < len(stack) and isinstance(stack[i + 1], FakeQuant) \
            else None
        twin = None
        if before is not None and after is not None:
            twin = _int8_twin(layer, before.quant_params(), after.quant_params())
        if twin is None:
            twin = layer_from_config({"class_name": type(layer).__name__,
                                      "config": layer.get_config()})
            twin.build(layer.input_shape)
            twin.set_weights(layer.get_weights())
        new_layers.append(twin)
    name = qat_model.name.removesuffix("_qat")
    inputs = tuple(qat_model.input_shape[1:])
    if chain:
        # chain_uint8 reads a graph of the layers and marks their int8 twins: here each int8
        # layer is its own twin, and a chained MaxPooling2D gets one to stand in for it.
        twins = {id(layer): layer for layer in new_layers
                 if getattr(layer, "input_scale", None) is not None}
        chain_uint8(Sequential([Input(inputs)] + new_layers)._graph, twins)
        new_layers = [twins.get(id(layer), layer) for layer in new_layers]
    return Sequential([Input(inputs)] + new_layers, name=f"{name}_int8")
