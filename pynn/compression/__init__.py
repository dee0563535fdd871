"""Model compression (issue 18): pruning (``pynn.compression.pruning``), structured pruning
(``pynn.compression.structured``), sparse inference (``pynn.compression.sparse``) and
knowledge distillation (``pynn.compression.distillation``) and post-training int8
(``pynn.compression.quantization``)."""

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
from pynn.compression.quantization import QuantizedDense, quantize
from pynn.compression.sparse import SPARSE_MIN_SPARSITY, compressed_size
from pynn.compression.structured import prune_structured

__all__ = ["SPARSE_MIN_SPARSITY", "ConstantSparsity", "Distiller", "PolynomialDecay",
           "PruneLowMagnitude", "QuantizedDense", "UpdatePruningStep", "compressed_size",
           "prune_low_magnitude", "prune_structured", "quantize", "sparsity", "strip_pruning"]
