"""int8 quantization (issue 18), for inference, on Sequential and functional models alike.

- ``quantize(model, calibration_x, method="minmax" | "percentile")``: static post-training
  int8, a copy of ``model`` whose Dense, Conv1D, Conv2D, DepthwiseConv2D and
  SeparableConv2D layers (linear or relu) run on the int8 GEMM (native/quant.pyx: AVX-512
  VNNI / AVX2 chosen at run time, bit-identical on OpenCL), activations uint8 per tensor
  calibrated on ``calibration_x`` (min-max, or the [100 - p, p] percentiles to ignore
  outliers), requantization and relu fused; SimpleRNN / LSTM / GRU get their dynamic int8
  input projection (below). Consecutive Dense / Conv2D int8 layers (through Flatten, Dropout
  and MaxPooling2D, which becomes QuantizedMaxPooling2D) pass uint8 codes: the producer's
  requantizing epilogue writes the consumer's input, dequantized only at the model's float
  boundary (``chain_uint8``; bit-identical to the same layers dequantizing and requantizing
  in between);
- ``quantize_dynamic(model)`` (PyTorch's name): a copy whose Dense layers and SimpleRNN /
  LSTM / GRU input projections (x @ kernel) take int8 weights per output channel and
  quantize their input per call from its own range; the recurrent product stays float;
- ``model.quantize("int8")`` (Keras 3's API): in place, dynamic, every layer ``quantize``
  knows; a functional model keeps its graph, each node now calling the int8 layer;
- weights: symmetric per output channel, w_scale[u] = max |W[..., u]| / 127, int8 in
  [-127, 127], kept in Keras's layout (``kernel`` int8, ``kernel_scale``) and packed once for
  the GEMM; bias float, rint(b / (x_scale * w_scale[u])) in int32 at run time;
- saving: int8 weights stay int8 in .pynn (about 1/4 of the float file), and a loaded model
  predicts bit-identically; the lighter option keeps float layers and stores their weights
  as float16, loaded back as float32: ``model.save(path, weights_dtype="float16")`` (TF-Lite's
  "float16 quantization"; ``float16_size`` returns the file's size);
- ONNX: ``pynn.onnx.export`` writes a quantized model in QDQ form;
- quantization-aware training: ``pynn.compression.qat``.

The layers themselves: pynn.layers.quantized (Dense, Conv2D) and
pynn.layers.quantized_extra (Conv1D, depthwise, separable, recurrent).

Not converted: layers inside wrappers (Bidirectional, TimeDistributed) or nested models,
grouped convolutions, activations other than relu / linear. The recurrent layers' int8
projection saves their kernel's storage but not time at T = 50, 128 units (the recurrence
dominates; bench/bench_quant_breadth.py).
"""

import os

import numpy as np

from pynn import backend
from pynn.layers.quantized import (  # noqa: F401 -- the layers are this module's API too
    METHODS,
    QuantizedConv2D,
    QuantizedDense,
    QuantizedMaxPooling2D,
    _int8_twin,
    activation_params,
    chain_uint8,
    weight_params,
)
from pynn.layers.quantized_extra import (  # noqa: F401
    RECURRENT_TWINS,
    QuantizedConv1D,
    QuantizedDepthwiseConv2D,
    QuantizedGRU,
    QuantizedLSTM,
    QuantizedSeparableConv2D,
    QuantizedSimpleRNN,
    _clone,
    _fused,
    _graph,
    _recurrent_twin_class,
    _rewire,
    int8_twin,
    quantize_in_place,
)


