"""Float64 NumPy oracle of the convlstm ops and of Keras 3's ConvLSTM layers.

Legend: N batch, T time steps, D/H/W spatial, C input channels, F filters, G = 4F gates in
Keras's order i, f, c, o. Written from Keras's ConvLSTMCell.call: one step is
z = conv(x_t, kernel, strides, padding, dilation) + bias + conv(h, recurrent_kernel, 'same'),
i = ract(z_i), f = ract(z_f), c = f*c + i*act(z_c), o = ract(z_o), h = o*act(c).
Everything runs on 3-D spatial data; 1-D and 2-D inputs gain unit axes first.
"""

import numpy as np

from tests.reference.conv3d_ref import conv3d_forward_ref

ACTS = {
    "linear": lambda v: v,
    "tanh": np.tanh,
    "sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)),
    "hard_sigmoid": lambda v: np.clip(v / 6.0 + 0.5, 0.0, 1.0),
    "relu": lambda v: np.maximum(v, 0.0),
}


def same_conv_ref(h, kernel):
    """Keras's recurrent conv: 'same', stride 1, h (N, D, H, W, F), kernel (KD, KH, KW, F, G)."""
    n, d, hh, w, f = h.shape
    kd, kh, kw = kernel.shape[:3]
    pad = [(0, 0)] + [((k - 1) // 2, k - 1 - (k - 1) // 2) for k in (kd, kh, kw)] + [(0, 0)]
    hp = np.pad(h, pad)
    out = np.zeros((n, d, hh, w, kernel.shape[-1]))
    for a in range(kd):
        for b in range(kh):
            for c in range(kw):
                out += hp[:, a:a + d, b:b + hh, c:c + w] @ kernel[a, b, c]
    return out


def convlstm_forward_ref(xw, recurrent_kernel, h0=None, c0=None, mask=None,
                         recurrent_dropout=None, activation="tanh",
                         recurrent_activation="sigmoid", return_sequences=False,
                         go_backwards=False, zero_output_for_mask=False):
    """The op: xw (N, T, D, H, W, 4F) -> (y, h_last, c_last), y in processing order. mask
    (N, T): Keras's backend rnn loop (a masked sample keeps its states; its output is the
    previous output, zeros at first, or zeros with zero_output_for_mask). recurrent_dropout
    (4, N, D, H, W, F): gate k's recurrent conv reads h * recurrent_dropout[k]."""
    xw = np.asarray(xw, np.float64)
    rk = np.asarray(recurrent_kernel, np.float64)
    act, ract = ACTS[activation], ACTS[recurrent_activation]
    f = rk.shape[3]
    state = xw.shape[:1] + xw.shape[2:-1] + (f,)
    h = np.zeros(state) if h0 is None else np.asarray(h0, np.float64)
    c = np.zeros(state) if c0 is None else np.asarray(c0, np.float64)
    steps = range(xw.shape[1] - 1, -1, -1) if go_backwards else range(xw.shape[1])
    ys = []
    out = np.zeros(state)
    for t in steps:
        if recurrent_dropout is None:
            z = xw[:, t] + same_conv_ref(h, rk)
        else:
            z = xw[:, t] + np.concatenate(
                [same_conv_ref(h * recurrent_dropout[k], rk[..., k * f:(k + 1) * f])
                 for k in range(4)], axis=-1)
        i, fg = ract(z[..., :f]), ract(z[..., f:2 * f])
        cc, o = act(z[..., 2 * f:3 * f]), ract(z[..., 3 * f:])
        c_new = fg * c + i * cc
        h_new = o * act(c_new)
        if mask is None:
            h, c, out = h_new, c_new, h_new
        else:
            m = np.asarray(mask, bool)[:, t].reshape((-1,) + (1,) * (h.ndim - 1))
            out = np.where(m, h_new, 0.0 if zero_output_for_mask else out)
            h, c = np.where(m, h_new, h), np.where(m, c_new, c)
        ys.append(out)
    y = np.stack(ys, axis=1) if return_sequences else out
    return y, h, c


def to_3d(x, rank, time_axis=True):
    """(N, [T,] *spatial(rank), C) -> (N, [T,] D, H, W, C) with unit leading spatial axes."""
    lead = 2 if time_axis else 1
    shape = x.shape[:lead] + (1,) * (3 - rank) + x.shape[lead:]
    return np.reshape(x, shape)


def kernel_to_3d(kernel, rank):
    return np.reshape(kernel, (1,) * (3 - rank) + kernel.shape)


def convlstm_layer_ref(x, kernel, recurrent_kernel, bias, rank, strides=1, padding="valid",
                       dilation_rate=1, h0=None, c0=None, activation="tanh",
                       recurrent_activation="sigmoid", return_sequences=False,
                       go_backwards=False, mask=None, zero_output_for_mask=False):
    """Keras's ConvLSTM{rank}D on x (N, T, *spatial, C) -> (y, h, c) in the layer's rank."""
    x = np.asarray(x, np.float64)
    n, t = x.shape[:2]
    strides = (1,) * (3 - rank) + ((strides,) * rank if np.isscalar(strides) else tuple(strides))
    dil = (1,) * (3 - rank) + ((dilation_rate,) * rank if np.isscalar(dilation_rate)
                               else tuple(dilation_rate))
    x3 = to_3d(x, rank)
    frames = x3.reshape((n * t,) + x3.shape[2:])
    k3 = kernel_to_3d(np.asarray(kernel, np.float64), rank)
    xw, _ = conv3d_forward_ref(frames, k3,
                               None if bias is None else np.asarray(bias, np.float64),
                               strides, padding, dil)
    xw = xw.reshape((n, t) + xw.shape[1:])
    h0 = None if h0 is None else to_3d(np.asarray(h0), rank, time_axis=False)
    c0 = None if c0 is None else to_3d(np.asarray(c0), rank, time_axis=False)
    y, h, c = convlstm_forward_ref(xw, kernel_to_3d(np.asarray(recurrent_kernel, np.float64),
                                                    rank),
                                   h0, c0, mask, None, activation, recurrent_activation,
                                   return_sequences, go_backwards, zero_output_for_mask)
    spatial = h.shape[1:-1][3 - rank:]
    out_state = (n,) + spatial + (h.shape[-1],)
    y = y.reshape(((n, t) if return_sequences else (n,)) + spatial + (h.shape[-1],))
    return y, h.reshape(out_state), c.reshape(out_state)
