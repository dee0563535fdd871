"""``pynn.ops``: Keras 3's ``keras.ops`` names and semantics, each op with its gradient.

Ops take Tensors, Variables, NumPy arrays and scalars and return ``pynn.Tensor``; under a
``pynn.GradientTape`` (or inside a custom layer's training call) they record what
``tape.gradient`` needs. On the symbolic tensors of ``pynn.Input`` they add an op node to the
functional graph instead. ``numpy_ops`` holds the NumPy-like ops, ``nn`` the
neural-network ones (which reuse the layers' native and OpenCL kernels).
"""

from pynn.autodiff import Tensor
from pynn.layers.symbolic import KerasTensor
from pynn.ops import nn as _nn
from pynn.ops import numpy_ops as _numpy_ops
from pynn.ops._core import OPS
from pynn.ops.nn import *
from pynn.ops.numpy_ops import *
from pynn.ops.numpy_ops import convert_to_tensor
# keras.ops breadth: more NumPy-like and neural-network ops, composed of the device ops
from pynn.ops.numpy_extra import *
from pynn.ops.nn_extra import *
# -- opsm: keras.ops' remaining math (NaN reductions, quantiles, statistics, bitwise, ...)
from pynn.ops.numpy_math import *
# -- opss: keras.ops' remaining structural, FFT, control-flow and loss ops
from pynn.ops.structural import *
from pynn.ops.fft import *
from pynn.ops.control_flow import *
# keras.ops.linalg (branch linalg): the submodule, and its names at the top as Keras 3 has
# them (with slogdet and logdet); its norm adds the SVD's ord 2, -2 and 'nuc'
from pynn.ops import linalg
from pynn.ops.linalg import *
from pynn.variables import Variable

__all__ = [*sorted(OPS), "Tensor", "convert_to_tensor"]  # noqa: PLE0604
# -- opss: the names that are no graph op (queries, control flow, refusals) are exported too
from pynn.ops.control_flow import __all__ as _control_flow_names  # noqa: E402
from pynn.ops.fft import __all__ as _fft_names  # noqa: E402
from pynn.ops.structural import __all__ as _structural_names  # noqa: E402

__all__ += sorted({*_structural_names, *_fft_names, *_control_flow_names} - set(__all__))


def _install_operators(cls):
    """Python's operators on ``cls`` (Tensor, Variable, KerasTensor) as these ops; on
    KerasTensors they record op nodes of the functional graph."""

    def binary(fn, reflected=False):
        if reflected:
            return lambda self, other: fn(other, self)
        return lambda self, other: fn(self, other)

    for dunder, fn in (("add", _numpy_ops.add), ("sub", _numpy_ops.subtract),
                       ("mul", _numpy_ops.multiply), ("truediv", _numpy_ops.divide),
                       ("matmul", _numpy_ops.matmul), ("pow", _numpy_ops.power),
                       ("floordiv", _numpy_ops.floor_divide), ("mod", _numpy_ops.mod)):
        setattr(cls, f"__{dunder}__", binary(fn))
        setattr(cls, f"__r{dunder}__", binary(fn, reflected=True))
    for dunder, fn in (("lt", _numpy_ops.less), ("le", _numpy_ops.less_equal),
                       ("gt", _numpy_ops.greater), ("ge", _numpy_ops.greater_equal)):
        setattr(cls, f"__{dunder}__", binary(fn))
    cls.__neg__ = lambda self: _numpy_ops.negative(self)
    cls.__abs__ = lambda self: _numpy_ops.abs(self)
    cls.__pos__ = lambda self: self
    cls.__getitem__ = lambda self, key: _numpy_ops.getitem(self, key)


for _cls in (Tensor, Variable, KerasTensor):
    _install_operators(_cls)
# As for Tensor: array * variable must reach Variable.__rmul__, not an object array.
Variable.__array_ufunc__ = None
# The module-level names that shadow builtins (sum, max, abs, ...) are exported on purpose.
globals().update({name: getattr(_numpy_ops, name, None) or getattr(_nn, name, None) or OPS[name]
                  for name in OPS})


def _register_recurrent_activations():
    # The ops cell of SimpleRNN/LSTM/GRU (pynn.layers.recurrent, which does not import
    # pynn.ops) applies its named activations with these.
    from pynn.backend.api import RNN_ACTIVATIONS
    from pynn.layers import recurrent
    recurrent.ACTIVATION_FUNCTIONS.update({name: OPS[name] for name in RNN_ACTIVATIONS
                                           if name in OPS})
    # -- Keras 3's remaining activations with no recurrent kernel (they need the input or
    # a whole row): named, they run in the ops cell
    recurrent.ACTIVATION_FUNCTIONS.update({name: OPS[name] for name in recurrent.OPS_CELL_NAMES})


_register_recurrent_activations()


def _register_row_activations():
    # A layer's activation="log_softmax"/"sparsemax" (pynn.layers.base, which does not import
    # pynn.ops) runs these after its linear part.
    from pynn.backend.api import ACTIVATIONS_ON_ROWS
    from pynn.layers import base
    base.ROW_ACTIVATION_FUNCTIONS.update({name: OPS[name] for name in ACTIVATIONS_ON_ROWS
                                          if name in OPS})


_register_row_activations()
