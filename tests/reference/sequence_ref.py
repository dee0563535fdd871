"""float64 NumPy oracles of the 1-D layers that run on 2-D ops (pynn/layers/sequence.py):
UpSampling1D, ZeroPadding1D, Cropping1D, Conv1DTranspose, SeparableConv1D. Written on the
time axis directly, with no 2-D view, so they check the view as well as the ops.

Legend: N batch, T time steps, C channels, F filters, K kernel taps, M depth multiplier.
'same' padding follows Keras (TensorFlow's rule): total pad max((ceil(T/s) - 1)*s + k_eff - T,
0), the odd step after the data. A transposed conv is the adjoint of that conv: tap k of input
step i lands on output step i*s + k*d - pad_left, where pad_left is the forward conv's for
the transposed conv's output length.
"""

import numpy as np


def _activation(z, name):
    return {"linear": z, "relu": np.maximum(z, 0), "tanh": np.tanh(z),
            "sigmoid": 1 / (1 + np.exp(-z))}[name]


def _same_left_pad(length, k_eff, stride):
    total = max((-(-length // stride) - 1) * stride + k_eff - length, 0)
    return total // 2


def upsampling1d_ref(x, size):
    return np.repeat(np.asarray(x, np.float64), size, axis=1)


def zero_padding1d_ref(x, padding):
    return np.pad(np.asarray(x, np.float64), ((0, 0), tuple(padding), (0, 0)))


def cropping1d_ref(x, cropping):
    x = np.asarray(x, np.float64)
    return x[:, cropping[0]:x.shape[1] - cropping[1]]


def conv1d_transpose_output_length(t, k, stride, dilation, padding, output_padding):
    """Keras 3's deconv_output_length."""
    k_eff = (k - 1) * dilation + 1
    if output_padding is None:
        return t * stride if padding == "same" else t * stride + max(k_eff - stride, 0)
    pad = k_eff // 2 if padding == "same" else 0
    return (t - 1) * stride + k_eff - 2 * pad + output_padding


def conv1d_transpose_ref(x, kernel, bias, stride, padding, output_padding, dilation,
                         activation="linear"):
    """x (N, T, C), kernel (K, F, C) (Keras's layout) -> (N, L, F)."""
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    n, t, _ = x.shape
    k, f, _ = kernel.shape
    length = conv1d_transpose_output_length(t, k, stride, dilation, padding, output_padding)
    left = _same_left_pad(length, (k - 1) * dilation + 1, stride) if padding == "same" else 0
    z = np.zeros((n, length, f))
    for i in range(t):
        for tap in range(k):
            j = i * stride + tap * dilation - left
            if 0 <= j < length:
                z[:, j] += x[:, i] @ kernel[tap].T
    if bias is not None:
        z += np.asarray(bias, np.float64)
    return _activation(z, activation)


def separable_conv1d_ref(x, depthwise_kernel, pointwise_kernel, bias, stride, padding,
                         dilation, activation="linear"):
    """x (N, T, C), depthwise_kernel (K, C, M), pointwise_kernel (1, C*M, F) -> (N, TO, F);
    depthwise output channel c*M + m, Keras's order."""
    x = np.asarray(x, np.float64)
    dk = np.asarray(depthwise_kernel, np.float64)
    pk = np.asarray(pointwise_kernel, np.float64)
    n, t, c = x.shape
    k, _, m = dk.shape
    k_eff = (k - 1) * dilation + 1
    if padding == "same":
        out = -(-t // stride)
        left = _same_left_pad(t, k_eff, stride)
    else:
        out = (t - k_eff) // stride + 1
        left = 0
    xp = np.zeros((n, max(t + 2 * k_eff, (out - 1) * stride + k_eff + left), c))
    xp[:, :t] = x
    xp = np.roll(xp, left, axis=1)
    mid = np.zeros((n, out, c, m))
    for o in range(out):
        for tap in range(k):
            mid[:, o] += xp[:, o * stride + tap * dilation, :, None] * dk[tap]
    z = mid.reshape(n, out, c * m) @ pk[0]
    if bias is not None:
        z += np.asarray(bias, np.float64)
    return _activation(z, activation)


# -- Keras 3's DepthwiseConv1D ---------------------------------------------------------------
def depthwise_conv1d_ref(x, kernel, bias, stride, padding, dilation, activation="linear"):
    """x (N, T, C), kernel (K, C, M) -> (N, TO, C*M), output channel c*M + m: the
    separable conv's depthwise half (its pointwise kernel the identity)."""
    c, m = np.shape(kernel)[1:]
    return separable_conv1d_ref(x, kernel, np.eye(c * m)[None], bias, stride, padding,
                                dilation, activation)
