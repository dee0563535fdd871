"""Model compression (issue 18): pruning (``pynn.compression.pruning``), structured pruning
(``pynn.compression.structured``), sparse inference (``pynn.compression.sparse``) and
knowledge distillation (``pynn.compression.distillation``), post-training and dynamic int8
and float16 storage (``pynn.compression.quantization``) and quantization-aware training
(``pynn.compression.qat``)."""

from pynn.compression.distillation import Distiller
from pynn.compression.pruning import (
    ConstantSparsity,
    PolynomialDecay,
    PruneLowMagnitude,
    UpdatePruningStep,
    prune_low_magnitude,
    sparsity,
    strip_pruning,
)
from pynn.compression.qat import FakeQuant, convert, quantize_aware
from pynn.compression.quantization import (
    QuantizedConv2D,
    QuantizedDense,
    float16_size,
    quantize,
    quantize_dynamic,
)
from pynn.compression.sparse import SPARSE_MIN_SPARSITY, compressed_size
from pynn.compression.structured import prune_structured

__all__ = ["SPARSE_MIN_SPARSITY", "ConstantSparsity", "Distiller", "FakeQuant",
           "PolynomialDecay", "PruneLowMagnitude", "QuantizedConv2D", "QuantizedDense",
           "UpdatePruningStep", "compressed_size", "convert", "float16_size",
           "prune_low_magnitude", "prune_structured", "quantize", "quantize_aware",
           "quantize_dynamic", "sparsity", "strip_pruning"]
