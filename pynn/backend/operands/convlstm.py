"""Operands of the convlstm ops (native/convlstm.pyx, pynn/backend/opencl/convlstm.py).

Legend: N batch, T time steps, D/H/W spatial extents, F filters, G = 4F gates (i, f, c, o),
KD/KH/KW the recurrent kernel extents. xw (N, T, D, H, W, G), recurrent kernel (KD, KH, KW,
F, G) (Keras 3's layout, ConvLSTM1D/2D's padded to 3-D with unit extents), states
(N, D, H, W, F). Every check runs before a kernel is entered.
"""

from pynn.backend.operands.common import check_count, check_shape, flag, same_dtype

# The activations the recurrence kernels fuse; a code is the index (native ACT_* enums).
CONVLSTM_ACTIVATIONS = ("linear", "tanh", "sigmoid", "hard_sigmoid", "relu")


def activation_code(op, name, activation):
    value = "linear" if activation is None else activation
    if not isinstance(value, str) or value.lower() not in CONVLSTM_ACTIVATIONS:
        raise ValueError(f"{op}: '{name}' must be one of {CONVLSTM_ACTIVATIONS}, got "
                         f"{activation!r}")
    return CONVLSTM_ACTIVATIONS.index(value.lower())


def convlstm_geometry(op, xw_shape, kernel_shape):
    n, t, d, h, w, gates = xw_shape
    kd, kh, kw, f, kg = kernel_shape
    if t < 1:
        raise ValueError(f"{op}: 'xw' must have at least one time step, got shape "
                         f"{tuple(xw_shape)}")
    if min(kd, kh, kw, f) < 1 or kg != 4 * f:
        raise ValueError(f"{op}: 'recurrent_kernel' must have shape (KD, KH, KW, F, 4F) with "
                         f"positive extents, got {tuple(kernel_shape)}")
    if gates != kg:
        raise ValueError(f"{op}: 'xw' must have 4F = {kg} gate channels (the recurrent "
                         f"kernel's last axis), got shape {tuple(xw_shape)}")
    return dict(N=n, D=d, H=h, W=w, F=f, KD=kd, KH=kh, KW=kw)


def _state(arrays, op, name, a, like, shape):
    if a is None:
        return None
    a = arrays.float_input(op, name, a, ndim=5, like=like)
    check_shape(op, name, a, shape)
    return a


def convlstm_forward(arrays, xw, recurrent_kernel, h0, c0, mask, recurrent_dropout,
                     activation, recurrent_activation, op="convlstm_forward"):
    """-> (xw, recurrent_kernel, h0, c0, mask, recurrent_dropout, act, ract, g); mask (N, T)
    of 1/0 or None; recurrent_dropout (4, N, D, H, W, F) or None."""
    act = activation_code(op, "activation", activation)
    ract = activation_code(op, "recurrent_activation", recurrent_activation)
    xw = arrays.float_input(op, "xw", xw, ndim=6)
    rk = arrays.float_input(op, "recurrent_kernel", recurrent_kernel, ndim=5, like=xw)
    same_dtype(op, ("xw", xw), ("recurrent_kernel", rk))
    g = convlstm_geometry(op, xw.shape, rk.shape)
    state = (g["N"], g["D"], g["H"], g["W"], g["F"])
    h0 = _state(arrays, op, "h0", h0, xw, state)
    c0 = _state(arrays, op, "c0", c0, xw, state)
    if mask is not None:
        mask = arrays.float_input(op, "mask", mask, ndim=2, like=xw)
        check_shape(op, "mask", mask, tuple(xw.shape[:2]))
    check_count(arrays, op, "xw", xw.size)
    check_count(arrays, op, "state vol2col", g["N"] * g["D"] * g["H"] * g["W"] * g["KD"]
                * g["KH"] * g["KW"] * g["F"])
    if recurrent_dropout is not None:
        recurrent_dropout = arrays.float_input(op, "recurrent_dropout", recurrent_dropout,
                                               ndim=6, like=xw)
        check_shape(op, "recurrent_dropout", recurrent_dropout, (4,) + state)
    return xw, rk, h0, c0, mask, recurrent_dropout, act, ract, g


def convlstm_backward(arrays, dy, dh_last, dc_last, recurrent_kernel, zs, hs, activation,
                      recurrent_activation, return_sequences, op="convlstm_backward"):
    """-> (dy, dh_last, dc_last, recurrent_kernel, act, ract); zs / hs the forward's
    cache (T, N, D, H, W, 4F) / (T + 1, N, D, H, W, F)."""
    act = activation_code(op, "activation", activation)
    ract = activation_code(op, "recurrent_activation", recurrent_activation)
    sequences = flag(op, "return_sequences", return_sequences)
    t = zs.shape[0]
    state = tuple(hs.shape[1:])
    dy = arrays.float_input(op, "dy", dy, like=zs)
    want = (state[0], t) + state[1:] if sequences else state
    check_shape(op, "dy", dy, want)
    rk = arrays.float_input(op, "recurrent_kernel", recurrent_kernel, ndim=5, like=zs)
    check_shape(op, "recurrent_kernel", rk, tuple(rk.shape[:3]) + (state[-1], 4 * state[-1]))
    dh_last = _state(arrays, op, "dh_last", dh_last, zs, state)
    dc_last = _state(arrays, op, "dc_last", dc_last, zs, state)
    return dy, dh_last, dc_last, rk, act, ract
