"""NumPy float64 oracles for the pooling ops (slow, obviously correct).

Legend: N batch, H/W spatial, C channels, HO/WO output spatial.
Every op loops over the output pixels and clips its window to the input, so padding is never
read: max ignores it, 'same' average divides by the in-bounds pixel count (TF / JAX Keras).
"""

import numpy as np


def _axis(n, k, stride, padding):
    """(pad_before, out) for one axis: Keras 'same' puts the odd padding pixel after."""
    if padding == "same":
        out = -(-n // stride)
        return max((out - 1) * stride + k - n, 0) // 2, out
    return 0, max((n - k) // stride + 1, 0)


def windows(input_shape, pool_size, strides, padding):
    """Yield (ho, wo, h0, h1, w0, w1): every output pixel and its clipped input window."""
    _, h, w, _ = input_shape
    pt, ho_n = _axis(h, pool_size[0], strides[0], padding)
    pl, wo_n = _axis(w, pool_size[1], strides[1], padding)
    for ho in range(ho_n):
        h0 = max(ho * strides[0] - pt, 0)
        h1 = min(ho * strides[0] - pt + pool_size[0], h)
        for wo in range(wo_n):
            w0 = max(wo * strides[1] - pl, 0)
            w1 = min(wo * strides[1] - pl + pool_size[1], w)
            yield ho, wo, h0, h1, w0, w1


def output_shape(input_shape, pool_size, strides, padding):
    n, h, w, c = input_shape
    return (n, _axis(h, pool_size[0], strides[0], padding)[1],
            _axis(w, pool_size[1], strides[1], padding)[1], c)


def maxpool2d_forward_ref(x, pool_size, strides, padding):
    x = np.asarray(x, np.float64)
    y = np.zeros(output_shape(x.shape, pool_size, strides, padding))
    arg = np.zeros(y.shape, np.int64)
    for ho, wo, h0, h1, w0, w1 in windows(x.shape, pool_size, strides, padding):
        win = x[:, h0:h1, w0:w1, :].reshape(x.shape[0], (h1 - h0) * (w1 - w0), x.shape[3])
        i = np.argmax(win, axis=1)  # first maximum in row-major window order
        y[:, ho, wo, :] = np.take_along_axis(win, i[:, None, :], axis=1)[:, 0, :]
        arg[:, ho, wo, :] = (h0 + i // (w1 - w0)) * x.shape[2] + w0 + i % (w1 - w0)
    return y, arg


def maxpool2d_backward_ref(dy, argmax, input_shape):
    n, h, w, c = input_shape
    dx = np.zeros((n, h * w, c))
    dy = np.asarray(dy, np.float64)
    for i in range(n):
        for p in np.ndindex(*dy.shape[1:3]):
            for ch in range(c):
                dx[i, argmax[i, p[0], p[1], ch], ch] += dy[i, p[0], p[1], ch]
    return dx.reshape(input_shape)


def avgpool2d_forward_ref(x, pool_size, strides, padding):
    x = np.asarray(x, np.float64)
    y = np.zeros(output_shape(x.shape, pool_size, strides, padding))
    for ho, wo, h0, h1, w0, w1 in windows(x.shape, pool_size, strides, padding):
        y[:, ho, wo, :] = x[:, h0:h1, w0:w1, :].mean(axis=(1, 2))
    return y


def avgpool2d_backward_ref(dy, input_shape, pool_size, strides, padding):
    dy = np.asarray(dy, np.float64)
    dx = np.zeros(input_shape)
    for ho, wo, h0, h1, w0, w1 in windows(input_shape, pool_size, strides, padding):
        dx[:, h0:h1, w0:w1, :] += dy[:, ho, wo, None, None, :] / ((h1 - h0) * (w1 - w0))
    return dx


def global_avgpool2d_forward_ref(x):
    return np.asarray(x, np.float64).mean(axis=(1, 2))


def global_avgpool2d_backward_ref(dy, input_shape):
    n, h, w, c = input_shape
    return np.broadcast_to(np.asarray(dy, np.float64)[:, None, None, :] / (h * w),
                           input_shape).copy()


def global_maxpool2d_forward_ref(x):
    x = np.asarray(x, np.float64)
    flat = x.reshape(x.shape[0], x.shape[1] * x.shape[2], x.shape[3])
    arg = np.argmax(flat, axis=1)
    return np.take_along_axis(flat, arg[:, None, :], axis=1)[:, 0, :], arg


def global_maxpool2d_backward_ref(dy, argmax, input_shape):
    n, h, w, c = input_shape
    dx = np.zeros((n, h * w, c))
    for i in range(n):
        dx[i, argmax[i], np.arange(c)] = dy[i]
    return dx.reshape(input_shape)


# -- 3-D pooling (MaxPooling3D, AveragePooling3D; branch vol) --------------------------------

def windows3d(input_shape, pool_size, strides, padding):
    """Yield (do, ho, wo, (d0, d1), (h0, h1), (w0, w1)): every output voxel and its clipped
    input window."""
    axes = []
    for size, k, s in zip(input_shape[1:4], pool_size, strides):
        pad, out = _axis(size, k, s, padding)
        axes.append([(max(o * s - pad, 0), min(o * s - pad + k, size)) for o in range(out)])
    for do, dw in enumerate(axes[0]):
        for ho, hw in enumerate(axes[1]):
            for wo, ww in enumerate(axes[2]):
                yield do, ho, wo, dw, hw, ww


def output_shape3d(input_shape, pool_size, strides, padding):
    n, *spatial, c = input_shape
    return (n, *(_axis(size, k, s, padding)[1]
                 for size, k, s in zip(spatial, pool_size, strides)), c)


def maxpool3d_forward_ref(x, pool_size, strides, padding):
    x = np.asarray(x, np.float64)
    n, d, h, w, c = x.shape
    y = np.zeros(output_shape3d(x.shape, pool_size, strides, padding))
    arg = np.zeros(y.shape, np.int64)
    for do, ho, wo, (d0, d1), (h0, h1), (w0, w1) in windows3d(x.shape, pool_size, strides,
                                                               padding):
        win = x[:, d0:d1, h0:h1, w0:w1, :].reshape(n, (d1 - d0) * (h1 - h0) * (w1 - w0), c)
        i = np.argmax(win, axis=1)  # first maximum in (d, h, w) window order
        y[:, do, ho, wo, :] = np.take_along_axis(win, i[:, None, :], axis=1)[:, 0, :]
        dd, hh, ww = np.unravel_index(i, (d1 - d0, h1 - h0, w1 - w0))
        arg[:, do, ho, wo, :] = ((d0 + dd) * h + h0 + hh) * w + w0 + ww
    return y, arg


def maxpool3d_backward_ref(dy, argmax, input_shape):
    n, d, h, w, c = input_shape
    dx = np.zeros((n, d * h * w, c))
    dy = np.asarray(dy, np.float64)
    for i in range(n):
        for p in np.ndindex(*dy.shape[1:4]):
            for ch in range(c):
                dx[i, argmax[(i, *p, ch)], ch] += dy[(i, *p, ch)]
    return dx.reshape(input_shape)


def avgpool3d_forward_ref(x, pool_size, strides, padding):
    x = np.asarray(x, np.float64)
    y = np.zeros(output_shape3d(x.shape, pool_size, strides, padding))
    for do, ho, wo, (d0, d1), (h0, h1), (w0, w1) in windows3d(x.shape, pool_size, strides,
                                                               padding):
        y[:, do, ho, wo, :] = x[:, d0:d1, h0:h1, w0:w1, :].mean(axis=(1, 2, 3))
    return y


def avgpool3d_backward_ref(dy, input_shape, pool_size, strides, padding):
    dy = np.asarray(dy, np.float64)
    dx = np.zeros(input_shape)
    for do, ho, wo, (d0, d1), (h0, h1), (w0, w1) in windows3d(input_shape, pool_size, strides,
                                                               padding):
        count = (d1 - d0) * (h1 - h0) * (w1 - w0)
        dx[:, d0:d1, h0:h1, w0:w1, :] += dy[:, do, ho, wo, None, None, None, :] / count
    return dx


def global_avgpool3d_ref(x):
    """GlobalAveragePooling3D: the mean over D, H, W -> (N, C)."""
    return np.asarray(x, np.float64).mean(axis=(1, 2, 3))


def global_maxpool3d_ref(x):
    """GlobalMaxPooling3D: the max over D, H, W -> (N, C)."""
    return np.asarray(x, np.float64).max(axis=(1, 2, 3))


# -- adaptive pooling (Keras 3's AdaptiveAveragePooling/AdaptiveMaxPooling 1D-3D) ----------
# Output o of an axis of length L pooled to O reads [floor(o*L/O), ceil((o+1)*L/O)): torch's
# adaptive pools, which Keras 3's torch backend calls. x is (N, *spatial, C), 1-3 spatial axes.


def adaptive_bins(length, out):
    """[(start, end)] of each of the out bins over an axis of length."""
    return [((o * length) // out, -(-((o + 1) * length) // out)) for o in range(out)]


def _adaptive_windows(spatial, output_size):
    """Yield (output index, tuple of slices) for every output position."""
    bins = [adaptive_bins(n, o) for n, o in zip(spatial, output_size)]
    for index in np.ndindex(*output_size):
        yield index, tuple(slice(*bins[a][i]) for a, i in enumerate(index))


def adaptive_avgpool_forward_ref(x, output_size):
    x = np.asarray(x, np.float64)
    y = np.zeros((x.shape[0],) + tuple(output_size) + (x.shape[-1],))
    axes = tuple(range(1, x.ndim - 1))
    for index, window in _adaptive_windows(x.shape[1:-1], output_size):
        y[(slice(None),) + index] = x[(slice(None),) + window].mean(axis=axes)
    return y


def adaptive_avgpool_backward_ref(dy, input_shape):
    dy = np.asarray(dy, np.float64)
    dx = np.zeros(input_shape)
    for index, window in _adaptive_windows(input_shape[1:-1], dy.shape[1:-1]):
        count = np.prod([s.stop - s.start for s in window])
        expand = (slice(None),) + (None,) * len(window) + (slice(None),)
        dx[(slice(None),) + window] += dy[(slice(None),) + index][expand] / count
    return dx


def adaptive_maxpool_forward_ref(x, output_size):
    """-> (y, argmax): argmax the flat index of the chosen pixel within its (n, c) plane
    (d*H*W + h*W + w), the first maximum in row-major window order."""
    x = np.asarray(x, np.float64)
    n, c = x.shape[0], x.shape[-1]
    spatial = x.shape[1:-1]
    y = np.zeros((n,) + tuple(output_size) + (c,))
    arg = np.zeros(y.shape, np.int64)
    flat_index = np.arange(int(np.prod(spatial))).reshape(spatial)
    for index, window in _adaptive_windows(spatial, output_size):
        win = x[(slice(None),) + window]
        win = win.reshape(n, int(np.prod(win.shape[1:-1])), c)
        i = np.argmax(win, axis=1)
        y[(slice(None),) + index] = np.take_along_axis(win, i[:, None, :], axis=1)[:, 0, :]
        arg[(slice(None),) + index] = flat_index[window].reshape(-1)[i]
    return y, arg


def adaptive_maxpool_backward_ref(dy, argmax, input_shape):
    n, c = input_shape[0], input_shape[-1]
    outputs = int(np.prod(np.shape(dy)[1:-1]))
    dy = np.asarray(dy, np.float64).reshape(n, outputs, c)
    argmax = np.asarray(argmax).reshape(n, outputs, c)
    dx = np.zeros((n, int(np.prod(input_shape[1:-1])), c))
    for i in range(n):
        for p in range(dy.shape[1]):
            for ch in range(c):
                dx[i, argmax[i, p, ch], ch] += dy[i, p, ch]
    return dx.reshape(input_shape)
