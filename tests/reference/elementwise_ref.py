"""Float64 NumPy oracles of the elementwise family (native/elementwise.pyx,
opencl/elementwise.cl): pynn.ops' functions on backend arrays (issue 13)."""

import math

import numpy as np

UNARY = {"negative": np.negative, "abs": np.abs, "sign": np.sign, "exp": np.exp,
         "expm1": np.expm1, "log": np.log, "log1p": np.log1p, "sqrt": np.sqrt,
         "square": np.square, "reciprocal": lambda x: 1.0 / x, "sin": np.sin, "cos": np.cos,
         "tan": np.tan, "arcsin": np.arcsin, "arccos": np.arccos, "arctan": np.arctan,
         "sinh": np.sinh, "cosh": np.cosh, "tanh": np.tanh, "arcsinh": np.arcsinh,
         "arccosh": np.arccosh, "arctanh": np.arctanh, "floor": np.floor, "ceil": np.ceil,
         "round": np.round}
# -- opsk: keras.ops' special functions (erfinv's oracle is SciPy's, an independent method) --
UNARY.update({"erf": np.vectorize(math.erf, otypes=[np.float64]),
              "erfc": np.vectorize(math.erfc, otypes=[np.float64]),
              "erfinv": lambda x: __import__("scipy.special").special.erfinv(x)})
BINARY = {"add": np.add, "subtract": np.subtract, "multiply": np.multiply,
          "divide": np.true_divide, "maximum": np.maximum, "minimum": np.minimum,
          "power": np.power, "arctan2": np.arctan2, "equal": np.equal, "greater": np.greater,
          "greater_equal": np.greater_equal, "less": np.less, "less_equal": np.less_equal}
REDUCE = {"sum": np.sum, "max": np.max, "min": np.min, "prod": np.prod}


def elementwise_unary_ref(x, op):
    return UNARY[op](np.asarray(x, np.float64))


def elementwise_binary_ref(a, b, op):
    return BINARY[op](np.asarray(a, np.float64), np.asarray(b, np.float64)).astype(np.float64)


def reduce_axes_ref(x, axes, op, keepdims=False):
    axes = tuple(axes) if isinstance(axes, (list, tuple)) else axes
    return np.asarray(REDUCE[op](np.asarray(x, np.float64), axis=axes, keepdims=keepdims))
# -- opsm: i0 and its derivative i1 (SciPy's, an independent method: Chebyshev expansions) --
UNARY.update({"i0": lambda x: __import__("scipy.special").special.i0(x),
              "i1": lambda x: __import__("scipy.special").special.i1(x)})
# -- opsm: keras.ops.nextafter (its float32 step is checked in tests/test_ops_math.py)
BINARY.update({"nextafter": np.nextafter})
# -- opsm: the integer family (api.INTEGER_BINARY / INTEGER_UNARY): NumPy's own ufuncs --
INTEGER_BINARY = {"bitwise_and": np.bitwise_and, "bitwise_or": np.bitwise_or,
                  "bitwise_xor": np.bitwise_xor, "left_shift": np.left_shift,
                  "right_shift": np.right_shift, "gcd": np.gcd, "lcm": np.lcm}
INTEGER_UNARY = {"invert": np.invert}


def integer_binary_ref(a, b, op):
    with np.errstate(all="ignore"):
        return INTEGER_BINARY[op](np.asarray(a), np.asarray(b))


def integer_unary_ref(x, op):
    return INTEGER_UNARY[op](np.asarray(x))
