"""Operands of the recurrent ops (native/rnn.pyx, pynn/backend/opencl/rnn.py).

Forward ops return ``(cell, x, kernel, recurrent_kernel, bias or None, flags)``, backward ops
``(cell, dy, x, kernel, recurrent_kernel, cache, flags)``. ``cell`` holds the activation
codes (indices into ACTIVATIONS) with their Keras default parameters and the unit count;
``flags`` the checked booleans of the op, by name.
"""

from types import SimpleNamespace

from pynn.backend.api import ACTIVATIONS, DEFAULT_ALPHA, RNN_ACTIVATIONS
from pynn.backend.operands.common import activation_name, check_count, check_shape, flag

GATES = {"simple_rnn": 1, "lstm": 4, "gru": 3}


def _activation(op, what, name):
    act = activation_name(op, name)
    if act not in RNN_ACTIVATIONS:
        raise ValueError(f"{op}: {what} {name!r} is not supported by the recurrent kernels; "
                         f"expected one of {RNN_ACTIVATIONS}")
    return ACTIVATIONS.index(act), DEFAULT_ALPHA.get(act, 0.0)


def _cell(arrays, op, x, kernel, recurrent_kernel, activation, recurrent_activation):
    gates = GATES[op.rsplit("_", 1)[0]]
    act, alpha = _activation(op, "activation", activation)
    if recurrent_activation is None:
        ract, ralpha = None, None
    else:
        ract, ralpha = _activation(op, "recurrent_activation", recurrent_activation)
    x = arrays.float_input(op, "x", x, ndim=3)
    kernel = arrays.float_input(op, "kernel", kernel, ndim=2, like=x)
    recurrent_kernel = arrays.float_input(op, "recurrent_kernel", recurrent_kernel, ndim=2,
                                          like=x)
    units = recurrent_kernel.shape[0]
    check_shape(op, "recurrent_kernel", recurrent_kernel, (units, gates * units))
    check_shape(op, "kernel", kernel, (x.shape[2], gates * units))
    n, t, c = x.shape
    check_count(arrays, op, "gate buffer", n * t * gates * units)
    cell = SimpleNamespace(act=act, alpha=alpha, ract=ract, ralpha=ralpha, units=units,
                           gates=gates)
    return cell, x, kernel, recurrent_kernel


def bias_shape(cell, reset_after=False):
    """GRU with reset_after keeps an input and a recurrent bias row."""
    g = cell.gates * cell.units
    return (2, g) if reset_after else (g,)


def _bias(arrays, op, bias, shape, like):
    if bias is None:
        return None
    bias = arrays.float_input(op, "bias", bias, ndim=len(shape), like=like)
    check_shape(op, "bias", bias, shape)
    return bias


def _flags(op, **named):
    return SimpleNamespace(**{name: flag(op, name, v) for name, v in named.items()})


def _forward(arrays, op, x, kernel, recurrent_kernel, bias, activation, recurrent_activation,
             reset_after=False, **flags):
    cell, x, kernel, recurrent_kernel = _cell(arrays, op, x, kernel, recurrent_kernel,
                                              activation, recurrent_activation)
    flags = _flags(op, reset_after=reset_after, **flags)
    bias = _bias(arrays, op, bias, bias_shape(cell, flags.reset_after), x)
    return cell, x, kernel, recurrent_kernel, bias, flags


def cache_shapes(cell, n, t):
    """Shapes of the forward's cache: (h_seq,) for SimpleRNN; (h_seq, gates, c_seq) for
    LSTM; (h_seq, gates, rh) for GRU."""
    u = cell.units
    if cell.gates == 1:
        return [(n, t, u)]
    return [(n, t, u), (n, t, cell.gates * u), (n, t, u)]


def _backward(arrays, op, dy, x, kernel, recurrent_kernel, cache, activation,
              recurrent_activation, reset_after=False, **flags):
    cell, x, kernel, recurrent_kernel = _cell(arrays, op, x, kernel, recurrent_kernel,
                                              activation, recurrent_activation)
    flags = _flags(op, reset_after=reset_after, **flags)
    n, t, _ = x.shape
    want = (n, t, cell.units) if flags.return_sequences else (n, cell.units)
    dy = arrays.float_input(op, "dy", dy, ndim=len(want), like=x)
    check_shape(op, "dy", dy, want)
    shapes = cache_shapes(cell, n, t)
    if not isinstance(cache, (tuple, list)) or len(cache) != len(shapes):
        raise ValueError(f"{op}: 'cache' must be the tuple of {len(shapes)} arrays the forward "
                         f"op returned, got {type(cache).__name__}")
    checked = []
    for i, (a, shape) in enumerate(zip(cache, shapes)):
        a = arrays.float_input(op, f"cache[{i}]", a, ndim=len(shape))
        if a.dtype != x.dtype:
            raise TypeError(f"{op}: cache[{i}] has dtype {a.dtype}, x has {x.dtype}")
        check_shape(op, f"cache[{i}]", a, shape)
        checked.append(a)
    return cell, dy, x, kernel, recurrent_kernel, checked, flags


def simple_rnn_forward(arrays, x, kernel, recurrent_kernel, bias, activation,
                       return_sequences, go_backwards):
    return _forward(arrays, "simple_rnn_forward", x, kernel, recurrent_kernel, bias,
                    activation, None, return_sequences=return_sequences,
                    go_backwards=go_backwards)


def simple_rnn_backward(arrays, dy, x, kernel, recurrent_kernel, cache, activation,
                        return_sequences, go_backwards, need_input_grad):
    return _backward(arrays, "simple_rnn_backward", dy, x, kernel, recurrent_kernel, cache,
                     activation, None, return_sequences=return_sequences,
                     go_backwards=go_backwards, need_input_grad=need_input_grad)


def lstm_forward(arrays, x, kernel, recurrent_kernel, bias, activation, recurrent_activation,
                 return_sequences, go_backwards):
    return _forward(arrays, "lstm_forward", x, kernel, recurrent_kernel, bias, activation,
                    recurrent_activation, return_sequences=return_sequences,
                    go_backwards=go_backwards)


def lstm_backward(arrays, dy, x, kernel, recurrent_kernel, cache, activation,
                  recurrent_activation, return_sequences, go_backwards, need_input_grad):
    return _backward(arrays, "lstm_backward", dy, x, kernel, recurrent_kernel, cache,
                     activation, recurrent_activation, return_sequences=return_sequences,
                     go_backwards=go_backwards, need_input_grad=need_input_grad)


def gru_forward(arrays, x, kernel, recurrent_kernel, bias, activation, recurrent_activation,
                reset_after, return_sequences, go_backwards):
    return _forward(arrays, "gru_forward", x, kernel, recurrent_kernel, bias, activation,
                    recurrent_activation, reset_after, return_sequences=return_sequences,
                    go_backwards=go_backwards)


def gru_backward(arrays, dy, x, kernel, recurrent_kernel, cache, activation,
                 recurrent_activation, reset_after, return_sequences, go_backwards,
                 need_input_grad):
    return _backward(arrays, "gru_backward", dy, x, kernel, recurrent_kernel, cache,
                     activation, recurrent_activation, reset_after,
                     return_sequences=return_sequences, go_backwards=go_backwards,
                     need_input_grad=need_input_grad)
