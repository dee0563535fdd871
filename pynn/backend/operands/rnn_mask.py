"""Operands of the general recurrence ops (native/rnn_mask.pyx, pynn/backend/opencl/rnn_mask.py).

The recurrence ops run what the whole-sequence ops of the rnn family do not: a mask, an
initial state, recurrent dropout, the final state. The input projection is not theirs: the
layer hands in ``xw = x @ kernel + input bias`` (a dense op over all N*T rows at once).

``cell`` is one of CELLS; ``c.code`` its index, ``c.gates`` its gate count k (G = k*U).
"""

from types import SimpleNamespace

from pynn.backend.api import ACTIVATIONS, DEFAULT_ALPHA, RNN_ACTIVATIONS
from pynn.backend.operands.common import activation_name, check_count, check_shape, flag

# gru: reset gate after the recurrent product (Keras's reset_after=True, recurrent bias row);
# gru_reset_before: reset_after=False (no recurrent bias).
CELLS = ("simple_rnn", "lstm", "gru", "gru_reset_before")
GATES = {"simple_rnn": 1, "lstm": 4, "gru": 3, "gru_reset_before": 3}


def _activation(op, what, name):
    act = activation_name(op, name)
    if act not in RNN_ACTIVATIONS:
        raise ValueError(f"{op}: {what} {name!r} is not supported by the recurrent kernels; "
                         f"expected one of {RNN_ACTIVATIONS}")
    return ACTIVATIONS.index(act), DEFAULT_ALPHA.get(act, 0.0)


def _cell(op, cell, activation, recurrent_activation, units):
    if cell not in CELLS:
        raise ValueError(f"{op}: cell must be one of {CELLS}, got {cell!r}")
    act, alpha = _activation(op, "activation", activation)
    ract, ralpha = _activation(op, "recurrent_activation", recurrent_activation)
    return SimpleNamespace(name=cell, code=CELLS.index(cell), gates=GATES[cell], units=units,
                           act=act, alpha=alpha, ract=ract, ralpha=ralpha)


def _optional(arrays, op, name, a, shape, like):
    if a is None:
        return None
    a = arrays.float_input(op, name, a, ndim=len(shape), like=like)
    check_shape(op, name, a, shape)
    return a


def recurrence_forward(arrays, xw, recurrent_kernel, recurrent_bias, h0, c0, mask,
                       recurrent_dropout, cell, activation, recurrent_activation,
                       return_sequences, go_backwards, zero_output_for_mask):
    op = "recurrence_forward"
    xw = arrays.float_input(op, "xw", xw, ndim=3)
    recurrent_kernel = arrays.float_input(op, "recurrent_kernel", recurrent_kernel, ndim=2,
                                          like=xw)
    u = recurrent_kernel.shape[0]
    c = _cell(op, cell, activation, recurrent_activation, u)
    g = c.gates * u
    n, t, _ = xw.shape
    check_shape(op, "recurrent_kernel", recurrent_kernel, (u, g))
    check_shape(op, "xw", xw, (n, t, g))
    if t == 0:
        raise ValueError(f"{op}: xw has 0 time steps, got shape {tuple(xw.shape)}")
    check_count(arrays, op, "gate buffer", n * t * g)
    if recurrent_bias is not None and cell != "gru":
        raise ValueError(f"{op}: only the 'gru' cell (reset_after) has a recurrent bias; "
                         f"got one of shape {tuple(recurrent_bias.shape)} for {cell!r}")
    recurrent_bias = _optional(arrays, op, "recurrent_bias", recurrent_bias, (g,), xw)
    if h0 is None:
        raise ValueError(f"{op}: h0 (N, U) is required (zeros for a fresh state)")
    h0 = _optional(arrays, op, "h0", h0, (n, u), xw)
    if (c0 is None) != (cell != "lstm"):
        raise ValueError(f"{op}: c0 (N, U) is required for the lstm cell and only for it; "
                         f"got {'None' if c0 is None else 'an array'} for {cell!r}")
    c0 = _optional(arrays, op, "c0", c0, (n, u), xw)
    mask = _optional(arrays, op, "mask", mask, (n, t), xw)
    recurrent_dropout = _optional(arrays, op, "recurrent_dropout", recurrent_dropout,
                                  (n, g), xw)
    flags = SimpleNamespace(return_sequences=flag(op, "return_sequences", return_sequences),
                            go_backwards=flag(op, "go_backwards", go_backwards),
                            zero_output_for_mask=flag(op, "zero_output_for_mask",
                                                      zero_output_for_mask))
    return c, xw, recurrent_kernel, recurrent_bias, h0, c0, mask, recurrent_dropout, flags


