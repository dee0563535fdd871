"""NumPy float64 oracles for the recurrent ops (slow, obviously correct).

Legend: N batch, T time steps, C input features, U units.
x (N, T, C); kernel (C, k*U); recurrent_kernel (U, k*U); k = 1 (SimpleRNN), 4 (LSTM, gates
i, f, c, o), 3 (GRU, gates z, r, h). Each forward is Keras 3's cell written out once per time
step, in float64, straight from keras/src/layers/rnn/{simple_rnn,lstm,gru}.py. The initial
state is zero. go_backwards reads the input from the last step to the first and returns the
outputs in processing order (as Keras does: the sequence is not flipped back).

The backward oracle is not a hand-written BPTT: it is the central finite difference of the
forward oracle (``numerical_grads``), which is slow but cannot share a derivation bug with the
native kernels.
"""

import numpy as np

# Keras's defaults for the string forms of the parametrized activations.
_ALPHA = {"leaky_relu": 0.2, "elu": 1.0}
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def act(name, z):
    z = np.asarray(z, dtype=np.float64)
    if name == "tanh":
        return np.tanh(z)
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "linear":
        return z
    if name == "leaky_relu":
        return np.where(z > 0, z, _ALPHA["leaky_relu"] * z)
    if name == "elu":
        return np.where(z > 0, z, _ALPHA["elu"] * np.expm1(np.minimum(z, 0)))
    if name == "selu":
        return _SELU_SCALE * np.where(z > 0, z, _SELU_ALPHA * np.expm1(np.minimum(z, 0)))
    if name == "softplus":
        return np.logaddexp(z, 0.0)
    # -- issue 12: the activations whose derivative the kernels take from the output
    if name == "relu6":
        return np.clip(z, 0.0, 6.0)
    if name == "hard_sigmoid":
        return np.clip(z + 3.0, 0.0, 6.0) / 6.0
    if name == "exponential":
        return np.exp(z)
    if name == "softsign":
        return z / (1.0 + np.abs(z))
    raise ValueError(f"rnn_ref: no oracle for activation {name!r}")


def _steps(x, go_backwards):
    t_len = x.shape[1]
    return [t_len - 1 - s for s in range(t_len)] if go_backwards else list(range(t_len))


def _finish(hs, n, units, return_sequences):
    h_seq = np.stack(hs, axis=1) if hs else np.zeros((n, 0, units))
    return h_seq if return_sequences else h_seq[:, -1]


def simple_rnn_forward_ref(x, kernel, recurrent_kernel, bias, activation="tanh",
                           return_sequences=True, go_backwards=False):
    x, w, r = (np.asarray(a, dtype=np.float64) for a in (x, kernel, recurrent_kernel))
    n, units = x.shape[0], r.shape[0]
    b = np.zeros(units) if bias is None else np.asarray(bias, dtype=np.float64)
    h = np.zeros((n, units))
    hs = []
    for t in _steps(x, go_backwards):
        h = act(activation, x[:, t] @ w + b + h @ r)
        hs.append(h)
    return _finish(hs, n, units, return_sequences)


def lstm_forward_ref(x, kernel, recurrent_kernel, bias, activation="tanh",
                     recurrent_activation="sigmoid", return_sequences=True, go_backwards=False):
    x, w, r = (np.asarray(a, dtype=np.float64) for a in (x, kernel, recurrent_kernel))
    n, units = x.shape[0], r.shape[0]
    b = np.zeros(4 * units) if bias is None else np.asarray(bias, dtype=np.float64)
    h = np.zeros((n, units))
    c = np.zeros((n, units))
    hs = []
    for t in _steps(x, go_backwards):
        z = x[:, t] @ w + b + h @ r
        zi, zf, zc, zo = (z[:, k * units:(k + 1) * units] for k in range(4))
        i = act(recurrent_activation, zi)
        f = act(recurrent_activation, zf)
        o = act(recurrent_activation, zo)
        c = f * c + i * act(activation, zc)
        h = o * act(activation, c)
        hs.append(h)
    return _finish(hs, n, units, return_sequences)


def gru_forward_ref(x, kernel, recurrent_kernel, bias, activation="tanh",
                    recurrent_activation="sigmoid", reset_after=True, return_sequences=True,
                    go_backwards=False):
    x, w, r = (np.asarray(a, dtype=np.float64) for a in (x, kernel, recurrent_kernel))
    n, units = x.shape[0], r.shape[0]
    if bias is None:
        b_in, b_rec = np.zeros(3 * units), np.zeros(3 * units)
    elif reset_after:
        b_in, b_rec = np.asarray(bias, dtype=np.float64)
    else:
        b_in, b_rec = np.asarray(bias, dtype=np.float64), np.zeros(3 * units)
    u = units
    h = np.zeros((n, units))
    hs = []
    for t in _steps(x, go_backwards):
        xz = x[:, t] @ w + b_in
        rz = h @ r[:, :2 * u] + b_rec[:2 * u]
        z = act(recurrent_activation, xz[:, :u] + rz[:, :u])
        rr = act(recurrent_activation, xz[:, u:2 * u] + rz[:, u:])
        if reset_after:
            hh = act(activation, xz[:, 2 * u:] + rr * (h @ r[:, 2 * u:] + b_rec[2 * u:]))
        else:
            hh = act(activation, xz[:, 2 * u:] + (rr * h) @ r[:, 2 * u:])
        h = z * h + (1 - z) * hh
        hs.append(h)
    return _finish(hs, n, units, return_sequences)


def numerical_grads(fn, arrays, dy, eps=1e-6):
    """d(sum(dy * fn(*arrays)))/d(each array) by central differences, float64.

    ``arrays`` is a list of float64 arrays (None entries get None back); ``fn`` returns the
    output the upstream gradient ``dy`` multiplies.
    """
    arrays = [None if a is None else np.array(a, dtype=np.float64) for a in arrays]
    dy = np.asarray(dy, dtype=np.float64)
    grads = []
    for a in arrays:
        if a is None:
            grads.append(None)
            continue
        g = np.zeros_like(a)
        flat, gflat = a.reshape(-1), g.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + eps
            up = float(np.sum(dy * fn(*arrays)))
            flat[i] = old - eps
            down = float(np.sum(dy * fn(*arrays)))
            flat[i] = old
            gflat[i] = (up - down) / (2 * eps)
        grads.append(g)
    return grads