def _calibrate(model, calibration_x, method, percentile):
    """{id(layer): (x_params, y_params, mid_params)} of every layer ``int8_twin`` converts
    statically, from one pass of ``calibration_x`` through the graph (a layer called twice
    covers the values of both calls)."""
    from pynn.layers.conv_variants import SeparableConv2D
    from pynn.layers.base import makes_mask, takes_mask

    b = backend.current()
    graph = model._graph
    xs = calibration_x if isinstance(calibration_x, (list, tuple)) else [calibration_x]
    if len(xs) != len(graph.inputs):
        raise ValueError(f"quantize: model '{model.name}' has {len(graph.inputs)} inputs, "
                         f"calibration_x gives {len(xs)}")
    values = {id(t): b.asarray(np.asarray(x, t.dtype), t.dtype)
              for t, x in zip(graph.inputs, xs)}
    # Keras's masks travel with the values, as in a prediction (pynn.layers.functional
    # Plan._run): calibrated without them, a pooling over padded steps gave the next layer
    # another range than it meets, and a masked text model's int8 copy missed by half.
    masks = {}
    seen = {}
    for node in graph.nodes:
        if node.is_input:
            continue
        layer = node.layer
        ins = [values[id(t)] for t in node.inputs]
        x = ins if node.several else ins[0]
        mask = [masks.get(id(t)) for t in node.inputs]
        mask = mask if node.several else mask[0]
        masked = any(m is not None for m in mask) if node.several else mask is not None
        if masked and takes_mask(layer):
            out = layer.call(x, training=False, mask=mask)
        else:
            out = layer(x)
        outs = out if isinstance(out, list) else [out]
        for t, y in zip(node.outputs, outs):
            values[id(t)] = y
        if masked or makes_mask(layer):
            out_mask = layer.compute_mask(x, mask)
            out_mask = out_mask if isinstance(out_mask, list) else [out_mask] * len(outs)
            for t, m in zip(node.outputs, out_mask):
                masks[id(t)] = m
        if node.several or not _fused(layer) or _recurrent_twin_class(layer) is not None:
            continue
        entry = seen.setdefault(id(layer), ([], [], []))
        entry[0].append(b.to_numpy(ins[0]).reshape(-1))
        entry[1].append(b.to_numpy(outs[0]).reshape(-1))
        if isinstance(layer, SeparableConv2D):
            mid, _ = b.depthwise_conv2d_forward(ins[0], layer.depthwise_kernel.value, None,
                                                layer.strides, layer.padding,
                                                layer.dilation_rate, "linear", 0.0)
            entry[2].append(b.to_numpy(mid).reshape(-1))
    return {key: tuple(activation_params(np.concatenate(v), method, percentile) if v else None
                       for v in entry)
            for key, entry in seen.items()}


def quantize(model, calibration_x, method="minmax", percentile=99.99, chain=True):
    """An int8 copy of ``model`` (Sequential or functional) for inference (see the module
    docstring); ``calibration_x`` is a sample of inputs (a list for several inputs; a few
    hundred samples are plenty). ``chain``: consecutive Dense / Conv2D int8 layers (through
    Flatten, Dropout and MaxPooling2D) pass uint8 codes, not floats (``chain_uint8``)."""
    _graph(model, "quantize")
    if method not in METHODS:
        raise ValueError(f"quantize: method must be one of {METHODS}, got {method!r}")
    copy = _clone(model)
    params = _calibrate(copy, calibration_x, method, percentile)
    twins = {}
    for layer in copy.layers:
        x_params, y_params, mid_params = params.get(id(layer), (None, None, None))
        if x_params is None and _recurrent_twin_class(layer) is None:
            continue  # not reached by the calibration (or not convertible)
        twin = int8_twin(layer, x_params, y_params, mid_params)
        if twin is not None:
            twins[id(layer)] = twin
    if chain:
        chain_uint8(copy._graph, twins)
    _rewire(copy, twins)
    copy.name = f"{model.name}_int8"
    return copy


def quantize_dynamic(model, inplace=False):
    """PyTorch's ``quantize_dynamic``: Dense layers and the SimpleRNN / LSTM / GRU input
    projections with int8 weights per output channel, the input quantized per call from its
    own range, float out; a copy unless ``inplace``."""
    _graph(model, "quantize_dynamic")
    target = model if inplace else _clone(model)
    twins = {}
    for layer in target.layers:
        twin = int8_twin(layer, dynamic_only=True)
        if twin is not None:
            twins[id(layer)] = twin
    return _rewire(target, twins)


# -- float16 weight storage --------------------------------------------------------------
def float16_size(model, filepath):
    """Save ``model`` with float16 weights (``model.save(filepath, weights_dtype="float16")``)
    and return the file's size in bytes; the file loads as float32."""
    model.save(filepath, weights_dtype="float16")
    return os.path.getsize(filepath)