def cache_shapes(c, n, t):
    """(hs, cs, gates, aux, mask, recurrent_dropout): states with h0/c0 first (N, T+1, U), the
    activated gates in processing order (N, T, G), GRU's recurrent h-gate term (N, T, U), the
    mask (N, T) and the recurrent dropout multipliers (N, G). cs is hs for every cell but
    LSTM, aux is gates for every cell but gru."""
    u, g = c.units, c.gates * c.units
    return ((n, t + 1, u), (n, t + 1, u), (n, t, g), (n, t, u) if c.name == "gru" else (n, t, g),
            (n, t), (n, g))


def recurrence_backward(arrays, dy, dh_last, dc_last, recurrent_kernel, cache, cell, activation,
                        recurrent_activation, return_sequences, go_backwards,
                        zero_output_for_mask):
    op = "recurrence_backward"
    if not isinstance(cache, (tuple, list)) or len(cache) != 6:
        raise ValueError(f"{op}: 'cache' must be the tuple of 6 arrays recurrence_forward "
                         f"returned, got {type(cache).__name__}")
    hs = arrays.float_input(op, "cache[0]", cache[0], ndim=3)
    recurrent_kernel = arrays.float_input(op, "recurrent_kernel", recurrent_kernel, ndim=2,
                                          like=hs)
    u = recurrent_kernel.shape[0]
    c = _cell(op, cell, activation, recurrent_activation, u)
    n, t = hs.shape[0], hs.shape[1] - 1
    check_shape(op, "recurrent_kernel", recurrent_kernel, (u, c.gates * u))
    checked = []
    for i, (a, shape) in enumerate(zip(cache, cache_shapes(c, n, t))):
        a = arrays.float_input(op, f"cache[{i}]", a, ndim=len(shape), like=hs)
        check_shape(op, f"cache[{i}]", a, shape)
        checked.append(a)
    flags = SimpleNamespace(return_sequences=flag(op, "return_sequences", return_sequences),
                            go_backwards=flag(op, "go_backwards", go_backwards),
                            zero_output_for_mask=flag(op, "zero_output_for_mask",
                                                      zero_output_for_mask))
    want = (n, t, u) if flags.return_sequences else (n, u)
    dy = arrays.float_input(op, "dy", dy, ndim=len(want), like=hs)
    check_shape(op, "dy", dy, want)
    dh_last = _optional(arrays, op, "dh_last", dh_last, (n, u), hs)
    if dc_last is not None and cell != "lstm":
        raise ValueError(f"{op}: dc_last is only for the lstm cell, got one for {cell!r}")
    dc_last = _optional(arrays, op, "dc_last", dc_last, (n, u), hs)
    return c, dy, dh_last, dc_last, recurrent_kernel, checked, flags


def sequence_scale(arrays, x, scale):
    op = "sequence_scale"
    x = arrays.float_input(op, "x", x, ndim=3)
    scale = arrays.float_input(op, "scale", scale, ndim=2, like=x)
    check_shape(op, "scale", scale, (x.shape[0], x.shape[2]))
    return x, scale


def sequence_reverse(arrays, x):
    return arrays.float_input("sequence_reverse", "x", x, ndim=3)
