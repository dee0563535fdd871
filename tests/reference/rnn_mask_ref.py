"""NumPy float64 oracles for the general recurrence ops (native/rnn_mask.pyx).

Keras 3's step loop (keras/src/backend/torch/rnn.py) written out with its mask rule: at a
masked step every state keeps its value and the output repeats the previous output (zeros
before the first unmasked step), or is zero with zero_output_for_mask. The cells are
keras/src/layers/rnn/{simple_rnn,lstm,gru}.py with recurrent dropout as in their
implementation 1: gate block g of the recurrent product reads h_{t-1} * rdrop[:, g].
The backward oracle is the central finite difference of the forward one.
"""

import numpy as np

from tests.reference.rnn_ref import act, numerical_grads

GATES = {"simple_rnn": 1, "lstm": 4, "gru": 3, "gru_reset_before": 3}


def recurrence_forward_ref(xw, recurrent_kernel, recurrent_bias, h0, c0=None, mask=None,
                           recurrent_dropout=None, cell="lstm", activation="tanh",
                           recurrent_activation="sigmoid", return_sequences=False,
                           go_backwards=False, zero_output_for_mask=False):
    """-> (y, h_last, c_last or None)."""
    def f64(a):
        return None if a is None else np.asarray(a, dtype=np.float64)

    xw, rk, rb, h, c = f64(xw), f64(recurrent_kernel), f64(recurrent_bias), f64(h0), f64(c0)
    n, t, g = xw.shape
    u = rk.shape[0]
    mask = np.ones((n, t)) if mask is None else f64(mask)
    rd = np.ones((n, g)) if recurrent_dropout is None else f64(recurrent_dropout)
    rb = np.zeros(g) if rb is None else rb
    prev_out = np.zeros((n, u))
    outs = []
    for s in range(t):
        tx = t - 1 - s if go_backwards else s
        x = xw[:, tx]
        hd = [h * rd[:, k * u:(k + 1) * u] for k in range(GATES[cell])]

        def rec(k, hd=hd):
            return hd[k] @ rk[:, k * u:(k + 1) * u] + rb[k * u:(k + 1) * u]

        c_new = None
        if cell == "simple_rnn":
            h_new = act(activation, x + rec(0))
        elif cell == "lstm":
            i = act(recurrent_activation, x[:, :u] + rec(0))
            f = act(recurrent_activation, x[:, u:2 * u] + rec(1))
            cc = act(activation, x[:, 2 * u:3 * u] + rec(2))
            o = act(recurrent_activation, x[:, 3 * u:] + rec(3))
            c_new = f * c + i * cc
            h_new = o * act(activation, c_new)
        else:
            z = act(recurrent_activation, x[:, :u] + rec(0))
            r = act(recurrent_activation, x[:, u:2 * u] + rec(1))
            if cell == "gru":
                hh = act(activation, x[:, 2 * u:] + r * rec(2))
            else:
                hh = act(activation, x[:, 2 * u:] + (r * hd[2]) @ rk[:, 2 * u:])
            h_new = z * h + (1 - z) * hh
        m = mask[:, tx:tx + 1] != 0
        out = np.where(m, h_new, prev_out)
        h = np.where(m, h_new, h)
        if c_new is not None:
            c = np.where(m, c_new, c)
        prev_out = out
        outs.append(np.where(m, out, 0.0) if zero_output_for_mask else out)
    y = np.stack(outs, axis=1)
    return (y if return_sequences else y[:, -1]), h, (c if cell == "lstm" else None)


def recurrence_backward_ref(dy, dh_last, dc_last, xw, recurrent_kernel, recurrent_bias, h0,
                            c0=None, mask=None, recurrent_dropout=None, **options):
    """-> (dxw, drecurrent_kernel, drecurrent_bias or None, dh0, dc0 or None): the
    gradients of sum(dy * y) + sum(dh_last * h_last) + sum(dc_last * c_last)."""
    def loss_parts(xw_, rk_, rb_, h0_, c0_):
        y, h, c = recurrence_forward_ref(xw_, rk_, rb_, h0_, c0_, mask, recurrent_dropout,
                                         **options)
        parts = [y.reshape(-1)]
        parts.append(h.reshape(-1) if dh_last is not None else np.zeros(0))
        parts.append(c.reshape(-1) if dc_last is not None else np.zeros(0))
        return np.concatenate(parts)

    weights = np.concatenate([np.asarray(dy, np.float64).reshape(-1)]
                             + [np.asarray(a, np.float64).reshape(-1)
                                for a in (dh_last, dc_last) if a is not None])
    return tuple(numerical_grads(loss_parts, [xw, recurrent_kernel, recurrent_bias, h0, c0],
                                 weights))


def sequence_scale_ref(x, scale):
    return np.asarray(x, np.float64) * np.asarray(scale, np.float64)[:, None, :]


def sequence_reverse_ref(x):
    return np.asarray(x, np.float64)[:, ::-1]
